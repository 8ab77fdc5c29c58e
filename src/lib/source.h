/* source.h - reading the disk to back up: block devices (O_DIRECT, so a
 * backup does not evict the live system's page cache) and raw image files
 * (holes found with SEEK_DATA/SEEK_HOLE are never read; O_DIRECT too when
 * the page cache holds less than half of the file). */
#ifndef CBI_SOURCE_H
#define CBI_SOURCE_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "cbimg.h"

typedef struct cbi_source {
	int fd;
	int is_dev;
	int direct;           /* read with O_DIRECT (a device, or a file not in the cache) */
	int holes;            /* SEEK_DATA works on this file */
	uint64_t size;
	dev_t rdev;
	char path[4096];
	char id[128];
	/* guards the cached extents below and the O_DIRECT fallback: several
	 * threads may read one source at once (cbi_source_read_blocks and
	 * cbi_source_hole_end are thread-safe) */
	pthread_mutex_t mu;
	/* cached data extent [data_lo, data_hi) from SEEK_DATA/SEEK_HOLE */
	uint64_t data_lo, data_hi;
	/* cached hole extent [hole_lo, hole_hi) */
	uint64_t hole_lo, hole_hi;
	/* optional map of the blocks (of used_bs bytes) to read: bit i of
	 * used (byte i / 8) clear means block i is treated as a hole */
	const uint8_t *used;
	uint32_t used_bs;
	/* backup --rescue (badmap.h): a read that fails on the medium is read
	 * again in pieces, and what still fails is zeroed and recorded */
	struct cbi_rescue *rescue;
} cbi_source;

/* Alignment required for buffers passed to cbi_source_read. */
#define CBI_SOURCE_ALIGN 4096u

int cbi_source_open(const char *path, cbi_source **out, cbi_error *err) CBI_WUR;

/* Read [off, off+len) into buf (aligned to CBI_SOURCE_ALIGN). Holes are
 * filled with zeros without reading; *read_bytes gets the bytes actually
 * read. An I/O error returns -CBI_EREAD with the offset in err: data that
 * could not be read is never replaced by zeros. */
int cbi_source_read(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, uint64_t *read_bytes,
		    cbi_error *err) CBI_WUR;

/* Same, for a run of blocks of size bs starting at off (block-aligned): a
 * block wholly inside a hole gets hole[j] = 1 and its bytes in buf are left
 * unwritten; the caller must treat it as zero. hole[] must be cleared by
 * the caller. */
int cbi_source_read_blocks(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, uint32_t bs,
			   uint8_t *hole, uint64_t *read_bytes, cbi_error *err) CBI_WUR;

/* From now on, cbi_source_read_blocks() with block size bs treats every
 * block whose bit in used is clear (bit i in byte i / 8) as a hole: it is
 * flagged and never read (cbi_backup_opts.used_only). used stays the
 * caller's and must outlive the reads; NULL removes the map. */
void cbi_source_set_map(cbi_source *s, const uint8_t *used, uint32_t bs);

/* End of the hole that starts at off: *hole_end = off when off is not in a
 * hole (a hole of the file, or blocks the map of cbi_source_set_map()
 * marks unused), at most s->size. A hole that
 * reaches the end is checked against the file's current size (a file that
 * shrank fails with -CBI_EREAD). Thread-safe. */
int cbi_source_hole_end(cbi_source *s, uint64_t off, uint64_t *hole_end, cbi_error *err) CBI_WUR;

/* A regular file must still be at least s->size bytes long at the end of a
 * run: else -CBI_EREAD (no-op for devices). */
int cbi_source_check_size(cbi_source *s, cbi_error *err) CBI_WUR;

void cbi_source_close(cbi_source *s);

/* The smallest piece a rescue reads: the logical sector size of a device
 * (BLKSSZGET), 512 for a file. */
uint32_t cbi_source_sector(const cbi_source *s);

/* Identity of the source: a stable name of the device or file
 * ("disk:<by-id name>", "loop:<backing file>", for a partition of a loop
 * device "part:<partition UUID>" or "fs:<file system UUID>" (libblkid),
 * "file:<realpath>", "dev:<path>"; format/SPEC.md, "Source identity").
 * out receives at most outsz-1 bytes. */
void cbi_source_identity(const char *path, char *out, size_t outsz);

/* Is block device dev (or a partition of it) mounted? 1 yes, 0 no. Also
 * writes the mount point to mnt when non-NULL. */
int cbi_dev_mounted(dev_t dev, char *mnt, size_t mntsz);

/* Is the source mounted read-write (an inconsistent image is possible)? */
int cbi_dev_mounted_rw(dev_t dev);


#endif
