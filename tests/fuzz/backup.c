/*
 * tests/fuzz/backup.c — the identity backup parsers, fed the same input four ways:
 *   1. as a backup file: header and framing (nhi_backup_inspect; no key needed),
 *   2. as a decrypted SQLite image: the hardened read-only open and every import
 *      check (schema, integrity, meta, counts, rows) that runs before a store is
 *      swapped in; then, when the image passes them, loaded into a store as an import
 *      would and every row looked up as nhid does (by id, by each thumbprint the row
 *      and the certificate index name, the policy check, roles and audiences, the
 *      /v1/resolve reply): a row that passes the import but breaks a lookup crashes
 *      here. The reply must carry the stored attributes as stored, and SQLite must
 *      count as many members in them as jansson (a key listed twice would differ),
 *   3. as agents JSONL: each line through the validator (no file is ever opened:
 *      cert_pem_file is refused without a base directory),
 *   4. as attributes text: nhi_agent_attributes_check against jansson, both ways:
 *      what it accepts jansson reads as one object with keys sorted as it sorts them,
 *      and what jansson writes from any object (nhictl backup) it accepts.
 * Seeds in tests/fuzz/corpus/backup/: a real backup, real images (one with nested
 * attributes), hostile images (one with a bad row, three with a duplicate key),
 * JSONL samples, attributes texts, truncations.
 */
#include "../../identity/identity_internal.h"
#include "../../server/server_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_IMAGE_MAX_BYTES (1024 * 1024) /* keep one run fast */
#define FUZZ_LOOKUP_ROWS_MAX 64            /* rows looked up per image */

/* an invariant broken: a crash the fuzzer reports, with what broke */
static void fuzz_fail(const char *what, const char *detail)
{
	fprintf(stderr, "backup fuzz: %s: %.300s\n", what, detail != NULL ? detail : "");
	abort();
}

/* nodes of a JSON value: the value, and every member and element inside it */
static long long json_nodes(json_t *v)
{
	long long n = 1;
	const char *k;
	json_t *e;
	size_t i;

	if (json_is_object(v)) {
		json_object_foreach(v, k, e)
			n += json_nodes(e);
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, e)
			n += json_nodes(e);
	}
	return n;
}

/* what the server does with one record it found, as h_tokens and h_resolve do */
static void use_record(struct nhi_agent *a, const char *id, long long now)
{
	struct nhi_token_claims cl = {0};
	struct nhi_buf text = {0};
	json_t *reply, *stored, *got;
	char *attrs;
	size_t i;

	if (strcmp(a->id, id) != 0)
		fuzz_fail("a record of another agent", a->id);
	(void)!nhi_agent_check(a, now);
	(void)nhi_agent_has_role(a, "resolver");
	(void)nhi_agent_has_role(a, "admin");
	(void)nhi_agent_allows_audience(a, "inference");
	for (i = 0; i < a->n_roles; i++)
		if (!nhi_agent_has_role(a, a->roles[i]))
			fuzz_fail("a listed role is not held", a->roles[i]);
	for (i = 0; i < a->n_audiences; i++)
		if (!nhi_agent_allows_audience(a, a->audiences[i]))
			fuzz_fail("a listed audience is not allowed", a->audiences[i]);
	/* the resolve reply, with the claims a token of this agent would carry */
	cl.iss = "https://nhid.fuzz";
	cl.sub = a->id;
	cl.jti = "fuzz-jti";
	cl.aud = a->n_audiences > 0 ? a->audiences[0] : "inference";
	cl.roles = a->roles;
	cl.n_roles = a->n_roles;
	cl.iat = cl.nbf = now;
	cl.exp = now + 60;
	if (nhi_routes_resolve_text(a, &cl, &text) == NHI_OK) {
		reply = json_loadb((const char *)text.data, text.len, JSON_REJECT_DUPLICATES, NULL);
		stored = json_loads(a->attributes, JSON_REJECT_DUPLICATES, NULL);
		got = json_object_get(json_object_get(reply, "agent"), "attributes");
		if (reply == NULL)
			fuzz_fail("the resolve reply is not JSON", (const char *)text.data);
		/* imported attributes reach the reply as stored, never replaced by {} */
		if (stored == NULL || !json_equal(stored, got))
			fuzz_fail("the reply's attributes differ from the stored ones", a->attributes);
		json_decref(reply);
		json_decref(stored);
	}
	nhi_buf_free(&text);
	attrs = nhi_routes_attributes_text(a->attributes);
	free(attrs);
}

static void lookup_id(struct nhi_store *s, const char *id, long long not_before, long long not_after)
{
	const long long when[] = {0, not_before, not_after, not_after + 1};
	struct nhi_agent *a = NULL;
	size_t i;

	if (nhi_store_find_id(s, id, &a) != NHI_OK)
		fuzz_fail("an imported agent is not found by id", nhi_err_detail());
	use_record(a, id, not_before);
	nhi_agent_free(a);
	for (i = 0; i < sizeof(when) / sizeof(when[0]); i++) {
		a = NULL;
		if (nhi_store_resolve_id(s, id, when[i], &a) == NHI_OK)
			use_record(a, id, when[i]);
		nhi_agent_free(a);
	}
}

/*
 * By thumbprint, as the TLS caller is found. The agent found may be another than the
 * row's (an image whose index maps the certificate elsewhere passes the counts): it
 * must list the certificate, which the store checks.
 */
static void lookup_tp(struct nhi_store *s, const uint8_t tp[32], long long now)
{
	struct nhi_agent *a = NULL;
	size_t i;
	bool listed = false;

	if (nhi_store_find_thumbprint(s, tp, &a) == NHI_OK) {
		for (i = 0; i < a->n_thumbprints; i++)
			listed = listed || memcmp(a->thumbprints[i], tp, 32) == 0;
		if (!listed)
			fuzz_fail("found by a certificate it does not list", a->id);
		use_record(a, a->id, now);
	}
	nhi_agent_free(a);
	a = NULL;
	if (nhi_store_resolve_thumbprint(s, tp, now, &a) == NHI_OK)
		use_record(a, a->id, now);
	nhi_agent_free(a);
}

/* SQLite's reading of the stored attributes against jansson's: as many members */
static void attributes_agree(sqlite3 *db, const char *id, const char *attributes)
{
	sqlite3_stmt *st = NULL;
	json_t *v = json_loads(attributes, 0, NULL);

	if (v == NULL)
		fuzz_fail("jansson cannot read imported attributes", attributes);
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM agents, json_tree(agents.attributes) WHERE agents.id = ?1", -1,
			       &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		/* an error (SQLite's own JSON depth limit) is no disagreement nhid acts on */
		if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) != json_nodes(v))
			fuzz_fail("SQLite and jansson count different members", attributes);
	}
	sqlite3_finalize(st);
	json_decref(v);
}

static void lookups(sqlite3 *db, const uint8_t *image, size_t size)
{
	struct nhi_store *s = NULL;
	sqlite3_stmt *st = NULL;
	const unsigned char *certs;
	const char *id;
	size_t i, n, rows = 0;

	if (nhi_store_new(&s) != NHI_OK)
		return;
	/* the same checks again, as an import runs them (two connections, a thread) */
	if (nhi_store_insecure_load_image(s, image, size) != NHI_OK)
		fuzz_fail("an image that passed nhi_image_check does not load", nhi_err_detail());
	if (sqlite3_prepare_v2(db, "SELECT id, not_before, not_after, certs, attributes FROM agents", -1, &st, NULL) ==
	    SQLITE_OK) {
		while (rows++ < FUZZ_LOOKUP_ROWS_MAX && sqlite3_step(st) == SQLITE_ROW) {
			id = (const char *)sqlite3_column_text(st, 0);
			certs = sqlite3_column_blob(st, 3);
			n = (size_t)sqlite3_column_bytes(st, 3) / 32;
			lookup_id(s, id, sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2));
			for (i = 0; i < n; i++)
				lookup_tp(s, certs + 32 * i, sqlite3_column_int64(st, 1));
			attributes_agree(db, id, (const char *)sqlite3_column_text(st, 4));
		}
	}
	sqlite3_finalize(st);
	st = NULL;
	/* every index row, including one that names an agent not listing it */
	rows = 0;
	if (sqlite3_prepare_v2(db, "SELECT thumbprint FROM agent_certs", -1, &st, NULL) == SQLITE_OK)
		while (rows++ < FUZZ_LOOKUP_ROWS_MAX && sqlite3_step(st) == SQLITE_ROW)
			if (sqlite3_column_bytes(st, 0) == 32)
				lookup_tp(s, sqlite3_column_blob(st, 0), 0);
	sqlite3_finalize(st);
	nhi_store_free(s);
}

static void as_image(const uint8_t *data, size_t size)
{
	sqlite3 *db = NULL;
	struct nhi_image_meta meta;
	uint8_t *copy;

	if (size < 512 || size % 512 != 0 || size > FUZZ_IMAGE_MAX_BYTES)
		return;
	/* an aligned private copy, as the real image lives in page-aligned secret memory */
	copy = nhi_secret_alloc(size);
	if (copy == NULL)
		return;
	memcpy(copy, data, size);
	if (nhi_image_open(copy, size, &db) == NHI_OK) {
		if (nhi_image_check(db, NULL, NULL, &meta) == NHI_OK)
			lookups(db, copy, size);
		sqlite3_close(db);
	}
	nhi_secret_free(copy);
}

static void as_jsonl(const uint8_t *data, size_t size)
{
	struct nhi_agent_row *row = malloc(sizeof(*row));
	size_t start = 0, i;

	if (row == NULL)
		return;
	for (i = 0; i <= size; i++) {
		if (i == size || data[i] == '\n') {
			if (i > start)
				(void)!nhi_agent_row_parse((const char *)data + start, i - start, NULL, row);
			start = i + 1;
		}
	}
	free(row);
}

static void as_attributes(const uint8_t *data, size_t size)
{
	json_t *v;
	char *sorted = NULL, *kept = NULL, *reply, text[NHI_AGENT_ATTRIBUTES_MAX_BYTES + 2];
	bool ok;

	if (size > NHI_AGENT_ATTRIBUTES_MAX_BYTES + 1)
		return;
	memcpy(text, data, size);
	text[size] = '\0'; /* the server reads the stored text as a C string */
	ok = nhi_agent_attributes_check((const char *)data, size) == NHI_OK;
	v = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (ok) {
		if (!json_is_object(v))
			fuzz_fail("accepted attributes that jansson does not read as one object", NULL);
		sorted = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
		kept = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (sorted == NULL || kept == NULL || strcmp(sorted, kept) != 0)
			fuzz_fail("accepted attributes whose keys jansson sorts otherwise", kept);
		/* the reply's reader (no duplicate check) reads the same object */
		reply = nhi_routes_attributes_text(text);
		if (reply == NULL || strcmp(reply, kept) != 0)
			fuzz_fail("the reply reads accepted attributes otherwise", reply);
		free(reply);
	}
	if (json_is_object(v)) {
		free(sorted);
		/* what nhictl backup create stores from this object */
		sorted = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
		if (sorted != NULL && strlen(sorted) <= NHI_AGENT_ATTRIBUTES_MAX_BYTES &&
		    nhi_agent_attributes_check(sorted, strlen(sorted)) != NHI_OK)
			fuzz_fail("refused what nhictl backup writes", nhi_err_detail());
	}
	free(sorted);
	free(kept);
	json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_backup_info info;
	long long t;
	char s[32];

	(void)!nhi_backup_inspect(data, size, &info);
	as_image(data, size);
	as_jsonl(data, size);
	as_attributes(data, size);
	if (size < sizeof(s)) {
		memcpy(s, data, size);
		s[size] = '\0';
		(void)nhi_rfc3339_parse(s, &t);
	}
	return 0;
}
