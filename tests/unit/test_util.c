/* test_util.c - little-endian helpers, zero detection, names, errors. */
#include "testutil.h"

#include "util.h"

/* ------------------------------------------------------------ ld / st */

static void test_st_exact_byte_order(void **state)
{
	(void)state;
	uint8_t b[8];
	memset(b, 0xee, sizeof b);
	st16(b, 0x0102);
	assert_int_equal(b[0], 0x02);
	assert_int_equal(b[1], 0x01);
	assert_int_equal(b[2], 0xee); /* nothing written beyond */

	memset(b, 0xee, sizeof b);
	st32(b, 0x01020304u);
	const uint8_t w32[] = { 0x04, 0x03, 0x02, 0x01, 0xee };
	assert_memory_equal(b, w32, 5);

	st64(b, 0x0102030405060708ull);
	const uint8_t w64[] = { 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01 };
	assert_memory_equal(b, w64, 8);
}

static void test_ld_exact_byte_order(void **state)
{
	(void)state;
	const uint8_t b[] = { 0xf1, 0xe2, 0xd3, 0xc4, 0xb5, 0xa6, 0x97, 0x88 };
	assert_int_equal(ld16(b), 0xe2f1);
	assert_int_equal(ld32(b), 0xc4d3e2f1u);
	assert_true(ld64(b) == 0x8897a6b5c4d3e2f1ull);
	/* high bits set in every byte: no sign extension */
	const uint8_t ff[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	assert_int_equal(ld16(ff), 0xffff);
	assert_int_equal(ld32(ff), 0xffffffffu);
	assert_true(ld64(ff) == UINT64_MAX);
}

static void test_ldst_round_trip(void **state)
{
	(void)state;
	uint64_t s = 42;
	uint8_t b[8];
	const uint64_t edge[] = { 0, 1, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x7fffffff,
				  0x80000000u, 0xffffffffu, 0x100000000ull, 0x7fffffffffffffffull,
				  0x8000000000000000ull, UINT64_MAX };
	for (size_t i = 0; i < sizeof edge / sizeof edge[0] + 1000; i++) {
		uint64_t v = i < sizeof edge / sizeof edge[0] ? edge[i] : tu_rng(&s);
		st16(b, (uint16_t)v);
		assert_int_equal(ld16(b), (uint16_t)v);
		st32(b, (uint32_t)v);
		assert_int_equal(ld32(b), (uint32_t)v);
		st64(b, v);
		assert_true(ld64(b) == v);
		/* store is the same as a byte-by-byte little-endian encoding */
		for (int k = 0; k < 8; k++)
			assert_int_equal(b[k], (uint8_t)(v >> (8 * k)));
	}
}

/* ------------------------------------------------------------ is_zero */

static void test_is_zero_sizes(void **state)
{
	(void)state;
	uint8_t z[65]; /* one byte beyond the longest length tested */
	memset(z, 0, sizeof z);
	assert_true(cbi_is_zero(z, 0));
	assert_true(cbi_is_zero(NULL, 0)); /* len 0 never dereferences */
	assert_true(cbi_is_zero(z, 1));
	assert_true(cbi_is_zero(z, 15));
	assert_true(cbi_is_zero(z, 16));
	assert_true(cbi_is_zero(z, 17));
	assert_true(cbi_is_zero(z, 64));

	uint8_t one = 1;
	assert_false(cbi_is_zero(&one, 1));
	const size_t lens[] = { 1, 2, 15, 16, 17, 31, 32, 33, 64 };
	for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
		size_t n = lens[li];
		for (size_t pos = 0; pos < n; pos++) {
			memset(z, 0, sizeof z);
			z[pos] = 0x80;
			assert_false(cbi_is_zero(z, n));
			/* a non-zero byte just beyond len is not looked at */
			memset(z, 0, sizeof z);
			z[n] = 1;
			assert_true(cbi_is_zero(z, n));
		}
	}
}

static void test_is_zero_every_position_100(void **state)
{
	(void)state;
	uint8_t b[100];
	for (size_t pos = 0; pos < sizeof b; pos++) {
		for (int v = 1; v < 256; v <<= 1) {
			memset(b, 0, sizeof b);
			b[pos] = (uint8_t)v;
			if (cbi_is_zero(b, sizeof b))
				fail_msg("non-zero byte 0x%02x at position %zu not detected", v, pos);
		}
	}
	memset(b, 0, sizeof b);
	assert_true(cbi_is_zero(b, sizeof b));
	/* unaligned start */
	uint8_t big[130];
	memset(big, 0, sizeof big);
	for (size_t pos = 1; pos < 101; pos++) {
		big[pos] = 0xff;
		assert_false(cbi_is_zero(big + 1, 100));
		big[pos] = 0;
	}
	assert_true(cbi_is_zero(big + 1, 100));
}

static void test_is_zero_large(void **state)
{
	(void)state;
	size_t n = 1u << 20;
	uint8_t *b = calloc(1, n);
	assert_non_null(b);
	assert_true(cbi_is_zero(b, n));
	b[n - 1] = 1;
	assert_false(cbi_is_zero(b, n));
	b[n - 1] = 0;
	b[n / 2 + 3] = 1;
	assert_false(cbi_is_zero(b, n));
	free(b);
}

/* -------------------------------------------------------------- names */

static void test_sanitize_name(void **state)
{
	(void)state;
	char out[64];
	cbi_sanitize_name("host-01.example_com", out, sizeof out);
	assert_string_equal(out, "host-01.example_com");
	cbi_sanitize_name("a/b\\c:d*e?f\"g<h>i|j k", out, sizeof out);
	assert_string_equal(out, "a-b-c-d-e-f-g-h-i-j-k");
	cbi_sanitize_name("", out, sizeof out);
	assert_string_equal(out, "");
	/* UTF-8 bytes are replaced one by one */
	cbi_sanitize_name("caf\xc3\xa9", out, sizeof out);
	assert_string_equal(out, "caf--");
	/* control characters and tabs */
	cbi_sanitize_name("a\tb\nc\x7f", out, sizeof out);
	assert_string_equal(out, "a-b-c-");
	/* truncation keeps the terminator */
	memset(out, 'X', sizeof out);
	cbi_sanitize_name("abcdefgh", out, 5);
	assert_string_equal(out, "abcd");
	assert_int_equal(out[5], 'X'); /* nothing written beyond outsz */
	cbi_sanitize_name("abcdefgh", out, 1);
	assert_string_equal(out, "");
	/* outsz 0 writes nothing */
	out[0] = 'Q';
	cbi_sanitize_name("abc", out, 0);
	assert_int_equal(out[0], 'Q');
	/* a leading dot would hide the file from scans: it becomes '-' */
	cbi_sanitize_name(".lab.x", out, sizeof out);
	assert_string_equal(out, "-lab.x");
	/* only [A-Za-z0-9._-] survive, for every byte value ('.' not first) */
	for (int c = 1; c < 256; c++) {
		char in[2] = { (char)c, 0 };
		cbi_sanitize_name(in, out, sizeof out);
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			 c == '_' || c == '-';
		assert_int_equal(strlen(out), 1);
		assert_int_equal((unsigned char)out[0], ok ? c : '-');
	}
}

static void test_dirname(void **state)
{
	(void)state;
	char out[64];
	cbi_dirname("a/b/c", out, sizeof out);
	assert_string_equal(out, "a/b");
	cbi_dirname("/tmp/x.cbi", out, sizeof out);
	assert_string_equal(out, "/tmp");
	cbi_dirname("x.cbi", out, sizeof out);
	assert_string_equal(out, ".");
	cbi_dirname("/x", out, sizeof out);
	assert_string_equal(out, "/");
	cbi_dirname("/", out, sizeof out);
	assert_string_equal(out, "/");
	cbi_dirname("dir/", out, sizeof out);
	assert_string_equal(out, "dir");
	cbi_dirname("", out, sizeof out);
	assert_string_equal(out, ".");
	/* truncated to the buffer, always terminated */
	cbi_dirname("abcdefgh/ij", out, 4);
	assert_string_equal(out, "abc");
}

static void test_strlcpy(void **state)
{
	(void)state;
	char b[8];
	memset(b, 'X', sizeof b);
	cbi_strlcpy(b, "hello world", sizeof b);
	assert_string_equal(b, "hello w");
	cbi_strlcpy(b, "hi", sizeof b);
	assert_string_equal(b, "hi");
	cbi_strlcpy(b, NULL, sizeof b);
	assert_string_equal(b, "");
	b[0] = 'Q';
	cbi_strlcpy(b, "abc", 0);
	assert_int_equal(b[0], 'Q');
}

/* ------------------------------------------------------------- errors */

static void test_err_fills_code_and_message(void **state)
{
	(void)state;
	cbi_error e;
	memset(&e, 0x55, sizeof e);
	int rc = cbi_err(&e, -ENOENT, "unable to open '%s': %s", "/dev/sdz", strerror(ENOENT));
	assert_int_equal(rc, -ENOENT);
	assert_int_equal(e.code, -ENOENT);
	assert_string_equal(e.msg, "unable to open '/dev/sdz': No such file or directory");

	rc = cbi_err(&e, -CBI_EDAMAGED, "%d problems", 3);
	assert_int_equal(rc, -CBI_EDAMAGED);
	assert_int_equal(e.code, -CBI_EDAMAGED);
	assert_string_equal(e.msg, "3 problems");

	/* NULL err: just returns the code */
	assert_int_equal(cbi_err(NULL, -EIO, "x"), -EIO);

	/* an overlong message is truncated and terminated */
	char big[3000];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = 0;
	rc = cbi_err(&e, -EINVAL, "%s", big);
	assert_int_equal(rc, -EINVAL);
	assert_int_equal(strlen(e.msg), sizeof e.msg - 1);
}

static void test_strerror(void **state)
{
	(void)state;
	/* errno values, either sign */
	assert_string_equal(cbi_strerror(-ENOENT), strerror(ENOENT));
	assert_string_equal(cbi_strerror(ENOENT), strerror(ENOENT));
	assert_string_equal(cbi_strerror(-ENOSPC), strerror(ENOSPC));
	assert_string_equal(cbi_strerror(-EIO), strerror(EIO));
	/* every library code has its own non-empty text */
	const char *seen[CBI_ELOCKED - CBI_EDAMAGED + 1];
	for (int c = CBI_EDAMAGED; c <= CBI_ELOCKED; c++) {
		const char *t = cbi_strerror(-c);
		assert_non_null(t);
		assert_true(strlen(t) > 0);
		assert_null(strstr(t, "Unknown error"));
		assert_string_equal(t, cbi_strerror(c));
		for (int k = CBI_EDAMAGED; k < c; k++)
			assert_string_not_equal(t, seen[k - CBI_EDAMAGED]);
		seen[c - CBI_EDAMAGED] = t;
	}
	assert_string_equal(cbi_strerror(-CBI_EDAMAGED), "data damaged");
	assert_string_equal(cbi_strerror(-CBI_ELOCKED), "chain is locked by another cbimg process");
	/* unknown codes: never NULL */
	assert_non_null(cbi_strerror(0));
	assert_non_null(cbi_strerror(-999));
	assert_non_null(cbi_strerror(-(CBI_ELOCKED + 1)));
	assert_non_null(cbi_strerror(123456));
}

static void test_is_damage(void **state)
{
	(void)state;
	assert_true(cbi_is_damage(-CBI_EDAMAGED));
	assert_true(cbi_is_damage(-CBI_ETRUNCATED));
	assert_true(cbi_is_damage(-CBI_EFORMAT));
	assert_true(cbi_is_damage(CBI_EDAMAGED));
	assert_true(cbi_is_damage(CBI_ETRUNCATED));
	assert_true(cbi_is_damage(CBI_EFORMAT));
	assert_false(cbi_is_damage(0));
	assert_false(cbi_is_damage(-EIO));
	assert_false(cbi_is_damage(-ENOENT));
	assert_false(cbi_is_damage(-ECANCELED));
	for (int c = CBI_ENOPARENT; c <= CBI_ELOCKED; c++)
		assert_false(cbi_is_damage(-c));
}

/* ------------------------------------------------------- I/O helpers */

static void test_pread_pwrite_full(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "f");
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	uint8_t w[10000], r[10000];
	tu_fill_random(w, sizeof w, 7);
	assert_int_equal(cbi_pwrite_full(fd, w, sizeof w, 100), 0);
	assert_int_equal(tu_file_size(p), 10100);
	assert_int_equal(cbi_pread_full(fd, r, sizeof r, 100), 0);
	assert_memory_equal(r, w, sizeof w);
	/* a read past the end is a truncation */
	assert_int_equal(cbi_pread_full(fd, r, 200, 10000), -CBI_ETRUNCATED);
	assert_int_equal(cbi_pread_full(fd, r, 1, 10100), -CBI_ETRUNCATED);
	close(fd);
	/* bad descriptor */
	assert_int_equal(cbi_pread_full(-1, r, 1, 0), -EBADF);
	assert_int_equal(cbi_pwrite_full(-1, w, 1, 0), -EBADF);
	/* zero length is a no-op */
	assert_int_equal(cbi_pread_full(-1, r, 0, 0), 0);
}

static void test_fsync_dir_and_random(void **state)
{
	tu_fix *f = *state;
	assert_int_equal(cbi_fsync_dir(f->dir), 0);
	assert_int_equal(cbi_fsync_dir(tu_path(f->dir, "missing")), -ENOENT);
	tu_write_file(tu_path(f->dir, "file"), "x", 1);
	assert_int_equal(cbi_fsync_dir(tu_path(f->dir, "file")), -ENOTDIR);

	uint8_t a[64], b[64];
	memset(a, 0, sizeof a);
	memset(b, 0, sizeof b);
	assert_int_equal(cbi_random(a, sizeof a), 0);
	assert_int_equal(cbi_random(b, sizeof b), 0);
	assert_memory_not_equal(a, b, sizeof a);
	assert_false(cbi_is_zero(a, sizeof a));
	assert_int_equal(cbi_random(a, 0), 0);
}

static void test_clocks(void **state)
{
	(void)state;
	double t0 = cbi_now();
	double t1 = cbi_now();
	assert_true(t1 >= t0);
	int64_t ns = cbi_wallclock_ns();
	/* after 2020-01-01 and before 2100-01-01 */
	assert_true(ns > 1577836800LL * 1000000000LL);
	assert_true(ns < 4102444800LL * 1000000000LL);
}

static void test_id_hex(void **state)
{
	(void)state;
	uint8_t id[16];
	for (int i = 0; i < 16; i++)
		id[i] = (uint8_t)(i * 17);
	char out[33];
	memset(out, 'X', sizeof out);
	cbi_id_hex(id, out);
	assert_string_equal(out, "00112233445566778899aabbccddeeff");
}

/* cbi_err_prefix keeps the inner reason after the context. */
static void test_err_prefix(void **state)
{
	(void)state;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_err(&e, -ENOENT, "unable to open '%s': %s", "a.cbx", strerror(ENOENT)), -ENOENT);
	assert_int_equal(cbi_err_prefix(&e, -ENOENT, "newest point of job '%s'", "daily"), -ENOENT);
	assert_string_equal(e.msg, "newest point of job 'daily': unable to open 'a.cbx': No such file or directory");
	assert_int_equal(e.code, -ENOENT);
	/* no inner message: the code's text */
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_err_prefix(&e, -EIO, "syncing '%s'", "d"), -EIO);
	assert_string_equal(e.msg, "syncing 'd': Input/output error");
	/* too long: cut, still terminated */
	char big[2000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = 0;
	cbi_err(&e, -EIO, "inner");
	cbi_err_prefix(&e, -EIO, "%s", big);
	assert_int_equal(strlen(e.msg), sizeof e.msg - 1);
	assert_int_equal(cbi_err_prefix(NULL, -EIO, "x"), -EIO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_err_prefix),
		cmocka_unit_test(test_st_exact_byte_order),
		cmocka_unit_test(test_ld_exact_byte_order),
		cmocka_unit_test(test_ldst_round_trip),
		cmocka_unit_test(test_is_zero_sizes),
		cmocka_unit_test(test_is_zero_every_position_100),
		cmocka_unit_test(test_is_zero_large),
		cmocka_unit_test(test_sanitize_name),
		cmocka_unit_test(test_dirname),
		cmocka_unit_test(test_strlcpy),
		cmocka_unit_test(test_err_fills_code_and_message),
		cmocka_unit_test(test_strerror),
		cmocka_unit_test(test_is_damage),
		cmocka_unit_test_setup_teardown(test_pread_pwrite_full, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test_setup_teardown(test_fsync_dir_and_random, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test(test_clocks),
		cmocka_unit_test(test_id_hex),
	};
	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
