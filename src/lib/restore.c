/* restore.c - cbi_restore(): write a disk exactly as it was at a point.
 * Every block is checked against the point's index before it is written. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "state.h"
#include "source.h"
#include "util.h"

#define WBUF (4u << 20)

/* A resolved point: its chain and the open files needed to read it. */
typedef struct cbi_resolved {
	cbi_point *pts;
	size_t npts;
	size_t *chain;          /* chain[s] = index into pts of seq s */
	uint32_t len;
	cbi_index *index;       /* index of the requested point */
	cbi_image **imgs;       /* opened lazily, one per seq */
	int encrypted;
	cbi_keys keys;          /* encrypted chain: its keys */
} cbi_resolved;

static void resolved_free(cbi_resolved *v)
{
	if (v->imgs)
		for (uint32_t i = 0; i < v->len; i++)
			cbi_image_close(v->imgs[i]);
	free(v->imgs);
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
				     rc == -CBI_EPASS ? CBI_MSG_OTHER_KEY
						      : "header authentication failed: the file was altered");
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
	if (!v->imgs) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	return 0;
fail:
	resolved_free(v);
	return rc;
}

static int get_image(cbi_resolved *v, uint32_t seq, cbi_image **out, cbi_error *err)
{
	if (seq >= v->len)
		return cbi_err(err, -CBI_EDAMAGED, "index '%s' names a block owner seq %u beyond the chain",
			       v->index->f->path, seq);
	if (!v->imgs[seq]) {
		const cbi_point *p = &v->pts[v->chain[seq]];
		if (!p->has_image)
			return cbi_err(err, -CBI_ENOPARENT,
				       "image file of point seq %u (index '%s') is missing or damaged: "
				       "run 'cbimg verify'", seq, p->index_file);
		int rc = cbi_image_open(p->file, &v->imgs[seq], err);
		if (rc)
			return rc;
		if (v->encrypted && (rc = cbi_image_set_keys(v->imgs[seq], &v->keys)))
			return cbi_err(err, -CBI_EAUTH, "'%s': %s", p->file,
				       rc == -CBI_EPASS ? CBI_MSG_OTHER_KEY
							: "header authentication failed: the file was altered");
		if (memcmp(v->imgs[seq]->hdr.chain_id, v->index->hdr.chain_id, 16) ||
		    v->imgs[seq]->hdr.seq != seq || v->imgs[seq]->hdr.block_size != v->index->hdr.block_size ||
		    v->imgs[seq]->hdr.source_size != v->index->hdr.source_size)
			return cbi_err(err, -CBI_EDAMAGED, "'%s': header does not match the chain", p->file);
	}
	*out = v->imgs[seq];
	return 0;
}

typedef struct wr {
	int fd;
	int is_dev;
	int sparse_new;        /* new file: zero ranges are left as holes */
	uint8_t *buf;
	uint64_t off;          /* target offset of buf[0] */
	size_t used;
	uint64_t zoff, zlen;   /* pending zero range */
	const char *path;
	uint64_t written;
} wr;

static int wr_flush(wr *w, cbi_error *err)
{
	if (w->used) {
		int rc = cbi_pwrite_full(w->fd, w->buf, w->used, w->off);
		if (rc)
			return cbi_err(err, rc, "unable to write '%s' at byte %llu: %s", w->path,
				       (unsigned long long)w->off, cbi_errtext(rc));
		w->written += w->used;
		w->used = 0;
	}
	if (w->zlen) {
		uint64_t o = w->zoff, l = w->zlen;
		w->zlen = 0;
		if (w->sparse_new)
			return 0;
		if (w->is_dev) {
			uint64_t range[2] = { o, l };
			if (ioctl(w->fd, BLKZEROOUT, range) == 0)
				return 0;
		} else if (fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)o, (off_t)l) == 0) {
			return 0;
		}
		/* no zeroing primitive: write zeros */
		memset(w->buf, 0, WBUF);
		while (l) {
			size_t n = (size_t)CBI_MIN(l, (uint64_t)WBUF);
			int rc = cbi_pwrite_full(w->fd, w->buf, n, o);
			if (rc)
				return cbi_err(err, rc, "unable to write '%s' at byte %llu: %s", w->path,
					       (unsigned long long)o, cbi_errtext(rc));
			o += n;
			l -= n;
		}
	}
	return 0;
}

static int wr_data(wr *w, uint64_t off, const uint8_t *d, size_t len, cbi_error *err)
{
	int rc;
	if (w->zlen || (w->used && w->off + w->used != off) || w->used + len > WBUF)
		if ((rc = wr_flush(w, err)))
			return rc;
	if (!w->used)
		w->off = off;
	memcpy(w->buf + w->used, d, len);
	w->used += len;
	return 0;
}

static int wr_zero(wr *w, uint64_t off, uint64_t len, cbi_error *err)
{
	int rc;
	if (w->used || (w->zlen && w->zoff + w->zlen != off))
		if ((rc = wr_flush(w, err)))
			return rc;
	if (!w->zlen)
		w->zoff = off;
	w->zlen += len;
	return 0;
}

static int open_target(const cbi_restore_opts *o, uint64_t size, wr *w, char *tmp, size_t tmpsz,
		       cbi_error *err)
{
	struct stat st;
	tmp[0] = 0;
	w->path = o->target;
	if (stat(o->target, &st) < 0) {
		if (errno != ENOENT)
			return cbi_err(err, -errno, "unable to use target '%s': %s", o->target, strerror(errno));
		if (o->changed_only)
			return cbi_err(err, -ENOENT, "target '%s' does not exist: --changed-only needs the disk to compare with",
				       o->target);
		/* A new file: written under a temporary name, renamed when complete. */
		char dir[4096];
		cbi_dirname(o->target, dir, sizeof dir);
		const char *base = strrchr(o->target, '/');
		base = base ? base + 1 : o->target;
		if ((size_t)snprintf(tmp, tmpsz, "%.2048s/.%.1024s.%ld.tmp", dir, base, (long)getpid()) >= tmpsz)
			return cbi_err(err, -ENAMETOOLONG, "target path too long: '%s'", o->target);
		w->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (w->fd < 0)
			return cbi_err(err, -errno, "unable to create '%s': %s", tmp, strerror(errno));
		w->sparse_new = 1;
		if (ftruncate(w->fd, (off_t)size) < 0) {
			int e = errno;
			return cbi_err(err, -e, "unable to size '%s': %s", tmp, strerror(e));
		}
		return 0;
	}
	if (S_ISBLK(st.st_mode)) {
		char mnt[1024];
		if (cbi_dev_mounted(st.st_rdev, mnt, sizeof mnt))
			return cbi_err(err, -CBI_EMOUNTED, "target '%s' is mounted on '%s': unmount it first",
				       o->target, mnt);
		if (!o->force)
			return cbi_err(err, -CBI_EEXISTS,
				       "target '%s' is a device: give --force to overwrite it", o->target);
		w->fd = open(o->target, (o->changed_only ? O_RDWR : O_WRONLY) | O_EXCL | O_CLOEXEC);
		if (w->fd < 0 && errno == EBUSY)
			return cbi_err(err, -CBI_EMOUNTED, "target '%s' is in use (mounted or held open exclusively)",
				       o->target);
		if (w->fd < 0)
			return cbi_err(err, -errno, "unable to open target '%s': %s", o->target, strerror(errno));
		w->is_dev = 1;
		uint64_t dsz = 0;
		if (ioctl(w->fd, BLKGETSIZE64, &dsz) < 0)
			return cbi_err(err, -errno, "unable to get size of '%s': %s", o->target, strerror(errno));
		if (dsz < size)
			return cbi_err(err, -CBI_ETOOSMALL, "target '%s' holds %llu bytes, the image needs %llu",
				       o->target, (unsigned long long)dsz, (unsigned long long)size);
		return 0;
	}
	if (!S_ISREG(st.st_mode))
		return cbi_err(err, -EINVAL, "target '%s' is neither a block device nor a regular file", o->target);
	if (st.st_size > 0 && !o->force)
		return cbi_err(err, -CBI_EEXISTS, "target '%s' exists: give --force to overwrite it", o->target);
	w->fd = open(o->target, (o->changed_only ? O_RDWR : O_WRONLY) | O_CLOEXEC);
	if (w->fd < 0)
		return cbi_err(err, -errno, "unable to open target '%s': %s", o->target, strerror(errno));
	if ((uint64_t)st.st_size != size && ftruncate(w->fd, (off_t)size) < 0)
		return cbi_err(err, -errno, "unable to size '%s': %s", o->target, strerror(errno));
	return 0;
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
	uint32_t bs = h->block_size;
	char tmp[4096] = "";
	wr w = { .fd = -1 };
	ZSTD_DCtx *dctx = ZSTD_createDCtx();
	cbi_cx *cx = cbi_cx_new();
	uint8_t *scratch = malloc(cbi_image_scratch_size(bs));
	uint8_t *blk = malloc(bs);
	uint8_t *cur = NULL;
	w.buf = malloc(WBUF);
	if (!dctx || !cx || !scratch || !blk || !w.buf) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = open_target(o, h->source_size, &w, tmp, sizeof tmp, err)))
		goto end;
	if (o->changed_only && posix_memalign((void **)&cur, CBI_SOURCE_ALIGN, bs)) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	double last = 0;
	r->blocks_total = h->n_blocks;
	for (uint64_t i = 0; i < h->n_blocks; i++) {
		cbi_idx_ent e;
		if ((rc = cbi_index_get(v.index, i, &e))) {
			rc = cbi_err(err, rc, "unable to read index '%s': %s", v.index->f->path, cbi_errtext(rc));
			goto end;
		}
		uint32_t len = cbi_block_len(h->source_size, bs, i);
		uint64_t off = i * bs;
		if (o->changed_only) {
			if ((rc = cbi_pread_full(w.fd, cur, len, off))) {
				rc = cbi_err(err, rc, "unable to read target '%s' at byte %llu: %s", o->target,
					     (unsigned long long)off, cbi_errtext(rc));
				goto end;
			}
			int same;
			if (e.flags & CBI_IDX_ZERO) {
				same = cbi_is_zero(cur, len);
			} else {
				uint8_t hh[16];
				same = !cbi_hash_block_spec(&v.index->hs, cx, cur, len, hh) && !memcmp(hh, e.hash, 16);
			}
			if (same) {
				r->blocks_skipped++;
				continue;
			}
		}
		if (e.flags & CBI_IDX_ZERO) {
			if ((rc = wr_zero(&w, off, len, err)))
				goto end;
			if (w.sparse_new)
				r->blocks_skipped++;
			else
				r->blocks_written++;
		} else {
			cbi_image *img = NULL;
			cbi_tab_ent te;
			const char *why = NULL;
			if ((rc = get_image(&v, e.owner, &img, err)))
				goto end;
			rc = cbi_image_find(img, i, &te);
			if (rc == -ENOENT) {
				rc = cbi_err(err, -CBI_EDAMAGED, "'%s': block %llu: missing from the image",
					     img->f->path, (unsigned long long)i);
				goto end;
			}
			if (!rc)
				rc = cbi_image_read_block(img, &te, dctx, cx, scratch, blk, e.hash, &why);
			if (rc < 0) {
				rc = cbi_err(err, rc, "'%s': block %llu: %s", img->f->path, (unsigned long long)i,
					     why ? why : cbi_errtext(rc));
				goto end;
			}
			if ((rc = wr_data(&w, off, blk, len, err)))
				goto end;
			r->blocks_written++;
		}
		if (o->progress) {
			double now = cbi_now();
			if (now - last >= 0.2) {
				last = now;
				if (o->progress(o->progress_ud, off + len, h->source_size)) {
					rc = cbi_err(err, -ECANCELED, "interrupted");
					goto end;
				}
			}
		}
	}
	if ((rc = wr_flush(&w, err)))
		goto end;
	if (fsync(w.fd) < 0) {
		rc = cbi_err(err, -errno, "unable to sync '%s': %s", o->target, strerror(errno));
		goto end;
	}
	if (tmp[0]) {
		if (rename(tmp, o->target) < 0) {
			rc = cbi_err(err, -errno, "unable to rename '%s' to '%s': %s", tmp, o->target,
				     strerror(errno));
			goto end;
		}
		tmp[0] = 0;
		char dir[4096];
		cbi_dirname(o->target, dir, sizeof dir);
		cbi_fsync_dir(dir);
	}
	if (o->progress)
		o->progress(o->progress_ud, h->source_size, h->source_size);
	r->bytes_written = w.written;
end:
	if (w.fd >= 0)
		close(w.fd);
	if (tmp[0])
		unlink(tmp);
	free(w.buf);
	free(cur);
	free(blk);
	free(scratch);
	ZSTD_freeDCtx(dctx);
	cbi_cx_free(cx);
	resolved_free(&v);
	r->seconds = cbi_now() - t0;
	return rc;
}
