/* fsmap.c - used blocks of an ext2/3/4 file system, from its block bitmaps,
 * read with libext2fs (e2fsprogs' own library, as partclone does).
 *
 * libext2fs reads the superblock and the group descriptors wherever the
 * features put them (meta_bg included), checks every checksum it knows
 * (superblock, block bitmaps), and hands back one bitmap of the whole file
 * system: a bit per cluster with bigalloc, and for a group flagged
 * BLOCK_UNINIT (no bitmap on disk) the blocks its metadata occupies. What is
 * left here: refusing a file system whose bitmaps cannot be trusted, and
 * mapping file system blocks onto cbimg blocks. */
#define _GNU_SOURCE
#include "fsmap.h"

#include <ext2fs/ext2_err.h>
#include <ext2fs/ext2fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "format.h"
#include "util.h"

/* Read-only features that change who owns a block in ways the bitmaps do
 * not show (next3 snapshots), and any that libext2fs does not know. */
#define RO_COMPAT_REFUSED (EXT4_FEATURE_RO_COMPAT_HAS_SNAPSHOT | ~(uint32_t)EXT2_LIB_FEATURE_RO_COMPAT_SUPP)

static pthread_once_t err_once = PTHREAD_ONCE_INIT;

static void err_init(void) { initialize_ext2_error_table(); }

/* libext2fs's text for e: errno values and its own codes alike. */
static const char *ext_text(errcode_t e)
{
	pthread_once(&err_once, err_init);
	return error_message(e);
}

/* A libext2fs error as a library code: errno values stay themselves, a
 * read that came back short or failed is -CBI_EREAD, the rest (a checksum
 * or a descriptor that cannot be right) -CBI_EDAMAGED. */
static int ext_code(errcode_t e)
{
	if (e > 0 && e < 4096)
		return -(int)e;
	if (e == EXT2_ET_SHORT_READ || e == EXT2_ET_BLOCK_BITMAP_READ || e == EXT2_ET_GDESC_READ)
		return -CBI_EREAD;
	return -CBI_EDAMAGED;
}

/* Why the bitmaps of this file system are not to be trusted, or NULL. */
static const char *refusal(struct ext2_super_block *sb)
{
	if (ext2fs_has_feature_journal_needs_recovery(sb))
		return "its journal needs recovery (mount it once, or run e2fsck)";
	if (ext2fs_has_feature_journal_dev(sb))
		return "it is an external journal device";
	if (sb->s_feature_ro_compat & RO_COMPAT_REFUSED)
		return "it uses snapshots or other features this reader does not handle";
	if (sb->s_state & EXT2_ERROR_FS)
		return "it is marked as having errors (run e2fsck)";
	/* Without a journal, the kernel clears this while the file system is
	 * mounted read-write and sets it at a clean unmount: if it is clear,
	 * the bitmaps may lag behind the inodes (a crash, a snapshot of a live
	 * file system), and a used block could be taken for free. */
	if (!(sb->s_state & EXT2_VALID_FS))
		return "it was not cleanly unmounted (unmount it, or run e2fsck)";
	return NULL;
}

/* Mark the cbimg blocks holding file system blocks [a, b) used. */
static void mark_fs(cbi_fsmap *m, uint64_t a, uint64_t b)
{
	if (a >= b)
		return;
	uint64_t lo = a * m->fs_block_size / m->block_size;
	uint64_t hi = (b * m->fs_block_size - 1) / m->block_size;
	for (uint64_t c = lo; c <= hi && c < m->n_blocks; c++)
		m->used[c >> 3] |= (uint8_t)(1u << (c & 7));
}

/* Every run of set bits of the file system's block bitmap (clusters with
 * bigalloc: a run then covers whole clusters). */
static int mark_bitmap(cbi_fsmap *m, ext2_filsys fs)
{
	blk64_t first = fs->super->s_first_data_block, last = ext2fs_blocks_count(fs->super) - 1;
	blk64_t pos = first;
	while (pos <= last) {
		blk64_t a, b;
		errcode_t e = ext2fs_find_first_set_block_bitmap2(fs->block_map, pos, last, &a);
		if (e == ENOENT)
			break;
		if (e)
			return ext_code(e);
		e = ext2fs_find_first_zero_block_bitmap2(fs->block_map, a, last, &b);
		if (e == ENOENT)
			b = last + 1;
		else if (e)
			return ext_code(e);
		if (b <= a)
			b = a + 1;
		mark_fs(m, a, b);
		pos = b;
	}
	return 0;
}

int cbi_fsmap_read(const char *path, uint64_t size, uint32_t bs, cbi_fsmap **out, cbi_error *err)
{
	*out = NULL;
	cbi_fsmap *m = NULL;
	ext2_filsys fs = NULL;
	const char *why;
	int rc;
	if (size < 2048)
		return cbi_err(err, -ENOTSUP, "--used-only: '%s' holds no ext2/ext3/ext4 file system", path);
	/* Read-only: no flag asks for write access, and no journal is replayed.
	 * The superblock's checksum is checked below, after the refusals: a
	 * file system that is refused anyway is told why, not that its
	 * superblock is damaged. */
	errcode_t e = ext2fs_open2(path, NULL,
				   EXT2_FLAG_64BITS | EXT2_FLAG_JOURNAL_DEV_OK | EXT2_FLAG_IGNORE_CSUM_ERRORS, 0, 0,
				   unix_io_manager, &fs);
	if (e) {
		fs = NULL;
		if (e == EXT2_ET_BAD_MAGIC)
			rc = cbi_err(err, -ENOTSUP, "--used-only: '%s' holds no ext2/ext3/ext4 file system", path);
		else if (e == EXT2_ET_UNSUPP_FEATURE || e == EXT2_ET_REV_TOO_HIGH)
			rc = cbi_err(err, -ENOTSUP,
				     "--used-only: '%s': it has incompatible features this reader does not know",
				     path);
		else if (e > 0 && e < 4096)
			rc = cbi_err(err, -(int)e, "unable to open '%s': %s", path, strerror((int)e));
		else
			rc = cbi_err(err, ext_code(e), "--used-only: '%s': %s", path, ext_text(e));
		goto end;
	}
	if ((why = refusal(fs->super))) {
		rc = cbi_err(err, -ENOTSUP, "--used-only: '%s': %s", path, why);
		goto end;
	}
	if (!ext2fs_verify_csum_type(fs, fs->super) || !ext2fs_superblock_csum_verify(fs, fs->super)) {
		rc = cbi_err(err, -CBI_EDAMAGED, "--used-only: '%s': the superblock fails its checksum (run e2fsck)",
			     path);
		goto end;
	}
	fs->flags &= ~EXT2_FLAG_IGNORE_CSUM_ERRORS; /* the bitmaps' checksums count */
	uint64_t nfs = ext2fs_blocks_count(fs->super);
	if (nfs > size / fs->blocksize) {
		rc = cbi_err(err, -CBI_EDAMAGED, "--used-only: '%s': the file system is larger than the source", path);
		goto end;
	}
	/* A descriptor that fails its checksum or points where no bitmap or
	 * inode table can be: libext2fs would read such a group as free. */
	if (ext2fs_has_group_desc_csum(fs))
		for (dgrp_t g = 0; g < fs->group_desc_count; g++)
			if (!ext2fs_group_desc_csum_verify(fs, g)) {
				rc = cbi_err(err, -CBI_EDAMAGED,
					     "--used-only: '%s': the descriptor of group %llu fails its checksum "
					     "(run e2fsck)",
					     path, (unsigned long long)g);
				goto end;
			}
	if ((e = ext2fs_check_desc(fs))) {
		rc = cbi_err(err, -CBI_EDAMAGED, "--used-only: '%s': %s (run e2fsck)", path, ext_text(e));
		goto end;
	}
	if ((e = ext2fs_read_block_bitmap(fs))) {
		if (e == EXT2_ET_BLOCK_BITMAP_CSUM_INVALID)
			rc = cbi_err(err, -CBI_EDAMAGED, "--used-only: '%s': a block bitmap fails its checksum (run e2fsck)",
				     path);
		else
			rc = cbi_err(err, ext_code(e), "unable to read the block bitmaps of '%s': %s", path,
				     ext_text(e));
		goto end;
	}

	m = calloc(1, sizeof *m);
	uint64_t nb = cbi_nblocks(size, bs);
	if (!m || !(m->used = calloc((size_t)((nb + 7) / 8), 1))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	m->block_size = bs;
	m->n_blocks = nb;
	m->fs_block_size = fs->blocksize;
	m->fs_blocks = nfs;
	struct ext2_super_block *sb = fs->super;
	cbi_strlcpy(m->fs,
		    ext2fs_has_feature_extents(sb) || ext2fs_has_feature_64bit(sb) || ext2fs_has_feature_flex_bg(sb)
			    ? "ext4"
		    : ext2fs_has_feature_journal(sb) ? "ext3"
						     : "ext2",
		    sizeof m->fs);
	/* Outside the groups: the boot block of a 1 KiB-block file system, and
	 * whatever follows the file system on the source. */
	mark_fs(m, 0, sb->s_first_data_block);
	for (uint64_t c = nfs * fs->blocksize / bs; c < nb; c++)
		m->used[c >> 3] |= (uint8_t)(1u << (c & 7));
	if ((rc = mark_bitmap(m, fs))) {
		rc = cbi_err(err, rc, "unable to read the block bitmaps of '%s': %s", path, cbi_strerror(rc));
		goto end;
	}
	/* every group's bitmaps and inode table are used wherever they lie, as
	 * the bitmaps should already say (belt and braces) */
	for (dgrp_t g = 0; g < fs->group_desc_count; g++) {
		mark_fs(m, ext2fs_block_bitmap_loc(fs, g), ext2fs_block_bitmap_loc(fs, g) + 1);
		mark_fs(m, ext2fs_inode_bitmap_loc(fs, g), ext2fs_inode_bitmap_loc(fs, g) + 1);
		mark_fs(m, ext2fs_inode_table_loc(fs, g), ext2fs_inode_table_loc(fs, g) + fs->inode_blocks_per_group);
	}
	for (uint64_t c = 0; c < nb; c++)
		m->used_blocks += (m->used[c >> 3] >> (c & 7)) & 1;
	*out = m;
	m = NULL;
	rc = 0;
end:
	if (fs)
		ext2fs_close_free(&fs);
	cbi_fsmap_free(m);
	return rc;
}

void cbi_fsmap_free(cbi_fsmap *m)
{
	if (!m)
		return;
	free(m->used);
	free(m);
}
