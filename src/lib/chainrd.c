/* chainrd.c - the chain reader (chainrd.h). */
#define _GNU_SOURCE
#include "chainrd.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "hdrmac.h"
#include "sfile.h"
#include "state.h"
#include "unlock.h"
#include "util.h"

/* The keys of one chain id, unlocked once. */
typedef struct ckey {
	uint8_t chain_id[16];
	int rc;                 /* 0: keys valid; else why the chain could not be unlocked */
	cbi_error e;
	cbi_keys keys;
	char used[4096];        /* the key file that opened it */
} ckey;

/* An image of the chosen chain: open, or why not. */
typedef struct cimg {
	cbi_image *m;
	int rc;
	cbi_error *e;           /* the failure's message, kept */
} cimg;

struct cbi_chain {
	cbi_chain_opts o;
	char state_dir[4096];   /* "" with no_state */
	char dir[4096];         /* the points' directory (key files for a tip-only open) */
	cbi_dest *d;            /* its scan */
	cbi_point *pts;
	size_t npts;
	int tip_only;
	/* the chosen chain */
	long tip;               /* into pts, -1: none */
	size_t *seq;            /* seq[s]: into pts (NULL for tip_only) */
	uint32_t len;
	cbi_index *index;       /* the tip's */
	cimg *imgs;             /* per seq */
	/* every chain met: each allocated alone, so that the keys a caller holds
	 * stay where they are while others are added */
	ckey **keys;
	size_t nkeys, capkeys;
	char *pw;               /* keep_pass */
	int pwlen;
};

/* The step of the verdict under way (cbi_chain_opts.failed_at). */
static void at(const cbi_chain *c, int step)
{
	if (c->o.failed_at)
		*c->o.failed_at = step;
}

static int chain_new(const char *dir, const cbi_chain_opts *o, cbi_chain **out, cbi_error *err)
{
	static const cbi_chain_opts none;
	if (o && o->failed_at)
		*o->failed_at = CBI_CHAIN_AT_OPEN;
	cbi_chain *c = calloc(1, sizeof *c);
	if (!c)
		return cbi_err(err, -ENOMEM, "out of memory");
	c->o = o ? *o : none;
	c->tip = -1;
	if (!c->o.no_state)
		cbi_strlcpy(c->state_dir, c->o.state_dir && *c->o.state_dir ? c->o.state_dir : CBI_DEFAULT_STATE_DIR,
			    sizeof c->state_dir);
	c->o.state_dir = NULL; /* the copy above is used */
	cbi_strlcpy(c->dir, dir, sizeof c->dir);
	if (c->o.keep_pass && !(c->pw = calloc(1, CBI_PASS_MAX))) {
		free(c);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	*out = c;
	return 0;
}

static void unselect(cbi_chain *c)
{
	for (uint32_t s = 0; c->imgs && s < c->len; s++) {
		cbi_image_close(c->imgs[s].m);
		free(c->imgs[s].e);
	}
	free(c->imgs);
	c->imgs = NULL;
	cbi_index_close(c->index);
	c->index = NULL;
	free(c->seq);
	c->seq = NULL;
	c->len = 0;
	c->tip = -1;
}

void cbi_chain_close(cbi_chain *c)
{
	if (!c)
		return;
	unselect(c);
	cbi_dest_free(c->d);
	free(c->pts);
	for (size_t i = 0; i < c->nkeys; i++) {
		OPENSSL_cleanse(c->keys[i], sizeof *c->keys[i]);
		free(c->keys[i]);
	}
	free(c->keys);
	if (c->pw) {
		OPENSSL_cleanse(c->pw, CBI_PASS_MAX);
		free(c->pw);
	}
	free(c);
}

int cbi_chain_open_dir(const char *dir, const cbi_chain_opts *o, cbi_chain **out, cbi_error *err)
{
	cbi_chain *c = NULL;
	int rc = chain_new(dir, o, &c, err);
	if (rc)
		return rc;
	if ((rc = cbi_dest_scan(dir, CBI_DEST_READ | CBI_DEST_KEYS, &c->d, err)) ||
	    (rc = cbi_dest_points(c->d, &c->pts, &c->npts, err))) {
		cbi_chain_close(c);
		return rc;
	}
	at(c, 0);
	*out = c;
	return 0;
}

const cbi_dest *cbi_chain_dest(const cbi_chain *c)
{
	return c->d;
}

const cbi_point *cbi_chain_points(const cbi_chain *c, size_t *n)
{
	*n = c->npts;
	return c->pts;
}

long cbi_chain_find(const cbi_chain *c, const cbi_point *me)
{
	long i = -1;
	for (size_t k = 0; k < c->npts; k++)
		if (!memcmp(c->pts[k].point_id, me->point_id, 16) &&
		    !memcmp(c->pts[k].index_digest, me->index_digest, 32))
			i = (long)k;
	return i;
}

int cbi_chain_select(cbi_chain *c, size_t i, cbi_error *err)
{
	unselect(c);
	if (i >= c->npts || c->tip_only)
		return cbi_err(err, -EINVAL, "no point %zu to choose", i);
	int rc = cbi_chain_resolve(c->pts, c->npts, i, &c->seq, err);
	if (rc)
		return rc;
	c->len = c->pts[i].seq + 1;
	if (!(c->imgs = calloc(c->len, sizeof *c->imgs))) {
		unselect(c);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	c->tip = (long)i;
	return 0;
}

uint32_t cbi_chain_len(const cbi_chain *c)
{
	return c->len;
}

const cbi_point *cbi_chain_point(const cbi_chain *c, uint32_t s)
{
	if (c->tip < 0 || s >= c->len)
		return NULL;
	if (c->tip_only)
		return s + 1 == c->len ? &c->pts[0] : NULL;
	return &c->pts[c->seq[s]];
}

cbi_index *cbi_chain_tip_index(const cbi_chain *c)
{
	return c->index;
}

/* ----------------------------------------------------------------- keys */

int cbi_chain_keys(cbi_chain *c, const cbi_hdr *h, const cbi_keys **k, cbi_error *err)
{
	*k = NULL;
	if (!(h->flags & CBI_HDR_ENCRYPTED))
		return 0;
	ckey *ck = NULL;
	for (size_t i = 0; i < c->nkeys && !ck; i++)
		if (!memcmp(c->keys[i]->chain_id, h->chain_id, 16))
			ck = c->keys[i];
	if (!ck) {
		if (c->nkeys == c->capkeys) {
			size_t nc = c->capkeys ? 2 * c->capkeys : 4;
			ckey **t = realloc(c->keys, nc * sizeof *t);
			if (!t)
				return cbi_err(err, -ENOMEM, "out of memory");
			c->keys = t;
			c->capkeys = nc;
		}
		if (!(ck = calloc(1, sizeof *ck)))
			return cbi_err(err, -ENOMEM, "out of memory");
		c->keys[c->nkeys++] = ck;
		memcpy(ck->chain_id, h->chain_id, 16);
		memset(&ck->e, 0, sizeof ck->e);
		/* The one place in the library that unlocks a chain. */
		ck->rc = cbi_unlock(c->d, c->state_dir[0] ? c->state_dir : NULL, h, c->o.pass, c->o.pass_ud, &ck->keys,
				    ck->used, sizeof ck->used, c->pw && !c->pwlen ? c->pw : NULL, &c->pwlen, &ck->e);
	}
	if (ck->rc) {
		if (err)
			*err = ck->e;
		return ck->rc;
	}
	*k = &ck->keys;
	return 0;
}

/* The one place that checks a header's key id and MAC against the keys of
 * an unlocked chain (cbi_index_set_keys() and cbi_image_set_keys() call
 * cbi_hdr_check_keyed()), for an index (x) or an image (m). */
static int set_keys(const cbi_keys *k, cbi_index *x, cbi_image *m, cbi_error *err)
{
	int rc = x ? cbi_index_set_keys(x, k) : cbi_image_set_keys(m, k);
	if (rc)
		return cbi_err(err, -CBI_EAUTH, "'%s': %s", x ? x->f->path : m->f->path, cbi_hdr_keyed_problem(rc));
	return 0;
}

int cbi_chain_auth_index(cbi_chain *c, cbi_index *x, cbi_error *err)
{
	const cbi_keys *k;
	int rc = cbi_chain_keys(c, &x->hdr, &k, err);
	return rc || !k ? rc : set_keys(k, x, NULL, err);
}

int cbi_chain_auth_image(cbi_chain *c, const cbi_index *x, cbi_image *m, cbi_error *err)
{
	const cbi_keys *k;
	int rc = cbi_chain_keys(c, &x->hdr, &k, err);
	return rc || !k ? rc : set_keys(k, NULL, m, err);
}

const char *cbi_chain_key_file(const cbi_chain *c)
{
	if (!c->index || !(c->index->hdr.flags & CBI_HDR_ENCRYPTED))
		return "";
	for (size_t i = 0; i < c->nkeys; i++)
		if (!memcmp(c->keys[i]->chain_id, c->index->hdr.chain_id, 16))
			return c->keys[i]->rc ? "" : c->keys[i]->used;
	return "";
}

const char *cbi_chain_pass(const cbi_chain *c, int *len)
{
	*len = c->pw && c->pwlen ? c->pwlen : 0;
	return *len ? c->pw : NULL;
}

/* -------------------------------------------------------------- verdict */

int cbi_chain_check(cbi_chain *c, cbi_error *err)
{
	const cbi_point *tp = cbi_chain_point(c, c->len ? c->len - 1 : 0);
	at(c, CBI_CHAIN_AT_OPEN);
	if (!tp)
		return cbi_err(err, -EINVAL, "no chain chosen");
	cbi_index_close(c->index);
	c->index = NULL;
	int rc = cbi_index_open(tp->index_file, &c->index, err);
	if (rc)
		return rc;
	if (c->index->hdr.flags & CBI_HDR_ENCRYPTED) {
		const cbi_keys *k;
		at(c, CBI_CHAIN_AT_UNLOCK);
		if ((rc = cbi_chain_keys(c, &c->index->hdr, &k, err)))
			return rc;
		/* Every index of the chain against the keys: each names its parent,
		 * so the parent links are then authentic. */
		for (uint32_t s = 0; s + 1 < c->len; s++) {
			const cbi_point *p = cbi_chain_point(c, s);
			cbi_index *x = NULL;
			if (!p || p->seq != s)
				continue; /* tip only: the ancestors are elsewhere; a seq merged away */
			at(c, CBI_CHAIN_AT_OPEN);
			if (!(rc = cbi_index_open(p->index_file, &x, err))) {
				at(c, CBI_CHAIN_AT_HEADER);
				rc = set_keys(k, x, NULL, err);
			}
			cbi_index_close(x);
			if (rc)
				return rc;
		}
		at(c, CBI_CHAIN_AT_HEADER);
		if ((rc = set_keys(k, c->index, NULL, err)))
			return rc;
		/* A merged point's links are in its image's header: authentic once
		 * that header's MAC is. */
		for (uint32_t s = 0; s < c->len; s++) {
			const cbi_point *p = cbi_chain_point(c, s);
			cbi_image *m = NULL;
			if (!p || p->seq != s || !p->merged)
				continue;
			if (!(rc = cbi_image_open(p->file, &m, err)))
				rc = set_keys(k, NULL, m, err);
			cbi_image_close(m);
			if (rc)
				return rc;
		}
	}
	at(c, CBI_CHAIN_AT_DIGEST);
	if ((rc = cbi_index_check_digest(c->index))) {
		int enc = (c->index->hdr.flags & CBI_HDR_ENCRYPTED) != 0;
		return cbi_err(err, rc == -CBI_EDAMAGED ? -CBI_EDAMAGED : rc, "index '%s': %s", tp->index_file,
			       rc == -CBI_EDAMAGED ? (enc ? "authentication failed: the file was altered"
							  : "digest mismatch: the file is damaged")
						   : cbi_strerror(rc));
	}
	return 0;
}

int cbi_chain_open(const char *file, const cbi_chain_opts *o, cbi_chain **out, cbi_error *err)
{
	cbi_point me;
	char dir[4096];
	cbi_chain *c = NULL;
	int kind = 0;
	memset(&me, 0, sizeof me);
	int rc = cbi_point_read_file(file, &me, &kind, err);
	if (rc)
		return rc;
	cbi_dirname(file, dir, sizeof dir);
	if ((rc = cbi_chain_open_dir(dir, o, &c, err)))
		return rc;
	at(c, CBI_CHAIN_AT_OPEN);
	long i = cbi_chain_find(c, &me);
	if (i < 0)
		rc = cbi_err(err, -CBI_ENOPARENT, "'%s': the index file of this point is not in '%s'", file, dir);
	else if (!(rc = cbi_chain_select(c, (size_t)i, err)))
		rc = cbi_chain_check(c, err);
	if (rc) {
		cbi_chain_close(c);
		return rc;
	}
	*out = c;
	return 0;
}

int cbi_chain_open_job(const char *dest, const char *host, const char *source_id, const char *job,
		       const cbi_chain_opts *o, cbi_chain **out, cbi_error *err)
{
	cbi_chain *c = NULL;
	int rc = cbi_chain_open_dir(dest, o, &c, err);
	if (rc)
		return rc;
	at(c, CBI_CHAIN_AT_OPEN);
	long best = -1;
	for (size_t i = 0; i < c->npts; i++) {
		const cbi_point *p = &c->pts[i];
		if (strcmp(p->host, host) || strcmp(p->job, job) || strcmp(p->source_id, source_id))
			continue;
		if (best < 0 || p->created_ns > c->pts[best].created_ns ||
		    (p->created_ns == c->pts[best].created_ns && p->seq > c->pts[best].seq))
			best = (long)i;
	}
	if (best < 0)
		rc = cbi_err(err, -CBI_ENOCHAIN, "no chain of job '%s' of '%s' in '%s'", job, host, dest);
	else if (!(rc = cbi_chain_select(c, (size_t)best, err)))
		rc = cbi_chain_check(c, err);
	if (rc) {
		cbi_chain_close(c);
		return rc;
	}
	*out = c;
	return 0;
}

int cbi_chain_open_tip(const char *index_file, const char *key_dir, const cbi_chain_opts *o, cbi_chain **out,
		       cbi_error *err)
{
	cbi_chain *c = NULL;
	cbi_index *x = NULL;
	int rc = chain_new(key_dir, o, &c, err);
	if (rc)
		return rc;
	c->tip_only = 1;
	at(c, CBI_CHAIN_AT_OPEN);
	if ((rc = cbi_dest_scan(key_dir, CBI_DEST_KEYS | CBI_DEST_MISSING_OK, &c->d, err)) ||
	    (rc = cbi_index_open(index_file, &x, err)))
		goto fail;
	if (!(c->pts = calloc(1, sizeof *c->pts))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	cbi_point_from_index(&c->pts[0], x);
	cbi_index_close(x);
	x = NULL;
	c->npts = 1;
	c->tip = 0;
	c->len = c->pts[0].seq + 1;
	if ((rc = cbi_chain_check(c, err)))
		goto fail;
	*out = c;
	return 0;
fail:
	cbi_index_close(x);
	cbi_chain_close(c);
	return rc;
}

/* --------------------------------------------------------------- images */

/* Is there, in the scan, a file of point point_id whose header says image
 * but that does not read as a complete image? Its entry, or NULL. */
static const cbi_dent *damaged_image(const cbi_chain *c, const uint8_t point_id[16])
{
	for (size_t i = 0; c->d && i < c->d->n; i++) {
		const cbi_dent_point *t = c->d->e[i].pt;
		if (t && t->rc && t->kind == CBI_KIND_IMAGE && !memcmp(t->p.point_id, point_id, 16))
			return &c->d->e[i];
	}
	return NULL;
}

/* Is there, in the scan, a file at the name p's image would have (its index
 * file's name ending in .cbi), which is not p's image? 1 with its path in
 * path[4096], or 0. */
static int replaced_image(const cbi_chain *c, const cbi_point *p, char *path)
{
	const char *base = strrchr(p->index_file, '/');
	base = base ? base + 1 : p->index_file;
	size_t n = strlen(base);
	if (!c->d || n < 4 || n >= 4096 || strcmp(base + n - 4, ".cbx"))
		return 0;
	char name[4096];
	memcpy(name, base, n - 4);
	memcpy(name + n - 4, ".cbi", 5);
	const cbi_dent *e = cbi_dest_find(c->d, name);
	return e && !cbi_dest_path(c->d, e, path, 4096);
}

int cbi_chain_image_fits(const cbi_point *p, const cbi_image *m, const cbi_index *x, cbi_error *err)
{
	cbi_index *own = NULL;
	int rc = 0;
	if (!x && !(rc = cbi_index_open(p->index_file, &own, err)))
		x = own;
	const char *field = rc ? NULL : cbi_hdr_pair_problem(&m->hdr, &x->hdr);
	if (field)
		rc = cbi_err(err, -CBI_EDAMAGED, "'%s': header does not match its index file ('%s'): %s differs (I8)",
			     m->f->path, x->f->path, field);
	cbi_index_close(own);
	return rc;
}

static int open_image(cbi_chain *c, uint32_t seq, cbi_image **out, cbi_error *err)
{
	const cbi_point *p = cbi_chain_point(c, seq);
	if (!p || !p->has_image) {
		/* An image of this point that is there but incomplete or damaged
		 * is damage (exit 3), not a missing file: the scan pairs only
		 * images that read as such. */
		const cbi_dent *bad = p ? damaged_image(c, p->point_id) : NULL;
		if (bad && cbi_is_damage(bad->pt->rc))
			return cbi_err(err, bad->pt->rc, "image file of point seq %u is damaged: %s", seq,
				       bad->pt->msg);
		/* Another file where its image should be (the index's name
		 * with .cbi): the image was replaced, which is damage too. */
		char other[4096];
		if (p && replaced_image(c, p, other))
			return cbi_err(err, -CBI_EDAMAGED,
				       "image file '%s' of point seq %u is not this point's image (replaced by "
				       "another file): run 'cbimg verify'", other, seq);
		return cbi_err(err, -CBI_ENOPARENT,
			       "image file of point seq %u (index '%s') is missing or damaged: "
			       "run 'cbimg verify'", seq, p ? p->index_file : "?");
	}
	cbi_image *m = NULL;
	int rc = cbi_image_open(p->file, &m, err);
	if (rc)
		return rc;
	/* records are read in file order: a larger read-ahead (a hint) */
	(void)posix_fadvise(m->f->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	const cbi_hdr *th = &c->index->hdr;
	/* the chain's keys (unlocked by cbi_chain_check()), whatever the image's
	 * header claims: a header of another chain or key fails the check */
	rc = cbi_chain_auth_image(c, c->index, m, err);
	/* I8 first, so that the message names the field; then against the tip
	 * (implied by I8 and C2, kept as a second line of defence) */
	if (!rc)
		rc = cbi_chain_image_fits(p, m, seq + 1 == c->len ? c->index : NULL, err);
	if (!rc && (memcmp(m->hdr.chain_id, th->chain_id, 16) || m->hdr.seq != seq ||
		    m->hdr.block_size != th->block_size || m->hdr.source_size != th->source_size))
		rc = cbi_err(err, -CBI_EDAMAGED, "'%s': header does not match the chain", p->file);
	if (rc) {
		cbi_image_close(m);
		return rc;
	}
	*out = m;
	return 0;
}

int cbi_chain_image(cbi_chain *c, uint32_t seq, cbi_image **out, cbi_error *err)
{
	if (!c->index || !c->imgs)
		return cbi_err(err, -EINVAL, "the chain was not checked");
	if (seq >= c->len)
		return cbi_err(err, -CBI_EDAMAGED, "index '%s' names a block owner seq %u beyond the chain",
			       c->index->f->path, seq);
	/* the point whose image holds the blocks of seq: a merged point holds
	 * those of the seqs it replaced */
	const cbi_point *hp = cbi_chain_point(c, seq);
	if (hp && !c->tip_only)
		seq = hp->seq;
	cimg *ci = &c->imgs[seq];
	if (!ci->m && !ci->rc) {
		cbi_error e;
		memset(&e, 0, sizeof e);
		ci->rc = open_image(c, seq, &ci->m, &e);
		if (ci->rc && !(ci->e = malloc(sizeof *ci->e)))
			return cbi_err(err, -ENOMEM, "out of memory"); /* not kept: tried again */
		if (ci->rc)
			*ci->e = e;
	}
	if (ci->rc) {
		if (err)
			*err = *ci->e;
		return ci->rc;
	}
	*out = ci->m;
	return 0;
}

/* ---------------------------------------------------------------- state */

/* Does the state's point st (seq > p's) descend from p? Every block the
 * state's index says is unchanged since seq p->seq or earlier must be
 * recorded alike in p's index (owner, hash, flags). 1: yes (as far as the
 * indexes tell), 0: no, -errno: an index could not be read (the state's
 * copy replaced by a backup meanwhile: nothing is concluded). */
static int descends(const cbi_point *p, const cbi_point *st)
{
	if (st->seq == p->seq + 1)
		return !memcmp(st->parent_id, p->point_id, 16) && !memcmp(st->parent_digest, p->index_digest, 32);
	cbi_index *a = NULL, *b = NULL;
	int rc = cbi_index_open(p->index_file, &a, NULL);
	if (!rc)
		rc = cbi_index_open(st->index_file, &b, NULL);
	if (!rc && a->hdr.n_blocks != b->hdr.n_blocks)
		rc = 0;
	else if (!rc)
		rc = 1;
	for (uint64_t i = 0; rc == 1 && i < a->hdr.n_blocks; i++) {
		cbi_idx_ent ea, eb;
		int r = cbi_index_get(a, i, &ea);
		if (!r)
			r = cbi_index_get(b, i, &eb);
		if (r)
			rc = r;
		else if (!(eb.flags & CBI_IDX_ZERO) && eb.owner <= p->seq &&
			 (ea.owner != eb.owner || ea.flags != eb.flags || memcmp(ea.hash, eb.hash, 16)))
			rc = 0;
	}
	cbi_index_close(a);
	cbi_index_close(b);
	return rc;
}

int cbi_chain_check_state(const cbi_chain *c, const cbi_point *p, const cbi_point *st, size_t nst,
			  uint32_t *behind, uint32_t *state_seq, cbi_error *err)
{
	const cbi_point *s = NULL; /* the state's newest point of p's chain and job */
	char id[9];
	*behind = 0;
	*state_seq = 0;
	for (size_t i = 0; i < nst; i++)
		if (!memcmp(st[i].chain_id, p->chain_id, 16) && !strcmp(st[i].host, p->host) &&
		    !strcmp(st[i].source_id, p->source_id) && !strcmp(st[i].job, p->job) && (!s || st[i].seq > s->seq))
			s = &st[i];
	if (!s)
		return 0;
	cbi_id_short(p->chain_id, id);
	*state_seq = s->seq;
	if (s->seq > p->seq) {
		if (!descends(p, s))
			return cbi_err(err, -CBI_EMISMATCH,
				       "chain %s ends at seq %u here, but the local state of job '%s' records seq %u, "
				       "which does not continue this point: the chain was forked or a point was "
				       "replaced",
				       id, p->seq, p->job, s->seq);
		*behind = s->seq - p->seq;
		return 0;
	}
	/* the state's point is here too, if the chain was not forked */
	const cbi_point *same = s->seq == p->seq ? p : NULL;
	for (size_t i = 0; i < c->npts && !same; i++)
		if (!memcmp(c->pts[i].chain_id, p->chain_id, 16) && c->pts[i].seq == s->seq)
			same = &c->pts[i];
	if (same && memcmp(same->point_id, s->point_id, 16))
		return cbi_err(err, -CBI_EMISMATCH,
			       "seq %u of chain %s is not the point the local state of job '%s' records: "
			       "the chain was forked or a point was replaced",
			       s->seq, id, p->job);
	return 0;
}

/* ---------------------------------------------------------------- files */

/* Add path (and, for a point file, its segments) to *v when it exists. */
static int add_fid(cbi_fid **v, size_t *n, size_t *cap, const char *path, int segments)
{
	char name[4096];
	for (uint32_t k = 0;; k++) {
		struct stat st;
		const char *p = path;
		if (k) {
			if (!segments || cbi_sfile_segment_name(path, k, name, sizeof name))
				return 0;
			p = name;
		}
		if (stat(p, &st) < 0)
			return 0; /* no (further) segment */
		if (*n == *cap) {
			size_t nc = *cap ? 2 * *cap : 16;
			cbi_fid *t = realloc(*v, nc * sizeof *t);
			if (!t)
				return -ENOMEM;
			*v = t;
			*cap = nc;
		}
		cbi_fid *f = &(*v)[*n];
		if (!(f->path = strdup(p)))
			return -ENOMEM;
		f->dev = st.st_dev;
		f->ino = st.st_ino;
		(*n)++;
	}
}

int cbi_chain_files(const cbi_chain *c, cbi_fid **files, size_t *nout, cbi_fid *dir, cbi_error *err)
{
	cbi_fid *v = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct stat st;
	memset(dir, 0, sizeof *dir);
	for (uint32_t s = 0; !rc && s < c->len; s++) {
		const cbi_point *p = cbi_chain_point(c, s);
		if (p && !(rc = add_fid(&v, &n, &cap, p->index_file, 1)) && p->file[0])
			rc = add_fid(&v, &n, &cap, p->file, 1);
	}
	const char *kf = cbi_chain_key_file(c);
	if (!rc && kf[0])
		rc = add_fid(&v, &n, &cap, kf, 0);
	if (!rc && !(dir->path = strdup(c->dir)))
		rc = -ENOMEM;
	if (rc) {
		cbi_fids_free(v, n);
		free(dir->path);
		dir->path = NULL;
		return cbi_err(err, rc, "out of memory");
	}
	if (stat(c->dir, &st) == 0) {
		dir->dev = st.st_dev;
		dir->ino = st.st_ino;
	}
	*files = v;
	*nout = n;
	return 0;
}
