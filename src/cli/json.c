/* json.c - streaming JSON writer with strict string escaping. */
#include "json.h"

#include <inttypes.h>
#include <math.h>

void json_init(struct json *j, FILE *f)
{
	j->f = f;
	j->depth = 0;
	j->has_items[0] = 0;
}

/* Length of the valid UTF-8 sequence at s, or 0 if it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static int utf8_len(const unsigned char *s)
{
	unsigned c = s[0];
	int n;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	for (int i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)  /* also stops at the terminating NUL */
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void json_write_string(FILE *f, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	putc('"', f);
	while (*s) {
		unsigned c = *s;
		int n;

		switch (c) {
		case '"':  fputs("\\\"", f); s++; continue;
		case '\\': fputs("\\\\", f); s++; continue;
		case '\b': fputs("\\b", f); s++; continue;
		case '\f': fputs("\\f", f); s++; continue;
		case '\n': fputs("\\n", f); s++; continue;
		case '\r': fputs("\\r", f); s++; continue;
		case '\t': fputs("\\t", f); s++; continue;
		}
		if (c < 0x20 || c == 0x7f) {
			fprintf(f, "\\u%04x", c);
			s++;
			continue;
		}
		n = utf8_len(s);
		if (n == 0) {
			fputs("\\ufffd", f);  /* not UTF-8: keep the output valid */
			s++;
			continue;
		}
		fwrite(s, 1, (size_t)n, f);
		s += n;
	}
	putc('"', f);
}

int json_compact;

static void indent(struct json *j)
{
	if (json_compact) {
		putc(' ', j->f);
		return;
	}
	putc('\n', j->f);
	for (int i = 0; i < j->depth; i++)
		fputs("  ", j->f);
}

/* Separator, indentation and key before a value. */
static void member(struct json *j, const char *key)
{
	if (j->depth > 0) {
		if (j->has_items[j->depth])
			putc(',', j->f);
		j->has_items[j->depth] = 1;
		indent(j);
	}
	if (key) {
		json_write_string(j->f, key);
		fputs(": ", j->f);
	}
}

static void open_container(struct json *j, const char *key, char c)
{
	member(j, key);
	putc(c, j->f);
	if (j->depth + 1 < JSON_MAX_DEPTH)
		j->depth++;
	j->has_items[j->depth] = 0;
}

static void close_container(struct json *j, char c)
{
	int had = j->has_items[j->depth];

	if (j->depth > 0)
		j->depth--;
	if (had)
		indent(j);
	putc(c, j->f);
}

void json_begin_object(struct json *j, const char *key) { open_container(j, key, '{'); }
void json_end_object(struct json *j) { close_container(j, '}'); }
void json_begin_array(struct json *j, const char *key) { open_container(j, key, '['); }
void json_end_array(struct json *j) { close_container(j, ']'); }

void json_string(struct json *j, const char *key, const char *s)
{
	member(j, key);
	if (s)
		json_write_string(j->f, s);
	else
		fputs("null", j->f);
}

void json_u64(struct json *j, const char *key, uint64_t v)
{
	member(j, key);
	fprintf(j->f, "%" PRIu64, v);
}

void json_i64(struct json *j, const char *key, int64_t v)
{
	member(j, key);
	fprintf(j->f, "%" PRId64, v);
}

void json_i64_string(struct json *j, const char *key, int64_t v)
{
	member(j, key);
	fprintf(j->f, "\"%" PRId64 "\"", v);
}

void json_double(struct json *j, const char *key, double v)
{
	member(j, key);
	if (isfinite(v))
		fprintf(j->f, "%.3f", v);
	else
		fputs("null", j->f);
}

void json_bool(struct json *j, const char *key, int v)
{
	member(j, key);
	fputs(v ? "true" : "false", j->f);
}

void json_null(struct json *j, const char *key)
{
	member(j, key);
	fputs("null", j->f);
}

int json_documents;

void json_finish(struct json *j)
{
	putc('\n', j->f);
	json_documents++;
}
