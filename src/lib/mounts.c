/* mounts.c - the mount table (libmount) and whole disks (libblkid). */
#define _GNU_SOURCE
#include "mounts.h"

#include <blkid.h>
#include <libmount.h>
#include <sys/sysmacros.h>

#include "util.h"

int cbi_dev_whole_disk(dev_t dev, dev_t *whole)
{
	dev_t w = 0;
	if (blkid_devno_to_wholedisk(dev, NULL, 0, &w) < 0 || !w)
		return -ENODEV;
	*whole = w;
	return 0;
}

int cbi_mount_find(dev_t dev, int flags, cbi_mount *m)
{
	struct libmnt_table *tb = mnt_new_table_from_file("/proc/self/mountinfo");
	struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
	struct libmnt_fs *fs;
	int found = 0;
	if (!tb || !it)
		goto end;
	while (!found && mnt_table_next_fs(tb, it, &fs) == 0) {
		dev_t d = mnt_fs_get_devno(fs), whole;
		if (d != dev && !((flags & CBI_MOUNT_PARTS) && major(d) != 0 && !cbi_dev_whole_disk(d, &whole) &&
				  whole == dev))
			continue;
		const char *vo = mnt_fs_get_vfs_options(fs);
		int rw = vo && mnt_optstr_get_option(vo, "rw", NULL, NULL) == 0;
		if ((flags & CBI_MOUNT_RW) && !rw)
			continue;
		found = 1;
		if (m) {
			const char *t = mnt_fs_get_target(fs), *ty = mnt_fs_get_fstype(fs), *s = mnt_fs_get_source(fs);
			cbi_strlcpy(m->target, t ? t : "", sizeof m->target);
			cbi_strlcpy(m->type, ty ? ty : "", sizeof m->type);
			cbi_strlcpy(m->source, s ? s : "", sizeof m->source);
			m->rw = rw;
		}
	}
end:
	mnt_free_iter(it);
	mnt_unref_table(tb);
	return found;
}
