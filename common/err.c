/* common/err.c — the error enum's names and the per-thread detail message. */
#include "nhi.h"

#include <openssl/err.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

static const char *const nhi_err_names[NHI_ERR__COUNT] = {
	[NHI_OK] = "ok",
	[NHI_ERR_INTERNAL] = "internal",
	[NHI_ERR_NOMEM] = "nomem",
	[NHI_ERR_ARG] = "invalid_argument",
	[NHI_ERR_IO] = "io",
	[NHI_ERR_PERM] = "permission",
	[NHI_ERR_NOT_FOUND] = "not_found",
	[NHI_ERR_EXISTS] = "exists",
	[NHI_ERR_HSM] = "hsm",
	[NHI_ERR_PIN] = "pin",
	[NHI_ERR_CRYPTO] = "crypto",
	[NHI_ERR_FORMAT] = "format",
	[NHI_ERR_LIMIT] = "limit",
	[NHI_ERR_VERIFY] = "verify",
	[NHI_ERR_CONFIG] = "config",
	[NHI_ERR_DENIED] = "denied",
	[NHI_ERR_EXPIRED] = "expired",
	[NHI_ERR_ROLLBACK] = "rollback",
};

static _Thread_local char nhi_err_buf[NHI_ERR_DETAIL_MAX];

const char *nhi_err_name(nhi_err e)
{
	if ((unsigned)e >= NHI_ERR__COUNT || nhi_err_names[e] == NULL)
		return "unknown";
	return nhi_err_names[e];
}

size_t nhi_utf8_trim(const char *s, size_t n)
{
	size_t i, k = 0, need;
	unsigned char c;

	/* i: just after the last byte that is not a continuation byte; k: those after it */
	for (i = n; i > 0 && k < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80; i--)
		k++;
	c = i > 0 ? (unsigned char)s[i - 1] : 0;
	need = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
	return k + 1 < need ? i - 1 : n;
}

int nhi_utf8_cut(const char *s, size_t max)
{
	size_t n;

	if (max > INT_MAX)
		max = INT_MAX;
	n = strnlen(s, max);
	/* s[n] is readable: strnlen stopped before a NUL or at max, before the string's end */
	if (n == max && s[n] != '\0')
		n = nhi_utf8_trim(s, n);
	return (int)n;
}

/*
 * After a cut at the end of the buffer (printf's return `want` >= cap): drop a character
 * the cut split, so that a detail stays UTF-8. Details go into JSON error bodies and
 * audit records, and jansson refuses a whole document for half a character.
 */
static void cut_partial_utf8(char *s, int want, size_t cap)
{
	if (want >= 0 && (size_t)want >= cap)
		s[nhi_utf8_trim(s, strlen(s))] = '\0';
}

__attribute__((format(printf, 1, 0))) static void set_detail(const char *fmt, va_list ap)
{
	char tmp[NHI_ERR_DETAIL_MAX];

	/* format into a temporary first: fmt's arguments may point into nhi_err_buf */
	cut_partial_utf8(tmp, vsnprintf(tmp, sizeof(tmp), fmt, ap), sizeof(tmp));
	memcpy(nhi_err_buf, tmp, sizeof(tmp));
}

nhi_err nhi_err_set(nhi_err code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	set_detail(fmt, ap);
	va_end(ap);
	return code;
}

nhi_err nhi_err_set_ssl(nhi_err code, const char *fmt, ...)
{
	va_list ap;
	char ossl[256] = "no OpenSSL error recorded";
	unsigned long e;
	size_t n;

	va_start(ap, fmt);
	set_detail(fmt, ap);
	va_end(ap);
	/* the earliest error is the cause; later ones are the call stack unwinding */
	e = ERR_get_error();
	if (e != 0)
		ERR_error_string_n(e, ossl, sizeof(ossl));
	ERR_clear_error();
	n = strlen(nhi_err_buf);
	cut_partial_utf8(nhi_err_buf + n, snprintf(nhi_err_buf + n, sizeof(nhi_err_buf) - n, ": %s", ossl),
			 sizeof(nhi_err_buf) - n);
	return code;
}

nhi_err nhi_err_wrap(nhi_err code, const char *fmt, ...)
{
	static const char ellipsis[] = "...";
	char old[NHI_ERR_DETAIL_MAX];
	char ctx[NHI_ERR_DETAIL_MAX];
	/* the bytes the context and the cause share: all but ": " and the NUL */
	const size_t room = sizeof(nhi_err_buf) - 3;
	size_t clen, olen, keep;
	va_list ap;

	memcpy(old, nhi_err_buf, sizeof(old));
	va_start(ap, fmt);
	cut_partial_utf8(ctx, vsnprintf(ctx, sizeof(ctx), fmt, ap), sizeof(ctx));
	va_end(ap);
	clen = strlen(ctx);
	olen = strlen(old);
	if (clen + olen > room) {
		/* the cause names what went wrong: the context gives way to keep it whole, and
		 * only a cause too long for any context is cut (at its end, below) */
		keep = olen + sizeof(ellipsis) - 1 <= room ? room - olen - (sizeof(ellipsis) - 1) : NHI_ERR_WRAP_CTX_MIN;
		if (keep < clen) {
			keep = nhi_utf8_trim(ctx, keep);
			memcpy(ctx + keep, ellipsis, sizeof(ellipsis));
		}
	}
	cut_partial_utf8(nhi_err_buf, snprintf(nhi_err_buf, sizeof(nhi_err_buf), "%s: %s", ctx, old),
			 sizeof(nhi_err_buf));
	return code;
}

const char *nhi_err_detail(void)
{
	return nhi_err_buf;
}

void nhi_err_clear(void)
{
	nhi_err_buf[0] = '\0';
}
