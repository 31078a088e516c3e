/*
 * tests/fuzz/fuzz_sign.h — for fuzz targets of signed documents: wrap a payload in the
 * signed envelope (server/update.h) with a software key, so the fuzzer also reaches
 * the code behind a valid signature.
 */
#ifndef NHI_FUZZ_SIGN_H
#define NHI_FUZZ_SIGN_H

#include "../../common/pkey.h"
#include "../../server/update.h"

#include <openssl/evp.h>

/* false when the payload cannot be wrapped (the library refused it) */
static inline bool fuzz_wrap_signed(enum nhi_doc_type type, EVP_PKEY *key, const uint8_t *p, size_t n,
				    struct nhi_buf *out)
{
	struct nhi_buf doc = {0}, msg = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80], raw[64];
	size_t der_len = sizeof(der);
	bool ok = false;

	if (md != NULL && nhi_doc_wrap(p, n, &doc) == NHI_OK &&
	    nhi_doc_signing_input(type, doc.data, doc.len, &msg) == NHI_OK &&
	    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
	    EVP_DigestSign(md, der, &der_len, msg.data, msg.len) == 1 &&
	    nhi_ecdsa_der_to_raw(der, der_len, raw) == NHI_OK &&
	    nhi_doc_add_signature(type, doc.data, doc.len, key, raw, out) == NHI_OK)
		ok = true;
	EVP_MD_CTX_free(md);
	nhi_buf_free(&doc);
	nhi_buf_free(&msg);
	return ok;
}

#endif
