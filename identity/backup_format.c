/*
 * identity/backup_format.c — the fixed 320-byte backup header: encode, strict
 * parse, and the framing checks against the file length. No keys here; this is
 * the code the fuzz target exercises first. Layout: docs/formats.md.
 */
#include "identity_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* field offsets (big-endian integers) */
enum {
	OFF_MAGIC = 0,
	OFF_VERSION = 8,
	OFF_HDR_BYTES = 10,
	OFF_FLAGS = 12,
	OFF_CREATED = 16,
	OFF_SERIAL = 24,
	OFF_COUNT = 32,
	OFF_IMAGE = 40,
	OFF_SCHEMA = 48,
	OFF_CHUNK = 52,
	OFF_NONCE = 56,
	OFF_WRAP_LABEL = 64,
	OFF_SIGN_LABEL = 128,
	OFF_SIGN_FPR = 192,
	OFF_WRAPPED_LEN = 224,
	OFF_SIG_ALG = 226,
	OFF_AEAD_ALG = 227,
	OFF_WRAP_ALG = 228,
	OFF_RESERVED1 = 229, /* 3 bytes */
	OFF_WRAPPED = 232,
	OFF_RESERVED2 = 296, /* 24 bytes */
};

_Static_assert(OFF_RESERVED2 + 24 == NHI_BACKUP_HEADER_BYTES, "header layout");
_Static_assert(OFF_WRAPPED + NHI_BACKUP_WRAPPED_FIELD_BYTES == OFF_RESERVED2, "header layout");

static uint64_t get_be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
	int i;

	for (i = n - 1; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static bool all_zero(const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] != 0)
			return false;
	return true;
}

/* A label field: 1..64 printable ASCII bytes, then zeros. */
static nhi_err get_label(const uint8_t *field, const char *what, char out[NHI_HSM_LABEL_MAX_BYTES + 1])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t n = strnlen((const char *)field, NHI_BACKUP_LABEL_FIELD_BYTES), i;

	NHI_CHECK(n > 0, NHI_ERR_FORMAT, "backup header: %s label is empty", what);
	for (i = 0; i < n; i++)
		NHI_CHECK(field[i] >= 0x20 && field[i] < 0x7f, NHI_ERR_FORMAT,
			  "backup header: %s label has a non-printable byte at offset %zu", what, i);
	NHI_CHECK(all_zero(field + n, NHI_BACKUP_LABEL_FIELD_BYTES - n), NHI_ERR_FORMAT,
		  "backup header: %s label field has bytes after its end", what);
	memcpy(out, field, n);
	out[n] = '\0';
	rv = NHI_OK;
out:
	return rv;
}

static bool pow2(uint64_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

/* The rules every header obeys, for both directions. Fills the derived sizes. */
static nhi_err check_fields(struct nhi_backup_hdr *h)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_backup_info *i = &h->info;
	uint64_t chunks;

	NHI_CHECK(i->format_version == NHI_BACKUP_FORMAT_VERSION, NHI_ERR_FORMAT,
		  "backup format version %u is not supported (this build reads version %d): use a matching nhid",
		  i->format_version, NHI_BACKUP_FORMAT_VERSION);
	NHI_CHECK(i->created_at > 0 && i->created_at <= NHI_AGENT_NOT_AFTER_MAX_S, NHI_ERR_FORMAT,
		  "backup header: created_at %lld is out of range", i->created_at);
	NHI_CHECK(i->serial > 0, NHI_ERR_FORMAT, "backup header: serial is 0");
	NHI_CHECK(i->record_count <= NHI_BACKUP_AGENTS_MAX, NHI_ERR_LIMIT,
		  "backup header: %llu agents, over the limit of %lu (NHI_BACKUP_AGENTS_MAX)",
		  (unsigned long long)i->record_count, NHI_BACKUP_AGENTS_MAX);
	NHI_CHECK(i->image_bytes <= NHI_BACKUP_IMAGE_MAX_BYTES, NHI_ERR_LIMIT,
		  "backup header: image of %llu bytes, over the limit of %lu (NHI_BACKUP_IMAGE_MAX_BYTES)",
		  (unsigned long long)i->image_bytes, NHI_BACKUP_IMAGE_MAX_BYTES);
	NHI_CHECK(i->image_bytes >= 512 && i->image_bytes % 512 == 0, NHI_ERR_FORMAT,
		  "backup header: image size %llu is not a whole number of SQLite pages",
		  (unsigned long long)i->image_bytes);
	NHI_CHECK(pow2(i->chunk_bytes) && i->chunk_bytes >= NHI_BACKUP_CHUNK_MIN_BYTES &&
			  i->chunk_bytes <= NHI_BACKUP_CHUNK_MAX_BYTES,
		  NHI_ERR_FORMAT, "backup header: chunk size %u is not a power of two in [%d, %d]", i->chunk_bytes,
		  NHI_BACKUP_CHUNK_MIN_BYTES, NHI_BACKUP_CHUNK_MAX_BYTES);
	NHI_CHECK(h->wrapped_key_len >= 16 && h->wrapped_key_len <= NHI_BACKUP_WRAPPED_FIELD_BYTES &&
			  h->wrapped_key_len % 8 == 0,
		  NHI_ERR_FORMAT, "backup header: wrapped data key of %zu bytes (expected a multiple of 8 in [16, %d])",
		  h->wrapped_key_len, NHI_BACKUP_WRAPPED_FIELD_BYTES);
	chunks = (i->image_bytes + i->chunk_bytes - 1) / i->chunk_bytes;
	i->chunk_count = (unsigned)chunks;
	h->ct_bytes = (size_t)(i->image_bytes + chunks * NHI_BACKUP_TAG_BYTES);
	i->file_bytes = NHI_BACKUP_HEADER_BYTES + h->ct_bytes + NHI_BACKUP_SIG_BYTES;
	NHI_CHECK(i->file_bytes <= NHI_BACKUP_MAX_BYTES, NHI_ERR_LIMIT,
		  "backup of %llu bytes, over the limit of %lu (NHI_BACKUP_MAX_BYTES)",
		  (unsigned long long)i->file_bytes, NHI_BACKUP_MAX_BYTES);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_backup_hdr_parse(const uint8_t *data, size_t len, struct nhi_backup_hdr *h)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const uint8_t *p = data;
	struct nhi_backup_info *i = &h->info;
	unsigned hdr_bytes;

	memset(h, 0, sizeof(*h));
	NHI_CHECK(len > 0, NHI_ERR_FORMAT, "the backup file is empty");
	NHI_CHECK(len >= 8 && memcmp(p, NHI_BACKUP_MAGIC, 8) == 0, NHI_ERR_FORMAT,
		  "not an nhid identity backup (bad magic): expected a file made by 'nhictl backup create'");
	NHI_CHECK(len >= NHI_BACKUP_HEADER_BYTES, NHI_ERR_FORMAT,
		  "backup truncated: %zu bytes, shorter than its %d-byte header", len, NHI_BACKUP_HEADER_BYTES);
	NHI_CHECK(len <= NHI_BACKUP_MAX_BYTES, NHI_ERR_LIMIT,
		  "backup of %zu bytes, over the limit of %lu (NHI_BACKUP_MAX_BYTES)", len, NHI_BACKUP_MAX_BYTES);
	memcpy(h->raw, p, NHI_BACKUP_HEADER_BYTES);
	i->format_version = (unsigned)get_be(p + OFF_VERSION, 2);
	NHI_CHECK(i->format_version == NHI_BACKUP_FORMAT_VERSION, NHI_ERR_FORMAT,
		  "backup format version %u is not supported (this build reads version %d): use a matching nhid",
		  i->format_version, NHI_BACKUP_FORMAT_VERSION);
	hdr_bytes = (unsigned)get_be(p + OFF_HDR_BYTES, 2);
	NHI_CHECK(hdr_bytes == NHI_BACKUP_HEADER_BYTES, NHI_ERR_FORMAT,
		  "backup header: length field says %u bytes, version 1 headers are %d", hdr_bytes,
		  NHI_BACKUP_HEADER_BYTES);
	NHI_CHECK(get_be(p + OFF_FLAGS, 4) == 0, NHI_ERR_FORMAT, "backup header: unknown flags 0x%llx",
		  (unsigned long long)get_be(p + OFF_FLAGS, 4));
	NHI_CHECK(p[OFF_SIG_ALG] == NHI_BACKUP_ALG_ES256 && p[OFF_AEAD_ALG] == NHI_BACKUP_ALG_AES256_GCM_CHUNKED &&
			  p[OFF_WRAP_ALG] == NHI_BACKUP_ALG_AES_KWP,
		  NHI_ERR_FORMAT, "backup header: unknown algorithms (signature %u, cipher %u, key wrap %u)",
		  p[OFF_SIG_ALG], p[OFF_AEAD_ALG], p[OFF_WRAP_ALG]);
	NHI_CHECK(all_zero(p + OFF_RESERVED1, 3) && all_zero(p + OFF_RESERVED2, 24), NHI_ERR_FORMAT,
		  "backup header: reserved bytes are not zero");
	i->created_at = (long long)get_be(p + OFF_CREATED, 8);
	i->serial = get_be(p + OFF_SERIAL, 8);
	i->record_count = get_be(p + OFF_COUNT, 8);
	i->image_bytes = get_be(p + OFF_IMAGE, 8);
	i->schema_version = (unsigned)get_be(p + OFF_SCHEMA, 4);
	i->chunk_bytes = (unsigned)get_be(p + OFF_CHUNK, 4);
	memcpy(h->nonce_prefix, p + OFF_NONCE, NHI_BACKUP_NONCE_PREFIX_BYTES);
	NHI_TRY(get_label(p + OFF_WRAP_LABEL, "wrap key", i->wrap_key_label));
	NHI_TRY(get_label(p + OFF_SIGN_LABEL, "signing key", i->sign_key_label));
	memcpy(h->sign_key_sha256, p + OFF_SIGN_FPR, 32);
	nhi_hex(h->sign_key_sha256, 32, i->sign_key_sha256);
	h->wrapped_key_len = (size_t)get_be(p + OFF_WRAPPED_LEN, 2);
	NHI_CHECK(h->wrapped_key_len <= NHI_BACKUP_WRAPPED_FIELD_BYTES, NHI_ERR_FORMAT,
		  "backup header: wrapped data key of %zu bytes does not fit its %d-byte field", h->wrapped_key_len,
		  NHI_BACKUP_WRAPPED_FIELD_BYTES);
	memcpy(h->wrapped_key, p + OFF_WRAPPED, NHI_BACKUP_WRAPPED_FIELD_BYTES);
	NHI_CHECK(all_zero(h->wrapped_key + h->wrapped_key_len, NHI_BACKUP_WRAPPED_FIELD_BYTES - h->wrapped_key_len),
		  NHI_ERR_FORMAT, "backup header: bytes after the wrapped data key are not zero");
	NHI_TRY(check_fields(h));
	NHI_CHECK(len == i->file_bytes, NHI_ERR_FORMAT,
		  "backup is %zu bytes but its header describes %llu (%s)", len, (unsigned long long)i->file_bytes,
		  len < i->file_bytes ? "truncated: copy the file again" : "trailing data after the signature");
	rv = NHI_OK;
out:
	return rv;
}

/* the header parse reads only the first NHI_BACKUP_HEADER_BYTES; `len` is the file's length */
nhi_err nhi_backup_inspect_file(const char *path, struct nhi_backup_info *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_backup_hdr h;
	uint8_t hdr[NHI_BACKUP_HEADER_BYTES];
	struct stat st;
	size_t want, got = 0;
	ssize_t n;
	int fd;

	memset(out, 0, sizeof(*out));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	NHI_CHECK(fd >= 0, errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "cannot open backup %s: %s", path,
		  strerror(errno));
	NHI_CHECK(fstat(fd, &st) == 0 && S_ISREG(st.st_mode), NHI_ERR_ARG, "backup %s is not a regular file", path);
	want = (uint64_t)st.st_size < sizeof(hdr) ? (size_t)st.st_size : sizeof(hdr);
	while (got < want) {
		n = read(fd, hdr + got, want - got);
		if (n < 0 && errno == EINTR)
			continue;
		NHI_CHECK(n > 0, NHI_ERR_IO, "reading backup %s: %s", path, n < 0 ? strerror(errno) : "file shrank");
		got += (size_t)n;
	}
	rv = nhi_backup_hdr_parse(hdr, (size_t)st.st_size, &h);
	if (rv != NHI_OK) {
		nhi_err_wrap(rv, "%s", path);
		goto out;
	}
	*out = h.info;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

static nhi_err put_label(uint8_t *field, const char *what, const char *label)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	size_t n = strlen(label), i;

	NHI_CHECK(n > 0 && n <= NHI_BACKUP_LABEL_FIELD_BYTES, NHI_ERR_ARG, "%s label must be 1 to %d bytes", what,
		  NHI_BACKUP_LABEL_FIELD_BYTES);
	for (i = 0; i < n; i++)
		NHI_CHECK(label[i] >= 0x20 && label[i] < 0x7f, NHI_ERR_ARG, "%s label must be printable ASCII", what);
	memcpy(field, label, n);
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_backup_hdr_encode(struct nhi_backup_hdr *h)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t *p = h->raw;
	struct nhi_backup_info *i = &h->info;

	memset(p, 0, NHI_BACKUP_HEADER_BYTES);
	i->format_version = NHI_BACKUP_FORMAT_VERSION;
	NHI_TRY(check_fields(h));
	memcpy(p + OFF_MAGIC, NHI_BACKUP_MAGIC, 8);
	put_be(p + OFF_VERSION, i->format_version, 2);
	put_be(p + OFF_HDR_BYTES, NHI_BACKUP_HEADER_BYTES, 2);
	put_be(p + OFF_CREATED, (uint64_t)i->created_at, 8);
	put_be(p + OFF_SERIAL, i->serial, 8);
	put_be(p + OFF_COUNT, i->record_count, 8);
	put_be(p + OFF_IMAGE, i->image_bytes, 8);
	put_be(p + OFF_SCHEMA, i->schema_version, 4);
	put_be(p + OFF_CHUNK, i->chunk_bytes, 4);
	memcpy(p + OFF_NONCE, h->nonce_prefix, NHI_BACKUP_NONCE_PREFIX_BYTES);
	NHI_TRY(put_label(p + OFF_WRAP_LABEL, "wrap key", i->wrap_key_label));
	NHI_TRY(put_label(p + OFF_SIGN_LABEL, "signing key", i->sign_key_label));
	memcpy(p + OFF_SIGN_FPR, h->sign_key_sha256, 32);
	nhi_hex(h->sign_key_sha256, 32, i->sign_key_sha256);
	put_be(p + OFF_WRAPPED_LEN, h->wrapped_key_len, 2);
	p[OFF_SIG_ALG] = NHI_BACKUP_ALG_ES256;
	p[OFF_AEAD_ALG] = NHI_BACKUP_ALG_AES256_GCM_CHUNKED;
	p[OFF_WRAP_ALG] = NHI_BACKUP_ALG_AES_KWP;
	memcpy(p + OFF_WRAPPED, h->wrapped_key, h->wrapped_key_len);
	rv = NHI_OK;
out:
	return rv;
}

void nhi_backup_nonce(const struct nhi_backup_hdr *h, uint32_t i, uint8_t nonce[12])
{
	memcpy(nonce, h->nonce_prefix, NHI_BACKUP_NONCE_PREFIX_BYTES);
	put_be(nonce + NHI_BACKUP_NONCE_PREFIX_BYTES, i, 4);
}

nhi_err nhi_backup_inspect(const uint8_t *data, size_t len, struct nhi_backup_info *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_backup_hdr h;

	memset(out, 0, sizeof(*out));
	NHI_TRY(nhi_backup_hdr_parse(data, len, &h));
	*out = h.info;
	rv = NHI_OK;
out:
	return rv;
}
