/*
 * provisioning/token.c — `nhictl token`: the offline verifier any component can run
 * (`verify`, against a JWKS file), plus `issue` and `jwks` against a PKCS#11 token
 * for operators and interop tests. See docs/tokens.md.
 */
#include "nhictl.h"
#include "../common/limits.h"
#include "../hsm/hsm.h"
#include "../tokens/tokens.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROLES_MAX NHI_TOKEN_ROLES_MAX
#define KEYS_MAX NHI_TOKEN_KEYS_MAX

static void usage(FILE *f)
{
	fprintf(f,
		"usage: nhictl token verify --jwks FILE --iss ISSUER --aud AUDIENCE [--aud ...] [--cert FILE]\n"
		"                           [--leeway S] [--max-lifetime S] [--now UNIX] (- | --token-file FILE)\n"
		"       nhictl token issue  --hsm-token LABEL|URI --pin-file FILE [--module PATH] [--key LABEL]\n"
		"                           --iss ISSUER --sub AGENT --aud AUDIENCE [--role R ...] --cert FILE\n"
		"                           [--ttl S] [--ttl-max S] [--now UNIX]\n"
		"       nhictl token jwks   --hsm-token LABEL|URI [--pin-file FILE] [--module PATH]\n"
		"                           --key LABEL [--key ...]\n"
		"\n"
		"  verify  strict ES256 verification (RFC 8725 profile, docs/tokens.md) against the keys of\n"
		"          a JWK Set; prints the claims as JSON and exits 0, or names the one reason the token\n"
		"          was rejected and exits 1. The token is read from stdin ('-') or from FILE (mode\n"
		"          0600, like a PIN file), never from argv, which every user of the host can read.\n"
		"          --cert checks the RFC 8705 binding.\n"
		"  issue   sign a token with KEY (default nhid-token-1) inside the token; --cert is the\n"
		"          agent's client certificate (PEM or DER) the token is bound to.\n"
		"  jwks    print the JWK Set of the given keys; the first is the current signer.\n");
}

/* Strict decimal in [lo, hi]. */
/* A certificate file (PEM or DER) as DER, the bytes TLS presents. */
static nhi_err read_cert_der(const char *path, struct nhi_buf *der)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf file = {0};
	const unsigned char *p;
	unsigned char *enc = NULL;
	X509 *x = NULL;
	BIO *b = NULL;
	int n;

	NHI_TRY(nhi_file_read(path, NHI_CERT_MAX_BYTES, &file));
	b = BIO_new_mem_buf(file.data, (int)file.len);
	NHI_CHECK_SSL(b != NULL, NHI_ERR_NOMEM, "BIO_new_mem_buf");
	x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	if (x == NULL) {
		p = file.data;
		x = d2i_X509(NULL, &p, (long)file.len);
	}
	NHI_CHECK_SSL(x != NULL, NHI_ERR_FORMAT, "%s is not a PEM or DER X.509 certificate", path);
	n = i2d_X509(x, &enc);
	NHI_CHECK_SSL(n > 0, NHI_ERR_CRYPTO, "encoding %s", path);
	NHI_TRY(nhi_buf_append(der, enc, (size_t)n));
	rv = NHI_OK;
out:
	OPENSSL_free(enc);
	X509_free(x);
	BIO_free(b);
	nhi_buf_free(&file);
	return rv;
}

/*
 * The token from `path` (a private file, as a PIN file), or from stdin when path is
 * NULL; one trailing newline dropped. Never from argv: a bearer token there is
 * readable by every user of the host (ps, /proc/PID/cmdline).
 */
static nhi_err read_token(const char *path, struct nhi_buf *tok)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t n;

	tok->secret = true;
	if (path != NULL) {
		/* one byte past the cap so that the verifier reports too_large */
		NHI_TRY(nhi_secret_file_read(path, NHI_TOKEN_MAX_BYTES + 1, tok));
		rv = NHI_OK;
		goto out;
	}
	/* read one byte past the cap so that the verifier reports too_large */
	NHI_TRY(nhi_buf_reserve(tok, NHI_TOKEN_MAX_BYTES + 2));
	n = fread(tok->data, 1, NHI_TOKEN_MAX_BYTES + 2, stdin);
	NHI_CHECK(!ferror(stdin), NHI_ERR_IO, "reading the token from stdin failed");
	tok->len = n;
	if (tok->len > 0 && tok->data[tok->len - 1] == '\n')
		tok->len--;
	if (tok->len > 0 && tok->data[tok->len - 1] == '\r')
		tok->len--;
	tok->data[tok->len] = '\0';
	rv = NHI_OK;
out:
	return rv;
}

static void print_claims(const struct nhi_token_claims *c)
{
	json_t *o, *roles = json_array();
	struct nhi_buf x5t = {0};
	char *text = NULL;
	size_t i;

	for (i = 0; roles != NULL && i < c->n_roles; i++)
		json_array_append_new(roles, json_string(c->roles[i]));
	if (nhi_b64url_encode(c->cnf_x5t_s256, 32, &x5t) != NHI_OK) {
		json_decref(roles);
		return;
	}
	o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:o, s:{s:s}, s:s}", "iss", c->iss, "sub", c->sub, "aud",
		      c->aud, "iat", (json_int_t)c->iat, "nbf", (json_int_t)c->nbf, "exp", (json_int_t)c->exp, "jti",
		      c->jti, "roles", roles, "cnf", "x5t#S256", (const char *)x5t.data, "kid", c->kid);
	if (o != NULL)
		text = json_dumps(o, JSON_INDENT(2));
	if (text != NULL)
		printf("%s\n", text);
	free(text);
	json_decref(o);
	nhi_buf_free(&x5t);
}

static int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
		{"jwks", required_argument, NULL, 'j'},	     {"iss", required_argument, NULL, 'i'},
		{"aud", required_argument, NULL, 'a'},	     {"cert", required_argument, NULL, 'c'},
		{"leeway", required_argument, NULL, 'l'},    {"max-lifetime", required_argument, NULL, 'm'},
		{"now", required_argument, NULL, 'n'},	     {"token-file", required_argument, NULL, 'f'},
		{"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0},
	};
	const char *jwks_path = NULL, *cert_path = NULL, *token_path = NULL, *auds[NHI_TOKEN_AUD_MAX];
	struct nhi_token_verify_cfg cfg;
	struct nhi_token_verifier *v = NULL;
	struct nhi_token_claims *claims = NULL;
	struct nhi_token_check chk = {0};
	struct nhi_buf jwks = {0}, cert = {0}, tok = {0};
	enum nhi_token_error why = NHI_TOKEN_OK;
	long long num;
	size_t n_aud = 0;
	int c, i, status = 1;
	nhi_err e;

	nhi_token_verify_cfg_init(&cfg);
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': jwks_path = optarg; break;
		case 'i': cfg.issuer = optarg; break;
		case 'a':
			if (n_aud == NHI_TOKEN_AUD_MAX) {
				fprintf(stderr, "nhictl token verify: at most %d --aud\n", NHI_TOKEN_AUD_MAX);
				return 2;
			}
			auds[n_aud++] = optarg;
			break;
		case 'c': cert_path = optarg; break;
		case 'f': token_path = optarg; break;
		case 'l':
			if (!nhictl_arg_ll("token verify", "leeway", optarg, 0, NHI_TOKEN_LEEWAY_MAX_S, &num))
				return 2;
			cfg.leeway_s = (unsigned)num;
			break;
		case 'm':
			if (!nhictl_arg_ll("token verify", "max-lifetime", optarg, 1, NHI_TOKEN_TTL_MAX_S, &num))
				return 2;
			cfg.lifetime_max_s = (unsigned)num;
			break;
		case 'n':
			if (!nhictl_arg_ll("token verify", "now", optarg, 1, NHI_TOKEN_NUMERICDATE_MAX, &num))
				return 2;
			chk.now = num;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	/* a bearer token in argv is already exposed: say so, without echoing it */
	for (i = optind; i < argc; i++) {
		if (strcmp(argv[i], "-") == 0)
			continue;
		fprintf(stderr, "nhictl token verify: a token on the command line is readable by every user of the host "
				"(ps, /proc): pass it on stdin as '-' (nhictl token verify ... - <FILE) or with "
				"--token-file FILE\n");
		return 2;
	}
	if (jwks_path == NULL || cfg.issuer == NULL || n_aud == 0 || argc - optind != (token_path == NULL ? 1 : 0)) {
		fprintf(stderr, "nhictl token verify: --jwks, --iss, --aud and the token, either '-' (stdin) or "
				"--token-file FILE (not both), are required\n");
		usage(stderr);
		return 2;
	}
	cfg.audiences = auds;
	cfg.n_audiences = n_aud;
	e = nhi_token_verifier_new(&cfg, &v);
	if (e != NHI_OK) {
		status = nhictl_fail("token verify", "configuration", e);
		goto out;
	}
	e = nhi_file_read(jwks_path, NHI_JWKS_MAX_BYTES, &jwks);
	if (e == NHI_OK)
		e = nhi_token_verifier_add_jwks(v, (const char *)jwks.data, jwks.len);
	if (e != NHI_OK) {
		status = nhictl_fail("token verify", jwks_path, e);
		goto out;
	}
	if (cert_path != NULL) {
		e = read_cert_der(cert_path, &cert);
		if (e != NHI_OK) {
			status = nhictl_fail("token verify", cert_path, e);
			goto out;
		}
		chk.cert_der = cert.data;
		chk.cert_der_len = cert.len;
	}
	e = read_token(token_path, &tok);
	if (e != NHI_OK) {
		status = nhictl_fail("token verify", token_path != NULL ? token_path : "token", e);
		goto out;
	}
	e = nhi_token_verify(v, (const char *)tok.data, tok.len, &chk, &claims, &why);
	if (e != NHI_OK) {
		/* the detail already reads "token rejected (<reason>): ..." */
		status = nhictl_fail("token verify", why != NHI_TOKEN_OK ? "invalid_token" : "error", e);
		goto out;
	}
	print_claims(claims);
	status = 0;
out:
	nhi_token_claims_free(claims);
	nhi_token_verifier_free(v);
	nhi_buf_free(&jwks);
	nhi_buf_free(&cert);
	nhi_wipe(tok.data, tok.len); /* a bearer credential */
	nhi_buf_free(&tok);
	return status;
}

static int cmd_issue(int argc, char **argv)
{
	static const struct option opts[] = {
		{"hsm-token", required_argument, NULL, 't'}, {"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'M'},    {"key", required_argument, NULL, 'k'},
		{"iss", required_argument, NULL, 'i'},	     {"sub", required_argument, NULL, 's'},
		{"aud", required_argument, NULL, 'a'},	     {"role", required_argument, NULL, 'r'},
		{"cert", required_argument, NULL, 'c'},	     {"ttl", required_argument, NULL, 'T'},
		{"ttl-max", required_argument, NULL, 'X'},   {"now", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0},
	};
	struct nhi_hsm_config hcfg = {0};
	struct nhi_token_issuer_cfg icfg;
	struct nhi_token_request req = {0};
	struct nhi_token_issuer *iss = NULL;
	struct nhi_token_issued info;
	struct nhi_hsm *hsm = NULL;
	struct nhi_buf cert = {0}, tok = {0};
	const char *roles[ROLES_MAX], *cert_path = NULL;
	long long num;
	int c, status = 1;
	nhi_err e;

	nhi_token_issuer_cfg_init(&icfg);
	icfg.signing_key = "nhid-token-1";
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't': hcfg.token = optarg; break;
		case 'p': hcfg.pin_file = optarg; break;
		case 'M': hcfg.module_path = optarg; break;
		case 'k': icfg.signing_key = optarg; break;
		case 'i': icfg.issuer = optarg; break;
		case 's': req.sub = optarg; break;
		case 'a': req.aud = optarg; break;
		case 'r':
			if (req.n_roles == ROLES_MAX) {
				fprintf(stderr, "nhictl token issue: at most %d --role\n", ROLES_MAX);
				return 2;
			}
			roles[req.n_roles++] = optarg;
			break;
		case 'c': cert_path = optarg; break;
		case 'T':
		case 'X':
			if (!nhictl_arg_ll("token issue", c == 'T' ? "ttl" : "ttl-max", optarg, 1, NHI_TOKEN_TTL_MAX_S, &num))
				return 2;
			if (c == 'T')
				req.ttl_s = (unsigned)num;
			else
				icfg.ttl_max_s = (unsigned)num;
			break;
		case 'n':
			if (!nhictl_arg_ll("token issue", "now", optarg, 1, NHI_TOKEN_NUMERICDATE_MAX - NHI_TOKEN_TTL_MAX_S, &num))
				return 2;
			req.now = num;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (hcfg.token == NULL || hcfg.pin_file == NULL || icfg.issuer == NULL || req.sub == NULL || req.aud == NULL ||
	    cert_path == NULL || optind != argc) {
		fprintf(stderr,
			"nhictl token issue: --hsm-token, --pin-file, --iss, --sub, --aud and --cert are required\n");
		usage(stderr);
		return 2;
	}
	if (icfg.ttl_default_s > icfg.ttl_max_s)
		icfg.ttl_default_s = icfg.ttl_max_s;
	req.roles = roles;
	e = read_cert_der(cert_path, &cert);
	if (e != NHI_OK) {
		status = nhictl_fail("token issue", cert_path, e);
		goto out;
	}
	req.cert_der = cert.data;
	req.cert_der_len = cert.len;
	hcfg.sessions = 1;
	e = nhi_hsm_open(&hcfg, &hsm);
	if (e != NHI_OK) {
		status = nhictl_fail("token issue", hcfg.token, e);
		goto out;
	}
	icfg.hsm = hsm;
	e = nhi_token_issuer_new(&icfg, &iss);
	if (e == NHI_OK)
		e = nhi_token_issue(iss, &req, &tok, &info);
	if (e != NHI_OK) {
		status = nhictl_fail("token issue", icfg.signing_key, e);
		goto out;
	}
	printf("%s\n", (const char *)tok.data);
	fprintf(stderr, "issued jti=%s kid=%s exp=%lld\n", info.jti, info.kid, (long long)info.exp);
	status = 0;
out:
	nhi_wipe(tok.data, tok.len);
	nhi_buf_free(&tok);
	nhi_buf_free(&cert);
	nhi_token_issuer_free(iss);
	nhi_hsm_free(hsm);
	return status;
}

static int cmd_jwks(int argc, char **argv)
{
	static const struct option opts[] = {
		{"hsm-token", required_argument, NULL, 't'}, {"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'M'},    {"key", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},	     {NULL, 0, NULL, 0},
	};
	struct nhi_hsm_config hcfg = {0};
	struct nhi_hsm *hsm = NULL;
	struct nhi_hsm_key *key = NULL;
	EVP_PKEY *pubs[KEYS_MAX] = {0};
	const char *labels[KEYS_MAX];
	struct nhi_buf out = {0};
	size_t n = 0, i;
	int c, status = 1;
	nhi_err e = NHI_OK;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't': hcfg.token = optarg; break;
		case 'p': hcfg.pin_file = optarg; break;
		case 'M': hcfg.module_path = optarg; break;
		case 'k':
			if (n == KEYS_MAX) {
				fprintf(stderr, "nhictl token jwks: at most %d --key\n", KEYS_MAX);
				return 2;
			}
			labels[n++] = optarg;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (hcfg.token == NULL || n == 0 || optind != argc) {
		fprintf(stderr, "nhictl token jwks: --hsm-token and at least one --key are required\n");
		usage(stderr);
		return 2;
	}
	hcfg.sessions = 1;
	e = nhi_hsm_open(&hcfg, &hsm);
	if (e != NHI_OK) {
		status = nhictl_fail("token jwks", hcfg.token, e);
		goto out;
	}
	for (i = 0; i < n; i++) {
		e = nhi_hsm_find(hsm, labels[i], &key);
		if (e == NHI_OK && nhi_hsm_key_kind(key) != NHI_KEY_EC_P256)
			e = nhi_err_set(NHI_ERR_CONFIG, "'%s' is not an EC P-256 key: token keys are ES256", labels[i]);
		if (e == NHI_OK)
			e = nhi_hsm_pubkey(hsm, key, &pubs[i]);
		nhi_hsm_key_free(key);
		key = NULL;
		if (e != NHI_OK) {
			status = nhictl_fail("token jwks", labels[i], e);
			goto out;
		}
	}
	e = nhi_token_jwks(pubs, n, &out);
	if (e != NHI_OK) {
		status = nhictl_fail("token jwks", "JWKS", e);
		goto out;
	}
	fwrite(out.data, 1, out.len, stdout);
	status = 0;
out:
	for (i = 0; i < n; i++)
		EVP_PKEY_free(pubs[i]);
	nhi_buf_free(&out);
	nhi_hsm_free(hsm);
	return status;
}

int nhictl_token(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {{"verify", cmd_verify}, {"issue", cmd_issue}, {"jwks", cmd_jwks}};

	return nhictl_dispatch("token", actions, sizeof(actions) / sizeof(actions[0]), usage, argc, argv);
}
