/* common/pkey.c — public key export and ECDSA signature forms over OpenSSL 3. */
#include "pkey.h"
#include "limits.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>

nhi_err nhi_pkey_from_raw(enum nhi_pkey_type t, const uint8_t *raw, size_t len, EVP_PKEY **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pk = NULL;

	*out = NULL;
	if (t == NHI_PKEY_ED25519) {
		NHI_CHECK(len == 32, NHI_ERR_FORMAT, "Ed25519 public key must be 32 bytes, got %zu", len);
		pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, len);
		NHI_CHECK_SSL(pk != NULL, NHI_ERR_CRYPTO, "building an Ed25519 key");
	} else {
		NHI_CHECK(t == NHI_PKEY_P256, NHI_ERR_ARG, "unknown key type");
		NHI_CHECK(len == 65 && raw[0] == 0x04, NHI_ERR_FORMAT,
			  "P-256 public point must be 65 bytes starting 0x04, got %zu", len);
		bld = OSSL_PARAM_BLD_new();
		NHI_CHECK_SSL(bld != NULL, NHI_ERR_NOMEM, "OSSL_PARAM_BLD_new");
		NHI_CHECK_SSL(OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
				      OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw, len),
			      NHI_ERR_CRYPTO, "building EC key parameters");
		params = OSSL_PARAM_BLD_to_param(bld);
		ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
		NHI_CHECK_SSL(params != NULL && ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1,
			      NHI_ERR_CRYPTO, "EVP_PKEY_fromdata_init");
		/* fromdata checks the point lies on the curve */
		NHI_CHECK_SSL(EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) == 1, NHI_ERR_FORMAT,
			      "the P-256 public point is not on the curve");
	}
	*out = pk;
	pk = NULL;
	rv = NHI_OK;
out:
	EVP_PKEY_free(pk);
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	return rv;
}

bool nhi_pkey_is_p256(const EVP_PKEY *pk)
{
	char group[32] = "";

	return pk != NULL && EVP_PKEY_get_id(pk) == EVP_PKEY_EC &&
	       EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL) == 1 && strcmp(group, "prime256v1") == 0;
}

nhi_err nhi_pkey_load_pem_p256(const char *path, EVP_PKEY **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf pem = {0};
	BIO *b = NULL;
	EVP_PKEY *pk = NULL;

	*out = NULL;
	NHI_TRY(nhi_file_read(path, NHI_CERT_MAX_BYTES, &pem));
	b = BIO_new_mem_buf(pem.data, (int)pem.len);
	NHI_CHECK_SSL(b != NULL, NHI_ERR_NOMEM, "BIO_new_mem_buf");
	pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
	NHI_CHECK_SSL(pk != NULL, NHI_ERR_FORMAT,
		      "%s is not a PEM public key (\"-----BEGIN PUBLIC KEY-----\", as `nhictl key pubkey` prints)", path);
	NHI_CHECK(nhi_pkey_is_p256(pk), NHI_ERR_FORMAT, "%s is not an EC P-256 key: these keys sign ES256 only", path);
	*out = pk;
	pk = NULL;
	rv = NHI_OK;
out:
	EVP_PKEY_free(pk);
	BIO_free(b);
	nhi_buf_free(&pem);
	return rv;
}

nhi_err nhi_pkey_raw(const EVP_PKEY *pk, uint8_t *out, size_t *out_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t len = 65;

	if (EVP_PKEY_get_id(pk) == EVP_PKEY_ED25519) {
		len = 32;
		NHI_CHECK_SSL(EVP_PKEY_get_raw_public_key(pk, out, &len) == 1, NHI_ERR_CRYPTO, "Ed25519 public key");
	} else {
		NHI_CHECK(nhi_pkey_is_p256(pk), NHI_ERR_ARG, "only P-256 and Ed25519 keys are supported");
		NHI_CHECK_SSL(EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, 65, &len) == 1 &&
				      len == 65,
			      NHI_ERR_CRYPTO, "reading the P-256 public point");
	}
	*out_len = len;
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_pkey_spki_der(const EVP_PKEY *pk, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	unsigned char *der = NULL;
	int n = i2d_PUBKEY((EVP_PKEY *)pk, &der);

	NHI_CHECK_SSL(n > 0, NHI_ERR_CRYPTO, "encoding SubjectPublicKeyInfo");
	NHI_TRY(nhi_buf_append(out, der, (size_t)n));
	rv = NHI_OK;
out:
	OPENSSL_free(der);
	return rv;
}

nhi_err nhi_pkey_pem(const EVP_PKEY *pk, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	BIO *b = BIO_new(BIO_s_mem());
	char *p = NULL;
	long n;

	NHI_CHECK_SSL(b != NULL && PEM_write_bio_PUBKEY(b, (EVP_PKEY *)pk) == 1, NHI_ERR_CRYPTO, "PEM encoding");
	n = BIO_get_mem_data(b, &p);
	NHI_TRY(nhi_buf_append(out, p, (size_t)n));
	rv = NHI_OK;
out:
	BIO_free(b);
	return rv;
}

nhi_err nhi_pkey_jwk(const EVP_PKEY *pk, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf x = {0}, y = {0};
	uint8_t raw[65];
	size_t len = 0;

	NHI_TRY(nhi_pkey_raw(pk, raw, &len));
	if (len == 32) {
		NHI_TRY(nhi_b64url_encode(raw, 32, &x));
		NHI_TRY(nhi_buf_printf(out, "{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"%s\"}", (char *)x.data));
	} else {
		NHI_TRY(nhi_b64url_encode(raw + 1, 32, &x));
		NHI_TRY(nhi_b64url_encode(raw + 33, 32, &y));
		NHI_TRY(nhi_buf_printf(out, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}",
				       (char *)x.data, (char *)y.data));
	}
	rv = NHI_OK;
out:
	nhi_buf_free(&x);
	nhi_buf_free(&y);
	return rv;
}

nhi_err nhi_pkey_thumbprint(const EVP_PKEY *pk, char out[44])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf jwk = {0}, enc = {0};
	uint8_t d[32];

	NHI_TRY(nhi_pkey_jwk(pk, &jwk));
	NHI_TRY(nhi_sha256(jwk.data, jwk.len, d));
	NHI_TRY(nhi_b64url_encode(d, 32, &enc));
	NHI_CHECK(enc.len == 43, NHI_ERR_INTERNAL, "thumbprint length");
	memcpy(out, enc.data, 44);
	rv = NHI_OK;
out:
	nhi_buf_free(&jwk);
	nhi_buf_free(&enc);
	return rv;
}

nhi_err nhi_pkey_fingerprint(const EVP_PKEY *pk, char out[65])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf der = {0};
	uint8_t d[32];

	NHI_TRY(nhi_pkey_spki_der(pk, &der));
	NHI_TRY(nhi_sha256(der.data, der.len, d));
	nhi_hex(d, 32, out);
	rv = NHI_OK;
out:
	nhi_buf_free(&der);
	return rv;
}

nhi_err nhi_ecdsa_raw_to_der(const uint8_t raw[64], struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	ECDSA_SIG *sig = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(raw, 32, NULL), *s = BN_bin2bn(raw + 32, 32, NULL);
	unsigned char *der = NULL;
	int n;

	NHI_CHECK_SSL(sig != NULL && r != NULL && s != NULL && ECDSA_SIG_set0(sig, r, s) == 1, NHI_ERR_CRYPTO,
		      "building an ECDSA signature");
	r = s = NULL; /* owned by sig now */
	n = i2d_ECDSA_SIG(sig, &der);
	NHI_CHECK_SSL(n > 0, NHI_ERR_CRYPTO, "DER-encoding an ECDSA signature");
	NHI_TRY(nhi_buf_append(out, der, (size_t)n));
	rv = NHI_OK;
out:
	OPENSSL_free(der);
	BN_free(r);
	BN_free(s);
	ECDSA_SIG_free(sig);
	return rv;
}

nhi_err nhi_ecdsa_der_to_raw(const uint8_t *der, size_t len, uint8_t raw[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const unsigned char *p = der;
	ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
	const BIGNUM *r, *s;

	NHI_CHECK(sig != NULL && p == der + len, NHI_ERR_FORMAT, "not a DER ECDSA signature");
	ECDSA_SIG_get0(sig, &r, &s);
	NHI_CHECK(BN_num_bytes(r) <= 32 && BN_num_bytes(s) <= 32, NHI_ERR_FORMAT,
		  "ECDSA signature values too large for P-256");
	NHI_CHECK(BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32, NHI_ERR_CRYPTO,
		  "ECDSA signature conversion");
	rv = NHI_OK;
out:
	ECDSA_SIG_free(sig);
	return rv;
}

nhi_err nhi_pkey_es256_verify(EVP_PKEY *pk, const uint8_t *msg, size_t len, const uint8_t sig[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf der = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int r;

	NHI_CHECK_SSL(md != NULL, NHI_ERR_NOMEM, "EVP_MD_CTX_new");
	NHI_TRY(nhi_ecdsa_raw_to_der(sig, &der));
	NHI_CHECK_SSL(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1, NHI_ERR_CRYPTO,
		      "EVP_DigestVerifyInit");
	r = EVP_DigestVerify(md, der.data, der.len, msg, len);
	ERR_clear_error();
	NHI_CHECK(r == 1, NHI_ERR_VERIFY, "signature does not verify");
	rv = NHI_OK;
out:
	EVP_MD_CTX_free(md);
	nhi_buf_free(&der);
	return rv;
}
