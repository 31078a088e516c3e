/*
 * server/sandbox.c — the no-egress seccomp filter (policy: sandbox.h, docs/airgap.md).
 *
 * A deny-list over a default-allow filter, on purpose: the process runs a PKCS#11
 * module we do not write (SoftHSM2 today, a vendor's module in production) whose
 * syscalls after C_Login we cannot enumerate, so an allow-list would break an HSM
 * at the first unusual ioctl. What we must exclude is narrow and nameable: reaching
 * the network (a new non-AF_UNIX socket, io_uring's own socket/connect ops, the
 * kernel's DNS key upcall), running other code (exec, ptrace, another process's
 * memory or file descriptors), and leaving our namespaces; in nhid also connect(), which
 * turns a held TCP socket into an outbound one (connect(AF_UNSPEC), then connect()).
 * A send with MSG_FASTOPEN (sendto, sendmsg, sendmmsg) is a connect carried by a send, and
 * is refused in both policies: nothing nhid or nhictl runs sends with it.
 * Everything the process legitimately does after startup (accept, read/write/sendmsg on
 * accepted sockets, files, fsync, futex, epoll, getrandom) is unaffected.
 */
#include "sandbox.h"
#include "server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct deny_rule {
	const char *name;
	bool required; /* fail closed when this libseccomp does not know the syscall */
	bool ptrace_family;
};

/* Refused with EPERM, whatever the arguments. */
static const struct deny_rule deny_rules[] = {
	/* running other code */
	{"execve", true, false},
	{"execveat", true, false},
	{"ptrace", true, true},
	{"process_vm_readv", true, false},
	{"process_vm_writev", true, false},
	{"pidfd_getfd", false, false}, /* would copy another process's (network) socket */
	/* io_uring carries its own socket/connect operations that seccomp never sees */
	{"io_uring_setup", true, false},
	{"io_uring_enter", true, false},
	{"io_uring_register", true, false},
	/* request_key("dns_resolver", ...) makes the kernel run a DNS upcall for us */
	{"add_key", true, false},
	{"request_key", true, false},
	{"keyctl", true, false},
	/* namespaces and mounts: no way out of the network namespace we were given */
	{"unshare", true, false},
	{"setns", true, false},
	{"mount", true, false},
	{"umount2", false, false},
	{"pivot_root", true, false},
	{"bpf", true, false},
};

/* Refused with EPERM when the flags argument has MSG_FASTOPEN. */
static const struct {
	const char *name;
	int nr;
	unsigned arg;
} fastopen_rules[] = {
	{"sendto", SCMP_SYS(sendto), 3},
	{"sendmsg", SCMP_SYS(sendmsg), 2},
	{"sendmmsg", SCMP_SYS(sendmmsg), 3},
};

#define POLICY_REST                                                                                      \
	"sendto/sendmsg/sendmmsg with MSG_FASTOPEN, execve, execveat, ptrace, process_vm_*, pidfd_getfd, "    \
	"io_uring_*, add_key, request_key, keyctl, unshare, setns, mount, umount2, pivot_root, bpf: EPERM"

const char *nhi_sandbox_policy_summary(unsigned flags)
{
	if (flags & NHI_SANDBOX_NO_CONNECT)
		return "socket() AF_UNIX only; connect(): EPERM; " POLICY_REST;
	return "socket() AF_UNIX only; " POLICY_REST;
}

nhi_err nhi_sandbox_install(unsigned flags)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	scmp_filter_ctx ctx = NULL;
	size_t i;
	int r, nr;

	ctx = seccomp_init(SCMP_ACT_ALLOW);
	NHI_CHECK(ctx != NULL, NHI_ERR_INTERNAL,
		  "seccomp_init failed (kernel without seccomp filters?): nhid needs CONFIG_SECCOMP_FILTER");
	/* one filter for every thread already running (audit writer, signal thread) */
	r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	NHI_CHECK(r == 0, NHI_ERR_INTERNAL, "seccomp: thread sync unsupported: %s", strerror(-r));
	/* other ABIs (i386 int 0x80, x32) are not in the filter: libseccomp kills them */
	r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(socket), 1, SCMP_A0_32(SCMP_CMP_NE, AF_UNIX));
	NHI_CHECK(r == 0, NHI_ERR_INTERNAL, "seccomp rule for socket(): %s", strerror(-r));
	/* TCP Fast Open: the send's flags carry the connect (sendto, sendmmsg: A3; sendmsg: A2); the
	 * kernel reads flags as 32 bits, so high garbage cannot hide the bit */
	for (i = 0; i < sizeof(fastopen_rules) / sizeof(fastopen_rules[0]); i++) {
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), fastopen_rules[i].nr, 1,
				     SCMP_CMP32(fastopen_rules[i].arg, SCMP_CMP_MASKED_EQ, MSG_FASTOPEN, MSG_FASTOPEN));
		NHI_CHECK(r == 0, NHI_ERR_INTERNAL, "seccomp rule for %s(MSG_FASTOPEN): %s", fastopen_rules[i].name,
			  strerror(-r));
	}
	/* a held TCP socket is disconnected by connect(AF_UNSPEC) and then dials out: the
	 * sockaddr is behind a pointer seccomp cannot read, so every connect() is refused */
	if (flags & NHI_SANDBOX_NO_CONNECT) {
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(connect), 0);
		NHI_CHECK(r == 0, NHI_ERR_INTERNAL, "seccomp rule for connect(): %s", strerror(-r));
	}
	for (i = 0; i < sizeof(deny_rules) / sizeof(deny_rules[0]); i++) {
		if (deny_rules[i].ptrace_family && (flags & NHI_SANDBOX_INSECURE_ALLOW_PTRACE))
			continue;
		nr = seccomp_syscall_resolve_name(deny_rules[i].name);
		if (nr == __NR_SCMP_ERROR) {
			NHI_CHECK(!deny_rules[i].required, NHI_ERR_INTERNAL,
				  "seccomp: libseccomp does not know syscall %s: update libseccomp2", deny_rules[i].name);
			continue;
		}
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
		NHI_CHECK(r == 0, NHI_ERR_INTERNAL, "seccomp rule for %s: %s", deny_rules[i].name, strerror(-r));
	}
	r = seccomp_load(ctx);
	NHI_CHECK(r == 0, NHI_ERR_INTERNAL,
		  "seccomp_load: %s (a container or an older filter forbids seccomp()? allow it for nhid)",
		  strerror(-r));
	rv = NHI_OK;
out:
	seccomp_release(ctx);
	return rv;
}

#ifdef NHI_TEST_BUILD
/*
 * Test builds: try the egress the filter exists to stop, against a listener the test
 * runs, and audit what happened. Outcome "blocked" is the only passing one.
 */
static nhi_err egress_probe(struct nhi_server *srv, const char *target)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct sockaddr_in sin = {0};
	char host[64];
	const char *colon = strrchr(target, ':');
	size_t hl;
	int fd = -1, err;
	long port;

	NHI_CHECK(colon != NULL && (hl = (size_t)(colon - target)) > 0 && hl < sizeof(host), NHI_ERR_ARG,
		  "NHI_TESTING_EGRESS_PROBE=%s: expected IPv4:PORT", target);
	memcpy(host, target, hl);
	host[hl] = '\0';
	port = strtol(colon + 1, NULL, 10);
	NHI_CHECK(inet_pton(AF_INET, host, &sin.sin_addr) == 1 && port > 0 && port < 65536, NHI_ERR_ARG,
		  "NHI_TESTING_EGRESS_PROBE=%s: expected IPv4:PORT", target);
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	err = errno;
	if (fd < 0) {
		NHI_TRY(nhi_server_audit(srv, "egress_attempt_blocked",
					 json_pack("{s:s, s:s, s:s, s:s}", "target", target, "syscall", "socket",
						   "errno", err == EPERM ? "EPERM" : strerror(err), "source",
						   "test probe")));
		fprintf(stderr, "nhid: test egress probe to %s refused by the kernel: %s\n", target, strerror(err));
		NHI_CHECK(err == EPERM, NHI_ERR_DENIED, "egress probe: socket() failed with %s, not EPERM",
			  strerror(err));
		rv = NHI_OK;
		goto out;
	}
	/* the filter did not stop it: find out how far it got, record it, refuse to run */
	err = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 ? 0 : errno;
	if (nhi_server_audit(srv, "egress_attempt_not_blocked",
			     json_pack("{s:s, s:s}", "target", target, "connect", err == 0 ? "connected" : strerror(err))) !=
	    NHI_OK)
		fprintf(stderr, "nhid: audit: %s\n", nhi_err_detail());
	NHI_FAIL(NHI_ERR_DENIED, "egress probe to %s was not blocked by the sandbox (connect: %s)", target,
		 err == 0 ? "connected" : strerror(err));
out:
	if (fd >= 0)
		close(fd);
	return rv;
}
#endif

nhi_err nhi_sandbox_enter_server(struct nhi_server *srv)
{
	nhi_err rv = NHI_ERR_INTERNAL;

	/* nhid holds its listener and accepted TCP connections: no connect() at all */
	NHI_TRY(nhi_sandbox_install(NHI_SANDBOX_DEFAULT | NHI_SANDBOX_NO_CONNECT));
	NHI_TRY(nhi_server_audit(srv, "sandbox_installed",
				 json_pack("{s:s, s:b}", "policy",
					   nhi_sandbox_policy_summary(NHI_SANDBOX_DEFAULT | NHI_SANDBOX_NO_CONNECT),
					   "ptrace_allowed",
					   (NHI_SANDBOX_DEFAULT & NHI_SANDBOX_INSECURE_ALLOW_PTRACE) != 0)));
#ifdef NHI_TEST_BUILD
	{
		const char *probe = getenv("NHI_TESTING_EGRESS_PROBE");

		if (probe != NULL && probe[0] != '\0')
			NHI_TRY(egress_probe(srv, probe));
	}
#endif
	rv = NHI_OK;
out:
	return rv;
}
