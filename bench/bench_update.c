/*
 * bench/bench_update.c — time to verify and to apply one update package the size
 * of a certificate rotation (16 KiB body: chain + wrapped key, with margin),
 * threshold 2 of 3 custodians, on the filesystem of $TMPDIR: verify only (parse,
 * two ES256 verifies, checksum) and the full apply (verify, body write + fsync,
 * state replace + fsync, record + move + directory fsyncs). Also the 1 MiB body
 * case (an identity backup or manifest). Prints p50/p99 in milliseconds.
 * Usage: bench_update [seconds-per-case]
 */
#include "../common/pkey.h"
#include "../server/update.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define NOW 1800000000LL
#define LAT_MAX 100000

static double seconds = 3.0;
static EVP_PKEY *k[3];

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void die(const char *what)
{
	fprintf(stderr, "bench_update: %s: %s\n", what, nhi_err_detail());
	exit(1);
}

static void sign(enum nhi_doc_type t, struct nhi_buf *doc, EVP_PKEY *key)
{
	struct nhi_buf msg = {0}, next = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80], raw[64];
	size_t der_len = sizeof(der);

	if (nhi_doc_signing_input(t, doc->data, doc->len, &msg) != NHI_OK ||
	    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSign(md, der, &der_len, msg.data, msg.len) != 1 ||
	    nhi_ecdsa_der_to_raw(der, der_len, raw) != NHI_OK ||
	    nhi_doc_add_signature(t, doc->data, doc->len, key, raw, &next) != NHI_OK)
		die("sign");
	nhi_buf_free(doc);
	*doc = next;
	nhi_buf_free(&msg);
	EVP_MD_CTX_free(md);
}

static void package(uint64_t version, size_t body_len, struct nhi_buf *out)
{
	uint8_t *body = malloc(body_len);
	struct nhi_update_create_req req = {
		.id = "bench", .kind = NHI_UPDATE_CERT_ROTATION, .version = version, .created_at = NOW,
		.expires_at = NOW + 86400, .body = body, .body_len = body_len,
	};

	memset(body, 'c', body_len);
	if (nhi_update_create(&req, out) != NHI_OK)
		die("create");
	sign(NHI_DOC_UPDATE, out, k[0]);
	sign(NHI_DOC_UPDATE, out, k[2]);
	free(body);
}

static void report(const char *name, double *lat, size_t n)
{
	qsort(lat, n, sizeof(*lat), cmp_double);
	printf("  %-34s %6zu runs  p50 %7.3f ms  p99 %7.3f ms\n", name, n, lat[n / 2] * 1e3,
	       lat[(size_t)((double)n * 0.99)] * 1e3);
}

static void run(size_t body_len, const char *base)
{
	struct nhi_bundle_create_req br = {0};
	struct nhi_buf bdoc = {0}, doc = {0};
	struct nhi_bundle *b = NULL;
	enum nhi_bundle_reason bwhy;
	struct nhi_update_check chk = {0};
	struct nhi_update_info info;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result *res = calloc(1, sizeof(*res));
	enum nhi_update_reason why;
	double *lat = calloc(LAT_MAX, sizeof(double)), t0, end;
	char dir[512], path[600], name[64];
	size_t n = 0;
	uint64_t v;
	/* the bundle needs one CA certificate: a tiny self-signed one */
	{
		X509 *x = X509_new();
		BIO *bio = BIO_new(BIO_s_mem());
		char *data;
		long len;
		static char capem[4096];

		X509_set_version(x, 2);
		X509_set_pubkey(x, k[0]);
		X509_gmtime_adj(X509_getm_notBefore(x), 0);
		X509_gmtime_adj(X509_getm_notAfter(x), 3600);
		X509_sign(x, k[0], EVP_sha256());
		PEM_write_bio_X509(bio, x);
		len = BIO_get_mem_data(bio, &data);
		memcpy(capem, data, (size_t)len);
		capem[len] = '\0';
		br.ca_pem = capem;
		BIO_free(bio);
		X509_free(x);
	}
	br.version = 1;
	br.expires_at = NOW + 86400 * 365;
	br.jwks = "{\"keys\":[]}";
	br.signers = k;
	br.n_signers = 3;
	br.threshold = 2;
	if (nhi_bundle_create(&br, &bdoc) != NHI_OK)
		die("bundle");
	sign(NHI_DOC_BUNDLE, &bdoc, k[0]);
	sign(NHI_DOC_BUNDLE, &bdoc, k[1]);
	if (nhi_bundle_parse(bdoc.data, bdoc.len, &b, &bwhy) != NHI_OK)
		die("bundle parse");

	/* verify only */
	package(1, body_len, &doc);
	chk.signers = nhi_bundle_update_signers(b);
	chk.threshold = 2;
	chk.now = NOW;
	end = now_s() + seconds;
	for (n = 0; n < LAT_MAX && now_s() < end; n++) {
		t0 = now_s();
		if (nhi_update_verify(doc.data, doc.len, &chk, &info, NULL, &why) != NHI_OK)
			die("verify");
		lat[n] = now_s() - t0;
	}
	snprintf(name, sizeof(name), "verify, %zu KiB body", body_len / 1024);
	report(name, lat, n);
	nhi_buf_free(&doc);

	/* full apply, a new version each time */
	snprintf(dir, sizeof(dir), "%s/nhi-bench-update-XXXXXX", base);
	if (mkdtemp(dir) == NULL)
		die("mkdtemp");
	cfg.state_dir = dir;
	cfg.bundle = b;
	cfg.now = NOW;
	end = now_s() + seconds;
	for (n = 0, v = 1; n < LAT_MAX && now_s() < end; n++, v++) {
		package(v, body_len, &doc);
		snprintf(path, sizeof(path), "%s/pkg-%llu", dir, (unsigned long long)v);
		if (nhi_file_write_excl(path, doc.data, doc.len, 0600) != NHI_OK)
			die("write");
		nhi_buf_free(&doc);
		t0 = now_s();
		if (nhi_update_apply_file(&cfg, path, res) != NHI_OK)
			die("apply");
		lat[n] = now_s() - t0;
	}
	snprintf(name, sizeof(name), "apply (durable), %zu KiB body", body_len / 1024);
	report(name, lat, n);
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	if (system(path) != 0)
		fprintf(stderr, "bench_update: could not remove %s\n", dir);
	nhi_bundle_free(b);
	nhi_buf_free(&bdoc);
	free(lat);
	free(res);
}

int main(int argc, char **argv)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	size_t i;

	if (argc > 1)
		seconds = atof(argv[1]);
	for (i = 0; i < 3; i++)
		if ((k[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) == NULL)
			die("keygen");
	printf("  threshold 2 of 3, ES256, state dir on %s\n", tmp);
	run(16 * 1024, tmp);
	run(1024 * 1024, tmp);
	for (i = 0; i < 3; i++)
		EVP_PKEY_free(k[i]);
	return 0;
}
