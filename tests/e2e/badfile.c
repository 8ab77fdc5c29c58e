/* badfile.c - a FUSE file system of one read-only file, "disk", that serves
 * the bytes of a backing file and fails reads (EIO) that meet a configured
 * byte range: a source with bad sectors for tests/e2e/t_rescue.sh.
 *
 *     badfile BACKING RANGES MOUNTPOINT
 *
 * RANGES holds one range per line, "OFFSET LENGTH" in decimal bytes (blank
 * lines and lines starting with '#' are ignored). It is read again whenever
 * its modification time or size changes, so a test "heals" the disk by
 * rewriting it. Reads go straight to this process (direct_io), so a read of
 * one 512-byte sector fails exactly when that sector meets a range. Runs in
 * the foreground, single-threaded; unmount with fusermount3 -u. */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *backing, *ranges_path;
static int bfd = -1;
static struct {
	uint64_t off, len;
} *rg;
static size_t nrg;
static struct timespec rg_mtime;
static off_t rg_size = -1;

/* Read RANGES again when it changed since the last look. */
static void load_ranges(void)
{
	struct stat st;
	if (stat(ranges_path, &st) < 0) {
		nrg = 0;
		rg_size = -1;
		return;
	}
	if (st.st_size == rg_size && st.st_mtim.tv_sec == rg_mtime.tv_sec && st.st_mtim.tv_nsec == rg_mtime.tv_nsec)
		return;
	FILE *f = fopen(ranges_path, "r");
	if (!f)
		return;
	rg_mtime = st.st_mtim;
	rg_size = st.st_size;
	nrg = 0;
	char line[256];
	size_t cap = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long long o, l;
		if (line[0] == '#' || sscanf(line, "%llu %llu", &o, &l) != 2 || !l)
			continue;
		if (nrg == cap) {
			cap = cap ? cap * 2 : 64;
			void *p = realloc(rg, cap * sizeof *rg);
			if (!p)
				break;
			rg = p;
		}
		rg[nrg].off = o;
		rg[nrg].len = l;
		nrg++;
	}
	fclose(f);
}

static int bad(uint64_t off, uint64_t len)
{
	load_ranges();
	for (size_t i = 0; i < nrg; i++)
		if (rg[i].off < off + len && off < rg[i].off + rg[i].len)
			return 1;
	return 0;
}

static int bf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	memset(st, 0, sizeof *st);
	if (!strcmp(path, "/")) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (strcmp(path, "/disk"))
		return -ENOENT;
	struct stat b;
	if (fstat(bfd, &b) < 0)
		return -errno;
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = b.st_size;
	st->st_mtim = b.st_mtim;
	return 0;
}

static int bf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags fl)
{
	if (strcmp(path, "/"))
		return -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, "disk", NULL, 0, 0);
	return 0;
}

static int bf_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, "/disk"))
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fi->direct_io = 1; /* every read reaches bf_read with its own offset and size */
	return 0;
}

static int bf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	if (bad((uint64_t)off, size))
		return -EIO;
	size_t done = 0;
	while (done < size) {
		ssize_t k = pread(bfd, buf + done, size - done, off + (off_t)done);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			break;
		done += (size_t)k;
	}
	return (int)done;
}

static const struct fuse_operations ops = {
	.getattr = bf_getattr,
	.readdir = bf_readdir,
	.open = bf_open,
	.read = bf_read,
};

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: badfile BACKING RANGES MOUNTPOINT [FUSE options]\n");
		return 2;
	}
	/* fuse_main() changes to "/": keep absolute names */
	backing = realpath(argv[1], NULL);
	ranges_path = realpath(argv[2], NULL);
	if (!backing || !ranges_path) {
		perror("realpath");
		return 1;
	}
	if ((bfd = open(backing, O_RDONLY | O_CLOEXEC)) < 0) {
		perror(backing);
		return 1;
	}
	load_ranges();
	/* fuse_main(prog, -f -s -o ..., MOUNTPOINT, extra options) */
	char *fa[32];
	int n = 0;
	fa[n++] = argv[0];
	fa[n++] = "-f";
	fa[n++] = "-s";
	fa[n++] = "-o";
	fa[n++] = "ro,default_permissions,fsname=badfile";
	fa[n++] = argv[3];
	for (int i = 4; i < argc && n < 31; i++)
		fa[n++] = argv[i];
	fa[n] = NULL;
	return fuse_main(n, fa, &ops, NULL);
}
