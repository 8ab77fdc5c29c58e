/* dgpipe.c - a sequential consumer on a thread of its own (dgpipe.h): one
 * lock, a queue of handed-over ranges and a list of free buffers, at most
 * nbuf of each (a range holds its buffer). */
#define _GNU_SOURCE
#include "dgpipe.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

typedef struct dg_job {
	uint8_t *buf;
	size_t off, len;
} dg_job;

struct cbi_dgpipe {
	pthread_mutex_t mu;
	pthread_cond_t cv_job;  /* a range was handed over, or stop (the thread waits) */
	pthread_cond_t cv_back; /* a buffer came back (the caller waits) */
	pthread_t t;
	cbi_dgpipe_fn fn;
	void *ud;
	size_t nbuf, bufsz;
	uint8_t **bufs;  /* every buffer, for the check in put and for free */
	uint8_t **freel; /* free buffers: a stack */
	size_t nfree;
	dg_job *q; /* handed-over ranges: a ring of nbuf */
	size_t qhead, qlen;
	int busy; /* the thread is consuming a range */
	int stop;
	int err; /* the first error of fn, then nothing more is consumed */
};

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
		p->freel[p->nfree++] = j.buf;
		p->busy = 0;
		pthread_cond_signal(&p->cv_back);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void dg_release(cbi_dgpipe *p)
{
	for (size_t i = 0; p->bufs && i < p->nbuf; i++)
		free(p->bufs[i]);
	free(p->bufs);
	free(p->freel);
	free(p->q);
	free(p);
}

int cbi_dgpipe_new(size_t nbuf, size_t bufsz, cbi_dgpipe_fn fn, void *ud, cbi_dgpipe **out)
{
	if (nbuf < 2 || !bufsz || !fn)
		return -EINVAL;
	cbi_dgpipe *p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->fn = fn;
	p->ud = ud;
	p->nbuf = nbuf;
	p->bufsz = bufsz;
	p->bufs = calloc(nbuf, sizeof *p->bufs);
	p->freel = calloc(nbuf, sizeof *p->freel);
	p->q = calloc(nbuf, sizeof *p->q);
	if (!p->bufs || !p->freel || !p->q) {
		dg_release(p);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nbuf; i++) {
		if (!(p->bufs[i] = malloc(bufsz))) {
			dg_release(p);
			return -ENOMEM;
		}
		p->freel[p->nfree++] = p->bufs[i];
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv_job, NULL);
	pthread_cond_init(&p->cv_back, NULL);
	/* the thread starts with every signal blocked: a signal handler of the
	 * program keeps running in the threads it ran in before */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&p->t, NULL, dg_main, p);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		pthread_cond_destroy(&p->cv_back);
		pthread_cond_destroy(&p->cv_job);
		pthread_mutex_destroy(&p->mu);
		dg_release(p);
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
	int mine = 0;
	for (size_t i = 0; i < p->nbuf && !mine; i++)
		mine = p->bufs[i] == buf;
	if (!mine || off > p->bufsz || len > p->bufsz - off)
		return -EINVAL;
	pthread_mutex_lock(&p->mu);
	if (p->nfree + p->qlen + (size_t)p->busy >= p->nbuf) { /* not the caller's: handed over twice */
		pthread_mutex_unlock(&p->mu);
		return -EINVAL;
	}
	int rc = p->err;
	if (len && !rc) {
		p->q[(p->qhead + p->qlen) % p->nbuf] = (dg_job){ buf, off, len };
		p->qlen++;
		pthread_cond_signal(&p->cv_job);
	} else {
		p->freel[p->nfree++] = buf;
		pthread_cond_signal(&p->cv_back);
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
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_signal(&p->cv_job);
	pthread_mutex_unlock(&p->mu);
	pthread_join(p->t, NULL);
	pthread_cond_destroy(&p->cv_back);
	pthread_cond_destroy(&p->cv_job);
	pthread_mutex_destroy(&p->mu);
	dg_release(p);
}
