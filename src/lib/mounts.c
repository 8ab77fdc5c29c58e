/* mounts.c - the mount table (libmount) and whole disks (libblkid). */
#define _GNU_SOURCE
#include "mounts.h"

#include <blkid.h>
#include <dirent.h>
#include <fcntl.h>
#include <libmount.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "util.h"

int cbi_dev_whole_disk(dev_t dev, dev_t *whole)
{
	dev_t w = 0;
	if (blkid_devno_to_wholedisk(dev, NULL, 0, &w) < 0 || !w)
		return -ENODEV;
	*whole = w;
	return 0;
}

/* Does mount fs stand on block device dev (or, with CBI_MOUNT_PARTS, on a
 * partition of it)? By its device number, else (btrfs reports an anonymous
 * one) by the block device its source names. */
static int mount_on(struct libmnt_fs *fs, dev_t dev, int flags)
{
	dev_t d = mnt_fs_get_devno(fs), whole;
	const char *src = mnt_fs_get_srcpath(fs);
	struct stat st;
	if (major(d) == 0 && src && src[0] == '/' && stat(src, &st) == 0 && S_ISBLK(st.st_mode))
		d = st.st_rdev;
	return d == dev || ((flags & CBI_MOUNT_PARTS) && major(d) != 0 && !cbi_dev_whole_disk(d, &whole) &&
			    whole == dev);
}

size_t cbi_mount_list(dev_t dev, int flags, cbi_mount *m, size_t max)
{
	struct libmnt_table *tb = mnt_new_table_from_file("/proc/self/mountinfo");
	struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
	struct libmnt_fs *fs;
	size_t n = 0;
	if (!tb || !it)
		goto end;
	while (mnt_table_next_fs(tb, it, &fs) == 0) {
		if (!mount_on(fs, dev, flags))
			continue;
		const char *vo = mnt_fs_get_vfs_options(fs);
		int rw = vo && mnt_optstr_get_option(vo, "rw", NULL, NULL) == 0;
		if ((flags & CBI_MOUNT_RW) && !rw)
			continue;
		if (m && n < max) {
			const char *t = mnt_fs_get_target(fs), *ty = mnt_fs_get_fstype(fs), *s = mnt_fs_get_source(fs);
			cbi_strlcpy(m[n].target, t ? t : "", sizeof m[n].target);
			cbi_strlcpy(m[n].type, ty ? ty : "", sizeof m[n].type);
			cbi_strlcpy(m[n].source, s ? s : "", sizeof m[n].source);
			m[n].rw = rw;
			m[n].fsdev = mnt_fs_get_devno(fs);
			m[n].id = mnt_fs_get_id(fs);
		}
		n++;
	}
end:
	mnt_free_iter(it);
	mnt_unref_table(tb);
	return n;
}

int cbi_path_on_dev(const char *path, dev_t dev)
{
	char p[4096], real[4096];
	cbi_strlcpy(p, path, sizeof p);
	while (!realpath(p, real)) {
		char *sl = strrchr(p, '/');
		if (!sl || sl == p)
			return 0;
		*sl = 0;
	}
	struct libmnt_table *tb = mnt_new_table_from_file("/proc/self/mountinfo");
	struct libmnt_fs *fs = tb ? mnt_table_find_mountpoint(tb, real, MNT_ITER_BACKWARD) : NULL;
	int on = fs && mount_on(fs, dev, CBI_MOUNT_PARTS);
	mnt_unref_table(tb);
	return on;
}

int cbi_mount_find(dev_t dev, int flags, cbi_mount *m)
{
	return cbi_mount_list(dev, flags, m, m ? 1 : 0) > 0;
}

int cbi_loop_backing(int fd, dev_t *dev, ino_t *ino)
{
	/* zeroed: valgrind (3.19) does not know what this ioctl writes */
	struct loop_info64 li;
	memset(&li, 0, sizeof li);
	if (ioctl(fd, LOOP_GET_STATUS64, &li) < 0)
		return -errno;
	/* lo_device is the kernel's encoding of a device number (new_encode_dev) */
	uint64_t d = li.lo_device;
	*dev = makedev((unsigned)((d >> 8) & 0xfff), (unsigned)((d & 0xff) | ((d >> 12) & 0xfff00)));
	*ino = (ino_t)li.lo_inode;
	return 0;
}

/* The first line of a small sysfs file, without its newline: 0 or -1. */
static int read_line(const char *path, char *buf, size_t sz)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sz - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return buf[0] ? 0 : -1;
}

/* Is loop device name (of /sys/block) attached to the file (dev, ino)? */
static int loop_backs(const char *name, dev_t dev, ino_t ino)
{
	char p[512], b[4096];
	snprintf(p, sizeof p, "/sys/block/%.200s/loop/backing_file", name);
	if (read_line(p, b, sizeof b))
		return 0; /* no file attached */
	snprintf(p, sizeof p, "/dev/%.200s", name);
	int fd = open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd >= 0) {
		dev_t d;
		ino_t i;
		int rc = cbi_loop_backing(fd, &d, &i);
		close(fd);
		if (!rc)
			return d == dev && i == ino;
	}
	/* not allowed to open the device: by the name the kernel reports */
	size_t n = strlen(b);
	if (n > 10 && !strcmp(b + n - 10, " (deleted)"))
		return 0; /* that name is another file now */
	struct stat st;
	return stat(b, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

int cbi_loop_in_use(dev_t dev, ino_t ino, int rw_only, cbi_loop_use *u)
{
	DIR *d = opendir("/sys/block");
	struct dirent *de;
	int found = 0;
	memset(u, 0, sizeof *u);
	while (d && !found && (de = readdir(d))) {
		char p[512], num[64];
		unsigned ma, mi;
		if (strncmp(de->d_name, "loop", 4))
			continue;
		snprintf(p, sizeof p, "/sys/block/%.200s/dev", de->d_name);
		if (read_line(p, num, sizeof num) || sscanf(num, "%u:%u", &ma, &mi) != 2 ||
		    !loop_backs(de->d_name, dev, ino))
			continue;
		dev_t ld = makedev(ma, mi);
		cbi_mount m;
		snprintf(u->loop, sizeof u->loop, "/dev/%.50s", de->d_name);
		if (cbi_mount_find(ld, CBI_MOUNT_PARTS | (rw_only ? CBI_MOUNT_RW : 0), &m)) {
			cbi_strlcpy(u->mnt, m.target, sizeof u->mnt);
			u->rw = cbi_mount_find(ld, CBI_MOUNT_PARTS | CBI_MOUNT_RW, NULL);
			found = 1;
		} else if (!rw_only) {
			/* held by device mapper, md, or mounted in another namespace */
			int fd = open(u->loop, O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC);
			if (fd < 0 && errno == EBUSY)
				found = u->busy = 1;
			if (fd >= 0)
				close(fd);
		}
	}
	if (d)
		closedir(d);
	if (!found)
		memset(u, 0, sizeof *u);
	return found;
}
