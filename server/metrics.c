/* server/metrics.c — counters and latency histograms, rendered as Prometheus text. */
#include "server_internal.h"

#include <stdio.h>

static const char *const route_names[NHI_ROUTE__COUNT] = {"health", "tokens", "resolve", "jwks",
							   "metrics", "admin_reload", "trust_bundle", "sign",
							   "verify", "manifest_verify", "other"};
/* latency bucket upper bounds, microseconds */
static const unsigned long long bounds_us[NHI_LATENCY_BUCKETS] = {100,   250,    500,    1000,   2500,   5000,
								    10000, 25000, 50000, 100000, 250000, 1000000};

void nhi_metrics_observe(struct nhi_metrics *m, enum nhi_route r, int status, unsigned long long us)
{
	int cls = status / 100;
	size_t b;

	if ((unsigned)r >= NHI_ROUTE__COUNT || cls < 1 || cls > 5)
		return;
	atomic_fetch_add(&m->requests[r][cls], 1);
	for (b = 0; b < NHI_LATENCY_BUCKETS && us > bounds_us[b]; b++)
		;
	atomic_fetch_add(&m->latency_bucket[r][b], 1);
	atomic_fetch_add(&m->latency_sum_us[r], us);
}

nhi_err nhi_metrics_render(struct nhi_server *s, struct nhi_buf *o)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_metrics *m = &s->metrics;
	struct nhi_hsm_stats hs;
	struct nhi_store_info si;
	unsigned long long cum, n;
	size_t r, b, cls;

	NHI_TRY(nhi_buf_append_str(o, "# HELP nhid_requests_total HTTP requests by route and status class.\n"
				      "# TYPE nhid_requests_total counter\n"));
	for (r = 0; r < NHI_ROUTE__COUNT; r++)
		for (cls = 1; cls <= 5; cls++)
			if ((n = atomic_load(&m->requests[r][cls])) > 0)
				NHI_TRY(nhi_buf_printf(o, "nhid_requests_total{route=\"%s\",code=\"%zuxx\"} %llu\n",
						       route_names[r], cls, n));
	NHI_TRY(nhi_buf_append_str(o, "# HELP nhid_request_duration_seconds Request latency, handler to reply.\n"
				      "# TYPE nhid_request_duration_seconds histogram\n"));
	for (r = 0; r < NHI_ROUTE__COUNT; r++) {
		cum = 0;
		for (b = 0; b <= NHI_LATENCY_BUCKETS; b++) {
			cum += atomic_load(&m->latency_bucket[r][b]);
			if (b < NHI_LATENCY_BUCKETS)
				NHI_TRY(nhi_buf_printf(o, "nhid_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
						       route_names[r], (double)bounds_us[b] / 1e6, cum));
		}
		NHI_TRY(nhi_buf_printf(o,
				       "nhid_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n"
				       "nhid_request_duration_seconds_sum{route=\"%s\"} %g\n"
				       "nhid_request_duration_seconds_count{route=\"%s\"} %llu\n",
				       route_names[r], cum, route_names[r], (double)atomic_load(&m->latency_sum_us[r]) / 1e6,
				       route_names[r], cum));
	}
	NHI_TRY(nhi_buf_append_str(o, "# HELP nhid_token_errors_total Rejected tokens by reason.\n"
				      "# TYPE nhid_token_errors_total counter\n"));
	for (r = 1; r < NHI_TOKEN_E__COUNT; r++)
		if ((n = atomic_load(&m->token_errors[r])) > 0)
			NHI_TRY(nhi_buf_printf(o, "nhid_token_errors_total{reason=\"%s\"} %llu\n",
					       nhi_token_error_name((enum nhi_token_error)r), n));
	nhi_hsm_get_stats(s->hsm, &hs);
	NHI_TRY(nhi_buf_printf(o,
			       "# TYPE nhid_hsm_operations_total counter\n"
			       "nhid_hsm_operations_total{op=\"sign\"} %llu\n"
			       "# TYPE nhid_hsm_cached_signs_total counter\nnhid_hsm_cached_signs_total %llu\n"
			       "nhid_hsm_operations_total{op=\"verify\"} %llu\n"
			       "nhid_hsm_operations_total{op=\"wrap\"} %llu\n"
			       "nhid_hsm_operations_total{op=\"unwrap\"} %llu\n"
			       "nhid_hsm_operations_total{op=\"crypt\"} %llu\n"
			       "# TYPE nhid_hsm_errors_total counter\nnhid_hsm_errors_total %llu\n"
			       "# TYPE nhid_hsm_session_recoveries_total counter\nnhid_hsm_session_recoveries_total %llu\n"
			       "# HELP nhid_hsm_ec_group_cached_total Curve decodings of the PKCS#11 module answered from the "
			       "P-256 group built once.\n"
			       "# TYPE nhid_hsm_ec_group_cached_total counter\nnhid_hsm_ec_group_cached_total %llu\n",
			       hs.signs, hs.cached_signs, hs.verifies, hs.wraps, hs.unwraps, hs.crypts, hs.errors, hs.recoveries,
			       nhi_hsm_ec_group_cache_hits()));
	if (s->audit != NULL) {
		struct nhi_audit_stats as;

		nhi_audit_get_stats(s->audit, &as);
		NHI_TRY(nhi_buf_printf(o,
				       "# TYPE nhid_audit_records_total counter\nnhid_audit_records_total %llu\n"
				       "# TYPE nhid_audit_checkpoints_total counter\nnhid_audit_checkpoints_total %llu\n"
				       "# TYPE nhid_audit_fsyncs_total counter\nnhid_audit_fsyncs_total %llu\n"
				       "# TYPE nhid_audit_batch_max gauge\nnhid_audit_batch_max %llu\n"
				       "# TYPE nhid_audit_failed gauge\nnhid_audit_failed %d\n",
				       as.records, as.checkpoints, as.fsyncs, as.max_batch, as.failed ? 1 : 0));
	}
	{
		struct nhi_trust *t = nhi_server_trust_get(s);
		unsigned long long hits = 0, misses = 0, claims_hits = 0;

		if (t != NULL)
			nhi_token_verifier_memo_stats(t->verifier, &hits, &misses, &claims_hits);
		nhi_trust_put(t);
		NHI_TRY(nhi_buf_printf(o,
				       "# HELP nhid_token_signature_memo_total Token signature checks by the memo's answer,"
				       " since the trust state was last built.\n"
				       "# TYPE nhid_token_signature_memo_total counter\n"
				       "nhid_token_signature_memo_total{result=\"hit\"} %llu\n"
				       "nhid_token_signature_memo_total{result=\"miss\"} %llu\n"
				       "# HELP nhid_token_claims_memo_hits_total Signature memo hits that took the"
				       " remembered claims too, skipping their parse.\n"
				       "# TYPE nhid_token_claims_memo_hits_total counter\n"
				       "nhid_token_claims_memo_hits_total %llu\n",
				       hits, misses, claims_hits));
	}
	nhi_store_get_info(s->store, &si);
	NHI_TRY(nhi_buf_printf(o,
			       "# TYPE nhid_connections_active gauge\nnhid_connections_active %llu\n"
			       "# TYPE nhid_connections_total counter\nnhid_connections_total %llu\n"
			       "# TYPE nhid_connections_refused_total counter\nnhid_connections_refused_total %llu\n"
			       "# HELP nhid_connections_timed_out_total Connections closed because their TLS handshake"
			       " or a request did not finish in time.\n"
			       "# TYPE nhid_connections_timed_out_total counter\nnhid_connections_timed_out_total %llu\n"
			       "# TYPE nhid_handshakes_rejected_total counter\nnhid_handshakes_rejected_total %llu\n"
			       "# TYPE nhid_reloads_total counter\nnhid_reloads_total{result=\"ok\"} %llu\n"
			       "nhid_reloads_total{result=\"failed\"} %llu\n"
			       "# TYPE nhid_identity_agents gauge\nnhid_identity_agents %llu\n"
			       "# TYPE nhid_identity_backup_serial gauge\nnhid_identity_backup_serial %llu\n"
			       "# TYPE nhid_start_time_seconds gauge\nnhid_start_time_seconds %lld\n",
			       atomic_load(&m->connections_active), atomic_load(&m->connections_total),
			       atomic_load(&m->connections_refused), atomic_load(&m->connections_timed_out),
			       atomic_load(&m->handshakes_rejected),
			       atomic_load(&m->reloads), atomic_load(&m->reload_failures), (unsigned long long)si.agents,
			       (unsigned long long)si.serial, s->started_at));
	NHI_TRY(nhi_buf_append_str(o, "# HELP nhid_worker_connections Open connections of each worker loop (spread evenly).\n"
				      "# TYPE nhid_worker_connections gauge\n"));
	for (r = 0; r < s->cfg.threads && s->workers != NULL; r++)
		NHI_TRY(nhi_buf_printf(o, "nhid_worker_connections{worker=\"%zu\"} %u\n", r,
				       atomic_load(&s->workers[r].conns)));
	if (s->watcher != NULL) {
		static const char *const results[3] = {"applied", "rejected", "failed"};
		unsigned k, i;

		NHI_TRY(nhi_buf_append_str(o, "# HELP nhid_updates_total Update packages processed, by kind and result.\n"
					      "# TYPE nhid_updates_total counter\n"));
		for (k = 0; k <= NHI_UPDATE_KIND__COUNT; k++) /* the last: packages whose kind was never parsed */
			for (i = 0; i < 3; i++)
				NHI_TRY(nhi_buf_printf(o, "nhid_updates_total{kind=\"%s\",result=\"%s\"} %llu\n",
						       k < NHI_UPDATE_KIND__COUNT
							       ? nhi_update_kind_name((enum nhi_update_kind)k)
							       : "unknown",
						       results[i], atomic_load(&m->updates[k][i])));
		NHI_TRY(nhi_buf_printf(o, "# TYPE nhid_trust_bundle_version gauge\nnhid_trust_bundle_version %llu\n",
				       atomic_load(&m->trust_bundle_version)));
		/* a bundle stays in service past its expires_at (docs/updates.md): this is what to alert on */
		NHI_TRY(nhi_buf_printf(o,
				       "# HELP nhid_trust_bundle_expires_at The trust bundle in service's expires_at (unix "
				       "seconds): ship the next bundle before it.\n"
				       "# TYPE nhid_trust_bundle_expires_at gauge\nnhid_trust_bundle_expires_at %lld\n",
				       (long long)atomic_load(&m->trust_bundle_expires_at)));
	}
	rv = NHI_OK;
out:
	return rv;
}
