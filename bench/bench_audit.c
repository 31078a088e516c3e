/*
 * bench/bench_audit.c — durable audit records/s through nhi_audit_record (group
 * commit: one fdatasync per batch of waiting callers) with 1, 8 and 50 writer
 * threads, and through nhi_audit_submit from 2 event-loop-like threads with 25
 * records in flight each (nhid's shape), against the naive way (one write +
 * fdatasync per record, one thread), on the filesystem of $TMPDIR, same run. Checkpoints are on at their defaults
 * and signed in a real SoftHSM2 token. Prints a table: records/s, fsyncs/s,
 * records per fsync, p50/p99 latency of one durable record.
 * Usage: bench_audit [seconds-per-case]
 */
#include "../common/limits.h"
#include "../server/audit.h"
#include "../tests/unit/fixture.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/statfs.h>
#include <time.h>

#define LAT_MAX_PER_THREAD 2000000

static double seconds = 3.0;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct result {
	double rate, fsync_rate, per_fsync, p50_ms, p99_ms;
	bool ok;
};

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x < y ? -1 : x > y;
}

/* latencies of every thread, sorted, to percentiles */
static void percentiles(float **lat, const size_t *n, int threads, struct result *r)
{
	size_t total = 0, k = 0;
	float *all;
	int t;

	for (t = 0; t < threads; t++)
		total += n[t];
	if (total == 0)
		return;
	all = malloc(total * sizeof(float));
	if (all == NULL)
		return;
	for (t = 0; t < threads; t++) {
		memcpy(all + k, lat[t], n[t] * sizeof(float));
		k += n[t];
	}
	qsort(all, total, sizeof(float), cmp_float);
	r->p50_ms = all[total / 2];
	r->p99_ms = all[total * 99 / 100];
	free(all);
}

/* ---- the naive way: write + fdatasync per record --------------------------------- */

static struct result run_naive(const char *dir)
{
	struct result r = {0};
	char path[512], line[256];
	float *lat = malloc(LAT_MAX_PER_THREAD * sizeof(float));
	size_t n = 0;
	double start, t0, end;
	int fd, len;

	snprintf(path, sizeof(path), "%s/naive.jsonl", dir);
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || lat == NULL)
		goto out;
	start = now_s();
	end = start + seconds;
	while ((t0 = now_s()) < end && n < LAT_MAX_PER_THREAD) {
		len = snprintf(line, sizeof(line), "{\"seq\":%zu,\"event\":\"token_issued\",\"agent\":\"agent-1\"}\n", n);
		if (write(fd, line, (size_t)len) != len || fdatasync(fd) != 0)
			goto out;
		lat[n++] = (float)((now_s() - t0) * 1e3);
	}
	r.rate = (double)n / (now_s() - start);
	r.fsync_rate = r.rate;
	r.per_fsync = 1.0;
	percentiles(&lat, &n, 1, &r);
	r.ok = true;
out:
	if (fd >= 0)
		close(fd);
	free(lat);
	return r;
}

/* ---- nhi_audit with N threads ------------------------------------------------------- */

struct worker {
	struct nhi_audit *a;
	double end;
	float *lat;
	size_t n;
	nhi_err rv;
};

static void *worker_main(void *p)
{
	struct worker *w = p;
	double t0;

	w->rv = NHI_OK;
	while ((t0 = now_s()) < w->end && w->n < LAT_MAX_PER_THREAD / 8) {
		w->rv = nhi_audit_record(w->a, "token_issued",
					 json_pack("{s:s, s:s, s:i, s:I}", "agent", "agent-1", "aud", "gateway", "ttl", 300,
						   "n", (json_int_t)w->n));
		if (w->rv != NHI_OK)
			break;
		w->lat[w->n++] = (float)((now_s() - t0) * 1e3);
	}
	return NULL;
}

static struct result run_audit(struct nhi_hsm *h, const char *dir, int threads)
{
	struct result r = {0};
	struct nhi_audit_config c = {.hsm = h};
	struct nhi_audit *a = NULL;
	struct nhi_audit_stats before, after;
	struct worker *w = calloc((size_t)threads, sizeof(*w));
	pthread_t *th = calloc((size_t)threads, sizeof(*th));
	float **lat = calloc((size_t)threads, sizeof(float *));
	size_t *n = calloc((size_t)threads, sizeof(size_t)), total = 0;
	char path[512];
	double start, elapsed;
	int t, started = 0;

	snprintf(path, sizeof(path), "%s/audit-%d.jsonl", dir, threads);
	c.path = path;
	if (w == NULL || th == NULL || lat == NULL || n == NULL || nhi_audit_open(&c, &a) != NHI_OK) {
		fprintf(stderr, "bench_audit: %s\n", nhi_err_detail());
		goto out;
	}
	nhi_audit_get_stats(a, &before);
	start = now_s();
	for (t = 0; t < threads; t++) {
		w[t] = (struct worker){.a = a, .end = start + seconds, .lat = malloc(LAT_MAX_PER_THREAD / 8 * sizeof(float))};
		if (w[t].lat == NULL || pthread_create(&th[t], NULL, worker_main, &w[t]) != 0)
			break;
		started++;
	}
	for (t = 0; t < started; t++) {
		pthread_join(th[t], NULL);
		if (w[t].rv != NHI_OK)
			fprintf(stderr, "bench_audit: %s\n", nhi_err_detail());
		lat[t] = w[t].lat;
		n[t] = w[t].n;
		total += w[t].n;
	}
	elapsed = now_s() - start;
	nhi_audit_get_stats(a, &after);
	r.rate = (double)total / elapsed;
	r.fsync_rate = (double)(after.fsyncs - before.fsyncs) / elapsed;
	r.per_fsync = after.fsyncs > before.fsyncs ? (double)(after.records - before.records) /
							  (double)(after.fsyncs - before.fsyncs)
						    : 0;
	percentiles(lat, n, started, &r);
	r.ok = started == threads;
out:
	if (a != NULL && nhi_audit_close(a) != NHI_OK) {
		fprintf(stderr, "bench_audit: close: %s\n", nhi_err_detail());
		r.ok = false;
	}
	for (t = 0; w != NULL && t < threads; t++)
		free(w[t].lat);
	free(w);
	free(th);
	free(lat);
	free(n);
	return r;
}

/* ---- nhi_audit_submit from event-loop-like threads ----------------------------------- */

struct loop {
	struct nhi_audit *a;
	double end;
	int depth;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int in_flight;
	size_t n;
	float *lat;
	bool failed;
};

struct req {
	struct loop *l;
	double t0;
};

static void req_done(void *arg, nhi_err rv, const char *detail)
{
	struct req *r = arg;
	struct loop *l = r->l;
	float ms = (float)((now_s() - r->t0) * 1e3);

	(void)detail;
	pthread_mutex_lock(&l->mu);
	if (rv != NHI_OK)
		l->failed = true;
	else if (l->n < LAT_MAX_PER_THREAD)
		l->lat[l->n++] = ms;
	l->in_flight--;
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
	free(r);
}

static void *loop_main(void *p)
{
	struct loop *l = p;
	struct req *r;
	json_int_t i = 0;

	while (now_s() < l->end && !l->failed) {
		pthread_mutex_lock(&l->mu);
		while (l->in_flight >= l->depth)
			pthread_cond_wait(&l->cv, &l->mu);
		l->in_flight++;
		pthread_mutex_unlock(&l->mu);
		r = malloc(sizeof(*r));
		if (r == NULL)
			break;
		r->l = l;
		r->t0 = now_s();
		if (nhi_audit_submit(l->a, "token_issued",
				     json_pack("{s:s, s:s, s:i, s:I}", "agent", "agent-1", "aud", "gateway", "ttl", 300, "n",
					       i++),
				     req_done, r) != NHI_OK) {
			free(r);
			l->failed = true;
		}
	}
	pthread_mutex_lock(&l->mu);
	while (l->in_flight > 0 && !l->failed)
		pthread_cond_wait(&l->cv, &l->mu);
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

static struct result run_submit(struct nhi_hsm *h, const char *dir, int loops, int depth)
{
	struct result r = {0};
	struct nhi_audit_config c = {.hsm = h};
	struct nhi_audit *a = NULL;
	struct nhi_audit_stats before, after;
	struct loop *l = calloc((size_t)loops, sizeof(*l));
	pthread_t *th = calloc((size_t)loops, sizeof(*th));
	float **lat = calloc((size_t)loops, sizeof(float *));
	size_t *n = calloc((size_t)loops, sizeof(size_t)), total = 0;
	char path[512];
	double start, elapsed;
	int t, started = 0;
	bool failed = false;

	snprintf(path, sizeof(path), "%s/submit-%dx%d.jsonl", dir, loops, depth);
	c.path = path;
	if (l == NULL || th == NULL || lat == NULL || n == NULL || nhi_audit_open(&c, &a) != NHI_OK) {
		fprintf(stderr, "bench_audit: %s\n", nhi_err_detail());
		goto out;
	}
	nhi_audit_get_stats(a, &before);
	start = now_s();
	for (t = 0; t < loops; t++) {
		l[t] = (struct loop){.a = a, .end = start + seconds, .depth = depth,
				     .lat = malloc(LAT_MAX_PER_THREAD * sizeof(float))};
		pthread_mutex_init(&l[t].mu, NULL);
		pthread_cond_init(&l[t].cv, NULL);
		if (l[t].lat == NULL || pthread_create(&th[t], NULL, loop_main, &l[t]) != 0)
			break;
		started++;
	}
	for (t = 0; t < started; t++) {
		pthread_join(th[t], NULL);
		failed = failed || l[t].failed;
		lat[t] = l[t].lat;
		n[t] = l[t].n;
		total += l[t].n;
	}
	elapsed = now_s() - start;
	nhi_audit_get_stats(a, &after);
	r.rate = (double)total / elapsed;
	r.fsync_rate = (double)(after.fsyncs - before.fsyncs) / elapsed;
	r.per_fsync = after.fsyncs > before.fsyncs ? (double)(after.records - before.records) /
							  (double)(after.fsyncs - before.fsyncs)
						    : 0;
	percentiles(lat, n, started, &r);
	r.ok = started == loops && !failed;
out:
	if (a != NULL && nhi_audit_close(a) != NHI_OK) {
		fprintf(stderr, "bench_audit: close: %s\n", nhi_err_detail());
		r.ok = false;
	}
	for (t = 0; l != NULL && t < started; t++) {
		free(l[t].lat);
		pthread_mutex_destroy(&l[t].mu);
		pthread_cond_destroy(&l[t].cv);
	}
	free(l);
	free(th);
	free(lat);
	free(n);
	return r;
}

static const char *fs_name(const char *dir)
{
	struct statfs s;

	if (statfs(dir, &s) != 0)
		return "?";
	switch ((unsigned long)s.f_type) {
	case 0xEF53: return "ext4";
	case 0x58465342: return "xfs";
	case 0x9123683E: return "btrfs";
	case 0x01021994: return "tmpfs (fdatasync is free: figures are not durable ones)";
	case 0x794c7630: return "overlayfs";
	default: return "other";
	}
}

static void row(const char *name, const struct result *r)
{
	if (!r->ok) {
		printf("  %-30s FAILED\n", name);
		return;
	}
	printf("  %-30s %10.0f %10.0f %10.1f %8.2f %8.2f\n", name, r->rate, r->fsync_rate, r->per_fsync, r->p50_ms,
	       r->p99_ms);
}

int main(int argc, char **argv)
{
	static const int threads[] = {1, 8, 50};
	struct nhi_fixture fx;
	struct nhi_hsm *h = NULL;
	struct nhi_hsm_key *k = NULL;
	struct result naive, r[3], sub;
	char name[64];
	size_t i;
	bool ok = true;

	if (argc > 1)
		seconds = atof(argv[1]) > 0 ? atof(argv[1]) : seconds;
	nhi_fixture_setup(&fx, "bench-audit");
	if (nhi_hsm_open(&fx.cfg, &h) != NHI_OK ||
	    nhi_hsm_generate(h, NHI_KEY_EC_P256, NHI_AUDIT_KEY_LABEL_DEFAULT, &k) != NHI_OK) {
		fprintf(stderr, "bench_audit: %s\n", nhi_err_detail());
		nhi_fixture_teardown(&fx);
		return 1;
	}
	printf("  log on %s (%s); checkpoint every %d records or %d s, signed in SoftHSM2; %.0fs per case\n",
	       fs_name(fx.dir), fx.dir, NHI_AUDIT_CHECKPOINT_RECORDS_DEFAULT, NHI_AUDIT_CHECKPOINT_S_DEFAULT, seconds);
	printf("  %-30s %10s %10s %10s %8s %8s\n", "case (every record durable)", "records/s", "fsyncs/s", "rec/fsync",
	       "p50 ms", "p99 ms");
	naive = run_naive(fx.dir);
	row("write+fdatasync per record, 1", &naive);
	ok = ok && naive.ok;
	for (i = 0; i < sizeof(threads) / sizeof(threads[0]); i++) {
		r[i] = run_audit(h, fx.dir, threads[i]);
		snprintf(name, sizeof(name), "nhi_audit, %d thread%s", threads[i], threads[i] > 1 ? "s" : "");
		row(name, &r[i]);
		ok = ok && r[i].ok;
	}
	/* nhid's shape: a few libevent loops, many requests in flight on each */
	sub = run_submit(h, fx.dir, 2, 25);
	row("nhi_audit_submit, 2 loops x 25", &sub);
	ok = ok && sub.ok;
	if (ok && naive.rate > 0)
		printf("  group commit: %.1fx (8 threads), %.1fx (50 threads), %.1fx (2 loops x 25 in flight) the "
		       "per-record-fsync rate\n",
		       r[1].rate / naive.rate, r[2].rate / naive.rate, sub.rate / naive.rate);
	nhi_hsm_key_free(k);
	nhi_hsm_free(h);
	nhi_fixture_teardown(&fx);
	return ok ? 0 : 1;
}
