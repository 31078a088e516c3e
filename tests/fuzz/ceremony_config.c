/* tests/fuzz/ceremony_config.c — the ceremony config parser and validator. */
#include "../../provisioning/prov_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_ceremony_config c;
	size_t i;

	if (nhi_ceremony_config_parse((const char *)data, size, &c) != NHI_OK)
		return 0;
	/* an accepted config holds only validated, terminated values */
	if (!nhi_valid_trust_domain(c.trust_domain) || c.n_dns > NHI_CFG_LIST_MAX || c.n_ip > NHI_CFG_LIST_MAX)
		abort();
	for (i = 0; i < c.n_dns; i++)
		if (!nhi_valid_dns_name(c.server_dns[i]))
			abort();
	if (memchr(c.token, '\0', sizeof(c.token)) == NULL)
		abort();
	return 0;
}
