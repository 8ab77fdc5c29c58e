/* test_layout.c - the tables of fields that encode and decode the fixed
 * structures (format.h, "layouts") against format/SPEC.md's own tables, and
 * the reference vectors decoded and re-encoded byte for byte.
 *
 * SPEC.md is found next to the vectors: $CBIMG_VECTORS/../SPEC.md (make
 * check-unit sets CBIMG_VECTORS=<repo>/format/vectors). */
#include "testutil.h"

#include "format.h"
#include "badmap.h"
#include "keyfile.h"
#include "util.h"

static const cbi_layout *const layouts[] = {
	&cbi_hdr_layout, &cbi_img_trailer_layout, &cbi_idx_trailer_layout, &cbi_kf_layout, &cbi_badmap_tail_layout,
};
#define N_LAYOUTS (sizeof layouts / sizeof layouts[0])

/* Path of a file beside $CBIMG_VECTORS into out; 0 when unset. */
static int vec_path(const char *rel, char *out, size_t outsz)
{
	const char *vec = getenv("CBIMG_VECTORS");
	if (!vec || !*vec)
		return 0;
	return (size_t)snprintf(out, outsz, "%s/%s", vec, rel) < outsz;
}

/* The text of SPEC.md, NUL-terminated, or NULL (the test is skipped). */
static char *read_spec(void)
{
	char p[4096];
	if (!vec_path("../SPEC.md", p, sizeof p) || !tu_exists(p))
		return NULL;
	size_t n;
	uint8_t *b = tu_read_file(p, &n);
	char *s = realloc(b, n + 1);
	assert_non_null(s);
	s[n] = 0;
	return s;
}

/* Next line of *pos into line (without its newline); 0 at the end. */
static int next_line(const char **pos, char *line, size_t size)
{
	const char *p = *pos;
	if (!*p)
		return 0;
	const char *nl = strchr(p, '\n');
	size_t n = nl ? (size_t)(nl - p) : strlen(p);
	snprintf(line, size, "%.*s", (int)n, p);
	*pos = nl ? nl + 1 : p + n;
	return 1;
}

/* Cell k (1 = first) of a table row "| a | b | c |", trimmed and without
 * backquotes, into out. */
static void cell(const char *row, int k, char *out, size_t size)
{
	const char *p = row;
	for (int i = 0; i < k && p; i++) {
		p = strchr(p, '|');
		if (p)
			p++;
	}
	out[0] = 0;
	if (!p)
		return;
	const char *end = strchr(p, '|');
	size_t n = end ? (size_t)(end - p) : strlen(p), o = 0;
	for (size_t i = 0; i < n && o + 1 < size; i++)
		if (p[i] != '`')
			out[o++] = p[i];
	out[o] = 0;
	while (o && out[o - 1] == ' ')
		out[--o] = 0;
	size_t lead = strspn(out, " ");
	memmove(out, out + lead, strlen(out + lead) + 1);
}

/* Find the table of section in SPEC.md and check it row by row against l. */
static void check_against_spec(const char *spec, const cbi_layout *l)
{
	char line[2048], prev[2048] = "", want[256];
	const char *pos = spec;
	int found = 0;
	snprintf(want, sizeof want, "### %s", l->section);
	while (!found && next_line(&pos, line, sizeof line)) {
		/* "### Title", or "Title" underlined with dashes */
		if (!strcmp(line, want) || (!strcmp(prev, l->section) && !strncmp(line, "---", 3)))
			found = 1;
		snprintf(prev, sizeof prev, "%s", line);
	}
	if (!found)
		fail_msg("SPEC.md: no section '%s'", l->section);
	/* the first table after it must be the field table */
	found = 0;
	while (!found && next_line(&pos, line, sizeof line)) {
		if (!strncmp(line, "| Offset | Size | Field |", 25))
			found = 1;
		else if (line[0] == '#' || !strncmp(line, "---", 3))
			fail_msg("SPEC.md, '%s': no '| Offset | Size | Field |' table before the next heading",
				 l->section);
	}
	if (!found)
		fail_msg("SPEC.md, '%s': no field table", l->section);
	assert_true(next_line(&pos, line, sizeof line)); /* |---|---| */
	size_t i = 0;
	while (next_line(&pos, line, sizeof line) && line[0] == '|') {
		char off[64], size[64], name[256];
		cell(line, 1, off, sizeof off);
		cell(line, 2, size, sizeof size);
		cell(line, 3, name, sizeof name);
		if (i >= l->n)
			fail_msg("SPEC.md, '%s': row '%s' (offset %s) has no field in the code", l->section, name,
				 off);
		const cbi_field *f = &l->f[i++];
		char *e1, *e2;
		unsigned long o = strtoul(off, &e1, 10), z = strtoul(size, &e2, 10);
		if (*e1 || *e2 || o != f->off || z != f->size || strcmp(name, f->name))
			fail_msg("SPEC.md, '%s': row %zu is '%s' at %s, %s bytes; the code has '%s' at %u, %u bytes",
				 l->section, i, name, off, size, f->name, f->off, f->size);
	}
	if (i != l->n)
		fail_msg("SPEC.md, '%s': %zu rows, the code has %zu fields", l->section, i, l->n);
	print_message("%s: %zu fields as in SPEC.md\n", l->section, l->n);
}

static void test_tables_match_spec(void **state)
{
	(void)state;
	char *spec = read_spec();
	if (!spec) {
		print_message("skipped: $CBIMG_VECTORS/../SPEC.md not found (CBIMG_VECTORS=%s)\n",
			      getenv("CBIMG_VECTORS") ? getenv("CBIMG_VECTORS") : "(unset)");
		skip();
		return;
	}
	for (size_t k = 0; k < N_LAYOUTS; k++)
		check_against_spec(spec, layouts[k]);
	free(spec);
}

/* Every table covers its structure exactly: fields in order, without gaps
 * or overlaps; the offsets other code relies on are the table's. */
static void test_tables_consistent(void **state)
{
	(void)state;
	for (size_t k = 0; k < N_LAYOUTS; k++) {
		const cbi_layout *l = layouts[k];
		uint32_t at = 0;
		for (size_t i = 0; i < l->n; i++) {
			const cbi_field *f = &l->f[i];
			if (f->off != at)
				fail_msg("%s: field '%s' at %u, expected %u", l->section, f->name, f->off, at);
			if ((f->type == CBI_F_U32 || f->type == CBI_F_SIZE) && f->size != 4)
				fail_msg("%s: '%s' is a u32 of %u bytes", l->section, f->name, f->size);
			if ((f->type == CBI_F_U64 || f->type == CBI_F_XXH3) && f->size != 8)
				fail_msg("%s: '%s' is a u64 of %u bytes", l->section, f->name, f->size);
			at += f->size;
		}
		assert_int_equal(at, l->size);
		const cbi_field *m = cbi_layout_field(l, "magic");
		assert_non_null(m);
		assert_int_equal(m->off, 0);
	}
	assert_int_equal(cbi_hdr_layout.size, CBI_HDR_SIZE);
	assert_int_equal(cbi_img_trailer_layout.size, CBI_TRL_SIZE);
	assert_int_equal(cbi_idx_trailer_layout.size, CBI_TRL_SIZE);
	assert_int_equal(cbi_kf_layout.size, CBI_KF_SIZE);
	/* the header MAC covers bytes 0 .. CBI_HDR_MAC_OFF - 1 */
	assert_int_equal(cbi_layout_field(&cbi_hdr_layout, "header_mac")->off, CBI_HDR_MAC_OFF);
	/* the digest is the last 32 bytes of a trailer (the sealed-file writer appends it) */
	assert_int_equal(cbi_layout_field(&cbi_img_trailer_layout, "digest")->off, CBI_TRL_SIZE - 32);
	assert_int_equal(cbi_layout_field(&cbi_idx_trailer_layout, "digest")->off, CBI_TRL_SIZE - 32);
	assert_null(cbi_layout_field(&cbi_hdr_layout, "no such field"));
}

/* Every image and index file of the valid vectors: header and trailer
 * decode, and encode back to the very bytes. */
static void round_trip_dir(const char *dir, int *files)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || (!cbi_has_ext(de->d_name, ".cbi") && !cbi_has_ext(de->d_name, ".cbx")))
			continue;
		size_t n;
		uint8_t *b = tu_read_file(tu_path(dir, de->d_name), &n);
		assert_true(n >= CBI_HDR_SIZE + CBI_TRL_SIZE);
		cbi_hdr h;
		uint8_t again[CBI_HDR_SIZE];
		if (cbi_hdr_decode(b, &h))
			fail_msg("%s: header does not decode", de->d_name);
		cbi_hdr_encode(&h, again);
		if (memcmp(b, again, CBI_HDR_SIZE))
			fail_msg("%s: header re-encoded differs", de->d_name);
		uint8_t *t = b + n - CBI_TRL_SIZE, t2[CBI_TRL_SIZE];
		if (h.kind == CBI_KIND_IMAGE) {
			cbi_img_trailer it;
			assert_int_equal(cbi_img_trailer_decode(t, &it), 0);
			assert_true(it.file_size == n);
			cbi_img_trailer_encode(&it, t2);
		} else {
			cbi_idx_trailer xt;
			assert_int_equal(cbi_idx_trailer_decode(t, &xt), 0);
			assert_true(xt.file_size == n);
			cbi_idx_trailer_encode(&xt, t2);
		}
		if (memcmp(t, t2, CBI_TRL_SIZE))
			fail_msg("%s: trailer re-encoded differs", de->d_name);
		free(b);
		(*files)++;
	}
	closedir(d);
}

static void test_vectors_round_trip(void **state)
{
	(void)state;
	char valid[4096];
	if (!vec_path("valid", valid, sizeof valid) || !tu_exists(valid)) {
		print_message("skipped: $CBIMG_VECTORS/valid not present\n");
		skip();
		return;
	}
	DIR *d = opendir(valid);
	assert_non_null(d);
	struct dirent *de;
	int files = 0;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.') {
			char sub[4400];
			struct stat st;
			snprintf(sub, sizeof sub, "%s/%s", valid, de->d_name);
			if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
				round_trip_dir(sub, &files);
		}
	closedir(d);
	assert_true(files > 0);
	print_message("%d vector files: headers and trailers re-encoded byte for byte\n", files);
}

/* The reserved bytes of a key file: any non-zero byte is damage; the
 * layout's encoder writes them as zeros whatever the buffer held. */
static void test_reserved_fields(void **state)
{
	(void)state;
	cbi_idx_trailer t;
	memset(&t, 0, sizeof t);
	t.n_blocks = 7;
	uint8_t b[CBI_TRL_SIZE];
	memset(b, 0xee, sizeof b);
	cbi_idx_trailer_encode(&t, b);
	assert_true(cbi_layout_reserved_zero(&cbi_idx_trailer_layout, b));
	b[80] = 1;
	assert_false(cbi_layout_reserved_zero(&cbi_idx_trailer_layout, b));
	uint8_t k[CBI_KF_SIZE];
	memset(k, 0, sizeof k);
	assert_true(cbi_layout_reserved_zero(&cbi_kf_layout, k));
	k[108] = 1;
	assert_false(cbi_layout_reserved_zero(&cbi_kf_layout, k));
	k[108] = 0;
	k[247] = 1;
	assert_false(cbi_layout_reserved_zero(&cbi_kf_layout, k));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tables_consistent),
		cmocka_unit_test(test_tables_match_spec),
		cmocka_unit_test(test_vectors_round_trip),
		cmocka_unit_test(test_reserved_fields),
	};
	return cmocka_run_group_tests_name("layout", tests, NULL, NULL);
}
