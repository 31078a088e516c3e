/*
 * tests/fuzz/trust_bundle.c — the trust bundle parser and chain checks
 * (server/bundle.c) under libFuzzer (make fuzz) or the file driver (make check).
 *
 * Every input is parsed as a bundle, verified as a one-element chain (no pin) and,
 * against a fixed valid bundle v1, as its successor. An input that is a JSON object
 * without "payload" is also taken as a bundle PAYLOAD and wrapped (unsigned), so
 * mutations reach the field checks (ca_certs, jwks, key lists, threshold) before
 * the self-signature count. Seeds: tests/fuzz/corpus/trust_bundle/.
 */
#include "../../server/update.h"

#include <stdlib.h>
#include <string.h>

#define NOW 1800000000LL

static void check(const uint8_t *d, size_t n)
{
	struct nhi_bundle *b = NULL;
	enum nhi_bundle_reason why;
	size_t bad;

	if (nhi_bundle_parse(d, n, &b, &why) == NHI_OK) {
		(void)nhi_bundle_version(b);
		(void)strlen(nhi_bundle_ca_pem(b));
		(void)strlen(nhi_bundle_jwks(b));
	}
	nhi_bundle_free(b);
	b = NULL;
	if (nhi_bundle_verify_chain(&d, &n, 1, NULL, NOW, &b, &why, &bad) == NHI_OK && why != NHI_BUNDLE_OK)
		abort();
	nhi_bundle_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_buf doc = {0};

	check(data, size);
	if (size > 0 && data[0] == '{' && memmem(data, size, "\"payload\"", 9) == NULL &&
	    nhi_doc_wrap(data, size, &doc) == NHI_OK)
		check(doc.data, doc.len);
	nhi_buf_free(&doc);
	return 0;
}
