/* pipeline.c - backup's pipeline on the worker pool (pool.h): plan finds the
 * next batch or run of holes, workers read and process batches, the calling
 * thread hands the blocks to the sink in order. */
#define _GNU_SOURCE
#include "pipeline.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <zstd.h>

#include "image.h"
#include "pool.h"
#include "util.h"

#define BATCH_BYTES (4u << 20)
#define HOLE_CHUNK 4096u /* index entries of a hole item handed to the sink per step */

enum { K_DATA, K_HOLE };

/* One item of the pool (pool.h): a batch of up to per_batch blocks read and
 * processed by a worker (K_DATA), or a run of at least per_batch blocks
 * lying wholly in a hole of the source (K_HOLE), which no one reads or
 * processes: the consumer expands it into zero entries. */
typedef struct batch {
	uint64_t first;
	uint64_t nblk;
	int kind;
	uint64_t got;       /* bytes actually read */
	uint8_t *data;
	uint8_t *hole;      /* per block: wholly in a hole of the source, data not filled */
	uint8_t *comp;
	cbi_idx_ent *parent;
	cbi_pipe_block *out;
} batch;

typedef struct pipe_s {
	const cbi_pipe_cfg *cfg;
	pthread_mutex_t pmu;    /* the parent index (its window cache) */
	batch *slots;
	uint32_t per_batch;
	uint64_t nblocks;
	uint64_t next_blk;      /* where the next item starts */
	uint64_t done_blocks, done_bytes;
	double last;            /* last progress report */
	uint64_t bytes_read;
	size_t bound;
	cbi_idx_ent *hpar;      /* consumer's parent entries for hole items */
} pipe_s;

/* Entries [first, first + n) of the parent index. */
static int parent_get(pipe_s *p, uint64_t first, uint64_t n, cbi_idx_ent *out, cbi_error *e)
{
	cbi_index *x = p->cfg->parent;
	int rc = 0;
	pthread_mutex_lock(&p->pmu);
	for (uint64_t j = 0; j < n && !rc; j++)
		rc = cbi_index_get(x, first + j, &out[j]);
	pthread_mutex_unlock(&p->pmu);
	if (rc)
		cbi_err(e, rc, "unable to read the parent index '%s': %s", x->f->path, cbi_strerror(rc));
	return rc;
}

/* plan: the next item starts at block p->next_blk. A hole of at least a
 * batch's worth of whole blocks becomes one hole item, however long (a
 * terabyte of holes is a handful of items), which needs no work; anything
 * else is a batch for a worker. */
static int plan(void *ud, unsigned slot, cbi_error *e)
{
	pipe_s *p = ud;
	const cbi_pipe_cfg *c = p->cfg;
	batch *s = &p->slots[slot];
	if (p->next_blk == p->nblocks)
		return CBI_POOL_DONE;
	s->first = p->next_blk;
	uint64_t off = s->first * c->block_size, he = off;
	int rc = cbi_source_hole_end(c->src, off, &he, e);
	if (rc)
		return rc;
	uint64_t n = he == c->src->size ? p->nblocks - s->first : (he - off) / c->block_size;
	s->kind = n >= p->per_batch ? K_HOLE : K_DATA;
	s->nblk = s->kind == K_HOLE ? n : CBI_MIN((uint64_t)p->per_batch, p->nblocks - s->first);
	s->got = 0;
	p->next_blk += s->nblk;
	return s->kind == K_HOLE ? CBI_POOL_NOWORK : 0;
}

/* A worker's read of its batch: the source data and the parent's entries. */
static int fill(pipe_s *p, batch *s, cbi_error *e)
{
	const cbi_pipe_cfg *c = p->cfg;
	uint64_t off = s->first * c->block_size;
	size_t len = (size_t)CBI_MIN(s->nblk * c->block_size, c->src->size - off);
	memset(s->hole, 0, (size_t)s->nblk);
	int rc = cbi_source_read_blocks(c->src, off, len, s->data, c->block_size, s->hole, &s->got, e);
	if (!rc && c->parent)
		rc = parent_get(p, s->first, s->nblk, s->parent, e);
	return rc;
}

/* Spec "Building the index of a point", rule 1: a zero block. */
static void zero_block(cbi_pipe_block *o, uint32_t len, const cbi_idx_ent *par)
{
	memset(o, 0, sizeof *o);
	o->raw_len = len;
	o->ent.flags = CBI_IDX_ZERO;
	o->changed = par && !(par->flags & CBI_IDX_ZERO);
}

static int process(pipe_s *p, batch *s, ZSTD_CCtx *cc, cbi_cx *cx)
{
	const cbi_pipe_cfg *c = p->cfg;
	for (uint32_t j = 0; j < s->nblk; j++) {
		uint64_t blk = s->first + j;
		const uint8_t *d = s->data + (size_t)j * c->block_size;
		uint32_t len = cbi_block_len(c->src->size, c->block_size, blk);
		cbi_pipe_block *o = &s->out[j];
		const cbi_idx_ent *par = c->parent ? &s->parent[j] : NULL;
		if (s->hole[j] || cbi_is_zero(d, len)) {
			zero_block(o, len, par);
			continue;
		}
		memset(o, 0, sizeof *o);
		o->raw_len = len;
		if (cbi_hash_block_spec(c->hs, cx, d, len, o->ent.hash))
			return -EIO;
		if (par && !(par->flags & CBI_IDX_ZERO) && !memcmp(par->hash, o->ent.hash, 16)) {
			o->ent = *par; /* unchanged: keeps its owner */
			continue;
		}
		o->changed = 1;
		o->store = 1;
		o->ent.owner = c->seq;
		uint8_t *dst = s->comp + (size_t)j * p->bound;
		/* room for the tag of a sealed record after the payload */
		size_t n = ZSTD_compressCCtx(cc, dst, p->bound - CBI_TAG_LEN, d, len, c->level);
		if (!ZSTD_isError(n) && n < len) {
			o->payload = dst;
			o->stored_len = (uint32_t)n;
			o->rec_flags = CBI_REC_ZSTD;
		} else {
			o->payload = d; /* incompressible: stored raw */
			o->stored_len = len;
			o->rec_flags = 0;
		}
		if (c->rec_key) {
			if (o->payload != dst)
				memcpy(dst, d, len);
			o->payload = dst;
			o->rec_flags |= CBI_REC_AEAD;
			cbi_rec_hdr rh = { .flags = o->rec_flags, .block = blk,
					   .stored_len = o->stored_len + CBI_TAG_LEN, .raw_len = len };
			memcpy(rh.hash, o->ent.hash, 16);
			uint8_t hb[CBI_REC_HDR_SIZE];
			cbi_rec_hdr_encode(&rh, hb);
			if (cbi_image_seal_record(cx, c->rec_key, c->chain_id, c->point_id, hb, blk, dst,
						  o->stored_len))
				return -EIO;
			o->stored_len += CBI_TAG_LEN;
		}
	}
	return 0;
}

/* Per-worker state: a compression context and a crypto context. */
typedef struct wstate {
	ZSTD_CCtx *cc;
	cbi_cx *cx;
} wstate;

static void ws_free(void *ud, void *ws)
{
	wstate *w = ws;
	if (w) {
		ZSTD_freeCCtx(w->cc);
		cbi_cx_free(w->cx);
		free(w);
	}
}

static int ws_new(void *ud, void **out, cbi_error *e)
{
	wstate *w = calloc(1, sizeof *w);
	if (w && (!(w->cc = ZSTD_createCCtx()) || !(w->cx = cbi_cx_new()))) {
		ws_free(ud, w);
		w = NULL;
	}
	*out = w;
	return w ? 0 : cbi_err(e, -ENOMEM, "out of memory");
}

/* work: workers read their batch themselves (both cores copy from the page
 * cache at once, no reader thread to wait for) and process it. */
static int work(void *ud, void *ws, unsigned slot, cbi_error *e)
{
	pipe_s *p = ud;
	wstate *w = ws;
	batch *s = &p->slots[slot];
	int rc = fill(p, s, e);
	if (!rc && (rc = process(p, s, w->cc, w->cx)))
		cbi_err(e, rc, "hashing or encryption failed (libcrypto)");
	return rc;
}

/* Progress from the calling thread, at most every 0.2 s and at the end;
 * a callback asking to stop cancels the run. */
static int report(pipe_s *p, int final, cbi_error *e)
{
	const cbi_pipe_cfg *c = p->cfg;
	if (!c->progress)
		return 0;
	double now = cbi_now();
	if (now - p->last < 0.2 && !final)
		return 0;
	p->last = now;
	if (!c->progress(c->progress_ud, p->done_bytes, c->src->size))
		return 0;
	return cbi_err(e, -ECANCELED, "interrupted: nothing of this run was kept");
}

static int sink_one(pipe_s *p, uint64_t blk, const cbi_pipe_block *o, cbi_error *e)
{
	int r = p->cfg->sink(p->cfg->sink_ud, blk, o, e);
	p->done_bytes += o->raw_len;
	return r;
}

/* The zero stretch of a hole item that starts at blk: how many blocks
 * (0: none) can go to the sink in one call, and where per-block handling
 * must stop (the parent's next run). */
static int zero_span(pipe_s *p, uint64_t blk, uint64_t left, uint64_t *span, uint64_t *next, cbi_error *e)
{
	const cbi_pipe_cfg *c = p->cfg;
	*span = c->sink_zeros && !c->parent ? left : 0;
	*next = blk + left;
	if (!c->sink_zeros || !c->parent)
		return 0;
	cbi_index *x = c->parent;
	pthread_mutex_lock(&p->pmu);
	int rc = cbi_index_zero_span(x, &x->w, blk, span, next);
	pthread_mutex_unlock(&p->pmu);
	if (rc)
		return cbi_err(e, rc, "unable to read the parent index '%s': %s", x->f->path, cbi_strerror(rc));
	*span = CBI_MIN(*span, left);
	return 0;
}

/* The consumer's part of a hole item: its zero entries, in steps, with the
 * parent's entries for an incremental (a hole is a zero block: changed
 * only where the parent's entry is not zero). Stretches that are zero in
 * the parent's runs too (or every block, for a full) go to the sink in one
 * call when it takes them (sink_zeros): a 1 TiB sparse source is 4 million
 * blocks, and one call each cost 0.3 s. */
static int emit_hole(pipe_s *p, const batch *s, cbi_error *e)
{
	const cbi_pipe_cfg *c = p->cfg;
	uint64_t end = s->first + s->nblk;
	for (uint64_t blk = s->first; blk < end;) {
		uint64_t span, next;
		int rc = zero_span(p, blk, end - blk, &span, &next, e);
		if (rc)
			return rc;
		if (span) {
			uint64_t stop = CBI_MIN((blk + span) * (uint64_t)c->block_size, c->src->size);
			if ((rc = c->sink_zeros(c->sink_ud, blk, span, e)))
				return rc;
			p->done_bytes += stop - blk * (uint64_t)c->block_size;
			blk += span;
		} else {
			uint64_t n = CBI_MIN((uint64_t)HOLE_CHUNK, CBI_MIN(next, end) - blk);
			if (!n)
				n = 1;
			if (c->parent && (rc = parent_get(p, blk, n, p->hpar, e)))
				return rc;
			for (uint64_t j = 0; j < n; j++) {
				cbi_pipe_block o;
				zero_block(&o, cbi_block_len(c->src->size, c->block_size, blk + j),
					   c->parent ? &p->hpar[j] : NULL);
				if ((rc = sink_one(p, blk + j, &o, e)))
					return rc;
			}
			blk += n;
		}
		if (blk < end && (rc = report(p, 0, e)))
			return rc;
	}
	return 0;
}

/* consume: the item's blocks to the sink, in block order. */
static int consume(void *ud, unsigned slot, cbi_error *e)
{
	pipe_s *p = ud;
	batch *s = &p->slots[slot];
	int r = 0;
	if (s->kind == K_HOLE)
		r = emit_hole(p, s, e);
	else
		for (uint32_t j = 0; j < s->nblk && !r; j++)
			r = sink_one(p, s->first + j, &s->out[j], e);
	if (r)
		return r;
	p->done_blocks += s->nblk;
	p->bytes_read += s->got;
	return report(p, p->done_blocks == p->nblocks, e);
}

int cbi_pipe_run(const cbi_pipe_cfg *c, cbi_pipe_stats *st, cbi_error *err)
{
	pipe_s p;
	memset(&p, 0, sizeof p);
	p.cfg = c;
	p.bound = ZSTD_compressBound(c->block_size) + CBI_TAG_LEN;
	/* The slots' buffers (a block of data and its compressed output each)
	 * stay within the pool's budget: one item per worker, one being
	 * consumed, one ready ahead. */
	cbi_pool_dims d;
	cbi_pool_size(c->threads, (uint64_t)c->block_size + p.bound, BATCH_BYTES / c->block_size, 1, 2, 0, &d);
	p.per_batch = d.per_item;
	p.nblocks = cbi_nblocks(c->src->size, c->block_size);
	pthread_mutex_init(&p.pmu, NULL);
	p.slots = calloc(d.nslots, sizeof *p.slots);
	p.hpar = calloc(HOLE_CHUNK, sizeof *p.hpar);
	int rc = 0;
	if (!p.slots || !p.hpar) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	for (unsigned i = 0; i < d.nslots; i++) {
		batch *s = &p.slots[i];
		size_t dsz = (size_t)p.per_batch * c->block_size;
		if (posix_memalign((void **)&s->data, CBI_SOURCE_ALIGN, dsz))
			s->data = NULL;
		s->comp = malloc((size_t)p.per_batch * p.bound);
		s->hole = calloc(p.per_batch, 1);
		s->parent = calloc(p.per_batch, sizeof *s->parent);
		s->out = calloc(p.per_batch, sizeof *s->out);
		if (!s->data || !s->comp || !s->hole || !s->parent || !s->out) {
			rc = cbi_err(err, -ENOMEM, "out of memory");
			goto end;
		}
	}
	cbi_pool_cfg pc = { .threads = d.threads, .nslots = d.nslots, .ud = &p, .init = ws_new, .fini = ws_free,
			    .plan = plan, .work = work, .consume = consume };
	/* the tail may have been a hole taken on trust long ago */
	if (!(rc = cbi_pool_run(&pc, err)))
		rc = cbi_source_check_size(c->src, err);
	st->bytes_read = p.bytes_read;
end:
	for (unsigned i = 0; p.slots && i < d.nslots; i++) {
		free(p.slots[i].data);
		free(p.slots[i].comp);
		free(p.slots[i].hole);
		free(p.slots[i].parent);
		free(p.slots[i].out);
	}
	free(p.slots);
	free(p.hpar);
	pthread_mutex_destroy(&p.pmu);
	return rc;
}
