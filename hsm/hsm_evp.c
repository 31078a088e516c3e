/*
 * hsm/hsm_evp.c — an OpenSSL EVP_PKEY whose ECDSA signing runs in the token.
 *
 * Why this and not libengine-pkcs11-openssl or pkcs11-provider: one mechanism
 * serves both X509_sign (ceremony, enroll) and the TLS handshake (server), with
 * the session pool and recovery of hsm.c, and no extra package or openssl.cnf
 * engine section to get wrong on an air-gapped host. OpenSSL 3 keeps an EC_KEY
 * with a non-default EC_KEY_METHOD on its legacy path ("foreign" key), so the
 * method's sign callbacks are what every EVP_DigestSign on it calls. The API is
 * deprecated in 3.0 but supported for the 3.x series; it is confined to this file.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "hsm_internal.h"

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/obj_mac.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct evp_binding {
	struct nhi_hsm *h;
	const struct nhi_hsm_key *key;
};

static EC_KEY_METHOD *hsm_method;
static int hsm_ex_index = -1;
static pthread_once_t hsm_once = PTHREAD_ONCE_INIT;

static ECDSA_SIG *hsm_sign_sig(const unsigned char *dgst, int dgst_len, const BIGNUM *kinv,
			       const BIGNUM *rp, EC_KEY *ec)
{
	struct evp_binding *b = EC_KEY_get_ex_data(ec, hsm_ex_index);
	uint8_t digest[32] = {0}, raw[64];
	ECDSA_SIG *sig = NULL;
	BIGNUM *r = NULL, *s = NULL;
	size_t n;

	(void)kinv;
	(void)rp;
	if (b == NULL || dgst_len <= 0)
		return NULL;
	/* ECDSA uses the leftmost bits of a longer digest; a shorter one is left-padded
	 * as an integer, which the token does for a 32-byte input too */
	n = (size_t)dgst_len > 32 ? 32 : (size_t)dgst_len;
	memcpy(digest + (32 - n), dgst, n);
	if (nhi_hsm_sign_digest(b->h, b->key, digest, raw) != NHI_OK)
		return NULL;
	sig = ECDSA_SIG_new();
	r = BN_bin2bn(raw, 32, NULL);
	s = BN_bin2bn(raw + 32, 32, NULL);
	if (sig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(sig, r, s) != 1) {
		ECDSA_SIG_free(sig);
		BN_free(r);
		BN_free(s);
		return NULL;
	}
	return sig;
}

static int hsm_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen,
		    const BIGNUM *kinv, const BIGNUM *r, EC_KEY *ec)
{
	ECDSA_SIG *s = hsm_sign_sig(dgst, dlen, kinv, r, ec);
	unsigned char *p = sig;
	int n;

	(void)type;
	if (s == NULL)
		return 0;
	n = i2d_ECDSA_SIG(s, &p);
	ECDSA_SIG_free(s);
	if (n <= 0)
		return 0;
	*siglen = (unsigned int)n;
	return 1;
}

static void binding_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	free(ptr);
}

static void hsm_method_init(void)
{
	int (*sign_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;

	hsm_ex_index = EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, binding_free);
	hsm_method = EC_KEY_METHOD_new(EC_KEY_get_default_method());
	if (hsm_method == NULL)
		return;
	EC_KEY_METHOD_get_sign(EC_KEY_get_default_method(), NULL, &sign_setup, NULL);
	EC_KEY_METHOD_set_sign(hsm_method, hsm_sign, sign_setup, hsm_sign_sig);
}

nhi_err nhi_hsm_evp_pkey(struct nhi_hsm *h, const struct nhi_hsm_key *key, EVP_PKEY **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct evp_binding *b = NULL;
	uint8_t point[65];
	size_t len = 0;
	EC_KEY *ec = NULL;
	EVP_PKEY *pk = NULL;

	*out = NULL;
	NHI_CHECK(key->kind == NHI_KEY_EC_P256, NHI_ERR_ARG, "key '%s' is not an EC P-256 key", key->label);
	pthread_once(&hsm_once, hsm_method_init);
	NHI_CHECK_SSL(hsm_method != NULL && hsm_ex_index >= 0, NHI_ERR_CRYPTO, "creating the HSM EC_KEY_METHOD");
	NHI_TRY(nhi_hsm_raw_point(h, key, point, &len));
	ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
	NHI_CHECK_SSL(ec != NULL, NHI_ERR_CRYPTO, "EC_KEY_new");
	NHI_CHECK_SSL(EC_KEY_set_method(ec, hsm_method) == 1, NHI_ERR_CRYPTO, "EC_KEY_set_method");
	NHI_CHECK_SSL(EC_KEY_oct2key(ec, point, len, NULL) == 1, NHI_ERR_CRYPTO, "setting the public point");
	b = calloc(1, sizeof(*b));
	NHI_CHECK(b != NULL, NHI_ERR_NOMEM, "out of memory");
	b->h = h;
	b->key = key;
	NHI_CHECK_SSL(EC_KEY_set_ex_data(ec, hsm_ex_index, b) == 1, NHI_ERR_CRYPTO, "EC_KEY_set_ex_data");
	b = NULL; /* freed with the EC_KEY */
	pk = EVP_PKEY_new();
	NHI_CHECK_SSL(pk != NULL && EVP_PKEY_assign_EC_KEY(pk, ec) == 1, NHI_ERR_CRYPTO, "EVP_PKEY_assign_EC_KEY");
	ec = NULL;
	*out = pk;
	pk = NULL;
	rv = NHI_OK;
out:
	free(b);
	EC_KEY_free(ec);
	EVP_PKEY_free(pk);
	return rv;
}
