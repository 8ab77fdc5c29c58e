/* badmap.h - the bad-range map of a point (format/SPEC.md, "Bad-range map",
 * revision 2.5) and rescue reading of a source whose reads fail.
 *
 * A point written with `backup --rescue` (header flag CBI_HDR_BAD_RANGES)
 * carries in its index file, just before the trailer, the byte ranges of
 * the source that could not be read. Those bytes are zeros in the blocks
 * stored, and the map is what says they are not data: restore refuses
 * them unless told otherwise, the point reader fails their reads with EIO,
 * verify counts them as known-bad. */
#ifndef CBI_BADMAP_H
#define CBI_BADMAP_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "sfile.h"

#define CBI_BADMAP_MAGIC "CBIBADMP"
#define CBI_BADMAP_TAIL_SIZE 32u
#define CBI_BADMAP_RANGE_SIZE 16u

typedef struct cbi_badrange {
	uint64_t off, len;
} cbi_badrange;

/* Ranges sorted by offset, neither overlapping nor touching (after
 * cbi_badmap_normalize(); a decoded map always is). */
typedef struct cbi_badmap {
	cbi_badrange *r;
	size_t n, cap;
	uint64_t bytes;         /* sum of the lengths */
	uint32_t sector;        /* the unit the writer read bad ranges in (informational) */
} cbi_badmap;

/* The 32-byte tail of the map, as in SPEC.md's table. */
typedef struct cbi_badmap_tail {
	uint64_t range_count;
	uint64_t bad_bytes;
	uint32_t sector_size;
} cbi_badmap_tail;
extern const cbi_layout cbi_badmap_tail_layout;

/* Append [off, off + len) (len > 0). 0 or -ENOMEM. Call
 * cbi_badmap_normalize() before any lookup or encoding. */
int cbi_badmap_add(cbi_badmap *m, uint64_t off, uint64_t len) CBI_WUR;
/* Sort, merge overlapping and touching ranges, recount bytes. */
void cbi_badmap_normalize(cbi_badmap *m);
void cbi_badmap_free(cbi_badmap *m);

/* Does [off, off + len) meet a bad range? 1 and the first such range in
 * *hit (when non-NULL), else 0. Binary search: the map is normalized. */
int cbi_badmap_find(const cbi_badmap *m, uint64_t off, uint64_t len, cbi_badrange *hit);

/* Bytes of the encoded map: the ranges and the tail. */
static inline uint64_t cbi_badmap_size(uint64_t n)
{
	return n * CBI_BADMAP_RANGE_SIZE + CBI_BADMAP_TAIL_SIZE;
}
/* Encode the normalized map into b (cbi_badmap_size(m->n) bytes). */
void cbi_badmap_encode(const cbi_badmap *m, uint8_t *b);
/* Decode and check a tail: magic, sector size, reserved bytes; the count
 * against room (the bytes before the tail that may hold ranges). 0 or
 * -CBI_EDAMAGED. */
int cbi_badmap_tail_decode(const uint8_t *b, uint64_t room, cbi_badmap_tail *t) CBI_WUR;
/* Decode the ranges b (16 * t->range_count bytes) of a map whose tail is
 * t, for a source of source_size bytes: sorted, separated, non-empty,
 * inside the source, lengths summing to t->bad_bytes. 0, -CBI_EDAMAGED or
 * -ENOMEM; m is filled (and owned by the caller) only on success. */
int cbi_badmap_decode(const uint8_t *b, const cbi_badmap_tail *t, uint64_t source_size, cbi_badmap *m) CBI_WUR;

/* Read the map of an index file f whose header is h (flag
 * CBI_HDR_BAD_RANGES): the tail just before the trailer, then the ranges.
 * *map_bytes gets the size of the map in the file. 0, -CBI_EDAMAGED (with
 * err naming f), or -errno. */
int cbi_badmap_read(const cbi_sfr *f, const cbi_hdr *h, cbi_badmap *m, uint64_t *map_bytes,
		    cbi_error *err) CBI_WUR;

/* "bytes A-B, C-D and N more ranges" (inclusive byte numbers, at most max
 * ranges named) into out. */
void cbi_badmap_describe(const cbi_badmap *m, size_t max, char *out, size_t outsz);

/* ---- rescue reading ---- */

/* What a rescuing reader learned. Thread-safe: workers share one. */
typedef struct cbi_rescue {
	pthread_mutex_t mu;
	cbi_badmap map;         /* what could not be read */
	uint32_t sector;        /* smallest piece read: the device's logical sector size */
	unsigned retries;       /* extra reads of a sector before it counts as bad */
	uint64_t failed_reads;  /* reads that failed and were split (or retried) */
	uint64_t retry_reads;   /* reads made after a failure: pieces and retries */
	uint64_t rescued;       /* bytes that failed in a larger read but then read */
	int nomem;              /* a range could not be recorded: the run must fail */
} cbi_rescue;

/* A rescuing reader for pieces of sector bytes (a power of two, >= 512)
 * with retries extra attempts per sector. Free with cbi_rescue_free(). */
int cbi_rescue_init(cbi_rescue *r, uint32_t sector, unsigned retries) CBI_WUR;
void cbi_rescue_free(cbi_rescue *r);

/* Is errno e a failure to read the medium (rescued) rather than a
 * failure of the call (reported as before)? */
int cbi_rescue_media_error(int e);

/* [off, off + len) of fd failed to read into buf: read it again in halves,
 * down to sectors, each sector retried r->retries times; what still fails
 * is zeroed in buf and recorded in r->map. 0, or -CBI_EREAD (with err) for
 * a failure that is not a media error (the run fails as without rescue). */
int cbi_rescue_read(cbi_rescue *r, int fd, const char *path, uint64_t off, size_t len, uint8_t *buf,
		    cbi_error *err) CBI_WUR;

#endif
