/* pipeline.h - the backup pipeline, on the worker pool (pool.h): the
 * calling thread plans the next batch in block order, worker threads read
 * it from the source themselves, detect zero blocks, hash, compare with the
 * parent index and compress, and the calling thread hands the results to
 * the sink in block order. A run of holes of at least a batch is one item
 * that nobody reads: the calling thread turns it into zero entries. Memory
 * is bounded: (threads + 2) batches of about 4 MiB of source data plus
 * their compressed output. */
#ifndef CBI_PIPELINE_H
#define CBI_PIPELINE_H

#include "crypto.h"
#include "format.h"
#include "index.h"
#include "source.h"

typedef struct cbi_pipe_block {
	cbi_idx_ent ent;      /* entry for the new index */
	int changed;          /* differs from the parent (or non-zero, for a full) */
	int store;            /* a record must be written */
	uint32_t raw_len;
	uint32_t stored_len;
	uint32_t rec_flags;
	const uint8_t *payload;
} cbi_pipe_block;

/* Called in block order from the calling thread. Return 0 to go on. */
typedef int (*cbi_pipe_sink)(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err);
/* Optional, with the same ud: blocks [first, first + n) are zero blocks
 * that are unchanged (no parent, or zero in the parent: a hole of the
 * source over a run of the parent's index). The same as n calls of the sink
 * with zero blocks, changed 0, store 0, in one call. */
typedef int (*cbi_pipe_sink_zeros)(void *ud, uint64_t first, uint64_t n, cbi_error *err);

typedef struct cbi_pipe_cfg {
	cbi_source *src;
	cbi_index *parent;    /* NULL for a full */
	uint32_t block_size;
	uint32_t seq;         /* owner recorded for changed blocks */
	int level;
	int threads;
	const cbi_hashspec *hs; /* block hashes; NULL: plain XXH3-128 */
	const uint8_t *rec_key; /* encrypted point: records are sealed (image.h); else NULL */
	const uint8_t *chain_id, *point_id; /* bound into sealed records */
	cbi_pipe_sink sink;
	cbi_pipe_sink_zeros sink_zeros; /* NULL: the sink gets every block; a copy of a
	                                 * cfg that changes sink or sink_ud must change
	                                 * or clear it too */
	void *sink_ud;
	cbi_progress_fn progress;
	void *progress_ud;
} cbi_pipe_cfg;

typedef struct cbi_pipe_stats {
	uint64_t bytes_read;
} cbi_pipe_stats;

int cbi_pipe_run(const cbi_pipe_cfg *cfg, cbi_pipe_stats *st, cbi_error *err) CBI_WUR;

#endif
