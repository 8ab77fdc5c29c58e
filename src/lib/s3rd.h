/* s3rd.h - reads of S3 objects by range, behind sealed-file readers
 * (sfile.h, "read back-ends"): restore, verify and mount read an image on
 * object storage through a local stand-in (a sparse file of the object's
 * size), and every read the stand-in cannot answer becomes a ranged GET.
 *
 * - Hinted reads (cbi_sfr_will_need(): restore's planner names each record
 *   before a worker reads it) are coalesced into one GET per run of
 *   records less than `gap` apart, up to `max_range` bytes, and fetched
 *   ahead by `jobs` threads in parallel; a range is freed once every hinted
 *   byte in it has been read.
 * - Other reads fetch a window of at least `window` bytes; a reader that
 *   goes on where it stopped (verify, a mount's sequential read) gets
 *   `ahead` windows read ahead in parallel, and a whole pass
 *   (cbi_sfr_whole(): a file digest) streams the object in ranges of
 *   `max_range`.
 * - Memory: the ranges held (fetched, in flight, queued) stay within
 *   `cache` bytes; the least recently used fetched ranges go first, hinted
 *   ones last; a hint that does not fit is dropped (its read fetches then).
 *   Only a reader's own window may exceed it, by at most one window per
 *   reading thread.
 * - The stand-in's first and last `ends` bytes, when the caller has copied
 *   them there, answer reads locally (headers, trailers, the end of the
 *   block table), except during a whole pass, which reads only the object.
 *
 * Thread-safe: one mutex per cbi_s3rd. Safe across fork(): a child's first
 * read starts its own fetch threads (the parent's are not in the child). */
#ifndef CBI_S3RD_H
#define CBI_S3RD_H

#include <stdint.h>
#include <sys/stat.h>

#include "sfile.h"
#include "util.h"

/* Fetch exactly len bytes at off of object key into buf: 0 or a negative
 * code (err filled). Called from several threads at once. */
typedef int (*cbi_s3rd_fetch_fn)(void *ud, const char *key, uint64_t off, uint64_t len, void *buf,
				 cbi_error *err);

typedef struct cbi_s3rd_cfg {
	unsigned jobs;      /* fetch threads (parallel GETs); 0: 4, at most 16 */
	uint64_t cache;     /* bytes of ranges held at most; 0: 64 MiB */
	uint64_t window;    /* least bytes of an unhinted GET; 0: 1 MiB */
	uint64_t max_range; /* most bytes of a coalesced or streamed GET; 0: 4 MiB */
	uint64_t gap;       /* hinted extents this close share a GET; 0: 64 KiB */
	unsigned ahead;     /* windows read ahead of a sequential reader; 0: 4 */
} cbi_s3rd_cfg;

typedef struct cbi_s3rd_stats {
	uint64_t gets;       /* ranged GETs made */
	uint64_t bytes;      /* bytes they fetched */
	uint64_t served;     /* bytes read from fetched ranges */
	uint64_t local;      /* bytes read from the stand-ins' ends */
	uint64_t dropped;    /* hints dropped for memory */
	uint64_t peak;       /* most bytes held at once */
} cbi_s3rd_stats;

typedef struct cbi_s3rd cbi_s3rd;

/* A reader over fetch (ud passed to it). 0, -ENOMEM. */
int cbi_s3rd_new(const cbi_s3rd_cfg *c, cbi_s3rd_fetch_fn fetch, void *ud, cbi_s3rd **out, cbi_error *err) CBI_WUR;

/* The regular file (dev, ino) stands for object key of size bytes; its
 * first and last `ends` bytes are the object's (0: none; ends >= size / 2:
 * the whole file is a copy, still read from the object in a whole pass).
 * 0, -ENOMEM. */
int cbi_s3rd_add(cbi_s3rd *d, dev_t dev, ino_t ino, const char *key, uint64_t size, uint64_t ends,
		 cbi_error *err) CBI_WUR;

/* The opener for cbi_sfr_set_opener(), ud the cbi_s3rd. */
int cbi_s3rd_opener(void *ud, int fd, const struct stat *st, const cbi_sfr_ops **ops, void **h, cbi_error *err);

/* The message of the last failed fetch ("" if none): a read that fails
 * returns only a code. */
void cbi_s3rd_last_error(cbi_s3rd *d, char *out, size_t sz);

void cbi_s3rd_get_stats(cbi_s3rd *d, cbi_s3rd_stats *st);

/* Stop the fetch threads and free everything; every reader that used d
 * must be closed. NULL-safe. */
void cbi_s3rd_free(cbi_s3rd *d);

#endif
