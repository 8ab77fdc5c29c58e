/* objview.c - the images of an s3:// view read by ranged GETs (objview.h). */
#define _GNU_SOURCE
#include "objview.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct {
	cbi_s3 *s3;
	cbi_s3rd *rd;
	int trace_fd;
	pid_t pid;          /* the process whose connections s3 pools */
	cbi_s3_cfg cfg;
	char bucket[64];
	pthread_mutex_t mu;
} V = { .trace_fd = -1, .mu = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void fork_lock(void) { pthread_mutex_lock(&V.mu); }
static void fork_unlock(void) { pthread_mutex_unlock(&V.mu); }
static void atfork_init(void) { pthread_atfork(fork_lock, fork_unlock, fork_unlock); }

/* The client of this process: after a fork (mount's serving process), the
 * pooled connections are the parent's too, so the child opens its own
 * (the parent's are left alone: closing them could disturb the parent). */
static cbi_s3 *client(cbi_error *err)
{
	pthread_mutex_lock(&V.mu);
	if (V.pid != getpid()) {
		cbi_s3 *s = NULL;
		if (cbi_s3_open(&V.cfg, V.bucket, &s, err)) {
			pthread_mutex_unlock(&V.mu);
			return NULL;
		}
		V.s3 = s;
		V.pid = getpid();
	}
	cbi_s3 *s = V.s3;
	pthread_mutex_unlock(&V.mu);
	return s;
}

static unsigned env_num(const char *name, unsigned def, unsigned lo, unsigned hi)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return def;
	long n = strtol(v, NULL, 10);
	return n < lo ? lo : n > hi ? hi : (unsigned)n;
}

static int fetch(void *ud, const char *key, uint64_t off, uint64_t len, void *buf, cbi_error *err)
{
	size_t got = 0;
	cbi_s3 *s3 = client(err);
	if (!s3)
		return -EIO;
	int rc = cbi_s3_get(s3, key, off, len, buf, (size_t)len, &got, err);
	if (!rc && got != len)
		rc = cbi_err(err, -CBI_ETRUNCATED, "'s3://%s/%s': %zu bytes at %llu, expected %llu (shorter than listed)",
			     V.bucket, key, got, (unsigned long long)off, (unsigned long long)len);
	if (V.trace_fd >= 0) {
		char line[1400];
		int n = snprintf(line, sizeof line, "GET %s %llu %llu%s\n", key, (unsigned long long)off,
				 (unsigned long long)len, rc ? " failed" : "");
		if (n > 0 && write(V.trace_fd, line, (size_t)CBI_MIN(n, (int)sizeof line - 1)) < 0)
			n = 0; /* a trace only */
	}
	return rc;
}

int cbi_objview_start(const cbi_s3_cfg *cfg, const char *bucket, const char *kp, const cbi_s3_obj *objs,
		      size_t n, const char *dir, uint64_t ends, cbi_error *err)
{
	pthread_once(&atfork_once, atfork_init);
	cbi_objview_end();
	int rc = cbi_s3_open(cfg, bucket, &V.s3, err);
	V.cfg = *cfg;
	cbi_strlcpy(V.bucket, bucket, sizeof V.bucket);
	V.pid = getpid();
	cbi_s3rd_cfg c = { .jobs = env_num("CBIMG_S3_JOBS", 4, 1, 8),
			   .cache = (uint64_t)env_num("CBIMG_S3_CACHE_MIB", 64, 8, 65536) << 20 };
	if (!rc)
		rc = cbi_s3rd_new(&c, fetch, NULL, &V.rd, err);
	size_t kl = strlen(kp);
	for (size_t i = 0; !rc && i < n; i++) {
		const char *name = objs[i].key + kl;
		if (strncmp(objs[i].key, kp, kl) || !*name || strchr(name, '/') || !cbi_has_ext(name, ".cbi"))
			continue;
		char path[4600];
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, name);
		if (stat(path, &st) < 0 || (uint64_t)st.st_size != objs[i].size)
			continue; /* no stand-in here: not part of the view */
		rc = cbi_s3rd_add(V.rd, st.st_dev, st.st_ino, objs[i].key, objs[i].size,
				  objs[i].size > 2 * ends ? ends : objs[i].size, err);
	}
	const char *tr = getenv("CBIMG_S3_TRACE");
	if (!rc && tr && *tr)
		V.trace_fd = open(tr, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (rc)
		cbi_objview_end();
	else
		cbi_sfr_set_opener(cbi_s3rd_opener, V.rd);
	return rc;
}

void cbi_objview_stats(cbi_s3rd_stats *st)
{
	memset(st, 0, sizeof *st);
	if (V.rd)
		cbi_s3rd_get_stats(V.rd, st);
}

void cbi_objview_last_error(char *out, size_t sz)
{
	out[0] = 0;
	if (V.rd)
		cbi_s3rd_last_error(V.rd, out, sz);
}

void cbi_objview_end(void)
{
	if (V.rd)
		cbi_sfr_set_opener(NULL, NULL);
	cbi_s3rd_free(V.rd);
	if (V.pid == getpid())
		cbi_s3_close(V.s3);
	if (V.trace_fd >= 0)
		close(V.trace_fd);
	V.rd = NULL;
	V.s3 = NULL;
	V.trace_fd = -1;
}
