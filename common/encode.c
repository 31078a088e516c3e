/* common/encode.c — base64url, hex, SHA-256 and timestamps over OpenSSL. */
#include "nhi.h"

#include <openssl/evp.h>
#include <string.h>
#include <time.h>

nhi_err nhi_b64url_encode(const uint8_t *in, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t enc_len, i;
	char *p;
	int n;

	NHI_CHECK(len <= (1u << 30), NHI_ERR_LIMIT, "value too large to encode");
	enc_len = 4 * ((len + 2) / 3);
	NHI_TRY(nhi_buf_reserve(out, enc_len));
	p = (char *)out->data + out->len;
	n = EVP_EncodeBlock((unsigned char *)p, in, (int)len);
	NHI_CHECK(n >= 0 && (size_t)n == enc_len, NHI_ERR_CRYPTO, "base64 encoding failed");
	/* RFC 4648 §5: '-' and '_' replace '+' and '/', and the padding is dropped */
	while (n > 0 && p[n - 1] == '=')
		n--;
	for (i = 0; i < (size_t)n; i++) {
		if (p[i] == '+')
			p[i] = '-';
		else if (p[i] == '/')
			p[i] = '_';
	}
	out->len += (size_t)n;
	out->data[out->len] = '\0';
	rv = NHI_OK;
out:
	return rv;
}

static int b64url_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

nhi_err nhi_b64url_decode(const char *in, size_t len, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char *std = NULL;
	size_t padded, i, dec_len;
	int n, last;

	NHI_CHECK(len <= (1u << 30), NHI_ERR_LIMIT, "base64url value too large");
	NHI_CHECK(len % 4 != 1, NHI_ERR_FORMAT, "base64url value has an impossible length %zu", len);
	for (i = 0; i < len; i++)
		NHI_CHECK(b64url_value(in[i]) >= 0, NHI_ERR_FORMAT,
			  "invalid base64url character at offset %zu (padding, '+', '/' and whitespace are not allowed)",
			  i);
	/* non-canonical encodings (non-zero unused bits) would let one value have many forms */
	if (len % 4 != 0) {
		last = b64url_value(in[len - 1]);
		NHI_CHECK((len % 4 == 2 && (last & 0x0f) == 0) || (len % 4 == 3 && (last & 0x03) == 0),
			  NHI_ERR_FORMAT, "non-canonical base64url: unused trailing bits are set");
	}
	padded = (len + 3) / 4 * 4;
	std = malloc(padded + 1);
	NHI_CHECK(std != NULL, NHI_ERR_NOMEM, "out of memory");
	for (i = 0; i < len; i++)
		std[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
	for (; i < padded; i++)
		std[i] = '=';
	std[padded] = '\0';
	dec_len = len / 4 * 3 + (len % 4 == 0 ? 0 : len % 4 - 1);
	NHI_TRY(nhi_buf_reserve(out, padded / 4 * 3));
	n = EVP_DecodeBlock(out->data + out->len, (unsigned char *)std, (int)padded);
	NHI_CHECK(n >= 0, NHI_ERR_FORMAT, "invalid base64url");
	/* EVP_DecodeBlock counts padding bytes as output: use the length the input implies */
	out->len += dec_len;
	out->data[out->len] = '\0';
	rv = NHI_OK;
out:
	if (std != NULL) {
		nhi_wipe(std, padded + 1);
		free(std);
	}
	return rv;
}

void nhi_hex(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0x0f];
	}
	out[2 * len] = '\0';
}

nhi_err nhi_sha256(const void *data, size_t len, uint8_t out[32])
{
	if (EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL) != 1)
		return nhi_err_set_ssl(NHI_ERR_CRYPTO, "SHA-256 failed");
	return NHI_OK;
}

void nhi_time_rfc3339(long long unix_s, char *buf, size_t n)
{
	time_t t = (time_t)unix_s;
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL || strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
		if (n > 0)
			buf[0] = '\0';
	}
}
