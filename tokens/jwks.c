/*
 * tokens/jwks.c — the RFC 7517 JWK Set of our token-signing keys, and the strict
 * reader of such a set for verifiers (nhictl token verify --jwks, the server).
 */
#include "tokens_internal.h"
#include "../common/pkey.h"

#include <jansson.h>
#include <string.h>

nhi_err nhi_token_jwks(EVP_PKEY *const *keys, size_t n, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *set = json_object(), *arr = json_array(), *k = NULL;
	struct nhi_buf x = {0}, y = {0};
	uint8_t raw[65];
	size_t i, len;
	char kid[44];
	char *text = NULL;

	NHI_CHECK(set != NULL && arr != NULL, NHI_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++) {
		NHI_TRY(nhi_pkey_raw(keys[i], raw, &len));
		NHI_CHECK(len == 65, NHI_ERR_ARG, "JWKS key %zu is not a P-256 key: token keys are ES256 only", i);
		NHI_TRY(nhi_pkey_thumbprint(keys[i], kid));
		nhi_buf_reset(&x);
		nhi_buf_reset(&y);
		NHI_TRY(nhi_b64url_encode(raw + 1, 32, &x));
		NHI_TRY(nhi_b64url_encode(raw + 33, 32, &y));
		/* RFC 7517 §4: kty, crv, x, y (RFC 7518 §6.2.1); use and alg pin the key to
		 * ES256 signatures for verifiers that honour them (RFC 8725 §3.1) */
		k = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x",
			      (const char *)x.data, "y", (const char *)y.data, "kid", kid, "use", "sig", "alg",
			      "ES256");
		NHI_CHECK(k != NULL, NHI_ERR_NOMEM, "out of memory");
		NHI_CHECK(json_array_append_new(arr, k) == 0, NHI_ERR_NOMEM, "out of memory");
		k = NULL;
	}
	NHI_CHECK(json_object_set(set, "keys", arr) == 0, NHI_ERR_NOMEM, "out of memory");
	text = json_dumps(set, JSON_INDENT(2));
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_buf_append_str(out, text));
	NHI_TRY(nhi_buf_append_str(out, "\n"));
	rv = NHI_OK;
out:
	free(text);
	json_decref(k);
	json_decref(arr);
	json_decref(set);
	nhi_buf_free(&x);
	nhi_buf_free(&y);
	return rv;
}

/* A base64url member decoding to exactly `want` bytes. */
static nhi_err coord(json_t *jwk, const char *name, size_t idx, uint8_t *dst, size_t want)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};
	json_t *m = json_object_get(jwk, name);

	NHI_CHECK(json_is_string(m), NHI_ERR_FORMAT, "JWKS key %zu: '%s' missing or not a string", idx, name);
	NHI_CHECK(nhi_b64url_decode(json_string_value(m), json_string_length(m), &b) == NHI_OK && b.len == want,
		  NHI_ERR_FORMAT, "JWKS key %zu: '%s' is not %zu bytes of strict base64url", idx, name, want);
	memcpy(dst, b.data, want);
	rv = NHI_OK;
out:
	nhi_buf_free(&b);
	return rv;
}

/* An optional string member: absent is fine, present must equal `want`. */
static bool opt_str_is(json_t *jwk, const char *name, const char *want)
{
	json_t *m = json_object_get(jwk, name);

	return m == NULL || (json_is_string(m) && strcmp(json_string_value(m), want) == 0);
}

static nhi_err parse_key(json_t *jwk, size_t idx, EVP_PKEY **out, char kid[44])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};
	uint8_t raw[65];
	EVP_PKEY *pk = NULL;
	json_t *m, *op;
	size_t i;
	bool verify_op = false;

	NHI_CHECK(json_is_object(jwk), NHI_ERR_FORMAT, "JWKS key %zu is not a JSON object", idx);
	for (i = 0; i < sizeof(private_members) / sizeof(private_members[0]); i++)
		NHI_CHECK(json_object_get(jwk, private_members[i]) == NULL, NHI_ERR_FORMAT,
			  "JWKS key %zu carries private key material ('%s'): publish public keys only and treat "
			  "that private key as disclosed",
			  idx, private_members[i]);
	NHI_CHECK(opt_str_is(jwk, "kty", "EC") && json_object_get(jwk, "kty") != NULL, NHI_ERR_FORMAT,
		  "JWKS key %zu: kty must be EC (token keys are ES256 P-256 only)", idx);
	NHI_CHECK(opt_str_is(jwk, "crv", "P-256") && json_object_get(jwk, "crv") != NULL, NHI_ERR_FORMAT,
		  "JWKS key %zu: crv must be P-256", idx);
	/* RFC 8725 §3.1: a key is used with one algorithm only */
	NHI_CHECK(opt_str_is(jwk, "alg", "ES256"), NHI_ERR_FORMAT, "JWKS key %zu: alg must be ES256 or absent", idx);
	NHI_CHECK(opt_str_is(jwk, "use", "sig"), NHI_ERR_FORMAT, "JWKS key %zu: use must be sig or absent", idx);
	op = json_object_get(jwk, "key_ops");
	if (op != NULL) {
		NHI_CHECK(json_is_array(op), NHI_ERR_FORMAT, "JWKS key %zu: key_ops must be an array", idx);
		json_array_foreach (op, i, m)
			if (json_is_string(m) && strcmp(json_string_value(m), "verify") == 0)
				verify_op = true;
		NHI_CHECK(verify_op, NHI_ERR_FORMAT, "JWKS key %zu: key_ops does not allow verify", idx);
	}
	raw[0] = 0x04;
	NHI_TRY(coord(jwk, "x", idx, raw + 1, 32));
	NHI_TRY(coord(jwk, "y", idx, raw + 33, 32));
	if (nhi_pkey_from_raw(NHI_PKEY_P256, raw, sizeof(raw), &pk) != NHI_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "JWKS key %zu: %s", idx, nhi_err_detail());
	NHI_TRY(nhi_pkey_thumbprint(pk, kid));
	/* kid is always the RFC 7638 thumbprint here, so two keys can never share one
	 * and a kid can never be pointed at a different key */
	m = json_object_get(jwk, "kid");
	NHI_CHECK(m == NULL || (json_is_string(m) && strcmp(json_string_value(m), kid) == 0), NHI_ERR_FORMAT,
		  "JWKS key %zu: kid is not the key's RFC 7638 thumbprint (%s): fix or drop the kid", idx, kid);
	*out = pk;
	pk = NULL;
	rv = NHI_OK;
out:
	EVP_PKEY_free(pk);
	return rv;
}

nhi_err nhi_token_jwks_parse(const char *json, size_t len, EVP_PKEY **keys, char (*kids)[44], size_t max,
			     size_t *n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_error_t jerr;
	json_t *set = NULL, *arr, *jwk;
	size_t i, j, got = 0;

	*n = 0;
	NHI_CHECK(len <= NHI_JWKS_MAX_BYTES, NHI_ERR_LIMIT, "JWKS is %zu bytes, above the %d-byte cap", len,
		  NHI_JWKS_MAX_BYTES);
	set = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	NHI_CHECK(set != NULL, NHI_ERR_FORMAT, "JWKS is not valid JSON (line %d: %s)", jerr.line, jerr.text);
	arr = json_object_get(set, "keys");
	NHI_CHECK(json_is_object(set) && json_is_array(arr), NHI_ERR_FORMAT,
		  "JWKS must be an object with a \"keys\" array (RFC 7517 §5)");
	NHI_CHECK(json_array_size(arr) > 0, NHI_ERR_FORMAT, "JWKS has no keys");
	NHI_CHECK(json_array_size(arr) <= max, NHI_ERR_LIMIT, "JWKS has %zu keys, more than the %zu allowed",
		  json_array_size(arr), max);
	json_array_foreach (arr, i, jwk) {
		NHI_TRY(parse_key(jwk, i, &keys[got], kids[got]));
		got++;
		for (j = 0; j + 1 < got; j++)
			NHI_CHECK(strcmp(kids[j], kids[got - 1]) != 0, NHI_ERR_FORMAT,
				  "JWKS keys %zu and %zu are the same key", j, i);
	}
	*n = got;
	got = 0;
	rv = NHI_OK;
out:
	for (i = 0; i < got; i++) {
		EVP_PKEY_free(keys[i]);
		keys[i] = NULL;
	}
	json_decref(set);
	return rv;
}
