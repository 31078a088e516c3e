/*
 * bench/bench_identity.c — identity backups of 10k, 100k and 1M agents: create time,
 * import time (verify + unwrap + decrypt + deserialize + check) with its stages,
 * MB/s, peak RSS of the importing process, and single-thread lookups/s by id and
 * by certificate thumbprint. Then in-token AES-256-GCM decrypt throughput (what the
 * import uses) next to OpenSSL EVP with a key in memory, same sizes, same run.
 *
 * Each import runs in a fresh child process (this binary re-executed), so its peak
 * RSS (VmHWM) is not polluted by the creation that came before.
 *
 * Usage: bench_identity [SECONDS] [AGENTS...]
 *   a number below 1000 is the seconds per lookup measurement (bench/run.sh passes
 *   one); numbers from 1000 are agent counts (default 10000 100000 1000000).
 * Targets (issue 3): 1M agents imported in < 2 s; peak RSS < 2.5x the image size;
 * >= 300k lookups/s by id on one thread.
 */
#include "../identity/identity_internal.h"
#include "../tests/unit/fixture.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/wait.h>
#include <time.h>

#define BENCH_LABEL "bench-identity"
#define MIB (1024.0 * 1024.0)

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "bench_identity: %s: %s\n", what, nhi_err_detail());
	exit(1);
}

/* VmRSS / VmHWM in KiB from /proc/self/status */
static long proc_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(key);

	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, key, n) == 0 && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	if (f != NULL)
		fclose(f);
	return v;
}

static void reset_peak_rss(void)
{
	FILE *f = fopen("/proc/self/clear_refs", "w");

	if (f != NULL) {
		fputs("5", f); /* Linux >= 4.0: VmHWM := VmRSS */
		fclose(f);
	}
}

static void thumbprint_of(size_t i, uint8_t tp[32])
{
	char s[32];

	snprintf(s, sizeof(s), "cert-%zu", i);
	if (nhi_sha256(s, strlen(s), tp) != NHI_OK)
		die("sha256");
}

static void write_jsonl(const char *path, size_t n)
{
	FILE *f = fopen(path, "w");
	uint8_t tp[32];
	char hex[65];
	size_t i;

	if (f == NULL)
		die(path);
	for (i = 0; i < n; i++) {
		thumbprint_of(i, tp);
		nhi_hex(tp, 32, hex);
		fprintf(f,
			"{\"id\":\"agent-%07zu\",\"roles\":[\"%s\"],\"audiences\":[\"inference\"],\"cert_sha256\":\"%s\","
			"\"not_after\":\"2030-01-01T00:00:00Z\",\"attributes\":{\"rack\":\"r%03zu\",\"site\":\"lab-1\"}}\n",
			i, i % 100 == 0 ? "resolver" : "agent", hex, i % 997);
	}
	if (fclose(f) != 0)
		die("write jsonl");
}

/* ---- child: one import in a fresh process ----------------------------------------- */

static int child_import(const char *pin_file, const char *path, size_t n, double secs)
{
	struct nhi_hsm_config cfg = {.token = BENCH_LABEL, .pin_file = pin_file, .sessions = 2};
	struct nhi_hsm *h = NULL;
	struct nhi_store *s = NULL;
	struct nhi_store_import_result r;
	struct nhi_agent *a = NULL;
	enum { PROBES = 65536 };
	static char ids[PROBES][24];
	static uint8_t tps[PROBES][32];
	long base_kb, peak_kb;
	unsigned long long k, done_id = 0, done_tp = 0;
	double t, id_rate, tp_rate;

	if (nhi_hsm_open(&cfg, &h) != NHI_OK)
		die("open token");
	if (nhi_store_new(&s) != NHI_OK)
		die("store");
	malloc_trim(0);
	reset_peak_rss();
	base_kb = proc_kb("VmRSS");
	if (nhi_store_import_file(s, h, path, NULL, &r) != NHI_OK)
		die("import");
	peak_kb = proc_kb("VmHWM");

	for (k = 0; k < PROBES; k++) {
		size_t i = (size_t)((k * 2654435761ULL + 12345) % n);

		snprintf(ids[k], sizeof(ids[k]), "agent-%07zu", i);
		thumbprint_of(i, tps[k]);
	}
	t = now_s();
	do {
		for (k = 0; k < 4096; k++, done_id++) {
			if (nhi_store_find_id(s, ids[done_id % PROBES], &a) != NHI_OK)
				die("lookup by id");
			nhi_agent_free(a);
		}
	} while (now_s() - t < secs);
	id_rate = (double)done_id / (now_s() - t);
	t = now_s();
	do {
		for (k = 0; k < 4096; k++, done_tp++) {
			if (nhi_store_find_thumbprint(s, tps[done_tp % PROBES], &a) != NHI_OK)
				die("lookup by thumbprint");
			nhi_agent_free(a);
		}
	} while (now_s() - t < secs);
	tp_rate = (double)done_tp / (now_s() - t);
	printf("RESULT %.6f %.6f %.6f %.6f %zu %" PRIu64 " %ld %ld %.0f %.0f\n", r.total_s, r.verify_s, r.decrypt_s,
	       r.check_s, r.image_bytes, r.info.file_bytes, base_kb, peak_kb, id_rate, tp_rate);
	nhi_store_free(s);
	nhi_hsm_free(h);
	return 0;
}

struct import_fig {
	double total, verify, decrypt, check, id_rate, tp_rate;
	size_t image;
	uint64_t file;
	long base_kb, peak_kb;
};

static void run_child(const char *pin_file, const char *path, size_t n, double secs, struct import_fig *f)
{
	int fds[2], status;
	char ns[32], ss[32], buf[512];
	pid_t pid;
	ssize_t got;
	size_t len = 0;

	snprintf(ns, sizeof(ns), "%zu", n);
	snprintf(ss, sizeof(ss), "%g", secs);
	if (pipe(fds) != 0)
		die("pipe");
	pid = fork();
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl("/proc/self/exe", "bench_identity", "--child-import", pin_file, path, ns, ss, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	while (len < sizeof(buf) - 1 && (got = read(fds[0], buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)got;
	buf[len] = '\0';
	close(fds[0]);
	waitpid(pid, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
	    sscanf(buf, "RESULT %lf %lf %lf %lf %zu %" SCNu64 " %ld %ld %lf %lf", &f->total, &f->verify, &f->decrypt,
		   &f->check, &f->image, &f->file, &f->base_kb, &f->peak_kb, &f->id_rate, &f->tp_rate) != 10) {
		fprintf(stderr, "bench_identity: import child failed (%s)\n", buf);
		exit(1);
	}
}

/* ---- decrypt: in the token vs OpenSSL with a key in memory ---------------------------- */

static double token_decrypt_mbs(struct nhi_hsm *h, size_t size)
{
	struct nhi_hsm_key *k = NULL;
	struct nhi_buf pt = {.secret = true}, ct = {0};
	uint8_t iv[12] = {0}, aad[32] = {0};
	size_t off, n, chunk = NHI_BACKUP_CHUNK_BYTES, coff;
	double t;

	if (nhi_hsm_generate_data_key(h, &k) != NHI_OK)
		die("data key");
	if (nhi_buf_reserve(&pt, size) != NHI_OK)
		die("alloc");
	memset(pt.data, 0x42, size);
	pt.len = size;
	for (off = 0; off < size; off += n) {
		n = size - off < chunk ? size - off : chunk;
		if (nhi_hsm_gcm_encrypt(h, k, iv, aad, sizeof(aad), pt.data + off, n, &ct) != NHI_OK)
			die("encrypt");
	}
	nhi_buf_reset(&pt);
	t = now_s();
	for (off = 0, coff = 0; off < size; off += n, coff += n + 16) {
		n = size - off < chunk ? size - off : chunk;
		if (nhi_hsm_gcm_decrypt(h, k, iv, aad, sizeof(aad), ct.data + coff, n + 16, &pt) != NHI_OK)
			die("decrypt in token");
	}
	t = now_s() - t;
	if (nhi_hsm_destroy(h, k) != NHI_OK)
		die("destroy");
	nhi_hsm_key_free(k);
	nhi_buf_free(&pt);
	nhi_buf_free(&ct);
	return (double)size / MIB / t;
}

static double openssl_decrypt_mbs(size_t size)
{
	size_t off, n, chunk = NHI_BACKUP_CHUNK_BYTES, coff;
	uint8_t key[32], iv[12] = {0}, aad[32] = {0}, *pt = malloc(size), *ct = malloc(size + (size / chunk + 1) * 16);
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int len;
	double t;

	if (pt == NULL || ct == NULL || c == NULL || RAND_bytes(key, sizeof(key)) != 1)
		die("openssl setup");
	memset(pt, 0x42, size);
	for (off = 0, coff = 0; off < size; off += n, coff += n + 16) {
		n = size - off < chunk ? size - off : chunk;
		if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv) != 1 ||
		    EVP_EncryptUpdate(c, NULL, &len, aad, sizeof(aad)) != 1 ||
		    EVP_EncryptUpdate(c, ct + coff, &len, pt + off, (int)n) != 1 || EVP_EncryptFinal_ex(c, ct + coff + n, &len) != 1 ||
		    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, ct + coff + n) != 1)
			die("openssl encrypt");
	}
	t = now_s();
	for (off = 0, coff = 0; off < size; off += n, coff += n + 16) {
		n = size - off < chunk ? size - off : chunk;
		if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv) != 1 ||
		    EVP_DecryptUpdate(c, NULL, &len, aad, sizeof(aad)) != 1 ||
		    EVP_DecryptUpdate(c, pt + off, &len, ct + coff, (int)n) != 1 ||
		    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, ct + coff + n) != 1 ||
		    EVP_DecryptFinal_ex(c, pt + off + n, &len) != 1)
			die("openssl decrypt");
	}
	t = now_s() - t;
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(pt, size);
	EVP_CIPHER_CTX_free(c);
	free(pt);
	free(ct);
	return (double)size / MIB / t;
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	struct nhi_fixture fx;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *k = NULL;
	size_t sizes[16] = {10000, 100000, 1000000}, n_sizes = 0, i;
	double secs = 2.0, t_create[16];
	struct import_fig fig[16];
	double tok[16], ossl[16];
	char path[512], out[512];
	int a;

	if (argc == 6 && strcmp(argv[1], "--child-import") == 0)
		return child_import(argv[2], argv[3], strtoul(argv[4], NULL, 10), strtod(argv[5], NULL));
	for (a = 1; a < argc; a++) {
		double v = strtod(argv[a], NULL);

		if (v <= 0) {
			fprintf(stderr, "usage: bench_identity [SECONDS] [AGENTS...]\n");
			return 2;
		}
		if (v < 1000)
			secs = v;
		else if (n_sizes < 16)
			sizes[n_sizes++] = (size_t)v;
	}
	if (n_sizes == 0)
		n_sizes = 3;

	nhi_fixture_setup(&fx, BENCH_LABEL);
	if (nhi_hsm_open(&fx.cfg, &h) != NHI_OK)
		die("open token");
	if (nhi_hsm_generate(h, NHI_KEY_EC_P256, NHI_BACKUP_SIGN_KEY_DEFAULT, &k) != NHI_OK)
		die("root key");
	nhi_hsm_key_free(k);
	if (nhi_hsm_generate(h, NHI_KEY_AES256, NHI_BACKUP_WRAP_KEY_DEFAULT, &k) != NHI_OK)
		die("wrap key");
	nhi_hsm_key_free(k);

	for (i = 0; i < n_sizes; i++) {
		struct nhi_backup_create_opts o = {0};
		struct nhi_buf b = {0}, report = {0};
		struct nhi_backup_info info;
		double t;

		snprintf(path, sizeof(path), "%s/agents-%zu.jsonl", fx.dir, sizes[i]);
		snprintf(out, sizeof(out), "%s/backup-%zu.nhib", fx.dir, sizes[i]);
		write_jsonl(path, sizes[i]);
		o.agents_path = path;
		o.serial = 1 + i;
		t = now_s();
		if (nhi_backup_create(h, &o, &b, &info, &report) != NHI_OK)
			die("create");
		if (nhi_file_write_excl(out, b.data, b.len, 0644) != NHI_OK)
			die("write backup");
		t_create[i] = now_s() - t;
		nhi_buf_free(&b);
		nhi_buf_free(&report);
		unlink(path);
		run_child(fx.pin_file, out, sizes[i], secs, &fig[i]);
		tok[i] = token_decrypt_mbs(h, fig[i].image);
		ossl[i] = openssl_decrypt_mbs(fig[i].image);
		unlink(out);
	}

	printf("identity backup: create and import (import in a fresh process; lookups on 1 thread, %gs each)\n",
	       secs);
	printf("%9s %9s %9s %8s | %8s %7s %7s %7s | %8s | %9s %9s %6s | %10s %10s\n", "agents", "image MB", "file MB",
	       "create s", "import s", "verify", "decrypt", "check", "MB/s", "base MB", "peak MB", "peak/x", "id/s", "cert/s");
	for (i = 0; i < n_sizes; i++)
		printf("%9zu %9.1f %9.1f %8.2f | %8.3f %7.3f %7.3f %7.3f | %8.0f | %9.1f %9.1f %6.2f | %10.0f %10.0f\n",
		       sizes[i], fig[i].image / MIB, (double)fig[i].file / MIB, t_create[i], fig[i].total, fig[i].verify,
		       fig[i].decrypt, fig[i].check, fig[i].image / MIB / fig[i].total, fig[i].base_kb / 1024.0,
		       fig[i].peak_kb / 1024.0, fig[i].peak_kb * 1024.0 / (double)fig[i].image, fig[i].id_rate,
		       fig[i].tp_rate);
	printf("  peak/x = peak RSS of the importing process / image size (target < 2.5 at 1M agents);\n"
	       "  verify = read + SHA-256 + ECDSA; decrypt = unwrap + AES-GCM in the token; check = deserialize +\n"
	       "  integrity_check + schema + counts. Targets: 1M import < 2 s, >= 300000 id lookups/s.\n\n");
	printf("AES-256-GCM decrypt of the image in %d KiB chunks: in the token (what import does) vs OpenSSL, key in "
	       "memory\n",
	       NHI_BACKUP_CHUNK_BYTES / 1024);
	printf("%9s %9s %12s %12s %7s\n", "agents", "image MB", "token MB/s", "OpenSSL MB/s", "ratio");
	for (i = 0; i < n_sizes; i++)
		printf("%9zu %9.1f %12.0f %12.0f %7.2f\n", sizes[i], fig[i].image / MIB, tok[i], ossl[i], ossl[i] / tok[i]);
	nhi_hsm_free(h);
	nhi_fixture_teardown(&fx);
	return 0;
}
