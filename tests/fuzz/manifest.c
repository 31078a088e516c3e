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
#include "fuzz_sign.h"

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_buf doc = {0};
	size_t n;

	init();
	(void)!nhi_manifest_verify_dir(data, size, ks, dir, NULL, NULL, &n);
	if (size > 0 && data[0] == '{' && memmem(data, size, "\"payload\"", 9) == NULL && size < 65536 &&
	    fuzz_wrap_signed(NHI_DOC_MANIFEST, key, data, size, &doc))
		(void)!nhi_manifest_verify_dir(doc.data, doc.len, ks, dir, NULL, NULL, &n);
	nhi_buf_free(&doc);
	return 0;
}
