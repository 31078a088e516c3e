/*
 * server/config.c — nhid's config file ([nhid] section, OpenSSL NCONF syntax via
 * common/conf.c) and the deployment-contract checks made before anything opens.
 */
#include "server_internal.h"
#include "../common/conf.h"
#include "../common/limits.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

static const char *const known_keys[] = {
	"listen",          "threads",          "hsm_module",        "hsm_token",
	"hsm_pin_file",    "ca_file",          "cert_file",         "tls_key",
	"token_keys",      "issuer",           "audiences",         "token_ttl_default_s",
	"token_ttl_max_s", "leeway_s",         "backup",            "backup_sign_key",
	"state_dir",       "audit_log",        "audit_key",         "audit_checkpoint_records",
	"audit_checkpoint_s", "admin_token_hash", "max_connections", "body_max_bytes",
	"header_max_bytes", "idle_timeout_s",  "requests_per_connection", "trust_domain",
	"updates_dir",     "update_scan_s",    "clock_skew_s",      "signing_keys",
	"manifest_role",   "verify_memo_entries", "tls_sessions", "header_max_count",
};

static bool valid_label(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > 64)
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '-' || s[i] == '_' || s[i] == '.'))
			return false;
	return true;
}

static bool valid_audience(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n >= 128)
		return false;
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || s[i] == '"' || s[i] == '\\' || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

/* a purpose or role name: [a-z0-9_-], 1..32 */
static bool valid_name(const char *s, size_t n)
{
	return n > 0 && n <= 32 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-") >= n;
}

static bool valid_sign_item(const char *s)
{
	size_t n = strlen(s), parts = 1, i;

	for (i = 0; i < n; i++)
		parts += s[i] == ':';
	return n > 0 && n < 200 && (parts == 3 || parts == 4);
}

/* signing_keys = purpose:label:sign_role[:verify_role], ... (verify_role defaults to sign_role) */
static nhi_err parse_sign_keys(struct nhi_server_config *c, const char *key, const char *val)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char items[NHI_SERVER_LIST_MAX][200], *f[4], *p;
	size_t n = 0, i, j, k;

	NHI_TRY(nhi_conf_list(key, val, &items[0][0], sizeof(items[0]), NHI_SERVER_LIST_MAX, &n, valid_sign_item,
			      "purpose:label:sign_role[:verify_role]"));
	for (i = 0; i < n; i++) {
		struct nhi_sign_key_cfg *k_ = &c->sign_keys[i];

		for (j = 0, p = items[i]; j < 4; j++) {
			f[j] = p;
			p = p ? strchr(p, ':') : NULL;
			if (p != NULL)
				*p++ = '\0';
		}
		NHI_CHECK(valid_name(f[0], strlen(f[0])), NHI_ERR_CONFIG,
			  "config key '%s': purpose '%.40s' must be 1-32 of [a-z0-9_-]", key, f[0]);
		NHI_CHECK(valid_label(f[1]), NHI_ERR_CONFIG, "config key '%s': '%.64s' (purpose %s) is not a key label",
			  key, f[1], f[0]);
		for (k = 2; k < 4; k++)
			NHI_CHECK(f[k] == NULL || valid_name(f[k], strlen(f[k])), NHI_ERR_CONFIG,
				  "config key '%s': role '%.40s' (purpose %s) must be 1-32 of [a-z0-9_-]", key, f[k], f[0]);
		for (k = 0; k < i; k++) {
			NHI_CHECK(strcmp(c->sign_keys[k].purpose, f[0]) != 0, NHI_ERR_CONFIG,
				  "config key '%s': purpose '%s' is given twice", key, f[0]);
			NHI_CHECK(strcmp(c->sign_keys[k].label, f[1]) != 0, NHI_ERR_CONFIG,
				  "config key '%s': key '%s' serves two purposes (%s, %s): give each purpose its own key",
				  key, f[1], c->sign_keys[k].purpose, f[0]);
		}
		snprintf(k_->purpose, sizeof(k_->purpose), "%s", f[0]);
		snprintf(k_->label, sizeof(k_->label), "%s", f[1]);
		snprintf(k_->sign_role, sizeof(k_->sign_role), "%s", f[2]);
		snprintf(k_->verify_role, sizeof(k_->verify_role), "%s", f[3] ? f[3] : f[2]);
	}
	c->n_sign_keys = n;
	rv = NHI_OK;
out:
	return rv;
}

/* a signing-service key must be nothing else: signing callers' bytes with the token,
 * TLS, audit, root or wrap key would let them forge what those keys vouch for */
static nhi_err sign_keys_distinct(const struct nhi_server_config *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *reserved[4 + NHI_SERVER_LIST_MAX];
	size_t n = 0, i, j;

	reserved[n++] = c->tls_key;
	reserved[n++] = c->audit_key;
	reserved[n++] = c->backup_sign_key;
	reserved[n++] = NHI_SERVER_WRAP_KEY_LABEL;
	for (i = 0; i < c->n_token_keys; i++)
		reserved[n++] = c->token_keys[i];
	for (i = 0; i < c->n_sign_keys; i++)
		for (j = 0; j < n; j++)
			NHI_CHECK(strcmp(c->sign_keys[i].label, reserved[j]) != 0 &&
					  strcmp(c->sign_keys[i].label, "nhid-root") != 0,
				  NHI_ERR_CONFIG,
				  "config key 'signing_keys': purpose %s names key '%s', which is one of nhid's own keys "
				  "(TLS, token, audit, root or wrap): give the signing service its own key "
				  "(`nhictl key create --label ...`)",
				  c->sign_keys[i].purpose, c->sign_keys[i].label);
	rv = NHI_OK;
out:
	return rv;
}

/* "host:port", "[v6]:port" */
static nhi_err parse_listen(struct nhi_server_config *c, const char *val)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char host[64];
	const char *colon;
	unsigned long long port = 0;
	unsigned char addr[16];
	size_t hl;

	if (val[0] == '[') {
		colon = strstr(val, "]:");
		NHI_CHECK(colon != NULL, NHI_ERR_CONFIG, "config key 'listen': '%.64s' is not [IPv6]:port", val);
		hl = (size_t)(colon - val - 1);
		NHI_CHECK(hl < sizeof(host), NHI_ERR_CONFIG, "config key 'listen': address too long");
		memcpy(host, val + 1, hl);
		host[hl] = '\0';
		colon++;
	} else {
		colon = strrchr(val, ':');
		NHI_CHECK(colon != NULL, NHI_ERR_CONFIG, "config key 'listen': '%.64s' is not host:port", val);
		hl = (size_t)(colon - val);
		NHI_CHECK(hl < sizeof(host), NHI_ERR_CONFIG, "config key 'listen': address too long");
		memcpy(host, val, hl);
		host[hl] = '\0';
	}
	/* an address, never a name: resolving one could mean a DNS query */
	NHI_CHECK(inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1, NHI_ERR_CONFIG,
		  "config key 'listen': '%.64s' is not an IP address (names are not resolved)", host);
	NHI_TRY(nhi_conf_uint(&port, "listen", colon + 1, 1, 65535));
	memcpy(c->listen_host, host, hl + 1);
	c->listen_port = (int)port;
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err set_uint(unsigned *dst, const char *key, const char *val, unsigned long long min,
			unsigned long long max)
{
	unsigned long long v = 0;
	nhi_err rv = nhi_conf_uint(&v, key, val, min, max);

	if (rv == NHI_OK)
		*dst = (unsigned)v;
	return rv;
}

static nhi_err set_size(size_t *dst, const char *key, const char *val, unsigned long long min,
			unsigned long long max)
{
	unsigned long long v = 0;
	nhi_err rv = nhi_conf_uint(&v, key, val, min, max);

	if (rv == NHI_OK)
		*dst = (size_t)v;
	return rv;
}

#define COPY(field) nhi_conf_copy(c->field, sizeof(c->field), key, val)

static nhi_err apply(void *ctx, const char *key, const char *val)
{
	struct nhi_server_config *c = ctx;

	if (strcmp(key, "listen") == 0)
		return parse_listen(c, val);
	if (strcmp(key, "threads") == 0)
		return set_uint(&c->threads, key, val, 1, NHI_SERVER_THREADS_MAX);
	if (strcmp(key, "hsm_module") == 0)
		return COPY(hsm_module);
	if (strcmp(key, "hsm_token") == 0)
		return COPY(hsm_token);
	if (strcmp(key, "hsm_pin_file") == 0)
		return COPY(hsm_pin_file);
	if (strcmp(key, "trust_domain") == 0)
		return valid_audience(val) && strchr(val, '/') == NULL
			       ? COPY(trust_domain)
			       : nhi_err_set(NHI_ERR_CONFIG, "config key 'trust_domain' must be a SPIFFE trust domain");
	if (strcmp(key, "ca_file") == 0)
		return COPY(ca_file);
	if (strcmp(key, "cert_file") == 0)
		return COPY(cert_file);
	if (strcmp(key, "backup") == 0)
		return COPY(backup);
	if (strcmp(key, "state_dir") == 0)
		return COPY(state_dir);
	if (strcmp(key, "audit_log") == 0)
		return COPY(audit_log);
	if (strcmp(key, "updates_dir") == 0)
		return COPY(updates_dir);
	if (strcmp(key, "update_scan_s") == 0)
		return set_uint(&c->update_scan_s, key, val, 1, NHI_SERVER_UPDATE_SCAN_MAX_S);
	if (strcmp(key, "clock_skew_s") == 0)
		return set_uint(&c->clock_skew_s, key, val, 1, NHI_UPDATE_CLOCK_SKEW_MAX_S);
	if (strcmp(key, "issuer") == 0)
		return valid_audience(val) ? COPY(issuer)
					   : nhi_err_set(NHI_ERR_CONFIG, "config key 'issuer' must be printable, no spaces");
	if (strcmp(key, "admin_token_hash") == 0)
		return nhi_admin_hash_valid(val) == NHI_OK
			       ? COPY(admin_token_hash)
			       : nhi_err_wrap(NHI_ERR_CONFIG, "config key 'admin_token_hash' (make it with `nhid "
							      "--hash-admin-token`)");
	if (strcmp(key, "tls_key") == 0 || strcmp(key, "backup_sign_key") == 0 || strcmp(key, "audit_key") == 0) {
		if (!valid_label(val))
			return nhi_err_set(NHI_ERR_CONFIG, "config key '%s': '%.64s' is not a key label", key, val);
		return nhi_conf_copy(key[0] == 't' ? c->tls_key : key[0] == 'b' ? c->backup_sign_key : c->audit_key, 65,
				     key, val);
	}
	if (strcmp(key, "token_keys") == 0)
		return nhi_conf_list(key, val, &c->token_keys[0][0], sizeof(c->token_keys[0]), NHI_SERVER_LIST_MAX,
				     &c->n_token_keys, valid_label, "a key label");
	if (strcmp(key, "signing_keys") == 0)
		return parse_sign_keys(c, key, val);
	if (strcmp(key, "manifest_role") == 0)
		return valid_name(val, strlen(val)) ? COPY(manifest_role)
						    : nhi_err_set(NHI_ERR_CONFIG,
								  "config key 'manifest_role' must be 1-32 of [a-z0-9_-]");
	if (strcmp(key, "audiences") == 0)
		return nhi_conf_list(key, val, &c->audiences[0][0], sizeof(c->audiences[0]), NHI_SERVER_LIST_MAX,
				     &c->n_audiences, valid_audience, "a printable audience without spaces");
	if (strcmp(key, "token_ttl_default_s") == 0)
		return set_uint(&c->token_ttl_default_s, key, val, 1, NHI_TOKEN_TTL_MAX_S);
	if (strcmp(key, "token_ttl_max_s") == 0)
		return set_uint(&c->token_ttl_max_s, key, val, 1, NHI_TOKEN_TTL_MAX_S);
	if (strcmp(key, "leeway_s") == 0)
		return set_uint(&c->leeway_s, key, val, 0, NHI_TOKEN_LEEWAY_MAX_S);
	if (strcmp(key, "audit_checkpoint_records") == 0)
		return set_uint(&c->audit_checkpoint_records, key, val, 1, 1000000);
	if (strcmp(key, "audit_checkpoint_s") == 0)
		return set_uint(&c->audit_checkpoint_s, key, val, 1, 86400);
	if (strcmp(key, "max_connections") == 0)
		return set_uint(&c->max_connections, key, val, 1, NHI_SERVER_CONNECTIONS_MAX);
	if (strcmp(key, "body_max_bytes") == 0)
		return set_size(&c->body_max_bytes, key, val, 256, NHI_SERVER_BODY_MAX_BYTES);
	if (strcmp(key, "header_max_bytes") == 0)
		return set_size(&c->header_max_bytes, key, val, 1024, NHI_SERVER_HEADER_MAX_BYTES);
	if (strcmp(key, "idle_timeout_s") == 0)
		return set_uint(&c->idle_timeout_s, key, val, 1, 3600);
	if (strcmp(key, "header_max_count") == 0)
		return set_uint(&c->header_max_count, key, val, 8, NHI_SERVER_HEADER_COUNT_MAX);
	if (strcmp(key, "requests_per_connection") == 0)
		return set_uint(&c->requests_per_connection, key, val, 1, 1000000);
	if (strcmp(key, "tls_sessions") == 0)
		return set_uint(&c->tls_sessions, key, val, 1, NHI_SERVER_TLS_SESSIONS_MAX);
	if (strcmp(key, "verify_memo_entries") == 0)
		return set_uint(&c->verify_memo_entries, key, val, 0, NHI_TOKEN_MEMO_ENTRIES_MAX);
	return nhi_err_set(NHI_ERR_CONFIG, "unknown config key '%s'", key);
}

nhi_err nhi_server_config_parse(const char *text, size_t len, struct nhi_server_config *c)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	memset(c, 0, sizeof(*c));
	c->threads = NHI_SERVER_THREADS_DEFAULT;
	snprintf(c->tls_key, sizeof(c->tls_key), "nhid-tls");
	snprintf(c->backup_sign_key, sizeof(c->backup_sign_key), "nhid-root");
	snprintf(c->audit_key, sizeof(c->audit_key), "nhid-audit");
	c->token_ttl_default_s = NHI_TOKEN_TTL_DEFAULT_S;
	c->token_ttl_max_s = NHI_SERVER_TOKEN_TTL_MAX_DEFAULT_S;
	c->leeway_s = NHI_TOKEN_LEEWAY_DEFAULT_S;
	c->audit_checkpoint_records = NHI_SERVER_AUDIT_CHECKPOINT_RECORDS_DEFAULT;
	c->audit_checkpoint_s = NHI_SERVER_AUDIT_CHECKPOINT_S_DEFAULT;
	c->max_connections = NHI_SERVER_CONNECTIONS_DEFAULT;
	c->body_max_bytes = NHI_SERVER_BODY_DEFAULT_BYTES;
	c->header_max_bytes = NHI_SERVER_HEADER_DEFAULT_BYTES;
	c->header_max_count = NHI_SERVER_HEADER_COUNT_DEFAULT;
	c->idle_timeout_s = NHI_SERVER_IDLE_TIMEOUT_DEFAULT_S;
	c->requests_per_connection = NHI_SERVER_REQUESTS_PER_CONN_DEFAULT;
	c->verify_memo_entries = NHI_SERVER_VERIFY_MEMO_DEFAULT;
	c->tls_sessions = NHI_SERVER_TLS_SESSIONS_DEFAULT;
	c->update_scan_s = NHI_SERVER_UPDATE_SCAN_DEFAULT_S;
	c->clock_skew_s = NHI_UPDATE_CLOCK_SKEW_DEFAULT_S;
	snprintf(c->manifest_role, sizeof(c->manifest_role), "manifest-verifier");
	NHI_TRY(nhi_conf_parse(text, len, "nhid", known_keys, sizeof(known_keys) / sizeof(known_keys[0]), apply, c));
	NHI_CHECK(c->listen_port != 0, NHI_ERR_CONFIG, "config key 'listen' is required (e.g. 127.0.0.1:8443)");
	NHI_CHECK(c->hsm_token[0] && c->hsm_pin_file[0], NHI_ERR_CONFIG,
		  "config keys 'hsm_token' and 'hsm_pin_file' are required");
	NHI_CHECK(c->trust_domain[0], NHI_ERR_CONFIG, "config key 'trust_domain' is required (as in the ceremony)");
	NHI_CHECK(c->ca_file[0] && c->cert_file[0], NHI_ERR_CONFIG, "config keys 'ca_file' and 'cert_file' are required");
	NHI_CHECK(c->n_token_keys > 0, NHI_ERR_CONFIG, "config key 'token_keys' is required (e.g. nhid-token-1)");
	NHI_CHECK(c->issuer[0], NHI_ERR_CONFIG, "config key 'issuer' is required");
	NHI_CHECK(c->backup[0], NHI_ERR_CONFIG, "config key 'backup' is required (the identity backup to load)");
	NHI_CHECK(c->state_dir[0] && c->audit_log[0], NHI_ERR_CONFIG,
		  "config keys 'state_dir' and 'audit_log' are required");
	NHI_CHECK(c->token_ttl_default_s <= c->token_ttl_max_s, NHI_ERR_CONFIG,
		  "token_ttl_default_s (%u) is above token_ttl_max_s (%u)", c->token_ttl_default_s, c->token_ttl_max_s);
	/* the state dir holds update-state.json and the trust bundle: scanned as packages,
	 * they would be moved to rejected/ */
	NHI_CHECK(c->updates_dir[0] == '\0' || strcmp(c->updates_dir, c->state_dir) != 0, NHI_ERR_CONFIG,
		  "config key 'updates_dir' must not be state_dir (%s): give the watched directory its own path",
		  c->state_dir);
	NHI_TRY(sign_keys_distinct(c));
	rv = NHI_OK;
out:
	return rv;
}

/* ---- the deployment contract ----------------------------------------------------- */

const char *nhi_server_network_fs_name(long type)
{
	switch ((unsigned long)type) {
	case NFS_SUPER_MAGIC: return "NFS";
	case SMB_SUPER_MAGIC: return "SMB";
	case 0xFF534D42UL: return "CIFS";
	case 0xFE534D42UL: return "SMB2";
	case AFS_SUPER_MAGIC: return "AFS";
	case 0x6B414653UL: return "kAFS";
	case CODA_SUPER_MAGIC: return "Coda";
	case 0x65735546UL: return "FUSE (sshfs and friends)";
	case 0x564C: return "NCP";
	case 0x47504653UL: return "GPFS";
	case 0x0BD00BD0UL: return "Lustre";
	case 0x00C36400UL: return "Ceph";
	case 0x19830326UL: return "FhGFS/BeeGFS";
	case 0x013111A8UL: return "IBRIX";
	case 0x01161970UL: return "GFS2";
	case 0x7461636fUL: return "OCFS2";
	case V9FS_MAGIC: return "9P (virtio-9p, WSL, QEMU shares)";
	/* hypervisor shared folders: like 9P, an fsync reaches the host's cache, if that */
	case 0x786F4256UL: return "vboxsf (VirtualBox shared folder)";
	case 0xBACBACBCUL: return "vmhgfs (VMware shared folder)";
	case 0x7C7C6673UL: return "prl_fs (Parallels shared folder)";
	case 0x20030528UL: return "OrangeFS/PVFS2";
	case 0xAAD7AAEAUL: return "PanFS";
	case 0xBEEFDEADUL: return "StorNext";
	case 0x61636673UL: return "ACFS";
	default: return NULL;
	}
}

static nhi_err local_fs(const char *what, const char *path)
{
	struct statfs sf;
	const char *net;

	if (statfs(path, &sf) != 0)
		return nhi_err_set(errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "%s %s: %s (create it first)", what,
				   path, strerror(errno));
	net = nhi_server_network_fs_name((long)sf.f_type);
	if (net != NULL)
		return nhi_err_set(NHI_ERR_CONFIG,
				   "%s %s is on %s, a network filesystem: move it to a local filesystem (fsync and "
				   "rename are not durable there, and the state would leave the host)",
				   what, path, net);
	return NHI_OK;
}

/* opened as the real read opens it (O_NOFOLLOW, fstat of that descriptor), so what
 * --check accepts is what a start accepts */
static nhi_err private_file(const char *what, const char *path)
{
	struct nhi_buf b = {0};
	nhi_err rv = nhi_private_file_read(what, path, NHI_CONFIG_MAX_BYTES, &b);

	nhi_buf_free(&b);
	return rv;
}

/* read as hsm/hsm.c reads it at start: also refused here when empty */
static nhi_err pin_file(const char *path)
{
	struct nhi_buf b = {0};
	nhi_err rv = nhi_secret_file_read(path, NHI_PIN_FILE_MAX_BYTES, &b);

	nhi_buf_free(&b);
	return rv == NHI_OK ? rv : nhi_err_wrap(rv, "PIN file (hsm_pin_file)");
}

nhi_err nhi_server_preflight(const struct nhi_server_config *c, const char *config_path)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char dir[600], *slash;

	NHI_TRY(private_file("config file", config_path));
	NHI_TRY(pin_file(c->hsm_pin_file));
	NHI_TRY(local_fs("state_dir", c->state_dir));
	snprintf(dir, sizeof(dir), "%s", c->audit_log);
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	NHI_TRY(local_fs("audit log directory", slash != NULL ? (dir[0] ? dir : "/") : "."));
	if (c->updates_dir[0] != '\0') {
		struct stat a, b;

		NHI_CHECK(stat(c->updates_dir, &a) == 0 && S_ISDIR(a.st_mode), NHI_ERR_CONFIG,
			  "updates_dir %s is not a directory: create it (mkdir -m 700 %s) or remove the key to turn "
			  "updates off",
			  c->updates_dir, c->updates_dir);
		NHI_CHECK(stat(c->state_dir, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino, NHI_ERR_CONFIG,
			  "updates_dir %s is state_dir: give the watched directory its own path", c->updates_dir);
	}
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_server_config_load(const char *path, struct nhi_server_config *out, uint8_t digest[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};

	NHI_TRY(nhi_conf_read_private(path, &b, digest));
	rv = nhi_server_config_parse((const char *)b.data, b.len, out);
	if (rv != NHI_OK)
		nhi_err_wrap(rv, "%s", path);
out:
	nhi_buf_free(&b);
	return rv;
}
