/* tests/unit/test_hsm.c — hsm/ against a real SoftHSM2 token (no mocks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../common/pkey.h"
#include "../../hsm/hsm_internal.h"
#include "fixture.h"

#include <dlfcn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <sys/stat.h>

static struct nhi_fixture fx;

static int setup(void **state)
{
	(void)state;
	nhi_fixture_setup(&fx, "unit-hsm");
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nhi_fixture_teardown(&fx);
	return 0;
}

static struct nhi_hsm *open_ok(void)
{
	struct nhi_hsm *h = NULL;
	nhi_err e = nhi_hsm_open(&fx.cfg, &h);

	if (e != NHI_OK)
		fail_msg("open: %s", nhi_err_detail());
	return h;
}

/* find or create a key with this label */
static struct nhi_hsm_key *key_for(struct nhi_hsm *h, enum nhi_key_kind kind, const char *label)
{
	struct nhi_hsm_key *k = NULL;

	if (nhi_hsm_find(h, label, &k) == NHI_OK)
		return k;
	if (nhi_hsm_generate(h, kind, label, &k) != NHI_OK)
		fail_msg("generate %s: %s", label, nhi_err_detail());
	return k;
}

static void verify_with_openssl(EVP_PKEY *pk, const uint8_t *msg, size_t len, const uint8_t *sig, size_t sig_len,
				bool ec)
{
	struct nhi_buf der = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok;

	if (ec) {
		assert_int_equal(nhi_ecdsa_raw_to_der(sig, &der), NHI_OK);
		assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk), 1);
		ok = EVP_DigestVerify(md, der.data, der.len, msg, len);
	} else {
		assert_int_equal(EVP_DigestVerifyInit(md, NULL, NULL, NULL, pk), 1);
		ok = EVP_DigestVerify(md, sig, sig_len, msg, len);
	}
	assert_int_equal(ok, 1);
	EVP_MD_CTX_free(md);
	nhi_buf_free(&der);
}

static void test_sign_verify_p256(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	const uint8_t msg[] = "the quick brown fox";
	uint8_t sig[64];
	size_t sig_len = 0;
	EVP_PKEY *pk = NULL;

	(void)state;
	assert_int_equal(nhi_hsm_key_kind(k), NHI_KEY_EC_P256);
	assert_int_equal(nhi_hsm_sign(h, k, msg, sizeof(msg), sig, &sig_len), NHI_OK);
	assert_int_equal(sig_len, 64);
	assert_int_equal(nhi_hsm_verify(h, k, msg, sizeof(msg), sig, sig_len), NHI_OK);
	/* the same signature verifies outside the token, with the exported key */
	assert_int_equal(nhi_hsm_pubkey(h, k, &pk), NHI_OK);
	verify_with_openssl(pk, msg, sizeof(msg), sig, 64, true);
	/* a flipped bit fails, in the token, with NHI_ERR_VERIFY */
	sig[10] ^= 1;
	assert_int_equal(nhi_hsm_verify(h, k, msg, sizeof(msg), sig, sig_len), NHI_ERR_VERIFY);
	EVP_PKEY_free(pk);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static void test_sign_verify_ed25519(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_ED25519, "t-ed");
	const uint8_t msg[] = "ed25519 message";
	uint8_t sig[64];
	size_t sig_len = 0;
	EVP_PKEY *pk = NULL;
	struct nhi_buf jwk = {0};

	(void)state;
	assert_int_equal(nhi_hsm_key_kind(k), NHI_KEY_ED25519);
	assert_int_equal(nhi_hsm_sign(h, k, msg, sizeof(msg), sig, &sig_len), NHI_OK);
	assert_int_equal(sig_len, 64);
	assert_int_equal(nhi_hsm_verify(h, k, msg, sizeof(msg), sig, sig_len), NHI_OK);
	assert_int_equal(nhi_hsm_pubkey(h, k, &pk), NHI_OK);
	verify_with_openssl(pk, msg, sizeof(msg), sig, sig_len, false);
	assert_int_equal(nhi_hsm_pubkey_export(h, k, NHI_PUBKEY_JWK, &jwk), NHI_OK);
	assert_non_null(strstr((char *)jwk.data, "\"kty\":\"OKP\""));
	nhi_buf_free(&jwk);
	EVP_PKEY_free(pk);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static void test_wrong_pin(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;
	char path[400];

	(void)state;
	snprintf(path, sizeof(path), "%s/wrong.pin", fx.dir);
	nhi_fixture_write(path, "not-the-pin\n", 0600);
	c.pin_file = path;
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_PIN);
	assert_null(h);
	assert_non_null(strstr(nhi_err_detail(), "CKR_PIN_INCORRECT"));
}

static void test_pin_file_mode_refused(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;
	char path[400];

	(void)state;
	snprintf(path, sizeof(path), "%s/loose.pin", fx.dir);
	nhi_fixture_write(path, "1234-user-pin\n", 0644);
	c.pin_file = path;
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_PERM);
	assert_non_null(strstr(nhi_err_detail(), "chmod 600"));
	/* the PIN itself never appears in an error message */
	assert_null(strstr(nhi_err_detail(), "1234-user-pin"));
}

static void test_missing_token(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;

	(void)state;
	c.token = "no-such-token";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "unit-hsm")); /* lists what it saw */
}

static void test_uri(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;

	(void)state;
	c.token = "pkcs11:token=unit-hsm";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_OK);
	nhi_hsm_free(h);
	h = NULL;
	c.token = "pkcs11:token=unit-hsm;manufacturer=SoftHSM%20project";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_OK);
	nhi_hsm_free(h);
	h = NULL;
	c.token = "pkcs11:token=unit-hsm?pin-value=1234";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "pin_file"));
	c.token = "pkcs11:token=other";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_NOT_FOUND);
	c.token = "pkcs11:%zz";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_CONFIG);
}

static void test_private_value_is_sensitive(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	struct nhi_hsm_key *w = key_for(h, NHI_KEY_AES256, "t-wrap");
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = nhi_hsm_raw_functions(h, &slot);
	CK_SESSION_HANDLE s;
	uint8_t buf[256];
	CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof(buf)};
	CK_BBOOL extractable = CK_TRUE;
	CK_ATTRIBUTE ex = {CKA_EXTRACTABLE, &extractable, 1};

	(void)state;
	assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(f->C_GetAttributeValue(s, nhi_hsm_key_handle(k), &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	a.ulValueLen = sizeof(buf);
	assert_int_equal(f->C_GetAttributeValue(s, nhi_hsm_key_handle(w), &a, 1), CKR_ATTRIBUTE_SENSITIVE);
	assert_int_equal(f->C_GetAttributeValue(s, nhi_hsm_key_handle(k), &ex, 1), CKR_OK);
	assert_int_equal(extractable, CK_FALSE);
	f->C_CloseSession(s);
	nhi_hsm_key_free(k);
	nhi_hsm_key_free(w);
	nhi_hsm_free(h);
}

static void test_duplicate_label_refused(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	struct nhi_hsm_key *k2 = NULL;

	(void)state;
	assert_int_equal(nhi_hsm_generate(h, NHI_KEY_EC_P256, "t-ec", &k2), NHI_ERR_EXISTS);
	assert_null(k2);
	assert_int_equal(nhi_hsm_generate(h, NHI_KEY_AES256, "t-ec", &k2), NHI_ERR_EXISTS);
	assert_int_equal(nhi_hsm_find(h, "absent", &k2), NHI_ERR_NOT_FOUND);
	assert_int_equal(nhi_hsm_label_exists(h, "absent"), NHI_ERR_NOT_FOUND);
	assert_int_equal(nhi_hsm_label_exists(h, "t-ec"), NHI_OK);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static CK_SESSION_HANDLE raw_session(struct nhi_hsm *h, CK_FUNCTION_LIST **f)
{
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;

	*f = nhi_hsm_raw_functions(h, &slot);
	assert_int_equal((*f)->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	return s;
}

/* a P-384 key pair made behind nhid's back (as pkcs11-tool could); its private handle */
static CK_OBJECT_HANDLE make_p384(struct nhi_hsm *h, const char *label)
{
	static const uint8_t oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
	CK_FUNCTION_LIST *f;
	CK_SESSION_HANDLE s = raw_session(h, &f);
	CK_BBOOL yes = CK_TRUE;
	CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1},
			     {CKA_EC_PARAMS, (void *)oid_p384, sizeof(oid_p384)}, {CKA_LABEL, (void *)label, strlen(label)}};
	CK_ATTRIBUTE st[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1},
			     {CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE pub, priv;

	assert_int_equal(f->C_GenerateKeyPair(s, &m, pt, 4, st, 4, &pub, &priv), CKR_OK);
	(void)f->C_CloseSession(s);
	return priv;
}

/* an EC key on another curve is not taken for a P-256 one (its signatures do not fit) */
static void test_find_refuses_other_curve(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = NULL;

	(void)state;
	(void)make_p384(h, "t-p384-find");
	assert_int_equal(nhi_hsm_find(h, "t-p384-find", &k), NHI_ERR_CONFIG);
	assert_null(k);
	assert_non_null(strstr(nhi_err_detail(), "key 't-p384-find'"));
	assert_non_null(strstr(nhi_err_detail(), "a curve other than P-256"));
	assert_non_null(strstr(nhi_err_detail(), "CKR_CURVE_NOT_SUPPORTED"));
	nhi_hsm_free(h);
}

/*
 * A C_Sign that answers CKR_BUFFER_TOO_SMALL leaves the operation active (PKCS#11
 * §5.2): the error names it, and the one pooled session still signs afterwards
 * (it answered CKR_OPERATION_ACTIVE to every later C_SignInit).
 */
static void test_sign_buffer_too_small_keeps_session(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *good, *big;
	struct nhi_hsm_stats st;
	uint8_t sig[64];
	size_t n;
	int i;

	(void)state;
	c.sessions = 1;
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_OK);
	good = key_for(h, NHI_KEY_EC_P256, "t-ec");
	big = nhi_hsm_key_new_internal(NHI_KEY_EC_P256, "t-p384-sign");
	assert_non_null(big);
	atomic_store(&big->priv, make_p384(h, "t-p384-sign"));
	for (i = 0; i < 2; i++) {
		assert_int_equal(nhi_hsm_sign(h, big, (const uint8_t *)"x", 1, sig, &n), NHI_ERR_HSM);
		assert_non_null(strstr(nhi_err_detail(), "CKR_BUFFER_TOO_SMALL"));
		assert_int_equal(nhi_hsm_sign(h, good, (const uint8_t *)"x", 1, sig, &n), NHI_OK);
	}
	assert_int_equal(nhi_hsm_sign(h, big, (const uint8_t *)"x", 1, sig, &n), NHI_ERR_HSM);
	assert_non_null(strstr(nhi_err_detail(), "key 't-p384-sign' makes 96-byte signatures"));
	nhi_hsm_get_stats(h, &st);
	assert_int_equal(st.recoveries, 0);
	nhi_hsm_key_free(big);
	nhi_hsm_key_free(good);
	nhi_hsm_free(h);
}

/*
 * The public key of a found key is the one of its pair (same CKA_ID), not another
 * public key object that carries the label; a private and a secret key under one
 * label are refused as ambiguous.
 */
static void test_find_public_key_of_the_pair(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *a = key_for(h, NHI_KEY_EC_P256, "t-pair-a"), *b = key_for(h, NHI_KEY_EC_P256, "t-pair-b");
	struct nhi_hsm_key *a2 = NULL, *d = NULL;
	CK_FUNCTION_LIST *f;
	CK_SESSION_HANDLE s = raw_session(h, &f);
	CK_ATTRIBUTE lab = {CKA_LABEL, (void *)"t-pair-a", 8};
	CK_BBOOL yes = CK_TRUE;
	CK_ULONG len = 32;
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ATTRIBUTE at[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_LABEL, (void *)"t-pair-d", 8}};
	CK_OBJECT_HANDLE aes;
	EVP_PKEY *pub = NULL;
	uint8_t sig[64];
	size_t n;

	(void)state;
	/* b's public key object relabelled t-pair-a: two public keys under that label */
	assert_int_equal(f->C_SetAttributeValue(s, atomic_load(&b->pub), &lab, 1), CKR_OK);
	assert_int_equal(nhi_hsm_find(h, "t-pair-a", &a2), NHI_OK);
	assert_int_equal(atomic_load(&a2->pub), atomic_load(&a->pub));
	assert_int_equal(nhi_hsm_sign(h, a2, (const uint8_t *)"m", 1, sig, &n), NHI_OK);
	assert_int_equal(nhi_hsm_pubkey(h, a2, &pub), NHI_OK);
	assert_int_equal(nhi_pkey_es256_verify(pub, (const uint8_t *)"m", 1, sig), NHI_OK);
	EVP_PKEY_free(pub);
	nhi_hsm_key_free(a2);
	a2 = NULL;
	/* a's own public object gone: b's is not taken for it */
	assert_int_equal(f->C_DestroyObject(s, atomic_load(&a->pub)), CKR_OK);
	assert_int_equal(nhi_hsm_find(h, "t-pair-a", &a2), NHI_OK);
	assert_int_equal(atomic_load(&a2->pub), CK_INVALID_HANDLE);
	pub = NULL;
	assert_int_equal(nhi_hsm_pubkey(h, a2, &pub), NHI_ERR_NOT_FOUND);
	assert_null(pub);
	/* a private key and a secret key under one label */
	nhi_hsm_key_free(key_for(h, NHI_KEY_EC_P256, "t-pair-d"));
	assert_int_equal(f->C_GenerateKey(s, &m, at, 3, &aes), CKR_OK);
	assert_int_equal(nhi_hsm_find(h, "t-pair-d", &d), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "labels must be unique"));
	assert_null(d);
	(void)f->C_CloseSession(s);
	nhi_hsm_key_free(a2);
	nhi_hsm_key_free(a);
	nhi_hsm_key_free(b);
	nhi_hsm_free(h);
}

/* a CKA_ID up to NHI_HSM_KEY_ID_MAX_BYTES is used (the pair found by it); a longer one is refused by name */
static void test_find_long_key_id(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-longid"), *k2 = NULL;
	CK_FUNCTION_LIST *f;
	CK_SESSION_HANDLE s = raw_session(h, &f);
	uint8_t id[NHI_HSM_KEY_ID_MAX_BYTES + 1];
	CK_ATTRIBUTE at = {CKA_ID, id, 48};
	EVP_PKEY *pub = NULL;
	uint8_t sig[64];
	size_t n;

	(void)state;
	memset(id, 0x5a, sizeof(id));
	/* 48 bytes, on both halves of the pair: found, signs, its own public key verifies */
	assert_int_equal(f->C_SetAttributeValue(s, atomic_load(&k->priv), &at, 1), CKR_OK);
	assert_int_equal(f->C_SetAttributeValue(s, atomic_load(&k->pub), &at, 1), CKR_OK);
	assert_int_equal(nhi_hsm_find(h, "t-longid", &k2), NHI_OK);
	assert_int_equal(nhi_hsm_sign(h, k2, (const uint8_t *)"m", 1, sig, &n), NHI_OK);
	assert_int_equal(nhi_hsm_pubkey(h, k2, &pub), NHI_OK);
	assert_int_equal(nhi_pkey_es256_verify(pub, (const uint8_t *)"m", 1, sig), NHI_OK);
	EVP_PKEY_free(pub);
	nhi_hsm_key_free(k2);
	k2 = NULL;
	/* one byte over the limit: refused, naming CKA_ID and the limit */
	at.ulValueLen = sizeof(id);
	assert_int_equal(f->C_SetAttributeValue(s, atomic_load(&k->priv), &at, 1), CKR_OK);
	assert_int_equal(nhi_hsm_find(h, "t-longid", &k2), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "its CKA_ID is longer than 64 bytes"));
	assert_null(k2);
	(void)f->C_CloseSession(s);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static void test_wrap_unwrap_gcm(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *w = key_for(h, NHI_KEY_AES256, "t-wrap");
	struct nhi_hsm_key *other = key_for(h, NHI_KEY_AES256, "t-wrap-other");
	struct nhi_hsm_key *dk = NULL, *dk2 = NULL, *bad = NULL;
	struct nhi_buf wrapped = {0}, ct = {0}, pt = {.secret = true};
	struct nhi_hsm_unwrap_spec spec = {.kind = NHI_KEY_AES256};
	uint8_t iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
	const char aad[] = "header";
	const char msg[] = "backup plaintext: agents and their certificates";

	(void)state;
	assert_int_equal(nhi_hsm_generate_data_key(h, &dk), NHI_OK);
	assert_int_equal(nhi_hsm_gcm_encrypt(h, dk, iv, (const uint8_t *)aad, 6, (const uint8_t *)msg, sizeof(msg), &ct),
			 NHI_OK);
	assert_int_equal(ct.len, sizeof(msg) + 16);
	assert_int_equal(nhi_hsm_wrap(h, w, dk, &wrapped), NHI_OK);
	assert_int_equal(wrapped.len, 40); /* RFC 5649: 32-byte key -> 40 bytes */
	assert_int_equal(nhi_hsm_unwrap(h, w, wrapped.data, wrapped.len, &spec, &dk2), NHI_OK);
	assert_int_equal(nhi_hsm_gcm_decrypt(h, dk2, iv, (const uint8_t *)aad, 6, ct.data, ct.len, &pt), NHI_OK);
	assert_int_equal(pt.len, sizeof(msg));
	assert_memory_equal(pt.data, msg, sizeof(msg));
	nhi_buf_reset(&pt);
	/* a flipped ciphertext bit, or other AAD, fails authentication */
	ct.data[3] ^= 0x80;
	assert_int_equal(nhi_hsm_gcm_decrypt(h, dk2, iv, (const uint8_t *)aad, 6, ct.data, ct.len, &pt), NHI_ERR_VERIFY);
	ct.data[3] ^= 0x80;
	assert_int_equal(nhi_hsm_gcm_decrypt(h, dk2, iv, (const uint8_t *)"HEADER", 6, ct.data, ct.len, &pt),
			 NHI_ERR_VERIFY);
	assert_int_equal(pt.len, 0);
	/* the wrong wrap key does not unwrap */
	assert_int_equal(nhi_hsm_unwrap(h, other, wrapped.data, wrapped.len, &spec, &bad), NHI_ERR_VERIFY);
	assert_null(bad);
	/* a damaged blob does not unwrap */
	wrapped.data[5] ^= 1;
	assert_int_equal(nhi_hsm_unwrap(h, w, wrapped.data, wrapped.len, &spec, &bad), NHI_ERR_VERIFY);
	/* a key made non-extractable (the wrap key itself) cannot be wrapped out */
	nhi_buf_reset(&wrapped);
	assert_int_equal(nhi_hsm_wrap(h, other, w, &wrapped), NHI_ERR_HSM);
	assert_non_null(strstr(nhi_err_detail(), "CKR_KEY_UNEXTRACTABLE"));
	nhi_buf_free(&wrapped);
	nhi_buf_free(&ct);
	nhi_buf_free(&pt);
	nhi_hsm_key_free(dk);
	nhi_hsm_key_free(dk2);
	nhi_hsm_key_free(w);
	nhi_hsm_key_free(other);
	nhi_hsm_free(h);
}

static void test_unwrap_ec_into_token(void **state)
{
	/* the certificate-rotation shape: an EC private key arrives wrapped, lands in the
	 * token non-extractable with its public half, and signs */
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *w = key_for(h, NHI_KEY_AES256, "t-wrap");
	struct nhi_hsm_key *src = NULL, *k = NULL;
	struct nhi_buf wrapped = {0};
	uint8_t point[65], der_point[67], sig[64];
	size_t plen = 0, sig_len = 0;
	struct nhi_hsm_unwrap_spec spec = {.kind = NHI_KEY_EC_P256, .label = "t-unwrapped-ec", .token = true};
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = nhi_hsm_raw_functions(h, &slot);
	CK_SESSION_HANDLE s;
	CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
	static const uint8_t oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
	CK_BBOOL t = CK_TRUE, fl = CK_FALSE;
	CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)oid, sizeof(oid)}, {CKA_TOKEN, &fl, 1}};
	CK_ATTRIBUTE st[] = {{CKA_TOKEN, &fl, 1}, {CKA_SENSITIVE, &t, 1}, {CKA_EXTRACTABLE, &t, 1}, {CKA_SIGN, &t, 1}};
	CK_OBJECT_HANDLE pub, priv;
	uint8_t ptbuf[80];
	CK_ATTRIBUTE pa = {CKA_EC_POINT, ptbuf, sizeof(ptbuf)};

	(void)state;
	/* an extractable session key pair stands in for the ceremony side's new key */
	assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(f->C_GenerateKeyPair(s, &m, pt, 2, st, 4, &pub, &priv), CKR_OK);
	assert_int_equal(f->C_GetAttributeValue(s, pub, &pa, 1), CKR_OK);
	assert_int_equal(pa.ulValueLen, 67);
	memcpy(der_point, ptbuf, 67);
	src = nhi_hsm_key_new_internal(NHI_KEY_EC_P256, "src");
	atomic_store(&src->priv, priv);
	assert_int_equal(nhi_hsm_wrap(h, w, src, &wrapped), NHI_OK);
	spec.ec_point = der_point;
	spec.ec_point_len = 67;
	assert_int_equal(nhi_hsm_unwrap(h, w, wrapped.data, wrapped.len, &spec, &k), NHI_OK);
	assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"m", 1, sig, &sig_len), NHI_OK);
	assert_int_equal(nhi_hsm_verify(h, k, (const uint8_t *)"m", 1, sig, sig_len), NHI_OK);
	assert_int_equal(nhi_hsm_raw_point(h, k, point, &plen), NHI_OK);
	assert_memory_equal(point, der_point + 2, 65);
	/* unwrapping again under the same label is refused */
	nhi_hsm_key_free(k);
	k = NULL;
	assert_int_equal(nhi_hsm_unwrap(h, w, wrapped.data, wrapped.len, &spec, &k), NHI_ERR_EXISTS);
	f->C_CloseSession(s);
	nhi_buf_free(&wrapped);
	nhi_hsm_key_free(src);
	nhi_hsm_key_free(w);
	nhi_hsm_free(h);
}

static void test_recovery_after_sessions_closed(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	struct nhi_hsm_stats st;
	uint8_t sig[64];
	size_t sig_len;
	int i;

	(void)state;
	/* every session of the token is closed under the pool (and the login with them) */
	nhi_hsm_testing_close_all(h);
	for (i = 0; i < 8; i++)
		assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"x", 1, sig, &sig_len), NHI_OK);
	nhi_hsm_get_stats(h, &st);
	assert_true(st.recoveries >= 1);
	assert_int_equal(st.signs, 8);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

/* session objects of this process that nhi_hsm_key_cache made (token objects excluded) */
static unsigned long session_copies(struct nhi_hsm *h)
{
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = nhi_hsm_raw_functions(h, &slot);
	CK_SESSION_HANDLE s;
	CK_BBOOL no = CK_FALSE;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE t[] = {{CKA_TOKEN, &no, sizeof(no)}, {CKA_CLASS, &cls, sizeof(cls)}};
	CK_OBJECT_HANDLE o[16];
	CK_ULONG n = 0;

	assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	assert_int_equal(f->C_FindObjectsInit(s, t, 2), CKR_OK);
	assert_int_equal(f->C_FindObjects(s, o, 16, &n), CKR_OK);
	(void)f->C_FindObjectsFinal(s);
	(void)f->C_CloseSession(s);
	return n;
}

static void verify_with_pub(struct nhi_hsm *h, struct nhi_hsm_key *k, const uint8_t sig[64])
{
	EVP_PKEY *pub = NULL;

	assert_int_equal(nhi_hsm_pubkey(h, k, &pub), NHI_OK);
	assert_int_equal(nhi_pkey_es256_verify(pub, (const uint8_t *)"cached", 6, sig), NHI_OK);
	EVP_PKEY_free(pub);
}

static void test_key_cache(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	struct nhi_hsm_key *again = NULL;
	struct nhi_hsm_stats st;
	uint8_t sig[64];
	size_t sig_len;
	bool cached = false;

	(void)state;
	assert_int_equal(session_copies(h), 0);
	assert_int_equal(nhi_hsm_key_cache(h, k, &cached), NHI_OK);
	assert_true(cached);
	assert_int_equal(session_copies(h), 1);
	/* the copy signs; the token object's public key verifies it */
	assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"cached", 6, sig, &sig_len), NHI_OK);
	verify_with_pub(h, k, sig);
	nhi_hsm_get_stats(h, &st);
	assert_int_equal(st.cached_signs, 1);
	/* the copy has no label: a label lookup still finds exactly the token object */
	assert_int_equal(nhi_hsm_find(h, "t-ec", &again), NHI_OK);
	nhi_hsm_key_free(again);
	/* a reset token takes the copy: signing goes on with the token object */
	nhi_hsm_testing_close_all(h);
	assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"cached", 6, sig, &sig_len), NHI_OK);
	verify_with_pub(h, k, sig);
	nhi_hsm_get_stats(h, &st);
	assert_int_equal(st.signs, 2);
	assert_int_equal(st.cached_signs, 1);
	/* and a new copy can be made (the keeper session is reopened) */
	assert_int_equal(nhi_hsm_key_cache(h, k, &cached), NHI_OK);
	assert_true(cached);
	assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"cached", 6, sig, &sig_len), NHI_OK);
	verify_with_pub(h, k, sig);
	nhi_hsm_get_stats(h, &st);
	assert_int_equal(st.cached_signs, 2);
	/* freeing the handle destroys the copy, not the key */
	nhi_hsm_key_free(k);
	assert_int_equal(session_copies(h), 0);
	assert_int_equal(nhi_hsm_label_exists(h, "t-ec"), NHI_OK);
	/* an AES key is not a signing key */
	k = key_for(h, NHI_KEY_AES256, "t-aes");
	assert_int_equal(nhi_hsm_key_cache(h, k, &cached), NHI_ERR_ARG);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static void test_evp_bridge(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	EVP_PKEY *hk = NULL, *pub = NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80];
	size_t der_len = sizeof(der);
	const uint8_t msg[] = "signed through OpenSSL";

	(void)state;
	assert_int_equal(nhi_hsm_evp_pkey(h, k, &hk), NHI_OK);
	assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, hk), 1);
	assert_int_equal(EVP_DigestSign(md, der, &der_len, msg, sizeof(msg)), 1);
	EVP_MD_CTX_free(md);
	md = EVP_MD_CTX_new();
	assert_int_equal(nhi_hsm_pubkey(h, k, &pub), NHI_OK);
	assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub), 1);
	assert_int_equal(EVP_DigestVerify(md, der, der_len, msg, sizeof(msg)), 1);
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(hk);
	EVP_PKEY_free(pub);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static void test_export_formats(void **state)
{
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	struct nhi_buf der = {0}, pem = {0}, jwk = {0};
	EVP_PKEY *pk = NULL;
	const unsigned char *p;
	char tp[44];

	(void)state;
	assert_int_equal(nhi_hsm_pubkey_export(h, k, NHI_PUBKEY_DER, &der), NHI_OK);
	p = der.data;
	pk = d2i_PUBKEY(NULL, &p, (long)der.len);
	assert_non_null(pk);
	assert_int_equal(der.len, 91); /* P-256 SPKI */
	assert_int_equal(nhi_hsm_pubkey_export(h, k, NHI_PUBKEY_PEM, &pem), NHI_OK);
	assert_non_null(strstr((char *)pem.data, "-----BEGIN PUBLIC KEY-----"));
	assert_int_equal(nhi_hsm_pubkey_export(h, k, NHI_PUBKEY_JWK, &jwk), NHI_OK);
	assert_int_equal(strncmp((char *)jwk.data, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"", 31), 0);
	assert_int_equal(nhi_pkey_thumbprint(pk, tp), NHI_OK);
	assert_int_equal(strlen(tp), 43);
	assert_int_equal(nhi_hsm_pubkey_export(h, k, (enum nhi_pubkey_format)99, &jwk), NHI_ERR_ARG);
	EVP_PKEY_free(pk);
	nhi_buf_free(&der);
	nhi_buf_free(&pem);
	nhi_buf_free(&jwk);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

struct thr {
	struct nhi_hsm *h;
	struct nhi_hsm_key *k;
	int ok;
};

static void *signer(void *arg)
{
	struct thr *t = arg;
	uint8_t sig[64];
	size_t n;
	int i;

	for (i = 0; i < 200; i++)
		if (nhi_hsm_sign(t->h, t->k, (const uint8_t *)&i, sizeof(i), sig, &n) == NHI_OK &&
		    nhi_hsm_verify(t->h, t->k, (const uint8_t *)&i, sizeof(i), sig, n) == NHI_OK)
			t->ok++;
	return NULL;
}

static void test_concurrent_pool(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *k;
	pthread_t th[6];
	struct thr t[6];
	int i;

	(void)state;
	c.sessions = 2; /* fewer sessions than threads: callers must wait their turn */
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_OK);
	k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	for (i = 0; i < 6; i++) {
		t[i] = (struct thr){h, k, 0};
		pthread_create(&th[i], NULL, signer, &t[i]);
	}
	for (i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(t[i].ok, 200);
	}
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

/* d2i_ECPKParameters as libcrypto answers it, for comparison */
static EC_GROUP *libcrypto_d2i(const unsigned char *der, long len, const unsigned char **end)
{
	EC_GROUP *(*real)(EC_GROUP **, const unsigned char **, long) =
		(EC_GROUP * (*)(EC_GROUP **, const unsigned char **, long)) dlsym(RTLD_NEXT, "d2i_ECPKParameters");
	const unsigned char *p = der;
	EC_GROUP *g;

	assert_non_null(real);
	g = real(NULL, &p, len);
	*end = p;
	return g;
}

/* input that must not be answered from the cache: the answer is libcrypto's, to the byte */
static void assert_passthrough(const unsigned char *der, long len)
{
	unsigned long long hits = nhi_hsm_ec_group_cache_hits();
	const unsigned char *p = der, *want_end = NULL;
	EC_GROUP *want = libcrypto_d2i(der, len, &want_end);
	EC_GROUP *got = d2i_ECPKParameters(NULL, &p, len);

	assert_int_equal(nhi_hsm_ec_group_cache_hits(), hits);
	assert_ptr_equal(p, want_end);
	if (want == NULL) {
		assert_null(got);
	} else {
		assert_non_null(got);
		assert_int_equal(EC_GROUP_cmp(got, want, NULL), 0);
		assert_int_equal(EC_GROUP_get_asn1_flag(got), EC_GROUP_get_asn1_flag(want));
	}
	EC_GROUP_free(got);
	EC_GROUP_free(want);
}

static void *ec_signer(void *arg)
{
	struct thr *t = arg;
	uint8_t sig[64];
	size_t n;
	int i;

	for (i = 0; i < 100; i++) {
		EVP_PKEY *pub = NULL;

		if (nhi_hsm_sign(t->h, t->k, (const uint8_t *)"cached", 6, sig, &n) == NHI_OK && n == 64 &&
		    nhi_hsm_pubkey(t->h, t->k, &pub) == NHI_OK &&
		    nhi_pkey_es256_verify(pub, (const uint8_t *)"cached", 6, sig) == NHI_OK)
			t->ok++;
		EVP_PKEY_free(pub);
	}
	return NULL;
}

/*
 * The P-256 group built once (hsm/ec_group.c). Runs last: enabling it is
 * process-wide and cannot be undone, so every test before this one signs with
 * libcrypto's own decoding.
 */
static void test_ec_group_cache(void **state)
{
	static const unsigned char p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
	unsigned char trailing[sizeof(nhi_hsm_oid_p256) + 1], *explicit_der = NULL, *q;
	struct nhi_hsm *h = open_ok();
	struct nhi_hsm_key *k = key_for(h, NHI_KEY_EC_P256, "t-ec");
	EC_GROUP *named = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1), *g, *old, *ret;
	const unsigned char *p;
	unsigned long long before;
	uint8_t sig[64];
	size_t sig_len;
	pthread_t th[4];
	struct thr t[4];
	int i, explicit_len;

	(void)state;
	assert_non_null(named);
	/* before enable: every call is libcrypto's, the module's included */
	assert_int_equal(nhi_hsm_ec_group_cache_hits(), 0);
	assert_passthrough(nhi_hsm_oid_p256, sizeof(nhi_hsm_oid_p256));
	assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"cached", 6, sig, &sig_len), NHI_OK);
	verify_with_pub(h, k, sig);
	assert_int_equal(nhi_hsm_ec_group_cache_hits(), 0);

	assert_int_equal(nhi_hsm_ec_group_cache_enable(), NHI_OK);
	assert_int_equal(nhi_hsm_ec_group_cache_enable(), NHI_OK); /* twice: nothing more */

	/* the OID: the named curve, a group of the caller's own, the pointer advanced */
	p = nhi_hsm_oid_p256;
	g = d2i_ECPKParameters(NULL, &p, sizeof(nhi_hsm_oid_p256));
	assert_non_null(g);
	assert_ptr_equal(p, nhi_hsm_oid_p256 + sizeof(nhi_hsm_oid_p256));
	assert_int_equal(nhi_hsm_ec_group_cache_hits(), 1);
	assert_int_equal(EC_GROUP_get_curve_name(g), NID_X9_62_prime256v1);
	assert_int_equal(EC_GROUP_cmp(g, named, NULL), 0);
	assert_int_equal(EC_GROUP_get_asn1_flag(g), OPENSSL_EC_NAMED_CURVE);
	/* d2i convention: *a is freed and replaced (ASan sees a leak or a double free) */
	old = g;
	p = nhi_hsm_oid_p256;
	ret = d2i_ECPKParameters(&g, &p, sizeof(nhi_hsm_oid_p256));
	assert_ptr_equal(ret, g);
	assert_ptr_not_equal(g, old);
	assert_int_equal(nhi_hsm_ec_group_cache_hits(), 2);
	EC_GROUP_free(g);

	/* everything else is libcrypto's answer: another curve, the OID with a byte
	 * after it or cut short, explicit parameters, garbage, nothing */
	assert_passthrough(p384, sizeof(p384));
	memcpy(trailing, nhi_hsm_oid_p256, sizeof(nhi_hsm_oid_p256));
	trailing[sizeof(nhi_hsm_oid_p256)] = 0x00;
	assert_passthrough(trailing, sizeof(trailing));
	assert_passthrough(nhi_hsm_oid_p256, sizeof(nhi_hsm_oid_p256) - 1);
	EC_GROUP_set_asn1_flag(named, OPENSSL_EC_EXPLICIT_CURVE);
	explicit_len = i2d_ECPKParameters(named, NULL);
	assert_true(explicit_len > (int)sizeof(nhi_hsm_oid_p256));
	explicit_der = OPENSSL_malloc((size_t)explicit_len);
	q = explicit_der;
	assert_int_equal(i2d_ECPKParameters(named, &q), explicit_len);
	assert_passthrough(explicit_der, explicit_len);
	assert_passthrough((const unsigned char *)"\x30\x03\x02\x01", 4);
	p = NULL;
	assert_null(d2i_ECPKParameters(NULL, &p, 0));

	/* SoftHSM2 really calls this one: a signature takes the cached group, and verifies */
	before = nhi_hsm_ec_group_cache_hits();
	assert_int_equal(nhi_hsm_sign(h, k, (const uint8_t *)"cached", 6, sig, &sig_len), NHI_OK);
	assert_int_equal(sig_len, 64);
	verify_with_pub(h, k, sig);
	assert_true(nhi_hsm_ec_group_cache_hits() > before);
	/* threads share the one group: each gets its own copy */
	for (i = 0; i < 4; i++) {
		t[i] = (struct thr){h, k, 0};
		assert_int_equal(pthread_create(&th[i], NULL, ec_signer, &t[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(t[i].ok, 100);
	}
	assert_true(nhi_hsm_ec_group_cache_hits() >= before + 400);
	OPENSSL_free(explicit_der);
	EC_GROUP_free(named);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
}

static void test_rv_names_and_random(void **state)
{
	struct nhi_hsm *h = open_ok();
	uint8_t a[32] = {0}, b[32] = {0};

	(void)state;
	assert_string_equal(nhi_hsm_rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
	assert_string_equal(nhi_hsm_rv_name(CKR_ATTRIBUTE_SENSITIVE), "CKR_ATTRIBUTE_SENSITIVE");
	assert_string_equal(nhi_hsm_rv_name(0x7fff0001UL), "CKR_0x7fff0001");
	assert_int_equal(nhi_hsm_random(h, a, sizeof(a)), NHI_OK);
	assert_int_equal(nhi_hsm_random(h, b, sizeof(b)), NHI_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	nhi_hsm_free(h);
}

static void test_init_token_refuses_duplicate(void **state)
{
	(void)state;
	assert_int_equal(nhi_hsm_init_token(NULL, "unit-hsm", fx.so_pin_file, fx.pin_file), NHI_ERR_EXISTS);
	assert_int_equal(nhi_hsm_init_token(NULL, "this-label-is-far-too-long-for-pkcs11", fx.so_pin_file, fx.pin_file),
			 NHI_ERR_ARG);
}

static void test_no_module(void **state)
{
	struct nhi_hsm_config c = fx.cfg;
	struct nhi_hsm *h = NULL;

	(void)state;
	c.module_path = "/nonexistent/libpkcs11.so";
	assert_int_equal(nhi_hsm_open(&c, &h), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "/nonexistent/libpkcs11.so"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sign_verify_p256),
		cmocka_unit_test(test_sign_verify_ed25519),
		cmocka_unit_test(test_wrong_pin),
		cmocka_unit_test(test_pin_file_mode_refused),
		cmocka_unit_test(test_missing_token),
		cmocka_unit_test(test_uri),
		cmocka_unit_test(test_private_value_is_sensitive),
		cmocka_unit_test(test_duplicate_label_refused),
		cmocka_unit_test(test_find_refuses_other_curve),
		cmocka_unit_test(test_sign_buffer_too_small_keeps_session),
		cmocka_unit_test(test_find_public_key_of_the_pair),
		cmocka_unit_test(test_find_long_key_id),
		cmocka_unit_test(test_wrap_unwrap_gcm),
		cmocka_unit_test(test_unwrap_ec_into_token),
		cmocka_unit_test(test_recovery_after_sessions_closed), cmocka_unit_test(test_key_cache),
		cmocka_unit_test(test_evp_bridge),
		cmocka_unit_test(test_export_formats),
		cmocka_unit_test(test_concurrent_pool),
		cmocka_unit_test(test_rv_names_and_random),
		cmocka_unit_test(test_init_token_refuses_duplicate),
		cmocka_unit_test(test_no_module),
		cmocka_unit_test(test_ec_group_cache), /* last: process-wide */
	};

	return cmocka_run_group_tests_name("hsm", tests, setup, teardown);
}
