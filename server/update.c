/*
 * server/update.c — keysets, the signed envelope shared by updates, bundles and
 * manifests, update packages (create, verify) and their atomic apply into
 * state_dir with rollback protection and the clock rule. docs/updates.md.
 */
#include "update_internal.h"
#include "../common/pkey.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_FILE "update-state.json"
#define BUNDLE_FILE "trust-bundle.json"
#define STATE_FORMAT 1

#ifdef NHI_TEST_BUILD
void nhi_update_crash_point(int k)
{
	const char *s = getenv("NHI_TEST_UPDATE_CRASH_AT");

	if (s != NULL && atoi(s) == k)
		_exit(86);
}
#endif
#define crash_point(k) nhi_update_crash_point(k)

/* ---- keysets ------------------------------------------------------------------ */

struct nhi_keyset {
	size_t n;
	char kid[NHI_BUNDLE_KEYS_MAX][44];
	EVP_PKEY *pk[NHI_BUNDLE_KEYS_MAX];
};

nhi_err nhi_keyset_new(struct nhi_keyset **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_keyset *ks = calloc(1, sizeof(*ks));

	NHI_CHECK(ks != NULL, NHI_ERR_NOMEM, "out of memory");
	*out = ks;
	rv = NHI_OK;
out:
	return rv;
}

void nhi_keyset_free(struct nhi_keyset *ks)
{
	size_t i;

	if (ks == NULL)
		return;
	for (i = 0; i < ks->n; i++)
		EVP_PKEY_free(ks->pk[i]);
	free(ks);
}

nhi_err nhi_keyset_add(struct nhi_keyset *ks, EVP_PKEY *pub)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t raw[65];
	size_t len = 0;
	char kid[44];

	NHI_CHECK(ks->n < NHI_BUNDLE_KEYS_MAX, NHI_ERR_LIMIT, "more than %d keys in one set", NHI_BUNDLE_KEYS_MAX);
	NHI_TRY(nhi_pkey_raw(pub, raw, &len));
	NHI_CHECK(len == 65, NHI_ERR_ARG, "not an EC P-256 key: signers use ES256 only");
	NHI_TRY(nhi_pkey_thumbprint(pub, kid));
	NHI_CHECK(nhi_keyset_get(ks, kid) == NULL, NHI_ERR_EXISTS, "key %s is listed twice", kid);
	NHI_CHECK_SSL(EVP_PKEY_up_ref(pub) == 1, NHI_ERR_CRYPTO, "EVP_PKEY_up_ref");
	memcpy(ks->kid[ks->n], kid, sizeof(kid));
	ks->pk[ks->n++] = pub;
	rv = NHI_OK;
out:
	return rv;
}

size_t nhi_keyset_count(const struct nhi_keyset *ks)
{
	return ks == NULL ? 0 : ks->n;
}

static ssize_t keyset_index(const struct nhi_keyset *ks, const char *kid)
{
	size_t i;

	for (i = 0; ks != NULL && i < ks->n; i++)
		if (strcmp(ks->kid[i], kid) == 0)
			return (ssize_t)i;
	return -1;
}

EVP_PKEY *nhi_keyset_get(const struct nhi_keyset *ks, const char *kid)
{
	ssize_t i = keyset_index(ks, kid);

	return i < 0 ? NULL : ks->pk[i];
}

/* ---- JSON helpers -------------------------------------------------------------- */

nhi_err nhi_json_object(const uint8_t *p, size_t len, const char *what, json_t **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_error_t jerr;
	json_t *o = NULL;

	o = json_loadb((const char *)p, len, JSON_REJECT_DUPLICATES, &jerr);
	NHI_CHECK(o != NULL, NHI_ERR_FORMAT, "%s is not valid JSON (line %d column %d: %s)", what, jerr.line,
		  jerr.column, jerr.text);
	NHI_CHECK(json_is_object(o), NHI_ERR_FORMAT, "%s is not a JSON object", what);
	*out = o;
	o = NULL;
	rv = NHI_OK;
out:
	json_decref(o);
	return rv;
}

nhi_err nhi_json_only(json_t *o, const char *what, const char *const *known)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *k;
	json_t *v;
	size_t i;

	json_object_foreach (o, k, v) {
		(void)v;
		for (i = 0; known[i] != NULL && strcmp(known[i], k) != 0; i++)
			;
		NHI_CHECK(known[i] != NULL, NHI_ERR_FORMAT, "%s has an unknown member '%.64s'", what, k);
	}
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_json_int(json_t *o, const char *what, const char *name, long long lo, long long hi, long long *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *m = json_object_get(o, name);

	NHI_CHECK(json_is_integer(m), NHI_ERR_FORMAT, "%s: '%s' missing or not an integer", what, name);
	NHI_CHECK(json_integer_value(m) >= lo && json_integer_value(m) <= hi, NHI_ERR_FORMAT,
		  "%s: '%s' is %lld, outside %lld..%lld", what, name, (long long)json_integer_value(m), lo, hi);
	*out = json_integer_value(m);
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err b64_member(json_t *o, const char *what, const char *name, size_t want, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *m = json_object_get(o, name);

	NHI_CHECK(json_is_string(m), NHI_ERR_FORMAT, "%s: '%s' missing or not a string", what, name);
	if (nhi_b64url_decode(json_string_value(m), json_string_length(m), out) != NHI_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "%s: '%s' is not strict base64url", what, name);
	NHI_CHECK(want == 0 || out->len == want, NHI_ERR_FORMAT, "%s: '%s' is %zu bytes, not %zu", what, name,
		  out->len, want);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_jwk_parse(json_t *jwk, const char *what, EVP_PKEY **out)
{
	static const char *const known[] = {"kty", "crv", "x", "y", "kid", "use", "alg", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf x = {0}, y = {0};
	json_t *m;
	uint8_t raw[65];

	NHI_CHECK(json_is_object(jwk), NHI_ERR_FORMAT, "%s: jwk is not an object", what);
	/* a "d" (or any other member) is refused: private keys never travel in a bundle */
	NHI_TRY(nhi_json_only(jwk, what, known));
	m = json_object_get(jwk, "kty");
	NHI_CHECK(json_is_string(m) && strcmp(json_string_value(m), "EC") == 0, NHI_ERR_FORMAT,
		  "%s: kty must be EC", what);
	m = json_object_get(jwk, "crv");
	NHI_CHECK(json_is_string(m) && strcmp(json_string_value(m), "P-256") == 0, NHI_ERR_FORMAT,
		  "%s: crv must be P-256", what);
	m = json_object_get(jwk, "alg");
	NHI_CHECK(m == NULL || (json_is_string(m) && strcmp(json_string_value(m), "ES256") == 0), NHI_ERR_FORMAT,
		  "%s: alg must be ES256 or absent", what);
	m = json_object_get(jwk, "use");
	NHI_CHECK(m == NULL || (json_is_string(m) && strcmp(json_string_value(m), "sig") == 0), NHI_ERR_FORMAT,
		  "%s: use must be sig or absent", what);
	NHI_TRY(b64_member(jwk, what, "x", 32, &x));
	NHI_TRY(b64_member(jwk, what, "y", 32, &y));
	raw[0] = 0x04;
	memcpy(raw + 1, x.data, 32);
	memcpy(raw + 33, y.data, 32);
	if (nhi_pkey_from_raw(NHI_PKEY_P256, raw, sizeof(raw), out) != NHI_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "%s: not a point on P-256: %s", what, nhi_err_detail());
	rv = NHI_OK;
out:
	nhi_buf_free(&x);
	nhi_buf_free(&y);
	return rv;
}

nhi_err nhi_jwk_json(EVP_PKEY *pk, json_t **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf jwk = {0};

	NHI_TRY(nhi_pkey_jwk(pk, &jwk));
	NHI_TRY(nhi_json_object(jwk.data, jwk.len, "JWK", out));
	rv = NHI_OK;
out:
	nhi_buf_free(&jwk);
	return rv;
}

/* ---- the signed envelope --------------------------------------------------------- */

static const char *doc_context(enum nhi_doc_type t)
{
	switch (t) {
	case NHI_DOC_UPDATE: return "nhid-update-v1";
	case NHI_DOC_BUNDLE: return "nhid-bundle-v1";
	case NHI_DOC_MANIFEST: return "nhid-manifest-v1";
	}
	return NULL;
}

static size_t doc_max(enum nhi_doc_type t)
{
	switch (t) {
	case NHI_DOC_UPDATE: return NHI_UPDATE_PACKAGE_MAX_BYTES;
	case NHI_DOC_BUNDLE: return NHI_BUNDLE_MAX_BYTES;
	case NHI_DOC_MANIFEST: return NHI_MANIFEST_MAX_BYTES;
	}
	return 0;
}

void nhi_envelope_free(struct nhi_envelope *env)
{
	nhi_buf_free(&env->payload);
	env->n_sigs = 0;
}

nhi_err nhi_envelope_parse(const uint8_t *doc, size_t len, size_t max, struct nhi_envelope *env)
{
	static const char *const known[] = {"payload", "signatures", NULL};
	static const char *const sig_known[] = {"keyid", "sig", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf sig = {0};
	json_t *o = NULL, *sigs, *s, *kid;
	size_t i;

	memset(env, 0, sizeof(*env));
	NHI_CHECK(len <= max, NHI_ERR_LIMIT, "document is %zu bytes, over the %zu-byte limit", len, max);
	NHI_TRY(nhi_json_object(doc, len, "signed document", &o));
	NHI_TRY(nhi_json_only(o, "signed document", known));
	NHI_TRY(b64_member(o, "signed document", "payload", 0, &env->payload));
	NHI_CHECK(env->payload.len > 0, NHI_ERR_FORMAT, "signed document: payload is empty");
	sigs = json_object_get(o, "signatures");
	NHI_CHECK(json_is_array(sigs), NHI_ERR_FORMAT, "signed document: 'signatures' missing or not an array");
	NHI_CHECK(json_array_size(sigs) <= NHI_UPDATE_SIGNATURES_MAX, NHI_ERR_FORMAT,
		  "signed document: %zu signatures, over the limit of %d", json_array_size(sigs),
		  NHI_UPDATE_SIGNATURES_MAX);
	json_array_foreach (sigs, i, s) {
		NHI_CHECK(json_is_object(s), NHI_ERR_FORMAT, "signature %zu is not an object", i);
		NHI_TRY(nhi_json_only(s, "signature", sig_known));
		kid = json_object_get(s, "keyid");
		NHI_CHECK(json_is_string(kid) && json_string_length(kid) == 43, NHI_ERR_FORMAT,
			  "signature %zu: keyid must be a 43-character RFC 7638 thumbprint", i);
		nhi_buf_reset(&sig);
		if (b64_member(s, "signature", "sig", 64, &sig) != NHI_OK)
			NHI_FAIL(NHI_ERR_FORMAT, "signature %zu: sig is not 64 bytes of base64url R||S (ES256)", i);
		memcpy(env->keyid[i], json_string_value(kid), 44);
		memcpy(env->sig[i], sig.data, 64);
		env->n_sigs = i + 1;
	}
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_envelope_free(env);
	nhi_buf_free(&sig);
	json_decref(o);
	return rv;
}

static nhi_err signing_input(enum nhi_doc_type t, const struct nhi_buf *payload, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *ctx = doc_context(t);

	NHI_CHECK(ctx != NULL, NHI_ERR_ARG, "unknown document type %d", (int)t);
	NHI_TRY(nhi_buf_append(out, ctx, strlen(ctx) + 1)); /* with its NUL */
	NHI_TRY(nhi_buf_append(out, payload->data, payload->len));
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_envelope_count(enum nhi_doc_type t, const struct nhi_envelope *env, const struct nhi_keyset *ks,
			   unsigned *n_valid)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	bool counted[NHI_BUNDLE_KEYS_MAX] = {false};
	struct nhi_buf msg = {0};
	unsigned n = 0;
	ssize_t k;
	size_t i;

	NHI_TRY(signing_input(t, &env->payload, &msg));
	for (i = 0; i < env->n_sigs; i++) {
		k = keyset_index(ks, env->keyid[i]);
		/* a signer outside the set is ignored; a key counts once however often it
		 * signed (a repeated signature must never stand in for a second custodian) */
		if (k < 0 || counted[k])
			continue;
		if (nhi_pkey_es256_verify(ks->pk[k], msg.data, msg.len, env->sig[i]) != NHI_OK)
			continue;
		counted[k] = true;
		n++;
	}
	nhi_err_clear();
	*n_valid = n;
	rv = NHI_OK;
out:
	nhi_buf_free(&msg);
	return rv;
}

nhi_err nhi_doc_count_signers(enum nhi_doc_type t, const uint8_t *doc, size_t len, const struct nhi_keyset *ks,
			      unsigned *n_valid)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;

	NHI_TRY(nhi_envelope_parse(doc, len, doc_max(t), &env));
	rv = nhi_envelope_count(t, &env, ks, n_valid);
	nhi_envelope_free(&env);
out:
	return rv;
}

nhi_err nhi_doc_payload(enum nhi_doc_type t, const uint8_t *doc, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;

	NHI_TRY(nhi_envelope_parse(doc, len, doc_max(t), &env));
	rv = nhi_buf_append(out, env.payload.data, env.payload.len);
	nhi_envelope_free(&env);
out:
	return rv;
}

nhi_err nhi_doc_signing_input(enum nhi_doc_type t, const uint8_t *doc, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;

	NHI_TRY(nhi_envelope_parse(doc, len, doc_max(t), &env));
	rv = signing_input(t, &env.payload, out);
	nhi_envelope_free(&env);
out:
	return rv;
}

/* Serialise {"payload", "signatures"} from a parsed envelope. */
static nhi_err envelope_write(const struct nhi_envelope *env, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf p = {0}, s = {0};
	json_t *o = NULL, *arr = json_array(), *e;
	char *text = NULL;
	size_t i;

	NHI_CHECK(arr != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_b64url_encode(env->payload.data, env->payload.len, &p));
	for (i = 0; i < env->n_sigs; i++) {
		nhi_buf_reset(&s);
		NHI_TRY(nhi_b64url_encode(env->sig[i], 64, &s));
		e = json_pack("{s:s, s:s}", "keyid", env->keyid[i], "sig", (const char *)s.data);
		NHI_CHECK(e != NULL && json_array_append_new(arr, e) == 0, NHI_ERR_NOMEM, "out of memory");
	}
	o = json_pack("{s:s, s:O}", "payload", (const char *)p.data, "signatures", arr);
	NHI_CHECK(o != NULL, NHI_ERR_NOMEM, "out of memory");
	text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_buf_append_str(out, text));
	NHI_TRY(nhi_buf_append_str(out, "\n"));
	rv = NHI_OK;
out:
	free(text);
	json_decref(o);
	json_decref(arr);
	nhi_buf_free(&p);
	nhi_buf_free(&s);
	return rv;
}

nhi_err nhi_doc_wrap(const uint8_t *payload, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;

	memset(&env, 0, sizeof(env));
	NHI_CHECK(len > 0, NHI_ERR_ARG, "empty payload");
	NHI_TRY(nhi_buf_append(&env.payload, payload, len));
	NHI_TRY(envelope_write(&env, out));
	rv = NHI_OK;
out:
	nhi_envelope_free(&env);
	return rv;
}

nhi_err nhi_doc_wrap_json(json_t *payload, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char *text = NULL;

	NHI_CHECK(payload != NULL, NHI_ERR_NOMEM, "out of memory");
	text = json_dumps(payload, JSON_COMPACT | JSON_PRESERVE_ORDER);
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_doc_wrap((const uint8_t *)text, strlen(text), out));
	rv = NHI_OK;
out:
	free(text);
	json_decref(payload);
	return rv;
}

nhi_err nhi_doc_add_signature(enum nhi_doc_type t, const uint8_t *doc, size_t len, EVP_PKEY *signer,
			      const uint8_t sig[64], struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;
	struct nhi_buf msg = {0};
	char kid[44];
	size_t i;

	memset(&env, 0, sizeof(env));
	NHI_TRY(nhi_envelope_parse(doc, len, doc_max(t), &env));
	NHI_TRY(nhi_pkey_thumbprint(signer, kid));
	NHI_TRY(signing_input(t, &env.payload, &msg));
	if (nhi_pkey_es256_verify(signer, msg.data, msg.len, sig) != NHI_OK)
		NHI_FAIL(NHI_ERR_VERIFY, "the new signature does not verify under key %s: wrong key or document", kid);
	for (i = 0; i < env.n_sigs && strcmp(env.keyid[i], kid) != 0; i++)
		;
	NHI_CHECK(i < NHI_UPDATE_SIGNATURES_MAX, NHI_ERR_LIMIT, "the document already has %d signatures",
		  NHI_UPDATE_SIGNATURES_MAX);
	memcpy(env.keyid[i], kid, sizeof(kid));
	memcpy(env.sig[i], sig, 64);
	if (i == env.n_sigs)
		env.n_sigs++;
	NHI_TRY(envelope_write(&env, out));
	rv = NHI_OK;
out:
	nhi_envelope_free(&env);
	nhi_buf_free(&msg);
	return rv;
}

/* ---- update packages -------------------------------------------------------------- */

static const char *const kind_names[NHI_UPDATE_KIND__COUNT] = {
	"cert-rotation", "trust-bundle", "revocation", "identity-backup", "model-manifest", "token-keys",
};

const char *nhi_update_kind_name(enum nhi_update_kind k)
{
	return (unsigned)k < NHI_UPDATE_KIND__COUNT ? kind_names[k] : NULL;
}

nhi_err nhi_update_kind_parse(const char *name, enum nhi_update_kind *out)
{
	char known[256];
	size_t n = 0;
	unsigned i;

	for (i = 0; i < NHI_UPDATE_KIND__COUNT; i++)
		if (strcmp(kind_names[i], name) == 0) {
			*out = (enum nhi_update_kind)i;
			return NHI_OK;
		}
	/* the list from the table, so that a new kind is never left out of it */
	known[0] = '\0';
	for (i = 0; i < NHI_UPDATE_KIND__COUNT && n < sizeof(known); i++)
		n += (size_t)snprintf(known + n, sizeof(known) - n, "%s%s", i ? ", " : "", kind_names[i]);
	return nhi_err_set(NHI_ERR_NOT_FOUND, "unknown update kind '%.64s' (known: %s)", name, known);
}

static const char *const reason_names[NHI_UPDATE_E__COUNT] = {
	"ok",	   "format",   "too_large", "kind_unknown",  "kind_not_accepted", "threshold",	    "expired",
	"not_yet_valid", "replayed", "rollback",  "body_checksum", "bundle_chain",	    "prepare_failed",
};

const char *nhi_update_reason_name(enum nhi_update_reason r)
{
	return (unsigned)r < NHI_UPDATE_E__COUNT ? reason_names[r] : "unknown";
}

static bool valid_id(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > NHI_UPDATE_ID_MAX_BYTES)
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '.' || s[i] == '_' || s[i] == '-'))
			return false;
	return true;
}

nhi_err nhi_update_create(const struct nhi_update_create_req *req, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b64 = {0};
	uint8_t h[32];
	char hex[65];

	NHI_CHECK(req->id != NULL && valid_id(req->id, strlen(req->id)), NHI_ERR_ARG,
		  "package id must be 1..%d characters of [A-Za-z0-9._-]", NHI_UPDATE_ID_MAX_BYTES);
	NHI_CHECK(nhi_update_kind_name(req->kind) != NULL, NHI_ERR_ARG, "unknown update kind %d", (int)req->kind);
	NHI_CHECK(req->version >= 1 && req->version <= NHI_UPDATE_VERSION_MAX, NHI_ERR_ARG,
		  "version must be 1..%llu", (unsigned long long)NHI_UPDATE_VERSION_MAX);
	NHI_CHECK(req->created_at > 0 && req->created_at < req->expires_at && req->expires_at <= NHI_UPDATE_TIME_MAX_S,
		  NHI_ERR_ARG, "created_at must be positive and before expires_at");
	NHI_CHECK(req->body_len > 0 && req->body_len <= NHI_UPDATE_BODY_MAX_BYTES, NHI_ERR_LIMIT,
		  "body is %zu bytes: must be 1..%lu", req->body_len, NHI_UPDATE_BODY_MAX_BYTES);
	NHI_TRY(nhi_sha256(req->body, req->body_len, h));
	nhi_hex(h, 32, hex);
	NHI_TRY(nhi_b64url_encode(req->body, req->body_len, &b64));
	NHI_TRY(nhi_doc_wrap_json(json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s}", "id", req->id, "kind",
					    nhi_update_kind_name(req->kind), "version", (json_int_t)req->version,
					    "created_at", (json_int_t)req->created_at, "expires_at",
					    (json_int_t)req->expires_at, "body", (const char *)b64.data, "body_sha256", hex),
				  out));
	rv = NHI_OK;
out:
	nhi_buf_free(&b64);
	return rv;
}

/* Refuse with a reason: sets *why, the detail, and returns the error. */
#define REFUSE(reason, code, fmt, ...)                                                                     \
	do {                                                                                               \
		*why = (reason);                                                                           \
		NHI_FAIL((code), "package refused (%s): " fmt, reason_names[reason], ##__VA_ARGS__);     \
	} while (0)

nhi_err nhi_update_verify(const uint8_t *doc, size_t len, const struct nhi_update_check *chk,
			  struct nhi_update_info *info, struct nhi_buf *body, enum nhi_update_reason *why)
{
	static const char *const known[] = {"id",	  "kind", "version",	 "created_at",
					    "expires_at", "body", "body_sha256", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;
	struct nhi_buf raw = {0};
	json_t *p = NULL, *m;
	enum nhi_update_kind kind = NHI_UPDATE_CERT_ROTATION;
	long long v;
	char hex[65];
	unsigned n = 0;
	int64_t skew = chk->skew_s > 0 ? chk->skew_s : NHI_UPDATE_CLOCK_SKEW_DEFAULT_S;

	memset(&env, 0, sizeof(env));
	memset(info, 0, sizeof(*info));
	*why = NHI_UPDATE_E_FORMAT;
	if (len > NHI_UPDATE_PACKAGE_MAX_BYTES)
		REFUSE(NHI_UPDATE_E_TOO_LARGE, NHI_ERR_LIMIT, "%zu bytes, over the %lu-byte limit", len, NHI_UPDATE_PACKAGE_MAX_BYTES);
	if (nhi_envelope_parse(doc, len, NHI_UPDATE_PACKAGE_MAX_BYTES, &env) != NHI_OK)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	NHI_TRY(nhi_sha256(env.payload.data, env.payload.len, info->package_sha256));
	if (nhi_json_object(env.payload.data, env.payload.len, "payload", &p) != NHI_OK ||
	    nhi_json_only(p, "payload", known) != NHI_OK)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	m = json_object_get(p, "id");
	if (!json_is_string(m) || !valid_id(json_string_value(m), json_string_length(m)))
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "id missing or not 1..%d characters of [A-Za-z0-9._-]", NHI_UPDATE_ID_MAX_BYTES);
	memcpy(info->id, json_string_value(m), json_string_length(m) + 1);
	m = json_object_get(p, "kind");
	if (!json_is_string(m))
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "kind missing or not a string");
	if (nhi_update_kind_parse(json_string_value(m), &kind) != NHI_OK)
		REFUSE(NHI_UPDATE_E_KIND_UNKNOWN, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	info->kind = kind;
	info->kind_known = true;
	if (nhi_json_int(p, "payload", "version", 1, (long long)NHI_UPDATE_VERSION_MAX, &v) != NHI_OK)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	info->version = (uint64_t)v;
	if (nhi_json_int(p, "payload", "created_at", 1, NHI_UPDATE_TIME_MAX_S, &v) != NHI_OK)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	info->created_at = v;
	if (nhi_json_int(p, "payload", "expires_at", 1, NHI_UPDATE_TIME_MAX_S, &v) != NHI_OK)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	info->expires_at = v;
	if (info->expires_at <= info->created_at)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "expires_at is not after created_at");
	m = json_object_get(p, "body_sha256");
	if (!json_is_string(m) || json_string_length(m) != 64)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "body_sha256 missing or not 64 hex digits");
	if (b64_member(p, "payload", "body", 0, &raw) != NHI_OK)
		REFUSE(NHI_UPDATE_E_FORMAT, NHI_ERR_FORMAT, "%s", nhi_err_detail());
	if (raw.len == 0 || raw.len > NHI_UPDATE_BODY_MAX_BYTES)
		REFUSE(NHI_UPDATE_E_TOO_LARGE, NHI_ERR_LIMIT, "body is %zu bytes: must be 1..%lu", raw.len, NHI_UPDATE_BODY_MAX_BYTES);
	if (chk->committed_sha256 != NULL && info->version == chk->last_version[kind] &&
	    CRYPTO_memcmp(info->package_sha256, chk->committed_sha256[kind], 32) == 0) {
		/* these payload bytes were verified when committed: nothing to judge again */
		NHI_TRY(nhi_sha256(raw.data, raw.len, info->body_sha256));
		info->committed = true;
		*why = NHI_UPDATE_OK;
		rv = NHI_OK;
		goto out;
	}

	if (chk->kinds_allowed != 0 && (chk->kinds_allowed & (1u << kind)) == 0)
		REFUSE(NHI_UPDATE_E_KIND_DENIED, NHI_ERR_DENIED, "kind %s is not accepted here", kind_names[kind]);
	NHI_CHECK(chk->threshold >= 1, NHI_ERR_CONFIG, "threshold must be at least 1");
	NHI_TRY(nhi_envelope_count(NHI_DOC_UPDATE, &env, chk->signers, &n));
	info->signers = n;
	if (n < chk->threshold)
		REFUSE(NHI_UPDATE_E_THRESHOLD, NHI_ERR_VERIFY,
		       "%u valid signature(s) from distinct trust-bundle update signers, %u required", n,
		       chk->threshold);
	if (chk->now >= info->expires_at)
		REFUSE(NHI_UPDATE_E_EXPIRED, NHI_ERR_EXPIRED, "expired at %lld, trusted time is %lld", (long long)info->expires_at, (long long)chk->now);
	if (info->created_at > chk->now + skew)
		REFUSE(NHI_UPDATE_E_NOT_YET_VALID, NHI_ERR_EXPIRED,
		       "created_at %lld is more than %lld s ahead of the trusted time %lld: check the clock", (long long)info->created_at, (long long)skew, (long long)chk->now);
	if (info->version == chk->last_version[kind])
		REFUSE(NHI_UPDATE_E_REPLAYED, NHI_ERR_ROLLBACK, "version %llu of %s is already applied", (unsigned long long)info->version, kind_names[kind]);
	if (info->version < chk->last_version[kind])
		REFUSE(NHI_UPDATE_E_ROLLBACK, NHI_ERR_ROLLBACK, "version %llu of %s is older than the applied %llu", (unsigned long long)info->version, kind_names[kind],
		       (unsigned long long)chk->last_version[kind]);
	NHI_TRY(nhi_sha256(raw.data, raw.len, info->body_sha256));
	nhi_hex(info->body_sha256, 32, hex);
	if (CRYPTO_memcmp(hex, json_string_value(m), 64) != 0)
		REFUSE(NHI_UPDATE_E_CHECKSUM, NHI_ERR_VERIFY, "the body's SHA-256 is %s, the payload says %.64s", hex, json_string_value(m));
	if (body != NULL)
		NHI_TRY(nhi_buf_append(body, raw.data, raw.len));
	*why = NHI_UPDATE_OK;
	rv = NHI_OK;
out:
	nhi_envelope_free(&env);
	nhi_buf_free(&raw);
	json_decref(p);
	return rv;
}

/* ---- state ---------------------------------------------------------------------- */

static nhi_err path_join(char *buf, size_t n, const char *a, const char *b)
{
	if ((size_t)snprintf(buf, n, "%s/%s", a, b) >= n)
		return nhi_err_set(NHI_ERR_ARG, "path too long: %s/%s", a, b);
	return NHI_OK;
}

nhi_err nhi_update_state_load(const char *state_dir, struct nhi_update_state *out)
{
	static const char *const known[] = {"format", "time_high", "kinds", NULL};
	static const char *const kknown[] = {"version", "package_sha256", "recorded", NULL};
	nhi_err rv = NHI_ERR_INTERNAL, e;
	struct nhi_buf text = {0};
	json_t *o = NULL, *kinds, *k, *h;
	char path[PATH_MAX];
	enum nhi_update_kind kind = NHI_UPDATE_CERT_ROTATION;
	const char *name;
	long long v;
	size_t i;

	memset(out, 0, sizeof(*out));
	NHI_TRY(path_join(path, sizeof(path), state_dir, STATE_FILE));
	e = nhi_file_read(path, NHI_UPDATE_STATE_MAX_BYTES, &text);
	if (e == NHI_ERR_NOT_FOUND) {
		rv = NHI_OK;
		goto out;
	}
	NHI_TRY(e);
	NHI_TRY(nhi_json_object(text.data, text.len, path, &o));
	NHI_TRY(nhi_json_only(o, path, known));
	NHI_TRY(nhi_json_int(o, path, "format", STATE_FORMAT, STATE_FORMAT, &v));
	NHI_TRY(nhi_json_int(o, path, "time_high", 0, NHI_UPDATE_TIME_MAX_S, &v));
	out->time_high = v;
	kinds = json_object_get(o, "kinds");
	NHI_CHECK(json_is_object(kinds), NHI_ERR_FORMAT, "%s: 'kinds' missing or not an object", path);
	json_object_foreach (kinds, name, k) {
		NHI_CHECK(nhi_update_kind_parse(name, &kind) == NHI_OK, NHI_ERR_FORMAT, "%s: %s", path,
			  nhi_err_detail());
		NHI_CHECK(json_is_object(k), NHI_ERR_FORMAT, "%s: kind %s is not an object", path, name);
		NHI_TRY(nhi_json_only(k, path, kknown));
		NHI_TRY(nhi_json_int(k, path, "version", 1, (long long)NHI_UPDATE_VERSION_MAX, &v));
		out->version[kind] = (uint64_t)v;
		h = json_object_get(k, "package_sha256");
		NHI_CHECK(json_is_string(h) && json_string_length(h) == 64, NHI_ERR_FORMAT,
			  "%s: %s.package_sha256 is not 64 hex digits", path, name);
		for (i = 0; i < 32; i++) {
			unsigned byte;
			NHI_CHECK(sscanf(json_string_value(h) + 2 * i, "%2x", &byte) == 1, NHI_ERR_FORMAT,
				  "%s: %s.package_sha256 is not hex", path, name);
			out->package_sha256[kind][i] = (uint8_t)byte;
		}
		/* absent: recorded (a state written before the mark existed, or cleared) */
		h = json_object_get(k, "recorded");
		NHI_CHECK(h == NULL || json_is_boolean(h), NHI_ERR_FORMAT, "%s: %s.recorded is not true or false", path,
			  name);
		out->unrecorded[kind] = h != NULL && json_is_false(h);
	}
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "update state unreadable (restore it from backup; never delete it: that would "
				 "re-open rollback)");
	json_decref(o);
	nhi_buf_free(&text);
	return rv;
}

static nhi_err state_save(const char *state_dir, const struct nhi_update_state *st)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *o = NULL, *kinds = json_object(), *k;
	char path[PATH_MAX], hex[65], *text = NULL;
	unsigned i;

	NHI_CHECK(kinds != NULL, NHI_ERR_NOMEM, "out of memory");
	for (i = 0; i < NHI_UPDATE_KIND__COUNT; i++) {
		if (st->version[i] == 0)
			continue;
		nhi_hex(st->package_sha256[i], 32, hex);
		k = json_pack("{s:I, s:s}", "version", (json_int_t)st->version[i], "package_sha256", hex);
		NHI_CHECK(k != NULL && json_object_set_new(kinds, kind_names[i], k) == 0, NHI_ERR_NOMEM,
			  "out of memory");
		if (st->unrecorded[i])
			NHI_CHECK(json_object_set_new(k, "recorded", json_false()) == 0, NHI_ERR_NOMEM, "out of memory");
	}
	o = json_pack("{s:i, s:I, s:O}", "format", STATE_FORMAT, "time_high", (json_int_t)st->time_high, "kinds",
		      kinds);
	NHI_CHECK(o != NULL, NHI_ERR_NOMEM, "out of memory");
	text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	NHI_CHECK(text != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(path_join(path, sizeof(path), state_dir, STATE_FILE));
	NHI_TRY(nhi_file_write_atomic(path, text, strlen(text), 0600));
	rv = NHI_OK;
out:
	free(text);
	json_decref(o);
	json_decref(kinds);
	return rv;
}

nhi_err nhi_update_state_mark_recorded(const char *state_dir, enum nhi_update_kind k,
				       const uint8_t package_sha256[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_update_state st;
	char hex[65];

	NHI_CHECK(nhi_update_kind_name(k) != NULL, NHI_ERR_ARG, "unknown kind");
	NHI_TRY(nhi_update_state_load(state_dir, &st));
	nhi_hex(package_sha256, 32, hex);
	NHI_CHECK(st.version[k] > 0 && CRYPTO_memcmp(st.package_sha256[k], package_sha256, 32) == 0, NHI_ERR_NOT_FOUND,
		  "%s package %s is not the committed one in %s/%s", kind_names[k], hex, state_dir, STATE_FILE);
	if (st.unrecorded[k]) {
		st.unrecorded[k] = false;
		NHI_TRY(state_save(state_dir, &st));
	}
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_update_state_body_path(const char *state_dir, const struct nhi_update_state *st,
				   enum nhi_update_kind k, char *buf, size_t n)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	buf[0] = '\0';
	NHI_CHECK(nhi_update_kind_name(k) != NULL, NHI_ERR_ARG, "unknown kind");
	NHI_CHECK(st->version[k] > 0, NHI_ERR_NOT_FOUND, "no %s update has been applied", kind_names[k]);
	NHI_CHECK((size_t)snprintf(buf, n, "%s/bodies/%s-%llu", state_dir, kind_names[k],
				   (unsigned long long)st->version[k]) < n,
		  NHI_ERR_ARG, "path too long");
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_update_clock(const struct nhi_update_state *st, int64_t local_now, int64_t skew_s, int64_t *trusted)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	if (skew_s <= 0)
		skew_s = NHI_UPDATE_CLOCK_SKEW_DEFAULT_S;
	NHI_CHECK(local_now + skew_s >= st->time_high, NHI_ERR_ROLLBACK,
		  "the local clock (%lld) is %lld s behind the highest trusted time seen (%lld), more than the "
		  "allowed skew of %lld s: set the clock forward (no NTP here), then retry",
		  (long long)local_now, (long long)(st->time_high - local_now), (long long)st->time_high,
		  (long long)skew_s);
	*trusted = local_now > st->time_high ? local_now : st->time_high;
	rv = NHI_OK;
out:
	return rv;
}

/* ---- apply ---------------------------------------------------------------------- */

static nhi_err ensure_dir(const char *parent, const char *name, char *path, size_t n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat st;

	NHI_TRY(path_join(path, n, parent, name));
	if (mkdir(path, 0700) == 0) {
		NHI_TRY(nhi_fsync_dir_of(path));
	} else {
		NHI_CHECK(errno == EEXIST, NHI_ERR_IO, "cannot create %s: %s", path, strerror(errno));
	}
	NHI_CHECK(lstat(path, &st) == 0 && S_ISDIR(st.st_mode), NHI_ERR_CONFIG, "%s is not a directory", path);
	rv = NHI_OK;
out:
	return rv;
}

/*
 * Move `src` into `dir` under its base name (or base.N when taken), after writing
 * <name>.reason there. The reason is written first: a crash in between leaves an
 * orphan reason and the package still in place, to be processed again.
 */
static nhi_err move_with_reason(const char *src, const char *dir, const char *reason, char *dst, size_t dst_n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *base = strrchr(src, '/');
	char rpath[PATH_MAX + 8];
	struct stat st;
	unsigned i;

	base = base == NULL ? src : base + 1;
	for (i = 0; i < NHI_UPDATE_MOVE_SUFFIX_MAX; i++) {
		if (i == 0)
			NHI_CHECK((size_t)snprintf(dst, dst_n, "%s/%s", dir, base) < dst_n, NHI_ERR_ARG, "path too long");
		else
			NHI_CHECK((size_t)snprintf(dst, dst_n, "%s/%s.%u", dir, base, i) < dst_n, NHI_ERR_ARG,
				  "path too long");
		/* a .reason without its package is left by a crash between the two steps
		 * below: that name is free, and the reason is rewritten */
		if (lstat(dst, &st) != 0 && errno == ENOENT)
			break;
	}
	NHI_CHECK(i < NHI_UPDATE_MOVE_SUFFIX_MAX, NHI_ERR_EXISTS, "%s/%s and %u variants exist: clean %s up", dir,
		  base, NHI_UPDATE_MOVE_SUFFIX_MAX, dir);
	snprintf(rpath, sizeof(rpath), "%s.reason", dst);
	NHI_TRY(nhi_file_write_atomic(rpath, reason, strlen(reason), 0600));
	crash_point(4);
	NHI_CHECK(renameat2(AT_FDCWD, src, AT_FDCWD, dst, RENAME_NOREPLACE) == 0, NHI_ERR_IO, "rename %s -> %s: %s",
		  src, dst, strerror(errno));
	NHI_TRY(nhi_fsync_dir_of(dst));
	NHI_TRY(nhi_fsync_dir_of(src));
	crash_point(5);
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		dst[0] = '\0';
	return rv;
}

static nhi_err reject(const char *state_dir, const char *pkg_path, struct nhi_update_result *res, nhi_err why_code)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char dir[PATH_MAX], reason[NHI_ERR_DETAIL_MAX + 64];

	snprintf(res->detail, sizeof(res->detail), "%s", nhi_err_detail());
	snprintf(reason, sizeof(reason), "rejected: %s\n%s\n", nhi_update_reason_name(res->why), res->detail);
	NHI_TRY(ensure_dir(state_dir, "rejected", dir, sizeof(dir)));
	NHI_TRY(move_with_reason(pkg_path, dir, reason, res->moved_to, sizeof(res->moved_to)));
	rv = nhi_err_set(why_code, "%s", res->detail);
out:
	return rv;
}

static nhi_err finish_applied(const char *state_dir, const char *pkg_path, struct nhi_update_result *res)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char dir[PATH_MAX], reason[512], hex[65];

	nhi_hex(res->info.package_sha256, 32, hex);
	if (res->info.committed)
		snprintf(reason, sizeof(reason),
			 "applied: %s version %llu id %s package_sha256 %s (found committed: only moved now)\n",
			 kind_names[res->info.kind], (unsigned long long)res->info.version, res->info.id, hex);
	else
		snprintf(reason, sizeof(reason), "applied: %s version %llu id %s signers %u package_sha256 %s\n",
			 kind_names[res->info.kind], (unsigned long long)res->info.version, res->info.id,
			 res->info.signers, hex);
	NHI_TRY(ensure_dir(state_dir, "applied", dir, sizeof(dir)));
	NHI_TRY(move_with_reason(pkg_path, dir, reason, res->moved_to, sizeof(res->moved_to)));
	res->applied = true;
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_update_apply_file(const struct nhi_update_apply_cfg *cfg, const char *pkg_path,
			      struct nhi_update_result *res)
{
	nhi_err rv = NHI_ERR_INTERNAL, e;
	struct nhi_update_state st, next;
	struct nhi_update_check chk;
	struct nhi_buf doc = {0}, body = {0};
	struct nhi_bundle *nb = NULL;
	enum nhi_bundle_reason bwhy;
	char bodies[PATH_MAX], bpath[PATH_MAX];
	struct stat sb;
	int64_t trusted = 0;

	memset(res, 0, sizeof(*res));
	NHI_CHECK(cfg->state_dir != NULL && cfg->bundle != NULL, NHI_ERR_ARG, "state_dir and bundle are required");
	NHI_CHECK(lstat(pkg_path, &sb) == 0, NHI_ERR_NOT_FOUND, "cannot stat %s: %s", pkg_path, strerror(errno));
	NHI_CHECK(S_ISREG(sb.st_mode), NHI_ERR_ARG, "%s is not a regular file (symlinks are not followed)", pkg_path);
	NHI_TRY(nhi_update_state_load(cfg->state_dir, &st));
	NHI_TRY(nhi_update_clock(&st, cfg->now != 0 ? cfg->now : (int64_t)time(NULL), cfg->skew_s, &trusted));

	e = nhi_file_read(pkg_path, NHI_UPDATE_PACKAGE_MAX_BYTES, &doc);
	if (e == NHI_ERR_LIMIT) {
		res->why = NHI_UPDATE_E_TOO_LARGE;
		rv = reject(cfg->state_dir, pkg_path, res, NHI_ERR_LIMIT);
		goto out;
	}
	NHI_TRY(e);

	memset(&chk, 0, sizeof(chk));
	chk.signers = nhi_bundle_update_signers(cfg->bundle);
	chk.threshold = nhi_bundle_threshold(cfg->bundle);
	chk.now = trusted;
	chk.skew_s = cfg->skew_s;
	chk.kinds_allowed = cfg->kinds_allowed;
	memcpy(chk.last_version, st.version, sizeof(chk.last_version));
	chk.committed_sha256 = (const uint8_t (*)[32])st.package_sha256;
	e = nhi_update_verify(doc.data, doc.len, &chk, &res->info, &body, &res->why);
	if (e == NHI_OK && res->info.committed) {
		/* committed before a crash, not yet moved: finish the move, apply nothing twice;
		 * judged before signatures and expiry, which may have changed since the commit */
		NHI_TRY(finish_applied(cfg->state_dir, pkg_path, res));
		rv = NHI_OK;
		goto out;
	}
	if (e != NHI_OK && res->why == NHI_UPDATE_OK) /* not a refusal: I/O, memory */
		NHI_TRY(e);
	if (e != NHI_OK) {
		rv = reject(cfg->state_dir, pkg_path, res, e);
		goto out;
	}
	if (res->info.kind == NHI_UPDATE_TRUST_BUNDLE) {
		e = nhi_bundle_verify_next(cfg->bundle, body.data, body.len, trusted, &nb, &bwhy);
		if (e == NHI_OK && nhi_bundle_version(nb) != res->info.version)
			e = nhi_err_set(NHI_ERR_VERIFY, "bundle version %llu differs from the package version %llu",
					(unsigned long long)nhi_bundle_version(nb),
					(unsigned long long)res->info.version);
		if (e != NHI_OK) {
			res->why = NHI_UPDATE_E_BUNDLE_CHAIN;
			nhi_err_wrap(e, "package refused (bundle_chain)");
			rv = reject(cfg->state_dir, pkg_path, res, e);
			goto out;
		}
	}
	if (cfg->prepare != NULL) {
		e = cfg->prepare(cfg->prepare_arg, &res->info, body.data, body.len);
		if (e != NHI_OK) {
			res->why = NHI_UPDATE_E_PREPARE;
			nhi_err_wrap(e, "package refused (prepare_failed)");
			rv = reject(cfg->state_dir, pkg_path, res, e);
			goto out;
		}
	}
	if (cfg->hold != NULL) {
		e = cfg->hold(cfg->prepare_arg, &res->info, body.data, body.len);
		if (e != NHI_OK) {
			/* a good package for another receiver: neither committed nor moved */
			res->why = NHI_UPDATE_E_KIND_DENIED;
			snprintf(res->detail, sizeof(res->detail), "%s", nhi_err_detail());
			rv = e;
			goto out;
		}
	}
	crash_point(1);
	/* (1) the body, under a name no committed state points at yet */
	NHI_TRY(ensure_dir(cfg->state_dir, "bodies", bodies, sizeof(bodies)));
	next = st;
	next.version[res->info.kind] = res->info.version;
	memcpy(next.package_sha256[res->info.kind], res->info.package_sha256, 32);
	next.unrecorded[res->info.kind] = true; /* until the receiver's record is durable */
	NHI_TRY(nhi_update_state_body_path(cfg->state_dir, &next, res->info.kind, bpath, sizeof(bpath)));
	NHI_TRY(nhi_file_write_atomic(bpath, body.data, body.len, 0600));
	crash_point(2);
	/* (2) the commit point: one atomic replace of update-state.json */
	if (res->info.created_at > trusted)
		trusted = res->info.created_at;
	next.time_high = trusted > st.time_high ? trusted : st.time_high;
	NHI_TRY(state_save(cfg->state_dir, &next));
	crash_point(3);
	/* (3) tidy up: the package to applied/ with its record */
	NHI_TRY(finish_applied(cfg->state_dir, pkg_path, res));
	rv = NHI_OK;
out:
	nhi_bundle_free(nb);
	nhi_buf_free(&doc);
	nhi_buf_free(&body);
	return rv;
}

nhi_err nhi_update_load_bundle(const char *state_dir, struct nhi_bundle **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_update_state st;
	char path[PATH_MAX];

	NHI_TRY(nhi_update_state_load(state_dir, &st));
	if (st.version[NHI_UPDATE_TRUST_BUNDLE] > 0)
		NHI_TRY(nhi_update_state_body_path(state_dir, &st, NHI_UPDATE_TRUST_BUNDLE, path, sizeof(path)));
	else
		NHI_TRY(path_join(path, sizeof(path), state_dir, BUNDLE_FILE));
	rv = nhi_bundle_load_file(path, out);
out:
	return rv;
}

nhi_err nhi_bundle_load_file(const char *path, struct nhi_bundle **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf doc = {0};
	enum nhi_bundle_reason why;

	NHI_TRY(nhi_file_read(path, NHI_BUNDLE_MAX_BYTES, &doc));
	rv = nhi_bundle_parse(doc.data, doc.len, out, &why);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "%s", path);
out:
	nhi_buf_free(&doc);
	return rv;
}

nhi_err nhi_update_init_state(const char *state_dir, const uint8_t *doc, size_t len, const char *pin_hex,
			      int64_t now)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_bundle *b = NULL;
	enum nhi_bundle_reason why;
	size_t bad;
	char path[PATH_MAX];

	NHI_CHECK(pin_hex != NULL, NHI_ERR_ARG, "the pinned bundle fingerprint is required");
	NHI_TRY(nhi_bundle_verify_chain(&doc, &len, 1, pin_hex, now, &b, &why, &bad));
	NHI_TRY(path_join(path, sizeof(path), state_dir, BUNDLE_FILE));
	NHI_TRY(nhi_file_write_excl(path, doc, len, 0600));
	NHI_TRY(nhi_fsync_dir_of(path));
	rv = NHI_OK;
out:
	nhi_bundle_free(b);
	return rv;
}

/* ---- scanning the watched directory --------------------------------------------------- */

struct scan_entry {
	char name[256];
	unsigned kind; /* NHI_UPDATE_KIND__COUNT when unparsable: processed first, rejected */
	uint64_t version;
};

/*
 * The order kinds are processed in: unparsable files first (to rejected/), then
 * trust-bundle packages, so that every other package dropped with a bundle rotation is
 * judged by the new bundle (reloaded after each); then the others, token-keys before
 * revocation (a revocation may name a key the rotation retires).
 */
static unsigned scan_rank(unsigned kind)
{
	if (kind >= NHI_UPDATE_KIND__COUNT)
		return 0;
	if (kind == NHI_UPDATE_TRUST_BUNDLE)
		return 1;
	return 2 + (NHI_UPDATE_KIND__COUNT - 1 - kind);
}

static int scan_cmp(const void *a, const void *b)
{
	const struct scan_entry *x = a, *y = b;

	if (scan_rank(x->kind) != scan_rank(y->kind))
		return scan_rank(x->kind) < scan_rank(y->kind) ? -1 : 1;
	if (x->version != y->version)
		return x->version < y->version ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Peek at kind and version without checking anything else (ordering only). */
static void scan_peek(const char *path, struct scan_entry *e)
{
	struct nhi_buf doc = {0}, payload = {0};
	enum nhi_update_kind k = NHI_UPDATE_CERT_ROTATION;
	json_t *p = NULL, *m;

	e->kind = NHI_UPDATE_KIND__COUNT;
	e->version = 0;
	if (nhi_file_read(path, NHI_UPDATE_PACKAGE_MAX_BYTES, &doc) != NHI_OK ||
	    nhi_doc_payload(NHI_DOC_UPDATE, doc.data, doc.len, &payload) != NHI_OK ||
	    nhi_json_object(payload.data, payload.len, "payload", &p) != NHI_OK)
		goto out;
	m = json_object_get(p, "kind");
	if (!json_is_string(m) || nhi_update_kind_parse(json_string_value(m), &k) != NHI_OK)
		goto out;
	m = json_object_get(p, "version");
	if (!json_is_integer(m) || json_integer_value(m) < 0)
		goto out;
	e->kind = k;
	e->version = (uint64_t)json_integer_value(m);
out:
	nhi_err_clear();
	json_decref(p);
	nhi_buf_free(&doc);
	nhi_buf_free(&payload);
}

nhi_err nhi_update_scan(const struct nhi_update_apply_cfg *cfg, const char *incoming, nhi_update_scan_cb cb,
			void *cb_arg, struct nhi_update_scan_stats *stats)
{
	nhi_err rv = NHI_ERR_INTERNAL, e;
	struct nhi_update_apply_cfg c = *cfg;
	struct nhi_update_result *res = NULL;
	struct scan_entry *ents = NULL;
	struct nhi_bundle *own = NULL;
	struct dirent *d;
	struct stat sb;
	char path[PATH_MAX];
	DIR *dir = NULL;
	size_t n = 0, i;

	memset(stats, 0, sizeof(*stats));
	ents = calloc(NHI_UPDATE_SCAN_MAX_FILES, sizeof(*ents));
	res = calloc(1, sizeof(*res));
	NHI_CHECK(ents != NULL && res != NULL, NHI_ERR_NOMEM, "out of memory");
	dir = opendir(incoming);
	NHI_CHECK(dir != NULL, NHI_ERR_IO, "cannot open the watched directory %s: %s", incoming, strerror(errno));
	while (n < NHI_UPDATE_SCAN_MAX_FILES && (d = readdir(dir)) != NULL) {
		/* dot files and temp files are uploads in progress (write then rename in) */
		if (d->d_name[0] == '.' || strstr(d->d_name, ".tmp") != NULL || strlen(d->d_name) >= sizeof(ents->name))
			continue;
		NHI_TRY(path_join(path, sizeof(path), incoming, d->d_name));
		if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
			continue;
		memcpy(ents[n].name, d->d_name, strlen(d->d_name) + 1);
		scan_peek(path, &ents[n]);
		n++;
	}
	qsort(ents, n, sizeof(*ents), scan_cmp);
	for (i = 0; i < n; i++) {
		NHI_TRY(path_join(path, sizeof(path), incoming, ents[i].name));
		e = nhi_update_apply_file(&c, path, res);
		if (e == NHI_OK)
			stats->applied++;
		else if (res->moved_to[0] != '\0')
			stats->rejected++;
		else
			stats->failed++;
		if (cb != NULL)
			cb(cb_arg, path, e, res);
		if (e == NHI_OK && res->info.kind == NHI_UPDATE_TRUST_BUNDLE) {
			nhi_bundle_free(own);
			own = NULL;
			NHI_TRY(nhi_update_load_bundle(c.state_dir, &own));
			c.bundle = own;
		}
	}
	rv = NHI_OK;
out:
	if (dir != NULL)
		closedir(dir);
	nhi_bundle_free(own);
	free(ents);
	free(res);
	return rv;
}
