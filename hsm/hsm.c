/*
 * hsm/hsm.c — module loading, token selection, login, the session pool with its
 * recovery rule, token initialisation, and finding/generating/destroying keys.
 * The cryptographic operations live in hsm_ops.c, the OpenSSL bridge in hsm_evp.c.
 */
#include "hsm_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <p11-kit/uri.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const CK_BBOOL ck_true = CK_TRUE;
static const CK_BBOOL ck_false = CK_FALSE;
/* DER OIDs of the curves: prime256v1 and id-Ed25519 (RFC 8410) */
const uint8_t nhi_hsm_oid_p256[10] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};

nhi_err nhi_hsm_fail(CK_RV r, const char *what)
{
	nhi_err code = NHI_ERR_HSM;

	switch (r) {
	case CKR_PIN_INCORRECT:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
		return nhi_err_set(NHI_ERR_PIN, "%s: %s: the PIN in the PIN file was rejected by the token",
				   what, nhi_hsm_rv_name(r));
	case CKR_PIN_LOCKED:
		return nhi_err_set(NHI_ERR_PIN,
				   "%s: %s: the user PIN is locked; the security officer must reset it",
				   what, nhi_hsm_rv_name(r));
	case CKR_SIGNATURE_INVALID:
	case CKR_SIGNATURE_LEN_RANGE:
	case CKR_ENCRYPTED_DATA_INVALID:
	case CKR_ENCRYPTED_DATA_LEN_RANGE:
	case CKR_WRAPPED_KEY_INVALID:
	case CKR_WRAPPED_KEY_LEN_RANGE:
		code = NHI_ERR_VERIFY;
		break;
	case CKR_HOST_MEMORY:
		code = NHI_ERR_NOMEM;
		break;
	default:
		break;
	}
	return nhi_err_set(code, "%s: %s", what, nhi_hsm_rv_name(r));
}

/* ---- module and token ------------------------------------------------------- */

static CK_FUNCTION_LIST *load_module(const char *path, bool *initialized)
{
	CK_FUNCTION_LIST *f;
	CK_RV r;

	*initialized = false;
#ifdef NHI_TEST_BUILD
	/* keep the module mapped after p11-kit unloads it, so LeakSanitizer can name
	 * the module's own frames (and tests/lsan.supp can attribute its leaks to it) */
	(void)dlopen(path, RTLD_NOW | RTLD_NODELETE);
#endif
	/* managed mode: p11-kit gives each loader its own view, so several nhi_hsm in one
	 * process (tests, rotation) initialise and finalise independently */
	f = p11_kit_module_load(path, 0);
	if (f == NULL) {
		nhi_err_set(NHI_ERR_CONFIG, "cannot load PKCS#11 module %s: %s (install softhsm2 or set module_path)",
			    path, p11_kit_message() ? p11_kit_message() : "unknown error");
		return NULL;
	}
	r = p11_kit_module_initialize(f);
	if (r != CKR_OK) {
		nhi_hsm_fail(r, "C_Initialize");
		nhi_err_wrap(NHI_ERR_HSM, "PKCS#11 module %s", path);
		p11_kit_module_release(f);
		return NULL;
	}
	*initialized = true;
	return f;
}

static void unload_module(CK_FUNCTION_LIST *f, bool initialized)
{
	if (f == NULL)
		return;
	if (initialized)
		(void)p11_kit_module_finalize(f);
	p11_kit_module_release(f);
}

/* label field of a CK_TOKEN_INFO as a C string */
static void token_label(const CK_TOKEN_INFO *ti, char out[33])
{
	size_t n = p11_kit_space_strlen(ti->label, sizeof(ti->label));

	memcpy(out, ti->label, n);
	out[n] = '\0';
}

nhi_err nhi_hsm_selector_match(const char *token, const CK_TOKEN_INFO *ti, bool *match)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	P11KitUri *uri = NULL;
	char label[33];
	int pr;

	*match = false;
	NHI_CHECK(token != NULL && token[0] != '\0', NHI_ERR_CONFIG,
		  "no token configured: set a token label or a pkcs11: URI");
	token_label(ti, label);
	if (strncmp(token, "pkcs11:", 7) == 0) {
		uri = p11_kit_uri_new();
		NHI_CHECK(uri != NULL, NHI_ERR_NOMEM, "out of memory");
		pr = p11_kit_uri_parse(token, P11_KIT_URI_FOR_TOKEN | P11_KIT_URI_FOR_SLOT, uri);
		NHI_CHECK(pr == P11_KIT_URI_OK, NHI_ERR_CONFIG, "token URI is not a valid RFC 7512 URI: %s",
			  p11_kit_uri_message(pr));
		/* secrets never travel in config: RFC 7512 pin-value/pin-source are refused */
		NHI_CHECK(p11_kit_uri_get_pin_value(uri) == NULL && p11_kit_uri_get_pin_source(uri) == NULL,
			  NHI_ERR_CONFIG,
			  "token URI carries a PIN (pin-value/pin-source): remove it and use a 0600 pin_file");
		*match = p11_kit_uri_match_token_info(uri, ti) == 1;
	} else {
		NHI_CHECK(strlen(token) <= 32, NHI_ERR_CONFIG,
			  "token label '%.40s...' is longer than the 32 bytes PKCS#11 allows", token);
		*match = strcmp(label, token) == 0;
	}
	rv = NHI_OK;
out:
	p11_kit_uri_free(uri);
	return rv;
}

static nhi_err find_slot(CK_FUNCTION_LIST *f, const char *token, CK_SLOT_ID *out, char *desc,
			 size_t desc_len)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64, i;
	CK_TOKEN_INFO ti;
	char label[33], seen[512] = "";
	size_t seen_len = 0;
	int matches = 0, pr;
	bool match;
	CK_RV r;

	/* validate the selector once before touching the module, with an empty token */
	memset(&ti, ' ', sizeof(ti));
	NHI_TRY(nhi_hsm_selector_match(token, &ti, &match));
	r = f->C_GetSlotList(CK_TRUE, slots, &n);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_GetSlotList"), "C_GetSlotList: %s", nhi_hsm_rv_name(r));
	for (i = 0; i < n; i++) {
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		if (!(ti.flags & CKF_TOKEN_INITIALIZED))
			continue;
		token_label(&ti, label);
		pr = snprintf(seen + seen_len, sizeof(seen) - seen_len, "%s'%s'", seen_len ? ", " : "", label);
		if (pr > 0 && (size_t)pr < sizeof(seen) - seen_len)
			seen_len += (size_t)pr;
		NHI_TRY(nhi_hsm_selector_match(token, &ti, &match));
		if (match) {
			matches++;
			*out = slots[i];
			snprintf(desc, desc_len, "token '%s' (serial %.*s, %.*s)", label,
				 (int)p11_kit_space_strlen(ti.serialNumber, sizeof(ti.serialNumber)),
				 ti.serialNumber, (int)p11_kit_space_strlen(ti.model, sizeof(ti.model)), ti.model);
		}
	}
	NHI_CHECK(matches > 0, NHI_ERR_NOT_FOUND,
		  "no PKCS#11 token matches '%s' (tokens present: %s): run the ceremony or fix the token setting",
		  token, seen_len ? seen : "none");
	NHI_CHECK(matches == 1, NHI_ERR_CONFIG,
		  "%d tokens match '%s' (%s): name one by a unique label or a URI with serial=", matches, token,
		  seen);
	rv = NHI_OK;
out:
	return rv;
}

static CK_RV login(struct nhi_hsm *h, CK_SESSION_HANDLE s)
{
	CK_RV r;

	if (h->pin.len == 0)
		return CKR_OK;
	r = h->f->C_Login(s, CKU_USER, h->pin.data, h->pin.len);
	/* PKCS#11 login is per application: another session may already have done it */
	return r == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : r;
}

/* *step (may be NULL): the call that failed, for the message */
static CK_RV open_session(struct nhi_hsm *h, CK_SESSION_HANDLE *s, const char **step)
{
	CK_RV r = h->f->C_OpenSession(h->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);

	if (step != NULL)
		*step = "C_OpenSession";
	if (r != CKR_OK)
		return r;
	if (step != NULL)
		*step = "C_Login";
	r = login(h, *s);
	if (r != CKR_OK) {
		(void)h->f->C_CloseSession(*s);
		*s = CK_INVALID_HANDLE;
	}
	return r;
}

nhi_err nhi_hsm_open(const struct nhi_hsm_config *cfg, struct nhi_hsm **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_hsm *h = NULL;
	const char *path;
	CK_SESSION_HANDLE s;
	const char *step = "C_OpenSession";
	unsigned want, i;
	CK_RV r;

	*out = NULL;
	want = cfg->sessions ? cfg->sessions : NHI_HSM_SESSIONS_DEFAULT;
	NHI_CHECK(want <= NHI_HSM_SESSIONS_MAX, NHI_ERR_CONFIG, "%u HSM sessions requested, at most %d allowed",
		  want, NHI_HSM_SESSIONS_MAX);
	h = calloc(1, sizeof(*h));
	NHI_CHECK(h != NULL, NHI_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	h->pin.secret = true;
	if (cfg->pin_file != NULL)
		NHI_TRY(nhi_secret_file_read(cfg->pin_file, NHI_PIN_FILE_MAX_BYTES, &h->pin));
	else if (cfg->pin != NULL && cfg->pin->len > 0)
		NHI_TRY(nhi_buf_append(&h->pin, cfg->pin->data, cfg->pin->len));
	path = cfg->module_path ? cfg->module_path : NHI_SOFTHSM2_MODULE_PATH;
	h->f = load_module(path, &h->initialized);
	NHI_CHECK(h->f != NULL, NHI_ERR_CONFIG, "%s", nhi_err_detail());
	NHI_TRY(find_slot(h->f, cfg->token, &h->slot, h->desc, sizeof(h->desc)));
	for (i = 0; i < want; i++) {
		r = open_session(h, &s, &step);
		if (r != CKR_OK) {
			rv = nhi_hsm_fail(r, step);
			nhi_err_wrap(rv, "%s", h->desc);
			goto out;
		}
		h->free_sessions[h->n_free++] = s;
		h->n_sessions++;
	}
	h->n_target = want;
	*out = h;
	h = NULL;
	rv = NHI_OK;
out:
	nhi_hsm_free(h);
	return rv;
}

void nhi_hsm_free(struct nhi_hsm *h)
{
	unsigned i;

	if (h == NULL)
		return;
	if (h->f != NULL) {
		if (h->keeper != CK_INVALID_HANDLE)
			(void)h->f->C_CloseSession(h->keeper); /* and the session-object copies with it */
		if (h->n_free > 0 && h->pin.len > 0)
			(void)h->f->C_Logout(h->free_sessions[0]);
		for (i = 0; i < h->n_free; i++)
			(void)h->f->C_CloseSession(h->free_sessions[i]);
		unload_module(h->f, h->initialized);
	}
	nhi_buf_free(&h->pin);
	pthread_mutex_destroy(&h->mu);
	pthread_cond_destroy(&h->cv);
	free(h);
}

const char *nhi_hsm_token_desc(const struct nhi_hsm *h)
{
	return h->desc;
}

CK_FUNCTION_LIST *nhi_hsm_raw_functions(struct nhi_hsm *h, CK_SLOT_ID *slot)
{
	*slot = h->slot;
	return h->f;
}

void nhi_hsm_get_stats(const struct nhi_hsm *h, struct nhi_hsm_stats *o)
{
	o->signs = atomic_load(&h->signs);
	o->verifies = atomic_load(&h->verifies);
	o->wraps = atomic_load(&h->wraps);
	o->unwraps = atomic_load(&h->unwraps);
	o->crypts = atomic_load(&h->crypts);
	o->recoveries = atomic_load(&h->recoveries);
	o->errors = atomic_load(&h->errors);
	o->cached_signs = atomic_load(&h->cached_signs);
}

#ifdef NHI_TEST_BUILD
void nhi_hsm_testing_close_all(struct nhi_hsm *h)
{
	(void)h->f->C_CloseAllSessions(h->slot);
}
#endif

/* ---- the session pool ------------------------------------------------------- */

static nhi_err acquire(struct nhi_hsm *h, CK_SESSION_HANDLE *s)
{
	struct timespec deadline;
	int e = 0;
	CK_RV r;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += NHI_HSM_SESSION_WAIT_MS / 1000;
	pthread_mutex_lock(&h->mu);
	while (h->n_free == 0 && h->n_sessions >= h->n_target && e != ETIMEDOUT)
		e = pthread_cond_timedwait(&h->cv, &h->mu, &deadline);
	if (h->n_free > 0) {
		*s = h->free_sessions[--h->n_free];
		pthread_mutex_unlock(&h->mu);
		return NHI_OK;
	}
	if (h->n_sessions < h->n_target) {
		/* a session was lost earlier: refill the pool now */
		h->n_sessions++;
		pthread_mutex_unlock(&h->mu);
		r = open_session(h, s, NULL);
		if (r == CKR_OK)
			return NHI_OK;
		pthread_mutex_lock(&h->mu);
		h->n_sessions--;
		pthread_mutex_unlock(&h->mu);
		return nhi_hsm_fail(r, "reopening an HSM session");
	}
	pthread_mutex_unlock(&h->mu);
	return nhi_err_set(NHI_ERR_LIMIT, "no HSM session free after %d ms (%u in the pool): raise hsm sessions",
			   NHI_HSM_SESSION_WAIT_MS, h->n_sessions);
}

static void release(struct nhi_hsm *h, CK_SESSION_HANDLE s)
{
	pthread_mutex_lock(&h->mu);
	if (s != CK_INVALID_HANDLE)
		h->free_sessions[h->n_free++] = s;
	else
		h->n_sessions--; /* lost: the next acquire refills it */
	pthread_cond_signal(&h->cv);
	pthread_mutex_unlock(&h->mu);
}

static bool recoverable(CK_RV r)
{
	return r == CKR_SESSION_HANDLE_INVALID || r == CKR_SESSION_CLOSED || r == CKR_USER_NOT_LOGGED_IN ||
	       r == CKR_DEVICE_REMOVED || r == CKR_TOKEN_NOT_PRESENT;
}

/*
 * The one object of class `cls` labelled `label` (and, when id_len > 0, with that
 * CKA_ID). CKR_OK with *out = CK_INVALID_HANDLE when there is none; CKR_GENERAL_ERROR
 * when there are several (ambiguous: reported by the caller).
 */
static CK_RV find_one(struct nhi_hsm *h, CK_SESSION_HANDLE s, const char *label, CK_OBJECT_CLASS cls,
		      const uint8_t *id, size_t id_len, CK_OBJECT_HANDLE *out)
{
	CK_ATTRIBUTE t[] = {
		{CKA_LABEL, (void *)label, strlen(label)},
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_ID, (void *)id, id_len},
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG n = 0;
	CK_RV r;

	*out = CK_INVALID_HANDLE;
	r = h->f->C_FindObjectsInit(s, t, id_len > 0 ? 3 : 2);
	if (r != CKR_OK)
		return r;
	r = h->f->C_FindObjects(s, found, 2, &n);
	(void)h->f->C_FindObjectsFinal(s);
	if (r != CKR_OK)
		return r;
	if (n == 1)
		*out = found[0];
	else if (n > 1)
		return CKR_GENERAL_ERROR;
	return CKR_OK;
}

static CK_RV refresh_handles(struct nhi_hsm *h, CK_SESSION_HANDLE s, struct nhi_hsm_key *k)
{
	CK_OBJECT_HANDLE o;
	CK_RV r;

	if (k == NULL || k->session_object)
		return CKR_OK;
	/* a reset token took the session-object copy with it: sign with the token object */
	atomic_store(&k->fast, CK_INVALID_HANDLE);
	r = find_one(h, s, k->label, k->kind == NHI_KEY_AES256 ? CKO_SECRET_KEY : CKO_PRIVATE_KEY, k->id,
		     k->id_len, &o);
	if (r != CKR_OK)
		return r;
	if (o != CK_INVALID_HANDLE)
		atomic_store(&k->priv, o);
	if (k->kind != NHI_KEY_AES256) {
		r = find_one(h, s, k->label, CKO_PUBLIC_KEY, k->id, k->id_len, &o);
		if (r == CKR_OK)
			atomic_store(&k->pub, o);
	}
	return CKR_OK;
}

nhi_err nhi_hsm_run(struct nhi_hsm *h, const char *what, const struct nhi_hsm_key *key, nhi_hsm_op op,
		    void *ctx)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	bool borrowed = false;
	CK_RV r;

	NHI_TRY(acquire(h, &s));
	borrowed = true;
	r = op(h, s, ctx);
	if (recoverable(r)) {
		/* the token was reset or logged us out under our feet: one fresh session,
		 * one new login, handles looked up again, one more try */
		atomic_fetch_add(&h->recoveries, 1);
		(void)h->f->C_CloseSession(s);
		r = open_session(h, &s, NULL);
		if (r == CKR_OK)
			r = refresh_handles(h, s, (struct nhi_hsm_key *)key);
		if (r == CKR_OK)
			r = op(h, s, ctx);
		else
			s = CK_INVALID_HANDLE;
		if (r != CKR_OK && recoverable(r)) {
			rv = nhi_hsm_fail(r, what);
			nhi_err_wrap(rv, "HSM session lost and recovery failed once (%s)", h->desc);
			atomic_fetch_add(&h->errors, 1);
			goto out;
		}
	}
	if (r != CKR_OK) {
		atomic_fetch_add(&h->errors, 1);
		rv = nhi_hsm_fail(r, what);
		goto out;
	}
	rv = NHI_OK;
out:
	if (borrowed)
		release(h, s);
	return rv;
}

/* ---- token initialisation --------------------------------------------------- */

nhi_err nhi_hsm_init_token(const char *module_path, const char *label, const char *so_pin_file,
			   const char *user_pin_file)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct nhi_buf so = {.secret = true}, user = {.secret = true};
	CK_FUNCTION_LIST *f = NULL;
	bool initialized = false;
	CK_SLOT_ID slots[64], slot = 0;
	CK_ULONG n = 64, i;
	CK_TOKEN_INFO ti;
	CK_UTF8CHAR padded[32];
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	char existing[33];
	bool have_slot = false;
	CK_RV r;

	NHI_CHECK(label != NULL && label[0] != '\0' && strlen(label) <= 32, NHI_ERR_ARG,
		  "token label must be 1 to 32 bytes");
	NHI_TRY(nhi_secret_file_read(so_pin_file, NHI_PIN_FILE_MAX_BYTES, &so));
	NHI_TRY(nhi_secret_file_read(user_pin_file, NHI_PIN_FILE_MAX_BYTES, &user));
	f = load_module(module_path ? module_path : NHI_SOFTHSM2_MODULE_PATH, &initialized);
	NHI_CHECK(f != NULL, NHI_ERR_CONFIG, "%s", nhi_err_detail());
	r = f->C_GetSlotList(CK_TRUE, slots, &n);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_GetSlotList"), "C_GetSlotList: %s", nhi_hsm_rv_name(r));
	for (i = 0; i < n; i++) {
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		if (ti.flags & CKF_TOKEN_INITIALIZED) {
			token_label(&ti, existing);
			NHI_CHECK(strcmp(existing, label) != 0, NHI_ERR_EXISTS,
				  "a token labelled '%s' already exists: refusing to initialise another", label);
		} else if (!have_slot) {
			slot = slots[i];
			have_slot = true;
		}
	}
	NHI_CHECK(have_slot, NHI_ERR_NOT_FOUND, "the PKCS#11 module offers no uninitialised slot");
	memset(padded, ' ', sizeof(padded));
	memcpy(padded, label, strlen(label));
	r = f->C_InitToken(slot, so.data, so.len, padded);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_InitToken"), "C_InitToken: %s", nhi_hsm_rv_name(r));
	/* SoftHSM moves the new token to a fresh slot id: find it by label */
	n = 64;
	r = f->C_GetSlotList(CK_TRUE, slots, &n);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_GetSlotList"), "C_GetSlotList: %s", nhi_hsm_rv_name(r));
	have_slot = false;
	for (i = 0; i < n && !have_slot; i++) {
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
			continue;
		token_label(&ti, existing);
		if (strcmp(existing, label) == 0) {
			slot = slots[i];
			have_slot = true;
		}
	}
	NHI_CHECK(have_slot, NHI_ERR_HSM, "token '%s' vanished after C_InitToken", label);
	r = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_OpenSession"), "C_OpenSession: %s", nhi_hsm_rv_name(r));
	r = f->C_Login(s, CKU_SO, so.data, so.len);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_Login(SO)"), "C_Login(SO): %s", nhi_hsm_rv_name(r));
	r = f->C_InitPIN(s, user.data, user.len);
	NHI_CHECK(r == CKR_OK, nhi_hsm_fail(r, "C_InitPIN"), "C_InitPIN: %s", nhi_hsm_rv_name(r));
	(void)f->C_Logout(s);
	rv = NHI_OK;
out:
	if (s != CK_INVALID_HANDLE)
		(void)f->C_CloseSession(s);
	unload_module(f, initialized);
	nhi_buf_free(&so);
	nhi_buf_free(&user);
	return rv;
}

/* ---- keys ------------------------------------------------------------------- */

struct label_ctx {
	const char *label;
	CK_ULONG count;
};

static CK_RV op_count_label(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct label_ctx *c = vctx;
	CK_ATTRIBUTE t[] = {{CKA_LABEL, (void *)c->label, strlen(c->label)}};
	CK_OBJECT_HANDLE found[4];
	CK_RV r;

	r = h->f->C_FindObjectsInit(s, t, 1);
	if (r != CKR_OK)
		return r;
	r = h->f->C_FindObjects(s, found, 4, &c->count);
	(void)h->f->C_FindObjectsFinal(s);
	return r;
}

static CK_RV op_destroy_label(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct label_ctx *c = vctx;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE t[] = {{CKA_LABEL, (void *)c->label, strlen(c->label)}, {CKA_TOKEN, &yes, sizeof(yes)}};
	CK_OBJECT_HANDLE found[16];
	CK_ULONG n = 0, i;
	CK_RV r;

	r = h->f->C_FindObjectsInit(s, t, 2);
	if (r != CKR_OK)
		return r;
	r = h->f->C_FindObjects(s, found, 16, &n);
	(void)h->f->C_FindObjectsFinal(s);
	for (i = 0; r == CKR_OK && i < n; i++) {
		r = h->f->C_DestroyObject(s, found[i]);
		if (r == CKR_OK)
			c->count++;
	}
	return r;
}

static nhi_err check_label(const char *label)
{
	if (label == NULL || label[0] == '\0' || strlen(label) > NHI_HSM_LABEL_MAX_BYTES)
		return nhi_err_set(NHI_ERR_ARG, "key label must be 1 to %d bytes", NHI_HSM_LABEL_MAX_BYTES);
	return NHI_OK;
}

nhi_err nhi_hsm_label_exists(struct nhi_hsm *h, const char *label)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct label_ctx c = {label, 0};

	NHI_TRY(check_label(label));
	NHI_TRY(nhi_hsm_run(h, "C_FindObjects", NULL, op_count_label, &c));
	NHI_CHECK(c.count > 0, NHI_ERR_NOT_FOUND, "no object labelled '%s' in %s", label, h->desc);
	rv = NHI_OK;
out:
	return rv;
}

struct find_ctx {
	struct nhi_hsm_key *k;
	const char *refused; /* why the object under the label is not a key nhid can use */
};

/* CKA_EC_PARAMS forms nhid accepts: its own OIDs, and RFC 8410's name as PKCS#11 3.0
 * also allows for Ed25519 (PrintableString "edwards25519", as pkcs11-tool writes it) */
static bool ec_params_ok(enum nhi_key_kind kind, const uint8_t *p, CK_ULONG len)
{
	static const uint8_t ed25519_name[] = {0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'};

	if (kind == NHI_KEY_EC_P256)
		return len == sizeof(nhi_hsm_oid_p256) && memcmp(p, nhi_hsm_oid_p256, len) == 0;
	return (len == sizeof(oid_ed25519) && memcmp(p, oid_ed25519, len) == 0) ||
	       (len == sizeof(ed25519_name) && memcmp(p, ed25519_name, len) == 0);
}

#define KEY_ID_TEXT_(n) #n
#define KEY_ID_TEXT(n) KEY_ID_TEXT_(n)
#define KEY_ID_MAX_TEXT KEY_ID_TEXT(NHI_HSM_KEY_ID_MAX_BYTES)

static CK_RV op_find(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct find_ctx *c = vctx;
	struct nhi_hsm_key *k = c->k;
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE, sec = CK_INVALID_HANDLE, pub = CK_INVALID_HANDLE;
	CK_KEY_TYPE kt = 0;
	uint8_t params[64];
	CK_ATTRIBUTE a[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_ID, k->id, sizeof(k->id)}};
	CK_ATTRIBUTE pa = {CKA_EC_PARAMS, params, sizeof(params)};
	CK_RV r;

	r = find_one(h, s, k->label, CKO_PRIVATE_KEY, NULL, 0, &o);
	if (r == CKR_OK)
		r = find_one(h, s, k->label, CKO_SECRET_KEY, NULL, 0, &sec);
	if (r == CKR_GENERAL_ERROR || (o != CK_INVALID_HANDLE && sec != CK_INVALID_HANDLE)) {
		c->refused = "several private/secret keys carry this label: labels must be unique";
		return CKR_GENERAL_ERROR;
	}
	if (o == CK_INVALID_HANDLE)
		o = sec;
	if (r != CKR_OK || o == CK_INVALID_HANDLE)
		return r;
	r = h->f->C_GetAttributeValue(s, o, a, 2);
	if (r == CKR_BUFFER_TOO_SMALL) { /* the key type always fits: it is the CKA_ID */
		c->refused = "its CKA_ID is longer than " KEY_ID_MAX_TEXT " bytes: give the key a shorter one";
		return CKR_GENERAL_ERROR;
	}
	if (r != CKR_OK)
		return r;
	k->id_len = a[1].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[1].ulValueLen;
	if (kt == CKK_EC) {
		k->kind = NHI_KEY_EC_P256;
	} else if (kt == CKK_EC_EDWARDS) {
		k->kind = NHI_KEY_ED25519;
	} else if (kt == CKK_AES) {
		k->kind = NHI_KEY_AES256;
	} else {
		c->refused = "its key type is not EC, EdDSA or AES";
		return CKR_KEY_TYPE_INCONSISTENT;
	}
	if (k->kind != NHI_KEY_AES256) {
		/* the curve decides the signature size: a P-384 key is not a P-256 one */
		r = h->f->C_GetAttributeValue(s, o, &pa, 1);
		if (r != CKR_OK && r != CKR_BUFFER_TOO_SMALL)
			return r;
		if (r == CKR_BUFFER_TOO_SMALL || !ec_params_ok(k->kind, params, pa.ulValueLen)) {
			c->refused = k->kind == NHI_KEY_EC_P256 ? "it is an EC key on a curve other than P-256"
								: "it is an EdDSA key on a curve other than Ed25519";
			return CKR_CURVE_NOT_SUPPORTED;
		}
		/* the public half is the one of the same key pair (CKA_ID), not any object with the label */
		r = find_one(h, s, k->label, CKO_PUBLIC_KEY, k->id, k->id_len, &pub);
		if (r == CKR_GENERAL_ERROR)
			c->refused = "several public keys with its label and CKA_ID are in the token";
		if (r != CKR_OK)
			return r;
	}
	atomic_store(&k->priv, o);
	atomic_store(&k->pub, pub);
	return CKR_OK;
}

static struct nhi_hsm_key *key_new(enum nhi_key_kind kind, const char *label)
{
	struct nhi_hsm_key *k = calloc(1, sizeof(*k));

	if (k == NULL)
		return NULL;
	k->kind = kind;
	if (label != NULL)
		snprintf(k->label, sizeof(k->label), "%s", label);
	atomic_init(&k->priv, CK_INVALID_HANDLE);
	atomic_init(&k->pub, CK_INVALID_HANDLE);
	atomic_init(&k->fast, CK_INVALID_HANDLE);
	return k;
}

nhi_err nhi_hsm_key_cache(struct nhi_hsm *h, struct nhi_hsm_key *key, bool *cached)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	CK_BBOOL no = CK_FALSE;
	/* not a token object, and no label: never found by a label lookup, never listed */
	CK_ATTRIBUTE t[] = {{CKA_TOKEN, &no, sizeof(no)}, {CKA_LABEL, (void *)"", 0}};
	CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
	CK_RV r = CKR_OK;

	*cached = false;
	NHI_CHECK(key->kind == NHI_KEY_EC_P256 || key->kind == NHI_KEY_ED25519, NHI_ERR_ARG,
		  "key '%s': only signing keys are cached", key->label);
	if (atomic_load(&key->fast) != CK_INVALID_HANDLE)
		return (*cached = true, NHI_OK);
	pthread_mutex_lock(&h->mu);
	if (h->keeper == CK_INVALID_HANDLE)
		r = open_session(h, &h->keeper, NULL);
	if (r == CKR_OK)
		r = h->f->C_CopyObject(h->keeper, atomic_load(&key->priv), t, 2, &copy);
	if (recoverable(r)) { /* the keeper died with a token reset: one new one */
		(void)h->f->C_CloseSession(h->keeper);
		h->keeper = CK_INVALID_HANDLE;
		r = open_session(h, &h->keeper, NULL);
		if (r == CKR_OK)
			r = h->f->C_CopyObject(h->keeper, atomic_load(&key->priv), t, 2, &copy);
	}
	pthread_mutex_unlock(&h->mu);
	if (r != CKR_OK) {
		/* a policy, not a failure: signing goes on with the token object */
		rv = NHI_OK;
		goto out;
	}
	atomic_store(&key->fast, copy);
	key->cache_owner = h;
	*cached = true;
	rv = NHI_OK;
out:
	return rv;
}

nhi_err nhi_hsm_find(struct nhi_hsm *h, const char *label, struct nhi_hsm_key **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct find_ctx c = {0};

	*out = NULL;
	NHI_TRY(check_label(label));
	c.k = key_new(0, label);
	NHI_CHECK(c.k != NULL, NHI_ERR_NOMEM, "out of memory");
	rv = nhi_hsm_run(h, "finding a key", NULL, op_find, &c);
	if (c.refused != NULL) {
		rv = nhi_err_wrap(NHI_ERR_CONFIG, "key '%s' in %s cannot be used: %s", label, h->desc, c.refused);
		goto out;
	}
	if (rv != NHI_OK)
		goto out;
	NHI_CHECK(atomic_load(&c.k->priv) != CK_INVALID_HANDLE, NHI_ERR_NOT_FOUND,
		  "no key labelled '%s' in %s", label, h->desc);
	*out = c.k;
	c.k = NULL;
	rv = NHI_OK;
out:
	nhi_hsm_key_free(c.k);
	return rv;
}

struct gen_ctx {
	struct nhi_hsm_key *k;
};

static CK_RV op_generate(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct gen_ctx *c = vctx;
	struct nhi_hsm_key *k = c->k;
	CK_ULONG label_len = strlen(k->label);
	CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
	CK_MECHANISM mech = {0, NULL, 0};
	CK_ULONG aes_len = 32;
	CK_RV r;

	r = h->f->C_GenerateRandom(s, k->id, 16);
	if (r != CKR_OK)
		return r;
	k->id_len = 16;
	if (k->kind == NHI_KEY_AES256) {
		CK_ATTRIBUTE t[] = {
			{CKA_TOKEN, (void *)&ck_true, 1},      {CKA_PRIVATE, (void *)&ck_true, 1},
			{CKA_SENSITIVE, (void *)&ck_true, 1},  {CKA_EXTRACTABLE, (void *)&ck_false, 1},
			{CKA_WRAP, (void *)&ck_true, 1},       {CKA_UNWRAP, (void *)&ck_true, 1},
			{CKA_ENCRYPT, (void *)&ck_false, 1},   {CKA_DECRYPT, (void *)&ck_false, 1},
			{CKA_VALUE_LEN, &aes_len, sizeof(aes_len)}, {CKA_LABEL, k->label, label_len},
			{CKA_ID, k->id, k->id_len},
		};
		mech.mechanism = CKM_AES_KEY_GEN;
		r = h->f->C_GenerateKey(s, &mech, t, sizeof(t) / sizeof(t[0]), &priv);
	} else {
		bool ec = k->kind == NHI_KEY_EC_P256;
		CK_ATTRIBUTE pt[] = {
			{CKA_TOKEN, (void *)&ck_true, 1},
			{CKA_PRIVATE, (void *)&ck_false, 1},
			{CKA_VERIFY, (void *)&ck_true, 1},
			{CKA_EC_PARAMS, (void *)(ec ? nhi_hsm_oid_p256 : oid_ed25519), ec ? sizeof(nhi_hsm_oid_p256) : sizeof(oid_ed25519)},
			{CKA_LABEL, k->label, label_len},
			{CKA_ID, k->id, k->id_len},
		};
		CK_ATTRIBUTE st[] = {
			{CKA_TOKEN, (void *)&ck_true, 1},     {CKA_PRIVATE, (void *)&ck_true, 1},
			{CKA_SENSITIVE, (void *)&ck_true, 1}, {CKA_EXTRACTABLE, (void *)&ck_false, 1},
			{CKA_SIGN, (void *)&ck_true, 1},      {CKA_DERIVE, (void *)&ck_false, 1},
			{CKA_LABEL, k->label, label_len},     {CKA_ID, k->id, k->id_len},
		};
		mech.mechanism = ec ? CKM_EC_KEY_PAIR_GEN : CKM_EC_EDWARDS_KEY_PAIR_GEN;
		r = h->f->C_GenerateKeyPair(s, &mech, pt, sizeof(pt) / sizeof(pt[0]), st,
					    sizeof(st) / sizeof(st[0]), &pub, &priv);
	}
	if (r == CKR_OK) {
		atomic_store(&k->priv, priv);
		atomic_store(&k->pub, pub);
	}
	return r;
}

nhi_err nhi_hsm_generate(struct nhi_hsm *h, enum nhi_key_kind kind, const char *label,
			 struct nhi_hsm_key **out)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct gen_ctx c = {0};
	nhi_err ex;

	*out = NULL;
	NHI_TRY(check_label(label));
	NHI_CHECK(kind == NHI_KEY_EC_P256 || kind == NHI_KEY_ED25519 || kind == NHI_KEY_AES256, NHI_ERR_ARG,
		  "unknown key kind %d", (int)kind);
	ex = nhi_hsm_label_exists(h, label);
	NHI_CHECK(ex != NHI_OK, NHI_ERR_EXISTS,
		  "a key labelled '%s' already exists in %s: refusing to create another", label, h->desc);
	NHI_CHECK(ex == NHI_ERR_NOT_FOUND, ex, "%s", nhi_err_detail());
	c.k = key_new(kind, label);
	NHI_CHECK(c.k != NULL, NHI_ERR_NOMEM, "out of memory");
	NHI_TRY(nhi_hsm_run(h, kind == NHI_KEY_AES256 ? "C_GenerateKey" : "C_GenerateKeyPair", NULL,
			    op_generate, &c));
	*out = c.k;
	c.k = NULL;
	rv = NHI_OK;
out:
	nhi_hsm_key_free(c.k);
	return rv;
}

static CK_RV op_destroy(struct nhi_hsm *h, CK_SESSION_HANDLE s, void *vctx)
{
	struct nhi_hsm_key *k = vctx;
	CK_OBJECT_HANDLE pub = atomic_load(&k->pub), priv = atomic_load(&k->priv);
	CK_RV r = CKR_OK;

	if (pub != CK_INVALID_HANDLE)
		r = h->f->C_DestroyObject(s, pub);
	if (r == CKR_OK && priv != CK_INVALID_HANDLE)
		r = h->f->C_DestroyObject(s, priv);
	if (r == CKR_OK) {
		atomic_store(&k->pub, CK_INVALID_HANDLE);
		atomic_store(&k->priv, CK_INVALID_HANDLE);
	}
	return r;
}

nhi_err nhi_hsm_destroy_label(struct nhi_hsm *h, const char *label, unsigned *n)
{
	nhi_err rv = NHI_ERR_INTERNAL;
	struct label_ctx c = {label, 0};

	*n = 0;
	NHI_TRY(check_label(label));
	rv = nhi_hsm_run(h, "C_DestroyObject", NULL, op_destroy_label, &c);
	*n = (unsigned)c.count;
out:
	return rv;
}

nhi_err nhi_hsm_destroy(struct nhi_hsm *h, struct nhi_hsm_key *key)
{
	return nhi_hsm_run(h, "C_DestroyObject", key, op_destroy, key);
}

void nhi_hsm_key_free(struct nhi_hsm_key *key)
{
	struct nhi_hsm *h;
	CK_OBJECT_HANDLE fast;

	if (key == NULL)
		return;
	h = key->cache_owner;
	fast = atomic_load(&key->fast);
	if (h != NULL && fast != CK_INVALID_HANDLE) {
		pthread_mutex_lock(&h->mu);
		if (h->keeper != CK_INVALID_HANDLE)
			(void)h->f->C_DestroyObject(h->keeper, fast);
		pthread_mutex_unlock(&h->mu);
	}
	free(key);
}

enum nhi_key_kind nhi_hsm_key_kind(const struct nhi_hsm_key *key)
{
	return key->kind;
}

const char *nhi_hsm_key_label(const struct nhi_hsm_key *key)
{
	return key->label;
}

CK_OBJECT_HANDLE nhi_hsm_key_handle(const struct nhi_hsm_key *key)
{
	return atomic_load(&((struct nhi_hsm_key *)key)->priv);
}

struct nhi_hsm_key *nhi_hsm_key_new_internal(enum nhi_key_kind kind, const char *label)
{
	return key_new(kind, label);
}
