/* test_liveread.c - the read of a backup under a snapshot mode
 * (cbi_live_read), with a stand-in tracer (wtrace.h) defined here: blocks
 * "written during the read" (changed in the source file when the tracer is
 * asked for them) must reach the sink once each, in block order, with their
 * new content; a trace that lost events must make every block be read again;
 * --allow-inconsistent's second read counts the blocks that changed. */
#include "testutil.h"

#include "format.h"
#include "liveread.h"
#include "source.h"
#include "util.h"
#include "wtrace.h"

#define BS 4096u
#define NB 300u

/* ------------------------------------------------- the stand-in tracer */

static struct {
	const char *src;          /* the source file, written to in collect */
	const uint64_t *blocks;   /* blocks "written during the read" */
	size_t n;
	int complete;
	int started, stopped, collected;
	uint8_t fill;             /* their new content */
} fake;

struct cbi_wtrace {
	int dummy;
};

int cbi_wtrace_usable(const char *devpath, cbi_error *err) { return 0; }

int cbi_wtrace_start(const char *devpath, uint32_t buf_kib, cbi_wtrace **out, cbi_error *err)
{
	static cbi_wtrace t;
	fake.started++;
	*out = &t;
	return 0;
}

int cbi_wtrace_collect(cbi_wtrace *t, uint32_t bs, uint64_t n_blocks, uint8_t *touched, uint64_t *n_marked,
		       int *complete, cbi_error *err)
{
	uint8_t buf[BS];
	memset(buf, fake.fill, sizeof buf);
	fake.collected++;
	*n_marked = 0;
	for (size_t i = 0; i < fake.n; i++) {
		/* the write happened during the read: the main run read the old bytes */
		tu_pwrite(fake.src, buf, BS, (off_t)(fake.blocks[i] * BS));
		if (!((touched[fake.blocks[i] >> 3] >> (fake.blocks[i] & 7)) & 1)) {
			touched[fake.blocks[i] >> 3] |= (uint8_t)(1u << (fake.blocks[i] & 7));
			(*n_marked)++;
		}
	}
	*complete = fake.complete;
	return 0;
}

void cbi_wtrace_stop(cbi_wtrace *t) { fake.stopped += t != NULL; }

/* ------------------------------------------------------------ the sink */

typedef struct seen {
	uint64_t n, next;
	int order_ok;
	uint8_t hash[NB][16];
	int zero[NB];
} seen;

static int sink(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err)
{
	seen *s = ud;
	if (block != s->next || block >= NB)
		s->order_ok = 0;
	s->next = block + 1;
	s->n++;
	if (block < NB) {
		memcpy(s->hash[block], b->ent.hash, 16);
		s->zero[block] = !!(b->ent.flags & CBI_IDX_ZERO);
	}
	return 0;
}

static void hash_of(uint8_t fill, uint8_t out[16])
{
	uint8_t buf[BS];
	memset(buf, fill, sizeof buf);
	assert_int_equal(cbi_hash_block_spec(NULL, NULL, buf, sizeof buf, out), 0);
}

static void make_src(const char *path)
{
	uint8_t *d = malloc((size_t)NB * BS);
	assert_non_null(d);
	for (uint64_t i = 0; i < NB; i++)
		memset(d + i * BS, (int)(i % 200) + 1, BS); /* never zero, never 0xEE */
	tu_write_file(path, d, (size_t)NB * BS);
	free(d);
}

static int run_live(const char *path, int mode, int check, seen *s, cbi_live_stats *ls, const char *dir)
{
	cbi_source *src = NULL;
	assert_int_equal(cbi_source_open(path, &src, NULL), 0);
	cbi_snap *snap = cbi_snap_fixed(mode, path);
	assert_non_null(snap);
	memset(s, 0, sizeof *s);
	s->order_ok = 1;
	cbi_pipe_cfg c = { .src = src, .block_size = BS, .level = 1, .threads = 2, .sink = sink, .sink_ud = s };
	cbi_pipe_stats ps;
	memset(&ps, 0, sizeof ps);
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_live_read(snap, &c, check, dir, &ps, ls, &e);
	char w[512];
	assert_int_equal(cbi_snap_end(snap, w, sizeof w), 0);
	cbi_source_close(src);
	return rc;
}

/* Blocks written during the read replace what the main run read; the rest
 * is as read; every block once, in order; the tracer stopped. */
static void test_trace_rereads_written_blocks(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	make_src(p);
	static const uint64_t w[] = { 0, 7, 8, 150, 299 };
	memset(&fake, 0, sizeof fake);
	fake.src = p;
	fake.blocks = w;
	fake.n = 5;
	fake.complete = 1;
	fake.fill = 0xEE;
	seen *s = calloc(1, sizeof *s);
	cbi_live_stats ls;
	assert_int_equal(run_live(p, CBI_SNAP_TRACE, 0, s, &ls, f->dir), 0);
	assert_int_equal(fake.started, 1);
	assert_int_equal(fake.collected, 1);
	assert_int_equal(fake.stopped, 1);
	assert_true(s->order_ok);
	assert_int_equal(s->n, NB);
	assert_int_equal(ls.blocks_reread, 5);
	assert_false(ls.trace_incomplete);
	uint8_t hn[16], ho[16];
	hash_of(0xEE, hn);
	for (uint64_t i = 0; i < NB; i++) {
		int written = i == 0 || i == 7 || i == 8 || i == 150 || i == 299;
		hash_of((uint8_t)(i % 200 + 1), ho);
		if (memcmp(s->hash[i], written ? hn : ho, 16))
			fail_msg("block %llu: wrong hash (written %d)", (unsigned long long)i, written);
	}
	assert_int_equal(tu_count(f->dir, ".tmp", 1), 0); /* no spool left behind */
	free(s);
}

/* Nothing written: nothing re-read, the main run's blocks as they were. */
static void test_trace_nothing_written(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	make_src(p);
	memset(&fake, 0, sizeof fake);
	fake.src = p;
	fake.complete = 1;
	seen *s = calloc(1, sizeof *s);
	cbi_live_stats ls;
	assert_int_equal(run_live(p, CBI_SNAP_TRACE, 0, s, &ls, f->dir), 0);
	assert_true(s->order_ok);
	assert_int_equal(s->n, NB);
	assert_int_equal(ls.blocks_reread, 0);
	uint8_t h[16];
	hash_of(42 % 200 + 1, h);
	assert_memory_equal(s->hash[42], h, 16);
	free(s);
}

/* A trace that lost events: every block is read again (frozen), so even a
 * write the tracer did not report is in the image. */
static void test_trace_incomplete_reads_all(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	make_src(p);
	static const uint64_t w[] = { 3 };
	memset(&fake, 0, sizeof fake);
	fake.src = p;
	fake.blocks = w;
	fake.n = 1;
	fake.complete = 0;
	fake.fill = 0xEE;
	seen *s = calloc(1, sizeof *s);
	cbi_live_stats ls;
	assert_int_equal(run_live(p, CBI_SNAP_TRACE, 0, s, &ls, f->dir), 0);
	assert_true(ls.trace_incomplete);
	assert_int_equal(ls.blocks_reread, NB);
	assert_true(s->order_ok);
	assert_int_equal(s->n, NB);
	uint8_t h[16];
	hash_of(0xEE, h);
	assert_memory_equal(s->hash[3], h, 16);
	free(s);
}

/* --allow-inconsistent: a second read, compared (a source nothing writes
 * to: 0 changed); without it, no count (-1). The changes counted on a live
 * file system are checked end to end (t_snapshot.sh). */
static void test_checked_read_counts(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "src.img");
	make_src(p);
	seen *s = calloc(1, sizeof *s);
	cbi_live_stats ls;
	assert_int_equal(run_live(p, CBI_SNAP_NONE, 1, s, &ls, f->dir), 0);
	assert_int_equal(ls.changed_during, 0);
	assert_int_equal(s->n, NB);
	assert_true(s->order_ok);
	assert_int_equal(run_live(p, CBI_SNAP_NONE, 0, s, &ls, f->dir), 0);
	assert_int_equal(ls.changed_during, -1);
	free(s);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		T(test_trace_rereads_written_blocks),
		T(test_trace_nothing_written),
		T(test_trace_incomplete_reads_all),
		T(test_checked_read_counts),
	};
	return cmocka_run_group_tests_name("liveread", tests, NULL, NULL);
}
