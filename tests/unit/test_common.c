/* tests/unit/test_common.c — common/: encodings, buffers, files, key forms, configs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../common/conf.h"
#include "../../common/jsonw.h"
#include "../../common/limits.h"
#include "../../common/nhi.h"
#include "../../common/pkey.h"

#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[256];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "%s/nhi-unit-common-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[320];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* RFC 4648 §10 vectors, in the base64url alphabet without padding */
static void test_b64url_rfc4648(void **state)
{
	static const struct {
		const char *in, *out;
	} v[] = {{"", ""},	   {"f", "Zg"},	      {"fo", "Zm8"},	   {"foo", "Zm9v"},
		 {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};
	struct nhi_buf e = {0}, d = {0};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		nhi_buf_reset(&e);
		nhi_buf_reset(&d);
		assert_int_equal(nhi_b64url_encode((const uint8_t *)v[i].in, strlen(v[i].in), &e), NHI_OK);
		assert_string_equal((char *)(e.data ? e.data : (uint8_t *)""), v[i].out);
		assert_int_equal(nhi_b64url_decode(v[i].out, strlen(v[i].out), &d), NHI_OK);
		assert_int_equal(d.len, strlen(v[i].in));
		assert_memory_equal(d.data ? d.data : (uint8_t *)"", v[i].in, d.len);
	}
	/* the url alphabet: 0xfb 0xff -> "-_8" */
	nhi_buf_reset(&e);
	assert_int_equal(nhi_b64url_encode((const uint8_t *)"\xfb\xff", 2, &e), NHI_OK);
	assert_string_equal((char *)e.data, "-_8");
	nhi_buf_free(&e);
	nhi_buf_free(&d);
}

static void test_b64url_strict(void **state)
{
	static const char *const bad[] = {
		"Zg==",  /* padding */
		"Zm9v+", /* standard alphabet */
		"Zm9v/w", "Zm 9v", "Zm9v\n", "Z",  /* impossible length */
		"Zh", "Zm9", /* non-canonical: unused bits set */
		"Zm8=", "\xc3\xa9",
	};
	struct nhi_buf d = {0};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (nhi_b64url_decode(bad[i], strlen(bad[i]), &d) != NHI_ERR_FORMAT)
			fail_msg("'%s' was accepted", bad[i]);
	nhi_buf_free(&d);
}

static void test_buffers_and_secret_memory(void **state)
{
	struct nhi_buf b = {0}, s = {.secret = true};
	uint8_t *p;
	int i;

	(void)state;
	for (i = 0; i < 1000; i++)
		assert_int_equal(nhi_buf_printf(&b, "%04d,", i), NHI_OK);
	assert_int_equal(b.len, 5000);
	assert_int_equal(b.data[b.len], '\0');
	assert_int_equal(nhi_buf_append(&s, "pin-1234", 8), NHI_OK);
	assert_int_equal(nhi_buf_append(&s, "-more", 5), NHI_OK); /* grows in secret memory */
	assert_memory_equal(s.data, "pin-1234-more", 13);
	nhi_buf_reset(&s);
	assert_int_equal(s.len, 0);
	assert_int_equal(s.data[0], '\0');
	p = nhi_secret_alloc(100);
	assert_non_null(p);
	memset(p, 0xa5, 100);
	nhi_secret_free(p);
	nhi_secret_free(NULL);
	assert_null(nhi_secret_alloc(NHI_BUF_MAX_BYTES + 1));
	assert_int_equal(nhi_buf_reserve(&b, NHI_BUF_MAX_BYTES), NHI_ERR_LIMIT);
	assert_true(nhi_ct_equal("abc", "abc", 3));
	assert_false(nhi_ct_equal("abc", "abd", 3));
	nhi_buf_free(&b);
	nhi_buf_free(&s);
	nhi_buf_free(NULL);
}

static void write_file(const char *path, const char *data, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void test_secret_files(void **state)
{
	char path[400], link[400];
	struct nhi_buf b = {0};

	(void)state;
	snprintf(path, sizeof(path), "%s/pin", dir);
	write_file(path, "s3cret\r\n", 0600);
	assert_int_equal(nhi_secret_file_read(path, 64, &b), NHI_OK);
	assert_true(b.secret);
	assert_int_equal(b.len, 6);
	assert_memory_equal(b.data, "s3cret", 6);
	nhi_buf_free(&b);
	chmod(path, 0640);
	assert_int_equal(nhi_secret_file_read(path, 64, &b), NHI_ERR_PERM);
	assert_non_null(strstr(nhi_err_detail(), "chmod 600"));
	assert_null(strstr(nhi_err_detail(), "s3cret"));
	chmod(path, 0600);
	assert_int_equal(nhi_secret_file_read(path, 3, &b), NHI_ERR_LIMIT);
	snprintf(link, sizeof(link), "%s/pin-link", dir);
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(nhi_secret_file_read(link, 64, &b), NHI_ERR_IO); /* O_NOFOLLOW */
	write_file(path, "\n", 0600);
	assert_int_equal(nhi_secret_file_read(path, 64, &b), NHI_ERR_ARG); /* empty */
	write_file(path, "", 0600); /* 0 bytes: no buffer at all, which once crashed */
	assert_int_equal(nhi_secret_file_read(path, 64, &b), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "is empty"));
	assert_null(b.data);
	/* a private read checks the file it reads: mode, owner, symlink, before any byte */
	write_file(path, "[nhid]\n", 0644);
	b.secret = false;
	assert_int_equal(nhi_private_file_read("config file", path, 64, &b), NHI_ERR_PERM);
	assert_non_null(strstr(nhi_err_detail(), "config file"));
	assert_null(b.data);
	chmod(path, 0600);
	assert_int_equal(nhi_private_file_read("config file", link, 64, &b), NHI_ERR_IO);
	assert_non_null(strstr(nhi_err_detail(), "a symlink"));
	assert_int_equal(nhi_private_file_read("config file", path, 64, &b), NHI_OK);
	assert_int_equal(b.len, 7);
	assert_false(b.secret);
	nhi_buf_free(&b);
	snprintf(path, sizeof(path), "%s/absent", dir);
	assert_int_equal(nhi_secret_file_read(path, 64, &b), NHI_ERR_NOT_FOUND);
}

/* systemd LoadCredential=: root-owned, ACL-readable, inside $CREDENTIALS_DIRECTORY */
static void test_credentials_directory_rule(void **state)
{
	char creds[300], path[400], outside[400];
	struct stat st;

	(void)state;
	snprintf(creds, sizeof(creds), "%s/creds", dir);
	assert_int_equal(mkdir(creds, 0700), 0);
	snprintf(path, sizeof(path), "%s/pin", creds);
	snprintf(outside, sizeof(outside), "%s/pin-outside", dir);
	write_file(path, "1234", 0440);
	write_file(outside, "1234", 0440);
	setenv("CREDENTIALS_DIRECTORY", creds, 1);
	assert_int_equal(stat(path, &st), 0);
	st.st_uid = 0; /* as systemd leaves it */
	if (geteuid() == 0)
		assert_int_equal(nhi_private_file_check("PIN file", path, &st), NHI_OK);
	st.st_mode = S_IFREG | 0444; /* readable by others: never */
	assert_int_equal(nhi_private_file_check("PIN file", path, &st), NHI_ERR_PERM);
	st.st_mode = S_IFREG | 0460; /* group-writable: never */
	assert_int_equal(nhi_private_file_check("PIN file", path, &st), NHI_ERR_PERM);
	/* the same file outside the credentials directory keeps the strict rule */
	assert_int_equal(stat(outside, &st), 0);
	assert_int_equal(nhi_private_file_check("PIN file", outside, &st), NHI_ERR_PERM);
	/* no escaping the directory with .. */
	snprintf(outside, sizeof(outside), "%s/../pin-outside", creds);
	assert_int_equal(nhi_private_file_check("PIN file", outside, &st), NHI_ERR_PERM);
	unsetenv("CREDENTIALS_DIRECTORY");
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(nhi_private_file_check("PIN file", path, &st), NHI_ERR_PERM); /* 0440 */
}

static void test_write_excl_and_atomic(void **state)
{
	char path[400];
	struct nhi_buf b = {0};
	struct stat st;

	(void)state;
	snprintf(path, sizeof(path), "%s/out", dir);
	assert_int_equal(nhi_file_write_excl(path, "one", 3, 0600), NHI_OK);
	assert_int_equal(nhi_file_write_excl(path, "two", 3, 0600), NHI_ERR_EXISTS);
	assert_non_null(strstr(nhi_err_detail(), "refusing to overwrite"));
	assert_int_equal(nhi_file_read(path, 16, &b), NHI_OK);
	assert_memory_equal(b.data, "one", 3);
	assert_int_equal(nhi_file_write_atomic(path, "three", 5, 0640), NHI_OK);
	nhi_buf_reset(&b);
	assert_int_equal(nhi_file_read(path, 16, &b), NHI_OK);
	assert_int_equal(b.len, 5);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	assert_int_equal(nhi_file_read(path, 4, &b), NHI_ERR_LIMIT);
	assert_int_equal(nhi_file_read(dir, 4, &b), NHI_ERR_ARG); /* a directory */
	nhi_buf_free(&b);
}

/* a FIFO given as a file (--config, a PEM key) is refused at once: open(2) of a FIFO
 * without a writer blocked forever before fstat could say it is not a regular file */
static void test_file_read_fifo(void **state)
{
	char path[400];
	pid_t child;
	int status = -1;

	(void)state;
	snprintf(path, sizeof(path), "%s/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		struct nhi_buf b = {0};
		nhi_err e;

		alarm(5); /* a hang ends the child with SIGALRM */
		e = nhi_file_read(path, 64, &b);
		_exit(e == NHI_ERR_ARG && strstr(nhi_err_detail(), "not a regular file") != NULL ? 0 : 1);
	}
	assert_int_equal(waitpid(child, &status, 0), child);
	if (!WIFEXITED(status))
		fail_msg("nhi_file_read on a FIFO hung (signal %d)", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	assert_int_equal(WEXITSTATUS(status), 0);
	unlink(path);
}

/* a temp file left by a crashed process that had this pid is not reused: its mode (and
 * owner) would become the file's, and a secret written 0600 would end up 0644 */
static void test_write_atomic_stale_temp(void **state)
{
	char path[400], stale[440];
	struct nhi_buf b = {0};
	struct stat st;
	int i, left = 0;

	(void)state;
	snprintf(path, sizeof(path), "%s/state.json", dir);
	/* leftovers under every name this pid may pick now: the old one, and pid.seq */
	snprintf(stale, sizeof(stale), "%s.tmp.%ld", path, (long)getpid());
	write_file(stale, "stale and longer than the new content", 0644);
	for (i = 0; i < 16; i++) {
		snprintf(stale, sizeof(stale), "%s.tmp.%ld.%d", path, (long)getpid(), i);
		write_file(stale, "stale and longer than the new content", 0644);
	}
	assert_int_equal(nhi_file_write_atomic(path, "new", 3, 0600), NHI_OK);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(nhi_file_read(path, 64, &b), NHI_OK);
	assert_int_equal(b.len, 3);
	assert_memory_equal(b.data, "new", 3);
	nhi_buf_free(&b);
	for (i = 0; i < 16; i++) {
		snprintf(stale, sizeof(stale), "%s.tmp.%ld.%d", path, (long)getpid(), i);
		left += unlink(stale) == 0;
	}
	assert_int_equal(left, 15); /* the one whose name was taken was removed, not reused */
	snprintf(stale, sizeof(stale), "%s.tmp.%ld", path, (long)getpid());
	unlink(stale);
}

struct atomic_writer {
	const char *path;
	char fill;
	int failures;
	char detail[NHI_ERR_DETAIL_MAX]; /* the writer thread's last error */
};

static void *atomic_writer_run(void *arg)
{
	struct atomic_writer *w = arg;
	char data[4096];
	int i;

	memset(data, w->fill, sizeof(data));
	for (i = 0; i < 100; i++)
		if (nhi_file_write_atomic(w->path, data, sizeof(data), 0600) != NHI_OK) {
			w->failures++;
			snprintf(w->detail, sizeof(w->detail), "%s", nhi_err_detail());
		}
	return NULL;
}

/* threads of one process writing the same file: each write is whole, none fails (they
 * shared one temp name, so one thread truncated another's temp file or renamed it away) */
static void test_write_atomic_threads(void **state)
{
	struct atomic_writer w[4];
	pthread_t t[4];
	char path[400];
	struct nhi_buf b = {0};
	size_t i, j;

	(void)state;
	snprintf(path, sizeof(path), "%s/shared", dir);
	for (i = 0; i < 4; i++) {
		w[i] = (struct atomic_writer){.path = path, .fill = (char)('a' + i)};
		assert_int_equal(pthread_create(&t[i], NULL, atomic_writer_run, &w[i]), 0);
	}
	for (i = 0; i < 4; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	for (i = 0; i < 4; i++)
		if (w[i].failures != 0)
			fail_msg("writer %zu: %d of 100 writes failed: %s", i, w[i].failures, w[i].detail);
	assert_int_equal(nhi_file_read(path, 8192, &b), NHI_OK);
	assert_int_equal(b.len, 4096);
	for (j = 1; j < b.len; j++)
		assert_int_equal(b.data[j], b.data[0]);
	nhi_buf_free(&b);
}

static void test_ecdsa_forms_and_jwk(void **state)
{
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *back = NULL;
	uint8_t raw[65], sig_raw[64], again[64];
	size_t raw_len = 0;
	struct nhi_buf der = {0}, jwk = {0};
	char tp[44], fp[65];
	int i;

	(void)state;
	assert_non_null(pk);
	assert_int_equal(nhi_pkey_raw(pk, raw, &raw_len), NHI_OK);
	assert_int_equal(raw_len, 65);
	assert_int_equal(nhi_pkey_from_raw(NHI_PKEY_P256, raw, raw_len, &back), NHI_OK);
	assert_int_equal(EVP_PKEY_eq(pk, back), 1);
	raw[40] ^= 1; /* off the curve */
	EVP_PKEY_free(back);
	back = NULL;
	assert_int_equal(nhi_pkey_from_raw(NHI_PKEY_P256, raw, raw_len, &back), NHI_ERR_FORMAT);
	assert_int_equal(nhi_pkey_from_raw(NHI_PKEY_P256, raw, 64, &back), NHI_ERR_FORMAT);
	for (i = 0; i < 64; i++)
		sig_raw[i] = (uint8_t)(i == 0 || i == 32 ? 0 : i); /* leading zeros exercise DER minimality */
	assert_int_equal(nhi_ecdsa_raw_to_der(sig_raw, &der), NHI_OK);
	assert_int_equal(nhi_ecdsa_der_to_raw(der.data, der.len, again), NHI_OK);
	assert_memory_equal(sig_raw, again, 64);
	assert_int_equal(nhi_ecdsa_der_to_raw(der.data, der.len - 1, again), NHI_ERR_FORMAT);
	assert_int_equal(nhi_pkey_jwk(pk, &jwk), NHI_OK);
	/* RFC 7638 §3.2: required members only, lexicographic order, no whitespace */
	assert_int_equal(strncmp((char *)jwk.data, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"", 31), 0);
	assert_null(strchr((char *)jwk.data, ' '));
	assert_int_equal(nhi_pkey_thumbprint(pk, tp), NHI_OK);
	assert_int_equal(strlen(tp), 43);
	assert_int_equal(nhi_pkey_fingerprint(pk, fp), NHI_OK);
	assert_int_equal(strlen(fp), 64);
	nhi_buf_free(&der);
	nhi_buf_free(&jwk);
	EVP_PKEY_free(pk);
}

struct seen {
	int n;
	char last[64];
};

static nhi_err collect(void *ctx, const char *key, const char *val)
{
	struct seen *s = ctx;

	s->n++;
	snprintf(s->last, sizeof(s->last), "%s=%s", key, val);
	return NHI_OK;
}

/* the curve is checked by name: secp256k1 is 256 bits too and must not pass as P-256 */
static void test_p256_only(void **state)
{
	EVP_PKEY *p256 = EVP_EC_gen("P-256"), *k1 = EVP_EC_gen("secp256k1"), *p384 = EVP_EC_gen("P-384"), *pk = NULL;
	uint8_t raw[65], sig[64] = {0};
	size_t n = 0;
	char path[] = "/tmp/nhi-pem-XXXXXX";
	int fd;
	FILE *f;

	(void)state;
	assert_non_null(p256);
	assert_non_null(k1);
	assert_non_null(p384);
	assert_true(nhi_pkey_is_p256(p256));
	assert_false(nhi_pkey_is_p256(k1));
	assert_false(nhi_pkey_is_p256(p384));
	assert_false(nhi_pkey_is_p256(NULL));
	assert_int_equal(nhi_pkey_raw(p256, raw, &n), NHI_OK);
	assert_int_equal(n, 65);
	assert_int_equal(nhi_pkey_raw(k1, raw, &n), NHI_ERR_ARG);
	/* a signature of zeros never verifies, and the OpenSSL queue is left clean */
	assert_int_equal(nhi_pkey_es256_verify(p256, (const uint8_t *)"m", 1, sig), NHI_ERR_VERIFY);
	/* the shared PEM reader: P-256 accepted, secp256k1 refused naming the file */
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PUBKEY(f, k1), 1);
	fclose(f);
	assert_int_equal(nhi_pkey_load_pem_p256(path, &pk), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "not an EC P-256 key"));
	assert_non_null(strstr(nhi_err_detail(), path));
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PUBKEY(f, p256), 1);
	fclose(f);
	assert_int_equal(nhi_pkey_load_pem_p256(path, &pk), NHI_OK);
	assert_int_equal(EVP_PKEY_eq(pk, p256), 1);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("not a key\n", f);
	fclose(f);
	EVP_PKEY_free(pk);
	assert_int_equal(nhi_pkey_load_pem_p256(path, &pk), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "is not a PEM public key"));
	unlink(path);
	EVP_PKEY_free(p256);
	EVP_PKEY_free(k1);
	EVP_PKEY_free(p384);
}

static void test_conf_reader(void **state)
{
	static const char *const keys[] = {"a", "b"};
	struct seen s = {0};
	char items[4][16];
	size_t n = 0;
	unsigned long long v = 0;
	const char good[] = "# comment\n[sec]\na = 1\nb = two words\n";

	(void)state;
	assert_int_equal(nhi_conf_parse(good, strlen(good), "sec", keys, 2, collect, &s), NHI_OK);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.last, "b=two words");
	assert_int_equal(nhi_conf_parse("[sec]\nc = 1\n", 12, "sec", keys, 2, collect, &s), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "unknown config key 'c'"));
	assert_int_equal(nhi_conf_parse("a = 1\n[sec]\n", 12, "sec", keys, 2, collect, &s), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_parse("[sec]\n .include x\n", 18, "sec", keys, 2, collect, &s), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_parse("[sec]\na=1\0", 10, "sec", keys, 2, collect, &s), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_parse("[other]\na=1\n", 12, "sec", keys, 2, collect, &s), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_uint(&v, "k", "42", 1, 100), NHI_OK);
	assert_int_equal(v, 42);
	assert_int_equal(nhi_conf_uint(&v, "k", "-1", 1, 100), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_uint(&v, "k", "101", 1, 100), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_uint(&v, "k", "4x", 1, 100), NHI_ERR_CONFIG);
	assert_int_equal(nhi_conf_list("k", " x, y ,,z ", &items[0][0], 16, 4, &n, NULL, "an item"), NHI_OK);
	assert_int_equal(n, 3);
	assert_string_equal(items[1], "y");
	assert_int_equal(nhi_conf_list("k", "a,b,c,d,e", &items[0][0], 16, 4, &n, NULL, "an item"), NHI_ERR_CONFIG);
}

/* every way NCONF would read something other than the reviewed lines, and duplicates */
static void test_conf_reader_strict(void **state)
{
	static const char *const keys[] = {"a", "b"};
	static const struct {
		const char *text, *why;
	} bad[] = {
		{"[sec]\n\r.include /x\n", "line 2: carriage return not followed"}, /* NCONF skips that \r */
		{"[sec]\n \t .pragma dollarid:on\n", "directives such as .include"},
		{"[sec]\na = 1\r.include /x\n", "carriage return not followed by a newline"},
		{"[sec]\na = 1\rb = 2\n", "carriage return not followed by a newline"},
		{"[sec]\na = 1\nb = 2\r", "carriage return not followed by a newline"},
		{"[sec]\na = 1\na = 2\n", "config key 'a' is given twice (lines 2 and 3)"},
		{"[sec]\na = 1\n[sec]\n a\t= 2\n", "config key 'a' is given twice (lines 2 and 4)"},
		{"[sec]\na = 1\n[ sec ]\na= 2\n", "config key 'a' is given twice (lines 2 and 4)"},
		{"[sec]\na = $ENV::HOME\n", "line 2: '$' is not allowed"},
		{"[sec]\nb = x\na = ${b}\n", "line 3: '$' is not allowed"},
		{"[sec]\na = \\$ENV::HOME\n", "line 2: '$' is not allowed"},
		{"[sec]\na = 1 \\\nb = 2\n", "line 2 ends in '\\'"},
		{"[sec]\na = 1 \\\\\r\n", "line 2 ends in '\\'"}, /* at a 510-byte chunk edge NCONF may join it */
		{"[sec]\nsec::a = 1\n", "':' and '\\' are not allowed in a key name"},
		{"a = 1\ndefault::a = 1\n[sec]\n", "':' and '\\' are not allowed in a key name"},
		{"[sec]\na\\ = 1\n", "':' and '\\' are not allowed in a key name"},
		{"[s\\ec]\na = 1\n", "a section header must be [name]"},
		{"[se c]\na = 1\n", "a section header must be [name]"},
		{"[sec\na = 1\n", "a section header must be [name]"},
		/* NCONF skips a UTF-8 byte order mark; the scan must read the same first line */
		{"\xef\xbb\xbf[sec]\na = 1\na = 2\n", "config key 'a' is given twice (lines 2 and 3)"},
		{"\xef\xbb\xbf.include /x\n[sec]\n", "line 1: directives such as .include"},
		{"\xef\xbb\xbf[s\\ec]\na = 1\n", "line 1: a section header must be [name]"},
	};
	static const char *const good[] = {
		"[sec]\r\na = 1\r\nb = 2\r\n",      /* CRLF files */
		"[sec]\na = 1 # a = 2\n# a = 3\nb = a.b\n",
		"[sec]\na = x\\\\y\n", /* an escaped backslash inside a value */
		"[other]\nb = 1\n[sec]\nb = 2\n", /* same name in another section: refused later, not as a twin */
		"\xef\xbb\xbf[sec]\na = 1\n", /* a UTF-8 byte order mark, as some editors save */
	};
	struct seen s = {0};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (nhi_conf_parse(bad[i].text, strlen(bad[i].text), "sec", keys, 2, collect, &s) != NHI_ERR_CONFIG ||
		    strstr(nhi_err_detail(), bad[i].why) == NULL)
			fail_msg("case %zu: got '%s', want '%s'", i, nhi_err_detail(), bad[i].why);
	}
	for (i = 0; i < 3; i++) {
		memset(&s, 0, sizeof(s));
		if (nhi_conf_parse(good[i], strlen(good[i]), "sec", keys, 2, collect, &s) != NHI_OK)
			fail_msg("good case %zu: %s", i, nhi_err_detail());
	}
	assert_string_equal(s.last, "a=x\\y");
	assert_int_equal(nhi_conf_parse(good[3], strlen(good[3]), "sec", keys, 2, collect, &s), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "unknown config section [other]"));
	memset(&s, 0, sizeof(s));
	assert_int_equal(nhi_conf_parse(good[4], strlen(good[4]), "sec", keys, 2, collect, &s), NHI_OK);
	assert_string_equal(s.last, "a=1");
}

static void test_errors(void **state)
{
	(void)state;
	assert_int_equal(nhi_err_set(NHI_ERR_IO, "disk %s", "full"), NHI_ERR_IO);
	assert_string_equal(nhi_err_detail(), "disk full");
	assert_int_equal(nhi_err_wrap(NHI_ERR_IO, "writing %s", "x"), NHI_ERR_IO);
	assert_string_equal(nhi_err_detail(), "writing x: disk full");
	assert_string_equal(nhi_err_name(NHI_ERR_ROLLBACK), "rollback");
	assert_string_equal(nhi_err_name((nhi_err)999), "unknown");
	nhi_err_clear();
	assert_string_equal(nhi_err_detail(), "");
}

/* a detail cut at NHI_ERR_DETAIL_MAX stays UTF-8: it goes into JSON error bodies and audit
 * records, and half a character made jansson refuse the whole body */
static void test_error_truncation_utf8(void **state)
{
	char big[2 * NHI_ERR_DETAIL_MAX];
	size_t i, n;

	(void)state;
	for (i = 0; i + 2 < sizeof(big); i += 2)
		memcpy(big + i, "\xc3\xa9", 2); /* U+00E9, two bytes each */
	big[i] = '\0';
	for (n = 0; n < 4; n++) { /* every position of the cut inside a character */
		nhi_err_set(NHI_ERR_ARG, "%.*s%s", (int)n, "xxx", big);
		assert_true(strlen(nhi_err_detail()) < NHI_ERR_DETAIL_MAX);
		assert_true(strlen(nhi_err_detail()) >= NHI_ERR_DETAIL_MAX - 4);
		assert_true(nhi_jsonw_utf8_valid(nhi_err_detail(), strlen(nhi_err_detail())));
		nhi_err_set(NHI_ERR_ARG, "%s", "\xe2\x82\xac cause");
		nhi_err_wrap(NHI_ERR_ARG, "%.*s%s", (int)n, "xxx", big);
		assert_true(nhi_jsonw_utf8_valid(nhi_err_detail(), strlen(nhi_err_detail())));
		nhi_err_set_ssl(NHI_ERR_CRYPTO, "%.*s%s", (int)n, "xxx", big);
		assert_true(nhi_jsonw_utf8_valid(nhi_err_detail(), strlen(nhi_err_detail())));
	}
	for (i = 0; i + 3 < sizeof(big); i += 3)
		memcpy(big + i, "\xe2\x82\xac", 3); /* U+20AC, three bytes */
	big[i] = '\0';
	for (n = 0; n < 4; n++) {
		nhi_err_set(NHI_ERR_ARG, "%.*s%s", (int)n, "xxx", big);
		assert_true(nhi_jsonw_utf8_valid(nhi_err_detail(), strlen(nhi_err_detail())));
	}
	/* a short detail is not touched */
	nhi_err_set(NHI_ERR_ARG, "caf\xc3\xa9");
	assert_string_equal(nhi_err_detail(), "caf\xc3\xa9");
}

/* a value past 2^64 - 1 is refused, not read as 2^64 - 1; every refusal names the key, what
 * is wrong with the value and the range */
static void test_conf_uint_range(void **state)
{
	static const struct {
		const char *val;
		unsigned long long min, max;
		const char *why; /* NULL: accepted */
	} v[] = {
		{"18446744073709551615", 0, ULLONG_MAX, NULL},
		{"18446744073709551616", 0, ULLONG_MAX, "from 0 to 18446744073709551615, got '18446744073709551616' (too large)"},
		{"99999999999999999999", 0, ULLONG_MAX, "from 0 to 18446744073709551615, got '99999999999999999999' (too large)"},
		{"99999999999999999999", 1, 100, "from 1 to 100, got '99999999999999999999' (too large)"},
		{"4294967295", 1, UINT_MAX, NULL},
		{"4294967296", 1, UINT_MAX, "from 1 to 4294967295, got '4294967296' (too large)"},
		{"2147483648", 1, INT_MAX, "from 1 to 2147483647, got '2147483648' (too large)"},
		{"101", 1, 100, "from 1 to 100, got '101' (too large)"},
		{"0", 1, 100, "from 1 to 100, got '0' (too small)"},
		{"-1", 1, 100, "got '-1' (not a whole number)"},
		{"+1", 1, 100, "got '+1' (not a whole number)"},
		{" 1", 1, 100, "got ' 1' (not a whole number)"},
		{"4x", 1, 100, "got '4x' (not a whole number)"},
		{"", 1, 100, "got '' (not a whole number)"},
	};
	unsigned long long out;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		out = 7;
		nhi_err_clear();
		if (v[i].why == NULL) {
			if (nhi_conf_uint(&out, "k", v[i].val, v[i].min, v[i].max) != NHI_OK ||
			    out != strtoull(v[i].val, NULL, 10))
				fail_msg("case %zu: '%s' refused: %s", i, v[i].val, nhi_err_detail());
			continue;
		}
		if (nhi_conf_uint(&out, "k", v[i].val, v[i].min, v[i].max) != NHI_ERR_CONFIG || out != 7 ||
		    strncmp(nhi_err_detail(), "config key 'k' must be a whole number ", 38) != 0 ||
		    strstr(nhi_err_detail(), v[i].why) == NULL)
			fail_msg("case %zu: '%s' gave '%s', want '%s'", i, v[i].val, nhi_err_detail(), v[i].why);
	}
}

static bool refuse_all(const char *s)
{
	(void)s;
	return false;
}

/* nhi_utf8_cut: the one rule for "%.*s" cuts of text that may be UTF-8 */
static void test_utf8_cut(void **state)
{
	static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"}; /* 2, 3, 4 bytes */
	char s[16], out[16];
	size_t c, pre, max, len;
	int n;

	(void)state;
	assert_int_equal(nhi_utf8_cut("", 4), 0);
	assert_int_equal(nhi_utf8_cut("abc", 4), 3);
	assert_int_equal(nhi_utf8_cut("abcd", 4), 4);
	assert_int_equal(nhi_utf8_cut("abcde", 4), 4);
	assert_int_equal(nhi_utf8_cut("abc", 0), 0);
	/* every position of the cut against every character width: the character goes whole or not at all */
	for (c = 0; c < 3; c++) {
		len = strlen(chars[c]);
		for (pre = 0; pre < 4; pre++) {
			memset(s, 'a', pre);
			memcpy(s + pre, chars[c], len);
			memcpy(s + pre + len, "z", 2);
			for (max = 0; max <= pre + len + 1; max++) {
				n = nhi_utf8_cut(s, max);
				if (max < pre)
					assert_int_equal(n, (int)max);
				else if (max < pre + len)
					assert_int_equal(n, (int)pre);
				else
					assert_int_equal(n, (int)max);
				snprintf(out, sizeof(out), "%.*s", n, s);
				assert_true(nhi_jsonw_utf8_valid(out, strlen(out)));
			}
		}
	}
	assert_int_equal(nhi_utf8_trim("ab\xe2\x82", 4), 2);
	assert_int_equal(nhi_utf8_trim("ab\xe2\x82\xac", 5), 5);
	assert_int_equal(nhi_utf8_trim("ab\xc3", 3), 2);
	assert_int_equal(nhi_utf8_trim("ab", 2), 2);
}

/* the %.Ns cuts in common/ go through nhi_utf8_cut: a character across the cut is not halved */
static void test_conf_detail_utf8(void **state)
{
	char val[80], items[2][80];
	unsigned long long v;
	size_t n, k;

	(void)state;
	for (k = 60; k < 68; k++) { /* the cut at 64 falls before, inside and after the character */
		memset(val, 'a', k);
		memcpy(val + k, "\xe2\x82\xac", 4);
		assert_int_equal(nhi_conf_list("k", val, &items[0][0], 80, 2, &n, refuse_all, "an item"), NHI_ERR_CONFIG);
		assert_non_null(strstr(nhi_err_detail(), "is not an item"));
		assert_true(nhi_jsonw_utf8_valid(nhi_err_detail(), strlen(nhi_err_detail())));
	}
	for (k = 28; k < 36; k++) { /* nhi_conf_uint quotes 32 bytes */
		memset(val, '1', k);
		memcpy(val + k, "\xe2\x82\xac", 4);
		assert_int_equal(nhi_conf_uint(&v, "k", val, 1, 100), NHI_ERR_CONFIG);
		assert_non_null(strstr(nhi_err_detail(), "(not a whole number)"));
		assert_true(nhi_jsonw_utf8_valid(nhi_err_detail(), strlen(nhi_err_detail())));
	}
}

/* nhi_err_wrap keeps the cause (the old detail, which names what went wrong) whole and
 * shortens the context instead, at a character boundary, marked "..." */
static void test_error_wrap_keeps_cause(void **state)
{
	static const char cause[] = "disk full (ENOSPC): free space under /var/lib/nhid";
	char big[3 * NHI_ERR_DETAIL_MAX], want[NHI_ERR_DETAIL_MAX + 8];
	const char *d;
	size_t i, n, olen;

	(void)state;
	for (n = 0; n < 4; n++) {
		/* a long context of 2-byte characters, shifted so the cut falls at every position */
		memset(big, 'x', n);
		for (i = n; i + 2 < 2 * NHI_ERR_DETAIL_MAX; i += 2)
			memcpy(big + i, "\xc3\xa9", 2);
		big[i] = '\0';
		nhi_err_set(NHI_ERR_IO, "%s", cause);
		assert_int_equal(nhi_err_wrap(NHI_ERR_IO, "writing %s", big), NHI_ERR_IO);
		d = nhi_err_detail();
		assert_true(strlen(d) < NHI_ERR_DETAIL_MAX);
		assert_true(strlen(d) >= NHI_ERR_DETAIL_MAX - 4);
		assert_true(nhi_jsonw_utf8_valid(d, strlen(d)));
		snprintf(want, sizeof(want), "...: %s", cause);
		assert_true(strlen(d) > strlen(want));
		assert_string_equal(d + strlen(d) - strlen(want), want);
		assert_memory_equal(d, "writing ", 8);
	}
	/* the cause exactly as long as it may be with "...: " in front */
	memset(big, 'c', NHI_ERR_DETAIL_MAX - 6);
	big[NHI_ERR_DETAIL_MAX - 6] = '\0';
	nhi_err_set(NHI_ERR_IO, "%s", big);
	nhi_err_wrap(NHI_ERR_IO, "context");
	d = nhi_err_detail();
	assert_int_equal(strlen(d), NHI_ERR_DETAIL_MAX - 1);
	assert_memory_equal(d, "...: ", 5);
	assert_string_equal(d + 5, big);
	/* a context that fits with the cause is left whole */
	nhi_err_set(NHI_ERR_IO, "%s", cause);
	memset(big, 'x', NHI_ERR_DETAIL_MAX - 3 - strlen(cause));
	big[NHI_ERR_DETAIL_MAX - 3 - strlen(cause)] = '\0';
	nhi_err_wrap(NHI_ERR_IO, "%s", big);
	d = nhi_err_detail();
	assert_int_equal(strlen(d), NHI_ERR_DETAIL_MAX - 1);
	assert_null(strstr(d, "..."));
	assert_string_equal(d + strlen(big), ": disk full (ENOSPC): free space under /var/lib/nhid");
	/* both long, in 3-byte characters: the context keeps its first bytes, the cause is cut at
	 * its end; the result is still UTF-8 and within the limit */
	for (n = 0; n < 3; n++) {
		memset(big, 'y', n);
		for (i = n; i + 3 < 2 * NHI_ERR_DETAIL_MAX; i += 3)
			memcpy(big + i, "\xe2\x82\xac", 3);
		big[i] = '\0';
		nhi_err_set(NHI_ERR_IO, "cause %s", big);
		olen = strlen(nhi_err_detail());
		assert_true(olen > NHI_ERR_DETAIL_MAX - 6);
		nhi_err_wrap(NHI_ERR_IO, "ctx %s", big);
		d = nhi_err_detail();
		assert_true(strlen(d) < NHI_ERR_DETAIL_MAX);
		assert_true(nhi_jsonw_utf8_valid(d, strlen(d)));
		assert_memory_equal(d, "ctx ", 4);
		assert_non_null(strstr(d, "...: cause "));
		assert_true(strstr(d, "...: cause ") - d <= NHI_ERR_WRAP_CTX_MIN);
		/* and wrapped again: still within the limit and UTF-8 */
		nhi_err_wrap(NHI_ERR_IO, "outer %s", big);
		d = nhi_err_detail();
		assert_true(strlen(d) < NHI_ERR_DETAIL_MAX);
		assert_true(nhi_jsonw_utf8_valid(d, strlen(d)));
		assert_memory_equal(d, "outer ", 6);
	}
}

/* common/jsonw.h: known answers (RFC 8259 §7 escapes as jansson writes them) */
static const struct {
	const char *in;
	size_t len;
	const char *out; /* NULL: refused as not UTF-8 */
} jsonw_vectors[] = {
	{"", 0, "\"\""},
	{"demo-agent", 10, "\"demo-agent\""},
	{"a\"b\\c/d", 7, "\"a\\\"b\\\\c/d\""}, /* '/' is not escaped */
	{"\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\""},
	{"\x01\x1f\x7f", 3, "\"\\u0001\\u001F\x7f\""}, /* DEL is not a control character in JSON */
	{"in\0side", 7, "\"in\\u0000side\""},
	{"caf\xc3\xa9", 5, "\"caf\\u00E9\""},
	{"\xe2\x82\xac", 3, "\"\\u20AC\""},
	{"\xf0\x9f\x98\x80", 4, "\"\\uD83D\\uDE00\""}, /* U+1F600 as a surrogate pair */
	{"\xf4\x8f\xbf\xbf", 4, "\"\\uDBFF\\uDFFF\""}, /* U+10FFFF, the last code point */
	{"\x80", 1, NULL},			    /* a lone continuation byte */
	{"\xc0\xaf", 2, NULL},			    /* overlong '/' */
	{"\xe0\x80\xaf", 3, NULL},		    /* overlong, 3 bytes */
	{"\xed\xa0\x80", 3, NULL},		    /* a UTF-16 surrogate */
	{"\xf4\x90\x80\x80", 4, NULL},		    /* beyond U+10FFFF */
	{"\xf5\x80\x80\x80", 4, NULL},
	{"ok\xe2\x82", 4, NULL}, /* cut short */
	{"\xc3\x28", 2, NULL},	 /* a lead byte without its continuation */
};

static void test_jsonw(void **state)
{
	struct nhi_buf b = {0};
	struct nhi_jsonw o;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(jsonw_vectors) / sizeof(jsonw_vectors[0]); i++) {
		assert_int_equal(nhi_jsonw_utf8_valid(jsonw_vectors[i].in, jsonw_vectors[i].len),
				 jsonw_vectors[i].out != NULL);
		assert_int_equal(nhi_buf_append(&b, "x", 1), NHI_OK);
		if (jsonw_vectors[i].out == NULL) {
			assert_int_equal(nhi_jsonw_str(&b, jsonw_vectors[i].in, jsonw_vectors[i].len), NHI_ERR_ARG);
			assert_non_null(strstr(nhi_err_detail(), "not valid UTF-8"));
			assert_int_equal(b.len, 1); /* a refusal leaves the buffer as it was */
		} else {
			assert_int_equal(nhi_jsonw_str(&b, jsonw_vectors[i].in, jsonw_vectors[i].len), NHI_OK);
			assert_string_equal((char *)b.data + 1, jsonw_vectors[i].out);
		}
		nhi_buf_reset(&b);
	}
	/* an object: members, nesting, and the whole object or nothing */
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_s(&o, "sub", "a");
	nhi_jsonw_i(&o, "exp", -1);
	nhi_jsonw_open(&o, "roles", true);
	nhi_jsonw_elem_s(&o, "r1");
	nhi_jsonw_elem_s(&o, "r2");
	nhi_jsonw_close(&o, true);
	nhi_jsonw_open(&o, "cnf", false);
	nhi_jsonw_close(&o, false);
	nhi_jsonw_open(&o, "none", true);
	nhi_jsonw_close(&o, true);
	nhi_jsonw_raw(&o, "attrs", "{\"k\":[1,2.5]}x", 13); /* n bytes, as they are */
	assert_int_equal(nhi_jsonw_end(&o), NHI_OK);
	assert_string_equal((char *)b.data, "{\"sub\":\"a\",\"exp\":-1,\"roles\":[\"r1\",\"r2\"],\"cnf\":{},\"none\":[],"
					    "\"attrs\":{\"k\":[1,2.5]}}");
	nhi_buf_reset(&b);
	/* a raw member inside a nested object takes its comma like any other */
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_open(&o, "agent", false);
	nhi_jsonw_raw(&o, "a", "{}", 2);
	nhi_jsonw_raw(&o, "b", "[true]", 6);
	nhi_jsonw_close(&o, false);
	assert_int_equal(nhi_jsonw_end(&o), NHI_OK);
	assert_string_equal((char *)b.data, "{\"agent\":{\"a\":{},\"b\":[true]}}");
	nhi_buf_reset(&b);
	assert_int_equal(nhi_buf_append(&b, "keep", 4), NHI_OK);
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_s(&o, "ok", "fine");
	nhi_jsonw_open(&o, "roles", true);
	nhi_jsonw_elem_s(&o, "fine");
	nhi_jsonw_elem_s(&o, "\xc3\x28");
	nhi_jsonw_s(&o, "after", "ignored"); /* sticky: nothing more happens */
	assert_int_equal(nhi_jsonw_end(&o), NHI_ERR_ARG);
	assert_non_null(strstr(nhi_err_detail(), "element 1 of 'roles' is not valid UTF-8"));
	assert_string_equal((char *)b.data, "keep");
	/* unbalanced use is an error too, never half a document */
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_open(&o, "a", false);
	assert_int_equal(nhi_jsonw_end(&o), NHI_ERR_INTERNAL);
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_close(&o, false);
	assert_int_equal(nhi_jsonw_end(&o), NHI_ERR_INTERNAL);
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_open(&o, "a", false);
	nhi_jsonw_close(&o, true); /* an object closed as an array */
	assert_int_equal(nhi_jsonw_end(&o), NHI_ERR_INTERNAL);
	assert_non_null(strstr(nhi_err_detail(), "without its open"));
	nhi_jsonw_begin(&o, &b);
	for (i = 0; i < NHI_JSONW_DEPTH_MAX; i++)
		nhi_jsonw_open(&o, "d", false);
	for (i = 0; i < NHI_JSONW_DEPTH_MAX; i++)
		nhi_jsonw_close(&o, false);
	assert_int_equal(nhi_jsonw_end(&o), NHI_OK); /* the limit itself is fine */
	nhi_buf_reset(&b);
	assert_int_equal(nhi_buf_append(&b, "keep", 4), NHI_OK);
	nhi_jsonw_begin(&o, &b);
	for (i = 0; i < NHI_JSONW_DEPTH_MAX + 1; i++)
		nhi_jsonw_open(&o, "d", false);
	assert_int_equal(nhi_jsonw_end(&o), NHI_ERR_INTERNAL);
	assert_non_null(strstr(nhi_err_detail(), "nested deeper"));
	assert_string_equal((char *)b.data, "keep");
	nhi_buf_free(&b);
}

/* getpid from memory stays fork-safe: a child sees its own pid, and OpenSSL's DRBG
 * in the child does not repeat the parent's bytes */
static void test_pid_cache_fork(void **state)
{
	uint8_t warm[16], parent_bytes[32], child_bytes[32];
	pid_t parent, child;
	int fds[2], status = -1;
	ssize_t n;

	(void)state;
	assert_int_equal(nhi_pid_cache_enable(), NHI_OK);
	assert_int_equal(nhi_pid_cache_enable(), NHI_OK); /* twice: one fork handler */
	parent = getpid();
	assert_int_equal(parent, (pid_t)syscall(SYS_getpid));
	assert_int_equal(RAND_bytes(warm, sizeof(warm)), 1); /* the DRBG is seeded in the parent */
	assert_int_equal(pipe(fds), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		uint8_t b[33];

		close(fds[0]);
		b[0] = getpid() == (pid_t)syscall(SYS_getpid) && getpid() != parent;
		if (RAND_bytes(b + 1, 32) != 1)
			b[0] = 0;
		_exit(write(fds[1], b, sizeof(b)) == (ssize_t)sizeof(b) ? 0 : 1);
	}
	close(fds[1]);
	{
		uint8_t b[33];

		n = read(fds[0], b, sizeof(b));
		assert_int_equal(n, (ssize_t)sizeof(b));
		assert_int_equal(b[0], 1); /* the child's getpid was its own */
		memcpy(child_bytes, b + 1, 32);
	}
	close(fds[0]);
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(RAND_bytes(parent_bytes, sizeof(parent_bytes)), 1);
	assert_memory_not_equal(parent_bytes, child_bytes, 32);
	assert_int_equal(getpid(), parent); /* the parent's cache is untouched */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64url_rfc4648),	   cmocka_unit_test(test_b64url_strict),
		cmocka_unit_test(test_buffers_and_secret_memory), cmocka_unit_test(test_secret_files),
		cmocka_unit_test(test_credentials_directory_rule), cmocka_unit_test(test_write_excl_and_atomic),
		cmocka_unit_test(test_file_read_fifo), cmocka_unit_test(test_write_atomic_stale_temp), cmocka_unit_test(test_write_atomic_threads),
		cmocka_unit_test(test_ecdsa_forms_and_jwk), cmocka_unit_test(test_conf_reader),
		cmocka_unit_test(test_conf_reader_strict), cmocka_unit_test(test_conf_uint_range),
		cmocka_unit_test(test_utf8_cut), cmocka_unit_test(test_conf_detail_utf8),
		cmocka_unit_test(test_error_wrap_keeps_cause),
		cmocka_unit_test(test_errors), cmocka_unit_test(test_error_truncation_utf8),		   cmocka_unit_test(test_p256_only),
		cmocka_unit_test(test_pid_cache_fork),
		cmocka_unit_test(test_jsonw),
	};

	return cmocka_run_group_tests_name("common", tests, setup, teardown);
}
