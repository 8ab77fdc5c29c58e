/* job.c - the job key and the layout of a job's files (job.h). */
#define _GNU_SOURCE
#include "job.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "util.h"

uint64_t cbi_state_key(const char *host, const char *source_id, const char *job)
{
	/* Streamed: a fixed buffer would have to truncate long strings (and a
	 * truncated snprintf's return value is not the length it wrote). */
	XXH3_state_t s;
	XXH3_INITSTATE(&s);
	XXH3_64bits_reset(&s);
	XXH3_64bits_update(&s, host, strlen(host) + 1);
	XXH3_64bits_update(&s, source_id, strlen(source_id) + 1);
	XXH3_64bits_update(&s, job, strlen(job));
	return XXH3_64bits_digest(&s);
}

int cbi_job_lock_path(const char *dest, uint64_t key, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s/.cbimg-%016llx.lock", dest, (unsigned long long)key);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

int cbi_job_is_lock_name(const char *n)
{
	if (!strcmp(n, CBI_LOCK_NAME))
		return 1;
	return strlen(n) == 28 && !strncmp(n, ".cbimg-", 7) && !strcmp(n + 23, ".lock") &&
	       strspn(n + 7, "0123456789abcdef") == 16;
}

void cbi_job_tmp_tag(uint64_t key, long pid, char *out, size_t outsz)
{
	snprintf(out, outsz, "cbimg-%016llx-%ld", (unsigned long long)key, pid);
}

void cbi_job_tmp_prefix(uint64_t key, char *out, size_t outsz)
{
	snprintf(out, outsz, ".cbimg-%016llx-", (unsigned long long)key);
}

int cbi_job_state_dir(const char *state_dir, uint64_t key, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s/%016llx", state_dir, (unsigned long long)key);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

void cbi_keyfile_state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
			    char *out, size_t outsz)
{
	snprintf(out, outsz, "%.3000s/%016llx/" CBI_STATE_KEY_NAME, state_dir,
		 (unsigned long long)cbi_state_key(host, source_id, job));
}

int cbi_job_lock_at(const char *dest, int64_t off, int wait, cbi_joblock *lk, cbi_error *err)
{
	char path[4096];
	memset(lk, 0, sizeof *lk);
	lk->fd = -1;
	if ((size_t)snprintf(path, sizeof path, "%s/" CBI_LOCK_NAME, dest) >= sizeof path)
		return cbi_err(err, -ENAMETOOLONG, "path of the lock file in '%s' too long", dest);
	/* Never followed, and used only when what was opened is a regular
	 * file: a link, FIFO or device planted at the name in a shared DEST is
	 * refused, never written through (and a FIFO cannot hang the open). */
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0644);
	if (fd < 0 && errno == ELOOP)
		return cbi_err(err, -ELOOP, "lock file '%s' is a symbolic link: remove it", path);
	if (fd < 0)
		return cbi_err(err, -errno, "unable to write to destination '%s': %s", dest, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return cbi_err(err, e, "unable to use lock file '%s': %s", path, cbi_strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return cbi_err(err, -EINVAL, "lock file '%s' is not a regular file: remove it", path);
	}
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };
	int r;
	while ((r = fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl)) < 0 && errno == EINTR)
		;
	if (r < 0) {
		int e = errno;
		if (e == EAGAIN || e == EACCES) {
			close(fd);
			return cbi_err(err, -CBI_ELOCKED, "'%s' is locked by another cbimg", path);
		}
		/* file systems without locks (ENOLCK, EINVAL): go on unlocked */
	} else {
		lk->locked = 1;
	}
	lk->fd = fd;
	return 0;
}

/* Take the old-style lock file path (flock, as versions up to 0.1.0 did)
 * and remove it while holding it: 1 when taken and removed (fd kept in
 * lk), 0 when it is not there or cannot be locked here, -CBI_ELOCKED when
 * another process holds it. Unlinking under the lock is safe against those
 * versions' open-then-flock: one that opened the file before the unlink
 * finds it locked for as long as this process holds it. */
static int take_old(cbi_joblock *lk, const char *path)
{
	if (lk->nold >= sizeof lk->old / sizeof lk->old[0])
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return 0;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		return e == EWOULDBLOCK ? -CBI_ELOCKED : 0;
	}
	/* still the file of that name (no one replaced it meanwhile)? */
	struct stat a, b;
	if (fstat(fd, &a) < 0 || lstat(path, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino ||
	    unlink(path) < 0) {
		close(fd);
		return 0;
	}
	lk->old[lk->nold++] = fd;
	return 1;
}

/* cbi_job_lock(); *by_old 1 when the job's old-style lock file is what
 * another process holds. */
static int job_lock(const char *dest, uint64_t key, cbi_joblock *lk, int *by_old, cbi_error *err)
{
	char path[4096];
	*by_old = 0;
	int rc = cbi_job_lock_at(dest, CBI_JOB_LOCK_OFFSET(key), 0, lk, err);
	if (rc)
		return rc;
	if (cbi_job_lock_path(dest, key, path, sizeof path) == 0 && take_old(lk, path) == -CBI_ELOCKED) {
		cbi_job_unlock(lk);
		*by_old = 1;
		return cbi_err(err, -CBI_ELOCKED, "'%s' is locked by another cbimg (an older version)", path);
	}
	/* The other jobs' old lock files: only those nobody holds. */
	DIR *d = opendir(dest);
	struct dirent *de;
	while (d && (de = readdir(d)))
		if (strcmp(de->d_name, CBI_LOCK_NAME) && cbi_job_is_lock_name(de->d_name) &&
		    (size_t)snprintf(path, sizeof path, "%.3000s/%.1000s", dest, de->d_name) < sizeof path)
			take_old(lk, path);
	if (d)
		closedir(d);
	return 0;
}

int cbi_job_lock(const char *dest, uint64_t key, cbi_joblock *lk, cbi_error *err)
{
	int by_old;
	return job_lock(dest, key, lk, &by_old, err);
}

/* ------------------------------------------- who holds a job (revision 2.11) */

#define HOLDER_PIDS ((int64_t)1 << 22) /* a slot's bytes per op: pids 1 .. 2^22 - 1 */

int64_t cbi_job_holder_offset(uint64_t key, int op, long pid)
{
	uint64_t slot = ((key >> 28) << 2) | ((uint64_t)op & 3);
	return CBI_LOCK_OFFSET_HOLDERS + (int64_t)(slot << 22) + pid;
}

const char *cbi_job_op_name(int op)
{
	return op == CBI_JOB_OP_BACKUP ? "backup" : op == CBI_JOB_OP_PRUNE ? "prune" : NULL;
}

int cbi_job_op_parse(const char *name)
{
	return !strcmp(name, "backup") ? CBI_JOB_OP_BACKUP : !strcmp(name, "prune") ? CBI_JOB_OP_PRUNE : -1;
}

int cbi_job_lock_op(const char *dest, uint64_t key, int op, const char *job, const char *source, cbi_joblock *lk,
		    cbi_error *err)
{
	int by_old;
	int rc = job_lock(dest, key, lk, &by_old, err);
	if (rc == -CBI_ELOCKED) {
		int hop = -1;
		long pid = 0;
		char who[64] = "an older version", msg[sizeof err->msg];
		if (!by_old) {
			cbi_job_lock_holder(dest, key, &hop, &pid);
			who[0] = 0;
			if (pid)
				snprintf(who, sizeof who, "pid %ld", pid);
		}
		cbi_lock_refusal(msg, sizeof msg, hop, who, job, source, dest);
		return cbi_err(err, rc, "%s", msg);
	}
	long me = (long)getpid();
	if (rc || !lk->locked || me <= 0 || me >= HOLDER_PIDS || !cbi_job_op_name(op))
		return rc;
	/* shared: nobody takes a holder byte exclusively, so this cannot fail
	 * but for the file system's own reasons (then nobody learns who) */
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = cbi_job_holder_offset(key, op, me),
			    .l_len = 1 };
	while (fcntl(lk->fd, F_OFD_SETLK, &fl) < 0 && errno == EINTR)
		;
	return 0;
}

/* A lock held by another open file description on [from, end) of fd: 1 and
 * its first byte in *at, or 0 when none (or the query fails). */
static int held_in(int fd, int64_t from, int64_t end, int64_t *at)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = from, .l_len = end - from };
	if (from >= end || fcntl(fd, F_OFD_GETLK, &fl) < 0 || fl.l_type == F_UNLCK)
		return 0;
	*at = fl.l_start < from ? from : fl.l_start;
	return 1;
}

/* Does process pid of this machine run cbimg (its command name)? */
static int runs_cbimg(long pid)
{
	char p[64], comm[32] = "";
	snprintf(p, sizeof p, "/proc/%ld/comm", pid);
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	int ok = fgets(comm, sizeof comm, f) && !strncmp(comm, "cbimg", 5);
	fclose(f);
	return ok;
}

void cbi_job_lock_holder(const char *dest, uint64_t key, int *op, long *pid)
{
	char path[4096];
	*op = -1;
	*pid = 0;
	if ((size_t)snprintf(path, sizeof path, "%s/" CBI_LOCK_NAME, dest) >= sizeof path)
		return;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat st;
	int64_t at = 0, a, b;
	int found = 0;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    held_in(fd, CBI_JOB_LOCK_OFFSET(key), CBI_JOB_LOCK_OFFSET(key) + 1, &a)) {
		for (int o = CBI_JOB_OP_BACKUP; o <= CBI_JOB_OP_PRUNE; o++) {
			int64_t base = cbi_job_holder_offset(key, o, 0);
			if (!held_in(fd, base, base + HOLDER_PIDS, &a))
				continue;
			if (found++ || held_in(fd, a + 1, base + HOLDER_PIDS, &b)) {
				found = 2; /* two holders in the slot: which one is ours? */
				break;
			}
			*op = o;
			at = a - base;
		}
	}
	close(fd);
	if (found != 1) {
		*op = -1;
		return;
	}
	if (at > 0 && runs_cbimg((long)at))
		*pid = (long)at;
}

void cbi_lock_refusal(char *out, size_t sz, int op, const char *who, const char *job, const char *source,
		      const char *dest)
{
	char w[200] = "";
	if (who && *who)
		snprintf(w, sizeof w, " (%.190s)", who);
	const char *verb = op == CBI_JOB_OP_BACKUP ? "is backing up" : op == CBI_JOB_OP_PRUNE ? "is pruning"
											   : "holds the lock of";
	snprintf(out, sz, "another cbimg%s %s job '%s' of '%s' %s '%s'", w, verb, job, source,
		 op == CBI_JOB_OP_BACKUP ? "to" : "in", dest);
}

void cbi_job_unlock(cbi_joblock *lk)
{
	if (!lk)
		return;
	for (size_t i = 0; i < lk->nold; i++)
		close(lk->old[i]);
	lk->nold = 0;
	if (lk->fd >= 0)
		close(lk->fd); /* releases the OFD lock */
	lk->fd = -1;
	lk->locked = 0;
}

int cbi_job_lock_held(const char *dest, uint64_t key)
{
	char path[4096];
	if ((size_t)snprintf(path, sizeof path, "%s/" CBI_LOCK_NAME, dest) >= sizeof path)
		return 0;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	struct stat st;
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = CBI_JOB_LOCK_OFFSET(key), .l_len = 1 };
	int held = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && fcntl(fd, F_OFD_GETLK, &fl) == 0 &&
		   fl.l_type != F_UNLCK;
	close(fd);
	return held;
}

int64_t cbi_chain_lock_offset(const uint8_t chain_id[16])
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | chain_id[i];
	return (int64_t)((1ull << 62) + 1 + (v >> 3));
}

int cbi_job_lock_shared_at(const char *dest, int64_t off, cbi_joblock *lk, cbi_error *err)
{
	char path[4096];
	memset(lk, 0, sizeof *lk);
	lk->fd = -1;
	if ((size_t)snprintf(path, sizeof path, "%s/" CBI_LOCK_NAME, dest) >= sizeof path)
		return cbi_err(err, -ENAMETOOLONG, "path of the lock file in '%s' too long", dest);
	const int fl0 = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
	int fd = open(path, O_RDWR | O_CREAT | fl0, 0644);
	if (fd < 0 && errno != ELOOP)
		fd = open(path, O_RDONLY | fl0); /* read-only media: a shared lock needs no write access */
	if (fd < 0 && errno == ELOOP)
		return cbi_err(err, -ELOOP, "lock file '%s' is a symbolic link: remove it", path);
	if (fd < 0)
		return 0; /* nothing can lock (nor prune) there */
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return cbi_err(err, -EINVAL, "lock file '%s' is not a regular file: remove it", path);
	}
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };
	int r;
	while ((r = fcntl(fd, F_OFD_SETLK, &fl)) < 0 && errno == EINTR)
		;
	if (r < 0 && (errno == EAGAIN || errno == EACCES)) {
		close(fd);
		return cbi_err(err, -CBI_ELOCKED, "'%s' is locked by another cbimg (a prune of the chain?)", path);
	}
	lk->locked = r == 0;
	lk->fd = fd;
	return 0;
}
