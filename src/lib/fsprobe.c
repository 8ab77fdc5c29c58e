/* fsprobe.c - file system detection for destinations (FAT, exFAT). */
#define _GNU_SOURCE
#include "fsprobe.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "sfile.h"
#include "util.h"

#define MSDOS_MAGIC 0x4d44u
#define EXFAT_MAGIC 0x2011bab0u
#define FUSE_MAGIC 0x65735546u

/* Type and source of the mount whose device is dev, from mountinfo:
 * "ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS...] - TYPE SOURCE SUPEROPTS". */
static int mount_of(dev_t dev, char *type, size_t typesz, char *src, size_t srcsz)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -1;
	char *line = NULL;
	size_t cap = 0;
	int found = -1;
	while (found < 0 && getline(&line, &cap, f) > 0) {
		unsigned maj, min;
		if (sscanf(line, "%*u %*u %u:%u", &maj, &min) != 2 || makedev(maj, min) != dev)
			continue;
		char *sep = strstr(line, " - ");
		if (!sep)
			continue;
		char t[64], s[256];
		int k = sscanf(sep + 3, "%63s %255s", t, s);
		if (k < 1)
			continue;
		if (k < 2)
			s[0] = 0;
		cbi_strlcpy(type, t, typesz);
		cbi_strlcpy(src, s, srcsz);
		found = 0;
	}
	free(line);
	fclose(f);
	return found;
}

/* FAT or exFAT from a boot sector. */
static const char *boot_sector_fs(const uint8_t *b)
{
	if (!memcmp(b + 3, "EXFAT   ", 8))
		return "exfat";
	if (!memcmp(b + 3, "NTFS    ", 8))
		return "ntfs";
	if (b[510] == 0x55 && b[511] == 0xaa &&
	    (!memcmp(b + 82, "FAT32   ", 8) || !memcmp(b + 54, "FAT12   ", 8) ||
	     !memcmp(b + 54, "FAT16   ", 8) || !memcmp(b + 54, "FAT     ", 8)))
		return "fat";
	return NULL;
}

/* The file system on the block device dev (mounted from src), for FUSE
 * drivers that mount as plain "fuseblk": the device's boot sector, else
 * udev's record of it. NULL when neither tells. */
static const char *fuseblk_fs(dev_t dev, const char *src)
{
	const char *fs = NULL;
	int fd = src[0] == '/' ? open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
	if (fd >= 0) {
		struct stat st;
		uint8_t b[512];
		if (!fstat(fd, &st) && S_ISBLK(st.st_mode) && st.st_rdev == dev &&
		    !cbi_pread_full(fd, b, sizeof b, 0))
			fs = boot_sector_fs(b);
		close(fd);
	}
	if (fs)
		return fs;
	char path[64], *line = NULL;
	size_t cap = 0;
	snprintf(path, sizeof path, "/run/udev/data/b%u:%u", major(dev), minor(dev));
	FILE *f = fopen(path, "re");
	if (!f)
		return NULL;
	while (!fs && getline(&line, &cap, f) > 0) {
		if (strncmp(line, "E:ID_FS_TYPE=", 13))
			continue;
		const char *t = line + 13;
		if (!strncmp(t, "vfat", 4) || !strncmp(t, "msdos", 5))
			fs = "fat";
		else if (!strncmp(t, "exfat", 5))
			fs = "exfat";
	}
	free(line);
	fclose(f);
	return fs;
}

void cbi_fs_probe(const char *dir, char *name, size_t namesz)
{
	struct statfs sf;
	struct stat st;
	char type[64] = "", src[256] = "";
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
	if (stat(dir, &st) < 0 || mount_of(st.st_dev, type, sizeof type, src, sizeof src) < 0)
		return;
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
		fs = fuseblk_fs(st.st_dev, src);
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
