/*
 * identity/image.c — the SQLite database image inside a backup: its schema, the
 * builder used by `nhictl backup create`, and the hardened read-only open and the
 * checks every imported image passes before it can serve a lookup.
 */
#include "identity_internal.h"

#include <pthread.h>

#include <stdio.h>
#include <string.h>

#define NHI_IMAGE_APPLICATION_ID 0x4e484944 /* "NHID" */

/*
 * The schema, byte for byte: the import compares sqlite_schema with this list, so
 * any other object (trigger, view, index, table) or any changed column is refused.
 * WITHOUT ROWID keeps one b-tree per table (no separate primary-key index): the
 * image is smaller and a lookup is one b-tree descent.
 */
static const struct {
	const char *name;
	const char *sql;
} schema[] = {
	{"agent_certs", "CREATE TABLE agent_certs(thumbprint BLOB PRIMARY KEY NOT NULL, agent_id TEXT NOT NULL) "
			"STRICT, WITHOUT ROWID"},
	{"agents", "CREATE TABLE agents(id TEXT PRIMARY KEY NOT NULL, status TEXT NOT NULL, not_before INTEGER NOT "
		   "NULL, not_after INTEGER NOT NULL, roles TEXT NOT NULL, audiences TEXT NOT NULL, attributes TEXT "
		   "NOT NULL, certs BLOB NOT NULL) STRICT, WITHOUT ROWID"},
	{"meta", "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) STRICT, WITHOUT ROWID"},
};
#define SCHEMA_N (sizeof(schema) / sizeof(schema[0]))

static nhi_err exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	nhi_err rv = NHI_OK;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		rv = nhi_err_set(NHI_ERR_INTERNAL, "sqlite: %s: %s", sql, msg != NULL ? msg : "?");
	sqlite3_free(msg);
	return rv;
}

/* ---- builder ------------------------------------------------------------------ */

struct nhi_image_builder {
	sqlite3 *db;
	sqlite3_stmt *ins_agent, *ins_cert, *owner;
	long long created_at;
	uint64_t serial, count;
};

nhi_err nhi_image_builder_new(long long created_at, uint64_t serial, struct nhi_image_builder **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_image_builder *b = calloc(1, sizeof(*b));
	char sql[128];
	size_t i;

	*out = NULL;
	NHI_CHECK(b != NULL, NHI_ERR_NOMEM, "out of memory");
	b->created_at = created_at;
	b->serial = serial;
	if (sqlite3_open_v2(":memory:", &b->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_NOMEM, "cannot open an in-memory SQLite database");
	NHI_TRY(exec(b->db, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=4096;"));
	snprintf(sql, sizeof(sql), "PRAGMA application_id=%d; PRAGMA user_version=%d;", NHI_IMAGE_APPLICATION_ID,
		 NHI_BACKUP_SCHEMA_VERSION);
	NHI_TRY(exec(b->db, sql));
	for (i = 0; i < SCHEMA_N; i++)
		NHI_TRY(exec(b->db, schema[i].sql));
	NHI_TRY(exec(b->db, "BEGIN"));
	if (sqlite3_prepare_v2(b->db,
			       "INSERT INTO agents(id, status, not_before, not_after, roles, audiences, attributes, "
			       "certs) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
			       -1, &b->ins_agent, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(b->db, "INSERT INTO agent_certs(thumbprint, agent_id) VALUES(?1, ?2)", -1, &b->ins_cert,
			       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(b->db, "SELECT agent_id FROM agent_certs WHERE thumbprint = ?1", -1, &b->owner, NULL) !=
		    SQLITE_OK)
		NHI_FAIL(NHI_ERR_INTERNAL, "sqlite prepare: %s", sqlite3_errmsg(b->db));
	*out = b;
	b = NULL;
	rv = NHI_OK;
out:
	nhi_image_builder_free(b);
	return rv;
}

void nhi_image_builder_free(struct nhi_image_builder *b)
{
	if (b == NULL)
		return;
	sqlite3_finalize(b->ins_agent);
	sqlite3_finalize(b->ins_cert);
	sqlite3_finalize(b->owner);
	sqlite3_close(b->db);
	free(b);
}

static const char *status_text(enum nhi_agent_status s)
{
	return nhi_agent_status_name(s);
}

nhi_err nhi_image_builder_add(struct nhi_image_builder *b, const struct nhi_agent_row *r)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = b->ins_agent;
	char hex[65];
	size_t i;
	int rc;

	NHI_CHECK(b->count < NHI_BACKUP_AGENTS_MAX, NHI_ERR_LIMIT, "more than %lu agents (NHI_BACKUP_AGENTS_MAX)",
		  NHI_BACKUP_AGENTS_MAX);
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, status_text(r->status), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, r->not_before);
	sqlite3_bind_int64(st, 4, r->not_after);
	sqlite3_bind_text(st, 5, r->roles, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, r->audiences, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7, r->attributes, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 8, r->certs, (int)(r->n_certs * 32), SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	NHI_CHECK(rc != SQLITE_CONSTRAINT, NHI_ERR_FORMAT, "duplicate agent id '%s'", r->id);
	NHI_CHECK(rc == SQLITE_DONE, NHI_ERR_INTERNAL, "sqlite insert: %s", sqlite3_errmsg(b->db));
	for (i = 0; i < r->n_certs; i++) {
		st = b->ins_cert;
		sqlite3_reset(st);
		sqlite3_bind_blob(st, 1, r->certs[i], 32, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, r->id, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc == SQLITE_CONSTRAINT) {
			nhi_hex(r->certs[i], 32, hex);
			sqlite3_reset(b->owner);
			sqlite3_bind_blob(b->owner, 1, r->certs[i], 32, SQLITE_STATIC);
			rc = sqlite3_step(b->owner);
			rv = nhi_err_set(NHI_ERR_FORMAT, "certificate %s is already enrolled for agent '%s'", hex,
					 rc == SQLITE_ROW ? (const char *)sqlite3_column_text(b->owner, 0) : "?");
			sqlite3_reset(b->owner);
			/* the agent row stays; harmless: on any error the builder is discarded unwritten */
			goto out;
		}
		NHI_CHECK(rc == SQLITE_DONE, NHI_ERR_INTERNAL, "sqlite insert: %s", sqlite3_errmsg(b->db));
	}
	b->count++;
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_image_builder_finish(struct nhi_image_builder *b, uint8_t **image, size_t *image_len, uint64_t *count)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = NULL;
	sqlite3_int64 sz = 0;
	unsigned char *img = NULL;
	const char *keys[] = {"schema_version", "created_at", "serial", "agent_count"};
	sqlite3_int64 vals[4];
	size_t i;

	*image = NULL;
	*image_len = 0;
	vals[0] = NHI_BACKUP_SCHEMA_VERSION;
	vals[1] = b->created_at;
	vals[2] = (sqlite3_int64)b->serial;
	vals[3] = (sqlite3_int64)b->count;
	if (sqlite3_prepare_v2(b->db, "INSERT INTO meta(key, value) VALUES(?1, ?2)", -1, &st, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_INTERNAL, "sqlite prepare: %s", sqlite3_errmsg(b->db));
	for (i = 0; i < 4; i++) {
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, keys[i], -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, vals[i]);
		NHI_CHECK(sqlite3_step(st) == SQLITE_DONE, NHI_ERR_INTERNAL, "sqlite insert meta: %s",
			  sqlite3_errmsg(b->db));
	}
	NHI_TRY(exec(b->db, "COMMIT"));
	/* repack the b-trees full (inserts arrive in JSONL order, not key order) */
	NHI_TRY(exec(b->db, "VACUUM"));
	img = sqlite3_serialize(b->db, "main", &sz, 0);
	NHI_CHECK(img != NULL && sz > 0, NHI_ERR_NOMEM, "cannot serialise the SQLite image");
	NHI_CHECK((uint64_t)sz <= NHI_BACKUP_IMAGE_MAX_BYTES, NHI_ERR_LIMIT,
		  "the SQLite image is %lld bytes, over the limit of %lu (NHI_BACKUP_IMAGE_MAX_BYTES)", (long long)sz,
		  NHI_BACKUP_IMAGE_MAX_BYTES);
	*image = img;
	*image_len = (size_t)sz;
	*count = b->count;
	img = NULL;
	rv = NHI_OK;
out:
	if (img != NULL) {
		nhi_wipe(img, (size_t)sz);
		sqlite3_free(img);
	}
	sqlite3_finalize(st);
	return rv;
}

/* ---- open + check ---------------------------------------------------------------- */

nhi_err nhi_image_open(const uint8_t *image, size_t len, sqlite3 **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3 *db = NULL;
	char sql[64];
	int on = 1, off = 0;

	*out = NULL;
	NHI_CHECK(len >= 512 && len % 512 == 0 && len <= NHI_BACKUP_IMAGE_MAX_BYTES, NHI_ERR_FORMAT,
		  "decrypted image of %zu bytes is not a SQLite database", len);
	NHI_CHECK(memcmp(image, "SQLite format 3", 16) == 0, NHI_ERR_FORMAT,
		  "decrypted image is not a SQLite database (bad magic)");
	if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_NOMEM, "cannot open a SQLite connection: %s", db ? sqlite3_errmsg(db) : "out of memory");
	/* the image is authenticated, but parse it as if it were not: no code in a schema runs */
	if (sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, on, NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, off, NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, off, NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_VIEW, off, NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, off, NULL) != SQLITE_OK ||
	    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_FKEY, off, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_INTERNAL, "sqlite db_config: %s", sqlite3_errmsg(db));
	sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
	sqlite3_limit(db, SQLITE_LIMIT_LENGTH, 1024 * 1024);
	sqlite3_limit(db, SQLITE_LIMIT_SQL_LENGTH, 64 * 1024);
	sqlite3_limit(db, SQLITE_LIMIT_EXPR_DEPTH, 100);
	sqlite3_limit(db, SQLITE_LIMIT_COLUMN, 64);
	/* borrowed, read-only, never resized or freed by SQLite: it stays in our wiped secret memory */
	if (sqlite3_deserialize(db, "main", (unsigned char *)image, (sqlite3_int64)len, (sqlite3_int64)len,
				SQLITE_DESERIALIZE_READONLY) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "SQLite rejected the decrypted image: %s", sqlite3_errmsg(db));
	/* pages are read in place from the image instead of copied into a page cache */
	snprintf(sql, sizeof(sql), "PRAGMA mmap_size=%zu", len);
	NHI_TRY(exec(db, sql));
	NHI_TRY(exec(db, "PRAGMA query_only=ON"));
	*out = db;
	db = NULL;
	rv = NHI_OK;
out:
	sqlite3_close(db);
	return rv;
}

static nhi_err pragma_int(sqlite3 *db, const char *sql, long long *v)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = NULL;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW)
		NHI_FAIL(NHI_ERR_FORMAT, "identity image: %s: %s", sql, sqlite3_errmsg(db));
	*v = sqlite3_column_int64(st, 0);
	rv = NHI_OK;
out:
	sqlite3_finalize(st);
	return rv;
}

static nhi_err check_schema(sqlite3 *db)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = NULL;
	size_t n = 0;
	int rc;

	/* sqlite_schema is parsed here for the first time: a malformed entry fails this prepare */
	if (sqlite3_prepare_v2(db, "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name, type", -1, &st,
			       NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "identity image: unreadable schema: %s", sqlite3_errmsg(db));
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *type = (const char *)sqlite3_column_text(st, 0);
		const char *name = (const char *)sqlite3_column_text(st, 1);
		const char *tbl = (const char *)sqlite3_column_text(st, 2);
		const char *sql = (const char *)sqlite3_column_text(st, 3);

		type = type ? type : "?";
		name = name ? name : "?";
		NHI_CHECK(n < SCHEMA_N && strcmp(type, "table") == 0 && strcmp(name, schema[n].name) == 0 &&
				  tbl != NULL && strcmp(tbl, name) == 0,
			  NHI_ERR_FORMAT,
			  "identity image has an unexpected schema object: %.16s '%.64s' (a backup holds exactly "
			  "the tables agent_certs, agents, meta; refusing it)",
			  type, name);
		NHI_CHECK(sql != NULL && strcmp(sql, schema[n].sql) == 0, NHI_ERR_FORMAT,
			  "identity image: table '%s' is not defined as schema version %d expects", name,
			  NHI_BACKUP_SCHEMA_VERSION);
		n++;
	}
	NHI_CHECK(rc == SQLITE_DONE, NHI_ERR_FORMAT, "identity image: reading the schema: %s", sqlite3_errmsg(db));
	NHI_CHECK(n == SCHEMA_N, NHI_ERR_FORMAT, "identity image: %zu of the %zu expected tables", n, SCHEMA_N);
	rv = NHI_OK;
out:
	sqlite3_finalize(st);
	return rv;
}

static nhi_err check_integrity(sqlite3 *db)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = NULL;
	const char *msg;

	if (sqlite3_prepare_v2(db, "PRAGMA integrity_check(1)", -1, &st, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "identity image: integrity_check: %s", sqlite3_errmsg(db));
	NHI_CHECK(sqlite3_step(st) == SQLITE_ROW, NHI_ERR_FORMAT, "identity image: integrity_check: %s",
		  sqlite3_errmsg(db));
	msg = (const char *)sqlite3_column_text(st, 0);
	NHI_CHECK(msg != NULL && strcmp(msg, "ok") == 0, NHI_ERR_FORMAT,
		  "identity image fails PRAGMA integrity_check: %.200s", msg ? msg : "(null)");
	rv = NHI_OK;
out:
	sqlite3_finalize(st);
	return rv;
}

static nhi_err read_meta(sqlite3 *db, struct nhi_image_meta *m)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = NULL;
	unsigned seen = 0, bit;
	long long v;
	int rc;

	if (sqlite3_prepare_v2(db, "SELECT key, value FROM meta", -1, &st, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "identity image: meta: %s", sqlite3_errmsg(db));
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(st, 0);

		NHI_CHECK(k != NULL && sqlite3_column_type(st, 1) == SQLITE_INTEGER, NHI_ERR_FORMAT,
			  "identity image: malformed meta row");
		v = sqlite3_column_int64(st, 1);
		if (strcmp(k, "schema_version") == 0) {
			bit = 1;
			m->schema_version = v >= 0 && v < 1 << 30 ? (unsigned)v : 0;
		} else if (strcmp(k, "created_at") == 0) {
			bit = 2;
			m->created_at = v;
		} else if (strcmp(k, "serial") == 0) {
			bit = 4;
			m->serial = (uint64_t)v;
		} else if (strcmp(k, "agent_count") == 0) {
			bit = 8;
			m->agent_count = (uint64_t)v;
		} else {
			NHI_FAIL(NHI_ERR_FORMAT, "identity image: unknown meta key '%.32s'", k);
		}
		seen |= bit;
	}
	NHI_CHECK(rc == SQLITE_DONE, NHI_ERR_FORMAT, "identity image: meta: %s", sqlite3_errmsg(db));
	NHI_CHECK(seen == 15, NHI_ERR_FORMAT, "identity image: meta rows missing");
	rv = NHI_OK;
out:
	sqlite3_finalize(st);
	return rv;
}

/*
 * Every agents row against the JSONL's rules (nhi_agent_stored_check; attributes
 * by nhi_agent_attributes_check, one pass without a tree: a tree per row would double
 * a 1M-agent import, and SQLite's json_valid would let duplicate keys through), and
 * the certificate index: as many 32-byte thumbprints as the rows have slots. That
 * each index row names an agent listing it is checked where it is used (store.c
 * lookup), which costs nothing there and a join of every row here.
 */
static nhi_err check_rows(sqlite3 *db)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	sqlite3_stmt *st = NULL;
	struct nhi_agent_stored r;
	uint64_t slots = 0;
	long long index_rows = 0, bad_tp = 0;
	int rc;

	if (sqlite3_prepare_v2(db,
			       "SELECT id, status, not_before, not_after, roles, audiences, attributes, length(certs) "
			       "FROM agents",
			       -1, &st, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "identity image: agents: %s", sqlite3_errmsg(db));
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		r.id = (const char *)sqlite3_column_text(st, 0);
		r.id_len = (size_t)sqlite3_column_bytes(st, 0);
		r.status = (const char *)sqlite3_column_text(st, 1);
		r.status_len = (size_t)sqlite3_column_bytes(st, 1);
		r.not_before = sqlite3_column_int64(st, 2);
		r.not_after = sqlite3_column_int64(st, 3);
		r.roles = (const char *)sqlite3_column_text(st, 4);
		r.roles_len = (size_t)sqlite3_column_bytes(st, 4);
		r.audiences = (const char *)sqlite3_column_text(st, 5);
		r.audiences_len = (size_t)sqlite3_column_bytes(st, 5);
		r.attributes = (const char *)sqlite3_column_text(st, 6);
		r.attributes_len = (size_t)sqlite3_column_bytes(st, 6);
		r.certs_len = (size_t)sqlite3_column_int64(st, 7);
		rv = nhi_agent_stored_check(&r);
		if (rv != NHI_OK) {
			rv = nhi_err_wrap(rv, "identity image");
			goto out;
		}
		slots += r.certs_len / 32;
	}
	NHI_CHECK(rc == SQLITE_DONE, NHI_ERR_FORMAT, "identity image: agents: %s", sqlite3_errmsg(db));
	sqlite3_finalize(st);
	st = NULL;
	if (sqlite3_prepare_v2(db, "SELECT count(*), total(length(thumbprint) != 32) FROM agent_certs", -1, &st, NULL) !=
		    SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		NHI_FAIL(NHI_ERR_FORMAT, "identity image: agent_certs: %s", sqlite3_errmsg(db));
	index_rows = sqlite3_column_int64(st, 0);
	bad_tp = sqlite3_column_int64(st, 1);
	NHI_CHECK(bad_tp == 0, NHI_ERR_FORMAT, "identity image: %lld certificate index rows are not 32-byte thumbprints",
		  bad_tp);
	NHI_CHECK((uint64_t)index_rows == slots, NHI_ERR_FORMAT,
		  "identity image: %lld certificate index rows for %llu enrolled certificates", index_rows,
		  (unsigned long long)slots);
	rv = NHI_OK;
out:
	sqlite3_finalize(st);
	return rv;
}

struct rows_job {
	sqlite3 *db;
	nhi_err rv;
	char detail[NHI_ERR_DETAIL_MAX];
};

/* the row checks on their own connection, with the same strict cell checks */
static void *rows_main(void *arg)
{
	struct rows_job *j = arg;

	j->rv = exec(j->db, "PRAGMA cell_size_check=ON");
	if (j->rv == NHI_OK)
		j->rv = check_rows(j->db);
	if (j->rv == NHI_OK)
		j->rv = exec(j->db, "PRAGMA cell_size_check=OFF");
	if (j->rv != NHI_OK)
		snprintf(j->detail, sizeof(j->detail), "%s", nhi_err_detail());
	return NULL;
}

nhi_err nhi_image_check(sqlite3 *db, sqlite3 *rows_db, const struct nhi_backup_info *expect, struct nhi_image_meta *m)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct rows_job job = {.db = rows_db, .rv = NHI_ERR_INTERNAL};
	pthread_t th;
	bool started = false;
	long long v;

	memset(m, 0, sizeof(*m));
	/*
	 * Strict cell checks while the image is untrusted; turned off afterwards: with mmap
	 * every page visit re-decodes the page, and checking every cell each time would
	 * cost a lookup several times over (the image never changes once checked).
	 */
	NHI_TRY(exec(db, "PRAGMA cell_size_check=ON"));
	NHI_TRY(check_schema(db));
	NHI_TRY(pragma_int(db, "PRAGMA application_id", &v));
	NHI_CHECK(v == NHI_IMAGE_APPLICATION_ID, NHI_ERR_FORMAT, "identity image: not an nhid image (application_id)");
	NHI_TRY(pragma_int(db, "PRAGMA page_size", &v));
	NHI_CHECK(v == 4096, NHI_ERR_FORMAT, "identity image: page size %lld, format version 1 has 4096", v);
	NHI_TRY(pragma_int(db, "PRAGMA user_version", &v));
	NHI_CHECK(v == NHI_BACKUP_SCHEMA_VERSION, NHI_ERR_FORMAT,
		  "identity image: schema version %lld is not supported (this build knows %d)", v,
		  NHI_BACKUP_SCHEMA_VERSION);
	/*
	 * The two slow steps side by side on two cores: the rows on rows_db while this
	 * connection runs integrity_check (1M agents: about 1 s and 0.3 s). A row error
	 * counts only after the integrity check passed, so a corrupt image names that.
	 */
	started = rows_db != NULL && pthread_create(&th, NULL, rows_main, &job) == 0;
	NHI_TRY(check_integrity(db));
	NHI_TRY(read_meta(db, m));
	NHI_CHECK(m->schema_version == NHI_BACKUP_SCHEMA_VERSION, NHI_ERR_FORMAT,
		  "identity image: meta schema_version %u, expected %d", m->schema_version, NHI_BACKUP_SCHEMA_VERSION);
	NHI_TRY(pragma_int(db, "SELECT count(*) FROM agents", &v));
	NHI_CHECK((uint64_t)v == m->agent_count, NHI_ERR_FORMAT, "identity image holds %lld agents, its meta says %llu",
		  v, (unsigned long long)m->agent_count);
	if (expect != NULL) {
		NHI_CHECK(m->serial == expect->serial && m->created_at == expect->created_at &&
				  m->agent_count == expect->record_count,
			  NHI_ERR_FORMAT,
			  "identity image (serial %llu, %llu agents) does not match its header (serial %llu, %llu "
			  "agents)",
			  (unsigned long long)m->serial, (unsigned long long)m->agent_count,
			  (unsigned long long)expect->serial, (unsigned long long)expect->record_count);
	}
	if (started) {
		pthread_join(th, NULL);
		started = false;
		NHI_CHECK(job.rv == NHI_OK, job.rv, "%s", job.detail);
	} else {
		NHI_TRY(check_rows(db));
	}
	NHI_TRY(exec(db, "PRAGMA cell_size_check=OFF"));
	rv = NHI_OK;
out:
	if (started)
		pthread_join(th, NULL);
	return rv;
}
