/* s3up.h - one object streamed to S3 while it is being made (an image,
 * objstore.c): the bytes a sealed-file writer hands over (sfile.h,
 * cbi_sfw_sink_fn) are cut into the parts of a multipart upload, which a
 * few threads upload while the writer goes on. Memory is bounded: a few
 * part buffers (cbi_s3up_buffers()), whatever the object's size; when all
 * are full the writer waits for an upload to end. Nothing is written to a
 * local file.
 *
 * The object is only ever appended to: an image's header is written
 * first and never patched (its block table and trailer come last), so no
 * part is sent twice and nothing needs to be held back.
 *
 * An object that fits one part is sent with a single PUT and
 * If-None-Match: * at cbi_s3up_finish(); a larger one as a multipart
 * upload, created when its first part is full and completed by
 * cbi_s3up_finish() (RGW ignores If-None-Match there: the caller's keys
 * are unique). Every failure, cbi_s3up_stop() and cbi_s3up_free() of an
 * unfinished upload abort it (AbortMultipartUpload, best effort: a
 * killed process leaves it to the next run of its job). */
#ifndef CBI_S3UP_H
#define CBI_S3UP_H

#include <stddef.h>
#include <stdint.h>

#include "s3.h"

#define CBI_S3UP_MIN_PART (5ull << 20)  /* S3's smallest part but the last */
#define CBI_S3UP_MAX_PARTS 10000u       /* and most parts */

typedef struct cbi_s3up cbi_s3up;

/* The part size for an object of at most max_size bytes: want (raised to
 * CBI_S3UP_MIN_PART), or, when CBI_S3UP_MAX_PARTS parts of it would not
 * hold max_size, the smallest whole number of MiB whose parts do. */
uint64_t cbi_s3up_part_size(uint64_t max_size, uint64_t want);

/* How many part buffers of part bytes: one being filled and one per
 * uploading thread (jobs + 1), fewer when that exceeds budget bytes, but
 * never fewer than 2 (one filling while one uploads). */
unsigned cbi_s3up_buffers(uint64_t part, unsigned jobs, uint64_t budget);

/* A new upload on s (which must outlive it); nothing is sent yet. The
 * budget of its buffers is CBIMG_S3_UPLOAD_MIB (default 96 MiB), its
 * threads and part size s's (cbi_s3_tuning()). */
int cbi_s3up_new(cbi_s3 *s, cbi_s3up **out, cbi_error *err);

/* Name the object (key) and bound its size (max_size: the part size
 * follows from it); once, before the first write. */
int cbi_s3up_begin(cbi_s3up *u, const char *key, uint64_t max_size, cbi_error *err);

/* The sink (cbi_sfw_sink_fn, ud = the cbi_s3up): append len bytes. 0, or
 * the code of the upload's failure (cbi_s3up_error() has its message). */
int cbi_s3up_write(void *ud, const void *buf, size_t len);

/* Every byte written: send what is left and make the object (a single
 * create-only PUT, or CompleteMultipartUpload). 0, or the failure (the
 * upload aborted; -EEXIST when a single PUT found the key taken). */
int cbi_s3up_finish(cbi_s3up *u, cbi_error *err);

/* Make the upload fail from now on with code and the message why (the
 * job's lock lost, objstore.c): later writes return code, uploads not yet
 * started are not, and finish() fails. Thread-safe; the first failure
 * wins. */
void cbi_s3up_stop(cbi_s3up *u, int code, const char *why);

/* The upload's own failure: 0 if none, else its code with its message in
 * err. */
int cbi_s3up_error(cbi_s3up *u, cbi_error *err);

/* Bytes written so far, parts created, and the largest number of bytes
 * its part buffers held at once (for tests and the bench). */
void cbi_s3up_stats(cbi_s3up *u, uint64_t *bytes, uint32_t *parts, uint64_t *buffer_bytes);

/* Abort an unfinished upload (as above) and free u; NULL-safe. */
void cbi_s3up_free(cbi_s3up *u);

#endif
