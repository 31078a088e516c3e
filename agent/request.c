/* agent/request.c — the bytes of one HTTP/1.1 request (RFC 9112 §3). */
#include "agent_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUEST_HEAD_MAX_BYTES 1024

static bool token_chars(const char *s)
{
	while (*s > 0x20 && *s < 0x7f)
		s++;
	return *s == '\0';
}

nhi_agent_err nhi_agent_format_request(const char *method, const char *path, const char *host_header,
				       const char *body, size_t body_len, char **out, size_t *out_len)
{
	nhi_agent_err rv = NHI_AGENT_E_INTERNAL;
	char head[REQUEST_HEAD_MAX_BYTES];
	char *buf = NULL;
	int n;

	*out = NULL;
	*out_len = 0;
	/* method, path and Host come from our own code, but a CR/LF in them would split the request */
	AG_CHECK(token_chars(method) && token_chars(path) && token_chars(host_header), NHI_AGENT_E_ARG,
		 "request line or Host contains spaces or control characters");
	if (body != NULL)
		n = snprintf(head, sizeof(head),
			     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nhi-agent/1\r\nAccept: application/json\r\n"
			     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
			     method, path, host_header, body_len);
	else
		n = snprintf(head, sizeof(head),
			     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nhi-agent/1\r\nAccept: application/json\r\n\r\n",
			     method, path, host_header);
	AG_CHECK(n > 0 && (size_t)n < sizeof(head), NHI_AGENT_E_ARG, "request header over %d bytes",
		 REQUEST_HEAD_MAX_BYTES);
	buf = malloc((size_t)n + body_len + 1);
	AG_CHECK(buf != NULL, NHI_AGENT_E_NOMEM, "out of memory for a %zu-byte request", (size_t)n + body_len);
	memcpy(buf, head, (size_t)n);
	if (body_len > 0)
		memcpy(buf + n, body, body_len);
	buf[(size_t)n + body_len] = '\0';
	*out = buf;
	*out_len = (size_t)n + body_len;
	buf = NULL;
	rv = NHI_AGENT_OK;
out:
	free(buf);
	return rv;
}
