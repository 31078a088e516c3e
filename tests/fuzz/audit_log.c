/*
 * tests/fuzz/audit_log.c — audit log verification (nhi_audit_verify, what
 * `nhictl audit verify` runs) on hostile input. The seed corpus holds real logs
 * written by server/audit.c with the SoftHSM2 key whose public half is below
 * (public material only), so the checkpoint signature path runs too, plus
 * crashed, torn and tampered copies of them.
 */
#include "../../server/audit.h"

#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

static const char audit_pub_pem[] = "-----BEGIN PUBLIC KEY-----\n"
				    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9Tf+MwL4J8K591JV/8VTYBaOx59i\n"
				    "xPAFi+IKv9ySRS3mb4KoCzd0cS7Sad99p1WJOudakAtDO/COG63i/EIYhQ==\n"
				    "-----END PUBLIC KEY-----\n";

/* the cause in "line N: <cause>" starts with `what` */
static bool cause_is(const char *what)
{
	const char *d = strstr(nhi_err_detail(), ": ");

	return d != NULL && strncmp(d + 2, what, strlen(what)) == 0;
}

/* after a failure the report vouches only for what the log still proves (server/audit.h) */
static void check_failure(const struct nhi_audit_report *r)
{
	unsigned long long want;

	if (r->bad_line == 0) {
		if (r->records != 0)
			abort();
		return;
	}
	if (cause_is("checkpoint") || cause_is("a checkpoint")) /* the lines since the last good one are unsigned */
		want = r->last_checkpoint_line;
	else if (cause_is("prev does not match")) /* the line before may be the altered one, unless signed */
		want = r->signatures_checked && r->last_checkpoint_line == r->bad_line - 1 ? r->bad_line - 1
											  : r->bad_line - 2;
	else
		want = r->bad_line - 1;
	if (r->records != want || r->last_checkpoint_line > r->records || r->checkpoints > r->records ||
	    r->unsigned_tail != r->records - r->last_checkpoint_line)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static EVP_PKEY *pub;
	struct nhi_audit_report rep, rep_nokey;
	nhi_err e, e_nokey;

	if (pub == NULL) {
		BIO *b = BIO_new_mem_buf(audit_pub_pem, -1);

		pub = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
		BIO_free(b);
		if (pub == NULL)
			abort();
	}
	/* each failure is checked before the next call replaces the detail it reads */
	e = nhi_audit_verify(data, size, pub, &rep);
	if (e != NHI_OK)
		check_failure(&rep);
	e_nokey = nhi_audit_verify(data, size, NULL, &rep_nokey);
	if (e_nokey != NHI_OK)
		check_failure(&rep_nokey);
	if (e == NHI_OK) {
		/* a verified log has a first record, counts that add up, and no bad line */
		if (rep.records == 0 || rep.bad_line != 0 || rep.opens == 0 || rep.checkpoints > rep.records ||
		    rep.unsigned_tail != rep.records - rep.last_checkpoint_line || !rep.signatures_checked ||
		    strlen(rep.first_time) != 24)
			abort();
		/* checking signatures can only refuse more, never less */
		if (e_nokey != NHI_OK || rep_nokey.records != rep.records)
			abort();
	}
	return 0;
}
