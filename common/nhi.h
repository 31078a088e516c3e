/*
 * common/nhi.h — what every nhid module shares: the one error enum, the check
 * macros, owned byte buffers, secret memory and small file helpers.
 *
 * Error discipline: every fallible function returns an nhi_err. When it fails it
 * has also written a detail message (thread-local, see nhi_err_detail()) that
 * names the cause and the fix. Callers that add context call nhi_err_set() again.
 */
#ifndef NHI_COMMON_H
#define NHI_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NHI_MUST_CHECK __attribute__((warn_unused_result))
#define NHI_PRINTF(f, a) __attribute__((format(printf, f, a)))

typedef enum nhi_err {
	NHI_OK = 0,
	NHI_ERR_INTERNAL,  /* a bug or an impossible state */
	NHI_ERR_NOMEM,     /* allocation failed */
	NHI_ERR_ARG,       /* caller passed something unusable */
	NHI_ERR_IO,        /* read/write/open/fsync failed */
	NHI_ERR_PERM,      /* file mode/owner breaks the deployment contract */
	NHI_ERR_NOT_FOUND, /* key, token, file, agent absent */
	NHI_ERR_EXISTS,    /* refusing to overwrite */
	NHI_ERR_HSM,       /* PKCS#11 call failed (CKR_* name in the detail) */
	NHI_ERR_PIN,       /* PIN rejected by the token */
	NHI_ERR_CRYPTO,    /* OpenSSL failed */
	NHI_ERR_FORMAT,    /* malformed input */
	NHI_ERR_LIMIT,     /* a bound was exceeded */
	NHI_ERR_VERIFY,    /* signature, MAC, hash or chain did not verify */
	NHI_ERR_CONFIG,    /* configuration unusable */
	NHI_ERR_DENIED,    /* policy says no */
	NHI_ERR_EXPIRED,   /* outside its validity window */
	NHI_ERR_ROLLBACK,  /* older than what is already accepted */
	NHI_ERR__COUNT
} nhi_err;

/* Stable short name of an error ("hsm", "verify"); never NULL. */
const char *nhi_err_name(nhi_err e);

/*
 * Record a detail message for the current thread and return `code` so that a
 * caller can write `return nhi_err_set(NHI_ERR_ARG, "...")`. The message must never
 * contain a secret. It is truncated at NHI_ERR_DETAIL_MAX bytes (NUL included), never inside
 * a UTF-8 character: a detail of UTF-8 arguments stays UTF-8 (it goes into JSON replies).
 */
nhi_err nhi_err_set(nhi_err code, const char *fmt, ...) NHI_PRINTF(2, 3);
/* Same, with ": <top OpenSSL error>" appended; clears the OpenSSL error queue. */
nhi_err nhi_err_set_ssl(nhi_err code, const char *fmt, ...) NHI_PRINTF(2, 3);
/*
 * Prefix the current detail with context: "<ctx>: <old detail>". Returns code. The old
 * detail is the cause (what went wrong), so when the two are over NHI_ERR_DETAIL_MAX the
 * context is shortened, at a character boundary and marked "...", to keep the cause
 * whole; a cause too long for that keeps NHI_ERR_WRAP_CTX_MIN bytes of context and is cut
 * at its end instead (never inside a UTF-8 character).
 */
nhi_err nhi_err_wrap(nhi_err code, const char *fmt, ...) NHI_PRINTF(2, 3);
#define NHI_ERR_WRAP_CTX_MIN 32
/* The current thread's detail message; valid until the next nhi_err_* call on this thread. */
const char *nhi_err_detail(void);
void nhi_err_clear(void);
#define NHI_ERR_DETAIL_MAX 512

/*
 * The one rule for cutting text that may be UTF-8 (agent ids, subjects, paths, config
 * values) without splitting a character: half a character in an error detail or an audit
 * field makes jansson refuse the whole JSON document.
 *
 * nhi_utf8_trim: the length of the first n bytes of s without a character that the end of
 * those n bytes cuts short (n itself when they end on a character boundary). Reads s[0..n).
 *
 * nhi_utf8_cut: for printf's precision, in place of "%.64s": write
 *   nhi_err_set(..., "'%.*s'", nhi_utf8_cut(s, 64), s)
 * It returns strlen(s) when that is at most max, else the longest prefix of at most max
 * bytes that does not end inside a UTF-8 character. s is NUL-terminated.
 */
size_t nhi_utf8_trim(const char *s, size_t n);
int nhi_utf8_cut(const char *s, size_t max);

/*
 * The one family of control-flow macros. Each assumes a local `nhi_err rv` and an
 * `out:` label where cleanup happens (one exit per function).
 */
#define NHI_CHECK(cond, code, ...)                                                         \
	do {                                                                               \
		if (!(cond)) {                                                             \
			rv = nhi_err_set((code), __VA_ARGS__);                             \
			goto out;                                                          \
		}                                                                          \
	} while (0)
#define NHI_CHECK_SSL(cond, code, ...)                                                     \
	do {                                                                               \
		if (!(cond)) {                                                             \
			rv = nhi_err_set_ssl((code), __VA_ARGS__);                         \
			goto out;                                                          \
		}                                                                          \
	} while (0)
#define NHI_TRY(expr)                                                                      \
	do {                                                                               \
		nhi_err nhi_try_rv_ = (expr);                                              \
		if (nhi_try_rv_ != NHI_OK) {                                               \
			rv = nhi_try_rv_;                                                  \
			goto out;                                                          \
		}                                                                          \
	} while (0)
#define NHI_FAIL(code, ...)                                                                \
	do {                                                                               \
		rv = nhi_err_set((code), __VA_ARGS__);                                     \
		goto out;                                                                  \
	} while (0)

/* ---- byte buffers ------------------------------------------------------------ */

/*
 * An owned, growable byte buffer. `secret` buffers live in memory that is excluded
 * from core dumps, locked when possible, and wiped on free. A zeroed struct is an
 * empty, valid buffer. data is always NUL-terminated past len for convenience.
 */
struct nhi_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	bool secret;
};

/* Make room for `extra` more bytes. Capped at NHI_BUF_MAX_BYTES. */
nhi_err nhi_buf_reserve(struct nhi_buf *b, size_t extra) NHI_MUST_CHECK;
nhi_err nhi_buf_append(struct nhi_buf *b, const void *p, size_t n) NHI_MUST_CHECK;
nhi_err nhi_buf_append_str(struct nhi_buf *b, const char *s) NHI_MUST_CHECK;
nhi_err nhi_buf_printf(struct nhi_buf *b, const char *fmt, ...) NHI_PRINTF(2, 3) NHI_MUST_CHECK;
/* Wipe (if secret) and release; leaves an empty buffer with the same secret flag. */
void nhi_buf_free(struct nhi_buf *b);
/* Wipe content and set len to 0 without releasing. */
void nhi_buf_reset(struct nhi_buf *b);

/* ---- secret memory ----------------------------------------------------------- */

/*
 * Page-backed allocation for secrets: MADV_DONTDUMP, mlock (best effort), wiped
 * and unmapped by nhi_secret_free. Returns NULL on failure. nhi_secret_free(NULL)
 * is a no-op.
 */
void *nhi_secret_alloc(size_t n);
void nhi_secret_free(void *p);
/* Constant-time compare; returns true when equal. */
bool nhi_ct_equal(const void *a, const void *b, size_t n);
void nhi_wipe(void *p, size_t n);
/* getpid() from memory from now on, fork-safe (common/pid.c); nhid calls it in main. */
nhi_err nhi_pid_cache_enable(void) NHI_MUST_CHECK;

/* ---- files ------------------------------------------------------------------- */

/*
 * Read a whole regular file into `out` (appended). Fails with NHI_ERR_LIMIT when it
 * is larger than `max_bytes`, NHI_ERR_ARG at once for anything else (a FIFO, a directory).
 */
nhi_err nhi_file_read(const char *path, size_t max_bytes, struct nhi_buf *out) NHI_MUST_CHECK;

/*
 * Read a secret file (PIN, key). It must be a regular file owned by the effective
 * uid, with no group/other permission bits; otherwise NHI_ERR_PERM and a message
 * with the chmod/chown fix. `out` becomes a secret buffer; one trailing newline is
 * removed.
 */
nhi_err nhi_secret_file_read(const char *path, size_t max_bytes, struct nhi_buf *out) NHI_MUST_CHECK;

/*
 * Read a file that must be private (a trusted config, a secret): opened once with
 * O_NOFOLLOW, and nhi_private_file_check runs on that descriptor's fstat before a byte
 * is read, so the bytes read are the bytes of the file that was checked. `what` names
 * the file in errors ("config file"). On error `out` is freed.
 */
nhi_err nhi_private_file_read(const char *what, const char *path, size_t max_bytes, struct nhi_buf *out) NHI_MUST_CHECK;

/*
 * The deployment contract for a file holding a secret or a trusted config, given
 * its stat: a regular file owned by the effective uid with no group/other bits.
 * One exception, for systemd's LoadCredential=: a file inside $CREDENTIALS_DIRECTORY
 * (a private mount only the service's user and root can read) may be owned by root
 * and readable through an ACL (group class bits), but never by others. `what`
 * names the file in the error ("PIN file"), which gives the chmod/chown fix.
 */
struct stat;
nhi_err nhi_private_file_check(const char *what, const char *path, const struct stat *st) NHI_MUST_CHECK;

/*
 * Create `path` exclusively (O_EXCL: an existing file is NHI_ERR_EXISTS), write,
 * fsync, close, fsync its directory: on NHI_OK the file, bytes and name, survives a
 * crash. On any failure the partial file is removed.
 */
nhi_err nhi_file_write_excl(const char *path, const void *data, size_t len, unsigned mode) NHI_MUST_CHECK;

/* fsync the directory that holds `path` (after a create or rename in it). */
nhi_err nhi_fsync_dir_of(const char *path) NHI_MUST_CHECK;

/*
 * Write to a temp file beside `path` (`path`.tmp.<pid>.<n>, created O_EXCL with `mode`, so
 * never a leftover's mode or another thread's file), fsync, rename over `path`, fsync the
 * dir. A failure before the rename removes the temp file and leaves `path` as it was; after
 * it (the directory fsync) `path` holds the new bytes but may not survive a crash.
 */
nhi_err nhi_file_write_atomic(const char *path, const void *data, size_t len, unsigned mode) NHI_MUST_CHECK;

/* ---- encodings and hashes (OpenSSL underneath) -------------------------------- */

/* RFC 4648 §5 base64url without padding, appended to out (NUL-terminated). */
nhi_err nhi_b64url_encode(const uint8_t *in, size_t len, struct nhi_buf *out) NHI_MUST_CHECK;
/*
 * Strict base64url decode: only [A-Za-z0-9_-], no padding, no whitespace, and the
 * unused trailing bits must be zero (so each value has exactly one encoding).
 */
nhi_err nhi_b64url_decode(const char *in, size_t len, struct nhi_buf *out) NHI_MUST_CHECK;
/* Lower-case hex of `len` bytes into out (needs 2*len+1). */
void nhi_hex(const uint8_t *in, size_t len, char *out);
/* SHA-256 of a buffer. */
nhi_err nhi_sha256(const void *data, size_t len, uint8_t out[32]) NHI_MUST_CHECK;

/* UTC RFC 3339 timestamp with seconds ("2026-11-23T10:00:00Z"); buf >= 21 bytes. */
void nhi_time_rfc3339(long long unix_s, char *buf, size_t n);

#endif
