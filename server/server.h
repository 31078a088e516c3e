/*
 * server/server.h — nhid, the mTLS HTTP/1.1 JSON service: configuration, startup
 * checks, and the server's life cycle. One process; worker threads inside, each
 * with its own libevent loop and its own listening socket (SO_REUSEPORT).
 */
#ifndef NHI_SERVER_H
#define NHI_SERVER_H

#include "../common/nhi.h"

#include <openssl/x509.h>

#define NHI_SERVER_LIST_MAX 16

/* One key of the signing service (/v1/sign, /v1/verify): config key signing_keys. */
struct nhi_sign_key_cfg {
	char purpose[33];     /* [a-z0-9_-]: the name callers use ("replication") */
	char label[65];       /* the P-256 key in the token */
	char sign_role[33];   /* the role a caller needs to sign with it */
	char verify_role[33]; /* the role a caller needs to verify against it (and its peers' keys) */
};

struct nhi_server_config {
	char listen_host[64];
	int listen_port;
	unsigned threads;

	char hsm_module[512];
	char hsm_token[256];
	char hsm_pin_file[512];

	char trust_domain[128]; /* client URI SAN must be spiffe://<trust_domain>/agent/<name> */
	char ca_file[512];
	char cert_file[512];
	char tls_key[65];

	char token_keys[NHI_SERVER_LIST_MAX][65]; /* [0] signs; the rest are retired but trusted */
	size_t n_token_keys;
	char issuer[256];
	char audiences[NHI_SERVER_LIST_MAX][128]; /* accepted by /v1/resolve when the resolver names none */
	size_t n_audiences;
	unsigned token_ttl_default_s, token_ttl_max_s, leeway_s;

	char backup[512];
	char backup_sign_key[65];
	char state_dir[512];
	char audit_log[512];
	char audit_key[65];
	unsigned audit_checkpoint_records, audit_checkpoint_s;
	char admin_token_hash[256]; /* "scrypt:N:r:p:<salt b64url>:<hash b64url>", "" = admin API off */

	char updates_dir[512]; /* watched for signed update packages; "" = updates off */
	unsigned update_scan_s; /* period of the scan of updates_dir */
	unsigned clock_skew_s;  /* local clock may lag the highest trusted time by this */

	/* "purpose:label:sign_role[:verify_role], ..." */
	struct nhi_sign_key_cfg sign_keys[NHI_SERVER_LIST_MAX];
	size_t n_sign_keys;
	char manifest_role[33]; /* role for POST /v1/manifests/verify */

	unsigned max_connections;
	size_t body_max_bytes, header_max_bytes;
	unsigned idle_timeout_s, requests_per_connection;
	unsigned header_max_count; /* request header lines */
	unsigned verify_memo_entries; /* token memo slots; 0: every signature checked, every claims set parsed */
	unsigned tls_sessions;        /* resumable TLS sessions kept in memory */
};

/*
 * Parse and validate a server config (OpenSSL NCONF syntax, section [nhid]).
 * Unknown keys, out-of-range limits and malformed values are errors naming the key.
 * Limits default to common/limits.h and can only be lowered past their maximums.
 */
nhi_err nhi_server_config_parse(const char *text, size_t len, struct nhi_server_config *out) NHI_MUST_CHECK;
/* Read (capped, must not be group/world readable) and parse; digest = SHA-256 of the file. */
nhi_err nhi_server_config_load(const char *path, struct nhi_server_config *out, uint8_t digest[32]) NHI_MUST_CHECK;

/*
 * The deployment contract, checked before anything is opened: state and audit
 * directories on a local filesystem (not NFS, SMB/CIFS, AFS, FUSE...), PIN and
 * config files not readable by group or others. The detail names the fix.
 */
nhi_err nhi_server_preflight(const struct nhi_server_config *cfg, const char *config_path) NHI_MUST_CHECK;

/* Admin bearer tokens: "scrypt:N:r:p:salt:hash" (all base64url). */
nhi_err nhi_admin_hash_make(const char *secret, size_t len, struct nhi_buf *out) NHI_MUST_CHECK;
/* NHI_OK when `secret` matches `encoded` (constant-time compare), NHI_ERR_DENIED otherwise. */
nhi_err nhi_admin_hash_check(const char *encoded, const char *secret, size_t len) NHI_MUST_CHECK;
/* The form and parameters of an admin_token_hash (what the config loader checks). */
nhi_err nhi_admin_hash_valid(const char *encoded) NHI_MUST_CHECK;

struct nhi_server;
/* Open the token, load the backup, build TLS, audit, tokens; bind the sockets. */
nhi_err nhi_server_new(const struct nhi_server_config *cfg, const uint8_t config_digest[32],
		       struct nhi_server **out) NHI_MUST_CHECK;
/* Run the worker threads until nhi_server_stop; returns after they drained. */
nhi_err nhi_server_run(struct nhi_server *s) NHI_MUST_CHECK;
/* Async-signal-safe requests from the signal thread. */
void nhi_server_stop(struct nhi_server *s);
/* Re-import the backup and reload the certificate chain; open connections stay up. */
nhi_err nhi_server_reload(struct nhi_server *s, const char *who) NHI_MUST_CHECK;
void nhi_server_free(struct nhi_server *s);

/*
 * The checks nhid's update `prepare` makes on a verified package body that need nothing
 * of a running nhid (its token, its configuration): the body's format per kind, and for
 * an identity-backup that the package version is the backup's serial. The detail is
 * nhid's own refusal. On NHI_OK, *needs_nhid tells whether nhid makes further checks
 * here that need its token or configuration (cert-rotation, token-keys, identity-backup,
 * a revocation naming kids): only nhid can then apply the body. nhictl's offline apply
 * (provisioning/update.c) and nhid's prepare both call it, so the two refuse alike.
 */
struct nhi_update_info;
nhi_err nhi_server_update_body_check(const struct nhi_update_info *info, const uint8_t *body, size_t len,
				     bool *needs_nhid) NHI_MUST_CHECK;

/*
 * The TLS identity a committed cert-rotation put in force in state_dir: its key label
 * (label, 65 bytes) and PEM chain (appended to chain), *version its package version;
 * *version 0 (nothing appended) when none is committed and config's cert_file and
 * tls_key serve. What nhid loads at start (nhi_watcher_load) and what `nhictl airgap
 * check` checks. A committed body that cannot be read is an error naming it.
 */
nhi_err nhi_server_tls_in_force(const char *state_dir, char label[65], struct nhi_buf *chain,
				unsigned long long *version) NHI_MUST_CHECK;

/*
 * The token-signing keys in service: every label is trusted and published in the
 * JWKS; `signing` signs, except that `previous` (when set) still signs while
 * now < sign_after, so that relying parties fetch the new kid before it is used.
 * From config token_keys ([0] signs), or from the last applied token-keys package
 * (nhi_server_token_keys_in_force).
 */
struct nhi_token_keys {
	char labels[NHI_SERVER_LIST_MAX][65];
	size_t n;
	char signing[65];
	char previous[65]; /* "" : none */
	int64_t sign_after;
};

/*
 * The token-signing keys in force for cfg: those of the committed token-keys package
 * in cfg->state_dir, *version its package version, else config token_keys ([0] signs)
 * and *version 0. Written to *out only on NHI_OK. What nhid loads at start and what
 * `nhictl airgap check` checks. A committed body that cannot be read is an error naming it.
 */
nhi_err nhi_server_token_keys_in_force(const struct nhi_server_config *cfg, struct nhi_token_keys *out,
				       unsigned long long *version) NHI_MUST_CHECK;

/* Parse a PEM chain: *leaf and *rest (intermediates, maybe empty), owned by the caller. */
nhi_err nhi_tls_chain_parse(const uint8_t *pem, size_t len, const char *what, X509 **leaf,
			    STACK_OF(X509) **rest) NHI_MUST_CHECK;

/*
 * The X.509 path from a TLS server certificate (leaf, with the intermediates it is
 * served with) to ca_file, as a client checks it: purpose TLS server, validity now.
 * `what` names the certificate in the error (NHI_ERR_VERIFY, with OpenSSL's reason).
 */
nhi_err nhi_server_chain_verify(const char *ca_file, const char *what, X509 *leaf, STACK_OF(X509) *rest) NHI_MUST_CHECK;

#endif
