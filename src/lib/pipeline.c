/* pipeline.c - worker threads that read and process batches, in-order consumer. */
#define _GNU_SOURCE
#include "pipeline.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <zstd.h>

#include "image.h"
#include "util.h"

#define BATCH_BYTES (4u << 20)
#define HOLE_CHUNK 4096u /* index entries of a hole item handed to the sink per step */

enum { S_EMPTY, S_WORK, S_DONE };
enum { K_DATA, K_HOLE };

/* One item of the ring: a batch of up to per_batch blocks read and
 * processed by a worker (K_DATA), or a run of at least per_batch blocks
 * lying wholly in a hole of the source (K_HOLE), which no one reads or
 * processes: the consumer expands it into zero entries. */
typedef struct batch {
	uint64_t idx;
	uint64_t first;
	uint64_t nblk;
	int kind;
	int state;
	uint64_t got;       /* bytes actually read */
	uint8_t *data;
	uint8_t *hole;      /* per block: wholly in a hole of the source, data not filled */
	uint8_t *comp;
	cbi_idx_ent *parent;
	cbi_pipe_block *out;
} batch;

typedef struct pipe_s {
	const cbi_pipe_cfg *cfg;
	pthread_mutex_t mu;
	pthread_cond_t cv_free; /* a slot became empty (workers wait) */
	pthread_cond_t cv_done; /* an item is done (the consumer waits) */
	pthread_mutex_t pmu;    /* the parent index (its window cache) */
	batch *slots;
	unsigned nslots;
	uint32_t per_batch;
	uint64_t nblocks;
	uint64_t next_blk, next_idx; /* what the next claim takes */
	int stop;
	int err;
	cbi_error errmsg;
	uint64_t bytes_read;
	size_t bound;
	cbi_idx_ent *hpar;      /* consumer's parent entries for hole items */
} pipe_s;

static void fail(pipe_s *p, int rc, const cbi_error *e)
{
	pthread_mutex_lock(&p->mu);
	if (!p->err) {
		p->err = rc;
		if (e)
			p->errmsg = *e;
		else
			cbi_err(&p->errmsg, rc, "%s", cbi_errtext(rc));
	}
	p->stop = 1;
	pthread_cond_broadcast(&p->cv_free);
	pthread_cond_broadcast(&p->cv_done);
	pthread_mutex_unlock(&p->mu);
}

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
		cbi_err(e, rc, "unable to read the parent index '%s': %s", x->f->path, cbi_errtext(rc));
	return rc;
}

/* With p->mu held: the next item starts at block p->next_blk. A hole of at
 * least a batch's worth of whole blocks becomes one hole item, however long
 * (a terabyte of holes is a handful of items); anything else is a batch. */
static int claim(pipe_s *p, batch *s, cbi_error *e)
{
	const cbi_pipe_cfg *c = p->cfg;
	s->first = p->next_blk;
	uint64_t off = s->first * c->block_size, he = off;
	int rc = cbi_source_hole_end(c->src, off, &he, e);
	if (rc)
		return rc;
	uint64_t n = he == c->src->size ? p->nblocks - s->first : (he - off) / c->block_size;
	s->kind = n >= p->per_batch ? K_HOLE : K_DATA;
	s->nblk = s->kind == K_HOLE ? n : CBI_MIN((uint64_t)p->per_batch, p->nblocks - s->first);
	return 0;
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

/* Workers claim the next item in block order, read their batch themselves
 * (both cores copy from the page cache at once, no reader thread to wait
 * for) and process it; hole items are only claimed. */
static void *worker_main(void *arg)
{
	pipe_s *p = arg;
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	cbi_cx *cx = cbi_cx_new();
	if (!cc || !cx) {
		ZSTD_freeCCtx(cc);
		cbi_cx_free(cx);
		fail(p, -ENOMEM, NULL);
		return NULL;
	}
	for (;;) {
		cbi_error e;
		pthread_mutex_lock(&p->mu);
		batch *s = NULL;
		while (!p->stop && p->next_blk < p->nblocks &&
		       p->slots[p->next_idx % p->nslots].state != S_EMPTY)
			pthread_cond_wait(&p->cv_free, &p->mu);
		if (p->stop || p->next_blk == p->nblocks) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		s = &p->slots[p->next_idx % p->nslots];
		int rc = claim(p, s, &e);
		if (!rc) {
			s->idx = p->next_idx++;
			s->state = S_WORK;
			s->got = 0;
			p->next_blk += s->nblk;
		}
		pthread_mutex_unlock(&p->mu);
		if (!rc && s->kind == K_DATA && !(rc = fill(p, s, &e)) && (rc = process(p, s, cc, cx)))
			cbi_err(&e, rc, "hashing or encryption failed (libcrypto)");
		if (rc) {
			fail(p, rc, &e);
			break;
		}
		pthread_mutex_lock(&p->mu);
		s->state = S_DONE;
		p->bytes_read += s->got;
		pthread_cond_signal(&p->cv_done);
		pthread_mutex_unlock(&p->mu);
	}
	ZSTD_freeCCtx(cc);
	cbi_cx_free(cx);
	return NULL;
}

/* Progress from the calling thread, at most every 0.2 s and at the end;
 * a callback asking to stop cancels the run. */
static int report(pipe_s *p, double *last, uint64_t done, int final)
{
	const cbi_pipe_cfg *c = p->cfg;
	if (!c->progress)
		return 0;
	double now = cbi_now();
	if (now - *last < 0.2 && !final)
		return 0;
	*last = now;
	if (!c->progress(c->progress_ud, done, c->src->size))
		return 0;
	cbi_error e;
	cbi_err(&e, -ECANCELED, "interrupted: nothing of this run was kept");
	fail(p, -ECANCELED, &e);
	return -ECANCELED;
}

static int sink_one(pipe_s *p, uint64_t blk, const cbi_pipe_block *o, uint64_t *done)
{
	cbi_error e;
	int r = p->cfg->sink(p->cfg->sink_ud, blk, o, &e);
	if (r)
		fail(p, r, &e);
	*done += o->raw_len;
	return r;
}

/* The consumer's part of a hole item: its zero entries, in steps, with the
 * parent's entries for an incremental (a hole is a zero block: changed
 * only where the parent's entry is not zero). */
static int emit_hole(pipe_s *p, const batch *s, double *last, uint64_t *done)
{
	const cbi_pipe_cfg *c = p->cfg;
	for (uint64_t i = 0; i < s->nblk; i += HOLE_CHUNK) {
		uint64_t n = CBI_MIN((uint64_t)HOLE_CHUNK, s->nblk - i);
		cbi_error e;
		int rc = c->parent ? parent_get(p, s->first + i, n, p->hpar, &e) : 0;
		if (rc) {
			fail(p, rc, &e);
			return rc;
		}
		for (uint64_t j = 0; j < n; j++) {
			uint64_t blk = s->first + i + j;
			cbi_pipe_block o;
			zero_block(&o, cbi_block_len(c->src->size, c->block_size, blk), c->parent ? &p->hpar[j] : NULL);
			if ((rc = sink_one(p, blk, &o, done)))
				return rc;
		}
		if (i + n < s->nblk && (rc = report(p, last, *done, 0)))
			return rc;
	}
	return 0;
}

int cbi_pipe_run(const cbi_pipe_cfg *c, cbi_pipe_stats *st, cbi_error *err)
{
	pipe_s p;
	memset(&p, 0, sizeof p);
	p.cfg = c;
	pthread_mutex_init(&p.mu, NULL);
	pthread_mutex_init(&p.pmu, NULL);
	pthread_cond_init(&p.cv_free, NULL);
	pthread_cond_init(&p.cv_done, NULL);
	p.bound = ZSTD_compressBound(c->block_size) + CBI_TAG_LEN;
	/* The slots' buffers (a block of data and its compressed output each)
	 * stay within CBI_WORK_BUDGET: smaller batches for many threads, and
	 * at most as many threads as that budget holds slots of one block. */
	uint64_t per_block = (uint64_t)c->block_size + p.bound;
	int threads = cbi_worker_count(c->threads, CBI_MAX(3u, CBI_WORK_BUDGET / per_block) - 2);
	/* one item per worker, one being consumed, one ready ahead */
	p.nslots = (unsigned)threads + 2;
	p.per_batch =
		(uint32_t)CBI_MAX(1u, CBI_MIN(BATCH_BYTES / c->block_size, CBI_WORK_BUDGET / p.nslots / per_block));
	p.nblocks = cbi_nblocks(c->src->size, c->block_size);
	pthread_t *wk = calloc((size_t)threads, sizeof *wk);
	p.slots = calloc(p.nslots, sizeof *p.slots);
	p.hpar = calloc(HOLE_CHUNK, sizeof *p.hpar);
	int rc = 0;
	if (!wk || !p.slots || !p.hpar) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	for (unsigned i = 0; i < p.nslots; i++) {
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
	int nwk = 0;
	for (; nwk < threads; nwk++)
		if (pthread_create(&wk[nwk], NULL, worker_main, &p))
			break;
	if (!nwk) {
		cbi_error e;
		cbi_err(&e, -EAGAIN, "unable to start the worker threads");
		fail(&p, -EAGAIN, &e);
	}

	double last = 0;
	uint64_t done_blocks = 0, done_bytes = 0;
	for (uint64_t b = 0; done_blocks < p.nblocks; b++) {
		batch *s = &p.slots[b % p.nslots];
		pthread_mutex_lock(&p.mu);
		while (!p.stop && !(s->state == S_DONE && s->idx == b))
			pthread_cond_wait(&p.cv_done, &p.mu);
		int stop = p.stop;
		pthread_mutex_unlock(&p.mu);
		if (stop)
			break;
		int r = 0;
		if (s->kind == K_HOLE)
			r = emit_hole(&p, s, &last, &done_bytes);
		else
			for (uint32_t j = 0; j < s->nblk && !r; j++)
				r = sink_one(&p, s->first + j, &s->out[j], &done_bytes);
		done_blocks += s->nblk;
		pthread_mutex_lock(&p.mu);
		s->state = S_EMPTY;
		pthread_cond_broadcast(&p.cv_free);
		pthread_mutex_unlock(&p.mu);
		if (r || report(&p, &last, done_bytes, done_blocks == p.nblocks))
			break;
	}
	for (int i = 0; i < nwk; i++)
		pthread_join(wk[i], NULL);
	if (!p.err) {
		/* the tail may have been a hole taken on trust long ago */
		cbi_error e;
		int r = cbi_source_check_size(c->src, &e);
		if (r)
			fail(&p, r, &e);
	}
	if (p.err) {
		rc = p.err;
		if (err)
			*err = p.errmsg;
	}
	st->bytes_read = p.bytes_read;
end:
	if (p.slots)
		for (unsigned i = 0; i < p.nslots; i++) {
			free(p.slots[i].data);
			free(p.slots[i].comp);
			free(p.slots[i].hole);
			free(p.slots[i].parent);
			free(p.slots[i].out);
		}
	free(p.slots);
	free(p.hpar);
	free(wk);
	pthread_mutex_destroy(&p.mu);
	pthread_mutex_destroy(&p.pmu);
	pthread_cond_destroy(&p.cv_free);
	pthread_cond_destroy(&p.cv_done);
	return rc;
}
