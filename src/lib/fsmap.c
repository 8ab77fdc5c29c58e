/* fsmap.c - used blocks of an ext2/3/4 file system, from its block bitmaps.
 *
 * Layout (the ext4 disk layout documentation of the Linux kernel): the
 * superblock is 1024 bytes at byte 1024; the group descriptor table starts
 * in the block after the superblock's (block first_data_block + 1); each
 * group of blocks_per_group blocks has a block bitmap, one bit per block,
 * set when the block is in use. A group flagged BLOCK_UNINIT has no bitmap
 * on disk: its used blocks are its own superblock backup and descriptor
 * copies, if it has them, and whatever bitmaps and inode tables lie in it
 * (the kernel's ext4_init_block_bitmap computes it the same way). */
#define _GNU_SOURCE
#include "fsmap.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "format.h"
#include "util.h"

#define SB_OFF 1024u
#define EXT_MAGIC 0xEF53u

#define COMPAT_HAS_JOURNAL 0x4u
#define COMPAT_SPARSE_SUPER2 0x200u
#define INCOMPAT_RECOVER 0x4u
#define INCOMPAT_JOURNAL_DEV 0x8u
#define INCOMPAT_META_BG 0x10u
#define INCOMPAT_EXTENTS 0x40u
#define INCOMPAT_64BIT 0x80u
#define INCOMPAT_FLEX_BG 0x200u
/* Incompatible features that do not change where blocks or bitmaps are:
 * filetype, extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
 * largedir, inline_data, encrypt, casefold. */
#define INCOMPAT_OK 0x3f7c2u
#define RO_COMPAT_SPARSE_SUPER 0x1u
/* Read-only features that change what a bitmap bit means or who owns a
 * block: bigalloc (a bit per cluster), snapshots, shared blocks. */
#define RO_COMPAT_REFUSED (0x200u | 0x80u | 0x4000u)
#define RO_COMPAT_KNOWN 0x1ffffu
#define BG_BLOCK_UNINIT 0x2u
#define RO_COMPAT_GDT_CSUM_ANY (0x10u | 0x400u) /* gdt_csum, metadata_csum */
#define STATE_VALID 0x1u  /* cleanly unmounted (and cleared while mounted without a journal) */
#define STATE_ERRORS 0x2u
#define RO_COMPAT_GDT_CSUM 0x10u
#define RO_COMPAT_METADATA_CSUM 0x400u
#define INCOMPAT_CSUM_SEED 0x2000u
#define GD_CHECKSUM_OFF 0x1eu

typedef struct ext_sb {
	uint64_t blocks;
	uint32_t first_data_block, bsize, bpg, ipg, inode_size;
	uint32_t compat, incompat, ro_compat, state;
	uint32_t reserved_gdt, desc_size, backup_bgs[2];
	uint64_t ngroups, gdt_blocks;
	uint8_t uuid[16];
	uint32_t csum_seed;    /* metadata_csum: crc32c seed of every checksum */
} ext_sb;

typedef struct ext_gd {
	uint64_t block_bitmap, inode_bitmap, inode_table;
	uint32_t flags;
} ext_gd;

/* CRC32C (Castagnoli, reflected 0x82F63B78) and CRC16 (0x8005, reflected
 * 0xA001) as the kernel's crc32c() and crc16() compute them: the caller's
 * initial value, no final inversion. None of the project's libraries
 * offers them, and they are a few lines. */
static uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
	static uint32_t t[256];
	if (!t[1])
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
			t[i] = c;
		}
	const uint8_t *p = data;
	while (len--)
		crc = t[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

static uint16_t crc16(uint16_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? (uint16_t)((crc >> 1) ^ 0xA001u) : (uint16_t)(crc >> 1);
	}
	return crc;
}

/* Does group g's descriptor p carry a valid checksum (or none to check)? */
static int gd_csum_ok(const ext_sb *s, uint64_t g, const uint8_t *p)
{
	uint8_t le[4];
	st32(le, (uint32_t)g);
	uint16_t want = ld16(p + GD_CHECKSUM_OFF), got;
	if (s->ro_compat & RO_COMPAT_METADATA_CSUM) {
		static const uint8_t zero[2];
		uint32_t c = crc32c(s->csum_seed, le, 4);
		c = crc32c(c, p, GD_CHECKSUM_OFF);
		c = crc32c(c, zero, 2);
		c = crc32c(c, p + GD_CHECKSUM_OFF + 2, s->desc_size - GD_CHECKSUM_OFF - 2);
		got = (uint16_t)c;
	} else if (s->ro_compat & RO_COMPAT_GDT_CSUM) {
		uint16_t c = crc16(0xffffu, s->uuid, 16);
		c = crc16(c, le, 4);
		c = crc16(c, p, GD_CHECKSUM_OFF);
		if ((s->incompat & INCOMPAT_64BIT) && s->desc_size > GD_CHECKSUM_OFF + 2)
			c = crc16(c, p + GD_CHECKSUM_OFF + 2, s->desc_size - GD_CHECKSUM_OFF - 2);
		got = c;
	} else {
		return 1;
	}
	return got == want;
}

/* Does the block bitmap bm of the group whose descriptor is p carry its
 * checksum (metadata_csum), or none to check? */
static int bitmap_csum_ok(const ext_sb *s, const uint8_t *p, const uint8_t *bm)
{
	if (!(s->ro_compat & RO_COMPAT_METADATA_CSUM))
		return 1;
	uint32_t c = crc32c(s->csum_seed, bm, s->bpg / 8);
	uint32_t want = ld16(p + 0x18);
	if (s->desc_size >= 0x3a)
		want |= (uint32_t)ld16(p + 0x38) << 16;
	else
		c &= 0xffffu;
	return c == want;
}

static int read_at(int fd, void *buf, size_t len, uint64_t off)
{
	int rc = cbi_pread_full(fd, buf, len, off);
	return rc == -CBI_ETRUNCATED ? -CBI_EDAMAGED : rc;
}

static int parse_sb(const uint8_t *b, uint64_t size, ext_sb *s, const char **why)
{
	memset(s, 0, sizeof *s);
	if (ld16(b + 0x38) != EXT_MAGIC) {
		*why = "no ext2/ext3/ext4 file system";
		return -ENOTSUP;
	}
	uint32_t log = ld32(b + 0x18);
	s->incompat = ld32(b + 0x60);
	s->ro_compat = ld32(b + 0x64);
	s->compat = ld32(b + 0x5c);
	s->state = ld16(b + 0x3a);
	if (s->incompat & INCOMPAT_RECOVER) {
		*why = "its journal needs recovery (mount it once, or run e2fsck)";
		return -ENOTSUP;
	}
	if (s->incompat & INCOMPAT_JOURNAL_DEV) {
		*why = "it is an external journal device";
		return -ENOTSUP;
	}
	if (s->incompat & INCOMPAT_META_BG) {
		*why = "it uses meta_bg, which this reader does not handle";
		return -ENOTSUP;
	}
	if (s->incompat & ~INCOMPAT_OK) {
		*why = "it has incompatible features this reader does not know";
		return -ENOTSUP;
	}
	if ((s->ro_compat & RO_COMPAT_REFUSED) || (s->ro_compat & ~RO_COMPAT_KNOWN)) {
		*why = "it uses bigalloc, snapshots or other features this reader does not handle";
		return -ENOTSUP;
	}
	if (s->state & STATE_ERRORS) {
		*why = "it is marked as having errors (run e2fsck)";
		return -ENOTSUP;
	}
	/* Without a journal, the kernel clears this while the file system is
	 * mounted read-write and sets it at a clean unmount: if it is clear,
	 * the bitmaps may lag behind the inodes (a crash, a snapshot of a live
	 * file system), and a used block could be taken for free. */
	if (!(s->state & STATE_VALID)) {
		*why = "it was not cleanly unmounted (unmount it, or run e2fsck)";
		return -ENOTSUP;
	}
	*why = "the superblock is inconsistent";
	if (log > 6)
		return -CBI_EDAMAGED;
	s->bsize = 1024u << log;
	s->blocks = ld32(b + 0x04);
	if (s->incompat & INCOMPAT_64BIT)
		s->blocks |= (uint64_t)ld32(b + 0x150) << 32;
	s->first_data_block = ld32(b + 0x14);
	s->bpg = ld32(b + 0x20);
	s->ipg = ld32(b + 0x28);
	s->inode_size = ld32(b + 0x4c) >= 1 ? ld16(b + 0x58) : 128u;
	s->reserved_gdt = ld16(b + 0xce);
	s->desc_size = (s->incompat & INCOMPAT_64BIT) ? ld16(b + 0xfe) : 32u;
	s->backup_bgs[0] = ld32(b + 0x24c);
	s->backup_bgs[1] = ld32(b + 0x250);
	memcpy(s->uuid, b + 0x68, 16);
	s->csum_seed = (s->incompat & INCOMPAT_CSUM_SEED) ? ld32(b + 0x270) : crc32c(~0u, s->uuid, 16);
	if (s->first_data_block != (s->bsize == 1024 ? 1u : 0u) || !s->bpg || s->bpg > 8 * s->bsize ||
	    s->desc_size < 32 || s->desc_size > 1024 || (s->desc_size & (s->desc_size - 1)) ||
	    s->blocks <= s->first_data_block || s->inode_size < 128 || s->inode_size > s->bsize)
		return -CBI_EDAMAGED;
	if (s->blocks > size / s->bsize) {
		*why = "the file system is larger than the source";
		return -CBI_EDAMAGED;
	}
	s->ngroups = (s->blocks - s->first_data_block + s->bpg - 1) / s->bpg;
	s->gdt_blocks = (s->ngroups * s->desc_size + s->bsize - 1) / s->bsize;
	return 0;
}

static void parse_gd(const uint8_t *p, const ext_sb *s, ext_gd *g)
{
	g->block_bitmap = ld32(p);
	g->inode_bitmap = ld32(p + 4);
	g->inode_table = ld32(p + 8);
	g->flags = ld16(p + 0x12);
	if (s->desc_size >= 64) {
		g->block_bitmap |= (uint64_t)ld32(p + 0x20) << 32;
		g->inode_bitmap |= (uint64_t)ld32(p + 0x24) << 32;
		g->inode_table |= (uint64_t)ld32(p + 0x28) << 32;
	}
}

static int is_power_of(uint64_t g, uint64_t base)
{
	while (g > 1 && g % base == 0)
		g /= base;
	return g == 1;
}

/* Does group g hold a superblock backup (and descriptor copies)? */
static int group_has_super(const ext_sb *s, uint64_t g)
{
	if (g == 0)
		return 1;
	if (s->compat & COMPAT_SPARSE_SUPER2)
		return g == s->backup_bgs[0] || g == s->backup_bgs[1];
	if (!(s->ro_compat & RO_COMPAT_SPARSE_SUPER))
		return 1;
	return g == 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7);
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

/* Group g starts at fs block first and has n blocks; bm is its bitmap. */
static void mark_bitmap(cbi_fsmap *m, uint64_t first, uint64_t n, const uint8_t *bm)
{
	uint64_t i = 0;
	while (i < n) {
		if ((i & 63) == 0 && i + 64 <= n) {
			uint64_t w;
			memcpy(&w, bm + i / 8, 8);
			if (!w) {
				i += 64;
				continue;
			}
		}
		if (!((bm[i >> 3] >> (i & 7)) & 1)) {
			i++;
			continue;
		}
		/* used: mark its cbimg block, then go on after that block */
		uint64_t fb = first + i;
		mark_fs(m, fb, fb + 1);
		uint64_t c = fb * m->fs_block_size / m->block_size;
		uint64_t next = ((c + 1) * (uint64_t)m->block_size + m->fs_block_size - 1) / m->fs_block_size;
		i = next > first + i ? next - first : i + 1;
	}
}

int cbi_fsmap_read(const char *path, uint64_t size, uint32_t bs, cbi_fsmap **out, cbi_error *err)
{
	*out = NULL;
	uint8_t sbb[1024];
	uint8_t *gdt = NULL, *bm = NULL;
	cbi_fsmap *m = NULL;
	ext_sb s;
	const char *why = "";
	int rc;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cbi_err(err, -errno, "unable to open '%s': %s", path, strerror(errno));
	if (size < SB_OFF + sizeof sbb) {
		rc = cbi_err(err, -ENOTSUP, "--used-only: '%s' holds no ext2/ext3/ext4 file system", path);
		goto end;
	}
	if ((rc = read_at(fd, sbb, sizeof sbb, SB_OFF))) {
		rc = cbi_err(err, rc == -CBI_EDAMAGED ? -CBI_EREAD : rc, "unable to read '%s': %s", path,
			     cbi_errtext(rc));
		goto end;
	}
	if ((rc = parse_sb(sbb, size, &s, &why))) {
		rc = cbi_err(err, rc, "--used-only: '%s': %s", path, why);
		goto end;
	}
	m = calloc(1, sizeof *m);
	uint64_t nb = cbi_nblocks(size, bs);
	if (!m || !(m->used = calloc((size_t)((nb + 7) / 8), 1)) ||
	    !(gdt = malloc((size_t)(s.gdt_blocks * s.bsize))) || !(bm = malloc(s.bsize))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	m->block_size = bs;
	m->n_blocks = nb;
	m->fs_block_size = s.bsize;
	m->fs_blocks = s.blocks;
	cbi_strlcpy(m->fs, (s.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG)) ? "ext4"
			   : (s.compat & COMPAT_HAS_JOURNAL)                                     ? "ext3"
												 : "ext2",
		    sizeof m->fs);
	if ((rc = read_at(fd, gdt, (size_t)(s.gdt_blocks * s.bsize), (uint64_t)(s.first_data_block + 1) * s.bsize))) {
		rc = cbi_err(err, rc == -CBI_EDAMAGED ? -CBI_EREAD : rc, "unable to read the group descriptors of '%s': %s",
			     path, cbi_errtext(rc));
		goto end;
	}
	/* Outside the groups: the boot block of a 1 KiB-block file system, and
	 * whatever follows the file system on the source. */
	mark_fs(m, 0, s.first_data_block);
	for (uint64_t c = s.blocks * s.bsize / bs; c < nb; c++)
		m->used[c >> 3] |= (uint8_t)(1u << (c & 7));
	uint64_t itable = ((uint64_t)s.ipg * s.inode_size + s.bsize - 1) / s.bsize;
	for (uint64_t g = 0; g < s.ngroups; g++) {
		ext_gd d;
		const uint8_t *gp = gdt + g * s.desc_size;
		if (!gd_csum_ok(&s, g, gp)) {
			rc = cbi_err(err, -CBI_EDAMAGED,
				     "--used-only: '%s': the descriptor of group %llu fails its checksum (run e2fsck)",
				     path, (unsigned long long)g);
			goto end;
		}
		parse_gd(gp, &s, &d);
		uint64_t first = s.first_data_block + g * s.bpg;
		uint64_t n = CBI_MIN((uint64_t)s.bpg, s.blocks - first);
		if (d.block_bitmap < s.first_data_block || d.block_bitmap >= s.blocks ||
		    d.inode_bitmap >= s.blocks || d.inode_table + itable > s.blocks) {
			rc = cbi_err(err, -CBI_EDAMAGED,
				     "--used-only: '%s': group %llu's descriptor points outside the file system", path,
				     (unsigned long long)g);
			goto end;
		}
		if ((d.flags & BG_BLOCK_UNINIT) && (s.ro_compat & RO_COMPAT_GDT_CSUM_ANY)) {
			/* no bitmap on disk: everything but the metadata is free (the
			 * flag counts only with group descriptor checksums, as in the
			 * kernel) */
			if (group_has_super(&s, g))
				mark_fs(m, first, first + 1 + s.gdt_blocks + s.reserved_gdt);
		} else {
			if ((rc = read_at(fd, bm, s.bsize, d.block_bitmap * s.bsize))) {
				rc = cbi_err(err, rc == -CBI_EDAMAGED ? -CBI_EREAD : rc,
					     "unable to read the block bitmap of group %llu of '%s': %s",
					     (unsigned long long)g, path, cbi_errtext(rc));
				goto end;
			}
			if (!bitmap_csum_ok(&s, gp, bm)) {
				rc = cbi_err(err, -CBI_EDAMAGED,
					     "--used-only: '%s': the block bitmap of group %llu fails its checksum "
					     "(run e2fsck)",
					     path, (unsigned long long)g);
				goto end;
			}
			mark_bitmap(m, first, n, bm);
		}
		/* every group's bitmaps and inode table are used wherever they lie
		 * (with flex_bg, often in another group, which may be uninit) */
		mark_fs(m, d.block_bitmap, d.block_bitmap + 1);
		mark_fs(m, d.inode_bitmap, d.inode_bitmap + 1);
		mark_fs(m, d.inode_table, d.inode_table + itable);
	}
	for (uint64_t c = 0; c < nb; c++)
		m->used_blocks += (m->used[c >> 3] >> (c & 7)) & 1;
	*out = m;
	m = NULL;
	rc = 0;
end:
	close(fd);
	free(gdt);
	free(bm);
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
