/*
 * common/pid.c — getpid() answered from memory, for nhid (docs/architecture.md
 * "Per-request system calls").
 *
 * OpenSSL 3.0 asks getpid() on every DRBG generate to notice a fork, and a
 * SoftHSM2 signature generates two or three times (the ECDSA nonce and its
 * blinding), so every token cost about 2.5 getpid system calls. On the
 * paravirtualised benchmark VM a system call costs about 3.6 µs, about 9 µs a token.
 * glibc stopped caching the pid in 2.25, so a program that wants it cached defines
 * getpid itself: the executable's definition comes first in symbol lookup, so
 * libcrypto and the dlopened PKCS#11 module call this one (glibc's own internal
 * calls do not go through the PLT and are unaffected).
 *
 * Fork safety is the reason OpenSSL asks at all, so it is kept: until
 * nhi_pid_cache_enable() every call is the system call; after it, a
 * pthread_atfork child handler stores the child's pid before fork() returns in the
 * child, so a forked child never sees its parent's pid and OpenSSL reseeds there as
 * before. Only a raw clone() system call would bypass that, and nothing in nhid
 * makes one (vfork/posix_spawn children exec at once).
 */
#include "nhi.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic pid_t cached_pid; /* 0: not enabled, ask the kernel */

static pid_t kernel_pid(void)
{
	return (pid_t)syscall(SYS_getpid);
}

static void child_after_fork(void)
{
	atomic_store(&cached_pid, kernel_pid());
}

pid_t getpid(void)
{
	pid_t p = atomic_load_explicit(&cached_pid, memory_order_relaxed);

	return p > 0 ? p : kernel_pid();
}

/* Call once, before other threads start (nhid's main); later calls do nothing more. */
nhi_err nhi_pid_cache_enable(void)
{
	static bool registered;
	nhi_err rv = NHI_ERR_INTERNAL;

	if (!registered) {
		NHI_CHECK(pthread_atfork(NULL, NULL, child_after_fork) == 0, NHI_ERR_INTERNAL,
			  "pthread_atfork failed: the pid is not cached");
		registered = true;
	}
	atomic_store(&cached_pid, kernel_pid());
	rv = NHI_OK;
out:
	return rv;
}
