/*
 * provisioning/enroll.c — `nhictl enroll NAME`: an agent's client certificate
 * (profile agent, URI SAN spiffe://<trust-domain>/agent/<NAME>) signed by the root
 * key inside the token. Either a fresh P-256 key pair is made for the agent (its
 * private key goes to a 0600 file: it is the agent's key, not the service's), or
 * the agent's CSR is certified, after checking its proof of possession.
 */
#include "../common/pkey.h"
#include "nhictl.h"
#include "prov_internal.h"
#include "../common/limits.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct enroll_opts {
	const char *name, *config, *pin_file, *csr, *out_dir;
	int days;
	int backdate_days; /* test builds only: an already expired certificate */
	int valid_seconds; /* test builds only: a certificate that expires this many seconds from now */
};

static nhi_err load_csr_key(const char *path, EVP_PKEY **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};
	BIO *bio = NULL;
	X509_REQ *req = NULL;
	EVP_PKEY *pk;

	*out = NULL;
	NHI_TRY(nhi_file_read(path, NHI_CERT_MAX_BYTES, &b));
	bio = BIO_new_mem_buf(b.data, (int)b.len);
	NHI_CHECK_SSL(bio != NULL, NHI_ERR_NOMEM, "BIO");
	req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
	NHI_CHECK_SSL(req != NULL, NHI_ERR_FORMAT, "%s is not a PEM certificate request", path);
	pk = X509_REQ_get0_pubkey(req);
	NHI_CHECK_SSL(pk != NULL, NHI_ERR_FORMAT, "%s has no usable public key", path);
	NHI_CHECK(nhi_pkey_is_p256(pk), NHI_ERR_FORMAT,
		  "%s: agent keys must be EC P-256 (the agent TLS profile is ECDHE-ECDSA)", path);
	/* proof of possession: the request is signed by the key it asks us to certify */
	NHI_CHECK_SSL(X509_REQ_verify(req, pk) == 1, NHI_ERR_VERIFY,
		      "%s: the request's signature does not verify with its own key", path);
	NHI_CHECK(EVP_PKEY_up_ref(pk) == 1, NHI_ERR_CRYPTO, "EVP_PKEY_up_ref");
	*out = pk;
	rv = NHI_OK;
out:
	X509_REQ_free(req);
	BIO_free(bio);
	nhi_buf_free(&b);
	return rv;
}

static nhi_err key_pem(EVP_PKEY *pk, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	BIO *b = BIO_new(BIO_s_secmem());
	char *p = NULL;
	long n;

	NHI_CHECK_SSL(b != NULL && PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL) == 1, NHI_ERR_CRYPTO,
		      "PEM-encoding the agent key");
	n = BIO_get_mem_data(b, &p);
	out->secret = true;
	NHI_TRY(nhi_buf_append(out, p, (size_t)n));
	rv = NHI_OK;
out:
	BIO_free(b); /* secure-heap BIO: cleansed on free */
	return rv;
}

static nhi_err enroll(const struct enroll_opts *o)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_ceremony_config cfg;
	uint8_t sha[32];
	struct nhi_profiles *prof = NULL;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *root_key = NULL;
	EVP_PKEY *agent = NULL, *root_hsm = NULL;
	X509 *ca = NULL, *cert = NULL;
	struct nhi_buf san = {0}, cert_pem = {0}, agent_pem = {.secret = true};
	char dir[600], ca_path[600], key_path[700], crt_path[700], fp[65];
	struct nhi_cert_request req;
	bool key_written = false, made_dir = false;
	struct tm na;
	char na_s[32];

	NHI_CHECK(nhi_valid_agent_name(o->name), NHI_ERR_ARG,
		  "agent name '%s' is not valid: 1-63 of [a-z0-9._-], starting with a letter or digit", o->name);
	NHI_TRY(nhi_ceremony_config_load(o->config, &cfg, sha));
	NHI_TRY(nhi_profiles_load(cfg.profiles, &prof, sha));
	snprintf(dir, sizeof(dir), "%s", o->out_dir ? o->out_dir : cfg.out_dir);
	if (o->out_dir == NULL)
		snprintf(dir, sizeof(dir), "%s/agents", cfg.out_dir);
	snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", cfg.out_dir);
	snprintf(key_path, sizeof(key_path), "%s/%s.key", dir, o->name);
	snprintf(crt_path, sizeof(crt_path), "%s/%s.crt", dir, o->name);
	if (mkdir(dir, 0755) == 0)
		made_dir = true;
	else
		NHI_CHECK(errno == EEXIST, NHI_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
	NHI_CHECK(access(crt_path, F_OK) != 0, NHI_ERR_EXISTS, "%s already exists: agent '%s' is enrolled", crt_path,
		  o->name);
	NHI_CHECK(o->csr != NULL || access(key_path, F_OK) != 0, NHI_ERR_EXISTS, "%s already exists", key_path);
	NHI_TRY(nhi_cert_load(ca_path, &ca));
	if (o->csr != NULL) {
		NHI_TRY(load_csr_key(o->csr, &agent));
	} else {
		agent = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		NHI_CHECK_SSL(agent != NULL, NHI_ERR_CRYPTO, "generating the agent key");
		NHI_TRY(key_pem(agent, &agent_pem));
	}
	NHI_TRY(nhictl_open_hsm(&cfg, o->pin_file, &h));
	NHI_TRY(nhi_root_signer(h, ca, ca_path, &root_key, &root_hsm));
	NHI_TRY(nhi_buf_printf(&san, "URI:spiffe://%s/agent/%s", cfg.trust_domain, o->name));
	req = (struct nhi_cert_request){.profile = "agent", .cn = o->name, .org = cfg.organization,
					.subject_key = agent, .issuer = ca, .issuer_key = root_hsm,
					.days = o->days ? o->days : cfg.agent_days, .san = (char *)san.data, .hsm = h,
					.backdate_days = o->backdate_days, .valid_seconds = o->valid_seconds};
	NHI_TRY(nhi_cert_issue(prof, &req, &cert));
	NHI_TRY(nhi_cert_pem(cert, &cert_pem));
	NHI_TRY(nhi_cert_fingerprint(cert, fp));
	NHI_CHECK_SSL(ASN1_TIME_to_tm(X509_get0_notAfter(cert), &na) == 1, NHI_ERR_CRYPTO, "reading the validity back");
	strftime(na_s, sizeof(na_s), "%Y-%m-%dT%H:%M:%SZ", &na);
	if (o->csr == NULL) {
		NHI_TRY(nhi_file_write_excl(key_path, agent_pem.data, agent_pem.len, 0600));
		key_written = true;
	}
	NHI_TRY(nhi_file_write_excl(crt_path, cert_pem.data, cert_pem.len, 0644));
	printf("enrolled %s: %s\n  certificate %s (SHA-256 %s)\n  valid until %s%s\n", o->name, (char *)san.data + 4,
	       crt_path, fp, na_s, ASN1_TIME_compare(X509_get0_notAfter(cert), X509_get0_notAfter(ca)) == 0 ?
	       " (cut to the root's notAfter: a certificate never outlives its root)" : "");
	if (o->csr == NULL)
		printf("  private key %s (mode 0600: hand it to the agent, then delete it here)\n", key_path);
	rv = NHI_OK;
out:
	if (rv != NHI_OK && key_written)
		unlink(key_path);
	if (rv != NHI_OK && made_dir) /* only the directory this run made; rmdir leaves a non-empty one */
		rmdir(dir);
	nhi_buf_free(&san);
	nhi_buf_free(&cert_pem);
	nhi_buf_free(&agent_pem);
	X509_free(cert);
	X509_free(ca);
	EVP_PKEY_free(agent);
	EVP_PKEY_free(root_hsm);
	nhi_hsm_key_free(root_key);
	nhi_hsm_free(h);
	nhi_profiles_free(prof);
	return rv;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl enroll NAME --config CEREMONY.conf [--pin-file FILE] [--csr FILE]\n"
		   "                     [--out-dir DIR] [--days N]\n"
		   "  Issues NAME's client certificate (URI SAN spiffe://<trust-domain>/agent/NAME),\n"
		   "  signed by the root key in the token. Without --csr a P-256 key pair is made\n"
		   "  and written to DIR/NAME.key (0600). DIR defaults to <out_dir>/agents.\n");
}

int nhictl_enroll(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'}, {"pin-file", required_argument, NULL, 'p'},
		{"csr", required_argument, NULL, 'r'},    {"out-dir", required_argument, NULL, 'o'},
		{"days", required_argument, NULL, 'd'},   {"help", no_argument, NULL, 'h'},
#ifdef NHI_TEST_BUILD
		{"testing-backdate-days", required_argument, NULL, 'B'},
		{"testing-valid-seconds", required_argument, NULL, 'S'},
#endif
		{NULL, 0, NULL, 0},
	};
	struct enroll_opts o = {0};
	long long days;
	nhi_err e;
	int opt;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': o.config = optarg; break;
		case 'p': o.pin_file = optarg; break;
		case 'r': o.csr = optarg; break;
		case 'o': o.out_dir = optarg; break;
		case 'd':
			if (!nhictl_arg_ll("enroll", "days", optarg, 1, NHI_AGENT_DAYS_MAX, &days))
				return 2;
			o.days = (int)days;
			break;
#ifdef NHI_TEST_BUILD
		case 'B': o.backdate_days = atoi(optarg); break;
		case 'S': o.valid_seconds = atoi(optarg); break;
#endif
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (o.config == NULL || optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	o.name = argv[optind];
	e = enroll(&o);
	return e == NHI_OK ? 0 : nhictl_fail("enroll", o.name, e);
}
