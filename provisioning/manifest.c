/*
 * provisioning/manifest.c — `nhictl manifest`: model-weight manifests for the
 * inference component (docs/updates.md). sign DIR hashes every file below DIR
 * (symlinks never followed) into a canonical manifest and signs it in the token;
 * verify DIR checks the signature against the trust bundle's manifest keys and
 * names every file that differs, is missing or is extra. The bundle is state_dir's,
 * or bundle files given by hand checked as a chain from --pin (never trusted as given).
 */
#include "nhictl.h"
#include "../common/limits.h"
#include "../server/update.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl manifest sign   --name NAME -o OUT --token LABEL|URI --key LABEL --pin-file FILE\n"
		   "                              [--module PATH] DIR\n"
		   "       nhictl manifest add-signature --token ... --key ... --pin-file ... MANIFEST\n"
		   "       nhictl manifest verify --manifest FILE (--state-dir DIR | --pin SHA256HEX --bundle FILE\n"
		   "                              [--bundle FILE ...]) DIR\n"
		   "\n"
		   "  --bundle files are the chain from the pinned bundle (the ceremony's v1, whose\n"
		   "  fingerprint --pin is) to the one in service, oldest first, as 'nhictl bundle verify'.\n"
		   "  verify exits 0 when DIR matches; otherwise it prints one line per file:\n"
		   "  'differs PATH', 'missing PATH' or 'extra PATH', and exits 1.\n");
}

static int cmd_sign(int argc, char **argv)
{
	static const struct option opts[] = {
		{"name", required_argument, NULL, 'N'},	  {"out", required_argument, NULL, 'o'},
		{"token", required_argument, NULL, 't'},  {"key", required_argument, NULL, 'k'},
		{"pin-file", required_argument, NULL, 'p'}, {"module", required_argument, NULL, 'M'},
		{"help", no_argument, NULL, 'h'},	  {NULL, 0, NULL, 0},
	};
	const char *name = NULL, *out = NULL, *tok = NULL, *key = NULL, *pin = NULL, *module = NULL;
	char *sargv[12];
	int sargc = 0, c, status;
	struct nhi_buf doc = {0};
	nhi_err e;

	optind = 1;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'N': name = optarg; break;
		case 'o': out = optarg; break;
		case 't': tok = optarg; break;
		case 'k': key = optarg; break;
		case 'p': pin = optarg; break;
		case 'M': module = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (name == NULL || out == NULL || tok == NULL || key == NULL || pin == NULL || optind != argc - 1) {
		fprintf(stderr, "nhictl manifest sign: --name, -o, --token, --key, --pin-file and DIR are required\n");
		return 2;
	}
	e = nhi_manifest_build(argv[optind], name, (int64_t)time(NULL), &doc);
	if (e == NHI_OK)
		e = nhi_file_write_excl(out, doc.data, doc.len, 0644);
	nhi_buf_free(&doc);
	if (e != NHI_OK)
		return nhictl_fail("manifest sign", argv[optind], e);
	sargv[sargc++] = "sign";
	sargv[sargc++] = "--token";
	sargv[sargc++] = (char *)tok;
	sargv[sargc++] = "--key";
	sargv[sargc++] = (char *)key;
	sargv[sargc++] = "--pin-file";
	sargv[sargc++] = (char *)pin;
	if (module != NULL) {
		sargv[sargc++] = "--module";
		sargv[sargc++] = (char *)module;
	}
	sargv[sargc++] = (char *)out;
	sargv[sargc] = NULL;
	status = nhictl_doc_sign(NHI_DOC_MANIFEST, "manifest sign", sargc, sargv);
	if (status != 0)
		remove(out); /* never leave an unsigned manifest behind under the name asked for */
	return status;
}

static void print_diff(void *arg, enum nhi_manifest_diff d, const char *path)
{
	(void)arg;
	printf("%s %s\n", d == NHI_MANIFEST_DIFFERS ? "differs" : d == NHI_MANIFEST_MISSING ? "missing" : "extra", path);
}

static int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
		{"manifest", required_argument, NULL, 'm'}, {"state-dir", required_argument, NULL, 's'},
		{"bundle", required_argument, NULL, 'b'},   {"pin", required_argument, NULL, 'P'},
		{"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0},
	};
	const char *mpath = NULL, *state = NULL, *pin = NULL, *bad_path = NULL;
	char **bpaths = calloc((size_t)argc, sizeof(*bpaths)); /* the --bundle files, at most argc */
	struct nhi_buf doc = {0};
	struct nhi_bundle *b = NULL;
	size_t n = 0, nb = 0;
	int c, status = 1;
	nhi_err e;

	if (bpaths == NULL) {
		fprintf(stderr, "nhictl manifest verify: out of memory\n");
		goto out;
	}
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': mpath = optarg; break;
		case 's': state = optarg; break;
		case 'b': bpaths[nb++] = optarg; break;
		case 'P': pin = optarg; break;
		case 'h': usage(stdout); status = 0; goto out;
		default: usage(stderr); status = 2; goto out;
		}
	}
	status = 2;
	if (mpath == NULL || (state == NULL) == (nb == 0) || optind != argc - 1 || nb > NHI_BUNDLE_CHAIN_MAX)
		fprintf(stderr, "nhictl manifest verify: --manifest, one of --state-dir/--bundle (1..%d of them, "
				"oldest first), and DIR are required\n",
			NHI_BUNDLE_CHAIN_MAX);
	else if (state != NULL && pin != NULL)
		fprintf(stderr, "nhictl manifest verify: --pin goes with --bundle; the bundle in --state-dir was "
				"installed against the pin by 'nhictl update init'\n");
	else if (nb > 0 && pin == NULL)
		fprintf(stderr, "nhictl manifest verify: --bundle needs --pin SHA256HEX: a bundle file alone proves "
				"nothing, anyone can sign one with their own keys; give the fingerprint of the first "
				"--bundle as the ceremony transcript or the witnesses recorded it (bundle v1, then the "
				"later bundles in order, as for 'nhictl bundle verify'), or use --state-dir\n");
	else
		status = 1;
	if (status == 2)
		goto out;
	if (state != NULL) {
		e = nhi_update_load_bundle(state, &b);
		bad_path = state;
	} else {
		e = nhictl_bundle_chain_load(bpaths, nb, pin, (int64_t)time(NULL), &b, &bad_path);
	}
	if (e != NHI_OK) {
		status = nhictl_fail("manifest verify", bad_path, e);
		goto out;
	}
	e = nhi_file_read(mpath, NHI_MANIFEST_MAX_BYTES, &doc);
	if (e != NHI_OK) {
		status = nhictl_fail("manifest verify", mpath, e);
		goto out;
	}
	e = nhi_manifest_verify_dir(doc.data, doc.len, nhi_bundle_manifest_keys(b), argv[optind], print_diff, NULL,
				    &n);
	if (e != NHI_OK) {
		status = nhictl_fail("manifest verify", argv[optind], e);
		goto out;
	}
	printf("%s matches %s\n", argv[optind], mpath);
	status = 0;
out:
	free(bpaths);
	nhi_bundle_free(b);
	nhi_buf_free(&doc);
	return status;
}

static int cmd_add_signature(int argc, char **argv)
{
	return nhictl_doc_sign(NHI_DOC_MANIFEST, "manifest add-signature", argc, argv);
}

int nhictl_manifest(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {
		{"sign", cmd_sign}, {"add-signature", cmd_add_signature}, {"verify", cmd_verify}};

	return nhictl_dispatch("manifest", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
