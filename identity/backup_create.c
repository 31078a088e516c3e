/*
 * identity/backup_create.c — `nhictl backup create`: agents JSONL -> validated
 * rows -> SQLite image -> sealed backup. Every line is checked before anything is
 * produced; bad lines are listed with their numbers and nothing is written.
 */
#include "identity_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/*
 * Read one line of at most `max` bytes into buf (NUL-terminated, newline removed).
 * Returns 1 for a line, 0 at end of file, -1 for an over-long line (skipped).
 */
static int read_line(FILE *f, char *buf, size_t max, size_t *len)
{
	size_t n = 0;
	bool too_long = false;
	int c;

	while ((c = getc_unlocked(f)) != EOF && c != '\n') {
		if (n < max)
			buf[n++] = (char)c;
		else
			too_long = true;
	}
	buf[n] = '\0';
	*len = n;
	return c == EOF && n == 0 && !too_long ? 0 : too_long ? -1 : 1;
}

static bool blank(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

struct bad_lines {
	struct nhi_buf *report;
	size_t count;
	size_t first_line;
	char first[256];
};

static void note_bad(struct bad_lines *b, size_t line, const char *why)
{
	if (b->count == 0) {
		b->first_line = line;
		snprintf(b->first, sizeof(b->first), "%s", why);
	}
	b->count++;
	if (b->report != NULL && b->count <= NHI_BACKUP_REPORT_LINES_MAX)
		(void)!nhi_buf_printf(b->report, "line %zu: %s\n", line, why);
}

nhi_err nhi_backup_create(struct nhi_hsm *h, const struct nhi_backup_create_opts *o, struct nhi_buf *out,
			  struct nhi_backup_info *info, struct nhi_buf *report)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	FILE *f = NULL;
	struct stat st;
	char *base = NULL, *slash, *line = NULL;
	struct nhi_agent_row *row = NULL;
	struct nhi_image_builder *b = NULL;
	struct bad_lines bad = {report, 0, 0, ""};
	struct nhi_backup_seal_params sp = {0};
	uint8_t *image = NULL;
	size_t image_len = 0, len, lineno = 0;
	uint64_t count = 0;
	long long now = o->created_at ? o->created_at : (long long)time(NULL);
	int r;

	NHI_CHECK(o->agents_path != NULL, NHI_ERR_ARG, "no agents file given");
	f = fopen(o->agents_path, "re");
	NHI_CHECK(f != NULL, errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "cannot open %s: %s", o->agents_path,
		  strerror(errno));
	NHI_CHECK(fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode), NHI_ERR_ARG, "%s is not a regular file",
		  o->agents_path);
	base = strdup(o->certs_dir != NULL ? o->certs_dir : o->agents_path);
	line = malloc(NHI_BACKUP_JSONL_LINE_MAX_BYTES + 1);
	row = malloc(sizeof(*row));
	NHI_CHECK(base != NULL && line != NULL && row != NULL, NHI_ERR_NOMEM, "out of memory");
	/* relative cert_pem_file paths: against certs_dir, else the JSONL file's directory */
	slash = o->certs_dir != NULL ? NULL : strrchr(base, '/');
	if (o->certs_dir == NULL && slash == NULL)
		snprintf(base, strlen(base) + 1, ".");
	else if (slash == base)
		slash[1] = '\0';
	else if (slash != NULL)
		*slash = '\0';
	NHI_TRY(nhi_image_builder_new(now, o->serial ? o->serial : (uint64_t)now, &b));

	while ((r = read_line(f, line, NHI_BACKUP_JSONL_LINE_MAX_BYTES, &len)) != 0) {
		lineno++;
		if (r < 0) {
			char why[64];

			snprintf(why, sizeof(why), "longer than %d bytes", NHI_BACKUP_JSONL_LINE_MAX_BYTES);
			note_bad(&bad, lineno, why);
			continue;
		}
		if (blank(line, len))
			continue;
		if (nhi_agent_row_parse(line, len, base, row) != NHI_OK ||
		    nhi_image_builder_add(b, row) != NHI_OK) {
			note_bad(&bad, lineno, nhi_err_detail());
			if (bad.count >= NHI_BACKUP_REPORT_LINES_MAX) {
				if (report != NULL)
					(void)!nhi_buf_printf(report, "stopped after %d bad lines\n",
							      NHI_BACKUP_REPORT_LINES_MAX);
				break;
			}
		}
	}
	NHI_CHECK(!ferror(f), NHI_ERR_IO, "reading %s failed", o->agents_path);
	NHI_CHECK(bad.count == 0, NHI_ERR_FORMAT, "%zu bad line%s in %s, nothing written (line %zu: %.200s)",
		  bad.count, bad.count == 1 ? "" : "s", o->agents_path, bad.first_line, bad.first);
	NHI_TRY(nhi_image_builder_finish(b, &image, &image_len, &count));
	NHI_CHECK(count > 0, NHI_ERR_FORMAT, "%s holds no agent: nothing to back up", o->agents_path);
	sp.sign_key_label = o->sign_key_label;
	sp.wrap_key_label = o->wrap_key_label;
	sp.created_at = now;
	sp.serial = o->serial ? o->serial : (uint64_t)now;
	sp.record_count = count;
	NHI_TRY(nhi_backup_seal(h, &sp, image, image_len, out, info));
	rv = NHI_OK;
out:
	if (image != NULL) {
		nhi_wipe(image, image_len);
		sqlite3_free(image);
	}
	nhi_image_builder_free(b);
	if (row != NULL) {
		nhi_wipe(row, sizeof(*row));
		free(row);
	}
	free(line);
	free(base);
	if (f != NULL)
		fclose(f);
	return rv;
}
