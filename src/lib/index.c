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

int cbi_index_writer_add(cbi_index_writer *w, const cbi_idx_ent *e)
{
	uint8_t b[CBI_IDX_ENT_SIZE];
	cbi_idx_ent_encode(e, b);
	w->added++;
	return cbi_sfw_write(w->f, b, sizeof b);
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
	int rc;
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
	uint64_t map_bytes = 0;
	if ((x->hdr.flags & CBI_HDR_BAD_RANGES) && (rc = cbi_badmap_read(x->f, &x->hdr, &x->bad, &map_bytes, err)))
		goto fail;
	uint64_t want = CBI_HDR_SIZE + x->hdr.n_blocks * CBI_IDX_ENT_SIZE + CBI_TRL_SIZE;
	want += map_bytes;
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

int cbi_index_get(cbi_index *x, uint64_t i, cbi_idx_ent *e)
{
	if (i >= x->hdr.n_blocks)
		return -EINVAL;
	if (!x->win) {
		x->win = malloc((size_t)WIN_ENTRIES * CBI_IDX_ENT_SIZE);
		if (!x->win)
			return -ENOMEM;
		x->win_n = 0;
	}
	if (i < x->win_first || i >= x->win_first + x->win_n) {
		uint64_t n = CBI_MIN((uint64_t)WIN_ENTRIES, x->hdr.n_blocks - i);
		int rc = cbi_sfr_pread(x->f, x->win, (size_t)(n * CBI_IDX_ENT_SIZE),
				       CBI_HDR_SIZE + i * CBI_IDX_ENT_SIZE);
		if (rc) {
			x->win_n = 0;
			return rc;
		}
		x->win_first = i;
		x->win_n = n;
	}
	cbi_idx_ent_decode(x->win + (i - x->win_first) * CBI_IDX_ENT_SIZE, e);
	return 0;
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
	free(x->win);
	cbi_badmap_free(&x->bad);
	OPENSSL_cleanse(x, sizeof *x);
	free(x);
}
