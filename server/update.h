/*
 * server/update.h — signed documents that cross the data diode: update packages
 * (M-of-N threshold signatures, rollback protection, atomic apply), the trust
 * bundle (TUF-style root rotation) and model manifests. Used by nhid (watched
 * directory, /v1/trust-bundle, /v1/manifests/verify) and by nhictl (update, bundle,
 * manifest). Formats and runbook: docs/updates.md.
 *
 * Every signed document has the same envelope (JSON, JSON_REJECT_DUPLICATES):
 *   {"payload":"<base64url of the payload JSON bytes>",
 *    "signatures":[{"keyid":"<RFC 7638 thumbprint>","sig":"<base64url R||S>"}, ...]}
 * A signature is ES256 (ECDSA P-256, SHA-256, raw 64-byte R||S) over
 *   "<context>" || 0x00 || payload bytes
 * with context "nhid-update-v1", "nhid-bundle-v1" or "nhid-manifest-v1", so that a
 * signature made for one kind of document never verifies as another. The payload
 * bytes are signed exactly as carried: nothing is ever re-serialised before a check.
 *
 * Thread safety: keysets and bundles are read-only after construction and may be
 * shared by threads; nhi_update_apply_file/nhi_update_scan must not run concurrently
 * on the same state_dir (nhid runs them from one thread).
 */
#ifndef NHI_UPDATE_H
#define NHI_UPDATE_H

#include "../common/nhi.h"

#include <openssl/evp.h>

/* ---- keysets ----------------------------------------------------------------- */

/* ES256 public keys indexed by RFC 7638 thumbprint (kid). */
struct nhi_keyset;
nhi_err nhi_keyset_new(struct nhi_keyset **out) NHI_MUST_CHECK;
/* NULL is a no-op. */
void nhi_keyset_free(struct nhi_keyset *ks);
/*
 * Add a P-256 public key (reference taken with EVP_PKEY_up_ref; the caller keeps
 * its own). NHI_ERR_EXISTS when a key with the same thumbprint is present,
 * NHI_ERR_LIMIT past NHI_BUNDLE_KEYS_MAX, NHI_ERR_ARG for a non-P-256 key.
 */
nhi_err nhi_keyset_add(struct nhi_keyset *ks, EVP_PKEY *pub) NHI_MUST_CHECK;
size_t nhi_keyset_count(const struct nhi_keyset *ks);
/* The key with this kid, or NULL; borrowed for the life of the keyset. */
EVP_PKEY *nhi_keyset_get(const struct nhi_keyset *ks, const char *kid);

/* ---- signed documents (the common envelope) ------------------------------------ */

enum nhi_doc_type {
	NHI_DOC_UPDATE = 1,   /* context "nhid-update-v1" */
	NHI_DOC_BUNDLE = 2,   /* context "nhid-bundle-v1" */
	NHI_DOC_MANIFEST = 3, /* context "nhid-manifest-v1" */
};

/* An unsigned envelope {"payload":..., "signatures":[]} around `payload`, appended to out. */
nhi_err nhi_doc_wrap(const uint8_t *payload, size_t len, struct nhi_buf *out) NHI_MUST_CHECK;
/* The bytes a custodian signs for the document `doc` (context, NUL, payload); appended. */
nhi_err nhi_doc_signing_input(enum nhi_doc_type t, const uint8_t *doc, size_t len,
			      struct nhi_buf *out) NHI_MUST_CHECK;
/* The decoded payload bytes of `doc`, appended to out (no signature is checked). */
nhi_err nhi_doc_payload(enum nhi_doc_type t, const uint8_t *doc, size_t len, struct nhi_buf *out) NHI_MUST_CHECK;
/*
 * Merge one signature into `doc`: `sig` (64 bytes R||S) must verify under `signer`
 * (else NHI_ERR_VERIFY, nothing written); its keyid is signer's thumbprint. A
 * signature already present for that keyid is replaced, so re-signing never makes
 * duplicates. The new document is appended to out.
 */
nhi_err nhi_doc_add_signature(enum nhi_doc_type t, const uint8_t *doc, size_t len, EVP_PKEY *signer,
			      const uint8_t sig[64], struct nhi_buf *out) NHI_MUST_CHECK;
/*
 * Count the DISTINCT keys of `ks` with a valid signature on `doc`. Entries naming a
 * key outside `ks` are ignored; several entries for one key count once; an entry
 * whose signature does not verify does not count. NHI_ERR_FORMAT for a malformed
 * envelope.
 */
nhi_err nhi_doc_count_signers(enum nhi_doc_type t, const uint8_t *doc, size_t len, const struct nhi_keyset *ks,
			      unsigned *n_valid) NHI_MUST_CHECK;

/* ---- trust bundle -------------------------------------------------------------- */

/*
 * Payload: {"type":"nhid-trust-bundle","version":N,"expires_at":UNIX,
 *           "ca_certs":["PEM",...],"jwks":{"keys":[...]},
 *           "update_signers":[{"kid":..,"jwk":{..}}],"threshold":M,
 *           "peer_keys":[{"kid":..,"jwk":{..}}],"manifest_keys":[{"kid":..,"jwk":{..}}]}
 * Signed (NHI_DOC_BUNDLE) by at least `threshold` of its own update_signers; a
 * rotation N -> N+1 is also signed by at least N's threshold of N's update_signers.
 */
struct nhi_bundle;
void nhi_bundle_free(struct nhi_bundle *b);

enum nhi_bundle_reason {
	NHI_BUNDLE_OK = 0,
	NHI_BUNDLE_E_FORMAT,        /* "format": not a well-formed bundle */
	NHI_BUNDLE_E_PIN,           /* "pin": first bundle's payload SHA-256 is not the pinned one */
	NHI_BUNDLE_E_SELF_THRESHOLD, /* "self_threshold": too few signatures by its own signers */
	NHI_BUNDLE_E_PREV_THRESHOLD, /* "prev_threshold": too few signatures by the previous bundle's signers */
	NHI_BUNDLE_E_VERSION,       /* "version": not exactly previous + 1 */
	NHI_BUNDLE_E_EXPIRED,       /* "expired": the newest bundle is past expires_at */
	NHI_BUNDLE_E__COUNT
};
const char *nhi_bundle_reason_name(enum nhi_bundle_reason r);

/*
 * Parse a bundle and check it is signed by a threshold of its own signers; no
 * expiry or chain check. Used for the local, already-trusted copy in state_dir.
 */
nhi_err nhi_bundle_parse(const uint8_t *doc, size_t len, struct nhi_bundle **out,
			 enum nhi_bundle_reason *why) NHI_MUST_CHECK;
/*
 * Verify a chain docs[0..n-1]: docs[0]'s payload SHA-256 (hex) equals `pin_hex`
 * (NULL: docs[0] is trusted as given, e.g. the local copy) and is self-signed;
 * each next one has version = previous + 1 and a threshold of signatures from the
 * previous AND from its own signers; the last one is not expired at `now`
 * (intermediate ones may be, as in TUF). *out is the last bundle, owned by the
 * caller. On refusal: NHI_ERR_VERIFY/EXPIRED/ROLLBACK/FORMAT, *why and *bad_index set.
 */
nhi_err nhi_bundle_verify_chain(const uint8_t *const *docs, const size_t *lens, size_t n, const char *pin_hex,
				int64_t now, struct nhi_bundle **out, enum nhi_bundle_reason *why,
				size_t *bad_index) NHI_MUST_CHECK;
/* One rotation step from a trusted `cur` to `doc` (same rules). */
nhi_err nhi_bundle_verify_next(const struct nhi_bundle *cur, const uint8_t *doc, size_t len, int64_t now,
			       struct nhi_bundle **out, enum nhi_bundle_reason *why) NHI_MUST_CHECK;

struct nhi_bundle_create_req {
	uint64_t version;             /* 1 for the ceremony's bundle, then +1 per rotation */
	int64_t expires_at;
	const char *ca_pem;           /* one or more PEM certificates, NUL-terminated */
	const char *jwks;             /* the token JWK Set JSON, NUL-terminated */
	EVP_PKEY *const *signers;     /* update signers (custodians' public keys) */
	size_t n_signers;
	unsigned threshold;           /* M, 1..n_signers */
	EVP_PKEY *const *peers;       /* replication peer keys (may be 0) */
	size_t n_peers;
	EVP_PKEY *const *manifest;    /* model-manifest signing keys (may be 0) */
	size_t n_manifest;
};
/* An unsigned bundle document (NHI_DOC_BUNDLE envelope), appended to out. */
nhi_err nhi_bundle_create(const struct nhi_bundle_create_req *req, struct nhi_buf *out) NHI_MUST_CHECK;

/* Accessors; borrowed pointers live as long as the bundle. */
uint64_t nhi_bundle_version(const struct nhi_bundle *b);
int64_t nhi_bundle_expires_at(const struct nhi_bundle *b);
unsigned nhi_bundle_threshold(const struct nhi_bundle *b);
const struct nhi_keyset *nhi_bundle_update_signers(const struct nhi_bundle *b);
const struct nhi_keyset *nhi_bundle_manifest_keys(const struct nhi_bundle *b);
const struct nhi_keyset *nhi_bundle_peer_keys(const struct nhi_bundle *b);
/* The whole signed document as received: what GET /v1/trust-bundle serves. */
const struct nhi_buf *nhi_bundle_document(const struct nhi_bundle *b);
/* Lower-case hex SHA-256 of the payload bytes: the value operators pin. */
const char *nhi_bundle_fingerprint(const struct nhi_bundle *b);
/* The CA certificates, concatenated PEM (NUL-terminated). */
const char *nhi_bundle_ca_pem(const struct nhi_bundle *b);
/* The token JWKS as compact JSON (NUL-terminated). */
const char *nhi_bundle_jwks(const struct nhi_bundle *b);

/* ---- update packages ----------------------------------------------------------- */

/*
 * Payload: {"id":"..","kind":"..","version":N,"created_at":UNIX,"expires_at":UNIX,
 *           "body":"<base64url>","body_sha256":"<hex>"} — every member required, no other.
 */
enum nhi_update_kind {
	NHI_UPDATE_CERT_ROTATION = 0, /* "cert-rotation" */
	NHI_UPDATE_TRUST_BUNDLE,      /* "trust-bundle": body is the next bundle document */
	NHI_UPDATE_REVOCATION,        /* "revocation" */
	NHI_UPDATE_IDENTITY_BACKUP,   /* "identity-backup" */
	NHI_UPDATE_MODEL_MANIFEST,    /* "model-manifest" */
	NHI_UPDATE_TOKEN_KEYS,        /* "token-keys": the token-signing keys (rotation) */
	NHI_UPDATE_KIND__COUNT
};
#define NHI_UPDATE_KINDS_ALL ((1u << NHI_UPDATE_KIND__COUNT) - 1)
/* "cert-rotation", ...; NULL for an out-of-range value. */
const char *nhi_update_kind_name(enum nhi_update_kind k);
/* NHI_OK and *out, or NHI_ERR_NOT_FOUND for an unknown name. */
nhi_err nhi_update_kind_parse(const char *name, enum nhi_update_kind *out) NHI_MUST_CHECK;

enum nhi_update_reason {
	NHI_UPDATE_OK = 0,
	NHI_UPDATE_E_FORMAT,        /* "format": envelope or payload malformed */
	NHI_UPDATE_E_TOO_LARGE,     /* "too_large": over NHI_UPDATE_PACKAGE_MAX_BYTES */
	NHI_UPDATE_E_KIND_UNKNOWN,  /* "kind_unknown": kind names no known kind */
	NHI_UPDATE_E_KIND_DENIED,   /* "kind_not_accepted": a known kind this receiver does not take */
	NHI_UPDATE_E_THRESHOLD,     /* "threshold": fewer than M distinct valid bundle signers */
	NHI_UPDATE_E_EXPIRED,       /* "expired": expires_at is past the trusted time */
	NHI_UPDATE_E_NOT_YET_VALID, /* "not_yet_valid": created_at beyond now + skew */
	NHI_UPDATE_E_REPLAYED,      /* "replayed": version equals the last applied of its kind */
	NHI_UPDATE_E_ROLLBACK,      /* "rollback": version below the last applied of its kind */
	NHI_UPDATE_E_CHECKSUM,      /* "body_checksum": body does not hash to body_sha256 */
	NHI_UPDATE_E_BUNDLE_CHAIN,  /* "bundle_chain": trust-bundle body is not the next bundle */
	NHI_UPDATE_E_PREPARE,       /* "prepare_failed": the receiver's prepare hook refused the body */
	NHI_UPDATE_E__COUNT
};
const char *nhi_update_reason_name(enum nhi_update_reason r);

#define NHI_UPDATE_ID_BUF 129 /* NHI_UPDATE_ID_MAX_BYTES + NUL */
struct nhi_update_info {
	char id[NHI_UPDATE_ID_BUF];
	enum nhi_update_kind kind;
	uint64_t version;
	int64_t created_at, expires_at;
	uint8_t body_sha256[32];
	uint8_t package_sha256[32]; /* SHA-256 of the payload bytes: names this exact package */
	unsigned signers;           /* distinct valid bundle signers counted */
	bool committed;             /* it is the committed package of its kind (see committed_sha256) */
	bool kind_known;            /* kind was parsed: false for a package refused before (kind is then 0) */
};
struct nhi_update_create_req {
	const char *id; /* [A-Za-z0-9._-], 1..NHI_UPDATE_ID_MAX_BYTES */
	enum nhi_update_kind kind;
	uint64_t version; /* 1..NHI_UPDATE_VERSION_MAX */
	int64_t created_at, expires_at;
	const uint8_t *body;
	size_t body_len;
};
/* An unsigned package, appended to out. */
nhi_err nhi_update_create(const struct nhi_update_create_req *req, struct nhi_buf *out) NHI_MUST_CHECK;

struct nhi_update_check {
	const struct nhi_keyset *signers; /* the current bundle's update signers */
	unsigned threshold;               /* M, >= 1 */
	int64_t now;                      /* trusted time (see the clock rule), unix seconds */
	int64_t skew_s;                   /* allowed lead of created_at over now */
	unsigned kinds_allowed;           /* bit (1 << kind); 0 = all */
	uint64_t last_version[NHI_UPDATE_KIND__COUNT]; /* 0 = nothing applied yet */
	/*
	 * NULL, or the package_sha256 committed per kind (nhi_update_state): a well-formed
	 * package whose version is last_version[kind] and whose package_sha256 is the
	 * committed one IS the committed package: NHI_OK with info->committed set, before
	 * any kind, signature, time or version check, and no body. A crash between commit
	 * and move, then a rotated bundle or the package's expiry, never mis-rejects it.
	 */
	const uint8_t (*committed_sha256)[32];
};
/*
 * Verify a package. Checks, in order: size, envelope and payload format, (the
 * committed package, see committed_sha256), kind accepted, threshold of distinct
 * signers, created_at/expires_at, version, body checksum.
 * NHI_OK: *info filled and, when body != NULL, the body appended to it. Refusal:
 * an error (VERIFY, EXPIRED, ROLLBACK, FORMAT, LIMIT, DENIED), *why set to the
 * reason and the detail message naming it.
 */
nhi_err nhi_update_verify(const uint8_t *doc, size_t len, const struct nhi_update_check *chk,
			  struct nhi_update_info *info, struct nhi_buf *body,
			  enum nhi_update_reason *why) NHI_MUST_CHECK;

/* ---- apply state (state_dir) ---------------------------------------------------- */

/*
 * state_dir holds update-state.json (the single commit point, replaced atomically),
 * bodies/<kind>-<version> (the applied bodies, immutable), trust-bundle.json
 * (the ceremony's bundle v1 or a copy given at init) and applied/ rejected/.
 */
struct nhi_update_state {
	uint64_t version[NHI_UPDATE_KIND__COUNT];
	uint8_t package_sha256[NHI_UPDATE_KIND__COUNT][32];
	/*
	 * Committed, but the receiver's audit record of it is not known to be durable
	 * ("recorded":false in the file): every commit sets it, the receiver clears it with
	 * nhi_update_state_mark_recorded once its update_applied record is durable. nhid
	 * finding it set at startup (a crash between the two, or an offline apply) writes
	 * that record, marked recovered, before it serves anything.
	 */
	bool unrecorded[NHI_UPDATE_KIND__COUNT];
	int64_t time_high; /* highest trusted time seen (clock rule) */
};
/* Load update-state.json; a missing file is the empty state. */
nhi_err nhi_update_state_load(const char *state_dir, struct nhi_update_state *out) NHI_MUST_CHECK;
/*
 * The receiver's record of the committed package of kind `k` (named by its
 * package_sha256) is durable: clear its unrecorded mark (update-state.json replaced
 * atomically; nothing else in it changes). NHI_OK at once when the mark is clear;
 * NHI_ERR_NOT_FOUND when that package is not the committed one of its kind.
 */
nhi_err nhi_update_state_mark_recorded(const char *state_dir, enum nhi_update_kind k,
				       const uint8_t package_sha256[32]) NHI_MUST_CHECK;
/* Path of the applied body of `kind` into buf ("" and NHI_ERR_NOT_FOUND if none). */
nhi_err nhi_update_state_body_path(const char *state_dir, const struct nhi_update_state *st,
				   enum nhi_update_kind k, char *buf, size_t n) NHI_MUST_CHECK;

/*
 * The clock rule: the trusted time is max(local clock, time_high). A local clock
 * behind time_high by more than skew_s is refused (NHI_ERR_ROLLBACK, detail says
 * by how much and what to fix). *trusted is set on success.
 */
nhi_err nhi_update_clock(const struct nhi_update_state *st, int64_t local_now, int64_t skew_s,
			 int64_t *trusted) NHI_MUST_CHECK;

/* Receiver hook: validate/stage a verified body before it is committed. */
typedef nhi_err (*nhi_update_prepare_fn)(void *arg, const struct nhi_update_info *info, const uint8_t *body,
					 size_t len);

struct nhi_update_apply_cfg {
	const char *state_dir;           /* must exist; applied/ rejected/ bodies/ are created */
	const struct nhi_bundle *bundle; /* current trust bundle (signers + threshold) */
	int64_t now;                     /* local clock; 0 = time(NULL) */
	int64_t skew_s;                  /* 0 = NHI_UPDATE_CLOCK_SKEW_DEFAULT_S */
	unsigned kinds_allowed;          /* 0 = all */
	nhi_update_prepare_fn prepare;   /* may be NULL */
	/*
	 * May be NULL. Called after prepare accepted the body: an error leaves the package
	 * where it is, nothing committed or moved (res->why "kind_not_accepted", the error
	 * returned): a body this receiver cannot apply but another can (nhictl's offline
	 * apply leaves to nhid what needs nhid's token).
	 */
	nhi_update_prepare_fn hold;
	void *prepare_arg;               /* given to prepare and hold */
};

struct nhi_update_result {
	bool applied;               /* true: committed (or found committed and tidied up) */
	enum nhi_update_reason why; /* NHI_UPDATE_OK when applied */
	struct nhi_update_info info; /* filled as far as parsing got */
	char moved_to[4096];        /* where the package now is ("" if it was not moved) */
	char detail[NHI_ERR_DETAIL_MAX]; /* the refusal message, also in <moved_to>.reason */
};

/*
 * Process one package file: verify against cfg->bundle and the state, then
 * (1) write bodies/<kind>-<version> (fsync), (2) replace update-state.json
 * (the commit point), (3) write applied/<name>.reason and move the package to
 * applied/. A refused package goes to rejected/ with <name>.reason. A package found
 * already committed (crash between (2) and (3)) is moved to applied/ without a
 * second apply. Returns NHI_OK when applied; the refusal's error when rejected
 * (res->why, res->moved_to set); another error, with the package left in place,
 * when it could not be processed (I/O, clock) or cfg->hold held it back. A trust-bundle package also replaces
 * state_dir/trust-bundle.json: reload the bundle after it.
 */
nhi_err nhi_update_apply_file(const struct nhi_update_apply_cfg *cfg, const char *pkg_path,
			      struct nhi_update_result *res) NHI_MUST_CHECK;

struct nhi_update_scan_stats {
	unsigned applied, rejected, failed;
};
/*
 * Process every regular file directly in `incoming` (dot files, *.tmp.* and
 * subdirectories skipped), in order of (kind, version) so that several versions
 * dropped together apply in order, unparsable files first, then trust-bundle
 * packages before every other kind; at most NHI_UPDATE_SCAN_MAX_FILES per call.
 * `cb` (may be NULL) is told about each package after it is processed (for audit).
 * The trust bundle is reloaded from state_dir after a trust-bundle package.
 */
typedef void (*nhi_update_scan_cb)(void *arg, const char *path, nhi_err e, const struct nhi_update_result *res);
nhi_err nhi_update_scan(const struct nhi_update_apply_cfg *cfg, const char *incoming, nhi_update_scan_cb cb,
			void *cb_arg, struct nhi_update_scan_stats *stats) NHI_MUST_CHECK;

/*
 * A bundle document from a file (capped at NHI_BUNDLE_MAX_BYTES), parsed and
 * self-signature checked like nhi_bundle_parse; errors name the file. A file given
 * by hand is trusted as given: check its chain with nhi_bundle_verify_chain first.
 */
nhi_err nhi_bundle_load_file(const char *path, struct nhi_bundle **out) NHI_MUST_CHECK;
/* Load state_dir/trust-bundle.json (trusted local copy; self-signature checked). */
nhi_err nhi_update_load_bundle(const char *state_dir, struct nhi_bundle **out) NHI_MUST_CHECK;
/*
 * Install the first bundle in state_dir: verified against `pin_hex` and `now`,
 * written with nhi_file_write_excl (an existing one is NHI_ERR_EXISTS).
 */
nhi_err nhi_update_init_state(const char *state_dir, const uint8_t *doc, size_t len, const char *pin_hex,
			      int64_t now) NHI_MUST_CHECK;

/* ---- model manifests ------------------------------------------------------------ */

/*
 * Payload: {"type":"nhid-model-manifest","name":"..","created_at":UNIX,
 *           "files":[{"path":"a/b","size":N,"sha256":"hex"}, ...]}  paths sorted
 * bytewise, relative, no "." or ".." components, unique. Symlinks are never
 * followed: a symlink, device or fifo in the directory is an error.
 */
/* Hash the directory into an unsigned manifest document, appended to out. */
nhi_err nhi_manifest_build(const char *dir, const char *name, int64_t created_at, struct nhi_buf *out) NHI_MUST_CHECK;

enum nhi_manifest_diff { NHI_MANIFEST_DIFFERS = 1, NHI_MANIFEST_MISSING = 2, NHI_MANIFEST_EXTRA = 3 };
typedef void (*nhi_manifest_diff_cb)(void *arg, enum nhi_manifest_diff d, const char *path);
/*
 * Verify `doc` (signed by at least one of `keys`) and compare it with `dir`:
 * cb is called for every file that differs, is missing or is extra. NHI_OK when
 * the signature is good and the directory matches; NHI_ERR_VERIFY otherwise
 * (*n_diffs = number of differences; 0 means the signature was the problem).
 */
nhi_err nhi_manifest_verify_dir(const uint8_t *doc, size_t len, const struct nhi_keyset *keys, const char *dir,
				nhi_manifest_diff_cb cb, void *cb_arg, size_t *n_diffs) NHI_MUST_CHECK;

/*
 * The same check against a list the caller made (POST /v1/manifests/verify: the
 * inference component hashes what it loads): `files` is a JSON array of
 * {"path","size","sha256"} in any order, paths unique. NHI_ERR_FORMAT for a bad
 * list, else as nhi_manifest_verify_dir.
 */
struct json_t;
nhi_err nhi_manifest_verify_list(const uint8_t *doc, size_t len, const struct nhi_keyset *keys, struct json_t *files,
				 nhi_manifest_diff_cb cb, void *cb_arg, size_t *n_diffs) NHI_MUST_CHECK;

#endif
