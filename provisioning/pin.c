/*
 * provisioning/pin.c — opening the token for an nhictl command: the user PIN comes
 * from a 0600 file, or is typed at /dev/tty with echo off. Never from argv or the
 * environment.
 */
#include "prov_internal.h"
#include "../common/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static nhi_err prompt_pin(struct nhi_buf *pin)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct termios old, quiet;
	bool restore = false;
	char c;
	ssize_t n;
	int fd;

	fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
	NHI_CHECK(fd >= 0, NHI_ERR_ARG, "no PIN file given and no terminal to ask on (%s): pass --pin-file FILE",
		  strerror(errno));
	/* a PIN is never shown: a terminal whose echo cannot be turned off is not asked */
	NHI_CHECK(tcgetattr(fd, &old) == 0, NHI_ERR_IO,
		  "cannot turn echo off on the terminal to ask for the PIN (%s): pass --pin-file FILE", strerror(errno));
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	NHI_CHECK(tcsetattr(fd, TCSAFLUSH, &quiet) == 0, NHI_ERR_IO,
		  "cannot turn echo off on the terminal to ask for the PIN (%s): pass --pin-file FILE", strerror(errno));
	restore = true;
	NHI_CHECK(tcgetattr(fd, &quiet) == 0 && (quiet.c_lflag & ECHO) == 0, NHI_ERR_IO,
		  "the terminal kept echo on: the PIN would show; pass --pin-file FILE");
	NHI_CHECK(write(fd, "User PIN: ", 10) == 10, NHI_ERR_IO, "writing the prompt");
	pin->secret = true;
	for (;;) {
		n = read(fd, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		NHI_CHECK(n >= 0, NHI_ERR_IO, "reading the PIN from the terminal: %s", strerror(errno));
		if (n == 0 || c == '\n' || c == '\r')
			break;
		NHI_CHECK(pin->len < NHI_PIN_FILE_MAX_BYTES, NHI_ERR_LIMIT, "PIN too long");
		NHI_TRY(nhi_buf_append(pin, &c, 1));
	}
	(void)!write(fd, "\n", 1);
	NHI_CHECK(pin->len > 0, NHI_ERR_ARG, "empty PIN");
	rv = NHI_OK;
out:
	explicit_bzero(&c, sizeof(c));
	if (restore)
		(void)tcsetattr(fd, TCSAFLUSH, &old);
	if (fd >= 0)
		close(fd);
	return rv;
}

nhi_err nhictl_open_hsm(const struct nhi_ceremony_config *cfg, const char *pin_file, struct nhi_hsm **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf pin = {.secret = true};
	struct nhi_hsm_config hc = {
		.module_path = cfg->module[0] ? cfg->module : NULL,
		.token = cfg->token,
		.pin_file = pin_file,
		.sessions = 2,
	};

	if (pin_file == NULL) {
		NHI_TRY(prompt_pin(&pin));
		hc.pin = &pin;
	}
	NHI_TRY(nhi_hsm_open(&hc, out));
	rv = NHI_OK;
out:
	nhi_buf_free(&pin);
	return rv;
}
