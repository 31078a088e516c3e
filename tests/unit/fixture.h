/*
 * tests/unit/fixture.h — a real SoftHSM2 token in a temporary directory for unit
 * tests (no HSM mocks). Header-only so each test binary stays one file.
 *
 *   struct nhi_fixture fx;
 *   nhi_fixture_setup(&fx, "unit-hsm");    // temp dir, SOFTHSM2_CONF, token, PIN files
 *   ... nhi_hsm_open(&fx.cfg, &h) ...
 *   nhi_fixture_teardown(&fx);             // removes the directory
 */
#ifndef NHI_TEST_FIXTURE_H
#define NHI_TEST_FIXTURE_H

#include "../../hsm/hsm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct nhi_fixture {
	char dir[256];
	char conf[300];
	char pin_file[300];
	char so_pin_file[300];
	char label[33];
	struct nhi_hsm_config cfg;
};

static inline void nhi_fixture_write(const char *path, const char *data, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data)) {
		fprintf(stderr, "fixture: cannot write %s\n", path);
		abort();
	}
	fchmod(fd, mode);
	close(fd);
}

/* Creates a fresh token labelled `label`; aborts the test binary on failure. */
static inline void nhi_fixture_setup(struct nhi_fixture *fx, const char *label)
{
	char tokdir[300], body[512];
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	memset(fx, 0, sizeof(*fx));
	snprintf(fx->dir, sizeof(fx->dir), "%s/nhi-unit-XXXXXX", tmp);
	if (mkdtemp(fx->dir) == NULL)
		abort();
	snprintf(tokdir, sizeof(tokdir), "%s/tokens", fx->dir);
	mkdir(tokdir, 0700);
	snprintf(fx->conf, sizeof(fx->conf), "%s/softhsm2.conf", fx->dir);
	snprintf(body, sizeof(body), "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
		 tokdir);
	nhi_fixture_write(fx->conf, body, 0600);
	setenv("SOFTHSM2_CONF", fx->conf, 1);
	snprintf(fx->pin_file, sizeof(fx->pin_file), "%s/user.pin", fx->dir);
	snprintf(fx->so_pin_file, sizeof(fx->so_pin_file), "%s/so.pin", fx->dir);
	nhi_fixture_write(fx->pin_file, "1234-user-pin\n", 0600);
	nhi_fixture_write(fx->so_pin_file, "5678-so-pin\n", 0600);
	snprintf(fx->label, sizeof(fx->label), "%s", label);
	if (nhi_hsm_init_token(NULL, fx->label, fx->so_pin_file, fx->pin_file) != NHI_OK) {
		fprintf(stderr, "fixture: token init failed: %s\n", nhi_err_detail());
		abort();
	}
	fx->cfg.token = fx->label;
	fx->cfg.pin_file = fx->pin_file;
	fx->cfg.sessions = 4;
}

static inline void nhi_fixture_teardown(struct nhi_fixture *fx)
{
	char cmd[320];

	if (fx->dir[0] == '\0' || strstr(fx->dir, "/nhi-unit-") == NULL)
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fixture: could not remove %s\n", fx->dir);
}

#endif
