/*
 * bench/bench_hsm.c — ECDSA P-256 signatures/s through nhi_hsm (session pool,
 * recovery wrapper, p11-kit managed module) against raw SoftHSM2 C_Sign (module
 * dlopen'ed directly, one session per thread), 1 and 2 threads, same token, same
 * run; both on the token object, and both on a session-object copy of the key
 * (nhi_hsm_key_cache / C_CopyObject CKA_TOKEN=false: what nhid signs with); last, the
 * session copy again with the P-256 group built once (nhi_hsm_ec_group_cache_enable,
 * as nhid runs). Prints a table and the ratios. Usage: bench_hsm [seconds-per-case]
 */
#include "../hsm/hsm_internal.h"
#include "../tests/unit/fixture.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static double seconds = 3.0;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- raw C_Sign ------------------------------------------------------------- */

struct raw {
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_OBJECT_HANDLE key;
	atomic_ullong ops;
	double until;
};

static void *raw_worker(void *arg)
{
	struct raw *r = arg;
	CK_SESSION_HANDLE s;
	CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
	uint8_t digest[32] = {1}, sig[64];
	CK_ULONG n;
	unsigned long long local = 0;

	if (r->f->C_OpenSession(r->slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
		return NULL;
	while (now_s() < r->until) {
		n = sizeof(sig);
		digest[1]++;
		if (r->f->C_SignInit(s, &m, r->key) != CKR_OK || r->f->C_Sign(s, digest, 32, sig, &n) != CKR_OK)
			break;
		local++;
	}
	atomic_fetch_add(&r->ops, local);
	r->f->C_CloseSession(s);
	return NULL;
}

static double run_raw(const char *label, const char *pin, int threads, bool copy)
{
	void *lib = dlopen(NHI_SOFTHSM2_MODULE_PATH, RTLD_NOW);
	CK_RV (*get)(CK_FUNCTION_LIST **);
	CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16, i;
	CK_TOKEN_INFO ti;
	CK_SESSION_HANDLE s;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE t[] = {{CKA_LABEL, "bench-ec", 8}, {CKA_CLASS, &cls, sizeof(cls)}};
	CK_ULONG found = 0;
	struct raw r = {0};
	pthread_t th[8];
	double start, rate;
	int k;

	if (lib == NULL || (get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(lib, "C_GetFunctionList")) == NULL ||
	    get(&r.f) != CKR_OK || r.f->C_Initialize(&args) != CKR_OK)
		return -1;
	r.f->C_GetSlotList(CK_TRUE, slots, &n);
	for (i = 0; i < n; i++)
		if (r.f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, label, strlen(label)) == 0)
			r.slot = slots[i];
	r.f->C_OpenSession(r.slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	r.f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	r.f->C_FindObjectsInit(s, t, 2);
	r.f->C_FindObjects(s, &r.key, 1, &found);
	r.f->C_FindObjectsFinal(s);
	if (found != 1)
		return -1;
	if (copy) {
		CK_BBOOL no = CK_FALSE;
		CK_ATTRIBUTE ct[] = {{CKA_TOKEN, &no, sizeof(no)}};
		CK_OBJECT_HANDLE c;

		if (r.f->C_CopyObject(s, r.key, ct, 1, &c) != CKR_OK)
			return -1;
		r.key = c;
	}
	start = now_s();
	r.until = start + seconds;
	for (k = 0; k < threads; k++)
		pthread_create(&th[k], NULL, raw_worker, &r);
	for (k = 0; k < threads; k++)
		pthread_join(th[k], NULL);
	rate = (double)atomic_load(&r.ops) / (now_s() - start);
	r.f->C_Logout(s);
	r.f->C_CloseSession(s);
	r.f->C_Finalize(NULL);
	dlclose(lib);
	return rate;
}

/* ---- through nhi_hsm -------------------------------------------------------- */

struct via {
	struct nhi_hsm *h;
	struct nhi_hsm_key *k;
	atomic_ullong ops;
	double until;
};

static void *via_worker(void *arg)
{
	struct via *v = arg;
	uint8_t digest[32] = {2}, sig[64];
	unsigned long long local = 0;

	while (now_s() < v->until) {
		digest[1]++;
		if (nhi_hsm_sign_digest(v->h, v->k, digest, sig) != NHI_OK)
			break;
		local++;
	}
	atomic_fetch_add(&v->ops, local);
	return NULL;
}

static double run_via(struct nhi_hsm *h, struct nhi_hsm_key *k, int threads)
{
	struct via v = {.h = h, .k = k};
	pthread_t th[8];
	double start;
	int i;

	start = now_s();
	v.until = start + seconds;
	for (i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, via_worker, &v);
	for (i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	return (double)atomic_load(&v.ops) / (now_s() - start);
}

int main(int argc, char **argv)
{
	struct nhi_fixture fx;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *k = NULL;
	double raw1, raw2, via1, via2, craw1, craw2, cvia1, cvia2, graw1, graw2;
	bool cached = false;
	int rc = 1;

	if (argc > 1)
		seconds = atof(argv[1]);
	nhi_fixture_setup(&fx, "bench");
	fx.cfg.sessions = 4;
	if (nhi_hsm_open(&fx.cfg, &h) != NHI_OK || nhi_hsm_generate(h, NHI_KEY_EC_P256, "bench-ec", &k) != NHI_OK) {
		fprintf(stderr, "bench_hsm: %s\n", nhi_err_detail());
		goto out;
	}
	/* measure nhi_hsm first, then raw with the module loaded directly: p11-kit's
	 * managed instance is closed before the raw one initialises */
	via1 = run_via(h, k, 1);
	via2 = run_via(h, k, 2);
	if (nhi_hsm_key_cache(h, k, &cached) != NHI_OK || !cached) {
		fprintf(stderr, "bench_hsm: the token refused a session copy\n");
		goto out;
	}
	cvia1 = run_via(h, k, 1);
	cvia2 = run_via(h, k, 2);
	nhi_hsm_key_free(k);
	k = NULL;
	nhi_hsm_free(h);
	h = NULL;
	raw1 = run_raw("bench", "1234-user-pin", 1, false);
	raw2 = run_raw("bench", "1234-user-pin", 2, false);
	craw1 = run_raw("bench", "1234-user-pin", 1, true);
	craw2 = run_raw("bench", "1234-user-pin", 2, true);
	/* last: the P-256 group built once is process-wide and cannot be switched off */
	if (nhi_hsm_ec_group_cache_enable() != NHI_OK) {
		fprintf(stderr, "bench_hsm: %s\n", nhi_err_detail());
		goto out;
	}
	graw1 = run_raw("bench", "1234-user-pin", 1, true);
	graw2 = run_raw("bench", "1234-user-pin", 2, true);
	if (raw1 <= 0 || raw2 <= 0 || craw1 <= 0 || craw2 <= 0 || graw1 <= 0 || graw2 <= 0 ||
	    nhi_hsm_ec_group_cache_hits() == 0) {
		fprintf(stderr, "bench_hsm: raw C_Sign run failed\n");
		goto out;
	}
	printf("ECDSA P-256 sign (SHA-256 digest, CKM_ECDSA), %.1f s per case\n", seconds);
	printf("  %-34s %12s %12s\n", "", "1 thread", "2 threads");
	printf("  %-34s %10.0f/s %10.0f/s\n", "raw SoftHSM2 C_Sign", raw1, raw2);
	printf("  %-34s %10.0f/s %10.0f/s\n", "nhi_hsm_sign_digest (pool+p11-kit)", via1, via2);
	printf("  %-34s %11.3fx %11.3fx   (target >= 0.90x: layer costs < 10%%)\n", "ratio nhi_hsm / raw", via1 / raw1,
	       via2 / raw2);
	printf("  %-34s %10.0f/s %10.0f/s\n", "raw C_Sign, session copy", craw1, craw2);
	printf("  %-34s %10.0f/s %10.0f/s\n", "nhi_hsm, nhi_hsm_key_cache", cvia1, cvia2);
	printf("  %-34s %11.3fx %11.3fx\n", "ratio nhi_hsm / raw (session copy)", cvia1 / craw1, cvia2 / craw2);
	printf("  %-34s %11.3fx %11.3fx   (what the cache buys)\n", "session copy / token object", craw1 / raw1,
	       craw2 / raw2);
	printf("  %-34s %10.0f/s %10.0f/s\n", "raw C_Sign, copy, P-256 group once", graw1, graw2);
	printf("  %-34s %11.3fx %11.3fx   (what nhi_hsm_ec_group_cache_enable buys)\n", "group once / rebuilt", graw1 / craw1,
	       graw2 / craw2);
	printf("BENCH hsm_sign_1t=%.0f hsm_sign_2t=%.0f raw_csign_1t=%.0f raw_csign_2t=%.0f hsm_cached_1t=%.0f "
	       "hsm_cached_2t=%.0f raw_copy_1t=%.0f raw_copy_2t=%.0f raw_copy_group_1t=%.0f raw_copy_group_2t=%.0f\n",
	       via1, via2, raw1, raw2, cvia1, cvia2, craw1, craw2, graw1, graw2);
	rc = 0;
out:
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
	nhi_fixture_teardown(&fx);
	return rc;
}
