/*
 * agent/response.c — one HTTP/1.x response from nhid, parsed by http-parser
 * (nodejs http-parser 2.9), and the JSON bodies of nhid's answers (jansson).
 * Everything here handles bytes chosen by the peer: every size is capped, and
 * text from the server is sanitized before it reaches a message.
 */
#include "agent_internal.h"

#include <jansson.h>
#include <mbedtls/platform_util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct nhi_agent_resp *resp_of(http_parser *p)
{
	return p->data;
}

static int fail(http_parser *p, nhi_agent_err code)
{
	resp_of(p)->failure = code;
	/* non-zero stops http_parser_execute(); from on_headers_complete only values other
	 * than 1 and 2 do (those mean "skip the body"), so -1 everywhere */
	return -1;
}

static int count_header_bytes(http_parser *p, size_t len)
{
	struct nhi_agent_resp *r = resp_of(p);
	int rc = 0;

	r->header_bytes += len;
	if (r->header_bytes > NHI_AGENT_HEADER_MAX_BYTES) {
		nhi_agent_set_error(NHI_AGENT_E_TOO_LARGE,
				    "response headers exceed %d bytes: not an nhid answer, or a hostile server",
				    NHI_AGENT_HEADER_MAX_BYTES);
		rc = fail(p, NHI_AGENT_E_TOO_LARGE);
	}
	return rc;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
	(void)at;
	return count_header_bytes(p, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct nhi_agent_resp *r = resp_of(p);
	int rc;

	(void)at;
	if (!r->in_field && ++r->header_count > NHI_AGENT_HEADER_MAX_COUNT) {
		nhi_agent_set_error(NHI_AGENT_E_TOO_LARGE, "response has more than %d header fields",
				    NHI_AGENT_HEADER_MAX_COUNT);
		rc = fail(p, NHI_AGENT_E_TOO_LARGE);
	} else {
		rc = count_header_bytes(p, len);
	}
	r->in_field = true;
	return rc;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	(void)at;
	resp_of(p)->in_field = false;
	return count_header_bytes(p, len);
}

static int on_headers_complete(http_parser *p)
{
	struct nhi_agent_resp *r = resp_of(p);
	int rc = 0;

	r->status = (int)p->status_code;
	if (r->status < 200 || r->status > 599) {
		/* we never send Expect: an interim 1xx answer is not something nhid sends */
		nhi_agent_set_error(NHI_AGENT_E_PROTOCOL, "server answered with HTTP status %d, expected 2xx-5xx",
				    r->status);
		rc = fail(p, NHI_AGENT_E_PROTOCOL);
	} else if (p->content_length != ULLONG_MAX && p->content_length > r->body_max) {
		/* refuse a declared oversize body before reading it (ULLONG_MAX = no Content-Length) */
		nhi_agent_set_error(NHI_AGENT_E_TOO_LARGE,
				    "response body of %llu bytes is over the %zu-byte limit (response_max_bytes)",
				    (unsigned long long)p->content_length, r->body_max);
		rc = fail(p, NHI_AGENT_E_TOO_LARGE);
	}
	/* RFC 9112 §6.3: no Content-Length, not chunked, a status that has a body: ends at close */
	r->eof_delimited = !(p->flags & F_CHUNKED) && p->content_length == ULLONG_MAX && r->status != 204 &&
			   r->status != 304;
	return rc;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct nhi_agent_resp *r = resp_of(p);
	size_t cap;
	uint8_t *nb;
	int rc = -1;

	if (len > r->body_max - r->body_len) {
		nhi_agent_set_error(NHI_AGENT_E_TOO_LARGE, "response body is over the %zu-byte limit (response_max_bytes)",
				    r->body_max);
		rc = fail(p, NHI_AGENT_E_TOO_LARGE);
		goto out;
	}
	if (r->body_len + len + 1 > r->body_cap) {
		cap = r->body_cap ? r->body_cap : 1024;
		while (cap < r->body_len + len + 1)
			cap *= 2;
		if (cap > r->body_max + 1)
			cap = r->body_max + 1;
		/* grow by copy so the old buffer (which may hold a token) can be wiped */
		nb = malloc(cap);
		if (nb == NULL) {
			nhi_agent_set_error(NHI_AGENT_E_NOMEM, "out of memory for a %zu-byte response body", cap);
			rc = fail(p, NHI_AGENT_E_NOMEM);
			goto out;
		}
		if (r->body != NULL) {
			memcpy(nb, r->body, r->body_len);
			mbedtls_platform_zeroize(r->body, r->body_cap);
			free(r->body);
		}
		r->body = nb;
		r->body_cap = cap;
	}
	memcpy(r->body + r->body_len, at, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	rc = 0;
out:
	return rc;
}

static int on_message_complete(http_parser *p)
{
	struct nhi_agent_resp *r = resp_of(p);

	r->complete = true;
	r->keep_alive = http_should_keep_alive(p) != 0;
	/* one request, one response: stop here, anything after it is not ours to parse */
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings settings = {
	.on_status = on_status,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

void nhi_agent_resp_init(struct nhi_agent_resp *r, size_t body_max)
{
	memset(r, 0, sizeof(*r));
	http_parser_init(&r->parser, HTTP_RESPONSE);
	r->parser.data = r;
	r->body_max = body_max;
}

void nhi_agent_resp_clear(struct nhi_agent_resp *r)
{
	if (r->body != NULL) {
		mbedtls_platform_zeroize(r->body, r->body_cap);
		free(r->body);
	}
	r->body = NULL;
	r->body_len = r->body_cap = 0;
}

static nhi_agent_err parser_error(struct nhi_agent_resp *r)
{
	enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
	nhi_agent_err rv = r->failure; /* a callback that stopped the parser already wrote the detail */

	if (rv == NHI_AGENT_OK)
		rv = nhi_agent_set_error(NHI_AGENT_E_PROTOCOL, "malformed HTTP response from the server: %s (%s)",
					 http_errno_description(e), http_errno_name(e));
	return rv;
}

nhi_agent_err nhi_agent_resp_feed(struct nhi_agent_resp *r, const uint8_t *data, size_t len)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	size_t n;
	enum http_errno e;

	if (len == 0) {
		rv = NHI_AGENT_OK;
		goto out;
	}
	r->started = true;
	if (r->complete) {
		/* more bytes after the response: the stream is out of step; never reuse it */
		r->keep_alive = false;
		rv = NHI_AGENT_OK;
		goto out;
	}
	n = http_parser_execute(&r->parser, &settings, (const char *)data, len);
	e = HTTP_PARSER_ERRNO(&r->parser);
	if (r->complete && (e == HPE_OK || e == HPE_PAUSED)) {
		if (n < len)
			r->keep_alive = false;
		rv = NHI_AGENT_OK;
		goto out;
	}
	if (e != HPE_OK) {
		rv = parser_error(r);
		goto out;
	}
	AG_CHECK(n == len, NHI_AGENT_E_PROTOCOL, "HTTP parser stopped after %zu of %zu bytes", n, len);
	rv = NHI_AGENT_OK;
out:
	return rv;
}

nhi_agent_err nhi_agent_resp_eof(struct nhi_agent_resp *r, bool clean)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	enum http_errno e;

	r->keep_alive = false;
	if (r->complete) {
		rv = NHI_AGENT_OK;
		goto out;
	}
	AG_CHECK(r->started, NHI_AGENT_E_PROTOCOL, "the server closed the connection without answering");
	/* RFC 9112 §6.3 item 8: such a body ends with the connection — only trust a TLS close_notify */
	AG_CHECK(clean || !r->eof_delimited, NHI_AGENT_E_PROTOCOL,
		 "the server closed the connection without TLS close_notify before the response was "
		 "delimited: it may be truncated");
	(void)http_parser_execute(&r->parser, &settings, NULL, 0);
	e = HTTP_PARSER_ERRNO(&r->parser);
	if (e != HPE_OK && e != HPE_PAUSED) {
		rv = parser_error(r);
		goto out;
	}
	AG_CHECK(r->complete, NHI_AGENT_E_PROTOCOL,
		 "the server closed the connection in the middle of the response (after %zu body bytes)",
		 r->body_len);
	r->keep_alive = false;
	rv = NHI_AGENT_OK;
out:
	return rv;
}

/* ---- JSON ---- */

static nhi_agent_err load_object(const uint8_t *body, size_t len, json_t **out)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	json_error_t jerr;
	json_t *j = NULL;
	char where[96];

	AG_CHECK(body != NULL && len > 0, NHI_AGENT_E_PROTOCOL, "the server's answer has an empty body, expected JSON");
	j = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL) {
		nhi_agent_sanitize(where, sizeof(where), jerr.text, strnlen(jerr.text, sizeof(jerr.text)), 80);
		rv = nhi_agent_set_error(NHI_AGENT_E_PROTOCOL, "the server's answer is not JSON: %s (at byte %d)",
					 where, jerr.position);
		goto out;
	}
	AG_CHECK(json_is_object(j), NHI_AGENT_E_PROTOCOL, "the server's answer is JSON but not an object");
	*out = j;
	j = NULL;
	rv = NHI_AGENT_OK;
out:
	json_decref(j);
	return rv;
}

nhi_agent_err nhi_agent_resp_check_status(const struct nhi_agent_resp *r)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	json_t *j = NULL, *e, *d;
	json_error_t jerr;
	char code[96], det[320];

	AG_CHECK(r->complete, NHI_AGENT_E_PROTOCOL, "incomplete response");
	if (r->status == 200) {
		rv = NHI_AGENT_OK;
		goto out;
	}
	AG_CHECK(r->status >= 400 && r->status <= 599, NHI_AGENT_E_PROTOCOL,
		 "the server answered HTTP %d where nhid answers 200 or an error: is this an nhid URL?", r->status);
	code[0] = det[0] = '\0';
	if (r->body != NULL && r->body_len > 0)
		j = json_loadb((const char *)r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
	e = json_is_object(j) ? json_object_get(j, "error") : NULL;
	d = json_is_object(j) ? json_object_get(j, "detail") : NULL;
	if (json_is_string(e)) {
		nhi_agent_sanitize(code, sizeof(code), json_string_value(e), json_string_length(e), 64);
		if (json_is_string(d))
			nhi_agent_sanitize(det, sizeof(det), json_string_value(d), json_string_length(d), 240);
		rv = nhi_agent_set_error(NHI_AGENT_E_REFUSED, "server refused the request: HTTP %d %s%s%s", r->status,
					 code, det[0] ? ": " : "", det);
	} else {
		if (r->body != NULL)
			nhi_agent_sanitize(det, sizeof(det), (const char *)r->body, r->body_len, 120);
		rv = nhi_agent_set_error(NHI_AGENT_E_REFUSED, "server refused the request: HTTP %d (no JSON error%s%s)",
					 r->status, det[0] ? "; body: " : "", det);
	}
out:
	json_decref(j);
	return rv;
}

nhi_agent_err nhi_agent_json_health(const uint8_t *body, size_t len)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	json_t *j = NULL, *s;
	char got[64];

	AG_TRY(load_object(body, len, &j));
	s = json_object_get(j, "status");
	AG_CHECK(json_is_string(s), NHI_AGENT_E_PROTOCOL, "health answer has no \"status\" string");
	if (strcmp(json_string_value(s), "ok") != 0) {
		nhi_agent_sanitize(got, sizeof(got), json_string_value(s), json_string_length(s), 40);
		rv = nhi_agent_set_error(NHI_AGENT_E_REFUSED, "server reports status '%s', not ok", got);
		goto out;
	}
	rv = NHI_AGENT_OK;
out:
	json_decref(j);
	return rv;
}

/* RFC 7515 §7.1: BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(signature) */
bool nhi_agent_jws_shape(const char *s, size_t len)
{
	size_t i, dots = 0, seg = 0;
	bool ok = true;

	for (i = 0; i < len && ok; i++) {
		char ch = s[i];

		if (ch == '.') {
			ok = seg > 0;
			dots++;
			seg = 0;
		} else {
			ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
			     ch == '-' || ch == '_';
			seg++;
		}
	}
	return ok && dots == 2 && seg > 0;
}

nhi_agent_err nhi_agent_json_token(const uint8_t *body, size_t len, char *token, size_t token_size,
				   long long *expires_at)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	json_t *j = NULL, *t, *x;
	size_t tlen;

	if (token != NULL && token_size > 0)
		token[0] = '\0';
	AG_CHECK(token != NULL && token_size > 0, NHI_AGENT_E_ARG, "no output buffer for the token");
	AG_TRY(load_object(body, len, &j));
	t = json_object_get(j, "token");
	x = json_object_get(j, "expires_at");
	AG_CHECK(json_is_string(t), NHI_AGENT_E_PROTOCOL, "token answer has no \"token\" string");
	AG_CHECK(json_is_integer(x) && json_integer_value(x) > 0, NHI_AGENT_E_PROTOCOL,
		 "token answer has no positive integer \"expires_at\"");
	tlen = json_string_length(t);
	AG_CHECK(tlen < NHI_AGENT_TOKEN_MAX_BYTES, NHI_AGENT_E_TOO_LARGE,
		 "the server's token is %zu bytes, over the %d-byte limit", tlen, NHI_AGENT_TOKEN_MAX_BYTES - 1);
	AG_CHECK(nhi_agent_jws_shape(json_string_value(t), tlen), NHI_AGENT_E_PROTOCOL,
		 "the server's \"token\" is not a compact JWS (three base64url parts)");
	AG_CHECK(tlen < token_size, NHI_AGENT_E_SPACE,
		 "token of %zu bytes does not fit the %zu-byte buffer: pass NHI_AGENT_TOKEN_MAX_BYTES", tlen,
		 token_size);
	memcpy(token, json_string_value(t), tlen + 1);
	if (expires_at != NULL)
		*expires_at = (long long)json_integer_value(x);
	rv = NHI_AGENT_OK;
out:
	json_decref(j);
	return rv;
}

nhi_agent_err nhi_agent_json_object(const uint8_t *body, size_t len, const char *const *required,
				    const char *kinds, char **out)
{
	nhi_agent_err rv = NHI_AGENT_E_PROTOCOL;
	json_t *j = NULL, *m;
	char *s = NULL;
	size_t i, n;

	AG_CHECK(out != NULL, NHI_AGENT_E_ARG, "no output pointer for the JSON answer");
	*out = NULL;
	AG_TRY(load_object(body, len, &j));
	for (i = 0; required != NULL && required[i] != NULL; i++) {
		m = json_object_get(j, required[i]);
		AG_CHECK(kinds[i] == 'o' ? json_is_object(m) : json_is_array(m), NHI_AGENT_E_PROTOCOL,
			 "the server's answer has no \"%s\" %s", required[i], kinds[i] == 'o' ? "object" : "array");
	}
	/* dump into our own malloc'ed buffer so the caller can free() it whatever jansson's allocator is */
	n = json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_PRESERVE_ORDER);
	AG_CHECK(n > 0, NHI_AGENT_E_PROTOCOL, "cannot serialize the server's answer");
	s = malloc(n + 1);
	AG_CHECK(s != NULL, NHI_AGENT_E_NOMEM, "out of memory for a %zu-byte answer", n);
	AG_CHECK(json_dumpb(j, s, n, JSON_COMPACT | JSON_PRESERVE_ORDER) == n, NHI_AGENT_E_INTERNAL,
		 "JSON dump changed size");
	s[n] = '\0';
	*out = s;
	s = NULL;
	rv = NHI_AGENT_OK;
out:
	free(s);
	json_decref(j);
	return rv;
}
