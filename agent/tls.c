/*
 * agent/tls.c — the client's credentials, its TLS profile (mbedTLS 2.28) and its
 * one connection: bounded TCP connect, handshake, reads and writes.
 *
 * Profile: TLS 1.2 only; ECDHE-ECDSA with AES-128/256-GCM only; ECDHE and
 * certificate keys on P-256; signatures with SHA-256/384; server certificate
 * verification required. mbedTLS 2.28 checks a host name against dNSName SANs (or
 * the CN) only, so when the name to verify is an IP literal we do not hand it to
 * mbedTLS: the verify callback matches it against the certificate's iPAddress SANs
 * (RFC 9525 §6.2: an IP reference identity matches iPAddress SANs, never a CN).
 */
#include "agent_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <mbedtls/asn1.h>
#include <mbedtls/ecp.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CLOSE_NOTIFY_MS 200 /* how long closing may wait to send close_notify */

static const int suites[] = {
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	0,
};
static const mbedtls_ecp_group_id curves[] = {MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE};
static const int sig_hashes[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_NONE};
/* every certificate of the server's chain: ECDSA P-256, signed with SHA-256/384/512 */
static const mbedtls_x509_crt_profile cert_profile = {
	.allowed_mds = MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA256) | MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA384) |
		       MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA512),
	.allowed_pks = MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECDSA) | MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECKEY),
	.allowed_curves = MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP256R1),
	.rsa_min_bitlen = 0xFFFFFFF, /* no RSA at all */
};

long long nhi_agent_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- files ---- */

/*
 * Read a whole file, NUL-terminated (mbedTLS wants the NUL counted for PEM).
 * secret: the file must be a regular file of ours that group/others cannot touch,
 * and is not followed through a symlink; the buffer is wiped on every path.
 */
static nhi_agent_err read_file(const char *what, const char *path, size_t max_bytes, bool secret,
			       uint8_t **out, size_t *out_len)
{
	nhi_agent_err rv = NHI_AGENT_E_FILE;
	struct stat st;
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;
	ssize_t n;
	int fd = -1;

	/* O_NONBLOCK: a FIFO (or a device) must be refused below by fstat, not block open()
	 * forever, out of reach of the timeouts; a regular file reads the same with it */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (secret ? O_NOFOLLOW : 0));
	AG_CHECK(fd >= 0, NHI_AGENT_E_FILE, "cannot open %s %s: %s%s", what, path, strerror(errno),
		 errno == ELOOP ? " (a symlink: point at the file itself)" : "");
	AG_CHECK(fstat(fd, &st) == 0, NHI_AGENT_E_FILE, "cannot stat %s %s: %s", what, path, strerror(errno));
	AG_CHECK(S_ISREG(st.st_mode), NHI_AGENT_E_FILE, "%s %s is not a regular file", what, path);
	if (secret) {
		AG_CHECK(st.st_uid == geteuid(), NHI_AGENT_E_FILE,
			 "%s %s is owned by uid %u, not by uid %u that runs the agent: chown %u %s", what, path,
			 (unsigned)st.st_uid, (unsigned)geteuid(), (unsigned)geteuid(), path);
		AG_CHECK((st.st_mode & 077) == 0, NHI_AGENT_E_FILE,
			 "%s %s is mode %04o, readable by group or others: chmod 600 %s", what, path,
			 (unsigned)(st.st_mode & 07777), path);
	}
	AG_CHECK(st.st_size >= 0 && (unsigned long long)st.st_size <= max_bytes, NHI_AGENT_E_FILE,
		 "%s %s is %lld bytes, over the %zu-byte limit", what, path, (long long)st.st_size, max_bytes);
	cap = (size_t)st.st_size + 1;
	buf = malloc(cap);
	AG_CHECK(buf != NULL, NHI_AGENT_E_NOMEM, "out of memory reading %s %s", what, path);
	while (len < cap - 1) {
		n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		AG_CHECK(n >= 0, NHI_AGENT_E_FILE, "cannot read %s %s: %s", what, path, strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	AG_CHECK(len > 0, NHI_AGENT_E_FILE, "%s %s is empty", what, path);
	buf[len] = '\0';
	*out = buf;
	*out_len = len + 1;
	buf = NULL;
	rv = NHI_AGENT_OK;
out:
	if (buf != NULL) {
		mbedtls_platform_zeroize(buf, cap);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	return rv;
}

static bool is_p256(const mbedtls_pk_context *pk)
{
	return mbedtls_pk_get_type(pk) == MBEDTLS_PK_ECKEY && mbedtls_pk_ec(*pk)->grp.id == MBEDTLS_ECP_DP_SECP256R1;
}

static void fmt_time(const mbedtls_x509_time *t, char *buf, size_t size)
{
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02dZ", t->year, t->mon, t->day, t->hour, t->min, t->sec);
}

static nhi_agent_err load_credentials(struct nhi_agent_client *c, const struct nhi_agent_config *cfg)
{
	nhi_agent_err rv = NHI_AGENT_E_FILE;
	uint8_t *buf = NULL;
	size_t len = 0;
	char err[200], when[32];
	int ret;

	/* trust anchors */
	AG_TRY(read_file("CA file", cfg->ca_file, NHI_AGENT_CERT_FILE_MAX_BYTES, false, &buf, &len));
	ret = mbedtls_x509_crt_parse(&c->ca, buf, len);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret == 0, NHI_AGENT_E_FILE, "CA file %s: %s", cfg->ca_file,
		 ret > 0 ? "a certificate in it does not parse (fix or remove it)" : err);
	free(buf);
	buf = NULL;

	/* our certificate (leaf first) */
	AG_TRY(read_file("certificate file", cfg->cert_file, NHI_AGENT_CERT_FILE_MAX_BYTES, false, &buf, &len));
	ret = mbedtls_x509_crt_parse(&c->cert, buf, len);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret == 0, NHI_AGENT_E_FILE, "certificate file %s: %s", cfg->cert_file,
		 ret > 0 ? "a certificate in it does not parse" : err);
	free(buf);
	buf = NULL;
	AG_CHECK(is_p256(&c->cert.pk), NHI_AGENT_E_FILE,
		 "certificate %s does not hold an EC P-256 key: enroll the agent with a P-256 key", cfg->cert_file);
	fmt_time(&c->cert.valid_to, when, sizeof(when));
	AG_CHECK(!mbedtls_x509_time_is_past(&c->cert.valid_to), NHI_AGENT_E_FILE,
		 "certificate %s expired at %s: re-enroll the agent (nhictl enroll) for a new one", cfg->cert_file,
		 when);
	fmt_time(&c->cert.valid_from, when, sizeof(when));
	AG_CHECK(!mbedtls_x509_time_is_future(&c->cert.valid_from), NHI_AGENT_E_FILE,
		 "certificate %s is not valid before %s: check this machine's clock", cfg->cert_file, when);

	/* our private key: secret file, wiped as soon as it is parsed */
	AG_TRY(read_file("key file", cfg->key_file, NHI_AGENT_KEY_FILE_MAX_BYTES, true, &buf, &len));
	ret = mbedtls_pk_parse_key(&c->key, buf, len, NULL, 0);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret != MBEDTLS_ERR_PK_PASSWORD_REQUIRED, NHI_AGENT_E_FILE,
		 "key file %s is encrypted: the agent needs an unencrypted key in a 0600 file", cfg->key_file);
	AG_CHECK(ret == 0, NHI_AGENT_E_FILE, "key file %s: %s", cfg->key_file, err);
	AG_CHECK(is_p256(&c->key), NHI_AGENT_E_FILE, "key file %s is not an EC P-256 key", cfg->key_file);
	AG_CHECK(mbedtls_pk_check_pair(&c->cert.pk, &c->key) == 0, NHI_AGENT_E_FILE,
		 "key file %s does not match certificate %s: pass the key that was enrolled with it", cfg->key_file,
		 cfg->cert_file);
	rv = NHI_AGENT_OK;
out:
	if (buf != NULL) {
		mbedtls_platform_zeroize(buf, len);
		free(buf);
	}
	return rv;
}

/* ---- names ---- */

static bool ip_san_matches(const mbedtls_x509_crt *crt, const uint8_t *ip, size_t ip_len)
{
	const mbedtls_x509_sequence *cur = NULL;

	if (crt->ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME)
		cur = &crt->subject_alt_names;
	/* RFC 5280 §4.2.1.6: iPAddress [7] IMPLICIT OCTET STRING of 4 or 16 octets */
	while (cur != NULL && !(cur->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && cur->buf.len == ip_len &&
				memcmp(cur->buf.p, ip, ip_len) == 0))
		cur = cur->next;
	return cur != NULL;
}

static int verify_cb(void *ctx, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
	struct nhi_agent_client *c = ctx;

	if (depth == 0 && c->name_is_ip && !ip_san_matches(crt, c->name_ip, c->name_ip_len)) {
		*flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
		c->ip_mismatch = true;
	}
	return 0;
}

static nhi_agent_err set_names(struct nhi_agent_client *c, const struct nhi_agent_config *cfg)
{
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	const char *name = cfg->servername != NULL ? cfg->servername : cfg->host;
	uint8_t tmp[16];
	bool host_v6;

	AG_CHECK(strlen(cfg->host) <= NHI_AGENT_HOST_MAX_BYTES && (inet_pton(AF_INET, cfg->host, tmp) == 1 ||
								    inet_pton(AF_INET6, cfg->host, tmp) == 1 ||
								    nhi_agent_dns_name_ok(cfg->host, strlen(cfg->host))),
		 NHI_AGENT_E_ARG, "server host '%.80s' is not a DNS name or IP address", cfg->host);
	AG_CHECK(name[0] != '\0' && strlen(name) <= NHI_AGENT_HOST_MAX_BYTES, NHI_AGENT_E_ARG,
		 "server name to verify is empty or too long");
	host_v6 = inet_pton(AF_INET6, cfg->host, tmp) == 1;
	snprintf(c->host, sizeof(c->host), "%s", cfg->host);
	snprintf(c->name, sizeof(c->name), "%s", name);
	snprintf(c->host_header, sizeof(c->host_header), host_v6 ? "[%s]:%u" : "%s:%u", cfg->host,
		 (unsigned)cfg->port);
	if (inet_pton(AF_INET, name, c->name_ip) == 1) {
		c->name_is_ip = true;
		c->name_ip_len = 4;
	} else if (inet_pton(AF_INET6, name, c->name_ip) == 1) {
		c->name_is_ip = true;
		c->name_ip_len = 16;
	} else {
		AG_CHECK(nhi_agent_dns_name_ok(name, strlen(name)), NHI_AGENT_E_ARG,
			 "server name '%.80s' is not a DNS name or IP address", name);
	}
	rv = NHI_AGENT_OK;
out:
	return rv;
}

/* ---- set-up ---- */

nhi_agent_err nhi_agent_tls_init(struct nhi_agent_client *c, const struct nhi_agent_config *cfg)
{
	static const char pers[] = "nhi-agent";
	nhi_agent_err rv = NHI_AGENT_E_ARG;
	char err[200];
	int ret;

	mbedtls_entropy_init(&c->entropy);
	mbedtls_ctr_drbg_init(&c->drbg);
	mbedtls_x509_crt_init(&c->ca);
	mbedtls_x509_crt_init(&c->cert);
	mbedtls_pk_init(&c->key);
	mbedtls_ssl_config_init(&c->conf);
	mbedtls_ssl_init(&c->ssl);
	mbedtls_ssl_session_init(&c->session);
	c->fd = -1;

	AG_CHECK(cfg != NULL, NHI_AGENT_E_ARG, "no configuration given");
	AG_CHECK(cfg->host != NULL && cfg->host[0] != '\0', NHI_AGENT_E_ARG,
		 "no server host: give one (--server https://HOST:PORT)");
	AG_CHECK(cfg->port != 0, NHI_AGENT_E_ARG, "no server port: give one (--server https://HOST:PORT)");
	AG_CHECK(cfg->ca_file != NULL && cfg->ca_file[0] != '\0', NHI_AGENT_E_ARG,
		 "no CA file: give the deployment's ca.crt (--ca FILE)");
	AG_CHECK(cfg->cert_file != NULL && cfg->cert_file[0] != '\0', NHI_AGENT_E_ARG,
		 "no client certificate: the server requires one (--cert FILE)");
	AG_CHECK(cfg->key_file != NULL && cfg->key_file[0] != '\0', NHI_AGENT_E_ARG,
		 "no private key for the client certificate (--key FILE)");
	AG_CHECK(cfg->connect_timeout_ms <= NHI_AGENT_TIMEOUT_MS_MAX && cfg->io_timeout_ms <= NHI_AGENT_TIMEOUT_MS_MAX,
		 NHI_AGENT_E_ARG, "timeouts are capped at %d ms", NHI_AGENT_TIMEOUT_MS_MAX);
	AG_CHECK(cfg->response_max_bytes <= NHI_AGENT_RESPONSE_MAX_BYTES_MAX, NHI_AGENT_E_ARG,
		 "response_max_bytes is capped at %d", NHI_AGENT_RESPONSE_MAX_BYTES_MAX);
	AG_TRY(set_names(c, cfg));
	c->port = cfg->port;
	c->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : NHI_AGENT_CONNECT_TIMEOUT_MS_DEFAULT;
	c->io_timeout_ms = cfg->io_timeout_ms ? cfg->io_timeout_ms : NHI_AGENT_IO_TIMEOUT_MS_DEFAULT;
	c->response_max_bytes = cfg->response_max_bytes ? cfg->response_max_bytes : NHI_AGENT_RESPONSE_MAX_BYTES_DEFAULT;
	snprintf(c->ca_file, sizeof(c->ca_file), "%s", cfg->ca_file);
	snprintf(c->cert_file, sizeof(c->cert_file), "%s", cfg->cert_file);

	/* a DRBG of our own per client, seeded from the OS entropy sources */
	ret = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy, (const unsigned char *)pers,
				    sizeof(pers) - 1);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret == 0, NHI_AGENT_E_INTERNAL, "cannot seed the random generator: %s", err);
	AG_TRY(load_credentials(c, cfg));

	ret = mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
					  MBEDTLS_SSL_PRESET_DEFAULT);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret == 0, NHI_AGENT_E_INTERNAL, "TLS defaults: %s", err);
	mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_max_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_ciphersuites(&c->conf, suites);
	mbedtls_ssl_conf_curves(&c->conf, curves);
	mbedtls_ssl_conf_sig_hashes(&c->conf, sig_hashes);
	mbedtls_ssl_conf_cert_profile(&c->conf, &cert_profile);
	mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
	mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
	mbedtls_ssl_conf_verify(&c->conf, verify_cb, c);
	mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
	mbedtls_ssl_conf_read_timeout(&c->conf, c->io_timeout_ms);
	mbedtls_ssl_conf_renegotiation(&c->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
	mbedtls_ssl_conf_session_tickets(&c->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
	mbedtls_ssl_conf_extended_master_secret(&c->conf, MBEDTLS_SSL_EXTENDED_MS_ENABLED);
	ret = mbedtls_ssl_conf_own_cert(&c->conf, &c->cert, &c->key);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret == 0, NHI_AGENT_E_INTERNAL, "TLS client certificate: %s", err);
	ret = mbedtls_ssl_setup(&c->ssl, &c->conf);
	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	AG_CHECK(ret == 0, NHI_AGENT_E_NOMEM, "TLS context: %s", err);
	rv = NHI_AGENT_OK;
out:
	return rv;
}

void nhi_agent_tls_free(struct nhi_agent_client *c)
{
	nhi_agent_conn_close(c, true);
	mbedtls_ssl_free(&c->ssl);
	mbedtls_ssl_config_free(&c->conf);
	mbedtls_ssl_session_free(&c->session);
	mbedtls_pk_free(&c->key); /* zeroizes the key material */
	mbedtls_x509_crt_free(&c->cert);
	mbedtls_x509_crt_free(&c->ca);
	mbedtls_ctr_drbg_free(&c->drbg);
	mbedtls_entropy_free(&c->entropy);
}

/* ---- bounded I/O under mbedTLS ---- */

/* 1 ready, 0 timed out (deadline or cap_ms), -1 error */
static int wait_fd(struct nhi_agent_client *c, short events, uint32_t cap_ms)
{
	struct pollfd p;
	long long left;
	int r;

	do {
		left = c->deadline_ms - nhi_agent_now_ms();
		if (left <= 0) {
			r = 0;
			break;
		}
		if (cap_ms != 0 && left > (long long)cap_ms)
			left = cap_ms;
		p.fd = c->fd;
		p.events = events;
		p.revents = 0;
		r = poll(&p, 1, (int)left);
	} while (r < 0 && errno == EINTR);
	return r < 0 ? -1 : (r > 0 ? 1 : 0);
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct nhi_agent_client *c = ctx;
	ssize_t n;
	int rc = MBEDTLS_ERR_NET_SEND_FAILED, w;

	for (;;) {
		n = send(c->fd, buf, len, MSG_NOSIGNAL); /* never SIGPIPE the embedding program */
		if (n >= 0) {
			rc = (int)n;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			rc = (errno == EPIPE || errno == ECONNRESET) ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_SEND_FAILED;
			break;
		}
		w = wait_fd(c, POLLOUT, 0);
		if (w <= 0) {
			rc = w == 0 ? MBEDTLS_ERR_SSL_TIMEOUT : MBEDTLS_ERR_NET_SEND_FAILED;
			break;
		}
	}
	return rc;
}

static int bio_recv_timeout(void *ctx, unsigned char *buf, size_t len, uint32_t timeout_ms)
{
	struct nhi_agent_client *c = ctx;
	ssize_t n;
	int rc = MBEDTLS_ERR_NET_RECV_FAILED, w;

	for (;;) {
		n = recv(c->fd, buf, len, 0);
		if (n >= 0) {
			rc = (int)n;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			rc = errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
			break;
		}
		/* the config's read timeout, and never past the call's deadline */
		w = wait_fd(c, POLLIN, timeout_ms);
		if (w <= 0) {
			rc = w == 0 ? MBEDTLS_ERR_SSL_TIMEOUT : MBEDTLS_ERR_NET_RECV_FAILED;
			break;
		}
	}
	return rc;
}

/* ---- connect + handshake ---- */

static nhi_agent_err tcp_connect(struct nhi_agent_client *c)
{
	nhi_agent_err rv = NHI_AGENT_E_CONNECT;
	struct addrinfo hints, *res = NULL, *ai;
	char port[8];
	long long deadline = nhi_agent_now_ms() + c->connect_timeout_ms;
	int gai, fd = -1, err = 0, one = 1, r;
	socklen_t elen;
	struct pollfd p;

	if (deadline > c->deadline_ms)
		deadline = c->deadline_ms;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", (unsigned)c->port);
	gai = getaddrinfo(c->host, port, &hints, &res);
	AG_CHECK(gai == 0, NHI_AGENT_E_CONNECT, "cannot resolve server host '%s': %s: use an IP address or a name in /etc/hosts",
		 c->host, gai_strerror(gai));
	for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		err = 0;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			err = errno;
			if (err == EINPROGRESS) {
				err = ETIMEDOUT;
				for (;;) {
					long long left = deadline - nhi_agent_now_ms();

					if (left <= 0)
						break;
					p.fd = fd;
					p.events = POLLOUT;
					p.revents = 0;
					r = poll(&p, 1, (int)left);
					if (r < 0 && errno == EINTR)
						continue;
					if (r > 0) {
						elen = sizeof(err);
						if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
							err = errno;
					}
					break;
				}
			}
		}
		if (err != 0) {
			close(fd);
			fd = -1;
		}
	}
	AG_CHECK(fd >= 0, NHI_AGENT_E_CONNECT, "cannot connect to %s: %s%s", c->host_header,
		 err == ETIMEDOUT ? "timed out" : strerror(err),
		 err == ECONNREFUSED ? ": is nhid running and listening on that address and port?"
		 : err == ETIMEDOUT ? ": check the address, the port and the firewall"
				    : "");
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	fd = -1;
	rv = NHI_AGENT_OK;
out:
	if (fd >= 0)
		close(fd);
	if (res != NULL)
		freeaddrinfo(res);
	return rv;
}

/* RFC 5246 §7.2 / RFC 8446 §6 alert descriptions a server may refuse us with */
static const char *alert_name(int a)
{
	static const struct {
		int code;
		const char *name;
	} alerts[] = {
		{10, "unexpected_message"},   {20, "bad_record_mac"},    {40, "handshake_failure"},
		{42, "bad_certificate"},      {43, "unsupported_certificate"}, {44, "certificate_revoked"},
		{45, "certificate_expired"},  {46, "certificate_unknown"}, {47, "illegal_parameter"},
		{48, "unknown_ca"},           {49, "access_denied"},     {50, "decode_error"},
		{51, "decrypt_error"},        {70, "protocol_version"},  {71, "insufficient_security"},
		{80, "internal_error"},       {109, "missing_extension"}, {112, "unrecognized_name"},
		{116, "certificate_required"},
	};
	const char *name = "other";
	size_t i;

	for (i = 0; i < sizeof(alerts) / sizeof(alerts[0]); i++)
		if (alerts[i].code == a)
			name = alerts[i].name;
	return name;
}

static void join_lines(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
		s[--n] = '\0';
	for (; *s != '\0'; s++)
		if (*s == '\n')
			*s = ';';
}

static nhi_agent_err handshake_error(struct nhi_agent_client *c, int ret)
{
	nhi_agent_err rv = NHI_AGENT_E_TLS;
	char why[300], name_why[200], err[200];
	uint32_t flags;
	int alert;

	nhi_agent_mbed_strerror(ret, err, sizeof(err));
	switch (ret) {
	case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
		flags = mbedtls_ssl_get_verify_result(&c->ssl);
		why[0] = name_why[0] = '\0';
		if ((flags & ~MBEDTLS_X509_BADCERT_CN_MISMATCH) != 0) {
			mbedtls_x509_crt_verify_info(why, sizeof(why), " ", flags & ~MBEDTLS_X509_BADCERT_CN_MISMATCH);
			join_lines(why);
		}
		/* mbedTLS words a name mismatch as a CN one; say which identity was missing */
		if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
			snprintf(name_why, sizeof(name_why), "%s it does not carry %s %s", why[0] ? ";" : "",
				 c->name_is_ip ? "an iPAddress SAN" : "the DNS name", c->name);
		rv = nhi_agent_set_error(
			NHI_AGENT_E_VERIFY, "server certificate of %s rejected:%s%s: %s", c->host_header, why, name_why,
			(flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) ? "check that the CA file is the deployment's ca.crt"
			: (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
				? "connect with a name or address on the certificate, or pass --servername NAME"
			: (flags & (MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE))
				? "check this machine's clock, or renew the server certificate"
				: "the server certificate must be ECDSA P-256 signed with SHA-256/384 by the deployment CA");
		break;
	case MBEDTLS_ERR_SSL_TIMEOUT:
		rv = nhi_agent_set_error(NHI_AGENT_E_TIMEOUT,
					 "TLS handshake with %s timed out after %u ms: is it an nhid TLS port?",
					 c->host_header, c->io_timeout_ms);
		break;
	case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:
		/* the alert record is still in the input buffer (public fields in mbedTLS 2.28) */
		alert = (c->ssl.in_msgtype == MBEDTLS_SSL_MSG_ALERT && c->ssl.in_msg != NULL && c->ssl.in_msglen >= 2)
				? c->ssl.in_msg[1]
				: -1;
		if (alert == 40 || alert == 70 || alert == 71)
			rv = nhi_agent_set_error(NHI_AGENT_E_TLS,
						 "server %s refused the TLS handshake: alert %s (%d): it must accept TLS 1.2 "
						 "with ECDHE-ECDSA-AES-GCM on P-256",
						 c->host_header, alert_name(alert), alert);
		else
			rv = nhi_agent_set_error(NHI_AGENT_E_TLS,
						 "server %s refused the TLS handshake: alert %s (%d): check that %s is an "
						 "agent certificate issued by the deployment's CA, enrolled and not revoked",
						 c->host_header, alert_name(alert), alert, c->cert_file);
		break;
	case MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE:
	case MBEDTLS_ERR_SSL_BAD_HS_SERVER_HELLO:
	case MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION:
		rv = nhi_agent_set_error(NHI_AGENT_E_TLS,
					 "TLS handshake with %s failed: %s: the server must offer TLS 1.2 with "
					 "ECDHE-ECDSA-AES-GCM on P-256",
					 c->host_header, err);
		break;
	case MBEDTLS_ERR_NET_CONN_RESET:
	case MBEDTLS_ERR_SSL_CONN_EOF:
	case MBEDTLS_ERR_NET_RECV_FAILED:
	case MBEDTLS_ERR_NET_SEND_FAILED:
		rv = nhi_agent_set_error(NHI_AGENT_E_TLS,
					 "server %s closed the connection during the TLS handshake (%s): it refused our "
					 "certificate %s, or it is not a TLS 1.2 server",
					 c->host_header, err, c->cert_file);
		break;
	default:
		rv = nhi_agent_set_error(NHI_AGENT_E_TLS, "TLS handshake with %s failed: %s", c->host_header, err);
		break;
	}
	return rv;
}

static void forget_session(struct nhi_agent_client *c)
{
	mbedtls_ssl_session_free(&c->session); /* zeroizes the master secret */
	mbedtls_ssl_session_init(&c->session);
	c->have_session = false;
}

nhi_agent_err nhi_agent_conn_open(struct nhi_agent_client *c)
{
	nhi_agent_err rv = NHI_AGENT_E_TLS;
	char err[200];
	bool offered;
	int ret, attempt;

	nhi_agent_conn_close(c, false);
	for (attempt = 0;; attempt++) {
		AG_TRY(tcp_connect(c));
		ret = mbedtls_ssl_session_reset(&c->ssl);
		nhi_agent_mbed_strerror(ret, err, sizeof(err));
		AG_CHECK(ret == 0, NHI_AGENT_E_INTERNAL, "TLS reset: %s", err);
		/* an IP literal is neither sent as SNI (RFC 6066 §3) nor given to mbedTLS: see verify_cb */
		ret = mbedtls_ssl_set_hostname(&c->ssl, c->name_is_ip ? NULL : c->name);
		nhi_agent_mbed_strerror(ret, err, sizeof(err));
		AG_CHECK(ret == 0, NHI_AGENT_E_INTERNAL, "TLS host name: %s", err);
		mbedtls_ssl_set_bio(&c->ssl, c, bio_send, NULL, bio_recv_timeout);
		offered = c->have_session && mbedtls_ssl_set_session(&c->ssl, &c->session) == 0;
		c->ip_mismatch = false;
		do
			ret = mbedtls_ssl_handshake(&c->ssl);
		while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
		if (ret == 0)
			break;
		rv = handshake_error(c, ret);
		forget_session(c);
		nhi_agent_conn_close(c, false);
		/* resumption is an optimisation: a server that chokes on our session gets one full handshake */
		if (!offered || attempt > 0 || ret == MBEDTLS_ERR_SSL_TIMEOUT || ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED)
			goto out;
	}
	forget_session(c);
	c->have_session = mbedtls_ssl_get_session(&c->ssl, &c->session) == 0;
	c->connected = true;
	c->connections++;
	rv = NHI_AGENT_OK;
out:
	if (rv != NHI_AGENT_OK)
		nhi_agent_conn_close(c, false);
	return rv;
}

void nhi_agent_conn_close(struct nhi_agent_client *c, bool notify)
{
	if (c->fd < 0)
		return;
	if (notify && c->connected) {
		c->deadline_ms = nhi_agent_now_ms() + CLOSE_NOTIFY_MS;
		(void)mbedtls_ssl_close_notify(&c->ssl);
	}
	close(c->fd);
	c->fd = -1;
	c->connected = false;
}

bool nhi_agent_conn_stale(struct nhi_agent_client *c)
{
	struct pollfd p;
	bool stale = !c->connected || c->fd < 0 || mbedtls_ssl_get_bytes_avail(&c->ssl) > 0;

	if (!stale) {
		/* an idle connection has nothing to read: input now is a close_notify, a FIN or junk */
		p.fd = c->fd;
		p.events = POLLIN;
		p.revents = 0;
		stale = poll(&p, 1, 0) != 0;
	}
	return stale;
}

nhi_agent_err nhi_agent_conn_write(struct nhi_agent_client *c, const void *buf, size_t len)
{
	nhi_agent_err rv = NHI_AGENT_E_TLS;
	const unsigned char *p = buf;
	char err[200];
	int ret;

	while (len > 0) {
		ret = mbedtls_ssl_write(&c->ssl, p, len);
		if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
			continue;
		AG_CHECK(ret != MBEDTLS_ERR_SSL_TIMEOUT, NHI_AGENT_E_TIMEOUT,
			 "sending the request to %s timed out after %u ms", c->host_header, c->io_timeout_ms);
		nhi_agent_mbed_strerror(ret, err, sizeof(err));
		AG_CHECK(ret > 0, NHI_AGENT_E_TLS, "cannot send the request to %s: %s", c->host_header, err);
		p += ret;
		len -= (size_t)ret;
	}
	rv = NHI_AGENT_OK;
out:
	return rv;
}

nhi_agent_err nhi_agent_conn_read(struct nhi_agent_client *c, uint8_t *buf, size_t size, size_t *n, bool *eof,
				  bool *clean)
{
	nhi_agent_err rv = NHI_AGENT_E_TLS;
	char err[200];
	int ret;

	*n = 0;
	*eof = *clean = false;
	do
		ret = mbedtls_ssl_read(&c->ssl, buf, size);
	while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
	if (ret > 0) {
		*n = (size_t)ret;
	} else if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
		*eof = *clean = true;
	} else if (ret == 0 || ret == MBEDTLS_ERR_NET_CONN_RESET) {
		*eof = true;
	} else {
		AG_CHECK(ret != MBEDTLS_ERR_SSL_TIMEOUT, NHI_AGENT_E_TIMEOUT,
			 "no complete answer from %s within %u ms (io timeout)", c->host_header, c->io_timeout_ms);
		nhi_agent_mbed_strerror(ret, err, sizeof(err));
		AG_CHECK(false, NHI_AGENT_E_TLS, "reading the answer from %s failed: %s", c->host_header, err);
	}
	rv = NHI_AGENT_OK;
out:
	return rv;
}
