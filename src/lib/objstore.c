/* objstore.c - DEST on object storage (s3://BUCKET/PREFIX): backup runs the
 * ordinary writer on a local staging directory, but its image is streamed
 * to its object while it is made (backup.h's hooks, s3up.h: a multipart
 * upload in bounded memory, no local copy); then the key file, the image
 * completed, and last the index: the commit, only while the job's lock
 * object is held (its lease renewed meanwhile, s3lease.h); the read
 * commands run on a local directory that mirrors the bucket's indexes and
 * key files (and, for restore, verify and mount, stand-ins for the images,
 * whose reads become ranged GETs: objview.h). README.md and format/SPEC.md ("Object
 * storage") say why, and what the layout and the lock are.
 *
 *     STATE/s3/<where>/cache/       indexes and key files as in the bucket (each with
 *                                   .NAME.etag, the version cached), stand-ins
 *                                   for images (sparse: only their first and last
 *                                   64 KiB), and the catalog cache of list and info
 *     STATE/s3/<where>/job-<key>/   a job's staging directory: its parent's index, key
 *                                   files, the index being written; state/ the shadow
 *                                   of the job's local state the run updates, installed
 *                                   in STATE/<key>/ only after the S3 commit
 *     STATE/s3/<where>/run-<pid>/   restore's, verify's and mount's view (links to the cache),
 *                                   removed at the end of the run
 *
 * where <where> is 16 hex digits of XXH3-64 of "endpoint NUL bucket NUL
 * prefix", and a file "origin" beside them names them. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "backup.h"
#include "catalog.h"
#include "cbimg.h"
#include "job.h"
#include "objstore.h"
#include "objview.h"
#include "s3.h"
#include "s3lease.h"
#include "s3up.h"
#include "source.h"
#include "util.h"

#define LOCK_LEASE_S_DEFAULT (12 * 3600)

typedef struct os_ctx {
	char url[700];
	char bucket[64];
	char prefix[600];   /* "" or "a/b" */
	char kp[620];       /* key prefix: "" or "a/b/" */
	cbi_s3_cfg cfg;
	cbi_s3 *s3;
	char base[4096];    /* STATE/s3/<where> */
	cbi_s3_obj *objs;   /* the LIST of the prefix */
	size_t nobjs;
} os_ctx;

int cbi_objstore_is_url(const char *dest)
{
	return dest && !strncmp(dest, "s3://", 5);
}

static int mkdirs(const char *path)
{
	char p[4096];
	cbi_strlcpy(p, path, sizeof p);
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(p, 0700) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdir(p, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void os_close(os_ctx *c)
{
	cbi_s3_close(c->s3);
	free(c->objs);
	c->s3 = NULL;
	c->objs = NULL;
}

static int os_open(os_ctx *c, const char *url, const char *endpoint, const char *state_dir, cbi_error *err)
{
	memset(c, 0, sizeof *c);
	int rc = cbi_s3_url_parse(url, c->bucket, sizeof c->bucket, c->prefix, sizeof c->prefix, err);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return cbi_err(err, -CBI_EUSAGE, "'%s' is not an s3:// URL", url);
	cbi_strlcpy(c->url, url, sizeof c->url);
	snprintf(c->kp, sizeof c->kp, "%s%s", c->prefix, c->prefix[0] ? "/" : "");
	if ((rc = cbi_s3_cfg_load(&c->cfg, endpoint, err)))
		return rc;
	char id[1300];
	int n = snprintf(id, sizeof id, "%s%c%s%c%s", c->cfg.endpoint, 0, c->bucket, 0, c->prefix);
	uint64_t h = XXH3_64bits(id, (size_t)n);
	const char *sd = state_dir && *state_dir ? state_dir : CBI_DEFAULT_STATE_DIR;
	snprintf(c->base, sizeof c->base, "%.3000s/s3/%016llx", sd, (unsigned long long)h);
	if ((rc = mkdirs(c->base)))
		return cbi_err(err, rc, "unable to create '%s': %s", c->base, cbi_strerror(rc));
	char op[4200];
	snprintf(op, sizeof op, "%s/origin", c->base);
	if (access(op, F_OK) < 0) {
		FILE *f = fopen(op, "w");
		if (f) {
			fprintf(f, "endpoint %s\nbucket %s\nprefix %s\n", c->cfg.endpoint[0] ? c->cfg.endpoint : "AWS",
				c->bucket, c->prefix);
			fclose(f);
		}
	}
	return cbi_s3_open(&c->cfg, c->bucket, &c->s3, err);
}

static int os_list(os_ctx *c, cbi_error *err)
{
	free(c->objs);
	c->objs = NULL;
	c->nobjs = 0;
	return cbi_s3_list(c->s3, c->kp, &c->objs, &c->nobjs, err);
}

/* The object's name below the prefix, or NULL when it is deeper (a
 * "directory") or another prefix's. */
static const char *os_name(const os_ctx *c, const char *key)
{
	size_t l = strlen(c->kp);
	if (strncmp(key, c->kp, l) || strchr(key + l, '/') || !key[l])
		return NULL;
	return key + l;
}

static int os_has(const os_ctx *c, const char *name)
{
	for (size_t i = 0; i < c->nobjs; i++) {
		const char *n = os_name(c, c->objs[i].key);
		if (n && !strcmp(n, name))
			return 1;
	}
	return 0;
}

static void os_key(const os_ctx *c, const char *name, char *out, size_t sz)
{
	snprintf(out, sz, "%s%s", c->kp, name);
}

static int is_point_file(const char *name)
{
	return name[0] != '.' && (cbi_has_ext(name, ".cbx") || cbi_has_ext(name, ".cbi") ||
				  cbi_has_ext(name, ".cbk"));
}

/* Make dir hold exactly the bucket's files among its .cbx/.cbk/.cbi that
 * exist in the listing (others removed), and fetch those the filter wants
 * that are missing. */
typedef int (*want_fn)(const char *name, void *ud); /* 0: no, 1: the object, 2: its ends */

#define ENDS_BYTES (64 * 1024)

/* A stand-in for a large object: a sparse file of its size holding only
 * its first and last ENDS_BYTES (header, trailer and the end of the block
 * table of an image: what list and info read), by two ranged GETs. */
static int fetch_ends(os_ctx *c, const char *key, const char *path, uint64_t size, cbi_error *err)
{
	char tmp[4600];
	snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
	int fd = cbi_create_tmp(tmp, 0600);
	if (fd < 0)
		return cbi_err(err, fd, "unable to create '%s': %s", tmp, cbi_strerror(fd));
	char *buf = malloc(ENDS_BYTES);
	int rc = buf ? 0 : cbi_err(err, -ENOMEM, "out of memory");
	if (!rc && ftruncate(fd, (off_t)size) < 0)
		rc = cbi_err(err, -errno, "unable to size '%s': %s", tmp, strerror(errno));
	uint64_t offs[2] = { 0, size > ENDS_BYTES ? size - ENDS_BYTES : 0 };
	for (int i = 0; i < 2 && !rc && size; i++) {
		size_t got = 0, want = size - offs[i] < ENDS_BYTES ? (size_t)(size - offs[i]) : ENDS_BYTES;
		if (!(rc = cbi_s3_get(c->s3, key, offs[i], want, buf, ENDS_BYTES, &got, err)) && got != want)
			rc = cbi_err(err, -EIO, "s3://%s/%s: short ranged read", c->bucket, key);
		if (!rc && cbi_pwrite_full(fd, buf, got, offs[i]))
			rc = cbi_err(err, -EIO, "unable to write '%s'", tmp);
	}
	free(buf);
	close(fd);
	if (!rc && rename(tmp, path) < 0)
		rc = cbi_err(err, -errno, "unable to rename '%s': %s", tmp, strerror(errno));
	if (rc)
		unlink(tmp);
	return rc;
}

/* The cache's record of which version of an object a cached file is: the
 * object's ETag as LIST gave it, in ".NAME.etag" beside the file (a name
 * the destination scanner never takes). A file whose object changed but
 * kept its size (a damaged or replaced index) is fetched again, so that
 * list, info and verify see the bucket, not an old copy. Written after the
 * file: a missing or stale record only costs a fetch. */
static int etag_path(const char *dir, const char *name, char *out, size_t sz)
{
	int n = snprintf(out, sz, "%s/.%s.etag", dir, name);
	return n < 0 || (size_t)n >= sz ? -ENAMETOOLONG : 0;
}

static int etag_same(const char *dir, const char *name, const char *etag)
{
	char p[4600], have[CBI_S3_ETAG_MAX + 1];
	if (!etag[0]) /* the server sent none: the size alone, as before */
		return 1;
	if (etag_path(dir, name, p, sizeof p))
		return 0;
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	size_t k = fread(have, 1, sizeof have - 1, f);
	fclose(f);
	have[k] = 0;
	return !strcmp(have, etag);
}

static void etag_put(const char *dir, const char *name, const char *etag)
{
	char p[4600];
	if (etag_path(dir, name, p, sizeof p))
		return;
	if (!etag[0]) {
		unlink(p);
		return;
	}
	FILE *f = fopen(p, "we");
	if (!f)
		return; /* the next run fetches the file again: nothing lost */
	fputs(etag, f);
	if (fclose(f))
		unlink(p);
}

static int os_sync(os_ctx *c, const char *dir, want_fn want, void *ud, cbi_error *err)
{
	DIR *d = opendir(dir);
	if (!d)
		return cbi_err(err, -errno, "unable to read '%s': %s", dir, strerror(errno));
	struct dirent *e;
	char path[4500], key[1700];
	while ((e = readdir(d))) {
		if (!is_point_file(e->d_name) || os_has(c, e->d_name))
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		unlink(path); /* gone from the bucket (pruned, or never committed) */
		if (!etag_path(dir, e->d_name, path, sizeof path))
			unlink(path);
	}
	closedir(d);
	for (size_t i = 0; i < c->nobjs; i++) {
		const char *n = os_name(c, c->objs[i].key);
		int w = n && is_point_file(n) ? want(n, ud) : 0;
		if (!w)
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, n);
		struct stat st;
		if (lstat(path, &st) == 0 && (uint64_t)st.st_size == c->objs[i].size &&
		    etag_same(dir, n, c->objs[i].etag))
			continue;
		os_key(c, n, key, sizeof key);
		int rc = w == 2 && c->objs[i].size > 2 * ENDS_BYTES ? fetch_ends(c, key, path, c->objs[i].size, err)
								    : cbi_s3_get_file(c->s3, key, path, !cbi_has_ext(n, ".cbi"), err);
		if (rc)
			return rc;
		etag_put(dir, n, c->objs[i].etag);
	}
	return 0;
}

/* ------------------------------------------------------------------ lock */

static int os_lock_key(const os_ctx *c, uint64_t jk, char *out, size_t sz)
{
	return snprintf(out, sz, "%s.cbimg-lock-%016llx", c->kp, (unsigned long long)jk);
}

/* The lock object of a job: created only if absent (If-None-Match), its
 * body s3lease.h's (host, pid, the run's random token, expires_ns). A
 * lock is taken over when its lease has expired, or when it names this
 * host and a pid that is not running (a killed run of this machine). On
 * success *mine is the body written, *lease_ns the lease, *sent when its
 * request was sent (CLOCK_MONOTONIC): what the renewal (s3lease.h) needs. */
static int os_lock(os_ctx *c, uint64_t jk, const char *host, const char *what, const char *source, int op,
		   char *note, size_t nsz, cbi_s3lock *mine, int64_t *lease_ns, int64_t *sent, cbi_error *err)
{
	char key[700], body[512], got[512];
	os_lock_key(c, jk, key, sizeof key);
	long lease = 0;
	const char *lv = getenv("CBIMG_S3_LEASE");
	lease = lv && *lv ? strtol(lv, NULL, 10) : LOCK_LEASE_S_DEFAULT;
	if (lease < 1)
		lease = LOCK_LEASE_S_DEFAULT;
	*lease_ns = (int64_t)lease * 1000000000LL;
	uint8_t tok[8];
	if (cbi_random(tok, sizeof tok))
		return cbi_err(err, -EIO, "no random bytes for the lock of job '%s'", what);
	memset(mine, 0, sizeof *mine);
	cbi_strlcpy(mine->host, host, sizeof mine->host);
	mine->pid = (long)getpid();
	if (cbi_job_op_name(op)) /* what it is doing, for a refused run's message (revision 2.11) */
		cbi_strlcpy(mine->op, cbi_job_op_name(op), sizeof mine->op);
	for (size_t i = 0; i < sizeof tok; i++)
		snprintf(mine->run + 2 * i, 3, "%02x", tok[i]);
	for (int attempt = 0; attempt < 2; attempt++) {
		*sent = cbi_s3lease_mono_ns();
		int64_t now = cbi_wallclock_ns();
		mine->expires_ns = now + *lease_ns;
		int n = cbi_s3lock_body(body, sizeof body, mine);
		if (n < 0)
			return cbi_err(err, n, "host name too long for the lock of job '%s'", what);
		int rc = cbi_s3_put(c->s3, key, body, (size_t)n, 1, err);
		if (rc != -EEXIST)
			return rc;
		size_t gl = 0;
		rc = cbi_s3_get(c->s3, key, 0, 0, got, sizeof got - 1, &gl, err);
		if (rc == -ENOENT)
			continue; /* released meanwhile */
		if (rc)
			return rc;
		got[gl] = 0;
		cbi_s3lock l;
		cbi_s3lock_parse(got, &l); /* an unreadable body: expired (0), taken over */
		int lop = cbi_job_op_parse(l.op); /* what the holder does, when its body says (2.11); else -1 */
		int dead_here = !strcmp(l.host, host) && l.pid > 0 && kill((pid_t)l.pid, 0) < 0 && errno == ESRCH;
		if (dead_here || l.expires_ns < now) {
			const char *by = lop == CBI_JOB_OP_PRUNE ? "a prune on " : lop == CBI_JOB_OP_BACKUP ? "a backup on " : "";
			snprintf(note, nsz, "took over the lock of job '%.63s' in '%.300s' left by %s%.63s pid %ld (%s)", what,
				 c->url, by, l.host, l.pid, dead_here ? "not running" : "lease expired");
			cbi_s3_delete(c->s3, key, err);
			continue;
		}
		char who[200], msg[sizeof err->msg];
		snprintf(who, sizeof who, "host %.127s, pid %ld", l.host, l.pid);
		cbi_lock_refusal(msg, sizeof msg, lop, who, what, source, c->url); /* -1: never a guess */
		return cbi_err(err, -CBI_ELOCKED, "%s (lock object '%s', lease until %lld s after the epoch)", msg, key,
			       l.expires_ns / 1000000000LL);
	}
	return cbi_err(err, -CBI_ELOCKED, "unable to take the lock of job '%s' in '%s'", what, c->url);
}

/* The renewal of the lease of job jk's lock object (mine, from os_lock()),
 * in a thread of its own until cbi_s3lease_stop() (s3lease.h): the same
 * for a backup and a prune. on_lost as there (may be NULL). */
static int os_lease(os_ctx *c, uint64_t jk, const char *job, const cbi_s3lock *mine, int64_t lease_ns,
		    int64_t sent, void (*on_lost)(void *ud, int code, const char *why), void *ud, cbi_s3lease **out,
		    cbi_error *err)
{
	char lkey[700], what[800];
	os_lock_key(c, jk, lkey, sizeof lkey);
	snprintf(what, sizeof what, "job '%.63s' in '%.600s'", job, c->url);
	return cbi_s3lease_start(c->s3, lkey, mine, lease_ns, sent, what, on_lost, ud, out, err);
}

/* Delete the job's lock object, unless it is no longer this run's (taken
 * over after the lease was lost: s3lease.h). */
static void os_unlock(os_ctx *c, uint64_t jk, const cbi_s3lock *mine)
{
	char key[700], got[512];
	cbi_error e;
	size_t gl = 0;
	cbi_s3lock l;
	os_lock_key(c, jk, key, sizeof key);
	if (mine && !cbi_s3_get(c->s3, key, 0, 0, got, sizeof got - 1, &gl, &e)) {
		got[gl] = 0;
		if (cbi_s3lock_parse(got, &l) || strcmp(l.run, mine->run))
			return;
	}
	cbi_s3_delete(c->s3, key, &e);
}

/* ----------------------------------------------------------------- state */

/* Copy every regular file of from into to (created), or back. */
static int copy_dir_files(const char *from, const char *to)
{
	DIR *d = opendir(from);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	int rc = mkdirs(to);
	struct dirent *e;
	char a[4500], b[4500];
	while (!rc && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(a, sizeof a, "%s/%s", from, e->d_name);
		snprintf(b, sizeof b, "%s/.%s.tmp", to, e->d_name);
		int in = open(a, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (in < 0)
			continue;
		int out = open(b, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (out < 0) {
			rc = -errno;
			close(in);
			break;
		}
		char buf[65536];
		ssize_t r;
		while ((r = read(in, buf, sizeof buf)) > 0)
			if (write(out, buf, (size_t)r) != r) {
				rc = -EIO;
				break;
			}
		if (!rc && fsync(out) < 0)
			rc = -errno;
		close(in);
		close(out);
		snprintf(a, sizeof a, "%s/%s", to, e->d_name);
		if (!rc && rename(b, a) < 0)
			rc = -errno;
	}
	closedir(d);
	return rc;
}

static void rm_files(const char *dir, int and_dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	char p[4500];
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		unlink(p);
	}
	closedir(d);
	if (and_dir)
		rmdir(dir);
}

/* The job's local state follows a point only once the bucket holds it:
 * the backup saves its state into a shadow copy, installed here after the
 * commit. The new files first (each through a temporary name), then the
 * files the shadow no longer has, so that a crash in between leaves a
 * state that names the new point or the old one. */
static int state_install(const char *shadow, const char *sdir)
{
	int rc = copy_dir_files(shadow, sdir);
	if (rc)
		return rc;
	if ((rc = cbi_fsync_dir(sdir)))
		return rc;
	DIR *d = opendir(sdir);
	if (!d)
		return -errno;
	struct dirent *e;
	char a[4500], b[4500];
	struct stat st;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(a, sizeof a, "%.4200s/%.255s", shadow, e->d_name);
		snprintf(b, sizeof b, "%.4200s/%.255s", sdir, e->d_name);
		if (lstat(a, &st) < 0 && errno == ENOENT)
			unlink(b);
	}
	closedir(d);
	return cbi_fsync_dir(sdir);
}

/* ---------------------------------------------------------------- backup */

void cbi_objstore_subst(char *s, size_t sz, const char *from, const char *to)
{
	char out[4096];
	size_t o = 0, fl = strlen(from), tl = strlen(to);
	if (!fl || sz > sizeof out)
		return;
	for (const char *p = s; *p && o + 1 < sz;) {
		if (!strncmp(p, from, fl)) {
			size_t n = tl < sz - 1 - o ? tl : sz - 1 - o;
			memcpy(out + o, to, n);
			o += n;
			p += fl;
		} else {
			out[o++] = *p++;
		}
	}
	out[o] = 0;
	memcpy(s, out, o + 1);
}

static void name_bucket(cbi_backup_result *r, cbi_error *err, const char *stage, const char *url)
{
	cbi_objstore_subst(r->notice, sizeof r->notice, stage, url);
	cbi_objstore_subst(r->warning, sizeof r->warning, stage, url);
	for (unsigned i = 0; i < r->n_warnings && i < CBI_MAX_WARNINGS; i++)
		cbi_objstore_subst(r->warnings[i], sizeof r->warnings[i], stage, url);
	if (err)
		cbi_objstore_subst(err->msg, sizeof err->msg, stage, url);
}

typedef struct job_want {
	const char *jp; /* "HOST_SRC_JOB_" */
	char tip[1024];
} job_want;

static int want_job(const char *name, void *ud)
{
	job_want *w = ud;
	size_t l = strlen(w->jp);
	if (strncmp(name, w->jp, l))
		return 0;
	if (cbi_has_ext(name, ".cbk"))
		return 1;
	return !strcmp(name, w->tip);
}

void cbi_objstore_name_order(const char *name, char *out, size_t sz, size_t *jpl)
{
	out[0] = 0;
	size_t l = strlen(name);
	if (l < 4 + 8 + 1 + 5 + 1 + 16 + 1)
		return;
	const char *id = name + l - 4 - 8, *p = id - 1;
	if (*p != '_')
		return;
	const char *de = p;
	while (p > name && p[-1] >= '0' && p[-1] <= '9')
		p--;
	size_t nd = (size_t)(de - p);
	if (nd < 4 || nd > 10 || p - name < 4 + 1 + 16)
		return;
	const char *type = p - 4;
	if (strncmp(type, "full", 4) && strncmp(type, "incr", 4))
		return;
	const char *ts = type - 1 - 16;
	if (type[-1] != '_' || ts - name < 6 || ts[-1] != '_' || ts[8] != 'T' || ts[15] != 'Z')
		return;
	for (int i = 0; i < 15; i++)
		if (i != 8 && (ts[i] < '0' || ts[i] > '9'))
			return;
	snprintf(out, sz, "%.16s %010llu", ts, strtoull(p, NULL, 10));
	if (jpl)
		*jpl = (size_t)(ts - name);
}

/* A backup run's streaming of its image (s3up.h) and its lease (s3lease.h):
 * the hooks of cbi_backup_hooked() and its progress callback. */
typedef struct os_run {
	os_ctx *c;
	cbi_s3up *up;
	cbi_s3lease *lease;
	char img_key[1700];
	cbi_progress_fn progress; /* the caller's */
	void *progress_ud;
} os_run;

static int os_img_begin(void *ud, const char *path, uint64_t max_size, cbi_error *err)
{
	os_run *w = ud;
	const char *b = strrchr(path, '/');
	os_key(w->c, b ? b + 1 : path, w->img_key, sizeof w->img_key);
	return cbi_s3up_begin(w->up, w->img_key, max_size, err);
}

static int os_img_write(void *ud, const void *buf, size_t len)
{
	return cbi_s3up_write(((os_run *)ud)->up, buf, len);
}

/* The lease lost (the renewal's thread): the upload fails from now on. */
static void os_lost(void *ud, int code, const char *why)
{
	cbi_s3up_stop(((os_run *)ud)->up, code, why);
}

/* Stops the read as soon as the lock is not held (a renewal stuck in a
 * stalled request cannot tell), else the caller's progress. */
static int os_progress(void *ud, uint64_t done, uint64_t total)
{
	os_run *w = ud;
	if (cbi_s3lease_held(w->lease, NULL))
		return 1;
	return w->progress ? w->progress(w->progress_ud, done, total) : 0;
}

/* The run's end in the staging directory's run history (cbimg log), put
 * off by cbi_backup_hooked() (hooks' run_id) until the run's outcome is
 * known: ok only once the index object is committed, else failed with its
 * error (naming the bucket), and no point. */
static void os_run_end(const char *stage, int64_t *run_id, int rc, const cbi_error *err, cbi_backup_result *r)
{
	cbi_error ce;
	const char *msg = rc ? (err && err->msg[0] ? err->msg : cbi_strerror(rc)) : r->warning;
	/* the staging directory is no outbox, whatever its indexes look like
	 * (after a prune rolled the full forward, incrementals only) */
	if (*run_id && cbi_catalog_run_end_kept(stage, *run_id, rc, msg, r, &ce) && r->n_warnings < CBI_MAX_WARNINGS)
		cbi_strlcpy(r->warnings[r->n_warnings++], ce.msg, sizeof r->warnings[0]);
	*run_id = 0;
}

/* The backup: the job's lock object (renewed while the run lasts), its
 * leftovers aborted, the staging directory with the parent's index and key
 * files; then cbi_backup_hooked() writes the point there, but streams the
 * image to its object as it is made (s3up.h: a multipart upload, parts
 * sent while the read goes on, a few part buffers of memory, no local
 * copy); last the key file, the image object completed, and the index
 * object: the commit, made only while the lock is held. */
int cbi_objstore_backup(const cbi_backup_opts *o, const char *endpoint, cbi_backup_result *r, cbi_error *err)
{
	os_ctx c;
	char note[600] = "";
	cbi_s3lock mine;
	int64_t lease_ns = 0, lock_sent = 0, run_id = 0;
	int locked = 0;
	char stage[4200];
	os_run run = { .c = &c, .progress = o->progress, .progress_ud = o->progress_ud };
	memset(r, 0, sizeof *r);
	int rc = os_open(&c, o->dest, endpoint, o->state_dir, err);
	if (rc)
		goto end0;
	if (o->outbox)
		return os_close(&c), cbi_err(err, -CBI_EUSAGE, "--outbox has no meaning for an S3 destination");
	/* the job's identity, as backup will make it */
	char host[64] = "", sid[128] = "";
	if (o->host && *o->host)
		cbi_strlcpy(host, o->host, sizeof host);
	else if (gethostname(host, sizeof host - 1) < 0)
		cbi_strlcpy(host, "localhost", sizeof host);
	if (o->source_id && *o->source_id) {
		cbi_strlcpy(sid, o->source_id, sizeof sid);
	} else {
		cbi_source *src;
		if ((rc = cbi_source_open(o->source, &src, err)))
			goto end0;
		cbi_strlcpy(sid, src->id, sizeof sid);
		cbi_source_close(src);
	}
	const char *job = o->job && *o->job ? o->job : "default";
	uint64_t jk = cbi_state_key(host, sid, job);
	char sh[33], ss[33], sj[33], jp[128];
	size_t pl = strlen(o->source);
	const char *sp = pl > 63 ? o->source + pl - 63 : o->source, *bn = strrchr(sp, '/');
	cbi_sanitize_name(host, sh, sizeof sh);
	cbi_sanitize_name(bn ? bn + 1 : sp, ss, sizeof ss);
	cbi_sanitize_name(job, sj, sizeof sj);
	snprintf(jp, sizeof jp, "%s_%s_%s_", sh, ss, sj);

	if ((rc = os_lock(&c, jk, host, job, o->source, CBI_JOB_OP_BACKUP, note, sizeof note, &mine, &lease_ns,
			  &lock_sent, err)))
		goto end0;
	locked = 1;
	if ((rc = cbi_s3up_new(c.s3, &run.up, err)))
		goto end;
	if ((rc = os_lease(&c, jk, job, &mine, lease_ns, lock_sent, os_lost, &run, &run.lease, err)))
		goto end;
	/* what a killed run of the job left: its multipart uploads */
	cbi_s3_obj *up = NULL;
	size_t nup = 0;
	char upfx[800];
	snprintf(upfx, sizeof upfx, "%s%s", c.kp, jp);
	if ((rc = cbi_s3_list_uploads(c.s3, upfx, &up, &nup, err)))
		goto end;
	for (size_t i = 0; i < nup; i++)
		if ((rc = cbi_s3_abort_upload(c.s3, up[i].key, up[i].upload_id, err))) {
			free(up);
			goto end;
		}
	free(up);
	if (nup && !note[0])
		snprintf(note, sizeof note, "aborted %zu unfinished upload%s of job '%.63s' left in '%.300s'", nup,
			 nup == 1 ? "" : "s", job, c.url);
	if ((rc = os_list(&c, err)))
		goto end;

	/* the staging directory: the job's newest index and its key files */
	char shadow[4300], shdir[4400], sdir[4096];
	snprintf(stage, sizeof stage, "%s/job-%016llx", c.base, (unsigned long long)jk);
	snprintf(shadow, sizeof shadow, "%s/state", stage);
	if ((rc = mkdirs(stage))) {
		rc = cbi_err(err, rc, "unable to create '%s': %s", stage, cbi_strerror(rc));
		goto end;
	}
	job_want w = { .jp = jp };
	char best[64] = "";
	for (size_t i = 0; !o->force_full && i < c.nobjs; i++) {
		const char *n = os_name(&c, c.objs[i].key);
		char sk[64];
		if (!n || strncmp(n, jp, strlen(jp)) || !cbi_has_ext(n, ".cbx"))
			continue;
		cbi_objstore_name_order(n, sk, sizeof sk, NULL);
		if (sk[0] && strcmp(sk, best) > 0) {
			cbi_strlcpy(best, sk, sizeof best);
			cbi_strlcpy(w.tip, n, sizeof w.tip);
		}
	}
	if ((rc = os_sync(&c, stage, want_job, &w, err)))
		goto end;
	/* the run works on a shadow of the job's local state (state_install) */
	const char *state_dir = o->state_dir && *o->state_dir ? o->state_dir : CBI_DEFAULT_STATE_DIR;
	int use_state = !o->no_state && !cbi_job_state_dir(state_dir, jk, sdir, sizeof sdir) &&
			!cbi_job_state_dir(shadow, jk, shdir, sizeof shdir);
	if (use_state) {
		rm_files(shdir, 1); /* a killed run's */
		if ((rc = copy_dir_files(sdir, shdir))) {
			rc = cbi_err(err, rc, "unable to copy the local state '%s': %s", sdir, cbi_strerror(rc));
			goto end;
		}
	}

	cbi_backup_opts lo = *o;
	lo.dest = stage;
	lo.split = CBI_SPLIT_NONE; /* one object per file: multipart uploads have no size limit */
	lo.dest_uuid = NULL;
	lo.outbox = 0;
	lo.host = host;
	lo.source_id = sid;
	lo.progress = os_progress;
	lo.progress_ud = &run;
	if (use_state)
		lo.state_dir = shadow;
	cbi_backup_hooks hk = { .image_begin = os_img_begin, .image_write = os_img_write, .ud = &run,
				.run_id = &run_id };
	rc = cbi_backup_hooked(&lo, &hk, r, err);
	if (rc) {
		/* the upload's own failure (the endpoint, the lease) says more than
		 * "unable to write" or "interrupted" */
		cbi_error ue;
		int urc = cbi_s3up_error(run.up, &ue);
		if (cbi_s3lease_held(run.lease, &ue))
			urc = -CBI_ELOCKED;
		if (urc && urc != -ECANCELED && (rc != -ECANCELED || urc == -CBI_ELOCKED)) {
			rc = urc;
			if (err)
				*err = ue;
		}
	}
	name_bucket(r, err, stage, c.url);
	if (rc) {
		if (err && rc == -CBI_ELOCKED)
			cbi_err_prefix(err, rc, "the backup stopped before its commit, nothing was stored");
		goto end;
	}
	/* the key file, the image completed, then the index, created only if
	 * absent; each only while the lock is held */
	char key[1700];
	const char *img = r->point.file[0] ? strrchr(r->point.file, '/') + 1 : NULL;
	const char *idx = strrchr(r->point.index_file, '/') + 1;
	const char *kfn = r->key_file[0] ? strrchr(r->key_file, '/') + 1 : NULL;
	int key_put = 0, img_put = 0;
	if (kfn && !os_has(&c, kfn) && !(rc = cbi_s3lease_held(run.lease, err))) {
		os_key(&c, kfn, key, sizeof key);
		rc = cbi_s3_put_file(c.s3, key, r->key_file, 1, err);
		if (rc == -EEXIST)
			rc = 0;
		else if (!rc)
			key_put = r->key_file_new;
	}
	if (!rc && img && !(rc = cbi_s3lease_held(run.lease, err)) && !(rc = cbi_s3up_finish(run.up, err)))
		img_put = 1;
	if (!rc && !(rc = cbi_s3lease_held(run.lease, err))) {
		os_key(&c, idx, key, sizeof key);
		rc = cbi_s3_put_file(c.s3, key, r->point.index_file, 1, err); /* the commit */
	}
	if (rc) {
		/* not committed: no point, in the bucket or here */
		cbi_error e2;
		if (img_put)
			cbi_s3_delete(c.s3, run.img_key, &e2);
		if (key_put) {
			os_key(&c, kfn, key, sizeof key);
			cbi_s3_delete(c.s3, key, &e2);
		}
		unlink(r->point.index_file);
		if (r->key_file_new)
			unlink(r->key_file);
		cbi_err_prefix(err, rc, "the point was not stored in '%s'", c.url);
		goto end;
	}
	os_run_end(stage, &run_id, 0, err, r); /* stored: ok */
	if (use_state && (rc = state_install(shdir, sdir))) {
		char wm[600];
		snprintf(wm, sizeof wm, "the point is stored, but the local state '%.400s' was not updated: %s", sdir,
			 cbi_strerror(rc));
		if (r->n_warnings < CBI_MAX_WARNINGS)
			cbi_strlcpy(r->warnings[r->n_warnings++], wm, sizeof r->warnings[0]);
		rc = 0;
	}
	char name[1024];
	if (img) {
		cbi_strlcpy(name, img, sizeof name);
		snprintf(r->point.file, sizeof r->point.file, "s3://%s/%s%s", c.bucket, c.kp, name);
	}
	cbi_strlcpy(name, idx, sizeof name);
	snprintf(r->point.index_file, sizeof r->point.index_file, "s3://%s/%s%s", c.bucket, c.kp, name);
	if (kfn) {
		cbi_strlcpy(name, kfn, sizeof name);
		snprintf(r->key_file, sizeof r->key_file, "s3://%s/%s%s", c.bucket, c.kp, name);
	}
	cbi_s3_counters(c.s3, &r->bytes_sent, &r->bytes_received);
end:
	if (run_id) /* a failed run: failed in the run history too */
		os_run_end(stage, &run_id, rc, err, r);
	cbi_s3lease_stop(run.lease);
	cbi_s3up_free(run.up); /* aborts an unfinished upload */
	if (locked)
		os_unlock(&c, jk, &mine);
end0:
	if (note[0] && r->n_warnings < CBI_MAX_WARNINGS && !rc)
		cbi_strlcpy(r->notice[0] ? r->warnings[r->n_warnings++] : r->notice, note,
			    r->notice[0] ? sizeof r->warnings[0] : sizeof r->notice);
	os_close(&c);
	return rc;
}

/* ----------------------------------------------------------- read views */

/* list and info: indexes and key files, and the ends of images */
static int want_indexes(const char *name, void *ud)
{
	return cbi_has_ext(name, ".cbi") ? 2 : 1;
}

int cbi_objstore_view(const char *url, const char *endpoint, const char *state_dir, int images,
		      const char *point_name, char *dir, size_t dirsz, cbi_error *err)
{
	os_ctx c;
	int rc = os_open(&c, url, endpoint, state_dir, err);
	if (rc)
		goto end;
	char cache[4200];
	snprintf(cache, sizeof cache, "%s/cache", c.base);
	if ((rc = mkdirs(cache))) {
		rc = cbi_err(err, rc, "unable to create '%s': %s", cache, cbi_strerror(rc));
		goto end;
	}
	if ((rc = os_list(&c, err)) || (rc = os_sync(&c, cache, want_indexes, NULL, err)))
		goto end;
	/* the catalog cache, brought in step with the listing (a cache: its
	 * failure is no error); restore, verify and mount read the run's
	 * directory, not the catalog */
	cbi_error ce;
	if (!images && cbi_catalog_sync(cache, 0, NULL, &ce))
		ce.msg[0] = 0;
	if (!images) {
		snprintf(dir, dirsz, "%s", cache);
		goto end;
	}
	/* a directory of this run: links to the cached indexes, and images */
	char run[4200];
	snprintf(run, sizeof run, "%s/run-%ld", c.base, (long)getpid());
	rm_files(run, 1);
	if ((rc = mkdirs(run))) {
		rc = cbi_err(err, rc, "unable to create '%s': %s", run, cbi_strerror(rc));
		goto end;
	}
	DIR *d = opendir(cache);
	struct dirent *e;
	char a[4500], b[4500];
	while (d && (e = readdir(d))) {
		if (!is_point_file(e->d_name)) /* images: their stand-ins, read by ranged GETs (objview.h) */
			continue;
		snprintf(a, sizeof a, "%s/%s", cache, e->d_name);
		snprintf(b, sizeof b, "%s/%s", run, e->d_name);
		if (link(a, b) < 0 && symlink(a, b) < 0) {
			rc = cbi_err(err, -errno, "unable to link '%s': %s", b, strerror(errno));
			break;
		}
	}
	if (d)
		closedir(d);
	(void)point_name; /* every image: nothing is downloaded, a read fetches what it needs */
	if (!rc)
		rc = cbi_objview_start(&c.cfg, c.bucket, c.kp, c.objs, c.nobjs, run, ENDS_BYTES, err);
	if (rc)
		rm_files(run, 1);
	else
		snprintf(dir, dirsz, "%s", run);
end:
	os_close(&c);
	return rc;
}

void cbi_objstore_view_end(const char *dir)
{
	cbi_objview_end();
	const char *b = strrchr(dir, '/');
	if (b && !strncmp(b + 1, "run-", 4))
		rm_files(dir, 1);
}

int cbi_objstore_uploads(const char *url, const char *endpoint, const char *state_dir, size_t *n, cbi_error *err)
{
	os_ctx c;
	cbi_s3_obj *up = NULL;
	*n = 0;
	int rc = os_open(&c, url, endpoint, state_dir, err);
	if (!rc)
		rc = cbi_s3_list_uploads(c.s3, c.kp, &up, n, err);
	free(up);
	os_close(&c);
	return rc;
}

/* ------------------------------------------------- for objprune.c (prune) */

struct cbi_os {
	os_ctx c;
	cbi_s3lock mine;          /* the lock this handle holds (cbi_os_lock) */
	int64_t lease_ns, sent;
	int locked;
	cbi_s3lease *lease;       /* its renewal, while it is held */
};

int cbi_os_open(const char *url, const char *endpoint, const char *state_dir, cbi_os **out, cbi_error *err)
{
	cbi_os *o = calloc(1, sizeof *o);
	if (!o)
		return cbi_err(err, -ENOMEM, "out of memory");
	int rc = os_open(&o->c, url, endpoint, state_dir, err);
	if (rc) {
		cbi_os_close(o);
		return rc;
	}
	*out = o;
	return 0;
}

void cbi_os_close(cbi_os *o)
{
	if (!o)
		return;
	cbi_s3lease_stop(o->lease);
	os_close(&o->c);
	free(o);
}

cbi_s3 *cbi_os_s3(cbi_os *o)
{
	return o->c.s3;
}

const char *cbi_os_bucket(const cbi_os *o)
{
	return o->c.bucket;
}

const char *cbi_os_key_prefix(const cbi_os *o)
{
	return o->c.kp;
}

const char *cbi_os_base(const cbi_os *o)
{
	return o->c.base;
}

int cbi_os_lock(cbi_os *o, uint64_t jk, const char *host, const char *what, const char *source, int op, char *note,
		size_t nsz, cbi_error *err)
{
	int rc = os_lock(&o->c, jk, host, what, source, op, note, nsz, &o->mine, &o->lease_ns, &o->sent, err);
	o->locked = !rc;
	if (!rc && (rc = os_lease(&o->c, jk, what, &o->mine, o->lease_ns, o->sent, NULL, NULL, &o->lease, err)))
		cbi_os_unlock(o, jk);
	return rc;
}

int cbi_os_held(cbi_os *o, cbi_error *err)
{
	return cbi_s3lease_held(o->lease, err);
}

void cbi_os_unlock(cbi_os *o, uint64_t jk)
{
	cbi_s3lease_stop(o->lease);
	o->lease = NULL;
	os_unlock(&o->c, jk, o->locked ? &o->mine : NULL);
	o->locked = 0;
}

void cbi_os_rm_files(const char *dir, int and_dir)
{
	rm_files(dir, and_dir);
}

/* ----------------------------------------------------- log and rebuild */

static int run_cmp(const void *a, const void *b)
{
	const cbi_run *x = a, *y = b;
	if (x->started_ns != y->started_ns)
		return x->started_ns < y->started_ns ? -1 : 1;
	int c = strcmp(x->host, y->host);
	return c ? c : strcmp(x->job, y->job);
}

int cbi_objstore_log(const char *url, const char *endpoint, const char *state_dir, const cbi_list_filter *f,
		     cbi_run **out, size_t *n, cbi_error *err)
{
	os_ctx c;
	*out = NULL;
	*n = 0;
	int rc = os_open(&c, url, endpoint, state_dir, err);
	os_close(&c); /* no request: the runs are local */
	if (rc)
		return rc;
	cbi_list_filter all = { 0 };
	if (f)
		all = *f;
	all.limit = 0;
	DIR *d = opendir(c.base);
	if (!d)
		return 0; /* nothing ever backed up there from here */
	struct dirent *e;
	cbi_run *v = NULL;
	size_t nv = 0;
	while (!rc && (e = readdir(d))) {
		if (strncmp(e->d_name, "job-", 4))
			continue;
		char dir[4400];
		snprintf(dir, sizeof dir, "%s/%s", c.base, e->d_name);
		cbi_run *r = NULL;
		size_t nr = 0;
		if ((rc = cbi_log(dir, &all, &r, &nr, err)))
			break;
		if (!nr) { /* none of this job's runs matches (v may still be NULL) */
			free(r);
			continue;
		}
		cbi_run *t = realloc(v, (nv + nr) * sizeof *v);
		if (!t) {
			free(r);
			rc = cbi_err(err, -ENOMEM, "out of memory");
			break;
		}
		v = t;
		memcpy(v + nv, r, nr * sizeof *r);
		nv += nr;
		free(r);
	}
	closedir(d);
	if (rc) {
		free(v);
		return rc;
	}
	if (nv)
		qsort(v, nv, sizeof *v, run_cmp);
	if (f && f->limit && nv > f->limit) {
		memmove(v, v + nv - f->limit, f->limit * sizeof *v);
		nv = f->limit;
	}
	*out = v;
	*n = nv;
	return 0;
}

int cbi_objstore_rebuild(const char *url, const char *endpoint, const char *state_dir, char *dir, size_t dirsz,
			 cbi_error *err)
{
	os_ctx c;
	int rc = os_open(&c, url, endpoint, state_dir, err);
	os_close(&c);
	if (rc)
		return rc;
	char cache[4200];
	snprintf(cache, sizeof cache, "%s/cache", c.base);
	rm_files(cache, 0); /* every file fetched again, the catalog made anew */
	if ((rc = cbi_objstore_view(url, endpoint, state_dir, 0, NULL, dir, dirsz, err)))
		return rc;
	return cbi_catalog_rebuild(dir, err);
}

void cbi_objstore_read_stats(uint64_t *gets, uint64_t *bytes)
{
	cbi_s3rd_stats st;
	cbi_objview_stats(&st);
	*gets = st.gets;
	*bytes = st.bytes;
}
