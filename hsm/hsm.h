/*
 * hsm/hsm.h — nhid's only door to PKCS#11.
 *
 * Modules are loaded through p11-kit (SoftHSM2 by default; p11-kit-client.so for a
 * remote/shared HSM). A token is chosen by label or RFC 7512 URI; the user PIN comes
 * from a 0600 file owned by the caller and is held only in locked, non-dumpable
 * memory. Operations borrow a session from a pool that is safe for concurrent
 * callers; a session that dies under us (CKR_SESSION_HANDLE_INVALID,
 * CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN, CKR_DEVICE_REMOVED) is reopened and
 * logged in again once, then the call fails with a clear error.
 *
 * Private and secret keys are generated or unwrapped inside the token with
 * CKA_SENSITIVE=true and CKA_EXTRACTABLE=false; none of them ever reaches process
 * memory.
 */
#ifndef NHI_HSM_H
#define NHI_HSM_H

#include "../common/nhi.h"

#include <openssl/evp.h>

struct nhi_hsm;
struct nhi_hsm_key;

enum nhi_key_kind {
	NHI_KEY_EC_P256 = 1, /* ECDSA P-256: raw R||S signatures (the JWS ES256 form) */
	NHI_KEY_ED25519 = 2, /* EdDSA Ed25519 */
	NHI_KEY_AES256 = 3,  /* AES-256 secret key (wrap key, data keys) */
};

struct nhi_hsm_config {
	const char *module_path; /* PKCS#11 module; NULL = NHI_SOFTHSM2_MODULE_PATH */
	const char *token;       /* token label, or an RFC 7512 "pkcs11:" URI */
	const char *pin_file;    /* user PIN file (0600, ours); NULL = use `pin` */
	const struct nhi_buf *pin; /* PIN typed at a prompt (copied, never kept by the caller);
				      NULL with no pin_file = no login (public objects only) */
	unsigned sessions;       /* pool size; 0 = NHI_HSM_SESSIONS_DEFAULT */
};

/*
 * Load the module, find exactly one matching token, open the session pool and log
 * in. Errors: NHI_ERR_NOT_FOUND (no such token: the detail lists the tokens seen),
 * NHI_ERR_PIN (wrong PIN), NHI_ERR_PERM (PIN file mode/owner), NHI_ERR_CONFIG (URI
 * unusable, or it carries a pin-value). On success *out is owned by the caller.
 */
nhi_err nhi_hsm_open(const struct nhi_hsm_config *cfg, struct nhi_hsm **out) NHI_MUST_CHECK;
/* Log out, close sessions, finalize the module, wipe the PIN. NULL is a no-op. */
void nhi_hsm_free(struct nhi_hsm *h);

/*
 * Initialise a new token named `label` on the module's first uninitialised slot
 * (SoftHSM2 always offers one), with SO and user PINs read from 0600 files. Refuses
 * (NHI_ERR_EXISTS) when a token with that label already exists.
 */
nhi_err nhi_hsm_init_token(const char *module_path, const char *label, const char *so_pin_file,
			   const char *user_pin_file) NHI_MUST_CHECK;

/* Human-readable description of the opened token ("label (serial, model)"); borrowed. */
const char *nhi_hsm_token_desc(const struct nhi_hsm *h);

/*
 * Generate a key inside the token under `label` (token object, private,
 * sensitive, not extractable; EC keys also get a public key object with the same
 * label and CKA_ID). Refuses with NHI_ERR_EXISTS if any object with this label
 * exists. *out is owned by the caller (nhi_hsm_key_free).
 */
nhi_err nhi_hsm_generate(struct nhi_hsm *h, enum nhi_key_kind kind, const char *label,
			 struct nhi_hsm_key **out) NHI_MUST_CHECK;

/*
 * Find a key by label: the private key (EC P-256/Ed25519) or the secret key (AES),
 * with the public key object of the same pair (same label and CKA_ID) where there is
 * one. NHI_ERR_NOT_FOUND if absent; NHI_ERR_CONFIG when several private/secret keys
 * carry the label, or the key is on another curve (e.g. P-384).
 */
nhi_err nhi_hsm_find(struct nhi_hsm *h, const char *label, struct nhi_hsm_key **out) NHI_MUST_CHECK;
/* NHI_OK when an object with `label` exists, NHI_ERR_NOT_FOUND when none does. */
nhi_err nhi_hsm_label_exists(struct nhi_hsm *h, const char *label) NHI_MUST_CHECK;
/*
 * Destroy every token object labelled `label` (at most 16), whatever it is: for the
 * leftovers of an interrupted unwrap, which may be half-made (no public object, or
 * attributes missing). *n = objects destroyed. The caller has made sure the label
 * names nothing in service.
 */
nhi_err nhi_hsm_destroy_label(struct nhi_hsm *h, const char *label, unsigned *n) NHI_MUST_CHECK;
/* Destroy the key's objects in the token. Used by tests and failed rotations. */
nhi_err nhi_hsm_destroy(struct nhi_hsm *h, struct nhi_hsm_key *key) NHI_MUST_CHECK;
/*
 * Sign faster with `key` where the token allows it: a copy of the private key as a
 * session object inside the token — sensitive and non-extractable like the original,
 * it never leaves the token and disappears with nhid's sessions — which SoftHSM2
 * does not re-read from its file store on every operation (1.6x the signatures/s,
 * bench_hsm). If the token refuses the copy (CKA_COPYABLE false, an HSM policy),
 * *cached is false and signing uses the token object, as it also does if the copy is
 * lost later (a token reset). EC/Ed25519 keys only; the hsm must outlive the key.
 */
nhi_err nhi_hsm_key_cache(struct nhi_hsm *h, struct nhi_hsm_key *key, bool *cached) NHI_MUST_CHECK;
/* Release the handle (not the key in the token). NULL is a no-op. */
void nhi_hsm_key_free(struct nhi_hsm_key *key);
enum nhi_key_kind nhi_hsm_key_kind(const struct nhi_hsm_key *key);
/* The key's label; valid while the key handle lives. */
const char *nhi_hsm_key_label(const struct nhi_hsm_key *key);

/*
 * Sign `msg`. EC P-256: SHA-256 in OpenSSL, then CKM_ECDSA in the token (SoftHSM
 * 2.6.1 lacks CKM_ECDSA_SHA256), giving 64 bytes R||S. Ed25519: CKM_EDDSA over the
 * message, 64 bytes. `sig` must hold 64 bytes; *sig_len is set.
 */
nhi_err nhi_hsm_sign(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t *msg,
		     size_t msg_len, uint8_t *sig, size_t *sig_len) NHI_MUST_CHECK;
/* EC P-256 only: sign a 32-byte digest with CKM_ECDSA; 64 bytes R||S into sig. */
nhi_err nhi_hsm_sign_digest(struct nhi_hsm *h, const struct nhi_hsm_key *key,
			    const uint8_t digest[32], uint8_t sig[64]) NHI_MUST_CHECK;
/* Verify in the token with the public key object. NHI_ERR_VERIFY on a bad signature. */
nhi_err nhi_hsm_verify(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t *msg,
		       size_t msg_len, const uint8_t *sig, size_t sig_len) NHI_MUST_CHECK;

/*
 * The public key as an OpenSSL EVP_PKEY (built from CKA_EC_POINT); *out is owned by
 * the caller (EVP_PKEY_free). Not for AES keys.
 */
nhi_err nhi_hsm_pubkey(struct nhi_hsm *h, const struct nhi_hsm_key *key, EVP_PKEY **out) NHI_MUST_CHECK;

enum nhi_pubkey_format {
	NHI_PUBKEY_DER = 1, /* SubjectPublicKeyInfo DER */
	NHI_PUBKEY_PEM = 2, /* "-----BEGIN PUBLIC KEY-----" */
	NHI_PUBKEY_JWK = 3, /* RFC 7517 JSON, members in RFC 7638 order, no kid */
};
/* Export the public key in `fmt`, appended to `out`. */
nhi_err nhi_hsm_pubkey_export(struct nhi_hsm *h, const struct nhi_hsm_key *key,
			      enum nhi_pubkey_format fmt, struct nhi_buf *out) NHI_MUST_CHECK;

/*
 * An EVP_PKEY whose private-key operations (ECDSA) run in the token, for OpenSSL
 * APIs that want one (X509_sign, SSL_CTX_use_PrivateKey). EC P-256 only. The hsm
 * and key must outlive the returned pkey. *out is owned by the caller.
 */
nhi_err nhi_hsm_evp_pkey(struct nhi_hsm *h, const struct nhi_hsm_key *key, EVP_PKEY **out) NHI_MUST_CHECK;

/* Wrap `target` under the AES `wrapping` key with CKM_AES_KEY_WRAP_PAD; appended to out. */
nhi_err nhi_hsm_wrap(struct nhi_hsm *h, const struct nhi_hsm_key *wrapping,
		     const struct nhi_hsm_key *target, struct nhi_buf *out) NHI_MUST_CHECK;

struct nhi_hsm_unwrap_spec {
	enum nhi_key_kind kind; /* NHI_KEY_AES256 or NHI_KEY_EC_P256 */
	const char *label;      /* NULL: a session object that vanishes with the pool */
	bool token;             /* persist in the token (needs label) */
	const uint8_t *ec_point; /* EC only: DER OCTET STRING of the public point, to create the
				    public key object (NULL: no public object) */
	size_t ec_point_len;
};
/*
 * Unwrap (CKM_AES_KEY_WRAP_PAD) a key into the token: sensitive, not extractable.
 * The new key can decrypt/sign but never be read back. *out owned by the caller.
 */
nhi_err nhi_hsm_unwrap(struct nhi_hsm *h, const struct nhi_hsm_key *wrapping, const uint8_t *wrapped,
		       size_t wrapped_len, const struct nhi_hsm_unwrap_spec *spec,
		       struct nhi_hsm_key **out) NHI_MUST_CHECK;

/*
 * A fresh AES-256 session key that may be wrapped (CKA_EXTRACTABLE=true, still
 * sensitive): the data key of a backup is made here, used in the token, wrapped
 * under the wrap key, and destroyed with the handle's session.
 */
nhi_err nhi_hsm_generate_data_key(struct nhi_hsm *h, struct nhi_hsm_key **out) NHI_MUST_CHECK;

/*
 * AES-256-GCM in the token (CKM_AES_GCM, 96-bit IV, 128-bit tag). encrypt appends
 * ciphertext||tag to out; decrypt takes ciphertext||tag and appends the plaintext
 * to out (make out a secret buffer). A wrong key/tag/AAD is NHI_ERR_VERIFY.
 */
nhi_err nhi_hsm_gcm_encrypt(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t iv[12],
			    const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
			    struct nhi_buf *out) NHI_MUST_CHECK;
nhi_err nhi_hsm_gcm_decrypt(struct nhi_hsm *h, const struct nhi_hsm_key *key, const uint8_t iv[12],
			    const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len,
			    struct nhi_buf *out) NHI_MUST_CHECK;

/* Random bytes from the token's generator. */
nhi_err nhi_hsm_random(struct nhi_hsm *h, uint8_t *buf, size_t len) NHI_MUST_CHECK;

/* "CKR_PIN_INCORRECT" for 0xa0; "CKR_0x..." for unknown values. Static string. */
const char *nhi_hsm_rv_name(unsigned long rv);

/*
 * Build the P-256 group once and answer the PKCS#11 module's d2i_ECPKParameters of
 * the prime256v1 OID from it (hsm/ec_group.c: SoftHSM2 otherwise rebuilds the curve
 * on every C_SignInit). For nhid's main, once, before the sandbox; later calls do
 * nothing more. Until then, and for every other input, libcrypto's own function
 * answers. Errors: NHI_ERR_INTERNAL (libcrypto's symbol or group not as expected:
 * nothing is cached; without libcrypto's symbol no curve decodes at all, so nhid
 * refuses to start).
 */
nhi_err nhi_hsm_ec_group_cache_enable(void) NHI_MUST_CHECK;
/* How many d2i_ECPKParameters calls the cached group has answered (process-wide). */
unsigned long long nhi_hsm_ec_group_cache_hits(void);

/* HSM operation counters for metrics (monotonic since open). */
struct nhi_hsm_stats {
	unsigned long long signs, verifies, wraps, unwraps, crypts, recoveries, errors;
	unsigned long long cached_signs; /* of signs, made with a nhi_hsm_key_cache copy */
};
void nhi_hsm_get_stats(const struct nhi_hsm *h, struct nhi_hsm_stats *out);

#endif
