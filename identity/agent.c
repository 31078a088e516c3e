/* identity/agent.c — agent records handed out by the store, and the policy checked at lookup time. */
#include "identity_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *nhi_agent_status_name(enum nhi_agent_status s)
{
	switch (s) {
	case NHI_AGENT_ACTIVE: return "active";
	case NHI_AGENT_SUSPENDED: return "suspended";
	case NHI_AGENT_REVOKED: return "revoked";
	}
	return "unknown";
}

nhi_err nhi_agent_check(const struct nhi_agent *a, long long now)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char t[32];

	NHI_CHECK(a->status == NHI_AGENT_ACTIVE, NHI_ERR_DENIED, "agent '%s' is %s", a->id,
		  nhi_agent_status_name(a->status));
	if (now < a->not_before) {
		nhi_time_rfc3339(a->not_before, t, sizeof(t));
		NHI_FAIL(NHI_ERR_EXPIRED, "agent '%s' is not valid before %s", a->id, t);
	}
	if (now > a->not_after) {
		nhi_time_rfc3339(a->not_after, t, sizeof(t));
		NHI_FAIL(NHI_ERR_EXPIRED, "agent '%s' expired at %s", a->id, t);
	}
	rv = NHI_OK;
out:
	return rv;
}

static bool in_list(const char *const *list, size_t n, const char *s)
{
	size_t i;

	if (s == NULL)
		return false;
	for (i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

bool nhi_agent_has_role(const struct nhi_agent *a, const char *role)
{
	return in_list(a->roles, a->n_roles, role);
}

bool nhi_agent_allows_audience(const struct nhi_agent *a, const char *audience)
{
	return in_list(a->audiences, a->n_audiences, audience);
}

void nhi_agent_free(struct nhi_agent *a)
{
	free(a); /* one block: the struct, its arrays and its strings */
}
