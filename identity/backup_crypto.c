/*
 * identity/backup_crypto.c — seal (encrypt, wrap, sign) and open (verify, unwrap,
 * decrypt) a SQLite image. All symmetric work happens inside the token: the data
 * key is generated there, wrapped there, and on import unwrapped there as a
 * non-extractable session key (docs/identity.md explains the choice and its cost).
 *
 * The image is encrypted in chunks (NHI_BACKUP_CHUNK_BYTES) so that neither the
 * token nor this process ever holds more than one chunk's worth of extra copies:
 * SoftHSM buffers a whole AES-GCM message several times over before releasing it.
 * Chunk i uses nonce = nonce_prefix || BE32(i) and the full header as AAD, so
 * chunks cannot be reordered, moved between backups, or the header changed; the
 * chunk count is fixed by the signed header, so truncation is caught too.
 */
#include "identity_internal.h"
#include "../common/pkey.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

double nhi_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Destroy a session key without losing the error detail of a failure path. */
static void drop_key(struct nhi_hsm *h, struct nhi_hsm_key *k)
{
	char saved[NHI_ERR_DETAIL_MAX];

	if (k == NULL)
		return;
	snprintf(saved, sizeof(saved), "%s", nhi_err_detail());
	if (nhi_hsm_destroy(h, k) != NHI_OK) { /* a session object: it goes with its session anyway */
	}
	nhi_hsm_key_free(k);
	(void)nhi_err_set(NHI_OK, "%s", saved);
}

static nhi_err find_signer(struct nhi_hsm *h, const char *label, struct nhi_hsm_key **key, EVP_PKEY **pk,
			   uint8_t spki_sha256[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf der = {0};

	rv = nhi_hsm_find(h, label, key);
	if (rv == NHI_ERR_NOT_FOUND)
		rv = nhi_err_set(rv, "the token has no signing key '%s': run the ceremony first, or pass --sign-key",
				 label);
	if (rv != NHI_OK)
		goto out;
	NHI_CHECK(nhi_hsm_key_kind(*key) == NHI_KEY_EC_P256, NHI_ERR_ARG,
		  "key '%s' is not an EC P-256 key: backups are signed with ES256", label);
	NHI_TRY(nhi_hsm_pubkey(h, *key, pk));
	NHI_TRY(nhi_pkey_spki_der(*pk, &der));
	NHI_TRY(nhi_sha256(der.data, der.len, spki_sha256));
	rv = NHI_OK;
out:
	nhi_buf_free(&der);
	return rv;
}

static nhi_err find_wrap(struct nhi_hsm *h, const char *label, struct nhi_hsm_key **key)
{
	nhi_err rv = nhi_hsm_find(h, label, key);

	if (rv == NHI_ERR_NOT_FOUND)
		rv = nhi_err_set(rv, "the token has no wrap key '%s': run the ceremony first, or name the right key",
				 label);
	else if (rv == NHI_OK && nhi_hsm_key_kind(*key) != NHI_KEY_AES256)
		rv = nhi_err_set(NHI_ERR_ARG, "key '%s' is not an AES-256 key and cannot wrap a data key", label);
	return rv;
}

/* ES256 over a SHA-256 digest, with the raw R||S signature of JWS/PKCS#11. */
static nhi_err verify_digest(EVP_PKEY *pk, const uint8_t digest[32], const uint8_t sig[64])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf der = {0};
	EVP_PKEY_CTX *ctx = NULL;
	int ok;

	NHI_TRY(nhi_ecdsa_raw_to_der(sig, &der));
	ctx = EVP_PKEY_CTX_new(pk, NULL);
	NHI_CHECK_SSL(ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
			      EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1,
		      NHI_ERR_CRYPTO, "ECDSA verify setup");
	ok = EVP_PKEY_verify(ctx, der.data, der.len, digest, 32);
	ERR_clear_error();
	NHI_CHECK(ok == 1, NHI_ERR_VERIFY, "signature does not verify");
	rv = NHI_OK;
out:
	EVP_PKEY_CTX_free(ctx);
	nhi_buf_free(&der);
	return rv;
}

nhi_err nhi_backup_seal(struct nhi_hsm *h, const struct nhi_backup_seal_params *p, const uint8_t *image,
			size_t image_len, struct nhi_buf *out, struct nhi_backup_info *info)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *sign_label = p->sign_key_label ? p->sign_key_label : NHI_BACKUP_SIGN_KEY_DEFAULT;
	const char *wrap_label = p->wrap_key_label ? p->wrap_key_label : NHI_BACKUP_WRAP_KEY_DEFAULT;
	struct nhi_hsm_key *sign = NULL, *wrap = NULL, *dk = NULL;
	EVP_PKEY *pk = NULL;
	struct nhi_buf wrapped = {0};
	struct nhi_backup_hdr hdr;
	size_t start = out->len, off, n, sig_len = 0;
	uint8_t nonce[12], digest[32], sig[64];
	uint32_t i;

	memset(&hdr, 0, sizeof(hdr));
	NHI_CHECK(strlen(sign_label) <= NHI_HSM_LABEL_MAX_BYTES && strlen(wrap_label) <= NHI_HSM_LABEL_MAX_BYTES,
		  NHI_ERR_ARG, "key label longer than %d bytes", NHI_HSM_LABEL_MAX_BYTES);
	NHI_TRY(find_signer(h, sign_label, &sign, &pk, hdr.sign_key_sha256));
	NHI_TRY(find_wrap(h, wrap_label, &wrap));
	NHI_TRY(nhi_hsm_generate_data_key(h, &dk));
	NHI_TRY(nhi_hsm_wrap(h, wrap, dk, &wrapped));
	NHI_CHECK(wrapped.len <= NHI_BACKUP_WRAPPED_FIELD_BYTES, NHI_ERR_HSM,
		  "the token wrapped the data key into %zu bytes, more than the %d the format holds", wrapped.len,
		  NHI_BACKUP_WRAPPED_FIELD_BYTES);
	memcpy(hdr.wrapped_key, wrapped.data, wrapped.len);
	hdr.wrapped_key_len = wrapped.len;
	NHI_TRY(nhi_hsm_random(h, hdr.nonce_prefix, sizeof(hdr.nonce_prefix)));
	hdr.info.created_at = p->created_at;
	hdr.info.serial = p->serial;
	hdr.info.schema_version = p->schema_version ? p->schema_version : NHI_BACKUP_SCHEMA_VERSION;
	hdr.info.record_count = p->record_count;
	hdr.info.image_bytes = image_len;
	hdr.info.chunk_bytes = p->chunk_bytes ? p->chunk_bytes : NHI_BACKUP_CHUNK_BYTES;
	snprintf(hdr.info.wrap_key_label, sizeof(hdr.info.wrap_key_label), "%s", wrap_label);
	snprintf(hdr.info.sign_key_label, sizeof(hdr.info.sign_key_label), "%s", sign_label);
	NHI_TRY(nhi_backup_hdr_encode(&hdr));

	NHI_TRY(nhi_buf_reserve(out, (size_t)hdr.info.file_bytes));
	NHI_TRY(nhi_buf_append(out, hdr.raw, sizeof(hdr.raw)));
	for (i = 0, off = 0; off < image_len; i++, off += n) {
		n = image_len - off < hdr.info.chunk_bytes ? image_len - off : hdr.info.chunk_bytes;
		nhi_backup_nonce(&hdr, i, nonce);
		NHI_TRY(nhi_hsm_gcm_encrypt(h, dk, nonce, hdr.raw, sizeof(hdr.raw), image + off, n, out));
	}
	NHI_CHECK(out->len - start == NHI_BACKUP_HEADER_BYTES + hdr.ct_bytes, NHI_ERR_INTERNAL,
		  "ciphertext length does not match the header");
	NHI_TRY(nhi_sha256(out->data + start, out->len - start, digest));
	NHI_TRY(nhi_hsm_sign(h, sign, out->data + start, out->len - start, sig, &sig_len));
	NHI_CHECK(sig_len == 64, NHI_ERR_HSM, "signature of %zu bytes, expected 64", sig_len);
	/* check our own signature with the exported public key: a mismatch here means a broken token */
	rv = verify_digest(pk, digest, sig);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(NHI_ERR_HSM, "the token's signature with '%s' does not verify with its own public key",
				  sign_label);
		goto out;
	}
	NHI_TRY(nhi_buf_append(out, sig, sizeof(sig)));
	nhi_hex(digest, 32, hdr.info.digest_sha256);
	if (info != NULL)
		*info = hdr.info;
	rv = NHI_OK;
out:
	if (rv != NHI_OK && out->len > start) {
		out->len = start;
		out->data[start] = '\0';
	}
	drop_key(h, dk);
	nhi_hsm_key_free(sign);
	nhi_hsm_key_free(wrap);
	EVP_PKEY_free(pk);
	nhi_buf_free(&wrapped);
	return rv;
}

/*
 * Give back to the kernel the ciphertext already decrypted, so that the ciphertext and
 * the plaintext are not both resident in full. In batches: each madvise() is a TLB
 * shootdown on every CPU the process runs on, far too costly per 32 KiB chunk.
 */
#define DISCARD_BATCH_BYTES (16 * 1024 * 1024)
static void discard_below(const uint8_t *base, size_t *done, size_t upto, bool last)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t page = pg > 0 ? (size_t)pg : 4096;
	size_t end = upto / page * page;

	if (end > *done && (last || end - *done >= DISCARD_BATCH_BYTES)) {
		(void)madvise((void *)(base + *done), end - *done, MADV_DONTNEED);
		*done = end;
	}
}

nhi_err nhi_backup_open(struct nhi_hsm *h, const uint8_t *data, size_t len, const struct nhi_store_import_opts *o,
			bool discard, nhi_err (*check_rollback)(void *ctx, const struct nhi_backup_info *info),
			void *ctx, struct nhi_backup_opened *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *sign_label = o && o->sign_key_label ? o->sign_key_label : NHI_BACKUP_SIGN_KEY_DEFAULT;
	struct nhi_backup_hdr *hdr = &out->hdr;
	struct nhi_backup_info *info = &out->hdr.info;
	struct nhi_hsm_key *sign = NULL, *wrap = NULL, *dk = NULL;
	struct nhi_hsm_unwrap_spec spec = {.kind = NHI_KEY_AES256};
	EVP_PKEY *pk = NULL;
	uint8_t fpr[32], digest[32], nonce[12];
	char want[65];
	size_t signed_len, off, ct_off, n, released = 0;
	uint32_t i;
	double t0 = nhi_now_s(), t1;

	memset(out, 0, sizeof(*out));
	out->image.secret = true;
	NHI_TRY(nhi_backup_hdr_parse(data, len, hdr));

	/* 1. the signature, before anything else touches the content */
	NHI_TRY(find_signer(h, sign_label, &sign, &pk, fpr));
	if (memcmp(fpr, hdr->sign_key_sha256, 32) != 0) {
		nhi_hex(fpr, 32, want);
		NHI_FAIL(NHI_ERR_VERIFY,
			 "backup was signed by key %.16s... ('%s'), but '%s' in this token is %.16s...: it was made "
			 "for another ceremony, or pass the right --sign-key",
			 info->sign_key_sha256, info->sign_key_label, sign_label, want);
	}
	signed_len = NHI_BACKUP_HEADER_BYTES + hdr->ct_bytes;
	NHI_TRY(nhi_sha256(data, signed_len, digest));
	rv = verify_digest(pk, digest, data + signed_len);
	if (rv != NHI_OK) {
		rv = nhi_err_set(NHI_ERR_VERIFY,
				 "backup signature does not verify with '%s': the file was altered or damaged after it "
				 "was signed; copy it again from the ceremony media",
				 sign_label);
		goto out;
	}
	nhi_hex(digest, 32, info->digest_sha256);
	t1 = nhi_now_s();
	out->verify_s = t1 - t0;

	/* 2. now the (signed) header can be believed */
	NHI_CHECK(info->schema_version == NHI_BACKUP_SCHEMA_VERSION, NHI_ERR_FORMAT,
		  "backup holds identity schema version %u; this build knows version %d: upgrade nhid",
		  info->schema_version, NHI_BACKUP_SCHEMA_VERSION);
	if (check_rollback != NULL)
		NHI_TRY(check_rollback(ctx, info));
	NHI_CHECK(o == NULL || o->wrap_key_label == NULL || strcmp(o->wrap_key_label, info->wrap_key_label) == 0,
		  NHI_ERR_CONFIG, "backup data key is wrapped under '%s' but the configured wrap key is '%s'",
		  info->wrap_key_label, o && o->wrap_key_label ? o->wrap_key_label : "");
	NHI_TRY(find_wrap(h, info->wrap_key_label, &wrap));

	/* 3. unwrap inside the token: the data key never exists in this process */
	rv = nhi_hsm_unwrap(h, wrap, hdr->wrapped_key, hdr->wrapped_key_len, &spec, &dk);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv == NHI_ERR_HSM ? NHI_ERR_VERIFY : rv,
				  "cannot unwrap the backup's data key with '%s' (is this the token of the ceremony "
				  "that made the backup?)",
				  info->wrap_key_label);
		goto out;
	}
	/*
	 * Sized exactly, so it is never reallocated (a copy of the whole image) nor rounded up
	 * to a power of two by nhi_buf_reserve: the token is given room for ciphertext||tag of
	 * the last chunk, plus the NUL nhi_buf keeps after the data.
	 */
	out->image.cap = (size_t)info->image_bytes + NHI_BACKUP_TAG_BYTES + 1;
	out->image.data = nhi_secret_alloc(out->image.cap);
	NHI_CHECK(out->image.data != NULL, NHI_ERR_NOMEM, "cannot allocate %llu bytes for the identity image",
		  (unsigned long long)info->image_bytes);
	out->image.len = 0;
	out->image.data[0] = '\0';
	ct_off = NHI_BACKUP_HEADER_BYTES;
	for (i = 0, off = 0; off < info->image_bytes; i++, off += n) {
		n = info->image_bytes - off < info->chunk_bytes ? (size_t)info->image_bytes - off : info->chunk_bytes;
		nhi_backup_nonce(hdr, i, nonce);
		rv = nhi_hsm_gcm_decrypt(h, dk, nonce, hdr->raw, sizeof(hdr->raw), data + ct_off,
					 n + NHI_BACKUP_TAG_BYTES, &out->image);
		if (rv != NHI_OK) {
			rv = nhi_err_wrap(rv, "chunk %u of %u", i + 1, info->chunk_count);
			goto out;
		}
		ct_off += n + NHI_BACKUP_TAG_BYTES;
		if (discard)
			discard_below(data, &released, ct_off, off + n >= info->image_bytes);
	}
	NHI_CHECK(out->image.len == info->image_bytes, NHI_ERR_INTERNAL, "decrypted %zu bytes, header says %llu",
		  out->image.len, (unsigned long long)info->image_bytes);
	out->decrypt_s = nhi_now_s() - t1;
	rv = NHI_OK;
out:
	if (rv != NHI_OK)
		nhi_buf_free(&out->image);
	drop_key(h, dk);
	nhi_hsm_key_free(sign);
	nhi_hsm_key_free(wrap);
	EVP_PKEY_free(pk);
	return rv;
}

void nhi_backup_opened_clear(struct nhi_backup_opened *o)
{
	nhi_buf_free(&o->image);
	memset(&o->hdr, 0, sizeof(o->hdr));
}
