/*
 * tests/unit/test_audit.c — server/audit.c against a real SoftHSM2 token (no
 * mocks): the chain and its checkpoints verify, concurrent callers share fsyncs
 * (group commit) and all land in one chain, every kind of tampering is named by
 * line, reopening continues the chain, a torn tail after a crash is cut and
 * recorded, a kill -9 under load loses no acknowledged record, and no token, PIN
 * or key reaches the file.
 *
 * The kill -9 test re-executes this binary as a child ("--audit-child") that
 * records from 8 threads and reports each acknowledged record over a pipe.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../common/limits.h"
#include "../../common/pkey.h"
#include "../../server/audit.h"
#include "fixture.h"

#include <errno.h>
#include <glob.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#define AUDIT_LABEL "nhid-audit"
#define CHILD_THREADS 8
#define CHILD_ACKS_BEFORE_KILL 400

static struct nhi_fixture fx;
static struct nhi_hsm *hsm;
static EVP_PKEY *audit_pub;

static int setup(void **state)
{
	struct nhi_hsm_key *k = NULL;

	(void)state;
	nhi_fixture_setup(&fx, "unit-audit");
	if (nhi_hsm_open(&fx.cfg, &hsm) != NHI_OK || nhi_hsm_generate(hsm, NHI_KEY_EC_P256, AUDIT_LABEL, &k) != NHI_OK ||
	    nhi_hsm_pubkey(hsm, k, &audit_pub) != NHI_OK) {
		fprintf(stderr, "setup: %s\n", nhi_err_detail());
		return -1;
	}
	nhi_hsm_key_free(k);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(audit_pub);
	nhi_hsm_free(hsm);
	nhi_fixture_teardown(&fx);
	return 0;
}

/* ---- helpers ---------------------------------------------------------------------- */

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", fx.dir, name);
}

static struct nhi_audit *open_log(const char *path, unsigned every_n, unsigned every_s)
{
	struct nhi_audit_config c = {.path = path, .hsm = hsm, .checkpoint_records = every_n,
				     .checkpoint_seconds = every_s};
	struct nhi_audit *a = NULL;

	if (nhi_audit_open(&c, &a) != NHI_OK)
		fail_msg("nhi_audit_open %s: %s", path, nhi_err_detail());
	return a;
}

static void close_log(struct nhi_audit *a)
{
	if (nhi_audit_close(a) != NHI_OK)
		fail_msg("nhi_audit_close: %s", nhi_err_detail());
}

static void record_n(struct nhi_audit *a, const char *event, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (nhi_audit_record(a, event, json_pack("{s:i, s:s}", "i", i, "sub", "agent-1")) != NHI_OK)
			fail_msg("record %d: %s", i, nhi_err_detail());
}

static void slurp(const char *path, struct nhi_buf *b)
{
	nhi_buf_free(b);
	if (nhi_file_read(path, 64 * 1024 * 1024, b) != NHI_OK)
		fail_msg("read %s: %s", path, nhi_err_detail());
}

static nhi_err verify_buf(const struct nhi_buf *b, EVP_PKEY *pub, struct nhi_audit_report *rep)
{
	return nhi_audit_verify(b->data, b->len, pub, rep);
}

static void verify_ok(const char *path, struct nhi_audit_report *rep)
{
	struct nhi_buf b = {0};

	slurp(path, &b);
	if (verify_buf(&b, audit_pub, rep) != NHI_OK)
		fail_msg("verify %s: %s", path, nhi_err_detail());
	nhi_buf_free(&b);
}

/* a log split into lines (without their newlines) that tests can edit */
struct lines {
	char **l;
	size_t n;
};

static void lines_load(const char *path, struct lines *ls)
{
	struct nhi_buf b = {0};
	char *p, *nl;

	slurp(path, &b);
	ls->l = calloc(b.len + 1, sizeof(char *));
	ls->n = 0;
	for (p = (char *)b.data; *p != '\0'; p = nl + 1) {
		nl = strchr(p, '\n');
		assert_non_null(nl);
		ls->l[ls->n++] = strndup(p, (size_t)(nl - p));
	}
	nhi_buf_free(&b);
}

static void lines_free(struct lines *ls)
{
	size_t i;

	for (i = 0; i < ls->n; i++)
		free(ls->l[i]);
	free(ls->l);
	ls->l = NULL;
	ls->n = 0;
}

/* join with newlines (the last one too, unless `no_final_nl`) */
static void lines_join(const struct lines *ls, struct nhi_buf *out, bool no_final_nl)
{
	size_t i;

	nhi_buf_free(out);
	for (i = 0; i < ls->n; i++) {
		assert_int_equal(nhi_buf_append_str(out, ls->l[i]), NHI_OK);
		if (i + 1 < ls->n || !no_final_nl)
			assert_int_equal(nhi_buf_append(out, "\n", 1), NHI_OK);
	}
}

static bool is_checkpoint(const char *line)
{
	return strstr(line, "\"event\":\"checkpoint\"") != NULL;
}

/* 1-based line number of the first checkpoint at or after line `from` */
static size_t first_checkpoint(const struct lines *ls, size_t from)
{
	size_t i;

	for (i = from - 1; i < ls->n; i++)
		if (is_checkpoint(ls->l[i]))
			return i + 1;
	fail_msg("no checkpoint after line %zu", from);
	return 0;
}

/* what an attacker who can write the file does: recompute prev from line `from` on */
static void rechain(struct lines *ls, size_t from)
{
	uint8_t d[32];
	char hex[65], *p;
	size_t i;

	for (i = from - 1; i < ls->n; i++) {
		assert_int_equal(nhi_sha256(ls->l[i - 1], strlen(ls->l[i - 1]), d), NHI_OK);
		nhi_hex(d, 32, hex);
		p = strstr(ls->l[i], "\"prev\":\"");
		assert_non_null(p);
		memcpy(p + 8, hex, 64);
		if (is_checkpoint(ls->l[i])) { /* its head too (the signature will still fail) */
			p = strstr(ls->l[i], "\"head\":\"");
			assert_non_null(p);
			memcpy(p + 8, hex, 64);
		}
	}
}

static void replace_in(char **line, const char *from, const char *to)
{
	char *p = strstr(*line, from), *n;

	assert_non_null(p);
	n = malloc(strlen(*line) - strlen(from) + strlen(to) + 1);
	memcpy(n, *line, (size_t)(p - *line));
	strcpy(n + (p - *line), to);
	strcat(n, p + strlen(from));
	free(*line);
	*line = n;
}

static json_t *line_json(const char *line)
{
	json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, NULL);

	assert_non_null(j);
	return j;
}

/* expect verification to fail at `line` with `cause` in the detail; *rep is its report */
static void expect_bad_rep(const struct lines *ls, bool no_final_nl, EVP_PKEY *pub, unsigned long long line,
			   const char *cause, struct nhi_audit_report *rep_out)
{
	struct nhi_buf b = {0};
	struct nhi_audit_report rep;
	nhi_err e;

	lines_join(ls, &b, no_final_nl);
	e = verify_buf(&b, pub, &rep);
	if (e == NHI_OK)
		fail_msg("tampered log verified (expected line %llu: %s)", line, cause);
	if (rep.bad_line != line || strstr(nhi_err_detail(), cause) == NULL)
		fail_msg("expected line %llu '%s', got line %llu: %s", line, cause, rep.bad_line, nhi_err_detail());
	nhi_buf_free(&b);
	if (rep_out != NULL)
		*rep_out = rep;
}

static void expect_bad(const struct lines *ls, bool no_final_nl, EVP_PKEY *pub, unsigned long long line,
		       const char *cause)
{
	expect_bad_rep(ls, no_final_nl, pub, line, cause, NULL);
}

/* ---- chain and checkpoints ------------------------------------------------------------- */

static void test_chain_verifies(void **state)
{
	char path[400], fp[65];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct nhi_audit_stats st;
	struct lines ls = {0};
	json_t *first;

	(void)state;
	path_of(path, sizeof(path), "chain.jsonl");
	a = open_log(path, 10, 60);
	record_n(a, "token_issued", 25);
	nhi_audit_get_stats(a, &st);
	assert_int_equal(st.next_seq, st.records);
	assert_false(st.failed);
	close_log(a);
	verify_ok(path, &rep);
	/* audit_open + 25 + audit_close, checkpoints after 10 and 20 records and at close */
	assert_int_equal(rep.records, 27 + 3);
	assert_int_equal(rep.checkpoints, 3);
	assert_int_equal(rep.unsigned_tail, 0);
	assert_int_equal(rep.opens, 1);
	assert_true(rep.signatures_checked);
	assert_int_equal(strlen(rep.first_time), 24);
	assert_true(strcmp(rep.first_time, rep.last_time) <= 0);

	lines_load(path, &ls);
	first = line_json(ls.l[0]);
	assert_string_equal(json_string_value(json_object_get(first, "event")), "audit_open");
	assert_string_equal(json_string_value(json_object_get(first, "log")), "created");
	assert_int_equal(nhi_pkey_fingerprint(audit_pub, fp), NHI_OK);
	assert_string_equal(json_string_value(json_object_get(first, "key_fp")), fp);
	json_decref(first);
	assert_non_null(strstr(ls.l[ls.n - 2], "\"event\":\"audit_close\""));
	assert_true(is_checkpoint(ls.l[ls.n - 1]));
	lines_free(&ls);

	/* without a public key only the chain is checked */
	{
		struct nhi_buf b = {0};

		slurp(path, &b);
		assert_int_equal(verify_buf(&b, NULL, &rep), NHI_OK);
		assert_false(rep.signatures_checked);
		assert_int_equal(rep.checkpoints, 3);
		nhi_buf_free(&b);
	}
	assert_int_equal(nhi_audit_close(NULL), NHI_OK);
	nhi_audit_free(NULL);
}

/* every checkpoint but the last comes after exactly n records; returns how many */
static size_t check_every_n(const char *path, size_t n)
{
	struct lines ls = {0};
	size_t i, since = 0, cps = 0;
	json_t *j;

	lines_load(path, &ls);
	for (i = 0; i < ls.n; i++) {
		if (!is_checkpoint(ls.l[i])) {
			since++;
			continue;
		}
		j = line_json(ls.l[i]);
		assert_int_equal(json_integer_value(json_object_get(j, "head_seq")), (json_int_t)i - 1);
		assert_string_equal(json_string_value(json_object_get(j, "head")),
				    json_string_value(json_object_get(j, "prev")));
		assert_string_equal(json_string_value(json_object_get(j, "alg")), "ES256");
		assert_string_equal(json_string_value(json_object_get(j, "key_label")), AUDIT_LABEL);
		json_decref(j);
		cps++;
		if (i + 1 < ls.n)
			assert_int_equal(since, n);
		else
			assert_true(since > 0 && since <= n); /* the final one, at close */
		since = 0;
	}
	lines_free(&ls);
	return cps;
}

static void test_checkpoint_every_n(void **state)
{
	char path[400];
	struct nhi_audit *a;
	struct nhi_audit_report rep;

	(void)state;
	path_of(path, sizeof(path), "every-n.jsonl");
	a = open_log(path, 5, 3600);
	record_n(a, "resolve_ok", 23);
	close_log(a);
	verify_ok(path, &rep);
	/* 1 open + 23 + 1 close = 25 records: 5 checkpoints, the last one at close */
	assert_int_equal(check_every_n(path, 5), 5);
	assert_int_equal(rep.checkpoints, 5);
}

static void test_checkpoint_every_s(void **state)
{
	char path[400];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct nhi_audit_stats st;
	int i;

	(void)state;
	path_of(path, sizeof(path), "every-s.jsonl");
	a = open_log(path, 1000, 1);
	record_n(a, "reload", 3);
	nhi_audit_get_stats(a, &st);
	assert_int_equal(st.checkpoints, 0);
	/* no more records: the writer's timer must sign the tail by itself */
	for (i = 0; i < 50 && st.checkpoints == 0; i++) {
		usleep(100 * 1000);
		nhi_audit_get_stats(a, &st);
	}
	assert_int_equal(st.checkpoints, 1);
	verify_ok(path, &rep); /* while open: durable means readable */
	assert_int_equal(rep.unsigned_tail, 0);
	assert_int_equal(rep.checkpoints, 1);

	/* an explicit checkpoint */
	record_n(a, "reload", 2);
	assert_int_equal(nhi_audit_checkpoint(a), NHI_OK);
	verify_ok(path, &rep);
	assert_int_equal(rep.checkpoints, 2);
	assert_int_equal(rep.unsigned_tail, 0);
	assert_int_equal(nhi_audit_checkpoint(a), NHI_OK); /* nothing unsigned: nothing written */
	nhi_audit_get_stats(a, &st);
	assert_int_equal(st.checkpoints, 2);
	close_log(a);
}

/* ---- concurrency and group commit ----------------------------------------------------- */

#define CONC_THREADS 8
#define CONC_PER_THREAD 250

struct conc_arg {
	struct nhi_audit *a;
	int t;
	nhi_err rv;
};

static void *conc_worker(void *p)
{
	struct conc_arg *c = p;
	int i;

	c->rv = NHI_OK;
	for (i = 0; i < CONC_PER_THREAD && c->rv == NHI_OK; i++)
		c->rv = nhi_audit_record(c->a, "token_issued", json_pack("{s:i, s:i}", "t", c->t, "i", i));
	return NULL;
}

static void test_concurrent_group_commit(void **state)
{
	char path[400];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct nhi_audit_stats st;
	struct lines ls = {0};
	pthread_t th[CONC_THREADS];
	struct conc_arg args[CONC_THREADS];
	int seen[CONC_THREADS][CONC_PER_THREAD] = {{0}}, last[CONC_THREADS];
	int t, i;
	size_t k;
	json_t *j;

	(void)state;
	path_of(path, sizeof(path), "conc.jsonl");
	a = open_log(path, 100, 60);
	for (t = 0; t < CONC_THREADS; t++) {
		args[t] = (struct conc_arg){.a = a, .t = t};
		assert_int_equal(pthread_create(&th[t], NULL, conc_worker, &args[t]), 0);
	}
	for (t = 0; t < CONC_THREADS; t++) {
		pthread_join(th[t], NULL);
		assert_int_equal(args[t].rv, NHI_OK);
	}
	nhi_audit_get_stats(a, &st);
	print_message("# group commit: %llu lines in %llu fsyncs (largest batch %llu)\n", st.records, st.fsyncs,
		      st.max_batch);
	assert_true(st.records >= CONC_THREADS * CONC_PER_THREAD);
	assert_true(st.fsyncs < st.records); /* batching, not one fsync per record */
	assert_true(st.max_batch > 1);
	assert_int_equal(st.fsyncs, st.batches);
	close_log(a);

	verify_ok(path, &rep);
	lines_load(path, &ls);
	for (t = 0; t < CONC_THREADS; t++)
		last[t] = -1;
	for (k = 0; k < ls.n; k++) {
		if (strstr(ls.l[k], "\"event\":\"token_issued\"") == NULL)
			continue;
		j = line_json(ls.l[k]);
		t = (int)json_integer_value(json_object_get(j, "t"));
		i = (int)json_integer_value(json_object_get(j, "i"));
		json_decref(j);
		assert_in_range(t, 0, CONC_THREADS - 1);
		assert_in_range(i, 0, CONC_PER_THREAD - 1);
		seen[t][i]++;
		assert_true(i > last[t]); /* a caller's records keep its order */
		last[t] = i;
	}
	for (t = 0; t < CONC_THREADS; t++)
		for (i = 0; i < CONC_PER_THREAD; i++)
			assert_int_equal(seen[t][i], 1);
	lines_free(&ls);

	/* batches larger than N still get a checkpoint after exactly every N records */
	path_of(path, sizeof(path), "conc-n3.jsonl");
	a = open_log(path, 3, 60);
	for (t = 0; t < CONC_THREADS; t++) {
		args[t] = (struct conc_arg){.a = a, .t = t};
		assert_int_equal(pthread_create(&th[t], NULL, conc_worker, &args[t]), 0);
	}
	for (t = 0; t < CONC_THREADS; t++) {
		pthread_join(th[t], NULL);
		assert_int_equal(args[t].rv, NHI_OK);
	}
	nhi_audit_get_stats(a, &st);
	assert_true(st.max_batch > 3 + 1);
	close_log(a);
	verify_ok(path, &rep);
	assert_true(check_every_n(path, 3) > (CONC_THREADS * CONC_PER_THREAD) / 3);
}

/* ---- submit: the event-loop server's way ------------------------------------------------ */

#define ASYNC_LOOPS 2
#define ASYNC_PER_LOOP 200
#define ASYNC_DEPTH 25

struct async_loop {
	struct nhi_audit *a;
	const char *path;
	int id;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int in_flight, completed, not_durable, errors;
};

struct async_req {
	struct async_loop *loop;
	int n;
};

/* the writer thread calls this once the record is durable: it must already be in the file */
static void async_done(void *arg, nhi_err rv, const char *detail)
{
	struct async_req *r = arg;
	struct async_loop *l = r->loop;
	struct nhi_buf b = {0};
	char needle[64];

	(void)detail;
	snprintf(needle, sizeof(needle), "\"loop\":%d,\"n\":%d}", l->id, r->n);
	if (nhi_file_read(l->path, 64 * 1024 * 1024, &b) != NHI_OK || strstr((char *)b.data, needle) == NULL)
		__atomic_add_fetch(&l->not_durable, 1, __ATOMIC_SEQ_CST);
	nhi_buf_free(&b);
	pthread_mutex_lock(&l->mu);
	if (rv != NHI_OK)
		l->errors++;
	l->in_flight--;
	l->completed++;
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
	free(r);
}

/* like a libevent worker: never waits for an fsync, keeps ASYNC_DEPTH records in flight */
static void *async_loop_main(void *p)
{
	struct async_loop *l = p;
	struct async_req *r;
	int i;

	for (i = 0; i < ASYNC_PER_LOOP; i++) {
		pthread_mutex_lock(&l->mu);
		while (l->in_flight >= ASYNC_DEPTH)
			pthread_cond_wait(&l->cv, &l->mu);
		l->in_flight++;
		pthread_mutex_unlock(&l->mu);
		r = malloc(sizeof(*r));
		r->loop = l;
		r->n = i;
		if (nhi_audit_submit(l->a, "token_issued", json_pack("{s:i, s:i}", "loop", l->id, "n", i), async_done, r) !=
		    NHI_OK) {
			free(r);
			pthread_mutex_lock(&l->mu);
			l->errors++;
			l->in_flight--;
			pthread_mutex_unlock(&l->mu);
		}
	}
	pthread_mutex_lock(&l->mu);
	while (l->in_flight > 0)
		pthread_cond_wait(&l->cv, &l->mu);
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

static void never_called(void *arg, nhi_err rv, const char *detail)
{
	(void)rv;
	(void)detail;
	*(int *)arg = 1;
}

static void test_async_submit(void **state)
{
	char path[400];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct nhi_audit_stats st;
	struct async_loop loops[ASYNC_LOOPS];
	pthread_t th[ASYNC_LOOPS];
	int t, called = 0;

	(void)state;
	path_of(path, sizeof(path), "async.jsonl");
	a = open_log(path, 100, 60);
	for (t = 0; t < ASYNC_LOOPS; t++) {
		loops[t] = (struct async_loop){.a = a, .path = path, .id = t};
		pthread_mutex_init(&loops[t].mu, NULL);
		pthread_cond_init(&loops[t].cv, NULL);
		assert_int_equal(pthread_create(&th[t], NULL, async_loop_main, &loops[t]), 0);
	}
	for (t = 0; t < ASYNC_LOOPS; t++) {
		pthread_join(th[t], NULL);
		assert_int_equal(loops[t].completed, ASYNC_PER_LOOP);
		assert_int_equal(loops[t].errors, 0);
		assert_int_equal(loops[t].not_durable, 0); /* written before the callback */
		pthread_mutex_destroy(&loops[t].mu);
		pthread_cond_destroy(&loops[t].cv);
	}
	nhi_audit_get_stats(a, &st);
	print_message("# submit: %llu lines in %llu fsyncs (largest batch %llu) from %d loop threads\n", st.records,
		      st.fsyncs, st.max_batch, ASYNC_LOOPS);
	/* two threads, yet many records per fsync: what blocking callers cannot get */
	assert_true(st.max_batch > ASYNC_LOOPS);

	/* refusals are immediate and never call back */
	assert_int_equal(nhi_audit_submit(a, "x", json_pack("{s:s}", "pin", "1"), never_called, &called), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_submit(a, "checkpoint", NULL, never_called, &called), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_submit(a, "x", NULL, NULL, NULL), NHI_ERR_ARG);
	assert_int_equal(called, 0);
	close_log(a);
	verify_ok(path, &rep);
	assert_int_equal(rep.records, st.records + 2); /* + audit_close and the final checkpoint */
}

/* ---- flat records (nhi_audit_submit_kv) ------------------------------------------------- */

struct kv_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
	nhi_err rv;
};

static void kv_done(void *arg, nhi_err rv, const char *detail)
{
	struct kv_wait *w = arg;

	(void)detail;
	pthread_mutex_lock(&w->mu);
	w->done++;
	w->rv = rv;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* the members of line i after its "event" (what the caller gave), or fail */
static const char *members_of(const struct lines *ls, size_t i, const char *event)
{
	char needle[96];
	const char *p;

	snprintf(needle, sizeof(needle), "\"event\":\"%s\",", event);
	assert_true(i < ls->n);
	p = strstr(ls->l[i], needle);
	assert_non_null(p);
	return p + strlen(needle);
}

/*
 * The flat form writes exactly the line the tree form writes for the same values,
 * redactions and truncations included, and refuses what the tree form refuses
 * (plus duplicate names and non-UTF-8 values), with nothing written.
 */
static void test_submit_kv(void **state)
{
	char path[400], token[256], pem[] = "-----BEGIN CERTIFICATE-----\nMIIB\n", long_v[1200], bad_long[1200],
	     ctl[600];
	struct kv_wait w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NHI_OK};
	struct nhi_audit_stats before, after;
	struct nhi_audit_kv many[NHI_AUDIT_FIELDS_MAX + 1], wide[40];
	struct nhi_audit_report rep;
	struct lines ls = {0};
	struct nhi_audit *a;
	int called = 0;
	size_t i;

	(void)state;
	snprintf(token, sizeof(token), "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudC03In0.c2lnbmF0dXJl");
	memset(long_v, 'a', sizeof(long_v) - 1);
	long_v[sizeof(long_v) - 1] = '\0';
	memcpy(long_v + 511, "\xc3\xa9", 2); /* a 2-byte character across the 512-byte cut: cut before it */
	memcpy(bad_long, long_v, sizeof(bad_long));
	bad_long[900] = '\xff'; /* past the cut: still refused */
	path_of(path, sizeof(path), "kv.jsonl");
	a = open_log(path, 1000, 60);
	{
		const struct nhi_audit_kv rec[] = {
			{"sub", "demo-agent", 0}, {"note", "caf\xc3\xa9 \"q\" \\ \n\t\x01", 0}, {"seen", token, 0},
			{"blob", pem, 0},	  {"long", long_v, 0},			     {"exp", NULL, 1893456000LL},
			{"neg", NULL, -42},	  {"empty", "", 0},
		};

		nhi_audit_get_stats(a, &before);
		assert_int_equal(nhi_audit_submit(a, "token_issued",
						  json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:s}", "sub", "demo-agent", "note",
							    "caf\xc3\xa9 \"q\" \\ \n\t\x01", "seen", token, "blob", pem,
							    "long", long_v, "exp", (json_int_t)1893456000LL, "neg",
							    (json_int_t)-42, "empty", ""),
						  kv_done, &w),
				 NHI_OK);
		assert_int_equal(nhi_audit_submit_kv(a, "token_issued", rec, sizeof(rec) / sizeof(rec[0]), kv_done, &w),
				 NHI_OK);
	}
	pthread_mutex_lock(&w.mu);
	while (w.done < 2)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	assert_int_equal(w.rv, NHI_OK);
	nhi_audit_get_stats(a, &after);
	assert_int_equal(after.redactions - before.redactions, 4);  /* the JWT and the PEM, twice */
	assert_int_equal(after.truncations - before.truncations, 2); /* the long value, twice */

	/* refusals: immediate, never called back, nothing written */
	{
		const struct nhi_audit_kv secret[] = {{"pin", "1234", 0}}, reserved[] = {{"seq", NULL, 1}},
					  bad_name[] = {{"Bad-Name", "x", 0}}, twice[] = {{"a", "x", 0}, {"a", "y", 0}},
					  not_utf8[] = {{"a", "\xc3\x28", 0}}, suffix[] = {{"admin_password", "x", 0}},
					  bad_jwt[] = {{"a", "eyJhbGciOiJFUzI1NiJ9.eyJ\xff.c2ln", 0}}, bad_tail[] = {{"a", bad_long, 0}};

		assert_int_equal(nhi_audit_submit_kv(a, "x", secret, 1, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "x", suffix, 1, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "x", reserved, 1, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "x", bad_name, 1, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "x", twice, 2, never_called, &called), NHI_ERR_ARG);
		assert_non_null(strstr(nhi_err_detail(), "'a' is given twice"));
		assert_int_equal(nhi_audit_submit_kv(a, "x", not_utf8, 1, never_called, &called), NHI_ERR_ARG);
		assert_non_null(strstr(nhi_err_detail(), "audit field 'a' is not valid UTF-8"));
		/* checked before redaction and the cut: a JWT-looking or long value is no way round it */
		assert_int_equal(nhi_audit_submit_kv(a, "x", bad_jwt, 1, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "x", bad_tail, 1, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "checkpoint", NULL, 0, never_called, &called), NHI_ERR_ARG);
		assert_int_equal(nhi_audit_submit_kv(a, "x", NULL, 0, NULL, NULL), NHI_ERR_ARG);
	}
	for (i = 0; i < sizeof(many) / sizeof(many[0]); i++) {
		static char names[NHI_AUDIT_FIELDS_MAX + 1][8];

		snprintf(names[i], sizeof(names[i]), "f%zu", i);
		many[i] = (struct nhi_audit_kv){names[i], NULL, (long long)i};
	}
	assert_int_equal(nhi_audit_submit_kv(a, "x", many, NHI_AUDIT_FIELDS_MAX + 1, never_called, &called),
			 NHI_ERR_LIMIT);
	/* values are cut at 512 bytes, but 40 of them escaped six-fold pass the line limit */
	memset(ctl, '\x01', sizeof(ctl) - 1);
	ctl[sizeof(ctl) - 1] = '\0';
	for (i = 0; i < sizeof(wide) / sizeof(wide[0]); i++)
		wide[i] = (struct nhi_audit_kv){many[i].name, ctl, 0};
	assert_int_equal(nhi_audit_submit_kv(a, "x", wide, sizeof(wide) / sizeof(wide[0]), never_called, &called),
			 NHI_ERR_LIMIT);
	assert_non_null(strstr(nhi_err_detail(), "line limit"));
	assert_int_equal(called, 0);
	close_log(a);

	verify_ok(path, &rep);
	lines_load(path, &ls);
	/* audit_open, then the two records, then audit_close and the checkpoint: nothing else */
	assert_int_equal(ls.n, 5);
	assert_string_equal(members_of(&ls, 1, "token_issued"), members_of(&ls, 2, "token_issued"));
	assert_non_null(strstr(ls.l[2], "\"seen\":\"[redacted: looks like a JWT]\""));
	assert_non_null(strstr(ls.l[2], "\"blob\":\"[redacted: looks like PEM]\""));
	assert_non_null(strstr(ls.l[2], "\"note\":\"caf\\u00E9 \\\"q\\\" \\\\ \\n\\t\\u0001\""));
	assert_non_null(strstr(ls.l[2], "aa...[truncated]\""));
	assert_non_null(strstr(ls.l[2], "\"exp\":1893456000,\"neg\":-42,\"empty\":\"\"}"));
	assert_null(strstr(ls.l[2], token));
	lines_free(&ls);
}

/* ---- tampering ---------------------------------------------------------------------------- */

static void make_base(const char *name, char *path, size_t n)
{
	struct nhi_audit *a;

	path_of(path, n, name);
	a = open_log(path, 5, 3600);
	record_n(a, "token_issued", 12);
	close_log(a);
}

static void test_tamper_detected(void **state)
{
	char path[400];
	struct lines ls = {0};
	size_t cp;
	char *tmp, *sig;
	EVP_PKEY *other;

	(void)state;
	make_base("tamper.jsonl", path, sizeof(path));

	/* an edited field: the next line's prev no longer matches */
	lines_load(path, &ls);
	replace_in(&ls.l[2], "\"i\":1,", "\"i\":7,");
	expect_bad(&ls, false, audit_pub, 4, "line 3 was altered");
	lines_free(&ls);

	/* a deleted line */
	lines_load(path, &ls);
	free(ls.l[3]);
	memmove(&ls.l[3], &ls.l[4], (ls.n - 4) * sizeof(char *));
	ls.n--;
	expect_bad(&ls, false, audit_pub, 4, "seq is 4, expected 3");
	lines_free(&ls);

	/* two lines swapped */
	lines_load(path, &ls);
	tmp = ls.l[3];
	ls.l[3] = ls.l[4];
	ls.l[4] = tmp;
	expect_bad(&ls, false, audit_pub, 4, "seq is 4, expected 3");
	lines_free(&ls);

	/* a line inserted (a replayed copy) */
	lines_load(path, &ls);
	ls.l[ls.n] = ls.l[ls.n - 1];
	ls.l[ls.n - 1] = strdup(ls.l[2]);
	ls.n++;
	expect_bad(&ls, false, audit_pub, ls.n - 1, "expected");
	lines_free(&ls);

	/* a forged checkpoint signature */
	lines_load(path, &ls);
	cp = first_checkpoint(&ls, 1);
	sig = strstr(ls.l[cp - 1], "\"sig\":\"") + 7;
	sig[0] = sig[0] == 'A' ? 'B' : 'A';
	expect_bad(&ls, false, audit_pub, cp, "signature does not verify");
	lines_free(&ls);

	/* a signed member of a checkpoint changed, and the chain after it recomputed */
	lines_load(path, &ls);
	cp = first_checkpoint(&ls, 1);
	replace_in(&ls.l[cp - 1], "\"alg\":\"ES256\",", "\"alg\":\"ES256\" ,");
	rechain(&ls, cp + 1);
	expect_bad(&ls, false, audit_pub, cp, "signature does not verify");
	lines_free(&ls);

	/* a record rewritten by someone who recomputes the whole chain: the next
	 * checkpoint's signature covers the old head */
	lines_load(path, &ls);
	replace_in(&ls.l[2], "\"i\":1,", "\"i\":7,");
	rechain(&ls, 4);
	expect_bad(&ls, false, audit_pub, first_checkpoint(&ls, 3), "signature does not verify");
	lines_free(&ls);

	/* a truncated last line */
	lines_load(path, &ls);
	ls.l[ls.n - 1][strlen(ls.l[ls.n - 1]) / 2] = '\0';
	expect_bad(&ls, true, audit_pub, ls.n, "truncated");
	lines_free(&ls);

	/* the beginning cut off */
	lines_load(path, &ls);
	free(ls.l[0]);
	memmove(&ls.l[0], &ls.l[1], (ls.n - 1) * sizeof(char *));
	ls.n--;
	expect_bad(&ls, false, audit_pub, 1, "seq is 1, expected 0");
	lines_free(&ls);

	/* duplicate member names are refused, not resolved */
	lines_load(path, &ls);
	replace_in(&ls.l[1], "\"sub\":", "\"seq\":1,\"sub\":");
	expect_bad(&ls, false, audit_pub, 2, "duplicate");
	lines_free(&ls);

	/* not JSON, an empty line, a bad timestamp */
	lines_load(path, &ls);
	replace_in(&ls.l[4], "{", "[");
	expect_bad(&ls, false, audit_pub, 5, "not JSON");
	lines_free(&ls);
	lines_load(path, &ls);
	ls.l[2][0] = '\0';
	expect_bad(&ls, false, audit_pub, 3, "empty line");
	lines_free(&ls);
	lines_load(path, &ls);
	replace_in(&ls.l[1], "Z\"", "+00:00\"");
	expect_bad(&ls, false, audit_pub, 2, "RFC 3339");
	lines_free(&ls);

	/* the right log, the wrong key */
	other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	assert_non_null(other);
	lines_load(path, &ls);
	expect_bad(&ls, false, other, first_checkpoint(&ls, 1), "given public key");
	lines_free(&ls);
	EVP_PKEY_free(other);

	/* an edit inside the unsigned tail, chain recomputed: undetectable by
	 * design, and reported as unsigned (docs/audit.md) */
	{
		struct nhi_buf b = {0};
		struct nhi_audit_report rep;

		lines_load(path, &ls);
		free(ls.l[--ls.n]); /* drop the final checkpoint */
		replace_in(&ls.l[ls.n - 2], "\"i\":11,", "\"i\":99,");
		rechain(&ls, ls.n);
		lines_join(&ls, &b, false);
		assert_int_equal(verify_buf(&b, audit_pub, &rep), NHI_OK);
		assert_int_equal(rep.unsigned_tail, 4); /* 3 records and audit_close */
		nhi_buf_free(&b);
		lines_free(&ls);
		assert_int_not_equal(nhi_audit_verify((const uint8_t *)"", 0, audit_pub, &rep), NHI_OK);
		assert_int_equal(rep.bad_line, 0);
	}
}

/* after a failure the report vouches only for what the log still proves */
static void test_tamper_report(void **state)
{
	char path[400];
	struct lines ls = {0};
	struct nhi_audit_report rep;
	size_t cp, cp2;
	char *pv;

	(void)state;
	make_base("tamper-report.jsonl", path, sizeof(path));

	/* line 3 edited: line 4's prev names it, so only lines 1-2 stand */
	lines_load(path, &ls);
	replace_in(&ls.l[2], "\"i\":1,", "\"i\":7,");
	expect_bad_rep(&ls, false, audit_pub, 4, "line 3 was altered", &rep);
	assert_int_equal(rep.records, 2);
	assert_int_equal(rep.checkpoints, 0);
	assert_int_equal(rep.unsigned_tail, 2);
	lines_free(&ls);

	/* a record after the first checkpoint rewritten, the chain and heads recomputed:
	 * the next checkpoint fails, and only the lines up to the first one are proven */
	lines_load(path, &ls);
	cp = first_checkpoint(&ls, 1);
	replace_in(&ls.l[cp + 1], "\"i\":", "\"i\":9");
	rechain(&ls, cp + 3);
	cp2 = first_checkpoint(&ls, cp + 1);
	expect_bad_rep(&ls, false, audit_pub, cp2, "signature does not verify", &rep);
	assert_int_equal(rep.records, cp);
	assert_int_equal(rep.checkpoints, 1);
	assert_int_equal(rep.last_checkpoint_line, cp);
	assert_int_equal(rep.unsigned_tail, 0);
	lines_free(&ls);

	/* the first checkpoint's signature forged: nothing is signed */
	lines_load(path, &ls);
	cp = first_checkpoint(&ls, 1);
	replace_in(&ls.l[cp - 1], "\"sig\":\"", "\"sig\":\"AAAA");
	expect_bad_rep(&ls, false, audit_pub, cp, "checkpoint", &rep);
	assert_int_equal(rep.records, 0);
	assert_int_equal(rep.checkpoints, 0);
	lines_free(&ls);

	/* the line after a checkpoint edited where its prev is: the checkpoint's signature
	 * proves the checkpoint intact, so the lines up to it stand; without the key it
	 * could be the altered line */
	lines_load(path, &ls);
	cp = first_checkpoint(&ls, 1);
	pv = strstr(ls.l[cp], "\"prev\":\"") + 8;
	pv[0] = pv[0] == '0' ? '1' : '0';
	expect_bad_rep(&ls, false, audit_pub, cp + 1, "prev does not match", &rep);
	assert_int_equal(rep.records, cp);
	assert_int_equal(rep.checkpoints, 1);
	assert_int_equal(rep.last_checkpoint_line, cp);
	expect_bad_rep(&ls, false, NULL, cp + 1, "prev does not match", &rep);
	assert_int_equal(rep.records, cp - 1);
	assert_int_equal(rep.checkpoints, 0);
	assert_int_equal(rep.last_checkpoint_line, 0);
	assert_int_equal(rep.unsigned_tail, cp - 1);
	lines_free(&ls);

	/* a bad line by itself (not JSON) leaves every line before it standing */
	lines_load(path, &ls);
	replace_in(&ls.l[4], "{", "[");
	expect_bad_rep(&ls, false, audit_pub, 5, "not JSON", &rep);
	assert_int_equal(rep.records, 4);
	lines_free(&ls);
}

/* ---- reopen, torn tails, corrupt tails ------------------------------------------------------- */

static void test_reopen_continues(void **state)
{
	char path[400];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct lines ls = {0};
	size_t i;
	int opens = 0;
	json_t *j;

	(void)state;
	path_of(path, sizeof(path), "reopen.jsonl");
	a = open_log(path, 1000, 60);
	record_n(a, "startup", 3);
	close_log(a);
	a = open_log(path, 1000, 60);
	record_n(a, "startup", 3);
	close_log(a);
	verify_ok(path, &rep);
	assert_int_equal(rep.opens, 2);
	assert_int_equal(rep.records, 2 * (1 + 3 + 1 + 1));
	lines_load(path, &ls);
	for (i = 0; i < ls.n; i++) {
		if (strstr(ls.l[i], "\"event\":\"audit_open\"") == NULL)
			continue;
		j = line_json(ls.l[i]);
		assert_string_equal(json_string_value(json_object_get(j, "log")), opens++ ? "continued" : "created");
		json_decref(j);
	}
	lines_free(&ls);
}

static void append_raw(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_APPEND);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, n), (ssize_t)n);
	close(fd);
}

static void check_torn_repair(const char *name, const void *torn, size_t torn_len)
{
	char path[400], copy[700];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct nhi_buf b = {0};
	struct lines ls = {0};
	size_t i;
	json_t *j = NULL;

	path_of(path, sizeof(path), name);
	a = open_log(path, 4, 60);
	record_n(a, "token_issued", 6);
	/* a crash: nhid dies (no audit_close, no final checkpoint) mid-write */
	close_log(a);
	append_raw(path, torn, torn_len);
	slurp(path, &b);
	assert_int_not_equal(verify_buf(&b, audit_pub, &rep), NHI_OK);
	assert_non_null(strstr(nhi_err_detail(), "truncated"));
	nhi_buf_free(&b);

	a = open_log(path, 4, 60);
	record_n(a, "token_issued", 2);
	close_log(a);
	verify_ok(path, &rep);
	assert_int_equal(rep.opens, 2);
	assert_int_equal(rep.torn_repairs, 1);
	lines_load(path, &ls);
	for (i = 0; i < ls.n && j == NULL; i++)
		if (i > 0 && strstr(ls.l[i], "\"event\":\"audit_open\"") != NULL)
			j = line_json(ls.l[i]);
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(j, "torn_tail_bytes")), (json_int_t)torn_len);
	snprintf(copy, sizeof(copy), "%s", json_string_value(json_object_get(j, "torn_tail_copy")));
	json_decref(j);
	slurp(copy, &b); /* the cut bytes were kept, byte for byte */
	assert_int_equal(b.len, torn_len);
	assert_memory_equal(b.data, torn, torn_len);
	nhi_buf_free(&b);
	lines_free(&ls);
}

static void test_torn_tail_repaired(void **state)
{
	static const char partial[] = "{\"seq\":99,\"time\":\"2026-11-2";
	uint8_t zeros[4096] = {0};
	char path[400];
	struct nhi_audit *a;
	struct nhi_audit_report rep;

	(void)state;
	check_torn_repair("torn-partial.jsonl", partial, strlen(partial));
	/* some filesystems extend the file before its data reaches the disk */
	check_torn_repair("torn-zeros.jsonl", zeros, sizeof(zeros));

	/* a crash during the very first write: nothing complete, a new log */
	path_of(path, sizeof(path), "torn-first.jsonl");
	nhi_fixture_write(path, "{\"seq\":0,\"ti", 0600);
	a = open_log(path, 4, 60);
	close_log(a);
	verify_ok(path, &rep);
	assert_int_equal(rep.opens, 1);
	assert_int_equal(rep.torn_repairs, 1);
}

static void test_corrupt_tail_refused(void **state)
{
	char path[400], src[400];
	struct nhi_audit_config c = {.hsm = hsm};
	struct nhi_audit *a = NULL;
	struct lines ls = {0};
	struct nhi_buf b = {0};

	(void)state;
	make_base("corrupt.jsonl", path, sizeof(path));
	c.path = path;
	append_raw(path, "not a record\n", 13);
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_FORMAT);
	assert_null(a);
	assert_non_null(strstr(nhi_err_detail(), "nhictl audit verify"));

	/* valid lines that do not chain: a replayed line at the end */
	make_base("corrupt2.jsonl", path, sizeof(path));
	lines_load(path, &ls);
	append_raw(path, ls.l[3], strlen(ls.l[3]));
	append_raw(path, "\n", 1);
	lines_free(&ls);
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "do not chain"));

	/* a single line that is not a log's first record */
	make_base("corrupt3-src.jsonl", src, sizeof(src));
	lines_load(src, &ls);
	assert_int_equal(nhi_buf_printf(&b, "%s\n", ls.l[5]), NHI_OK);
	path_of(path, sizeof(path), "corrupt3.jsonl");
	nhi_fixture_write(path, (char *)b.data, 0600);
	lines_free(&ls);
	nhi_buf_free(&b);
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_FORMAT);
}

static void test_open_refusals(void **state)
{
	char path[400], link[400];
	struct nhi_audit_config c = {.hsm = hsm};
	struct nhi_audit *a = NULL, *b = NULL;
	struct nhi_hsm_key *k = NULL;

	(void)state;
	path_of(path, sizeof(path), "loose.jsonl");
	nhi_fixture_write(path, "", 0644);
	c.path = path;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_PERM);
	assert_non_null(strstr(nhi_err_detail(), "chmod 600"));

	path_of(path, sizeof(path), "real.jsonl");
	path_of(link, sizeof(link), "link.jsonl");
	nhi_fixture_write(path, "", 0600);
	assert_int_equal(symlink(path, link), 0);
	c.path = link;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_PERM);
	assert_non_null(strstr(nhi_err_detail(), "symbolic link"));

	path_of(path, sizeof(path), "no-such-dir/audit.jsonl");
	c.path = path;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_NOT_FOUND);

	/* one writer per log */
	path_of(path, sizeof(path), "locked.jsonl");
	c.path = path;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_OK);
	assert_int_equal(nhi_audit_open(&c, &b), NHI_ERR_EXISTS);
	assert_null(b);
	close_log(a);
	a = NULL;

	c.key_label = "no-such-key";
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "no-such-key"));
	assert_int_equal(nhi_hsm_generate(hsm, NHI_KEY_AES256, "audit-aes", &k), NHI_OK);
	nhi_hsm_key_free(k);
	c.key_label = "audit-aes";
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_CONFIG);
	c.key_label = "bad\"label";
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_CONFIG);
	c.key_label = NULL;
	c.checkpoint_records = NHI_AUDIT_CHECKPOINT_RECORDS_MAX + 1;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_CONFIG);
	c.checkpoint_records = 0;
	c.hsm = NULL;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_ARG);
	assert_null(a);
}

/* a log path whose torn-tail copy could not be named whole in the audit_open record is
 * refused at open, before the file is touched: not after a crash, once the tail is cut */
static void test_open_path_refusals(void **state)
{
	static const char partial[] = "{\"seq\":99,\"time\":\"2026-11-2";
	char path[400], src[400], pat[420], big[1024];
	struct nhi_audit_config c = {.hsm = hsm};
	struct nhi_audit *a = NULL;
	struct nhi_buf before = {0}, after = {0};
	size_t dir_len, rest;
	glob_t g;

	(void)state;
	/* not UTF-8 (config paths are not checked for it): a crash left a partial line */
	make_base("utf8-src.jsonl", src, sizeof(src));
	slurp(src, &before);
	path_of(path, sizeof(path), "caf\xe9.jsonl");
	nhi_fixture_write(path, (const char *)before.data, 0600);
	append_raw(path, partial, strlen(partial));
	slurp(path, &before);
	c.path = path;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_CONFIG);
	assert_null(a);
	assert_non_null(strstr(nhi_err_detail(), "not valid UTF-8"));
	slurp(path, &after); /* not cut, no copy made */
	assert_int_equal(after.len, before.len);
	assert_memory_equal(after.data, before.data, before.len);
	snprintf(pat, sizeof(pat), "%s.torn-*", path);
	assert_int_equal(glob(pat, 0, NULL, &g), GLOB_NOMATCH);
	globfree(&g);

	/* too long for the copy's name to fit in a record: refused up to the byte */
	path_of(big, sizeof(big), "");
	dir_len = strlen(big);
	memset(big + dir_len, 'd', 200);
	big[dir_len + 200] = '/';
	rest = (size_t)(NHI_AUDIT_VALUE_MAX_BYTES - strlen(".torn-18446744073709551615--9223372036854775808")) -
	       (dir_len + 201);
	assert_true(rest > 10 && rest < 250);
	memset(big + dir_len + 201, 'f', rest);
	big[dir_len + 201 + rest] = '\0';
	c.path = big;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_NOT_FOUND); /* the longest allowed: no such directory */
	big[dir_len + 201 + rest] = 'f';
	big[dir_len + 202 + rest] = '\0';
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "choose a shorter path"));

	/* a name the secret filter would redact in the record */
	path_of(path, sizeof(path), "eyJhbGci.eyJzdWIi.jsonl");
	c.path = path;
	assert_int_equal(nhi_audit_open(&c, &a), NHI_ERR_CONFIG);
	assert_non_null(strstr(nhi_err_detail(), "looks like a JWT"));
	assert_null(a);
	nhi_buf_free(&before);
	nhi_buf_free(&after);
}

/* ---- secrets ---------------------------------------------------------------------------------- */

static char *b64(const char *s)
{
	struct nhi_buf b = {0};

	assert_int_equal(nhi_b64url_encode((const uint8_t *)s, strlen(s), &b), NHI_OK);
	return (char *)b.data; /* owned by the caller */
}

static void test_no_secrets(void **state)
{
	char path[400], *h, *p, *s, token[1024], hex[65], pin[64];
	uint8_t sigbytes[64], d[32];
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct nhi_audit_stats st;
	struct nhi_buf file = {0}, pin_buf = {0};
	struct lines ls = {0};
	json_t *j;
	char long_value[2000];
	size_t i;

	(void)state;
	h = b64("{\"alg\":\"ES256\",\"kid\":\"kid-1\",\"typ\":\"JWT\"}");
	p = b64("{\"iss\":\"nhid\",\"sub\":\"agent-7\",\"aud\":\"gw\",\"jti\":\"jti-42\",\"exp\":2000000000}");
	memset(sigbytes, 0x5a, sizeof(sigbytes));
	{
		struct nhi_buf sb = {0};

		assert_int_equal(nhi_b64url_encode(sigbytes, 64, &sb), NHI_OK);
		s = (char *)sb.data;
	}
	snprintf(token, sizeof(token), "%s.%s.%s", h, p, s);
	assert_int_equal(nhi_secret_file_read(fx.pin_file, 64, &pin_buf), NHI_OK);
	snprintf(pin, sizeof(pin), "%s", (char *)pin_buf.data);
	nhi_buf_free(&pin_buf);

	path_of(path, sizeof(path), "secrets.jsonl");
	a = open_log(path, 1000, 60);
	/* what the server records, the way it records it */
	assert_int_equal(nhi_audit_record(a, "startup", json_pack("{s:s}", "config_sha256", "ab12")), NHI_OK);
	assert_int_equal(nhi_audit_record_token(a, "token_issued", token, strlen(token), true,
						json_pack("{s:s, s:s, s:i}", "agent", "agent-7", "aud", "gw", "ttl", 300)),
			 NHI_OK);
	assert_int_equal(nhi_audit_record_token(a, "resolve_failed", token, strlen(token), false,
						json_pack("{s:s, s:s}", "caller", "resolver-1", "reason", "expired")),
			 NHI_OK);
	assert_int_equal(nhi_audit_record_token(a, "resolve_failed", "garbage", 7, false,
						json_pack("{s:s}", "reason", "malformed")),
			 NHI_OK);
	assert_int_equal(nhi_audit_record(a, "handshake_rejected",
					  json_pack("{s:s, s:s}", "alert", "certificate unknown", "verify",
						    "unable to get local issuer certificate")),
			 NHI_OK);
	assert_int_equal(nhi_audit_record(a, "admin_reload", json_pack("{s:s, s:s}", "by", "admin-1", "result", "ok")),
			 NHI_OK);

	/* secrets by name are refused outright: nothing is written */
	assert_int_equal(nhi_audit_record(a, "login", json_pack("{s:s}", "pin", pin)), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "token_issued", json_pack("{s:s}", "token", token)), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "admin", json_pack("{s:s}", "admin_password", "x")), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "resolve", json_pack("{s:{s:s}}", "req", "access_token", "x")),
			 NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "rotate", json_pack("{s:s}", "private_key", "x")), NHI_ERR_ARG);
	/* the log's own names and events, and bad names */
	assert_int_equal(nhi_audit_record(a, "resolve", json_pack("{s:i}", "seq", 1)), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "checkpoint", NULL), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "audit_open", NULL), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "Token Issued", NULL), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "x", json_pack("{s:i}", "Bad-Name", 1)), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "x", json_pack("[i]", 1)), NHI_ERR_ARG);
	assert_int_equal(nhi_audit_record(a, "x", json_pack("{s:{s:{s:{s:i}}}}", "a", "b", "c", "d", 1)),
			 NHI_ERR_LIMIT);

	/* secrets in values, from hostile input: redacted, and the event is still recorded */
	snprintf(long_value, sizeof(long_value), "x Bearer %s y", token);
	assert_int_equal(nhi_audit_record(a, "resolve_failed",
					  json_pack("{s:s, s:[s]}", "reason", "bad token", "aud", long_value)),
			 NHI_OK);
	assert_int_equal(nhi_audit_record(a, "resolve_failed",
					  json_pack("{s:s}", "detail",
						    /* a fake, truncated PEM block, split so key scanners do not flag it */
						    "-----BEGIN PRIV" "ATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIV" "ATE KEY-----")),
			 NHI_OK);
	memset(long_value, 'a', sizeof(long_value) - 1);
	long_value[sizeof(long_value) - 1] = '\0';
	assert_int_equal(nhi_audit_record(a, "token_denied", json_pack("{s:s}", "aud", long_value)), NHI_OK);
	nhi_audit_get_stats(a, &st);
	assert_int_equal(st.redactions, 2);
	assert_int_equal(st.truncations, 1);
	close_log(a);

	verify_ok(path, &rep);
	slurp(path, &file);
	assert_null(strstr((char *)file.data, token));
	assert_null(strstr((char *)file.data, p)); /* the claims segment */
	assert_null(strstr((char *)file.data, s)); /* the signature segment */
	assert_null(strstr((char *)file.data, "eyJ"));
	assert_null(strstr((char *)file.data, pin));
	assert_null(strstr((char *)file.data, "BEGIN"));
	assert_null(strstr((char *)file.data, "MIGHAgEA"));
	assert_null(strstr((char *)file.data, long_value));

	/* what the token records do carry: references only */
	assert_int_equal(nhi_sha256(token, strlen(token), d), NHI_OK);
	nhi_hex(d, 32, hex);
	lines_load(path, &ls);
	for (i = 0; i < ls.n; i++) {
		if (strstr(ls.l[i], "\"event\":\"token_issued\"") == NULL)
			continue;
		j = line_json(ls.l[i]);
		assert_string_equal(json_string_value(json_object_get(j, "token_sha256")), hex);
		assert_string_equal(json_string_value(json_object_get(j, "token_sub")), "agent-7");
		assert_string_equal(json_string_value(json_object_get(j, "token_jti")), "jti-42");
		assert_string_equal(json_string_value(json_object_get(j, "token_kid")), "kid-1");
		assert_int_equal(json_integer_value(json_object_get(j, "token_exp")), 2000000000);
		assert_string_equal(json_string_value(json_object_get(j, "token_claims")), "verified");
		json_decref(j);
	}
	assert_non_null(strstr((char *)file.data, "\"token_claims\":\"unverified\""));
	assert_non_null(strstr((char *)file.data, "\"token_malformed\":true"));
	assert_non_null(strstr((char *)file.data, "[redacted: looks like a JWT]"));
	assert_non_null(strstr((char *)file.data, "[redacted: looks like PEM]"));
	assert_non_null(strstr((char *)file.data, "...[truncated]"));
	lines_free(&ls);
	nhi_buf_free(&file);
	free(h);
	free(p);
	free(s);
}

/* ---- the token fails under us: records stay durable, then the log fails closed ------------------ */

static void test_checkpoint_failure(void **state)
{
	char path[400];
	struct nhi_audit_config c = {.hsm = hsm, .key_label = "audit-doomed", .checkpoint_records = 2,
				     .checkpoint_seconds = 60};
	struct nhi_audit *a = NULL;
	struct nhi_audit_report rep;
	struct nhi_audit_stats st;
	struct nhi_hsm_key *k = NULL;
	nhi_err e = NHI_OK;
	int i;

	(void)state;
	path_of(path, sizeof(path), "cp-fail.jsonl");
	c.path = path;
	assert_int_equal(nhi_hsm_generate(hsm, NHI_KEY_EC_P256, "audit-doomed", &k), NHI_OK);
	assert_int_equal(nhi_audit_open(&c, &a), NHI_OK);
	record_n(a, "token_issued", 1); /* open + 1: a checkpoint */
	assert_int_equal(nhi_hsm_destroy(hsm, k), NHI_OK);
	nhi_hsm_key_free(k);
	record_n(a, "token_issued", 2); /* checkpoint due: signing fails, records still durable */
	nhi_audit_get_stats(a, &st);
	assert_int_equal(st.checkpoint_failures, 1);
	assert_false(st.failed);
	for (i = 0; i < 100 && e == NHI_OK; i++) {
		usleep(100 * 1000);
		e = nhi_audit_record(a, "token_issued", NULL);
	}
	assert_int_not_equal(e, NHI_OK);
	assert_non_null(strstr(nhi_err_detail(), "audit checkpoints failed"));
	nhi_audit_get_stats(a, &st);
	assert_true(st.failed);
	assert_int_equal(st.checkpoint_failures, NHI_AUDIT_CHECKPOINT_FAILURES_MAX);
	assert_int_not_equal(nhi_audit_record(a, "token_issued", NULL), NHI_OK); /* stays failed */
	assert_int_not_equal(nhi_audit_close(a), NHI_OK);
	{
		struct nhi_buf b = {0};
		EVP_PKEY *pub = NULL;

		slurp(path, &b);
		/* the failures are in the log itself; the chain is intact */
		assert_int_equal(verify_buf(&b, NULL, &rep), NHI_OK);
		assert_int_equal(rep.checkpoints, 1);
		assert_true(rep.unsigned_tail >= NHI_AUDIT_CHECKPOINT_FAILURES_MAX);
		assert_non_null(strstr((char *)b.data, "\"event\":\"checkpoint_failed\""));
		nhi_buf_free(&b);
		EVP_PKEY_free(pub);
	}
}

/* ---- kill -9 under load ----------------------------------------------------------------------- */

struct child_arg {
	struct nhi_audit *a;
	long long t;
};

static void *child_worker(void *p)
{
	struct child_arg *c = p;
	long long i, k;
	char msg[32];
	int n;

	for (i = 0;; i++) {
		k = c->t * 1000000 + i;
		if (nhi_audit_record(c->a, "load", json_pack("{s:I}", "n", (json_int_t)k)) != NHI_OK) {
			fprintf(stderr, "child: %s\n", nhi_err_detail());
			_exit(3);
		}
		/* acknowledged: report it (one write < PIPE_BUF is atomic) */
		n = snprintf(msg, sizeof(msg), "%lld\n", k);
		if (write(3, msg, (size_t)n) != n)
			_exit(4);
	}
	return NULL;
}

/*
 * argv: --audit-write LOG TOKEN-LABEL PIN-FILE RECORDS [crash]
 * Writes RECORDS server-like events to LOG with the token's nhid-audit key (a
 * checkpoint every 25), then closes the log, or with "crash" exits without
 * closing it (no audit_close, no final checkpoint). tests/integration/test_audit.sh
 * makes its logs with this.
 */
static int audit_write(int argc, char **argv)
{
	struct nhi_hsm_config hc = {.token = argv[3], .pin_file = argv[4], .sessions = 2};
	struct nhi_hsm *h = NULL;
	struct nhi_audit_config ac = {.path = argv[2], .checkpoint_records = 25, .checkpoint_seconds = 3600};
	struct nhi_audit *a = NULL;
	long i, n = strtol(argv[5], NULL, 10);
	nhi_err e = NHI_OK;
	char agent[32];

	if (nhi_hsm_open(&hc, &h) != NHI_OK)
		goto fail;
	ac.hsm = h;
	if (nhi_audit_open(&ac, &a) != NHI_OK)
		goto fail;
	for (i = 0; i < n && e == NHI_OK; i++) {
		snprintf(agent, sizeof(agent), "agent-%ld", i % 7);
		switch (i % 4) {
		case 0:
			e = nhi_audit_record(a, "token_issued", json_pack("{s:s, s:s, s:i, s:s}", "agent", agent, "aud",
									  "gateway", "ttl", 300, "jti", "j"));
			break;
		case 1:
			e = nhi_audit_record(a, "resolve_ok", json_pack("{s:s, s:s}", "caller", "gw-1", "sub", agent));
			break;
		case 2:
			e = nhi_audit_record(a, "resolve_failed",
					     json_pack("{s:s, s:s, s:s}", "caller", "gw-1", "sub", agent, "reason", "expired"));
			break;
		default:
			e = nhi_audit_record(a, "handshake_rejected",
					     json_pack("{s:s, s:s}", "alert", "unknown ca", "verify", "unable to get issuer"));
			break;
		}
	}
	if (e != NHI_OK)
		goto fail;
	if (argc == 7 && strcmp(argv[6], "crash") == 0)
		_exit(0);
	if (nhi_audit_close(a) != NHI_OK) {
		a = NULL;
		goto fail;
	}
	nhi_hsm_free(h);
	return 0;
fail:
	fprintf(stderr, "audit-write: %s\n", nhi_err_detail());
	nhi_audit_free(a);
	nhi_hsm_free(h);
	return 1;
}

/* argv: --audit-child LOG TOKEN-LABEL PIN-FILE */
static int audit_child(char **argv)
{
	struct nhi_hsm_config hc = {.token = argv[3], .pin_file = argv[4], .sessions = 4};
	struct nhi_hsm *h = NULL;
	struct nhi_audit_config ac = {.path = argv[2], .checkpoint_records = 50, .checkpoint_seconds = 1};
	struct nhi_audit *a = NULL;
	struct child_arg args[CHILD_THREADS];
	pthread_t th[CHILD_THREADS];
	int t;

	if (nhi_hsm_open(&hc, &h) != NHI_OK)
		goto fail;
	ac.hsm = h;
	if (nhi_audit_open(&ac, &a) != NHI_OK)
		goto fail;
	for (t = 0; t < CHILD_THREADS; t++) {
		args[t] = (struct child_arg){.a = a, .t = t};
		pthread_create(&th[t], NULL, child_worker, &args[t]);
	}
	for (;;)
		pause(); /* until SIGKILL */
fail:
	fprintf(stderr, "child: %s\n", nhi_err_detail());
	return 2;
}

static void test_kill9_durability(void **state)
{
	char path[400], exe[4096], *argv[6], buf[8192], *nl, *p;
	struct nhi_buf acks = {0};
	struct nhi_audit *a;
	struct nhi_audit_report rep;
	struct lines ls = {0};
	int fds[2], status;
	pid_t pid;
	ssize_t r, n_exe;
	size_t n_acks = 0, i, found, cap = 1 << 20;
	long long *acked = calloc(cap, sizeof(long long));
	char *seen;
	json_t *j;

	(void)state;
	path_of(path, sizeof(path), "kill9.jsonl");
	n_exe = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n_exe > 0);
	exe[n_exe] = '\0';
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		if (dup2(fds[1], 3) < 0)
			_exit(5);
		argv[0] = exe;
		argv[1] = (char *)"--audit-child";
		argv[2] = path;
		argv[3] = fx.label;
		argv[4] = fx.pin_file;
		argv[5] = NULL;
		execv(exe, argv);
		_exit(6);
	}
	close(fds[1]);
	/* read acknowledgements until enough have come, kill -9, then drain the rest */
	for (;;) {
		r = read(fds[0], buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		assert_int_equal(nhi_buf_append(&acks, buf, (size_t)r), NHI_OK);
		for (p = (char *)acks.data, n_acks = 0; (nl = strchr(p, '\n')) != NULL; p = nl + 1)
			n_acks++;
		if (n_acks >= CHILD_ACKS_BEFORE_KILL && pid > 0) {
			kill(pid, SIGKILL);
			assert_int_equal(waitpid(pid, &status, 0), pid);
			assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
			pid = 0;
		}
	}
	close(fds[0]);
	if (pid > 0) { /* the child died by itself */
		waitpid(pid, &status, 0);
		fail_msg("child exited early (status %d) after %zu acks", status, n_acks);
	}
	for (p = (char *)acks.data, n_acks = 0; (nl = strchr(p, '\n')) != NULL && n_acks < cap; p = nl + 1)
		acked[n_acks++] = strtoll(p, NULL, 10);
	print_message("# kill -9 after %zu acknowledged records\n", n_acks);

	/* the next start continues the chain (cutting any partial line) */
	a = open_log(path, 50, 1);
	close_log(a);
	verify_ok(path, &rep);
	assert_int_equal(rep.opens, 2);

	/* every acknowledged record is there */
	lines_load(path, &ls);
	seen = calloc(CHILD_THREADS * 1000000ULL, 1);
	for (i = 0; i < ls.n; i++) {
		if (strstr(ls.l[i], "\"event\":\"load\"") == NULL)
			continue;
		j = line_json(ls.l[i]);
		seen[json_integer_value(json_object_get(j, "n"))] = 1;
		json_decref(j);
	}
	for (i = 0, found = 0; i < n_acks; i++)
		found += seen[acked[i]];
	assert_int_equal(found, n_acks);
	free(seen);
	free(acked);
	lines_free(&ls);
	nhi_buf_free(&acks);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chain_verifies),
		cmocka_unit_test(test_checkpoint_every_n),
		cmocka_unit_test(test_checkpoint_every_s),
		cmocka_unit_test(test_concurrent_group_commit),
		cmocka_unit_test(test_async_submit),
		cmocka_unit_test(test_submit_kv),
		cmocka_unit_test(test_tamper_detected),
		cmocka_unit_test(test_tamper_report),
		cmocka_unit_test(test_reopen_continues),
		cmocka_unit_test(test_torn_tail_repaired),
		cmocka_unit_test(test_corrupt_tail_refused),
		cmocka_unit_test(test_open_refusals),
		cmocka_unit_test(test_open_path_refusals),
		cmocka_unit_test(test_no_secrets),
		cmocka_unit_test(test_checkpoint_failure),
		cmocka_unit_test(test_kill9_durability),
	};

	if (argc == 5 && strcmp(argv[1], "--audit-child") == 0)
		return audit_child(argv);
	if ((argc == 6 || argc == 7) && strcmp(argv[1], "--audit-write") == 0)
		return audit_write(argc, argv);
	return cmocka_run_group_tests(tests, setup, teardown);
}
