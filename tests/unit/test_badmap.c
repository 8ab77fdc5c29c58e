/* test_badmap.c - the bad-range map (badmap.h, format/SPEC.md "Bad-range
 * map"): normalizing, lookup, encoding and its checks, an index file that
 * carries one, and a rescue read that is not a media error. */
#include "testutil.h"

#include "badmap.h"
#include "format.h"
#include "index.h"
#include "util.h"

static cbi_badmap mk(const uint64_t (*r)[2], size_t n)
{
	cbi_badmap m = { .sector = 512 };
	for (size_t i = 0; i < n; i++)
		assert_int_equal(cbi_badmap_add(&m, r[i][0], r[i][1]), 0);
	cbi_badmap_normalize(&m);
	return m;
}

static void test_normalize_merges(void **state)
{
	(void)state;
	/* out of order, overlapping, touching, apart */
	const uint64_t r[][2] = { { 4096, 512 }, { 0, 512 }, { 512, 512 }, { 4352, 1024 }, { 9000, 1 } };
	cbi_badmap m = mk(r, 5);
	assert_int_equal(m.n, 3);
	assert_int_equal(m.r[0].off, 0);
	assert_int_equal(m.r[0].len, 1024);
	assert_int_equal(m.r[1].off, 4096);
	assert_int_equal(m.r[1].len, 1280);
	assert_int_equal(m.r[2].off, 9000);
	assert_int_equal(m.bytes, 1024 + 1280 + 1);
	cbi_badrange b;
	assert_int_equal(cbi_badmap_find(&m, 1024, 3072, NULL), 0); /* the gap exactly */
	assert_int_equal(cbi_badmap_find(&m, 1023, 1, &b), 1);
	assert_int_equal(b.off, 0);
	assert_int_equal(cbi_badmap_find(&m, 5000, 8192, &b), 1); /* the first one met */
	assert_int_equal(b.off, 4096);
	assert_int_equal(cbi_badmap_find(&m, 9001, 100000, NULL), 0);
	assert_int_equal(cbi_badmap_find(&m, 0, 0, NULL), 0);
	char d[256];
	cbi_badmap_describe(&m, 2, d, sizeof d);
	assert_string_equal(d, "bytes 0-1023, 4096-5375 and 1 more range");
	cbi_badmap_describe(&m, 3, d, sizeof d);
	assert_string_equal(d, "bytes 0-1023, 4096-5375 and 9000-9000");
	cbi_badmap_free(&m);
}

/* Encode, then decode a tail and ranges as the index reader does. */
static int decode(const uint8_t *b, size_t len, uint64_t source_size, cbi_badmap *out)
{
	cbi_badmap_tail t;
	const uint8_t *tail = b + len - CBI_BADMAP_TAIL_SIZE;
	int rc = cbi_badmap_tail_decode(tail, len - CBI_BADMAP_TAIL_SIZE, &t);
	if (rc)
		return rc;
	return cbi_badmap_decode(tail - t.range_count * CBI_BADMAP_RANGE_SIZE, &t, source_size, out);
}

static void test_encode_decode(void **state)
{
	(void)state;
	const uint64_t r[][2] = { { 4096, 512 }, { 8192, 4096 } };
	cbi_badmap m = mk(r, 2);
	uint8_t b[64];
	assert_int_equal(cbi_badmap_size(m.n), sizeof b);
	cbi_badmap_encode(&m, b);
	/* SPEC.md's example, byte for byte */
	static const uint8_t want[64] = {
		0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x00, 0x02, 0, 0, 0, 0, 0, 0,
		0x00, 0x20, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0,
		'C', 'B', 'I', 'B', 'A', 'D', 'M', 'P', 2, 0, 0, 0, 0, 0, 0, 0,
		0x00, 0x12, 0, 0, 0, 0, 0, 0, 0x00, 0x02, 0, 0, 0, 0, 0, 0,
	};
	assert_memory_equal(b, want, sizeof b);
	cbi_badmap d = { 0 };
	assert_int_equal(decode(b, sizeof b, 1 << 20, &d), 0);
	assert_int_equal(d.n, 2);
	assert_int_equal(d.bytes, 4608);
	assert_int_equal(d.sector, 512);
	assert_int_equal(d.r[1].off, 8192);
	cbi_badmap_free(&d);

	/* each defect is damage */
	uint8_t x[64];
	struct {
		size_t at;
		uint8_t v;
	} defects[] = {
		{ 32, 'X' },        /* magic */
		{ 40, 9 },          /* range_count: more than fits */
		{ 48, 0x13 },       /* bad_bytes not the sum */
		{ 56, 0x03 },       /* sector_size 0x300: not a power of two */
		{ 60, 1 },          /* reserved */
		{ 16, 0x0f },       /* second range starts inside the first... */
		{ 9, 0 },           /* first range empty (length 0) */
		{ 5, 1 },           /* first range beyond the source */
	};
	for (size_t k = 0; k < sizeof defects / sizeof defects[0]; k++) {
		memcpy(x, b, sizeof x);
		x[defects[k].at] = defects[k].v;
		if (defects[k].at == 16) { /* ...at 3840, before the first: unsorted */
			x[16] = 0x00;
			x[17] = 0x0f;
		}
		cbi_badmap bad = { 0 };
		if (decode(x, sizeof x, 1 << 20, &bad) != -CBI_EDAMAGED)
			fail_msg("defect %zu (byte %zu) not refused", k, defects[k].at);
	}
	/* touching ranges are refused: the writer merges them */
	const uint64_t t[][2] = { { 0, 512 }, { 1024, 512 } };
	cbi_badmap tm = mk(t, 2);
	cbi_badmap_encode(&tm, b);
	st64(b + 16, 512); /* second range at 512: touches the first */
	assert_int_equal(decode(b, sizeof b, 1 << 20, &d), -CBI_EDAMAGED);
	/* an empty map is valid */
	cbi_badmap none = { .sector = 4096 };
	cbi_badmap_encode(&none, b);
	assert_int_equal(decode(b, CBI_BADMAP_TAIL_SIZE, 1 << 20, &d), 0);
	assert_int_equal(d.n, 0);
	cbi_badmap_free(&m);
	cbi_badmap_free(&tm);
}

static cbi_hdr mk_hdr(uint64_t nblocks)
{
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.kind = CBI_KIND_INDEX;
	h.flags = CBI_HDR_BAD_RANGES;
	h.block_size = 4096;
	h.hash_alg = CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.source_size = nblocks * 4096;
	h.n_blocks = nblocks;
	h.point_id[0] = 7;
	h.chain_id[0] = 1;
	h.type = CBI_FULL;
	h.level = 3;
	cbi_strlcpy(h.job, "job", sizeof h.job);
	cbi_strlcpy(h.host, "host", sizeof h.host);
	cbi_strlcpy(h.source_id, "test:bad", sizeof h.source_id);
	cbi_strlcpy(h.source_path, "/dev/null", sizeof h.source_path);
	return h;
}

static void write_index(const char *path, const cbi_hdr *h, const cbi_badmap *m)
{
	cbi_index_writer *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_index_writer_create(path, NULL, h, NULL, &w, &e), 0);
	cbi_index_writer_set_badmap(w, m);
	cbi_idx_ent z = { .flags = CBI_IDX_ZERO };
	for (uint64_t i = 0; i < h->n_blocks; i++)
		assert_int_equal(cbi_index_writer_add(w, &z), 0);
	cbi_idx_trailer t = { 0 };
	assert_int_equal(cbi_index_writer_seal(w, &t), 0);
	assert_int_equal(cbi_index_writer_commit(w, &e), 0);
}

static void test_index_round_trip(void **state)
{
	const char *dir = *state;
	const uint64_t r[][2] = { { 4096, 512 }, { 8192, 4096 }, { 100000, 3 } };
	cbi_badmap m = mk(r, 3);
	cbi_hdr h = mk_hdr(64);
	char p[4096];
	snprintf(p, sizeof p, "%s", tu_path(dir, "a.cbx"));
	write_index(p, &h, &m);
	assert_int_equal(tu_file_size(p), 640 + 24 * 64 + 32 + 16 * 3);
	cbi_index *x = NULL;
	cbi_error e;
	assert_int_equal(cbi_index_open(p, &x, &e), 0);
	assert_int_equal(x->hdr.version, 2);
	assert_int_equal(x->bad.n, 3);
	assert_int_equal(x->bad.bytes, 512 + 4096 + 3);
	assert_int_equal(x->bad.r[2].off, 100000);
	cbi_idx_ent ent;
	assert_int_equal(cbi_index_get(x, 63, &ent), 0);
	assert_int_equal(cbi_index_check_digest(x), 0);
	cbi_index_close(x);

	/* a range moved past the end: refused at open, naming the map */
	tu_flip_byte(p, 512 + 24 * 64 + 32 + 5, 0x01);
	assert_int_equal(cbi_index_open(p, &x, &e), -CBI_EDAMAGED);
	assert_non_null(strstr(e.msg, "bad-range map"));

	/* no map set: an empty one; a map cut off: the size check fails */
	snprintf(p, sizeof p, "%s", tu_path(dir, "b.cbx"));
	write_index(p, &h, NULL);
	assert_int_equal(tu_file_size(p), 640 + 24 * 64 + 32);
	assert_int_equal(cbi_index_open(p, &x, &e), 0);
	assert_int_equal(x->bad.n, 0);
	cbi_index_close(x);
	cbi_badmap_free(&m);
}

/* A failure that is not a media error (a pipe: ESPIPE) fails the rescue
 * read instead of being recorded. */
static void test_rescue_not_media(void **state)
{
	(void)state;
	cbi_rescue q;
	assert_int_equal(cbi_rescue_init(&q, 512, 1), 0);
	assert_int_not_equal(cbi_rescue_init(&(cbi_rescue){ 0 }, 500, 1), 0);
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	uint8_t buf[4096];
	cbi_error e;
	assert_int_equal(cbi_rescue_read(&q, fds[0], "pipe", 0, sizeof buf, buf, &e), -CBI_EREAD);
	assert_int_equal(q.map.n, 0);
	assert_int_equal(q.failed_reads, 1);
	assert_true(cbi_rescue_media_error(EIO));
	assert_false(cbi_rescue_media_error(EINVAL));
	close(fds[0]);
	close(fds[1]);
	cbi_rescue_free(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_normalize_merges),
		cmocka_unit_test(test_encode_decode),
		cmocka_unit_test_setup_teardown(test_index_round_trip, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test(test_rescue_not_media),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
