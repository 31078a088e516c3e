/*
 * common/pkey.h — public-key helpers shared by hsm/, tokens/ and provisioning/:
 * building OpenSSL keys from raw points, exporting them (SPKI DER, PEM, RFC 7517
 * JWK, RFC 7638 thumbprint) and converting ECDSA signatures between the raw R||S
 * form (JWS, PKCS#11) and DER (X.509, TLS).
 */
#ifndef NHI_PKEY_H
#define NHI_PKEY_H

#include "nhi.h"

#include <openssl/evp.h>

enum nhi_pkey_type {
	NHI_PKEY_P256 = 1,
	NHI_PKEY_ED25519 = 2,
};

/* True for an EC key on P-256 (the curve is checked by name, not by its size). */
bool nhi_pkey_is_p256(const EVP_PKEY *pk);
/*
 * Read a PEM public key ("-----BEGIN PUBLIC KEY-----", as `nhictl key pubkey` and the
 * ceremony write them) from `path`, capped at NHI_CERT_MAX_BYTES; it must be P-256.
 * NHI_ERR_FORMAT naming the file otherwise. *out is the caller's.
 */
nhi_err nhi_pkey_load_pem_p256(const char *path, EVP_PKEY **out) NHI_MUST_CHECK;
/* EVP_PKEY from a raw public point (65 bytes 0x04||X||Y, or 32 Ed25519 bytes). Caller frees. */
nhi_err nhi_pkey_from_raw(enum nhi_pkey_type t, const uint8_t *raw, size_t len, EVP_PKEY **out) NHI_MUST_CHECK;
/* Raw public point of a P-256 (65 bytes) or Ed25519 (32 bytes) key into out (>= 65 bytes). */
nhi_err nhi_pkey_raw(const EVP_PKEY *pk, uint8_t *out, size_t *out_len) NHI_MUST_CHECK;
nhi_err nhi_pkey_spki_der(const EVP_PKEY *pk, struct nhi_buf *out) NHI_MUST_CHECK;
nhi_err nhi_pkey_pem(const EVP_PKEY *pk, struct nhi_buf *out) NHI_MUST_CHECK;
/* RFC 7638 §3.2 canonical JWK: required members only, lexicographic order, no spaces. */
nhi_err nhi_pkey_jwk(const EVP_PKEY *pk, struct nhi_buf *out) NHI_MUST_CHECK;
/* RFC 7638 thumbprint: base64url(SHA-256(canonical JWK)); 43 chars + NUL into out. */
nhi_err nhi_pkey_thumbprint(const EVP_PKEY *pk, char out[44]) NHI_MUST_CHECK;
/* SHA-256 fingerprint of the SPKI DER as lower-case hex (64 chars + NUL). */
nhi_err nhi_pkey_fingerprint(const EVP_PKEY *pk, char out[65]) NHI_MUST_CHECK;

/* raw 64-byte R||S -> DER ECDSA-Sig-Value (appended to out) */
nhi_err nhi_ecdsa_raw_to_der(const uint8_t raw[64], struct nhi_buf *out) NHI_MUST_CHECK;
/*
 * ES256 check with OpenSSL: SHA-256 over msg, `sig` raw R||S (64 bytes, as the token
 * makes them). NHI_ERR_VERIFY when it does not verify (OpenSSL's queue cleared).
 */
nhi_err nhi_pkey_es256_verify(EVP_PKEY *pk, const uint8_t *msg, size_t len, const uint8_t sig[64]) NHI_MUST_CHECK;
/* DER ECDSA-Sig-Value -> raw 64-byte R||S; NHI_ERR_FORMAT if not a P-256-sized signature */
nhi_err nhi_ecdsa_der_to_raw(const uint8_t *der, size_t len, uint8_t raw[64]) NHI_MUST_CHECK;

#endif
