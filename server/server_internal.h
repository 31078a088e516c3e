/* server/server_internal.h — what the server/ files share; not for other modules. */
#ifndef NHI_SERVER_INTERNAL_H
#define NHI_SERVER_INTERNAL_H

#include "server.h"
#include "audit.h"
#include "update.h"
#include "../common/limits.h"
#include "../hsm/hsm.h"
#include "../identity/identity.h"
#include "../tokens/tokens.h"

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>

/* ---- metrics (metrics.c) ---------------------------------------------------------- */

enum nhi_route {
	NHI_ROUTE_HEALTH,
	NHI_ROUTE_TOKENS,
	NHI_ROUTE_RESOLVE,
	NHI_ROUTE_JWKS,
	NHI_ROUTE_METRICS,
	NHI_ROUTE_RELOAD,
	NHI_ROUTE_TRUST_BUNDLE,
	NHI_ROUTE_SIGN,
	NHI_ROUTE_VERIFY,
	NHI_ROUTE_MANIFEST_VERIFY,
	NHI_ROUTE_OTHER,
	NHI_ROUTE__COUNT
};
#define NHI_LATENCY_BUCKETS 12

struct nhi_metrics {
	atomic_ullong requests[NHI_ROUTE__COUNT][6]; /* by status class: 1xx..5xx, [0] unused */
	atomic_ullong latency_bucket[NHI_ROUTE__COUNT][NHI_LATENCY_BUCKETS + 1];
	atomic_ullong latency_sum_us[NHI_ROUTE__COUNT];
	atomic_ullong token_errors[NHI_TOKEN_E__COUNT];
	atomic_ullong handshakes_rejected, connections_refused, connections_active, connections_total;
	atomic_ullong connections_timed_out; /* closed by their deadline (server.c deadline_cb) */
	atomic_ullong reloads, reload_failures;
	/* [kind, or NHI_UPDATE_KIND__COUNT when none was parsed][0 applied, 1 rejected, 2 failed] */
	atomic_ullong updates[NHI_UPDATE_KIND__COUNT + 1][3];
	atomic_ullong trust_bundle_version;               /* 0: updates off */
	atomic_llong trust_bundle_expires_at;             /* of that bundle, unix seconds */
};
void nhi_metrics_observe(struct nhi_metrics *m, enum nhi_route r, int status, unsigned long long us);
nhi_err nhi_metrics_render(struct nhi_server *s, struct nhi_buf *out) NHI_MUST_CHECK;

/* ---- TLS (tls.c) -------------------------------------------------------------------- */

/* Per connection, hung on the SSL object (freed with it). */
struct nhi_conn {
	struct nhi_server *srv;
	struct nhi_worker *w; /* whose loop serves it */
	unsigned requests;
	bool over_limit;
	bool identity_done;
	nhi_err identity_err;
	char identity_detail[160];
	char agent_id[NHI_AGENT_ID_MAX_BYTES + 1]; /* from the URI SAN */
	uint8_t cert_sha256[32];
	uint8_t *cert_der;
	size_t cert_der_len;
	/* the client certificate's validity (unix s): checked on every request, since a
	 * resumed session or a kept-alive connection never verifies the certificate again */
	long long cert_not_before, cert_not_after;
	bool handshake_done; /* alerts after it are not refused handshakes */
	/* the connection's deadline (server.c deadline_cb): the handshake's, then the
	 * check that requests keep being dispatched; freed with the connection */
	struct bufferevent *bev;
	struct event *deadline;
	unsigned requests_seen; /* `requests` at the last check */
	bool stalled;           /* no request dispatched since the check before */
	/* the caller's record as the store gave it (routes.c caller()); kept while the
	 * store's generation is the same, freed with the connection */
	struct nhi_agent *caller;
};

nhi_err nhi_tls_init(void) NHI_MUST_CHECK;
/*
 * A server SSL_CTX: TLS 1.2/1.3 AEAD, client certificate required against ca_file.
 * `chain_pem` is the server certificate then its intermediates (PEM, `what` names
 * where it came from in errors); `pkey` (HSM-backed) must match the first one. The
 * context takes its own references.
 */
nhi_err nhi_tls_ctx_new(struct nhi_server *s, const uint8_t *chain_pem, size_t len, const char *what, EVP_PKEY *pkey,
			SSL_CTX **out) NHI_MUST_CHECK;
/* The connection record of an SSL (creating it on first use). */
struct nhi_conn *nhi_tls_conn(SSL *ssl);
int nhi_tls_conn_index(void);
/* Fill conn's identity from the verified peer certificate (once per connection). */
void nhi_tls_identify(struct nhi_conn *c, SSL *ssl, const char *trust_domain);
/* Send what a reply queued on `bev` (an OpenSSL bufferevent) now, as one TLS record
 * when it fits in one, instead of after the loop's next epoll round (tls.c). */
void nhi_tls_write_now(struct bufferevent *bev);
/* A reply of this connection waits (for its audit record): no read callback until it
 * is written, as evhttp itself does while it writes (tls.c: else libevent can exit). */
void nhi_tls_hold_reads(struct bufferevent *bev);
/* Send close_notify when evhttp closes this connection (set once, at its first request). */
void nhi_tls_close_notify_on_close(struct evhttp_connection *evcon);

/* ---- token trust and revocations (watcher.c) ------------------------------------- */

/*
 * What a request checks tokens and callers against: the verifier, the published
 * JWKS, and the revocation set of the last applied revocation package. Immutable
 * once built and refcounted, so that the watcher swaps in a new one while workers
 * finish with the old (nhi_server_trust_get / nhi_trust_put).
 */
struct nhi_trust {
	atomic_uint refs;
	struct nhi_token_issuer *issuer;        /* signs with token_keys.signing */
	struct nhi_token_issuer *issuer_before; /* signs with token_keys.previous until sign_after; may be NULL */
	int64_t sign_after;
	struct nhi_token_verifier *verifier;
	struct nhi_buf jwks;         /* the issuer's keys minus revoked kids */
	uint64_t revocation_version; /* 0: no revocation package applied */
	char **agents;               /* sorted (strcmp) */
	size_t n_agents;
	uint8_t (*certs)[32];        /* sorted (memcmp) */
	size_t n_certs;
	char **kids;
	size_t n_kids;
};
/* The current trust with a reference; drop it with nhi_trust_put. Never NULL after startup. */
struct nhi_trust *nhi_server_trust_get(struct nhi_server *s);
/* NULL is a no-op. */
void nhi_trust_put(struct nhi_trust *t);
/* Parse-only checks of update bodies (watcher.c), for tests/fuzz/update_body.c. */
nhi_err nhi_revocation_body_check(const uint8_t *body, size_t len) NHI_MUST_CHECK;
nhi_err nhi_rotation_body_check(const uint8_t *body, size_t len) NHI_MUST_CHECK;
nhi_err nhi_token_keys_body_check(const uint8_t *body, size_t len) NHI_MUST_CHECK;
/* The issuer that signs now: issuer_before until sign_after, then issuer. */
struct nhi_token_issuer *nhi_trust_issuer(const struct nhi_trust *t, int64_t now);
bool nhi_trust_agent_revoked(const struct nhi_trust *t, const char *agent_id);
bool nhi_trust_cert_revoked(const struct nhi_trust *t, const uint8_t sha256[32]);
/*
 * Build a trust from the token keys `tk` (issuers found in the token, their JWKS) and
 * a revocation body (NULL: none): {"agents":[id..], "cert_sha256":[hex..],
 * "kids":[kid..]}, every member optional, no other. Revoking the kid of a key that
 * signs (or will, or still does until sign_after) is refused: rotate first. Detail
 * names the bad entry.
 */
nhi_err nhi_trust_build(struct nhi_server *s, const struct nhi_token_keys *tk, const uint8_t *revocation, size_t len,
			uint64_t version, struct nhi_trust **out) NHI_MUST_CHECK;

/*
 * Startup, right after the audit log opens and before anything committed in state_dir
 * is loaded: every committed package whose update_applied record is not known to be
 * durable (update-state.json "recorded":false: nhid stopped between the commit and the
 * record, or nhictl applied it offline) gets that record now, with "recovered":true,
 * then the mark is cleared. An error (the record cannot be written) stops the start:
 * nothing is served with a package that is not on the record.
 */
nhi_err nhi_watcher_recover(struct nhi_server *s) NHI_MUST_CHECK;
/*
 * Startup, after TLS key and tokens: when updates_dir is set, load the trust bundle
 * from state_dir (missing: NHI_ERR_CONFIG naming `nhictl update init`); in any case
 * take the committed revocation and cert-rotation bodies of state_dir into service.
 * Builds s->trust and chooses the TLS chain and key label (s->tls_chain, s->tls_label).
 */
nhi_err nhi_watcher_load(struct nhi_server *s) NHI_MUST_CHECK;
/* Start the scan thread (no-op when updates are off). */
nhi_err nhi_watcher_start(struct nhi_server *s) NHI_MUST_CHECK;
/* Ask the scan thread to stop (wakes it); a scan in progress finishes its package. */
void nhi_watcher_stop(struct nhi_server *s);
/* Join and free the scan thread; safe when it never started. */
void nhi_watcher_free(struct nhi_server *s);

/* ---- the signing service (signing.c) --------------------------------------------- */

struct nhi_sign_key {
	const struct nhi_sign_key_cfg *cfg; /* in s->cfg */
	struct nhi_hsm_key *key;
	EVP_PKEY *pub;
	char kid[44]; /* RFC 7638 thumbprint */
};
/* Find every signing_keys key in the token (startup, after nhi_watcher_load: a key that is
 * the TLS or a token key in force is refused; a missing one names the fix). */
nhi_err nhi_signing_load(struct nhi_server *s) NHI_MUST_CHECK;
void nhi_signing_free(struct nhi_server *s);
/* The key of a purpose, or NULL. */
const struct nhi_sign_key *nhi_signing_find(const struct nhi_server *s, const char *purpose);
/* The bytes signed: "nhid-sign-v1" 0x00 purpose 0x00 payload, appended to out. */
nhi_err nhi_signing_input(const char *purpose, const uint8_t *payload, size_t len, struct nhi_buf *out) NHI_MUST_CHECK;
/* ES256 in the token over nhi_signing_input; 64 bytes R||S. */
nhi_err nhi_signing_sign(struct nhi_server *s, const struct nhi_sign_key *k, const uint8_t *payload, size_t len,
			 uint8_t sig[64]) NHI_MUST_CHECK;
struct nhi_signing_verdict {
	char kid[44];
	const char *signer; /* "local" or "peer" */
	const char *reason; /* "ok", "kid_revoked", "unknown_kid", "signature_mismatch" */
};
/*
 * Verify `sig` over payload for k's purpose, by `kid` (NULL: k's own key): k's key,
 * or a peer key of the trust bundle in service; a kid revoked by `t` never verifies.
 * NHI_OK, or NHI_ERR_VERIFY with v->reason and the detail set.
 */
nhi_err nhi_signing_verify(struct nhi_server *s, const struct nhi_trust *t, const struct nhi_sign_key *k,
			   const char *kid, const uint8_t *payload, size_t len, const uint8_t sig[64],
			   struct nhi_signing_verdict *v) NHI_MUST_CHECK;

/* ---- the server -------------------------------------------------------------------- */

struct nhi_worker {
	struct nhi_server *srv;
	unsigned idx;
	struct event_base *base;
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	/* all made by worker_init, so that stopping never needs memory */
	struct event *stop_ev;
	struct event *drain_ev; /* while draining: leave as soon as no connection is open */
	struct event *grace_ev; /* while draining: leave now, connections open or not */
	struct event *balance_ev; /* another thread changed want_accept (or a retry): apply it here */
	atomic_uint conns;        /* open connections of this loop */
	atomic_bool want_accept;  /* nhi_server_balance's answer for this loop */
	bool accepting;           /* its listener enabled (this loop's thread only) */
	bool switch_failing;      /* the last switch of it failed; retried (this loop's thread only) */
	pthread_t thread;
	bool started;
};

struct nhi_server {
	struct nhi_server_config cfg;
	uint8_t config_digest[32];
	char trust_domain[128];

	struct nhi_hsm *hsm;
	/* the TLS identity; replaced by a cert rotation under reload_mu */
	struct nhi_hsm_key *tls_key;
	EVP_PKEY *tls_pkey;       /* HSM-backed */
	char tls_label[65];       /* cfg.tls_key, or the rotated key's label */
	struct nhi_buf tls_chain; /* rotated chain PEM; empty: cfg.cert_file */
	/* keys of earlier rotations: contexts still held by open connections sign with them */
	struct nhi_hsm_key **old_tls_keys;
	size_t n_old_tls_keys;
	struct nhi_store *store;
	struct nhi_token_keys token_keys; /* written at startup and by the scan thread only */
	struct nhi_sign_key *sign_keys; /* cfg.sign_keys, found in the token */
	size_t n_sign_keys;
	struct nhi_audit *audit;

	pthread_mutex_t trust_mu; /* guards the trust pointer swap */
	struct nhi_trust *trust;
	pthread_mutex_t bundle_mu; /* guards the bundle pointer swap and readers of it */
	struct nhi_bundle *bundle; /* NULL: updates off */
	struct nhi_watcher *watcher;

	pthread_mutex_t ctx_mu; /* guards ssl_ctx swaps */
	SSL_CTX *ssl_ctx;
	pthread_mutex_t reload_mu; /* one reload or rotation at a time; guards the TLS identity */

	struct nhi_worker *workers;
	pthread_mutex_t balance_mu; /* one nhi_server_balance at a time */
	atomic_bool stopping;
	struct nhi_metrics metrics;
	long long started_at;
};

/* ---- request parsing (api.c; fuzzed by tests/fuzz/api_request.c) ------------------- */

struct nhi_api_route {
	const char *path;
	const char *method; /* the one method it takes */
	enum nhi_route id;
};
/* The route of a path, or NULL (404). */
const struct nhi_api_route *nhi_api_route_find(const char *path);

struct nhi_api_token_req {
	char aud[NHI_TOKEN_CLAIM_MAX_BYTES + 1];
	unsigned ttl_s; /* 0: the server's default */
};
/* POST /v1/tokens body: {"aud": string, "ttl"?: 1..ttl_max_s}. Detail = the 400 text. */
nhi_err nhi_api_parse_token_req(const char *body, size_t len, size_t max_bytes, unsigned ttl_max_s,
				struct nhi_api_token_req *out) NHI_MUST_CHECK;

struct nhi_api_resolve_req {
	json_t *root;               /* owns the strings below (jansson path) */
	char *token_copy;           /* owns token (the {"token":"..."} fast path) */
	const char *token;
	size_t token_len;
	struct nhi_buf presenter_der; /* empty when no presenter_cert was given */
};
/* POST /v1/resolve body: {"token": string, "presenter_cert"?: PEM}. Free with _free. */
nhi_err nhi_api_parse_resolve_req(const char *body, size_t len, size_t max_bytes,
				  struct nhi_api_resolve_req *out) NHI_MUST_CHECK;
void nhi_api_resolve_req_free(struct nhi_api_resolve_req *r);
/* The body is exactly {"token":"<[A-Za-z0-9_.-]+>"}: the token's offset and length
 * (the parse above takes it without jansson; the fuzz target compares both paths). */
bool nhi_api_resolve_body_simple(const char *body, size_t len, size_t *tok_off, size_t *tok_len);

/* POST /v1/sign body: {"key": purpose, "payload": base64url}. */
struct nhi_api_sign_req {
	char key[33];
	struct nhi_buf payload; /* decoded */
};
nhi_err nhi_api_parse_sign_req(const char *body, size_t len, size_t max_bytes, struct nhi_api_sign_req *out) NHI_MUST_CHECK;
/* POST /v1/verify body: {"key": purpose, "payload": base64url, "sig": base64url(64 bytes), "kid"?: thumbprint}. */
struct nhi_api_verify_req {
	char key[33];
	struct nhi_buf payload; /* decoded */
	uint8_t sig[64];
	char kid[44]; /* "" when not given */
};
nhi_err nhi_api_parse_verify_req(const char *body, size_t len, size_t max_bytes,
				 struct nhi_api_verify_req *out) NHI_MUST_CHECK;
/* Free what the sign and verify parsers allocated (both are safe after a failure). */
void nhi_api_sign_req_free(struct nhi_api_sign_req *r);
void nhi_api_verify_req_free(struct nhi_api_verify_req *r);
/* POST /v1/manifests/verify body: {"manifest": signed manifest document (object), "files": [...]}. */
struct nhi_api_manifest_req {
	json_t *root;           /* owns files */
	char *manifest;         /* the document, compact JSON (malloc) */
	size_t manifest_len;
	json_t *files;          /* borrowed from root */
};
nhi_err nhi_api_parse_manifest_req(const char *body, size_t len, size_t max_bytes,
				   struct nhi_api_manifest_req *out) NHI_MUST_CHECK;
void nhi_api_manifest_req_free(struct nhi_api_manifest_req *r);

/*
 * The last identity backup this server accepted (state_dir/backup.serial): its
 * serial is the high-water mark; `loaded` when the file also holds its digest and
 * created_at (a mark written before those were kept has the serial only). All zero
 * when there is none yet; an unreadable or malformed file is an error naming it.
 */
nhi_err nhi_server_backup_mark(const struct nhi_server *s, struct nhi_store_info *out) NHI_MUST_CHECK;

/* Name of a network filesystem for a statfs f_type, NULL for a local one (config.c). */
const char *nhi_server_network_fs_name(long type);

/* Current SSL_CTX with a reference the caller drops with SSL_CTX_free. */
SSL_CTX *nhi_server_ctx_get(struct nhi_server *s);
/*
 * Connections spread evenly over the worker loops. The loops share one listening
 * socket and a loop accepts only while it holds no more connections than the least
 * loaded one; the kernel's hash of SO_REUSEPORT left one loop with twice another's
 * share often enough to double its clients' latency. nhi_accept_plan is the rule:
 * conns[0..n) -> want[0..n) (pure, unit-tested). nhi_server_balance applies it after
 * a connection opened or closed on `self`'s loop, from that loop's thread: its own
 * listener at once (before the accept loop takes the next connection), the others'
 * through their balance_ev.
 */
void nhi_accept_plan(const unsigned *conns, size_t n, bool *want);
void nhi_server_balance(struct nhi_server *s, struct nhi_worker *self);
/*
 * An agent's stored attributes as a resolve reply carries them (routes.c): parsed and
 * dumped again by jansson, {} for text that does not parse or is not an object. The
 * store's text is never put into a reply as it is. NULL when out of memory; free().
 */
char *nhi_routes_attributes_text(const char *stored);
/*
 * The resolve reply {"agent":{...},"claims":{...}} for record `a` and verified claims
 * `cl`, appended to `out` (routes.c). On error (out of memory; a string of the record
 * that is not UTF-8, which the store does not check) `out` is freed and the detail
 * names the member.
 */
nhi_err nhi_routes_resolve_text(const struct nhi_agent *a, const struct nhi_token_claims *cl,
				struct nhi_buf *out) NHI_MUST_CHECK;
/* Route one request (routes.c). */
void nhi_routes_handle(struct evhttp_request *req, void *arg);
/* Record a security event; fields are stolen. Errors are logged, never fatal to the caller. */
nhi_err nhi_server_audit(struct nhi_server *s, const char *event, json_t *fields) NHI_MUST_CHECK;

#endif
