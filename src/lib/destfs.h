/* destfs.h - is DEST where its disk should be? (internal). A backup whose
 * USB disk is not mounted must not land on the root file system under the
 * bare mount point: DEST is checked against fstab, the usual mount places,
 * the file system the job wrote to last time (recorded in the local state)
 * and, when the caller asks for one, a file system UUID. */
#ifndef CBI_DESTFS_H
#define CBI_DESTFS_H

#include <stddef.h>
#include <sys/types.h>

#include "cbimg.h"

/* The file system UUID of device dev (a mounted file system's st_dev), from
 * /dev/disk/by-uuid or, failing that, libblkid; "" when it has none (tmpfs,
 * overlay, a device that cannot be probed). 0, or -ENODEV for "". */
int cbi_fs_uuid(dev_t dev, char *out, size_t outsz);

/* Check DEST before a backup writes to it; -CBI_EUSAGE with a message that
 * names the missing disk when
 *  - want_uuid is given ("--dest-uuid", compared without regard to case)
 *    and DEST's file system has another UUID, or none;
 *  - without want_uuid: DEST, or a directory above it, is the mount point of
 *    an fstab entry (libmount, $LIBMOUNT_FSTAB) that is not mounted, so
 *    DEST lies on the file system below it; or DEST is an empty directory
 *    under /media, /mnt or /run/media on the root file system;
 *  - without want_uuid, with state_dir (the local state; NULL: not used):
 *    the job (host, source_id, job) last wrote to a file system of another
 *    UUID, and DEST is no mount point and holds no point file (the disk it
 *    was on is not mounted).
 * When DEST passes and state_dir is given, its UUID is recorded for the job
 * (STATE_DIR/<key>/dest-fs, kept by cbi_state_save()). */
int cbi_dest_check(const char *dest, const char *want_uuid, const char *state_dir, const char *host,
		   const char *source_id, const char *job, cbi_error *err) CBI_WUR;

#endif
