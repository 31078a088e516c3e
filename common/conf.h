/*
 * common/conf.h — strict reading of nhid's config files (OpenSSL NCONF syntax): one
 * named section, every key known to the caller, no directives (.include, .pragma),
 * no keys outside the section, a hard size cap. Shared by the ceremony and server
 * configs so both refuse the same things the same way.
 */
#ifndef NHI_CONF_H
#define NHI_CONF_H

#include "nhi.h"

/* Called once per key in file order; return an error naming the key to stop. */
typedef nhi_err (*nhi_conf_fn)(void *ctx, const char *key, const char *value);

nhi_err nhi_conf_parse(const char *text, size_t len, const char *section, const char *const *known_keys,
		       size_t n_known, nhi_conf_fn fn, void *ctx) NHI_MUST_CHECK;

/* Read a config file (capped at NHI_CONFIG_MAX_BYTES) into out; sha256 = its digest. */
nhi_err nhi_conf_read(const char *path, struct nhi_buf *out, uint8_t sha256[32]) NHI_MUST_CHECK;
/* The same for a config that must be private to this uid (nhid's): the owner and mode are
 * checked on the descriptor that is read (nhi_private_file_read), not on the path later. */
nhi_err nhi_conf_read_private(const char *path, struct nhi_buf *out, uint8_t sha256[32]) NHI_MUST_CHECK;

/*
 * The rules of every config text, without its keys: no NUL, no lone carriage return,
 * no '$' (NCONF expands $name and $ENV::NAME), no line continuation, no directive
 * (.include), plain section names, no ':' or '\\' in key names. For files NCONF
 * reads whole, such as the certificate profiles (provisioning/x509.c).
 */
nhi_err nhi_conf_text_check(const char *text, size_t len) NHI_MUST_CHECK;

/* Value helpers: each error names `key`. */
nhi_err nhi_conf_copy(char *dst, size_t cap, const char *key, const char *val) NHI_MUST_CHECK;
nhi_err nhi_conf_uint(unsigned long long *dst, const char *key, const char *val, unsigned long long min,
		      unsigned long long max) NHI_MUST_CHECK;
/* Split "a, b ,c" into at most max trimmed items of item_cap bytes each; `valid` may be NULL. */
nhi_err nhi_conf_list(const char *key, const char *val, char *items, size_t item_cap, size_t max, size_t *n_out,
		      bool (*valid)(const char *), const char *what) NHI_MUST_CHECK;

#endif
