/*
 * provisioning/key.c — `nhictl key`: a labelled P-256 key made inside a token
 * (non-extractable), and the public key of one. Used for the signing service's
 * purpose keys (nhid config signing_keys) and the custodians' update-signer keys;
 * `nhictl update pubkey` is the same action under its older name.
 */
#include "nhictl.h"
#include "prov_internal.h"
#include "../common/pkey.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl key create --token LABEL|URI --key LABEL --pin-file FILE [--module PATH]\n"
		   "       nhictl key pubkey --token LABEL|URI --key LABEL [--pin-file FILE] [--module PATH]\n"
		   "\n"
		   "  create  generates an EC P-256 key pair in the token under LABEL (private key sensitive and\n"
		   "          not extractable; a label in use is refused) and prints its public key (PEM) on\n"
		   "          stdout and its kid (RFC 7638 thumbprint) on stderr.\n"
		   "  pubkey  prints the public key of LABEL (PEM) on stdout.\n");
}

static int run(const char *cmd, bool create, int argc, char **argv)
{
	static const struct option opts[] = {
		{"token", required_argument, NULL, 't'},  {"hsm-token", required_argument, NULL, 't'},
		{"key", required_argument, NULL, 'k'},	  {"label", required_argument, NULL, 'k'},
		{"pin-file", required_argument, NULL, 'p'}, {"module", required_argument, NULL, 'M'},
		{"help", no_argument, NULL, 'h'},	  {NULL, 0, NULL, 0},
	};
	struct nhi_hsm_config hcfg = {0};
	struct nhi_hsm *hsm = NULL;
	struct nhi_hsm_key *key = NULL;
	struct nhi_buf pem = {0};
	EVP_PKEY *pub = NULL;
	const char *label = NULL;
	char kid[44];
	int c, status = 1;
	nhi_err e;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't': hcfg.token = optarg; break;
		case 'k': label = optarg; break;
		case 'p': hcfg.pin_file = optarg; break;
		case 'M': hcfg.module_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (hcfg.token == NULL || label == NULL || optind != argc || (create && hcfg.pin_file == NULL)) {
		fprintf(stderr, "nhictl %s: --token and --key are required%s\n", cmd, create ? ", and --pin-file" : "");
		return 2;
	}
	hcfg.sessions = 1;
	e = nhi_hsm_open(&hcfg, &hsm);
	if (e == NHI_OK)
		e = create ? nhi_hsm_generate(hsm, NHI_KEY_EC_P256, label, &key) : nhi_hsm_find(hsm, label, &key);
	if (e == NHI_OK)
		e = nhi_hsm_pubkey_export(hsm, key, NHI_PUBKEY_PEM, &pem);
	if (e == NHI_OK)
		e = nhi_hsm_pubkey(hsm, key, &pub);
	if (e == NHI_OK)
		e = nhi_pkey_thumbprint(pub, kid);
	if (e != NHI_OK) {
		status = nhictl_fail(cmd, label, e);
		goto out;
	}
	fwrite(pem.data, 1, pem.len, stdout);
	if (create)
		fprintf(stderr, "created EC P-256 key '%s' in token %s, kid %s\n", label, nhi_hsm_token_desc(hsm), kid);
	status = 0;
out:
	EVP_PKEY_free(pub);
	nhi_buf_free(&pem);
	nhi_hsm_key_free(key);
	nhi_hsm_free(hsm);
	return status;
}

static int cmd_create(int argc, char **argv)
{
	return run("key create", true, argc, argv);
}

int nhictl_key_pubkey(const char *cmd, int argc, char **argv)
{
	return run(cmd, false, argc, argv);
}

static int cmd_pubkey(int argc, char **argv)
{
	return nhictl_key_pubkey("key pubkey", argc, argv);
}

int nhictl_key(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {{"create", cmd_create}, {"pubkey", cmd_pubkey}};

	return nhictl_dispatch("key", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
