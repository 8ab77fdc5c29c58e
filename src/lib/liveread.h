/* liveread.h - one backup read of a source, as its snapshot mode wants it
 * (internal; snapshot.h chooses the mode, pipeline.h reads):
 *
 *   none, reflink, exec: one pipeline run into the caller's sink; with
 *     check_changes, a second read afterwards counts the blocks whose hash
 *     differs from the first read's (--allow-inconsistent);
 *   freeze: the caller froze before (cbi_snap_freeze()); one run, then thaw;
 *   trace:  tracing starts, the run goes into a spool (an unnamed file in
 *     DEST), then freeze; the blocks written since tracing started are read
 *     again (direct I/O, or the device's cache dropped first); thaw; the
 *     spool is replayed into the caller's sink in block order, each re-read
 *     block in place of its first read. The sink thus sees every block once,
 *     in increasing order, as format/SPEC.md requires of an image's records.
 *     When the tracer may have lost an event, every block is read again
 *     under the freeze straight into the sink instead, and the spool is
 *     dropped.
 *
 * A freeze that outlasts its timeout stops the read (-ETIMEDOUT). */
#ifndef CBI_LIVEREAD_H
#define CBI_LIVEREAD_H

#include "pipeline.h"
#include "snapshot.h"

typedef struct cbi_live_stats {
	uint64_t blocks_reread;   /* trace: blocks read again under the freeze */
	int trace_incomplete;     /* trace: an event may have been lost; all blocks re-read */
	int64_t changed_during;   /* check_changes: blocks that changed during the read (-1: not checked) */
} cbi_live_stats;

/* Read pc->src through the pipeline into pc->sink as snapshot s's mode
 * wants it (above). spool_dir: where a trace's spool lives (DEST: never on a
 * frozen file system). ps: bytes read by the main run. 0, or the pipeline's,
 * the spool's, the freeze's or the tracer's error. */
int cbi_live_read(cbi_snap *s, const cbi_pipe_cfg *pc, int check_changes, const char *spool_dir,
		  cbi_pipe_stats *ps, cbi_live_stats *ls, cbi_error *err) CBI_WUR;

#endif
