/* fuzz_segments.c - segment sets (sfile.c): a sealed file stored as
 * NAME, NAME.001, NAME.002, ... of 1 MiB each, as cbi_sfr_open() finds,
 * sizes and joins them; reads across segments (with more segments than the
 * reader keeps open), the digest check, a joined copy, and the image or
 * index reader and the directory scan on top of a set.
 *
 * Input (all little-endian):
 *   [0]      control byte (fuzz.h; FZ_FIX_HDR also sets segment_mib to 1,
 *            0x10 sets the trailer's file_size to the set's logical size)
 *   [1]      number of segments - 1 (mod 12)
 *   [2..3]   size of the last segment in 256-byte units, [4] added to it
 *   [5..5+n) per segment k >= 1: bits 0-2 its kind (0-3 a regular file,
 *            4 a symbolic link to NAME, 5 a FIFO, 6 a directory, 7 missing),
 *            bits 3-4 a size error (1: a byte short, 2: a byte long, 3: empty)
 *   then     512 header bytes at logical offset 0, 128 trailer bytes at the
 *            logical end, then chunks: u32 logical offset, u16 length, bytes.
 * The files are sparse: the bytes no chunk gives are zeros. */
#include "fuzz.h"

#include <sys/types.h>
#include <zstd.h>

#include "dest.h"
#include "image.h"
#include "index.h"
#include "sfile.h"

#define SEG CBI_SEG_UNIT
#define MAX_SEGS 12

typedef struct in {
	const uint8_t *p;
	size_t n;
} in;

static int take(in *s, void *out, size_t n)
{
	if (s->n < n)
		return -1;
	memcpy(out, s->p, n);
	s->p += n;
	s->n -= n;
	return 0;
}

/* Write b[0..n) at logical offset off of the set (segments of SEG bytes
 * each; the first one takes what lies beyond when there is one segment). */
static void put(int *fds, uint32_t nseg, uint64_t total, uint64_t off, const uint8_t *b, size_t n)
{
	if (off >= total)
		return;
	n = (size_t)CBI_MIN((uint64_t)n, total - off);
	while (n) {
		uint32_t k = (uint32_t)CBI_MIN(off / SEG, (uint64_t)nseg - 1);
		uint64_t at = off - (uint64_t)k * SEG;
		size_t len = k + 1 == nseg ? n : (size_t)CBI_MIN((uint64_t)n, SEG - at);
		if (fds[k] >= 0 && cbi_pwrite_full(fds[k], b, len, at))
			abort();
		b += len;
		off += len;
		n -= len;
	}
}

static fz_buf scratch, outb;
static ZSTD_DCtx *dctx;
static cbi_cx *cx;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	in s = { data, size };
	if (!dctx && !(dctx = ZSTD_createDCtx()))
		abort();
	if (!cx && !(cx = cbi_cx_new()))
		abort();
	uint8_t ctl, nb, lb, kinds[MAX_SEGS] = { 0 };
	uint16_t lu;
	uint8_t l2[2];
	if (take(&s, &ctl, 1) || take(&s, &nb, 1) || take(&s, l2, 2) || take(&s, &lb, 1))
		return 0;
	lu = ld16(l2);
	uint32_t nseg = 1u + nb % MAX_SEGS;
	if (take(&s, kinds + 1, nseg - 1))
		return 0;
	uint8_t hdr[CBI_HDR_SIZE] = { 0 }, trl[CBI_TRL_SIZE] = { 0 };
	memcpy(hdr, s.p, CBI_MIN(s.n, sizeof hdr));
	s.p += CBI_MIN(s.n, sizeof hdr);
	s.n -= CBI_MIN(s.n, sizeof hdr);
	memcpy(trl, s.p, CBI_MIN(s.n, sizeof trl));
	s.p += CBI_MIN(s.n, sizeof trl);
	s.n -= CBI_MIN(s.n, sizeof trl);

	uint64_t last = CBI_MIN((uint64_t)lu * 256 + lb, SEG + 65536);
	if (!last)
		last = 1;
	uint64_t total = (uint64_t)(nseg - 1) * SEG + last;
	if (ctl & FZ_FIX_HDR) {
		st32(hdr + 148, 1);
		fz_fix_hdr(hdr);
	}
	int image = !memcmp(hdr, CBI_MAGIC_IMAGE, 8);
	if (ctl & 0x10)
		st64(trl + (image ? 40 : 48), total);

	const char *dir = fz_dir();
	char path[512], name[600];
	fz_path(path, sizeof path, dir, image ? "p.cbi" : "p.cbx");
	int fds[MAX_SEGS];
	for (uint32_t k = 0; k < nseg; k++) {
		fds[k] = -1;
		if (cbi_sfile_segment_name(path, k, name, sizeof name))
			abort();
		int kind = k ? kinds[k] & 7 : 0, err = k ? (kinds[k] >> 3) & 3 : 0;
		if (kind == 4) {
			if (symlink(image ? "p.cbi" : "p.cbx", name) < 0)
				abort();
			continue;
		}
		if (kind == 5) {
			if (mkfifo(name, 0600) < 0)
				abort();
			continue;
		}
		if (kind == 6) {
			if (mkdir(name, 0700) < 0)
				abort();
			continue;
		}
		if (kind == 7)
			continue;
		fds[k] = open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fds[k] < 0)
			abort();
		uint64_t sz = k + 1 == nseg ? last : SEG;
		sz = err == 1 ? sz - 1 : err == 2 ? sz + 1 : err == 3 ? 0 : sz;
		if (ftruncate(fds[k], (off_t)sz) < 0)
			abort();
	}
	put(fds, nseg, total, 0, hdr, sizeof hdr);
	if (total >= sizeof trl)
		put(fds, nseg, total, total - sizeof trl, trl, sizeof trl);
	while (s.n >= 6) {
		uint8_t h6[6];
		(void)take(&s, h6, 6);
		size_t len = CBI_MIN((size_t)ld16(h6 + 4), s.n);
		put(fds, nseg, total, ld32(h6) % total, s.p, len);
		s.p += len;
		s.n -= len;
	}
	for (uint32_t k = 0; k < nseg; k++)
		if (fds[k] >= 0)
			close(fds[k]);

	cbi_error err;
	memset(&err, 0, sizeof err);
	cbi_sfr *r = NULL;
	if (cbi_sfr_open(path, &r, &err) == 0) {
		uint8_t b[256];
		uint64_t x = lb + 1;
		/* across every boundary, then in an order that makes the reader
		 * close and reopen segments (it keeps 8 open) */
		for (uint32_t k = 1; k <= r->nseg; k++)
			FZ_TRY(cbi_sfr_pread(r, b, sizeof b, (uint64_t)k * SEG - 100));
		for (int i = 0; i < 40 && r->size; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			FZ_TRY(cbi_sfr_pread(r, b, 1 + (size_t)(x >> 56), (x >> 11) % r->size));
		}
		FZ_TRY(cbi_sfr_pread(r, b, sizeof b, r->size - 10)); /* beyond the end */
		if ((ctl & FZ_DIGEST) && r->size <= 2 * SEG)
			FZ_TRY(cbi_sfr_check_digest(r, NULL, NULL));
		cbi_sfr_close(r);
	}
	if ((ctl & FZ_DIGEST) && total <= 2 * SEG) {
		char cp[512];
		fz_path(cp, sizeof cp, dir, "joined");
		int fd = open(cp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0)
			abort();
		FZ_TRY(cbi_sfile_copy_joined(path, fd, &err));
		close(fd);
		unlink(cp);
	}
	if (image) {
		cbi_image *m = NULL;
		if (cbi_image_open(path, &m, &err) == 0) {
			cbi_tab_ent e;
			uint8_t *sc = fz_buf_get(&scratch, cbi_image_scratch_size(m->hdr.block_size));
			uint8_t *o = fz_buf_get(&outb, m->hdr.block_size);
			for (uint64_t i = 0; i < m->trl.record_count && i < 4; i++)
				if (cbi_image_table_get(m, i, &e) == 0)
					FZ_TRY(cbi_image_read_block(m, &e, dctx, cx, sc, o, NULL, &err));
			cbi_image_close(m);
		}
	} else {
		cbi_index *x = NULL;
		if (cbi_index_open(path, &x, &err) == 0) {
			cbi_idx_ent e;
			for (uint64_t i = 0; i < x->hdr.n_blocks && i < 16; i++)
				FZ_TRY(cbi_index_get(x, i, &e));
			if (x->hdr.n_blocks)
				FZ_TRY(cbi_index_get(x, x->hdr.n_blocks - 1, &e));
			cbi_index_close(x);
		}
	}
	cbi_dest *d = NULL;
	if (cbi_dest_scan(dir, CBI_DEST_STAT | CBI_DEST_READ, &d, &err) == 0) {
		cbi_point *pts = NULL;
		size_t np = 0;
		if (cbi_dest_points(d, &pts, &np, &err) == 0)
			free(pts);
		cbi_dest_free(d);
	}
	cbi_sfile_remove(path);
	fz_rm_tree(dir, 0);
	return 0;
}
