/*
 * server/admin.c — the admin bearer token is stored only as an scrypt hash in the
 * config ("scrypt:N:r:p:<salt>:<hash>", base64url; no "$", which the config syntax expands); checks compare in constant time.
 */
#include "server.h"
#include "../common/limits.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SALT_BYTES 16
#define HASH_BYTES 32

static nhi_err kdf(const char *secret, size_t len, const uint8_t *salt, size_t salt_len, unsigned long long n,
		   unsigned long long r, unsigned long long p, uint8_t out[HASH_BYTES])
{
	if (EVP_PBE_scrypt(secret, len, salt, salt_len, n, r, p, 64ULL * 1024 * 1024, out, HASH_BYTES) != 1)
		return nhi_err_set_ssl(NHI_ERR_CRYPTO, "scrypt");
	return NHI_OK;
}

nhi_err nhi_admin_hash_make(const char *secret, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t salt[SALT_BYTES], h[HASH_BYTES];
	struct nhi_buf s64 = {0}, h64 = {0};

	NHI_CHECK(len >= 16, NHI_ERR_ARG, "the admin token must be at least 16 characters");
	NHI_CHECK_SSL(RAND_bytes(salt, sizeof(salt)) == 1, NHI_ERR_CRYPTO, "random salt");
	NHI_TRY(kdf(secret, len, salt, sizeof(salt), NHI_ADMIN_SCRYPT_N, NHI_ADMIN_SCRYPT_R, NHI_ADMIN_SCRYPT_P, h));
	NHI_TRY(nhi_b64url_encode(salt, sizeof(salt), &s64));
	NHI_TRY(nhi_b64url_encode(h, sizeof(h), &h64));
	NHI_TRY(nhi_buf_printf(out, "scrypt:%d:%d:%d:%s:%s", NHI_ADMIN_SCRYPT_N, NHI_ADMIN_SCRYPT_R, NHI_ADMIN_SCRYPT_P,
			       (char *)s64.data, (char *)h64.data));
	rv = NHI_OK;
out:
	nhi_wipe(h, sizeof(h));
	nhi_buf_free(&s64);
	nhi_buf_free(&h64);
	return rv;
}

nhi_err nhi_admin_hash_check(const char *encoded, const char *secret, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char salt64[64], hash64[64];
	unsigned long long n, r, p;
	struct nhi_buf salt = {0}, want = {0};
	uint8_t got[HASH_BYTES];

	NHI_CHECK(sscanf(encoded, "scrypt:%llu:%llu:%llu:%63[A-Za-z0-9_-]:%63[A-Za-z0-9_-]", &n, &r, &p, salt64,
			 hash64) == 5,
		  NHI_ERR_CONFIG, "admin_token_hash is malformed");
	NHI_CHECK(n >= 1024 && n <= (1u << 20) && r >= 1 && r <= 32 && p >= 1 && p <= 16, NHI_ERR_CONFIG,
		  "admin_token_hash parameters out of range");
	NHI_TRY(nhi_b64url_decode(salt64, strlen(salt64), &salt));
	NHI_TRY(nhi_b64url_decode(hash64, strlen(hash64), &want));
	NHI_CHECK(want.len == HASH_BYTES, NHI_ERR_CONFIG, "admin_token_hash has a hash of the wrong size");
	NHI_TRY(kdf(secret, len, salt.data, salt.len, n, r, p, got));
	NHI_CHECK(nhi_ct_equal(got, want.data, HASH_BYTES), NHI_ERR_DENIED, "wrong admin token");
	rv = NHI_OK;
out:
	nhi_wipe(got, sizeof(got));
	nhi_buf_free(&salt);
	nhi_buf_free(&want);
	return rv;
}
