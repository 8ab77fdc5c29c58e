/* test_restore.c - cbi_restore(): new sparse files, overwrite rules,
 * changed-only, damage handling, and the reference vectors. */
#include "testutil.h"

#include <openssl/evp.h>

#include "format.h"
#include "image.h"
#include "util.h"

#define BS 4096u

typedef struct rs_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	uint8_t *data;
	size_t size;
	cbi_backup_result full, incr;
	uint8_t *v0; /* source at the full */
} rs_fix;

/* 1 MiB + 123 bytes: text, a zero region, random blocks. */
static int setup_rs(void **state)
{
	rs_fix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	f->size = (1u << 20) + 123;
	f->data = malloc(f->size);
	f->v0 = malloc(f->size);
	assert_non_null(f->data);
	assert_non_null(f->v0);
	tu_fill_text(f->data, f->size, 1);
	memset(f->data + 64 * BS, 0, 64 * BS);           /* blocks 64..127 zero */
	tu_fill_random(f->data + 200 * BS, 8 * BS, 2);   /* incompressible */
	tu_write_file(f->src, f->data, f->size);
	memcpy(f->v0, f->data, f->size);
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	tu_backup_ok(&o, &f->full);
	/* incremental: 3 blocks change */
	uint8_t b[BS];
	tu_fill_random(b, BS, 77);
	memcpy(f->data + 3 * BS, b, BS);
	memset(f->data + 150 * BS, 0, BS);
	memcpy(f->data + 70 * BS, b, BS); /* inside the zero region */
	tu_write_file(f->src, f->data, f->size);
	tu_backup_ok(&o, &f->incr);
	assert_true(f->incr.blocks_changed == 3);
	return 0;
}

static int teardown_rs(void **state)
{
	rs_fix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f->data);
		free(f->v0);
		free(f);
	}
	return 0;
}

static cbi_restore_opts ropts(const char *point, const char *target)
{
	cbi_restore_opts o;
	memset(&o, 0, sizeof o);
	o.point = point;
	o.target = target;
	o.threads = 2;
	return o;
}

static void test_new_file_exact(void **state)
{
	rs_fix *f = *state;
	const char *t0 = tu_path(f->dir, "r0.img");
	const char *t1 = tu_path(f->dir, "r1.img");
	cbi_restore_opts o = ropts(f->full.point.index_file, t0);
	cbi_restore_result r;
	cbi_error e;
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(tu_file_equals(t0, f->v0, f->size));
	uint64_t nb = cbi_nblocks(f->size, BS);
	assert_true(r.blocks_total == nb);
	/* zero blocks of a new file are holes: skipped, not written */
	assert_true(r.blocks_written == nb - 64);
	assert_true(r.blocks_skipped == 64);
	assert_true(r.bytes_written == f->size - 64 * BS);
	/* from the image file of the incremental: the whole chain is used */
	o = ropts(f->incr.point.file, t1);
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(tu_file_equals(t1, f->data, f->size));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

static void test_sparse_new_file(void **state)
{
	rs_fix *f = *state;
	/* an all-zero source of 16 MiB restores to a file without blocks */
	const char *z = tu_path(f->dir, "zero.img");
	int fd = open(z, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 16 << 20), 0);
	close(fd);
	cbi_backup_opts bo = tu_bopts(z, f->dest);
	bo.source_id = "test:zero";
	cbi_backup_result br;
	tu_backup_ok(&bo, &br);
	const char *t = tu_path(f->dir, "zero-restored.img");
	cbi_restore_opts o = ropts(br.point.index_file, t);
	cbi_restore_result r;
	assert_int_equal(cbi_restore(&o, &r, NULL), 0);
	struct stat st;
	assert_int_equal(stat(t, &st), 0);
	assert_int_equal(st.st_size, 16 << 20);
	assert_true(st.st_blocks <= 8); /* at most 4 KiB allocated */
	assert_true(r.blocks_written == 0);
	assert_true(r.bytes_written == 0);
	size_t n;
	uint8_t *b = tu_read_file(t, &n);
	assert_true(cbi_is_zero(b, n));
	free(b);

	/* the partly-zero point: its zero run is a hole too */
	const char *t2 = tu_path(f->dir, "partly.img");
	o = ropts(f->full.point.index_file, t2);
	assert_int_equal(cbi_restore(&o, &r, NULL), 0);
	assert_int_equal(stat(t2, &st), 0);
	assert_true((uint64_t)st.st_blocks * 512 <= f->size - 64 * BS + 64 * 1024);
}

static void test_existing_target(void **state)
{
	rs_fix *f = *state;
	const char *t = tu_path(f->dir, "existing.img");
	uint8_t old[5000];
	memset(old, 'o', sizeof old);
	tu_write_file(t, old, sizeof old);
	cbi_restore_opts o = ropts(f->incr.point.index_file, t);
	cbi_restore_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EEXISTS);
	assert_int_equal(e.code, -CBI_EEXISTS);
	assert_non_null(strstr(e.msg, "existing.img"));
	assert_true(tu_file_equals(t, old, sizeof old)); /* untouched */
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);

	o.force = 1;
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(tu_file_equals(t, f->data, f->size)); /* grown to the size */
	/* over a larger file full of other data: truncated, holes zeroed */
	size_t big = f->size * 2;
	uint8_t *junk = malloc(big);
	assert_non_null(junk);
	memset(junk, 0xa5, big);
	tu_write_file(t, junk, big);
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(tu_file_equals(t, f->data, f->size));
	free(junk);

	/* a directory is not a target */
	o.target = f->dest;
	assert_true(cbi_restore(&o, &r, &e) < 0);
	/* a target in a missing directory */
	o.target = tu_path(f->dir, "no/such/file.img");
	assert_true(cbi_restore(&o, &r, &e) < 0);
	/* missing arguments */
	o = ropts(NULL, t);
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EUSAGE);
	o = ropts(f->incr.point.file, NULL);
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EUSAGE);
	/* a point that does not exist, or a file that is not a point */
	o = ropts(tu_path(f->dest, "none.cbx"), tu_path(f->dir, "x.img"));
	assert_int_equal(cbi_restore(&o, &r, &e), -ENOENT);
	o = ropts(f->src, tu_path(f->dir, "x.img"));
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EFORMAT);
	assert_false(tu_exists(tu_path(f->dir, "x.img")));
}

static void test_changed_only(void **state)
{
	rs_fix *f = *state;
	const char *t = tu_path(f->dir, "copy.img");
	cbi_restore_result r;
	tu_restore_ok(f->full.point.index_file, t, &r);
	assert_true(tu_file_equals(t, f->v0, f->size));

	/* changed-only overwrites like any restore: it needs force */
	cbi_restore_opts o = ropts(f->incr.point.index_file, t);
	o.changed_only = 1;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EEXISTS);
	assert_true(tu_file_equals(t, f->v0, f->size));

	/* bring the copy to the incremental: exactly the 3 changed blocks */
	o.force = 1;
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	uint64_t nb = cbi_nblocks(f->size, BS);
	assert_true(r.blocks_total == nb);
	if (r.blocks_written != 3)
		fail_msg("changed-only wrote %llu blocks, want 3", (unsigned long long)r.blocks_written);
	assert_true(r.blocks_skipped == nb - 3);
	assert_true(tu_file_equals(t, f->data, f->size));

	/* nothing to do the second time */
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(r.blocks_written == 0);
	assert_true(r.bytes_written == 0);

	/* local damage: data block changed, zero block filled, the short last
	 * block changed, a data block zeroed */
	uint8_t junk[BS];
	memset(junk, 0x5a, BS);
	tu_pwrite(t, junk, BS, 9 * BS);
	tu_pwrite(t, junk, BS, 100 * BS);
	tu_pwrite(t, junk, 10, f->size - 10);
	memset(junk, 0, BS);
	tu_pwrite(t, junk, BS, 20 * BS);
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(r.blocks_written == 4);
	assert_true(tu_file_equals(t, f->data, f->size));

	/* back to the full from the incremental's state */
	o.point = f->full.point.file;
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(r.blocks_written == 3);
	assert_true(tu_file_equals(t, f->v0, f->size));

	/* changed-only needs an existing target */
	o.target = tu_path(f->dir, "missing.img");
	assert_int_equal(cbi_restore(&o, &r, &e), -ENOENT);
	assert_false(tu_exists(o.target));
}

static void test_corrupted_image_new_target(void **state)
{
	rs_fix *f = *state;
	/* damage a record of the full (block 5, compressed) */
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(f->full.point.file, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, 5, &te), 0);
	cbi_image_close(m);
	tu_flip_byte(f->full.point.file, te.offset + CBI_REC_HDR_SIZE + te.stored_len / 2, 0xff);

	const char *targets[] = { f->full.point.index_file, f->incr.point.index_file };
	for (int k = 0; k < 2; k++) {
		const char *t = tu_path(f->dir, "new.img");
		cbi_restore_opts o = ropts(targets[k], t);
		cbi_restore_result r;
		cbi_error e;
		memset(&e, 0, sizeof e);
		int rc = cbi_restore(&o, &r, &e);
		assert_true(rc < 0);
		if (!cbi_is_damage(rc))
			fail_msg("restore of a damaged image: %d (%s) is not a damage code", rc, e.msg);
		assert_int_equal(e.code, rc);
		assert_non_null(strstr(e.msg, "block 5"));
		/* nothing under the target name, no temporary left */
		assert_false(tu_exists(t));
		assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
	}
	/* the point's index damaged instead (entry hash of block 3 of seq 1):
	 * the block read does not match the index */
	tu_flip_byte(f->full.point.file, te.offset + CBI_REC_HDR_SIZE + te.stored_len / 2, 0xff);
	tu_flip_byte(f->incr.point.index_file, CBI_HDR_SIZE + 3 * CBI_IDX_ENT_SIZE, 0x01);
	cbi_restore_opts o = ropts(f->incr.point.index_file, tu_path(f->dir, "new2.img"));
	cbi_restore_result r;
	int rc = cbi_restore(&o, &r, NULL);
	assert_true(cbi_is_damage(rc));
	assert_false(tu_exists(o.target));
}

static void test_missing_parent_image(void **state)
{
	rs_fix *f = *state;
	assert_int_equal(unlink(f->full.point.file), 0);
	const char *t = tu_path(f->dir, "out.img");
	cbi_restore_opts o = ropts(f->incr.point.index_file, t);
	cbi_restore_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_restore(&o, &r, &e);
	assert_int_equal(rc, -CBI_ENOPARENT);
	assert_false(tu_exists(t));
	/* index of the full gone too: the chain cannot be resolved */
	assert_int_equal(unlink(f->full.point.index_file), 0);
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_ENOPARENT);
	/* an image whose index is gone is not a point */
	assert_int_equal(unlink(f->incr.point.index_file), 0);
	o.point = f->incr.point.file;
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_ENOPARENT);
	assert_false(tu_exists(t));
}

static int cancel_now(void *ud, uint64_t done, uint64_t total)
{
	(void)done;
	(void)total;
	++*(int *)ud;
	return 1;
}

static void test_cancel(void **state)
{
	rs_fix *f = *state;
	const char *t = tu_path(f->dir, "c.img");
	int calls = 0;
	cbi_restore_opts o = ropts(f->incr.point.index_file, t);
	o.progress = cancel_now;
	o.progress_ud = &calls;
	cbi_restore_result r;
	cbi_error e;
	assert_int_equal(cbi_restore(&o, &r, &e), -ECANCELED);
	assert_int_equal(calls, 1);
	assert_false(tu_exists(t));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* ------------------------------------------------- worker threads */

/* A source of several restore batches (a batch is 4 MiB of blocks): 18 MiB
 * + 123 bytes of 4 KiB blocks, text, random blocks, zero runs (one across a
 * batch boundary) and a short last block; encrypted or not. */
#define MT_SIZE ((18u << 20) + 123u)

typedef struct mt_chain {
	char src[4096], dest[4096];
	uint8_t *data;
	cbi_backup_result full;
} mt_chain;

static int mt_pass(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	(void)what;
	(void)confirm;
	size_t n = strlen(ud);
	assert_true(n < bufsz);
	memcpy(buf, ud, n + 1);
	return (int)n;
}

static void mt_make(rs_fix *f, mt_chain *c, int encrypt)
{
	snprintf(c->src, sizeof c->src, "%s/mt%d.img", f->dir, encrypt);
	snprintf(c->dest, sizeof c->dest, "%s/mtdest%d", f->dir, encrypt);
	assert_int_equal(mkdir(c->dest, 0755), 0);
	c->data = malloc(MT_SIZE);
	assert_non_null(c->data);
	tu_fill_text(c->data, MT_SIZE, 5);
	memset(c->data + 1000 * BS, 0, 100 * BS);          /* blocks 1000..1099 */
	memset(c->data + 2000 * BS, 0, 100 * BS);          /* 2000..2099: across batches 1 and 2 */
	tu_fill_random(c->data + 3000 * BS, 40 * BS, 9);   /* stored raw */
	tu_write_file(c->src, c->data, MT_SIZE);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	o.source_id = encrypt ? "test:mt-enc" : "test:mt";
	if (encrypt) {
		o.encrypt = 1;
		o.kdf = (cbi_kdf_params){ 12, 8, 1 };
		o.pass = mt_pass;
		o.pass_ud = "mt secret";
	}
	tu_backup_ok(&o, &c->full);
}

static cbi_restore_opts mt_ropts(const mt_chain *c, const char *target, int threads)
{
	cbi_restore_opts o = ropts(c->full.point.index_file, target);
	o.threads = threads;
	o.pass = mt_pass;
	o.pass_ud = "mt secret";
	o.state_dir = c->dest; /* holds no state: keeps /var/lib/cbimg out of it */
	return o;
}

static void test_threads_identical(void **state)
{
	rs_fix *f = *state;
	for (int enc = 0; enc < 2; enc++) {
		mt_chain c;
		mt_make(f, &c, enc);
		uint64_t nb = cbi_nblocks(MT_SIZE, BS);
		const int threads[] = { 1, 2, 4, 0 };
		cbi_restore_result r0;
		memset(&r0, 0, sizeof r0);
		for (int k = 0; k < 4; k++) {
			char name[64];
			snprintf(name, sizeof name, "mt%d-t%d.img", enc, threads[k]);
			const char *t = tu_path(f->dir, name);
			cbi_restore_opts o = mt_ropts(&c, t, threads[k]);
			cbi_restore_result r;
			cbi_error e;
			memset(&e, 0, sizeof e);
			int rc = cbi_restore(&o, &r, &e);
			if (rc)
				fail_msg("threads %d: restore = %d: %s", threads[k], rc, e.msg);
			if (!tu_file_equals(t, c.data, MT_SIZE))
				fail_msg("threads %d (encrypted %d): restored file differs", threads[k], enc);
			/* the 200 zero blocks are holes of the new file */
			assert_true(r.blocks_total == nb);
			assert_true(r.blocks_written == nb - 200);
			assert_true(r.blocks_skipped == 200);
			assert_true(r.bytes_written == MT_SIZE - 200 * BS);
			struct stat st;
			assert_int_equal(stat(t, &st), 0);
			assert_true((uint64_t)st.st_blocks * 512 <= MT_SIZE - 200 * BS + 64 * 1024);
			if (k)
				assert_memory_equal(&r0, &r, offsetof(cbi_restore_result, seconds));
			r0 = r;
			unlink(t);
		}
		assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
		free(c.data);
	}
}

static void test_threads_damaged_record(void **state)
{
	rs_fix *f = *state;
	for (int enc = 0; enc < 2; enc++) {
		mt_chain c;
		mt_make(f, &c, enc);
		/* damage two records in different batches: the first one is named,
		 * however many workers there are and whichever finishes first */
		cbi_image *m = NULL;
		cbi_tab_ent te2, te3;
		assert_int_equal(cbi_image_open(c.full.point.file, &m, NULL), 0);
		assert_int_equal(cbi_image_find(m, 2500, &te2), 0);
		assert_int_equal(cbi_image_find(m, 3500, &te3), 0);
		cbi_image_close(m);
		tu_flip_byte(c.full.point.file, te3.offset + CBI_REC_HDR_SIZE + te3.stored_len / 2, 0x10);
		tu_flip_byte(c.full.point.file, te2.offset + CBI_REC_HDR_SIZE + te2.stored_len / 2, 0x10);
		const int threads[] = { 1, 2, 4 };
		for (int k = 0; k < 3; k++) {
			const char *t = tu_path(f->dir, "dmg.img");
			cbi_restore_opts o = mt_ropts(&c, t, threads[k]);
			cbi_restore_result r;
			cbi_error e;
			memset(&e, 0, sizeof e);
			int rc = cbi_restore(&o, &r, &e);
			if (!cbi_is_damage(rc))
				fail_msg("threads %d: damaged record: %d (%s) is not a damage code", threads[k], rc,
					 e.msg);
			assert_int_equal(rc, enc ? -CBI_EAUTH : -CBI_EDAMAGED);
			assert_int_equal(e.code, rc);
			if (!strstr(e.msg, "block 2500:") || !strstr(e.msg, c.full.point.file))
				fail_msg("threads %d: message does not name block 2500 of the image: %s", threads[k],
					 e.msg);
			/* nothing under the target name, no temporary left */
			assert_false(tu_exists(t));
			assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
		}
		free(c.data);
	}
}

static void test_threads_changed_only(void **state)
{
	rs_fix *f = *state;
	mt_chain c;
	mt_make(f, &c, 0);
	const char *t = tu_path(f->dir, "mtco.img");
	const int threads[] = { 1, 2, 4 };
	for (int k = 0; k < 3; k++) {
		cbi_restore_result r;
		tu_restore_ok(c.full.point.index_file, t, &r);
		cbi_restore_opts o = mt_ropts(&c, t, threads[k]);
		o.changed_only = 1;
		o.force = 1;
		cbi_error e;
		memset(&e, 0, sizeof e);
		assert_int_equal(cbi_restore(&o, &r, &e), 0);
		assert_true(r.blocks_written == 0 && r.bytes_written == 0);
		/* local damage in every batch: data blocks changed (one at a
		 * batch's start, one at its end), zero blocks filled, a data
		 * block zeroed, the short last block changed */
		uint8_t junk[BS];
		memset(junk, 0x5a, BS);
		const uint64_t changed[] = { 7, 1023, 1024, 1050, 2050, 2100, 3010, 4095 };
		for (size_t q = 0; q < sizeof changed / sizeof *changed; q++)
			tu_pwrite(t, junk, BS, changed[q] * BS);
		tu_pwrite(t, junk, 10, MT_SIZE - 10);
		memset(junk, 0, BS);
		tu_pwrite(t, junk, BS, 3333 * BS);
		assert_int_equal(cbi_restore(&o, &r, &e), 0);
		if (r.blocks_written != 10)
			fail_msg("threads %d: changed-only wrote %llu blocks, want 10", threads[k],
				 (unsigned long long)r.blocks_written);
		assert_true(r.blocks_skipped == cbi_nblocks(MT_SIZE, BS) - 10);
		assert_true(tu_file_equals(t, c.data, MT_SIZE));
	}
	free(c.data);
}

/* A target on a file system that may refuse direct I/O (tmpfs in
 * /dev/shm): restore falls back to buffered writes, same result. */
static void test_threads_tmpfs_target(void **state)
{
	rs_fix *f = *state;
	char dir[64] = "/dev/shm/cbimg-unit-XXXXXX";
	if (!mkdtemp(dir)) {
		print_message("skipped: no /dev/shm\n");
		skip();
	}
	mt_chain c;
	mt_make(f, &c, 0);
	char t[128];
	snprintf(t, sizeof t, "%s/out.img", dir);
	cbi_restore_opts o = mt_ropts(&c, t, 2);
	cbi_restore_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_restore(&o, &r, &e);
	int same = !rc && tu_file_equals(t, c.data, MT_SIZE);
	unlink(t);
	rmdir(dir);
	free(c.data);
	if (rc)
		fail_msg("restore to tmpfs = %d: %s", rc, e.msg);
	assert_true(same);
	assert_true(r.bytes_written == MT_SIZE - 200 * BS);
}

/* changed-only reads an image only for blocks that differ: a missing image
 * is no error while the target holds its blocks, and is reported, naming
 * it, once one of them differs. */
static void test_changed_only_missing_image(void **state)
{
	rs_fix *f = *state;
	const char *t = tu_path(f->dir, "co.img");
	cbi_restore_result r;
	tu_restore_ok(f->incr.point.index_file, t, &r);
	assert_int_equal(unlink(f->full.point.file), 0);
	cbi_restore_opts o = ropts(f->incr.point.index_file, t);
	o.changed_only = 1;
	o.force = 1;
	o.threads = 4;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(r.blocks_written == 0);
	/* block 3 is the incremental's (whose image is there), block 9 the
	 * full's */
	uint8_t junk[BS];
	memset(junk, 0x77, BS);
	tu_pwrite(t, junk, BS, 3 * BS);
	assert_int_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(r.blocks_written == 1);
	assert_true(tu_file_equals(t, f->data, f->size));
	tu_pwrite(t, junk, BS, 9 * BS);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_ENOPARENT);
	assert_int_equal(e.code, -CBI_ENOPARENT);
	assert_non_null(strstr(e.msg, "seq 0"));
}

/* ------------------------------------------------------------ vectors */

static void sha256_file(const char *path, char hex[65])
{
	size_t n;
	uint8_t *b = tu_read_file(path, &n);
	uint8_t d[32];
	unsigned int dl = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	assert_non_null(c);
	assert_int_equal(EVP_DigestInit_ex(c, EVP_sha256(), NULL), 1);
	assert_int_equal(EVP_DigestUpdate(c, b, n), 1);
	assert_int_equal(EVP_DigestFinal_ex(c, d, &dl), 1);
	EVP_MD_CTX_free(c);
	free(b);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

static void test_vectors_restore(void **state)
{
	tu_fix *f = *state;
	const char *vec = getenv("CBIMG_VECTORS");
	char valid[4096];
	struct stat st;
	if (!vec || snprintf(valid, sizeof valid, "%s/valid", vec) >= (int)sizeof valid ||
	    stat(valid, &st) < 0 || !S_ISDIR(st.st_mode)) {
		print_message("skipped: CBIMG_VECTORS/valid not present\n");
		skip();
	}
	DIR *d = opendir(valid);
	assert_non_null(d);
	struct dirent *de;
	int dirs = 0, restored = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char dir[4400], exp[4500];
		snprintf(dir, sizeof dir, "%s/%s", valid, de->d_name);
		snprintf(exp, sizeof exp, "%s/expected.sha256", dir);
		if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
			continue;
		dirs++;
		cbi_point *pts = NULL;
		size_t n = 0;
		cbi_error e;
		assert_int_equal(cbi_list(dir, &pts, &n, &e), 0);
		assert_true(n > 0);
		FILE *fp = fopen(exp, "r");
		assert_non_null(fp);
		unsigned seq;
		char want[65];
		int lines = 0;
		while (fscanf(fp, "%u %64s", &seq, want) == 2) {
			lines++;
			int found = 0;
			for (size_t i = 0; i < n; i++) {
				if (pts[i].seq != seq)
					continue;
				found = 1;
				const char *t = tu_path(f->dir, "vec.img");
				unlink(t);
				cbi_restore_opts o = ropts(pts[i].index_file, t);
				cbi_restore_result r;
				if (!strcmp(de->d_name, "rescue")) {
					/* bad ranges (rev. 2.5): refused, nothing written, unless allowed */
					assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EBADRANGES);
					assert_false(tu_exists(t));
					o.allow_bad = 1;
				}
				int rc = cbi_restore(&o, &r, &e);
				if (o.allow_bad)
					assert_true(r.bad_bytes > 0 && r.bad_ranges > 0);
				if (rc)
					fail_msg("%s seq %u: restore = %d: %s", de->d_name, seq, rc, e.msg);
				char got[65];
				sha256_file(t, got);
				if (strcmp(got, want))
					fail_msg("%s seq %u: restored SHA-256 %s, want %s", de->d_name, seq, got, want);
				restored++;
			}
			if (!found)
				fail_msg("%s: no point of seq %u", de->d_name, seq);
		}
		fclose(fp);
		assert_int_equal((size_t)lines, n);
		free(pts);
	}
	closedir(d);
	assert_true(dirs > 0);
	print_message("restored %d points of %d vector directories\n", restored, dirs);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_rs, teardown_rs)
	const struct CMUnitTest tests[] = {
		T(test_new_file_exact),
		T(test_sparse_new_file),
		T(test_existing_target),
		T(test_changed_only),
		T(test_corrupted_image_new_target),
		T(test_missing_parent_image),
		T(test_cancel),
		T(test_threads_identical),
		T(test_threads_damaged_record),
		T(test_threads_changed_only),
		T(test_threads_tmpfs_target),
		T(test_changed_only_missing_image),
		cmocka_unit_test_setup_teardown(test_vectors_restore, tu_setup_dir, tu_teardown_dir),
	};
	return cmocka_run_group_tests_name("restore", tests, NULL, NULL);
}
