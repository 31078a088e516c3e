/*
 * tests/unit/test_sandbox.c — the no-egress seccomp filter (server/sandbox.c). Each
 * test forks: the filter cannot be removed, so it is installed in a child that runs
 * the probes and reports the first failure over a pipe.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../../server/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int report_fd = -1;

/* read until EOF or cap (bounded: at most cap bytes, each read makes progress) */
static size_t read_all(int fd, char *buf, size_t cap)
{
	size_t got = 0;
	ssize_t n;

	while (got < cap && (n = read(fd, buf + got, cap - got)) > 0)
		got += (size_t)n;
	return got;
}

/* in the child: say what failed and leave without running atexit handlers */
static void child_fail(const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (write(report_fd, msg, strlen(msg)) < 0)
		_exit(3);
	_exit(1);
}

#define EXPECT_EPERM(what, expr)                                                                  \
	do {                                                                                      \
		errno = 0;                                                                        \
		long r_ = (long)(expr);                                                           \
		if (r_ != -1 || errno != EPERM)                                                   \
			child_fail("%s: returned %ld errno %d (%s), want -1 EPERM", what, r_, errno, \
				   strerror(errno));                                              \
	} while (0)

/* Run fn in a forked child; returns its wait status, failure text in msg (and the
 * child's stderr too when capture_stderr). */
static int run_child_ex(void (*fn)(void), bool capture_stderr, char *msg, size_t msg_len)
{
	int p[2], status = -1;
	pid_t pid;
	ssize_t n;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		report_fd = p[1];
		if (capture_stderr && dup2(p[1], 2) < 0)
			_exit(3);
		fn();
		_exit(0);
	}
	close(p[1]);
	n = read_all(p[0], msg, msg_len - 1);
	msg[n] = '\0';
	close(p[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

static int run_child(void (*fn)(void), char *msg, size_t msg_len)
{
	return run_child_ex(fn, false, msg, msg_len);
}

static void assert_child_ok(void (*fn)(void))
{
	char msg[256];
	int status = run_child(fn, msg, sizeof(msg));

	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child failed (status 0x%x): %s", status, msg);
}

/* A thread started BEFORE the filter: TSYNC must cover it too. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int installed, thread_errno = -1;

static void *early_thread(void *arg)
{
	int fd;

	(void)arg;
	pthread_mutex_lock(&mu);
	while (!installed)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	thread_errno = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	return NULL;
}

static void child_network(void)
{
	static const int families[] = {AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK, AF_ALG};
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	char path[] = "/tmp/nhi-sandbox-XXXXXX";
	int lfd, cfd, afd, sv[2];
	pthread_t th;
	size_t i;

	/* a local AF_UNIX service made before the filter (like a p11-kit server socket) */
	if (mkdtemp(path) == NULL)
		child_fail("mkdtemp: %s", strerror(errno));
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/s", path);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || listen(lfd, 4) != 0)
		child_fail("unix listener: %s", strerror(errno));
	if (pthread_create(&th, NULL, early_thread, NULL) != 0)
		child_fail("pthread_create");

	if (nhi_sandbox_install(NHI_SANDBOX_DEFAULT) != NHI_OK)
		child_fail("install: %s", nhi_err_detail());
	pthread_mutex_lock(&mu);
	installed = 1;
	pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
	pthread_join(th, NULL);
	if (thread_errno != EPERM)
		child_fail("a thread started before the filter could still create AF_INET sockets (errno %d)",
			   thread_errno);

	for (i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
		char what[32];

		snprintf(what, sizeof(what), "socket(family %d)", families[i]);
		EXPECT_EPERM(what, socket(families[i], SOCK_STREAM, 0));
		EXPECT_EPERM(what, socket(families[i], SOCK_DGRAM | SOCK_CLOEXEC, 0));
	}
	/* the kernel compares the low 32 bits: high garbage must not smuggle AF_INET past */
	EXPECT_EPERM("socket via raw syscall with high bits", syscall(SYS_socket, 0x100000000L | AF_INET, SOCK_STREAM, 0));

	/* AF_UNIX keeps working: new socket, connect to the pre-existing service, socketpair */
	cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cfd < 0)
		child_fail("socket(AF_UNIX) refused: %s", strerror(errno));
	if (connect(cfd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
		child_fail("connect(AF_UNIX) refused: %s", strerror(errno));
	afd = accept(lfd, NULL, NULL);
	if (afd < 0 || write(cfd, "x", 1) != 1)
		child_fail("accept/write on AF_UNIX: %s", strerror(errno));
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		child_fail("socketpair(AF_UNIX): %s", strerror(errno));
	close(sv[0]);
	close(sv[1]);
	close(afd);
	close(cfd);
	close(lfd);
	unlink(sun.sun_path);
	rmdir(path);
}

static void test_no_new_network_sockets(void **state)
{
	(void)state;
	assert_child_ok(child_network);
}

static void child_exec_and_friends(void)
{
	char *const argv[] = {"/bin/true", NULL};
	struct io_uring_params p = {0};
	struct iovec iov = {0};

	if (nhi_sandbox_install(0) != NHI_OK) /* strict: what release builds install */
		child_fail("install: %s", nhi_err_detail());
	EXPECT_EPERM("execve", execve("/bin/true", argv, NULL));
	EXPECT_EPERM("execveat", syscall(SYS_execveat, AT_FDCWD, "/bin/true", argv, NULL, 0));
	EXPECT_EPERM("ptrace(PTRACE_TRACEME)", ptrace(PTRACE_TRACEME, 0, NULL, NULL));
	EXPECT_EPERM("ptrace(PTRACE_ATTACH)", ptrace(PTRACE_ATTACH, getppid(), NULL, NULL));
	EXPECT_EPERM("process_vm_readv", syscall(SYS_process_vm_readv, getppid(), &iov, 1, &iov, 1, 0));
	EXPECT_EPERM("process_vm_writev", syscall(SYS_process_vm_writev, getppid(), &iov, 1, &iov, 1, 0));
	EXPECT_EPERM("io_uring_setup", syscall(SYS_io_uring_setup, 4, &p));
	EXPECT_EPERM("request_key (kernel DNS upcall)",
		     syscall(SYS_request_key, "dns_resolver", "example.com", NULL, 0));
	EXPECT_EPERM("unshare(CLONE_NEWNET)", unshare(CLONE_NEWNET));
	EXPECT_EPERM("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER));
	EXPECT_EPERM("socket(AF_INET) under the strict policy", socket(AF_INET, SOCK_STREAM, 0));
}

static void test_exec_ptrace_io_uring_refused(void **state)
{
	(void)state;
	assert_child_ok(child_exec_and_friends);
}

/*
 * The TCP sockets nhid holds when the filter goes in (its listener, accepted
 * connections) must not become outbound ones: connect(AF_UNSPEC) disconnects a TCP
 * socket, listening or connected, after which connect() to any address is a fresh
 * outbound connection that needs no socket() call. "remote" stands for off the host.
 */
/*
 * TCP Fast Open carries a connect in a send's flags. On a held socket this kernel
 * answers EINVAL/EISCONN anyway; the filter refuses it before the kernel looks, whatever
 * else the flags hold, and a send without the flag still reaches the peer.
 */
static void fastopen_refused(int lfd, int afd, struct sockaddr_in *remote, socklen_t len)
{
	char byte = 'x';
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	struct msghdr mh = {.msg_name = remote, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
	struct mmsghdr mm = {.msg_hdr = mh};
	int fds[] = {lfd, afd};
	size_t i;

	for (i = 0; i < 2; i++) {
		EXPECT_EPERM("sendto(MSG_FASTOPEN) on a held socket",
			     sendto(fds[i], &byte, 1, MSG_FASTOPEN, (struct sockaddr *)remote, len));
		EXPECT_EPERM("sendto(MSG_FASTOPEN | MSG_NOSIGNAL | MSG_DONTWAIT) on a held socket",
			     sendto(fds[i], &byte, 1, MSG_FASTOPEN | MSG_NOSIGNAL | MSG_DONTWAIT,
				    (struct sockaddr *)remote, len));
		EXPECT_EPERM("sendmsg(MSG_FASTOPEN) on a held socket", sendmsg(fds[i], &mh, MSG_FASTOPEN));
		EXPECT_EPERM("sendmmsg(MSG_FASTOPEN) on a held socket", sendmmsg(fds[i], &mm, 1, MSG_FASTOPEN));
	}
	/* the bit alone is matched: high bits the kernel drops do not carry it past */
	errno = 0;
	if (syscall(SYS_sendto, afd, &byte, 1, 0xffffffff00000000UL | MSG_FASTOPEN, remote, len) != -1 ||
	    errno != EPERM)
		child_fail("sendto with MSG_FASTOPEN under high garbage: errno %d, want EPERM", errno);
}

static void child_reuse_held_sockets(void)
{
	struct sockaddr_in remote = {.sin_family = AF_INET}, held = {.sin_family = AF_INET};
	struct sockaddr unspec = {.sa_family = AF_UNSPEC};
	socklen_t len = sizeof(remote);
	char peer_byte = 0;
	int rfd, lfd, cfd, afd;

	remote.sin_addr.s_addr = held.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	rfd = socket(AF_INET, SOCK_STREAM, 0);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (rfd < 0 || lfd < 0 || cfd < 0 || bind(rfd, (struct sockaddr *)&remote, sizeof(remote)) != 0 ||
	    listen(rfd, 4) != 0 || getsockname(rfd, (struct sockaddr *)&remote, &len) != 0 ||
	    bind(lfd, (struct sockaddr *)&held, sizeof(held)) != 0 || listen(lfd, 4) != 0 ||
	    getsockname(lfd, (struct sockaddr *)&held, &len) != 0 ||
	    connect(cfd, (struct sockaddr *)&held, sizeof(held)) != 0 || (afd = accept(lfd, NULL, NULL)) < 0)
		child_fail("TCP setup: %s", strerror(errno));
	if (nhi_sandbox_install(NHI_SANDBOX_DEFAULT | NHI_SANDBOX_NO_CONNECT) != NHI_OK) /* as nhid installs it */
		child_fail("install: %s", nhi_err_detail());
	/* a direct connect on either fails with EISCONN (or EINVAL) anyway; the disconnect is the way round */
	EXPECT_EPERM("connect(AF_UNSPEC) on the listening socket", connect(lfd, &unspec, sizeof(unspec)));
	EXPECT_EPERM("connect() of the listening socket to a remote", connect(lfd, (struct sockaddr *)&remote, len));
	EXPECT_EPERM("connect(AF_UNSPEC) on an accepted connection", connect(afd, &unspec, sizeof(unspec)));
	EXPECT_EPERM("connect() of an accepted connection to a remote", connect(afd, (struct sockaddr *)&remote, len));
	fastopen_refused(lfd, afd, &remote, len);
	/* what nhid does on an accepted connection is unaffected */
	if (send(afd, "y", 1, MSG_NOSIGNAL) != 1 || recv(cfd, &peer_byte, 1, 0) != 1 || peer_byte != 'y')
		child_fail("send on an accepted connection under the filter: %s", strerror(errno));
	close(afd);
	close(cfd);
	close(lfd);
	close(rfd);
}

static void test_held_sockets_cannot_reconnect(void **state)
{
	(void)state;
	assert_child_ok(child_reuse_held_sockets);
}

/* fork still works under the filter, and the child inherits it */
static void child_fork_inherits(void)
{
	pid_t pid;
	int status;

	if (nhi_sandbox_install(NHI_SANDBOX_DEFAULT) != NHI_OK)
		child_fail("install: %s", nhi_err_detail());
	pid = fork();
	if (pid < 0)
		child_fail("fork under the filter: %s", strerror(errno));
	if (pid == 0)
		_exit(socket(AF_INET6, SOCK_STREAM, 0) < 0 && errno == EPERM ? 0 : 1);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		child_fail("a grandchild could create AF_INET6 sockets");
}

static void test_fork_inherits(void **state)
{
	(void)state;
	assert_child_ok(child_fork_inherits);
}

#if defined(__SANITIZE_ADDRESS__)
/*
 * The sanitizer build must keep its leak checker under the filter: LeakSanitizer
 * ptrace-attaches to the process's threads at exit. A child that leaks and calls
 * exit() must get LSan's leak report, not a "fatal error" from a refused ptrace;
 * a clean child must exit 0. The strict policy (release) is the control: there the
 * leak checker cannot stop the world.
 */
static void *volatile leaked;
static unsigned leak_flags;

static void child_leak(void)
{
	if (nhi_sandbox_install(leak_flags) != NHI_OK)
		child_fail("install: %s", nhi_err_detail());
	leaked = malloc(4242);
	leaked = NULL;
	exit(0);
}

static void child_clean_exit(void)
{
	if (nhi_sandbox_install(NHI_SANDBOX_DEFAULT) != NHI_OK)
		child_fail("install: %s", nhi_err_detail());
	exit(0);
}

static void test_leak_checker_works_under_filter(void **state)
{
	static char msg[16384];
	int status;

	(void)state;
	status = run_child(child_clean_exit, msg, sizeof(msg));
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	leak_flags = NHI_SANDBOX_DEFAULT;
	status = run_child_ex(child_leak, true, msg, sizeof(msg));
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
	if (strstr(msg, "detected memory leaks") == NULL || strstr(msg, "4242 byte") == NULL)
		fail_msg("LeakSanitizer did not report the leak under the filter:\n%s", msg);
	/* control: under the strict policy ptrace is refused and LSan cannot run */
	leak_flags = 0;
	status = run_child_ex(child_leak, true, msg, sizeof(msg));
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
	assert_null(strstr(msg, "detected memory leaks"));
}
#endif

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_new_network_sockets),
		cmocka_unit_test(test_exec_ptrace_io_uring_refused),
		cmocka_unit_test(test_held_sockets_cannot_reconnect),
		cmocka_unit_test(test_fork_inherits),
#if defined(__SANITIZE_ADDRESS__)
		cmocka_unit_test(test_leak_checker_works_under_filter),
#endif
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
