/* s3rd.c - ranged reads of S3 objects behind sealed-file readers (s3rd.h).
 *
 * Each registered object (rfile) keeps a list of ranges: byte spans of the
 * object with a buffer, queued for a fetch thread, being fetched, fetched,
 * or failed. A read copies from a fetched range that covers it, waits for
 * one in flight, takes a queued one over (fetching it itself rather than
 * waiting for its turn), or fetches a new window itself. Everything is
 * under one mutex; the GETs and the copies run without it (a range being
 * copied from is pinned). */
#define _GNU_SOURCE
#include "s3rd.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_JOBS 16

enum { R_QUEUED, R_BUSY, R_DONE, R_FAIL };

typedef struct rng {
	struct rng *next;  /* in its file's list */
	struct rng *qnext; /* in the fetch queue */
	struct rfile *f;
	uint64_t off, len;
	uint8_t *buf;
	int state, rc;
	int ra;            /* a read-ahead window: reading it reads further ahead */
	uint64_t need;     /* hinted bytes in it (0: none) */
	uint64_t used;     /* bytes read from it */
	unsigned pins;     /* readers copying from it */
	uint64_t tick;
} rng;

/* A sequential reader of a file: where it stopped, how far ahead it has
 * asked for. */
typedef struct stream {
	uint64_t end, ra_next, tick;
} stream;

typedef struct rfile {
	struct rfile *next;
	cbi_s3rd *d;
	dev_t dev;
	ino_t ino;
	char *key;
	uint64_t size, ends;
	rng *ranges;
	int nopen;         /* readers open on it */
	int whole;         /* whole passes under way */
	int have_p;        /* hinted extents not yet asked for: [p_off, p_end) */
	uint64_t p_off, p_end, p_need;
	stream st[2];
} rfile;

/* One open reader: the file and the stand-in's descriptor (the sealed-file
 * reader's, valid until it closes us). */
typedef struct rhandle {
	rfile *f;
	int fd;
} rhandle;

struct cbi_s3rd {
	cbi_s3rd_cfg c;
	cbi_s3rd_fetch_fn fetch;
	void *ud;
	pthread_mutex_t mu;
	pthread_cond_t cv;  /* a fetch ended */
	pthread_cond_t qcv; /* the queue has work, or stop */
	rfile *files;
	rng *qhead, *qtail;
	unsigned nq;
	pthread_t th[MAX_JOBS];
	unsigned nth;
	pid_t pid;          /* the process whose threads th are */
	int stop;
	uint64_t mem, tick;
	cbi_s3rd_stats s;
	char lasterr[512];
};

static const cbi_sfr_ops rd_ops;

/* fork(): every reader's mutex is taken around it, so that the child's
 * copy is never one a parent thread held (the child has only the forking
 * thread). */
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static cbi_s3rd *all[8];
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
	pthread_mutex_lock(&all_mu);
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		if (all[i])
			pthread_mutex_lock(&all[i]->mu);
}

static void fork_done(void)
{
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		if (all[i])
			pthread_mutex_unlock(&all[i]->mu);
	pthread_mutex_unlock(&all_mu);
}

static void atfork_init(void)
{
	pthread_atfork(fork_prepare, fork_done, fork_done);
}

/* d joins (on = 1) or leaves the readers locked around fork() (beyond 8
 * at once, a reader is left out: a fork then risks its lock). */
static void fork_track(cbi_s3rd *d, int on)
{
	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&all_mu);
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		if (on ? !all[i] : all[i] == d) {
			all[i] = on ? d : NULL;
			break;
		}
	pthread_mutex_unlock(&all_mu);
}

int cbi_s3rd_new(const cbi_s3rd_cfg *c, cbi_s3rd_fetch_fn fetch, void *ud, cbi_s3rd **out, cbi_error *err)
{
	cbi_s3rd *d = calloc(1, sizeof *d);
	if (!d)
		return cbi_err(err, -ENOMEM, "out of memory");
	if (c)
		d->c = *c;
	if (!d->c.jobs)
		d->c.jobs = 4;
	if (d->c.jobs > MAX_JOBS)
		d->c.jobs = MAX_JOBS;
	if (!d->c.cache)
		d->c.cache = 64u << 20;
	if (!d->c.window)
		d->c.window = 1u << 20;
	if (!d->c.max_range)
		d->c.max_range = 4u << 20;
	if (d->c.max_range < d->c.window)
		d->c.max_range = d->c.window;
	if (!d->c.gap)
		d->c.gap = 64u << 10;
	if (!d->c.ahead)
		d->c.ahead = 4;
	d->fetch = fetch;
	d->ud = ud;
	d->pid = getpid();
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cv, NULL);
	pthread_cond_init(&d->qcv, NULL);
	fork_track(d, 1);
	*out = d;
	return 0;
}

int cbi_s3rd_add(cbi_s3rd *d, dev_t dev, ino_t ino, const char *key, uint64_t size, uint64_t ends,
		 cbi_error *err)
{
	rfile *f = calloc(1, sizeof *f);
	if (!f || !(f->key = strdup(key))) {
		free(f);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	f->d = d;
	f->dev = dev;
	f->ino = ino;
	f->size = size;
	f->ends = ends > size ? size : ends;
	pthread_mutex_lock(&d->mu);
	f->next = d->files;
	d->files = f;
	pthread_mutex_unlock(&d->mu);
	return 0;
}

int cbi_s3rd_opener(void *ud, int fd, const struct stat *st, const cbi_sfr_ops **ops, void **h, cbi_error *err)
{
	cbi_s3rd *d = ud;
	rfile *f;
	pthread_mutex_lock(&d->mu);
	for (f = d->files; f; f = f->next)
		if (f->dev == st->st_dev && f->ino == st->st_ino)
			break;
	pthread_mutex_unlock(&d->mu);
	if (!f)
		return 0;
	if ((uint64_t)st->st_size != f->size)
		return cbi_err(err, -CBI_EDAMAGED, "stand-in of 's3://%s' changed size", f->key);
	rhandle *hd = malloc(sizeof *hd);
	if (!hd)
		return cbi_err(err, -ENOMEM, "out of memory");
	hd->f = f;
	hd->fd = fd;
	pthread_mutex_lock(&d->mu);
	f->nopen++;
	pthread_mutex_unlock(&d->mu);
	*ops = &rd_ops;
	*h = hd;
	return 1;
}

/* ------------------------------------------------------- ranges (mu held) */

static void rng_free(rng *r)
{
	rfile *f = r->f;
	for (rng **pp = &f->ranges; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	f->d->mem -= r->len;
	free(r->buf);
	free(r);
}

/* How much a fetched range is still wanted: 0 read to its end, or failed;
 * 1 read ahead or fetched for a read, not all read yet; 2 hinted, and not
 * every hinted byte read. */
static int wanted(const rng *r)
{
	if (r->state == R_FAIL)
		return 0;
	if (r->need)
		return r->used >= r->need ? 0 : 2;
	return r->used >= r->len ? 0 : 1;
}

/* Free fetched, unpinned ranges, the least wanted first (up to wanted()
 * level most), then the least recently used, until want more bytes fit. */
static void evict(cbi_s3rd *d, uint64_t want, int most)
{
	for (int pass = 0; pass <= most; pass++)
		while (d->mem + want > d->c.cache) {
			rng *v = NULL;
			for (rfile *f = d->files; f; f = f->next)
				for (rng *r = f->ranges; r; r = r->next)
					if ((r->state == R_DONE || r->state == R_FAIL) && !r->pins &&
					    wanted(r) <= pass && (!v || r->tick < v->tick))
						v = r;
			if (!v)
				break;
			rng_free(v);
		}
}

/* A new range [off, off+len) of f, or NULL when it does not fit in memory
 * (force: allocate anyway, NULL only without memory). */
static rng *rng_new(rfile *f, uint64_t off, uint64_t len, uint64_t need, int ra, int force)
{
	cbi_s3rd *d = f->d;
	if (d->mem + len > d->c.cache) /* a read ahead or a hint makes room only from what was read */
		evict(d, len, force ? 2 : 0);
	if (d->mem + len > d->c.cache && !force)
		return NULL;
	rng *r = calloc(1, sizeof *r);
	if (!r || !(r->buf = malloc(len ? len : 1))) {
		free(r);
		return NULL;
	}
	r->f = f;
	r->off = off;
	r->len = len;
	r->need = need;
	r->ra = ra;
	r->state = R_QUEUED;
	r->tick = ++d->tick;
	r->next = f->ranges;
	f->ranges = r;
	d->mem += len;
	if (d->mem > d->s.peak)
		d->s.peak = d->mem;
	return r;
}

static rng *find(rfile *f, uint64_t off)
{
	for (rng *r = f->ranges; r; r = r->next)
		if (r->state != R_FAIL && off >= r->off && off - r->off < r->len)
			return r;
	return NULL;
}

/* Where the first range after off starts (the file's size if none). */
static uint64_t next_start(rfile *f, uint64_t off)
{
	uint64_t n = f->size;
	for (rng *r = f->ranges; r; r = r->next)
		if (r->state != R_FAIL && r->off > off && r->off < n)
			n = r->off;
	return n;
}

/* ------------------------------------------------------------- fetching */

/* After a fork, the child has none of the parent's fetch threads: ranges
 * they were fetching never end (failed here, fetched again on demand). */
static void check_fork(cbi_s3rd *d)
{
	if (d->pid == getpid())
		return;
	d->pid = getpid();
	d->nth = 0;
	for (rfile *f = d->files; f; f = f->next)
		for (rng *r = f->ranges; r; r = r->next)
			if (r->state == R_BUSY) {
				r->state = R_FAIL;
				r->rc = -EIO;
			}
}

/* Fetch r in this thread; mu held on entry and on return. */
static int fetch_now(cbi_s3rd *d, rng *r)
{
	r->state = R_BUSY;
	pthread_mutex_unlock(&d->mu);
	cbi_error e = { 0 };
	int rc = d->fetch(d->ud, r->f->key, r->off, r->len, r->buf, &e);
	pthread_mutex_lock(&d->mu);
	r->state = rc ? R_FAIL : R_DONE;
	r->rc = rc;
	r->tick = ++d->tick;
	d->s.gets++;
	if (rc)
		cbi_strlcpy(d->lasterr, e.msg[0] ? e.msg : cbi_strerror(rc), sizeof d->lasterr);
	else
		d->s.bytes += r->len;
	pthread_cond_broadcast(&d->cv);
	return rc;
}

static void *worker(void *ud)
{
	cbi_s3rd *d = ud;
	pthread_mutex_lock(&d->mu);
	for (;;) {
		while (!d->qhead && !d->stop)
			pthread_cond_wait(&d->qcv, &d->mu);
		if (d->stop)
			break;
		rng *r = d->qhead;
		d->qhead = r->qnext;
		if (!d->qhead)
			d->qtail = NULL;
		d->nq--;
		r->qnext = NULL;
		fetch_now(d, r);
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

static void enqueue(cbi_s3rd *d, rng *r)
{
	check_fork(d);
	r->qnext = NULL;
	if (d->qtail)
		d->qtail->qnext = r;
	else
		d->qhead = r;
	d->qtail = r;
	d->nq++;
	while (d->nth < d->c.jobs && d->nth < d->nq + 1) {
		if (pthread_create(&d->th[d->nth], NULL, worker, d))
			break;
		d->nth++;
	}
	pthread_cond_signal(&d->qcv);
}

static void dequeue(cbi_s3rd *d, rng *r)
{
	rng *prev = NULL;
	for (rng *q = d->qhead; q; prev = q, q = q->qnext)
		if (q == r) {
			if (prev)
				prev->qnext = r->qnext;
			else
				d->qhead = r->qnext;
			if (d->qtail == r)
				d->qtail = prev;
			d->nq--;
			r->qnext = NULL;
			return;
		}
}

/* The hinted extents gathered so far become a queued range (or are dropped
 * when they do not fit: their reads fetch them). */
static void flush_hint(rfile *f)
{
	cbi_s3rd *d = f->d;
	if (!f->have_p)
		return;
	f->have_p = 0;
	rng *r = rng_new(f, f->p_off, f->p_end - f->p_off, f->p_need, 0, 0);
	if (r)
		enqueue(d, r);
	else
		d->s.dropped++;
}

/* Ask for the windows after from (up to `ahead` of them) that no range
 * holds yet. */
static void read_ahead(rfile *f, stream *s, uint64_t from)
{
	cbi_s3rd *d = f->d;
	uint64_t win = f->whole ? d->c.max_range : d->c.window, target = from + d->c.ahead * win;
	if (s->ra_next < from)
		s->ra_next = from;
	while (s->ra_next < target && s->ra_next < f->size) {
		uint64_t ws = s->ra_next;
		rng *have = find(f, ws);
		if (have) {
			s->ra_next = have->off + have->len;
			continue;
		}
		uint64_t len = CBI_MIN(win, next_start(f, ws) - ws);
		rng *r = rng_new(f, ws, len, 0, 1, 0);
		if (!r)
			break;
		enqueue(d, r);
		s->ra_next = ws + len;
	}
}

/* The stream a read at off continues (*seq = 1), else the least recently
 * used one, restarted at off (*seq = 0). */
static stream *stream_for(rfile *f, uint64_t off, int *seq)
{
	uint64_t win = f->d->c.max_range;
	stream *lru = &f->st[0];
	for (int i = 0; i < 2; i++) {
		stream *s = &f->st[i];
		if (s->tick && off + win >= s->end && off <= s->end + win) {
			*seq = 1;
			s->tick = ++f->d->tick;
			return s;
		}
		if (s->tick < lru->tick)
			lru = s;
	}
	*seq = 0;
	lru->end = off;
	lru->ra_next = 0;
	lru->tick = ++f->d->tick;
	return lru;
}

/* ------------------------------------------------------------ the ops */

static int rd_pread(void *h, void *buf, size_t len, uint64_t off)
{
	rhandle *hd = h;
	rfile *f = hd->f;
	cbi_s3rd *d = f->d;
	uint8_t *p = buf;
	int rc = 0;
	if (off > f->size || len > f->size - off)
		return -CBI_ETRUNCATED;
	pthread_mutex_lock(&d->mu);
	check_fork(d);
	while (len && !rc) {
		/* the stand-in's ends, copied there from the object */
		if (f->ends && !f->whole && (off < f->ends || off >= f->size - f->ends)) {
			size_t n = off < f->ends ? (size_t)CBI_MIN((uint64_t)len, f->ends - off) : len;
			pthread_mutex_unlock(&d->mu);
			rc = cbi_pread_full(hd->fd, p, n, off);
			pthread_mutex_lock(&d->mu);
			d->s.local += n;
			p += n;
			off += n;
			len -= n;
			continue;
		}
		rng *r = find(f, off);
		if (!r && f->have_p && off >= f->p_off && off < f->p_end) {
			flush_hint(f);
			r = find(f, off);
		}
		if (!r) { /* a miss: a window from off, fetched here */
			int seq;
			stream *s = stream_for(f, off, &seq);
			uint64_t win = f->whole ? d->c.max_range : d->c.window;
			uint64_t wl = CBI_MIN(CBI_MAX((uint64_t)len, win), next_start(f, off) - off);
			if (!(r = rng_new(f, off, wl, 0, seq || f->whole, 1))) {
				rc = -ENOMEM;
				break;
			}
			if (seq || f->whole)
				read_ahead(f, s, off + wl);
			if ((rc = fetch_now(d, r)) && !r->pins)
				rng_free(r);
			continue;
		}
		if (r->state == R_QUEUED) { /* its turn has not come: take it */
			dequeue(d, r);
			if ((rc = fetch_now(d, r)) && !r->pins)
				rng_free(r);
			continue;
		}
		if (r->state == R_BUSY) {
			pthread_cond_wait(&d->cv, &d->mu);
			continue;
		}
		if (r->state == R_FAIL) /* a fetch ahead failed: find() skips it, fetched again here */
			continue;
		size_t n = (size_t)CBI_MIN((uint64_t)len, r->off + r->len - off);
		r->pins++;
		r->tick = ++d->tick;
		pthread_mutex_unlock(&d->mu);
		memcpy(p, r->buf + (off - r->off), n);
		pthread_mutex_lock(&d->mu);
		r->pins--;
		r->used += n;
		d->s.served += n;
		int ahead = r->ra || f->whole;
		if (r->need && r->used >= r->need && !r->pins)
			rng_free(r);
		r = NULL; /* read_ahead() may evict it */
		if (ahead) {
			int seq;
			stream *s = stream_for(f, off, &seq);
			if (seq)
				read_ahead(f, s, off + n);
			if (s->end < off + n)
				s->end = off + n;
		}
		p += n;
		off += n;
		len -= n;
	}
	/* a failed range nobody copies from any more goes */
	for (rng *r = f->ranges, *nx; r; r = nx) {
		nx = r->next;
		if (r->state == R_FAIL && !r->pins)
			rng_free(r);
	}
	pthread_mutex_unlock(&d->mu);
	return rc;
}

static void rd_will_need(void *h, uint64_t off, uint64_t len)
{
	rhandle *hd = h;
	rfile *f = hd->f;
	cbi_s3rd *d = f->d;
	if (!len)
		return;
	pthread_mutex_lock(&d->mu);
	rng *r = find(f, off);
	if (r && off + len <= r->off + r->len) {
		r->need += len; /* already asked for */
	} else if (f->have_p && off >= f->p_off && off <= f->p_end + d->c.gap &&
		   CBI_MAX(f->p_end, off + len) - f->p_off <= d->c.max_range) {
		f->p_end = CBI_MAX(f->p_end, off + len);
		f->p_need += len;
	} else {
		flush_hint(f);
		f->have_p = 1;
		f->p_off = off;
		f->p_end = off + len;
		f->p_need = len;
	}
	/* asked for once large enough, or at once when fetchers are idle */
	if (f->have_p && (f->p_end - f->p_off >= d->c.max_range ||
			  (f->p_end - f->p_off >= d->c.window && d->nq < d->c.jobs)))
		flush_hint(f);
	pthread_mutex_unlock(&d->mu);
}

static void rd_whole(void *h, int on)
{
	rhandle *hd = h;
	pthread_mutex_lock(&hd->f->d->mu);
	hd->f->whole += on ? 1 : (hd->f->whole > 0 ? -1 : 0);
	pthread_mutex_unlock(&hd->f->d->mu);
}

static void rd_close(void *h)
{
	rhandle *hd = h;
	rfile *f = hd->f;
	cbi_s3rd *d = f->d;
	pthread_mutex_lock(&d->mu);
	if (--f->nopen == 0) { /* its last reader: what it asked for and kept goes */
		f->have_p = 0;
		f->whole = 0;
		for (rng *r = f->ranges, *nx; r; r = nx) {
			nx = r->next;
			if (r->state == R_QUEUED)
				dequeue(d, r);
			if (r->state != R_BUSY && !r->pins)
				rng_free(r);
		}
	}
	pthread_mutex_unlock(&d->mu);
	free(hd);
}

static const cbi_sfr_ops rd_ops = {
	.pread = rd_pread,
	.will_need = rd_will_need,
	.whole = rd_whole,
	.close = rd_close,
};

void cbi_s3rd_last_error(cbi_s3rd *d, char *out, size_t sz)
{
	pthread_mutex_lock(&d->mu);
	cbi_strlcpy(out, d->lasterr, sz);
	pthread_mutex_unlock(&d->mu);
}

void cbi_s3rd_get_stats(cbi_s3rd *d, cbi_s3rd_stats *st)
{
	pthread_mutex_lock(&d->mu);
	*st = d->s;
	pthread_mutex_unlock(&d->mu);
}

void cbi_s3rd_free(cbi_s3rd *d)
{
	if (!d)
		return;
	fork_track(d, 0);
	pthread_mutex_lock(&d->mu);
	check_fork(d);
	d->stop = 1;
	pthread_cond_broadcast(&d->qcv);
	unsigned nth = d->nth;
	pthread_mutex_unlock(&d->mu);
	for (unsigned i = 0; i < nth; i++)
		pthread_join(d->th[i], NULL);
	while (d->files) {
		rfile *f = d->files;
		d->files = f->next;
		while (f->ranges)
			rng_free(f->ranges);
		free(f->key);
		free(f);
	}
	pthread_cond_destroy(&d->qcv);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d);
}
