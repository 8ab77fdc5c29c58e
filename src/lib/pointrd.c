/* pointrd.c - the point reader (cbimg.h, "point reader"): random access to
 * the disk of a point, for mount, the nbdkit plugin and partition restore.
 *
 * A read of block i takes the tip's index entry of i (its owner seq and
 * hash; the index was checked whole when the chain was opened), then the
 * owner's image (opened once by the chain reader, under the reader's lock:
 * the chain reader is not thread-safe) and the image's table entry of i,
 * found by a binary search of single entries with a small window per
 * thread, so that no table window of the image is shared (image.h's thread
 * rules: cbi_image_find() is for one thread). The record is then read,
 * authenticated, decompressed and checked against the index hash by
 * cbi_image_read_block() with the thread's contexts.
 *
 * The cache holds decompressed blocks that passed those checks, at most
 * max_ent of them (plus, for a moment, one per reader that finds every
 * cached block in use), least recently used out first. A block being loaded
 * is in the cache already (CE_LOADING): a second reader of it waits for the
 * first instead of decompressing it again (the kernel reads a file in
 * pieces smaller than a block, often several at once). A failed load is
 * never cached: the next read tries the files again. */
#define _GNU_SOURCE
#include <blkid.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chainrd.h"
#include "image.h"
#include "index.h"
#include "job.h"
#include "util.h"

#define WIN 256u         /* table and index entries in a thread's windows */

enum { CE_LOADING = 1, CE_READY = 2 };

typedef struct cent {
	uint64_t block;
	uint8_t *data;          /* block_size bytes */
	int state;              /* CE_LOADING, CE_READY, or the failure's code (< 0) */
	char *msg;              /* the failure's message */
	unsigned refs;
	struct cent *hnext;     /* hash chain (loading and ready entries) */
	struct cent *prev, *next; /* LRU list of ready entries, most recent first */
} cent;

/* A reading thread's contexts, taken from a free list for one read. */
typedef struct pctx {
	ZSTD_DCtx *dctx;
	cbi_cx *cx;
	uint8_t *scratch;       /* a record */
	cbi_image *wimg;        /* image of the table window */
	uint64_t wfirst, wn;
	uint8_t twin[WIN * CBI_TAB_ENT_SIZE];
	cbi_index_win xw;       /* index window */
	struct pctx *next;
} pctx;

struct cbi_pointrd {
	cbi_chain *c;
	cbi_index *x;           /* the tip's index, owned by c */
	cbi_point pt;
	uint32_t bs, len;
	uint64_t size, n_blocks;
	cbi_joblock lk;
	void (*log)(void *ud, const char *msg);
	void *log_ud;
	int allow_bad;          /* read bad ranges as zeros (they fail with EIO otherwise) */

	pthread_mutex_t mu;     /* everything below, and the chain reader */
	pthread_cond_t cv;      /* a load finished */
	cent **ht;
	size_t nbuckets;        /* a power of two */
	cent lru;               /* sentinel: lru.next is the most recent */
	size_t count, max_ent;
	pctx *free_ctx;
	cbi_pointrd_stats st;
};

/* ---- contexts ---- */

static void ctx_free(pctx *x)
{
	if (x) {
		ZSTD_freeDCtx(x->dctx);
		cbi_index_win_free(&x->xw);
		cbi_cx_free(x->cx);
		free(x->scratch);
		free(x);
	}
}

static pctx *ctx_get(cbi_pointrd *r)
{
	pthread_mutex_lock(&r->mu);
	pctx *x = r->free_ctx;
	if (x)
		r->free_ctx = x->next;
	pthread_mutex_unlock(&r->mu);
	if (x)
		return x;
	x = calloc(1, sizeof *x);
	if (x && (!(x->dctx = ZSTD_createDCtx()) || !(x->cx = cbi_cx_new()) ||
		  !(x->scratch = malloc(cbi_image_scratch_size(r->bs))))) {
		ctx_free(x);
		x = NULL;
	}
	return x;
}

static void ctx_put(cbi_pointrd *r, pctx *x)
{
	if (!x)
		return;
	pthread_mutex_lock(&r->mu);
	x->next = r->free_ctx;
	r->free_ctx = x;
	pthread_mutex_unlock(&r->mu);
}

/* ---- locating a block (no lock but for the chain reader) ---- */

/* Index entry of block i, through x's window. */
static int index_entry(cbi_pointrd *r, pctx *x, uint64_t i, cbi_idx_ent *e, cbi_error *err)
{
	int rc = cbi_index_get_w(r->x, &x->xw, i, e);
	if (rc)
		return cbi_err(err, rc, "unable to read index '%s': %s", r->x->f->path, cbi_strerror(rc));
	return 0;
}

static int tab_entry(cbi_image *m, uint64_t k, cbi_tab_ent *e)
{
	uint8_t b[CBI_TAB_ENT_SIZE];
	int rc = cbi_sfr_pread(m->f, b, sizeof b, m->trl.table_offset + k * CBI_TAB_ENT_SIZE);
	if (!rc)
		cbi_tab_ent_decode(b, e);
	return rc;
}

/* Binary search of the window for block; -ENOENT if not in it. */
static int win_find(pctx *x, uint64_t block, cbi_tab_ent *e)
{
	uint64_t lo = 0, hi = x->wn;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		cbi_tab_ent_decode(x->twin + mid * CBI_TAB_ENT_SIZE, e);
		if (e->block == block)
			return 0;
		if (e->block < block)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -ENOENT;
}

/* The table entry of block in image m (sorted by block): single entries
 * until at most WIN remain, then a window from there (the next blocks of a
 * sequential read are in it). -ENOENT if m holds no record of block. */
static int table_find(pctx *x, cbi_image *m, uint64_t block, cbi_tab_ent *e)
{
	uint64_t lo = 0, hi = m->trl.record_count;
	if (x->wimg == m && x->wn) {
		cbi_tab_ent a, z;
		cbi_tab_ent_decode(x->twin, &a);
		cbi_tab_ent_decode(x->twin + (x->wn - 1) * CBI_TAB_ENT_SIZE, &z);
		if (block >= a.block && block <= z.block)
			return win_find(x, block, e);
		if (block > z.block)
			lo = x->wfirst + x->wn;
		else
			hi = x->wfirst;
	}
	while (hi - lo > WIN) {
		uint64_t mid = lo + (hi - lo) / 2;
		int rc = tab_entry(m, mid, e);
		if (rc)
			return rc;
		if (e->block == block)
			return 0;
		if (e->block < block)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo >= hi)
		return -ENOENT;
	uint64_t n = CBI_MIN((uint64_t)WIN, m->trl.record_count - lo);
	x->wimg = NULL;
	int rc = cbi_sfr_pread(m->f, x->twin, (size_t)(n * CBI_TAB_ENT_SIZE),
			       m->trl.table_offset + lo * CBI_TAB_ENT_SIZE);
	if (!rc)
		rc = cbi_image_check_table(m, x->twin, lo, n); /* I7, as restore */
	if (rc)
		return rc;
	x->wimg = m;
	x->wfirst = lo;
	x->wn = n;
	return win_find(x, block, e);
}

/* Read stored block i (index entry e) into out, checked. */
static int load_block(cbi_pointrd *r, pctx *x, uint64_t i, const cbi_idx_ent *e, uint8_t *out, cbi_error *err)
{
	if (e->owner >= r->len)
		return cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: its owner seq %u is not in the chain",
			       r->x->f->path, (unsigned long long)i, e->owner);
	cbi_image *m = NULL;
	pthread_mutex_lock(&r->mu);
	int rc = cbi_chain_image(r->c, e->owner, &m, err);
	pthread_mutex_unlock(&r->mu);
	if (rc)
		return rc;
	cbi_tab_ent te;
	rc = table_find(x, m, i, &te);
	if (rc == -ENOENT)
		return cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: missing from the image", m->f->path,
			       (unsigned long long)i);
	if (rc == -CBI_EDAMAGED)
		return cbi_err(err, rc, "'%s': block %llu: block table out of order", m->f->path,
			       (unsigned long long)i);
	if (rc)
		return cbi_err(err, rc, "'%s': block %llu: %s", m->f->path, (unsigned long long)i, cbi_strerror(rc));
	cbi_error why = { 0 };
	rc = cbi_image_read_block(m, &te, x->dctx, x->cx, x->scratch, out, e->hash, &why);
	if (rc < 0)
		return cbi_err(err, rc, "'%s': block %llu: %s", m->f->path, (unsigned long long)i, why.msg);
	return 0;
}

/* ---- the cache (under mu) ---- */

static size_t bucket(const cbi_pointrd *r, uint64_t block)
{
	return (size_t)((block * 0x9e3779b97f4a7c15ull) >> 20) & (r->nbuckets - 1);
}

static cent *ht_find(cbi_pointrd *r, uint64_t block)
{
	for (cent *e = r->ht[bucket(r, block)]; e; e = e->hnext)
		if (e->block == block)
			return e;
	return NULL;
}

static void ht_remove(cbi_pointrd *r, cent *e)
{
	for (cent **p = &r->ht[bucket(r, e->block)]; *p; p = &(*p)->hnext)
		if (*p == e) {
			*p = e->hnext;
			r->count--;
			return;
		}
}

static void lru_unlink(cent *e)
{
	if (e->prev) {
		e->prev->next = e->next;
		e->next->prev = e->prev;
		e->prev = e->next = NULL;
	}
}

static void lru_front(cbi_pointrd *r, cent *e)
{
	lru_unlink(e);
	e->next = r->lru.next;
	e->prev = &r->lru;
	r->lru.next->prev = e;
	r->lru.next = e;
}

static void cent_free(cent *e)
{
	if (e) {
		free(e->data);
		free(e->msg);
		free(e);
	}
}

/* An entry for a new block: the least recently used unreferenced ready
 * entry when the cache is full, else a new one. NULL: out of memory. */
static cent *cent_take(cbi_pointrd *r)
{
	cent *e = NULL;
	if (r->count >= r->max_ent)
		for (cent *v = r->lru.prev; v != &r->lru; v = v->prev)
			if (!v->refs) {
				e = v;
				break;
			}
	if (e) {
		lru_unlink(e);
		ht_remove(r, e);
		return e;
	}
	e = calloc(1, sizeof *e);
	if (e && !(e->data = malloc(r->bs))) {
		free(e);
		e = NULL;
	}
	return e;
}

/* Drop a reference; an entry no longer wanted is freed. */
static void cent_release(cbi_pointrd *r, cent *e)
{
	if (--e->refs)
		return;
	if (e->state < 0) {
		cent_free(e); /* failed: already out of the table */
	} else if (r->count > r->max_ent) {
		lru_unlink(e);
		ht_remove(r, e);
		cent_free(e);
	}
}

/* Block i held in the cache (loaded now if it is not), with a reference:
 * *out, to cent_release() under mu. Zero blocks: 1 and *out NULL. */
static int get_block(cbi_pointrd *r, pctx **xp, uint64_t i, cent **out, cbi_error *err)
{
	*out = NULL;
	pthread_mutex_lock(&r->mu);
	cent *e = ht_find(r, i);
	if (e) {
		e->refs++;
		if (e->state == CE_READY) {
			r->st.hits++;
			lru_front(r, e);
		}
		while (e->state == CE_LOADING)
			pthread_cond_wait(&r->cv, &r->mu);
		int rc = e->state < 0 ? cbi_err(err, e->state, "%s", e->msg ? e->msg : cbi_strerror(e->state)) : 0;
		if (rc)
			cent_release(r, e);
		else
			*out = e;
		pthread_mutex_unlock(&r->mu);
		return rc;
	}
	pthread_mutex_unlock(&r->mu);

	int rc;
	if (!*xp && !(*xp = ctx_get(r)))
		return cbi_err(err, -ENOMEM, "out of memory");
	cbi_idx_ent ie;
	if ((rc = index_entry(r, *xp, i, &ie, err)))
		return rc;
	if (ie.flags & CBI_IDX_ZERO) {
		pthread_mutex_lock(&r->mu);
		r->st.zero_blocks++;
		pthread_mutex_unlock(&r->mu);
		return 1;
	}
	pthread_mutex_lock(&r->mu);
	if ((e = ht_find(r, i))) { /* another reader got there meanwhile */
		pthread_mutex_unlock(&r->mu);
		return get_block(r, xp, i, out, err);
	}
	if (!(e = cent_take(r))) {
		pthread_mutex_unlock(&r->mu);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	e->block = i;
	e->state = CE_LOADING;
	e->refs = 1;
	e->hnext = r->ht[bucket(r, i)];
	r->ht[bucket(r, i)] = e;
	r->count++;
	r->st.misses++;
	pthread_mutex_unlock(&r->mu);

	rc = load_block(r, *xp, i, &ie, e->data, err);

	pthread_mutex_lock(&r->mu);
	if (rc) {
		ht_remove(r, e);
		e->state = rc;
		free(e->msg);
		e->msg = strdup(err && err->msg[0] ? err->msg : cbi_strerror(rc));
		cent_release(r, e);
	} else {
		e->state = CE_READY;
		lru_front(r, e);
		*out = e;
	}
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/* A read failed with e1: counted, logged, and the caller's error. */
static void read_failed(cbi_pointrd *r, const cbi_error *e1, cbi_error *err)
{
	if (err)
		*err = *e1;
	pthread_mutex_lock(&r->mu);
	r->st.failures++;
	pthread_mutex_unlock(&r->mu);
	if (r->log)
		r->log(r->log_ud, e1->msg);
}

/* Does [off, off + len) meet a bad range of the point? 1, counted as a
 * failure, logged and in err; else 0. */
static int bad_range(cbi_pointrd *r, uint64_t off, size_t len, cbi_error *err)
{
	cbi_badrange b;
	if (!cbi_badmap_find(&r->x->bad, off, len, &b))
		return 0;
	cbi_error e1;
	cbi_err(&e1, -EIO, "'%s': bytes %llu-%llu were unreadable on the source when it was backed up "
		"(a bad range of backup --rescue)", r->pt.index_file, (unsigned long long)b.off,
		(unsigned long long)(b.off + b.len - 1));
	read_failed(r, &e1, err);
	return 1;
}

int64_t cbi_pointrd_pread(cbi_pointrd *r, void *buf, size_t len, uint64_t off, cbi_error *err)
{
	if (off >= r->size)
		return 0;
	len = (size_t)CBI_MIN((uint64_t)len, r->size - off);
	if (!r->allow_bad && bad_range(r, off, len, err))
		return -EIO;
	pthread_mutex_lock(&r->mu);
	r->st.reads++;
	pthread_mutex_unlock(&r->mu);
	pctx *x = NULL;
	uint8_t *p = buf;
	uint64_t end = off + len;
	int rc = 0;
	while (off < end) {
		uint64_t i = off / r->bs, in = off - i * r->bs;
		size_t n = (size_t)CBI_MIN((uint64_t)r->bs - in, end - off);
		cent *e;
		cbi_error e1 = { 0 };
		rc = get_block(r, &x, i, &e, &e1);
		if (rc < 0) {
			read_failed(r, &e1, err);
			break;
		}
		if (!e) {
			memset(p, 0, n);
		} else {
			memcpy(p, e->data + in, n);
			pthread_mutex_lock(&r->mu);
			cent_release(r, e);
			pthread_mutex_unlock(&r->mu);
		}
		rc = 0;
		p += n;
		off += n;
	}
	ctx_put(r, x);
	return rc < 0 ? rc : (int64_t)len;
}

/* ---- open, close ---- */

int cbi_pointrd_open(const cbi_pointrd_opts *o, cbi_pointrd **out, cbi_error *err)
{
	*out = NULL;
	if (!o->point)
		return cbi_err(err, -CBI_EUSAGE, "a point is required");
	cbi_pointrd *r = calloc(1, sizeof *r);
	if (!r)
		return cbi_err(err, -ENOMEM, "out of memory");
	r->lk.fd = -1;
	r->lru.next = r->lru.prev = &r->lru;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->log = o->log;
	r->log_ud = o->log_ud;
	r->allow_bad = o->allow_bad;
	cbi_chain_opts co = { .pass = o->pass, .pass_ud = o->pass_ud, .state_dir = o->state_dir };
	int rc = cbi_chain_open(o->point, &co, &r->c, err);
	if (rc)
		goto fail;
	r->x = cbi_chain_tip_index(r->c);
	r->len = cbi_chain_len(r->c);
	const cbi_point *tip = cbi_chain_point(r->c, r->len - 1);
	if (tip)
		r->pt = *tip;
	r->bs = r->x->hdr.block_size;
	r->size = r->x->hdr.source_size;
	r->n_blocks = r->x->hdr.n_blocks;
	/* the runs once, before threads share the index (cbi_index_get_w) */
	if ((rc = cbi_index_load_runs(r->x))) {
		rc = cbi_err(err, rc, "unable to read index '%s': %s", r->x->f->path, cbi_strerror(rc));
		goto fail;
	}
	if (o->lock) {
		char dir[4096];
		cbi_dirname(r->x->f->path, dir, sizeof dir);
		if ((rc = cbi_job_lock_shared_at(dir, cbi_chain_lock_offset(r->x->hdr.chain_id), &r->lk, err))) {
			/* a prune holds the chain: say so, and who, when its holder
			 * byte tells (job.h); else the message above stands */
			const cbi_hdr *h = &r->x->hdr;
			int op = -1;
			long pid = 0;
			if (rc == -CBI_ELOCKED)
				cbi_job_lock_holder(dir, cbi_state_key(h->host, h->source_id, h->job), &op, &pid);
			if (op == CBI_JOB_OP_PRUNE) {
				char who[32] = "", msg[sizeof err->msg];
				if (pid)
					snprintf(who, sizeof who, "pid %ld", pid);
				cbi_lock_refusal(msg, sizeof msg, op, who, h->job, h->source_path, dir);
				rc = cbi_err(err, rc, "%s: its chain cannot be opened until it ends", msg);
			}
			goto fail;
		}
	}
	uint64_t cache = o->cache_bytes ? o->cache_bytes : CBI_POINTRD_CACHE;
	r->max_ent = (size_t)CBI_MAX(cache / r->bs, 4);
	for (r->nbuckets = 64; r->nbuckets < 2 * r->max_ent && r->nbuckets < (1u << 24);)
		r->nbuckets *= 2;
	if (!(r->ht = calloc(r->nbuckets, sizeof *r->ht))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	*out = r;
	return 0;
fail:
	cbi_pointrd_close(r);
	return rc;
}

uint64_t cbi_pointrd_size(const cbi_pointrd *r)
{
	return r->size;
}

const cbi_point *cbi_pointrd_point(const cbi_pointrd *r)
{
	return &r->pt;
}

void cbi_pointrd_stats_get(cbi_pointrd *r, cbi_pointrd_stats *s)
{
	pthread_mutex_lock(&r->mu);
	*s = r->st;
	s->cache_blocks = r->count;
	s->cache_max = r->max_ent;
	pthread_mutex_unlock(&r->mu);
}

void cbi_pointrd_close(cbi_pointrd *r)
{
	if (!r)
		return;
	for (size_t b = 0; r->ht && b < r->nbuckets; b++)
		for (cent *e = r->ht[b], *n; e; e = n) {
			n = e->hnext;
			cent_free(e);
		}
	free(r->ht);
	for (pctx *x = r->free_ctx, *n; x; x = n) {
		n = x->next;
		ctx_free(x);
	}
	cbi_job_unlock(&r->lk);
	cbi_chain_close(r->c);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

/* ---- partitions (libblkid, on a sparse copy of the sectors it needs) ---- */

#define PROBE_SPAN (1u << 20) /* copied at the start and end of the disk and of each partition */

/* Copy [off, off + len) of the disk into fd at the same offset. */
static int copy_range(cbi_pointrd *r, int fd, uint64_t off, uint64_t len, uint8_t *buf, cbi_error *err)
{
	if (off >= r->size)
		return 0;
	len = CBI_MIN(len, r->size - off);
	while (len) {
		size_t n = (size_t)CBI_MIN(len, (uint64_t)PROBE_SPAN);
		int64_t got = cbi_pointrd_pread(r, buf, n, off, err);
		if (got < 0)
			return (int)got;
		int rc = cbi_pwrite_full(fd, buf, (size_t)got, off);
		if (rc)
			return cbi_err(err, rc, "unable to probe the partition table: %s", cbi_strerror(rc));
		off += (uint64_t)got;
		len -= (uint64_t)got;
		if (!got)
			break;
	}
	return 0;
}

static int copy_ends(cbi_pointrd *r, int fd, uint64_t off, uint64_t len, uint8_t *buf, cbi_error *err)
{
	int rc = copy_range(r, fd, off, CBI_MIN(len, (uint64_t)PROBE_SPAN), buf, err);
	if (!rc && len > PROBE_SPAN)
		rc = copy_range(r, fd, off + len - PROBE_SPAN, PROBE_SPAN, buf, err);
	return rc;
}

/* The EBR chain of an MBR extended partition at [start, start + size): each
 * EBR's sector, so that libblkid finds the logical partitions. */
static int copy_ebrs(cbi_pointrd *r, int fd, uint64_t start, uint64_t size, uint8_t *buf, cbi_error *err)
{
	uint64_t cur = start;
	for (int k = 0; k < CBI_MAX_PARTS; k++) {
		int rc = copy_range(r, fd, cur, 512, buf, err);
		if (rc)
			return rc;
		if (buf[510] != 0x55 || buf[511] != 0xaa)
			return 0;
		const uint8_t *link = buf + 446 + 16;
		uint8_t type = link[4];
		uint64_t rel = ld32(link + 8);
		if (!(type == 0x05 || type == 0x0f || type == 0x85) || !rel || rel * 512 >= size)
			return 0;
		cur = start + rel * 512;
	}
	return 0;
}

/* The file system at [off, off + size) of fd: type and uuid. */
static void probe_fs(int fd, uint64_t off, uint64_t size, char *type, size_t tsz, char *uuid, size_t usz)
{
	type[0] = 0;
	if (uuid)
		uuid[0] = 0;
	blkid_probe pr = blkid_new_probe();
	if (!pr)
		return;
	const char *v;
	if (!blkid_probe_set_device(pr, fd, (blkid_loff_t)off, (blkid_loff_t)size) &&
	    !blkid_probe_enable_superblocks(pr, 1) &&
	    !blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID) &&
	    !blkid_probe_enable_partitions(pr, 0) && blkid_do_safeprobe(pr) == 0) {
		if (!blkid_probe_lookup_value(pr, "TYPE", &v, NULL))
			cbi_strlcpy(type, v, tsz);
		if (uuid && !blkid_probe_lookup_value(pr, "UUID", &v, NULL))
			cbi_strlcpy(uuid, v, usz);
	}
	blkid_free_probe(pr);
}

/* Partition table of fd: m->pttype and m->parts; *ext: an extended
 * partition's start and size (0 if none). */
static void probe_table(int fd, uint64_t size, cbi_disk_map *m, uint64_t ext[2])
{
	ext[0] = ext[1] = 0;
	m->pttype[0] = 0;
	m->nparts = 0;
	blkid_probe pr = blkid_new_probe();
	if (!pr)
		return;
	const char *v;
	blkid_partlist ls;
	if (blkid_probe_set_device(pr, fd, 0, (blkid_loff_t)size) || blkid_probe_enable_superblocks(pr, 0) ||
	    blkid_probe_enable_partitions(pr, 1) || blkid_do_safeprobe(pr) != 0 ||
	    blkid_probe_lookup_value(pr, "PTTYPE", &v, NULL)) {
		blkid_free_probe(pr);
		return;
	}
	cbi_strlcpy(m->pttype, v, sizeof m->pttype); /* v lives only until the next call */
	if (!(ls = blkid_probe_get_partitions(pr))) {
		blkid_free_probe(pr);
		return;
	}
	int n = blkid_partlist_numof_partitions(ls);
	for (int k = 0; k < n && m->nparts < CBI_MAX_PARTS; k++) {
		blkid_partition p = blkid_partlist_get_partition(ls, k);
		blkid_loff_t s = blkid_partition_get_start(p), z = blkid_partition_get_size(p);
		int no = blkid_partition_get_partno(p);
		if (s < 0 || z <= 0 || no <= 0 || (uint64_t)s * 512 >= size || (uint64_t)z * 512 > size - (uint64_t)s * 512)
			continue; /* beyond the disk: nothing to show */
		if (blkid_partition_is_extended(p)) {
			ext[0] = (uint64_t)s * 512;
			ext[1] = (uint64_t)z * 512;
			continue;
		}
		cbi_part *q = &m->parts[m->nparts++];
		memset(q, 0, sizeof *q);
		q->number = (unsigned)no;
		q->offset = (uint64_t)s * 512;
		q->size = (uint64_t)z * 512;
	}
	blkid_free_probe(pr);
}

int cbi_pointrd_map(cbi_pointrd *r, cbi_disk_map *m, cbi_error *err)
{
	memset(m, 0, sizeof *m);
	uint8_t *buf = malloc(PROBE_SPAN);
	int fd = memfd_create("cbimg-probe", MFD_CLOEXEC);
	int rc = 0;
	if (!buf || fd < 0 || ftruncate(fd, (off_t)r->size) < 0) {
		rc = cbi_err(err, buf ? -errno : -ENOMEM, "unable to probe the partition table: %s",
			     cbi_strerror(buf ? -errno : -ENOMEM));
		goto end;
	}
	if ((rc = copy_ends(r, fd, 0, r->size, buf, err)))
		goto end;
	uint64_t ext[2];
	probe_table(fd, r->size, m, ext);
	if (ext[1]) {
		if ((rc = copy_ebrs(r, fd, ext[0], ext[1], buf, err)))
			goto end;
		probe_table(fd, r->size, m, ext);
	}
	/* A file system on the whole disk wins over an MBR: the boot sector of
	 * FAT and exFAT ends in 0x55 0xaa, which libblkid also takes for an MBR
	 * (of nonsense or no partitions). */
	probe_fs(fd, 0, r->size, m->fstype, sizeof m->fstype, NULL, 0);
	if (m->fstype[0] && (!m->nparts || !strcmp(m->pttype, "dos"))) {
		m->pttype[0] = 0;
		m->nparts = 0;
	}
	if (!m->pttype[0])
		goto end;
	m->fstype[0] = 0;
	for (size_t k = 0; k < m->nparts; k++) {
		cbi_part *q = &m->parts[k];
		if ((rc = copy_ends(r, fd, q->offset, q->size, buf, err)))
			goto end;
		probe_fs(fd, q->offset, q->size, q->fstype, sizeof q->fstype, q->uuid, sizeof q->uuid);
	}
end:
	if (fd >= 0)
		close(fd);
	free(buf);
	return rc;
}
