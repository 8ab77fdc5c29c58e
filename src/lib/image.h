/* image.h - the image file of a point (.cbi): compressed block records,
 * a block table sorted by block number, and a trailer. */
#ifndef CBI_IMAGE_H
#define CBI_IMAGE_H

#include <zstd.h>

#include "crypto.h"
#include "format.h"
#include "sfile.h"

/* ---- writer: records are appended in increasing block order ---- */
typedef struct cbi_image_writer cbi_image_writer;

/* tag: see cbi_sfw_create_tagged(); NULL for the default temporary name.
 * The file is stored as segments of h->segment_mib MiB (0: one file).
 * keys: the chain's keys when h is encrypted (header MAC, HMAC digest),
 * else NULL. */
int cbi_image_writer_create(const char *final_path, const char *tag, const cbi_hdr *h, const cbi_keys *keys,
			    cbi_image_writer **out, cbi_error *err) CBI_WUR;
/* Same, with every byte of the file handed to sink instead of a file
 * (cbi_sfw_create_sink(): an S3 upload, s3up.h); h has no segments. The
 * image is only ever appended to (the block table and the trailer come
 * last, nothing is written back), so a stream takes it as it is made. */
int cbi_image_writer_create_sink(const char *final_path, const cbi_hdr *h, const cbi_keys *keys,
				 cbi_sfw_sink_fn sink, void *sink_ud, cbi_image_writer **out, cbi_error *err) CBI_WUR;
/* For a writer that copies records rather than computing them (a merged
 * image): written through a window of the page cache, the file's digest on
 * a thread of its own that reads it back (cbi_sfw_copy_mode()). 0, or
 * its error, after which the writer still works as before, in the caller's
 * thread. */
int cbi_image_writer_copy_mode(cbi_image_writer *w) CBI_WUR;
/* Copy mode's read-back error so far (cbi_sfw_readback_error()), or 0. */
int cbi_image_writer_readback_error(const cbi_image_writer *w);
/* Append one record. payload is stored_len bytes (zstd frame if flags has
 * CBI_REC_ZSTD, else raw; with CBI_REC_AEAD, that sealed: ciphertext ||
 * tag, as cbi_image_seal_record() makes it). */
int cbi_image_writer_add(cbi_image_writer *w, uint64_t block, uint32_t flags, uint32_t raw_len,
			 const uint8_t hash[16], const void *payload, uint32_t stored_len) CBI_WUR;
/* Size the file will have once sealed. */
uint64_t cbi_image_writer_final_size(const cbi_image_writer *w);
/* Bytes written so far (NULL: 0): what a run that stops now has written. */
uint64_t cbi_image_writer_written(const cbi_image_writer *w);
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
	cbi_hashspec hs;         /* how the records' hashes are made */
	int keyed;               /* encrypted and cbi_image_set_keys() done */
	uint8_t rec_key[CBI_KEY_LEN];
	uint8_t mac_key[CBI_KEY_LEN];
} cbi_image;

int cbi_image_open(const char *path, cbi_image **out, cbi_error *err) CBI_WUR;
/* Same for a sealed file already open (a scan's): f is the image's from then
 * on, closed on failure too. */
int cbi_image_open_sfr(cbi_sfr *f, cbi_image **out, cbi_error *err) CBI_WUR;
/* For an encrypted image: check its header against the chain's keys (key
 * id, header MAC) and keep what reading its records needs. 0, -CBI_EPASS
 * (another key), -CBI_EAUTH (header altered); no-op on a plain image. */
int cbi_image_set_keys(cbi_image *m, const cbi_keys *k) CBI_WUR;
/* Threads: cbi_image_table_get() and cbi_image_find() share a window of
 * table entries and must not run concurrently on one image;
 * cbi_image_read_block() changes nothing in the image (it only preads,
 * under the segment lock for a split file) and may run in many threads at
 * once, each with its own dctx, cx and scratch, and alongside one thread
 * calling those two. */
/* Table entry i (0 <= i < record_count). -CBI_EDAMAGED when the run of
 * entries it loads is out of order (rule I7, cbi_image_check_table()). */
int cbi_image_table_get(cbi_image *m, uint64_t i, cbi_tab_ent *e) CBI_WUR;
/* Rule I7 for the n encoded table entries at win, entries first ...
 * first + n - 1 of m's table: each block < n_blocks and greater than the
 * entry before it (entry first - 1 is read for the first). 0, -CBI_EDAMAGED
 * or a read error. Only preads: safe alongside cbi_image_read_block(). */
int cbi_image_check_table(cbi_image *m, const uint8_t *win, uint64_t first, uint64_t n) CBI_WUR;
/* Find the table entry for block; -ENOENT if this image holds no record. */
int cbi_image_find(cbi_image *m, uint64_t block, cbi_tab_ent *e) CBI_WUR;
/* Read, authenticate and decrypt (encrypted images) and decompress the
 * record described by e into out (capacity block_size), check its hash
 * against the record header and, if want_hash is non-NULL, against
 * want_hash. scratch must hold cbi_image_scratch_size() bytes. cx: the
 * calling thread's contexts; NULL is allowed for plain XXH3 images only.
 * Returns raw length (>0) or a negative code (-CBI_EDAMAGED, or -CBI_EAUTH
 * when a sealed record fails authentication). err->msg holds the reason
 * alone ("block hash mismatch"): the caller names the file and block. */
int cbi_image_read_block(cbi_image *m, const cbi_tab_ent *e, ZSTD_DCtx *dctx, cbi_cx *cx, uint8_t *scratch,
			 uint8_t *out, const uint8_t *want_hash, cbi_error *err) CBI_WUR;

/* Seal a record for an encrypted point in place: buf holds len payload
 * bytes and room for 16 more; on return it holds ciphertext || tag.
 * rec_hdr is the record's 40-byte header as it will be written (its
 * stored_len already len + 16). */
int cbi_image_seal_record(cbi_cx *cx, const uint8_t rec_key[CBI_KEY_LEN], const uint8_t chain_id[16],
			  const uint8_t point_id[16], const uint8_t rec_hdr[CBI_REC_HDR_SIZE], uint64_t block,
			  uint8_t *buf, size_t len) CBI_WUR;
size_t cbi_image_scratch_size(uint32_t block_size);
void cbi_image_close(cbi_image *m);

#endif
