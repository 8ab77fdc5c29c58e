/* flusher.h - a file made durable as it is written, not all at the end.
 *
 * A file synced once at the end makes that sync wait for everything the
 * device (on a VM, the host) still holds in its write cache: on the VM of
 * bench/RESULTS.md, a C loop that wrote 300 MiB with write-behind over a
 * second still waited 0.13-0.16 s in its final fsync, and 0.01-0.02 s with
 * an fdatasync every 64 MiB meanwhile. A flusher is a thread of its own
 * that calls fdatasync on one descriptor each time another step of bytes
 * has been written, while the writer goes on writing: the writer never
 * waits for a flush (on a slow disk a flush in the writer's thread would
 * drain its queue), and its final sync finds little left.
 *
 * Linux reports a write-back error to the first sync of a file description
 * that asks after it, not to later ones: the flusher keeps the first error
 * it sees, which cbi_flusher_error() and cbi_flusher_stop() return, to be
 * taken as a failure of the writer. */
#ifndef CBI_FLUSHER_H
#define CBI_FLUSHER_H

#include <stdint.h>

typedef struct cbi_flusher cbi_flusher;

/* A flusher of fd, an fdatasync every step bytes written; NULL when its
 * thread cannot start (nothing is lost: the writer's final sync does it
 * all). fd must stay open until cbi_flusher_stop(). */
cbi_flusher *cbi_flusher_start(int fd, uint64_t step);
/* n more bytes were written to fd (the writer's thread; f may be NULL). */
void cbi_flusher_wrote(cbi_flusher *f, uint64_t n);
/* The first failure so far (-errno), or 0; f may be NULL. */
int cbi_flusher_error(cbi_flusher *f);
/* Join the thread (a flush under way is waited for, no other is started)
 * and free f; f may be NULL. 0, or the first failure. */
int cbi_flusher_stop(cbi_flusher *f);
/* fdatasyncs made so far (tests). */
unsigned cbi_flusher_count(cbi_flusher *f);

#endif
