/* common/buf.c — owned byte buffers and page-backed secret memory. */
#include "nhi.h"
#include "limits.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Secret allocations carry their mapping size in a header page-aligned in front. */
struct secret_hdr {
	size_t map_len;
	size_t magic;
};
#define SECRET_MAGIC ((size_t)0x6e68697365637274ULL)
#define SECRET_HDR_BYTES 64 /* keeps user data 64-byte aligned */

void *nhi_secret_alloc(size_t n)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t page = pg > 0 ? (size_t)pg : 4096;
	size_t map_len;
	struct secret_hdr *h;
	void *p;

	if (n > NHI_BUF_MAX_BYTES)
		return NULL;
	map_len = (n + SECRET_HDR_BYTES + page - 1) / page * page;
	p = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	/* keep secrets out of core dumps; locking is best effort (RLIMIT_MEMLOCK) */
	(void)madvise(p, map_len, MADV_DONTDUMP);
	(void)mlock(p, map_len);
	h = p;
	h->map_len = map_len;
	h->magic = SECRET_MAGIC;
	return (uint8_t *)p + SECRET_HDR_BYTES;
}

void nhi_secret_free(void *ptr)
{
	struct secret_hdr *h;
	size_t map_len;

	if (ptr == NULL)
		return;
	h = (struct secret_hdr *)((uint8_t *)ptr - SECRET_HDR_BYTES);
	if (h->magic != SECRET_MAGIC)
		abort(); /* not ours: freeing it would corrupt memory */
	map_len = h->map_len;
	OPENSSL_cleanse(h, map_len);
	(void)munlock(h, map_len);
	(void)munmap(h, map_len);
}

bool nhi_ct_equal(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) == 0;
}

void nhi_wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		OPENSSL_cleanse(p, n);
}

nhi_err nhi_buf_reserve(struct nhi_buf *b, size_t extra)
{
	size_t need, ncap;
	uint8_t *nd;

	if (extra > NHI_BUF_MAX_BYTES || b->len > NHI_BUF_MAX_BYTES - extra)
		return nhi_err_set(NHI_ERR_LIMIT, "buffer would exceed %lu bytes", NHI_BUF_MAX_BYTES);
	need = b->len + extra + 1; /* +1: keep a NUL after the data */
	if (need <= b->cap)
		return NHI_OK;
	ncap = b->cap ? b->cap : 64;
	while (ncap < need)
		ncap = ncap > NHI_BUF_MAX_BYTES / 2 ? need : ncap * 2;
	if (b->secret) {
		nd = nhi_secret_alloc(ncap);
		if (nd != NULL && b->data != NULL) {
			memcpy(nd, b->data, b->len);
			nhi_secret_free(b->data);
		}
	} else {
		nd = realloc(b->data, ncap);
	}
	if (nd == NULL)
		return nhi_err_set(NHI_ERR_NOMEM, "out of memory growing a buffer to %zu bytes", ncap);
	b->data = nd;
	b->cap = ncap;
	b->data[b->len] = '\0';
	return NHI_OK;
}

nhi_err nhi_buf_append(struct nhi_buf *b, const void *p, size_t n)
{
	nhi_err rv = nhi_buf_reserve(b, n);

	if (rv != NHI_OK)
		return rv;
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return NHI_OK;
}

nhi_err nhi_buf_append_str(struct nhi_buf *b, const char *s)
{
	return nhi_buf_append(b, s, strlen(s));
}

nhi_err nhi_buf_printf(struct nhi_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;
	nhi_err rv;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return nhi_err_set(NHI_ERR_INTERNAL, "bad format string");
	rv = nhi_buf_reserve(b, (size_t)n);
	if (rv != NHI_OK)
		return rv;
	va_start(ap, fmt);
	vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return NHI_OK;
}

void nhi_buf_reset(struct nhi_buf *b)
{
	if (b->data != NULL && b->secret)
		OPENSSL_cleanse(b->data, b->cap);
	b->len = 0;
	if (b->data != NULL)
		b->data[0] = '\0';
}

void nhi_buf_free(struct nhi_buf *b)
{
	if (b == NULL)
		return;
	if (b->secret)
		nhi_secret_free(b->data); /* wipes */
	else
		free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}
