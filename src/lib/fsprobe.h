/* fsprobe.h - which file system a destination is on, and the segment size
 * a backup uses there (format/SPEC.md, "Segments"). */
#ifndef CBI_FSPROBE_H
#define CBI_FSPROBE_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

/* Name of the file system that holds dir, into name (at least 32 bytes):
 *   "fat"    FAT12/16/32 with any driver: the kernel's vfat or msdos
 *            (statfs magic 0x4d44), fusefat (mountinfo type fuse.fusefat),
 *            or a fuseblk driver on a device that libblkid finds FAT on;
 *   "exfat"  the kernel's exfat (magic 0x2011bab0), or a FUSE driver:
 *            exfat-fuse mounts as type fuseblk, so libblkid tells what the
 *            mounted device holds (read from the device, else from the
 *            blkid cache when the device cannot be read);
 *   "ntfs"   a fuseblk mount of a device libblkid finds NTFS on;
 *   else the type in the mount table (mounts.h: "ext4", "tmpfs", "fuseblk", ...),
 *   or "" when nothing can be found out. Never fails. */
void cbi_fs_probe(const char *dir, char *name, size_t namesz);

/* The segment size in MiB for files written to dest (0: no segments), from
 * the request (cbi_backup_opts.split) and dest's file system (see
 * cbi_fs_probe(), whose answer goes to fs). Fails with -CBI_EUSAGE for a
 * size that is not a whole number of MiB from 1 MiB, or one too large for
 * FAT. */
int cbi_split_choose(const char *dest, uint64_t request, uint32_t *seg_mib, char *fs, size_t fssz,
		     cbi_error *err) CBI_WUR;

#endif
