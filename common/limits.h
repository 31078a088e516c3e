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
#define NHI_HSM_KEY_ID_MAX_BYTES 64 /* a key's CKA_ID (pkcs11-tool --id, nhictl: 16 or 20) */
#define NHI_HSM_LABEL_MAX_BYTES 64
#define NHI_HSM_WRAPPED_MAX_BYTES 4096                  /* a wrapped key blob */
#define NHI_HSM_SIG_SPILL_MAX_BYTES 16384               /* finishing a C_Sign that wanted more than 64 bytes */
#define NHI_HSM_SESSION_WAIT_MS 10000                   /* max wait for a free pooled session */
#define NHI_SOFTHSM2_MODULE_PATH "/usr/lib/softhsm/libsofthsm2.so"

/* X.509 validity caps per profile (days); openssl.cnf may set lower ones */
#define NHI_ROOT_DAYS_MAX 7300
#define NHI_SERVER_DAYS_MAX 825
#define NHI_AGENT_DAYS_MAX 397
#define NHI_SIGNER_DAYS_MAX 1825

/* identity backup (identity/, docs/formats.md) and the in-memory identity store */
#define NHI_BACKUP_MAX_BYTES (768UL * 1024 * 1024)       /* a whole backup file */
#define NHI_BACKUP_IMAGE_MAX_BYTES (768UL * 1024 * 1024) /* the decrypted SQLite image */
#define NHI_BACKUP_CHUNK_BYTES (32 * 1024)               /* plaintext per AES-GCM chunk (default; see docs/identity.md) */
#define NHI_BACKUP_CHUNK_MIN_BYTES 4096
#define NHI_BACKUP_CHUNK_MAX_BYTES (16 * 1024 * 1024)
#define NHI_BACKUP_AGENTS_MAX 4000000UL                  /* agents in one backup */
#define NHI_BACKUP_JSONL_LINE_MAX_BYTES (64 * 1024)      /* one agent line of the JSONL input */
#define NHI_BACKUP_REPORT_LINES_MAX 50                   /* bad JSONL lines listed before giving up */
#define NHI_BACKUP_SIGN_KEY_DEFAULT "nhid-root"          /* ceremony key that signs backups */
#define NHI_BACKUP_WRAP_KEY_DEFAULT "nhid-wrap"          /* ceremony key that wraps data keys */
#define NHI_AGENT_ID_MAX_BYTES 128
#define NHI_AGENT_ROLES_MAX 32
#define NHI_AGENT_ROLE_MAX_BYTES 64
#define NHI_AGENT_AUDIENCES_MAX 32
#define NHI_AGENT_AUDIENCE_MAX_BYTES 256
#define NHI_AGENT_CERTS_MAX 8                            /* enrolled certificates per agent */
#define NHI_AGENT_ATTRIBUTES_MAX_BYTES 4096              /* compact JSON of free attributes */
#define NHI_AGENT_NOT_AFTER_MAX_S 253402300799LL         /* 9999-12-31T23:59:59Z: "no expiry" */
#define NHI_STORE_READERS_MAX 16                         /* SQLite connections per loaded store */

/* tokens/: ES256 JWTs (RFC 7519 + RFC 8725 profile, see docs/tokens.md) */
#define NHI_TOKEN_TTL_DEFAULT_S 300          /* exp - iat when the caller asks for nothing */
#define NHI_TOKEN_TTL_CAP_DEFAULT_S 900      /* issuer ttl cap and verifier lifetime cap, by default */
#define NHI_TOKEN_TTL_MAX_S 3600             /* no configuration may issue or accept longer */
#define NHI_TOKEN_LEEWAY_DEFAULT_S 30        /* clock skew allowed on exp/nbf/iat */
#define NHI_TOKEN_LEEWAY_MAX_S 300
#define NHI_TOKEN_MAX_BYTES 8192             /* a whole compact JWS; larger is rejected unread */
#define NHI_TOKEN_HEADER_MAX_BYTES 1024      /* the encoded protected header */
#define NHI_TOKEN_CLAIM_MAX_BYTES 255        /* iss, sub, one aud value */
#define NHI_TOKEN_ROLES_MAX 32
#define NHI_TOKEN_ROLE_MAX_BYTES 64
#define NHI_TOKEN_AUD_MAX 8                  /* entries of an aud array accepted by the verifier */
#define NHI_TOKEN_JTI_MAX_BYTES 64
#define NHI_TOKEN_JTI_POOL_BYTES 1024        /* token randomness fetched per C_GenerateRandom for jti */
#define NHI_TOKEN_KEYS_MAX 16                /* trusted signing keys (current + retired) */
#define NHI_TOKEN_MEMO_ENTRIES_MAX (1 << 22) /* signature memo slots of one verifier (64 bytes each) */
#define NHI_TOKEN_MEMO_CLAIMS_MAX_BYTES 1024 /* claims a memo slot keeps with it; larger: parsed each time */
#define NHI_TOKEN_NUMERICDATE_MAX 253402300799LL /* 9999-12-31T23:59:59Z */
#define NHI_JWKS_MAX_BYTES (64 * 1024)

/* nhid: the server (server/, docs/api.md); config may lower these, never raise past *_MAX */
#define NHI_SERVER_THREADS_DEFAULT 2                   /* worker threads, one event loop each */
#define NHI_SERVER_THREADS_MAX 64
#define NHI_SERVER_CONNECTIONS_DEFAULT 1024            /* open TLS connections, all workers */
#define NHI_SERVER_CONNECTIONS_MAX 65536
#define NHI_SERVER_BODY_DEFAULT_BYTES (16 * 1024)      /* request body */
#define NHI_SERVER_BODY_MAX_BYTES (1024 * 1024)
#define NHI_SERVER_HEADER_DEFAULT_BYTES (8 * 1024)     /* all request headers together */
#define NHI_SERVER_HEADER_MAX_BYTES (64 * 1024)
#define NHI_SERVER_HEADER_COUNT_DEFAULT 64             /* request header lines (431 past it) */
#define NHI_SERVER_HEADER_COUNT_MAX 1024
#define NHI_SERVER_IDLE_TIMEOUT_DEFAULT_S 30           /* read/idle/write timeout; 2 without a request: closed */
#define NHI_SERVER_HANDSHAKE_TIMEOUT_S 10              /* a TLS handshake must finish within, from the accept */
#define NHI_SERVER_REQUESTS_PER_CONN_DEFAULT 10000     /* then Connection: close */
#define NHI_SERVER_DRAIN_GRACE_S 2                     /* SIGTERM: longest wait for open connections */
#define NHI_SERVER_DRAIN_POLL_MS 50                    /* ... checked this often; none open: stop */
#define NHI_SERVER_ACCEPT_RETRY_MS 100                 /* a listener that failed to switch on: tried again */
#define NHI_SERVER_VERIFY_MEMO_DEFAULT 65536           /* token memo slots (4 MiB, plus the claims kept) */
#define NHI_SERVER_TLS_RECORD_BYTES 16384              /* a reply up to this size is sent as one TLS record */
#define NHI_SERVER_TLS_SESSIONS_DEFAULT 4096           /* resumable TLS sessions kept (1 h; ~7 KiB each) */
#define NHI_SERVER_TLS_SESSIONS_MAX 200000
#define NHI_SERVER_TOKEN_TTL_MAX_DEFAULT_S NHI_TOKEN_TTL_CAP_DEFAULT_S
#define NHI_SERVER_AUDIT_CHECKPOINT_RECORDS_DEFAULT 1000
#define NHI_SERVER_AUDIT_CHECKPOINT_S_DEFAULT 60
#define NHI_SERVER_LISTEN_BACKLOG 1024
#define NHI_SERVER_UPDATE_SCAN_DEFAULT_S 10            /* watched updates_dir: one scan per period */
#define NHI_SERVER_UPDATE_SCAN_MAX_S 3600
#define NHI_SERVER_WRAP_KEY_LABEL "nhid-wrap"          /* unwraps the key of a cert-rotation package */
#define NHI_SERVER_CHAIN_CERTS_MAX 8                   /* certificates in a rotated server chain */
#define NHI_SERVER_REVOKED_MAX 100000                  /* entries of each list of a revocation body */
#define NHI_ADMIN_SCRYPT_N 16384                       /* admin bearer token KDF cost */
#define NHI_ADMIN_SCRYPT_R 8
#define NHI_ADMIN_SCRYPT_P 1
#define NHI_ADMIN_TOKEN_MAX_BYTES 511                  /* nhid --hash-admin-token refuses longer ones */

/* server/audit.c: the audit log (docs/audit.md) */
#define NHI_AUDIT_KEY_LABEL_DEFAULT "nhid-audit"         /* ceremony key that signs checkpoints */
#define NHI_AUDIT_CHECKPOINT_RECORDS_DEFAULT 1000        /* a checkpoint after this many records ... */
#define NHI_AUDIT_CHECKPOINT_RECORDS_MAX 1000000
#define NHI_AUDIT_CHECKPOINT_S_DEFAULT 10                /* ... or when the oldest unsigned one is this old */
#define NHI_AUDIT_CHECKPOINT_S_MAX 86400
#define NHI_AUDIT_CHECKPOINT_FAILURES_MAX 5              /* consecutive signing failures before failing closed */
#define NHI_AUDIT_CHECKPOINT_RETRY_S 1                   /* wait after a failed checkpoint before the next try */
#define NHI_AUDIT_LINE_MAX_BYTES (16 * 1024)             /* one record, newline excluded */
#define NHI_AUDIT_VALUE_MAX_BYTES 512                    /* one string value; longer ones are truncated */
#define NHI_AUDIT_NAME_MAX_BYTES 64                      /* event and field names */
#define NHI_AUDIT_FIELDS_MAX 64                          /* members of one object / entries of one array */
#define NHI_AUDIT_FIELD_DEPTH_MAX 3                      /* nesting of field values */
#define NHI_AUDIT_BATCH_MAX 1024                         /* records in one group commit */
#define NHI_AUDIT_BATCH_MAX_BYTES (1024 * 1024)          /* bytes in one group commit */
#define NHI_AUDIT_GATHER_MAX_US 1000                     /* longest wait for a batch's callers to come back */
#define NHI_AUDIT_TORN_MAX_BYTES (NHI_AUDIT_BATCH_MAX_BYTES + NHI_AUDIT_LINE_MAX_BYTES) /* partial tail cut at open */

/* server/update.c, bundle.c, manifest.c: signed updates, trust bundle, manifests (docs/updates.md) */
#define NHI_UPDATE_BODY_MAX_BYTES (64UL * 1024 * 1024)     /* decoded body of one update package */
#define NHI_UPDATE_PACKAGE_MAX_BYTES (96UL * 1024 * 1024)  /* a whole package file (base64url body + JSON) */
#define NHI_UPDATE_SIGNATURES_MAX 32                      /* signature entries in one signed document */
#define NHI_UPDATE_ID_MAX_BYTES 128                       /* package id */
#define NHI_UPDATE_VERSION_MAX 9007199254740991ULL        /* 2^53-1: exact in every JSON reader */
#define NHI_UPDATE_TIME_MAX_S 253402300799LL              /* 9999-12-31T23:59:59Z */
#define NHI_UPDATE_CLOCK_SKEW_DEFAULT_S 300               /* local clock may lag the highest trusted time by this */
#define NHI_UPDATE_CLOCK_SKEW_MAX_S 86400
#define NHI_UPDATE_STATE_MAX_BYTES (64 * 1024)            /* update-state.json */
#define NHI_UPDATE_SCAN_MAX_FILES 256                     /* packages taken from the watched dir per scan */
#define NHI_UPDATE_MOVE_SUFFIX_MAX 1000                   /* applied/x.N name collisions tried */
#define NHI_BUNDLE_MAX_BYTES (1024 * 1024)                /* a whole trust bundle document */
#define NHI_BUNDLE_KEYS_MAX 64                            /* keys in one list of a bundle */
#define NHI_BUNDLE_CA_CERTS_MAX 16
#define NHI_BUNDLE_CHAIN_MAX 1024                         /* bundles in one chain given to verify */
#define NHI_MANIFEST_MAX_BYTES (16 * 1024 * 1024)         /* a whole signed manifest */
#define NHI_MANIFEST_FILES_MAX 100000                     /* files in one model directory */
#define NHI_MANIFEST_DEPTH_MAX 32                         /* directory nesting */
#define NHI_MANIFEST_PATH_MAX_BYTES 1024                  /* one relative path */
#define NHI_MANIFEST_FILE_MAX_BYTES (256ULL * 1024 * 1024 * 1024) /* one file: 256 GiB */

/* no-egress posture (server/sandbox.c, provisioning/airgap.c, docs/airgap.md) */
#define NHI_AIRGAP_PROC_LINES_MAX 65536                   /* lines read from one /proc/net table or resolv.conf */
#define NHI_AIRGAP_LISTED_MAX 8                           /* routes/sockets/nameservers printed per check */
#define NHI_AIRGAP_CERT_WARN_DAYS 30                      /* a certificate closer to expiry than this is flagged */

/* common/jsonw.h: objects and arrays open at once inside the top object */
#define NHI_JSONW_DEPTH_MAX 4

#endif
