/* index.c - index file writer and reader. */
#include "index.h"

#include <openssl/crypto.h>
#include <stdlib.h>

#include "hdrmac.h"
#include "util.h"

#define WIN_ENTRIES 8192u

struct cbi_index_writer {
	cbi_sfw *f;
	cbi_hdr hdr;
	uint64_t added;
	const cbi_badmap *bad;
	uint64_t zfirst, zn;    /* runs: the zero blocks not written yet */
};

uint64_t cbi_index_writer_written(const cbi_index_writer *w)
{
	return w ? cbi_sfw_offset(w->f) : 0;
}

int cbi_index_writer_create(const char *final_path, const char *tag, const cbi_hdr *h, const cbi_keys *keys,
			    cbi_index_writer **out, cbi_error *err)
{
	cbi_index_writer *w = calloc(1, sizeof *w);
	if (!w)
		return cbi_err(err, -ENOMEM, "out of memory");
	w->hdr = *h;
	w->hdr.kind = CBI_KIND_INDEX;
	w->hdr.runs = h->runs || h->n_blocks >= CBI_IDX_RUNS_MIN_BLOCKS;
	int rc = cbi_sfw_create_split(final_path, tag, (uint64_t)h->segment_mib * CBI_SEG_UNIT, &w->f, err);
	if (rc) {
		free(w);
		return rc;
	}
	uint8_t b[CBI_HDR_SIZE];
	if ((w->hdr.flags & CBI_HDR_ENCRYPTED) && (rc = keys ? cbi_sfw_set_mac(w->f, keys->mac_key) : -EINVAL)) {
		cbi_index_writer_abort(w);
		return cbi_err(err, rc, "unable to write '%s': %s", final_path, cbi_strerror(rc));
	}
	if ((rc = cbi_hdr_encode_keyed(&w->hdr, keys, b)) || (rc = cbi_sfw_write(w->f, b, sizeof b))) {
		cbi_index_writer_abort(w);
		return cbi_err(err, rc, "unable to write '%s': %s", final_path, cbi_strerror(rc));
	}
	*out = w;
	return 0;
}

/* The pending zero blocks: one zero entry, or a run item (format/SPEC.md,
 * "Run-length index"). */
static int flush_zeros(cbi_index_writer *w)
{
	if (!w->zn)
		return 0;
	cbi_idx_ent z = { .flags = CBI_IDX_ZERO };
	if (w->zn > 1) {
		z.flags |= CBI_IDX_RUN;
		st64(z.hash, w->zfirst);
		st64(z.hash + 8, w->zn);
	}
	uint8_t b[CBI_IDX_ENT_SIZE];
	cbi_idx_ent_encode(&z, b);
	w->zn = 0;
	return cbi_sfw_write(w->f, b, sizeof b);
}

int cbi_index_writer_add(cbi_index_writer *w, const cbi_idx_ent *e)
{
	if (w->hdr.runs && (e->flags & CBI_IDX_ZERO)) {
		if (!w->zn++)
			w->zfirst = w->added;
		w->added++;
		return 0;
	}
	int rc = flush_zeros(w);
	if (rc)
		return rc;
	uint8_t b[CBI_IDX_ENT_SIZE];
	cbi_idx_ent_encode(e, b);
	w->added++;
	return cbi_sfw_write(w->f, b, sizeof b);
}

int cbi_index_writer_add_zeros(cbi_index_writer *w, uint64_t n)
{
	if (w->hdr.runs) { /* the same items as n calls of cbi_index_writer_add() */
		if (n && !w->zn)
			w->zfirst = w->added;
		w->zn += n;
		w->added += n;
		return 0;
	}
	const cbi_idx_ent z = { .flags = CBI_IDX_ZERO };
	int rc = 0;
	for (uint64_t i = 0; i < n && !rc; i++)
		rc = cbi_index_writer_add(w, &z);
	return rc;
}

void cbi_index_writer_set_badmap(cbi_index_writer *w, const cbi_badmap *m)
{
	w->bad = m;
}

/* The bad-range map before the trailer (format/SPEC.md, "Bad-range map"). */
static int write_badmap(cbi_index_writer *w)
{
	cbi_badmap none = { .sector = 512 };
	const cbi_badmap *m = w->bad ? w->bad : &none;
	size_t n = (size_t)cbi_badmap_size(m->n);
	uint8_t *b = malloc(n);
	if (!b)
		return -ENOMEM;
	cbi_badmap_encode(m, b);
	int rc = cbi_sfw_write(w->f, b, n);
	free(b);
	return rc;
}

int cbi_index_writer_seal(cbi_index_writer *w, cbi_idx_trailer *t)
{
	if (w->added != w->hdr.n_blocks)
		return -EINVAL;
	int rc = flush_zeros(w);
	if (rc)
		return rc;
	/* the bad-range map (revision 2.5) after the items, before the trailer */
	if ((w->hdr.flags & CBI_HDR_BAD_RANGES) && (rc = write_badmap(w)))
		return rc;
	t->n_blocks = w->hdr.n_blocks;
	t->file_size = cbi_sfw_offset(w->f) + CBI_TRL_SIZE;
	memcpy(t->point_id, w->hdr.point_id, 16);
	uint8_t b[CBI_TRL_SIZE];
	cbi_idx_trailer_encode(t, b);
	return cbi_sfw_seal(w->f, b, t->digest);
}

int cbi_index_writer_commit(cbi_index_writer *w, cbi_error *err)
{
	int rc = cbi_sfw_commit(w->f, err);
	if (rc)
		return rc; /* caller aborts, which unlinks the temporary file */
	free(w);
	return 0;
}

void cbi_index_writer_abort(cbi_index_writer *w)
{
	if (!w)
		return;
	cbi_sfw_abort(w->f);
	free(w);
}

int cbi_index_open(const char *path, cbi_index **out, cbi_error *err)
{
	cbi_sfr *f = NULL;
	int rc = cbi_sfr_open(path, &f, err);
	return rc ? rc : cbi_index_open_sfr(f, out, err);
}

int cbi_index_open_sfr(cbi_sfr *f, cbi_index **out, cbi_error *err)
{
	const char *path = f->path;
	cbi_index *x = calloc(1, sizeof *x);
	if (!x) {
		cbi_sfr_close(f);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	x->f = f;
	int rc;
	uint8_t b[CBI_HDR_SIZE];
	if ((rc = cbi_sfr_pread(x->f, b, CBI_HDR_SIZE, 0)))
		goto fail_io;
	if ((rc = cbi_hdr_decode(b, &x->hdr))) {
		cbi_err(err, rc, "'%s': header: %s", path,
			rc == -CBI_EFORMAT ? "not a cbimg file or unsupported version" : "damaged header");
		goto fail;
	}
	x->hs.alg = x->hdr.hash_alg;
	if (x->hdr.kind != CBI_KIND_INDEX) {
		rc = cbi_err(err, -CBI_EFORMAT, "'%s' is an image file, not an index file", path);
		goto fail;
	}
	if ((rc = cbi_sfr_pread(x->f, b, CBI_TRL_SIZE, x->f->size - CBI_TRL_SIZE)))
		goto fail_io;
	if ((rc = cbi_idx_trailer_decode(b, &x->trl))) {
		cbi_err(err, rc, "'%s': no trailer: the file is unfinished or truncated", path);
		goto fail;
	}
	/* the bad-range map (revision 2.5), found from the file's end, sits
	 * between the items and the trailer */
	uint64_t map_bytes = 0;
	if ((x->hdr.flags & CBI_HDR_BAD_RANGES) && (rc = cbi_badmap_read(x->f, &x->hdr, &x->bad, &map_bytes, err)))
		goto fail;
	/* version 3: fewer items than blocks, as many as the size says */
	uint64_t fixed = CBI_HDR_SIZE + CBI_TRL_SIZE + map_bytes;
	x->n_items = x->hdr.n_blocks;
	if (x->hdr.runs && x->f->size >= fixed + CBI_IDX_ENT_SIZE &&
	    x->f->size - fixed <= x->hdr.n_blocks * CBI_IDX_ENT_SIZE)
		x->n_items = (x->f->size - fixed) / CBI_IDX_ENT_SIZE;
	uint64_t want = fixed + x->n_items * CBI_IDX_ENT_SIZE;
	if (x->trl.file_size != x->f->size || want != x->f->size || x->trl.n_blocks != x->hdr.n_blocks ||
	    memcmp(x->trl.point_id, x->hdr.point_id, 16)) {
		rc = cbi_err(err, -CBI_EDAMAGED, "'%s': trailer does not match the header or file size",
			     path);
		goto fail;
	}
	*out = x;
	return 0;
fail_io:
	cbi_err(err, rc, "unable to read '%s': %s", path, cbi_strerror(rc));
fail:
	cbi_index_close(x);
	return rc;
}

/* Items [first, first + n) into buf, which holds WIN_ENTRIES. */
static int read_items(cbi_index *x, uint8_t *buf, uint64_t first, uint64_t *n)
{
	*n = CBI_MIN((uint64_t)WIN_ENTRIES, x->n_items - first);
	return cbi_sfr_pread(x->f, buf, (size_t)(*n * CBI_IDX_ENT_SIZE), CBI_HDR_SIZE + first * CBI_IDX_ENT_SIZE);
}

int cbi_index_load_runs(cbi_index *x)
{
	if (x->runs_state)
		return x->runs_state < 0 ? x->runs_state : 0;
	if (!x->hdr.runs) {
		x->runs_state = 1;
		return 0;
	}
	/* One pass over the items: every run item must start where the items
	 * before it end, and together they cover exactly n_blocks. */
	uint8_t *buf = malloc((size_t)WIN_ENTRIES * CBI_IDX_ENT_SIZE);
	size_t cap = 0;
	uint64_t blk = 0;
	int rc = buf ? 0 : -ENOMEM;
	for (uint64_t it = 0, n = 0; !rc && it < x->n_items; it += n) {
		if ((rc = read_items(x, buf, it, &n)))
			break;
		for (uint64_t j = 0; j < n && !rc; j++) {
			cbi_idx_ent e;
			cbi_idx_ent_decode(buf + j * CBI_IDX_ENT_SIZE, &e);
			if (blk >= x->hdr.n_blocks) {
				rc = -CBI_EDAMAGED;
			} else if (!(e.flags & CBI_IDX_RUN)) {
				blk++;
			} else {
				uint64_t first = ld64(e.hash), count = ld64(e.hash + 8);
				if (e.flags != (CBI_IDX_ZERO | CBI_IDX_RUN) || e.owner || first != blk || !count ||
				    count > x->hdr.n_blocks - blk) {
					rc = -CBI_EDAMAGED;
					break;
				}
				if (x->n_runs == cap) {
					size_t nc = cap ? 2 * cap : 64;
					cbi_idx_run *r = realloc(x->runs, nc * sizeof *r);
					if (!r) {
						rc = -ENOMEM;
						break;
					}
					x->runs = r;
					cap = nc;
				}
				x->runs[x->n_runs++] = (cbi_idx_run){ first, count, it + j };
				blk += count;
			}
		}
	}
	if (!rc && blk != x->hdr.n_blocks)
		rc = -CBI_EDAMAGED;
	free(buf);
	x->runs_state = rc ? rc : 1;
	return rc;
}

/* The item of block i through w's cursor, or 1: i is in a run. */
static int locate(const cbi_index *x, cbi_index_win *w, uint64_t i, uint64_t *item)
{
	const cbi_idx_run *r = x->runs;
	size_t k = w->k, nr = x->n_runs;
	/* k is right when runs[0 .. k) start at or before i and runs[k] after */
#define K_FITS(k) (((k) == 0 || r[(k)-1].first <= i) && ((k) == nr || r[(k)].first > i))
	if (k > nr || !K_FITS(k)) {
		if (k < nr && K_FITS(k + 1)) {
			k++;
		} else {
			size_t lo = 0, hi = nr; /* the number of runs that start at or before i */
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (r[mid].first <= i)
					lo = mid + 1;
				else
					hi = mid;
			}
			k = lo;
		}
		w->k = k;
	}
#undef K_FITS
	if (!k) {
		*item = i;
		return 0;
	}
	const cbi_idx_run *u = &r[k - 1];
	if (i - u->first < u->count)
		return 1;
	*item = u->item + 1 + (i - u->first - u->count);
	return 0;
}

int cbi_index_get_w(cbi_index *x, cbi_index_win *w, uint64_t i, cbi_idx_ent *e)
{
	if (i >= x->hdr.n_blocks)
		return -EINVAL;
	int rc = cbi_index_load_runs(x);
	if (rc)
		return rc;
	uint64_t it = i;
	if (x->n_runs && locate(x, w, i, &it)) {
		*e = (cbi_idx_ent){ .flags = CBI_IDX_ZERO };
		return 0;
	}
	if (!w->buf) {
		w->buf = malloc((size_t)WIN_ENTRIES * CBI_IDX_ENT_SIZE);
		if (!w->buf)
			return -ENOMEM;
		w->n = 0;
	}
	if (it < w->first || it >= w->first + w->n) {
		uint64_t n;
		if ((rc = read_items(x, w->buf, it, &n))) {
			w->n = 0;
			return rc;
		}
		w->first = it;
		w->n = n;
	}
	cbi_idx_ent_decode(w->buf + (it - w->first) * CBI_IDX_ENT_SIZE, e);
	return 0;
}

int cbi_index_zero_span(cbi_index *x, cbi_index_win *w, uint64_t i, uint64_t *span, uint64_t *next)
{
	*span = 0;
	*next = x->hdr.n_blocks;
	if (i >= x->hdr.n_blocks)
		return -EINVAL;
	int rc = cbi_index_load_runs(x);
	if (rc || !x->n_runs)
		return rc;
	uint64_t it;
	if (locate(x, w, i, &it)) {
		const cbi_idx_run *u = &x->runs[w->k - 1];
		*span = u->first + u->count - i;
		*next = i;
	} else if (w->k < x->n_runs) {
		*next = x->runs[w->k].first;
	}
	return 0;
}

int cbi_index_get(cbi_index *x, uint64_t i, cbi_idx_ent *e)
{
	return cbi_index_get_w(x, &x->w, i, e);
}

void cbi_index_win_free(cbi_index_win *w)
{
	free(w->buf);
	w->buf = NULL;
	w->n = 0;
}

int cbi_index_check_digest(cbi_index *x)
{
	if ((x->hdr.flags & CBI_HDR_ENCRYPTED) && !x->keyed)
		return -CBI_ENOKEY;
	return cbi_sfr_check_digest_mac(x->f, x->keyed ? x->mac_key : NULL, NULL, NULL);
}

int cbi_index_set_keys(cbi_index *x, const cbi_keys *k)
{
	if (!(x->hdr.flags & CBI_HDR_ENCRYPTED))
		return 0;
	int rc = cbi_hdr_check_keyed(&x->hdr, k);
	if (rc)
		return rc;
	memcpy(x->mac_key, k->mac_key, CBI_KEY_LEN);
	x->hs.keyed = 1;
	memcpy(x->hs.key, k->hash_key, CBI_KEY_LEN);
	x->keyed = 1;
	return 0;
}

void cbi_index_close(cbi_index *x)
{
	if (!x)
		return;
	cbi_sfr_close(x->f);
	cbi_index_win_free(&x->w);
	free(x->runs);
	cbi_badmap_free(&x->bad);
	OPENSSL_cleanse(x, sizeof *x);
	free(x);
}
