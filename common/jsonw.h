/*
 * common/jsonw.h — JSON text written straight into a buffer, for the few documents
 * nhid writes on every request (token claims, the token reply, flat audit records),
 * where building a jansson tree only to dump it cost more than the rest of the work
 * (docs/architecture.md "Per-request costs"). Output is byte for byte what
 * jansson's json_dumps(JSON_COMPACT | JSON_ENSURE_ASCII) writes for the same values
 * (tests/fuzz/jsonw.c holds the two to it), so a reader cannot tell them apart.
 * Reading JSON stays jansson's job.
 */
#ifndef NHI_JSONW_H
#define NHI_JSONW_H

#include "limits.h"
#include "nhi.h"

/*
 * Append `n` bytes of UTF-8 as a JSON string ("...", escaped, non-ASCII as \uXXXX).
 * NHI_ERR_ARG when the bytes are not valid UTF-8 (as jansson refuses them: overlong
 * forms, surrogates, beyond U+10FFFF); then `b` is as it was.
 */
nhi_err nhi_jsonw_str(struct nhi_buf *b, const char *s, size_t n) NHI_MUST_CHECK;
/* true when the n bytes are UTF-8 as nhi_jsonw_str (and jansson) accept it */
bool nhi_jsonw_utf8_valid(const char *s, size_t n);

/*
 * An object written member by member. Errors are sticky: after the first one every
 * call does nothing, and nhi_jsonw_end returns it with the buffer cut back to where
 * nhi_jsonw_begin found it; a value that is not UTF-8 is NHI_ERR_ARG naming its
 * member ("member 'sub' is not valid UTF-8", "element 1 of 'roles' ..."); unbalanced
 * or mismatched opens and closes are NHI_ERR_INTERNAL. Names are written escaped like
 * any string. The writers return nothing on purpose: one check, at the end.
 *
 *   struct nhi_jsonw o;
 *   nhi_jsonw_begin(&o, &buf);
 *   nhi_jsonw_s(&o, "sub", id);  nhi_jsonw_i(&o, "exp", exp);
 *   NHI_TRY(nhi_jsonw_end(&o));
 */
struct nhi_jsonw {
	struct nhi_buf *b;
	size_t start;     /* b->len at begin */
	unsigned members; /* of the innermost open object or array */
	unsigned depth;
	unsigned counts[NHI_JSONW_DEPTH_MAX];         /* members of the enclosing levels */
	bool arrays[NHI_JSONW_DEPTH_MAX];             /* each open level: an array, or an object */
	const char *names[NHI_JSONW_DEPTH_MAX + 1];   /* [0] NULL, then each open level's name: for errors */
	nhi_err err;
};
void nhi_jsonw_begin(struct nhi_jsonw *o, struct nhi_buf *b);
void nhi_jsonw_s(struct nhi_jsonw *o, const char *name, const char *value);  /* NUL-terminated value */
void nhi_jsonw_i(struct nhi_jsonw *o, const char *name, long long value);
/* a nested object or array member; closed by nhi_jsonw_close of the same kind (at most
 * NHI_JSONW_DEPTH_MAX open at once inside the top object) */
void nhi_jsonw_open(struct nhi_jsonw *o, const char *name, bool array);
void nhi_jsonw_close(struct nhi_jsonw *o, bool array);
/* an array element (inside nhi_jsonw_open(..., true)) */
void nhi_jsonw_elem_s(struct nhi_jsonw *o, const char *value);
/* a member whose value is `n` bytes of JSON text written as they are: only for text
 * a JSON writer has just produced (jansson's dump of an agent's attributes), never for
 * stored or received text */
void nhi_jsonw_raw(struct nhi_jsonw *o, const char *name, const char *json, size_t n);
/* closes the top object; NHI_OK, or the first error with the buffer restored */
nhi_err nhi_jsonw_end(struct nhi_jsonw *o) NHI_MUST_CHECK;

#endif
