/*
 * identity/identity.h — the encrypted identity backup and the in-memory identity
 * store that answers every "who is this agent" question of nhid.
 *
 * A backup (docs/formats.md) is: a fixed 320-byte header, the AES-256-GCM
 * ciphertext of a SQLite database image in 32 KiB chunks under a fresh data key, and
 * an ES256 signature over header||ciphertext by a ceremony key. The data key
 * travels wrapped (CKM_AES_KEY_WRAP_PAD) under the token's wrap key and is only
 * ever unwrapped INSIDE the token as a non-extractable session key.
 *
 * The store holds one loaded backup at a time as a refcounted snapshot. Importing
 * builds and checks a complete new snapshot off to the side and swaps a pointer
 * under a lock: readers keep the snapshot they started with, never see a half
 * loaded store, and any failure leaves the running store untouched. Lookups are
 * safe from any number of threads, during imports too.
 */
#ifndef NHI_IDENTITY_H
#define NHI_IDENTITY_H

#include "../common/nhi.h"
#include "../common/limits.h"
#include "../hsm/hsm.h"

/* ---- backup files --------------------------------------------------------------- */

#define NHI_BACKUP_FORMAT_VERSION 1
#define NHI_BACKUP_SCHEMA_VERSION 1
#define NHI_BACKUP_HEADER_BYTES 320
#define NHI_BACKUP_SIG_BYTES 64

/* What a backup header says. Before nhi_store_import* succeeded, none of it is verified. */
struct nhi_backup_info {
	unsigned format_version;
	unsigned schema_version;
	long long created_at; /* unix seconds, UTC */
	uint64_t serial;      /* strictly increasing between backups of one site */
	uint64_t record_count; /* agents */
	uint64_t image_bytes;  /* plaintext SQLite image */
	uint64_t file_bytes;
	unsigned chunk_bytes;
	unsigned chunk_count;
	char wrap_key_label[NHI_HSM_LABEL_MAX_BYTES + 1];
	char sign_key_label[NHI_HSM_LABEL_MAX_BYTES + 1];
	char sign_key_sha256[65]; /* hex SHA-256 of the signer's SubjectPublicKeyInfo DER */
	char digest_sha256[65];   /* hex SHA-256 of header||ciphertext (what is signed); "" from inspect */
};

/*
 * Parse and bound-check a backup's header and framing without any key: magic,
 * version, reserved bytes, sizes against the file length and the NHI_BACKUP_* caps.
 * Nothing is verified cryptographically (that is nhi_store_import's job); this is
 * what `nhictl backup inspect` prints. NHI_ERR_FORMAT / NHI_ERR_LIMIT name the field.
 */
nhi_err nhi_backup_inspect(const uint8_t *data, size_t len, struct nhi_backup_info *out) NHI_MUST_CHECK;
/* The same for a file: only its header is read; the framing is checked against its length. */
nhi_err nhi_backup_inspect_file(const char *path, struct nhi_backup_info *out) NHI_MUST_CHECK;

struct nhi_backup_create_opts {
	const char *agents_path;    /* JSONL, one agent per line (docs/identity.md) */
	const char *certs_dir;      /* base of relative cert_pem_file paths; NULL: agents_path's directory */
	const char *sign_key_label; /* NULL: NHI_BACKUP_SIGN_KEY_DEFAULT */
	const char *wrap_key_label; /* NULL: NHI_BACKUP_WRAP_KEY_DEFAULT */
	long long created_at;       /* 0: now */
	uint64_t serial;            /* 0: created_at */
};

/*
 * Build a backup from an agents JSONL file: every line validated (relative cert_pem_file
 * paths are resolved against certs_dir), SQLite image, fresh data key
 * made in the token, chunked AES-256-GCM in the token, data key wrapped under the
 * wrap key, header||ciphertext signed by the signing key. The file bytes are
 * appended to `out` (the caller writes them, e.g. nhi_file_write_excl).
 *
 * Bad lines: one "line N: <cause>" per line is appended to `report` (up to
 * NHI_BACKUP_REPORT_LINES_MAX) and NHI_ERR_FORMAT is returned with nothing in `out`.
 * `info` (may be NULL) receives the header of the new backup.
 */
nhi_err nhi_backup_create(struct nhi_hsm *h, const struct nhi_backup_create_opts *o, struct nhi_buf *out,
			  struct nhi_backup_info *info, struct nhi_buf *report) NHI_MUST_CHECK;

/* ---- agents ---------------------------------------------------------------------- */

enum nhi_agent_status {
	NHI_AGENT_ACTIVE = 1,
	NHI_AGENT_SUSPENDED = 2,
	NHI_AGENT_REVOKED = 3,
};

/*
 * One agent record, copied out of the store: the caller owns it (nhi_agent_free)
 * and it stays valid across store swaps. All pointers point into the same block.
 */
struct nhi_agent {
	const char *id;
	enum nhi_agent_status status;
	long long not_before; /* unix s; valid when not_before <= now <= not_after */
	long long not_after;  /* NHI_AGENT_NOT_AFTER_MAX_S when the JSONL gave none */
	size_t n_roles;
	const char *const *roles;
	size_t n_audiences;
	const char *const *audiences;
	const char *attributes; /* compact JSON object, keys sorted; "{}" when none */
	size_t n_thumbprints;
	const uint8_t (*thumbprints)[32]; /* SHA-256 of each enrolled certificate's DER */
	uint64_t backup_serial;           /* serial of the backup the record came from */
	uint64_t store_generation;        /* the store snapshot it was read from (nhi_store_generation) */
};

/* "active", "suspended", "revoked" (or "unknown"); static string. */
const char *nhi_agent_status_name(enum nhi_agent_status s);
/*
 * Policy at lookup time: NHI_OK when active and now is inside [not_before,
 * not_after]; NHI_ERR_DENIED (suspended/revoked) or NHI_ERR_EXPIRED (not yet valid
 * or expired) with the reason and the agent id in the detail.
 */
nhi_err nhi_agent_check(const struct nhi_agent *a, long long now) NHI_MUST_CHECK;
bool nhi_agent_has_role(const struct nhi_agent *a, const char *role);
bool nhi_agent_allows_audience(const struct nhi_agent *a, const char *audience);
/* NULL is a no-op. */
void nhi_agent_free(struct nhi_agent *a);

/* ---- the store ------------------------------------------------------------------ */

struct nhi_store;

/* An empty store (every lookup is NHI_ERR_NOT_FOUND until an import). Caller frees. */
nhi_err nhi_store_new(struct nhi_store **out) NHI_MUST_CHECK;
/* Frees the store; the caller guarantees no lookup or import is running. NULL is a no-op. */
void nhi_store_free(struct nhi_store *s);

struct nhi_store_import_result;
struct nhi_store_info;

struct nhi_store_import_opts {
	const char *sign_key_label; /* key whose public half verifies the signature; NULL: default */
	const char *wrap_key_label; /* NULL: the (signed) header's label; else it must match */
	uint64_t min_serial;        /* persisted high-water mark: a lower serial is a rollback */
	/*
	 * The last backup this server accepted, as its caller persisted it (serial,
	 * digest, created_at; `loaded` set); NULL or not loaded: none. While the store
	 * has nothing loaded (a restart, a scratch store) it stands in for the loaded
	 * backup, so every rollback rule holds across restarts, not only the serial's.
	 */
	const struct nhi_store_info *accepted;
	/*
	 * Called once every check has passed, just before the swap, with the import
	 * lock held (res: info, outcome, previous_*, the timings so far); an error
	 * cancels the swap and is the import's error. What must be on disk before
	 * the new identities serve (the high-water mark, the audit record) goes here.
	 */
	nhi_err (*commit)(void *arg, const struct nhi_store_import_result *res);
	void *commit_arg;
	bool force; /* accept a rollback (the caller must audit it; nhid never sets it) */
};

enum nhi_import_outcome {
	NHI_IMPORT_FIRST = 1,           /* nothing was loaded before */
	NHI_IMPORT_NEWER = 2,           /* serial above the loaded one */
	NHI_IMPORT_SAME = 3,            /* the loaded backup again (same signed digest) */
	NHI_IMPORT_ROLLBACK_FORCED = 4, /* older or conflicting, accepted because of force */
};

struct nhi_store_import_result {
	struct nhi_backup_info info; /* the new backup (verified) */
	enum nhi_import_outcome outcome;
	uint64_t previous_serial; /* 0 when nothing was loaded */
	long long previous_created_at;
	double verify_s;  /* read + parse + SHA-256 + ECDSA verify */
	double decrypt_s; /* unwrap + in-token AES-GCM */
	double check_s;   /* deserialize + integrity + schema + counts */
	double total_s;
	size_t image_bytes;
};

/*
 * Import a backup and swap it in. In order: framing checks; the signature against
 * the public key of the signing key in the token (the header's signer fingerprint
 * must match it); the rollback check against the loaded backup, or o->accepted
 * when none is, and o->min_serial (NHI_ERR_ROLLBACK unless o->force); the data key
 * unwrapped inside the token; chunked AES-GCM decrypted inside the token into
 * wiped, non-dumpable memory; sqlite3_deserialize read-only; integrity check; the
 * schema must be exactly ours (no trigger, view or extra object); header and image
 * must agree (schema version, serial, created_at, agent count); every agent and
 * certificate row obeys the rules of the agents JSONL (docs/formats.md);
 * o->commit; swap.
 * Every failure leaves the loaded store untouched and names the cause.
 * `o` may be NULL (defaults); `res` may be NULL. Imports are serialised.
 */
nhi_err nhi_store_import_file(struct nhi_store *s, struct nhi_hsm *h, const char *path,
			      const struct nhi_store_import_opts *o, struct nhi_store_import_result *res) NHI_MUST_CHECK;
/* Same from bytes in memory (borrowed for the duration of the call). */
nhi_err nhi_store_import(struct nhi_store *s, struct nhi_hsm *h, const uint8_t *data, size_t len,
			 const struct nhi_store_import_opts *o, struct nhi_store_import_result *res) NHI_MUST_CHECK;

struct nhi_store_info {
	bool loaded;
	uint64_t serial;
	long long created_at;
	uint64_t agents;
	long long loaded_at;      /* unix s of the swap */
	char digest_sha256[65];   /* of the loaded backup */
};
void nhi_store_get_info(struct nhi_store *s, struct nhi_store_info *out);

/*
 * The generation of the snapshot in service: every swap (import, reload) brings a
 * new one, never reused in this process; 0 while nothing is loaded. Snapshots are
 * immutable, so a record whose store_generation equals it is exactly what a lookup
 * would return now (its time window still needs nhi_agent_check). Lock-free.
 */
uint64_t nhi_store_generation(struct nhi_store *s);

/*
 * Lookups, without policy: NHI_ERR_NOT_FOUND when absent (or nothing loaded);
 * NHI_ERR_FORMAT if the stored record is unusable. *out is owned by the caller.
 */
nhi_err nhi_store_find_id(struct nhi_store *s, const char *id, struct nhi_agent **out) NHI_MUST_CHECK;
nhi_err nhi_store_find_thumbprint(struct nhi_store *s, const uint8_t sha256[32], struct nhi_agent **out) NHI_MUST_CHECK;

/*
 * Lookup plus nhi_agent_check(now): what the token and resolve endpoints call.
 * *out is set only on NHI_OK.
 */
nhi_err nhi_store_resolve_id(struct nhi_store *s, const char *id, long long now, struct nhi_agent **out) NHI_MUST_CHECK;
nhi_err nhi_store_resolve_thumbprint(struct nhi_store *s, const uint8_t sha256[32], long long now,
				     struct nhi_agent **out) NHI_MUST_CHECK;

#endif
