/*
 * identity/attributes.c — the one check of an agent's attributes text, wherever it
 * enters the store: what nhictl backup writes from the JSONL (jansson, compact, keys
 * sorted) and what an imported image holds. Read by hand, in one pass, without a tree
 * (an import runs it on every row of a 1M-agent image).
 *
 * Refused because two JSON readers could read the text differently (SQLite's JSON
 * functions, jansson in the resolve reply, the client that reads the reply): a key
 * listed twice in any object (readers keep the first, the last or both), \u0000 and
 * unpaired surrogates (jansson refuses them), an integer outside int64 or a number
 * that overflows a double (jansson refuses them), anything but RFC 8259 JSON. Refused
 * because the format says so (docs/formats.md): whitespace between tokens (not
 * compact), keys out of order in any object (not sorted). Sorted keys make a
 * duplicate the one case of a key equal to its predecessor: no key set per object.
 */
#include "identity_internal.h"

#include "../common/jsonw.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a closed level holds two bytes of the text at least ("{}", "[]"): deeper cannot close */
#define ATTR_DEPTH_MAX (NHI_AGENT_ATTRIBUTES_MAX_BYTES / 2)
/* what a number token may be as jansson reads it: int64 digits, or a double's text */
#define ATTR_NUMBER_MAX_BYTES 64

struct attr_level {
	uint16_t base;             /* p->top when the level opened: restored when it closes */
	uint16_t key_off, key_len; /* an object's last key, decoded, in keys[] */
	bool object, has_key;
};

struct attr_scan {
	const unsigned char *s;
	size_t len, i, depth, top; /* top: end of the decoded keys in use */
	struct attr_level lv[ATTR_DEPTH_MAX];
	/* a decoded key is never longer than its text, and keys' texts do not overlap */
	uint8_t keys[NHI_AGENT_ATTRIBUTES_MAX_BYTES];
};

/* the byte at i, or 0 past the end: 0 is valid nowhere, so both end the same way */
static unsigned at(const struct attr_scan *p, size_t i)
{
	return i < p->len ? p->s[i] : 0;
}

static nhi_err syntax(const struct attr_scan *p, const char *what)
{
	return nhi_err_set(NHI_ERR_FORMAT,
			   "attributes are not a JSON object in UTF-8 as nhictl backup writes it (compact RFC 8259 "
			   "JSON, keys sorted): %s at byte %zu",
			   what, p->i);
}

/* where a token is expected: whitespace is its own cause */
static nhi_err expected(const struct attr_scan *p, const char *what)
{
	unsigned c = at(p, p->i);

	return syntax(p, c == ' ' || c == '\t' || c == '\n' || c == '\r' ? "whitespace (not compact)" : what);
}

static int hex4(const struct attr_scan *p, size_t i)
{
	int v = 0, k, d;
	unsigned c;

	for (k = 0; k < 4; k++) {
		c = at(p, i + (size_t)k);
		d = c >= '0' && c <= '9' ? (int)c - '0'
		    : c >= 'a' && c <= 'f' ? (int)c - 'a' + 10
		    : c >= 'A' && c <= 'F' ? (int)c - 'A' + 10
					   : -1;
		if (d < 0)
			return -1;
		v = v << 4 | d;
	}
	return v;
}

/*
 * The string at p->i (its opening quote), decoded into dst when dst is not NULL (a
 * key: dst has room for the text's bytes, which a decoded string never exceeds).
 * Raw bytes are already known to be UTF-8 (the caller checked the whole text).
 */
static nhi_err string(struct attr_scan *p, uint8_t *dst, size_t *dst_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t n = 0;
	unsigned c;
	long cp, lo;

	p->i++;
	while ((c = at(p, p->i)) != '"') {
		if (c < 0x20) {
			rv = syntax(p, c == 0 && p->i >= p->len ? "an unterminated string" : "a control character in a string");
			goto out;
		}
		if (c != '\\') {
			if (dst != NULL)
				dst[n++] = (uint8_t)c;
			p->i++;
			continue;
		}
		c = at(p, p->i + 1);
		cp = c == '"' || c == '\\' || c == '/' ? (long)c
		     : c == 'b'			  ? '\b'
		     : c == 'f'			  ? '\f'
		     : c == 'n'			  ? '\n'
		     : c == 'r'			  ? '\r'
		     : c == 't'			  ? '\t'
		     : c == 'u'			  ? hex4(p, p->i + 2)
						  : -1;
		if (cp < 0) {
			rv = syntax(p, "an invalid escape");
			goto out;
		}
		p->i += c == 'u' ? 6 : 2;
		if (c == 'u' && cp == 0) {
			p->i -= 6;
			rv = syntax(p, "\\u0000 (jansson refuses it)");
			goto out;
		}
		if (c == 'u' && cp >= 0xd800 && cp <= 0xdfff) {
			lo = at(p, p->i) == '\\' && at(p, p->i + 1) == 'u' ? hex4(p, p->i + 2) : -1;
			if (cp > 0xdbff || lo < 0xdc00 || lo > 0xdfff) {
				p->i -= 6;
				rv = syntax(p, "an unpaired UTF-16 surrogate escape");
				goto out;
			}
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			p->i += 6;
		}
		if (dst == NULL)
			continue;
		if (cp < 0x80) {
			dst[n++] = (uint8_t)cp;
		} else if (cp < 0x800) {
			dst[n++] = (uint8_t)(0xc0 | cp >> 6);
			dst[n++] = (uint8_t)(0x80 | (cp & 0x3f));
		} else if (cp < 0x10000) {
			dst[n++] = (uint8_t)(0xe0 | cp >> 12);
			dst[n++] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
			dst[n++] = (uint8_t)(0x80 | (cp & 0x3f));
		} else {
			dst[n++] = (uint8_t)(0xf0 | cp >> 18);
			dst[n++] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
			dst[n++] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
			dst[n++] = (uint8_t)(0x80 | (cp & 0x3f));
		}
	}
	p->i++;
	if (dst_len != NULL)
		*dst_len = n;
	rv = NHI_OK;
out:
	return rv;
}

static bool digit(unsigned c)
{
	return c >= '0' && c <= '9';
}

/* RFC 8259 §6, and within what jansson reads: an int64, or a finite double */
static nhi_err number(struct attr_scan *p)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t start = p->i, n;
	bool real = false;
	const char *why = NULL;
	char buf[ATTR_NUMBER_MAX_BYTES + 1];
	char *end = NULL;
	double d;

	if (at(p, p->i) == '-')
		p->i++;
	if (at(p, p->i) == '0')
		p->i++; /* no other digit may follow a leading 0 */
	else if (!digit(at(p, p->i)))
		why = "a number without digits";
	else
		while (digit(at(p, p->i)))
			p->i++;
	if (why == NULL && at(p, p->i) == '.') {
		real = true;
		if (!digit(at(p, ++p->i)))
			why = "a number without digits after '.'";
		while (digit(at(p, p->i)))
			p->i++;
	}
	if (why == NULL && (at(p, p->i) == 'e' || at(p, p->i) == 'E')) {
		real = true;
		p->i++;
		if (at(p, p->i) == '+' || at(p, p->i) == '-')
			p->i++;
		if (!digit(at(p, p->i)))
			why = "a number without exponent digits";
		while (digit(at(p, p->i)))
			p->i++;
	}
	n = p->i - start;
	/* up to 18 digits and a sign: always an int64, and the common case */
	if (why == NULL && (real || n > 18)) {
		if (n > ATTR_NUMBER_MAX_BYTES) {
			why = "a number of more than 64 characters";
		} else {
			memcpy(buf, p->s + start, n);
			buf[n] = '\0';
			errno = 0;
			if (real) {
				d = strtod(buf, &end);
				if (end != buf + n || !isfinite(d))
					why = "a number beyond a double (jansson refuses it)";
			} else {
				(void)strtoll(buf, &end, 10);
				if (end != buf + n || errno == ERANGE)
					why = "an integer beyond 64 bits (jansson refuses it)";
			}
		}
		if (why != NULL)
			p->i = start;
	}
	if (why != NULL) {
		rv = syntax(p, why);
		goto out;
	}
	rv = NHI_OK;
out:
	return rv;
}

/* up to 64 bytes of the key's text for a message: printable ASCII, others as '?' */
static void key_text(const struct attr_scan *p, size_t start, char *out, size_t cap)
{
	size_t k = 0, i;
	unsigned c;

	for (i = start + 1; i < p->len && p->s[i] != '"' && k + 1 < cap; i++) {
		c = p->s[i];
		out[k++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
		if (c == '\\' && i + 1 < p->len && k + 1 < cap)
			out[k++] = (char)p->s[++i]; /* keep \" whole: the loop must not end on it */
	}
	out[k] = '\0';
}

/* the key at p->i of the object at the top: decoded, compared with the object's last key */
static nhi_err key(struct attr_scan *p)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct attr_level *l = &p->lv[p->depth - 1];
	size_t start = p->i, n = 0, min;
	int cmp;
	char shown[65];

	if (at(p, p->i) != '"') {
		rv = expected(p, "a key (a string) expected");
		goto out;
	}
	NHI_TRY(string(p, p->keys + p->top, &n));
	if (l->has_key) {
		min = n < l->key_len ? n : l->key_len;
		cmp = memcmp(p->keys + l->key_off, p->keys + p->top, min);
		cmp = cmp != 0 ? cmp : l->key_len < n ? -1 : l->key_len > n ? 1 : 0;
		if (cmp >= 0) {
			key_text(p, start, shown, sizeof(shown));
			if (cmp == 0)
				NHI_FAIL(NHI_ERR_FORMAT,
					 "attributes: key \"%s\" is listed twice in one %s (byte %zu): JSON readers "
					 "disagree on which value it has; list each key once",
					 shown, p->depth > 1 ? "nested object" : "object", start);
			NHI_FAIL(NHI_ERR_FORMAT,
				 "attributes: key \"%s\" (byte %zu) is out of order: keys are stored sorted by their "
				 "bytes, as nhictl backup writes them",
				 shown, start);
		}
		/* the last key's bytes are not needed again: the new one takes their place */
		memmove(p->keys + l->key_off, p->keys + p->top, n);
	} else {
		l->key_off = (uint16_t)p->top;
		l->has_key = true;
	}
	l->key_len = (uint16_t)n;
	p->top = (size_t)l->key_off + n;
	if (at(p, p->i) != ':') {
		rv = expected(p, "':' expected after a key");
		goto out;
	}
	p->i++;
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err scan(struct attr_scan *p)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct attr_level *l;
	unsigned c;
	const char *lit;
	size_t n;

	if (at(p, 0) != '{') {
		rv = expected(p, "not an object");
		goto out;
	}
	for (;;) {
		/* a value */
		c = at(p, p->i);
		if (c == '{' || c == '[') {
			if (p->depth == ATTR_DEPTH_MAX) {
				rv = syntax(p, "nesting deeper than the text could close");
				goto out;
			}
			l = &p->lv[p->depth++];
			l->object = c == '{';
			l->has_key = false;
			l->base = (uint16_t)p->top;
			p->i++;
			if (at(p, p->i) == (l->object ? '}' : ']')) {
				p->i++;
				p->depth--;
			} else {
				if (l->object)
					NHI_TRY(key(p));
				continue;
			}
		} else if (c == '"') {
			NHI_TRY(string(p, NULL, NULL));
		} else if (c == '-' || digit(c)) {
			NHI_TRY(number(p));
		} else if (c == 't' || c == 'f' || c == 'n') {
			lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
			n = strlen(lit);
			if (p->len - p->i < n || memcmp(p->s + p->i, lit, n) != 0) {
				rv = syntax(p, "an unknown literal");
				goto out;
			}
			p->i += n;
		} else {
			rv = expected(p, "a value expected");
			goto out;
		}
		/* after a value: close what ends here, then a ',' and the next member */
		for (;;) {
			if (p->depth == 0) {
				if (p->i != p->len) {
					rv = expected(p, "bytes after the object");
					goto out;
				}
				rv = NHI_OK;
				goto out;
			}
			l = &p->lv[p->depth - 1];
			c = at(p, p->i);
			if (c != (l->object ? '}' : ']'))
				break;
			p->i++;
			p->depth--;
			p->top = l->base; /* the closed level's keys are done with */
		}
		if (c != ',') {
			rv = expected(p, l->object ? "',' or '}' expected" : "',' or ']' expected");
			goto out;
		}
		p->i++;
		if (l->object)
			NHI_TRY(key(p));
	}
out:
	return rv;
}

nhi_err nhi_agent_attributes_check(const char *text, size_t len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct attr_scan *p = NULL;
	/* on the stack: no allocation per row of an import; uninitialised, written before read */
	struct attr_scan scan_state;

	NHI_CHECK(text != NULL && len <= NHI_AGENT_ATTRIBUTES_MAX_BYTES, NHI_ERR_FORMAT,
		  "attributes are missing or over %d bytes", NHI_AGENT_ATTRIBUTES_MAX_BYTES);
	NHI_CHECK(nhi_jsonw_utf8_valid(text, len), NHI_ERR_FORMAT,
		  "attributes are not a JSON object in UTF-8: not valid UTF-8");
	p = &scan_state;
	p->s = (const unsigned char *)text;
	p->len = len;
	p->i = p->depth = p->top = 0;
	rv = scan(p);
out:
	return rv;
}
