/* state.c - per-job local state (a copy of the newest index). */
#define _GNU_SOURCE
#include "state.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "dest.h"
#include "index.h"
#include "keyfile.h"
#include "sfile.h"
#include "util.h"

/* Each index of state directory dir (one job's) that reads as one, through
 * fn; one that does not is reported through fn with rc != 0 and the reason
 * in why. A directory that is missing holds none. */
typedef void (*idx_fn)(void *ud, int rc, const cbi_point *p, const char *why);

static int each_index(const char *dir, idx_fn fn, void *ud)
{
	char path[4096], why[700];
	cbi_dest *d = NULL;
	int rc = cbi_dest_scan(dir, CBI_DEST_MISSING_OK, &d, NULL);
	if (rc)
		return rc;
	for (size_t i = 0; i < d->n; i++) {
		const cbi_dent *e = &d->e[i];
		if (e->kind != CBI_DENT_POINT || !cbi_has_ext(e->name, ".cbx"))
			continue;
		cbi_point p;
		cbi_error er;
		cbi_index *x = NULL;
		memset(&p, 0, sizeof p);
		memset(&er, 0, sizeof er);
		if (cbi_dest_path(d, e, path, sizeof path))
			rc = cbi_err(&er, -ENAMETOOLONG, "path too long");
		else if (!(rc = cbi_index_open(path, &x, &er)) && !(x->hdr.flags & CBI_HDR_ENCRYPTED) &&
			 (rc = cbi_index_check_digest(x)))
			/* An encrypted index's digest is a MAC: the backup checks it once
			 * it holds the key. */
			cbi_err(&er, rc, "%s", rc == -CBI_EDAMAGED ? "digest mismatch" : cbi_strerror(rc));
		if (!rc)
			cbi_point_from_index(&p, x);
		cbi_index_close(x);
		if (rc)
			snprintf(why, sizeof why, "'%.300s': %.380s", path, er.msg[0] ? er.msg : cbi_strerror(rc));
		fn(ud, rc, &p, rc ? why : NULL);
		rc = 0;
	}
	cbi_dest_free(d);
	return 0;
}

typedef struct load_arg {
	cbi_point *tip;
	int *found;
	int bad_rc;             /* the first state index that is damaged, and why */
	cbi_error bad;
} load_arg;

static void load_one(void *ud, int rc, const cbi_point *p, const char *why)
{
	load_arg *a = ud;
	if (rc) {
		if (!a->bad_rc)
			a->bad_rc = cbi_err(&a->bad, -CBI_EDAMAGED, "%s", why);
	} else if (!*a->found || p->created_ns > a->tip->created_ns) {
		*a->tip = *p;
		*a->found = 1;
	}
}

int cbi_state_load(const char *state_dir, uint64_t key, cbi_point *tip, int *found, cbi_error *err)
{
	char dir[4096];
	*found = 0;
	if (cbi_job_state_dir(state_dir, key, dir, sizeof dir))
		return cbi_err(err, -ENAMETOOLONG, "state directory path too long: '%s'", state_dir);
	load_arg a = { .tip = tip, .found = found };
	int rc = each_index(dir, load_one, &a);
	if (rc)
		return cbi_err(err, rc, "unable to read the local state '%s': %s", dir, cbi_strerror(rc));
	if (!*found && a.bad_rc) /* index files, but none intact */
		return cbi_err(err, a.bad_rc, "%s", a.bad.msg);
	return 0;
}

typedef struct snap_arg {
	cbi_point *v;
	size_t n, cap;
	int nomem;
} snap_arg;

static void snap_one(void *ud, int rc, const cbi_point *p, const char *why)
{
	snap_arg *a = ud;
	(void)why;
	if (rc || a->nomem) /* damaged, or replaced by a backup while read: not compared */
		return;
	if (a->n == a->cap) {
		size_t cap = a->cap ? 2 * a->cap : 16;
		cbi_point *v = realloc(a->v, cap * sizeof *v);
		if (!v) {
			a->nomem = 1;
			return;
		}
		a->v = v;
		a->cap = cap;
	}
	a->v[a->n++] = *p;
}

int cbi_state_snapshot(const char *state_dir, cbi_point **out, size_t *n)
{
	snap_arg a = { 0 };
	cbi_dest *d = NULL;
	char dir[4096];
	*out = NULL;
	*n = 0;
	int rc = cbi_dest_scan(state_dir, CBI_DEST_MISSING_OK, &d, NULL);
	if (rc)
		return rc;
	for (size_t i = 0; i < d->n && !rc; i++) {
		const char *name = d->e[i].name;
		if (strlen(name) != 16 || strspn(name, "0123456789abcdef") != 16 ||
		    cbi_dest_path(d, &d->e[i], dir, sizeof dir))
			continue;
		rc = each_index(dir, snap_one, &a);
		if (rc == -ENOTDIR)
			rc = 0;
	}
	cbi_dest_free(d);
	if (!rc && a.nomem)
		rc = -ENOMEM;
	if (rc) {
		free(a.v);
		return rc;
	}
	*out = a.v;
	*n = a.n;
	return 0;
}

/* A joined copy: a split index (segments) becomes one file here. */
static int copy_file(const char *from, const char *to)
{
	int out = cbi_create_tmp(to, 0600);
	if (out < 0)
		return out;
	int rc = cbi_sfile_copy_joined(from, out, NULL);
	if (!rc && fsync(out) < 0)
		rc = -errno;
	if (close(out) < 0 && !rc)
		rc = -errno;
	return rc;
}

/* Copy from to dir/name through a temporary name. */
static int install_copy(const char *dir, const char *name, const char *from, cbi_error *err)
{
	char tmp[4096], fin[4096];
	snprintf(tmp, sizeof tmp, "%.3000s/.%.1000s.%ld.tmp", dir, name, (long)getpid());
	snprintf(fin, sizeof fin, "%.3000s/%.1000s", dir, name);
	int rc = copy_file(from, tmp);
	if (rc) {
		unlink(tmp);
		return cbi_err(err, rc, "unable to write state '%s': %s", tmp, cbi_strerror(rc));
	}
	if (rename(tmp, fin) < 0) {
		rc = -errno;
		unlink(tmp);
		return cbi_err(err, rc, "unable to write state '%s': %s", fin, cbi_strerror(rc));
	}
	return 0;
}

int cbi_state_save(const char *state_dir, uint64_t key, const char *index_path, const cbi_keys *keys,
		   const char *pass, size_t passlen, cbi_error *err)
{
	char dir[4096];
	if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
		return cbi_err(err, -errno, "unable to create state directory '%s': %s", state_dir,
			       strerror(errno));
	if (cbi_job_state_dir(state_dir, key, dir, sizeof dir))
		return cbi_err(err, -ENAMETOOLONG, "state directory path too long: '%s'", state_dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return cbi_err(err, -errno, "unable to create state directory '%s': %s", dir, strerror(errno));
	const char *base = strrchr(index_path, '/');
	base = base ? base + 1 : index_path;
	int rc;
	if (keys) {
		static const cbi_kdf_params cheap = { CBI_STATE_KDF_LOG2_N, CBI_STATE_KDF_R, CBI_STATE_KDF_P };
		cbi_keyfile kf;
		char kp[4096];
		snprintf(kp, sizeof kp, "%.3000s/" CBI_STATE_KEY_NAME, dir);
		if ((rc = cbi_keyfile_wrap(&kf, keys, pass, passlen, &cheap)))
			return cbi_err(err, rc, "unable to wrap the state's key: %s", cbi_strerror(rc));
		if ((rc = cbi_keyfile_write(kp, &kf, err)))
			return rc;
	}
	if ((rc = install_copy(dir, base, index_path, err)))
		return rc;
	/* The new state's name must be durable before the old one goes. */
	if ((rc = cbi_fsync_dir(dir)))
		return cbi_err(err, rc, "unable to sync state directory '%s': %s", dir, cbi_strerror(rc));
	/* Only now drop the older state: a crash above leaves the old one. */
	cbi_dest *d = NULL;
	if (cbi_dest_scan(dir, 0, &d, NULL) == 0) {
		char path[4096];
		for (size_t i = 0; i < d->n; i++) {
			const char *name = d->e[i].name;
			if (!strcmp(name, base) || (keys && !strcmp(name, CBI_STATE_KEY_NAME)) ||
			    !strcmp(name, CBI_STATE_DEST_FS_NAME) ||
			    cbi_dest_path(d, &d->e[i], path, sizeof path))
				continue;
			unlink(path);
		}
		cbi_dest_free(d);
		if ((rc = cbi_fsync_dir(dir)))
			return cbi_err(err, rc, "unable to sync state directory '%s': %s", dir, cbi_strerror(rc));
	}
	return 0;
}
