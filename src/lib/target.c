/* target.c - the restore target writer (target.h). */
#define _GNU_SOURCE
#include "target.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mounts.h"
#include "source.h"
#include "util.h"

#define WBUF (4u << 20) /* zeros written at a time */

void cbi_target_direct(cbi_target *t)
{
	t->direct = cbi_fd_direct(t->fd, 1) == 0;
}

static int pwrite_at(cbi_target *t, const uint8_t *d, size_t len, uint64_t off, cbi_error *err)
{
	/* direct I/O off for a write it cannot do (the short last block, zeros
	 * from an unaligned buffer) or that the file system refused */
	int rc = cbi_pwrite_maybe_direct(t->fd, &t->direct, d, len, off);
	if (rc)
		return cbi_err(err, rc, "unable to write '%s' at byte %llu: %s", t->path, (unsigned long long)off,
			       cbi_strerror(rc));
	return 0;
}

/* Zero the pending zero range. */
static int flush_zeros(cbi_target *t, cbi_error *err)
{
	if (!t->zlen)
		return 0;
	uint64_t o = t->zoff, l = t->zlen;
	t->zlen = 0;
	if (t->sparse_new)
		return 0;
	if (t->is_dev) {
		uint64_t range[2] = { o, l };
		if (ioctl(t->fd, BLKZEROOUT, range) == 0)
			return 0;
	} else if (fallocate(t->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)o, (off_t)l) == 0) {
		return 0;
	}
	/* no zeroing primitive: write zeros */
	if (!t->zbuf && !(t->zbuf = calloc(1, WBUF)))
		return cbi_err(err, -ENOMEM, "out of memory");
	while (l) {
		size_t n = (size_t)CBI_MIN(l, (uint64_t)WBUF);
		int rc = pwrite_at(t, t->zbuf, n, o, err);
		if (rc)
			return rc;
		o += n;
		l -= n;
	}
	return 0;
}

int cbi_target_write(cbi_target *t, uint64_t off, const uint8_t *d, size_t len, cbi_error *err)
{
	int rc = flush_zeros(t, err);
	if (!rc && !(rc = pwrite_at(t, d, len, off, err)))
		t->written += len;
	/* Without direct I/O: start writing it back now, so that the final
	 * fsync has little left to wait for (a hint: measured 1.9x faster
	 * restores to a new file). */
	if (!rc && !t->direct)
		(void)sync_file_range(t->fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
	return rc;
}

int cbi_target_zero(cbi_target *t, uint64_t off, uint64_t len, cbi_error *err)
{
	int rc;
	if (t->zlen && t->zoff + t->zlen != off)
		if ((rc = flush_zeros(t, err)))
			return rc;
	if (!t->zlen)
		t->zoff = off;
	t->zlen += len;
	return 0;
}

/* Nothing at the name: a new file, written under a temporary name in the
 * same directory (cbi_create_tmp: never through what lies there). */
static int create_new(cbi_target *t, uint64_t size, cbi_error *err)
{
	char dir[4096];
	cbi_dirname(t->path, dir, sizeof dir);
	const char *base = strrchr(t->path, '/');
	base = base ? base + 1 : t->path;
	if ((size_t)snprintf(t->tmp, sizeof t->tmp, "%.2048s/.%.1024s.%ld.tmp", dir, base, (long)getpid()) >=
	    sizeof t->tmp) {
		t->tmp[0] = 0;
		return cbi_err(err, -ENAMETOOLONG, "target path too long: '%s'", t->path);
	}
	t->fd = cbi_create_tmp(t->tmp, 0644);
	if (t->fd < 0) {
		int rc = cbi_err(err, t->fd, "unable to create '%s': %s", t->tmp, cbi_strerror(t->fd));
		t->tmp[0] = 0; /* not ours: never removed */
		return rc;
	}
	t->sparse_new = 1;
	if (ftruncate(t->fd, (off_t)size) < 0)
		return cbi_err(err, -errno, "unable to size '%s': %s", t->tmp, strerror(errno));
	return 0;
}

/* Open name (checked as *st) without following a link, and make sure fstat
 * shows that very file. */
static int open_checked(cbi_target *t, const char *name, int flags, const struct stat *st, cbi_error *err)
{
	t->fd = open(name, flags | O_NOFOLLOW | O_CLOEXEC);
	if (t->fd < 0 && errno == ELOOP)
		return cbi_err(err, -ELOOP, "target '%s' was replaced by a symbolic link while it was opened: refused",
			       t->path);
	if (t->fd < 0 && errno == EBUSY && S_ISBLK(st->st_mode))
		return cbi_err(err, -CBI_EMOUNTED, "target '%s' is in use (mounted or held open exclusively)",
			       t->path);
	if (t->fd < 0)
		return cbi_err(err, -errno, "unable to open target '%s': %s", t->path, strerror(errno));
	struct stat f;
	if (fstat(t->fd, &f) < 0)
		return cbi_err(err, -errno, "unable to use target '%s': %s", t->path, strerror(errno));
	if ((f.st_mode & S_IFMT) != (st->st_mode & S_IFMT) || f.st_dev != st->st_dev || f.st_ino != st->st_ino ||
	    (S_ISBLK(st->st_mode) && f.st_rdev != st->st_rdev))
		return cbi_err(err, -EAGAIN, "target '%s' was replaced by another file while it was opened: refused",
			       t->path);
	return 0;
}

/* Is the opened target (as f shows it) one of the files the restore reads? */
static int guard_file(cbi_target *t, const cbi_target_guard *g, dev_t dev, ino_t ino, const char *how,
		      cbi_error *err)
{
	for (size_t i = 0; g && i < g->nfiles; i++)
		if (g->files[i].dev == dev && g->files[i].ino == ino)
			return cbi_err(err, -CBI_EUSAGE,
				       "target '%s' %s '%s', a file of the chain being restored: refused (restore "
				       "to another disk or file)", t->path, how, g->files[i].path);
	return 0;
}

/* The directory of path, into buf. */
static const char *dir_of(const char *path, char *buf, size_t sz)
{
	cbi_dirname(path, buf, sz);
	return buf;
}

/* Does directory dir (of the target) hold the chain? */
static int guard_dir(cbi_target *t, const cbi_target_guard *g, const char *dir, cbi_error *err)
{
	struct stat st;
	if (!g || !g->dir || stat(dir, &st) < 0)
		return 0;
	if (st.st_dev == g->dir->dev && st.st_ino == g->dir->ino)
		return cbi_err(err, -CBI_EUSAGE,
			       "target '%s' is in '%s', the directory of the chain being restored: refused "
			       "(restore to another directory)", t->path, g->dir->path);
	return 0;
}

static int open_device(cbi_target *t, const char *name, const struct stat *st, uint64_t size, unsigned flags,
		       const cbi_target_guard *g, cbi_error *err)
{
	char mnt[1024];
	if (cbi_dev_mounted(st->st_rdev, mnt, sizeof mnt))
		return cbi_err(err, -CBI_EMOUNTED, "target '%s' is mounted on '%s': unmount it first", t->path, mnt);
	if (!(flags & CBI_TARGET_FORCE))
		return cbi_err(err, -CBI_EEXISTS, "target '%s' is a device: give --force to overwrite it", t->path);
	int rc = open_checked(t, name, ((flags & CBI_TARGET_READ) ? O_RDWR : O_WRONLY) | O_EXCL, st, err);
	if (rc)
		return rc;
	/* a loop device writes to its backing file: never one of the chain's */
	dev_t bd;
	ino_t bi;
	if (g && !cbi_loop_backing(t->fd, &bd, &bi) && (rc = guard_file(t, g, bd, bi, "writes to", err)))
		return rc;
	t->is_dev = 1;
	uint64_t dsz = 0;
	if (ioctl(t->fd, BLKGETSIZE64, &dsz) < 0)
		return cbi_err(err, -errno, "unable to get size of '%s': %s", t->path, strerror(errno));
	if (dsz < size)
		return cbi_err(err, -CBI_ETOOSMALL, "target '%s' holds %llu bytes, the image needs %llu", t->path,
			       (unsigned long long)dsz, (unsigned long long)size);
	return 0;
}

static int open_file(cbi_target *t, const char *name, const struct stat *st, uint64_t size, unsigned flags,
		     const cbi_target_guard *g, cbi_error *err)
{
	char dir[4096];
	cbi_dirname(name, dir, sizeof dir);
	int rc = guard_file(t, g, st->st_dev, st->st_ino, "is", err);
	if (rc || (rc = guard_dir(t, g, dir, err)))
		return rc;
	if (st->st_size > 0 && !(flags & CBI_TARGET_FORCE))
		return cbi_err(err, -CBI_EEXISTS, "target '%s' exists: give --force to overwrite it", t->path);
	if ((rc = open_checked(t, name, (flags & CBI_TARGET_READ) ? O_RDWR : O_WRONLY, st, err)))
		return rc;
	struct stat f;
	if (fstat(t->fd, &f) < 0)
		return cbi_err(err, -errno, "unable to use target '%s': %s", t->path, strerror(errno));
	/* checked again on what was opened, before anything is resized */
	if ((rc = guard_file(t, g, f.st_dev, f.st_ino, "is", err)))
		return rc;
	cbi_loop_use u;
	if (cbi_loop_in_use(f.st_dev, f.st_ino, 0, &u)) {
		if (u.mnt[0])
			return cbi_err(err, -CBI_EMOUNTED, "target '%s' is the backing file of loop device '%s', "
				       "mounted on '%s': unmount it first", t->path, u.loop, u.mnt);
		return cbi_err(err, -CBI_EMOUNTED, "target '%s' is the backing file of loop device '%s', which is "
			       "in use: release it first", t->path, u.loop);
	}
	if ((uint64_t)f.st_size != size && ftruncate(t->fd, (off_t)size) < 0)
		return cbi_err(err, -errno, "unable to size '%s': %s", t->path, strerror(errno));
	return 0;
}

int cbi_target_open(const char *path, uint64_t size, unsigned flags, cbi_target **out, cbi_error *err)
{
	return cbi_target_open_guarded(path, size, flags, NULL, out, err);
}

int cbi_target_open_guarded(const char *path, uint64_t size, unsigned flags, const cbi_target_guard *g,
			    cbi_target **out, cbi_error *err)
{
	*out = NULL;
	cbi_target *t = calloc(1, sizeof *t);
	if (!t)
		return cbi_err(err, -ENOMEM, "out of memory");
	t->fd = -1;
	t->force = !!(flags & CBI_TARGET_FORCE);
	cbi_strlcpy(t->path, path, sizeof t->path);
	int rc = 0;
	char real[PATH_MAX];
	const char *name = path; /* what is opened: path, or what a link at path names */
	struct stat st;
	if (strlen(path) >= sizeof t->path) {
		rc = cbi_err(err, -ENAMETOOLONG, "target path too long: '%s'", path);
		goto end;
	}
	if (lstat(path, &st) < 0) {
		if (errno != ENOENT)
			rc = cbi_err(err, -errno, "unable to use target '%s': %s", path, strerror(errno));
		else if (flags & CBI_TARGET_READ)
			rc = cbi_err(err, -ENOENT,
				     "target '%s' does not exist: --changed-only needs the disk to compare with", path);
		else if (!(rc = guard_dir(t, g, dir_of(path, real, sizeof real), err)))
			rc = create_new(t, size, err);
		goto end;
	}
	if (S_ISLNK(st.st_mode)) {
		/* A link given on purpose: resolved once, here. */
		if (!realpath(path, real)) {
			if (errno == ENOENT)
				rc = cbi_err(err, -ENOENT, "target '%s' is a symbolic link to nothing: name the file "
					     "or device itself", path);
			else
				rc = cbi_err(err, -errno, "unable to resolve target '%s': %s", path, strerror(errno));
			goto end;
		}
		name = real;
		if (lstat(name, &st) < 0) {
			rc = cbi_err(err, -errno, "unable to use target '%s' ('%s'): %s", path, name, strerror(errno));
			goto end;
		}
	}
	if (S_ISBLK(st.st_mode))
		rc = open_device(t, name, &st, size, flags, g, err);
	else if (S_ISREG(st.st_mode))
		rc = open_file(t, name, &st, size, flags, g, err);
	else
		rc = cbi_err(err, -EINVAL, "target '%s' is neither a block device nor a regular file", path);
end:
	if (rc)
		cbi_target_close(t);
	else
		*out = t;
	return rc;
}

static int appeared(cbi_target *t, cbi_error *err)
{
	return cbi_err(err, -CBI_EEXISTS,
		       "target '%s' appeared during the restore: left as it is and the restored data dropped "
		       "(give --force to replace it)", t->path);
}

/* The new file to its name, never over a file that appeared there meanwhile
 * unless forced. */
static int put_in_place(cbi_target *t, cbi_error *err)
{
	if (t->force) {
		if (rename(t->tmp, t->path) == 0)
			return 0;
		goto fail;
	}
	if (renameat2(AT_FDCWD, t->tmp, AT_FDCWD, t->path, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno == EEXIST)
		return appeared(t, err);
	if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		goto fail;
	/* No RENAME_NOREPLACE here (older FUSE file systems): a hard link
	 * fails on an existing name just as well. */
	if (link(t->tmp, t->path) == 0) {
		(void)unlink(t->tmp); /* the file is in place; at worst a stale temporary */
		return 0;
	}
	if (errno == EEXIST)
		return appeared(t, err);
	if (errno != EPERM && errno != ENOTSUP && errno != ENOSYS && errno != EINVAL)
		goto fail;
	/* Neither (FUSE FAT and exFAT drivers): check just before a plain
	 * rename. Only a file made in between these two calls is replaced,
	 * not one made during the restore. */
	struct stat st;
	if (lstat(t->path, &st) == 0)
		return appeared(t, err);
	if (errno == ENOENT && rename(t->tmp, t->path) == 0)
		return 0;
fail:
	return cbi_err(err, -errno, "unable to rename '%s' to '%s': %s", t->tmp, t->path, strerror(errno));
}

int cbi_target_commit(cbi_target *t, cbi_error *err)
{
	int rc = flush_zeros(t, err);
	if (rc)
		return rc;
	if (fsync(t->fd) < 0)
		return cbi_err(err, -errno, "unable to sync '%s': %s", t->path, strerror(errno));
	if (!t->tmp[0])
		return 0;
	if ((rc = put_in_place(t, err)))
		return rc;
	t->tmp[0] = 0;
	char dir[4096];
	cbi_dirname(t->path, dir, sizeof dir);
	if ((rc = cbi_fsync_dir(dir)))
		return cbi_err(err, rc, "unable to sync directory '%s': %s: '%s' is complete, but its name may not "
			       "survive a crash", dir, cbi_strerror(rc), t->path);
	return 0;
}

void cbi_target_close(cbi_target *t)
{
	if (!t)
		return;
	if (t->fd >= 0)
		close(t->fd);
	if (t->tmp[0])
		(void)unlink(t->tmp);
	free(t->zbuf);
	free(t);
}
