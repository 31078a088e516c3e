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
	{"/v1/trust-bundle", "GET", NHI_ROUTE_TRUST_BUNDLE},
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

nhi_err nhi_api_parse_resolve_req(const char *body, size_t len, size_t max_bytes, struct nhi_api_resolve_req *out)
{
	static const char *const members[] = {"token", "presenter_cert"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *tok, *pem;
	BIO *b = NULL;
	X509 *x = NULL;
	unsigned char *der = NULL;
	int n;

	memset(out, 0, sizeof(*out));
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
	nhi_buf_free(&r->presenter_der);
	memset(r, 0, sizeof(*r));
}
