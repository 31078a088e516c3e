/* tests/unit/test_server.c — nhid's config parser, startup checks and admin hash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../server/server_internal.h"

#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char good[] = "[nhid]\n"
			   "listen = 127.0.0.1:8443\n"
			   "hsm_token = nhid-dev\nhsm_pin_file = /srv/nhid/user.pin\n"
			   "trust_domain = nhid.local\nca_file = /srv/nhid/ca.crt\ncert_file = /srv/nhid/server.crt\n"
			   "token_keys = nhid-token-2, nhid-token-1\nissuer = https://nhid.local\naudiences = inference, update\n"
			   "backup = /srv/nhid/identities.nhib\nstate_dir = /srv/nhid/state\n"
			   "audit_log = /srv/nhid/state/audit.jsonl\n";

/* true when a line of text sets key (key, then ' ' or '=') */
static bool sets_key(const char *text, const char *key, size_t klen)
{
	const char *p;

	for (p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, key, klen) == 0 && (p[klen] == ' ' || p[klen] == '='))
			return true;
	return false;
}

/* good with extra appended; a key extra sets is dropped from good (a key given twice is refused) */
static nhi_err parse_with(const char *extra, struct nhi_server_config *c)
{
	char text[4096];
	const char *line, *eol;
	size_t n = 0, len;

	for (line = good; *line != '\0'; line = eol + 1) {
		eol = strchr(line, '\n');
		len = (size_t)(eol - line) + 1;
		if (!sets_key(extra, line, strcspn(line, " ="))) {
			memcpy(text + n, line, len);
			n += len;
		}
	}
	snprintf(text + n, sizeof(text) - n, "%s", extra);
	return nhi_server_config_parse(text, strlen(text), c);
}

static void test_good_config_and_defaults(void **state)
{
	struct nhi_server_config c;

	(void)state;
	assert_int_equal(parse_with("", &c), NHI_OK);
	assert_string_equal(c.listen_host, "127.0.0.1");
	assert_int_equal(c.listen_port, 8443);
	assert_int_equal(c.n_token_keys, 2);
	assert_string_equal(c.token_keys[0], "nhid-token-2"); /* the first one signs */
	assert_int_equal(c.n_audiences, 2);
	assert_int_equal(c.threads, NHI_SERVER_THREADS_DEFAULT);
	assert_int_equal(c.body_max_bytes, NHI_SERVER_BODY_DEFAULT_BYTES);
	assert_int_equal(c.verify_memo_entries, NHI_SERVER_VERIFY_MEMO_DEFAULT);
	assert_int_equal(c.tls_sessions, NHI_SERVER_TLS_SESSIONS_DEFAULT);
	assert_int_equal(c.header_max_count, NHI_SERVER_HEADER_COUNT_DEFAULT);
	assert_string_equal(c.tls_key, "nhid-tls");
	assert_int_equal(parse_with("verify_memo_entries = 0\n", &c), NHI_OK); /* off: every signature checked */
	assert_int_equal(c.verify_memo_entries, 0);
	assert_int_equal(parse_with("", &c), NHI_OK);
	/* updates are off unless a watched directory is named */
	assert_string_equal(c.updates_dir, "");
	assert_int_equal(c.update_scan_s, NHI_SERVER_UPDATE_SCAN_DEFAULT_S);
	assert_int_equal(c.clock_skew_s, NHI_UPDATE_CLOCK_SKEW_DEFAULT_S);
	assert_int_equal(parse_with("updates_dir = /srv/nhid/incoming\nupdate_scan_s = 2\nclock_skew_s = 60\n", &c), NHI_OK);
	assert_string_equal(c.updates_dir, "/srv/nhid/incoming");
	assert_int_equal(c.update_scan_s, 2);
	assert_int_equal(c.clock_skew_s, 60);
	/* the signing service: off by default; verify_role defaults to sign_role */
	assert_int_equal(c.n_sign_keys, 0);
	assert_string_equal(c.manifest_role, "manifest-verifier");
	assert_int_equal(parse_with("signing_keys = replication:nhid-sign-1:replicator, export:nhid-sign-2:exporter:auditor\n"
				    "manifest_role = inference\n",
				    &c),
			 NHI_OK);
	assert_int_equal(c.n_sign_keys, 2);
	assert_string_equal(c.sign_keys[0].purpose, "replication");
	assert_string_equal(c.sign_keys[0].label, "nhid-sign-1");
	assert_string_equal(c.sign_keys[0].sign_role, "replicator");
	assert_string_equal(c.sign_keys[0].verify_role, "replicator");
	assert_string_equal(c.sign_keys[1].verify_role, "auditor");
	assert_string_equal(c.manifest_role, "inference");
	assert_int_equal(parse_with("listen = [::1]:9443\n", &c), NHI_OK);
	assert_string_equal(c.listen_host, "::1");
	assert_int_equal(c.listen_port, 9443);
}

struct bad_case {
	const char *extra;
	const char *expect; /* in the detail */
};

static void test_bad_configs_name_the_key(void **state)
{
	static const struct bad_case cases[] = {
		{"colour = blue\n", "unknown config key 'colour'"},
		{"threads = 0\n", "'threads'"},
		{"threads = 65\n", "'threads'"},
		{"threads = -1\n", "'threads'"},
		{"threads = 2x\n", "'threads'"},
		{"listen = localhost:8443\n", "names are not resolved"},
		{"listen = 127.0.0.1\n", "host:port"},
		{"listen = 127.0.0.1:0\n", "'listen'"},
		{"listen = 127.0.0.1:70000\n", "'listen'"},
		{"body_max_bytes = 99999999\n", "'body_max_bytes'"},
		{"verify_memo_entries = 4194305\n", "'verify_memo_entries'"},
		{"verify_memo_entries = -1\n", "'verify_memo_entries'"},
		{"tls_sessions = 0\n", "'tls_sessions'"},
		{"header_max_count = 7\n", "'header_max_count' must be a whole number from 8 to 1024"},
		{"header_max_count = 1025\n", "'header_max_count'"},
		{"tls_sessions = 200001\n", "'tls_sessions'"},
		{"token_ttl_max_s = 7200\n", "'token_ttl_max_s'"},
		{"token_ttl_default_s = 600\ntoken_ttl_max_s = 300\n", "above token_ttl_max_s"},
		{"tls_key = bad label\n", "not a key label"},
		{"admin_token_hash = plaintext\n", "admin_token_hash"},
		{".include /etc/passwd\n", ".include"},
		{"[other]\nx = 1\n", "unknown config section"},
		{"update_scan_s = 0\n", "'update_scan_s'"},
		{"update_scan_s = 3601\n", "'update_scan_s'"},
		{"clock_skew_s = 0\n", "'clock_skew_s'"},
		{"clock_skew_s = 86401\n", "'clock_skew_s'"},
		{"updates_dir = /srv/nhid/state\n", "must not be state_dir"},
		{"signing_keys = repl:nhid-token-1:replicator\n", "one of nhid's own keys"},
		{"signing_keys = repl:nhid-tls:replicator\n", "one of nhid's own keys"},
		{"signing_keys = repl:nhid-wrap:replicator\n", "one of nhid's own keys"},
		{"signing_keys = repl:nhid-root:replicator\n", "one of nhid's own keys"},
		{"signing_keys = repl:nhid-audit:replicator\n", "one of nhid's own keys"},
		{"signing_keys = repl:k1:r, repl:k2:r\n", "purpose 'repl' is given twice"},
		{"signing_keys = a:k1:r, b:k1:r\n", "serves two purposes"},
		{"signing_keys = Repl:k1:r\n", "purpose 'Repl'"},
		{"signing_keys = repl:k 1:r\n", "is not a key label"},
		{"signing_keys = repl:k1\n", "purpose:label:sign_role"},
		{"signing_keys = repl:k1:r:v:x\n", "purpose:label:sign_role"},
		{"signing_keys = repl:k1:Role\n", "role 'Role'"},
		{"signing_keys = repl:k1:r:\n", "role ''"},
		{"manifest_role = Bad Role\n", "'manifest_role'"},
	};
	struct nhi_server_config c;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		nhi_err e = parse_with(cases[i].extra, &c);

		if (e == NHI_OK || strstr(nhi_err_detail(), cases[i].expect) == NULL)
			fail_msg("case %zu (%s): got %s: %s", i, cases[i].expect, nhi_err_name(e), nhi_err_detail());
	}
}

static void test_missing_required_keys(void **state)
{
	static const char *const required[] = {"listen", "hsm_token", "trust_domain", "ca_file", "token_keys",
					       "issuer", "backup", "state_dir"};
	struct nhi_server_config c;
	char text[4096], *line, *end;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
		snprintf(text, sizeof(text), "%s", good);
		line = strstr(text, required[i]);
		assert_non_null(line);
		end = strchr(line, '\n');
		memmove(line, end + 1, strlen(end + 1) + 1);
		assert_int_equal(nhi_server_config_parse(text, strlen(text), &c), NHI_ERR_CONFIG);
		if (strstr(nhi_err_detail(), required[i]) == NULL)
			fail_msg("missing %s: %s", required[i], nhi_err_detail());
	}
}

static void test_network_filesystems_named(void **state)
{
	(void)state;
	assert_string_equal(nhi_server_network_fs_name(NFS_SUPER_MAGIC), "NFS");
	assert_string_equal(nhi_server_network_fs_name(0xFF534D42L), "CIFS");
	assert_string_equal(nhi_server_network_fs_name(SMB_SUPER_MAGIC), "SMB");
	assert_string_equal(nhi_server_network_fs_name(0xFE534D42L), "SMB2");
	assert_string_equal(nhi_server_network_fs_name(AFS_SUPER_MAGIC), "AFS");
	assert_non_null(strstr(nhi_server_network_fs_name(0x65735546L), "FUSE"));
	assert_non_null(strstr(nhi_server_network_fs_name(V9FS_MAGIC), "9P"));
	/* host shares and cluster filesystems coreutils' stat also counts as remote: vboxsf and
	 * vmhgfs, like 9P, do not make fsync durable on the host */
	assert_non_null(strstr(nhi_server_network_fs_name(0x786F4256L), "vboxsf"));
	assert_non_null(strstr(nhi_server_network_fs_name(0xBACBACBCL), "vmhgfs"));
	assert_non_null(strstr(nhi_server_network_fs_name(0x7C7C6673L), "Parallels"));
	assert_non_null(strstr(nhi_server_network_fs_name(0x20030528L), "OrangeFS"));
	assert_non_null(strstr(nhi_server_network_fs_name(0xAAD7AAEAL), "PanFS"));
	assert_non_null(strstr(nhi_server_network_fs_name(0xBEEFDEADL), "StorNext"));
	assert_non_null(strstr(nhi_server_network_fs_name(0x61636673L), "ACFS"));
	assert_null(nhi_server_network_fs_name(EXT4_SUPER_MAGIC));
	assert_null(nhi_server_network_fs_name(TMPFS_MAGIC));
	assert_null(nhi_server_network_fs_name(0x58465342L)); /* XFS */
}

static void test_admin_hash(void **state)
{
	struct nhi_buf h = {0};
	const char secret[] = "correct horse battery staple";

	(void)state;
	assert_int_equal(nhi_admin_hash_make(secret, strlen(secret), &h), NHI_OK);
	assert_int_equal(strncmp((char *)h.data, "scrypt:16384:8:1:", 17), 0);
	assert_null(strchr((char *)h.data, '$')); /* the config syntax would expand it */
	assert_int_equal(nhi_admin_hash_check((char *)h.data, secret, strlen(secret)), NHI_OK);
	assert_int_equal(nhi_admin_hash_check((char *)h.data, "correct horse battery stapl", 27), NHI_ERR_DENIED);
	assert_int_equal(nhi_admin_hash_check((char *)h.data, "", 0), NHI_ERR_DENIED);
	assert_int_equal(nhi_admin_hash_check("scrypt:1:1:1:AA:AA", secret, strlen(secret)), NHI_ERR_CONFIG);
	assert_int_equal(nhi_admin_hash_check("md5:abc", secret, strlen(secret)), NHI_ERR_CONFIG);
	/* the form and parameters, as the config loader checks them */
	assert_int_equal(nhi_admin_hash_valid((char *)h.data), NHI_OK);
	{
		static const char *const bad[] = {
			"scrypt:garbage",
			"scrypt:16384:8:1:c2FsdHNhbHRzYWx0:aGFzaGhhc2g", /* an 8-byte hash */
			"scrypt:16385:8:1:c2FsdHNhbHRzYWx0:aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
			"scrypt:1048576:8:1:c2FsdHNhbHRzYWx0:aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
			"scrypt:16384:8:1:c2FsdA:aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g", /* 4-byte salt */
		};
		char trailing[300];
		size_t i;

		for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
			if (nhi_admin_hash_valid(bad[i]) != NHI_ERR_CONFIG)
				fail_msg("admin hash %zu accepted: %s", i, bad[i]);
		snprintf(trailing, sizeof(trailing), "%s:x", (char *)h.data);
		assert_int_equal(nhi_admin_hash_valid(trailing), NHI_ERR_CONFIG);
		assert_non_null(strstr(nhi_err_detail(), "as `nhid --hash-admin-token` prints it"));
	}
	{
		struct nhi_server_config c;
		char line[400];

		snprintf(line, sizeof(line), "admin_token_hash = %s\n", (char *)h.data);
		assert_int_equal(parse_with(line, &c), NHI_OK);
		assert_int_equal(parse_with("admin_token_hash = scrypt:garbage\n", &c), NHI_ERR_CONFIG);
		assert_non_null(strstr(nhi_err_detail(), "config key 'admin_token_hash'"));
		assert_int_equal(parse_with("admin_token_hash = scrypt:1048576:8:1:c2FsdHNhbHRzYWx0:"
					    "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\n",
					    &c),
				 NHI_ERR_CONFIG);
		assert_non_null(strstr(nhi_err_detail(), "within 64 MiB"));
	}
	assert_int_equal(nhi_admin_hash_make("short", 5, &h), NHI_ERR_ARG);
	{
		/* the token comes back in an Authorization header: evhttp trims trailing spaces and
		 * tabs and the check takes the value up to a NUL, so a hash of such bytes could never
		 * be matched by any request; refused when it is made, naming the cause */
		static const struct {
			const char *s;
			size_t n;
		} never[] = {
			{"correct horse battery staple ", 29}, {"correct horse battery staple\t", 29},
			{"correct horse\0battery staple", 29}, {"correct horse\nbattery staple", 29},
			{"correct horse\x7f" "battery staple", 29}, {" correct horse battery staple", 29},
		};
		size_t i;

		for (i = 0; i < sizeof(never) / sizeof(never[0]); i++) {
			struct nhi_buf x = {0};

			if (nhi_admin_hash_make(never[i].s, never[i].n, &x) != NHI_ERR_ARG)
				fail_msg("admin token %zu hashed, though no request could carry it", i);
			assert_non_null(strstr(nhi_err_detail(), "no Authorization header can carry"));
			nhi_buf_free(&x);
		}
	}
	nhi_buf_free(&h);
}

static void test_trust_bundle_route(void **state)
{
	const struct nhi_api_route *r = nhi_api_route_find("/v1/trust-bundle");

	(void)state;
	assert_non_null(r);
	assert_int_equal(r->id, NHI_ROUTE_TRUST_BUNDLE);
	assert_string_equal(r->method, "GET");
	assert_null(nhi_api_route_find("/v1/trust-bundle/"));
}

#define J(lit) lit, strlen(lit)
static void test_signing_requests(void **state)
{
	struct nhi_api_sign_req s;
	struct nhi_api_verify_req v;
	struct nhi_api_manifest_req m;
	const char sig64[] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
	char body[512];

	(void)state;
	assert_int_equal(nhi_api_route_find("/v1/sign")->id, NHI_ROUTE_SIGN);
	assert_int_equal(nhi_api_route_find("/v1/verify")->id, NHI_ROUTE_VERIFY);
	assert_int_equal(nhi_api_route_find("/v1/manifests/verify")->id, NHI_ROUTE_MANIFEST_VERIFY);
	/* sign: payload decoded, empty allowed */
	assert_int_equal(nhi_api_parse_sign_req(J("{\"key\":\"repl\",\"payload\":\"aGk\"}"), 16384, &s), NHI_OK);
	assert_string_equal(s.key, "repl");
	assert_int_equal(s.payload.len, 2);
	assert_memory_equal(s.payload.data, "hi", 2);
	nhi_api_sign_req_free(&s);
	assert_int_equal(nhi_api_parse_sign_req(J("{\"key\":\"repl\",\"payload\":\"\"}"), 16384, &s), NHI_OK);
	assert_int_equal(s.payload.len, 0);
	nhi_api_sign_req_free(&s);
	assert_int_equal(nhi_api_parse_sign_req(J("{\"key\":\"repl\",\"payload\":\"aGk=\"}"), 16384, &s),
			 NHI_ERR_FORMAT); /* padding */
	assert_non_null(strstr(nhi_err_detail(), "'payload'"));
	assert_int_equal(nhi_api_parse_sign_req(J("{\"key\":\"../x\",\"payload\":\"\"}"), 16384, &s), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "'key'"));
	assert_int_equal(nhi_api_parse_sign_req(J("{\"payload\":\"\"}"), 16384, &s), NHI_ERR_FORMAT);
	assert_int_equal(nhi_api_parse_sign_req(J("{\"key\":\"a\",\"key\":\"b\",\"payload\":\"\"}"), 16384, &s),
			 NHI_ERR_FORMAT); /* duplicate member */
	/* verify: a 64-byte signature, an optional 43-character kid */
	snprintf(body, sizeof(body), "{\"key\":\"repl\",\"payload\":\"\",\"sig\":\"%s\"}", sig64);
	assert_int_equal(nhi_api_parse_verify_req(body, strlen(body), 16384, &v), NHI_OK);
	assert_string_equal(v.kid, "");
	nhi_api_verify_req_free(&v);
	snprintf(body, sizeof(body), "{\"key\":\"repl\",\"payload\":\"\",\"sig\":\"%s\",\"kid\":\"%.43s\"}", sig64,
		 sig64);
	assert_int_equal(nhi_api_parse_verify_req(body, strlen(body), 16384, &v), NHI_OK);
	assert_int_equal(strlen(v.kid), 43);
	nhi_api_verify_req_free(&v);
	snprintf(body, sizeof(body), "{\"key\":\"repl\",\"payload\":\"\",\"sig\":\"%.84s\"}", sig64);
	assert_int_equal(nhi_api_parse_verify_req(body, strlen(body), 16384, &v), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "64 bytes"));
	snprintf(body, sizeof(body), "{\"key\":\"repl\",\"payload\":\"\",\"sig\":\"%s\",\"kid\":\"short\"}", sig64);
	assert_int_equal(nhi_api_parse_verify_req(body, strlen(body), 16384, &v), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "'kid'"));
	/* manifests/verify: an object and an array */
	assert_int_equal(nhi_api_parse_manifest_req(J("{\"manifest\":{\"payload\":\"e30\",\"signatures\":[]},\"files\":[]}"), 16384, &m),
			 NHI_OK);
	assert_non_null(strstr(m.manifest, "\"payload\":\"e30\""));
	nhi_api_manifest_req_free(&m);
	assert_int_equal(nhi_api_parse_manifest_req(J("{\"manifest\":\"x\",\"files\":[]}"), 16384, &m), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "'manifest'"));
	assert_int_equal(nhi_api_parse_manifest_req(J("{\"manifest\":{},\"files\":{}}"), 16384, &m), NHI_ERR_FORMAT);
	assert_non_null(strstr(nhi_err_detail(), "'files'"));
}

/* the update bodies nhid reads: every refusal names its member */
static void test_update_bodies(void **state)
{
	static const struct {
		char kind; /* 'r' revocation, 'c' cert-rotation, 't' token-keys */
		const char *body;
		const char *expect; /* NULL: accepted */
	} cases[] = {
		{'r', "{}", NULL},
		{'r', "{\"agents\":[\"a\"],\"kids\":[\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"]}", NULL},
		{'r', "[]", "one JSON object"},
		{'r', "{\"agent\":[]}", "unknown member 'agent'"},
		{'r', "{\"kids\":[\"short\"]}", "kids[0] is not an RFC 7638 thumbprint"},
		{'r', "{\"cert_sha256\":[\"ABC\"]}", "cert_sha256[0] must be 64 lower-case hex digits"},
		{'c', "{\"cert_chain_pem\":\"x\",\"wrapped_key_b64\":\"AA\",\"key_label\":\"nhid-tls-2\"}", NULL},
		{'c', "{\"cert_chain_pem\":\"x\",\"key_label\":\"nhid-tls-2\"}", "all required"},
		{'c', "{\"cert_chain_pem\":\"x\",\"wrapped_key_b64\":\"AA\",\"key_label\":\"bad label\"}",
		 "is not a key label"},
		{'c', "{\"cert_chain_pem\":1,\"wrapped_key_b64\":\"AA\",\"key_label\":\"k\"}", "must be a string"},
		{'t', "{\"keys\":[{\"label\":\"nhid-token-2\"}],\"signing_key\":\"nhid-token-2\"}", NULL},
		{'t', "{\"keys\":[{\"label\":\"a\"},{\"label\":\"b\",\"wrapped_key_b64\":\"AA\",\"public_key_pem\":\"P\"}],"
		      "\"signing_key\":\"b\",\"previous_signing_key\":\"a\",\"sign_after\":1764000000}",
		 NULL},
		{'t', "{\"keys\":[],\"signing_key\":\"a\"}", "'keys' must be an array of 1 to"},
		{'t', "{\"keys\":[{\"label\":\"a\"},{\"label\":\"a\"}],\"signing_key\":\"a\"}", "listed twice"},
		{'t', "{\"keys\":[{\"label\":\"a\"}],\"signing_key\":\"b\"}", "'signing_key' must name one of"},
		{'t', "{\"keys\":[{\"label\":\"a\",\"wrapped_key_b64\":\"AA\"}],\"signing_key\":\"a\"}", "go together"},
		{'t', "{\"keys\":[{\"label\":\"a\"}],\"signing_key\":\"a\",\"sign_after\":5}",
		 "previous_signing_key and sign_after go together"},
		{'t', "{\"keys\":[{\"label\":\"a\"}],\"signing_key\":\"a\",\"previous_signing_key\":\"a\",\"sign_after\":5}",
		 "must name another of 'keys'"},
		{'t', "{\"keys\":[{\"label\":\"a b\"}],\"signing_key\":\"a b\"}", "keys[0].label is not a key label"},
		{'t', "{\"keys\":[{\"label\":\"a\",\"extra\":1}],\"signing_key\":\"a\"}", "extra"},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const uint8_t *b = (const uint8_t *)cases[i].body;
		size_t n = strlen(cases[i].body);
		nhi_err e = cases[i].kind == 'r'   ? nhi_revocation_body_check(b, n)
			    : cases[i].kind == 'c' ? nhi_rotation_body_check(b, n)
						   : nhi_token_keys_body_check(b, n);

		if (cases[i].expect == NULL ? e != NHI_OK
					    : e != NHI_ERR_FORMAT || strstr(nhi_err_detail(), cases[i].expect) == NULL)
			fail_msg("case %zu (%c %s): got %s: %s", i, cases[i].kind, cases[i].body, nhi_err_name(e),
				 nhi_err_detail());
	}
}

/* POST /v1/resolve bodies: the {"token":"..."} fast path and jansson agree */
static void test_resolve_bodies(void **state)
{
	static const struct {
		const char *body;
		bool simple;      /* taken without jansson */
		nhi_err rv;
		const char *token; /* when rv is NHI_OK */
	} cases[] = {
		{"{\"token\":\"eyJh.eyJz.c2ln\"}", true, NHI_OK, "eyJh.eyJz.c2ln"},
		{"{\"token\":\"a-b_c.D9\"}", true, NHI_OK, "a-b_c.D9"},
		{"{ \"token\": \"eyJh.eyJz.c2ln\" }", false, NHI_OK, "eyJh.eyJz.c2ln"},
		{"{\"token\":\"eyJh.eyJz.c2ln\"}\n", false, NHI_OK, "eyJh.eyJz.c2ln"},
		{"{\"token\":\"a\\/b\"}", false, NHI_OK, "a/b"},     /* an escape: jansson decodes it */
		{"{\"token\":\"\"}", false, NHI_OK, ""},             /* the verifier refuses it later */
		{"{\"token\":\"ab\",\"token\":\"cd\"}", false, NHI_ERR_FORMAT, NULL},
		{"{\"token\":\"ab\",\"x\":\"cd\"}", false, NHI_ERR_FORMAT, NULL},
		{"{\"token\":\"a\"}}", false, NHI_ERR_FORMAT, NULL},
		{"{\"token\":\"a b\"}", false, NHI_OK, "a b"},
		{"{\"token\":7}", false, NHI_ERR_FORMAT, NULL},
		{"{\"token\":\"\xc3\xa9\"}", false, NHI_OK, "\xc3\xa9"},
		{"{\"token\":\"", false, NHI_ERR_FORMAT, NULL},
	};
	struct nhi_api_resolve_req r;
	size_t i, off, n;
	char big[300];

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *b = cases[i].body;

		assert_int_equal(nhi_api_resolve_body_simple(b, strlen(b), &off, &n), cases[i].simple);
		assert_int_equal(nhi_api_parse_resolve_req(b, strlen(b), 16384, &r), cases[i].rv);
		if (cases[i].rv == NHI_OK) {
			assert_int_equal(r.token_len, strlen(cases[i].token));
			assert_memory_equal(r.token, cases[i].token, r.token_len);
			assert_int_equal(r.token[r.token_len], '\0'); /* both paths hand out a C string */
			assert_int_equal(r.presenter_der.len, 0);
			nhi_api_resolve_req_free(&r);
		}
	}
	/* the size cap comes first on both paths */
	memset(big, 'a', sizeof(big));
	memcpy(big, "{\"token\":\"", 10);
	memcpy(big + sizeof(big) - 2, "\"}", 2);
	assert_true(nhi_api_resolve_body_simple(big, sizeof(big), &off, &n));
	assert_int_equal(nhi_api_parse_resolve_req(big, sizeof(big), 256, &r), NHI_ERR_LIMIT);
	assert_int_equal(nhi_api_parse_resolve_req(big, sizeof(big), 300, &r), NHI_OK);
	assert_int_equal(r.token_len, sizeof(big) - 12);
	nhi_api_resolve_req_free(&r);
}

/* the balance rule: only the least loaded loops accept (ties all accept), so the
 * busiest ends at most one connection above the idlest */
static void test_accept_plan(void **state)
{
	const unsigned even[2] = {4, 4}, ahead[3] = {5, 4, 4}, behind[3] = {7, 9, 7}, one[1] = {12};
	bool want[3];
	unsigned conns[2] = {0, 0}, i;

	(void)state;
	nhi_accept_plan(even, 2, want);
	assert_true(want[0] && want[1]);
	nhi_accept_plan(ahead, 3, want);
	assert_true(!want[0] && want[1] && want[2]);
	nhi_accept_plan(behind, 3, want);
	assert_true(want[0] && !want[1] && want[2]);
	nhi_accept_plan(one, 1, want);
	assert_true(want[0]);
	/* 101 connections arriving one by one, each taken by the first loop that accepts */
	for (i = 0; i < 101; i++) {
		nhi_accept_plan(conns, 2, want);
		conns[want[0] ? 0 : 1]++;
		assert_true((conns[0] > conns[1] ? conns[0] - conns[1] : conns[1] - conns[0]) <= 1);
	}
	assert_int_equal(conns[0], 51);
	assert_int_equal(conns[1], 50);
}

static void check_attributes(const char *stored, const char *want)
{
	char *got = nhi_routes_attributes_text(stored);

	assert_non_null(got);
	assert_string_equal(got, want);
	free(got);
}

/* the reply never carries the store's attribute text as it is */
static void test_attributes_reply(void **state)
{
	(void)state;
	check_attributes("{\"site\":\"b\",\"n\":[1,2.5,{\"x\":null}]}", "{\"site\":\"b\",\"n\":[1,2.5,{\"x\":null}]}");
	check_attributes("{ \"a\" : 1 }", "{\"a\":1}");
	check_attributes("{\"t\":\"caf\xc3\xa9 \\\"q\\\" \\n\"}", "{\"t\":\"caf\xc3\xa9 \\\"q\\\" \\n\"}");
	/* text that would close the agent object and add members to it */
	check_attributes("{},\"roles\":[\"admin\"],\"x\":{}", "{}");
	check_attributes("{\"a\":1}}", "{}");
	check_attributes("[1,2]", "{}");
	check_attributes("\"text\"", "{}");
	check_attributes("{\"a\":", "{}");
	check_attributes("{\"a\":\"\xff\"}", "{}"); /* not UTF-8 */
	check_attributes("", "{}");
	check_attributes(NULL, "{}");
}

/* The whole resolve reply, and a record string that is not UTF-8: an error naming the
 * member, and nothing written (the server answers 500 "the reply could not be encoded") */
static void test_resolve_reply(void **state)
{
	static const char *const roles[] = {"agent", "resolver"}, *const auds[] = {"inference"};
	static const char *const bad_roles[] = {"agent", "r\xff"}, *const croles[] = {"agent"};
	struct nhi_agent a = {.id = "demo-agent",
			      .status = NHI_AGENT_ACTIVE,
			      .not_before = 1700000000,
			      .not_after = 1900000000,
			      .n_roles = 2,
			      .roles = roles,
			      .n_audiences = 1,
			      .audiences = auds,
			      .attributes = "{\"site\": \"b\"}",
			      .backup_serial = 7};
	struct nhi_token_claims cl = {.iss = "https://nhid.local",
				      .sub = "demo-agent",
				      .jti = "KxNY5n7PQLo2ofrevOxMCA",
				      .aud = "inference",
				      .roles = croles,
				      .n_roles = 1,
				      .iat = 1800000000,
				      .nbf = 1800000000,
				      .exp = 1800000300,
				      .kid = "G9AtJH-VwEp0gbG4p7H4yb8nk8FXx3e2f_e6xlchaQQ"};
	struct nhi_buf out = {0};

	(void)state;
	assert_int_equal(nhi_routes_resolve_text(&a, &cl, &out), NHI_OK);
	assert_int_equal(nhi_buf_append(&out, "", 1), NHI_OK);
	assert_string_equal((const char *)out.data,
			    "{\"agent\":{\"id\":\"demo-agent\",\"status\":\"active\",\"roles\":[\"agent\",\"resolver\"],"
			    "\"audiences\":[\"inference\"],\"not_before\":1700000000,\"not_after\":1900000000,"
			    "\"attributes\":{\"site\":\"b\"},\"backup_serial\":7},\"claims\":{\"iss\":\"https://nhid.local\","
			    "\"sub\":\"demo-agent\",\"aud\":\"inference\",\"iat\":1800000000,\"nbf\":1800000000,"
			    "\"exp\":1800000300,\"jti\":\"KxNY5n7PQLo2ofrevOxMCA\",\"roles\":[\"agent\"],"
			    "\"kid\":\"G9AtJH-VwEp0gbG4p7H4yb8nk8FXx3e2f_e6xlchaQQ\"}}");
	nhi_buf_free(&out);

	a.roles = bad_roles;
	assert_int_not_equal(nhi_routes_resolve_text(&a, &cl, &out), NHI_OK);
	assert_non_null(strstr(nhi_err_detail(), "not valid UTF-8"));
	assert_non_null(strstr(nhi_err_detail(), "roles"));
	assert_null(out.data);
	assert_int_equal(out.len, 0);
	a.roles = roles;
	a.id = "demo-\xc3";
	assert_int_not_equal(nhi_routes_resolve_text(&a, &cl, &out), NHI_OK);
	assert_non_null(strstr(nhi_err_detail(), "'id'"));
	assert_null(out.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_config_and_defaults), cmocka_unit_test(test_bad_configs_name_the_key),
		cmocka_unit_test(test_missing_required_keys),   cmocka_unit_test(test_network_filesystems_named),
		cmocka_unit_test(test_admin_hash),              cmocka_unit_test(test_trust_bundle_route),
		cmocka_unit_test(test_signing_requests),	cmocka_unit_test(test_update_bodies),
		cmocka_unit_test(test_resolve_bodies),          cmocka_unit_test(test_accept_plan),
		cmocka_unit_test(test_attributes_reply),        cmocka_unit_test(test_resolve_reply),
	};

	return cmocka_run_group_tests_name("server", tests, NULL, NULL);
}
