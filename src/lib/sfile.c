/* sfile.c - sealed file writer and reader. */
#define _GNU_SOURCE
#include "sfile.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "util.h"

#define SFW_BUF (1u << 20)

struct cbi_sfw {
	int fd;
	uint64_t off;       /* bytes appended (buffered included) */
	size_t used;
	uint8_t *buf;
	EVP_MD_CTX *sha;
	char tmp[4096];
	char final[4096];
};

int cbi_sfw_create(const char *final_path, cbi_sfw **out, cbi_error *err)
{
	return cbi_sfw_create_tagged(final_path, NULL, out, err);
}

int cbi_sfw_create_tagged(const char *final_path, const char *tag, cbi_sfw **out, cbi_error *err)
{
	cbi_sfw *w = calloc(1, sizeof *w);
	if (!w)
		return cbi_err(err, -ENOMEM, "out of memory");
	w->fd = -1;
	cbi_strlcpy(w->final, final_path, sizeof w->final);
	char dir[4096];
	cbi_dirname(final_path, dir, sizeof dir);
	const char *base = strrchr(final_path, '/');
	base = base ? base + 1 : final_path;
	/* A leading dot and a ".tmp" ending: never matched by the scanner, which
	 * only takes names ending in .cbi or .cbx. */
	int n = tag ? snprintf(w->tmp, sizeof w->tmp, "%s/.%s.%s.tmp", dir, tag, base)
		    : snprintf(w->tmp, sizeof w->tmp, "%s/.%s.%ld.tmp", dir, base, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof w->tmp) {
		free(w);
		return cbi_err(err, -ENAMETOOLONG, "path too long: '%s'", final_path);
	}
	w->buf = malloc(SFW_BUF);
	w->sha = EVP_MD_CTX_new();
	if (!w->buf || !w->sha || EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1) {
		cbi_sfw_abort(w);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		int e = -errno;
		cbi_err(err, e, "unable to create '%s': %s", w->tmp, strerror(-e));
		w->tmp[0] = 0; /* not ours: never unlink what another process created */
		cbi_sfw_abort(w);
		return e;
	}
	*out = w;
	return 0;
}

static int sfw_flush(cbi_sfw *w)
{
	if (!w->used)
		return 0;
	int rc = cbi_pwrite_full(w->fd, w->buf, w->used, w->off - w->used);
	if (rc)
		return rc;
	w->used = 0;
	return 0;
}

int cbi_sfw_write(cbi_sfw *w, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	if (EVP_DigestUpdate(w->sha, buf, len) != 1)
		return -EIO;
	while (len) {
		if (w->used == SFW_BUF) {
			int rc = sfw_flush(w);
			if (rc)
				return rc;
		}
		size_t n = CBI_MIN(len, SFW_BUF - w->used);
		memcpy(w->buf + w->used, p, n);
		w->used += n;
		w->off += n;
		p += n;
		len -= n;
	}
	return 0;
}

uint64_t cbi_sfw_offset(const cbi_sfw *w) { return w->off; }

const char *cbi_sfw_final_path(const cbi_sfw *w) { return w->final; }

int cbi_sfw_seal(cbi_sfw *w, const uint8_t *trailer96, uint8_t digest[32])
{
	int rc = cbi_sfw_write(w, trailer96, 96);
	if (rc)
		return rc;
	unsigned int dl = 0;
	if (EVP_DigestFinal_ex(w->sha, digest, &dl) != 1 || dl != 32)
		return -EIO;
	/* The digest itself is not part of what it covers. */
	if (w->used + 32 > SFW_BUF && (rc = sfw_flush(w)))
		return rc;
	memcpy(w->buf + w->used, digest, 32);
	w->used += 32;
	w->off += 32;
	if ((rc = sfw_flush(w)))
		return rc;
	if (fsync(w->fd) < 0)
		return -errno;
	return 0;
}

int cbi_sfw_commit(cbi_sfw *w, cbi_error *err)
{
	if (close(w->fd) < 0) {
		w->fd = -1;
		return cbi_err(err, -errno, "unable to close '%s': %s", w->tmp, strerror(errno));
	}
	w->fd = -1;
	if (rename(w->tmp, w->final) < 0)
		return cbi_err(err, -errno, "unable to rename '%s' to '%s': %s", w->tmp, w->final,
			       strerror(errno));
	EVP_MD_CTX_free(w->sha);
	free(w->buf);
	free(w);
	return 0;
}

void cbi_sfw_abort(cbi_sfw *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (w->tmp[0])
		unlink(w->tmp);
	EVP_MD_CTX_free(w->sha);
	free(w->buf);
	free(w);
}

int cbi_sfr_open(const char *path, cbi_sfr **out, cbi_error *err)
{
	cbi_sfr *r = calloc(1, sizeof *r);
	if (!r)
		return cbi_err(err, -ENOMEM, "out of memory");
	cbi_strlcpy(r->path, path, sizeof r->path);
	r->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0) {
		int e = -errno;
		free(r);
		return cbi_err(err, e, "unable to open '%s': %s", path, strerror(-e));
	}
	struct stat st;
	if (fstat(r->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int e = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		cbi_sfr_close(r);
		return cbi_err(err, e, "'%s' is not a regular file", path);
	}
	r->size = (uint64_t)st.st_size;
	if (r->size < CBI_HDR_SIZE + CBI_TRL_SIZE) {
		cbi_sfr_close(r);
		return cbi_err(err, -CBI_ETRUNCATED, "'%s' is truncated (%llu bytes)", path,
			       (unsigned long long)st.st_size);
	}
	*out = r;
	return 0;
}

int cbi_sfr_pread(const cbi_sfr *r, void *buf, size_t len, uint64_t off)
{
	if (off > r->size || len > r->size - off)
		return -CBI_ETRUNCATED;
	return cbi_pread_full(r->fd, buf, len, off);
}

int cbi_sfr_check_digest(const cbi_sfr *r, cbi_progress_fn fn, void *ud)
{
	const size_t bsz = 4u << 20;
	uint8_t *buf = malloc(bsz);
	EVP_MD_CTX *sha = EVP_MD_CTX_new();
	int rc = 0;
	if (!buf || !sha || EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1) {
		rc = -ENOMEM;
		goto end;
	}
	posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	uint64_t end = r->size - 32, off = 0;
	while (off < end) {
		size_t n = (size_t)CBI_MIN((uint64_t)bsz, end - off);
		if ((rc = cbi_pread_full(r->fd, buf, n, off)))
			goto end;
		EVP_DigestUpdate(sha, buf, n);
		off += n;
		if (fn && fn(ud, off, end)) {
			rc = -ECANCELED;
			goto end;
		}
	}
	uint8_t want[32], got[32];
	unsigned int dl;
	if ((rc = cbi_pread_full(r->fd, want, 32, end)))
		goto end;
	EVP_DigestFinal_ex(sha, got, &dl);
	if (memcmp(want, got, 32))
		rc = -CBI_EDAMAGED;
end:
	EVP_MD_CTX_free(sha);
	free(buf);
	return rc;
}

void cbi_sfr_close(cbi_sfr *r)
{
	if (!r)
		return;
	if (r->fd >= 0)
		close(r->fd);
	free(r);
}
