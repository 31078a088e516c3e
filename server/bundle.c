/*
 * server/bundle.c — the trust bundle: parse, self-signature threshold, and TUF-style
 * root rotation (TUF specification §5.3 "Update the root role": version N+1 is
 * trusted only when signed by a threshold of N's keys AND of its own, and its
 * version is exactly N+1). docs/updates.md.
 */
#include "update_internal.h"
#include "../common/pkey.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

struct nhi_bundle {
	uint64_t version;
	int64_t expires_at;
	unsigned threshold;
	struct nhi_keyset *signers, *manifest, *peers;
	struct nhi_buf doc;     /* the signed document as received */
	struct nhi_envelope env; /* its parsed envelope (payload + signatures) */
	struct nhi_buf ca_pem;
	char *jwks;
	char fingerprint[65];
};

static const char *const reason_names[NHI_BUNDLE_E__COUNT] = {
	"ok", "format", "pin", "self_threshold", "prev_threshold", "version", "expired",
};

const char *nhi_bundle_reason_name(enum nhi_bundle_reason r)
{
	return (unsigned)r < NHI_BUNDLE_E__COUNT ? reason_names[r] : "unknown";
}

void nhi_bundle_free(struct nhi_bundle *b)
{
	if (b == NULL)
		return;
	nhi_keyset_free(b->signers);
	nhi_keyset_free(b->manifest);
	nhi_keyset_free(b->peers);
	nhi_buf_free(&b->doc);
	nhi_envelope_free(&b->env);
	nhi_buf_free(&b->ca_pem);
	free(b->jwks);
	free(b);
}

/* [{"kid": thumbprint, "jwk": {...}}, ...] into a keyset; kid must match the key. */
static nhi_err key_list(json_t *p, const char *name, bool required, struct nhi_keyset **out)
{
	static const char *const known[] = {"kid", "jwk", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_keyset *ks = NULL;
	json_t *arr = json_object_get(p, name), *e, *kid;
	EVP_PKEY *pk = NULL;
	char what[96], tp[44];
	size_t i;

	NHI_TRY(nhi_keyset_new(&ks));
	NHI_CHECK(arr != NULL || !required, NHI_ERR_FORMAT, "bundle: '%s' is required", name);
	NHI_CHECK(arr == NULL || json_is_array(arr), NHI_ERR_FORMAT, "bundle: '%s' is not an array", name);
	NHI_CHECK(json_array_size(arr) <= NHI_BUNDLE_KEYS_MAX, NHI_ERR_FORMAT, "bundle: more than %d %s",
		  NHI_BUNDLE_KEYS_MAX, name);
	json_array_foreach (arr, i, e) {
		snprintf(what, sizeof(what), "bundle %s[%zu]", name, i);
		NHI_CHECK(json_is_object(e), NHI_ERR_FORMAT, "%s is not an object", what);
		NHI_TRY(nhi_json_only(e, what, known));
		NHI_TRY(nhi_jwk_parse(json_object_get(e, "jwk"), what, &pk));
		NHI_TRY(nhi_pkey_thumbprint(pk, tp));
		kid = json_object_get(e, "kid");
		NHI_CHECK(json_is_string(kid) && strcmp(json_string_value(kid), tp) == 0, NHI_ERR_FORMAT,
			  "%s: kid is not the key's RFC 7638 thumbprint %s", what, tp);
		if (nhi_keyset_add(ks, pk) != NHI_OK)
			NHI_FAIL(NHI_ERR_FORMAT, "%s: %s", what, nhi_err_detail());
		EVP_PKEY_free(pk);
		pk = NULL;
	}
	*out = ks;
	ks = NULL;
	rv = NHI_OK;
out:
	EVP_PKEY_free(pk);
	nhi_keyset_free(ks);
	return rv;
}

static nhi_err ca_certs(json_t *p, struct nhi_buf *pem)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *arr = json_object_get(p, "ca_certs"), *e;
	X509 *x = NULL;
	BIO *b = NULL;
	size_t i;

	NHI_CHECK(json_is_array(arr) && json_array_size(arr) >= 1 && json_array_size(arr) <= NHI_BUNDLE_CA_CERTS_MAX,
		  NHI_ERR_FORMAT, "bundle: ca_certs must be an array of 1..%d PEM certificates", NHI_BUNDLE_CA_CERTS_MAX);
	json_array_foreach (arr, i, e) {
		NHI_CHECK(json_is_string(e) && json_string_length(e) <= NHI_CERT_MAX_BYTES, NHI_ERR_FORMAT,
			  "bundle: ca_certs[%zu] is not a PEM string", i);
		b = BIO_new_mem_buf(json_string_value(e), (int)json_string_length(e));
		NHI_CHECK_SSL(b != NULL, NHI_ERR_NOMEM, "BIO_new_mem_buf");
		x = PEM_read_bio_X509(b, NULL, NULL, NULL);
		NHI_CHECK_SSL(x != NULL, NHI_ERR_FORMAT, "bundle: ca_certs[%zu] is not a PEM certificate", i);
		X509_free(x);
		x = NULL;
		BIO_free(b);
		b = NULL;
		NHI_TRY(nhi_buf_append(pem, json_string_value(e), json_string_length(e)));
		if (pem->len > 0 && pem->data[pem->len - 1] != '\n')
			NHI_TRY(nhi_buf_append_str(pem, "\n"));
	}
	rv = NHI_OK;
out:
	X509_free(x);
	BIO_free(b);
	return rv;
}

/* Parse and self-verify. */
static nhi_err bundle_load(const uint8_t *doc, size_t len, struct nhi_bundle **out, enum nhi_bundle_reason *why)
{
	static const char *const known[] = {"type",	 "version",	   "expires_at", "ca_certs", "jwks",
					    "update_signers", "threshold", "peer_keys",	 "manifest_keys", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_bundle *b = calloc(1, sizeof(*b));
	json_t *p = NULL, *m;
	uint8_t h[32];
	long long v;
	unsigned n;

	*why = NHI_BUNDLE_E_FORMAT;
	NHI_CHECK(b != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_envelope_parse(doc, len, NHI_BUNDLE_MAX_BYTES, &b->env));
	NHI_TRY(nhi_buf_append(&b->doc, doc, len));
	NHI_TRY(nhi_sha256(b->env.payload.data, b->env.payload.len, h));
	nhi_hex(h, 32, b->fingerprint);
	NHI_TRY(nhi_json_object(b->env.payload.data, b->env.payload.len, "bundle payload", &p));
	NHI_TRY(nhi_json_only(p, "bundle payload", known));
	m = json_object_get(p, "type");
	NHI_CHECK(json_is_string(m) && strcmp(json_string_value(m), "nhid-trust-bundle") == 0, NHI_ERR_FORMAT,
		  "bundle: type is not nhid-trust-bundle");
	NHI_TRY(nhi_json_int(p, "bundle", "version", 1, (long long)NHI_UPDATE_VERSION_MAX, &v));
	b->version = (uint64_t)v;
	NHI_TRY(nhi_json_int(p, "bundle", "expires_at", 1, NHI_UPDATE_TIME_MAX_S, &v));
	b->expires_at = v;
	NHI_TRY(ca_certs(p, &b->ca_pem));
	m = json_object_get(p, "jwks");
	NHI_CHECK(json_is_object(m) && json_is_array(json_object_get(m, "keys")), NHI_ERR_FORMAT,
		  "bundle: jwks must be a JWK Set {\"keys\":[...]}");
	b->jwks = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
	NHI_CHECK(b->jwks != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(key_list(p, "update_signers", true, &b->signers));
	NHI_TRY(key_list(p, "peer_keys", false, &b->peers));
	NHI_TRY(key_list(p, "manifest_keys", false, &b->manifest));
	NHI_TRY(nhi_json_int(p, "bundle", "threshold", 1, NHI_BUNDLE_KEYS_MAX, &v));
	b->threshold = (unsigned)v;
	NHI_CHECK(b->threshold <= nhi_keyset_count(b->signers), NHI_ERR_FORMAT,
		  "bundle: threshold %u is more than the %zu update signers", b->threshold,
		  nhi_keyset_count(b->signers));
	NHI_TRY(nhi_envelope_count(NHI_DOC_BUNDLE, &b->env, b->signers, &n));
	if (n < b->threshold) {
		*why = NHI_BUNDLE_E_SELF_THRESHOLD;
		NHI_FAIL(NHI_ERR_VERIFY, "bundle v%llu refused (self_threshold): %u valid signature(s) by its own "
					 "update signers, %u required",
			 (unsigned long long)b->version, n, b->threshold);
	}
	*why = NHI_BUNDLE_OK;
	*out = b;
	b = NULL;
	rv = NHI_OK;
out:
	json_decref(p);
	nhi_bundle_free(b);
	return rv;
}

nhi_err nhi_bundle_parse(const uint8_t *doc, size_t len, struct nhi_bundle **out, enum nhi_bundle_reason *why)
{
	return bundle_load(doc, len, out, why);
}

/* Rules for cur -> next (both parsed and self-signed). */
static nhi_err check_step(const struct nhi_bundle *cur, const struct nhi_bundle *next, enum nhi_bundle_reason *why)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	unsigned n;

	if (next->version != cur->version + 1) {
		*why = NHI_BUNDLE_E_VERSION;
		NHI_FAIL(cur->version >= next->version ? NHI_ERR_ROLLBACK : NHI_ERR_VERIFY,
			 "bundle v%llu refused (version): the trusted bundle is v%llu, so only v%llu is accepted "
			 "(versions are never skipped)",
			 (unsigned long long)next->version, (unsigned long long)cur->version,
			 (unsigned long long)cur->version + 1);
	}
	NHI_TRY(nhi_envelope_count(NHI_DOC_BUNDLE, &next->env, cur->signers, &n));
	if (n < cur->threshold) {
		*why = NHI_BUNDLE_E_PREV_THRESHOLD;
		NHI_FAIL(NHI_ERR_VERIFY,
			 "bundle v%llu refused (prev_threshold): %u valid signature(s) by v%llu's update signers, "
			 "%u required",
			 (unsigned long long)next->version, n, (unsigned long long)cur->version, cur->threshold);
	}
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err check_expiry(const struct nhi_bundle *b, int64_t now, enum nhi_bundle_reason *why)
{
	if (now >= b->expires_at) {
		*why = NHI_BUNDLE_E_EXPIRED;
		return nhi_err_set(NHI_ERR_EXPIRED,
				   "bundle v%llu refused (expired): expired at %lld, now is %lld: a newer bundle must "
				   "be brought in",
				   (unsigned long long)b->version, (long long)b->expires_at, (long long)now);
	}
	return NHI_OK;
}

nhi_err nhi_bundle_verify_next(const struct nhi_bundle *cur, const uint8_t *doc, size_t len, int64_t now,
			       struct nhi_bundle **out, enum nhi_bundle_reason *why)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_bundle *b = NULL;

	NHI_TRY(bundle_load(doc, len, &b, why));
	NHI_TRY(check_step(cur, b, why));
	NHI_TRY(check_expiry(b, now, why));
	*out = b;
	b = NULL;
	rv = NHI_OK;
out:
	nhi_bundle_free(b);
	return rv;
}

nhi_err nhi_bundle_verify_chain(const uint8_t *const *docs, const size_t *lens, size_t n, const char *pin_hex,
				int64_t now, struct nhi_bundle **out, enum nhi_bundle_reason *why, size_t *bad_index)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_bundle *cur = NULL, *next = NULL;
	size_t i;

	*bad_index = 0;
	*why = NHI_BUNDLE_E_FORMAT;
	NHI_CHECK(n >= 1 && n <= NHI_BUNDLE_CHAIN_MAX, NHI_ERR_ARG, "a chain of 1..%d bundles is needed",
		  NHI_BUNDLE_CHAIN_MAX);
	NHI_TRY(bundle_load(docs[0], lens[0], &cur, why));
	if (pin_hex != NULL && (strlen(pin_hex) != 64 || !nhi_ct_equal(pin_hex, cur->fingerprint, 64))) {
		*why = NHI_BUNDLE_E_PIN;
		NHI_FAIL(NHI_ERR_VERIFY,
			 "bundle v%llu refused (pin): its fingerprint is %s, not the pinned %.64s: start the chain at "
			 "the pinned bundle",
			 (unsigned long long)cur->version, cur->fingerprint, pin_hex);
	}
	for (i = 1; i < n; i++) {
		*bad_index = i;
		NHI_TRY(bundle_load(docs[i], lens[i], &next, why));
		NHI_TRY(check_step(cur, next, why));
		nhi_bundle_free(cur);
		cur = next;
		next = NULL;
	}
	NHI_TRY(check_expiry(cur, now, why));
	*out = cur;
	cur = NULL;
	rv = NHI_OK;
out:
	nhi_bundle_free(cur);
	nhi_bundle_free(next);
	return rv;
}

uint64_t nhi_bundle_version(const struct nhi_bundle *b) { return b->version; }
int64_t nhi_bundle_expires_at(const struct nhi_bundle *b) { return b->expires_at; }
unsigned nhi_bundle_threshold(const struct nhi_bundle *b) { return b->threshold; }
const struct nhi_keyset *nhi_bundle_update_signers(const struct nhi_bundle *b) { return b->signers; }
const struct nhi_keyset *nhi_bundle_manifest_keys(const struct nhi_bundle *b) { return b->manifest; }
const struct nhi_keyset *nhi_bundle_peer_keys(const struct nhi_bundle *b) { return b->peers; }
const struct nhi_buf *nhi_bundle_document(const struct nhi_bundle *b) { return &b->doc; }
const char *nhi_bundle_fingerprint(const struct nhi_bundle *b) { return b->fingerprint; }
const char *nhi_bundle_ca_pem(const struct nhi_bundle *b) { return (const char *)b->ca_pem.data; }
const char *nhi_bundle_jwks(const struct nhi_bundle *b) { return b->jwks; }

/* [{"kid","jwk"}] of keys. */
static nhi_err key_list_json(EVP_PKEY *const *keys, size_t n, json_t **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *arr = json_array(), *jwk = NULL, *e;
	char kid[44];
	size_t i;

	NHI_CHECK(arr != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK(n <= NHI_BUNDLE_KEYS_MAX, NHI_ERR_LIMIT, "more than %d keys in one list", NHI_BUNDLE_KEYS_MAX);
	for (i = 0; i < n; i++) {
		NHI_TRY(nhi_pkey_thumbprint(keys[i], kid));
		NHI_TRY(nhi_jwk_json(keys[i], &jwk));
		e = json_pack("{s:s, s:o}", "kid", kid, "jwk", jwk);
		jwk = NULL; /* stolen by "o", even on failure */
		NHI_CHECK(e != NULL && json_array_append_new(arr, e) == 0, NHI_ERR_NOMEM, "out of memory");
	}
	*out = arr;
	arr = NULL;
	rv = NHI_OK;
out:
	json_decref(jwk);
	json_decref(arr);
	return rv;
}

nhi_err nhi_bundle_create(const struct nhi_bundle_create_req *req, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *certs = json_array(), *jwks = NULL, *signers = NULL, *peers = NULL, *man = NULL;
	struct nhi_buf one = {0};
	BIO *in = NULL, *mem = NULL;
	X509 *x = NULL;
	char *data;
	long dlen;

	NHI_CHECK(certs != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK(req->version >= 1 && req->version <= NHI_UPDATE_VERSION_MAX, NHI_ERR_ARG, "version must be >= 1");
	NHI_CHECK(req->expires_at > 0 && req->expires_at <= NHI_UPDATE_TIME_MAX_S, NHI_ERR_ARG,
		  "expires_at out of range");
	NHI_CHECK(req->n_signers >= 1 && req->threshold >= 1 && req->threshold <= req->n_signers, NHI_ERR_ARG,
		  "threshold %u with %zu update signers: need 1 <= threshold <= signers", req->threshold,
		  req->n_signers);
	in = BIO_new_mem_buf(req->ca_pem, -1);
	NHI_CHECK_SSL(in != NULL, NHI_ERR_NOMEM, "BIO_new_mem_buf");
	while ((x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
		NHI_CHECK(json_array_size(certs) < NHI_BUNDLE_CA_CERTS_MAX, NHI_ERR_LIMIT, "more than %d CA certificates",
			  NHI_BUNDLE_CA_CERTS_MAX);
		mem = BIO_new(BIO_s_mem());
		NHI_CHECK_SSL(mem != NULL && PEM_write_bio_X509(mem, x) == 1, NHI_ERR_CRYPTO, "PEM_write_bio_X509");
		dlen = BIO_get_mem_data(mem, &data);
		NHI_CHECK(json_array_append_new(certs, json_stringn(data, (size_t)dlen)) == 0, NHI_ERR_NOMEM,
			  "out of memory");
		BIO_free(mem);
		mem = NULL;
		X509_free(x);
		x = NULL;
	}
	ERR_clear_error();
	NHI_CHECK(json_array_size(certs) >= 1, NHI_ERR_FORMAT, "no PEM certificate in the CA input");
	NHI_TRY(nhi_json_object((const uint8_t *)req->jwks, strlen(req->jwks), "JWKS", &jwks));
	NHI_CHECK(json_is_array(json_object_get(jwks, "keys")), NHI_ERR_FORMAT, "the JWKS has no 'keys' array");
	NHI_TRY(key_list_json(req->signers, req->n_signers, &signers));
	NHI_TRY(key_list_json(req->peers, req->n_peers, &peers));
	NHI_TRY(key_list_json(req->manifest, req->n_manifest, &man));
	NHI_TRY(nhi_doc_wrap_json(json_pack("{s:s, s:I, s:I, s:O, s:O, s:O, s:i, s:O, s:O}", "type",
					    "nhid-trust-bundle", "version", (json_int_t)req->version, "expires_at",
					    (json_int_t)req->expires_at, "ca_certs", certs, "jwks", jwks, "update_signers",
					    signers, "threshold", (int)req->threshold, "peer_keys", peers, "manifest_keys",
					    man),
				  out));
	rv = NHI_OK;
out:
	json_decref(certs);
	json_decref(jwks);
	json_decref(signers);
	json_decref(peers);
	json_decref(man);
	nhi_buf_free(&one);
	BIO_free(in);
	BIO_free(mem);
	X509_free(x);
	return rv;
}
