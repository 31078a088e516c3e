/*
 * identity/identity_internal.h — what the files of identity/ share, and what the
 * unit tests, the fuzz target and the benchmark reach below the public API:
 * the header codec, the JSONL agent parser, the SQLite image builder and checker,
 * and seal/open (encrypt+wrap+sign, verify+unwrap+decrypt) of a raw image.
 * Nothing outside identity/ and tests/bench includes this.
 */
#ifndef NHI_IDENTITY_INTERNAL_H
#define NHI_IDENTITY_INTERNAL_H

#include "identity.h"

#include <sqlite3.h>

/* ---- header (docs/formats.md "Identity backup") --------------------------------- */

#define NHI_BACKUP_MAGIC "NHIDBKUP"
#define NHI_BACKUP_LABEL_FIELD_BYTES 64
#define NHI_BACKUP_WRAPPED_FIELD_BYTES 64
#define NHI_BACKUP_TAG_BYTES 16
#define NHI_BACKUP_NONCE_PREFIX_BYTES 8
#define NHI_BACKUP_ALG_ES256 1
#define NHI_BACKUP_ALG_AES256_GCM_CHUNKED 1
#define NHI_BACKUP_ALG_AES_KWP 1

struct nhi_backup_hdr {
	uint8_t raw[NHI_BACKUP_HEADER_BYTES]; /* exact bytes: the GCM AAD and start of the signed part */
	struct nhi_backup_info info;
	uint8_t nonce_prefix[NHI_BACKUP_NONCE_PREFIX_BYTES];
	uint8_t sign_key_sha256[32];
	uint8_t wrapped_key[NHI_BACKUP_WRAPPED_FIELD_BYTES];
	size_t wrapped_key_len;
	size_t ct_bytes; /* image_bytes + 16 per chunk */
};

/*
 * Parse the header of a backup of `len` bytes (the whole file: the framing is
 * checked against it). On success every size in *out is consistent and within caps.
 */
/* Reads data[0 .. min(len, NHI_BACKUP_HEADER_BYTES)) only; len is the whole file's length. */
nhi_err nhi_backup_hdr_parse(const uint8_t *data, size_t len, struct nhi_backup_hdr *out) NHI_MUST_CHECK;
/* Fill out->raw from out->info and the other fields (creation side); checks the same rules. */
nhi_err nhi_backup_hdr_encode(struct nhi_backup_hdr *h) NHI_MUST_CHECK;
/* The 96-bit GCM nonce of chunk `i`: nonce_prefix || big-endian i. */
void nhi_backup_nonce(const struct nhi_backup_hdr *h, uint32_t i, uint8_t nonce[12]);

/* ---- agents JSONL ----------------------------------------------------------------- */

struct nhi_agent_row {
	char id[NHI_AGENT_ID_MAX_BYTES + 1];
	enum nhi_agent_status status;
	long long not_before, not_after;
	char roles[NHI_AGENT_ROLES_MAX * (NHI_AGENT_ROLE_MAX_BYTES + 1) + 1];             /* space-separated */
	char audiences[NHI_AGENT_AUDIENCES_MAX * (NHI_AGENT_AUDIENCE_MAX_BYTES + 1) + 1]; /* space-separated */
	char attributes[NHI_AGENT_ATTRIBUTES_MAX_BYTES + 1];                               /* compact JSON */
	uint8_t certs[NHI_AGENT_CERTS_MAX][32];
	size_t n_certs;
};

/*
 * Validate one JSONL line into `row`. `base_dir` resolves relative cert_pem_file
 * paths (NULL: cert_pem_file is refused and no file is opened, as in the fuzz
 * target). NHI_ERR_FORMAT with the cause (without the line number) in the detail.
 */
nhi_err nhi_agent_row_parse(const char *line, size_t len, const char *base_dir, struct nhi_agent_row *row) NHI_MUST_CHECK;
bool nhi_agent_id_valid(const char *s, size_t len);

/*
 * An agent's attributes text (`len` bytes, need not be NUL-terminated) as the store may
 * hold it, wherever it comes from (nhictl's JSONL, an imported image): one JSON object,
 * RFC 8259, compact, valid UTF-8, at most NHI_AGENT_ATTRIBUTES_MAX_BYTES, the keys of
 * every object (nested ones too) sorted by their decoded bytes and none listed twice,
 * no \u0000 or unpaired surrogate, numbers that jansson reads (int64, finite double):
 * text that every JSON reader reads alike. NHI_ERR_FORMAT naming the cause and where
 * ("attributes: key \"team\" is listed twice ..."); the caller adds the agent.
 */
nhi_err nhi_agent_attributes_check(const char *text, size_t len) NHI_MUST_CHECK;

/* One agents row of an image as stored (column bytes, not NUL-terminated strings). */
struct nhi_agent_stored {
	const char *id, *status, *roles, *audiences, *attributes;
	size_t id_len, status_len, roles_len, audiences_len, attributes_len, certs_len;
	long long not_before, not_after;
};
/*
 * The rules of nhi_agent_row_parse, on a row as the image holds it: an image signed
 * by a broken or hostile tool must not serve what the JSONL would have refused.
 * NHI_ERR_FORMAT naming the agent and the field.
 */
nhi_err nhi_agent_stored_check(const struct nhi_agent_stored *r) NHI_MUST_CHECK;
/* Strict "YYYY-MM-DDTHH:MM:SSZ" -> unix seconds. */
bool nhi_rfc3339_parse(const char *s, long long *out);

/* ---- SQLite image ---------------------------------------------------------------- */

struct nhi_image_builder;
nhi_err nhi_image_builder_new(long long created_at, uint64_t serial, struct nhi_image_builder **out) NHI_MUST_CHECK;
void nhi_image_builder_free(struct nhi_image_builder *b);
/* Insert a validated row; NHI_ERR_FORMAT for a duplicate id or an already enrolled certificate. */
nhi_err nhi_image_builder_add(struct nhi_image_builder *b, const struct nhi_agent_row *row) NHI_MUST_CHECK;
/*
 * Write the meta rows, commit and serialise. *image is sqlite3_malloc'd memory the
 * caller wipes (nhi_wipe) and releases with sqlite3_free.
 */
nhi_err nhi_image_builder_finish(struct nhi_image_builder *b, uint8_t **image, size_t *image_len,
				 uint64_t *count) NHI_MUST_CHECK;

/*
 * A hardened, read-only connection over `image` (borrowed: it must outlive the
 * connection): defensive mode, untrusted schema, no triggers/views/extensions/
 * ATTACH, mmap over the buffer so pages are never copied.
 */
nhi_err nhi_image_open(const uint8_t *image, size_t len, sqlite3 **out) NHI_MUST_CHECK;

struct nhi_image_meta {
	unsigned schema_version;
	long long created_at;
	uint64_t serial;
	uint64_t agent_count;
};
/*
 * Check an image opened by nhi_image_open: schema exactly ours (no other table,
 * index, trigger or view), application_id, page size, user_version, PRAGMA
 * integrity_check, meta rows, agent count, every row (check_rows). When `expect`
 * is not NULL the meta rows must also agree with the (verified) header. rows_db,
 * when not NULL, is a second connection to the same image: the rows are checked
 * on it in a thread of their own, beside the integrity check.
 */
nhi_err nhi_image_check(sqlite3 *db, sqlite3 *rows_db, const struct nhi_backup_info *expect,
			struct nhi_image_meta *meta) NHI_MUST_CHECK;

/* ---- seal / open ----------------------------------------------------------------- */

struct nhi_backup_seal_params {
	const char *sign_key_label; /* NULL: default */
	const char *wrap_key_label; /* NULL: default */
	long long created_at;
	uint64_t serial;
	unsigned schema_version; /* tests may lie; 0: NHI_BACKUP_SCHEMA_VERSION */
	uint64_t record_count;
	unsigned chunk_bytes; /* 0: NHI_BACKUP_CHUNK_BYTES */
};
/* Encrypt `image` under a fresh data key in the token, wrap the key, sign; file appended to out. */
nhi_err nhi_backup_seal(struct nhi_hsm *h, const struct nhi_backup_seal_params *p, const uint8_t *image,
			size_t image_len, struct nhi_buf *out, struct nhi_backup_info *info) NHI_MUST_CHECK;

struct nhi_backup_opened {
	struct nhi_backup_hdr hdr;
	struct nhi_buf image; /* secret: the plaintext SQLite image */
	double verify_s, decrypt_s;
};
/*
 * Verify and decrypt a backup: framing, signer fingerprint, signature, then unwrap
 * and decrypt in the token. `check_rollback(ctx, info)` (may be NULL) runs after the
 * signature verified and before anything is decrypted; its error is returned.
 * When `discard` is true, `data` is a private anonymous mapping whose consumed
 * ciphertext pages may be released (MADV_DONTNEED) as decryption proceeds.
 */
nhi_err nhi_backup_open(struct nhi_hsm *h, const uint8_t *data, size_t len, const struct nhi_store_import_opts *o,
			bool discard, nhi_err (*check_rollback)(void *ctx, const struct nhi_backup_info *info),
			void *ctx, struct nhi_backup_opened *out) NHI_MUST_CHECK;
void nhi_backup_opened_clear(struct nhi_backup_opened *o);

#ifdef NHI_TEST_BUILD
/*
 * Tests and fuzz targets only (no token): swap in a plaintext image (copied) after the
 * checks of an import's step 6 (nhi_image_check, its meta standing in for a header),
 * so that the store's lookups run on what an import would have accepted. No signature,
 * no decryption, no rollback check: never in a release build.
 */
nhi_err nhi_store_insecure_load_image(struct nhi_store *s, const uint8_t *image, size_t len) NHI_MUST_CHECK;
/* Tests only: called by nhi_store_import_file after each read of the file, with the bytes read so far. */
extern void (*nhi_test_backup_read_hook)(const char *path, size_t got);
#endif

/* nhi_store_import_file reads the file in reads of at most this many bytes */
#define NHI_BACKUP_READ_CHUNK_BYTES (1024 * 1024)

/* Monotonic seconds, for the stage timings of an import. */
double nhi_now_s(void);

#endif
