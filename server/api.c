/*
 * server/api.c — the API's request parsing, apart from libevent so that it can be
 * fuzzed: route lookup and the JSON bodies of each endpoint (jansson, duplicate
 * members refused, unknown members refused, types and bounds checked). On failure
 * the detail is the text of the 400 reply.
 */
#include "server_internal.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <string.h>

static const struct nhi_api_route api_routes[] = {
	{"/v1/health", "GET", NHI_ROUTE_HEALTH},    {"/v1/tokens", "POST", NHI_ROUTE_TOKENS},
	{"/v1/resolve", "POST", NHI_ROUTE_RESOLVE}, {"/v1/jwks", "GET", NHI_ROUTE_JWKS},
	{"/v1/metrics", "GET", NHI_ROUTE_METRICS},  {"/v1/admin/reload", "POST", NHI_ROUTE_RELOAD},
	{"/v1/trust-bundle", "GET", NHI_ROUTE_TRUST_BUNDLE}, {"/v1/sign", "POST", NHI_ROUTE_SIGN},
	{"/v1/verify", "POST", NHI_ROUTE_VERIFY}, {"/v1/manifests/verify", "POST", NHI_ROUTE_MANIFEST_VERIFY},
};

const struct nhi_api_route *nhi_api_route_find(const char *path)
{
	size_t i;

	for (i = 0; path != NULL && i < sizeof(api_routes) / sizeof(api_routes[0]); i++)
		if (strcmp(path, api_routes[i].path) == 0)
			return &api_routes[i];
	return NULL;
}

/* one JSON object with only the allowed members */
static nhi_err object_of(const char *body, size_t len, size_t max_bytes, const char *const *allowed, size_t n,
			 json_t **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_error_t err;
	json_t *j = NULL, *v;
	const char *key;
	size_t i;

	*out = NULL;
	NHI_CHECK(len <= max_bytes, NHI_ERR_LIMIT, "request body is over the limit");
	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
	NHI_CHECK(j != NULL, NHI_ERR_FORMAT, "body must be one JSON object: %s", err.text);
	NHI_CHECK(json_is_object(j), NHI_ERR_FORMAT, "body must be one JSON object: not an object");
	json_object_foreach(j, key, v) {
		for (i = 0; i < n && strcmp(key, allowed[i]) != 0; i++)
			;
		/* a typo must not silently change meaning */
		NHI_CHECK(i < n, NHI_ERR_FORMAT, "unknown member '%.64s'", key);
	}
	*out = j;
	j = NULL;
	rv = NHI_OK;
out:
	json_decref(j);
	return rv;
}

nhi_err nhi_api_parse_token_req(const char *body, size_t len, size_t max_bytes, unsigned ttl_max_s,
				struct nhi_api_token_req *out)
{
	static const char *const members[] = {"aud", "ttl"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *j = NULL, *ttl;
	const char *aud;

	memset(out, 0, sizeof(*out));
	NHI_TRY(object_of(body, len, max_bytes, members, 2, &j));
	aud = json_string_value(json_object_get(j, "aud"));
	NHI_CHECK(aud != NULL && aud[0] != '\0' && strlen(aud) < sizeof(out->aud) &&
			  strlen(aud) == json_string_length(json_object_get(j, "aud")),
		  NHI_ERR_FORMAT, "'aud' must be a non-empty string of at most %zu bytes", sizeof(out->aud) - 1);
	memcpy(out->aud, aud, strlen(aud) + 1);
	ttl = json_object_get(j, "ttl");
	NHI_CHECK(ttl == NULL || (json_is_integer(ttl) && json_integer_value(ttl) >= 1 &&
				  json_integer_value(ttl) <= (json_int_t)ttl_max_s),
		  NHI_ERR_FORMAT, "'ttl' must be a whole number of seconds from 1 to %u", ttl_max_s);
	out->ttl_s = ttl ? (unsigned)json_integer_value(ttl) : 0;
	rv = NHI_OK;
out:
	json_decref(j);
	return rv;
}

/*
 * The one body shape resolvers send, {"token":"<compact JWS>"} and nothing else, is
 * recognised without building a JSON tree: jansson took ~6 µs on its ~450 bytes, a
 * tenth of a resolve. Recognised means exactly: the bytes {"token":" , then one or
 * more of [A-Za-z0-9_.-] (base64url and its dots: no quote, backslash, control or
 * non-ASCII byte, so nothing can be escaped or hidden), then "} ending the body.
 * For such bytes jansson yields the same single member with the same string; the
 * fuzz target api_request checks that on every input. Anything else, whitespace or
 * a presenter_cert included, takes the jansson path below.
 */
bool nhi_api_resolve_body_simple(const char *body, size_t len, size_t *tok_off, size_t *tok_len)
{
	static const char head[] = "{\"token\":\"";
	const size_t hn = sizeof(head) - 1;
	size_t i;
	char ch;

	if (len < hn + 3 || memcmp(body, head, hn) != 0 || body[len - 2] != '"' || body[len - 1] != '}')
		return false;
	for (i = hn; i < len - 2; i++) {
		ch = body[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' ||
		      ch == '-' || ch == '.'))
			return false;
	}
	*tok_off = hn;
	*tok_len = len - 2 - hn;
	return true;
}

nhi_err nhi_api_parse_resolve_req(const char *body, size_t len, size_t max_bytes, struct nhi_api_resolve_req *out)
{
	static const char *const members[] = {"token", "presenter_cert"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *tok, *pem;
	BIO *b = NULL;
	X509 *x = NULL;
	unsigned char *der = NULL;
	int n;
	size_t off, tlen;

	memset(out, 0, sizeof(*out));
	NHI_CHECK(len <= max_bytes, NHI_ERR_LIMIT, "request body is over the limit");
	if (nhi_api_resolve_body_simple(body, len, &off, &tlen)) {
		out->token_copy = malloc(tlen + 1);
		NHI_CHECK(out->token_copy != NULL, NHI_ERR_NOMEM, "out of memory");
		memcpy(out->token_copy, body + off, tlen);
		out->token_copy[tlen] = '\0';
		out->token = out->token_copy;
		out->token_len = tlen;
		rv = NHI_OK;
		goto out;
	}
	NHI_TRY(object_of(body, len, max_bytes, members, 2, &out->root));
	tok = json_object_get(out->root, "token");
	NHI_CHECK(json_is_string(tok) && json_string_length(tok) == strlen(json_string_value(tok)), NHI_ERR_FORMAT,
		  "'token' must be a string");
	out->token = json_string_value(tok);
	out->token_len = json_string_length(tok);
	pem = json_object_get(out->root, "presenter_cert");
	if (pem != NULL) {
		NHI_CHECK(json_is_string(pem) && json_string_length(pem) <= NHI_CERT_MAX_BYTES, NHI_ERR_FORMAT,
			  "'presenter_cert' must be a PEM certificate");
		b = BIO_new_mem_buf(json_string_value(pem), (int)json_string_length(pem));
		x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
		ERR_clear_error();
		NHI_CHECK(x != NULL, NHI_ERR_FORMAT, "'presenter_cert' must be a PEM certificate");
		n = i2d_X509(x, &der);
		NHI_CHECK(n > 0, NHI_ERR_FORMAT, "'presenter_cert' cannot be encoded");
		NHI_TRY(nhi_buf_append(&out->presenter_der, der, (size_t)n));
	}
	rv = NHI_OK;
out:
	OPENSSL_free(der);
	X509_free(x);
	BIO_free(b);
	if (rv != NHI_OK)
		nhi_api_resolve_req_free(out);
	return rv;
}

void nhi_api_resolve_req_free(struct nhi_api_resolve_req *r)
{
	json_decref(r->root);
	free(r->token_copy);
	nhi_buf_free(&r->presenter_der);
	memset(r, 0, sizeof(*r));
}

/* a string member without NUL bytes, 1..max bytes, or NULL */
static const char *string_member(json_t *j, const char *name, size_t max)
{
	json_t *v = json_object_get(j, name);
	const char *s = json_string_value(v);

	if (s == NULL || json_string_length(v) != strlen(s) || s[0] == '\0' || strlen(s) > max)
		return NULL;
	return s;
}

/* "key": a purpose name as in the config (the route says whether it exists) */
static nhi_err key_member(json_t *j, char out[33])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *k = string_member(j, "key", 32);

	NHI_CHECK(k != NULL && strspn(k, "abcdefghijklmnopqrstuvwxyz0123456789_-") == strlen(k), NHI_ERR_FORMAT,
		  "'key' must name a signing key purpose (1-32 of [a-z0-9_-])");
	memcpy(out, k, strlen(k) + 1);
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err b64_member(json_t *j, const char *name, bool allow_empty, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *v = json_object_get(j, name);
	const char *s = json_string_value(v);

	NHI_CHECK(s != NULL && json_string_length(v) == strlen(s) && (allow_empty || s[0] != '\0'), NHI_ERR_FORMAT,
		  "'%s' must be a base64url string (no padding)", name);
	rv = nhi_b64url_decode(s, strlen(s), out);
	if (rv != NHI_OK)
		nhi_err_set(NHI_ERR_FORMAT, "'%s' must be a base64url string (no padding): %s", name, nhi_err_detail());
out:
	return rv;
}

nhi_err nhi_api_parse_sign_req(const char *body, size_t len, size_t max_bytes, struct nhi_api_sign_req *out)
{
	static const char *const members[] = {"key", "payload"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *j = NULL;

	memset(out, 0, sizeof(*out));
	NHI_TRY(object_of(body, len, max_bytes, members, 2, &j));
	NHI_TRY(key_member(j, out->key));
	NHI_TRY(b64_member(j, "payload", true, &out->payload));
	rv = NHI_OK;
out:
	json_decref(j);
	if (rv != NHI_OK)
		nhi_api_sign_req_free(out);
	return rv;
}

void nhi_api_sign_req_free(struct nhi_api_sign_req *r)
{
	nhi_buf_free(&r->payload);
	memset(r, 0, sizeof(*r));
}

nhi_err nhi_api_parse_verify_req(const char *body, size_t len, size_t max_bytes, struct nhi_api_verify_req *out)
{
	static const char *const members[] = {"key", "payload", "sig", "kid"};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf sig = {0};
	json_t *j = NULL;
	const char *kid;

	memset(out, 0, sizeof(*out));
	NHI_TRY(object_of(body, len, max_bytes, members, 4, &j));
	NHI_TRY(key_member(j, out->key));
	NHI_TRY(b64_member(j, "payload", true, &out->payload));
	NHI_TRY(b64_member(j, "sig", false, &sig));
	NHI_CHECK(sig.len == 64, NHI_ERR_FORMAT, "'sig' must be an ES256 signature: 64 bytes R||S, base64url (got %zu bytes)",
		  sig.len);
	memcpy(out->sig, sig.data, 64);
	if (json_object_get(j, "kid") != NULL) {
		kid = string_member(j, "kid", 43);
		NHI_CHECK(kid != NULL && strlen(kid) == 43 &&
				  strspn(kid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == 43,
			  NHI_ERR_FORMAT, "'kid' must be an RFC 7638 thumbprint (43 base64url characters)");
		memcpy(out->kid, kid, 44);
	}
	rv = NHI_OK;
out:
	nhi_buf_free(&sig);
	json_decref(j);
	if (rv != NHI_OK)
		nhi_api_verify_req_free(out);
	return rv;
}

void nhi_api_verify_req_free(struct nhi_api_verify_req *r)
{
	nhi_buf_free(&r->payload);
	memset(r, 0, sizeof(*r));
}

nhi_err nhi_api_parse_manifest_req(const char *body, size_t len, size_t max_bytes, struct nhi_api_manifest_req *out)
{
	static const char *const members[] = {"manifest", "files"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *m;

	memset(out, 0, sizeof(*out));
	NHI_TRY(object_of(body, len, max_bytes, members, 2, &out->root));
	m = json_object_get(out->root, "manifest");
	NHI_CHECK(json_is_object(m), NHI_ERR_FORMAT,
		  "'manifest' must be the signed manifest document (a JSON object, as `nhictl manifest sign` writes it)");
	out->files = json_object_get(out->root, "files");
	NHI_CHECK(json_is_array(out->files), NHI_ERR_FORMAT,
		  "'files' must be an array of {\"path\",\"size\",\"sha256\"} for the files the caller has");
	/* the signatures cover the base64url payload string, carried as is */
	out->manifest = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
	NHI_CHECK(out->manifest != NULL, NHI_ERR_NOMEM, "out of memory");
	out->manifest_len = strlen(out->manifest);
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_api_manifest_req_free(out);
	return rv;
}

void nhi_api_manifest_req_free(struct nhi_api_manifest_req *r)
{
	free(r->manifest);
	json_decref(r->root);
	memset(r, 0, sizeof(*r));
}
