/* restore.c - cbi_restore(): write a disk exactly as it was at a point.
 * Every block is checked against the point's index before it is written. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "pool.h"
#include "state.h"
#include "source.h"
#include "target.h"
#include "util.h"

#define BATCH_BYTES (4u << 20)   /* blocks a worker takes at a time */

/* A resolved point: its chain and the open files needed to read it. */
typedef struct cbi_resolved {
	cbi_point *pts;
	size_t npts;
	size_t *chain;          /* chain[s] = index into pts of seq s */
	uint32_t len;
	cbi_index *index;       /* index of the requested point */
	cbi_image **imgs;       /* opened lazily, one per seq */
	int *img_rc;            /* per seq: opening its image failed with this */
	int encrypted;
	cbi_keys keys;          /* encrypted chain: its keys */
} cbi_resolved;

static void resolved_free(cbi_resolved *v)
{
	if (v->imgs)
		for (uint32_t i = 0; i < v->len; i++)
			cbi_image_close(v->imgs[i]);
	free(v->imgs);
	free(v->img_rc);
	cbi_index_close(v->index);
	free(v->chain);
	free(v->pts);
	OPENSSL_cleanse(v, sizeof *v);
}

/* Check the headers of every index of an encrypted chain against its keys:
 * each names its parent, so the parent links are then authentic. */
static int check_chain_headers(cbi_resolved *v, cbi_error *err)
{
	for (uint32_t s = 0; s < v->len; s++) {
		cbi_index *x = NULL;
		const char *path = v->pts[v->chain[s]].index_file;
		int rc = cbi_index_open(path, &x, err);
		if (!rc && (rc = cbi_index_set_keys(x, &v->keys)))
			rc = cbi_err(err, -CBI_EAUTH, "'%s': %s", path,
				     cbi_hdr_keyed_problem(rc));
		cbi_index_close(x);
		if (rc)
			return rc;
	}
	return 0;
}

/* Find the point that file belongs to, its chain and its index; unlock an
 * encrypted chain and check the index's digest (a MAC when encrypted):
 * everything restore takes from the index is then authentic. */
static int resolve(const char *file, const cbi_restore_opts *o, cbi_resolved *v, cbi_error *err)
{
	memset(v, 0, sizeof *v);
	cbi_point me;
	memset(&me, 0, sizeof me);
	int kind = 0, rc = cbi_point_read_file(file, &me, &kind, err);
	if (rc)
		return rc;
	char dir[4096];
	cbi_dirname(file, dir, sizeof dir);
	if ((rc = cbi_chain_scan(dir, &v->pts, &v->npts, err)))
		return rc;
	long i = -1;
	for (size_t k = 0; k < v->npts; k++)
		if (!memcmp(v->pts[k].point_id, me.point_id, 16) &&
		    !memcmp(v->pts[k].index_digest, me.index_digest, 32))
			i = (long)k;
	if (i < 0) {
		rc = cbi_err(err, -CBI_ENOPARENT, "'%s': the index file of this point is not in '%s'", file,
			     dir);
		goto fail;
	}
	if ((rc = cbi_chain_resolve(v->pts, v->npts, (size_t)i, &v->chain, err)))
		goto fail;
	v->len = v->pts[i].seq + 1;
	if ((rc = cbi_index_open(v->pts[i].index_file, &v->index, err)))
		goto fail;
	if (v->index->hdr.flags & CBI_HDR_ENCRYPTED) {
		const char *sd = o->state_dir && *o->state_dir ? o->state_dir : CBI_DEFAULT_STATE_DIR;
		if ((rc = cbi_chain_unlock(dir, sd, &v->index->hdr, o->pass, o->pass_ud, &v->keys, NULL, 0, NULL, NULL, err)) ||
		    (rc = check_chain_headers(v, err)) || (rc = cbi_index_set_keys(v->index, &v->keys)))
			goto fail;
		v->encrypted = 1;
	}
	if ((rc = cbi_index_check_digest(v->index))) {
		rc = cbi_err(err, rc == -CBI_EDAMAGED ? -CBI_EDAMAGED : rc, "index '%s': %s", v->pts[i].index_file,
			     rc == -CBI_EDAMAGED ? (v->encrypted ? "authentication failed: the file was altered"
								 : "digest mismatch: the file is damaged")
						 : cbi_errtext(rc));
		goto fail;
	}
	v->imgs = calloc(v->len, sizeof *v->imgs);
	v->img_rc = calloc(v->len, sizeof *v->img_rc);
	if (!v->imgs || !v->img_rc) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	return 0;
fail:
	resolved_free(v);
	return rc;
}

/* Is there, in dir, an image file (by its header) of point point_id that
 * does not read as a complete image? Its path to out, the reason to pe. */
static int find_damaged_image(const char *dir, const uint8_t point_id[16], char *out, size_t outsz,
			      cbi_error *pe)
{
	DIR *d = opendir(dir);
	if (!d)
		return 0;
	struct dirent *de;
	int found = 0;
	while (!found && (de = readdir(d))) {
		if (de->d_name[0] == '.' || !cbi_has_ext(de->d_name, ".cbi"))
			continue;
		uint8_t b[CBI_HDR_SIZE];
		cbi_hdr h;
		cbi_point q;
		int kind = 0;
		if ((size_t)snprintf(out, outsz, "%s/%s", dir, de->d_name) >= outsz)
			continue;
		int fd = open(out, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		int rc = cbi_pread_full(fd, b, sizeof b, 0);
		close(fd);
		memset(&q, 0, sizeof q);
		found = !rc && !cbi_hdr_decode(b, &h) && h.kind == CBI_KIND_IMAGE && !memcmp(h.point_id, point_id, 16) &&
			cbi_point_read_file(out, &q, &kind, pe);
	}
	closedir(d);
	return found;
}

/* Open the image of seq and check it against the chain; on failure nothing
 * is kept, so the next call fails again with the same message. */
static int open_image(cbi_resolved *v, uint32_t seq, cbi_error *err)
{
	const cbi_point *p = &v->pts[v->chain[seq]];
	if (!p->has_image) {
		/* An image of this point that is there but incomplete or damaged
		 * is damage (exit 3), not a missing file: the scan pairs only
		 * images that read as such. */
		char bad[4096], dir[4096];
		cbi_error pe;
		cbi_dirname(p->index_file, dir, sizeof dir);
		if (find_damaged_image(dir, p->point_id, bad, sizeof bad, &pe) && cbi_is_damage(pe.code))
			return cbi_err(err, pe.code, "image file of point seq %u is damaged: %s", seq, pe.msg);
		return cbi_err(err, -CBI_ENOPARENT,
			       "image file of point seq %u (index '%s') is missing or damaged: "
			       "run 'cbimg verify'", seq, p->index_file);
	}
	cbi_image *m = NULL;
	int rc = cbi_image_open(p->file, &m, err);
	if (rc)
		return rc;
	/* records are read in file order: a larger read-ahead (a hint) */
	(void)posix_fadvise(m->f->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (v->encrypted && (rc = cbi_image_set_keys(m, &v->keys)))
		rc = cbi_err(err, -CBI_EAUTH, "'%s': %s", p->file,
			     cbi_hdr_keyed_problem(rc));
	else if (memcmp(m->hdr.chain_id, v->index->hdr.chain_id, 16) || m->hdr.seq != seq ||
		 m->hdr.block_size != v->index->hdr.block_size ||
		 m->hdr.source_size != v->index->hdr.source_size)
		rc = cbi_err(err, -CBI_EDAMAGED, "'%s': header does not match the chain", p->file);
	if (rc) {
		cbi_image_close(m);
		return rc;
	}
	v->imgs[seq] = m;
	return 0;
}

/* err NULL: a seq that failed before fails again at once, without a
 * message (the planner; the message is made again when it is needed). */
static int get_image(cbi_resolved *v, uint32_t seq, cbi_image **out, cbi_error *err)
{
	if (seq >= v->len)
		return cbi_err(err, -CBI_EDAMAGED, "index '%s' names a block owner seq %u beyond the chain",
			       v->index->f->path, seq);
	if (!v->imgs[seq]) {
		if (v->img_rc[seq] && !err)
			return v->img_rc[seq];
		int rc = open_image(v, seq, err);
		if (rc)
			return v->img_rc[seq] = rc;
	}
	*out = v->imgs[seq];
	return 0;
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
	if (rc)
		return cbi_err(err, rc, "'%s': block %llu: %s", m->f->path, (unsigned long long)i,
			       cbi_errtext(rc));
	*img = m;
	return 0;
}

static int read_entry(cbi_resolved *v, uint64_t i, cbi_idx_ent *e, cbi_error *err)
{
	int rc = cbi_index_get(v->index, i, e);
	return rc ? cbi_err(err, rc, "unable to read index '%s': %s", v->index->f->path, cbi_errtext(rc)) : 0;
}

/* ---- the loop, on the worker pool (pool.h): plan (calling thread) fills a
 * batch of blocks with their index entries, images and table entries
 * (cheap, and not thread-safe), workers read, authenticate, decompress and
 * check them (and for changed-only read and hash the target's blocks), and
 * consume (calling thread) writes the batches to the target in block order.
 * Memory: 2 * threads + 2 batches of about BATCH_BYTES plus one record
 * buffer per worker. */

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
	int *seq_rc;            /* per seq: its image failed to open while planning */
	double last;            /* last progress report */
} rloop;

/* Block j of batch s: its entry and where it is. A failure is kept for the
 * block (planning makes no message: consume makes it again if the block is
 * needed), and an image that failed to open is not tried again. */
static void plan_block(rloop *p, rbatch *s, uint32_t j)
{
	cbi_error e;
	uint64_t i = s->first + j;
	cbi_idx_ent *x = &s->ent[j];
	s->act[j] = A_DATA;
	s->img[j] = NULL;
	if ((s->prc[j] = read_entry(p->v, i, x, &e))) {
		s->act[j] = A_BAD; /* nothing to go by */
		return;
	}
	int cached = !(x->flags & CBI_IDX_ZERO) && x->owner < p->v->len;
	if (cached && (s->prc[j] = p->seq_rc[x->owner]))
		return;
	cbi_image *m = NULL;
	if (cached && (s->prc[j] = get_image(p->v, x->owner, &m, &e)))
		p->seq_rc[x->owner] = s->prc[j];
	else
		s->prc[j] = locate_block(p->v, i, x, &s->img[j], &s->te[j], &e);
}

static int plan(void *ud, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rbatch *s = &p->slots[slot];
	if (p->next == p->n_blocks)
		return CBI_POOL_DONE;
	s->first = p->next;
	s->nblk = (uint32_t)CBI_MIN((uint64_t)p->per_batch, p->n_blocks - s->first);
	s->replan = 0;
	p->next += s->nblk;
	for (uint32_t j = 0; j < s->nblk; j++)
		plan_block(p, s, j);
	return 0;
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

static int work(void *ud, void *ws, unsigned slot, cbi_error *err)
{
	rloop *p = ud;
	rws *w = ws;
	rbatch *s = &p->slots[slot];
	uint64_t off0 = s->first * p->bs;
	if (p->o->changed_only) {
		size_t n = (size_t)CBI_MIN((uint64_t)s->nblk * p->bs, p->size - off0);
		int rc = cbi_pread_full(p->t->fd, s->data, n, off0);
		if (rc)
			return cbi_err(err, rc, "unable to read target '%s' at byte %llu: %s", p->o->target,
				       (unsigned long long)off0, cbi_errtext(rc));
	}
	for (uint32_t j = 0; j < s->nblk; j++) {
		uint64_t i = s->first + j;
		uint32_t len = cbi_block_len(p->size, p->bs, i);
		uint8_t *d = s->data + (size_t)j * p->bs;
		const cbi_idx_ent *e = &s->ent[j];
		if (s->act[j] == A_BAD) /* its index entry could not be read */
			return replan(s, j);
		if (p->o->changed_only) {
			int same;
			if (e->flags & CBI_IDX_ZERO) {
				same = cbi_is_zero(d, len);
			} else {
				uint8_t hh[16];
				same = !cbi_hash_block_spec(&p->v->index->hs, w->cx, d, len, hh) &&
				       !memcmp(hh, e->hash, 16);
			}
			if (same) {
				s->act[j] = A_SAME;
				continue;
			}
		}
		if (e->flags & CBI_IDX_ZERO) {
			s->act[j] = A_ZERO;
			continue;
		}
		if (s->prc[j]) /* needed, but its image or record was not found */
			return replan(s, j);
		const char *why = NULL;
		int rc = cbi_image_read_block(s->img[j], &s->te[j], w->dctx, w->cx, w->scratch, d, e->hash, &why);
		if (rc < 0)
			return cbi_err(err, rc, "'%s': block %llu: %s", s->img[j]->f->path, (unsigned long long)i,
				       why ? why : cbi_errtext(rc));
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
	return rc ? rc : cbi_err(err, prc, "block %llu: %s", (unsigned long long)i, cbi_errtext(prc));
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
		j = k;
	}
	if (p->o->progress) {
		double now = cbi_now();
		if (now - p->last >= 0.2) {
			p->last = now;
			uint64_t done = CBI_MIN((s->first + s->nblk) * (uint64_t)p->bs, p->size);
			if (p->o->progress(p->o->progress_ud, done, p->size))
				return cbi_err(err, -ECANCELED, "interrupted");
		}
	}
	return 0;
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
	p.slots = slots_new(d.nslots, p.per_batch, p.bs);
	p.seq_rc = calloc(v->len, sizeof *p.seq_rc);
	int rc;
	if (!p.slots || !p.seq_rc) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
	} else {
		cbi_pool_cfg pc = { .threads = d.threads, .nslots = d.nslots, .ud = &p, .init = ws_new,
				    .fini = ws_free, .plan = plan, .work = work, .consume = consume };
		rc = cbi_pool_run(&pc, err);
	}
	slots_free(p.slots, d.nslots);
	free(p.seq_rc);
	return rc;
}

int cbi_restore(const cbi_restore_opts *o, cbi_restore_result *r, cbi_error *err)
{
	double t0 = cbi_now();
	memset(r, 0, sizeof *r);
	if (!o->point || !o->target)
		return cbi_err(err, -CBI_EUSAGE, "point and target are required");
	cbi_resolved v;
	int rc = resolve(o->point, o, &v, err);
	if (rc)
		return rc;
	const cbi_hdr *h = &v.index->hdr;
	cbi_target *t = NULL;
	unsigned fl = (o->force ? CBI_TARGET_FORCE : 0) | (o->changed_only ? CBI_TARGET_READ : 0);
	if ((rc = cbi_target_open(o->target, h->source_size, fl, &t, err)))
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
