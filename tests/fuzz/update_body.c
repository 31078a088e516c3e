/*
 * tests/fuzz/update_body.c — the bodies nhid reads from applied update packages: the
 * first byte picks the kind ('r' revocation, 'c' cert-rotation, 't' token-keys), the rest
 * is the body.
 */
#include "../../server/server_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] == 'r')
		(void)!nhi_revocation_body_check(data + 1, size - 1);
	else if (data[0] == 'c')
		(void)!nhi_rotation_body_check(data + 1, size - 1);
	else if (data[0] == 't')
		(void)!nhi_token_keys_body_check(data + 1, size - 1);
	return 0;
}
