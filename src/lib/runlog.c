/* runlog.c - the run history of a DEST without a catalog (runlog.h). */
#define _GNU_SOURCE
#include "runlog.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "job.h"
#include "util.h"

/* ------------------------------------------------------------ one line */

/* The names of enum cbi_run_result, as cbi_run_result_name() gives them
 * (not called: the catalog uses this module). */
static const char *const results[] = { "running", "ok", "failed", "interrupted" };

static const char *result_name(int r)
{
	return r >= CBI_RUN_RUNNING && r <= CBI_RUN_INTERRUPTED ? results[r] : "unknown";
}

static void put_str(FILE *f, const char *key, const char *v)
{
	fprintf(f, ",\"%s\":\"", key);
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* One run as one line. Nanosecond times are strings: they exceed what a
 * double holds exactly (jq). */
static void put_run(FILE *f, const cbi_run *u)
{
	char id[33];
	fprintf(f, "{\"id\":%" PRId64, u->id);
	put_str(f, "host", u->host);
	put_str(f, "source_id", u->source_id);
	put_str(f, "source_path", u->source_path);
	put_str(f, "job", u->job);
	fprintf(f, ",\"started_ns\":\"%" PRId64 "\",\"ended_ns\":\"%" PRId64 "\"", u->started_ns, u->ended_ns);
	put_str(f, "result", result_name(u->result));
	put_str(f, "message", u->message);
	fprintf(f, ",\"bytes_read\":%" PRIu64 ",\"bytes_written\":%" PRIu64 ",\"type\":%d", u->bytes_read,
		u->bytes_written, u->type);
	cbi_id_hex(u->point_id, id);
	put_str(f, "point_id", cbi_is_zero(u->point_id, 16) ? "" : id);
	put_str(f, "file", u->file);
	put_str(f, "index_file", u->index_file);
	if (u->kind == CBI_RUN_PRUNE)
		fprintf(f, ",\"kind\":\"prune\",\"points_removed\":%" PRIu32, u->points_removed);
	fputs("}\n", f);
}

/* A JSON string at *pp (after its opening quote) into out; *pp moves past
 * the closing quote. 0 or -1. */
static int get_str(const char **pp, char *out, size_t outsz)
{
	const char *p = *pp;
	size_t n = 0;
	while (*p && *p != '"') {
		int c = (unsigned char)*p++;
		if (c == '\\') {
			c = (unsigned char)*p++;
			switch (c) {
			case 'n': c = '\n'; break;
			case 't': c = '\t'; break;
			case 'r': c = '\r'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'u': {
				char hex[5] = { 0 };
				for (int i = 0; i < 4; i++)
					if (!(hex[i] = *p++))
						return -1;
				unsigned long v = strtoul(hex, NULL, 16);
				c = v < 0x100 ? (int)v : '?';
				break;
			}
			case 0: return -1;
			default: break; /* \" \\ \/ */
			}
		}
		if (n + 1 < outsz)
			out[n++] = (char)c;
	}
	if (*p != '"')
		return -1;
	out[n] = 0;
	*pp = p + 1;
	return 0;
}

static int hexval(int c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Parse one line written by put_run() (keys in any order, unknown keys
 * skipped). 0 or -1. */
static int get_run(const char *line, cbi_run *u)
{
	const char *p = line;
	char key[32], val[600];
	memset(u, 0, sizeof *u);
	u->result = -1;
	if (*p++ != '{')
		return -1;
	while (*p && *p != '}') {
		if (*p == ',')
			p++;
		if (*p++ != '"' || get_str(&p, key, sizeof key) || *p++ != ':')
			return -1;
		int is_str = *p == '"';
		if (is_str) {
			p++;
			if (get_str(&p, val, sizeof val))
				return -1;
		} else {
			size_t n = strcspn(p, ",}");
			if (!n || n >= sizeof val)
				return -1;
			memcpy(val, p, n);
			val[n] = 0;
			p += n;
		}
		if (!strcmp(key, "id"))
			u->id = strtoll(val, NULL, 10);
		else if (!strcmp(key, "host"))
			cbi_strlcpy(u->host, val, sizeof u->host);
		else if (!strcmp(key, "source_id"))
			cbi_strlcpy(u->source_id, val, sizeof u->source_id);
		else if (!strcmp(key, "source_path"))
			cbi_strlcpy(u->source_path, val, sizeof u->source_path);
		else if (!strcmp(key, "job"))
			cbi_strlcpy(u->job, val, sizeof u->job);
		else if (!strcmp(key, "started_ns"))
			u->started_ns = strtoll(val, NULL, 10);
		else if (!strcmp(key, "ended_ns"))
			u->ended_ns = strtoll(val, NULL, 10);
		else if (!strcmp(key, "result")) {
			for (int r = CBI_RUN_RUNNING; r <= CBI_RUN_INTERRUPTED; r++)
				if (!strcmp(val, results[r]))
					u->result = r;
		} else if (!strcmp(key, "message"))
			cbi_strlcpy(u->message, val, sizeof u->message);
		else if (!strcmp(key, "bytes_read"))
			u->bytes_read = strtoull(val, NULL, 10);
		else if (!strcmp(key, "bytes_written"))
			u->bytes_written = strtoull(val, NULL, 10);
		else if (!strcmp(key, "type"))
			u->type = (int)strtol(val, NULL, 10);
		else if (!strcmp(key, "point_id") && strlen(val) == 32)
			for (int i = 0; i < 16; i++) {
				int hi = hexval(val[2 * i]), lo = hexval(val[2 * i + 1]);
				if (hi < 0 || lo < 0)
					return -1;
				u->point_id[i] = (uint8_t)(hi << 4 | lo);
			}
		else if (!strcmp(key, "file"))
			cbi_strlcpy(u->file, val, sizeof u->file);
		else if (!strcmp(key, "index_file"))
			cbi_strlcpy(u->index_file, val, sizeof u->index_file);
		else if (!strcmp(key, "kind"))
			u->kind = !strcmp(val, "prune") ? CBI_RUN_PRUNE : CBI_RUN_BACKUP;
		else if (!strcmp(key, "points_removed"))
			u->points_removed = (uint32_t)strtoul(val, NULL, 10);
	}
	if (*p != '}' || u->id <= 0 || u->result < 0)
		return -1;
	return 0;
}

/* ------------------------------------------------------------ the file */

static int log_path(const char *dest, char *out, size_t outsz)
{
	return (size_t)snprintf(out, outsz, "%s/" CBI_RUNLOG_NAME, dest) >= outsz ? -ENAMETOOLONG : 0;
}

int cbi_runlog_exists(const char *dest)
{
	char path[4096];
	struct stat st;
	return !log_path(dest, path, sizeof path) && stat(path, &st) == 0;
}

/* Every run of the log (none when there is no file). */
static int load(const char *dest, cbi_run **out, size_t *n, cbi_error *err)
{
	char path[4096];
	*out = NULL;
	*n = 0;
	if (log_path(dest, path, sizeof path))
		return cbi_err(err, -ENAMETOOLONG, "path of the run log in '%s' too long", dest);
	FILE *f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? 0 : cbi_err(err, -errno, "unable to read '%s': %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0, vcap = 0;
	cbi_run *v = NULL;
	int rc = 0;
	while (getline(&line, &cap, f) > 0) {
		cbi_run u;
		if (get_run(line, &u))
			continue; /* a damaged line: the others still count */
		if (*n == vcap) {
			size_t nc = vcap ? 2 * vcap : 64;
			cbi_run *t = realloc(v, nc * sizeof *t);
			if (!t) {
				rc = cbi_err(err, -ENOMEM, "out of memory");
				break;
			}
			v = t;
			vcap = nc;
		}
		v[(*n)++] = u;
	}
	if (!rc && ferror(f))
		rc = cbi_err(err, -EIO, "unable to read '%s'", path);
	free(line);
	fclose(f);
	if (rc) {
		free(v);
		*n = 0;
		return rc;
	}
	*out = v;
	return 0;
}

/* Replace the log with runs v[first..n) (no file when there are none):
 * a new file written front to back, synced, renamed over the old one. */
static int store(const char *dest, const cbi_run *v, size_t n, cbi_error *err)
{
	char path[4096], tmp[4096];
	if (log_path(dest, path, sizeof path) ||
	    (size_t)snprintf(tmp, sizeof tmp, "%s/.cbimg-log-%ld.tmp", dest, (long)getpid()) >= sizeof tmp)
		return cbi_err(err, -ENAMETOOLONG, "path of the run log in '%s' too long", dest);
	if (!n) {
		if (unlink(path) < 0 && errno != ENOENT)
			return cbi_err(err, -errno, "unable to remove '%s': %s", path, strerror(errno));
		return 0;
	}
	size_t first = n > CBI_RUNLOG_MAX ? n - CBI_RUNLOG_MAX : 0;
	int fd = cbi_create_tmp(tmp, 0644);
	if (fd < 0)
		return cbi_err(err, fd, "unable to write '%s': %s", tmp, cbi_strerror(fd));
	FILE *f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		unlink(tmp);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	for (size_t i = first; i < n; i++)
		put_run(f, &v[i]);
	int rc = 0;
	if (fflush(f) || fsync(fileno(f)) < 0)
		rc = -errno;
	if (fclose(f) && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path) < 0)
		rc = -errno;
	if (rc) {
		unlink(tmp);
		return cbi_err(err, rc, "unable to write '%s': %s", path, cbi_strerror(rc));
	}
	if ((rc = cbi_fsync_dir(dest)))
		return cbi_err(err, rc, "unable to sync directory '%s': %s", dest, cbi_strerror(rc));
	return 0;
}

/* Under the run log's lock: the temporary files of writers that died
 * before their rename are no one's. */
static void remove_stale_tmps(const char *dest)
{
	char path[4096];
	DIR *d = opendir(dest);
	struct dirent *de;
	while (d && (de = readdir(d)))
		if (!strncmp(de->d_name, ".cbimg-log-", 11) && cbi_has_ext(de->d_name, ".tmp") &&
		    (size_t)snprintf(path, sizeof path, "%.3000s/%.1000s", dest, de->d_name) < sizeof path)
			unlink(path);
	if (d)
		closedir(d);
}

typedef int (*change_fn)(cbi_run **v, size_t *n, void *arg, cbi_error *err);

/* Load, change and store the log, holding its lock. */
static int change(const char *dest, change_fn fn, void *arg, cbi_error *err)
{
	cbi_joblock lk;
	cbi_run *v = NULL;
	size_t n = 0;
	int rc = cbi_job_lock_at(dest, CBI_LOCK_OFFSET_RUNLOG, 1, &lk, err);
	if (rc)
		return rc;
	if (lk.locked)
		remove_stale_tmps(dest);
	if (!(rc = load(dest, &v, &n, err)) && !(rc = fn(&v, &n, arg, err)))
		rc = store(dest, v, n, err);
	free(v);
	cbi_job_unlock(&lk);
	return rc;
}

typedef struct begin_arg {
	cbi_run u;
} begin_arg;

static int do_begin(cbi_run **v, size_t *n, void *arg, cbi_error *err)
{
	begin_arg *a = arg;
	int64_t max = 0;
	for (size_t i = 0; i < *n; i++) {
		cbi_run *u = &(*v)[i];
		if (u->id > max)
			max = u->id;
		/* we hold the lock of (host, source, job): a run of it still
		 * marked running ended without recording its result */
		if (u->result == CBI_RUN_RUNNING && !strcmp(u->host, a->u.host) &&
		    !strcmp(u->source_id, a->u.source_id) && !strcmp(u->job, a->u.job)) {
			u->result = CBI_RUN_INTERRUPTED;
			if (!u->message[0])
				cbi_strlcpy(u->message, "the run ended without recording its result", sizeof u->message);
		}
	}
	cbi_run *t = realloc(*v, (*n + 1) * sizeof *t);
	if (!t)
		return cbi_err(err, -ENOMEM, "out of memory");
	*v = t;
	a->u.id = max + 1;
	t[(*n)++] = a->u;
	return 0;
}

int cbi_runlog_begin_kind(const char *dest, int kind, const char *host, const char *source_id,
			  const char *source_path, const char *job, int64_t *run_id, cbi_error *err)
{
	begin_arg a;
	memset(&a, 0, sizeof a);
	a.u.kind = kind;
	cbi_strlcpy(a.u.host, host ? host : "", sizeof a.u.host);
	cbi_strlcpy(a.u.source_id, source_id ? source_id : "", sizeof a.u.source_id);
	cbi_strlcpy(a.u.source_path, source_path ? source_path : "", sizeof a.u.source_path);
	cbi_strlcpy(a.u.job, job ? job : "", sizeof a.u.job);
	a.u.started_ns = cbi_wallclock_ns();
	a.u.result = CBI_RUN_RUNNING;
	int rc = change(dest, do_begin, &a, err);
	*run_id = rc ? 0 : a.u.id;
	return rc;
}

int cbi_runlog_begin(const char *dest, const char *host, const char *source_id, const char *source_path,
		     const char *job, int64_t *run_id, cbi_error *err)
{
	return cbi_runlog_begin_kind(dest, CBI_RUN_BACKUP, host, source_id, source_path, job, run_id, err);
}

typedef struct end_arg {
	int64_t id;
	int result, forget;
	const char *message;
	const cbi_backup_result *r;
	uint32_t removed;
	int found;
} end_arg;

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static int do_end(cbi_run **v, size_t *n, void *arg, cbi_error *err)
{
	end_arg *a = arg;
	(void)err;
	for (size_t i = 0; i < *n; i++) {
		cbi_run *u = &(*v)[i];
		if (u->id != a->id)
			continue;
		a->found = 1;
		if (a->forget) {
			memmove(u, u + 1, (*n - i - 1) * sizeof *u);
			(*n)--;
			return 0;
		}
		u->ended_ns = cbi_wallclock_ns();
		u->result = a->result;
		cbi_strlcpy(u->message, a->message ? a->message : "", sizeof u->message);
		u->bytes_read = a->r->bytes_read;
		u->bytes_written = a->r->bytes_written;
		u->points_removed = a->removed;
		const cbi_point *p = &a->r->point;
		if (a->result == CBI_RUN_OK && p->index_file[0]) {
			u->type = p->type;
			memcpy(u->point_id, p->point_id, 16);
			cbi_strlcpy(u->file, p->file[0] ? base_name(p->file) : "", sizeof u->file);
			cbi_strlcpy(u->index_file, base_name(p->index_file), sizeof u->index_file);
		}
		return 0;
	}
	return 0;
}

int cbi_runlog_end_removed(const char *dest, int64_t run_id, int result, const char *message,
			   const cbi_backup_result *r, uint32_t points_removed, int forget, cbi_error *err)
{
	end_arg a = { run_id, result, forget, message, r, points_removed, 0 };
	int rc = change(dest, do_end, &a, err);
	if (!rc && !a.found && !forget)
		rc = cbi_err(err, -ENOENT, "run log in '%s' was replaced while the backup ran", dest);
	return rc;
}

int cbi_runlog_end(const char *dest, int64_t run_id, int result, const char *message,
		   const cbi_backup_result *r, int forget, cbi_error *err)
{
	return cbi_runlog_end_removed(dest, run_id, result, message, r, 0, forget, err);
}

static int match(const char *want, const char *have)
{
	return !want || !*want || !strcmp(want, have);
}

int cbi_runlog_read(const char *dest, const cbi_list_filter *f, cbi_run **out, size_t *n, cbi_error *err)
{
	cbi_run *v = NULL;
	size_t nv = 0, w = 0;
	int rc = load(dest, &v, &nv, err);
	*out = NULL;
	*n = 0;
	if (rc)
		return rc;
	for (size_t i = 0; i < nv; i++)
		if (!f || (match(f->host, v[i].host) && match(f->job, v[i].job) &&
			   (match(f->source, v[i].source_id) || match(f->source, v[i].source_path))))
			v[w++] = v[i];
	size_t first = f && f->limit && w > f->limit ? w - f->limit : 0;
	if (first)
		memmove(v, v + first, (w - first) * sizeof *v);
	*out = v;
	*n = w - first;
	return 0;
}
