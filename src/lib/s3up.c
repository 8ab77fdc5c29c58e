/* s3up.c - an object streamed to S3 as it is made (s3up.h).
 *
 * The writer's thread fills one part buffer at a time; a full one goes on
 * a queue that jobs threads take parts from, each uploading one part at a
 * time (cbi_s3_mpu_part, on the client's pool of connections), and
 * returns its buffer to the free list. Buffers are allocated on first use,
 * at most nbuf; with none free the writer waits, which holds the read and
 * compress pipeline back to the speed of the uploads. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "s3up.h"

#define UP_THREADS_MAX 8
#define UP_BUDGET_DEFAULT (96ull << 20)

typedef struct up_part {
	uint8_t *p;
	size_t n;
	uint32_t num; /* from 1 */
} up_part;

struct cbi_s3up {
	cbi_s3 *s;
	char key[1100];
	char uid[256];
	int begun, mpu, done;       /* begin() called; the multipart upload exists; finished or aborted */
	uint64_t part, budget;
	int jobs;
	unsigned nbuf, nalloc;      /* buffers allowed, allocated */
	uint8_t **all;              /* the allocated ones (to free) */
	uint8_t **freel;            /* free ones */
	unsigned nfree;
	up_part *q;                 /* ring of full parts, at most nbuf */
	unsigned qhead, qlen;
	uint8_t *cur;               /* the buffer being filled, curn bytes */
	size_t curn;
	uint32_t nparts, maxparts;
	char (*etags)[CBI_S3_ETAG_MAX];
	pthread_t th[UP_THREADS_MAX];
	int nth;
	pthread_mutex_t mu;
	pthread_cond_t cv_work, cv_free;
	int closing;                /* no more parts: threads end when the queue is empty */
	int rc;                     /* the first failure */
	cbi_error err;
	uint64_t bytes;
};

uint64_t cbi_s3up_part_size(uint64_t max_size, uint64_t want)
{
	uint64_t part = want < CBI_S3UP_MIN_PART ? CBI_S3UP_MIN_PART : want;
	if (max_size / CBI_S3UP_MAX_PARTS < part)
		return part; /* 10000 parts of part hold more than max_size */
	/* the smallest whole MiB m with 10000 * m >= max_size */
	uint64_t per = (max_size + CBI_S3UP_MAX_PARTS - 1) / CBI_S3UP_MAX_PARTS;
	uint64_t mib = (per + (1 << 20) - 1) >> 20;
	return mib << 20 > part ? mib << 20 : part;
}

unsigned cbi_s3up_buffers(uint64_t part, unsigned jobs, uint64_t budget)
{
	uint64_t n = (uint64_t)jobs + 1, fit = part ? budget / part : n;
	if (fit < n)
		n = fit;
	return n < 2 ? 2 : (unsigned)n;
}

static uint64_t env_mib(const char *name, uint64_t def)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return def;
	char *e;
	unsigned long long x = strtoull(v, &e, 10);
	return *e || !x || x > (1ull << 20) ? def : (uint64_t)x << 20;
}

int cbi_s3up_new(cbi_s3 *s, cbi_s3up **out, cbi_error *err)
{
	cbi_s3up *u = calloc(1, sizeof *u);
	if (!u)
		return cbi_err(err, -ENOMEM, "out of memory");
	u->s = s;
	cbi_s3_tuning(s, &u->jobs, &u->part);
	if (u->jobs > UP_THREADS_MAX)
		u->jobs = UP_THREADS_MAX;
	if (u->jobs < 1)
		u->jobs = 1;
	u->budget = env_mib("CBIMG_S3_UPLOAD_MIB", UP_BUDGET_DEFAULT);
	pthread_mutex_init(&u->mu, NULL);
	pthread_cond_init(&u->cv_work, NULL);
	pthread_cond_init(&u->cv_free, NULL);
	*out = u;
	return 0;
}

int cbi_s3up_begin(cbi_s3up *u, const char *key, uint64_t max_size, cbi_error *err)
{
	if (u->begun)
		return cbi_err(err, -EINVAL, "'%s': upload begun twice", key);
	if (strlen(key) >= sizeof u->key)
		return cbi_err(err, -ENAMETOOLONG, "S3 key too long: '%s'", key);
	cbi_strlcpy(u->key, key, sizeof u->key);
	u->part = cbi_s3up_part_size(max_size, u->part);
	u->nbuf = cbi_s3up_buffers(u->part, (unsigned)u->jobs, u->budget);
	u->maxparts = (uint32_t)CBI_MIN((max_size + u->part - 1) / u->part + 1, (uint64_t)CBI_S3UP_MAX_PARTS);
	u->all = calloc(u->nbuf, sizeof *u->all);
	u->freel = calloc(u->nbuf, sizeof *u->freel);
	u->q = calloc(u->nbuf, sizeof *u->q);
	u->etags = calloc(u->maxparts, sizeof *u->etags);
	if (!u->all || !u->freel || !u->q || !u->etags)
		return cbi_err(err, -ENOMEM, "out of memory");
	u->begun = 1;
	return 0;
}

/* The first failure wins; everyone waiting wakes up. Lock held. */
static void fail_locked(cbi_s3up *u, int rc, const cbi_error *e)
{
	if (!u->rc) {
		u->rc = rc;
		if (e)
			u->err = *e;
		else
			cbi_err(&u->err, rc, "s3://%s/%s: upload failed: %s", cbi_s3_bucket(u->s), u->key,
				cbi_strerror(rc));
	}
	pthread_cond_broadcast(&u->cv_work);
	pthread_cond_broadcast(&u->cv_free);
}

static void *up_thread(void *ud)
{
	cbi_s3up *u = ud;
	pthread_mutex_lock(&u->mu);
	for (;;) {
		while (!u->qlen && !u->closing && !u->rc)
			pthread_cond_wait(&u->cv_work, &u->mu);
		if (u->rc || !u->qlen)
			break; /* failed, or closing with nothing left */
		up_part pt = u->q[u->qhead];
		u->qhead = (u->qhead + 1) % u->nbuf;
		u->qlen--;
		pthread_mutex_unlock(&u->mu);
		char etag[CBI_S3_ETAG_MAX];
		cbi_error e;
		int rc = cbi_s3_mpu_part(u->s, u->key, u->uid, pt.num, pt.p, pt.n, etag, &e);
		pthread_mutex_lock(&u->mu);
		if (rc)
			fail_locked(u, rc, &e);
		else
			memcpy(u->etags[pt.num - 1], etag, sizeof etag);
		u->freel[u->nfree++] = pt.p;
		pthread_cond_signal(&u->cv_free);
	}
	pthread_mutex_unlock(&u->mu);
	return NULL;
}

/* Queue the current buffer as the next part (the writer's thread): the
 * upload is created and the threads started with the first one. */
static int submit(cbi_s3up *u)
{
	int rc;
	cbi_error e;
	if (!u->mpu) {
		if ((rc = cbi_s3_mpu_begin(u->s, u->key, u->uid, sizeof u->uid, &e))) {
			pthread_mutex_lock(&u->mu);
			fail_locked(u, rc, &e);
			pthread_mutex_unlock(&u->mu);
			return rc;
		}
		u->mpu = 1;
		for (int i = 0; i < u->jobs; i++)
			if (!pthread_create(&u->th[u->nth], NULL, up_thread, u))
				u->nth++;
		if (!u->nth) {
			pthread_mutex_lock(&u->mu);
			fail_locked(u, -EAGAIN, NULL);
			pthread_mutex_unlock(&u->mu);
			return -EAGAIN;
		}
	}
	pthread_mutex_lock(&u->mu);
	if (!u->rc && u->nparts >= u->maxparts) {
		cbi_err(&e, -EFBIG, "s3://%s/%s: larger than its bound (%u parts of %llu bytes)", cbi_s3_bucket(u->s),
			u->key, u->maxparts, (unsigned long long)u->part);
		fail_locked(u, -EFBIG, &e);
	}
	if ((rc = u->rc)) {
		pthread_mutex_unlock(&u->mu);
		return rc;
	}
	/* the ring holds every buffer: it never overflows */
	u->q[(u->qhead + u->qlen) % u->nbuf] = (up_part){ u->cur, u->curn, ++u->nparts };
	u->qlen++;
	u->cur = NULL;
	u->curn = 0;
	pthread_cond_signal(&u->cv_work);
	pthread_mutex_unlock(&u->mu);
	return 0;
}

/* A buffer to fill: a free one, a new one while fewer than nbuf exist,
 * else wait for an upload to return one. */
static int take_buffer(cbi_s3up *u)
{
	pthread_mutex_lock(&u->mu);
	while (!u->nfree && u->nalloc == u->nbuf && !u->rc)
		pthread_cond_wait(&u->cv_free, &u->mu);
	int rc = u->rc;
	if (!rc && u->nfree)
		u->cur = u->freel[--u->nfree];
	pthread_mutex_unlock(&u->mu);
	if (rc || u->cur)
		return rc;
	/* 2 MiB-aligned, and transparent huge pages asked for: a part buffer is
	 * first touched by the copy into it, and 4 KiB page faults on tens of
	 * MiB cost more than the copy itself (perf, bench/RESULTS.md) */
	void *v = NULL;
	uint8_t *p = posix_memalign(&v, 2u << 20, (size_t)u->part) ? NULL : v;
#ifdef MADV_HUGEPAGE
	if (p)
		madvise(p, (size_t)u->part, MADV_HUGEPAGE);
#endif
	if (!p) {
		pthread_mutex_lock(&u->mu);
		fail_locked(u, -ENOMEM, NULL);
		pthread_mutex_unlock(&u->mu);
		return -ENOMEM;
	}
	u->all[u->nalloc++] = p; /* only this thread allocates */
	u->cur = p;
	return 0;
}

int cbi_s3up_write(void *ud, const void *buf, size_t len)
{
	cbi_s3up *u = ud;
	const uint8_t *p = buf;
	int rc;
	if (!u->begun || u->done)
		return -EINVAL;
	pthread_mutex_lock(&u->mu);
	rc = u->rc;
	pthread_mutex_unlock(&u->mu);
	if (rc)
		return rc;
	while (len) {
		if (!u->cur && (rc = take_buffer(u)))
			return rc;
		size_t n = (size_t)CBI_MIN((uint64_t)len, u->part - u->curn);
		memcpy(u->cur + u->curn, p, n);
		u->curn += n;
		u->bytes += n;
		p += n;
		len -= n;
		if (u->curn == u->part && (rc = submit(u)))
			return rc;
	}
	return 0;
}

/* Let the threads end (after the parts queued, or at once after a
 * failure) and wait for them. */
static void join_all(cbi_s3up *u)
{
	pthread_mutex_lock(&u->mu);
	u->closing = 1;
	pthread_cond_broadcast(&u->cv_work);
	pthread_mutex_unlock(&u->mu);
	for (int i = 0; i < u->nth; i++)
		pthread_join(u->th[i], NULL);
	u->nth = 0;
}

static void abort_upload(cbi_s3up *u)
{
	pthread_mutex_lock(&u->mu);
	if (!u->rc)
		fail_locked(u, -ECANCELED, NULL);
	pthread_mutex_unlock(&u->mu);
	join_all(u);
	if (u->mpu && !u->done) {
		cbi_error e;
		cbi_s3_abort_upload(u->s, u->key, u->uid, &e); /* best effort: the job's next run aborts leftovers */
	}
	u->done = 1;
}

int cbi_s3up_finish(cbi_s3up *u, cbi_error *err)
{
	int rc = 0;
	cbi_error e;
	if (!u->begun || u->done)
		return cbi_err(err, -EINVAL, "upload not begun or already finished");
	if (!u->mpu) {
		/* it fits one part: one create-only PUT */
		pthread_mutex_lock(&u->mu);
		rc = u->rc;
		pthread_mutex_unlock(&u->mu);
		if (!rc && (rc = cbi_s3_put(u->s, u->key, u->cur, u->curn, 1, &e))) {
			pthread_mutex_lock(&u->mu);
			fail_locked(u, rc, &e);
			pthread_mutex_unlock(&u->mu);
		}
		u->done = 1;
		return rc ? cbi_s3up_error(u, err) : 0;
	}
	if (u->curn)
		submit(u); /* the last part, which may be short */
	join_all(u);
	pthread_mutex_lock(&u->mu);
	rc = u->rc;
	pthread_mutex_unlock(&u->mu);
	if (!rc && (rc = cbi_s3_mpu_complete(u->s, u->key, u->uid, (const char(*)[CBI_S3_ETAG_MAX])u->etags,
					     u->nparts, &e))) {
		pthread_mutex_lock(&u->mu);
		fail_locked(u, rc, &e);
		pthread_mutex_unlock(&u->mu);
	}
	if (rc) {
		abort_upload(u);
		return cbi_s3up_error(u, err);
	}
	u->done = 1;
	return 0;
}

void cbi_s3up_stop(cbi_s3up *u, int code, const char *why)
{
	cbi_error e;
	cbi_err(&e, code, "%s", why);
	pthread_mutex_lock(&u->mu);
	fail_locked(u, code, &e);
	pthread_mutex_unlock(&u->mu);
}

int cbi_s3up_error(cbi_s3up *u, cbi_error *err)
{
	pthread_mutex_lock(&u->mu);
	int rc = u->rc;
	if (rc && err)
		*err = u->err;
	pthread_mutex_unlock(&u->mu);
	return rc;
}

void cbi_s3up_stats(cbi_s3up *u, uint64_t *bytes, uint32_t *parts, uint64_t *buffer_bytes)
{
	pthread_mutex_lock(&u->mu);
	*bytes = u->bytes;
	*parts = u->nparts;
	*buffer_bytes = (uint64_t)u->nalloc * u->part;
	pthread_mutex_unlock(&u->mu);
}

void cbi_s3up_free(cbi_s3up *u)
{
	if (!u)
		return;
	if (u->begun && !u->done)
		abort_upload(u);
	join_all(u);
	for (unsigned i = 0; i < u->nalloc; i++)
		free(u->all[i]);
	free(u->all);
	free(u->freel);
	free(u->q);
	free(u->etags);
	pthread_cond_destroy(&u->cv_work);
	pthread_cond_destroy(&u->cv_free);
	pthread_mutex_destroy(&u->mu);
	free(u);
}
