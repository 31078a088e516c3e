/*
 * provisioning/airgap.c — `nhictl airgap check --config nhid.conf`: what this host
 * looks like from inside, against nhid's air-gap contract (docs/airgap.md).
 *
 * Reads files only (the config, the token through PKCS#11, certificates, /proc/net,
 * /etc/resolv.conf). It sends no packet: no DNS query is ever made — the resolver
 * configuration is reported, because a lookup on a host that has a route would be the
 * very egress we are checking for, and nhid itself never resolves names. Once the
 * token is open the no-egress filter (server/sandbox.h) is installed, so the rest of
 * the check could not reach the network even by mistake.
 */
#include "nhictl.h"
#include "../common/limits.h"
#include "../hsm/hsm.h"
#include "../hsm/hsm_internal.h"
#include "../server/sandbox.h"
#include "../server/server.h"
#include "../server/update.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define STEPS 9

struct check {
	unsigned step, failed;
};

static void step_begin(struct check *c, const char *what)
{
	printf("[%u/%d] %s\n", ++c->step, STEPS, what);
}

static void step_fail(struct check *c, const char *fmt, ...) NHI_PRINTF(2, 3);
static void step_fail(struct check *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("      FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	c->failed++;
}

/* ---- certificates ------------------------------------------------------------------- */

/* the first certificate of a PEM file (ca_file: the CA's own validity is checked) */
static nhi_err read_cert(const char *path, X509 **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};
	BIO *bio = NULL;

	*out = NULL;
	NHI_TRY(nhi_file_read(path, NHI_CERT_MAX_BYTES * 4, &b));
	bio = BIO_new_mem_buf(b.data, (int)b.len);
	NHI_CHECK_SSL(bio != NULL, NHI_ERR_NOMEM, "BIO");
	*out = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	NHI_CHECK_SSL(*out != NULL, NHI_ERR_FORMAT, "%s holds no PEM certificate", path);
	rv = NHI_OK;
out:
	BIO_free(bio);
	nhi_buf_free(&b);
	return rv;
}

/* validity window now; *days = whole days left (negative: expired) */
static bool cert_current(struct check *c, const char *what, const char *path, X509 *x)
{
	int days = 0, secs = 0;

	if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0) {
		step_fail(c, "%s %s is not valid yet (notBefore in the future): check the host clock (TZ=UTC, date -u)",
			  what, path);
		return false;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
		step_fail(c, "%s %s has expired: rotate it (docs/airgap.md, rotation by update)", what, path);
		return false;
	}
	if (ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)) == 1)
		printf("      %s %s valid, %d days left%s\n", what, path, days,
		       days < NHI_AIRGAP_CERT_WARN_DAYS ? " (rotate soon)" : "");
	return true;
}

/*
 * The TLS identity nhid serves: a committed cert-rotation's key and chain, else
 * cert_file and tls_key (nhi_server_tls_in_force). `where` names it in messages. Read
 * once for the keys and the certificates steps; `error` says why the committed
 * rotation could not be read ("" when it could, or there is none).
 */
struct tls_in_force {
	char label[65];
	const char *key; /* label or cfg->tls_key */
	char where[160];
	struct nhi_buf chain;
	unsigned long long version;
	char error[NHI_ERR_DETAIL_MAX];
};

static void tls_in_force(const struct nhi_server_config *cfg, struct tls_in_force *t)
{
	memset(t, 0, sizeof(*t));
	if (nhi_server_tls_in_force(cfg->state_dir, t->label, &t->chain, &t->version) != NHI_OK) {
		snprintf(t->error, sizeof(t->error), "%s", nhi_err_detail());
		nhi_err_clear();
	}
	t->key = t->version > 0 ? t->label : cfg->tls_key;
	if (t->version > 0)
		snprintf(t->where, sizeof(t->where), "the rotated certificate chain (cert-rotation version %llu)", t->version);
	else
		snprintf(t->where, sizeof(t->where), "%s", cfg->cert_file);
}

/* the chain nhid serves, as it reads it: leaf and intermediates (nhi_tls_chain_parse) */
static nhi_err tls_chain_in_force(const struct nhi_server_config *cfg, struct tls_in_force *t, X509 **leaf,
				  STACK_OF(X509) **rest)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	if (t->version == 0) {
		rv = nhi_file_read(cfg->cert_file, (size_t)NHI_CERT_MAX_BYTES * NHI_SERVER_CHAIN_CERTS_MAX, &t->chain);
		if (rv != NHI_OK) {
			nhi_err_wrap(rv, "cert_file");
			goto out;
		}
	}
	NHI_TRY(nhi_tls_chain_parse(t->chain.data, t->chain.len, t->where, leaf, rest));
	rv = NHI_OK;
out:
	return rv;
}

static void check_certs(struct check *c, const struct nhi_server_config *cfg, struct nhi_hsm *h,
			struct tls_in_force *t)
{
	X509 *ca = NULL, *leaf = NULL;
	STACK_OF(X509) *rest = NULL;
	struct nhi_hsm_key *k = NULL;
	EVP_PKEY *tok = NULL;
	const char *where = t->where;

	step_begin(c, "trust material: CA and server certificates");
	if (t->error[0] != '\0') {
		step_fail(c, "%s", t->error);
		goto out;
	}
	if (read_cert(cfg->ca_file, &ca) != NHI_OK) {
		step_fail(c, "ca_file: %s", nhi_err_detail());
		goto out;
	}
	if (tls_chain_in_force(cfg, t, &leaf, &rest) != NHI_OK) {
		step_fail(c, "%s", nhi_err_detail());
		goto out;
	}
	if (t->version > 0)
		printf("      serving the committed cert-rotation (version %llu, key '%s'), not cert_file\n", t->version,
		       t->key);
	if (!cert_current(c, "CA certificate", cfg->ca_file, ca) || !cert_current(c, "server certificate", where, leaf))
		goto out;
	if (nhi_server_chain_verify(cfg->ca_file, "server certificate", leaf, rest) != NHI_OK) {
		step_fail(c, "%s (%s, served with %d intermediate certificate%s)", nhi_err_detail(), where,
			  sk_X509_num(rest), sk_X509_num(rest) == 1 ? "" : "s");
		goto out;
	}
	printf("      server certificate chains to the CA (%d intermediate certificate%s served)\n", sk_X509_num(rest),
	       sk_X509_num(rest) == 1 ? "" : "s");
	if (h == NULL) {
		printf("      (token not open: the certificate's key is not compared with '%s')\n", t->key);
		goto out;
	}
	if (nhi_hsm_find(h, t->key, &k) != NHI_OK || nhi_hsm_pubkey(h, k, &tok) != NHI_OK) {
		step_fail(c, "TLS key '%s': %s", t->key, nhi_err_detail());
		goto out;
	}
	if (EVP_PKEY_eq(X509_get0_pubkey(leaf), tok) != 1) {
		step_fail(c, "server certificate %s is not for key '%s' in the token: %s", where, t->key,
			  t->version > 0 ? "apply a new cert-rotation" : "point cert_file at that key's certificate");
		goto out;
	}
	printf("      server certificate is for token key '%s'\n", t->key);
out:
	EVP_PKEY_free(tok);
	nhi_hsm_key_free(k);
	sk_X509_pop_free(rest, X509_free);
	X509_free(leaf);
	X509_free(ca);
}

/* the installed trust bundle (docs/updates.md): signature and expiry */
static void check_bundle(struct check *c, const struct nhi_server_config *cfg)
{
	struct nhi_bundle *b = NULL;
	char path[600];
	long long left;

	step_begin(c, "trust bundle");
	snprintf(path, sizeof(path), "%s/trust-bundle.json", cfg->state_dir);
	if (access(path, F_OK) != 0) {
		printf("      no trust bundle in %s: signed updates are not initialised (nhictl update init)\n",
		       cfg->state_dir);
		return;
	}
	if (nhi_update_load_bundle(cfg->state_dir, &b) != NHI_OK) {
		step_fail(c, "trust bundle %s: %s", path, nhi_err_detail());
		return;
	}
	left = (long long)nhi_bundle_expires_at(b) - (long long)time(NULL);
	if (left <= 0)
		step_fail(c, "trust bundle %s (version %llu) has expired: apply a newer bundle (docs/updates.md)", path,
			  (unsigned long long)nhi_bundle_version(b));
	else
		printf("      trust bundle version %llu, signatures valid, %lld days left\n",
		       (unsigned long long)nhi_bundle_version(b), left / 86400);
	nhi_bundle_free(b);
}

/* ---- the token and its keys ---------------------------------------------------------- */

static void check_key(struct check *c, struct nhi_hsm *h, CK_SESSION_HANDLE s, const char *role, const char *label)
{
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f = nhi_hsm_raw_functions(h, &slot);
	struct nhi_hsm_key *k = NULL;
	CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE;
	CK_ATTRIBUTE a[] = {{CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
			    {CKA_EXTRACTABLE, &extractable, sizeof(extractable)}};
	CK_RV r;

	if (nhi_hsm_find(h, label, &k) != NHI_OK) {
		step_fail(c, "%s key '%s' is not in the token: %s", role, label, nhi_err_detail());
		return;
	}
	r = f->C_GetAttributeValue(s, nhi_hsm_key_handle(k), a, 2);
	if (r != CKR_OK)
		step_fail(c, "%s key '%s': C_GetAttributeValue(CKA_SENSITIVE, CKA_EXTRACTABLE) failed (CKR 0x%lx)", role,
			  label, (unsigned long)r);
	else if (sensitive != CK_TRUE || extractable != CK_FALSE)
		step_fail(c, "%s key '%s' is %s and %s: it can leave the token; generate a new key in the token "
			     "(nhictl ceremony) and retire this one",
			  role, label, sensitive ? "sensitive" : "NOT sensitive",
			  extractable ? "EXTRACTABLE" : "not extractable");
	else
		printf("      %-15s '%s': present, sensitive, not extractable\n", role, label);
	nhi_hsm_key_free(k);
}

static void check_keys(struct check *c, const struct nhi_server_config *cfg, struct nhi_hsm *h, const char *wrap_key,
		       const struct tls_in_force *t)
{
	CK_SLOT_ID slot;
	CK_FUNCTION_LIST *f;
	CK_SESSION_HANDLE s;
	struct nhi_token_keys tk;
	unsigned long long tk_version = 0;
	size_t i;

	step_begin(c, "expected keys: present, sensitive, not extractable");
	if (h == NULL) {
		step_fail(c, "token not open (see above): keys not checked");
		return;
	}
	f = nhi_hsm_raw_functions(h, &slot);
	/* login is per application in PKCS#11: this session sees the private objects */
	if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) {
		step_fail(c, "cannot open a session on the token");
		return;
	}
	/* the key nhid serves with: a committed rotation's (its errors are the certificate step's) */
	check_key(c, h, s, t->version > 0 ? "TLS (rotated)" : "TLS", t->key);
	/* the token keys nhid signs and verifies with: a committed token-keys package's, else config's */
	if (nhi_server_token_keys_in_force(cfg, &tk, &tk_version) != NHI_OK) {
		step_fail(c, "%s: the token keys nhid would use are unknown; restore the applied body or apply a new "
			     "token-keys package (docs/updates.md)",
			  nhi_err_detail());
	} else {
		if (tk_version > 0)
			printf("      token keys of the committed token-keys package (version %llu), not config token_keys\n",
			       tk_version);
		for (i = 0; i < tk.n; i++)
			check_key(c, h, s,
				  strcmp(tk.labels[i], tk.signing) == 0    ? "token signing"
				  : strcmp(tk.labels[i], tk.previous) == 0 ? "token (previous)"
									   : "token (retired)",
				  tk.labels[i]);
	}
	check_key(c, h, s, "backup signing", cfg->backup_sign_key);
	check_key(c, h, s, "backup wrap", wrap_key);
	check_key(c, h, s, "audit", cfg->audit_key);
	f->C_CloseSession(s);
}

/* ---- /proc/net and resolv.conf ------------------------------------------------------- */

static void check_routes(struct check *c, bool allow_default)
{
	char line[512], ifname[32], dst6[40];
	unsigned long dst, gw, mask;
	unsigned flags, plen, i, n = 0, nlines;
	FILE *f;

	step_begin(c, "routing: default route (read from /proc/net/route and /proc/net/ipv6_route)");
	f = fopen("/proc/net/route", "re");
	for (nlines = 0; f != NULL && nlines < NHI_AIRGAP_PROC_LINES_MAX && fgets(line, sizeof(line), f); nlines++) {
		if (sscanf(line, "%31s %lx %lx %x %*d %*d %*d %lx", ifname, &dst, &gw, &flags, &mask) == 5 &&
		    dst == 0 && mask == 0 && (flags & 0x1 /* RTF_UP */)) {
			struct in_addr a = {.s_addr = (in_addr_t)gw};
			char g[INET_ADDRSTRLEN];

			inet_ntop(AF_INET, &a, g, sizeof(g));
			if (n++ < NHI_AIRGAP_LISTED_MAX)
				printf("      IPv4 default route via %s dev %s\n", g, ifname);
		}
	}
	if (f != NULL)
		fclose(f);
	f = fopen("/proc/net/ipv6_route", "re");
	for (nlines = 0; f != NULL && nlines < NHI_AIRGAP_PROC_LINES_MAX && fgets(line, sizeof(line), f); nlines++) {
		/* dst plen src plen nexthop metric refcnt use flags iface */
		if (sscanf(line, "%39s %x %*s %*x %*s %*x %*x %*x %x %31s", dst6, &plen, &flags, ifname) != 4)
			continue;
		for (i = 0; dst6[i] == '0'; i++)
			;
		/* the kernel's own unreachable default on lo (RTF_REJECT) is no route */
		if (dst6[i] == '\0' && plen == 0 && (flags & 0x1) && !(flags & 0x200 /* RTF_REJECT */) &&
		    strcmp(ifname, "lo") != 0 && n++ < NHI_AIRGAP_LISTED_MAX)
			printf("      IPv6 default route dev %s\n", ifname);
	}
	if (f != NULL)
		fclose(f);
	if (n == 0)
		printf("      no default route: only directly connected networks are reachable\n");
	else if (allow_default)
		printf("      %u default route(s) present: accepted (--allow-default-route)\n", n);
	else
		step_fail(c, "%u default route(s) present: an air-gapped host needs none; remove it (ip route del "
			     "default), or pass --allow-default-route if your LAN needs it",
			  n);
}

static void check_dns(struct check *c)
{
	char line[512], ns[64];
	unsigned nlines, n = 0, remote = 0;
	FILE *f;

	step_begin(c, "DNS: resolver configuration (/etc/resolv.conf; no query is sent)");
	f = fopen("/etc/resolv.conf", "re");
	if (f == NULL) {
		printf("      no /etc/resolv.conf: this host resolves nothing by DNS\n");
		return;
	}
	for (nlines = 0; nlines < NHI_AIRGAP_PROC_LINES_MAX && fgets(line, sizeof(line), f); nlines++) {
		if (sscanf(line, " nameserver %63s", ns) != 1)
			continue;
		n++;
		if (strncmp(ns, "127.", 4) != 0 && strcmp(ns, "::1") != 0)
			remote++;
		if (n <= NHI_AIRGAP_LISTED_MAX)
			printf("      nameserver %s%s\n", ns,
			       strncmp(ns, "127.", 4) == 0 || strcmp(ns, "::1") == 0 ? " (local)" : "");
	}
	fclose(f);
	if (n == 0)
		printf("      no nameserver configured\n");
	printf("      nhid never resolves names (listen must be an address); %u non-local nameserver(s) "
	       "configured; reported, not tested\n",
	       remote);
}

/* /proc/net/tcp{,6} prints each address as the kernel's 32-bit words in host order */
static bool parse_proc_addr(const char *hex, bool v6, char *out, size_t out_len)
{
	unsigned char raw[16];
	uint32_t w;
	size_t words = v6 ? 4 : 1, i, j;
	char part[9];

	if (strlen(hex) != words * 8)
		return false;
	for (i = 0; i < words; i++) {
		for (j = 0; j < 8; j++) {
			if (!isxdigit((unsigned char)hex[i * 8 + j]))
				return false;
			part[j] = hex[i * 8 + j];
		}
		part[8] = '\0';
		w = (uint32_t)strtoul(part, NULL, 16);
		memcpy(raw + i * 4, &w, 4);
	}
	return inet_ntop(v6 ? AF_INET6 : AF_INET, raw, out, (socklen_t)out_len) != NULL;
}

static void check_listeners(struct check *c, const struct nhi_server_config *cfg)
{
	static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	char line[512], lhex[40], addr[INET6_ADDRSTRLEN];
	unsigned port, state, nlines, ours = 0, lan = 0;
	size_t t;
	FILE *f;

	step_begin(c, "listening TCP sockets (/proc/net/tcp, /proc/net/tcp6)");
	for (t = 0; t < 2; t++) {
		f = fopen(tables[t], "re");
		for (nlines = 0; f != NULL && nlines < NHI_AIRGAP_PROC_LINES_MAX && fgets(line, sizeof(line), f);
		     nlines++) {
			if (sscanf(line, " %*u: %39[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", lhex, &port, &state) != 3 ||
			    state != 0x0A /* TCP_LISTEN */ || !parse_proc_addr(lhex, t == 1, addr, sizeof(addr)))
				continue;
			if ((int)port == cfg->listen_port) {
				bool match = strcmp(addr, cfg->listen_host) == 0;

				ours += match;
				printf("      %s:%u listening%s\n", addr, port,
				       match ? " (nhid's configured address)" : " (NOT nhid's configured address)");
				if (!match)
					step_fail(c, "port %u is also bound on %s, not only on %s: find that listener "
						     "(ss -ltnp) and stop it",
						  port, addr, cfg->listen_host);
			} else if (strncmp(addr, "127.", 4) != 0 && strcmp(addr, "::1") != 0 &&
				   lan++ < NHI_AIRGAP_LISTED_MAX) {
				printf("      other service listening on %s:%u (reachable from the LAN)\n", addr, port);
			}
		}
		if (f != NULL)
			fclose(f);
	}
	if (ours == 0)
		printf("      nothing listens on %s:%d: nhid is not running (or runs in another network namespace)\n",
		       cfg->listen_host, cfg->listen_port);
	if (lan > 0)
		printf("      %u other non-loopback listener(s): review them (not nhid's; reported only)\n", lan);
}

/* ---- the command --------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl airgap check --config nhid.conf [--allow-default-route] [--wrap-key LABEL]\n"
		   "  checks this host against nhid's air-gap contract; prints [n/N] lines and PASS or FAIL\n"
		   "  (exit 0 / 1). Sends no packet: DNS is reported from resolv.conf, never queried.\n");
}

static int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"allow-default-route", no_argument, NULL, 'r'},
					     {"wrap-key", required_argument, NULL, 'w'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const char *config = NULL, *wrap_key = NHI_BACKUP_WRAP_KEY_DEFAULT;
	bool allow_default = false, cfg_ok = false;
	struct nhi_server_config cfg;
	struct nhi_hsm_config hc = {0};
	struct nhi_hsm *h = NULL;
	struct tls_in_force tif;
	struct check c = {0};
	uint8_t digest[32];
	nhi_err e;
	int o;

	optind = 1;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': config = optarg; break;
		case 'r': allow_default = true; break;
		case 'w': wrap_key = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}

	step_begin(&c, "configuration");
	if ((e = nhi_server_config_load(config, &cfg, digest)) != NHI_OK) {
		step_fail(&c, "%s [%s]", nhi_err_detail(), nhi_err_name(e));
	} else {
		cfg_ok = true;
		printf("      %s parses; listen %s:%d, token '%s'\n", config, cfg.listen_host, cfg.listen_port,
		       cfg.hsm_token);
	}
	step_begin(&c, "deployment contract: config/PIN file modes and owner, state and audit on local filesystems");
	if (!cfg_ok)
		step_fail(&c, "configuration unusable (see above): not checked");
	else if ((e = nhi_server_preflight(&cfg, config)) != NHI_OK)
		step_fail(&c, "%s [%s]", nhi_err_detail(), nhi_err_name(e));
	else
		printf("      config and PIN file private to uid %u; %s and the audit log's directory are local\n",
		       (unsigned)geteuid(), cfg.state_dir);

	step_begin(&c, "token reachable and logged in");
	if (!cfg_ok) {
		step_fail(&c, "configuration unusable (see above): not checked");
	} else {
		hc.module_path = cfg.hsm_module[0] ? cfg.hsm_module : NULL;
		hc.token = cfg.hsm_token;
		hc.pin_file = cfg.hsm_pin_file;
		hc.sessions = 2;
		if ((e = nhi_hsm_open(&hc, &h)) != NHI_OK) {
			step_fail(&c, "%s [%s]", nhi_err_detail(), nhi_err_name(e));
			h = NULL;
		} else {
			printf("      %s\n", nhi_hsm_token_desc(h));
		}
	}
	/* from here on this process cannot open a network socket even by mistake */
	if ((e = nhi_sandbox_install(NHI_SANDBOX_DEFAULT)) != NHI_OK) {
		nhi_hsm_free(h);
		return nhictl_fail("airgap", "no-egress filter", e);
	}
	if (cfg_ok) {
		tls_in_force(&cfg, &tif);
		check_keys(&c, &cfg, h, wrap_key, &tif);
		check_certs(&c, &cfg, h, &tif);
		nhi_buf_free(&tif.chain);
		check_bundle(&c, &cfg);
	} else {
		step_begin(&c, "expected keys");
		step_fail(&c, "configuration unusable: not checked");
		step_begin(&c, "trust material");
		step_fail(&c, "configuration unusable: not checked");
		step_begin(&c, "trust bundle");
		step_fail(&c, "configuration unusable: not checked");
	}
	check_routes(&c, allow_default);
	check_dns(&c);
	if (cfg_ok) {
		check_listeners(&c, &cfg);
	} else {
		step_begin(&c, "listening TCP sockets");
		step_fail(&c, "configuration unusable: not checked");
	}
	nhi_hsm_free(h);
	if (c.failed > 0) {
		printf("FAIL: %u problem(s) above\n", c.failed);
		return 1;
	}
	printf("PASS\n");
	return 0;
}

int nhictl_airgap(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {{"check", cmd_check}};

	return nhictl_dispatch("airgap", actions, 1, usage, argc, argv);
}
