/*
 * tokens/issue.c — ES256 JWT issuance with the signature made inside the PKCS#11
 * token: SHA-256 of the JWS signing input here, CKM_ECDSA over the digest in the
 * token, raw R||S straight into the JWS (RFC 7518 §3.4 wants exactly that form).
 *
 * The protected header is the same for every token of a key, so it is encoded
 * once. Claims are written with common/jsonw.h (fixed member order, compact, UTF-8
 * checked: the bytes jansson dumps with JSON_ENSURE_ASCII). jti takes 128 bits of the
 * token's own RNG; to keep a PKCS#11 round trip off every issuance the randomness is
 * fetched NHI_TOKEN_JTI_POOL_BYTES at a time and each 16-byte slice is wiped as it is
 * handed out.
 */
#include "tokens_internal.h"
#include "../common/pkey.h"
#include "../common/jsonw.h"
#include "../hsm/hsm.h"

#include <jansson.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#define JTI_BYTES 16 /* 128 bits: RFC 7519 §4.1.7 wants collisions negligible */

struct nhi_token_issuer {
	struct nhi_hsm *hsm;        /* borrowed */
	struct nhi_hsm_key *key;    /* the signing key */
	char kid[44];
	char *issuer;
	struct nhi_buf header_b64;  /* base64url of the protected header, made once */
	EVP_MD *sha256;             /* fetched once: EVP_sha256() would fetch on every call */
	unsigned ttl_default_s, ttl_max_s;
	EVP_PKEY *pubs[NHI_TOKEN_KEYS_MAX]; /* [0] signing key, then retired: the JWKS */
	size_t n_pubs;

	pthread_mutex_t mu;         /* guards pool/pool_left */
	uint8_t pool[NHI_TOKEN_JTI_POOL_BYTES];
	size_t pool_left;
};

void nhi_token_issuer_cfg_init(struct nhi_token_issuer_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->ttl_default_s = NHI_TOKEN_TTL_DEFAULT_S;
	cfg->ttl_max_s = NHI_TOKEN_TTL_CAP_DEFAULT_S;
}

static bool string_ok(const char *s, size_t max)
{
	size_t n = s != NULL ? strlen(s) : 0;

	return n > 0 && n <= max;
}

/* Find `label`, insist on EC P-256, export its public key. */
static nhi_err load_key(struct nhi_hsm *hsm, const char *label, struct nhi_hsm_key **key_out, EVP_PKEY **pub_out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_hsm_key *key = NULL;

	NHI_CHECK(string_ok(label, NHI_HSM_LABEL_MAX_BYTES), NHI_ERR_ARG, "token key label missing or too long");
	rv = nhi_hsm_find(hsm, label, &key);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv, "token signing key '%s'%s", label,
				  rv == NHI_ERR_NOT_FOUND ? " (run the ceremony, or fix the label)" : "");
		goto out;
	}
	NHI_CHECK(nhi_hsm_key_kind(key) == NHI_KEY_EC_P256, NHI_ERR_CONFIG,
		  "token signing key '%s' is not EC P-256: ES256 needs a P-256 key", label);
	NHI_TRY(nhi_hsm_pubkey(hsm, key, pub_out));
	if (key_out != NULL) {
		*key_out = key;
		key = NULL;
	}
	rv = NHI_OK;
out:
	nhi_hsm_key_free(key);
	return rv;
}

nhi_err nhi_token_issuer_new(const struct nhi_token_issuer_cfg *cfg, struct nhi_token_issuer **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_token_issuer *iss = NULL;
	json_t *hdr = NULL;
	char *hdr_text = NULL, kid[44];
	size_t i, j;

	*out = NULL;
	NHI_CHECK(cfg != NULL && cfg->hsm != NULL && cfg->signing_key != NULL, NHI_ERR_ARG,
		  "token issuer: HSM and signing key label are required");
	NHI_CHECK(string_ok(cfg->issuer, NHI_TOKEN_CLAIM_MAX_BYTES), NHI_ERR_CONFIG,
		  "token issuer: the issuer name (iss) must be 1..%d bytes", NHI_TOKEN_CLAIM_MAX_BYTES);
	NHI_CHECK(cfg->ttl_max_s >= 1 && cfg->ttl_max_s <= NHI_TOKEN_TTL_MAX_S, NHI_ERR_CONFIG,
		  "token issuer: ttl cap %u s is outside 1..%d s", cfg->ttl_max_s, NHI_TOKEN_TTL_MAX_S);
	NHI_CHECK(cfg->ttl_default_s >= 1 && cfg->ttl_default_s <= cfg->ttl_max_s, NHI_ERR_CONFIG,
		  "token issuer: default ttl %u s is outside 1..%u s (the cap)", cfg->ttl_default_s, cfg->ttl_max_s);
	NHI_CHECK(cfg->n_retired_keys < NHI_TOKEN_KEYS_MAX && (cfg->n_retired_keys == 0 || cfg->retired_keys != NULL),
		  NHI_ERR_CONFIG, "token issuer: at most %d retired keys", NHI_TOKEN_KEYS_MAX - 1);

	iss = calloc(1, sizeof(*iss));
	NHI_CHECK(iss != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK(pthread_mutex_init(&iss->mu, NULL) == 0, NHI_ERR_INTERNAL, "pthread_mutex_init failed");
	iss->hsm = cfg->hsm;
	iss->ttl_default_s = cfg->ttl_default_s;
	iss->ttl_max_s = cfg->ttl_max_s;
	iss->issuer = strdup(cfg->issuer);
	NHI_CHECK(iss->issuer != NULL, NHI_ERR_NOMEM, "out of memory");
	iss->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
	NHI_CHECK_SSL(iss->sha256 != NULL, NHI_ERR_CRYPTO, "fetching SHA-256");

	NHI_TRY(load_key(cfg->hsm, cfg->signing_key, &iss->key, &iss->pubs[0]));
	iss->n_pubs = 1;
	if (cfg->cache_signing_key) {
		bool cached;

		NHI_TRY(nhi_hsm_key_cache(cfg->hsm, iss->key, &cached));
	}
	NHI_TRY(nhi_pkey_thumbprint(iss->pubs[0], iss->kid));
	for (i = 0; i < cfg->n_retired_keys; i++) {
		NHI_TRY(load_key(cfg->hsm, cfg->retired_keys[i], NULL, &iss->pubs[iss->n_pubs]));
		iss->n_pubs++;
		NHI_TRY(nhi_pkey_thumbprint(iss->pubs[iss->n_pubs - 1], kid));
		for (j = 0; j + 1 < iss->n_pubs; j++) {
			char other[44];

			NHI_TRY(nhi_pkey_thumbprint(iss->pubs[j], other));
			NHI_CHECK(strcmp(kid, other) != 0, NHI_ERR_CONFIG,
				  "token issuer: retired key '%s' is the same key as another one listed",
				  cfg->retired_keys[i]);
		}
	}

	/* RFC 7515 §4.1: alg, typ (RFC 8725 §3.11 explicit typing), kid (RFC 7638) */
	hdr = json_pack("{s:s, s:s, s:s}", "alg", "ES256", "typ", "JWT", "kid", iss->kid);
	NHI_CHECK(hdr != NULL, NHI_ERR_NOMEM, "out of memory");
	hdr_text = json_dumps(hdr, JSON_COMPACT);
	NHI_CHECK(hdr_text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_b64url_encode((const uint8_t *)hdr_text, strlen(hdr_text), &iss->header_b64));

	*out = iss;
	iss = NULL;
	rv = NHI_OK;
out:
	free(hdr_text);
	json_decref(hdr);
	nhi_token_issuer_free(iss);
	return rv;
}

void nhi_token_issuer_free(struct nhi_token_issuer *iss)
{
	size_t i;

	if (iss == NULL)
		return;
	for (i = 0; i < iss->n_pubs; i++)
		EVP_PKEY_free(iss->pubs[i]);
	nhi_hsm_key_free(iss->key);
	nhi_buf_free(&iss->header_b64);
	EVP_MD_free(iss->sha256);
	free(iss->issuer);
	nhi_wipe(iss->pool, sizeof(iss->pool));
	pthread_mutex_destroy(&iss->mu);
	free(iss);
}

const char *nhi_token_issuer_kid(const struct nhi_token_issuer *iss)
{
	return iss->kid;
}

nhi_err nhi_token_issuer_jwks(const struct nhi_token_issuer *iss, struct nhi_buf *out)
{
	return nhi_token_jwks(iss->pubs, iss->n_pubs, out);
}

/* 16 bytes of token randomness; refills the pool from the HSM when it runs low. */
static nhi_err take_jti(struct nhi_token_issuer *iss, uint8_t jti[JTI_BYTES])
{
	nhi_err rv = NHI_ERR_INTERNAL;

	pthread_mutex_lock(&iss->mu);
	if (iss->pool_left < JTI_BYTES) {
		NHI_TRY(nhi_hsm_random(iss->hsm, iss->pool, sizeof(iss->pool)));
		iss->pool_left = sizeof(iss->pool);
	}
	iss->pool_left -= JTI_BYTES;
	memcpy(jti, iss->pool + iss->pool_left, JTI_BYTES);
	nhi_wipe(iss->pool + iss->pool_left, JTI_BYTES); /* never handed out twice */
	rv = NHI_OK;
out:
	pthread_mutex_unlock(&iss->mu);
	return rv;
}

/*
 * The claims set, compact, in a fixed member order, written straight into `out`
 * (common/jsonw.h: the bytes jansson would dump; every string UTF-8 checked).
 */
static nhi_err build_claims(const struct nhi_token_issuer *iss, const struct nhi_token_request *req, int64_t now,
			    unsigned ttl, const char *jti, const uint8_t x5t[32], struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf x5t_b64 = {0};
	struct nhi_jsonw o;
	size_t i;

	/* RFC 8705 §3.1 */
	NHI_TRY(nhi_b64url_encode(x5t, 32, &x5t_b64));
	nhi_jsonw_begin(&o, out);
	nhi_jsonw_s(&o, "iss", iss->issuer);
	nhi_jsonw_s(&o, "sub", req->sub);
	nhi_jsonw_s(&o, "aud", req->aud); /* one audience: RFC 7519 §4.1.3 allows the string form */
	nhi_jsonw_i(&o, "iat", now);
	nhi_jsonw_i(&o, "nbf", now);
	nhi_jsonw_i(&o, "exp", now + ttl);
	nhi_jsonw_s(&o, "jti", jti);
	nhi_jsonw_open(&o, "roles", true);
	for (i = 0; i < req->n_roles; i++)
		nhi_jsonw_elem_s(&o, req->roles[i]);
	nhi_jsonw_close(&o, true);
	nhi_jsonw_open(&o, "cnf", false);
	nhi_jsonw_s(&o, "x5t#S256", (const char *)x5t_b64.data);
	nhi_jsonw_close(&o, false);
	rv = nhi_jsonw_end(&o);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "token claims");
		goto out;
	}
	NHI_CHECK(out->len <= NHI_TOKEN_MAX_BYTES, NHI_ERR_LIMIT, "token claims too large");
out:
	nhi_buf_free(&x5t_b64);
	return rv;
}

nhi_err nhi_token_issue(struct nhi_token_issuer *iss, const struct nhi_token_request *req, struct nhi_buf *token,
			struct nhi_token_issued *info)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf claims = {0}, jti_b64 = {0};
	uint8_t jti[JTI_BYTES], x5t[32], digest[32], sig[64];
	size_t start = token != NULL ? token->len : 0, i;
	int64_t now;
	unsigned ttl, dlen = 0;

	NHI_CHECK(iss != NULL && req != NULL && token != NULL, NHI_ERR_ARG, "no issuer, request or output");
	NHI_CHECK(string_ok(req->sub, NHI_TOKEN_CLAIM_MAX_BYTES), NHI_ERR_ARG, "sub must be 1..%d bytes",
		  NHI_TOKEN_CLAIM_MAX_BYTES);
	NHI_CHECK(string_ok(req->aud, NHI_TOKEN_CLAIM_MAX_BYTES), NHI_ERR_ARG, "aud must be 1..%d bytes",
		  NHI_TOKEN_CLAIM_MAX_BYTES);
	NHI_CHECK(req->n_roles <= NHI_TOKEN_ROLES_MAX && (req->n_roles == 0 || req->roles != NULL), NHI_ERR_LIMIT,
		  "at most %d roles per token", NHI_TOKEN_ROLES_MAX);
	for (i = 0; i < req->n_roles; i++)
		NHI_CHECK(string_ok(req->roles[i], NHI_TOKEN_ROLE_MAX_BYTES), NHI_ERR_ARG,
			  "role %zu must be 1..%d bytes", i, NHI_TOKEN_ROLE_MAX_BYTES);
	NHI_CHECK(req->now >= 0 && req->now <= NHI_TOKEN_NUMERICDATE_MAX - NHI_TOKEN_TTL_MAX_S, NHI_ERR_ARG,
		  "issue time out of range");
	if (req->cert_sha256 != NULL) {
		memcpy(x5t, req->cert_sha256, 32);
	} else {
		NHI_CHECK(req->cert_der != NULL && req->cert_der_len > 0, NHI_ERR_ARG,
			  "a token is bound to the agent's client certificate (RFC 8705): none given");
		NHI_TRY(nhi_sha256(req->cert_der, req->cert_der_len, x5t));
	}
	now = req->now != 0 ? req->now : (int64_t)time(NULL);
	ttl = req->ttl_s != 0 ? req->ttl_s : iss->ttl_default_s;
	if (ttl > iss->ttl_max_s)
		ttl = iss->ttl_max_s;

	NHI_TRY(take_jti(iss, jti));
	NHI_TRY(nhi_b64url_encode(jti, sizeof(jti), &jti_b64));
	NHI_TRY(build_claims(iss, req, now, ttl, (const char *)jti_b64.data, x5t, &claims));

	/* signing input: ASCII(BASE64URL(header) || '.' || BASE64URL(payload)), RFC 7515 §5.1 */
	NHI_TRY(nhi_buf_append(token, iss->header_b64.data, iss->header_b64.len));
	NHI_TRY(nhi_buf_append(token, ".", 1));
	NHI_TRY(nhi_b64url_encode(claims.data, claims.len, token));
	NHI_CHECK_SSL(EVP_Digest(token->data + start, token->len - start, digest, &dlen, iss->sha256, NULL) == 1 &&
			      dlen == 32,
		      NHI_ERR_CRYPTO, "SHA-256 of the signing input");
	NHI_TRY(nhi_hsm_sign_digest(iss->hsm, iss->key, digest, sig));
	NHI_TRY(nhi_buf_append(token, ".", 1));
	NHI_TRY(nhi_b64url_encode(sig, sizeof(sig), token));
	/* never issue what our own verifier would refuse unread */
	NHI_CHECK(token->len - start <= NHI_TOKEN_MAX_BYTES, NHI_ERR_LIMIT,
		  "token would be %zu bytes, above the %d-byte cap: fewer or shorter roles", token->len - start,
		  NHI_TOKEN_MAX_BYTES);
	if (info != NULL) {
		memcpy(info->jti, jti_b64.data, sizeof(info->jti));
		memcpy(info->kid, iss->kid, sizeof(info->kid));
		info->iat = now;
		info->exp = now + ttl;
	}
	rv = NHI_OK;
out:
	if (rv != NHI_OK && token != NULL && token->data != NULL) {
		nhi_wipe(token->data + start, token->len - start);
		token->len = start;
		token->data[start] = '\0';
	}
	nhi_buf_free(&claims);
	nhi_buf_free(&jti_b64);
	return rv;
}
