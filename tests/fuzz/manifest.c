/*
 * tests/fuzz/manifest.c — the model manifest parser and directory comparison
 * (server/manifest.c) under libFuzzer (make fuzz) or the file driver (make check).
 *
 * Every input is verified as a signed manifest against a small fixed directory.
 * An input that is a JSON object without "payload" is also taken as a manifest
 * PAYLOAD, wrapped and signed here with the trusted key, so mutations reach the
 * file-list checks (paths, order, sizes, hashes) and the comparison.
 * Seeds: tests/fuzz/corpus/manifest/.
 */
#include "../../common/pkey.h"
#include "../../server/update.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static EVP_PKEY *key;
static struct nhi_keyset *ks;
static char dir[256];

static void init(void)
{
	char p[300];
	FILE *f;

	if (key != NULL)
		return;
	key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (key == NULL || nhi_keyset_new(&ks) != NHI_OK || nhi_keyset_add(ks, key) != NHI_OK)
		abort();
	snprintf(dir, sizeof(dir), "%s/nhi-fuzz-manifest-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(p, sizeof(p), "%s/sub", dir);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/a.bin", dir);
	if ((f = fopen(p, "w")) != NULL) {
		fputs("weights", f);
		fclose(f);
	}
	snprintf(p, sizeof(p), "%s/sub/b", dir);
	if ((f = fopen(p, "w")) != NULL)
		fclose(f);
}

__attribute__((destructor)) static void fini(void)
{
	char p[300];

	if (dir[0] == '\0')
		return;
	snprintf(p, sizeof(p), "%s/sub/b", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/sub", dir);
	rmdir(p);
	snprintf(p, sizeof(p), "%s/a.bin", dir);
	unlink(p);
	rmdir(dir);
	nhi_keyset_free(ks);
	EVP_PKEY_free(key);
}

static bool wrap_signed(const uint8_t *p, size_t n, struct nhi_buf *out)
{
	struct nhi_buf doc = {0}, msg = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80], raw[64];
	size_t der_len = sizeof(der);
	bool ok = false;

	if (md != NULL && nhi_doc_wrap(p, n, &doc) == NHI_OK &&
	    nhi_doc_signing_input(NHI_DOC_MANIFEST, doc.data, doc.len, &msg) == NHI_OK &&
	    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
	    EVP_DigestSign(md, der, &der_len, msg.data, msg.len) == 1 &&
	    nhi_ecdsa_der_to_raw(der, der_len, raw) == NHI_OK &&
	    nhi_doc_add_signature(NHI_DOC_MANIFEST, doc.data, doc.len, key, raw, out) == NHI_OK)
		ok = true;
	EVP_MD_CTX_free(md);
	nhi_buf_free(&doc);
	nhi_buf_free(&msg);
	return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_buf doc = {0};
	size_t n;

	init();
	(void)!nhi_manifest_verify_dir(data, size, ks, dir, NULL, NULL, &n);
	if (size > 0 && data[0] == '{' && memmem(data, size, "\"payload\"", 9) == NULL && size < 65536 &&
	    wrap_signed(data, size, &doc))
		(void)!nhi_manifest_verify_dir(doc.data, doc.len, ks, dir, NULL, NULL, &n);
	nhi_buf_free(&doc);
	return 0;
}
