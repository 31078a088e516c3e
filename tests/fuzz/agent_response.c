/*
 * tests/fuzz/agent_response.c — nhi-agent's handling of a hostile server's bytes:
 * the HTTP response parser (http-parser) fed in pieces, the close handling, then the
 * JSON interpretation of the body (status/error, health, token, object answers),
 * and the --server URL parser on the same bytes.
 *
 * Input: byte 0 chooses the run (low 4 bits: piece size in 7-byte units, 0 = all at
 * once; 0x10: a 64-byte body cap; 0x20: the close carries close_notify); the rest is
 * what the server sent. The agent's .c files are included directly: fuzz targets link
 * libnhi, not libnhiagent.
 */
#include "../../agent/error.c"
#include "../../agent/response.c"
#include "../../agent/url.c"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const resolve_keys[] = {"agent", "claims", NULL};
	static const char *const jwks_keys[] = {"keys", NULL};
	struct nhi_agent_resp r;
	char token[NHI_AGENT_TOKEN_MAX_BYTES], host[NHI_AGENT_HOST_MAX_BYTES + 1], *url, *json = NULL;
	long long exp = 0;
	size_t step, off = 0, n;
	uint16_t port = 0;
	nhi_agent_err e = NHI_AGENT_OK, e2;
	uint8_t mode;

	if (size < 1)
		return 0;
	mode = data[0];
	data++;
	size--;
	step = (mode & 0x0f) != 0 ? (size_t)(mode & 0x0f) * 7 : size;

	nhi_agent_resp_init(&r, (mode & 0x10) ? 64 : NHI_AGENT_RESPONSE_MAX_BYTES_DEFAULT);
	while (off < size && e == NHI_AGENT_OK) {
		n = size - off < step ? size - off : step;
		e = nhi_agent_resp_feed(&r, data + off, n);
		off += n;
	}
	if (e == NHI_AGENT_OK && !r.complete)
		e = nhi_agent_resp_eof(&r, (mode & 0x20) != 0);
	if (e == NHI_AGENT_OK) {
		if (!r.complete || r.body_len > r.body_max || (r.body != NULL && r.body[r.body_len] != '\0'))
			abort();
		e2 = nhi_agent_resp_check_status(&r);
		if ((e2 == NHI_AGENT_OK) != (r.status == 200))
			abort();
		e2 = nhi_agent_json_health(r.body, r.body_len);
		(void)e2;
		e2 = nhi_agent_json_token(r.body, r.body_len, token, sizeof(token), &exp);
		if (e2 == NHI_AGENT_OK && (!nhi_agent_jws_shape(token, strlen(token)) || exp <= 0))
			abort();
		if (nhi_agent_json_object(r.body, r.body_len, resolve_keys, "oo", &json) == NHI_AGENT_OK)
			free(json);
		if (nhi_agent_json_object(r.body, r.body_len, jwks_keys, "a", &json) == NHI_AGENT_OK)
			free(json);
	} else if (nhi_agent_error()[0] == '\0') {
		abort(); /* every refusal says why */
	}
	nhi_agent_resp_clear(&r);

	/* the same bytes as a --server URL */
	url = malloc(size + 1);
	if (url == NULL)
		return 0;
	memcpy(url, data, size);
	url[size] = '\0';
	if (nhi_agent_parse_url(url, host, sizeof(host), &port) == NHI_AGENT_OK && (host[0] == '\0' || port == 0))
		abort();
	free(url);
	return 0;
}
