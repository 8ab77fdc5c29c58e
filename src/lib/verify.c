/* verify.c - cbi_verify(): check digests, chain links, the index against
 * its parent, and every stored block against its record and the index. */
#define _GNU_SOURCE
#include <dirent.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "chain.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "state.h"
#include "util.h"

#define MAX_CHAINS 64

/* The keys of one encrypted chain, unlocked once per verify run. */
typedef struct vkey {
	uint8_t chain_id[16];
	int rc;               /* 0: keys valid; else why the chain could not be unlocked */
	cbi_keys keys;
} vkey;

typedef struct vctx {
	cbi_verify_fn fn;
	void *ud;
	cbi_progress_fn progress;
	void *progress_ud;
	const cbi_verify_opts *o;
	const char *dir;
	cbi_verify_result *r;
	vkey *keys;
	size_t nkeys;
	cbi_error keyerr;     /* the first failure to unlock, for the caller */
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

static void check_digest(vctx *c, cbi_sfr *f, const uint8_t *mac_key)
{
	int rc = cbi_sfr_check_digest_mac(f, mac_key, NULL, NULL);
	c->r->files_checked++;
	if (rc == -CBI_EDAMAGED && mac_key)
		problem(c, f->path, -1, "HMAC-SHA256 mismatch: the file was altered or damaged");
	else if (rc == -CBI_EDAMAGED)
		problem(c, f->path, -1, "SHA-256 digest mismatch: the file was changed or damaged");
	else if (rc)
		problem(c, f->path, -1, "unable to read: %s", cbi_errtext(rc));
}

/* The keys of the encrypted chain of header h, unlocked on first use.
 * NULL when the chain cannot be unlocked: *rc then says why (-CBI_EPASS
 * stops the run; a missing key file is a problem of the chain). */
static const cbi_keys *chain_keys(vctx *c, const cbi_hdr *h, int *rc)
{
	for (size_t i = 0; i < c->nkeys; i++)
		if (!memcmp(c->keys[i].chain_id, h->chain_id, 16)) {
			*rc = c->keys[i].rc;
			return *rc ? NULL : &c->keys[i].keys;
		}
	if (c->nkeys == MAX_CHAINS) {
		*rc = -ENOMEM;
		return NULL;
	}
	vkey *k = &c->keys[c->nkeys++];
	cbi_error e;
	memcpy(k->chain_id, h->chain_id, 16);
	const char *sd = c->o->no_state ? NULL
		       : c->o->state_dir && *c->o->state_dir ? c->o->state_dir : CBI_DEFAULT_STATE_DIR;
	k->rc = cbi_chain_unlock(c->dir, sd, h, c->o->pass, c->o->pass_ud, &k->keys, NULL, 0, NULL, NULL, &e);
	if (k->rc && !c->keyerr.code)
		c->keyerr = e;
	*rc = k->rc;
	return k->rc ? NULL : &k->keys;
}

/* Check one point: its index against its parent's, its image's records
 * against its index. pts/chain come from cbi_chain_resolve. */
static int verify_point(vctx *c, const cbi_point *pts, const size_t *chain, uint32_t seq)
{
	const cbi_point *p = &pts[chain[seq]];
	cbi_index *x = NULL, *px = NULL;
	cbi_image *img = NULL;
	const cbi_keys *k = NULL;
	cbi_error e;
	int rc = 0;
	if (cbi_index_open(p->index_file, &x, &e)) {
		problem(c, p->index_file, -1, "%s", e.msg);
		return 0;
	}
	if (x->hdr.flags & CBI_HDR_ENCRYPTED) {
		k = chain_keys(c, &x->hdr, &rc);
		if (rc == -CBI_ENOKEY || cbi_is_damage(rc)) { /* no key file, or only damaged ones */
			problem(c, p->index_file, -1, "%s", c->keyerr.msg);
			rc = 0;
			goto end;
		}
		if (rc)
			goto end; /* a wrong or missing passphrase stops verification */
		int kr = cbi_index_set_keys(x, k);
		if (kr)
			problem(c, p->index_file, -1, "%s",
				cbi_hdr_keyed_problem(kr));
	}
	check_digest(c, x->f, k ? k->mac_key : NULL);
	if (seq > 0 && cbi_index_open(pts[chain[seq - 1]].index_file, &px, &e)) {
		problem(c, pts[chain[seq - 1]].index_file, -1, "%s", e.msg);
		px = NULL;
	}
	if (!p->has_image) {
		problem(c, p->index_file, -1, "the image file of this point is missing");
	} else if (cbi_image_open(p->file, &img, &e)) {
		problem(c, p->file, -1, "%s", e.msg);
		img = NULL;
	} else if (k && (rc = cbi_image_set_keys(img, k))) {
		problem(c, p->file, -1, "%s",
			cbi_hdr_keyed_problem(rc));
		check_digest(c, img->f, k->mac_key);
		cbi_image_close(img); /* its records cannot be checked */
		img = NULL;
		rc = 0;
	} else {
		check_digest(c, img->f, k ? k->mac_key : NULL);
	}
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
		if (!zero && ent.owner < seq && px && !cbi_index_get(px, i, &pe) &&
		    (pe.owner != ent.owner || memcmp(pe.hash, ent.hash, 16) || pe.flags != ent.flags))
			problem(c, p->index_file, (int64_t)i,
				"entry claims the block is unchanged but differs from the parent index");
		if (!img)
			continue;
		if (!have_te && tj < nrec) {
			if (cbi_image_table_get(img, tj, &te)) {
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
		int want_rec = !zero && ent.owner == seq;
		if (want_rec && !rec_here) {
			problem(c, img->f->path, (int64_t)i, "block missing from the image");
		} else if (rec_here) {
			const char *why = NULL;
			int r = cbi_image_read_block(img, &te, c->dctx, c->cx, c->scratch, c->blk,
						     want_rec ? ent.hash : NULL, &why);
			c->r->blocks_checked++;
			if (r < 0)
				problem(c, img->f->path, (int64_t)i, "%s", why ? why : cbi_errtext(r));
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
		if (c->progress && (i & 4095) == 0 && c->progress(c->progress_ud, i, x->hdr.n_blocks)) {
			rc = -ECANCELED;
			goto end;
		}
	}
	if (img && tj < nrec && !have_te)
		problem(c, img->f->path, -1, "%llu records beyond the last block",
			(unsigned long long)(nrec - tj));
	c->r->points_checked++;
end:
	cbi_index_close(x);
	cbi_index_close(px);
	cbi_image_close(img);
	return rc;
}


/* If name is a segment name "NAME.cbi.NNN" / "NAME.cbx.NNN", its number;
 * else -1. */
static long segment_number(const char *name, size_t *base_len)
{
	size_t n = strlen(name), i = n;
	while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9')
		i--;
	if (n - i < 3 || n - i > 10 || i < 6 || name[i - 1] != '.')
		return -1;
	if (strncmp(name + i - 5, ".cbi", 4) && strncmp(name + i - 5, ".cbx", 4))
		return -1;
	*base_len = i - 1;
	return strtol(name + i, NULL, 10);
}

/* Report a segment file that belongs to no split file of the directory:
 * its first segment is gone (renamed without its segments?) or does not
 * have that many segments. */
static void check_segment(vctx *c, const char *dir, const char *name)
{
	size_t bl = 0;
	long k = segment_number(name, &bl);
	char base[4096], path[4096];
	if (k < 0 || (size_t)snprintf(base, sizeof base, "%.3000s/%.*s", dir, (int)bl, name) >= sizeof base)
		return;
	snprintf(path, sizeof path, "%.3000s/%.1000s", dir, name);
	cbi_sfr *f = NULL;
	int rc = cbi_sfr_open(base, &f, NULL);
	if (rc == -ENOENT)
		problem(c, path, -1,
			"segment file without its first segment '%s' (a split file's segments must be "
			"renamed and moved together)", base);
	else if (!rc && (k == 0 || (uint64_t)k >= f->nseg))
		problem(c, path, -1, "segment file that is not part of '%s' (%u segment%s)", base, f->nseg,
			f->nseg == 1 ? "" : "s");
	cbi_sfr_close(f);
}

/* Report files of dir that are not part of any complete point. */
static int check_dir_files(vctx *c, const char *dir, const cbi_point *pts, size_t n)
{
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	struct dirent *de;
	char path[4096];
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (cbi_has_ext(de->d_name, ".cbk")) {
			/* A damaged key file is a problem even while another copy
			 * (the local state's) still opens the chain. */
			cbi_keyfile kf;
			cbi_error e;
			if ((size_t)snprintf(path, sizeof path, "%.3000s/%.1000s", dir, de->d_name) < sizeof path &&
			    cbi_keyfile_read(path, &kf, &e))
				problem(c, path, -1, "%s", e.msg);
			continue;
		}
		if (!(cbi_has_ext(de->d_name, ".cbi") || cbi_has_ext(de->d_name, ".cbx"))) {
			check_segment(c, dir, de->d_name);
			continue;
		}
		if ((size_t)snprintf(path, sizeof path, "%.3000s/%.1000s", dir, de->d_name) >= sizeof path)
			continue;
		cbi_point p;
		int kind = 0;
		cbi_error e;
		memset(&p, 0, sizeof p);
		if (cbi_point_read_file(path, &p, &kind, &e)) {
			problem(c, path, -1, "%s", e.msg);
			continue;
		}
		if (kind != CBI_KIND_IMAGE)
			continue;
		int matched = 0;
		for (size_t i = 0; i < n && !matched; i++)
			matched = pts[i].has_image && !strcmp(pts[i].file, path);
		if (!matched)
			problem(c, path, -1, "image file without a matching index file");
	}
	closedir(d);
	return 0;
}

/* Compare the newest point of each job in pts[0..n) (or of the chain of
 * pts[only] when only >= 0) with the local state: a state that holds a
 * newer point of the same chain means points are missing here. */
static void check_state(vctx *c, const cbi_point *pts, size_t n, long only)
{
	if (c->o->no_state)
		return;
	const char *sd = c->o->state_dir && *c->o->state_dir ? c->o->state_dir : CBI_DEFAULT_STATE_DIR;
	for (size_t i = 0; i < n; i++) {
		const cbi_point *p = &pts[i];
		if (only >= 0 && memcmp(p->chain_id, pts[only].chain_id, 16))
			continue;
		int newest = 1; /* the newest point of its chain here */
		for (size_t j = 0; j < n && newest; j++)
			newest = !(j != i && !memcmp(pts[j].chain_id, p->chain_id, 16) && pts[j].seq > p->seq);
		if (!newest)
			continue;
		cbi_point st;
		int found = 0, damaged = 0;
		char why[700];
		memset(&st, 0, sizeof st);
		if (cbi_state_load(sd, cbi_state_key(p->host, p->source_id, p->job), &st, &found, &damaged, why,
				   sizeof why) ||
		    !found || memcmp(st.chain_id, p->chain_id, 16))
			continue;
		char id[33];
		cbi_id_hex(p->chain_id, id);
		id[8] = 0;
		if (st.seq > p->seq)
			problem(c, p->index_file, -1,
				"chain %s ends at seq %u here, but the local state of job '%s' records seq %u: newer "
				"points are missing (a rollback, or they went to another destination such as an "
				"outbox; --no-state skips this check)",
				id, p->seq, p->job, st.seq);
		else if (st.seq == p->seq && memcmp(st.point_id, p->point_id, 16))
			problem(c, p->index_file, -1,
				"seq %u of chain %s is not the point the local state of job '%s' records: "
				"the chain was forked or a point was replaced",
				p->seq, id, p->job);
	}
}

int cbi_verify(const char *path, const cbi_verify_opts *o, cbi_verify_result *r, cbi_error *err)
{
	memset(r, 0, sizeof *r);
	static const cbi_verify_opts none;
	if (!o)
		o = &none;
	vctx c = { .fn = o->fn, .ud = o->ud, .progress = o->progress, .progress_ud = o->progress_ud, .o = o, .r = r };
	cbi_point *pts = NULL;
	size_t n = 0, *chain = NULL;
	int rc = 0;
	struct stat st;
	if (stat(path, &st) < 0)
		return cbi_err(err, -errno, "unable to open '%s': %s", path, strerror(errno));
	char dir[4096];
	if (S_ISDIR(st.st_mode))
		cbi_strlcpy(dir, path, sizeof dir);
	else
		cbi_dirname(path, dir, sizeof dir);
	c.dir = dir;
	c.dctx = ZSTD_createDCtx();
	c.cx = cbi_cx_new();
	c.keys = calloc(MAX_CHAINS, sizeof *c.keys);
	if (!c.dctx || !c.cx || !c.keys) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = cbi_chain_scan(dir, &pts, &n, err)))
		goto end;
	if (S_ISDIR(st.st_mode)) {
		if ((rc = check_dir_files(&c, dir, pts, n))) {
			rc = cbi_err(err, rc, "unable to read directory '%s': %s", dir, cbi_errtext(rc));
			goto end;
		}
		for (size_t i = 0; i < n; i++) {
			cbi_error e;
			free(chain);
			chain = NULL;
			if (cbi_chain_resolve(pts, n, i, &chain, &e)) {
				problem(&c, pts[i].index_file, -1, "%s", e.msg);
				continue;
			}
			if ((rc = verify_point(&c, pts, chain, pts[i].seq)))
				goto end;
		}
		check_state(&c, pts, n, -1);
	} else {
		cbi_point me;
		int kind = 0;
		memset(&me, 0, sizeof me);
		if ((rc = cbi_point_read_file(path, &me, &kind, err))) {
			if (cbi_is_damage(rc)) {
				problem(&c, path, -1, "%s", err ? err->msg : cbi_errtext(rc));
				rc = 0;
			}
			goto end;
		}
		long i = -1;
		for (size_t k = 0; k < n; k++)
			if (!memcmp(pts[k].point_id, me.point_id, 16) &&
			    !memcmp(pts[k].index_digest, me.index_digest, 32))
				i = (long)k;
		if (i < 0) {
			problem(&c, path, -1, "no matching index file in '%s'", dir);
			goto end;
		}
		cbi_error e;
		if (cbi_chain_resolve(pts, n, (size_t)i, &chain, &e)) {
			problem(&c, pts[i].index_file, -1, "%s", e.msg);
			goto end;
		}
		for (uint32_t s = 0; s <= pts[i].seq; s++)
			if ((rc = verify_point(&c, pts, chain, s)))
				goto end;
		check_state(&c, pts, n, i);
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
	free(chain);
	free(pts);
	free(c.scratch);
	free(c.blk);
	ZSTD_freeDCtx(c.dctx);
	cbi_cx_free(c.cx);
	if (c.keys) {
		OPENSSL_cleanse(c.keys, MAX_CHAINS * sizeof *c.keys);
		free(c.keys);
	}
	return rc;
}
