/* target.h - writing the disk to restore, the mirror of source.h: a block
 * device (checked not to be mounted, opened exclusively) or a regular file,
 * an existing one (overwritten in place) or a new one (written under a
 * temporary name and put in place when complete, never over a file that
 * appeared meanwhile unless forced).
 *
 * Names are never trusted between a check and an open: the target is
 * opened with O_NOFOLLOW and fstat must show the very file that was checked
 * (same type, device and inode, same device number for a block device), so
 * a name swapped for a symbolic link or another file is refused instead of
 * written through. A symbolic link given on purpose (/dev/disk/by-id/...,
 * or a link to an image file) is resolved once, with realpath, when the
 * target is opened: its target is then checked and opened by the resolved
 * name, with the same O_NOFOLLOW and fstat checks. A link to nothing is
 * refused (nothing is created through a link). */
#ifndef CBI_TARGET_H
#define CBI_TARGET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cbimg.h"
#include "util.h"

typedef struct cbi_target {
	int fd;
	int is_dev;
	int sparse_new;        /* new file: zero ranges are left as holes */
	int direct;            /* O_DIRECT is on */
	int force;             /* CBI_TARGET_FORCE was given */
	uint8_t *zbuf;         /* zeros, for targets without a zeroing primitive */
	uint64_t zoff, zlen;   /* pending zero range */
	uint64_t written;      /* data bytes written */
	char path[4096];       /* as the caller named it (messages) */
	char tmp[4096];        /* new file: its temporary name until committed; else "" */
} cbi_target;

/* cbi_target_open() flags */
#define CBI_TARGET_FORCE 1u    /* overwrite a device or a non-empty file; replace a file that
                                * appears at a new target's name during the restore */
#define CBI_TARGET_READ 2u     /* read back too (changed-only): the target must exist */

/* Open path to write a disk of size bytes: a block device (not mounted, at
 * least size bytes, opened with O_EXCL; needs CBI_TARGET_FORCE), an existing
 * regular file (resized to size; one that is not empty needs
 * CBI_TARGET_FORCE; never one that backs a loop device that is mounted or
 * held open exclusively: -CBI_EMOUNTED) or, when nothing is at path, a new file made empty and
 * sparse under a temporary name in the same directory. 0 with *out set,
 * or a negative code with err filled (-CBI_EMOUNTED, -CBI_EEXISTS,
 * -CBI_ETOOSMALL, -ELOOP for a name swapped for a link, -EAGAIN for a name
 * that changed between its check and its open, -errno). */
int cbi_target_open(const char *path, uint64_t size, unsigned flags, cbi_target **out, cbi_error *err) CBI_WUR;

/* What the target must not be (cbi_target_open_guarded()). */
typedef struct cbi_target_guard {
	const cbi_fid *files;  /* every file the restore reads (indexes, images, segments, key file) */
	size_t nfiles;
	const cbi_fid *dir;    /* the directory of the chain (DEST): no target inside it; NULL: none */
} cbi_target_guard;

/* cbi_target_open(), refusing a target that is one of g's files (the same
 * device and inode, through any name or link, checked with fstat after the
 * open and before anything is written or resized; for a loop device, its
 * backing file) or that lies in g's directory, even with CBI_TARGET_FORCE:
 * -CBI_EUSAGE. g NULL: no such check. */
int cbi_target_open_guarded(const char *path, uint64_t size, unsigned flags, const cbi_target_guard *g,
			    cbi_target **out, cbi_error *err) CBI_WUR;

/* Try direct I/O for the writes from now on (a hint: unaligned writes and
 * file systems that refuse it go through the page cache). */
void cbi_target_direct(cbi_target *t);

/* Write len bytes of d at off. Calls come in block order; a zero range
 * pending before off is zeroed first. */
int cbi_target_write(cbi_target *t, uint64_t off, const uint8_t *d, size_t len, cbi_error *err) CBI_WUR;

/* [off, off + len) must read as zeros: adjacent ranges are merged and
 * zeroed by the next write or by the commit (a hole is punched or the
 * device told to zero, else zeros are written; a new file keeps its
 * holes). */
int cbi_target_zero(cbi_target *t, uint64_t off, uint64_t len, cbi_error *err) CBI_WUR;

/* Finish: zero the pending range, fsync, and for a new file rename it to its
 * name and fsync the directory. Without CBI_TARGET_FORCE a file that
 * appeared at the name meanwhile is never replaced: -CBI_EEXISTS, and the
 * restored data is dropped with its temporary file (renameat2 with
 * RENAME_NOREPLACE; where the file system lacks it, a hard link that fails
 * on an existing name; where it has neither, as on FUSE FAT and exFAT
 * drivers, a check just before a plain rename). A directory that cannot be
 * synced fails the commit: the file is complete but its name may not
 * survive a crash. */
int cbi_target_commit(cbi_target *t, cbi_error *err) CBI_WUR;

/* Close; a new file not committed is removed with its temporary name. NULL
 * is fine. */
void cbi_target_close(cbi_target *t);

#endif
