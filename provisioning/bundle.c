/*
 * provisioning/bundle.c — `nhictl bundle`: the trust bundle (docs/updates.md).
 * create (unsigned, from PEM files), sign (one update signer at a time, in their
 * token), fingerprint (the value to pin), verify (a rotation chain starting at the
 * pinned fingerprint: every step signed by a threshold of the previous AND of its
 * own update signers, versions consecutive, the last one unexpired).
 */
#include "../common/pkey.h"
#include "nhictl.h"
#include "../common/limits.h"
#include "../server/update.h"

#include <getopt.h>
#include <stdbool.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: nhictl bundle create --version N --expires-at UNIX --ca PEMFILE --jwks FILE\n"
		"                            --signer PUBPEM [--signer ...] --threshold M\n"
		"                            [--peer PUBPEM ...] [--manifest-key PUBPEM ...] -o OUT\n"
		"       nhictl bundle sign   --token LABEL|URI --key LABEL --pin-file FILE [--module PATH] [-o OUT] BUNDLE\n"
		"       nhictl bundle fingerprint BUNDLE\n"
		"       nhictl bundle verify --pin SHA256HEX [--now UNIX] BUNDLE1 [BUNDLE2 ...]\n"
		"\n"
		"  A bundle is signed by at least M of its own update signers; bundle N+1 must also be\n"
		"  signed by at least the threshold of bundle N's signers (TUF root rotation), and its\n"
		"  version must be exactly N+1. verify takes the chain from the pinned bundle onwards.\n");
}

#define LIST_MAX NHI_BUNDLE_KEYS_MAX

static int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{"version", required_argument, NULL, 'v'},   {"expires-at", required_argument, NULL, 'e'},
		{"ca", required_argument, NULL, 'c'},	     {"jwks", required_argument, NULL, 'j'},
		{"signer", required_argument, NULL, 's'},    {"threshold", required_argument, NULL, 'm'},
		{"peer", required_argument, NULL, 'p'},	     {"manifest-key", required_argument, NULL, 'k'},
		{"out", required_argument, NULL, 'o'},	     {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct nhi_bundle_create_req req = {0};
	EVP_PKEY *signers[LIST_MAX] = {0}, *peers[LIST_MAX] = {0}, *man[LIST_MAX] = {0};
	const char *ca = NULL, *jwks = NULL, *out = NULL, *paths[3][LIST_MAX];
	size_t counts[3] = {0}, i, l;
	struct nhi_buf ca_pem = {0}, jwks_text = {0}, doc = {0};
	EVP_PKEY **lists[3] = {signers, peers, man};
	long long num;
	int c, status = 1, which;
	nhi_err e = NHI_OK;

	optind = 1;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'v':
		case 'e':
		case 'm':
			if (!nhictl_arg_ll("bundle create", c == 'v' ? "version" : c == 'e' ? "expires-at" : "threshold", optarg,
					   1, c == 'm' ? LIST_MAX : NHI_UPDATE_TIME_MAX_S, &num))
				return 2;
			if (c == 'v')
				req.version = (uint64_t)num;
			else if (c == 'e')
				req.expires_at = num;
			else
				req.threshold = (unsigned)num;
			break;
		case 'c': ca = optarg; break;
		case 'j': jwks = optarg; break;
		case 'o': out = optarg; break;
		case 's':
		case 'p':
		case 'k':
			which = c == 's' ? 0 : c == 'p' ? 1 : 2;
			if (counts[which] == LIST_MAX) {
				fprintf(stderr, "nhictl bundle create: at most %d keys per list\n", LIST_MAX);
				return 2;
			}
			paths[which][counts[which]++] = optarg;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (req.version == 0 || req.expires_at == 0 || ca == NULL || jwks == NULL || counts[0] == 0 ||
	    req.threshold == 0 || out == NULL || optind != argc) {
		fprintf(stderr, "nhictl bundle create: --version, --expires-at, --ca, --jwks, --signer, --threshold "
				"and -o are required\n");
		return 2;
	}
	for (l = 0; l < 3 && e == NHI_OK; l++)
		for (i = 0; i < counts[l] && e == NHI_OK; i++) {
			e = nhi_pkey_load_pem_p256(paths[l][i], &lists[l][i]);
			if (e != NHI_OK)
				status = nhictl_fail("bundle create", paths[l][i], e);
		}
	if (e != NHI_OK)
		goto out;
	e = nhi_file_read(ca, NHI_CERT_MAX_BYTES * NHI_BUNDLE_CA_CERTS_MAX, &ca_pem);
	if (e == NHI_OK)
		e = nhi_file_read(jwks, NHI_JWKS_MAX_BYTES, &jwks_text);
	if (e != NHI_OK) {
		status = nhictl_fail("bundle create", "input", e);
		goto out;
	}
	req.ca_pem = (const char *)ca_pem.data;
	req.jwks = (const char *)jwks_text.data;
	req.signers = signers;
	req.n_signers = counts[0];
	req.peers = peers;
	req.n_peers = counts[1];
	req.manifest = man;
	req.n_manifest = counts[2];
	e = nhi_bundle_create(&req, &doc);
	if (e == NHI_OK)
		e = nhi_file_write_excl(out, doc.data, doc.len, 0644);
	if (e != NHI_OK) {
		status = nhictl_fail("bundle create", out, e);
		goto out;
	}
	printf("created %s: trust bundle v%llu, %zu update signers, threshold %u, unsigned: %u signer(s) now run "
	       "'nhictl bundle sign'\n",
	       out, (unsigned long long)req.version, counts[0], req.threshold, req.threshold);
	status = 0;
out:
	for (l = 0; l < 3; l++)
		for (i = 0; i < counts[l]; i++)
			EVP_PKEY_free(lists[l][i]);
	nhi_buf_free(&ca_pem);
	nhi_buf_free(&jwks_text);
	nhi_buf_free(&doc);
	return status;
}

static int cmd_fingerprint(int argc, char **argv)
{
	struct nhi_buf doc = {0}, payload = {0};
	uint8_t h[32];
	char hex[65];
	nhi_err e;

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	e = nhi_file_read(argv[1], NHI_BUNDLE_MAX_BYTES, &doc);
	if (e == NHI_OK)
		e = nhi_doc_payload(NHI_DOC_BUNDLE, doc.data, doc.len, &payload);
	if (e == NHI_OK)
		e = nhi_sha256(payload.data, payload.len, h);
	nhi_buf_free(&doc);
	nhi_buf_free(&payload);
	if (e != NHI_OK)
		return nhictl_fail("bundle fingerprint", argv[1], e);
	nhi_hex(h, 32, hex);
	printf("%s\n", hex);
	return 0;
}

/* 64 lower-case hex digits: what 'nhictl bundle fingerprint' prints and the ceremony records */
static bool pin_well_formed(const char *pin)
{
	size_t i;

	for (i = 0; pin[i] != '\0'; i++)
		if (!((pin[i] >= '0' && pin[i] <= '9') || (pin[i] >= 'a' && pin[i] <= 'f')))
			return false;
	return i == 64;
}

nhi_err nhictl_bundle_chain_load(char *const *paths, size_t n, const char *pin, int64_t now,
				 struct nhi_bundle **out, const char **bad_path)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf *docs = NULL;
	const uint8_t **ptrs = NULL;
	size_t *lens = NULL, i, bad = 0;
	enum nhi_bundle_reason why;

	*out = NULL;
	*bad_path = "--pin";
	NHI_CHECK(pin != NULL && pin_well_formed(pin), NHI_ERR_ARG,
		  "--pin must be the 64 lower-case hex digits of a bundle fingerprint (as 'nhictl bundle "
		  "fingerprint' prints it and the ceremony transcript records it)");
	*bad_path = "--bundle";
	NHI_CHECK(n >= 1 && n <= NHI_BUNDLE_CHAIN_MAX, NHI_ERR_ARG, "1..%d bundle files (oldest first) are needed",
		  NHI_BUNDLE_CHAIN_MAX);
	docs = calloc(n, sizeof(*docs));
	ptrs = calloc(n, sizeof(*ptrs));
	lens = calloc(n, sizeof(*lens));
	NHI_CHECK(docs != NULL && ptrs != NULL && lens != NULL, NHI_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++) {
		*bad_path = paths[i];
		NHI_TRY(nhi_file_read(paths[i], NHI_BUNDLE_MAX_BYTES, &docs[i]));
		ptrs[i] = docs[i].data;
		lens[i] = docs[i].len;
	}
	rv = nhi_bundle_verify_chain(ptrs, lens, n, pin, now, out, &why, &bad);
	*bad_path = paths[bad < n ? bad : 0];
out:
	for (i = 0; docs != NULL && i < n; i++)
		nhi_buf_free(&docs[i]);
	free(docs);
	free(ptrs);
	free(lens);
	return rv;
}

static int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
		{"pin", required_argument, NULL, 'P'},
		{"now", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct nhi_bundle *b = NULL;
	const char *pin = NULL, *bad_path = NULL;
	long long now = 0;
	size_t n;
	int c, status = 1;
	nhi_err e;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'P': pin = optarg; break;
		case 'n':
			if (!nhictl_arg_ll("bundle verify", "now", optarg, 1, NHI_UPDATE_TIME_MAX_S, &now))
				return 2;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (pin == NULL || optind >= argc || argc - optind > NHI_BUNDLE_CHAIN_MAX) {
		fprintf(stderr, "nhictl bundle verify: --pin and 1..%d bundles (oldest first) are required\n",
			NHI_BUNDLE_CHAIN_MAX);
		return 2;
	}
	if (now == 0)
		now = (long long)time(NULL);
	n = (size_t)(argc - optind);
	e = nhictl_bundle_chain_load(argv + optind, n, pin, now, &b, &bad_path);
	if (e != NHI_OK) {
		status = nhictl_fail("bundle verify", bad_path, e);
		goto out;
	}
	printf("trust bundle v%llu verified from the pinned v%llu (%zu step(s)): threshold %u of %zu update "
	       "signers, expires_at %lld, fingerprint %s\n",
	       (unsigned long long)nhi_bundle_version(b), (unsigned long long)nhi_bundle_version(b) - (n - 1), n - 1,
	       nhi_bundle_threshold(b), nhi_keyset_count(nhi_bundle_update_signers(b)),
	       (long long)nhi_bundle_expires_at(b), nhi_bundle_fingerprint(b));
	status = 0;
out:
	nhi_bundle_free(b);
	return status;
}

static int cmd_sign(int argc, char **argv)
{
	return nhictl_doc_sign(NHI_DOC_BUNDLE, "bundle sign", argc, argv);
}

int nhictl_bundle(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {
		{"create", cmd_create}, {"sign", cmd_sign}, {"fingerprint", cmd_fingerprint}, {"verify", cmd_verify}};

	return nhictl_dispatch("bundle", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
