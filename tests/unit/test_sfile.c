/* test_sfile.c - sealed file writer (temp name, digest, commit, abort)
 * and checked reader. */
#include "testutil.h"

#include <openssl/evp.h>

#include "format.h"
#include "sfile.h"
#include "util.h"

static void sha256(const void *buf, size_t len, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	assert_non_null(c);
	unsigned int dl = 0;
	assert_int_equal(EVP_DigestInit_ex(c, EVP_sha256(), NULL), 1);
	assert_int_equal(EVP_DigestUpdate(c, buf, len), 1);
	assert_int_equal(EVP_DigestFinal_ex(c, out, &dl), 1);
	assert_int_equal(dl, 32);
	EVP_MD_CTX_free(c);
}

/* Name of the only entry of dir (asserts there is exactly one). */
static const char *only_entry(const char *dir)
{
	static char name[256];
	assert_int_equal(tu_count(dir, NULL, -1), 1);
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			cbi_strlcpy(name, de->d_name, sizeof name);
	closedir(d);
	return name;
}

static void trailer96(uint8_t *t)
{
	for (int i = 0; i < 96; i++)
		t[i] = (uint8_t)(0x60 + i);
}

/* Write size bytes of pattern data in uneven chunks; returns the data. */
static uint8_t *write_data(cbi_sfw *w, size_t size)
{
	uint8_t *data = malloc(size);
	assert_non_null(data);
	tu_fill_random(data, size, size);
	size_t off = 0, chunk = 1;
	while (off < size) {
		size_t n = CBI_MIN(chunk, size - off);
		assert_int_equal(cbi_sfw_write(w, data + off, n), 0);
		off += n;
		assert_true(cbi_sfw_offset(w) == off);
		chunk = chunk * 3 + 7; /* 1, 10, 37, ... crosses the 1 MiB buffer */
	}
	return data;
}

static void test_writer_temp_name_then_commit(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "point.cbx");
	cbi_sfw *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_sfw_create(final, &w, &e), 0);
	assert_non_null(w);
	assert_string_equal(cbi_sfw_final_path(w), final);

	/* only a hidden temporary file exists, never the final name */
	const char *tmp = only_entry(f->dir);
	assert_int_equal(tmp[0], '.');
	size_t l = strlen(tmp);
	assert_true(l > 4);
	assert_string_equal(tmp + l - 4, ".tmp");
	assert_false(tu_exists(final));
	char tmppath[4096];
	snprintf(tmppath, sizeof tmppath, "%s/%s", f->dir, tmp);

	size_t size = 3u * 1024 * 1024 + 123; /* more than the writer's buffer */
	uint8_t *data = write_data(w, size);
	assert_false(tu_exists(final));

	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_true(cbi_sfw_offset(w) == size + 128);
	assert_false(tu_exists(final)); /* sealed, still not committed */
	assert_int_equal(tu_file_size(tmppath), (int64_t)(size + 128));

	/* the file is data + trailer96 + SHA-256(data + trailer96) */
	size_t n;
	uint8_t *file = tu_read_file(tmppath, &n);
	assert_int_equal(n, size + 128);
	assert_memory_equal(file, data, size);
	assert_memory_equal(file + size, t, 96);
	uint8_t want[32];
	sha256(file, n - 32, want);
	assert_memory_equal(file + n - 32, want, 32);
	assert_memory_equal(digest, want, 32);
	free(file);

	assert_int_equal(cbi_sfw_commit(w, &e), 0);
	assert_true(tu_exists(final));
	assert_false(tu_exists(tmppath));
	assert_string_equal(only_entry(f->dir), "point.cbx");
	file = tu_read_file(final, &n);
	assert_int_equal(n, size + 128);
	assert_memory_equal(file, data, size);
	assert_memory_equal(file + n - 32, want, 32);
	free(file);
	free(data);

	/* the reader agrees that the digest is intact */
	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(final, &r, &e), 0);
	assert_true(r->size == size + 128);
	assert_string_equal(r->path, final);
	assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), 0);
	cbi_sfr_close(r);
}

static void test_writer_tagged_temp_name(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "host_x_full0000_abcd.cbi");
	cbi_sfw *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_sfw_create_tagged(final, "cbimg-0123456789abcdef-42", &w, &e), 0);
	/* ".TAG.BASENAME.tmp" */
	assert_string_equal(only_entry(f->dir), ".cbimg-0123456789abcdef-42.host_x_full0000_abcd.cbi.tmp");
	assert_false(tu_exists(final));
	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_write(w, "abc", 3), 0);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_int_equal(cbi_sfw_commit(w, &e), 0);
	assert_string_equal(only_entry(f->dir), "host_x_full0000_abcd.cbi");

	/* NULL tag: the default ".BASENAME.PID.tmp" */
	assert_int_equal(cbi_sfw_create_tagged(tu_path(f->dir, "y.cbx"), NULL, &w, &e), 0);
	char want[256];
	snprintf(want, sizeof want, ".y.cbx.%ld.tmp", (long)getpid());
	assert_int_equal(tu_count(f->dir, ".tmp", 1), 1);
	assert_true(tu_exists(tu_path(f->dir, want)));
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 1);
}

/* Regression (bug found by this test, since fixed in sfile.c): when
 * open(O_EXCL) of the temporary name failed with EEXIST, the error path's
 * cbi_sfw_abort() unlinked w->tmp - the file that already existed and
 * belonged to someone else (another writer of this process, or a same-pid
 * leftover). A failed create must not remove a file it did not create. */
static void test_failed_create_keeps_existing_temp(void **state)
{
	tu_fix *f = *state;
	cbi_sfw *w = NULL, *w2 = NULL;
	cbi_error e;
	assert_int_equal(cbi_sfw_create_tagged(tu_path(f->dir, "z.cbx"), "t", &w, &e), 0);
	assert_int_equal(cbi_sfw_write(w, "first", 5), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_sfw_create_tagged(tu_path(f->dir, "z.cbx"), "t", &w2, &e), -EEXIST);
	assert_int_equal(e.code, -EEXIST);
	assert_null(w2);
	int still = tu_exists(tu_path(f->dir, ".t.z.cbx.tmp"));
	if (still) {
		/* and the first writer can still finish */
		uint8_t t[96], digest[32];
		trailer96(t);
		assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
		assert_int_equal(cbi_sfw_commit(w, &e), 0);
		assert_int_equal(tu_file_size(tu_path(f->dir, "z.cbx")), 5 + 128);
	} else {
		cbi_sfw_abort(w);
		fail_msg("a create that failed with EEXIST removed the existing '.t.z.cbx.tmp'");
	}
}

static void test_writer_small_and_empty_payload(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "tiny.cbi");
	cbi_sfw *w = NULL;
	assert_int_equal(cbi_sfw_create(final, &w, NULL), 0);
	uint8_t t[96], digest[32];
	trailer96(t);
	/* nothing but the trailer */
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_int_equal(cbi_sfw_commit(w, NULL), 0);
	size_t n;
	uint8_t *file = tu_read_file(final, &n);
	assert_int_equal(n, 128);
	uint8_t want[32];
	sha256(t, 96, want);
	assert_memory_equal(file + 96, want, 32);
	assert_memory_equal(digest, want, 32);
	free(file);
}

static void test_writer_abort_removes_temp(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "a.cbi");
	cbi_sfw *w = NULL;
	assert_int_equal(cbi_sfw_create(final, &w, NULL), 0);
	uint8_t *d = write_data(w, 2u << 20);
	free(d);
	assert_int_equal(tu_count(f->dir, ".tmp", 1), 1);
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);

	/* abort after seal too */
	assert_int_equal(cbi_sfw_create(final, &w, NULL), 0);
	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);

	cbi_sfw_abort(NULL); /* NULL-safe */
}

static void test_writer_commit_replaces_existing(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "x.cbx");
	tu_write_file(final, "old", 3);
	cbi_sfw *w = NULL;
	assert_int_equal(cbi_sfw_create(final, &w, NULL), 0);
	assert_true(tu_file_equals(final, "old", 3)); /* untouched until commit */
	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_write(w, "new", 3), 0);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_true(tu_file_equals(final, "old", 3));
	assert_int_equal(cbi_sfw_commit(w, NULL), 0);
	assert_int_equal(tu_file_size(final), 3 + 128);
}

/* Regression (bug found by this test under ASan/valgrind, since fixed in
 * sfile.c): when open() of the temporary file failed, the error path freed
 * the writer with cbi_sfw_abort() and then formatted the message with the
 * freed w->tmp (heap use after free). Without a sanitizer the freed memory
 * usually still holds the name, so only the ASan build and valgrind see it. */
static void test_writer_create_errors(void **state)
{
	tu_fix *f = *state;
	cbi_sfw *w = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	const char *bad = tu_path(f->dir, "nodir/x.cbi");
	int rc = cbi_sfw_create(bad, &w, &e);
	assert_int_equal(rc, -ENOENT);
	assert_int_equal(e.code, -ENOENT);
	assert_non_null(strstr(e.msg, "nodir/.x.cbi.")); /* names the temporary file */
	assert_null(w);
	memset(&e, 0, sizeof e);
	rc = cbi_sfw_create_tagged(bad, "tag", &w, &e);
	assert_int_equal(rc, -ENOENT);
	assert_non_null(strstr(e.msg, "nodir/.tag.x.cbi.tmp"));

	/* a path that does not fit with the temporary decoration */
	char longp[4200];
	memset(longp, 'a', sizeof longp - 1);
	longp[0] = '/';
	longp[sizeof longp - 1] = 0;
	memcpy(longp, f->dir, strlen(f->dir));
	longp[strlen(f->dir)] = '/';
	rc = cbi_sfw_create(longp, &w, &e);
	assert_true(rc < 0);
	assert_int_equal(e.code, rc);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);
}

/* ----------------------------------------------------------- reader */

static void test_reader_too_short(void **state)
{
	tu_fix *f = *state;
	const size_t sizes[] = { 0, 1, CBI_HDR_SIZE, CBI_HDR_SIZE + CBI_TRL_SIZE - 1 };
	const char *p = tu_path(f->dir, "short.cbx");
	uint8_t buf[CBI_HDR_SIZE + CBI_TRL_SIZE];
	memset(buf, 0x11, sizeof buf);
	for (size_t i = 0; i < 4; i++) {
		tu_write_file(p, buf, sizes[i]);
		cbi_sfr *r = NULL;
		cbi_error e;
		memset(&e, 0, sizeof e);
		assert_int_equal(cbi_sfr_open(p, &r, &e), -CBI_ETRUNCATED);
		assert_int_equal(e.code, -CBI_ETRUNCATED);
		assert_non_null(strstr(e.msg, "short.cbx"));
		assert_null(r);
	}
	/* exactly header + trailer: opens */
	tu_write_file(p, buf, sizeof buf);
	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(p, &r, NULL), 0);
	assert_true(r->size == sizeof buf);
	/* reads beyond the end are truncation errors */
	uint8_t x[16];
	assert_int_equal(cbi_sfr_pread(r, x, 16, sizeof buf - 16), 0);
	assert_int_equal(cbi_sfr_pread(r, x, 16, sizeof buf - 15), -CBI_ETRUNCATED);
	assert_int_equal(cbi_sfr_pread(r, x, 1, sizeof buf), -CBI_ETRUNCATED);
	assert_int_equal(cbi_sfr_pread(r, x, 1, UINT64_MAX), -CBI_ETRUNCATED);
	assert_int_equal(cbi_sfr_pread(r, x, 0, sizeof buf), 0);
	/* not sealed: the digest does not match */
	assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), -CBI_EDAMAGED);
	cbi_sfr_close(r);
	cbi_sfr_close(NULL);
}

static void test_reader_missing_and_dir(void **state)
{
	tu_fix *f = *state;
	cbi_sfr *r = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_sfr_open(tu_path(f->dir, "missing.cbx"), &r, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "missing.cbx"));
	assert_int_equal(cbi_sfr_open(f->dir, &r, &e), -EISDIR);
	assert_null(r);
}

static int count_progress(void *ud, uint64_t done, uint64_t total)
{
	int *n = ud;
	(*n)++;
	assert_true(done <= total);
	return 0;
}

static int cancel_progress(void *ud, uint64_t done, uint64_t total)
{
	(void)ud;
	(void)done;
	(void)total;
	return 1;
}

static void test_check_digest_detects_flip(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "d.cbi");
	cbi_sfw *w = NULL;
	assert_int_equal(cbi_sfw_create(final, &w, NULL), 0);
	size_t size = 5u << 20; /* more than one 4 MiB read of the checker */
	uint8_t *d = write_data(w, size);
	free(d);
	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_int_equal(cbi_sfw_commit(w, NULL), 0);

	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(final, &r, NULL), 0);
	int calls = 0;
	assert_int_equal(cbi_sfr_check_digest(r, count_progress, &calls), 0);
	assert_true(calls >= 2);
	assert_int_equal(cbi_sfr_check_digest(r, cancel_progress, NULL), -ECANCELED);
	cbi_sfr_close(r);

	uint64_t total = size + 128;
	const uint64_t offs[] = { 0, 1, 4096, (4u << 20) - 1, 4u << 20, size - 1, size, size + 95,
				  size + 96, total - 1 };
	for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
		tu_flip_byte(final, offs[i], 0x01);
		assert_int_equal(cbi_sfr_open(final, &r, NULL), 0);
		int rc = cbi_sfr_check_digest(r, NULL, NULL);
		if (rc != -CBI_EDAMAGED)
			fail_msg("flipped byte at %llu not detected (rc %d)", (unsigned long long)offs[i], rc);
		cbi_sfr_close(r);
		tu_flip_byte(final, offs[i], 0x01); /* restore */
		assert_int_equal(cbi_sfr_open(final, &r, NULL), 0);
		assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), 0);
		cbi_sfr_close(r);
	}
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		T(test_writer_create_errors),
		T(test_writer_temp_name_then_commit),
		T(test_writer_tagged_temp_name),
		T(test_failed_create_keeps_existing_temp),
		T(test_writer_small_and_empty_payload),
		T(test_writer_abort_removes_temp),
		T(test_writer_commit_replaces_existing),
		T(test_reader_too_short),
		T(test_reader_missing_and_dir),
		T(test_check_digest_detects_flip),
	};
	return cmocka_run_group_tests_name("sfile", tests, NULL, NULL);
}
