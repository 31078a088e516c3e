/* tests/fuzz/transcript.c — ceremony transcript verification on hostile input. */
#include "../../provisioning/prov_internal.h"
#include "../fixtures/dev_root.h"

#include <openssl/pem.h>
#include <stdlib.h>

/* the root of a dev ceremony whose transcript is in the seed corpus, so the
 * signature path runs too */
static const char root_pem[] = NHI_TEST_DEV_ROOT_PEM;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static X509 *root;
	static int loaded;
	size_t n = 0;

	if (!loaded) {
		BIO *b = BIO_new_mem_buf(root_pem, -1);

		root = PEM_read_bio_X509(b, NULL, NULL, NULL);
		BIO_free(b);
		if (root == NULL)
			abort();
		loaded = 1;
	}
	if (nhi_transcript_verify(data, size, root, &n) == NHI_OK && n == 0)
		abort(); /* success must mean at least the signature record */
	return 0;
}
