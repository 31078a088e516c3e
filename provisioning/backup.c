/*
 * provisioning/backup.c — `nhictl backup create|inspect|verify`: the identity
 * backup on the ceremony side. create signs and encrypts an agents JSONL file with
 * the token's keys; inspect prints a header without any key; verify runs the very
 * import nhid runs (signature, in-token unwrap and decrypt, integrity and schema
 * checks) into a throw-away store. Format: docs/formats.md; JSONL: docs/identity.md.
 */
#include "nhictl.h"
#include "prov_internal.h"
#include "../identity/identity.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: nhictl backup create --agents FILE.jsonl --out FILE (--config CEREMONY.conf | --token LABEL)\n"
		"                            [--module PATH] [--pin-file FILE] [--sign-key LABEL] [--wrap-key LABEL]\n"
		"                            [--serial N] [--certs-dir DIR]\n"
		"       nhictl backup inspect FILE\n"
		"       nhictl backup verify FILE (--config CEREMONY.conf | --token LABEL) [--module PATH]\n"
		"                            [--pin-file FILE] [--sign-key LABEL] [--agent ID]...\n"
		"\n"
		"  create   validate every agent line (all bad lines are listed; nothing is written then),\n"
		"           build the SQLite image, encrypt it in the token under a fresh data key, wrap\n"
		"           the data key under the wrap key (default %s), sign with the signing key\n"
		"           (default %s). --serial defaults to the creation time; nhid refuses a backup\n"
		"           whose serial is below the loaded one. Refuses to overwrite --out. Relative\n"
		"           cert_pem_file paths are read from --certs-dir (default: the JSONL's directory).\n"
		"  inspect  print the header without any key; nothing is verified.\n"
		"  verify   the full import nhid performs, into memory only; --agent prints records.\n"
		"  The user PIN comes from --pin-file (0600) or a prompt on the terminal.\n",
		NHI_BACKUP_WRAP_KEY_DEFAULT, NHI_BACKUP_SIGN_KEY_DEFAULT);
}

struct args {
	const char *agents, *certs_dir, *out, *config, *token, *module, *pin_file, *sign_key, *wrap_key;
	const char *agent_ids[16];
	size_t n_agents;
	uint64_t serial;
	const char *file;
};

static int parse(int argc, char **argv, bool with_file, struct args *a)
{
	static const struct option opts[] = {
		{"agents", required_argument, NULL, 'a'}, {"out", required_argument, NULL, 'o'},
		{"config", required_argument, NULL, 'c'}, {"token", required_argument, NULL, 't'},
		{"module", required_argument, NULL, 'm'}, {"pin-file", required_argument, NULL, 'p'},
		{"sign-key", required_argument, NULL, 's'}, {"wrap-key", required_argument, NULL, 'w'},
		{"serial", required_argument, NULL, 'n'}, {"agent", required_argument, NULL, 'g'},
		{"certs-dir", required_argument, NULL, 'd'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	char *end;
	int c;

	memset(a, 0, sizeof(*a));
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'a': a->agents = optarg; break;
		case 'o': a->out = optarg; break;
		case 'd': a->certs_dir = optarg; break;
		case 'c': a->config = optarg; break;
		case 't': a->token = optarg; break;
		case 'm': a->module = optarg; break;
		case 'p': a->pin_file = optarg; break;
		case 's': a->sign_key = optarg; break;
		case 'w': a->wrap_key = optarg; break;
		case 'n':
			errno = 0;
			a->serial = strtoull(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || a->serial == 0 || optarg[0] == '-') {
				fprintf(stderr, "nhictl backup: --serial must be a positive integer\n");
				return 2;
			}
			break;
		case 'g':
			if (a->n_agents == sizeof(a->agent_ids) / sizeof(a->agent_ids[0])) {
				fprintf(stderr, "nhictl backup: at most 16 --agent options\n");
				return 2;
			}
			a->agent_ids[a->n_agents++] = optarg;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (with_file) {
		if (optind + 1 != argc) {
			usage(stderr);
			return 2;
		}
		a->file = argv[optind];
	} else if (optind != argc) {
		usage(stderr);
		return 2;
	}
	return -1; /* go on */
}

/* Open the token from --config (the ceremony config) or --token/--module. */
static nhi_err open_token(const struct args *a, struct nhi_hsm **h)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_ceremony_config *cfg = calloc(1, sizeof(*cfg));
	uint8_t sha[32];

	NHI_CHECK(cfg != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK((a->config != NULL) != (a->token != NULL), NHI_ERR_ARG,
		  "name the token with exactly one of --config CEREMONY.conf or --token LABEL");
	if (a->config != NULL) {
		NHI_CHECK(a->module == NULL, NHI_ERR_ARG, "--module goes with --token; the ceremony config names its module");
		NHI_TRY(nhi_ceremony_config_load(a->config, cfg, sha));
	} else {
		NHI_CHECK(strlen(a->token) < sizeof(cfg->token), NHI_ERR_ARG, "--token is too long");
		snprintf(cfg->token, sizeof(cfg->token), "%s", a->token);
		if (a->module != NULL) {
			NHI_CHECK(strlen(a->module) < sizeof(cfg->module), NHI_ERR_ARG, "--module is too long");
			snprintf(cfg->module, sizeof(cfg->module), "%s", a->module);
		}
	}
	NHI_TRY(nhictl_open_hsm(cfg, a->pin_file, h));
	rv = NHI_OK;
out:
	free(cfg);
	return rv;
}

static void print_info(FILE *f, const struct nhi_backup_info *i)
{
	char t[32];

	nhi_time_rfc3339(i->created_at, t, sizeof(t));
	fprintf(f, "  format         version %u, identity schema %u\n", i->format_version, i->schema_version);
	fprintf(f, "  serial         %" PRIu64 "\n", i->serial);
	fprintf(f, "  created_at     %s\n", t);
	fprintf(f, "  agents         %" PRIu64 "\n", i->record_count);
	fprintf(f, "  image          %" PRIu64 " bytes in %u chunk%s of %u\n", i->image_bytes, i->chunk_count,
		i->chunk_count == 1 ? "" : "s", i->chunk_bytes);
	fprintf(f, "  file           %" PRIu64 " bytes\n", i->file_bytes);
	fprintf(f, "  wrapped under  %s\n", i->wrap_key_label);
	fprintf(f, "  signed by      %s (SPKI SHA-256 %s)\n", i->sign_key_label, i->sign_key_sha256);
	if (i->digest_sha256[0] != '\0')
		fprintf(f, "  sha256         %s (header and ciphertext, as signed)\n", i->digest_sha256);
}

static int cmd_create(int argc, char **argv)
{
	struct args a;
	struct nhi_hsm *h = NULL;
	struct nhi_backup_create_opts o = {0};
	struct nhi_backup_info info;
	struct nhi_buf out = {0}, report = {0};
	nhi_err e;
	int rc = parse(argc, argv, false, &a);

	if (rc >= 0)
		return rc;
	if (a.agents == NULL || a.out == NULL) {
		usage(stderr);
		return 2;
	}
	e = open_token(&a, &h);
	if (e != NHI_OK) {
		rc = nhictl_fail("backup create", "opening the token", e);
		goto out;
	}
	o.agents_path = a.agents;
	o.certs_dir = a.certs_dir;
	o.sign_key_label = a.sign_key;
	o.wrap_key_label = a.wrap_key;
	o.serial = a.serial;
	e = nhi_backup_create(h, &o, &out, &info, &report);
	if (report.len > 0)
		fprintf(stderr, "%s", (const char *)report.data);
	if (e != NHI_OK) {
		rc = nhictl_fail("backup create", a.agents, e);
		goto out;
	}
	e = nhi_file_write_excl(a.out, out.data, out.len, 0644);
	if (e != NHI_OK) {
		rc = nhictl_fail("backup create", a.out, e);
		goto out;
	}
	printf("backup written: %s\n", a.out);
	print_info(stdout, &info);
	rc = 0;
out:
	nhi_buf_free(&report);
	nhi_buf_free(&out);
	nhi_hsm_free(h);
	return rc;
}

static int cmd_inspect(int argc, char **argv)
{
	struct args a;
	struct nhi_backup_info info;
	nhi_err e;
	int rc = parse(argc, argv, true, &a);

	if (rc >= 0)
		return rc;
	e = nhi_backup_inspect_file(a.file, &info);
	if (e != NHI_OK) {
		rc = nhictl_fail("backup inspect", a.file, e);
		goto out;
	}
	printf("%s: nhid identity backup (header only: NOT verified; 'nhictl backup verify' checks it)\n", a.file);
	print_info(stdout, &info);
	rc = 0;
out:
	return rc;
}

static void print_agent(const struct nhi_agent *ag)
{
	char nb[32], na[32], hex[65];
	size_t i;

	nhi_time_rfc3339(ag->not_before, nb, sizeof(nb));
	nhi_time_rfc3339(ag->not_after, na, sizeof(na));
	printf("agent %s\n  status         %s\n  valid          %s .. %s\n  roles         ", ag->id,
	       nhi_agent_status_name(ag->status), nb, na);
	for (i = 0; i < ag->n_roles; i++)
		printf(" %s", ag->roles[i]);
	printf("\n  audiences     ");
	for (i = 0; i < ag->n_audiences; i++)
		printf(" %s", ag->audiences[i]);
	printf("\n  attributes     %s\n", ag->attributes);
	for (i = 0; i < ag->n_thumbprints; i++) {
		nhi_hex(ag->thumbprints[i], 32, hex);
		printf("  cert_sha256    %s\n", hex);
	}
}

static int cmd_verify(int argc, char **argv)
{
	struct args a;
	struct nhi_hsm *h = NULL;
	struct nhi_store *s = NULL;
	struct nhi_store_import_opts o = {0};
	struct nhi_store_import_result r;
	struct nhi_agent *ag = NULL;
	nhi_err e;
	size_t i;
	int rc = parse(argc, argv, true, &a);

	if (rc >= 0)
		return rc;
	e = open_token(&a, &h);
	if (e != NHI_OK) {
		rc = nhictl_fail("backup verify", "opening the token", e);
		goto out;
	}
	o.sign_key_label = a.sign_key;
	o.wrap_key_label = a.wrap_key;
	e = nhi_store_new(&s);
	if (e == NHI_OK)
		e = nhi_store_import_file(s, h, a.file, &o, &r);
	if (e != NHI_OK) {
		rc = nhictl_fail("backup verify", "import", e);
		goto out;
	}
	printf("%s: OK (signature, in-token unwrap and decrypt, integrity and schema checks)\n", a.file);
	print_info(stdout, &r.info);
	printf("  import         %.3f s (verify %.3f, decrypt %.3f, check %.3f)\n", r.total_s, r.verify_s, r.decrypt_s,
	       r.check_s);
	rc = 0;
	for (i = 0; i < a.n_agents; i++) {
		e = nhi_store_find_id(s, a.agent_ids[i], &ag);
		if (e != NHI_OK) {
			rc = nhictl_fail("backup verify", a.agent_ids[i], e);
			continue;
		}
		print_agent(ag);
		nhi_agent_free(ag);
		ag = NULL;
	}
out:
	nhi_store_free(s);
	nhi_hsm_free(h);
	return rc;
}

int nhictl_backup(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {
		{"create", cmd_create}, {"inspect", cmd_inspect}, {"verify", cmd_verify}};

	return nhictl_dispatch("backup", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
