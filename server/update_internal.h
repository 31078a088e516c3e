/*
 * server/update_internal.h — what update.c, bundle.c, manifest.c and watcher.c share: the
 * parsed signed envelope, strict JSON helpers and the P-256 JWK reader.
 */
#ifndef NHI_UPDATE_INTERNAL_H
#define NHI_UPDATE_INTERNAL_H

#include "update.h"
#include "../common/limits.h"

#include <jansson.h>

struct nhi_envelope {
	struct nhi_buf payload; /* decoded payload bytes */
	size_t n_sigs;
	char keyid[NHI_UPDATE_SIGNATURES_MAX][44];
	uint8_t sig[NHI_UPDATE_SIGNATURES_MAX][64];
};

/* nhi_doc_wrap of `payload` (NULL: out of memory) serialised compact, members in order; steals it. */
nhi_err nhi_doc_wrap_json(json_t *payload, struct nhi_buf *out) NHI_MUST_CHECK;

/* Strictly parse an envelope of at most `max` bytes (payload decoded into env). */
nhi_err nhi_envelope_parse(const uint8_t *doc, size_t len, size_t max, struct nhi_envelope *env) NHI_MUST_CHECK;
void nhi_envelope_free(struct nhi_envelope *env);

/* Test builds only: NHI_TEST_UPDATE_CRASH_AT=K makes the apply _exit(86) at step K (1-5 in
 * update.c, 6-7 in watcher.c), so the integration tests can prove that every interruption
 * leaves old-or-new state and an audit log that agrees with it. */
#ifdef NHI_TEST_BUILD
void nhi_update_crash_point(int k);
#else
#define nhi_update_crash_point(k) ((void)0)
#endif
/* Distinct keys of ks with a valid signature on env (see nhi_doc_count_signers). */
nhi_err nhi_envelope_count(enum nhi_doc_type t, const struct nhi_envelope *env, const struct nhi_keyset *ks,
			   unsigned *n_valid) NHI_MUST_CHECK;
/* Parse payload bytes as one JSON object (duplicates rejected); *out owned by caller. */
nhi_err nhi_json_object(const uint8_t *p, size_t len, const char *what, json_t **out) NHI_MUST_CHECK;
/* Refuse any member of `o` not in the NULL-terminated `known` list. */
nhi_err nhi_json_only(json_t *o, const char *what, const char *const *known) NHI_MUST_CHECK;
/* A required integer member in [lo, hi]. */
nhi_err nhi_json_int(json_t *o, const char *what, const char *name, long long lo, long long hi,
		     long long *out) NHI_MUST_CHECK;
/* A P-256 public JWK (kty EC, crv P-256, x, y; no private part) into an EVP_PKEY. */
nhi_err nhi_jwk_parse(json_t *jwk, const char *what, EVP_PKEY **out) NHI_MUST_CHECK;
/* Compact JWK {"crv","kty","x","y"} object of a P-256 key (RFC 7638 order); *out owned by caller. */
nhi_err nhi_jwk_json(EVP_PKEY *pk, json_t **out) NHI_MUST_CHECK;

#endif
