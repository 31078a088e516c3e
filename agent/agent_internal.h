/*
 * agent/agent_internal.h — what the agent's own files share; not installed, not
 * for callers (they use agent.h). Error helpers, the HTTP response parser state
 * and the JSON interpretation of nhid's answers.
 */
#ifndef NHI_AGENT_INTERNAL_H
#define NHI_AGENT_INTERNAL_H

#include "agent.h"

#include <http_parser.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NHI_AGENT_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- error.c ---- */

/* Record the calling thread's detail message and return code. Never pass a secret. */
nhi_agent_err nhi_agent_set_error(nhi_agent_err code, const char *fmt, ...) NHI_AGENT_PRINTF(2, 3);
void nhi_agent_clear_error(void);
/* mbedTLS error text "<module> - <description> (-0xNNNN)" into buf. */
void nhi_agent_mbed_strerror(int ret, char *buf, size_t size);
/*
 * Copy untrusted text (a server's error detail) into dst for display: printable
 * ASCII only (anything else becomes '?'), at most max_chars characters then "...",
 * always NUL-terminated.
 */
void nhi_agent_sanitize(char *dst, size_t dst_size, const char *src, size_t src_len, size_t max_chars);

/* The one family of control-flow macros: a local `nhi_agent_err rv` and an `out:` label. */
#define AG_CHECK(cond, code, ...)                                                          \
	do {                                                                               \
		if (!(cond)) {                                                             \
			rv = nhi_agent_set_error((code), __VA_ARGS__);                     \
			goto out;                                                          \
		}                                                                          \
	} while (0)
#define AG_TRY(expr)                                                                       \
	do {                                                                               \
		nhi_agent_err ag_try_rv_ = (expr);                                         \
		if (ag_try_rv_ != NHI_AGENT_OK) {                                          \
			rv = ag_try_rv_;                                                   \
			goto out;                                                          \
		}                                                                          \
	} while (0)

/* ---- url.c ---- */

/* A host name of LDH labels (1..63 chars each, 1..253 in all); IPv4 dotted quads pass too. */
bool nhi_agent_dns_name_ok(const char *h, size_t len);

/* ---- response.c: one HTTP/1.x response, parsed by http-parser ---- */

struct nhi_agent_resp {
	http_parser parser;
	size_t body_max;      /* cap on the (de-chunked) body */
	uint8_t *body;        /* NUL-terminated copy of the body; may hold a token: wiped on clear */
	size_t body_len, body_cap;
	size_t header_bytes;  /* status line + header fields and values seen so far */
	unsigned header_count;
	bool in_field;        /* last header callback was for a field name */
	bool started;         /* at least one byte was fed */
	bool eof_delimited;   /* the body ends when the connection does (HTTP/1.0 style) */
	bool complete;        /* on_message_complete ran */
	bool keep_alive;      /* the connection may carry another request */
	int status;           /* HTTP status code once headers are complete */
	nhi_agent_err failure; /* set by a callback that stopped the parser */
};

void nhi_agent_resp_init(struct nhi_agent_resp *r, size_t body_max);
/*
 * Feed bytes received from the server. NHI_AGENT_OK while the response is
 * incomplete or just completed (r->complete); bytes after a complete response make
 * the connection unusable for another request (keep_alive = false) but are not an
 * error. Errors: E_PROTOCOL (malformed), E_TOO_LARGE (a limit).
 */
nhi_agent_err nhi_agent_resp_feed(struct nhi_agent_resp *r, const uint8_t *data,
				  size_t len) NHI_AGENT_MUST_CHECK;
/*
 * The server closed the connection; clean = it sent a TLS close_notify first. A
 * body delimited by the end of the connection (HTTP/1.0 style) is only accepted on
 * a clean close: otherwise it may have been truncated by an attacker.
 */
nhi_agent_err nhi_agent_resp_eof(struct nhi_agent_resp *r, bool clean) NHI_AGENT_MUST_CHECK;
/* Wipe and free the body; r may be reused after nhi_agent_resp_init(). */
void nhi_agent_resp_clear(struct nhi_agent_resp *r);

/*
 * Check a complete response: 200 -> OK; 4xx/5xx -> E_REFUSED with "HTTP <status>
 * <error>: <detail>" from the server's JSON (sanitized); anything else E_PROTOCOL.
 */
nhi_agent_err nhi_agent_resp_check_status(const struct nhi_agent_resp *r) NHI_AGENT_MUST_CHECK;

/* ---- response.c: the JSON bodies of nhid's answers ---- */

/* {"status":"ok"} */
nhi_agent_err nhi_agent_json_health(const uint8_t *body, size_t len) NHI_AGENT_MUST_CHECK;
/* {"token":"<compact JWS>","expires_at":<int>} -> token (NUL-terminated), *expires_at */
nhi_agent_err nhi_agent_json_token(const uint8_t *body, size_t len, char *token, size_t token_size,
				   long long *expires_at) NHI_AGENT_MUST_CHECK;
/*
 * A JSON object whose members named in `required` (NULL-terminated list) exist and
 * are of type `kinds[i]` ('o' object, 'a' array). *out = malloc'ed compact dump; the
 * caller frees it with free().
 */
nhi_agent_err nhi_agent_json_object(const uint8_t *body, size_t len, const char *const *required,
				    const char *kinds, char **out) NHI_AGENT_MUST_CHECK;

/* RFC 7515 §7.1 compact JWS shape: three non-empty base64url parts joined by '.' */
bool nhi_agent_jws_shape(const char *s, size_t len);

/* ---- request.c: the request bytes ---- */

/*
 * Format one HTTP/1.1 request (keep-alive; JSON body when body != NULL) into a
 * malloc'ed buffer *out (*out_len bytes). The caller wipes and frees it: the body
 * may hold a token.
 */
nhi_agent_err nhi_agent_format_request(const char *method, const char *path, const char *host_header,
				       const char *body, size_t body_len, char **out,
				       size_t *out_len) NHI_AGENT_MUST_CHECK;

/* ---- tls.c: the client object, its TLS profile and its one connection ---- */

struct nhi_agent_client {
	char host[NHI_AGENT_HOST_MAX_BYTES + 1];       /* connect to */
	char name[NHI_AGENT_HOST_MAX_BYTES + 1];       /* verify the server certificate against */
	char host_header[NHI_AGENT_HOST_MAX_BYTES + 9]; /* "host:port", IPv6 in brackets */
	char ca_file[256], cert_file[256];             /* for messages only */
	uint16_t port;
	bool name_is_ip;          /* name is an IP literal: check iPAddress SANs ourselves */
	uint8_t name_ip[16];
	size_t name_ip_len;       /* 4 or 16 */
	unsigned connect_timeout_ms, io_timeout_ms;
	size_t response_max_bytes;

	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_x509_crt ca, cert;
	mbedtls_pk_context key;
	mbedtls_ssl_config conf;
	mbedtls_ssl_context ssl;
	mbedtls_ssl_session session; /* last session, offered on reconnect (resumption) */
	bool have_session;
	bool ip_mismatch;         /* set by the verify callback for the message */

	int fd;                   /* -1 when not connected */
	bool connected;
	long long deadline_ms;    /* CLOCK_MONOTONIC bound of the current call */
	int last_status;
	unsigned connections;
};

/* Milliseconds on CLOCK_MONOTONIC. */
long long nhi_agent_now_ms(void);
/* Load files, seed the DRBG, build the TLS profile. c is zeroed and fd = -1 by the caller. */
nhi_agent_err nhi_agent_tls_init(struct nhi_agent_client *c, const struct nhi_agent_config *cfg) NHI_AGENT_MUST_CHECK;
void nhi_agent_tls_free(struct nhi_agent_client *c);
/* TCP connect + TLS handshake, bounded by connect_timeout_ms and c->deadline_ms. */
nhi_agent_err nhi_agent_conn_open(struct nhi_agent_client *c) NHI_AGENT_MUST_CHECK;
/* Close the connection; notify = send close_notify first (bounded). No-op if closed. */
void nhi_agent_conn_close(struct nhi_agent_client *c, bool notify);
/* True when an idle kept-alive connection has pending input or was closed by the server. */
bool nhi_agent_conn_stale(struct nhi_agent_client *c);
/* Write all of buf. E_TLS/E_TIMEOUT on failure (the connection is then unusable). */
nhi_agent_err nhi_agent_conn_write(struct nhi_agent_client *c, const void *buf, size_t len) NHI_AGENT_MUST_CHECK;
/*
 * Read some bytes: *n > 0 data; *n == 0 with *eof set: the server closed
 * (*clean = with close_notify). E_TLS/E_TIMEOUT on failure.
 */
nhi_agent_err nhi_agent_conn_read(struct nhi_agent_client *c, uint8_t *buf, size_t size, size_t *n, bool *eof,
				  bool *clean) NHI_AGENT_MUST_CHECK;

#endif
