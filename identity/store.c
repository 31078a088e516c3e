/*
 * identity/store.c — the in-memory identity store: a refcounted snapshot of one
 * verified, decrypted SQLite image, hot-swapped by imports.
 *
 * Concurrency: `mu` guards only the `cur` pointer; a lookup takes a reference to
 * the snapshot under it and then works on that snapshot alone, so an import can
 * swap the pointer at any moment and the lookup still finishes on a complete
 * store. The last reference frees the snapshot (connections closed, image wiped).
 * Each snapshot has up to NHI_STORE_READERS_MAX read-only connections over the
 * same image bytes (no copies), opened lazily, each used by one thread at a time.
 */
#include "identity_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SQL_BY_ID                                                                                                  \
	"SELECT id, status, not_before, not_after, roles, audiences, attributes, certs FROM agents WHERE id = ?1"
#define SQL_BY_TP                                                                                                  \
	"SELECT a.id, a.status, a.not_before, a.not_after, a.roles, a.audiences, a.attributes, a.certs "          \
	"FROM agent_certs c JOIN agents a ON a.id = c.agent_id WHERE c.thumbprint = ?1"

struct reader {
	pthread_mutex_t mu;
	sqlite3 *db;
	sqlite3_stmt *by_id, *by_tp;
};

struct snapshot {
	atomic_uint refs;
	uint64_t generation; /* unique in this process: records carry it (nhi_store_generation) */
	struct nhi_buf image; /* secret: backs every connection of this snapshot */
	struct nhi_store_info info;
	struct reader readers[NHI_STORE_READERS_MAX];
};

struct nhi_store {
	pthread_mutex_t mu;        /* guards cur */
	pthread_mutex_t import_mu; /* one import at a time (the rollback check relies on it) */
	struct snapshot *cur;
	atomic_ullong generation; /* cur's, or 0: read without mu by nhi_store_generation */
};

/* every snapshot of every store gets its own; 0 is never one */
static atomic_ullong snapshots_made;

/* ---- snapshots ------------------------------------------------------------------ */

static void reader_close(struct reader *r)
{
	sqlite3_finalize(r->by_id);
	sqlite3_finalize(r->by_tp);
	sqlite3_close(r->db);
	r->by_id = r->by_tp = NULL;
	r->db = NULL;
}

static nhi_err reader_prepare(struct reader *r)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	if (sqlite3_prepare_v3(r->db, SQL_BY_ID, -1, SQLITE_PREPARE_PERSISTENT, &r->by_id, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(r->db, SQL_BY_TP, -1, SQLITE_PREPARE_PERSISTENT, &r->by_tp, NULL) != SQLITE_OK)
		NHI_FAIL(NHI_ERR_FORMAT, "identity store: preparing lookups: %s", sqlite3_errmsg(r->db));
	/*
	 * One read transaction for the life of the connection: the image never changes, and
	 * a lookup then skips the lock/unlock and change-counter check of an autocommit read.
	 */
	NHI_CHECK(sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK, NHI_ERR_INTERNAL,
		  "identity store: BEGIN: %s", sqlite3_errmsg(r->db));
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err reader_open(struct snapshot *sn, struct reader *r)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	NHI_TRY(nhi_image_open(sn->image.data, sn->image.len, &r->db));
	NHI_TRY(reader_prepare(r));
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		reader_close(r);
	return rv;
}

static void snap_free(struct snapshot *sn)
{
	size_t i;

	if (sn == NULL)
		return;
	for (i = 0; i < NHI_STORE_READERS_MAX; i++) {
		reader_close(&sn->readers[i]);
		pthread_mutex_destroy(&sn->readers[i].mu);
	}
	nhi_buf_free(&sn->image); /* wiped, unmapped */
	free(sn);
}

static void snap_put(struct snapshot *sn)
{
	if (sn != NULL && atomic_fetch_sub(&sn->refs, 1) == 1)
		snap_free(sn);
}

static struct snapshot *snap_get(struct nhi_store *s)
{
	struct snapshot *sn;

	pthread_mutex_lock(&s->mu);
	sn = s->cur;
	if (sn != NULL)
		atomic_fetch_add(&sn->refs, 1);
	pthread_mutex_unlock(&s->mu);
	return sn;
}

/*
 * Takes the image (moved out of *image); checks it fully on the first two connections.
 * info NULL (tests only): the image's own meta rows stand in for a verified header.
 */
static nhi_err snap_new(struct nhi_buf *image, const struct nhi_backup_info *info, struct snapshot **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct snapshot *sn = calloc(1, sizeof(*sn));
	struct nhi_image_meta meta;
	size_t i;

	*out = NULL;
	NHI_CHECK(sn != NULL, NHI_ERR_NOMEM, "out of memory");
	for (i = 0; i < NHI_STORE_READERS_MAX; i++)
		pthread_mutex_init(&sn->readers[i].mu, NULL);
	atomic_init(&sn->refs, 1);
	sn->generation = atomic_fetch_add(&snapshots_made, 1) + 1;
	sn->image = *image;
	memset(image, 0, sizeof(*image));
	NHI_TRY(nhi_image_open(sn->image.data, sn->image.len, &sn->readers[0].db));
	NHI_TRY(nhi_image_open(sn->image.data, sn->image.len, &sn->readers[1].db));
	NHI_TRY(nhi_image_check(sn->readers[0].db, sn->readers[1].db, info, &meta));
	NHI_TRY(reader_prepare(&sn->readers[0]));
	NHI_TRY(reader_prepare(&sn->readers[1]));
	sn->info.loaded = true;
	sn->info.serial = info != NULL ? info->serial : meta.serial;
	sn->info.created_at = info != NULL ? info->created_at : meta.created_at;
	sn->info.agents = meta.agent_count;
	sn->info.loaded_at = (long long)time(NULL);
	if (info != NULL)
		memcpy(sn->info.digest_sha256, info->digest_sha256, sizeof(sn->info.digest_sha256));
	*out = sn;
	sn = NULL;
	rv = NHI_OK;
out:
	snap_free(sn);
	return rv;
}

/* ---- store ------------------------------------------------------------------------ */

/* sn becomes the snapshot readers get; the one it replaces is returned, for snap_put */
static struct snapshot *snap_install(struct nhi_store *s, struct snapshot *sn)
{
	struct snapshot *old;

	pthread_mutex_lock(&s->mu);
	old = s->cur;
	s->cur = sn;
	atomic_store(&s->generation, sn->generation);
	pthread_mutex_unlock(&s->mu);
	return old;
}

nhi_err nhi_store_new(struct nhi_store **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_store *s = calloc(1, sizeof(*s));

	*out = NULL;
	NHI_CHECK(s != NULL, NHI_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->import_mu, NULL);
	*out = s;
	rv = NHI_OK;
out:
	return rv;
}

void nhi_store_free(struct nhi_store *s)
{
	if (s == NULL)
		return;
	snap_put(s->cur);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->import_mu);
	free(s);
}

void nhi_store_get_info(struct nhi_store *s, struct nhi_store_info *out)
{
	pthread_mutex_lock(&s->mu);
	if (s->cur != NULL)
		*out = s->cur->info;
	else
		memset(out, 0, sizeof(*out));
	pthread_mutex_unlock(&s->mu);
}

/* ---- import ----------------------------------------------------------------------- */

struct rollback_ctx {
	const struct nhi_store_import_opts *o;
	struct nhi_store_info prev;
	const char *prev_name; /* "loaded", or "last accepted" when prev is o->accepted */
	enum nhi_import_outcome outcome;
};

/* Runs after the signature verified, before decrypting; the caller holds import_mu. */
static nhi_err check_rollback(void *vctx, const struct nhi_backup_info *in)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct rollback_ctx *c = vctx;
	uint64_t min = c->o != NULL ? c->o->min_serial : 0;
	bool force = c->o != NULL && c->o->force;
	char why[200] = "", t_new[32], t_old[32];

	nhi_time_rfc3339(in->created_at, t_new, sizeof(t_new));
	nhi_time_rfc3339(c->prev.created_at, t_old, sizeof(t_old));
	if (in->serial < min)
		snprintf(why, sizeof(why), "its serial %llu is below %llu, the highest serial this server accepted",
			 (unsigned long long)in->serial, (unsigned long long)min);
	else if (!c->prev.loaded)
		c->outcome = NHI_IMPORT_FIRST;
	else if (in->serial == c->prev.serial && strcmp(in->digest_sha256, c->prev.digest_sha256) == 0)
		c->outcome = NHI_IMPORT_SAME;
	else if (in->serial < c->prev.serial)
		snprintf(why, sizeof(why), "its serial %llu (created %s) is below the %s backup's %llu (created %s)",
			 (unsigned long long)in->serial, t_new, c->prev_name, (unsigned long long)c->prev.serial, t_old);
	else if (in->serial == c->prev.serial)
		snprintf(why, sizeof(why), "it reuses the %s serial %llu with different content", c->prev_name,
			 (unsigned long long)in->serial);
	else if (in->created_at < c->prev.created_at)
		snprintf(why, sizeof(why), "it was created %s, before the %s backup (%s)", t_new, c->prev_name, t_old);
	else
		c->outcome = NHI_IMPORT_NEWER;
	if (why[0] != '\0') {
		NHI_CHECK(force, NHI_ERR_ROLLBACK,
			  "refusing an identity backup rollback: %s; to serve older identities again, make a new "
			  "backup of them with a higher serial (nhictl backup --serial)",
			  why);
		c->outcome = NHI_IMPORT_ROLLBACK_FORCED;
	}
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err import_common(struct nhi_store *s, struct nhi_hsm *h, const uint8_t *data, size_t len, bool discard,
			     const struct nhi_store_import_opts *o, struct nhi_store_import_result *res, double t0)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_backup_opened *op = NULL;
	struct rollback_ctx rc = {.o = o, .prev_name = "loaded"};
	struct snapshot *sn = NULL, *old = NULL;
	struct nhi_store_import_result r;
	double t1;

	memset(&r, 0, sizeof(r));
	op = calloc(1, sizeof(*op));
	NHI_CHECK(op != NULL, NHI_ERR_NOMEM, "out of memory");
	nhi_store_get_info(s, &rc.prev);
	if (!rc.prev.loaded && o != NULL && o->accepted != NULL && o->accepted->loaded) {
		rc.prev = *o->accepted; /* a restart or a scratch store: the last accepted backup */
		rc.prev_name = "last accepted";
	}
	NHI_TRY(nhi_backup_open(h, data, len, o, discard, check_rollback, &rc, op));
	t1 = nhi_now_s();
	NHI_TRY(snap_new(&op->image, &op->hdr.info, &sn));
	r.info = op->hdr.info;
	r.outcome = rc.outcome;
	r.previous_serial = rc.prev.serial;
	r.previous_created_at = rc.prev.created_at;
	r.verify_s = t1 - t0 - op->decrypt_s; /* read + parse + SHA-256 + ECDSA */
	r.decrypt_s = op->decrypt_s;
	r.check_s = nhi_now_s() - t1;
	r.image_bytes = sn->image.len;
	r.total_s = nhi_now_s() - t0;
	if (o != NULL && o->commit != NULL)
		NHI_TRY(o->commit(o->commit_arg, &r));
	/* the swap: readers that started before keep the old snapshot until they finish */
	old = snap_install(s, sn);
	sn = NULL;
	r.total_s = nhi_now_s() - t0;
	if (res != NULL)
		*res = r;
	rv = NHI_OK;
out:
	snap_put(old);
	snap_free(sn);
	if (op != NULL) {
		nhi_backup_opened_clear(op);
		free(op);
	}
	return rv;
}

#ifdef NHI_TEST_BUILD
nhi_err nhi_store_insecure_load_image(struct nhi_store *s, const uint8_t *image, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf img = {.secret = true};
	struct snapshot *sn = NULL, *old = NULL;

	pthread_mutex_lock(&s->import_mu);
	NHI_TRY(nhi_buf_append(&img, image, len));
	NHI_TRY(snap_new(&img, NULL, &sn));
	old = snap_install(s, sn);
	sn = NULL;
	rv = NHI_OK;
out:
	pthread_mutex_unlock(&s->import_mu);
	snap_put(old);
	snap_free(sn);
	nhi_buf_free(&img);
	return rv;
}
#endif

nhi_err nhi_store_import(struct nhi_store *s, struct nhi_hsm *h, const uint8_t *data, size_t len,
			 const struct nhi_store_import_opts *o, struct nhi_store_import_result *res)
{
	nhi_err rv;
	double t0 = nhi_now_s();

	pthread_mutex_lock(&s->import_mu);
	rv = import_common(s, h, data, len, false, o, res, t0);
	pthread_mutex_unlock(&s->import_mu);
	return rv;
}

#ifdef NHI_TEST_BUILD
void (*nhi_test_backup_read_hook)(const char *path, size_t got);
#endif

/* st_size, mtime and ctime equal: the file is the bytes it was at the first stat */
static bool same_file_state(const struct stat *a, const struct stat *b)
{
	return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/*
 * Read the file into a private anonymous mapping so consumed ciphertext pages can be
 * dropped. Through the one descriptor, in bounded reads, and the file must not change
 * meanwhile (size, mtime, ctime before and after, exactly that many bytes then EOF, as
 * server/manifest.c hashes a file): a backup being copied over would otherwise be
 * refused as a bad signature or a failed decryption, naming the wrong cause.
 */
static nhi_err map_file(const char *path, uint8_t **out, size_t *out_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat st, after;
	uint8_t *p = MAP_FAILED, extra;
	size_t len = 0, got = 0, want;
	ssize_t n;
	int fd;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	NHI_CHECK(fd >= 0, errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "cannot open backup %s: %s", path,
		  strerror(errno));
	NHI_CHECK(fstat(fd, &st) == 0 && S_ISREG(st.st_mode), NHI_ERR_ARG, "backup %s is not a regular file", path);
	NHI_CHECK(st.st_size > 0, NHI_ERR_FORMAT, "the backup file %s is empty", path);
	NHI_CHECK((uint64_t)st.st_size <= NHI_BACKUP_MAX_BYTES, NHI_ERR_LIMIT,
		  "backup %s is %lld bytes, over the limit of %lu (NHI_BACKUP_MAX_BYTES)", path, (long long)st.st_size,
		  NHI_BACKUP_MAX_BYTES);
	len = (size_t)st.st_size;
	/* populated in one call: page faults one by one cost more than the read itself */
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	NHI_CHECK(p != MAP_FAILED, NHI_ERR_NOMEM, "cannot map %zu bytes for %s", len, path);
	while (got < len) {
		want = len - got < NHI_BACKUP_READ_CHUNK_BYTES ? len - got : NHI_BACKUP_READ_CHUNK_BYTES;
		n = read(fd, p + got, want);
		if (n < 0 && errno == EINTR)
			continue;
		NHI_CHECK(n >= 0, NHI_ERR_IO, "reading %s: %s", path, strerror(errno));
		if (n == 0)
			break; /* shrank: named below as a change */
		got += (size_t)n;
#ifdef NHI_TEST_BUILD
		if (nhi_test_backup_read_hook != NULL)
			nhi_test_backup_read_hook(path, got);
#endif
	}
	do
		n = read(fd, &extra, 1); /* grown past the size seen at open? */
	while (n < 0 && errno == EINTR);
	NHI_CHECK(n >= 0, NHI_ERR_IO, "reading %s: %s", path, strerror(errno));
	NHI_CHECK(fstat(fd, &after) == 0, NHI_ERR_IO, "stat %s: %s", path, strerror(errno));
	NHI_CHECK(got == len && n == 0 && same_file_state(&st, &after), NHI_ERR_IO,
		  "backup %s changed while it was read (%zu bytes at open, %zu read, %lld at the end): nothing was "
		  "loaded; write the backup under another name and rename it into place, then load it again",
		  path, len, got + (size_t)n, (long long)after.st_size);
	*out = p;
	*out_len = len;
	p = MAP_FAILED;
	rv = NHI_OK;
out:
	if (p != MAP_FAILED)
		munmap(p, len);
	if (fd >= 0)
		close(fd);
	return rv;
}

nhi_err nhi_store_import_file(struct nhi_store *s, struct nhi_hsm *h, const char *path,
			      const struct nhi_store_import_opts *o, struct nhi_store_import_result *res)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t *data = NULL;
	size_t len = 0;
	double t0 = nhi_now_s();

	pthread_mutex_lock(&s->import_mu);
	rv = map_file(path, &data, &len);
	if (rv == NHI_OK)
		rv = import_common(s, h, data, len, true, o, res, t0);
	pthread_mutex_unlock(&s->import_mu);
	if (data != NULL)
		munmap(data, len);
	if (rv != NHI_OK)
		rv = nhi_err_wrap(rv, "%s", path);
	return rv;
}

/* ---- lookups ---------------------------------------------------------------------- */

static _Thread_local unsigned reader_hint;
static atomic_uint reader_seq;

/* A locked reader of `sn`, opened if needed, into *out (the caller unlocks r->mu). */
static nhi_err reader_get(struct snapshot *sn, struct reader **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct reader *r = NULL;
	unsigned start, i;

	*out = NULL;
	if (reader_hint == 0)
		reader_hint = atomic_fetch_add(&reader_seq, 1) + 1;
	start = reader_hint % NHI_STORE_READERS_MAX;
	/* this thread's usual connection first, then any free one, else wait for ours */
	for (i = 0; i < NHI_STORE_READERS_MAX && r == NULL; i++) {
		r = &sn->readers[(start + i) % NHI_STORE_READERS_MAX];
		if (pthread_mutex_trylock(&r->mu) != 0)
			r = NULL;
	}
	if (r == NULL) {
		r = &sn->readers[start];
		pthread_mutex_lock(&r->mu);
	}
	if (r->db == NULL) {
		rv = reader_open(sn, r);
		if (rv != NHI_OK) {
			pthread_mutex_unlock(&r->mu);
			goto out;
		}
	}
	*out = r;
	rv = NHI_OK;
out:
	return rv;
}

static size_t count_words(const char *s, size_t len)
{
	size_t i, n = len > 0;

	for (i = 0; i < len; i++)
		n += s[i] == ' ';
	return n;
}

/* split a space-separated list copied at `dst` into the pointer array */
static char *put_words(char *dst, const char *src, size_t len, const char **ptrs)
{
	size_t i, k = 0;

	memcpy(dst, src, len);
	dst[len] = '\0';
	if (len > 0)
		ptrs[k++] = dst;
	for (i = 0; i < len; i++) {
		if (dst[i] == ' ') {
			dst[i] = '\0';
			ptrs[k++] = dst + i + 1;
		}
	}
	return dst + len + 1;
}

/* Copy the current row into one malloc'd block. */
static nhi_err decode_row(sqlite3_stmt *st, const struct snapshot *sn, struct nhi_agent **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *id = (const char *)sqlite3_column_text(st, 0);
	const char *status = (const char *)sqlite3_column_text(st, 1);
	const char *roles = (const char *)sqlite3_column_text(st, 4);
	const char *auds = (const char *)sqlite3_column_text(st, 5);
	const char *attrs = (const char *)sqlite3_column_text(st, 6);
	const void *certs = sqlite3_column_blob(st, 7);
	size_t id_len = (size_t)sqlite3_column_bytes(st, 0), roles_len = (size_t)sqlite3_column_bytes(st, 4);
	size_t auds_len = (size_t)sqlite3_column_bytes(st, 5), attrs_len = (size_t)sqlite3_column_bytes(st, 6);
	size_t certs_len = (size_t)sqlite3_column_bytes(st, 7), n_roles, n_auds, n_certs, size;
	enum nhi_agent_status stat;
	struct nhi_agent *a;
	const char **ptrs;
	char *p;

	*out = NULL;
	NHI_CHECK(id != NULL && status != NULL && roles != NULL && auds != NULL && attrs != NULL &&
			  id_len <= NHI_AGENT_ID_MAX_BYTES && certs_len % 32 == 0 &&
			  certs_len <= 32 * NHI_AGENT_CERTS_MAX && attrs_len <= NHI_AGENT_ATTRIBUTES_MAX_BYTES &&
			  roles_len < sizeof(((struct nhi_agent_row *)0)->roles) &&
			  auds_len < sizeof(((struct nhi_agent_row *)0)->audiences),
		  NHI_ERR_FORMAT, "identity store: malformed agent record");
	if (strcmp(status, "active") == 0)
		stat = NHI_AGENT_ACTIVE;
	else if (strcmp(status, "suspended") == 0)
		stat = NHI_AGENT_SUSPENDED;
	else if (strcmp(status, "revoked") == 0)
		stat = NHI_AGENT_REVOKED;
	else
		NHI_FAIL(NHI_ERR_FORMAT, "identity store: agent '%.64s' has an unknown status", id);
	n_roles = count_words(roles, roles_len);
	n_auds = count_words(auds, auds_len);
	n_certs = certs_len / 32;
	size = sizeof(*a) + (n_roles + n_auds) * sizeof(char *) + certs_len + id_len + roles_len + auds_len +
	       attrs_len + 4;
	a = malloc(size);
	NHI_CHECK(a != NULL, NHI_ERR_NOMEM, "out of memory");
	ptrs = (const char **)(a + 1);
	p = (char *)(ptrs + n_roles + n_auds);
	a->thumbprints = (const uint8_t(*)[32])p;
	a->n_thumbprints = n_certs;
	if (certs_len > 0)
		memcpy(p, certs, certs_len);
	p += certs_len;
	a->id = p;
	memcpy(p, id, id_len);
	p[id_len] = '\0';
	p += id_len + 1;
	a->roles = ptrs;
	a->n_roles = n_roles;
	p = put_words(p, roles, roles_len, ptrs);
	a->audiences = ptrs + n_roles;
	a->n_audiences = n_auds;
	p = put_words(p, auds, auds_len, ptrs + n_roles);
	a->attributes = p;
	memcpy(p, attrs, attrs_len);
	p[attrs_len] = '\0';
	a->status = stat;
	a->not_before = sqlite3_column_int64(st, 2);
	a->not_after = sqlite3_column_int64(st, 3);
	a->backup_serial = sn->info.serial;
	a->store_generation = sn->generation;
	*out = a;
	rv = NHI_OK;
out:
	return rv;
}

static bool has_thumbprint(const struct nhi_agent *a, const uint8_t tp[32])
{
	size_t i;
	bool found = false;

	for (i = 0; !found && i < a->n_thumbprints; i++)
		found = memcmp(a->thumbprints[i], tp, 32) == 0;
	return found;
}

static nhi_err lookup(struct nhi_store *s, bool by_tp, const void *key, size_t key_len, struct nhi_agent **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct snapshot *sn = snap_get(s);
	struct reader *r = NULL;
	sqlite3_stmt *st = NULL;
	char hex[65];
	int rc;

	*out = NULL;
	NHI_CHECK(sn != NULL, NHI_ERR_NOT_FOUND, "no identity backup is loaded");
	rv = reader_get(sn, &r);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(NHI_ERR_INTERNAL, "identity store");
		goto out;
	}
	st = by_tp ? r->by_tp : r->by_id;
	if (by_tp)
		sqlite3_bind_blob(st, 1, key, (int)key_len, SQLITE_STATIC);
	else
		sqlite3_bind_text(st, 1, key, (int)key_len, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		NHI_TRY(decode_row(st, sn, out));
		/* the index must name an agent that lists the certificate (import counts them only) */
		if (by_tp && !has_thumbprint(*out, key)) {
			nhi_agent_free(*out);
			*out = NULL;
			NHI_FAIL(NHI_ERR_FORMAT,
				 "identity store: the certificate index names an agent that does not list the certificate");
		}
	} else if (rc == SQLITE_DONE) {
		if (by_tp) {
			nhi_hex(key, 32, hex);
			NHI_FAIL(NHI_ERR_NOT_FOUND, "no agent is enrolled with certificate %s", hex);
		}
		NHI_FAIL(NHI_ERR_NOT_FOUND, "no agent '%.*s'", (int)key_len, (const char *)key);
	} else {
		NHI_FAIL(NHI_ERR_INTERNAL, "identity store lookup: %s", sqlite3_errmsg(r->db));
	}
	rv = NHI_OK;
out:
	if (st != NULL)
		sqlite3_reset(st); /* the key stays bound (SQLITE_STATIC) but is rebound before any step */
	if (r != NULL)
		pthread_mutex_unlock(&r->mu);
	snap_put(sn);
	return rv;
}

uint64_t nhi_store_generation(struct nhi_store *s)
{
	return atomic_load(&s->generation);
}

nhi_err nhi_store_find_id(struct nhi_store *s, const char *id, struct nhi_agent **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t n = strnlen(id, NHI_AGENT_ID_MAX_BYTES + 1);

	*out = NULL;
	/* never echo or query what cannot be an id */
	NHI_CHECK(nhi_agent_id_valid(id, n), NHI_ERR_NOT_FOUND, "no agent with that id (not a valid agent id)");
	rv = lookup(s, false, id, n, out);
out:
	return rv;
}

nhi_err nhi_store_find_thumbprint(struct nhi_store *s, const uint8_t sha256[32], struct nhi_agent **out)
{
	return lookup(s, true, sha256, 32, out);
}

static nhi_err resolved(nhi_err rv, struct nhi_agent **a, long long now)
{
	if (rv == NHI_OK) {
		rv = nhi_agent_check(*a, now);
		if (rv != NHI_OK) {
			nhi_agent_free(*a);
			*a = NULL;
		}
	}
	return rv;
}

nhi_err nhi_store_resolve_id(struct nhi_store *s, const char *id, long long now, struct nhi_agent **out)
{
	return resolved(nhi_store_find_id(s, id, out), out, now);
}

nhi_err nhi_store_resolve_thumbprint(struct nhi_store *s, const uint8_t sha256[32], long long now,
				     struct nhi_agent **out)
{
	return resolved(nhi_store_find_thumbprint(s, sha256, out), out, now);
}
