/* wtrace.h - recording the write requests that reach a block device while a
 * backup reads it, through the kernel's block tracepoints (tracefs, with
 * libtracefs): the "trace" snapshot mode of cbimg-backup(1). The backup
 * reads the source as usual, then freezes its file system, asks this module
 * which blocks were written since tracing started, re-reads only those, and
 * thaws. The set must be complete; when it may not be (a lost event, an
 * overrun buffer), the module says so and the caller falls back to a full
 * compare pass under the freeze.
 *
 * Interface fixed before the implementation (issue 13) so that the snapshot
 * framework (snapshot.c, backup.c) and this module can be built in parallel.
 * The implementation lives in wtrace.c. */
#ifndef CBI_WTRACE_H
#define CBI_WTRACE_H

#include <stdint.h>

#include "cbimg.h"

typedef struct cbi_wtrace cbi_wtrace;

/* Can writes to the block device at devpath be traced here? 0 if so;
 * -ENOTSUP with a message naming the reason otherwise (not a block device,
 * no tracefs mounted and none mountable, the block tracepoints missing,
 * no permission). Does not start anything. */
int cbi_wtrace_usable(const char *devpath, cbi_error *err) CBI_WUR;

/* Start recording write requests to the block device devpath (a whole disk
 * or a partition: writes to a partition are matched on the whole disk's
 * device number and remapped by the partition's start). buf_kib is the
 * per-CPU trace buffer size in KiB (0: the module's default; a tiny value is
 * how tests force an overrun). On return, every write that can still reach
 * the device's media after this call is guaranteed to be recorded: the
 * module records every request's completion, so writes in flight before
 * tracing started are recorded when they complete (the argument is at the
 * top of wtrace.c). *out is the caller's (cbi_wtrace_stop). Errors:
 * -ENOTSUP, -errno. */
int cbi_wtrace_start(const char *devpath, uint32_t buf_kib, cbi_wtrace **out, cbi_error *err) CBI_WUR;

/* Drain every event recorded so far (every write completed before this
 * call: call it after the freeze) and mark, in the bitmap `touched`
 * (bit b: byte b / 8, bit b % 8, as cbi_fsmap), every block of bs bytes of
 * the device (numbered from the start of devpath, not of the whole disk)
 * that a recorded write overlaps. n_blocks bounds the bitmap; writes beyond
 * it are ignored. *n_marked receives the number of bits newly set.
 * *complete is set to 1 when no event can have been lost since start, and
 * to 0 when one may have been (a buffer overrun or a dropped event): the
 * caller must then not trust the set. May be called more than once; each
 * call adds to the bitmap. Errors: -errno. */
int cbi_wtrace_collect(cbi_wtrace *t, uint32_t bs, uint64_t n_blocks, uint8_t *touched, uint64_t *n_marked,
		       int *complete, cbi_error *err) CBI_WUR;

/* Stop recording and free everything, including the private tracefs
 * instance. Safe with NULL. */
void cbi_wtrace_stop(cbi_wtrace *t);

#endif
