/*
 * tokens/es256.c — the ES256 signature layer of the verifier (RFC 7518 §3.4): one
 * trusted P-256 public key, parsed once, with what OpenSSL 3 would otherwise redo
 * on every call kept ready: the SHA-256 implementation fetched once, and a few
 * verify-initialised EVP_PKEY_CTXs that threads borrow under a mutex (creating a
 * context runs a provider fetch and the key's export to the provider; libjwt 1.10
 * re-parses the PEM on top of that, which is why it manages ~2.8k verifies/s).
 */
#include "../common/pkey.h"
#include "tokens_internal.h"

#include <openssl/err.h>
#include <string.h>

nhi_err nhi_es256_key_init(struct nhi_es256_key *k, EVP_PKEY *pk)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	memset(k, 0, sizeof(*k));
	NHI_CHECK(nhi_pkey_is_p256(pk), NHI_ERR_ARG,
		  "ES256 needs an EC P-256 key");
	NHI_CHECK(pthread_mutex_init(&k->mu, NULL) == 0, NHI_ERR_INTERNAL, "pthread_mutex_init failed");
	k->mu_ready = true;
	k->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
	NHI_CHECK_SSL(k->sha256 != NULL, NHI_ERR_CRYPTO, "fetching SHA-256");
	NHI_CHECK_SSL(EVP_PKEY_up_ref(pk) == 1, NHI_ERR_CRYPTO, "EVP_PKEY_up_ref");
	k->pk = pk;
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_es256_key_clear(k);
	return rv;
}

void nhi_es256_key_clear(struct nhi_es256_key *k)
{
	size_t i;

	for (i = 0; i < k->n_idle; i++)
		EVP_PKEY_CTX_free(k->idle[i]);
	EVP_MD_free(k->sha256);
	EVP_PKEY_free(k->pk);
	if (k->mu_ready)
		pthread_mutex_destroy(&k->mu);
	memset(k, 0, sizeof(*k));
}

/* A verify-initialised context: an idle one, or a new one. */
static EVP_PKEY_CTX *borrow(struct nhi_es256_key *k)
{
	EVP_PKEY_CTX *ctx = NULL;

	pthread_mutex_lock(&k->mu);
	if (k->n_idle > 0)
		ctx = k->idle[--k->n_idle];
	pthread_mutex_unlock(&k->mu);
	if (ctx != NULL)
		return ctx;
	ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pk, NULL);
	if (ctx != NULL && EVP_PKEY_verify_init(ctx) != 1) {
		EVP_PKEY_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

static void give_back(struct nhi_es256_key *k, EVP_PKEY_CTX *ctx)
{
	pthread_mutex_lock(&k->mu);
	if (k->n_idle < NHI_ES256_IDLE_CTX) {
		k->idle[k->n_idle++] = ctx;
		ctx = NULL;
	}
	pthread_mutex_unlock(&k->mu);
	EVP_PKEY_CTX_free(ctx);
}

/*
 * One DER INTEGER (X.690 §8.3) of a 32-byte unsigned big-endian value: minimal
 * length, a 0x00 in front when the top bit is set. Encoding only: nothing the
 * token sends is parsed here, and the result goes to OpenSSL, which checks it.
 */
static size_t der_uint(const uint8_t v[32], uint8_t *out)
{
	size_t skip = 0, n;
	bool pad;

	while (skip < 31 && v[skip] == 0)
		skip++;
	n = 32 - skip;
	pad = (v[skip] & 0x80) != 0;
	out[0] = 0x02;
	out[1] = (uint8_t)(n + pad);
	out[2] = 0x00;
	memcpy(out + 2 + pad, v + skip, n);
	return 2 + pad + n;
}

nhi_err nhi_es256_verify(struct nhi_es256_key *k, const uint8_t *input, size_t len, const uint8_t sig[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY_CTX *ctx = NULL;
	uint8_t digest[32], der[2 + 2 * 35];
	unsigned dlen = 0;
	size_t n;
	int ok;

	/* OpenSSL wants ECDSA-Sig-Value DER; the JWS form is fixed-width R||S.
	 * SEQUENCE { INTEGER r, INTEGER s }: at most 70 bytes, so one length byte. */
	n = der_uint(sig, der + 2);
	n += der_uint(sig + 32, der + 2 + n);
	der[0] = 0x30;
	der[1] = (uint8_t)n;
	NHI_CHECK_SSL(EVP_Digest(input, len, digest, &dlen, k->sha256, NULL) == 1 && dlen == 32, NHI_ERR_CRYPTO,
		      "SHA-256 of the signing input");
	ctx = borrow(k);
	NHI_CHECK_SSL(ctx != NULL, NHI_ERR_CRYPTO, "ECDSA verify setup");
	/* r and s outside [1, n-1] fail here; high-S is accepted like RFC 7518 and
	 * OpenSSL do (docs/tokens.md "High-S") */
	ok = EVP_PKEY_verify(ctx, der, n + 2, digest, sizeof(digest));
	if (ok != 1) {
		ERR_clear_error();
		NHI_FAIL(NHI_ERR_VERIFY, "ES256 signature does not verify");
	}
	rv = NHI_OK;
out:
	if (ctx != NULL)
		give_back(k, ctx);
	return rv;
}

nhi_err nhi_token_es256_verify(EVP_PKEY *pk, const uint8_t *input, size_t len, const uint8_t sig[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_es256_key k;

	NHI_TRY(nhi_es256_key_init(&k, pk));
	rv = nhi_es256_verify(&k, input, len, sig);
	nhi_es256_key_clear(&k);
out:
	return rv;
}
