/*
 * provisioning/ceremony_config.c — the ceremony's one reviewable config file,
 * parsed with OpenSSL's NCONF (no hand-written parser) and validated strictly:
 * every key known, every name well-formed, every validity within its cap.
 */
#include "prov_internal.h"
#include "../common/conf.h"
#include "../common/jsonw.h"
#include "../common/limits.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <openssl/bio.h>
#include <openssl/conf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool nhi_valid_agent_name(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 63 || !(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0])))
		return false;
	for (i = 0; i < n; i++)
		if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-' || s[i] == '_' ||
		      s[i] == '.'))
			return false;
	return true;
}

/* RFC 1123 host name: labels of [A-Za-z0-9-], not starting/ending with '-' */
bool nhi_valid_dns_name(const char *s)
{
	size_t n = strlen(s), label = 0, i;

	if (n == 0 || n > 253)
		return false;
	for (i = 0; i <= n; i++) {
		char c = s[i];

		if (c == '.' || c == '\0') {
			if (label == 0 || label > 63 || s[i - 1] == '-')
				return false;
			label = 0;
		} else if (isalnum((unsigned char)c) || (c == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
	return true;
}

/* SPIFFE trust domain: lower-case letters, digits, '.', '-', '_' */
bool nhi_valid_trust_domain(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 127)
		return false;
	for (i = 0; i < n; i++)
		if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '.' || s[i] == '-' ||
		      s[i] == '_'))
			return false;
	return true;
}

/*
 * Text for subject names, checked as what it becomes: a UTF8String of 1 to 64
 * characters (RFC 5280 ub-common-name, ub-organization-name), no C0 or C1 control
 * characters or DEL (it is printed and recorded), none of / , + = \ " < > ;
 * UTF-8 as nhid's JSON writer takes it (shortest form, no surrogates, <= U+10FFFF); a C1
 * character U+0080..U+009F is the two bytes 0xc2 0x80..0x9f.
 */
static bool valid_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i, n = strlen(s), chars = 0;
	bool ok = nhi_jsonw_utf8_valid(s, n);

	for (i = 0; ok && i < n; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f || strchr("/,+=\\\"<>;", p[i]) != NULL ||
		    (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f))
			ok = false;
		if ((p[i] & 0xc0) != 0x80) /* the first byte of a character */
			chars++;
	}
	return ok && chars > 0 && chars <= 64;
}

static nhi_err parse_days(int *dst, const char *key, const char *val, int max)
{
	unsigned long long v = 0;
	nhi_err rv = nhi_conf_uint(&v, key, val, 1, (unsigned long long)max);

	if (rv == NHI_OK)
		*dst = (int)v;
	return rv;
}

static bool valid_ip(const char *s)
{
	unsigned char addr[16];

	return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

/* a path as the operator wrote it: printed and recorded, so no control characters */
static bool valid_path(const char *s)
{
	size_t i, n = strlen(s);

	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return n > 0;
}

/*
 * A list of public-key files: at least one, none named twice. The same key under two
 * names is caught when the files are read (ceremony.c), by thumbprint.
 */
static nhi_err parse_key_files(const char *key, const char *val, char (*items)[NHI_CFG_PATH_MAX], size_t *n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t i, j;

	NHI_TRY(nhi_conf_list(key, val, &items[0][0], NHI_CFG_PATH_MAX, NHI_CFG_LIST_MAX, n, valid_path,
			      "a file name without control characters"));
	NHI_CHECK(*n > 0, NHI_ERR_CONFIG, "config key '%s' lists no file: name the PEM public-key files, comma separated",
		  key);
	for (i = 0; i < *n; i++)
		for (j = 0; j < i; j++)
			NHI_CHECK(strcmp(items[i], items[j]) != 0, NHI_ERR_CONFIG,
				  "config key '%s' lists '%.64s' twice: each key counts once", key, items[i]);
	rv = NHI_OK;
out:
	return rv;
}

static const char *const known_keys[] = {
	"token",       "module",         "out_dir",          "profiles",    "trust_domain", "organization",
	"root_cn",     "server_cn",      "server_dns",       "server_ip",   "root_days",    "server_days",
	"agent_days",  "update_signers", "update_threshold", "bundle_days", "peer_keys",    "manifest_keys",
};

static nhi_err apply(void *ctx, const char *key, const char *val)
{
	struct nhi_ceremony_config *c = ctx;

	if (strcmp(key, "token") == 0)
		return nhi_conf_copy(c->token, sizeof(c->token), key, val);
	if (strcmp(key, "module") == 0)
		return nhi_conf_copy(c->module, sizeof(c->module), key, val);
	if (strcmp(key, "out_dir") == 0)
		return nhi_conf_copy(c->out_dir, sizeof(c->out_dir), key, val);
	if (strcmp(key, "profiles") == 0)
		return nhi_conf_copy(c->profiles, sizeof(c->profiles), key, val);
	if (strcmp(key, "trust_domain") == 0) {
		if (!nhi_valid_trust_domain(val))
			return nhi_err_set(NHI_ERR_CONFIG,
					   "trust_domain '%s' is not valid: use lower-case letters, digits, '.', '-', '_'", val);
		return nhi_conf_copy(c->trust_domain, sizeof(c->trust_domain), key, val);
	}
	if (strcmp(key, "organization") == 0 || strcmp(key, "root_cn") == 0 || strcmp(key, "server_cn") == 0) {
		if (!valid_text(val))
			return nhi_err_set(NHI_ERR_CONFIG,
					   "config key '%s' must be 1-64 printable characters in UTF-8, without control "
					   "characters or / , + = \\ \" < > ;",
					   key);
		return nhi_conf_copy(key[0] == 'o' ? c->organization : key[0] == 'r' ? c->root_cn : c->server_cn, 128, key,
				  val);
	}
	if (strcmp(key, "server_dns") == 0)
		return nhi_conf_list(key, val, &c->server_dns[0][0], sizeof(c->server_dns[0]), NHI_CFG_LIST_MAX, &c->n_dns,
				     nhi_valid_dns_name, "a valid DNS name");
	if (strcmp(key, "server_ip") == 0)
		return nhi_conf_list(key, val, &c->server_ip[0][0], sizeof(c->server_ip[0]), NHI_CFG_LIST_MAX, &c->n_ip,
				     valid_ip, "an IPv4 or IPv6 address");
	if (strcmp(key, "root_days") == 0)
		return parse_days(&c->root_days, key, val, NHI_ROOT_DAYS_MAX);
	if (strcmp(key, "server_days") == 0)
		return parse_days(&c->server_days, key, val, NHI_SERVER_DAYS_MAX);
	if (strcmp(key, "agent_days") == 0)
		return parse_days(&c->agent_days, key, val, NHI_AGENT_DAYS_MAX);
	if (strcmp(key, "update_signers") == 0)
		return parse_key_files(key, val, c->update_signers, &c->n_signers);
	if (strcmp(key, "peer_keys") == 0)
		return parse_key_files(key, val, c->peer_keys, &c->n_peers);
	if (strcmp(key, "manifest_keys") == 0)
		return parse_key_files(key, val, c->manifest_keys, &c->n_manifest);
	if (strcmp(key, "update_threshold") == 0) {
		unsigned long long v = 0;
		nhi_err rv = nhi_conf_uint(&v, key, val, 1, NHI_CFG_LIST_MAX);

		if (rv == NHI_OK)
			c->update_threshold = (unsigned)v;
		return rv;
	}
	if (strcmp(key, "bundle_days") == 0)
		return parse_days(&c->bundle_days, key, val, NHI_ROOT_DAYS_MAX);
	return nhi_err_set(NHI_ERR_CONFIG, "unknown config key '%s'", key);
}

nhi_err nhi_ceremony_config_parse(const char *text, size_t len, struct nhi_ceremony_config *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	memset(out, 0, sizeof(*out));
	/* defaults */
	snprintf(out->profiles, sizeof(out->profiles), "openssl.cnf");
	out->root_days = 3650;
	out->server_days = 365;
	out->agent_days = 90;
	NHI_TRY(nhi_conf_parse(text, len, "ceremony", known_keys, sizeof(known_keys) / sizeof(known_keys[0]), apply,
			       out));
	NHI_CHECK(out->token[0] != '\0', NHI_ERR_CONFIG, "config key 'token' is required (label or pkcs11: URI)");
	NHI_CHECK(out->out_dir[0] != '\0', NHI_ERR_CONFIG, "config key 'out_dir' is required");
	NHI_CHECK(out->trust_domain[0] != '\0', NHI_ERR_CONFIG, "config key 'trust_domain' is required");
	NHI_CHECK(out->root_cn[0] != '\0', NHI_ERR_CONFIG, "config key 'root_cn' is required");
	NHI_CHECK(out->server_cn[0] != '\0', NHI_ERR_CONFIG, "config key 'server_cn' is required");
	NHI_CHECK(out->n_dns + out->n_ip > 0, NHI_ERR_CONFIG,
		  "the server certificate needs at least one name: set server_dns or server_ip");
	/* nothing the root signs outlives it: a chain to an expired root verifies nowhere */
	NHI_CHECK(out->server_days <= out->root_days && out->agent_days <= out->root_days, NHI_ERR_CONFIG,
		  "config key '%s' is %d, beyond root_days %d: a certificate the root signs must not outlive it; "
		  "lower it or raise root_days",
		  out->server_days > out->root_days ? "server_days" : "agent_days",
		  out->server_days > out->root_days ? out->server_days : out->agent_days, out->root_days);
	/* the trust bundle keys come as a set: update_signers turns the bundle on */
	if (out->n_signers == 0) {
		NHI_CHECK(out->update_threshold == 0, NHI_ERR_CONFIG,
			  "config key 'update_threshold' is set without update_signers: list the custodians' "
			  "public-key files in update_signers, or remove update_threshold");
		NHI_CHECK(out->bundle_days == 0 && out->n_peers == 0 && out->n_manifest == 0, NHI_ERR_CONFIG,
			  "config key '%s' is set without update_signers: the trust bundle is made only when "
			  "update_signers and update_threshold are set",
			  out->bundle_days ? "bundle_days" : out->n_peers ? "peer_keys" : "manifest_keys");
	} else {
		NHI_CHECK(out->update_threshold != 0, NHI_ERR_CONFIG,
			  "config key 'update_threshold' is required with update_signers: how many of the %zu "
			  "custodians must sign (1 to %zu)",
			  out->n_signers, out->n_signers);
		NHI_CHECK(out->update_threshold <= out->n_signers, NHI_ERR_CONFIG,
			  "config key 'update_threshold' is %u but update_signers lists %zu key(s): it must be 1 to %zu",
			  out->update_threshold, out->n_signers, out->n_signers);
		if (out->bundle_days == 0)
			out->bundle_days = out->root_days < 365 ? out->root_days : 365;
		NHI_CHECK(out->bundle_days <= out->root_days, NHI_ERR_CONFIG,
			  "config key 'bundle_days' is %d, beyond root_days %d: the bundle carries the root "
			  "certificate, so it must not outlive it",
			  out->bundle_days, out->root_days);
	}
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_ceremony_config_load(const char *path, struct nhi_ceremony_config *out, uint8_t sha256[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};

	NHI_TRY(nhi_conf_read(path, &b, sha256));
	rv = nhi_ceremony_config_parse((const char *)b.data, b.len, out);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "%s", path);
out:
	nhi_buf_free(&b);
	return rv;
}
