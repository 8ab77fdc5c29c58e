/* catalog.h - the SQLite catalog of a destination directory (internal part;
 * cbi_list_filtered(), cbi_log() and cbi_catalog_rebuild() are public).
 *
 * DEST/cbimg-catalog.sqlite caches what the point files of DEST say, so that
 * a listing need not open thousands of files, and records every backup run,
 * which no file holds. The files are the truth: the catalog is brought up to
 * date from them (never the other way round) and every caller treats a
 * catalog error as a warning at most. format/SPEC.md, "The catalog
 * (cbimg-catalog.sqlite)", has the schema and the rules. */
#ifndef CBI_CATALOG_H
#define CBI_CATALOG_H

#include <stdint.h>

#include "cbimg.h"
#include "dest.h" /* CBI_CATALOG_NAME: the catalog's name in DEST */

/* Record the start of a backup run of (host, source_id, job) in DEST's
 * catalog (created if missing); *run_id receives its id, 0 on failure. Runs
 * of the same host, source and job still marked running are marked
 * interrupted: the caller holds their lock, so they are over. Returns 0 or a
 * negative code with err filled; the backup goes on either way. */
int cbi_catalog_run_begin(const char *dest, const char *host, const char *source_id,
			  const char *source_path, const char *job, int64_t *run_id,
			  cbi_error *err) CBI_WUR;

/* Record the end of run run_id (nothing is done for 0): result_code is the
 * backup's return value (0 ok, -ECANCELED interrupted, else failed), message
 * its error or warning (NULL: none), r its counters. On success the new
 * point's files (r->point) are read and added to the catalog. Returns 0 or a
 * negative code with err filled. */
int cbi_catalog_run_end(const char *dest, int64_t run_id, int result_code, const char *message,
			const cbi_backup_result *r, cbi_error *err) CBI_WUR;

/* cbi_catalog_run_end() for a directory that is never an outbox (an S3
 * job's staging directory, which holds copies of the parent's index files
 * only): the run is always kept in its history. */
int cbi_catalog_run_end_kept(const char *dest, int64_t run_id, int result_code, const char *message,
			     const cbi_backup_result *r, cbi_error *err);

/* A prune run of (host, source_id, job) (cbi_prune(), which holds the job's
 * lock): recorded as cbi_catalog_run_begin() does, with kind "prune". */
int cbi_catalog_prune_begin(const char *dest, const char *host, const char *source_id,
			    const char *source_path, const char *job, int64_t *run_id, cbi_error *err) CBI_WUR;

/* The end of prune run run_id (nothing for 0): result_code as in
 * cbi_catalog_run_end(), the bytes the merges read and wrote, the points
 * removed. Then the catalog's rows are brought up to date with DEST's files,
 * so that the next listing shows the pruned chain without reading it. */
int cbi_catalog_prune_end(const char *dest, int64_t run_id, int result_code, const char *message,
			  uint64_t bytes_read, uint64_t bytes_written, uint32_t points_removed,
			  cbi_error *err) CBI_WUR;

/* What one bring-up-to-date of the catalog did (for tests and diagnostics). */
typedef struct cbi_catalog_stats {
	size_t files;        /* point files (*.cbx, *.cbi) in DEST */
	size_t opened;       /* of them, read because the catalog did not know them */
	size_t removed;      /* rows dropped for files that vanished */
	int created;         /* no usable catalog existed: a new one was made */
	int moved_aside;     /* a corrupt catalog was renamed to *.corrupt */
	int other_dir;       /* the catalog was built for another directory */
} cbi_catalog_stats;

/* Open (or create) DEST's catalog and bring it up to date with the files;
 * full: read every file again (what cbi_catalog_rebuild() does). st may be
 * NULL. Returns 0 or a negative code with err filled. */
int cbi_catalog_sync(const char *dest, int full, cbi_catalog_stats *st, cbi_error *err) CBI_WUR;

/* Sort points in the order cbi_list_filtered() returns them: by host, job
 * and source, then by creation time (newest last), then chain, seq, file. */
void cbi_list_sort(cbi_point *pts, size_t n);

#endif
