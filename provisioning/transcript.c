/*
 * provisioning/transcript.c — the ceremony transcript: JSONL, one record per step,
 * each carrying the SHA-256 of the line before it, and a final record signed by
 * the root key over every byte before it. Witnesses verify it offline with only
 * the root certificate whose fingerprint they wrote down.
 */
#include "prov_internal.h"
#include "../common/limits.h"
#include "../common/pkey.h"

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct nhi_transcript {
	struct nhi_buf text;
	uint8_t prev[32];
	long long seq;
};

nhi_err nhi_transcript_new(struct nhi_transcript **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? NHI_OK : nhi_err_set(NHI_ERR_NOMEM, "out of memory");
}

void nhi_transcript_free(struct nhi_transcript *t)
{
	if (t == NULL)
		return;
	nhi_buf_free(&t->text);
	free(t);
}

const struct nhi_buf *nhi_transcript_bytes(const struct nhi_transcript *t)
{
	return &t->text;
}

nhi_err nhi_transcript_add(struct nhi_transcript *t, void *vrec)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	json_t *rec = vrec, *full = NULL;
	char ts[32], prev_hex[65];
	char *line = NULL;

	NHI_CHECK(rec != NULL, NHI_ERR_NOMEM, "out of memory building a transcript record");
	nhi_time_rfc3339((long long)time(NULL), ts, sizeof(ts));
	nhi_hex(t->prev, 32, prev_hex);
	/* seq, time and prev first, so every line reads the same way */
	full = json_pack("{s:I, s:s, s:s}", "seq", (json_int_t)t->seq, "time", ts, "prev",
			 t->seq == 0 ? "" : prev_hex);
	NHI_CHECK(full != NULL && json_object_update(full, rec) == 0, NHI_ERR_NOMEM, "building a transcript record");
	line = json_dumps(full, JSON_COMPACT | JSON_PRESERVE_ORDER);
	NHI_CHECK(line != NULL, NHI_ERR_NOMEM, "serialising a transcript record");
	NHI_TRY(nhi_sha256(line, strlen(line), t->prev));
	NHI_TRY(nhi_buf_append_str(&t->text, line));
	NHI_TRY(nhi_buf_append(&t->text, "\n", 1));
	t->seq++;
	rv = NHI_OK;
out:
	free(line);
	json_decref(full);
	json_decref(rec);
	return rv;
}

nhi_err nhi_transcript_sign(struct nhi_transcript *t, struct nhi_hsm *h, const struct nhi_hsm_key *root,
			    const char *root_cert_sha256)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t digest[32], sig[64];
	char digest_hex[65];
	struct nhi_buf sig_b64 = {0};

	NHI_TRY(nhi_sha256(t->text.data, t->text.len, digest));
	NHI_TRY(nhi_hsm_sign_digest(h, root, digest, sig));
	NHI_TRY(nhi_b64url_encode(sig, 64, &sig_b64));
	nhi_hex(digest, 32, digest_hex);
	rv = nhi_transcript_add(t, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "signature", "alg", "ES256", "key",
					     nhi_hsm_key_label(root), "root_cert_sha256", root_cert_sha256,
					     "signed_sha256", digest_hex, "sig", (char *)sig_b64.data));
out:
	nhi_buf_free(&sig_b64);
	return rv;
}

/*
 * The signature record is the one line no signature covers (it signs every byte before
 * it), so each of its fields is checked here or refused: a field verify does not check
 * would be a claim a witness reads as signed when anyone could have written it. Only
 * its time is free (it is when the record was made, and nothing can check that).
 */
static nhi_err check_signature_fields(json_t *rec, long long line, const uint8_t digest[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	static const char *const fields[] = {"seq", "time", "prev", "type", "alg", "key", "root_cert_sha256",
					     "signed_sha256", "sig"};
	const char *name, *s;
	char digest_hex[65];
	json_t *v;
	size_t i;

	json_object_foreach(rec, name, v) {
		for (i = 0; i < sizeof(fields) / sizeof(fields[0]) && strcmp(name, fields[i]) != 0; i++)
			;
		NHI_CHECK(i < sizeof(fields) / sizeof(fields[0]), NHI_ERR_FORMAT,
			  "line %lld: the signature record has a field '%.32s' nhictl never writes; the signature does "
			  "not cover its own record, so the line was edited",
			  line, name);
	}
	NHI_CHECK(json_is_string(json_object_get(rec, "time")), NHI_ERR_FORMAT,
		  "line %lld: the signature record's time is not a string", line);
	s = json_string_value(json_object_get(rec, "alg"));
	NHI_CHECK(s != NULL && strcmp(s, "ES256") == 0, NHI_ERR_VERIFY,
		  "line %lld: the signature record's alg is '%.16s', not ES256 (the only one nhictl signs with)", line,
		  s ? s : "");
	s = json_string_value(json_object_get(rec, "key"));
	NHI_CHECK(s != NULL && strcmp(s, NHI_LABEL_ROOT) == 0, NHI_ERR_VERIFY,
		  "line %lld: the signature record names key '%.32s', not %s (the root key signs the transcript)", line,
		  s ? s : "", NHI_LABEL_ROOT);
	nhi_hex(digest, 32, digest_hex);
	s = json_string_value(json_object_get(rec, "signed_sha256"));
	NHI_CHECK(s != NULL && strcmp(s, digest_hex) == 0, NHI_ERR_VERIFY,
		  "line %lld: signed_sha256 is not the SHA-256 of the lines before it (%s): the record was edited",
		  line, digest_hex);
	rv = NHI_OK;
out:
	return rv;
}

static nhi_err check_signature(X509 *root, const uint8_t digest[32], const char *sig_b64)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf raw = {0}, der = {0};
	EVP_PKEY *pk = X509_get0_pubkey(root);
	EVP_PKEY_CTX *ctx = NULL;

	NHI_CHECK(nhi_b64url_decode(sig_b64, strlen(sig_b64), &raw) == NHI_OK && raw.len == 64, NHI_ERR_FORMAT,
		  "signature is not 64 bytes of base64url");
	NHI_TRY(nhi_ecdsa_raw_to_der(raw.data, &der));
	ctx = EVP_PKEY_CTX_new(pk, NULL);
	NHI_CHECK_SSL(ctx != NULL && EVP_PKEY_verify_init(ctx) == 1, NHI_ERR_CRYPTO, "verify init");
	NHI_CHECK(EVP_PKEY_verify(ctx, der.data, der.len, digest, 32) == 1, NHI_ERR_VERIFY,
		  "the root key's signature does not verify");
	rv = NHI_OK;
out:
	ERR_clear_error();
	EVP_PKEY_CTX_free(ctx);
	nhi_buf_free(&raw);
	nhi_buf_free(&der);
	return rv;
}

nhi_err nhi_transcript_verify(const uint8_t *data, size_t len, X509 *root, size_t *n_records)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const uint8_t *p = data, *end = data + len, *nl;
	uint8_t prev[32] = {0}, digest[32];
	char prev_hex[65], root_fp[65];
	json_t *rec = NULL;
	json_error_t jerr;
	const char *type = "", *s;
	long long seq = 0;
	size_t line_len;
	bool signed_seen = false;

	*n_records = 0;
	NHI_CHECK(len > 0, NHI_ERR_FORMAT, "transcript is empty");
	NHI_CHECK(len <= NHI_TRANSCRIPT_MAX_BYTES, NHI_ERR_LIMIT, "transcript is larger than %d bytes",
		  NHI_TRANSCRIPT_MAX_BYTES);
	NHI_CHECK(data[len - 1] == '\n', NHI_ERR_FORMAT, "transcript is truncated: the last line has no newline");
	if (root != NULL)
		NHI_TRY(nhi_cert_fingerprint(root, root_fp));
	while (p < end) {
		NHI_CHECK(!signed_seen, NHI_ERR_FORMAT, "line %lld: records after the signature record", seq + 1);
		nl = memchr(p, '\n', (size_t)(end - p));
		line_len = (size_t)(nl - p);
		NHI_CHECK(line_len > 0 && line_len <= NHI_TRANSCRIPT_LINE_MAX_BYTES, NHI_ERR_FORMAT,
			  "line %lld: empty or longer than %d bytes", seq + 1, NHI_TRANSCRIPT_LINE_MAX_BYTES);
		json_decref(rec);
		rec = json_loadb((const char *)p, line_len, JSON_REJECT_DUPLICATES, &jerr);
		NHI_CHECK(rec != NULL && json_is_object(rec), NHI_ERR_FORMAT, "line %lld: not a JSON object (%s)", seq + 1,
			  rec ? "wrong type" : jerr.text);
		NHI_CHECK(json_integer_value(json_object_get(rec, "seq")) == seq &&
				  json_is_integer(json_object_get(rec, "seq")),
			  NHI_ERR_VERIFY, "line %lld: seq is not %lld (a record was removed, added or reordered)", seq + 1,
			  seq);
		s = json_string_value(json_object_get(rec, "prev"));
		nhi_hex(prev, 32, prev_hex);
		NHI_CHECK(s != NULL && strcmp(s, seq == 0 ? "" : prev_hex) == 0, NHI_ERR_VERIFY,
			  "line %lld: prev does not match the SHA-256 of line %lld (the transcript was altered)",
			  seq + 1, seq);
		type = json_string_value(json_object_get(rec, "type"));
		NHI_CHECK(type != NULL, NHI_ERR_FORMAT, "line %lld: no type", seq + 1);
		if (strcmp(type, "signature") == 0) {
			NHI_TRY(nhi_sha256(data, (size_t)(p - data), digest));
			NHI_TRY(check_signature_fields(rec, seq + 1, digest));
			s = json_string_value(json_object_get(rec, "root_cert_sha256"));
			NHI_CHECK(s != NULL, NHI_ERR_FORMAT, "line %lld: signature record lacks root_cert_sha256", seq + 1);
			NHI_CHECK(root != NULL, NHI_ERR_ARG, "a root certificate is needed to check the signature");
			NHI_CHECK(strcmp(s, root_fp) == 0, NHI_ERR_VERIFY,
				  "line %lld: transcript was signed for root %s, but the given root certificate is %s",
				  seq + 1, s, root_fp);
			s = json_string_value(json_object_get(rec, "sig"));
			NHI_CHECK(s != NULL, NHI_ERR_FORMAT, "line %lld: signature record lacks sig", seq + 1);
			rv = check_signature(root, digest, s);
			if (rv != NHI_OK) {
				nhi_err_wrap(rv, "line %lld", seq + 1);
				goto out;
			}
			signed_seen = true;
		}
		NHI_TRY(nhi_sha256(p, line_len, prev));
		seq++;
		p = nl + 1;
	}
	NHI_CHECK(signed_seen, NHI_ERR_VERIFY, "transcript has no signature record: it is incomplete");
	*n_records = (size_t)seq;
	rv = NHI_OK;
out:
	json_decref(rec);
	return rv;
}
