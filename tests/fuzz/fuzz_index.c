/* fuzz_index.c - the index reader (index.c: cbi_index_open, cbi_index_get,
 * cbi_index_set_keys, cbi_index_check_digest; for a run-length index of
 * version 3, cbi_index_load_runs and cbi_index_get_w at blocks taken from
 * the input) and what a scan reads of an index file (chain.c:
 * cbi_point_read), and the bad-range map of an index with header flag bit 3
 * (badmap.c: cbi_badmap_read at open, then cbi_badmap_find and
 * cbi_badmap_describe as restore, mount and verify use the map).
 *
 * Input: a control byte (fuzz.h), then the bytes of the file, written to a
 * file on tmpfs that the library opens as it opens any index file. */
#include "fuzz.h"

#include "chain.h"
#include "badmap.h"
#include "index.h"

#define MAX_ENTRIES 300 /* entries read per input: a prefix, and the last */

static fz_buf file;

/* What restore, the point reader and verify ask of a map that opened. */
static void bad_map(const cbi_index *x)
{
	const cbi_badmap *m = &x->bad;
	cbi_badrange r;
	char d[256];
	cbi_badmap_describe(m, 4, d, sizeof d);
	uint64_t end = x->hdr.source_size;
	for (uint64_t off = 0, step = end / 7 + 1; off < end; off += step)
		(void)cbi_badmap_find(m, off, step, &r);
	for (size_t i = 0; i < m->n && i < 64; i++) {
		if (!cbi_badmap_find(m, m->r[i].off, 1, &r) || r.off != m->r[i].off)
			abort(); /* a decoded map is sorted and separated */
		if (i && m->r[i].off <= m->r[i - 1].off + m->r[i - 1].len)
			abort();
	}
}

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
		bad_map(x);
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
