/*
 * tests/unit/test_update.c — server/update.h: the signed envelope, update packages
 * (threshold of distinct signers, every refusal reason), apply into a state dir
 * (atomic commit, rollback protection, crash recovery, clock rule), the trust
 * bundle's TUF-style rotation chain, and model manifests. One signer signs in a
 * real SoftHSM2 token (nhi_hsm_sign); the others are software P-256 keys, since a
 * threshold test needs several custodians.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../common/limits.h"
#include "../../common/pkey.h"
#include "../../hsm/hsm.h"
#include "../../server/update.h"
#include "fixture.h"

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOW 1800000000LL
#define DAY 86400
#define NSIGNERS 5

static struct {
	struct nhi_fixture fx;
	struct nhi_hsm *hsm;
	struct nhi_hsm_key *hkey;
	EVP_PKEY *hpub;             /* the token signer's public key */
	EVP_PKEY *k[NSIGNERS];      /* software custodians */
	EVP_PKEY *stranger;         /* in no bundle */
	char ca_pem[8192];
	struct nhi_keyset *ks;      /* k[0..2], threshold 2 in most tests */
	char dir[300];              /* scratch state dir, fresh per test */
} g;

/* ---- helpers -------------------------------------------------------------------- */

static EVP_PKEY *new_key(void)
{
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

	assert_non_null(pk);
	return pk;
}

/* Sign doc (type t) in software with key and merge; returns the new document. */
static void sign_soft(enum nhi_doc_type t, struct nhi_buf *doc, EVP_PKEY *key)
{
	struct nhi_buf msg = {0}, next = {0};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[80], raw[64];
	size_t der_len = sizeof(der);

	assert_int_equal(nhi_doc_signing_input(t, doc->data, doc->len, &msg), NHI_OK);
	assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
	assert_int_equal(EVP_DigestSign(md, der, &der_len, msg.data, msg.len), 1);
	assert_int_equal(nhi_ecdsa_der_to_raw(der, der_len, raw), NHI_OK);
	assert_int_equal(nhi_doc_add_signature(t, doc->data, doc->len, key, raw, &next), NHI_OK);
	nhi_buf_free(doc);
	*doc = next;
	nhi_buf_free(&msg);
	EVP_MD_CTX_free(md);
}

/* Same, with the key in the token. */
static void sign_hsm(enum nhi_doc_type t, struct nhi_buf *doc)
{
	struct nhi_buf msg = {0}, next = {0};
	uint8_t sig[64];
	size_t sig_len = 0;

	assert_int_equal(nhi_doc_signing_input(t, doc->data, doc->len, &msg), NHI_OK);
	assert_int_equal(nhi_hsm_sign(g.hsm, g.hkey, msg.data, msg.len, sig, &sig_len), NHI_OK);
	assert_int_equal(sig_len, 64);
	assert_int_equal(nhi_doc_add_signature(t, doc->data, doc->len, g.hpub, sig, &next), NHI_OK);
	nhi_buf_free(doc);
	*doc = next;
	nhi_buf_free(&msg);
}

static void make_pkg(struct nhi_buf *out, enum nhi_update_kind kind, uint64_t version, const char *id,
		     const char *body, int64_t created, int64_t expires)
{
	struct nhi_update_create_req req = {
		.id = id, .kind = kind, .version = version, .created_at = created, .expires_at = expires,
		.body = (const uint8_t *)body, .body_len = strlen(body),
	};
	assert_int_equal(nhi_update_create(&req, out), NHI_OK);
}

static void init_check(struct nhi_update_check *c)
{
	memset(c, 0, sizeof(*c));
	c->signers = g.ks;
	c->threshold = 2;
	c->now = NOW;
}

static enum nhi_update_reason verify_reason(const struct nhi_buf *doc, const struct nhi_update_check *c)
{
	struct nhi_update_info info;
	enum nhi_update_reason why = NHI_UPDATE_OK;
	nhi_err e = nhi_update_verify(doc->data, doc->len, c, &info, NULL, &why);

	if (e == NHI_OK)
		assert_int_equal(why, NHI_UPDATE_OK);
	else {
		assert_int_not_equal(why, NHI_UPDATE_OK);
		/* the detail names the reason */
		assert_non_null(strstr(nhi_err_detail(), nhi_update_reason_name(why)));
	}
	return why;
}

/* A bundle with signers s[0..n-1], threshold m, version v; signed by the keys in `by`. */
static void make_bundle(struct nhi_buf *out, uint64_t v, EVP_PKEY *const *s, size_t n, unsigned m,
			EVP_PKEY *const *by, size_t n_by, int64_t expires)
{
	struct nhi_bundle_create_req req = {
		.version = v, .expires_at = expires, .ca_pem = g.ca_pem, .jwks = "{\"keys\":[]}",
		.signers = s, .n_signers = n, .threshold = m, .manifest = &g.k[4], .n_manifest = 1,
	};
	size_t i;

	assert_int_equal(nhi_bundle_create(&req, out), NHI_OK);
	for (i = 0; i < n_by; i++)
		sign_soft(NHI_DOC_BUNDLE, out, by[i]);
}

static void self_signed_ca(EVP_PKEY *key, char *pem, size_t n)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long len;

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"update test root", -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, name);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	PEM_write_bio_X509(b, x);
	len = BIO_get_mem_data(b, &data);
	assert_true((size_t)len < n);
	memcpy(pem, data, (size_t)len);
	pem[len] = '\0';
	BIO_free(b);
	X509_NAME_free(name);
	X509_free(x);
}

static int setup(void **state)
{
	size_t i;

	(void)state;
	nhi_fixture_setup(&g.fx, "unit-update");
	if (nhi_hsm_open(&g.fx.cfg, &g.hsm) != NHI_OK ||
	    nhi_hsm_generate(g.hsm, NHI_KEY_EC_P256, "custodian-1", &g.hkey) != NHI_OK ||
	    nhi_hsm_pubkey(g.hsm, g.hkey, &g.hpub) != NHI_OK)
		return -1;
	for (i = 0; i < NSIGNERS; i++)
		g.k[i] = new_key();
	g.stranger = new_key();
	self_signed_ca(g.k[0], g.ca_pem, sizeof(g.ca_pem));
	if (nhi_keyset_new(&g.ks) != NHI_OK)
		return -1;
	for (i = 0; i < 3; i++)
		if (nhi_keyset_add(g.ks, g.k[i]) != NHI_OK)
			return -1;
	return 0;
}

static int teardown(void **state)
{
	size_t i;

	(void)state;
	nhi_keyset_free(g.ks);
	for (i = 0; i < NSIGNERS; i++)
		EVP_PKEY_free(g.k[i]);
	EVP_PKEY_free(g.stranger);
	EVP_PKEY_free(g.hpub);
	nhi_hsm_key_free(g.hkey);
	nhi_hsm_free(g.hsm);
	nhi_fixture_teardown(&g.fx);
	return 0;
}

static int dir_setup(void **state)
{
	(void)state;
	snprintf(g.dir, sizeof(g.dir), "%s/state-XXXXXX", g.fx.dir);
	return mkdtemp(g.dir) == NULL ? -1 : 0;
}

static void write_file(const char *path, const struct nhi_buf *b)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(b->data, 1, b->len, f), b->len);
	fclose(f);
}

/* Whether g.dir/rel exists (not following a symlink). */
static bool exists(const char *rel)
{
	char p[1024];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", g.dir, rel);
	return lstat(p, &st) == 0;
}

/* ---- keysets and the envelope ------------------------------------------------------ */

static void test_keyset_rules(void **state)
{
	struct nhi_keyset *ks = NULL;
	char kid[44];

	(void)state;
	assert_int_equal(nhi_keyset_new(&ks), NHI_OK);
	assert_int_equal(nhi_keyset_add(ks, g.k[0]), NHI_OK);
	assert_int_equal(nhi_keyset_add(ks, g.k[0]), NHI_ERR_EXISTS);
	assert_int_equal(nhi_keyset_count(ks), 1);
	assert_int_equal(nhi_pkey_thumbprint(g.k[0], kid), NHI_OK);
	assert_ptr_equal(nhi_keyset_get(ks, kid), g.k[0]);
	assert_null(nhi_keyset_get(ks, "nope"));
	nhi_keyset_free(ks);
	nhi_keyset_free(NULL);
}

static void test_add_signature_checks_and_replaces(void **state)
{
	struct nhi_buf doc = {0}, out = {0};
	uint8_t junk[64] = {1};
	unsigned n = 0;

	(void)state;
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "revoke agent-7", NOW, NOW + DAY);
	/* a signature that does not verify is never merged */
	assert_int_equal(nhi_doc_add_signature(NHI_DOC_UPDATE, doc.data, doc.len, g.k[0], junk, &out), NHI_ERR_VERIFY);
	assert_int_equal(out.len, 0);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[0]);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[0]); /* re-signing replaces, no duplicate entry */
	assert_int_equal(nhi_doc_count_signers(NHI_DOC_UPDATE, doc.data, doc.len, g.ks, &n), NHI_OK);
	assert_int_equal(n, 1);
	assert_null(strstr(strstr((const char *)doc.data, "keyid") + 1, "keyid"));
	/* a signature for one document type never counts for another */
	assert_int_equal(nhi_doc_count_signers(NHI_DOC_BUNDLE, doc.data, doc.len, g.ks, &n), NHI_OK);
	assert_int_equal(n, 0);
	nhi_buf_free(&doc);
}

/* ---- threshold ---------------------------------------------------------------------- */

static void test_threshold_m_minus_1_refused(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_update_check c;

	(void)state;
	init_check(&c);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "revoke", NOW, NOW + DAY);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_THRESHOLD); /* 0 of 2 */
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[0]);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_THRESHOLD); /* 1 of 2 */
	c.threshold = 3;
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[1]);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_THRESHOLD); /* 2 of 3 */
	nhi_buf_free(&doc);
}

static void test_threshold_m_distinct_accepted(void **state)
{
	struct nhi_buf doc = {0}, body = {0};
	struct nhi_update_check c;
	struct nhi_update_info info;
	enum nhi_update_reason why;

	(void)state;
	init_check(&c);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "revoke agent-7", NOW, NOW + DAY);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[0]);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[2]);
	assert_int_equal(nhi_update_verify(doc.data, doc.len, &c, &info, &body, &why), NHI_OK);
	assert_int_equal(info.signers, 2);
	assert_int_equal(info.kind, NHI_UPDATE_REVOCATION);
	assert_int_equal(info.version, 1);
	assert_string_equal(info.id, "r1");
	assert_memory_equal(body.data, "revoke agent-7", body.len);
	nhi_buf_free(&doc);
	nhi_buf_free(&body);
}

/* Duplicate the first signature entry n times (what a hostile relay could do). */
static void duplicate_first_sig(struct nhi_buf *doc, size_t n)
{
	json_t *o = json_loadb((const char *)doc->data, doc->len, 0, NULL), *sigs;
	char *text;
	size_t i;

	assert_non_null(o);
	sigs = json_object_get(o, "signatures");
	for (i = 0; i < n; i++)
		json_array_append(sigs, json_array_get(sigs, 0));
	text = json_dumps(o, JSON_COMPACT);
	nhi_buf_free(doc);
	assert_int_equal(nhi_buf_append_str(doc, text), NHI_OK);
	free(text);
	json_decref(o);
}

static void test_threshold_copies_of_one_key_refused(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_update_check c;
	unsigned n = 0;

	(void)state;
	init_check(&c);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "revoke", NOW, NOW + DAY);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[1]);
	duplicate_first_sig(&doc, 2); /* three identical entries by one key */
	assert_int_equal(nhi_doc_count_signers(NHI_DOC_UPDATE, doc.data, doc.len, g.ks, &n), NHI_OK);
	assert_int_equal(n, 1);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_THRESHOLD);
	nhi_buf_free(&doc);
}

static void test_signer_not_in_bundle_ignored(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_update_check c;
	struct nhi_update_info info;
	enum nhi_update_reason why;

	(void)state;
	init_check(&c);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "revoke", NOW, NOW + DAY);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[0]);
	sign_soft(NHI_DOC_UPDATE, &doc, g.stranger);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[3]); /* a real key, but not in this set */
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_THRESHOLD);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[1]);
	assert_int_equal(nhi_update_verify(doc.data, doc.len, &c, &info, NULL, &why), NHI_OK);
	assert_int_equal(info.signers, 2);
	nhi_buf_free(&doc);
}

static void test_hsm_custodian_signature_counts(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_keyset *ks = NULL;
	struct nhi_update_check c;
	struct nhi_update_info info;
	enum nhi_update_reason why;

	(void)state;
	assert_int_equal(nhi_keyset_new(&ks), NHI_OK);
	assert_int_equal(nhi_keyset_add(ks, g.hpub), NHI_OK);
	assert_int_equal(nhi_keyset_add(ks, g.k[0]), NHI_OK);
	init_check(&c);
	c.signers = ks;
	make_pkg(&doc, NHI_UPDATE_CERT_ROTATION, 4, "tls-2027", "chain+wrapped key", NOW, NOW + DAY);
	sign_hsm(NHI_DOC_UPDATE, &doc);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[0]);
	assert_int_equal(nhi_update_verify(doc.data, doc.len, &c, &info, NULL, &why), NHI_OK);
	assert_int_equal(info.signers, 2);
	nhi_keyset_free(ks);
	nhi_buf_free(&doc);
}

/* ---- every refusal reason ------------------------------------------------------------- */

static void signed2(struct nhi_buf *doc)
{
	sign_soft(NHI_DOC_UPDATE, doc, g.k[0]);
	sign_soft(NHI_DOC_UPDATE, doc, g.k[1]);
}

/* Re-wrap a hand-written payload (so that malformed ones can be signed). */
static void raw_pkg(struct nhi_buf *doc, const char *payload)
{
	nhi_buf_free(doc);
	assert_int_equal(nhi_doc_wrap((const uint8_t *)payload, strlen(payload), doc), NHI_OK);
	signed2(doc);
}

/* Replace `from` by `to` (same length) inside the payload, keeping the signatures. */
static void tamper_payload(struct nhi_buf *doc, const char *from, const char *to)
{
	json_t *o = json_loadb((const char *)doc->data, doc->len, 0, NULL);
	struct nhi_buf p = {0}, enc = {0};
	char *hit, *text;

	assert_non_null(o);
	assert_int_equal(nhi_doc_payload(NHI_DOC_UPDATE, doc->data, doc->len, &p), NHI_OK);
	hit = strstr((char *)p.data, from);
	assert_non_null(hit);
	assert_int_equal(strlen(from), strlen(to));
	memcpy(hit, to, strlen(to));
	assert_int_equal(nhi_b64url_encode(p.data, p.len, &enc), NHI_OK);
	json_object_set_new(o, "payload", json_string((const char *)enc.data));
	text = json_dumps(o, JSON_COMPACT);
	nhi_buf_free(doc);
	assert_int_equal(nhi_buf_append_str(doc, text), NHI_OK);
	free(text);
	json_decref(o);
	nhi_buf_free(&p);
	nhi_buf_free(&enc);
}

static void test_refusal_reasons(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_update_check c;

	(void)state;
	init_check(&c);
	/* expired */
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "x", NOW - 2 * DAY, NOW - DAY);
	signed2(&doc);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_EXPIRED);
	nhi_buf_free(&doc);
	/* created far in the future */
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "x", NOW + 3600, NOW + DAY);
	signed2(&doc);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_NOT_YET_VALID);
	nhi_buf_free(&doc);
	/* replayed and older versions */
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 5, "r5", "x", NOW, NOW + DAY);
	signed2(&doc);
	c.last_version[NHI_UPDATE_REVOCATION] = 5;
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_REPLAYED);
	c.last_version[NHI_UPDATE_REVOCATION] = 6;
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_ROLLBACK);
	/* the same version of ANOTHER kind is independent */
	c.last_version[NHI_UPDATE_REVOCATION] = 0;
	c.last_version[NHI_UPDATE_CERT_ROTATION] = 9;
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_OK);
	/* a kind this receiver does not take */
	c.kinds_allowed = 1u << NHI_UPDATE_CERT_ROTATION;
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_KIND_DENIED);
	c.kinds_allowed = 0;
	/* tampered body (checksum fixed up too): the signatures no longer cover it */
	tamper_payload(&doc, "\"body\":\"eA\",\"body_sha256\":\"2d71", "\"body\":\"eQ\",\"body_sha256\":\"a1fc");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_THRESHOLD);
	/* unknown kind, signed */
	raw_pkg(&doc, "{\"id\":\"a\",\"kind\":\"firmware\",\"version\":1,\"created_at\":1800000000,\"expires_at\":"
		      "1800086400,\"body\":\"eA\",\"body_sha256\":"
		      "\"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\"}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_KIND_UNKNOWN);
	/* signed, but the body does not match its checksum */
	raw_pkg(&doc, "{\"id\":\"a\",\"kind\":\"revocation\",\"version\":1,\"created_at\":1800000000,\"expires_at\":"
		      "1800086400,\"body\":\"eQ\",\"body_sha256\":"
		      "\"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\"}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_CHECKSUM);
	/* the same with body "x": accepted (the vector above is SHA-256("x")) */
	raw_pkg(&doc, "{\"id\":\"a\",\"kind\":\"revocation\",\"version\":1,\"created_at\":1800000000,\"expires_at\":"
		      "1800086400,\"body\":\"eA\",\"body_sha256\":"
		      "\"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\"}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_OK);
	/* format: unknown member, duplicate member, missing member, bad types */
	raw_pkg(&doc, "{\"id\":\"a\",\"kind\":\"revocation\",\"version\":1,\"created_at\":1800000000,\"expires_at\":"
		      "1800086400,\"body\":\"eA\",\"body_sha256\":"
		      "\"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\",\"extra\":1}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT);
	raw_pkg(&doc, "{\"id\":\"a\",\"id\":\"b\",\"kind\":\"revocation\",\"version\":1}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT);
	raw_pkg(&doc, "{\"id\":\"a\",\"kind\":\"revocation\",\"version\":\"1\",\"created_at\":1800000000,"
		      "\"expires_at\":1800086400,\"body\":\"eA\",\"body_sha256\":"
		      "\"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\"}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT);
	raw_pkg(&doc, "{\"id\":\"../etc\",\"kind\":\"revocation\",\"version\":1}");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT);
	raw_pkg(&doc, "[1]");
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT);
	nhi_buf_free(&doc);
	/* envelope level */
	assert_int_equal(nhi_buf_append_str(&doc, "{\"payload\":\"e30\",\"signatures\":[{\"keyid\":\"x\",\"sig\":\"\"}]}"),
			 NHI_OK);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT);
	nhi_buf_free(&doc);
	assert_int_equal(nhi_buf_append_str(&doc, "{\"payload\":\"e30=\",\"signatures\":[]}"), NHI_OK);
	assert_int_equal(verify_reason(&doc, &c), NHI_UPDATE_E_FORMAT); /* padding: not strict base64url */
	nhi_buf_free(&doc);
}

static void test_create_refuses_bad_requests(void **state)
{
	struct nhi_buf out = {0};
	struct nhi_update_create_req req = {
		.id = "ok", .kind = NHI_UPDATE_REVOCATION, .version = 1, .created_at = NOW, .expires_at = NOW + 1,
		.body = (const uint8_t *)"x", .body_len = 1,
	};

	(void)state;
	req.id = "has space";
	assert_int_equal(nhi_update_create(&req, &out), NHI_ERR_ARG);
	req.id = "ok";
	req.version = 0;
	assert_int_equal(nhi_update_create(&req, &out), NHI_ERR_ARG);
	req.version = 1;
	req.expires_at = NOW;
	assert_int_equal(nhi_update_create(&req, &out), NHI_ERR_ARG);
	req.expires_at = NOW + 1;
	req.kind = NHI_UPDATE_KIND__COUNT;
	assert_int_equal(nhi_update_create(&req, &out), NHI_ERR_ARG);
	req.kind = NHI_UPDATE_REVOCATION;
	req.body_len = 0;
	assert_int_equal(nhi_update_create(&req, &out), NHI_ERR_LIMIT);
	assert_int_equal(out.len, 0);
}

/* ---- trust bundle ------------------------------------------------------------------- */

static void test_bundle_chain_of_three_and_skips(void **state)
{
	struct nhi_buf b1 = {0}, b2 = {0}, b3 = {0}, b3own = {0}, b2exp = {0};
	EVP_PKEY *s1[3] = {g.k[0], g.k[1], g.k[2]}, *s2[3] = {g.k[1], g.k[2], g.k[3]}, *s3[2] = {g.k[3], g.hpub};
	EVP_PKEY *by2[3] = {g.k[0], g.k[1], g.k[3]}; /* 2 of v1's (k0,k1) + own (k1,k3) */
	struct nhi_bundle *b = NULL, *next = NULL;
	enum nhi_bundle_reason why;
	const uint8_t *docs[3];
	size_t lens[3], bad;
	char pin[65];

	(void)state;
	make_bundle(&b1, 1, s1, 3, 2, s1, 2, NOW + 365 * DAY);
	make_bundle(&b2, 2, s2, 3, 2, by2, 3, NOW + 365 * DAY);
	make_bundle(&b3, 3, s3, 2, 1, NULL, 0, NOW + 365 * DAY);
	sign_soft(NHI_DOC_BUNDLE, &b3, g.k[2]); /* v2 signer */
	sign_soft(NHI_DOC_BUNDLE, &b3, g.k[1]); /* v2 signer */
	sign_hsm(NHI_DOC_BUNDLE, &b3);          /* own signer (threshold 1), in the token */
	assert_int_equal(nhi_bundle_parse(b1.data, b1.len, &b, &why), NHI_OK);
	snprintf(pin, sizeof(pin), "%s", nhi_bundle_fingerprint(b));
	nhi_bundle_free(b);
	b = NULL;

	docs[0] = b1.data, lens[0] = b1.len, docs[1] = b2.data, lens[1] = b2.len, docs[2] = b3.data, lens[2] = b3.len;
	assert_int_equal(nhi_bundle_verify_chain(docs, lens, 3, pin, NOW, &b, &why, &bad), NHI_OK);
	assert_int_equal(nhi_bundle_version(b), 3);
	assert_int_equal(nhi_bundle_threshold(b), 1);
	assert_int_equal(nhi_keyset_count(nhi_bundle_update_signers(b)), 2);
	assert_non_null(strstr(nhi_bundle_ca_pem(b), "BEGIN CERTIFICATE"));
	assert_string_equal(nhi_bundle_jwks(b), "{\"keys\":[]}");
	assert_int_equal(nhi_bundle_document(b)->len, b3.len);
	nhi_bundle_free(b);
	b = NULL;

	/* a skipped version: v1 -> v3 */
	docs[1] = b3.data, lens[1] = b3.len;
	assert_int_not_equal(nhi_bundle_verify_chain(docs, lens, 2, pin, NOW, &b, &why, &bad), NHI_OK);
	assert_int_equal(why, NHI_BUNDLE_E_VERSION);
	assert_int_equal(bad, 1);
	assert_non_null(strstr(nhi_err_detail(), "never skipped"));
	/* a replay of v1 as "next" */
	docs[1] = b1.data, lens[1] = b1.len;
	assert_int_equal(nhi_bundle_verify_chain(docs, lens, 2, pin, NOW, &b, &why, &bad), NHI_ERR_ROLLBACK);
	assert_int_equal(why, NHI_BUNDLE_E_VERSION);
	/* the wrong pin */
	docs[0] = b2.data, lens[0] = b2.len;
	assert_int_not_equal(nhi_bundle_verify_chain(docs, lens, 1, pin, NOW, &b, &why, &bad), NHI_OK);
	assert_int_equal(why, NHI_BUNDLE_E_PIN);
	/* v2 signed by its own keys only, none of v1's beyond one */
	make_bundle(&b3own, 2, s2, 3, 2, &s2[1], 2, NOW + 365 * DAY); /* k2, k3: only k2 is v1's */
	docs[0] = b1.data, lens[0] = b1.len, docs[1] = b3own.data, lens[1] = b3own.len;
	assert_int_not_equal(nhi_bundle_verify_chain(docs, lens, 2, pin, NOW, &b, &why, &bad), NHI_OK);
	assert_int_equal(why, NHI_BUNDLE_E_PREV_THRESHOLD);
	/* v2 signed by v1's keys but not a threshold of its own */
	nhi_buf_free(&b3own);
	make_bundle(&b3own, 2, s2, 3, 2, s1, 2, NOW + 365 * DAY); /* k0, k1: only k1 is v2's */
	docs[1] = b3own.data, lens[1] = b3own.len;
	assert_int_not_equal(nhi_bundle_verify_chain(docs, lens, 2, pin, NOW, &b, &why, &bad), NHI_OK);
	assert_int_equal(why, NHI_BUNDLE_E_SELF_THRESHOLD);
	/* expired last bundle; an expired intermediate is fine */
	make_bundle(&b2exp, 2, s2, 3, 2, by2, 3, NOW - 1);
	docs[1] = b2exp.data, lens[1] = b2exp.len;
	assert_int_equal(nhi_bundle_verify_chain(docs, lens, 2, pin, NOW, &b, &why, &bad), NHI_ERR_EXPIRED);
	assert_int_equal(why, NHI_BUNDLE_E_EXPIRED);
	docs[2] = b3.data, lens[2] = b3.len;
	assert_int_equal(nhi_bundle_verify_chain(docs, lens, 3, pin, NOW, &b, &why, &bad), NHI_OK);
	/* one step API */
	assert_int_equal(nhi_bundle_verify_next(b, b1.data, b1.len, NOW, &next, &why), NHI_ERR_ROLLBACK);
	assert_null(next);
	nhi_bundle_free(b);
	nhi_buf_free(&b1);
	nhi_buf_free(&b2);
	nhi_buf_free(&b3);
	nhi_buf_free(&b3own);
	nhi_buf_free(&b2exp);
}

static void test_bundle_format_refusals(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_bundle *b = NULL;
	enum nhi_bundle_reason why;
	struct nhi_bundle_create_req req = {
		.version = 1, .expires_at = NOW, .ca_pem = "not a cert", .jwks = "{\"keys\":[]}",
		.signers = g.k, .n_signers = 2, .threshold = 3,
	};
	static const char *const bad[] = {
		"{\"type\":\"nhid-trust-bundle\"}",
		"{\"type\":\"other\",\"version\":1}",
		"{\"type\":\"nhid-trust-bundle\",\"version\":1,\"expires_at\":1,\"ca_certs\":[\"x\"]}",
	};
	size_t i;

	(void)state;
	assert_int_equal(nhi_bundle_create(&req, &doc), NHI_ERR_ARG); /* threshold > signers */
	req.threshold = 2;
	assert_int_equal(nhi_bundle_create(&req, &doc), NHI_ERR_FORMAT); /* no certificate */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		nhi_buf_free(&doc);
		assert_int_equal(nhi_doc_wrap((const uint8_t *)bad[i], strlen(bad[i]), &doc), NHI_OK);
		assert_int_equal(nhi_bundle_parse(doc.data, doc.len, &b, &why), NHI_ERR_FORMAT);
		assert_int_equal(why, NHI_BUNDLE_E_FORMAT);
		assert_null(b);
	}
	nhi_buf_free(&doc);
}

/* ---- apply -------------------------------------------------------------------------- */

static struct nhi_bundle *state_with_bundle(void)
{
	struct nhi_buf b1 = {0};
	struct nhi_bundle *b = NULL;
	enum nhi_bundle_reason why;

	make_bundle(&b1, 1, g.k, 3, 2, g.k, 2, NOW + 365 * DAY);
	assert_int_equal(nhi_bundle_parse(b1.data, b1.len, &b, &why), NHI_OK);
	assert_int_equal(nhi_update_init_state(g.dir, b1.data, b1.len, nhi_bundle_fingerprint(b), NOW), NHI_OK);
	assert_int_equal(nhi_update_init_state(g.dir, b1.data, b1.len, nhi_bundle_fingerprint(b), NOW),
			 NHI_ERR_EXISTS);
	nhi_bundle_free(b);
	b = NULL;
	assert_int_equal(nhi_update_load_bundle(g.dir, &b), NHI_OK);
	/* the same document from a file; a missing or foreign file is named */
	{
		struct nhi_bundle *fb = NULL;
		char path[600];

		snprintf(path, sizeof(path), "%s/trust-bundle.json", g.dir);
		assert_int_equal(nhi_bundle_load_file(path, &fb), NHI_OK);
		assert_string_equal(nhi_bundle_fingerprint(fb), nhi_bundle_fingerprint(b));
		nhi_bundle_free(fb);
		fb = NULL;
		snprintf(path, sizeof(path), "%s/no-such-bundle.json", g.dir);
		assert_int_equal(nhi_bundle_load_file(path, &fb), NHI_ERR_NOT_FOUND);
		snprintf(path, sizeof(path), "%s/update-state.json", g.dir);
		assert_int_not_equal(nhi_bundle_load_file(path, &fb), NHI_OK);
		assert_non_null(strstr(nhi_err_detail(), path));
		assert_null(fb);
	}
	nhi_buf_free(&b1);
	return b;
}

/* cfg for applying in g.dir at `now` with the state's bundle (returned: the caller frees it) */
static struct nhi_bundle *apply_cfg(struct nhi_update_apply_cfg *cfg, int64_t now)
{
	struct nhi_bundle *b = state_with_bundle();

	cfg->state_dir = g.dir;
	cfg->bundle = b;
	cfg->now = now;
	return b;
}

static void drop(const char *name, const struct nhi_buf *doc, char *path, size_t n)
{
	snprintf(path, n, "%s/%s", g.dir, name);
	write_file(path, doc);
}

/* a package (valid NOW to NOW + DAY) signed by two of the keys, dropped as ID.json */
static void drop_signed(struct nhi_buf *doc, enum nhi_update_kind kind, uint64_t version, const char *id,
			const char *body, char *path, size_t n)
{
	char name[128];

	make_pkg(doc, kind, version, id, body, NOW, NOW + DAY);
	signed2(doc);
	snprintf(name, sizeof(name), "%s.json", id);
	drop(name, doc, path, n);
}

static void test_apply_commits_and_refuses(void **state)
{
	struct nhi_bundle *b;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result res;
	struct nhi_update_state st;
	struct nhi_buf doc = {0}, body = {0};
	char path[600], bpath[600];

	(void)state;
	b = apply_cfg(&cfg, NOW);
	drop_signed(&doc, NHI_UPDATE_REVOCATION, 3, "rev-3", "revoke agent-9", path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_true(res.applied);
	assert_true(exists("applied/rev-3.json"));
	assert_true(exists("applied/rev-3.json.reason"));
	assert_false(exists("rev-3.json"));
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_int_equal(st.version[NHI_UPDATE_REVOCATION], 3);
	assert_int_equal(st.time_high, NOW);
	assert_int_equal(nhi_update_state_body_path(g.dir, &st, NHI_UPDATE_REVOCATION, bpath, sizeof(bpath)), NHI_OK);
	assert_int_equal(nhi_file_read(bpath, 1024, &body), NHI_OK);
	assert_memory_equal(body.data, "revoke agent-9", body.len);
	assert_int_equal(nhi_update_state_body_path(g.dir, &st, NHI_UPDATE_CERT_ROTATION, bpath, sizeof(bpath)),
			 NHI_ERR_NOT_FOUND);

	/* the same file again (copied back after the move): idempotent, not re-applied */
	drop("rev-3.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_true(exists("applied/rev-3.json.1"));
	nhi_buf_free(&doc);

	/* a different package with the same version: replayed, to rejected/ with its reason */
	drop_signed(&doc, NHI_UPDATE_REVOCATION, 3, "rev-3b", "revoke all", path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_ROLLBACK);
	assert_false(res.applied);
	assert_int_equal(res.why, NHI_UPDATE_E_REPLAYED);
	assert_true(exists("rejected/rev-3b.json"));
	nhi_buf_free(&body);
	snprintf(bpath, sizeof(bpath), "%s/rejected/rev-3b.json.reason", g.dir);
	assert_int_equal(nhi_file_read(bpath, 4096, &body), NHI_OK);
	assert_non_null(strstr((const char *)body.data, "rejected: replayed"));
	nhi_buf_free(&doc);
	/* older */
	drop_signed(&doc, NHI_UPDATE_REVOCATION, 2, "rev-2", "revoke", path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_ROLLBACK);
	assert_int_equal(res.why, NHI_UPDATE_E_ROLLBACK);
	nhi_buf_free(&doc);
	/* one signature short */
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 4, "rev-4", "revoke", NOW, NOW + DAY);
	sign_soft(NHI_DOC_UPDATE, &doc, g.k[2]);
	drop("rev-4.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_VERIFY);
	assert_int_equal(res.why, NHI_UPDATE_E_THRESHOLD);
	assert_true(exists("rejected/rev-4.json.reason"));
	/* state untouched by refusals */
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_int_equal(st.version[NHI_UPDATE_REVOCATION], 3);
	nhi_buf_free(&doc);
	nhi_buf_free(&body);
	nhi_bundle_free(b);
}

#define HEX64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* whether update-state.json holds `text` */
static bool state_has(const char *text)
{
	struct nhi_buf f = {0};
	char path[600];
	bool has;

	snprintf(path, sizeof(path), "%s/update-state.json", g.dir);
	assert_int_equal(nhi_file_read(path, 65536, &f), NHI_OK);
	has = strstr((const char *)f.data, text) != NULL;
	nhi_buf_free(&f);
	return has;
}

/*
 * Every commit says "recorded":false until the receiver's audit record is durable and
 * it calls nhi_update_state_mark_recorded (nhid at startup records a commit still
 * unrecorded, marked recovered): only that kind's mark, only for the committed package.
 */
static void test_apply_unrecorded_until_marked(void **state)
{
	struct nhi_bundle *b;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result res;
	struct nhi_update_state st;
	struct nhi_buf doc = {0}, bad = {0};
	uint8_t rev_sha[32], other[32];
	char path[600];

	(void)state;
	b = apply_cfg(&cfg, NOW);
	drop_signed(&doc, NHI_UPDATE_REVOCATION, 3, "rev-3", "revoke agent-9", path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	memcpy(rev_sha, res.info.package_sha256, 32);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_true(st.unrecorded[NHI_UPDATE_REVOCATION]);
	assert_false(st.unrecorded[NHI_UPDATE_MODEL_MANIFEST]);
	assert_true(state_has("\"recorded\": false"));
	/* another package's hash is not the committed one: refused, the mark stays */
	memcpy(other, rev_sha, 32);
	other[0] ^= 1;
	assert_int_equal(nhi_update_state_mark_recorded(g.dir, NHI_UPDATE_REVOCATION, other), NHI_ERR_NOT_FOUND);
	assert_non_null(strstr(nhi_err_detail(), "is not the committed one"));
	assert_int_equal(nhi_update_state_mark_recorded(g.dir, NHI_UPDATE_CERT_ROTATION, rev_sha), NHI_ERR_NOT_FOUND);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_true(st.unrecorded[NHI_UPDATE_REVOCATION]);
	/* the right one: cleared, nothing else changed; again: a no-op */
	assert_int_equal(nhi_update_state_mark_recorded(g.dir, NHI_UPDATE_REVOCATION, rev_sha), NHI_OK);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_false(st.unrecorded[NHI_UPDATE_REVOCATION]);
	assert_int_equal(st.version[NHI_UPDATE_REVOCATION], 3);
	assert_memory_equal(st.package_sha256[NHI_UPDATE_REVOCATION], rev_sha, 32);
	assert_int_equal(st.time_high, NOW);
	assert_false(state_has("recorded"));
	assert_int_equal(nhi_update_state_mark_recorded(g.dir, NHI_UPDATE_REVOCATION, rev_sha), NHI_OK);
	/* the committed package found again is only moved: no new mark */
	drop("rev-3.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_true(res.info.committed);
	assert_false(state_has("recorded"));
	nhi_buf_free(&doc);
	/* the next commit marks its own kind only */
	drop_signed(&doc, NHI_UPDATE_MODEL_MANIFEST, 1, "mm-1", "manifest", path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_true(st.unrecorded[NHI_UPDATE_MODEL_MANIFEST]);
	assert_false(st.unrecorded[NHI_UPDATE_REVOCATION]);
	/* "recorded" is a boolean (true: as if absent) */
	snprintf(path, sizeof(path), "%s/update-state.json", g.dir);
	assert_int_equal(nhi_buf_append_str(&bad, "{\"format\":1,\"time_high\":0,\"kinds\":{\"revocation\":{\"version\":1,"
					     "\"package_sha256\":\"" HEX64 "\",\"recorded\":true}}}"),
			 NHI_OK);
	write_file(path, &bad);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_false(st.unrecorded[NHI_UPDATE_REVOCATION]);
	nhi_buf_reset(&bad);
	assert_int_equal(nhi_buf_append_str(&bad, "{\"format\":1,\"time_high\":0,\"kinds\":{\"revocation\":{\"version\":1,"
					     "\"package_sha256\":\"" HEX64 "\",\"recorded\":\"no\"}}}"),
			 NHI_OK);
	write_file(path, &bad);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "revocation.recorded is not true or false"));
	nhi_buf_free(&bad);
	nhi_buf_free(&doc);
	nhi_bundle_free(b);
}

static nhi_err refuse_prepare(void *arg, const struct nhi_update_info *info, const uint8_t *body, size_t len)
{
	(void)arg, (void)info, (void)body, (void)len;
	return nhi_err_set(NHI_ERR_VERIFY, "certificate does not chain to the trust root");
}

static void test_apply_prepare_hook_and_kind_filter(void **state)
{
	struct nhi_bundle *b;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result res;
	struct nhi_update_state st;
	struct nhi_buf doc = {0};
	char path[600];

	(void)state;
	b = apply_cfg(&cfg, NOW);
	cfg.prepare = refuse_prepare;
	drop_signed(&doc, NHI_UPDATE_CERT_ROTATION, 1, "tls-1", "chain", path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_VERIFY);
	assert_int_equal(res.why, NHI_UPDATE_E_PREPARE);
	assert_non_null(strstr(res.detail, "does not chain"));
	cfg.prepare = NULL;
	cfg.kinds_allowed = 1u << NHI_UPDATE_REVOCATION;
	drop("tls-1.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_DENIED);
	assert_int_equal(res.why, NHI_UPDATE_E_KIND_DENIED);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_int_equal(st.version[NHI_UPDATE_CERT_ROTATION], 0);
	nhi_buf_free(&doc);
	nhi_bundle_free(b);
}

static void test_apply_trust_bundle_rotation(void **state)
{
	struct nhi_bundle *b, *nb = NULL;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result res;
	struct nhi_buf b2 = {0}, b4 = {0}, doc = {0};
	EVP_PKEY *s2[2] = {g.k[3], g.k[4]}, *by[4] = {g.k[0], g.k[1], g.k[3], g.k[4]};
	char path[600];

	(void)state;
	b = apply_cfg(&cfg, NOW);
	/* a skipped version inside a correctly signed package is refused */
	make_bundle(&b4, 4, s2, 2, 2, by, 4, NOW + 365 * DAY);
	make_pkg(&doc, NHI_UPDATE_TRUST_BUNDLE, 4, "tb-4", (const char *)b4.data, NOW, NOW + DAY);
	signed2(&doc);
	drop("tb-4.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_VERIFY);
	assert_int_equal(res.why, NHI_UPDATE_E_BUNDLE_CHAIN);
	nhi_buf_free(&doc);

	make_bundle(&b2, 2, s2, 2, 2, by, 4, NOW + 365 * DAY);
	make_pkg(&doc, NHI_UPDATE_TRUST_BUNDLE, 2, "tb-2", (const char *)b2.data, NOW, NOW + DAY);
	signed2(&doc);
	drop("tb-2.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_int_equal(nhi_update_load_bundle(g.dir, &nb), NHI_OK);
	assert_int_equal(nhi_bundle_version(nb), 2);
	assert_int_equal(nhi_keyset_count(nhi_bundle_update_signers(nb)), 2);
	assert_int_equal(nhi_bundle_threshold(nb), 2);
	nhi_buf_free(&doc);
	/* from now on the old custodians alone are not enough */
	cfg.bundle = nb;
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "rev-1", "x", NOW, NOW + DAY);
	signed2(&doc); /* k0, k1: v1's signers */
	drop("rev-1.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_VERIFY);
	assert_int_equal(res.why, NHI_UPDATE_E_THRESHOLD);
	nhi_buf_free(&doc);
	nhi_buf_free(&b2);
	nhi_buf_free(&b4);
	nhi_bundle_free(nb);
	nhi_bundle_free(b);
}

/*
 * A package committed before a crash and still in the watched directory is recognised
 * by (version, package_sha256) before any signature or time check: its signers rotated
 * out by the very bundle it installed, or its expiry passed while nhid was down, it is
 * moved to applied/, never rejected.
 */
static void test_committed_package_recognised_first(void **state)
{
	struct nhi_bundle *b, *nb = NULL;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result res;
	struct nhi_update_state st;
	struct nhi_buf b2 = {0}, doc = {0}, rev = {0}, reason = {0};
	EVP_PKEY *s2[2] = {g.k[3], g.k[4]}, *by[4] = {g.k[0], g.k[1], g.k[3], g.k[4]};
	char path[600], rpath[700];

	(void)state;
	b = apply_cfg(&cfg, NOW);
	make_bundle(&b2, 2, s2, 2, 2, by, 4, NOW + 365 * DAY);
	make_pkg(&doc, NHI_UPDATE_TRUST_BUNDLE, 2, "tb-2", (const char *)b2.data, NOW, NOW + DAY);
	signed2(&doc); /* k0, k1: bundle v1's signers, none of them in v2 */
	drop("tb-2.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_int_equal(nhi_update_load_bundle(g.dir, &nb), NHI_OK);
	/* the restart after a crash at K=3: the state names v2, the package is still there */
	drop("tb-2.json", &doc, path, sizeof(path));
	cfg.bundle = nb;
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_true(res.applied);
	assert_true(res.info.committed);
	assert_true(exists("applied/tb-2.json.1"));
	assert_false(exists("rejected/tb-2.json"));
	snprintf(rpath, sizeof(rpath), "%s/applied/tb-2.json.1.reason", g.dir);
	assert_int_equal(nhi_file_read(rpath, 4096, &reason), NHI_OK);
	assert_non_null(strstr((const char *)reason.data, "applied: trust-bundle version 2"));
	assert_non_null(strstr((const char *)reason.data, "found committed"));

	/* a revocation v1 (by v2's signers) committed, found again two days on: expired, still ok */
	make_pkg(&rev, NHI_UPDATE_REVOCATION, 1, "rev-1", "x", NOW, NOW + DAY);
	sign_soft(NHI_DOC_UPDATE, &rev, g.k[3]);
	sign_soft(NHI_DOC_UPDATE, &rev, g.k[4]);
	drop("rev-1.json", &rev, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_false(res.info.committed);
	drop("rev-1.json", &rev, path, sizeof(path));
	cfg.now = NOW + 2 * DAY;
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	assert_true(res.info.committed);
	assert_true(exists("applied/rev-1.json.1"));
	assert_false(exists("rejected/rev-1.json"));
	/* a different package of the same version still is replayed, and nothing else moved */
	nhi_buf_free(&rev);
	make_pkg(&rev, NHI_UPDATE_REVOCATION, 1, "rev-1b", "y", NOW + 2 * DAY, NOW + 3 * DAY);
	sign_soft(NHI_DOC_UPDATE, &rev, g.k[3]);
	sign_soft(NHI_DOC_UPDATE, &rev, g.k[4]);
	drop("rev-1b.json", &rev, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_ROLLBACK);
	assert_int_equal(res.why, NHI_UPDATE_E_REPLAYED);
	assert_false(res.info.committed);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_int_equal(st.version[NHI_UPDATE_TRUST_BUNDLE], 2);
	assert_int_equal(st.version[NHI_UPDATE_REVOCATION], 1);
	nhi_buf_free(&reason);
	nhi_buf_free(&rev);
	nhi_buf_free(&doc);
	nhi_buf_free(&b2);
	nhi_bundle_free(nb);
	nhi_bundle_free(b);
}

static void test_scan_orders_versions(void **state)
{
	struct nhi_bundle *b;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_scan_stats stats;
	struct nhi_update_state st;
	struct nhi_buf doc = {0}, junk = {0};
	char in[600], path[700];
	int v;

	(void)state;
	b = apply_cfg(&cfg, NOW);
	snprintf(in, sizeof(in), "%s/incoming", g.dir);
	assert_int_equal(mkdir(in, 0700), 0);
	/* names sort opposite to versions: 3 is "a", 1 is "c" */
	for (v = 1; v <= 3; v++) {
		char id[16];
		snprintf(id, sizeof(id), "r%d", v);
		make_pkg(&doc, NHI_UPDATE_REVOCATION, (uint64_t)v, id, "x", NOW, NOW + DAY);
		signed2(&doc);
		snprintf(path, sizeof(path), "%s/%c.json", in, 'd' - v);
		write_file(path, &doc);
		nhi_buf_free(&doc);
	}
	assert_int_equal(nhi_buf_append_str(&junk, "not json"), NHI_OK);
	snprintf(path, sizeof(path), "%s/zz-garbage", in);
	write_file(path, &junk);
	snprintf(path, sizeof(path), "%s/.partial", in);
	write_file(path, &junk);
	assert_int_equal(nhi_update_scan(&cfg, in, NULL, NULL, &stats), NHI_OK);
	assert_int_equal(stats.applied, 3);
	assert_int_equal(stats.rejected, 1);
	assert_int_equal(stats.failed, 0);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_int_equal(st.version[NHI_UPDATE_REVOCATION], 3);
	assert_true(exists("incoming/.partial")); /* uploads in progress stay */
	nhi_buf_free(&junk);
	nhi_bundle_free(b);
}

/* A bundle rotation and a package signed by the new bundle's signers, dropped together:
 * the bundle is applied first, whatever the kinds' order in the enum, so both apply. */
static void test_scan_trust_bundle_first(void **state)
{
	struct nhi_bundle *b;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_scan_stats stats;
	struct nhi_update_state st;
	struct nhi_buf b2 = {0}, doc = {0};
	EVP_PKEY *s2[2] = {g.k[3], g.k[4]}, *by[4] = {g.k[0], g.k[1], g.k[3], g.k[4]};
	enum nhi_update_kind kinds[] = {NHI_UPDATE_REVOCATION, NHI_UPDATE_TOKEN_KEYS, NHI_UPDATE_MODEL_MANIFEST,
					NHI_UPDATE_IDENTITY_BACKUP, NHI_UPDATE_CERT_ROTATION};
	char in[600], path[700];
	size_t i;

	(void)state;
	b = apply_cfg(&cfg, NOW);
	snprintf(in, sizeof(in), "%s/incoming", g.dir);
	assert_int_equal(mkdir(in, 0700), 0);
	make_bundle(&b2, 2, s2, 2, 2, by, 4, NOW + 365 * DAY);
	make_pkg(&doc, NHI_UPDATE_TRUST_BUNDLE, 2, "tb-2", (const char *)b2.data, NOW, NOW + DAY);
	signed2(&doc); /* by bundle v1's signers */
	snprintf(path, sizeof(path), "%s/z-tb2.json", in);
	write_file(path, &doc);
	nhi_buf_free(&doc);
	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		make_pkg(&doc, kinds[i], 1, "p1", "x", NOW, NOW + DAY);
		sign_soft(NHI_DOC_UPDATE, &doc, g.k[3]); /* by bundle v2's signers only */
		sign_soft(NHI_DOC_UPDATE, &doc, g.k[4]);
		snprintf(path, sizeof(path), "%s/a-%s.json", in, nhi_update_kind_name(kinds[i]));
		write_file(path, &doc);
		nhi_buf_free(&doc);
	}
	assert_int_equal(nhi_update_scan(&cfg, in, NULL, NULL, &stats), NHI_OK);
	assert_int_equal(stats.rejected, 0);
	assert_int_equal(stats.applied, 6);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK);
	assert_int_equal(st.version[NHI_UPDATE_TRUST_BUNDLE], 2);
	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		assert_int_equal(st.version[kinds[i]], 1);
	nhi_buf_free(&b2);
	nhi_bundle_free(b);
}

static void test_clock_rule(void **state)
{
	struct nhi_update_state st = {.time_high = NOW};
	struct nhi_bundle *b;
	struct nhi_update_apply_cfg cfg = {0};
	struct nhi_update_result res;
	struct nhi_buf doc = {0};
	int64_t t = 0;
	char path[600];

	(void)state;
	assert_int_equal(nhi_update_clock(&st, NOW + 10, 300, &t), NHI_OK);
	assert_int_equal(t, NOW + 10);
	assert_int_equal(nhi_update_clock(&st, NOW - 100, 300, &t), NHI_OK);
	assert_int_equal(t, NOW); /* never behind what was already trusted */
	assert_int_equal(nhi_update_clock(&st, NOW - 301, 300, &t), NHI_ERR_ROLLBACK);
	assert_non_null(strstr(nhi_err_detail(), "set the clock forward"));

	/* applied packages raise time_high; a clock then set back far is refused, package left in place */
	b = apply_cfg(&cfg, NOW + DAY);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 1, "r1", "x", NOW + DAY, NOW + 2 * DAY);
	signed2(&doc);
	drop("r1.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	nhi_buf_free(&doc);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 2, "r2", "x", NOW, NOW + 3 * DAY);
	signed2(&doc);
	drop("r2.json", &doc, path, sizeof(path));
	cfg.now = NOW;
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_ROLLBACK);
	assert_string_equal(res.moved_to, "");
	assert_true(exists("r2.json"));
	/* expiry is judged against the trusted time, not a clock set back within the skew */
	nhi_buf_free(&doc);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 2, "r2", "x", NOW, NOW + DAY + 10);
	signed2(&doc);
	drop("r2.json", &doc, path, sizeof(path));
	cfg.now = NOW + DAY - 200;
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_OK);
	nhi_buf_free(&doc);
	make_pkg(&doc, NHI_UPDATE_REVOCATION, 3, "r3", "x", NOW, NOW + DAY - 100);
	signed2(&doc);
	drop("r3.json", &doc, path, sizeof(path));
	assert_int_equal(nhi_update_apply_file(&cfg, path, &res), NHI_ERR_EXPIRED);
	assert_int_equal(res.why, NHI_UPDATE_E_EXPIRED);
	nhi_buf_free(&doc);
	nhi_bundle_free(b);
}

static void test_state_file_corruption_refused(void **state)
{
	struct nhi_update_state st;
	struct nhi_buf bad = {0};
	char path[600];

	(void)state;
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_OK); /* none yet: empty */
	assert_int_equal(st.version[0], 0);
	assert_int_equal(nhi_buf_append_str(&bad, "{\"format\":1,\"time_high\":0,\"kinds\":{\"x\":{}}}"), NHI_OK);
	snprintf(path, sizeof(path), "%s/update-state.json", g.dir);
	write_file(path, &bad);
	assert_int_equal(nhi_update_state_load(g.dir, &st), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "never delete it"));
	nhi_buf_free(&bad);
}

/* ---- manifests ---------------------------------------------------------------------- */

struct diffs {
	char text[1024];
};

static void on_diff(void *arg, enum nhi_manifest_diff d, const char *path)
{
	struct diffs *x = arg;
	size_t n = strlen(x->text);

	snprintf(x->text + n, sizeof(x->text) - n, "%s:%s ",
		 d == NHI_MANIFEST_DIFFERS ? "differs" : d == NHI_MANIFEST_MISSING ? "missing" : "extra", path);
}

static void put(const char *rel, const char *data)
{
	struct nhi_buf b = {0};
	char path[700];

	snprintf(path, sizeof(path), "%s/model/%s", g.dir, rel);
	assert_int_equal(nhi_buf_append_str(&b, data), NHI_OK);
	write_file(path, &b);
	nhi_buf_free(&b);
}

static void test_manifest_sign_verify_diffs(void **state)
{
	struct nhi_buf doc = {0};
	struct nhi_keyset *ks = NULL;
	struct diffs d = {{0}};
	char model[600], p[700];
	size_t n = 0;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", g.dir);
	assert_int_equal(mkdir(model, 0700), 0);
	snprintf(p, sizeof(p), "%s/sub", model);
	assert_int_equal(mkdir(p, 0700), 0);
	put("weights.bin", "0123456789");
	put("config.json", "{}");
	put("sub/tokenizer", "abc");
	assert_int_equal(nhi_manifest_build(model, "llm-7b", NOW, &doc), NHI_OK);
	assert_non_null(strstr((const char *)doc.data, "payload"));
	assert_int_equal(nhi_keyset_new(&ks), NHI_OK);
	assert_int_equal(nhi_keyset_add(ks, g.k[4]), NHI_OK);
	/* unsigned: refused with no diff */
	assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, ks, model, on_diff, &d, &n), NHI_ERR_VERIFY);
	assert_int_equal(n, 0);
	sign_soft(NHI_DOC_MANIFEST, &doc, g.k[0]); /* not a manifest key */
	assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, ks, model, on_diff, &d, &n), NHI_ERR_VERIFY);
	sign_soft(NHI_DOC_MANIFEST, &doc, g.k[4]);
	assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, ks, model, on_diff, &d, &n), NHI_OK);
	assert_int_equal(n, 0);
	/* change one, remove one, add one */
	put("weights.bin", "0123456780");
	snprintf(p, sizeof(p), "%s/config.json", model);
	assert_int_equal(unlink(p), 0);
	put("sub/extra", "z");
	assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, ks, model, on_diff, &d, &n), NHI_ERR_VERIFY);
	assert_int_equal(n, 3);
	assert_string_equal(d.text, "missing:config.json extra:sub/extra differs:weights.bin ");
	/* a symlink is never followed */
	snprintf(p, sizeof(p), "%s/link", model);
	assert_int_equal(symlink("/etc/passwd", p), 0);
	assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, ks, model, NULL, NULL, &n), NHI_ERR_DENIED);
	assert_non_null(strstr(nhi_err_detail(), "symlink"));
	nhi_keyset_free(ks);
	nhi_buf_free(&doc);
}

/* names a manifest cannot carry, or a verify line cannot print, are refused without being printed */
static void test_manifest_names_refused(void **state)
{
	static const char *const bad[] = {"a\nmissing b", "tab\there", "del\x7f", "bad-\xff-utf8"};
	struct nhi_buf doc = {0}, other = {0};
	json_t *files;
	char model[600], p[700];
	size_t i, n = 0;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", g.dir);
	assert_int_equal(mkdir(model, 0700), 0);
	put("ok.bin", "x");
	assert_int_equal(nhi_manifest_build(model, "m", NOW, &doc), NHI_OK);
	sign_soft(NHI_DOC_MANIFEST, &doc, g.k[0]);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", model, bad[i]);
		assert_int_equal(close(open(p, O_WRONLY | O_CREAT | O_EXCL, 0600)), 0);
		assert_int_equal(nhi_manifest_build(model, "m", NOW, &other), NHI_ERR_FORMAT);
		assert_non_null(strstr(nhi_err_detail(), "rename it"));
		assert_null(strstr(nhi_err_detail(), bad[i]));
		assert_int_equal(other.len, 0);
		/* verify names the cause instead of printing the name as an 'extra' line */
		assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, g.ks, model, NULL, NULL, &n), NHI_ERR_FORMAT);
		assert_non_null(strstr(nhi_err_detail(), "rename it"));
		assert_int_equal(unlink(p), 0);
	}
	assert_int_equal(nhi_manifest_verify_dir(doc.data, doc.len, g.ks, model, NULL, NULL, &n), NHI_OK);
	/* a caller's list with such a path is refused as not clean */
	files = json_pack("[{s:s, s:i, s:s}]", "path", "a\nb", "size", 0, "sha256",
			  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	assert_non_null(files);
	assert_int_equal(nhi_manifest_verify_list(doc.data, doc.len, g.ks, files, NULL, NULL, &n), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "not a clean relative path"));
	json_decref(files);
	nhi_buf_free(&doc);
}

/* a file written to while it is hashed is refused, not signed as bytes it never held at once */
static void test_manifest_file_changing_refused(void **state)
{
	struct nhi_buf doc = {0}, big = {0};
	char model[600], p[700], go;
	int sync_pipe[2], fd;
	pid_t pid;
	nhi_err e;

	(void)state;
	snprintf(model, sizeof(model), "%s/model", g.dir);
	assert_int_equal(mkdir(model, 0700), 0);
	snprintf(p, sizeof(p), "%s/grows.bin", model);
	assert_int_equal(nhi_buf_reserve(&big, 4 << 20), NHI_OK);
	memset(big.data, 'w', 4 << 20);
	big.len = 4 << 20;
	write_file(p, &big);
	assert_int_equal(pipe(sync_pipe), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) { /* a copy still in progress: appends until killed (64 MiB at most) */
		size_t done = 0;

		fd = open(p, O_WRONLY | O_APPEND);
		if (fd < 0 || write(sync_pipe[1], "g", 1) != 1)
			_exit(1);
		while (done < (64u << 20) && write(fd, big.data, 4096) == 4096)
			done += 4096;
		_exit(0);
	}
	assert_int_equal(read(sync_pipe[0], &go, 1), 1);
	e = nhi_manifest_build(model, "m", NOW, &doc);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(sync_pipe[0]);
	close(sync_pipe[1]);
	assert_int_equal(e, NHI_ERR_IO);
	assert_non_null(strstr(nhi_err_detail(), "grows.bin changed while it was hashed"));
	assert_int_equal(doc.len, 0);
	nhi_buf_free(&big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keyset_rules),
		cmocka_unit_test(test_add_signature_checks_and_replaces),
		cmocka_unit_test(test_threshold_m_minus_1_refused),
		cmocka_unit_test(test_threshold_m_distinct_accepted),
		cmocka_unit_test(test_threshold_copies_of_one_key_refused),
		cmocka_unit_test(test_signer_not_in_bundle_ignored),
		cmocka_unit_test(test_hsm_custodian_signature_counts),
		cmocka_unit_test(test_refusal_reasons),
		cmocka_unit_test(test_create_refuses_bad_requests),
		cmocka_unit_test(test_bundle_chain_of_three_and_skips),
		cmocka_unit_test(test_bundle_format_refusals),
		cmocka_unit_test_setup(test_apply_commits_and_refuses, dir_setup),
		cmocka_unit_test_setup(test_apply_unrecorded_until_marked, dir_setup),
		cmocka_unit_test_setup(test_apply_prepare_hook_and_kind_filter, dir_setup),
		cmocka_unit_test_setup(test_apply_trust_bundle_rotation, dir_setup),
		cmocka_unit_test_setup(test_scan_orders_versions, dir_setup),
		cmocka_unit_test_setup(test_committed_package_recognised_first, dir_setup),
		cmocka_unit_test_setup(test_scan_trust_bundle_first, dir_setup),
		cmocka_unit_test_setup(test_clock_rule, dir_setup),
		cmocka_unit_test_setup(test_state_file_corruption_refused, dir_setup),
		cmocka_unit_test_setup(test_manifest_sign_verify_diffs, dir_setup),
		cmocka_unit_test_setup(test_manifest_names_refused, dir_setup),
		cmocka_unit_test_setup(test_manifest_file_changing_refused, dir_setup),
	};
	return cmocka_run_group_tests_name("update", tests, setup, teardown);
}
