/* s3lease.h - the lease of a job's lock object on S3 (format/SPEC.md,
 * "Lock object"): its body, and its renewal while a run holds it.
 *
 * The rules (revision 2.8):
 *   - the holder renews the lease every third of it (lease / 3), by
 *     reading the object, checking that it still names this run, and
 *     writing it again with expires_ns = now + lease;
 *   - the holder counts its lock as held only until 5/6 of the lease after
 *     it sent the request that last created or renewed it (the last sixth
 *     is margin for clock skew between hosts and for the commit's own
 *     duration), and a renewal that completes after the whole lease has
 *     passed since the one before counts as lost (someone may have taken
 *     the lock over meanwhile);
 *   - once the lock is not held (renewals failed for that long, or the
 *     object is gone or names another run), the run stops before its
 *     commit: the caller is told at once (on_lost) and every later check
 *     (cbi_s3lease_held) fails;
 *   - another writer may take a lock over only once its expires_ns is in
 *     the past (or, on the holder's own host, when its pid is not running).
 */
#ifndef CBI_S3LEASE_H
#define CBI_S3LEASE_H

#include <stddef.h>
#include <stdint.h>

#include "s3.h"

typedef struct cbi_s3lock {
	char host[128];
	long pid;
	char run[40];        /* the run's random token (hex); "" in bodies of revision 2.7 */
	char op[16];         /* what the holder does: "backup", "prune"; "" before revision 2.11 */
	long long expires_ns;
} cbi_s3lock;

/* The body "cbimg-lock 1\nhost H\npid P\nrun R\nop O\nexpires_ns E\n" into
 * out (no run line when run is "", no op line when op is ""); its length,
 * or -ENAMETOOLONG. */
int cbi_s3lock_body(char *out, size_t sz, const cbi_s3lock *l);

/* Parse a body (NUL-terminated): 0, or -EINVAL when it is not one
 * (missing first line or expires_ns). Unknown lines are ignored. */
int cbi_s3lock_parse(const char *body, cbi_s3lock *l);

/* The renewal period, and how long after a renewal was sent the lock
 * counts as held, for a lease of lease_ns. */
int64_t cbi_s3lease_period(int64_t lease_ns);
int64_t cbi_s3lease_hold(int64_t lease_ns);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t cbi_s3lease_mono_ns(void);

typedef struct cbi_s3lease cbi_s3lease;

/* Renew the lock object key (whose body is l, created by a request sent
 * at sent_mono_ns, cbi_s3lease_mono_ns()) in a thread of its own, every
 * period, until cbi_s3lease_stop(). When the lock is lost, on_lost(ud,
 * code, why) is called once from that thread. what names the job and
 * DEST in messages. */
int cbi_s3lease_start(cbi_s3 *s, const char *key, const cbi_s3lock *l, int64_t lease_ns, int64_t sent_mono_ns,
		      const char *what, void (*on_lost)(void *ud, int code, const char *why), void *ud,
		      cbi_s3lease **out, cbi_error *err);

/* 0 while the lock is held (the rules above), else -CBI_ELOCKED with the
 * reason in err. NULL-safe (0). */
int cbi_s3lease_held(cbi_s3lease *l, cbi_error *err);

/* Renewals made so far (tests). */
unsigned cbi_s3lease_renewals(cbi_s3lease *l);

/* End the renewals (waits for one under way) and free; NULL-safe. The
 * lock object itself is left as it is. */
void cbi_s3lease_stop(cbi_s3lease *l);

#endif
