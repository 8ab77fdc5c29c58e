/*
 * probe.c - is a file a cbimg image or index at all? (cbi_probe)
 *
 * Commands take point files as operands. A file that is not a cbimg file at
 * all (a typo, the wrong file) is the caller's mistake, a usage error; a file
 * that starts as a cbimg file but fails later checks is damage. Only the
 * header magic tells the two apart, so that is all this looks at.
 */
#define _GNU_SOURCE
#include "format.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Do the first n bytes of name end in ".cbi" or ".cbx"? */
static int has_point_ext(const char *name, size_t n)
{
	return n >= 4 && (!memcmp(name + n - 4, ".cbi", 4) || !memcmp(name + n - 4, ".cbx", 4));
}

/* Length of the base name when path is a later segment "NAME.cbi.001"
 * (a dot, then three or more digits, after a point file name), else 0. */
static size_t segment_base_len(const char *path)
{
	const char *dot = strrchr(path, '.');
	size_t digits;

	if (!dot || dot == path)
		return 0;
	digits = strlen(dot + 1);
	if (digits < 3 || strspn(dot + 1, "0123456789") != digits)
		return 0;
	return (size_t)(dot - path);
}

/* Magic of a point file at b[0..n), or a prefix of one when n < 8? */
static int magic_ok(const uint8_t *b, size_t n)
{
	return !memcmp(b, CBI_MAGIC_IMAGE, n) || !memcmp(b, CBI_MAGIC_INDEX, n);
}

int cbi_probe(const char *file, cbi_error *err)
{
	uint8_t b[8];
	struct stat st;
	ssize_t got;
	size_t base;
	int fd, rc = 0;

	fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO never hangs it */
	if (fd < 0) {
		rc = -errno;
		return cbi_err(err, rc, "unable to open '%s': %s", file, strerror(-rc));
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		cbi_err(err, rc, "unable to read '%s': %s", file, strerror(-rc));
		goto end;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = cbi_err(err, -CBI_ENOTCBI, "'%s': not a cbimg image or index (%s)", file,
			     S_ISDIR(st.st_mode) ? "a directory" : "not a regular file");
		goto end;
	}
	do
		got = pread(fd, b, sizeof b, 0);
	while (got < 0 && errno == EINTR);
	if (got < 0) {
		rc = -errno;
		cbi_err(err, rc, "unable to read '%s': %s", file, strerror(-rc));
		goto end;
	}
	if (got > 0 ? magic_ok(b, (size_t)got) : has_point_ext(file, strlen(file)))
		goto end;
	base = segment_base_len(file);
	if (base && got > 0 && has_point_ext(file, base))
		rc = cbi_err(err, -CBI_ENOTCBI, "'%s': not a cbimg image or index: it is a later segment "
			     "of '%.*s', name that file instead", file, (int)base, file);
	else
		rc = cbi_err(err, -CBI_ENOTCBI, "'%s': not a cbimg image or index", file);
end:
	close(fd);
	return rc;
}
