/*
 * provisioning/audit.c — `nhictl audit verify FILE --pubkey AUDIT.pem`: checks an
 * nhid audit log offline (hash chain, seq, checkpoint signatures by the audit key)
 * and names the first bad line. docs/audit.md describes the format.
 */
#include "nhictl.h"
#include "../common/limits.h"
#include "../common/pkey.h"
#include "../server/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* map the log read-only: logs grow past what is sensible to copy into memory */
static nhi_err map_file(const char *path, const uint8_t **data, size_t *len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct stat st;
	void *p;
	int fd;

	*data = NULL;
	*len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	NHI_CHECK(fd >= 0, errno == ENOENT ? NHI_ERR_NOT_FOUND : NHI_ERR_IO, "cannot open %s: %s", path,
		  strerror(errno));
	NHI_CHECK(fstat(fd, &st) == 0, NHI_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
	NHI_CHECK(S_ISREG(st.st_mode), NHI_ERR_ARG, "%s is not a regular file", path);
	if (st.st_size > 0) {
		p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		NHI_CHECK(p != MAP_FAILED, NHI_ERR_IO, "cannot map %s: %s", path, strerror(errno));
		*data = p;
		*len = (size_t)st.st_size;
	}
	rv = NHI_OK;
out:
	if (fd >= 0)
		close(fd);
	return rv;
}

static void print_counts(const struct nhi_audit_report *r)
{
	printf("  records      %llu", r->records);
	if (r->records > 0)
		printf(" (seq 0-%llu)", r->records - 1);
	printf(", %llu start(s) of nhid", r->opens);
	if (r->torn_repairs > 0)
		printf(", %llu partial line(s) cut after a crash", r->torn_repairs);
	printf("\n  checkpoints  %llu%s\n", r->checkpoints,
	       r->signatures_checked ? ", every signature verified" : " (signatures not checked)");
	if (r->records > 0)
		printf("  time range   %s .. %s\n", r->first_time, r->last_time);
}

/* after a failure: only what the log still proves (nhi_audit_verify sets records to it) */
static void print_proven(const struct nhi_audit_report *r)
{
	if (r->bad_line <= 1)
		return;
	if (r->records == 0) {
		fprintf(stderr, "  nothing is proven: lines 1-%llu may have been altered too\n", r->bad_line - 1);
		return;
	}
	fprintf(stderr, "  lines 1-%llu verified", r->records);
	if (r->checkpoints == 0)
		fprintf(stderr, " (chained only: no checkpoint signs them)");
	else if (r->last_checkpoint_line == r->records)
		fprintf(stderr, " (signed: %llu checkpoint(s), the last at line %llu)", r->checkpoints,
			r->last_checkpoint_line);
	else
		fprintf(stderr, " (lines 1-%llu signed by %llu checkpoint(s), lines %llu-%llu chained only)",
			r->last_checkpoint_line, r->checkpoints, r->last_checkpoint_line + 1, r->records);
	fprintf(stderr, "; from line %llu on nothing is proven\n", r->records + 1);
}

static int verify(const char *file, const char *pubkey_path)
{
	nhi_err e;
	EVP_PKEY *pub = NULL;
	const uint8_t *data = NULL;
	size_t len = 0;
	struct nhi_audit_report rep;
	char fp[65];
	int rc = 1;

	e = nhi_pkey_load_pem_p256(pubkey_path, &pub);
	if (e != NHI_OK) {
		rc = nhictl_fail("audit verify", pubkey_path, e);
		goto out;
	}
	e = map_file(file, &data, &len);
	if (e != NHI_OK) {
		rc = nhictl_fail("audit verify", file, e);
		goto out;
	}
	e = nhi_audit_verify(data, len, pub, &rep);
	if (e != NHI_OK) {
		rc = nhictl_fail("audit verify", file, e);
		print_proven(&rep);
		goto out;
	}
	if (nhi_pkey_fingerprint(pub, fp) != NHI_OK)
		snprintf(fp, sizeof(fp), "?");
	printf("audit log %s: OK\n", file);
	print_counts(&rep);
	printf("  audit key    SPKI SHA-256 %s\n", fp);
	if (rep.time_regressions > 0)
		printf("warning: %llu record(s) carry a time earlier than the record before: the clock was set back\n",
		       rep.time_regressions);
	if (rep.checkpoints == 0)
		printf("warning: no checkpoint: none of the %llu records is signed yet (only chained)\n", rep.records);
	else if (rep.unsigned_tail > 0)
		printf("warning: the last %llu record(s) (lines %llu-%llu) follow the last checkpoint: chained but not "
		       "signed yet (nhid signs them at its next checkpoint)\n",
		       rep.unsigned_tail, rep.records - rep.unsigned_tail + 1, rep.records);
	rc = 0;
out:
	if (data != NULL)
		munmap((void *)data, len);
	EVP_PKEY_free(pub);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nhictl audit verify FILE --pubkey AUDIT.pem\n"
		   "  Checks an nhid audit log offline: every line parses, seq counts up by one,\n"
		   "  each record carries the SHA-256 of the one before, and every checkpoint is\n"
		   "  signed by the audit key (AUDIT.pem: the ceremony's audit.pub.pem). Names the\n"
		   "  first bad line and exits 1; exits 0 when the log verifies, with a warning for\n"
		   "  records after the last checkpoint (chained, not signed yet).\n");
}

static int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
		{"pubkey", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *pubkey = NULL;
	int opt;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'k': pubkey = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (pubkey == NULL || optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	return verify(argv[optind], pubkey);
}

int nhictl_audit(int argc, char **argv)
{
	static const struct nhictl_action actions[] = {{"verify", cmd_verify}};

	return nhictl_dispatch("audit", actions, 1, usage, argc, argv);
}
