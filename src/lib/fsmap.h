/* fsmap.h - which blocks of a source its file system uses, for backups that
 * read only those (cbi_backup_opts.used_only; format/SPEC.md, "Used blocks
 * only"). ext2, ext3 and ext4 are understood, from their block bitmaps as
 * libext2fs reads them (every layout e2fsprogs knows: flex_bg, meta_bg,
 * bigalloc, 64bit, uninit groups); a block of the file system that the
 * bitmaps mark free is unused, everything else (the file system's metadata,
 * anything beyond its end) is used. Whenever the bitmaps cannot be trusted,
 * it refuses (-ENOTSUP, -CBI_EDAMAGED) rather than guess: a block wrongly
 * taken for unused would be lost from the backup. */
#ifndef CBI_FSMAP_H
#define CBI_FSMAP_H

#include <stdint.h>

#include "cbimg.h"

typedef struct cbi_fsmap {
	uint32_t block_size;   /* the cbimg block size the map is for */
	uint64_t n_blocks;     /* cbimg blocks of the source */
	uint64_t used_blocks;  /* of which hold at least one used file system block */
	uint32_t fs_block_size;
	uint64_t fs_blocks;    /* blocks of the file system (its size / fs_block_size) */
	char fs[8];            /* "ext2", "ext3" or "ext4" */
	uint8_t *used;         /* bit i (byte i / 8, bit i % 8): cbimg block i is used */
} cbi_fsmap;

/* Read the file system at the start of path (size bytes, as the source
 * reader found) and map it onto blocks of bs bytes. *out is the caller's
 * (cbi_fsmap_free). Errors: -ENOTSUP (no ext2/3/4 file system, or one whose
 * bitmaps cannot be trusted: a journal that needs recovery, errors
 * recorded, not cleanly unmounted; an external journal device; snapshots or
 * features libext2fs does not know), -CBI_EDAMAGED (a checksum that fails, a
 * group descriptor that cannot be right, a file system larger than the
 * source), -CBI_EREAD, -errno. */
int cbi_fsmap_read(const char *path, uint64_t size, uint32_t bs, cbi_fsmap **out, cbi_error *err) CBI_WUR;

void cbi_fsmap_free(cbi_fsmap *m);

/* Is cbimg block b used? Blocks beyond the map count as used. */
static inline int cbi_fsmap_used(const cbi_fsmap *m, uint64_t b)
{
	return b >= m->n_blocks || ((m->used[b >> 3] >> (b & 7)) & 1);
}

#endif
