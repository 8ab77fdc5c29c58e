/* format.c - encoding and validation of the fixed on-disk structures.
 * Offsets here are the ones in format/SPEC.md; change both together. */
#include "format.h"

#include <xxhash.h>

#include "util.h"

static void put_str(uint8_t *p, size_t n, const char *s)
{
	memset(p, 0, n);
	if (s)
		memcpy(p, s, strnlen(s, n - 1));
}

static int get_str(const uint8_t *p, size_t n, char *out)
{
	const uint8_t *nul = memchr(p, 0, n);
	if (nul == NULL)
		return -CBI_EDAMAGED; /* field must hold its terminating NUL */
	/* Writers zero the padding. Refusing anything else keeps every header
	 * byte meaningful, so a header re-encoded from its fields is the header
	 * as stored, and its MAC (which is computed over that) covers all. */
	for (const uint8_t *q = nul; q < p + n; q++)
		if (*q)
			return -CBI_EDAMAGED;
	memcpy(out, p, n);
	return 0;
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

uint32_t cbi_hdr_version_for(const cbi_hdr *h)
{
	return h->flags || h->hash_alg != CBI_HASH_XXH3_128 ? 2u : 1u;
}

void cbi_hdr_encode(const cbi_hdr *h, uint8_t *b)
{
	memset(b, 0, CBI_HDR_SIZE);
	memcpy(b, h->kind == CBI_KIND_IMAGE ? CBI_MAGIC_IMAGE : CBI_MAGIC_INDEX, 8);
	st32(b + 8, cbi_hdr_version_for(h)); /* the features decide, not the caller */
	st32(b + 12, CBI_HDR_SIZE);
	st32(b + 16, h->flags);
	st32(b + 20, h->block_size);
	st32(b + 24, h->hash_alg);
	st32(b + 28, h->compression);
	st64(b + 32, h->source_size);
	st64(b + 40, h->n_blocks);
	memcpy(b + 48, h->chain_id, 16);
	memcpy(b + 64, h->point_id, 16);
	memcpy(b + 80, h->parent_id, 16);
	memcpy(b + 96, h->parent_digest, 32);
	st32(b + 128, h->seq);
	st32(b + 132, h->type);
	st64(b + 136, (uint64_t)h->created_ns);
	st32(b + 144, h->level);
	st32(b + 148, h->segment_mib);
	put_str(b + 152, 64, h->job);
	put_str(b + 216, 64, h->host);
	put_str(b + 280, 128, h->source_id);
	put_str(b + 408, 64, h->source_path);
	memcpy(b + 472, h->key_id, 16);
	memcpy(b + CBI_HDR_MAC_OFF, h->hdr_mac, 16);
	st64(b + 504, XXH3_64bits(b, 504));
}

int cbi_hdr_decode(const uint8_t *b, cbi_hdr *h)
{
	memset(h, 0, sizeof *h);
	if (!memcmp(b, CBI_MAGIC_IMAGE, 8))
		h->kind = CBI_KIND_IMAGE;
	else if (!memcmp(b, CBI_MAGIC_INDEX, 8))
		h->kind = CBI_KIND_INDEX;
	else
		return -CBI_EFORMAT;
	h->version = ld32(b + 8);
	if (h->version < 1 || h->version > CBI_FORMAT_VERSION)
		return -CBI_EFORMAT;
	if (ld64(b + 504) != XXH3_64bits(b, 504))
		return -CBI_EDAMAGED;
	if (ld32(b + 12) != CBI_HDR_SIZE)
		return -CBI_EDAMAGED;
	h->flags = ld32(b + 16);
	h->block_size = ld32(b + 20);
	h->hash_alg = ld32(b + 24);
	h->compression = ld32(b + 28);
	h->source_size = ld64(b + 32);
	h->n_blocks = ld64(b + 40);
	memcpy(h->chain_id, b + 48, 16);
	memcpy(h->point_id, b + 64, 16);
	memcpy(h->parent_id, b + 80, 16);
	memcpy(h->parent_digest, b + 96, 32);
	h->seq = ld32(b + 128);
	h->type = ld32(b + 132);
	h->created_ns = (int64_t)ld64(b + 136);
	h->level = ld32(b + 144);
	h->segment_mib = ld32(b + 148);
	if (get_str(b + 152, 64, h->job) || get_str(b + 216, 64, h->host) ||
	    get_str(b + 280, 128, h->source_id) || get_str(b + 408, 64, h->source_path))
		return -CBI_EDAMAGED;
	memcpy(h->key_id, b + 472, 16);
	memcpy(h->hdr_mac, b + CBI_HDR_MAC_OFF, 16);
	uint32_t bs = h->block_size;
	if (bs < CBI_MIN_BLOCK_SIZE || bs > CBI_MAX_BLOCK_SIZE || (bs & (bs - 1)))
		return -CBI_EDAMAGED;
	if (h->source_size == 0 || h->source_size > (uint64_t)INT64_MAX ||
	    h->n_blocks != cbi_nblocks(h->source_size, bs))
		return -CBI_EDAMAGED;
	if (h->compression != CBI_COMP_ZSTD)
		return -CBI_EFORMAT;
	if (h->version == 1 && (h->flags != 0 || h->hash_alg != CBI_HASH_XXH3_128))
		return -CBI_EFORMAT; /* features of a later version */
	if (h->flags & ~CBI_HDR_FLAGS_KNOWN || (h->hash_alg != CBI_HASH_XXH3_128 && h->hash_alg != CBI_HASH_SHA256))
		return -CBI_EFORMAT;
	if (h->version != cbi_hdr_version_for(h))
		return -CBI_EDAMAGED;
	/* key id and MAC: set exactly when encrypted */
	if ((!(h->flags & CBI_HDR_ENCRYPTED)) != all_zero(b + 472, 32))
		return -CBI_EDAMAGED;
	if (h->type == CBI_FULL) {
		if (h->seq != 0 || !all_zero(h->parent_id, 16) || !all_zero(h->parent_digest, 32))
			return -CBI_EDAMAGED;
	} else if (h->type == CBI_INCREMENTAL) {
		if (h->seq == 0)
			return -CBI_EDAMAGED;
	} else {
		return -CBI_EDAMAGED;
	}
	return 0;
}

void cbi_img_trailer_encode(const cbi_img_trailer *t, uint8_t *b)
{
	memset(b, 0, CBI_TRL_SIZE);
	memcpy(b, CBI_MAGIC_IMAGE_END, 8);
	st64(b + 8, t->table_offset);
	st64(b + 16, t->record_count);
	st64(b + 24, t->changed_blocks);
	st64(b + 32, t->stored_bytes);
	st64(b + 40, t->file_size);
	memcpy(b + 48, t->point_id, 16);
	memcpy(b + 64, t->index_digest, 32);
	memcpy(b + 96, t->digest, 32);
}

int cbi_img_trailer_decode(const uint8_t *b, cbi_img_trailer *t)
{
	if (memcmp(b, CBI_MAGIC_IMAGE_END, 8))
		return -CBI_ETRUNCATED;
	t->table_offset = ld64(b + 8);
	t->record_count = ld64(b + 16);
	t->changed_blocks = ld64(b + 24);
	t->stored_bytes = ld64(b + 32);
	t->file_size = ld64(b + 40);
	memcpy(t->point_id, b + 48, 16);
	memcpy(t->index_digest, b + 64, 32);
	memcpy(t->digest, b + 96, 32);
	return 0;
}

void cbi_idx_trailer_encode(const cbi_idx_trailer *t, uint8_t *b)
{
	memset(b, 0, CBI_TRL_SIZE);
	memcpy(b, CBI_MAGIC_INDEX_END, 8);
	st64(b + 8, t->n_blocks);
	st64(b + 16, t->changed_blocks);
	st64(b + 24, t->zero_blocks);
	st64(b + 32, t->stored_blocks);
	st64(b + 40, t->image_size);
	st64(b + 48, t->file_size);
	memcpy(b + 56, t->point_id, 16);
	memcpy(b + 96, t->digest, 32);
}

int cbi_idx_trailer_decode(const uint8_t *b, cbi_idx_trailer *t)
{
	if (memcmp(b, CBI_MAGIC_INDEX_END, 8))
		return -CBI_ETRUNCATED;
	t->n_blocks = ld64(b + 8);
	t->changed_blocks = ld64(b + 16);
	t->zero_blocks = ld64(b + 24);
	t->stored_blocks = ld64(b + 32);
	t->image_size = ld64(b + 40);
	t->file_size = ld64(b + 48);
	memcpy(t->point_id, b + 56, 16);
	memcpy(t->digest, b + 96, 32);
	return 0;
}

void cbi_tab_ent_encode(const cbi_tab_ent *e, uint8_t *p)
{
	st64(p, e->block);
	st64(p + 8, e->offset);
	st32(p + 16, e->stored_len);
	st32(p + 20, e->flags);
}

void cbi_tab_ent_decode(const uint8_t *p, cbi_tab_ent *e)
{
	e->block = ld64(p);
	e->offset = ld64(p + 8);
	e->stored_len = ld32(p + 16);
	e->flags = ld32(p + 20);
}

void cbi_rec_hdr_encode(const cbi_rec_hdr *r, uint8_t *p)
{
	st32(p, CBI_REC_MAGIC);
	st32(p + 4, r->flags);
	st64(p + 8, r->block);
	st32(p + 16, r->stored_len);
	st32(p + 20, r->raw_len);
	memcpy(p + 24, r->hash, 16);
}

int cbi_rec_hdr_decode(const uint8_t *p, cbi_rec_hdr *r)
{
	if (ld32(p) != CBI_REC_MAGIC)
		return -CBI_EDAMAGED;
	r->flags = ld32(p + 4);
	r->block = ld64(p + 8);
	r->stored_len = ld32(p + 16);
	r->raw_len = ld32(p + 20);
	memcpy(r->hash, p + 24, 16);
	return 0;
}

void cbi_block_hash(const void *data, size_t len, uint8_t out[16])
{
	XXH128_hash_t h = XXH3_128bits(data, len);
	st64(out, h.low64);
	st64(out + 8, h.high64);
}
