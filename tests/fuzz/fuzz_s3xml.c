/* fuzz_s3xml.c - S3 responses (s3.c): a ListObjectsV2 or
 * ListMultipartUploads listing (cbi_s3_parse_list) and an error document
 * (cbi_s3_parse_error), as a server, or whatever answers in its place,
 * sends them.
 *
 * Input: a control byte (bit 0: parse as a multipart-upload listing), then
 * the body. Every key parsed is NUL-terminated and non-empty; a truncated
 * listing always names where to go on. */
#include "fuzz.h"

#include "s3.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int uploads = data[0] & 1;
	/* a copy without a terminating NUL: the parser must stay inside len */
	size_t n = size - 1;
	char *x = malloc(n ? n : 1);
	if (!x)
		return 0;
	memcpy(x, data + 1, n);
	cbi_s3_obj *v = NULL;
	size_t nv = 0, cap = 0;
	int tr = 0;
	char next[1100], next2[300], code[128], msg[256];
	if (cbi_s3_parse_list(x, n, uploads, &v, &nv, &cap, &tr, next, sizeof next, next2, sizeof next2) == 0) {
		for (size_t i = 0; i < nv; i++)
			if (!v[i].key[0] || strnlen(v[i].key, sizeof v[i].key) == sizeof v[i].key)
				abort();
		if (tr && !next[0])
			abort();
	}
	free(v);
	cbi_s3_parse_error(x, n, code, sizeof code, msg, sizeof msg);
	if (strnlen(code, sizeof code) == sizeof code || strnlen(msg, sizeof msg) == sizeof msg)
		abort();
	free(x);
	return 0;
}
