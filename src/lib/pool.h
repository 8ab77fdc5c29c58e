/* pool.h - the one ordered worker pool of the library, and its memory budget.
 *
 * A run is a stream of work items. The calling thread plans them one after
 * the other (cheap, not thread-safe work: which blocks, where they are),
 * worker threads do the expensive part of each (read, hash, compress,
 * decompress, authenticate) in any order and at the same time, and the
 * calling thread consumes the results strictly in the order they were
 * planned (writes them out, reports progress). Backup's pipeline and
 * restore run on it; merge and mount are meant to.
 *
 * Items live in slots that the caller owns: an array of nslots entries of
 * whatever the caller needs (buffers sized once at the start), indexed by
 * the slot number the callbacks get. Item n uses slot n % nslots; a slot
 * belongs to exactly one party at a time (plan, then one worker, then
 * consume), with the hand-overs under the pool's lock, so callbacks need no
 * locking of their own for the slot. At most nslots items are in flight, so
 * a run's memory is the slots' memory plus the workers' states, whatever the
 * length of the run: size them with cbi_pool_size().
 *
 * Errors: the run ends at the first failed item in plan order (a plan,
 * work or consume callback returning a negative code, or a worker state
 * that cannot be made): every item planned before it is still worked and
 * consumed, nothing after it is consumed, and cbi_pool_run() returns that
 * code with that callback's cbi_error. So the error reported does not
 * depend on thread timing. Cancelling is an error like any other: consume
 * (which typically reports progress) returns -ECANCELED with its message. */
#ifndef CBI_POOL_H
#define CBI_POOL_H

#include <stdint.h>

#include "cbimg.h"

/* The memory the slots of one run may take together, and the most workers
 * a run starts: each worker also holds a state (a zstd context is about
 * 0.7 MiB at level 3). Peak RSS measured with these figures: bench/RESULTS.md,
 * "Worker count and memory budget". */
#define CBI_WORK_BUDGET (40ull << 20)
#define CBI_MAX_WORKERS 16

/* Workers for a run: requested (0: one per CPU), at least 1, at most
 * CBI_MAX_WORKERS and at most max_by_memory (how many the buffers'
 * budget holds for this block size). */
int cbi_worker_count(int requested, uint64_t max_by_memory);

/* Size of a run, from cbi_pool_size(). */
typedef struct cbi_pool_dims {
	int threads;            /* workers to start */
	unsigned nslots;        /* slots: slots_per_worker * threads + extra_slots */
	uint32_t per_item;      /* units (blocks) per item */
} cbi_pool_dims;

/* Size a run so that its slots stay within CBI_WORK_BUDGET: a slot of
 * per_item units costs per_item * unit_bytes. nslots = slots_per_worker *
 * threads + extra_slots (extra: the one being consumed, one ready ahead...);
 * threads from cbi_worker_count(requested, ...) capped so that nslots slots
 * of one unit each fit in the budget, and, when total_units is not 0, at
 * most one per item of the run; per_item = max_units (a batch's size), or
 * fewer so that nslots items fit the budget, at least 1. */
void cbi_pool_size(int requested, uint64_t unit_bytes, uint32_t max_units, unsigned slots_per_worker,
		   unsigned extra_slots, uint64_t total_units, cbi_pool_dims *out);

/* plan's return when there are no more items. */
#define CBI_POOL_DONE 1
/* plan's return for an item that needs no work: it goes straight to consume
 * (e.g. a run of holes that the consumer turns into zero entries). */
#define CBI_POOL_NOWORK 2

typedef struct cbi_pool_cfg {
	int threads;            /* worker threads to start, >= 1 (fewer if the system
	                         * refuses some; none at all fails the run) */
	unsigned nslots;        /* >= 1: items in flight at most */
	void *ud;               /* passed to every callback */

	/* Optional: make worker k's state (*ws), e.g. a zstd context and
	 * scratch buffers. Called in the calling thread for every worker before
	 * any item is planned; a failure fails the run (fini is called for the
	 * states made before it). */
	int (*init)(void *ud, void **ws, cbi_error *err);
	/* Optional: free a state made by init (also one set to NULL). */
	void (*fini)(void *ud, void *ws);

	/* Calling thread, in order: fill slot with the next item and return 0
	 * (or CBI_POOL_NOWORK), or return CBI_POOL_DONE when there is none;
	 * negative with err filled on failure. Never called again after it
	 * returned CBI_POOL_DONE or an error. */
	int (*plan)(void *ud, unsigned slot, cbi_error *err);
	/* Any worker thread, items in any order and at the same time (one per
	 * slot): the item's work, with this worker's state. 0, or negative
	 * with err filled. Must not touch other slots or unlocked shared state. */
	int (*work)(void *ud, void *ws, unsigned slot, cbi_error *err);
	/* Calling thread, strictly in plan order, once per item worked without
	 * error: take the result; the slot is free for planning when it
	 * returns. 0, or negative with err filled (-ECANCELED to cancel). */
	int (*consume)(void *ud, unsigned slot, cbi_error *err);
} cbi_pool_cfg;

/* Run the pool until plan says CBI_POOL_DONE and every item is consumed, or
 * until the first error in plan order (see above). Every worker is joined
 * and every state freed before it returns. 0 or the failing callback's code
 * with its message in err. */
int cbi_pool_run(const cbi_pool_cfg *c, cbi_error *err) CBI_WUR;

#endif
