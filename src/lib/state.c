/* state.c - per-job local state (a copy of the newest index). */
#define _GNU_SOURCE
#include "state.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "chain.h"
#include "index.h"
#include "keyfile.h"
#include "sfile.h"
#include "util.h"

uint64_t cbi_state_key(const char *host, const char *source_id, const char *job)
{
	char key[512];
	int n = snprintf(key, sizeof key, "%s%c%s%c%s", host, 0, source_id, 0, job);
	return XXH3_64bits(key, (size_t)n);
}

static void key_dir(const char *state_dir, uint64_t key, char *out, size_t outsz)
{
	snprintf(out, outsz, "%.3000s/%016llx", state_dir, (unsigned long long)key);
}

int cbi_state_load(const char *state_dir, uint64_t key, cbi_point *tip, int *found, int *damaged,
		   char *why, size_t whysz)
{
	char dir[4096];
	*found = 0;
	*damaged = 0;
	why[0] = 0;
	key_dir(state_dir, key, dir, sizeof dir);
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *de;
	char path[4096];
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (de->d_name[0] == '.' || n < 5 || strcmp(de->d_name + n - 4, ".cbx"))
			continue;
		snprintf(path, sizeof path, "%.3000s/%.1000s", dir, de->d_name);
		cbi_point p;
		int kind = 0;
		cbi_error e;
		memset(&p, 0, sizeof p);
		int rc = cbi_point_read_file(path, &p, &kind, &e);
		cbi_index *x = NULL;
		/* An encrypted index's digest is a MAC: the backup checks it once
		 * it holds the key. */
		if (!rc && kind == CBI_KIND_INDEX && !(rc = cbi_index_open(path, &x, &e)) &&
		    !(x->hdr.flags & CBI_HDR_ENCRYPTED))
			rc = cbi_index_check_digest(x);
		cbi_index_close(x);
		if (rc || kind != CBI_KIND_INDEX) {
			*damaged = 1;
			snprintf(why, whysz, "'%s': %s", path,
				 rc == -CBI_EDAMAGED ? "digest mismatch" : e.msg);
			continue;
		}
		if (!*found || p.created_ns > tip->created_ns) {
			*tip = p;
			*found = 1;
		}
	}
	closedir(d);
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
		return cbi_err(err, rc, "unable to write state '%s': %s", tmp, cbi_errtext(rc));
	}
	if (rename(tmp, fin) < 0) {
		rc = -errno;
		unlink(tmp);
		return cbi_err(err, rc, "unable to write state '%s': %s", fin, cbi_errtext(rc));
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
	key_dir(state_dir, key, dir, sizeof dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return cbi_err(err, -errno, "unable to create state directory '%s': %s", dir, strerror(errno));
	const char *base = strrchr(index_path, '/');
	base = base ? base + 1 : index_path;
	int rc;
	if (keys) {
		static const cbi_kdf_params cheap = { CBI_STATE_KDF_LOG2_N, CBI_STATE_KDF_R, CBI_STATE_KDF_P };
		cbi_keyfile kf;
		char kp[4096];
		snprintf(kp, sizeof kp, "%.3000s/chain.cbk", dir);
		if ((rc = cbi_keyfile_wrap(&kf, keys, pass, passlen, &cheap)))
			return cbi_err(err, rc, "unable to wrap the state's key: %s", cbi_errtext(rc));
		if ((rc = cbi_keyfile_write(kp, &kf, err)))
			return rc;
	}
	if ((rc = install_copy(dir, base, index_path, err)))
		return rc;
	cbi_fsync_dir(dir);
	/* Only now drop the older state: a crash above leaves the old one. */
	DIR *d = opendir(dir);
	if (d) {
		struct dirent *de;
		char path[4096];
		while ((de = readdir(d))) {
			if (!strcmp(de->d_name, base) || !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
			    (keys && !strcmp(de->d_name, "chain.cbk")))
				continue;
			snprintf(path, sizeof path, "%.3000s/%.1000s", dir, de->d_name);
			unlink(path);
		}
		closedir(d);
		cbi_fsync_dir(dir);
	}
	return 0;
}
