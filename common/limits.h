/*
 * common/limits.h — every default and bound of nhid in one place, with its unit in
 * its name. Config files may lower most of them; none may be raised past the
 * *_MAX_* values here.
 */
#ifndef NHI_LIMITS_H
#define NHI_LIMITS_H

/* buffers and files */
#define NHI_BUF_MAX_BYTES (1024UL * 1024 * 1024)      /* no single buffer above 1 GiB */
#define NHI_PIN_FILE_MAX_BYTES 256                      /* a PIN file larger than this is not a PIN */
#define NHI_CONFIG_MAX_BYTES (256 * 1024)               /* ceremony/server config files */
#define NHI_CERT_MAX_BYTES (64 * 1024)                  /* one PEM certificate or CSR */
#define NHI_TRANSCRIPT_MAX_BYTES (4 * 1024 * 1024)      /* ceremony transcript */
#define NHI_TRANSCRIPT_LINE_MAX_BYTES (64 * 1024)

/* PKCS#11 */
#define NHI_HSM_SESSIONS_DEFAULT 4
#define NHI_HSM_SESSIONS_MAX 64
#define NHI_HSM_LABEL_MAX_BYTES 64
#define NHI_HSM_WRAPPED_MAX_BYTES 4096                  /* a wrapped key blob */
#define NHI_HSM_SESSION_WAIT_MS 10000                   /* max wait for a free pooled session */
#define NHI_SOFTHSM2_MODULE_PATH "/usr/lib/softhsm/libsofthsm2.so"

/* X.509 validity caps per profile (days); openssl.cnf may set lower ones */
#define NHI_ROOT_DAYS_MAX 7300
#define NHI_SERVER_DAYS_MAX 825
#define NHI_AGENT_DAYS_MAX 397
#define NHI_SIGNER_DAYS_MAX 1825

#endif
