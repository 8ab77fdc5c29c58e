/* flusher.c - fdatasync on a thread of its own, a step at a time
 * (flusher.h). */
#define _GNU_SOURCE
#include "flusher.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "util.h"

struct cbi_flusher {
	pthread_t t;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int fd;
	uint64_t step, since; /* since: bytes written since the last request (the writer's alone) */
	int pending;          /* a flush is asked for */
	int stop;
	int err;              /* the first failure (-errno) */
	unsigned count;       /* fdatasyncs made */
};

static void *flusher_main(void *arg)
{
	cbi_flusher *f = arg;
	pthread_mutex_lock(&f->mu);
	for (;;) {
		while (!f->pending && !f->stop)
			pthread_cond_wait(&f->cv, &f->mu);
		if (!f->pending)
			break; /* stopped, nothing asked */
		f->pending = 0;
		pthread_mutex_unlock(&f->mu);
		int rc = fdatasync(f->fd) < 0 ? -errno : 0;
		pthread_mutex_lock(&f->mu);
		f->count++;
		if (rc && !f->err)
			f->err = rc;
	}
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

cbi_flusher *cbi_flusher_start(int fd, uint64_t step)
{
	cbi_flusher *f = calloc(1, sizeof *f);
	if (!f)
		return NULL;
	f->fd = fd;
	f->step = step ? step : 1;
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->cv, NULL);
	if (cbi_thread_start_quiet(&f->t, flusher_main, f)) {
		pthread_cond_destroy(&f->cv);
		pthread_mutex_destroy(&f->mu);
		free(f);
		return NULL;
	}
	return f;
}

void cbi_flusher_wrote(cbi_flusher *f, uint64_t n)
{
	if (!f || (f->since += n) < f->step)
		return;
	f->since = 0;
	pthread_mutex_lock(&f->mu);
	f->pending = 1; /* one flush covers every step asked for while one ran */
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
}

int cbi_flusher_error(cbi_flusher *f)
{
	if (!f)
		return 0;
	pthread_mutex_lock(&f->mu);
	int rc = f->err;
	pthread_mutex_unlock(&f->mu);
	return rc;
}

int cbi_flusher_stop(cbi_flusher *f)
{
	if (!f)
		return 0;
	pthread_mutex_lock(&f->mu);
	f->stop = 1;
	f->pending = 0; /* the writer's own sync follows */
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->t, NULL);
	int rc = f->err;
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	free(f);
	return rc;
}

unsigned cbi_flusher_count(cbi_flusher *f)
{
	if (!f)
		return 0;
	pthread_mutex_lock(&f->mu);
	unsigned n = f->count;
	pthread_mutex_unlock(&f->mu);
	return n;
}
