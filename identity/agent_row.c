/*
 * identity/agent_row.c — one line of the agents JSONL (docs/identity.md) parsed
 * with jansson and validated field by field into a row for the SQLite image.
 * Unknown fields are errors (a typo must not silently drop a restriction).
 */
#include "identity_internal.h"

#include "../common/jsonw.h"

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

bool nhi_agent_id_valid(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > NHI_AGENT_ID_MAX_BYTES)
		return false;
	for (i = 0; i < len; i++) {
		char c = s[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');

		if (!(alnum || (i > 0 && (c == '.' || c == '_' || c == '-'))))
			return false;
	}
	return true;
}

/* roles: [A-Za-z0-9._:-]; audiences: any printable ASCII but space (URIs, names) */
static bool word_valid_n(const char *s, size_t n, size_t max, bool audience)
{
	size_t i;

	if (n == 0 || n > max)
		return false;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (audience) {
			if (c <= 0x20 || c >= 0x7f)
				return false;
		} else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
			     c == '_' || c == ':' || c == '-')) {
			return false;
		}
	}
	return true;
}

static bool word_valid(const char *s, size_t max, bool audience)
{
	return word_valid_n(s, strlen(s), max, audience);
}

bool nhi_rfc3339_parse(const char *s, long long *out)
{
	struct tm tm;
	const char *end;
	char back[32];
	time_t t;

	/* strict UTC form only: "2026-01-31T12:00:00Z" */
	if (strlen(s) != 20)
		return false;
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (end == NULL || *end != '\0')
		return false;
	t = timegm(&tm);
	if (t == (time_t)-1 || t < 0)
		return false;
	/* reject what timegm normalised (Feb 30, 24:00:00, leap seconds) */
	nhi_time_rfc3339((long long)t, back, sizeof(back));
	if (strcmp(back, s) != 0)
		return false;
	*out = (long long)t;
	return true;
}

/* string or array of strings -> callback per string */
static nhi_err each_string(json_t *v, const char *field, size_t max_n, size_t *n,
			   nhi_err (*fn)(void *ctx, const char *s), void *ctx)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i;
	json_t *e;

	*n = 0;
	if (json_is_string(v)) {
		NHI_TRY(fn(ctx, json_string_value(v)));
		*n = 1;
		rv = NHI_OK;
		goto out;
	}
	NHI_CHECK(json_is_array(v), NHI_ERR_FORMAT, "\"%s\" must be an array of strings", field);
	NHI_CHECK(json_array_size(v) <= max_n, NHI_ERR_LIMIT, "\"%s\" has %zu entries, at most %zu allowed", field,
		  json_array_size(v), max_n);
	json_array_foreach(v, i, e) {
		NHI_CHECK(json_is_string(e), NHI_ERR_FORMAT, "\"%s\"[%zu] is not a string", field, i);
		NHI_TRY(fn(ctx, json_string_value(e)));
		(*n)++;
	}
	rv = NHI_OK;
out:
	return rv;
}

struct words_ctx {
	char *dst;
	size_t cap;
	size_t max_len;
	bool audience;
	const char *field;
};

static nhi_err add_word(void *vctx, const char *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct words_ctx *c = vctx;
	size_t used = strlen(c->dst), n = strlen(s);
	const char *p = c->dst;

	NHI_CHECK(word_valid(s, c->max_len, c->audience), NHI_ERR_FORMAT,
		  "%s entry '%.64s' is not valid: %s, 1-%zu bytes", c->field, s,
		  c->audience ? "printable ASCII without spaces" : "letters, digits and . _ : -", c->max_len);
	/* no duplicates: a repeated entry is most likely a copy-paste slip */
	while (*p != '\0') {
		size_t w = strcspn(p, " ");

		NHI_CHECK(!(w == n && memcmp(p, s, n) == 0), NHI_ERR_FORMAT, "%s entry '%s' is listed twice", c->field, s);
		p += w + (p[w] == ' ');
	}
	NHI_CHECK(used + 1 + n < c->cap, NHI_ERR_LIMIT, "too many %s", c->field);
	if (used > 0)
		c->dst[used++] = ' ';
	memcpy(c->dst + used, s, n + 1);
	rv = NHI_OK;
out:
	return rv;
}

struct certs_ctx {
	struct nhi_agent_row *row;
	const char *base_dir;
};

static nhi_err add_thumbprint(struct nhi_agent_row *row, const uint8_t tp[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i;
	char hex[65];

	for (i = 0; i < row->n_certs; i++) {
		nhi_hex(tp, 32, hex);
		NHI_CHECK(memcmp(row->certs[i], tp, 32) != 0, NHI_ERR_FORMAT, "certificate %s is listed twice", hex);
	}
	NHI_CHECK(row->n_certs < NHI_AGENT_CERTS_MAX, NHI_ERR_LIMIT, "more than %d certificates for one agent",
		  NHI_AGENT_CERTS_MAX);
	memcpy(row->certs[row->n_certs++], tp, 32);
	rv = NHI_OK;
out:
	return rv;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* 64 hex digits, or the 95-character "AB:CD:..." form `openssl x509 -fingerprint -sha256` prints */
static nhi_err add_sha256(void *vctx, const char *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct certs_ctx *c = vctx;
	size_t n = strlen(s), i, step = n == 95 ? 3 : 2;
	uint8_t tp[32];

	NHI_CHECK(n == 64 || n == 95, NHI_ERR_FORMAT,
		  "cert_sha256 '%.100s' is not a SHA-256 thumbprint (64 hex digits of the certificate DER's SHA-256)", s);
	for (i = 0; i < 32; i++) {
		const char *p = s + i * step;
		int hi = hexval(p[0]), lo = hexval(p[1]);

		NHI_CHECK(hi >= 0 && lo >= 0 && (step == 2 || i == 31 || p[2] == ':'), NHI_ERR_FORMAT,
			  "cert_sha256 '%.100s' is not hex", s);
		tp[i] = (uint8_t)(hi << 4 | lo);
	}
	NHI_TRY(add_thumbprint(c->row, tp));
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err add_pem_file(void *vctx, const char *s)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct certs_ctx *c = vctx;
	char path[4096];
	struct nhi_buf pem = {0};
	BIO *bio = NULL;
	X509 *x = NULL;
	unsigned char *der = NULL;
	int der_len;
	uint8_t tp[32];

	NHI_CHECK(s[0] != '\0', NHI_ERR_FORMAT, "cert_pem_file is empty");
	/* no base directory (the fuzz target): no file is opened at all */
	NHI_CHECK(c->base_dir != NULL, NHI_ERR_FORMAT, "cert_pem_file '%.200s': no base directory to read certificates from",
		  s);
	if (s[0] == '/')
		NHI_CHECK((size_t)snprintf(path, sizeof(path), "%s", s) < sizeof(path), NHI_ERR_LIMIT, "path too long");
	else
		NHI_CHECK((size_t)snprintf(path, sizeof(path), "%s/%s", c->base_dir, s) < sizeof(path), NHI_ERR_LIMIT,
			  "path too long");
	rv = nhi_file_read(path, NHI_CERT_MAX_BYTES, &pem);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(NHI_ERR_FORMAT, "cert_pem_file");
		goto out;
	}
	bio = BIO_new_mem_buf(pem.data, (int)pem.len);
	NHI_CHECK_SSL(bio != NULL, NHI_ERR_NOMEM, "BIO_new_mem_buf");
	x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	NHI_CHECK_SSL(x != NULL, NHI_ERR_FORMAT, "cert_pem_file %.200s holds no PEM certificate", path);
	der_len = i2d_X509(x, &der);
	NHI_CHECK_SSL(der_len > 0, NHI_ERR_CRYPTO, "cannot encode the certificate in %.200s", path);
	NHI_TRY(nhi_sha256(der, (size_t)der_len, tp));
	NHI_TRY(add_thumbprint(c->row, tp));
	rv = NHI_OK;
out:
	OPENSSL_free(der);
	X509_free(x);
	BIO_free(bio);
	nhi_buf_free(&pem);
	return rv;
}

static const char *const fields[] = {
	"id", "status", "roles", "audiences", "cert_sha256", "cert_pem_file", "not_before", "not_after", "attributes",
};

nhi_err nhi_agent_row_parse(const char *line, size_t len, const char *base_dir, struct nhi_agent_row *row)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_error_t jerr;
	json_t *o = NULL, *v;
	const char *key, *s;
	struct words_ctx wc;
	struct certs_ctx cc = {row, base_dir};
	size_t i, n, got;
	bool known;

	memset(row, 0, sizeof(*row));
	NHI_CHECK(len <= NHI_BACKUP_JSONL_LINE_MAX_BYTES, NHI_ERR_LIMIT, "line longer than %d bytes",
		  NHI_BACKUP_JSONL_LINE_MAX_BYTES);
	o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	NHI_CHECK(o != NULL, NHI_ERR_FORMAT, "not JSON: %s (column %d)", jerr.text, jerr.column);
	NHI_CHECK(json_is_object(o), NHI_ERR_FORMAT, "not a JSON object");
	json_object_foreach(o, key, v) {
		known = false;
		for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
			known = known || strcmp(key, fields[i]) == 0;
		NHI_CHECK(known, NHI_ERR_FORMAT,
			  "unknown field \"%.64s\" (allowed: id, status, roles, audiences, cert_sha256, "
			  "cert_pem_file, not_before, not_after, attributes)",
			  key);
	}

	v = json_object_get(o, "id");
	NHI_CHECK(json_is_string(v), NHI_ERR_FORMAT, "\"id\" is missing or not a string");
	s = json_string_value(v);
	NHI_CHECK(nhi_agent_id_valid(s, json_string_length(v)), NHI_ERR_FORMAT,
		  "\"id\" '%.64s' is not valid: 1-%d of [A-Za-z0-9._-], starting with a letter or digit", s,
		  NHI_AGENT_ID_MAX_BYTES);
	memcpy(row->id, s, json_string_length(v) + 1);

	row->status = NHI_AGENT_ACTIVE;
	v = json_object_get(o, "status");
	if (v != NULL) {
		s = json_is_string(v) ? json_string_value(v) : "";
		if (strcmp(s, "active") == 0)
			row->status = NHI_AGENT_ACTIVE;
		else if (strcmp(s, "suspended") == 0)
			row->status = NHI_AGENT_SUSPENDED;
		else if (strcmp(s, "revoked") == 0)
			row->status = NHI_AGENT_REVOKED;
		else
			NHI_FAIL(NHI_ERR_FORMAT, "\"status\" must be \"active\", \"suspended\" or \"revoked\"");
	}

	wc = (struct words_ctx){row->roles, sizeof(row->roles), NHI_AGENT_ROLE_MAX_BYTES, false, "roles"};
	if ((v = json_object_get(o, "roles")) != NULL)
		NHI_TRY(each_string(v, "roles", NHI_AGENT_ROLES_MAX, &n, add_word, &wc));
	wc = (struct words_ctx){row->audiences, sizeof(row->audiences), NHI_AGENT_AUDIENCE_MAX_BYTES, true,
				"audiences"};
	if ((v = json_object_get(o, "audiences")) != NULL)
		NHI_TRY(each_string(v, "audiences", NHI_AGENT_AUDIENCES_MAX, &n, add_word, &wc));

	got = 0;
	if ((v = json_object_get(o, "cert_sha256")) != NULL) {
		NHI_TRY(each_string(v, "cert_sha256", NHI_AGENT_CERTS_MAX, &n, add_sha256, &cc));
		got += n;
	}
	if ((v = json_object_get(o, "cert_pem_file")) != NULL) {
		NHI_TRY(each_string(v, "cert_pem_file", NHI_AGENT_CERTS_MAX, &n, add_pem_file, &cc));
		got += n;
	}
	NHI_CHECK(got > 0, NHI_ERR_FORMAT,
		  "agent '%s' has no enrolled certificate: give \"cert_sha256\" or \"cert_pem_file\"", row->id);

	row->not_before = 0;
	row->not_after = NHI_AGENT_NOT_AFTER_MAX_S;
	if ((v = json_object_get(o, "not_before")) != NULL)
		NHI_CHECK(json_is_string(v) && nhi_rfc3339_parse(json_string_value(v), &row->not_before), NHI_ERR_FORMAT,
			  "\"not_before\" must be an RFC 3339 UTC time like \"2026-01-31T00:00:00Z\"");
	if ((v = json_object_get(o, "not_after")) != NULL)
		NHI_CHECK(json_is_string(v) && nhi_rfc3339_parse(json_string_value(v), &row->not_after), NHI_ERR_FORMAT,
			  "\"not_after\" must be an RFC 3339 UTC time like \"2027-01-31T00:00:00Z\"");
	NHI_CHECK(row->not_before <= row->not_after, NHI_ERR_FORMAT, "\"not_before\" is after \"not_after\"");

	v = json_object_get(o, "attributes");
	if (v == NULL) {
		memcpy(row->attributes, "{}", 3);
	} else {
		NHI_CHECK(json_is_object(v), NHI_ERR_FORMAT, "\"attributes\" must be a JSON object");
		n = json_dumpb(v, row->attributes, sizeof(row->attributes) - 1, JSON_COMPACT | JSON_SORT_KEYS);
		NHI_CHECK(n > 0 && n <= NHI_AGENT_ATTRIBUTES_MAX_BYTES, NHI_ERR_LIMIT,
			  "\"attributes\" is over %d bytes as compact JSON", NHI_AGENT_ATTRIBUTES_MAX_BYTES);
		row->attributes[n] = '\0';
		/* the rule an import applies, on the text the image will hold */
		NHI_TRY(nhi_agent_attributes_check(row->attributes, n));
	}
	rv = NHI_OK;
out:
	json_decref(o);
	return rv;
}

/*
 * A stored list (roles, audiences): what add_word writes, entries joined by one
 * space, each valid, none twice, at most max_n, shorter than the row's buffer.
 */
static bool words_valid(const char *s, size_t len, size_t max_n, size_t max_len, bool audience, size_t cap)
{
	size_t i = 0, j, w, n = 0, start[NHI_AGENT_AUDIENCES_MAX > NHI_AGENT_ROLES_MAX ? NHI_AGENT_AUDIENCES_MAX
											 : NHI_AGENT_ROLES_MAX];
	size_t wlen[sizeof(start) / sizeof(start[0])];
	bool ok = len < cap;

	while (ok && i < len) {
		w = 0;
		while (i + w < len && s[i + w] != ' ')
			w++;
		ok = n < max_n && n < sizeof(start) / sizeof(start[0]) && word_valid_n(s + i, w, max_len, audience) &&
		     (i + w == len || i + w + 1 < len); /* no trailing space */
		for (j = 0; ok && j < n; j++)
			ok = !(wlen[j] == w && memcmp(s + start[j], s + i, w) == 0);
		if (ok) {
			start[n] = i;
			wlen[n++] = w;
		}
		i += w + 1;
	}
	return ok;
}

nhi_err nhi_agent_stored_check(const struct nhi_agent_stored *r)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_agent_row *row = NULL; /* only for the sizes of its buffers */
	const char *id = r->id != NULL ? r->id : "";
	int idn = r->id_len > 64 ? 64 : (int)r->id_len;

	/* an invalid id is not printed: it may hold any byte */
	NHI_CHECK(r->id != NULL && nhi_agent_id_valid(r->id, r->id_len), NHI_ERR_FORMAT,
		  "an agent id (%zu bytes) is not valid: 1-%d of [A-Za-z0-9._-], starting with a letter or digit",
		  r->id_len, NHI_AGENT_ID_MAX_BYTES);
	NHI_CHECK(r->status != NULL &&
			  ((r->status_len == 6 && memcmp(r->status, "active", 6) == 0) ||
			   (r->status_len == 9 && memcmp(r->status, "suspended", 9) == 0) ||
			   (r->status_len == 7 && memcmp(r->status, "revoked", 7) == 0)),
		  NHI_ERR_FORMAT, "agent '%.*s': status is not active, suspended or revoked", idn, id);
	NHI_CHECK(r->roles != NULL && words_valid(r->roles, r->roles_len, NHI_AGENT_ROLES_MAX, NHI_AGENT_ROLE_MAX_BYTES,
						  false, sizeof(row->roles)),
		  NHI_ERR_FORMAT, "agent '%.*s': roles are not a list of valid, distinct roles", idn, id);
	NHI_CHECK(r->audiences != NULL && words_valid(r->audiences, r->audiences_len, NHI_AGENT_AUDIENCES_MAX,
						      NHI_AGENT_AUDIENCE_MAX_BYTES, true, sizeof(row->audiences)),
		  NHI_ERR_FORMAT, "agent '%.*s': audiences are not a list of valid, distinct audiences", idn, id);
	NHI_CHECK(r->not_before >= 0 && r->not_before <= r->not_after && r->not_after <= NHI_AGENT_NOT_AFTER_MAX_S,
		  NHI_ERR_FORMAT,
		  "agent '%.*s': not_before %lld and not_after %lld are not 0 <= not_before <= not_after <= %lld",
		  idn, id, r->not_before, r->not_after, NHI_AGENT_NOT_AFTER_MAX_S);
	NHI_CHECK(r->certs_len > 0 && r->certs_len % 32 == 0 && r->certs_len <= 32 * NHI_AGENT_CERTS_MAX,
		  NHI_ERR_FORMAT, "agent '%.*s': %zu bytes of certificate thumbprints, not 1-%d of 32 bytes", idn, id,
		  r->certs_len, NHI_AGENT_CERTS_MAX);
	rv = nhi_agent_attributes_check(r->attributes, r->attributes_len);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv, "agent '%.*s'", idn, id);
		goto out;
	}
	rv = NHI_OK;
out:
	return rv;
}
