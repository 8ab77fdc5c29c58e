/* util.h - little-endian load/store, error reporting, small helpers (internal). */
#ifndef CBI_UTIL_H
#define CBI_UTIL_H

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "cbimg.h"

static inline void st16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void st32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void st64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ld32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static inline uint64_t ld64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* Fill err (if non-NULL) with code and a printf-style message; returns code.
 * code is the negative library/errno code. Usage: return cbi_err(err, -EIO, "...") */
int cbi_err(cbi_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Put a context before the reason err already holds, instead of replacing
 * it: err->msg becomes "<context>: <inner message>" (the inner message cut
 * at the end if both do not fit), or "<context>: <text of code>" when err
 * holds no message. Sets err->code to code; err may be NULL. Returns code.
 * Usage: if ((rc = f(..., err))) return cbi_err_prefix(err, rc, "newest point of job '%s'", job); */
int cbi_err_prefix(cbi_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Monotonic clock in seconds. */
double cbi_now(void);

/* Wall clock, nanoseconds since the Unix epoch. */
int64_t cbi_wallclock_ns(void);

/* Fill buf with n cryptographically random bytes. 0 or negative code. */
int cbi_random(void *buf, size_t n);

/* cbi_id_hex() (cbimg.h) is defined in util.c too. The first 8 hex digits
 * of an id, as messages and file names show a chain: out holds 9 bytes. */
void cbi_id_short(const uint8_t id[16], char out[9]);

/* Copy a string into a fixed-size field, truncating; always NUL-terminates. */
void cbi_strlcpy(char *dst, const char *src, size_t size);

/* Is the buffer all zero? */
int cbi_is_zero(const void *buf, size_t len);

/* pread/pwrite that loop over short transfers and EINTR. Return 0 or -errno;
 * a short read at end of file returns -CBI_ETRUNCATED. */
int cbi_pread_full(int fd, void *buf, size_t len, uint64_t off);
int cbi_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* Direct I/O: buffers, lengths and offsets are multiples of this. */
#define CBI_DIRECT_ALIGN 4096u

/* O_DIRECT on the open file of fd switched on or off (F_SETFL): 0 or
 * -errno. */
int cbi_fd_direct(int fd, int on);

/* cbi_pwrite_full() on a descriptor that may be O_DIRECT (*direct): a write
 * it cannot do that way (buffer, length or offset not a multiple of
 * CBI_DIRECT_ALIGN) or that the file system refuses (EINVAL) goes through
 * the page cache, and O_DIRECT stays off from then on (*direct = 0). */
int cbi_pwrite_maybe_direct(int fd, int *direct, const void *buf, size_t len, uint64_t off);

/* pthread_create() with every signal blocked in the new thread: the
 * program's handlers keep running in the threads they ran in. 0 or
 * pthread_create()'s (positive) code. */
int cbi_thread_start_quiet(pthread_t *t, void *(*fn)(void *), void *arg);

/* fsync the directory that contains path (or path itself if a directory). */
int cbi_fsync_dir(const char *dirpath);

/* Create a new temporary file at tmp for writing (mode before umask), never
 * through what already lies there: whatever is at that name (a stale
 * temporary, or a file or symbolic link someone planted in a directory
 * others can write to) is unlinked first, never followed, and the file is
 * made with O_EXCL | O_NOFOLLOW, so a race fails instead of writing
 * through. Returns the descriptor or -errno. */
int cbi_create_tmp(const char *tmp, int mode);

/* Open path read-only (flags: extra O_* flags, e.g. O_NOFOLLOW) without ever
 * blocking in open(): O_NONBLOCK, so that a FIFO planted at the name (or a
 * link to one) cannot hang the caller, then fstat: only a regular file is
 * kept (O_NONBLOCK cleared again), its stat in *st when st is non-NULL.
 * Returns the descriptor, -EISDIR for a directory, -EINVAL for anything
 * else that is not a regular file, -ELOOP for a link with O_NOFOLLOW, or
 * another -errno. */
int cbi_open_regular(const char *path, int flags, struct stat *st);

/* A file by its identity (device and inode), with a name for messages. */
typedef struct cbi_fid {
	dev_t dev;
	ino_t ino;
	char *path;             /* malloc'ed */
} cbi_fid;

/* Release n fids and their paths (NULL is fine). */
void cbi_fids_free(cbi_fid *f, size_t n);

/* Directory part of path into out (size outsz). */
void cbi_dirname(const char *path, char *out, size_t outsz);

/* Does name end in ext (and hold more than ext)? */
int cbi_has_ext(const char *name, const char *ext);

/* Keep only [A-Za-z0-9._-] (others become '-'), for file names valid on FAT. */
void cbi_sanitize_name(const char *in, char *out, size_t outsz);

#define CBI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CBI_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
