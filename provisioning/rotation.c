/*
 * provisioning/rotation.c — `nhictl rotation make`: the body of a cert-rotation
 * update package (docs/updates.md). Nothing can come back through the diode, so
 * there is no CSR: the ceremony side makes the new TLS key pair in its token as an
 * extractable (still sensitive) key, issues the server certificate for it with the
 * root key, wraps the private key under the wrap key shared with nhid's token
 * (CKM_AES_KEY_WRAP_PAD), and removes the extractable key from the token. The body:
 *   {"cert_chain_pem":"...","wrapped_key_b64":"<base64url>","key_label":"nhid-tls-2"}
 * `nhictl rotation token-keys`: the body of a token-keys package, the token-signing
 * keys nhid is to trust, the one that signs and when (docs/updates.md); a new key is
 * wrapped the same way, with its public key beside it (no certificate names it).
 */
#include "nhictl.h"
#include "prov_internal.h"
#include "../common/limits.h"
#include "../common/pkey.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct rotation_opts {
	const char *config, *pin_file, *key, *key_label, *out;
	const char *dns[NHI_CFG_LIST_MAX], *ip[NHI_CFG_LIST_MAX];
	size_t n_dns, n_ip;
	int days;
	bool keep_key;
};

static bool valid_label(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 64 &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

/*
 * The extractable P-256 key pair `label` of the ceremony token wrapped under nhid-wrap
 * (CKM_AES_KEY_WRAP_PAD), base64url into b64; its handle in *key for the caller, who
 * destroys it once the body is written (unless --keep-key).
 */
static nhi_err wrap_for_nhid(struct nhi_hsm *h, const char *label, const char *what, struct nhi_hsm_key **key,
			     struct nhi_buf *b64)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_hsm_key *wrap = NULL;
	struct nhi_buf wrapped = {0};

	rv = nhi_hsm_find(h, label, key);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "the new %s key pair '%s' (make it extractable and sensitive in the token first, "
				 "e.g. pkcs11-tool --keypairgen --key-type EC:prime256v1 --extractable --sensitive --label %s)",
			     what, label, label);
		goto out;
	}
	NHI_CHECK(nhi_hsm_key_kind(*key) == NHI_KEY_EC_P256, NHI_ERR_ARG, "key '%s' is not an EC P-256 key", label);
	NHI_TRY(nhi_hsm_find(h, NHI_LABEL_WRAP, &wrap));
	rv = nhi_hsm_wrap(h, wrap, *key, &wrapped);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "wrapping '%s' (it must be CKA_EXTRACTABLE)", label);
		goto out;
	}
	NHI_TRY(nhi_b64url_encode(wrapped.data, wrapped.len, b64));
	rv = NHI_OK;
out:
	nhi_buf_free(&wrapped);
	nhi_hsm_key_free(wrap);
	return rv;
}

static nhi_err make_rotation(const struct rotation_opts *o)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_ceremony_config cfg;
	uint8_t sha[32];
	struct nhi_profiles *prof = NULL;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *root_key = NULL, *newkey = NULL;
	EVP_PKEY *root_hsm = NULL, *new_pub = NULL;
	X509 *ca = NULL, *cert = NULL;
	struct nhi_buf san = {0}, chain = {0}, b64 = {0};
	struct nhi_cert_request req;
	char ca_path[600], fp[65];
	const char *label = o->key_label ? o->key_label : o->key;
	json_t *body = NULL;
	char *text = NULL;
	size_t i;

	NHI_CHECK(valid_label(o->key) && valid_label(label), NHI_ERR_ARG,
		  "--key and --key-label must be key labels (1-64 of [A-Za-z0-9._-])");
	NHI_CHECK(strcmp(label, NHI_LABEL_TLS) != 0, NHI_ERR_ARG,
		  "--key-label %s is the ceremony's TLS key: the new key needs a new label (e.g. nhid-tls-2)", label);
	NHI_TRY(nhi_ceremony_config_load(o->config, &cfg, sha));
	NHI_TRY(nhi_profiles_load(cfg.profiles, &prof, sha));
	snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", cfg.out_dir);
	NHI_TRY(nhi_cert_load(ca_path, &ca));
	NHI_TRY(nhictl_open_hsm(&cfg, o->pin_file, &h));
	NHI_TRY(nhi_root_signer(h, ca, ca_path, &root_key, &root_hsm));
	NHI_TRY(wrap_for_nhid(h, o->key, "TLS", &newkey, &b64));
	NHI_TRY(nhi_hsm_pubkey(h, newkey, &new_pub));
	for (i = 0; i < (o->n_dns || o->n_ip ? o->n_dns : cfg.n_dns); i++)
		NHI_TRY(nhi_buf_printf(&san, "%sDNS:%s", san.len ? "," : "", o->n_dns || o->n_ip ? o->dns[i] : cfg.server_dns[i]));
	for (i = 0; i < (o->n_dns || o->n_ip ? o->n_ip : cfg.n_ip); i++)
		NHI_TRY(nhi_buf_printf(&san, "%sIP:%s", san.len ? "," : "", o->n_dns || o->n_ip ? o->ip[i] : cfg.server_ip[i]));
	NHI_CHECK(san.len > 0, NHI_ERR_ARG, "the server certificate needs a name: --san-dns or --san-ip");
	req = (struct nhi_cert_request){.profile = "server", .cn = cfg.server_cn, .org = cfg.organization,
					.subject_key = new_pub, .issuer = ca, .issuer_key = root_hsm,
					.days = o->days ? o->days : cfg.server_days, .san = (char *)san.data, .hsm = h};
	NHI_TRY(nhi_cert_issue(prof, &req, &cert));
	NHI_TRY(nhi_cert_pem(cert, &chain));
	NHI_TRY(nhi_cert_fingerprint(cert, fp));
	body = json_pack("{s:s, s:s, s:s}", "cert_chain_pem", (const char *)chain.data, "wrapped_key_b64",
			 (const char *)b64.data, "key_label", label);
	text = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_file_write_excl(o->out, text, strlen(text), 0600));
	/* the extractable copy must not outlive the package */
	if (!o->keep_key)
		NHI_TRY(nhi_hsm_destroy(h, newkey));
	printf("cert-rotation body %s: key_label %s, certificate SHA-256 %s\n%s", o->out, label, fp,
	       o->keep_key ? "" : "  the extractable key was removed from the token\n");
	rv = NHI_OK;
out:
	free(text);
	json_decref(body);
	nhi_buf_free(&san);
	nhi_buf_free(&chain);
	nhi_buf_free(&b64);
	X509_free(cert);
	X509_free(ca);
	EVP_PKEY_free(root_hsm);
	EVP_PKEY_free(new_pub);
	nhi_hsm_key_free(newkey);
	nhi_hsm_key_free(root_key);
	nhi_hsm_free(h);
	nhi_profiles_free(prof);
	return rv;
}

static void usage(FILE *f);

struct tk_opts {
	const char *config, *pin_file, *new_key, *new_label, *signing, *previous, *out;
	const char *keep[NHI_CFG_LIST_MAX];
	size_t n_keep;
	long long sign_after;
	bool keep_key;
};

/*
 * The new key wrapped under nhid-wrap, and its public key, from the ceremony token.
 * The token and the key stay open (*h, *key): the caller destroys the extractable key
 * only once the body is written, so a failure before that leaves it for a retry.
 */
static nhi_err wrap_new_key(const struct tk_opts *o, struct nhi_hsm **h, struct nhi_hsm_key **key,
			    struct nhi_buf *b64, struct nhi_buf *pem)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_ceremony_config cfg;
	uint8_t sha[32];

	NHI_TRY(nhi_ceremony_config_load(o->config, &cfg, sha));
	NHI_TRY(nhictl_open_hsm(&cfg, o->pin_file, h));
	NHI_TRY(wrap_for_nhid(*h, o->new_key, "token", key, b64));
	NHI_TRY(nhi_hsm_pubkey_export(*h, *key, NHI_PUBKEY_PEM, pem));
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err make_token_keys(const struct tk_opts *o)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b64 = {0}, pem = {0};
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *newkey = NULL;
	json_t *body = NULL, *keys = json_array();
	const char *label = o->new_label ? o->new_label : o->new_key, *signing;
	bool found_signing = false, found_previous = false;
	char *text = NULL;
	size_t i;

	NHI_CHECK(keys != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK(o->new_key == NULL || (valid_label(o->new_key) && valid_label(label)), NHI_ERR_ARG,
		  "--new and --new-label must be key labels (1-64 of [A-Za-z0-9._-])");
	signing = o->signing ? o->signing : o->new_key ? label : NULL;
	NHI_CHECK(signing != NULL, NHI_ERR_ARG, "--signing LABEL is required when no --new key is given");
	for (i = 0; i < o->n_keep; i++) {
		NHI_CHECK(valid_label(o->keep[i]) && (o->new_key == NULL || strcmp(o->keep[i], label) != 0), NHI_ERR_ARG,
			  "--keep '%s' is not a key label, or is the new key", o->keep[i]);
		NHI_CHECK(json_array_append_new(keys, json_pack("{s:s}", "label", o->keep[i])) == 0, NHI_ERR_NOMEM,
			  "out of memory");
		found_signing |= strcmp(o->keep[i], signing) == 0;
		found_previous |= o->previous != NULL && strcmp(o->keep[i], o->previous) == 0;
	}
	found_signing |= o->new_key != NULL && strcmp(label, signing) == 0;
	/* every argument is checked before the token is touched */
	NHI_CHECK(found_signing, NHI_ERR_ARG, "--signing %s is neither the new key nor a --keep key", signing);
	NHI_CHECK(o->previous == NULL || found_previous, NHI_ERR_ARG,
		  "--previous %s must also be given with --keep (it stays trusted)", o->previous);
	NHI_CHECK(access(o->out, F_OK) != 0 && errno == ENOENT, NHI_ERR_EXISTS,
		  "--out %s already exists: give a new file (nothing was changed in the token)", o->out);
	if (o->new_key != NULL) {
		NHI_TRY(wrap_new_key(o, &h, &newkey, &b64, &pem));
		NHI_CHECK(json_array_append_new(keys, json_pack("{s:s, s:s, s:s}", "label", label, "wrapped_key_b64",
								(const char *)b64.data, "public_key_pem",
								(const char *)pem.data)) == 0,
			  NHI_ERR_NOMEM, "out of memory");
	}
	body = json_pack("{s:O, s:s}", "keys", keys, "signing_key", signing);
	NHI_CHECK(body != NULL, NHI_ERR_NOMEM, "out of memory");
	if (o->previous != NULL)
		NHI_CHECK(json_object_set_new(body, "previous_signing_key", json_string(o->previous)) == 0 &&
				  json_object_set_new(body, "sign_after", json_integer(o->sign_after)) == 0,
			  NHI_ERR_NOMEM, "out of memory");
	text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_file_write_excl(o->out, text, strlen(text), 0600));
	/* the extractable copy must not outlive the package: destroyed once the body is written */
	if (newkey != NULL && !o->keep_key)
		NHI_TRY(nhi_hsm_destroy(h, newkey));
	printf("token-keys body %s: %zu key(s), signing %s%s\n%s", o->out, json_array_size(keys), signing,
	       o->previous ? " (after sign_after; the previous key signs until then)" : " (from the apply on)",
	       newkey != NULL && !o->keep_key ? "  the extractable key was removed from the token\n" : "");
	rv = NHI_OK;
out:
	free(text);
	json_decref(body);
	json_decref(keys);
	nhi_buf_free(&b64);
	nhi_buf_free(&pem);
	nhi_hsm_key_free(newkey);
	nhi_hsm_free(h);
	return rv;
}

static int cmd_token_keys(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},   {"pin-file", required_argument, NULL, 'p'},
		{"new", required_argument, NULL, 'n'},      {"new-label", required_argument, NULL, 'l'},
		{"keep", required_argument, NULL, 'K'},     {"signing", required_argument, NULL, 's'},
		{"previous", required_argument, NULL, 'P'}, {"sign-after", required_argument, NULL, 'a'},
		{"sign-in", required_argument, NULL, 'i'},  {"out", required_argument, NULL, 'o'},
		{"keep-key", no_argument, NULL, 'k'},       {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct tk_opts o = {0};
	long long v;
	bool when = false;
	nhi_err e;
	int opt;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': o.config = optarg; break;
		case 'p': o.pin_file = optarg; break;
		case 'n': o.new_key = optarg; break;
		case 'l': o.new_label = optarg; break;
		case 's': o.signing = optarg; break;
		case 'P': o.previous = optarg; break;
		case 'o': o.out = optarg; break;
		case 'k': o.keep_key = true; break;
		case 'K':
			if (o.n_keep == NHI_CFG_LIST_MAX) {
				fprintf(stderr, "nhictl rotation token-keys: at most %d --keep\n", NHI_CFG_LIST_MAX);
				return 2;
			}
			o.keep[o.n_keep++] = optarg;
			break;
		case 'a':
		case 'i':
			if (!nhictl_arg_ll("rotation token-keys", opt == 'a' ? "sign-after" : "sign-in", optarg, 0,
					   NHI_UPDATE_TIME_MAX_S, &v))
				return 2;
			o.sign_after = opt == 'a' ? v : (long long)time(NULL) + v;
			when = true;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (o.out == NULL || optind != argc || (o.new_key != NULL && o.config == NULL) || (o.previous != NULL) != when) {
		fprintf(stderr, "nhictl rotation token-keys: --out is required; --new needs --config; --previous goes with "
				"--sign-after or --sign-in\n");
		usage(stderr);
		return 2;
	}
	e = make_token_keys(&o);
	return e == NHI_OK ? 0 : nhictl_fail("rotation", "token-keys", e);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl rotation make --config CEREMONY.conf --key LABEL --out BODY.json\n"
		   "                            [--pin-file FILE] [--key-label NEW] [--san-dns NAME]... [--san-ip IP]...\n"
		   "                            [--days N] [--keep-key]\n"
		   "  The body of a cert-rotation package: the server certificate for the extractable\n"
		   "  P-256 key pair LABEL in the ceremony token (issued by the root key), and its\n"
		   "  private key wrapped under nhid-wrap. nhid unwraps it as NEW (default LABEL).\n"
		   "  The extractable key is removed from the token afterwards unless --keep-key.\n"
		   "  Names default to the ceremony config's server_dns / server_ip.\n"
		   "  Then: nhictl update create --kind cert-rotation --body BODY.json ...\n"
		   "\n"
		   "       nhictl rotation token-keys --out BODY.json [--new LABEL --config CEREMONY.conf [--pin-file FILE]\n"
		   "                                  [--new-label NEW] [--keep-key]] [--keep LABEL]... [--signing LABEL]\n"
		   "                                  [--previous LABEL (--sign-after UNIX | --sign-in SECONDS)]\n"
		   "  The body of a token-keys package: the token-signing keys nhid trusts after it (--keep:\n"
		   "  keys already in nhid's token; --new: an extractable P-256 key pair in the ceremony token,\n"
		   "  wrapped under nhid-wrap and unwrapped by nhid as NEW), the one that signs (default: the\n"
		   "  new key) and, with --previous, the key that keeps signing until the given time so that\n"
		   "  relying parties fetch the new kid from /v1/jwks first. A key left out is retired.\n"
		   "  Then: nhictl update create --kind token-keys --body BODY.json ...\n");
}

static int cmd_make(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},    {"pin-file", required_argument, NULL, 'p'},
		{"key", required_argument, NULL, 'k'},       {"key-label", required_argument, NULL, 'l'},
		{"out", required_argument, NULL, 'o'},       {"san-dns", required_argument, NULL, 'D'},
		{"san-ip", required_argument, NULL, 'I'},    {"days", required_argument, NULL, 'd'},
		{"keep-key", no_argument, NULL, 'K'},        {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct rotation_opts o = {0};
	long long days;
	nhi_err e;
	int opt;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': o.config = optarg; break;
		case 'p': o.pin_file = optarg; break;
		case 'k': o.key = optarg; break;
		case 'l': o.key_label = optarg; break;
		case 'o': o.out = optarg; break;
		case 'K': o.keep_key = true; break;
		case 'D':
			if (o.n_dns == NHI_CFG_LIST_MAX || !nhi_valid_dns_name(optarg)) {
				fprintf(stderr, "nhictl rotation: --san-dns '%s' is not a DNS name (at most %d)\n", optarg,
					NHI_CFG_LIST_MAX);
				return 2;
			}
			o.dns[o.n_dns++] = optarg;
			break;
		case 'I':
			if (o.n_ip == NHI_CFG_LIST_MAX || strspn(optarg, "0123456789abcdefABCDEF.:") != strlen(optarg) ||
			    optarg[0] == '\0') {
				fprintf(stderr, "nhictl rotation: --san-ip '%s' is not an IP address (at most %d)\n", optarg,
					NHI_CFG_LIST_MAX);
				return 2;
			}
			o.ip[o.n_ip++] = optarg;
			break;
		case 'd':
			if (!nhictl_arg_ll("rotation make", "days", optarg, 1, NHI_SERVER_DAYS_MAX, &days))
				return 2;
			o.days = (int)days;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (o.config == NULL || o.key == NULL || o.out == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	e = make_rotation(&o);
	return e == NHI_OK ? 0 : nhictl_fail("rotation", "make", e);
}

int nhictl_rotation(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {{"make", cmd_make}, {"token-keys", cmd_token_keys}};

	return nhictl_dispatch("rotation", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
