/* test_fsmap.c - the used-block map of ext2/3/4 file systems, checked block
 * by block against e2fsprogs' own view (dumpe2fs's "Free blocks" of every
 * group) on file systems made by mkfs with various features and filled with
 * files. Skips, visibly, where mkfs.ext4 or dumpe2fs is missing. */
#include "testutil.h"

#include "format.h"
#include "fsmap.h"
#include "source.h"
#include "util.h"

static int have_tools(void)
{
	return system("command -v mkfs.ext4 >/dev/null 2>&1 && command -v dumpe2fs >/dev/null 2>&1") == 0;
}

static void run_ok(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	if (system(cmd) != 0)
		fail_msg("command failed: %s", cmd);
}

/* Used fs blocks per dumpe2fs: every block of [0, blocks) not in a "Free
 * blocks:" range. Returns a byte per block (1 = used); *nblocks the count,
 * *bsize the block size. */
static uint8_t *dumpe2fs_used(const char *img, uint64_t *nblocks, uint32_t *bsize)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "dumpe2fs %s 2>/dev/null", img);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	char *line = NULL;
	size_t cap = 0;
	uint8_t *used = NULL;
	unsigned long long csize = 0; /* bigalloc: a free "block" a is the cluster starting there */
	*nblocks = 0;
	*bsize = 0;
	while (getline(&line, &cap, p) > 0) {
		unsigned long long v;
		if (sscanf(line, "Block count: %llu", &v) == 1) {
			*nblocks = v;
			used = malloc(v);
			assert_non_null(used);
			memset(used, 1, v);
		} else if (sscanf(line, "Block size: %llu", &v) == 1) {
			*bsize = (uint32_t)v;
		} else if (sscanf(line, "Cluster size: %llu", &v) == 1) {
			csize = v;
		} else if (used && strstr(line, "  Free blocks: ")) {
			char *q = strstr(line, "Free blocks: ") + 13;
			while (*q && *q != '\n') {
				unsigned long long a, b;
				int n = 0;
				if (sscanf(q, "%llu-%llu%n", &a, &b, &n) == 2) {
				} else if (sscanf(q, "%llu%n", &a, &n) == 1) {
					b = a;
				} else {
					break;
				}
				if (csize > *bsize)
					b += csize / *bsize - 1;
				for (unsigned long long i = a; i <= b && i < *nblocks; i++)
					used[i] = 0;
				q += n;
				while (*q == ',' || *q == ' ')
					q++;
			}
		}
	}
	free(line);
	pclose(p);
	assert_non_null(used);
	assert_true(*bsize >= 1024);
	return used;
}

/* A file system of size_mib MiB made with mkfs_args, holding files (some
 * deleted again, so that free space is fragmented), checked at cbimg block
 * sizes 4K, 64K and 1M against dumpe2fs. */
static void check_fs(const char *dir, const char *mkfs_args, unsigned size_mib, unsigned extra_mib)
{
	char img[512], tree[512];
	snprintf(img, sizeof img, "%s/fs.img", dir);
	snprintf(tree, sizeof tree, "%s/tree", dir);
	run_ok("rm -rf %s %s && mkdir -p %s/a %s/b", img, tree, tree, tree);
	/* files of assorted sizes, from a deterministic generator */
	for (int i = 0; i < 40; i++)
		run_ok("head -c %d /dev/zero | tr '\\0' '%c' > %s/%c/f%d", (i * 7919) % 300000 + 1,
		       'a' + i % 26, tree, i % 2 ? 'a' : 'b', i);
	run_ok("truncate -s %uM %s && mkfs.ext4 -q -F %s -d %s %s %uM >/dev/null 2>&1 || "
	       "mkfs.ext4 -q -F %s -d %s %s >/dev/null", size_mib + extra_mib, img, mkfs_args, tree, img,
	       size_mib, mkfs_args, tree, img);
	/* delete some files without mounting: debugfs frees their blocks */
	run_ok("debugfs -w -R 'rm /a/f1' %s >/dev/null 2>&1; debugfs -w -R 'rm /b/f10' %s >/dev/null 2>&1; true",
	       img, img);
	uint64_t nfs;
	uint32_t fsbs;
	uint8_t *exp = dumpe2fs_used(img, &nfs, &fsbs);
	struct stat st;
	assert_int_equal(stat(img, &st), 0);
	uint64_t size = (uint64_t)st.st_size;
	static const uint32_t sizes[] = { 4096, 65536, 1u << 20 };
	for (size_t k = 0; k < 3; k++) {
		uint32_t bs = sizes[k];
		cbi_fsmap *m = NULL;
		cbi_error e;
		int rc = cbi_fsmap_read(img, size, bs, &m, &e);
		if (rc)
			fail_msg("cbi_fsmap_read(%s, bs %u): %s", mkfs_args, bs, e.msg);
		assert_int_equal(m->fs_block_size, fsbs);
		assert_int_equal(m->fs_blocks, nfs);
		assert_int_equal(m->n_blocks, cbi_nblocks(size, bs));
		uint64_t used = 0, wrong = 0;
		for (uint64_t c = 0; c < m->n_blocks; c++) {
			/* expected: any used fs block inside, or any byte beyond the fs */
			uint64_t a = c * bs, b = CBI_MIN(a + bs, size);
			int want = b > nfs * fsbs;
			for (uint64_t f = a / fsbs; !want && f < nfs && f * fsbs < b; f++)
				want = exp[f];
			int got = cbi_fsmap_used(m, c);
			used += (uint64_t)got;
			if (got != want && wrong++ < 5)
				print_error("%s, bs %u: block %llu: used %d, dumpe2fs says %d\n", mkfs_args, bs,
					    (unsigned long long)c, got, want);
		}
		assert_int_equal(wrong, 0);
		assert_int_equal(used, m->used_blocks);
		assert_true(used < m->n_blocks); /* something is free: the test means something */
		if (bs == 4096 && fsbs == 4096)
			print_message("  %-40s %llu of %llu blocks used\n", mkfs_args, (unsigned long long)used,
				      (unsigned long long)m->n_blocks);
		cbi_fsmap_free(m);
	}
	free(exp);
}

static void test_ext4_default(void **state)
{
	tu_fix *f = *state;
	if (!have_tools())
		skip();
	check_fs(f->dir, "-t ext4 -b 4096", 64, 0);
	check_fs(f->dir, "-t ext4", 64, 0);
}

static void test_variants(void **state)
{
	tu_fix *f = *state;
	if (!have_tools())
		skip();
	check_fs(f->dir, "-t ext4 -b 1024", 24, 0);
	check_fs(f->dir, "-t ext4 -O 64bit -b 2048", 40, 0);
	check_fs(f->dir, "-t ext4 -O ^flex_bg", 48, 0);
	check_fs(f->dir, "-t ext4 -O ^metadata_csum,^uninit_bg", 48, 0);
	check_fs(f->dir, "-t ext4 -O ^metadata_csum,uninit_bg", 48, 0); /* gdt_csum: crc16 */
	check_fs(f->dir, "-t ext4 -O sparse_super2", 48, 0);
	check_fs(f->dir, "-t ext3", 32, 0);
	check_fs(f->dir, "-t ext2 -O ^sparse_super,^resize_inode", 32, 0);
	check_fs(f->dir, "-t ext4 -g 8192", 96, 0); /* many groups */
	/* a file system smaller than its source: the rest counts as used */
	check_fs(f->dir, "-t ext4", 40, 9);
	/* layouts the hand-written reader refused, which libext2fs reads:
	 * descriptors in meta groups, and a bitmap bit per cluster */
	check_fs(f->dir, "-t ext4 -O meta_bg,^resize_inode", 48, 0);
	check_fs(f->dir, "-t ext4 -O meta_bg,^resize_inode -b 1024", 24, 0);
	check_fs(f->dir, "-t ext4 -O bigalloc -C 16384", 64, 0);
	check_fs(f->dir, "-t ext4 -O bigalloc -b 4096 -C 65536", 96, 0);
	check_fs(f->dir, "-t ext4 -O bigalloc,^metadata_csum,uninit_bg -C 32768", 64, 0);
}

/* What the map must refuse rather than guess. */
static void test_refusals(void **state)
{
	tu_fix *f = *state;
	if (!have_tools())
		skip();
	char img[512];
	cbi_fsmap *m = NULL;
	cbi_error e;
	snprintf(img, sizeof img, "%s/x.img", f->dir);
	/* not a file system */
	run_ok("head -c 4194304 /dev/urandom > %s", img);
	assert_int_equal(cbi_fsmap_read(img, 4194304, 65536, &m, &e), -ENOTSUP);
	assert_null(m);
	assert_non_null(strstr(e.msg, "no ext2/ext3/ext4 file system"));
	/* a journal that needs recovery, an error state */
	struct {
		const char *mkfs;
		int off, bit;
		const char *why;
	} cases[] = {
		{ "-t ext4", 1024 + 0x60, 0x4, "needs recovery" },
		{ "-t ext4", 1024 + 0x3a, 0x2, "errors" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		run_ok("rm -f %s && mkfs.ext4 -q -F %s %s 32M >/dev/null 2>&1", img, cases[i].mkfs, img);
		if (cases[i].off >= 0) {
			int fd = open(img, O_RDWR);
			assert_true(fd >= 0);
			uint8_t b;
			assert_int_equal(pread(fd, &b, 1, cases[i].off), 1);
			b |= (uint8_t)cases[i].bit;
			assert_int_equal(pwrite(fd, &b, 1, cases[i].off), 1);
			close(fd);
		}
		int rc = cbi_fsmap_read(img, 32u << 20, 65536, &m, &e);
		if (rc != -ENOTSUP)
			fail_msg("case %zu: %d '%s', want -ENOTSUP", i, rc, rc ? e.msg : "");
		assert_null(m);
		if (!strstr(e.msg, cases[i].why))
			fail_msg("case %zu: '%s' does not say '%s'", i, e.msg, cases[i].why);
	}
	/* not cleanly unmounted (state without VALID_FS): its bitmaps may lag */
	run_ok("rm -f %s && mkfs.ext4 -q -F -t ext4 -b 4096 %s 32M >/dev/null", img, img);
	{
		int fd = open(img, O_RDWR);
		assert_true(fd >= 0);
		uint8_t b;
		assert_int_equal(pread(fd, &b, 1, 1024 + 0x3a), 1);
		b &= (uint8_t)~1u;
		assert_int_equal(pwrite(fd, &b, 1, 1024 + 0x3a), 1);
		close(fd);
	}
	assert_int_equal(cbi_fsmap_read(img, 32u << 20, 65536, &m, &e), -ENOTSUP);
	assert_non_null(strstr(e.msg, "not cleanly unmounted"));
	/* a descriptor or a bitmap altered (metadata_csum, and gdt_csum for the
	 * descriptor): refused as damaged, never trusted. Group 0's descriptor
	 * is at 4096 (4 KiB blocks); its block bitmap at the block it names. */
	const char *feats[] = { "", "-O ^metadata_csum,uninit_bg" };
	for (int k = 0; k < 2; k++)
		for (int what = 0; what < 2; what++) {
			if (k == 1 && what == 1)
				continue; /* gdt_csum has no bitmap checksums */
			run_ok("rm -f %s && mkfs.ext4 -q -F -t ext4 -b 4096 %s %s 32M >/dev/null", img, feats[k], img);
			int fd = open(img, O_RDWR);
			assert_true(fd >= 0);
			uint8_t d[4], b;
			assert_int_equal(pread(fd, d, 4, 4096), 4);
			uint64_t off = what == 0 ? 4096 + 0x12 : (uint64_t)ld32(d) * 4096;
			assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
			b ^= what == 0 ? 0x2 : 0x1; /* BLOCK_UNINIT on; block 0 "free" */
			assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
			close(fd);
			assert_int_equal(cbi_fsmap_read(img, 32u << 20, 65536, &m, &e), -CBI_EDAMAGED);
			assert_null(m);
			if (!strstr(e.msg, "fails its checksum"))
				fail_msg("case %d/%d: '%s'", k, what, e.msg);
		}
	/* a superblock altered (metadata_csum) where no refusal applies: its
	 * free block count, which nothing here reads, but the checksum tells */
	run_ok("rm -f %s && mkfs.ext4 -q -F -t ext4 -b 4096 %s 32M >/dev/null", img, img);
	{
		int fd = open(img, O_RDWR);
		assert_true(fd >= 0);
		uint8_t b;
		assert_int_equal(pread(fd, &b, 1, 1024 + 0x0c), 1);
		b ^= 0x10;
		assert_int_equal(pwrite(fd, &b, 1, 1024 + 0x0c), 1);
		close(fd);
	}
	assert_int_equal(cbi_fsmap_read(img, 32u << 20, 65536, &m, &e), -CBI_EDAMAGED);
	assert_null(m);
	assert_non_null(strstr(e.msg, "superblock fails its checksum"));
	/* a file system that claims more blocks than the source holds */
	run_ok("rm -f %s && mkfs.ext4 -q -F -t ext4 %s 32M >/dev/null", img, img);
	assert_int_equal(cbi_fsmap_read(img, 16u << 20, 65536, &m, &e), -CBI_EDAMAGED);
	assert_non_null(strstr(e.msg, "larger than the source"));
	assert_int_equal(cbi_fsmap_read(tu_path(f->dir, "missing.img"), 1u << 20, 65536, &m, &e), -ENOENT);
}

/* The source reader with a map: unused blocks are flagged as holes and
 * never read, used ones are read as before; a file that shrank still
 * fails when its unused tail is not read. */
static void test_source_map(void **state)
{
	tu_fix *f = *state;
	const uint32_t bs = 65536;
	const size_t nb = 16;
	char path[512];
	snprintf(path, sizeof path, "%s/src.img", f->dir);
	uint8_t *data = malloc(nb * bs), *buf = aligned_alloc(CBI_SOURCE_ALIGN, nb * bs);
	assert_non_null(data);
	assert_non_null(buf);
	for (size_t i = 0; i < nb * bs; i++)
		data[i] = (uint8_t)(i * 31 + i / bs + 1);
	tu_write_file(path, data, nb * bs);
	cbi_source *src = NULL;
	cbi_error e;
	assert_int_equal(cbi_source_open(path, &src, &e), 0);
	uint8_t used[2] = { 0x5a, 0x81 }; /* blocks 1 3 4 6, 8 15 */
	cbi_source_set_map(src, used, bs);
	uint8_t hole[16];
	memset(hole, 0, sizeof hole);
	memset(buf, 0xee, nb * bs);
	uint64_t got = 0;
	assert_int_equal(cbi_source_read_blocks(src, 0, nb * bs, buf, bs, hole, &got, &e), 0);
	assert_int_equal(got, 6u * bs);
	for (size_t j = 0; j < nb; j++) {
		int u = (used[j / 8] >> (j % 8)) & 1;
		assert_int_equal(hole[j], !u);
		if (u)
			assert_memory_equal(buf + j * bs, data + j * bs, bs);
	}
	/* a read starting mid-map, and one that is wholly unused */
	memset(hole, 0, sizeof hole);
	assert_int_equal(cbi_source_read_blocks(src, 3u * bs, 2u * bs, buf, bs, hole, &got, &e), 0);
	assert_int_equal(got, 2u * bs);
	assert_memory_equal(buf, data + 3u * bs, 2u * bs);
	memset(hole, 0, sizeof hole);
	assert_int_equal(cbi_source_read_blocks(src, 9u * bs, 3u * bs, buf, bs, hole, &got, &e), 0);
	assert_int_equal(got, 0);
	assert_true(hole[0] && hole[1] && hole[2]);
	/* hole ends follow the map (the pipeline turns long ones into one item) */
	uint64_t he = 1;
	assert_int_equal(cbi_source_hole_end(src, 0, &he, &e), 0);
	assert_int_equal(he, bs);
	assert_int_equal(cbi_source_hole_end(src, bs, &he, &e), 0);
	assert_int_equal(he, bs);
	assert_int_equal(cbi_source_hole_end(src, 2u * bs, &he, &e), 0);
	assert_int_equal(he, 3u * bs);
	assert_int_equal(cbi_source_hole_end(src, 9u * bs, &he, &e), 0);
	assert_int_equal(he, 15u * bs);
	/* without the map, everything is read again */
	cbi_source_set_map(src, NULL, 0);
	memset(hole, 0, sizeof hole);
	assert_int_equal(cbi_source_read_blocks(src, 0, nb * bs, buf, bs, hole, &got, &e), 0);
	assert_int_equal(got, (uint64_t)nb * bs);
	assert_memory_equal(buf, data, nb * bs);
	/* the file shrinks: the tail (blocks 9..14 unused, 15 used) must fail,
	 * and so must a read of unused blocks up to the end */
	uint8_t tail_unused[2] = { 0xff, 0x01 };
	cbi_source_set_map(src, tail_unused, bs);
	assert_int_equal(truncate(path, 10u * bs), 0);
	memset(hole, 0, sizeof hole);
	assert_int_equal(cbi_source_read_blocks(src, 9u * bs, 7u * bs, buf, bs, hole, &got, &e), -CBI_EREAD);
	uint8_t none_used[2] = { 0xff, 0x00 };
	cbi_source_set_map(src, none_used, bs);
	assert_int_equal(cbi_source_hole_end(src, 8u * bs, &he, &e), -CBI_EREAD);
	cbi_source_close(src);
	free(data);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ext4_default, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test_setup_teardown(test_variants, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test_setup_teardown(test_refusals, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test_setup_teardown(test_source_map, tu_setup_dir, tu_teardown_dir),
	};
	if (!have_tools())
		print_message("SKIP: test_fsmap needs mkfs.ext4 and dumpe2fs (e2fsprogs)\n");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
