/*
 * tests/unit/test_provisioning.c — provisioning/: the ceremony config's validation and
 * the ceremony transcript's verification (no token needed: the transcript is the seed
 * of the transcript fuzz target, signed by the dev root below).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../common/nhi.h"
#include "../../provisioning/prov_internal.h"
#include "../fixtures/dev_root.h"

#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the root that signed tests/fuzz/corpus/transcript/dev.jsonl */
static const char root_pem[] = NHI_TEST_DEV_ROOT_PEM;
#define DEV_TRANSCRIPT "tests/fuzz/corpus/transcript/dev.jsonl"

static X509 *load_root(void)
{
	BIO *b = BIO_new_mem_buf(root_pem, -1);
	X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);

	BIO_free(b);
	assert_non_null(x);
	return x;
}

/* dev.jsonl with the first `from` in its last line replaced by `to` */
static void edit_last_line(struct nhi_buf *out, const char *from, const char *to)
{
	struct nhi_buf in = {0};
	const char *text, *last, *hit;
	size_t len;

	assert_int_equal(nhi_file_read(DEV_TRANSCRIPT, 1 << 20, &in), NHI_OK);
	text = (const char *)in.data;
	len = in.len;
	assert_true(len > 1 && text[len - 1] == '\n');
	for (last = text + len - 1; last > text && last[-1] != '\n'; last--)
		;
	hit = strstr(last, from);
	assert_non_null(hit);
	assert_int_equal(nhi_buf_append(out, text, (size_t)(hit - text)), NHI_OK);
	assert_int_equal(nhi_buf_append_str(out, to), NHI_OK);
	assert_int_equal(nhi_buf_append(out, hit + strlen(from), len - (size_t)(hit - text) - strlen(from)), NHI_OK);
	nhi_buf_free(&in);
}

static void test_transcript_dev_verifies(void **state)
{
	struct nhi_buf t = {0};
	X509 *root = load_root();
	size_t n = 0;

	(void)state;
	edit_last_line(&t, "\"type\":\"signature\"", "\"type\":\"signature\"");
	assert_int_equal(nhi_transcript_verify(t.data, t.len, root, &n), NHI_OK);
	assert_int_equal(n, 10);
	nhi_buf_free(&t);
	X509_free(root);
}

/*
 * The signature record is not covered by its own signature: every field in it must be
 * checked, or an edited line still verified "OK" (signed_sha256 claiming another digest,
 * another key or alg, a claim added to the record).
 */
static void test_transcript_signature_record_edited(void **state)
{
	static const struct {
		const char *from, *to, *want;
	} rows[] = {
		{"\"signed_sha256\":\"870f", "\"signed_sha256\":\"970f", "signed_sha256"},
		{"\"alg\":\"ES256\"", "\"alg\":\"ES384\"", "alg"},
		{"\"alg\":\"ES256\"", "\"alg\":\"none\"", "alg"},
		{"\"key\":\"nhid-root\"", "\"key\":\"nhid-tls\"", "key"},
		{"\"type\":\"signature\"", "\"type\":\"signature\",\"witnessed_by\":\"the board\"", "witnessed_by"},
		{"\"sig\":", "\"note\":\"all keys extractable\",\"sig\":", "note"},
		{"\"time\":\"2026-11-23T15:04:59Z\"", "\"time\":5", "time"},
	};
	X509 *root = load_root();
	struct nhi_buf t = {0};
	size_t i, n;
	nhi_err e;

	(void)state;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		edit_last_line(&t, rows[i].from, rows[i].to);
		n = 99;
		e = nhi_transcript_verify(t.data, t.len, root, &n);
		if (e == NHI_OK || strstr(nhi_err_detail(), rows[i].want) == NULL ||
		    strstr(nhi_err_detail(), "line 10") == NULL)
			fail_msg("row %zu (%s): %s, detail '%s'", i, rows[i].to, nhi_err_name(e), nhi_err_detail());
		assert_int_equal(n, 0);
		nhi_buf_free(&t);
	}
	X509_free(root);
}

static const char cfg_base[] = "[ceremony]\ntoken = t\nout_dir = out\ntrust_domain = nhid.test\nserver_dns = localhost\n";

/* the base config with `extra` lines; root_cn and server_cn defaulted unless extra sets them */
static nhi_err parse_with(const char *extra, struct nhi_ceremony_config *cfg)
{
	char text[2048];

	snprintf(text, sizeof(text), "%s%s%s%s", cfg_base, strstr(extra, "root_cn =") ? "" : "root_cn = root\n",
		 strstr(extra, "server_cn =") ? "" : "server_cn = nhid\n", extra);
	return nhi_ceremony_config_parse(text, strlen(text), cfg);
}

/*
 * Subject text is checked as what it becomes: a UTF8String of at most 64 characters
 * (RFC 5280 ub-common-name / ub-organization-name). Invalid UTF-8 passed the config
 * check and failed only at the root certificate, after the five keys were made.
 */
static void test_config_subject_text(void **state)
{
	static const struct {
		const char *line;
		bool ok;
	} rows[] = {
		{"organization = Example Site\n", true},
		{"organization = Caf\xc3\xa9 M\xc3\xbcller\n", true},       /* UTF-8 é, ü */
		{"organization = \xe6\x97\xa5\xe6\x9c\xac\n", true},         /* 日本 */
		{"organization = Te\xffst\n", false},                        /* not UTF-8 */
		{"organization = Caf\xc3\n", false},                         /* truncated sequence */
		{"organization = Caf\xc0\xa9\n", false},                     /* overlong form */
		{"organization = a\xed\xa0\x80z\n", false},                  /* UTF-16 surrogate */
		{"organization = a\xf4\x90\x80\x80z\n", false},              /* above U+10FFFF */
		{"organization = a\xc2\x85z\n", false},                      /* C1 control U+0085 */
		{"root_cn = Te\xffst root\n", false},
		{"server_cn = \x80nhid\n", false},
	};
	struct nhi_ceremony_config cfg;
	size_t i;
	nhi_err e;

	(void)state;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		e = parse_with(rows[i].line, &cfg);
		if ((e == NHI_OK) != rows[i].ok)
			fail_msg("row %zu (%s): %s %s", i, rows[i].line, nhi_err_name(e), nhi_err_detail());
		if (!rows[i].ok && strstr(nhi_err_detail(), "UTF-8") == NULL)
			fail_msg("row %zu: the error does not say what is wrong: %s", i, nhi_err_detail());
	}
}

/* nothing the root signs may outlive it: server_days and agent_days are at most root_days */
static void test_config_days_within_root(void **state)
{
	static const struct {
		const char *lines, *want;
	} rows[] = {
		{"root_days = 30\nserver_days = 30\nagent_days = 30\n", NULL},
		{"root_days = 30\nserver_days = 365\nagent_days = 30\n", "'server_days' is 365, beyond root_days 30"},
		{"root_days = 30\nserver_days = 30\n", "'agent_days' is 90, beyond root_days 30"},
		{"root_days = 60\n", "'server_days' is 365, beyond root_days 60"},
	};
	struct nhi_ceremony_config cfg;
	size_t i;
	nhi_err e;

	(void)state;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		e = parse_with(rows[i].lines, &cfg);
		if (rows[i].want == NULL ? e != NHI_OK : e == NHI_OK || strstr(nhi_err_detail(), rows[i].want) == NULL)
			fail_msg("row %zu: %s %s", i, nhi_err_name(e), nhi_err_detail());
	}
}

/* an issuer past its notAfter is refused before anything is made: the cut of notAfter to
 * the issuer's would otherwise give a certificate that ends before it starts */
static void test_issue_under_expired_root_refused(void **state)
{
	struct nhi_profiles *p = NULL;
	uint8_t sha[32];
	X509 *root = X509_new(), *out = NULL;
	struct nhi_cert_request req = {.profile = "agent", .cn = "a", .days = 30};

	(void)state;
	assert_non_null(root);
	assert_int_equal(nhi_profiles_load("openssl.cnf", &p, sha), NHI_OK);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(root), -10 * 86400));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(root), -86400));
	req.issuer = root;
	assert_int_equal(nhi_cert_issue(p, &req, &out), NHI_ERR_EXPIRED);
	assert_null(out);
	assert_non_null(strstr(nhi_err_detail(), "has expired"));
	X509_free(root);
	nhi_profiles_free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_transcript_dev_verifies),
		cmocka_unit_test(test_transcript_signature_record_edited),
		cmocka_unit_test(test_config_subject_text),
		cmocka_unit_test(test_config_days_within_root),
		cmocka_unit_test(test_issue_under_expired_root_refused),
	};

	return cmocka_run_group_tests_name("provisioning", tests, NULL, NULL);
}
