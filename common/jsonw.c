/*
 * common/jsonw.c — JSON text written straight into a buffer (jsonw.h). Escaping
 * follows RFC 8259 §7 as jansson applies it with JSON_ENSURE_ASCII: '"' and '\'
 * escaped, control characters as \b \f \n \r \t or \u00XX, everything above U+007F
 * as \uXXXX (a UTF-16 surrogate pair above the BMP), upper-case hex.
 */
#include "jsonw.h"
#include "limits.h"

#include <stdio.h>
#include <string.h>

/* the code point at s (n > 0 bytes left) and its length; 0 when not valid UTF-8 */
static size_t utf8_next(const unsigned char *s, size_t n, unsigned *cp)
{
	unsigned c = s[0], v = 0;
	size_t len = 0, i;

	if (c < 0x80) {
		v = c;
		len = 1;
	} else if (c >= 0xc2 && c < 0xf5) { /* below: a continuation byte or an overlong lead */
		len = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
		v = c & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
		if (len > n)
			len = 0;
		for (i = 1; i < len; i++) {
			if ((s[i] & 0xc0) != 0x80)
				len = 0;
			else
				v = (v << 6) | (s[i] & 0x3f);
		}
		/* overlong, a surrogate, or beyond Unicode */
		if ((len == 3 && v < 0x800) || (len == 4 && v < 0x10000) || (v >= 0xd800 && v <= 0xdfff) || v > 0x10ffff)
			len = 0;
	}
	*cp = v;
	return len;
}

/* a failed write leaves the buffer as it was found, NUL-terminated */
static void cut_back(struct nhi_buf *b, size_t start)
{
	b->len = start;
	if (b->data != NULL)
		b->data[start] = '\0';
}

bool nhi_jsonw_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, k = 1;
	unsigned cp;

	while (i < n && k > 0) {
		k = utf8_next(p + i, n - i, &cp);
		i += k;
	}
	return i >= n;
}

nhi_err nhi_jsonw_str(struct nhi_buf *b, const char *s, size_t n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const unsigned char *p = (const unsigned char *)s;
	size_t start = b->len, i = 0, run, k;
	unsigned cp;
	char esc[16];
	int e;

	NHI_TRY(nhi_buf_append(b, "\"", 1));
	while (i < n) {
		/* the plain run up to the next byte that needs escaping, appended at once */
		for (run = i; run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\'; run++)
			;
		if (run > i)
			NHI_TRY(nhi_buf_append(b, p + i, run - i));
		if ((i = run) >= n)
			break;
		k = utf8_next(p + i, n - i, &cp);
		NHI_CHECK(k > 0, NHI_ERR_ARG, "a JSON string is not valid UTF-8 (byte %zu)", i);
		i += k;
		switch (cp) {
		case '"': e = snprintf(esc, sizeof(esc), "\\\""); break;
		case '\\': e = snprintf(esc, sizeof(esc), "\\\\"); break;
		case '\b': e = snprintf(esc, sizeof(esc), "\\b"); break;
		case '\f': e = snprintf(esc, sizeof(esc), "\\f"); break;
		case '\n': e = snprintf(esc, sizeof(esc), "\\n"); break;
		case '\r': e = snprintf(esc, sizeof(esc), "\\r"); break;
		case '\t': e = snprintf(esc, sizeof(esc), "\\t"); break;
		default:
			if (cp < 0x10000) {
				e = snprintf(esc, sizeof(esc), "\\u%04X", cp);
			} else { /* RFC 8259 §7: a surrogate pair */
				cp -= 0x10000;
				e = snprintf(esc, sizeof(esc), "\\u%04X\\u%04X", 0xd800 | (cp >> 10), 0xdc00 | (cp & 0x3ff));
			}
			break;
		}
		NHI_TRY(nhi_buf_append(b, esc, (size_t)e));
	}
	NHI_TRY(nhi_buf_append(b, "\"", 1));
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		cut_back(b, start);
	return rv;
}

void nhi_jsonw_begin(struct nhi_jsonw *o, struct nhi_buf *b)
{
	memset(o, 0, sizeof(*o));
	o->b = b;
	o->start = b->len;
	o->err = nhi_buf_append(b, "{", 1);
}

/* the separator and "name": of the next member (name NULL: an array element) */
static void member(struct nhi_jsonw *o, const char *name)
{
	if (o->err == NHI_OK && o->members++ > 0)
		o->err = nhi_buf_append(o->b, ",", 1);
	if (o->err == NHI_OK && name != NULL) {
		o->err = nhi_jsonw_str(o->b, name, strlen(name));
		if (o->err == NHI_OK)
			o->err = nhi_buf_append(o->b, ":", 1);
	}
}

void nhi_jsonw_s(struct nhi_jsonw *o, const char *name, const char *value)
{
	member(o, name);
	if (o->err == NHI_OK && (o->err = nhi_jsonw_str(o->b, value, strlen(value))) == NHI_ERR_ARG) {
		if (name != NULL)
			nhi_err_set(NHI_ERR_ARG, "member '%s' is not valid UTF-8", name);
		else if (o->names[o->depth] != NULL)
			nhi_err_set(NHI_ERR_ARG, "element %u of '%s' is not valid UTF-8", o->members - 1, o->names[o->depth]);
		else
			nhi_err_set(NHI_ERR_ARG, "element %u is not valid UTF-8", o->members - 1);
	}
}

void nhi_jsonw_elem_s(struct nhi_jsonw *o, const char *value)
{
	nhi_jsonw_s(o, NULL, value);
}

void nhi_jsonw_raw(struct nhi_jsonw *o, const char *name, const char *json, size_t n)
{
	member(o, name);
	if (o->err == NHI_OK)
		o->err = nhi_buf_append(o->b, json, n);
}

void nhi_jsonw_i(struct nhi_jsonw *o, const char *name, long long value)
{
	member(o, name);
	if (o->err == NHI_OK)
		o->err = nhi_buf_printf(o->b, "%lld", value);
}

void nhi_jsonw_open(struct nhi_jsonw *o, const char *name, bool array)
{
	member(o, name);
	if (o->err == NHI_OK && o->depth >= NHI_JSONW_DEPTH_MAX)
		o->err = nhi_err_set(NHI_ERR_INTERNAL, "JSON writer: nested deeper than %d levels", NHI_JSONW_DEPTH_MAX);
	if (o->err == NHI_OK) {
		o->counts[o->depth] = o->members;
		o->arrays[o->depth++] = array;
		o->names[o->depth] = name;
		o->members = 0;
		o->err = nhi_buf_append(o->b, array ? "[" : "{", 1);
	}
}

void nhi_jsonw_close(struct nhi_jsonw *o, bool array)
{
	if (o->err == NHI_OK && (o->depth == 0 || o->arrays[o->depth - 1] != array))
		o->err = nhi_err_set(NHI_ERR_INTERNAL, "JSON writer: a close of %s without its open", array ? "[" : "{");
	if (o->err == NHI_OK) {
		o->members = o->counts[--o->depth];
		o->err = nhi_buf_append(o->b, array ? "]" : "}", 1);
	}
}

nhi_err nhi_jsonw_end(struct nhi_jsonw *o)
{
	if (o->err == NHI_OK && o->depth != 0)
		o->err = nhi_err_set(NHI_ERR_INTERNAL, "JSON writer: %u levels left open", o->depth);
	if (o->err == NHI_OK)
		o->err = nhi_buf_append(o->b, "}", 1);
	if (o->err != NHI_OK)
		cut_back(o->b, o->start);
	return o->err;
}
