/*
 * server/audit.h — nhid's audit log: append-only JSONL, one record per security
 * event, each record carrying the SHA-256 of the line before it, and periodic
 * checkpoint records signed by the audit key inside the token. docs/audit.md
 * describes the format, the chain, the checkpoints and the crash behaviour.
 *
 * Durability: nhi_audit_record() returns only once its record is on stable storage
 * (write + fdatasync); nhi_audit_submit() calls back at that moment. Records from
 * many threads are group-committed: a writer thread takes every record waiting at
 * that moment, writes them with one write() and makes them durable with one
 * fdatasync, then wakes exactly those callers. So a response that depends on an
 * audit record is sent only after the record would survive a power loss.
 *
 * Secrets never go in: records are built from structured fields, never from free
 * text, and nhi_audit_record() refuses field names that denote secrets (token,
 * pin, password, secret, private_key, ... see docs/audit.md) and replaces string
 * values that look like a JWT/JWS or a PEM block with "[redacted: ...]". Tokens
 * are recorded by reference only, with nhi_audit_record_token(). These checks are
 * a net, not a licence: the caller must never pass a PIN, key, token, bearer
 * secret or backup plaintext in any field.
 */
#ifndef NHI_AUDIT_H
#define NHI_AUDIT_H

#include "../common/nhi.h"
#include "../hsm/hsm.h"

#include <jansson.h>
#include <openssl/evp.h>

struct nhi_audit;

struct nhi_audit_config {
	const char *path;            /* the log file; created 0600 when absent */
	struct nhi_hsm *hsm;         /* token with the audit key; must outlive the log */
	const char *key_label;       /* EC P-256 key signing checkpoints; NULL = NHI_AUDIT_KEY_LABEL_DEFAULT */
	unsigned checkpoint_records; /* a checkpoint after this many records; 0 = default */
	unsigned checkpoint_seconds; /* ... or once the oldest unsigned record is this old; 0 = default */
};

/*
 * Open (or create) the log and start its writer thread. The file is opened
 * O_APPEND|O_CLOEXEC|O_NOFOLLOW, must be a regular file owned by us with mode 0600
 * (NHI_ERR_PERM names the chmod fix), and is locked with flock() so a second
 * writer is refused (NHI_ERR_EXISTS). An existing log is continued: its last two
 * complete lines are checked (parse, seq, link) and the chain goes on from the
 * last one; a log whose tail does not check is refused (NHI_ERR_FORMAT: run
 * `nhictl audit verify`). A partial last line (a crash during a write: never
 * acknowledged) is copied to "<path>.torn-<seq>-<unix time>", cut off, and
 * reported in the "audit_open" record this function writes (durably) before it
 * returns. *out is owned by the caller (nhi_audit_close / nhi_audit_free).
 */
nhi_err nhi_audit_open(const struct nhi_audit_config *cfg, struct nhi_audit **out) NHI_MUST_CHECK;

/*
 * Append one record and return once it is durable. `event` is 1-64 of [a-z0-9_]
 * (the log's own events "audit_open", "audit_close" and "checkpoint" are refused).
 * `fields` is a JSON object (or NULL for none) whose reference is stolen and which
 * may be modified; its names are 1-64 of [a-z0-9_], not seq/time/prev/event/sig,
 * and not a secret's name (NHI_ERR_ARG: a programming error, nothing is written);
 * values are strings, numbers, booleans, null, or arrays/objects of them up to
 * NHI_AUDIT_FIELD_DEPTH_MAX deep. Strings that look like a JWT or PEM are
 * redacted and strings over NHI_AUDIT_VALUE_MAX_BYTES are truncated (so hostile
 * input cannot keep an event out of the log). Safe to call from any thread.
 * After a write or fdatasync failure the log is unusable and every call fails
 * with NHI_ERR_IO: the server must stop answering requests that need an audit
 * record.
 */
nhi_err nhi_audit_record(struct nhi_audit *a, const char *event, json_t *fields) NHI_MUST_CHECK;

/*
 * Called once the record of nhi_audit_submit() is durable (rv NHI_OK) or can no
 * longer be (rv and a detail naming the cause; `detail` is valid during the call
 * only). Runs on the audit writer thread: it must be quick and must not call
 * nhi_audit_* — hand the result to the request's own thread (event_active() on
 * its libevent loop) and send the response from there.
 */
typedef void (*nhi_audit_done_fn)(void *arg, nhi_err rv, const char *detail);

/*
 * nhi_audit_record() without waiting, for event-loop servers: a worker that
 * blocks in nhi_audit_record() holds all its connections still for an fsync, so
 * with W loop threads at most W records share one fsync. With submit, each loop
 * keeps many requests' records in flight and they share fsyncs (group commit).
 * Checks, cleans and queues the record, then returns NHI_OK and calls `done`
 * later, exactly once; or returns an error now (bad fields, log failed or
 * closing) and never calls `done`. `fields` as for nhi_audit_record (stolen).
 * Records are written in the order they are submitted; nhi_audit_close() waits
 * for every submitted record.
 */
nhi_err nhi_audit_submit(struct nhi_audit *a, const char *event, json_t *fields, nhi_audit_done_fn done,
			 void *arg) NHI_MUST_CHECK;

/* One member of a flat audit record: a string, or the integer `num` when str is NULL. */
struct nhi_audit_kv {
	const char *name;
	const char *str;
	long long num;
};

/*
 * nhi_audit_submit() for a flat record (string and integer members, in this
 * order), as the request paths write on every call: the same checks of names and
 * values, the same redaction and truncation, the same line, written without a
 * jansson tree (common/jsonw.h). `kv` is borrowed for the call.
 */
nhi_err nhi_audit_submit_kv(struct nhi_audit *a, const char *event, const struct nhi_audit_kv *kv, size_t n,
			    nhi_audit_done_fn done, void *arg) NHI_MUST_CHECK;

/*
 * Add a reference to a token to `fields` (a JSON object, borrowed): token_sha256
 * (hex SHA-256 of the compact token, so an operator holding a token can find its
 * records) and, read from the token, token_kid, token_jti, token_sub and
 * token_exp, plus token_claims = "verified" or "unverified" (`verified` false:
 * the claims come from a token that did not verify and are attacker-chosen), and
 * token_malformed = true when it is not a readable JWS. The token itself and its
 * signature are never copied. These names replace any already in `fields`.
 */
nhi_err nhi_audit_token_fields(json_t *fields, const char *token, size_t token_len, bool verified) NHI_MUST_CHECK;

/* nhi_audit_token_fields() then nhi_audit_record(); `fields` (NULL = none) is stolen. */
nhi_err nhi_audit_record_token(struct nhi_audit *a, const char *event, const char *token, size_t token_len,
			       bool verified, json_t *fields) NHI_MUST_CHECK;

/* Write a checkpoint now if any record is unsigned, and wait until it is durable
 * (before a planned shutdown of the token, or on an operator's request). */
nhi_err nhi_audit_checkpoint(struct nhi_audit *a) NHI_MUST_CHECK;

/*
 * Write an "audit_close" record and a final checkpoint, stop the writer, close
 * the file and free `a` (always, even on failure). Records submitted before are
 * written (and their callbacks run) first; no other call on `a` may be in
 * progress or come later. Returns whether the final records were made durable.
 * NULL is a no-op returning NHI_OK.
 */
nhi_err nhi_audit_close(struct nhi_audit *a) NHI_MUST_CHECK;
/* nhi_audit_close() ignoring its result. NULL is a no-op. */
void nhi_audit_free(struct nhi_audit *a);

/* Counters for /v1/metrics (monotonic since open); any thread, `a` not NULL. */
struct nhi_audit_stats {
	unsigned long long records;     /* lines made durable, checkpoints included */
	unsigned long long checkpoints; /* checkpoint records among them */
	unsigned long long batches;     /* write() calls, one per group commit */
	unsigned long long fsyncs;      /* fdatasync() calls */
	unsigned long long bytes;       /* bytes appended */
	unsigned long long max_batch;   /* most lines in one group commit */
	unsigned long long redactions;  /* string values replaced by "[redacted: ...]" */
	unsigned long long truncations; /* string values cut at NHI_AUDIT_VALUE_MAX_BYTES */
	unsigned long long checkpoint_failures; /* signing attempts that failed (retried) */
	unsigned long long next_seq;    /* seq the next record will get */
	bool failed;                    /* the log is unusable (see nhi_audit_record) */
};
void nhi_audit_get_stats(struct nhi_audit *a, struct nhi_audit_stats *out);

/* ---- verification (pure: bytes in, verdict out; also the fuzz target) ---------- */

struct nhi_audit_report {
	unsigned long long records;         /* lines that verified, checkpoints included (on failure: see below) */
	unsigned long long checkpoints;     /* checkpoints that verified */
	unsigned long long last_checkpoint_line; /* 1-based; 0 = none */
	unsigned long long unsigned_tail;   /* records after the last checkpoint */
	unsigned long long opens;           /* audit_open records (starts of nhid) */
	unsigned long long torn_repairs;    /* audit_open records reporting a cut partial line */
	unsigned long long time_regressions; /* records older than the one before (clock stepped back) */
	unsigned long long bad_line;        /* 1-based first bad line; 0 = none, or not a line's fault */
	bool signatures_checked;            /* false when no public key was given */
	char first_time[32], last_time[32]; /* RFC 3339 UTC of the first/last record; "" when none */
};

/*
 * Verify a whole log held in memory: every line is a JSON object (duplicate names
 * refused), seq counts up from 0, prev is the SHA-256 of the line before (64
 * zeros on line 1), line 1 is "audit_open", and every checkpoint attests the head
 * before it and carries a valid ES256 signature by `pub` (EC P-256) over its own
 * bytes. With `pub` NULL checkpoint signatures are not checked
 * (rep->signatures_checked false). On failure rep->bad_line names the first bad
 * line and the error detail says "line N: <cause>"; rep->records then counts only
 * the lines the log still vouches for (lines 1..records): N-2 when line N's prev
 * does not match (line N-1 may be the altered one; N-1 when that line is a
 * checkpoint whose signature verified), the last verified checkpoint's line when
 * line N is a checkpoint that fails (the records since the one before may have
 * been rewritten with fresh hashes), N-1 otherwise. checkpoints,
 * last_checkpoint_line and unsigned_tail describe those lines; opens, torn_repairs,
 * time_regressions and the times cover all lines before N. A last line without a
 * newline is an error (a crash during a write leaves one; nhid cuts it at its next
 * start).
 */
nhi_err nhi_audit_verify(const uint8_t *data, size_t len, EVP_PKEY *pub, struct nhi_audit_report *rep) NHI_MUST_CHECK;

#endif
