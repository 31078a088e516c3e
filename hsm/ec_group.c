/*
 * hsm/ec_group.c — the P-256 group built once, for the PKCS#11 module's C_SignInit
 * (docs/architecture.md "Per-request costs").
 *
 * SoftHSM2 (OpenSSL backend) turns a key's CKA_EC_PARAMS into an EC_GROUP on every
 * C_SignInit: d2i_ECPKParameters on the curve's OID, which builds the curve from its
 * constants (two Montgomery contexts, each with a modular inverse). That is more
 * CPU than the ECDSA signature that follows it: on the benchmark VM, a tenth of a
 * token and of every TLS handshake. The group of a named curve is a constant, so
 * nhid defines d2i_ECPKParameters itself (the executable's definition comes first
 * in symbol lookup, for libcrypto's callers and the dlopened module alike, as with
 * getpid in common/pid.c) and answers exactly one input from a group built once:
 * the 10-byte DER OID of prime256v1, alone, which is what nhid's keys carry. The
 * caller receives its own EC_GROUP_dup of it, as it would receive its own group
 * from libcrypto: same curve, same named-curve form, same ownership, same pointer
 * advance. Every other input (another curve, explicit parameters, trailing bytes,
 * garbage), and every input before nhi_hsm_ec_group_cache_enable(), goes to
 * libcrypto's own function, found with dlsym(RTLD_NEXT).
 *
 * No key material passes through here: EC parameters are public constants.
 */
#include "hsm_internal.h"

#include <dlfcn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <string.h>

typedef EC_GROUP *(*d2i_group_fn)(EC_GROUP **a, const unsigned char **in, long len);

static _Atomic(d2i_group_fn) real_d2i;
static _Atomic(EC_GROUP *) p256;  /* NULL: not enabled, every call is libcrypto's */
static atomic_ullong hits;

static d2i_group_fn real(void)
{
	d2i_group_fn f = atomic_load_explicit(&real_d2i, memory_order_acquire);

	if (f == NULL) { /* dlsym is thread-safe; two threads find the same symbol */
		f = (d2i_group_fn)dlsym(RTLD_NEXT, "d2i_ECPKParameters");
		atomic_store_explicit(&real_d2i, f, memory_order_release);
	}
	return f;
}

EC_GROUP *d2i_ECPKParameters(EC_GROUP **a, const unsigned char **in, long len)
{
	EC_GROUP *g = atomic_load_explicit(&p256, memory_order_acquire), *mine = NULL;
	d2i_group_fn f;

	/* the cached answer only for the OID alone: anything longer or different is
	 * parsed by libcrypto, with its own error reporting */
	if (g != NULL && in != NULL && *in != NULL && len == (long)sizeof(nhi_hsm_oid_p256) &&
	    memcmp(*in, nhi_hsm_oid_p256, sizeof(nhi_hsm_oid_p256)) == 0 && (mine = EC_GROUP_dup(g)) != NULL) {
		if (a != NULL) { /* d2i convention: *a is replaced (and freed) */
			EC_GROUP_free(*a);
			*a = mine;
		}
		*in += len;
		atomic_fetch_add_explicit(&hits, 1, memory_order_relaxed);
	} else if ((f = real()) != NULL) {
		mine = f(a, in, len);
	} else { /* nhid refuses to start this way (main); a caller elsewhere sees an error */
		ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
	}
	return mine;
}

nhi_err nhi_hsm_ec_group_cache_enable(void)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const unsigned char *p = nhi_hsm_oid_p256;
	EC_GROUP *g = NULL, *want = NULL, *expected = NULL;
	d2i_group_fn f;

	if (atomic_load(&p256) != NULL) {
		rv = NHI_OK;
		goto out;
	}
	/* found now, before the sandbox: the lazy path would dlsym under seccomp */
	f = real();
	NHI_CHECK(f != NULL, NHI_ERR_INTERNAL,
		  "libcrypto's d2i_ECPKParameters not found (dlsym RTLD_NEXT): the EC group is not cached");
	/* the cached group is the one libcrypto itself makes from the same bytes */
	g = f(NULL, &p, (long)sizeof(nhi_hsm_oid_p256));
	want = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
	NHI_CHECK(g != NULL && want != NULL && p == nhi_hsm_oid_p256 + sizeof(nhi_hsm_oid_p256) &&
			  EC_GROUP_get_curve_name(g) == NID_X9_62_prime256v1 && EC_GROUP_cmp(g, want, NULL) == 0 &&
			  EC_GROUP_get_asn1_flag(g) == OPENSSL_EC_NAMED_CURVE,
		  NHI_ERR_INTERNAL, "libcrypto's P-256 group is not the named curve expected: the EC group is not cached");
	if (atomic_compare_exchange_strong(&p256, &expected, g))
		g = NULL; /* kept for the life of the process */
	rv = NHI_OK;
out:
	EC_GROUP_free(g);
	EC_GROUP_free(want);
	return rv;
}

unsigned long long nhi_hsm_ec_group_cache_hits(void)
{
	return atomic_load_explicit(&hits, memory_order_relaxed);
}
