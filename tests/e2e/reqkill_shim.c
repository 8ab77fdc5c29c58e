/* reqkill_shim.c - an LD_PRELOAD library for tests/e2e/t_s3.sh: counts the
 * HTTP requests the process starts (a send() whose data begins with a
 * request line, "GET /", "PUT /", ...) and kills the process with SIGKILL
 * just before it sends the Nth: a crash at an exact moment of a run against
 * an S3 server, between any two requests.
 *     CBIMG_KILL_REQUEST=N   kill before the Nth request (counted from 1)
 *     CBIMG_REQUEST_LOG=FILE write the number of requests at a normal exit
 *     CBIMG_REFUSE_PUT=SUFFIX every single PUT of a key ending in SUFFIX
 *                            fails (the send() returns ECONNRESET): an
 *                            upload that cannot succeed, however often retried
 *     CBIMG_DELAY_REQUEST="WORD MS"  sleep MS milliseconds before sending
 *                            each request whose request line holds WORD (e.g.
 *                            "DELETE 600", or part of a key): a slow run, the
 *                            other requests (a lease's GET and PUT) unhindered
 * libcurl sends a request's head with one send() (plain HTTP); run the
 * process with CBIMG_S3_JOBS=1 so that the order of requests is fixed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_long count;
static long kill_at;
static const char *refuse;

/* Is buf (len bytes) the head of "PUT /...SUFFIX HTTP/"? */
static int refused(const void *buf, size_t len)
{
	const char *b = buf, *e = memchr(b, '\n', len);
	size_t sl = refuse ? strlen(refuse) : 0;
	if (!sl || !e || len < 5 || memcmp(b, "PUT /", 5))
		return 0;
	for (const char *p = b; p + sl + 6 <= e; p++)
		if (!memcmp(p, refuse, sl) && !memcmp(p + sl, " HTTP/", 6))
			return 1;
	return 0;
}
static char delay_w[256];
static long delay_ms;

static void seen(const void *buf, size_t len)
{
	static const char *const m[] = { "GET /", "PUT /", "POST /", "DELETE /", "HEAD /" };
	for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
		size_t l = strlen(m[i]);
		if (len >= l && !memcmp(buf, m[i], l)) {
			long n = atomic_fetch_add(&count, 1) + 1;
			if (kill_at && n == kill_at)
				kill(getpid(), SIGKILL);
			const char *eol = memchr(buf, '\r', len);
			if (delay_ms && memmem(buf, eol ? (size_t)(eol - (const char *)buf) : len, delay_w, strlen(delay_w)))
				usleep((useconds_t)(delay_ms * 1000));
			return;
		}
	}
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	static ssize_t (*real)(int, const void *, size_t, int);
	if (!real)
		real = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
	seen(buf, len);
	if (refused(buf, len))
		return errno = ECONNRESET, -1;
	return real(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *a, socklen_t al)
{
	static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	if (!real)
		real = (ssize_t(*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT,
													   "sendto");
	seen(buf, len);
	if (refused(buf, len))
		return errno = ECONNRESET, -1;
	return real(fd, buf, len, flags, a, al);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static ssize_t (*real)(int, const struct msghdr *, int);
	if (!real)
		real = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
	if (msg->msg_iovlen) {
		seen(msg->msg_iov[0].iov_base, msg->msg_iov[0].iov_len);
		if (refused(msg->msg_iov[0].iov_base, msg->msg_iov[0].iov_len))
			return errno = ECONNRESET, -1;
	}
	return real(fd, msg, flags);
}

__attribute__((constructor)) static void init(void)
{
	const char *k = getenv("CBIMG_KILL_REQUEST");
	kill_at = k ? atol(k) : 0;
	refuse = getenv("CBIMG_REFUSE_PUT");
	const char *d = getenv("CBIMG_DELAY_REQUEST");
	if (d && sscanf(d, "%255s %ld", delay_w, &delay_ms) != 2)
		delay_ms = 0;
}

__attribute__((destructor)) static void fini(void)
{
	const char *l = getenv("CBIMG_REQUEST_LOG");
	FILE *f = l && *l ? fopen(l, "w") : NULL;
	if (f) {
		fprintf(f, "%ld\n", (long)atomic_load(&count));
		fclose(f);
	}
}
