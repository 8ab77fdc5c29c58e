/* fuzz_index.c - the index reader (index.c: cbi_index_open, cbi_index_get,
 * cbi_index_set_keys, cbi_index_check_digest; for a run-length index of
 * version 3, cbi_index_load_runs and cbi_index_get_w at blocks taken from
 * the input) and what a scan reads of an index file (chain.c:
 * cbi_point_read).
 *
 * Input: a control byte (fuzz.h), then the bytes of the file, written to a
 * file on tmpfs that the library opens as it opens any index file. */
#include "fuzz.h"

#include "chain.h"
#include "index.h"

#define MAX_ENTRIES 300 /* entries read per input: a prefix, and the last */

static fz_buf file;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t ctl = data[0];
	size_t n = size - 1;
	uint8_t *b = fz_buf_get(&file, n ? n : 1);
	memcpy(b, data + 1, n);
	if ((ctl & FZ_FIX_HDR) && n >= CBI_HDR_SIZE)
		fz_fix_hdr(b);
	if (ctl & FZ_FIX_DIGEST)
		fz_fix_digest(b, n);
	char path[512];
	fz_path(path, sizeof path, fz_dir(), "p.cbx");
	fz_write(path, b, n);

	cbi_index *x = NULL;
	cbi_error err;
	memset(&err, 0, sizeof err);
	if (cbi_index_open(path, &x, &err) == 0) {
		if ((ctl & FZ_KEYED) && (x->hdr.flags & CBI_HDR_ENCRYPTED)) {
			cbi_keys k;
			if (!fz_keys(x->hdr.chain_id, &k))
				FZ_TRY(cbi_index_set_keys(x, &k));
			cbi_keys_wipe(&k);
		}
		cbi_idx_ent e;
		uint64_t nb = x->hdr.n_blocks;
		for (uint64_t i = 0; i < nb && i < MAX_ENTRIES; i++)
			if (cbi_index_get(x, i, &e))
				break;
		if (nb > MAX_ENTRIES) {
			FZ_TRY(cbi_index_get(x, nb - 1, &e));
			FZ_TRY(cbi_index_get(x, nb / 2, &e));
		}
		FZ_TRY(cbi_index_get(x, nb, &e)); /* out of range */
		if (x->hdr.runs && cbi_index_load_runs(x) == 0) {
			/* runs: blocks named by the input's bytes, through a second window */
			cbi_index_win w;
			memset(&w, 0, sizeof w);
			for (size_t k = 1; k + 8 <= n && k < 8 * 64; k += 8) {
				uint64_t i = 0;
				for (int j = 0; j < 8; j++)
					i |= (uint64_t)data[k + j] << (8 * j);
				FZ_TRY(cbi_index_get_w(x, &w, i % nb, &e));
				if ((i >> 63) && i % nb)
					FZ_TRY(cbi_index_get_w(x, &w, i % nb - 1, &e));
			}
			cbi_index_win_free(&w);
		}
		if (ctl & FZ_DIGEST)
			FZ_TRY(cbi_index_check_digest(x));
		cbi_point p;
		memset(&p, 0, sizeof p);
		cbi_point_from_index(&p, x);
		cbi_index_close(x);
	}
	cbi_point p;
	int kind = 0;
	uint32_t nseg = 0;
	FZ_TRY(cbi_point_read(path, &p, &kind, &nseg, &err));
	return 0;
}
