/* common/conf.c — strict NCONF config reading (see conf.h). */
#include "conf.h"
#include "limits.h"

#include <openssl/bio.h>
#include <openssl/conf.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the bytes OpenSSL's default NCONF syntax skips as whitespace inside a line (conf_def.h
 * CONF_WS: space, tab and carriage return; checked against libcrypto 3.0) */
static bool conf_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* a section name we can compare byte for byte with what NCONF makes of it: NCONF runs
 * section names through its value unescaping, so anything else is refused */
static bool plain_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int known_index(const char *key, size_t klen, const char *const *known, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strlen(known[i]) == klen && memcmp(key, known[i], klen) == 0)
			return (int)i;
	return -1;
}

/*
 * Everything NCONF would take from outside this file, or read differently from how a
 * reviewer reads it, is refused before NCONF sees the text:
 * - a line whose first non-whitespace byte is '.' (.include, .pragma), whitespace as NCONF
 *   counts it (\r included);
 * - a carriage return not followed by \n: NCONF reads lines in 510-byte chunks and takes a
 *   chunk ending in \r as the end of a line, so a "line" could start mid-line;
 * - '$' anywhere: NCONF expands $name, ${name} and $ENV::NAME, and the config digest does
 *   not cover the environment;
 * - a line ending in '\' (NCONF joins it with the next), ':' or '\' in a key name
 *   (section::key puts a key into another section), section names other than [A-Za-z0-9_];
 * - a known key given twice in `section` (NCONF keeps the last one silently).
 * NCONF drops a UTF-8 byte order mark at the start of the text (conf_def.c, first read), so
 * the scan drops it too: read as part of line 1 it hid that line from every rule above
 * (a BOM before .include or [section] passed the scan while NCONF obeyed the line).
 * With those gone, NCONF's lines are this file's lines and its keys are the names below.
 */
static nhi_err scan_text(const char *text, size_t len, const char *section, const char *const *known,
			 size_t n_known)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t *first = calloc(n_known > 0 ? n_known : 1, sizeof(*first));
	size_t i = 0, line = 1, eol, e, k;
	bool in_section = false;
	int idx;

	NHI_CHECK(first != NULL, NHI_ERR_NOMEM, "out of memory");
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		i = 3;
	for (; i < len; i = eol + 1, line++) {
		for (eol = i; eol < len && text[eol] != '\n'; eol++) {
			NHI_CHECK(text[eol] != '\0', NHI_ERR_CONFIG, "line %zu: NUL byte in config", line);
			NHI_CHECK(text[eol] != '\r' || (eol + 1 < len && text[eol + 1] == '\n'), NHI_ERR_CONFIG,
				  "line %zu: carriage return not followed by a newline: end lines with \\n or \\r\\n only",
				  line);
			NHI_CHECK(text[eol] != '$', NHI_ERR_CONFIG,
				  "line %zu: '$' is not allowed in a config: the parser would expand $name or $ENV::NAME "
				  "from outside this file; write the value out",
				  line);
		}
		e = eol;
		while (e > i && text[e - 1] == '\r')
			e--;
		NHI_CHECK(e == i || text[e - 1] != '\\', NHI_ERR_CONFIG,
			  "line %zu ends in '\\', which joins it with the next line: write each key on one line", line);
		while (i < e && conf_ws(text[i]))
			i++;
		NHI_CHECK(i == e || text[i] != '.', NHI_ERR_CONFIG,
			  "line %zu: directives such as .include are not allowed: a config must be one reviewable file",
			  line);
		if (i == e || text[i] == '#')
			continue;
		if (text[i] == '[') {
			size_t s;

			for (i++; i < e && conf_ws(text[i]); i++)
				;
			for (s = i; i < e && plain_name_char(text[i]); i++)
				;
			k = i - s;
			for (; i < e && conf_ws(text[i]); i++)
				;
			NHI_CHECK(k > 0 && i < e && text[i] == ']', NHI_ERR_CONFIG,
				  "line %zu: a section header must be [name] with letters, digits and '_' only", line);
			in_section = strlen(section) == k && memcmp(text + s, section, k) == 0;
			continue;
		}
		for (k = i; k < e && !conf_ws(text[k]) && text[k] != '=' && text[k] != '#'; k++)
			NHI_CHECK(text[k] != ':' && text[k] != '\\', NHI_ERR_CONFIG,
				  "line %zu: ':' and '\\' are not allowed in a key name (section::key would put the key "
				  "into another section): write it under its [section]",
				  line);
		idx = in_section ? known_index(text + i, k - i, known, n_known) : -1;
		if (idx < 0)
			continue; /* unknown keys and keys outside the section are refused after parsing */
		NHI_CHECK(first[idx] == 0, NHI_ERR_CONFIG,
			  "config key '%s' is given twice (lines %zu and %zu): keep one", known[idx], first[idx], line);
		first[idx] = line;
	}
	rv = NHI_OK;
out:
	free(first);
	return rv;
}

nhi_err nhi_conf_text_check(const char *text, size_t len)
{
	return scan_text(text, len, "", NULL, 0);
}

static bool is_known(const char *key, const char *const *known, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(key, known[i]) == 0)
			return true;
	return false;
}

nhi_err nhi_conf_parse(const char *text, size_t len, const char *section, const char *const *known_keys,
		       size_t n_known, nhi_conf_fn fn, void *ctx)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	CONF *conf = NULL;
	BIO *bio = NULL;
	STACK_OF(CONF_VALUE) *sect;
	STACK_OF(OPENSSL_CSTRING) *names = NULL;
	CONF_VALUE *v;
	long eline = 0;
	int i;

	NHI_CHECK(len <= NHI_CONFIG_MAX_BYTES, NHI_ERR_LIMIT, "config is larger than %d bytes", NHI_CONFIG_MAX_BYTES);
	NHI_TRY(scan_text(text, len, section, known_keys, n_known));
	conf = NCONF_new(NULL);
	bio = BIO_new_mem_buf(text, (int)len);
	NHI_CHECK_SSL(conf != NULL && bio != NULL, NHI_ERR_NOMEM, "allocating the config parser");
	NHI_CHECK_SSL(NCONF_load_bio(conf, bio, &eline) == 1, NHI_ERR_CONFIG, "config syntax error at line %ld", eline);
	names = NCONF_get_section_names(conf);
	for (i = 0; names != NULL && i < sk_OPENSSL_CSTRING_num(names); i++) {
		const char *s = sk_OPENSSL_CSTRING_value(names, i);

		NHI_CHECK(strcmp(s, section) == 0 || strcmp(s, "default") == 0, NHI_ERR_CONFIG,
			  "unknown config section [%.*s]: only [%s] is read", nhi_utf8_cut(s, 64), s, section);
	}
	sect = NCONF_get_section(conf, "default");
	NHI_CHECK(sect == NULL || sk_CONF_VALUE_num(sect) == 0, NHI_ERR_CONFIG,
		  "config keys outside the [%s] section: put them under [%s]", section, section);
	sect = NCONF_get_section(conf, section);
	NHI_CHECK(sect != NULL, NHI_ERR_CONFIG, "config has no [%s] section", section);
	for (i = 0; i < sk_CONF_VALUE_num(sect); i++) {
		v = sk_CONF_VALUE_value(sect, i);
		NHI_CHECK(is_known(v->name, known_keys, n_known), NHI_ERR_CONFIG, "unknown config key '%.*s' in [%s]",
			  nhi_utf8_cut(v->name, 64), v->name, section);
		NHI_TRY(fn(ctx, v->name, v->value));
	}
	rv = NHI_OK;
out:
	sk_OPENSSL_CSTRING_free(names);
	BIO_free(bio);
	NCONF_free(conf);
	return rv;
}

nhi_err nhi_conf_read(const char *path, struct nhi_buf *out, uint8_t sha256[32])
{
	nhi_err rv = nhi_file_read(path, NHI_CONFIG_MAX_BYTES, out);

	if (rv == NHI_OK)
		rv = nhi_sha256(out->data, out->len, sha256);
	return rv;
}

nhi_err nhi_conf_read_private(const char *path, struct nhi_buf *out, uint8_t sha256[32])
{
	nhi_err rv = nhi_private_file_read("config file", path, NHI_CONFIG_MAX_BYTES, out);

	if (rv == NHI_OK)
		rv = nhi_sha256(out->data, out->len, sha256);
	return rv;
}

nhi_err nhi_conf_copy(char *dst, size_t cap, const char *key, const char *val)
{
	if (strlen(val) >= cap)
		return nhi_err_set(NHI_ERR_CONFIG, "config key '%s' is longer than %zu bytes", key, cap - 1);
	memcpy(dst, val, strlen(val) + 1);
	return NHI_OK;
}

nhi_err nhi_conf_uint(unsigned long long *dst, const char *key, const char *val, unsigned long long min,
		      unsigned long long max)
{
	nhi_err rv = NHI_ERR_CONFIG;
	const char *why = "not a whole number";
	char *end = NULL;
	unsigned long long v;

	/* strtoull alone would take " 7", "+7" and "-7" (as 2^64 - 7) */
	if (val[0] < '0' || val[0] > '9')
		goto out;
	errno = 0;
	v = strtoull(val, &end, 10);
	if (*end != '\0')
		goto out;
	/* strtoull saturates at ULLONG_MAX and sets ERANGE: without this check a value past
	 * 2^64 - 1 was read as 2^64 - 1, and taken wherever max is ULLONG_MAX */
	why = "too large";
	if (errno == ERANGE)
		goto out;
	why = v < min ? "too small" : "too large";
	if (v < min || v > max)
		goto out;
	*dst = v;
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		rv = nhi_err_set(rv, "config key '%s' must be a whole number from %llu to %llu, got '%.*s' (%s)", key,
				 min, max, nhi_utf8_cut(val, 32), val, why);
	return rv;
}

nhi_err nhi_conf_list(const char *key, const char *val, char *items, size_t item_cap, size_t max, size_t *n_out,
		      bool (*valid)(const char *), const char *what)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char *copy = strdup(val), *save = NULL, *tok, *end;
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
		NHI_CHECK(n < max, NHI_ERR_CONFIG, "config key '%s' lists more than %zu entries", key, max);
		NHI_CHECK(valid == NULL || valid(tok), NHI_ERR_CONFIG, "config key '%s': '%.*s' is not %s", key,
			  nhi_utf8_cut(tok, 64), tok, what);
		NHI_TRY(nhi_conf_copy(items + n * item_cap, item_cap, key, tok));
		n++;
	}
	*n_out = n;
	rv = NHI_OK;
out:
	free(copy);
	return rv;
}
