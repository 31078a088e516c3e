/*
 * agent/client.c — the client object and nhid's API calls: one request, one
 * response, over the kept-alive connection (reconnecting once when the server had
 * closed it), each call bounded by io_timeout_ms.
 */
#include "agent_internal.h"

#include <jansson.h>
#include <mbedtls/platform_util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK_BYTES 4096
#define TOKEN_BODY_MAX_BYTES 512 /* {"aud":"<255 escaped bytes at most 6x>","ttl":N} fits easily */

nhi_agent_err nhi_agent_client_new(const struct nhi_agent_config *cfg, struct nhi_agent_client **out)
{
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	struct nhi_agent_client *c = NULL;

	nhi_agent_clear_error();
	AG_CHECK(out != NULL, NHI_AGENT_E_ARG, "nhi_agent_client_new: no output pointer");
	*out = NULL;
	c = calloc(1, sizeof(*c));
	AG_CHECK(c != NULL, NHI_AGENT_E_NOMEM, "out of memory for the agent client");
	rv = nhi_agent_tls_init(c, cfg);
	if (rv != NHI_AGENT_OK)
		goto out;
	*out = c;
	c = NULL;
	rv = NHI_AGENT_OK;
out:
	nhi_agent_client_free(c);
	return rv;
}

void nhi_agent_client_free(struct nhi_agent_client *c)
{
	if (c == NULL)
		return;
	nhi_agent_tls_free(c);
	mbedtls_platform_zeroize(c, sizeof(*c));
	free(c);
}

int nhi_agent_http_status(const struct nhi_agent_client *c)
{
	return c != NULL ? c->last_status : 0;
}

unsigned nhi_agent_connections(const struct nhi_agent_client *c)
{
	return c != NULL ? c->connections : 0;
}

static nhi_agent_err read_response(struct nhi_agent_client *c, struct nhi_agent_resp *r, uint8_t *buf, size_t size)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	bool eof, clean;
	size_t n;

	while (!r->complete) {
		AG_TRY(nhi_agent_conn_read(c, buf, size, &n, &eof, &clean));
		if (eof) {
			AG_TRY(nhi_agent_resp_eof(r, clean));
			break;
		}
		AG_TRY(nhi_agent_resp_feed(r, buf, n));
	}
	/* decrypted bytes beyond the response: out of step, do not reuse the connection */
	if (mbedtls_ssl_get_bytes_avail(&c->ssl) > 0)
		r->keep_alive = false;
	rv = NHI_AGENT_OK;
out:
	return rv;
}

/*
 * Send one request and read its complete response into r (any status). On a
 * reused connection that turns out to be closed — the write fails, or the server
 * closes before sending a single byte — we reconnect and send once more: the
 * server cannot have acted on a request it never answered on a connection it was
 * closing (RFC 9112 §9.3.1 allows this retry for idempotent requests; a repeated
 * token request only issues another short-lived token).
 */
static nhi_agent_err request(struct nhi_agent_client *c, const char *method, const char *path, const char *body,
			     size_t body_len, struct nhi_agent_resp *r)
{
	nhi_agent_err rv = NHI_AGENT_E_INTERNAL;
	char *req = NULL;
	size_t req_len = 0;
	uint8_t *buf = NULL;
	bool reused;
	int attempt;

	c->deadline_ms = nhi_agent_now_ms() + c->io_timeout_ms;
	nhi_agent_resp_init(r, c->response_max_bytes);
	AG_TRY(nhi_agent_format_request(method, path, c->host_header, body, body_len, &req, &req_len));
	buf = malloc(READ_CHUNK_BYTES);
	AG_CHECK(buf != NULL, NHI_AGENT_E_NOMEM, "out of memory for the read buffer");
	for (attempt = 0;; attempt++) {
		nhi_agent_resp_clear(r);
		nhi_agent_resp_init(r, c->response_max_bytes);
		if (c->connected && nhi_agent_conn_stale(c))
			nhi_agent_conn_close(c, false);
		reused = c->connected;
		if (!reused)
			AG_TRY(nhi_agent_conn_open(c));
		rv = nhi_agent_conn_write(c, req, req_len);
		if (rv == NHI_AGENT_OK)
			rv = read_response(c, r, buf, READ_CHUNK_BYTES);
		if (rv == NHI_AGENT_OK)
			break;
		nhi_agent_conn_close(c, false);
		if (!(reused && attempt == 0 && !r->started && rv != NHI_AGENT_E_TIMEOUT))
			goto out;
	}
	c->last_status = r->status;
	if (!r->keep_alive)
		nhi_agent_conn_close(c, true);
	rv = NHI_AGENT_OK;
out:
	if (req != NULL) {
		mbedtls_platform_zeroize(req, req_len);
		free(req);
	}
	if (buf != NULL) {
		mbedtls_platform_zeroize(buf, READ_CHUNK_BYTES);
		free(buf);
	}
	if (rv != NHI_AGENT_OK)
		nhi_agent_resp_clear(r);
	return rv;
}

nhi_agent_err nhi_agent_health(struct nhi_agent_client *c)
{
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	struct nhi_agent_resp r;

	nhi_agent_resp_init(&r, 0);
	nhi_agent_clear_error();
	AG_CHECK(c != NULL, NHI_AGENT_E_ARG, "no client");
	AG_TRY(request(c, "GET", "/v1/health", NULL, 0, &r));
	AG_TRY(nhi_agent_resp_check_status(&r));
	AG_TRY(nhi_agent_json_health(r.body, r.body_len));
	rv = NHI_AGENT_OK;
out:
	nhi_agent_resp_clear(&r);
	return rv;
}

static bool printable(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			break;
	return i == len;
}

nhi_agent_err nhi_agent_get_token(struct nhi_agent_client *c, const char *aud, unsigned ttl_s, char *token,
				  size_t token_size, long long *expires_at)
{
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	struct nhi_agent_resp r;
	json_t *j = NULL;
	char body[TOKEN_BODY_MAX_BYTES];
	size_t alen = 0, n = 0;

	nhi_agent_resp_init(&r, 0);
	nhi_agent_clear_error();
	if (token != NULL && token_size > 0)
		token[0] = '\0';
	AG_CHECK(c != NULL && token != NULL && token_size > 0, NHI_AGENT_E_ARG,
		 "nhi_agent_get_token: no client or no token buffer");
	AG_CHECK(aud != NULL && (alen = strnlen(aud, NHI_AGENT_AUD_MAX_BYTES + 1)) > 0 &&
			 alen <= NHI_AGENT_AUD_MAX_BYTES && printable(aud, alen),
		 NHI_AGENT_E_ARG, "audience must be 1..%d printable characters (--aud NAME)", NHI_AGENT_AUD_MAX_BYTES);
	AG_CHECK(ttl_s <= NHI_AGENT_TTL_MAX_S, NHI_AGENT_E_ARG, "ttl %u s is over %d s (nhid caps it lower still)",
		 ttl_s, NHI_AGENT_TTL_MAX_S);
	j = json_object();
	AG_CHECK(j != NULL && json_object_set_new(j, "aud", json_stringn(aud, alen)) == 0, NHI_AGENT_E_ARG,
		 "audience is not valid UTF-8");
	if (ttl_s > 0)
		AG_CHECK(json_object_set_new(j, "ttl", json_integer(ttl_s)) == 0, NHI_AGENT_E_NOMEM, "out of memory");
	n = json_dumpb(j, body, sizeof(body), JSON_COMPACT | JSON_PRESERVE_ORDER);
	AG_CHECK(n > 0 && n <= sizeof(body), NHI_AGENT_E_ARG, "token request body over %d bytes", TOKEN_BODY_MAX_BYTES);
	AG_TRY(request(c, "POST", "/v1/tokens", body, n, &r));
	AG_TRY(nhi_agent_resp_check_status(&r));
	AG_TRY(nhi_agent_json_token(r.body, r.body_len, token, token_size, expires_at));
	rv = NHI_AGENT_OK;
out:
	json_decref(j);
	nhi_agent_resp_clear(&r);
	return rv;
}

nhi_agent_err nhi_agent_resolve(struct nhi_agent_client *c, const char *token, char **json_out)
{
	static const char *const required[] = {"agent", "claims", NULL};
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	struct nhi_agent_resp r;
	char *body = NULL;
	size_t tlen = 0, cap = 0;
	int n;

	nhi_agent_resp_init(&r, 0);
	nhi_agent_clear_error();
	if (json_out != NULL)
		*json_out = NULL;
	AG_CHECK(c != NULL && json_out != NULL, NHI_AGENT_E_ARG, "nhi_agent_resolve: no client or no output pointer");
	AG_CHECK(token != NULL && (tlen = strnlen(token, NHI_AGENT_TOKEN_MAX_BYTES)) < NHI_AGENT_TOKEN_MAX_BYTES,
		 NHI_AGENT_E_ARG, "token is missing or over %d bytes", NHI_AGENT_TOKEN_MAX_BYTES - 1);
	/* the shape check also makes the token JSON-safe as is: no copy of it goes through jansson */
	AG_CHECK(nhi_agent_jws_shape(token, tlen), NHI_AGENT_E_ARG,
		 "the token to resolve is not a compact JWS (three base64url parts separated by dots)");
	cap = tlen + 16;
	body = malloc(cap);
	AG_CHECK(body != NULL, NHI_AGENT_E_NOMEM, "out of memory");
	n = snprintf(body, cap, "{\"token\":\"%s\"}", token);
	AG_CHECK(n > 0 && (size_t)n < cap, NHI_AGENT_E_INTERNAL, "resolve body formatting");
	AG_TRY(request(c, "POST", "/v1/resolve", body, (size_t)n, &r));
	AG_TRY(nhi_agent_resp_check_status(&r));
	AG_TRY(nhi_agent_json_object(r.body, r.body_len, required, "oo", json_out));
	rv = NHI_AGENT_OK;
out:
	if (body != NULL) {
		mbedtls_platform_zeroize(body, cap);
		free(body);
	}
	nhi_agent_resp_clear(&r);
	return rv;
}

nhi_agent_err nhi_agent_jwks(struct nhi_agent_client *c, char **json_out)
{
	static const char *const required[] = {"keys", NULL};
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	struct nhi_agent_resp r;

	nhi_agent_resp_init(&r, 0);
	nhi_agent_clear_error();
	if (json_out != NULL)
		*json_out = NULL;
	AG_CHECK(c != NULL && json_out != NULL, NHI_AGENT_E_ARG, "nhi_agent_jwks: no client or no output pointer");
	AG_TRY(request(c, "GET", "/v1/jwks", NULL, 0, &r));
	AG_TRY(nhi_agent_resp_check_status(&r));
	AG_TRY(nhi_agent_json_object(r.body, r.body_len, required, "a", json_out));
	rv = NHI_AGENT_OK;
out:
	nhi_agent_resp_clear(&r);
	return rv;
}
