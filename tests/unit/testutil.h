/* testutil.h - helpers shared by the cmocka unit tests (header only).
 *
 * Every helper is static inline so that a test file that does not use one
 * does not trip -Wunused-function. Helpers that can fail abort the test
 * through cmocka's assertions, so callers need not check results. */
#ifndef CBI_TESTUTIL_H
#define CBI_TESTUTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cbimg.h"

/* ---------------------------------------------------------------- paths */

/* Per-test fixture: a fresh temporary directory under /tmp. */
typedef struct tu_fix {
	char dir[256];
	void *user;     /* free for the test to use; not freed by teardown */
} tu_fix;

/* Make a temporary directory under /tmp with mkdtemp; out holds >= 64 bytes. */
static inline void tu_mkdtemp(char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "/tmp/cbimg-unit-XXXXXX");
	assert_true(n > 0 && (size_t)n < outsz);
	assert_non_null(mkdtemp(out));
}

static inline int tu_rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

/* Remove a directory tree (like rm -rf). Safe on a missing path. Refuses
 * anything outside /tmp so that a bug in a test cannot do harm. */
static inline int tu_rm_rf(const char *path)
{
	if (strncmp(path, "/tmp/", 5) != 0)
		return -1;
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -1;
	/* make sure we can descend into directories a test made read-only */
	if (S_ISDIR(st.st_mode))
		chmod(path, 0700);
	return nftw(path, tu_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static inline int tu_setup_dir(void **state)
{
	tu_fix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	tu_mkdtemp(f->dir, sizeof f->dir);
	*state = f;
	return 0;
}

static inline int tu_teardown_dir(void **state)
{
	tu_fix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f);
	}
	*state = NULL;
	return 0;
}

/* dir + "/" + name into a static rotating buffer (8 slots). */
static inline const char *tu_path(const char *dir, const char *name)
{
	static char bufs[8][4096];
	static unsigned k;
	char tmp[4096]; /* dir may itself be an earlier result of tu_path */
	int n = snprintf(tmp, sizeof tmp, "%s/%s", dir, name);
	assert_true(n > 0 && (size_t)n < sizeof tmp);
	char *b = bufs[k++ % 8];
	memcpy(b, tmp, (size_t)n + 1);
	return b;
}

/* ----------------------------------------------------------------- data */

/* Deterministic pattern byte generator (xorshift64*). */
static inline uint64_t tu_rng(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Fill buf with random bytes derived from seed (incompressible). */
static inline void tu_fill_random(uint8_t *buf, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = tu_rng(&s);
		for (size_t j = 0; j < 8 && i + j < len; j++)
			buf[i + j] = (uint8_t)(v >> (8 * j));
	}
}

/* Fill buf with compressible text-like data that depends on seed and on the
 * position (every 4 KiB block differs from the others). Never all zero. */
static inline void tu_fill_text(uint8_t *buf, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++) {
		size_t blk = i / 4096;
		buf[i] = (uint8_t)('a' + (((i % 61) + blk * 7 + seed * 13) % 26));
	}
	/* a few random bytes per block so that no two blocks are equal */
	for (size_t b = 0; b * 4096 < len; b++) {
		uint64_t s = seed * 1000003ull + b + 1;
		for (size_t j = 0; j < 16 && b * 4096 + j * 97 < len; j++)
			buf[b * 4096 + j * 97] = (uint8_t)(tu_rng(&s) | 1);
	}
}

/* Write len bytes of buf to path (created or truncated). */
static inline void tu_write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	const uint8_t *p = buf;
	size_t left = len;
	while (left) {
		ssize_t w = write(fd, p, left);
		assert_true(w > 0);
		p += w;
		left -= (size_t)w;
	}
	assert_int_equal(close(fd), 0);
}

/* Write a file of pattern data (text-like, compressible) of len bytes. */
static inline void tu_write_pattern(const char *path, size_t len, uint64_t seed)
{
	uint8_t *b = malloc(len ? len : 1);
	assert_non_null(b);
	tu_fill_text(b, len, seed);
	tu_write_file(path, b, len);
	free(b);
}

/* pwrite len bytes at off into an existing file. */
static inline void tu_pwrite(const char *path, const void *buf, size_t len, off_t off)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

/* Read a whole file; *len gets its size. Caller frees. */
static inline uint8_t *tu_read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	size_t n = (size_t)st.st_size;
	uint8_t *b = malloc(n ? n : 1);
	assert_non_null(b);
	size_t got = 0;
	while (got < n) {
		ssize_t r = pread(fd, b + got, n - got, (off_t)got);
		assert_true(r > 0);
		got += (size_t)r;
	}
	close(fd);
	*len = n;
	return b;
}

static inline int64_t tu_file_size(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return -1;
	return (int64_t)st.st_size;
}

static inline int tu_exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* XOR the byte at off with mask (default 0xff when mask is 0). */
static inline void tu_flip_byte(const char *path, uint64_t off, uint8_t mask)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	uint8_t c;
	assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
	c ^= mask ? mask : 0xff;
	assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
	assert_int_equal(close(fd), 0);
}

/* Copy a file. */
static inline void tu_copy_file(const char *from, const char *to)
{
	size_t n;
	uint8_t *b = tu_read_file(from, &n);
	tu_write_file(to, b, n);
	free(b);
}

/* Is the file at path byte-identical to buf? */
static inline int tu_file_equals(const char *path, const void *buf, size_t len)
{
	size_t n;
	uint8_t *b = tu_read_file(path, &n);
	int eq = n == len && memcmp(b, buf, len) == 0;
	free(b);
	return eq;
}

/* Number of entries of dir whose name ends with suffix (NULL: all but . and
 * ..); prefix_dot: 1 only dot names, 0 only non-dot names, -1 both. */
static inline int tu_count(const char *dir, const char *suffix, int prefix_dot)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		int dot = de->d_name[0] == '.';
		if (prefix_dot == 1 && !dot)
			continue;
		if (prefix_dot == 0 && dot)
			continue;
		size_t l = strlen(de->d_name), s = suffix ? strlen(suffix) : 0;
		if (suffix && (l < s || strcmp(de->d_name + l - s, suffix)))
			continue;
		n++;
	}
	closedir(d);
	return n;
}

/* Path of the first entry of dir whose name ends with suffix and whose
 * name contains `contains` (NULL: any); NULL if none. Static buffer. */
static inline const char *tu_find(const char *dir, const char *suffix, const char *contains)
{
	static char out[4096];
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	const char *res = NULL;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		size_t l = strlen(de->d_name), s = strlen(suffix);
		if (l < s || strcmp(de->d_name + l - s, suffix))
			continue;
		if (contains && !strstr(de->d_name, contains))
			continue;
		snprintf(out, sizeof out, "%s/%s", dir, de->d_name);
		res = out;
		break;
	}
	closedir(d);
	return res;
}

/* ------------------------------------------------------- library helpers */

/* Default backup options for tests: 4 KiB blocks, 2 threads, fixed ids.
 * The local job state is off: by default it lives in /var/lib/cbimg, which
 * unit tests must not touch, and since every test uses the same host, job
 * and source id, a shared state would carry chains from one test (or run)
 * into the next. Tests of the state set state_dir and clear no_state. */
static inline cbi_backup_opts tu_bopts(const char *source, const char *dest)
{
	cbi_backup_opts o;
	memset(&o, 0, sizeof o);
	o.source = source;
	o.dest = dest;
	o.job = "unit";
	o.host = "testhost";
	o.source_id = "test:disk0";
	o.block_size = 4096;
	o.threads = 2;
	o.no_state = 1;
	return o;
}

/* Run a backup that must succeed, printing the library message if not. */
static inline void tu_backup_ok(const cbi_backup_opts *o, cbi_backup_result *r)
{
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_backup(o, r, &e);
	if (rc)
		print_error("cbi_backup(%s -> %s) = %d: %s\n", o->source, o->dest, rc, e.msg);
	assert_int_equal(rc, 0);
}

/* Restore point file into target (force), must succeed. */
static inline void tu_restore_ok(const char *point, const char *target, cbi_restore_result *r)
{
	cbi_restore_opts o;
	memset(&o, 0, sizeof o);
	o.point = point;
	o.target = target;
	o.force = 1;
	o.threads = 1;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_restore(&o, r, &e);
	if (rc)
		print_error("cbi_restore(%s -> %s) = %d: %s\n", point, target, rc, e.msg);
	assert_int_equal(rc, 0);
}

/* The bucket of the S3 server that tests/e2e/t_s3.sh starts
 * (CBIMG_S3_TEST_BUCKET); without one the test is skipped, visibly. */
static inline const char *tu_s3_bucket(void)
{
	const char *bucket = getenv("CBIMG_S3_TEST_BUCKET");
	if (!bucket || !*bucket) {
		printf("SKIP: no S3 server (CBIMG_S3_TEST_BUCKET unset; tests/e2e/t_s3.sh starts one)\n");
		skip();
	}
	return bucket;
}

#endif
