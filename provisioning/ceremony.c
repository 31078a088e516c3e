/*
 * provisioning/ceremony.c — `nhictl ceremony`: the key ceremony that creates the
 * trust root, and `nhictl ceremony verify` that lets witnesses check its transcript
 * offline. docs/ceremony.md is the runbook.
 *
 * All-or-nothing: every check (config, the custodians' public-key files, labels
 * free, outputs absent) runs before anything is created; if a later step fails, the
 * keys made in this run are destroyed, the files written in this run removed, and
 * out_dir too if this run created it (and it is empty again).
 *
 * With update_signers in the config the ceremony also makes trust bundle v1
 * (unsigned: the custodians sign it offline with `nhictl bundle sign`) and prints
 * and records its fingerprint, the value `nhictl update init --pin` takes.
 */
#include "nhictl.h"
#include "prov_internal.h"
#include "../common/limits.h"
#include "../common/pkey.h"
#include "../server/update.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STEPS 9        /* without a trust bundle */
#define STEPS_BUNDLE 10 /* with one: the bundle step comes after the public material */
#define MAX_OUTPUTS 16
#define BUNDLE_FILE "trust-bundle-v1.json"

struct key_plan {
	const char *label;
	enum nhi_key_kind kind;
	const char *role;
};

static const struct key_plan key_plan[] = {
	{NHI_LABEL_ROOT, NHI_KEY_EC_P256, "root CA key: signs certificates, backups, the transcript"},
	{NHI_LABEL_TLS, NHI_KEY_EC_P256, "TLS server key: every handshake signature of nhid"},
	{NHI_LABEL_TOKEN, NHI_KEY_EC_P256, "token-signing key: ES256 agent tokens"},
	{NHI_LABEL_AUDIT, NHI_KEY_EC_P256, "audit key: signs audit checkpoints"},
	{NHI_LABEL_WRAP, NHI_KEY_AES256, "wrap key: unwraps backup data keys and rotated keys"},
};
#define N_KEYS (sizeof(key_plan) / sizeof(key_plan[0]))

/* The public-key lists of the trust bundle, in the order of the config keys. */
enum { LIST_SIGNERS, LIST_PEERS, LIST_MANIFEST, N_LISTS };
static const char *const list_key[N_LISTS] = {"update_signers", "peer_keys", "manifest_keys"};
static const char *const list_role[N_LISTS] = {"update signer", "peer key", "manifest key"};

struct output {
	char path[1100];
	struct nhi_buf data;
	unsigned mode;
	bool written;
};

struct ceremony {
	struct nhi_ceremony_config cfg;
	uint8_t cfg_sha[32], prof_sha[32];
	struct nhi_profiles *profiles;
	struct nhi_hsm *h;
	struct nhi_hsm_key *keys[N_KEYS];
	bool created[N_KEYS];
	struct output out[MAX_OUTPUTS];
	size_t n_out;
	struct nhi_transcript *tr;
	X509 *root, *server;
	/* trust bundle inputs, read at step 1 */
	EVP_PKEY *bkeys[N_LISTS][NHI_CFG_LIST_MAX];
	char bkids[N_LISTS][NHI_CFG_LIST_MAX][44];
	size_t n_bkeys[N_LISTS];
	char bundle_fp[65]; /* "" without a bundle */
	bool made_out_dir;  /* this run created out_dir: roll_back removes it */
};

static int step_no, n_steps = STEPS;
static void step(const char *fmt, ...) NHI_PRINTF(1, 2);
static void step(const char *fmt, ...)
{
	va_list ap;

	printf("[%d/%d] ", ++step_no, n_steps);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static struct output *add_output(struct ceremony *c, const char *name, unsigned mode)
{
	struct output *o;

	if (c->n_out >= MAX_OUTPUTS)
		return NULL;
	o = &c->out[c->n_out++];
	snprintf(o->path, sizeof(o->path), "%s/%s", c->cfg.out_dir, name);
	o->mode = mode;
	return o;
}

/* The output added as `name`, or NULL. */
static struct output *find_output(struct ceremony *c, const char *name)
{
	char path[sizeof(c->out[0].path)];
	size_t i;

	snprintf(path, sizeof(path), "%s/%s", c->cfg.out_dir, name);
	for (i = 0; i < c->n_out; i++)
		if (strcmp(c->out[i].path, path) == 0)
			return &c->out[i];
	return NULL;
}

/*
 * Read the trust bundle's public-key files named in the config (step 1, before the
 * token is touched): each a PEM SubjectPublicKeyInfo on EC P-256 (ES256 only), no
 * key twice in one list. Each key is printed with its kid and SPKI SHA-256 so that
 * custodians can recognise theirs. Errors name the config key and the file.
 */
static nhi_err read_bundle_keys(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char (*paths[N_LISTS])[NHI_CFG_PATH_MAX] = {c->cfg.update_signers, c->cfg.peer_keys,
							   c->cfg.manifest_keys};
	const size_t counts[N_LISTS] = {c->cfg.n_signers, c->cfg.n_peers, c->cfg.n_manifest};
	EVP_PKEY *pk = NULL;
	char kid[44], fp[65];
	const char *key = "", *path;
	size_t l, i, j;

	for (l = 0; l < N_LISTS; l++) {
		key = list_key[l];
		for (i = 0; i < counts[l]; i++) {
			path = paths[l][i];
			NHI_TRY(nhi_pkey_load_pem_p256(path, &pk));
			NHI_TRY(nhi_pkey_thumbprint(pk, kid));
			NHI_TRY(nhi_pkey_fingerprint(pk, fp));
			for (j = 0; j < i; j++)
				NHI_CHECK(strcmp(c->bkids[l][j], kid) != 0, NHI_ERR_EXISTS,
					  "%s holds the same key as %s (kid %s): each key counts once", path,
					  paths[l][j], kid);
			printf("      %-13s %s\n      %13s kid %s, SPKI SHA-256 %s\n", list_role[l], path, "", kid, fp);
			memcpy(c->bkids[l][i], kid, sizeof(kid));
			c->bkeys[l][i] = pk;
			pk = NULL;
			c->n_bkeys[l]++;
		}
	}
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "config key '%s'", key);
	EVP_PKEY_free(pk);
	return rv;
}

/*
 * Before the token is opened: nothing may be at an output path. lstat, not stat or
 * access(): a dangling symlink is an entry too, which nhi_file_write_excl (O_EXCL,
 * O_NOFOLLOW) refuses only at the last step, after the keys were made.
 */
static nhi_err preflight_outputs(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	static const char *const files[] = {"ca.crt",	      "server.crt",	  "jwks.json",
					    "audit.pub.pem", "transcript.jsonl", BUNDLE_FILE};
	const size_t n_files = sizeof(files) / sizeof(files[0]) - (c->cfg.n_signers > 0 ? 0 : 1);
	const char *what;
	char path[1100];
	struct stat st;
	size_t i;

	if (lstat(c->cfg.out_dir, &st) != 0) {
		/* created after the label check (preflight): nothing can be in it */
		NHI_CHECK(errno == ENOENT, NHI_ERR_IO, "cannot check out_dir %s: %s", c->cfg.out_dir, strerror(errno));
		rv = NHI_OK;
		goto out;
	}
	if (S_ISLNK(st.st_mode))
		NHI_CHECK(stat(c->cfg.out_dir, &st) == 0, errno == ENOENT ? NHI_ERR_CONFIG : NHI_ERR_IO,
			  "out_dir %s is a symlink to %s: remove it or point out_dir at a directory", c->cfg.out_dir,
			  errno == ENOENT ? "nowhere" : strerror(errno));
	NHI_CHECK(S_ISDIR(st.st_mode), NHI_ERR_CONFIG,
		  "out_dir %s is not a directory: move it away or pick another out_dir", c->cfg.out_dir);
	for (i = 0; i < n_files; i++) {
		snprintf(path, sizeof(path), "%s/%s", c->cfg.out_dir, files[i]);
		if (lstat(path, &st) == 0) {
			what = !S_ISLNK(st.st_mode) ? "" : stat(path, &st) == 0 ? " (a symlink)" : " (a symlink to nowhere)";
			NHI_FAIL(NHI_ERR_EXISTS,
				 "%s already exists%s: a ceremony never overwrites its outputs; move it away or pick another out_dir",
				 path, what);
		}
		NHI_CHECK(errno == ENOENT, NHI_ERR_IO, "cannot check %s: %s", path, strerror(errno));
	}
	rv = NHI_OK;
out:
	return rv;
}

/* In the token: no key label taken. Then out_dir is created if missing. */
static nhi_err preflight(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char taken[512] = "";
	size_t i, used = 0;
	nhi_err e;

	for (i = 0; i < N_KEYS; i++) {
		e = nhi_hsm_label_exists(c->h, key_plan[i].label);
		if (e == NHI_OK)
			used += (size_t)snprintf(taken + used, sizeof(taken) - used, "%s%s", used ? ", " : "",
						 key_plan[i].label);
		else
			NHI_CHECK(e == NHI_ERR_NOT_FOUND, e, "%s", nhi_err_detail());
	}
	NHI_CHECK(used == 0, NHI_ERR_EXISTS,
		  "%s already holds key(s) %s: a ceremony never overwrites keys; use a fresh token",
		  nhi_hsm_token_desc(c->h), taken);
	if (mkdir(c->cfg.out_dir, 0755) == 0)
		c->made_out_dir = true;
	else
		NHI_CHECK(errno == EEXIST, NHI_ERR_IO, "cannot create out_dir %s: %s", c->cfg.out_dir,
			  strerror(errno));
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err generate_keys(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY *pk = NULL;
	char fp[65];
	size_t i;

	for (i = 0; i < N_KEYS; i++) {
		NHI_TRY(nhi_hsm_generate(c->h, key_plan[i].kind, key_plan[i].label, &c->keys[i]));
		c->created[i] = true;
		if (key_plan[i].kind == NHI_KEY_AES256) {
			snprintf(fp, sizeof(fp), "(secret key: no public part)");
		} else {
			NHI_TRY(nhi_hsm_pubkey(c->h, c->keys[i], &pk));
			NHI_TRY(nhi_pkey_fingerprint(pk, fp));
			EVP_PKEY_free(pk);
			pk = NULL;
		}
		printf("      %-13s %-8s %s\n      %13s SPKI SHA-256 %s\n", key_plan[i].label,
		       key_plan[i].kind == NHI_KEY_AES256 ? "AES-256" : "P-256", key_plan[i].role, "", fp);
		NHI_TRY(nhi_transcript_add(
			c->tr, json_pack("{s:s, s:s, s:s, s:s, s:b, s:b}", "type", "key", "label", key_plan[i].label, "kind",
					 key_plan[i].kind == NHI_KEY_AES256 ? "AES-256" : "EC P-256", "spki_sha256",
					 key_plan[i].kind == NHI_KEY_AES256 ? "" : fp, "sensitive", 1, "extractable", 0)));
	}
	rv = NHI_OK;
out:
	EVP_PKEY_free(pk);
	return rv;
}

static nhi_err record_cert(struct ceremony *c, const char *name, const char *file, X509 *x)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct output *o = add_output(c, file, 0644);
	char fp[65], *subject = NULL;
	const ASN1_TIME *na = X509_get0_notAfter(x);
	struct tm tm;
	char na_s[32];

	NHI_CHECK(o != NULL, NHI_ERR_INTERNAL, "too many outputs");
	NHI_TRY(nhi_cert_pem(x, &o->data));
	NHI_TRY(nhi_cert_fingerprint(x, fp));
	subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
	NHI_CHECK(subject != NULL && ASN1_TIME_to_tm(na, &tm) == 1, NHI_ERR_CRYPTO, "reading the certificate back");
	strftime(na_s, sizeof(na_s), "%Y-%m-%dT%H:%M:%SZ", &tm);
	printf("      %s: %s\n      %s SHA-256 %s, valid until %s\n", file, subject, name, fp, na_s);
	NHI_TRY(nhi_transcript_add(c->tr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "cert", "name", name,
						     "file", file, "sha256", fp, "subject", subject, "not_after", na_s)));
	rv = NHI_OK;
out:
	OPENSSL_free(subject);
	return rv;
}

static nhi_err issue_certs(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY *root_hsm = NULL, *root_pub = NULL, *tls_pub = NULL;
	struct nhi_buf san = {0};
	size_t i;
	struct nhi_cert_request req = {0};

	NHI_TRY(nhi_hsm_evp_pkey(c->h, c->keys[0], &root_hsm));
	NHI_TRY(nhi_hsm_pubkey(c->h, c->keys[0], &root_pub));
	NHI_TRY(nhi_hsm_pubkey(c->h, c->keys[1], &tls_pub));
	req = (struct nhi_cert_request){.profile = "root", .cn = c->cfg.root_cn, .org = c->cfg.organization,
					.subject_key = root_pub, .issuer = NULL, .issuer_key = root_hsm,
					.days = c->cfg.root_days, .hsm = c->h};
	NHI_TRY(nhi_cert_issue(c->profiles, &req, &c->root));
	step("root certificate self-signed inside the token (profile root, %d days)", c->cfg.root_days);
	NHI_TRY(record_cert(c, "root", "ca.crt", c->root));
	for (i = 0; i < c->cfg.n_dns; i++)
		NHI_TRY(nhi_buf_printf(&san, "%sDNS:%s", san.len ? "," : "", c->cfg.server_dns[i]));
	for (i = 0; i < c->cfg.n_ip; i++)
		NHI_TRY(nhi_buf_printf(&san, "%sIP:%s", san.len ? "," : "", c->cfg.server_ip[i]));
	req = (struct nhi_cert_request){.profile = "server", .cn = c->cfg.server_cn, .org = c->cfg.organization,
					.subject_key = tls_pub, .issuer = c->root, .issuer_key = root_hsm,
					.days = c->cfg.server_days, .san = (char *)san.data, .hsm = c->h};
	NHI_TRY(nhi_cert_issue(c->profiles, &req, &c->server));
	step("server certificate for %s signed by the root (profile server, %d days)", (char *)san.data,
	     c->cfg.server_days);
	NHI_TRY(record_cert(c, "server", "server.crt", c->server));
	rv = NHI_OK;
out:
	nhi_buf_free(&san);
	EVP_PKEY_free(root_hsm);
	EVP_PKEY_free(root_pub);
	EVP_PKEY_free(tls_pub);
	return rv;
}

static nhi_err export_public(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY *pk = NULL;
	struct nhi_buf jwk = {0};
	json_t *key = NULL, *set = json_pack("{s:[]}", "keys");
	struct output *o;
	char kid[44], fp[65];
	uint8_t d[32];
	char *text = NULL;

	NHI_CHECK(set != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_hsm_pubkey(c->h, c->keys[2], &pk));
	NHI_TRY(nhi_pkey_jwk(pk, &jwk));
	NHI_TRY(nhi_pkey_thumbprint(pk, kid));
	key = json_loadb((const char *)jwk.data, jwk.len, 0, NULL);
	NHI_CHECK(key != NULL && json_object_set_new(key, "kid", json_string(kid)) == 0 &&
			  json_object_set_new(key, "use", json_string("sig")) == 0 &&
			  json_object_set_new(key, "alg", json_string("ES256")) == 0 &&
			  json_array_append(json_object_get(set, "keys"), key) == 0,
		  NHI_ERR_NOMEM, "building the JWKS");
	text = json_dumps(set, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "serialising the JWKS");
	o = add_output(c, "jwks.json", 0644);
	NHI_CHECK(o != NULL, NHI_ERR_INTERNAL, "too many outputs");
	NHI_TRY(nhi_buf_append_str(&o->data, text));
	NHI_TRY(nhi_buf_append(&o->data, "\n", 1));
	NHI_TRY(nhi_sha256(o->data.data, o->data.len, d));
	nhi_hex(d, 32, fp);
	printf("      jwks.json: token-signing key kid %s\n", kid);
	NHI_TRY(nhi_transcript_add(c->tr, json_pack("{s:s, s:s, s:s, s:s}", "type", "file", "file", "jwks.json",
						    "sha256", fp, "kid", kid)));
	/* the audit key's public half, for `nhictl audit verify` */
	o = add_output(c, "audit.pub.pem", 0644);
	NHI_CHECK(o != NULL, NHI_ERR_INTERNAL, "too many outputs");
	NHI_TRY(nhi_hsm_pubkey_export(c->h, c->keys[3], NHI_PUBKEY_PEM, &o->data));
	NHI_TRY(nhi_sha256(o->data.data, o->data.len, d));
	nhi_hex(d, 32, fp);
	printf("      audit.pub.pem: audit key public half\n");
	NHI_TRY(nhi_transcript_add(c->tr, json_pack("{s:s, s:s, s:s}", "type", "file", "file", "audit.pub.pem",
						    "sha256", fp)));
	rv = NHI_OK;
out:
	free(text);
	json_decref(key);
	json_decref(set);
	nhi_buf_free(&jwk);
	EVP_PKEY_free(pk);
	return rv;
}

/*
 * Trust bundle v1 from the root certificate and the JWKS just made, unsigned: the
 * custodians sign it offline. Its fingerprint (SHA-256 of the payload, what
 * `nhictl bundle fingerprint` prints and `nhictl update init --pin` takes) goes to
 * the transcript with the version, threshold and every kid, so witnesses hold the pin.
 */
static nhi_err make_bundle(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct output *o, *ca = find_output(c, "ca.crt"), *jwks = find_output(c, "jwks.json");
	struct nhi_bundle_create_req req = {0};
	struct nhi_buf payload = {0};
	json_t *kids[N_LISTS] = {0}, *rec;
	char file_fp[65], expires[32];
	uint8_t d[32];
	size_t l, i;

	NHI_CHECK(ca != NULL && jwks != NULL, NHI_ERR_INTERNAL, "the bundle needs ca.crt and jwks.json first");
	req.version = 1;
	req.expires_at = (int64_t)time(NULL) + (int64_t)c->cfg.bundle_days * 86400;
	req.ca_pem = (const char *)ca->data.data;
	req.jwks = (const char *)jwks->data.data;
	req.signers = c->bkeys[LIST_SIGNERS];
	req.n_signers = c->n_bkeys[LIST_SIGNERS];
	req.threshold = c->cfg.update_threshold;
	req.peers = c->bkeys[LIST_PEERS];
	req.n_peers = c->n_bkeys[LIST_PEERS];
	req.manifest = c->bkeys[LIST_MANIFEST];
	req.n_manifest = c->n_bkeys[LIST_MANIFEST];
	o = add_output(c, BUNDLE_FILE, 0644);
	NHI_CHECK(o != NULL, NHI_ERR_INTERNAL, "too many outputs");
	NHI_TRY(nhi_bundle_create(&req, &o->data));
	NHI_TRY(nhi_doc_payload(NHI_DOC_BUNDLE, o->data.data, o->data.len, &payload));
	NHI_TRY(nhi_sha256(payload.data, payload.len, d));
	nhi_hex(d, 32, c->bundle_fp);
	NHI_TRY(nhi_sha256(o->data.data, o->data.len, d));
	nhi_hex(d, 32, file_fp);
	for (l = 0; l < N_LISTS; l++) {
		kids[l] = json_array();
		NHI_CHECK(kids[l] != NULL, NHI_ERR_NOMEM, "out of memory");
		for (i = 0; i < c->n_bkeys[l]; i++)
			NHI_CHECK(json_array_append_new(kids[l], json_string(c->bkids[l][i])) == 0, NHI_ERR_NOMEM,
				  "out of memory");
	}
	nhi_time_rfc3339((long long)req.expires_at, expires, sizeof(expires));
	printf("      %s: version 1, threshold %u of %zu update signer(s), %zu peer key(s), %zu manifest key(s)\n"
	       "      expires %s; unsigned until the custodians sign it\n"
	       "      fingerprint (the pin) %s\n",
	       BUNDLE_FILE, req.threshold, req.n_signers, req.n_peers, req.n_manifest, expires, c->bundle_fp);
	rec = json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:i, s:o, s:o, s:o}", "type", "bundle", "file", BUNDLE_FILE,
			"sha256", file_fp, "fingerprint", c->bundle_fp, "version", 1, "expires_at",
			(json_int_t)req.expires_at, "threshold", (int)req.threshold, "update_signers", kids[LIST_SIGNERS],
			"peer_keys", kids[LIST_PEERS], "manifest_keys", kids[LIST_MANIFEST]);
	for (l = 0; l < N_LISTS; l++)
		kids[l] = NULL; /* stolen by "o", even on failure */
	NHI_TRY(nhi_transcript_add(c->tr, rec));
	rv = NHI_OK;
out:
	for (l = 0; l < N_LISTS; l++)
		json_decref(kids[l]);
	nhi_buf_free(&payload);
	return rv;
}

static nhi_err write_outputs(struct ceremony *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i;

	for (i = 0; i < c->n_out; i++) {
		NHI_TRY(nhi_file_write_excl(c->out[i].path, c->out[i].data.data, c->out[i].data.len, c->out[i].mode));
		c->out[i].written = true;
	}
	rv = NHI_OK;
out:
	return rv;
}

static void roll_back(struct ceremony *c)
{
	size_t i;

	for (i = 0; i < c->n_out; i++)
		if (c->out[i].written && unlink(c->out[i].path) == 0)
			fprintf(stderr, "      removed %s\n", c->out[i].path);
	/* only the directory this run made, and only if empty: rmdir refuses anything else */
	if (c->made_out_dir) {
		if (rmdir(c->cfg.out_dir) == 0)
			fprintf(stderr, "      removed %s\n", c->cfg.out_dir);
		else
			fprintf(stderr, "      left %s: %s\n", c->cfg.out_dir, strerror(errno));
	}
	for (i = 0; i < N_KEYS; i++)
		if (c->created[i] && c->keys[i] != NULL) {
			if (nhi_hsm_destroy(c->h, c->keys[i]) == NHI_OK)
				fprintf(stderr, "      destroyed key %s\n", key_plan[i].label);
			else
				fprintf(stderr, "      COULD NOT destroy key %s: %s — remove it by hand before retrying\n",
					key_plan[i].label, nhi_err_detail());
		}
}

static nhi_err run(struct ceremony *c, const char *config_path, const char *pin_file)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char cfg_hex[65], prof_hex[65], root_fp[65];
	struct output *o;

	NHI_TRY(nhi_ceremony_config_load(config_path, &c->cfg, c->cfg_sha));
	NHI_TRY(nhi_profiles_load(c->cfg.profiles, &c->profiles, c->prof_sha));
	nhi_hex(c->cfg_sha, 32, cfg_hex);
	nhi_hex(c->prof_sha, 32, prof_hex);
	n_steps = c->cfg.n_signers > 0 ? STEPS_BUNDLE : STEPS;
	step("config %s SHA-256 %s; profiles %s SHA-256 %s", config_path, cfg_hex, c->cfg.profiles, prof_hex);
	NHI_TRY(read_bundle_keys(c));
	NHI_TRY(preflight_outputs(c));
	NHI_TRY(nhictl_open_hsm(&c->cfg, pin_file, &c->h));
	step("opened %s", nhi_hsm_token_desc(c->h));
	NHI_TRY(preflight(c));
	step("preflight: no key labels taken, no outputs present in %s", c->cfg.out_dir);
	NHI_TRY(nhi_transcript_new(&c->tr));
	NHI_TRY(nhi_transcript_add(c->tr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "start", "tool",
						    "nhictl ceremony", "config_sha256", cfg_hex, "profiles_sha256",
						    prof_hex, "token", nhi_hsm_token_desc(c->h), "trust_domain",
						    c->cfg.trust_domain)));
	step("generating %zu keys inside the token (sensitive, not extractable)", N_KEYS);
	NHI_TRY(generate_keys(c));
	NHI_TRY(issue_certs(c));
	step("exporting public material");
	NHI_TRY(export_public(c));
	if (c->cfg.n_signers > 0) {
		step("trust bundle v1 for %zu update signer(s), threshold %u, valid %d days", c->cfg.n_signers,
		     c->cfg.update_threshold, c->cfg.bundle_days);
		NHI_TRY(make_bundle(c));
	}
	NHI_TRY(nhi_cert_fingerprint(c->root, root_fp));
	NHI_TRY(nhi_transcript_sign(c->tr, c->h, c->keys[0], root_fp));
	o = add_output(c, "transcript.jsonl", 0644);
	NHI_CHECK(o != NULL, NHI_ERR_INTERNAL, "too many outputs");
	NHI_TRY(nhi_buf_append(&o->data, nhi_transcript_bytes(c->tr)->data, nhi_transcript_bytes(c->tr)->len));
	step("transcript signed by %s", NHI_LABEL_ROOT);
	NHI_TRY(write_outputs(c));
	step("wrote %zu files to %s", c->n_out, c->cfg.out_dir);
	printf("\nRoot certificate SHA-256 (witnesses: write this down):\n  %s\n"
	       "Verify offline: nhictl ceremony verify %s/transcript.jsonl --ca %s/ca.crt\n",
	       root_fp, c->cfg.out_dir, c->cfg.out_dir);
	if (c->bundle_fp[0] != '\0')
		printf("\nTrust bundle v1 fingerprint, the pin (witnesses: write this down too):\n  %s\n"
		       "Next: %u of the %zu custodians sign it offline, each in their own token:\n"
		       "  nhictl bundle sign --token TOKEN --key KEY --pin-file PINFILE %s/%s\n"
		       "then install it where updates are applied:\n"
		       "  nhictl update init --state-dir STATE_DIR --bundle %s/%s --pin %s\n",
		       c->bundle_fp, c->cfg.update_threshold, c->cfg.n_signers, c->cfg.out_dir, BUNDLE_FILE,
		       c->cfg.out_dir, BUNDLE_FILE, c->bundle_fp);
	rv = NHI_OK;
out:
	return rv;
}

static void ceremony_free(struct ceremony *c)
{
	size_t i, l;

	for (l = 0; l < N_LISTS; l++)
		for (i = 0; i < c->n_bkeys[l]; i++)
			EVP_PKEY_free(c->bkeys[l][i]);
	for (i = 0; i < N_KEYS; i++)
		nhi_hsm_key_free(c->keys[i]);
	for (i = 0; i < c->n_out; i++)
		nhi_buf_free(&c->out[i].data);
	X509_free(c->root);
	X509_free(c->server);
	nhi_transcript_free(c->tr);
	nhi_profiles_free(c->profiles);
	nhi_hsm_free(c->h);
}

static int verify_cmd(int argc, char **argv)
{
	static const struct option opts[] = {{"ca", required_argument, NULL, 'c'}, {NULL, 0, NULL, 0}};
	const char *ca = NULL;
	struct nhi_buf data = {0};
	X509 *root = NULL;
	size_t n = 0;
	char fp[65];
	nhi_err e;
	int opt, rc = 1;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (opt != 'c') {
			fprintf(stderr, "usage: nhictl ceremony verify TRANSCRIPT --ca ROOT.crt\n");
			return 2;
		}
		ca = optarg;
	}
	if (ca == NULL || optind != argc - 1) {
		fprintf(stderr, "usage: nhictl ceremony verify TRANSCRIPT --ca ROOT.crt\n");
		return 2;
	}
	if ((e = nhi_cert_load(ca, &root)) != NHI_OK || (e = nhi_cert_fingerprint(root, fp)) != NHI_OK) {
		rc = nhictl_fail("ceremony verify", ca, e);
		goto out;
	}
	if ((e = nhi_file_read(argv[optind], NHI_TRANSCRIPT_MAX_BYTES, &data)) != NHI_OK ||
	    (e = nhi_transcript_verify(data.data, data.len, root, &n)) != NHI_OK) {
		rc = nhictl_fail("ceremony verify", argv[optind], e);
		goto out;
	}
	printf("OK: %s: %zu records, hash chain intact, signed by root %s\n", argv[optind], n, fp);
	rc = 0;
out:
	X509_free(root);
	nhi_buf_free(&data);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl ceremony --config FILE [--pin-file FILE]\n"
		   "       nhictl ceremony verify TRANSCRIPT --ca ROOT.crt\n"
		   "  Generates the root, TLS, token-signing, audit and wrap keys inside the token,\n"
		   "  issues the root and server certificates, exports public material and a signed\n"
		   "  transcript. With update_signers in the config it also writes trust bundle v1\n"
		   "  (unsigned; the custodians sign it with 'nhictl bundle sign') and prints its\n"
		   "  fingerprint, the pin. Without --pin-file the user PIN is asked on the terminal.\n");
}

int nhictl_ceremony(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"pin-file", required_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *pin_file = NULL;
	struct ceremony c = {0};
	nhi_err e;
	int opt, rc;

	if (argc >= 2 && strcmp(argv[1], "verify") == 0)
		return verify_cmd(argc - 1, argv + 1);
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': config = optarg; break;
		case 'p': pin_file = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	e = run(&c, config, pin_file);
	if (e != NHI_OK) {
		rc = nhictl_fail("ceremony", "stopped", e);
		if (c.h != NULL && (c.created[0] || c.n_out > 0 || c.made_out_dir)) {
			fprintf(stderr, "nhictl ceremony: rolling back this run\n");
			roll_back(&c);
		}
	} else {
		rc = 0;
	}
	ceremony_free(&c);
	return rc;
}
