/*
 * server/watcher.c — nhid's side of signed updates (docs/updates.md): the scan
 * thread over updates_dir, and what each kind of package does to the running
 * server. The library (update.h) verifies, commits and moves packages; here the
 * `prepare` hook stages the change (nothing in service is touched) and the scan
 * callback, told the package was committed, makes its update_applied record durable,
 * marks it recorded in update-state.json and only then takes the staged change into
 * service; it audits every outcome. What was committed is also what startup loads
 * (after nhi_watcher_recover has recorded a commit whose record a crash prevented),
 * so a crash between commit and swap leaves nothing behind and nothing off the record.
 *
 *   revocation    {"agents":[id..],"cert_sha256":[hex..],"kids":[kid..]}: the
 *                 complete set (a later version replaces it) — a new trust
 *                 (verifier without the revoked kids, JWKS, sets) swapped in.
 *   cert-rotation {"cert_chain_pem","wrapped_key_b64","key_label"}: the key is
 *                 unwrapped into the token, proven to match the certificate, the
 *                 chain verified against ca_file; a new SSL_CTX swapped in like a
 *                 reload (open connections keep theirs).
 *   trust-bundle  verified and installed by the library; reloaded after the scan.
 *   model-manifest stored only.
 *   token-keys, identity-backup: docs/updates.md.
 * nhi_server_update_body_check holds the body checks that need no running nhid:
 * prepare runs it first, and nhictl's offline apply runs it too.
 */
#include "server_internal.h"
#include "update_internal.h"
#include "../common/pkey.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KINDS_ACCEPTED                                                                                             \
	((1u << NHI_UPDATE_CERT_ROTATION) | (1u << NHI_UPDATE_TRUST_BUNDLE) | (1u << NHI_UPDATE_REVOCATION) |          \
	 (1u << NHI_UPDATE_MODEL_MANIFEST) | (1u << NHI_UPDATE_IDENTITY_BACKUP) | (1u << NHI_UPDATE_TOKEN_KEYS))

/* what prepare made for the package being applied; taken into service or dropped */
struct staged {
	bool valid;
	enum nhi_update_kind kind;
	uint64_t version;
	struct nhi_trust *trust;  /* revocation */
	struct nhi_hsm_key *key;  /* cert-rotation */
	bool key_created;         /* unwrapped by this attempt: destroyed if it is dropped */
	EVP_PKEY *pkey;
	SSL_CTX *ctx;
	struct nhi_buf chain;
	char label[65];
	char cert_sha256[65];
	struct nhi_token_keys tk;                         /* token-keys */
	struct nhi_hsm_key *tk_keys[NHI_SERVER_LIST_MAX]; /* unwrapped by this attempt */
	bool tk_created[NHI_SERVER_LIST_MAX];
	size_t n_tk_keys;
};

struct nhi_watcher {
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool stop;
	struct staged st;
	bool bundle_changed;
	char last_failure[NHI_ERR_DETAIL_MAX]; /* a failure repeated every scan is audited once */
};

static nhi_err committed_body(const char *state_dir, const struct nhi_update_state *st, enum nhi_update_kind k,
			      struct nhi_buf *out);

/* ---- trust ------------------------------------------------------------------------- */

struct nhi_trust *nhi_server_trust_get(struct nhi_server *s)
{
	struct nhi_trust *t;

	pthread_mutex_lock(&s->trust_mu);
	t = s->trust;
	if (t != NULL)
		atomic_fetch_add(&t->refs, 1);
	pthread_mutex_unlock(&s->trust_mu);
	return t;
}

void nhi_trust_put(struct nhi_trust *t)
{
	size_t i;

	if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	nhi_token_verifier_free(t->verifier);
	nhi_token_issuer_free(t->issuer);
	nhi_token_issuer_free(t->issuer_before);
	nhi_buf_free(&t->jwks);
	for (i = 0; i < t->n_agents; i++)
		free(t->agents[i]);
	free(t->agents);
	free(t->certs);
	for (i = 0; i < t->n_kids; i++)
		free(t->kids[i]);
	free(t->kids);
	free(t);
}

struct nhi_token_issuer *nhi_trust_issuer(const struct nhi_trust *t, int64_t now)
{
	return t->issuer_before != NULL && now < t->sign_after ? t->issuer_before : t->issuer;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_sha(const void *a, const void *b)
{
	return memcmp(a, b, 32);
}

bool nhi_trust_agent_revoked(const struct nhi_trust *t, const char *agent_id)
{
	return t != NULL && t->n_agents > 0 &&
	       bsearch(&agent_id, t->agents, t->n_agents, sizeof(t->agents[0]), cmp_str) != NULL;
}

bool nhi_trust_cert_revoked(const struct nhi_trust *t, const uint8_t sha256[32])
{
	return t != NULL && t->n_certs > 0 && bsearch(sha256, t->certs, t->n_certs, 32, cmp_sha) != NULL;
}

static bool kid_revoked(const struct nhi_trust *t, const char *kid)
{
	size_t i;

	for (i = 0; i < t->n_kids; i++)
		if (strcmp(t->kids[i], kid) == 0)
			return true;
	return false;
}

/* an array member of the revocation body: strings only, bounded */
static nhi_err string_list(json_t *root, const char *name, size_t max_len, char ***out, size_t *n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *a = json_object_get(root, name), *v;
	size_t i;

	*out = NULL;
	*n = 0;
	if (a == NULL)
		return NHI_OK;
	NHI_CHECK(json_is_array(a), NHI_ERR_FORMAT, "revocation: '%s' must be an array of strings", name);
	NHI_CHECK(json_array_size(a) <= NHI_SERVER_REVOKED_MAX, NHI_ERR_LIMIT,
		  "revocation: '%s' has %zu entries, over %d", name, json_array_size(a), NHI_SERVER_REVOKED_MAX);
	if (json_array_size(a) == 0)
		return NHI_OK;
	*out = calloc(json_array_size(a), sizeof(char *));
	NHI_CHECK(*out != NULL, NHI_ERR_NOMEM, "out of memory");
	json_array_foreach(a, i, v) {
		const char *sv = json_string_value(v);

		NHI_CHECK(sv != NULL && sv[0] != '\0' && strlen(sv) == json_string_length(v) && strlen(sv) <= max_len,
			  NHI_ERR_FORMAT, "revocation: '%s'[%zu] must be a non-empty string of at most %zu bytes", name,
			  i, max_len);
		(*out)[i] = strdup(sv);
		NHI_CHECK((*out)[i] != NULL, NHI_ERR_NOMEM, "out of memory");
		(*n)++;
	}
	rv = NHI_OK;
out:
	return rv;
}

/* the issuer's JWKS without the revoked kids */
static nhi_err filtered_jwks(const struct nhi_trust *t, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf all = {0};
	json_t *j = NULL, *keys, *kept = NULL, *k;
	char *text = NULL;
	size_t i;

	NHI_TRY(nhi_token_issuer_jwks(t->issuer, &all));
	j = json_loadb((const char *)all.data, all.len, JSON_REJECT_DUPLICATES, NULL);
	keys = json_object_get(j, "keys");
	kept = json_array();
	NHI_CHECK(json_is_array(keys) && kept != NULL, NHI_ERR_INTERNAL, "the issuer's JWKS is not a key set");
	json_array_foreach(keys, i, k) {
		const char *kid = json_string_value(json_object_get(k, "kid"));

		if (kid == NULL || !kid_revoked(t, kid))
			NHI_CHECK(json_array_append(kept, k) == 0, NHI_ERR_NOMEM, "out of memory");
	}
	NHI_CHECK(json_object_set(j, "keys", kept) == 0, NHI_ERR_NOMEM, "out of memory");
	text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_buf_append_str(out, text));
	rv = NHI_OK;
out:
	free(text);
	json_decref(kept);
	json_decref(j);
	nhi_buf_free(&all);
	return rv;
}

/* the revocation body into t's sorted sets; nothing else of t is touched */
static nhi_err revocation_parse(const uint8_t *rev, size_t len, struct nhi_trust *t)
{
	static const char *const members[] = {"agents", "cert_sha256", "kids"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *root = NULL, *v;
	json_error_t jerr;
	const char *key;
	char **hex = NULL;
	size_t n_hex = 0, i, m;

	root = json_loadb((const char *)rev, len, JSON_REJECT_DUPLICATES, &jerr);
	NHI_CHECK(json_is_object(root), NHI_ERR_FORMAT, "revocation body must be one JSON object: %s",
		  root ? "not an object" : jerr.text);
	json_object_foreach(root, key, v) {
		for (m = 0; m < 3 && strcmp(key, members[m]) != 0; m++)
			;
		NHI_CHECK(m < 3, NHI_ERR_FORMAT, "revocation: unknown member '%.64s' (agents, cert_sha256, kids are known)",
			  key);
	}
	NHI_TRY(string_list(root, "agents", NHI_AGENT_ID_MAX_BYTES, &t->agents, &t->n_agents));
	NHI_TRY(string_list(root, "kids", 43, &t->kids, &t->n_kids));
	NHI_TRY(string_list(root, "cert_sha256", 64, &hex, &n_hex));
	if (n_hex > 0) {
		t->certs = calloc(n_hex, 32);
		NHI_CHECK(t->certs != NULL, NHI_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n_hex; i++) {
		long n = 0;
		unsigned char *bytes;

		NHI_CHECK(strlen(hex[i]) == 64 && strspn(hex[i], "0123456789abcdef") == 64, NHI_ERR_FORMAT,
			  "revocation: cert_sha256[%zu] must be 64 lower-case hex digits", i);
		bytes = OPENSSL_hexstr2buf(hex[i], &n);
		NHI_CHECK(bytes != NULL && n == 32, NHI_ERR_FORMAT, "revocation: cert_sha256[%zu] is not hex", i);
		memcpy(t->certs[i], bytes, 32);
		OPENSSL_free(bytes);
		t->n_certs = i + 1;
	}
	for (i = 0; i < t->n_kids; i++)
		NHI_CHECK(strlen(t->kids[i]) == 43, NHI_ERR_FORMAT,
			  "revocation: kids[%zu] is not an RFC 7638 thumbprint (43 characters)", i);
	if (t->n_agents > 1)
		qsort(t->agents, t->n_agents, sizeof(t->agents[0]), cmp_str);
	if (t->n_certs > 1)
		qsort(t->certs, t->n_certs, 32, cmp_sha);
	rv = NHI_OK;
out:
	for (i = 0; i < n_hex; i++)
		free(hex[i]);
	free(hex);
	json_decref(root);
	return rv;
}

nhi_err nhi_revocation_body_check(const uint8_t *body, size_t len)
{
	struct nhi_trust *t = calloc(1, sizeof(*t));
	nhi_err rv;

	if (t == NULL)
		return nhi_err_set(NHI_ERR_NOMEM, "out of memory");
	atomic_init(&t->refs, 1);
	rv = revocation_parse(body, len, t);
	nhi_trust_put(t);
	return rv;
}

/* an issuer signing with `signing`, every other key of tk published and trusted */
static nhi_err issuer_for(struct nhi_server *s, const struct nhi_token_keys *tk, const char *signing,
			  struct nhi_token_issuer **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_token_issuer_cfg ic;
	const char *others[NHI_SERVER_LIST_MAX];
	size_t i, n = 0;

	for (i = 0; i < tk->n; i++)
		if (strcmp(tk->labels[i], signing) != 0)
			others[n++] = tk->labels[i];
	nhi_token_issuer_cfg_init(&ic);
	ic.hsm = s->hsm;
	ic.signing_key = signing;
	ic.retired_keys = others;
	ic.n_retired_keys = n;
	ic.issuer = s->cfg.issuer;
	ic.ttl_default_s = s->cfg.token_ttl_default_s;
	ic.ttl_max_s = s->cfg.token_ttl_max_s;
	ic.cache_signing_key = true;
	rv = nhi_token_issuer_new(&ic, out);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "token-signing keys (signing with '%s')", signing);
	return rv;
}

nhi_err nhi_trust_build(struct nhi_server *s, const struct nhi_token_keys *tk, const uint8_t *rev, size_t len,
			uint64_t version, struct nhi_trust **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_trust *t = NULL;
	struct nhi_token_verify_cfg vc;
	const char *auds[NHI_SERVER_LIST_MAX];
	size_t i;

	*out = NULL;
	t = calloc(1, sizeof(*t));
	NHI_CHECK(t != NULL, NHI_ERR_NOMEM, "out of memory");
	atomic_init(&t->refs, 1);
	t->revocation_version = version;
	NHI_TRY(issuer_for(s, tk, tk->signing, &t->issuer));
	if (tk->previous[0] != '\0') {
		NHI_TRY(issuer_for(s, tk, tk->previous, &t->issuer_before));
		t->sign_after = tk->sign_after;
	}
	if (rev != NULL) {
		NHI_TRY(revocation_parse(rev, len, t));
		/* a key that signs new tokens cannot stop verifying them */
		NHI_CHECK(!kid_revoked(t, nhi_token_issuer_kid(t->issuer)), NHI_ERR_DENIED,
			  "revocation names kid %s, the token signing key '%s': rotate the token keys first, then "
			  "revoke it",
			  nhi_token_issuer_kid(t->issuer), tk->signing);
		NHI_CHECK(t->issuer_before == NULL || !kid_revoked(t, nhi_token_issuer_kid(t->issuer_before)),
			  NHI_ERR_DENIED,
			  "revocation names kid %s, of '%s', which signs tokens until sign_after: revoke it after that",
			  nhi_token_issuer_kid(t->issuer_before), tk->previous);
	}
	NHI_TRY(filtered_jwks(t, &t->jwks));
	for (i = 0; i < s->cfg.n_audiences; i++)
		auds[i] = s->cfg.audiences[i];
	nhi_token_verify_cfg_init(&vc);
	vc.issuer = s->cfg.issuer;
	vc.audiences = auds;
	vc.n_audiences = s->cfg.n_audiences;
	vc.leeway_s = s->cfg.leeway_s;
	vc.lifetime_max_s = s->cfg.token_ttl_max_s;
	vc.memo_entries = s->cfg.verify_memo_entries;
	NHI_TRY(nhi_token_verifier_new(&vc, &t->verifier));
	/* the verifier trusts exactly what the JWKS publishes */
	NHI_TRY(nhi_token_verifier_add_jwks(t->verifier, (const char *)t->jwks.data, t->jwks.len));
	*out = t;
	t = NULL;
	rv = NHI_OK;
out:
	nhi_trust_put(t);
	return rv;
}

/* ---- cert-rotation body --------------------------------------------------------------- */

struct rotation {
	char label[65];
	const char *chain; /* inside root */
	size_t chain_len;
	const char *wrapped_b64;
	json_t *root;
};

static bool valid_label(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 64 &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

static nhi_err rotation_parse(const uint8_t *body, size_t len, struct rotation *r)
{
	static const char *const members[] = {"cert_chain_pem", "wrapped_key_b64", "key_label"};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_error_t jerr;
	json_t *v;
	const char *key, *label;
	size_t m;

	memset(r, 0, sizeof(*r));
	r->root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
	NHI_CHECK(json_is_object(r->root), NHI_ERR_FORMAT, "cert-rotation body must be one JSON object: %s",
		  r->root ? "not an object" : jerr.text);
	json_object_foreach(r->root, key, v) {
		for (m = 0; m < 3 && strcmp(key, members[m]) != 0; m++)
			;
		NHI_CHECK(m < 3, NHI_ERR_FORMAT, "cert-rotation: unknown member '%.64s'", key);
		NHI_CHECK(json_is_string(v) && json_string_length(v) == strlen(json_string_value(v)), NHI_ERR_FORMAT,
			  "cert-rotation: '%s' must be a string", key);
	}
	label = json_string_value(json_object_get(r->root, "key_label"));
	r->chain = json_string_value(json_object_get(r->root, "cert_chain_pem"));
	r->wrapped_b64 = json_string_value(json_object_get(r->root, "wrapped_key_b64"));
	NHI_CHECK(label != NULL && r->chain != NULL && r->wrapped_b64 != NULL, NHI_ERR_FORMAT,
		  "cert-rotation: cert_chain_pem, wrapped_key_b64 and key_label are all required");
	NHI_CHECK(valid_label(label), NHI_ERR_FORMAT, "cert-rotation: key_label '%.64s' is not a key label", label);
	memcpy(r->label, label, strlen(label) + 1);
	r->chain_len = strlen(r->chain);
	rv = NHI_OK;
out:
	return rv;
}

static void rotation_free(struct rotation *r)
{
	json_decref(r->root);
	memset(r, 0, sizeof(*r));
}

nhi_err nhi_rotation_body_check(const uint8_t *body, size_t len)
{
	struct rotation r;
	nhi_err rv = rotation_parse(body, len, &r);

	rotation_free(&r);
	return rv;
}

nhi_err nhi_server_chain_verify(const char *ca_file, const char *what, X509 *leaf, STACK_OF(X509) *rest)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *vc = X509_STORE_CTX_new();

	NHI_CHECK_SSL(store != NULL && vc != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK_SSL(X509_STORE_load_file(store, ca_file) == 1, NHI_ERR_CONFIG, "loading the trust root %s", ca_file);
	NHI_CHECK_SSL(X509_STORE_CTX_init(vc, store, leaf, rest) == 1, NHI_ERR_CRYPTO, "X509_STORE_CTX_init");
	NHI_CHECK_SSL(X509_STORE_CTX_set_purpose(vc, X509_PURPOSE_SSL_SERVER) == 1, NHI_ERR_CRYPTO, "server purpose");
	if (X509_verify_cert(vc) != 1) {
		ERR_clear_error();
		NHI_FAIL(NHI_ERR_VERIFY, "%s does not verify against ca_file %s: %s", what, ca_file,
			 X509_verify_cert_error_string(X509_STORE_CTX_get_error(vc)));
	}
	rv = NHI_OK;
out:
	X509_STORE_CTX_free(vc);
	X509_STORE_free(store);
	return rv;
}

/* the private key in the token signs; the public key the package gives verifies */
static nhi_err key_matches(struct nhi_server *s, const struct nhi_hsm_key *key, EVP_PKEY *pub, const char *what)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	static const uint8_t msg[] = "nhid rotation: proof that the unwrapped key is the package's";
	uint8_t sig[64];
	size_t sig_len = 0;

	NHI_TRY(nhi_hsm_sign(s->hsm, key, msg, sizeof(msg) - 1, sig, &sig_len));
	NHI_CHECK(sig_len == 64, NHI_ERR_CRYPTO, "unexpected signature length %zu", sig_len);
	NHI_CHECK(nhi_pkey_es256_verify(pub, msg, sizeof(msg) - 1, sig) == NHI_OK, NHI_ERR_VERIFY,
		  "the wrapped key does not match %s: the package pairs it with another key", what);
	rv = NHI_OK;
out:
	return rv;
}

/*
 * A key already under `label` when a package is prepared: the callers made sure the
 * label names nothing in service, so it is what an earlier attempt at this package
 * left. Whole (private and public object) and proven to be `pub`'s: *out, taken over.
 * A whole key of another public key: refused (someone else's, or another package's).
 * Anything less — a crash between the private and the public object, or SoftHSM2's
 * object file cut short mid-write — is destroyed, and *out stays NULL: unwrap again.
 */
static nhi_err leftover_or_ours(struct nhi_server *s, const char *what, const char *label, EVP_PKEY *pub,
				const char *pub_what, struct nhi_hsm_key **out)
{
	nhi_err rv = NHI_ERR_INTERNAL, e;
	struct nhi_hsm_key *k = NULL;
	EVP_PKEY *have = NULL;
	unsigned n = 0;

	*out = NULL;
	e = nhi_hsm_find(s->hsm, label, &k);
	if (e == NHI_OK)
		e = nhi_hsm_pubkey(s->hsm, k, &have);
	if (e == NHI_OK) {
		e = key_matches(s, k, pub, pub_what);
		if (e == NHI_OK && EVP_PKEY_eq(have, pub) == 1) {
			*out = k;
			k = NULL;
			rv = NHI_OK;
			goto out;
		}
		NHI_CHECK(e != NHI_ERR_VERIFY || EVP_PKEY_eq(have, pub) == 1, NHI_ERR_EXISTS,
			  "%s: a whole key labelled '%s' is already in the token and is not %s: choose another label",
			  what, label, pub_what);
	}
	ERR_clear_error();
	NHI_TRY(nhi_hsm_destroy_label(s->hsm, label, &n));
	fprintf(stderr, "nhid: %s: removed %u unusable object(s) labelled '%s' left by an interrupted attempt (%s)\n",
		what, n, label, nhi_err_detail());
	rv = NHI_OK;
out:
	EVP_PKEY_free(have);
	nhi_hsm_key_free(k);
	return rv;
}

/*
 * The private key of `pub` (P-256), wrapped under nhid-wrap (CKM_AES_KEY_WRAP_PAD),
 * into the token as a sensitive, non-extractable key `label`; then it must sign what
 * `pub` verifies (comparing public halves would prove nothing: the public object is
 * made from `pub`). A key already under `label` (an earlier attempt stopped before
 * the commit) is taken over only if it passes the same check. *created says whether
 * this call made it (the caller destroys it if the package is not committed).
 */
static nhi_err unwrap_p256(struct nhi_server *s, const char *what, const char *label, const char *wrapped_b64,
			   EVP_PKEY *pub, const char *pub_what, struct nhi_hsm_key **out, bool *created)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_hsm_key *wrap = NULL;
	struct nhi_buf wrapped = {0};
	uint8_t point[65], ec_point[67];
	size_t n = 0;

	*out = NULL;
	*created = false;
	NHI_CHECK_SSL(EVP_PKEY_get_octet_string_param(pub, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof(point),
						      &n) == 1 &&
			      n == sizeof(point),
		      NHI_ERR_FORMAT, "%s: cannot read the public point of %s", what, pub_what);
	/* CKA_EC_POINT is the DER OCTET STRING of the uncompressed point */
	ec_point[0] = 0x04;
	ec_point[1] = sizeof(point);
	memcpy(ec_point + 2, point, sizeof(point));
	rv = nhi_b64url_decode(wrapped_b64, strlen(wrapped_b64), &wrapped);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "%s: wrapped_key_b64 (base64url, no padding)", what);
		goto out;
	}
	rv = nhi_hsm_label_exists(s->hsm, label);
	if (rv == NHI_OK) {
		NHI_TRY(leftover_or_ours(s, what, label, pub, pub_what, out));
		if (*out != NULL)
			goto out; /* an earlier attempt's key, whole and proven: taken over */
		rv = NHI_ERR_NOT_FOUND;
	}
	if (rv == NHI_ERR_NOT_FOUND) {
		struct nhi_hsm_unwrap_spec spec = {.kind = NHI_KEY_EC_P256, .label = label, .token = true,
						   .ec_point = ec_point, .ec_point_len = sizeof(ec_point)};

		NHI_TRY(nhi_hsm_find(s->hsm, NHI_SERVER_WRAP_KEY_LABEL, &wrap));
		rv = nhi_hsm_unwrap(s->hsm, wrap, wrapped.data, wrapped.len, &spec, out);
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "%s: unwrapping the new key under '%s'", what, NHI_SERVER_WRAP_KEY_LABEL);
			goto out;
		}
		*created = true;
	}
	rv = key_matches(s, *out, pub, pub_what);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "%s", what);
		goto out;
	}
	rv = NHI_OK;
out:
	nhi_buf_free(&wrapped);
	nhi_hsm_key_free(wrap);
	return rv;
}

static void staged_drop(struct nhi_server *s, struct staged *st)
{
	if (st->key != NULL && st->key_created && nhi_hsm_destroy(s->hsm, st->key) != NHI_OK)
		fprintf(stderr, "nhid: cert-rotation: could not remove the staged key '%s' from the token: %s\n",
			st->label, nhi_err_detail());
	SSL_CTX_free(st->ctx);
	EVP_PKEY_free(st->pkey);
	nhi_hsm_key_free(st->key);
	for (size_t i = 0; i < st->n_tk_keys; i++) {
		if (st->tk_keys[i] != NULL && st->tk_created[i] && nhi_hsm_destroy(s->hsm, st->tk_keys[i]) != NHI_OK)
			fprintf(stderr, "nhid: token-keys: could not remove the staged key '%s' from the token: %s\n",
				nhi_hsm_key_label(st->tk_keys[i]), nhi_err_detail());
		nhi_hsm_key_free(st->tk_keys[i]);
	}
	nhi_trust_put(st->trust);
	nhi_buf_free(&st->chain);
	memset(st, 0, sizeof(*st));
}

/* a TLS key rotated out earlier still signs for the connections that started with it */
static nhi_err not_an_old_tls_key(struct nhi_server *s, const char *what, const char *label)
{
	nhi_err rv = NHI_OK;
	size_t i;

	pthread_mutex_lock(&s->reload_mu);
	for (i = 0; i < s->n_old_tls_keys && rv == NHI_OK; i++)
		if (strcmp(nhi_hsm_key_label(s->old_tls_keys[i]), label) == 0)
			rv = nhi_err_set(NHI_ERR_FORMAT,
					 "%s: '%s' is a TLS key rotated out earlier (open connections may still use it): "
					 "give the new key a new label",
					 what, label);
	pthread_mutex_unlock(&s->reload_mu);
	return rv;
}

static nhi_err prepare_rotation(struct nhi_server *s, const uint8_t *body, size_t len, struct staged *st)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct rotation r;
	X509 *leaf = NULL;
	STACK_OF(X509) *rest = NULL;
	uint8_t fp[32];
	unsigned char *der = NULL;
	size_t i;
	int der_len;

	NHI_TRY(rotation_parse(body, len, &r));
	NHI_CHECK(strcmp(r.label, s->tls_label) != 0, NHI_ERR_FORMAT,
		  "cert-rotation: key_label '%s' is the key in service: give the new key a new label", r.label);
	for (i = 0; i < s->token_keys.n; i++)
		NHI_CHECK(strcmp(r.label, s->token_keys.labels[i]) != 0, NHI_ERR_FORMAT,
			  "cert-rotation: key_label '%s' is a token signing key", r.label);
	NHI_TRY(not_an_old_tls_key(s, "cert-rotation", r.label));
	for (i = 0; i < s->cfg.n_sign_keys; i++)
		NHI_CHECK(strcmp(r.label, s->cfg.sign_keys[i].label) != 0, NHI_ERR_FORMAT,
			  "cert-rotation: key_label '%s' is the signing service's key for purpose %s", r.label,
			  s->cfg.sign_keys[i].purpose);
	NHI_CHECK(strcmp(r.label, s->cfg.audit_key) != 0 && strcmp(r.label, s->cfg.backup_sign_key) != 0 &&
			  strcmp(r.label, NHI_SERVER_WRAP_KEY_LABEL) != 0,
		  NHI_ERR_FORMAT, "cert-rotation: key_label '%s' names one of the ceremony's keys", r.label);
	NHI_TRY(nhi_tls_chain_parse((const uint8_t *)r.chain, r.chain_len, "cert-rotation: cert_chain_pem", &leaf, &rest));
	NHI_CHECK(nhi_pkey_is_p256(X509_get0_pubkey(leaf)), NHI_ERR_FORMAT, "cert-rotation: the new certificate's key must be EC P-256");
	NHI_TRY(nhi_server_chain_verify(s->cfg.ca_file, "the new server certificate", leaf, rest));
	NHI_TRY(unwrap_p256(s, "cert-rotation", r.label, r.wrapped_b64, X509_get0_pubkey(leaf),
			    "the certificate's public key", &st->key, &st->key_created));
	snprintf(st->label, sizeof(st->label), "%s", r.label);
	{
		bool cached;

		NHI_TRY(nhi_hsm_key_cache(s->hsm, st->key, &cached));
	}
	NHI_TRY(nhi_hsm_evp_pkey(s->hsm, st->key, &st->pkey));
	NHI_TRY(nhi_tls_ctx_new(s, (const uint8_t *)r.chain, r.chain_len, "cert-rotation: cert_chain_pem", st->pkey,
				&st->ctx));
	NHI_TRY(nhi_buf_append(&st->chain, r.chain, r.chain_len));
	der_len = i2d_X509(leaf, &der);
	NHI_CHECK_SSL(der_len > 0, NHI_ERR_CRYPTO, "encoding the certificate");
	NHI_TRY(nhi_sha256(der, (size_t)der_len, fp));
	nhi_hex(fp, 32, st->cert_sha256);
	rv = NHI_OK;
out:
	OPENSSL_free(der);
	X509_free(leaf);
	sk_X509_pop_free(rest, X509_free);
	rotation_free(&r);
	return rv;
}

/* ---- identity-backup body -------------------------------------------------------------- */

/*
 * The body is an identity backup (docs/identity.md). Before the commit it is fully
 * imported into a scratch store: signature by backup_sign_key, data key unwrapped
 * and decrypted in the token, integrity, schema, rows, and the rollback rules of a
 * reload (against the loaded backup, or the last accepted one). The package version must be the backup's serial, so the
 * update rollback rule and the backup's agree. After the commit nhid re-imports it
 * into service (nhi_server_reload picks the newest of `backup` and this body).
 */
/* the checks that need no token: the body is a backup, and the package version its serial */
static nhi_err backup_body_check(const struct nhi_update_info *info, const uint8_t *body, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_backup_info bi;

	rv = nhi_backup_inspect(body, len, &bi);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "identity-backup: the body is not an identity backup");
		goto out;
	}
	NHI_CHECK(bi.serial == info->version, NHI_ERR_FORMAT,
		  "identity-backup: the package version (%llu) must be the backup's serial (%llu): make the package "
		  "with --version %llu",
		  (unsigned long long)info->version, (unsigned long long)bi.serial, (unsigned long long)bi.serial);
	rv = NHI_OK;
out:
	return rv;
}

/* after backup_body_check (prepare_cb runs nhi_server_update_body_check first) */
static nhi_err prepare_identity_backup(struct nhi_server *s, const struct nhi_update_info *info, const uint8_t *body,
				       size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_store *scratch = NULL;
	struct nhi_store_info mark, loaded;
	struct nhi_store_import_opts o = {.sign_key_label = s->cfg.backup_sign_key};

	/* the rules of a reload: against the loaded backup, the last accepted one, its serial */
	rv = nhi_server_backup_mark(s, &mark);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "identity-backup");
		goto out;
	}
	nhi_store_get_info(s->store, &loaded);
	o.min_serial = mark.serial;
	o.accepted = loaded.loaded ? &loaded : &mark;
	NHI_TRY(nhi_store_new(&scratch));
	rv = nhi_store_import(scratch, s->hsm, body, len, &o, NULL);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "identity-backup: serial %llu", (unsigned long long)info->version);
out:
	nhi_store_free(scratch);
	return rv;
}

/* ---- token-keys body ---------------------------------------------------------------------- */

/*
 * {"keys":[{"label":"nhid-token-1"},
 *          {"label":"nhid-token-2","wrapped_key_b64":"..","public_key_pem":".."}],
 *  "signing_key":"nhid-token-2", "previous_signing_key":"nhid-token-1", "sign_after":UNIX}
 * The whole set in service (a key left out is retired: it no longer verifies); keys
 * with wrapped_key_b64 are new and unwrapped into the token; the others must be there.
 * previous_signing_key and sign_after go together: the new key is published at once
 * and signs from sign_after on. Detail names the bad member.
 */
struct tk_entry {
	const char *wrapped_b64, *pub_pem; /* NULL for a key already in the token */
};
struct tk_body {
	struct nhi_token_keys tk;
	struct tk_entry e[NHI_SERVER_LIST_MAX];
	json_t *root;
};

static bool tk_has(const struct nhi_token_keys *tk, const char *label)
{
	size_t i;

	for (i = 0; i < tk->n; i++)
		if (strcmp(tk->labels[i], label) == 0)
			return true;
	return false;
}

static nhi_err tk_parse(const uint8_t *body, size_t len, struct tk_body *b)
{
	static const char *const known[] = {"keys", "signing_key", "previous_signing_key", "sign_after", NULL};
	static const char *const kknown[] = {"label", "wrapped_key_b64", "public_key_pem", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *keys, *k, *v;
	const char *label;
	long long after = 0;
	size_t i, j;

	memset(b, 0, sizeof(*b));
	NHI_TRY(nhi_json_object(body, len, "token-keys body", &b->root));
	NHI_TRY(nhi_json_only(b->root, "token-keys", known));
	keys = json_object_get(b->root, "keys");
	NHI_CHECK(json_is_array(keys) && json_array_size(keys) >= 1 && json_array_size(keys) <= NHI_SERVER_LIST_MAX,
		  NHI_ERR_FORMAT, "token-keys: 'keys' must be an array of 1 to %d keys", NHI_SERVER_LIST_MAX);
	json_array_foreach (keys, i, k) {
		NHI_CHECK(json_is_object(k), NHI_ERR_FORMAT, "token-keys: keys[%zu] is not an object", i);
		NHI_TRY(nhi_json_only(k, "token-keys key", kknown));
		label = json_string_value(json_object_get(k, "label"));
		NHI_CHECK(label != NULL && valid_label(label), NHI_ERR_FORMAT, "token-keys: keys[%zu].label is not a key label",
			  i);
		for (j = 0; j < i; j++)
			NHI_CHECK(strcmp(b->tk.labels[j], label) != 0, NHI_ERR_FORMAT, "token-keys: key '%s' is listed twice",
				  label);
		memcpy(b->tk.labels[i], label, strlen(label) + 1);
		b->tk.n = i + 1;
		v = json_object_get(k, "wrapped_key_b64");
		b->e[i].wrapped_b64 = json_string_value(v);
		NHI_CHECK(v == NULL || b->e[i].wrapped_b64 != NULL, NHI_ERR_FORMAT,
			  "token-keys: keys[%zu].wrapped_key_b64 must be a string", i);
		v = json_object_get(k, "public_key_pem");
		b->e[i].pub_pem = json_string_value(v);
		NHI_CHECK(v == NULL || (b->e[i].pub_pem != NULL && json_string_length(v) == strlen(b->e[i].pub_pem)),
			  NHI_ERR_FORMAT, "token-keys: keys[%zu].public_key_pem must be a string", i);
		NHI_CHECK((b->e[i].wrapped_b64 == NULL) == (b->e[i].pub_pem == NULL), NHI_ERR_FORMAT,
			  "token-keys: key '%s': wrapped_key_b64 and public_key_pem go together (a new key) or are both "
			  "absent (a key already in the token)",
			  label);
	}
	label = json_string_value(json_object_get(b->root, "signing_key"));
	NHI_CHECK(label != NULL && tk_has(&b->tk, label), NHI_ERR_FORMAT,
		  "token-keys: 'signing_key' must name one of 'keys'");
	memcpy(b->tk.signing, label, strlen(label) + 1);
	v = json_object_get(b->root, "previous_signing_key");
	NHI_CHECK((v == NULL) == (json_object_get(b->root, "sign_after") == NULL), NHI_ERR_FORMAT,
		  "token-keys: previous_signing_key and sign_after go together");
	if (v != NULL) {
		label = json_string_value(v);
		NHI_CHECK(label != NULL && tk_has(&b->tk, label) && strcmp(label, b->tk.signing) != 0, NHI_ERR_FORMAT,
			  "token-keys: 'previous_signing_key' must name another of 'keys'");
		memcpy(b->tk.previous, label, strlen(label) + 1);
		NHI_TRY(nhi_json_int(b->root, "token-keys", "sign_after", 0, NHI_UPDATE_TIME_MAX_S, &after));
		b->tk.sign_after = after;
	}
	rv = NHI_OK;
out:
	return rv;
}

static void tk_free(struct tk_body *b)
{
	json_decref(b->root);
	memset(b, 0, sizeof(*b));
}

nhi_err nhi_token_keys_body_check(const uint8_t *body, size_t len)
{
	struct tk_body b;
	nhi_err rv = tk_parse(body, len, &b);

	tk_free(&b);
	return rv;
}

/* the token keys in force: the committed token-keys body, else config token_keys */
static nhi_err token_keys_in_force(const struct nhi_server_config *cfg, const struct nhi_update_state *st,
				   struct nhi_token_keys *out, unsigned long long *version)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf body = {0};
	struct tk_body b = {0};
	size_t i;

	*version = 0;
	if (st->version[NHI_UPDATE_TOKEN_KEYS] == 0) {
		memset(out, 0, sizeof(*out));
		for (i = 0; i < cfg->n_token_keys; i++)
			memcpy(out->labels[i], cfg->token_keys[i], sizeof(out->labels[i]));
		out->n = cfg->n_token_keys;
		memcpy(out->signing, cfg->token_keys[0], sizeof(out->signing));
		return NHI_OK;
	}
	NHI_TRY(committed_body(cfg->state_dir, st, NHI_UPDATE_TOKEN_KEYS, &body));
	rv = tk_parse(body.data, body.len, &b);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "the applied token-keys (version %llu)",
			     (unsigned long long)st->version[NHI_UPDATE_TOKEN_KEYS]);
		goto out;
	}
	*out = b.tk;
	*version = (unsigned long long)st->version[NHI_UPDATE_TOKEN_KEYS];
	rv = NHI_OK;
out:
	tk_free(&b);
	nhi_buf_free(&body);
	return rv;
}

/* a token key must be nothing else of nhid's */
static nhi_err tk_label_free(struct nhi_server *s, const char *label)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i;

	NHI_CHECK(strcmp(label, s->tls_label) != 0 && strcmp(label, s->cfg.tls_key) != 0 &&
			  strcmp(label, s->cfg.audit_key) != 0 && strcmp(label, s->cfg.backup_sign_key) != 0 &&
			  strcmp(label, NHI_SERVER_WRAP_KEY_LABEL) != 0 && strcmp(label, "nhid-root") != 0,
		  NHI_ERR_FORMAT, "token-keys: '%s' is one of nhid's TLS, audit, root or wrap keys", label);
	for (i = 0; i < s->cfg.n_sign_keys; i++)
		NHI_CHECK(strcmp(label, s->cfg.sign_keys[i].label) != 0, NHI_ERR_FORMAT,
			  "token-keys: '%s' is the signing service's key for purpose %s", label, s->cfg.sign_keys[i].purpose);
	NHI_TRY(not_an_old_tls_key(s, "token-keys", label));
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err prepare_token_keys(struct nhi_server *s, const uint8_t *body, size_t len, struct staged *st)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct tk_body b;
	struct nhi_update_state us;
	struct nhi_buf rev = {0};
	EVP_PKEY *pub = NULL;
	BIO *bio = NULL;
	char what[96];
	size_t i;

	NHI_TRY(tk_parse(body, len, &b));
	for (i = 0; i < b.tk.n; i++) {
		NHI_TRY(tk_label_free(s, b.tk.labels[i]));
		if (b.e[i].wrapped_b64 == NULL)
			continue;
		NHI_CHECK(!tk_has(&s->token_keys, b.tk.labels[i]), NHI_ERR_FORMAT,
			  "token-keys: '%s' is a token key in service already: a new key needs a new label", b.tk.labels[i]);
		bio = BIO_new_mem_buf(b.e[i].pub_pem, (int)strlen(b.e[i].pub_pem));
		pub = bio != NULL ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
		ERR_clear_error();
		NHI_CHECK(pub != NULL && nhi_pkey_is_p256(pub), NHI_ERR_FORMAT,
			  "token-keys: key '%s': public_key_pem is not a PEM P-256 public key", b.tk.labels[i]);
		snprintf(what, sizeof(what), "token-keys: key '%s'", b.tk.labels[i]);
		rv = unwrap_p256(s, what, b.tk.labels[i], b.e[i].wrapped_b64, pub, "public_key_pem",
				 &st->tk_keys[st->n_tk_keys], &st->tk_created[st->n_tk_keys]);
		st->n_tk_keys++;
		if (rv != NHI_OK)
			goto out;
		EVP_PKEY_free(pub);
		pub = NULL;
		BIO_free(bio);
		bio = NULL;
	}
	/* the trust as it will be: these keys, the revocation set in force */
	NHI_TRY(nhi_update_state_load(s->cfg.state_dir, &us));
	if (us.version[NHI_UPDATE_REVOCATION] > 0)
		NHI_TRY(committed_body(s->cfg.state_dir, &us, NHI_UPDATE_REVOCATION, &rev));
	NHI_TRY(nhi_trust_build(s, &b.tk, rev.len ? rev.data : NULL, rev.len, us.version[NHI_UPDATE_REVOCATION],
				&st->trust));
	st->tk = b.tk;
	rv = NHI_OK;
out:
	EVP_PKEY_free(pub);
	BIO_free(bio);
	nhi_buf_free(&rev);
	tk_free(&b);
	return rv;
}

/* ---- the checks that need no running nhid ------------------------------------------- */

nhi_err nhi_server_update_body_check(const struct nhi_update_info *info, const uint8_t *body, size_t len,
				     bool *needs_nhid)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_trust *t = NULL;

	*needs_nhid = true;
	switch (info->kind) {
	case NHI_UPDATE_REVOCATION:
		t = calloc(1, sizeof(*t));
		NHI_CHECK(t != NULL, NHI_ERR_NOMEM, "out of memory");
		atomic_init(&t->refs, 1);
		NHI_TRY(revocation_parse(body, len, t));
		/* whether a revoked kid signs tokens is known only to nhid (its token keys) */
		*needs_nhid = t->n_kids > 0;
		break;
	case NHI_UPDATE_CERT_ROTATION:
		NHI_TRY(nhi_rotation_body_check(body, len));
		break;
	case NHI_UPDATE_TOKEN_KEYS:
		NHI_TRY(nhi_token_keys_body_check(body, len));
		break;
	case NHI_UPDATE_IDENTITY_BACKUP:
		NHI_TRY(backup_body_check(info, body, len));
		break;
	case NHI_UPDATE_TRUST_BUNDLE:   /* verified as the next bundle by the library */
	case NHI_UPDATE_MODEL_MANIFEST: /* stored only */
		*needs_nhid = false;
		break;
	default:
		NHI_FAIL(NHI_ERR_DENIED, "nhid does not take %s packages", nhi_update_kind_name(info->kind));
	}
	rv = NHI_OK;
out:
	nhi_trust_put(t);
	return rv;
}

/* ---- taking committed changes into service ---------------------------------------- */

static void trust_swap(struct nhi_server *s, struct nhi_trust *t)
{
	struct nhi_trust *old;

	pthread_mutex_lock(&s->trust_mu);
	old = s->trust;
	s->trust = t;
	pthread_mutex_unlock(&s->trust_mu);
	nhi_trust_put(old); /* requests in flight hold their own reference */
}

static nhi_err rotation_activate(struct nhi_server *s, struct staged *st)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_hsm_key **keep;
	SSL_CTX *old;

	pthread_mutex_lock(&s->reload_mu);
	keep = realloc(s->old_tls_keys, (s->n_old_tls_keys + 1) * sizeof(*keep));
	if (keep == NULL) {
		pthread_mutex_unlock(&s->reload_mu);
		return nhi_err_set(NHI_ERR_NOMEM, "out of memory");
	}
	s->old_tls_keys = keep;
	/* contexts held by open connections still sign with the old key: its handle stays */
	s->old_tls_keys[s->n_old_tls_keys++] = s->tls_key;
	EVP_PKEY_free(s->tls_pkey); /* every context holds its own reference */
	s->tls_key = st->key;
	s->tls_pkey = st->pkey;
	st->key = NULL;
	st->pkey = NULL;
	snprintf(s->tls_label, sizeof(s->tls_label), "%s", st->label);
	nhi_buf_free(&s->tls_chain);
	s->tls_chain = st->chain;
	memset(&st->chain, 0, sizeof(st->chain));
	pthread_mutex_lock(&s->ctx_mu);
	old = s->ssl_ctx;
	s->ssl_ctx = st->ctx;
	pthread_mutex_unlock(&s->ctx_mu);
	st->ctx = NULL;
	SSL_CTX_free(old); /* open connections keep theirs */
	pthread_mutex_unlock(&s->reload_mu);
	atomic_fetch_add(&s->metrics.reloads, 1);
	rv = nhi_server_audit(s, "tls_rotated", json_pack("{s:s, s:s, s:I}", "tls_key", st->label, "cert_sha256",
							   st->cert_sha256, "version", (json_int_t)st->version));
	return rv;
}

static void audit_or_log(struct nhi_server *s, const char *event, json_t *f);

static void token_keys_activate(struct nhi_server *s, struct staged *st)
{
	json_t *labels = json_array();
	size_t i;

	s->token_keys = st->tk;
	trust_swap(s, st->trust);
	for (i = 0; labels != NULL && i < st->tk.n; i++)
		json_array_append_new(labels, json_string(st->tk.labels[i]));
	audit_or_log(s, "token_keys_rotated",
		     json_pack("{s:s, s:s, s:s, s:s, s:I, s:o}", "signing_key", st->tk.signing, "kid",
			       nhi_token_issuer_kid(st->trust->issuer), "previous_signing_key", st->tk.previous,
			       "previous_kid", st->trust->issuer_before ? nhi_token_issuer_kid(st->trust->issuer_before) : "",
			       "sign_after", (json_int_t)st->tk.sign_after, "keys", labels));
	st->trust = NULL;
}

static nhi_err prepare_cb(void *arg, const struct nhi_update_info *info, const uint8_t *body, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_server *s = arg;
	struct staged *st = &s->watcher->st;
	bool needs_nhid;

	staged_drop(s, st); /* a leftover from a package that was not committed */
	st->kind = info->kind;
	st->version = info->version;
	/* the checks nhictl's offline apply makes too: both refuse a body alike */
	NHI_TRY(nhi_server_update_body_check(info, body, len, &needs_nhid));
	switch (info->kind) {
	case NHI_UPDATE_REVOCATION:
		NHI_TRY(nhi_trust_build(s, &s->token_keys, body, len, info->version, &st->trust));
		break;
	case NHI_UPDATE_TOKEN_KEYS:
		NHI_TRY(prepare_token_keys(s, body, len, st));
		break;
	case NHI_UPDATE_CERT_ROTATION:
		NHI_TRY(prepare_rotation(s, body, len, st));
		break;
	case NHI_UPDATE_IDENTITY_BACKUP:
		NHI_TRY(prepare_identity_backup(s, info, body, len));
		break;
	case NHI_UPDATE_TRUST_BUNDLE:   /* verified as the next bundle by the library */
	case NHI_UPDATE_MODEL_MANIFEST: /* stored for the inference component */
		break;
	default:
		NHI_FAIL(NHI_ERR_DENIED, "nhid does not take %s packages", nhi_update_kind_name(info->kind));
	}
	st->valid = true;
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		staged_drop(s, st);
	return rv;
}

static void audit_or_log(struct nhi_server *s, const char *event, json_t *f)
{
	if (nhi_server_audit(s, event, f) != NHI_OK)
		fprintf(stderr, "nhid: audit %s: %s\n", event, nhi_err_detail());
}

/*
 * The update_applied record of a committed package, durable on return (`f` stolen). Test
 * builds: NHI_TEST_UPDATE_RECORD_DELAY_MS=N makes it N ms slower, as on a slow disk, and
 * NHI_TEST_UPDATE_RECORD_FAIL=1 makes it fail, as a failed log would (test_rotation.sh:
 * an update is in service only once its record is, and never when it cannot be).
 */
static nhi_err record_applied(struct nhi_server *s, json_t *f)
{
#ifdef NHI_TEST_BUILD
	const char *v = getenv("NHI_TEST_UPDATE_RECORD_DELAY_MS");
	int ms = v != NULL ? atoi(v) : 0;
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

	if (ms > 0)
		nanosleep(&ts, NULL);
	if (getenv("NHI_TEST_UPDATE_RECORD_FAIL") != NULL) {
		json_decref(f);
		return nhi_err_set(NHI_ERR_IO, "audit log unusable (test build: NHI_TEST_UPDATE_RECORD_FAIL is set)");
	}
#endif
	return nhi_server_audit(s, "update_applied", f);
}

/* the committed package's change, staged by prepare, into service (its record is durable) */
static void take_into_service(struct nhi_server *s, struct staged *st, const struct nhi_update_info *in)
{
	char who[NHI_UPDATE_ID_BUF + 16];

	if (in->kind == NHI_UPDATE_TRUST_BUNDLE)
		s->watcher->bundle_changed = true; /* swapped in after the scan */
	if (!st->valid || st->kind != in->kind || st->version != in->version)
		return;
	if (in->kind == NHI_UPDATE_REVOCATION) {
		trust_swap(s, st->trust);
		st->trust = NULL;
	} else if (in->kind == NHI_UPDATE_TOKEN_KEYS) {
		token_keys_activate(s, st);
	} else if (in->kind == NHI_UPDATE_CERT_ROTATION && rotation_activate(s, st) != NHI_OK) {
		fprintf(stderr, "nhid: cert-rotation committed but not taken into service: %s (restart nhid)\n",
			nhi_err_detail());
	} else if (in->kind == NHI_UPDATE_IDENTITY_BACKUP) {
		/* the committed body is now the newest backup: a reload takes it */
		snprintf(who, sizeof(who), "update %s", in->id);
		if (nhi_server_reload(s, who) != NHI_OK)
			fprintf(stderr, "nhid: identity-backup committed but not loaded: %s (reload or restart nhid)\n",
				nhi_err_detail());
	}
}

/*
 * A committed package: its update_applied record `f` (stolen) durable, the mark in
 * update-state.json cleared, then the staged change into service. A record that
 * cannot be written keeps the change out of service (the next start records it,
 * marked recovered, and serves it) and says so as loudly as the log still allows.
 */
static void applied_cb(struct nhi_server *s, const char *base, const char *kind, const struct nhi_update_info *in,
		       json_t *f)
{
	struct staged *st = &s->watcher->st;
	char why[NHI_ERR_DETAIL_MAX], pkg_hex[65];

	/* committed: the keys prepare unwrapped are the server's now, kept whatever follows */
	st->key_created = false;
	memset(st->tk_created, 0, sizeof(st->tk_created));
	if (record_applied(s, f) != NHI_OK) {
		snprintf(why, sizeof(why), "%s", nhi_err_detail());
		nhi_hex(in->package_sha256, 32, pkg_hex);
		fprintf(stderr,
			"nhid: update %s (%s version %llu) is committed but NOT in service: its update_applied record "
			"could not be written: %s. Fix the audit log (docs/audit.md, Failures) and restart nhid: the "
			"start records it (recovered) before serving it\n",
			base, kind, (unsigned long long)in->version, why);
		audit_or_log(s, "update_not_in_force",
			     json_pack("{s:s, s:s, s:I, s:s, s:s}", "file", base, "kind", kind, "version",
				       (json_int_t)in->version, "package_sha256", pkg_hex, "detail", why));
		staged_drop(s, st);
		return;
	}
	nhi_update_crash_point(6); /* recorded, not yet marked: the next start records it again (recovered) */
	if (nhi_update_state_mark_recorded(s->cfg.state_dir, in->kind, in->package_sha256) != NHI_OK)
		fprintf(stderr,
			"nhid: update %s: its update_applied record is durable, but update-state.json could not say so "
			"(%s): the next start records it once more, marked recovered\n",
			base, nhi_err_detail());
	nhi_update_crash_point(7); /* recorded and marked, not yet in service: the next start serves it */
	take_into_service(s, st, in);
	staged_drop(s, st);
	fprintf(stderr, "nhid: update %s applied: %s version %llu\n", base, kind, (unsigned long long)in->version);
}

static void scan_cb(void *arg, const char *path, nhi_err e, const struct nhi_update_result *res)
{
	struct nhi_server *s = arg;
	struct nhi_watcher *w = s->watcher;
	struct staged *st = &w->st;
	const struct nhi_update_info *in = &res->info;
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	/* a package refused (or left in place) before its kind was parsed has none */
	const char *kind = in->kind_known ? nhi_update_kind_name(in->kind) : "unknown";
	/* left in place without a refusal (I/O, the clock rule): "not_processed", not "ok" */
	const char *reason = res->applied || res->why != NHI_UPDATE_OK ? nhi_update_reason_name(res->why)
								       : "not_processed";
	char body_hex[65], pkg_hex[65], detail[NHI_ERR_DETAIL_MAX];
	json_t *f;

	nhi_hex(in->body_sha256, 32, body_hex);
	nhi_hex(in->package_sha256, 32, pkg_hex);
	snprintf(detail, sizeof(detail), "%s", res->applied ? "" : res->detail[0] ? res->detail : nhi_err_detail());
	f = json_pack("{s:s, s:s, s:s, s:I, s:i, s:s, s:s, s:b, s:s, s:s}", "file", base, "id", in->id, "kind",
		      kind ? kind : "unknown", "version", (json_int_t)in->version, "signers", (int)in->signers,
		      "package_sha256", pkg_hex, "body_sha256", body_hex, "applied", res->applied ? 1 : 0, "reason",
		      reason, "moved_to", res->moved_to);
	if (f != NULL && !res->applied) {
		json_object_set_new(f, "detail", json_string(detail));
		json_object_set_new(f, "error", json_string(nhi_err_name(e)));
	}
	atomic_fetch_add(&s->metrics.updates[in->kind_known && (unsigned)in->kind < NHI_UPDATE_KIND__COUNT
						     ? (unsigned)in->kind
						     : NHI_UPDATE_KIND__COUNT][res->applied ? 0 : res->moved_to[0] ? 1 : 2],
			 1);
	if (res->applied && in->committed) {
		/* committed by an earlier run that stopped before the move: that run's
		 * update_applied record, or the one nhi_watcher_recover wrote at this start,
		 * is the package's; startup took it into service. Moved only. */
		w->last_failure[0] = '\0';
		staged_drop(s, st);
		audit_or_log(s, "update_found_committed", f);
		fprintf(stderr, "nhid: update %s found committed (applied before a restart): moved to applied/\n", base);
		return;
	}
	if (res->applied) {
		w->last_failure[0] = '\0';
		applied_cb(s, base, kind, in, f);
		return;
	}
	staged_drop(s, st);
	if (res->moved_to[0] == '\0') {
		/* left in place, retried next scan: audited once until something changes */
		if (strcmp(w->last_failure, detail) == 0) {
			json_decref(f);
			return;
		}
		snprintf(w->last_failure, sizeof(w->last_failure), "%s", detail);
		audit_or_log(s, "update_failed", f);
		fprintf(stderr, "nhid: update %s not processed (will retry): %s\n", base, detail);
		return;
	}
	audit_or_log(s, "update_rejected", f);
	fprintf(stderr, "nhid: update %s rejected: %s\n", base, detail);
}

static void scan_once(struct nhi_server *s)
{
	struct nhi_watcher *w = s->watcher;
	struct nhi_update_scan_stats stats = {0};
	struct nhi_update_apply_cfg c = {.state_dir = s->cfg.state_dir,
					 .bundle = s->bundle, /* only this thread replaces it */
					 .skew_s = s->cfg.clock_skew_s,
					 .kinds_allowed = KINDS_ACCEPTED,
					 .prepare = prepare_cb,
					 .prepare_arg = s};
	struct nhi_bundle *nb = NULL, *old;
	nhi_err e;

	w->bundle_changed = false;
	e = nhi_update_scan(&c, s->cfg.updates_dir, scan_cb, s, &stats);
	staged_drop(s, &w->st);
	if (e != NHI_OK && strcmp(w->last_failure, nhi_err_detail()) != 0) {
		snprintf(w->last_failure, sizeof(w->last_failure), "%s", nhi_err_detail());
		fprintf(stderr, "nhid: update scan of %s: %s\n", s->cfg.updates_dir, w->last_failure);
		audit_or_log(s, "update_scan_failed",
			     json_pack("{s:s, s:s}", "dir", s->cfg.updates_dir, "detail", w->last_failure));
	}
	if (!w->bundle_changed)
		return;
	if (nhi_update_load_bundle(s->cfg.state_dir, &nb) != NHI_OK) {
		fprintf(stderr, "nhid: the applied trust bundle cannot be loaded, serving the previous one: %s\n",
			nhi_err_detail());
		return;
	}
	audit_or_log(s, "trust_bundle_loaded", json_pack("{s:I, s:s}", "version", (json_int_t)nhi_bundle_version(nb),
							 "fingerprint", nhi_bundle_fingerprint(nb)));
	pthread_mutex_lock(&s->bundle_mu);
	old = s->bundle;
	s->bundle = nb;
	pthread_mutex_unlock(&s->bundle_mu);
	atomic_store(&s->metrics.trust_bundle_version, nhi_bundle_version(nb));
	atomic_store(&s->metrics.trust_bundle_expires_at, nhi_bundle_expires_at(nb));
	nhi_bundle_free(old);
}

static void *watcher_main(void *arg)
{
	struct nhi_server *s = arg;
	struct nhi_watcher *w = s->watcher;
	struct timespec until;

	pthread_mutex_lock(&w->mu);
	while (!w->stop) {
		pthread_mutex_unlock(&w->mu);
		scan_once(s); /* one thread: never two scans of the state dir at once */
		pthread_mutex_lock(&w->mu);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += (time_t)s->cfg.update_scan_s;
		while (!w->stop && pthread_cond_timedwait(&w->cond, &w->mu, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* ---- life cycle --------------------------------------------------------------------- */

static nhi_err committed_body(const char *state_dir, const struct nhi_update_state *st, enum nhi_update_kind k,
			      struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char path[4096];

	NHI_TRY(nhi_update_state_body_path(state_dir, st, k, path, sizeof(path)));
	rv = nhi_file_read(path, NHI_UPDATE_BODY_MAX_BYTES, out);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "the applied %s body %s", nhi_update_kind_name(k), path);
out:
	return rv;
}

static nhi_err watcher_new(struct nhi_server *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_watcher *w = calloc(1, sizeof(*w));
	pthread_condattr_t ca;

	NHI_CHECK(w != NULL, NHI_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&w->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &ca);
	pthread_condattr_destroy(&ca);
	s->watcher = w;
	rv = NHI_OK;
out:
	return rv;
}

/*
 * What the committed state puts into service, recorded at every startup: a crash
 * after an apply's commit but before its own audit record still leaves the package
 * (kind, version, payload SHA-256) on the record before anything is served with it.
 */
static nhi_err audit_in_force(struct nhi_server *s, const struct nhi_update_state *st)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *kinds = json_array(), *f;
	char hex[65];
	unsigned k;

	NHI_CHECK(kinds != NULL, NHI_ERR_NOMEM, "out of memory");
	for (k = 0; k < NHI_UPDATE_KIND__COUNT; k++) {
		if (st->version[k] == 0)
			continue;
		nhi_hex(st->package_sha256[k], 32, hex);
		NHI_CHECK(json_array_append_new(kinds, json_pack("{s:s, s:I, s:s}", "kind",
								  nhi_update_kind_name((enum nhi_update_kind)k), "version",
								  (json_int_t)st->version[k], "package_sha256", hex)) == 0,
			  NHI_ERR_NOMEM, "out of memory");
	}
	if (json_array_size(kinds) == 0 && s->bundle == NULL) {
		rv = NHI_OK;
		goto out;
	}
	f = json_pack("{s:O, s:s}", "kinds", kinds, "trust_bundle", s->bundle ? nhi_bundle_fingerprint(s->bundle) : "");
	NHI_CHECK(f != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_server_audit(s, "updates_in_force", f));
	rv = NHI_OK;
out:
	json_decref(kinds);
	return rv;
}

static nhi_err state_load(const char *state_dir, struct nhi_update_state *st)
{
	nhi_err rv = nhi_update_state_load(state_dir, st);

	if (rv != NHI_OK)
		nhi_err_wrap(rv, "update state in %s", state_dir);
	return rv;
}

nhi_err nhi_watcher_recover(struct nhi_server *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_update_state st;
	struct nhi_buf body = {0};
	char pkg_hex[65], body_hex[65];
	uint8_t h[32];
	json_t *f;
	unsigned k;

	NHI_TRY(state_load(s->cfg.state_dir, &st));
	for (k = 0; k < NHI_UPDATE_KIND__COUNT; k++) {
		const char *name = nhi_update_kind_name((enum nhi_update_kind)k);

		if (st.version[k] == 0 || !st.unrecorded[k])
			continue;
		nhi_buf_reset(&body);
		NHI_TRY(committed_body(s->cfg.state_dir, &st, (enum nhi_update_kind)k, &body));
		NHI_TRY(nhi_sha256(body.data, body.len, h));
		nhi_hex(h, 32, body_hex);
		nhi_hex(st.package_sha256[k], 32, pkg_hex);
		/* the file and id are the package's, not the commit's: the scan's
		 * update_found_committed names them if the package is still in updates_dir */
		f = json_pack("{s:s, s:I, s:s, s:s, s:b, s:s, s:b, s:s}", "kind", name, "version",
			      (json_int_t)st.version[k], "package_sha256", pkg_hex, "body_sha256", body_hex, "applied", 1,
			      "reason", "recovered", "recovered", 1, "detail",
			      "committed without a durable update_applied record (nhid stopped between the commit and "
			      "the record, or nhictl applied it offline): recorded at this start, before it is served");
		NHI_CHECK(f != NULL, NHI_ERR_NOMEM, "out of memory");
		rv = nhi_server_audit(s, "update_applied", f);
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "the update_applied record of the committed %s version %llu (nothing is served "
					 "until it is written)",
				     name, (unsigned long long)st.version[k]);
			goto out;
		}
		fprintf(stderr, "nhid: committed %s version %llu had no durable update_applied record: recorded now "
				"(recovered)\n",
			name, (unsigned long long)st.version[k]);
		if (s->audit != NULL &&
		    nhi_update_state_mark_recorded(s->cfg.state_dir, (enum nhi_update_kind)k, st.package_sha256[k]) != NHI_OK)
			fprintf(stderr,
				"nhid: %s version %llu: recorded, but update-state.json could not say so (%s): the next "
				"start records it once more\n",
				name, (unsigned long long)st.version[k], nhi_err_detail());
	}
	rv = NHI_OK;
out:
	nhi_buf_free(&body);
	return rv;
}

/* the TLS identity a committed cert-rotation puts in force; *version 0 when none is */
static nhi_err tls_in_force(const char *state_dir, const struct nhi_update_state *st, char label[65],
			    struct nhi_buf *chain, unsigned long long *version)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf body = {0};
	struct rotation r = {0};

	label[0] = '\0';
	*version = 0;
	if (st->version[NHI_UPDATE_CERT_ROTATION] > 0) {
		/* the committed rotation is the TLS identity, whatever cert_file says */
		NHI_TRY(committed_body(state_dir, st, NHI_UPDATE_CERT_ROTATION, &body));
		rv = rotation_parse(body.data, body.len, &r);
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "the applied cert-rotation (version %llu)",
				     (unsigned long long)st->version[NHI_UPDATE_CERT_ROTATION]);
			goto out;
		}
		NHI_TRY(nhi_buf_append(chain, r.chain, r.chain_len));
		memcpy(label, r.label, sizeof(r.label));
		*version = (unsigned long long)st->version[NHI_UPDATE_CERT_ROTATION];
	}
	rv = NHI_OK;
out:
	rotation_free(&r);
	nhi_buf_free(&body);
	return rv;
}

nhi_err nhi_server_tls_in_force(const char *state_dir, char label[65], struct nhi_buf *chain,
				unsigned long long *version)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_update_state st;

	label[0] = '\0';
	*version = 0;
	NHI_TRY(state_load(state_dir, &st));
	NHI_TRY(tls_in_force(state_dir, &st, label, chain, version));
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_server_token_keys_in_force(const struct nhi_server_config *cfg, struct nhi_token_keys *out,
				       unsigned long long *version)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_update_state st;

	*version = 0;
	NHI_TRY(state_load(cfg->state_dir, &st));
	NHI_TRY(token_keys_in_force(cfg, &st, out, version));
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_watcher_load(struct nhi_server *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_update_state st;
	struct nhi_buf body = {0};
	char label[65];
	unsigned long long rot_version = 0, tk_version = 0;

	NHI_TRY(state_load(s->cfg.state_dir, &st));
	if (s->cfg.updates_dir[0] != '\0') {
		rv = nhi_update_load_bundle(s->cfg.state_dir, &s->bundle);
		if (rv == NHI_ERR_NOT_FOUND)
			NHI_FAIL(NHI_ERR_CONFIG,
				 "updates_dir is set but state_dir %s holds no trust bundle: install the ceremony's with "
				 "`nhictl update init --state-dir %s --bundle b1.json --pin <fingerprint>`, or remove "
				 "updates_dir to turn updates off (%s)",
				 s->cfg.state_dir, s->cfg.state_dir, nhi_err_detail());
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "trust bundle in state_dir %s", s->cfg.state_dir);
			goto out;
		}
		atomic_store(&s->metrics.trust_bundle_version, nhi_bundle_version(s->bundle));
		atomic_store(&s->metrics.trust_bundle_expires_at, nhi_bundle_expires_at(s->bundle));
		/* made now, before the signal thread can ask it to stop */
		NHI_TRY(watcher_new(s));
	}
	NHI_TRY(audit_in_force(s, &st));
	memset(&s->token_keys, 0, sizeof(s->token_keys));
	NHI_TRY(token_keys_in_force(&s->cfg, &st, &s->token_keys, &tk_version));
	if (st.version[NHI_UPDATE_REVOCATION] > 0) {
		NHI_TRY(committed_body(s->cfg.state_dir, &st, NHI_UPDATE_REVOCATION, &body));
		rv = nhi_trust_build(s, &s->token_keys, body.data, body.len, st.version[NHI_UPDATE_REVOCATION],
				     &s->trust);
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "the applied revocation (version %llu)",
				     (unsigned long long)st.version[NHI_UPDATE_REVOCATION]);
			goto out;
		}
		nhi_buf_free(&body);
	} else {
		NHI_TRY(nhi_trust_build(s, &s->token_keys, NULL, 0, 0, &s->trust));
	}
	NHI_TRY(tls_in_force(s->cfg.state_dir, &st, label, &s->tls_chain, &rot_version));
	if (rot_version > 0)
		snprintf(s->tls_label, sizeof(s->tls_label), "%s", label);
	rv = NHI_OK;
out:
	nhi_buf_free(&body);
	return rv;
}

nhi_err nhi_watcher_start(struct nhi_server *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_watcher *w = s->watcher;

	if (w == NULL || w->started)
		return NHI_OK;
	NHI_CHECK(pthread_create(&w->thread, NULL, watcher_main, s) == 0, NHI_ERR_INTERNAL,
		  "cannot start the update scan thread");
	w->started = true;
	rv = NHI_OK;
out:
	return rv;
}

void nhi_watcher_stop(struct nhi_server *s)
{
	struct nhi_watcher *w = s->watcher;

	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

void nhi_watcher_free(struct nhi_server *s)
{
	struct nhi_watcher *w = s->watcher;

	if (w == NULL)
		return;
	nhi_watcher_stop(s);
	if (w->started)
		pthread_join(w->thread, NULL);
	staged_drop(s, &w->st);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->mu);
	free(w);
	s->watcher = NULL;
}
