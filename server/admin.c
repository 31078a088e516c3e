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

/*
 * What an "Authorization: Bearer <token>" header brings back byte for byte: evhttp
 * trims spaces and tabs at the end of a header value, the route skips the spaces after
 * "Bearer" and takes the value up to a NUL, and CR, LF and other controls do not
 * survive an HTTP client. A hash of anything else could never be matched.
 */
static bool bearer_safe(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || s[0] == ' ' || s[len - 1] == ' ')
		return false;
	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
			return false;
	return true;
}

nhi_err nhi_admin_hash_make(const char *secret, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t salt[SALT_BYTES], h[HASH_BYTES];
	struct nhi_buf s64 = {0}, h64 = {0};

	NHI_CHECK(len >= 16, NHI_ERR_ARG, "the admin token must be at least 16 characters");
	NHI_CHECK(bearer_safe(secret, len), NHI_ERR_ARG,
		  "the admin token has a control byte (NUL, tab, newline, DEL, ...) or a space at its start or end, "
		  "which no Authorization header can carry intact (evhttp trims the ends): use printable characters");
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

struct parsed_hash {
	unsigned long long n, r, p;
	struct nhi_buf salt, hash;
};

/*
 * "scrypt:N:r:p:<salt>:<hash>" with nothing after it, N a power of two from 1024 to
 * 2^20, r 1-32, p 1-16, within the KDF's 64 MiB (128 r (N + p + 2) bytes), a salt
 * and a 32-byte hash in base64url. Checked when the config loads, so that a hash no
 * request could ever match is a startup error, not a 403 with the cause dropped.
 */
static nhi_err parse_hash(const char *encoded, struct parsed_hash *h)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char salt64[64], hash64[64];
	int end = -1;

	memset(h, 0, sizeof(*h));
	NHI_CHECK(sscanf(encoded, "scrypt:%llu:%llu:%llu:%63[A-Za-z0-9_-]:%63[A-Za-z0-9_-]%n", &h->n, &h->r, &h->p,
			 salt64, hash64, &end) == 5 &&
			  end > 0 && encoded[end] == '\0',
		  NHI_ERR_CONFIG, "admin_token_hash is not scrypt:N:r:p:SALT:HASH as `nhid --hash-admin-token` prints it");
	NHI_CHECK(h->n >= 1024 && h->n <= (1u << 20) && (h->n & (h->n - 1)) == 0 && h->r >= 1 && h->r <= 32 &&
			  h->p >= 1 && h->p <= 16 && 128ULL * h->r * (h->n + h->p + 2) <= 64ULL * 1024 * 1024,
		  NHI_ERR_CONFIG,
		  "admin_token_hash parameters N=%llu r=%llu p=%llu are out of range (N a power of two 1024-1048576, "
		  "r 1-32, p 1-16, 128*r*(N+p+2) within 64 MiB)",
		  h->n, h->r, h->p);
	NHI_TRY(nhi_b64url_decode(salt64, strlen(salt64), &h->salt));
	NHI_TRY(nhi_b64url_decode(hash64, strlen(hash64), &h->hash));
	NHI_CHECK(h->salt.len >= 8 && h->hash.len == HASH_BYTES, NHI_ERR_CONFIG,
		  "admin_token_hash has a salt of %zu bytes (at least 8) and a hash of %zu (%d)", h->salt.len, h->hash.len,
		  HASH_BYTES);
	rv = NHI_OK;
out:
	if (rv != NHI_OK) {
		nhi_buf_free(&h->salt);
		nhi_buf_free(&h->hash);
	}
	return rv;
}

nhi_err nhi_admin_hash_valid(const char *encoded)
{
	struct parsed_hash h;
	nhi_err rv = parse_hash(encoded, &h);

	if (rv == NHI_OK) {
		nhi_buf_free(&h.salt);
		nhi_buf_free(&h.hash);
	}
	return rv;
}

nhi_err nhi_admin_hash_check(const char *encoded, const char *secret, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct parsed_hash h = {0};
	uint8_t got[HASH_BYTES];

	memset(got, 0, sizeof(got));
	NHI_TRY(parse_hash(encoded, &h));
	NHI_TRY(kdf(secret, len, h.salt.data, h.salt.len, h.n, h.r, h.p, got));
	NHI_CHECK(nhi_ct_equal(got, h.hash.data, HASH_BYTES), NHI_ERR_DENIED, "wrong admin token");
	rv = NHI_OK;
out:
	nhi_wipe(got, sizeof(got));
	nhi_buf_free(&h.salt);
	nhi_buf_free(&h.hash);
	return rv;
}
