/* image.c - image file writer and reader. */
#include "image.h"

#include <openssl/crypto.h>
#include <stdlib.h>

#include "hdrmac.h"
#include "util.h"

#define WIN_ENTRIES 4096u

struct cbi_image_writer {
	cbi_sfw *f;
	cbi_hdr hdr;
	uint8_t *table;          /* encoded table entries; at most 24 bytes per stored block */
	uint64_t n, cap;
	uint64_t stored_bytes;
	uint64_t last_block;
};

/* The writer of h's image, on a sealed-file writer: a file (sink NULL), or
 * sink (then h has no segments). */
static int iw_create(const char *final_path, const char *tag, const cbi_hdr *h, const cbi_keys *keys,
		     cbi_sfw_sink_fn sink, void *sink_ud, cbi_image_writer **out, cbi_error *err)
{
	if (sink && h->segment_mib)
		return cbi_err(err, -EINVAL, "'%s': an image written to a sink has no segments", final_path);
	cbi_image_writer *w = calloc(1, sizeof *w);
	if (!w)
		return cbi_err(err, -ENOMEM, "out of memory");
	w->hdr = *h;
	w->hdr.kind = CBI_KIND_IMAGE;
	w->hdr.runs = 0; /* runs are an index's (version 3) */
	int rc = sink ? cbi_sfw_create_sink(final_path, sink, sink_ud, &w->f, err)
		      : cbi_sfw_create_split(final_path, tag, (uint64_t)h->segment_mib * CBI_SEG_UNIT, &w->f, err);
	if (rc) {
		free(w);
		return rc;
	}
	uint8_t b[CBI_HDR_SIZE];
	if ((w->hdr.flags & CBI_HDR_ENCRYPTED) && (rc = keys ? cbi_sfw_set_mac(w->f, keys->mac_key) : -EINVAL)) {
		cbi_image_writer_abort(w);
		return cbi_err(err, rc, "unable to write '%s': %s", final_path, cbi_strerror(rc));
	}
	if ((rc = cbi_hdr_encode_keyed(&w->hdr, keys, b)) || (rc = cbi_sfw_write(w->f, b, sizeof b))) {
		cbi_image_writer_abort(w);
		return cbi_err(err, rc, "unable to write '%s': %s", final_path, cbi_strerror(rc));
	}
	*out = w;
	return 0;
}

int cbi_image_writer_create(const char *final_path, const char *tag, const cbi_hdr *h, const cbi_keys *keys,
			    cbi_image_writer **out, cbi_error *err)
{
	return iw_create(final_path, tag, h, keys, NULL, NULL, out, err);
}

int cbi_image_writer_create_sink(const char *final_path, const cbi_hdr *h, const cbi_keys *keys,
				 cbi_sfw_sink_fn sink, void *sink_ud, cbi_image_writer **out, cbi_error *err)
{
	return iw_create(final_path, NULL, h, keys, sink, sink_ud, out, err);
}

int cbi_image_writer_copy_mode(cbi_image_writer *w)
{
	return cbi_sfw_copy_mode(w->f);
}

int cbi_image_writer_readback_error(const cbi_image_writer *w)
{
	return w ? cbi_sfw_readback_error(w->f) : 0;
}

int cbi_image_writer_add(cbi_image_writer *w, uint64_t block, uint32_t flags, uint32_t raw_len,
			 const uint8_t hash[16], const void *payload, uint32_t stored_len)
{
	if (w->n && block <= w->last_block)
		return -EINVAL; /* the table must stay sorted */
	if (w->n == w->cap) {
		uint64_t nc = w->cap ? w->cap * 2 : 1024;
		uint8_t *t = realloc(w->table, (size_t)(nc * CBI_TAB_ENT_SIZE));
		if (!t)
			return -ENOMEM;
		w->table = t;
		w->cap = nc;
	}
	cbi_tab_ent te = { block, cbi_sfw_offset(w->f), stored_len, flags };
	cbi_rec_hdr rh = { .flags = flags, .block = block, .stored_len = stored_len, .raw_len = raw_len };
	memcpy(rh.hash, hash, 16);
	uint8_t b[CBI_REC_HDR_SIZE];
	cbi_rec_hdr_encode(&rh, b);
	int rc = cbi_sfw_write(w->f, b, sizeof b);
	if (!rc)
		rc = cbi_sfw_write(w->f, payload, stored_len);
	if (rc)
		return rc;
	cbi_tab_ent_encode(&te, w->table + w->n * CBI_TAB_ENT_SIZE);
	w->n++;
	w->last_block = block;
	w->stored_bytes += stored_len;
	return 0;
}

uint64_t cbi_image_writer_final_size(const cbi_image_writer *w)
{
	return cbi_sfw_offset(w->f) + w->n * CBI_TAB_ENT_SIZE + CBI_TRL_SIZE;
}

uint64_t cbi_image_writer_written(const cbi_image_writer *w)
{
	return w ? cbi_sfw_offset(w->f) : 0;
}

uint64_t cbi_image_writer_records(const cbi_image_writer *w) { return w->n; }

int cbi_image_writer_seal(cbi_image_writer *w, uint64_t changed_blocks, const uint8_t index_digest[32])
{
	cbi_img_trailer t = { 0 };
	t.table_offset = cbi_sfw_offset(w->f);
	t.record_count = w->n;
	t.changed_blocks = changed_blocks;
	t.stored_bytes = w->stored_bytes;
	t.file_size = cbi_image_writer_final_size(w);
	memcpy(t.point_id, w->hdr.point_id, 16);
	memcpy(t.index_digest, index_digest, 32);
	int rc = w->n ? cbi_sfw_write(w->f, w->table, (size_t)(w->n * CBI_TAB_ENT_SIZE)) : 0;
	if (rc)
		return rc;
	uint8_t b[CBI_TRL_SIZE];
	cbi_img_trailer_encode(&t, b);
	return cbi_sfw_seal(w->f, b, t.digest);
}

int cbi_image_writer_commit(cbi_image_writer *w, cbi_error *err)
{
	int rc = cbi_sfw_commit(w->f, err);
	if (rc)
		return rc;
	free(w->table);
	free(w);
	return 0;
}

void cbi_image_writer_abort(cbi_image_writer *w)
{
	if (!w)
		return;
	cbi_sfw_abort(w->f);
	free(w->table);
	free(w);
}

int cbi_image_open(const char *path, cbi_image **out, cbi_error *err)
{
	cbi_sfr *f = NULL;
	int rc = cbi_sfr_open(path, &f, err);
	return rc ? rc : cbi_image_open_sfr(f, out, err);
}

int cbi_image_open_sfr(cbi_sfr *f, cbi_image **out, cbi_error *err)
{
	const char *path = f->path;
	cbi_image *m = calloc(1, sizeof *m);
	if (!m) {
		cbi_sfr_close(f);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	m->f = f;
	int rc;
	uint8_t b[CBI_HDR_SIZE];
	if ((rc = cbi_sfr_pread(m->f, b, CBI_HDR_SIZE, 0)))
		goto fail_io;
	if ((rc = cbi_hdr_decode(b, &m->hdr))) {
		cbi_err(err, rc, "'%s': header: %s", path,
			rc == -CBI_EFORMAT ? "not a cbimg file or unsupported version" : "damaged header");
		goto fail;
	}
	m->hs.alg = m->hdr.hash_alg;
	if (m->hdr.kind != CBI_KIND_IMAGE) {
		rc = cbi_err(err, -CBI_EFORMAT, "'%s' is an index file, not an image file", path);
		goto fail;
	}
	if ((rc = cbi_sfr_pread(m->f, b, CBI_TRL_SIZE, m->f->size - CBI_TRL_SIZE)))
		goto fail_io;
	if ((rc = cbi_img_trailer_decode(b, &m->trl))) {
		cbi_err(err, rc, "'%s': no trailer: the file is unfinished or truncated", path);
		goto fail;
	}
	const cbi_img_trailer *t = &m->trl;
	/* Untrusted values: bound each by the file size before any arithmetic,
	 * so that no sum can wrap (size >= header + trailer: sfile checked). */
	uint64_t size = m->f->size, room = size - CBI_HDR_SIZE - CBI_TRL_SIZE;
	if (t->file_size != size || t->table_offset < CBI_HDR_SIZE || t->table_offset - CBI_HDR_SIZE > room ||
	    t->record_count > m->hdr.n_blocks || t->record_count > room / CBI_TAB_ENT_SIZE ||
	    t->record_count * CBI_TAB_ENT_SIZE != size - CBI_TRL_SIZE - t->table_offset ||
	    memcmp(t->point_id, m->hdr.point_id, 16)) {
		rc = cbi_err(err, -CBI_EDAMAGED, "'%s': trailer does not match the header or file size",
			     path);
		goto fail;
	}
	*out = m;
	return 0;
fail_io:
	cbi_err(err, rc, "unable to read '%s': %s", path, cbi_strerror(rc));
fail:
	cbi_image_close(m);
	return rc;
}

int cbi_image_check_table(cbi_image *m, const uint8_t *win, uint64_t first, uint64_t n)
{
	uint8_t b[8];
	uint64_t prev = 0;
	int have_prev = 0;
	if (first > 0) { /* the entry before the run, so that every pair is compared */
		int rc = cbi_sfr_pread(m->f, b, sizeof b, m->trl.table_offset + (first - 1) * CBI_TAB_ENT_SIZE);
		if (rc)
			return rc;
		prev = ld64(b);
		have_prev = 1;
	}
	for (uint64_t k = 0; k < n; k++) {
		uint64_t blk = ld64(win + k * CBI_TAB_ENT_SIZE);
		if (blk >= m->hdr.n_blocks || (have_prev && blk <= prev))
			return -CBI_EDAMAGED;
		prev = blk;
		have_prev = 1;
	}
	return 0;
}

int cbi_image_table_get(cbi_image *m, uint64_t i, cbi_tab_ent *e)
{
	if (i >= m->trl.record_count)
		return -EINVAL;
	if (!m->win) {
		m->win = malloc((size_t)WIN_ENTRIES * CBI_TAB_ENT_SIZE);
		if (!m->win)
			return -ENOMEM;
	}
	if (i < m->win_first || i >= m->win_first + m->win_n) {
		uint64_t n = CBI_MIN((uint64_t)WIN_ENTRIES, m->trl.record_count - i);
		int rc = cbi_sfr_pread(m->f, m->win, (size_t)(n * CBI_TAB_ENT_SIZE),
				       m->trl.table_offset + i * CBI_TAB_ENT_SIZE);
		if (!rc)
			rc = cbi_image_check_table(m, m->win, i, n);
		if (rc) {
			m->win_n = 0;
			return rc;
		}
		m->win_first = i;
		m->win_n = n;
	}
	cbi_tab_ent_decode(m->win + (i - m->win_first) * CBI_TAB_ENT_SIZE, e);
	return 0;
}

int cbi_image_find(cbi_image *m, uint64_t block, cbi_tab_ent *e)
{
	uint64_t lo = 0, hi = m->trl.record_count;
	/* Fast path: the block is inside the cached window (sequential restore). */
	if (m->win_n) {
		cbi_tab_ent a, z;
		cbi_tab_ent_decode(m->win, &a);
		cbi_tab_ent_decode(m->win + (m->win_n - 1) * CBI_TAB_ENT_SIZE, &z);
		if (block >= a.block && block <= z.block) {
			lo = m->win_first;
			hi = m->win_first + m->win_n;
		} else if (block > z.block) {
			lo = m->win_first + m->win_n;
		}
	}
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		int rc = cbi_image_table_get(m, mid, e);
		if (rc)
			return rc;
		if (e->block == block)
			return 0;
		if (e->block < block)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -ENOENT;
}

int cbi_image_set_keys(cbi_image *m, const cbi_keys *k)
{
	if (!(m->hdr.flags & CBI_HDR_ENCRYPTED))
		return 0;
	int rc = cbi_hdr_check_keyed(&m->hdr, k);
	if (!rc)
		rc = cbi_keys_record_key(k, m->hdr.point_id, m->rec_key);
	if (rc)
		return rc;
	memcpy(m->mac_key, k->mac_key, CBI_KEY_LEN);
	m->hs.keyed = 1;
	memcpy(m->hs.key, k->hash_key, CBI_KEY_LEN);
	m->keyed = 1;
	return 0;
}

int cbi_image_seal_record(cbi_cx *cx, const uint8_t rec_key[CBI_KEY_LEN], const uint8_t chain_id[16],
			  const uint8_t point_id[16], const uint8_t rec_hdr[CBI_REC_HDR_SIZE], uint64_t block,
			  uint8_t *buf, size_t len)
{
	uint8_t nonce[12], aad[CBI_REC_AAD_LEN];
	cbi_rec_nonce(block, nonce);
	cbi_rec_aad(chain_id, point_id, rec_hdr, aad);
	return cbi_gcm_seal(cx, rec_key, nonce, aad, sizeof aad, buf, len, buf, buf + len);
}

size_t cbi_image_scratch_size(uint32_t block_size)
{
	return CBI_REC_HDR_SIZE + ZSTD_compressBound(block_size) + CBI_TAG_LEN;
}

int cbi_image_read_block(cbi_image *m, const cbi_tab_ent *e, ZSTD_DCtx *dctx, cbi_cx *cx, uint8_t *scratch,
			 uint8_t *out, const uint8_t *want_hash, cbi_error *err)
{
	uint32_t bs = m->hdr.block_size;
	/* R1: the tag of a sealed record comes on top of zstd's bound */
	if (e->block >= m->hdr.n_blocks ||
	    e->stored_len > ZSTD_compressBound(bs) + ((e->flags & CBI_REC_AEAD) ? CBI_TAG_LEN : 0) ||
	    e->offset < CBI_HDR_SIZE || e->offset > m->trl.table_offset ||
	    (uint64_t)CBI_REC_HDR_SIZE + e->stored_len > m->trl.table_offset - e->offset)
		return cbi_err(err, -CBI_EDAMAGED, "table entry out of range");
	int rc = cbi_sfr_pread(m->f, scratch, CBI_REC_HDR_SIZE + e->stored_len, e->offset);
	if (rc)
		return cbi_err(err, rc, "read error");
	cbi_rec_hdr rh;
	if (cbi_rec_hdr_decode(scratch, &rh) || rh.block != e->block || rh.stored_len != e->stored_len ||
	    rh.flags != e->flags)
		return cbi_err(err, -CBI_EDAMAGED, "record header does not match the block table");
	uint32_t want_len = cbi_block_len(m->hdr.source_size, bs, e->block);
	if (rh.raw_len != want_len)
		return cbi_err(err, -CBI_EDAMAGED, "record length wrong");
	uint8_t *payload = scratch + CBI_REC_HDR_SIZE;
	uint32_t plen = rh.stored_len;
	int enc = (m->hdr.flags & CBI_HDR_ENCRYPTED) != 0;
	if (enc != ((rh.flags & CBI_REC_AEAD) != 0))
		return cbi_err(err, enc ? -CBI_EAUTH : -CBI_EDAMAGED, "%s", enc ? "unsealed record in an encrypted image" : "sealed record in a plain image");
	if (enc) {
		if (!m->keyed || !cx)
			return cbi_err(err, -CBI_ENOKEY, "encrypted: no key");
		if (plen < CBI_TAG_LEN)
			return cbi_err(err, -CBI_EAUTH, "sealed record too short");
		plen -= CBI_TAG_LEN;
		uint8_t nonce[12], aad[CBI_REC_AAD_LEN];
		cbi_rec_nonce(rh.block, nonce);
		cbi_rec_aad(m->hdr.chain_id, m->hdr.point_id, scratch, aad);
		rc = cbi_gcm_open(cx, m->rec_key, nonce, aad, sizeof aad, payload, plen, payload + plen, payload);
		if (rc)
			return cbi_err(err, rc == -CBI_EAUTH ? rc : -CBI_EDAMAGED, "%s", rc == -CBI_EAUTH ? "authentication failed: the record was altered, moved or replayed"
						: "decryption failed");
		rh.flags &= ~CBI_REC_AEAD;
	}
	if (rh.flags == CBI_REC_ZSTD) {
		/* R4: exactly one standard zstd frame, nothing before or after it
		 * (no skippable frame, no second frame): one byte string has one
		 * meaning, and every reader decodes the same bytes */
		static const uint8_t zmagic[4] = { 0x28, 0xb5, 0x2f, 0xfd };
		if (plen < 4 || memcmp(payload, zmagic, 4) || ZSTD_findFrameCompressedSize(payload, plen) != plen)
			return cbi_err(err, -CBI_EDAMAGED, "decompression failed: the payload is not exactly one zstd frame");
		size_t n = ZSTD_decompressDCtx(dctx, out, bs, payload, plen);
		if (ZSTD_isError(n) || n != rh.raw_len)
			return cbi_err(err, -CBI_EDAMAGED, "decompression failed");
	} else if (rh.flags == 0 && plen == rh.raw_len) {
		memcpy(out, payload, rh.raw_len);
	} else
		return cbi_err(err, -CBI_EDAMAGED, "unknown record flags");
	uint8_t h[16];
	if (cbi_hash_block_spec(&m->hs, cx, out, rh.raw_len, h))
		return cbi_err(err, -EIO, "unable to hash the block");
	if (memcmp(h, rh.hash, 16))
		return cbi_err(err, -CBI_EDAMAGED, "block hash mismatch");
	if (want_hash && memcmp(h, want_hash, 16))
		return cbi_err(err, -CBI_EDAMAGED, "block does not match the index");
	return (int)rh.raw_len;
}

void cbi_image_close(cbi_image *m)
{
	if (!m)
		return;
	cbi_sfr_close(m->f);
	free(m->win);
	OPENSSL_cleanse(m, sizeof *m);
	free(m);
}
