/* prune.c - retention: keep rules, merged points, removing what no rule
 * keeps (cbimg.h, cbi_prune; format/SPEC.md, "Merged points").
 *
 * The order of every change is what keeps each surviving point restorable
 * at any moment (a kill -9 included):
 *   1. a kept point's merged image is written under a temporary name,
 *      fsynced, renamed in (a name of its own: the old image stays) and the
 *      directory fsynced; readers prefer it from then on;
 *   2. the kept point's older image is removed;
 *   3. the removed points are removed newest first, each index before its
 *      image, so that what is left of them is always a restorable prefix;
 *   4. the directory is fsynced.
 * A prune killed between 1 and 4 leaves points and images that the merged
 * image made redundant; the next prune removes them first (with a note). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "catalog.h"
#include "cbimg.h"
#include "chain.h"
#include "chainrd.h"
#include "dest.h"
#include "image.h"
#include "index.h"
#include "job.h"
#include "prune.h"
#include "sfile.h"
#include "util.h"

/* ------------------------------------------------------------ keep rules */

static int by_newest(const void *a, const void *b, void *ctx)
{
	const cbi_point *x = (const cbi_point *)ctx + *(const size_t *)a;
	const cbi_point *y = (const cbi_point *)ctx + *(const size_t *)b;
	if (x->created_ns != y->created_ns)
		return x->created_ns < y->created_ns ? 1 : -1;
	if (x->seq != y->seq)
		return x->seq < y->seq ? 1 : -1;
	return memcmp(x->point_id, y->point_id, 16);
}

/* The period of t for a bucket rule, in local time (as restic). */
static int64_t period(int64_t ns, int rule)
{
	time_t t = (time_t)(ns / 1000000000LL - (ns < 0 && ns % 1000000000LL ? 1 : 0));
	struct tm tm;
	if (!localtime_r(&t, &tm))
		return 0;
	int64_t y = tm.tm_year + 1900;
	switch (rule) {
	case CBI_KEEP_HOURLY:
		return ((y * 1000 + tm.tm_yday) * 100) + tm.tm_hour;
	case CBI_KEEP_DAILY:
		return y * 1000 + tm.tm_yday;
	case CBI_KEEP_WEEKLY: {
		char b[16];
		strftime(b, sizeof b, "%G%V", &tm); /* ISO 8601 year and week */
		return strtoll(b, NULL, 10);
	}
	case CBI_KEEP_MONTHLY:
		return y * 100 + tm.tm_mon;
	default:
		return y;
	}
}

int cbi_prune_select(const cbi_point *pts, size_t n, const cbi_keep_rules *r, unsigned *why)
{
	if (!r->last && !r->hourly && !r->daily && !r->weekly && !r->monthly && !r->yearly && r->within_ns <= 0 &&
	    !r->chains)
		return -CBI_EUSAGE;
	for (size_t i = 0; i < n; i++)
		why[i] = 0;
	if (!n)
		return 0;
	size_t *ord = malloc(n * sizeof *ord);
	if (!ord)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		ord[i] = i;
	qsort_r(ord, n, sizeof *ord, by_newest, (void *)pts);
	why[ord[0]] |= CBI_KEEP_NEWEST;
	for (size_t k = 0; k < n && k < r->last; k++)
		why[ord[k]] |= CBI_KEEP_LAST;
	const struct {
		unsigned count;
		int bit;
	} buckets[] = {
		{ r->hourly, CBI_KEEP_HOURLY }, { r->daily, CBI_KEEP_DAILY },       { r->weekly, CBI_KEEP_WEEKLY },
		{ r->monthly, CBI_KEEP_MONTHLY }, { r->yearly, CBI_KEEP_YEARLY },
	};
	for (size_t b = 0; b < sizeof buckets / sizeof buckets[0]; b++) {
		unsigned left = buckets[b].count;
		int have = 0;
		int64_t last = 0;
		for (size_t k = 0; k < n && left; k++) {
			int64_t v = period(pts[ord[k]].created_ns, buckets[b].bit);
			if (have && v == last)
				continue;
			why[ord[k]] |= (unsigned)buckets[b].bit;
			last = v;
			have = 1;
			left--;
		}
	}
	if (r->within_ns > 0) {
		int64_t newest = pts[ord[0]].created_ns;
		for (size_t k = 0; k < n; k++)
			if (newest - pts[ord[k]].created_ns < r->within_ns)
				why[ord[k]] |= CBI_KEEP_WITHIN;
	}
	if (r->chains) {
		/* chains in the order of their newest points: ord is newest first */
		unsigned seen = 0;
		for (size_t k = 0; k < n && seen < r->chains; k++) {
			int first = 1;
			for (size_t j = 0; j < k && first; j++)
				first = memcmp(pts[ord[j]].chain_id, pts[ord[k]].chain_id, 16) != 0;
			if (!first)
				continue;
			seen++;
			for (size_t i = 0; i < n; i++)
				if (!memcmp(pts[i].chain_id, pts[ord[k]].chain_id, 16))
					why[i] |= CBI_KEEP_CHAINS;
		}
	}
	free(ord);
	return 0;
}

/* ------------------------------------------------------------------ plan */

typedef struct merge_job {
	size_t k;               /* the kept point (into the group's points) */
	long base;              /* the previous kept point, -1: a synthetic full */
	size_t *rm;             /* the removed points it replaces, oldest first */
	size_t nrm;
} merge_job;

typedef struct pctx {
	const cbi_prune_opts *o;
	cbi_prune_result *r;
	cbi_error *err;
	cbi_point *pts;         /* the group's points, oldest first */
	size_t n;
	unsigned *why;
	int *act;
	merge_job *jobs;
	size_t njobs;
	size_t *plain_rm;       /* removed without a merge: tails of chains, whole chains */
	size_t nplain;
	uint64_t key;           /* the job key */
	const char *job;        /* its name, for notes (NULL: the group's) */
	char tag[64];
	uint64_t done, total;   /* progress: block bytes copied into merged images */
} pctx;

static void add_note(cbi_prune_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_note(cbi_prune_result *r, const char *fmt, ...)
{
	if (r->n_notes >= CBI_PRUNE_MAX_NOTES)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->notes[r->n_notes++], sizeof r->notes[0], fmt, ap);
	va_end(ap);
}

static int by_age(const void *a, const void *b)
{
	const cbi_point *x = a, *y = b;
	if (x->created_ns != y->created_ns)
		return x->created_ns < y->created_ns ? -1 : 1;
	if (x->seq != y->seq)
		return x->seq < y->seq ? -1 : 1;
	return strcmp(x->index_file, y->index_file);
}

/* The group's points (selectors), oldest first, into c->pts. */
static int pick_group(pctx *c, const cbi_point *all, size_t nall)
{
	const cbi_prune_opts *o = c->o;
	const cbi_point *g = NULL;
	size_t n = 0;
	for (size_t i = 0; i < nall; i++) {
		const cbi_point *p = &all[i];
		if ((o->host && *o->host && strcmp(o->host, p->host)) || (o->job && *o->job && strcmp(o->job, p->job)) ||
		    (o->source && *o->source && strcmp(o->source, p->source_id) && strcmp(o->source, p->source_path)))
			continue;
		if (g && (strcmp(g->host, p->host) || strcmp(g->job, p->job) || strcmp(g->source_id, p->source_id)))
			return cbi_err(c->err, -CBI_EUSAGE,
				       "the selectors match points of several jobs in '%s' (job '%s' of '%s' and job "
				       "'%s' of '%s'): prune acts on one; choose it with --host, --source and --job",
				       o->dest, g->job, g->host, p->job, p->host);
		g = p;
		n++;
	}
	if (!n)
		return cbi_err(c->err, -CBI_ENOCHAIN, "no points in '%s' match the selectors", o->dest);
	if (!(c->pts = malloc(n * sizeof *c->pts)))
		return cbi_err(c->err, -ENOMEM, "out of memory");
	c->n = 0;
	for (size_t i = 0; i < nall; i++)
		if (!strcmp(g->host, all[i].host) && !strcmp(g->job, all[i].job) &&
		    !strcmp(g->source_id, all[i].source_id))
			c->pts[c->n++] = all[i];
	qsort(c->pts, c->n, sizeof *c->pts, by_age);
	return 0;
}

/* Decide, chain by chain, what happens to each point. */
static int plan(pctx *c)
{
	int rc = cbi_prune_select(c->pts, c->n, &c->o->keep, c->why);
	if (rc == -CBI_EUSAGE)
		return cbi_err(c->err, rc,
			       "no keep rule given: prune removes nothing without one (--keep-last, --keep-daily, "
			       "..., --keep-within, --keep-chains)");
	if (rc)
		return cbi_err(c->err, rc, "out of memory");
	c->act = calloc(c->n, sizeof *c->act);
	c->jobs = calloc(c->n, sizeof *c->jobs);
	c->plain_rm = calloc(c->n, sizeof *c->plain_rm);
	size_t *path = calloc(c->n, sizeof *path);
	if (!c->act || !c->jobs || !c->plain_rm || !path) {
		free(path);
		return cbi_err(c->err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < c->n; i++)
		c->act[i] = c->why[i] ? CBI_PRUNE_KEEP : 0;
	for (size_t i = 0; i < c->n; i++) {
		if (c->act[i] && c->act[i] != CBI_PRUNE_KEEP)
			continue;
		/* one chain at a time, from its newest point */
		int seen = 0;
		for (size_t j = 0; j < i && !seen; j++)
			seen = !memcmp(c->pts[j].chain_id, c->pts[i].chain_id, 16);
		if (seen)
			continue;
		long tip = -1;
		int any_kept = 0;
		for (size_t j = 0; j < c->n; j++)
			if (!memcmp(c->pts[j].chain_id, c->pts[i].chain_id, 16)) {
				if (tip < 0 || c->pts[j].seq > c->pts[tip].seq)
					tip = (long)j;
				any_kept |= c->why[j] != 0;
			}
		char id[9];
		cbi_id_short(c->pts[i].chain_id, id);
		if (!any_kept) { /* a whole chain goes: newest first */
			for (size_t j = c->n; j-- > 0;)
				if (!memcmp(c->pts[j].chain_id, c->pts[i].chain_id, 16)) {
					c->act[j] = CBI_PRUNE_REMOVE;
					c->plain_rm[c->nplain++] = j;
				}
			continue;
		}
		size_t *v = NULL;
		if (cbi_chain_resolve(c->pts, c->n, (size_t)tip, &v, NULL)) {
			/* an incomplete chain cannot be merged: only its tail may go */
			add_note(c->r, "chain %s of job '%s' is incomplete (a parent is missing): its points are "
				       "kept", id, c->pts[i].job);
			for (size_t j = 0; j < c->n; j++)
				if (!memcmp(c->pts[j].chain_id, c->pts[i].chain_id, 16) && !c->act[j])
					c->act[j] = CBI_PRUNE_KEEP;
			continue;
		}
		/* the points on the chain of its newest point, oldest first */
		size_t np = 0;
		for (uint32_t s = 0; s <= c->pts[tip].seq; s++)
			if (c->pts[v[s]].seq == s)
				path[np++] = v[s];
		free(v);
		for (size_t j = 0; j < c->n; j++) {
			int on = 0;
			for (size_t q = 0; q < np && !on; q++)
				on = path[q] == j;
			if (!on && !memcmp(c->pts[j].chain_id, c->pts[i].chain_id, 16) && !c->act[j]) {
				c->act[j] = CBI_PRUNE_KEEP; /* a branch: left alone */
				add_note(c->r, "'%s' is not on the chain of the newest point: kept", c->pts[j].index_file);
			}
		}
		long prev = -1;
		size_t first_rm = 0, nrm = 0;
		for (size_t q = 0; q < np; q++) {
			size_t j = path[q];
			if (!c->why[j]) {
				if (!nrm)
					first_rm = q;
				nrm++;
				continue;
			}
			if (nrm) {
				merge_job *m = &c->jobs[c->njobs++];
				m->k = j;
				m->base = prev;
				m->nrm = nrm;
				if (!(m->rm = malloc(nrm * sizeof *m->rm))) {
					free(path);
					return cbi_err(c->err, -ENOMEM, "out of memory");
				}
				for (size_t t = 0; t < nrm; t++) {
					m->rm[t] = path[first_rm + t];
					c->act[m->rm[t]] = CBI_PRUNE_REMOVE;
				}
				c->act[j] = prev < 0 ? CBI_PRUNE_SYNTH_FULL : CBI_PRUNE_MERGE;
				nrm = 0;
			}
			prev = (long)j;
		}
		for (size_t t = np; nrm && t-- > first_rm;) { /* a tail after the last kept point */
			c->act[path[t]] = CBI_PRUNE_REMOVE;
			c->plain_rm[c->nplain++] = path[t];
		}
	}
	free(path);
	return 0;
}

/* ------------------------------------------------------------- changes */

static uint64_t file_size_of(const char *path)
{
	uint64_t total = 0;
	char seg[4200];
	struct stat st;
	for (uint32_t k = 0; k < 100000; k++) {
		if (cbi_sfile_segment_name(path, k, seg, sizeof seg) || stat(seg, &st))
			break;
		total += (uint64_t)st.st_size;
	}
	return total;
}

/* Remove a point: its index first (the point is gone), then every image of
 * it in the scan d. */
static void remove_point(pctx *c, const cbi_dest *d, const cbi_point *p)
{
	c->r->bytes_removed += file_size_of(p->index_file);
	cbi_sfile_remove(p->index_file);
	for (size_t i = 0; d && i < d->n; i++) {
		const cbi_dent_point *t = d->e[i].pt;
		char path[4200];
		if (!t || t->rc || t->kind != CBI_KIND_IMAGE || memcmp(t->p.point_id, p->point_id, 16) ||
		    memcmp(t->p.index_digest, p->index_digest, 32) || cbi_dest_path(d, &d->e[i], path, sizeof path))
			continue;
		c->r->bytes_removed += file_size_of(path);
		cbi_sfile_remove(path);
	}
	if (p->has_image && !access(p->file, F_OK)) {
		c->r->bytes_removed += file_size_of(p->file);
		cbi_sfile_remove(p->file);
	}
	c->r->removed++;
}

/* Read the record of block i from m, checked against the table entry and
 * the index entry e; with rekey, re-sealed from m's record key to kkey
 * (point kid). buf: header + payload. Returns the payload length. */
static int copy_record(cbi_image *m, uint64_t i, const cbi_idx_ent *e, cbi_cx *cx, const uint8_t *kkey,
		       const uint8_t kid[16], uint8_t *buf, cbi_rec_hdr *rh, cbi_error *err)
{
	cbi_tab_ent te;
	int rc = cbi_image_find(m, i, &te);
	if (rc)
		return cbi_err(err, rc == -ENOENT ? -CBI_EDAMAGED : rc, "'%s': block %llu: %s", m->f->path,
			       (unsigned long long)i, rc == -ENOENT ? "block missing from the image" : cbi_strerror(rc));
	uint32_t bs = m->hdr.block_size;
	if (te.stored_len > ZSTD_compressBound(bs) + CBI_TAG_LEN || te.offset < CBI_HDR_SIZE ||
	    te.offset > m->trl.table_offset ||
	    (uint64_t)CBI_REC_HDR_SIZE + te.stored_len > m->trl.table_offset - te.offset)
		return cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: table entry out of range", m->f->path,
			       (unsigned long long)i);
	if ((rc = cbi_sfr_pread(m->f, buf, CBI_REC_HDR_SIZE + te.stored_len, te.offset)))
		return cbi_err(err, rc, "unable to read '%s': %s", m->f->path, cbi_strerror(rc));
	if (cbi_rec_hdr_decode(buf, rh) || rh->block != i || rh->stored_len != te.stored_len ||
	    rh->flags != te.flags || rh->raw_len != cbi_block_len(m->hdr.source_size, bs, i) ||
	    memcmp(rh->hash, e->hash, 16))
		return cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: record does not match the index", m->f->path,
			       (unsigned long long)i);
	int enc = (m->hdr.flags & CBI_HDR_ENCRYPTED) != 0;
	if (enc != ((rh->flags & CBI_REC_AEAD) != 0) || (enc && rh->stored_len < CBI_TAG_LEN))
		return cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: record flags do not match the image",
			       m->f->path, (unsigned long long)i);
	if (enc && memcmp(m->hdr.point_id, kid, 16)) {
		/* bound to another point (format/SPEC.md, "Sealed records"): opened
		 * with its key, sealed with the kept point's; the record header
		 * (flags, lengths, hash) stays the same */
		uint8_t nonce[12], aad[CBI_REC_AAD_LEN], *pl = buf + CBI_REC_HDR_SIZE;
		uint32_t plen = rh->stored_len - CBI_TAG_LEN;
		if (!m->keyed)
			return cbi_err(err, -CBI_ENOKEY, "'%s': encrypted: no key", m->f->path);
		cbi_rec_nonce(i, nonce);
		cbi_rec_aad(m->hdr.chain_id, m->hdr.point_id, buf, aad);
		if (cbi_gcm_open(cx, m->rec_key, nonce, aad, sizeof aad, pl, plen, pl + plen, pl))
			return cbi_err(err, -CBI_EAUTH,
				       "'%s': block %llu: authentication failed: the record was altered, moved or "
				       "replayed",
				       m->f->path, (unsigned long long)i);
		if ((rc = cbi_image_seal_record(cx, kkey, m->hdr.chain_id, kid, buf, i, pl, plen)))
			return cbi_err(err, rc, "unable to seal block %llu: %s", (unsigned long long)i,
				       cbi_strerror(rc));
	}
	return (int)rh->stored_len;
}

/* Select merge job mj's kept point in ch and check the chain up to it;
 * *x: its index. */
static int select_kept(pctx *c, cbi_chain *ch, const merge_job *mj, cbi_index **x)
{
	const cbi_point *K = &c->pts[mj->k];
	long ki = cbi_chain_find(ch, K);
	int rc;
	if (ki < 0)
		return cbi_err(c->err, -CBI_ENOPARENT, "'%s' vanished during the prune", K->index_file);
	if ((rc = cbi_chain_select(ch, (size_t)ki, c->err)) || (rc = cbi_chain_check(ch, c->err)))
		return rc;
	*x = cbi_chain_tip_index(ch);
	return 0;
}

/* The first seq whose blocks merge job mj's image holds. */
static uint32_t first_seq_of(const pctx *c, const merge_job *mj)
{
	return mj->base >= 0 ? c->pts[mj->base].seq + 1 : 0;
}

/* Add the bytes of the blocks that merge job mj copies (its index alone)
 * to c->total. */
static int count_job(pctx *c, cbi_chain *ch, const merge_job *mj)
{
	cbi_index *x;
	int rc = select_kept(c, ch, mj, &x);
	uint32_t first = first_seq_of(c, mj);
	for (uint64_t i = 0; !rc && i < x->hdr.n_blocks; i++) {
		cbi_idx_ent e;
		if ((rc = cbi_index_get(x, i, &e)))
			return cbi_err(c->err, rc, "unable to read '%s': %s", c->pts[mj->k].index_file, cbi_strerror(rc));
		if (!(e.flags & CBI_IDX_ZERO) && e.owner >= first)
			c->total += cbi_block_len(x->hdr.source_size, x->hdr.block_size, i);
	}
	return rc;
}

/* Report progress; the caller's nonzero answer stops the prune. */
static int tick(pctx *c)
{
	const cbi_prune_opts *o = c->o;
	if (o->progress && o->progress(o->progress_ud, c->done, c->total))
		return cbi_err(c->err, -ECANCELED, "interrupted: the points left restore (the next prune goes on)");
	return 0;
}

/* Write the merged image of job m's kept point, rename it in, sync; with
 * copy, in copy mode (cbi_image_writer_copy_mode()), and on failure
 * *readback is the error of its read-back, if that failed. */
static int write_merged(pctx *c, cbi_chain *ch, const merge_job *mj, char *newpath, size_t npsz, int copy,
			int *readback)
{
	const cbi_point *K = &c->pts[mj->k], *A = mj->base >= 0 ? &c->pts[mj->base] : NULL;
	cbi_error *err = c->err;
	cbi_image_writer *w = NULL;
	cbi_cx *cx = NULL;
	uint8_t *buf = NULL, kkey[CBI_KEY_LEN];
	cbi_index *x;
	int rc;
	if ((rc = select_kept(c, ch, mj, &x)))
		return rc;
	cbi_hdr h = x->hdr;
	const cbi_keys *keys = NULL;
	if ((rc = cbi_chain_keys(ch, &x->hdr, &keys, err)))
		return rc;
	h.kind = CBI_KIND_IMAGE;
	h.flags |= CBI_HDR_MERGED;
	memset(h.parent_id, 0, 16);
	memset(h.parent_digest, 0, 32);
	if (A) {
		memcpy(h.parent_id, A->point_id, 16);
		memcpy(h.parent_digest, A->index_digest, 32);
	}
	/* the segment size of the largest of the chain's files: a FAT disk stays
	 * FAT-safe */
	uint64_t seg = 0;
	for (uint32_t s = 0; s <= K->seq; s++) {
		const cbi_point *p = cbi_chain_point(ch, s);
		if (p && p->segment_size > seg)
			seg = p->segment_size;
	}
	h.segment_mib = (uint32_t)(seg >> 20);
	uint32_t first = first_seq_of(c, mj);
	char name[512], dir[4096];
	cbi_point_filename(&x->hdr, "cbi", name, sizeof name);
	name[strlen(name) - 4] = 0;
	cbi_dirname(K->index_file, dir, sizeof dir);
	if ((size_t)snprintf(newpath, npsz, "%s/%s-m%04u.cbi", dir, name, first) >= npsz)
		return cbi_err(err, -ENAMETOOLONG, "'%s': name too long", dir);
	if (keys && (rc = cbi_keys_record_key(keys, K->point_id, kkey)))
		return cbi_err(err, rc, "unable to derive a record key: %s", cbi_strerror(rc));
	if (!(cx = cbi_cx_new()) || !(buf = malloc(cbi_image_scratch_size(h.block_size)))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = cbi_image_writer_create(newpath, c->tag, &h, keys, &w, err)))
		goto end;
	/* the records are copied, not computed: the file's digest (most of the
	 * CPU) runs on a thread of its own beside the copy (bench/RESULTS.md,
	 * prune); when it cannot start, this thread hashes, as before */
	if (copy)
		(void)!cbi_image_writer_copy_mode(w);
	uint64_t nrec = 0;
	for (uint64_t i = 0; i < h.n_blocks; i++) {
		cbi_idx_ent e;
		cbi_image *m = NULL;
		cbi_rec_hdr rh;
		if ((rc = cbi_index_get(x, i, &e))) {
			cbi_err(err, rc, "unable to read '%s': %s", K->index_file, cbi_strerror(rc));
			goto end;
		}
		if ((e.flags & CBI_IDX_ZERO) || e.owner < first)
			continue;
		if (e.owner > K->seq) {
			rc = cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu names owner seq %u beyond the point",
				     K->index_file, (unsigned long long)i, e.owner);
			goto end;
		}
		if ((rc = cbi_chain_image(ch, e.owner, &m, err)))
			goto end;
		int len = copy_record(m, i, &e, cx, kkey, K->point_id, buf, &rh, err);
		if (len < 0) {
			rc = len;
			goto end;
		}
		c->r->bytes_read += CBI_REC_HDR_SIZE + (uint64_t)len;
		if ((rc = cbi_image_writer_add(w, i, rh.flags, rh.raw_len, rh.hash, buf + CBI_REC_HDR_SIZE,
					       (uint32_t)len))) {
			cbi_err(err, rc, "unable to write '%s': %s", newpath, cbi_strerror(rc));
			goto end;
		}
		nrec++;
		c->done += rh.raw_len;
		if ((rc = tick(c)))
			goto end;
	}
	if ((rc = cbi_image_writer_seal(w, nrec, K->index_digest))) {
		cbi_err(err, rc, "unable to write '%s': %s", newpath, cbi_strerror(rc));
		goto end;
	}
	c->r->bytes_written += cbi_image_writer_final_size(w);
	if ((rc = cbi_image_writer_commit(w, err)))
		goto end;
	w = NULL;
	if ((rc = cbi_fsync_dir(dir))) {
		/* renamed in but perhaps not durable: it is complete, so it stays */
		cbi_err(err, rc, "unable to sync '%s': %s", dir, cbi_strerror(rc));
		goto end;
	}
	c->r->merged++;
end:
	if (rc && w)
		*readback = cbi_image_writer_readback_error(w);
	cbi_image_writer_abort(w);
	cbi_cx_free(cx);
	free(buf);
	OPENSSL_cleanse(kkey, sizeof kkey);
	return rc;
}

/* Finish what an interrupted prune of the job left: temporary files,
 * images that a merged image made redundant, and points it replaced. */
static int recover(pctx *c)
{
	const cbi_prune_opts *o = c->o;
	cbi_dest *d = NULL;
	cbi_point *all = NULL;
	size_t n = 0;
	char prefix[64], path[4200];
	int rc = cbi_dest_scan(o->dest, CBI_DEST_READ, &d, c->err);
	if (rc)
		return rc;
	if ((rc = cbi_dest_points(d, &all, &n, c->err)))
		goto end;
	cbi_job_tmp_prefix(c->key, prefix, sizeof prefix);
	for (size_t i = 0; i < d->n; i++) {
		const cbi_dent *e = &d->e[i];
		if (e->kind == CBI_DENT_TEMP && !strncmp(e->name, prefix, strlen(prefix)) &&
		    !cbi_dest_path(d, e, path, sizeof path))
			unlink(path);
	}
	unsigned removed_imgs = 0, removed_pts = 0;
	/* images of the job that no reader takes: another image of the point
	 * was preferred, or a point the merged image replaced is gone */
	for (size_t i = 0; i < d->n; i++) {
		const cbi_dent_point *t = d->e[i].pt;
		if (!t || t->rc || t->kind != CBI_KIND_IMAGE || cbi_state_key(t->p.host, t->p.source_id, t->p.job) != c->key ||
		    cbi_dest_path(d, &d->e[i], path, sizeof path))
			continue;
		int drop = 0;
		long owner = -1;
		for (size_t j = 0; j < n && owner < 0; j++)
			if (!memcmp(all[j].point_id, t->p.point_id, 16) && !memcmp(all[j].index_digest, t->p.index_digest, 32))
				owner = (long)j;
		if (owner >= 0) {
			drop = all[owner].has_image && all[owner].merged && strcmp(all[owner].file, path);
		} else {
			for (size_t j = 0; j < n && !drop; j++)
				drop = all[j].merged && !memcmp(all[j].chain_id, t->p.chain_id, 16) &&
				       all[j].first_seq <= t->p.seq && t->p.seq < all[j].seq;
		}
		if (drop) {
			cbi_sfile_remove(path);
			removed_imgs++;
		}
	}
	/* points that a merged point of their chain replaced and that nothing
	 * (left) builds on: newest first, until none is left */
	uint8_t *gone = calloc(n ? n : 1, 1);
	if (!gone) {
		rc = cbi_err(c->err, -ENOMEM, "out of memory");
		goto end;
	}
	for (int again = 1; again;) {
		again = 0;
		for (size_t i = 0; i < n; i++) {
			const cbi_point *p = &all[i];
			if (gone[i] || cbi_state_key(p->host, p->source_id, p->job) != c->key)
				continue;
			int replaced = 0, needed = 0;
			for (size_t j = 0; j < n && !replaced; j++)
				replaced = !gone[j] && all[j].merged && !memcmp(all[j].chain_id, p->chain_id, 16) &&
					   all[j].first_seq <= p->seq && p->seq < all[j].seq;
			for (size_t j = 0; j < n && replaced && !needed; j++)
				needed = !gone[j] && cbi_point_has_parent(&all[j]) &&
					 !memcmp(all[j].parent_id, p->point_id, 16) &&
					 !memcmp(all[j].parent_digest, p->index_digest, 32);
			if (replaced && !needed) {
				remove_point(c, d, p);
				c->r->removed--; /* in the note, not this run's count */
				gone[i] = 1;
				removed_pts++;
				again = 1;
			}
		}
	}
	free(gone);
	if (removed_imgs || removed_pts) {
		if ((rc = cbi_fsync_dir(o->dest))) {
			cbi_err(c->err, rc, "unable to sync '%s': %s", o->dest, cbi_strerror(rc));
			goto end;
		}
		add_note(c->r, "finished an interrupted prune of job '%s': removed %u point%s and %u image%s it had "
			       "replaced",
			 c->job ? c->job : c->pts ? c->pts[0].job : "", removed_pts, removed_pts == 1 ? "" : "s", removed_imgs,
			 removed_imgs == 1 ? "" : "s");
	}
end:
	free(all);
	cbi_dest_free(d);
	return rc;
}

static int execute(pctx *c)
{
	const cbi_prune_opts *o = c->o;
	cbi_chain *ch = NULL;
	cbi_chain_opts co = { .pass = o->pass, .pass_ud = o->pass_ud, .state_dir = o->state_dir, .no_state = o->no_state };
	int rc = 0;
	if (c->njobs && (rc = cbi_chain_open_dir(o->dest, &co, &ch, c->err)))
		return rc;
	const cbi_dest *d = ch ? cbi_chain_dest(ch) : NULL;
	for (size_t q = 0; o->progress && q < c->njobs && !rc; q++)
		rc = count_job(c, ch, &c->jobs[q]);
	if (rc || (rc = tick(c)))
		goto end;
	/* newest kept point first: an older merge reads only points older than
	 * its kept point, which a newer one leaves alone */
	for (size_t q = c->njobs; q-- > 0;) {
		const merge_job *mj = &c->jobs[q];
		const cbi_point *K = &c->pts[mj->k];
		char newpath[4300];
		uint64_t done0 = c->done, read0 = c->r->bytes_read;
		int readback = 0;
		if ((rc = write_merged(c, ch, mj, newpath, sizeof newpath, 1, &readback)) && readback) {
			/* the file system did not read back what was just written (a
			 * FUSE driver): the same file again, its digest computed from
			 * the bytes in memory; nothing of the first try is left */
			add_note(c->r, "'%s' did not read back as written (%s): written again without reading it back",
				 newpath, cbi_strerror(readback));
			c->done = done0;
			c->r->bytes_read = read0;
			rc = write_merged(c, ch, mj, newpath, sizeof newpath, 0, &readback);
		}
		if (rc)
			goto end;
		/* the kept point's older image(s), then the points replaced */
		for (size_t i = 0; d && i < d->n; i++) {
			const cbi_dent_point *t = d->e[i].pt;
			char path[4200];
			if (!t || t->rc || t->kind != CBI_KIND_IMAGE || memcmp(t->p.point_id, K->point_id, 16) ||
			    memcmp(t->p.index_digest, K->index_digest, 32) || cbi_dest_path(d, &d->e[i], path, sizeof path) ||
			    !strcmp(path, newpath))
				continue;
			c->r->bytes_removed += file_size_of(path);
			cbi_sfile_remove(path);
		}
		if ((rc = cbi_fsync_dir(o->dest)))
			goto sync_fail;
		for (size_t t = mj->nrm; t-- > 0;)
			remove_point(c, d, &c->pts[mj->rm[t]]);
		if ((rc = cbi_fsync_dir(o->dest)))
			goto sync_fail;
	}
	for (size_t t = 0; t < c->nplain; t++)
		remove_point(c, d, &c->pts[c->plain_rm[t]]);
	if (c->nplain && (rc = cbi_fsync_dir(o->dest)))
		goto sync_fail;
	c->done = c->total;
	if (o->progress)
		o->progress(o->progress_ud, c->done, c->total);
	goto end;
sync_fail:
	cbi_err(c->err, rc, "unable to sync '%s': %s", o->dest, cbi_strerror(rc));
end:
	cbi_chain_close(ch);
	return rc;
}

/* ------------------------------------------------------------------ API */

/* Could dir hold what an interrupted prune of job key left: a temporary
 * file of the job, or a merged image ("NAME-mNNNN.cbi", also split)? By
 * names only, so that a backup reads DEST's point files once, not twice,
 * when nothing is to be finished (1 when unsure). */
static int may_need_recovery(const char *dir, uint64_t key)
{
	cbi_dest *d = NULL;
	char prefix[64];
	if (cbi_dest_scan(dir, 0, &d, NULL))
		return 1;
	cbi_job_tmp_prefix(key, prefix, sizeof prefix);
	int need = 0;
	for (size_t i = 0; i < d->n && !need; i++) {
		const char *nm = d->e[i].name, *x = strstr(nm, ".cbi");
		if (d->e[i].kind == CBI_DENT_TEMP)
			need = !strncmp(nm, prefix, strlen(prefix));
		else if (x && x - nm >= 6)
			need = x[-6] == '-' && x[-5] == 'm' && strspn(x - 4, "0123456789") >= 4;
	}
	cbi_dest_free(d);
	return need;
}

int cbi_prune_finish_interrupted(const char *dest, uint64_t key, const char *job, char *note, size_t notesz)
{
	if (!may_need_recovery(dest, key))
		return 0;
	cbi_prune_opts o = { .dest = dest };
	cbi_prune_result *r = calloc(1, sizeof *r);
	cbi_error e;
	int rc;
	if (!r) {
		snprintf(note, notesz, "out of memory");
		return -ENOMEM;
	}
	pctx c = { .o = &o, .r = r, .err = &e, .key = key, .job = job };
	if ((rc = recover(&c)))
		snprintf(note, notesz, "unable to finish an interrupted prune of job '%s': %s", job, e.msg);
	else if (r->n_notes)
		snprintf(note, notesz, "%s", r->notes[0]);
	int done = r->n_notes != 0;
	free(r);
	return rc ? rc : done;
}

void cbi_prune_result_free(cbi_prune_result *r)
{
	if (!r)
		return;
	free(r->items);
	r->items = NULL;
	r->n = 0;
}

int cbi_prune(const cbi_prune_opts *o, cbi_prune_result *r, cbi_error *err)
{
	double t0 = cbi_now();
	memset(r, 0, sizeof *r);
	pctx c = { .o = o, .r = r, .err = err };
	cbi_point *all = NULL;
	size_t nall = 0;
	cbi_joblock lk = { .fd = -1 };
	int64_t run_id = 0;
	int rc;
	if (!o->dest || !*o->dest)
		return cbi_err(err, -CBI_EUSAGE, "no destination directory given");
	if ((rc = cbi_prune_select(NULL, 0, &o->keep, NULL)) == -CBI_EUSAGE)
		return cbi_err(err, rc,
			       "no keep rule given: prune removes nothing without one (--keep-last, --keep-daily, "
			       "..., --keep-within, --keep-chains)");
	if ((rc = cbi_chain_scan(o->dest, &all, &nall, err)) || (rc = pick_group(&c, all, nall)))
		goto end;
	c.key = cbi_state_key(c.pts[0].host, c.pts[0].source_id, c.pts[0].job);
	cbi_job_tmp_tag(c.key, (long)getpid(), c.tag, sizeof c.tag);
	if (!o->dry_run) {
		if ((rc = cbi_job_lock_op(o->dest, c.key, CBI_JOB_OP_PRUNE, c.pts[0].job, c.pts[0].source_path, &lk,
					  err)))
			goto end; /* refused: the message says what holds the job */
		/* the run is recorded (cbimg-log(1)); the catalog is a cache, so a
		 * failure to record is not the prune's */
		if (cbi_catalog_prune_begin(o->dest, c.pts[0].host, c.pts[0].source_id, c.pts[0].source_path,
					    c.pts[0].job, &run_id, NULL))
			run_id = 0;
		size_t before = r->n_notes;
		if ((rc = recover(&c)))
			goto end;
		if (r->n_notes != before) { /* the files changed: read them again */
			free(all);
			free(c.pts);
			all = NULL;
			c.pts = NULL;
			if ((rc = cbi_chain_scan(o->dest, &all, &nall, err)) || (rc = pick_group(&c, all, nall)))
				goto end;
		}
	}
	if (!(c.why = calloc(c.n, sizeof *c.why))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = plan(&c)))
		goto end;
	if (!(r->items = calloc(c.n, sizeof *r->items))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	r->n = c.n;
	for (size_t i = 0; i < c.n; i++) {
		r->items[i].point = c.pts[i];
		r->items[i].why = c.why[i];
		r->items[i].action = c.act[i] ? c.act[i] : CBI_PRUNE_KEEP;
		r->kept += r->items[i].action != CBI_PRUNE_REMOVE;
	}
	/* A mounted point (cbimg mount, the nbdkit plugin) holds its chain's
	 * byte of the lock file shared: prune changes no chain that is mounted. */
	cbi_joblock clk[16];
	size_t nclk = 0;
	for (size_t i = 0; i < c.n && !o->dry_run && !rc; i++) {
		int seen = 0;
		for (size_t j = 0; j < i && !seen; j++)
			seen = !memcmp(c.pts[j].chain_id, c.pts[i].chain_id, 16);
		if (seen)
			continue;
		if (nclk == sizeof clk / sizeof clk[0]) {
			rc = cbi_err(err, -CBI_EUSAGE, "job '%s' has more than %zu chains in '%s': prune fewer at a time "
				     "(--keep-chains)", c.pts[0].job, nclk, o->dest);
			break;
		}
		rc = cbi_job_lock_at(o->dest, cbi_chain_lock_offset(c.pts[i].chain_id), 0, &clk[nclk], err);
		if (rc == -CBI_ELOCKED) {
			char id[9];
			cbi_id_short(c.pts[i].chain_id, id);
			rc = cbi_err(err, rc, "chain %s of job '%s' in '%s' is mounted (cbimg mount or nbdkit): unmount "
				     "it first", id, c.pts[0].job, o->dest);
		}
		if (!rc)
			nclk++;
	}
	if (!o->dry_run && !rc)
		rc = execute(&c);
	for (size_t q = 0; q < nclk; q++)
		cbi_job_unlock(&clk[q]);
end:
	if (run_id && cbi_catalog_prune_end(o->dest, run_id, rc, rc && err ? err->msg : NULL, r->bytes_read,
					    r->bytes_written, (uint32_t)r->removed, NULL))
		add_note(r, "prune run not recorded in the catalog of '%s'", o->dest);
	cbi_job_unlock(&lk);
	for (size_t q = 0; q < c.njobs; q++)
		free(c.jobs[q].rm);
	free(c.jobs);
	free(c.plain_rm);
	free(c.act);
	free(c.why);
	free(c.pts);
	free(all);
	r->seconds = cbi_now() - t0;
	return rc;
}
