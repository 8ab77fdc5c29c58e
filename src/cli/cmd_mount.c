/* cmd_mount.c - 'cbimg mount' and 'cbimg umount': the disk of a point as a
 * read-only FUSE file system (libfuse3), served by the library's point
 * reader (cbimg.h, "point reader").
 *
 * MOUNTPOINT shows disk.img (the whole disk, its exact size) and, when the
 * disk holds a partition table, part1, part2, ... (one file per partition,
 * numbered as the table numbers them). With --fs, each partition that holds
 * a file system is a directory partN instead (the disk without a table: a
 * directory fs), where that file system is mounted read-only from a loop
 * device over disk.img (offset and size of the partition).
 *
 * The process that serves the mount opens the chain, reads the passphrase
 * and probes the disk before it leaves the terminal, so that every error
 * shows there: without -f it forks, the child mounts (FUSE, then the file
 * systems) and tells the waiting parent the outcome through a pipe, and the
 * parent exits with it. 'cbimg umount' takes the file systems down first,
 * then the FUSE mount, then waits for the serving process to end (its pid
 * is the root directory's extended attribute user.cbimg.pid), so that the
 * chain's lock is released when it returns. */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/loop.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define PID_XATTR "user.cbimg.pid"
#define POINT_XATTR "user.cbimg.point"
#define STATS_XATTR "user.cbimg.stats"
#define FS_TYPE "fuse.cbimg"

/* ------------------------------------------------------ the mount table */

/* One mount of /proc/self/mountinfo. */
struct mnt_ent {
	char dir[4096];
	char type[64];
};

/* Undo mountinfo's octal escapes (\040 for a space, ...) in place. */
static void unescape(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = '\0';
}

/* Every mount, in the order of mountinfo (a mount after the one it is on).
 * *n mounts in *out (free() it); -1 if mountinfo cannot be read. */
static int read_mounts(struct mnt_ent **out, size_t *n)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0, len = 0, sz = 0;
	struct mnt_ent *v = NULL;

	*out = NULL;
	*n = 0;
	if (!f)
		return -1;
	while (getline(&line, &sz, f) > 0) {
		char dir[4096], type[64];
		char *sep = strstr(line, " - ");

		if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s", dir) != 1 || sscanf(sep + 3, "%63s", type) != 1)
			continue;
		if (len == cap) {
			struct mnt_ent *w = realloc(v, (cap = cap ? 2 * cap : 64) * sizeof *v);

			if (!w)
				break;
			v = w;
		}
		unescape(dir);
		snprintf(v[len].dir, sizeof v[len].dir, "%s", dir);
		snprintf(v[len].type, sizeof v[len].type, "%s", type);
		len++;
	}
	free(line);
	fclose(f);
	*out = v;
	*n = len;
	return 0;
}

/* The type of the newest mount at dir, "" if none. */
static void mount_type(const char *dir, char *type, size_t size)
{
	struct mnt_ent *v;
	size_t n;

	type[0] = '\0';
	if (read_mounts(&v, &n) < 0)
		return;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].dir, dir))
			snprintf(type, size, "%s", v[i].type);
	free(v);
}

/* The absolute form of path without following its last component (which
 * may be a mount whose server is gone: stat fails there): the real path of
 * its directory, then its name. */
static int abs_path(const char *path, char *out, size_t size)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	const char *base;
	char *slash;
	size_t len = strlen(path);

	if (!len || len >= sizeof tmp)
		return -1;
	snprintf(tmp, sizeof tmp, "%s", path);
	while (len > 1 && tmp[len - 1] == '/')
		tmp[--len] = '\0';
	slash = strrchr(tmp, '/');
	if (!slash) {
		base = tmp;
		if (!realpath(".", dir))
			return -1;
	} else {
		*slash = '\0';
		base = slash + 1;
		if (!realpath(slash == tmp ? "/" : tmp, dir))
			return -1;
	}
	if (!strcmp(base, ".") || !strcmp(base, ".."))
		return realpath(path, out) ? 0 : -1;
	if ((size_t)snprintf(out, size, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", base) >= size)
		return -1;
	return 0;
}

/* --------------------------------------------------------- the view */

struct mfile {
	char name[16];
	uint64_t off, size;     /* in the disk */
	int is_dir;             /* --fs: a file system is mounted on it */
	char fstype[32];
	unsigned number;        /* partition number, 0 for the whole disk */
};

static struct mstate {
	cbi_pointrd *pr;
	struct mfile files[CBI_MAX_PARTS + 1];
	size_t nfiles;
	struct timespec mtime;
	char point[PATH_MAX];
	char mnt[PATH_MAX];
	int daemon;             /* log to syslog, not stderr */
	struct fuse *fuse;
	pthread_t main_thread;
	/* --fs: the file systems mounted, in order */
	char subs[CBI_MAX_PARTS + 1][PATH_MAX + 32];
	size_t nsubs;
	char err[1200];         /* the helper thread's failure; "" if none */
	int err_status;
	int status_fd;          /* the waiting parent's pipe, -1 if none (or told) */
} M;

static void mount_log(void *ud, const char *msg)
{
	if (M.daemon)
		syslog(LOG_ERR, "%s", msg);
	else
		cli_say(NULL, "%s", msg);
}

static const struct mfile *find_file(const char *path)
{
	if (path[0] != '/')
		return NULL;
	for (size_t i = 0; i < M.nfiles; i++)
		if (!strcmp(path + 1, M.files[i].name))
			return &M.files[i];
	return NULL;
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	/* Nothing here ever changes: keep pages and names as long as the kernel likes. */
	cfg->kernel_cache = 1;
	cfg->entry_timeout = 86400;
	cfg->attr_timeout = 86400;
	cfg->negative_timeout = 86400;
	cfg->use_ino = 0;
	return NULL;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	const struct mfile *f = NULL;

	memset(st, 0, sizeof *st);
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_mtim = st->st_ctim = st->st_atim = M.mtime;
	if (strcmp(path, "/") && !(f = find_file(path)))
		return -ENOENT;
	if (!f || f->is_dir) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	}
	st->st_mode = S_IFREG | 0440;
	st->st_nlink = 1;
	st->st_size = (off_t)f->size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((f->size + 511) / 512);
	return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	const struct mfile *f = NULL;

	if (strcmp(path, "/") && !((f = find_file(path)) && f->is_dir))
		return f ? -ENOTDIR : -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	if (!f)
		for (size_t i = 0; i < M.nfiles; i++)
			fill(buf, M.files[i].name, NULL, 0, 0);
	return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
	const struct mfile *f = find_file(path);

	if (!f)
		return -ENOENT;
	if (f->is_dir)
		return -EISDIR;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fi->fh = (uint64_t)(f - M.files);
	fi->keep_cache = 1;
	return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	const struct mfile *f = &M.files[fi->fh];
	cbi_error err = { 0 };
	int64_t got;

	if (off < 0)
		return -EINVAL;
	if ((uint64_t)off >= f->size)
		return 0;
	if (size > f->size - (uint64_t)off)
		size = (size_t)(f->size - (uint64_t)off);
	got = cbi_pointrd_pread(M.pr, buf, size, f->off + (uint64_t)off, &err);
	return got < 0 ? -EIO : (int)got; /* the reader logged which block */
}

static int fs_getxattr(const char *path, const char *name, char *value, size_t size)
{
	char v[PATH_MAX + 32];
	size_t n;

	if (strcmp(path, "/"))
		return -ENODATA;
	if (!strcmp(name, PID_XATTR))
		snprintf(v, sizeof v, "%ld", (long)getpid());
	else if (!strcmp(name, POINT_XATTR))
		snprintf(v, sizeof v, "%s", M.point);
	else if (!strcmp(name, STATS_XATTR)) {
		cbi_pointrd_stats st;

		cbi_pointrd_stats_get(M.pr, &st);
		snprintf(v, sizeof v,
			 "reads=%" PRIu64 " hits=%" PRIu64 " misses=%" PRIu64 " zero_blocks=%" PRIu64
			 " failures=%" PRIu64 " cache_blocks=%" PRIu64 " cache_max=%" PRIu64,
			 st.reads, st.hits, st.misses, st.zero_blocks, st.failures, st.cache_blocks, st.cache_max);
	} else
		return -ENODATA;
	n = strlen(v);
	if (!size)
		return (int)n;
	if (size < n)
		return -ERANGE;
	memcpy(value, v, n);
	return (int)n;
}

static int fs_listxattr(const char *path, char *list, size_t size)
{
	static const char names[] = PID_XATTR "\0" POINT_XATTR "\0" STATS_XATTR;

	if (strcmp(path, "/"))
		return 0;
	if (!size)
		return (int)sizeof names;
	if (size < sizeof names)
		return -ERANGE;
	memcpy(list, names, sizeof names);
	return (int)sizeof names;
}

static const struct fuse_operations ops = {
	.init = fs_init,
	.getattr = fs_getattr,
	.readdir = fs_readdir,
	.open = fs_open,
	.read = fs_read,
	.getxattr = fs_getxattr,
	.listxattr = fs_listxattr,
};

/* -------------------------------------------------- --fs: loop mounts */

/* Options of a read-only mount that never writes, journal replay
 * included; xfs also without its check that no other file system with the
 * same UUID is mounted (the disk backed up may well be). */
static const char *fs_options(const char *type)
{
	if (!strcmp(type, "ext3") || !strcmp(type, "ext4"))
		return "noload";
	if (!strcmp(type, "xfs"))
		return "norecovery,nouuid";
	if (!strcmp(type, "btrfs"))
		return "rescue=nologreplay";
	return NULL;
}

/* File systems --fs mounts (blkid's names); others (swap, RAID or LVM
 * members, encrypted volumes) stay files. */
static int fs_mountable(const char *type)
{
	static const char *const known[] = { "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "ntfs",
					     "ntfs3", "f2fs", "iso9660", "udf", "hfsplus", "jfs", NULL };

	for (int i = 0; known[i]; i++)
		if (!strcmp(type, known[i]))
			return 1;
	return 0;
}

/* A read-only loop device over [off, off + size) of file, detached by the
 * kernel when its last user goes (autoclear): its open descriptor, and its
 * name in dev; -errno. */
static int loop_attach(const char *file, uint64_t off, uint64_t size, char *dev, size_t devsz)
{
	int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	int ffd = open(file, O_RDONLY | O_CLOEXEC);
	int rc = -EBUSY;

	if (ctl < 0 || ffd < 0) {
		rc = -errno;
		goto end;
	}
	for (int tries = 0; tries < 16 && rc == -EBUSY; tries++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);
		struct loop_config cfg;
		int lfd;

		if (n < 0) {
			rc = -errno;
			break;
		}
		snprintf(dev, devsz, "/dev/loop%d", n);
		if ((lfd = open(dev, O_RDONLY | O_CLOEXEC)) < 0) {
			rc = -errno;
			break;
		}
		memset(&cfg, 0, sizeof cfg);
		cfg.fd = (uint32_t)ffd;
		cfg.info.lo_offset = off;
		cfg.info.lo_sizelimit = size;
		cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
		memcpy(cfg.info.lo_file_name, file, strnlen(file, sizeof cfg.info.lo_file_name - 1));
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0) {
			rc = lfd;
			break;
		}
		rc = -errno; /* EBUSY: another process took it meanwhile */
		close(lfd);
	}
end:
	if (ctl >= 0)
		close(ctl);
	if (ffd >= 0)
		close(ffd);
	return rc;
}

static int fail_msg(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_msg(int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(M.err, sizeof M.err, fmt, ap);
	va_end(ap);
	M.err_status = status;
	return -1;
}

/* Mount the file system of f on MOUNTPOINT/NAME. 0, 1 when the kernel has
 * no driver for it (skipped with a note), or -1 with M.err set. */
static int mount_one(const struct mfile *f)
{
	char disk[PATH_MAX + 16], dir[PATH_MAX + 32], dev[64];
	int lfd, rc;

	snprintf(disk, sizeof disk, "%s/disk.img", M.mnt);
	snprintf(dir, sizeof dir, "%s/%s", M.mnt, f->name);
	lfd = loop_attach(disk, f->off, f->size, dev, sizeof dev);
	if (lfd < 0)
		return fail_msg(CLI_FAIL, "unable to set up a loop device for '%s': %s", disk, strerror(-lfd));
	rc = mount(dev, dir, f->fstype, MS_RDONLY | MS_NODEV | MS_NOSUID, fs_options(f->fstype));
	if (rc < 0)
		rc = -errno;
	close(lfd); /* the mount holds the loop device now; without it, autoclear detaches it */
	if (rc == -ENODEV) {
		cli_say("note", "%s: no %s driver in this kernel: left unmounted", f->name, f->fstype);
		return 1;
	}
	if (rc < 0)
		return fail_msg(CLI_FAIL, "unable to mount the %s file system of %s on '%s': %s", f->fstype,
				f->number ? "its partition" : "the disk", dir, strerror(-rc));
	snprintf(M.subs[M.nsubs++], sizeof M.subs[0], "%s", dir);
	return 0;
}

static void umount_subs(int flags)
{
	while (M.nsubs) {
		const char *d = M.subs[M.nsubs - 1];

		if (umount2(d, flags) < 0 && errno != EINVAL && errno != ENOENT)
			umount2(d, MNT_DETACH);
		M.nsubs--;
	}
}

/* Tell the waiting parent (or the terminal, with -f) the outcome: status
 * byte, then the message. */
static void report(int status, const char *msg)
{
	if (M.status_fd >= 0) {
		char b[1300];
		int n = snprintf(b, sizeof b, "%c%s", (char)status, msg ? msg : "");

		if (write(M.status_fd, b, (size_t)(n < (int)sizeof b ? n : (int)sizeof b - 1)) < 0) {
			/* the parent is gone: nothing to tell */
		}
		close(M.status_fd);
		M.status_fd = -1;
	} else if (msg && msg[0]) {
		cli_error("%s", msg);
	}
}

/* The helper thread: with the FUSE mount served, mount the file systems
 * (--fs), then report. On failure the mounts made are undone and the main
 * thread is stopped (it unmounts FUSE and reports). */
/* A larger readahead window for the view: the kernel then asks for several
 * pieces of a sequential read at once, which the worker threads decompress
 * in parallel (the default 128 KiB is one request at a time; bench/mount.sh,
 * bench/RESULTS.md). Root only; a failure changes nothing else. */
#define VIEW_READAHEAD_KB 4096

static void set_readahead(void)
{
	struct stat st;
	char path[64];
	FILE *f;

	if (stat(M.mnt, &st) < 0)
		return;
	snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev), minor(st.st_dev));
	if ((f = fopen(path, "we"))) {
		fprintf(f, "%d\n", VIEW_READAHEAD_KB);
		fclose(f);
	}
}

static void *mounter(void *arg)
{
	int want_fs = *(int *)arg;

	set_readahead();
	for (size_t i = 0; want_fs && i < M.nfiles; i++) {
		if (!M.files[i].is_dir)
			continue;
		if (mount_one(&M.files[i]) < 0) {
			umount_subs(0);
			fuse_exit(M.fuse);
			pthread_kill(M.main_thread, SIGTERM);
			return NULL;
		}
	}
	report(CLI_OK, NULL);
	if (M.daemon) {
		int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
	}
	return NULL;
}

/* Escape a value for fuse's -o list (',' and '\'). */
static void opt_escape(const char *s, char *out, size_t size)
{
	size_t n = 0;

	for (; *s && n + 3 < size; s++) {
		if (*s == ',' || *s == '\\')
			out[n++] = '\\';
		out[n++] = *s;
	}
	out[n] = '\0';
}

/* Mount and serve until unmounted (or a signal). Returns the exit status;
 * the outcome of the mount itself is reported through report(). */
static int serve(int want_fs, int allow_other)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	char opts[2 * PATH_MAX + 128], esc[2 * PATH_MAX];
	struct fuse_loop_config lc = { .clone_fd = 0, .max_idle_threads = 10 };
	pthread_t helper;
	int status = CLI_OK, helper_started = 0;

	opt_escape(M.point, esc, sizeof esc);
	snprintf(opts, sizeof opts, "ro,fsname=%s,subtype=cbimg,default_permissions%s", esc,
		 allow_other ? ",allow_other" : "");
	if (fuse_opt_add_arg(&args, "cbimg") || fuse_opt_add_arg(&args, "-o") || fuse_opt_add_arg(&args, opts)) {
		report(CLI_FAIL, "out of memory");
		return CLI_FAIL;
	}
	M.fuse = fuse_new(&args, &ops, sizeof ops, NULL);
	fuse_opt_free_args(&args);
	if (!M.fuse) {
		report(CLI_FAIL, "unable to set up FUSE");
		return CLI_FAIL;
	}
	if (fuse_mount(M.fuse, M.mnt) != 0) {
		char msg[PATH_MAX + 64];

		snprintf(msg, sizeof msg, "unable to mount FUSE on '%s'", M.mnt);
		fuse_destroy(M.fuse);
		report(CLI_FAIL, msg);
		return CLI_FAIL;
	}
	if (fuse_set_signal_handlers(fuse_get_session(M.fuse)) != 0) {
		fuse_unmount(M.fuse);
		fuse_destroy(M.fuse);
		report(CLI_FAIL, "unable to set up signal handlers");
		return CLI_FAIL;
	}
	M.main_thread = pthread_self();
	if (pthread_create(&helper, NULL, mounter, &want_fs) == 0)
		helper_started = 1;
	else
		fail_msg(CLI_FAIL, "unable to start a thread: %s", strerror(errno));
	if (helper_started)
		fuse_loop_mt(M.fuse, &lc);
	if (helper_started)
		pthread_join(helper, NULL);
	umount_subs(MNT_DETACH); /* stopped by a signal while they were mounted */
	fuse_remove_signal_handlers(fuse_get_session(M.fuse));
	fuse_unmount(M.fuse);
	fuse_destroy(M.fuse);
	if (M.err[0]) {
		report(M.err_status, M.err);
		status = M.err_status;
	}
	return status;
}

/* ------------------------------------------------------------ commands */

enum { OPT_CACHE = 256, OPT_FS, OPT_PASSWORD_FILE, OPT_STATE_DIR, OPT_ALLOW_OTHER };

static const struct cli_option mount_options[] = {
	{ 'f', "foreground", NULL, "stay in the foreground (log to stderr) until unmounted" },
	{ OPT_FS, "fs", NULL, "also mount each file system read-only: MOUNTPOINT/partN, or MOUNTPOINT/fs" },
	{ OPT_CACHE, "cache", "SIZE", "cache of decompressed blocks (default 64M)" },
	{ OPT_ALLOW_OTHER, "allow-other", NULL, "let other users read the view (FUSE allow_other)" },
	{ OPT_PASSWORD_FILE, "password-file", "FILE", "passphrase of an encrypted chain from FILE (default: $CBIMG_PASSWORD, or ask)" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "also look for the chain's key file here (default /var/lib/cbimg)" },
	CLI_OPT_HELP,
	CLI_OPT_END
};

/* MOUNTPOINT must be an existing directory that nothing is mounted on. */
static int check_mountpoint(const char *arg)
{
	struct stat st;
	char type[64];

	if (!realpath(arg, M.mnt)) {
		cli_error("unable to use mount point '%s': %s", arg, strerror(errno));
		return CLI_FAIL;
	}
	if (stat(M.mnt, &st) < 0 || !S_ISDIR(st.st_mode)) {
		cli_error("mount point '%s' is not a directory", arg);
		return CLI_FAIL;
	}
	mount_type(M.mnt, type, sizeof type);
	if (type[0]) {
		cli_error("'%s' is already a mount point (%s)", arg, type);
		return CLI_FAIL;
	}
	if (access("/dev/fuse", R_OK | W_OK) < 0) {
		cli_error("FUSE is not available: /dev/fuse: %s", strerror(errno));
		return CLI_FAIL;
	}
	return 0;
}

/* The files of the view, from the disk's map. */
static int build_view(int want_fs)
{
	cbi_disk_map *m = calloc(1, sizeof *m);
	cbi_error err = { 0 };
	struct mfile *f = &M.files[0];
	int fs_dirs = 0;

	if (!m) {
		cli_error("out of memory");
		return CLI_FAIL;
	}
	snprintf(f->name, sizeof f->name, "disk.img");
	f->size = cbi_pointrd_size(M.pr);
	M.nfiles = 1;
	if (cbi_pointrd_map(M.pr, m, &err) < 0)
		cli_say("warning", "unable to read the partition table: %s", err.msg);
	for (size_t i = 0; i < m->nparts && M.nfiles < CBI_MAX_PARTS + 1; i++) {
		f = &M.files[M.nfiles++];
		snprintf(f->name, sizeof f->name, "part%u", m->parts[i].number);
		f->off = m->parts[i].offset;
		f->size = m->parts[i].size;
		f->number = m->parts[i].number;
		snprintf(f->fstype, sizeof f->fstype, "%s", m->parts[i].fstype);
		f->is_dir = want_fs && fs_mountable(f->fstype);
		fs_dirs += f->is_dir;
	}
	if (want_fs && !m->pttype[0] && fs_mountable(m->fstype)) {
		f = &M.files[M.nfiles++];
		snprintf(f->name, sizeof f->name, "fs");
		f->size = cbi_pointrd_size(M.pr);
		f->is_dir = 1;
		snprintf(f->fstype, sizeof f->fstype, "%s", m->fstype);
		fs_dirs++;
	}
	free(m);
	if (want_fs && !fs_dirs) {
		cli_error("--fs: no file system found on the disk of '%s'", M.point);
		return CLI_FAIL;
	}
	return 0;
}

static int cmd_mount(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_pointrd_opts o = { 0 };
	cbi_error err = { 0 };
	struct cli_pass pass;
	int foreground = 0, want_fs = 0, allow_other = 0, c, rc;
	uint64_t v;
	const cbi_point *pt;

	cli_pass_init(&pass, "CBIMG_PASSWORD");
	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		switch (c) {
		case 'f': foreground = 1; break;
		case OPT_FS: want_fs = 1; break;
		case OPT_ALLOW_OTHER: allow_other = 1; break;
		case OPT_CACHE:
			if (cli_parse_size(optarg, &v) < 0)
				return cli_usage_error(cmd, "invalid cache size '%s'", optarg);
			o.cache_bytes = v ? v : 1;
			break;
		case OPT_PASSWORD_FILE: pass.file = optarg; break;
		case OPT_STATE_DIR: o.state_dir = optarg; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_check_operands(cmd, argc, argv, 2)) || (rc = cli_check_point_file(argv[optind])))
		return rc;
	if (want_fs && geteuid() != 0) {
		cli_error("--fs needs root (loop devices and mounts)");
		return CLI_FAIL;
	}
	/* absolute: the serving process leaves the working directory */
	if (!realpath(argv[optind], M.point))
		snprintf(M.point, sizeof M.point, "%s", argv[optind]);
	if ((rc = check_mountpoint(argv[optind + 1])))
		return rc;

	o.point = M.point;
	o.pass = cli_pass_cb;
	o.pass_ud = &pass;
	o.lock = 1;
	o.log = mount_log;
	if (!o.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		o.state_dir = getenv("CBIMG_STATE_DIR");
	rc = cbi_pointrd_open(&o, &M.pr, &err);
	cli_pass_wipe(&pass);
	if (rc < 0)
		return cli_fail(rc, &err);
	pt = cbi_pointrd_point(M.pr);
	M.mtime.tv_sec = (time_t)(pt->created_ns / 1000000000);
	M.mtime.tv_nsec = (long)(pt->created_ns % 1000000000);
	if ((rc = build_view(want_fs))) {
		cbi_pointrd_close(M.pr);
		return rc;
	}

	M.status_fd = -1;
	if (!foreground) {
		int p[2];
		pid_t pid;

		fflush(NULL);
		if (pipe2(p, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
			cli_error("unable to start the mount process: %s", strerror(errno));
			cbi_pointrd_close(M.pr);
			return CLI_FAIL;
		}
		if (pid > 0) { /* the parent: wait for the outcome */
			char b[1300];
			ssize_t n, got = 0;

			close(p[1]);
			cbi_pointrd_close(M.pr); /* the child holds the chain's lock too (same descriptor) */
			cli_s3_detach(); /* an s3:// point: the child serves from the view and removes it */
			while ((n = read(p[0], b + got, sizeof b - 1 - (size_t)got)) > 0 ||
			       (n < 0 && errno == EINTR))
				got += n > 0 ? n : 0;
			b[got] = '\0';
			if (got < 1) {
				int ws;

				waitpid(pid, &ws, 0);
				cli_error("the mount process ended before mounting '%s'", M.mnt);
				return CLI_FAIL;
			}
			if (b[0] != CLI_OK) {
				if (b[1])
					cli_error("%s", b + 1);
				waitpid(pid, NULL, 0);
			}
			return b[0];
		}
		close(p[0]);
		M.status_fd = p[1];
		M.daemon = 1;
		setsid();
		openlog("cbimg", LOG_PID, LOG_DAEMON);
	}
	if (chdir("/") < 0) {
		/* nothing relative is used from here on */
	}
	rc = serve(want_fs, allow_other);
	cbi_pointrd_close(M.pr);
	return rc;
}

const struct cli_command cli_mount = {
	.name = "mount",
	.operands = "[options] POINT MOUNTPOINT",
	.summary = "show the disk of POINT as read-only files (FUSE)",
	.description =
		"MOUNTPOINT shows disk.img, the disk as it was at POINT (its exact size), and\n"
		"part1, part2, ... for the partitions of its partition table. Every block is\n"
		"checked when read; a damaged one gives an I/O error for its range (and a log\n"
		"line), never wrong bytes. With --fs (root), each file system is mounted\n"
		"read-only on MOUNTPOINT/partN (a disk without a table: MOUNTPOINT/fs).\n"
		"Unmount with 'cbimg umount MOUNTPOINT'. While mounted, prune leaves the\n"
		"chain alone. Exit 1: the mount point is missing, not a directory or already\n"
		"mounted, or a parent point is missing; 3: damage; 4: wrong or missing passphrase.",
	.options = mount_options,
	.run = cmd_mount,
};

/* --------------------------------------------------------------- umount */

static const struct cli_option umount_options[] = {
	CLI_OPT_HELP,
	CLI_OPT_END
};

/* Unmount dir, again for a few seconds while it is busy (a loop device's
 * autoclear lets go of disk.img a moment after its file system is gone). */
static int umount_retry(const char *dir, int fuse)
{
	for (int tries = 0;; tries++) {
		int rc;

		if (fuse && geteuid() != 0) {
			pid_t pid = fork();
			int ws = 0;

			if (pid == 0) {
				execlp("fusermount3", "fusermount3", "-u", "-q", dir, (char *)NULL);
				_exit(127);
			}
			rc = pid > 0 && waitpid(pid, &ws, 0) == pid && WIFEXITED(ws) && !WEXITSTATUS(ws) ? 0 : -1;
			errno = EBUSY;
		} else {
			rc = umount2(dir, UMOUNT_NOFOLLOW);
		}
		if (rc == 0)
			return 0;
		if (errno != EBUSY || tries >= 50)
			return -1;
		usleep(100 * 1000);
	}
}

static int cmd_umount(const struct cli_command *cmd, int argc, char **argv)
{
	char mnt[PATH_MAX], pidbuf[32];
	struct mnt_ent *v;
	size_t n, len;
	int c, rc = CLI_OK, found = 0;
	long pid = 0;
	ssize_t pn;

	while ((c = cli_getopt(cmd, argc, argv)) != -1)
		return cli_opt_exit(cmd, c);
	if ((rc = cli_check_operands(cmd, argc, argv, 1)))
		return rc;
	if (abs_path(argv[optind], mnt, sizeof mnt) < 0) {
		cli_error("unable to use mount point '%s': %s", argv[optind], strerror(errno));
		return CLI_FAIL;
	}
	if (read_mounts(&v, &n) < 0) {
		cli_error("unable to read the mount table: %s", strerror(errno));
		return CLI_FAIL;
	}
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].dir, mnt))
			found = strcmp(v[i].type, FS_TYPE) ? -1 : 1;
	if (found <= 0) {
		free(v);
		cli_error(found ? "'%s' is not a cbimg mount" : "'%s' is not mounted", argv[optind]);
		return CLI_FAIL;
	}
	pn = getxattr(mnt, PID_XATTR, pidbuf, sizeof pidbuf - 1);
	if (pn > 0) {
		pidbuf[pn] = '\0';
		pid = strtol(pidbuf, NULL, 10);
	}
	/* the file systems on it first, the newest first */
	len = strlen(mnt);
	for (size_t i = n; i-- > 0 && rc == CLI_OK;) {
		if (strncmp(v[i].dir, mnt, len) || v[i].dir[len] != '/')
			continue;
		if (umount_retry(v[i].dir, 0) < 0) {
			cli_error("unable to unmount '%s': %s", v[i].dir, strerror(errno));
			rc = CLI_FAIL;
		}
	}
	free(v);
	if (rc != CLI_OK)
		return rc;
	if (umount_retry(mnt, 1) < 0) {
		cli_error("unable to unmount '%s': %s", argv[optind], strerror(errno));
		return CLI_FAIL;
	}
	/* the serving process releases the chain's lock when it ends */
	for (int i = 0; pid > 1 && i < 100 && kill((pid_t)pid, 0) == 0; i++)
		usleep(100 * 1000);
	return CLI_OK;
}

const struct cli_command cli_umount = {
	.name = "umount",
	.operands = "MOUNTPOINT",
	.summary = "unmount what 'cbimg mount' mounted on MOUNTPOINT",
	.description =
		"The file systems that --fs mounted under MOUNTPOINT are unmounted first (and\n"
		"their loop devices freed), then the view itself; returns once the process\n"
		"that served it has ended. Exit 1: MOUNTPOINT is not a cbimg mount, or busy.",
	.options = umount_options,
	.run = cmd_umount,
};
