/*
 * server/audit.c — the audit log (docs/audit.md).
 *
 * Callers build their record's fields in their own thread (checked, redacted and
 * serialised there, in parallel), queue it, and sleep on their own condition
 * variable. One writer thread owns the file and the chain: it takes every queued
 * record, gives each its seq, time and prev, adds a signed checkpoint when one is
 * due, writes the whole batch with one write() and makes it durable with one
 * fdatasync(), then wakes exactly the callers of that batch (group commit).
 */
#include "audit.h"
#include "../common/jsonw.h"
#include "../common/limits.h"
#include "../common/pkey.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HASH_HEX_BYTES 64
#define TIME_BYTES 24 /* "2026-11-23T10:00:00.123Z" */
/* seq, time, prev and event members of a line, before the fields: far less than this */
#define LINE_HEADER_MAX_BYTES 256
#define JSON_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII)
#define EVENT_CHECKPOINT "checkpoint"
#define SIG_MEMBER ",\"sig\":"

static const char zero_hash_hex[] = "0000000000000000000000000000000000000000000000000000000000000000";

/* names that denote secrets; a field so named is refused (docs/audit.md) */
static const char *const secret_names[] = {
	"token",  "jwt",       "pin",       "password", "passphrase", "secret",     "private_key", "key_pem",
	"bearer", "authorization", "cookie", "plaintext", "data_key", "credential", "credentials", NULL,
};
static const char *const secret_suffixes[] = {
	"_token", "_jwt", "_pin", "_password", "_passphrase", "_secret", "_private_key", "_key_pem",
	"_bearer", "_cookie", "_plaintext", "_credential", "_credentials", NULL,
};
/* members every line has; callers' fields may not use them */
static const char *const reserved_fields[] = {"seq", "time", "prev", "event", "sig", NULL};

enum item_kind { ITEM_RECORD, ITEM_CHECKPOINT };

/*
 * One record (or checkpoint request) in the queue. A blocking caller's item lives
 * on its stack and it waits until `done`; a submitted item is on the heap, owns
 * its fields text, and is freed by the writer after its callback.
 */
struct audit_item {
	enum item_kind kind;
	const char *event;  /* a string literal or the caller's (who waits) */
	char event_buf[NHI_AUDIT_NAME_MAX_BYTES + 1]; /* submitted items keep their event here */
	const char *fields; /* compact JSON object "{...}" */
	size_t fields_len;
	char *owned_fields; /* submitted items: fields, freed with the item */
	nhi_audit_done_fn done_fn; /* NULL: a blocking caller */
	void *done_arg;
	pthread_cond_t done_cv;
	bool done;
	nhi_err rv;
	struct audit_item *next;
};

struct nhi_audit {
	/* fixed after open */
	int fd;
	struct nhi_hsm *hsm;
	struct nhi_hsm_key *key;
	char key_label[NHI_HSM_LABEL_MAX_BYTES + 1];
	char key_fp[HASH_HEX_BYTES + 1];
	unsigned cp_records, cp_seconds;
	pthread_t writer;
	bool writer_started;

	/* shared: guarded by mu */
	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* the writer waits here (CLOCK_MONOTONIC) */
	struct audit_item *head, *tail;
	size_t queued;            /* items in the queue */
	size_t last_batch_items;  /* items the writer completed last time */
	size_t wake_at;           /* wake the writer when this many are queued (0: it is busy) */
	long long last_fsync_ns;  /* how long the last fdatasync took */
	bool stopping;
	nhi_err fail_rv;                       /* != NHI_OK: the log is unusable */
	char err_detail[NHI_ERR_DETAIL_MAX];   /* detail of the last writer-side failure */
	struct nhi_audit_stats stats;

	/* the writer thread's alone (and open's, before the thread starts) */
	unsigned long long seq; /* seq of the next line */
	uint8_t prev[32];       /* SHA-256 of the last line */
	unsigned long long since_cp;     /* records since the last checkpoint */
	struct timespec oldest_unsigned; /* CLOCK_MONOTONIC when the first of them was written */
	unsigned cp_failures;            /* consecutive */
	struct timespec cp_retry_at;     /* CLOCK_MONOTONIC: no checkpoint try before */
	struct nhi_buf batch;
	unsigned long long batch_lines, batch_cps, batch_cp_failures;
};

/* ---- small helpers ------------------------------------------------------------ */

static bool valid_name(const char *s)
{
	size_t i;

	for (i = 0; s[i] != '\0'; i++)
		if (i >= NHI_AUDIT_NAME_MAX_BYTES || !((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
						       s[i] == '_'))
			return false;
	return i > 0;
}

static bool in_list(const char *s, const char *const *list)
{
	for (; *list != NULL; list++)
		if (strcmp(s, *list) == 0)
			return true;
	return false;
}

static bool secret_name(const char *s)
{
	size_t n = strlen(s), m;
	const char *const *p;

	if (in_list(s, secret_names))
		return true;
	for (p = secret_suffixes; *p != NULL; p++) {
		m = strlen(*p);
		if (n > m && strcmp(s + n - m, *p) == 0)
			return true;
	}
	return false;
}

/* the log's own events: audit_open, audit_close, checkpoint, checkpoint_failed */
static bool reserved_event(const char *s)
{
	return strncmp(s, "audit_", 6) == 0 || strncmp(s, EVENT_CHECKPOINT, strlen(EVENT_CHECKPOINT)) == 0;
}

static bool b64url_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/*
 * A JWS/JWE compact serialisation anywhere in s: a base64url run containing "eyJ"
 * (base64url of '{"', how every JOSE header starts), '.', a base64url run, '.'.
 * One pass, so hostile strings cannot make it quadratic.
 */
static bool looks_like_jwt(const char *s, size_t n)
{
	bool run_has_eyj = false, after_header = false;
	size_t i, run = 0;

	for (i = 0; i < n; i++) {
		if (b64url_char(s[i])) {
			run++;
			if (run >= 3 && s[i] == 'J' && s[i - 1] == 'y' && s[i - 2] == 'e')
				run_has_eyj = true;
			continue;
		}
		if (s[i] == '.') {
			if (after_header)
				return true;
			after_header = run_has_eyj;
		} else {
			after_header = false;
		}
		run = 0;
		run_has_eyj = false;
	}
	return false;
}

static void now_rfc3339_ms(char out[32])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (gmtime_r(&ts.tv_sec, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	snprintf(out, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
		 tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* ---- field checks (in the caller's thread) --------------------------------------- */

struct clean_counts {
	unsigned long long redacted, truncated;
};

enum verdict { KEEP, REDACT_JWT, REDACT_PEM, TRUNCATE };

/* what becomes of a string value: kept, redacted, or cut to *cut bytes (on a UTF-8
 * character boundary) and marked; the one rule for tree and flat records */
static enum verdict string_verdict(const char *s, size_t n, size_t *cut)
{
	if (looks_like_jwt(s, n))
		return REDACT_JWT;
	if (memmem(s, n, "-----BEGIN", 10) != NULL)
		return REDACT_PEM;
	if (n <= NHI_AUDIT_VALUE_MAX_BYTES)
		return KEEP;
	*cut = NHI_AUDIT_VALUE_MAX_BYTES;
	while (*cut > 0 && ((unsigned char)s[*cut] & 0xc0) == 0x80)
		(*cut)--;
	return TRUNCATE;
}

#define REDACTED_JWT "[redacted: looks like a JWT]"
#define REDACTED_PEM "[redacted: looks like PEM]"
#define TRUNCATED "...[truncated]"

/*
 * The value to write for string s (n bytes): s itself, a redaction text, or the
 * first bytes of s with the mark, written into `cut_buf`; counted in cc. The one
 * place both record forms take a value from.
 */
static nhi_err verdict_value(const char *s, size_t n, struct nhi_buf *cut_buf, struct clean_counts *cc,
			     const char **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t cut = 0;

	*out = s;
	switch (string_verdict(s, n, &cut)) {
	case KEEP: break;
	case REDACT_JWT: *out = REDACTED_JWT; cc->redacted++; break;
	case REDACT_PEM: *out = REDACTED_PEM; cc->redacted++; break;
	case TRUNCATE:
		nhi_buf_reset(cut_buf);
		NHI_TRY(nhi_buf_append(cut_buf, s, cut));
		NHI_TRY(nhi_buf_append_str(cut_buf, TRUNCATED));
		*out = (const char *)cut_buf->data;
		cc->truncated++;
		break;
	}
	rv = NHI_OK;
out:
	return rv;
}

/* *replace = a replacement for a string value, or NULL to keep it */
static nhi_err clean_string(json_t *v, const char *name, json_t **replace, struct clean_counts *cc)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *s = json_string_value(v), *w = NULL;
	struct nhi_buf cut_buf = {0};

	*replace = NULL;
	NHI_TRY(verdict_value(s, json_string_length(v), &cut_buf, cc, &w));
	if (w != s) {
		*replace = json_string(w);
		NHI_CHECK(*replace != NULL, NHI_ERR_NOMEM, "out of memory cleaning audit field '%s'", name);
	}
	rv = NHI_OK;
out:
	nhi_buf_free(&cut_buf);
	return rv;
}

/* the rules every member name of the top level obeys */
static nhi_err check_name(const char *k, int depth)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_CHECK(valid_name(k), NHI_ERR_ARG, "audit field name '%.64s' is not 1-%d of [a-z0-9_]", k,
		  NHI_AUDIT_NAME_MAX_BYTES);
	NHI_CHECK(depth > 0 || !in_list(k, reserved_fields), NHI_ERR_ARG,
		  "audit field name '%s' is reserved for the log itself", k);
	NHI_CHECK(!secret_name(k), NHI_ERR_ARG,
		  "audit field '%s' names a secret: record a reference (an id or a SHA-256) instead", k);
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err clean_value(json_t *v, const char *name, int depth, json_t **replace, struct clean_counts *cc);

static nhi_err clean_object(json_t *obj, int depth, struct clean_counts *cc)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	void *it;
	const char *k;
	json_t *rep;

	NHI_CHECK(json_object_size(obj) <= NHI_AUDIT_FIELDS_MAX, NHI_ERR_LIMIT,
		  "an audit record object has %zu members, over %d", json_object_size(obj), NHI_AUDIT_FIELDS_MAX);
	for (it = json_object_iter(obj); it != NULL; it = json_object_iter_next(obj, it)) {
		k = json_object_iter_key(it);
		NHI_TRY(check_name(k, depth));
		rep = NULL;
		NHI_TRY(clean_value(json_object_iter_value(it), k, depth, &rep, cc));
		if (rep != NULL)
			NHI_CHECK(json_object_iter_set_new(obj, it, rep) == 0, NHI_ERR_NOMEM, "out of memory");
	}
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err clean_value(json_t *v, const char *name, int depth, json_t **replace, struct clean_counts *cc)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *rep;
	size_t i;

	*replace = NULL;
	switch (json_typeof(v)) {
	case JSON_STRING:
		NHI_TRY(clean_string(v, name, replace, cc));
		break;
	case JSON_OBJECT:
		NHI_CHECK(depth + 1 < NHI_AUDIT_FIELD_DEPTH_MAX, NHI_ERR_LIMIT,
			  "audit field '%s' nests deeper than %d levels", name, NHI_AUDIT_FIELD_DEPTH_MAX);
		NHI_TRY(clean_object(v, depth + 1, cc));
		break;
	case JSON_ARRAY:
		NHI_CHECK(depth + 1 < NHI_AUDIT_FIELD_DEPTH_MAX, NHI_ERR_LIMIT,
			  "audit field '%s' nests deeper than %d levels", name, NHI_AUDIT_FIELD_DEPTH_MAX);
		NHI_CHECK(json_array_size(v) <= NHI_AUDIT_FIELDS_MAX, NHI_ERR_LIMIT,
			  "audit field '%s' has %zu entries, over %d", name, json_array_size(v), NHI_AUDIT_FIELDS_MAX);
		for (i = 0; i < json_array_size(v); i++) {
			rep = NULL;
			NHI_TRY(clean_value(json_array_get(v, i), name, depth + 1, &rep, cc));
			if (rep != NULL)
				NHI_CHECK(json_array_set_new(v, i, rep) == 0, NHI_ERR_NOMEM, "out of memory");
		}
		break;
	default: /* numbers, true, false, null */
		break;
	}
	rv = NHI_OK;
out:
	return rv;
}

/* ---- the writer thread's side ------------------------------------------------------ */

static void writer_fail(struct nhi_audit *a, nhi_err e, const char *detail)
{
	pthread_mutex_lock(&a->mu);
	if (a->fail_rv == NHI_OK) {
		a->fail_rv = e;
		snprintf(a->err_detail, sizeof(a->err_detail), "audit log unusable: %s", detail);
		a->stats.failed = true;
	}
	pthread_mutex_unlock(&a->mu);
}

static void hex_prev(const struct nhi_audit *a, char out[HASH_HEX_BYTES + 1])
{
	if (a->seq == 0)
		memcpy(out, zero_hash_hex, sizeof(zero_hash_hex));
	else
		nhi_hex(a->prev, 32, out);
}

/* the line from `start` to the end of the batch is complete: chain it and end it */
static nhi_err seal_line(struct nhi_audit *a, size_t start)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_TRY(nhi_sha256(a->batch.data + start, a->batch.len - start, a->prev));
	NHI_TRY(nhi_buf_append(&a->batch, "\n", 1));
	a->seq++;
	a->batch_lines++;
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err append_record(struct nhi_audit *a, const char *ts, const char *event, const char *fields,
			     size_t fields_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char prev_hex[HASH_HEX_BYTES + 1];
	size_t start = a->batch.len;

	hex_prev(a, prev_hex);
	NHI_TRY(nhi_buf_printf(&a->batch, "{\"seq\":%llu,\"time\":\"%s\",\"prev\":\"%s\",\"event\":\"%s\"", a->seq, ts,
			       prev_hex, event));
	if (fields_len > 2) { /* "{...}": splice the members in after ours */
		NHI_TRY(nhi_buf_append(&a->batch, ",", 1));
		NHI_TRY(nhi_buf_append(&a->batch, fields + 1, fields_len - 1));
	} else {
		NHI_TRY(nhi_buf_append(&a->batch, "}", 1));
	}
	NHI_TRY(seal_line(a, start));
	if (a->since_cp++ == 0)
		clock_gettime(CLOCK_MONOTONIC, &a->oldest_unsigned);
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		a->batch.len = start;
	return rv;
}

/*
 * A checkpoint: its members up to "head" are signed as they stand in the line
 * (ES256 over those exact bytes), then ,"sig":"<base64url R||S>"} closes it. The
 * verifier checks the same bytes; nothing is re-serialised.
 */
static nhi_err append_checkpoint(struct nhi_audit *a, const char *ts)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char prev_hex[HASH_HEX_BYTES + 1];
	uint8_t sig[64];
	size_t sig_len = 0, start = a->batch.len;
	struct nhi_buf sig_b64 = {0};

	hex_prev(a, prev_hex);
	NHI_TRY(nhi_buf_printf(&a->batch,
			       "{\"seq\":%llu,\"time\":\"%s\",\"prev\":\"%s\",\"event\":\"" EVENT_CHECKPOINT "\","
			       "\"key_label\":\"%s\",\"key_fp\":\"%s\",\"alg\":\"ES256\",\"head_seq\":%llu,\"head\":\"%s\"",
			       a->seq, ts, prev_hex, a->key_label, a->key_fp, a->seq - 1, prev_hex));
	rv = nhi_hsm_sign(a->hsm, a->key, a->batch.data + start, a->batch.len - start, sig, &sig_len);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "signing an audit checkpoint with key %s", a->key_label);
		goto out;
	}
	NHI_CHECK(sig_len == 64, NHI_ERR_HSM, "audit key %s gave a %zu-byte signature, not 64", a->key_label, sig_len);
	NHI_TRY(nhi_b64url_encode(sig, 64, &sig_b64));
	NHI_TRY(nhi_buf_printf(&a->batch, SIG_MEMBER "\"%s\"}", (char *)sig_b64.data));
	NHI_TRY(seal_line(a, start));
	a->since_cp = 0;
	a->cp_failures = 0;
	a->batch_cps++;
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		a->batch.len = start;
	nhi_buf_free(&sig_b64);
	return rv;
}

/*
 * A checkpoint is due. If signing fails the records stay durable and chained, the
 * failure itself becomes a "checkpoint_failed" record, and the next try comes
 * NHI_AUDIT_CHECKPOINT_RETRY_S later; after NHI_AUDIT_CHECKPOINT_FAILURES_MAX
 * failures in a row the log fails closed once this batch is durable (*fail_after,
 * with the reason in fail_detail). Returns the signing error, for a caller who
 * asked for this checkpoint.
 */
static nhi_err try_checkpoint(struct nhi_audit *a, const char *ts, nhi_err *fail_after, char *fail_detail)
{
	nhi_err rv = NHI_ERR_INTERNAL, e;
	char detail[NHI_ERR_DETAIL_MAX];
	json_t *f = NULL;
	char *s = NULL;

	e = append_checkpoint(a, ts);
	if (e == NHI_OK)
		return NHI_OK;
	snprintf(detail, sizeof(detail), "%s", nhi_err_detail());
	a->cp_failures++;
	a->batch_cp_failures++;
	clock_gettime(CLOCK_MONOTONIC, &a->cp_retry_at);
	a->cp_retry_at.tv_sec += NHI_AUDIT_CHECKPOINT_RETRY_S;
	f = json_pack("{s:s, s:s, s:i}", "error", nhi_err_name(e), "reason", detail, "consecutive", (int)a->cp_failures);
	NHI_CHECK(f != NULL, NHI_ERR_NOMEM, "out of memory");
	s = json_dumps(f, JSON_FLAGS);
	NHI_CHECK(s != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(append_record(a, ts, "checkpoint_failed", s, strlen(s)));
	if (a->cp_failures >= NHI_AUDIT_CHECKPOINT_FAILURES_MAX) {
		*fail_after = e;
		snprintf(fail_detail, NHI_ERR_DETAIL_MAX,
			 "audit checkpoints failed %u times in a row (last: %s): make key %s usable in the token and "
			 "restart nhid",
			 a->cp_failures, detail, a->key_label);
	}
	rv = nhi_err_set(e, "%s", detail);
out:
	free(s);
	json_decref(f);
	return rv;
}

static bool ts_reached(const struct timespec *now, const struct timespec *t)
{
	return now->tv_sec > t->tv_sec || (now->tv_sec == t->tv_sec && now->tv_nsec >= t->tv_nsec);
}

/* when a time-triggered checkpoint is due: S after the oldest unsigned record,
 * and not before the retry time of a failed one */
static struct timespec checkpoint_deadline(const struct nhi_audit *a)
{
	struct timespec d = a->oldest_unsigned;

	d.tv_sec += (time_t)a->cp_seconds;
	return ts_reached(&d, &a->cp_retry_at) ? d : a->cp_retry_at;
}

static bool retry_allowed(const struct nhi_audit *a)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return ts_reached(&now, &a->cp_retry_at);
}

static bool checkpoint_time_due(const struct nhi_audit *a)
{
	struct timespec now, d;

	if (a->since_cp == 0)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &now);
	d = checkpoint_deadline(a);
	return ts_reached(&now, &d);
}

static nhi_err write_all(int fd, const uint8_t *p, size_t n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	ssize_t w;

	while (n > 0) {
		w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		NHI_CHECK(w > 0, NHI_ERR_IO, "writing the audit log: %s", w < 0 ? strerror(errno) : "wrote nothing");
		p += w;
		n -= (size_t)w;
	}
	rv = NHI_OK;
out:
	return rv;
}

/*
 * Chain, write and fdatasync one batch. Item-specific errors (a forced checkpoint
 * that could not be signed) go into the item; the return value is the batch's.
 */
static nhi_err write_batch(struct nhi_audit *a, struct audit_item *batch)
{
	nhi_err rv = NHI_ERR_INTERNAL, fail_after = NHI_OK, e;
	char ts[32];
	char detail[NHI_ERR_DETAIL_MAX] = "";
	struct audit_item *it;

	nhi_buf_reset(&a->batch);
	a->batch_lines = a->batch_cps = a->batch_cp_failures = 0;
	now_rfc3339_ms(ts);
	for (it = batch; it != NULL; it = it->next) {
		if (it->kind == ITEM_RECORD) {
			NHI_TRY(append_record(a, ts, it->event, it->fields, it->fields_len));
			/* exactly every N records; after a failure, not before the retry time */
			if (a->since_cp >= a->cp_records && retry_allowed(a))
				(void)try_checkpoint(a, ts, &fail_after, detail);
		} else if (a->since_cp > 0) { /* a checkpoint the caller asked for: no backoff */
			e = try_checkpoint(a, ts, &fail_after, detail);
			if (e != NHI_OK) {
				it->rv = e;
				pthread_mutex_lock(&a->mu);
				snprintf(a->err_detail, sizeof(a->err_detail), "%s", nhi_err_detail());
				pthread_mutex_unlock(&a->mu);
			}
		}
	}
	if (checkpoint_time_due(a))
		(void)try_checkpoint(a, ts, &fail_after, detail);
	if (a->batch.len > 0) {
		NHI_TRY(write_all(a->fd, a->batch.data, a->batch.len));
		NHI_CHECK(fdatasync(a->fd) == 0, NHI_ERR_IO, "fdatasync of the audit log: %s", strerror(errno));
	}
	if (fail_after != NHI_OK)
		writer_fail(a, fail_after, detail);
	rv = NHI_OK;
out:
	/* after a failed write or fdatasync, what reached the disk is unknown (and
	 * retrying fsync can falsely succeed): stop here, fail closed */
	if (rv != NHI_OK)
		writer_fail(a, rv, nhi_err_detail());
	return rv;
}

static struct audit_item *take_batch(struct nhi_audit *a)
{
	struct audit_item *first = a->head, *last = NULL, *it = a->head;
	size_t n = 0, bytes = 0;

	while (it != NULL && n < NHI_AUDIT_BATCH_MAX &&
	       (n == 0 || bytes + it->fields_len + LINE_HEADER_MAX_BYTES <= NHI_AUDIT_BATCH_MAX_BYTES)) {
		bytes += it->fields_len + LINE_HEADER_MAX_BYTES;
		last = it;
		it = it->next;
		n++;
	}
	if (last != NULL)
		last->next = NULL;
	a->head = it;
	if (it == NULL)
		a->tail = NULL;
	a->queued -= n;
	a->last_batch_items = n;
	return first;
}

static void add_ns(struct timespec *t, long long ns)
{
	t->tv_sec += (time_t)(ns / 1000000000);
	t->tv_nsec += (long)(ns % 1000000000);
	if (t->tv_nsec >= 1000000000) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000;
	}
}

/*
 * Group commit's gather step. The callers of the batch just made durable are
 * waking up and most will queue their next record within microseconds; starting
 * the next fdatasync at once would catch only the first of them, and on a busy
 * server every fdatasync costs CPU the requests need (on the 2-core VM of
 * docs/architecture.md, about a tenth of a token's cost at 11 records per fsync).
 * So while fewer items wait than a quarter more than the last batch had, wait for
 * them, at most as long as the last fdatasync took (bounded by
 * NHI_AUDIT_GATHER_MAX_US). Batches grow while callers keep coming and shrink to
 * what arrived when they stop. Callers do not wake the writer until the target is
 * reached (wake_at). A lone caller never waits: its batch had one item.
 * Called with mu held.
 */
static void gather(struct nhi_audit *a)
{
	struct timespec deadline;
	long long wait_ns = a->last_fsync_ns;
	size_t target = a->last_batch_items + a->last_batch_items / 4 + 1;

	if (wait_ns > NHI_AUDIT_GATHER_MAX_US * 1000LL)
		wait_ns = NHI_AUDIT_GATHER_MAX_US * 1000LL;
	if (target > NHI_AUDIT_BATCH_MAX)
		target = NHI_AUDIT_BATCH_MAX;
	if (a->queued == 0 || a->queued >= target || a->last_batch_items < 2 || wait_ns <= 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	add_ns(&deadline, wait_ns);
	a->wake_at = target; /* callers stay quiet until the batch is full */
	while (a->queued < target && !a->stopping)
		if (pthread_cond_timedwait(&a->work_cv, &a->mu, &deadline) != 0)
			break;
	a->wake_at = 0;
}

static void *writer_main(void *arg)
{
	struct nhi_audit *a = arg;
	struct audit_item *batch, *it, *next, *async;
	struct timespec deadline, t0, t1;
	char detail[NHI_ERR_DETAIL_MAX];
	nhi_err rv;
	bool time_due;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		time_due = false;
		a->wake_at = 1;
		while (a->head == NULL && !a->stopping) {
			if (a->since_cp > 0 && a->fail_rv == NHI_OK) {
				if (checkpoint_time_due(a)) {
					time_due = true;
					break;
				}
				deadline = checkpoint_deadline(a);
				pthread_cond_timedwait(&a->work_cv, &a->mu, &deadline);
			} else {
				pthread_cond_wait(&a->work_cv, &a->mu);
			}
		}
		a->wake_at = 0;
		if (a->head == NULL && !time_due)
			break; /* stopping, queue empty */
		gather(a);
		batch = take_batch(a);
		pthread_mutex_unlock(&a->mu);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		if (a->fail_rv == NHI_OK) /* only this thread sets it after open */
			rv = write_batch(a, batch);
		else
			rv = a->fail_rv;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		pthread_mutex_lock(&a->mu);
		if (rv == NHI_OK && a->batch.len > 0)
			a->last_fsync_ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
		if (rv == NHI_OK) {
			a->stats.records += a->batch_lines;
			a->stats.checkpoints += a->batch_cps;
			a->stats.checkpoint_failures += a->batch_cp_failures;
			a->stats.bytes += a->batch.len;
			if (a->batch.len > 0) {
				a->stats.batches++;
				a->stats.fsyncs++;
			}
			if (a->batch_lines > a->stats.max_batch)
				a->stats.max_batch = a->batch_lines;
			a->stats.next_seq = a->seq;
		}
		snprintf(detail, sizeof(detail), "%s", a->err_detail);
		async = NULL;
		for (it = batch; it != NULL; it = next) {
			next = it->next; /* a blocking caller's item may be gone once it sees `done` */
			if (it->rv == NHI_OK)
				it->rv = rv;
			if (it->done_fn != NULL) {
				it->next = async;
				async = it;
				continue;
			}
			it->done = true;
			pthread_cond_signal(&it->done_cv);
		}
		if (async != NULL) { /* callbacks run without the lock */
			pthread_mutex_unlock(&a->mu);
			for (it = async; it != NULL; it = next) {
				next = it->next;
				it->done_fn(it->done_arg, it->rv, it->rv == NHI_OK ? "" : detail);
				free(it->owned_fields);
				free(it);
			}
			pthread_mutex_lock(&a->mu);
		}
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* ---- the callers' side -------------------------------------------------------------- */

/* Queue `it`; a blocking caller (no done_fn) waits here until it is durable. */
static nhi_err submit(struct nhi_audit *a, struct audit_item *it, const struct clean_counts *cc)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	bool blocking = it->done_fn == NULL;

	it->done = false;
	it->rv = NHI_OK;
	it->next = NULL;
	if (blocking)
		NHI_CHECK(pthread_cond_init(&it->done_cv, NULL) == 0, NHI_ERR_INTERNAL, "pthread_cond_init failed");
	pthread_mutex_lock(&a->mu);
	if (cc != NULL) {
		a->stats.redactions += cc->redacted;
		a->stats.truncations += cc->truncated;
	}
	if (a->fail_rv != NHI_OK || a->stopping) {
		rv = a->fail_rv != NHI_OK ? a->fail_rv : NHI_ERR_ARG;
		nhi_err_set(rv, "%s", a->fail_rv != NHI_OK ? a->err_detail : "the audit log is closing");
	} else {
		if (a->tail != NULL)
			a->tail->next = it;
		else
			a->head = it;
		a->tail = it;
		a->queued++;
		if (a->wake_at != 0 && a->queued >= a->wake_at) /* else the writer is busy or gathering */
			pthread_cond_signal(&a->work_cv);
		rv = NHI_OK;
		while (blocking && !it->done)
			pthread_cond_wait(&it->done_cv, &a->mu);
		if (blocking && it->rv != NHI_OK)
			rv = nhi_err_set(it->rv, "%s", a->err_detail);
	}
	pthread_mutex_unlock(&a->mu);
	if (blocking)
		pthread_cond_destroy(&it->done_cv);
out:
	return rv;
}

static nhi_err check_line_len(const char *event, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_CHECK(len + LINE_HEADER_MAX_BYTES <= NHI_AUDIT_LINE_MAX_BYTES, NHI_ERR_LIMIT,
		  "audit event '%s' is %zu bytes, over the %d-byte line limit: record fewer or shorter fields", event,
		  len, NHI_AUDIT_LINE_MAX_BYTES);
	rv = NHI_OK;
out:
	return rv;
}

/* check, clean and serialise the fields here, in the caller's thread; steals fields */
static nhi_err prepare(const char *event, json_t *fields, char **text, struct clean_counts *cc)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	*text = NULL;
	if (fields == NULL)
		fields = json_object();
	NHI_CHECK(fields != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK(json_is_object(fields), NHI_ERR_ARG, "audit fields of '%s' must be a JSON object", event);
	NHI_TRY(clean_object(fields, 0, cc));
	*text = json_dumps(fields, JSON_FLAGS);
	NHI_CHECK(*text != NULL, NHI_ERR_NOMEM, "out of memory serialising audit event '%s'", event);
	NHI_TRY(check_line_len(event, strlen(*text)));
	rv = NHI_OK;
out:
	if (rv != NHI_OK) {
		free(*text);
		*text = NULL;
	}
	json_decref(fields);
	return rv;
}

static nhi_err record_internal(struct nhi_audit *a, const char *event, json_t *fields)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct clean_counts cc = {0};
	struct audit_item it = {.kind = ITEM_RECORD, .event = event};
	char *text = NULL;

	NHI_TRY(prepare(event, fields, &text, &cc));
	it.fields = text;
	it.fields_len = strlen(text);
	rv = submit(a, &it, &cc);
out:
	free(text);
	return rv;
}

static nhi_err check_event(struct nhi_audit *a, const char *event)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_CHECK(a != NULL && event != NULL, NHI_ERR_ARG, "audit: no log or no event");
	NHI_CHECK(valid_name(event), NHI_ERR_ARG, "audit event name '%.64s' is not 1-%d of [a-z0-9_]", event,
		  NHI_AUDIT_NAME_MAX_BYTES);
	NHI_CHECK(!reserved_event(event), NHI_ERR_ARG, "audit event '%s' is reserved for the log itself", event);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_audit_record(struct nhi_audit *a, const char *event, json_t *fields)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_TRY(check_event(a, event));
	rv = record_internal(a, event, fields);
	fields = NULL;
out:
	json_decref(fields);
	return rv;
}

/* queue the checked fields text (len bytes) of a submitted record; takes *text (malloc'ed) */
static nhi_err submit_text(struct nhi_audit *a, const char *event, char **text, size_t len,
			   const struct clean_counts *cc, nhi_audit_done_fn done, void *arg)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct audit_item *it = calloc(1, sizeof(*it));

	NHI_CHECK(it != NULL, NHI_ERR_NOMEM, "out of memory");
	it->kind = ITEM_RECORD;
	snprintf(it->event_buf, sizeof(it->event_buf), "%s", event);
	it->event = it->event_buf;
	it->owned_fields = *text;
	it->fields = *text;
	it->fields_len = len;
	*text = NULL;
	it->done_fn = done;
	it->done_arg = arg;
	rv = submit(a, it, cc);
	if (rv == NHI_OK)
		it = NULL; /* the writer frees it after the callback */
out:
	if (it != NULL)
		free(it->owned_fields);
	free(it);
	return rv;
}

nhi_err nhi_audit_submit(struct nhi_audit *a, const char *event, json_t *fields, nhi_audit_done_fn done, void *arg)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct clean_counts cc = {0};
	char *text = NULL;

	NHI_CHECK(done != NULL, NHI_ERR_ARG, "nhi_audit_submit needs a completion callback");
	NHI_TRY(check_event(a, event));
	rv = prepare(event, fields, &text, &cc);
	fields = NULL;
	NHI_TRY(rv);
	rv = submit_text(a, event, &text, strlen(text), &cc, done, arg);
out:
	free(text);
	json_decref(fields);
	return rv;
}

nhi_err nhi_audit_submit_kv(struct nhi_audit *a, const char *event, const struct nhi_audit_kv *kv, size_t n,
			    nhi_audit_done_fn done, void *arg)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct clean_counts cc = {0};
	struct nhi_buf text = {0}, cut_value = {0};
	struct nhi_jsonw o;
	const char *v;
	size_t i, j, len;
	char *owned = NULL;

	NHI_CHECK(done != NULL, NHI_ERR_ARG, "nhi_audit_submit_kv needs a completion callback");
	NHI_TRY(check_event(a, event));
	NHI_CHECK(n <= NHI_AUDIT_FIELDS_MAX, NHI_ERR_LIMIT, "an audit record object has %zu members, over %d", n,
		  NHI_AUDIT_FIELDS_MAX);
	/* the checks of the tree form (clean_object), member by member */
	for (i = 0; i < n; i++) {
		NHI_TRY(check_name(kv[i].name, 0));
		for (j = 0; j < i; j++) /* a JSON object has each name once */
			NHI_CHECK(strcmp(kv[i].name, kv[j].name) != 0, NHI_ERR_ARG, "audit field '%s' is given twice",
				  kv[i].name);
	}
	nhi_jsonw_begin(&o, &text);
	for (i = 0; i < n; i++) {
		if ((v = kv[i].str) == NULL) {
			nhi_jsonw_i(&o, kv[i].name, kv[i].num);
			continue;
		}
		len = strlen(v);
		/* as jansson refuses it in the tree form: before any redaction or cut */
		NHI_CHECK(nhi_jsonw_utf8_valid(v, len), NHI_ERR_ARG, "audit field '%s' is not valid UTF-8", kv[i].name);
		NHI_TRY(verdict_value(v, len, &cut_value, &cc, &v));
		nhi_jsonw_s(&o, kv[i].name, v);
	}
	rv = nhi_jsonw_end(&o);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "audit event '%s'", event);
		goto out;
	}
	NHI_TRY(check_line_len(event, text.len));
	owned = strdup((const char *)text.data); /* the item owns a malloc'ed copy, as for the tree form */
	NHI_CHECK(owned != NULL, NHI_ERR_NOMEM, "out of memory");
	rv = submit_text(a, event, &owned, text.len, &cc, done, arg);
out:
	free(owned);
	nhi_buf_free(&text);
	nhi_buf_free(&cut_value);
	return rv;
}

/* decode one base64url JSON segment of a compact token; NULL if it is not one */
static json_t *token_segment(const char *s, size_t n)
{
	struct nhi_buf b = {0};
	json_t *j = NULL;

	if (n > 0 && nhi_b64url_decode(s, n, &b) == NHI_OK)
		j = json_loadb((const char *)b.data, b.len, JSON_REJECT_DUPLICATES, NULL);
	nhi_buf_free(&b);
	if (j != NULL && !json_is_object(j)) {
		json_decref(j);
		j = NULL;
	}
	return j;
}

static nhi_err copy_member(json_t *dst, const char *name, json_t *src, const char *member, bool string)
{
	json_t *v = json_object_get(src, member);

	if (string ? !json_is_string(v) : !json_is_integer(v))
		return NHI_OK;
	if (json_object_set(dst, name, v) != 0)
		return nhi_err_set(NHI_ERR_NOMEM, "out of memory");
	return NHI_OK;
}

nhi_err nhi_audit_token_fields(json_t *fields, const char *token, size_t token_len, bool verified)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t digest[32];
	char hex[HASH_HEX_BYTES + 1];
	const char *d1 = NULL, *d2 = NULL;
	json_t *hdr = NULL, *claims = NULL;
	static const char *const names[] = {"token_kid", "token_jti", "token_sub", "token_exp", "token_malformed"};
	size_t i;

	NHI_CHECK(json_is_object(fields) && token != NULL, NHI_ERR_ARG, "nhi_audit_token_fields: missing argument");
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		(void)json_object_del(fields, names[i]);
	NHI_TRY(nhi_sha256(token, token_len, digest));
	nhi_hex(digest, 32, hex);
	NHI_CHECK(json_object_set_new(fields, "token_sha256", json_string(hex)) == 0, NHI_ERR_NOMEM, "out of memory");
	if (token_len <= NHI_TOKEN_MAX_BYTES) {
		d1 = memchr(token, '.', token_len);
		if (d1 != NULL)
			d2 = memchr(d1 + 1, '.', token_len - (size_t)(d1 + 1 - token));
	}
	if (d2 != NULL) {
		hdr = token_segment(token, (size_t)(d1 - token));
		claims = token_segment(d1 + 1, (size_t)(d2 - d1 - 1));
	}
	if (hdr != NULL)
		NHI_TRY(copy_member(fields, "token_kid", hdr, "kid", true));
	if (claims != NULL) {
		NHI_TRY(copy_member(fields, "token_jti", claims, "jti", true));
		NHI_TRY(copy_member(fields, "token_sub", claims, "sub", true));
		NHI_TRY(copy_member(fields, "token_exp", claims, "exp", false));
	}
	NHI_CHECK(json_object_set_new(fields, "token_claims", json_string(verified ? "verified" : "unverified")) == 0,
		  NHI_ERR_NOMEM, "out of memory");
	if (hdr == NULL || claims == NULL)
		NHI_CHECK(json_object_set_new(fields, "token_malformed", json_true()) == 0, NHI_ERR_NOMEM,
			  "out of memory");
	rv = NHI_OK;
out:
	json_decref(hdr);
	json_decref(claims);
	return rv;
}

nhi_err nhi_audit_record_token(struct nhi_audit *a, const char *event, const char *token, size_t token_len,
			       bool verified, json_t *fields)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	if (fields == NULL)
		fields = json_object();
	NHI_CHECK(fields != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_audit_token_fields(fields, token, token_len, verified));
	rv = nhi_audit_record(a, event, fields);
	fields = NULL;
out:
	json_decref(fields);
	return rv;
}

nhi_err nhi_audit_checkpoint(struct nhi_audit *a)
{
	struct audit_item it = {.kind = ITEM_CHECKPOINT, .fields_len = 0};

	if (a == NULL)
		return nhi_err_set(NHI_ERR_ARG, "nhi_audit_checkpoint: no log");
	return submit(a, &it, NULL);
}

void nhi_audit_get_stats(struct nhi_audit *a, struct nhi_audit_stats *out)
{
	pthread_mutex_lock(&a->mu);
	*out = a->stats;
	pthread_mutex_unlock(&a->mu);
}

/* ---- open and close ------------------------------------------------------------------ */

static void destroy(struct nhi_audit *a)
{
	if (a->writer_started) {
		pthread_mutex_lock(&a->mu);
		a->stopping = true;
		pthread_cond_signal(&a->work_cv);
		pthread_mutex_unlock(&a->mu);
		pthread_join(a->writer, NULL);
	}
	if (a->fd >= 0)
		close(a->fd); /* releases the flock */
	nhi_hsm_key_free(a->key);
	nhi_buf_free(&a->batch);
	pthread_cond_destroy(&a->work_cv);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

nhi_err nhi_audit_close(struct nhi_audit *a)
{
	nhi_err rv = NHI_OK;

	if (a == NULL)
		return NHI_OK;
	if (a->writer_started) {
		rv = record_internal(a, "audit_close", json_pack("{s:i}", "pid", (int)getpid()));
		if (rv == NHI_OK)
			rv = nhi_audit_checkpoint(a);
	}
	destroy(a);
	return rv;
}

void nhi_audit_free(struct nhi_audit *a)
{
	nhi_err e = nhi_audit_close(a);

	(void)e; /* nowhere to report it: callers who care use nhi_audit_close */
}

static nhi_err open_file(struct nhi_audit *a, const char *path, off_t *size)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat st;

	a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	NHI_CHECK(a->fd >= 0 || errno != ELOOP, NHI_ERR_PERM,
		  "audit log %s is a symbolic link: set audit_log to the real file", path);
	NHI_CHECK(a->fd >= 0 || errno != ENOENT, NHI_ERR_NOT_FOUND,
		  "cannot create audit log %s: its directory does not exist (create it, mode 0700)", path);
	NHI_CHECK(a->fd >= 0, NHI_ERR_IO, "cannot open audit log %s: %s", path, strerror(errno));
	NHI_CHECK(fstat(a->fd, &st) == 0, NHI_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
	NHI_CHECK(S_ISREG(st.st_mode), NHI_ERR_PERM, "audit log %s is not a regular file", path);
	NHI_CHECK(st.st_uid == geteuid(), NHI_ERR_PERM, "audit log %s is owned by uid %u, not by nhid's uid %u: chown it",
		  path, (unsigned)st.st_uid, (unsigned)geteuid());
	NHI_CHECK((st.st_mode & 077) == 0, NHI_ERR_PERM, "audit log %s is mode %04o, readable by others: chmod 600 %s",
		  path, (unsigned)(st.st_mode & 07777), path);
	NHI_CHECK(flock(a->fd, LOCK_EX | LOCK_NB) == 0, errno == EWOULDBLOCK ? NHI_ERR_EXISTS : NHI_ERR_IO,
		  "audit log %s is locked by another process (another nhid?): one writer per log (%s)", path,
		  strerror(errno));
	if (st.st_size == 0) /* the new file's name must survive a crash with its first records */
		NHI_TRY(nhi_fsync_dir_of(path));
	*size = st.st_size;
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err read_at(int fd, uint8_t *buf, size_t n, off_t off)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	ssize_t r;

	while (n > 0) {
		r = pread(fd, buf, n, off);
		if (r < 0 && errno == EINTR)
			continue;
		NHI_CHECK(r > 0, NHI_ERR_IO, "reading the audit log: %s", r < 0 ? strerror(errno) : "unexpected end");
		buf += r;
		n -= (size_t)r;
		off += r;
	}
	rv = NHI_OK;
out:
	return rv;
}

/* seq and prev of one line of an existing log */
static nhi_err parse_tail_line(const uint8_t *p, size_t n, const char *path, long long *seq, char prev[HASH_HEX_BYTES + 1])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *j = NULL, *s;
	const char *pv;
	json_error_t jerr;

	NHI_CHECK(n > 0 && n <= NHI_AUDIT_LINE_MAX_BYTES, NHI_ERR_FORMAT, "a line at the end of %s is empty or longer "
		  "than %d bytes", path, NHI_AUDIT_LINE_MAX_BYTES);
	j = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &jerr);
	NHI_CHECK(j != NULL && json_is_object(j), NHI_ERR_FORMAT, "a line at the end of %s is not a JSON object (%s)",
		  path, j == NULL ? jerr.text : "wrong type");
	s = json_object_get(j, "seq");
	pv = json_string_value(json_object_get(j, "prev"));
	NHI_CHECK(json_is_integer(s) && json_integer_value(s) >= 0 && pv != NULL && strlen(pv) == HASH_HEX_BYTES,
		  NHI_ERR_FORMAT, "a line at the end of %s is not an audit record (no seq or prev)", path);
	*seq = json_integer_value(s);
	memcpy(prev, pv, HASH_HEX_BYTES + 1);
	rv = NHI_OK;
out:
	json_decref(j);
	return rv;
}

/* what load_tail found; a partial line after the last complete one is cut by cut_tail */
struct tail_info {
	bool continued;
	uint8_t *buf;             /* the end of the log as read; owned, freed by tail_info_free */
	size_t torn_at;           /* offset in buf of the partial line */
	unsigned long long torn_bytes;
	char torn_sha256[HASH_HEX_BYTES + 1];
	char torn_copy[NHI_AUDIT_VALUE_MAX_BYTES + 1]; /* check_config makes every name fit */
};

static void tail_info_free(struct tail_info *ti)
{
	free(ti->buf);
	ti->buf = NULL;
}

/* the name of the copy of a torn tail at seq `seq`, cut at `t`; false if it does not fit */
static bool torn_copy_name(char out[NHI_AUDIT_VALUE_MAX_BYTES + 1], const char *path, unsigned long long seq,
			   long long t)
{
	int n = snprintf(out, NHI_AUDIT_VALUE_MAX_BYTES + 1, "%s.torn-%llu-%lld", path, seq, t);

	return n >= 0 && n <= NHI_AUDIT_VALUE_MAX_BYTES;
}

/*
 * Continue an existing log: check its last two complete lines (they parse, their
 * seqs are consecutive, the last links to the one before), set seq and prev from
 * the last, and name the copy of a partial line after it. Changes nothing on disk:
 * cut_tail does, once the record that reports the cut is ready.
 */
static nhi_err load_tail(struct nhi_audit *a, const char *path, off_t size, struct tail_info *ti)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t window, end, last_start, prev_start = 0, torn;
	uint8_t *buf = NULL, digest[32];
	const uint8_t *nl, *q;
	long long seq = -1, pseq = -1;
	char prev_hex[HASH_HEX_BYTES + 1], pprev[HASH_HEX_BYTES + 1], hex[HASH_HEX_BYTES + 1];
	bool whole;

	memset(ti, 0, sizeof(*ti));
	if (size == 0)
		return NHI_OK;
	window = (size_t)size;
	if (window > NHI_AUDIT_TORN_MAX_BYTES + 2 * (NHI_AUDIT_LINE_MAX_BYTES + 1))
		window = NHI_AUDIT_TORN_MAX_BYTES + 2 * (NHI_AUDIT_LINE_MAX_BYTES + 1);
	whole = window == (size_t)size;
	buf = malloc(window);
	NHI_CHECK(buf != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(read_at(a->fd, buf, window, size - (off_t)window));
	nl = memrchr(buf, '\n', window);
	end = nl != NULL ? (size_t)(nl - buf) + 1 : 0; /* just past the last complete line */
	torn = window - end;
	NHI_CHECK(nl != NULL || whole, NHI_ERR_FORMAT,
		  "the last %zu bytes of audit log %s hold no complete record, more than a crash can leave: run "
		  "'nhictl audit verify %s'; to start a new log, move the file aside",
		  window, path, path);
	NHI_CHECK(torn <= NHI_AUDIT_TORN_MAX_BYTES, NHI_ERR_FORMAT,
		  "audit log %s ends with %zu bytes that are not a complete record, more than a crash can leave: run "
		  "'nhictl audit verify %s'; to start a new log, move the file aside",
		  path, torn, path);
	if (end > 0) {
		q = end >= 2 ? memrchr(buf, '\n', end - 1) : NULL;
		NHI_CHECK(q != NULL || whole, NHI_ERR_FORMAT, "the last line of audit log %s is longer than %d bytes", path,
			  NHI_AUDIT_LINE_MAX_BYTES);
		last_start = q != NULL ? (size_t)(q - buf) + 1 : 0;
		rv = parse_tail_line(buf + last_start, end - 1 - last_start, path, &seq, prev_hex);
		if (rv == NHI_OK && last_start > 0) {
			q = last_start >= 2 ? memrchr(buf, '\n', last_start - 1) : NULL;
			if (q == NULL && !whole)
				rv = nhi_err_set(NHI_ERR_FORMAT, "the next-to-last line of audit log %s is longer than %d "
								 "bytes", path, NHI_AUDIT_LINE_MAX_BYTES);
			prev_start = q != NULL ? (size_t)(q - buf) + 1 : 0;
			if (rv == NHI_OK)
				rv = parse_tail_line(buf + prev_start, last_start - 1 - prev_start, path, &pseq, pprev);
		}
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "cannot continue audit log %s (run 'nhictl audit verify %s'; to start a new log, "
					 "move the file aside)", path, path);
			goto out;
		}
		if (last_start == 0) {
			NHI_CHECK(seq == 0 && strcmp(prev_hex, zero_hash_hex) == 0, NHI_ERR_FORMAT,
				  "cannot continue audit log %s: its only line is not a first record (seq 0, prev zeros): "
				  "run 'nhictl audit verify %s'; to start a new log, move the file aside", path, path);
		} else {
			NHI_TRY(nhi_sha256(buf + prev_start, last_start - 1 - prev_start, digest));
			nhi_hex(digest, 32, hex);
			NHI_CHECK(pseq >= 0 && seq == pseq + 1 && strcmp(hex, prev_hex) == 0, NHI_ERR_FORMAT,
				  "cannot continue audit log %s: its last two lines do not chain (seq %lld after %lld, or "
				  "prev is not the SHA-256 of the line before): run 'nhictl audit verify %s'; to start a "
				  "new log, move the file aside", path, seq, pseq, path);
		}
		NHI_TRY(nhi_sha256(buf + last_start, end - 1 - last_start, a->prev));
		a->seq = (unsigned long long)seq + 1;
		ti->continued = true;
	}
	if (torn > 0) {
		NHI_TRY(nhi_sha256(buf + end, torn, digest));
		nhi_hex(digest, 32, ti->torn_sha256);
		ti->torn_bytes = torn;
		ti->torn_at = end;
		NHI_CHECK(torn_copy_name(ti->torn_copy, path, a->seq, (long long)time(NULL)), NHI_ERR_INTERNAL,
			  "the name of the copy of the partial last line of audit log %s does not fit", path);
	}
	ti->buf = buf;
	buf = NULL;
	rv = NHI_OK;
out:
	free(buf);
	return rv;
}

/*
 * A crash during a write left a partial line: these bytes were never acknowledged
 * (that needs the fdatasync after the whole batch). Keep a copy for the forensic
 * record, then cut them so the chain goes on cleanly. The copy, bytes and name, is
 * durable before the cut is (nhi_file_write_excl fsyncs the file and its
 * directory): a second crash cannot keep the cut and lose what was cut.
 */
static nhi_err cut_tail(struct nhi_audit *a, const char *path, off_t size, const struct tail_info *ti)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	if (ti->torn_bytes == 0)
		return NHI_OK;
	rv = nhi_file_write_excl(ti->torn_copy, ti->buf + ti->torn_at, ti->torn_bytes, 0600);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "saving the partial last line of audit log %s before cutting it", path);
		goto out;
	}
	NHI_CHECK(ftruncate(a->fd, size - (off_t)ti->torn_bytes) == 0 && fdatasync(a->fd) == 0, NHI_ERR_IO,
		  "cutting the partial last line of audit log %s: %s", path, strerror(errno));
	if (!ti->continued)
		NHI_TRY(nhi_fsync_dir_of(path));
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err check_config(const struct nhi_audit_config *cfg)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *label = cfg->key_label ? cfg->key_label : NHI_AUDIT_KEY_LABEL_DEFAULT;
	char copy[NHI_AUDIT_VALUE_MAX_BYTES + 1];
	size_t i, suffix, cut = 0;

	NHI_CHECK(cfg->path != NULL && cfg->path[0] != '\0', NHI_ERR_CONFIG, "no audit log path configured");
	NHI_CHECK(cfg->hsm != NULL, NHI_ERR_ARG, "the audit log needs the token holding its checkpoint key");
	NHI_CHECK(cfg->checkpoint_records <= NHI_AUDIT_CHECKPOINT_RECORDS_MAX, NHI_ERR_CONFIG,
		  "audit checkpoint every %u records is over the maximum %d", cfg->checkpoint_records,
		  NHI_AUDIT_CHECKPOINT_RECORDS_MAX);
	NHI_CHECK(cfg->checkpoint_seconds <= NHI_AUDIT_CHECKPOINT_S_MAX, NHI_ERR_CONFIG,
		  "audit checkpoint every %u s is over the maximum %d", cfg->checkpoint_seconds,
		  NHI_AUDIT_CHECKPOINT_S_MAX);
	NHI_CHECK(strlen(label) > 0 && strlen(label) <= NHI_HSM_LABEL_MAX_BYTES, NHI_ERR_CONFIG,
		  "audit key label must be 1-%d bytes", NHI_HSM_LABEL_MAX_BYTES);
	/* the label goes into checkpoint lines unescaped */
	for (i = 0; label[i] != '\0'; i++)
		NHI_CHECK(b64url_char(label[i]) || label[i] == '.', NHI_ERR_CONFIG,
			  "audit key label '%s' may hold only [A-Za-z0-9._-]", label);
	/* a start after a crash names the copy of the cut tail, <path>.torn-<seq>-<time>,
	 * in its audit_open record: refuse now, not after a crash, a path whose copy's
	 * name could not go into that record whole */
	NHI_CHECK(nhi_jsonw_utf8_valid(cfg->path, strlen(cfg->path)), NHI_ERR_CONFIG,
		  "audit log path %s is not valid UTF-8: the log names files beside it in its JSON records; choose "
		  "a UTF-8 path", cfg->path);
	suffix = (size_t)snprintf(NULL, 0, ".torn-%llu-%lld", ULLONG_MAX, LLONG_MIN);
	NHI_CHECK(strlen(cfg->path) + suffix <= NHI_AUDIT_VALUE_MAX_BYTES &&
			  torn_copy_name(copy, cfg->path, ULLONG_MAX, LLONG_MIN),
		  NHI_ERR_CONFIG, "audit log path %.64s... is %zu bytes, over %zu: the name of the copy a crash leaves "
		  "beside it must fit in an audit record; choose a shorter path", cfg->path, strlen(cfg->path),
		  NHI_AUDIT_VALUE_MAX_BYTES - suffix);
	NHI_CHECK(string_verdict(copy, strlen(copy), &cut) == KEEP, NHI_ERR_CONFIG,
		  "audit log path %s looks like a JWT or PEM to the audit log's secret filter, which would redact it "
		  "in its own records: choose another path", cfg->path);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_audit_open(const struct nhi_audit_config *cfg, struct nhi_audit **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_audit *a = NULL;
	pthread_condattr_t ca;
	EVP_PKEY *pub = NULL;
	struct tail_info ti = {0};
	struct clean_counts cc = {0};
	struct audit_item it = {.kind = ITEM_RECORD, .event = "audit_open"};
	json_t *f = NULL;
	char *text = NULL;
	off_t size = 0;

	*out = NULL;
	NHI_CHECK(cfg != NULL, NHI_ERR_ARG, "nhi_audit_open: no config");
	NHI_TRY(check_config(cfg));
	a = calloc(1, sizeof(*a));
	NHI_CHECK(a != NULL, NHI_ERR_NOMEM, "out of memory");
	a->fd = -1;
	pthread_mutex_init(&a->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->work_cv, &ca);
	pthread_condattr_destroy(&ca);
	a->hsm = cfg->hsm;
	snprintf(a->key_label, sizeof(a->key_label), "%s", cfg->key_label ? cfg->key_label : NHI_AUDIT_KEY_LABEL_DEFAULT);
	a->cp_records = cfg->checkpoint_records ? cfg->checkpoint_records : NHI_AUDIT_CHECKPOINT_RECORDS_DEFAULT;
	a->cp_seconds = cfg->checkpoint_seconds ? cfg->checkpoint_seconds : NHI_AUDIT_CHECKPOINT_S_DEFAULT;

	rv = nhi_hsm_find(a->hsm, a->key_label, &a->key);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "audit key '%s' (made by the ceremony) in %s", a->key_label, nhi_hsm_token_desc(a->hsm));
		goto out;
	}
	NHI_CHECK(nhi_hsm_key_kind(a->key) == NHI_KEY_EC_P256, NHI_ERR_CONFIG,
		  "audit key '%s' is not an EC P-256 key: checkpoints are ES256", a->key_label);
	NHI_TRY(nhi_hsm_pubkey(a->hsm, a->key, &pub));
	NHI_TRY(nhi_pkey_fingerprint(pub, a->key_fp));

	NHI_TRY(open_file(a, cfg->path, &size));
	NHI_TRY(load_tail(a, cfg->path, size, &ti));
	a->stats.next_seq = a->seq;

	/* everything that can fail is done before a torn tail is cut, so that a cut
	 * is always in the signed history: the audit_open record, checked and
	 * serialised (a torn copy's name is UTF-8 and fits: check_config), and the
	 * writer thread (it writes nothing until a record is queued) */
	f = json_pack("{s:s, s:s, s:s, s:i, s:i, s:i}", "log", ti.continued ? "continued" : "created", "key_label",
		      a->key_label, "key_fp", a->key_fp, "checkpoint_records", (int)a->cp_records, "checkpoint_seconds",
		      (int)a->cp_seconds, "pid", (int)getpid());
	NHI_CHECK(f != NULL, NHI_ERR_NOMEM, "out of memory");
	if (ti.torn_bytes > 0)
		NHI_CHECK(json_object_set_new(f, "torn_tail_bytes", json_integer((json_int_t)ti.torn_bytes)) == 0 &&
				  json_object_set_new(f, "torn_tail_sha256", json_string(ti.torn_sha256)) == 0 &&
				  json_object_set_new(f, "torn_tail_copy", json_string(ti.torn_copy)) == 0,
			  NHI_ERR_NOMEM, "out of memory, or the name %s is not UTF-8", ti.torn_copy);
	rv = prepare("audit_open", f, &text, &cc);
	f = NULL;
	NHI_TRY(rv);
	NHI_CHECK(cc.redacted == 0 && cc.truncated == 0, NHI_ERR_INTERNAL,
		  "the audit_open record of %s would not keep its fields whole", cfg->path);
	NHI_CHECK(pthread_create(&a->writer, NULL, writer_main, a) == 0, NHI_ERR_INTERNAL,
		  "cannot start the audit writer thread");
	a->writer_started = true;

	NHI_TRY(cut_tail(a, cfg->path, size, &ti));
	it.fields = text;
	it.fields_len = strlen(text);
	NHI_TRY(submit(a, &it, &cc));
	*out = a;
	a = NULL;
	rv = NHI_OK;
out:
	json_decref(f);
	free(text);
	tail_info_free(&ti);
	EVP_PKEY_free(pub);
	if (a != NULL)
		destroy(a);
	return rv;
}

/* ---- verification ---------------------------------------------------------------------- */

static bool digits(const char *s, size_t n, int *v)
{
	size_t i;

	*v = 0;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		*v = *v * 10 + (s[i] - '0');
	}
	return true;
}

/* exactly the form the writer makes: RFC 3339 UTC with milliseconds */
static bool valid_time(const char *s)
{
	int y, mo, d, h, mi, se, ms;

	return s != NULL && strlen(s) == TIME_BYTES && digits(s, 4, &y) && s[4] == '-' && digits(s + 5, 2, &mo) &&
	       s[7] == '-' && digits(s + 8, 2, &d) && s[10] == 'T' && digits(s + 11, 2, &h) && s[13] == ':' &&
	       digits(s + 14, 2, &mi) && s[16] == ':' && digits(s + 17, 2, &se) && s[19] == '.' &&
	       digits(s + 20, 3, &ms) && s[23] == 'Z' && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h <= 23 &&
	       mi <= 59 && se <= 60;
}

static bool valid_hex64(const char *s)
{
	size_t i;

	if (s == NULL || strlen(s) != HASH_HEX_BYTES)
		return false;
	for (i = 0; i < HASH_HEX_BYTES; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

struct verifier {
	EVP_PKEY *pub;
	char pub_fp[HASH_HEX_BYTES + 1];
	EVP_MD_CTX *md;
};

static nhi_err check_checkpoint(struct verifier *v, json_t *rec, const uint8_t *line, size_t len,
				unsigned long long n, long long seq, const char *prev_hex)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *label, *fp, *sig;
	json_t *head_seq;
	size_t q, sig_len, tag = strlen(SIG_MEMBER);
	struct nhi_buf raw = {0}, der = {0};

	label = json_string_value(json_object_get(rec, "key_label"));
	fp = json_string_value(json_object_get(rec, "key_fp"));
	sig = json_string_value(json_object_get(rec, "sig"));
	head_seq = json_object_get(rec, "head_seq");
	NHI_CHECK(seq > 0, NHI_ERR_FORMAT, "line %llu: a checkpoint cannot be the first record", n);
	NHI_CHECK(label != NULL && valid_hex64(fp) && sig != NULL, NHI_ERR_FORMAT,
		  "line %llu: checkpoint lacks key_label, key_fp or sig", n);
	NHI_CHECK(json_is_string(json_object_get(rec, "alg")) &&
			  strcmp(json_string_value(json_object_get(rec, "alg")), "ES256") == 0,
		  NHI_ERR_FORMAT, "line %llu: checkpoint alg is not ES256", n);
	NHI_CHECK(json_is_integer(head_seq) && json_integer_value(head_seq) == seq - 1, NHI_ERR_VERIFY,
		  "line %llu: checkpoint head_seq is not %lld, the seq of the line before", n, seq - 1);
	NHI_CHECK(json_is_string(json_object_get(rec, "head")) &&
			  strcmp(json_string_value(json_object_get(rec, "head")), prev_hex) == 0,
		  NHI_ERR_VERIFY, "line %llu: checkpoint head is not the SHA-256 of line %llu", n, n - 1);
	/* the signed bytes: the line up to ,"sig":"..."} which must close it */
	NHI_CHECK(len >= tag + 4 && line[len - 1] == '}' && line[len - 2] == '"', NHI_ERR_FORMAT,
		  "line %llu: a checkpoint must end with its sig member", n);
	q = len - 2;
	while (q > 0 && b64url_char((char)line[q - 1]))
		q--;
	sig_len = len - 2 - q;
	NHI_CHECK(q >= tag + 1 && line[q - 1] == '"' && memcmp(line + q - 1 - tag, SIG_MEMBER, tag) == 0 &&
			  strlen(sig) == sig_len && memcmp(sig, line + q, sig_len) == 0,
		  NHI_ERR_FORMAT, "line %llu: a checkpoint must end with its sig member", n);
	NHI_CHECK(nhi_b64url_decode(sig, sig_len, &raw) == NHI_OK && raw.len == 64, NHI_ERR_FORMAT,
		  "line %llu: checkpoint sig is not 64 bytes of base64url", n);
	if (v->pub == NULL) {
		rv = NHI_OK;
		goto out;
	}
	NHI_CHECK(strcmp(fp, v->pub_fp) == 0, NHI_ERR_VERIFY,
		  "line %llu: checkpoint was signed by key %.64s (SPKI SHA-256 %s), but the given public key is %s: pass "
		  "the audit key of the nhid that wrote this log",
		  n, label, fp, v->pub_fp);
	NHI_TRY(nhi_ecdsa_raw_to_der(raw.data, &der));
	NHI_CHECK_SSL(EVP_DigestVerifyInit(v->md, NULL, EVP_sha256(), NULL, v->pub) == 1, NHI_ERR_CRYPTO,
		      "line %llu: verify init", n);
	NHI_CHECK(EVP_DigestVerify(v->md, der.data, der.len, line, q - 1 - tag) == 1, NHI_ERR_VERIFY,
		  "line %llu: checkpoint signature does not verify with the audit public key: the checkpoint was "
		  "altered, or the records before it were rewritten",
		  n);
	rv = NHI_OK;
out:
	ERR_clear_error();
	nhi_buf_free(&raw);
	nhi_buf_free(&der);
	return rv;
}

nhi_err nhi_audit_verify(const uint8_t *data, size_t len, EVP_PKEY *pub, struct nhi_audit_report *rep)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct verifier v = {.pub = pub};
	const uint8_t *p = data, *end = data + len, *nl;
	uint8_t prev[32];
	char prev_hex[HASH_HEX_BYTES + 1];
	unsigned long long n = 0, vouched = 0, cp_before = 0;
	size_t line_len;
	json_t *rec = NULL, *jseq, *torn;
	json_error_t jerr;
	const char *s, *event, *ts;
	long long seq;
	bool signed_before;

	memset(rep, 0, sizeof(*rep));
	memcpy(prev_hex, zero_hash_hex, sizeof(zero_hash_hex));
	NHI_CHECK(data != NULL || len == 0, NHI_ERR_ARG, "nhi_audit_verify: no data");
	if (pub != NULL) {
		NHI_CHECK(nhi_pkey_is_p256(pub), NHI_ERR_ARG,
			  "the audit public key must be EC P-256");
		NHI_TRY(nhi_pkey_fingerprint(pub, v.pub_fp));
		v.md = EVP_MD_CTX_new();
		NHI_CHECK_SSL(v.md != NULL, NHI_ERR_NOMEM, "EVP_MD_CTX_new");
		rep->signatures_checked = true;
	}
	NHI_CHECK(len > 0, NHI_ERR_FORMAT, "the log is empty: an audit log starts with an audit_open record");
	while (p < end) {
		n++;
		vouched = n - 1; /* a bad line by itself leaves the lines before it intact */
		nl = memchr(p, '\n', (size_t)(end - p));
		NHI_CHECK(nl != NULL, NHI_ERR_FORMAT,
			  "line %llu: truncated: the log ends without a newline (a crash during a write leaves this, and "
			  "nhid cuts it at its next start; otherwise the file was cut)",
			  n);
		line_len = (size_t)(nl - p);
		NHI_CHECK(line_len > 0, NHI_ERR_FORMAT, "line %llu: empty line", n);
		NHI_CHECK(line_len <= NHI_AUDIT_LINE_MAX_BYTES, NHI_ERR_FORMAT, "line %llu: longer than %d bytes", n,
			  NHI_AUDIT_LINE_MAX_BYTES);
		json_decref(rec);
		rec = json_loadb((const char *)p, line_len, JSON_REJECT_DUPLICATES, &jerr);
		NHI_CHECK(rec != NULL, NHI_ERR_FORMAT, "line %llu: not JSON: %s (column %d)", n, jerr.text, jerr.column);
		NHI_CHECK(json_is_object(rec), NHI_ERR_FORMAT, "line %llu: not a JSON object", n);
		jseq = json_object_get(rec, "seq");
		NHI_CHECK(json_is_integer(jseq), NHI_ERR_FORMAT, "line %llu: no integer seq", n);
		seq = json_integer_value(jseq);
		NHI_CHECK(seq == (long long)(n - 1), NHI_ERR_VERIFY,
			  "line %llu: seq is %lld, expected %llu: a record was removed, inserted or reordered before this "
			  "line",
			  n, seq, n - 1);
		s = json_string_value(json_object_get(rec, "prev"));
		NHI_CHECK(valid_hex64(s), NHI_ERR_FORMAT, "line %llu: prev is not a 64-digit hex SHA-256", n);
		/* a wrong prev means line n-1 may be the altered one; a checkpoint there
		 * whose signature verified cannot be, so the edit is on this line */
		signed_before = rep->signatures_checked && n >= 2 && rep->last_checkpoint_line == n - 1;
		if (n >= 2 && !signed_before)
			vouched = n - 2;
		if (n == 1)
			NHI_CHECK(strcmp(s, zero_hash_hex) == 0, NHI_ERR_VERIFY,
				  "line 1: prev is not 64 zeros: this is not the start of a log (was its beginning cut?)");
		else if (signed_before)
			NHI_CHECK(CRYPTO_memcmp(s, prev_hex, HASH_HEX_BYTES) == 0, NHI_ERR_VERIFY,
				  "line %llu: prev does not match the SHA-256 of line %llu, a checkpoint whose signature "
				  "verified: line %llu was altered, or lines were removed or inserted after line %llu",
				  n, n - 1, n, n - 1);
		else
			NHI_CHECK(CRYPTO_memcmp(s, prev_hex, HASH_HEX_BYTES) == 0, NHI_ERR_VERIFY,
				  "line %llu: prev does not match the SHA-256 of line %llu: line %llu was altered, or "
				  "lines were removed, inserted or reordered there",
				  n, n - 1, n - 1);
		vouched = n - 1;
		ts = json_string_value(json_object_get(rec, "time"));
		NHI_CHECK(valid_time(ts), NHI_ERR_FORMAT,
			  "line %llu: time is not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SS.mmmZ)", n);
		event = json_string_value(json_object_get(rec, "event"));
		NHI_CHECK(event != NULL && valid_name(event), NHI_ERR_FORMAT, "line %llu: no valid event name", n);
		NHI_CHECK(n > 1 || strcmp(event, "audit_open") == 0, NHI_ERR_VERIFY,
			  "line 1: event is '%s': a log starts with audit_open", event);
		if (strcmp(event, EVENT_CHECKPOINT) == 0) {
			/* a checkpoint that does not verify leaves the records since the one
			 * before unsigned: they may have been rewritten with fresh hashes */
			vouched = rep->last_checkpoint_line;
			NHI_TRY(check_checkpoint(&v, rec, p, line_len, n, seq, prev_hex));
			rep->checkpoints++;
			cp_before = rep->last_checkpoint_line;
			rep->last_checkpoint_line = n;
			rep->unsigned_tail = 0;
		} else {
			rep->unsigned_tail++;
		}
		if (strcmp(event, "audit_open") == 0) {
			rep->opens++;
			torn = json_object_get(rec, "torn_tail_bytes");
			if (json_is_integer(torn) && json_integer_value(torn) > 0)
				rep->torn_repairs++;
		}
		if (rep->last_time[0] != '\0' && strcmp(ts, rep->last_time) < 0)
			rep->time_regressions++;
		if (rep->first_time[0] == '\0')
			snprintf(rep->first_time, sizeof(rep->first_time), "%s", ts);
		snprintf(rep->last_time, sizeof(rep->last_time), "%s", ts);
		NHI_TRY(nhi_sha256(p, line_len, prev));
		nhi_hex(prev, 32, prev_hex);
		rep->records++;
		p = nl + 1;
	}
	rv = NHI_OK;
out:
	if (rv != NHI_OK) {
		rep->bad_line = n;
		/* the report vouches only for lines 1..vouched (docs/audit.md) */
		if (rep->last_checkpoint_line > vouched) { /* an unchecked checkpoint on the suspect line */
			rep->checkpoints--;
			rep->last_checkpoint_line = cp_before;
		}
		rep->records = vouched;
		rep->unsigned_tail = vouched - rep->last_checkpoint_line;
	}
	json_decref(rec);
	EVP_MD_CTX_free(v.md);
	return rv;
}
