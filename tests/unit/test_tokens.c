/*
 * tests/unit/test_tokens.c — tokens/ against a real SoftHSM2 token (no mocks):
 * issuance in the HSM, the strict verifier's attack table, known-answer vectors
 * (RFC 7515 A.3, RFC 7638), rollover, JWKS, libjwt's pitfalls, high-S, threads.
 *
 * Tokens with hand-made headers and claims are signed in software with the RFC 7515
 * Appendix A.3 key (its private scalar is public, which is the point: it is a test
 * key that the verifier here trusts). NHI_WRITE_JWT_CORPUS=<dir> makes the attack
 * table also write every crafted input there (seeds for tests/fuzz/corpus/jwt).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../common/pkey.h"
#include "../../hsm/hsm.h"
#include "../../tokens/tokens_internal.h"
#include "fixture.h"

#include <dlfcn.h>
#include <jansson.h>
#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <pthread.h>

#define NOW 1800000000LL /* 2027-01-15: fixed, so every time claim below is a literal */
#define ISS "https://nhid.test"
#define AUD "gateway"

/* RFC 7515 Appendix A.3: ES256 example (JWK and the literal compact JWS). */
static const struct {
	const char *x, *y, *d, *header_b64, *payload_b64, *sig_b64;
	const char *thumbprint; /* RFC 7638, as computed by jose's calculateJwkThumbprint */
} rfc7515_a3 = {
	.x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
	.y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
	.d = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI",
	.header_b64 = "eyJhbGciOiJFUzI1NiJ9",
	.payload_b64 = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
	.sig_b64 = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
	.thumbprint = "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U",
};

static const uint8_t test_cert[] = "pretend this is an agent certificate in DER";
static const uint8_t other_cert[] = "a different agent certificate";

static struct {
	struct nhi_fixture fx;
	struct nhi_hsm *hsm;
	EVP_PKEY *soft;      /* A.3 key with its private scalar: signs crafted tokens */
	EVP_PKEY *stranger;  /* a key nobody trusts */
	char soft_kid[44], stranger_kid[44];
	char x5t[44];        /* base64url SHA-256 of test_cert */
} g;

/*
 * EVP_MD_fetch as libcrypto answers it, except that a test may have the n-th fetch of
 * SHA2-256 that tokens/ makes (one per trusted key, in es256.c) fail: a key whose
 * setup fails midway through a JWK Set.
 */
static int sha256_fetch_fail_at; /* 0: none fails */

EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm, const char *properties)
{
	EVP_MD *(*real)(OSSL_LIB_CTX *, const char *, const char *) =
		(EVP_MD * (*)(OSSL_LIB_CTX *, const char *, const char *)) dlsym(RTLD_NEXT, "EVP_MD_fetch");

	if (sha256_fetch_fail_at > 0 && properties == NULL && algorithm != NULL &&
	    strcmp(algorithm, "SHA2-256") == 0 && --sha256_fetch_fail_at == 0)
		return NULL;
	return real(ctx, algorithm, properties);
}

/* ---- helpers -------------------------------------------------------------------- */

static void b64(const void *p, size_t n, struct nhi_buf *out)
{
	assert_int_equal(nhi_b64url_encode(p, n, out), NHI_OK);
}

static EVP_PKEY *a3_key(bool with_private)
{
	struct nhi_buf x = {0}, y = {0}, d = {0};
	uint8_t raw[65];
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	OSSL_PARAM *params;
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	EVP_PKEY *pk = NULL;
	BIGNUM *priv;

	assert_int_equal(nhi_b64url_decode(rfc7515_a3.x, strlen(rfc7515_a3.x), &x), NHI_OK);
	assert_int_equal(nhi_b64url_decode(rfc7515_a3.y, strlen(rfc7515_a3.y), &y), NHI_OK);
	assert_int_equal(nhi_b64url_decode(rfc7515_a3.d, strlen(rfc7515_a3.d), &d), NHI_OK);
	raw[0] = 0x04;
	memcpy(raw + 1, x.data, 32);
	memcpy(raw + 33, y.data, 32);
	if (!with_private) {
		assert_int_equal(nhi_pkey_from_raw(NHI_PKEY_P256, raw, 65, &pk), NHI_OK);
	} else {
		priv = BN_bin2bn(d.data, 32, NULL);
		assert_true(OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0));
		assert_true(OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw, 65));
		assert_true(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv));
		params = OSSL_PARAM_BLD_to_param(bld);
		assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
		assert_int_equal(EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_KEYPAIR, params), 1);
		OSSL_PARAM_free(params);
		BN_free(priv);
	}
	OSSL_PARAM_BLD_free(bld);
	EVP_PKEY_CTX_free(ctx);
	nhi_buf_free(&x);
	nhi_buf_free(&y);
	nhi_buf_free(&d);
	return pk;
}

/* Raw R||S ES256 signature made in software. */
static void soft_sign(EVP_PKEY *pk, const void *msg, size_t len, uint8_t sig[64])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80];
	size_t der_len = sizeof(der);

	assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk), 1);
	assert_int_equal(EVP_DigestSign(md, der, &der_len, msg, len), 1);
	assert_int_equal(nhi_ecdsa_der_to_raw(der, der_len, sig), NHI_OK);
	EVP_MD_CTX_free(md);
}

/* Replace each "%K" in tmpl by kid, "%X" by the test cert thumbprint. */
static void expand(const char *tmpl, const char *kid, struct nhi_buf *out)
{
	const char *p;

	for (p = tmpl; *p != '\0'; p++) {
		if (p[0] == '%' && p[1] == 'K') {
			assert_int_equal(nhi_buf_append_str(out, kid), NHI_OK);
			p++;
		} else if (p[0] == '%' && p[1] == 'X') {
			assert_int_equal(nhi_buf_append_str(out, g.x5t), NHI_OK);
			p++;
		} else {
			assert_int_equal(nhi_buf_append(out, p, 1), NHI_OK);
		}
	}
}

#define STD_HEADER "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\"}"
#define STD_CLAIMS                                                                                                   \
	"{\"iss\":\"" ISS "\",\"sub\":\"agent-7\",\"aud\":\"" AUD "\",\"iat\":1799999990,\"nbf\":1799999990,"        \
	"\"exp\":1800000290,\"jti\":\"q1w2e3r4t5y6u7i8o9p0aa\",\"roles\":[\"infer\"],\"cnf\":{\"x5t#S256\":\"%X\"}}"

/* header.claims.signature with the given signer; header/claims are templates. */
static void craft(const char *header, const char *claims, EVP_PKEY *signer, const char *kid, struct nhi_buf *tok)
{
	struct nhi_buf h = {0}, c = {0};
	uint8_t sig[64];

	expand(header, kid, &h);
	expand(claims, kid, &c);
	b64(h.data, h.len, tok);
	assert_int_equal(nhi_buf_append(tok, ".", 1), NHI_OK);
	b64(c.data, c.len, tok);
	soft_sign(signer, tok->data, tok->len, sig);
	assert_int_equal(nhi_buf_append(tok, ".", 1), NHI_OK);
	b64(sig, 64, tok);
	nhi_buf_free(&h);
	nhi_buf_free(&c);
}

/* A verifier accepting AUD and "updates", with a signature memo of `memo_entries` (0: none). */
static struct nhi_token_verifier *verifier_memo(size_t memo_entries)
{
	struct nhi_token_verify_cfg cfg;
	struct nhi_token_verifier *v = NULL;
	static const char *const auds[] = {AUD, "updates"};

	nhi_token_verify_cfg_init(&cfg);
	cfg.issuer = ISS;
	cfg.audiences = auds;
	cfg.n_audiences = 2;
	cfg.memo_entries = memo_entries;
	assert_int_equal(nhi_token_verifier_new(&cfg, &v), NHI_OK);
	return v;
}

static struct nhi_token_verifier *verifier(void)
{
	return verifier_memo(0);
}

/* A verifier trusting the A.3 soft key only. */
static struct nhi_token_verifier *soft_verifier(void)
{
	struct nhi_token_verifier *v = verifier();

	assert_int_equal(nhi_token_verifier_add_key(v, g.soft), NHI_OK);
	return v;
}

static enum nhi_token_error verify_at(const struct nhi_token_verifier *v, const struct nhi_buf *tok, int64_t now,
				      const uint8_t *cert, size_t cert_len, struct nhi_token_claims **claims)
{
	struct nhi_token_check chk = {.now = now, .cert_der = cert, .cert_der_len = cert_len};
	enum nhi_token_error why = NHI_TOKEN_E__COUNT;
	nhi_err e = nhi_token_verify(v, (const char *)tok->data, tok->len, &chk, claims, &why);

	if (why == NHI_TOKEN_OK)
		assert_int_equal(e, NHI_OK);
	else
		assert_int_equal(e, NHI_ERR_VERIFY);
	return why;
}

static struct nhi_hsm_key *key_for(const char *label)
{
	struct nhi_hsm_key *k = NULL;

	if (nhi_hsm_find(g.hsm, label, &k) == NHI_OK)
		return k;
	if (nhi_hsm_generate(g.hsm, NHI_KEY_EC_P256, label, &k) != NHI_OK)
		fail_msg("generate %s: %s", label, nhi_err_detail());
	return k;
}

static struct nhi_token_issuer *issuer(const char *signing, const char *const *retired, size_t n_retired)
{
	struct nhi_token_issuer_cfg cfg;
	struct nhi_token_issuer *iss = NULL;
	nhi_err e;

	nhi_token_issuer_cfg_init(&cfg);
	cfg.hsm = g.hsm;
	cfg.signing_key = signing;
	cfg.retired_keys = retired;
	cfg.n_retired_keys = n_retired;
	cfg.issuer = ISS;
	e = nhi_token_issuer_new(&cfg, &iss);
	if (e != NHI_OK)
		fail_msg("issuer: %s", nhi_err_detail());
	return iss;
}

static void issue(struct nhi_token_issuer *iss, int64_t now, unsigned ttl, struct nhi_buf *tok,
		  struct nhi_token_issued *info)
{
	static const char *const roles[] = {"infer", "resolve"};
	struct nhi_token_request req = {
		.sub = "agent-7",
		.aud = AUD,
		.roles = roles,
		.n_roles = 2,
		.cert_der = test_cert,
		.cert_der_len = sizeof(test_cert),
		.ttl_s = ttl,
		.now = now,
	};

	if (nhi_token_issue(iss, &req, tok, info) != NHI_OK)
		fail_msg("issue: %s", nhi_err_detail());
}

static struct nhi_token_verifier *verifier_for(const struct nhi_token_issuer *iss)
{
	struct nhi_token_verifier *v = verifier();
	struct nhi_buf jwks = {0};

	assert_int_equal(nhi_token_issuer_jwks(iss, &jwks), NHI_OK);
	assert_int_equal(nhi_token_verifier_add_jwks(v, (const char *)jwks.data, jwks.len), NHI_OK);
	nhi_buf_free(&jwks);
	return v;
}

/* ---- setup ---------------------------------------------------------------------- */

static int setup(void **state)
{
	uint8_t d[32];
	struct nhi_buf x = {0};
	nhi_err e;

	(void)state;
	nhi_fixture_setup(&g.fx, "unit-tokens");
	e = nhi_hsm_open(&g.fx.cfg, &g.hsm);
	if (e != NHI_OK) {
		fprintf(stderr, "open: %s\n", nhi_err_detail());
		return -1;
	}
	nhi_hsm_key_free(key_for("nhid-token-1"));
	nhi_hsm_key_free(key_for("nhid-token-2"));
	nhi_hsm_key_free(key_for("nhid-token-3"));
	g.soft = a3_key(true);
	g.stranger = EVP_EC_gen("P-256");
	if (g.soft == NULL || g.stranger == NULL || nhi_pkey_thumbprint(g.soft, g.soft_kid) != NHI_OK ||
	    nhi_pkey_thumbprint(g.stranger, g.stranger_kid) != NHI_OK || nhi_sha256(test_cert, sizeof(test_cert), d) ||
	    nhi_b64url_encode(d, 32, &x) != NHI_OK)
		return -1;
	memcpy(g.x5t, x.data, 44);
	nhi_buf_free(&x);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(g.soft);
	EVP_PKEY_free(g.stranger);
	nhi_hsm_free(g.hsm);
	nhi_fixture_teardown(&g.fx);
	return 0;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_error_names(void **state)
{
	int i, j;

	(void)state;
	for (i = 0; i < NHI_TOKEN_E__COUNT; i++) {
		assert_string_not_equal(nhi_token_error_name(i), "unknown");
		for (j = 0; j < i; j++)
			assert_string_not_equal(nhi_token_error_name(i), nhi_token_error_name(j));
	}
	assert_string_equal(nhi_token_error_name(NHI_TOKEN_E__COUNT), "unknown");
	assert_string_equal(nhi_token_error_name(NHI_TOKEN_E_ALG), "alg");
	assert_string_equal(nhi_token_error_name(NHI_TOKEN_E_KID_UNKNOWN), "kid_unknown");
}

/* RFC 7515 A.3 verifies at the signature layer; the strict profile then refuses it. */
static void test_rfc7515_a3(void **state)
{
	struct nhi_buf sig = {0}, input = {0}, tok = {0};
	struct nhi_token_verifier *v = soft_verifier();
	EVP_PKEY *pub = a3_key(false);
	char kid[44];

	(void)state;
	assert_int_equal(nhi_b64url_decode(rfc7515_a3.sig_b64, strlen(rfc7515_a3.sig_b64), &sig), NHI_OK);
	assert_int_equal(sig.len, 64);
	assert_int_equal(nhi_buf_printf(&input, "%s.%s", rfc7515_a3.header_b64, rfc7515_a3.payload_b64), NHI_OK);
	assert_int_equal(nhi_token_es256_verify(pub, input.data, input.len, sig.data), NHI_OK);
	/* one flipped bit in the input or the signature fails */
	input.data[5] ^= 1;
	assert_int_equal(nhi_token_es256_verify(pub, input.data, input.len, sig.data), NHI_ERR_VERIFY);
	input.data[5] ^= 1;
	sig.data[40] ^= 0x80;
	assert_int_equal(nhi_token_es256_verify(pub, input.data, input.len, sig.data), NHI_ERR_VERIFY);

	/* RFC 7638 thumbprint of the A.3 key, as jose's calculateJwkThumbprint gives it */
	assert_int_equal(nhi_pkey_thumbprint(pub, kid), NHI_OK);
	assert_string_equal(kid, rfc7515_a3.thumbprint);

	/* the full JWS: {"alg":"ES256"} has no typ and no kid, so the profile says no */
	assert_int_equal(nhi_buf_printf(&tok, "%s.%s.%s", rfc7515_a3.header_b64, rfc7515_a3.payload_b64,
					rfc7515_a3.sig_b64),
			 NHI_OK);
	assert_int_equal(verify_at(v, &tok, NOW, NULL, 0, NULL), NHI_TOKEN_E_TYP);
	assert_non_null(strstr(nhi_err_detail(), "(typ)"));
	EVP_PKEY_free(pub);
	nhi_token_verifier_free(v);
	nhi_buf_free(&sig);
	nhi_buf_free(&input);
	nhi_buf_free(&tok);
}

static void test_issue_and_verify(void **state)
{
	struct nhi_token_issuer *iss = issuer("nhid-token-1", NULL, 0);
	struct nhi_token_verifier *v = verifier_for(iss);
	struct nhi_buf tok = {0}, part = {0};
	struct nhi_token_issued info;
	struct nhi_token_claims *c = NULL;
	const char *d1, *d2;
	json_t *h, *cl;
	uint8_t digest[32];

	(void)state;
	issue(iss, NOW, 0, &tok, &info);
	assert_int_equal(strlen(info.jti), 22); /* 128 bits */
	assert_string_equal(info.kid, nhi_token_issuer_kid(iss));
	assert_int_equal(info.iat, NOW);
	assert_int_equal(info.exp, NOW + NHI_TOKEN_TTL_DEFAULT_S);

	/* header is exactly the profile */
	d1 = strchr((char *)tok.data, '.');
	d2 = strchr(d1 + 1, '.');
	assert_int_equal(nhi_b64url_decode((char *)tok.data, (size_t)(d1 - (char *)tok.data), &part), NHI_OK);
	h = json_loadb((char *)part.data, part.len, JSON_REJECT_DUPLICATES, NULL);
	assert_non_null(h);
	assert_int_equal(json_object_size(h), 3);
	assert_string_equal(json_string_value(json_object_get(h, "alg")), "ES256");
	assert_string_equal(json_string_value(json_object_get(h, "typ")), "JWT");
	assert_string_equal(json_string_value(json_object_get(h, "kid")), info.kid);
	json_decref(h);
	nhi_buf_reset(&part);
	assert_int_equal(nhi_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &part), NHI_OK);
	cl = json_loadb((char *)part.data, part.len, JSON_REJECT_DUPLICATES, NULL);
	assert_non_null(cl);
	assert_int_equal(json_object_size(cl), 9);
	assert_true(json_is_string(json_object_get(cl, "aud"))); /* single audience, string form */
	json_decref(cl);
	nhi_buf_reset(&part);
	assert_int_equal(nhi_b64url_decode(d2 + 1, strlen(d2 + 1), &part), NHI_OK);
	assert_int_equal(part.len, 64); /* raw R||S */

	assert_int_equal(verify_at(v, &tok, NOW + 5, test_cert, sizeof(test_cert), &c), NHI_TOKEN_OK);
	assert_string_equal(c->iss, ISS);
	assert_string_equal(c->sub, "agent-7");
	assert_string_equal(c->aud, AUD);
	assert_string_equal(c->jti, info.jti);
	assert_string_equal(c->kid, info.kid);
	assert_int_equal(c->n_roles, 2);
	assert_string_equal(c->roles[0], "infer");
	assert_string_equal(c->roles[1], "resolve");
	assert_int_equal(c->iat, NOW);
	assert_int_equal(c->nbf, NOW);
	assert_int_equal(c->exp, NOW + 300);
	assert_int_equal(nhi_sha256(test_cert, sizeof(test_cert), digest), NHI_OK);
	assert_memory_equal(c->cnf_x5t_s256, digest, 32);
	nhi_token_claims_free(c);

	/* without a presented certificate the binding is not checked, but its form is */
	assert_int_equal(verify_at(v, &tok, NOW, NULL, 0, NULL), NHI_TOKEN_OK);
	assert_int_equal(verify_at(v, &tok, NOW, other_cert, sizeof(other_cert), NULL), NHI_TOKEN_E_CNF_MISMATCH);
	/* the clock and the leeway (30 s) */
	assert_int_equal(verify_at(v, &tok, NOW + 300 + 29, NULL, 0, NULL), NHI_TOKEN_OK);
	assert_int_equal(verify_at(v, &tok, NOW + 300 + 30, NULL, 0, NULL), NHI_TOKEN_E_EXPIRED);
	assert_int_equal(verify_at(v, &tok, NOW - 30, NULL, 0, NULL), NHI_TOKEN_OK);
	assert_int_equal(verify_at(v, &tok, NOW - 31, NULL, 0, NULL), NHI_TOKEN_E_NBF);

	/* a per-call audience replaces the configured ones */
	{
		struct nhi_token_check chk = {.now = NOW, .audience = "updates"};
		enum nhi_token_error why;

		assert_int_equal(nhi_token_verify(v, (char *)tok.data, tok.len, &chk, NULL, &why), NHI_ERR_VERIFY);
		assert_int_equal(why, NHI_TOKEN_E_AUD);
		chk.audience = AUD;
		assert_int_equal(nhi_token_verify(v, (char *)tok.data, tok.len, &chk, NULL, &why), NHI_OK);
		assert_int_equal(why, NHI_TOKEN_OK);
	}
	/* jti is fresh every time */
	{
		struct nhi_token_issued info2;
		struct nhi_buf tok2 = {0};

		issue(iss, NOW, 0, &tok2, &info2);
		assert_string_not_equal(info.jti, info2.jti);
		nhi_buf_free(&tok2);
	}
	nhi_buf_free(&part);
	nhi_buf_free(&tok);
	nhi_token_verifier_free(v);
	nhi_token_issuer_free(iss);
}

static void test_ttl_cap(void **state)
{
	struct nhi_token_issuer_cfg cfg;
	struct nhi_token_issuer *iss = NULL;
	struct nhi_token_issued info;
	struct nhi_buf tok = {0};

	(void)state;
	nhi_token_issuer_cfg_init(&cfg);
	cfg.hsm = g.hsm;
	cfg.signing_key = "nhid-token-1";
	cfg.issuer = ISS;
	cfg.ttl_default_s = 120;
	cfg.ttl_max_s = 600;
	assert_int_equal(nhi_token_issuer_new(&cfg, &iss), NHI_OK);
	issue(iss, NOW, 0, &tok, &info);
	assert_int_equal(info.exp - info.iat, 120);
	issue(iss, NOW, 100000, &tok, &info);
	assert_int_equal(info.exp - info.iat, 600); /* capped, never refused */
	issue(iss, NOW, 30, &tok, &info);
	assert_int_equal(info.exp - info.iat, 30);
	nhi_token_issuer_free(iss);
	iss = NULL;

	/* configuration out of bounds */
	cfg.ttl_max_s = NHI_TOKEN_TTL_MAX_S + 1;
	assert_int_equal(nhi_token_issuer_new(&cfg, &iss), NHI_ERR_CONFIG);
	cfg.ttl_max_s = 60;
	assert_int_equal(nhi_token_issuer_new(&cfg, &iss), NHI_ERR_CONFIG); /* default above the cap */
	cfg.ttl_max_s = 600;
	cfg.issuer = "";
	assert_int_equal(nhi_token_issuer_new(&cfg, &iss), NHI_ERR_CONFIG);
	cfg.issuer = ISS;
	cfg.signing_key = "no-such-key";
	assert_int_equal(nhi_token_issuer_new(&cfg, &iss), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "no-such-key"));
	assert_null(iss);
	nhi_buf_free(&tok);
}

static void test_issue_refuses_bad_requests(void **state)
{
	struct nhi_token_issuer *iss = issuer("nhid-token-1", NULL, 0);
	static const char *const bad_role[] = {"ok", ""}, *const bad_utf8_role[] = {"ok", "r\xc3\x28"};
	char long_sub[NHI_TOKEN_CLAIM_MAX_BYTES + 2];
	struct nhi_token_request req = {
		.sub = "agent-7", .aud = AUD, .cert_der = test_cert, .cert_der_len = sizeof(test_cert), .now = NOW};
	struct nhi_token_request r;
	struct nhi_buf tok = {0};
	uint8_t sha[32] = {1};

	(void)state;
	memset(long_sub, 'a', sizeof(long_sub) - 1);
	long_sub[sizeof(long_sub) - 1] = '\0';
	r = req, r.sub = "";
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	r = req, r.sub = NULL;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	r = req, r.sub = long_sub;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	r = req, r.sub = "bad-\xff-utf8";
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "member 'sub' is not valid UTF-8"));
	r = req, r.aud = "aud-\xc0\xaf"; /* an overlong '/' */
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "member 'aud' is not valid UTF-8"));
	r = req, r.roles = bad_utf8_role, r.n_roles = 2;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "element 1 of 'roles' is not valid UTF-8"));
	assert_int_equal(tok.len, 0); /* and no token, not even a header */
	r = req, r.aud = NULL;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	r = req, r.roles = bad_role, r.n_roles = 2;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	r = req, r.roles = bad_role, r.n_roles = NHI_TOKEN_ROLES_MAX + 1;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_LIMIT);
	r = req, r.cert_der = NULL;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "RFC 8705"));
	assert_int_equal(tok.len, 0); /* nothing partial left behind */
	/* a precomputed certificate hash is used as is */
	r = req, r.cert_der = NULL, r.cert_sha256 = sha;
	assert_int_equal(nhi_token_issue(iss, &r, &tok, NULL), NHI_OK);
	nhi_buf_free(&tok);
	nhi_token_issuer_free(iss);
}

/*
 * Non-ASCII claims are written escaped (\u00E9, RFC 8259 §7; common/jsonw.h writes
 * what jansson's JSON_ENSURE_ASCII writes) and read back as the same UTF-8.
 */
static void test_issue_non_ascii_claims(void **state)
{
	static const char *const roles[] = {"r\xc3\xa9le", "\xe2\x82\xac"};
	struct nhi_token_issuer *iss = issuer("nhid-token-1", NULL, 0);
	struct nhi_token_verifier *v = verifier_for(iss);
	struct nhi_token_request req = {.sub = "agent-7", .aud = AUD, .roles = roles, .n_roles = 2,
					 .cert_der = test_cert, .cert_der_len = sizeof(test_cert), .now = NOW};
	struct nhi_token_claims *cl = NULL;
	struct nhi_buf tok = {0}, payload = {0};
	const char *dot1, *dot2;

	(void)state;
	assert_int_equal(nhi_token_issue(iss, &req, &tok, NULL), NHI_OK);
	dot1 = strchr((char *)tok.data, '.');
	dot2 = strchr(dot1 + 1, '.');
	assert_int_equal(nhi_b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload), NHI_OK);
	assert_non_null(strstr((char *)payload.data, "\"roles\":[\"r\\u00E9le\",\"\\u20AC\"]"));
	assert_int_equal(verify_at(v, &tok, NOW + 1, test_cert, sizeof(test_cert), &cl), NHI_TOKEN_OK);
	assert_int_equal(cl->n_roles, 2);
	assert_string_equal(cl->roles[0], "r\xc3\xa9le");
	assert_string_equal(cl->roles[1], "\xe2\x82\xac");
	nhi_token_claims_free(cl);
	nhi_buf_free(&payload);
	nhi_buf_free(&tok);
	nhi_token_verifier_free(v);
	nhi_token_issuer_free(iss);
}

/* current signer + retired-but-trusted verify; a removed key's tokens do not */
static void test_rollover(void **state)
{
	static const char *const retired1[] = {"nhid-token-1"};
	struct nhi_token_issuer *old = issuer("nhid-token-1", NULL, 0);
	struct nhi_token_issuer *cur = issuer("nhid-token-2", retired1, 1);
	struct nhi_token_issuer *next = issuer("nhid-token-3", NULL, 0);
	struct nhi_token_verifier *v_cur = verifier_for(cur), *v_next = verifier_for(next);
	struct nhi_buf t_old = {0}, t_cur = {0}, jwks = {0};
	struct nhi_token_claims *c = NULL;
	json_t *set;

	(void)state;
	assert_int_equal(nhi_token_verifier_key_count(v_cur), 2);
	assert_string_not_equal(nhi_token_issuer_kid(old), nhi_token_issuer_kid(cur));
	issue(old, NOW, 0, &t_old, NULL);
	issue(cur, NOW, 0, &t_cur, NULL);
	assert_int_equal(verify_at(v_cur, &t_cur, NOW, NULL, 0, &c), NHI_TOKEN_OK);
	assert_string_equal(c->kid, nhi_token_issuer_kid(cur));
	nhi_token_claims_free(c);
	assert_int_equal(verify_at(v_cur, &t_old, NOW, NULL, 0, &c), NHI_TOKEN_OK); /* retired, still trusted */
	assert_string_equal(c->kid, nhi_token_issuer_kid(old));
	nhi_token_claims_free(c);
	assert_int_equal(verify_at(v_next, &t_old, NOW, NULL, 0, NULL), NHI_TOKEN_E_KID_UNKNOWN); /* removed */
	assert_int_equal(verify_at(v_next, &t_cur, NOW, NULL, 0, NULL), NHI_TOKEN_E_KID_UNKNOWN);

	/* JWKS: signing key first, every member of the profile, kid = thumbprint */
	assert_int_equal(nhi_token_issuer_jwks(cur, &jwks), NHI_OK);
	set = json_loadb((char *)jwks.data, jwks.len, JSON_REJECT_DUPLICATES, NULL);
	assert_non_null(set);
	assert_int_equal(json_array_size(json_object_get(set, "keys")), 2);
	{
		json_t *k = json_array_get(json_object_get(set, "keys"), 0);

		assert_int_equal(json_object_size(k), 7);
		assert_string_equal(json_string_value(json_object_get(k, "kty")), "EC");
		assert_string_equal(json_string_value(json_object_get(k, "crv")), "P-256");
		assert_string_equal(json_string_value(json_object_get(k, "use")), "sig");
		assert_string_equal(json_string_value(json_object_get(k, "alg")), "ES256");
		assert_string_equal(json_string_value(json_object_get(k, "kid")), nhi_token_issuer_kid(cur));
		assert_int_equal(json_string_length(json_object_get(k, "x")), 43);
		assert_int_equal(json_string_length(json_object_get(k, "y")), 43);
		k = json_array_get(json_object_get(set, "keys"), 1);
		assert_string_equal(json_string_value(json_object_get(k, "kid")), nhi_token_issuer_kid(old));
	}
	json_decref(set);
	/* the same key listed twice is a configuration error */
	{
		static const char *const dup[] = {"nhid-token-1"};
		struct nhi_token_issuer_cfg cfg;
		struct nhi_token_issuer *bad = NULL;

		nhi_token_issuer_cfg_init(&cfg);
		cfg.hsm = g.hsm, cfg.signing_key = "nhid-token-1", cfg.issuer = ISS;
		cfg.retired_keys = dup, cfg.n_retired_keys = 1;
		assert_int_equal(nhi_token_issuer_new(&cfg, &bad), NHI_ERR_CONFIG);
	}
	nhi_buf_free(&jwks);
	nhi_buf_free(&t_old);
	nhi_buf_free(&t_cur);
	nhi_token_verifier_free(v_cur);
	nhi_token_verifier_free(v_next);
	nhi_token_issuer_free(old);
	nhi_token_issuer_free(cur);
	nhi_token_issuer_free(next);
}

static void test_jwks_reader(void **state)
{
	struct nhi_token_verifier *v = verifier();
	struct nhi_buf good = {0}, doc = {0};
	EVP_PKEY *pub = a3_key(false);
	static const struct {
		const char *name, *jwk; /* %x %y: A.3 coordinates, %k: its thumbprint */
		nhi_err want;
	} cases[] = {
		{"private part", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"d\":\"%x\"}", NHI_ERR_FORMAT},
		{"RSA", "{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}", NHI_ERR_FORMAT},
		{"no kty", "{\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\"}", NHI_ERR_FORMAT},
		{"P-384", "{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"%x\",\"y\":\"%y\"}", NHI_ERR_FORMAT},
		{"alg RS256", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"alg\":\"RS256\"}", NHI_ERR_FORMAT},
		{"alg HS256", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"alg\":\"HS256\"}", NHI_ERR_FORMAT},
		{"use enc", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"use\":\"enc\"}", NHI_ERR_FORMAT},
		{"key_ops sign", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"key_ops\":[\"sign\"]}",
		 NHI_ERR_FORMAT},
		{"kid not thumbprint", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"kid\":\"k1\"}",
		 NHI_ERR_FORMAT},
		{"off curve", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%x\"}", NHI_ERR_FORMAT},
		{"short x", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"%y\"}", NHI_ERR_FORMAT},
		{"padded x", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x=\",\"y\":\"%y\"}", NHI_ERR_FORMAT},
		{"dup member", "{\"kty\":\"EC\",\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\"}", NHI_ERR_FORMAT},
		{"not an object", "[]", NHI_ERR_FORMAT},
		{"ok minimal", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\"}", NHI_OK},
		{"ok full", "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%x\",\"y\":\"%y\",\"kid\":\"%k\",\"use\":\"sig\","
			    "\"alg\":\"ES256\",\"key_ops\":[\"verify\"]}",
		 NHI_OK},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct nhi_token_verifier *vi = verifier();
		const char *p;

		nhi_buf_reset(&doc);
		assert_int_equal(nhi_buf_append_str(&doc, "{\"keys\":["), NHI_OK);
		for (p = cases[i].jwk; *p != '\0'; p++) {
			const char *sub = NULL;

			if (p[0] == '%' && p[1] == 'x')
				sub = rfc7515_a3.x;
			else if (p[0] == '%' && p[1] == 'y')
				sub = rfc7515_a3.y;
			else if (p[0] == '%' && p[1] == 'k')
				sub = rfc7515_a3.thumbprint;
			if (sub != NULL) {
				assert_int_equal(nhi_buf_append_str(&doc, sub), NHI_OK);
				p++;
			} else {
				assert_int_equal(nhi_buf_append(&doc, p, 1), NHI_OK);
			}
		}
		assert_int_equal(nhi_buf_append_str(&doc, "]}"), NHI_OK);
		if (nhi_token_verifier_add_jwks(vi, (char *)doc.data, doc.len) != cases[i].want)
			fail_msg("JWKS case '%s': %s", cases[i].name, nhi_err_detail());
		assert_int_equal(nhi_token_verifier_key_count(vi), cases[i].want == NHI_OK ? 1 : 0);
		nhi_token_verifier_free(vi);
	}

	/* whole-set rules: empty, not JSON, duplicate key, too many, all-or-nothing */
	assert_int_equal(nhi_token_verifier_add_jwks(v, "{\"keys\":[]}", 11), NHI_ERR_FORMAT);
	assert_int_equal(nhi_token_verifier_add_jwks(v, "{\"keys\":", 8), NHI_ERR_FORMAT);
	assert_int_equal(nhi_token_jwks(&pub, 1, &good), NHI_OK);
	{
		json_t *set = json_loadb((char *)good.data, good.len, 0, NULL), *keys = json_object_get(set, "keys");
		char *text;

		assert_int_equal(json_array_append_new(keys, json_deep_copy(json_array_get(keys, 0))), 0);
		text = json_dumps(set, 0);
		nhi_buf_reset(&doc);
		assert_int_equal(nhi_buf_append_str(&doc, text), NHI_OK);
		free(text);
		json_decref(set);
	}
	assert_int_equal(nhi_token_verifier_add_jwks(v, (char *)doc.data, doc.len), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "same key"));
	assert_int_equal(nhi_token_verifier_key_count(v), 0);
	assert_int_equal(nhi_token_verifier_add_jwks(v, (char *)good.data, good.len), NHI_OK);
	assert_int_equal(nhi_token_verifier_add_jwks(v, (char *)good.data, good.len), NHI_ERR_EXISTS);
	assert_int_equal(nhi_token_verifier_add_key(v, pub), NHI_ERR_EXISTS);
	assert_int_equal(nhi_token_verifier_key_count(v), 1);
	{
		char *big = malloc(NHI_JWKS_MAX_BYTES + 2);

		memset(big, ' ', NHI_JWKS_MAX_BYTES + 1);
		assert_int_equal(nhi_token_verifier_add_jwks(v, big, NHI_JWKS_MAX_BYTES + 1), NHI_ERR_LIMIT);
		free(big);
	}
	/* a non-P-256 key is refused */
	{
		EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");

		assert_int_equal(nhi_token_verifier_add_key(v, ed), NHI_ERR_ARG);
		EVP_PKEY_free(ed);
	}
	EVP_PKEY_free(pub);
	nhi_buf_free(&good);
	nhi_buf_free(&doc);
	nhi_token_verifier_free(v);
}

/* A JWK Set whose second key cannot be set up (here: SHA-256 not fetched) fails the
 * whole call and leaves the verifier as it was: no key added, none freed twice. */
static void test_jwks_add_fails_midway(void **state)
{
	struct nhi_token_issuer *iss = issuer("nhid-token-1", (const char *const[]){"nhid-token-2"}, 1);
	struct nhi_token_verifier *v = verifier();
	struct nhi_buf jwks = {0}, tok = {0};

	(void)state;
	assert_int_equal(nhi_token_issuer_jwks(iss, &jwks), NHI_OK);
	sha256_fetch_fail_at = 2;
	assert_int_equal(nhi_token_verifier_add_jwks(v, (const char *)jwks.data, jwks.len), NHI_ERR_CRYPTO);
	assert_int_equal(sha256_fetch_fail_at, 0);
	assert_int_equal(nhi_token_verifier_key_count(v), 0);
	/* the first key was not left behind: its tokens are unknown, and the set can be added again */
	issue(iss, NOW, 0, &tok, NULL);
	assert_int_equal(verify_at(v, &tok, NOW, test_cert, sizeof(test_cert), NULL), NHI_TOKEN_E_KID_UNKNOWN);
	assert_int_equal(nhi_token_verifier_add_jwks(v, (const char *)jwks.data, jwks.len), NHI_OK);
	assert_int_equal(nhi_token_verifier_key_count(v), 2);
	assert_int_equal(verify_at(v, &tok, NOW, test_cert, sizeof(test_cert), NULL), NHI_TOKEN_OK);
	/* a single-key set failing its only key */
	nhi_token_verifier_free(v);
	v = verifier();
	sha256_fetch_fail_at = 1;
	assert_int_equal(nhi_token_verifier_add_key(v, g.soft), NHI_ERR_CRYPTO);
	assert_int_equal(nhi_token_verifier_key_count(v), 0);
	nhi_buf_free(&jwks);
	nhi_buf_free(&tok);
	nhi_token_verifier_free(v);
	nhi_token_issuer_free(iss);
}

/* ---- the attack table --------------------------------------------------------------- */

enum mutation {
	M_NONE,
	M_SIG_DER,        /* the signature DER-encoded instead of R||S */
	M_SIG_63,         /* one byte short */
	M_SIG_65,         /* one byte long */
	M_SIG_EMPTY,      /* "h.p." */
	M_SIG_ZERO,       /* r = s = 0 ("psychic signature") */
	M_TAMPER,         /* payload changed after signing */
	M_STRANGER,       /* signed by an untrusted key, kid of the trusted one */
	M_STRANGER_KID,   /* signed by an untrusted key, its own kid */
	M_HDR_PAD,        /* '=' padding on the header */
	M_SIG_PLUS,       /* standard base64 ('+', '/') in the signature */
	M_SIG_SPACE,      /* whitespace inside the signature */
	M_HDR_NONCANON,   /* header with non-zero unused trailing bits */
	M_SEG_4,          /* an extra segment */
	M_SEG_5,          /* JWE shape */
	M_SEG_2,          /* no signature part */
	M_EMPTY_HDR,
	M_EMPTY_PAYLOAD,
	M_ALL_EMPTY,      /* ".." */
	M_HUGE,           /* 1 MB */
	M_HDR_HUGE,       /* a 2 KB header */
};

struct attack {
	const char *name;
	const char *header;   /* template; NULL: STD_HEADER */
	const char *claims;   /* template; NULL: STD_CLAIMS */
	enum mutation mut;
	enum nhi_token_error want;
};

/* standard claims without times, plus the given members */
#define C_(...)                                                                                                      \
	"{\"iss\":\"" ISS "\",\"sub\":\"agent-7\",\"aud\":\"" AUD "\",\"jti\":\"j1\",\"cnf\":{\"x5t#S256\":\"%X\"}"  \
	__VA_ARGS__ "}"
#define TIMES_ ",\"iat\":1799999990,\"nbf\":1799999990,\"exp\":1800000290"

static const struct attack attacks[] = {
	{"baseline", NULL, NULL, M_NONE, NHI_TOKEN_OK},
	{"typ lower-case jwt", "{\"alg\":\"ES256\",\"typ\":\"jwt\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_OK},
	{"typ application/jwt", "{\"alg\":\"ES256\",\"typ\":\"application/jwt\",\"kid\":\"%K\"}", NULL, M_NONE,
	 NHI_TOKEN_OK},
	{"aud array with ours", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":[\"x\",\"" AUD "\"],\"jti\":\"j\","
	 "\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_OK},
	{"unknown header member ignored", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"x-note\":1}", NULL, M_NONE,
	 NHI_TOKEN_OK},
	{"no roles", NULL, C_(TIMES_), M_NONE, NHI_TOKEN_OK},
	/* alg */
	{"alg none", "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_SIG_EMPTY, NHI_TOKEN_E_ALG},
	{"alg None", "{\"alg\":\"None\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_SIG_EMPTY, NHI_TOKEN_E_ALG},
	{"alg NONE", "{\"alg\":\"NONE\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_SIG_EMPTY, NHI_TOKEN_E_ALG},
	{"alg none signed", "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg RS256 on ES256 sig", "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg ES384 on ES256 sig", "{\"alg\":\"ES384\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg PS256 on ES256 sig", "{\"alg\":\"PS256\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg HS256 header", "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg es256 lower-case", "{\"alg\":\"es256\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg missing", "{\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg not a string", "{\"alg\":256,\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg array", "{\"alg\":[\"ES256\"],\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_ALG},
	{"alg with NUL", "{\"alg\":\"ES256\\u0000x\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_JSON},
	/* kid */
	{"kid unknown", NULL, NULL, M_STRANGER_KID, NHI_TOKEN_E_KID_UNKNOWN},
	{"kid missing", "{\"alg\":\"ES256\",\"typ\":\"JWT\"}", NULL, M_NONE, NHI_TOKEN_E_KID_MISSING},
	{"kid empty", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"\"}", NULL, M_NONE, NHI_TOKEN_E_KID_MISSING},
	{"kid number", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":7}", NULL, M_NONE, NHI_TOKEN_E_KID_MISSING},
	{"kid path traversal", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"../../etc/passwd\"}", NULL, M_NONE,
	 NHI_TOKEN_E_KID_UNKNOWN},
	/* keys from the token, crit, typ */
	{"jku header", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"jku\":\"https://evil/jwks\"}", NULL, M_NONE,
	 NHI_TOKEN_E_HEADER_KEY},
	{"x5u header", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"x5u\":\"https://evil/c.pem\"}", NULL, M_NONE,
	 NHI_TOKEN_E_HEADER_KEY},
	{"jwk header", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"jwk\":{\"kty\":\"EC\"}}", NULL, M_NONE,
	 NHI_TOKEN_E_HEADER_KEY},
	{"x5c header", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"x5c\":[\"MIIB\"]}", NULL, M_NONE,
	 NHI_TOKEN_E_HEADER_KEY},
	{"crit header", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"crit\":[\"exp\"],\"exp\":1}", NULL, M_NONE,
	 NHI_TOKEN_E_CRIT},
	{"crit b64", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"b64\":false,\"crit\":[\"b64\"]}", NULL, M_NONE,
	 NHI_TOKEN_E_CRIT},
	{"typ wrong", "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_TYP},
	{"typ missing", "{\"alg\":\"ES256\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_TYP},
	{"typ JWS", "{\"alg\":\"ES256\",\"typ\":\"JOSE\",\"kid\":\"%K\"}", NULL, M_NONE, NHI_TOKEN_E_TYP},
	/* claims */
	{"iss wrong", NULL,
	 "{\"iss\":\"https://evil\",\"sub\":\"a\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_ISS},
	{"iss missing", NULL,
	 "{\"sub\":\"a\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}", M_NONE,
	 NHI_TOKEN_E_ISS},
	{"aud wrong", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":\"admin\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_AUD},
	{"aud missing", NULL, "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_AUD},
	{"aud empty array", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":[],\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}", M_NONE,
	 NHI_TOKEN_E_AUD},
	/* an array of strings, whatever element matches: not accepted for its first one */
	{"aud array, ours then a number", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":[\"" AUD "\",5],\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_
	 "}",
	 M_NONE, NHI_TOKEN_E_AUD},
	{"aud array, ours then an object", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":[\"x\",\"" AUD "\",{\"a\":1}],\"jti\":\"j\","
	 "\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_AUD},
	{"expired", NULL, C_(",\"iat\":1799999000,\"nbf\":1799999000,\"exp\":1799999300"), M_NONE, NHI_TOKEN_E_EXPIRED},
	{"not yet valid", NULL, C_(",\"iat\":1799999990,\"nbf\":1800000100,\"exp\":1800000290"), M_NONE,
	 NHI_TOKEN_E_NBF},
	{"issued in the future", NULL, C_(",\"iat\":1800000100,\"exp\":1800000290"), M_NONE, NHI_TOKEN_E_IAT},
	{"iat missing", NULL, C_(",\"exp\":1800000290"), M_NONE, NHI_TOKEN_E_IAT},
	{"too long lifetime", NULL, C_(",\"iat\":1799999990,\"exp\":1800999990"), M_NONE, NHI_TOKEN_E_LIFETIME},
	{"exp before iat", NULL, C_(",\"iat\":1800000020,\"exp\":1800000010"), M_NONE, NHI_TOKEN_E_LIFETIME},
	{"expired at the leeway edge", NULL, C_(",\"iat\":1799999900,\"exp\":1799999970"), M_NONE,
	 NHI_TOKEN_E_EXPIRED},
	{"expired, within leeway", NULL, C_(",\"iat\":1799999900,\"exp\":1799999971"), M_NONE, NHI_TOKEN_OK},
	{"exp missing", NULL, C_(",\"iat\":1799999990,\"nbf\":1799999990"), M_NONE, NHI_TOKEN_E_EXP_MISSING},
	{"exp as string", NULL, C_(",\"iat\":1799999990,\"exp\":\"1800000290\""), M_NONE, NHI_TOKEN_E_CLAIMS},
	{"exp as float", NULL, C_(",\"iat\":1799999990,\"exp\":1800000290.5"), M_NONE, NHI_TOKEN_E_CLAIMS},
	{"exp negative", NULL, C_(",\"iat\":1799999990,\"exp\":-1"), M_NONE, NHI_TOKEN_E_CLAIMS},
	{"exp huge", NULL, C_(",\"iat\":1799999990,\"exp\":9223372036854775807"), M_NONE, NHI_TOKEN_E_CLAIMS},
	{"exp beyond int64", NULL, C_(",\"iat\":1799999990,\"exp\":92233720368547758070"), M_NONE, NHI_TOKEN_E_JSON},
	{"sub missing", NULL,
	 "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}", M_NONE,
	 NHI_TOKEN_E_SUB},
	{"jti missing", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":\"" AUD "\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}", M_NONE,
	 NHI_TOKEN_E_JTI},
	{"roles not an array", NULL, C_(TIMES_ ",\"roles\":\"admin\""), M_NONE, NHI_TOKEN_E_CLAIMS},
	{"cnf missing", NULL, "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":\"" AUD "\",\"jti\":\"j\"" TIMES_ "}", M_NONE,
	 NHI_TOKEN_E_CNF_MISSING},
	{"cnf jkt instead", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"jkt\":\"%X\"}" TIMES_ "}", M_NONE,
	 NHI_TOKEN_E_CNF_FORM},
	{"cnf short", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"abc\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_CNF_FORM},
	/* signature */
	{"DER signature", NULL, NULL, M_SIG_DER, NHI_TOKEN_E_SIG_FORMAT},
	{"63-byte signature", NULL, NULL, M_SIG_63, NHI_TOKEN_E_SIG_FORMAT},
	{"65-byte signature", NULL, NULL, M_SIG_65, NHI_TOKEN_E_SIG_FORMAT},
	{"empty signature", NULL, NULL, M_SIG_EMPTY, NHI_TOKEN_E_SIG_FORMAT},
	{"zero signature", NULL, NULL, M_SIG_ZERO, NHI_TOKEN_E_SIG},
	{"untrusted signer, trusted kid", NULL, NULL, M_STRANGER, NHI_TOKEN_E_SIG},
	{"payload tampered", NULL, NULL, M_TAMPER, NHI_TOKEN_E_SIG},
	/* JSON */
	{"duplicate alg", "{\"alg\":\"ES256\",\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"%K\"}", NULL, M_NONE,
	 NHI_TOKEN_E_JSON_DUP},
	{"duplicate sub", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"sub\":\"root\",\"aud\":\"" AUD "\",\"jti\":\"j\","
	 "\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_JSON_DUP},
	{"duplicate inside cnf", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"a\",\"aud\":\"" AUD "\",\"jti\":\"j\","
	 "\"cnf\":{\"x5t#S256\":\"%X\",\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_JSON_DUP},
	{"non-UTF-8 header", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"n\":\"\xc3\x28\"}", NULL, M_NONE,
	 NHI_TOKEN_E_UTF8},
	{"non-UTF-8 claims", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"\xff\xfe\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_UTF8},
	{"overlong UTF-8", NULL,
	 "{\"iss\":\"" ISS "\",\"sub\":\"\xc0\xaf\",\"aud\":\"" AUD "\",\"jti\":\"j\",\"cnf\":{\"x5t#S256\":\"%X\"}" TIMES_ "}",
	 M_NONE, NHI_TOKEN_E_UTF8},
	{"header array", "[\"ES256\"]", NULL, M_NONE, NHI_TOKEN_E_JSON},
	{"header trailing data", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\"}x", NULL, M_NONE, NHI_TOKEN_E_JSON},
	{"claims not JSON", NULL, "not json", M_NONE, NHI_TOKEN_E_JSON},
	/* jansson quotes up to 20 bytes of the input near a syntax error: the detail must
	 * still show them as printable ASCII (an unsigned header reaches this) */
	{"header JSON error near ESC", "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"x\":\"\\\x1b[2J\"}", NULL, M_NONE,
	 NHI_TOKEN_E_JSON},
	{"header JSON error near C1 CSI", "{\"alg\" \"\xc2\x9b" "2J\"}", NULL, M_NONE, NHI_TOKEN_E_JSON},
	{"claims JSON error near DEL", NULL, "{\"iss\" \"\x7f\x7f\"}", M_NONE, NHI_TOKEN_E_JSON},
	/* base64url and framing */
	{"header padding", NULL, NULL, M_HDR_PAD, NHI_TOKEN_E_B64},
	{"signature + and /", NULL, NULL, M_SIG_PLUS, NHI_TOKEN_E_B64},
	{"signature whitespace", NULL, NULL, M_SIG_SPACE, NHI_TOKEN_E_B64},
	{"header non-canonical", NULL, NULL, M_HDR_NONCANON, NHI_TOKEN_E_B64},
	{"extra segment", NULL, NULL, M_SEG_4, NHI_TOKEN_E_SEGMENTS},
	{"JWE shape", NULL, NULL, M_SEG_5, NHI_TOKEN_E_SEGMENTS},
	{"two segments", NULL, NULL, M_SEG_2, NHI_TOKEN_E_SEGMENTS},
	{"empty header", NULL, NULL, M_EMPTY_HDR, NHI_TOKEN_E_EMPTY},
	{"empty payload", NULL, NULL, M_EMPTY_PAYLOAD, NHI_TOKEN_E_EMPTY},
	{"all empty", NULL, NULL, M_ALL_EMPTY, NHI_TOKEN_E_EMPTY},
	{"1 MB token", NULL, NULL, M_HUGE, NHI_TOKEN_E_TOO_LARGE},
	{"2 KB header", NULL, NULL, M_HDR_HUGE, NHI_TOKEN_E_TOO_LARGE},
};

/* Build the attack's token into tok; the signature is over the unmutated parts. */
static void build_attack(const struct attack *a, struct nhi_buf *tok)
{
	const char *hdr = a->header != NULL ? a->header : STD_HEADER;
	const char *claims = a->claims != NULL ? a->claims : STD_CLAIMS;
	struct nhi_buf t = {0};
	char *d1, *d2;
	size_t i;

	craft(hdr, claims, a->mut == M_STRANGER || a->mut == M_STRANGER_KID ? g.stranger : g.soft,
	      a->mut == M_STRANGER_KID ? g.stranger_kid : g.soft_kid, &t);
	d1 = strchr((char *)t.data, '.');
	d2 = strchr(d1 + 1, '.');
	switch (a->mut) {
	case M_SIG_DER: case M_SIG_63: case M_SIG_65: case M_SIG_ZERO: {
		struct nhi_buf raw = {0}, der = {0};

		assert_int_equal(nhi_b64url_decode(d2 + 1, strlen(d2 + 1), &raw), NHI_OK);
		assert_int_equal(nhi_buf_append(tok, t.data, (size_t)(d2 + 1 - (char *)t.data)), NHI_OK);
		if (a->mut == M_SIG_DER) {
			assert_int_equal(nhi_ecdsa_raw_to_der(raw.data, &der), NHI_OK);
			b64(der.data, der.len, tok);
		} else if (a->mut == M_SIG_ZERO) {
			memset(raw.data, 0, 64);
			b64(raw.data, 64, tok);
		} else {
			assert_int_equal(nhi_buf_append(&raw, "x", 1), NHI_OK);
			b64(raw.data, a->mut == M_SIG_63 ? 63 : 65, tok);
		}
		nhi_buf_free(&raw);
		nhi_buf_free(&der);
		break;
	}
	case M_SIG_EMPTY:
		assert_int_equal(nhi_buf_append(tok, t.data, (size_t)(d2 + 1 - (char *)t.data)), NHI_OK);
		break;
	case M_TAMPER: {
		/* same claims with a different sub, keeping the original signature */
		struct nhi_buf c = {0};

		assert_int_equal(nhi_buf_append(tok, t.data, (size_t)(d1 + 1 - (char *)t.data)), NHI_OK);
		expand(STD_CLAIMS, g.soft_kid, &c);
		memcpy(strstr((char *)c.data, "agent-7"), "agent-0", 7);
		b64(c.data, c.len, tok);
		assert_int_equal(nhi_buf_append_str(tok, d2), NHI_OK);
		nhi_buf_free(&c);
		break;
	}
	case M_HDR_PAD:
		assert_int_equal(nhi_buf_append(tok, t.data, (size_t)(d1 - (char *)t.data)), NHI_OK);
		assert_int_equal(nhi_buf_append_str(tok, "=="), NHI_OK);
		assert_int_equal(nhi_buf_append_str(tok, d1), NHI_OK);
		break;
	case M_SIG_PLUS:
	case M_SIG_SPACE:
		assert_int_equal(nhi_buf_append_str(tok, (char *)t.data), NHI_OK);
		i = (size_t)(d2 + 1 - (char *)t.data) + 10;
		tok->data[i] = a->mut == M_SIG_PLUS ? '+' : ' ';
		tok->data[i + 1] = a->mut == M_SIG_PLUS ? '/' : '\n';
		break;
	case M_HDR_NONCANON: {
		/* {"alg":"ES256","typ":"JWT","kid":"..."} encodes to a length with unused
		 * bits; bump the last header character so that those bits are set */
		size_t hl = (size_t)(d1 - (char *)t.data);

		assert_int_equal(nhi_buf_append_str(tok, (char *)t.data), NHI_OK);
		assert_true(hl % 4 != 0);
		tok->data[hl - 1] = (char)(tok->data[hl - 1] == 'Q' ? 'R' : tok->data[hl - 1] + 1);
		break;
	}
	case M_SEG_4:
		assert_int_equal(nhi_buf_printf(tok, "%s.e30", (char *)t.data), NHI_OK);
		break;
	case M_SEG_5:
		assert_int_equal(nhi_buf_printf(tok, "%s.e30.e30", (char *)t.data), NHI_OK);
		break;
	case M_SEG_2:
		assert_int_equal(nhi_buf_append(tok, t.data, (size_t)(d2 - (char *)t.data)), NHI_OK);
		break;
	case M_EMPTY_HDR:
		assert_int_equal(nhi_buf_append_str(tok, d1), NHI_OK);
		break;
	case M_EMPTY_PAYLOAD:
		assert_int_equal(nhi_buf_append(tok, t.data, (size_t)(d1 + 1 - (char *)t.data)), NHI_OK);
		assert_int_equal(nhi_buf_append_str(tok, d2), NHI_OK);
		break;
	case M_ALL_EMPTY:
		assert_int_equal(nhi_buf_append_str(tok, ".."), NHI_OK);
		break;
	case M_HUGE:
		assert_int_equal(nhi_buf_append_str(tok, (char *)t.data), NHI_OK);
		assert_int_equal(nhi_buf_reserve(tok, 1024 * 1024), NHI_OK);
		memset(tok->data + tok->len, 'A', 1024 * 1024 - tok->len);
		tok->len = 1024 * 1024;
		tok->data[tok->len] = '\0';
		break;
	case M_HDR_HUGE: {
		struct nhi_buf big = {0};

		assert_int_equal(nhi_buf_append_str(&big, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%K\",\"pad\":\""),
				 NHI_OK);
		for (i = 0; i < 1600; i++)
			assert_int_equal(nhi_buf_append(&big, "p", 1), NHI_OK);
		assert_int_equal(nhi_buf_append_str(&big, "\"}"), NHI_OK);
		craft((char *)big.data, claims, g.soft, g.soft_kid, tok);
		nhi_buf_free(&big);
		break;
	}
	default:
		assert_int_equal(nhi_buf_append_str(tok, (char *)t.data), NHI_OK);
		break;
	}
	nhi_buf_free(&t);
}

/* NHI_WRITE_JWT_CORPUS=dir: the attack table as fuzz seeds */
static void write_seed(const char *dir, const char *prefix, const char *name, const void *data, size_t len)
{
	char path[512], clean[96];
	size_t i;
	FILE *f;

	for (i = 0; name[i] != '\0' && i + 1 < sizeof(clean); i++) {
		char ch = name[i] >= 'A' && name[i] <= 'Z' ? (char)(name[i] - 'A' + 'a') : name[i];

		clean[i] = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ? ch : '-';
	}
	clean[i] = '\0';
	snprintf(path, sizeof(path), "%s/%s%s", dir, prefix, clean);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
}

/* One cmocka test per attack (state = the row), so TAP names each one. */
static void test_attack(void **state)
{
	const struct attack *a = *state;
	struct nhi_token_verifier *v = soft_verifier();
	const char *corpus = getenv("NHI_WRITE_JWT_CORPUS");
	struct nhi_buf tok = {0};
	enum nhi_token_error why;

	build_attack(a, &tok);
	why = verify_at(v, &tok, NOW, test_cert, sizeof(test_cert), NULL);
	if (why != a->want)
		fail_msg("attack '%s': want %s, got %s (%s)", a->name, nhi_token_error_name(a->want),
			 nhi_token_error_name(why), nhi_err_detail());
	/* the detail message names the reason the server will report */
	if (why != NHI_TOKEN_OK && strstr(nhi_err_detail(), nhi_token_error_name(why)) == NULL)
		fail_msg("attack '%s': detail does not name the reason: %s", a->name, nhi_err_detail());
	/* ... and shows what came from the token only as printable ASCII (docs/tokens.md) */
	if (why != NHI_TOKEN_OK) {
		const char *d;

		for (d = nhi_err_detail(); *d != '\0'; d++)
			if (*d < 0x20 || *d > 0x7e)
				fail_msg("attack '%s': byte 0x%02x at %zu of the detail is not printable ASCII", a->name,
					 (unsigned)(unsigned char)*d, (size_t)(d - nhi_err_detail()));
	}
	if (corpus != NULL && a->mut != M_HUGE) {
		struct nhi_buf h = {0}, c = {0};

		write_seed(corpus, "tok-", a->name, tok.data, tok.len);
		/* header\nclaims: the fuzz target signs these itself to reach the claims checks */
		if (a->mut == M_NONE) {
			expand(a->header != NULL ? a->header : STD_HEADER, g.soft_kid, &h);
			expand(a->claims != NULL ? a->claims : STD_CLAIMS, g.soft_kid, &c);
			assert_int_equal(nhi_buf_append(&h, "\n", 1), NHI_OK);
			assert_int_equal(nhi_buf_append(&h, c.data, c.len), NHI_OK);
			write_seed(corpus, "json-", a->name, h.data, h.len);
		}
		nhi_buf_free(&h);
		nhi_buf_free(&c);
	}
	nhi_buf_free(&tok);
	nhi_token_verifier_free(v);
}

/* libjwt 1.10.2's measured pitfalls, next to our verifier refusing the same tokens */
static void test_libjwt_pitfalls(void **state)
{
	struct nhi_token_verifier *v = soft_verifier();
	struct nhi_buf pem = {0}, tok = {0};
	EVP_PKEY *pub = a3_key(false);
	jwt_t *j = NULL, *d = NULL;
	char *s;
	int pass;

	(void)state;
	assert_int_equal(nhi_pkey_pem(pub, &pem), NHI_OK);
	assert_int_equal(pem.data[pem.len - 1], '\n');
	/* HS256 keyed with the ES256 public key PEM, with and without its final newline */
	for (pass = 0; pass < 2; pass++) {
		size_t klen = pass == 0 ? pem.len : pem.len - 1;

		assert_int_equal(jwt_new(&j), 0);
		assert_int_equal(jwt_add_header(j, "kid", g.soft_kid), 0);
		assert_int_equal(jwt_add_grant(j, "iss", ISS), 0);
		assert_int_equal(jwt_add_grant(j, "aud", AUD), 0);
		assert_int_equal(jwt_add_grant(j, "sub", "root"), 0);
		assert_int_equal(jwt_add_grant_int(j, "exp", NOW + 100), 0);
		assert_int_equal(jwt_set_alg(j, JWT_ALG_HS256, pem.data, (int)klen), 0);
		s = jwt_encode_str(j);
		assert_non_null(s);
		/* the pitfall: libjwt verifies it "successfully" with the public key */
		assert_int_equal(jwt_decode(&d, s, pem.data, (int)klen), 0);
		assert_int_equal(jwt_get_alg(d), JWT_ALG_HS256);
		jwt_free(d);
		d = NULL;
		nhi_buf_reset(&tok);
		assert_int_equal(nhi_buf_append_str(&tok, s), NHI_OK);
		assert_int_equal(verify_at(v, &tok, NOW, NULL, 0, NULL), NHI_TOKEN_E_ALG);
		free(s);
		jwt_free(j);
	}
	/* the other pitfall: with a NULL key libjwt accepts a token it never verified */
	{
		struct nhi_buf forged = {0};
		uint8_t junk[64] = {7};

		craft(STD_HEADER, STD_CLAIMS, g.soft, g.soft_kid, &forged);
		forged.len = (size_t)(strrchr((char *)forged.data, '.') + 1 - (char *)forged.data);
		b64(junk, sizeof(junk), &forged);
		assert_int_equal(jwt_decode(&d, (char *)forged.data, NULL, 0), 0);
		jwt_free(d);
		d = NULL;
		assert_int_equal(verify_at(v, &forged, NOW, NULL, 0, NULL), NHI_TOKEN_E_SIG);
		nhi_buf_free(&forged);
	}
	EVP_PKEY_free(pub);
	nhi_buf_free(&pem);
	nhi_buf_free(&tok);
	nhi_token_verifier_free(v);
}

/* libjwt as a C interop peer: its ES256 accepts our tokens, ours accepts its */
static void test_libjwt_interop(void **state)
{
	struct nhi_token_issuer *iss = issuer("nhid-token-1", NULL, 0);
	struct nhi_token_verifier *v = soft_verifier();
	struct nhi_buf tok = {0}, pem = {0}, priv_pem = {0};
	struct nhi_token_claims *c = NULL;
	EVP_PKEY *pub = NULL;
	struct nhi_hsm_key *k = key_for("nhid-token-1");
	jwt_t *j = NULL;
	BIO *b = BIO_new(BIO_s_mem());
	char *s, *p;
	long n;

	(void)state;
	issue(iss, 0, 0, &tok, NULL);
	assert_int_equal(nhi_hsm_pubkey(g.hsm, k, &pub), NHI_OK);
	assert_int_equal(nhi_pkey_pem(pub, &pem), NHI_OK);
	assert_int_equal(jwt_decode(&j, (char *)tok.data, pem.data, (int)pem.len), 0);
	assert_int_equal(jwt_get_alg(j), JWT_ALG_ES256);
	assert_string_equal(jwt_get_grant(j, "sub"), "agent-7");
	assert_string_equal(jwt_get_header(j, "kid"), nhi_token_issuer_kid(iss));
	jwt_free(j);

	/* libjwt signs ES256 with the A.3 private key; our verifier trusts that key */
	assert_int_equal(PEM_write_bio_PrivateKey(b, g.soft, NULL, NULL, 0, NULL, NULL), 1);
	n = BIO_get_mem_data(b, &p);
	assert_int_equal(nhi_buf_append(&priv_pem, p, (size_t)n), NHI_OK);
	assert_int_equal(jwt_new(&j), 0);
	assert_int_equal(jwt_add_header(j, "kid", g.soft_kid), 0);
	{
		char grants[512];

		snprintf(grants, sizeof(grants),
			 "{\"iss\":\"" ISS "\",\"sub\":\"libjwt-agent\",\"aud\":\"" AUD "\",\"iat\":1799999990,"
			 "\"exp\":1800000290,\"jti\":\"lj1\",\"cnf\":{\"x5t#S256\":\"%s\"}}",
			 g.x5t);
		assert_int_equal(jwt_add_grants_json(j, grants), 0);
	}
	assert_int_equal(jwt_set_alg(j, JWT_ALG_ES256, priv_pem.data, (int)priv_pem.len), 0);
	s = jwt_encode_str(j);
	assert_non_null(s);
	nhi_buf_reset(&tok);
	assert_int_equal(nhi_buf_append_str(&tok, s), NHI_OK);
	assert_int_equal(verify_at(v, &tok, NOW, test_cert, sizeof(test_cert), &c), NHI_TOKEN_OK);
	assert_string_equal(c->sub, "libjwt-agent");
	nhi_token_claims_free(c);
	free(s);
	jwt_free(j);
	BIO_free(b);
	nhi_buf_free(&priv_pem);
	nhi_buf_free(&pem);
	nhi_buf_free(&tok);
	EVP_PKEY_free(pub);
	nhi_hsm_key_free(k);
	nhi_token_verifier_free(v);
	nhi_token_issuer_free(iss);
}

/* High-S: (r, s) and (r, n - s) both verify, and they are the same token (same jti). */
static void test_high_s(void **state)
{
	static const char order_hex[] = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
	struct nhi_token_issuer *iss = issuer("nhid-token-1", NULL, 0);
	struct nhi_token_verifier *v = verifier_for(iss);
	struct nhi_buf tok = {0}, sig = {0}, other = {0};
	struct nhi_token_claims *c1 = NULL, *c2 = NULL;
	BIGNUM *n = NULL, *s;
	char *d2;
	int i, flips = 0;

	(void)state;
	assert_true(BN_hex2bn(&n, order_hex) > 0);
	for (i = 0; i < 4; i++) {
		nhi_buf_reset(&tok);
		nhi_buf_reset(&sig);
		nhi_buf_reset(&other);
		issue(iss, NOW, 0, &tok, NULL);
		d2 = strrchr((char *)tok.data, '.');
		assert_int_equal(nhi_b64url_decode(d2 + 1, strlen(d2 + 1), &sig), NHI_OK);
		s = BN_bin2bn(sig.data + 32, 32, NULL);
		assert_int_equal(BN_sub(s, n, s), 1); /* s' = n - s */
		assert_int_equal(BN_bn2binpad(s, sig.data + 32, 32), 32);
		BN_free(s);
		assert_int_equal(nhi_buf_append(&other, tok.data, (size_t)(d2 + 1 - (char *)tok.data)), NHI_OK);
		b64(sig.data, 64, &other);
		assert_int_equal(verify_at(v, &tok, NOW, NULL, 0, &c1), NHI_TOKEN_OK);
		assert_int_equal(verify_at(v, &other, NOW, NULL, 0, &c2), NHI_TOKEN_OK);
		assert_string_equal(c1->jti, c2->jti); /* identity is the jti, never the token bytes */
		nhi_token_claims_free(c1);
		nhi_token_claims_free(c2);
		flips++;
		/* s = n (out of range) and r = 0 fail */
		assert_int_equal(BN_bn2binpad(n, sig.data + 32, 32), 32);
		other.len = (size_t)(d2 + 1 - (char *)tok.data);
		b64(sig.data, 64, &other);
		assert_int_equal(verify_at(v, &other, NOW, NULL, 0, NULL), NHI_TOKEN_E_SIG);
	}
	assert_int_equal(flips, 4);
	BN_free(n);
	nhi_buf_free(&tok);
	nhi_buf_free(&sig);
	nhi_buf_free(&other);
	nhi_token_verifier_free(v);
	nhi_token_issuer_free(iss);
}

static void test_verifier_config(void **state)
{
	struct nhi_token_verify_cfg cfg;
	struct nhi_token_verifier *v = NULL;
	struct nhi_buf tok = {0};
	enum nhi_token_error why;

	(void)state;
	nhi_token_verify_cfg_init(&cfg);
	assert_int_equal(cfg.leeway_s, NHI_TOKEN_LEEWAY_DEFAULT_S);
	assert_int_equal(nhi_token_verifier_new(&cfg, &v), NHI_ERR_CONFIG); /* no issuer */
	cfg.issuer = ISS;
	cfg.leeway_s = NHI_TOKEN_LEEWAY_MAX_S + 1;
	assert_int_equal(nhi_token_verifier_new(&cfg, &v), NHI_ERR_CONFIG);
	cfg.leeway_s = 0;
	cfg.lifetime_max_s = 0;
	assert_int_equal(nhi_token_verifier_new(&cfg, &v), NHI_ERR_CONFIG);
	cfg.lifetime_max_s = NHI_TOKEN_TTL_MAX_S + 1;
	assert_int_equal(nhi_token_verifier_new(&cfg, &v), NHI_ERR_CONFIG);
	cfg.lifetime_max_s = 60;
	assert_int_equal(nhi_token_verifier_new(&cfg, &v), NHI_OK);
	assert_int_equal(nhi_token_verifier_add_key(v, g.soft), NHI_OK);
	/* no audience configured and none given: our error, not the token's */
	craft(STD_HEADER, STD_CLAIMS, g.soft, g.soft_kid, &tok);
	assert_int_equal(nhi_token_verify(v, (char *)tok.data, tok.len, NULL, NULL, &why), NHI_ERR_ARG);
	assert_int_equal(why, NHI_TOKEN_OK);
	/* zero leeway, 60 s lifetime: the standard token (300 s) is too long-lived */
	{
		struct nhi_token_check chk = {.now = NOW, .audience = AUD};

		assert_int_equal(nhi_token_verify(v, (char *)tok.data, tok.len, &chk, NULL, &why), NHI_ERR_VERIFY);
		assert_int_equal(why, NHI_TOKEN_E_LIFETIME);
		chk.now = -5;
		assert_int_equal(nhi_token_verify(v, (char *)tok.data, tok.len, &chk, NULL, &why), NHI_ERR_ARG);
	}
	/* a verifier with no keys knows no kid */
	nhi_token_verifier_free(v);
	v = verifier();
	assert_int_equal(verify_at(v, &tok, NOW, NULL, 0, NULL), NHI_TOKEN_E_KID_UNKNOWN);
	nhi_token_verifier_free(v);
	nhi_token_verifier_free(NULL);
	nhi_token_issuer_free(NULL);
	nhi_token_claims_free(NULL);
	nhi_buf_free(&tok);
}

struct worker {
	struct nhi_token_issuer *iss;
	const struct nhi_token_verifier *v;
	int ok;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	struct nhi_buf tok = {0};
	struct nhi_token_claims *c = NULL;
	static const char *const roles[] = {"r"};
	struct nhi_token_request req = {
		.sub = "agent-t", .aud = AUD, .roles = roles, .n_roles = 1, .cert_der = test_cert,
		.cert_der_len = sizeof(test_cert)};
	struct nhi_token_check chk = {.cert_der = test_cert, .cert_der_len = sizeof(test_cert)};
	int i;

	for (i = 0; i < 150; i++) {
		nhi_buf_reset(&tok);
		if (nhi_token_issue(w->iss, &req, &tok, NULL) != NHI_OK)
			break;
		if (nhi_token_verify(w->v, (char *)tok.data, tok.len, &chk, &c, NULL) != NHI_OK)
			break;
		if (strcmp(c->sub, "agent-t") == 0)
			w->ok++;
		nhi_token_claims_free(c);
		c = NULL;
	}
	nhi_buf_free(&tok);
	return NULL;
}

static struct nhi_token_verifier *memo_verifier(size_t entries, EVP_PKEY *trusted)
{
	struct nhi_token_verifier *v = verifier_memo(entries);

	assert_int_equal(nhi_token_verifier_add_key(v, trusted), NHI_OK);
	return v;
}

/* Two good tokens of the trusted key: a (agent-7, STD_CLAIMS) and b (agent-8). */
static void memo_tokens(struct nhi_buf *a, struct nhi_buf *b)
{
	craft(STD_HEADER, STD_CLAIMS, g.soft, g.soft_kid, a);
	craft(STD_HEADER, "{\"iss\":\"" ISS "\",\"sub\":\"agent-8\",\"aud\":\"" AUD "\",\"iat\":1799999990,"
			  "\"nbf\":1799999990,\"exp\":1800000290,\"jti\":\"zzzzzzzzzzzzzzzzzzzzzz\",\"roles\":[\"infer\"],"
			  "\"cnf\":{\"x5t#S256\":\"%X\"}}",
	      g.soft, g.soft_kid, b);
}

static unsigned long long claims_hits(const struct nhi_token_verifier *v)
{
	unsigned long long h, m, c;

	nhi_token_verifier_memo_stats(v, &h, &m, &c);
	assert_true(c <= h);
	return c;
}

static void assert_memo(const struct nhi_token_verifier *v, unsigned long long hits, unsigned long long misses)
{
	unsigned long long h, m, c;

	nhi_token_verifier_memo_stats(v, &h, &m, &c);
	assert_int_equal(h, hits);
	assert_int_equal(m, misses);
}

struct memo_worker {
	const struct nhi_token_verifier *v;
	const struct nhi_buf *tok;
	const char *sub; /* the sub each verify must hand back */
	int ok;
};

static void *memo_worker_run(void *arg)
{
	struct memo_worker *w = arg;
	struct nhi_token_check chk = {.now = NOW, .cert_der = test_cert, .cert_der_len = sizeof(test_cert)};
	struct nhi_token_claims *c;
	int i;

	for (i = 0; i < 200; i++) {
		c = NULL;
		if (nhi_token_verify(w->v, (const char *)w->tok->data, w->tok->len, &chk, i % 2 ? &c : NULL, NULL) ==
			    NHI_OK &&
		    (c == NULL ? i % 2 == 0 : strcmp(c->sub, w->sub) == 0 && c->n_roles == 1))
			w->ok++;
		nhi_token_claims_free(c);
	}
	return NULL;
}

static void test_signature_memo(void **state)
{
	struct nhi_token_verifier *v = memo_verifier(64, g.soft), *other = NULL, *one = NULL, *big = NULL;
	struct nhi_token_verify_cfg cfg;
	struct nhi_buf a = {0}, b = {0}, forged = {0}, flipped = {0};
	struct nhi_token_claims *c = NULL;
	struct memo_worker w[4];
	pthread_t t[4];
	int i;

	(void)state;
	memo_tokens(&a, &b);
	/* the same header and claims, signed by a key we do not trust */
	craft(STD_HEADER, STD_CLAIMS, g.stranger, g.soft_kid, &forged);

	assert_int_equal(verify_at(v, &a, NOW, test_cert, sizeof(test_cert), NULL), NHI_TOKEN_OK);
	assert_memo(v, 0, 1);
	assert_int_equal(verify_at(v, &a, NOW, test_cert, sizeof(test_cert), &c), NHI_TOKEN_OK);
	assert_memo(v, 1, 1);
	assert_string_equal(c->sub, "agent-7"); /* the first hit asking for claims parses them, and keeps them */
	nhi_token_claims_free(c);

	/* a hit re-checks time, binding and audience (from its kept claims, or parsed again) */
	assert_int_equal(verify_at(v, &a, NOW + 300 + 30, NULL, 0, NULL), NHI_TOKEN_E_EXPIRED);
	assert_int_equal(verify_at(v, &a, NOW - 41, NULL, 0, NULL), NHI_TOKEN_E_NBF);
	assert_int_equal(verify_at(v, &a, NOW, other_cert, sizeof(other_cert), NULL), NHI_TOKEN_E_CNF_MISMATCH);
	{
		struct nhi_token_check chk = {.now = NOW, .audience = "updates"};
		enum nhi_token_error why;

		assert_int_equal(nhi_token_verify(v, (char *)a.data, a.len, &chk, NULL, &why), NHI_ERR_VERIFY);
		assert_int_equal(why, NHI_TOKEN_E_AUD);
	}
	assert_memo(v, 5, 1);

	/* other bytes are other tokens: a forged signature over memoised claims, or one
	 * flipped signature character, is checked and refused */
	assert_int_equal(verify_at(v, &forged, NOW, NULL, 0, NULL), NHI_TOKEN_E_SIG);
	assert_int_equal(verify_at(v, &forged, NOW, NULL, 0, NULL), NHI_TOKEN_E_SIG); /* never memoised */
	assert_int_equal(nhi_buf_append(&flipped, a.data, a.len), NHI_OK);
	flipped.data[flipped.len - 2] = flipped.data[flipped.len - 2] == 'A' ? 'B' : 'A';
	assert_int_equal(verify_at(v, &flipped, NOW, NULL, 0, NULL), NHI_TOKEN_E_SIG);
	assert_memo(v, 5, 4);

	/* the memo lives and dies with its verifier: one that does not trust the key
	 * refuses the token, whatever another verifier remembers */
	other = memo_verifier(64, g.stranger);
	assert_int_equal(verify_at(other, &a, NOW, NULL, 0, NULL), NHI_TOKEN_E_KID_UNKNOWN);
	assert_memo(other, 0, 0);

	/* one slot: two tokens evict each other and both keep verifying */
	one = memo_verifier(1, g.soft);
	for (i = 0; i < 2; i++) {
		assert_int_equal(verify_at(one, &a, NOW, NULL, 0, NULL), NHI_TOKEN_OK);
		assert_int_equal(verify_at(one, &b, NOW, NULL, 0, NULL), NHI_TOKEN_OK);
	}
	assert_memo(one, 0, 4);
	assert_int_equal(verify_at(one, &b, NOW, NULL, 0, NULL), NHI_TOKEN_OK);
	assert_memo(one, 1, 4);

	/* threads share it */
	for (i = 0; i < 4; i++) {
		w[i] = (struct memo_worker){.v = v, .tok = i % 2 ? &a : &b, .sub = i % 2 ? "agent-7" : "agent-8"};
		assert_int_equal(pthread_create(&t[i], NULL, memo_worker_run, &w[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].ok, 200);
	}

	/* no memo: no counts; an oversized one is a config error */
	assert_memo(NULL, 0, 0);
	nhi_token_verify_cfg_init(&cfg);
	cfg.issuer = ISS;
	cfg.audiences = (const char *const[]){AUD};
	cfg.n_audiences = 1;
	cfg.memo_entries = NHI_TOKEN_MEMO_ENTRIES_MAX + 1;
	assert_int_equal(nhi_token_verifier_new(&cfg, &big), NHI_ERR_CONFIG);
	assert_null(big);
	assert_non_null(strstr(nhi_err_detail(), "signature memo"));

	nhi_buf_free(&a);
	nhi_buf_free(&b);
	nhi_buf_free(&forged);
	nhi_buf_free(&flipped);
	nhi_token_verifier_free(v);
	nhi_token_verifier_free(other);
	nhi_token_verifier_free(one);
}

/* Claims of a token that passed every check not depending on the call are kept in its
 * memo slot; a hit hands back a copy of its own, and checks the rest again. */
static void test_claims_memo(void **state)
{
	struct nhi_token_verifier *v = memo_verifier(64, g.soft), *one = memo_verifier(1, g.soft);
	struct nhi_buf a = {0}, b = {0}, no_nbf = {0}, other_aud = {0}, big = {0}, roles = {0};
	struct nhi_token_claims *first = NULL, *c = NULL;
	struct nhi_token_check chk = {.now = NOW};
	enum nhi_token_error why;
	int i;

	(void)state;
	memo_tokens(&a, &b);
	craft(STD_HEADER, "{\"iss\":\"" ISS "\",\"sub\":\"agent-9\",\"aud\":[\"other\",\"updates\"],"
			  "\"iat\":1799999990,\"exp\":1800000290,\"jti\":\"nonbfnonbfnonbfnonbfno\","
			  "\"cnf\":{\"x5t#S256\":\"%X\"}}",
	      g.soft, g.soft_kid, &no_nbf);
	craft(STD_HEADER, "{\"iss\":\"" ISS "\",\"sub\":\"agent-6\",\"aud\":\"other\",\"iat\":1799999990,"
			  "\"exp\":1800000290,\"jti\":\"otherotherotherotherot\",\"cnf\":{\"x5t#S256\":\"%X\"}}",
	      g.soft, g.soft_kid, &other_aud);
	/* claims above NHI_TOKEN_MEMO_CLAIMS_MAX_BYTES: 32 roles of 40 bytes */
	for (i = 0; i < 32; i++)
		assert_int_equal(nhi_buf_printf(&roles, "%s\"role-%02d-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"", i ? "," : "", i),
				 NHI_OK);
	assert_int_equal(nhi_buf_append(&roles, "", 1), NHI_OK);
	{
		struct nhi_buf tmpl = {0};

		assert_int_equal(nhi_buf_printf(&tmpl,
						"{\"iss\":\"" ISS "\",\"sub\":\"agent-big\",\"aud\":\"" AUD
						"\",\"iat\":1799999990,\"exp\":1800000290,\"jti\":\"bigbigbigbigbigbigbigb\","
						"\"roles\":[%s],\"cnf\":{\"x5t#S256\":\"%%X\"}}",
						(const char *)roles.data),
				 NHI_OK);
		assert_int_equal(nhi_buf_append(&tmpl, "", 1), NHI_OK);
		craft(STD_HEADER, (const char *)tmpl.data, g.soft, g.soft_kid, &big);
		nhi_buf_free(&tmpl);
	}

	/* a miss parses and keeps the claims; the hit's copy is the caller's own: the
	 * first is freed before the second is read, and the second outlives the verifier */
	assert_int_equal(verify_at(v, &a, NOW, test_cert, sizeof(test_cert), &first), NHI_TOKEN_OK);
	assert_int_equal(claims_hits(v), 0);
	assert_int_equal(verify_at(v, &a, NOW, test_cert, sizeof(test_cert), &c), NHI_TOKEN_OK);
	assert_int_equal(claims_hits(v), 1);
	assert_string_equal(c->iss, first->iss);
	assert_string_equal(c->sub, "agent-7");
	assert_string_equal(c->jti, "q1w2e3r4t5y6u7i8o9p0aa");
	assert_string_equal(c->aud, AUD);
	assert_int_equal(c->n_roles, 1);
	assert_string_equal(c->roles[0], "infer");
	assert_int_equal(c->iat, first->iat);
	assert_int_equal(c->nbf, first->nbf);
	assert_int_equal(c->exp, first->exp);
	assert_memory_equal(c->cnf_x5t_s256, first->cnf_x5t_s256, 32);
	assert_string_equal(c->kid, g.soft_kid);
	assert_ptr_not_equal(c->sub, first->sub);
	nhi_token_claims_free(first);
	first = NULL;
	assert_string_equal(c->roles[0], "infer");

	/* a hit with claims checks the call's clock and certificate again, with the reasons
	 * the full path gives, and hands back nothing when they fail */
	assert_int_equal(verify_at(v, &a, NOW + 300 + 30, NULL, 0, &first), NHI_TOKEN_E_EXPIRED);
	assert_null(first);
	assert_int_equal(verify_at(v, &a, NOW - 41, NULL, 0, &first), NHI_TOKEN_E_NBF);
	assert_null(first);
	assert_int_equal(verify_at(v, &a, NOW, other_cert, sizeof(other_cert), &first), NHI_TOKEN_E_CNF_MISMATCH);
	assert_null(first);
	assert_int_equal(verify_at(v, &a, NOW, NULL, 0, NULL), NHI_TOKEN_OK); /* no claims asked: still a hit */
	assert_int_equal(claims_hits(v), 5);
	/* without nbf, a token used before its iat is refused for iat, as when parsed */
	assert_int_equal(verify_at(v, &no_nbf, NOW, NULL, 0, &first), NHI_TOKEN_OK);
	assert_string_equal(first->aud, "updates");
	assert_int_equal(first->nbf, first->iat);
	nhi_token_claims_free(first);
	first = NULL;
	assert_int_equal(verify_at(v, &no_nbf, NOW - 41, NULL, 0, &first), NHI_TOKEN_E_IAT);
	assert_int_equal(verify_at(v, &no_nbf, NOW, NULL, 0, &first), NHI_TOKEN_OK);
	assert_int_equal(claims_hits(v), 7);
	assert_string_equal(first->sub, "agent-9");
	nhi_token_claims_free(first);
	first = NULL;

	/* a call naming its own audience never takes the remembered claims */
	chk.audience = "updates";
	assert_int_equal(nhi_token_verify(v, (const char *)a.data, a.len, &chk, &first, &why), NHI_ERR_VERIFY);
	assert_int_equal(why, NHI_TOKEN_E_AUD);
	assert_null(first);
	chk.audience = AUD;
	assert_int_equal(nhi_token_verify(v, (const char *)a.data, a.len, &chk, &first, &why), NHI_OK);
	assert_string_equal(first->aud, AUD);
	nhi_token_claims_free(first);
	first = NULL;
	assert_int_equal(claims_hits(v), 7);
	/* nor keeps the claims it checked against that audience: a token for "other" only
	 * passes a call naming "other", and still fails the verifier's own audiences */
	chk.audience = "other";
	assert_int_equal(nhi_token_verify(v, (const char *)other_aud.data, other_aud.len, &chk, &first, &why), NHI_OK);
	assert_string_equal(first->aud, "other");
	nhi_token_claims_free(first);
	first = NULL;
	assert_int_equal(nhi_token_verify(v, (const char *)other_aud.data, other_aud.len, &chk, &first, &why), NHI_OK);
	nhi_token_claims_free(first);
	first = NULL;
	assert_int_equal(verify_at(v, &other_aud, NOW, NULL, 0, &first), NHI_TOKEN_E_AUD);
	assert_null(first);
	assert_int_equal(claims_hits(v), 7);

	/* claims too large to keep are parsed every time */
	for (i = 0; i < 3; i++) {
		assert_int_equal(verify_at(v, &big, NOW, NULL, 0, &first), NHI_TOKEN_OK);
		assert_int_equal(first->n_roles, 32);
		assert_string_equal(first->roles[31], "role-31-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
		nhi_token_claims_free(first);
		first = NULL;
	}
	assert_int_equal(claims_hits(v), 7);

	/* one slot: two tokens evict each other, claims and all, and each gets its own */
	for (i = 0; i < 3; i++) {
		assert_int_equal(verify_at(one, &a, NOW, NULL, 0, &first), NHI_TOKEN_OK);
		assert_string_equal(first->sub, "agent-7");
		nhi_token_claims_free(first);
		assert_int_equal(verify_at(one, &b, NOW, NULL, 0, &first), NHI_TOKEN_OK);
		assert_string_equal(first->sub, "agent-8");
		assert_string_equal(first->jti, "zzzzzzzzzzzzzzzzzzzzzz");
		nhi_token_claims_free(first);
		first = NULL;
	}
	assert_int_equal(claims_hits(one), 0);
	assert_int_equal(verify_at(one, &b, NOW, NULL, 0, &first), NHI_TOKEN_OK);
	assert_int_equal(claims_hits(one), 1);
	assert_string_equal(first->sub, "agent-8");
	nhi_token_claims_free(first);

	nhi_token_verifier_free(v);
	nhi_token_verifier_free(one);
	/* the copy is not the memo's */
	assert_string_equal(c->iss, ISS);
	assert_string_equal(c->sub, "agent-7");
	assert_string_equal(c->jti, "q1w2e3r4t5y6u7i8o9p0aa");
	assert_string_equal(c->aud, AUD);
	assert_string_equal(c->roles[0], "infer");
	nhi_token_claims_free(c);
	nhi_buf_free(&a);
	nhi_buf_free(&b);
	nhi_buf_free(&no_nbf);
	nhi_buf_free(&other_aud);
	nhi_buf_free(&big);
	nhi_buf_free(&roles);
}

static void test_threads(void **state)
{
	struct nhi_token_issuer *iss = issuer("nhid-token-2", NULL, 0);
	struct nhi_token_verifier *v = verifier_for(iss);
	struct worker w[4];
	pthread_t t[4];
	int i;

	(void)state;
	for (i = 0; i < 4; i++) {
		w[i] = (struct worker){.iss = iss, .v = v};
		assert_int_equal(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].ok, 150);
	}
	nhi_token_verifier_free(v);
	nhi_token_issuer_free(iss);
}

int main(void)
{
	static const struct CMUnitTest fixed[] = {
		cmocka_unit_test(test_error_names),
		cmocka_unit_test(test_rfc7515_a3),
		cmocka_unit_test(test_issue_and_verify),
		cmocka_unit_test(test_ttl_cap),
		cmocka_unit_test(test_issue_refuses_bad_requests),
		cmocka_unit_test(test_issue_non_ascii_claims),
		cmocka_unit_test(test_rollover),
		cmocka_unit_test(test_jwks_reader),
		cmocka_unit_test(test_jwks_add_fails_midway),
		cmocka_unit_test(test_libjwt_pitfalls),
		cmocka_unit_test(test_libjwt_interop),
		cmocka_unit_test(test_high_s),
		cmocka_unit_test(test_verifier_config),
		cmocka_unit_test(test_signature_memo),
		cmocka_unit_test(test_claims_memo),
		cmocka_unit_test(test_threads),
	};
	enum { N_FIXED = sizeof(fixed) / sizeof(fixed[0]), N_ATTACKS = sizeof(attacks) / sizeof(attacks[0]) };
	static struct CMUnitTest tests[N_FIXED + N_ATTACKS];
	static char names[N_ATTACKS][96];
	size_t i;

	memcpy(tests, fixed, sizeof(fixed));
	for (i = 0; i < N_ATTACKS; i++) {
		snprintf(names[i], sizeof(names[i]), "attack: %s -> %s", attacks[i].name,
			 nhi_token_error_name(attacks[i].want));
		tests[N_FIXED + i] = (struct CMUnitTest){
			.name = names[i], .test_func = test_attack, .initial_state = (void *)&attacks[i]};
	}
	return _cmocka_run_group_tests("tokens", tests, N_FIXED + N_ATTACKS, setup, teardown);
}
