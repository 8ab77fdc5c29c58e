/* index.h - the per-block hash index of a point (.cbx file). */
#ifndef CBI_INDEX_H
#define CBI_INDEX_H

#include "badmap.h"
#include "crypto.h"
#include "format.h"
#include "sfile.h"

/* ---- writer: entries are appended in block order ---- */
typedef struct cbi_index_writer cbi_index_writer;

/* tag: see cbi_sfw_create_tagged(); NULL for the default temporary name.
 * The file is stored as segments of h->segment_mib MiB (0: one file).
 * keys: the chain's keys when h is encrypted, else NULL. */
int cbi_index_writer_create(const char *final_path, const char *tag, const cbi_hdr *h, const cbi_keys *keys,
			    cbi_index_writer **out, cbi_error *err) CBI_WUR;
int cbi_index_writer_add(cbi_index_writer *w, const cbi_idx_ent *e) CBI_WUR;
/* Write the trailer (n_blocks and point_id are taken from the header) and
 * fsync. t->file_size and t->digest are filled in. */
int cbi_index_writer_seal(cbi_index_writer *w, cbi_idx_trailer *t) CBI_WUR;
int cbi_index_writer_commit(cbi_index_writer *w, cbi_error *err) CBI_WUR; /* frees w on success */
void cbi_index_writer_abort(cbi_index_writer *w);
/* A point with header flag CBI_HDR_BAD_RANGES: the bad-range map written
 * before the trailer (normalized; the caller's, read at seal). Without
 * it, such a point gets an empty map. */
void cbi_index_writer_set_badmap(cbi_index_writer *w, const cbi_badmap *m);
/* Bytes written so far (NULL: 0): what a run that stops now has written. */
uint64_t cbi_index_writer_written(const cbi_index_writer *w);

/* ---- reader ---- */
typedef struct cbi_index {
	cbi_sfr *f;
	cbi_hdr hdr;
	cbi_idx_trailer trl;
	/* window cache of entries for sequential access */
	uint8_t *win;
	uint64_t win_first, win_n;
	int keyed;                      /* encrypted and cbi_index_set_keys() done */
	uint8_t mac_key[CBI_KEY_LEN];
	cbi_hashspec hs;                /* how its entries' hashes are made */
	cbi_badmap bad;                 /* header flag CBI_HDR_BAD_RANGES: the source's unreadable
	                                 * ranges (read and checked by the open); else empty */
} cbi_index;

/* Open an index file and check its structure (header, trailer, size). The
 * digest is not checked here: see cbi_index_check_digest(). */
int cbi_index_open(const char *path, cbi_index **out, cbi_error *err) CBI_WUR;
/* Same for a sealed file already open (a scan's): f is the index's from then
 * on, closed on failure too. */
int cbi_index_open_sfr(cbi_sfr *f, cbi_index **out, cbi_error *err) CBI_WUR;
/* Entry of block i (0 <= i < n_blocks). Cheap for sequential access. */
int cbi_index_get(cbi_index *x, uint64_t i, cbi_idx_ent *e) CBI_WUR;
/* Recompute the file's digest (SHA-256, or HMAC-SHA256 for an encrypted
 * index, which needs cbi_index_set_keys() first: -CBI_ENOKEY otherwise).
 * 0 or -CBI_EDAMAGED. */
int cbi_index_check_digest(cbi_index *x) CBI_WUR;
/* For an encrypted index: check its header against the chain's keys and
 * keep the MAC and hash keys. 0, -CBI_EPASS (another key), -CBI_EAUTH;
 * no-op on a plain index. */
int cbi_index_set_keys(cbi_index *x, const cbi_keys *k) CBI_WUR;
void cbi_index_close(cbi_index *x);

#endif
