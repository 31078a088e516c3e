/* tokens/tokens_internal.h — what the tokens/ files share; not for other modules. */
#ifndef NHI_TOKENS_INTERNAL_H
#define NHI_TOKENS_INTERNAL_H

#include "tokens.h"
#include "../common/limits.h"

#include <pthread.h>

#define NHI_ES256_IDLE_CTX 8 /* verify contexts kept per key (about one per worker thread) */

/*
 * A trusted ES256 key, ready for concurrent verification (es256.c): the key parsed
 * once, SHA-256 fetched once, idle verify contexts borrowed under `mu`.
 */
struct nhi_es256_key {
	EVP_PKEY *pk;
	EVP_MD *sha256;
	pthread_mutex_t mu;
	bool mu_ready;
	EVP_PKEY_CTX *idle[NHI_ES256_IDLE_CTX];
	size_t n_idle;
};
/* Takes its own reference to pk. On failure k is left cleared. */
nhi_err nhi_es256_key_init(struct nhi_es256_key *k, EVP_PKEY *pk) NHI_MUST_CHECK;
void nhi_es256_key_clear(struct nhi_es256_key *k);
/* Thread-safe. NHI_ERR_VERIFY when sig (64 bytes R||S) does not verify over input. */
nhi_err nhi_es256_verify(struct nhi_es256_key *k, const uint8_t *input, size_t len,
			 const uint8_t sig[64]) NHI_MUST_CHECK;

/* The verifier's view of a JWS signature layer, exposed for known-answer tests. */

/*
 * ES256 (RFC 7518 §3.4): verify the 64-byte R||S `sig` over `input` with `pk`, a
 * P-256 key parsed once by the caller. Both low-S and high-S forms verify (see
 * docs/tokens.md, "High-S"). NHI_ERR_VERIFY when it does not verify.
 */
nhi_err nhi_token_es256_verify(EVP_PKEY *pk, const uint8_t *input, size_t len, const uint8_t sig[64]) NHI_MUST_CHECK;

/*
 * Parse an RFC 7517 JWK Set under the rules of nhi_token_verifier_add_jwks. On
 * success keys[0..*n) are new references owned by the caller and kids[i] holds
 * each key's thumbprint. `max` bounds the number of keys accepted.
 */
nhi_err nhi_token_jwks_parse(const char *json, size_t len, EVP_PKEY **keys, char (*kids)[44], size_t max,
			     size_t *n) NHI_MUST_CHECK;

#endif
