/*
 * provisioning/prov_internal.h — what nhictl's subcommands share: the ceremony
 * config, X.509 issuing with the openssl.cnf profiles, the ceremony transcript, and
 * opening the token from a config (PIN from a file or a prompt).
 */
#ifndef NHI_PROV_INTERNAL_H
#define NHI_PROV_INTERNAL_H

#include "../common/nhi.h"
#include "../hsm/hsm.h"

#include <openssl/conf.h>
#include <openssl/x509.h>

/* Key labels the ceremony creates (docs/ceremony.md). */
#define NHI_LABEL_ROOT "nhid-root"
#define NHI_LABEL_TLS "nhid-tls"
#define NHI_LABEL_TOKEN "nhid-token-1"
#define NHI_LABEL_WRAP "nhid-wrap"
#define NHI_LABEL_AUDIT "nhid-audit"

#define NHI_CFG_LIST_MAX 16 /* DNS names, IP addresses, public-key files in one list of a config */
#define NHI_CFG_PATH_MAX 512 /* one path in a config, NUL included */

struct nhi_ceremony_config {
	char token[256];        /* label or pkcs11: URI */
	char module[512];       /* PKCS#11 module path ("" = SoftHSM2) */
	char out_dir[512];      /* where public outputs are written */
	char profiles[512];     /* openssl.cnf with the X.509 profiles */
	char trust_domain[128]; /* SPIFFE trust domain */
	char organization[128];
	char root_cn[128];
	char server_cn[128];
	char server_dns[NHI_CFG_LIST_MAX][254];
	size_t n_dns;
	char server_ip[NHI_CFG_LIST_MAX][46];
	size_t n_ip;
	int root_days;
	int server_days;
	int agent_days;
	/*
	 * Trust bundle v1 (docs/ceremony.md): made only when update_signers is set.
	 * PEM public-key files as `nhictl update pubkey` writes them, read at the
	 * ceremony's first step; paths are relative to the working directory.
	 */
	char update_signers[NHI_CFG_LIST_MAX][NHI_CFG_PATH_MAX];
	size_t n_signers;
	unsigned update_threshold; /* M of n_signers; 0 = not set */
	int bundle_days;           /* validity of bundle v1 */
	char peer_keys[NHI_CFG_LIST_MAX][NHI_CFG_PATH_MAX];
	size_t n_peers;
	char manifest_keys[NHI_CFG_LIST_MAX][NHI_CFG_PATH_MAX];
	size_t n_manifest;
};

/*
 * Parse and validate a ceremony config (OpenSSL NCONF syntax, section [ceremony]).
 * Unknown keys, missing required keys, bad names and out-of-range days are errors
 * naming the key. `.include` and other directives are refused: the config must be
 * reviewable as one file. The trust-bundle keys go together: update_threshold,
 * bundle_days, peer_keys and manifest_keys are refused without update_signers,
 * which needs update_threshold (1..signers); bundle_days defaults to 365 (at most
 * root_days). Key files are only named here, not read. `text` need not be
 * NUL-terminated.
 */
nhi_err nhi_ceremony_config_parse(const char *text, size_t len, struct nhi_ceremony_config *out) NHI_MUST_CHECK;
nhi_err nhi_ceremony_config_load(const char *path, struct nhi_ceremony_config *out, uint8_t sha256[32]) NHI_MUST_CHECK;

/* Validators shared with enroll. */
bool nhi_valid_agent_name(const char *s);
bool nhi_valid_dns_name(const char *s);
bool nhi_valid_trust_domain(const char *s);

/* Open the token named by the config; PIN from pin_file, or a prompt on /dev/tty. */
nhi_err nhictl_open_hsm(const struct nhi_ceremony_config *cfg, const char *pin_file,
			struct nhi_hsm **out) NHI_MUST_CHECK;

/* ---- X.509 ----------------------------------------------------------------- */

struct nhi_profiles;
/* Load openssl.cnf with the [nhi_profile_*] sections. */
nhi_err nhi_profiles_load(const char *path, struct nhi_profiles **out, uint8_t sha256[32]) NHI_MUST_CHECK;
void nhi_profiles_free(struct nhi_profiles *p);

struct nhi_cert_request {
	const char *profile;     /* "root", "server", "agent", "signer" */
	const char *cn;          /* subject CN */
	const char *org;         /* subject O, may be NULL */
	EVP_PKEY *subject_key;   /* public key to certify */
	X509 *issuer;            /* NULL: self-signed (root) */
	EVP_PKEY *issuer_key;    /* HSM-backed signing key (nhi_hsm_evp_pkey) */
	int days;
	const char *san;         /* OpenSSL SAN syntax built from validated parts, or NULL */
	struct nhi_hsm *hsm;     /* source of the random serial */
	int backdate_days;       /* tests only (NHI_TEST_BUILD): validity ends this many days ago */
	int valid_seconds;       /* tests only (NHI_TEST_BUILD): > 0: validity ends this many seconds from now */
};
/*
 * Issue a certificate; the validity is refused above the profile's max_days, and its
 * notAfter is at most the issuer's (a later one is cut to it).
 */
nhi_err nhi_cert_issue(const struct nhi_profiles *p, const struct nhi_cert_request *req, X509 **out) NHI_MUST_CHECK;
/* PEM of a certificate appended to out. */
nhi_err nhi_cert_pem(X509 *x, struct nhi_buf *out) NHI_MUST_CHECK;
/* Lower-case hex SHA-256 of the DER certificate. */
nhi_err nhi_cert_fingerprint(X509 *x, char out[65]) NHI_MUST_CHECK;
/* Load one PEM certificate from a file. */
nhi_err nhi_cert_load(const char *path, X509 **out) NHI_MUST_CHECK;
/*
 * The root key in the token as the issuer of `ca` (read from ca_path): found by
 * NHI_LABEL_ROOT, checked to be ca's key (a wrong out_dir or token is refused, named),
 * and given as an EVP_PKEY that signs in the token. *key must outlive *signer.
 */
nhi_err nhi_root_signer(struct nhi_hsm *h, X509 *ca, const char *ca_path, struct nhi_hsm_key **key,
			EVP_PKEY **signer) NHI_MUST_CHECK;

/* ---- transcript -------------------------------------------------------------- */

struct nhi_transcript;
nhi_err nhi_transcript_new(struct nhi_transcript **out) NHI_MUST_CHECK;
void nhi_transcript_free(struct nhi_transcript *t);
/*
 * Append a record; takes ownership of `rec` (a jansson object). seq, time and prev
 * (SHA-256 of the previous line) are added here.
 */
nhi_err nhi_transcript_add(struct nhi_transcript *t, void *rec) NHI_MUST_CHECK;
/* Append the final record, signed with the root key over every line before it. */
nhi_err nhi_transcript_sign(struct nhi_transcript *t, struct nhi_hsm *h, const struct nhi_hsm_key *root,
			    const char *root_cert_sha256) NHI_MUST_CHECK;
/* The transcript bytes so far (borrowed). */
const struct nhi_buf *nhi_transcript_bytes(const struct nhi_transcript *t);

/*
 * Verify a transcript offline: every line parses, seq counts up from 0, each prev
 * is the SHA-256 of the line before, the final record is a signature by `root`
 * over all lines before it, and its root_cert_sha256 is root's fingerprint. That
 * record is not signed itself: its alg, key and signed_sha256 are checked and a
 * field nhictl does not write there is refused.
 * On failure the detail names the first bad line.
 */
nhi_err nhi_transcript_verify(const uint8_t *data, size_t len, X509 *root, size_t *n_records) NHI_MUST_CHECK;

#endif
