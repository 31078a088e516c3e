/* common/file.c — bounded reads, secret-file checks, exclusive and atomic writes. */
#include "nhi.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static nhi_err read_fd(int fd, const char *path, size_t max_bytes, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t chunk[8192];
	size_t total = 0;
	ssize_t n;

	for (;;) {
		n = read(fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		NHI_CHECK(n >= 0, NHI_ERR_IO, "reading %s: %s", path, strerror(errno));
		if (n == 0)
			break;
		total += (size_t)n;
		NHI_CHECK(total <= max_bytes, NHI_ERR_LIMIT,
			  "%s is larger than the %zu-byte limit for this kind of file", path, max_bytes);
		NHI_TRY(nhi_buf_append(out, chunk, (size_t)n));
	}
	rv = NHI_OK;
out:
	nhi_wipe(chunk, sizeof(chunk));
	return rv;
}

nhi_err nhi_file_read(const char *path, size_t max_bytes, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat st;
	int fd = -1;

	/* O_NONBLOCK: a FIFO without a writer would block the open itself, before fstat can
	 * refuse it; on the regular files read here it changes nothing */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	NHI_CHECK(fd >= 0, errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "cannot open %s: %s",
		  path, strerror(errno));
	NHI_CHECK(fstat(fd, &st) == 0, NHI_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
	NHI_CHECK(S_ISREG(st.st_mode), NHI_ERR_ARG, "%s is not a regular file", path);
	NHI_CHECK((size_t)st.st_size <= max_bytes, NHI_ERR_LIMIT,
		  "%s is %lld bytes, over the %zu-byte limit for this kind of file", path,
		  (long long)st.st_size, max_bytes);
	NHI_TRY(read_fd(fd, path, max_bytes, out));
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

/* true when path names a file directly inside $CREDENTIALS_DIRECTORY */
static bool in_credentials_dir(const char *path)
{
	const char *dir = getenv("CREDENTIALS_DIRECTORY");
	size_t n;

	if (dir == NULL || dir[0] != '/')
		return false;
	n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	return strncmp(path, dir, n) == 0 && path[n] == '/' && strchr(path + n + 1, '/') == NULL &&
	       strstr(path + n, "/..") == NULL;
}

nhi_err nhi_private_file_check(const char *what, const char *path, const struct stat *st)
{
	bool cred = in_credentials_dir(path);

	if (!S_ISREG(st->st_mode))
		return nhi_err_set(NHI_ERR_PERM, "%s %s is not a regular file", what, path);
	if (cred && st->st_uid == 0 && (st->st_mode & 007) == 0 && (st->st_mode & 0022) == 0)
		return NHI_OK; /* systemd credential: root-owned, ACL-readable by the service only */
	if (st->st_uid != geteuid())
		return nhi_err_set(NHI_ERR_PERM, "%s %s is owned by uid %u, not by uid %u that runs this program: chown %u %s",
				   what, path, (unsigned)st->st_uid, (unsigned)geteuid(), (unsigned)geteuid(), path);
	if (st->st_mode & 077)
		return nhi_err_set(NHI_ERR_PERM, "%s %s is mode %04o, readable by group or others: chmod 600 %s", what, path,
				   (unsigned)(st->st_mode & 07777), path);
	return NHI_OK;
}

/* open without following a symlink, then judge the file that was opened (not the path,
 * which may name another file by then) */
static nhi_err private_open(const char *what, const char *path, int *fd_out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat st;
	int fd;

	*fd_out = -1;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	NHI_CHECK(fd >= 0, errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "cannot open %s %s: %s%s", what, path,
		  strerror(errno), errno == ELOOP ? " (a symlink: point the config at the file itself)" : "");
	NHI_CHECK(fstat(fd, &st) == 0, NHI_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
	NHI_TRY(nhi_private_file_check(what, path, &st));
	*fd_out = fd;
	fd = -1;
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

nhi_err nhi_private_file_read(const char *what, const char *path, size_t max_bytes, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	int fd = -1;

	NHI_TRY(private_open(what, path, &fd));
	NHI_TRY(read_fd(fd, path, max_bytes, out));
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	if (rv != NHI_OK)
		nhi_buf_free(out);
	return rv;
}

nhi_err nhi_secret_file_read(const char *path, size_t max_bytes, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	out->secret = true;
	NHI_TRY(nhi_private_file_read("secret file", path, max_bytes, out));
	if (out->len > 0 && out->data[out->len - 1] == '\n')
		out->len--;
	if (out->len > 0 && out->data[out->len - 1] == '\r')
		out->len--;
	/* before the NUL: a 0-byte file leaves data NULL */
	NHI_CHECK(out->len > 0, NHI_ERR_ARG, "secret file %s is empty: write the secret into it", path);
	out->data[out->len] = '\0';
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_buf_free(out);
	return rv;
}

static nhi_err write_all(int fd, const char *path, const void *data, size_t len)
{
	const uint8_t *p = data;
	ssize_t n;

	while (len > 0) {
		n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return nhi_err_set(NHI_ERR_IO, "writing %s: %s", path, strerror(errno));
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) != 0)
		return nhi_err_set(NHI_ERR_IO, "fsync %s: %s", path, strerror(errno));
	return NHI_OK;
}

nhi_err nhi_file_write_excl(const char *path, const void *data, size_t len, unsigned mode)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	int fd;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	NHI_CHECK(fd >= 0, errno == EEXIST ? NHI_ERR_EXISTS : NHI_ERR_IO,
		  errno == EEXIST ? "%s already exists: refusing to overwrite it (move it away first)"
				  : "cannot create %s: %s",
		  path, strerror(errno));
	rv = write_all(fd, path, data, len);
	if (close(fd) != 0 && rv == NHI_OK)
		rv = nhi_err_set(NHI_ERR_IO, "closing %s: %s", path, strerror(errno));
	if (rv == NHI_OK) /* the new name too, or a crash can lose the whole file */
		rv = nhi_fsync_dir_of(path);
	if (rv != NHI_OK)
		unlink(path);
out:
	return rv;
}

nhi_err nhi_fsync_dir_of(const char *path)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char *copy = strdup(path);
	int dfd = -1;

	NHI_CHECK(copy != NULL, NHI_ERR_NOMEM, "out of memory");
	dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	NHI_CHECK(dfd >= 0, NHI_ERR_IO, "cannot open directory of %s: %s", path, strerror(errno));
	NHI_CHECK(fsync(dfd) == 0, NHI_ERR_IO, "fsync directory of %s: %s", path, strerror(errno));
	rv = NHI_OK;
out:
	if (dfd >= 0)
		close(dfd);
	free(copy);
	return rv;
}

/*
 * The temp name is unique to this call: pid and a per-process sequence number, created
 * with O_EXCL. One name per pid let two threads share a temp file (one truncated or
 * renamed away the other's), and O_TRUNC on a leftover of a crashed process that had
 * this pid kept that file's mode and owner. A leftover with this exact name can only
 * be from a dead process (no live one has our pid, and our sequence never repeats), so
 * it is removed and the name taken once more.
 */
nhi_err nhi_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
	static _Atomic unsigned long seq;
	nhi_err rv = NHI_ERR_INTERNAL;
	char tmp[4096];
	int fd = -1, tries;

	NHI_CHECK((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%lu", path, (long)getpid(), seq++) < sizeof(tmp),
		  NHI_ERR_ARG, "path too long: %s", path);
	for (tries = 0; tries < 2; tries++) {
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
		if (fd >= 0 || errno != EEXIST || tries > 0 || unlink(tmp) != 0)
			break;
	}
	if (fd < 0) {
		tmp[0] = '\0'; /* not ours: never unlinked below */
		NHI_FAIL(NHI_ERR_IO, "cannot create a temp file beside %s: %s", path, strerror(errno));
	}
	NHI_TRY(write_all(fd, tmp, data, len));
	NHI_CHECK(close(fd) == 0, NHI_ERR_IO, "closing %s: %s", tmp, strerror(errno));
	fd = -1;
	NHI_CHECK(rename(tmp, path) == 0, NHI_ERR_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
	tmp[0] = '\0';
	NHI_TRY(nhi_fsync_dir_of(path));
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	if (rv != NHI_OK && tmp[0] != '\0')
		unlink(tmp);
	return rv;
}
