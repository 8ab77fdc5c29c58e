/* format.c - encoding and validation of the fixed on-disk structures.
 * Each fixed-size structure is one table of fields (offsets as in
 * format/SPEC.md's tables; test_format.c checks them against SPEC.md). */
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
	if (h->runs)
		return 3u;
	return h->flags || h->hash_alg != CBI_HASH_XXH3_128 ? 2u : 1u;
}

/* ------------------------------------------------------------- layouts */

void cbi_layout_encode(const cbi_layout *l, const void *s, uint8_t *b)
{
	const uint8_t *m = s;
	for (size_t i = 0; i < l->n; i++) {
		const cbi_field *f = &l->f[i];
		uint8_t *p = b + f->off;
		switch (f->type) {
		case CBI_F_U32: st32(p, *(const uint32_t *)(m + f->mem)); break;
		case CBI_F_U64: st64(p, *(const uint64_t *)(m + f->mem)); break;
		case CBI_F_BYTES: memcpy(p, m + f->mem, f->size); break;
		case CBI_F_STR: put_str(p, f->size, (const char *)(m + f->mem)); break;
		case CBI_F_SIZE: st32(p, l->size); break;
		case CBI_F_RESERVED: memset(p, 0, f->size); break;
		default: break; /* CBI_F_OWN: the caller's; CBI_F_XXH3: below */
		}
	}
	for (size_t i = 0; i < l->n; i++)
		if (l->f[i].type == CBI_F_XXH3)
			st64(b + l->f[i].off, XXH3_64bits(b, l->f[i].off));
}

int cbi_layout_decode(const cbi_layout *l, const uint8_t *b, void *s)
{
	uint8_t *m = s;
	for (size_t i = 0; i < l->n; i++) {
		const cbi_field *f = &l->f[i];
		if (f->type == CBI_F_XXH3 && ld64(b + f->off) != XXH3_64bits(b, f->off))
			return -CBI_EDAMAGED;
		if (f->type == CBI_F_SIZE && ld32(b + f->off) != l->size)
			return -CBI_EDAMAGED;
	}
	for (size_t i = 0; i < l->n; i++) {
		const cbi_field *f = &l->f[i];
		const uint8_t *p = b + f->off;
		switch (f->type) {
		case CBI_F_U32: *(uint32_t *)(m + f->mem) = ld32(p); break;
		case CBI_F_U64: *(uint64_t *)(m + f->mem) = ld64(p); break;
		case CBI_F_BYTES: memcpy(m + f->mem, p, f->size); break;
		case CBI_F_STR:
			if (get_str(p, f->size, (char *)(m + f->mem)))
				return -CBI_EDAMAGED;
			break;
		default: break;
		}
	}
	return 0;
}

int cbi_layout_reserved_zero(const cbi_layout *l, const uint8_t *b)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->f[i].type == CBI_F_RESERVED && !all_zero(b + l->f[i].off, l->f[i].size))
			return 0;
	return 1;
}

const cbi_field *cbi_layout_field(const cbi_layout *l, const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(l->f[i].name, name))
			return &l->f[i];
	return NULL;
}

/* Common header (format/SPEC.md, "Common header"). */
/* clang-format off */
#define H(name, off, size, type, m) { name, off, size, type, CBI_MEMBER(cbi_hdr, m, size) }
static const cbi_field hdr_fields[] = {
	{ "magic", 0, 8, CBI_F_OWN, 0 },   /* by kind */
	{ "version", 8, 4, CBI_F_OWN, 0 }, /* by the features (cbi_hdr_version_for) */
	{ "header_size", 12, 4, CBI_F_SIZE, 0 },
	H("flags", 16, 4, CBI_F_U32, flags),
	H("block_size", 20, 4, CBI_F_U32, block_size),
	H("hash_alg", 24, 4, CBI_F_U32, hash_alg),
	H("compression", 28, 4, CBI_F_U32, compression),
	H("source_size", 32, 8, CBI_F_U64, source_size),
	H("n_blocks", 40, 8, CBI_F_U64, n_blocks),
	H("chain_id", 48, 16, CBI_F_BYTES, chain_id),
	H("point_id", 64, 16, CBI_F_BYTES, point_id),
	H("parent_id", 80, 16, CBI_F_BYTES, parent_id),
	H("parent_digest", 96, 32, CBI_F_BYTES, parent_digest),
	H("seq", 128, 4, CBI_F_U32, seq),
	H("type", 132, 4, CBI_F_U32, type),
	H("created_ns", 136, 8, CBI_F_U64, created_ns),
	H("level", 144, 4, CBI_F_U32, level),
	H("segment_mib", 148, 4, CBI_F_U32, segment_mib),
	H("job", 152, 64, CBI_F_STR, job),
	H("host", 216, 64, CBI_F_STR, host),
	H("source_id", 280, 128, CBI_F_STR, source_id),
	H("source_path", 408, 64, CBI_F_STR, source_path),
	H("key_id", 472, 16, CBI_F_BYTES, key_id),
	H("header_mac", CBI_HDR_MAC_OFF, 16, CBI_F_BYTES, hdr_mac),
	{ "header_checksum", 504, 8, CBI_F_XXH3, 0 },
};
#undef H
/* clang-format on */
const cbi_layout cbi_hdr_layout = { "Common header", CBI_HDR_SIZE, sizeof hdr_fields / sizeof hdr_fields[0],
				    hdr_fields };

/* Image trailer (format/SPEC.md, "Image trailer"). */
/* clang-format off */
#define T(name, off, size, type, m) { name, off, size, type, CBI_MEMBER(cbi_img_trailer, m, size) }
static const cbi_field img_trailer_fields[] = {
	{ "magic", 0, 8, CBI_F_OWN, 0 },
	T("table_offset", 8, 8, CBI_F_U64, table_offset),
	T("record_count", 16, 8, CBI_F_U64, record_count),
	T("changed_blocks", 24, 8, CBI_F_U64, changed_blocks),
	T("stored_bytes", 32, 8, CBI_F_U64, stored_bytes),
	T("file_size", 40, 8, CBI_F_U64, file_size),
	T("point_id", 48, 16, CBI_F_BYTES, point_id),
	T("index_digest", 64, 32, CBI_F_BYTES, index_digest),
	T("digest", 96, 32, CBI_F_BYTES, digest),
};
#undef T
/* clang-format on */
const cbi_layout cbi_img_trailer_layout = { "Image trailer", CBI_TRL_SIZE,
					    sizeof img_trailer_fields / sizeof img_trailer_fields[0],
					    img_trailer_fields };

/* Index trailer (format/SPEC.md, "Index trailer"). */
/* clang-format off */
#define T(name, off, size, type, m) { name, off, size, type, CBI_MEMBER(cbi_idx_trailer, m, size) }
static const cbi_field idx_trailer_fields[] = {
	{ "magic", 0, 8, CBI_F_OWN, 0 },
	T("n_blocks", 8, 8, CBI_F_U64, n_blocks),
	T("changed_blocks", 16, 8, CBI_F_U64, changed_blocks),
	T("zero_blocks", 24, 8, CBI_F_U64, zero_blocks),
	T("stored_blocks", 32, 8, CBI_F_U64, stored_blocks),
	T("image_size", 40, 8, CBI_F_U64, image_size),
	T("file_size", 48, 8, CBI_F_U64, file_size),
	T("point_id", 56, 16, CBI_F_BYTES, point_id),
	{ "reserved", 72, 24, CBI_F_RESERVED, 0 },
	T("digest", 96, 32, CBI_F_BYTES, digest),
};
#undef T
/* clang-format on */
const cbi_layout cbi_idx_trailer_layout = { "Index trailer", CBI_TRL_SIZE,
					    sizeof idx_trailer_fields / sizeof idx_trailer_fields[0],
					    idx_trailer_fields };

/* ------------------------------------------------------ header, trailers */

void cbi_hdr_encode(const cbi_hdr *h, uint8_t *b)
{
	memset(b, 0, CBI_HDR_SIZE);
	memcpy(b + cbi_layout_field(&cbi_hdr_layout, "magic")->off,
	       h->kind == CBI_KIND_IMAGE ? CBI_MAGIC_IMAGE : CBI_MAGIC_INDEX, 8);
	/* the features decide the version, not the caller */
	st32(b + cbi_layout_field(&cbi_hdr_layout, "version")->off, cbi_hdr_version_for(h));
	cbi_layout_encode(&cbi_hdr_layout, h, b);
}

int cbi_hdr_decode(const uint8_t *b, cbi_hdr *h)
{
	memset(h, 0, sizeof *h);
	const uint8_t *magic = b + cbi_layout_field(&cbi_hdr_layout, "magic")->off;
	if (!memcmp(magic, CBI_MAGIC_IMAGE, 8))
		h->kind = CBI_KIND_IMAGE;
	else if (!memcmp(magic, CBI_MAGIC_INDEX, 8))
		h->kind = CBI_KIND_INDEX;
	else
		return -CBI_EFORMAT;
	h->version = ld32(b + cbi_layout_field(&cbi_hdr_layout, "version")->off);
	if (h->version < 1 || h->version > CBI_FORMAT_VERSION)
		return -CBI_EFORMAT;
	if (h->version == 3 && h->kind != CBI_KIND_INDEX)
		return -CBI_EFORMAT; /* version 3 is the run-length index: no image has it */
	h->runs = h->version == 3;
	int rc = cbi_layout_decode(&cbi_hdr_layout, b, h); /* checksum, header_size, fields */
	if (rc)
		return rc;
	uint32_t bs = h->block_size;
	if (bs < CBI_MIN_BLOCK_SIZE || bs > CBI_MAX_BLOCK_SIZE || (bs & (bs - 1)))
		return -CBI_EDAMAGED;
	if (h->source_size == 0 || h->source_size > (uint64_t)INT64_MAX ||
	    h->n_blocks != cbi_nblocks(h->source_size, bs))
		return -CBI_EDAMAGED;
	if (h->compression != CBI_COMP_ZSTD)
		return -CBI_EFORMAT;
	/* H7a (revision 2.4): zstd's levels; informational, but a field with
	 * one meaning has one range */
	if (h->level < CBI_HDR_MIN_LEVEL || h->level > CBI_HDR_MAX_LEVEL)
		return -CBI_EDAMAGED;
	if (h->version == 1 && (h->flags != 0 || h->hash_alg != CBI_HASH_XXH3_128))
		return -CBI_EFORMAT; /* features of a later version */
	if (h->flags & ~CBI_HDR_FLAGS_KNOWN || (h->hash_alg != CBI_HASH_XXH3_128 && h->hash_alg != CBI_HASH_SHA256_128))
		return -CBI_EFORMAT;
	if (h->version != cbi_hdr_version_for(h))
		return -CBI_EDAMAGED;
	/* MERGED: images only, never a full's (nothing precedes seq 0) */
	if ((h->flags & CBI_HDR_MERGED) && (h->kind != CBI_KIND_IMAGE || h->type != CBI_INCREMENTAL))
		return -CBI_EDAMAGED;
	/* key id and MAC: set exactly when encrypted */
	if ((!(h->flags & CBI_HDR_ENCRYPTED)) != (all_zero(h->key_id, 16) && all_zero(h->hdr_mac, 16)))
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

const char *cbi_hdr_pair_problem(const cbi_hdr *img, const cbi_hdr *idx)
{
	/* A merged image carries its own link, segment size and MERGED bit
	 * (so its version may be 2 where the index's is 1). An index of runs
	 * is version 3 while its image keeps the version its features need
	 * (1 or 2, H8a checks it). */
	int merged = (img->flags & CBI_HDR_MERGED) != 0;
#define DIFF(f) (memcmp(&img->f, &idx->f, sizeof img->f) != 0)
	if (!merged && !idx->runs && img->version != idx->version)
		return "version";
	if ((img->flags & ~CBI_HDR_MERGED) != idx->flags || (!merged && img->flags != idx->flags))
		return "flags";
	if (DIFF(block_size))
		return "block_size";
	if (DIFF(hash_alg))
		return "hash_alg";
	if (DIFF(compression))
		return "compression";
	if (DIFF(source_size))
		return "source_size";
	if (DIFF(n_blocks))
		return "n_blocks";
	if (DIFF(chain_id))
		return "chain_id";
	if (DIFF(point_id))
		return "point_id";
	if (!merged && DIFF(parent_id))
		return "parent_id";
	if (!merged && DIFF(parent_digest))
		return "parent_digest";
	if (DIFF(seq))
		return "seq";
	if (DIFF(type))
		return "type";
	if (DIFF(created_ns))
		return "created_ns";
	if (DIFF(level))
		return "level";
	if (!merged && DIFF(segment_mib))
		return "segment_mib";
	if (strcmp(img->job, idx->job))
		return "job";
	if (strcmp(img->host, idx->host))
		return "host";
	if (strcmp(img->source_id, idx->source_id))
		return "source_id";
	if (strcmp(img->source_path, idx->source_path))
		return "source_path";
	if (DIFF(key_id))
		return "key_id";
#undef DIFF
	return NULL;
}

void cbi_img_trailer_encode(const cbi_img_trailer *t, uint8_t *b)
{
	memset(b, 0, CBI_TRL_SIZE);
	memcpy(b + cbi_layout_field(&cbi_img_trailer_layout, "magic")->off, CBI_MAGIC_IMAGE_END, 8);
	cbi_layout_encode(&cbi_img_trailer_layout, t, b);
}

int cbi_img_trailer_decode(const uint8_t *b, cbi_img_trailer *t)
{
	if (memcmp(b + cbi_layout_field(&cbi_img_trailer_layout, "magic")->off, CBI_MAGIC_IMAGE_END, 8))
		return -CBI_ETRUNCATED;
	return cbi_layout_decode(&cbi_img_trailer_layout, b, t);
}

void cbi_idx_trailer_encode(const cbi_idx_trailer *t, uint8_t *b)
{
	memset(b, 0, CBI_TRL_SIZE);
	memcpy(b + cbi_layout_field(&cbi_idx_trailer_layout, "magic")->off, CBI_MAGIC_INDEX_END, 8);
	cbi_layout_encode(&cbi_idx_trailer_layout, t, b);
}

int cbi_idx_trailer_decode(const uint8_t *b, cbi_idx_trailer *t)
{
	if (memcmp(b + cbi_layout_field(&cbi_idx_trailer_layout, "magic")->off, CBI_MAGIC_INDEX_END, 8))
		return -CBI_ETRUNCATED;
	return cbi_layout_decode(&cbi_idx_trailer_layout, b, t);
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
