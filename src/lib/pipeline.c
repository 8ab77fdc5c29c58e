/* pipeline.c - reader thread, worker threads, in-order consumer. */
#define _GNU_SOURCE
#include "pipeline.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <zstd.h>

#include "image.h"
#include "util.h"

#define BATCH_BYTES (4u << 20)

enum { S_EMPTY, S_READ, S_WORK, S_DONE };

typedef struct batch {
	uint64_t idx;
	uint64_t first;
	uint32_t nblk;
	int state;
	uint8_t *data;
	uint8_t *hole;      /* per block: wholly in a hole of the source, data not filled */
	uint8_t *comp;
	cbi_idx_ent *parent;
	cbi_pipe_block *out;
} batch;

typedef struct pipe_s {
	const cbi_pipe_cfg *cfg;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	batch *slots;
	unsigned nslots;
	uint32_t per_batch;
	uint64_t nbatches, nblocks;
	uint64_t read_done;   /* batches handed to workers */
	int stop;
	int err;
	cbi_error errmsg;
	uint64_t bytes_read;
	size_t bound;
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
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

static void *reader_main(void *arg)
{
	pipe_s *p = arg;
	const cbi_pipe_cfg *c = p->cfg;
	for (uint64_t b = 0; b < p->nbatches; b++) {
		batch *s = &p->slots[b % p->nslots];
		pthread_mutex_lock(&p->mu);
		while (!p->stop && s->state != S_EMPTY)
			pthread_cond_wait(&p->cv, &p->mu);
		int stop = p->stop;
		s->idx = b;
		pthread_mutex_unlock(&p->mu);
		if (stop)
			return NULL;
		s->first = b * p->per_batch;
		s->nblk = (uint32_t)CBI_MIN((uint64_t)p->per_batch, p->nblocks - s->first);
		uint64_t off = s->first * c->block_size;
		size_t len = (size_t)CBI_MIN((uint64_t)s->nblk * c->block_size, c->src->size - off);
		uint64_t got = 0;
		cbi_error e;
		memset(s->hole, 0, s->nblk);
		int rc = cbi_source_read_blocks(c->src, off, len, s->data, c->block_size, s->hole, &got, &e);
		if (rc) {
			fail(p, rc, &e);
			return NULL;
		}
		if (c->parent)
			for (uint32_t j = 0; j < s->nblk; j++) {
				rc = cbi_index_get(c->parent, s->first + j, &s->parent[j]);
				if (rc) {
					cbi_err(&e, rc, "unable to read the parent index '%s': %s",
						c->parent->f->path, cbi_errtext(rc));
					fail(p, rc, &e);
					return NULL;
				}
			}
		pthread_mutex_lock(&p->mu);
		p->bytes_read += got;
		s->state = S_READ;
		p->read_done = b + 1;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	return NULL;
}

static int process(pipe_s *p, batch *s, ZSTD_CCtx *cc, cbi_cx *cx)
{
	const cbi_pipe_cfg *c = p->cfg;
	for (uint32_t j = 0; j < s->nblk; j++) {
		uint64_t blk = s->first + j;
		const uint8_t *d = s->data + (size_t)j * c->block_size;
		uint32_t len = cbi_block_len(c->src->size, c->block_size, blk);
		cbi_pipe_block *o = &s->out[j];
		memset(o, 0, sizeof *o);
		o->raw_len = len;
		const cbi_idx_ent *par = c->parent ? &s->parent[j] : NULL;
		if (s->hole[j] || cbi_is_zero(d, len)) {
			o->ent.flags = CBI_IDX_ZERO;
			o->changed = par && !(par->flags & CBI_IDX_ZERO);
			continue;
		}
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
		pthread_mutex_lock(&p->mu);
		batch *s = NULL;
		for (;;) {
			if (p->stop)
				break;
			for (unsigned i = 0; i < p->nslots; i++)
				if (p->slots[i].state == S_READ && (!s || p->slots[i].idx < s->idx))
					s = &p->slots[i];
			if (s || p->read_done == p->nbatches)
				break;
			pthread_cond_wait(&p->cv, &p->mu);
		}
		if (!s) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		s->state = S_WORK;
		pthread_mutex_unlock(&p->mu);
		if (process(p, s, cc, cx)) {
			cbi_error e;
			cbi_err(&e, -EIO, "hashing or encryption failed (libcrypto)");
			fail(p, -EIO, &e);
			break;
		}
		pthread_mutex_lock(&p->mu);
		s->state = S_DONE;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	ZSTD_freeCCtx(cc);
	cbi_cx_free(cx);
	return NULL;
}

int cbi_pipe_run(const cbi_pipe_cfg *c, cbi_pipe_stats *st, cbi_error *err)
{
	pipe_s p;
	memset(&p, 0, sizeof p);
	p.cfg = c;
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	int threads = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (threads < 1)
		threads = 1;
	if (threads > 64)
		threads = 64;
	p.per_batch = CBI_MAX(1u, BATCH_BYTES / c->block_size);
	p.nblocks = cbi_nblocks(c->src->size, c->block_size);
	p.nbatches = (p.nblocks + p.per_batch - 1) / p.per_batch;
	p.nslots = (unsigned)threads + 2;
	p.bound = ZSTD_compressBound(c->block_size) + CBI_TAG_LEN;
	pthread_t rd, *wk = calloc((size_t)threads, sizeof *wk);
	p.slots = calloc(p.nslots, sizeof *p.slots);
	int rc = 0, started = 0;
	if (!wk || !p.slots) {
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
	if (pthread_create(&rd, NULL, reader_main, &p)) {
		rc = cbi_err(err, -EAGAIN, "unable to start the reader thread");
		goto end;
	}
	started = 1;
	int nwk = 0;
	for (; nwk < threads; nwk++)
		if (pthread_create(&wk[nwk], NULL, worker_main, &p))
			break;
	if (!nwk)
		fail(&p, -EAGAIN, NULL);

	double last = 0;
	uint64_t done_bytes = 0;
	for (uint64_t b = 0; b < p.nbatches; b++) {
		batch *s = &p.slots[b % p.nslots];
		pthread_mutex_lock(&p.mu);
		while (!p.stop && !(s->state == S_DONE && s->idx == b))
			pthread_cond_wait(&p.cv, &p.mu);
		int stop = p.stop;
		pthread_mutex_unlock(&p.mu);
		if (stop)
			break;
		for (uint32_t j = 0; j < s->nblk; j++) {
			cbi_error e;
			int r = c->sink(c->sink_ud, s->first + j, &s->out[j], &e);
			if (r) {
				fail(&p, r, &e);
				break;
			}
			done_bytes += s->out[j].raw_len;
		}
		pthread_mutex_lock(&p.mu);
		s->state = S_EMPTY;
		pthread_cond_broadcast(&p.cv);
		pthread_mutex_unlock(&p.mu);
		if (c->progress) {
			double now = cbi_now();
			if (now - last >= 0.2 || b + 1 == p.nbatches) {
				last = now;
				if (c->progress(c->progress_ud, done_bytes, c->src->size)) {
					cbi_error e;
					cbi_err(&e, -ECANCELED, "interrupted: nothing of this run was kept");
					fail(&p, -ECANCELED, &e);
				}
			}
		}
	}
	pthread_join(rd, NULL);
	for (int i = 0; i < nwk; i++)
		pthread_join(wk[i], NULL);
	if (p.err) {
		rc = p.err;
		if (err)
			*err = p.errmsg;
	}
	st->bytes_read = p.bytes_read;
end:
	(void)started;
	if (p.slots)
		for (unsigned i = 0; i < p.nslots; i++) {
			free(p.slots[i].data);
			free(p.slots[i].comp);
			free(p.slots[i].hole);
			free(p.slots[i].parent);
			free(p.slots[i].out);
		}
	free(p.slots);
	free(wk);
	pthread_mutex_destroy(&p.mu);
	pthread_cond_destroy(&p.cv);
	return rc;
}
