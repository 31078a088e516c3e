/*
 * agent/agent.h — nhi-agent, the agent-side client of nhid: mTLS (mbedTLS 2.28,
 * TLS 1.2, ECDHE-ECDSA with AES-GCM, P-256) + HTTP/1.1 JSON, one keep-alive
 * connection per client object. It is an independent TLS stack: it links only
 * mbedTLS, http-parser, jansson and libc, never OpenSSL or libnhi.
 *
 *   struct nhi_agent_config cfg = {
 *       .host = "127.0.0.1", .port = 8443,
 *       .ca_file = "ca.crt", .cert_file = "agent.crt", .key_file = "agent.key",
 *   };
 *   struct nhi_agent_client *c = NULL;
 *   char token[NHI_AGENT_TOKEN_MAX_BYTES];
 *   long long exp;
 *
 *   if (nhi_agent_client_new(&cfg, &c) != NHI_AGENT_OK ||
 *       nhi_agent_get_token(c, "inference", 0, token, sizeof(token), &exp) != NHI_AGENT_OK)
 *       fprintf(stderr, "%s\n", nhi_agent_error());
 *   nhi_agent_client_free(c);
 *
 * Errors: every fallible call returns an nhi_agent_err and, on failure, leaves a
 * detail message for the calling thread (nhi_agent_error()) that names the cause and
 * the fix. Detail messages never contain a token or key material.
 *
 * Threads: a client object is used by one thread at a time (it owns one TLS
 * connection). Use one client per thread; separate clients share nothing.
 *
 * Names: the identity module already owns `struct nhi_agent` (an agent record) and
 * nhi_agent_free(); the client is therefore `struct nhi_agent_client`.
 */
#ifndef NHI_AGENT_H
#define NHI_AGENT_H

#include <stddef.h>
#include <stdint.h>

#define NHI_AGENT_MUST_CHECK __attribute__((warn_unused_result))

/* ---- defaults and limits (units in the names) ---- */
#define NHI_AGENT_PORT_DEFAULT 443                         /* https:// URL without a port */
#define NHI_AGENT_CONNECT_TIMEOUT_MS_DEFAULT 5000          /* TCP connect */
#define NHI_AGENT_IO_TIMEOUT_MS_DEFAULT 10000              /* one call: handshake + request + response */
#define NHI_AGENT_TIMEOUT_MS_MAX 300000                    /* no configured timeout above 5 min */
#define NHI_AGENT_RESPONSE_MAX_BYTES_DEFAULT (64 * 1024)   /* response body */
#define NHI_AGENT_RESPONSE_MAX_BYTES_MAX (1024 * 1024)
#define NHI_AGENT_HEADER_MAX_BYTES (16 * 1024)             /* status line + all response headers */
#define NHI_AGENT_HEADER_MAX_COUNT 64                      /* response header fields */
#define NHI_AGENT_TOKEN_MAX_BYTES 8192                     /* a compact JWS, with its NUL */
#define NHI_AGENT_AUD_MAX_BYTES 255                        /* requested audience */
#define NHI_AGENT_TTL_MAX_S 86400                          /* client-side sanity bound; nhid caps lower */
#define NHI_AGENT_HOST_MAX_BYTES 253                       /* DNS name or IP literal */
#define NHI_AGENT_KEY_FILE_MAX_BYTES (16 * 1024)           /* PEM/DER private key */
#define NHI_AGENT_CERT_FILE_MAX_BYTES (1024 * 1024)        /* CA bundle or client chain */
#define NHI_AGENT_ERROR_MAX_BYTES 512                      /* detail message */

typedef enum nhi_agent_err {
	NHI_AGENT_OK = 0,
	NHI_AGENT_E_ARG,      /* unusable argument or configuration */
	NHI_AGENT_E_FILE,     /* CA/cert/key file unreadable, malformed, or key file mode unsafe */
	NHI_AGENT_E_CONNECT,  /* TCP connect failed or timed out */
	NHI_AGENT_E_VERIFY,   /* server certificate untrusted, expired, or not for this name */
	NHI_AGENT_E_TLS,      /* handshake refused (e.g. by the server) or TLS record error */
	NHI_AGENT_E_TIMEOUT,  /* the server did not answer within io_timeout_ms */
	NHI_AGENT_E_PROTOCOL, /* malformed HTTP or JSON response */
	NHI_AGENT_E_TOO_LARGE,/* response over a limit (body, headers, token) */
	NHI_AGENT_E_REFUSED,  /* the server answered 4xx/5xx: see nhi_agent_http_status() */
	NHI_AGENT_E_SPACE,    /* the caller's output buffer is too small */
	NHI_AGENT_E_NOMEM,
	NHI_AGENT_E_INTERNAL,
	NHI_AGENT_E__COUNT
} nhi_agent_err;

struct nhi_agent_config {
	const char *host;         /* DNS name or IP literal (IPv6 without brackets) to connect to */
	uint16_t port;            /* 1..65535 */
	const char *servername;   /* name the server certificate must carry; NULL = host. An IP
	                           * literal is matched against iPAddress SANs only (RFC 9525). */
	const char *ca_file;      /* PEM trust anchors for the server certificate (ca.crt) */
	const char *cert_file;    /* PEM client certificate (leaf first, then chain) */
	const char *key_file;     /* its P-256 private key; must be mode 0600 or stricter */
	unsigned connect_timeout_ms; /* 0 = NHI_AGENT_CONNECT_TIMEOUT_MS_DEFAULT */
	unsigned io_timeout_ms;      /* 0 = NHI_AGENT_IO_TIMEOUT_MS_DEFAULT; bounds one whole call */
	size_t response_max_bytes;   /* 0 = NHI_AGENT_RESPONSE_MAX_BYTES_DEFAULT */
};

struct nhi_agent_client;

/* Stable short name of an error code ("verify", "timeout"); never NULL. */
const char *nhi_agent_err_name(nhi_agent_err e);

/* The calling thread's detail message for its last failed call; "" if none. Valid
 * until the next nhi_agent_* call on this thread. Never contains a secret. */
const char *nhi_agent_error(void);

/*
 * Parse "https://HOST[:PORT][/]" (no user info, path, query or fragment; IPv6 in
 * brackets) into host (NUL-terminated, brackets removed) and port (default 443).
 * Uses http-parser's URL parser. Returns NHI_AGENT_E_ARG with a detail when refused.
 */
nhi_agent_err nhi_agent_parse_url(const char *url, char *host, size_t host_size,
				  uint16_t *port) NHI_AGENT_MUST_CHECK;

/*
 * Validate cfg, load the CA, client certificate and key (the key file must be a
 * regular file owned by the caller's uid and not accessible to group or others;
 * the key must be P-256 and match the certificate), seed a DRBG, and set up the TLS
 * profile. Does not connect: the first request does. cfg's strings are copied; cfg
 * may be freed afterwards. On success *out owns a client; free it with
 * nhi_agent_client_free().
 */
nhi_agent_err nhi_agent_client_new(const struct nhi_agent_config *cfg,
				   struct nhi_agent_client **out) NHI_AGENT_MUST_CHECK;

/* Sends close_notify if connected, closes, wipes the key. NULL is a no-op. */
void nhi_agent_client_free(struct nhi_agent_client *c);

/*
 * GET /v1/health. NHI_AGENT_OK when the server answered 200 {"status":"ok"}.
 * Connects on first use; reuses the keep-alive connection afterwards and reconnects
 * once when the server had closed it.
 */
nhi_agent_err nhi_agent_health(struct nhi_agent_client *c) NHI_AGENT_MUST_CHECK;

/*
 * POST /v1/tokens {"aud":aud[,"ttl":ttl_s]} for the identity of this client's
 * certificate. ttl_s 0 lets the server choose. On success the compact JWS is copied
 * NUL-terminated into token (token_size bytes; NHI_AGENT_TOKEN_MAX_BYTES always
 * suffices) and *expires_at (may be NULL) gets the server's expiry (Unix seconds).
 * NHI_AGENT_E_REFUSED (e.g. 403) carries the server's error and detail in
 * nhi_agent_error(). The token is a bearer credential: wipe it when done.
 */
nhi_agent_err nhi_agent_get_token(struct nhi_agent_client *c, const char *aud, unsigned ttl_s,
				  char *token, size_t token_size,
				  long long *expires_at) NHI_AGENT_MUST_CHECK;

/*
 * POST /v1/resolve {"token":token} (the client certificate needs the resolver
 * role). On success *json_out is a malloc'ed NUL-terminated compact JSON object
 * {"agent":{...},"claims":{...}}; the caller frees it with free(). On 401 the result
 * is NHI_AGENT_E_REFUSED with "invalid_token: <reason>" in the detail.
 */
nhi_agent_err nhi_agent_resolve(struct nhi_agent_client *c, const char *token,
				char **json_out) NHI_AGENT_MUST_CHECK;

/* GET /v1/jwks. *json_out as for nhi_agent_resolve(): a JSON object with "keys". */
nhi_agent_err nhi_agent_jwks(struct nhi_agent_client *c, char **json_out) NHI_AGENT_MUST_CHECK;

/* HTTP status of the last response received by c (0 if none). */
int nhi_agent_http_status(const struct nhi_agent_client *c);

/* Number of TLS connections c has opened so far (keep-alive reuse shows as 1). */
unsigned nhi_agent_connections(const struct nhi_agent_client *c);

#endif
