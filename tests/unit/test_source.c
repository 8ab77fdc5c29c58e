/* test_source.c - source reader: sparse files, errors, identity. */
#include "testutil.h"

#include <sys/stat.h>

#include <limits.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>

#include "format.h"
#include "mounts.h"
#include "source.h"
#include "util.h"

static uint8_t *aligned(size_t n)
{
	void *p = NULL;
	assert_int_equal(posix_memalign(&p, CBI_SOURCE_ALIGN, n), 0);
	return p;
}

typedef struct region {
	uint64_t off;
	size_t len;
} region;

/* Make a sparse file of `size` bytes with data only in the regions; the
 * expected content is returned (caller frees). */
static uint8_t *make_sparse(const char *path, uint64_t size, const region *r, size_t nr)
{
	uint8_t *want = calloc(1, size);
	assert_non_null(want);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	for (size_t i = 0; i < nr; i++) {
		tu_fill_random(want + r[i].off, r[i].len, i + 1);
		/* no zero bytes at the edges, so that a short read shows */
		want[r[i].off] |= 1;
		want[r[i].off + r[i].len - 1] |= 1;
		assert_int_equal(pwrite(fd, want + r[i].off, r[i].len, (off_t)r[i].off), (ssize_t)r[i].len);
	}
	assert_int_equal(fsync(fd), 0);
	close(fd);
	return want;
}

static void test_sparse_file_reads_back(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "sparse.img");
	const uint64_t size = (4u << 20) + 123; /* not a multiple of anything */
	const region r[] = { { 0, 100 }, { 300000, 5000 }, { 2u << 20, 4096 }, { size - 50, 50 } };
	uint8_t *want = make_sparse(p, size, r, 4);
	size_t data = 0;
	for (int i = 0; i < 4; i++)
		data += r[i].len;

	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	int fs_sparse = (uint64_t)st.st_blocks * 512 < size / 2;

	cbi_source *s = NULL;
	cbi_error e;
	assert_int_equal(cbi_source_open(p, &s, &e), 0);
	assert_true(s->size == size);
	assert_false(s->is_dev);
	assert_non_null(strstr(s->id, "file:"));

	/* whole file in 64 KiB chunks */
	const size_t chunk = 65536;
	uint8_t *buf = aligned(chunk);
	uint64_t total_read = 0;
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t len = (size_t)CBI_MIN((uint64_t)chunk, size - off);
		uint64_t rb = UINT64_MAX;
		memset(buf, 0xcc, chunk);
		int rc = cbi_source_read(s, off, len, buf, &rb, &e);
		if (rc)
			fail_msg("read at %llu: %d %s", (unsigned long long)off, rc, e.msg);
		assert_true(rb <= len);
		total_read += rb;
		if (memcmp(buf, want + off, len))
			fail_msg("data differs in chunk at %llu", (unsigned long long)off);
	}
	/* only the data extents were read (filesystem-block granular) */
	assert_true(total_read >= data);
	if (s->holes && fs_sparse)
		assert_true(total_read <= 4 * 2 * 65536);
	else
		print_message("note: holes not detected on this filesystem (read %llu bytes)\n",
			      (unsigned long long)total_read);
	free(buf);

	/* the whole file in one read, and again from the start (cache reset) */
	uint8_t *all = aligned(size + 4096);
	uint64_t rb = 0;
	assert_int_equal(cbi_source_read(s, 0, size, all, &rb, &e), 0);
	assert_memory_equal(all, want, size);
	assert_true(rb >= data);
	/* backwards, in reads that start inside holes and inside data */
	const uint64_t offs[] = { size - 4096, 2u << 20, 299000, 4096, 0, 300000 + 4000, 50 };
	for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
		size_t len = (size_t)CBI_MIN((uint64_t)8192, size - offs[i]);
		memset(all, 0xcc, len);
		assert_int_equal(cbi_source_read(s, offs[i], len, all, &rb, &e), 0);
		if (memcmp(all, want + offs[i], len))
			fail_msg("data differs at %llu", (unsigned long long)offs[i]);
	}
	/* a read entirely inside a hole reads nothing */
	if (s->holes && fs_sparse) {
		assert_int_equal(cbi_source_read(s, 1u << 20, 65536, all, &rb, &e), 0);
		assert_true(rb == 0);
		assert_true(cbi_is_zero(all, 65536));
	}
	free(all);
	cbi_source_close(s);
	cbi_source_close(NULL);
	free(want);
}

static void test_all_hole_file(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "zero.img");
	const uint64_t size = 1u << 20;
	uint8_t *want = make_sparse(p, size, NULL, 0);
	cbi_source *s = NULL;
	assert_int_equal(cbi_source_open(p, &s, NULL), 0);
	uint8_t *buf = aligned(size);
	memset(buf, 0xcc, size);
	uint64_t rb = 99;
	assert_int_equal(cbi_source_read(s, 0, size, buf, &rb, NULL), 0);
	assert_true(cbi_is_zero(buf, size));
	if (s->holes)
		assert_true(rb == 0);
	free(buf);
	free(want);
	cbi_source_close(s);
}

static void test_dense_file(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "dense.img");
	const size_t size = 300001;
	uint8_t *want = malloc(size);
	assert_non_null(want);
	tu_fill_random(want, size, 5);
	tu_write_file(p, want, size);
	cbi_source *s = NULL;
	assert_int_equal(cbi_source_open(p, &s, NULL), 0);
	assert_true(s->size == size);
	uint8_t *buf = aligned(size + 4096);
	uint64_t rb = 0;
	assert_int_equal(cbi_source_read(s, 0, size, buf, &rb, NULL), 0);
	assert_memory_equal(buf, want, size);
	assert_true(rb == size);
	assert_int_equal(cbi_source_read(s, 1000, 7, buf, &rb, NULL), 0);
	assert_memory_equal(buf, want + 1000, 7);
	assert_true(rb == 7);
	free(buf);
	free(want);
	cbi_source_close(s);
}

static void test_open_errors(void **state)
{
	tu_fix *f = *state;
	cbi_source *s = NULL;
	cbi_error e;

	const char *missing = tu_path(f->dir, "no-such-disk.img");
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_source_open(missing, &s, &e), -ENOENT);
	assert_int_equal(e.code, -ENOENT);
	assert_non_null(strstr(e.msg, missing));
	assert_null(s);

	/* a directory is refused */
	memset(&e, 0, sizeof e);
	int rc = cbi_source_open(f->dir, &s, &e);
	assert_true(rc < 0);
	assert_int_equal(e.code, rc);
	assert_non_null(strstr(e.msg, f->dir));
	assert_null(s);

	/* a character device is refused */
	memset(&e, 0, sizeof e);
	rc = cbi_source_open("/dev/null", &s, &e);
	assert_true(rc < 0);
	assert_non_null(strstr(e.msg, "/dev/null"));

	/* an empty file is refused */
	const char *empty = tu_path(f->dir, "empty.img");
	tu_write_file(empty, "", 0);
	memset(&e, 0, sizeof e);
	rc = cbi_source_open(empty, &s, &e);
	assert_true(rc < 0);
	assert_non_null(strstr(e.msg, "empty.img"));
	assert_null(s);

	/* a FIFO is refused at once, never opened (nothing can hang) */
	const char *fifo = tu_path(f->dir, "fifo.img");
	assert_int_equal(mkfifo(fifo, 0600), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_source_open(fifo, &s, &e), -EINVAL);
	assert_null(s);

	/* a link given on purpose (as /dev/disk/by-id names are) is resolved
	 * once and read; s->path keeps the name the user gave */
	const char *data = tu_path(f->dir, "data.img");
	tu_write_file(data, "abcd", 4);
	char link[4096];
	snprintf(link, sizeof link, "%s", tu_path(f->dir, "by-id-link"));
	assert_int_equal(symlink(data, link), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_source_open(link, &s, &e), 0);
	assert_int_equal(s->size, 4);
	assert_string_equal(s->path, link);
	cbi_source_close(s);
	s = NULL;

	/* no read permission (skipped as root, who can read anything) */
	if (geteuid() != 0) {
		const char *locked = tu_path(f->dir, "locked.img");
		tu_write_file(locked, "abc", 3);
		chmod(locked, 0);
		assert_int_equal(cbi_source_open(locked, &s, &e), -EACCES);
	}
}

/* LIBRARY BUG (source.c cbi_source_read): when a file source shrinks after
 * it was opened, the hole-aware path gets ENXIO from SEEK_DATA beyond the
 * new end and fills the rest with zeros, returning success. The contract in
 * source.h is that data that could not be read is never replaced by zeros;
 * the dense path (read_range) correctly fails with -CBI_EREAD here. */
static void test_shrunk_file_is_read_error(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "shrink.img");
	const size_t size = 256 * 1024;
	tu_write_pattern(p, size, 9);
	cbi_source *s = NULL;
	assert_int_equal(cbi_source_open(p, &s, NULL), 0);
	assert_int_equal(truncate(p, size / 2), 0);
	uint8_t *buf = aligned(size);
	uint64_t rb = 0;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_source_read(s, size / 2, size / 2, buf, &rb, &e);
	int holes = s->holes;
	free(buf);
	cbi_source_close(s);
	if (rc != -CBI_EREAD)
		fail_msg("LIBRARY BUG: reading past the end of a shrunk source returned %d, want "
			 "-CBI_EREAD (holes=%d)",
			 rc, holes);
	assert_non_null(strstr(e.msg, "shrink.img"));
}

static void test_identity(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "disk.img");
	tu_write_pattern(p, 8192, 1);
	char id[128], real[PATH_MAX], want[PATH_MAX + 8];
	assert_non_null(realpath(p, real));
	snprintf(want, sizeof want, "file:%s", real);

	cbi_source_identity(p, id, sizeof id);
	assert_int_equal(strncmp(id, "file:", 5), 0);
	assert_string_equal(id, want);

	/* a relative path and a symlink name the same file */
	char cwd[PATH_MAX];
	assert_non_null(getcwd(cwd, sizeof cwd));
	assert_int_equal(chdir(f->dir), 0);
	char id2[128];
	cbi_source_identity("disk.img", id2, sizeof id2);
	assert_int_equal(chdir(cwd), 0);
	assert_string_equal(id2, id);
	const char *link = tu_path(f->dir, "link.img");
	assert_int_equal(symlink(p, link), 0);
	cbi_source_identity(link, id2, sizeof id2);
	assert_string_equal(id2, id);

	/* another file: another identity */
	const char *q = tu_path(f->dir, "other.img");
	tu_write_pattern(q, 8192, 2);
	cbi_source_identity(q, id2, sizeof id2);
	assert_string_not_equal(id2, id);

	/* the source records the same identity */
	cbi_source *s = NULL;
	assert_int_equal(cbi_source_open(link, &s, NULL), 0);
	assert_string_equal(s->id, id);
	cbi_source_close(s);

	/* truncated to the buffer */
	char small[8];
	cbi_source_identity(p, small, sizeof small);
	assert_int_equal(strlen(small), 7);
	assert_int_equal(strncmp(small, "file:", 5), 0);
}

static void test_mount_check_of_unknown_device(void **state)
{
	(void)state;
	/* a device number nothing is mounted from */
	char mnt[256] = "";
	assert_int_equal(cbi_dev_mounted(makedev(4095, 1048575), mnt, sizeof mnt), 0);
	assert_int_equal(cbi_dev_mounted_rw(makedev(4095, 1048575)), 0);
	/* the device of / is mounted */
	struct stat st;
	assert_int_equal(stat("/", &st), 0);
	if (major(st.st_dev) != 0) {
		int m = cbi_dev_mounted(st.st_dev, mnt, sizeof mnt);
		if (!m)
			print_message("note: root device %u:%u not found in mountinfo\n", major(st.st_dev),
				      minor(st.st_dev));
		else
			assert_true(mnt[0] == '/');
	}
}

/* The mount table as libmount reads it: a mount that is no block device
 * (/proc), and, as root, a mount point whose name has a space (escaped as
 * \040 in mountinfo) and a tab. */
static void test_mount_table(void **state)
{
	tu_fix *f = *state;
	struct stat st;
	cbi_mount m;
	dev_t w;
	assert_int_equal(cbi_dev_whole_disk(makedev(4095, 1048575), &w), -ENODEV);
	assert_int_equal(cbi_mount_find(makedev(4095, 1048575), CBI_MOUNT_PARTS, &m), 0);
	if (stat("/proc/self", &st) == 0 && cbi_mount_find(st.st_dev, 0, &m)) {
		assert_string_equal(m.type, "proc");
		assert_string_equal(m.target, "/proc");
	} else {
		print_message("note: /proc not found in the mount table\n");
	}
	if (geteuid() != 0) {
		print_message("SKIP: a mount point with blanks needs root\n");
		return;
	}
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s/mount point\twith blanks", f->dir);
	assert_int_equal(mkdir(dir, 0755), 0);
	if (mount("cbimg-test", dir, "tmpfs", MS_RDONLY, "size=64k") < 0) {
		print_message("SKIP: mount tmpfs: %s\n", strerror(errno));
		return;
	}
	assert_int_equal(stat(dir, &st), 0);
	int found = cbi_mount_find(st.st_dev, 0, &m);
	int rw = cbi_mount_find(st.st_dev, CBI_MOUNT_RW, NULL);
	assert_int_equal(umount(dir), 0);
	assert_int_equal(found, 1);
	assert_string_equal(m.target, dir);
	assert_string_equal(m.type, "tmpfs");
	assert_string_equal(m.source, "cbimg-test");
	assert_int_equal(m.rw, 0);
	assert_int_equal(rw, 0); /* mounted read-only */
}

/* cbi_source_read_blocks: blocks wholly inside holes are flagged and left
 * unwritten; every other byte equals the file, edges of holes zeroed. */
static void test_hole_map(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "holes.img");
	const uint32_t bs = 4096;
	const uint64_t size = (2u << 20) + 1000; /* last block partial */
	const region r[] = { { 10000, 3000 }, { 1u << 20, 8192 }, { size - 10, 10 } };
	uint8_t *want = make_sparse(p, size, r, 3);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	if ((uint64_t)st.st_blocks * 512 >= size / 2) {
		free(want);
		skip(); /* this filesystem keeps no holes */
	}
	cbi_source *s = NULL;
	cbi_error e;
	assert_int_equal(cbi_source_open(p, &s, &e), 0);
	uint64_t nblk = cbi_nblocks(size, bs);
	uint8_t *buf = aligned((size_t)nblk * bs);
	memset(buf, 0xAA, (size_t)nblk * bs); /* poison: unflagged bytes must be overwritten */
	uint8_t *hole = calloc(nblk, 1);
	uint64_t got = 0;
	assert_int_equal(cbi_source_read_blocks(s, 0, size, buf, bs, hole, &got, &e), 0);
	uint64_t flagged = 0;
	for (uint64_t j = 0; j < nblk; j++) {
		uint32_t len = cbi_block_len(size, bs, j);
		if (hole[j]) {
			flagged++;
			assert_true(cbi_is_zero(want + j * bs, len)); /* only zero blocks are flagged */
		} else {
			assert_memory_equal(buf + j * bs, want + j * bs, len);
		}
	}
	assert_true(flagged > nblk / 2);
	assert_false(hole[10000 / bs]);
	assert_false(hole[(1u << 20) / bs]);
	assert_false(hole[nblk - 1]);
	cbi_source_close(s);
	free(hole);
	free(buf);
	free(want);
}

/* cbi_source_hole_end: where each hole starts and ends, nothing for data,
 * the tail hole up to the size. */
static void test_hole_end(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "holes.img");
	const uint64_t size = 8u << 20;
	const region r[] = { { 1u << 20, 65536 }, { 4u << 20, 4096 } };
	uint8_t *want = make_sparse(p, size, r, 2);
	free(want);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	if ((uint64_t)st.st_blocks * 512 >= size / 2)
		skip();
	cbi_source *s = NULL;
	cbi_error e;
	assert_int_equal(cbi_source_open(p, &s, &e), 0);
	uint64_t he = 1;
	assert_int_equal(cbi_source_hole_end(s, 0, &he, &e), 0);
	assert_true(he == 1u << 20);
	assert_int_equal(cbi_source_hole_end(s, 4096, &he, &e), 0);
	assert_true(he == 1u << 20);
	assert_int_equal(cbi_source_hole_end(s, (1u << 20) + 4096, &he, &e), 0);
	assert_true(he == (1u << 20) + 4096); /* in data */
	assert_int_equal(cbi_source_hole_end(s, (1u << 20) + 65536, &he, &e), 0);
	assert_true(he == 4u << 20);
	assert_int_equal(cbi_source_hole_end(s, (4u << 20) + 4096, &he, &e), 0);
	assert_true(he == size);
	assert_int_equal(cbi_source_check_size(s, &e), 0);
	/* the tail hole of a file that shrank is not taken on trust */
	assert_int_equal(truncate(p, 6u << 20), 0);
	s->hole_lo = s->hole_hi = 0; /* forget the cached extent */
	assert_int_equal(cbi_source_hole_end(s, (4u << 20) + 4096, &he, &e), -CBI_EREAD);
	assert_int_equal(cbi_source_check_size(s, &e), -CBI_EREAD);
	assert_non_null(strstr(e.msg, "holes.img"));
	cbi_source_close(s);
}

typedef struct rd_arg {
	cbi_source *s;
	const uint8_t *want;
	uint64_t size;
	int start, ok;
} rd_arg;

/* Read every other 64 KiB chunk, from `start`, and compare. */
static void *reader(void *v)
{
	rd_arg *a = v;
	const uint32_t bs = 4096, chunk = 65536;
	uint8_t *buf = aligned(chunk), hole[16];
	a->ok = 1;
	for (int pass = 0; pass < 4; pass++)
		for (uint64_t off = (uint64_t)a->start * chunk; off < a->size; off += 2 * chunk) {
			size_t len = (size_t)CBI_MIN((uint64_t)chunk, a->size - off);
			uint64_t got;
			memset(hole, 0, sizeof hole);
			if (cbi_source_read_blocks(a->s, off, len, buf, bs, hole, &got, NULL)) {
				a->ok = 0;
				continue;
			}
			for (size_t j = 0; j * bs < len; j++) {
				size_t n = CBI_MIN((size_t)bs, len - j * bs);
				if (hole[j] ? !cbi_is_zero(a->want + off + j * bs, n)
					    : memcmp(buf + j * bs, a->want + off + j * bs, n) != 0)
					a->ok = 0;
			}
		}
	free(buf);
	return NULL;
}

/* Two threads reading one source at once (the pipeline's workers) share its
 * cached extents and get every byte right. */
static void test_concurrent_reads(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "holes.img");
	const uint64_t size = (8u << 20) + 1000;
	const region r[] = { { 10000, 3000 }, { 1u << 20, 300000 }, { 3u << 20, 8192 },
			     { 5u << 20, 70000 }, { size - 10, 10 } };
	uint8_t *want = make_sparse(p, size, r, 5);
	cbi_source *s = NULL;
	assert_int_equal(cbi_source_open(p, &s, NULL), 0);
	rd_arg a[2] = { { s, want, size, 0, 0 }, { s, want, size, 1, 0 } };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, reader, &a[1]), 0);
	reader(&a[0]);
	pthread_join(t, NULL);
	assert_true(a[0].ok && a[1].ok);
	cbi_source_close(s);
	free(want);
}

/* A file the page cache does not hold is read with O_DIRECT, one it holds
 * buffered; both read back the same bytes, the unaligned tail included. */
static void test_cold_file_direct(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "cold.img");
	const size_t size = (4u << 20) + 1000; /* a tail no direct read can take */
	uint8_t *want = malloc(size);
	assert_non_null(want);
	tu_fill_random(want, size, 9);
	tu_write_file(p, want, size);
	int fd = open(p, O_RDONLY);
	assert_true(fd >= 0);
	struct { uint64_t off, len; } r = { 0, 0 };
	uint64_t cs[5];
	int have = syscall(451, fd, &r, cs, 0) == 0 && fsync(fd) == 0 &&
		   posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0 && syscall(451, fd, &r, cs, 0) == 0 &&
		   cs[0] == 0;
	int dfd = open(p, O_RDONLY | O_DIRECT);
	have = have && dfd >= 0;
	if (dfd >= 0)
		close(dfd);
	close(fd);
	uint8_t *buf = aligned(size + 4096);
	for (int cold = have; cold >= 0; cold--) {
		cbi_source *s = NULL;
		assert_int_equal(cbi_source_open(p, &s, NULL), 0);
		assert_int_equal(s->direct, cold); /* the cold pass drops the cache first */
		uint64_t rb = 0;
		memset(buf, 0, size);
		assert_int_equal(cbi_source_read(s, 0, size, buf, &rb, NULL), 0);
		assert_memory_equal(buf, want, size);
		cbi_source_close(s);
	}
	if (!have)
		print_message("  (cachestat or O_DIRECT unavailable here: only the buffered case ran)\n");
	free(buf);
	free(want);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		T(test_sparse_file_reads_back),
		T(test_all_hole_file),
		T(test_hole_map),
		T(test_hole_end),
		T(test_concurrent_reads),
		T(test_dense_file),
		T(test_cold_file_direct),
		T(test_open_errors),
		T(test_shrunk_file_is_read_error),
		T(test_identity),
		cmocka_unit_test(test_mount_check_of_unknown_device),
		T(test_mount_table),
	};
	return cmocka_run_group_tests_name("source", tests, NULL, NULL);
}
