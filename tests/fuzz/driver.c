/*
 * tests/fuzz/driver.c — runs a libFuzzer target without libFuzzer, so `make check`
 * can replay every seed corpus with gcc + ASan/UBSan. Each argument is a file (or
 * a directory of files); with no argument, one input is read from stdin.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DRIVER_MAX_INPUT (4 * 1024 * 1024)

static int run_stream(FILE *f, const char *name)
{
	uint8_t *buf = malloc(DRIVER_MAX_INPUT);
	size_t n;

	if (buf == NULL)
		return 1;
	n = fread(buf, 1, DRIVER_MAX_INPUT, f);
	if (ferror(f)) {
		fprintf(stderr, "driver: cannot read %s\n", name);
		free(buf);
		return 1;
	}
	LLVMFuzzerTestOneInput(buf, n);
	free(buf);
	return 0;
}

static int run_path(const char *path)
{
	struct stat st;
	FILE *f;
	int rc;

	if (stat(path, &st) != 0) {
		fprintf(stderr, "driver: %s: not found\n", path);
		return 1;
	}
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		struct dirent *e;
		char child[4096];

		rc = 0;
		while (d != NULL && (e = readdir(d)) != NULL) {
			if (e->d_name[0] == '.')
				continue;
			snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
			rc |= run_path(child);
		}
		if (d != NULL)
			closedir(d);
		return rc;
	}
	f = fopen(path, "rb");
	if (f == NULL)
		return 1;
	rc = run_stream(f, path);
	fclose(f);
	return rc;
}

int main(int argc, char **argv)
{
	int i, rc = 0;

	if (argc < 2)
		return run_stream(stdin, "stdin");
	for (i = 1; i < argc; i++)
		rc |= run_path(argv[i]);
	return rc;
}
