/* image.h - the image file of a point (.cbi): compressed block records,
 * a block table sorted by block number, and a trailer. */
#ifndef CBI_IMAGE_H
#define CBI_IMAGE_H

#include <zstd.h>

#include "format.h"
#include "sfile.h"

/* ---- writer: records are appended in increasing block order ---- */
typedef struct cbi_image_writer cbi_image_writer;

/* tag: see cbi_sfw_create_tagged(); NULL for the default temporary name.
 * The file is stored as segments of h->segment_mib MiB (0: one file). */
int cbi_image_writer_create(const char *final_path, const char *tag, const cbi_hdr *h, cbi_image_writer **out,
			    cbi_error *err) CBI_WUR;
/* Append one record. payload is stored_len bytes (zstd frame if flags has
 * CBI_REC_ZSTD, else raw). */
int cbi_image_writer_add(cbi_image_writer *w, uint64_t block, uint32_t flags, uint32_t raw_len,
			 const uint8_t hash[16], const void *payload, uint32_t stored_len) CBI_WUR;
/* Size the file will have once sealed. */
uint64_t cbi_image_writer_final_size(const cbi_image_writer *w);
uint64_t cbi_image_writer_records(const cbi_image_writer *w);
/* Write table and trailer, fsync. */
int cbi_image_writer_seal(cbi_image_writer *w, uint64_t changed_blocks,
			  const uint8_t index_digest[32]) CBI_WUR;
int cbi_image_writer_commit(cbi_image_writer *w, cbi_error *err) CBI_WUR;
void cbi_image_writer_abort(cbi_image_writer *w);

/* ---- reader ---- */
typedef struct cbi_image {
	cbi_sfr *f;
	cbi_hdr hdr;
	cbi_img_trailer trl;
	uint8_t *win;            /* window of table entries */
	uint64_t win_first, win_n;
} cbi_image;

int cbi_image_open(const char *path, cbi_image **out, cbi_error *err) CBI_WUR;
/* Table entry i (0 <= i < record_count). */
int cbi_image_table_get(cbi_image *m, uint64_t i, cbi_tab_ent *e) CBI_WUR;
/* Find the table entry for block; -ENOENT if this image holds no record. */
int cbi_image_find(cbi_image *m, uint64_t block, cbi_tab_ent *e) CBI_WUR;
/* Read and decompress the record described by e into out (capacity
 * block_size), check its hash against the record header and, if want_hash
 * is non-NULL, against want_hash. scratch must hold block_size+ZSTD bound.
 * Returns raw length (>0) or a negative code (-CBI_EDAMAGED with a reason
 * in *why). */
int cbi_image_read_block(cbi_image *m, const cbi_tab_ent *e, ZSTD_DCtx *dctx, uint8_t *scratch,
			 uint8_t *out, const uint8_t *want_hash, const char **why) CBI_WUR;
size_t cbi_image_scratch_size(uint32_t block_size);
void cbi_image_close(cbi_image *m);

#endif
