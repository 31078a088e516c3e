/*
 * provisioning/hsm_init.c — `nhictl hsm-init`: initialise a token with SO and user
 * PINs read from 0600 files (softhsm2-util would take them on argv, where every
 * user of the host can read them in /proc).
 */
#include "nhictl.h"
#include "../hsm/hsm.h"

#include <getopt.h>
#include <stdio.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl hsm-init --label LABEL --so-pin-file FILE --pin-file FILE [--module PATH]\n"
		   "  Initialises a new token on the module's free slot. Both PIN files must be\n"
		   "  mode 0600 and owned by you. Refuses if a token with LABEL exists.\n");
}

int nhictl_hsm_init(int argc, char **argv)
{
	static const struct option opts[] = {
		{"label", required_argument, NULL, 'l'},   {"so-pin-file", required_argument, NULL, 's'},
		{"pin-file", required_argument, NULL, 'p'}, {"module", required_argument, NULL, 'm'},
		{"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
	};
	const char *label = NULL, *so = NULL, *pin = NULL, *module = NULL;
	nhi_err e;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': label = optarg; break;
		case 's': so = optarg; break;
		case 'p': pin = optarg; break;
		case 'm': module = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (label == NULL || so == NULL || pin == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	e = nhi_hsm_init_token(module, label, so, pin);
	if (e != NHI_OK)
		return nhictl_fail("hsm-init", label, e);
	printf("token '%s' initialised\n", label);
	return 0;
}
