/* test_index.c - index file writer and reader (.cbx). */
#include "testutil.h"

#include "format.h"
#include "image.h"
#include "index.h"
#include "util.h"

#define N_BIG 20011u /* more than two 8192-entry windows, not a multiple */

static cbi_hdr mk_hdr(uint64_t nblocks)
{
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.kind = CBI_KIND_INDEX;
	h.version = 1; /* a plain file: version 1 */
	h.block_size = 4096;
	h.hash_alg = CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.source_size = nblocks * 4096 - (nblocks ? 100 : 0);
	h.n_blocks = nblocks;
	for (int i = 0; i < 16; i++) {
		h.chain_id[i] = (uint8_t)(i + 1);
		h.point_id[i] = (uint8_t)(0x30 + i);
		h.parent_id[i] = (uint8_t)(0x50 + i);
	}
	h.parent_digest[3] = 9;
	h.seq = 3;
	h.type = CBI_INCREMENTAL;
	h.created_ns = 1700000000000000000LL;
	h.level = 3;
	cbi_strlcpy(h.job, "job", sizeof h.job);
	cbi_strlcpy(h.host, "host", sizeof h.host);
	cbi_strlcpy(h.source_id, "test:idx", sizeof h.source_id);
	cbi_strlcpy(h.source_path, "/dev/null", sizeof h.source_path);
	return h;
}

/* The entry written for block i: unique hash, owner 0..3, every 7th zero. */
static cbi_idx_ent ent_for(uint64_t i)
{
	cbi_idx_ent e;
	memset(&e, 0, sizeof e);
	if (i % 7 == 3) {
		e.flags = CBI_IDX_ZERO;
		return e;
	}
	uint64_t v = i * 0x9e3779b97f4a7c15ull + 1;
	st64(e.hash, v);
	st64(e.hash + 8, ~i);
	e.owner = (uint32_t)(i % 4);
	return e;
}

static void write_index(const char *path, uint64_t n, cbi_idx_trailer *t_out)
{
	cbi_hdr h = mk_hdr(n);
	cbi_index_writer *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_index_writer_create(path, NULL, &h, NULL, &w, &e), 0);
	for (uint64_t i = 0; i < n; i++) {
		cbi_idx_ent en = ent_for(i);
		assert_int_equal(cbi_index_writer_add(w, &en), 0);
	}
	cbi_idx_trailer t;
	memset(&t, 0, sizeof t);
	t.changed_blocks = 11;
	t.zero_blocks = 22;
	t.stored_blocks = 33;
	t.image_size = 44444;
	assert_int_equal(cbi_index_writer_seal(w, &t), 0);
	assert_int_equal(cbi_index_writer_commit(w, &e), 0);
	assert_true(t.file_size == CBI_HDR_SIZE + n * CBI_IDX_ENT_SIZE + CBI_TRL_SIZE);
	assert_true(t.n_blocks == n);
	if (t_out)
		*t_out = t;
}

/* Entry i read through w (NULL: the index's own window) must be want. */
static void expect_entry(cbi_index *x, cbi_index_win *w, uint64_t i, cbi_idx_ent want)
{
	cbi_idx_ent got;
	int rc = w ? cbi_index_get_w(x, w, i, &got) : cbi_index_get(x, i, &got);
	if (rc)
		fail_msg("cbi_index_get(%llu) = %d", (unsigned long long)i, rc);
	if (memcmp(got.hash, want.hash, 16) || got.owner != want.owner || got.flags != want.flags)
		fail_msg("entry %llu differs", (unsigned long long)i);
}

static void check_entry(cbi_index *x, uint64_t i)
{
	expect_entry(x, NULL, i, ent_for(i));
}

static void test_round_trip_big(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "big.cbx");
	cbi_idx_trailer wt;
	write_index(p, N_BIG, &wt);
	assert_int_equal(tu_count(f->dir, NULL, -1), 1); /* no temp left */
	assert_int_equal(tu_file_size(p), (int64_t)wt.file_size);

	cbi_index *x = NULL;
	cbi_error e;
	assert_int_equal(cbi_index_open(p, &x, &e), 0);
	cbi_hdr h = mk_hdr(N_BIG);
	assert_int_equal(x->hdr.kind, CBI_KIND_INDEX);
	assert_true(x->hdr.n_blocks == N_BIG);
	assert_true(x->hdr.source_size == h.source_size);
	assert_memory_equal(x->hdr.point_id, h.point_id, 16);
	assert_memory_equal(x->hdr.parent_id, h.parent_id, 16);
	assert_int_equal(x->hdr.seq, 3);
	assert_string_equal(x->hdr.job, "job");
	assert_true(x->trl.n_blocks == N_BIG);
	assert_true(x->trl.changed_blocks == 11);
	assert_true(x->trl.zero_blocks == 22);
	assert_true(x->trl.stored_blocks == 33);
	assert_true(x->trl.image_size == 44444);
	assert_memory_equal(x->trl.point_id, h.point_id, 16);
	assert_memory_equal(x->trl.digest, wt.digest, 32);

	/* sequential */
	for (uint64_t i = 0; i < N_BIG; i++)
		check_entry(x, i);
	/* backwards */
	for (uint64_t i = N_BIG; i-- > 0;)
		check_entry(x, i);
	/* around the window boundaries */
	const uint64_t edges[] = { 8191, 8192, 8193, 0, 16383, 16384, 16385, 8191, N_BIG - 1, 0, N_BIG - 2,
				   16384, 1, 8192 };
	for (size_t k = 0; k < sizeof edges / sizeof edges[0]; k++)
		check_entry(x, edges[k]);
	/* random order: a full permutation (step coprime with N_BIG) */
	uint64_t i = 5;
	for (uint64_t k = 0; k < N_BIG; k++) {
		check_entry(x, i);
		i = (i + 7919) % N_BIG;
	}
	/* out of range */
	cbi_idx_ent en;
	assert_int_equal(cbi_index_get(x, N_BIG, &en), -EINVAL);
	assert_int_equal(cbi_index_get(x, UINT64_MAX, &en), -EINVAL);
	check_entry(x, N_BIG - 1); /* still usable */

	assert_int_equal(cbi_index_check_digest(x), 0);
	cbi_index_close(x);
	cbi_index_close(NULL);
}

static void test_single_entry(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "one.cbx");
	write_index(p, 1, NULL);
	cbi_index *x = NULL;
	assert_int_equal(cbi_index_open(p, &x, NULL), 0);
	check_entry(x, 0);
	cbi_idx_ent en;
	assert_int_equal(cbi_index_get(x, 1, &en), -EINVAL);
	assert_int_equal(cbi_index_check_digest(x), 0);
	cbi_index_close(x);
}

static void test_truncated_copy(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "t.cbx");
	write_index(p, N_BIG, NULL);
	size_t n;
	uint8_t *b = tu_read_file(p, &n);
	const size_t cuts[] = { 1, 24, 32, 127, 128, 129, n / 2, n - 640, n - 639, n - 1, n };
	const char *c = tu_path(f->dir, "copy.cbx");
	for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
		tu_write_file(c, b, n - cuts[k]);
		cbi_index *x = NULL;
		cbi_error e;
		memset(&e, 0, sizeof e);
		int rc = cbi_index_open(c, &x, &e);
		if (rc != -CBI_ETRUNCATED && rc != -CBI_EDAMAGED)
			fail_msg("index cut by %zu bytes: open returned %d", cuts[k], rc);
		assert_null(x);
		assert_int_equal(e.code, rc);
		assert_non_null(strstr(e.msg, "copy.cbx"));
	}
	/* one byte appended: the trailer is no longer at the end */
	uint8_t *b2 = malloc(n + 1);
	assert_non_null(b2);
	memcpy(b2, b, n);
	b2[n] = 0;
	tu_write_file(c, b2, n + 1);
	cbi_index *x = NULL;
	int rc = cbi_index_open(c, &x, NULL);
	assert_true(rc == -CBI_ETRUNCATED || rc == -CBI_EDAMAGED);
	/* a whole trailer appended again (file_size no longer matches) */
	uint8_t *b3 = malloc(n + 128);
	assert_non_null(b3);
	memcpy(b3, b, n);
	memcpy(b3 + n, b + n - 128, 128);
	tu_write_file(c, b3, n + 128);
	assert_int_equal(cbi_index_open(c, &x, NULL), -CBI_EDAMAGED);
	free(b3);
	free(b2);
	free(b);
}

static void test_damaged_bytes(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "d.cbx");
	write_index(p, N_BIG, NULL);
	cbi_index *x = NULL;

	/* header byte: structural failure at open */
	tu_flip_byte(p, 200, 0x10);
	assert_int_equal(cbi_index_open(p, &x, NULL), -CBI_EDAMAGED);
	tu_flip_byte(p, 200, 0x10);

	/* entry byte: opens (structure is fine), the digest catches it */
	uint64_t off = CBI_HDR_SIZE + 9000 * CBI_IDX_ENT_SIZE + 5;
	tu_flip_byte(p, off, 0x01);
	assert_int_equal(cbi_index_open(p, &x, NULL), 0);
	assert_int_equal(cbi_index_check_digest(x), -CBI_EDAMAGED);
	cbi_index_close(x);
	tu_flip_byte(p, off, 0x01);

	/* trailer counters: also only the digest */
	int64_t sz = tu_file_size(p);
	tu_flip_byte(p, (uint64_t)sz - 128 + 16, 0x01); /* changed_blocks */
	assert_int_equal(cbi_index_open(p, &x, NULL), 0);
	assert_int_equal(cbi_index_check_digest(x), -CBI_EDAMAGED);
	cbi_index_close(x);
	tu_flip_byte(p, (uint64_t)sz - 128 + 16, 0x01);

	/* trailer n_blocks or point id: structural */
	tu_flip_byte(p, (uint64_t)sz - 128 + 8, 0x01);
	assert_int_equal(cbi_index_open(p, &x, NULL), -CBI_EDAMAGED);
	tu_flip_byte(p, (uint64_t)sz - 128 + 8, 0x01);
	tu_flip_byte(p, (uint64_t)sz - 128 + 60, 0x01);
	assert_int_equal(cbi_index_open(p, &x, NULL), -CBI_EDAMAGED);
	tu_flip_byte(p, (uint64_t)sz - 128 + 60, 0x01);
	/* trailer magic: no trailer */
	tu_flip_byte(p, (uint64_t)sz - 128, 0x01);
	assert_int_equal(cbi_index_open(p, &x, NULL), -CBI_ETRUNCATED);
	tu_flip_byte(p, (uint64_t)sz - 128, 0x01);

	assert_int_equal(cbi_index_open(p, &x, NULL), 0);
	assert_int_equal(cbi_index_check_digest(x), 0);
	cbi_index_close(x);
}

static void test_image_opened_as_index(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "img.cbi");
	cbi_hdr h = mk_hdr(10);
	cbi_image_writer *w = NULL;
	assert_int_equal(cbi_image_writer_create(p, NULL, &h, NULL, &w, NULL), 0);
	uint8_t dg[32] = { 0 };
	assert_int_equal(cbi_image_writer_seal(w, 0, dg), 0);
	assert_int_equal(cbi_image_writer_commit(w, NULL), 0);

	cbi_index *x = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_index_open(p, &x, &e), -CBI_EFORMAT);
	assert_int_equal(e.code, -CBI_EFORMAT);
	assert_non_null(strstr(e.msg, "img.cbi"));
	assert_null(x);

	/* something that is not a cbimg file at all */
	const char *q = tu_path(f->dir, "random.cbx");
	uint8_t junk[4096];
	tu_fill_random(junk, sizeof junk, 3);
	tu_write_file(q, junk, sizeof junk);
	assert_int_equal(cbi_index_open(q, &x, &e), -CBI_EFORMAT);
	/* missing */
	assert_int_equal(cbi_index_open(tu_path(f->dir, "none.cbx"), &x, &e), -ENOENT);
}

static void test_seal_wrong_count(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "w.cbx");
	const uint64_t adds[] = { 0, 99, 101 };
	for (size_t k = 0; k < 3; k++) {
		cbi_hdr h = mk_hdr(100);
		cbi_index_writer *w = NULL;
		assert_int_equal(cbi_index_writer_create(p, NULL, &h, NULL, &w, NULL), 0);
		for (uint64_t i = 0; i < adds[k]; i++) {
			cbi_idx_ent en = ent_for(i);
			assert_int_equal(cbi_index_writer_add(w, &en), 0);
		}
		cbi_idx_trailer t;
		memset(&t, 0, sizeof t);
		int rc = cbi_index_writer_seal(w, &t);
		if (rc == 0)
			fail_msg("seal accepted %llu entries for 100 blocks", (unsigned long long)adds[k]);
		assert_int_equal(rc, -EINVAL);
		cbi_index_writer_abort(w);
		assert_int_equal(tu_count(f->dir, NULL, -1), 0);
	}
	cbi_index_writer_abort(NULL);
}

static void test_writer_create_error(void **state)
{
	tu_fix *f = *state;
	cbi_hdr h = mk_hdr(4);
	cbi_index_writer *w = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_index_writer_create(tu_path(f->dir, "no/such.cbx"), NULL, &h, NULL, &w, &e), -ENOENT);
	assert_int_equal(e.code, -ENOENT);
	assert_null(w);
}

/* ---- run-length index (version 3, revision 2.6) ---- */

#define N_RUNS 30000u

/* Block i of the runs tests: zero runs of 1, 2, 3 and 9000 blocks (across
 * windows), at the start and at the end, between data blocks. */
static int runs_zero(uint64_t i)
{
	return i < 5 || (i >= 100 && i < 101) || (i >= 200 && i < 202) || (i >= 300 && i < 303) ||
	       (i >= 8000 && i < 17000) || i >= N_RUNS - 40 || (i % 997 == 13);
}

static cbi_idx_ent runs_ent(uint64_t i)
{
	cbi_idx_ent e = ent_for(i);
	if (runs_zero(i)) {
		memset(&e, 0, sizeof e);
		e.flags = CBI_IDX_ZERO;
	} else if (e.flags) {
		e = ent_for(i + 1); /* not zero */
		e.flags = 0;
	}
	return e;
}

/* Items the writer must write for blocks [0, n): one per data block or
 * lone zero block, one per run of two or more zero blocks. */
static uint64_t runs_items(uint64_t n)
{
	uint64_t items = 0;
	for (uint64_t i = 0; i < n; i++)
		if (!runs_zero(i) || i == 0 || !runs_zero(i - 1))
			items++;
	return items;
}

static void write_runs(const char *path, uint64_t n, int runs)
{
	cbi_hdr h = mk_hdr(n);
	h.runs = runs;
	cbi_index_writer *w = NULL;
	assert_int_equal(cbi_index_writer_create(path, NULL, &h, NULL, &w, NULL), 0);
	for (uint64_t i = 0; i < n; i++) {
		cbi_idx_ent en = runs_ent(i);
		assert_int_equal(cbi_index_writer_add(w, &en), 0);
	}
	cbi_idx_trailer t;
	memset(&t, 0, sizeof t);
	assert_int_equal(cbi_index_writer_seal(w, &t), 0);
	assert_int_equal(cbi_index_writer_commit(w, NULL), 0);
}

static void check_runs_entry(cbi_index *x, cbi_index_win *w, uint64_t i)
{
	expect_entry(x, w, i, runs_ent(i));
}

static void test_runs_round_trip(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "runs.cbx");
	write_runs(p, N_RUNS, 1);
	uint64_t items = runs_items(N_RUNS);
	assert_true(items < N_RUNS - 9000);
	assert_int_equal(tu_file_size(p), (int64_t)(CBI_HDR_SIZE + items * CBI_IDX_ENT_SIZE + CBI_TRL_SIZE));
	size_t n;
	uint8_t *b = tu_read_file(p, &n);
	assert_int_equal(ld32(b + 8), 3); /* version 3 */
	/* the first item: the run of blocks 0..4 */
	cbi_idx_ent e0;
	cbi_idx_ent_decode(b + CBI_HDR_SIZE, &e0);
	assert_int_equal(e0.flags, CBI_IDX_ZERO | CBI_IDX_RUN);
	assert_true(ld64(e0.hash) == 0 && ld64(e0.hash + 8) == 5 && e0.owner == 0);
	free(b);

	cbi_index *x = NULL;
	assert_int_equal(cbi_index_open(p, &x, NULL), 0);
	assert_int_equal(x->hdr.version, 3);
	assert_true(x->hdr.runs && x->n_items == items);
	assert_int_equal(cbi_index_check_digest(x), 0);
	for (uint64_t i = 0; i < N_RUNS; i++) /* forwards */
		check_runs_entry(x, NULL, i);
	for (uint64_t i = N_RUNS; i-- > 0;) /* backwards */
		check_runs_entry(x, NULL, i);
	cbi_index_win w1, w2;
	memset(&w1, 0, sizeof w1);
	memset(&w2, 0, sizeof w2);
	uint64_t s = 7;
	for (int k = 0; k < 20000; k++) { /* random, two windows */
		check_runs_entry(x, &w1, tu_rng(&s) % N_RUNS);
		check_runs_entry(x, &w2, tu_rng(&s) % N_RUNS);
	}
	cbi_idx_ent en;
	assert_int_equal(cbi_index_get(x, N_RUNS, &en), -EINVAL);
	cbi_index_win_free(&w1);
	cbi_index_win_free(&w2);
	cbi_index_close(x);
}

/* cbi_index_writer_add_zeros() writes the same file as one add per zero
 * block (runs or not), and cbi_index_zero_span() names every run's extent
 * and the next run's start from anywhere. */
static void test_runs_add_zeros_and_span(void **state)
{
	tu_fix *f = *state;
	for (int runs = 0; runs < 2; runs++) {
		const char *p1 = tu_path(f->dir, "one.cbx"), *p2 = tu_path(f->dir, "many.cbx");
		write_runs(p1, N_RUNS, runs);
		cbi_hdr h = mk_hdr(N_RUNS);
		h.runs = runs;
		cbi_index_writer *w = NULL;
		assert_int_equal(cbi_index_writer_create(p2, NULL, &h, NULL, &w, NULL), 0);
		for (uint64_t i = 0; i < N_RUNS;) {
			uint64_t n = 0;
			while (i + n < N_RUNS && runs_zero(i + n))
				n++;
			if (n) { /* a stretch of zeros in pieces of 1, 2, 3, ... */
				for (uint64_t k = 1, done = 0; done < n; k++) {
					uint64_t m = k < n - done ? k : n - done;
					assert_int_equal(cbi_index_writer_add_zeros(w, m), 0);
					done += m;
				}
				i += n;
			} else {
				cbi_idx_ent en = runs_ent(i++);
				assert_int_equal(cbi_index_writer_add(w, &en), 0);
			}
		}
		assert_int_equal(cbi_index_writer_add_zeros(w, 0), 0);
		cbi_idx_trailer t;
		memset(&t, 0, sizeof t);
		assert_int_equal(cbi_index_writer_seal(w, &t), 0);
		assert_int_equal(cbi_index_writer_commit(w, NULL), 0);
		size_t n1, n2;
		uint8_t *b1 = tu_read_file(p1, &n1), *b2 = tu_read_file(p2, &n2);
		assert_int_equal(n1, n2);
		assert_memory_equal(b1, b2, n1);
		free(b1);
		free(b2);

		cbi_index *x = NULL;
		assert_int_equal(cbi_index_open(p1, &x, NULL), 0);
		cbi_index_win wz;
		memset(&wz, 0, sizeof wz);
		uint64_t s = 11;
		for (int k = 0; k < 4000; k++) {
			uint64_t i = k < 2000 ? (uint64_t)k * 15 : tu_rng(&s) % N_RUNS, span, next;
			assert_int_equal(cbi_index_zero_span(x, &wz, i, &span, &next), 0);
			if (!runs) { /* fixed entries: no runs */
				assert_true(span == 0 && next == N_RUNS);
				continue;
			}
			/* the truth: i is in a run when it and a neighbour are zero */
			uint64_t a = i, b = i;
			while (a > 0 && runs_zero(a - 1) && runs_zero(i))
				a--;
			while (b < N_RUNS && runs_zero(b))
				b++;
			int in = runs_zero(i) && b - a >= 2;
			assert_int_equal(span, in ? b - i : 0);
			if (in) {
				assert_int_equal(next, i);
			} else {
				uint64_t j = i + 1;
				while (j < N_RUNS && !(runs_zero(j) && ((j + 1 < N_RUNS && runs_zero(j + 1)) ||
									   runs_zero(j - 1))))
					j++;
				assert_int_equal(next, j);
			}
		}
		uint64_t span, next;
		assert_int_equal(cbi_index_zero_span(x, &wz, N_RUNS, &span, &next), -EINVAL);
		cbi_index_win_free(&wz);
		cbi_index_close(x);
		unlink(p1);
		unlink(p2);
	}
}

/* The writer's choice: runs from CBI_IDX_RUNS_MIN_BLOCKS blocks on; below,
 * the fixed entries that every older reader reads (version 1 here). */
static void test_runs_auto(void **state)
{
	tu_fix *f = *state;
	const uint64_t ns[] = { CBI_IDX_RUNS_MIN_BLOCKS - 1, CBI_IDX_RUNS_MIN_BLOCKS };
	for (int k = 0; k < 2; k++) {
		const char *p = tu_path(f->dir, k ? "auto1.cbx" : "auto0.cbx");
		write_runs(p, ns[k], 0);
		cbi_index *x = NULL;
		assert_int_equal(cbi_index_open(p, &x, NULL), 0);
		assert_int_equal(x->hdr.version, k ? 3 : 1);
		assert_true(x->n_items == (k ? runs_items(ns[k]) : ns[k]));
		for (uint64_t i = 0; i < ns[k]; i += 1 + i % 5)
			check_runs_entry(x, NULL, i);
		check_runs_entry(x, NULL, ns[k] - 1);
		assert_int_equal(cbi_index_check_digest(x), 0);
		cbi_index_close(x);
	}
}

/* Damaged runs: the index opens (its size and trailer agree), the first
 * entry read fails with -CBI_EDAMAGED, and so does every later one. */
static void test_runs_damaged(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "rd.cbx");
	write_runs(p, N_RUNS, 1);
	/* item 0 is the run {first 0, count 5}; its byte offsets: */
	const uint64_t it0 = CBI_HDR_SIZE;
	struct {
		uint64_t off;
		uint8_t mask;
	} cases[] = {
		{ it0 + 0, 0x01 },  /* first 1: not where the items before end */
		{ it0 + 8, 0x07 },  /* count 2: the blocks no longer add up */
		{ it0 + 8, 0x05 },  /* count 0 */
		{ it0 + 15, 0x80 }, /* count beyond n_blocks */
		{ it0 + 20, 0x01 }, /* RUN without ZERO */
		{ it0 + 20, 0x04 }, /* an unknown flag bit on a run */
		{ it0 + 16, 0x01 }, /* owner 1 */
		{ it0 + 20, 0x02 }, /* not a run: 4 blocks too few */
	};
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
		tu_flip_byte(p, cases[k].off, cases[k].mask);
		cbi_index *x = NULL;
		assert_int_equal(cbi_index_open(p, &x, NULL), 0);
		cbi_idx_ent en;
		if (cbi_index_get(x, 1000, &en) != -CBI_EDAMAGED)
			fail_msg("case %zu: damaged runs were read", k);
		assert_int_equal(cbi_index_get(x, 0, &en), -CBI_EDAMAGED);
		assert_int_equal(cbi_index_load_runs(x), -CBI_EDAMAGED);
		assert_int_equal(cbi_index_check_digest(x), -CBI_EDAMAGED);
		cbi_index_close(x);
		tu_flip_byte(p, cases[k].off, cases[k].mask);
	}
	/* a size that is not header + items + trailer */
	size_t n;
	uint8_t *b = tu_read_file(p, &n);
	const char *q = tu_path(f->dir, "rd2.cbx");
	tu_write_file(q, b, n - 1);
	cbi_index *x = NULL;
	assert_int_not_equal(cbi_index_open(q, &x, NULL), 0);
	free(b);
	/* an image file cannot be version 3 */
	cbi_hdr h = mk_hdr(10);
	h.runs = 1;
	uint8_t hb[CBI_HDR_SIZE];
	h.kind = CBI_KIND_IMAGE;
	cbi_hdr_encode(&h, hb);
	memcpy(hb, CBI_MAGIC_IMAGE, 8);
	cbi_hdr d;
	assert_int_equal(cbi_hdr_decode(hb, &d), -CBI_EFORMAT);
	/* nor can a version-3 index be read by a version-2 reader's rules: a
	 * future version 4 is refused as unsupported */
	h.kind = CBI_KIND_INDEX;
	cbi_hdr_encode(&h, hb);
	assert_int_equal(cbi_hdr_decode(hb, &d), 0);
	assert_true(d.runs && d.version == 3);
	st32(hb + 8, 4);
	assert_int_equal(cbi_hdr_decode(hb, &d), -CBI_EFORMAT);
}

/* Files of the older versions stay readable: a fixed-entry index (version
 * 1) written without runs reads back unchanged, through both windows. */
static void test_runs_old_format_readable(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "old.cbx");
	write_index(p, N_BIG, NULL);
	cbi_index *x = NULL;
	assert_int_equal(cbi_index_open(p, &x, NULL), 0);
	assert_int_equal(x->hdr.version, 1);
	assert_false(x->hdr.runs);
	assert_int_equal(cbi_index_load_runs(x), 0);
	assert_true(x->n_runs == 0 && x->n_items == N_BIG);
	cbi_index_win w;
	memset(&w, 0, sizeof w);
	for (uint64_t i = 0; i < N_BIG; i += 3) {
		check_entry(x, i);
		expect_entry(x, &w, N_BIG - 1 - i, ent_for(N_BIG - 1 - i));
	}
	cbi_index_win_free(&w);
	cbi_index_close(x);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		T(test_round_trip_big),
		T(test_runs_round_trip),
		T(test_runs_auto),
		T(test_runs_add_zeros_and_span),
		T(test_runs_damaged),
		T(test_runs_old_format_readable),
		T(test_single_entry),
		T(test_truncated_copy),
		T(test_damaged_bytes),
		T(test_image_opened_as_index),
		T(test_seal_wrong_count),
		T(test_writer_create_error),
	};
	return cmocka_run_group_tests_name("index", tests, NULL, NULL);
}
