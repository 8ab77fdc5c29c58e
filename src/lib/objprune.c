/* objprune.c - cbimg prune on an s3:// DEST (cbi_objstore_prune; README.md,
 * "Object storage"; format/SPEC.md, "Pruning on object storage").
 *
 * Objects are created once and never renamed or replaced, so the prune of a
 * directory (prune.c) cannot run on the bucket as it is. It runs instead on
 * a work directory that mirrors the bucket, and its changes are then
 * carried over in an order that keeps every point restorable:
 *   1. STATE/s3/<where>/prune-<job key>/ gets links to the cache's indexes,
 *      key files and image stand-ins (objstore.c), and what a killed prune
 *      left is finished there first (cbi_prune_finish_interrupted);
 *   2. a dry run there gives the plan; of every image that a merge reads,
 *      only the header, the block table, the trailer and the records that
 *      the kept point's index still names are fetched (ranged GETs), into
 *      a sparse file of the object's size;
 *   3. the directory prune runs there: merged images are written, the files
 *      it replaces removed;
 *   4. the new (merged) images are uploaded, each under a name of its own
 *      (the kept point's name with -mNNNN);
 *   5. only then are the objects the prune removed deleted: the kept
 *      points' older images, then the removed points newest first, each
 *      index before its images, then images no point names.
 * A kill at any moment leaves objects that readers pair and resolve exactly
 * as a directory after a kill at the same step of a local prune; the next
 * prune of the job finishes the deletes (step 1). Steps 1 to 5 run under
 * the job's lock object, its lease renewed as a backup's (cbi_os_lock,
 * s3lease.h); each store and delete is sent only while it is held, so a
 * prune whose lock is lost stops between two steps, as after a kill. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "cbimg.h"
#include "dest.h"
#include "format.h"
#include "index.h"
#include "job.h"
#include "objprune.h"
#include "objstore.h"
#include "prune.h"
#include "s3.h"
#include "util.h"

typedef struct op_ctx {
	const cbi_prune_opts *o;
	cbi_prune_result *r;
	cbi_error *err;
	cbi_os *os;
	cbi_s3 *s3;
	char url[800];      /* "s3://BUCKET/KEYPREFIX" (KEYPREFIX "" or "a/b/"), for names */
	char cache[4200];
	char work[4200];
} op_ctx;

static const char *base_name(const char *path)
{
	const char *b = strrchr(path, '/');
	return b ? b + 1 : path;
}

static void obj_key(const op_ctx *c, const char *name, char *out, size_t sz)
{
	snprintf(out, sz, "%.620s%.1000s", cbi_os_key_prefix(c->os), name);
}

/* Paths of dir in r (points, notes) and err name the bucket instead. */
static void name_bucket(op_ctx *c, const char *dir, cbi_prune_result *r, cbi_error *err)
{
	char from[4300];
	snprintf(from, sizeof from, "%s/", dir);
	for (size_t i = 0; r && i < r->n; i++) {
		cbi_point *p = &r->items[i].point;
		cbi_objstore_subst(p->file, sizeof p->file, from, c->url);
		cbi_objstore_subst(p->index_file, sizeof p->index_file, from, c->url);
	}
	for (unsigned k = 0; r && k < r->n_notes; k++) {
		cbi_objstore_subst(r->notes[k], sizeof r->notes[k], from, c->url);
		cbi_objstore_subst(r->notes[k], sizeof r->notes[k], dir, c->o->dest);
	}
	if (err) {
		cbi_objstore_subst(err->msg, sizeof err->msg, from, c->url);
		cbi_objstore_subst(err->msg, sizeof err->msg, dir, c->o->dest); /* the DEST itself */
	}
}

/* ---------------------------------------------------------- work dir */

/* work: links to every point and key file of the cache (stand-ins for the
 * images: their headers and trailers are real). */
static int make_work(op_ctx *c)
{
	cbi_dest *d = NULL;
	char a[4500], b[4500];
	cbi_os_rm_files(c->work, 1); /* a killed run's */
	if (mkdir(c->work, 0700) < 0)
		return cbi_err(c->err, -errno, "unable to create '%s': %s", c->work, strerror(errno));
	int rc = cbi_dest_scan(c->cache, 0, &d, c->err);
	for (size_t i = 0; !rc && i < d->n; i++) {
		const cbi_dent *e = &d->e[i];
		if (e->kind != CBI_DENT_POINT && e->kind != CBI_DENT_KEY)
			continue;
		snprintf(a, sizeof a, "%s/%s", c->cache, e->name);
		snprintf(b, sizeof b, "%s/%s", c->work, e->name);
		if (link(a, b) < 0)
			rc = cbi_err(c->err, -errno, "unable to link '%s': %s", b, strerror(errno));
	}
	cbi_dest_free(d);
	return rc;
}

/* --------------------------------------------------- fetching records */

int cbi_objprune_ranges(const uint8_t *table, uint64_t count, uint64_t table_offset, const uint8_t *need,
			uint64_t n_blocks, uint64_t gap, uint64_t max_len, cbi_range *out, size_t *nout)
{
	size_t n = 0;
	for (uint64_t k = 0; k < count; k++) {
		const uint8_t *t = table + k * CBI_TAB_ENT_SIZE;
		uint64_t blk = ld64(t), off = ld64(t + 8), len = CBI_REC_HDR_SIZE + (uint64_t)ld32(t + 16);
		if (blk >= n_blocks || !need[blk])
			continue;
		if (off < CBI_HDR_SIZE || off > table_offset || len > table_offset - off)
			return -CBI_EDAMAGED;
		if (n && off >= out[n - 1].off && off - (out[n - 1].off + out[n - 1].len) <= gap &&
		    off + len - out[n - 1].off <= max_len) {
			out[n - 1].len = off + len - out[n - 1].off;
			continue;
		}
		out[n].off = off;
		out[n].len = len;
		n++;
	}
	*nout = n;
	return 0;
}

#define FETCH_GAP (64u << 10)   /* records closer than this are fetched in one GET */
#define FETCH_MAX (16u << 20)   /* at most this many bytes per GET */
#define FETCH_REC (5u << 20)    /* a record's bound (4 MiB blocks, compress bound, tag) */

static int get_into(op_ctx *c, const char *key, int fd, uint64_t off, uint64_t len, uint8_t *buf, size_t bufsz,
		    const char *tmp)
{
	size_t got = 0;
	int rc = cbi_s3_get(c->s3, key, off, len, buf, bufsz, &got, c->err);
	if (rc)
		return rc;
	if (got != len)
		return cbi_err(c->err, -EIO, "s3://%s/%s: short ranged read", cbi_os_bucket(c->os), key);
	if ((rc = cbi_pwrite_full(fd, buf, got, off)))
		return cbi_err(c->err, rc, "unable to write '%s': %s", tmp, cbi_strerror(rc));
	return 0;
}

/* Replace the stand-in img (of point seq pseq) in the work directory by a
 * sparse file of the object's size holding its header, block table,
 * trailer, and the records of the blocks whose entry in the kept point's
 * index kidx names an owner up to pseq (the records the merge copies from
 * this image: format/SPEC.md, "Pruning on object storage"). */
static int fetch_records(op_ctx *c, const char *img, const char *kidx, uint32_t pseq)
{
	const char *name = base_name(img);
	char key[1700], tmp[4700];
	struct stat st;
	cbi_index *x = NULL;
	uint8_t *buf = NULL, *table = NULL, *need = NULL;
	cbi_range *rg = NULL;
	int fd = -1, rc;
	obj_key(c, name, key, sizeof key);
	snprintf(tmp, sizeof tmp, "%.4200s/.fetch-%.255s.tmp", c->work, name);
	if (stat(img, &st) < 0)
		return cbi_err(c->err, -errno, "unable to read '%s': %s", img, strerror(errno));
	uint64_t size = (uint64_t)st.st_size;
	if (size < CBI_HDR_SIZE + CBI_TRL_SIZE)
		return cbi_err(c->err, -CBI_ETRUNCATED, "'s3://%s/%s': too short for an image", cbi_os_bucket(c->os), key);
	if ((rc = cbi_index_open(kidx, &x, c->err)))
		return rc;
	if ((fd = cbi_create_tmp(tmp, 0600)) < 0) {
		rc = cbi_err(c->err, fd, "unable to create '%s': %s", tmp, cbi_strerror(fd));
		goto end;
	}
	if (ftruncate(fd, (off_t)size) < 0) {
		rc = cbi_err(c->err, -errno, "unable to size '%s': %s", tmp, strerror(errno));
		goto end;
	}
	if (!(buf = malloc(FETCH_MAX + FETCH_REC)) || !(need = calloc(x->hdr.n_blocks ? x->hdr.n_blocks : 1, 1))) {
		rc = cbi_err(c->err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = get_into(c, key, fd, 0, CBI_HDR_SIZE, buf, FETCH_MAX, tmp)) ||
	    (rc = get_into(c, key, fd, size - CBI_TRL_SIZE, CBI_TRL_SIZE, buf, FETCH_MAX, tmp)))
		goto end;
	cbi_img_trailer t;
	if (cbi_img_trailer_decode(buf, &t) || t.file_size != size || t.table_offset < CBI_HDR_SIZE ||
	    t.table_offset > size - CBI_TRL_SIZE || t.record_count > x->hdr.n_blocks ||
	    t.record_count * CBI_TAB_ENT_SIZE != size - CBI_TRL_SIZE - t.table_offset) {
		rc = cbi_err(c->err, -CBI_EDAMAGED, "'s3://%s/%s': trailer does not match the object's size",
			     cbi_os_bucket(c->os), key);
		goto end;
	}
	uint64_t tlen = t.record_count * CBI_TAB_ENT_SIZE;
	if (!(table = malloc(tlen ? tlen : 1)) || !(rg = malloc((t.record_count ? t.record_count : 1) * sizeof *rg))) {
		rc = cbi_err(c->err, -ENOMEM, "out of memory");
		goto end;
	}
	if (tlen) {
		size_t got = 0;
		if ((rc = cbi_s3_get(c->s3, key, t.table_offset, tlen, table, tlen, &got, c->err)))
			goto end;
		if (got != tlen || (rc = cbi_pwrite_full(fd, table, tlen, t.table_offset))) {
			rc = cbi_err(c->err, got != tlen ? -EIO : rc, "s3://%s/%s: block table not read",
				     cbi_os_bucket(c->os), key);
			goto end;
		}
	}
	for (uint64_t i = 0; i < x->hdr.n_blocks; i++) {
		cbi_idx_ent e;
		if ((rc = cbi_index_get(x, i, &e))) {
			cbi_err(c->err, rc, "unable to read '%s': %s", kidx, cbi_strerror(rc));
			goto end;
		}
		need[i] = !(e.flags & CBI_IDX_ZERO) && e.owner <= pseq;
	}
	size_t nrg = 0;
	if (cbi_objprune_ranges(table, t.record_count, t.table_offset, need, x->hdr.n_blocks, FETCH_GAP, FETCH_MAX,
				rg, &nrg)) {
		rc = cbi_err(c->err, -CBI_EDAMAGED, "'s3://%s/%s': block table entry out of range",
			     cbi_os_bucket(c->os), key);
		goto end;
	}
	for (size_t k = 0; k < nrg && !rc; k++)
		rc = get_into(c, key, fd, rg[k].off, rg[k].len, buf, FETCH_MAX + FETCH_REC, tmp);
	if (rc)
		goto end;
	if (close(fd) < 0) {
		fd = -1;
		rc = cbi_err(c->err, -errno, "unable to write '%s': %s", tmp, strerror(errno));
		goto end;
	}
	fd = -1;
	if (rename(tmp, img) < 0)
		rc = cbi_err(c->err, -errno, "unable to rename '%s': %s", tmp, strerror(errno));
end:
	if (fd >= 0)
		close(fd);
	if (rc)
		unlink(tmp);
	cbi_index_close(x);
	free(buf);
	free(table);
	free(need);
	free(rg);
	return rc;
}

/* The images the plan p's merges read, fetched (their needed records). */
static int fetch_plan(op_ctx *c, const cbi_prune_result *p)
{
	int rc = 0;
	for (size_t k = 0; k < p->n && !rc; k++) {
		const cbi_prune_item *K = &p->items[k];
		if (K->action != CBI_PRUNE_MERGE && K->action != CBI_PRUNE_SYNTH_FULL)
			continue;
		/* the previous kept point A of K's chain: the merge reads the
		 * images of K and of the removed points after A */
		long a_seq = -1;
		for (size_t j = 0; j < p->n; j++) {
			const cbi_prune_item *A = &p->items[j];
			if (A->action != CBI_PRUNE_REMOVE && !memcmp(A->point.chain_id, K->point.chain_id, 16) &&
			    A->point.seq < K->point.seq && (long)A->point.seq > a_seq)
				a_seq = (long)A->point.seq;
		}
		for (size_t j = 0; j < p->n && !rc; j++) {
			const cbi_prune_item *P = &p->items[j];
			if ((j != k && P->action != CBI_PRUNE_REMOVE) || !P->point.has_image ||
			    memcmp(P->point.chain_id, K->point.chain_id, 16) || (long)P->point.seq <= a_seq ||
			    P->point.seq > K->point.seq)
				continue;
			rc = fetch_records(c, P->point.file, K->point.index_file, P->point.seq);
		}
	}
	return rc;
}

/* ------------------------------------------------- carrying it over */

typedef struct pre_file {
	const cbi_dent *e;
	int gone;               /* removed by the prune in the work directory */
	int done;
} pre_file;

static int by_newest_index(const void *a, const void *b)
{
	const cbi_point *x = &(*(const pre_file *const *)a)->e->pt->p, *y = &(*(const pre_file *const *)b)->e->pt->p;
	if (x->created_ns != y->created_ns)
		return x->created_ns < y->created_ns ? 1 : -1;
	if (x->seq != y->seq)
		return x->seq < y->seq ? 1 : -1;
	return strcmp((*(const pre_file *const *)a)->e->name, (*(const pre_file *const *)b)->e->name);
}

static int same_point(const cbi_dent *e, const cbi_point *p)
{
	return e->pt && !e->pt->rc && !memcmp(e->pt->p.point_id, p->point_id, 16) &&
	       !memcmp(e->pt->p.index_digest, p->index_digest, 32);
}

/* Each request that changes the bucket is sent only while the job's lock
 * is held (its lease renewed meanwhile: objstore.h, cbi_os_held). */
static int del_object(op_ctx *c, const char *name)
{
	char key[1700];
	obj_key(c, name, key, sizeof key);
	int rc = cbi_os_held(c->os, c->err);
	return rc ? rc : cbi_s3_delete(c->s3, key, c->err);
}

/* Upload what the prune wrote in the work directory (pre: its files
 * before), then delete what it removed, in the order of the file comment. */
static int carry_over(op_ctx *c, const cbi_dest *pre)
{
	cbi_dest *post = NULL;
	pre_file *f = NULL, **ix = NULL;
	char path[4500], key[1700];
	int rc = cbi_dest_scan(c->work, 0, &post, c->err);
	if (rc)
		return rc;
	for (size_t i = 0; i < post->n && !rc; i++) {
		const cbi_dent *e = &post->e[i];
		if (e->kind != CBI_DENT_POINT || cbi_dest_find(pre, e->name))
			continue;
		snprintf(path, sizeof path, "%s/%s", c->work, e->name);
		obj_key(c, e->name, key, sizeof key);
		if ((rc = cbi_os_held(c->os, c->err)))
			break;
		rc = cbi_s3_put_file(c->s3, key, path, 1, c->err);
		if (rc == -EEXIST) {
			/* the name is the point's and its first seq: the same image */
			uint64_t sz = 0;
			struct stat st;
			if (!cbi_s3_head(c->s3, key, &sz, c->err) && !stat(path, &st) && sz == (uint64_t)st.st_size)
				rc = 0;
			else
				rc = cbi_err(c->err, -EEXIST, "'s3://%s/%s' exists and is another file",
					     cbi_os_bucket(c->os), key);
		}
	}
	if (rc)
		goto end;
	if (!(f = calloc(pre->n ? pre->n : 1, sizeof *f)) || !(ix = calloc(pre->n ? pre->n : 1, sizeof *ix))) {
		rc = cbi_err(c->err, -ENOMEM, "out of memory");
		goto end;
	}
	size_t nix = 0;
	for (size_t i = 0; i < pre->n; i++) {
		f[i].e = &pre->e[i];
		f[i].gone = pre->e[i].kind == CBI_DENT_POINT && !cbi_dest_find(post, pre->e[i].name);
		if (f[i].gone && f[i].e->pt && !f[i].e->pt->rc && f[i].e->pt->kind == CBI_KIND_INDEX)
			ix[nix++] = &f[i];
	}
	/* 1. kept points' older images: their points are paired with the new
	 * merged images already */
	for (size_t i = 0; i < pre->n && !rc; i++) {
		if (!f[i].gone || !f[i].e->pt || f[i].e->pt->rc || f[i].e->pt->kind != CBI_KIND_IMAGE)
			continue;
		int kept = 0;
		for (size_t j = 0; j < pre->n && !kept; j++)
			kept = !f[j].gone && pre->e[j].pt && !pre->e[j].pt->rc && pre->e[j].pt->kind == CBI_KIND_INDEX &&
			       same_point(f[i].e, &pre->e[j].pt->p);
		if (kept) {
			rc = del_object(c, f[i].e->name);
			f[i].done = 1;
		}
	}
	/* 2. removed points, newest first, each index before its images */
	qsort(ix, nix, sizeof *ix, by_newest_index);
	for (size_t k = 0; k < nix && !rc; k++) {
		rc = del_object(c, ix[k]->e->name);
		ix[k]->done = 1;
		for (size_t i = 0; i < pre->n && !rc; i++)
			if (f[i].gone && !f[i].done && same_point(f[i].e, &ix[k]->e->pt->p)) {
				rc = del_object(c, f[i].e->name);
				f[i].done = 1;
			}
	}
	/* 3. what is left: images no point names */
	for (size_t i = 0; i < pre->n && !rc; i++)
		if (f[i].gone && !f[i].done)
			rc = del_object(c, f[i].e->name);
end:
	free(ix);
	free(f);
	cbi_dest_free(post);
	return rc;
}

/* ---------------------------------------------------------------- API */

static void add_note(cbi_prune_result *r, const char *note)
{
	if (note[0] && r->n_notes < CBI_PRUNE_MAX_NOTES)
		cbi_strlcpy(r->notes[r->n_notes++], note, sizeof r->notes[0]);
}

/* The job's unfinished multipart uploads (a killed backup's or prune's):
 * aborted (note); those of other jobs under the prefix are only counted
 * (note2: a backup running, or a killed one that its job's next run
 * aborts). jp: the job's name prefix. */
static int abort_uploads(op_ctx *c, const char *jp, char *note, size_t nsz, char *note2, size_t n2sz)
{
	cbi_s3_obj *up = NULL;
	size_t nup = 0, mine = 0;
	char pfx[1700];
	obj_key(c, jp, pfx, sizeof pfx);
	int rc = cbi_s3_list_uploads(c->s3, cbi_os_key_prefix(c->os), &up, &nup, c->err);
	for (size_t i = 0; !rc && i < nup; i++)
		if (!strncmp(up[i].key, pfx, strlen(pfx))) {
			if (!(rc = cbi_os_held(c->os, c->err)))
				rc = cbi_s3_abort_upload(c->s3, up[i].key, up[i].upload_id, c->err);
			mine++;
		}
	free(up);
	if (!rc && mine)
		snprintf(note, nsz, "aborted %zu unfinished upload%s of the job left in '%.600s'", mine,
			 mine == 1 ? "" : "s", c->o->dest);
	if (!rc && nup > mine)
		snprintf(note2, n2sz, "%zu unfinished multipart upload%s of other jobs under '%.600s': a backup "
			 "running, or a killed one (its job's next run aborts it)", nup - mine, nup - mine == 1 ? "" : "s",
			 c->o->dest);
	return rc;
}

/* Stops the merge as soon as the lock is not held, else the caller's
 * progress. */
static int op_progress(void *ud, uint64_t done, uint64_t total)
{
	op_ctx *c = ud;
	if (cbi_os_held(c->os, NULL))
		return 1;
	return c->o->progress ? c->o->progress(c->o->progress_ud, done, total) : 0;
}

int cbi_objstore_prune(const cbi_prune_opts *o, const char *endpoint, cbi_prune_result *r, cbi_error *err)
{
	double t0 = cbi_now();
	op_ctx c = { .o = o, .r = r, .err = err };
	cbi_prune_opts lo = *o;
	cbi_prune_result *plan = NULL;
	cbi_dest *pre = NULL;
	char host[64] = "", note[700] = "", note2[700] = "", note3[600] = "", note4[800] = "", jp[256] = "";
	uint64_t jk = 0;
	int64_t run_id = 0;
	char stage[4300] = "", g_host[64] = "", g_src[128] = "", g_path[64] = "";
	int locked = 0, rc;
	memset(r, 0, sizeof *r);
	if ((rc = cbi_os_open(o->dest, endpoint, o->state_dir, &c.os, err)))
		return rc;
	c.s3 = cbi_os_s3(c.os);
	snprintf(c.url, sizeof c.url, "s3://%s/%s", cbi_os_bucket(c.os), cbi_os_key_prefix(c.os));
	/* the plan on the cache (indexes, key files, stand-ins): the group,
	 * and all of a dry run */
	if ((rc = cbi_objstore_view(o->dest, endpoint, o->state_dir, 0, NULL, c.cache, sizeof c.cache, err)))
		goto end;
	lo.dest = c.cache;
	lo.dry_run = 1;
	lo.progress = NULL;
	rc = cbi_prune(&lo, r, err);
	name_bucket(&c, c.cache, r, rc ? err : NULL);
	if (rc || o->dry_run)
		goto end;
	const cbi_point *g = &r->items[0].point;
	jk = cbi_state_key(g->host, g->source_id, g->job);
	char job[64], order[64];
	size_t jpl = 0;
	cbi_strlcpy(job, g->job, sizeof job);
	cbi_strlcpy(g_host, g->host, sizeof g_host);
	cbi_strlcpy(g_src, g->source_id, sizeof g_src);
	cbi_strlcpy(g_path, g->source_path, sizeof g_path);
	cbi_objstore_name_order(base_name(g->index_file), order, sizeof order, &jpl);
	if (jpl && jpl < sizeof jp)
		memcpy(jp, base_name(g->index_file), jpl);
	cbi_prune_result_free(r);
	memset(r, 0, sizeof *r);
	if (gethostname(host, sizeof host - 1) < 0)
		cbi_strlcpy(host, "localhost", sizeof host);
	if ((rc = cbi_os_lock(c.os, jk, host, job, g_path, CBI_JOB_OP_PRUNE, note, sizeof note, err)))
		goto end;
	locked = 1;
	/* the run is recorded where this machine's backups of the job record
	 * theirs, the job's staging directory (cbimg-log(1), "On S3"); the
	 * catalog is a cache: a failure to record is not the prune's */
	snprintf(stage, sizeof stage, "%s/job-%016llx", cbi_os_base(c.os), (unsigned long long)jk);
	if ((mkdir(stage, 0700) < 0 && errno != EEXIST) ||
	    cbi_catalog_prune_begin(stage, g_host, g_src, g_path, job, &run_id, NULL))
		run_id = 0;
	if (jp[0] && (rc = abort_uploads(&c, jp, note2, sizeof note2, note4, sizeof note4)))
		goto end;
	/* under the lock: the bucket as it is now, in a work directory */
	if ((rc = cbi_objstore_view(o->dest, endpoint, o->state_dir, 0, NULL, c.cache, sizeof c.cache, err)))
		goto end;
	snprintf(c.work, sizeof c.work, "%s/prune-%016llx", cbi_os_base(c.os), (unsigned long long)jk);
	if ((rc = make_work(&c)) || (rc = cbi_dest_scan(c.work, CBI_DEST_READ, &pre, err)))
		goto end;
	rc = cbi_prune_finish_interrupted(c.work, jk, job, note3, sizeof note3);
	if (rc < 0) {
		rc = cbi_err(err, rc, "%s", note3);
		goto end;
	}
	if (!(plan = calloc(1, sizeof *plan))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	lo.dest = c.work;
	if ((rc = cbi_prune(&lo, plan, err)) || (rc = fetch_plan(&c, plan)))
		goto end;
	lo.dry_run = 0;
	lo.progress = op_progress;
	lo.progress_ud = &c;
	if (!(rc = cbi_os_held(c.os, err)) && !(rc = cbi_prune(&lo, r, err)))
		rc = carry_over(&c, pre);
end:
	if (rc && locked) {
		/* a lost lock says more than "interrupted" or a request that
		 * failed while the server stalled */
		cbi_error le;
		if (cbi_os_held(c.os, &le)) {
			rc = -CBI_ELOCKED;
			if (err)
				*err = le;
			cbi_err_prefix(err, rc, "the prune stopped before its next store or delete (every listed point "
				       "restores; the next prune of the job goes on)");
		}
	}
	if (c.work[0])
		name_bucket(&c, c.work, r, rc ? err : NULL);
	if (run_id && cbi_catalog_prune_end(stage, run_id, rc, rc && err ? err->msg : NULL, r->bytes_read,
					    r->bytes_written, (uint32_t)r->removed, NULL))
		add_note(r, "prune run not recorded in this machine's catalog of the job");
	if (locked) {
		cbi_objstore_subst(note3, sizeof note3, c.work, c.url);
		add_note(r, note);
		add_note(r, note2);
		add_note(r, note3);
		add_note(r, note4);
		cbi_os_unlock(c.os, jk);
	}
	if (c.work[0])
		cbi_os_rm_files(c.work, 1);
	if (c.os)
		cbi_s3_counters(c.s3, &r->bytes_sent, &r->bytes_received);
	if (plan)
		cbi_prune_result_free(plan);
	free(plan);
	cbi_dest_free(pre);
	cbi_os_close(c.os);
	r->seconds = cbi_now() - t0;
	return rc;
}
