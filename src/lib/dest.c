/* dest.c - the one scanner of a destination directory (dest.h). */
#define _GNU_SOURCE
#include "dest.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "job.h"
#include "runlog.h"
#include "sfile.h"
#include "util.h"

int cbi_chain_is_point_name(const char *name)
{
	return name[0] != '.' && (cbi_has_ext(name, ".cbx") || cbi_has_ext(name, ".cbi"));
}

int cbi_dest_classify(const char *name, size_t *base_len, uint64_t *seg)
{
	size_t bl;
	uint64_t k;
	if (cbi_chain_is_point_name(name))
		return CBI_DENT_POINT;
	if (name[0] != '.' && cbi_has_ext(name, ".cbk"))
		return CBI_DENT_KEY;
	if (cbi_job_is_lock_name(name))
		return CBI_DENT_LOCK;
	if (name[0] == '.' && cbi_has_ext(name, ".tmp"))
		return CBI_DENT_TEMP;
	if (!strncmp(name, CBI_CATALOG_NAME, strlen(CBI_CATALOG_NAME)) || !strcmp(name, CBI_RUNLOG_NAME))
		return CBI_DENT_CATALOG;
	/* Segment k >= 1 of a split file NAME is NAME.NNN (format/SPEC.md,
	 * "Segments"): only point files are split. */
	if (cbi_sfile_segment_parse(name, &bl, &k) && bl < 4096) {
		char base[4096];
		memcpy(base, name, bl);
		base[bl] = 0;
		if (cbi_chain_is_point_name(base)) {
			if (base_len)
				*base_len = bl;
			if (seg)
				*seg = k;
			return CBI_DENT_SEGMENT;
		}
	}
	return CBI_DENT_FOREIGN;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const cbi_dent *)a)->name, ((const cbi_dent *)b)->name);
}

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

void cbi_dest_free(cbi_dest *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++) {
		free(d->e[i].name);
		free(d->e[i].pt);
		free(d->e[i].key);
	}
	free(d->e);
	free(d);
}

int cbi_dest_path(const cbi_dest *d, const cbi_dent *e, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s/%s", d->dir, e->name);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

const cbi_dent *cbi_dest_find(const cbi_dest *d, const char *name)
{
	cbi_dent k = { .name = (char *)name };
	return d->n ? bsearch(&k, d->e, d->n, sizeof *d->e, by_name) : NULL;
}

/* Read what entry e says (flags: CBI_DEST_READ, CBI_DEST_KEYS). */
static int read_entry(cbi_dest *d, cbi_dent *e, unsigned flags)
{
	char path[4096];
	cbi_error er;
	int too_long = cbi_dest_path(d, e, path, sizeof path);
	/* Point and key files are never links, FIFOs or devices: anything but a
	 * regular file is an entry that says why (and a FIFO is never opened). */
	struct stat st;
	const char *odd = NULL;
	if (!too_long && (e->kind == CBI_DENT_POINT || e->kind == CBI_DENT_KEY) && lstat(path, &st) == 0 &&
	    !S_ISREG(st.st_mode))
		odd = S_ISLNK(st.st_mode) ? "a symbolic link (never followed)" : "not a regular file";
	if (e->kind == CBI_DENT_POINT && (flags & CBI_DEST_READ)) {
		if (!(e->pt = calloc(1, sizeof *e->pt)))
			return -ENOMEM;
		memset(&er, 0, sizeof er);
		if (too_long)
			e->pt->rc = cbi_err(&er, -ENAMETOOLONG, "path too long: '%s/%s'", d->dir, e->name);
		else if (odd)
			e->pt->rc = cbi_err(&er, -EINVAL, "'%s' is %s", path, odd);
		else
			e->pt->rc = cbi_point_read(path, &e->pt->p, &e->pt->kind, &e->pt->nseg, &er);
		if (e->pt->rc)
			cbi_strlcpy(e->pt->msg, er.msg[0] ? er.msg : cbi_strerror(e->pt->rc), sizeof e->pt->msg);
	} else if (e->kind == CBI_DENT_KEY && (flags & CBI_DEST_KEYS)) {
		if (!(e->key = calloc(1, sizeof *e->key)))
			return -ENOMEM;
		memset(&er, 0, sizeof er);
		if (too_long)
			e->key->rc = cbi_err(&er, -ENAMETOOLONG, "path too long: '%s/%s'", d->dir, e->name);
		else if (odd)
			e->key->rc = cbi_err(&er, -EINVAL, "'%s' is %s", path, odd);
		else
			e->key->rc = cbi_keyfile_read(path, &e->key->kf, &er);
		if (e->key->rc)
			cbi_strlcpy(e->key->msg, er.msg[0] ? er.msg : cbi_strerror(e->key->rc), sizeof e->key->msg);
	}
	return 0;
}

int cbi_dest_scan(const char *dir, unsigned flags, cbi_dest **out, cbi_error *err)
{
	*out = NULL;
	cbi_dest *d = calloc(1, sizeof *d);
	if (!d)
		return cbi_err(err, -ENOMEM, "out of memory");
	cbi_strlcpy(d->dir, dir, sizeof d->dir);
	DIR *dh = opendir(dir);
	if (!dh) {
		int e = errno;
		if (e == ENOENT && (flags & CBI_DEST_MISSING_OK)) {
			*out = d; /* no entries */
			return 0;
		}
		free(d);
		return cbi_err(err, -e, "unable to open directory '%s': %s", dir, strerror(e));
	}
	size_t cap = 0;
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(dh))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (d->n == cap) {
			size_t nc = cap ? cap * 2 : 64;
			cbi_dent *t = realloc(d->e, nc * sizeof *t);
			if (!t) {
				rc = -ENOMEM;
				break;
			}
			d->e = t;
			cap = nc;
		}
		cbi_dent *e = &d->e[d->n];
		memset(e, 0, sizeof *e);
		if (!(e->name = strdup(de->d_name))) {
			rc = -ENOMEM;
			break;
		}
		d->n++;
		e->kind = cbi_dest_classify(e->name, &e->base_len, &e->seg);
		struct stat st;
		if ((flags & CBI_DEST_STAT) && (e->kind == CBI_DENT_POINT || e->kind == CBI_DENT_SEGMENT) &&
		    fstatat(dirfd(dh), e->name, &st, 0) == 0) {
			e->has_stat = 1;
			e->size = (uint64_t)st.st_size;
			e->mtime_ns = mtime_ns(&st);
			e->ino = (uint64_t)st.st_ino;
		}
	}
	closedir(dh);
	if (!rc && d->n)
		qsort(d->e, d->n, sizeof *d->e, by_name);
	for (size_t i = 0; !rc && i < d->n; i++)
		rc = read_entry(d, &d->e[i], flags);
	if (rc) {
		cbi_dest_free(d);
		return cbi_err(err, rc, "out of memory");
	}
	*out = d;
	return 0;
}

int cbi_dest_points(const cbi_dest *d, cbi_point **out, size_t *nout, cbi_error *err)
{
	size_t n = 0, ni = 0;
	for (size_t i = 0; i < d->n; i++)
		if (d->e[i].pt && !d->e[i].pt->rc) {
			n += d->e[i].pt->kind == CBI_KIND_INDEX;
			ni += d->e[i].pt->kind == CBI_KIND_IMAGE;
		}
	cbi_point *pts = malloc((n ? n : 1) * sizeof *pts);
	cbi_image_ref *refs = malloc((ni ? ni : 1) * sizeof *refs);
	if (!pts || !refs) {
		free(pts);
		free(refs);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	n = ni = 0;
	for (size_t i = 0; i < d->n; i++) {
		const cbi_dent_point *t = d->e[i].pt;
		if (!t || t->rc)
			continue; /* damaged or unfinished: not a point (verify reports it) */
		if (t->kind == CBI_KIND_INDEX) {
			pts[n++] = t->p;
		} else {
			cbi_image_ref *r = &refs[ni++];
			memcpy(r->point_id, t->p.point_id, 16);
			memcpy(r->index_digest, t->p.index_digest, 32);
			r->size = t->p.stored_bytes;
			r->path = t->p.file;
			r->merged = t->p.merged;
			memcpy(r->parent_id, t->p.parent_id, 16);
			memcpy(r->parent_digest, t->p.parent_digest, 32);
		}
	}
	int rc = cbi_chain_pair(pts, &n, refs, ni, err);
	free(refs);
	if (!rc && cbi_chain_mark_broken(pts, n))
		rc = cbi_err(err, -ENOMEM, "out of memory");
	if (rc) {
		free(pts);
		return rc;
	}
	*out = pts;
	*nout = n;
	return 0;
}

int cbi_chain_scan(const char *dir, cbi_point **out, size_t *n, cbi_error *err)
{
	cbi_dest *d = NULL;
	int rc = cbi_dest_scan(dir, CBI_DEST_READ, &d, err);
	if (!rc)
		rc = cbi_dest_points(d, out, n, err);
	cbi_dest_free(d);
	return rc;
}

int cbi_point_info(const char *file, cbi_point *out, cbi_error *err)
{
	memset(out, 0, sizeof *out);
	int kind = 0;
	int rc = cbi_point_read_file(file, out, &kind, err);
	if (rc)
		return rc;
	char dir[4096];
	cbi_dirname(file, dir, sizeof dir);
	cbi_point *pts = NULL;
	size_t n = 0;
	if (cbi_chain_scan(dir, &pts, &n, NULL) == 0) {
		long i = cbi_chain_find_id(pts, n, out->point_id);
		if (i >= 0 && !memcmp(pts[i].index_digest, out->index_digest, 32)) {
			*out = pts[i];
			if (kind == CBI_KIND_IMAGE)
				cbi_strlcpy(out->file, file, sizeof out->file);
			else
				cbi_strlcpy(out->index_file, file, sizeof out->index_file);
		}
	}
	free(pts);
	if (out->index_file[0])
		out->index_version = cbi_point_index_version(out->index_file);
	return 0;
}
