/* sfile.c - sealed file writer and reader, with segments. */
#define _GNU_SOURCE
#include "sfile.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "dgpipe.h"
#include "flusher.h"
#include "format.h"
#include "util.h"

#define SFW_BUF (1u << 20)
/* Buffers of a writer whose digest runs on a thread of its own: one being
 * filled, the others being hashed (cbi_sfw_hash_async) */
#define SFW_PIPE_BUFS 4
/* Copy mode (cbi_sfw_copy_mode): how far the writer may run ahead of the
 * digest that reads the file back, and how much it drops from the page
 * cache at a time behind the digest */
#define SFW_FOLLOW_LAG (128u << 20)
#define SFW_DROP_STEP (16u << 20)
/* ... and never less than this far behind the writer: the write-back of
 * those pages has had time to finish, so dropping them seldom waits for it
 * (bench/RESULTS.md, session 9: a warm fold 0.62-0.93 s against 0.74-0.92
 * on the root file system, 0.68-0.82 against 0.92-1.18 on a loop device) */
#define SFW_DROP_BEHIND (32u << 20)
/* ... and every this many bytes a thread of its own makes the file durable
 * (fdatasync, flusher.h), so that the seal's own sync finds little in the
 * device's write cache (on the VM of bench/RESULTS.md the final sync of a
 * fold waited for the host to write out everything since the last flush;
 * paired, a warm fold 8-10% faster, session 10) */
#define SFW_FLUSH_STEP (64u << 20)

/* The digest of a writer in copy mode: a thread that reads back and hashes
 * the bytes written (cbi_sfw_copy_mode) */
typedef struct sfw_follow sfw_follow;
static int follow_end(struct cbi_sfw *w, int stop);

struct cbi_sfw {
	sfw_follow *follow; /* non-NULL: dg is fed on follow's thread from the file itself */
	int follow_err;     /* the first error of a follow's thread (cbi_sfw_readback_error) */
	int fd;             /* the segment being written (cur) */
	uint64_t off;       /* bytes appended (buffered included) */
	size_t used;
	size_t hashed;       /* bytes at the start of buf already in the digest */
	uint8_t *buf;
	cbi_dg *dg;         /* SHA-256, or HMAC-SHA256 in an encrypted chain */
	cbi_dgpipe *pipe;   /* non-NULL: dg is fed on the pipe's thread, buf is one of its buffers */
	uint64_t dropped;   /* copy mode: pages below this offset were dropped from the page cache */
	struct cbi_flusher *fl; /* copy mode: fdatasync every flush_step bytes (flusher.h), or NULL */
	int fl_tried;       /* fl was started for the current segment (or could not be) */
	uint64_t lag, drop_step, drop_behind, flush_step; /* copy mode's window (cbi_sfw_copy_window) */
	int behind;         /* start writeback of each buffer once written (cbi_sfw_write_behind) */
	uint64_t seg;       /* segment size; 0: one file */
	uint32_t cur;       /* segment that fd belongs to */
	uint32_t nseg;      /* segments created (0 until the first exists) */
	uint32_t renamed;   /* commit: segments 1 .. renamed have their final names */
	long pid;
	char tag[128];      /* "" for the default temporary name */
	char dir[4096];
	char tmp[4096];     /* temporary name of segment 0 */
	char final[4096];
	struct cbi_sfw *live_next; /* list of this process's live writers */
	cbi_sfw_sink_fn sink;   /* the bytes go here instead of a file (cbi_sfw_create_sink) */
	void *sink_ud;
};

/* This process's writers between create and commit or abort: a temporary
 * name that one of them owns is never replaced. */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static cbi_sfw *live_head;

int cbi_sfile_segment_name(const char *path, uint32_t k, char *out, size_t outsz)
{
	int n = k ? snprintf(out, outsz, "%s.%03u", path, k) : snprintf(out, outsz, "%s", path);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

int cbi_sfile_segment_parse(const char *name, size_t *base_len, uint64_t *k)
{
	size_t n = strlen(name), i = n;
	while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9')
		i--;
	/* k in decimal, at least 3 digits; more than 10 never fit a uint32_t */
	if (n - i < 3 || n - i > 10 || i < 2 || name[i - 1] != '.')
		return 0;
	uint64_t v = 0;
	for (size_t j = i; j < n; j++)
		v = v * 10 + (uint64_t)(name[j] - '0');
	*base_len = i - 1;
	*k = v;
	return 1;
}

/* Temporary name of segment k: the decoration of the first segment's
 * temporary name applied to the segment's final base name, so that every
 * segment starts with '.' and ends in ".tmp" (and, tagged, starts with
 * ".TAG.": the backup's cleanup of a killed run finds them all). */
static int sfw_tmp_name(const cbi_sfw *w, uint32_t k, char *out, size_t outsz)
{
	char fin[4096];
	if (cbi_sfile_segment_name(w->final, k, fin, sizeof fin))
		return -ENAMETOOLONG;
	const char *base = strrchr(fin, '/');
	base = base ? base + 1 : fin;
	/* A leading dot and a ".tmp" ending: never matched by the scanner, which
	 * only takes names ending in .cbi or .cbx. */
	int n = w->tag[0] ? snprintf(out, outsz, "%s/.%s.%s.tmp", w->dir, w->tag, base)
			  : snprintf(out, outsz, "%s/.%s.%ld.tmp", w->dir, base, w->pid);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

int cbi_sfw_create(const char *final_path, cbi_sfw **out, cbi_error *err)
{
	return cbi_sfw_create_split(final_path, NULL, 0, out, err);
}

int cbi_sfw_create_tagged(const char *final_path, const char *tag, cbi_sfw **out, cbi_error *err)
{
	return cbi_sfw_create_split(final_path, tag, 0, out, err);
}

static int sfw_create(const char *final_path, const char *tag, uint64_t seg_size, cbi_sfw_sink_fn sink,
		      void *sink_ud, cbi_sfw **out, cbi_error *err)
{
	if (seg_size % CBI_SEG_UNIT || seg_size / CBI_SEG_UNIT > UINT32_MAX)
		return cbi_err(err, -EINVAL, "invalid segment size %llu: not a whole number of MiB",
			       (unsigned long long)seg_size);
	cbi_sfw *w = calloc(1, sizeof *w);
	if (!w)
		return cbi_err(err, -ENOMEM, "out of memory");
	w->fd = -1;
	w->seg = seg_size;
	w->lag = SFW_FOLLOW_LAG;
	w->drop_step = SFW_DROP_STEP;
	w->drop_behind = SFW_DROP_BEHIND;
	w->flush_step = SFW_FLUSH_STEP;
	w->pid = (long)getpid();
	if (tag)
		cbi_strlcpy(w->tag, tag, sizeof w->tag);
	cbi_strlcpy(w->final, final_path, sizeof w->final);
	cbi_dirname(final_path, w->dir, sizeof w->dir);
	/* Room for the longest segment suffix too, so that no later segment
	 * fails for the length of its name. */
	char probe[4096];
	if (strlen(final_path) >= sizeof w->final || (tag && strlen(tag) >= sizeof w->tag) ||
	    sfw_tmp_name(w, seg_size ? UINT32_MAX : 0, probe, sizeof probe) ||
	    sfw_tmp_name(w, 0, w->tmp, sizeof w->tmp)) {
		free(w);
		return cbi_err(err, -ENAMETOOLONG, "path too long: '%s'", final_path);
	}
	w->buf = malloc(SFW_BUF);
	if (!w->buf || cbi_dg_new(NULL, &w->dg)) {
		cbi_sfw_abort(w);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	if (sink) { /* no file, so no temporary name to own */
		w->sink = sink;
		w->sink_ud = sink_ud;
		*out = w;
		return 0;
	}
	/* The name is ours: it holds our pid, or the tag of a caller that holds
	 * the job's lock and puts its pid in the tag. So whatever lies there is
	 * a leftover of a dead process (or a link planted at the name), which
	 * cbi_create_tmp() replaces without following, unless a live writer of
	 * this process owns the name: that one is refused (-EEXIST) and kept. */
	pthread_mutex_lock(&live_mu);
	int e = 0;
	for (const cbi_sfw *o = live_head; o && !e; o = o->live_next)
		if (!strcmp(o->tmp, w->tmp))
			e = -EEXIST;
	if (!e && (w->fd = cbi_create_tmp(w->tmp, 0644)) < 0) {
		e = w->fd;
		w->fd = -1;
	}
	if (!e) {
		w->live_next = live_head;
		live_head = w;
	}
	pthread_mutex_unlock(&live_mu);
	if (e) {
		cbi_err(err, e, "unable to create '%s': %s", w->tmp, strerror(-e));
		cbi_sfw_abort(w); /* nseg = 0: unlinks nothing */
		return e;
	}
	w->nseg = 1;
	*out = w;
	return 0;
}

int cbi_sfw_create_split(const char *final_path, const char *tag, uint64_t seg_size, cbi_sfw **out,
			 cbi_error *err)
{
	return sfw_create(final_path, tag, seg_size, NULL, NULL, out, err);
}

int cbi_sfw_create_sink(const char *final_path, cbi_sfw_sink_fn fn, void *ud, cbi_sfw **out, cbi_error *err)
{
	if (!fn)
		return cbi_err(err, -EINVAL, "no sink for '%s'", final_path);
	return sfw_create(final_path, NULL, 0, fn, ud, out, err);
}

/* The pipe (joined first: its thread feeds dg), the buffer, the digest. */
static void sfw_free_bufs(cbi_sfw *w)
{
	(void)cbi_flusher_stop(w->fl); /* before fd is closed */
	w->fl = NULL;
	if (w->follow)
		(void)follow_end(w, 1); /* its thread feeds dg */
	if (w->pipe)
		cbi_dgpipe_free(w->pipe); /* buf is one of its buffers */
	else
		free(w->buf);
	w->pipe = NULL;
	w->buf = NULL;
	cbi_dg_free(w->dg);
	w->dg = NULL;
}

/* Take w off the list of live writers (if it is on it). */
static void sfw_unlist(cbi_sfw *w)
{
	pthread_mutex_lock(&live_mu);
	for (cbi_sfw **pp = &live_head; *pp; pp = &(*pp)->live_next)
		if (*pp == w) {
			*pp = w->live_next;
			break;
		}
	pthread_mutex_unlock(&live_mu);
}

/* The current segment is full: make it durable, close it and create the
 * next one. Segments are written in order, each exactly once. */
static int sfw_next_segment(cbi_sfw *w, uint32_t k)
{
	if (k != w->cur + 1 || w->fd < 0)
		return -EINVAL;
	int frc = cbi_flusher_stop(w->fl); /* it flushes this segment's descriptor */
	w->fl = NULL;
	w->fl_tried = 0;
	if (frc)
		return frc;
	if (fsync(w->fd) < 0)
		return -errno;
	int fd = w->fd;
	w->fd = -1;
	if (close(fd) < 0)
		return -errno;
	char tmp[4096];
	int rc = sfw_tmp_name(w, k, tmp, sizeof tmp);
	if (rc)
		return rc;
	w->fd = cbi_create_tmp(tmp, 0644);
	if (w->fd < 0) {
		int e = w->fd;
		w->fd = -1;
		return e;
	}
	w->cur = k;
	w->nseg = k + 1;
	return 0;
}

/* Where logical offset pos lies: its segment *k, its offset *at in it, and
 * how many of len bytes from there fit in that segment. */
static size_t sfw_seg_span(const cbi_sfw *w, uint64_t pos, size_t len, uint32_t *k, uint64_t *at)
{
	*k = w->seg ? (uint32_t)(pos / w->seg) : 0;
	*at = pos - (uint64_t)*k * w->seg;
	return w->seg ? (size_t)CBI_MIN((uint64_t)len, w->seg - *at) : len;
}

/* ------------------------------------------------- the digest that follows */

/* In copy mode the digest reads the file back (from the page cache, where
 * the bytes were just written) on a thread of its own, behind the writer.
 * The writer copies at memory speed and runs up to w->lag bytes ahead, so
 * that the data of the file's end is flushed while the digest catches up
 * (cbi_sfw_seal); behind the digest the writer drops the pages from the
 * page cache once written back, so that a copy keeps a window of pages,
 * not the file: on a VM that hands free pages back to its host, fresh
 * pages are what a page-cache write costs most (bench/RESULTS.md, prune,
 * session 9). avail and done are logical offsets. */
struct sfw_follow {
	pthread_t t;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t avail; /* bytes written that the digest covers */
	uint64_t done;  /* bytes hashed */
	int end;        /* avail is final */
	int stop;       /* give up (abort) */
	int err;        /* first error of the thread */
	uint64_t lag;   /* the writer waits while avail - done exceeds it (0: never) */
	int rfd;        /* segment rk, read-only */
	uint32_t rk;
	const cbi_sfw *w; /* its names and segment size (set at create, never changed) */
	cbi_dg *dg;
	uint8_t *buf;
};

/* Hash [f->done, upto) from the file; the thread's own descriptors. */
static int follow_read(sfw_follow *f, uint64_t upto)
{
	const cbi_sfw *w = f->w;
	uint64_t pos = f->done;
	while (pos < upto) {
		uint32_t k;
		uint64_t at;
		size_t n = sfw_seg_span(w, pos, (size_t)CBI_MIN(upto - pos, (uint64_t)SFW_BUF), &k, &at);
		if (f->rfd < 0 || f->rk != k) {
			char name[4096];
			int rc = sfw_tmp_name(w, k, name, sizeof name);
			if (rc)
				return rc;
			if (f->rfd >= 0)
				close(f->rfd);
			if ((f->rfd = open(name, O_RDONLY | O_CLOEXEC)) < 0)
				return -errno;
			f->rk = k;
		}
		int rc = cbi_pread_full(f->rfd, f->buf, n, at);
		if (rc)
			return rc == -CBI_ETRUNCATED ? -EIO : rc; /* shorter than what was written */
		if (cbi_dg_update(f->dg, f->buf, n))
			return -EIO;
		pos += n;
		pthread_mutex_lock(&f->mu);
		f->done = pos;
		pthread_cond_broadcast(&f->cv);
		int stop = f->stop;
		pthread_mutex_unlock(&f->mu);
		if (stop)
			return 0; /* an abort does not wait for the rest */
	}
	return 0;
}

static void *follow_main(void *arg)
{
	sfw_follow *f = arg;
	pthread_mutex_lock(&f->mu);
	for (;;) {
		while (!f->stop && !f->end && f->done == f->avail)
			pthread_cond_wait(&f->cv, &f->mu);
		if (f->stop || f->done == f->avail)
			break; /* stopped, or at the end */
		uint64_t upto = f->avail;
		pthread_mutex_unlock(&f->mu);
		int rc = follow_read(f, upto);
		pthread_mutex_lock(&f->mu);
		if (rc) {
			f->err = rc;
			break;
		}
	}
	f->end = 1;
	pthread_cond_broadcast(&f->cv);
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

/* Start following w from offset from (everything before it is hashed). */
static int follow_start(cbi_sfw *w, uint64_t from)
{
	sfw_follow *f = calloc(1, sizeof *f);
	if (!f || !(f->buf = malloc(SFW_BUF))) {
		free(f);
		return -ENOMEM;
	}
	f->w = w;
	f->dg = w->dg;
	f->rfd = -1;
	f->avail = f->done = from;
	f->lag = w->lag;
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->cv, NULL);
	int rc = cbi_thread_start_quiet(&f->t, follow_main, f);
	if (rc) {
		pthread_cond_destroy(&f->cv);
		pthread_mutex_destroy(&f->mu);
		free(f->buf);
		free(f);
		return -rc;
	}
	w->follow = f;
	return 0;
}

/* The bytes up to offset upto are written; wait while the digest is more
 * than f->lag behind. *done: the bytes hashed so far. 0, or the error that
 * stopped the digest (the writer stops at once rather than at seal). */
static int follow_publish(sfw_follow *f, uint64_t upto, uint64_t *done)
{
	pthread_mutex_lock(&f->mu);
	f->avail = upto;
	pthread_cond_broadcast(&f->cv);
	while (f->lag && !f->end && f->avail - f->done > f->lag)
		pthread_cond_wait(&f->cv, &f->mu);
	*done = f->done;
	int rc = f->err;
	pthread_mutex_unlock(&f->mu);
	return rc;
}

int cbi_sfw_readback_error(const cbi_sfw *w)
{
	sfw_follow *f = w->follow;
	if (w->follow_err || !f)
		return w->follow_err;
	pthread_mutex_lock(&f->mu);
	int rc = f->err;
	pthread_mutex_unlock(&f->mu);
	return rc;
}

/* Join the thread: with stop, at once; else once every byte published is
 * hashed. 0 or the thread's error. */
static int follow_end(cbi_sfw *w, int stop)
{
	sfw_follow *f = w->follow;
	pthread_mutex_lock(&f->mu);
	f->stop = stop;
	f->end = 1;
	pthread_cond_broadcast(&f->cv);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->t, NULL);
	int rc = f->err;
	if (rc && !w->follow_err)
		w->follow_err = rc;
	if (f->rfd >= 0)
		close(f->rfd);
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	free(f->buf);
	free(f);
	w->follow = NULL;
	return rc;
}

/* Write the n bytes at p at logical offset pos, opening segments as
 * needed. */
static int sfw_pwrite(cbi_sfw *w, const uint8_t *p, size_t left, uint64_t pos)
{
	if (w->sink) /* a stream (an S3 upload): the bytes in order, no offsets */
		return left ? w->sink(w->sink_ud, p, left) : 0;
	while (left) {
		uint32_t k;
		uint64_t at;
		size_t n = sfw_seg_span(w, pos, left, &k, &at);
		int rc = k == w->cur ? 0 : sfw_next_segment(w, k);
		if (rc || (rc = cbi_pwrite_full(w->fd, p, n, at)))
			return rc;
		if (w->behind) /* advisory: the fsync of seal reports what fails */
			(void)sync_file_range(w->fd, (off_t)at, (off_t)n, SYNC_FILE_RANGE_WRITE);
		if (w->follow && w->flush_step) { /* copy mode: durable a step at a time */
			if (!w->fl_tried) {
				w->fl_tried = 1;
				w->fl = cbi_flusher_start(w->fd, w->flush_step);
			}
			cbi_flusher_wrote(w->fl, n);
		}
		p += n;
		left -= n;
		pos += n;
	}
	return 0;
}

/* Drop the current segment's pages below logical offset upto from the
 * page cache once written back (advisory): a copy in copy mode keeps a
 * window of pages, not the file. 0, or the failure of the flusher's
 * fdatasync so far: Linux reports a write-back error to one sync only, so
 * it fails the writer here, not at seal. */
static int sfw_drop_behind(cbi_sfw *w, uint64_t upto)
{
	uint64_t base = (uint64_t)w->cur * w->seg, a = CBI_MAX(w->dropped, base);
	if (w->fd >= 0 && upto > a) {
		off_t at = (off_t)(a - base), len = (off_t)(upto - a);
		(void)sync_file_range(w->fd, at, len,
				      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
		(void)posix_fadvise(w->fd, at, len, POSIX_FADV_DONTNEED);
	}
	w->dropped = upto;
	return cbi_flusher_error(w->fl);
}

/* Write the buffer at its logical offset, opening segments as needed.
 * After an error the writer can only be aborted. */
static int sfw_flush(cbi_sfw *w)
{
	/* Hash whole buffers, not each small append: an index of millions of
	 * 24-byte entries would otherwise cost millions of digest calls. With a
	 * pipe, its thread hashes the buffer while this one writes it out, and
	 * the next is filled meanwhile. */
	int rc = 0;
	if (w->follow) {
		/* the digest reads these bytes back once they are written */
		rc = sfw_pwrite(w, w->buf, w->used, w->off - w->used);
		uint64_t done = 0;
		if (!rc && !(rc = follow_publish(w->follow, w->off, &done)) && w->drop_step) {
			/* what the digest has read, and not the writer's last bytes */
			uint64_t upto = CBI_MIN(done, w->off > w->drop_behind ? w->off - w->drop_behind : 0);
			if (upto >= w->dropped + w->drop_step)
				rc = sfw_drop_behind(w, upto);
		}
	} else if (w->pipe && w->used > w->hashed) {
		uint8_t *b = w->buf;
		rc = cbi_dgpipe_put(w->pipe, b, w->hashed, w->used - w->hashed);
		if (!rc)
			rc = sfw_pwrite(w, b, w->used, w->off - w->used);
		/* b is the pipe's again (after an error too) */
		w->buf = cbi_dgpipe_get(w->pipe);
	} else {
		if (w->used > w->hashed && cbi_dg_update(w->dg, w->buf + w->hashed, w->used - w->hashed))
			return -EIO;
		rc = sfw_pwrite(w, w->buf, w->used, w->off - w->used);
	}
	if (rc)
		return rc;
	w->used = 0;
	w->hashed = 0;
	return 0;
}

static int sfw_pipe_update(void *ud, const void *data, size_t len)
{
	return cbi_dg_update(ud, data, len) ? -EIO : 0;
}

/* Start w's pipe of nbuf buffers and move what is buffered into one of
 * them. */
static int sfw_start_pipe(cbi_sfw *w, size_t nbuf)
{
	int rc = cbi_dgpipe_new(nbuf, SFW_BUF, sfw_pipe_update, w->dg, &w->pipe);
	if (rc)
		return rc;
	uint8_t *b = cbi_dgpipe_get(w->pipe);
	memcpy(b, w->buf, w->used);
	free(w->buf);
	w->buf = b;
	return 0;
}

int cbi_sfw_hash_async(cbi_sfw *w)
{
	if (w->pipe || w->follow)
		return 0;
	if (w->hashed)
		return -EINVAL;
	return sfw_start_pipe(w, SFW_PIPE_BUFS);
}

void cbi_sfw_copy_window(cbi_sfw *w, uint64_t lag, uint64_t drop_step, uint64_t drop_behind, uint64_t flush_step)
{
	w->lag = lag;
	w->drop_step = drop_step;
	w->drop_behind = drop_behind;
	w->flush_step = flush_step;
}

void cbi_sfw_write_behind(cbi_sfw *w)
{
	w->behind = 1;
}

int cbi_sfw_copy_mode(cbi_sfw *w)
{
	if (w->pipe || w->follow || w->hashed)
		return -EINVAL;
	if (w->sink) /* a stream: the digest on a thread, the sink in this one */
		return cbi_sfw_hash_async(w);
	/* what is flushed is hashed; the buffer's bytes are the thread's */
	int rc = follow_start(w, w->off - w->used);
	if (rc)
		return rc;
	w->behind = 1;
	w->dropped = w->off - w->used;
	return 0;
}

int cbi_sfw_write(cbi_sfw *w, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		if (w->used == SFW_BUF) {
			int rc = sfw_flush(w);
			if (rc)
				return rc;
		}
		size_t n = CBI_MIN(len, SFW_BUF - w->used);
		memcpy(w->buf + w->used, p, n);
		w->used += n;
		w->off += n;
		p += n;
		len -= n;
	}
	return 0;
}

int cbi_sfw_set_mac(cbi_sfw *w, const uint8_t key[32])
{
	if (w->off || w->pipe || w->follow)
		return -EINVAL;
	cbi_dg *d = NULL;
	int rc = cbi_dg_new(key, &d);
	if (rc)
		return rc;
	cbi_dg_free(w->dg);
	w->dg = d;
	return 0;
}

uint64_t cbi_sfw_offset(const cbi_sfw *w) { return w->off; }

uint32_t cbi_sfw_segments(const cbi_sfw *w) { return w->nseg; }

const char *cbi_sfw_final_path(const cbi_sfw *w) { return w->final; }

int cbi_sfw_seal(cbi_sfw *w, const uint8_t *trailer96, uint8_t digest[32])
{
	int rc = cbi_sfw_write(w, trailer96, 96);
	if (rc)
		return rc;
	if (w->follow) {
		/* the data out to the disk while the digest catches up, then the
		 * digest alone */
		if ((rc = sfw_flush(w)))
			return rc;
		rc = cbi_flusher_stop(w->fl); /* its failure is a failure of this sync */
		w->fl = NULL;
		if (!rc && fdatasync(w->fd) < 0)
			rc = -errno;
		int rc2 = follow_end(w, 0);
		if (rc || (rc = rc2))
			return rc;
	} else if (w->pipe) {
		/* everything to the pipe and out, then the digest alone */
		if ((rc = sfw_flush(w)) || (rc = cbi_dgpipe_drain(w->pipe)))
			return rc;
	} else if (w->used > w->hashed && cbi_dg_update(w->dg, w->buf + w->hashed, w->used - w->hashed))
		return -EIO;
	w->hashed = w->used;
	if (cbi_dg_final(w->dg, digest))
		return -EIO;
	/* The digest itself is not part of what it covers. */
	if (w->used + 32 > SFW_BUF && (rc = sfw_flush(w)))
		return rc;
	memcpy(w->buf + w->used, digest, 32);
	w->used += 32;
	w->hashed = w->used; /* the digest is not part of what it covers */
	w->off += 32;
	if ((rc = sfw_flush(w)))
		return rc;
	/* Earlier segments were synced when they were closed. */
	if (!w->sink && fsync(w->fd) < 0)
		return -errno;
	return 0;
}

int cbi_sfw_commit(cbi_sfw *w, cbi_error *err)
{
	if (w->sink)
		goto done;
	(void)cbi_flusher_stop(w->fl); /* stopped at seal; before fd is closed */
	w->fl = NULL;
	if (w->fd >= 0) {
		int fd = w->fd;
		w->fd = -1;
		if (close(fd) < 0) {
			int e = errno;
			const char *last = w->tmp;
			char tmp[4096];
			if (w->cur && !sfw_tmp_name(w, w->cur, tmp, sizeof tmp))
				last = tmp;
			return cbi_err(err, -e, "unable to close '%s': %s", last, strerror(e));
		}
	}
	/* The following segments first: the first segment's final name is what
	 * a scan sees, so a half-renamed set is never taken for a file. */
	char tmp[4096], fin[4096];
	for (uint32_t k = w->renamed + 1; k < w->nseg; k++) {
		if (sfw_tmp_name(w, k, tmp, sizeof tmp) ||
		    cbi_sfile_segment_name(w->final, k, fin, sizeof fin))
			return cbi_err(err, -ENAMETOOLONG, "path too long: '%s'", w->final);
		if (rename(tmp, fin) < 0)
			return cbi_err(err, -errno, "unable to rename '%s' to '%s': %s", tmp, fin,
				       strerror(errno));
		w->renamed = k;
	}
	if (rename(w->tmp, w->final) < 0)
		return cbi_err(err, -errno, "unable to rename '%s' to '%s': %s", w->tmp, w->final,
			       strerror(errno));
done:
	sfw_unlist(w);
	sfw_free_bufs(w);
	free(w);
	return 0;
}

void cbi_sfw_abort(cbi_sfw *w)
{
	if (!w)
		return;
	sfw_unlist(w);
	/* the pipe's threads first: a writer stage may be using fd */
	sfw_free_bufs(w);
	if (w->fd >= 0)
		close(w->fd);
	char name[4096];
	for (uint32_t k = 0; k < w->nseg; k++) {
		int rc = k && k <= w->renamed ? cbi_sfile_segment_name(w->final, k, name, sizeof name)
					      : sfw_tmp_name(w, k, name, sizeof name);
		if (!rc)
			unlink(name);
	}
	free(w);
}

void cbi_sfile_remove(const char *path)
{
	char name[4096];
	unlink(path);
	for (uint32_t k = 1; k < UINT32_MAX; k++)
		if (cbi_sfile_segment_name(path, k, name, sizeof name) || unlink(name) < 0)
			break;
}

/* ---------------------------------------------------------------- reader */

static cbi_sfr_opener sfr_opener;
static void *sfr_opener_ud;

void cbi_sfr_set_opener(cbi_sfr_opener fn, void *ud)
{
	sfr_opener = fn;
	sfr_opener_ud = ud;
}

void cbi_sfr_will_need(const cbi_sfr *r, uint64_t off, uint64_t len)
{
	if (off > r->size || len > r->size - off)
		return;
	if (r->ops) {
		if (r->ops->will_need)
			r->ops->will_need(r->rh, off, len);
	} else if (!r->segs) {
		(void)posix_fadvise(r->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
	}
}

void cbi_sfr_whole(const cbi_sfr *r, int on)
{
	if (r->ops && r->ops->whole)
		r->ops->whole(r->rh, on);
}

/* At most this many segment files of one reader are open at a time (besides
 * the first): a chain of large split images must not run out of file
 * descriptors, and reads are mostly sequential. */
#define SFR_MAX_OPEN 8

struct sfr_seg {
	uint64_t size;
	uint64_t used;      /* LRU tick */
	int fd;             /* -1 when closed */
};

struct sfr_segs {
	pthread_mutex_t mu; /* readers of one file may share it between threads */
	struct sfr_seg *s;
	uint64_t tick;
	unsigned nopen;
};

/* Open segment file name for reading: the final component is never a
 * symbolic link followed (a segment is always a file of its own; the
 * directories above may be links), and what was opened must be a regular
 * file (O_NONBLOCK: a FIFO planted at the name does not hang the open).
 * 0 with *fd and *st, -ENOENT, -CBI_EDAMAGED for anything but a regular
 * file, or another -errno. */
static int sfr_open_seg_file(const char *name, int *fd, struct stat *st)
{
	int f = open(name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (f < 0)
		return errno == ELOOP ? -CBI_EDAMAGED : -errno;
	if (fstat(f, st) < 0) {
		int e = -errno;
		close(f);
		return e;
	}
	if (!S_ISREG(st->st_mode)) {
		close(f);
		return -CBI_EDAMAGED;
	}
	int fl = fcntl(f, F_GETFL);
	if (fl < 0 || fcntl(f, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		int e = -errno;
		close(f);
		return e;
	}
	*fd = f;
	return 0;
}

/* Find the segments after the first one by name and check their sizes. */
static int sfr_open_segments(cbi_sfr *r, int kind, cbi_error *err)
{
	struct sfr_segs *g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	pthread_mutex_init(&g->mu, NULL);
	r->segs = g;
	char name[4096];
	size_t cap = 0;
	uint64_t total = 0;
	for (uint32_t k = 0;; k++) {
		struct stat st;
		if (k) {
			if (k == UINT32_MAX || cbi_sfile_segment_name(r->path, k, name, sizeof name))
				break;
			int fd, rc = sfr_open_seg_file(name, &fd, &st);
			if (rc == -ENOENT)
				break;
			if (rc == -CBI_EDAMAGED)
				return cbi_err(err, -EINVAL, "segment '%s' is not a regular file", name);
			if (rc)
				return cbi_err(err, rc, "unable to open segment '%s': %s", name, strerror(-rc));
			close(fd);
		}
		if (k == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct sfr_seg *t = realloc(g->s, nc * sizeof *t);
			if (!t)
				return -ENOMEM;
			g->s = t;
			cap = nc;
		}
		g->s[k].size = k ? (uint64_t)st.st_size : r->size;
		g->s[k].fd = k ? -1 : r->fd;
		g->s[k].used = 0;
		r->nseg = k + 1;
		if (total + g->s[k].size < total)
			return cbi_err(err, -CBI_EDAMAGED, "'%s': segments too large", r->path);
		total += g->s[k].size;
	}
	for (uint32_t k = 0; k < r->nseg; k++) {
		uint64_t sz = g->s[k].size;
		int last = k + 1 == r->nseg;
		if (sz > r->seg_size || (!last && sz < r->seg_size) || !sz) {
			int code = sz > r->seg_size ? -CBI_EDAMAGED : -CBI_ETRUNCATED;
			if (cbi_sfile_segment_name(r->path, k, name, sizeof name))
				name[0] = 0;
			return cbi_err(err, code, "'%s': segment '%s' is %llu bytes, expected %s%llu", r->path,
				       name, (unsigned long long)sz, last ? "at most " : "",
				       (unsigned long long)r->seg_size);
		}
	}
	r->size = total;
	/* The trailer magic at the logical end tells a complete set from one
	 * that lacks its last segments (a missing segment ends the set early). */
	uint8_t magic[8];
	int rc = cbi_sfr_pread(r, magic, 8, total - CBI_TRL_SIZE);
	if (rc)
		return cbi_err(err, rc, "unable to read '%s': %s", r->path, cbi_strerror(rc));
	if (!memcmp(magic, kind == CBI_KIND_IMAGE ? CBI_MAGIC_IMAGE_END : CBI_MAGIC_INDEX_END, 8))
		return 0;
	uint32_t last = r->nseg - 1;
	if (g->s[last].size == r->seg_size) {
		if (cbi_sfile_segment_name(r->path, last + 1, name, sizeof name))
			name[0] = 0;
		return cbi_err(err, -CBI_ETRUNCATED,
			       "'%s': segment '%s' is missing (no trailer after %u segment%s of %llu MiB)",
			       r->path, name, r->nseg, r->nseg > 1 ? "s" : "",
			       (unsigned long long)(r->seg_size / CBI_SEG_UNIT));
	}
	if (cbi_sfile_segment_name(r->path, last, name, sizeof name))
		name[0] = 0;
	return cbi_err(err, -CBI_ETRUNCATED,
		       "'%s': no trailer at the end of segment '%s': the file is unfinished or truncated",
		       r->path, name);
}

int cbi_sfr_open(const char *path, cbi_sfr **out, cbi_error *err)
{
	int rc;
	cbi_sfr *r = calloc(1, sizeof *r);
	if (!r)
		return cbi_err(err, -ENOMEM, "out of memory");
	cbi_strlcpy(r->path, path, sizeof r->path);
	r->nseg = 1;
	/* O_NONBLOCK: a FIFO planted at the name never hangs the open (cleared
	 * once the file is known to be a regular one) */
	r->fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (r->fd < 0) {
		int e = -errno;
		free(r);
		return cbi_err(err, e, "unable to open '%s': %s", path, strerror(-e));
	}
	struct stat st;
	if (fstat(r->fd, &st) < 0) {
		int e = -errno;
		cbi_sfr_close(r);
		return cbi_err(err, e, "unable to stat '%s': %s", path, strerror(-e));
	}
	if (!S_ISREG(st.st_mode)) {
		int e = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		cbi_sfr_close(r);
		return cbi_err(err, e, "'%s' is not a regular file", path);
	}
	int fl = fcntl(r->fd, F_GETFL);
	if (fl < 0 || fcntl(r->fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		int e = -errno;
		cbi_sfr_close(r);
		return cbi_err(err, e, "unable to open '%s': %s", path, strerror(-e));
	}
	if (sfr_opener && (rc = sfr_opener(sfr_opener_ud, r->fd, &st, &r->ops, &r->rh, err)) < 0) {
		cbi_sfr_close(r);
		return rc;
	}
	r->size = (uint64_t)st.st_size;
	if (r->size < CBI_HDR_SIZE + CBI_TRL_SIZE) {
		cbi_err(err, -CBI_ETRUNCATED, "'%s' is truncated (%llu bytes)", path,
			(unsigned long long)st.st_size);
		cbi_sfr_close(r);
		return -CBI_ETRUNCATED;
	}
	/* Only a valid header is trusted to say the file is split; anything
	 * else is read as one file and left to the caller's checks. */
	uint8_t b[CBI_HDR_SIZE];
	cbi_hdr h;
	rc = r->ops ? r->ops->pread(r->rh, b, sizeof b, 0) : cbi_pread_full(r->fd, b, sizeof b, 0);
	if (rc) {
		cbi_err(err, rc, "unable to read '%s': %s", path, cbi_strerror(rc));
		cbi_sfr_close(r);
		return rc;
	}
	if (!r->ops && cbi_hdr_decode(b, &h) == 0 && h.segment_mib) { /* an object is one file */
		r->seg_size = (uint64_t)h.segment_mib * CBI_SEG_UNIT;
		/* A first segment larger than a segment is a joined copy. */
		if (r->size <= r->seg_size && (rc = sfr_open_segments(r, h.kind, err))) {
			if (rc == -ENOMEM)
				cbi_err(err, rc, "out of memory");
			cbi_sfr_close(r);
			return rc;
		}
	}
	*out = r;
	return 0;
}

/* The fd of segment k, opened on demand; called with the lock held. */
static int sfr_seg_fd(const cbi_sfr *r, uint32_t k, int *fd)
{
	struct sfr_segs *g = r->segs;
	struct sfr_seg *s = &g->s[k];
	s->used = ++g->tick;
	if (s->fd >= 0) {
		*fd = s->fd;
		return 0;
	}
	if (g->nopen >= SFR_MAX_OPEN) {
		uint32_t lru = 0;
		for (uint32_t i = 1; i < r->nseg; i++)
			if (g->s[i].fd >= 0 && (!lru || g->s[i].used < g->s[lru].used))
				lru = i;
		if (lru) {
			close(g->s[lru].fd);
			g->s[lru].fd = -1;
			g->nopen--;
		}
	}
	char name[4096];
	int rc = cbi_sfile_segment_name(r->path, k, name, sizeof name);
	if (rc)
		return rc;
	struct stat st;
	int fd2;
	if ((rc = sfr_open_seg_file(name, &fd2, &st)))
		return rc == -ENOENT ? -CBI_ETRUNCATED : rc;
	if ((uint64_t)st.st_size != s->size) {
		/* not the file the open found there */
		close(fd2);
		return -CBI_EDAMAGED;
	}
	s->fd = fd2;
	g->nopen++;
	*fd = s->fd;
	return 0;
}

int cbi_sfr_pread(const cbi_sfr *r, void *buf, size_t len, uint64_t off)
{
	if (off > r->size || len > r->size - off)
		return -CBI_ETRUNCATED;
	if (r->ops)
		return r->ops->pread(r->rh, buf, len, off);
	if (!r->segs)
		return cbi_pread_full(r->fd, buf, len, off);
	struct sfr_segs *g = r->segs;
	uint8_t *p = buf;
	int rc = 0;
	pthread_mutex_lock(&g->mu);
	while (len && !rc) {
		/* every segment but the last holds exactly seg_size bytes */
		uint32_t k = (uint32_t)CBI_MIN(off / r->seg_size, (uint64_t)(r->nseg - 1));
		uint64_t at = off - (uint64_t)k * r->seg_size;
		size_t n = (size_t)CBI_MIN((uint64_t)len, g->s[k].size - at);
		int fd = -1;
		if (!(rc = sfr_seg_fd(r, k, &fd)))
			rc = cbi_pread_full(fd, p, n, at);
		p += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&g->mu);
	return rc;
}

int cbi_sfr_check_digest(const cbi_sfr *r, cbi_progress_fn fn, void *ud)
{
	return cbi_sfr_check_digest_mac(r, NULL, fn, ud);
}

int cbi_sfr_check_digest_mac(const cbi_sfr *r, const uint8_t *mac_key, cbi_progress_fn fn, void *ud)
{
	const size_t bsz = 4u << 20;
	uint8_t *buf = malloc(bsz);
	cbi_dg *dg = NULL;
	int rc = 0;
	if (!buf || cbi_dg_new(mac_key, &dg)) {
		rc = -ENOMEM;
		goto end;
	}
	posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	cbi_sfr_whole(r, 1);
	uint64_t end = r->size - 32, off = 0;
	while (off < end) {
		size_t n = (size_t)CBI_MIN((uint64_t)bsz, end - off);
		if ((rc = cbi_sfr_pread(r, buf, n, off)) || (rc = cbi_dg_update(dg, buf, n)))
			goto end;
		off += n;
		if (fn && fn(ud, off, end)) {
			rc = -ECANCELED;
			goto end;
		}
	}
	uint8_t want[32], got[32];
	if ((rc = cbi_sfr_pread(r, want, 32, end)) || (rc = cbi_dg_final(dg, got)))
		goto end;
	if (cbi_ct_memcmp(want, got, 32))
		rc = -CBI_EDAMAGED;
end:
	cbi_sfr_whole(r, 0);
	cbi_dg_free(dg);
	free(buf);
	return rc;
}

void cbi_sfr_close(cbi_sfr *r)
{
	if (!r)
		return;
	if (r->ops && r->ops->close)
		r->ops->close(r->rh);
	if (r->fd >= 0)
		close(r->fd);
	struct sfr_segs *g = r->segs;
	if (g) {
		for (uint32_t k = 1; g->s && k < r->nseg; k++)
			if (g->s[k].fd >= 0)
				close(g->s[k].fd);
		pthread_mutex_destroy(&g->mu);
		free(g->s);
		free(g);
	}
	free(r);
}

int cbi_sfile_copy_joined(const char *path, int out_fd, cbi_error *err)
{
	cbi_sfr *r = NULL;
	int rc = cbi_sfr_open(path, &r, err);
	if (rc)
		return rc;
	const size_t bsz = 4u << 20;
	uint8_t *buf = malloc(bsz);
	if (!buf) {
		cbi_sfr_close(r);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	for (uint64_t off = 0; off < r->size && !rc;) {
		size_t n = (size_t)CBI_MIN((uint64_t)bsz, r->size - off);
		if ((rc = cbi_sfr_pread(r, buf, n, off)))
			cbi_err(err, rc, "unable to read '%s': %s", path, cbi_strerror(rc));
		else if ((rc = cbi_pwrite_full(out_fd, buf, n, off)))
			cbi_err(err, rc, "unable to write a copy of '%s': %s", path, cbi_strerror(rc));
		off += n;
	}
	free(buf);
	cbi_sfr_close(r);
	return rc;
}
