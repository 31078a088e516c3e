/*
 * tests/unit/test_agent.c — agent/ (nhi-agent library): URL and configuration
 * checks, the HTTP response parser and JSON handling (tables, whole and
 * byte-by-byte), and the client against real TLS peers:
 *   - `openssl s_server -WWW` (a separate process, real OpenSSL, client cert
 *     required) for the handshake and certificate-name cases;
 *   - an in-process OpenSSL server thread with a script of answers for POST,
 *     keep-alive, reconnect, resumption, limits and timeouts.
 * Certificates are made per run with the openssl CLI in a temporary directory.
 * Only 127.0.0.1; ports from the kernel (bind to port 0); every wait bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../agent/agent_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TOKEN "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJlLXNpZw"

static char dir[256]; /* the run's PKI and web roots */

/* "<dir>/<name>" in one of 64 rotating slots: enough for any one test's config */
static const char *P(const char *name)
{
	static char slots[64][400];
	static unsigned next;
	char *s = slots[next++ % 64];

	snprintf(s, sizeof(slots[0]), "%s/%s", dir, name);
	return s;
}

static void sh(const char *cmd)
{
	char full[8192];

	snprintf(full, sizeof(full), "cd '%s' && { %s\n}", dir, cmd);
	if (system(full) != 0)
		fail_msg("shell step failed: %s", cmd);
}

static const char pki_script[] =
	"set -e\n"
	"ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \"$1\" 2>/dev/null; chmod 600 \"$1\"; }\n"
	"mkca() { ec $1.key; openssl req -x509 -new -key $1.key -subj \"/CN=$1\" -days 3 -out $1.crt"
	" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null; }\n"
	"leaf() { ec $1.key; openssl req -new -key $1.key -subj \"/CN=${4:-$1}\" -out $1.csr 2>/dev/null;"
	" printf '%b' \"$3\" >$1.ext;"
	" openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -days 2 -extfile $1.ext -out $1.crt"
	" 2>/dev/null; }\n"
	"SRV='extendedKeyUsage=serverAuth\\nkeyUsage=critical,digitalSignature\\n'\n"
	"CLI='extendedKeyUsage=clientAuth\\nkeyUsage=critical,digitalSignature\\n'\n"
	"mkca ca; mkca other\n"
	"leaf srv ca \"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\\n$SRV\"\n"
	"leaf wrongname ca \"subjectAltName=DNS:wrong.example,IP:10.9.9.9\\n$SRV\"\n"
	"leaf dnsonly ca \"subjectAltName=DNS:localhost\\n$SRV\"\n"
	"leaf cnonly ca \"$SRV\" 127.0.0.1\n"
	"leaf agent ca \"subjectAltName=URI:spiffe://nhid.test/agent/demo\\n$CLI\"\n"
	"leaf stranger other \"subjectAltName=URI:spiffe://nhid.test/agent/stranger\\n$CLI\"\n"
	/* certificates valid in 2020 only, through `openssl ca` (x509 -req cannot backdate) */
	"mkdir -p db; : >db/index.txt; echo 01 >db/serial\n"
	"printf '[ca]\\ndefault_ca = d\\n[d]\\ndatabase = db/index.txt\\nnew_certs_dir = db\\nserial = db/serial\\n"
	"default_md = sha256\\npolicy = p\\n[p]\\ncommonName = supplied\\n' >ca.cnf\n"
	"openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in srv.csr -out expired.crt -notext"
	" -startdate 20200101000000Z -enddate 20200102000000Z -extfile srv.ext 2>/dev/null\n"
	"openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in agent.csr -out agent-expired.crt -notext"
	" -startdate 20200101000000Z -enddate 20200102000000Z -extfile agent.ext 2>/dev/null\n"
	"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384.key 2>/dev/null; chmod 600 p384.key\n"
	"openssl req -x509 -new -key p384.key -subj /CN=p384 -days 2 -out p384.crt 2>/dev/null\n"
	"openssl pkey -in agent.key -aes256 -passout pass:secret -out encrypted.key; chmod 600 encrypted.key\n"
	"cat ca.crt >bad-bundle.crt; printf -- '-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n'"
	" >>bad-bundle.crt\n"
	"printf 'not a certificate\\n' >garbage.crt\n"
	"mkdir -p www/v1 empty; printf '{\"status\":\"ok\"}' >www/v1/health\n"
	"printf '{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\"}]}' >www/v1/jwks\n";

static int group_setup(void **state)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	(void)state;
	signal(SIGPIPE, SIG_IGN); /* the test server writes to clients that went away */
	snprintf(dir, sizeof(dir), "%s/nhi-unit-agent-XXXXXX", tmp);
	if (mkdtemp(dir) == NULL)
		return -1;
	sh(pki_script);
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[400];

	(void)state;
	if (strstr(dir, "/nhi-unit-agent-") != NULL) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return 0;
}

static struct nhi_agent_config cfg_for(uint16_t port)
{
	struct nhi_agent_config c;

	memset(&c, 0, sizeof(c));
	c.host = "127.0.0.1";
	c.port = port;
	c.ca_file = P("ca.crt");
	c.cert_file = P("agent.crt");
	c.key_file = P("agent.key");
	c.connect_timeout_ms = 3000;
	c.io_timeout_ms = 5000;
	return c;
}

static struct nhi_agent_client *client_ok(const struct nhi_agent_config *cfg)
{
	struct nhi_agent_client *c = NULL;
	nhi_agent_err e = nhi_agent_client_new(cfg, &c);

	if (e != NHI_AGENT_OK)
		fail_msg("client_new: %s: %s", nhi_agent_err_name(e), nhi_agent_error());
	return c;
}

#define assert_detail_has(s)                                                                       \
	do {                                                                                       \
		if (strstr(nhi_agent_error(), (s)) == NULL)                                        \
			fail_msg("detail '%s' does not mention '%s'", nhi_agent_error(), (s));     \
	} while (0)

static uint16_t free_port(void)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	uint16_t port;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* ================= pure parts: URL, request, response, JSON ================= */

static void test_parse_url(void **state)
{
	static const struct {
		const char *url;
		const char *host; /* NULL: refused */
		uint16_t port;
	} t[] = {
		{"https://127.0.0.1:8443", "127.0.0.1", 8443},
		{"https://127.0.0.1:8443/", "127.0.0.1", 8443},
		{"HTTPS://localhost:1", "localhost", 1},
		{"https://nhid.example.internal", "nhid.example.internal", 443},
		{"https://[::1]:8443", "::1", 8443},
		{"https://[fd00::10]:65535", "fd00::10", 65535},
		{"http://127.0.0.1:8443", NULL, 0},
		{"ftp://h:1", NULL, 0},
		{"127.0.0.1:8443", NULL, 0},
		{"", NULL, 0},
		{"https://", NULL, 0},
		{"https://:8443", NULL, 0},
		{"https://h:0", NULL, 0},
		{"https://h:65536", NULL, 0},
		{"https://h:99999999999", NULL, 0},
		{"https://h:-1", NULL, 0},
		{"https://user@h:1", NULL, 0},
		{"https://user:pw@h:1", NULL, 0},
		{"https://h:1/v1/tokens", NULL, 0},
		{"https://h:1?x=1", NULL, 0},
		{"https://h:1#f", NULL, 0},
		{"https://h_x:1", NULL, 0},
		{"https://h..x:1", NULL, 0},
		{"https://[zz::1]:1", NULL, 0},
		{"https://[::1%25eth0]:1", NULL, 0},
		{"https://h x:1", NULL, 0},
	};
	char host[NHI_AGENT_HOST_MAX_BYTES + 1];
	uint16_t port;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		port = 7;
		nhi_agent_err e = nhi_agent_parse_url(t[i].url, host, sizeof(host), &port);

		if (t[i].host == NULL) {
			if (e != NHI_AGENT_E_ARG)
				fail_msg("'%s' accepted as host '%s' port %u", t[i].url, host, port);
			assert_string_equal(host, "");
			assert_true(strlen(nhi_agent_error()) > 0);
		} else {
			if (e != NHI_AGENT_OK)
				fail_msg("'%s' refused: %s", t[i].url, nhi_agent_error());
			assert_string_equal(host, t[i].host);
			assert_int_equal(port, t[i].port);
		}
	}
	/* a host too long for the caller's buffer is refused, not truncated */
	assert_int_equal(nhi_agent_parse_url("https://abcdefgh:1", host, 4, &port), NHI_AGENT_E_ARG);
}

static void test_format_request(void **state)
{
	char *req = NULL;
	size_t len = 0;

	(void)state;
	assert_int_equal(nhi_agent_format_request("GET", "/v1/health", "127.0.0.1:8443", NULL, 0, &req, &len),
			 NHI_AGENT_OK);
	assert_string_equal(req, "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: nhi-agent/1\r\n"
				 "Accept: application/json\r\n\r\n");
	assert_int_equal(len, strlen(req));
	free(req);
	assert_int_equal(nhi_agent_format_request("POST", "/v1/tokens", "[::1]:1", "{\"aud\":\"x\"}", 11, &req, &len),
			 NHI_AGENT_OK);
	assert_non_null(strstr(req, "POST /v1/tokens HTTP/1.1\r\nHost: [::1]:1\r\n"));
	assert_non_null(strstr(req, "Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"aud\":\"x\"}"));
	assert_int_equal(len, strlen(req));
	free(req);
	/* no request splitting through any of the parts */
	assert_int_equal(nhi_agent_format_request("GET", "/x\r\nEvil: 1", "h:1", NULL, 0, &req, &len), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_format_request("GET", "/x", "h:1\r\n", NULL, 0, &req, &len), NHI_AGENT_E_ARG);
	assert_null(req);
}

static void test_sanitize(void **state)
{
	char out[32];
	const char *hostile = "a\x1b[31mb\nc\x7f\xc3\xa9";

	(void)state;
	nhi_agent_sanitize(out, sizeof(out), hostile, strlen(hostile), 100);
	assert_string_equal(out, "a?[31mb?c???");
	nhi_agent_sanitize(out, sizeof(out), "abcdefghij", 10, 4);
	assert_string_equal(out, "abcd...");
	nhi_agent_sanitize(out, 4, "abcdefghij", 10, 100);
	assert_string_equal(out, "abc");
	assert_string_equal(nhi_agent_err_name(NHI_AGENT_E_VERIFY), "verify");
	assert_string_equal(nhi_agent_err_name((nhi_agent_err)999), "unknown");
}

struct resp_case {
	const char *name;
	const char *raw;
	size_t body_max;
	int eof;              /* 0 none, 1 clean close_notify, 2 close without close_notify */
	nhi_agent_err want;   /* from feed, or from eof when the response needed it */
	int status;
	const char *body;
	bool keep_alive;
};

static const struct resp_case resp_cases[] = {
	{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}", 1024, 0,
	 NHI_AGENT_OK, 200, "{\"status\":\"ok\"}", true},
	{"connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 1024, 0,
	 NHI_AGENT_OK, 200, "{}", false},
	{"http/1.0 until close_notify", "HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\n{\"a\":1}", 1024, 1,
	 NHI_AGENT_OK, 200, "{\"a\":1}", false},
	{"http/1.0 cut without close_notify", "HTTP/1.0 200 ok\r\n\r\n{\"a\":1}", 1024, 2, NHI_AGENT_E_PROTOCOL, 0,
	 NULL, false},
	{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 1024, 0,
	 NHI_AGENT_OK, 200, "{}", true},
	{"chunked with extension and trailer",
	 "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n1;x=y\r\n{\r\n1\r\n}\r\n0\r\nT: 1\r\n\r\n", 1024,
	 0, NHI_AGENT_OK, 403, "{}", true},
	{"no content", "HTTP/1.1 204 No Content\r\n\r\n", 1024, 0, NHI_AGENT_OK, 204, NULL, true},
	{"declared body over the cap", "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{}", 1024, 0,
	 NHI_AGENT_E_TOO_LARGE, 0, NULL, false},
	{"chunked body over the cap", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
	 10, 0, NHI_AGENT_E_TOO_LARGE, 0, NULL, false},
	{"http/1.0 body over the cap", "HTTP/1.0 200 ok\r\n\r\n0123456789abcdef", 10, 1, NHI_AGENT_E_TOO_LARGE, 0,
	 NULL, false},
	{"not http", "SSH-2.0-OpenSSH_9.2\r\n", 1024, 0, NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"bad version", "HTTP/9.x 200 OK\r\n\r\n", 1024, 0, NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"interim 100", "HTTP/1.1 100 Continue\r\n\r\n", 1024, 0, NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"bad content-length", "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n{}", 1024, 0, NHI_AGENT_E_PROTOCOL, 0,
	 NULL, false},
	{"two content-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 1024, 0,
	 NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1024, 0,
	 NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", 1024, 1, NHI_AGENT_E_PROTOCOL, 0, NULL,
	 false},
	{"truncated headers", "HTTP/1.1 200 OK\r\nContent-Le", 1024, 1, NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"closed before answering", "", 1024, 1, NHI_AGENT_E_PROTOCOL, 0, NULL, false},
	{"bytes after the response", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n", 1024, 0,
	 NHI_AGENT_OK, 200, "{}", false},
	{"nul in body", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na\0b", 1024, 0, NHI_AGENT_OK, 200, "a", true},
};

/* feed raw in pieces of `step` bytes (0 = all at once), then the close if the case has one */
static nhi_agent_err run_resp(const struct resp_case *c, size_t raw_len, size_t step, struct nhi_agent_resp *r)
{
	nhi_agent_err e = NHI_AGENT_OK;
	size_t off = 0, n;

	nhi_agent_resp_init(r, c->body_max);
	while (off < raw_len && e == NHI_AGENT_OK && !r->complete) {
		n = step == 0 ? raw_len - off : (raw_len - off < step ? raw_len - off : step);
		e = nhi_agent_resp_feed(r, (const uint8_t *)c->raw + off, n);
		off += n;
	}
	/* once complete, anything left over arrives as a further read */
	if (e == NHI_AGENT_OK && off < raw_len)
		e = nhi_agent_resp_feed(r, (const uint8_t *)c->raw + off, raw_len - off);
	if (e == NHI_AGENT_OK && c->eof != 0)
		e = nhi_agent_resp_eof(r, c->eof == 1);
	return e;
}

static void test_response_parser(void **state)
{
	static const size_t steps[] = {0, 1, 3, 7};
	struct nhi_agent_resp r;
	size_t i, s, raw_len;
	nhi_agent_err e;

	(void)state;
	for (i = 0; i < sizeof(resp_cases) / sizeof(resp_cases[0]); i++) {
		const struct resp_case *c = &resp_cases[i];

		raw_len = strcmp(c->name, "nul in body") == 0 ? strlen(c->raw) + 2 : strlen(c->raw);
		for (s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
			e = run_resp(c, raw_len, steps[s], &r);
			if (e != c->want)
				fail_msg("case '%s' step %zu: got %s (%s), want %s", c->name, steps[s],
					 nhi_agent_err_name(e), nhi_agent_error(), nhi_agent_err_name(c->want));
			if (c->want == NHI_AGENT_OK) {
				assert_true(r.complete);
				assert_int_equal(r.status, c->status);
				if (c->body != NULL) {
					assert_non_null(r.body);
					assert_string_equal((const char *)r.body, c->body);
				} else {
					assert_int_equal(r.body_len, 0);
				}
				if (r.keep_alive != c->keep_alive)
					fail_msg("case '%s' step %zu: keep_alive %d", c->name, steps[s], r.keep_alive);
			} else {
				assert_true(strlen(nhi_agent_error()) > 0);
			}
			nhi_agent_resp_clear(&r);
		}
	}
}

static void test_response_header_limits(void **state)
{
	char *raw = malloc(64 * 1024);
	struct nhi_agent_resp r;
	size_t n = 0;
	int i;

	(void)state;
	assert_non_null(raw);
	n += (size_t)sprintf(raw + n, "HTTP/1.1 200 OK\r\n");
	for (i = 0; i <= NHI_AGENT_HEADER_MAX_COUNT; i++)
		n += (size_t)sprintf(raw + n, "X-%d: y\r\n", i);
	n += (size_t)sprintf(raw + n, "Content-Length: 0\r\n\r\n");
	nhi_agent_resp_init(&r, 1024);
	assert_int_equal(nhi_agent_resp_feed(&r, (uint8_t *)raw, n), NHI_AGENT_E_TOO_LARGE);
	assert_detail_has("header fields");
	nhi_agent_resp_clear(&r);

	n = (size_t)sprintf(raw, "HTTP/1.1 200 OK\r\nX-Big: ");
	memset(raw + n, 'a', NHI_AGENT_HEADER_MAX_BYTES);
	n += NHI_AGENT_HEADER_MAX_BYTES;
	n += (size_t)sprintf(raw + n, "\r\nContent-Length: 0\r\n\r\n");
	nhi_agent_resp_init(&r, 1024);
	assert_int_equal(nhi_agent_resp_feed(&r, (uint8_t *)raw, n), NHI_AGENT_E_TOO_LARGE);
	assert_detail_has("headers exceed");
	nhi_agent_resp_clear(&r);
	free(raw);
}

static nhi_agent_err status_of(const char *raw)
{
	struct nhi_agent_resp r;
	nhi_agent_err e;

	nhi_agent_resp_init(&r, 4096);
	e = nhi_agent_resp_feed(&r, (const uint8_t *)raw, strlen(raw));
	if (e == NHI_AGENT_OK)
		e = nhi_agent_resp_check_status(&r);
	nhi_agent_resp_clear(&r);
	return e;
}

static nhi_agent_err status_body(int status, const char *body)
{
	char raw[1024];

	snprintf(raw, sizeof(raw), "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n\r\n%s", status, strlen(body), body);
	return status_of(raw);
}

static void test_response_status(void **state)
{
	(void)state;
	assert_int_equal(status_of("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), NHI_AGENT_OK);
	assert_int_equal(status_of("HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n"), NHI_AGENT_E_PROTOCOL);
	assert_detail_has("HTTP 302");
	assert_int_equal(status_body(403, "{\"error\":\"forbidden\",\"detail\":\"audience 'x' is not allowed\"}"),
			 NHI_AGENT_E_REFUSED);
	assert_string_equal(nhi_agent_error(),
			    "server refused the request: HTTP 403 forbidden: audience 'x' is not allowed");
	assert_int_equal(status_body(401, "{\"error\":\"invalid_token\"}"),
			 NHI_AGENT_E_REFUSED);
	assert_string_equal(nhi_agent_error(), "server refused the request: HTTP 401 invalid_token");
	assert_int_equal(status_of("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n\r\n<html>x\x1b[0m"),
			 NHI_AGENT_E_REFUSED);
	assert_detail_has("HTTP 502 (no JSON error; body: <html>x?[0m)");
	/* hostile error text: control characters replaced, length capped */
	assert_int_equal(status_body(413, "{\"error\":\"too_large\",\"detail\":\"\\u001b[2J\\nboom\"}"),
			 NHI_AGENT_E_REFUSED);
	assert_string_equal(nhi_agent_error(), "server refused the request: HTTP 413 too_large: ?[2J?boom");
}

static void test_json_token(void **state)
{
	char tok[NHI_AGENT_TOKEN_MAX_BYTES], *big;
	const char *ok = "{\"token\":\"" TOKEN "\",\"expires_at\":1700000300}";
	long long exp = 0;
	size_t n;

	(void)state;
	assert_int_equal(nhi_agent_json_token((const uint8_t *)ok, strlen(ok), tok, sizeof(tok), &exp), NHI_AGENT_OK);
	assert_string_equal(tok, TOKEN);
	assert_int_equal(exp, 1700000300);
	/* too small a buffer: refused, and the token is not in the message */
	assert_int_equal(nhi_agent_json_token((const uint8_t *)ok, strlen(ok), tok, 16, &exp), NHI_AGENT_E_SPACE);
	assert_string_equal(tok, "");
	assert_null(strstr(nhi_agent_error(), "eyJ"));
#define BAD_TOKEN(json, code)                                                                              \
	assert_int_equal(nhi_agent_json_token((const uint8_t *)(json), strlen(json), tok, sizeof(tok), &exp), (code))
	BAD_TOKEN("", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("[]", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"" TOKEN "\"", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":7,\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"" TOKEN "\",\"expires_at\":\"1\"}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"" TOKEN "\",\"expires_at\":-5}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"" TOKEN "\",\"expires_at\":1.5}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"a.b\",\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"a..c\",\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"a.b.c.d\",\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"a.b.c\\n\",\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	BAD_TOKEN("{\"token\":\"a.b.c\",\"token\":\"d.e.f\",\"expires_at\":1}", NHI_AGENT_E_PROTOCOL);
	/* a token over the limit */
	big = malloc(NHI_AGENT_TOKEN_MAX_BYTES + 64);
	assert_non_null(big);
	n = (size_t)sprintf(big, "{\"token\":\"a.b.");
	memset(big + n, 'c', NHI_AGENT_TOKEN_MAX_BYTES);
	n += NHI_AGENT_TOKEN_MAX_BYTES;
	n += (size_t)sprintf(big + n, "\",\"expires_at\":1}");
	assert_int_equal(nhi_agent_json_token((uint8_t *)big, n, tok, sizeof(tok), &exp), NHI_AGENT_E_TOO_LARGE);
	free(big);
}

static void test_json_objects(void **state)
{
	static const char *const rq[] = {"agent", "claims", NULL};
	static const char *const keys[] = {"keys", NULL};
	const char *good = "{\"agent\":{\"id\":\"demo\"},\"claims\":{\"sub\":\"demo\"}, \"x\" : 1}";
	char *out = NULL;

	(void)state;
	assert_int_equal(nhi_agent_json_object((const uint8_t *)good, strlen(good), rq, "oo", &out), NHI_AGENT_OK);
	assert_string_equal(out, "{\"agent\":{\"id\":\"demo\"},\"claims\":{\"sub\":\"demo\"},\"x\":1}");
	free(out);
	out = (char *)1;
	assert_int_equal(nhi_agent_json_object((const uint8_t *)"{\"agent\":{}}", 12, rq, "oo", &out),
			 NHI_AGENT_E_PROTOCOL);
	assert_null(out);
	assert_detail_has("\"claims\" object");
	assert_int_equal(nhi_agent_json_object((const uint8_t *)"{\"agent\":[],\"claims\":{}}", 24, rq, "oo", &out),
			 NHI_AGENT_E_PROTOCOL);
	assert_int_equal(nhi_agent_json_object((const uint8_t *)"{\"keys\":[]}", 11, keys, "a", &out), NHI_AGENT_OK);
	assert_string_equal(out, "{\"keys\":[]}");
	free(out);
	assert_int_equal(nhi_agent_json_object((const uint8_t *)"{\"keys\":{}}", 11, keys, "a", &out),
			 NHI_AGENT_E_PROTOCOL);
	assert_int_equal(nhi_agent_json_object((const uint8_t *)"{\"keys\":[]} x", 13, keys, "a", &out),
			 NHI_AGENT_E_PROTOCOL);
	assert_detail_has("not JSON");
	assert_int_equal(nhi_agent_json_health((const uint8_t *)"{\"status\":\"ok\"}", 15), NHI_AGENT_OK);
	assert_int_equal(nhi_agent_json_health((const uint8_t *)"{\"status\":\"draining\"}", 21), NHI_AGENT_E_REFUSED);
	assert_detail_has("draining");
	assert_int_equal(nhi_agent_json_health((const uint8_t *)"{\"status\":1}", 12), NHI_AGENT_E_PROTOCOL);
	assert_int_equal(nhi_agent_json_health((const uint8_t *)"\"ok\"", 4), NHI_AGENT_E_PROTOCOL);
}

/* ================= configuration ================= */

static nhi_agent_err new_err(const struct nhi_agent_config *cfg)
{
	struct nhi_agent_client *c = NULL;
	nhi_agent_err e = nhi_agent_client_new(cfg, &c);

	if (e == NHI_AGENT_OK)
		nhi_agent_client_free(c);
	else
		assert_null(c);
	return e;
}

static void test_config_valid(void **state)
{
	struct nhi_agent_config cfg = cfg_for(8443);
	struct nhi_agent_client *c;

	(void)state;
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_connections(c), 0); /* no connection before the first call */
	assert_int_equal(nhi_agent_http_status(c), 0);
	nhi_agent_client_free(c);
	nhi_agent_client_free(NULL);
	cfg.servername = "::1";
	assert_int_equal(new_err(&cfg), NHI_AGENT_OK);
	cfg.host = "localhost";
	cfg.servername = NULL;
	assert_int_equal(new_err(&cfg), NHI_AGENT_OK);
}

static void test_config_refused(void **state)
{
	struct nhi_agent_config cfg;

	(void)state;
	assert_int_equal(new_err(NULL), NHI_AGENT_E_ARG);
#define REFUSE(field, value, code, text)                                                                   \
	do {                                                                                               \
		cfg = cfg_for(8443);                                                                       \
		cfg.field = value;                                                                         \
		assert_int_equal(new_err(&cfg), (code));                                                   \
		assert_detail_has(text);                                                                   \
	} while (0)
	REFUSE(host, NULL, NHI_AGENT_E_ARG, "no server host");
	REFUSE(host, "", NHI_AGENT_E_ARG, "no server host");
	REFUSE(host, "bad host", NHI_AGENT_E_ARG, "not a DNS name or IP address");
	REFUSE(port, 0, NHI_AGENT_E_ARG, "no server port");
	REFUSE(ca_file, NULL, NHI_AGENT_E_ARG, "--ca");
	REFUSE(cert_file, NULL, NHI_AGENT_E_ARG, "the server requires one");
	REFUSE(key_file, "", NHI_AGENT_E_ARG, "--key");
	REFUSE(servername, "a/b", NHI_AGENT_E_ARG, "not a DNS name or IP address");
	REFUSE(io_timeout_ms, NHI_AGENT_TIMEOUT_MS_MAX + 1, NHI_AGENT_E_ARG, "capped");
	REFUSE(response_max_bytes, NHI_AGENT_RESPONSE_MAX_BYTES_MAX + 1, NHI_AGENT_E_ARG, "capped");
	REFUSE(ca_file, P("nonexistent.crt"), NHI_AGENT_E_FILE, "No such file");
	REFUSE(ca_file, P("garbage.crt"), NHI_AGENT_E_FILE, "garbage.crt");
	REFUSE(ca_file, P("bad-bundle.crt"), NHI_AGENT_E_FILE, "does not parse");
	REFUSE(ca_file, dir, NHI_AGENT_E_FILE, "not a regular file");
	REFUSE(cert_file, P("p384.crt"), NHI_AGENT_E_FILE, "P-256");
	REFUSE(cert_file, P("agent-expired.crt"), NHI_AGENT_E_FILE, "expired at 2020-01-02");
	REFUSE(key_file, P("srv.key"), NHI_AGENT_E_FILE, "does not match certificate");
	REFUSE(key_file, P("p384.key"), NHI_AGENT_E_FILE, "not an EC P-256 key");
	REFUSE(key_file, P("encrypted.key"), NHI_AGENT_E_FILE, "is encrypted");
	REFUSE(key_file, P("agent.crt"), NHI_AGENT_E_FILE, "agent.crt");
	REFUSE(key_file, P("nonexistent.key"), NHI_AGENT_E_FILE, "No such file");
}

/*
 * A FIFO in place of a file is refused at once: open() used to block until a writer
 * came, with no timeout (the alarm turns such a hang into a failure).
 */
static void test_fifo_files_refused(void **state)
{
	struct nhi_agent_config cfg;

	(void)state;
	sh("rm -f fifo.key fifo.crt && mkfifo -m 600 fifo.key && mkfifo -m 600 fifo.crt");
	alarm(20);
	REFUSE(key_file, P("fifo.key"), NHI_AGENT_E_FILE, "fifo.key is not a regular file");
	REFUSE(cert_file, P("fifo.crt"), NHI_AGENT_E_FILE, "fifo.crt is not a regular file");
	REFUSE(ca_file, P("fifo.crt"), NHI_AGENT_E_FILE, "fifo.crt is not a regular file");
	alarm(0);
}

static void test_key_file_mode(void **state)
{
	static const mode_t bad[] = {0644, 0640, 0604, 0620, 0602, 0610, 0601, 0660};
	struct nhi_agent_config cfg = cfg_for(8443);
	char want[64];
	size_t i;

	(void)state;
	sh("cp agent.key mode.key && chmod 600 mode.key && ln -sf agent.key link.key");
	cfg.key_file = P("mode.key");
	assert_int_equal(new_err(&cfg), NHI_AGENT_OK);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(chmod(cfg.key_file, bad[i]), 0);
		assert_int_equal(new_err(&cfg), NHI_AGENT_E_FILE);
		snprintf(want, sizeof(want), "is mode %04o", (unsigned)bad[i]);
		assert_detail_has(want);
		assert_detail_has("chmod 600");
	}
	assert_int_equal(chmod(cfg.key_file, 0400), 0);
	assert_int_equal(new_err(&cfg), NHI_AGENT_OK);
	/* a symlink is not followed to the key */
	cfg.key_file = P("link.key");
	assert_int_equal(new_err(&cfg), NHI_AGENT_E_FILE);
	assert_detail_has("symlink");
	/* a directory is not a key */
	cfg.key_file = dir;
	assert_int_equal(new_err(&cfg), NHI_AGENT_E_FILE);
}

/* ================= openssl s_server -WWW ================= */

struct sserver {
	pid_t pid;
	uint16_t port;
	char log[400];
};

/* start `openssl s_server -WWW` in docroot with this cert/key, client cert required */
static void s_server_start(struct sserver *s, const char *docroot, const char *cert, const char *key,
			   const char *const *extra)
{
	char buf[4096];
	int attempt, i;

	memset(s, 0, sizeof(*s));
	for (attempt = 0; attempt < 5; attempt++) {
		pid_t pid;

		s->port = free_port();
		snprintf(s->log, sizeof(s->log), "%s/s_server-%u.log", dir, (unsigned)s->port);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			const char *argv[40];
			char acc[32], certp[400], keyp[400], cap[400], root[400];
			int n = 0, fd;

			snprintf(acc, sizeof(acc), "127.0.0.1:%u", (unsigned)s->port);
			snprintf(certp, sizeof(certp), "%s/%s", dir, cert);
			snprintf(keyp, sizeof(keyp), "%s/%s", dir, key);
			snprintf(cap, sizeof(cap), "%s/ca.crt", dir);
			snprintf(root, sizeof(root), "%s/%s", dir, docroot);
			fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			if (fd < 0 || chdir(root) != 0)
				_exit(126);
			dup2(fd, 1);
			dup2(fd, 2);
			fd = open("/dev/null", O_RDONLY);
			dup2(fd, 0);
			argv[n++] = "openssl";
			argv[n++] = "s_server";
			argv[n++] = "-accept";
			argv[n++] = acc;
			argv[n++] = "-cert";
			argv[n++] = certp;
			argv[n++] = "-key";
			argv[n++] = keyp;
			argv[n++] = "-CAfile";
			argv[n++] = cap;
			argv[n++] = "-Verify";
			argv[n++] = "1";
			argv[n++] = "-verify_return_error"; /* without it s_server only logs a bad client cert */
			argv[n++] = "-WWW";
			for (i = 0; extra != NULL && extra[i] != NULL && n < 38; i++)
				argv[n++] = extra[i];
			argv[n] = NULL;
			execvp("openssl", (char *const *)argv);
			_exit(127);
		}
		for (i = 0; i < 100; i++) { /* up to 10 s for "ACCEPT" */
			FILE *f = fopen(s->log, "r");
			size_t got = 0;
			int st;

			if (f != NULL) {
				got = fread(buf, 1, sizeof(buf) - 1, f);
				fclose(f);
			}
			buf[got] = '\0';
			if (strstr(buf, "ACCEPT") != NULL) {
				s->pid = pid;
				return;
			}
			if (waitpid(pid, &st, WNOHANG) == pid) {
				pid = 0;
				break;
			}
			usleep(100 * 1000);
		}
		if (pid > 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
	}
	fail_msg("openssl s_server did not start: see %s", s->log);
}

static void s_server_stop(struct sserver *s)
{
	int i;

	if (s->pid <= 0)
		return;
	kill(s->pid, SIGTERM);
	for (i = 0; i < 50; i++) {
		if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
			s->pid = 0;
			return;
		}
		usleep(100 * 1000);
	}
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

/* one client call against a fresh s_server with this cert; returns the call's result */
static nhi_agent_err health_against(const char *cert, const char *key, const char *const *extra,
				    const char *servername, const char *client_cert, const char *client_key,
				    const char *ca)
{
	struct sserver s;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	nhi_agent_err e;

	s_server_start(&s, "www", cert, key, extra);
	cfg = cfg_for(s.port);
	cfg.servername = servername;
	if (client_cert != NULL) {
		cfg.cert_file = P(client_cert);
		cfg.key_file = P(client_key);
	}
	if (ca != NULL)
		cfg.ca_file = P(ca);
	c = client_ok(&cfg);
	e = nhi_agent_health(c);
	nhi_agent_client_free(c);
	s_server_stop(&s);
	return e;
}

static void test_s_server_fetch(void **state)
{
	struct sserver s;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	char *json = NULL;

	(void)state;
	s_server_start(&s, "www", "srv.crt", "srv.key", NULL);
	cfg = cfg_for(s.port);
	c = client_ok(&cfg);
	if (nhi_agent_health(c) != NHI_AGENT_OK)
		fail_msg("health: %s", nhi_agent_error());
	assert_int_equal(nhi_agent_http_status(c), 200);
	if (nhi_agent_jwks(c, &json) != NHI_AGENT_OK)
		fail_msg("jwks: %s", nhi_agent_error());
	assert_string_equal(json, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\"}]}");
	free(json);
	/* s_server answers HTTP/1.0 and closes: each call needed its own connection */
	assert_int_equal(nhi_agent_connections(c), 2);
	nhi_agent_client_free(c);

	/* verified by DNS name (mbedTLS's own check), by IPv6 SAN, and through name resolution */
	cfg.servername = "localhost";
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_OK);
	nhi_agent_client_free(c);
	cfg.servername = "::1";
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_OK);
	nhi_agent_client_free(c);
	cfg.servername = NULL;
	cfg.host = "localhost";
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_OK);
	nhi_agent_client_free(c);
	s_server_stop(&s);
}

static void test_s_server_missing_file(void **state)
{
	struct sserver s;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	char *json = (char *)1;

	(void)state;
	s_server_start(&s, "empty", "srv.crt", "srv.key", NULL);
	cfg = cfg_for(s.port);
	c = client_ok(&cfg);
	/* s_server says "Error opening" in a 200 text/plain page: not nhid's JSON */
	assert_int_equal(nhi_agent_jwks(c, &json), NHI_AGENT_E_PROTOCOL);
	assert_null(json);
	assert_detail_has("not JSON");
	nhi_agent_client_free(c);
	s_server_stop(&s);
}

static void test_s_server_wrong_ca(void **state)
{
	(void)state;
	assert_int_equal(health_against("srv.crt", "srv.key", NULL, NULL, NULL, NULL, "other.crt"), NHI_AGENT_E_VERIFY);
	assert_detail_has("not correctly signed by the trusted CA");
	assert_detail_has("deployment's ca.crt");
}

static void test_s_server_wrong_name(void **state)
{
	(void)state;
	/* IP literal checked against iPAddress SANs by our callback */
	assert_int_equal(health_against("wrongname.crt", "wrongname.key", NULL, NULL, NULL, NULL, NULL),
			 NHI_AGENT_E_VERIFY);
	assert_detail_has("does not carry an iPAddress SAN 127.0.0.1");
	/* DNS name checked by mbedTLS */
	assert_int_equal(health_against("wrongname.crt", "wrongname.key", NULL, "localhost", NULL, NULL, NULL),
			 NHI_AGENT_E_VERIFY);
	assert_detail_has("does not carry the DNS name localhost");
	assert_detail_has("--servername");
	/* the right certificate, asked for another address */
	assert_int_equal(health_against("srv.crt", "srv.key", NULL, "10.9.9.9", NULL, NULL, NULL), NHI_AGENT_E_VERIFY);
	assert_int_equal(health_against("srv.crt", "srv.key", NULL, "::2", NULL, NULL, NULL), NHI_AGENT_E_VERIFY);
	assert_int_equal(health_against("srv.crt", "srv.key", NULL, "nhid.example", NULL, NULL, NULL),
			 NHI_AGENT_E_VERIFY);
}

static void test_s_server_ip_needs_ip_san(void **state)
{
	(void)state;
	/* a DNS SAN "localhost" does not vouch for 127.0.0.1 ... */
	assert_int_equal(health_against("dnsonly.crt", "dnsonly.key", NULL, NULL, NULL, NULL, NULL), NHI_AGENT_E_VERIFY);
	assert_detail_has("iPAddress SAN 127.0.0.1");
	/* ... but does for the name localhost */
	assert_int_equal(health_against("dnsonly.crt", "dnsonly.key", NULL, "localhost", NULL, NULL, NULL), NHI_AGENT_OK);
	/* RFC 9525: a CN of "127.0.0.1" never identifies an IP address */
	assert_int_equal(health_against("cnonly.crt", "cnonly.key", NULL, NULL, NULL, NULL, NULL), NHI_AGENT_E_VERIFY);
}

static void test_s_server_expired(void **state)
{
	(void)state;
	assert_int_equal(health_against("expired.crt", "srv.key", NULL, NULL, NULL, NULL, NULL), NHI_AGENT_E_VERIFY);
	assert_detail_has("expired");
	assert_detail_has("clock");
}

static void test_s_server_refuses_client(void **state)
{
	(void)state;
	/* the server requires a client certificate from its CA: one from another CA fails the handshake */
	assert_int_equal(health_against("srv.crt", "srv.key", NULL, NULL, "stranger.crt", "stranger.key", NULL),
			 NHI_AGENT_E_TLS);
	assert_detail_has("refused");
	assert_detail_has("stranger.crt");
}

static void test_s_server_profile(void **state)
{
	static const char *const tls13[] = {"-tls1_3", NULL};
	static const char *const chacha[] = {"-no_tls1_3", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305", NULL};
	static const char *const cbc[] = {"-no_tls1_3", "-cipher", "ECDHE-ECDSA-AES128-SHA256", NULL};
	static const char *const p384[] = {"-no_tls1_3", "-groups", "P-384", NULL};

	(void)state;
	/* TLS 1.2 only: a TLS 1.3-only server refuses us */
	assert_int_equal(health_against("srv.crt", "srv.key", tls13, NULL, NULL, NULL, NULL), NHI_AGENT_E_TLS);
	assert_detail_has("TLS 1.2");
	/* AES-GCM only: no ChaCha20, no CBC */
	assert_int_equal(health_against("srv.crt", "srv.key", chacha, NULL, NULL, NULL, NULL), NHI_AGENT_E_TLS);
	assert_int_equal(health_against("srv.crt", "srv.key", cbc, NULL, NULL, NULL, NULL), NHI_AGENT_E_TLS);
	/* ECDHE on P-256 only */
	assert_int_equal(health_against("srv.crt", "srv.key", p384, NULL, NULL, NULL, NULL), NHI_AGENT_E_TLS);
	/* and the same server with the profile's suites is fine */
	assert_int_equal(health_against("srv.crt", "srv.key", (const char *const[]){"-no_tls1_3", "-cipher",
							     "ECDHE-ECDSA-AES128-GCM-SHA256", NULL},
					NULL, NULL, NULL, NULL),
			 NHI_AGENT_OK);
}

/* ================= in-process OpenSSL server with a script ================= */

struct step {
	char *response; /* bytes to send; NULL with hang/drop */
	bool close_after; /* close (with close_notify) after answering */
	bool drop;        /* read the request, then close without answering */
	bool hang;        /* read the request, never answer */
};

struct tserver {
	int lfd;
	uint16_t port;
	SSL_CTX *ctx;
	pthread_t th;
	struct step *steps;
	size_t nsteps;
	int connections, requests, resumed;
	char req[6][2048];
	int stop;
};

static char *answer(int status, const char *extra_headers, const char *body)
{
	char *s = NULL;

	if (asprintf(&s, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n%s", status,
		     extra_headers ? extra_headers : "", strlen(body), body) < 0)
		abort();
	return s;
}

static bool stopping(struct tserver *t)
{
	return __atomic_load_n(&t->stop, __ATOMIC_SEQ_CST) != 0;
}

/* read one request (headers + Content-Length body); false when the client went away */
static bool read_request(SSL *ssl, char *buf, size_t size)
{
	size_t len = 0;
	int n;

	while (len < size - 1) {
		char *e, *h;
		size_t cl = 0;

		n = SSL_read(ssl, buf + len, (int)(size - 1 - len));
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = '\0';
		e = strstr(buf, "\r\n\r\n");
		if (e == NULL)
			continue;
		h = strcasestr(buf, "\r\nContent-Length:");
		if (h != NULL && h < e)
			cl = strtoul(h + 17, NULL, 10);
		if (len >= (size_t)(e + 4 - buf) + cl)
			return true;
	}
	return false;
}

static void *tserver_main(void *arg)
{
	struct tserver *t = arg;
	struct timeval tv = {.tv_sec = 5};
	char buf[8192];

	while (!stopping(t) && (size_t)t->requests < t->nsteps) {
		struct pollfd p = {.fd = t->lfd, .events = POLLIN};
		SSL *ssl;
		int fd;

		if (poll(&p, 1, 50) != 1)
			continue;
		fd = accept(t->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		ssl = SSL_new(t->ctx);
		SSL_set_fd(ssl, fd);
		if (SSL_accept(ssl) == 1) {
			t->connections++;
			t->resumed += SSL_session_reused(ssl);
			while (!stopping(t) && read_request(ssl, buf, sizeof(buf))) {
				int idx = t->requests++;
				struct step *s;

				if (idx < 6)
					snprintf(t->req[idx], sizeof(t->req[idx]), "%s", buf);
				if ((size_t)idx >= t->nsteps)
					break;
				s = &t->steps[idx];
				if (s->drop)
					break;
				if (s->hang) {
					/* until the client gives up (EOF) or the test ends */
					while (!stopping(t) && SSL_read(ssl, buf, sizeof(buf)) > 0)
						;
					break;
				}
				SSL_write(ssl, s->response, (int)strlen(s->response));
				if (s->close_after) {
					SSL_shutdown(ssl);
					break;
				}
			}
		}
		SSL_free(ssl);
		close(fd);
	}
	return NULL;
}

static void tserver_start(struct tserver *t, struct step *steps, size_t nsteps)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);

	memset(t, 0, sizeof(*t));
	t->steps = steps;
	t->nsteps = nsteps;
	t->ctx = SSL_CTX_new(TLS_server_method());
	assert_non_null(t->ctx);
	SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
	assert_int_equal(SSL_CTX_use_certificate_chain_file(t->ctx, P("srv.crt")), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(t->ctx, P("srv.key"), SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_load_verify_locations(t->ctx, P("ca.crt"), NULL), 1);
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	/* resumption with client certificates needs a session id context in OpenSSL */
	assert_int_equal(SSL_CTX_set_session_id_context(t->ctx, (const unsigned char *)"nhi-test", 8), 1);
	t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(t->lfd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(t->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(t->lfd, 8), 0);
	assert_int_equal(getsockname(t->lfd, (struct sockaddr *)&a, &alen), 0);
	t->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&t->th, NULL, tserver_main, t), 0);
}

static void tserver_stop(struct tserver *t)
{
	size_t i;

	__atomic_store_n(&t->stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(t->th, NULL);
	close(t->lfd);
	SSL_CTX_free(t->ctx);
	for (i = 0; i < t->nsteps; i++)
		free(t->steps[i].response);
}

static void test_keepalive_token_resolve(void **state)
{
	struct step steps[] = {
		{answer(200, NULL, "{\"status\":\"ok\"}")},
		{answer(200, NULL, "{\"token\":\"" TOKEN "\",\"expires_at\":1900000000}")},
		{answer(200, NULL, "{\"agent\":{\"id\":\"demo\",\"status\":\"active\"},\"claims\":{\"sub\":\"demo\"}}")},
		{answer(200, NULL, "{\"keys\":[]}")},
	};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	char tok[NHI_AGENT_TOKEN_MAX_BYTES], *json = NULL, want[64];
	long long exp = 0;

	(void)state;
	tserver_start(&t, steps, 4);
	cfg = cfg_for(t.port);
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_OK);
	if (nhi_agent_get_token(c, "inference", 60, tok, sizeof(tok), &exp) != NHI_AGENT_OK)
		fail_msg("token: %s", nhi_agent_error());
	assert_string_equal(tok, TOKEN);
	assert_int_equal(exp, 1900000000);
	assert_int_equal(nhi_agent_resolve(c, tok, &json), NHI_AGENT_OK);
	assert_string_equal(json, "{\"agent\":{\"id\":\"demo\",\"status\":\"active\"},\"claims\":{\"sub\":\"demo\"}}");
	free(json);
	assert_int_equal(nhi_agent_jwks(c, &json), NHI_AGENT_OK);
	free(json);
	/* four calls, one connection */
	assert_int_equal(nhi_agent_connections(c), 1);
	nhi_agent_client_free(c);
	tserver_stop(&t);
	assert_int_equal(t.connections, 1);
	assert_int_equal(t.requests, 4);
	snprintf(want, sizeof(want), "\r\nHost: 127.0.0.1:%u\r\n", (unsigned)t.port);
	assert_non_null(strstr(t.req[0], "GET /v1/health HTTP/1.1\r\n"));
	assert_non_null(strstr(t.req[0], want));
	assert_non_null(strstr(t.req[1], "POST /v1/tokens HTTP/1.1\r\n"));
	assert_non_null(strstr(t.req[1], "\r\n\r\n{\"aud\":\"inference\",\"ttl\":60}"));
	assert_non_null(strstr(t.req[2], "POST /v1/resolve HTTP/1.1\r\n"));
	assert_non_null(strstr(t.req[2], "\r\n\r\n{\"token\":\"" TOKEN "\"}"));
	assert_non_null(strstr(t.req[3], "GET /v1/jwks HTTP/1.1\r\n"));
}

static void test_token_default_ttl(void **state)
{
	struct step steps[] = {{answer(200, NULL, "{\"token\":\"" TOKEN "\",\"expires_at\":5}")}};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	char tok[NHI_AGENT_TOKEN_MAX_BYTES];

	(void)state;
	tserver_start(&t, steps, 1);
	cfg = cfg_for(t.port);
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_get_token(c, "a \"quoted\" aud", 0, tok, sizeof(tok), NULL), NHI_AGENT_OK);
	/* bad arguments never reach the server */
	assert_int_equal(nhi_agent_get_token(c, "", 0, tok, sizeof(tok), NULL), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_get_token(c, "x\ny", 0, tok, sizeof(tok), NULL), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_get_token(c, "\xff", 0, tok, sizeof(tok), NULL), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_get_token(c, "x", NHI_AGENT_TTL_MAX_S + 1, tok, sizeof(tok), NULL), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_get_token(c, NULL, 0, tok, sizeof(tok), NULL), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_get_token(c, "x", 0, NULL, 0, NULL), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_resolve(c, "not-a-token", &(char *){NULL}), NHI_AGENT_E_ARG);
	assert_int_equal(nhi_agent_health(NULL), NHI_AGENT_E_ARG);
	nhi_agent_client_free(c);
	tserver_stop(&t);
	assert_int_equal(t.requests, 1);
	assert_non_null(strstr(t.req[0], "\r\n\r\n{\"aud\":\"a \\\"quoted\\\" aud\"}"));
}

static void test_reconnect_after_server_close(void **state)
{
	struct step steps[] = {
		{answer(200, NULL, "{\"status\":\"ok\"}"), .close_after = true},
		{answer(200, NULL, "{\"status\":\"ok\"}")},
		{answer(200, "Connection: close\r\n", "{\"status\":\"ok\"}")},
		{answer(200, NULL, "{\"status\":\"ok\"}")},
	};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	int i;

	(void)state;
	tserver_start(&t, steps, 4);
	cfg = cfg_for(t.port);
	c = client_ok(&cfg);
	for (i = 0; i < 4; i++)
		if (nhi_agent_health(c) != NHI_AGENT_OK)
			fail_msg("call %d: %s", i, nhi_agent_error());
	/* closed by the server after call 1 (close_notify) and announced after call 3 */
	assert_int_equal(nhi_agent_connections(c), 3);
	nhi_agent_client_free(c);
	tserver_stop(&t);
	assert_int_equal(t.connections, 3);
	assert_int_equal(t.requests, 4);
	/* reconnections resumed the TLS session instead of a full handshake */
	assert_int_equal(t.resumed, 2);
}

static void test_retry_once_when_dropped(void **state)
{
	struct step steps[] = {
		{answer(200, NULL, "{\"status\":\"ok\"}")},
		{NULL, .drop = true},
		{answer(200, NULL, "{\"status\":\"ok\"}")},
		{NULL, .drop = true},
	};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;

	(void)state;
	tserver_start(&t, steps, 4);
	cfg = cfg_for(t.port);
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_OK);
	/* the kept-alive connection dies under the request: reconnect and send once more */
	if (nhi_agent_health(c) != NHI_AGENT_OK)
		fail_msg("retry: %s", nhi_agent_error());
	assert_int_equal(nhi_agent_connections(c), 2);
	/* dropped again, on a connection just opened: no second retry */
	nhi_agent_conn_close(c, true);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_E_PROTOCOL);
	assert_detail_has("without answering");
	nhi_agent_client_free(c);
	tserver_stop(&t);
	assert_int_equal(t.requests, 4);
}

static void test_refused_keeps_connection(void **state)
{
	struct step steps[] = {
		{answer(403, NULL, "{\"error\":\"forbidden\",\"detail\":\"audience 'billing' is not allowed for agent demo\"}")},
		{answer(401, NULL, "{\"error\":\"invalid_token\",\"detail\":\"token expired\"}")},
		{answer(200, NULL, "{\"status\":\"ok\"}")},
	};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	char tok[NHI_AGENT_TOKEN_MAX_BYTES], *json = (char *)1;

	(void)state;
	tserver_start(&t, steps, 3);
	cfg = cfg_for(t.port);
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_get_token(c, "billing", 0, tok, sizeof(tok), NULL), NHI_AGENT_E_REFUSED);
	assert_int_equal(nhi_agent_http_status(c), 403);
	assert_string_equal(nhi_agent_error(),
			    "server refused the request: HTTP 403 forbidden: audience 'billing' is not allowed for agent demo");
	assert_string_equal(tok, "");
	assert_int_equal(nhi_agent_resolve(c, TOKEN, &json), NHI_AGENT_E_REFUSED);
	assert_null(json);
	assert_int_equal(nhi_agent_http_status(c), 401);
	assert_detail_has("HTTP 401 invalid_token: token expired");
	assert_null(strstr(nhi_agent_error(), TOKEN));
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_OK);
	assert_int_equal(nhi_agent_connections(c), 1);
	nhi_agent_client_free(c);
	tserver_stop(&t);
}

static void test_limits_and_junk(void **state)
{
	struct step steps[] = {
		{strdup("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{}")},
		{strdup("garbage that is not HTTP\r\n\r\n")},
		{answer(200, NULL, "{\"token\":\"" TOKEN "\",\"expires_at\":1}")},
	};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	char tok[16];

	(void)state;
	tserver_start(&t, steps, 3);
	cfg = cfg_for(t.port);
	cfg.response_max_bytes = 1024;
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_E_TOO_LARGE);
	assert_detail_has("5000 bytes");
	/* a failed response leaves the connection closed; the next call opens another */
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_E_PROTOCOL);
	assert_detail_has("malformed HTTP response");
	assert_int_equal(nhi_agent_get_token(c, "x", 0, tok, sizeof(tok), NULL), NHI_AGENT_E_SPACE);
	assert_null(strstr(nhi_agent_error(), "eyJ"));
	assert_int_equal(nhi_agent_connections(c), 3);
	nhi_agent_client_free(c);
	tserver_stop(&t);
}

static void test_read_timeout(void **state)
{
	struct step steps[] = {{NULL, .hang = true}};
	struct tserver t;
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	long long t0, ms;

	(void)state;
	tserver_start(&t, steps, 1);
	cfg = cfg_for(t.port);
	/* room for the server's handshake under ASan with slow unwinding (~1 s) */
	cfg.io_timeout_ms = 3000;
	c = client_ok(&cfg);
	t0 = nhi_agent_now_ms();
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_E_TIMEOUT);
	ms = nhi_agent_now_ms() - t0;
	assert_detail_has("no complete answer");
	assert_detail_has("within 3000 ms");
	assert_true(ms >= 2900 && ms < 8000);
	nhi_agent_client_free(c);
	tserver_stop(&t);
}

static void test_handshake_timeout_and_refused(void **state)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	struct nhi_agent_config cfg;
	struct nhi_agent_client *c;
	long long t0, ms;
	int lfd = socket(AF_INET, SOCK_STREAM, 0);

	(void)state;
	/* a listener that never accepts: TCP connects (backlog), TLS never answers */
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(lfd, 4), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	cfg = cfg_for(ntohs(a.sin_port));
	cfg.io_timeout_ms = 300;
	c = client_ok(&cfg);
	t0 = nhi_agent_now_ms();
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_E_TIMEOUT);
	ms = nhi_agent_now_ms() - t0;
	assert_detail_has("TLS handshake");
	assert_true(ms >= 250 && ms < 3000);
	nhi_agent_client_free(c);
	close(lfd);

	/* nothing listening */
	cfg = cfg_for(free_port());
	c = client_ok(&cfg);
	assert_int_equal(nhi_agent_health(c), NHI_AGENT_E_CONNECT);
	assert_detail_has("refused");
	assert_detail_has("is nhid running");
	nhi_agent_client_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_url),
		cmocka_unit_test(test_format_request),
		cmocka_unit_test(test_sanitize),
		cmocka_unit_test(test_response_parser),
		cmocka_unit_test(test_response_header_limits),
		cmocka_unit_test(test_response_status),
		cmocka_unit_test(test_json_token),
		cmocka_unit_test(test_json_objects),
		cmocka_unit_test(test_config_valid),
		cmocka_unit_test(test_config_refused),
		cmocka_unit_test(test_fifo_files_refused),
		cmocka_unit_test(test_key_file_mode),
		cmocka_unit_test(test_s_server_fetch),
		cmocka_unit_test(test_s_server_missing_file),
		cmocka_unit_test(test_s_server_wrong_ca),
		cmocka_unit_test(test_s_server_wrong_name),
		cmocka_unit_test(test_s_server_ip_needs_ip_san),
		cmocka_unit_test(test_s_server_expired),
		cmocka_unit_test(test_s_server_refuses_client),
		cmocka_unit_test(test_s_server_profile),
		cmocka_unit_test(test_keepalive_token_resolve),
		cmocka_unit_test(test_token_default_ttl),
		cmocka_unit_test(test_reconnect_after_server_close),
		cmocka_unit_test(test_retry_once_when_dropped),
		cmocka_unit_test(test_refused_keeps_connection),
		cmocka_unit_test(test_limits_and_junk),
		cmocka_unit_test(test_read_timeout),
		cmocka_unit_test(test_handshake_timeout_and_refused),
	};

	return cmocka_run_group_tests_name("agent", tests, group_setup, group_teardown);
}
