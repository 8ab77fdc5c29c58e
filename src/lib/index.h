/* index.h - the per-block hash index of a point (.cbx file). */
#ifndef CBI_INDEX_H
#define CBI_INDEX_H

#include "badmap.h"
#include "crypto.h"
#include "format.h"
#include "sfile.h"

/* An index of at least this many blocks is written as runs (version 3,
 * format/SPEC.md "Run-length index"): below it the fixed entries cost at
 * most 1.5 MiB, and any older reader reads them. */
#define CBI_IDX_RUNS_MIN_BLOCKS 65536u

/* ---- writer: entries are appended in block order ---- */
typedef struct cbi_index_writer cbi_index_writer;

/* tag: see cbi_sfw_create_tagged(); NULL for the default temporary name.
 * Zero entries are written as runs when h->runs is set or h->n_blocks is at
 * least CBI_IDX_RUNS_MIN_BLOCKS.
 * The file is stored as segments of h->segment_mib MiB (0: one file).
 * keys: the chain's keys when h is encrypted, else NULL. */
int cbi_index_writer_create(const char *final_path, const char *tag, const cbi_hdr *h, const cbi_keys *keys,
			    cbi_index_writer **out, cbi_error *err) CBI_WUR;
int cbi_index_writer_add(cbi_index_writer *w, const cbi_idx_ent *e) CBI_WUR;
/* n zero entries: the same file as n cbi_index_writer_add() of a zero
 * entry, in O(1) when the index is of runs. */
int cbi_index_writer_add_zeros(cbi_index_writer *w, uint64_t n) CBI_WUR;
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

/* A run of zero blocks of a version-3 index: blocks [first, first + count)
 * are item number `item`. */
typedef struct cbi_idx_run {
	uint64_t first, count, item;
} cbi_idx_run;

/* A window of items for sequential access; one per thread that reads
 * (cbi_index_get uses the index's own). Zeroed to start. */
typedef struct cbi_index_win {
	uint8_t *buf;
	uint64_t first, n;      /* items [first, first + n) are in buf */
	size_t k;               /* cursor: runs before the block found last */
} cbi_index_win;

typedef struct cbi_index {
	cbi_sfr *f;
	cbi_hdr hdr;
	cbi_idx_trailer trl;
	cbi_index_win w;                /* cbi_index_get's */
	uint64_t n_items;               /* items stored: n_blocks unless hdr.runs */
	cbi_idx_run *runs;              /* the runs, in block order (version 3) */
	size_t n_runs;
	int runs_state;                 /* 0 not read yet, 1 read, < 0 the error */
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
/* Entry of block i (0 <= i < n_blocks). Cheap for sequential access. A
 * block in a run reads as a zero entry. The first call on a version-3
 * index reads its items once to find the runs (-CBI_EDAMAGED if they do
 * not cover the blocks exactly). */
int cbi_index_get(cbi_index *x, uint64_t i, cbi_idx_ent *e) CBI_WUR;
/* The same through the caller's window w: threads that share x each use
 * their own, after one cbi_index_load_runs(x). */
int cbi_index_get_w(cbi_index *x, cbi_index_win *w, uint64_t i, cbi_idx_ent *e) CBI_WUR;
/* Through w's cursor: *span blocks from block i on lie in one run of zero
 * blocks (0: block i is not in a run); *next is the first block at or after
 * i that is in a run (n_blocks: none). An index without runs: 0 and
 * n_blocks. */
int cbi_index_zero_span(cbi_index *x, cbi_index_win *w, uint64_t i, uint64_t *span, uint64_t *next) CBI_WUR;
void cbi_index_win_free(cbi_index_win *w);
/* Find the runs of a version-3 index now (no-op after the first time, and
 * on older indexes). 0, -CBI_EDAMAGED, or a read error. */
int cbi_index_load_runs(cbi_index *x) CBI_WUR;
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
