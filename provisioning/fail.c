/* provisioning/fail.c — how every nhictl subcommand reports a failure (one format). */
#include "nhictl.h"

#include <stdio.h>

int nhictl_fail(const char *cmd, const char *what, nhi_err e)
{
	fprintf(stderr, "nhictl %s: %s: %s [%s]\n", cmd, what, nhi_err_detail(), nhi_err_name(e));
	return 1;
}
