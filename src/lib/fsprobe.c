/* fsprobe.c - file system detection for destinations (FAT, exFAT). */
#define _GNU_SOURCE
#include "fsprobe.h"

#include <blkid.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include "mounts.h"
#include "sfile.h"
#include "util.h"

#define MSDOS_MAGIC 0x4d44u
#define EXFAT_MAGIC 0x2011bab0u
#define FUSE_MAGIC 0x65735546u

/* The file system on block device dev, as libblkid finds it: the device's
 * superblock when it can be read (root, or the disk group), else the blkid
 * cache. For FUSE drivers that mount as plain "fuseblk". NULL when neither
 * tells, or for a file system that needs no special treatment here. */
static const char *fuseblk_fs(dev_t dev)
{
	const char *fs = NULL;
	char *name = blkid_devno_to_devname(dev), *type = NULL;
	if (!name)
		return NULL;
	blkid_probe pr = blkid_new_probe_from_filename(name);
	if (pr) {
		const char *t = NULL;
		blkid_probe_enable_superblocks(pr, 1);
		blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE);
		if (blkid_do_safeprobe(pr) == 0 && blkid_probe_lookup_value(pr, "TYPE", &t, NULL) == 0 && t)
			type = strdup(t);
		blkid_free_probe(pr);
	} else {
		type = blkid_get_tag_value(NULL, "TYPE", name);
	}
	if (type && (!strcmp(type, "vfat") || !strcmp(type, "msdos")))
		fs = "fat";
	else if (type && !strcmp(type, "exfat"))
		fs = "exfat";
	else if (type && !strcmp(type, "ntfs"))
		fs = "ntfs";
	free(type);
	free(name);
	return fs;
}

void cbi_fs_probe(const char *dir, char *name, size_t namesz)
{
	struct statfs sf;
	struct stat st;
	cbi_mount mt;
	cbi_strlcpy(name, "", namesz);
	if (statfs(dir, &sf) == 0) {
		if ((uint32_t)sf.f_type == MSDOS_MAGIC) {
			cbi_strlcpy(name, "fat", namesz);
			return;
		}
		if ((uint32_t)sf.f_type == EXFAT_MAGIC) {
			cbi_strlcpy(name, "exfat", namesz);
			return;
		}
	}
	if (stat(dir, &st) < 0 || !cbi_mount_find(st.st_dev, 0, &mt))
		return;
	const char *type = mt.type, *src = mt.source;
	cbi_strlcpy(name, type, namesz);
	if (strncmp(type, "fuse", 4))
		return;
	/* FUSE: "fuse.SUBTYPE", or "fuse" with the driver as the source */
	const char *sub = !strncmp(type, "fuse.", 5) ? type + 5 : !strcmp(type, "fuse") ? src : "";
	const char *fs = NULL;
	if (!strcmp(sub, "fusefat") || !strcmp(sub, "vfat") || !strcmp(sub, "fat"))
		fs = "fat";
	else if (!strncmp(sub, "exfat", 5))
		fs = "exfat";
	else if (!strcmp(type, "fuseblk"))
		fs = fuseblk_fs(st.st_dev);
	if (fs)
		cbi_strlcpy(name, fs, namesz);
}

int cbi_split_choose(const char *dest, uint64_t request, uint32_t *seg_mib, char *fs, size_t fssz,
		     cbi_error *err)
{
	char name[32];
	cbi_fs_probe(dest, name, sizeof name);
	if (fs)
		cbi_strlcpy(fs, name, fssz);
	int fat = !strcmp(name, "fat");
	*seg_mib = 0;
	if (request == CBI_SPLIT_NONE)
		return 0;
	if (request == 0) {
		/* exFAT holds files of any size a disk has: only FAT needs segments */
		*seg_mib = fat ? (uint32_t)(CBI_FAT_SPLIT / CBI_SEG_UNIT) : 0;
		return 0;
	}
	if (request < CBI_SEG_UNIT || request % CBI_SEG_UNIT || request / CBI_SEG_UNIT > UINT32_MAX)
		return cbi_err(err, -CBI_EUSAGE,
			       "segment size %llu is not a whole number of MiB from 1 MiB to 4 PiB",
			       (unsigned long long)request);
	if (fat && request > CBI_FAT_SPLIT)
		return cbi_err(err, -CBI_EUSAGE,
			       "segments of %llu MiB do not fit on the FAT file system of '%s': "
			       "a file holds less than 4 GiB there (at most 4095M)",
			       (unsigned long long)(request / CBI_SEG_UNIT), dest);
	*seg_mib = (uint32_t)(request / CBI_SEG_UNIT);
	return 0;
}
