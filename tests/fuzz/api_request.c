/*
 * tests/fuzz/api_request.c — nhid's request routing and endpoint bodies. The first
 * byte picks the parser ('p' path lookup, 't' POST /v1/tokens, 'r' POST
 * /v1/resolve, 's' POST /v1/sign, 'v' POST /v1/verify, 'm' POST /v1/manifests/verify
 * and its file list against the manifest); the rest is the input.
 */
#include "../../server/server_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_api_token_req t;
	struct nhi_api_resolve_req r;
	struct nhi_api_sign_req sg;
	struct nhi_api_verify_req vr;
	struct nhi_api_manifest_req mr;
	struct nhi_keyset *ks = NULL;
	size_t n_diffs = 0;
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
		/* the fast path takes only what jansson reads as exactly {"token": the same string} */
		{
			size_t off, n;
			json_t *j;

			if (nhi_api_resolve_body_simple((const char *)data + 1, size - 1, &off, &n)) {
				j = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
				if (j == NULL || json_object_size(j) != 1 || !json_is_string(json_object_get(j, "token")) ||
				    json_string_length(json_object_get(j, "token")) != n ||
				    memcmp(json_string_value(json_object_get(j, "token")), data + 1 + off, n) != 0)
					abort();
				json_decref(j);
			}
		}
		break;
	case 's':
		if (nhi_api_parse_sign_req((const char *)data + 1, size - 1, 16384, &sg) == NHI_OK) {
			if (sg.key[0] == '\0' || strlen(sg.key) > 32)
				abort();
			nhi_api_sign_req_free(&sg);
		}
		break;
	case 'v':
		if (nhi_api_parse_verify_req((const char *)data + 1, size - 1, 16384, &vr) == NHI_OK) {
			if (vr.key[0] == '\0' || (vr.kid[0] != '\0' && strlen(vr.kid) != 43))
				abort();
			nhi_api_verify_req_free(&vr);
		}
		break;
	case 'm':
		if (nhi_api_parse_manifest_req((const char *)data + 1, size - 1, 16384, &mr) == NHI_OK) {
			if (mr.manifest == NULL || !json_is_array(mr.files))
				abort();
			/* no key: the signature check refuses, after the envelope was parsed */
			if (nhi_keyset_new(&ks) == NHI_OK &&
			    nhi_manifest_verify_list((const uint8_t *)mr.manifest, mr.manifest_len, ks, mr.files, NULL, NULL,
						     &n_diffs) == NHI_OK)
				abort();
			nhi_keyset_free(ks);
			nhi_api_manifest_req_free(&mr);
		}
		break;
	default:
		break;
	}
	return 0;
}
