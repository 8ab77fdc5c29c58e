/* test_sfile.c - sealed file writer (temp name, digest, commit, abort)
 * and checked reader. */
#include "testutil.h"

#include <dlfcn.h>
#include <openssl/evp.h>

#include "format.h"
#include "fsprobe.h"
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


/* ----------------------------------------------------------- segments */

#define MIB (1u << 20)

/* A sealed "image" of total logical bytes whose header says it is split
 * into segments of seg_mib MiB (0: not split); the trailer starts with the
 * image trailer magic, the rest is pattern data. Returns the logical
 * bytes (caller frees); the file is committed at final. */
static uint8_t *write_split(const char *final, const char *tag, uint32_t seg_mib, size_t total,
			    uint32_t *nseg)
{
	assert_true(total >= CBI_HDR_SIZE + CBI_TRL_SIZE);
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.kind = CBI_KIND_IMAGE;
	h.version = 1; /* a plain file: version 1 */
	h.block_size = 4096;
	h.hash_alg = CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.source_size = 1 << 20;
	h.n_blocks = 256;
	h.type = CBI_FULL;
	h.level = 3;
	h.segment_mib = seg_mib;
	cbi_strlcpy(h.job, "j", sizeof h.job);
	uint8_t *all = malloc(total);
	assert_non_null(all);
	cbi_hdr_encode(&h, all);
	cbi_sfw *w = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_sfw_create_split(final, tag, (uint64_t)seg_mib * MIB, &w, &e), 0);
	assert_int_equal(cbi_sfw_write(w, all, CBI_HDR_SIZE), 0);
	size_t body = total - CBI_HDR_SIZE - CBI_TRL_SIZE;
	tu_fill_random(all + CBI_HDR_SIZE, body, total);
	for (size_t off = 0, chunk = 1; off < body; chunk = chunk * 3 + 7) {
		size_t n = CBI_MIN(chunk, body - off);
		assert_int_equal(cbi_sfw_write(w, all + CBI_HDR_SIZE + off, n), 0);
		off += n;
		assert_true(cbi_sfw_offset(w) == CBI_HDR_SIZE + off);
	}
	uint8_t t[96], digest[32];
	trailer96(t);
	memcpy(t, CBI_MAGIC_IMAGE_END, 8);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	memcpy(all + total - CBI_TRL_SIZE, t, 96);
	memcpy(all + total - 32, digest, 32);
	uint8_t want[32];
	sha256(all, total - 32, want);
	assert_memory_equal(digest, want, 32); /* the digest covers every segment */
	if (nseg)
		*nseg = cbi_sfw_segments(w);
	assert_int_equal(cbi_sfw_commit(w, &e), 0);
	return all;
}

static const char *seg_path(const char *final, uint32_t k)
{
	static char b[4096];
	assert_int_equal(cbi_sfile_segment_name(final, k, b, sizeof b), 0);
	return b;
}

static void test_segment_names(void **state)
{
	(void)state;
	char b[64];
	assert_int_equal(cbi_sfile_segment_name("d/x.cbi", 0, b, sizeof b), 0);
	assert_string_equal(b, "d/x.cbi");
	assert_int_equal(cbi_sfile_segment_name("d/x.cbi", 1, b, sizeof b), 0);
	assert_string_equal(b, "d/x.cbi.001");
	assert_int_equal(cbi_sfile_segment_name("d/x.cbi", 999, b, sizeof b), 0);
	assert_string_equal(b, "d/x.cbi.999");
	assert_int_equal(cbi_sfile_segment_name("d/x.cbi", 1000, b, sizeof b), 0);
	assert_string_equal(b, "d/x.cbi.1000");
	assert_int_equal(cbi_sfile_segment_name("d/x.cbi", 1, b, 11), -ENAMETOOLONG);
	/* segment sizes are whole MiB */
	cbi_sfw *w = NULL;
	assert_int_equal(cbi_sfw_create_split("/tmp/x.cbi", NULL, MIB + 1, &w, NULL), -EINVAL);
	assert_null(w);
}

/* Logical files of 5 MiB and one byte either side, in 1 MiB segments: the
 * last segment full, one byte, or one byte short. Every segment has the
 * right size, the segments joined are the logical file, and the reader
 * presents them as one file. */
static void test_split_write_read(void **state)
{
	tu_fix *f = *state;
	const size_t totals[] = { 5 * MIB, 5 * MIB + 1, 5 * MIB - 1, MIB, 2 * MIB + 640 };
	const uint32_t segs[] = { 5, 6, 5, 1, 3 };
	for (size_t c = 0; c < sizeof totals / sizeof totals[0]; c++) {
		char name[32];
		snprintf(name, sizeof name, "p%zu.cbi", c);
		const char *final = tu_path(f->dir, name);
		uint32_t n = 0;
		uint8_t *all = write_split(final, "cbimg-00ff-1", 1, totals[c], &n);
		assert_int_equal(n, segs[c]);
		/* exactly the final names, no temporary file left */
		assert_int_equal(tu_count(f->dir, NULL, 1), 0);
		for (uint32_t k = 0; k < n; k++) {
			size_t want = k + 1 < n ? MIB : totals[c] - (size_t)k * MIB;
			assert_int_equal(tu_file_size(seg_path(final, k)), (int64_t)want);
			size_t len;
			uint8_t *b = tu_read_file(seg_path(final, k), &len);
			assert_memory_equal(b, all + (size_t)k * MIB, len);
			free(b);
		}
		assert_false(tu_exists(seg_path(final, n)));

		cbi_sfr *r = NULL;
		cbi_error e;
		memset(&e, 0, sizeof e);
		assert_int_equal(cbi_sfr_open(final, &r, &e), 0);
		assert_true(r->size == totals[c]);
		assert_int_equal(r->nseg, n);
		assert_string_equal(r->path, final);
		assert_true(r->seg_size == MIB);
		/* reads at and across every segment edge */
		uint8_t buf[3000];
		for (uint32_t k = 1; k <= n; k++) {
			uint64_t edge = (uint64_t)k * MIB;
			const int64_t deltas[] = { -1500, -1, 0, 1 };
			for (size_t i = 0; i < 4; i++) {
				int64_t o = (int64_t)edge + deltas[i];
				if (o < 0 || (uint64_t)o >= totals[c])
					continue;
				size_t len = (size_t)CBI_MIN((uint64_t)sizeof buf, totals[c] - (uint64_t)o);
				assert_int_equal(cbi_sfr_pread(r, buf, len, (uint64_t)o), 0);
				assert_memory_equal(buf, all + o, len);
			}
		}
		assert_int_equal(cbi_sfr_pread(r, buf, 2, totals[c] - 1), -CBI_ETRUNCATED);
		assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), 0);
		cbi_sfr_close(r);

		/* a joined copy of the segments is read as one file */
		const char *joined = tu_path(f->dir, "joined.cbi");
		int fd = open(joined, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		assert_true(fd >= 0);
		assert_int_equal(cbi_sfile_copy_joined(final, fd, &e), 0);
		close(fd);
		assert_true(tu_file_equals(joined, all, totals[c]));
		assert_int_equal(cbi_sfr_open(joined, &r, &e), 0);
		assert_true(r->size == totals[c]);
		assert_int_equal(r->nseg, 1);
		assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), 0);
		cbi_sfr_close(r);
		unlink(joined);

		cbi_sfile_remove(final);
		assert_int_equal(tu_count(f->dir, NULL, -1), 0);
		free(all);
	}
}

/* Expect cbi_sfr_open to fail with code and a message naming `names`. */
static void expect_open_fails(const char *path, int code, const char *names)
{
	cbi_sfr *r = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_sfr_open(path, &r, &e);
	if (rc != code || !strstr(e.msg, names))
		fail_msg("open '%s' = %d (%s), expected %d naming '%s'", path, rc, e.msg, code, names);
	assert_null(r);
}

static void test_split_missing_segments(void **state)
{
	tu_fix *f = *state;
	char tmp[4096];
	/* a middle segment, then the last (full) one, then the first one */
	const char *p = tu_path(f->dir, "m.cbi");
	free(write_split(p, NULL, 1, 5 * MIB, NULL));
	snprintf(tmp, sizeof tmp, "%s", seg_path(p, 2));
	assert_int_equal(rename(tmp, tu_path(f->dir, "aside")), 0);
	expect_open_fails(p, -CBI_ETRUNCATED, "m.cbi.002' is missing");
	assert_int_equal(rename(tu_path(f->dir, "aside"), tmp), 0);
	snprintf(tmp, sizeof tmp, "%s", seg_path(p, 4));
	assert_int_equal(unlink(tmp), 0);
	expect_open_fails(p, -CBI_ETRUNCATED, "m.cbi.004' is missing");
	cbi_sfile_remove(p);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);

	/* a last segment of one byte */
	p = tu_path(f->dir, "o.cbi");
	free(write_split(p, NULL, 1, 3 * MIB + 1, NULL));
	assert_int_equal(unlink(seg_path(p, 3)), 0);
	expect_open_fails(p, -CBI_ETRUNCATED, "o.cbi.003' is missing");

	/* a truncated segment: in the middle, and the last one */
	p = tu_path(f->dir, "t.cbi");
	free(write_split(p, NULL, 1, 3 * MIB + 100, NULL));
	assert_int_equal(truncate(seg_path(p, 1), MIB - 1), 0);
	expect_open_fails(p, -CBI_ETRUNCATED, "t.cbi.001' is 1048575 bytes");
	assert_int_equal(truncate(seg_path(p, 1), MIB + 1), 0);
	expect_open_fails(p, -CBI_EDAMAGED, "t.cbi.001' is 1048577 bytes");
	assert_int_equal(truncate(seg_path(p, 1), MIB), 0);
	assert_int_equal(truncate(seg_path(p, 3), 99), 0);
	expect_open_fails(p, -CBI_ETRUNCATED, "no trailer at the end of segment '");
	assert_int_equal(truncate(seg_path(p, 3), 0), 0);
	expect_open_fails(p, -CBI_ETRUNCATED, "t.cbi.003' is 0 bytes");

	/* a file whose header does not say it is split ignores stray segments */
	p = tu_path(f->dir, "u.cbi");
	uint8_t *all = write_split(p, NULL, 0, 2 * MIB, NULL);
	tu_write_file(seg_path(p, 1), "stray", 5);
	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(p, &r, NULL), 0);
	assert_int_equal(r->nseg, 1);
	assert_true(r->size == 2 * MIB);
	assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), 0);
	cbi_sfr_close(r);
	free(all);
}

/* A flipped byte in any segment breaks the digest over the whole file. */
static void test_split_digest_covers_all(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "d.cbi");
	free(write_split(p, NULL, 1, 3 * MIB + 4000, NULL));
	const struct { uint32_t k; uint64_t off; } flips[] = { { 0, 600 }, { 0, MIB - 1 }, { 1, 0 },
							       { 2, 12345 }, { 3, 0 }, { 3, 3990 } };
	for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
		char s[4096];
		snprintf(s, sizeof s, "%s", seg_path(p, flips[i].k));
		tu_flip_byte(s, flips[i].off, 0x10);
		cbi_sfr *r = NULL;
		assert_int_equal(cbi_sfr_open(p, &r, NULL), 0);
		assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), -CBI_EDAMAGED);
		cbi_sfr_close(r);
		tu_flip_byte(s, flips[i].off, 0x10);
	}
	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(p, &r, NULL), 0);
	assert_int_equal(cbi_sfr_check_digest(r, NULL, NULL), 0);
	cbi_sfr_close(r);
}

static int count_fds(void)
{
	return tu_count("/proc/self/fd", NULL, -1);
}

/* Many segments: the reader keeps only a few open and still reads all. */
static void test_split_many_segments(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "many.cbx");
	size_t total = 20 * MIB + 7;
	uint8_t *all = write_split(p, NULL, 1, total, NULL);
	int fds0 = count_fds();
	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(p, &r, NULL), 0);
	assert_int_equal(r->nseg, 21);
	uint8_t b[64];
	for (int pass = 0; pass < 3; pass++)
		for (uint32_t k = 0; k < 21; k++) {
			uint64_t o = (uint64_t)((k * 7) % 21) * MIB + 100;
			size_t len = (size_t)CBI_MIN((uint64_t)sizeof b, total - o);
			assert_int_equal(cbi_sfr_pread(r, b, len, o), 0);
			assert_memory_equal(b, all + o, len);
		}
	assert_true(count_fds() <= fds0 + 1 + 8); /* the first segment and at most 8 others */
	int calls = 0;
	assert_int_equal(cbi_sfr_check_digest(r, count_progress, &calls), 0);
	assert_true(count_fds() <= fds0 + 1 + 8);
	cbi_sfr_close(r);
	assert_int_equal(count_fds(), fds0);
	free(all);
}

/* Temporary segments: all hidden, tagged, ending in .tmp while written;
 * abort removes every one, before and after seal, and after a commit
 * that failed half-way (renamed segments included). */
static void test_split_abort_removes_all(void **state)
{
	tu_fix *f = *state;
	const char *final = tu_path(f->dir, "a.cbi");
	cbi_sfw *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_sfw_create_split(final, "cbimg-0123-9", MIB, &w, &e), 0);
	uint8_t *d = write_data(w, 3 * MIB + MIB / 2);
	free(d);
	/* the last segment may still be in the buffer: 3 or 4 exist */
	assert_true(cbi_sfw_segments(w) >= 3);
	assert_int_equal(tu_count(f->dir, NULL, 0), 0);
	assert_int_equal(tu_count(f->dir, ".tmp", 1), (int)cbi_sfw_segments(w));
	assert_true(tu_exists(tu_path(f->dir, ".cbimg-0123-9.a.cbi.tmp")));
	assert_true(tu_exists(tu_path(f->dir, ".cbimg-0123-9.a.cbi.001.tmp")));
	assert_true(tu_exists(tu_path(f->dir, ".cbimg-0123-9.a.cbi.002.tmp")));
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);

	/* default temporary names, abort after seal */
	assert_int_equal(cbi_sfw_create_split(final, NULL, MIB, &w, &e), 0);
	d = write_data(w, 2 * MIB);
	free(d);
	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_int_equal(cbi_sfw_segments(w), 3);
	char want[256];
	snprintf(want, sizeof want, ".a.cbi.002.%ld.tmp", (long)getpid());
	assert_true(tu_exists(tu_path(f->dir, want)));
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);

	/* a commit that fails on the third segment: the first is never
	 * renamed, and abort removes the renamed and the temporary ones */
	assert_int_equal(mkdir(tu_path(f->dir, "a.cbi.002"), 0755), 0);
	assert_int_equal(mkdir(tu_path(f->dir, "a.cbi.002/x"), 0755), 0);
	assert_int_equal(cbi_sfw_create_split(final, "tg", MIB, &w, &e), 0);
	d = write_data(w, 4 * MIB);
	free(d);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	memset(&e, 0, sizeof e);
	assert_true(cbi_sfw_commit(w, &e) < 0);
	assert_non_null(strstr(e.msg, "a.cbi.002"));
	assert_true(tu_exists(tu_path(f->dir, "a.cbi.001")));
	assert_false(tu_exists(final));
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 1); /* the directory in the way */
}

static char problems_seen[8192];

static void collect_problem(void *ud, const char *file, int64_t block, const char *problem)
{
	(void)ud;
	(void)block;
	size_t l = strlen(problems_seen);
	snprintf(problems_seen + l, sizeof problems_seen - l, "%s: %s\n", file, problem);
}

/* The segment size a backup chooses: automatic (none off FAT), never, or
 * whole MiB from 1 MiB. */
static void test_split_choose(void **state)
{
	tu_fix *f = *state;
	uint32_t mib = 7;
	char fs[32];
	cbi_error e;
	assert_int_equal(cbi_split_choose(f->dir, 0, &mib, fs, sizeof fs, &e), 0);
	assert_int_equal(mib, 0); /* /tmp is not FAT */
	assert_string_not_equal(fs, "fat");
	assert_int_equal(cbi_split_choose(f->dir, CBI_SPLIT_NONE, &mib, fs, sizeof fs, &e), 0);
	assert_int_equal(mib, 0);
	assert_int_equal(cbi_split_choose(f->dir, 64ull << 20, &mib, fs, sizeof fs, &e), 0);
	assert_int_equal(mib, 64);
	assert_int_equal(cbi_split_choose(f->dir, 8ull << 30, &mib, NULL, 0, &e), 0);
	assert_int_equal(mib, 8192); /* no FAT limit here */
	const uint64_t bad[] = { 1, 512 << 10, (1 << 20) + 1, (3ull << 30) + 4096 };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&e, 0, sizeof e);
		assert_int_equal(cbi_split_choose(f->dir, bad[i], &mib, fs, sizeof fs, &e), -CBI_EUSAGE);
		assert_non_null(strstr(e.msg, "whole number of MiB"));
	}
	assert_true(CBI_FAT_SPLIT < (4ull << 30) - 1 && CBI_FAT_SPLIT % (1 << 20) == 0);
}

/* A backup with 1 MiB segments: both points restore, verify passes, and a
 * missing segment is reported by name. */
static void test_backup_split_roundtrip(void **state)
{
	tu_fix *f = *state;
	const char *src = tu_path(f->dir, "src.img"), *dest = tu_path(f->dir, "dest");
	assert_int_equal(mkdir(dest, 0755), 0);
	size_t size = 5 * MIB + 4096 * 3 + 100;
	uint8_t *data = malloc(size);
	assert_non_null(data);
	tu_fill_random(data, size, 77);
	tu_write_file(src, data, size);
	cbi_backup_opts o = tu_bopts(src, dest);
	o.split = MIB;
	cbi_backup_result r0, r1;
	tu_backup_ok(&o, &r0);
	assert_true(r0.point.segment_size == MIB);
	assert_true(r0.dest_fs[0] != 0);
	assert_true(r0.point.stored_bytes > 5 * MIB);
	char img0[4096], idx0[4096];
	cbi_strlcpy(img0, r0.point.file, sizeof img0);
	cbi_strlcpy(idx0, r0.point.index_file, sizeof idx0);
	uint32_t want = (uint32_t)((r0.point.stored_bytes + MIB - 1) / MIB);
	for (uint32_t k = 0; k < want; k++)
		assert_true(tu_exists(seg_path(img0, k)));
	assert_false(tu_exists(seg_path(img0, want)));
	assert_false(tu_exists(seg_path(idx0, 1))); /* a small index is one file */
	assert_int_equal(tu_count(dest, ".tmp", -1), 0);

	tu_fill_random(data + 2 * MIB, 3 * 4096, 78);
	tu_write_file(src, data, size);
	tu_backup_ok(&o, &r1);
	assert_int_equal(r1.point.seq, 1);

	cbi_restore_result rr;
	const char *out = tu_path(f->dir, "out.img");
	tu_restore_ok(r1.point.file, out, &rr);
	assert_true(tu_file_equals(out, data, size));

	cbi_point info;
	cbi_error e;
	assert_int_equal(cbi_point_info(img0, &info, &e), 0);
	assert_true(info.segment_size == MIB);
	assert_true(info.has_image);

	cbi_verify_result vr;
	assert_int_equal(cbi_verify(dest, &(cbi_verify_opts){ .no_state = 1 }, &vr, &e), 0);
	assert_true(vr.problems == 0);

	char seg2[4096];
	snprintf(seg2, sizeof seg2, "%s", seg_path(img0, 2));
	assert_int_equal(unlink(seg2), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_verify(dest, &(cbi_verify_opts){ .fn = collect_problem, .no_state = 1 }, &vr, &e), -CBI_EDAMAGED);
	assert_non_null(strstr(problems_seen, strrchr(seg2, '/') + 1));
	assert_non_null(strstr(problems_seen, "is missing"));
	free(data);
}

/* ------------------------------------------- issue 10: names and fstat */

/* A stale temporary (a dead run's leftover) or a symbolic link planted at
 * the temporary name, of the first segment or of a later one: the writer
 * replaces it and never writes through the link. */
static void test_create_replaces_planted_temp(void **state)
{
	tu_fix *f = *state;
	const char *victim = tu_path(f->dir, "victim");
	tu_write_file(victim, "keep", 4);
	char final[4096];
	snprintf(final, sizeof final, "%s", tu_path(f->dir, "p.cbi"));
	assert_int_equal(symlink(victim, tu_path(f->dir, ".t.p.cbi.tmp")), 0);
	assert_int_equal(symlink(victim, tu_path(f->dir, ".t.p.cbi.001.tmp")), 0);
	tu_write_file(tu_path(f->dir, ".t.p.cbi.002.tmp"), "stale", 5);
	uint32_t nseg = 0;
	free(write_split(final, "t", 1, 2 * MIB + 4096, &nseg));
	assert_int_equal(nseg, 3);
	assert_true(tu_file_equals(victim, "keep", 4));
	struct stat st;
	for (uint32_t k = 0; k < 3; k++) {
		assert_int_equal(lstat(seg_path(final, k), &st), 0);
		assert_true(S_ISREG(st.st_mode));
	}
	assert_int_equal(tu_count(f->dir, ".tmp", 1), 0);

	/* untagged: ".NAME.PID.tmp" */
	char tmp[256];
	snprintf(tmp, sizeof tmp, ".u.cbx.%ld.tmp", (long)getpid());
	assert_int_equal(symlink(victim, tu_path(f->dir, tmp)), 0);
	cbi_sfw *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_sfw_create(tu_path(f->dir, "u.cbx"), &w, &e), 0);
	assert_int_equal(cbi_sfw_write(w, "data", 4), 0);
	uint8_t t[96], digest[32];
	trailer96(t);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_int_equal(cbi_sfw_commit(w, &e), 0);
	assert_true(tu_file_equals(victim, "keep", 4));
	assert_int_equal(tu_file_size(tu_path(f->dir, "u.cbx")), 4 + 128);
}

/* A segment after the first that is a symbolic link is refused (even to
 * the right bytes), at open and when a segment is swapped for one after
 * the open; a directory on the way that is a link is fine. */
static void test_reader_segment_symlink(void **state)
{
	tu_fix *f = *state;
	char final[4096], seg1[4096], copy[4096];
	snprintf(final, sizeof final, "%s", tu_path(f->dir, "s.cbi"));
	uint8_t *all = write_split(final, NULL, 1, 3 * MIB, NULL);
	snprintf(seg1, sizeof seg1, "%s", seg_path(final, 1));
	snprintf(copy, sizeof copy, "%s", tu_path(f->dir, "copy-of-001"));

	/* through a symlinked directory: reads as before */
	assert_int_equal(symlink(f->dir, tu_path(f->dir, "via")), 0);
	cbi_sfr *r = NULL;
	cbi_error e;
	assert_int_equal(cbi_sfr_open(tu_path(f->dir, "via/s.cbi"), &r, &e), 0);
	uint8_t *back = malloc(3 * MIB);
	assert_non_null(back);
	assert_int_equal(cbi_sfr_pread(r, back, 3 * MIB, 0), 0);
	assert_memory_equal(back, all, 3 * MIB);

	/* swapped for a link after the open: that segment's reads fail */
	cbi_sfr *r2 = NULL;
	assert_int_equal(cbi_sfr_open(final, &r2, &e), 0);
	assert_int_equal(rename(seg1, copy), 0);
	assert_int_equal(symlink(copy, seg1), 0);
	assert_int_equal(cbi_sfr_pread(r2, back, 16, MIB + 16), -CBI_EDAMAGED);
	assert_int_equal(cbi_sfr_pread(r2, back, 16, 16), 0);
	cbi_sfr_close(r2);
	cbi_sfr_close(r);

	/* a link at open */
	expect_open_fails(final, -EINVAL, "s.cbi.001' is not a regular file");
	/* a FIFO does not hang the open */
	assert_int_equal(unlink(seg1), 0);
	assert_int_equal(mkfifo(seg1, 0600), 0);
	expect_open_fails(final, -EINVAL, "s.cbi.001' is not a regular file");
	assert_int_equal(unlink(seg1), 0);
	assert_int_equal(rename(copy, seg1), 0);
	assert_int_equal(cbi_sfr_open(final, &r, &e), 0);
	cbi_sfr_close(r);
	free(back);
	free(all);
}

/* fstat fails on the opened file: its error is reported, not a mode read
 * from a struct stat that fstat never filled. The test binary's fstat64
 * (which the library's fstat calls resolve to) fails on request. */
static int fstat_fail_next;

int fstat64(int fd, struct stat64 *st)
{
	static int (*real)(int, struct stat64 *);
	if (fstat_fail_next) {
		fstat_fail_next = 0;
		errno = EIO;
		return -1;
	}
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "fstat64");
	return real(fd, st);
}

static void test_reader_fstat_fails(void **state)
{
	tu_fix *f = *state;
	const char *p = tu_path(f->dir, "f.cbx");
	uint8_t buf[CBI_HDR_SIZE + CBI_TRL_SIZE];
	memset(buf, 0x11, sizeof buf);
	tu_write_file(p, buf, sizeof buf);
	cbi_sfr *r = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	fstat_fail_next = 1;
	int rc = cbi_sfr_open(p, &r, &e);
	fstat_fail_next = 0;
	assert_int_equal(rc, -EIO);
	assert_non_null(strstr(e.msg, "unable to stat"));
	assert_null(r);
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
		T(test_segment_names),
		T(test_split_write_read),
		T(test_split_missing_segments),
		T(test_split_digest_covers_all),
		T(test_split_many_segments),
		T(test_split_abort_removes_all),
		T(test_split_choose),
		T(test_backup_split_roundtrip),
		T(test_create_replaces_planted_temp),
		T(test_reader_segment_symlink),
		T(test_reader_fstat_fails),
	};
	return cmocka_run_group_tests_name("sfile", tests, NULL, NULL);
}
