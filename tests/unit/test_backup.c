/* test_backup.c - cbi_backup() through the public API: full and
 * incremental counts, zero blocks, chain choice, option checks, threads,
 * cancellation, locking and the cleanup of a killed run's leftovers.
 * Restores are used to check the data (test_restore.c covers restore). */
#include "testutil.h"

#include <sys/file.h>
#include <xxhash.h>

#include "job.h"
#include "index.h"
#include "image.h"
#include "util.h"

#define BS 4096u
#define NBLK 65u
#define SIZE (64u * BS + 1000u) /* 65 blocks, the last one 1000 bytes */

typedef struct bk_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	char out[4096];   /* restore target */
	uint8_t *data;    /* current source content */
	size_t size;
} bk_fix;

static int is_zero_block_v0(uint64_t i) { return (i >= 10 && i < 20) || i == 30; }

static void set_block(bk_fix *b, uint64_t i, int zero, uint64_t seed)
{
	uint32_t len = cbi_block_len(b->size, BS, i);
	if (zero)
		memset(b->data + i * BS, 0, len);
	else
		tu_fill_text(b->data + i * BS, len, seed);
	tu_pwrite(b->src, b->data + i * BS, len, (off_t)(i * BS));
}

static int setup_bk(void **state)
{
	bk_fix *b = calloc(1, sizeof *b);
	if (!b)
		return -1;
	*state = b;
	tu_mkdtemp(b->dir, sizeof b->dir);
	snprintf(b->src, sizeof b->src, "%s/disk.img", b->dir);
	snprintf(b->dest, sizeof b->dest, "%s/dest", b->dir);
	snprintf(b->out, sizeof b->out, "%s/restored.img", b->dir);
	assert_int_equal(mkdir(b->dest, 0755), 0);
	b->size = SIZE;
	b->data = calloc(1, SIZE);
	assert_non_null(b->data);
	for (uint64_t i = 0; i < NBLK; i++)
		if (!is_zero_block_v0(i))
			tu_fill_text(b->data + i * BS, cbi_block_len(SIZE, BS, i), i);
	tu_write_file(b->src, b->data, SIZE);
	return 0;
}

static int teardown_bk(void **state)
{
	bk_fix *b = *state;
	if (b) {
		tu_rm_rf(b->dir);
		free(b->data);
		free(b);
	}
	return 0;
}

/* Restore `point` to a fresh file and compare it with want. */
static void restore_equals(bk_fix *b, const char *point, const uint8_t *want, size_t len)
{
	unlink(b->out);
	cbi_restore_result rr;
	tu_restore_ok(point, b->out, &rr);
	if (!tu_file_equals(b->out, want, len))
		fail_msg("restore of '%s' differs from the source", point);
}

static int count_point_files(const char *dest)
{
	return tu_count(dest, ".cbi", -1) + tu_count(dest, ".cbx", -1);
}

static void test_full_then_incremental(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r0, r1, r2;
	tu_backup_ok(&o, &r0);
	assert_int_equal(r0.point.seq, 0);
	assert_int_equal(r0.point.type, CBI_FULL);
	assert_true(r0.blocks_total == NBLK);
	assert_true(r0.blocks_changed == NBLK - 11);
	assert_true(r0.blocks_zero == 11);
	assert_true(r0.blocks_stored == NBLK - 11);
	assert_true(r0.point.changed_blocks == r0.blocks_changed);
	assert_true(r0.point.zero_blocks == 11);
	assert_true(r0.point.stored_blocks == r0.blocks_stored);
	assert_true(r0.point.has_image);
	assert_true(r0.point.source_size == SIZE);
	assert_int_equal(r0.point.block_size, BS);
	assert_string_equal(r0.point.host, "testhost");
	assert_string_equal(r0.point.job, "unit");
	assert_string_equal(r0.point.source_id, "test:disk0");
	assert_true(r0.bytes_read <= SIZE);
	assert_true(r0.bytes_written ==
		    (uint64_t)(tu_file_size(r0.point.file) + tu_file_size(r0.point.index_file)));
	assert_true(r0.point.stored_bytes == (uint64_t)tu_file_size(r0.point.file));
	assert_true(r0.point.index_bytes == (uint64_t)tu_file_size(r0.point.index_file));
	assert_string_equal(r0.warning, "");
	assert_int_equal(tu_count(b->dest, ".cbi", 0), 1);
	assert_int_equal(tu_count(b->dest, ".cbx", 0), 1);
	assert_int_equal(tu_count(b->dest, ".tmp", -1), 0);
	uint8_t *v0 = malloc(SIZE);
	assert_non_null(v0);
	memcpy(v0, b->data, SIZE);

	/* changes: 2 data blocks, data -> zero, zero -> data, the short last
	 * block; block 5 rewritten with identical bytes */
	set_block(b, 1, 0, 1001);
	set_block(b, 2, 0, 1002);
	set_block(b, 3, 1, 0);
	set_block(b, 10, 0, 1010);
	set_block(b, 5, 0, 5);
	set_block(b, 64, 0, 1064);
	tu_backup_ok(&o, &r1);
	assert_int_equal(r1.point.seq, 1);
	assert_int_equal(r1.point.type, CBI_INCREMENTAL);
	assert_memory_equal(r1.point.chain_id, r0.point.chain_id, 16);
	assert_memory_equal(r1.point.parent_id, r0.point.point_id, 16);
	assert_memory_equal(r1.point.parent_digest, r0.point.index_digest, 32);
	assert_true(r1.blocks_changed == 5);
	assert_true(r1.blocks_stored == 4); /* block 3 became zero: changed, not stored */
	assert_true(r1.blocks_zero == 11);  /* -10 +3 */
	assert_true(r1.blocks_total == NBLK);

	/* the index: owners and zero flags */
	cbi_index *x = NULL;
	assert_int_equal(cbi_index_open(r1.point.index_file, &x, NULL), 0);
	for (uint64_t i = 0; i < NBLK; i++) {
		cbi_idx_ent e;
		assert_int_equal(cbi_index_get(x, i, &e), 0);
		int zero = (i >= 11 && i < 20) || i == 30 || i == 3;
		if (zero) {
			assert_int_equal(e.flags, CBI_IDX_ZERO);
			continue;
		}
		assert_int_equal(e.flags, 0);
		int mine = i == 1 || i == 2 || i == 10 || i == 64;
		if (e.owner != (mine ? 1u : 0u))
			fail_msg("block %llu: owner %u", (unsigned long long)i, e.owner);
		uint8_t h[16];
		cbi_block_hash(b->data + i * BS, cbi_block_len(SIZE, BS, i), h);
		assert_memory_equal(e.hash, h, 16);
	}
	cbi_index_close(x);
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(r1.point.file, &m, NULL), 0);
	assert_true(m->trl.record_count == 4);
	cbi_image_close(m);

	/* nothing changed: an empty incremental */
	tu_backup_ok(&o, &r2);
	assert_int_equal(r2.point.seq, 2);
	assert_true(r2.blocks_changed == 0);
	assert_true(r2.blocks_stored == 0);
	assert_int_equal(cbi_image_open(r2.point.file, &m, NULL), 0);
	assert_true(m->trl.record_count == 0);
	cbi_image_close(m);

	/* every point restores to the source as it was */
	restore_equals(b, r0.point.index_file, v0, SIZE);
	restore_equals(b, r1.point.file, b->data, SIZE);
	restore_equals(b, r2.point.index_file, b->data, SIZE);
	free(v0);
}

static void test_zero_source(void **state)
{
	bk_fix *b = *state;
	/* an all-zero sparse source: nothing read, nothing stored */
	const char *z = tu_path(b->dir, "zero.img");
	int fd = open(z, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	close(fd);
	cbi_backup_opts o = tu_bopts(z, b->dest);
	o.source_id = "test:zero";
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_true(r.blocks_total == 256);
	assert_true(r.blocks_zero == 256);
	assert_true(r.blocks_stored == 0);
	assert_true(r.blocks_changed == 0);
	assert_true(r.bytes_read == 0);
	assert_true(r.blocks_read == 0);
	uint8_t *zeros = calloc(1, 1 << 20);
	assert_non_null(zeros);
	restore_equals(b, r.point.index_file, zeros, 1 << 20);

	/* a block becomes non-zero, then zero again */
	uint8_t blk[BS];
	tu_fill_text(blk, BS, 9);
	tu_pwrite(z, blk, BS, 7 * BS);
	tu_backup_ok(&o, &r);
	assert_true(r.blocks_changed == 1);
	assert_true(r.blocks_stored == 1);
	assert_true(r.blocks_zero == 255);
	memset(blk, 0, BS);
	tu_pwrite(z, blk, BS, 7 * BS);
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 2);
	assert_true(r.blocks_changed == 1);
	assert_true(r.blocks_stored == 0);
	assert_true(r.blocks_zero == 256);
	restore_equals(b, r.point.file, zeros, 1 << 20);
	free(zeros);
}

static void test_source_size_change(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_int_equal(truncate(b->src, SIZE + BS), 0);
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EMISMATCH);
	assert_int_equal(e.code, -CBI_EMISMATCH);
	assert_non_null(strstr(e.msg, "disk.img"));
	assert_int_equal(count_point_files(b->dest), 2); /* nothing new */
	assert_int_equal(tu_count(b->dest, ".tmp", -1), 0);
	/* smaller too */
	assert_int_equal(truncate(b->src, SIZE - 1), 0);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EMISMATCH);
	/* force_full starts a new chain */
	cbi_backup_result r2;
	o.force_full = 1;
	tu_backup_ok(&o, &r2);
	assert_int_equal(r2.point.seq, 0);
	assert_true(r2.point.source_size == SIZE - 1);
	/* and the next run continues it */
	o.force_full = 0;
	cbi_backup_result r3;
	tu_backup_ok(&o, &r3);
	assert_int_equal(r3.point.seq, 1);
	assert_memory_equal(r3.point.chain_id, r2.point.chain_id, 16);
}

static void test_other_disk_same_path(void **state)
{
	bk_fix *b = *state;
	/* the source path is a name (like /dev/sdb) that now means another disk:
	 * a symlink retargeted to another file of the same size */
	const char *a = tu_path(b->dir, "a.img");
	const char *c = tu_path(b->dir, "c.img");
	const char *link = tu_path(b->dir, "sdb");
	tu_write_pattern(a, SIZE, 1);
	tu_write_pattern(c, SIZE, 2);
	assert_int_equal(symlink(a, link), 0);
	cbi_backup_opts o = tu_bopts(link, b->dest);
	o.source_id = NULL; /* derived from the file: "file:<realpath>" */
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_int_equal(strncmp(r.point.source_id, "file:", 5), 0);
	assert_non_null(strstr(r.point.source_id, "a.img"));
	assert_int_equal(unlink(link), 0);
	assert_int_equal(symlink(c, link), 0);
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EMISMATCH);
	assert_non_null(strstr(e.msg, "sdb"));
	assert_int_equal(count_point_files(b->dest), 2);
	o.force_full = 1;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 0);
	assert_non_null(strstr(r.point.source_id, "c.img"));

	/* an explicit source id names the job (SPEC: host, job, source_id): a
	 * different one starts its own chain instead of failing */
	cbi_backup_opts o2 = tu_bopts(link, b->dest);
	o2.source_id = "test:other";
	cbi_backup_result r2;
	tu_backup_ok(&o2, &r2);
	assert_int_equal(r2.point.seq, 0);
	tu_backup_ok(&o2, &r2);
	assert_int_equal(r2.point.seq, 1);
}

static void test_jobs_and_force_full(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r0, r1, rj, rf;
	tu_backup_ok(&o, &r0);
	tu_backup_ok(&o, &r1);
	assert_int_equal(r1.point.seq, 1);
	/* another job of the same source: its own chain */
	o.job = "weekly";
	tu_backup_ok(&o, &rj);
	assert_int_equal(rj.point.seq, 0);
	assert_memory_not_equal(rj.point.chain_id, r0.point.chain_id, 16);
	/* force_full: a new chain, the old one stays */
	o.job = "unit";
	o.force_full = 1;
	tu_backup_ok(&o, &rf);
	assert_int_equal(rf.point.seq, 0);
	assert_int_equal(rf.point.type, CBI_FULL);
	assert_memory_not_equal(rf.point.chain_id, r0.point.chain_id, 16);
	assert_true(rf.blocks_stored == NBLK - 11);
	assert_true(tu_exists(r0.point.index_file) && tu_exists(r1.point.index_file));
	o.force_full = 0;
	cbi_backup_result rn;
	tu_backup_ok(&o, &rn);
	assert_int_equal(rn.point.seq, 1);
	assert_memory_equal(rn.point.parent_id, rf.point.point_id, 16);
	/* job NULL or "" means "default" */
	o.job = NULL;
	tu_backup_ok(&o, &rn);
	assert_string_equal(rn.point.job, "default");
	o.job = "";
	tu_backup_ok(&o, &rn);
	assert_string_equal(rn.point.job, "default");
	assert_int_equal(rn.point.seq, 1);
}

static void test_option_errors(void **state)
{
	bk_fix *b = *state;
	cbi_backup_result r;
	cbi_error e;
	const uint32_t bad_bs[] = { 1, 1000, 2048, 4095, 3 * 4096, 65536 + 1, 8u << 20, UINT32_MAX };
	for (size_t i = 0; i < sizeof bad_bs / sizeof bad_bs[0]; i++) {
		cbi_backup_opts o = tu_bopts(b->src, b->dest);
		o.block_size = bad_bs[i];
		memset(&e, 0, sizeof e);
		int rc = cbi_backup(&o, &r, &e);
		if (rc != -CBI_EUSAGE)
			fail_msg("block size %u: rc %d", bad_bs[i], rc);
		assert_int_equal(e.code, -CBI_EUSAGE);
		assert_true(strlen(e.msg) > 0);
	}
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	o.level = 23;
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);
	o.level = -1;
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);
	o = tu_bopts(b->src, b->dest);
	char longname[200];
	memset(longname, 'j', sizeof longname - 1);
	longname[sizeof longname - 1] = 0;
	longname[64] = 0;
	o.job = longname;
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);
	o = tu_bopts(b->src, b->dest);
	o.host = longname;
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);
	o = tu_bopts(b->src, b->dest);
	longname[64] = 'x';
	longname[128] = 0;
	o.source_id = longname;
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);
	o = tu_bopts(NULL, b->dest);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);
	o = tu_bopts(b->src, NULL);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EUSAGE);

	/* destination problems */
	o = tu_bopts(b->src, b->src); /* a file */
	memset(&e, 0, sizeof e);
	int rc = cbi_backup(&o, &r, &e);
	assert_int_equal(rc, -ENOTDIR);
	assert_non_null(strstr(e.msg, "disk.img"));
	o = tu_bopts(b->src, tu_path(b->dir, "missing"));
	assert_int_equal(cbi_backup(&o, &r, &e), -ENOENT);
	if (geteuid() != 0) {
		const char *ro = tu_path(b->dir, "ro");
		assert_int_equal(mkdir(ro, 0555), 0);
		o = tu_bopts(b->src, ro);
		assert_true(cbi_backup(&o, &r, &e) < 0);
	}
	/* source problems */
	o = tu_bopts(tu_path(b->dir, "nodisk"), b->dest);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "nodisk"));
	o = tu_bopts(b->dest, b->dest);
	assert_true(cbi_backup(&o, &r, &e) < 0);
	/* nothing was written by any of these */
	assert_int_equal(count_point_files(b->dest), 0);
	assert_int_equal(tu_count(b->dest, ".tmp", -1), 0);
}

static void test_block_size_of_chain_wins(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	o.block_size = 8192;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 1);
	assert_int_equal(r.point.block_size, BS);
	assert_true(strlen(r.warning) > 0);
	/* a new chain uses the new size */
	o.force_full = 1;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.block_size, 8192);
	assert_true(r.blocks_total == cbi_nblocks(SIZE, 8192));
	/* the default is CBI_DEFAULT_BLOCK_SIZE */
	o = tu_bopts(b->src, b->dest);
	o.job = "dflt";
	o.block_size = 0;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.block_size, CBI_DEFAULT_BLOCK_SIZE);
}

static void test_threads_same_result(void **state)
{
	bk_fix *b = *state;
	/* a source of several pipeline batches */
	const size_t size = 10u * 1024 * 1024 + 3 * BS + 7;
	uint8_t *d = malloc(size);
	assert_non_null(d);
	tu_fill_text(d, size, 3);
	memset(d + 2 * 1024 * 1024, 0, 1024 * 1024); /* zero region */
	tu_fill_random(d + 5 * 1024 * 1024, 256 * 1024, 4); /* incompressible region */
	const char *big = tu_path(b->dir, "big.img");
	tu_write_file(big, d, size);
	const int threads[] = { 1, 4 };
	cbi_backup_result r[2];
	char dests[2][4096];
	for (int t = 0; t < 2; t++) {
		snprintf(dests[t], sizeof dests[t], "%s/t%d", b->dir, threads[t]);
		assert_int_equal(mkdir(dests[t], 0755), 0);
		cbi_backup_opts o = tu_bopts(big, dests[t]);
		o.threads = threads[t];
		tu_backup_ok(&o, &r[t]);
	}
	assert_true(r[0].blocks_changed == r[1].blocks_changed);
	assert_true(r[0].blocks_stored == r[1].blocks_stored);
	assert_true(r[0].blocks_zero == r[1].blocks_zero);
	assert_true(r[0].blocks_zero == 256);
	assert_true(r[0].point.stored_bytes == r[1].point.stored_bytes);
	/* the indexes hold the same entries (the files differ by their ids) */
	cbi_index *x0 = NULL, *x1 = NULL;
	assert_int_equal(cbi_index_open(r[0].point.index_file, &x0, NULL), 0);
	assert_int_equal(cbi_index_open(r[1].point.index_file, &x1, NULL), 0);
	for (uint64_t i = 0; i < x0->hdr.n_blocks; i++) {
		cbi_idx_ent a, c;
		assert_int_equal(cbi_index_get(x0, i, &a), 0);
		assert_int_equal(cbi_index_get(x1, i, &c), 0);
		if (memcmp(&a, &c, sizeof a))
			fail_msg("index entry %llu differs between 1 and 4 threads", (unsigned long long)i);
	}
	cbi_index_close(x0);
	cbi_index_close(x1);
	/* and restore to the same bytes */
	for (int t = 0; t < 2; t++)
		restore_equals(b, r[t].point.index_file, d, size);
	free(d);
}

typedef struct cancel_ud {
	int calls;
	int cancel_on;
} cancel_ud;

static int cancel_cb(void *ud, uint64_t done, uint64_t total)
{
	cancel_ud *c = ud;
	assert_true(done <= total);
	return ++c->calls >= c->cancel_on;
}

static void test_progress_cancel_leaves_nothing(void **state)
{
	bk_fix *b = *state;
	/* a small source (one batch) and a large one (three batches) */
	const char *big = tu_path(b->dir, "big.img");
	tu_write_pattern(big, 9u * 1024 * 1024, 5);
	const char *srcs[] = { b->src, big };
	for (int s = 0; s < 2; s++) {
		for (int full_first = 0; full_first < 2; full_first++) {
			char dest[4096];
			snprintf(dest, sizeof dest, "%s/c%d%d", b->dir, s, full_first);
			assert_int_equal(mkdir(dest, 0755), 0);
			cbi_backup_opts o = tu_bopts(srcs[s], dest);
			cbi_backup_result r;
			if (full_first)
				tu_backup_ok(&o, &r); /* cancel an incremental */
			cancel_ud c = { 0, 1 };
			o.progress = cancel_cb;
			o.progress_ud = &c;
			cbi_error e;
			memset(&e, 0, sizeof e);
			int rc = cbi_backup(&o, &r, &e);
			assert_int_equal(rc, -ECANCELED);
			assert_int_equal(e.code, -ECANCELED);
			assert_int_equal(c.calls, 1);
			assert_int_equal(count_point_files(dest), full_first ? 2 : 0);
			assert_int_equal(tu_count(dest, ".tmp", -1), 0);
		}
	}
	/* progress without cancelling: reaches the total */
	cancel_ud c = { 0, 1 << 30 };
	cbi_backup_opts o = tu_bopts(big, b->dest);
	o.progress = cancel_cb;
	o.progress_ud = &c;
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_true(c.calls >= 1);
}

static uint64_t lock_key(const char *host, const char *sid, const char *job)
{
	char key[512];
	int n = snprintf(key, sizeof key, "%s%c%s%c%s", host, 0, sid, 0, job);
	return XXH3_64bits(key, (size_t)n);
}

/* The options of the SPEC's lock vector: host vectorhost, source id
 * vector-source, job vec. */
static cbi_backup_opts vector_opts(const bk_fix *b)
{
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	o.host = "vectorhost";
	o.source_id = "vector-source";
	o.job = "vec";
	return o;
}

static void test_lock_file(void **state)
{
	bk_fix *b = *state;
	/* SPEC known answer: host vectorhost, source id vector-source, job vec */
	assert_true(lock_key("vectorhost", "vector-source", "vec") == 0x36501e7e15f85bbdull);
	cbi_backup_opts o = vector_opts(b);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	/* one lock file for every job; no per-job file */
	const char *lock = tu_path(b->dest, ".cbimg.lock");
	assert_true(tu_exists(lock));
	assert_int_equal(tu_file_size(lock), 0);
	assert_false(tu_exists(tu_path(b->dest, ".cbimg-36501e7e15f85bbd.lock")));

	/* another holder of the job's byte: the backup refuses to fork the chain */
	int fd = open(lock, O_RDWR);
	assert_true(fd >= 0);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = CBI_JOB_LOCK_OFFSET(0x36501e7e15f85bbdull), .l_len = 1 };
	assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_ELOCKED);
	assert_int_equal(e.code, -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "vec"));
	/* a holder that marks nothing (a version before revision 2.11): no guess */
	assert_non_null(strstr(e.msg, "another cbimg holds the lock of job 'vec' of '"));
	assert_int_equal(count_point_files(b->dest), 2);
	/* another job is not blocked */
	cbi_backup_opts o2 = o;
	o2.job = "other";
	tu_backup_ok(&o2, &r);
	close(fd);
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 1);
	assert_true(tu_exists(lock)); /* never removed: no unlink-after-unlock race */

	/* an older version's lock file of the job, held: excluded too */
	const char *old = tu_path(b->dest, ".cbimg-36501e7e15f85bbd.lock");
	tu_write_file(old, "", 0);
	fd = open(old, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_ELOCKED);
	assert_true(tu_exists(old));
	assert_non_null(strstr(e.msg, "another cbimg (an older version) holds the lock of job 'vec'"));
	close(fd);
	/* not held: removed (as is another job's that nobody holds) */
	const char *old2 = tu_path(b->dest, ".cbimg-0123456789abcdef.lock");
	tu_write_file(old2, "", 0);
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 2);
	assert_false(tu_exists(old));
	assert_false(tu_exists(old2));
}

/* Who holds a job (revision 2.11): a prune's lock marks its holder byte,
 * and a backup refused meanwhile says a prune holds the job; bytes of
 * another process in the slot are read as the format says; two holders in
 * one slot, or none, give no guess. */
static void test_lock_holder(void **state)
{
	bk_fix *b = *state;
	const uint64_t key = 0x36501e7e15f85bbdull; /* vectorhost, vector-source, vec */
	/* SPEC known answers */
	assert_true(cbi_job_holder_offset(key, CBI_JOB_OP_BACKUP, 4242) == 0x736501e7e1001092ll);
	assert_true(cbi_job_holder_offset(key, CBI_JOB_OP_PRUNE, 4242) == 0x736501e7e1401092ll);
	assert_true(cbi_job_holder_offset(~0ull, CBI_JOB_OP_PRUNE, (1 << 22) - 1) < INT64_MAX);
	assert_true(cbi_job_holder_offset(0, CBI_JOB_OP_BACKUP, 0) > cbi_chain_lock_offset((const uint8_t *)
		"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"));
	assert_string_equal(cbi_job_op_name(CBI_JOB_OP_PRUNE), "prune");
	assert_int_equal(cbi_job_op_parse("backup"), CBI_JOB_OP_BACKUP);
	assert_int_equal(cbi_job_op_parse("merge"), -1);

	cbi_backup_opts o = vector_opts(b);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	int op;
	long pid;
	cbi_job_lock_holder(b->dest, key, &op, &pid);
	assert_int_equal(op, -1); /* nobody holds it */

	/* a prune holds the job (its own open file description) */
	cbi_joblock lk;
	cbi_error e;
	assert_int_equal(cbi_job_lock_op(b->dest, key, CBI_JOB_OP_PRUNE, "vec", "src", &lk, &e), 0);
	assert_true(lk.locked);
	cbi_job_lock_holder(b->dest, key, &op, &pid);
	assert_int_equal(op, CBI_JOB_OP_PRUNE);
	assert_int_equal(pid, 0); /* this process is no cbimg: its pid is not shown */
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "another cbimg is pruning job 'vec' of '"));
	assert_non_null(strstr(e.msg, b->dest));
	/* and a second prune of the job */
	cbi_joblock lk2;
	assert_int_equal(cbi_job_lock_op(b->dest, key, CBI_JOB_OP_PRUNE, "vec", "src", &lk2, &e), -CBI_ELOCKED);
	char want[4096 + 100];
	snprintf(want, sizeof want, "another cbimg is pruning job 'vec' of 'src' in '%s'", b->dest);
	assert_string_equal(e.msg, want);
	/* a second holder byte in the same slot (another job's, another pid): no guess */
	const char *lock = tu_path(b->dest, CBI_LOCK_NAME);
	int fd = open(lock, O_RDWR);
	assert_true(fd >= 0);
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
			    .l_start = cbi_job_holder_offset(key ^ 1, CBI_JOB_OP_BACKUP, 77), .l_len = 1 };
	assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
	cbi_job_lock_holder(b->dest, key, &op, &pid);
	assert_int_equal(op, -1);
	assert_int_equal(cbi_job_lock_op(b->dest, key, CBI_JOB_OP_BACKUP, "vec", "src", &lk2, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "another cbimg holds the lock of job 'vec' of 'src' in '"));
	close(fd);
	cbi_job_unlock(&lk); /* the holder byte goes with the job's byte */
	cbi_job_lock_holder(b->dest, key, &op, &pid);
	assert_int_equal(op, -1);

	/* a backup holds it, its pid read back from its holder byte's offset;
	 * a process that runs no cbimg is never named */
	fd = open(lock, O_RDWR);
	assert_true(fd >= 0);
	struct flock jl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = CBI_JOB_LOCK_OFFSET(key), .l_len = 1 };
	assert_int_equal(fcntl(fd, F_OFD_SETLK, &jl), 0);
	fl.l_start = cbi_job_holder_offset(key, CBI_JOB_OP_BACKUP, (long)getpid());
	assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
	cbi_job_lock_holder(b->dest, key, &op, &pid);
	assert_int_equal(op, CBI_JOB_OP_BACKUP);
	assert_int_equal(pid, 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "another cbimg is backing up job 'vec' of '"));
	close(fd);
	tu_backup_ok(&o, &r);
	assert_int_equal(tu_file_size(lock), 0); /* nothing written */

	/* the message's forms */
	char m[256];
	cbi_lock_refusal(m, sizeof m, CBI_JOB_OP_PRUNE, "host h, pid 7", "j", "/dev/sda", "s3://b/p");
	assert_string_equal(m, "another cbimg (host h, pid 7) is pruning job 'j' of '/dev/sda' in 's3://b/p'");
	cbi_lock_refusal(m, sizeof m, CBI_JOB_OP_BACKUP, "pid 7", "j", "/dev/sda", "/mnt");
	assert_string_equal(m, "another cbimg (pid 7) is backing up job 'j' of '/dev/sda' to '/mnt'");
	cbi_lock_refusal(m, sizeof m, -1, NULL, "j", "/dev/sda", "/mnt");
	assert_string_equal(m, "another cbimg holds the lock of job 'j' of '/dev/sda' in '/mnt'");
}

/* Something planted at the lock file's name (a symbolic link, a FIFO) is
 * refused, never followed or used: nothing is created through it. */
static void test_lock_file_not_followed(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	o.host = "vectorhost";
	o.source_id = "vector-source";
	o.job = "vec";
	cbi_backup_result r;
	cbi_error e;
	char lock[4096], target[4096];
	snprintf(lock, sizeof lock, "%s", tu_path(b->dest, CBI_LOCK_NAME));
	snprintf(target, sizeof target, "%s", tu_path(b->dir, "elsewhere"));
	assert_int_equal(symlink(target, lock), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -ELOOP);
	assert_non_null(strstr(e.msg, "symbolic link"));
	assert_false(tu_exists(target));
	assert_int_equal(count_point_files(b->dest), 0);
	assert_int_equal(unlink(lock), 0);
	assert_int_equal(mkfifo(lock, 0644), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -EINVAL);
	assert_non_null(strstr(e.msg, "not a regular file"));
	assert_int_equal(count_point_files(b->dest), 0);
	assert_int_equal(unlink(lock), 0);
	tu_backup_ok(&o, &r);
}

/* Warnings come as a list, one each, and joined for older callers. */
static void test_warnings_list(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.n_warnings, 0);
	assert_string_equal(r.warning, "");
	o.block_size = 2 * BS;           /* ignored by an existing chain */
	o.hash_alg = CBI_HASH_SHA256_128; /* likewise */
	tu_backup_ok(&o, &r);
	assert_int_equal(r.n_warnings, 2);
	assert_non_null(strstr(r.warnings[0], "--block-size"));
	assert_null(strstr(r.warnings[0], "--hash")); /* one warning each (they hold "; " themselves) */
	assert_non_null(strstr(r.warnings[1], "--hash"));
	char joined[1100];
	snprintf(joined, sizeof joined, "%s; %s", r.warnings[0], r.warnings[1]);
	assert_string_equal(r.warning, joined);
}

static void test_leftovers_of_killed_run(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r0, r1, r2;
	tu_backup_ok(&o, &r0);
	tu_backup_ok(&o, &r1);
	/* a crash between the two renames of seq 1: its image without index */
	assert_int_equal(unlink(r1.point.index_file), 0);
	/* an orphan image of another job is not ours to remove */
	cbi_backup_opts oj = tu_bopts(b->src, b->dest);
	oj.job = "otherjob";
	cbi_backup_result rj;
	tu_backup_ok(&oj, &rj);
	assert_int_equal(unlink(rj.point.index_file), 0);
	/* temporary files: ours (tagged with our key), another job's, untagged */
	char ours[512], theirs[512];
	snprintf(ours, sizeof ours, ".cbimg-%016llx-99999.x_full0000_1.cbi.tmp",
		 (unsigned long long)lock_key("testhost", "test:disk0", "unit"));
	snprintf(theirs, sizeof theirs, ".cbimg-%016llx-99999.x_full0000_1.cbi.tmp",
		 (unsigned long long)lock_key("testhost", "test:disk0", "otherjob"));
	tu_write_file(tu_path(b->dest, ours), "partial", 7);
	tu_write_file(tu_path(b->dest, theirs), "partial", 7);
	tu_write_file(tu_path(b->dest, ".someone-else.tmp"), "x", 1);

	tu_backup_ok(&o, &r2);
	assert_int_equal(r2.point.seq, 1); /* builds on seq 0 again */
	assert_memory_equal(r2.point.parent_id, r0.point.point_id, 16);
	assert_false(tu_exists(r1.point.file));          /* our orphan: removed */
	assert_false(tu_exists(tu_path(b->dest, ours))); /* our temp: removed */
	assert_true(tu_exists(tu_path(b->dest, theirs)));
	assert_true(tu_exists(tu_path(b->dest, ".someone-else.tmp")));
	assert_true(tu_exists(rj.point.file));
	assert_true(tu_exists(r0.point.file) && tu_exists(r0.point.index_file));
}

static void test_damaged_parent_index_refused(void **state)
{
	bk_fix *b = *state;
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	cbi_backup_result r0, r;
	tu_backup_ok(&o, &r0);
	/* an entry byte: the structure is fine, the digest is not */
	tu_flip_byte(r0.point.index_file, CBI_HDR_SIZE + 5 * CBI_IDX_ENT_SIZE + 1, 0x01);
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_backup(&o, &r, &e);
	assert_int_equal(rc, -CBI_EDAMAGED);
	assert_non_null(strstr(e.msg, r0.point.index_file));
	assert_int_equal(count_point_files(b->dest), 2);
	assert_int_equal(tu_count(b->dest, ".tmp", -1), 0);
	o.force_full = 1;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 0);
}

/* The library and the CLI accept the same zstd levels, 1 to CBI_MAX_LEVEL
 * (19): zstd's "--ultra" levels 20 to 22 are refused before anything is
 * written; 19 works. */
static void test_level_range(void **state)
{
	bk_fix *b = *state;
	cbi_backup_result r;
	cbi_error e;
	assert_int_equal(CBI_MAX_LEVEL, 19);
	for (int level = 20; level <= 22; level++) {
		cbi_backup_opts o = tu_bopts(b->src, b->dest);
		o.level = level;
		memset(&e, 0, sizeof e);
		int rc = cbi_backup(&o, &r, &e);
		if (rc != -CBI_EUSAGE)
			fail_msg("level %d: rc %d (%s), want -CBI_EUSAGE", level, rc, e.msg);
		assert_non_null(strstr(e.msg, "1..19"));
		assert_int_equal(tu_count(b->dest, ".cbx", 0), 0);
	}
	cbi_backup_opts o = tu_bopts(b->src, b->dest);
	o.level = CBI_MAX_LEVEL;
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_bk, teardown_bk)
	const struct CMUnitTest tests[] = {
		T(test_full_then_incremental),
		T(test_zero_source),
		T(test_source_size_change),
		T(test_other_disk_same_path),
		T(test_jobs_and_force_full),
		T(test_option_errors),
		T(test_level_range),
		T(test_block_size_of_chain_wins),
		T(test_threads_same_result),
		T(test_progress_cancel_leaves_nothing),
		T(test_lock_file),
		T(test_lock_holder),
		T(test_lock_file_not_followed),
		T(test_warnings_list),
		T(test_leftovers_of_killed_run),
		T(test_damaged_parent_index_refused),
	};
	return cmocka_run_group_tests_name("backup", tests, NULL, NULL);
}
