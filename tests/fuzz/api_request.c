/*
 * tests/fuzz/api_request.c — nhid's request routing and endpoint bodies. The first
 * byte picks the parser ('p' path lookup, 't' POST /v1/tokens, 'r' POST
 * /v1/resolve); the rest is the input.
 */
#include "../../server/server_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_api_token_req t;
	struct nhi_api_resolve_req r;
	const struct nhi_api_route *route;
	char *path;

	if (size < 1)
		return 0;
	switch (data[0]) {
	case 'p':
		path = malloc(size);
		if (path == NULL)
			return 0;
		memcpy(path, data + 1, size - 1);
		path[size - 1] = '\0';
		route = nhi_api_route_find(path);
		if (route != NULL && strcmp(route->path, path) != 0)
			abort();
		free(path);
		break;
	case 't':
		if (nhi_api_parse_token_req((const char *)data + 1, size - 1, 16384, 900, &t) == NHI_OK &&
		    (t.aud[0] == '\0' || t.ttl_s > 900 || memchr(t.aud, '\0', sizeof(t.aud)) == NULL))
			abort();
		break;
	case 'r':
		if (nhi_api_parse_resolve_req((const char *)data + 1, size - 1, 16384, &r) == NHI_OK) {
			if (r.token == NULL || strlen(r.token) != r.token_len)
				abort();
			nhi_api_resolve_req_free(&r);
		}
		break;
	default:
		break;
	}
	return 0;
}
