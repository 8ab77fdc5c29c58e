/* destfs.c - is DEST where its disk should be? (destfs.h) */
#define _GNU_SOURCE
#include "destfs.h"

#include <blkid.h>
#include <dirent.h>
#include <fcntl.h>
#include <libmount.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dest.h"
#include "job.h"
#include "util.h"


int cbi_fs_uuid(dev_t dev, char *out, size_t outsz)
{
	out[0] = 0;
	DIR *d = opendir("/dev/disk/by-uuid");
	struct dirent *de;
	while (d && !out[0] && (de = readdir(d))) {
		struct stat st;
		if (de->d_name[0] != '.' && fstatat(dirfd(d), de->d_name, &st, 0) == 0 && S_ISBLK(st.st_mode) &&
		    st.st_rdev == dev)
			cbi_strlcpy(out, de->d_name, outsz);
	}
	if (d)
		closedir(d);
	if (out[0])
		return 0;
	/* no udev (a container): probe the device */
	char *name = blkid_devno_to_devname(dev);
	blkid_probe pr = name ? blkid_new_probe_from_filename(name) : NULL;
	const char *v = NULL;
	if (pr && blkid_probe_enable_superblocks(pr, 1) == 0 &&
	    blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_UUID) == 0 && blkid_do_safeprobe(pr) == 0 &&
	    blkid_probe_lookup_value(pr, "UUID", &v, NULL) == 0 && v)
		cbi_strlcpy(out, v, outsz);
	blkid_free_probe(pr);
	free(name);
	return out[0] ? 0 : -ENODEV;
}

/* Is directory path a mount point (another device than its parent's)? */
static int is_mount_point(const char *path, const struct stat *st)
{
	char up[PATH_MAX + 4];
	struct stat ps;
	if (!strcmp(path, "/"))
		return 1;
	snprintf(up, sizeof up, "%s/..", path);
	return stat(up, &ps) == 0 && (ps.st_dev != st->st_dev || ps.st_ino == st->st_ino);
}

/* Does directory path hold nothing at all? */
static int is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int empty = d != NULL;
	while (empty && (de = readdir(d)))
		empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
	if (d)
		closedir(d);
	return empty;
}

/* Does DEST hold a point file (a .cbx or .cbi name)? */
static int has_points(const char *dest)
{
	cbi_dest *d = NULL;
	int found = 0;
	if (cbi_dest_scan(dest, 0, &d, NULL))
		return 1; /* cannot tell: let the backup say what is wrong */
	for (size_t i = 0; i < d->n && !found; i++)
		found = d->e[i].kind == CBI_DENT_POINT;
	cbi_dest_free(d);
	return found;
}

/* The fstab entry whose mount point is real or a directory above it and is
 * not mounted now: 1 with its source ("UUID=...", "/dev/sdb1") and target. */
static int fstab_unmounted(const char *real, char *src, size_t srcsz, char *tgt, size_t tgtsz)
{
	struct libmnt_table *tb = mnt_new_table();
	struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
	struct libmnt_fs *fs;
	int found = 0;
	if (!tb || !it || mnt_table_parse_fstab(tb, NULL) != 0)
		goto end;
	while (!found && mnt_table_next_fs(tb, it, &fs) == 0) {
		const char *t = mnt_fs_get_target(fs), *s = mnt_fs_get_source(fs);
		size_t n = t ? strlen(t) : 0;
		struct stat st;
		if (!n || t[0] != '/' || !strcmp(t, "/") || mnt_fs_is_swaparea(fs) || mnt_fs_is_pseudofs(fs) ||
		    strncmp(real, t, n) || (real[n] && real[n] != '/'))
			continue;
		if (stat(t, &st) < 0 || is_mount_point(t, &st))
			continue; /* mounted (or gone) */
		cbi_strlcpy(src, s ? s : "?", srcsz);
		cbi_strlcpy(tgt, t, tgtsz);
		found = 1;
	}
end:
	mnt_free_iter(it);
	mnt_unref_table(tb);
	return found;
}

static int under(const char *real, const char *top)
{
	size_t n = strlen(top);
	return !strncmp(real, top, n) && real[n] == '/';
}

static void state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
		       char *out, size_t outsz)
{
	snprintf(out, outsz, "%.3000s/%016llx/" CBI_STATE_DEST_FS_NAME, state_dir,
		 (unsigned long long)cbi_state_key(host, source_id, job));
}

/* The record: the file system's UUID on its first line and, since issue
 * 14's rotation, the directory it was mounted on on the second (mnt; empty
 * in older records). */
static void read_recorded(const char *path, char *out, size_t outsz, char *mnt, size_t mntsz)
{
	char buf[4400];
	out[0] = 0;
	if (mnt)
		mnt[0] = 0;
	int fd = cbi_open_regular(path, O_NOFOLLOW, NULL);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	size_t l = strcspn(buf, "\n");
	char *second = buf[l] ? buf + l + 1 : buf + l;
	buf[l] = 0;
	cbi_strlcpy(out, buf, outsz);
	second[strcspn(second, "\n")] = 0;
	if (mnt)
		cbi_strlcpy(mnt, second, mntsz);
}

/* The directory the file system of real (st) is mounted on: the highest
 * directory above real on the same device. */
static void mount_root(const char *real, const struct stat *st, char *out, size_t outsz)
{
	char cur[PATH_MAX];
	cbi_strlcpy(cur, real, sizeof cur);
	for (;;) {
		struct stat cs;
		if (!strcmp(cur, "/") || (stat(cur, &cs) == 0 && is_mount_point(cur, &cs)))
			break;
		char *slash = strrchr(cur, '/');
		if (!slash)
			break;
		if (slash == cur)
			slash[1] = 0;
		else
			*slash = 0;
	}
	(void)st;
	cbi_strlcpy(out, cur, outsz);
}

/* Record uuid at path (STATE_DIR/<key>/dest-fs) through a temporary name;
 * the directories are made as cbi_state_save() makes them. A failure is
 * ignored: the record is a hint. */
static void record(const char *state_dir, const char *path, const char *uuid, const char *mnt)
{
	char tmp[4400], dir[4096];
	struct stat st;
	cbi_dirname(path, dir, sizeof dir);
	(void)mkdir(state_dir, 0700);
	(void)mkdir(dir, 0700);
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return;
	if ((size_t)snprintf(tmp, sizeof tmp, "%.4096s/." CBI_STATE_DEST_FS_NAME ".%ld.tmp", dir,
			     (long)getpid()) >= sizeof tmp)
		return;
	int fd = cbi_create_tmp(tmp, 0644);
	if (fd < 0)
		return;
	char line[4400];
	int n = snprintf(line, sizeof line, "%s\n%.4096s\n", uuid, mnt);
	int ok = n > 0 && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
	close(fd);
	if (!ok || rename(tmp, path) < 0)
		unlink(tmp);
}

int cbi_dest_check(const char *dest, const char *want_uuid, const char *state_dir, const char *host,
		   const char *source_id, const char *job, cbi_error *err)
{
	char real[PATH_MAX], uuid[128], src[512], tgt[4096];
	struct stat ds, rs;
	if (stat(dest, &ds) < 0)
		return cbi_err(err, -errno, "unable to use destination '%s': %s", dest, strerror(errno));
	if (!realpath(dest, real))
		return cbi_err(err, -errno, "unable to resolve destination '%s': %s", dest, strerror(errno));
	cbi_fs_uuid(ds.st_dev, uuid, sizeof uuid);
	if (want_uuid && *want_uuid) {
		if (!uuid[0])
			return cbi_err(err, -CBI_EUSAGE, "destination '%s' is on a file system without a UUID, not "
				       "on %s: is that disk mounted?", dest, want_uuid);
		if (strcasecmp(uuid, want_uuid))
			return cbi_err(err, -CBI_EUSAGE, "destination '%s' is on file system %s, not on %s: is "
				       "that disk mounted?", dest, uuid, want_uuid);
	} else {
		if (fstab_unmounted(real, src, sizeof src, tgt, sizeof tgt))
			return cbi_err(err, -CBI_EUSAGE, "destination '%s' is under '%s', where fstab mounts %s, "
				       "which is not mounted: mount that disk first", dest, tgt, src);
		int root = stat("/", &rs) == 0 && rs.st_dev == ds.st_dev;
		if (root && (under(real, "/media") || under(real, "/mnt") || under(real, "/run/media")) &&
		    !is_mount_point(real, &ds) && is_empty(real))
			return cbi_err(err, -CBI_EUSAGE, "destination '%s' is an empty directory on the root file "
				       "system, where a disk is usually mounted: mount that disk first (to back up "
				       "to this directory, %s%s%s)", dest, uuid[0] ? "give --dest-uuid " : "",
				       uuid, uuid[0] ? "" : "put any file in it first");
		char last[128], lmnt[4100], path[4200];
		if (state_dir) {
			state_path(state_dir, host, source_id, job, path, sizeof path);
			read_recorded(path, last, sizeof last, lmnt, sizeof lmnt);
			/* The job last wrote to another file system. Where it was
			 * mounted is known (lmnt), that directory holds DEST and is no
			 * mount point now: the disk is missing. Another disk mounted
			 * there (a rotation, issue 14) gets its own chain. Older
			 * records without the directory: only on the root file system. */
			struct stat ms;
			int missing = lmnt[0] ? (under(real, lmnt) || !strcmp(real, lmnt)) && stat(lmnt, &ms) == 0 &&
							!is_mount_point(lmnt, &ms)
					      : root;
			if (missing && last[0] && strcasecmp(last, uuid) && !is_mount_point(real, &ds) &&
			    !has_points(dest))
				return cbi_err(err, -CBI_EUSAGE, "destination '%s' is on file system %s, but job '%s' "
					       "last wrote to file system %s there: is that disk mounted? (give "
					       "--dest-uuid to choose)", dest, uuid[0] ? uuid : "without a UUID", job,
					       last);
		}
	}
	if (state_dir && uuid[0]) {
		char last[128], lmnt[4100], mnt[PATH_MAX], path[4200];
		mount_root(real, &ds, mnt, sizeof mnt);
		state_path(state_dir, host, source_id, job, path, sizeof path);
		read_recorded(path, last, sizeof last, lmnt, sizeof lmnt);
		if (strcmp(last, uuid) || strcmp(lmnt, mnt))
			record(state_dir, path, uuid, mnt);
	}
	return 0;
}
