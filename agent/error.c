/* agent/error.c — the agent's error names and the per-thread detail message. */
#include "agent_internal.h"

#include <mbedtls/error.h>
#include <stdarg.h>
#include <stdio.h>

static const char *const err_names[NHI_AGENT_E__COUNT] = {
	[NHI_AGENT_OK] = "ok",
	[NHI_AGENT_E_ARG] = "invalid_argument",
	[NHI_AGENT_E_FILE] = "file",
	[NHI_AGENT_E_CONNECT] = "connect",
	[NHI_AGENT_E_VERIFY] = "verify",
	[NHI_AGENT_E_TLS] = "tls",
	[NHI_AGENT_E_TIMEOUT] = "timeout",
	[NHI_AGENT_E_PROTOCOL] = "protocol",
	[NHI_AGENT_E_TOO_LARGE] = "too_large",
	[NHI_AGENT_E_REFUSED] = "refused",
	[NHI_AGENT_E_SPACE] = "space",
	[NHI_AGENT_E_NOMEM] = "nomem",
	[NHI_AGENT_E_INTERNAL] = "internal",
};

static _Thread_local char detail[NHI_AGENT_ERROR_MAX_BYTES];

const char *nhi_agent_err_name(nhi_agent_err e)
{
	const char *name = NULL;

	if ((unsigned)e < NHI_AGENT_E__COUNT)
		name = err_names[e];
	return name != NULL ? name : "unknown";
}

const char *nhi_agent_error(void)
{
	return detail;
}

void nhi_agent_clear_error(void)
{
	detail[0] = '\0';
}

nhi_agent_err nhi_agent_set_error(nhi_agent_err code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return code;
}

void nhi_agent_mbed_strerror(int ret, char *buf, size_t size)
{
	char text[160];

	mbedtls_strerror(ret, text, sizeof(text));
	snprintf(buf, size, "%s (-0x%04x)", text, (unsigned)(ret < 0 ? -ret : ret));
}

void nhi_agent_sanitize(char *dst, size_t dst_size, const char *src, size_t src_len, size_t max_chars)
{
	size_t i, o = 0;

	if (dst_size == 0)
		return;
	for (i = 0; i < src_len && o + 1 < dst_size; i++) {
		unsigned char ch = (unsigned char)src[i];

		if (i == max_chars) {
			/* room for "..." is reserved only when we actually truncate */
			size_t k;

			for (k = 0; k < 3 && o + 1 < dst_size; k++)
				dst[o++] = '.';
			break;
		}
		dst[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
	}
	dst[o] = '\0';
}
