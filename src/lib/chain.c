/* chain.c - directory scanning, chain resolution, point naming, info/list. */
#define _GNU_SOURCE
#include "chain.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "image.h"
#include "index.h"
#include "util.h"

void cbi_point_from_hdr(cbi_point *p, const cbi_hdr *h)
{
	memcpy(p->chain_id, h->chain_id, 16);
	memcpy(p->point_id, h->point_id, 16);
	memcpy(p->parent_id, h->parent_id, 16);
	memcpy(p->parent_digest, h->parent_digest, 32);
	p->seq = h->seq;
	p->type = (int)h->type;
	p->block_size = h->block_size;
	p->source_size = h->source_size;
	p->n_blocks = h->n_blocks;
	p->segment_size = (uint64_t)h->segment_mib << 20;
	p->created_ns = h->created_ns;
	memcpy(p->job, h->job, sizeof p->job);
	memcpy(p->host, h->host, sizeof p->host);
	memcpy(p->source_id, h->source_id, sizeof p->source_id);
	memcpy(p->source_path, h->source_path, sizeof p->source_path);
	p->encrypted = (h->flags & CBI_HDR_ENCRYPTED) != 0;
	p->used_only = (h->flags & CBI_HDR_USED_ONLY) != 0;
	p->hash_alg = h->hash_alg;
}

int cbi_point_read_file(const char *path, cbi_point *p, int *kind, cbi_error *err)
{
	/* Peek at the magic, then open with the full structural checks, so that
	 * anything the scan accepts can also be opened for reading. */
	uint8_t magic[8];
	cbi_sfr *f = NULL;
	int rc = cbi_sfr_open(path, &f, err);
	if (rc)
		return rc;
	rc = cbi_sfr_pread(f, magic, sizeof magic, 0);
	cbi_sfr_close(f);
	if (rc)
		return cbi_err(err, rc, "unable to read '%s': %s", path, cbi_errtext(rc));
	if (!memcmp(magic, CBI_MAGIC_INDEX, 8)) {
		cbi_index *x = NULL;
		if ((rc = cbi_index_open(path, &x, err)))
			return rc;
		*kind = CBI_KIND_INDEX;
		cbi_point_from_hdr(p, &x->hdr);
		memcpy(p->index_digest, x->trl.digest, 32);
		p->changed_blocks = x->trl.changed_blocks;
		p->zero_blocks = x->trl.zero_blocks;
		p->stored_blocks = x->trl.stored_blocks;
		p->stored_bytes = x->trl.image_size;
		p->index_bytes = x->trl.file_size;
		cbi_strlcpy(p->index_file, path, sizeof p->index_file);
		cbi_index_close(x);
		return 0;
	}
	cbi_image *m = NULL;
	if ((rc = cbi_image_open(path, &m, err)))
		return rc;
	*kind = CBI_KIND_IMAGE;
	cbi_point_from_hdr(p, &m->hdr);
	/* An image names the index it belongs to by the index digest. */
	memcpy(p->index_digest, m->trl.index_digest, 32);
	p->changed_blocks = m->trl.changed_blocks;
	p->stored_blocks = m->trl.record_count;
	p->stored_bytes = m->trl.file_size;
	cbi_strlcpy(p->file, path, sizeof p->file);
	cbi_image_close(m);
	return 0;
}


static int point_cmp(const void *a, const void *b)
{
	const cbi_point *x = a, *y = b;
	int c = strcmp(x->host, y->host);
	if (!c)
		c = strcmp(x->job, y->job);
	if (!c)
		c = strcmp(x->source_id, y->source_id);
	if (!c)
		c = memcmp(x->chain_id, y->chain_id, 16);
	if (!c)
		c = (x->seq > y->seq) - (x->seq < y->seq);
	if (!c)
		c = (x->created_ns > y->created_ns) - (x->created_ns < y->created_ns);
	return c;
}

int cbi_chain_is_point_name(const char *name)
{
	return name[0] != '.' && (cbi_has_ext(name, ".cbx") || cbi_has_ext(name, ".cbi"));
}

/* Sort keys for cbi_chain_pair(): arrays of indexes into a cbi_point array
 * (the qsort_r context), so that the big structs are moved only once. */
static int pair_key(const cbi_point *x, const cbi_point *y)
{
	int c = memcmp(x->point_id, y->point_id, 16);
	return c ? c : memcmp(x->index_digest, y->index_digest, 32);
}

static int ref_key(const cbi_image_ref *x, const cbi_point *y)
{
	int c = memcmp(x->point_id, y->point_id, 16);
	return c ? c : memcmp(x->index_digest, y->index_digest, 32);
}

static int by_index_key(const void *a, const void *b, void *ctx)
{
	const cbi_point *x = (const cbi_point *)ctx + *(const size_t *)a;
	const cbi_point *y = (const cbi_point *)ctx + *(const size_t *)b;
	int c = pair_key(x, y);
	return c ? c : strcmp(x->index_file, y->index_file);
}

static int by_image_key(const void *a, const void *b, void *ctx)
{
	const cbi_image_ref *x = (const cbi_image_ref *)ctx + *(const size_t *)a;
	const cbi_image_ref *y = (const cbi_image_ref *)ctx + *(const size_t *)b;
	int c = memcmp(x->point_id, y->point_id, 16);
	if (!c)
		c = memcmp(x->index_digest, y->index_digest, 32);
	return c ? c : strcmp(x->path, y->path);
}

static int by_listing_order(const void *a, const void *b, void *ctx)
{
	const cbi_point *x = (const cbi_point *)ctx + *(const size_t *)a;
	const cbi_point *y = (const cbi_point *)ctx + *(const size_t *)b;
	int c = point_cmp(x, y);
	return c ? c : strcmp(x->index_file, y->index_file);
}

int cbi_chain_pair(cbi_point *pts, size_t *np, const cbi_image_ref *imgs, size_t ni, cbi_error *err)
{
	size_t n = *np, *ord = malloc((n + ni + 1) * sizeof *ord);
	if (!ord)
		return cbi_err(err, -ENOMEM, "out of memory");
	size_t *im = ord + n;
	/* Duplicates: the same index under several names counts once. */
	for (size_t i = 0; i < n; i++)
		ord[i] = i;
	qsort_r(ord, n, sizeof *ord, by_index_key, pts);
	for (size_t k = 1; k < n; k++)
		if (!pair_key(&pts[ord[k - 1]], &pts[ord[k]]))
			pts[ord[k]].index_file[0] = 0; /* dropped below */
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		if (pts[i].index_file[0]) {
			if (w != i)
				pts[w] = pts[i];
			w++;
		}
	n = w;
	/* Images: the lowest-sorting image of the same id and digest. */
	for (size_t j = 0; j < ni; j++)
		im[j] = j;
	qsort_r(im, ni, sizeof *im, by_image_key, (void *)imgs);
	for (size_t i = 0; i < n; i++) {
		size_t lo = 0, hi = ni;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (ref_key(&imgs[im[mid]], &pts[i]) < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < ni && !ref_key(&imgs[im[lo]], &pts[i])) {
			cbi_strlcpy(pts[i].file, imgs[im[lo]].path, sizeof pts[i].file);
			pts[i].stored_bytes = imgs[im[lo]].size;
			pts[i].has_image = 1;
		}
	}
	/* Listing order, applied in place by following the permutation's cycles. */
	for (size_t i = 0; i < n; i++)
		ord[i] = i;
	qsort_r(ord, n, sizeof *ord, by_listing_order, pts);
	for (size_t i = 0; i < n; i++) {
		if (ord[i] == SIZE_MAX || ord[i] == i)
			continue;
		cbi_point tmp = pts[i];
		size_t j = i;
		for (;;) {
			size_t from = ord[j];
			ord[j] = SIZE_MAX;
			if (from == i) {
				pts[j] = tmp;
				break;
			}
			pts[j] = pts[from];
			j = from;
		}
	}
	free(ord);
	*np = n;
	return 0;
}

long cbi_chain_find_id(const cbi_point *pts, size_t n, const uint8_t id[16])
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(pts[i].point_id, id, 16))
			return (long)i;
	return -1;
}

int cbi_chain_scan(const char *dir, cbi_point **out, size_t *nout, cbi_error *err)
{
	DIR *d = opendir(dir);
	if (!d)
		return cbi_err(err, -errno, "unable to open directory '%s': %s", dir, strerror(errno));
	cbi_point *pts = NULL, *imgs = NULL;
	size_t n = 0, cap = 0, ni = 0, capi = 0;
	int rc = 0;
	struct dirent *de;
	char path[4096];
	while ((de = readdir(d))) {
		if (!cbi_chain_is_point_name(de->d_name))
			continue; /* temporary files, lock files, other files */
		if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= sizeof path)
			continue;
		cbi_point p;
		memset(&p, 0, sizeof p);
		int kind = 0;
		if (cbi_point_read_file(path, &p, &kind, NULL))
			continue; /* damaged or unfinished: not a point (verify reports it) */
		cbi_point **arr = kind == CBI_KIND_INDEX ? &pts : &imgs;
		size_t *cnt = kind == CBI_KIND_INDEX ? &n : &ni, *cp = kind == CBI_KIND_INDEX ? &cap : &capi;
		if (*cnt == *cp) {
			size_t nc = *cp ? *cp * 2 : 64;
			cbi_point *t = realloc(*arr, nc * sizeof *t);
			if (!t) {
				rc = cbi_err(err, -ENOMEM, "out of memory");
				goto end;
			}
			*arr = t;
			*cp = nc;
		}
		(*arr)[(*cnt)++] = p;
	}
	cbi_image_ref *refs = malloc((ni ? ni : 1) * sizeof *refs);
	if (!refs) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	for (size_t j = 0; j < ni; j++) {
		memcpy(refs[j].point_id, imgs[j].point_id, 16);
		memcpy(refs[j].index_digest, imgs[j].index_digest, 32);
		refs[j].size = imgs[j].stored_bytes;
		refs[j].path = imgs[j].file;
	}
	rc = cbi_chain_pair(pts, &n, refs, ni, err);
	free(refs);
end:
	closedir(d);
	free(imgs);
	if (rc) {
		free(pts);
		return rc;
	}
	*out = pts;
	*nout = n;
	return 0;
}

int cbi_chain_resolve(const cbi_point *pts, size_t n, size_t tip, size_t **out, cbi_error *err)
{
	uint32_t len = pts[tip].seq + 1;
	size_t *v = calloc(len, sizeof *v);
	if (!v)
		return cbi_err(err, -ENOMEM, "out of memory");
	size_t cur = tip;
	for (;;) {
		v[pts[cur].seq] = cur;
		if (pts[cur].type == CBI_FULL)
			break;
		long par = -1;
		for (size_t i = 0; i < n; i++)
			if (!memcmp(pts[i].point_id, pts[cur].parent_id, 16) &&
			    !memcmp(pts[i].index_digest, pts[cur].parent_digest, 32)) {
				par = (long)i;
				break;
			}
		char id[33];
		cbi_id_hex(pts[cur].parent_id, id);
		if (par < 0) {
			free(v);
			return cbi_err(err, -CBI_ENOPARENT,
				       "parent %s (seq %u) of '%s' not found: the chain is incomplete", id,
				       pts[cur].seq - 1, pts[cur].index_file);
		}
		const cbi_point *pp = &pts[par];
		if (pp->seq + 1 != pts[cur].seq || memcmp(pp->chain_id, pts[cur].chain_id, 16) ||
		    pp->block_size != pts[cur].block_size || pp->source_size != pts[cur].source_size) {
			free(v);
			return cbi_err(err, -CBI_EDAMAGED, "parent %s of '%s' does not fit the chain", id,
				       pts[cur].index_file);
		}
		/* Every point of a chain is encrypted, or none is (format/SPEC.md,
		 * "Chain rules"): a plain point on an encrypted chain is a forgery
		 * that could otherwise be restored without authentication, or
		 * continued in clear. */
		if (pp->encrypted != pts[cur].encrypted || pp->hash_alg != pts[cur].hash_alg) {
			free(v);
			if (pp->hash_alg != pts[cur].hash_alg && pp->encrypted == pts[cur].encrypted)
				return cbi_err(err, -CBI_EAUTH,
					       "'%s' uses another block hash than its parent %s: the point was "
					       "forged or altered",
					       pts[cur].index_file, id);
			return cbi_err(err, -CBI_EAUTH,
				       "'%s' is %s but its parent %s is %s: the point was forged or altered",
				       pts[cur].index_file, pts[cur].encrypted ? "encrypted" : "unencrypted", id,
				       pp->encrypted ? "encrypted" : "unencrypted");
		}
		cur = (size_t)par;
	}
	*out = v;
	return 0;
}

void cbi_point_filename(const cbi_hdr *h, const char *ext, char *out, size_t outsz)
{
	char host[33], job[33], src[33], id[33], ts[32];
	cbi_sanitize_name(h->host, host, sizeof host);
	cbi_sanitize_name(h->job, job, sizeof job);
	const char *base = strrchr(h->source_path, '/');
	cbi_sanitize_name(base ? base + 1 : h->source_path, src, sizeof src);
	cbi_id_hex(h->point_id, id);
	id[8] = 0;
	time_t t = (time_t)(h->created_ns / 1000000000LL);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(ts, sizeof ts, "%Y%m%dT%H%M%SZ", &tm);
	snprintf(out, outsz, "%s_%s_%s_%s_%s%04u_%s.%s", host, src, job, ts,
		 h->type == CBI_FULL ? "full" : "incr", h->seq, id, ext);
}

void cbi_id_hex(const uint8_t id[16], char out[33])
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hx[id[i] >> 4];
		out[2 * i + 1] = hx[id[i] & 15];
	}
	out[32] = 0;
}

int cbi_list(const char *dest, cbi_point **out, size_t *n, cbi_error *err)
{
	return cbi_list_filtered(dest, NULL, out, n, err); /* catalog.c */
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
	return 0;
}
