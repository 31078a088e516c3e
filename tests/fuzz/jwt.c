/*
 * tests/fuzz/jwt.c — the JWS/JWT framing, header/claims checks and JWKS reader of
 * tokens/ under libFuzzer (make fuzz) or the file driver (make check).
 *
 * Every input is verified as a compact token. Inputs that start with '{' are also
 * read as a JWK Set, and when they hold a newline they are taken as
 * "<header JSON>\n<claims JSON>", signed here with the RFC 7515 A.3 key (which the
 * verifier trusts) and verified: mutations then reach the claims checks instead of
 * stopping at the signature. Seeds: tests/fuzz/corpus/jwt/, written from the unit
 * attack table (NHI_WRITE_JWT_CORPUS, see tests/unit/test_tokens.c). Every token is
 * also verified twice by a verifier with a signature memo (the second time a hit when
 * the signature was good, with the claims the first call kept when they passed): all
 * three answers must be the same, claims included. A token that passed is verified
 * once more by both at another time and with another certificate, and they must agree.
 */
#include "../../common/pkey.h"
#include "../../tokens/tokens_internal.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1800000000LL /* the unit tests' clock, so that seeds are in their window */

static struct nhi_token_verifier *verifier, *memo_verifier;
static EVP_PKEY *signer;

static const uint8_t cert[] = "pretend this is an agent certificate in DER";

static EVP_PKEY *a3_keypair(void)
{
	static const char *const x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
	static const char *const y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
	static const char *const d = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
	struct nhi_buf bx = {0}, by = {0}, bd = {0};
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	OSSL_PARAM *params = NULL;
	EVP_PKEY *pk = NULL;
	BIGNUM *priv = NULL;
	uint8_t raw[65];

	if (nhi_b64url_decode(x, strlen(x), &bx) != NHI_OK || nhi_b64url_decode(y, strlen(y), &by) != NHI_OK ||
	    nhi_b64url_decode(d, strlen(d), &bd) != NHI_OK)
		abort();
	raw[0] = 0x04;
	memcpy(raw + 1, bx.data, 32);
	memcpy(raw + 33, by.data, 32);
	priv = BN_bin2bn(bd.data, 32, NULL);
	if (bld == NULL || ctx == NULL || priv == NULL ||
	    !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
	    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw, 65) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    EVP_PKEY_fromdata_init(ctx) != 1 || EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_KEYPAIR, params) != 1)
		abort();
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	EVP_PKEY_CTX_free(ctx);
	BN_free(priv);
	nhi_buf_free(&bx);
	nhi_buf_free(&by);
	nhi_buf_free(&bd);
	return pk;
}

static void init(void)
{
	static const char *const auds[] = {"gateway"};
	struct nhi_token_verify_cfg cfg;

	nhi_token_verify_cfg_init(&cfg);
	cfg.issuer = "https://nhid.test";
	cfg.audiences = auds;
	cfg.n_audiences = 1;
	signer = a3_keypair();
	if (nhi_token_verifier_new(&cfg, &verifier) != NHI_OK || nhi_token_verifier_add_key(verifier, signer) != NHI_OK)
		abort();
	cfg.memo_entries = 8;
	if (nhi_token_verifier_new(&cfg, &memo_verifier) != NHI_OK ||
	    nhi_token_verifier_add_key(memo_verifier, signer) != NHI_OK)
		abort();
}

static bool same_claims(const struct nhi_token_claims *a, const struct nhi_token_claims *b)
{
	size_t i;

	if (a == NULL || b == NULL)
		return a == b;
	if (strcmp(a->iss, b->iss) != 0 || strcmp(a->sub, b->sub) != 0 || strcmp(a->jti, b->jti) != 0 ||
	    strcmp(a->aud, b->aud) != 0 || a->n_roles != b->n_roles || a->iat != b->iat || a->nbf != b->nbf ||
	    a->exp != b->exp || memcmp(a->cnf_x5t_s256, b->cnf_x5t_s256, 32) != 0 || strcmp(a->kid, b->kid) != 0)
		return false;
	for (i = 0; i < a->n_roles; i++)
		if (strcmp(a->roles[i], b->roles[i]) != 0)
			return false;
	return true;
}

/* the memo verifier answers as the plain one: same error, reason and (when asked for) claims */
static void same_answer(const char *tok, size_t len, const struct nhi_token_check *chk, nhi_err e,
			enum nhi_token_error why, const struct nhi_token_claims *claims, bool want_claims)
{
	struct nhi_token_claims *again = NULL;
	enum nhi_token_error why2 = NHI_TOKEN_OK;
	nhi_err e2 = nhi_token_verify(memo_verifier, tok, len, chk, want_claims ? &again : NULL, &why2);

	if (e2 != e || why2 != why || (want_claims && !same_claims(claims, again)))
		abort();
	nhi_token_claims_free(again);
}

/* both verifiers, one call naming its own audience (which must leave no claims behind
 * for the calls that use the configured one) */
static void own_audience(const char *tok, size_t len, const char *aud)
{
	struct nhi_token_check chk = {.now = NOW, .audience = aud, .cert_der = cert, .cert_der_len = sizeof(cert)};
	struct nhi_token_claims *claims = NULL;
	enum nhi_token_error why = NHI_TOKEN_OK;
	nhi_err e = nhi_token_verify(verifier, tok, len, &chk, &claims, &why);

	same_answer(tok, len, &chk, e, why, claims, true);
	nhi_token_claims_free(claims);
}

static void verify(const char *tok, size_t len)
{
	static const uint8_t other[] = "another certificate";
	struct nhi_token_check chk = {.now = NOW, .cert_der = cert, .cert_der_len = sizeof(cert)};
	struct nhi_token_claims *claims = NULL;
	enum nhi_token_error why = NHI_TOKEN_OK;
	nhi_err e = nhi_token_verify(verifier, tok, len, &chk, &claims, &why);
	int i;

	/* the contract: OK with claims, or VERIFY with one reason */
	if ((e == NHI_OK) != (claims != NULL) || (e == NHI_ERR_VERIFY) != (why != NHI_TOKEN_OK))
		abort();
	if (claims != NULL && (claims->sub[0] == '\0' || claims->exp <= claims->iat))
		abort();
	/* the memo changes no answer, on a miss or on a hit (with the claims kept by the
	 * miss), asked for claims or not, after a call with its own audience or not */
	if (len % 5 == 0)
		own_audience(tok, len, len % 2 ? "gateway" : "other");
	for (i = 0; i < 2; i++)
		same_answer(tok, len, &chk, e, why, claims, i == 0 || len % 2 == 0);
	nhi_token_claims_free(claims);
	/* nor for a call at another time with another certificate, which a hit checks again */
	if (e == NHI_OK) {
		chk.now = NOW + (len % 2 ? 400 : -41);
		chk.cert_der = len % 3 ? cert : other;
		chk.cert_der_len = len % 3 ? sizeof(cert) : sizeof(other);
		claims = NULL;
		why = NHI_TOKEN_OK;
		e = nhi_token_verify(verifier, tok, len, &chk, &claims, &why);
		same_answer(tok, len, &chk, e, why, claims, true);
		nhi_token_claims_free(claims);
	}
}

/* b64(header).b64(claims).ES256 by the trusted key, then verify */
static void sign_and_verify(const uint8_t *hdr, size_t hlen, const uint8_t *claims, size_t clen)
{
	struct nhi_buf tok = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80], sig[64];
	size_t der_len = sizeof(der);

	if (md == NULL || nhi_b64url_encode(hdr, hlen, &tok) != NHI_OK || nhi_buf_append(&tok, ".", 1) != NHI_OK ||
	    nhi_b64url_encode(claims, clen, &tok) != NHI_OK)
		goto out;
	if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, signer) != 1 ||
	    EVP_DigestSign(md, der, &der_len, tok.data, tok.len) != 1 ||
	    nhi_ecdsa_der_to_raw(der, der_len, sig) != NHI_OK)
		abort();
	if (nhi_buf_append(&tok, ".", 1) != NHI_OK || nhi_b64url_encode(sig, 64, &tok) != NHI_OK)
		goto out;
	verify((const char *)tok.data, tok.len);
out:
	EVP_MD_CTX_free(md);
	nhi_buf_free(&tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl;

	if (verifier == NULL)
		init();
	verify((const char *)data, size);
	if (size > 0 && data[0] == '{') {
		struct nhi_token_verifier *v = NULL;
		struct nhi_token_verify_cfg cfg;
		nhi_err e;

		nhi_token_verify_cfg_init(&cfg);
		cfg.issuer = "fuzz";
		if (nhi_token_verifier_new(&cfg, &v) != NHI_OK)
			abort();
		e = nhi_token_verifier_add_jwks(v, (const char *)data, size);
		if ((e == NHI_OK) != (nhi_token_verifier_key_count(v) > 0))
			abort();
		nhi_token_verifier_free(v);

		nl = memchr(data, '\n', size);
		if (nl != NULL && size < NHI_TOKEN_MAX_BYTES)
			sign_and_verify(data, (size_t)(nl - data), nl + 1, size - (size_t)(nl - data) - 1);
	}
	nhi_err_clear();
	return 0;
}
