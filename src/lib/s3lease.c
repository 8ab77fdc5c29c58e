/* s3lease.c - the lock object's body and the renewal of its lease
 * (s3lease.h has the rules). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "s3lease.h"

int cbi_s3lock_body(char *out, size_t sz, const cbi_s3lock *l)
{
	int n = snprintf(out, sz, "cbimg-lock 1\nhost %s\npid %ld\n%s%s%s%s%s%sexpires_ns %lld\n", l->host, l->pid,
			 l->run[0] ? "run " : "", l->run, l->run[0] ? "\n" : "", l->op[0] ? "op " : "", l->op,
			 l->op[0] ? "\n" : "", l->expires_ns);
	return n < 0 || (size_t)n >= sz ? -ENAMETOOLONG : n;
}

int cbi_s3lock_parse(const char *body, cbi_s3lock *l)
{
	memset(l, 0, sizeof *l);
	if (strncmp(body, "cbimg-lock 1\n", 13))
		return -EINVAL;
	const char *p;
	if ((p = strstr(body, "\nhost ")))
		sscanf(p + 6, "%127s", l->host);
	if ((p = strstr(body, "\npid ")))
		l->pid = strtol(p + 5, NULL, 10);
	if ((p = strstr(body, "\nrun ")))
		sscanf(p + 5, "%39s", l->run);
	if ((p = strstr(body, "\nop "))) /* one word, on its own line (revision 2.11) */
		for (size_t i = 0, n = strcspn(p + 4, " \t\r\n"); i < n && i + 1 < sizeof l->op; i++)
			l->op[i] = p[4 + i];
	if (!(p = strstr(body, "\nexpires_ns ")))
		return -EINVAL;
	char *e;
	errno = 0;
	l->expires_ns = strtoll(p + 12, &e, 10);
	return errno || e == p + 12 ? -EINVAL : 0;
}

int64_t cbi_s3lease_period(int64_t lease_ns)
{
	return lease_ns / 3;
}

int64_t cbi_s3lease_hold(int64_t lease_ns)
{
	return lease_ns - lease_ns / 6;
}

int64_t cbi_s3lease_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct cbi_s3lease {
	cbi_s3 *s;
	char key[1100];
	char what[700];
	cbi_s3lock lock;           /* our body (expires_ns: the last one written) */
	int64_t lease;
	int64_t sent;              /* mono: when the last successful create or renewal was sent */
	void (*on_lost)(void *, int, const char *);
	void *ud;
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop, lost, started;
	unsigned renewals;
	char why[900];
};

/* The lock is gone: remember why (once) and tell the caller. Lock not
 * held. */
static void lease_lost(cbi_s3lease *l, const char *fmt, const char *detail)
{
	char w[900];
	snprintf(w, sizeof w, fmt, l->what, detail);
	pthread_mutex_lock(&l->mu);
	int first = !l->lost;
	if (first) {
		l->lost = 1;
		cbi_strlcpy(l->why, w, sizeof l->why);
	}
	pthread_mutex_unlock(&l->mu);
	if (first && l->on_lost)
		l->on_lost(l->ud, -CBI_ELOCKED, w);
}

/* One renewal: 0 renewed, 1 lost (reported), -1 failed (try again). */
static int renew(cbi_s3lease *l)
{
	int64_t t = cbi_s3lease_mono_ns();
	pthread_mutex_lock(&l->mu);
	int64_t prev = l->sent;
	pthread_mutex_unlock(&l->mu);
	if (t >= prev + cbi_s3lease_hold(l->lease)) {
		lease_lost(l, "the lock of %s could not be renewed in time: %s", "its lease ran out");
		return 1;
	}
	char got[600], body[600];
	size_t gl = 0;
	cbi_error e;
	int rc = cbi_s3_get(l->s, l->key, 0, 0, got, sizeof got - 1, &gl, &e);
	if (rc == -ENOENT) {
		lease_lost(l, "the lock of %s was lost: %s", "its object was removed by another writer");
		return 1;
	}
	if (rc)
		return -1;
	got[gl] = 0;
	cbi_s3lock cur;
	if (cbi_s3lock_parse(got, &cur) || strcmp(cur.run, l->lock.run) || strcmp(cur.host, l->lock.host) ||
	    cur.pid != l->lock.pid) {
		char d[300];
		snprintf(d, sizeof d, "another writer (host %.100s, pid %ld) took it over", cur.host, cur.pid);
		lease_lost(l, "the lock of %s was lost: %s", d);
		return 1;
	}
	cbi_s3lock nl = l->lock;
	nl.expires_ns = cbi_wallclock_ns() + l->lease;
	int n = cbi_s3lock_body(body, sizeof body, &nl);
	if (n < 0 || cbi_s3_put(l->s, l->key, body, (size_t)n, 0, &e))
		return -1;
	/* written after the lease had run out: another writer may have taken
	 * the lock over in between, and this PUT replaced its object */
	if (cbi_s3lease_mono_ns() > prev + l->lease) {
		lease_lost(l, "the lock of %s could not be renewed in time: %s", "the renewal arrived after its lease");
		return 1;
	}
	pthread_mutex_lock(&l->mu);
	l->lock = nl;
	l->sent = t;
	l->renewals++;
	pthread_mutex_unlock(&l->mu);
	return 0;
}

static void *lease_thread(void *ud)
{
	cbi_s3lease *l = ud;
	int64_t period = cbi_s3lease_period(l->lease), wait = period;
	pthread_mutex_lock(&l->mu);
	for (;;) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t until = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + wait;
		ts.tv_sec = (time_t)(until / 1000000000LL);
		ts.tv_nsec = (long)(until % 1000000000LL);
		while (!l->stop && pthread_cond_timedwait(&l->cv, &l->mu, &ts) != ETIMEDOUT)
			;
		if (l->stop || l->lost)
			break;
		pthread_mutex_unlock(&l->mu);
		int r = renew(l);
		pthread_mutex_lock(&l->mu);
		if (r > 0)
			break;
		/* a failed renewal is tried again sooner: twice in each period */
		wait = r ? period / 2 : period;
	}
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

int cbi_s3lease_start(cbi_s3 *s, const char *key, const cbi_s3lock *lk, int64_t lease_ns, int64_t sent_mono_ns,
		      const char *what, void (*on_lost)(void *ud, int code, const char *why), void *ud,
		      cbi_s3lease **out, cbi_error *err)
{
	cbi_s3lease *l = calloc(1, sizeof *l);
	if (!l)
		return cbi_err(err, -ENOMEM, "out of memory");
	l->s = s;
	cbi_strlcpy(l->key, key, sizeof l->key);
	cbi_strlcpy(l->what, what, sizeof l->what);
	l->lock = *lk;
	l->lease = lease_ns;
	l->sent = sent_mono_ns;
	l->on_lost = on_lost;
	l->ud = ud;
	pthread_mutex_init(&l->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cv, &ca);
	pthread_condattr_destroy(&ca);
	int rc = pthread_create(&l->th, NULL, lease_thread, l);
	if (rc) {
		cbi_s3lease_stop(l);
		return cbi_err(err, -rc, "unable to start the lease renewal of %s: %s", what, strerror(rc));
	}
	l->started = 1;
	*out = l;
	return 0;
}

int cbi_s3lease_held(cbi_s3lease *l, cbi_error *err)
{
	if (!l)
		return 0;
	pthread_mutex_lock(&l->mu);
	int held = !l->lost && cbi_s3lease_mono_ns() < l->sent + cbi_s3lease_hold(l->lease);
	char why[900];
	if (l->lost)
		cbi_strlcpy(why, l->why, sizeof why);
	else
		snprintf(why, sizeof why, "the lock of %s could not be renewed in time: its lease ran out", l->what);
	pthread_mutex_unlock(&l->mu);
	return held ? 0 : cbi_err(err, -CBI_ELOCKED, "%s", why);
}

unsigned cbi_s3lease_renewals(cbi_s3lease *l)
{
	pthread_mutex_lock(&l->mu);
	unsigned n = l->renewals;
	pthread_mutex_unlock(&l->mu);
	return n;
}

void cbi_s3lease_stop(cbi_s3lease *l)
{
	if (!l)
		return;
	if (l->started) {
		pthread_mutex_lock(&l->mu);
		l->stop = 1;
		pthread_cond_broadcast(&l->cv);
		pthread_mutex_unlock(&l->mu);
		pthread_join(l->th, NULL);
	}
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->mu);
	free(l);
}
