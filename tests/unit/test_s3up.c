/* test_s3up.c - the streamed upload (s3up.c) and the sink of the sealed
 * file and image writers it hangs on: part sizes and buffer counts (pure),
 * an image written to a sink is byte for byte the file, and, when
 * CBIMG_S3_TEST_BUCKET names a bucket on $S3_ENDPOINT (tests/e2e/t_s3.sh),
 * objects streamed in several parts, in one PUT, and stopped half-way. */
#include "testutil.h"

#include "backup.h"
#include "crypto.h"
#include "format.h"
#include "image.h"
#include "s3.h"
#include "s3up.h"
#include "sfile.h"
#include "util.h"

#define MiB (1ull << 20)

static void test_part_size(void **state)
{
	(void)state;
	/* small objects: the part asked for, at least 5 MiB */
	assert_int_equal(cbi_s3up_part_size(100 * MiB, 16 * MiB), 16 * MiB);
	assert_int_equal(cbi_s3up_part_size(100 * MiB, 1 * MiB), 5 * MiB);
	assert_int_equal(cbi_s3up_part_size(0, 8 * MiB), 8 * MiB);
	/* exactly 10000 parts of 16 MiB fit */
	assert_int_equal(cbi_s3up_part_size(10000 * 16 * MiB, 16 * MiB), 16 * MiB);
	/* one byte more: the next whole MiB */
	assert_int_equal(cbi_s3up_part_size(10000 * 16 * MiB + 1, 16 * MiB), 17 * MiB);
	/* 1 TiB: 10000 parts of 105 MiB hold it, of 104 MiB not */
	uint64_t p = cbi_s3up_part_size(1ull << 40, 16 * MiB);
	assert_int_equal(p, 105 * MiB);
	assert_true((1ull << 40) <= 10000 * p && (1ull << 40) > 10000 * (p - MiB));
	/* 5 TiB, S3's largest object */
	p = cbi_s3up_part_size(5ull << 40, 5 * MiB);
	assert_true((5ull << 40) <= CBI_S3UP_MAX_PARTS * p);
	assert_int_equal(p % MiB, 0);
}

static void test_buffers(void **state)
{
	(void)state;
	assert_int_equal(cbi_s3up_buffers(16 * MiB, 4, 96 * MiB), 5); /* jobs + 1 */
	assert_int_equal(cbi_s3up_buffers(16 * MiB, 4, 64 * MiB), 4); /* the budget */
	assert_int_equal(cbi_s3up_buffers(105 * MiB, 4, 96 * MiB), 2); /* never below 2 */
	assert_int_equal(cbi_s3up_buffers(5 * MiB, 1, 96 * MiB), 2);
	assert_int_equal(cbi_s3up_buffers(5 * MiB, 8, 1ull << 40), 9);
}

/* ------------------------------------------------ an image to a sink */

typedef struct membuf {
	uint8_t *p;
	size_t n, cap;
	unsigned calls;
	size_t largest;
	int fail_at; /* fail this call (from 1), 0: never */
} membuf;

static int mem_sink(void *ud, const void *buf, size_t len)
{
	membuf *m = ud;
	if (++m->calls == (unsigned)m->fail_at)
		return -EIO;
	if (m->n + len > m->cap) {
		m->cap = (m->n + len) * 2;
		m->p = realloc(m->p, m->cap);
		assert_non_null(m->p);
	}
	memcpy(m->p + m->n, buf, len);
	m->n += len;
	if (len > m->largest)
		m->largest = len;
	return 0;
}

static cbi_hdr mk_hdr(uint32_t bs, uint64_t nb)
{
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.kind = CBI_KIND_IMAGE;
	h.version = 1;
	h.block_size = bs;
	h.hash_alg = CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.source_size = nb * bs;
	h.n_blocks = nb;
	for (int i = 0; i < 16; i++) {
		h.chain_id[i] = (uint8_t)(i + 1);
		h.point_id[i] = (uint8_t)(0x40 + i);
	}
	h.type = CBI_FULL;
	h.created_ns = 1700000000000000000LL;
	h.level = 3;
	cbi_strlcpy(h.job, "job", sizeof h.job);
	cbi_strlcpy(h.host, "host", sizeof h.host);
	cbi_strlcpy(h.source_id, "test:sink", sizeof h.source_id);
	cbi_strlcpy(h.source_path, "/dev/zero", sizeof h.source_path);
	return h;
}

/* Write the same image (raw records of random data, 3 MiB: the 1 MiB
 * buffer fills several times) to w. */
static void fill_image(cbi_image_writer *w, uint32_t bs, uint64_t nb)
{
	uint8_t *d = malloc(bs), hash[16];
	for (uint64_t i = 0; i < nb; i++) {
		tu_fill_random(d, bs, (unsigned)i + 7);
		cbi_block_hash(d, bs, hash);
		assert_int_equal(cbi_image_writer_add(w, i, 0, bs, hash, d, bs), 0);
	}
	free(d);
	uint8_t dg[32] = { 1, 2, 3 };
	assert_int_equal(cbi_image_writer_seal(w, nb, dg), 0);
}

static void test_image_sink(void **state)
{
	const char *dir = *state;
	const uint32_t bs = 64 * 1024;
	const uint64_t nb = 48;
	cbi_hdr h = mk_hdr(bs, nb);
	char file[4096], sinkp[4096];
	snprintf(file, sizeof file, "%s/a.cbi", dir);
	snprintf(sinkp, sizeof sinkp, "%s/b.cbi", dir);
	cbi_error e;
	cbi_image_writer *w;
	assert_int_equal(cbi_image_writer_create(file, NULL, &h, NULL, &w, &e), 0);
	fill_image(w, bs, nb);
	assert_int_equal(cbi_image_writer_commit(w, &e), 0);

	membuf m = { 0 };
	assert_int_equal(cbi_image_writer_create_sink(sinkp, &h, NULL, mem_sink, &m, &w, &e), 0);
	fill_image(w, bs, nb);
	assert_int_equal(cbi_image_writer_commit(w, &e), 0);
	/* the same bytes, handed over in pieces of at most 1 MiB, and no file */
	size_t n = 0;
	uint8_t *f = tu_read_file(file, &n);
	assert_int_equal(m.n, n);
	assert_memory_equal(m.p, f, n);
	/* the bound a backup gives the upload holds an image of raw records */
	assert_true(cbi_backup_image_bound(nb, bs) >= n);
	assert_true(cbi_backup_image_bound(nb, bs) - n <= nb * (CBI_TAG_LEN + 64));
	assert_true(m.calls >= 3 && m.largest <= MiB);
	struct stat st;
	assert_int_equal(lstat(sinkp, &st), -1);
	int entries = 0;
	DIR *dd = opendir(dir);
	struct dirent *de;
	while ((de = readdir(dd)))
		entries += de->d_name[0] != '.';
	closedir(dd);
	assert_int_equal(entries, 1); /* a.cbi only: no temporary file for the sink */
	/* and the image reads back */
	cbi_image *im;
	assert_int_equal(cbi_image_open(file, &im, &e), 0);
	assert_int_equal(im->trl.record_count, nb);
	cbi_image_close(im);
	free(f);

	/* a sink that fails fails the write; abort leaves nothing */
	membuf m2 = { .fail_at = 2 };
	assert_int_equal(cbi_image_writer_create_sink(sinkp, &h, NULL, mem_sink, &m2, &w, &e), 0);
	uint8_t *d = calloc(1, bs), hash[16] = { 0 };
	int rc = 0;
	for (uint64_t i = 0; i < nb && !rc; i++)
		rc = cbi_image_writer_add(w, i, 0, bs, hash, d, bs);
	assert_int_equal(rc, -EIO);
	cbi_image_writer_abort(w);
	free(d);
	free(m.p);
	free(m2.p);
	/* a sink has no segments */
	h.segment_mib = 4;
	assert_int_equal(cbi_image_writer_create_sink(sinkp, &h, NULL, mem_sink, &m2, &w, &e), -EINVAL);
}

/* -------------------------------------------------------- the server */

static cbi_s3 *server(void)
{
	const char *bucket = getenv("CBIMG_S3_TEST_BUCKET");
	if (!bucket || !*bucket)
		return NULL;
	cbi_s3_cfg cfg;
	cbi_s3 *s;
	cbi_error e;
	assert_int_equal(cbi_s3_cfg_load(&cfg, NULL, &e), 0);
	assert_int_equal(cbi_s3_open(&cfg, bucket, &s, &e), 0);
	return s;
}

static size_t uploads_under(cbi_s3 *s, const char *prefix)
{
	cbi_s3_obj *v = NULL;
	size_t n = 0;
	cbi_error e;
	assert_int_equal(cbi_s3_list_uploads(s, prefix, &v, &n, &e), 0);
	free(v);
	return n;
}

static void test_server(void **state)
{
	(void)state;
	cbi_s3 *s = server();
	if (!s) {
		printf("SKIP: no S3 server (CBIMG_S3_TEST_BUCKET unset; tests/e2e/t_s3.sh starts one)\n");
		skip();
	}
	cbi_error e;
	char key[128], pfx[64];
	snprintf(pfx, sizeof pfx, "s3up-%ld/", (long)getpid());
	/* several parts (5 MiB each, CBIMG_S3_PART_MIB=5 in t_s3.sh, and a
	 * short last one), written in odd-sized pieces */
	const size_t size = 12 * MiB + 12345;
	uint8_t *d = malloc(size), *back = malloc(size);
	tu_fill_random(d, size, 99);
	cbi_s3up *u;
	snprintf(key, sizeof key, "%sbig", pfx);
	assert_int_equal(cbi_s3up_new(s, &u, &e), 0);
	assert_int_equal(cbi_s3up_begin(u, key, size + MiB, &e), 0);
	for (size_t o = 0; o < size;) {
		size_t n = CBI_MIN(size - o, (size_t)777777);
		assert_int_equal(cbi_s3up_write(u, d + o, n), 0);
		o += n;
	}
	assert_int_equal(cbi_s3up_finish(u, &e), 0);
	uint64_t bytes, bufb;
	uint32_t parts;
	cbi_s3up_stats(u, &bytes, &parts, &bufb);
	assert_int_equal(bytes, size);
	int jobs;
	uint64_t part;
	cbi_s3_tuning(s, &jobs, &part);
	assert_int_equal(parts, (uint32_t)((size + part - 1) / part));
	assert_true(parts >= 2);
	assert_true(bufb <= (uint64_t)(jobs + 1) * part); /* bounded: never a buffer per part */
	cbi_s3up_free(u);
	size_t got = 0;
	assert_int_equal(cbi_s3_get(s, key, 0, 0, back, size, &got, &e), 0);
	assert_int_equal(got, size);
	assert_memory_equal(back, d, size);

	/* one part's worth: a single create-only PUT, refused when taken */
	snprintf(key, sizeof key, "%ssmall", pfx);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(cbi_s3up_new(s, &u, &e), 0);
		assert_int_equal(cbi_s3up_begin(u, key, MiB, &e), 0);
		assert_int_equal(cbi_s3up_write(u, d, 1000), 0);
		assert_int_equal(cbi_s3up_finish(u, &e), round ? -EEXIST : 0);
		cbi_s3up_free(u);
	}

	/* stopped half-way (the lease lost): writes fail with the code, and
	 * the upload is aborted, nothing listed */
	snprintf(key, sizeof key, "%sstopped", pfx);
	assert_int_equal(cbi_s3up_new(s, &u, &e), 0);
	assert_int_equal(cbi_s3up_begin(u, key, size, &e), 0);
	assert_int_equal(cbi_s3up_write(u, d, 6 * MiB), 0);
	assert_int_equal(uploads_under(s, key), 1);
	cbi_s3up_stop(u, -CBI_ELOCKED, "the lock was lost");
	assert_int_equal(cbi_s3up_write(u, d, MiB), -CBI_ELOCKED);
	assert_int_equal(cbi_s3up_finish(u, &e), -CBI_ELOCKED);
	assert_string_equal(e.msg, "the lock was lost");
	cbi_s3up_free(u);
	assert_int_equal(uploads_under(s, key), 0);
	uint64_t sz;
	assert_int_equal(cbi_s3_head(s, key, &sz, &e), -ENOENT);

	/* freed unfinished (a failed backup): aborted too */
	assert_int_equal(cbi_s3up_new(s, &u, &e), 0);
	assert_int_equal(cbi_s3up_begin(u, key, size, &e), 0);
	assert_int_equal(cbi_s3up_write(u, d, 11 * MiB), 0);
	cbi_s3up_free(u);
	assert_int_equal(uploads_under(s, key), 0);
	free(d);
	free(back);
	cbi_s3_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_part_size),
		cmocka_unit_test(test_buffers),
		cmocka_unit_test_setup_teardown(test_image_sink, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test(test_server),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
