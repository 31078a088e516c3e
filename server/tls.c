/*
 * server/tls.c — nhid's TLS: OpenSSL server context (TLS 1.3 and 1.2, AEAD suites,
 * ECDHE, client certificate required and verified against the trust root, the
 * server key in the token), the per-connection record, the client's identity from
 * its URI SAN, and the audit of refused handshakes.
 */
#include "server_internal.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int conn_idx = -1;

/*
 * A reply leaves in two pieces: evhttp writes the status line and headers into the
 * connection's output buffer and then moves the body's chain behind them. An
 * OpenSSL bufferevent makes one SSL_write, so one TLS record and one write(), per
 * chain, and it writes only when the loop's next epoll_wait says the socket is
 * writable: an EPOLLOUT added, a wait, a write, and EPOLLOUT removed again, for a
 * socket that is almost always writable. Per request that was 2 epoll_ctl, one
 * more epoll_wait round and 2 write() calls (docs/architecture.md "Per-request
 * system calls").
 *
 * So: join the output into one chain when it fits in one record, and run the
 * bufferevent's own write callback now (event_active on its write event, the one
 * member of struct bufferevent this needs, from event2/bufferevent_struct.h). The
 * callback does exactly what it does when epoll reports the socket writable: write
 * what it can; if the socket is full, SSL_write wants to write and the bufferevent
 * keeps waiting for EPOLLOUT as before. The EPOLLOUT that the reply added and the
 * write's completion removed are changes in the same loop round, so the changelist
 * (EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) never makes the epoll_ctl calls.
 */
/*
 * When evhttp closes a connection (Connection: close, the request limit, a timeout,
 * the peer's EOF, shutdown) it frees the bufferevent, and libevent never calls
 * SSL_shutdown: the client saw the TCP close without TLS's close_notify, which
 * OpenSSL 3 clients report as "unexpected eof". evhttp calls this while the socket
 * is still open: send close_notify (one non-blocking write; if the peer is gone the
 * write fails and nothing else happens). Not waiting for the peer's reply is what
 * RFC 8446 §6.1 allows. Only when everything queued has been written: close_notify
 * after a cut-off reply would tell the client the cut was the end.
 */
static void close_notify_cb(struct evhttp_connection *evcon, void *arg)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	SSL *ssl = bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;

	(void)arg;
	if (ssl != NULL && SSL_is_init_finished(ssl) && !(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN) &&
	    evbuffer_get_length(bufferevent_get_output(bev)) == 0 && SSL_shutdown(ssl) < 0)
		ERR_clear_error();
}

void nhi_tls_close_notify_on_close(struct evhttp_connection *evcon)
{
	evhttp_connection_set_closecb(evcon, close_notify_cb, NULL);
}

/*
 * A reply that waits for its audit record leaves evhttp in its WRITING state with
 * its read callback still set: evhttp clears it only when it starts writing a reply
 * (evhttp_write_buffer). If the bufferevent has already queued a read callback (bytes
 * of the next pipelined request read in the same loop round, BEV_OPT_DEFER_CALLBACKS;
 * disabling EV_READ does not cancel it), evhttp_read_cb then runs in WRITING, which
 * libevent treats as fatal: event_errx, the whole process exits. A client pipelining
 * audited POSTs could stop nhid. So do now what evhttp does when it writes: no read
 * callback until the reply is written (evhttp_start_read_ sets its own again, and reads
 * what arrived meanwhile). Seen once under test_server.sh's pipelined requests.
 */
void nhi_tls_hold_reads(struct bufferevent *bev)
{
	bufferevent_data_cb rd, wr;
	bufferevent_event_cb ev;
	void *arg;

	bufferevent_getcb(bev, &rd, &wr, &ev, &arg);
	bufferevent_setcb(bev, NULL, wr, ev, arg);
}

void nhi_tls_write_now(struct bufferevent *bev)
{
	struct evbuffer *out = bufferevent_get_output(bev);
	size_t n = evbuffer_get_length(out);

	if (n == 0 || !(bufferevent_get_enabled(bev) & EV_WRITE))
		return;
	if (n <= NHI_SERVER_TLS_RECORD_BYTES)
		(void)evbuffer_pullup(out, -1); /* on failure the chains just go out as they are */
	event_active(&bev->ev_write, EV_WRITE, 1);
}

static void conn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct nhi_conn *c = ptr;

	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	if (c == NULL)
		return;
	/*
	 * SSL_free drops a session from the cache unless this side sent close_notify,
	 * and libevent's bufferevent never calls SSL_shutdown: without this, no session
	 * would ever be resumed. A connection whose handshake completed ends here with
	 * its session kept, as nginx does; a fatal alert, sent or received, has already
	 * removed its session (RFC 5246 §7.2.1 no longer ties resumption to a clean close).
	 * OpenSSL frees ex_data before it clears a bad session, so this runs in time.
	 */
	if (parent != NULL && SSL_is_init_finished((SSL *)parent))
		SSL_set_shutdown((SSL *)parent, SSL_get_shutdown((SSL *)parent) | SSL_SENT_SHUTDOWN);
	atomic_fetch_sub(&c->srv->metrics.connections_active, 1);
	if (c->w != NULL) {
		atomic_fetch_sub(&c->w->conns, 1);
		nhi_server_balance(c->srv, c->w);
	}
	if (c->deadline != NULL)
		event_free(c->deadline);
	free(c->cert_der);
	nhi_agent_free(c->caller);
	free(c);
}

nhi_err nhi_tls_init(void)
{
	if (conn_idx < 0)
		conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_free);
	return conn_idx >= 0 ? NHI_OK : nhi_err_set_ssl(NHI_ERR_CRYPTO, "SSL_get_ex_new_index");
}

int nhi_tls_conn_index(void)
{
	return conn_idx;
}

struct nhi_conn *nhi_tls_conn(SSL *ssl)
{
	return ssl ? SSL_get_ex_data(ssl, conn_idx) : NULL;
}

/* RFC 5280 URI SAN "spiffe://<trust domain>/agent/<name>": the one identity an agent has */
/* an ASN1_TIME as unix seconds */
static bool cert_time(const ASN1_TIME *t, long long *out)
{
	struct tm tm;
	bool ok = t != NULL && ASN1_TIME_to_tm(t, &tm) == 1;

	if (ok)
		*out = (long long)timegm(&tm);
	return ok;
}

void nhi_tls_identify(struct nhi_conn *c, SSL *ssl, const char *trust_domain)
{
	X509 *peer = SSL_get0_peer_certificate(ssl);
	GENERAL_NAMES *sans = NULL;
	char prefix[200];
	unsigned char *der = NULL;
	int i, n, found = 0, der_len;

	if (c->identity_done)
		return;
	c->identity_done = true;
	c->identity_err = NHI_ERR_DENIED;
	if (peer == NULL) {
		snprintf(c->identity_detail, sizeof(c->identity_detail), "no client certificate");
		return;
	}
	der_len = i2d_X509(peer, &der);
	if (der_len <= 0 || nhi_sha256(der, (size_t)der_len, c->cert_sha256) != NHI_OK) {
		OPENSSL_free(der);
		snprintf(c->identity_detail, sizeof(c->identity_detail), "client certificate cannot be encoded");
		return;
	}
	c->cert_der = malloc((size_t)der_len);
	if (c->cert_der != NULL) {
		memcpy(c->cert_der, der, (size_t)der_len);
		c->cert_der_len = (size_t)der_len;
	}
	OPENSSL_free(der);
	if (!cert_time(X509_get0_notBefore(peer), &c->cert_not_before) ||
	    !cert_time(X509_get0_notAfter(peer), &c->cert_not_after)) {
		snprintf(c->identity_detail, sizeof(c->identity_detail), "client certificate validity cannot be read");
		return;
	}
	snprintf(prefix, sizeof(prefix), "spiffe://%s/agent/", trust_domain);
	sans = X509_get_ext_d2i(peer, NID_subject_alt_name, NULL, NULL);
	n = sans ? sk_GENERAL_NAME_num(sans) : 0;
	for (i = 0; i < n; i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
		const unsigned char *u;
		size_t ulen, plen = strlen(prefix);

		if (g->type != GEN_URI)
			continue;
		u = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
		ulen = (size_t)ASN1_STRING_length(g->d.uniformResourceIdentifier);
		if (ulen <= plen || ulen - plen > NHI_AGENT_ID_MAX_BYTES || memcmp(u, prefix, plen) != 0 ||
		    memchr(u, '\0', ulen) != NULL || memchr(u + plen, '/', ulen - plen) != NULL)
			continue;
		found++;
		memcpy(c->agent_id, u + plen, ulen - plen);
		c->agent_id[ulen - plen] = '\0';
	}
	GENERAL_NAMES_free(sans);
	if (found != 1) {
		c->agent_id[0] = '\0';
		snprintf(c->identity_detail, sizeof(c->identity_detail),
			 found ? "client certificate has several agent URI SANs"
			       : "client certificate has no URI SAN spiffe://%s/agent/<name>",
			 trust_domain);
		return;
	}
	c->identity_err = NHI_OK;
}

static void audit_queued(void *arg, nhi_err rv, const char *detail)
{
	(void)arg;
	if (rv != NHI_OK)
		fprintf(stderr, "nhid: audit: handshake_rejected not recorded: %s\n", detail ? detail : "");
}

/* OpenSSL 3.0 has no name for TLS 1.3's certificate_required (116) */
static const char *alert_name(int ret)
{
	return (ret & 0xff) == 116 ? "certificate required" : SSL_alert_desc_string_long(ret);
}

/*
 * A fatal alert we send during a handshake = a refused handshake: audit it. Once a
 * handshake is done, a later fatal alert is not one (OpenSSL 3 sends decode_error,
 * with its state back "in init", when a served client closes without close_notify).
 * Connections over max_connections are refused at the ClientHello and counted in
 * nhid_connections_refused_total, not audited one by one (a flood would fill the log).
 */
static void info_cb(const SSL *ssl, int where, int ret)
{
	struct nhi_conn *c;
	long vr;
	json_t *f;

	if (where & SSL_CB_HANDSHAKE_DONE) {
		if ((c = nhi_tls_conn((SSL *)ssl)) != NULL)
			c->handshake_done = true;
		return;
	}
	if (!(where & SSL_CB_WRITE_ALERT) || (ret >> 8) != SSL3_AL_FATAL || SSL_is_init_finished(ssl))
		return;
	c = nhi_tls_conn((SSL *)ssl);
	if (c == NULL || c->over_limit || c->handshake_done)
		return;
	atomic_fetch_add(&c->srv->metrics.handshakes_rejected, 1);
	vr = SSL_get_verify_result(ssl);
	f = json_pack("{s:s, s:i, s:s}", "alert", alert_name(ret), "alert_code", ret & 0xff, "verify",
		      vr == X509_V_OK ? (SSL_get0_peer_certificate(ssl) ? "ok" : "no client certificate")
				      : X509_verify_cert_error_string(vr));
	/* no response waits on this record: queue it, never block the loop on an fsync */
	if (c->srv->audit != NULL && nhi_audit_submit(c->srv->audit, "handshake_rejected", f, audit_queued, NULL) != NHI_OK)
		fprintf(stderr, "nhid: audit: %s\n", nhi_err_detail());
}

/* how long a session may be resumed: its timeout, capped at the last second its client
 * certificate verifies in; -1 for one made outside the certificate's validity */
static long long session_life(SSL_SESSION *sess)
{
	X509 *peer = SSL_SESSION_get0_peer(sess);
	long long made = SSL_SESSION_get_time(sess), life = SSL_SESSION_get_timeout(sess), not_before, not_after;

	if (peer == NULL || !cert_time(X509_get0_notBefore(peer), &not_before) ||
	    !cert_time(X509_get0_notAfter(peer), &not_after) || made < not_before || made >= not_after)
		life = -1;
	else if (not_after - 1 - made < life)
		life = not_after - 1 - made;
	return life;
}

/*
 * A resumed handshake verifies no certificate: OpenSSL takes the session's verification
 * result as it was when the session was made. So no session outlives its client
 * certificate: each one nhid caches ends at the certificate's notAfter. nhid's sessions
 * are all in the SSL_CTX cache (TLS 1.2 session ids, TLS 1.3 stateful tickets; with
 * SSL_OP_NO_TICKET there is no stateless ticket, so a ticket decrypt callback would never
 * run), and OpenSSL checks a cached session's timeout on every resumption offered, both
 * versions (ssl_get_prev_session): an expired one is a cache miss, the client gets a full
 * handshake, which verifies the certificate and fails with certificate_expired, audited
 * as handshake_rejected like any expired certificate. Resumable up to the last second
 * the certificate verifies in (X509_cmp_time: notAfter itself is expired). A session
 * made outside the validity (no certificate, a clock stepped back) is not kept at all.
 * OpenSSL calls this once per new session, after adding it to the cache and without
 * holding the cache's lock, which SSL_SESSION_set_timeout takes to re-sort it. A clock
 * set back before notBefore after the session was made is left to routes.c caller(),
 * which checks the validity on every request.
 */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	long long life = session_life(sess);

	if (life < 0 || (life < SSL_SESSION_get_timeout(sess) && SSL_SESSION_set_timeout(sess, (long)life) != 1))
		(void)SSL_CTX_remove_session(SSL_get_SSL_CTX(ssl), sess); /* not kept if it cannot be bounded */
	return 0; /* OpenSSL keeps its reference; this keeps none */
}

/*
 * TLS 1.3: the NewSessionTicket's lifetime hint is the session's timeout when the ticket
 * is built, which is before new_session_cb (OpenSSL caches the session after sending the
 * ticket). The timeout is capped here too, so a client is not told to keep a ticket past
 * its certificate's notAfter (it would offer it, miss, and make a full handshake that
 * fails). The session is not in the cache yet, so SSL_SESSION_set_timeout takes no lock.
 * Never fails the handshake: a session that cannot be bounded is dropped by
 * new_session_cb.
 */
static int ticket_gen_cb(SSL *ssl, void *arg)
{
	SSL_SESSION *sess = SSL_get_session(ssl);
	long long life = sess != NULL ? session_life(sess) : -1;

	(void)arg;
	if (life >= 0 && life < SSL_SESSION_get_timeout(sess))
		(void)SSL_SESSION_set_timeout(sess, (long)life);
	return 1;
}

/* connections over the limit are refused at the ClientHello, before any crypto */
static int client_hello_cb(SSL *ssl, int *alert, void *arg)
{
	struct nhi_conn *c = nhi_tls_conn(ssl);

	(void)arg;
	if (c != NULL && c->over_limit) {
		*alert = SSL_AD_HANDSHAKE_FAILURE;
		return SSL_CLIENT_HELLO_ERROR;
	}
	return SSL_CLIENT_HELLO_SUCCESS;
}

nhi_err nhi_tls_chain_parse(const uint8_t *pem, size_t len, const char *what, X509 **leaf, STACK_OF(X509) **rest)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	BIO *b = NULL;
	X509 *x = NULL, *first = NULL;
	STACK_OF(X509) *chain = NULL;
	size_t n = 0;

	*leaf = NULL;
	*rest = NULL;
	NHI_CHECK(len > 0 && len <= (size_t)NHI_CERT_MAX_BYTES * NHI_SERVER_CHAIN_CERTS_MAX && len <= INT_MAX,
		  NHI_ERR_LIMIT, "%s: certificate chain is empty or over %d bytes", what,
		  NHI_CERT_MAX_BYTES * NHI_SERVER_CHAIN_CERTS_MAX);
	b = BIO_new_mem_buf(pem, (int)len);
	chain = sk_X509_new_null();
	NHI_CHECK_SSL(b != NULL && chain != NULL, NHI_ERR_NOMEM, "out of memory");
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		NHI_CHECK(++n <= NHI_SERVER_CHAIN_CERTS_MAX, NHI_ERR_LIMIT, "%s: more than %d certificates in the chain",
			  what, NHI_SERVER_CHAIN_CERTS_MAX);
		if (first == NULL) {
			first = x;
		} else {
			NHI_CHECK_SSL(sk_X509_push(chain, x) > 0, NHI_ERR_NOMEM, "out of memory");
		}
		x = NULL;
	}
	ERR_clear_error(); /* the end of the PEM stream */
	NHI_CHECK(first != NULL, NHI_ERR_FORMAT, "%s: no PEM certificate in it", what);
	*leaf = first;
	first = NULL;
	*rest = chain;
	chain = NULL;
	rv = NHI_OK;
out:
	X509_free(x);
	X509_free(first);
	sk_X509_pop_free(chain, X509_free);
	BIO_free(b);
	return rv;
}

nhi_err nhi_tls_ctx_new(struct nhi_server *s, const uint8_t *chain_pem, size_t len, const char *what, EVP_PKEY *pkey,
			SSL_CTX **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	SSL_CTX *ctx = NULL;
	STACK_OF(X509_NAME) *cas = NULL;
	X509 *leaf = NULL;
	STACK_OF(X509) *rest = NULL;
	static const unsigned char sid_ctx[] = "nhid";

	*out = NULL;
	NHI_TRY(nhi_tls_chain_parse(chain_pem, len, what, &leaf, &rest));
	ctx = SSL_CTX_new(TLS_server_method());
	NHI_CHECK_SSL(ctx != NULL, NHI_ERR_CRYPTO, "SSL_CTX_new");
	NHI_CHECK_SSL(SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 &&
			      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1,
		      NHI_ERR_CRYPTO, "setting TLS versions");
	/* TLS 1.2: ECDHE with ECDSA and AEAD only; TLS 1.3 suites are all AEAD */
	NHI_CHECK_SSL(SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
						   "ECDHE-ECDSA-CHACHA20-POLY1305") == 1 &&
			      SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
							    "TLS_CHACHA20_POLY1305_SHA256") == 1,
		      NHI_ERR_CRYPTO, "setting cipher suites");
	NHI_CHECK_SSL(SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") == 1, NHI_ERR_CRYPTO, "setting groups");
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION | SSL_OP_CLEANSE_PLAINTEXT);
	NHI_CHECK_SSL(SSL_CTX_use_certificate(ctx, leaf) == 1 && SSL_CTX_set1_chain(ctx, rest) == 1, NHI_ERR_CONFIG,
		      "loading the server certificate chain %s", what);
	/* the private key stays in the token: every handshake signature is made there */
	NHI_CHECK_SSL(SSL_CTX_use_PrivateKey(ctx, pkey) == 1 && SSL_CTX_check_private_key(ctx) == 1, NHI_ERR_CONFIG,
		      "%s does not match key '%s' in the token: wrong certificate file or token", what, s->tls_label);
	NHI_CHECK_SSL(SSL_CTX_load_verify_locations(ctx, s->cfg.ca_file, NULL) == 1, NHI_ERR_CONFIG,
		      "loading the trust root %s", s->cfg.ca_file);
	cas = SSL_load_client_CA_file(s->cfg.ca_file);
	NHI_CHECK_SSL(cas != NULL, NHI_ERR_CONFIG, "reading CA names from %s", s->cfg.ca_file);
	SSL_CTX_set_client_CA_list(ctx, cas);
	cas = NULL;
	/* no certificate, or one that does not chain to our root: the handshake fails */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT | SSL_VERIFY_CLIENT_ONCE, NULL);
	SSL_CTX_set_verify_depth(ctx, 2);
	NHI_CHECK_SSL(SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) == 1, NHI_ERR_CRYPTO, "client purpose");
	/*
	 * Resumption from a session cache in this process (TLS 1.2 session ids, TLS 1.3
	 * stateful tickets, one per handshake), not stateless tickets: OpenSSL 3.0 makes
	 * each stateless ticket by encoding the session, decoding it again and encoding
	 * the copy, and the decode re-parses the client certificate and its public key
	 * (OSSL_DECODER): two tickets per TLS 1.3 handshake were a third of nhid's
	 * CPU per full handshake (1.59 -> 1.02 ms). No ticket key exists to protect or
	 * rotate either. The id context is required with client certificates.
	 */
	NHI_CHECK_SSL(SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) == 1, NHI_ERR_CRYPTO,
		      "session id context");
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	NHI_CHECK_SSL(SSL_CTX_set_num_tickets(ctx, 1) == 1, NHI_ERR_CRYPTO, "TLS 1.3 ticket count");
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_sess_set_cache_size(ctx, s->cfg.tls_sessions); /* >= 1: OpenSSL reads 0 as unbounded */
	SSL_CTX_set_timeout(ctx, 3600);
	SSL_CTX_sess_set_new_cb(ctx, new_session_cb); /* and never past the client certificate's notAfter */
	NHI_CHECK_SSL(SSL_CTX_set_session_ticket_cb(ctx, ticket_gen_cb, NULL, NULL) == 1, NHI_ERR_CRYPTO,
		      "TLS 1.3 ticket callback"); /* nor is a ticket's lifetime hint */
	SSL_CTX_set_info_callback(ctx, info_cb);
	SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, NULL);
	*out = ctx;
	ctx = NULL;
	rv = NHI_OK;
out:
	sk_X509_NAME_pop_free(cas, X509_NAME_free);
	SSL_CTX_free(ctx);
	X509_free(leaf);
	sk_X509_pop_free(rest, X509_free);
	return rv;
}
