/* pool.c - the ordered worker pool (pool.h): plan and consume in the calling
 * thread, work in worker threads, one lock and two condition variables. */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "util.h"

#define NO_ERR UINT64_MAX

enum { SL_FREE, SL_PLANNED, SL_DONE };

typedef struct pool {
	const cbi_pool_cfg *c;
	pthread_mutex_t mu;
	pthread_cond_t cv_work;  /* an item was planned, or stop (workers wait) */
	pthread_cond_t cv_done;  /* an item is done (the calling thread waits) */
	uint8_t *state;          /* SL_* per slot */
	uint8_t *nowork;         /* per slot: the item skips work */
	uint64_t planned;        /* items 0 .. planned - 1 are planned, */
	uint64_t claimed;        /* ... 0 .. claimed - 1 taken by a worker */
	int stop;                /* workers leave */
	uint64_t err_item;       /* the first failed item in plan order, or NO_ERR */
	int err_rc;
	cbi_error err;
} pool;

typedef struct worker {
	pool *p;
	void *ws;
	pthread_t t;
} worker;

int cbi_worker_count(int requested, uint64_t max_by_memory)
{
	long n = requested > 0 ? requested : sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t cap = max_by_memory < CBI_MAX_WORKERS ? max_by_memory : CBI_MAX_WORKERS;
	if (n > (long)cap)
		n = (long)cap;
	return n < 1 ? 1 : (int)n;
}

void cbi_pool_size(int requested, uint64_t unit_bytes, uint32_t max_units, unsigned slots_per_worker,
		   unsigned extra_slots, uint64_t total_units, cbi_pool_dims *out)
{
	if (!unit_bytes)
		unit_bytes = 1;
	if (!slots_per_worker)
		slots_per_worker = 1;
	if (!max_units)
		max_units = 1;
	/* the most workers whose slots, of one unit each, fit the budget */
	uint64_t fit = CBI_WORK_BUDGET / unit_bytes;
	uint64_t by_mem = fit > extra_slots + slots_per_worker ? (fit - extra_slots) / slots_per_worker : 1;
	int threads = cbi_worker_count(requested, by_mem);
	uint64_t nslots = (uint64_t)slots_per_worker * (uint64_t)threads + extra_slots;
	uint64_t per = CBI_WORK_BUDGET / (nslots * unit_bytes);
	out->per_item = (uint32_t)CBI_MAX(1u, CBI_MIN((uint64_t)max_units, per));
	if (total_units) {
		/* no more workers than items (the slots shrink with them) */
		uint64_t items = (total_units + out->per_item - 1) / out->per_item;
		if ((uint64_t)threads > CBI_MAX(items, 1))
			threads = (int)CBI_MAX(items, 1);
	}
	out->threads = threads;
	out->nslots = slots_per_worker * (unsigned)threads + extra_slots;
	if (!out->nslots)
		out->nslots = 1;
}

/* With p->mu held: item n failed with rc and e; the earliest failure in plan
 * order wins. */
static void set_error(pool *p, uint64_t n, int rc, const cbi_error *e)
{
	if (n >= p->err_item)
		return;
	p->err_item = n;
	p->err_rc = rc;
	if (e && e->code == rc)
		p->err = *e;
	else
		cbi_err(&p->err, rc, "%s", e && e->msg[0] ? e->msg : cbi_strerror(rc));
}

static void fail(pool *p, uint64_t n, int rc, const cbi_error *e)
{
	pthread_mutex_lock(&p->mu);
	set_error(p, n, rc, e);
	pthread_mutex_unlock(&p->mu);
}

/* With p->mu held: keep the claim counter off items that skip work, so that
 * items claimed..planned - 1 start with one a worker must take (an item
 * that skips work may then be consumed, and its slot planned again, without
 * a worker ever looking at it). */
static void skip_nowork(pool *p)
{
	while (p->claimed < p->planned && p->nowork[p->claimed % p->c->nslots])
		p->claimed++;
}

/* Workers take the items in plan order; an item after a failed one is only
 * marked done (nobody consumes it). */
static void *worker_main(void *arg)
{
	worker *w = arg;
	pool *p = w->p;
	const cbi_pool_cfg *c = p->c;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && p->claimed == p->planned)
			pthread_cond_wait(&p->cv_work, &p->mu);
		if (p->stop)
			break;
		uint64_t n = p->claimed++;
		skip_nowork(p);
		unsigned slot = (unsigned)(n % c->nslots);
		int skip = n >= p->err_item;
		pthread_mutex_unlock(&p->mu);
		cbi_error e;
		e.code = 0;
		e.msg[0] = 0;
		int rc = skip ? 0 : c->work(c->ud, w->ws, slot, &e);
		pthread_mutex_lock(&p->mu);
		if (rc)
			set_error(p, n, rc < 0 ? rc : -EIO, &e);
		p->state[slot] = SL_DONE;
		pthread_cond_broadcast(&p->cv_done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Plan items into the free slots, up to nslots in flight. */
static void plan_ahead(pool *p, uint64_t consumed, int *plan_done)
{
	const cbi_pool_cfg *c = p->c;
	while (!*plan_done && p->planned - consumed < c->nslots) {
		pthread_mutex_lock(&p->mu);
		uint64_t n = p->planned;
		int stop = n >= p->err_item;
		pthread_mutex_unlock(&p->mu);
		if (stop)
			break;
		unsigned slot = (unsigned)(n % c->nslots);
		cbi_error e;
		e.code = 0;
		e.msg[0] = 0;
		int rc = c->plan(c->ud, slot, &e);
		if (rc == CBI_POOL_DONE || rc < 0) {
			if (rc < 0)
				fail(p, n, rc, &e);
			*plan_done = 1;
			break;
		}
		pthread_mutex_lock(&p->mu);
		p->nowork[slot] = rc == CBI_POOL_NOWORK;
		p->state[slot] = p->nowork[slot] ? SL_DONE : SL_PLANNED;
		p->planned = n + 1;
		skip_nowork(p);
		if (!p->nowork[slot])
			pthread_cond_signal(&p->cv_work);
		pthread_mutex_unlock(&p->mu);
	}
}

/* The calling thread's part: plan ahead, consume in plan order, until every
 * item is consumed or the first failed one (in plan order) is reached. */
static void run_items(pool *p)
{
	const cbi_pool_cfg *c = p->c;
	int plan_done = 0;
	for (uint64_t consumed = 0;; consumed++) {
		plan_ahead(p, consumed, &plan_done);
		unsigned slot = (unsigned)(consumed % c->nslots);
		pthread_mutex_lock(&p->mu);
		int more = consumed < p->planned && consumed < p->err_item;
		while (more && p->state[slot] != SL_DONE)
			pthread_cond_wait(&p->cv_done, &p->mu);
		more = more && consumed < p->err_item;
		pthread_mutex_unlock(&p->mu);
		if (!more)
			return;
		cbi_error e;
		e.code = 0;
		e.msg[0] = 0;
		int r = c->consume(c->ud, slot, &e);
		pthread_mutex_lock(&p->mu);
		if (r)
			set_error(p, consumed, r < 0 ? r : -EIO, &e);
		p->state[slot] = SL_FREE;
		pthread_mutex_unlock(&p->mu);
		if (r)
			return;
	}
}

int cbi_pool_run(const cbi_pool_cfg *c, cbi_error *err)
{
	pool p;
	memset(&p, 0, sizeof p);
	p.c = c;
	p.err_item = NO_ERR;
	if (c->threads < 1 || c->nslots < 1 || !c->plan || !c->work || !c->consume)
		return cbi_err(err, -EINVAL, "worker pool: invalid configuration");
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv_work, NULL);
	pthread_cond_init(&p.cv_done, NULL);
	int rc = 0, nwk = 0, nws = 0;
	worker *wk = calloc((size_t)c->threads, sizeof *wk);
	p.state = calloc(c->nslots, 1);
	p.nowork = calloc(c->nslots, 1);
	if (!wk || !p.state || !p.nowork) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	for (; nws < c->threads; nws++) {
		wk[nws].p = &p;
		if (c->init && (rc = c->init(c->ud, &wk[nws].ws, err)))
			goto end;
	}
	for (; nwk < c->threads; nwk++)
		if (pthread_create(&wk[nwk].t, NULL, worker_main, &wk[nwk]))
			break;
	if (!nwk) {
		rc = cbi_err(err, -EAGAIN, "unable to start a worker thread");
		goto end;
	}
	run_items(&p);
	pthread_mutex_lock(&p.mu);
	if (p.err_item != NO_ERR) {
		rc = p.err_rc;
		if (err)
			*err = p.err;
	}
	pthread_mutex_unlock(&p.mu);
end:
	pthread_mutex_lock(&p.mu);
	p.stop = 1;
	pthread_cond_broadcast(&p.cv_work);
	pthread_mutex_unlock(&p.mu);
	for (int k = 0; k < nwk; k++)
		pthread_join(wk[k].t, NULL);
	for (int k = 0; wk && c->fini && k < nws; k++)
		c->fini(c->ud, wk[k].ws);
	free(wk);
	free(p.state);
	free(p.nowork);
	pthread_mutex_destroy(&p.mu);
	pthread_cond_destroy(&p.cv_work);
	pthread_cond_destroy(&p.cv_done);
	return rc;
}
