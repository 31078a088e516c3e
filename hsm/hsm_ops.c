/*
 * hsm/hsm_ops.c — the cryptographic operations: sign/verify, public key export,
 * wrap/unwrap, data keys, AES-GCM and random bytes. Each is one small op run on a
 * pooled session by nhi_hsm_run (which owns the recovery rule).
 */
#include "hsm_internal.h"
#include "../common/pkey.h"

#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <stdlib.h>
#include <string.h>

static const CK_BBOOL ck_true = CK_TRUE;
static const CK_BBOOL ck_false = CK_FALSE;

/* ---- sign / verify ---------------------------------------------------------- */

struct sign_ctx {
	const struct nhi_hsm_key *k;
	CK_MECHANISM_TYPE mech;
	const uint8_t *in;
	size_t in_len;
	uint8_t *sig;
	CK_ULONG sig_len;
	bool too_small; /* C_Sign wanted more than 64 bytes (sig_len says how many) */
};

/*
 * C_SignInit + C_Sign into c->sig (64 bytes). PKCS#11 2.40 §5.2: a C_Sign that returns
 * CKR_BUFFER_TOO_SMALL leaves the operation active, and the pooled session would then
 * answer every later C_SignInit with CKR_OPERATION_ACTIVE. So the operation is
 * finished into a buffer of the size the token asked for (a signature is no secret);
 * c->sig_len keeps that size for the message and the CKR is reported.
 */
static CK_RV sign_with(struct nhi_hsm *h, CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE o,
		       struct sign_ctx *c)
{
	uint8_t *spill = NULL;
	CK_ULONG n;
	CK_RV r;

	c->sig_len = 64;
	r = h->f->C_SignInit(s, m, o);
	if (r != CKR_OK)
		return r;
	r = h->f->C_Sign(s, (CK_BYTE_PTR)c->in, c->in_len, c->sig, &c->sig_len);
	if (r == CKR_BUFFER_TOO_SMALL) {
		c->too_small = true;
		n = c->sig_len;
		if (n > 64 && n <= NHI_HSM_SIG_SPILL_MAX_BYTES)
			spill = malloc(n);
		if (spill == NULL || h->f->C_Sign(s, (CK_BYTE_PTR)c->in, c->in_len, spill, &n) == CKR_BUFFER_TOO_SMALL)
			(void)h->f->C_CloseSession(s); /* cannot end it: the next use of s recovers a new one */
		free(spill);
	}
	return r;
}

static CK_RV op_sign(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct sign_ctx *c = vctx;
	CK_MECHANISM m = {c->mech, NULL, 0};
	CK_RV r;

	struct nhi_hsm_key *k = (struct nhi_hsm_key *)c->k;
	CK_OBJECT_HANDLE fast = atomic_load(&k->fast);

	if (fast != CK_INVALID_HANDLE) {
		r = sign_with(h, s, &m, fast, c);
		if (r != CKR_KEY_HANDLE_INVALID && r != CKR_OBJECT_HANDLE_INVALID) {
			if (r == CKR_OK)
				atomic_fetch_add(&h->cached_signs, 1);
			return r;
		}
		/* the copy is gone (keeper session lost): the token object signs from now on */
		atomic_compare_exchange_strong(&k->fast, &fast, CK_INVALID_HANDLE);
	}
	return sign_with(h, s, &m, atomic_load(&k->priv), c);
}

static CK_RV op_verify(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct sign_ctx *c = vctx;
	CK_MECHANISM m = {c->mech, NULL, 0};
	CK_RV r;

	r = h->f->C_VerifyInit(s, &m, atomic_load(&((struct nhi_hsm_key *)c->k)->pub));
	if (r != CKR_OK)
		return r;
	return h->f->C_Verify(s, (CK_BYTE_PTR)c->in, c->in_len, c->sig, c->sig_len);
}

/* op_sign through the pool; a signature longer than 64 bytes is named with its size */
static nhi_err run_sign(struct nhi_hsm *h, const char *what, const char *alg, struct sign_ctx *c)
{
	nhi_err rv = nhi_hsm_run(h, what, c->k, op_sign, c);

	if (rv != NHI_OK && c->too_small)
		nhi_err_wrap(rv, "key '%s' makes %lu-byte signatures, not the 64 of %s", c->k->label,
			     (unsigned long)c->sig_len, alg);
	return rv;
}

nhi_err nhi_hsm_sign_digest(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t digest[32],
			    uint8_t sig[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct sign_ctx c = {key, CKM_ECDSA, digest, 32, sig, 0};

	NHI_CHECK(key->kind == NHI_KEY_EC_P256, NHI_ERR_ARG, "key '%s' is not an EC P-256 key", key->label);
	NHI_TRY(run_sign(h, "C_Sign(CKM_ECDSA)", "P-256", &c));
	NHI_CHECK(c.sig_len == 64, NHI_ERR_HSM, "token returned a %lu-byte ECDSA signature, expected 64",
		  (unsigned long)c.sig_len);
	atomic_fetch_add(&h->signs, 1);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_hsm_sign(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t *msg, size_t msg_len,
		     uint8_t *sig, size_t *sig_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t digest[32];
	struct sign_ctx c = {key, CKM_EDDSA, msg, msg_len, sig, 0};

	if (key->kind == NHI_KEY_EC_P256) {
		/* SoftHSM 2.6.1 has no CKM_ECDSA_SHA256: hash here, sign the digest there */
		NHI_TRY(nhi_sha256(msg, msg_len, digest));
		NHI_TRY(nhi_hsm_sign_digest(h, key, digest, sig));
		*sig_len = 64;
	} else {
		NHI_CHECK(key->kind == NHI_KEY_ED25519, NHI_ERR_ARG, "key '%s' cannot sign", key->label);
		NHI_TRY(run_sign(h, "C_Sign(CKM_EDDSA)", "Ed25519", &c));
		*sig_len = c.sig_len;
		atomic_fetch_add(&h->signs, 1);
	}
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_hsm_verify(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t *msg, size_t msg_len,
		       const uint8_t *sig, size_t sig_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t digest[32];
	struct sign_ctx c = {key, CKM_EDDSA, msg, msg_len, (uint8_t *)sig, sig_len};

	NHI_CHECK(key->kind != NHI_KEY_AES256, NHI_ERR_ARG, "key '%s' cannot verify", key->label);
	NHI_CHECK(atomic_load(&((struct nhi_hsm_key *)key)->pub) != CK_INVALID_HANDLE, NHI_ERR_NOT_FOUND,
		  "key '%s' has no public key object in the token", key->label);
	if (key->kind == NHI_KEY_EC_P256) {
		NHI_TRY(nhi_sha256(msg, msg_len, digest));
		c.mech = CKM_ECDSA;
		c.in = digest;
		c.in_len = 32;
	}
	rv = nhi_hsm_run(h, "C_Verify", key, op_verify, &c);
	atomic_fetch_add(&h->verifies, 1);
	if (rv == NHI_ERR_VERIFY)
		nhi_err_set(rv, "signature does not verify with key '%s'", key->label);
out:
	return rv;
}

/* ---- public keys ------------------------------------------------------------ */

struct point_ctx {
	const struct nhi_hsm_key *k;
	uint8_t buf[160];
	CK_ULONG len;
};

static CK_RV op_point(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct point_ctx *c = vctx;
	CK_ATTRIBUTE a = {CKA_EC_POINT, c->buf, sizeof(c->buf)};
	CK_RV r;

	r = h->f->C_GetAttributeValue(s, atomic_load(&((struct nhi_hsm_key *)c->k)->pub), &a, 1);
	c->len = a.ulValueLen;
	return r;
}

nhi_err nhi_hsm_raw_point(struct nhi_hsm *h, const struct nhi_hsm_key *key, uint8_t *out, size_t *out_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct point_ctx c = {.k = key};
	size_t want = key->kind == NHI_KEY_EC_P256 ? 65 : 32;
	const uint8_t *p = c.buf;

	NHI_CHECK(key->kind == NHI_KEY_EC_P256 || key->kind == NHI_KEY_ED25519, NHI_ERR_ARG,
		  "key '%s' has no public key", key->label);
	NHI_CHECK(atomic_load(&((struct nhi_hsm_key *)key)->pub) != CK_INVALID_HANDLE, NHI_ERR_NOT_FOUND,
		  "key '%s' has no public key object in the token", key->label);
	NHI_TRY(nhi_hsm_run(h, "C_GetAttributeValue(CKA_EC_POINT)", key, op_point, &c));
	/* PKCS#11 says DER OCTET STRING; some modules return the bare point */
	if (c.len == want + 2 && c.buf[0] == 0x04 && c.buf[1] == want)
		p += 2;
	else
		NHI_CHECK(c.len == want, NHI_ERR_HSM, "unexpected CKA_EC_POINT of %lu bytes for key '%s'",
			  (unsigned long)c.len, key->label);
	memcpy(out, p, want);
	*out_len = want;
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_hsm_pubkey(struct nhi_hsm *h, const struct nhi_hsm_key *key, EVP_PKEY **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t point[65];
	size_t len = 0;

	*out = NULL;
	NHI_TRY(nhi_hsm_raw_point(h, key, point, &len));
	NHI_TRY(nhi_pkey_from_raw(key->kind == NHI_KEY_EC_P256 ? NHI_PKEY_P256 : NHI_PKEY_ED25519, point, len,
				  out));
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_hsm_pubkey_export(struct nhi_hsm *h, const struct nhi_hsm_key *key, enum nhi_pubkey_format fmt,
			      struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY *pk = NULL;

	NHI_TRY(nhi_hsm_pubkey(h, key, &pk));
	switch (fmt) {
	case NHI_PUBKEY_DER:
		NHI_TRY(nhi_pkey_spki_der(pk, out));
		break;
	case NHI_PUBKEY_PEM:
		NHI_TRY(nhi_pkey_pem(pk, out));
		break;
	case NHI_PUBKEY_JWK:
		NHI_TRY(nhi_pkey_jwk(pk, out));
		break;
	default:
		NHI_FAIL(NHI_ERR_ARG, "unknown public key format %d", (int)fmt);
	}
	rv = NHI_OK;
out:
	EVP_PKEY_free(pk);
	return rv;
}

/* ---- wrap / unwrap ---------------------------------------------------------- */

struct wrap_ctx {
	const struct nhi_hsm_key *wrapping, *target;
	uint8_t buf[NHI_HSM_WRAPPED_MAX_BYTES];
	CK_ULONG len;
};

static CK_RV op_wrap(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct wrap_ctx *c = vctx;
	CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};

	c->len = sizeof(c->buf);
	return h->f->C_WrapKey(s, &m, atomic_load(&((struct nhi_hsm_key *)c->wrapping)->priv),
			       atomic_load(&((struct nhi_hsm_key *)c->target)->priv), c->buf, &c->len);
}

nhi_err nhi_hsm_wrap(struct nhi_hsm *h, const struct nhi_hsm_key *wrapping, const struct nhi_hsm_key *target,
		     struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct wrap_ctx c = {wrapping, target, {0}, 0};

	NHI_CHECK(wrapping->kind == NHI_KEY_AES256, NHI_ERR_ARG, "wrapping key '%s' is not an AES key",
		  wrapping->label);
	NHI_TRY(nhi_hsm_run(h, "C_WrapKey(CKM_AES_KEY_WRAP_PAD)", wrapping, op_wrap, &c));
	NHI_TRY(nhi_buf_append(out, c.buf, c.len));
	atomic_fetch_add(&h->wraps, 1);
	rv = NHI_OK;
out:
	return rv;
}

struct unwrap_ctx {
	const struct nhi_hsm_key *wrapping;
	const uint8_t *wrapped;
	size_t wrapped_len;
	const struct nhi_hsm_unwrap_spec *spec;
	struct nhi_hsm_key *k;
};

static CK_RV op_unwrap(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct unwrap_ctx *c = vctx;
	struct nhi_hsm_key *k = c->k;
	const struct nhi_hsm_unwrap_spec *sp = c->spec;
	CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_CLASS cls = sp->kind == NHI_KEY_AES256 ? CKO_SECRET_KEY : CKO_PRIVATE_KEY;
	CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY;
	CK_KEY_TYPE kt = sp->kind == NHI_KEY_AES256 ? CKK_AES : CKK_EC;
	CK_BBOOL tok = sp->token ? CK_TRUE : CK_FALSE;
	CK_BBOOL aes = sp->kind == NHI_KEY_AES256 ? CK_TRUE : CK_FALSE;
	CK_BBOOL ec = aes ? CK_FALSE : CK_TRUE;
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
	CK_ULONG n;
	CK_RV r;
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_KEY_TYPE, &kt, sizeof(kt)},
		{CKA_TOKEN, &tok, 1},
		{CKA_PRIVATE, (void *)&ck_true, 1},
		{CKA_SENSITIVE, (void *)&ck_true, 1},
		{CKA_EXTRACTABLE, (void *)&ck_false, 1},
		{CKA_DECRYPT, &aes, 1},
		{CKA_SIGN, &ec, 1},
		{CKA_ID, k->id, 16},
		{CKA_LABEL, k->label, strlen(k->label)},
	};

	r = h->f->C_GenerateRandom(s, k->id, 16);
	if (r != CKR_OK)
		return r;
	k->id_len = 16;
	n = sizeof(t) / sizeof(t[0]) - (k->label[0] == '\0' ? 1 : 0);
	r = h->f->C_UnwrapKey(s, &m, atomic_load(&((struct nhi_hsm_key *)c->wrapping)->priv),
			      (CK_BYTE_PTR)c->wrapped, c->wrapped_len, t, n, &o);
	/* SoftHSM reports a failed RFC 5649 integrity check as a generic failure */
	if (r == CKR_GENERAL_ERROR || r == CKR_FUNCTION_FAILED)
		r = CKR_WRAPPED_KEY_INVALID;
	if (r != CKR_OK)
		return r;
	if (sp->kind == NHI_KEY_EC_P256 && sp->ec_point != NULL) {
		CK_ATTRIBUTE pt[] = {
			{CKA_CLASS, &pub_cls, sizeof(pub_cls)},
			{CKA_KEY_TYPE, &kt, sizeof(kt)},
			{CKA_TOKEN, &tok, 1},
			{CKA_VERIFY, (void *)&ck_true, 1},
			{CKA_EC_PARAMS, (void *)nhi_hsm_oid_p256, sizeof(nhi_hsm_oid_p256)},
			{CKA_EC_POINT, (void *)sp->ec_point, sp->ec_point_len},
			{CKA_ID, k->id, 16},
			{CKA_LABEL, k->label, strlen(k->label)},
		};
		r = h->f->C_CreateObject(s, pt, sizeof(pt) / sizeof(pt[0]) - (k->label[0] == '\0' ? 1 : 0), &pub);
		if (r != CKR_OK) {
			(void)h->f->C_DestroyObject(s, o); /* no half-made key pair */
			return r;
		}
	}
	atomic_store(&k->priv, o);
	atomic_store(&k->pub, pub);
	return CKR_OK;
}

nhi_err nhi_hsm_unwrap(struct nhi_hsm *h, const struct nhi_hsm_key *wrapping, const uint8_t *wrapped,
		       size_t wrapped_len, const struct nhi_hsm_unwrap_spec *spec, struct nhi_hsm_key **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct unwrap_ctx c = {wrapping, wrapped, wrapped_len, spec, NULL};
	nhi_err ex;

	*out = NULL;
	NHI_CHECK(wrapping->kind == NHI_KEY_AES256, NHI_ERR_ARG, "unwrapping key '%s' is not an AES key",
		  wrapping->label);
	NHI_CHECK(spec->kind == NHI_KEY_AES256 || spec->kind == NHI_KEY_EC_P256, NHI_ERR_ARG,
		  "only AES-256 and EC P-256 keys can be unwrapped");
	NHI_CHECK(wrapped_len > 0 && wrapped_len <= NHI_HSM_WRAPPED_MAX_BYTES, NHI_ERR_FORMAT,
		  "wrapped key is %zu bytes; expected 1 to %d", wrapped_len, NHI_HSM_WRAPPED_MAX_BYTES);
	NHI_CHECK(!spec->token || (spec->label != NULL && spec->label[0] != '\0'), NHI_ERR_ARG,
		  "a key unwrapped into the token needs a label");
	if (spec->label != NULL) {
		NHI_CHECK(strlen(spec->label) <= NHI_HSM_LABEL_MAX_BYTES, NHI_ERR_ARG, "key label too long");
		ex = nhi_hsm_label_exists(h, spec->label);
		NHI_CHECK(ex != NHI_OK, NHI_ERR_EXISTS, "a key labelled '%s' already exists: refusing to unwrap over it",
			  spec->label);
	}
	c.k = nhi_hsm_key_new_internal(spec->kind, spec->label);
	NHI_CHECK(c.k != NULL, NHI_ERR_NOMEM, "out of memory");
	c.k->session_object = !spec->token;
	rv = nhi_hsm_run(h, "C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)", wrapping, op_unwrap, &c);
	if (rv == NHI_ERR_VERIFY)
		nhi_err_wrap(rv, "the wrapped key does not unwrap under '%s' (wrong wrap key or damaged blob)",
			     wrapping->label);
	if (rv != NHI_OK)
		goto out;
	atomic_fetch_add(&h->unwraps, 1);
	*out = c.k;
	c.k = NULL;
	rv = NHI_OK;
out:
	nhi_hsm_key_free(c.k);
	return rv;
}

static CK_RV op_data_key(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct nhi_hsm_key *k = vctx;
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ULONG len = 32;
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
	CK_ATTRIBUTE t[] = {
		{CKA_TOKEN, (void *)&ck_false, 1},  {CKA_PRIVATE, (void *)&ck_true, 1},
		{CKA_SENSITIVE, (void *)&ck_true, 1}, {CKA_EXTRACTABLE, (void *)&ck_true, 1},
		{CKA_ENCRYPT, (void *)&ck_true, 1}, {CKA_DECRYPT, (void *)&ck_true, 1},
		{CKA_VALUE_LEN, &len, sizeof(len)},
	};
	CK_RV r = h->f->C_GenerateKey(s, &m, t, sizeof(t) / sizeof(t[0]), &o);

	if (r == CKR_OK)
		atomic_store(&k->priv, o);
	return r;
}

nhi_err nhi_hsm_generate_data_key(struct nhi_hsm *h, struct nhi_hsm_key **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_hsm_key *k = nhi_hsm_key_new_internal(NHI_KEY_AES256, NULL);

	*out = NULL;
	NHI_CHECK(k != NULL, NHI_ERR_NOMEM, "out of memory");
	k->session_object = true;
	snprintf(k->label, sizeof(k->label), "%s", "(session data key)");
	NHI_TRY(nhi_hsm_run(h, "C_GenerateKey(data key)", NULL, op_data_key, k));
	*out = k;
	k = NULL;
	rv = NHI_OK;
out:
	nhi_hsm_key_free(k);
	return rv;
}

/* ---- AES-GCM ---------------------------------------------------------------- */

struct gcm_ctx {
	const struct nhi_hsm_key *k;
	bool encrypt;
	CK_GCM_PARAMS params;
	const uint8_t *in;
	size_t in_len;
	uint8_t *out;
	CK_ULONG out_len;
};

static CK_RV op_gcm(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct gcm_ctx *c = vctx;
	CK_MECHANISM m = {CKM_AES_GCM, &c->params, sizeof(c->params)};
	CK_OBJECT_HANDLE o = atomic_load(&((struct nhi_hsm_key *)c->k)->priv);
	CK_ULONG cap = c->out_len;
	CK_RV r;

	if (c->encrypt) {
		r = h->f->C_EncryptInit(s, &m, o);
		if (r == CKR_OK)
			r = h->f->C_Encrypt(s, (CK_BYTE_PTR)c->in, c->in_len, c->out, &cap);
	} else {
		r = h->f->C_DecryptInit(s, &m, o);
		if (r == CKR_OK)
			r = h->f->C_Decrypt(s, (CK_BYTE_PTR)c->in, c->in_len, c->out, &cap);
	}
	c->out_len = cap;
	return r;
}

static nhi_err gcm(struct nhi_hsm *h, const struct nhi_hsm_key *key, bool encrypt, const uint8_t iv[12],
		   const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct gcm_ctx c = {0};
	size_t cap = encrypt ? in_len + 16 : in_len;

	NHI_CHECK(key->kind == NHI_KEY_AES256, NHI_ERR_ARG, "key '%s' is not an AES key", key->label);
	NHI_CHECK(encrypt || in_len >= 16, NHI_ERR_FORMAT, "ciphertext shorter than the GCM tag");
	NHI_TRY(nhi_buf_reserve(out, cap));
	c.k = key;
	c.encrypt = encrypt;
	c.params.pIv = (CK_BYTE_PTR)iv;
	c.params.ulIvLen = 12;
	c.params.ulIvBits = 96;
	c.params.pAAD = (CK_BYTE_PTR)aad;
	c.params.ulAADLen = aad_len;
	c.params.ulTagBits = 128;
	c.in = in;
	c.in_len = in_len;
	c.out = out->data + out->len;
	c.out_len = cap;
	rv = nhi_hsm_run(h, encrypt ? "C_Encrypt(CKM_AES_GCM)" : "C_Decrypt(CKM_AES_GCM)", key, op_gcm, &c);
	if (rv == NHI_ERR_VERIFY || (!encrypt && rv == NHI_ERR_HSM))
		rv = nhi_err_wrap(NHI_ERR_VERIFY, "AES-GCM authentication failed (wrong key, damaged data or header)");
	if (rv != NHI_OK) {
		nhi_wipe(out->data + out->len, cap);
		goto out;
	}
	NHI_CHECK(c.out_len <= cap, NHI_ERR_HSM, "token wrote past the buffer it was given");
	out->len += c.out_len;
	out->data[out->len] = '\0';
	atomic_fetch_add(&h->crypts, 1);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_hsm_gcm_encrypt(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t iv[12],
			    const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len, struct nhi_buf *out)
{
	return gcm(h, key, true, iv, aad, aad_len, pt, pt_len, out);
}

nhi_err nhi_hsm_gcm_decrypt(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t iv[12],
			    const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len, struct nhi_buf *out)
{
	return gcm(h, key, false, iv, aad, aad_len, ct, ct_len, out);
}

/* ---- random ----------------------------------------------------------------- */

struct rand_ctx {
	uint8_t *buf;
	size_t len;
};

static CK_RV op_random(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct rand_ctx *c = vctx;

	return h->f->C_GenerateRandom(s, c->buf, c->len);
}

nhi_err nhi_hsm_random(struct nhi_hsm *h, uint8_t *buf, size_t len)
{
	struct rand_ctx c = {buf, len};

	return nhi_hsm_run(h, "C_GenerateRandom", NULL, op_random, &c);
}
