/* restore.c - cbi_restore(): write a disk exactly as it was at a point.
 * Every block is checked against the point's index before it is written. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chainrd.h"
#include "image.h"
#include "index.h"
#include "pool.h"
#include "source.h"
#include "target.h"
#include "util.h"

#define BATCH_BYTES (4u << 20)   /* blocks a worker takes at a time */
#define HINT_AHEAD_BYTES (32u << 20) /* records named ahead of the planner on S3 */

/* A resolved point: its chain (the chain reader, chainrd.h, which opens,
 * unlocks and checks it, and opens its images) and the point's index. */
typedef struct cbi_resolved {
	cbi_chain *c;
	cbi_index *index;       /* index of the requested point (owned by c) */
} cbi_resolved;

static void resolved_free(cbi_resolved *v)
{
	cbi_chain_close(v->c);
	memset(v, 0, sizeof *v);
}

/* Find the point that file belongs to, its chain and its index, checked by
 * the chain reader: everything restore takes from the index is authentic. */
static int resolve(const char *file, const cbi_restore_opts *o, cbi_resolved *v, cbi_error *err)
{
	cbi_chain_opts co = { .pass = o->pass, .pass_ud = o->pass_ud, .state_dir = o->state_dir };
	memset(v, 0, sizeof *v);
	int rc = cbi_chain_open(file, &co, &v->c, err);
	if (!rc)
		v->index = cbi_chain_tip_index(v->c);
	return rc;
}

/* The image of seq: a failure is remembered by the chain reader with its
 * message, so a second call fails the same way, err NULL or not. */
static int get_image(cbi_resolved *v, uint32_t seq, cbi_image **out, cbi_error *err)
{
	return cbi_chain_image(v->c, seq, out, err);
}

/* Where block i, with index entry e, is: unless it is a zero block, its
 * image and table entry. Calling thread only (image table windows). */
static int locate_block(cbi_resolved *v, uint64_t i, const cbi_idx_ent *e, cbi_image **img, cbi_tab_ent *te,
			cbi_error *err)
{
	*img = NULL;
	if (e->flags & CBI_IDX_ZERO)
		return 0;
	cbi_image *m = NULL;
	int rc = get_image(v, e->owner, &m, err);
	if (rc)
		return rc;
	rc = cbi_image_find(m, i, te);
	if (rc == -ENOENT)
		return cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: missing from the image", m->f->path,
			       (unsigned long long)i);
	if (rc == -CBI_EDAMAGED) /* I7: restore enforces the table order too */
		return cbi_err(err, rc, "'%s': block %llu: block table out of order", m->f->path,
			       (unsigned long long)i);
	if (rc)
		return cbi_err(err, rc, "'%s': block %llu: %s", m->f->path, (unsigned long long)i,
			       cbi_strerror(rc));
	*img = m;
	return 0;
}

static int read_entry(cbi_resolved *v, uint64_t i, cbi_idx_ent *e, cbi_error *err)
{
	int rc = cbi_index_get(v->index, i, e);
	return rc ? cbi_err(err, rc, "unable to read index '%s': %s", v->index->f->path, cbi_strerror(rc)) : 0;
}

/* ---- the loop, on the worker pool (pool.h): plan (calling thread) fills a
 * batch of blocks with their index entries, images and table entries
 * (cheap, and not thread-safe), workers read, authenticate, decompress and
 * check them (and for changed-only read and hash the target's blocks), and
 * consume (calling thread) writes the batches to the target in block order.
 * Memory: 2 * threads + 2 batches of about BATCH_BYTES plus one record
 * buffer per worker.
 *
 * Changed-only with the images on S3 runs two passes instead of one. In
 * one pass a worker learns that a block differs only after the planner has
 * gone past it: the planner names either no record ahead (then each
 * differing block is an unhinted read, a GET of a 1 MiB window plus
 * read-ahead windows) or every one (willneed(): on S3 a GET of nearly every
 * record, the same blocks' too; measured: 73 MiB in 44 GETs where the
 * differing blocks' records were 7 MiB). So the first pass
 * (compare) reads the whole target on the pool, hashes each block against
 * the index and keeps a bit per block that differs (n_blocks / 8 bytes: 512
 * KiB for 1 TiB of 256 KiB blocks); the second is the restore loop with the
 * bits: a block that is the same is A_SAME at planning (neither located nor
 * named ahead, its batch not worked when all its blocks are), the records
 * of the others are named ahead and fetched coalesced and in parallel, as
 * for a whole restore, and the target is not read again. A local
 * changed-only restore keeps the one pass (its reads cost no money and the
 * kernel's read-ahead serves them). Progress on two passes is the bytes
 * settled: a block found the same in the first, one written in the second. */

enum { A_DATA, A_ZERO, A_SAME, A_BAD };

typedef struct rbatch {
	uint64_t first;
	uint32_t nblk;
	uint8_t *data;          /* block first + j at j * block_size */
	cbi_idx_ent *ent;
	cbi_image **img;
	cbi_tab_ent *te;
	int *prc;               /* planning failed for this block (index, image, table) */
	uint8_t *act;           /* A_*: what consume does with each block */
	int replan;             /* block fail_j is needed but could not be planned: */
	uint32_t fail_j;        /* ... consume makes the message again */
} rbatch;

typedef struct rloop {
	rbatch *slots;
	cbi_resolved *v;        /* workers read only img paths and keys */
	const cbi_restore_opts *o;
	cbi_target *t;          /* changed-only: workers read its fd */
	cbi_restore_result *r;
	uint32_t bs;
	uint64_t size, n_blocks;
	uint32_t per_batch;
	uint64_t next;          /* first block of the next batch */
	int remote;             /* the images are on S3: name records ahead (hint_ahead) */
	uint64_t *diff;         /* changed-only on S3: a bit per block that differs on the
	                         * target (compared in a first pass), else NULL */
	uint64_t settled;       /* with diff: bytes compared the same, then written */
	uint64_t hc;            /* the first block whose record is not named yet */
	uint64_t hinted, planned; /* bytes of records named, and planned */
	double last;            /* last progress report */
} rloop;

static int differs(const rloop *p, uint64_t i)
{
	return (int)(p->diff[i / 64] >> (i % 64) & 1);
}

/* Block j of batch s: its entry and where it is. A failure is kept for the
 * block (planning makes no message: consume makes it again if the block is
 * needed), and an image that failed to open is not tried again (the chain
 * reader remembers it). */
static void plan_block(rloop *p, rbatch *s, uint32_t j)
{
	cbi_error e;
	uint64_t i = s->first + j;
	cbi_idx_ent *x = &s->ent[j];
	s->act[j] = A_DATA;
	s->img[j] = NULL;
	s->prc[j] = 0;
	if (p->diff && !differs(p, i)) { /* compared the same: nothing to find */
		s->act[j] = A_SAME;
		return;
	}
	if ((s->prc[j] = read_entry(p->v, i, x, &e))) {
		s->act[j] = A_BAD; /* nothing to go by */
		return;
	}
	/* An image that failed to open fails again at once: the chain reader
	 * remembers the failure (cbi_chain_image()). */
	s->prc[j] = locate_block(p->v, i, x, &s->img[j], &s->te[j], &e);
	if (p->remote && !s->prc[j] && s->img[j]) {
		uint64_t len = CBI_REC_HDR_SIZE + (uint64_t)s->te[j].stored_len;
		if (i >= p->hc) { /* not named ahead yet */
			cbi_sfr_will_need(s->img[j]->f, s->te[j].offset, len);
			p->hc = i + 1;
			p->hinted += len;
		}
		p->planned += len;
	}
}

/* Images on S3 (s3rd.h) fetch the records named ahead, coalesced, in
 * parallel: name those of the blocks after the planned ones until
 * HINT_AHEAD_BYTES of records are named beyond them, whatever the
 * compression ratio (the pool's batches hold only a few MiB of records: too
 * few GETs under way). Calling thread only, as plan. */
static void hint_ahead(rloop *p)
{
	while (p->hc < p->n_blocks && p->hinted < p->planned + HINT_AHEAD_BYTES) {
		uint64_t i = p->hc++;
		if (p->diff && !differs(p, i))
			continue; /* the same on the target: not read */
		cbi_idx_ent x;
		cbi_image *m = NULL;
		cbi_tab_ent te;
		cbi_error e;
		if (read_entry(p->v, i, &x, &e) || locate_block(p->v, i, &x, &m, &te, &e) || !m)
			continue; /* a zero block, or a failure that planning reports */
		uint64_t len = CBI_REC_HDR_SIZE + (uint64_t)te.stored_len;
		cbi_sfr_will_need(m->f, te.offset, len);
		p->hinted += len;
	}
}

/* Ask the kernel for the batch's records now, one range per run of
 * records that lie end to end in one image: a worker's preads then find
 * them read, and the reads of a point deep in its chain, spread over many
 * images, reach the device together instead of one at a time (bench/README.md,
 * "Read-ahead of a batch's records"). */
static void willneed(const rbatch *s)
{
	const cbi_image *m = NULL;
	uint64_t lo = 0, hi = 0;
	for (uint32_t j = 0; j <= s->nblk; j++) {
		const cbi_image *mj = j < s->nblk && !s->prc[j] && s->act[j] == A_DATA ? s->img[j] : NULL;
		uint64_t o = mj ? s->te[j].offset : 0, e = mj ? o + CBI_REC_HDR_SIZE + s->te[j].stored_len : 0;
		if (mj && mj == m && o == hi) {
			hi = e;
			continue;
		}
		if (m)
			cbi_sfr_will_need(m->f, lo, hi - lo);
		m = mj;
		lo = o;
		hi = e;
	}
}

/* The next batch's blocks into slot, or NULL when there are no more. */
static rbatch *next_batch(rloop *p, unsigned slot)
{
	rbatch *s = &p->slots[slot];
	if (p->next == p->n_blocks)
		return NULL;
	s->first = p->next;
	s->nblk = (uint32_t)CBI_MIN((uint64_t)p->per_batch, p->n_blocks - s->first);
	s->replan = 0;
	p->next += s->nblk;
	return s;
}

static int plan(void *ud, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rbatch *s = next_batch(p, slot);
	if (!s)
		return CBI_POOL_DONE;
	uint32_t same = 0;
	for (uint32_t j = 0; j < s->nblk; j++) {
		plan_block(p, s, j);
		same += s->act[j] == A_SAME;
	}
	if (p->remote)
		hint_ahead(p); /* S3: ranged GETs named ahead, coalesced */
	else
		willneed(s);
	return same == s->nblk ? CBI_POOL_NOWORK : 0; /* compared the same: nothing to read */
}

/* Per-worker state. */
typedef struct rws {
	ZSTD_DCtx *dctx;
	cbi_cx *cx;
	uint8_t *scratch;       /* a record */
} rws;

static void ws_free(void *ud, void *ws)
{
	rws *w = ws;
	if (w) {
		free(w->scratch);
		ZSTD_freeDCtx(w->dctx);
		cbi_cx_free(w->cx);
		free(w);
	}
}

static int ws_new(void *ud, void **out, cbi_error *err)
{
	rloop *p = ud;
	rws *w = calloc(1, sizeof *w);
	if (w && (!(w->dctx = ZSTD_createDCtx()) || !(w->cx = cbi_cx_new()) ||
		  !(w->scratch = malloc(cbi_image_scratch_size(p->bs))))) {
		ws_free(ud, w);
		w = NULL;
	}
	*out = w;
	return w ? 0 : cbi_err(err, -ENOMEM, "out of memory");
}

/* Block j is needed but could not be planned: consume makes the message. */
static int replan(rbatch *s, uint32_t j)
{
	s->replan = 1;
	s->fail_j = j;
	return 0;
}

/* Changed-only: the target's blocks of batch s into its data. */
static int read_target(rloop *p, rbatch *s, cbi_error *err)
{
	uint64_t off0 = s->first * p->bs;
	size_t n = (size_t)CBI_MIN((uint64_t)s->nblk * p->bs, p->size - off0);
	int rc = cbi_pread_full(p->t->fd, s->data, n, off0);
	return rc ? cbi_err(err, rc, "unable to read target '%s' at byte %llu: %s", p->o->target,
			    (unsigned long long)off0, cbi_strerror(rc))
		  : 0;
}

/* Changed-only: does the target's block d (len bytes) hold what index
 * entry e says? */
static int same_on_target(rloop *p, rws *w, const cbi_idx_ent *e, const uint8_t *d, uint32_t len)
{
	if (e->flags & CBI_IDX_ZERO)
		return cbi_is_zero(d, len);
	uint8_t hh[16];
	return !cbi_hash_block_spec(&p->v->index->hs, w->cx, d, len, hh) && !memcmp(hh, e->hash, 16);
}

static int work(void *ud, void *ws, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rws *w = ws;
	rbatch *s = &p->slots[slot];
	int compare = p->o->changed_only && !p->diff; /* one pass: compare here */
	int rc = compare ? read_target(p, s, err) : 0;
	if (rc)
		return rc;
	for (uint32_t j = 0; j < s->nblk; j++) {
		uint64_t i = s->first + j;
		uint32_t len = cbi_block_len(p->size, p->bs, i);
		uint8_t *d = s->data + (size_t)j * p->bs;
		const cbi_idx_ent *e = &s->ent[j];
		if (s->act[j] == A_SAME) /* compared the same in the first pass */
			continue;
		if (s->act[j] == A_BAD) /* its index entry could not be read */
			return replan(s, j);
		if (compare && same_on_target(p, w, e, d, len)) {
			s->act[j] = A_SAME;
			continue;
		}
		if (e->flags & CBI_IDX_ZERO) {
			s->act[j] = A_ZERO;
			continue;
		}
		if (s->prc[j]) /* needed, but its image or record was not found */
			return replan(s, j);
		cbi_error why;
		rc = cbi_image_read_block(s->img[j], &s->te[j], w->dctx, w->cx, w->scratch, d, e->hash, &why);
		if (rc < 0)
			return cbi_err(err, rc, "'%s': block %llu: %s", s->img[j]->f->path, (unsigned long long)i,
				       why.msg);
		s->act[j] = A_DATA;
	}
	return 0;
}

/* The message of a block that could not be planned, made again. */
static int replan_error(rloop *p, rbatch *s, cbi_error *err)
{
	uint64_t i = s->first + s->fail_j;
	int prc = s->prc[s->fail_j];
	cbi_idx_ent e;
	cbi_image *m;
	cbi_tab_ent te;
	int rc = read_entry(p->v, i, &e, err);
	if (!rc)
		rc = locate_block(p->v, i, &e, &m, &te, err);
	return rc ? rc : cbi_err(err, prc, "block %llu: %s", (unsigned long long)i, cbi_strerror(prc));
}

/* Progress, at most every 0.2 s; -ECANCELED when the caller asks to stop. */
static int report(rloop *p, uint64_t done, cbi_error *err)
{
	if (!p->o->progress)
		return 0;
	double now = cbi_now();
	if (now - p->last < 0.2)
		return 0;
	p->last = now;
	return p->o->progress(p->o->progress_ud, done, p->size) ? cbi_err(err, -ECANCELED, "interrupted") : 0;
}

/* Write a finished batch, in block order; counts to p->r. */
static int consume(void *ud, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rbatch *s = &p->slots[slot];
	cbi_restore_result *r = p->r;
	if (s->replan)
		return replan_error(p, s, err);
	for (uint32_t j = 0; j < s->nblk;) {
		uint64_t off = (s->first + j) * p->bs;
		uint32_t k = j + 1;
		while (k < s->nblk && s->act[k] == s->act[j])
			k++;
		uint64_t len = CBI_MIN((uint64_t)(k - j) * p->bs, p->size - off);
		int rc = 0;
		if (s->act[j] == A_DATA) {
			rc = cbi_target_write(p->t, off, s->data + (size_t)j * p->bs, (size_t)len, err);
			r->blocks_written += k - j;
		} else if (s->act[j] == A_ZERO) {
			rc = cbi_target_zero(p->t, off, len, err);
			if (p->t->sparse_new)
				r->blocks_skipped += k - j;
			else
				r->blocks_written += k - j;
		} else {
			r->blocks_skipped += k - j;
		}
		if (rc)
			return rc;
		if (p->diff && s->act[j] != A_SAME)
			p->settled += len;
		j = k;
	}
	uint64_t done = p->diff ? p->settled : CBI_MIN((s->first + s->nblk) * (uint64_t)p->bs, p->size);
	return report(p, done, err);
}

/* ---- the first pass of changed-only on S3 (see above): plan reads the
 * batch's index entries, workers read the target's blocks and compare them,
 * consume keeps a bit per block that differs. A block whose entry cannot be
 * read differs: the second pass makes its error. */

static int cplan(void *ud, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rbatch *s = next_batch(p, slot);
	if (!s)
		return CBI_POOL_DONE;
	for (uint32_t j = 0; j < s->nblk; j++) {
		cbi_error e;
		s->act[j] = read_entry(p->v, s->first + j, &s->ent[j], &e) ? A_BAD : A_DATA;
	}
	return 0;
}

static int cwork(void *ud, void *ws, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rbatch *s = &p->slots[slot];
	int rc = read_target(p, s, err);
	for (uint32_t j = 0; !rc && j < s->nblk; j++) {
		uint32_t len = cbi_block_len(p->size, p->bs, s->first + j);
		if (s->act[j] != A_BAD && same_on_target(p, ws, &s->ent[j], s->data + (size_t)j * p->bs, len))
			s->act[j] = A_SAME;
	}
	return rc;
}

static int cconsume(void *ud, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rbatch *s = &p->slots[slot];
	for (uint32_t j = 0; j < s->nblk; j++) {
		uint64_t i = s->first + j;
		if (s->act[j] == A_SAME)
			p->settled += cbi_block_len(p->size, p->bs, i);
		else
			p->diff[i / 64] |= 1ull << (i % 64);
	}
	return report(p, p->settled, err);
}

static void slots_free(rbatch *slots, unsigned n)
{
	for (unsigned k = 0; slots && k < n; k++) {
		rbatch *s = &slots[k];
		free(s->data);
		free(s->ent);
		free(s->img);
		free(s->te);
		free(s->prc);
		free(s->act);
	}
	free(slots);
}

static rbatch *slots_new(unsigned n, uint32_t per_batch, uint32_t bs)
{
	rbatch *slots = calloc(n, sizeof *slots);
	for (unsigned k = 0; slots && k < n; k++) {
		rbatch *s = &slots[k];
		if (posix_memalign((void **)&s->data, CBI_SOURCE_ALIGN, (size_t)per_batch * bs))
			s->data = NULL;
		s->ent = calloc(per_batch, sizeof *s->ent);
		s->img = calloc(per_batch, sizeof *s->img);
		s->te = calloc(per_batch, sizeof *s->te);
		s->prc = calloc(per_batch, sizeof *s->prc);
		s->act = calloc(per_batch, 1);
		if (!s->data || !s->ent || !s->img || !s->te || !s->prc || !s->act) {
			slots_free(slots, n);
			return NULL;
		}
	}
	return slots;
}

/* Every block of the point, checked, to t in order. */
static int restore_blocks(cbi_resolved *v, const cbi_restore_opts *o, cbi_target *t, cbi_restore_result *r,
			  cbi_error *err)
{
	const cbi_hdr *h = &v->index->hdr;
	rloop p = { .v = v, .o = o, .t = t, .r = r, .bs = h->block_size, .size = h->source_size,
		    .n_blocks = h->n_blocks };
	/* 2 * threads + 2 batches within the pool's budget (smaller batches
	 * for many threads), at most one worker per batch of the run. */
	cbi_pool_dims d;
	cbi_pool_size(o->threads, p.bs, BATCH_BYTES / p.bs, 2, 2, p.n_blocks, &d);
	p.per_batch = d.per_item;
	cbi_image *tipm = NULL; /* an image on S3 (changed-only: named ahead only with the first pass's bits) */
	p.remote = !get_image(v, h->seq, &tipm, NULL) && tipm->f->ops;
	p.slots = slots_new(d.nslots, p.per_batch, p.bs);
	int rc = 0;
	cbi_pool_cfg pc = { .threads = d.threads, .nslots = d.nslots, .ud = &p, .init = ws_new,
			    .fini = ws_free, .plan = cplan, .work = cwork, .consume = cconsume };
	if (!p.slots) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
	} else if (o->changed_only && p.remote) { /* two passes (see above): compare first */
		if (!(p.diff = calloc((p.n_blocks + 63) / 64, sizeof *p.diff)))
			rc = cbi_err(err, -ENOMEM, "out of memory");
		else
			rc = cbi_pool_run(&pc, err);
		p.next = 0;
	}
	if (!rc) {
		pc.plan = plan;
		pc.work = work;
		pc.consume = consume;
		rc = cbi_pool_run(&pc, err);
	}
	free(p.diff);
	slots_free(p.slots, d.nslots);
	return rc;
}

/* ---- one partition (o->partition): a byte range of the point's disk,
 * read through the point reader (a partition need not start on a block
 * boundary), on the same worker pool: plan cuts the range into chunks,
 * workers read them (the reader decompresses and checks each block, and
 * is thread-safe), consume writes them in order. */

#define CHUNK_BYTES (4u << 20)

typedef struct ploop {
	cbi_pointrd *pr;
	const cbi_restore_opts *o;
	cbi_target *t;
	cbi_restore_result *r;
	uint64_t off, size;     /* the partition */
	uint64_t next;          /* next chunk, from the partition's start */
	uint8_t **buf;          /* per slot: CHUNK_BYTES */
	uint64_t *at;           /* per slot: its chunk */
	int *zero;              /* per slot: all zeros */
	double last;
} ploop;

static int pplan(void *ud, unsigned slot, cbi_error *err)
{
	ploop *p = ud;
	if (p->next >= p->size)
		return CBI_POOL_DONE;
	p->at[slot] = p->next;
	p->next += CHUNK_BYTES;
	return 0;
}

static size_t pchunk(const ploop *p, unsigned slot)
{
	return (size_t)CBI_MIN((uint64_t)CHUNK_BYTES, p->size - p->at[slot]);
}

static int pwork(void *ud, void *ws, unsigned slot, cbi_error *err)
{
	ploop *p = ud;
	size_t n = pchunk(p, slot);
	int64_t got = cbi_pointrd_pread(p->pr, p->buf[slot], n, p->off + p->at[slot], err);
	if (got < 0)
		return (int)got;
	if ((size_t)got != n)
		return cbi_err(err, -CBI_EDAMAGED, "partition %u ends beyond the disk", p->o->partition);
	p->zero[slot] = cbi_is_zero(p->buf[slot], n);
	return 0;
}

static int pconsume(void *ud, unsigned slot, cbi_error *err)
{
	ploop *p = ud;
	size_t n = pchunk(p, slot);
	int rc = p->zero[slot] ? cbi_target_zero(p->t, p->at[slot], n, err)
			       : cbi_target_write(p->t, p->at[slot], p->buf[slot], n, err);
	if (rc)
		return rc;
	uint64_t done = p->at[slot] + n;
	if (p->o->progress && cbi_now() - p->last >= 0.2) {
		p->last = cbi_now();
		if (p->o->progress(p->o->progress_ud, done, p->size))
			return cbi_err(err, -ECANCELED, "interrupted");
	}
	return 0;
}

/* A point with bad ranges (backup --rescue) is refused, naming them, before
 * anything is written, unless o->allow_bad: then they restore as the zeros
 * its blocks hold there, and r counts them. */
static int bad_ranges(const cbi_resolved *v, const cbi_restore_opts *o, cbi_restore_result *r, cbi_error *err)
{
	const cbi_badmap *m = &v->index->bad;
	if (!m->n)
		return 0;
	r->bad_bytes = m->bytes;
	r->bad_ranges = m->n;
	if (o->allow_bad)
		return 0;
	char d[512];
	cbi_badmap_describe(m, 4, d, sizeof d);
	return cbi_err(err, -CBI_EBADRANGES,
		       "'%s' has %llu bytes in %zu range%s that the source could not be read for (%s): "
		       "restore --allow-bad writes them as zeros",
		       v->index->f->path, (unsigned long long)m->bytes, m->n, m->n == 1 ? "" : "s", d);
}

static int restore_partition(const cbi_restore_opts *o, cbi_restore_result *r, cbi_error *err)
{
	cbi_pointrd_opts po = { .point = o->point, .pass = o->pass, .pass_ud = o->pass_ud,
				.state_dir = o->state_dir, .cache_bytes = 2 * CHUNK_BYTES, .allow_bad = o->allow_bad };
	cbi_pointrd *pr = NULL;
	cbi_disk_map *m = calloc(1, sizeof *m);
	cbi_target *t = NULL;
	ploop p = { .o = o, .r = r };
	cbi_pool_dims d = { 0 };
	int rc;
	if (!m)
		return cbi_err(err, -ENOMEM, "out of memory");
	if (o->changed_only) {
		rc = cbi_err(err, -CBI_EUSAGE, "--changed-only cannot be combined with --partition");
		goto end;
	}
	if ((rc = cbi_pointrd_open(&po, &pr, err)) || (rc = cbi_pointrd_map(pr, m, err)))
		goto end;
	const cbi_part *part = NULL;
	for (size_t k = 0; k < m->nparts; k++)
		if (m->parts[k].number == o->partition)
			part = &m->parts[k];
	if (!part) {
		rc = m->pttype[0] ? cbi_err(err, -ENOENT, "'%s': the disk's partition table (%s) has no partition %u",
					    o->point, m->pttype, o->partition)
				  : cbi_err(err, -ENOENT, "'%s': the disk has no partition table", o->point);
		goto end;
	}
	p.pr = pr;
	p.off = part->offset;
	p.size = part->size;
	if ((rc = cbi_target_open(o->target, p.size, o->force ? CBI_TARGET_FORCE : 0, &t, err)))
		goto end;
	cbi_target_direct(t);
	p.t = t;
	cbi_pool_size(o->threads, CHUNK_BYTES, 1, 2, 2, (p.size + CHUNK_BYTES - 1) / CHUNK_BYTES, &d);
	p.buf = calloc(d.nslots, sizeof *p.buf);
	p.at = calloc(d.nslots, sizeof *p.at);
	p.zero = calloc(d.nslots, sizeof *p.zero);
	for (unsigned k = 0; p.buf && k < d.nslots; k++)
		if (posix_memalign((void **)&p.buf[k], CBI_SOURCE_ALIGN, CHUNK_BYTES))
			p.buf[k] = NULL;
	int oom = !p.buf || !p.at || !p.zero;
	for (unsigned k = 0; p.buf && k < d.nslots; k++)
		oom |= !p.buf[k];
	if (oom) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	cbi_pool_cfg pc = { .threads = d.threads, .nslots = d.nslots, .ud = &p, .plan = pplan, .work = pwork,
			    .consume = pconsume };
	uint32_t bs = cbi_pointrd_point(pr)->block_size;
	r->blocks_total = (p.size + bs - 1) / bs;
	if ((rc = cbi_pool_run(&pc, err)) || (rc = cbi_target_commit(t, err)))
		goto end;
	r->blocks_written = r->blocks_total;
	r->bytes_written = t->written;
	if (o->progress)
		o->progress(o->progress_ud, p.size, p.size);
end:
	for (unsigned k = 0; p.buf && k < d.nslots; k++)
		free(p.buf[k]);
	free(p.buf);
	free(p.at);
	free(p.zero);
	cbi_target_close(t);
	cbi_pointrd_close(pr);
	free(m);
	return rc;
}

int cbi_restore(const cbi_restore_opts *o, cbi_restore_result *r, cbi_error *err)
{
	double t0 = cbi_now();
	memset(r, 0, sizeof *r);
	if (!o->point || !o->target)
		return cbi_err(err, -CBI_EUSAGE, "point and target are required");
	if (o->partition) {
		int rc = restore_partition(o, r, err);
		r->seconds = cbi_now() - t0;
		return rc;
	}
	cbi_resolved v;
	int rc = resolve(o->point, o, &v, err);
	if (rc)
		return rc;
	const cbi_hdr *h = &v.index->hdr;
	cbi_target *t = NULL;
	if ((rc = bad_ranges(&v, o, r, err)))
		goto end;
	unsigned fl = (o->force ? CBI_TARGET_FORCE : 0) | (o->changed_only ? CBI_TARGET_READ : 0);
	/* never onto a file the restore reads, nor into the chain's DEST, --force or not */
	cbi_target_guard g = { 0 };
	cbi_fid *files = NULL, dir = { 0 };
	if (!(rc = cbi_chain_files(v.c, &files, &g.nfiles, &dir, err))) {
		g.files = files;
		g.dir = dir.dev || dir.ino ? &dir : NULL;
		rc = cbi_target_open_guarded(o->target, h->source_size, fl, &g, &t, err);
	}
	cbi_fids_free(files, g.nfiles);
	free(dir.path);
	if (rc)
		goto end;
	/* Write with direct I/O where the target takes it: the data goes
	 * from the batches to the disk without a copy into the page cache (a
	 * third of restore's CPU time), and the writer waits for the disk, not
	 * the CPU the workers need. Not for changed-only, whose workers read
	 * the target through the same descriptor. */
	if (!o->changed_only)
		cbi_target_direct(t);
	r->blocks_total = h->n_blocks;
	if ((rc = restore_blocks(&v, o, t, r, err)) || (rc = cbi_target_commit(t, err)))
		goto end;
	if (o->progress)
		o->progress(o->progress_ud, h->source_size, h->source_size);
	r->bytes_written = t->written;
end:
	cbi_target_close(t);
	resolved_free(&v);
	r->seconds = cbi_now() - t0;
	return rc;
}
