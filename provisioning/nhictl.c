/* provisioning/nhictl.c — the operator tool's entry point: dispatch to one subcommand. */
#include "nhictl.h"
#include "../server/sandbox.h"

#include <stdio.h>
#include <string.h>

struct subcommand {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

static const struct subcommand subcommands[] = {
	{"hsm-init", nhictl_hsm_init, "initialise a PKCS#11 token (SO and user PINs from 0600 files)"},
	{"ceremony", nhictl_ceremony, "key ceremony: keys in the token, root and server certs, transcript; "
				      "'ceremony verify' checks a transcript offline"},
	{"enroll", nhictl_enroll, "agent key pair and client certificate, or a certificate for a CSR"},
	{"backup", nhictl_backup, "identity backup: create, inspect, verify"},
	{"token", nhictl_token, "offline token verification against a JWKS"},
	{"audit", nhictl_audit, "'audit verify': check an nhid audit log's chain and checkpoint signatures"},
	{"update", nhictl_update, "signed update packages: create, sign (one custodian each), verify, apply, scan"},
	{"rotation", nhictl_rotation, "'rotation make': cert-rotation package body (new TLS cert + key wrapped under nhid-wrap)"},
	{"bundle", nhictl_bundle, "trust bundle: create, sign, verify a rotation chain from the pinned fingerprint"},
	{"manifest", nhictl_manifest, "model manifest: sign a directory's per-file SHA-256, verify a directory against it"},
	{"key", nhictl_key, "a labelled EC P-256 key in a token (signing-service and custodian keys), its public key"},
	{"airgap", nhictl_airgap, "'airgap check': this host against the air-gap contract (routes, DNS, listeners, files, keys, certs)"},
};

static void usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: nhictl <command> [options]   (nhictl <command> --help for details)\n\n");
	for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++) {
		if (strcmp(argv[1], subcommands[i].name) != 0)
			continue;
		/* nhictl never needs the network: every subcommand runs under the same
		 * kernel no-egress filter as nhid (docs/airgap.md), installed before it
		 * reads a byte of its input */
		if (nhi_sandbox_install(NHI_SANDBOX_DEFAULT) != NHI_OK)
			return nhictl_fail(argv[1], "no-egress filter", NHI_ERR_INTERNAL);
		return subcommands[i].run(argc - 1, argv + 1);
	}
	fprintf(stderr, "nhictl: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
