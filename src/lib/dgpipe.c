/* dgpipe.c - a sequential consumer on a thread of its own (dgpipe.h): one
 * lock, a queue of handed-over ranges and a list of free buffers, at most
 * nbuf of each (a range holds its buffer until consumed). */
#define _GNU_SOURCE
#include "dgpipe.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "util.h"

typedef struct dg_job {
	uint8_t *buf;
	size_t off, len;
} dg_job;

struct cbi_dgpipe {
	pthread_mutex_t mu;
	pthread_cond_t cv_back; /* a buffer came back or a range was consumed (the caller waits) */
	pthread_cond_t cv_job;  /* a range was handed over, or stop (the thread waits) */
	pthread_t t;
	int started;
	cbi_dgpipe_fn fn;
	void *ud;
	size_t nbuf, bufsz;
	uint8_t **bufs;  /* every buffer, for the check in put and for free */
	uint8_t *refs;   /* per buffer: 1 while its range waits to be consumed */
	uint8_t **freel; /* free buffers: a stack */
	size_t nfree;
	dg_job *q;       /* ranges handed over: a ring of nbuf */
	size_t qhead, qlen;
	int busy; /* the thread is consuming a range */
	int stop;
	int err;  /* the first error of fn, then nothing more is consumed */
};

static size_t dg_index(const cbi_dgpipe *p, const uint8_t *buf)
{
	size_t i = 0;
	while (i < p->nbuf && p->bufs[i] != buf)
		i++;
	return i;
}

/* The thread let go of buf (the lock held): free again. */
static void dg_unref(cbi_dgpipe *p, uint8_t *buf)
{
	size_t i = dg_index(p, buf);
	if (i < p->nbuf && p->refs[i] && --p->refs[i] == 0)
		p->freel[p->nfree++] = buf;
}

static void *dg_main(void *arg)
{
	cbi_dgpipe *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->qlen && !p->stop)
			pthread_cond_wait(&p->cv_job, &p->mu);
		if (p->stop)
			break;
		dg_job j = p->q[p->qhead];
		p->qhead = (p->qhead + 1) % p->nbuf;
		p->qlen--;
		p->busy = 1;
		int skip = p->err != 0;
		pthread_mutex_unlock(&p->mu);
		int rc = skip ? 0 : p->fn(p->ud, j.buf + j.off, j.len);
		pthread_mutex_lock(&p->mu);
		if (rc < 0 && !p->err)
			p->err = rc;
		dg_unref(p, j.buf);
		p->busy = 0;
		pthread_cond_broadcast(&p->cv_back);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void dg_release(cbi_dgpipe *p)
{
	for (size_t i = 0; p->bufs && i < p->nbuf; i++)
		free(p->bufs[i]);
	free(p->bufs);
	free(p->refs);
	free(p->freel);
	free(p->q);
	free(p);
}

/* Stop the thread if it runs, join it, free everything. */
static void dg_stop(cbi_dgpipe *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_signal(&p->cv_job);
	pthread_mutex_unlock(&p->mu);
	if (p->started)
		pthread_join(p->t, NULL);
	pthread_cond_destroy(&p->cv_job);
	pthread_cond_destroy(&p->cv_back);
	pthread_mutex_destroy(&p->mu);
	dg_release(p);
}

int cbi_dgpipe_new(size_t nbuf, size_t bufsz, cbi_dgpipe_fn fn, void *ud, cbi_dgpipe **out)
{
	if (nbuf < 2 || nbuf > 255 || !bufsz || !fn)
		return -EINVAL;
	cbi_dgpipe *p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->fn = fn;
	p->ud = ud;
	p->nbuf = nbuf;
	p->bufsz = bufsz;
	p->bufs = calloc(nbuf, sizeof *p->bufs);
	p->refs = calloc(nbuf, 1);
	p->freel = calloc(nbuf, sizeof *p->freel);
	p->q = calloc(nbuf, sizeof(dg_job));
	if (!p->bufs || !p->refs || !p->freel || !p->q) {
		dg_release(p);
		return -ENOMEM;
	}
	/* aligned: the caller may write them out with O_DIRECT */
	for (size_t i = 0; i < nbuf; i++) {
		if (posix_memalign((void **)&p->bufs[i], CBI_DGPIPE_ALIGN, bufsz)) {
			p->bufs[i] = NULL;
			dg_release(p);
			return -ENOMEM;
		}
		p->freel[p->nfree++] = p->bufs[i];
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv_back, NULL);
	pthread_cond_init(&p->cv_job, NULL);
	/* every signal blocked in the thread: the program's handlers keep
	 * running in the threads they ran in before */
	int rc = cbi_thread_start_quiet(&p->t, dg_main, p);
	if (!rc)
		p->started = 1;
	if (rc) {
		dg_stop(p);
		return -rc;
	}
	*out = p;
	return 0;
}

uint8_t *cbi_dgpipe_get(cbi_dgpipe *p)
{
	pthread_mutex_lock(&p->mu);
	while (!p->nfree)
		pthread_cond_wait(&p->cv_back, &p->mu);
	uint8_t *b = p->freel[--p->nfree];
	pthread_mutex_unlock(&p->mu);
	return b;
}

int cbi_dgpipe_put(cbi_dgpipe *p, uint8_t *buf, size_t off, size_t len)
{
	size_t i = dg_index(p, buf);
	if (i == p->nbuf || off > p->bufsz || len > p->bufsz - off)
		return -EINVAL;
	pthread_mutex_lock(&p->mu);
	int held = p->refs[i] != 0;
	for (size_t f = 0; f < p->nfree && !held; f++)
		held = p->freel[f] == buf;
	if (held) { /* not the caller's: handed over twice */
		pthread_mutex_unlock(&p->mu);
		return -EINVAL;
	}
	int rc = p->err;
	if (len && !rc) {
		p->q[(p->qhead + p->qlen) % p->nbuf] = (dg_job){ buf, off, len };
		p->qlen++;
		p->refs[i] = 1;
		pthread_cond_signal(&p->cv_job);
	}
	if (!p->refs[i]) {
		p->freel[p->nfree++] = buf;
		pthread_cond_broadcast(&p->cv_back);
	}
	pthread_mutex_unlock(&p->mu);
	return rc;
}

int cbi_dgpipe_drain(cbi_dgpipe *p)
{
	pthread_mutex_lock(&p->mu);
	while (p->qlen || p->busy)
		pthread_cond_wait(&p->cv_back, &p->mu);
	int rc = p->err;
	pthread_mutex_unlock(&p->mu);
	return rc;
}

void cbi_dgpipe_free(cbi_dgpipe *p)
{
	if (p)
		dg_stop(p);
}
