/* util.c - error reporting and small system helpers. */
#define _GNU_SOURCE
#include "util.h"

#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const lib_errs[] = {
	[CBI_EDAMAGED - CBI_EDAMAGED] = "data damaged",
	[CBI_ETRUNCATED - CBI_EDAMAGED] = "file truncated or unfinished",
	[CBI_EFORMAT - CBI_EDAMAGED] = "not a cbimg file or unsupported format version",
	[CBI_ENOPARENT - CBI_EDAMAGED] = "parent point not found",
	[CBI_EMISMATCH - CBI_EDAMAGED] = "source does not match the chain",
	[CBI_EUSAGE - CBI_EDAMAGED] = "invalid argument",
	[CBI_EMOUNTED - CBI_EDAMAGED] = "target is mounted or in use",
	[CBI_EEXISTS - CBI_EDAMAGED] = "target exists",
	[CBI_ETOOSMALL - CBI_EDAMAGED] = "target too small",
	[CBI_EREAD - CBI_EDAMAGED] = "source unreadable",
	[CBI_ENOCHAIN - CBI_EDAMAGED] = "no chain found",
	[CBI_ELOCKED - CBI_EDAMAGED] = "chain is locked by another cbimg process",
	[CBI_EAUTH - CBI_EDAMAGED] = "authentication failed: the data was altered",
	[CBI_EPASS - CBI_EDAMAGED] = "wrong passphrase, or no passphrase given",
	[CBI_ENOKEY - CBI_EDAMAGED] = "key file of the encrypted chain not found",
	[CBI_ENOTCBI - CBI_EDAMAGED] = "not a cbimg image or index",
	[CBI_EBADRANGES - CBI_EDAMAGED] = "the point has unreadable ranges",
};

const char *cbi_strerror(int code)
{
	if (code < 0)
		code = -code;
	if (code >= CBI_EDAMAGED && code <= CBI_EBADRANGES)
		return lib_errs[code - CBI_EDAMAGED];
	return strerror(code);
}


int cbi_is_damage(int code)
{
	if (code < 0)
		code = -code;
	return code == CBI_EDAMAGED || code == CBI_ETRUNCATED || code == CBI_EFORMAT || code == CBI_EAUTH ||
	       code == CBI_EBADRANGES;
}

int cbi_err(cbi_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

int cbi_err_prefix(cbi_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	char inner[sizeof err->msg];
	cbi_strlcpy(inner, err->msg[0] ? err->msg : cbi_strerror(code), sizeof inner);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n + 2 < sizeof err->msg) {
		memcpy(err->msg + n, ": ", 2);
		cbi_strlcpy(err->msg + n + 2, inner, sizeof err->msg - (size_t)n - 2);
	}
	err->code = code;
	return code;
}

double cbi_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t cbi_wallclock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int cbi_random(void *buf, size_t n)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t r = getrandom(p, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

void cbi_strlcpy(char *dst, const char *src, size_t size)
{
	if (!size)
		return;
	size_t n = src ? strnlen(src, size - 1) : 0;
	if (n)
		memcpy(dst, src, n);
	dst[n] = 0;
}

int cbi_is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	/* Check the first 16 bytes, then compare the buffer with itself shifted:
	 * memcmp is vectorised and far faster than a byte loop. */
	size_t head = len < 16 ? len : 16;
	for (size_t i = 0; i < head; i++)
		if (p[i])
			return 0;
	if (len <= 16)
		return 1;
	return memcmp(p, p + 16, len - 16) == 0;
}

int cbi_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t r = pread(fd, p, len, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -CBI_ETRUNCATED;
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int cbi_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t r = pwrite(fd, p, len, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int cbi_create_tmp(const char *tmp, int mode)
{
	if (unlink(tmp) < 0 && errno != ENOENT)
		return -errno;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
	return fd < 0 ? -errno : fd;
}

int cbi_fsync_dir(const char *dirpath)
{
	int fd = open(dirpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = 0;
	/* Some filesystems (FUSE FAT drivers) refuse fsync on directories. */
	if (fsync(fd) < 0 && errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		rc = -errno;
	close(fd);
	return rc;
}

void cbi_dirname(const char *path, char *out, size_t outsz)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		cbi_strlcpy(out, ".", outsz);
		return;
	}
	if (slash == path) {
		cbi_strlcpy(out, "/", outsz);
		return;
	}
	size_t n = (size_t)(slash - path);
	if (n >= outsz)
		n = outsz - 1;
	memcpy(out, path, n);
	out[n] = 0;
}

int cbi_has_ext(const char *name, const char *ext)
{
	size_t n = strlen(name), e = strlen(ext);
	return n > e && !strcmp(name + n - e, ext);
}

void cbi_sanitize_name(const char *in, char *out, size_t outsz)
{
	size_t j = 0;
	for (size_t i = 0; in[i] && j + 1 < outsz; i++) {
		char c = in[i];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			 c == '.' || c == '_' || c == '-';
		/* never a leading dot: scanners skip dot files as temporary */
		if (j == 0 && c == '.')
			ok = 0;
		out[j++] = ok ? c : '-';
	}
	if (outsz)
		out[j] = 0;
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

void cbi_id_short(const uint8_t id[16], char out[9])
{
	char hex[33];
	cbi_id_hex(id, hex);
	memcpy(out, hex, 8);
	out[8] = 0;
}

int cbi_open_regular(const char *path, int flags, struct stat *st)
{
	struct stat s;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | flags);
	if (fd < 0)
		return -errno;
	int rc = fstat(fd, &s) < 0 ? -errno : 0;
	if (!rc && !S_ISREG(s.st_mode))
		rc = S_ISDIR(s.st_mode) ? -EISDIR : -EINVAL;
	int fl = rc ? 0 : fcntl(fd, F_GETFL);
	if (!rc && (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0))
		rc = -errno;
	if (rc) {
		close(fd);
		return rc;
	}
	if (st)
		*st = s;
	return fd;
}

void cbi_fids_free(cbi_fid *f, size_t n)
{
	for (size_t i = 0; f && i < n; i++)
		free(f[i].path);
	free(f);
}

int cbi_fd_direct(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, on ? fl | O_DIRECT : fl & ~O_DIRECT) < 0)
		return -errno;
	return 0;
}

int cbi_pwrite_maybe_direct(int fd, int *direct, const void *buf, size_t len, uint64_t off)
{
	if (*direct && ((uintptr_t)buf | len | off) % CBI_DIRECT_ALIGN) {
		(void)cbi_fd_direct(fd, 0);
		*direct = 0;
	}
	int rc = cbi_pwrite_full(fd, buf, len, off);
	if (rc == -EINVAL && *direct) {
		/* refused: the same bytes again through the page cache */
		(void)cbi_fd_direct(fd, 0);
		*direct = 0;
		rc = cbi_pwrite_full(fd, buf, len, off);
	}
	return rc;
}

int cbi_thread_start_quiet(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}
