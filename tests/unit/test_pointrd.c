/* test_pointrd.c - the point reader: every point of a chain read at random
 * offsets and lengths by several threads equals the source at that point;
 * the cache stays bounded; a damaged record fails the reads that cover it
 * and no others; encrypted chains; the shared lock; partition tables. */
#include "testutil.h"

#include <pthread.h>
#include <sys/file.h>

#include "format.h"
#include "image.h"
#include "job.h"
#include "util.h"

#define BS 4096u
#define NPTS 3

typedef struct pr_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	size_t size;
	uint8_t *v[NPTS];          /* the source at each point */
	cbi_backup_result r[NPTS];
} pr_fix;

/* 1 MiB + 123 bytes: text, a zero region, random blocks; then two
 * incrementals that change some blocks (one of them to zeros). */
static int setup_pr(void **state)
{
	pr_fix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	f->size = (1u << 20) + 123;
	uint8_t *d = malloc(f->size);
	assert_non_null(d);
	tu_fill_text(d, f->size, 1);
	memset(d + 64 * BS, 0, 64 * BS);
	tu_fill_random(d + 200 * BS, 8 * BS, 2);
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	for (int k = 0; k < NPTS; k++) {
		if (k) {
			tu_fill_random(d + (size_t)(3 + 50 * k) * BS, BS, 77 + k);
			memset(d + (size_t)(150 + k) * BS, 0, BS);
			tu_fill_random(d + f->size - 100, 100, 99 + k); /* the short last block */
		}
		tu_write_file(f->src, d, f->size);
		tu_backup_ok(&o, &f->r[k]);
		f->v[k] = malloc(f->size);
		assert_non_null(f->v[k]);
		memcpy(f->v[k], d, f->size);
	}
	free(d);
	return 0;
}

static int teardown_pr(void **state)
{
	pr_fix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		for (int k = 0; k < NPTS; k++)
			free(f->v[k]);
		free(f);
	}
	return 0;
}

static cbi_pointrd *open_ok(const char *point, uint64_t cache)
{
	cbi_pointrd_opts o = { .point = point, .cache_bytes = cache };
	cbi_pointrd *r = NULL;
	cbi_error e = { 0 };
	int rc = cbi_pointrd_open(&o, &r, &e);
	if (rc)
		print_error("cbi_pointrd_open(%s) = %d: %s\n", point, rc, e.msg);
	assert_int_equal(rc, 0);
	return r;
}

typedef struct reader {
	cbi_pointrd *r;
	const uint8_t *want;
	size_t size;
	uint64_t seed;
	int bad;
} reader;

static void *read_random(void *arg)
{
	reader *t = arg;
	uint8_t *buf = malloc(3 * BS + 17);
	uint64_t s = t->seed;
	for (int k = 0; k < 400 && buf; k++) {
		uint64_t off = tu_rng(&s) % (t->size + 10);
		size_t len = (size_t)(tu_rng(&s) % (3 * BS + 17));
		int64_t got = cbi_pointrd_pread(t->r, buf, len, off, NULL);
		size_t want = off >= t->size ? 0 : (size_t)CBI_MIN((uint64_t)len, t->size - off);
		if (got != (int64_t)want || (want && memcmp(buf, t->want + off, want)))
			t->bad++;
	}
	free(buf);
	return NULL;
}

static void test_every_point_exact(void **state)
{
	pr_fix *f = *state;
	for (int k = 0; k < NPTS; k++) {
		const char *pts[] = { f->r[k].point.file, f->r[k].point.index_file };
		cbi_pointrd *r = open_ok(pts[k & 1], 6 * BS);
		assert_int_equal(cbi_pointrd_size(r), f->size);
		assert_int_equal(cbi_pointrd_point(r)->seq, (uint32_t)k);
		/* sequential, whole */
		uint8_t *all = malloc(f->size + 10);
		assert_non_null(all);
		assert_int_equal(cbi_pointrd_pread(r, all, f->size + 10, 0, NULL), (int64_t)f->size);
		assert_memory_equal(all, f->v[k], f->size);
		assert_int_equal(cbi_pointrd_pread(r, all, 10, f->size, NULL), 0);
		free(all);
		/* random, four threads at once */
		reader t[4];
		pthread_t th[4];
		for (int j = 0; j < 4; j++) {
			t[j] = (reader){ .r = r, .want = f->v[k], .size = f->size, .seed = 1000u * k + j + 1 };
			assert_int_equal(pthread_create(&th[j], NULL, read_random, &t[j]), 0);
		}
		for (int j = 0; j < 4; j++) {
			pthread_join(th[j], NULL);
			assert_int_equal(t[j].bad, 0);
		}
		cbi_pointrd_stats st;
		cbi_pointrd_stats_get(r, &st);
		assert_true(st.hits > 0);
		assert_true(st.misses > 0);
		assert_true(st.zero_blocks > 0);
		assert_int_equal(st.failures, 0);
		assert_int_equal(st.cache_max, 6);
		assert_true(st.cache_blocks <= 6);
		cbi_pointrd_close(r);
	}
}

/* A record of the full damaged: reads that cover that block fail with a
 * damage code and a message naming the file and block (and the log
 * callback is called); every other read is right. Points whose newest copy
 * of the block is elsewhere are not affected. */
static void on_log(void *ud, const char *msg)
{
	int *n = ud;
	(*n)++;
	assert_non_null(strstr(msg, "block 5"));
}

static void test_damaged_block(void **state)
{
	pr_fix *f = *state;
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(f->r[0].point.file, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, 5, &te), 0);
	cbi_image_close(m);
	tu_flip_byte(f->r[0].point.file, te.offset + CBI_REC_HDR_SIZE + te.stored_len / 2, 0xff);

	int logged = 0;
	cbi_pointrd_opts o = { .point = f->r[2].point.index_file, .log = on_log, .log_ud = &logged };
	cbi_pointrd *r = NULL;
	assert_int_equal(cbi_pointrd_open(&o, &r, NULL), 0);
	uint8_t buf[3 * BS];
	cbi_error e = { 0 };
	for (int k = 0; k < 2; k++) { /* never cached: the second read fails too */
		memset(&e, 0, sizeof e);
		int64_t rc = cbi_pointrd_pread(r, buf, 3 * BS, 4 * BS + 100, &e);
		assert_true(rc < 0 && cbi_is_damage((int)rc));
		assert_non_null(strstr(e.msg, "block 5"));
	}
	assert_int_equal(logged, 2);
	assert_int_equal(cbi_pointrd_pread(r, buf, 1, 5 * BS + BS - 1, NULL), -CBI_EDAMAGED);
	assert_int_equal(cbi_pointrd_pread(r, buf, BS, 4 * BS, NULL), BS);
	assert_memory_equal(buf, f->v[2] + 4 * BS, BS);
	assert_int_equal(cbi_pointrd_pread(r, buf, BS, 6 * BS, NULL), BS);
	assert_memory_equal(buf, f->v[2] + 6 * BS, BS);
	cbi_pointrd_stats st;
	cbi_pointrd_stats_get(r, &st);
	assert_int_equal(st.failures, 3);
	cbi_pointrd_close(r);
}

/* A point whose image is missing: the blocks it owns fail (-CBI_ENOPARENT
 * from the chain reader), the others read. */
static void test_missing_image(void **state)
{
	pr_fix *f = *state;
	assert_int_equal(unlink(f->r[1].point.file), 0);
	cbi_pointrd *r = open_ok(f->r[2].point.index_file, 0);
	uint8_t buf[BS];
	cbi_error e = { 0 };
	int64_t rc = cbi_pointrd_pread(r, buf, BS, 53 * BS, &e); /* changed at point 1 */
	assert_int_equal(rc, -CBI_ENOPARENT);
	assert_int_equal(cbi_pointrd_pread(r, buf, BS, 0, NULL), BS);
	assert_memory_equal(buf, f->v[2], BS);
	cbi_pointrd_close(r);
}

/* While a reader with lock = 1 is open, the chain's byte of the lock file
 * is held shared: an exclusive lock (prune's) fails, another shared one
 * (a second mount) does not, and the job's byte (backups) stays free. */
static void test_shared_lock(void **state)
{
	pr_fix *f = *state;
	cbi_pointrd_opts o = { .point = f->r[2].point.file, .lock = 1 };
	cbi_pointrd *r = NULL, *r2 = NULL;
	assert_int_equal(cbi_pointrd_open(&o, &r, NULL), 0);
	assert_int_equal(cbi_pointrd_open(&o, &r2, NULL), 0);
	int64_t off = cbi_chain_lock_offset(f->r[2].point.chain_id);
	assert_true(off > (int64_t)(1ull << 62));
	cbi_joblock lk;
	cbi_error e;
	assert_int_equal(cbi_job_lock_at(f->dest, off, 0, &lk, &e), -CBI_ELOCKED);
	assert_int_equal(cbi_job_lock(f->dest, cbi_state_key("testhost", "test:disk0", "unit"), &lk, NULL), 0);
	cbi_job_unlock(&lk);
	cbi_pointrd_close(r);
	assert_int_equal(cbi_job_lock_at(f->dest, off, 0, &lk, &e), -CBI_ELOCKED); /* r2 still holds it */
	cbi_pointrd_close(r2);
	assert_int_equal(cbi_job_lock_at(f->dest, off, 0, &lk, NULL), 0);
	/* a prune holding it: the reader is refused */
	assert_int_equal(cbi_pointrd_open(&o, &r, &e), -CBI_ELOCKED);
	assert_null(r);
	assert_non_null(strstr(e.msg, "is locked by another cbimg")); /* its job's lock not held: who is unknown */
	/* ... and when it holds its job's lock as prune does (its holder byte,
	 * revision 2.11), the refusal says a prune holds the job */
	cbi_joblock jl;
	assert_int_equal(cbi_job_lock_op(f->dest, cbi_state_key("testhost", "test:disk0", "unit"), CBI_JOB_OP_PRUNE,
					 "unit", "src", &jl, NULL), 0);
	assert_int_equal(cbi_pointrd_open(&o, &r, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "another cbimg is pruning job 'unit' of '"));
	assert_non_null(strstr(e.msg, "its chain cannot be opened until it ends"));
	cbi_job_unlock(&jl);
	cbi_job_unlock(&lk);
}

/* ---- encrypted ---- */

static int give_pass(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	const char *pw = ud;
	if (!pw)
		return -CBI_EPASS;
	size_t n = strlen(pw);
	assert_true(n < bufsz);
	memcpy(buf, pw, n + 1);
	return (int)n;
}

static void test_encrypted(void **state)
{
	char dir[256];
	tu_mkdtemp(dir, sizeof dir);
	const char *src = tu_path(dir, "disk.img"), *dest = tu_path(dir, "dest");
	assert_int_equal(mkdir(dest, 0755), 0);
	size_t size = 300 * BS;
	uint8_t *d = malloc(size);
	assert_non_null(d);
	tu_fill_text(d, size, 5);
	tu_write_file(src, d, size);
	cbi_backup_opts o = tu_bopts(src, dest);
	o.encrypt = 1;
	o.kdf = (cbi_kdf_params){ 12, 8, 1 };
	o.pass = give_pass;
	o.pass_ud = (void *)"secret";
	cbi_backup_result b0, b1;
	tu_backup_ok(&o, &b0);
	tu_fill_random(d + 7 * BS, BS, 3);
	tu_write_file(src, d, size);
	tu_backup_ok(&o, &b1);

	cbi_pointrd_opts po = { .point = b1.point.index_file, .pass = give_pass, .pass_ud = (void *)"wrong",
				.state_dir = tu_path(dir, "nostate") };
	cbi_pointrd *r = NULL;
	cbi_error e = { 0 };
	assert_int_equal(cbi_pointrd_open(&po, &r, &e), -CBI_EPASS);
	po.pass_ud = (void *)"secret";
	assert_int_equal(cbi_pointrd_open(&po, &r, &e), 0);
	uint8_t *got = malloc(size);
	assert_non_null(got);
	assert_int_equal(cbi_pointrd_pread(r, got, size, 0, NULL), (int64_t)size);
	assert_memory_equal(got, d, size);
	cbi_pointrd_close(r);
	free(got);
	free(d);
	tu_rm_rf(dir);
}

/* ---- partition tables ---- */

static void mbr_entry(uint8_t *sec, int k, uint8_t type, uint32_t lba, uint32_t n)
{
	uint8_t *p = sec + 446 + 16 * k;
	p[4] = type;
	st32(p + 8, lba);
	st32(p + 12, n);
}

/* An MBR disk of 8 MiB: partition 1 (1 MiB at 1 MiB), an extended
 * partition (2 MiB to the end) with logical partitions 5 (at 3 MiB) and 6
 * (at 6 MiB), each found through its EBR, which lies beyond the first MiB
 * that the probe copies first. */
static void test_mbr_partitions(void **state)
{
	char dir[256];
	tu_mkdtemp(dir, sizeof dir);
	const char *src = tu_path(dir, "disk.img"), *dest = tu_path(dir, "dest");
	assert_int_equal(mkdir(dest, 0755), 0);
	size_t size = 8u << 20;
	uint8_t *d = calloc(1, size);
	assert_non_null(d);
	tu_fill_text(d + (1u << 20), 1u << 20, 9); /* some data in partition 1 */
	uint8_t *mbr = d;
	mbr_entry(mbr, 0, 0x83, 2048, 2048);
	mbr_entry(mbr, 1, 0x05, 4096, 12288);
	mbr[510] = 0x55;
	mbr[511] = 0xaa;
	uint8_t *ebr1 = d + 4096u * 512; /* 2 MiB */
	mbr_entry(ebr1, 0, 0x83, 2048, 2048);      /* partition 5 at 3 MiB */
	mbr_entry(ebr1, 1, 0x05, 8192, 4096);      /* next EBR at 2 MiB + 4 MiB */
	ebr1[510] = 0x55;
	ebr1[511] = 0xaa;
	uint8_t *ebr2 = d + (4096u + 8192u) * 512; /* 6 MiB */
	mbr_entry(ebr2, 0, 0x83, 2048, 2048);      /* partition 6 at 7 MiB */
	ebr2[510] = 0x55;
	ebr2[511] = 0xaa;
	tu_write_file(src, d, size);
	cbi_backup_opts o = tu_bopts(src, dest);
	cbi_backup_result b;
	tu_backup_ok(&o, &b);

	cbi_pointrd *r = open_ok(b.point.index_file, 0);
	cbi_disk_map *m = calloc(1, sizeof *m);
	assert_non_null(m);
	assert_int_equal(cbi_pointrd_map(r, m, NULL), 0);
	assert_string_equal(m->pttype, "dos");
	assert_int_equal(m->nparts, 3);
	assert_int_equal(m->parts[0].number, 1);
	assert_int_equal(m->parts[0].offset, 1u << 20);
	assert_int_equal(m->parts[0].size, 1u << 20);
	assert_int_equal(m->parts[1].number, 5);
	assert_int_equal(m->parts[1].offset, 3u << 20);
	assert_int_equal(m->parts[2].number, 6);
	assert_int_equal(m->parts[2].offset, 7u << 20);
	assert_int_equal(m->parts[2].size, 1u << 20);
	cbi_pointrd_close(r);

	/* restore --partition 1: exactly that partition's bytes */
	cbi_restore_opts ro = { .point = b.point.file, .target = tu_path(dir, "p1.img"), .partition = 1,
				.threads = 2 };
	cbi_restore_result rr;
	cbi_error e = { 0 };
	assert_int_equal(cbi_restore(&ro, &rr, &e), 0);
	assert_true(tu_file_equals(ro.target, d + (1u << 20), 1u << 20));
	ro.partition = 2; /* the extended container: not a partition to restore */
	ro.target = tu_path(dir, "p2.img");
	assert_int_equal(cbi_restore(&ro, &rr, &e), -ENOENT);
	assert_false(tu_exists(ro.target));

	/* no table at all */
	memset(d, 0, size);
	tu_write_file(src, d, size);
	o.force_full = 1;
	tu_backup_ok(&o, &b);
	r = open_ok(b.point.file, 0);
	assert_int_equal(cbi_pointrd_map(r, m, NULL), 0);
	assert_string_equal(m->pttype, "");
	assert_string_equal(m->fstype, "");
	assert_int_equal(m->nparts, 0);
	cbi_pointrd_close(r);
	free(m);
	free(d);
	tu_rm_rf(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_point_exact, setup_pr, teardown_pr),
		cmocka_unit_test_setup_teardown(test_damaged_block, setup_pr, teardown_pr),
		cmocka_unit_test_setup_teardown(test_missing_image, setup_pr, teardown_pr),
		cmocka_unit_test_setup_teardown(test_shared_lock, setup_pr, teardown_pr),
		cmocka_unit_test(test_encrypted),
		cmocka_unit_test(test_mbr_partitions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
