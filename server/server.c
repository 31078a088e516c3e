/*
 * server/server.c — nhid's life cycle: open the token, load the identity backup,
 * build TLS, tokens and audit; one listening socket shared by the event loops of the
 * worker threads (nhi_server_balance spreads connections); drain on stop; reload without
 * dropping connections (new handshakes get the new context, open ones keep theirs).
 */
#include "server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/thread.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

nhi_err nhi_server_audit(struct nhi_server *s, const char *event, json_t *fields)
{
	if (s->audit == NULL) {
		json_decref(fields);
		return NHI_OK;
	}
	return nhi_audit_record(s->audit, event, fields);
}

SSL_CTX *nhi_server_ctx_get(struct nhi_server *s)
{
	SSL_CTX *ctx;

	pthread_mutex_lock(&s->ctx_mu);
	ctx = s->ssl_ctx;
	SSL_CTX_up_ref(ctx);
	pthread_mutex_unlock(&s->ctx_mu);
	return ctx;
}

/*
 * A connection's deadline: one timer per connection, nothing per request. evhttp's
 * read timeout (idle_timeout_s) starts again with every byte read, TLS records that
 * carry no HTTP byte included, so a client sending a byte now and then held its slot
 * for hours: in the TLS handshake, before presenting any certificate (max_connections
 * of them and every other client was refused), or inside a request's head or body.
 * So the handshake must be done NHI_SERVER_HANDSHAKE_TIMEOUT_S after the accept, and
 * then a request must be dispatched in one of every two idle_timeout_s periods: a
 * client idle longer than one period is closed by evhttp already, so a connection
 * that passes two with none is one trickling a request (or leaving its replies
 * unread). It is closed as evhttp's own timeout closes one (evhttp_error_cb), and
 * counted in nhid_connections_timed_out_total.
 */
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct nhi_conn *c = arg;
	struct timeval tv = {(time_t)c->srv->cfg.idle_timeout_s, 0};

	(void)fd;
	(void)what;
	if (c->handshake_done && (c->requests != c->requests_seen || !c->stalled)) {
		c->stalled = c->requests == c->requests_seen;
		c->requests_seen = c->requests;
		if (event_add(c->deadline, &tv) == 0)
			return;
	}
	atomic_fetch_add(&c->srv->metrics.connections_timed_out, 1);
	bufferevent_trigger_event(c->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, 0);
}

/* evhttp asks for a bufferevent per accepted connection: a TLS one, always */
static struct bufferevent *bev_cb(struct event_base *base, void *arg)
{
	struct nhi_worker *w = arg;
	struct nhi_server *s = w->srv;
	SSL_CTX *ctx = nhi_server_ctx_get(s);
	SSL *ssl = SSL_new(ctx);
	struct nhi_conn *c = calloc(1, sizeof(*c));
	struct bufferevent *bev;
	struct timeval handshake = {NHI_SERVER_HANDSHAKE_TIMEOUT_S, 0};
	unsigned long long active;

	SSL_CTX_free(ctx); /* the SSL holds its own reference */
	if (ssl == NULL || c == NULL) {
		/* evhttp would fall back to a plaintext bufferevent on NULL: fail closed */
		fprintf(stderr, "nhid: out of memory creating a TLS connection: stopping\n");
		abort();
	}
	c->srv = s;
	c->w = w;
	atomic_fetch_add(&w->conns, 1);
	nhi_server_balance(s, w);
	active = atomic_fetch_add(&s->metrics.connections_active, 1) + 1;
	atomic_fetch_add(&s->metrics.connections_total, 1);
	if (active > s->cfg.max_connections || atomic_load(&s->stopping)) {
		c->over_limit = true;
		atomic_fetch_add(&s->metrics.connections_refused, 1);
	}
	SSL_set_ex_data(ssl, nhi_tls_conn_index(), c);
	bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev == NULL) {
		fprintf(stderr, "nhid: cannot create a TLS bufferevent: stopping\n");
		abort();
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	c->bev = bev;
	c->deadline = evtimer_new(base, deadline_cb, c);
	if (c->deadline == NULL || evtimer_add(c->deadline, &handshake) != 0) {
		fprintf(stderr, "nhid: out of memory arming a connection's deadline: stopping\n");
		abort();
	}
	return bev;
}

static nhi_err open_listener(const struct nhi_server_config *c, int *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;
	int fd = -1, one = 1;

	if (inet_pton(AF_INET, c->listen_host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)c->listen_port);
		len = sizeof(*v4);
	} else {
		NHI_CHECK(inet_pton(AF_INET6, c->listen_host, &v6->sin6_addr) == 1, NHI_ERR_CONFIG, "listen address %s",
			  c->listen_host);
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)c->listen_port);
		len = sizeof(*v6);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	NHI_CHECK(fd >= 0, NHI_ERR_IO, "socket: %s", strerror(errno));
	/* no SO_REUSEPORT: a second nhid on the same address fails here instead of
	 * silently taking a share of the connections */
	NHI_CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0, NHI_ERR_IO, "setsockopt: %s",
		  strerror(errno));
	/* small JSON replies must not wait for Nagle + delayed ACK (~40 ms); accepted
	 * sockets inherit the option from the listener on Linux */
	NHI_CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0, NHI_ERR_IO, "TCP_NODELAY: %s",
		  strerror(errno));
	if (ss.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	NHI_CHECK(bind(fd, (struct sockaddr *)&ss, len) == 0, NHI_ERR_IO,
		  "cannot listen on %s:%d: %s (another nhid running? pick another port)", c->listen_host, c->listen_port,
		  strerror(errno));
	NHI_CHECK(listen(fd, NHI_SERVER_LISTEN_BACKLOG) == 0, NHI_ERR_IO, "listen: %s", strerror(errno));
	*out = fd;
	fd = -1;
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

void nhi_accept_plan(const unsigned *conns, size_t n, bool *want)
{
	unsigned min = UINT_MAX;
	size_t i;

	for (i = 0; i < n; i++)
		if (conns[i] < min)
			min = conns[i];
	for (i = 0; i < n; i++)
		want[i] = conns[i] <= min;
}

#ifdef NHI_TEST_BUILD
/* NHI_TEST_FAIL_ACCEPT_ENABLE=N: the first N listener switch-ons fail (test_server_startup.sh) */
static bool enable_fails(void)
{
	static atomic_int left = -1;
	const char *v;
	int n = atomic_load(&left), init = -1;

	if (n < 0) {
		v = getenv("NHI_TEST_FAIL_ACCEPT_ENABLE");
		n = v != NULL ? atoi(v) : 0;
		atomic_compare_exchange_strong(&left, &init, n > 0 ? n : 0);
	}
	while ((n = atomic_load(&left)) > 0)
		if (atomic_compare_exchange_weak(&left, &n, n - 1))
			return true;
	return false;
}
#else
static bool enable_fails(void)
{
	return false;
}
#endif

/*
 * A loop's listener on or off, on that loop's thread; none while draining. A switch
 * that fails is tried again after a while: the loop may be the only one the balance
 * lets accept, and without a retry no loop would accept until a connection closed
 * somewhere. With the epoll changelist, evconnlistener_enable only queues the change
 * and fails only when the queue cannot grow (no memory); an epoll_ctl that fails when
 * the loop applies the queue is not reported back by libevent (it logs a warning
 * "Epoll ADD ... failed"), and is not retried here.
 */
static void apply_accept(struct nhi_worker *w)
{
	bool want = atomic_load(&w->want_accept);
	struct evconnlistener *lev;
	struct timeval retry = {0, NHI_SERVER_ACCEPT_RETRY_MS * 1000};
	int rc;

	if (w->bound == NULL || want == w->accepting)
		return;
	lev = evhttp_bound_socket_get_listener(w->bound);
	if (want)
		rc = enable_fails() ? -1 : evconnlistener_enable(lev);
	else
		rc = evconnlistener_disable(lev);
	if (rc == 0) {
		if (w->switch_failing)
			fprintf(stderr, "nhid: worker %u: its listener switched %s after failing\n", w->idx,
				want ? "on" : "off");
		w->switch_failing = false;
		w->accepting = want;
	} else {
		/* logged once, not every retry */
		if (!w->switch_failing)
			fprintf(stderr, "nhid: worker %u: cannot switch its listener %s; trying again every %d ms\n",
				w->idx, want ? "on" : "off", NHI_SERVER_ACCEPT_RETRY_MS);
		w->switch_failing = true;
		(void)event_add(w->balance_ev, &retry);
	}
}

static void balance_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	apply_accept(arg);
}

void nhi_server_balance(struct nhi_server *s, struct nhi_worker *self)
{
	unsigned conns[NHI_SERVER_THREADS_MAX];
	bool want[NHI_SERVER_THREADS_MAX];
	unsigned i, n = s->cfg.threads;

	if (n < 2 || n > NHI_SERVER_THREADS_MAX || s->workers == NULL || atomic_load(&s->stopping))
		return;
	pthread_mutex_lock(&s->balance_mu);
	for (i = 0; i < n; i++)
		conns[i] = atomic_load(&s->workers[i].conns);
	nhi_accept_plan(conns, n, want);
	for (i = 0; i < n; i++) {
		struct nhi_worker *w = &s->workers[i];

		if (atomic_exchange(&w->want_accept, want[i]) == want[i] || w == self)
			continue;
		event_active(w->balance_ev, 0, 0);
	}
	pthread_mutex_unlock(&s->balance_mu);
	apply_accept(self);
}

/* draining: the grace is over; open connections are closed when the loop is freed */
static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct nhi_worker *w = arg;

	(void)fd;
	(void)what;
	event_base_loopbreak(w->base);
}

/* draining: leave once this loop's last connection is gone (the grace is the bound) */
static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	struct nhi_worker *w = arg;

	(void)fd;
	(void)what;
	if (atomic_load(&w->conns) == 0)
		event_base_loopbreak(w->base);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct nhi_worker *w = arg;
	struct timeval grace = {NHI_SERVER_DRAIN_GRACE_S, 0}, poll = {0, NHI_SERVER_DRAIN_POLL_MS * 1000};

	(void)fd;
	(void)what;
	/* drain: stop accepting, let requests in flight finish, then leave: at once when
	 * no connection is open, at the latest after the grace (idle keep-alive
	 * connections are closed then) */
	if (w->bound != NULL) {
		evhttp_del_accept_socket(w->http, w->bound);
		w->bound = NULL;
	}
	/* the events exist since worker_init; adding a timer can still fail (the timer
	 * heap grows): then the loop ends now rather than never */
	if (event_add(w->grace_ev, &grace) != 0 || event_add(w->drain_ev, &poll) != 0) {
		event_base_loopbreak(w->base);
		return;
	}
	drain_cb(-1, 0, w);
}

/* `listen_fd`: the shared listening socket; the loop's listener owns its own dup */
static nhi_err worker_init(struct nhi_server *s, struct nhi_worker *w, unsigned idx, int listen_fd)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct timeval tv = {(time_t)s->cfg.idle_timeout_s, 0};
	int fd = -1;

	w->srv = s;
	w->idx = idx;
	{
		/* epoll changes of one loop turn coalesced: evhttp toggles read/write interest
		 * on every request, and a syscall is dear (measured: docs/architecture.md) */
		struct event_config *ec = event_config_new();

		NHI_CHECK(ec != NULL, NHI_ERR_NOMEM, "event_config_new");
		(void)event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
		w->base = event_base_new_with_config(ec);
		event_config_free(ec);
	}
	NHI_CHECK(w->base != NULL, NHI_ERR_NOMEM, "event_base_new");
	w->http = evhttp_new(w->base);
	NHI_CHECK(w->http != NULL, NHI_ERR_NOMEM, "evhttp_new");
	evhttp_set_bevcb(w->http, bev_cb, w);
	evhttp_set_gencb(w->http, nhi_routes_handle, w);
	evhttp_set_max_body_size(w->http, (ev_ssize_t)s->cfg.body_max_bytes);
	evhttp_set_max_headers_size(w->http, (ev_ssize_t)s->cfg.header_max_bytes);
	evhttp_set_timeout_tv(w->http, &tv);
	/* every method evhttp knows reaches the routes (404, or 405 with Allow); one it
	 * does not know is 501 (routes.c evhttp_send_error) */
	evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						    EVHTTP_REQ_HEAD | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS |
						    EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
	fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
	NHI_CHECK(fd >= 0, NHI_ERR_IO, "dup of the listening socket: %s", strerror(errno));
	w->bound = evhttp_accept_socket_with_handle(w->http, fd);
	NHI_CHECK(w->bound != NULL, NHI_ERR_IO, "evhttp_accept_socket failed");
	fd = -1;
	w->accepting = true;
	atomic_store(&w->want_accept, true);
	w->stop_ev = event_new(w->base, -1, 0, stop_cb, w);
	w->drain_ev = event_new(w->base, -1, EV_PERSIST, drain_cb, w);
	w->grace_ev = event_new(w->base, -1, 0, grace_cb, w);
	w->balance_ev = event_new(w->base, -1, 0, balance_cb, w);
	NHI_CHECK(w->stop_ev != NULL && w->drain_ev != NULL && w->grace_ev != NULL && w->balance_ev != NULL,
		  NHI_ERR_NOMEM, "event_new");
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

/* the end of every reload failure's message: it is all or nothing */
#define RELOAD_NOTHING_CHANGED " (nothing was changed: the previous identities and certificates stay in service)"

/* digits only, no sign, no leading '+', within uint64 / long long: the mark's fields */
static bool mark_number(const char *s, size_t n, bool negative_ok, unsigned long long *u, long long *ll)
{
	char tmp[24];
	char *end = NULL;
	bool ok = n > 0 && n < sizeof(tmp);
	size_t i;

	for (i = 0; ok && i < n; i++)
		ok = (s[i] >= '0' && s[i] <= '9') || (negative_ok && i == 0 && s[i] == '-' && n > 1);
	if (ok) {
		memcpy(tmp, s, n);
		tmp[n] = '\0';
		errno = 0;
		if (u != NULL)
			*u = strtoull(tmp, &end, 10);
		else
			*ll = strtoll(tmp, &end, 10);
		ok = errno == 0 && *end == '\0';
	}
	return ok;
}

/*
 * state_dir/backup.serial: "SERIAL SHA256 CREATED_AT\n", the last identity backup
 * this server accepted (its serial is the high-water mark, and all three stand in
 * for the loaded backup after a restart); "SERIAL\n" as written before, serial only.
 */
nhi_err nhi_server_backup_mark(const struct nhi_server *s, struct nhi_store_info *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char path[600];
	struct nhi_buf b = {0};
	const char *t, *sp1, *sp2;
	unsigned long long serial = 0;
	long long created = 0;
	size_t n, i;
	bool ok, hex = true;

	memset(out, 0, sizeof(*out));
	snprintf(path, sizeof(path), "%s/backup.serial", s->cfg.state_dir);
	rv = nhi_file_read(path, 128, &b);
	if (rv == NHI_ERR_NOT_FOUND) { /* nothing accepted yet */
		nhi_err_clear();
		rv = NHI_OK;
		goto out;
	}
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv, "the identity backup high-water mark");
		goto out;
	}
	t = (const char *)b.data;
	n = b.len;
	ok = n > 1 && t[n - 1] == '\n' && memchr(t, '\0', n) == NULL;
	n -= ok ? 1 : 0;
	sp1 = ok ? memchr(t, ' ', n) : NULL;
	if (ok && sp1 == NULL) {
		ok = mark_number(t, n, false, &serial, NULL) && serial > 0;
	} else if (ok) {
		sp2 = memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - t));
		ok = sp2 != NULL && sp2 - sp1 - 1 == 64 &&
		     mark_number(t, (size_t)(sp1 - t), false, &serial, NULL) && serial > 0 &&
		     mark_number(sp2 + 1, n - (size_t)(sp2 + 1 - t), true, NULL, &created);
		for (i = 0; ok && i < 64; i++)
			hex = hex && ((sp1[1 + i] >= '0' && sp1[1 + i] <= '9') || (sp1[1 + i] >= 'a' && sp1[1 + i] <= 'f'));
		ok = ok && hex;
		if (ok) {
			memcpy(out->digest_sha256, sp1 + 1, 64);
			out->digest_sha256[64] = '\0';
			out->created_at = created;
			out->loaded = true;
		}
	}
	NHI_CHECK(ok, NHI_ERR_FORMAT,
		  "%s is not the high-water mark nhid writes (\"SERIAL SHA256 CREATED_AT\", one line): restore it "
		  "from this server's backups of state_dir; nhid will not guess, since it guards against identity "
		  "rollbacks",
		  path);
	out->serial = serial;
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		memset(out, 0, sizeof(*out));
	nhi_buf_free(&b);
	return rv;
}

/*
 * The identity backup to load: the config's `backup`, or the body of the last applied
 * identity-backup package when that one's serial is higher (an operator may still
 * drop a newer file at `backup` and reload). Without an applied package the file is
 * the only candidate and is not read twice.
 */
static void backup_source(struct nhi_server *s, char *path, size_t n, const char **source)
{
	struct nhi_update_state st;
	struct nhi_backup_info fi, ui;
	char body[4096];

	snprintf(path, n, "%s", s->cfg.backup);
	*source = "config";
	if (nhi_update_state_load(s->cfg.state_dir, &st) != NHI_OK || st.version[NHI_UPDATE_IDENTITY_BACKUP] == 0 ||
	    nhi_update_state_body_path(s->cfg.state_dir, &st, NHI_UPDATE_IDENTITY_BACKUP, body, sizeof(body)) != NHI_OK ||
	    nhi_backup_inspect_file(body, &ui) != NHI_OK) {
		nhi_err_clear();
		return;
	}
	if (nhi_backup_inspect_file(s->cfg.backup, &fi) != NHI_OK || ui.serial > fi.serial) {
		snprintf(path, n, "%s", body);
		*source = "update";
	}
	nhi_err_clear();
}

struct load_ctx {
	struct nhi_server *s;
	const char *who, *path, *source;
	const struct nhi_store_info *mark;
};

/*
 * The import's commit step, before the swap: the mark first, so that no identities
 * serve unless a restart would hold the same rules; then the audit record, durable.
 */
static nhi_err backup_commit(void *arg, const struct nhi_store_import_result *res)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct load_ctx *c = arg;
	char serial_path[600], buf[128];

	snprintf(serial_path, sizeof(serial_path), "%s/backup.serial", c->s->cfg.state_dir);
	snprintf(buf, sizeof(buf), "%llu %s %lld\n", (unsigned long long)res->info.serial, res->info.digest_sha256,
		 res->info.created_at);
	if (!c->mark->loaded || c->mark->serial != res->info.serial ||
	    strcmp(c->mark->digest_sha256, res->info.digest_sha256) != 0 || c->mark->created_at != res->info.created_at)
		NHI_TRY(nhi_file_write_atomic(serial_path, buf, strlen(buf), 0600));
	NHI_TRY(nhi_server_audit(c->s, "backup_loaded",
				 json_pack("{s:s, s:s, s:s, s:I, s:I, s:f}", "by", c->who, "file", c->path, "source",
					   c->source, "serial", (json_int_t)res->info.serial, "agents",
					   (json_int_t)res->info.record_count, "seconds", res->total_s)));
	rv = NHI_OK;
out:
	return rv;
}

/* Import and swap in the backup to load; nothing changes unless all of it succeeds. */
static nhi_err load_backup(struct nhi_server *s, const char *who, bool startup)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_store_import_result res;
	struct nhi_store_info mark;
	struct load_ctx lc = {s, who, "", "config", &mark};
	struct nhi_store_import_opts o = {.sign_key_label = s->cfg.backup_sign_key,
					  .accepted = &mark,
					  .commit = backup_commit,
					  .commit_arg = &lc};
	char path[4096], detail[NHI_ERR_DETAIL_MAX];

	snprintf(path, sizeof(path), "%s", s->cfg.backup);
	lc.path = path;
	/* rollback protection across restarts: the last backup ever accepted */
	rv = nhi_server_backup_mark(s, &mark);
	if (rv == NHI_OK) {
		o.min_serial = mark.serial;
		backup_source(s, path, sizeof(path), &lc.source);
		rv = nhi_store_import_file(s->store, s->hsm, path, &o, &res);
	}
	if (rv != NHI_OK) {
		snprintf(detail, sizeof(detail), "%s", nhi_err_detail());
		if (nhi_server_audit(s, "backup_import_failed",
				     json_pack("{s:s, s:s, s:s, s:s}", "by", who, "file", path, "source", lc.source,
					       "reason", detail)) != NHI_OK)
			fprintf(stderr, "nhid: audit: %s\n", nhi_err_detail());
		nhi_err_set(rv, "identity backup %s: %s%s", path, detail, startup ? "" : RELOAD_NOTHING_CHANGED);
		goto out;
	}
	rv = NHI_OK;
out:
	return rv;
}

/* The PEM chain in service: the rotated one, or cert_file (re-read: a reload picks up a new file). */
static nhi_err current_chain(struct nhi_server *s, struct nhi_buf *out, const char **what)
{
	if (s->tls_chain.len > 0) {
		*what = "the rotated certificate chain (cert-rotation package)";
		return nhi_buf_append(out, s->tls_chain.data, s->tls_chain.len);
	}
	*what = s->cfg.cert_file;
	return nhi_file_read(s->cfg.cert_file, (size_t)NHI_CERT_MAX_BYTES * NHI_SERVER_CHAIN_CERTS_MAX, out);
}

/*
 * All or nothing: the certificates are read and the new TLS context built first
 * (nothing in service changes), then the backup is imported (its mark and record
 * are durable before its swap), and only then is the context swapped in, which
 * cannot fail. A failure is audited and changes nothing in service.
 */
nhi_err nhi_server_reload(struct nhi_server *s, const char *who)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	SSL_CTX *fresh = NULL, *old;
	struct nhi_buf chain = {0};
	const char *what = "";
	char detail[NHI_ERR_DETAIL_MAX];

	pthread_mutex_lock(&s->reload_mu);
	rv = current_chain(s, &chain, &what);
	if (rv == NHI_OK)
		rv = nhi_tls_ctx_new(s, chain.data, chain.len, what, s->tls_pkey, &fresh);
	if (rv != NHI_OK) {
		snprintf(detail, sizeof(detail), "%s", nhi_err_detail());
		if (nhi_server_audit(s, "reload_failed",
				     json_pack("{s:s, s:s, s:s}", "by", who, "step", "certificates", "reason", detail)) !=
		    NHI_OK)
			fprintf(stderr, "nhid: audit: %s\n", nhi_err_detail());
		nhi_err_set(rv, "%s%s", detail, RELOAD_NOTHING_CHANGED);
		goto out;
	}
	rv = load_backup(s, who, false); /* audits its own failure */
	if (rv != NHI_OK)
		goto out;
	pthread_mutex_lock(&s->ctx_mu);
	old = s->ssl_ctx;
	s->ssl_ctx = fresh;
	pthread_mutex_unlock(&s->ctx_mu);
	SSL_CTX_free(old); /* open connections hold their own reference */
	fresh = NULL;
	rv = nhi_server_audit(s, "reload", json_pack("{s:s, s:s, s:s}", "by", who, "cert", what, "tls_key", s->tls_label));
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv, "the reload is in service (identities and certificates), but its audit record "
				      "could not be written");
		goto out;
	}
	atomic_fetch_add(&s->metrics.reloads, 1);
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		atomic_fetch_add(&s->metrics.reload_failures, 1);
	SSL_CTX_free(fresh);
	nhi_buf_free(&chain);
	pthread_mutex_unlock(&s->reload_mu);
	return rv;
}

/*
 * libevent's own memory is wiped when it is freed. Request heads and bodies (the
 * admin bearer token, tokens to resolve) and replies (issued tokens) pass through
 * its buffers and header strings, which it frees as they are; nhid's own copies are
 * wiped where they are used. Costs a memset of each freed block, about 1 µs a request.
 */
static void ev_free_wiped(void *p)
{
	if (p != NULL) {
		explicit_bzero(p, malloc_usable_size(p));
		free(p);
	}
}

static void *ev_realloc_wiped(void *p, size_t n)
{
	void *q = NULL;
	size_t had = p != NULL ? malloc_usable_size(p) : 0;

	if (n > 0 && (q = malloc(n)) != NULL && p != NULL)
		memcpy(q, p, had < n ? had : n);
	if (q != NULL || n == 0)
		ev_free_wiped(p); /* realloc(p, 0) frees; on failure p stays, as with realloc */
	return q;
}

static void ev_mem_wiped(void)
{
	event_set_mem_functions(malloc, ev_realloc_wiped, ev_free_wiped);
}

nhi_err nhi_server_new(const struct nhi_server_config *cfg, const uint8_t config_digest[32], struct nhi_server **out)
{
	static pthread_once_t mem_once = PTHREAD_ONCE_INIT;

	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_server *s = NULL;
	struct nhi_hsm_config hc = {0};
	struct nhi_audit_config ac = {0};
	char digest_hex[65];
	unsigned i;
	int listen_fd = -1;

	*out = NULL;
	pthread_once(&mem_once, ev_mem_wiped); /* before any other libevent call */
	NHI_TRY(nhi_tls_init());
	NHI_CHECK(evthread_use_pthreads() == 0, NHI_ERR_INTERNAL, "libevent threading");
	s = calloc(1, sizeof(*s));
	NHI_CHECK(s != NULL, NHI_ERR_NOMEM, "out of memory");
	s->cfg = *cfg;
	memcpy(s->config_digest, config_digest, 32);
	pthread_mutex_init(&s->ctx_mu, NULL);
	pthread_mutex_init(&s->reload_mu, NULL);
	pthread_mutex_init(&s->trust_mu, NULL);
	pthread_mutex_init(&s->bundle_mu, NULL);
	pthread_mutex_init(&s->balance_mu, NULL);
	snprintf(s->tls_label, sizeof(s->tls_label), "%s", cfg->tls_key);
	s->started_at = (long long)time(NULL);
	hc.module_path = cfg->hsm_module[0] ? cfg->hsm_module : NULL;
	hc.token = cfg->hsm_token;
	hc.pin_file = cfg->hsm_pin_file;
	hc.sessions = cfg->threads + 2; /* one per worker, the audit writer, reloads */
	NHI_TRY(nhi_hsm_open(&hc, &s->hsm));
	ac.path = cfg->audit_log;
	ac.hsm = s->hsm;
	ac.key_label = cfg->audit_key;
	ac.checkpoint_records = cfg->audit_checkpoint_records;
	ac.checkpoint_seconds = cfg->audit_checkpoint_s;
	NHI_TRY(nhi_audit_open(&ac, &s->audit));
	nhi_hex(config_digest, 32, digest_hex);
	NHI_TRY(nhi_server_audit(s, "startup", json_pack("{s:s, s:s, s:i, s:i}", "config_sha256", digest_hex,
							 "listen", cfg->listen_host, "port", cfg->listen_port,
							 "threads", (int)cfg->threads)));
	/* a committed update is on the record before anything of it is loaded */
	NHI_TRY(nhi_watcher_recover(s));
	NHI_TRY(nhi_store_new(&s->store));
	NHI_TRY(load_backup(s, "startup", true));
	/* trust bundle, revocations and a rotated TLS identity committed in state_dir */
	NHI_TRY(nhi_watcher_load(s));
	/* after the keys in force are known: a signing key must be none of them */
	NHI_TRY(nhi_signing_load(s));
	rv = nhi_hsm_find(s->hsm, s->tls_label, &s->tls_key);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "TLS key '%s'%s", s->tls_label,
			     s->tls_chain.len ? " (named by the applied cert-rotation package)" : "");
		goto out;
	}
	{
		bool cached = false;

		/* every handshake signs: a session copy in the token where it allows one */
		NHI_TRY(nhi_hsm_key_cache(s->hsm, s->tls_key, &cached));
		fprintf(stderr, "nhid: signing keys %s\n",
			cached ? "cached as session objects in the token (faster; they never leave it)"
			       : "used as token objects (the token refuses session copies)");
	}
	NHI_TRY(nhi_hsm_evp_pkey(s->hsm, s->tls_key, &s->tls_pkey));
	{
		struct nhi_buf chain = {0};
		const char *what = "";

		rv = current_chain(s, &chain, &what);
		if (rv == NHI_OK)
			rv = nhi_tls_ctx_new(s, chain.data, chain.len, what, s->tls_pkey, &s->ssl_ctx);
		nhi_buf_free(&chain);
		if (rv != NHI_OK)
			goto out;
	}
	s->workers = calloc(cfg->threads, sizeof(*s->workers));
	NHI_CHECK(s->workers != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(open_listener(&s->cfg, &listen_fd));
	for (i = 0; i < cfg->threads; i++)
		NHI_TRY(worker_init(s, &s->workers[i], i, listen_fd));
	*out = s;
	s = NULL;
	rv = NHI_OK;
out:
	if (listen_fd >= 0)
		close(listen_fd); /* each loop's listener holds its own */
	nhi_server_free(s);
	return rv;
}

#ifdef NHI_TEST_BUILD
/* NHI_TEST_FAIL_WORKER_START=N: starting worker thread N (from 0) fails (test_server_startup.sh) */
static bool worker_start_fails(unsigned idx)
{
	const char *v = getenv("NHI_TEST_FAIL_WORKER_START");

	return v != NULL && v[0] != '\0' && (unsigned)atoi(v) == idx;
}
#else
static bool worker_start_fails(unsigned idx)
{
	(void)idx;
	return false;
}
#endif

static void *worker_main(void *arg)
{
	struct nhi_worker *w = arg;

	/* a loop whose listener is off for the balance may have no event at all for a
	 * while: it ends only on stop (stop_cb, drain_cb) */
	event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

nhi_err nhi_server_run(struct nhi_server *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	unsigned i;

	for (i = 0; i < s->cfg.threads; i++) {
		NHI_CHECK(!worker_start_fails(i) &&
				  pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) == 0,
			  NHI_ERR_INTERNAL, "cannot start worker thread %u (out of memory or threads: lower 'threads' "
			  "or raise the limit on tasks)", i);
		s->workers[i].started = true;
	}
	NHI_TRY(nhi_watcher_start(s));
	rv = NHI_OK;
out:
	for (i = 0; i < s->cfg.threads; i++)
		if (s->workers[i].started) {
			if (rv != NHI_OK)
				event_active(s->workers[i].stop_ev, 0, 0);
			pthread_join(s->workers[i].thread, NULL);
			s->workers[i].started = false;
		}
	return rv;
}

void nhi_server_stop(struct nhi_server *s)
{
	unsigned i;

	atomic_store(&s->stopping, true);
	nhi_watcher_stop(s);
	for (i = 0; i < s->cfg.threads; i++)
		if (s->workers[i].stop_ev != NULL)
			event_active(s->workers[i].stop_ev, 0, 0);
}

void nhi_server_free(struct nhi_server *s)
{
	unsigned i;

	if (s == NULL)
		return;
	atomic_store(&s->stopping, true); /* connections freed below leave the balance alone */
	/* the scan thread audits and swaps TLS contexts: gone before anything it uses */
	nhi_watcher_free(s);
	if (s->audit != NULL && nhi_server_audit(s, "shutdown", json_pack("{s:b}", "clean", 1)) != NHI_OK)
		fprintf(stderr, "nhid: audit: %s\n", nhi_err_detail());
	/* every submitted record is durable after close; then run the loops once more so
	 * the replies that waited for them go out before the loops are freed */
	if (s->audit != NULL && nhi_audit_close(s->audit) != NHI_OK)
		fprintf(stderr, "nhid: audit close: %s\n", nhi_err_detail());
	s->audit = NULL; /* closed and freed */
	for (i = 0; s->workers != NULL && i < s->cfg.threads; i++)
		if (s->workers[i].base != NULL) {
			/* the drain's timers may still be pending: none may cut this run short */
			if (s->workers[i].grace_ev != NULL)
				event_del(s->workers[i].grace_ev);
			if (s->workers[i].drain_ev != NULL)
				event_del(s->workers[i].drain_ev);
			event_base_loop(s->workers[i].base, EVLOOP_NONBLOCK);
		}
	for (i = 0; s->workers != NULL && i < s->cfg.threads; i++) {
		struct nhi_worker *w = &s->workers[i];

		if (w->stop_ev != NULL)
			event_free(w->stop_ev);
		if (w->drain_ev != NULL)
			event_free(w->drain_ev);
		if (w->grace_ev != NULL)
			event_free(w->grace_ev);
		if (w->balance_ev != NULL)
			event_free(w->balance_ev);
		if (w->http != NULL)
			evhttp_free(w->http);
		if (w->base != NULL)
			event_base_free(w->base);
	}
	free(s->workers);
	SSL_CTX_free(s->ssl_ctx);
	EVP_PKEY_free(s->tls_pkey);
	nhi_hsm_key_free(s->tls_key);
	for (i = 0; i < s->n_old_tls_keys; i++)
		nhi_hsm_key_free(s->old_tls_keys[i]);
	free(s->old_tls_keys);
	nhi_buf_free(&s->tls_chain);
	nhi_trust_put(s->trust);
	nhi_bundle_free(s->bundle);
	nhi_signing_free(s);
	nhi_store_free(s->store);
	nhi_audit_free(s->audit);
	nhi_hsm_free(s->hsm);
	pthread_mutex_destroy(&s->ctx_mu);
	pthread_mutex_destroy(&s->reload_mu);
	pthread_mutex_destroy(&s->trust_mu);
	pthread_mutex_destroy(&s->bundle_mu);
	pthread_mutex_destroy(&s->balance_mu);
	free(s);
}
