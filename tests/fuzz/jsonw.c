/*
 * tests/fuzz/jsonw.c — the JSON writer (common/jsonw.h) against jansson, on any
 * bytes. For every input: the writer refuses exactly what jansson refuses as a
 * string (not UTF-8), and otherwise writes exactly jansson's bytes
 * (JSON_COMPACT | JSON_ENSURE_ASCII), which jansson reads back as the input; an
 * object made of the input's two halves (name, value, an integer, an array) is the
 * same document jansson dumps. Any difference aborts.
 */
#include "../../common/jsonw.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define FLAGS (JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY)

static void same_as_jansson(const struct nhi_buf *b, json_t *v)
{
	char *want = v != NULL ? json_dumps(v, FLAGS) : NULL;

	if (want == NULL || strlen(want) != b->len || memcmp(want, b->data, b->len) != 0)
		abort();
	free(want);
}

static void one_string(const uint8_t *data, size_t size)
{
	struct nhi_buf b = {0};
	json_t *want = json_stringn((const char *)data, size), *back;
	nhi_err e = nhi_jsonw_str(&b, (const char *)data, size);

	if ((want == NULL) != (e != NHI_OK) || (want == NULL) == nhi_jsonw_utf8_valid((const char *)data, size))
		abort(); /* one accepted what the other refused */
	if (e != NHI_OK) {
		if (b.len != 0)
			abort(); /* a refusal leaves the buffer as it was */
	} else {
		same_as_jansson(&b, want);
		back = json_loadb((const char *)b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		if (back == NULL || !json_is_string(back) || json_string_length(back) != size ||
		    memcmp(json_string_value(back), data, size) != 0)
			abort();
		json_decref(back);
	}
	json_decref(want);
	nhi_buf_free(&b);
}

/* {"<name>":"<value>","n":<size>,"a":["<value>","<name>"],"o":{"<name>":<-size>}} */
static void one_object(const uint8_t *data, size_t size)
{
	size_t half = size / 2;
	char *name = strndup((const char *)data, half), *value = strndup((const char *)data + half, size - half);
	struct nhi_buf b = {0};
	struct nhi_jsonw o;
	json_t *want = NULL;
	nhi_err e;

	/* the writer keeps what was there before */
	if (name == NULL || value == NULL || nhi_buf_append(&b, "x", 1) != NHI_OK)
		goto out;
	nhi_jsonw_begin(&o, &b);
	nhi_jsonw_s(&o, name, value);
	nhi_jsonw_i(&o, "n", (long long)size);
	nhi_jsonw_open(&o, "a", true);
	nhi_jsonw_elem_s(&o, value);
	nhi_jsonw_elem_s(&o, name);
	nhi_jsonw_close(&o, true);
	nhi_jsonw_open(&o, "o", false);
	nhi_jsonw_i(&o, name, -(long long)size);
	nhi_jsonw_close(&o, false);
	e = nhi_jsonw_end(&o);
	/* jansson refuses names or values that are not UTF-8; duplicate names collapse */
	if (strcmp(name, "n") != 0 && strcmp(name, "a") != 0 && strcmp(name, "o") != 0)
		want = json_pack("{s:s, s:I, s:[s,s], s:{s:I}}", name, value, "n", (json_int_t)size, "a", value, name, "o", name,
				 -(json_int_t)size);
	if (e != NHI_OK) {
		if (b.len != 1 || b.data[0] != 'x')
			abort(); /* a failed object leaves nothing of itself */
		if (want != NULL)
			abort(); /* jansson took what the writer refused */
		goto out;
	}
	if (want != NULL) {
		struct nhi_buf tail = {.data = b.data + 1, .len = b.len - 1};

		same_as_jansson(&tail, want);
	} else {
		json_t *both = json_pack("{s:s, s:s}", "k", name, "v", value);

		if (both == NULL)
			abort(); /* the writer took what jansson refuses */
		json_decref(both);
	}
out:
	json_decref(want);
	nhi_buf_free(&b);
	free(name);
	free(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 65536)
		return 0;
	one_string(data, size);
	one_object(data, size);
	return 0;
}
