/*
 * tokens/tokens.h — agent tokens: ES256 JWTs signed inside the PKCS#11 token, a
 * strict verifier (RFC 8725 profile), and the JWK Set that offline verifiers use.
 *
 * Profile (docs/tokens.md has the full table and the reasons):
 *   header  {"alg":"ES256","typ":"JWT","kid":<RFC 7638 thumbprint of the key>}
 *   claims  iss, sub, aud (one string), iat, nbf, exp, jti (128 bits from the token),
 *           roles (array of strings), cnf {"x5t#S256": base64url SHA-256 of the
 *           agent's client certificate DER} (RFC 8705 §3.1)
 *
 * The verifier takes nothing on trust from the token: alg is pinned to ES256 before
 * a key is looked at, the key comes only from the verifier's own set by kid, and
 * every rejection carries one stable reason (enum nhi_token_error) that the server
 * returns in its 401 invalid_token response.
 *
 * Threads: an issuer may be shared by any number of threads (nhi_token_issue is
 * thread-safe). A verifier is built single-threaded (new, add_key/add_jwks) and is
 * then read-only: concurrent nhi_token_verify calls are safe; adding keys while
 * others verify is not (build a new verifier and swap it instead).
 */
#ifndef NHI_TOKENS_H
#define NHI_TOKENS_H

#include "../common/nhi.h"

#include <openssl/evp.h>

struct nhi_hsm;

/* ---- why a token was rejected ------------------------------------------------- */

/* One value per cause; the names (nhi_token_error_name) are part of the API. */
enum nhi_token_error {
	NHI_TOKEN_OK = 0,
	NHI_TOKEN_E_TOO_LARGE,     /* "too_large": above NHI_TOKEN_MAX_BYTES (or header cap) */
	NHI_TOKEN_E_SEGMENTS,      /* "segments": not exactly three dot-separated parts (JWE, extra parts) */
	NHI_TOKEN_E_EMPTY,         /* "empty_segment": empty header or payload (detached payload) */
	NHI_TOKEN_E_B64,           /* "base64url": padding, '+', '/', whitespace, non-canonical bits */
	NHI_TOKEN_E_UTF8,          /* "utf8": header or claims are not valid UTF-8 */
	NHI_TOKEN_E_JSON,          /* "json": not a JSON object (or a NUL, bad number, trailing data) */
	NHI_TOKEN_E_JSON_DUP,      /* "json_duplicate": a member name appears twice */
	NHI_TOKEN_E_ALG,           /* "alg": alg is not exactly "ES256" (none, HS256, RS256, ...) */
	NHI_TOKEN_E_CRIT,          /* "crit": a crit header is present */
	NHI_TOKEN_E_HEADER_KEY,    /* "header_key": jku, jwk, x5u or x5c: keys never come from the token */
	NHI_TOKEN_E_TYP,           /* "typ": typ missing or not JWT */
	NHI_TOKEN_E_KID_MISSING,   /* "kid_missing": no kid, or not a non-empty string */
	NHI_TOKEN_E_KID_UNKNOWN,   /* "kid_unknown": kid names no trusted key (removed or foreign) */
	NHI_TOKEN_E_SIG_FORMAT,    /* "signature_format": signature is not 64 bytes R||S (e.g. DER) */
	NHI_TOKEN_E_SIG,           /* "signature": signature does not verify */
	NHI_TOKEN_E_CLAIMS,        /* "claims": a claim has the wrong type or form */
	NHI_TOKEN_E_ISS,           /* "iss": missing or not the configured issuer */
	NHI_TOKEN_E_SUB,           /* "sub": missing, empty or too long */
	NHI_TOKEN_E_AUD,           /* "aud": missing or not an accepted audience */
	NHI_TOKEN_E_EXP_MISSING,   /* "exp_missing" */
	NHI_TOKEN_E_EXPIRED,       /* "expired": now >= exp + leeway */
	NHI_TOKEN_E_NBF,           /* "not_yet_valid": now + leeway < nbf */
	NHI_TOKEN_E_IAT,           /* "iat": missing, or issued in the future (beyond leeway) */
	NHI_TOKEN_E_LIFETIME,      /* "lifetime": exp - iat above the cap, or exp <= iat */
	NHI_TOKEN_E_JTI,           /* "jti": missing, empty or too long */
	NHI_TOKEN_E_CNF_MISSING,   /* "cnf_missing": no cnf claim */
	NHI_TOKEN_E_CNF_FORM,      /* "cnf_form": cnf is not {"x5t#S256": <43 base64url chars>} */
	NHI_TOKEN_E_CNF_MISMATCH,  /* "cnf_mismatch": presented certificate is not the bound one */
	NHI_TOKEN_E__COUNT
};

/* Stable snake_case name ("alg", "kid_unknown"); "unknown" for out-of-range. Static. */
const char *nhi_token_error_name(enum nhi_token_error e);

/* ---- issuing (signature made in the HSM) --------------------------------------- */

struct nhi_token_issuer;

struct nhi_token_issuer_cfg {
	struct nhi_hsm *hsm;              /* borrowed: must outlive the issuer */
	const char *signing_key;          /* label of the key that signs (e.g. "nhid-token-2") */
	const char *const *retired_keys;  /* labels of older keys still published and trusted */
	size_t n_retired_keys;
	const char *issuer;               /* the iss claim */
	unsigned ttl_default_s;           /* exp - iat when a request names no ttl */
	unsigned ttl_max_s;               /* requests above it are capped to it; <= NHI_TOKEN_TTL_MAX_S */
	bool cache_signing_key;           /* nhi_hsm_key_cache the signing key (a long-lived issuer) */
};
/* Defaults: NHI_TOKEN_TTL_DEFAULT_S, NHI_TOKEN_TTL_CAP_DEFAULT_S, no retired keys. */
void nhi_token_issuer_cfg_init(struct nhi_token_issuer_cfg *cfg);

/*
 * Find the keys (EC P-256 each), compute their kids, prepare the header. Errors:
 * NHI_ERR_NOT_FOUND (a label is absent), NHI_ERR_ARG / NHI_ERR_CONFIG (cfg unusable:
 * wrong key type, duplicate key, ttl out of range). *out is owned by the caller.
 */
nhi_err nhi_token_issuer_new(const struct nhi_token_issuer_cfg *cfg, struct nhi_token_issuer **out) NHI_MUST_CHECK;
/* NULL is a no-op. */
void nhi_token_issuer_free(struct nhi_token_issuer *iss);
/* kid of the signing key (43 chars); valid while the issuer lives. */
const char *nhi_token_issuer_kid(const struct nhi_token_issuer *iss);
/* RFC 7517 JWK Set of the signing key then the retired keys, appended to out. */
nhi_err nhi_token_issuer_jwks(const struct nhi_token_issuer *iss, struct nhi_buf *out) NHI_MUST_CHECK;

struct nhi_token_request {
	const char *sub;                  /* agent id */
	const char *aud;                  /* one audience; the caller checked the agent may ask for it */
	const char *const *roles;         /* may be NULL when n_roles is 0 */
	size_t n_roles;
	/* RFC 8705 binding: either the client certificate DER ... */
	const uint8_t *cert_der;
	size_t cert_der_len;
	/* ... or its SHA-256, when the caller already has it (takes precedence) */
	const uint8_t *cert_sha256;       /* 32 bytes or NULL */
	unsigned ttl_s;                   /* 0: the issuer's default; capped at its max */
	int64_t now;                      /* unix seconds; 0: the clock */
};

/* What the caller may log about an issued token (never the token itself). */
struct nhi_token_issued {
	char jti[23];
	char kid[44];
	int64_t iat, exp;
};

/*
 * Issue one token: compact JWS appended to `token` (NUL-terminated), details in
 * *info (may be NULL). Strings must be non-empty UTF-8 within the NHI_TOKEN_* caps
 * (NHI_ERR_ARG / NHI_ERR_LIMIT otherwise). Thread-safe.
 */
nhi_err nhi_token_issue(struct nhi_token_issuer *iss, const struct nhi_token_request *req, struct nhi_buf *token,
			struct nhi_token_issued *info) NHI_MUST_CHECK;

/* ---- verifying ---------------------------------------------------------------- */

struct nhi_token_verifier;

struct nhi_token_verify_cfg {
	const char *issuer;               /* required: the only accepted iss */
	const char *const *audiences;     /* accepted aud values when a call names none */
	size_t n_audiences;
	unsigned leeway_s;                /* <= NHI_TOKEN_LEEWAY_MAX_S */
	unsigned lifetime_max_s;          /* exp - iat cap; <= NHI_TOKEN_TTL_MAX_S */
	size_t memo_entries;              /* signature and claims memo slots (docs/tokens.md); 0: none */
};
/* Defaults: NHI_TOKEN_LEEWAY_DEFAULT_S, NHI_TOKEN_TTL_CAP_DEFAULT_S, nothing else. */
void nhi_token_verify_cfg_init(struct nhi_token_verify_cfg *cfg);

/* A verifier with no keys yet (strings in cfg are copied). *out owned by the caller. */
nhi_err nhi_token_verifier_new(const struct nhi_token_verify_cfg *cfg, struct nhi_token_verifier **out) NHI_MUST_CHECK;
/* NULL is a no-op. */
void nhi_token_verifier_free(struct nhi_token_verifier *v);
/*
 * Trust a P-256 public key for ES256 (RFC 8725 §3.1: the key is pinned to that one
 * algorithm); its kid is its RFC 7638 thumbprint. The verifier takes its own
 * reference. NHI_ERR_EXISTS for a key already trusted, NHI_ERR_LIMIT past
 * NHI_TOKEN_KEYS_MAX, NHI_ERR_ARG for any other key type.
 */
nhi_err nhi_token_verifier_add_key(struct nhi_token_verifier *v, EVP_PKEY *pk) NHI_MUST_CHECK;
/*
 * Trust every key of an RFC 7517 JWK Set. Each must be kty EC, crv P-256, with no
 * private part; alg (if present) ES256, use (if present) sig, key_ops (if present)
 * containing verify, and kid (if present) equal to its thumbprint. Any bad key
 * fails the whole call (NHI_ERR_FORMAT, detail names the key) and adds nothing; so
 * does a failure of ours while the keys are set up (NHI_ERR_NOMEM, NHI_ERR_CRYPTO).
 */
nhi_err nhi_token_verifier_add_jwks(struct nhi_token_verifier *v, const char *json, size_t len) NHI_MUST_CHECK;
size_t nhi_token_verifier_key_count(const struct nhi_token_verifier *v);
/* Memo lookups that skipped / did the ECDSA check, and of the hits those that took the
 * remembered claims too, skipping their parse (all 0 without a memo). */
void nhi_token_verifier_memo_stats(const struct nhi_token_verifier *v, unsigned long long *hits,
				   unsigned long long *misses, unsigned long long *claims_hits);

/* Per-call inputs. A zeroed struct means: the clock, the configured audiences, no cert. */
struct nhi_token_check {
	int64_t now;                      /* unix seconds; 0: the clock */
	const char *audience;             /* the one aud this call accepts; NULL: cfg audiences */
	const uint8_t *cert_der;          /* presented client certificate: must match cnf.x5t#S256 */
	size_t cert_der_len;
};

/* The verified claims; one allocation, strings point inside it. */
struct nhi_token_claims {
	const char *iss, *sub, *jti;
	const char *aud;                  /* the accepted audience that matched */
	const char *const *roles;
	size_t n_roles;
	int64_t iat, nbf, exp;            /* nbf = iat when the token has none */
	uint8_t cnf_x5t_s256[32];
	char kid[44];                     /* the key that verified it */
};
/* NULL is a no-op. */
void nhi_token_claims_free(struct nhi_token_claims *c);

/*
 * Strictly verify one compact JWS. Returns NHI_OK and (when out is not NULL) the
 * claims, owned by the caller; or NHI_ERR_VERIFY with *why set to the one reason and
 * a detail message naming it (never the token); or another error for a failure of
 * ours (NHI_ERR_NOMEM, NHI_ERR_ARG when no audience is configured), with *why =
 * NHI_TOKEN_OK. `why` may be NULL. Thread-safe on a built verifier.
 */
nhi_err nhi_token_verify(const struct nhi_token_verifier *v, const char *token, size_t len,
			 const struct nhi_token_check *chk, struct nhi_token_claims **out,
			 enum nhi_token_error *why) NHI_MUST_CHECK;

/* ---- JWKS --------------------------------------------------------------------- */

/*
 * RFC 7517 §5 JWK Set of P-256 keys: {"keys":[{"kty","crv","x","y","kid","use":"sig",
 * "alg":"ES256"}, ...]} with kid = RFC 7638 thumbprint; appended to out.
 */
nhi_err nhi_token_jwks(EVP_PKEY *const *keys, size_t n, struct nhi_buf *out) NHI_MUST_CHECK;

#endif
