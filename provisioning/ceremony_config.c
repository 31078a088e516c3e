/*
 * provisioning/ceremony_config.c — the ceremony's one reviewable config file,
 * parsed with OpenSSL's NCONF (no hand-written parser) and validated strictly:
 * every key known, every name well-formed, every validity within its cap.
 */
#include "prov_internal.h"
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

/* printable text for subject names: no control characters, no '/', ',', '+', '=' */
static bool valid_text(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 64)
		return false;
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f || strchr("/,+=\\\"<>;", s[i]) != NULL)
			return false;
	return true;
}

static nhi_err copy_value(char *dst, size_t cap, const char *key, const char *val)
{
	if (strlen(val) >= cap)
		return nhi_err_set(NHI_ERR_CONFIG, "config key '%s' is longer than %zu bytes", key, cap - 1);
	memcpy(dst, val, strlen(val) + 1);
	return NHI_OK;
}

static nhi_err parse_days(int *dst, const char *key, const char *val, int max)
{
	char *end = NULL;
	long v = strtol(val, &end, 10);

	if (end == val || *end != '\0' || v < 1 || v > max)
		return nhi_err_set(NHI_ERR_CONFIG, "config key '%s' must be a number of days from 1 to %d, got '%s'", key,
				   max, val);
	*dst = (int)v;
	return NHI_OK;
}

/* split "a, b ,c" into trimmed items, each validated */
static nhi_err parse_list(const char *key, const char *val, char *items, size_t item_cap, size_t *n_out,
			  bool ip)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char *copy = strdup(val), *save = NULL, *tok, *end;
	unsigned char addr[16];
	size_t n = 0;

	NHI_CHECK(copy != NULL, NHI_ERR_NOMEM, "out of memory");
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ' || *tok == '\t')
			tok++;
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok == '\0')
			continue;
		NHI_CHECK(n < NHI_CFG_LIST_MAX, NHI_ERR_CONFIG, "config key '%s' lists more than %d entries", key,
			  NHI_CFG_LIST_MAX);
		if (ip)
			NHI_CHECK(inet_pton(AF_INET, tok, addr) == 1 || inet_pton(AF_INET6, tok, addr) == 1, NHI_ERR_CONFIG,
				  "config key '%s': '%s' is not an IPv4 or IPv6 address", key, tok);
		else
			NHI_CHECK(nhi_valid_dns_name(tok), NHI_ERR_CONFIG, "config key '%s': '%s' is not a valid DNS name",
				  key, tok);
		NHI_TRY(copy_value(items + n * item_cap, item_cap, key, tok));
		n++;
	}
	*n_out = n;
	rv = NHI_OK;
out:
	free(copy);
	return rv;
}

static const char *const known_keys[] = {
	"token",       "module",     "out_dir",   "profiles",  "trust_domain", "organization", "root_cn",
	"server_cn",   "server_dns", "server_ip", "root_days", "server_days",  "agent_days",
};

static nhi_err apply(struct nhi_ceremony_config *c, const char *key, const char *val)
{
	if (strcmp(key, "token") == 0)
		return copy_value(c->token, sizeof(c->token), key, val);
	if (strcmp(key, "module") == 0)
		return copy_value(c->module, sizeof(c->module), key, val);
	if (strcmp(key, "out_dir") == 0)
		return copy_value(c->out_dir, sizeof(c->out_dir), key, val);
	if (strcmp(key, "profiles") == 0)
		return copy_value(c->profiles, sizeof(c->profiles), key, val);
	if (strcmp(key, "trust_domain") == 0) {
		if (!nhi_valid_trust_domain(val))
			return nhi_err_set(NHI_ERR_CONFIG,
					   "trust_domain '%s' is not valid: use lower-case letters, digits, '.', '-', '_'", val);
		return copy_value(c->trust_domain, sizeof(c->trust_domain), key, val);
	}
	if (strcmp(key, "organization") == 0 || strcmp(key, "root_cn") == 0 || strcmp(key, "server_cn") == 0) {
		if (!valid_text(val))
			return nhi_err_set(NHI_ERR_CONFIG,
					   "config key '%s' must be 1-64 printable characters without / , + = \\ \" < > ;",
					   key);
		return copy_value(key[0] == 'o' ? c->organization : key[0] == 'r' ? c->root_cn : c->server_cn, 128, key,
				  val);
	}
	if (strcmp(key, "server_dns") == 0)
		return parse_list(key, val, &c->server_dns[0][0], sizeof(c->server_dns[0]), &c->n_dns, false);
	if (strcmp(key, "server_ip") == 0)
		return parse_list(key, val, &c->server_ip[0][0], sizeof(c->server_ip[0]), &c->n_ip, true);
	if (strcmp(key, "root_days") == 0)
		return parse_days(&c->root_days, key, val, NHI_ROOT_DAYS_MAX);
	if (strcmp(key, "server_days") == 0)
		return parse_days(&c->server_days, key, val, NHI_SERVER_DAYS_MAX);
	if (strcmp(key, "agent_days") == 0)
		return parse_days(&c->agent_days, key, val, NHI_AGENT_DAYS_MAX);
	return nhi_err_set(NHI_ERR_CONFIG, "unknown config key '%s'", key);
}

static bool is_known(const char *key)
{
	size_t i;

	for (i = 0; i < sizeof(known_keys) / sizeof(known_keys[0]); i++)
		if (strcmp(key, known_keys[i]) == 0)
			return true;
	return false;
}

static nhi_err refuse_directives(const char *text, size_t len)
{
	size_t i = 0, line = 1;

	while (i < len) {
		while (i < len && (text[i] == ' ' || text[i] == '\t'))
			i++;
		if (i < len && text[i] == '.')
			return nhi_err_set(NHI_ERR_CONFIG,
					   "line %zu: directives such as .include are not allowed: the ceremony config must "
					   "be one reviewable file",
					   line);
		while (i < len && text[i] != '\n') {
			if (text[i] == '\0')
				return nhi_err_set(NHI_ERR_CONFIG, "line %zu: NUL byte in config", line);
			i++;
		}
		i++;
		line++;
	}
	return NHI_OK;
}

nhi_err nhi_ceremony_config_parse(const char *text, size_t len, struct nhi_ceremony_config *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	CONF *conf = NULL;
	BIO *bio = NULL;
	STACK_OF(CONF_VALUE) *sect;
	STACK_OF(OPENSSL_CSTRING) *names = NULL;
	CONF_VALUE *v;
	long eline = 0;
	int i;

	memset(out, 0, sizeof(*out));
	NHI_CHECK(len <= NHI_CONFIG_MAX_BYTES, NHI_ERR_LIMIT, "config is larger than %d bytes", NHI_CONFIG_MAX_BYTES);
	NHI_TRY(refuse_directives(text, len));
	conf = NCONF_new(NULL);
	bio = BIO_new_mem_buf(text, (int)len);
	NHI_CHECK_SSL(conf != NULL && bio != NULL, NHI_ERR_NOMEM, "allocating the config parser");
	NHI_CHECK_SSL(NCONF_load_bio(conf, bio, &eline) == 1, NHI_ERR_CONFIG, "config syntax error at line %ld", eline);
	names = NCONF_get_section_names(conf);
	for (i = 0; names != NULL && i < sk_OPENSSL_CSTRING_num(names); i++) {
		const char *s = sk_OPENSSL_CSTRING_value(names, i);

		NHI_CHECK(strcmp(s, "ceremony") == 0 || strcmp(s, "default") == 0, NHI_ERR_CONFIG,
			  "unknown config section [%s]: only [ceremony] is read", s);
	}
	sect = NCONF_get_section(conf, "default");
	NHI_CHECK(sect == NULL || sk_CONF_VALUE_num(sect) == 0, NHI_ERR_CONFIG,
		  "config keys outside the [ceremony] section: put them under [ceremony]");
	sect = NCONF_get_section(conf, "ceremony");
	NHI_CHECK(sect != NULL, NHI_ERR_CONFIG, "config has no [ceremony] section");
	/* defaults */
	snprintf(out->profiles, sizeof(out->profiles), "openssl.cnf");
	out->root_days = 3650;
	out->server_days = 365;
	out->agent_days = 90;
	for (i = 0; i < sk_CONF_VALUE_num(sect); i++) {
		v = sk_CONF_VALUE_value(sect, i);
		NHI_CHECK(is_known(v->name), NHI_ERR_CONFIG, "unknown config key '%.64s' in [ceremony]", v->name);
		NHI_TRY(apply(out, v->name, v->value));
	}
	NHI_CHECK(out->token[0] != '\0', NHI_ERR_CONFIG, "config key 'token' is required (label or pkcs11: URI)");
	NHI_CHECK(out->out_dir[0] != '\0', NHI_ERR_CONFIG, "config key 'out_dir' is required");
	NHI_CHECK(out->trust_domain[0] != '\0', NHI_ERR_CONFIG, "config key 'trust_domain' is required");
	NHI_CHECK(out->root_cn[0] != '\0', NHI_ERR_CONFIG, "config key 'root_cn' is required");
	NHI_CHECK(out->server_cn[0] != '\0', NHI_ERR_CONFIG, "config key 'server_cn' is required");
	NHI_CHECK(out->n_dns + out->n_ip > 0, NHI_ERR_CONFIG,
		  "the server certificate needs at least one name: set server_dns or server_ip");
	rv = NHI_OK;
out:
	sk_OPENSSL_CSTRING_free(names);
	BIO_free(bio);
	NCONF_free(conf);
	return rv;
}

nhi_err nhi_ceremony_config_load(const char *path, struct nhi_ceremony_config *out, uint8_t sha256[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};

	NHI_TRY(nhi_file_read(path, NHI_CONFIG_MAX_BYTES, &b));
	NHI_TRY(nhi_sha256(b.data, b.len, sha256));
	rv = nhi_ceremony_config_parse((const char *)b.data, b.len, out);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "%s", path);
out:
	nhi_buf_free(&b);
	return rv;
}
