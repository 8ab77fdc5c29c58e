/* fuzz_image.c - the image reader (image.c): the trailer checks of
 * cbi_image_open, the block table (cbi_image_table_get, cbi_image_find) and
 * the records (cbi_image_read_block: record header, AES-GCM for encrypted
 * images under the corpus's fixed key, zstd, block hash), and what a scan
 * reads of an image file (chain.c: cbi_point_read).
 *
 * Input: a control byte (fuzz.h), then the bytes of the file. */
#include "fuzz.h"

#include <zstd.h>

#include "chain.h"
#include "image.h"

#define MAX_RECORDS 64 /* records read per input */

static fz_buf file, scratch, out;
static ZSTD_DCtx *dctx;
static cbi_cx *cx;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (!dctx && !(dctx = ZSTD_createDCtx()))
		abort();
	if (!cx && !(cx = cbi_cx_new()))
		abort();
	uint8_t ctl = data[0];
	size_t n = size - 1;
	uint8_t *b = fz_buf_get(&file, n ? n : 1);
	memcpy(b, data + 1, n);
	if ((ctl & FZ_FIX_HDR) && n >= CBI_HDR_SIZE)
		fz_fix_hdr(b);
	if (ctl & FZ_FIX_DIGEST)
		fz_fix_digest(b, n);
	char path[512];
	fz_path(path, sizeof path, fz_dir(), "p.cbi");
	fz_write(path, b, n);

	cbi_image *m = NULL;
	cbi_error err;
	memset(&err, 0, sizeof err);
	if (cbi_image_open(path, &m, &err) == 0) {
		if ((ctl & FZ_KEYED) && (m->hdr.flags & CBI_HDR_ENCRYPTED)) {
			cbi_keys k;
			if (!fz_keys(m->hdr.chain_id, &k))
				FZ_TRY(cbi_image_set_keys(m, &k));
			cbi_keys_wipe(&k);
		}
		uint32_t bs = m->hdr.block_size;
		uint8_t *sc = fz_buf_get(&scratch, cbi_image_scratch_size(bs));
		uint8_t *o = fz_buf_get(&out, bs);
		cbi_tab_ent e;
		uint64_t nr = m->trl.record_count;
		for (uint64_t i = 0; i < nr && i < MAX_RECORDS; i++) {
			if (cbi_image_table_get(m, i, &e))
				break;
			/* a plain XXH3 image also without contexts, as its contract allows */
			int plain = !(m->hdr.flags & CBI_HDR_ENCRYPTED) && m->hdr.hash_alg == CBI_HASH_XXH3_128;
			int rc = cbi_image_read_block(m, &e, dctx, (i & 1) && plain ? NULL : cx, sc, o, NULL, &err);
			if (rc > (int)bs)
				abort(); /* a block longer than the block size */
		}
		if (nr) {
			FZ_TRY(cbi_image_table_get(m, nr - 1, &e));
			uint64_t last = e.block;
			FZ_TRY(cbi_image_find(m, 0, &e));
			FZ_TRY(cbi_image_find(m, last, &e));
			FZ_TRY(cbi_image_find(m, last / 2 + 1, &e));
			FZ_TRY(cbi_image_find(m, m->hdr.n_blocks, &e));
		}
		if (ctl & FZ_DIGEST)
			FZ_TRY(cbi_sfr_check_digest_mac(m->f, m->keyed ? m->mac_key : NULL, NULL, NULL));
		cbi_image_close(m);
	}
	cbi_point p;
	int kind = 0;
	uint32_t nseg = 0;
	FZ_TRY(cbi_point_read(path, &p, &kind, &nseg, &err));
	return 0;
}
