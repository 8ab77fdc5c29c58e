/* badread_shim.c - an LD_PRELOAD library that fails pread() with EIO where
 * it meets configured byte ranges of one file: a source with bad sectors
 * without FUSE or root (format/vectors/make-vectors.sh; tests/e2e/badfile.c
 * is the FUSE equivalent, which also works behind a loop device).
 *
 *     CBIMG_BAD_FILE=S     only reads of a file whose path contains S
 *     CBIMG_BAD_RANGES=A:L,B:M,...   byte ranges [A, A+L), ... (decimal)
 *
 * The path of a descriptor is looked up in /proc/self/fd on every call:
 * slow, but only tests use it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);

static int meets(int fd, uint64_t off, uint64_t len)
{
	const char *want = getenv("CBIMG_BAD_FILE"), *r = getenv("CBIMG_BAD_RANGES");
	char link[64], path[4096];
	if (!want || !r || !len)
		return 0;
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof path - 1);
	if (n < 0)
		return 0;
	path[n] = 0;
	if (!strstr(path, want))
		return 0;
	while (*r) {
		char *end;
		unsigned long long a = strtoull(r, &end, 10), l = 0;
		if (*end == ':')
			l = strtoull(end + 1, &end, 10);
		if (l && a < off + len && off < a + l)
			return 1;
		r = *end == ',' ? end + 1 : end;
		if (!*end || (*end != ',' && *end))
			break;
	}
	return 0;
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	static pread_fn real;
	if (!real)
		real = (pread_fn)dlsym(RTLD_NEXT, "pread");
	if (meets(fd, (uint64_t)off, len)) {
		errno = EIO;
		return -1;
	}
	return real(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
	return pread(fd, buf, len, off);
}
