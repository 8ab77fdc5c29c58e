/* snapshot.c - snapshot modes of a backup: the choice, freezing with a
 * guardian, reflink clones, snapshot commands (snapshot.h). */
#define _GNU_SOURCE
#include "snapshot.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mounts.h"
#include "util.h"
#include "wtrace.h"

#define MAX_FROZEN 16
#define DEFAULT_FREEZE_MS 60000u

struct cbi_snap {
	cbi_snap_cfg c;
	int mode;
	char read_path[4096];
	char trace_dev[4096];     /* the block device whose writes are traced */
	dev_t dev;                /* the block device whose mounts are frozen (0: none) */
	cbi_mount mnt[MAX_FROZEN]; /* its read-write mounts, one per file system */
	size_t nmnt;
	int fd[MAX_FROZEN];       /* their mount points, open while frozen */
	int frozen;
	pid_t guard;              /* the guardian, while frozen */
	int guard_fd;             /* our end of its socket pair */
	double t_freeze, window_ms;
	cbi_wtrace *trace;
	pthread_t stopper;        /* tears the tracer down after the thaw */
	int stopping;
	char clone[4096];         /* reflink: the clone's name until the source is open */
	int clone_named;
	uint64_t origin_size;     /* exec, reflink: the origin's size (0: unknown) */
	int ran_cmd;              /* exec: the command ran (so the cleanup runs) */
	int live;                 /* mounted read-write */
};

const char *cbi_snap_mode_name(int mode)
{
	static const char *const n[] = { "auto", "none", "trace", "freeze", "reflink", "exec" };
	return mode >= 0 && mode <= CBI_SNAP_EXEC ? n[mode] : "?";
}

/* ------------------------------------------------------------ the choice */

int cbi_snap_choose(const cbi_snap_facts *f, char *msg, size_t msgsz)
{
	int m = f->asked;
	msg[0] = 0;
	if (f->have_cmd && m != CBI_SNAP_EXEC && m != CBI_SNAP_AUTO) {
		snprintf(msg, msgsz, "--snapshot-cmd goes with --snapshot exec, not --snapshot %s",
			 cbi_snap_mode_name(m));
		return -CBI_EUSAGE;
	}
	if (f->have_cmd)
		return CBI_SNAP_EXEC;
	if (m == CBI_SNAP_EXEC) {
		snprintf(msg, msgsz, "--snapshot exec needs --snapshot-cmd CMD");
		return -CBI_EUSAGE;
	}
	if (m == CBI_SNAP_REFLINK) {
		if (f->is_file)
			return CBI_SNAP_REFLINK;
		snprintf(msg, msgsz, "--snapshot reflink: source '%s' is not a regular file (an image file on "
			 "xfs or btrfs)", f->what);
		return -CBI_EUSAGE;
	}
	if (!f->mounted_rw)
		return CBI_SNAP_NONE; /* nothing writes to it: no snapshot needed */
	if (f->used_only && m != CBI_SNAP_FREEZE) {
		snprintf(msg, msgsz, "--used-only: source '%s' is mounted read-write, so its block bitmaps change "
			 "while it is read; use --snapshot freeze, unmount it or mount it read-only", f->what);
		return -CBI_EMOUNTED;
	}
	const char *nf = f->why_no_freeze && *f->why_no_freeze ? f->why_no_freeze : "not possible here";
	const char *nt = f->why_no_trace && *f->why_no_trace ? f->why_no_trace : "not possible here";
	switch (m) {
	case CBI_SNAP_NONE:
		if (f->allow_inconsistent)
			return CBI_SNAP_NONE;
		snprintf(msg, msgsz, "source '%s' is mounted read-write on '%s': --snapshot none would read it "
			 "while it changes; add --allow-inconsistent to accept that, or use --snapshot auto",
			 f->what, f->mnt);
		return -CBI_EMOUNTED;
	case CBI_SNAP_FREEZE:
		if (f->freezable)
			return CBI_SNAP_FREEZE;
		snprintf(msg, msgsz, "--snapshot freeze: '%s' cannot be frozen: %s", f->mnt, nf);
		return -CBI_EMOUNTED;
	case CBI_SNAP_TRACE:
		if (f->traceable && f->freezable)
			return CBI_SNAP_TRACE;
		if (!f->freezable)
			snprintf(msg, msgsz, "--snapshot trace: '%s' cannot be frozen: %s", f->mnt, nf);
		else
			snprintf(msg, msgsz, "--snapshot trace: writes to '%s' cannot be traced: %s", f->what, nt);
		return -CBI_EMOUNTED;
	default: /* auto */
		if (f->traceable && f->freezable)
			return CBI_SNAP_TRACE;
		if (f->freezable)
			return CBI_SNAP_FREEZE;
		if (f->is_file)
			return CBI_SNAP_REFLINK;
		if (f->allow_inconsistent)
			return CBI_SNAP_NONE;
		snprintf(msg, msgsz, "source '%s' is mounted read-write on '%s' and cannot be frozen (%s): use "
			 "--snapshot exec --snapshot-cmd CMD, unmount it or mount it read-only, or "
			 "--snapshot none --allow-inconsistent", f->what, f->mnt, nf);
		return -CBI_EMOUNTED;
	}
}

/* ------------------------------------------------------------- the facts */

/* The mounts to freeze (read-write, one per file system) and whether they
 * can be: root, no FUSE, not holding DEST, the state or our temporary files
 * (a write to a frozen file system would wait for the thaw: a deadlock). */
static int look_freezable(cbi_snap *s, char *why, size_t whysz)
{
	cbi_mount all[MAX_FROZEN];
	size_t n = cbi_mount_list(s->dev, CBI_MOUNT_PARTS | CBI_MOUNT_RW, all, MAX_FROZEN);
	s->nmnt = 0;
	if (n > MAX_FROZEN) {
		snprintf(why, whysz, "more than %d read-write mounts", MAX_FROZEN);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		size_t j;
		for (j = 0; j < s->nmnt && s->mnt[j].fsdev != all[i].fsdev; j++)
			;
		if (j == s->nmnt)
			s->mnt[s->nmnt++] = all[i];
	}
	if (geteuid() != 0) {
		snprintf(why, whysz, "freezing a file system needs root");
		return 0;
	}
	for (size_t i = 0; i < s->nmnt; i++) {
		const cbi_mount *m = &s->mnt[i];
		if (!strncmp(m->type, "fuse", 4)) {
			snprintf(why, whysz, "'%.200s' is a FUSE file system (%.40s)", m->target, m->type);
			return 0;
		}
	}
	/* by device: another subvolume or bind mount of the file system counts */
	if (cbi_path_on_dev(s->c.dest, s->dev)) {
		snprintf(why, whysz, "it holds DEST '%.200s'", s->c.dest);
		return 0;
	}
	if (s->c.state_dir && cbi_path_on_dev(s->c.state_dir, s->dev)) {
		snprintf(why, whysz, "it holds the state directory '%.200s' (--state-dir or --no-state)",
			 s->c.state_dir);
		return 0;
	}
	return 1;
}

/* The loop device over regular file st (mounted read-write) becomes the
 * device to freeze and trace; a loop device with an offset is not traced
 * (its blocks are not the file's). */
static int look_loop(cbi_snap *s, const struct stat *st, cbi_loop_use *u, char *why_trace, size_t wsz)
{
	if (!cbi_loop_in_use(st->st_dev, st->st_ino, 1, u))
		return 0;
	struct stat ls;
	if (stat(u->loop, &ls) < 0 || !S_ISBLK(ls.st_mode))
		return 0;
	s->dev = ls.st_rdev;
	cbi_strlcpy(s->trace_dev, u->loop, sizeof s->trace_dev);
	int fd = open(u->loop, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct loop_info64 li;
	if (fd >= 0 && ioctl(fd, LOOP_GET_STATUS64, &li) == 0 && li.lo_offset) {
		snprintf(why_trace, wsz, "loop device '%s' starts at an offset of the file", u->loop);
		s->trace_dev[0] = 0;
	}
	if (fd >= 0)
		close(fd);
	return 1;
}

/* --------------------------------------------------------------- freezing */

/* The guardian: waits on its socket; thaws every mount when cbimg's end of
 * it closes without a word (cbimg died) or when the timeout passes; exits
 * quietly on 'q' (cbimg thawed). Only async-signal-safe calls: it is a
 * child of a threaded process. */
static void guardian(int rfd, const int *fds, size_t n, uint32_t timeout_ms)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU };
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);
	/* nothing else of cbimg's: no lock or temporary file held open by us.
	 * close_range() over the gaps between the kept descriptors (every
	 * descriptor, whatever the limit, in a few calls); one close() each
	 * below 1024 on a kernel without it. */
	int keep[MAX_FROZEN + 1];
	size_t nk = 0;
	keep[nk++] = rfd;
	for (size_t i = 0; i < n && nk < MAX_FROZEN + 1; i++)
		keep[nk++] = fds[i];
	for (size_t i = 1; i < nk; i++) /* insertion sort: async-signal-safe */
		for (size_t j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];
			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	unsigned lo = 3;
	int ok = 1;
	for (size_t i = 0; i < nk && ok; i++) {
		if (keep[i] < 0 || (unsigned)keep[i] < lo)
			continue;
		if ((unsigned)keep[i] > lo && close_range(lo, (unsigned)keep[i] - 1, 0) < 0)
			ok = 0;
		lo = (unsigned)keep[i] + 1;
	}
	if (!ok || close_range(lo, ~0u, 0) < 0)
		for (int fd = 3; fd < 1024; fd++) {
			int k = 0;
			for (size_t i = 0; i < nk && !k; i++)
				k = keep[i] == fd;
			if (!k)
				close(fd);
		}
	struct pollfd p = { .fd = rfd, .events = POLLIN };
	int r;
	do
		r = poll(&p, 1, (int)timeout_ms);
	while (r < 0 && errno == EINTR);
	char c = 0;
	if (r > 0 && read(rfd, &c, 1) == 1 && c == 'q')
		_exit(0);
	for (size_t i = 0; i < n; i++)
		ioctl(fds[i], FITHAW, 0);
	_exit(r == 0 ? 3 : 1);
}

static int start_guardian(cbi_snap *s, cbi_error *err)
{
	/* a socket pair rather than a pipe: our 'q' to a guardian that already
	 * exited (timeout) must fail with EPIPE, never raise SIGPIPE */
	int p[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0)
		return cbi_err(err, -errno, "unable to start the freeze guardian: %s", strerror(errno));
	uint32_t to = s->c.freeze_timeout_ms ? s->c.freeze_timeout_ms : DEFAULT_FREEZE_MS;
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		return cbi_err(err, -e, "unable to start the freeze guardian: %s", strerror(e));
	}
	if (pid == 0)
		guardian(p[0], s->fd, s->nmnt, to);
	close(p[0]);
	s->guard = pid;
	s->guard_fd = p[1];
	return 0;
}

/* Tell the guardian we thawed; 1 when it had thawed first (timeout). */
static int stop_guardian(cbi_snap *s)
{
	if (s->guard <= 0)
		return 0;
	ssize_t w;
	do
		w = send(s->guard_fd, "q", 1, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	close(s->guard_fd);
	s->guard_fd = -1;
	int st = 0;
	while (waitpid(s->guard, &st, 0) < 0 && errno == EINTR)
		;
	s->guard = 0;
	return WIFEXITED(st) && WEXITSTATUS(st) == 3;
}

static void close_fds(cbi_snap *s)
{
	for (size_t i = 0; i < s->nmnt; i++)
		if (s->fd[i] >= 0) {
			close(s->fd[i]);
			s->fd[i] = -1;
		}
}

int cbi_snap_freeze(cbi_snap *s, cbi_error *err)
{
	int rc = 0;
	if (!s->nmnt || s->frozen)
		return 0;
	for (size_t i = 0; i < s->nmnt; i++) {
		/* the mount itself, not one stacked on its mount point since */
		struct statx sx;
		s->fd[i] = open(s->mnt[i].target, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (s->fd[i] < 0 || (statx(s->fd[i], "", AT_EMPTY_PATH, STATX_MNT_ID, &sx) == 0 &&
				      (sx.stx_mask & STATX_MNT_ID) && sx.stx_mnt_id != (uint64_t)s->mnt[i].id)) {
			rc = cbi_err(err, s->fd[i] < 0 ? -errno : -ENOENT, "unable to freeze '%s': %s",
				     s->mnt[i].target, s->fd[i] < 0 ? strerror(errno) : "another mount hides it");
			close_fds(s);
			return rc;
		}
	}
	/* write out what is dirty while writers still run: the freeze then
	 * has less to flush, and writers wait less */
	for (size_t i = 0; i < s->nmnt; i++)
		syncfs(s->fd[i]);
	if ((rc = start_guardian(s, err))) {
		close_fds(s);
		return rc;
	}
	s->t_freeze = cbi_now();
	s->frozen = 1;
	for (size_t i = 0; i < s->nmnt; i++) {
		if (ioctl(s->fd[i], FIFREEZE, 0) == 0)
			continue;
		int e = errno;
		for (size_t j = 0; j < i; j++)
			ioctl(s->fd[j], FITHAW, 0);
		s->frozen = 0;
		stop_guardian(s);
		close_fds(s);
		return cbi_err(err, -e, "unable to freeze '%s' (%s): %s", s->mnt[i].target, s->mnt[i].type,
			       e == EBUSY ? "it is frozen already" : e == EOPNOTSUPP ? "its file system cannot be frozen"
										: strerror(e));
	}
	return 0;
}

int cbi_snap_expired(const cbi_snap *s)
{
	if (!s || !s->frozen)
		return 0;
	uint32_t to = s->c.freeze_timeout_ms ? s->c.freeze_timeout_ms : DEFAULT_FREEZE_MS;
	return (cbi_now() - s->t_freeze) * 1000.0 >= to;
}

static void *trace_stopper(void *arg)
{
	cbi_wtrace_stop(arg);
	return NULL;
}

/* Once thawed, the write trace has served (the blocks it named were read
 * frozen). Its teardown (the instance's rmdir waits for the kernel to free
 * the ring buffers: some 20 ms) runs beside the rest of the backup;
 * cbi_snap_end() waits for it. Synchronously when no thread can start. */
static void release_trace(cbi_snap *s)
{
	if (!s->trace || s->stopping)
		return;
	if (cbi_thread_start_quiet(&s->stopper, trace_stopper, s->trace))
		cbi_wtrace_stop(s->trace);
	else
		s->stopping = 1;
	s->trace = NULL;
}

int cbi_snap_thaw(cbi_snap *s, cbi_error *err)
{
	int rc = 0;
	if (!s || !s->frozen)
		return 0;
	for (size_t i = 0; i < s->nmnt; i++)
		if (ioctl(s->fd[i], FITHAW, 0) < 0 && errno != EINVAL && !rc)
			rc = cbi_err(err, -errno, "unable to thaw '%s': %s", s->mnt[i].target, strerror(errno));
	s->window_ms += (cbi_now() - s->t_freeze) * 1000.0;
	s->frozen = 0;
	int late = stop_guardian(s);
	close_fds(s);
	release_trace(s);
	if (!rc && late)
		rc = cbi_err(err, -ETIMEDOUT,
			     "the freeze of '%s' lasted longer than --freeze-timeout (%u ms): it was thawed before the "
			     "read ended, so nothing of this run was kept",
			     s->mnt[0].target, s->c.freeze_timeout_ms ? s->c.freeze_timeout_ms : DEFAULT_FREEZE_MS);
	return rc;
}

double cbi_snap_freeze_ms(const cbi_snap *s) { return s ? s->window_ms : 0; }

/* ----------------------------------------------------------------- tracing */

int cbi_snap_trace_start(cbi_snap *s, cbi_error *err)
{
	return cbi_wtrace_start(s->trace_dev, s->c.trace_buf_kib, &s->trace, err);
}

int cbi_snap_collect(cbi_snap *s, uint32_t bs, uint64_t n_blocks, uint8_t *touched, uint64_t *n_marked,
		     int *complete, cbi_error *err)
{
	return cbi_wtrace_collect(s->trace, bs, n_blocks, touched, n_marked, complete, err);
}

/* ------------------------------------------------------- exec and reflink */

/* Run "sh -c cmd" with CBIMG_SOURCE (and CBIMG_SNAPSHOT when snap is
 * given) in its environment; its output into out (NULL: to our stderr).
 * Returns its exit status, or -errno. */
static int run_cmd(const char *cmd, const char *source, const char *snap, char *out, size_t outsz)
{
	int p[2] = { -1, -1 };
	if (out && pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0) {
		int e = -errno;
		if (out) {
			close(p[0]);
			close(p[1]);
		}
		return e;
	}
	if (pid == 0) {
		/* no threads run while a snapshot is made or removed: setenv is safe */
		if (dup2(out ? p[1] : STDERR_FILENO, STDOUT_FILENO) < 0)
			_exit(127);
		setenv("CBIMG_SOURCE", source, 1);
		if (snap)
			setenv("CBIMG_SNAPSHOT", snap, 1);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	size_t n = 0;
	if (out) {
		close(p[1]);
		char buf[1024];
		ssize_t r;
		while ((r = read(p[0], buf, sizeof buf)) != 0) {
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				break;
			for (ssize_t i = 0; i < r && n + 1 < outsz; i++)
				out[n++] = buf[i];
		}
		out[n] = 0;
		close(p[0]);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* The last non-empty line of out, trimmed, into path. */
static void last_line(char *out, char *path, size_t psz)
{
	path[0] = 0;
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		while (*line == ' ' || *line == '\t')
			line++;
		size_t l = strlen(line);
		while (l && (line[l - 1] == ' ' || line[l - 1] == '\t' || line[l - 1] == '\r'))
			line[--l] = 0;
		if (l)
			cbi_strlcpy(path, line, psz);
	}
}

static int do_exec(cbi_snap *s, cbi_error *err)
{
	char *out = malloc(65536);
	if (!out)
		return cbi_err(err, -ENOMEM, "out of memory");
	int st = run_cmd(s->c.cmd, s->c.source, NULL, out, 65536);
	s->ran_cmd = 1;
	int rc = 0;
	if (st < 0)
		rc = cbi_err(err, st, "unable to run --snapshot-cmd '%s': %s", s->c.cmd, strerror(-st));
	else if (st)
		rc = cbi_err(err, -CBI_EREAD, "--snapshot-cmd '%s' failed (exit status %d)", s->c.cmd, st);
	if (!rc) {
		last_line(out, s->read_path, sizeof s->read_path);
		struct stat sb;
		if (!s->read_path[0])
			rc = cbi_err(err, -CBI_EREAD, "--snapshot-cmd '%s' printed no device or file to read",
				     s->c.cmd);
		else if (stat(s->read_path, &sb) < 0 || !(S_ISBLK(sb.st_mode) || S_ISREG(sb.st_mode)))
			rc = cbi_err(err, -CBI_EREAD, "--snapshot-cmd printed '%s', which is no block device or file",
				     s->read_path);
	}
	free(out);
	return rc;
}

/* A clone of the image file beside it, made while the file system on a loop
 * device over it (if any) is frozen, so that the clone is clean. */
static int do_reflink(cbi_snap *s, int freeze, cbi_error *err)
{
	char dir[4096], base[512];
	const char *sl = strrchr(s->c.source, '/');
	cbi_dirname(s->c.source, dir, sizeof dir);
	cbi_strlcpy(base, sl ? sl + 1 : s->c.source, sizeof base);
	snprintf(s->clone, sizeof s->clone, "%.3000s/.%.300s.cbimg-clone.%ld.tmp", dir, base, (long)getpid());
	int sfd = open(s->c.source, O_RDONLY | O_CLOEXEC);
	if (sfd < 0)
		return cbi_err(err, -errno, "unable to open source '%s': %s", s->c.source, strerror(errno));
	int cfd = cbi_create_tmp(s->clone, 0600);
	if (cfd < 0) {
		close(sfd);
		return cbi_err(err, cfd, "--snapshot reflink: unable to create '%s': %s", s->clone, strerror(-cfd));
	}
	s->clone_named = 1;
	int rc = freeze ? cbi_snap_freeze(s, err) : 0;
	if (!rc && ioctl(cfd, FICLONE, sfd) < 0) {
		int e = errno;
		rc = cbi_err(err, -e, "--snapshot reflink: unable to clone '%s': %s", s->c.source,
			     e == EOPNOTSUPP || e == EXDEV || e == EINVAL
				     ? "its file system has no reflinks (xfs and btrfs do)"
				     : strerror(e));
	}
	if (freeze) {
		int trc = cbi_snap_thaw(s, rc ? NULL : err);
		if (!rc)
			rc = trc;
	}
	close(cfd);
	close(sfd);
	if (!rc)
		cbi_strlcpy(s->read_path, s->clone, sizeof s->read_path);
	return rc;
}

static uint64_t size_of(const char *path)
{
	struct stat st;
	uint64_t sz = 0;
	if (stat(path, &st) < 0)
		return 0;
	if (S_ISREG(st.st_mode))
		return (uint64_t)st.st_size;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0 && ioctl(fd, BLKGETSIZE64, &sz) < 0)
		sz = 0;
	if (fd >= 0)
		close(fd);
	return sz;
}

/* ------------------------------------------------------------------- run */

int cbi_snap_begin(const cbi_snap_cfg *c, cbi_snap **out, cbi_error *err)
{
	cbi_snap *s = calloc(1, sizeof *s);
	*out = s;
	if (!s)
		return cbi_err(err, -ENOMEM, "out of memory");
	s->c = *c;
	s->guard_fd = -1;
	for (size_t i = 0; i < MAX_FROZEN; i++)
		s->fd[i] = -1;
	cbi_strlcpy(s->read_path, c->source, sizeof s->read_path);

	char why_f[512] = "", why_t[512] = "", mnt[4096] = "";
	cbi_snap_facts f = { .asked = c->mode, .have_cmd = c->cmd && *c->cmd, .allow_inconsistent =
				     c->allow_inconsistent, .used_only = c->used_only, .what = c->source,
			     .mnt = mnt, .why_no_freeze = why_f, .why_no_trace = why_t };
	struct stat st;
	if (stat(c->source, &st) == 0) {
		cbi_loop_use u;
		f.is_file = S_ISREG(st.st_mode);
		if (S_ISBLK(st.st_mode)) {
			s->dev = st.st_rdev;
			cbi_strlcpy(s->trace_dev, c->source, sizeof s->trace_dev);
		} else if (!f.is_file || !look_loop(s, &st, &u, why_t, sizeof why_t)) {
			s->dev = 0;
		}
	}
	if (s->dev && f.asked != CBI_SNAP_EXEC && !f.have_cmd) {
		cbi_mount m;
		f.mounted_rw = cbi_mount_find(s->dev, CBI_MOUNT_PARTS | CBI_MOUNT_RW, &m);
		if (f.mounted_rw) {
			cbi_strlcpy(mnt, m.target, sizeof mnt);
			f.freezable = look_freezable(s, why_f, sizeof why_f);
			cbi_error te;
			if (!s->trace_dev[0] || (c->mode != CBI_SNAP_AUTO && c->mode != CBI_SNAP_TRACE)) {
				; /* why_t says why; or not asked for */
			} else if (cbi_wtrace_usable(s->trace_dev, &te)) {
				snprintf(why_t, sizeof why_t, "%.500s", te.msg);
			} else {
				f.traceable = 1;
			}
		}
	}
	char msg[1024];
	int mode = cbi_snap_choose(&f, msg, sizeof msg);
	if (mode < 0)
		return cbi_err(err, mode, "%s", msg);
	s->mode = mode;
	s->live = f.mounted_rw;
	if (mode == CBI_SNAP_NONE || mode == CBI_SNAP_EXEC)
		s->nmnt = 0; /* nothing of ours is frozen */
	if (mode == CBI_SNAP_EXEC || mode == CBI_SNAP_REFLINK)
		s->origin_size = size_of(c->source);
	if (mode == CBI_SNAP_EXEC)
		return do_exec(s, err);
	if (mode == CBI_SNAP_REFLINK) {
		if (f.mounted_rw && !f.freezable)
			s->nmnt = 0; /* a crash-consistent clone, as of a running VM's disk */
		return do_reflink(s, f.mounted_rw && f.freezable, err);
	}
	return 0;
}

cbi_snap *cbi_snap_fixed(int mode, const char *path)
{
	cbi_snap *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->mode = mode;
	s->guard_fd = -1;
	for (size_t i = 0; i < MAX_FROZEN; i++)
		s->fd[i] = -1;
	s->c.source = NULL;
	cbi_strlcpy(s->read_path, path, sizeof s->read_path);
	cbi_strlcpy(s->trace_dev, path, sizeof s->trace_dev);
	return s;
}

int cbi_snap_mode(const cbi_snap *s) { return s ? s->mode : CBI_SNAP_NONE; }

int cbi_snap_live(const cbi_snap *s) { return s && s->live; }

const char *cbi_snap_read_path(const cbi_snap *s) { return s->read_path; }

int cbi_snap_opened(cbi_snap *s, uint64_t size, cbi_error *err)
{
	if (s->clone_named && unlink(s->clone) == 0)
		s->clone_named = 0;
	if (s->origin_size && size != s->origin_size)
		return cbi_err(err, -CBI_EMISMATCH, "snapshot '%s' is %llu bytes but source '%s' is %llu",
			       s->read_path, (unsigned long long)size, s->c.source,
			       (unsigned long long)s->origin_size);
	return 0;
}

int cbi_snap_end(cbi_snap *s, char *warn, size_t warnsz)
{
	int w = 0;
	if (!s)
		return 0;
	int trc = s->frozen ? cbi_snap_thaw(s, NULL) : 0;
	(void)trc; /* best effort on a failed run: the guardian thaws too */
	if (s->stopping)
		pthread_join(s->stopper, NULL);
	cbi_wtrace_stop(s->trace);
	if (s->clone_named)
		unlink(s->clone);
	if (s->ran_cmd && s->c.cleanup && *s->c.cleanup) {
		int st = run_cmd(s->c.cleanup, s->c.source, s->read_path[0] ? s->read_path : NULL, NULL, 0);
		if (st) {
			snprintf(warn, warnsz, "--snapshot-cleanup '%.300s' failed (%s %d): snapshot '%.300s' may be left",
				 s->c.cleanup, st < 0 ? "error" : "exit status", st < 0 ? -st : st, s->read_path);
			w = 1;
		}
	}
	free(s);
	return w;
}
