/* test_pipeline.c - the backup pipeline (cbi_pipe_run) driven directly
 * with a recording sink: block order, zero detection, parent comparison,
 * compression, thread-count independence, errors and cancellation. */
#include "testutil.h"

#include <zstd.h>

#include "format.h"
#include "index.h"
#include "pipeline.h"
#include "source.h"
#include "util.h"

#define BS 4096u

/* What the sink saw for one block. */
typedef struct seen {
	cbi_idx_ent ent;
	int changed, store;
	uint32_t raw_len, stored_len, rec_flags;
	uint8_t data[BS]; /* decompressed payload when stored */
} seen;

typedef struct rec {
	seen *v;
	uint64_t n, cap;
	uint64_t next;       /* next block expected */
	int fail_at;         /* return an error at this block (-1: never) */
	int order_ok;
	int count_only;      /* only count the blocks and their zero entries */
	uint64_t zero;
	ZSTD_DCtx *dctx;
} rec;

static int sink(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err)
{
	rec *r = ud;
	if (block != r->next)
		r->order_ok = 0;
	r->next = block + 1;
	if (r->fail_at >= 0 && block == (uint64_t)r->fail_at)
		return cbi_err(err, -ENOSPC, "sink full at block %llu", (unsigned long long)block);
	if (r->count_only) {
		r->n++;
		r->zero += b->ent.flags == CBI_IDX_ZERO && !b->store && !b->changed && !b->ent.owner &&
			   cbi_is_zero(b->ent.hash, 16);
		return 0;
	}
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 64;
		r->v = realloc(r->v, r->cap * sizeof *r->v);
		if (!r->v)
			return -ENOMEM;
	}
	seen *s = &r->v[r->n++];
	memset(s, 0, sizeof *s);
	s->ent = b->ent;
	s->changed = b->changed;
	s->store = b->store;
	s->raw_len = b->raw_len;
	s->stored_len = b->stored_len;
	s->rec_flags = b->rec_flags;
	if (b->store) {
		if (b->rec_flags & CBI_REC_ZSTD) {
			size_t n = ZSTD_decompressDCtx(r->dctx, s->data, BS, b->payload, b->stored_len);
			if (ZSTD_isError(n) || n != b->raw_len)
				return cbi_err(err, -EIO, "bad frame at %llu", (unsigned long long)block);
		} else {
			if (b->stored_len != b->raw_len)
				return cbi_err(err, -EIO, "raw record length at %llu", (unsigned long long)block);
			memcpy(s->data, b->payload, b->raw_len);
		}
	}
	return 0;
}

static void rec_init(rec *r)
{
	memset(r, 0, sizeof *r);
	r->order_ok = 1;
	r->fail_at = -1;
	r->dctx = ZSTD_createDCtx();
	assert_non_null(r->dctx);
}

static void rec_free(rec *r)
{
	free(r->v);
	ZSTD_freeDCtx(r->dctx);
}

/* Source content: block kinds by index. */
enum { K_ZERO, K_TEXT, K_RANDOM };
static int kind_of(uint64_t i)
{
	if (i % 5 == 1)
		return K_ZERO;
	if (i % 7 == 3)
		return K_RANDOM;
	return K_TEXT;
}

/* Write the bytes d of a source file: dense, or sparse with every zero
 * block left a hole. */
static void write_source(const char *path, const uint8_t *d, uint64_t size, int sparse)
{
	if (!sparse) {
		tu_write_file(path, d, size);
		return;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	for (uint64_t i = 0; i < cbi_nblocks(size, BS); i++) {
		uint32_t len = cbi_block_len(size, BS, i);
		if (!cbi_is_zero(d + i * BS, len))
			assert_int_equal(pwrite(fd, d + i * BS, len, (off_t)(i * BS)), (ssize_t)len);
	}
	close(fd);
}

/* Blocks [from, to) get the content of kind_of(). */
static void fill_kinds(uint8_t *d, uint64_t size, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to; i++) {
		uint32_t len = cbi_block_len(size, BS, i);
		if (kind_of(i) == K_TEXT)
			tu_fill_text(d + i * BS, len, i);
		else if (kind_of(i) == K_RANDOM)
			tu_fill_random(d + i * BS, len, i);
	}
}

static uint8_t *make_source(const char *path, uint64_t size, int sparse_zero)
{
	uint8_t *d = calloc(1, size);
	assert_non_null(d);
	fill_kinds(d, size, 0, cbi_nblocks(size, BS));
	write_source(path, d, size, sparse_zero); /* sparse: zero blocks are holes */
	return d;
}

static int run_src(cbi_source *src, cbi_index *parent, uint32_t seq, int threads, rec *r,
		   cbi_progress_fn pf, void *pud, cbi_pipe_stats *st, cbi_error *e)
{
	cbi_pipe_cfg c = { .src = src, .parent = parent, .block_size = BS, .seq = seq, .level = 3,
			   .threads = threads, .sink = sink, .sink_ud = r, .progress = pf, .progress_ud = pud };
	cbi_pipe_stats tmp;
	memset(&tmp, 0, sizeof tmp);
	return cbi_pipe_run(&c, st ? st : &tmp, e);
}

static int run(const char *src_path, cbi_index *parent, uint32_t seq, int threads, rec *r,
	       cbi_progress_fn pf, void *pud, cbi_pipe_stats *st, cbi_error *e)
{
	cbi_source *src = NULL;
	assert_int_equal(cbi_source_open(src_path, &src, NULL), 0);
	int rc = run_src(src, parent, seq, threads, r, pf, pud, st, e);
	cbi_source_close(src);
	return rc;
}

static void check_full(const rec *r, const uint8_t *d, uint64_t size, uint32_t seq)
{
	uint64_t nb = cbi_nblocks(size, BS);
	assert_true(r->order_ok);
	assert_true(r->n == nb);
	for (uint64_t i = 0; i < nb; i++) {
		const seen *s = &r->v[i];
		uint32_t len = cbi_block_len(size, BS, i);
		assert_int_equal(s->raw_len, len);
		if (cbi_is_zero(d + i * BS, len)) {
			assert_int_equal(s->ent.flags, CBI_IDX_ZERO);
			assert_false(s->store);
			assert_false(s->changed);
			continue;
		}
		uint8_t h[16];
		cbi_block_hash(d + i * BS, len, h);
		assert_int_equal(s->ent.flags, 0);
		assert_memory_equal(s->ent.hash, h, 16);
		assert_int_equal(s->ent.owner, seq);
		assert_true(s->changed);
		assert_true(s->store);
		assert_memory_equal(s->data, d + i * BS, len);
		if (kind_of(i) == K_TEXT) {
			assert_int_equal(s->rec_flags, CBI_REC_ZSTD);
			assert_true(s->stored_len < len);
		} else {
			/* random data does not compress: stored raw */
			assert_int_equal(s->rec_flags, 0);
			assert_int_equal(s->stored_len, len);
		}
	}
}

static void test_full_single_batch(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	const uint64_t size = 100 * BS + 777;
	uint8_t *d = make_source(p, size, 0);
	rec r;
	rec_init(&r);
	cbi_pipe_stats st;
	cbi_error e;
	assert_int_equal(run(p, NULL, 0, 2, &r, NULL, NULL, &st, &e), 0);
	check_full(&r, d, size, 0);
	assert_true(st.bytes_read == size);
	rec_free(&r);
	free(d);
}

/* Every block the sink saw in b is what it saw in ref. */
static void assert_same(const rec *ref, const rec *b, const char *what, int n)
{
	assert_true(b->order_ok);
	assert_true(b->n == ref->n);
	for (uint64_t i = 0; i < b->n; i++) {
		const seen *x = &ref->v[i], *y = &b->v[i];
		if (memcmp(&x->ent, &y->ent, sizeof x->ent) || x->changed != y->changed ||
		    x->store != y->store || x->raw_len != y->raw_len || x->stored_len != y->stored_len ||
		    x->rec_flags != y->rec_flags || memcmp(x->data, y->data, x->raw_len))
			fail_msg("%s %d: block %llu differs from the reference", what, n,
				 (unsigned long long)i);
	}
}

static void test_threads_give_identical_results(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	/* several 4 MiB batches, last one partial, last block partial */
	const uint64_t size = 3 * 1024 * BS + 17 * BS + 100;
	uint8_t *d = make_source(p, size, 1);
	const int threads[] = { 1, 4, 0, 64 };
	rec ref;
	rec_init(&ref);
	cbi_pipe_stats st;
	assert_int_equal(run(p, NULL, 5, threads[0], &ref, NULL, NULL, &st, NULL), 0);
	check_full(&ref, d, size, 5);
	/* holes are not read */
	uint64_t data = 0;
	for (uint64_t i = 0; i < cbi_nblocks(size, BS); i++)
		if (kind_of(i) != K_ZERO)
			data += cbi_block_len(size, BS, i);
	assert_true(st.bytes_read >= data);
	assert_true(st.bytes_read < size);
	for (size_t t = 1; t < sizeof threads / sizeof threads[0]; t++) {
		rec r;
		rec_init(&r);
		assert_int_equal(run(p, NULL, 5, threads[t], &r, NULL, NULL, NULL, NULL), 0);
		assert_same(&ref, &r, "threads", threads[t]);
		rec_free(&r);
	}
	rec_free(&ref);
	free(d);
}

/* Write an index for the source data d as seq `seq` would have. */
static void write_parent_index(const char *path, const uint8_t *d, uint64_t size, uint32_t seq)
{
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.version = 1; /* a plain file: version 1 */
	h.block_size = BS;
	h.hash_alg = CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.level = 3; /* 1 to 22 (H7a) */
	h.source_size = size;
	h.n_blocks = cbi_nblocks(size, BS);
	h.type = seq ? CBI_INCREMENTAL : CBI_FULL;
	h.seq = seq;
	h.point_id[0] = 1;
	cbi_index_writer *w = NULL;
	assert_int_equal(cbi_index_writer_create(path, NULL, &h, NULL, &w, NULL), 0);
	for (uint64_t i = 0; i < h.n_blocks; i++) {
		cbi_idx_ent e;
		memset(&e, 0, sizeof e);
		uint32_t len = cbi_block_len(size, BS, i);
		if (cbi_is_zero(d + i * BS, len)) {
			e.flags = CBI_IDX_ZERO;
		} else {
			cbi_block_hash(d + i * BS, len, e.hash);
			e.owner = (uint32_t)(i % (seq + 1)); /* some older owner */
		}
		assert_int_equal(cbi_index_writer_add(w, &e), 0);
	}
	cbi_idx_trailer t;
	memset(&t, 0, sizeof t);
	assert_int_equal(cbi_index_writer_seal(w, &t), 0);
	assert_int_equal(cbi_index_writer_commit(w, NULL), 0);
}

static void test_incremental_against_parent(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	const uint64_t size = 64 * BS + 10;
	uint8_t *d = make_source(p, size, 0);
	const char *ip = tu_path(f->dir, "parent.cbx");
	write_parent_index(ip, d, size, 3);

	/* changes: 2 data blocks rewritten, a data block zeroed, a zero block
	 * filled, a block rewritten with the same bytes, the short last block */
	uint8_t b[BS];
	tu_fill_random(b, BS, 1000);
	tu_pwrite(p, b, BS, 2 * BS);
	tu_pwrite(p, b, BS, 40 * BS); /* same content as block 2 now */
	memset(b, 0, BS);
	tu_pwrite(p, b, BS, 4 * BS); /* text -> zero */
	tu_fill_text(b, BS, 77);
	tu_pwrite(p, b, BS, 6 * BS); /* zero -> text */
	tu_pwrite(p, d + 8 * BS, BS, 8 * BS); /* unchanged bytes */
	tu_pwrite(p, "Z", 1, 64 * BS + 9);     /* last byte of the last block */
	const uint64_t changed[] = { 2, 4, 6, 40, 64 };

	size_t nn;
	uint8_t *now = tu_read_file(p, &nn);
	cbi_index *par = NULL;
	assert_int_equal(cbi_index_open(ip, &par, NULL), 0);
	rec r;
	rec_init(&r);
	cbi_error e;
	assert_int_equal(run(p, par, 4, 3, &r, NULL, NULL, NULL, &e), 0);
	assert_true(r.order_ok);
	assert_true(r.n == 65);
	uint64_t nchanged = 0, nstored = 0;
	for (uint64_t i = 0; i < r.n; i++) {
		const seen *s = &r.v[i];
		cbi_idx_ent pe;
		assert_int_equal(cbi_index_get(par, i, &pe), 0);
		int is_changed = 0;
		for (size_t k = 0; k < sizeof changed / sizeof changed[0]; k++)
			is_changed |= changed[k] == i;
		uint32_t len = cbi_block_len(size, BS, i);
		int zero_now = cbi_is_zero(now + i * BS, len);
		if (s->changed)
			nchanged++;
		if (s->store)
			nstored++;
		if (s->changed != is_changed)
			fail_msg("block %llu: changed=%d, want %d", (unsigned long long)i, s->changed,
				 is_changed);
		if (zero_now) {
			assert_int_equal(s->ent.flags, CBI_IDX_ZERO);
			assert_false(s->store);
		} else if (is_changed) {
			assert_true(s->store);
			assert_int_equal(s->ent.owner, 4);
			assert_memory_equal(s->data, now + i * BS, len);
		} else {
			/* unchanged: the parent's entry, owner included */
			assert_false(s->store);
			assert_memory_equal(&s->ent, &pe, sizeof pe);
		}
	}
	assert_true(nchanged == 5);
	assert_true(nstored == 4); /* the zeroed block is changed but not stored */
	cbi_index_close(par);
	rec_free(&r);
	free(now);
	free(d);
}

static void test_sink_error_stops(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	const uint64_t size = 2 * 1024 * BS + 5 * BS; /* 3 batches */
	uint8_t *d = make_source(p, size, 0);
	const int at[] = { 0, 10, 1500, 2052 };
	for (size_t k = 0; k < 4; k++) {
		rec r;
		rec_init(&r);
		r.fail_at = at[k];
		cbi_error e;
		memset(&e, 0, sizeof e);
		int rc = run(p, NULL, 0, 2, &r, NULL, NULL, NULL, &e);
		assert_int_equal(rc, -ENOSPC);
		assert_int_equal(e.code, -ENOSPC);
		assert_non_null(strstr(e.msg, "sink full"));
		assert_true(r.n == (uint64_t)at[k]); /* nothing after the failing block */
		rec_free(&r);
	}
	free(d);
}

typedef struct prog {
	int calls;
	int cancel_at; /* cancel on this call (1-based), 0: never */
	uint64_t last_done, total;
	int monotonic;
} prog;

static int progress(void *ud, uint64_t done, uint64_t total)
{
	prog *g = ud;
	g->calls++;
	if (done < g->last_done || done > total)
		g->monotonic = 0;
	g->last_done = done;
	g->total = total;
	return g->cancel_at && g->calls >= g->cancel_at;
}

static void test_progress_and_cancel(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	const uint64_t size = 3 * 1024 * BS + 1;
	uint8_t *d = make_source(p, size, 0);
	prog g = { .monotonic = 1 };
	rec r;
	rec_init(&r);
	assert_int_equal(run(p, NULL, 0, 2, &r, progress, &g, NULL, NULL), 0);
	assert_true(g.calls >= 2); /* first batch and last batch at least */
	assert_true(g.monotonic);
	assert_true(g.last_done == size);
	assert_true(g.total == size);
	rec_free(&r);

	prog c = { .cancel_at = 1, .monotonic = 1 };
	rec_init(&r);
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(run(p, NULL, 0, 2, &r, progress, &c, NULL, &e), -ECANCELED);
	assert_int_equal(e.code, -ECANCELED);
	assert_int_equal(c.calls, 1);
	assert_true(r.n < cbi_nblocks(size, BS)); /* stopped after the first batch */
	rec_free(&r);
	free(d);
}

static void test_damaged_parent_index_read_error(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	const uint64_t size = 32 * BS;
	uint8_t *d = make_source(p, size, 0);
	const char *ip = tu_path(f->dir, "parent.cbx");
	write_parent_index(ip, d, size, 0);
	cbi_index *par = NULL;
	assert_int_equal(cbi_index_open(ip, &par, NULL), 0);
	/* the file shrinks after it was opened: entries cannot be read */
	assert_int_equal(truncate(ip, 600), 0);
	rec r;
	rec_init(&r);
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = run(p, par, 1, 2, &r, NULL, NULL, NULL, &e);
	assert_true(rc < 0);
	assert_non_null(strstr(e.msg, "parent.cbx"));
	assert_true(r.n == 0);
	cbi_index_close(par);
	rec_free(&r);
	free(d);
}

/* Sparse layouts: blocks [from, to) hold data, the rest is holes of several
 * batches (1024 blocks of 4 KiB). */
#define SP_SIZE ((uint64_t)6200 * BS + 123)
typedef struct span {
	uint64_t from, to;
} span;

static uint8_t *layout(const span *sp, size_t n)
{
	uint8_t *d = calloc(1, SP_SIZE);
	assert_non_null(d);
	for (size_t k = 0; k < n; k++)
		fill_kinds(d, SP_SIZE, sp[k].from, CBI_MIN(sp[k].to, cbi_nblocks(SP_SIZE, BS)));
	return d;
}

static int is_sparse(const char *p)
{
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	return (uint64_t)st.st_blocks * 512 < SP_SIZE / 2;
}

/* Data at the start, in the middle (across a batch boundary) and at the
 * end, large holes between: a sparse file gives exactly what the same
 * bytes give dense, for 1, 2 and 4 threads, without reading the holes. */
static void test_sparse_source_same_as_dense(void **state)
{
	tu_fix *f = *state;
	const char *dp = tu_path(f->dir, "dense.img"), *sp = tu_path(f->dir, "sparse.img");
	const span data[] = { { 0, 100 }, { 2900, 3300 }, { 6100, 6201 } };
	uint8_t *d = layout(data, 3);
	write_source(dp, d, SP_SIZE, 0);
	write_source(sp, d, SP_SIZE, 1);
	if (!is_sparse(sp)) {
		free(d);
		skip(); /* this filesystem keeps no holes */
	}
	rec ref;
	rec_init(&ref);
	assert_int_equal(run(dp, NULL, 2, 1, &ref, NULL, NULL, NULL, NULL), 0);
	check_full(&ref, d, SP_SIZE, 2);
	uint64_t data_bytes = 0;
	for (uint64_t i = 0; i < cbi_nblocks(SP_SIZE, BS); i++)
		if (!cbi_is_zero(d + i * BS, cbi_block_len(SP_SIZE, BS, i)))
			data_bytes += cbi_block_len(SP_SIZE, BS, i);
	const int threads[] = { 1, 2, 4 };
	for (size_t t = 0; t < 3; t++) {
		rec r;
		rec_init(&r);
		cbi_pipe_stats st;
		assert_int_equal(run(sp, NULL, 2, threads[t], &r, NULL, NULL, &st, NULL), 0);
		assert_same(&ref, &r, "sparse, threads", threads[t]);
		assert_true(st.bytes_read >= data_bytes);
		assert_true(st.bytes_read < SP_SIZE / 4);
		rec_free(&r);
	}
	rec_free(&ref);
	free(d);
}

/* Incremental over sparse sources: data where the parent had a hole
 * (changed, stored), a hole where the parent had data (changed to a zero
 * block, nothing stored), unchanged data and unchanged holes. */
static void test_sparse_incremental(void **state)
{
	tu_fix *f = *state;
	const char *dp = tu_path(f->dir, "dense.img"), *sp = tu_path(f->dir, "sparse.img");
	const char *ip = tu_path(f->dir, "parent.cbx");
	const span was[] = { { 0, 100 }, { 2900, 3300 }, { 6100, 6201 } };
	const span now[] = { { 0, 100 }, { 1500, 1700 }, { 6100, 6201 } };
	uint8_t *a = layout(was, 3), *b = layout(now, 3);
	write_parent_index(ip, a, SP_SIZE, 3);
	write_source(dp, b, SP_SIZE, 0);
	write_source(sp, b, SP_SIZE, 1);
	if (!is_sparse(sp)) {
		free(a);
		free(b);
		skip();
	}
	cbi_index *par = NULL;
	assert_int_equal(cbi_index_open(ip, &par, NULL), 0);
	rec ref;
	rec_init(&ref);
	assert_int_equal(run(dp, par, 4, 1, &ref, NULL, NULL, NULL, NULL), 0);
	assert_true(ref.order_ok);
	uint64_t nb = cbi_nblocks(SP_SIZE, BS), to_zero = 0, to_data = 0;
	assert_true(ref.n == nb);
	for (uint64_t i = 0; i < nb; i++) {
		const seen *s = &ref.v[i];
		uint32_t len = cbi_block_len(SP_SIZE, BS, i);
		int za = cbi_is_zero(a + i * BS, len), zb = cbi_is_zero(b + i * BS, len);
		cbi_idx_ent pe;
		assert_int_equal(cbi_index_get(par, i, &pe), 0);
		if (zb) {
			assert_int_equal(s->ent.flags, CBI_IDX_ZERO);
			assert_int_equal(s->ent.owner, 0);
			assert_false(s->store);
			assert_int_equal(s->changed, !za);
			to_zero += !za;
		} else if (za) {
			assert_true(s->changed);
			assert_true(s->store);
			assert_int_equal(s->ent.owner, 4);
			assert_memory_equal(s->data, b + i * BS, len);
			to_data++;
		} else {
			assert_false(s->changed);
			assert_false(s->store);
			assert_memory_equal(&s->ent, &pe, sizeof pe);
		}
	}
	assert_true(to_zero > 300 && to_data > 150); /* both directions were exercised */
	const int threads[] = { 1, 2, 4 };
	for (size_t t = 0; t < 3; t++) {
		rec r;
		rec_init(&r);
		assert_int_equal(run(sp, par, 4, threads[t], &r, NULL, NULL, NULL, NULL), 0);
		assert_same(&ref, &r, "sparse incremental, threads", threads[t]);
		rec_free(&r);
	}
	cbi_index_close(par);
	rec_free(&ref);
	free(a);
	free(b);
}

/* A 4 GiB hole: every block a zero entry, progress from 0 to the size,
 * and a cancel in the middle of the hole stops the run. */
static void test_big_hole_progress_and_cancel(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "hole.img");
	const uint64_t size = (4ull << 30) + 5;
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	close(fd);
	uint64_t nb = cbi_nblocks(size, BS);
	prog g = { .monotonic = 1 };
	rec r;
	rec_init(&r);
	r.count_only = 1;
	cbi_pipe_stats st;
	assert_int_equal(run(p, NULL, 0, 2, &r, progress, &g, &st, NULL), 0);
	assert_true(r.order_ok);
	assert_true(r.n == nb);
	assert_true(r.zero == nb);
	assert_true(g.calls >= 2);
	assert_true(g.monotonic);
	assert_true(g.last_done == size);
	rec_free(&r);

	prog c = { .cancel_at = 1, .monotonic = 1 };
	rec_init(&r);
	r.count_only = 1;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(run(p, NULL, 0, 2, &r, progress, &c, NULL, &e), -ECANCELED);
	assert_int_equal(e.code, -ECANCELED);
	assert_int_equal(c.calls, 1);
	assert_true(r.n < nb);
	rec_free(&r);
}

/* A sparse source that shrinks after it was opened fails with a read
 * error, whether the end falls in its tail hole or in its data. */
static void test_shrunk_sparse_source(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "sparse.img");
	const span data[] = { { 0, 100 }, { 2900, 3300 } };
	const uint64_t cut[] = { 5000 * BS, 3000 * BS, 50 * BS };
	uint8_t *d = layout(data, 2);
	for (size_t k = 0; k < 3; k++) {
		write_source(p, d, SP_SIZE, 1);
		cbi_source *src = NULL;
		assert_int_equal(cbi_source_open(p, &src, NULL), 0);
		assert_int_equal(truncate(p, (off_t)cut[k]), 0);
		rec r;
		rec_init(&r);
		cbi_error e;
		memset(&e, 0, sizeof e);
		int rc = run_src(src, NULL, 0, 2, &r, NULL, NULL, NULL, &e);
		if (rc != -CBI_EREAD)
			fail_msg("cut at %llu: %d, want -CBI_EREAD", (unsigned long long)cut[k], rc);
		assert_non_null(strstr(e.msg, "sparse.img"));
		assert_true(r.n < cbi_nblocks(SP_SIZE, BS));
		cbi_source_close(src);
		rec_free(&r);
	}
	free(d);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		T(test_full_single_batch),
		T(test_threads_give_identical_results),
		T(test_incremental_against_parent),
		T(test_sink_error_stops),
		T(test_progress_and_cancel),
		T(test_damaged_parent_index_read_error),
		T(test_sparse_source_same_as_dense),
		T(test_sparse_incremental),
		T(test_big_hole_progress_and_cancel),
		T(test_shrunk_sparse_source),
	};
	return cmocka_run_group_tests_name("pipeline", tests, NULL, NULL);
}
