/* runlog.h - the run history of a DEST where the SQLite catalog cannot
 * live (a FAT disk mounted with fusefat, whose writes into an existing file
 * are unreliable): DEST/cbimg-log.jsonl, one JSON object per run and line,
 * oldest first (format/SPEC.md, "The run log").
 *
 * The file is never written in place: each change (a run begins, a run
 * ends) writes a new file under a temporary name, front to back, fsyncs it
 * and renames it over the old one, which every file system cbimg supports
 * does reliably. Changes are serialised by byte CBI_LOCK_OFFSET_RUNLOG of
 * DEST/.cbimg.lock (job.h). The newest CBI_RUNLOG_MAX runs are kept. */
#ifndef CBI_RUNLOG_H
#define CBI_RUNLOG_H

#include <stdint.h>

#include "cbimg.h"

#define CBI_RUNLOG_NAME "cbimg-log.jsonl"
#define CBI_RUNLOG_MAX 5000

/* Record the start of a run of kind (enum cbi_run_kind; result "running"); runs of the same host,
 * source and job still marked running are marked interrupted (the caller
 * holds their lock). *run_id: its id (> 0), 0 on failure. */
int cbi_runlog_begin_kind(const char *dest, int kind, const char *host, const char *source_id,
			  const char *source_path, const char *job, int64_t *run_id, cbi_error *err) CBI_WUR;
/* A backup run: cbi_runlog_begin_kind(dest, CBI_RUN_BACKUP, ...). */
int cbi_runlog_begin(const char *dest, const char *host, const char *source_id, const char *source_path,
		     const char *job, int64_t *run_id, cbi_error *err) CBI_WUR;

/* Record the end of run run_id: result (enum cbi_run_result), message
 * (NULL: none), the counters and point of r, points_removed (a prune). forget: drop the run instead
 * (an outbox keeps no history; the file goes when no run is left). */
int cbi_runlog_end_removed(const char *dest, int64_t run_id, int result, const char *message,
			   const cbi_backup_result *r, uint32_t points_removed, int forget, cbi_error *err) CBI_WUR;
/* A backup run's end: cbi_runlog_end_removed() with points_removed 0. */
int cbi_runlog_end(const char *dest, int64_t run_id, int result, const char *message,
		   const cbi_backup_result *r, int forget, cbi_error *err) CBI_WUR;

/* The runs of the log that match f (NULL: all), oldest first, the newest
 * f->limit of them with a limit. No file: 0 runs. Lines that do not parse
 * are skipped. *out: free(). */
int cbi_runlog_read(const char *dest, const cbi_list_filter *f, cbi_run **out, size_t *n,
		    cbi_error *err) CBI_WUR;

/* Is there a run log in dest? */
int cbi_runlog_exists(const char *dest);

#endif
