/*
 * server/main.c — `nhid --config FILE`: one process, worker threads inside. Signals
 * are handled by one thread with sigwait: SIGTERM/SIGINT drain and exit, SIGHUP
 * reloads the identity backup and the certificate chain.
 */
#include "server.h"
#include "sandbox.h"
#include "../common/limits.h"
#include "../hsm/hsm.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

struct sig_ctx {
	struct nhi_server *srv;
	sigset_t set;
	atomic_bool over; /* nhi_server_run came back without a stop (it failed): just leave */
};

static void *signal_thread(void *arg)
{
	struct sig_ctx *c = arg;
	int sig;

	for (;;) {
		if (sigwait(&c->set, &sig) != 0)
			continue;
		if (atomic_load(&c->over))
			return NULL;
		if (sig == SIGHUP) {
			if (nhi_server_reload(c->srv, "SIGHUP") != NHI_OK)
				fprintf(stderr, "nhid: reload failed: %s\n", nhi_err_detail());
			else
				fprintf(stderr, "nhid: reloaded identity backup and certificates\n");
			continue;
		}
		fprintf(stderr, "nhid: %s: draining and stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		nhi_server_stop(c->srv);
		return NULL;
	}
}

/*
 * The secret comes from stdin, never argv where every user can see it; read(2), not
 * stdio, so no buffer of libc's keeps a copy. Longer than the buffer is an error: a
 * hash of its first part could never match the token the operator holds.
 */
static int hash_admin_token(void)
{
	char secret[NHI_ADMIN_TOKEN_MAX_BYTES + 2]; /* the token, then at most "\r\n" */
	struct nhi_buf out = {0};
	size_t n = 0;
	ssize_t r;
	nhi_err e;

	for (;;) {
		r = read(0, secret + n, sizeof(secret) - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (n == sizeof(secret))
			break;
	}
	if (n > 0 && secret[n - 1] == '\n')
		n--;
	if (n > 0 && secret[n - 1] == '\r')
		n--;
	if (r < 0)
		e = nhi_err_set(NHI_ERR_IO, "reading the admin token from stdin: %s", strerror(errno));
	else if (n > NHI_ADMIN_TOKEN_MAX_BYTES)
		e = nhi_err_set(NHI_ERR_LIMIT, "the admin token is longer than %d bytes: use a shorter one",
				NHI_ADMIN_TOKEN_MAX_BYTES);
	else
		e = nhi_admin_hash_make(secret, n, &out);
	nhi_wipe(secret, sizeof(secret));
	if (e != NHI_OK) {
		fprintf(stderr, "nhid: %s\n", nhi_err_detail());
		return 1;
	}
	printf("%s\n", (char *)out.data);
	nhi_buf_free(&out);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nhid --config FILE [--check]\n"
		   "       nhid --hash-admin-token < secret     (prints admin_token_hash for the config)\n");
}

int main(int argc, char **argv)
{
	const char *config = NULL;
	bool check_only = false;
	struct nhi_server_config cfg;
	struct nhi_server *srv = NULL;
	struct sig_ctx sc;
	pthread_t st;
	uint8_t digest[32];
	nhi_err e;
	int i;

	/* no core dumps: they would carry session state and the PIN's pages' neighbours */
	(void)prctl(PR_SET_DUMPABLE, 0);
	if (nhi_pid_cache_enable() != NHI_OK)
		fprintf(stderr, "nhid: %s (every getpid stays a system call)\n", nhi_err_detail());
	/* nhid's executable defines d2i_ECPKParameters (hsm/ec_group.c): if it cannot reach
	 * libcrypto's, no EC key can be decoded in this process, so refuse to start */
	if (nhi_hsm_ec_group_cache_enable() != NHI_OK) {
		fprintf(stderr, "nhid: refusing to start: %s (check that libcrypto 3 is the one nhid was built with)\n",
			nhi_err_detail());
		return 1;
	}
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0) {
			/* one reviewed file: a second --config would silently replace the first */
			if (i + 1 >= argc || config != NULL) {
				fprintf(stderr, "nhid: %s\n", config != NULL ? "--config is given twice: name one config file"
									       : "--config needs a FILE: nhid --config nhid.conf");
				return 2;
			}
			config = argv[++i];
		} else if (strcmp(argv[i], "--check") == 0) {
			check_only = true;
		} else if (strcmp(argv[i], "--hash-admin-token") == 0) {
			return hash_admin_token();
		} else if (strncmp(argv[i], "--workers", 9) == 0 || strncmp(argv[i], "--processes", 11) == 0) {
			fprintf(stderr, "nhid: %s refused: nhid is one process with worker threads (one token login, one "
					"audit chain). Set 'threads = N' in the config instead.\n",
				argv[i]);
			return 2;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "nhid: unknown argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (config == NULL) {
		usage(stderr);
		return 2;
	}
	if ((e = nhi_server_config_load(config, &cfg, digest)) != NHI_OK ||
	    (e = nhi_server_preflight(&cfg, config)) != NHI_OK) {
		fprintf(stderr, "nhid: refusing to start: %s [%s]\n", nhi_err_detail(), nhi_err_name(e));
		return 1;
	}
	if (check_only) {
		printf("nhid: %s is valid\n", config);
		return 0;
	}
	/* signals go to the signal thread only: block them before any thread starts */
	sigemptyset(&sc.set);
	sigaddset(&sc.set, SIGTERM);
	sigaddset(&sc.set, SIGINT);
	sigaddset(&sc.set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((e = nhi_server_new(&cfg, digest, &srv)) != NHI_OK) {
		fprintf(stderr, "nhid: refusing to start: %s [%s]\n", nhi_err_detail(), nhi_err_name(e));
		return 1;
	}
	/* no egress from here on: sockets bound, token logged in, audit open (docs/airgap.md) */
	if ((e = nhi_sandbox_enter_server(srv)) != NHI_OK) {
		fprintf(stderr, "nhid: refusing to start: no-egress sandbox: %s [%s]\n", nhi_err_detail(), nhi_err_name(e));
		nhi_server_free(srv);
		return 1;
	}
	sc.srv = srv;
	atomic_init(&sc.over, false);
	if ((errno = pthread_create(&st, NULL, signal_thread, &sc)) != 0) {
		/* without it SIGTERM and SIGHUP would stay blocked: nhid could only be killed */
		fprintf(stderr, "nhid: refusing to start: cannot start the signal thread: %s (out of memory or "
				"threads: raise the limit on tasks)\n",
			strerror(errno));
		nhi_server_free(srv);
		return 1;
	}
	fprintf(stderr, "nhid: listening on https://%s:%d (%u threads)\n", cfg.listen_host, cfg.listen_port, cfg.threads);
	e = nhi_server_run(srv);
	if (e != NHI_OK) {
		/* the run failed on its own (a thread that did not start): the signal thread
		 * still waits for a signal and would keep nhid here, the cause unprinted */
		atomic_store(&sc.over, true);
		pthread_kill(st, SIGTERM);
	}
	pthread_join(st, NULL);
	nhi_server_free(srv);
	if (e != NHI_OK) {
		fprintf(stderr, "nhid: %s\n", nhi_err_detail());
		return 1;
	}
	fprintf(stderr, "nhid: stopped\n");
	return 0;
}
