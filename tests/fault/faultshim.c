/* faultshim.c - an LD_PRELOAD library that makes the Nth call of one system
 * function fail, so that tests can check what cbimg leaves behind when a
 * write, a sync, a rename or an allocation fails at any point (the idea of
 * SQLite's fault-injection tests).
 *
 *     CBIMG_FAULT=KIND:N   fail the Nth call of KIND (counted from 1), once
 *     CBIMG_FAULT_LOG=FILE append one line per injected failure, and at exit
 *                          one line with the number of calls of KIND seen
 *     CBIMG_FAULT_IGNORE=S calls on a file whose path contains S are neither
 *                          counted nor failed (fsync, dirfsync, rename and
 *                          pwrite), e.g. the SQLite catalog's, whose many
 *                          writes would otherwise dominate a loop over N
 *     CBIMG_FAULT_KILL=1   instead of failing the Nth call, the process kills
 *                          itself with SIGKILL just before making it: a
 *                          crash at an exact moment (tests/e2e/t_kill_sweep.sh)
 *     CBIMG_FAULT_ONLY=S   the converse: only calls on a file whose path
 *                          contains S are counted and failed (those four
 *                          kinds), e.g. the catalog's writes during a backup
 *
 * KIND is one of
 *     fsync     fsync() and fdatasync() of anything but a directory   -> EIO
 *     dirfsync  fsync() and fdatasync() of a directory (counted apart) -> EIO
 *     rename    rename(), renameat(), renameat2()                      -> EIO
 *     pwrite    pwrite() and pwrite64()                                -> EIO
 *     malloc    malloc(), calloc(), realloc() (size > 0), posix_memalign(),
 *               aligned_alloc(), memalign()                            -> ENOMEM
 *     pread     pread() and pread64()                                  -> EIO
 *               (with CBIMG_FAULT_ONLY, e.g. ".tmp": the reads of a file
 *               being written, such as a merged image's digest reading it
 *               back)
 *
 * Only calls made after the library's constructor has run are counted (it
 * arms the counter last), so what the dynamic loader and libc allocate at
 * start-up never counts. The allocation functions call glibc's __libc_*
 * entry points directly, never dlsym(), so dlsym's own allocations cannot
 * recurse into an unresolved pointer. With AddressSanitizer in the process
 * (whose allocator must own every allocation; the Makefile builds the shim
 * of an ASan build with FAULT_NO_MALLOC, without the allocation functions)
 * malloc faults are refused with a note on stderr and the program runs
 * without a fault.
 *
 * The log lines are "hit KIND N" and "calls KIND COUNT". Not thread-safe in
 * the order of calls (a run with several threads fails "some" Nth call),
 * but the counter itself is atomic: exactly one call fails. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

enum { K_NONE, K_FSYNC, K_DIRFSYNC, K_RENAME, K_PWRITE, K_MALLOC, K_PREAD };
static const char *const kind_names[] = { "none", "fsync", "dirfsync", "rename", "pwrite", "malloc", "pread" };

static int fault_kind;              /* K_* */
static long fault_n;                /* fail call number fault_n */
static atomic_long calls;           /* calls of fault_kind seen since arming */
static atomic_int armed;
static char log_path[4096];
static char ignore[256];
static char only[256];
static int kill_instead;

/* Is a call on path p left alone: p contains the ignored string, or not
 * the only one counted? */
static int ignored_path(const char *p)
{
	if (ignore[0] && p && strstr(p, ignore))
		return 1;
	return only[0] && !(p && strstr(p, only));
}

/* The same for the file open at fd. */
static int ignored_fd(int fd)
{
	char link[64], path[4096];
	if (!ignore[0] && !only[0])
		return 0;
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof path - 1);
	if (n < 0)
		return ignored_path(NULL);
	path[n] = 0;
	return ignored_path(path);
}

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	if (!log_path[0])
		return;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	/* open/write, not stdio: no allocation, safe inside malloc */
	int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	ssize_t w = write(fd, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
	(void)w;
	close(fd);
}

/* Is this call of kind k the one to fail? */
static int should_fail(int k)
{
	if (k != fault_kind || !atomic_load_explicit(&armed, memory_order_acquire))
		return 0;
	long c = atomic_fetch_add(&calls, 1) + 1;
	if (c != fault_n)
		return 0;
	log_line("hit %s %ld\n", kind_names[k], c);
	if (kill_instead)
		kill(getpid(), SIGKILL);
	return 1;
}

/* should_fail() for a call on fd, or on paths a and b: ignored paths are
 * looked up only when the call is of the kind counted. */
static int fail_fd(int fd, int k)
{
	return k == fault_kind && !ignored_fd(fd) && should_fail(k);
}

static int fail_paths(const char *a, const char *b, int k)
{
	if (k != fault_kind)
		return 0;
	/* with ONLY, a rename counts when either name contains the string */
	int skip = only[0] ? ignored_path(a) && ignored_path(b) : ignored_path(a) || ignored_path(b);
	return !skip && should_fail(k);
}

__attribute__((constructor)) static void fault_init(void)
{
	const char *spec = getenv("CBIMG_FAULT");
	const char *lp = getenv("CBIMG_FAULT_LOG");
	if (lp && strlen(lp) < sizeof log_path)
		strcpy(log_path, lp);
	const char *ig = getenv("CBIMG_FAULT_IGNORE");
	if (ig && strlen(ig) < sizeof ignore)
		strcpy(ignore, ig);
	const char *ki = getenv("CBIMG_FAULT_KILL");
	kill_instead = ki && *ki && strcmp(ki, "0");
	const char *on = getenv("CBIMG_FAULT_ONLY");
	if (on && strlen(on) < sizeof only)
		strcpy(only, on);
	if (!spec || !*spec)
		return;
	const char *colon = strchr(spec, ':');
	if (!colon)
		goto bad;
	size_t len = (size_t)(colon - spec);
	for (int k = K_FSYNC; k <= K_PREAD; k++)
		if (strlen(kind_names[k]) == len && !strncmp(spec, kind_names[k], len))
			fault_kind = k;
	char *end;
	errno = 0;
	fault_n = strtol(colon + 1, &end, 10);
	if (!fault_kind || errno || *end || fault_n < 1)
		goto bad;
#ifdef FAULT_NO_MALLOC
	if (fault_kind == K_MALLOC) {
#else
	if (fault_kind == K_MALLOC && dlsym(RTLD_DEFAULT, "__asan_init")) {
#endif
		static const char note[] = "faultshim: note: malloc faults are not injected under "
					   "AddressSanitizer (its allocator must own every allocation)\n";
		ssize_t w = write(2, note, sizeof note - 1);
		(void)w;
		fault_kind = K_NONE;
		return;
	}
	atomic_store_explicit(&armed, 1, memory_order_release); /* last: nothing before counts */
	return;
bad:
	fprintf(stderr, "faultshim: invalid CBIMG_FAULT '%s': expected KIND:N, KIND one of fsync, "
		"dirfsync, rename, pwrite, malloc, pread\n", spec);
	fault_kind = K_NONE;
}

__attribute__((destructor)) static void fault_fini(void)
{
	if (fault_kind)
		log_line("calls %s %ld\n", kind_names[fault_kind], atomic_load(&calls));
}

/* The next definition of name (libc's, or a sanitizer's interceptor). */
static void *next(const char *name)
{
	void *p = dlsym(RTLD_NEXT, name);
	if (!p) {
		static const char msg[] = "faultshim: dlsym failed\n";
		ssize_t w = write(2, msg, sizeof msg - 1);
		(void)w;
		abort();
	}
	return p;
}

#define NEXT(name)                                                                             \
	static __typeof__(name) *real_##name;                                                  \
	if (!real_##name)                                                                      \
		real_##name = (__typeof__(name) *)next(#name)

static int is_dir(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
}

int fsync(int fd)
{
	NEXT(fsync);
	if (fail_fd(fd, is_dir(fd) ? K_DIRFSYNC : K_FSYNC)) {
		errno = EIO;
		return -1;
	}
	return real_fsync(fd);
}

int fdatasync(int fd)
{
	NEXT(fdatasync);
	if (fail_fd(fd, is_dir(fd) ? K_DIRFSYNC : K_FSYNC)) {
		errno = EIO;
		return -1;
	}
	return real_fdatasync(fd);
}

int rename(const char *a, const char *b)
{
	NEXT(rename);
	if (fail_paths(a, b, K_RENAME)) {
		errno = EIO;
		return -1;
	}
	return real_rename(a, b);
}

int renameat(int da, const char *a, int db, const char *b)
{
	NEXT(renameat);
	if (fail_paths(a, b, K_RENAME)) {
		errno = EIO;
		return -1;
	}
	return real_renameat(da, a, db, b);
}

int renameat2(int da, const char *a, int db, const char *b, unsigned flags)
{
	NEXT(renameat2);
	if (fail_paths(a, b, K_RENAME)) {
		errno = EIO;
		return -1;
	}
	return real_renameat2(da, a, db, b, flags);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	NEXT(pwrite);
	if (fail_fd(fd, K_PWRITE)) {
		errno = EIO;
		return -1;
	}
	return real_pwrite(fd, buf, n, off);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
	NEXT(pread);
	if (fail_fd(fd, K_PREAD)) {
		errno = EIO;
		return -1;
	}
	return real_pread(fd, buf, n, off);
}

ssize_t pread64(int fd, void *buf, size_t n, off64_t off)
{
	NEXT(pread64);
	if (fail_fd(fd, K_PREAD)) {
		errno = EIO;
		return -1;
	}
	return real_pread64(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	NEXT(pwrite64);
	if (fail_fd(fd, K_PWRITE)) {
		errno = EIO;
		return -1;
	}
	return real_pwrite64(fd, buf, n, off);
}

#ifndef FAULT_NO_MALLOC
/* Allocation: glibc's own entry points, no dlsym. Left out of the shim
 * built for AddressSanitizer (FAULT_NO_MALLOC), whose allocator must see
 * every allocation. */
void *malloc(size_t n)
{
	if (should_fail(K_MALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
	if (should_fail(K_MALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	if (n && should_fail(K_MALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_realloc(p, n);
}

void free(void *p)
{
	__libc_free(p);
}

void *memalign(size_t align, size_t n)
{
	if (should_fail(K_MALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
	return memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
	if (align < sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	void *p = memalign(align, n);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}
#endif
