/*
 * server/sandbox.h — the no-egress seccomp filter (docs/airgap.md, "Syscall policy").
 *
 * Installed once the process holds everything it needs from the outside world
 * (listening sockets bound, PKCS#11 module loaded and logged in, audit log open).
 * After that, for every thread of the process and everything it forks:
 *   - socket() succeeds only for AF_UNIX (p11-kit-client.so, syslog); any other
 *     family (AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK, ...) fails EPERM;
 *   - with NHI_SANDBOX_NO_CONNECT (nhid), connect() fails EPERM for every socket;
 *   - execve/execveat, ptrace, process_vm_readv/writev, pidfd_getfd, io_uring_*,
 *     add_key/request_key/keyctl, unshare/setns/mount/umount2/pivot_root, bpf fail EPERM.
 * Refusals are EPERM rather than a kill so the caller reports them cleanly. The filter
 * cannot be removed; it is inherited across fork.
 */
#ifndef NHI_SANDBOX_H
#define NHI_SANDBOX_H

#include "../common/nhi.h"

/*
 * Sanitizer builds only: LeakSanitizer stops the world at exit by ptrace-attaching
 * to the process's own threads, so ptrace stays allowed (execve, process_vm_* and
 * every other rule still apply). Never set in release builds.
 */
#define NHI_SANDBOX_INSECURE_ALLOW_PTRACE 0x1u

/*
 * For a process that holds TCP sockets made before the filter (nhid: its listener and
 * the connections it accepts): connect() fails EPERM, on every socket. Without it a
 * held TCP socket becomes an outbound one with no socket() call: connect(AF_UNSPEC)
 * disconnects it (listening or connected), and a second connect() dials any address.
 * seccomp cannot see a sockaddr's family, so AF_UNIX connects are refused too: a
 * PKCS#11 module must connect (to a p11-kit server) in C_Initialize, before the filter.
 */
#define NHI_SANDBOX_NO_CONNECT 0x2u

#if defined(__SANITIZE_ADDRESS__)
#define NHI_SANDBOX_DEFAULT NHI_SANDBOX_INSECURE_ALLOW_PTRACE
#else
#define NHI_SANDBOX_DEFAULT 0u
#endif

/*
 * Install the filter on every thread of the calling process (SECCOMP_FILTER_FLAG_TSYNC)
 * and set no_new_privs. `flags`: NHI_SANDBOX_DEFAULT, or 0 for the strict policy, with
 * NHI_SANDBOX_NO_CONNECT or'd in by a process that holds TCP sockets.
 * NHI_ERR_INTERNAL (detail names the libseccomp step and errno) when it cannot be
 * installed; callers must then refuse to continue.
 * nhictl commands that touch keys (update apply, backup create/import) call this
 * after nhi_hsm_open and after opening their input/output files.
 */
nhi_err nhi_sandbox_install(unsigned flags) NHI_MUST_CHECK;

/* The policy installed with `flags` in one line for logs and the audit record (static string). */
const char *nhi_sandbox_policy_summary(unsigned flags);

struct nhi_server;
/*
 * nhid: install the filter (NHI_SANDBOX_DEFAULT | NHI_SANDBOX_NO_CONNECT) and audit "sandbox_installed".
 * Call after nhi_server_new succeeded and before nhi_server_run. Test builds only:
 * when NHI_TESTING_EGRESS_PROBE=ADDR:PORT is set, an outbound TCP connect is then
 * attempted and audited as "egress_attempt_blocked"; if it is NOT blocked this fails
 * (NHI_ERR_DENIED) so nhid refuses to start.
 */
nhi_err nhi_sandbox_enter_server(struct nhi_server *srv) NHI_MUST_CHECK;

#endif
