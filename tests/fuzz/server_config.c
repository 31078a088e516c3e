/* tests/fuzz/server_config.c — nhid's config parser and validator on hostile input. */
#include "../../server/server.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_server_config c;

	if (nhi_server_config_parse((const char *)data, size, &c) != NHI_OK)
		return 0;
	/* an accepted config is complete and within its bounds */
	if (c.listen_port < 1 || c.listen_port > 65535 || c.n_token_keys == 0 || c.threads == 0 ||
	    c.token_ttl_default_s > c.token_ttl_max_s || memchr(c.issuer, '\0', sizeof(c.issuer)) == NULL)
		abort();
	return 0;
}
