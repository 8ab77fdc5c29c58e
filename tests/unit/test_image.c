/* test_image.c - image file writer and reader (.cbi): records, block
 * table lookups across the 4096-entry window, block reads and checks. */
#include "testutil.h"

#include <zstd.h>

#include "format.h"
#include "image.h"
#include "index.h"
#include "util.h"

#define BS 4096u
#define NB 13000u             /* blocks of the source */
#define SRC_SIZE (NB * BS - 1000u) /* last block is 3096 bytes */

static cbi_hdr mk_hdr(void)
{
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.kind = CBI_KIND_IMAGE;
	h.version = 1; /* a plain file: version 1 */
	h.block_size = BS;
	h.hash_alg = CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.source_size = SRC_SIZE;
	h.n_blocks = NB;
	for (int i = 0; i < 16; i++) {
		h.chain_id[i] = (uint8_t)(i + 1);
		h.point_id[i] = (uint8_t)(0x70 + i);
	}
	h.type = CBI_FULL;
	h.created_ns = 1700000000000000000LL;
	h.level = 3;
	cbi_strlcpy(h.job, "job", sizeof h.job);
	cbi_strlcpy(h.host, "host", sizeof h.host);
	cbi_strlcpy(h.source_id, "test:img", sizeof h.source_id);
	cbi_strlcpy(h.source_path, "/dev/zero", sizeof h.source_path);
	return h;
}

static int present(uint64_t i) { return i % 3 != 1 || i == NB - 1; }
static int stored_raw(uint64_t i) { return i % 4 == 0; }

/* Data of block i (len bytes): compressible, different for every block. */
static void block_data(uint64_t i, uint8_t *out, uint32_t len)
{
	for (uint32_t k = 0; k < len; k++)
		out[k] = (uint8_t)('A' + (k % 23 + i) % 26);
	st64(out, i * 2654435761u + 1);
	if (len >= 16)
		st64(out + len - 8, ~i);
}

typedef struct img_fix {
	tu_fix base;
	char path[4096];
	uint64_t nrec;
	uint64_t stored_bytes;
	uint8_t *scratch, *out;
	ZSTD_DCtx *dctx;
} img_fix;

static void write_image(img_fix *x)
{
	cbi_hdr h = mk_hdr();
	cbi_image_writer *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_image_writer_create(x->path, NULL, &h, NULL, &w, &e), 0);
	uint8_t data[BS], comp[ZSTD_COMPRESSBOUND(BS)], hash[16];
	x->nrec = 0;
	x->stored_bytes = 0;
	for (uint64_t i = 0; i < NB; i++) {
		if (!present(i))
			continue;
		uint32_t len = cbi_block_len(SRC_SIZE, BS, i);
		block_data(i, data, len);
		cbi_block_hash(data, len, hash);
		int rc;
		if (stored_raw(i)) {
			rc = cbi_image_writer_add(w, i, 0, len, hash, data, len);
			x->stored_bytes += len;
		} else {
			size_t n = ZSTD_compress(comp, sizeof comp, data, len, 3);
			assert_false(ZSTD_isError(n));
			assert_true(n < len);
			rc = cbi_image_writer_add(w, i, CBI_REC_ZSTD, len, hash, comp, (uint32_t)n);
			x->stored_bytes += n;
		}
		assert_int_equal(rc, 0);
		x->nrec++;
		assert_true(cbi_image_writer_records(w) == x->nrec);
	}
	uint64_t predicted = cbi_image_writer_final_size(w);
	uint8_t dg[32];
	for (int i = 0; i < 32; i++)
		dg[i] = (uint8_t)(0xd0 + i);
	assert_int_equal(cbi_image_writer_seal(w, 1234, dg), 0);
	assert_int_equal(cbi_image_writer_commit(w, &e), 0);
	assert_int_equal(tu_file_size(x->path), (int64_t)predicted);
}

/* The image is written once per run (group setup) into g_dir; every test
 * works on its own copy so that a failing test cannot affect the others. */
static char g_dir[256];
static uint64_t g_nrec, g_stored_bytes;

static int group_setup(void **state)
{
	(void)state;
	img_fix x;
	memset(&x, 0, sizeof x);
	tu_mkdtemp(g_dir, sizeof g_dir);
	snprintf(x.path, sizeof x.path, "%s/pristine.cbi", g_dir);
	write_image(&x);
	g_nrec = x.nrec;
	g_stored_bytes = x.stored_bytes;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	tu_rm_rf(g_dir);
	return 0;
}

static int setup_img(void **state)
{
	img_fix *x = calloc(1, sizeof *x);
	if (!x)
		return -1;
	tu_mkdtemp(x->base.dir, sizeof x->base.dir);
	snprintf(x->path, sizeof x->path, "%s/p.cbi", x->base.dir);
	x->scratch = malloc(cbi_image_scratch_size(BS));
	x->out = malloc(BS);
	x->dctx = ZSTD_createDCtx();
	if (!x->scratch || !x->out || !x->dctx)
		return -1;
	*state = x;
	tu_copy_file(tu_path(g_dir, "pristine.cbi"), x->path);
	x->nrec = g_nrec;
	x->stored_bytes = g_stored_bytes;
	return 0;
}

static int teardown_img(void **state)
{
	img_fix *x = *state;
	if (x) {
		tu_rm_rf(x->base.dir);
		free(x->scratch);
		free(x->out);
		ZSTD_freeDCtx(x->dctx);
		free(x);
	}
	return 0;
}

/* Find and read block i; must succeed with the exact data. */
static void read_ok(img_fix *x, cbi_image *m, uint64_t i, int with_want)
{
	cbi_tab_ent te;
	int rc = cbi_image_find(m, i, &te);
	if (rc)
		fail_msg("find(%llu) = %d", (unsigned long long)i, rc);
	assert_true(te.block == i);
	assert_int_equal(te.flags, stored_raw(i) ? 0 : CBI_REC_ZSTD);
	uint32_t len = cbi_block_len(SRC_SIZE, BS, i);
	uint8_t want[BS], h[16];
	block_data(i, want, len);
	cbi_block_hash(want, len, h);
	cbi_error why = { .code = 1 };
	memset(x->out, 0xee, BS);
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, with_want ? h : NULL, &why);
	if (rc != (int)len)
		fail_msg("read_block(%llu) = %d (%s)", (unsigned long long)i, rc, why.msg);
	assert_int_equal(why.code, 1); /* err is left alone on success */
	assert_memory_equal(x->out, want, len);
}

static void test_open_and_trailer(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	cbi_error e;
	assert_int_equal(cbi_image_open(x->path, &m, &e), 0);
	assert_int_equal(m->hdr.kind, CBI_KIND_IMAGE);
	assert_true(m->hdr.n_blocks == NB);
	assert_true(m->trl.record_count == x->nrec);
	assert_true(x->nrec > 2 * 4096); /* crosses the table window twice */
	assert_true(m->trl.changed_blocks == 1234);
	assert_true(m->trl.stored_bytes == x->stored_bytes);
	assert_true(m->trl.file_size == (uint64_t)tu_file_size(x->path));
	assert_true(m->trl.table_offset + x->nrec * CBI_TAB_ENT_SIZE + CBI_TRL_SIZE == m->trl.file_size);
	assert_int_equal(m->trl.index_digest[0], 0xd0);
	assert_int_equal(cbi_sfr_check_digest(m->f, NULL, NULL), 0);
	/* the table is sorted and points at records */
	cbi_tab_ent te, prev;
	for (uint64_t k = 0; k < x->nrec; k++) {
		assert_int_equal(cbi_image_table_get(m, k, &te), 0);
		assert_true(present(te.block));
		assert_true(te.offset >= CBI_HDR_SIZE && te.offset < m->trl.table_offset);
		if (k)
			assert_true(te.block > prev.block);
		prev = te;
	}
	assert_int_equal(cbi_image_table_get(m, x->nrec, &te), -EINVAL);
	cbi_image_close(m);
	cbi_image_close(NULL);
}

static void test_find_and_read_sequential(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent te;
	for (uint64_t i = 0; i < NB; i++) {
		if (present(i)) {
			read_ok(x, m, i, i & 1);
		} else {
			int rc = cbi_image_find(m, i, &te);
			if (rc != -ENOENT)
				fail_msg("absent block %llu: find = %d", (unsigned long long)i, rc);
		}
	}
	assert_int_equal(cbi_image_find(m, NB, &te), -ENOENT);
	assert_int_equal(cbi_image_find(m, UINT64_MAX, &te), -ENOENT);
	cbi_image_close(m);
}

static void test_find_random_order(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent te;
	/* jumps between windows in both directions, absent blocks included */
	uint64_t i = 11;
	for (uint64_t k = 0; k < NB; k++) {
		if (present(i)) {
			assert_int_equal(cbi_image_find(m, i, &te), 0);
			assert_true(te.block == i);
			if (k % 50 == 0)
				read_ok(x, m, i, 1);
		} else {
			assert_int_equal(cbi_image_find(m, i, &te), -ENOENT);
		}
		i = (i + 4099) % NB; /* step coprime with NB: a permutation */
	}
	/* hand-picked: the ends of the table and around record 4096 and 8192 */
	cbi_tab_ent r4095, r4096, rlast;
	assert_int_equal(cbi_image_table_get(m, 4095, &r4095), 0);
	assert_int_equal(cbi_image_table_get(m, 4096, &r4096), 0);
	assert_int_equal(cbi_image_table_get(m, x->nrec - 1, &rlast), 0);
	const uint64_t picks[] = { r4096.block, r4095.block, 0, rlast.block, r4095.block, r4096.block,
				   NB - 1, 2, r4095.block + 1, r4096.block - 1 };
	for (size_t k = 0; k < sizeof picks / sizeof picks[0]; k++) {
		int rc = cbi_image_find(m, picks[k], &te);
		if (present(picks[k])) {
			assert_int_equal(rc, 0);
			read_ok(x, m, picks[k], 1);
		} else {
			assert_int_equal(rc, -ENOENT);
		}
	}
	/* descending */
	for (uint64_t b = NB; b-- > 0;)
		assert_int_equal(cbi_image_find(m, b, &te), present(b) ? 0 : -ENOENT);
	cbi_image_close(m);
}

static void test_want_hash_mismatch(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent te;
	const uint64_t blocks[] = { 0, 2 }; /* one raw, one compressed */
	for (size_t k = 0; k < 2; k++) {
		assert_int_equal(cbi_image_find(m, blocks[k], &te), 0);
		uint8_t bad[16];
		memset(bad, 0x42, sizeof bad);
		cbi_error why;
		int rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, bad, &why);
		assert_int_equal(rc, -CBI_EDAMAGED);
		assert_true(why.msg[0] != 0);
		assert_string_equal(why.msg, "block does not match the index");
	}
	cbi_image_close(m);
}

/* Flip a byte of the stored payload of block `block`, expect damage. */
static void flip_payload_expect_damage(img_fix *x, uint64_t block, uint32_t at)
{
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, block, &te), 0);
	cbi_image_close(m);
	assert_true(at < te.stored_len);
	uint64_t off = te.offset + CBI_REC_HDR_SIZE + at;
	tu_flip_byte(x->path, off, 0x01);

	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0); /* structure still fine */
	assert_int_equal(cbi_image_find(m, block, &te), 0);
	cbi_error why;
	int rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	if (rc != -CBI_EDAMAGED)
		fail_msg("flipped payload byte of block %llu: read_block = %d", (unsigned long long)block, rc);
	assert_true(why.msg[0] != 0);
	assert_true(strlen(why.msg) > 0);
	assert_int_equal(cbi_sfr_check_digest(m->f, NULL, NULL), -CBI_EDAMAGED);
	/* the neighbours are unaffected */
	read_ok(x, m, block == 0 ? 2 : 0, 1);
	cbi_image_close(m);
	tu_flip_byte(x->path, off, 0x01);
}

static void test_flipped_payload(void **state)
{
	img_fix *x = *state;
	flip_payload_expect_damage(x, 0, 0);      /* raw record, first byte */
	flip_payload_expect_damage(x, 8, 4095);   /* raw record, last byte */
	flip_payload_expect_damage(x, 9000, 100); /* raw, beyond the first window */
	flip_payload_expect_damage(x, 2, 0);      /* zstd frame magic */
	flip_payload_expect_damage(x, 3, 10);     /* zstd frame body */
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, NB - 1, &te), 0);
	cbi_image_close(m);
	flip_payload_expect_damage(x, NB - 1, te.stored_len - 1); /* short last block */
}

static void test_flipped_record_header(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, 6, &te), 0);
	cbi_image_close(m);
	/* magic, flags, block, stored_len, raw_len, hash */
	const uint32_t offs[] = { 0, 4, 8, 16, 20, 24, 39 };
	for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++) {
		tu_flip_byte(x->path, te.offset + offs[k], 0x02);
		assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
		cbi_error why;
		int rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
		if (rc != -CBI_EDAMAGED)
			fail_msg("record header byte %u: read_block = %d", offs[k], rc);
		assert_true(why.msg[0] != 0);
		cbi_image_close(m);
		tu_flip_byte(x->path, te.offset + offs[k], 0x02);
	}
}

static void test_bad_table_entries(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(x->path, &m, NULL), 0);
	cbi_tab_ent good;
	assert_int_equal(cbi_image_find(m, 3, &good), 0);
	cbi_error why;
	int rc;

	cbi_tab_ent te = good;
	te.block = NB; /* beyond the source */
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	assert_int_equal(rc, -CBI_EDAMAGED);
	assert_true(why.msg[0] != 0);

	te = good;
	te.offset = 10; /* inside the header */
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	assert_int_equal(rc, -CBI_EDAMAGED);

	te = good;
	te.offset = m->trl.table_offset - 10; /* runs into the table */
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	assert_int_equal(rc, -CBI_EDAMAGED);

	te = good;
	te.stored_len = UINT32_MAX;
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	assert_int_equal(rc, -CBI_EDAMAGED);

	te = good;
	te.block = 4; /* entry names another block than the record */
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	assert_int_equal(rc, -CBI_EDAMAGED);
	assert_string_equal(why.msg, "record header does not match the block table");

	te = good;
	te.flags ^= CBI_REC_ZSTD;
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	assert_int_equal(rc, -CBI_EDAMAGED);

	/* LIBRARY BUG (image.c cbi_image_read_block): the range check
	 * "e->offset + CBI_REC_HDR_SIZE + e->stored_len > table_offset" wraps
	 * around for an offset near 2^64, so a damaged table entry passes it
	 * and the read fails later as "read error" (-CBI_ETRUNCATED) instead of
	 * -CBI_EDAMAGED "table entry out of range". */
	te = good;
	te.offset = UINT64_MAX - 20;
	rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
	cbi_image_close(m);
	assert_true(cbi_is_damage(rc));
	if (rc != -CBI_EDAMAGED)
		fail_msg("LIBRARY BUG: table entry offset 2^64-21: read_block = %d (%s), want -CBI_EDAMAGED",
			 rc, why.msg);
}

static void test_add_out_of_order(void **state)
{
	img_fix *x = *state;
	const char *p = tu_path(x->base.dir, "o.cbi");
	cbi_hdr h = mk_hdr();
	cbi_image_writer *w = NULL;
	assert_int_equal(cbi_image_writer_create(p, NULL, &h, NULL, &w, NULL), 0);
	uint8_t d[BS], hash[16];
	block_data(5, d, BS);
	cbi_block_hash(d, BS, hash);
	assert_int_equal(cbi_image_writer_add(w, 5, 0, BS, hash, d, BS), 0);
	uint64_t size = cbi_image_writer_final_size(w);
	assert_int_equal(cbi_image_writer_add(w, 4, 0, BS, hash, d, BS), -EINVAL);
	assert_int_equal(cbi_image_writer_add(w, 5, 0, BS, hash, d, BS), -EINVAL); /* duplicate */
	assert_int_equal(cbi_image_writer_add(w, 0, 0, BS, hash, d, BS), -EINVAL);
	/* refused records leave no trace */
	assert_true(cbi_image_writer_final_size(w) == size);
	assert_true(cbi_image_writer_records(w) == 1);
	block_data(6, d, BS);
	cbi_block_hash(d, BS, hash);
	assert_int_equal(cbi_image_writer_add(w, 6, 0, BS, hash, d, BS), 0);
	cbi_image_writer_abort(w);
	assert_false(tu_exists(p));
	assert_int_equal(tu_count(x->base.dir, ".tmp", 1), 0);
	cbi_image_writer_abort(NULL);
}

/* R4 (revision 2.4): a compressed payload is exactly one standard zstd
 * frame. A skippable frame before it, a second frame after it or junk after
 * it is damage, although zstd itself would decode the first two. */
static void test_record_one_zstd_frame(void **state)
{
	img_fix *x = *state;
	const char *p = tu_path(x->base.dir, "frames.cbi");
	cbi_hdr h = mk_hdr();
	cbi_image_writer *w = NULL;
	assert_int_equal(cbi_image_writer_create(p, NULL, &h, NULL, &w, NULL), 0);
	uint8_t d[BS], hash[16], fr[BS], pay[BS];
	memset(d, 'a', BS);
	cbi_block_hash(d, BS, hash);
	size_t n = ZSTD_compress(fr, sizeof fr, d, BS, 3);
	assert_false(ZSTD_isError(n));
	assert_true(3 * n + 16 < BS);
	/* block 0: the frame alone; 1: a skippable frame first; 2: the frame
	 * split into two frames of half the block each; 3: junk after it */
	assert_int_equal(cbi_image_writer_add(w, 0, CBI_REC_ZSTD, BS, hash, fr, (uint32_t)n), 0);
	static const uint8_t skip[12] = { 0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4 };
	memcpy(pay, skip, sizeof skip);
	memcpy(pay + sizeof skip, fr, n);
	assert_int_equal(cbi_image_writer_add(w, 1, CBI_REC_ZSTD, BS, hash, pay, (uint32_t)(n + sizeof skip)), 0);
	size_t a = ZSTD_compress(pay, sizeof pay, d, BS / 2, 3);
	size_t b = ZSTD_compress(pay + a, sizeof pay - a, d + BS / 2, BS / 2, 3);
	assert_false(ZSTD_isError(a) || ZSTD_isError(b));
	assert_int_equal(cbi_image_writer_add(w, 2, CBI_REC_ZSTD, BS, hash, pay, (uint32_t)(a + b)), 0);
	memcpy(pay, fr, n);
	pay[n] = 0;
	assert_int_equal(cbi_image_writer_add(w, 3, CBI_REC_ZSTD, BS, hash, pay, (uint32_t)n + 1), 0);
	uint8_t dg[32] = { 0 };
	assert_int_equal(cbi_image_writer_seal(w, 4, dg), 0);
	assert_int_equal(cbi_image_writer_commit(w, NULL), 0);
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(p, &m, NULL), 0);
	for (uint64_t blk = 0; blk < 4; blk++) {
		cbi_tab_ent te;
		cbi_error why;
		assert_int_equal(cbi_image_find(m, blk, &te), 0);
		int rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
		if (blk == 0) {
			assert_int_equal(rc, BS);
			assert_memory_equal(x->out, d, BS);
		} else {
			assert_int_equal(rc, -CBI_EDAMAGED);
			assert_string_equal(why.msg, "decompression failed: the payload is not exactly one zstd frame");
		}
	}
	cbi_image_close(m);
}

static void test_record_checks_on_write_errors(void **state)
{
	img_fix *x = *state;
	/* records written wrongly are caught when read */
	const char *p = tu_path(x->base.dir, "bad.cbi");
	cbi_hdr h = mk_hdr();
	cbi_image_writer *w = NULL;
	assert_int_equal(cbi_image_writer_create(p, NULL, &h, NULL, &w, NULL), 0);
	uint8_t d[BS], hash[16], zero16[16] = { 0 };
	block_data(1, d, BS);
	cbi_block_hash(d, BS, hash);
	assert_int_equal(cbi_image_writer_add(w, 1, 0, BS, zero16, d, BS), 0);      /* wrong hash */
	assert_int_equal(cbi_image_writer_add(w, 2, 0, BS - 1, hash, d, BS - 1), 0); /* wrong length */
	assert_int_equal(cbi_image_writer_add(w, 3, 0x8, BS, hash, d, BS), 0);      /* unknown flags */
	assert_int_equal(cbi_image_writer_add(w, 4, CBI_REC_ZSTD, BS, hash, d, 100), 0); /* not zstd */
	uint8_t dg[32] = { 0 };
	assert_int_equal(cbi_image_writer_seal(w, 4, dg), 0);
	assert_int_equal(cbi_image_writer_commit(w, NULL), 0);

	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(p, &m, NULL), 0);
	assert_int_equal(cbi_sfr_check_digest(m->f, NULL, NULL), 0); /* the file itself is intact */
	const char *whys[] = { "block hash mismatch", "record length wrong", "unknown record flags",
			       "decompression failed: the payload is not exactly one zstd frame" };
	for (uint64_t b = 1; b <= 4; b++) {
		cbi_tab_ent te;
		assert_int_equal(cbi_image_find(m, b, &te), 0);
		cbi_error why;
		int rc = cbi_image_read_block(m, &te, x->dctx, NULL, x->scratch, x->out, NULL, &why);
		assert_int_equal(rc, -CBI_EDAMAGED);
		assert_true(why.msg[0] != 0);
		assert_string_equal(why.msg, whys[b - 1]);
	}
	cbi_image_close(m);
}

static void test_open_errors(void **state)
{
	img_fix *x = *state;
	cbi_image *m = NULL;
	cbi_error e;
	/* truncated copies */
	size_t n;
	uint8_t *b = tu_read_file(x->path, &n);
	const char *c = tu_path(x->base.dir, "cut.cbi");
	const size_t cuts[] = { 1, 64, 128, n / 2, n - 600 };
	for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
		tu_write_file(c, b, n - cuts[k]);
		memset(&e, 0, sizeof e);
		int rc = cbi_image_open(c, &m, &e);
		if (rc != -CBI_ETRUNCATED && rc != -CBI_EDAMAGED)
			fail_msg("image cut by %zu: open = %d", cuts[k], rc);
		assert_non_null(strstr(e.msg, "cut.cbi"));
		assert_null(m);
	}
	free(b);
	/* trailer record_count changed: sizes disagree */
	tu_flip_byte(x->path, (uint64_t)tu_file_size(x->path) - 128 + 16, 0x01);
	assert_int_equal(cbi_image_open(x->path, &m, NULL), -CBI_EDAMAGED);
	tu_flip_byte(x->path, (uint64_t)tu_file_size(x->path) - 128 + 16, 0x01);

	/* an index file is not an image */
	const char *ip = tu_path(x->base.dir, "i.cbx");
	cbi_hdr h = mk_hdr();
	h.n_blocks = 2;
	h.source_size = 2 * BS;
	cbi_index_writer *iw = NULL;
	assert_int_equal(cbi_index_writer_create(ip, NULL, &h, NULL, &iw, NULL), 0);
	cbi_idx_ent en;
	memset(&en, 0, sizeof en);
	en.flags = CBI_IDX_ZERO;
	assert_int_equal(cbi_index_writer_add(iw, &en), 0);
	assert_int_equal(cbi_index_writer_add(iw, &en), 0);
	cbi_idx_trailer t;
	memset(&t, 0, sizeof t);
	assert_int_equal(cbi_index_writer_seal(iw, &t), 0);
	assert_int_equal(cbi_index_writer_commit(iw, NULL), 0);
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_image_open(ip, &m, &e), -CBI_EFORMAT);
	assert_non_null(strstr(e.msg, "i.cbx"));
	assert_int_equal(cbi_image_open(tu_path(x->base.dir, "missing.cbi"), &m, &e), -ENOENT);
}

/* A small image whose trailer claims more table entries than the file can
 * hold, with a table_offset chosen so that table_offset + 24 * count + 128
 * wraps around to the file size: refused as damaged, never opened. */
static void test_trailer_offset_wraps(void **state)
{
	img_fix *x = *state;
	const char *p = tu_path(x->base.dir, "small.cbi");
	cbi_hdr h = mk_hdr();
	h.n_blocks = 256;
	h.source_size = 256 * BS;
	cbi_image_writer *w = NULL;
	cbi_error e;
	assert_int_equal(cbi_image_writer_create(p, NULL, &h, NULL, &w, &e), 0);
	uint8_t data[BS], hash[16], dg[32];
	block_data(7, data, BS);
	cbi_block_hash(data, BS, hash);
	assert_int_equal(cbi_image_writer_add(w, 7, 0, BS, hash, data, BS), 0);
	memset(dg, 0xd0, sizeof dg);
	assert_int_equal(cbi_image_writer_seal(w, 1, dg), 0);
	assert_int_equal(cbi_image_writer_commit(w, &e), 0);
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(p, &m, &e), 0);
	cbi_image_close(m);

	uint64_t size = (uint64_t)tu_file_size(p);
	const uint64_t counts[] = { 256, 255, (size - CBI_TRL_SIZE) / CBI_TAB_ENT_SIZE + 1 };
	for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
		uint64_t count = counts[k];
		assert_true(count * CBI_TAB_ENT_SIZE + CBI_TRL_SIZE > size);
		uint8_t b[16];
		st64(b, size - CBI_TRL_SIZE - count * CBI_TAB_ENT_SIZE); /* wraps: "offset" near 2^64 */
		st64(b + 8, count);
		tu_pwrite(p, b, 16, (off_t)(size - CBI_TRL_SIZE + 8));
		m = NULL;
		memset(&e, 0, sizeof e);
		int rc = cbi_image_open(p, &m, &e);
		if (rc != -CBI_EDAMAGED) {
			cbi_image_close(m);
			fail_msg("record_count %llu with a wrapping table_offset: open = %d, want -CBI_EDAMAGED",
				 (unsigned long long)count, rc);
		}
		assert_null(m);
		assert_non_null(strstr(e.msg, "small.cbi"));
	}
	/* and a table_offset past the end on its own */
	uint8_t b[8];
	st64(b, UINT64_MAX - 7);
	tu_pwrite(p, b, 8, (off_t)(size - CBI_TRL_SIZE + 8));
	assert_int_equal(cbi_image_open(p, &m, NULL), -CBI_EDAMAGED);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_img, teardown_img)
	const struct CMUnitTest tests[] = {
		T(test_open_and_trailer),
		T(test_find_and_read_sequential),
		T(test_find_random_order),
		T(test_want_hash_mismatch),
		T(test_flipped_payload),
		T(test_flipped_record_header),
		T(test_bad_table_entries),
		T(test_add_out_of_order),
		T(test_record_one_zstd_frame),
		T(test_record_checks_on_write_errors),
		T(test_open_errors),
		T(test_trailer_offset_wraps),
	};
	return cmocka_run_group_tests_name("image", tests, group_setup, group_teardown);
}
