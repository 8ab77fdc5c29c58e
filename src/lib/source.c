/* source.c - source reader, identity and mount checks. */
#define _GNU_SOURCE
#include "source.h"

#include <blkid.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/major.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "badmap.h"
#include "mounts.h"
#include "util.h"

/* cachestat(2) (Linux 6.5; the same number on every architecture since
 * 424): how much of a file the page cache holds. Declared here, as the C
 * library and kernel headers of older systems lack it. */
#define CBI_SYS_CACHESTAT 451
struct cbi_cachestat_range {
	uint64_t off, len;
};
struct cbi_cachestat {
	uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

/* A raw image file of which the page cache holds less than half the data
 * is read with O_DIRECT, as a device is: no copy through the page cache
 * (most of a cold backup's CPU) and the live system's cache is left alone
 * (measured: bench/README.md, "O_DIRECT for image files not in the page
 * cache"). A file mostly in the cache (a VM image in use) stays buffered,
 * as direct reads would go to the disk; so does any file when cachestat(2)
 * or O_DIRECT is not available. A direct read the file system refuses
 * (EINVAL: the unaligned tail) goes on buffered (drop_direct). */
static void direct_if_cold(cbi_source *s, const struct stat *st)
{
	struct cbi_cachestat_range r = { 0, 0 }; /* len 0: to the end */
	struct cbi_cachestat cs;
	uint64_t data = (uint64_t)st->st_blocks * 512u;
	long page = sysconf(_SC_PAGESIZE);
	if (!data || page <= 0 || syscall(CBI_SYS_CACHESTAT, s->fd, &r, &cs, 0) != 0 ||
	    cs.nr_cache * (uint64_t)page >= data / 2)
		return;
	if (cbi_fd_direct(s->fd, 1) == 0)
		s->direct = 1;
}

int cbi_source_open(const char *path, cbi_source **out, cbi_error *err)
{
	cbi_source *s = calloc(1, sizeof *s);
	if (!s)
		return cbi_err(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&s->mu, NULL);
	cbi_strlcpy(s->path, path, sizeof s->path);
	/* A link given on purpose (/dev/disk/by-id/...) is resolved once; the
	 * resolved name is then opened without following a link, and what was
	 * opened must be what was checked (fstat against stat): a name swapped
	 * meanwhile is refused, never read. O_NONBLOCK: nothing can hang the open. */
	char real[PATH_MAX];
	struct stat st, fs;
	if (!realpath(path, real) || stat(real, &st) < 0) {
		int e = -errno;
		free(s);
		return cbi_err(err, e, "unable to open source '%s': %s", path, strerror(-e));
	}
	const int fl = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
	if (S_ISBLK(st.st_mode)) {
		/* O_DIRECT rather than buffered reads with posix_fadvise: never
		 * slower, no page-cache copy, and the live system's cache is left
		 * alone (measured: bench/README.md, "O_DIRECT source reads"). */
		s->is_dev = 1;
		s->rdev = st.st_rdev;
		s->fd = open(real, fl | O_DIRECT);
		s->direct = s->fd >= 0;
		if (s->fd < 0)
			s->fd = open(real, fl);
	} else if (S_ISREG(st.st_mode)) {
		s->fd = open(real, fl);
	} else {
		free(s);
		return cbi_err(err, -EINVAL, "source '%s' is neither a block device nor a regular file", path);
	}
	if (s->fd < 0) {
		int e = -errno;
		free(s);
		return cbi_err(err, e, "unable to open source '%s': %s", path, strerror(-e));
	}
	if (fstat(s->fd, &fs) < 0 || fs.st_dev != st.st_dev || fs.st_ino != st.st_ino ||
	    (fs.st_mode & S_IFMT) != (st.st_mode & S_IFMT) || (s->is_dev && fs.st_rdev != st.st_rdev)) {
		cbi_source_close(s);
		return cbi_err(err, -EAGAIN, "source '%s' changed while it was opened: try again", path);
	}
	int cur = fcntl(s->fd, F_GETFL);
	if (cur < 0 || fcntl(s->fd, F_SETFL, cur & ~O_NONBLOCK) < 0) {
		int e = -errno;
		cbi_source_close(s);
		return cbi_err(err, e, "unable to use source '%s': %s", path, strerror(-e));
	}
	if (s->is_dev) {
		uint64_t sz = 0;
		if (ioctl(s->fd, BLKGETSIZE64, &sz) < 0) {
			int e = -errno;
			cbi_source_close(s);
			return cbi_err(err, e, "unable to get size of '%s': %s", path, strerror(-e));
		}
		s->size = sz;
	} else {
		s->size = (uint64_t)st.st_size;
		off_t d = lseek(s->fd, 0, SEEK_DATA);
		s->holes = !(d < 0 && errno == EINVAL);
		posix_fadvise(s->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
		direct_if_cold(s, &fs);
	}
	if (s->size == 0) {
		cbi_source_close(s);
		return cbi_err(err, -EINVAL, "source '%s' is empty", path);
	}
	cbi_source_identity(path, s->id, sizeof s->id);
	*out = s;
	return 0;
}

/* O_DIRECT was refused (alignment, filesystem): go on buffered. The new
 * descriptor replaces the old one under the same number (dup3 is atomic),
 * so reads running in other threads are never left with a closed fd. */
static int drop_direct(cbi_source *s, cbi_error *err)
{
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	if (__atomic_load_n(&s->direct, __ATOMIC_RELAXED)) {
		/* The same open file, never a name looked up again: F_SETFL
		 * clears O_DIRECT on the descriptor every thread reads through. */
		int e = cbi_fd_direct(s->fd, 0);
		if (e)
			rc = cbi_err(err, -CBI_EREAD, "unable to read '%s' without direct I/O: %s", s->path,
				     strerror(-e));
		else
			__atomic_store_n(&s->direct, 0, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int read_range(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, cbi_error *err)
{
	uint64_t pos = off, end = off + len;
	while (pos < end) {
		size_t want = (size_t)(end - pos);
		/* whether this read ran with O_DIRECT: another thread may drop it
		 * meanwhile, and an EINVAL of a direct read must then be retried */
		int was_direct = __atomic_load_n(&s->direct, __ATOMIC_RELAXED);
		ssize_t r = pread(s->fd, buf + (pos - off), want, (off_t)pos);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EINVAL && was_direct) {
			int rc = drop_direct(s, err);
			if (rc)
				return rc;
			continue;
		}
		if (r < 0 && s->rescue && cbi_rescue_media_error(errno)) {
			int rc = cbi_rescue_read(s->rescue, s->fd, s->path, pos, want, buf + (pos - off), err);
			if (rc)
				return rc;
			pos += want;
			continue;
		}
		if (r < 0)
			return cbi_err(err, -CBI_EREAD,
				       "unable to read source '%s' at byte %llu: %s (nothing was written "
				       "in place of the unreadable data)",
				       s->path, (unsigned long long)pos, strerror(errno));
		if (r == 0)
			return cbi_err(err, -CBI_EREAD, "source '%s' ended at byte %llu, expected %llu",
				       s->path, (unsigned long long)pos, (unsigned long long)s->size);
		pos += (uint64_t)r;
	}
	return 0;
}

/* Zero [a, b) of the buffer that starts at source offset off. With a hole
 * map, blocks lying wholly inside the range are only marked, not written:
 * a terabyte of holes then costs no memory traffic. */
static void zero_range(uint64_t off, uint8_t *buf, uint64_t a, uint64_t b, uint32_t bs, uint8_t *hole)
{
	if (hole) {
		uint64_t first = (a - off + bs - 1) / bs, last = (b - off) / bs; /* whole blocks [first, last) */
		for (uint64_t j = first; j < last; j++)
			hole[j] = 1;
		if (last > first) {
			uint64_t ws = off + first * bs, we = off + last * bs;
			if (ws > a)
				memset(buf + (a - off), 0, (size_t)(ws - a));
			if (b > we)
				memset(buf + (we - off), 0, (size_t)(b - we));
			return;
		}
	}
	memset(buf + (a - off), 0, (size_t)(b - a));
}

/* A file that shrank while being read must fail, never read as zeros. */
static int check_not_shrunk(cbi_source *s, uint64_t need, cbi_error *err)
{
	struct stat st;
	if (fstat(s->fd, &st) == 0 && (uint64_t)st.st_size >= need)
		return 0;
	return cbi_err(err, -CBI_EREAD, "source '%s' shrank while being read (expected %llu bytes)",
		       s->path, (unsigned long long)s->size);
}

int cbi_source_read(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, uint64_t *read_bytes,
		    cbi_error *err)
{
	return cbi_source_read_blocks(s, off, len, buf, 0, NULL, read_bytes, err);
}

static int read_blocks_data(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, uint32_t bs,
			    uint8_t *hole, uint64_t *read_bytes, cbi_error *err);

void cbi_source_set_map(cbi_source *s, const uint8_t *used, uint32_t bs)
{
	s->used = used;
	s->used_bs = used ? bs : 0;
}

static int map_used(const cbi_source *s, uint64_t b)
{
	return (s->used[b >> 3] >> (b & 7)) & 1;
}

/* The extent around pos, from the cache or from SEEK_DATA/SEEK_HOLE: *in_hole
 * says whether pos lies in a hole, *ext_end where that hole or data extent
 * ends (it may lie past `need`). need: the end of the caller's range, which
 * a file that shrank no longer reaches. Takes s->mu. */
static int extent_at(cbi_source *s, uint64_t pos, uint64_t need, int *in_hole, uint64_t *ext_end,
		     cbi_error *err)
{
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		if (pos >= s->hole_lo && pos < s->hole_hi) {
			/* inside the hole found by the last SEEK_DATA: no syscall */
			*in_hole = 1;
			*ext_end = s->hole_hi;
			break;
		}
		if (pos >= s->data_lo && pos < s->data_hi) {
			*in_hole = 0;
			*ext_end = s->data_hi;
			break;
		}
		off_t d = lseek(s->fd, (off_t)pos, SEEK_DATA);
		if (d < 0 && errno == ENXIO) {
			/* ENXIO also means "past the end": a file that shrank while
			 * being read must fail, never read as zeros. */
			if ((rc = check_not_shrunk(s, need, err)))
				break;
			s->data_lo = s->data_hi = UINT64_MAX; /* only a hole from here on */
			s->hole_lo = pos;
			s->hole_hi = s->size;
			continue;
		}
		off_t h = d < 0 ? d : lseek(s->fd, d, SEEK_HOLE);
		if (h < 0) {
			rc = cbi_err(err, -CBI_EREAD, "unable to seek in '%s': %s", s->path, strerror(errno));
			break;
		}
		s->data_lo = (uint64_t)d;
		s->data_hi = (uint64_t)h;
		if ((uint64_t)d > pos) {
			s->hole_lo = pos;
			s->hole_hi = (uint64_t)d;
		}
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* End of the file hole at off (off itself when there is none). */
static int file_hole_end(cbi_source *s, uint64_t off, uint64_t *hole_end, cbi_error *err)
{
	*hole_end = off;
	if (!s->holes || off >= s->size)
		return 0;
	int in_hole = 0;
	uint64_t xe = off;
	int rc = extent_at(s, off, s->size, &in_hole, &xe, err);
	if (!rc && in_hole)
		*hole_end = CBI_MIN(xe, s->size);
	return rc;
}

int cbi_source_hole_end(cbi_source *s, uint64_t off, uint64_t *hole_end, cbi_error *err)
{
	/* file holes and unused blocks, alternately, as long as either goes on */
	uint64_t e = off;
	for (;;) {
		uint64_t next = e;
		int rc = file_hole_end(s, e, &next, err);
		if (rc)
			return rc;
		if (s->used && next < s->size && next % s->used_bs == 0) {
			uint64_t b = next / s->used_bs, nb = (s->size + s->used_bs - 1) / s->used_bs;
			while (b < nb && !map_used(s, b))
				b++;
			next = CBI_MIN(b * s->used_bs, s->size);
		}
		if (next == e)
			break;
		e = next;
	}
	*hole_end = e;
	/* a tail hole is taken on trust only after checking the size */
	return e == s->size && e > off && !s->is_dev ? check_not_shrunk(s, s->size, err) : 0;
}

int cbi_source_check_size(cbi_source *s, cbi_error *err)
{
	return s->is_dev ? 0 : check_not_shrunk(s, s->size, err);
}

int cbi_source_read_blocks(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, uint32_t bs,
			   uint8_t *hole, uint64_t *read_bytes, cbi_error *err)
{
	if (!s->used || !hole || bs != s->used_bs || off % bs)
		return read_blocks_data(s, off, len, buf, bs, hole, read_bytes, err);
	/* the runs of used blocks are read; the others are holes */
	uint64_t b0 = off / bs, nb = (len + bs - 1) / bs, total = 0;
	for (uint64_t j = 0; j < nb;) {
		if (!map_used(s, b0 + j)) {
			hole[j++] = 1;
			continue;
		}
		uint64_t k = j + 1, got = 0;
		while (k < nb && map_used(s, b0 + k))
			k++;
		size_t sub = (size_t)(CBI_MIN((uint64_t)len, k * bs) - j * bs);
		int rc = read_blocks_data(s, off + j * bs, sub, buf + j * bs, bs, hole + j, &got, err);
		if (rc)
			return rc;
		total += got;
		j = k;
	}
	*read_bytes = total;
	/* a file that shrank must fail even when its tail is unused */
	if (s->holes && off + len >= s->size)
		return check_not_shrunk(s, s->size, err);
	return 0;
}

static int read_blocks_data(cbi_source *s, uint64_t off, size_t len, uint8_t *buf, uint32_t bs,
			    uint8_t *hole, uint64_t *read_bytes, cbi_error *err)
{
	if (!bs)
		hole = NULL;
	*read_bytes = 0;
	if (!s->holes)
		return (*read_bytes = len, read_range(s, off, len, buf, err));
	uint64_t pos = off, end = off + len;
	int rc;
	while (pos < end) {
		int in_hole = 0;
		uint64_t xe = end;
		if ((rc = extent_at(s, pos, end, &in_hole, &xe, err)))
			return rc;
		uint64_t stop = CBI_MIN(end, xe);
		if (in_hole) {
			zero_range(off, buf, pos, stop, bs, hole);
			pos = stop;
			/* a tail hole is taken on trust until the last read */
			if (pos == s->size && (rc = check_not_shrunk(s, s->size, err)))
				return rc;
			continue;
		}
		if ((rc = read_range(s, pos, (size_t)(stop - pos), buf + (pos - off), err)))
			return rc;
		*read_bytes += stop - pos;
		pos = stop;
	}
	return 0;
}

void cbi_source_close(cbi_source *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static int by_id_name(dev_t dev, char *out, size_t outsz)
{
	/* Prefer WWN names, then any other stable name in /dev/disk/by-id. */
	DIR *d = opendir("/dev/disk/by-id");
	if (!d)
		return 0;
	struct dirent *de;
	char best[256] = "";
	int best_rank = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char p[512];
		struct stat st;
		snprintf(p, sizeof p, "/dev/disk/by-id/%s", de->d_name);
		if (stat(p, &st) < 0 || !S_ISBLK(st.st_mode) || st.st_rdev != dev)
			continue;
		int rank = !strncmp(de->d_name, "wwn-", 4) ? 3 : !strncmp(de->d_name, "nvme-eui", 8) ? 2 : 1;
		if (rank > best_rank || (rank == best_rank && strcmp(de->d_name, best) < 0)) {
			best_rank = rank;
			cbi_strlcpy(best, de->d_name, sizeof best);
		}
	}
	closedir(d);
	if (!best_rank)
		return 0;
	snprintf(out, outsz, "disk:%s", best);
	return 1;
}

/* A partition of a loop device has no by-id name and no backing file of
 * its own, and its kernel name (loop0p1) changes with the loop device's
 * number from one attachment to the next: it is named by what libblkid
 * reads on it instead, "part:<partition UUID>", else "fs:<file system
 * UUID>". 1 when named, 0 when dev is no such partition or carries neither
 * UUID. */
static int loop_part_name(const char *path, dev_t dev, char *out, size_t outsz)
{
	dev_t whole;
	if (cbi_dev_whole_disk(dev, &whole) || whole == dev || major(whole) != LOOP_MAJOR)
		return 0;
	blkid_probe pr = blkid_new_probe_from_filename(path);
	if (!pr)
		return 0;
	const char *v = NULL;
	int named = 0;
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_UUID);
	if (blkid_do_safeprobe(pr) == 0) {
		if (blkid_probe_lookup_value(pr, "PART_ENTRY_UUID", &v, NULL) == 0 && v && v[0])
			named = snprintf(out, outsz, "part:%s", v) > 0;
		else if (blkid_probe_lookup_value(pr, "UUID", &v, NULL) == 0 && v && v[0])
			named = snprintf(out, outsz, "fs:%s", v) > 0;
	}
	blkid_free_probe(pr);
	return named;
}

void cbi_source_identity(const char *path, char *out, size_t outsz)
{
	struct stat st;
	char real[PATH_MAX];
	if (!realpath(path, real))
		cbi_strlcpy(real, path, sizeof real);
	if (stat(path, &st) == 0 && S_ISBLK(st.st_mode)) {
		if (by_id_name(st.st_rdev, out, outsz))
			return;
		/* A loop device is named by the file behind it. */
		char sys[256], back[PATH_MAX] = "";
		snprintf(sys, sizeof sys, "/sys/dev/block/%u:%u/loop/backing_file", major(st.st_rdev),
			 minor(st.st_rdev));
		FILE *f = fopen(sys, "r");
		if (f) {
			if (fgets(back, sizeof back, f)) {
				back[strcspn(back, "\n")] = 0;
				fclose(f);
				snprintf(out, outsz, "loop:%s", back);
				return;
			}
			fclose(f);
		}
		if (loop_part_name(path, st.st_rdev, out, outsz))
			return;
		snprintf(out, outsz, "dev:%s", real);
		return;
	}
	snprintf(out, outsz, "file:%s", real);
}

int cbi_dev_mounted(dev_t dev, char *mnt, size_t mntsz)
{
	cbi_mount m;
	if (!cbi_mount_find(dev, CBI_MOUNT_PARTS, &m))
		return 0;
	if (mnt)
		cbi_strlcpy(mnt, m.target, mntsz);
	return 1;
}

int cbi_dev_mounted_rw(dev_t dev) { return cbi_mount_find(dev, CBI_MOUNT_PARTS | CBI_MOUNT_RW, NULL); }

uint32_t cbi_source_sector(const cbi_source *s)
{
	int ss = 0;
	if (s->is_dev && ioctl(s->fd, BLKSSZGET, &ss) == 0 && ss >= 512 && !(ss & (ss - 1)))
		return (uint32_t)ss;
	return 512;
}
