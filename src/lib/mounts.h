/* mounts.h - the mount table, read with libmount, and the block devices
 * behind it, named with libblkid (internal). The one place that knows
 * /proc/self/mountinfo: the source's mount checks, the destination's file
 * system probe and the catalog's fusefat check all ask here. */
#ifndef CBI_MOUNTS_H
#define CBI_MOUNTS_H

#include <stddef.h>
#include <sys/types.h>

#include "cbimg.h"

typedef struct cbi_mount {
	char target[4096];  /* mount point */
	char type[64];      /* "ext4", "fuse.fusefat", "fuseblk", ... */
	char source[256];   /* "/dev/sdb1", "fusefat", ... ("" when none) */
	int rw;             /* this mount is read-write (per-mount options) */
	dev_t fsdev;        /* the device number mountinfo gives (btrfs: an anonymous one) */
	int id;             /* its mount id (mountinfo, statx's stx_mnt_id) */
} cbi_mount;

#define CBI_MOUNT_PARTS 1 /* also a mount of a partition of dev (dev is a whole disk) */
#define CBI_MOUNT_RW 2    /* only a read-write mount */

/* The first mount, in /proc/self/mountinfo order, whose device number is dev
 * (flags: CBI_MOUNT_PARTS, CBI_MOUNT_RW), into *m when m is non-NULL.
 * Returns 1 when found, 0 when not or when the table cannot be read. */
int cbi_mount_find(dev_t dev, int flags, cbi_mount *m);

/* Every mount, in mountinfo order, of block device dev (its partitions too
 * with CBI_MOUNT_PARTS; CBI_MOUNT_RW: read-write ones only), into m[0..max):
 * the number found (it may exceed max), 0 when the table cannot be read. A
 * mount matches by its device number or, where that is not the device's
 * (btrfs), by the block device it names as its source. */
size_t cbi_mount_list(dev_t dev, int flags, cbi_mount *m, size_t max);

/* Does the file system holding path (the mount that contains it, or its
 * nearest existing ancestor) stand on block device dev or a partition of
 * it? 1 yes, 0 no or unknown. Subvolumes and bind mounts of that file system
 * count too: this is by device, not by st_dev. */
int cbi_path_on_dev(const char *path, dev_t dev);

/* The whole disk that block device dev is a partition of (dev itself for a
 * whole disk), per sysfs. 0, or -ENODEV when dev is no known block device. */
int cbi_dev_whole_disk(dev_t dev, dev_t *whole);

/* The file that loop device fd (an open block device) reads and writes:
 * its device and inode, whatever its name is now (LOOP_GET_STATUS64).
 * 0, or -errno (-ENXIO: a loop device with no file; -ENOTTY: not a loop
 * device). */
int cbi_loop_backing(int fd, dev_t *dev, ino_t *ino);

/* How a loop device backed by a given file is used. */
typedef struct cbi_loop_use {
	char loop[64];      /* "/dev/loop3" */
	char mnt[4096];     /* where it (or a partition of it) is mounted, "" if not */
	int rw;             /* mounted read-write */
	int busy;           /* not mounted, but held open exclusively (device mapper, md, ...) */
} cbi_loop_use;

/* Is the regular file (dev, ino) the backing file of a loop device that is
 * mounted (its partitions too) or held open exclusively? Every attached
 * loop device of /sys/block is asked for its backing file's identity
 * (cbi_loop_backing(); where /dev/loopN cannot be opened, by the name in
 * sysfs). With rw_only, only a read-write mount counts. 1 with *u filled,
 * 0 when none (or when sysfs cannot be read). */
int cbi_loop_in_use(dev_t dev, ino_t ino, int rw_only, cbi_loop_use *u);

#endif
