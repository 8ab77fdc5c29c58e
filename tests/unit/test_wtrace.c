/* test_wtrace.c - the write tracer (wtrace.c): refusals of what cannot be
 * traced everywhere; with root, a loop device and tracefs, the blocks of
 * known O_DIRECT writes exactly, collect's arguments (block size, bound,
 * repeated calls), a flooded tiny buffer reported incomplete, and the
 * private instance removed by stop. Skips those, visibly, without root,
 * losetup, a free loop device or usable tracefs. tests/e2e/t_wtrace.sh
 * covers file systems, discards, partitions and writes in flight. */
#include "testutil.h"

#include <sys/sysmacros.h>

#include "wtrace.h"

/* ------------------------------------------------------------ refusals */

static void test_not_block_device(void **state)
{
	(void)state;
	char d[64], f[128];
	tu_mkdtemp(d, sizeof d);
	snprintf(f, sizeof f, "%s/file", d);
	FILE *fp = fopen(f, "w");
	assert_non_null(fp);
	fputs("x", fp);
	fclose(fp);
	cbi_error err = { 0 };
	assert_int_equal(cbi_wtrace_usable(f, &err), -ENOTSUP);
	assert_non_null(strstr(err.msg, "not a block device"));
	assert_non_null(strstr(err.msg, f));
	cbi_wtrace *t = (cbi_wtrace *)1;
	assert_int_equal(cbi_wtrace_start(f, 0, &t, &err), -ENOTSUP);
	assert_null(t);
	assert_int_equal(cbi_wtrace_usable(d, NULL), -ENOTSUP); /* a directory; err may be NULL */
	snprintf(f, sizeof f, "%s/missing", d);
	assert_int_equal(cbi_wtrace_usable(f, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "missing"));
	tu_rm_rf(d);
}

static void test_stop_null(void **state)
{
	(void)state;
	cbi_wtrace_stop(NULL);
}

/* ------------------------------------------------------------ on a loop device */

typedef struct loopfix {
	char dir[64];
	char dev[64];
} loopfix;

/* A 64 MiB loop device, or a visible skip. */
static int loop_setup(void **state)
{
	loopfix *lf = calloc(1, sizeof *lf);
	assert_non_null(lf);
	*state = lf;
	if (geteuid() != 0) {
		printf("SKIP: wtrace on a loop device needs root\n");
		return 0;
	}
	tu_mkdtemp(lf->dir, sizeof lf->dir);
	char cmd[256];
	snprintf(cmd, sizeof cmd, "truncate -s 64M %s/disk.img && losetup -f --show %s/disk.img 2>/dev/null",
		 lf->dir, lf->dir);
	FILE *p = popen(cmd, "r");
	if (p) {
		if (!fgets(lf->dev, sizeof lf->dev, p))
			lf->dev[0] = 0;
		lf->dev[strcspn(lf->dev, "\n")] = 0;
		pclose(p);
	}
	if (!lf->dev[0]) {
		printf("SKIP: wtrace: no loop device (losetup -f failed)\n");
		return 0;
	}
	cbi_error err = { 0 };
	if (cbi_wtrace_usable(lf->dev, &err)) {
		printf("SKIP: wtrace: %s\n", err.msg);
		char c2[128];
		snprintf(c2, sizeof c2, "losetup -d %s", lf->dev);
		(void)!system(c2);
		lf->dev[0] = 0;
	}
	return 0;
}

static int loop_teardown(void **state)
{
	loopfix *lf = *state;
	if (lf->dev[0]) {
		char cmd[128];
		snprintf(cmd, sizeof cmd, "losetup -d %s", lf->dev);
		(void)!system(cmd);
	}
	if (lf->dir[0])
		tu_rm_rf(lf->dir);
	free(lf);
	return 0;
}

/* n O_DIRECT writes of len bytes at off, off + len, ... */
static void dio_write(const char *dev, uint64_t off, size_t len, int n)
{
	int fd = open(dev, O_WRONLY | O_DIRECT | O_CLOEXEC);
	assert_true(fd >= 0);
	void *buf = NULL;
	assert_int_equal(posix_memalign(&buf, 4096, len), 0);
	memset(buf, 0x5a, len);
	for (int i = 0; i < n; i++)
		assert_int_equal(pwrite(fd, buf, len, (off_t)(off + (uint64_t)i * len)), (ssize_t)len);
	free(buf);
	close(fd);
}

/* How many instances of this process exist in tracefs. */
static int own_instances(void)
{
	const char *dirs[] = { "/sys/kernel/tracing/instances", "/sys/kernel/debug/tracing/instances" };
	char prefix[64];
	snprintf(prefix, sizeof prefix, "cbimg-wtrace-%ld-", (long)getpid());
	int n = 0;
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
		DIR *d = opendir(dirs[i]);
		struct dirent *de;
		while (d && (de = readdir(d)))
			n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
		if (d)
			closedir(d);
	}
	return n;
}

static int bit(const uint8_t *m, uint64_t b) { return m[b / 8] >> (b % 8) & 1; }

static void test_direct_writes(void **state)
{
	loopfix *lf = *state;
	if (!lf->dev[0])
		skip();
	cbi_error err = { 0 };
	cbi_wtrace *t = NULL;
	assert_int_equal(cbi_wtrace_start(lf->dev, 0, &t, &err), 0);
	assert_non_null(t);
	assert_int_equal(own_instances(), 1);
	dio_write(lf->dev, 3 * 4096, 4096, 1);
	dio_write(lf->dev, 9 * 4096 + 1024 * 1024, 4096, 2); /* blocks 265, 266 */
	dio_write(lf->dev, 64 * 1024 * 1024 - 512, 512, 1);  /* the last sector: block 16383 */

	const uint64_t nb = 16384;
	uint8_t map[16384 / 8] = { 0 };
	uint64_t n = 0;
	int complete = -1;
	assert_int_equal(cbi_wtrace_collect(t, 4096, nb, map, &n, &complete, &err), 0);
	assert_int_equal(complete, 1);
	assert_int_equal(n, 4);
	for (uint64_t b = 0; b < nb; b++)
		assert_int_equal(bit(map, b), b == 3 || b == 265 || b == 266 || b == 16383);
	/* again: nothing new; a write since then adds only itself */
	assert_int_equal(cbi_wtrace_collect(t, 4096, nb, map, &n, &complete, &err), 0);
	assert_int_equal(n, 0);
	assert_int_equal(complete, 1);
	dio_write(lf->dev, 100 * 4096, 4096, 1);
	assert_int_equal(cbi_wtrace_collect(t, 4096, nb, map, &n, &complete, &err), 0);
	assert_int_equal(n, 1);
	assert_true(bit(map, 100));

	/* larger blocks: a write marks every block it overlaps */
	uint8_t big[128] = { 0 };
	assert_int_equal(cbi_wtrace_collect(t, 65536, 1024, big, &n, &complete, &err), 0);
	assert_int_equal(n, 4); /* 64 KiB blocks 0 (3), 16 (265, 266), 6 (100), 1023 */
	assert_true(bit(big, 0) && bit(big, 16) && bit(big, 6) && bit(big, 1023));
	/* n_blocks bounds the bitmap */
	uint8_t small[1] = { 0 };
	assert_int_equal(cbi_wtrace_collect(t, 4096, 5, small, &n, &complete, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(small[0], 1 << 3);
	/* a block size that is no multiple of the sector */
	assert_int_equal(cbi_wtrace_collect(t, 1000, nb, map, &n, &complete, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "1000"));

	cbi_wtrace_stop(t);
	assert_int_equal(own_instances(), 0);
}

static void test_overrun(void **state)
{
	loopfix *lf = *state;
	if (!lf->dev[0])
		skip();
	cbi_error err = { 0 };
	cbi_wtrace *t = NULL;
	assert_int_equal(cbi_wtrace_start(lf->dev, 8, &t, &err), 0);
	dio_write(lf->dev, 0, 512, 20000);
	uint8_t map[16384 / 8] = { 0 };
	uint64_t n = 0;
	int complete = -1;
	assert_int_equal(cbi_wtrace_collect(t, 4096, 16384, map, &n, &complete, &err), 0);
	assert_int_equal(complete, 0);
	/* sticky: a later collect with nothing new still says incomplete */
	assert_int_equal(cbi_wtrace_collect(t, 4096, 16384, map, &n, &complete, &err), 0);
	assert_int_equal(complete, 0);
	cbi_wtrace_stop(t);
	assert_int_equal(own_instances(), 0);
}

static void test_two_tracers(void **state)
{
	loopfix *lf = *state;
	if (!lf->dev[0])
		skip();
	cbi_error err = { 0 };
	cbi_wtrace *a = NULL, *b = NULL;
	assert_int_equal(cbi_wtrace_start(lf->dev, 0, &a, &err), 0);
	dio_write(lf->dev, 7 * 4096, 4096, 1);
	assert_int_equal(cbi_wtrace_start(lf->dev, 0, &b, &err), 0);
	assert_int_equal(own_instances(), 2);
	dio_write(lf->dev, 8 * 4096, 4096, 1);
	uint8_t ma[16384 / 8] = { 0 }, mb[16384 / 8] = { 0 };
	uint64_t n = 0;
	int complete = -1;
	assert_int_equal(cbi_wtrace_collect(a, 4096, 16384, ma, &n, &complete, &err), 0);
	assert_int_equal(n, 2);
	assert_true(bit(ma, 7) && bit(ma, 8));
	assert_int_equal(cbi_wtrace_collect(b, 4096, 16384, mb, &n, &complete, &err), 0);
	assert_int_equal(n, 1);
	assert_true(bit(mb, 8));
	cbi_wtrace_stop(a);
	cbi_wtrace_stop(b);
	assert_int_equal(own_instances(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_not_block_device),
		cmocka_unit_test(test_stop_null),
		cmocka_unit_test_setup_teardown(test_direct_writes, loop_setup, loop_teardown),
		cmocka_unit_test_setup_teardown(test_overrun, loop_setup, loop_teardown),
		cmocka_unit_test_setup_teardown(test_two_tracers, loop_setup, loop_teardown),
	};
	return cmocka_run_group_tests_name("wtrace", tests, NULL, NULL);
}
