/* dgpipe.h - a sequential consumer (a file's digest) on a thread of its
 * own, fed buffers strictly in order.
 *
 * A sealed file's SHA-256 (format/SPEC.md, "File life cycle") covers every
 * byte in order, so it cannot be split over the worker pool (pool.h works
 * items in any order). A writer that copies data it need not compute (a
 * merged image: records copied as they are) spends about half its CPU on
 * that digest; this pipe moves it to a second core while the writer reads
 * and writes the next buffers.
 *
 * The pipe owns nbuf buffers of bufsz bytes. The one calling thread takes a
 * free buffer (cbi_dgpipe_get), fills it, hands a range of it over
 * (cbi_dgpipe_put) and may go on reading the buffer (to write it out) until
 * its next cbi_dgpipe_get(): the pipe's thread only reads it too, and gives
 * it back once consumed. So no byte is copied for the digest, and at most
 * nbuf - 1 buffers wait for it.
 *
 * Errors: the first negative return of fn stops the consuming (later ranges
 * are released unread); cbi_dgpipe_put() and cbi_dgpipe_drain() return it
 * from then on. Not thread-safe apart from that: one caller thread. */
#ifndef CBI_DGPIPE_H
#define CBI_DGPIPE_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"
#include "util.h"

typedef struct cbi_dgpipe cbi_dgpipe;

/* The consumer: called on the pipe's thread for each range handed over, in
 * order. 0, or a negative code that stops the pipe (see above). */
typedef int (*cbi_dgpipe_fn)(void *ud, const void *data, size_t len);

/* Buffers are aligned to this many bytes (the caller may write them out
 * with O_DIRECT). */
#define CBI_DGPIPE_ALIGN CBI_DIRECT_ALIGN

/* Start the thread with nbuf (>= 2) buffers of bufsz bytes. The thread
 * blocks every signal (they go to the caller's threads, as before). 0, or
 * -EINVAL, -ENOMEM or pthread_create()'s code; nothing is left behind on
 * failure. */
int cbi_dgpipe_new(size_t nbuf, size_t bufsz, cbi_dgpipe_fn fn, void *ud, cbi_dgpipe **out) CBI_WUR;

/* A free buffer of bufsz bytes, the caller's until it hands it over (waits
 * while every buffer is handed over and not yet consumed). Never NULL. */
uint8_t *cbi_dgpipe_get(cbi_dgpipe *p);

/* Hand over buf[off, off + len) of a buffer from cbi_dgpipe_get(): fn
 * receives it after every range handed over before. The buffer goes back to
 * the pipe; the caller may still read it until its next cbi_dgpipe_get(),
 * and must not change it. len 0 gives the buffer back unread. 0, or the
 * error that stopped the pipe (the buffer is taken back all the same). */
int cbi_dgpipe_put(cbi_dgpipe *p, uint8_t *buf, size_t off, size_t len) CBI_WUR;

/* Wait until every range handed over is consumed: fn's state may then be
 * used by the caller (e.g. to finish the digest). 0 or the error that
 * stopped the pipe. */
int cbi_dgpipe_drain(cbi_dgpipe *p) CBI_WUR;

/* Stop the thread (ranges not yet consumed are dropped), join it and free
 * the buffers; NULL-safe. */
void cbi_dgpipe_free(cbi_dgpipe *p);

#endif
