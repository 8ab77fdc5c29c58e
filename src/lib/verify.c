/* verify.c - cbi_verify(): check digests, chain links, the index against
 * its parent, and every stored block against its record and the index. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "chainrd.h"
#include "image.h"
#include "index.h"
#include "state.h"
#include "util.h"

typedef struct vctx {
	cbi_verify_fn fn;
	void *ud;
	cbi_progress_fn progress;
	void *progress_ud;
	const cbi_verify_opts *o;
	cbi_chain *ch;        /* the directory's points; unlocks each chain once */
	cbi_verify_result *r;
	cbi_point *state;     /* the local state, read before the scan */
	size_t nstate;
	uint64_t total;       /* progress: bytes the run reads, planned */
	uint64_t base;        /* ... read before the current file */
	cbi_error keyerr;     /* the unlock failure that stopped the run */
	cbi_error nokeyerr;   /* the first chain without any key file */
	uint8_t nokey_ids[64][16]; /* chains without key files noted */
	size_t nnokey;
	ZSTD_DCtx *dctx;
	cbi_cx *cx;
	uint8_t *scratch, *blk;
	uint32_t bufsize;
} vctx;

static void problem(vctx *c, const char *file, int64_t block, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void problem(vctx *c, const char *file, int64_t block, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	c->r->problems++;
	if (c->fn)
		c->fn(c->ud, file, block, msg);
}

static int ensure_bufs(vctx *c, uint32_t bs)
{
	if (c->bufsize >= bs)
		return 0;
	free(c->scratch);
	free(c->blk);
	c->scratch = malloc(cbi_image_scratch_size(bs));
	c->blk = malloc(bs);
	c->bufsize = c->scratch && c->blk ? bs : 0;
	return c->bufsize ? 0 : -ENOMEM;
}

/* Progress of the whole run: at bytes of the current file read. */
static int progress_at(vctx *c, uint64_t at)
{
	uint64_t done = c->base + at;
	c->r->bytes_checked = done;
	if (done > c->total) /* a file larger than its point says */
		c->total = done;
	return c->progress ? c->progress(c->progress_ud, done, c->total) : 0;
}

static int digest_progress(void *ud, uint64_t done, uint64_t total)
{
	(void)total;
	return progress_at(ud, done);
}

/* The bytes of a point the run reads: its index, its image twice. */
static uint64_t point_bytes(const cbi_point *p)
{
	return p->index_bytes + (p->has_image ? 2 * p->stored_bytes : 0);
}

/* A file of size bytes read to its end: the next one starts after it. */
static void advance(vctx *c, uint64_t size)
{
	c->base += size;
	c->r->bytes_checked = c->base;
}

static int check_digest(vctx *c, cbi_sfr *f, const uint8_t *mac_key)
{
	int rc = cbi_sfr_check_digest_mac(f, mac_key, digest_progress, c);
	if (rc == -ECANCELED)
		return rc;
	advance(c, f->size);
	c->r->files_checked++;
	if (rc == -CBI_EDAMAGED && mac_key)
		problem(c, f->path, -1, "HMAC-SHA256 mismatch: the file was altered or damaged");
	else if (rc == -CBI_EDAMAGED)
		problem(c, f->path, -1, "SHA-256 digest mismatch: the file was changed or damaged");
	else if (rc)
		problem(c, f->path, -1, "unable to read: %s", cbi_strerror(rc));
	return 0;
}

/* The text of a chain reader's message after its subject "'FILE': ", for a
 * problem reported for FILE. */
static const char *reason(const cbi_error *e, const char *file)
{
	size_t n = strlen(file);
	if (e->msg[0] == '\'' && !strncmp(e->msg + 1, file, n) && !strncmp(e->msg + 1 + n, "': ", 3))
		return e->msg + n + 4;
	return e->msg;
}

static void note(vctx *c, const char *file, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Check one point of the chosen chain: its index against its parent's, its
 * image's records against its index. */
static void note(vctx *c, const char *file, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A point with bad ranges: known-bad bytes (the source could not be read),
 * a note and a count, not a problem. */
static void known_bad(vctx *c, const cbi_index *x)
{
	char d[256];
	if (!x->bad.n)
		return;
	c->r->bad_points++;
	c->r->bad_bytes += x->bad.bytes;
	cbi_badmap_describe(&x->bad, 3, d, sizeof d);
	note(c, x->f->path,
	     "'%s' (seq %u): known-bad: %llu bytes in %zu range%s were unreadable on the source at backup (%s); "
	     "they are not data, and restore needs --allow-bad",
	     x->f->path, x->hdr.seq, (unsigned long long)x->bad.bytes, x->bad.n, x->bad.n == 1 ? "" : "s", d);
}

static int verify_point(vctx *c, uint32_t seq)
{
	const cbi_point *p = cbi_chain_point(c->ch, seq);
	if (p->seq != seq)
		return 0; /* a seq a merged point replaced: checked with that point */
	/* a merged point's image holds the blocks of seqs first ... seq; its
	 * parent is the point before them (format/SPEC.md, "Merged points") */
	uint32_t first = cbi_point_first_seq(p);
	const cbi_point *pp = first ? cbi_chain_point(c->ch, first - 1) : NULL;
	cbi_index *x = NULL, *px = NULL;
	cbi_image *img = NULL;
	const cbi_keys *k = NULL;
	cbi_error e;
	int rc = 0;
	uint64_t end_base = c->base + point_bytes(p); /* where this point's bytes end */
	if (cbi_index_open(p->index_file, &x, &e)) {
		problem(c, p->index_file, -1, "%s", e.msg);
		c->base = end_base;
		return 0;
	}
	if ((rc = cbi_chain_keys(c->ch, &x->hdr, &k, &e))) {
		/* only damaged key files: damage, reported for this chain; no key
		 * file at all: the chain cannot be checked, which is no finding
		 * about its files (format/SPEC.md, "Validation rules", class
		 * NOKEY): a note, and exit 1 unless something else is wrong */
		if (cbi_is_damage(rc)) {
			problem(c, p->index_file, -1, "%s", e.msg); /* this chain's own reason */
			rc = 0;
			goto end;
		}
		if (rc == -CBI_ENOKEY) {
			int seen = 0; /* once per chain */
			for (size_t j = 0; j < c->nnokey && !seen; j++)
				seen = !memcmp(c->nokey_ids[j], x->hdr.chain_id, 16);
			if (!seen) {
				if (!c->r->nokey++)
					c->nokeyerr = e;
				if (c->nnokey < sizeof c->nokey_ids / sizeof c->nokey_ids[0])
					memcpy(c->nokey_ids[c->nnokey++], x->hdr.chain_id, 16);
				note(c, p->index_file, "%s", e.msg);
			}
			rc = 0;
			goto end;
		}
		c->keyerr = e;
		goto end; /* a wrong or missing passphrase stops verification */
	}
	if (k && cbi_chain_auth_index(c->ch, x, &e))
		problem(c, p->index_file, -1, "%s", reason(&e, x->f->path));
	if ((rc = check_digest(c, x->f, k ? k->mac_key : NULL)))
		goto end;
	if (pp && cbi_index_open(pp->index_file, &px, &e)) {
		problem(c, pp->index_file, -1, "%s", e.msg);
		px = NULL;
	}
	if (!p->has_image) {
		problem(c, p->index_file, -1, "the image file of this point is missing");
	} else if (cbi_image_open(p->file, &img, &e)) {
		problem(c, p->file, -1, "%s", e.msg);
		img = NULL;
	} else if (k && cbi_chain_auth_image(c->ch, x, img, &e)) {
		problem(c, p->file, -1, "%s", reason(&e, img->f->path));
		rc = check_digest(c, img->f, k->mac_key);
		cbi_image_close(img); /* its records cannot be checked */
		img = NULL;
		if (rc)
			goto end;
	} else if ((rc = check_digest(c, img->f, k ? k->mac_key : NULL))) {
		goto end;
	}
	if (img && cbi_chain_image_fits(p, img, x, &e)) /* I8: the header is its index's */
		problem(c, img->f->path, -1, "%s", reason(&e, img->f->path));
	if ((rc = ensure_bufs(c, x->hdr.block_size)))
		goto end;
	uint64_t tj = 0, nrec = img ? img->trl.record_count : 0, prev_block = 0;
	cbi_tab_ent te;
	int have_te = 0;
	for (uint64_t i = 0; i < x->hdr.n_blocks; i++) {
		cbi_idx_ent ent, pe;
		if (cbi_index_get(x, i, &ent)) {
			problem(c, p->index_file, (int64_t)i, "unable to read the index entry");
			break;
		}
		int zero = (ent.flags & CBI_IDX_ZERO) != 0;
		if (ent.flags & ~CBI_IDX_ZERO)
			problem(c, p->index_file, (int64_t)i, "unknown index entry flags %#x", ent.flags);
		if (!zero && ent.owner > seq)
			problem(c, p->index_file, (int64_t)i, "owner seq %u is newer than the point (%u)",
				ent.owner, seq);
		if (!zero && ent.owner < first && px && !cbi_index_get(px, i, &pe) &&
		    (pe.owner != ent.owner || memcmp(pe.hash, ent.hash, 16) || pe.flags != ent.flags))
			problem(c, p->index_file, (int64_t)i,
				"entry claims the block is unchanged but differs from the parent index");
		if (!img)
			continue;
		if (!have_te && tj < nrec) {
			int trc = cbi_image_table_get(img, tj, &te);
			if (trc) {
				if (trc == -CBI_EDAMAGED) /* a run of entries out of order (I7) */
					problem(c, img->f->path, -1, "block table out of order");
				else
					problem(c, img->f->path, -1, "unable to read the block table");
				nrec = tj;
			} else {
				if (tj && te.block <= prev_block)
					problem(c, img->f->path, (int64_t)te.block, "block table out of order");
				prev_block = te.block;
				have_te = 1;
			}
		}
		int rec_here = have_te && te.block == i;
		int want_rec = !zero && ent.owner >= first && ent.owner <= seq;
		if (want_rec && !rec_here) {
			problem(c, img->f->path, (int64_t)i, "block missing from the image");
		} else if (rec_here) {
			cbi_error why;
			int r = cbi_image_read_block(img, &te, c->dctx, c->cx, c->scratch, c->blk,
						     want_rec ? ent.hash : NULL, &why);
			c->r->blocks_checked++;
			if ((tj & 15) == 0 && progress_at(c, te.offset + te.stored_len)) {
				rc = -ECANCELED;
				goto end;
			}
			if (r < 0)
				problem(c, img->f->path, (int64_t)i, "%s", why.msg);
			else if (!want_rec)
				problem(c, img->f->path, (int64_t)i, "record not referenced by the index");
			tj++;
			have_te = 0;
		}
		while (have_te && te.block < i) { /* table entries beyond n_blocks or duplicates */
			problem(c, img->f->path, (int64_t)te.block, "unexpected record in the block table");
			tj++;
			have_te = 0;
		}
		if (!img && (i & 4095) == 0 && progress_at(c, 0)) {
			rc = -ECANCELED;
			goto end;
		}
	}
	if (img && tj < nrec && !have_te)
		problem(c, img->f->path, -1, "%llu records beyond the last block",
			(unsigned long long)(nrec - tj));
	known_bad(c, x);
	c->r->points_checked++;
	c->base = end_base;
	rc = progress_at(c, 0) ? -ECANCELED : 0;
end:
	cbi_index_close(x);
	cbi_index_close(px);
	cbi_image_close(img);
	return rc;
}


/* Report a segment file that belongs to no split file of the directory:
 * its first segment is gone (renamed without its segments?) or does not
 * have that many segments. */
static void check_segment(vctx *c, const cbi_dest *d, const cbi_dent *e)
{
	char base[4096], path[4096];
	if ((size_t)snprintf(base, sizeof base, "%.3000s/%.*s", d->dir, (int)e->base_len, e->name) >= sizeof base)
		return;
	snprintf(path, sizeof path, "%.3000s/%.1000s", d->dir, e->name);
	char bname[4096];
	memcpy(bname, e->name, e->base_len);
	bname[e->base_len] = 0;
	const cbi_dent *b = cbi_dest_find(d, bname);
	if (!b)
		problem(c, path, -1,
			"segment file without its first segment '%s' (a split file's segments must be "
			"renamed and moved together)", base);
	else if (b->pt && !b->pt->rc && (e->seg == 0 || e->seg >= b->pt->nseg))
		problem(c, path, -1, "segment file that is not part of '%s' (%u segment%s)", base, b->pt->nseg,
			b->pt->nseg == 1 ? "" : "s");
}

/* Has the index of image file path arrived since the directory was scanned
 * (a backup that committed meanwhile, after its lock was tested)? A scan
 * again, on this rare path only. */
static int index_arrived(const char *dir, const char *path)
{
	cbi_point *pts = NULL;
	size_t n = 0;
	int found = 0;
	if (cbi_chain_scan(dir, &pts, &n, NULL) == 0)
		for (size_t i = 0; i < n && !found; i++)
			found = pts[i].has_image && !strcmp(pts[i].file, path);
	free(pts);
	return found;
}

/* Do the logical files a and b (segments joined) hold the same bytes? 1,
 * 0, or a negative code when one cannot be read. */
static int same_content(const char *a, const char *b)
{
	cbi_sfr *fa = NULL, *fb = NULL;
	int rc = cbi_sfr_open(a, &fa, NULL);
	if (!rc)
		rc = cbi_sfr_open(b, &fb, NULL);
	uint8_t *x = rc ? NULL : malloc(1 << 20), *y = rc ? NULL : malloc(1 << 20);
	if (!rc && (!x || !y))
		rc = -ENOMEM;
	if (!rc)
		rc = fa->size == fb->size;
	for (uint64_t off = 0; rc == 1 && off < fa->size;) {
		size_t n = (size_t)CBI_MIN((uint64_t)1 << 20, fa->size - off);
		int r = cbi_sfr_pread(fa, x, n, off);
		if (!r)
			r = cbi_sfr_pread(fb, y, n, off);
		rc = r ? r : !memcmp(x, y, n);
		off += n;
	}
	free(x);
	free(y);
	cbi_sfr_close(fa);
	cbi_sfr_close(fb);
	return rc;
}

/* A second file of point p (format/SPEC.md, "Finding the files", step 5:
 * duplicates): a byte-identical copy, or an image a merged image made
 * redundant, is a note; a copy that differs is damage. */
static void check_duplicate(vctx *c, const char *path, const cbi_point *ip, const cbi_point *p, int image)
{
	const char *used = image ? p->file : p->index_file;
	const char *what = image ? "image" : "index";
	if (image && (ip->merged != p->merged || ip->first_seq != p->first_seq)) {
		c->r->duplicates++;
		note(c, path, "'%s': an image of point seq %u that '%s' made redundant (a prune left it; the "
			      "next prune or backup of the job removes it)", path, p->seq, used);
		return;
	}
	int same = same_content(path, used);
	if (same == 1)
		c->r->duplicates++;
	if (same == 1)
		note(c, path, "'%s': a duplicate of '%s' (a second copy of point seq %u's %s file; not used)",
		     path, used, p->seq, what);
	else if (same == 0)
		problem(c, path, -1, "a second %s file of point seq %u that differs from '%s': one of the two "
				     "was damaged or altered", what, p->seq, used);
	else
		problem(c, path, -1, "unable to compare with '%s': %s", used, cbi_strerror(same));
}

/* The point of the scan that the file with point p's ids (point_id and
 * index digest) names, or NULL. */
static const cbi_point *point_named(const cbi_point *pts, size_t n, const cbi_point *ip)
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(pts[i].point_id, ip->point_id, 16) && !memcmp(pts[i].index_digest, ip->index_digest, 32))
			return &pts[i];
	return NULL;
}

/* Report files of the directory that are not part of any complete point. */
static void check_dir_files(vctx *c)
{
	const cbi_dest *d = cbi_chain_dest(c->ch);
	size_t n;
	const cbi_point *pts = cbi_chain_points(c->ch, &n);
	char path[4096];
	for (size_t j = 0; j < d->n; j++) {
		const cbi_dent *e = &d->e[j];
		if ((size_t)snprintf(path, sizeof path, "%.3000s/%.1000s", d->dir, e->name) >= sizeof path)
			continue;
		/* A damaged key file is a problem even while another copy (the
		 * local state's) still opens the chain. */
		if (e->kind == CBI_DENT_KEY && e->key && e->key->rc)
			problem(c, path, -1, "%s", e->key->msg);
		if (e->kind == CBI_DENT_SEGMENT)
			check_segment(c, d, e);
		if (e->kind != CBI_DENT_POINT || !e->pt)
			continue;
		if (e->pt->rc) {
			problem(c, path, -1, "%s", e->pt->msg);
			continue;
		}
		const cbi_point *ip = &e->pt->p, *named = point_named(pts, n, ip);
		if (e->pt->kind != CBI_KIND_IMAGE) {
			if (named && strcmp(named->index_file, path))
				check_duplicate(c, path, ip, named, 0);
			continue;
		}
		int matched = 0;
		for (size_t i = 0; i < n && !matched; i++)
			matched = pts[i].has_image && !strcmp(pts[i].file, path);
		if (!matched && named && named->has_image) {
			check_duplicate(c, path, ip, named, 1);
			continue;
		}
		/* a backup of its job running now renames the image, then the
		 * index: not a problem (yet) */
		if (!matched && !cbi_job_lock_held(d->dir, cbi_state_key(ip->host, ip->source_id, ip->job)) &&
		    !index_arrived(d->dir, path))
			problem(c, path, -1, "image file without a matching index file");
	}
}

static void note(vctx *c, const char *file, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->o->note)
		c->o->note(c->ud, file, -1, msg);
}

/* Compare the newest point of each chain here (or of the chain of
 * pts[only] when only >= 0) with the local state, read before the scan (the
 * chain reader's rollback check): a fork or a replaced point is a problem,
 * a chain behind the state a note. */
static void check_state(vctx *c, long only)
{
	size_t n;
	const cbi_point *pts = cbi_chain_points(c->ch, &n);
	for (size_t i = 0; i < n; i++) {
		const cbi_point *p = &pts[i];
		if (only >= 0 && memcmp(p->chain_id, pts[only].chain_id, 16))
			continue;
		int newest = 1; /* the newest point of its chain here */
		for (size_t j = 0; j < n && newest; j++)
			newest = !(j != i && !memcmp(pts[j].chain_id, p->chain_id, 16) && pts[j].seq > p->seq);
		if (!newest)
			continue;
		cbi_error e;
		uint32_t behind = 0, sseq = 0;
		char id[9];
		if (cbi_chain_check_state(c->ch, p, c->state, c->nstate, &behind, &sseq, &e)) {
			problem(c, p->index_file, -1, "%s", e.msg);
		} else if (behind) {
			cbi_id_short(p->chain_id, id);
			c->r->behind++;
			note(c, p->index_file,
			     "chain %s of job '%s' ends at seq %u here; the local state is at seq %u: %u point%s "
			     "behind (newer points went elsewhere, as to an outbox; not damage)",
			     id, p->job, p->seq, sseq, behind, behind == 1 ? "" : "s");
		}
	}
}

int cbi_verify(const char *path, const cbi_verify_opts *o, cbi_verify_result *r, cbi_error *err)
{
	memset(r, 0, sizeof *r);
	static const cbi_verify_opts none;
	if (!o)
		o = &none;
	vctx c = { .fn = o->fn, .ud = o->ud, .progress = o->progress, .progress_ud = o->progress_ud, .o = o, .r = r };
	cbi_chain_opts co = { .pass = o->pass, .pass_ud = o->pass_ud, .state_dir = o->state_dir,
			      .no_state = o->no_state };
	int rc = 0;
	struct stat st;
	if (stat(path, &st) < 0)
		return cbi_err(err, -errno, "unable to open '%s': %s", path, strerror(errno));
	char dir[4096];
	/* The state first, then DEST: a backup that commits in between writes
	 * DEST before its state, so the state read is never ahead of the scan
	 * by a point the scan missed (a false rollback). */
	if (!o->no_state) {
		const char *sd = o->state_dir && *o->state_dir ? o->state_dir : CBI_DEFAULT_STATE_DIR;
		if (cbi_state_snapshot(sd, &c.state, &c.nstate)) {
			c.state = NULL; /* an unreadable state: nothing to compare with, as before */
			c.nstate = 0;
		}
	}
	if (S_ISDIR(st.st_mode))
		cbi_strlcpy(dir, path, sizeof dir);
	else
		cbi_dirname(path, dir, sizeof dir);
	c.dctx = ZSTD_createDCtx();
	c.cx = cbi_cx_new();
	if (!c.dctx || !c.cx) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = cbi_chain_open_dir(dir, &co, &c.ch, err)))
		goto end;
	size_t n;
	const cbi_point *pts = cbi_chain_points(c.ch, &n);
	if (S_ISDIR(st.st_mode)) {
		check_dir_files(&c);
		for (size_t i = 0; i < n; i++)
			c.total += point_bytes(&pts[i]);
		for (size_t i = 0; i < n; i++) {
			cbi_error e;
			if (cbi_chain_select(c.ch, i, &e)) {
				problem(&c, pts[i].index_file, -1, "%s", e.msg);
				continue;
			}
			if ((rc = verify_point(&c, pts[i].seq)))
				goto end;
		}
		check_state(&c, -1);
	} else {
		cbi_point me;
		int kind = 0;
		memset(&me, 0, sizeof me);
		if ((rc = cbi_point_read_file(path, &me, &kind, err))) {
			if (cbi_is_damage(rc)) {
				problem(&c, path, -1, "%s", err ? err->msg : cbi_strerror(rc));
				rc = 0;
			}
			goto end;
		}
		long i = cbi_chain_find(c.ch, &me);
		if (i < 0) {
			problem(&c, path, -1, "no matching index file in '%s'", dir);
			goto end;
		}
		cbi_error e;
		if (cbi_chain_select(c.ch, (size_t)i, &e)) {
			problem(&c, pts[i].index_file, -1, "%s", e.msg);
			goto end;
		}
		for (uint32_t s = 0; s <= pts[i].seq; s++)
			if (cbi_chain_point(c.ch, s)->seq == s)
				c.total += point_bytes(cbi_chain_point(c.ch, s));
		for (uint32_t s = 0; s <= pts[i].seq; s++)
			if ((rc = verify_point(&c, s)))
				goto end;
		check_state(&c, i);
	}
end:
	if (rc == -CBI_EPASS || rc == -CBI_ENOKEY)
		rc = cbi_err(err, rc, "%s", c.keyerr.msg);
	else if (rc == -ECANCELED)
		cbi_err(err, rc, "interrupted");
	else if (rc == -ENOMEM)
		cbi_err(err, rc, "out of memory");
	if (!rc && r->problems)
		rc = cbi_err(err, -CBI_EDAMAGED, "%llu problems found", (unsigned long long)r->problems);
	else if (!rc && r->nokey)
		rc = cbi_err(err, -CBI_ENOKEY, "%s", c.nokeyerr.msg);
	cbi_chain_close(c.ch);
	free(c.state);
	free(c.scratch);
	free(c.blk);
	ZSTD_freeDCtx(c.dctx);
	cbi_cx_free(c.cx);
	return rc;
}
