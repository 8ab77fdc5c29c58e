/* dgpipe.c - a sequential consumer on a thread of its own (dgpipe.h): one
 * lock, a queue of handed-over ranges and a list of free buffers, at most
 * nbuf of each (a range holds its buffer). */
#define _GNU_SOURCE
#include "dgpipe.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "util.h"

typedef struct dg_job {
	uint8_t *buf;
	size_t off, len;
	uint64_t pos; /* the writer's: where buf[0, len) goes */
} dg_job;

/* One consumer's thread and queue (a ring of nbuf ranges). */
typedef struct dg_stage {
	struct cbi_dgpipe *p;  /* the pipe it belongs to (its thread's argument is the stage) */
	int writer;            /* 1: the writer stage (wfn), 0: the digest (fn) */
	pthread_t t;
	pthread_cond_t cv_job; /* a range was handed over, or stop (the thread waits) */
	dg_job *q;
	size_t qhead, qlen;
	int busy; /* the thread is consuming a range */
	int started;
} dg_stage;

struct cbi_dgpipe {
	pthread_mutex_t mu;
	pthread_cond_t cv_back; /* a buffer came back or a range was consumed (the caller waits) */
	cbi_dgpipe_fn fn;
	void *ud;
	cbi_dgpipe_wfn wfn; /* NULL: no writer stage */
	void *wud;
	size_t nbuf, bufsz;
	uint8_t **bufs;  /* every buffer, for the check in put and for free */
	uint8_t *refs;   /* per buffer: the stages still holding it */
	uint8_t **freel; /* free buffers: a stack */
	size_t nfree;
	dg_stage st[2];  /* 0: the digest, 1: the writer */
	int stop;
	int err; /* the first error of a stage, then nothing more is consumed */
};

static size_t dg_index(const cbi_dgpipe *p, const uint8_t *buf)
{
	size_t i = 0;
	while (i < p->nbuf && p->bufs[i] != buf)
		i++;
	return i;
}

/* A stage let go of buf (the lock held): free once no stage holds it. */
static void dg_unref(cbi_dgpipe *p, uint8_t *buf)
{
	size_t i = dg_index(p, buf);
	if (i < p->nbuf && p->refs[i] && --p->refs[i] == 0)
		p->freel[p->nfree++] = buf;
}

static void *dg_main(void *arg)
{
	dg_stage *s = arg;
	cbi_dgpipe *p = s->p;
	int writer = s->writer;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!s->qlen && !p->stop)
			pthread_cond_wait(&s->cv_job, &p->mu);
		if (p->stop)
			break;
		dg_job j = s->q[s->qhead];
		s->qhead = (s->qhead + 1) % p->nbuf;
		s->qlen--;
		s->busy = 1;
		int skip = p->err != 0;
		pthread_mutex_unlock(&p->mu);
		int rc = skip	  ? 0
			 : writer ? p->wfn(p->wud, j.buf, j.len, j.pos)
				  : p->fn(p->ud, j.buf + j.off, j.len);
		pthread_mutex_lock(&p->mu);
		if (rc < 0 && !p->err)
			p->err = rc;
		dg_unref(p, j.buf);
		s->busy = 0;
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
	free(p->st[0].q);
	free(p->st[1].q);
	free(p);
}

/* Stop the stages' threads that run, join them, free everything. */
static void dg_stop(cbi_dgpipe *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	for (int k = 0; k < 2; k++)
		pthread_cond_signal(&p->st[k].cv_job);
	pthread_mutex_unlock(&p->mu);
	for (int k = 0; k < 2; k++) {
		if (p->st[k].started)
			pthread_join(p->st[k].t, NULL);
		pthread_cond_destroy(&p->st[k].cv_job);
	}
	pthread_cond_destroy(&p->cv_back);
	pthread_mutex_destroy(&p->mu);
	dg_release(p);
}

int cbi_dgpipe_new(size_t nbuf, size_t bufsz, cbi_dgpipe_fn fn, void *ud, cbi_dgpipe **out)
{
	return cbi_dgpipe_new_w(nbuf, bufsz, fn, ud, NULL, NULL, out);
}

int cbi_dgpipe_new_w(size_t nbuf, size_t bufsz, cbi_dgpipe_fn fn, void *ud, cbi_dgpipe_wfn wfn, void *wud,
		     cbi_dgpipe **out)
{
	if (nbuf < 2 || nbuf > 255 || !bufsz || !fn)
		return -EINVAL;
	cbi_dgpipe *p = calloc(1, sizeof *p);
	if (!p)
		return -ENOMEM;
	p->fn = fn;
	p->ud = ud;
	p->wfn = wfn;
	p->wud = wud;
	p->nbuf = nbuf;
	p->bufsz = bufsz;
	p->bufs = calloc(nbuf, sizeof *p->bufs);
	p->refs = calloc(nbuf, 1);
	p->freel = calloc(nbuf, sizeof *p->freel);
	p->st[0].q = calloc(nbuf, sizeof(dg_job));
	p->st[1].q = calloc(nbuf, sizeof(dg_job));
	if (!p->bufs || !p->refs || !p->freel || !p->st[0].q || !p->st[1].q) {
		dg_release(p);
		return -ENOMEM;
	}
	/* aligned for O_DIRECT writes (the writer stage of a sealed file) */
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
	for (int k = 0; k < 2; k++) {
		p->st[k].p = p;
		p->st[k].writer = k;
		pthread_cond_init(&p->st[k].cv_job, NULL);
	}
	/* every signal blocked in the threads: the program's handlers keep
	 * running in the threads they ran in before */
	int rc = 0;
	for (int k = 0; k < (wfn ? 2 : 1) && !rc; k++)
		if (!(rc = cbi_thread_start_quiet(&p->st[k].t, dg_main, &p->st[k])))
			p->st[k].started = 1;
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
	return cbi_dgpipe_put_w(p, buf, off, len, 0, 0);
}

static void dg_queue(cbi_dgpipe *p, int k, dg_job j)
{
	dg_stage *s = &p->st[k];
	s->q[(s->qhead + s->qlen) % p->nbuf] = j;
	s->qlen++;
	p->refs[dg_index(p, j.buf)]++;
	pthread_cond_signal(&s->cv_job);
}

int cbi_dgpipe_put_w(cbi_dgpipe *p, uint8_t *buf, size_t off, size_t len, size_t wlen, uint64_t wpos)
{
	size_t i = dg_index(p, buf);
	if (i == p->nbuf || off > p->bufsz || len > p->bufsz - off || wlen > p->bufsz || (wlen && !p->wfn))
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
	if (len && !rc)
		dg_queue(p, 0, (dg_job){ buf, off, len, 0 });
	if (wlen && !rc)
		dg_queue(p, 1, (dg_job){ buf, 0, wlen, wpos });
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
	while (p->st[0].qlen || p->st[0].busy || p->st[1].qlen || p->st[1].busy)
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
