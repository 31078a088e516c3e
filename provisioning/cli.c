/*
 * provisioning/cli.c — what every nhictl subcommand shares on its command line: one
 * failure format and one strict number parser.
 */
#include "nhictl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nhictl_fail(const char *cmd, const char *what, nhi_err e)
{
	fprintf(stderr, "nhictl %s: %s: %s [%s]\n", cmd, what, nhi_err_detail(), nhi_err_name(e));
	return 1;
}

int nhictl_dispatch(const char *cmd, const struct nhictl_action *actions, size_t n, void (*usage)(FILE *f), int argc,
		    char **argv)
{
	size_t i;

	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (i = 0; i < n; i++)
		if (strcmp(argv[1], actions[i].name) == 0)
			return actions[i].run(argc - 1, argv + 1);
	fprintf(stderr, "nhictl %s: unknown action '%s'\n", cmd, argv[1]);
	usage(stderr);
	return 2;
}

bool nhictl_arg_ll(const char *cmd, const char *opt, const char *s, long long lo, long long hi, long long *out)
{
	char *end = NULL;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "nhictl %s: --%s '%s' must be a whole number from %lld to %lld\n", cmd, opt, s, lo, hi);
		return false;
	}
	*out = v;
	return true;
}
