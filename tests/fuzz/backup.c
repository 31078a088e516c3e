/*
 * tests/fuzz/backup.c — the identity backup parsers, fed the same input three ways:
 *   1. as a backup file: header and framing (nhi_backup_inspect; no key needed),
 *   2. as a decrypted SQLite image: the hardened read-only open and every import
 *      check (schema, integrity, meta, counts) that runs before a store is swapped in,
 *   3. as agents JSONL: each line through the validator (no file is ever opened:
 *      cert_pem_file is refused without a base directory).
 * Seeds in tests/fuzz/corpus/backup/: a real backup, a real image, a hostile image,
 * JSONL samples, truncations.
 */
#include "../../identity/identity_internal.h"

#include <stdlib.h>
#include <string.h>

#define FUZZ_IMAGE_MAX_BYTES (1024 * 1024) /* keep one run fast */

static void as_image(const uint8_t *data, size_t size)
{
	sqlite3 *db = NULL;
	struct nhi_image_meta meta;
	uint8_t *copy;

	if (size < 512 || size % 512 != 0 || size > FUZZ_IMAGE_MAX_BYTES)
		return;
	/* an aligned private copy, as the real image lives in page-aligned secret memory */
	copy = nhi_secret_alloc(size);
	if (copy == NULL)
		return;
	memcpy(copy, data, size);
	if (nhi_image_open(copy, size, &db) == NHI_OK) {
		(void)!nhi_image_check(db, NULL, NULL, &meta);
		sqlite3_close(db);
	}
	nhi_secret_free(copy);
}

static void as_jsonl(const uint8_t *data, size_t size)
{
	struct nhi_agent_row *row = malloc(sizeof(*row));
	size_t start = 0, i;

	if (row == NULL)
		return;
	for (i = 0; i <= size; i++) {
		if (i == size || data[i] == '\n') {
			if (i > start)
				(void)!nhi_agent_row_parse((const char *)data + start, i - start, NULL, row);
			start = i + 1;
		}
	}
	free(row);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nhi_backup_info info;
	long long t;
	char s[32];

	(void)!nhi_backup_inspect(data, size, &info);
	as_image(data, size);
	as_jsonl(data, size);
	if (size < sizeof(s)) {
		memcpy(s, data, size);
		s[size] = '\0';
		(void)nhi_rfc3339_parse(s, &t);
	}
	return 0;
}
