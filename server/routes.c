/*
 * server/routes.c — the HTTP/1.1 JSON API (docs/api.md). evhttp parses HTTP; this
 * file routes, parses bodies with jansson (duplicate keys refused), applies the
 * policy, audits, and answers. Every error is {"error":"code","detail":"..."}.
 */
#include "server_internal.h"
#include "../common/jsonw.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct ctx {
	struct nhi_server *s;
	struct nhi_worker *w;
	struct evhttp_request *req;
	struct nhi_conn *conn;
	struct nhi_trust *trust; /* verifier, JWKS and revocations for this request */
	enum nhi_route route;
	struct timespec t0;
	int status;
};

static const char *reason_phrase(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 422: return "Unprocessable Content";
	case 413: return "Payload Too Large";
	case 431: return "Request Header Fields Too Large";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	default: return status >= 500 ? "Internal Server Error" : "Error";
	}
}

/* every error body has the same two members; a NULL detail becomes "" */
static json_t *error_body(const char *code, const char *detail)
{
	return json_pack("{s:s, s:s}", "error", code, "detail", detail ? detail : "");
}

/* one place that answers: headers (no caching, connection policy), body, metrics.
 * `b` (may be NULL: empty body) is the caller's and may be freed after; `s` NULL:
 * not counted. */
static void send_buffer(struct nhi_server *s, struct evhttp_request *req, enum nhi_route route,
			const struct timespec *t0, bool close_conn, int status, const char *content_type,
			struct evbuffer *b)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evhttp_connection *evcon = evhttp_request_get_connection(req); /* NULL: the client left */
	struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;
	struct timespec t1;

	evhttp_add_header(h, "Content-Type", content_type);
	evhttp_add_header(h, "Cache-Control", "no-store");
	if (close_conn)
		evhttp_add_header(h, "Connection", "close");
	evhttp_send_reply(req, status, reason_phrase(status), b);
	if (bev != NULL)
		nhi_tls_write_now(bev);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (s != NULL) /* NULL: evhttp_send_error for a connection without its record (cannot happen) */
		nhi_metrics_observe(&s->metrics, route, status,
				    (unsigned long long)((t1.tv_sec - t0->tv_sec) * 1000000LL + (t1.tv_nsec - t0->tv_nsec) / 1000));
}

/* the compact text of a reply body (steals body); empty when there is none or it
 * cannot be encoded (out of memory, a detail that is not UTF-8) */
static struct nhi_buf body_text(json_t *body)
{
	struct nhi_buf b = {0};
	char *s = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

	if (s != NULL && nhi_buf_append(&b, s, strlen(s)) != NHI_OK)
		nhi_buf_reset(&b);
	free(s);
	json_decref(body);
	return b;
}

/* a JSON document already written: `text` (len bytes) and a newline */
static void send_text(struct nhi_server *s, struct evhttp_request *req, enum nhi_route route,
		      const struct timespec *t0, bool close_conn, int status, const char *text, size_t len)
{
	struct evbuffer *b = evbuffer_new();

	if (b != NULL && text != NULL) {
		evbuffer_add(b, text, len);
		evbuffer_add(b, "\n", 1);
	}
	send_buffer(s, req, route, t0, close_conn, status, "application/json", b);
	if (b != NULL)
		evbuffer_free(b);
}

static void send_json(struct nhi_server *s, struct evhttp_request *req, enum nhi_route route,
		      const struct timespec *t0, bool close_conn, int status, json_t *body)
{
	struct nhi_buf text = body_text(body);

	send_text(s, req, route, t0, close_conn, status, (const char *)text.data, text.len);
	nhi_buf_free(&text);
}

/*
 * What evhttp refuses before routing it answers with evhttp_send_error, whose body is
 * an HTML page: a request line or header it cannot parse (Content-Length with
 * Transfer-Encoding too), headers over header_max_bytes, a body over body_max_bytes
 * (declared, chunked, or announced with Expect: 100-continue), a method it does not
 * know. Every error of nhid's API is JSON, so nhid defines evhttp_send_error itself:
 * the executable's definition comes first in symbol lookup and libevent's own calls
 * go through its PLT (as with getpid in common/pid.c). The reply keeps what
 * libevent's did, HTTP/1.1 and Connection: close (after a refused request the stream
 * is not at a request boundary), and is JSON, no-store and counted (route "other").
 * Headers over the limit are 431 rather than libevent's 400: evhttp counts the header
 * bytes read so far (CRLFs excluded) in headers_size, plus what waits unparsed.
 */
void evhttp_send_error(struct evhttp_request *req, int error, const char *reason)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;
	struct nhi_conn *conn = bev != NULL ? nhi_tls_conn(bufferevent_openssl_get_ssl(bev)) : NULL;
	struct nhi_server *s = conn != NULL ? conn->srv : NULL;
	struct timespec t0;
	const char *code = "http_error", *detail = reason != NULL ? reason : reason_phrase(error);
	char text[160];

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (error == 400 && s != NULL && bev != NULL &&
	    req->headers_size + evbuffer_get_length(bufferevent_get_input(bev)) > s->cfg.header_max_bytes) {
		error = 431;
		code = "headers_too_large";
		snprintf(text, sizeof(text), "the request headers are over header_max_bytes (%zu)", s->cfg.header_max_bytes);
		detail = text;
	} else if (error == 400) {
		code = "bad_request";
		detail = "malformed HTTP request: request line (or one longer than header_max_bytes), a header, "
			 "Content-Length or Transfer-Encoding";
	} else if (error == 413) {
		code = "too_large";
		snprintf(text, sizeof(text), "request body is over the limit (body_max_bytes %zu)",
			 s != NULL ? s->cfg.body_max_bytes : 0);
		detail = text;
	} else if (error == 501) {
		code = "not_implemented";
		detail = "unknown HTTP method";
	} else if (error == 404) {
		code = "not_found";
	}
	if (req->major == 0 && req->minor == 0) { /* refused before the version was read */
		req->major = 1;
		req->minor = 1;
	}
	evhttp_clear_headers(evhttp_request_get_output_headers(req));
	send_json(s, req, NHI_ROUTE_OTHER, &t0, true, error, error_body(code, detail));
}

static bool closing(const struct ctx *c)
{
	return c->conn != NULL && c->conn->requests >= c->s->cfg.requests_per_connection;
}

static void reply(struct ctx *c, int status, json_t *body)
{
	c->status = status;
	send_json(c->s, c->req, c->route, &c->t0, closing(c), status, body);
}

/*
 * A response that must wait until its audit record is durable. The record goes to
 * the audit writer (group commit with every other request in flight); the reply
 * is sent from this worker's loop when the writer says it is on disk. If the
 * client went away meanwhile, libevent has detached the request and sending to it
 * only frees it. The connection record is not touched after this point.
 */
struct pending {
	struct nhi_server *s;
	struct evhttp_request *req;
	struct event *ev;
	enum nhi_route route;
	struct timespec t0;
	bool close_conn;
	int status;
	struct nhi_buf body; /* the reply, written before the record was submitted */
	nhi_err rv;
};

static void pending_fire(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;

	(void)fd;
	(void)what;
	if (p->rv == NHI_OK)
		send_text(p->s, p->req, p->route, &p->t0, p->close_conn, p->status, (const char *)p->body.data,
			  p->body.len);
	else
		send_json(p->s, p->req, p->route, &p->t0, true, 503,
			  error_body("audit_unavailable", "the audit log could not record the event"));
	nhi_wipe(p->body.data, p->body.cap); /* a token reply carries the token */
	nhi_buf_free(&p->body);
	event_free(p->ev);
	free(p);
}

/* audit writer thread: hand the outcome to the request's loop */
static void pending_done(void *arg, nhi_err rv, const char *detail)
{
	struct pending *p = arg;

	if (rv != NHI_OK)
		fprintf(stderr, "nhid: audit failed, response withheld: %s\n", detail ? detail : "");
	p->rv = rv;
	event_active(p->ev, 0, 0);
}

/*
 * The reply of `c` (status and `body`, a JSON text taken from the caller) waits for
 * its audit record: `kv` (n members: the flat form, nhi_audit_submit_kv) or
 * `fields` (the tree form, stolen). If the record cannot be submitted, a 503 goes
 * out instead, now.
 */
static void reply_pending(struct ctx *c, const char *event, json_t *fields, const struct nhi_audit_kv *kv, size_t n,
			  int status, struct nhi_buf *body)
{
	struct pending *p = calloc(1, sizeof(*p));
	struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);
	nhi_err e = NHI_ERR_NOMEM;

	if (p == NULL || (p->ev = event_new(c->w->base, -1, 0, pending_fire, p)) == NULL) {
		free(p);
		json_decref(fields);
		nhi_wipe(body->data, body->cap);
		nhi_buf_free(body);
		reply(c, 503, error_body("internal", "out of memory"));
	} else {
		p->s = c->s;
		p->req = c->req;
		p->route = c->route;
		p->t0 = c->t0;
		p->close_conn = closing(c);
		p->status = status;
		p->body = *body;
		memset(body, 0, sizeof(*body));
		c->status = status;
		if (evcon != NULL) {
			struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);

#ifdef NHI_TEST_BUILD
			/* test_server.sh makes the race of nhi_tls_hold_reads certain: a read
			 * callback already queued when the reply starts to wait */
			if (getenv("NHI_TEST_QUEUE_READ_BEFORE_HOLD") != NULL)
				bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
#endif
			nhi_tls_hold_reads(bev);
		}
		if (c->s->audit == NULL) {
			json_decref(fields);
			e = nhi_err_set(NHI_ERR_IO, "no audit log");
		} else if (kv != NULL) {
			e = nhi_audit_submit_kv(c->s->audit, event, kv, n, pending_done, p);
		} else {
			e = nhi_audit_submit(c->s->audit, event, fields, pending_done, p);
		}
		if (e != NHI_OK) {
			fprintf(stderr, "nhid: audit %s refused: %s\n", event, nhi_err_detail());
			p->rv = NHI_ERR_IO;
			pending_fire(-1, 0, p);
		}
	}
}

/*
 * The tree form. The record goes to the log whatever becomes of the body: a body
 * that cannot be encoded (out of memory, a detail that is not UTF-8) leaves the
 * reply's status with an empty body, as it always did, never the event unrecorded.
 */
static void reply_audited(struct ctx *c, const char *event, json_t *fields, int status, json_t *body)
{
	struct nhi_buf text = body_text(body);

	reply_pending(c, event, fields, NULL, 0, status, &text);
}

static void reply_error(struct ctx *c, int status, const char *code, const char *detail)
{
	reply(c, status, error_body(code, detail ? detail : ""));
}

/* the raw body, bounded; NULL and a 413 already sent when over the cap */
static const char *body_bytes(struct ctx *c, size_t *len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(c->req);

	*len = evbuffer_get_length(in);
	if (*len > c->s->cfg.body_max_bytes) {
		reply_error(c, 413, "too_large", "request body is over the limit");
		return NULL;
	}
	return *len ? (const char *)evbuffer_pullup(in, -1) : "";
}

/*
 * The calling agent: verified certificate -> URI SAN -> active record whose enrolled
 * thumbprint is this certificate's; on failure a 403 has been sent and audited.
 * The record is the connection's (borrowed until its next request): it is read
 * from the store once and kept while the store's snapshot is the same one
 * (snapshots are immutable, nhi_store_generation); its time window, the id match
 * and the revocation packages are checked again on every request.
 */
static const struct nhi_agent *caller(struct ctx *c)
{
	struct nhi_conn *conn = c->conn;
	SSL *ssl = bufferevent_openssl_get_ssl(evhttp_connection_get_bufferevent(evhttp_request_get_connection(c->req)));
	long long now = (long long)time(NULL);
	const struct nhi_agent *a = NULL;
	char hex[65];
	nhi_err e;

	nhi_tls_identify(conn, ssl, c->s->cfg.trust_domain);
	if (conn->identity_err != NHI_OK) {
		reply_error(c, 403, "unknown_agent", conn->identity_detail);
		return NULL;
	}
	/* the handshake checked these once; a resumed session or a kept-alive connection would not */
	if (now > conn->cert_not_after || now < conn->cert_not_before) {
		char t[32];

		nhi_time_rfc3339(now > conn->cert_not_after ? conn->cert_not_after : conn->cert_not_before, t, sizeof(t));
		nhi_hex(conn->cert_sha256, 32, hex);
		nhi_err_set(NHI_ERR_DENIED, "the client certificate %s %s: connect again with a valid one",
			    now > conn->cert_not_after ? "expired at" : "is not valid before", t);
		reply_audited(c, "agent_refused",
			      json_pack("{s:s, s:s, s:s, s:s}", "agent", conn->agent_id, "cert_sha256", hex, "route",
					evhttp_request_get_uri(c->req), "reason", nhi_err_detail()),
			      403,
			      error_body(now > conn->cert_not_after ? "certificate_expired" : "certificate_not_yet_valid",
					 nhi_err_detail()));
		return NULL;
	}
	if (conn->caller != NULL && conn->caller->store_generation == nhi_store_generation(c->s->store)) {
		e = nhi_agent_check(conn->caller, now);
	} else {
		nhi_agent_free(conn->caller);
		conn->caller = NULL;
		e = nhi_store_resolve_thumbprint(c->s->store, conn->cert_sha256, now, &conn->caller);
	}
	if (e == NHI_OK)
		a = conn->caller;
	if (a != NULL && strcmp(a->id, conn->agent_id) != 0) {
		a = NULL;
		e = nhi_err_set(NHI_ERR_DENIED, "certificate is enrolled for another agent");
	}
	/* a signed revocation package overrides the identity backup until the next one */
	if (a != NULL && (nhi_trust_agent_revoked(c->trust, a->id) || nhi_trust_cert_revoked(c->trust, conn->cert_sha256))) {
		e = nhi_err_set(NHI_ERR_DENIED, "agent %s%s is revoked by revocation package version %llu", a->id,
				nhi_trust_agent_revoked(c->trust, a->id) ? "" : " (this certificate)",
				(unsigned long long)c->trust->revocation_version);
		a = NULL;
	}
	if (a == NULL) {
		nhi_hex(conn->cert_sha256, 32, hex);
		reply_audited(c, "agent_refused",
			      json_pack("{s:s, s:s, s:s, s:s}", "agent", conn->agent_id, "cert_sha256", hex, "route",
					evhttp_request_get_uri(c->req), "reason", nhi_err_detail()),
			      403,
			      e == NHI_ERR_NOT_FOUND
				      ? error_body("not_enrolled", "this client certificate is not enrolled for any agent")
				      : error_body("agent_not_active", nhi_err_detail()));
		return NULL;
	}
	return a;
}

static void h_health(struct ctx *c)
{
	reply(c, 200, json_pack("{s:s}", "status", "ok"));
}

static void reply_bytes(struct ctx *c, const char *content_type, const void *data, size_t len)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL || evbuffer_add(b, data, len) != 0) {
		if (b != NULL)
			evbuffer_free(b);
		reply_error(c, 500, "internal", "out of memory");
		return;
	}
	c->status = 200;
	send_buffer(c->s, c->req, c->route, &c->t0, closing(c), 200, content_type, b);
	evbuffer_free(b);
}

/* the JWKS is serialised once per trust snapshot: sent as it is */
static void h_jwks(struct ctx *c)
{
	reply_bytes(c, "application/json", c->trust->jwks.data, c->trust->jwks.len);
}

/* the signed document byte for byte: verifiers check the signatures, not us */
static void h_trust_bundle(struct ctx *c)
{
	struct nhi_buf copy = {0};
	const struct nhi_buf *doc;
	nhi_err e = NHI_OK;
	bool off;

	/* copied under the lock: a trust-bundle update may swap the bundle meanwhile */
	pthread_mutex_lock(&c->s->bundle_mu);
	off = c->s->bundle == NULL;
	doc = off ? NULL : nhi_bundle_document(c->s->bundle);
	if (doc != NULL)
		e = nhi_buf_append(&copy, doc->data, doc->len);
	pthread_mutex_unlock(&c->s->bundle_mu);
	if (off)
		reply_error(c, 404, "no_trust_bundle", "updates are off on this server (no updates_dir): no trust bundle");
	else if (e != NHI_OK)
		reply_error(c, 500, "internal", "out of memory");
	else
		reply_bytes(c, "application/json", copy.data, copy.len);
	nhi_buf_free(&copy);
}

static void h_metrics(struct ctx *c)
{
	struct nhi_buf text = {0};

	if (nhi_metrics_render(c->s, &text) != NHI_OK)
		reply_error(c, 500, "internal", "metrics unavailable");
	else
		reply_bytes(c, "text/plain; version=0.0.4", text.data, text.len);
	nhi_buf_free(&text);
}

static void h_tokens(struct ctx *c)
{
	const struct nhi_agent *a = NULL;
	struct nhi_api_token_req q;
	struct nhi_token_request tr = {0};
	struct nhi_token_issued info;
	struct nhi_buf tok = {0};
	const char *body, *aud = q.aud;
	size_t len;
	char hex[65];

	if ((body = body_bytes(c, &len)) == NULL)
		goto out;
	if (nhi_api_parse_token_req(body, len, c->s->cfg.body_max_bytes, c->s->cfg.token_ttl_max_s, &q) != NHI_OK) {
		reply_error(c, 400, "bad_request", nhi_err_detail());
		goto out;
	}
	if ((a = caller(c)) == NULL)
		goto out;
	if (!nhi_agent_allows_audience(a, aud)) {
		reply_audited(c, "token_refused",
			      json_pack("{s:s, s:s, s:s}", "agent", a->id, "aud", aud, "reason", "audience_not_allowed"), 403,
			      error_body("audience_not_allowed", "this agent may not request tokens for that audience"));
		goto out;
	}
	tr.sub = a->id;
	tr.aud = aud;
	tr.roles = a->roles;
	tr.n_roles = a->n_roles;
	tr.cert_sha256 = c->conn->cert_sha256;
	tr.ttl_s = q.ttl_s;
	if (nhi_token_issue(nhi_trust_issuer(c->trust, (int64_t)time(NULL)), &tr, &tok, &info) != NHI_OK) {
		fprintf(stderr, "nhid: token issue failed: %s\n", nhi_err_detail());
		reply_error(c, 500, "internal", "token signing failed");
		goto out;
	}
	nhi_hex(c->conn->cert_sha256, 32, hex);
	{
		/* durable before the response; the record names the token, never carries it */
		const struct nhi_audit_kv rec[] = {
			{"sub", a->id, 0},	       {"aud", aud, 0}, {"jti", info.jti, 0}, {"kid", info.kid, 0},
			{"exp", NULL, info.exp}, {"cert_sha256", hex, 0},
		};
		struct nhi_buf reply_text = {0};
		/* room for it all at once: no realloc leaves a copy of the token behind */
		nhi_err room = nhi_buf_reserve(&reply_text, tok.len + 64);
		struct nhi_jsonw o;

		nhi_jsonw_begin(&o, &reply_text);
		nhi_jsonw_s(&o, "token", (const char *)tok.data);
		nhi_jsonw_i(&o, "expires_at", info.exp);
		if (nhi_jsonw_end(&o) != NHI_OK || room != NHI_OK)
			reply_error(c, 500, "internal", "out of memory");
		else
			reply_pending(c, "token_issued", NULL, rec, sizeof(rec) / sizeof(rec[0]), 200, &reply_text);
		nhi_wipe(reply_text.data, reply_text.cap); /* what is left if the reply failed */
		nhi_buf_free(&reply_text);
	}
out:
	nhi_wipe(tok.data, tok.len);
	nhi_buf_free(&tok);
}

static void jsonw_strings(struct nhi_jsonw *o, const char *name, const char *const *v, size_t n)
{
	size_t i;

	nhi_jsonw_open(o, name, true);
	for (i = 0; i < n; i++)
		nhi_jsonw_elem_s(o, v[i]);
	nhi_jsonw_close(o, true);
}

/*
 * As the jansson reply tree did. The server does not trust the stored text: only
 * nhictl checks it, when it builds a backup, and a signed image from another builder
 * may hold anything, such as text that would close the object and add members.
 */
char *nhi_routes_attributes_text(const char *stored)
{
	json_t *v = stored != NULL ? json_loads(stored, 0, NULL) : NULL;
	char *s = json_is_object(v) ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : strdup("{}");

	json_decref(v);
	return s;
}

/*
 * Written with common/jsonw.h: the same members in the same order as the jansson tree
 * this replaced, strings escaped to ASCII as in the token reply, the attributes as
 * nhi_routes_attributes_text() gives them.
 */
nhi_err nhi_routes_resolve_text(const struct nhi_agent *a, const struct nhi_token_claims *cl, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_jsonw o;
	char *attrs = nhi_routes_attributes_text(a->attributes);

	NHI_CHECK(attrs != NULL, NHI_ERR_NOMEM, "out of memory");
	nhi_jsonw_begin(&o, out);
	nhi_jsonw_open(&o, "agent", false);
	nhi_jsonw_s(&o, "id", a->id);
	nhi_jsonw_s(&o, "status", nhi_agent_status_name(a->status));
	jsonw_strings(&o, "roles", a->roles, a->n_roles);
	jsonw_strings(&o, "audiences", a->audiences, a->n_audiences);
	nhi_jsonw_i(&o, "not_before", a->not_before);
	nhi_jsonw_i(&o, "not_after", a->not_after);
	nhi_jsonw_raw(&o, "attributes", attrs, strlen(attrs));
	nhi_jsonw_i(&o, "backup_serial", (long long)a->backup_serial);
	nhi_jsonw_close(&o, false);
	nhi_jsonw_open(&o, "claims", false);
	nhi_jsonw_s(&o, "iss", cl->iss);
	nhi_jsonw_s(&o, "sub", cl->sub);
	nhi_jsonw_s(&o, "aud", cl->aud);
	nhi_jsonw_i(&o, "iat", cl->iat);
	nhi_jsonw_i(&o, "nbf", cl->nbf);
	nhi_jsonw_i(&o, "exp", cl->exp);
	nhi_jsonw_s(&o, "jti", cl->jti);
	jsonw_strings(&o, "roles", cl->roles, cl->n_roles);
	nhi_jsonw_s(&o, "kid", cl->kid);
	nhi_jsonw_close(&o, false);
	if ((rv = nhi_jsonw_end(&o)) != NHI_OK)
		nhi_buf_free(out);
out:
	free(attrs);
	return rv;
}

static void h_resolve(struct ctx *c)
{
	const struct nhi_agent *me = NULL;
	struct nhi_agent *subject = NULL;
	struct nhi_token_claims *cl = NULL;
	struct nhi_token_check chk = {0};
	enum nhi_token_error why = NHI_TOKEN_OK;
	struct nhi_api_resolve_req q = {0};
	json_t *fields;
	const char *body, *tok;
	size_t len;
	char detail[NHI_ERR_DETAIL_MAX];

	if ((body = body_bytes(c, &len)) == NULL)
		goto out;
	if (nhi_api_parse_resolve_req(body, len, c->s->cfg.body_max_bytes, &q) != NHI_OK) {
		reply_error(c, 400, "bad_request", nhi_err_detail());
		goto out;
	}
	if ((me = caller(c)) == NULL)
		goto out;
	if (!nhi_agent_has_role(me, "resolver")) {
		reply_audited(c, "resolve_refused", json_pack("{s:s, s:s}", "caller", me->id, "reason", "not_resolver"), 403,
			      error_body("forbidden", "the 'resolver' role is required"));
		goto out;
	}
	tok = q.token;
	if (q.presenter_der.len > 0) {
		chk.cert_der = q.presenter_der.data;
		chk.cert_der_len = q.presenter_der.len;
	}
	if (nhi_token_verify(c->trust->verifier, tok, q.token_len, &chk, &cl, &why) != NHI_OK) {
		snprintf(detail, sizeof(detail), "%s", nhi_token_error_name(why));
		if ((unsigned)why < NHI_TOKEN_E__COUNT)
			atomic_fetch_add(&c->s->metrics.token_errors[why], 1);
		fields = json_pack("{s:s, s:s}", "caller", me->id, "reason", detail);
		if (fields != NULL && nhi_audit_token_fields(fields, tok, q.token_len, false) != NHI_OK)
			json_object_set_new(fields, "token_malformed", json_true());
		reply_audited(c, "resolve_failed", fields, 401,
			      error_body("invalid_token", detail));
		goto out;
	}
	/* a revocation package: the subject, or the certificate the token is bound to */
	if (nhi_trust_agent_revoked(c->trust, cl->sub) || nhi_trust_cert_revoked(c->trust, cl->cnf_x5t_s256)) {
		snprintf(detail, sizeof(detail), "revoked");
		reply_audited(c, "resolve_failed",
			      json_pack("{s:s, s:s, s:s, s:s, s:I}", "caller", me->id, "sub", cl->sub, "jti", cl->jti, "reason",
					detail, "revocation_version", (json_int_t)c->trust->revocation_version),
			      401, error_body("invalid_token", detail));
		goto out;
	}
	/* status is checked now, not at issue time: a revoked agent's tokens die at once */
	if (nhi_store_resolve_id(c->s->store, cl->sub, (long long)time(NULL), &subject) != NHI_OK) {
		snprintf(detail, sizeof(detail), "agent_not_active: %s", nhi_err_detail());
		reply_audited(c, "resolve_failed",
			      json_pack("{s:s, s:s, s:s, s:s}", "caller", me->id, "sub", cl->sub, "jti", cl->jti, "reason",
					detail),
			      401, error_body("invalid_token", detail));
		goto out;
	}
	{
		const struct nhi_audit_kv rec[] = {{"caller", me->id, 0}, {"sub", cl->sub, 0}, {"jti", cl->jti, 0}};
		struct nhi_buf text = {0};

		if (nhi_routes_resolve_text(subject, cl, &text) != NHI_OK) {
			/* out of memory, or a string of the record that is not UTF-8 (the store
			 * does not check an image's roles and audiences as nhictl does) */
			fprintf(stderr, "nhid: resolve reply for agent %.64s: %s\n", subject->id, nhi_err_detail());
			reply_error(c, 500, "internal", "the reply could not be encoded");
		} else
			reply_pending(c, "resolve_ok", NULL, rec, sizeof(rec) / sizeof(rec[0]), 200, &text);
		nhi_buf_free(&text);
	}
out:
	nhi_api_resolve_req_free(&q);
	nhi_token_claims_free(cl);
	nhi_agent_free(subject);
}

static void h_reload(struct ctx *c)
{
	const struct nhi_agent *a = NULL;
	const char *auth = evhttp_find_header(evhttp_request_get_input_headers(c->req), "Authorization");
	nhi_err e;

	/* RFC 7235 §2.1: the scheme is case-insensitive, then 1*SP before the token */
	if (auth != NULL && strncasecmp(auth, "Bearer ", 7) == 0)
		auth += 7 + strspn(auth + 7, " ");
	else
		auth = NULL;
	if ((a = caller(c)) == NULL) {
		/* caller() has answered */
	} else if (!nhi_agent_has_role(a, "admin") || c->s->cfg.admin_token_hash[0] == '\0' || auth == NULL ||
		   nhi_admin_hash_check(c->s->cfg.admin_token_hash, auth, strlen(auth)) != NHI_OK) {
		reply_audited(c, "admin_refused", json_pack("{s:s, s:s}", "agent", a->id, "action", "reload"), 403,
			      error_body("forbidden", "the 'admin' role and a valid admin bearer token are required"));
	} else if ((e = nhi_server_reload(c->s, a->id)) != NHI_OK) {
		/* the admin action runs on this worker (rare, operator-driven); reload audits itself */
		reply_error(c, e == NHI_ERR_ROLLBACK ? 409 : 500, nhi_err_name(e), nhi_err_detail());
	} else {
		reply(c, 200, json_pack("{s:s}", "status", "reloaded"));
	}
}

/* the caller, if it holds `role` for using signing key k; else a 403 (audited) was sent */
static const struct nhi_agent *key_user(struct ctx *c, const struct nhi_sign_key *k, const char *purpose, bool sign)
{
	const struct nhi_agent *a = caller(c);
	const char *role;
	char detail[160];

	if (a == NULL)
		return NULL;
	if (k == NULL) {
		reply_error(c, 400, "unknown_key", "no signing key serves this purpose (config signing_keys)");
		return NULL;
	}
	role = sign ? k->cfg->sign_role : k->cfg->verify_role;
	if (!nhi_agent_has_role(a, role)) {
		snprintf(detail, sizeof(detail), "the '%s' role is required to %s with key '%s'", role,
			 sign ? "sign" : "verify", purpose);
		reply_audited(c, sign ? "sign_refused" : "verify_refused",
			      json_pack("{s:s, s:s, s:s}", "caller", a->id, "key", purpose, "reason", "role"), 403,
			      error_body("forbidden", detail));
		return NULL;
	}
	return a;
}

static void h_sign(struct ctx *c)
{
	struct nhi_api_sign_req q = {0};
	const struct nhi_agent *a = NULL;
	const struct nhi_sign_key *k;
	uint8_t sig[64], digest[32];
	struct nhi_buf sig_b64 = {0};
	char hex[65];
	const char *body;
	size_t len;

	if ((body = body_bytes(c, &len)) == NULL)
		goto out;
	if (nhi_api_parse_sign_req(body, len, c->s->cfg.body_max_bytes, &q) != NHI_OK) {
		reply_error(c, 400, "bad_request", nhi_err_detail());
		goto out;
	}
	k = nhi_signing_find(c->s, q.key);
	if ((a = key_user(c, k, q.key, true)) == NULL)
		goto out;
	if (nhi_signing_sign(c->s, k, q.payload.data, q.payload.len, sig) != NHI_OK ||
	    nhi_sha256(q.payload.data, q.payload.len, digest) != NHI_OK || nhi_b64url_encode(sig, 64, &sig_b64) != NHI_OK) {
		fprintf(stderr, "nhid: signing with '%s' failed: %s\n", k->cfg->label, nhi_err_detail());
		reply_error(c, 500, "internal", "signing failed");
		goto out;
	}
	nhi_hex(digest, 32, hex);
	/* durable before the signature leaves: the record names the payload by its hash */
	reply_audited(c, "payload_signed",
		      json_pack("{s:s, s:s, s:s, s:s, s:I}", "caller", a->id, "key", q.key, "kid", k->kid, "payload_sha256",
				hex, "payload_bytes", (json_int_t)q.payload.len),
		      200, json_pack("{s:s, s:s, s:s, s:s}", "key", q.key, "kid", k->kid, "alg", "ES256", "sig",
				     (const char *)sig_b64.data));
out:
	nhi_buf_free(&sig_b64);
	nhi_api_sign_req_free(&q);
}

static void h_verify(struct ctx *c)
{
	struct nhi_api_verify_req q = {0};
	const struct nhi_agent *a = NULL;
	struct nhi_signing_verdict v;
	const struct nhi_sign_key *k;
	uint8_t digest[32];
	char hex[65];
	const char *body;
	size_t len;

	if ((body = body_bytes(c, &len)) == NULL)
		goto out;
	if (nhi_api_parse_verify_req(body, len, c->s->cfg.body_max_bytes, &q) != NHI_OK) {
		reply_error(c, 400, "bad_request", nhi_err_detail());
		goto out;
	}
	k = nhi_signing_find(c->s, q.key);
	if ((a = key_user(c, k, q.key, false)) == NULL)
		goto out;
	if (nhi_sha256(q.payload.data, q.payload.len, digest) != NHI_OK) {
		reply_error(c, 500, "internal", "hashing failed");
		goto out;
	}
	nhi_hex(digest, 32, hex);
	if (nhi_signing_verify(c->s, c->trust, k, q.kid[0] ? q.kid : NULL, q.payload.data, q.payload.len, q.sig, &v) !=
	    NHI_OK) {
		reply_audited(c, "signature_refused",
			      json_pack("{s:s, s:s, s:s, s:s, s:s}", "caller", a->id, "key", q.key, "kid", v.kid,
					"payload_sha256", hex, "reason", v.reason ? v.reason : "error"),
			      422, json_pack("{s:s, s:s, s:s}", "error", "invalid_signature", "reason",
					     v.reason ? v.reason : "error", "detail", nhi_err_detail()));
		goto out;
	}
	reply_audited(c, "signature_verified",
		      json_pack("{s:s, s:s, s:s, s:s, s:s}", "caller", a->id, "key", q.key, "kid", v.kid, "signer",
				v.signer, "payload_sha256", hex),
		      200, json_pack("{s:b, s:s, s:s, s:s}", "valid", 1, "key", q.key, "kid", v.kid, "signer", v.signer));
out:
	nhi_api_verify_req_free(&q);
}

#define MANIFEST_NAMES_MAX 1000 /* names listed in one mismatch reply; the counts are exact */

struct diffs {
	json_t *lists[4]; /* by enum nhi_manifest_diff */
	size_t listed;
	bool truncated;
};

static void diff_cb(void *arg, enum nhi_manifest_diff d, const char *path)
{
	struct diffs *df = arg;

	if (df->listed >= MANIFEST_NAMES_MAX) {
		df->truncated = true;
		return;
	}
	json_array_append_new(df->lists[d], json_string(path));
	df->listed++;
}

static void h_manifest_verify(struct ctx *c)
{
	struct nhi_api_manifest_req q = {0};
	struct diffs df = {{NULL, json_array(), json_array(), json_array()}, 0, false};
	const struct nhi_agent *a = NULL;
	size_t n_diffs = 0;
	uint8_t digest[32];
	char hex[65], detail[NHI_ERR_DETAIL_MAX];
	const char *body;
	nhi_err e;
	size_t len;
	bool off;

	if ((body = body_bytes(c, &len)) == NULL)
		goto out;
	if (nhi_api_parse_manifest_req(body, len, c->s->cfg.body_max_bytes, &q) != NHI_OK) {
		reply_error(c, 400, "bad_request", nhi_err_detail());
		goto out;
	}
	if ((a = caller(c)) == NULL)
		goto out;
	if (!nhi_agent_has_role(a, c->s->cfg.manifest_role)) {
		snprintf(detail, sizeof(detail), "the '%s' role is required", c->s->cfg.manifest_role);
		reply_audited(c, "manifest_refused", json_pack("{s:s, s:s}", "caller", a->id, "reason", "role"), 403,
			      error_body("forbidden", detail));
		goto out;
	}
	if (df.lists[1] == NULL || df.lists[2] == NULL || df.lists[3] == NULL ||
	    nhi_sha256((const uint8_t *)q.manifest, q.manifest_len, digest) != NHI_OK) {
		reply_error(c, 500, "internal", "out of memory");
		goto out;
	}
	nhi_hex(digest, 32, hex);
	/* the manifest keys of the bundle in service; held while they are used */
	pthread_mutex_lock(&c->s->bundle_mu);
	off = c->s->bundle == NULL;
	e = off ? NHI_ERR_NOT_FOUND
		: nhi_manifest_verify_list((const uint8_t *)q.manifest, q.manifest_len,
					   nhi_bundle_manifest_keys(c->s->bundle), q.files, diff_cb, &df, &n_diffs);
	snprintf(detail, sizeof(detail), "%s", off ? "" : nhi_err_detail());
	pthread_mutex_unlock(&c->s->bundle_mu);
	if (off) {
		reply_error(c, 404, "no_trust_bundle", "updates are off on this server (no updates_dir): no manifest keys");
		goto out;
	}
	if (e == NHI_ERR_FORMAT || e == NHI_ERR_LIMIT) {
		reply_error(c, 400, "bad_request", detail);
		goto out;
	}
	if (e != NHI_OK && n_diffs == 0) {
		reply_audited(c, "manifest_refused",
			      json_pack("{s:s, s:s, s:s}", "caller", a->id, "manifest_sha256", hex, "reason", "signature"),
			      422, json_pack("{s:s, s:s}", "error", "invalid_signature", "detail", detail));
		goto out;
	}
	if (e != NHI_OK) {
		reply_audited(c, "manifest_refused",
			      json_pack("{s:s, s:s, s:s, s:I}", "caller", a->id, "manifest_sha256", hex, "reason", "mismatch",
					"differences", (json_int_t)n_diffs),
			      422, json_pack("{s:s, s:s, s:I, s:O, s:O, s:O, s:b}", "error", "manifest_mismatch", "detail",
					     detail, "differences", (json_int_t)n_diffs, "differs",
					     df.lists[NHI_MANIFEST_DIFFERS], "missing", df.lists[NHI_MANIFEST_MISSING],
					     "extra", df.lists[NHI_MANIFEST_EXTRA], "truncated", df.truncated));
		goto out;
	}
	reply_audited(c, "manifest_verified",
		      json_pack("{s:s, s:s, s:I}", "caller", a->id, "manifest_sha256", hex, "files",
				(json_int_t)json_array_size(q.files)),
		      200, json_pack("{s:b, s:I}", "valid", 1, "files", (json_int_t)json_array_size(q.files)));
out:
	json_decref(df.lists[1]);
	json_decref(df.lists[2]);
	json_decref(df.lists[3]);
	nhi_api_manifest_req_free(&q);
}

/*
 * The request's header lines, as evhttp parsed them: at most header_max_count (evhttp
 * bounds only their bytes, and counts no line ends), and one Content-Length (evhttp
 * takes the first of several; RFC 9112 6.3 says refuse, and the stream is not at a
 * known request boundary after it, so the connection closes). One walk of the list,
 * which a request's few headers make a few comparisons. 0 when the request may go on.
 */
static int headers_refused(struct ctx *c)
{
	const struct evkeyval *h;
	unsigned n = 0, lengths = 0;
	char text[128];

	for (h = evhttp_request_get_input_headers(c->req)->tqh_first; h != NULL; h = h->next.tqe_next) {
		n++;
		lengths += evutil_ascii_strcasecmp(h->key, "Content-Length") == 0;
	}
	if (lengths > 1) {
		c->conn->requests = c->s->cfg.requests_per_connection; /* then Connection: close */
		reply_error(c, 400, "bad_request", "Content-Length is given more than once");
		return 400;
	}
	if (n > c->s->cfg.header_max_count) {
		snprintf(text, sizeof(text), "%u request headers, over header_max_count (%u)", n,
			 c->s->cfg.header_max_count);
		reply_error(c, 431, "too_many_headers", text);
		return 431;
	}
	return 0;
}

static void (*const handlers[NHI_ROUTE__COUNT])(struct ctx *c) = {
	[NHI_ROUTE_HEALTH] = h_health, [NHI_ROUTE_TOKENS] = h_tokens,   [NHI_ROUTE_RESOLVE] = h_resolve,
	[NHI_ROUTE_JWKS] = h_jwks,     [NHI_ROUTE_METRICS] = h_metrics, [NHI_ROUTE_RELOAD] = h_reload,
	[NHI_ROUTE_TRUST_BUNDLE] = h_trust_bundle, [NHI_ROUTE_SIGN] = h_sign, [NHI_ROUTE_VERIFY] = h_verify,
	[NHI_ROUTE_MANIFEST_VERIFY] = h_manifest_verify,
};

void nhi_routes_handle(struct evhttp_request *req, void *arg)
{
	struct nhi_worker *w = arg;
	struct ctx c = {.s = w->srv, .w = w, .req = req, .route = NHI_ROUTE_OTHER};
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	SSL *ssl = bufferevent_openssl_get_ssl(evhttp_connection_get_bufferevent(evcon));
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const struct nhi_api_route *r = nhi_api_route_find(uri ? evhttp_uri_get_path(uri) : NULL);
	const char *method = evhttp_request_get_command(req) == EVHTTP_REQ_GET ? "GET"
			     : evhttp_request_get_command(req) == EVHTTP_REQ_POST ? "POST" : "";

	clock_gettime(CLOCK_MONOTONIC, &c.t0);
	c.conn = nhi_tls_conn(ssl);
	if (c.conn == NULL) { /* cannot happen: every connection is TLS with a record */
		reply_error(&c, 500, "internal", "connection without TLS state");
		return;
	}
	if (c.conn->requests++ == 0)
		nhi_tls_close_notify_on_close(evcon);
	if (atomic_load(&c.s->stopping)) {
		/* draining: what is in flight finishes, nothing new is granted */
		c.conn->requests = c.s->cfg.requests_per_connection;
		reply_error(&c, 503, "shutting_down", "nhid is stopping; retry on another instance or later");
		return;
	}
	if (headers_refused(&c) != 0)
		return;
	if (r == NULL) {
		reply_error(&c, 404, "not_found", "no such endpoint");
		return;
	}
	c.route = r->id;
	if (strcmp(method, r->method) != 0) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", r->method);
		reply_error(&c, 405, "method_not_allowed", r->method);
		return;
	}
	c.trust = nhi_server_trust_get(c.s);
	handlers[r->id](&c);
	nhi_trust_put(c.trust); /* handlers keep nothing of it past their return */
}
