/* tests/fuzz/pkcs11_uri.c — token selectors (labels and RFC 7512 URIs) as nhid reads them. */
#include "../../hsm/hsm_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	CK_TOKEN_INFO ti;
	char *s;
	bool match;

	if (size > 4096)
		return 0;
	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	memset(&ti, ' ', sizeof(ti));
	memcpy(ti.label, "nhid-dev", 8);
	memcpy(ti.manufacturerID, "SoftHSM project", 15);
	memcpy(ti.model, "SoftHSM v2", 10);
	memcpy(ti.serialNumber, "0123456789abcdef", 16);
	if (nhi_hsm_selector_match(s, &ti, &match) == NHI_OK && match && strncmp(s, "pkcs11:", 7) != 0 &&
	    strcmp(s, "nhid-dev") != 0)
		abort(); /* a plain label matched something other than itself */
	free(s);
	return 0;
}
