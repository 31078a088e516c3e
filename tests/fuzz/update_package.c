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

/* Wrap `payload`, sign it with `key`, into out. Returns false if the payload is unusable. */
static bool wrap_signed(const uint8_t *p, size_t n, struct nhi_buf *out)
{
	struct nhi_buf doc = {0}, msg = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80], raw[64];
	size_t der_len = sizeof(der);
	bool ok = false;

	if (md != NULL && nhi_doc_wrap(p, n, &doc) == NHI_OK &&
	    nhi_doc_signing_input(NHI_DOC_UPDATE, doc.data, doc.len, &msg) == NHI_OK &&
	    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
	    EVP_DigestSign(md, der, &der_len, msg.data, msg.len) == 1 &&
	    nhi_ecdsa_der_to_raw(der, der_len, raw) == NHI_OK &&
	    nhi_doc_add_signature(NHI_DOC_UPDATE, doc.data, doc.len, key, raw, out) == NHI_OK)
		ok = true;
	EVP_MD_CTX_free(md);
	nhi_buf_free(&doc);
	nhi_buf_free(&msg);
	return ok;
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
	    wrap_signed(data, size, &signed_doc))
		verify(signed_doc.data, signed_doc.len);
	nhi_buf_free(&signed_doc);
	nhi_buf_free(&payload);
	return 0;
}
