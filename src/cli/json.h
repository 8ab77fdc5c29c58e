/*
 * json.h - a small streaming JSON writer for the --json output of cbimg.
 *
 * Values are written in order; the writer adds commas, two-space indentation
 * and the final newline. Every string goes through json_write_string(), which
 * escapes quotes, backslashes and control characters and replaces bytes that
 * are not valid UTF-8 with U+FFFD, so the output is always valid JSON.
 *
 * Each value function takes a key: the member name inside an object, or NULL
 * for an array element or the top-level value.
 */
#ifndef CBIMG_CLI_JSON_H
#define CBIMG_CLI_JSON_H

#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 16

struct json {
	FILE *f;
	int depth;                            /* open containers */
	unsigned char has_items[JSON_MAX_DEPTH]; /* container at depth i has a member */
};

void json_init(struct json *j, FILE *f);

void json_begin_object(struct json *j, const char *key);
void json_end_object(struct json *j);
void json_begin_array(struct json *j, const char *key);
void json_end_array(struct json *j);

/* s == NULL writes null. */
void json_string(struct json *j, const char *key, const char *s);
void json_u64(struct json *j, const char *key, uint64_t v);
void json_i64(struct json *j, const char *key, int64_t v);
/* v as a string of decimal digits: for integers that may exceed 2^53, which
 * readers that hold numbers as doubles (jq 1.6) would round. */
void json_i64_string(struct json *j, const char *key, int64_t v);
/* Non-finite values are written as null. */
void json_double(struct json *j, const char *key, double v);
void json_bool(struct json *j, const char *key, int v);
void json_null(struct json *j, const char *key);

/* Ends the document with a newline (after the top-level value). */
void json_finish(struct json *j);

/* Non-zero: documents are written on one line each (members separated by
 * ", "), for JSON Lines (--json-progress). */
extern int json_compact;

/* Documents finished so far (by json_finish()) in this process. */
extern int json_documents;

/* s as a quoted, escaped JSON string. */
void json_write_string(FILE *f, const char *s);

#endif
