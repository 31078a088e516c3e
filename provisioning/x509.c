/*
 * provisioning/x509.c — certificates from the openssl.cnf profiles, signed with a
 * key that stays in the token (hsm/hsm_evp.c bridges it into X509_sign).
 */
#include "prov_internal.h"
#include "../common/conf.h"
#include "../common/limits.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct nhi_profiles {
	CONF *conf;
};

/* a profile's max_days: a whole number of days, 1 to NHI_ROOT_DAYS_MAX (nothing lives longer) */
static nhi_err profile_max_days(const CONF *conf, const char *section, long *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	const char *s = NCONF_get_string(conf, section, "max_days");
	char *end = NULL;
	long v = 0;

	ERR_clear_error();
	NHI_CHECK(s != NULL, NHI_ERR_CONFIG, "profiles file has no 'max_days' in its [%s] section", section);
	errno = 0;
	if (s[0] >= '0' && s[0] <= '9')
		v = strtol(s, &end, 10);
	NHI_CHECK(end != NULL && *end == '\0' && errno == 0 && v >= 1 && v <= NHI_ROOT_DAYS_MAX, NHI_ERR_CONFIG,
		  "profiles file: [%s] max_days '%.32s' is not a whole number of days from 1 to %d", section, s,
		  NHI_ROOT_DAYS_MAX);
	*out = v;
	rv = NHI_OK;
out:
	return rv;
}

/* every [nhi_profile_*] section's max_days, so that a bad one stops the run before any key is made */
static nhi_err profiles_check(const CONF *conf)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	STACK_OF(OPENSSL_CSTRING) *names = NCONF_get_section_names(conf);
	long days;
	int i;

	NHI_CHECK_SSL(names != NULL, NHI_ERR_NOMEM, "listing the profile sections");
	for (i = 0; i < sk_OPENSSL_CSTRING_num(names); i++)
		if (strncmp(sk_OPENSSL_CSTRING_value(names, i), "nhi_profile_", 12) == 0)
			NHI_TRY(profile_max_days(conf, sk_OPENSSL_CSTRING_value(names, i), &days));
	rv = NHI_OK;
out:
	sk_OPENSSL_CSTRING_free(names);
	return rv;
}

nhi_err nhi_profiles_load(const char *path, struct nhi_profiles **out, uint8_t sha256[32])
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_profiles *p = NULL;
	struct nhi_buf b = {0};
	BIO *bio = NULL;
	long eline = 0;

	*out = NULL;
	NHI_TRY(nhi_conf_read(path, &b, sha256));
	rv = nhi_conf_text_check((const char *)b.data, b.len);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv, "profiles file %s", path);
		goto out;
	}
	p = calloc(1, sizeof(*p));
	NHI_CHECK(p != NULL, NHI_ERR_NOMEM, "out of memory");
	p->conf = NCONF_new(NULL);
	bio = BIO_new_mem_buf(b.data, (int)b.len);
	NHI_CHECK_SSL(p->conf != NULL && bio != NULL, NHI_ERR_NOMEM, "allocating the profile parser");
	NHI_CHECK_SSL(NCONF_load_bio(p->conf, bio, &eline) == 1, NHI_ERR_CONFIG, "%s: syntax error at line %ld", path,
		      eline);
	rv = profiles_check(p->conf);
	if (rv != NHI_OK) {
		rv = nhi_err_wrap(rv, "profiles file %s", path);
		goto out;
	}
	*out = p;
	p = NULL;
	rv = NHI_OK;
out:
	BIO_free(bio);
	nhi_buf_free(&b);
	nhi_profiles_free(p);
	return rv;
}

void nhi_profiles_free(struct nhi_profiles *p)
{
	if (p == NULL)
		return;
	NCONF_free(p->conf);
	free(p);
}

static nhi_err set_serial(X509 *x, struct nhi_hsm *h)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	uint8_t rnd[16];
	BIGNUM *bn = NULL;

	NHI_TRY(nhi_hsm_random(h, rnd, sizeof(rnd)));
	rnd[0] &= 0x7f; /* RFC 5280 §4.1.2.2: positive, at most 20 octets */
	rnd[0] |= 0x40; /* and never shorter than 16 octets */
	bn = BN_bin2bn(rnd, sizeof(rnd), NULL);
	NHI_CHECK_SSL(bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL, NHI_ERR_CRYPTO,
		      "setting the serial number");
	rv = NHI_OK;
out:
	BN_free(bn);
	return rv;
}

nhi_err nhi_cert_issue(const struct nhi_profiles *p, const struct nhi_cert_request *req, X509 **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	char section[64];
	const char *ext_section;
	long max_days;
	X509 *x = NULL;
	X509_NAME *name = NULL;
	X509V3_CTX ctx;
	X509_EXTENSION *san = NULL;

	*out = NULL;
	snprintf(section, sizeof(section), "nhi_profile_%s", req->profile);
	ext_section = NCONF_get_string(p->conf, section, "extensions");
	ERR_clear_error();
	NHI_CHECK(ext_section != NULL, NHI_ERR_CONFIG, "profiles file has no [%s] section with 'extensions' and 'max_days'",
		  section);
	NHI_TRY(profile_max_days(p->conf, section, &max_days));
	NHI_CHECK(req->days > 0 && req->days <= max_days, NHI_ERR_CONFIG,
		  "%d days requested for a %s certificate; the profile allows at most %ld", req->days, req->profile,
		  max_days);
	/* an expired issuer: the cut to its notAfter below would end the certificate before it starts */
	NHI_CHECK(req->issuer == NULL || req->backdate_days != 0 ||
			  X509_cmp_current_time(X509_get0_notAfter(req->issuer)) > 0,
		  NHI_ERR_EXPIRED,
		  "the certificate that would sign this %s certificate (the root, ca.crt) has expired: nothing it signs "
		  "would verify; rotate the root before issuing (docs/ceremony.md)",
		  req->profile);
	x = X509_new();
	name = X509_NAME_new();
	NHI_CHECK_SSL(x != NULL && name != NULL, NHI_ERR_NOMEM, "X509_new");
	NHI_CHECK_SSL(X509_set_version(x, X509_VERSION_3) == 1, NHI_ERR_CRYPTO, "X509_set_version");
	NHI_TRY(set_serial(x, req->hsm));
	if (req->org != NULL && req->org[0] != '\0')
		NHI_CHECK_SSL(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)req->org, -1, -1,
							 0) == 1,
			      NHI_ERR_CRYPTO, "subject O");
	NHI_CHECK_SSL(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)req->cn, -1, -1, 0) ==
			      1,
		      NHI_ERR_CRYPTO, "subject CN");
	NHI_CHECK_SSL(X509_set_subject_name(x, name) == 1, NHI_ERR_CRYPTO, "X509_set_subject_name");
	NHI_CHECK_SSL(X509_set_issuer_name(x, req->issuer ? X509_get_subject_name(req->issuer) : name) == 1,
		      NHI_ERR_CRYPTO, "X509_set_issuer_name");
	/* a minute of slack for clocks that disagree a little; never more */
	NHI_CHECK_SSL(X509_time_adj_ex(X509_getm_notBefore(x), -req->backdate_days - req->days * !!req->backdate_days,
				       -60, NULL) != NULL &&
			      X509_time_adj_ex(X509_getm_notAfter(x),
					       req->valid_seconds > 0 ? 0 : req->backdate_days ? -req->backdate_days : req->days,
					       req->valid_seconds > 0 ? req->valid_seconds : 0, NULL) != NULL,
		      NHI_ERR_CRYPTO, "setting the validity");
	/* a certificate never outlives its issuer (nothing chains to an expired root):
	 * a later notAfter is cut to the issuer's, which the caller prints and records */
	if (req->issuer != NULL && ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(req->issuer)) > 0)
		NHI_CHECK_SSL(X509_set1_notAfter(x, X509_get0_notAfter(req->issuer)) == 1, NHI_ERR_CRYPTO,
			      "setting the validity");
	NHI_CHECK_SSL(X509_set_pubkey(x, req->subject_key) == 1, NHI_ERR_CRYPTO, "X509_set_pubkey");
	X509V3_set_ctx(&ctx, req->issuer ? req->issuer : x, x, NULL, NULL, 0);
	X509V3_set_nconf(&ctx, p->conf);
	NHI_CHECK_SSL(X509V3_EXT_add_nconf(p->conf, &ctx, ext_section, x) == 1, NHI_ERR_CONFIG,
		      "applying profile section [%s]", ext_section);
	if (req->san != NULL) {
		san = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, req->san);
		NHI_CHECK_SSL(san != NULL && X509_add_ext(x, san, -1) == 1, NHI_ERR_CONFIG, "subjectAltName '%s'",
			      req->san);
	}
	NHI_CHECK_SSL(X509_sign(x, req->issuer_key, EVP_sha256()) > 0, NHI_ERR_HSM,
		      "signing the %s certificate in the token", req->profile);
	*out = x;
	x = NULL;
	rv = NHI_OK;
out:
	X509_EXTENSION_free(san);
	X509_NAME_free(name);
	X509_free(x);
	return rv;
}

nhi_err nhi_cert_pem(X509 *x, struct nhi_buf *out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	BIO *b = BIO_new(BIO_s_mem());
	char *p = NULL;
	long n;

	NHI_CHECK_SSL(b != NULL && PEM_write_bio_X509(b, x) == 1, NHI_ERR_CRYPTO, "PEM-encoding a certificate");
	n = BIO_get_mem_data(b, &p);
	NHI_TRY(nhi_buf_append(out, p, (size_t)n));
	rv = NHI_OK;
out:
	BIO_free(b);
	return rv;
}

nhi_err nhi_cert_fingerprint(X509 *x, char out[65])
{
	unsigned char md[32];
	unsigned int n = 0;

	if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32)
		return nhi_err_set_ssl(NHI_ERR_CRYPTO, "certificate digest");
	nhi_hex(md, 32, out);
	return NHI_OK;
}

nhi_err nhi_cert_load(const char *path, X509 **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf b = {0};
	BIO *bio = NULL;

	*out = NULL;
	NHI_TRY(nhi_file_read(path, NHI_CERT_MAX_BYTES, &b));
	bio = BIO_new_mem_buf(b.data, (int)b.len);
	NHI_CHECK_SSL(bio != NULL, NHI_ERR_NOMEM, "BIO");
	*out = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	NHI_CHECK_SSL(*out != NULL, NHI_ERR_FORMAT, "%s is not a PEM certificate", path);
	rv = NHI_OK;
out:
	BIO_free(bio);
	nhi_buf_free(&b);
	return rv;
}

nhi_err nhi_root_signer(struct nhi_hsm *h, X509 *ca, const char *ca_path, struct nhi_hsm_key **key, EVP_PKEY **signer)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	EVP_PKEY *pub = NULL;

	*key = NULL;
	*signer = NULL;
	NHI_TRY(nhi_hsm_find(h, NHI_LABEL_ROOT, key));
	NHI_TRY(nhi_hsm_pubkey(h, *key, &pub));
	/* the ca.crt on disk must be the root whose key is in this token */
	NHI_CHECK(EVP_PKEY_eq(pub, X509_get0_pubkey(ca)) == 1, NHI_ERR_CONFIG,
		  "%s does not belong to the root key in %s: wrong out_dir or wrong token", ca_path,
		  nhi_hsm_token_desc(h));
	NHI_TRY(nhi_hsm_evp_pkey(h, *key, signer));
	rv = NHI_OK;
out:
	EVP_PKEY_free(pub);
	return rv;
}
