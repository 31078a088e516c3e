/*
 * server/signing.c — the signing service for the other components (POST /v1/sign,
 * POST /v1/verify; docs/api.md): keys labelled for a purpose in the token, each
 * with the role that may sign and the role that may verify (config signing_keys).
 *
 * A signature is ES256 (raw R||S) over
 *   "nhid-sign-v1" || 0x00 || purpose || 0x00 || payload
 * so that bytes signed for one purpose never verify for another, and never as a
 * token, update, bundle or manifest (those have their own contexts and keys).
 * Replication peers run the same service with their own key for the purpose; their
 * public keys reach this site in the trust bundle (peer_keys) and verify here.
 */
#include "server_internal.h"
#include "../common/pkey.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIGN_CONTEXT "nhid-sign-v1"

nhi_err nhi_signing_input(const char *purpose, const uint8_t *payload, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_TRY(nhi_buf_append(out, SIGN_CONTEXT, sizeof(SIGN_CONTEXT))); /* with its NUL */
	NHI_TRY(nhi_buf_append(out, purpose, strlen(purpose) + 1));
	NHI_TRY(nhi_buf_append(out, payload, len));
	rv = NHI_OK;
out:
	return rv;
}

/*
 * The config check (sign_keys_distinct) knows the labels of the config; a committed
 * cert-rotation or token-keys package puts other labels in force, which the TLS
 * handshake or token issuance then sign with. A signing-service key must be none of
 * them either. Needs nhi_watcher_load to have set s->tls_label and s->token_keys.
 */
static nhi_err not_in_force(const struct nhi_server *s, const struct nhi_sign_key_cfg *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i;

	NHI_CHECK(strcmp(c->label, s->tls_label) != 0, NHI_ERR_CONFIG,
		  "config key 'signing_keys': purpose %s names key '%s', which is the TLS key in force (of the committed "
		  "cert-rotation package), one of nhid's own keys: give the signing service its own key "
		  "(`nhictl key create --label ...`)",
		  c->purpose, c->label);
	for (i = 0; i < s->token_keys.n; i++)
		NHI_CHECK(strcmp(c->label, s->token_keys.labels[i]) != 0, NHI_ERR_CONFIG,
			  "config key 'signing_keys': purpose %s names key '%s', which is a token key in force (of the "
			  "committed token-keys package, or config token_keys), one of nhid's own keys: give the signing "
			  "service its own key (`nhictl key create --label ...`)",
			  c->purpose, c->label);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_signing_load(struct nhi_server *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i;

	if (s->cfg.n_sign_keys == 0)
		return NHI_OK;
	s->sign_keys = calloc(s->cfg.n_sign_keys, sizeof(*s->sign_keys));
	NHI_CHECK(s->sign_keys != NULL, NHI_ERR_NOMEM, "out of memory");
	for (i = 0; i < s->cfg.n_sign_keys; i++) {
		struct nhi_sign_key *k = &s->sign_keys[i];
		k->cfg = &s->cfg.sign_keys[i];
		s->n_sign_keys = i + 1;
		NHI_TRY(not_in_force(s, k->cfg));
		rv = nhi_hsm_find(s->hsm, k->cfg->label, &k->key);
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "signing key '%s' (purpose %s): create it in the token with `nhictl key create "
					 "--label %s` or remove it from signing_keys",
				     k->cfg->label, k->cfg->purpose, k->cfg->label);
			goto out;
		}
		NHI_CHECK(nhi_hsm_key_kind(k->key) == NHI_KEY_EC_P256, NHI_ERR_CONFIG,
			  "signing key '%s' (purpose %s) is not an EC P-256 key: the signing service signs ES256",
			  k->cfg->label, k->cfg->purpose);
		NHI_TRY(nhi_hsm_pubkey(s->hsm, k->key, &k->pub));
		{
			bool cached;

			NHI_TRY(nhi_hsm_key_cache(s->hsm, k->key, &cached));
		}
		NHI_CHECK(nhi_pkey_is_p256(k->pub), NHI_ERR_CONFIG, "signing key '%s' (purpose %s) is not on P-256", k->cfg->label,
			  k->cfg->purpose);
		NHI_TRY(nhi_pkey_thumbprint(k->pub, k->kid));
	}
	rv = NHI_OK;
out:
	return rv;
}

void nhi_signing_free(struct nhi_server *s)
{
	size_t i;

	for (i = 0; i < s->n_sign_keys; i++) {
		nhi_hsm_key_free(s->sign_keys[i].key);
		EVP_PKEY_free(s->sign_keys[i].pub);
	}
	free(s->sign_keys);
	s->sign_keys = NULL;
	s->n_sign_keys = 0;
}

const struct nhi_sign_key *nhi_signing_find(const struct nhi_server *s, const char *purpose)
{
	size_t i;

	for (i = 0; i < s->n_sign_keys; i++)
		if (strcmp(s->sign_keys[i].cfg->purpose, purpose) == 0)
			return &s->sign_keys[i];
	return NULL;
}

nhi_err nhi_signing_sign(struct nhi_server *s, const struct nhi_sign_key *k, const uint8_t *payload, size_t len,
			 uint8_t sig[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf msg = {0};
	size_t n = 0;

	NHI_TRY(nhi_signing_input(k->cfg->purpose, payload, len, &msg));
	NHI_TRY(nhi_hsm_sign(s->hsm, k->key, msg.data, msg.len, sig, &n));
	NHI_CHECK(n == 64, NHI_ERR_CRYPTO, "unexpected signature length %zu", n);
	rv = NHI_OK;
out:
	nhi_buf_free(&msg);
	return rv;
}

nhi_err nhi_signing_verify(struct nhi_server *s, const struct nhi_trust *t, const struct nhi_sign_key *k,
			   const char *kid, const uint8_t *payload, size_t len, const uint8_t sig[64],
			   struct nhi_signing_verdict *v)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf msg = {0};
	EVP_PKEY *pub = NULL;
	bool off = false;
	size_t i;

	memset(v, 0, sizeof(*v));
	snprintf(v->kid, sizeof(v->kid), "%s", kid != NULL ? kid : k->kid);
	for (i = 0; i < t->n_kids; i++)
		if (strcmp(t->kids[i], v->kid) == 0) {
			v->reason = "kid_revoked";
			NHI_FAIL(NHI_ERR_VERIFY, "key %s is revoked by revocation package version %llu", v->kid,
				 (unsigned long long)t->revocation_version);
		}
	if (strcmp(v->kid, k->kid) == 0) {
		pub = k->pub;
		EVP_PKEY_up_ref(pub);
		v->signer = "local";
	} else {
		/* a peer's key for this purpose, from the trust bundle in service now */
		pthread_mutex_lock(&s->bundle_mu);
		off = s->bundle == NULL;
		if (!off)
			pub = nhi_keyset_get(nhi_bundle_peer_keys(s->bundle), v->kid);
		if (pub != NULL)
			EVP_PKEY_up_ref(pub);
		pthread_mutex_unlock(&s->bundle_mu);
		v->signer = "peer";
		if (pub == NULL) {
			v->reason = "unknown_kid";
			NHI_FAIL(NHI_ERR_VERIFY, "kid %s is neither this server's '%s' key nor a peer key of the trust "
						 "bundle%s",
				 v->kid, k->cfg->purpose, off ? " (updates are off: no trust bundle)" : "");
		}
	}
	NHI_TRY(nhi_signing_input(k->cfg->purpose, payload, len, &msg));
	if (nhi_pkey_es256_verify(pub, msg.data, msg.len, sig) != NHI_OK) {
		v->reason = "signature_mismatch";
		NHI_FAIL(NHI_ERR_VERIFY, "the signature is not %s's over this payload for purpose %s", v->kid,
			 k->cfg->purpose);
	}
	v->reason = "ok";
	rv = NHI_OK;
out:
	EVP_PKEY_free(pub);
	nhi_buf_free(&msg);
	return rv;
}
