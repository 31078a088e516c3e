/*
 * provisioning/cli.c — what every nhictl subcommand shares on its command line: one
 * failure format and one strict number parser.
 */
#include "nhictl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int nhictl_fail(const char *cmd, const char *what, nhi_err e)
{
	fprintf(stderr, "nhictl %s: %s: %s [%s]\n", cmd, what, nhi_err_detail(), nhi_err_name(e));
	return 1;
}

bool nhictl_parse_ll(const char *s, long long lo, long long hi, long long *out)
{
	char *end = NULL;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}
