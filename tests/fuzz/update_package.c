/*
 * tests/fuzz/update_package.c — the update package parser and verifier
 * (server/update.c) under libFuzzer (make fuzz) or the file driver (make check).
 *
 * Every input is verified as a whole package against a keyset holding one key.
 * An input that is a JSON object (first byte '{' and no "payload" member) is also
 * taken as a PAYLOAD: wrapped, signed here with that key and verified, so that
 * mutations reach the payload checks (kind, times, version, checksum) instead of
 * stopping at the signature count. Seeds: tests/fuzz/corpus/update_package/.
 */
#include "../../common/pkey.h"
#include "../../server/update.h"
#include "fuzz_sign.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1800000000LL

static EVP_PKEY *key;
static struct nhi_keyset *ks;

static void init(void)
{
	if (key != NULL)
		return;
	key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (key == NULL || nhi_keyset_new(&ks) != NHI_OK || nhi_keyset_add(ks, key) != NHI_OK)
		abort();
}

static void verify(const uint8_t *d, size_t n)
{
	struct nhi_update_check chk = {0};
	struct nhi_update_info info;
	struct nhi_buf body = {0};
	enum nhi_update_reason why;

	chk.signers = ks;
	chk.threshold = 1;
	chk.now = NOW;
	chk.last_version[NHI_UPDATE_REVOCATION] = 3;
	if (nhi_update_verify(d, n, &chk, &info, &body, &why) == NHI_OK && why != NHI_UPDATE_OK)
		abort();
	nhi_buf_free(&body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_buf signed_doc = {0}, payload = {0};
	unsigned n;

	init();
	verify(data, size);
	(void)!nhi_doc_count_signers(NHI_DOC_UPDATE, data, size, ks, &n);
	(void)!nhi_doc_payload(NHI_DOC_UPDATE, data, size, &payload);
	if (size > 0 && data[0] == '{' && memmem(data, size, "\"payload\"", 9) == NULL && size < 65536 &&
	    fuzz_wrap_signed(NHI_DOC_UPDATE, key, data, size, &signed_doc))
		verify(signed_doc.data, signed_doc.len);
	nhi_buf_free(&signed_doc);
	nhi_buf_free(&payload);
	return 0;
}
