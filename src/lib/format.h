/* format.h - on-disk constants and the common file header (format/SPEC.md). */
#ifndef CBI_FORMAT_H
#define CBI_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

#define CBI_HDR_SIZE 512u
#define CBI_TRL_SIZE 128u
#define CBI_REC_HDR_SIZE 40u
#define CBI_TAB_ENT_SIZE 24u
#define CBI_IDX_ENT_SIZE 24u

/* File magics (8 bytes, ASCII). */
#define CBI_MAGIC_IMAGE "CBIMGDAT"
#define CBI_MAGIC_INDEX "CBIMGIDX"
#define CBI_MAGIC_IMAGE_END "CBIDATND"
#define CBI_MAGIC_INDEX_END "CBIIDXND"
#define CBI_REC_MAGIC 0x4b4c4243u /* "CBLK" little-endian */

enum cbi_kind { CBI_KIND_IMAGE = 1, CBI_KIND_INDEX = 2 };

#define CBI_COMP_ZSTD 1u

/* Header flags (version 2). */
#define CBI_HDR_ENCRYPTED 0x1u /* AES-256-GCM records, keyed hashes, HMAC digests */
#define CBI_HDR_USED_ONLY 0x2u /* blocks the source's file system did not use were not read:
                                * recorded as zero blocks (format/SPEC.md, "Used blocks only") */
#define CBI_HDR_MERGED 0x4u    /* an image only (revision 2.3): a merged image, whose parent_id and
                                * parent_digest name the point's effective parent, all zero for a
                                * synthetic full (format/SPEC.md, "Merged points") */
#define CBI_HDR_BAD_RANGES 0x8u /* revision 2.5: the index carries a bad-range map before its trailer
                                * (backup --rescue; format/SPEC.md, "Bad-range map") */
#define CBI_HDR_FLAGS_KNOWN (CBI_HDR_ENCRYPTED | CBI_HDR_USED_ONLY | CBI_HDR_MERGED | CBI_HDR_BAD_RANGES)

/* Record flags. */
#define CBI_REC_ZSTD 0x1u
#define CBI_REC_AEAD 0x2u     /* payload is AES-256-GCM ciphertext || 16-byte tag */

/* Index entry flags. */
#define CBI_IDX_ZERO 0x1u
#define CBI_IDX_RUN 0x2u      /* version 3 (revision 2.6): with ZERO, one item for a run of zero
                               * blocks (format/SPEC.md, "Run-length index") */

/* ---------------------------------------------------------------- layouts
 * A fixed-size on-disk structure is described once, as a table of its
 * fields in the order and with the names of format/SPEC.md's table; encode
 * and decode are driven by it, and a unit test (test_format.c) checks every
 * field's offset and size against SPEC.md itself. */
enum cbi_ftype {
	CBI_F_OWN,      /* written and checked by the structure's own code (magic, a computed version) */
	CBI_F_U32,      /* u32 member, little-endian */
	CBI_F_U64,      /* u64 member (or int64_t: two's complement), little-endian */
	CBI_F_BYTES,    /* byte-string member of the field's size (ids, hashes, digests) */
	CBI_F_STR,      /* text member: ends with a NUL, zeros after it (SPEC.md, "Strings") */
	CBI_F_SIZE,     /* u32: the structure's size */
	CBI_F_RESERVED, /* zero bytes */
	CBI_F_XXH3,     /* u64: XXH3-64, seed 0, of every byte before the field */
};

typedef struct cbi_field {
	const char *name;  /* as in SPEC.md's table ("reserved" for reserved bytes) */
	uint16_t off, size;
	uint8_t type;      /* enum cbi_ftype */
	uint16_t mem;      /* offset of the member in the in-memory struct (member types) */
} cbi_field;

typedef struct cbi_layout {
	const char *section; /* SPEC.md heading above its table */
	uint32_t size;
	size_t n;
	const cbi_field *f;
} cbi_layout;

/* Offset of member m of struct type T, which must be sz bytes (else the
 * table does not compile), for cbi_field.mem. */
#define CBI_MEMBER(T, m, sz) \
	((uint16_t)(offsetof(T, m) + 0 * sizeof(char[sizeof(((T *)0)->m) == (sz) ? 1 : -1])))

/* Encode the fields of s into b (l->size bytes): members, size, reserved
 * zeros, and last the checksum fields, over what is in b by then. The
 * caller writes the CBI_F_OWN fields (and may zero b) first. */
void cbi_layout_encode(const cbi_layout *l, const void *s, uint8_t *b);

/* Decode b into the members of s: checks the checksum fields and the size
 * field first, then loads every member; -CBI_EDAMAGED for a checksum, size
 * or text field that is wrong, else 0. Neither CBI_F_OWN fields nor
 * reserved bytes are looked at (cbi_layout_reserved_zero). */
int cbi_layout_decode(const cbi_layout *l, const uint8_t *b, void *s) CBI_WUR;

/* 1 when every reserved field of b is zero, else 0. */
int cbi_layout_reserved_zero(const cbi_layout *l, const uint8_t *b);

/* The field called name, or NULL. */
const cbi_field *cbi_layout_field(const cbi_layout *l, const char *name);

/* Common header, image trailer and index trailer (the key file's layout is
 * cbi_kf_layout in keyfile.h). */
extern const cbi_layout cbi_hdr_layout, cbi_img_trailer_layout, cbi_idx_trailer_layout;

/* In-memory form of the 512-byte header shared by image and index files. */
typedef struct cbi_hdr {
	int kind;              /* enum cbi_kind */
	uint32_t version;
	uint32_t flags;
	uint32_t block_size;
	uint32_t hash_alg;
	uint64_t source_size;
	uint64_t n_blocks;
	uint8_t chain_id[16];
	uint8_t point_id[16];
	uint8_t parent_id[16];
	uint8_t parent_digest[32];
	uint32_t seq;
	uint32_t type;         /* CBI_FULL / CBI_INCREMENTAL */
	int64_t created_ns;
	uint32_t compression;
	uint32_t level;
	uint32_t segment_mib;  /* file stored as segments of this many MiB; 0: one file */
	char job[64];
	char host[64];
	char source_id[128];
	char source_path[64];
	uint8_t key_id[16];    /* encrypted: names the chain's data key; else zero */
	uint8_t hdr_mac[16];   /* encrypted: HMAC-SHA256 of bytes 0..487, truncated */
	int runs;              /* an index only: its entries may be runs (version 3), not stored
	                        * as a flag: the version says it */
} cbi_hdr;

/* The version a file with these features is written as: 1 unless it uses
 * what version 2 added (encryption, SHA-256 hashes), so that plain chains
 * stay readable by version-1 readers; 3 for an index with runs. */
uint32_t cbi_hdr_version_for(const cbi_hdr *h);
#define CBI_HDR_MAC_OFF 488u

/* Encode hdr into buf (CBI_HDR_SIZE bytes), with the header checksum. */
void cbi_hdr_encode(const cbi_hdr *h, uint8_t *buf);

/* Decode and validate a header. Returns 0, -CBI_EFORMAT (wrong magic or
 * version), or -CBI_EDAMAGED (checksum or field values invalid). */
int cbi_hdr_decode(const uint8_t *buf, cbi_hdr *h);

/* The range of header field level (rule H7a, revision 2.4): zstd's. */
#define CBI_HDR_MIN_LEVEL 1u
#define CBI_HDR_MAX_LEVEL 22u

/* Rule I8 (format/SPEC.md, revision 2.4): the header of an image file
 * equals its index file's header (img the image's, idx the index's, both
 * decoded) but for magic, header_mac and header_checksum, and for a merged
 * image also version, flags bit MERGED, parent_id, parent_digest and
 * segment_mib. NULL when they agree, else the name of the first field that
 * differs. */
const char *cbi_hdr_pair_problem(const cbi_hdr *img, const cbi_hdr *idx);

/* Image trailer (128 bytes). */
typedef struct cbi_img_trailer {
	uint64_t table_offset;
	uint64_t record_count;
	uint64_t changed_blocks;
	uint64_t stored_bytes;   /* sum of record payload bytes */
	uint64_t file_size;
	uint8_t point_id[16];
	uint8_t index_digest[32];
	uint8_t digest[32];      /* SHA-256 of the file's first file_size-32 bytes */
} cbi_img_trailer;

/* Index trailer (128 bytes). */
typedef struct cbi_idx_trailer {
	uint64_t n_blocks;
	uint64_t changed_blocks;
	uint64_t zero_blocks;
	uint64_t stored_blocks;
	uint64_t image_size;     /* size of the image file of the same point */
	uint64_t file_size;
	uint8_t point_id[16];
	uint8_t digest[32];
} cbi_idx_trailer;

void cbi_img_trailer_encode(const cbi_img_trailer *t, uint8_t *buf);
int cbi_img_trailer_decode(const uint8_t *buf, cbi_img_trailer *t);
void cbi_idx_trailer_encode(const cbi_idx_trailer *t, uint8_t *buf);
int cbi_idx_trailer_decode(const uint8_t *buf, cbi_idx_trailer *t);

/* Index entry: per-block hash, owner seq, flags. */
typedef struct cbi_idx_ent {
	uint8_t hash[16];
	uint32_t owner;
	uint32_t flags;
} cbi_idx_ent;

static inline void cbi_idx_ent_encode(const cbi_idx_ent *e, uint8_t *p)
{
	for (int i = 0; i < 16; i++)
		p[i] = e->hash[i];
	for (int i = 0; i < 4; i++) {
		p[16 + i] = (uint8_t)(e->owner >> (8 * i));
		p[20 + i] = (uint8_t)(e->flags >> (8 * i));
	}
}
static inline void cbi_idx_ent_decode(const uint8_t *p, cbi_idx_ent *e)
{
	for (int i = 0; i < 16; i++)
		e->hash[i] = p[i];
	e->owner = (uint32_t)p[16] | (uint32_t)p[17] << 8 | (uint32_t)p[18] << 16 | (uint32_t)p[19] << 24;
	e->flags = (uint32_t)p[20] | (uint32_t)p[21] << 8 | (uint32_t)p[22] << 16 | (uint32_t)p[23] << 24;
}

/* Block table entry of an image file. */
typedef struct cbi_tab_ent {
	uint64_t block;
	uint64_t offset;   /* of the record header */
	uint32_t stored_len;
	uint32_t flags;
} cbi_tab_ent;

void cbi_tab_ent_encode(const cbi_tab_ent *e, uint8_t *p);
void cbi_tab_ent_decode(const uint8_t *p, cbi_tab_ent *e);

/* Record header preceding each stored block. */
typedef struct cbi_rec_hdr {
	uint32_t flags;
	uint64_t block;
	uint32_t stored_len;
	uint32_t raw_len;
	uint8_t hash[16];
} cbi_rec_hdr;

void cbi_rec_hdr_encode(const cbi_rec_hdr *r, uint8_t *p);
int cbi_rec_hdr_decode(const uint8_t *p, cbi_rec_hdr *r); /* -CBI_EDAMAGED on bad magic */

/* XXH3-128 of a block, stored little-endian (low 64 bits first). */
void cbi_block_hash(const void *data, size_t len, uint8_t out[16]);

/* Length of block i of a source of size source_size. */
static inline uint32_t cbi_block_len(uint64_t source_size, uint32_t bs, uint64_t i)
{
	uint64_t off = i * bs;
	uint64_t rem = source_size - off;
	return rem < bs ? (uint32_t)rem : bs;
}

static inline uint64_t cbi_nblocks(uint64_t size, uint32_t bs) { return (size + bs - 1) / bs; }

#endif
