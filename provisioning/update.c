/*
 * provisioning/update.c — `nhictl update`: signed update packages that cross the
 * data diode (docs/updates.md). create (unsigned package from a body file), sign
 * (one custodian, their own token, offline; the signature is merged into the
 * package), verify (against a trust bundle and optionally a state dir), apply and
 * scan (offline, into a state dir: the package checks nhid makes, and nhid's own
 * body checks; a body whose remaining checks need nhid's token or configuration is
 * left in place for nhid), init (install the pinned bundle v1 in a state dir),
 * pubkey (a custodian's public key for the bundle).
 * Also the `sign` shared by `nhictl bundle` and `nhictl manifest`.
 */
#include "nhictl.h"
#include "../common/limits.h"
#include "../common/pkey.h"
#include "../hsm/hsm.h"
#include "../server/server.h"
#include "../server/update.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
	unsigned k;

	fprintf(f,
		"usage: nhictl update create --kind KIND --id ID --version N --body FILE -o OUT\n"
		"                            [--created-at UNIX] (--expires-at UNIX | --expires-in S)\n"
		"       nhictl update sign   --token LABEL|URI --key LABEL --pin-file FILE [--module PATH] [-o OUT] PKG\n"
		"       nhictl update pubkey --token LABEL|URI --key LABEL [--pin-file FILE] [--module PATH]\n"
		"       nhictl update verify (--state-dir DIR | --pin SHA256HEX --bundle FILE [--bundle FILE ...])\n"
		"                            [--now UNIX] PKG\n"
		"       nhictl update init   --state-dir DIR --bundle FILE --pin SHA256HEX [--now UNIX]\n"
		"       nhictl update apply  --state-dir DIR [--now UNIX] [--skew S] PKG...\n"
		"       nhictl update scan   --state-dir DIR --incoming DIR [--now UNIX] [--skew S]\n"
		"\n");
	/* the kinds from the library's table, so that none is left out */
	fprintf(f, "  KIND:");
	for (k = 0; k < NHI_UPDATE_KIND__COUNT; k++)
		fprintf(f, "%s %s", k ? "," : "", nhi_update_kind_name((enum nhi_update_kind)k));
	fprintf(f, ".\n"
		"  sign    each custodian signs separately with the key in their own token; signing again\n"
		"          with the same key replaces that key's signature. PKG is rewritten atomically.\n"
		"  verify  prints the package facts and exits 0, or names the reason it would be refused.\n"
		"  apply   accepts a package only with signatures by >= threshold DISTINCT update signers of\n"
		"          the state dir's current trust bundle, unexpired, version above the last applied of\n"
		"          its kind, body checksum ok, and a body nhid would accept; moves it to DIR/applied/ or\n"
		"          DIR/rejected/ with a .reason. cert-rotation, token-keys, identity-backup and a revocation\n"
		"          that revokes kids need nhid's token: refused and left in place, for nhid to apply.\n");
}

/* ---- sign (shared) --------------------------------------------------------------- */

int nhictl_doc_sign(int doc_type, const char *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{"token", required_argument, NULL, 't'},    {"hsm-token", required_argument, NULL, 't'},
		{"key", required_argument, NULL, 'k'},	    {"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'M'},   {"out", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0},
	};
	enum nhi_doc_type t = (enum nhi_doc_type)doc_type;
	struct nhi_hsm_config hcfg = {0};
	struct nhi_hsm *hsm = NULL;
	struct nhi_hsm_key *key = NULL;
	struct nhi_buf doc = {0}, msg = {0}, signed_doc = {0};
	const char *label = NULL, *out = NULL, *in;
	EVP_PKEY *pub = NULL;
	uint8_t sig[64];
	size_t sig_len = 0;
	char kid[44];
	int c, status = 1;
	nhi_err e;

	optind = 1;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 't': hcfg.token = optarg; break;
		case 'k': label = optarg; break;
		case 'p': hcfg.pin_file = optarg; break;
		case 'M': hcfg.module_path = optarg; break;
		case 'o': out = optarg; break;
		case 'h': usage(stdout); return 0;
		default: return 2;
		}
	}
	if (hcfg.token == NULL || label == NULL || hcfg.pin_file == NULL || optind != argc - 1) {
		fprintf(stderr, "nhictl %s: --token, --key, --pin-file and one FILE are required\n", cmd);
		return 2;
	}
	in = argv[optind];
	if (out == NULL)
		out = in;
	e = nhi_file_read(in, t == NHI_DOC_UPDATE	? NHI_UPDATE_PACKAGE_MAX_BYTES
			      : t == NHI_DOC_BUNDLE ? NHI_BUNDLE_MAX_BYTES
						    : NHI_MANIFEST_MAX_BYTES,
			  &doc);
	if (e == NHI_OK)
		e = nhi_doc_signing_input(t, doc.data, doc.len, &msg);
	if (e != NHI_OK) {
		status = nhictl_fail(cmd, in, e);
		goto out;
	}
	hcfg.sessions = 1;
	e = nhi_hsm_open(&hcfg, &hsm);
	if (e != NHI_OK) {
		status = nhictl_fail(cmd, hcfg.token, e);
		goto out;
	}
	e = nhi_hsm_find(hsm, label, &key);
	if (e == NHI_OK && nhi_hsm_key_kind(key) != NHI_KEY_EC_P256)
		e = nhi_err_set(NHI_ERR_CONFIG, "'%s' is not an EC P-256 key: signers use ES256", label);
	if (e == NHI_OK)
		e = nhi_hsm_pubkey(hsm, key, &pub);
	if (e == NHI_OK)
		e = nhi_hsm_sign(hsm, key, msg.data, msg.len, sig, &sig_len);
	if (e == NHI_OK)
		e = nhi_doc_add_signature(t, doc.data, doc.len, pub, sig, &signed_doc);
	if (e == NHI_OK)
		e = nhi_pkey_thumbprint(pub, kid);
	if (e != NHI_OK) {
		status = nhictl_fail(cmd, label, e);
		goto out;
	}
	/* the original is replaced atomically: a crash leaves it signed or not, never torn */
	e = strcmp(out, in) == 0 ? nhi_file_write_atomic(out, signed_doc.data, signed_doc.len, 0644)
				 : nhi_file_write_excl(out, signed_doc.data, signed_doc.len, 0644);
	if (e != NHI_OK) {
		status = nhictl_fail(cmd, out, e);
		goto out;
	}
	printf("signed %s with %s (keyid %s)\n", out, label, kid);
	status = 0;
out:
	EVP_PKEY_free(pub);
	nhi_hsm_key_free(key);
	nhi_hsm_free(hsm);
	nhi_buf_free(&doc);
	nhi_buf_free(&msg);
	nhi_buf_free(&signed_doc);
	return status;
}

/* ---- create ------------------------------------------------------------------------ */

static int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{"kind", required_argument, NULL, 'k'},	      {"id", required_argument, NULL, 'i'},
		{"version", required_argument, NULL, 'v'},    {"body", required_argument, NULL, 'b'},
		{"out", required_argument, NULL, 'o'},	      {"created-at", required_argument, NULL, 'c'},
		{"expires-at", required_argument, NULL, 'e'}, {"expires-in", required_argument, NULL, 'E'},
		{"help", no_argument, NULL, 'h'},	      {NULL, 0, NULL, 0},
	};
	struct nhi_update_create_req req = {0};
	struct nhi_buf body = {0}, doc = {0};
	const char *kind = NULL, *body_path = NULL, *out = NULL;
	long long num, expires_in = 0;
	int c, status = 1;
	nhi_err e;

	optind = 1;
	while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'k': kind = optarg; break;
		case 'i': req.id = optarg; break;
		case 'b': body_path = optarg; break;
		case 'o': out = optarg; break;
		case 'v':
		case 'c':
		case 'e':
		case 'E':
			if (!nhictl_arg_ll("update create",
					   c == 'v' ? "version" : c == 'c' ? "created-at" : c == 'e' ? "expires-at" : "expires-in",
					   optarg, 1, c == 'v' ? (long long)NHI_UPDATE_VERSION_MAX : NHI_UPDATE_TIME_MAX_S, &num))
				return 2;
			if (c == 'v')
				req.version = (uint64_t)num;
			else if (c == 'c')
				req.created_at = num;
			else if (c == 'e')
				req.expires_at = num;
			else
				expires_in = num;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (kind == NULL || req.id == NULL || req.version == 0 || body_path == NULL || out == NULL ||
	    (req.expires_at == 0) == (expires_in == 0) || optind != argc) {
		fprintf(stderr, "nhictl update create: --kind, --id, --version, --body, -o and one of --expires-at "
				"or --expires-in are required\n");
		return 2;
	}
	if (req.created_at == 0)
		req.created_at = (int64_t)time(NULL);
	if (expires_in != 0)
		req.expires_at = req.created_at + expires_in;
	e = nhi_update_kind_parse(kind, &req.kind);
	if (e != NHI_OK) {
		status = nhictl_fail("update create", "--kind", e);
		goto out;
	}
	e = nhi_file_read(body_path, NHI_UPDATE_BODY_MAX_BYTES, &body);
	if (e != NHI_OK) {
		status = nhictl_fail("update create", body_path, e);
		goto out;
	}
	req.body = body.data;
	req.body_len = body.len;
	e = nhi_update_create(&req, &doc);
	if (e == NHI_OK)
		e = nhi_file_write_excl(out, doc.data, doc.len, 0644);
	if (e != NHI_OK) {
		status = nhictl_fail("update create", out, e);
		goto out;
	}
	printf("created %s: %s version %llu id %s, unsigned: each custodian now runs 'nhictl update sign'\n", out,
	       kind, (unsigned long long)req.version, req.id);
	status = 0;
out:
	nhi_buf_free(&body);
	nhi_buf_free(&doc);
	return status;
}

/* the older name of `nhictl key pubkey` (provisioning/key.c) */
static int cmd_pubkey(int argc, char **argv)
{
	return nhictl_key_pubkey("update pubkey", argc, argv);
}

/* ---- verify / init / apply / scan ---------------------------------------------------- */

struct state_opts {
	const char *state_dir, *bundle, *incoming, *pin;
	char *bundles[NHI_BUNDLE_CHAIN_MAX]; /* every --bundle, in order (verify: a chain) */
	size_t n_bundles;
	int64_t now, skew;
};

/* Common options; returns optind of the first operand, or -1 (usage printed). */
static int parse_state_opts(const char *cmd, int argc, char **argv, struct state_opts *o)
{
	static const struct option opts[] = {
		{"state-dir", required_argument, NULL, 's'}, {"bundle", required_argument, NULL, 'b'},
		{"incoming", required_argument, NULL, 'i'},  {"pin", required_argument, NULL, 'P'},
		{"now", required_argument, NULL, 'n'},	     {"skew", required_argument, NULL, 'S'},
		{"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0},
	};
	long long num;
	int c;

	memset(o, 0, sizeof(*o));
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's': o->state_dir = optarg; break;
		case 'b':
			if (o->n_bundles == NHI_BUNDLE_CHAIN_MAX) {
				fprintf(stderr, "nhictl %s: more than %d --bundle files\n", cmd, NHI_BUNDLE_CHAIN_MAX);
				return -1;
			}
			o->bundle = o->bundles[o->n_bundles++] = optarg;
			break;
		case 'i': o->incoming = optarg; break;
		case 'P': o->pin = optarg; break;
		case 'n':
			if (!nhictl_arg_ll(cmd, "now", optarg, 1, NHI_UPDATE_TIME_MAX_S, &num))
				return -1;
			o->now = num;
			break;
		case 'S':
			if (!nhictl_arg_ll(cmd, "skew", optarg, 1, NHI_UPDATE_CLOCK_SKEW_MAX_S, &num))
				return -1;
			o->skew = num;
			break;
		default: usage(stderr); return -1;
		}
	}
	if (o->now == 0)
		o->now = (int64_t)time(NULL);
	return optind;
}

static void print_info(const struct nhi_update_info *i)
{
	char h[65], p[65];

	nhi_hex(i->body_sha256, 32, h);
	nhi_hex(i->package_sha256, 32, p);
	printf("{\"id\":\"%s\",\"kind\":\"%s\",\"version\":%llu,\"created_at\":%lld,\"expires_at\":%lld,"
	       "\"signers\":%u,\"body_sha256\":\"%s\",\"package_sha256\":\"%s\"}\n",
	       i->id, nhi_update_kind_name(i->kind), (unsigned long long)i->version, (long long)i->created_at,
	       (long long)i->expires_at, i->signers, h, p);
}

static int cmd_verify(int argc, char **argv)
{
	struct state_opts o;
	struct nhi_update_state st = {0};
	struct nhi_update_check chk = {0};
	struct nhi_update_info info;
	struct nhi_bundle *b = NULL;
	struct nhi_buf doc = {0};
	enum nhi_update_reason why = NHI_UPDATE_OK;
	const char *bad_path = NULL;
	int first = parse_state_opts("update verify", argc, argv, &o), status = 1;
	nhi_err e;

	if (first < 0)
		return 2;
	if ((o.state_dir == NULL) == (o.bundle == NULL) || first != argc - 1) {
		fprintf(stderr, "nhictl update verify: one of --state-dir or --bundle, and one PKG, are required\n");
		return 2;
	}
	if (o.state_dir != NULL && o.pin != NULL) {
		fprintf(stderr, "nhictl update verify: --pin goes with --bundle; the bundle in --state-dir was "
				"installed against the pin by 'nhictl update init'\n");
		return 2;
	}
	if (o.bundle != NULL && o.pin == NULL) {
		fprintf(stderr, "nhictl update verify: --bundle needs --pin SHA256HEX: a bundle file alone proves "
				"nothing, anyone can sign one with their own keys; give the fingerprint of the first "
				"--bundle as the ceremony transcript or the witnesses recorded it (bundle v1, then the "
				"later bundles in order, as for 'nhictl bundle verify'), or use --state-dir\n");
		return 2;
	}
	if (o.state_dir != NULL) {
		e = nhi_update_load_bundle(o.state_dir, &b);
		if (e == NHI_OK)
			e = nhi_update_state_load(o.state_dir, &st);
		if (e == NHI_OK)
			e = nhi_update_clock(&st, o.now, o.skew, &o.now);
		bad_path = o.state_dir;
	} else {
		e = nhictl_bundle_chain_load(o.bundles, o.n_bundles, o.pin, o.now, &b, &bad_path);
	}
	if (e != NHI_OK) {
		status = nhictl_fail("update verify", bad_path, e);
		goto out;
	}
	e = nhi_file_read(argv[first], NHI_UPDATE_PACKAGE_MAX_BYTES, &doc);
	if (e != NHI_OK) {
		status = nhictl_fail("update verify", argv[first], e);
		goto out;
	}
	chk.signers = nhi_bundle_update_signers(b);
	chk.threshold = nhi_bundle_threshold(b);
	chk.now = o.now;
	chk.skew_s = o.skew;
	memcpy(chk.last_version, st.version, sizeof(chk.last_version));
	e = nhi_update_verify(doc.data, doc.len, &chk, &info, NULL, &why);
	if (e != NHI_OK) {
		status = nhictl_fail("update verify", argv[first], e);
		goto out;
	}
	print_info(&info);
	status = 0;
out:
	nhi_bundle_free(b);
	nhi_buf_free(&doc);
	return status;
}

static int cmd_init(int argc, char **argv)
{
	struct state_opts o;
	struct nhi_buf doc = {0};
	int first = parse_state_opts("update init", argc, argv, &o), status = 1;
	nhi_err e;

	if (first < 0)
		return 2;
	if (o.state_dir == NULL || o.n_bundles != 1 || o.pin == NULL || first != argc) {
		fprintf(stderr, "nhictl update init: --state-dir, one --bundle and --pin are required\n");
		return 2;
	}
	e = nhi_file_read(o.bundle, NHI_BUNDLE_MAX_BYTES, &doc);
	if (e == NHI_OK)
		e = nhi_update_init_state(o.state_dir, doc.data, doc.len, o.pin, o.now);
	if (e != NHI_OK) {
		status = nhictl_fail("update init", o.state_dir, e);
		goto out;
	}
	printf("state dir %s now trusts bundle %s (pinned %s)\n", o.state_dir, o.bundle, o.pin);
	status = 0;
out:
	nhi_buf_free(&doc);
	return status;
}

/*
 * Offline apply commits only what nhid would: prepare runs nhid's body checks (a body
 * nhid refuses goes to rejected/ with nhid's message), and hold leaves in place, for
 * nhid, a body whose remaining checks need nhid's token or configuration.
 */
struct offline {
	bool needs_nhid; /* set by offline_prepare for the package being applied */
};

static nhi_err offline_prepare(void *arg, const struct nhi_update_info *info, const uint8_t *body, size_t len)
{
	struct offline *o = arg;

	return nhi_server_update_body_check(info, body, len, &o->needs_nhid);
}

static nhi_err offline_hold(void *arg, const struct nhi_update_info *info, const uint8_t *body, size_t len)
{
	const struct offline *o = arg;

	(void)body;
	(void)len;
	if (!o->needs_nhid)
		return NHI_OK;
	if (info->kind == NHI_UPDATE_REVOCATION)
		return nhi_err_set(NHI_ERR_DENIED,
				   "revocation version %llu revokes kids, and only nhid can check that none of them "
				   "signs tokens: not applied, left in place; drop it in nhid's updates_dir and let nhid "
				   "apply it",
				   (unsigned long long)info->version);
	return nhi_err_set(NHI_ERR_DENIED,
			   "%s packages need nhid's token and configuration: not applied, left in place; drop it in "
			   "nhid's updates_dir and let nhid apply it",
			   nhi_update_kind_name(info->kind));
}

static void report(void *arg, const char *path, nhi_err e, const struct nhi_update_result *res)
{
	int *status = arg;

	if (e == NHI_OK) {
		printf("applied %s -> %s (%s version %llu, %u signers)\n", path, res->moved_to,
		       nhi_update_kind_name(res->info.kind), (unsigned long long)res->info.version, res->info.signers);
		return;
	}
	*status = 1;
	if (res->moved_to[0] != '\0')
		fprintf(stderr, "nhictl update: rejected %s -> %s: %s [%s]\n", path, res->moved_to, res->detail,
			nhi_update_reason_name(res->why));
	else
		nhictl_fail("update", path, e);
}

static int cmd_apply(int argc, char **argv)
{
	struct state_opts o;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result *res = calloc(1, sizeof(*res));
	struct nhi_bundle *b = NULL;
	struct offline off = {0};
	int first = parse_state_opts("update apply", argc, argv, &o), status = 0, i;
	nhi_err e;

	if (first < 0 || res == NULL) {
		free(res);
		return 2;
	}
	if (o.state_dir == NULL || first >= argc) {
		fprintf(stderr, "nhictl update apply: --state-dir and at least one PKG are required\n");
		free(res);
		return 2;
	}
	cfg.state_dir = o.state_dir;
	cfg.now = o.now;
	cfg.skew_s = o.skew;
	cfg.prepare = offline_prepare;
	cfg.hold = offline_hold;
	cfg.prepare_arg = &off;
	for (i = first; i < argc; i++) {
		/* reloaded for every package: a trust-bundle package changes the signers */
		nhi_bundle_free(b);
		b = NULL;
		e = nhi_update_load_bundle(o.state_dir, &b);
		if (e != NHI_OK) {
			status = nhictl_fail("update apply", o.state_dir, e);
			break;
		}
		cfg.bundle = b;
		e = nhi_update_apply_file(&cfg, argv[i], res);
		report(&status, argv[i], e, res);
	}
	nhi_bundle_free(b);
	free(res);
	return status;
}

static int cmd_scan(int argc, char **argv)
{
	struct state_opts o;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_scan_stats stats;
	struct nhi_bundle *b = NULL;
	struct offline off = {0};
	int first = parse_state_opts("update scan", argc, argv, &o), status = 0;
	nhi_err e;

	if (first < 0)
		return 2;
	if (o.state_dir == NULL || o.incoming == NULL || first != argc) {
		fprintf(stderr, "nhictl update scan: --state-dir and --incoming are required\n");
		return 2;
	}
	e = nhi_update_load_bundle(o.state_dir, &b);
	if (e != NHI_OK)
		return nhictl_fail("update scan", o.state_dir, e);
	cfg.state_dir = o.state_dir;
	cfg.bundle = b;
	cfg.now = o.now;
	cfg.skew_s = o.skew;
	cfg.prepare = offline_prepare;
	cfg.hold = offline_hold;
	cfg.prepare_arg = &off;
	e = nhi_update_scan(&cfg, o.incoming, report, &status, &stats);
	if (e != NHI_OK)
		status = nhictl_fail("update scan", o.incoming, e);
	else
		printf("scan: %u applied, %u rejected, %u failed\n", stats.applied, stats.rejected, stats.failed);
	nhi_bundle_free(b);
	return status;
}

static int cmd_sign(int argc, char **argv)
{
	return nhictl_doc_sign(NHI_DOC_UPDATE, "update sign", argc, argv);
}

int nhictl_update(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {
		{"create", cmd_create}, {"sign", cmd_sign},   {"pubkey", cmd_pubkey}, {"verify", cmd_verify},
		{"init", cmd_init},	{"apply", cmd_apply}, {"scan", cmd_scan},
	};

	return nhictl_dispatch("update", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
