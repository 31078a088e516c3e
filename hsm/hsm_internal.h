/* hsm/hsm_internal.h — what the hsm/ files share; not for other modules. */
#ifndef NHI_HSM_INTERNAL_H
#define NHI_HSM_INTERNAL_H

#include "hsm.h"
#include "../common/limits.h"

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdatomic.h>

struct nhi_hsm {
	CK_FUNCTION_LIST *f;
	bool initialized;
	CK_SLOT_ID slot;
	char desc[192];
	struct nhi_buf pin; /* secret memory; empty when opened without login */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	CK_SESSION_HANDLE free_sessions[NHI_HSM_SESSIONS_MAX];
	unsigned n_free;
	unsigned n_sessions; /* open, free or borrowed */
	unsigned n_target;   /* what the pool refills to */

	atomic_ullong signs, verifies, wraps, unwraps, crypts, recoveries, errors;
	/* owns the session-object copies of nhi_hsm_key_cache (never in the pool); under mu */
	CK_SESSION_HANDLE keeper;
	atomic_ullong cached_signs;
};

struct nhi_hsm_key {
	enum nhi_key_kind kind;
	char label[NHI_HSM_LABEL_MAX_BYTES + 1];
	uint8_t id[NHI_HSM_KEY_ID_MAX_BYTES]; /* CKA_ID; a longer one is refused by name */
	size_t id_len;
	bool session_object; /* lives only as long as the pool; cannot be re-found */
	/* handles are refreshed after a recovery, possibly by another thread */
	_Atomic CK_OBJECT_HANDLE priv; /* private or secret key */
	_Atomic CK_OBJECT_HANDLE pub;  /* public key object, or CK_INVALID_HANDLE */
	/* nhi_hsm_key_cache: a session-object copy of priv that signs faster, or
	 * CK_INVALID_HANDLE; dropped (falling back to priv) when the token loses it */
	_Atomic CK_OBJECT_HANDLE fast;
	struct nhi_hsm *cache_owner; /* destroys `fast` when the key is freed */
};

/* DER of the prime256v1 OID: the CKA_EC_PARAMS of every P-256 key nhid makes */
extern const uint8_t nhi_hsm_oid_p256[10];

/* One PKCS#11 operation on a borrowed session. */
typedef CK_RV (*nhi_hsm_op)(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *ctx);

/*
 * Borrow a session, run op, and on a dead session/login (see hsm.h) reopen, log in,
 * refresh `key`'s handles and run it once more. A failure is reported as
 * "<what>: CKR_NAME" with the matching nhi_err.
 */
nhi_err nhi_hsm_run(struct nhi_hsm *h, const char *what, const struct nhi_hsm_key *key,
		    nhi_hsm_op op, void *ctx) NHI_MUST_CHECK;

/*
 * Does `token` (a label, or an RFC 7512 "pkcs11:" URI) select the token described by
 * `ti`? NHI_ERR_CONFIG for an unparsable URI or one that carries a PIN.
 */
nhi_err nhi_hsm_selector_match(const char *token, const CK_TOKEN_INFO *ti, bool *match) NHI_MUST_CHECK;

/* Map a CK_RV to an error with a message naming it. */
nhi_err nhi_hsm_fail(CK_RV r, const char *what);

/* Public EC point of a key as raw bytes (0x04||X||Y for P-256; 32 bytes for Ed25519). */
nhi_err nhi_hsm_raw_point(struct nhi_hsm *h, const struct nhi_hsm_key *key, uint8_t *out,
			  size_t *out_len) NHI_MUST_CHECK;

#ifdef NHI_TEST_BUILD
/* Tests: close every session of the token under the pool (simulates a reset token). */
void nhi_hsm_testing_close_all(struct nhi_hsm *h);
#endif
/* Bench/tests: the function list and slot, to compare nhi_hsm with direct C_Sign. */
CK_FUNCTION_LIST *nhi_hsm_raw_functions(struct nhi_hsm *h, CK_SLOT_ID *slot);
/* A key handle struct for objects made by hsm_ops.c (unwrap, data keys). */
struct nhi_hsm_key *nhi_hsm_key_new_internal(enum nhi_key_kind kind, const char *label);
/* The private/secret key object handle. */
CK_OBJECT_HANDLE nhi_hsm_key_handle(const struct nhi_hsm_key *key);

#endif
