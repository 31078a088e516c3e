/*
 * tests/unit/test_identity.c — identity backup and store against a real SoftHSM2
 * token (no mocks): round trip, JSONL validation, every bad-input case of issue 3
 * (each with the previously loaded store left untouched), rollback, concurrent
 * lookups during swaps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../identity/identity_internal.h"
#include "fixture.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct nhi_fixture fx;
static struct nhi_hsm *hsm;
static unsigned file_seq;

#define T0 1767225600LL /* 2026-01-01T00:00:00Z */

static int setup(void **state)
{
	struct nhi_hsm_key *k = NULL;

	(void)state;
	nhi_fixture_setup(&fx, "unit-identity");
	if (nhi_hsm_open(&fx.cfg, &hsm) != NHI_OK) {
		fprintf(stderr, "open: %s\n", nhi_err_detail());
		return -1;
	}
	if (nhi_hsm_generate(hsm, NHI_KEY_EC_P256, "nhid-root", &k) != NHI_OK)
		return -1;
	nhi_hsm_key_free(k);
	if (nhi_hsm_generate(hsm, NHI_KEY_AES256, "nhid-wrap", &k) != NHI_OK)
		return -1;
	nhi_hsm_key_free(k);
	if (nhi_hsm_generate(hsm, NHI_KEY_EC_P256, "other-root", &k) != NHI_OK)
		return -1;
	nhi_hsm_key_free(k);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nhi_hsm_free(hsm);
	nhi_fixture_teardown(&fx);
	return 0;
}

/* ---- helpers ----------------------------------------------------------------------- */

static void tp_of(const char *name, uint8_t tp[32])
{
	assert_int_equal(nhi_sha256(name, strlen(name), tp), NHI_OK);
}

static const char *tp_hex(const char *name)
{
	static _Thread_local char hex[16][65]; /* several may be arguments of one call */
	static _Thread_local int k;
	uint8_t tp[32];

	tp_of(name, tp);
	k = (k + 1) % 16;
	nhi_hex(tp, 32, hex[k]);
	return hex[k];
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	fclose(f);
}

static char *tmp_path(char *buf, size_t n, const char *what)
{
	snprintf(buf, n, "%s/%s-%u", fx.dir, what, ++file_seq);
	return buf;
}

/* Three agents of the dev deployment plus one per status/validity case. */
static void standard_agents(char *out, size_t n, const char *extra_attr)
{
	snprintf(out, n,
		 "{\"id\":\"demo-agent\",\"audiences\":[\"inference\"],\"cert_sha256\":\"%s\","
		 "\"attributes\":{\"zone\":\"a\",\"v\":\"%s\"}}\n"
		 "{\"id\":\"inference-gw\",\"roles\":[\"resolver\"],\"cert_sha256\":[\"%s\",\"%s\"]}\n"
		 "\n"
		 "{\"id\":\"admin\",\"roles\":[\"admin\",\"resolver\"],\"audiences\":[\"inference\",\"https://upd.lan\"],"
		 "\"status\":\"active\",\"cert_sha256\":\"%s\",\"not_before\":\"2020-01-01T00:00:00Z\","
		 "\"not_after\":\"2099-12-31T23:59:59Z\"}\n"
		 "{\"id\":\"sleepy\",\"status\":\"suspended\",\"cert_sha256\":\"%s\"}\n"
		 "{\"id\":\"gone\",\"status\":\"revoked\",\"cert_sha256\":\"%s\"}\n"
		 "{\"id\":\"old\",\"cert_sha256\":\"%s\",\"not_after\":\"2021-01-01T00:00:00Z\"}\n"
		 "{\"id\":\"future\",\"cert_sha256\":\"%s\",\"not_before\":\"2098-01-01T00:00:00Z\"}\n",
		 tp_hex("demo"), extra_attr ? extra_attr : "1", tp_hex("gw-1"), tp_hex("gw-2"), tp_hex("admin"),
		 tp_hex("sleepy"), tp_hex("gone"), tp_hex("old"), tp_hex("future"));
}

static void create_from_text(const char *jsonl, uint64_t serial, long long created_at, struct nhi_buf *out)
{
	char path[400];
	struct nhi_backup_create_opts o = {0};
	struct nhi_buf report = {0};
	nhi_err e;

	write_text(tmp_path(path, sizeof(path), "agents.jsonl"), jsonl);
	o.agents_path = path;
	o.serial = serial;
	o.created_at = created_at;
	e = nhi_backup_create(hsm, &o, out, NULL, &report);
	if (e != NHI_OK)
		fail_msg("create: %s\n%s", nhi_err_detail(), report.data ? (char *)report.data : "");
	nhi_buf_free(&report);
}

static void create_standard(uint64_t serial, long long created_at, const char *v, struct nhi_buf *out)
{
	char text[8192];

	standard_agents(text, sizeof(text), v);
	create_from_text(text, serial, created_at, out);
}

/* Run SQL over a finished image (as a hostile ceremony host could) and serialise it again. */
static void tamper_image(const char *sql, uint8_t **img, size_t *len)
{
	sqlite3 *db = NULL;
	uint8_t *copy = sqlite3_malloc64(*len);
	sqlite3_int64 sz = 0;

	assert_non_null(copy);
	memcpy(copy, *img, *len);
	assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
	assert_int_equal(sqlite3_deserialize(db, "main", copy, (sqlite3_int64)*len, (sqlite3_int64)*len,
					     SQLITE_DESERIALIZE_FREEONCLOSE | SQLITE_DESERIALIZE_RESIZEABLE),
			 SQLITE_OK);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	sqlite3_free(*img);
	*img = sqlite3_serialize(db, "main", &sz, 0);
	assert_non_null(*img);
	*len = (size_t)sz;
	sqlite3_close(db);
}

/* A raw image from the builder (rows from JSONL lines), optionally tampered with. */
static void build_image(const char *const *lines, size_t n, uint64_t serial, long long created_at,
			const char *extra_sql, uint8_t **img, size_t *len, uint64_t *count)
{
	struct nhi_image_builder *b = NULL;
	struct nhi_agent_row row;
	size_t i;

	assert_int_equal(nhi_image_builder_new(created_at, serial, &b), NHI_OK);
	for (i = 0; i < n; i++) {
		assert_int_equal(nhi_agent_row_parse(lines[i], strlen(lines[i]), NULL, &row), NHI_OK);
		assert_int_equal(nhi_image_builder_add(b, &row), NHI_OK);
	}
	assert_int_equal(nhi_image_builder_finish(b, img, len, count), NHI_OK);
	nhi_image_builder_free(b);
	if (extra_sql != NULL)
		tamper_image(extra_sql, img, len);
}

static void seal(const uint8_t *img, size_t len, uint64_t serial, long long created_at, uint64_t count,
		 unsigned schema, unsigned chunk, const char *wrap, const char *sign, struct nhi_buf *out)
{
	struct nhi_backup_seal_params p = {0};

	p.serial = serial;
	p.created_at = created_at;
	p.record_count = count;
	p.schema_version = schema;
	p.chunk_bytes = chunk;
	p.wrap_key_label = wrap;
	p.sign_key_label = sign;
	if (nhi_backup_seal(hsm, &p, img, len, out, NULL) != NHI_OK)
		fail_msg("seal: %s", nhi_err_detail());
}

static void sealed_image(const char *extra_sql, uint64_t serial, unsigned schema, long long count_delta,
			 struct nhi_buf *out)
{
	char l1[200];
	const char *lines[] = {l1};
	uint8_t *img = NULL;
	size_t len = 0;
	uint64_t count = 0;

	snprintf(l1, sizeof(l1), "{\"id\":\"demo-agent\",\"cert_sha256\":\"%s\"}", tp_hex("demo"));
	build_image(lines, 1, serial, T0 + (long long)serial, extra_sql, &img, &len, &count);
	seal(img, len, serial, T0 + (long long)serial, (uint64_t)((long long)count + count_delta), schema, 0, NULL,
	     NULL, out);
	nhi_wipe(img, len);
	sqlite3_free(img);
}

static struct nhi_store *loaded_store(uint64_t serial)
{
	struct nhi_store *s = NULL;
	struct nhi_buf b = {0};
	struct nhi_store_import_result r;

	assert_int_equal(nhi_store_new(&s), NHI_OK);
	create_standard(serial, T0 + (long long)serial, NULL, &b);
	if (nhi_store_import(s, hsm, b.data, b.len, NULL, &r) != NHI_OK)
		fail_msg("import: %s", nhi_err_detail());
	assert_int_equal(r.outcome, NHI_IMPORT_FIRST);
	nhi_buf_free(&b);
	return s;
}

static void assert_untouched(struct nhi_store *s, uint64_t serial)
{
	struct nhi_store_info info;
	struct nhi_agent *a = NULL;

	nhi_store_get_info(s, &info);
	assert_true(info.loaded);
	assert_int_equal(info.serial, serial);
	assert_int_equal(nhi_store_resolve_id(s, "demo-agent", time(NULL), &a), NHI_OK);
	assert_int_equal(a->backup_serial, serial);
	nhi_agent_free(a);
}

/* ---- round trip --------------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
	struct nhi_store *s = NULL;
	struct nhi_buf b = {0};
	struct nhi_backup_info info;
	struct nhi_store_import_result r;
	struct nhi_store_info si;
	struct nhi_agent *a = NULL;
	uint8_t tp[32];
	long long now = time(NULL);

	(void)state;
	create_standard(7, T0, NULL, &b);
	assert_int_equal(nhi_backup_inspect(b.data, b.len, &info), NHI_OK);
	assert_int_equal(info.format_version, 1);
	assert_int_equal(info.schema_version, 1);
	assert_int_equal(info.serial, 7);
	assert_int_equal(info.created_at, T0);
	assert_int_equal(info.record_count, 7);
	assert_int_equal(info.file_bytes, b.len);
	assert_string_equal(info.wrap_key_label, "nhid-wrap");
	assert_string_equal(info.sign_key_label, "nhid-root");
	assert_int_equal(strlen(info.sign_key_sha256), 64);

	assert_int_equal(nhi_store_new(&s), NHI_OK);
	nhi_store_get_info(s, &si);
	assert_false(si.loaded);
	assert_int_equal(nhi_store_find_id(s, "demo-agent", &a), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "no identity backup is loaded"));

	assert_int_equal(nhi_store_import(s, hsm, b.data, b.len, NULL, &r), NHI_OK);
	assert_int_equal(r.outcome, NHI_IMPORT_FIRST);
	assert_int_equal(r.info.serial, 7);
	assert_int_equal(strlen(r.info.digest_sha256), 64);
	nhi_store_get_info(s, &si);
	assert_true(si.loaded);
	assert_int_equal(si.agents, 7);
	assert_string_equal(si.digest_sha256, r.info.digest_sha256);

	assert_int_equal(nhi_store_resolve_id(s, "demo-agent", now, &a), NHI_OK);
	assert_string_equal(a->id, "demo-agent");
	assert_int_equal(a->status, NHI_AGENT_ACTIVE);
	assert_int_equal(a->n_roles, 0);
	assert_int_equal(a->n_audiences, 1);
	assert_string_equal(a->audiences[0], "inference");
	assert_true(nhi_agent_allows_audience(a, "inference"));
	assert_false(nhi_agent_allows_audience(a, "inferenc"));
	assert_false(nhi_agent_has_role(a, "resolver"));
	assert_string_equal(a->attributes, "{\"v\":\"1\",\"zone\":\"a\"}"); /* compact, keys sorted */
	assert_int_equal(a->n_thumbprints, 1);
	tp_of("demo", tp);
	assert_memory_equal(a->thumbprints[0], tp, 32);
	assert_int_equal(a->not_before, 0);
	assert_int_equal(a->not_after, NHI_AGENT_NOT_AFTER_MAX_S);
	nhi_agent_free(a);

	tp_of("gw-2", tp);
	assert_int_equal(nhi_store_resolve_thumbprint(s, tp, now, &a), NHI_OK);
	assert_string_equal(a->id, "inference-gw");
	assert_int_equal(a->n_thumbprints, 2);
	assert_true(nhi_agent_has_role(a, "resolver"));
	assert_string_equal(a->attributes, "{}");
	nhi_agent_free(a);

	assert_int_equal(nhi_store_resolve_id(s, "admin", now, &a), NHI_OK);
	assert_int_equal(a->n_roles, 2);
	assert_string_equal(a->roles[0], "admin");
	assert_string_equal(a->roles[1], "resolver");
	assert_string_equal(a->audiences[1], "https://upd.lan");
	assert_int_equal(a->not_before, 1577836800LL);
	assert_int_equal(a->not_after, 4102444799LL);
	nhi_agent_free(a);

	nhi_store_free(s);
	nhi_buf_free(&b);
}

static void test_lookup_policy(void **state)
{
	struct nhi_store *s = loaded_store(3);
	struct nhi_agent *a = NULL;
	uint8_t tp[32];
	long long now = time(NULL);

	(void)state;
	assert_int_equal(nhi_store_resolve_id(s, "sleepy", now, &a), NHI_ERR_DENIED);
	assert_null(a);
	assert_non_null(strstr(nhi_err_detail(), "agent 'sleepy' is suspended"));
	assert_int_equal(nhi_store_resolve_id(s, "gone", now, &a), NHI_ERR_DENIED);
	assert_non_null(strstr(nhi_err_detail(), "revoked"));
	tp_of("gone", tp);
	assert_int_equal(nhi_store_resolve_thumbprint(s, tp, now, &a), NHI_ERR_DENIED);
	assert_int_equal(nhi_store_resolve_id(s, "old", now, &a), NHI_ERR_EXPIRED);
	assert_non_null(strstr(nhi_err_detail(), "expired at 2021-01-01T00:00:00Z"));
	assert_int_equal(nhi_store_resolve_id(s, "future", now, &a), NHI_ERR_EXPIRED);
	assert_non_null(strstr(nhi_err_detail(), "not valid before 2098-01-01T00:00:00Z"));
	/* the validity window is checked at lookup time, against the `now` given */
	assert_int_equal(nhi_store_resolve_id(s, "old", 1577836800LL, &a), NHI_OK);
	nhi_agent_free(a);
	assert_int_equal(nhi_store_resolve_id(s, "admin", 4102444799LL, &a), NHI_OK); /* not_after inclusive */
	nhi_agent_free(a);
	assert_int_equal(nhi_store_resolve_id(s, "admin", 4102444800LL, &a), NHI_ERR_EXPIRED);
	/* find_* return the record without policy, for audit and admin views */
	assert_int_equal(nhi_store_find_id(s, "gone", &a), NHI_OK);
	assert_int_equal(a->status, NHI_AGENT_REVOKED);
	nhi_agent_free(a);
	assert_int_equal(nhi_store_find_id(s, "nobody", &a), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "no agent 'nobody'"));
	assert_int_equal(nhi_store_find_id(s, "bad id\n", &a), NHI_ERR_NOT_FOUND);
	assert_null(strstr(nhi_err_detail(), "\n"));
	assert_int_equal(nhi_store_find_id(s, "", &a), NHI_ERR_NOT_FOUND);
	tp_of("nobody", tp);
	assert_int_equal(nhi_store_find_thumbprint(s, tp, &a), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "no agent is enrolled with certificate"));
	nhi_store_free(s);
	nhi_store_free(NULL);
	nhi_agent_free(NULL);
}

/* ---- JSONL validation ----------------------------------------------------------------- */

/* Replace @TP@ (and @TP63@/@TP62@: a prefix of that length) in a template with `tp`. */
static void expand(const char *tmpl, const char *tp, char *out, size_t n)
{
	size_t o = 0;

	while (*tmpl != '\0' && o + 70 < n) {
		if (strncmp(tmpl, "@TP@", 4) == 0) {
			memcpy(out + o, tp, 64);
			o += 64;
			tmpl += 4;
		} else if (strncmp(tmpl, "@TP63@", 6) == 0 || strncmp(tmpl, "@TP62@", 6) == 0) {
			size_t k = tmpl[4] == '3' ? 63 : 62;

			memcpy(out + o, tp, k);
			o += k;
			tmpl += 6;
		} else {
			out[o++] = *tmpl++;
		}
	}
	out[o] = '\0';
}

static void test_jsonl_line_rules(void **state)
{
	static const struct {
		const char *line;
		const char *why; /* NULL: valid */
	} cases[] = {
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\"}", NULL},
		{"{\"id\":\"a.b_c-d\",\"cert_sha256\":[\"@TP@\"],\"roles\":[],\"audiences\":[]}", NULL},
		{"not json @TP@", "not JSON"},
		{"[\"@TP@\"]", "not a JSON object"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"name\":\"x\"}", "unknown field \"name\""},
		{"{\"id\":\"a\",\"id\":\"b\",\"cert_sha256\":\"@TP@\"}", "not JSON"},
		{"{\"cert_sha256\":\"@TP@\"}", "\"id\" is missing"},
		{"{\"id\":\"-a\",\"cert_sha256\":\"@TP@\"}", "is not valid"},
		{"{\"id\":\"a b\",\"cert_sha256\":\"@TP@\"}", "is not valid"},
		{"{\"id\":\"a/b\",\"cert_sha256\":\"@TP@\"}", "is not valid"},
		{"{\"id\":7,\"cert_sha256\":\"@TP@\"}", "not a string"},
		{"{\"id\":\"a\",\"status\":\"on\",\"cert_sha256\":\"@TP@\"}", "\"status\" must be"},
		{"{\"id\":\"a\",\"x\":\"@TP@\"}", "unknown field"},
		{"{\"id\":\"a\",\"roles\":[\"r\"]}@TP@", "not JSON"},
		{"{\"id\":\"a\",\"roles\":[\"r\"],\"attributes\":{\"k\":\"@TP@\"}}", "no enrolled certificate"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP63@\"}", "not a SHA-256 thumbprint"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP62@zz\"}", "not hex"},
		{"{\"id\":\"a\",\"cert_sha256\":[\"@TP@\",7]}", "is not a string"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"roles\":[\"a b\"]}", "roles entry 'a b' is not valid"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"roles\":[\"x\",\"x\"]}", "listed twice"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"audiences\":[\"a b\"]}", "audiences entry"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"roles\":\"admin\"}", NULL},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"roles\":{}}", "must be an array"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"not_after\":\"2026-02-30T00:00:00Z\"}", "RFC 3339"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"not_after\":\"2026-01-01T00:00:00+01:00\"}", "RFC 3339"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"not_after\":1767225600}", "RFC 3339"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"not_before\":\"2027-01-01T00:00:00Z\","
		 "\"not_after\":\"2026-01-01T00:00:00Z\"}",
		 "after"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":[]}", "must be a JSON object"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"cert_pem_file\":\"rel.pem\"}", "no base directory"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"id2\":\"\\u0000\"}", "not JSON"},
		/* a key listed twice in the attributes, at any depth, spelt alike or not */
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"team\":\"a\",\"team\":\"b\"}}", "duplicate"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"team\":\"a\",\"te\\u0061m\":\"b\"}}", "duplicate"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"n\":{\"x\":1,\"x\":2}}}", "duplicate"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"n\":[{\"x\":1,\"y\":2,\"x\":3}]}}", "duplicate"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"n\":1e400}}", "not JSON"},
		{"{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"z\":{\"b\":1, \"a\":[2.5,-0,\"\\u00e9\\ud83d\\ude00\"]},"
		 "\"a\":true}}",
		 NULL},
	};
	struct nhi_agent_row *row = malloc(sizeof(*row));
	char line[1024];
	size_t i;
	nhi_err e;

	(void)state;
	assert_non_null(row);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		expand(cases[i].line, tp_hex("x"), line, sizeof(line));
		e = nhi_agent_row_parse(line, strlen(line), NULL, row);
		if (cases[i].why == NULL) {
			if (e != NHI_OK)
				fail_msg("case %zu (%s): %s", i, line, nhi_err_detail());
		} else {
			if (e == NHI_OK || strstr(nhi_err_detail(), cases[i].why) == NULL)
				fail_msg("case %zu (%s): got %s '%s', want '%s'", i, line, nhi_err_name(e), nhi_err_detail(),
					 cases[i].why);
		}
	}
	/* attributes are stored compact, keys sorted at every depth: the form an import checks */
	expand("{\"id\":\"a\",\"cert_sha256\":\"@TP@\",\"attributes\":{\"z\":{\"b\":1, \"a\":[2.5,\"\\u00e9\"]},\"a\":true}}",
	       tp_hex("x"), line, sizeof(line));
	assert_int_equal(nhi_agent_row_parse(line, strlen(line), NULL, row), NHI_OK);
	assert_string_equal(row->attributes, "{\"a\":true,\"z\":{\"a\":[2.5,\"\xc3\xa9\"],\"b\":1}}");
	assert_int_equal(nhi_agent_attributes_check(row->attributes, strlen(row->attributes)), NHI_OK);
	/* the OpenSSL fingerprint form with colons is accepted and means the same */
	{
		const char *hex = tp_hex("x");
		char colons[96];
		uint8_t tp[32];
		size_t k;

		for (k = 0; k < 32; k++)
			snprintf(colons + 3 * k, 4, "%c%c%s", hex[2 * k] - 32 * (hex[2 * k] >= 'a'),
				 hex[2 * k + 1] - 32 * (hex[2 * k + 1] >= 'a'), k < 31 ? ":" : "");
		snprintf(line, sizeof(line), "{\"id\":\"a\",\"cert_sha256\":\"%s\"}", colons);
		assert_int_equal(nhi_agent_row_parse(line, strlen(line), NULL, row), NHI_OK);
		tp_of("x", tp);
		assert_memory_equal(row->certs[0], tp, 32);
	}
	free(row);
}

/*
 * nhi_agent_attributes_check, the one rule for attributes wherever they enter the
 * store: each case refused with its cause, or accepted (why NULL).
 */
static void test_attributes_rules(void **state)
{
	static const struct {
		const char *text;
		const char *why;
	} cases[] = {
		{"{}", NULL},
		{"{\"a\":1}", NULL},
		{"{\"a\":{\"b\":[1,2,{\"c\":null}]},\"b\":\"x\",\"c\":[],\"d\":{},\"e\":true,\"f\":false}", NULL},
		{"{\"\":1,\"A\":2,\"a\":3,\"ab\":4,\"b\":5}", NULL}, /* sorted by bytes, a prefix first */
		{"{\"z\":1,\"\xc3\xa9\":2}", NULL},                  /* U+00E9 sorts after 'z' */
		{"{\"z\":1,\"\\u00e9\":2}", NULL},
		{"{\"\\u0041\":1,\"B\":2}", NULL},                    /* decoded: "A" < "B" */
		{"{\"k\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00 \xf0\x9f\x98\x80\"}", NULL},
		{"{\"x\":{\"x\":{\"x\":1}}}", NULL},                  /* the same key at other depths */
		{"{\"n\":[{\"x\":1},{\"x\":2}]}", NULL},              /* and in sibling objects */
		{"{\"a\":-0,\"b\":0.5,\"c\":1e5,\"d\":1E-5,\"e\":-1.5e+10,\"f\":1e308,\"g\":1e-400}", NULL},
		{"{\"a\":9223372036854775807,\"b\":-9223372036854775808,\"c\":123456789012345678}", NULL},
		/* a key listed twice: named, at any depth, however it is spelt */
		{"{\"team\":\"a\",\"team\":\"b\"}", "key \"team\" is listed twice in one object (byte 12)"},
		{"{\"team\":\"a\",\"te\\u0061m\":\"b\"}", "key \"te\\u0061m\" is listed twice in one object"},
		{"{\"\\u00e9\":1,\"\xc3\xa9\":2}", "key \"??\" is listed twice"},
		{"{\"n\":{\"x\":1,\"x\":2}}", "key \"x\" is listed twice in one nested object"},
		{"{\"n\":[{\"x\":1},{\"x\":2,\"x\":3}]}", "key \"x\" is listed twice in one nested object"},
		{"{\"a\":{\"z\":1},\"a\":2}", "key \"a\" is listed twice in one object"},
		{"{\"a\":[{\"z\":1}],\"a\":2}", "key \"a\" is listed twice in one object"},
		{"{\"\":1,\"\":2}", "key \"\" is listed twice"},
		/* keys out of order: the format stores them sorted */
		{"{\"b\":1,\"a\":2}", "key \"a\" (byte 7) is out of order"},
		{"{\"b\":{\"a\":1},\"a\":2}", "key \"a\" (byte 13) is out of order"},
		{"{\"ab\":1,\"a\":2}", "is out of order"},
		{"{\"\xc3\xa9\":1,\"z\":2}", "key \"z\" (byte 8) is out of order"},
		/* not compact */
		{"{ \"a\":1}", "whitespace (not compact) at byte 1"},
		{"{\"a\": 1}", "whitespace (not compact) at byte 5"},
		{"{\"a\":1 }", "whitespace (not compact) at byte 6"},
		{"{\"a\":1}\n", "whitespace (not compact) at byte 7"},
		{" {}", "whitespace (not compact) at byte 0"},
		/* what jansson refuses, read alike by no two readers */
		{"{\"a\":\"\\u0000\"}", "\\u0000 (jansson refuses it) at byte 6"},
		{"{\"\\u0000\":1}", "\\u0000"},
		{"{\"a\":\"\\ud800\"}", "an unpaired UTF-16 surrogate escape at byte 6"},
		{"{\"a\":\"\\udc00\\ud800\"}", "an unpaired UTF-16 surrogate escape"},
		{"{\"a\":\"\\ud800\\u0041\"}", "an unpaired UTF-16 surrogate escape"},
		{"{\"a\":9223372036854775808}", "an integer beyond 64 bits (jansson refuses it) at byte 5"},
		{"{\"a\":-9223372036854775809}", "an integer beyond 64 bits"},
		{"{\"a\":1e400}", "a number beyond a double (jansson refuses it) at byte 5"},
		{"{\"a\":-1.5e99999}", "a number beyond a double"},
		/* not JSON */
		{"", "not an object at byte 0"},
		{"[1]", "not an object"},
		{"\"a\"", "not an object"},
		{"{\"a\":1}x", "bytes after the object"},
		{"{\"a\":1}{}", "bytes after the object"},
		{"{\"a\":1,}", "a key (a string) expected at byte 7"},
		{"{,}", "a key (a string) expected"},
		{"{\"a\"1}", "':' expected after a key at byte 4"},
		{"{\"a\":}", "a value expected at byte 5"},
		{"{\"a\":1", "',' or '}' expected at byte 6"},
		{"{\"a\":[1}", "',' or ']' expected at byte 7"},
		{"{\"a\":[1,]}", "a value expected at byte 8"},
		{"{\"a\":\"x", "an unterminated string"},
		{"{\"a\":\"\t\"}", "a control character in a string at byte 6"},
		{"{\"a\":\"\\x\"}", "an invalid escape at byte 6"},
		{"{\"a\":\"\\u12\"}", "an invalid escape"},
		{"{\"a\":01}", "',' or '}' expected at byte 6"},
		{"{\"a\":1.}", "a number without digits after '.'"},
		{"{\"a\":.5}", "a value expected"},
		{"{\"a\":-}", "a number without digits"},
		{"{\"a\":1e}", "a number without exponent digits"},
		{"{\"a\":+1}", "a value expected"},
		{"{\"a\":tru}", "an unknown literal at byte 5"},
		{"{\"a\":nul", "an unknown literal"},
		{"{\"a\":NaN}", "a value expected"},
		{"{\"a\":\"\xff\"}", "not valid UTF-8"},
		{"{\"a\":\"\xed\xa0\x80\"}", "not valid UTF-8"}, /* a surrogate in UTF-8 */
		{"{\"a\":\"\xc0\xaf\"}", "not valid UTF-8"},     /* overlong */
	};
	static char big[NHI_AGENT_ATTRIBUTES_MAX_BYTES + 2];
	size_t i, n, d;
	nhi_err e;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		e = nhi_agent_attributes_check(cases[i].text, strlen(cases[i].text));
		if (cases[i].why == NULL ? e != NHI_OK : e != NHI_ERR_FORMAT || strstr(nhi_err_detail(), cases[i].why) == NULL)
			fail_msg("case %zu (%s): got %s '%s', want '%s'", i, cases[i].text, nhi_err_name(e),
				 e == NHI_OK ? "" : nhi_err_detail(), cases[i].why ? cases[i].why : "accepted");
	}
	/* a NUL byte: the length counts, not the terminator */
	assert_int_equal(nhi_agent_attributes_check("{}\0", 3), NHI_ERR_FORMAT);
	assert_int_equal(nhi_agent_attributes_check("{\"a\":\"\0\"}", 8), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "a control character in a string"));
	assert_int_equal(nhi_agent_attributes_check(NULL, 0), NHI_ERR_FORMAT);
	/* as deep as 4096 bytes can nest, and one byte more than the limit */
	d = (NHI_AGENT_ATTRIBUTES_MAX_BYTES - 6) / 2;
	n = (size_t)snprintf(big, 8, "{\"a\":");
	memset(big + n, '[', d);
	memset(big + n + d, ']', d);
	memcpy(big + n + 2 * d, "}", 2);
	assert_int_equal(strlen(big), NHI_AGENT_ATTRIBUTES_MAX_BYTES);
	if (nhi_agent_attributes_check(big, strlen(big)) != NHI_OK)
		fail_msg("deepest: %s", nhi_err_detail());
	memset(big + n, '[', NHI_AGENT_ATTRIBUTES_MAX_BYTES - n);
	assert_int_equal(nhi_agent_attributes_check(big, NHI_AGENT_ATTRIBUTES_MAX_BYTES), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "nesting deeper than the text could close"));
	memset(big, ' ', NHI_AGENT_ATTRIBUTES_MAX_BYTES + 1);
	assert_int_equal(nhi_agent_attributes_check(big, NHI_AGENT_ATTRIBUTES_MAX_BYTES + 1), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "attributes are missing or over 4096 bytes"));
}

static void test_rfc3339_vectors(void **state)
{
	static const struct {
		const char *s;
		long long t; /* -1: invalid */
	} v[] = {
		{"1970-01-01T00:00:00Z", 0},
		{"2026-01-01T00:00:00Z", 1767225600LL},
		{"2024-02-29T12:34:56Z", 1709210096LL},
		{"9999-12-31T23:59:59Z", 253402300799LL},
		{"2023-02-29T00:00:00Z", -1},
		{"2026-01-01T24:00:00Z", -1},
		{"2026-01-01T00:00:60Z", -1},
		{"2026-01-01 00:00:00Z", -1},
		{"2026-01-01T00:00:00", -1},
		{"2026-01-01T00:00:00.5Z", -1},
		{"2026-1-01T00:00:00Z", -1},
		{"", -1},
	};
	size_t i;
	long long t;

	(void)state;
	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		t = -1;
		if (nhi_rfc3339_parse(v[i].s, &t) != (v[i].t >= 0) || (v[i].t >= 0 && t != v[i].t))
			fail_msg("'%s': got %lld, want %lld", v[i].s, t, v[i].t);
	}
}

static void test_jsonl_file_errors_nothing_written(void **state)
{
	char path[400], text[4096], big[NHI_BACKUP_JSONL_LINE_MAX_BYTES + 100];
	struct nhi_backup_create_opts o = {0};
	struct nhi_buf out = {0}, report = {0};
	FILE *f;

	(void)state;
	snprintf(text, sizeof(text),
		 "{\"id\":\"a\",\"cert_sha256\":\"%s\"}\n"
		 "{\"id\":\"b\",\"cert_sha256\":\"%s\",\"status\":\"paused\"}\n"
		 "{\"id\":\"a\",\"cert_sha256\":\"%s\"}\n"
		 "{\"id\":\"c\",\"cert_sha256\":\"%s\"}\n"
		 "{oops\n",
		 tp_hex("a"), tp_hex("b"), tp_hex("a2"), tp_hex("a"));
	write_text(tmp_path(path, sizeof(path), "bad.jsonl"), text);
	o.agents_path = path;
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_FORMAT);
	assert_int_equal(out.len, 0);
	assert_non_null(strstr(nhi_err_detail(), "4 bad lines"));
	assert_non_null(strstr(nhi_err_detail(), "nothing written"));
	assert_non_null(strstr((char *)report.data, "line 2: \"status\" must be"));
	assert_non_null(strstr((char *)report.data, "line 3: duplicate agent id 'a'"));
	assert_non_null(strstr((char *)report.data, "line 4: certificate "));
	assert_non_null(strstr((char *)report.data, "already enrolled for agent 'a'"));
	assert_non_null(strstr((char *)report.data, "line 5: not JSON"));
	assert_null(strstr((char *)report.data, "line 1:"));
	nhi_buf_free(&report);

	/* an over-long line is reported, not truncated into something else */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	f = fopen(tmp_path(path, sizeof(path), "long.jsonl"), "w");
	assert_non_null(f);
	fprintf(f, "{\"id\":\"a\",\"cert_sha256\":\"%s\"}\n%s\n", tp_hex("a"), big);
	fclose(f);
	o.agents_path = path;
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_FORMAT);
	assert_non_null(strstr((char *)report.data, "line 2: longer than 65536 bytes"));
	nhi_buf_free(&report);

	/* no agents at all */
	write_text(tmp_path(path, sizeof(path), "empty.jsonl"), "\n\n");
	o.agents_path = path;
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "holds no agent"));
	o.agents_path = "/nonexistent/agents.jsonl";
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_NOT_FOUND);
	/* wrong kinds of keys */
	o.agents_path = path;
	write_text(path, "{\"id\":\"a\",\"cert_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}\n");
	o.sign_key_label = "nhid-wrap";
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "not an EC P-256 key"));
	o.sign_key_label = NULL;
	o.wrap_key_label = "nhid-root";
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_ARG);
	o.wrap_key_label = "no-such-key";
	assert_int_equal(nhi_backup_create(hsm, &o, &out, NULL, &report), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "no wrap key 'no-such-key'"));
	assert_int_equal(out.len, 0);
	nhi_buf_free(&report);
	nhi_buf_free(&out);
}

/* cert_pem_file: the thumbprint is SHA-256 over the certificate DER, path relative to the JSONL */
static void test_cert_pem_file(void **state)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	char dir[400], path[500], text[1024];
	FILE *f;
	unsigned char *der = NULL;
	int der_len;
	uint8_t want[32];
	struct nhi_agent_row row;

	(void)state;
	assert_non_null(k);
	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)"demo", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_set_pubkey(x, k);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	der_len = i2d_X509(x, &der);
	assert_true(der_len > 0);
	assert_int_equal(nhi_sha256(der, (size_t)der_len, want), NHI_OK);
	snprintf(dir, sizeof(dir), "%s/certs", fx.dir);
	mkdir(dir, 0700);
	snprintf(path, sizeof(path), "%s/demo.crt", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	PEM_write_X509(f, x);
	fclose(f);

	snprintf(text, sizeof(text), "{\"id\":\"demo\",\"cert_pem_file\":\"certs/demo.crt\"}");
	assert_int_equal(nhi_agent_row_parse(text, strlen(text), fx.dir, &row), NHI_OK);
	assert_int_equal(row.n_certs, 1);
	assert_memory_equal(row.certs[0], want, 32);
	snprintf(text, sizeof(text), "{\"id\":\"demo\",\"cert_pem_file\":[\"%s\"],\"cert_sha256\":\"%s\"}", path,
		 tp_hex("other"));
	assert_int_equal(nhi_agent_row_parse(text, strlen(text), "/nowhere", &row), NHI_OK);
	assert_int_equal(row.n_certs, 2);
	snprintf(text, sizeof(text), "{\"id\":\"demo\",\"cert_pem_file\":\"certs/missing.crt\"}");
	assert_int_equal(nhi_agent_row_parse(text, strlen(text), fx.dir, &row), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "missing.crt"));
	snprintf(text, sizeof(text), "{\"id\":\"demo\",\"cert_pem_file\":\"softhsm2.conf\"}");
	assert_int_equal(nhi_agent_row_parse(text, strlen(text), fx.dir, &row), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "no PEM certificate"));
	OPENSSL_free(der);
	X509_free(x);
	EVP_PKEY_free(k);
}

/* ---- bad input: each refused with a named cause, the loaded store untouched ------------- */

static void expect_refused(struct nhi_store *s, const uint8_t *data, size_t len, nhi_err want, const char *text,
			   const char *what)
{
	struct nhi_store_import_result r;
	nhi_err e = nhi_store_import(s, hsm, data, len, NULL, &r);

	if (e != want || strstr(nhi_err_detail(), text) == NULL)
		fail_msg("%s: got %s '%s', want %s '%s'", what, nhi_err_name(e), nhi_err_detail(), nhi_err_name(want),
			 text);
	assert_untouched(s, 10);
}

static void flip(struct nhi_buf *b, size_t off, const struct nhi_buf *src)
{
	b->len = 0;
	assert_int_equal(nhi_buf_append(b, src->data, src->len), NHI_OK);
	b->data[off] ^= 0x01;
}

static void test_bad_input(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf good = {0}, m = {0}, other = {0};
	size_t n, ct_end;

	(void)state;
	create_standard(20, T0 + 20, NULL, &good);
	n = good.len;
	ct_end = n - NHI_BACKUP_SIG_BYTES;

	expect_refused(s, good.data, 0, NHI_ERR_FORMAT, "the backup file is empty", "empty");
	expect_refused(s, good.data, 5, NHI_ERR_FORMAT, "bad magic", "5 bytes");
	expect_refused(s, good.data, 100, NHI_ERR_FORMAT, "shorter than its 320-byte header", "truncated header");
	expect_refused(s, good.data, NHI_BACKUP_HEADER_BYTES, NHI_ERR_FORMAT, "truncated", "header only");
	expect_refused(s, good.data, n - 1, NHI_ERR_FORMAT, "truncated", "truncated by one byte");
	expect_refused(s, good.data, n / 2, NHI_ERR_FORMAT, "truncated", "truncated by half");
	assert_int_equal(nhi_buf_append(&m, good.data, n), NHI_OK);
	assert_int_equal(nhi_buf_append(&m, "x", 1), NHI_OK);
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "trailing data", "trailing byte");

	flip(&m, 0, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "bad magic", "wrong magic");
	flip(&m, 9, &good); /* version 1 -> 0 */
	m.data[9] = 2;
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "format version 2 is not supported", "wrong version");
	flip(&m, 11, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "length field", "header length");
	flip(&m, 12, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "unknown flags", "flags");
	flip(&m, 230, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "reserved", "reserved byte");
	flip(&m, 226, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "unknown algorithms", "signature algorithm");

	/* header bits that parse fine: the signature catches them */
	flip(&m, 23, &good); /* created_at */
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in created_at");
	flip(&m, 60, &good); /* nonce */
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in nonce");
	flip(&m, 240, &good); /* wrapped key */
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in wrapped key");
	flip(&m, NHI_BACKUP_HEADER_BYTES + 100, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in ciphertext");
	flip(&m, ct_end - 3, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in GCM tag");
	flip(&m, ct_end + 5, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in signature r");
	flip(&m, n - 1, &good);
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "signature does not verify", "flipped bit in signature s");
	flip(&m, 192, &good); /* signer fingerprint */
	expect_refused(s, m.data, m.len, NHI_ERR_VERIFY, "made for another ceremony", "signer fingerprint");

	/* oversized counts and sizes are refused by the parser before any crypto */
	flip(&m, 32, &good);
	m.data[32] = 0x7f;
	expect_refused(s, m.data, m.len, NHI_ERR_LIMIT, "NHI_BACKUP_AGENTS_MAX", "oversized agent count");
	flip(&m, 40, &good);
	m.data[40] = 0x10;
	expect_refused(s, m.data, m.len, NHI_ERR_LIMIT, "NHI_BACKUP_IMAGE_MAX_BYTES", "oversized image size");
	flip(&m, 52, &good);
	m.data[53] = 0xff;
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "chunk size", "bad chunk size");
	flip(&m, 224, &good);
	m.data[225] = 0xf0;
	expect_refused(s, m.data, m.len, NHI_ERR_FORMAT, "wrapped data key", "oversized wrapped key");

	/* signed by another key */
	{
		char l[200];
		const char *lines[] = {l};
		uint8_t *img = NULL;
		size_t len = 0;
		uint64_t count = 0;

		snprintf(l, sizeof(l), "{\"id\":\"demo-agent\",\"cert_sha256\":\"%s\"}", tp_hex("demo"));
		build_image(lines, 1, 30, T0 + 30, NULL, &img, &len, &count);
		seal(img, len, 30, T0 + 30, count, 0, 0, NULL, "other-root", &other);
		expect_refused(s, other.data, other.len, NHI_ERR_VERIFY, "made for another ceremony", "other signer");
		nhi_wipe(img, len);
		sqlite3_free(img);
	}

	nhi_buf_free(&other);
	nhi_buf_free(&m);
	nhi_buf_free(&good);
	nhi_store_free(s);
}

static void test_wrong_wrap_key(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_hsm_key *k = NULL;
	struct nhi_buf b = {0}, c = {0};
	char l[200];
	const char *lines[] = {l};
	uint8_t *img = NULL;
	size_t len = 0;
	uint64_t count = 0;

	(void)state;
	snprintf(l, sizeof(l), "{\"id\":\"demo-agent\",\"cert_sha256\":\"%s\"}", tp_hex("demo"));
	build_image(lines, 1, 40, T0 + 40, NULL, &img, &len, &count);
	assert_int_equal(nhi_hsm_generate(hsm, NHI_KEY_AES256, "alt-wrap", &k), NHI_OK);
	seal(img, len, 40, T0 + 40, count, 0, 0, "alt-wrap", NULL, &b);
	seal(img, len, 41, T0 + 41, count, 0, 0, "alt-wrap", NULL, &c);
	/* the token's "alt-wrap" is now another key: the data key does not unwrap */
	assert_int_equal(nhi_hsm_destroy(hsm, k), NHI_OK);
	nhi_hsm_key_free(k);
	assert_int_equal(nhi_hsm_generate(hsm, NHI_KEY_AES256, "alt-wrap", &k), NHI_OK);
	expect_refused(s, b.data, b.len, NHI_ERR_VERIFY, "cannot unwrap the backup's data key with 'alt-wrap'",
		       "wrong wrap key");
	/* and with no such key at all */
	assert_int_equal(nhi_hsm_destroy(hsm, k), NHI_OK);
	nhi_hsm_key_free(k);
	expect_refused(s, c.data, c.len, NHI_ERR_NOT_FOUND, "no wrap key 'alt-wrap'", "missing wrap key");
	/* the configured wrap key must match the header's */
	{
		struct nhi_store_import_opts o = {.wrap_key_label = "nhid-wrap"};

		assert_int_equal(nhi_store_import(s, hsm, c.data, c.len, &o, NULL), NHI_ERR_CONFIG);
		assert_non_null(strstr(nhi_err_detail(), "configured wrap key is 'nhid-wrap'"));
		assert_untouched(s, 10);
	}
	nhi_wipe(img, len);
	sqlite3_free(img);
	nhi_buf_free(&b);
	nhi_buf_free(&c);
	nhi_store_free(s);
}

struct sql_case {
	const char *sql;
	const char *why; /* in the refusal's detail */
};

/* Each case's SQL run over a one-agent image, sealed with serial serial0 + i: refused. */
static void expect_each_refused(struct nhi_store *s, const struct sql_case *cases, size_t n, uint64_t serial0,
				const char *label)
{
	struct nhi_buf b = {0};
	size_t i;
	char what[300];

	for (i = 0; i < n; i++) {
		b.len = 0;
		sealed_image(cases[i].sql, serial0 + i, 0, 0, &b);
		snprintf(what, sizeof(what), "%s %zu (%s)", label, i, cases[i].sql);
		expect_refused(s, b.data, b.len, NHI_ERR_FORMAT, cases[i].why, what);
	}
	nhi_buf_free(&b);
}

static void test_hostile_images(void **state)
{
	static const struct sql_case cases[] = {
		{"CREATE TRIGGER t AFTER INSERT ON meta BEGIN DELETE FROM agents; END", "unexpected schema object: trigger"},
		{"CREATE VIEW v AS SELECT id FROM agents", "unexpected schema object: view 'v'"},
		{"CREATE INDEX i ON agents(status)", "unexpected schema object: index 'i'"},
		{"CREATE TABLE zz(x)", "unexpected schema object: table 'zz'"},
		{"CREATE TABLE aa(x INTEGER PRIMARY KEY)", "unexpected schema object: table 'aa'"},
		{"DROP TABLE agent_certs", "unexpected schema object"},
		{"ALTER TABLE agents ADD COLUMN extra TEXT", "table 'agents' is not defined as schema version 1 expects"},
		{"PRAGMA user_version=2", "schema version 2 is not supported"},
		{"PRAGMA application_id=7", "not an nhid image"},
		{"DELETE FROM meta WHERE key='serial'", "meta rows missing"},
		{"INSERT INTO meta VALUES('evil', 1)", "unknown meta key 'evil'"},
		{"UPDATE meta SET value=99 WHERE key='serial'", "does not match its header"},
	};
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b = {0};

	(void)state;
	expect_each_refused(s, cases, sizeof(cases) / sizeof(cases[0]), 50, "hostile image");
	/* a header that lies about the count (signed, but inconsistent) */
	b.len = 0;
	sealed_image(NULL, 70, 0, 3, &b);
	expect_refused(s, b.data, b.len, NHI_ERR_FORMAT, "does not match its header", "count mismatch");
	/* unknown schema version in the (signed) header */
	b.len = 0;
	sealed_image(NULL, 71, 2, 0, &b);
	expect_refused(s, b.data, b.len, NHI_ERR_FORMAT, "identity schema version 2", "unknown schema");
	/* another page size: VACUUM can change it only in a database file */
	{
		char path[400], l[200];
		const char *lines[] = {l};
		uint8_t *img = NULL;
		size_t len = 0;
		uint64_t count = 0;
		sqlite3 *db = NULL;
		struct nhi_buf file = {0};

		snprintf(l, sizeof(l), "{\"id\":\"demo-agent\",\"cert_sha256\":\"%s\"}", tp_hex("demo"));
		build_image(lines, 1, 74, T0 + 74, NULL, &img, &len, &count);
		tmp_path(path, sizeof(path), "page.db");
		write_text(path, ""); /* created, then overwritten with the image */
		assert_int_equal(nhi_file_write_atomic(path, img, len, 0600), NHI_OK);
		assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
		assert_int_equal(sqlite3_exec(db, "PRAGMA page_size=8192; VACUUM", NULL, NULL, NULL), SQLITE_OK);
		sqlite3_close(db);
		assert_int_equal(nhi_file_read(path, 1 << 20, &file), NHI_OK);
		b.len = 0;
		seal(file.data, file.len, 74, T0 + 74, count, 0, 0, NULL, NULL, &b);
		expect_refused(s, b.data, b.len, NHI_ERR_FORMAT, "page size 8192, format version 1 has 4096", "page size");
		nhi_buf_free(&file);
		nhi_wipe(img, len);
		sqlite3_free(img);
	}
	/* not a database at all, and a corrupted one */
	{
		uint8_t junk[8192];
		char l[200];
		const char *lines[] = {l};
		uint8_t *img = NULL;
		size_t len = 0;
		uint64_t count = 0;

		memset(junk, 0x5a, sizeof(junk));
		b.len = 0;
		seal(junk, sizeof(junk), 72, T0 + 72, 1, 0, 0, NULL, NULL, &b);
		expect_refused(s, b.data, b.len, NHI_ERR_FORMAT, "not a SQLite database", "not sqlite");
		snprintf(l, sizeof(l), "{\"id\":\"demo-agent\",\"cert_sha256\":\"%s\"}", tp_hex("demo"));
		build_image(lines, 1, 73, T0 + 73, NULL, &img, &len, &count);
		memset(img + len - 4096 + 8, 0xee, 200); /* inside the last page's cell area */
		b.len = 0;
		seal(img, len, 73, T0 + 73, count, 0, 0, NULL, NULL, &b);
		expect_refused(s, b.data, b.len, NHI_ERR_FORMAT, "identity image", "corrupted pages");
		nhi_wipe(img, len);
		sqlite3_free(img);
	}
	nhi_buf_free(&b);
	nhi_store_free(s);
}

/*
 * Rows a broken or hostile signing host could put in a signed image, each against a
 * rule the agents JSONL enforces: refused at import, never found at lookup time.
 * The one agent of sealed_image is demo-agent with one certificate.
 */
static void test_hostile_rows(void **state)
{
	static const struct sql_case cases[] = {
		{"UPDATE agents SET status='bogus'", "status is not active, suspended or revoked"},
		{"UPDATE agents SET status=CAST(x'61637469766500' AS TEXT)", "status is not active"},
		{"UPDATE agents SET id=CAST(x'61646d696e0078' AS TEXT); UPDATE agent_certs SET agent_id=CAST(x'61646d696e0078' "
		 "AS TEXT)",
		 "an agent id (7 bytes) is not valid"},
		{"UPDATE agents SET id='a b/c'; UPDATE agent_certs SET agent_id='a b/c'", "an agent id (5 bytes) is not valid"},
		{"UPDATE agents SET roles=CAST(x'61646d696e2020ff' AS TEXT)", "roles are not a list"},
		{"UPDATE agents SET roles='admin '", "roles are not a list"},
		{"UPDATE agents SET roles=' admin'", "roles are not a list"},
		{"UPDATE agents SET roles='admin admin'", "roles are not a list"},
		{"UPDATE agents SET roles='a/b'", "roles are not a list"},
		{"UPDATE agents SET audiences='x'||char(9)", "audiences are not a list"},
		{"UPDATE agents SET certs=x''", "0 bytes of certificate thumbprints"},
		{"UPDATE agents SET certs=CAST(certs||x'00' AS BLOB)", "33 bytes of certificate thumbprints"},
		{"UPDATE agents SET not_before=2, not_after=1", "are not 0 <= not_before <= not_after"},
		{"UPDATE agents SET not_before=-1", "are not 0 <= not_before"},
		{"UPDATE agents SET not_after=253402300800", "are not 0 <= not_before"},
		{"UPDATE agents SET attributes='not json {'", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes='[1]'", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes='{\"a\":1,}'", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes='{\"a\":\"'||CAST(x'ff' AS TEXT)||'\"}'", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes=CAST(x'7b7d00' AS TEXT)", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes='{\"a\":\"'||printf('%.4095c', 'x')||'\"}'", "attributes are missing or over"},
		{"UPDATE agent_certs SET thumbprint=x'010203'", "1 certificate index rows are not 32-byte thumbprints"},
		{"INSERT INTO agent_certs VALUES(zeroblob(32), 'ghost')", "2 certificate index rows for 1 enrolled"},
		{"INSERT INTO agent_certs VALUES(zeroblob(32), 'demo-agent')", "2 certificate index rows for 1 enrolled"},
		{"DELETE FROM agent_certs", "0 certificate index rows for 1 enrolled certificates"},
		{"UPDATE agents SET certs=CAST(certs||certs AS BLOB)", "1 certificate index rows for 2 enrolled certificates"},
	};
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b = {0};

	(void)state;
	expect_each_refused(s, cases, sizeof(cases) / sizeof(cases[0]), 100, "hostile row");
	/*
	 * Counts that agree, an index row that names the wrong certificate: imported (the
	 * import counts, the lookup checks), and refused where it is used, never served.
	 */
	b.len = 0;
	sealed_image("UPDATE agent_certs SET thumbprint=zeroblob(32)", 139, 0, 0, &b);
	{
		struct nhi_store *s2 = NULL;
		struct nhi_agent *a = NULL;
		uint8_t zero[32] = {0}, tp[32];

		assert_int_equal(nhi_store_new(&s2), NHI_OK);
		assert_int_equal(nhi_store_import(s2, hsm, b.data, b.len, NULL, NULL), NHI_OK);
		assert_int_equal(nhi_store_find_thumbprint(s2, zero, &a), NHI_ERR_FORMAT);
		assert_non_null(strstr(nhi_err_detail(), "names an agent that does not list the certificate"));
		assert_null(a);
		tp_of("demo", tp);
		assert_int_equal(nhi_store_find_thumbprint(s2, tp, &a), NHI_ERR_NOT_FOUND);
		nhi_store_free(s2);
	}
	/* the control: an image changed within the rules imports */
	b.len = 0;
	sealed_image("UPDATE agents SET roles='admin resolver', audiences='inference https://upd.lan', "
		     "attributes='{\"k\":[1,{\"x\":null}]}', status='suspended'",
		     140, 0, 0, &b);
	assert_int_equal(nhi_store_import(s, hsm, b.data, b.len, NULL, NULL), NHI_OK);
	nhi_buf_free(&b);
	nhi_store_free(s);
}

/*
 * Attributes a broken or hostile signing host could put in a signed image: a key
 * listed twice (SQLite's json_valid takes it; json_extract, jansson and the reply's
 * reader would each pick their own value), at any depth; and the other texts JSON
 * readers disagree on. Refused at import, the agent and the key named, the loaded
 * store untouched.
 */
static void test_hostile_attributes(void **state)
{
	static const struct sql_case cases[] = {
		{"UPDATE agents SET attributes='{\"team\":\"a\",\"team\":\"b\"}'",
		 "identity image: agent 'demo-agent': attributes: key \"team\" is listed twice in one object"},
		{"UPDATE agents SET attributes='{\"team\":\"a\",\"te\\u0061m\":\"b\"}'",
		 "agent 'demo-agent': attributes: key \"te\\u0061m\" is listed twice"},
		{"UPDATE agents SET attributes='{\"n\":{\"role\":\"user\",\"role\":\"admin\"}}'",
		 "agent 'demo-agent': attributes: key \"role\" is listed twice in one nested object"},
		{"UPDATE agents SET attributes='{\"n\":[1,{\"a\":1,\"b\":2,\"b\":3}]}'",
		 "agent 'demo-agent': attributes: key \"b\" is listed twice in one nested object"},
		{"UPDATE agents SET attributes='{\"team\":\"b\",\"site\":\"a\"}'", "agent 'demo-agent': attributes: key \"site\""},
		{"UPDATE agents SET attributes='{\"a\": 1}'", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes=' {}'", "attributes are not a JSON object in UTF-8"},
		{"UPDATE agents SET attributes='{\"a\":\"\\u0000\"}'", "\\u0000"},
		{"UPDATE agents SET attributes='{\"a\":\"\\udfff\"}'", "unpaired UTF-16 surrogate"},
		{"UPDATE agents SET attributes='{\"a\":99999999999999999999}'", "an integer beyond 64 bits"},
		{"UPDATE agents SET attributes='{\"a\":1e999}'", "a number beyond a double"},
	};
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b = {0};
	struct nhi_agent *a = NULL;

	(void)state;
	expect_each_refused(s, cases, sizeof(cases) / sizeof(cases[0]), 200, "hostile attributes");
	/* the control: nested, sorted at every depth, escapes and numbers: imported and served as stored */
	sealed_image("UPDATE agents SET attributes='{\"a\":{\"x\":[1,-2.5e3,{\"x\":null}],\"y\":\"\\u00e9\"},\"b\":true}'",
		     230, 0, 0, &b);
	if (nhi_store_import(s, hsm, b.data, b.len, NULL, NULL) != NHI_OK)
		fail_msg("control: %s", nhi_err_detail());
	assert_int_equal(nhi_store_find_id(s, "demo-agent", &a), NHI_OK);
	assert_string_equal(a->attributes, "{\"a\":{\"x\":[1,-2.5e3,{\"x\":null}],\"y\":\"\\u00e9\"},\"b\":true}");
	nhi_agent_free(a);
	nhi_buf_free(&b);
	nhi_store_free(s);
}

/* Chunks are bound to their index and the header even when the signature is redone. */
static void test_chunks_defense_in_depth(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b = {0};
	struct nhi_hsm_key *root = NULL;
	struct nhi_store_import_result r;
	const char *lines[64];
	char buf[64][400];
	uint8_t *img = NULL, tmp[4096 + 16], sig[64];
	size_t len = 0, i, sig_len, c0, c1;
	uint64_t count = 0;
	struct nhi_backup_info info;
	struct nhi_agent *a = NULL;

	(void)state;
	for (i = 0; i < 64; i++) {
		char name[32];

		snprintf(name, sizeof(name), "agent-%zu", i);
		snprintf(buf[i], sizeof(buf[i]), "{\"id\":\"%s\",\"cert_sha256\":\"%s\",\"attributes\":{\"pad\":\"%0100d\"}}",
			 i == 0 ? "demo-agent" : name, tp_hex(name), 0);
		lines[i] = buf[i];
	}
	build_image(lines, 64, 80, T0 + 80, NULL, &img, &len, &count);
	seal(img, len, 80, T0 + 80, count, 0, 4096, NULL, NULL, &b);
	assert_int_equal(nhi_backup_inspect(b.data, b.len, &info), NHI_OK);
	assert_true(info.chunk_count >= 3);
	assert_int_equal(nhi_hsm_find(hsm, "nhid-root", &root), NHI_OK);

	/* swap chunks 1 and 2, re-sign: GCM refuses (nonce bound to the index) */
	c0 = NHI_BACKUP_HEADER_BYTES + (4096 + 16);
	c1 = c0 + 4096 + 16;
	memcpy(tmp, b.data + c0, sizeof(tmp));
	memmove(b.data + c0, b.data + c1, sizeof(tmp));
	memcpy(b.data + c1, tmp, sizeof(tmp));
	assert_int_equal(nhi_hsm_sign(hsm, root, b.data, b.len - 64, sig, &sig_len), NHI_OK);
	memcpy(b.data + b.len - 64, sig, 64);
	expect_refused(s, b.data, b.len, NHI_ERR_VERIFY, "chunk 2 of", "swapped chunks, re-signed");

	/* a valid multi-chunk backup imports (and is a newer one) */
	b.len = 0;
	seal(img, len, 80, T0 + 80, count, 0, 4096, NULL, NULL, &b);
	assert_int_equal(nhi_store_import(s, hsm, b.data, b.len, NULL, &r), NHI_OK);
	assert_int_equal(r.outcome, NHI_IMPORT_NEWER);
	assert_int_equal(nhi_store_find_id(s, "agent-63", &a), NHI_OK);
	nhi_agent_free(a);
	nhi_hsm_key_free(root);
	nhi_wipe(img, len);
	sqlite3_free(img);
	nhi_buf_free(&b);
	nhi_store_free(s);
}

/* ---- rollback ---------------------------------------------------------------------------- */

static void test_rollback(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b10 = {0}, b20 = {0}, b20x = {0}, b15 = {0}, b25old = {0};
	struct nhi_store_import_result r;
	struct nhi_store_import_opts force = {.force = true}, hw = {.min_serial = 15};
	struct nhi_store *s2 = NULL;

	(void)state;
	create_standard(10, T0 + 10, NULL, &b10);
	create_standard(20, T0 + 20, NULL, &b20);
	create_standard(20, T0 + 20, "other", &b20x);
	create_standard(15, T0 + 15, NULL, &b15);
	create_standard(25, T0 + 5, NULL, &b25old);

	assert_int_equal(nhi_store_import(s, hsm, b20.data, b20.len, NULL, &r), NHI_OK);
	assert_int_equal(r.outcome, NHI_IMPORT_NEWER);
	assert_int_equal(r.previous_serial, 10);
	/* the same backup again: fine (reload) */
	assert_int_equal(nhi_store_import(s, hsm, b20.data, b20.len, NULL, &r), NHI_OK);
	assert_int_equal(r.outcome, NHI_IMPORT_SAME);
	/* older serial */
	assert_int_equal(nhi_store_import(s, hsm, b10.data, b10.len, NULL, &r), NHI_ERR_ROLLBACK);
	assert_non_null(strstr(nhi_err_detail(), "serial 10"));
	assert_non_null(strstr(nhi_err_detail(), "below the loaded backup's 20"));
	/* same serial, other content */
	assert_int_equal(nhi_store_import(s, hsm, b20x.data, b20x.len, NULL, &r), NHI_ERR_ROLLBACK);
	assert_non_null(strstr(nhi_err_detail(), "reuses the loaded serial 20"));
	/* higher serial but created before the loaded one */
	assert_int_equal(nhi_store_import(s, hsm, b25old.data, b25old.len, NULL, &r), NHI_ERR_ROLLBACK);
	assert_non_null(strstr(nhi_err_detail(), "before the loaded backup"));
	{
		struct nhi_store_info si;

		nhi_store_get_info(s, &si);
		assert_int_equal(si.serial, 20);
	}
	/* forced: accepted, and the caller learns it was a forced rollback */
	assert_int_equal(nhi_store_import(s, hsm, b10.data, b10.len, &force, &r), NHI_OK);
	assert_int_equal(r.outcome, NHI_IMPORT_ROLLBACK_FORCED);
	assert_int_equal(r.previous_serial, 20);
	assert_untouched(s, 10);

	/* a fresh store with a persisted high-water mark */
	assert_int_equal(nhi_store_new(&s2), NHI_OK);
	assert_int_equal(nhi_store_import(s2, hsm, b10.data, b10.len, &hw, &r), NHI_ERR_ROLLBACK);
	assert_non_null(strstr(nhi_err_detail(), "highest serial this server accepted"));
	assert_int_equal(nhi_store_import(s2, hsm, b15.data, b15.len, &hw, &r), NHI_OK); /* equal: a restart */
	assert_int_equal(r.outcome, NHI_IMPORT_FIRST);
	nhi_store_free(s2);
	s2 = NULL;

	/*
	 * A fresh store given the last accepted backup (what nhid persists): every rule
	 * holds as if it were loaded, so a restart cannot take what a reload refuses.
	 */
	{
		struct nhi_store_info acc;
		struct nhi_store_import_opts ao = {.min_serial = 20, .accepted = &acc};

		struct nhi_store *s3 = NULL;

		/* what a server that loaded b20 would have persisted */
		assert_int_equal(nhi_store_new(&s3), NHI_OK);
		assert_int_equal(nhi_store_import(s3, hsm, b20.data, b20.len, NULL, NULL), NHI_OK);
		nhi_store_get_info(s3, &acc);
		nhi_store_free(s3);
		assert_true(acc.loaded);
		assert_int_equal(nhi_store_new(&s2), NHI_OK);
		assert_int_equal(nhi_store_import(s2, hsm, b20x.data, b20x.len, &ao, &r), NHI_ERR_ROLLBACK);
		assert_non_null(strstr(nhi_err_detail(), "reuses the last accepted serial 20"));
		assert_non_null(strstr(nhi_err_detail(), "make a new backup of them with a higher serial"));
		assert_int_equal(nhi_store_import(s2, hsm, b25old.data, b25old.len, &ao, &r), NHI_ERR_ROLLBACK);
		assert_non_null(strstr(nhi_err_detail(), "before the last accepted backup"));
		assert_int_equal(nhi_store_generation(s2), 0); /* nothing was swapped in */
		assert_int_equal(nhi_store_import(s2, hsm, b20.data, b20.len, &ao, &r), NHI_OK);
		assert_int_equal(r.outcome, NHI_IMPORT_SAME);
		assert_int_equal(r.previous_serial, 20);
		/* once something is loaded, the loaded backup is the one compared */
		acc.serial = 1;
		assert_int_equal(nhi_store_import(s2, hsm, b20x.data, b20x.len, &ao, &r), NHI_ERR_ROLLBACK);
		assert_non_null(strstr(nhi_err_detail(), "reuses the loaded serial 20"));
		nhi_store_free(s2);
	}

	nhi_buf_free(&b10);
	nhi_buf_free(&b20);
	nhi_buf_free(&b20x);
	nhi_buf_free(&b15);
	nhi_buf_free(&b25old);
	nhi_store_free(s);
}

/* ---- the commit step ---------------------------------------------------------------- */

struct commit_probe {
	int calls;
	uint64_t saw_serial, served_serial;
	enum nhi_import_outcome saw_outcome;
	struct nhi_store *s;
	nhi_err answer;
};

static nhi_err probe_commit(void *arg, const struct nhi_store_import_result *res)
{
	struct commit_probe *p = arg;
	struct nhi_store_info si;

	p->calls++;
	p->saw_serial = res->info.serial;
	p->saw_outcome = res->outcome;
	nhi_store_get_info(p->s, &si); /* still the old backup: the swap comes after */
	p->served_serial = si.serial;
	return p->answer == NHI_OK ? NHI_OK : nhi_err_set(p->answer, "the mark could not be written (test)");
}

/*
 * o->commit runs once, after every check and before the swap: an error is the
 * import's and nothing is swapped in (what nhid relies on for its high-water mark
 * and audit record); an import refused earlier never reaches it.
 */
static void test_import_commit(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b11 = {0}, b5 = {0};
	struct commit_probe p = {.s = s, .answer = NHI_ERR_IO};
	struct nhi_store_import_opts o = {.commit = probe_commit, .commit_arg = &p};
	uint64_t g = nhi_store_generation(s);

	(void)state;
	create_standard(11, T0 + 11, NULL, &b11);
	create_standard(5, T0 + 5, NULL, &b5);
	assert_int_equal(nhi_store_import(s, hsm, b11.data, b11.len, &o, NULL), NHI_ERR_IO);
	assert_non_null(strstr(nhi_err_detail(), "the mark could not be written"));
	assert_int_equal(p.calls, 1);
	assert_int_equal(p.saw_serial, 11);
	assert_int_equal(p.saw_outcome, NHI_IMPORT_NEWER);
	assert_int_equal(p.served_serial, 10);
	assert_int_equal(nhi_store_generation(s), g);
	assert_untouched(s, 10);
	/* refused before the commit step: not called */
	assert_int_equal(nhi_store_import(s, hsm, b5.data, b5.len, &o, NULL), NHI_ERR_ROLLBACK);
	assert_int_equal(p.calls, 1);
	/* accepted by the commit step: swapped in */
	p.answer = NHI_OK;
	assert_int_equal(nhi_store_import(s, hsm, b11.data, b11.len, &o, NULL), NHI_OK);
	assert_int_equal(p.calls, 2);
	assert_int_equal(p.served_serial, 10);
	{
		struct nhi_store_info si;

		nhi_store_get_info(s, &si);
		assert_int_equal(si.serial, 11);
	}
	nhi_buf_free(&b11);
	nhi_buf_free(&b5);
	nhi_store_free(s);
}

/*
 * nhi_store_generation: what nhid's per-connection caller record is keyed on. Every
 * swap, a reload of the same backup included, is a new generation that no other
 * snapshot of any store shares; a refused import changes nothing; a record names the
 * generation it was read from.
 */
static void test_store_generation(void **state)
{
	struct nhi_store *s = NULL, *s2;
	struct nhi_buf b10 = {0}, b5 = {0};
	struct nhi_agent *a = NULL, *b = NULL;
	uint64_t g1, g2;

	(void)state;
	assert_int_equal(nhi_store_new(&s), NHI_OK);
	assert_int_equal(nhi_store_generation(s), 0); /* nothing loaded */
	create_standard(10, T0 + 10, NULL, &b10);
	create_standard(5, T0 + 5, NULL, &b5);
	assert_int_equal(nhi_store_import(s, hsm, b10.data, b10.len, NULL, NULL), NHI_OK);
	g1 = nhi_store_generation(s);
	assert_true(g1 != 0);
	assert_int_equal(nhi_store_find_id(s, "admin", &a), NHI_OK);
	assert_int_equal(a->store_generation, g1);
	/* the same backup again: a new snapshot, so a kept record is read again */
	assert_int_equal(nhi_store_import(s, hsm, b10.data, b10.len, NULL, NULL), NHI_OK);
	g2 = nhi_store_generation(s);
	assert_true(g2 != g1);
	assert_int_equal(nhi_store_find_id(s, "admin", &b), NHI_OK);
	assert_int_equal(b->store_generation, g2);
	assert_true(a->store_generation != nhi_store_generation(s));
	/* a refused import (rollback) leaves the generation as it was */
	assert_int_equal(nhi_store_import(s, hsm, b5.data, b5.len, NULL, NULL), NHI_ERR_ROLLBACK);
	assert_int_equal(nhi_store_generation(s), g2);
	/* another store's snapshot never shares one */
	s2 = loaded_store(10);
	assert_true(nhi_store_generation(s2) != g1 && nhi_store_generation(s2) != g2 && nhi_store_generation(s2) != 0);
	nhi_store_free(s2);
	nhi_agent_free(a);
	nhi_agent_free(b);
	nhi_buf_free(&b10);
	nhi_buf_free(&b5);
	nhi_store_free(s);
}

/* ---- import from a file ---------------------------------------------------------------- */

static void test_import_file(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b = {0};
	struct nhi_store_import_result r;
	char path[400], good[400];

	(void)state;
	create_standard(90, T0 + 90, NULL, &b);
	tmp_path(path, sizeof(path), "backup.nhib");
	memcpy(good, path, sizeof(good));
	assert_int_equal(nhi_file_write_excl(path, b.data, b.len, 0644), NHI_OK);
	assert_int_equal(nhi_store_import_file(s, hsm, path, NULL, &r), NHI_OK);
	assert_int_equal(r.outcome, NHI_IMPORT_NEWER);
	assert_true(r.total_s >= r.decrypt_s);
	assert_int_equal(r.image_bytes, r.info.image_bytes);
	assert_int_equal(nhi_store_import_file(s, hsm, "/nonexistent.nhib", NULL, &r), NHI_ERR_NOT_FOUND);
	tmp_path(path, sizeof(path), "empty.nhib");
	assert_int_equal(nhi_file_write_excl(path, "", 0, 0644), NHI_OK);
	assert_int_equal(nhi_store_import_file(s, hsm, path, NULL, &r), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "is empty"));
	tmp_path(path, sizeof(path), "trunc.nhib");
	assert_int_equal(nhi_file_write_excl(path, b.data, b.len - 10, 0644), NHI_OK);
	assert_int_equal(nhi_store_import_file(s, hsm, path, NULL, &r), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "truncated"));
	assert_non_null(strstr(nhi_err_detail(), path));
	/* the header alone, read from the file: the same refusals, by length and framing */
	{
		struct nhi_backup_info info;

		assert_int_equal(nhi_backup_inspect_file(path, &info), NHI_ERR_FORMAT);
		assert_non_null(strstr(nhi_err_detail(), "truncated"));
		assert_non_null(strstr(nhi_err_detail(), path));
		assert_int_equal(nhi_backup_inspect_file(good, &info), NHI_OK);
		assert_int_equal(info.serial, 90);
		assert_int_equal(info.file_bytes, b.len);
		assert_int_equal(nhi_backup_inspect_file("/nonexistent.nhib", &info), NHI_ERR_NOT_FOUND);
		tmp_path(path, sizeof(path), "empty2.nhib");
		assert_int_equal(nhi_file_write_excl(path, "", 0, 0644), NHI_OK);
		assert_int_equal(nhi_backup_inspect_file(path, &info), NHI_ERR_FORMAT);
		assert_non_null(strstr(nhi_err_detail(), "is empty"));
		tmp_path(path, sizeof(path), "short.nhib");
		assert_int_equal(nhi_file_write_excl(path, b.data, 100, 0644), NHI_OK);
		assert_int_equal(nhi_backup_inspect_file(path, &info), NHI_ERR_FORMAT);
		assert_non_null(strstr(nhi_err_detail(), "shorter than its"));
		assert_int_equal(nhi_backup_inspect_file("/tmp", &info), NHI_ERR_ARG);
	}
	{
		struct nhi_store_info si;

		nhi_store_get_info(s, &si);
		assert_int_equal(si.serial, 90);
	}
	nhi_buf_free(&b);
	nhi_store_free(s);
}

/* ---- a backup file changed while it is read ------------------------------------------------ */

static int change_mode; /* 1: flip the last byte, mtime +1 s (same size); 2: append; 3: truncate */
static unsigned hook_calls;

static void change_hook(const char *path, size_t got)
{
	struct stat st;
	struct timespec ts[2];
	uint8_t c;
	int fd = open(path, O_RDWR);

	(void)got;
	if (hook_calls++ > 0 || fd < 0)
		goto out;
	assert_int_equal(fstat(fd, &st), 0);
	if (change_mode == 1) {
		assert_int_equal(pread(fd, &c, 1, st.st_size - 1), 1);
		c = (uint8_t)~c;
		assert_int_equal(pwrite(fd, &c, 1, st.st_size - 1), 1);
		ts[0] = st.st_atim;
		ts[1] = st.st_mtim;
		ts[1].tv_sec += 1; /* a distinct mtime whatever the clock's granularity */
		assert_int_equal(futimens(fd, ts), 0);
	} else if (change_mode == 2) {
		assert_int_equal(pwrite(fd, "x", 1, st.st_size), 1);
	} else {
		assert_int_equal(ftruncate(fd, st.st_size / 2), 0);
	}
out:
	if (fd >= 0)
		close(fd);
}

/* overwritten while read: said so, nothing loaded (not a signature or decryption error) */
static void test_import_file_changed_while_read(void **state)
{
	struct nhi_store *s = loaded_store(10);
	struct nhi_buf b = {0};
	struct nhi_store_import_result r;
	struct nhi_store_info si;
	char path[400];
	int mode;

	(void)state;
	create_standard(91, T0 + 91, NULL, &b);
	for (mode = 1; mode <= 3; mode++) {
		tmp_path(path, sizeof(path), "changing.nhib");
		assert_int_equal(nhi_file_write_excl(path, b.data, b.len, 0644), NHI_OK);
		change_mode = mode;
		hook_calls = 0;
		nhi_test_backup_read_hook = change_hook;
		assert_int_equal(nhi_store_import_file(s, hsm, path, NULL, &r), NHI_ERR_IO);
		nhi_test_backup_read_hook = NULL;
		assert_true(hook_calls >= 1);
		assert_non_null(strstr(nhi_err_detail(), "changed while it was read"));
		assert_non_null(strstr(nhi_err_detail(), path));
		nhi_store_get_info(s, &si);
		assert_int_equal(si.serial, 10); /* nothing half loaded: the previous backup still serves */
	}
	/* the same file left alone loads */
	tmp_path(path, sizeof(path), "still.nhib");
	assert_int_equal(nhi_file_write_excl(path, b.data, b.len, 0644), NHI_OK);
	assert_int_equal(nhi_store_import_file(s, hsm, path, NULL, &r), NHI_OK);
	nhi_store_get_info(s, &si);
	assert_int_equal(si.serial, 91);
	nhi_buf_free(&b);
	nhi_store_free(s);
}

/* ---- concurrency: readers during swaps ----------------------------------------------------- */

struct reader_arg {
	struct nhi_store *s;
	atomic_bool *stop;
	unsigned long lookups;
	unsigned long errors;
	char last_error[256];
};

static void *reader_thread(void *p)
{
	struct reader_arg *ra = p;
	struct nhi_agent *a = NULL;
	uint8_t tp[32];
	char want[32];
	nhi_err e;

	tp_of("gw-1", tp);
	while (!atomic_load(ra->stop)) {
		e = nhi_store_resolve_id(ra->s, "demo-agent", time(NULL), &a);
		if (e == NHI_OK) {
			/* the record is from one snapshot: its attribute names its backup serial */
			snprintf(want, sizeof(want), "\"v\":\"%llu\"", (unsigned long long)a->backup_serial);
			if (strstr(a->attributes, want) == NULL) {
				ra->errors++;
				snprintf(ra->last_error, sizeof(ra->last_error), "torn record: %s vs serial %llu",
					 a->attributes, (unsigned long long)a->backup_serial);
			}
			nhi_agent_free(a);
		} else {
			ra->errors++;
			snprintf(ra->last_error, sizeof(ra->last_error), "%s", nhi_err_detail());
		}
		e = nhi_store_resolve_thumbprint(ra->s, tp, time(NULL), &a);
		if (e == NHI_OK)
			nhi_agent_free(a);
		else
			ra->errors++;
		ra->lookups += 2;
	}
	return NULL;
}

static void test_concurrent_swap(void **state)
{
	enum { THREADS = 6, ROUNDS = 6 };
	struct nhi_store *s = NULL;
	struct nhi_buf b[ROUNDS];
	struct reader_arg ra[THREADS];
	pthread_t th[THREADS];
	atomic_bool stop = false;
	char v[16];
	size_t i;

	(void)state;
	for (i = 0; i < ROUNDS; i++) {
		memset(&b[i], 0, sizeof(b[i]));
		snprintf(v, sizeof(v), "%zu", 100 + i);
		create_standard(100 + i, T0 + 100 + (long long)i, v, &b[i]);
	}
	assert_int_equal(nhi_store_new(&s), NHI_OK);
	assert_int_equal(nhi_store_import(s, hsm, b[0].data, b[0].len, NULL, NULL), NHI_OK);
	for (i = 0; i < THREADS; i++) {
		memset(&ra[i], 0, sizeof(ra[i]));
		ra[i].s = s;
		ra[i].stop = &stop;
		assert_int_equal(pthread_create(&th[i], NULL, reader_thread, &ra[i]), 0);
	}
	for (i = 1; i < ROUNDS; i++) {
		if (nhi_store_import(s, hsm, b[i].data, b[i].len, NULL, NULL) != NHI_OK)
			fail_msg("import %zu: %s", i, nhi_err_detail());
		/* and a refused one in between: readers must not notice */
		assert_int_equal(nhi_store_import(s, hsm, b[i].data, b[i].len / 2, NULL, NULL), NHI_ERR_FORMAT);
	}
	atomic_store(&stop, true);
	for (i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		if (ra[i].errors != 0)
			fail_msg("reader %zu: %lu errors of %lu, last: %s", i, ra[i].errors, ra[i].lookups, ra[i].last_error);
		assert_true(ra[i].lookups > 0);
	}
	for (i = 0; i < ROUNDS; i++)
		nhi_buf_free(&b[i]);
	nhi_store_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_lookup_policy),
		cmocka_unit_test(test_jsonl_line_rules),
		cmocka_unit_test(test_attributes_rules),
		cmocka_unit_test(test_rfc3339_vectors),
		cmocka_unit_test(test_jsonl_file_errors_nothing_written),
		cmocka_unit_test(test_cert_pem_file),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_wrong_wrap_key),
		cmocka_unit_test(test_hostile_images),
		cmocka_unit_test(test_hostile_rows),
		cmocka_unit_test(test_hostile_attributes),
		cmocka_unit_test(test_import_commit),
		cmocka_unit_test(test_chunks_defense_in_depth),
		cmocka_unit_test(test_rollback),
		cmocka_unit_test(test_store_generation),
		cmocka_unit_test(test_import_file),
		cmocka_unit_test(test_import_file_changed_while_read),
		cmocka_unit_test(test_concurrent_swap),
	};

	return cmocka_run_group_tests_name("identity", tests, setup, teardown);
}
