/* chain.c - points: reading one point file, pairing indexes with images,
 * linking points into chains, naming their files. Directories are scanned
 * by dest.c, chains opened and trusted by chainrd.c. */
#define _GNU_SOURCE
#include "chain.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

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
	p->rescue = (h->flags & CBI_HDR_BAD_RANGES) != 0;
	p->hash_alg = h->hash_alg;
	p->merged = (h->flags & CBI_HDR_MERGED) != 0;
	p->first_seq = h->seq;
}

void cbi_point_from_index(cbi_point *p, const cbi_index *x)
{
	cbi_point_from_hdr(p, &x->hdr);
	memcpy(p->index_digest, x->trl.digest, 32);
	p->changed_blocks = x->trl.changed_blocks;
	p->zero_blocks = x->trl.zero_blocks;
	p->stored_blocks = x->trl.stored_blocks;
	p->stored_bytes = x->trl.image_size;
	p->index_bytes = x->trl.file_size;
	p->bad_bytes = x->bad.bytes;
	p->bad_ranges = x->bad.n;
	cbi_strlcpy(p->index_file, x->f->path, sizeof p->index_file);
}

/* The header of a file that does not open as a sealed file (too short, a
 * segment missing): read straight from its first bytes, so that a caller
 * can still tell whose file it is. */
static void header_only(const char *path, cbi_point *p, int *kind)
{
	uint8_t b[CBI_HDR_SIZE];
	cbi_hdr h;
	int fd = cbi_open_regular(path, 0, NULL);
	if (fd < 0)
		return;
	if (!cbi_pread_full(fd, b, sizeof b, 0) && !cbi_hdr_decode(b, &h)) {
		cbi_point_from_hdr(p, &h);
		*kind = h.kind;
	}
	close(fd);
}

uint32_t cbi_point_index_version(const char *index_path)
{
	uint8_t b[CBI_HDR_SIZE];
	cbi_hdr h;
	uint32_t v = 0;
	int fd = cbi_open_regular(index_path, 0, NULL);
	if (fd < 0)
		return 0;
	if (!cbi_pread_full(fd, b, sizeof b, 0) && !cbi_hdr_decode(b, &h) && h.kind == CBI_KIND_INDEX)
		v = h.version;
	close(fd);
	return v;
}

int cbi_point_read(const char *path, cbi_point *p, int *kind, uint32_t *nseg, cbi_error *err)
{
	uint8_t b[CBI_HDR_SIZE];
	cbi_hdr h;
	cbi_sfr *f = NULL;
	*kind = 0;
	if (nseg)
		*nseg = 0;
	int rc = cbi_sfr_open(path, &f, err);
	if (rc) {
		header_only(path, p, kind);
		return rc;
	}
	/* The file is opened once: its header says which reader takes it (both
	 * make the full structural checks, so that anything a scan accepts can
	 * also be opened for reading). */
	if ((rc = cbi_sfr_pread(f, b, sizeof b, 0))) {
		cbi_err(err, rc, "unable to read '%s': %s", path, cbi_strerror(rc));
		cbi_sfr_close(f);
		return rc;
	}
	if (!cbi_hdr_decode(b, &h)) {
		cbi_point_from_hdr(p, &h);
		*kind = h.kind;
	}
	uint32_t ns = f->nseg;
	if (!memcmp(b, CBI_MAGIC_INDEX, 8)) {
		cbi_index *x = NULL;
		if ((rc = cbi_index_open_sfr(f, &x, err)))
			return rc;
		cbi_point_from_index(p, x);
		cbi_index_close(x);
	} else {
		cbi_image *m = NULL;
		if ((rc = cbi_image_open_sfr(f, &m, err)))
			return rc;
		cbi_point_from_hdr(p, &m->hdr);
		/* An image names the index it belongs to by the index digest. */
		memcpy(p->index_digest, m->trl.index_digest, 32);
		p->changed_blocks = m->trl.changed_blocks;
		p->stored_blocks = m->trl.record_count;
		p->stored_bytes = m->trl.file_size;
		cbi_strlcpy(p->file, path, sizeof p->file);
		cbi_image_close(m);
	}
	if (nseg)
		*nseg = ns;
	return 0;
}

int cbi_point_read_file(const char *path, cbi_point *p, int *kind, cbi_error *err)
{
	return cbi_point_read(path, p, kind, NULL, err);
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
	/* Images: of those with the same id and digest, the one that covers
	 * the most (format/SPEC.md, "Merged points"): a merged image whose
	 * parent is here (or that is a synthetic full), the lowest first seq
	 * first, then the point's own image; the lowest-sorting name among
	 * equals. */
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
		long best = -1;
		uint32_t best_first = 0;
		for (size_t j = lo; j < ni && !ref_key(&imgs[im[j]], &pts[i]); j++) {
			const cbi_image_ref *r = &imgs[im[j]];
			uint32_t first = pts[i].seq;
			if (r->merged && pts[i].type == CBI_INCREMENTAL) {
				long par = -1;
				if (cbi_is_zero(r->parent_id, 16) && cbi_is_zero(r->parent_digest, 32)) {
					first = 0;
				} else {
					for (size_t k = 0; k < n && par < 0; k++)
						if (!memcmp(pts[k].point_id, r->parent_id, 16) &&
						    !memcmp(pts[k].index_digest, r->parent_digest, 32))
							par = (long)k;
					if (par < 0 || pts[par].seq >= pts[i].seq)
						continue; /* its parent is gone: not usable */
					first = pts[par].seq + 1;
				}
			} else if (r->merged) {
				continue;
			}
			if (best < 0 || first < best_first) {
				best = (long)j;
				best_first = first;
			}
		}
		if (best >= 0) {
			const cbi_image_ref *r = &imgs[im[best]];
			cbi_strlcpy(pts[i].file, r->path, sizeof pts[i].file);
			pts[i].stored_bytes = r->size;
			pts[i].has_image = 1;
			if (r->merged) {
				pts[i].merged = 1;
				pts[i].first_seq = best_first;
				memcpy(pts[i].parent_id, r->parent_id, 16);
				memcpy(pts[i].parent_digest, r->parent_digest, 32);
			}
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

uint32_t cbi_point_first_seq(const cbi_point *p)
{
	return p->type == CBI_FULL ? 0 : p->merged ? p->first_seq : p->seq;
}

int cbi_point_has_parent(const cbi_point *p)
{
	return p->type == CBI_INCREMENTAL && !(p->merged && p->first_seq == 0);
}

int cbi_chain_resolve(const cbi_point *pts, size_t n, size_t tip, size_t **out, cbi_error *err)
{
	uint32_t len = pts[tip].seq + 1;
	size_t *v = calloc(len, sizeof *v);
	if (!v)
		return cbi_err(err, -ENOMEM, "out of memory");
	size_t cur = tip;
	for (;;) {
		/* a merged point covers the seqs of the points it replaced */
		uint32_t first = cbi_point_first_seq(&pts[cur]);
		for (uint32_t s = first; s <= pts[cur].seq; s++)
			v[s] = cur;
		if (!cbi_point_has_parent(&pts[cur]))
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
				       first - 1, pts[cur].index_file);
		}
		const cbi_point *pp = &pts[par];
		if (pp->seq + 1 != first || memcmp(pp->chain_id, pts[cur].chain_id, 16) ||
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

static int by_link_key(const void *a, const void *b, void *ctx)
{
	const cbi_point *x = (const cbi_point *)ctx + *(const size_t *)a;
	const cbi_point *y = (const cbi_point *)ctx + *(const size_t *)b;
	return pair_key(x, y);
}

int cbi_chain_mark_broken(cbi_point *pts, size_t n)
{
	size_t *ord = malloc((n ? n : 1) * sizeof *ord);
	uint8_t *st = calloc(n ? n : 1, 1); /* 0 unknown, 1 fine, 2 broken, 3 on the walk */
	size_t *walk = malloc((n ? n : 1) * sizeof *walk);
	if (!ord || !st || !walk) {
		free(ord);
		free(st);
		free(walk);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		ord[i] = i;
	qsort_r(ord, n, sizeof *ord, by_link_key, pts);
	for (size_t i = 0; i < n; i++) {
		size_t nw = 0, cur = i;
		uint8_t verdict = 0;
		while (!verdict) {
			if (st[cur] == 1 || st[cur] == 2) {
				verdict = st[cur];
				break;
			}
			if (st[cur] == 3) { /* a cycle of links: forged */
				verdict = 2;
				break;
			}
			st[cur] = 3;
			walk[nw++] = cur;
			const cbi_point *p = &pts[cur];
			if (!cbi_point_has_parent(p)) {
				verdict = 1;
				break;
			}
			size_t lo = 0, hi = n;
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				const cbi_point *q = &pts[ord[mid]];
				int c = memcmp(q->point_id, p->parent_id, 16);
				if (!c)
					c = memcmp(q->index_digest, p->parent_digest, 32);
				if (c < 0)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo >= n || memcmp(pts[ord[lo]].point_id, p->parent_id, 16) ||
			    memcmp(pts[ord[lo]].index_digest, p->parent_digest, 32) ||
			    pts[ord[lo]].seq >= p->seq) {
				verdict = 2;
				break;
			}
			cur = ord[lo];
		}
		for (size_t k = 0; k < nw; k++)
			st[walk[k]] = verdict;
	}
	for (size_t i = 0; i < n; i++)
		pts[i].broken = st[i] == 2;
	free(ord);
	free(st);
	free(walk);
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
