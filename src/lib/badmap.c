/* badmap.c - the bad-range map of a point and rescue reading (badmap.h). */
#define _GNU_SOURCE
#include "badmap.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "util.h"

/* Bad-range map tail (format/SPEC.md, "Bad-range map tail"). */
/* clang-format off */
#define T(name, off, size, type, m) { name, off, size, type, CBI_MEMBER(cbi_badmap_tail, m, size) }
static const cbi_field tail_fields[] = {
	{ "magic", 0, 8, CBI_F_OWN, 0 },
	T("range_count", 8, 8, CBI_F_U64, range_count),
	T("bad_bytes", 16, 8, CBI_F_U64, bad_bytes),
	T("sector_size", 24, 4, CBI_F_U32, sector_size),
	{ "reserved", 28, 4, CBI_F_RESERVED, 0 },
};
#undef T
/* clang-format on */
const cbi_layout cbi_badmap_tail_layout = { "Bad-range map tail", CBI_BADMAP_TAIL_SIZE,
					    sizeof tail_fields / sizeof tail_fields[0], tail_fields };

int cbi_badmap_add(cbi_badmap *m, uint64_t off, uint64_t len)
{
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 16;
		cbi_badrange *r = realloc(m->r, cap * sizeof *r);
		if (!r)
			return -ENOMEM;
		m->r = r;
		m->cap = cap;
	}
	m->r[m->n++] = (cbi_badrange){ off, len };
	m->bytes += len;
	return 0;
}

static int by_off(const void *a, const void *b)
{
	const cbi_badrange *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

void cbi_badmap_normalize(cbi_badmap *m)
{
	if (!m->n)
		return;
	qsort(m->r, m->n, sizeof *m->r, by_off);
	size_t k = 0;
	for (size_t i = 1; i < m->n; i++) {
		cbi_badrange *p = &m->r[k];
		if (m->r[i].off <= p->off + p->len) {
			uint64_t end = CBI_MAX(p->off + p->len, m->r[i].off + m->r[i].len);
			p->len = end - p->off;
		} else {
			m->r[++k] = m->r[i];
		}
	}
	m->n = k + 1;
	m->bytes = 0;
	for (size_t i = 0; i < m->n; i++)
		m->bytes += m->r[i].len;
}

void cbi_badmap_free(cbi_badmap *m)
{
	if (!m)
		return;
	free(m->r);
	m->r = NULL;
	m->n = m->cap = 0;
	m->bytes = 0;
}

int cbi_badmap_find(const cbi_badmap *m, uint64_t off, uint64_t len, cbi_badrange *hit)
{
	if (!m || !m->n || !len)
		return 0;
	/* the first range that ends after off */
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->r[mid].off + m->r[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == m->n || m->r[lo].off >= off + len)
		return 0;
	if (hit)
		*hit = m->r[lo];
	return 1;
}

void cbi_badmap_encode(const cbi_badmap *m, uint8_t *b)
{
	for (size_t i = 0; i < m->n; i++) {
		st64(b + i * CBI_BADMAP_RANGE_SIZE, m->r[i].off);
		st64(b + i * CBI_BADMAP_RANGE_SIZE + 8, m->r[i].len);
	}
	uint8_t *t = b + m->n * CBI_BADMAP_RANGE_SIZE;
	memset(t, 0, CBI_BADMAP_TAIL_SIZE);
	memcpy(t + cbi_layout_field(&cbi_badmap_tail_layout, "magic")->off, CBI_BADMAP_MAGIC, 8);
	cbi_badmap_tail tl = { .range_count = m->n, .bad_bytes = m->bytes, .sector_size = m->sector };
	cbi_layout_encode(&cbi_badmap_tail_layout, &tl, t);
}

int cbi_badmap_tail_decode(const uint8_t *b, uint64_t room, cbi_badmap_tail *t)
{
	if (memcmp(b + cbi_layout_field(&cbi_badmap_tail_layout, "magic")->off, CBI_BADMAP_MAGIC, 8) ||
	    cbi_layout_decode(&cbi_badmap_tail_layout, b, t) || !cbi_layout_reserved_zero(&cbi_badmap_tail_layout, b))
		return -CBI_EDAMAGED;
	uint32_t s = t->sector_size;
	if (s < 512 || s > 65536 || (s & (s - 1)))
		return -CBI_EDAMAGED;
	if (t->range_count > room / CBI_BADMAP_RANGE_SIZE)
		return -CBI_EDAMAGED;
	if ((t->range_count == 0) != (t->bad_bytes == 0))
		return -CBI_EDAMAGED;
	return 0;
}

int cbi_badmap_decode(const uint8_t *b, const cbi_badmap_tail *t, uint64_t source_size, cbi_badmap *m)
{
	cbi_badmap x = { 0 };
	if (t->range_count && !(x.r = malloc((size_t)t->range_count * sizeof *x.r)))
		return -ENOMEM;
	x.cap = x.n = (size_t)t->range_count;
	x.sector = t->sector_size;
	uint64_t end = 0;
	for (size_t i = 0; i < x.n; i++) {
		uint64_t off = ld64(b + i * CBI_BADMAP_RANGE_SIZE), len = ld64(b + i * CBI_BADMAP_RANGE_SIZE + 8);
		/* after the previous one with a gap, non-empty, inside the source
		 * (compared before adding, so nothing wraps) */
		if ((i && off <= end) || !len || off >= source_size || len > source_size - off) {
			free(x.r);
			return -CBI_EDAMAGED;
		}
		x.r[i] = (cbi_badrange){ off, len };
		x.bytes += len;
		end = off + len;
	}
	if (x.bytes != t->bad_bytes) {
		free(x.r);
		return -CBI_EDAMAGED;
	}
	*m = x;
	return 0;
}

int cbi_badmap_read(const cbi_sfr *f, const cbi_hdr *h, cbi_badmap *m, uint64_t *map_bytes, cbi_error *err)
{
	uint8_t tb[CBI_BADMAP_TAIL_SIZE];
	cbi_badmap_tail t;
	uint64_t fixed = CBI_HDR_SIZE + CBI_TRL_SIZE; /* header and trailer */
	if (f->size < fixed + CBI_BADMAP_TAIL_SIZE)
		return cbi_err(err, -CBI_EDAMAGED, "'%s': no room for its bad-range map", f->path);
	uint64_t tail_at = f->size - CBI_TRL_SIZE - CBI_BADMAP_TAIL_SIZE;
	int rc = cbi_sfr_pread(f, tb, sizeof tb, tail_at);
	if (rc)
		return cbi_err(err, rc, "unable to read '%s': %s", f->path, cbi_strerror(rc));
	if (cbi_badmap_tail_decode(tb, tail_at - CBI_HDR_SIZE, &t))
		return cbi_err(err, -CBI_EDAMAGED, "'%s': bad-range map: damaged tail", f->path);
	uint64_t nb = t.range_count * CBI_BADMAP_RANGE_SIZE;
	uint8_t *b = malloc(nb ? (size_t)nb : 1);
	if (!b)
		return cbi_err(err, -ENOMEM, "out of memory");
	if ((rc = nb ? cbi_sfr_pread(f, b, (size_t)nb, tail_at - nb) : 0)) {
		free(b);
		return cbi_err(err, rc, "unable to read '%s': %s", f->path, cbi_strerror(rc));
	}
	rc = cbi_badmap_decode(b, &t, h->source_size, m);
	free(b);
	if (rc == -CBI_EDAMAGED)
		return cbi_err(err, rc, "'%s': bad-range map: ranges unsorted, overlapping, empty or outside "
				   "the source, or not adding up to its byte count", f->path);
	if (rc)
		return cbi_err(err, rc, "out of memory");
	*map_bytes = cbi_badmap_size(t.range_count);
	return 0;
}

void cbi_badmap_describe(const cbi_badmap *m, size_t max, char *out, size_t outsz)
{
	size_t used = 0;
	out[0] = 0;
	for (size_t i = 0; i < m->n && i < max && used < outsz; i++) {
		int k = snprintf(out + used, outsz - used, "%s%" PRIu64 "-%" PRIu64,
				 i ? (i + 1 == m->n && m->n <= max ? " and " : ", ") : "bytes ", m->r[i].off,
				 m->r[i].off + m->r[i].len - 1);
		if (k < 0)
			break;
		used += (size_t)k;
	}
	if (m->n > max && used < outsz)
		snprintf(out + used, outsz - used, " and %zu more range%s", m->n - max, m->n - max == 1 ? "" : "s");
}

/* ------------------------------------------------------------ rescue reads */

int cbi_rescue_init(cbi_rescue *r, uint32_t sector, unsigned retries)
{
	memset(r, 0, sizeof *r);
	if (sector < 512 || (sector & (sector - 1)))
		return -EINVAL;
	r->sector = sector;
	r->map.sector = sector;
	r->retries = retries;
	return -pthread_mutex_init(&r->mu, NULL);
}

void cbi_rescue_free(cbi_rescue *r)
{
	if (!r || !r->sector)
		return;
	cbi_badmap_free(&r->map);
	pthread_mutex_destroy(&r->mu);
	r->sector = 0;
}

int cbi_rescue_media_error(int e)
{
	return e == EIO || e == ENODATA || e == EREMOTEIO || e == EBADMSG || e == EILSEQ;
}

static void count(cbi_rescue *r, uint64_t *field, uint64_t n)
{
	pthread_mutex_lock(&r->mu);
	*field += n;
	pthread_mutex_unlock(&r->mu);
}

/* One read of [off, off + len) into buf, whole or not at all: 0, 1 for a
 * media error, or -errno for anything else. */
static int read_once(int fd, uint64_t off, size_t len, uint8_t *buf)
{
	size_t done = 0;
	while (done < len) {
		ssize_t k = pread(fd, buf + done, len - done, (off_t)(off + done));
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return cbi_rescue_media_error(errno) ? 1 : -errno;
		if (k == 0)
			return -ESPIPE; /* the end of the source: not a bad sector */
		done += (size_t)k;
	}
	return 0;
}

/* [off, off + len) failed: its halves (split on a sector boundary), down
 * to one sector, which is retried and then recorded as bad. */
static int rescue(cbi_rescue *r, int fd, uint64_t off, size_t len, uint8_t *buf)
{
	if (len <= r->sector) {
		for (unsigned k = 0; k < r->retries; k++) {
			count(r, &r->retry_reads, 1);
			int rc = read_once(fd, off, len, buf);
			if (rc <= 0) {
				if (!rc)
					count(r, &r->rescued, len);
				return rc;
			}
		}
		memset(buf, 0, len);
		pthread_mutex_lock(&r->mu);
		if (cbi_badmap_add(&r->map, off, len))
			r->nomem = 1;
		pthread_mutex_unlock(&r->mu);
		return 0;
	}
	/* the split point: a sector boundary of the source near the middle */
	uint64_t mid = (off + len / 2) / r->sector * r->sector;
	if (mid <= off)
		mid = (off / r->sector + 1) * r->sector;
	size_t a = (size_t)(mid - off), b = len - a;
	const struct {
		uint64_t off;
		size_t len;
		uint8_t *buf;
	} half[2] = { { off, a, buf }, { mid, b, buf + a } };
	for (int h = 0; h < 2; h++) {
		count(r, &r->retry_reads, 1);
		int rc = read_once(fd, half[h].off, half[h].len, half[h].buf);
		if (rc < 0)
			return rc;
		if (!rc) {
			count(r, &r->rescued, half[h].len);
			continue;
		}
		if ((rc = rescue(r, fd, half[h].off, half[h].len, half[h].buf)))
			return rc;
	}
	return 0;
}

int cbi_rescue_read(cbi_rescue *r, int fd, const char *path, uint64_t off, size_t len, uint8_t *buf,
		    cbi_error *err)
{
	count(r, &r->failed_reads, 1);
	int rc = rescue(r, fd, off, len, buf);
	if (!rc && r->nomem)
		rc = -ENOMEM;
	if (rc == -ESPIPE)
		return cbi_err(err, -CBI_EREAD, "source '%s' ended early, near byte %" PRIu64, path, off);
	if (rc)
		return cbi_err(err, -CBI_EREAD, "unable to read source '%s' near byte %" PRIu64 ": %s", path, off,
			       strerror(-rc));
	return 0;
}
