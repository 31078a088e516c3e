/*
 * tokens/verify.c — the strict ES256 JWT verifier (RFC 7515, RFC 7519, RFC 8725).
 *
 * The compact form is framed here (split at the two dots, with size caps: that is
 * framing, not a format parser); each part is decoded with the strict base64url of
 * common/, the JSON is parsed by jansson with duplicate members rejected, and the
 * signature is checked by OpenSSL against a key parsed once when it was trusted.
 * libjwt is deliberately not on this path: docs/tokens.md ("Why not libjwt's
 * jwt_decode") lists what it would bring with it.
 *
 * Order matters (RFC 8725 §2, §3.1): alg is pinned before any key is looked at, the
 * key comes from our set by kid only, the signature is checked before the claims
 * JSON is even parsed, and each rejection has exactly one reason.
 */
#include "tokens_internal.h"
#include "../common/pkey.h"

#include <jansson.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct trusted_key {
	char kid[44];
	struct nhi_es256_key es; /* parsed once, shared by every thread (es256.c) */
	/* base64url of {"alg":"ES256","typ":"JWT","kid":<kid>}, the header our issuer
	 * writes: a token whose header is these exact bytes has passed every header
	 * check, so the JSON parse is skipped for it (the same bytes parse the same) */
	char canon_hdr[160];
	size_t canon_hdr_len;
};

/*
 * Memoised checks (docs/tokens.md "Signature memo"). A resolver sees the same token
 * many times while it lives, and the ECDSA check, then the claims' JSON, are most of
 * what a resolve costs. An entry records that the token whose bytes (header, payload
 * and signature, all of them) have this SHA-256 verified under this key of this
 * verifier, and, once its claims passed every check that does not depend on the call
 * (issuer, the verifier's own audiences, the forms, the lifetime), those claims. A hit
 * skips the signature; a hit with claims skips the payload's decoding and parse too.
 * The times and the certificate binding are checked on every call, and a call that
 * names its own audience never takes the memoised claims. Entries die with the
 * verifier, which a key rotation or a revocation replaces. Direct-mapped: a colliding
 * token takes the slot.
 */
struct sig_memo_entry {
	uint8_t h[32];
	const struct trusted_key *key; /* NULL: empty */
	struct nhi_token_claims *cl;   /* its checked claims, or NULL (not yet, or too large) */
	size_t cl_size;
	bool has_nbf;                  /* cl->nbf came from the token, not from iat */
};

/* what a memo lookup found */
enum memo_found { MEMO_MISS, MEMO_SIGNATURE, MEMO_CLAIMS };

/* what each call checks again of claims that passed the rest */
struct claim_facts {
	int64_t iat, nbf, exp;
	bool has_nbf;
	uint8_t x5t[32];
};

struct sig_memo {
	pthread_mutex_t mu;
	size_t n;
	struct sig_memo_entry *e;
	EVP_MD *sha256;
	unsigned long long hits, misses, claims_hits;
};

struct nhi_token_verifier {
	struct sig_memo *memo; /* NULL: every signature is checked */
	char *issuer;
	char **audiences;
	size_t n_audiences;
	unsigned leeway_s;
	unsigned lifetime_max_s;
	struct trusted_key *keys[NHI_TOKEN_KEYS_MAX];
	size_t n_keys;
};

static const char *const error_names[NHI_TOKEN_E__COUNT] = {
	[NHI_TOKEN_OK] = "ok",
	[NHI_TOKEN_E_TOO_LARGE] = "too_large",
	[NHI_TOKEN_E_SEGMENTS] = "segments",
	[NHI_TOKEN_E_EMPTY] = "empty_segment",
	[NHI_TOKEN_E_B64] = "base64url",
	[NHI_TOKEN_E_UTF8] = "utf8",
	[NHI_TOKEN_E_JSON] = "json",
	[NHI_TOKEN_E_JSON_DUP] = "json_duplicate",
	[NHI_TOKEN_E_ALG] = "alg",
	[NHI_TOKEN_E_CRIT] = "crit",
	[NHI_TOKEN_E_HEADER_KEY] = "header_key",
	[NHI_TOKEN_E_TYP] = "typ",
	[NHI_TOKEN_E_KID_MISSING] = "kid_missing",
	[NHI_TOKEN_E_KID_UNKNOWN] = "kid_unknown",
	[NHI_TOKEN_E_SIG_FORMAT] = "signature_format",
	[NHI_TOKEN_E_SIG] = "signature",
	[NHI_TOKEN_E_CLAIMS] = "claims",
	[NHI_TOKEN_E_ISS] = "iss",
	[NHI_TOKEN_E_SUB] = "sub",
	[NHI_TOKEN_E_AUD] = "aud",
	[NHI_TOKEN_E_EXP_MISSING] = "exp_missing",
	[NHI_TOKEN_E_EXPIRED] = "expired",
	[NHI_TOKEN_E_NBF] = "not_yet_valid",
	[NHI_TOKEN_E_IAT] = "iat",
	[NHI_TOKEN_E_LIFETIME] = "lifetime",
	[NHI_TOKEN_E_JTI] = "jti",
	[NHI_TOKEN_E_CNF_MISSING] = "cnf_missing",
	[NHI_TOKEN_E_CNF_FORM] = "cnf_form",
	[NHI_TOKEN_E_CNF_MISMATCH] = "cnf_mismatch",
};

const char *nhi_token_error_name(enum nhi_token_error e)
{
	if ((unsigned)e >= NHI_TOKEN_E__COUNT || error_names[e] == NULL)
		return "unknown";
	return error_names[e];
}

/* ---- verifier construction ---------------------------------------------------- */

void nhi_token_verify_cfg_init(struct nhi_token_verify_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->leeway_s = NHI_TOKEN_LEEWAY_DEFAULT_S;
	cfg->lifetime_max_s = NHI_TOKEN_TTL_CAP_DEFAULT_S;
}

static void memo_free(struct sig_memo *m)
{
	size_t i;

	if (m == NULL)
		return;
	pthread_mutex_destroy(&m->mu);
	EVP_MD_free(m->sha256);
	for (i = 0; m->e != NULL && i < m->n; i++)
		free(m->e[i].cl);
	free(m->e);
	free(m);
}

static nhi_err memo_new(size_t entries, struct sig_memo **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct sig_memo *m = NULL;

	NHI_CHECK(entries <= NHI_TOKEN_MEMO_ENTRIES_MAX, NHI_ERR_CONFIG,
		  "token verifier: a signature memo of %zu entries is above the %d cap", entries,
		  NHI_TOKEN_MEMO_ENTRIES_MAX);
	m = calloc(1, sizeof(*m));
	NHI_CHECK(m != NULL, NHI_ERR_NOMEM, "out of memory");
	if (pthread_mutex_init(&m->mu, NULL) != 0) {
		free(m);
		m = NULL;
		NHI_FAIL(NHI_ERR_INTERNAL, "pthread_mutex_init failed");
	}
	m->e = calloc(entries, sizeof(*m->e));
	NHI_CHECK(m->e != NULL, NHI_ERR_NOMEM, "out of memory for a %zu-entry signature memo", entries);
	m->n = entries;
	m->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
	NHI_CHECK_SSL(m->sha256 != NULL, NHI_ERR_CRYPTO, "fetching SHA-256");
	*out = m;
	m = NULL;
	rv = NHI_OK;
out:
	memo_free(m);
	return rv;
}

static struct sig_memo_entry *memo_slot(const struct sig_memo *m, const uint8_t h[32])
{
	return &m->e[(((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3]) % m->n];
}

/* the memo's key of a token: SHA-256 of all its bytes; false: no key, nothing memoised */
static bool memo_hash(const struct sig_memo *m, const char *token, size_t len, uint8_t h[32])
{
	unsigned hlen = 0;

	if (EVP_Digest(token, len, h, &hlen, m->sha256, NULL) == 1 && hlen == 32)
		return true;
	ERR_clear_error();
	return false;
}

/* `p`, a pointer into the claims at `from`, moved to the same place in the copy at `to` */
static const char *rebased(const char *p, const struct nhi_token_claims *from, const struct nhi_token_claims *to)
{
	return (const char *)to + (p - (const char *)from);
}

/* Copy claims of `size` bytes (one allocation, build_claims) and point the copy's
 * strings into itself. NULL: out of memory. */
static struct nhi_token_claims *claims_copy(const struct nhi_token_claims *src, size_t size)
{
	struct nhi_token_claims *c = malloc(size);
	const char **roles;
	size_t i;

	if (c != NULL) {
		memcpy(c, src, size);
		c->iss = rebased(src->iss, src, c);
		c->sub = rebased(src->sub, src, c);
		c->jti = rebased(src->jti, src, c);
		c->aud = rebased(src->aud, src, c);
		roles = (const char **)(c + 1);
		for (i = 0; i < src->n_roles; i++)
			roles[i] = rebased(src->roles[i], src, c);
		c->roles = roles;
	}
	return c;
}

/*
 * Has the token hashed to h verified under `key` before? MEMO_CLAIMS when its claims
 * are remembered too and `want_claims`: then *facts is set and *cl is a copy the
 * caller owns (when `cl` is not NULL). A copy that cannot be made is MEMO_SIGNATURE.
 */
static enum memo_found memo_seen(struct sig_memo *m, const struct trusted_key *key, const uint8_t h[32],
				 bool want_claims, struct claim_facts *facts, struct nhi_token_claims **cl)
{
	struct sig_memo_entry *e = memo_slot(m, h);
	enum memo_found found = MEMO_MISS;

	pthread_mutex_lock(&m->mu);
	if (e->key == key && memcmp(e->h, h, 32) == 0) {
		found = MEMO_SIGNATURE;
		if (want_claims && e->cl != NULL && (cl == NULL || (*cl = claims_copy(e->cl, e->cl_size)) != NULL)) {
			found = MEMO_CLAIMS;
			facts->iat = e->cl->iat;
			facts->nbf = e->cl->nbf;
			facts->exp = e->cl->exp;
			facts->has_nbf = e->has_nbf;
			memcpy(facts->x5t, e->cl->cnf_x5t_s256, 32);
			m->claims_hits++;
		}
		m->hits++;
	} else {
		m->misses++;
	}
	pthread_mutex_unlock(&m->mu);
	return found;
}

/* Remember that the token hashed to h verified under `key`; with `cl` (checked
 * claims of `cl_size` bytes, which the memo takes over), its claims too. */
static void memo_store(struct sig_memo *m, const struct trusted_key *key, const uint8_t h[32],
		       struct nhi_token_claims *cl, size_t cl_size, bool has_nbf)
{
	struct sig_memo_entry *e = memo_slot(m, h);
	struct nhi_token_claims *old = NULL;

	pthread_mutex_lock(&m->mu);
	/* without claims, an entry already there stays as it is (perhaps with its claims) */
	if (cl != NULL || e->key != key || memcmp(e->h, h, 32) != 0) {
		old = e->cl;
		memcpy(e->h, h, 32);
		e->key = key;
		e->cl = cl;
		e->cl_size = cl_size;
		e->has_nbf = has_nbf;
	}
	pthread_mutex_unlock(&m->mu);
	free(old);
}

void nhi_token_verifier_memo_stats(const struct nhi_token_verifier *v, unsigned long long *hits,
				   unsigned long long *misses, unsigned long long *claims_hits)
{
	*hits = *misses = *claims_hits = 0;
	if (v == NULL || v->memo == NULL)
		return;
	pthread_mutex_lock(&v->memo->mu);
	*hits = v->memo->hits;
	*misses = v->memo->misses;
	*claims_hits = v->memo->claims_hits;
	pthread_mutex_unlock(&v->memo->mu);
}

static bool claim_string_ok(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	return n > 0 && n <= NHI_TOKEN_CLAIM_MAX_BYTES;
}

nhi_err nhi_token_verifier_new(const struct nhi_token_verify_cfg *cfg, struct nhi_token_verifier **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_token_verifier *v = NULL;
	size_t i;

	*out = NULL;
	NHI_CHECK(cfg != NULL && claim_string_ok(cfg->issuer), NHI_ERR_CONFIG,
		  "token verifier: an issuer (1..%d bytes) is required", NHI_TOKEN_CLAIM_MAX_BYTES);
	NHI_CHECK(cfg->n_audiences == 0 || cfg->audiences != NULL, NHI_ERR_ARG, "audiences missing");
	NHI_CHECK(cfg->n_audiences <= NHI_TOKEN_AUD_MAX, NHI_ERR_CONFIG,
		  "token verifier: %zu audiences configured, at most %d", cfg->n_audiences, NHI_TOKEN_AUD_MAX);
	NHI_CHECK(cfg->leeway_s <= NHI_TOKEN_LEEWAY_MAX_S, NHI_ERR_CONFIG,
		  "token verifier: leeway %u s is above the %d s cap: fix the clocks instead", cfg->leeway_s,
		  NHI_TOKEN_LEEWAY_MAX_S);
	NHI_CHECK(cfg->lifetime_max_s >= 1 && cfg->lifetime_max_s <= NHI_TOKEN_TTL_MAX_S, NHI_ERR_CONFIG,
		  "token verifier: max lifetime %u s is outside 1..%d s", cfg->lifetime_max_s, NHI_TOKEN_TTL_MAX_S);
	v = calloc(1, sizeof(*v));
	NHI_CHECK(v != NULL, NHI_ERR_NOMEM, "out of memory");
	v->issuer = strdup(cfg->issuer);
	NHI_CHECK(v->issuer != NULL, NHI_ERR_NOMEM, "out of memory");
	if (cfg->memo_entries > 0)
		NHI_TRY(memo_new(cfg->memo_entries, &v->memo));
	if (cfg->n_audiences > 0) {
		v->audiences = calloc(cfg->n_audiences, sizeof(char *));
		NHI_CHECK(v->audiences != NULL, NHI_ERR_NOMEM, "out of memory");
		for (i = 0; i < cfg->n_audiences; i++) {
			NHI_CHECK(claim_string_ok(cfg->audiences[i]), NHI_ERR_CONFIG,
				  "token verifier: audience %zu is empty or longer than %d bytes", i,
				  NHI_TOKEN_CLAIM_MAX_BYTES);
			v->audiences[i] = strdup(cfg->audiences[i]);
			NHI_CHECK(v->audiences[i] != NULL, NHI_ERR_NOMEM, "out of memory");
			v->n_audiences++;
		}
	}
	v->leeway_s = cfg->leeway_s;
	v->lifetime_max_s = cfg->lifetime_max_s;
	*out = v;
	v = NULL;
	rv = NHI_OK;
out:
	nhi_token_verifier_free(v);
	return rv;
}

/* the keys after the first n go (a verifier's free, or a failed add_jwks undone) */
static void keys_drop_to(struct nhi_token_verifier *v, size_t n)
{
	while (v->n_keys > n) {
		v->n_keys--;
		nhi_es256_key_clear(&v->keys[v->n_keys]->es);
		free(v->keys[v->n_keys]);
		v->keys[v->n_keys] = NULL;
	}
}

void nhi_token_verifier_free(struct nhi_token_verifier *v)
{
	size_t i;

	if (v == NULL)
		return;
	memo_free(v->memo);
	keys_drop_to(v, 0);
	for (i = 0; i < v->n_audiences; i++)
		free(v->audiences[i]);
	free(v->audiences);
	free(v->issuer);
	free(v);
}

size_t nhi_token_verifier_key_count(const struct nhi_token_verifier *v)
{
	return v != NULL ? v->n_keys : 0;
}

static struct trusted_key *find_key(const struct nhi_token_verifier *v, const char *kid)
{
	size_t i;

	for (i = 0; i < v->n_keys; i++)
		if (strcmp(v->keys[i]->kid, kid) == 0)
			return v->keys[i];
	return NULL;
}

/* Takes over `pk` (one reference) on success and on failure. */
static nhi_err add_owned(struct nhi_token_verifier *v, EVP_PKEY *pk, const char kid[44])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct trusted_key *k = NULL;
	struct nhi_buf hdr = {0};
	char json[128];
	int n;

	NHI_CHECK(find_key(v, kid) == NULL, NHI_ERR_EXISTS, "token key %s is already trusted", kid);
	NHI_CHECK(v->n_keys < NHI_TOKEN_KEYS_MAX, NHI_ERR_LIMIT,
		  "more than %d trusted token keys: remove retired keys that no longer sign live tokens",
		  NHI_TOKEN_KEYS_MAX);
	k = calloc(1, sizeof(*k));
	NHI_CHECK(k != NULL, NHI_ERR_NOMEM, "out of memory");
	memcpy(k->kid, kid, 44);
	n = snprintf(json, sizeof(json), "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
	NHI_CHECK(n > 0 && (size_t)n < sizeof(json), NHI_ERR_INTERNAL, "header template");
	NHI_TRY(nhi_b64url_encode((const uint8_t *)json, (size_t)n, &hdr));
	NHI_CHECK(hdr.len < sizeof(k->canon_hdr), NHI_ERR_INTERNAL, "header template");
	memcpy(k->canon_hdr, hdr.data, hdr.len + 1);
	k->canon_hdr_len = hdr.len;
	NHI_TRY(nhi_es256_key_init(&k->es, pk));
	v->keys[v->n_keys++] = k;
	k = NULL;
	rv = NHI_OK;
out:
	if (k != NULL) {
		nhi_es256_key_clear(&k->es);
		free(k);
	}
	nhi_buf_free(&hdr);
	EVP_PKEY_free(pk); /* the key holds its own reference */
	return rv;
}

nhi_err nhi_token_verifier_add_key(struct nhi_token_verifier *v, EVP_PKEY *pk)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char kid[44];

	NHI_CHECK(v != NULL && pk != NULL, NHI_ERR_ARG, "no verifier or key");
	NHI_CHECK(nhi_pkey_is_p256(pk), NHI_ERR_ARG,
		  "token keys must be EC P-256 (ES256)");
	NHI_TRY(nhi_pkey_thumbprint(pk, kid));
	NHI_CHECK_SSL(EVP_PKEY_up_ref(pk) == 1, NHI_ERR_CRYPTO, "EVP_PKEY_up_ref");
	rv = add_owned(v, pk, kid);
out:
	return rv;
}

nhi_err nhi_token_verifier_add_jwks(struct nhi_token_verifier *v, const char *json, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY *keys[NHI_TOKEN_KEYS_MAX] = {0}, *pk;
	char kids[NHI_TOKEN_KEYS_MAX][44];
	size_t i, n = 0, before = v != NULL ? v->n_keys : 0;

	NHI_CHECK(v != NULL && json != NULL, NHI_ERR_ARG, "no verifier or JWKS");
	NHI_TRY(nhi_token_jwks_parse(json, len, keys, kids, NHI_TOKEN_KEYS_MAX, &n));
	/* all or nothing: check every key fits before trusting any */
	NHI_CHECK(v->n_keys + n <= NHI_TOKEN_KEYS_MAX, NHI_ERR_LIMIT, "JWKS would bring the trusted keys above %d",
		  NHI_TOKEN_KEYS_MAX);
	for (i = 0; i < n; i++)
		NHI_CHECK(find_key(v, kids[i]) == NULL, NHI_ERR_EXISTS, "JWKS key %s is already trusted", kids[i]);
	for (i = 0; i < n; i++) {
		/* add_owned takes the reference whatever it returns */
		pk = keys[i];
		keys[i] = NULL;
		NHI_TRY(add_owned(v, pk, kids[i]));
	}
	rv = NHI_OK;
out:
	for (i = 0; i < n; i++)
		EVP_PKEY_free(keys[i]);
	/* ... and nothing when a key's setup fails past the checks (out of memory): the
	 * keys this call added go again (nothing has verified with them yet) */
	if (rv != NHI_OK && v != NULL)
		keys_drop_to(v, before);
	return rv;
}

/* ---- verification ------------------------------------------------------------- */

/* Record the one reason and a detail message; returns NHI_ERR_VERIFY. */
static nhi_err reject(enum nhi_token_error *why, enum nhi_token_error e, const char *fmt, ...) NHI_PRINTF(3, 4);
static nhi_err reject(enum nhi_token_error *why, enum nhi_token_error e, const char *fmt, ...)
{
	char msg[NHI_ERR_DETAIL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	*why = e;
	return nhi_err_set(NHI_ERR_VERIFY, "token rejected (%s): %s", nhi_token_error_name(e), msg);
}

/* Token-controlled text for a message: bounded, printable ASCII only. */
static const char *shown(json_t *s, char buf[48])
{
	const char *p = json_is_string(s) ? json_string_value(s) : NULL;
	size_t i, n;

	if (p == NULL)
		return json_is_null(s) || s == NULL ? "(absent)" : "(not a string)";
	n = json_string_length(s);
	for (i = 0; i < n && i < 40; i++)
		buf[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
	if (n > 40) {
		memcpy(buf + 40, "...", 4);
		return buf;
	}
	buf[i] = '\0';
	return buf;
}

/* jansson's error text, which quotes up to 20 bytes of the input near the error,
 * with every byte that is not printable ASCII shown as '?' */
static const char *json_error_shown(const json_error_t *jerr, char buf[JSON_ERROR_TEXT_LENGTH])
{
	size_t i;

	for (i = 0; i + 1 < JSON_ERROR_TEXT_LENGTH && jerr->text[i] != '\0'; i++)
		buf[i] = (jerr->text[i] >= 0x20 && jerr->text[i] < 0x7f) ? jerr->text[i] : '?';
	buf[i] = '\0';
	return buf;
}

/* Parse one decoded part as a JSON object; `part` names it in messages. */
static nhi_err parse_object(const struct nhi_buf *b, const char *part, json_t **out, enum nhi_token_error *why)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char shown_buf[JSON_ERROR_TEXT_LENGTH];
	json_error_t jerr;
	json_t *j;

	/* RFC 7515 §5.2 / RFC 8725 §3.2: UTF-8 only (jansson checks every byte); RFC
	 * 7519 §4 and RFC 7515 §4: duplicate names are rejected, never "last one wins" */
	j = json_loadb((const char *)b->data, b->len, JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL) {
		switch (json_error_code(&jerr)) {
		case json_error_invalid_utf8:
			rv = reject(why, NHI_TOKEN_E_UTF8, "the %s is not valid UTF-8", part);
			break;
		case json_error_duplicate_key:
			rv = reject(why, NHI_TOKEN_E_JSON_DUP, "the %s has a duplicate member (%s)", part,
				    json_error_shown(&jerr, shown_buf));
			break;
		default:
			rv = reject(why, NHI_TOKEN_E_JSON, "the %s is not valid JSON (%s)", part,
				    json_error_shown(&jerr, shown_buf));
			break;
		}
		goto out;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		rv = reject(why, NHI_TOKEN_E_JSON, "the %s is not a JSON object", part);
		goto out;
	}
	*out = j;
	rv = NHI_OK;
out:
	return rv;
}

/* RFC 7515 §4.1.9: typ is a media type, case-insensitive, "application/" optional. */
static bool typ_is_jwt(json_t *typ)
{
	const char *t = json_string_value(typ);

	return t != NULL && (strcasecmp(t, "JWT") == 0 || strcasecmp(t, "application/jwt") == 0);
}

/* A NumericDate: our profile takes integers only, in [0, year 9999]. */
static bool get_time(json_t *claims, const char *name, bool *present, int64_t *val)
{
	json_t *m = json_object_get(claims, name);

	*present = m != NULL;
	if (m == NULL)
		return true;
	if (!json_is_integer(m) || json_integer_value(m) < 0 || json_integer_value(m) > NHI_TOKEN_NUMERICDATE_MAX)
		return false;
	*val = (int64_t)json_integer_value(m);
	return true;
}

static bool string_within(json_t *s, size_t max)
{
	return json_is_string(s) && json_string_length(s) > 0 && json_string_length(s) <= max &&
	       strlen(json_string_value(s)) == json_string_length(s);
}

/* RFC 7519 §4.1.3: aud is one string or an array of strings (every element, not only
 * those before a match); one value must be accepted here. */
static const char *match_aud(const struct nhi_token_verifier *v, const struct nhi_token_check *chk, json_t *aud)
{
	const char *found = NULL, *s;
	bool ok = json_is_string(aud);
	size_t i, j, n = ok ? 1 : 0;

	if (!ok && json_is_array(aud) && json_array_size(aud) > 0 && json_array_size(aud) <= NHI_TOKEN_AUD_MAX) {
		n = json_array_size(aud);
		ok = true;
		for (i = 0; ok && i < n; i++) /* every element a string, not only the one that matches */
			ok = json_is_string(json_array_get(aud, i));
	}
	for (i = 0; ok && found == NULL && i < n; i++) {
		s = json_string_value(json_is_string(aud) ? aud : json_array_get(aud, i));
		if (chk->audience != NULL)
			found = strcmp(s, chk->audience) == 0 ? chk->audience : NULL;
		for (j = 0; chk->audience == NULL && found == NULL && j < v->n_audiences; j++)
			if (strcmp(s, v->audiences[j]) == 0)
				found = v->audiences[j];
	}
	return found;
}

/* Copy s to *p (sized by the caller), advance *p; returns the copy. */
static const char *put(char **p, const char *s)
{
	size_t n = strlen(s) + 1;
	char *dst = *p;

	memcpy(dst, s, n);
	*p += n;
	return dst;
}

/* Copy the verified claims into one allocation. */
static nhi_err build_claims(json_t *c, const char *aud, const char *kid, const struct claim_facts *f,
			    struct nhi_token_claims **out, size_t *size)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *iss = json_string_value(json_object_get(c, "iss"));
	const char *sub = json_string_value(json_object_get(c, "sub"));
	const char *jti = json_string_value(json_object_get(c, "jti"));
	json_t *roles = json_object_get(c, "roles"), *r;
	size_t n_roles = json_array_size(roles), i, strings, head;
	struct nhi_token_claims *cl = NULL;
	const char **role_ptrs;
	char *p;

	strings = strlen(iss) + strlen(sub) + strlen(jti) + strlen(aud) + 4;
	json_array_foreach (roles, i, r)
		strings += json_string_length(r) + 1;
	head = sizeof(*cl) + n_roles * sizeof(char *);
	cl = calloc(1, head + strings);
	NHI_CHECK(cl != NULL, NHI_ERR_NOMEM, "out of memory");
	role_ptrs = (const char **)(cl + 1);
	p = (char *)cl + head;
	cl->iss = put(&p, iss);
	cl->sub = put(&p, sub);
	cl->jti = put(&p, jti);
	cl->aud = put(&p, aud);
	json_array_foreach (roles, i, r)
		role_ptrs[i] = put(&p, json_string_value(r));
	cl->roles = role_ptrs;
	cl->n_roles = n_roles;
	cl->iat = f->iat;
	cl->nbf = f->nbf;
	cl->exp = f->exp;
	memcpy(cl->cnf_x5t_s256, f->x5t, 32);
	memcpy(cl->kid, kid, 44);
	*out = cl;
	*size = head + strings;
	rv = NHI_OK;
out:
	return rv;
}

void nhi_token_claims_free(struct nhi_token_claims *c)
{
	free(c);
}

/* The checks of a token's times and binding that depend on the call: its clock
 * (RFC 7519 §4.1.4, §4.1.5; iat not in the future) and the presented certificate. */
static nhi_err check_window(const struct nhi_token_verifier *v, int64_t now, int64_t exp, bool has_nbf, int64_t nbf,
			    enum nhi_token_error *why)
{
	int64_t leeway = v->leeway_s;
	nhi_err rv = NHI_OK;

	/* RFC 7519 §4.1.4: the current time must be before exp (plus the leeway) */
	if (now >= exp + leeway)
		rv = reject(why, NHI_TOKEN_E_EXPIRED, "expired %lld s ago (leeway %lld s)", (long long)(now - exp),
			    (long long)leeway);
	/* RFC 7519 §4.1.5 */
	else if (has_nbf && now + leeway < nbf)
		rv = reject(why, NHI_TOKEN_E_NBF, "valid only in %lld s (leeway %lld s): check the clocks",
			    (long long)(nbf - now), (long long)leeway);
	return rv;
}

static nhi_err check_issued(const struct nhi_token_verifier *v, int64_t now, int64_t iat, enum nhi_token_error *why)
{
	int64_t leeway = v->leeway_s;
	nhi_err rv = NHI_OK;

	if (iat > now + leeway)
		rv = reject(why, NHI_TOKEN_E_IAT, "issued %lld s in the future (leeway %lld s): check the clocks",
			    (long long)(iat - now), (long long)leeway);
	return rv;
}

/* RFC 8705 §3.1: the certificate the agent presents is the one the token is bound to */
static nhi_err check_binding(const struct nhi_token_check *chk, const uint8_t x5t[32], enum nhi_token_error *why)
{
	nhi_err rv = NHI_OK;
	uint8_t presented[32];

	if (chk->cert_der == NULL)
		goto out;
	NHI_TRY(nhi_sha256(chk->cert_der, chk->cert_der_len, presented));
	if (!nhi_ct_equal(presented, x5t, 32))
		rv = reject(why, NHI_TOKEN_E_CNF_MISMATCH,
			    "the presented certificate is not the one the token is bound to (cnf.x5t#S256)");
out:
	return rv;
}

/* Checks the claims of a token whose signature verified. */
static nhi_err check_claims(const struct nhi_token_verifier *v, const struct nhi_token_check *chk, json_t *c,
			    int64_t now, enum nhi_token_error *why, const char **aud_out, struct claim_facts *f)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf bin = {0};
	json_t *m, *cnf, *r;
	bool has_iat, has_nbf, has_exp;
	int64_t iat = 0, nbf = 0, exp = 0;
	const char *aud;
	char shown_buf[48];
	size_t i;

	m = json_object_get(c, "iss");
	if (!json_is_string(m) || strcmp(json_string_value(m), v->issuer) != 0) {
		rv = reject(why, NHI_TOKEN_E_ISS, "iss '%s' is not the trusted issuer", shown(m, shown_buf));
		goto out;
	}
	m = json_object_get(c, "aud");
	aud = match_aud(v, chk, m);
	if (aud == NULL) {
		rv = reject(why, NHI_TOKEN_E_AUD,
			    "aud '%s' is not an audience accepted here (a string, or an array of 1..%d strings)",
			    json_is_array(m) ? "(an array)" : shown(m, shown_buf), NHI_TOKEN_AUD_MAX);
		goto out;
	}
	if (!get_time(c, "exp", &has_exp, &exp) || !get_time(c, "iat", &has_iat, &iat) ||
	    !get_time(c, "nbf", &has_nbf, &nbf)) {
		rv = reject(why, NHI_TOKEN_E_CLAIMS, "exp, iat and nbf must be integer NumericDates");
		goto out;
	}
	if (!has_exp) {
		rv = reject(why, NHI_TOKEN_E_EXP_MISSING, "the token has no exp: every token must expire");
		goto out;
	}
	NHI_TRY(check_window(v, now, exp, has_nbf, nbf, why));
	if (!has_iat) {
		rv = reject(why, NHI_TOKEN_E_IAT, "the token has no iat (needed for the lifetime cap)");
		goto out;
	}
	NHI_TRY(check_issued(v, now, iat, why));
	if (exp <= iat || exp - iat > (int64_t)v->lifetime_max_s) {
		rv = reject(why, NHI_TOKEN_E_LIFETIME, "lifetime %lld s is not within 1..%u s", (long long)(exp - iat),
			    v->lifetime_max_s);
		goto out;
	}
	if (!string_within(json_object_get(c, "sub"), NHI_TOKEN_CLAIM_MAX_BYTES)) {
		rv = reject(why, NHI_TOKEN_E_SUB, "sub must be a string of 1..%d bytes", NHI_TOKEN_CLAIM_MAX_BYTES);
		goto out;
	}
	if (!string_within(json_object_get(c, "jti"), NHI_TOKEN_JTI_MAX_BYTES)) {
		rv = reject(why, NHI_TOKEN_E_JTI, "jti must be a string of 1..%d bytes", NHI_TOKEN_JTI_MAX_BYTES);
		goto out;
	}
	m = json_object_get(c, "roles");
	if (m != NULL) {
		bool ok = json_is_array(m) && json_array_size(m) <= NHI_TOKEN_ROLES_MAX;

		json_array_foreach (m, i, r)
			ok = ok && string_within(r, NHI_TOKEN_ROLE_MAX_BYTES);
		if (!ok) {
			rv = reject(why, NHI_TOKEN_E_CLAIMS,
				    "roles must be an array of at most %d strings of 1..%d bytes", NHI_TOKEN_ROLES_MAX,
				    NHI_TOKEN_ROLE_MAX_BYTES);
			goto out;
		}
	}
	/* RFC 8705 §3.1: the token is bound to the certificate the agent presents */
	cnf = json_object_get(c, "cnf");
	if (cnf == NULL) {
		rv = reject(why, NHI_TOKEN_E_CNF_MISSING, "the token has no cnf: it is not bound to a certificate");
		goto out;
	}
	m = json_object_get(cnf, "x5t#S256");
	if (!json_is_object(cnf) || json_object_size(cnf) != 1 || !json_is_string(m) || json_string_length(m) != 43 ||
	    nhi_b64url_decode(json_string_value(m), 43, &bin) != NHI_OK || bin.len != 32) {
		rv = reject(why, NHI_TOKEN_E_CNF_FORM, "cnf must be {\"x5t#S256\": base64url SHA-256 (43 chars)}");
		goto out;
	}
	memcpy(f->x5t, bin.data, 32);
	NHI_TRY(check_binding(chk, f->x5t, why));
	*aud_out = aud;
	f->iat = iat;
	f->nbf = has_nbf ? nbf : iat;
	f->has_nbf = has_nbf;
	f->exp = exp;
	rv = NHI_OK;
out:
	nhi_buf_free(&bin);
	return rv;
}

/*
 * The protected header: pin alg, refuse crit and key-carrying members, insist on
 * typ, find the key by kid. *key_out is a trusted key when NHI_OK.
 */
static nhi_err check_header(const struct nhi_token_verifier *v, const char *enc, size_t len,
			    struct trusted_key **key_out, enum nhi_token_error *why)
{
	static const char *const key_headers[] = {"jku", "jwk", "x5u", "x5c"};
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf hdr = {0};
	json_t *h = NULL, *m;
	char shown_buf[48];
	size_t i;

	/* our issuer's own header for a trusted key: every check below holds for it */
	for (i = 0; i < v->n_keys; i++) {
		if (len == v->keys[i]->canon_hdr_len && memcmp(enc, v->keys[i]->canon_hdr, len) == 0) {
			*key_out = v->keys[i];
			rv = NHI_OK;
			goto out;
		}
	}
	/* RFC 7515 §7.1 with RFC 4648 §5 strictly: no padding, no '+' '/', no whitespace */
	if (nhi_b64url_decode(enc, len, &hdr) != NHI_OK) {
		rv = reject(why, NHI_TOKEN_E_B64, "the header is not strict base64url (%s)", nhi_err_detail());
		goto out;
	}
	NHI_TRY(parse_object(&hdr, "header", &h, why));
	/* RFC 8725 §3.1: the algorithm is pinned before any key is looked at; "none",
	 * HMAC (the public-key-as-HMAC-secret confusion) and every other value fail here */
	m = json_object_get(h, "alg");
	if (!json_is_string(m) || strcmp(json_string_value(m), "ES256") != 0) {
		rv = reject(why, NHI_TOKEN_E_ALG, "alg '%s' is not allowed: only ES256", shown(m, shown_buf));
		goto out;
	}
	/* RFC 7515 §4.1.11: we understand no extension, so any crit fails */
	if (json_object_get(h, "crit") != NULL) {
		rv = reject(why, NHI_TOKEN_E_CRIT, "crit header present: no JWS extension is supported");
		goto out;
	}
	/* RFC 8725 §3.10: never a key, or a place to fetch one, from the token */
	for (i = 0; i < sizeof(key_headers) / sizeof(key_headers[0]); i++) {
		if (json_object_get(h, key_headers[i]) != NULL) {
			rv = reject(why, NHI_TOKEN_E_HEADER_KEY,
				    "'%s' header present: keys come only from the trusted set", key_headers[i]);
			goto out;
		}
	}
	/* RFC 8725 §3.11: explicit typing */
	m = json_object_get(h, "typ");
	if (!typ_is_jwt(m)) {
		rv = reject(why, NHI_TOKEN_E_TYP, "typ '%s' is not JWT", shown(m, shown_buf));
		goto out;
	}
	m = json_object_get(h, "kid");
	if (!json_is_string(m) || json_string_length(m) == 0) {
		rv = reject(why, NHI_TOKEN_E_KID_MISSING, "no kid: every token names its key");
		goto out;
	}
	*key_out = json_string_length(m) == 43 ? find_key(v, json_string_value(m)) : NULL;
	if (*key_out == NULL) {
		rv = reject(why, NHI_TOKEN_E_KID_UNKNOWN, "kid '%s' is not a trusted key (unknown or removed)",
			    shown(m, shown_buf));
		goto out;
	}
	rv = NHI_OK;
out:
	json_decref(h);
	nhi_buf_free(&hdr);
	return rv;
}

nhi_err nhi_token_verify(const struct nhi_token_verifier *v, const char *token, size_t len,
			 const struct nhi_token_check *chk, struct nhi_token_claims **out,
			 enum nhi_token_error *why_out)
{
	static const struct nhi_token_check no_check;
	nhi_err rv = NHI_ERR_INTERNAL;
	enum nhi_token_error why = NHI_TOKEN_OK;
	struct nhi_buf pay = {0}, sig = {0};
	json_t *c = NULL;
	struct trusted_key *key = NULL;
	struct nhi_token_claims *hit = NULL, *kept = NULL;
	struct claim_facts facts = {0};
	enum memo_found found;
	const char *d1, *d2, *end, *aud = NULL;
	size_t hlen, plen, slen, size = 0;
	int64_t now;
	uint8_t h[32];
	bool hashed, verified = false;

	if (out != NULL)
		*out = NULL;
	if (chk == NULL)
		chk = &no_check;
	NHI_CHECK(v != NULL && (token != NULL || len == 0), NHI_ERR_ARG, "no verifier or token");
	NHI_CHECK(chk->audience != NULL || v->n_audiences > 0, NHI_ERR_ARG,
		  "token verifier has no audience to accept: configure one or pass it per call");
	NHI_CHECK(chk->now >= 0 && chk->now <= NHI_TOKEN_NUMERICDATE_MAX, NHI_ERR_ARG, "check time out of range");
	now = chk->now != 0 ? chk->now : (int64_t)time(NULL);

	/* framing: bounded, three parts, nothing parsed yet */
	if (len > NHI_TOKEN_MAX_BYTES) {
		rv = reject(&why, NHI_TOKEN_E_TOO_LARGE, "%zu bytes, above the %d-byte cap", len, NHI_TOKEN_MAX_BYTES);
		goto out;
	}
	end = token + len;
	d1 = memchr(token, '.', len);
	d2 = d1 != NULL ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
	if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL) {
		rv = reject(&why, NHI_TOKEN_E_SEGMENTS, "a compact JWS has exactly three dot-separated parts");
		goto out;
	}
	hlen = (size_t)(d1 - token);
	plen = (size_t)(d2 - d1 - 1);
	slen = (size_t)(end - d2 - 1);
	if (hlen == 0 || plen == 0) {
		rv = reject(&why, NHI_TOKEN_E_EMPTY, "empty %s (detached payloads are not accepted)",
			    hlen == 0 ? "header" : "payload");
		goto out;
	}
	if (hlen > NHI_TOKEN_HEADER_MAX_BYTES) {
		rv = reject(&why, NHI_TOKEN_E_TOO_LARGE, "header of %zu bytes, above the %d-byte cap", hlen,
			    NHI_TOKEN_HEADER_MAX_BYTES);
		goto out;
	}
	NHI_TRY(check_header(v, token, hlen, &key, &why));

	/* signature over the exact bytes received (RFC 7515 §5.2 step 8) */
	if (nhi_b64url_decode(d2 + 1, slen, &sig) != NHI_OK) {
		rv = reject(&why, NHI_TOKEN_E_B64, "the signature is not strict base64url (%s)", nhi_err_detail());
		goto out;
	}
	if (sig.len != 64) {
		rv = reject(&why, NHI_TOKEN_E_SIG_FORMAT, "ES256 signature must be 64 bytes R||S, got %zu%s", sig.len,
			    sig.len > 64 && sig.data[0] == 0x30 ? " (DER is not the JWS form)" : "");
		goto out;
	}
	hashed = v->memo != NULL && memo_hash(v->memo, token, len, h);
	/* memoised claims passed against the verifier's own audiences: not for a call naming its own */
	found = hashed ? memo_seen(v->memo, key, h, chk->audience == NULL, &facts, out != NULL ? &hit : NULL)
		       : MEMO_MISS;
	if (found == MEMO_CLAIMS) {
		/* every check of these bytes that does not depend on the call passed when
		 * they were remembered; what does depend on it is checked again, in order */
		NHI_TRY(check_window(v, now, facts.exp, facts.has_nbf, facts.nbf, &why));
		NHI_TRY(check_issued(v, now, facts.iat, &why));
		NHI_TRY(check_binding(chk, facts.x5t, &why));
		if (out != NULL) {
			*out = hit;
			hit = NULL;
		}
		rv = NHI_OK;
		goto out;
	}
	if (found == MEMO_MISS) {
		rv = nhi_es256_verify(&key->es, (const uint8_t *)token, (size_t)(d2 - token), sig.data);
		if (rv == NHI_ERR_VERIFY) {
			rv = reject(&why, NHI_TOKEN_E_SIG, "signature does not verify with key %s", key->kid);
			goto out;
		}
		NHI_TRY(rv);
		verified = hashed; /* remembered at the end, whatever the claims turn out to be */
	}

	/* the payload is decoded and parsed only once it is known to come from a trusted key */
	if (nhi_b64url_decode(d1 + 1, plen, &pay) != NHI_OK) {
		rv = reject(&why, NHI_TOKEN_E_B64, "the payload is not strict base64url (%s)", nhi_err_detail());
		goto out;
	}
	/* claims: only now is the payload parsed */
	NHI_TRY(parse_object(&pay, "claims", &c, &why));
	NHI_TRY(check_claims(v, chk, c, now, &why, &aud, &facts));
	if (out != NULL) {
		NHI_TRY(build_claims(c, aud, key->kid, &facts, out, &size));
		/* a copy for the memo (none if memory is short: the next call parses again) */
		if (hashed && chk->audience == NULL && size <= NHI_TOKEN_MEMO_CLAIMS_MAX_BYTES)
			kept = claims_copy(*out, size);
	}
	rv = NHI_OK;
out:
	/* one store: a signature this call checked, with the claims when they are kept */
	if (verified || kept != NULL)
		memo_store(v->memo, key, h, kept, size, facts.has_nbf);
	nhi_token_claims_free(hit);
	if (why_out != NULL)
		*why_out = why;
	json_decref(c);
	nhi_buf_free(&pay);
	nhi_buf_free(&sig);
	return rv;
}
