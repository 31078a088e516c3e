/*
 * server/manifest.c — model manifests: the per-file SHA-256 of a model directory in
 * a canonical, signed document, and its verification against a directory naming
 * every file that differs, is missing or is extra. docs/updates.md.
 *
 * The walk never follows a symlink (openat with O_NOFOLLOW at every level) and
 * refuses anything that is not a regular file or a directory, so the manifest
 * describes exactly the bytes an inference process would open below DIR.
 */
#include "update_internal.h"
#include "../common/jsonw.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct mf_entry {
	char *path;
	uint64_t size;
	char sha256[65];
};

struct mf_list {
	struct mf_entry *e;
	size_t n, cap;
};

static void mf_list_free(struct mf_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free(l->e[i].path);
	free(l->e);
	memset(l, 0, sizeof(*l));
}

static int mf_cmp(const void *a, const void *b)
{
	return strcmp(((const struct mf_entry *)a)->path, ((const struct mf_entry *)b)->path);
}

static nhi_err hash_fd(int fd, const char *path, uint64_t *size, char hex[65])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t buf[65536], h[32];
	uint64_t total = 0;
	ssize_t n;

	NHI_CHECK_SSL(md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1, NHI_ERR_CRYPTO, "SHA-256");
	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		NHI_CHECK(n >= 0, NHI_ERR_IO, "reading %s: %s", path, strerror(errno));
		if (n == 0)
			break;
		total += (uint64_t)n;
		NHI_CHECK(total <= NHI_MANIFEST_FILE_MAX_BYTES, NHI_ERR_LIMIT, "%s is larger than %llu bytes", path,
			  (unsigned long long)NHI_MANIFEST_FILE_MAX_BYTES);
		NHI_CHECK_SSL(EVP_DigestUpdate(md, buf, (size_t)n) == 1, NHI_ERR_CRYPTO, "SHA-256");
	}
	NHI_CHECK_SSL(EVP_DigestFinal_ex(md, h, NULL) == 1, NHI_ERR_CRYPTO, "SHA-256");
	nhi_hex(h, 32, hex);
	*size = total;
	rv = NHI_OK;
out:
	EVP_MD_CTX_free(md);
	return rv;
}

/* the first control byte (0x00-0x1f, 0x7f) of s, or -1 */
static ssize_t control_at(const char *s)
{
	ssize_t at = -1;
	size_t i;

	for (i = 0; s[i] != '\0' && at < 0; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
			at = (ssize_t)i;
	return at;
}

/*
 * A name a manifest can carry and a line of `nhictl manifest verify` can print: UTF-8
 * (JSON strings are) without control bytes (a newline in a name would forge a
 * 'differs'/'missing'/'extra' line). The name itself is not printed: it is the problem.
 */
static nhi_err name_ok(const char *rel, const char *name)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	ssize_t at = control_at(name);

	NHI_CHECK(at < 0, NHI_ERR_FORMAT,
		  "directory %s holds an entry whose name has a control byte (0x%02x at offset %zd): a model file "
		  "name is UTF-8 without control characters; rename it (`ls -b` shows it)",
		  rel[0] ? rel : ".", (unsigned)(unsigned char)name[at < 0 ? 0 : at], at);
	NHI_CHECK(nhi_jsonw_utf8_valid(name, strlen(name)), NHI_ERR_FORMAT,
		  "directory %s holds an entry whose name is not UTF-8: a model file name is UTF-8 without control "
		  "characters; rename it (`ls -b` shows it)",
		  rel[0] ? rel : ".");
	rv = NHI_OK;
out:
	return rv;
}

/*
 * Hash the regular file `name` in the directory dfd. The file opened must be the one
 * fstatat saw (no FIFO or device swapped in after it: O_NONBLOCK so that a FIFO cannot
 * block the open), and it must not change while it is read: the same size, mtime and
 * ctime before and after, and the bytes read are that size. Otherwise the manifest
 * would describe bytes that never were the file at one moment.
 */
static nhi_err hash_file(int dfd, const char *name, const char *path, const struct stat *seen, uint64_t *size,
			 char hex[65])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat before, after;
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	NHI_CHECK(fd >= 0, NHI_ERR_IO, "cannot open %s: %s", path, strerror(errno));
	NHI_CHECK(fstat(fd, &before) == 0, NHI_ERR_IO, "stat %s: %s", path, strerror(errno));
	NHI_CHECK(S_ISREG(before.st_mode) && before.st_dev == seen->st_dev && before.st_ino == seen->st_ino,
		  NHI_ERR_DENIED, "%s was replaced while the directory was read: hash a directory nothing writes to",
		  path);
	NHI_TRY(hash_fd(fd, path, size, hex));
	NHI_CHECK(fstat(fd, &after) == 0, NHI_ERR_IO, "stat %s: %s", path, strerror(errno));
	NHI_CHECK(*size == (uint64_t)before.st_size && after.st_size == before.st_size &&
			  after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
			  after.st_mtim.tv_nsec == before.st_mtim.tv_nsec &&
			  after.st_ctim.tv_sec == before.st_ctim.tv_sec &&
			  after.st_ctim.tv_nsec == before.st_ctim.tv_nsec,
		  NHI_ERR_IO,
		  "%s changed while it was hashed (%lld bytes at open, %llu read, %lld at the end): hash a directory "
		  "nothing writes to",
		  path, (long long)before.st_size, (unsigned long long)*size, (long long)after.st_size);
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

/* Walk the directory open at dfd (which `rel` names below the root) into l. Takes dfd. */
static nhi_err walk(int dfd, const char *rel, unsigned depth, struct mf_list *l)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	DIR *d = NULL;
	struct dirent *de;
	struct stat st;
	char path[NHI_MANIFEST_PATH_MAX_BYTES + 1];
	int fd = -1;
	struct mf_entry *grown;

	NHI_CHECK(depth <= NHI_MANIFEST_DEPTH_MAX, NHI_ERR_LIMIT, "%s: nested deeper than %d directories", rel,
		  NHI_MANIFEST_DEPTH_MAX);
	d = fdopendir(dfd);
	NHI_CHECK(d != NULL, NHI_ERR_IO, "cannot read directory %s: %s", rel[0] ? rel : ".", strerror(errno));
	dfd = -1;
	while ((errno = 0, de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		NHI_TRY(name_ok(rel, de->d_name));
		NHI_CHECK((size_t)snprintf(path, sizeof(path), "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) <
				  sizeof(path),
			  NHI_ERR_LIMIT, "a path below %s is longer than %d bytes", rel, NHI_MANIFEST_PATH_MAX_BYTES);
		NHI_CHECK(fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0, NHI_ERR_IO, "stat %s: %s",
			  path, strerror(errno));
		if (S_ISDIR(st.st_mode)) {
			fd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			NHI_CHECK(fd >= 0, NHI_ERR_IO, "cannot open directory %s: %s", path, strerror(errno));
			rv = walk(fd, path, depth + 1, l);
			fd = -1;
			NHI_TRY(rv);
			continue;
		}
		NHI_CHECK(!S_ISLNK(st.st_mode), NHI_ERR_DENIED,
			  "%s is a symlink: manifests never follow links; copy the file in instead", path);
		NHI_CHECK(S_ISREG(st.st_mode), NHI_ERR_DENIED, "%s is not a regular file or directory", path);
		NHI_CHECK(l->n < NHI_MANIFEST_FILES_MAX, NHI_ERR_LIMIT, "more than %d files", NHI_MANIFEST_FILES_MAX);
		if (l->n == l->cap) {
			l->cap = l->cap ? l->cap * 2 : 64;
			grown = realloc(l->e, l->cap * sizeof(*l->e));
			NHI_CHECK(grown != NULL, NHI_ERR_NOMEM, "out of memory");
			l->e = grown;
		}
		memset(&l->e[l->n], 0, sizeof(l->e[l->n]));
		NHI_TRY(hash_file(dirfd(d), de->d_name, path, &st, &l->e[l->n].size, l->e[l->n].sha256));
		l->e[l->n].path = strdup(path);
		NHI_CHECK(l->e[l->n].path != NULL, NHI_ERR_NOMEM, "out of memory");
		l->n++;
	}
	NHI_CHECK(errno == 0, NHI_ERR_IO, "reading directory %s: %s", rel[0] ? rel : ".", strerror(errno));
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	if (d != NULL)
		closedir(d);
	return rv;
}

static nhi_err list_dir(const char *dir, struct mf_list *l)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	NHI_CHECK(fd >= 0, NHI_ERR_NOT_FOUND, "cannot open model directory %s: %s", dir, strerror(errno));
	NHI_TRY(walk(fd, "", 0, l));
	qsort(l->e, l->n, sizeof(*l->e), mf_cmp);
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "%s", dir);
	return rv;
}

nhi_err nhi_manifest_build(const char *dir, const char *name, int64_t created_at, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct mf_list l = {0};
	json_t *files = json_array(), *e;
	size_t i;

	NHI_CHECK(files != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_CHECK(name != NULL && name[0] != '\0' && strlen(name) <= NHI_UPDATE_ID_MAX_BYTES, NHI_ERR_ARG,
		  "manifest name must be 1..%d bytes", NHI_UPDATE_ID_MAX_BYTES);
	NHI_TRY(list_dir(dir, &l));
	for (i = 0; i < l.n; i++) {
		e = json_pack("{s:s, s:I, s:s}", "path", l.e[i].path, "size", (json_int_t)l.e[i].size, "sha256",
			      l.e[i].sha256);
		NHI_CHECK(e != NULL && json_array_append_new(files, e) == 0, NHI_ERR_NOMEM,
			  "out of memory (or %s is not UTF-8)", l.e[i].path);
	}
	NHI_TRY(nhi_doc_wrap_json(json_pack("{s:s, s:s, s:I, s:O}", "type", "nhid-model-manifest", "name", name,
					    "created_at", (json_int_t)created_at, "files", files),
				  out));
	rv = NHI_OK;
out:
	json_decref(files);
	mf_list_free(&l);
	return rv;
}

/* A relative path with no empty, "." or ".." component, and no control byte (name_ok). */
static bool valid_rel(const char *s)
{
	const char *c = s, *slash;
	size_t n;

	if (*s == '\0' || *s == '/' || strlen(s) > NHI_MANIFEST_PATH_MAX_BYTES || control_at(s) >= 0)
		return false;
	for (;;) {
		slash = strchr(c, '/');
		n = slash ? (size_t)(slash - c) : strlen(c);
		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		if (slash == NULL)
			return true;
		c = slash + 1;
	}
}

/*
 * A file list (paths borrowed from the JSON) into l. A manifest's list must be in
 * strictly increasing path order; a caller's list (must_be_sorted false) is sorted
 * here. Either way a path given twice is refused.
 */
static nhi_err parse_file_array(json_t *files, const char *what, bool must_be_sorted, struct mf_list *l)
{
	static const char *const fknown[] = {"path", "size", "sha256", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *f, *m;
	long long v;
	size_t i, j;

	NHI_CHECK(json_is_array(files) && json_array_size(files) <= NHI_MANIFEST_FILES_MAX, NHI_ERR_FORMAT,
		  "%s: files must be an array of at most %d entries", what, NHI_MANIFEST_FILES_MAX);
	l->e = calloc(json_array_size(files) + 1, sizeof(*l->e));
	NHI_CHECK(l->e != NULL, NHI_ERR_NOMEM, "out of memory");
	json_array_foreach (files, i, f) {
		NHI_CHECK(json_is_object(f), NHI_ERR_FORMAT, "%s: files[%zu] is not an object", what, i);
		NHI_TRY(nhi_json_only(f, "manifest file", fknown));
		m = json_object_get(f, "path");
		NHI_CHECK(json_is_string(m) && json_string_length(m) == strlen(json_string_value(m)) &&
				  valid_rel(json_string_value(m)),
			  NHI_ERR_FORMAT,
			  "%s: files[%zu].path is not a clean relative path (no empty, '.' or '..' component, no control "
			  "character)",
			  what, i);
		l->e[i].path = (char *)json_string_value(m);
		NHI_CHECK(!must_be_sorted || i == 0 || strcmp(l->e[i - 1].path, l->e[i].path) < 0, NHI_ERR_FORMAT,
			  "%s: files are not in strictly increasing path order at %zu", what, i);
		NHI_TRY(nhi_json_int(f, "manifest file", "size", 0, (long long)NHI_MANIFEST_FILE_MAX_BYTES, &v));
		l->e[i].size = (uint64_t)v;
		m = json_object_get(f, "sha256");
		NHI_CHECK(json_is_string(m) && json_string_length(m) == 64, NHI_ERR_FORMAT,
			  "%s: files[%zu].sha256 is not 64 hex digits", what, i);
		for (j = 0; j < 64; j++)
			NHI_CHECK(strchr("0123456789abcdef", json_string_value(m)[j]) != NULL, NHI_ERR_FORMAT,
				  "%s: files[%zu].sha256 is not lower-case hex", what, i);
		memcpy(l->e[i].sha256, json_string_value(m), 65);
		l->n = i + 1;
	}
	if (!must_be_sorted && l->n > 1) {
		qsort(l->e, l->n, sizeof(l->e[0]), mf_cmp);
		for (i = 1; i < l->n; i++)
			NHI_CHECK(strcmp(l->e[i - 1].path, l->e[i].path) != 0, NHI_ERR_FORMAT,
				  "%s: path '%.200s' is given twice", what, l->e[i].path);
	}
	rv = NHI_OK;
out:
	return rv;
}

/* Parse the manifest payload's file list (sorted, unique, valid) into l (paths borrowed from p). */
static nhi_err parse_files(json_t *p, struct mf_list *l)
{
	static const char *const known[] = {"type", "name", "created_at", "files", NULL};
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *m;
	long long v;

	NHI_TRY(nhi_json_only(p, "manifest", known));
	m = json_object_get(p, "type");
	NHI_CHECK(json_is_string(m) && strcmp(json_string_value(m), "nhid-model-manifest") == 0, NHI_ERR_FORMAT,
		  "manifest: type is not nhid-model-manifest");
	m = json_object_get(p, "name");
	NHI_CHECK(json_is_string(m), NHI_ERR_FORMAT, "manifest: name missing");
	NHI_TRY(nhi_json_int(p, "manifest", "created_at", 0, NHI_UPDATE_TIME_MAX_S, &v));
	NHI_TRY(parse_file_array(json_object_get(p, "files"), "manifest", true, l));
	rv = NHI_OK;
out:
	return rv;
}

/* the signed document's file list: signature by one of `keys` first, then the payload */
static nhi_err signed_files(const uint8_t *doc, size_t len, const struct nhi_keyset *keys, json_t **p,
			    struct mf_list *want)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_envelope env;
	unsigned n = 0;

	memset(&env, 0, sizeof(env));
	NHI_TRY(nhi_envelope_parse(doc, len, NHI_MANIFEST_MAX_BYTES, &env));
	NHI_TRY(nhi_envelope_count(NHI_DOC_MANIFEST, &env, keys, &n));
	NHI_CHECK(n >= 1, NHI_ERR_VERIFY, "manifest signature: no valid signature by a trust-bundle manifest key");
	NHI_TRY(nhi_json_object(env.payload.data, env.payload.len, "manifest payload", p));
	NHI_TRY(parse_files(*p, want));
	rv = NHI_OK;
out:
	nhi_envelope_free(&env);
	return rv;
}

/* walk both sorted lists; cb hears of every difference; returns their number */
static size_t compare(const struct mf_list *want, const struct mf_list *have, nhi_manifest_diff_cb cb, void *cb_arg)
{
	size_t i = 0, j = 0, diffs = 0;
	int c;

	while (i < want->n || j < have->n) {
		c = i == want->n ? 1 : j == have->n ? -1 : strcmp(want->e[i].path, have->e[j].path);
		if (c < 0) {
			diffs++;
			if (cb != NULL)
				cb(cb_arg, NHI_MANIFEST_MISSING, want->e[i].path);
			i++;
		} else if (c > 0) {
			diffs++;
			if (cb != NULL)
				cb(cb_arg, NHI_MANIFEST_EXTRA, have->e[j].path);
			j++;
		} else {
			if (want->e[i].size != have->e[j].size || !nhi_ct_equal(want->e[i].sha256, have->e[j].sha256, 64)) {
				diffs++;
				if (cb != NULL)
					cb(cb_arg, NHI_MANIFEST_DIFFERS, want->e[i].path);
			}
			i++;
			j++;
		}
	}
	return diffs;
}

/* the signed manifest against a directory (dir) or a caller's list (files): one check for both */
static nhi_err verify_against(const uint8_t *doc, size_t len, const struct nhi_keyset *keys, const char *dir,
			      json_t *files, nhi_manifest_diff_cb cb, void *cb_arg, size_t *n_diffs)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct mf_list want = {0}, have = {0};
	json_t *p = NULL;

	*n_diffs = 0;
	NHI_TRY(signed_files(doc, len, keys, &p, &want));
	if (dir != NULL)
		NHI_TRY(list_dir(dir, &have));
	else
		NHI_TRY(parse_file_array(files, "files", false, &have));
	*n_diffs = compare(&want, &have, cb, cb_arg);
	NHI_CHECK(*n_diffs == 0 || dir == NULL, NHI_ERR_VERIFY,
		  "%s does not match its manifest: %zu file(s) differ, are missing or extra", dir, *n_diffs);
	NHI_CHECK(*n_diffs == 0, NHI_ERR_VERIFY,
		  "the files do not match the manifest: %zu file(s) differ, are missing or extra", *n_diffs);
	rv = NHI_OK;
out:
	free(want.e); /* paths borrowed from p */
	if (dir != NULL)
		mf_list_free(&have);
	else
		free(have.e); /* paths borrowed from files */
	json_decref(p);
	return rv;
}

nhi_err nhi_manifest_verify_dir(const uint8_t *doc, size_t len, const struct nhi_keyset *keys, const char *dir,
				nhi_manifest_diff_cb cb, void *cb_arg, size_t *n_diffs)
{
	return verify_against(doc, len, keys, dir, NULL, cb, cb_arg, n_diffs);
}

nhi_err nhi_manifest_verify_list(const uint8_t *doc, size_t len, const struct nhi_keyset *keys, struct json_t *files,
				 nhi_manifest_diff_cb cb, void *cb_arg, size_t *n_diffs)
{
	return verify_against(doc, len, keys, NULL, files, cb, cb_arg, n_diffs);
}
