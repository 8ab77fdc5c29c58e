/* job.h - where a job's files live. A job is (host, source id, job name);
 * its key names everything that belongs to the job outside its chain's
 * files, so that the layout is written down once:
 *
 *     DEST/.cbimg.lock                    the lock file of every job (format/SPEC.md, "Lock file"):
 *                                         a job's backups lock its byte CBI_JOB_LOCK_OFFSET(key)
 *                                         (and a holder byte naming the operation and pid, below)
 *     DEST/.cbimg-<key>.lock              the lock file of versions before 0.1.1 (removed once unused)
 *     DEST/.cbimg-<key>-<pid>.NAME.tmp    a backup's temporary files (tag "cbimg-<key>-<pid>")
 *     STATE_DIR/<key>/NAME.cbx            the local state: a copy of the newest index (state.h)
 *     STATE_DIR/<key>/chain.cbk           ... and of an encrypted chain's key file (keyfile.h)
 *
 * where <key> is the 16 hex digits of the job key. */
#ifndef CBI_JOB_H
#define CBI_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

#define CBI_DEFAULT_STATE_DIR "/var/lib/cbimg"

/* The job key: XXH3-64 of "host NUL source_id NUL job" (every byte of
 * them, however long). */
uint64_t cbi_state_key(const char *host, const char *source_id, const char *job);

/* The one lock file of a DEST, shared by every job and never removed: each
 * job locks one byte of it (an OFD byte-range lock, fcntl(2)), at an offset
 * derived from its key, so that two runs of the same job exclude each other
 * while other jobs run; byte 0 guards the run log (runlog.h). Nothing is
 * ever written to the file. Since the file is never unlinked, no process can
 * hold a lock on a name that another has already replaced. */
#define CBI_LOCK_NAME ".cbimg.lock"
#define CBI_JOB_LOCK_OFFSET(key) ((int64_t)((key) >> 2) + 1)
#define CBI_LOCK_OFFSET_RUNLOG 0

/* The lock file of a job in versions up to 0.1.0 (flock(2) on the whole file,
 * one file per job): DEST/.cbimg-<key>.lock. -ENAMETOOLONG if it does not
 * fit in out. */
int cbi_job_lock_path(const char *dest, uint64_t key, char *out, size_t outsz);

/* Is name (no directory) a lock file name: ".cbimg.lock", or an old
 * ".cbimg-<16 hex digits>.lock"? */
int cbi_job_is_lock_name(const char *name);

/* A job's lock, held from cbi_job_lock() to cbi_job_unlock(). */
typedef struct cbi_job_lock {
	int fd;                /* DEST/.cbimg.lock, -1 if none */
	int locked;            /* 0: the file system has no locks; the run goes on unlocked */
	int old[16];           /* old-style lock files removed, still held (flock) */
	size_t nold;
} cbi_joblock;

/* Lock byte off of DEST/.cbimg.lock (created if missing) exclusively; wait:
 * block until it is free, else fail with -CBI_ELOCKED at once. On a file
 * system without locks lk->locked is 0 and 0 is returned. err names only
 * DEST; callers say what was locked. */
int cbi_job_lock_at(const char *dest, int64_t off, int wait, cbi_joblock *lk, cbi_error *err) CBI_WUR;

/* The lock of job key: byte CBI_JOB_LOCK_OFFSET(key), without waiting. The
 * old-style lock files of DEST (the key's, and those of other jobs) are
 * then taken with flock(2) too, so that a version that still uses them is
 * excluded as well (-CBI_ELOCKED when one holds the key's), and are removed
 * while held; they stay held until cbi_job_unlock(). */
int cbi_job_lock(const char *dest, uint64_t key, cbi_joblock *lk, cbi_error *err) CBI_WUR;

/* Is the lock of job key in dest held by a process now (a backup of the job
 * is running)? Tested with F_OFD_GETLK, never taken; the lock file is
 * opened without following a link and never created. 1 held, 0 not (or no
 * lock file, or no locks on this file system). */
int cbi_job_lock_held(const char *dest, uint64_t key);

/* A mounted point protects its chain from prune: while a point reader that
 * was asked to lock (cbi_pointrd_opts.lock) is open, it holds a SHARED OFD
 * lock on byte cbi_chain_lock_offset(chain_id) of DEST/.cbimg.lock, DEST
 * being the directory of the point's index file. prune takes the same byte
 * exclusively (waiting, or refusing with a message naming the mount). The
 * bytes of chains lie above every job byte (CBI_JOB_LOCK_OFFSET() <= 2^62):
 * 2^62 + 1 + (first 8 bytes of the chain id, little-endian, >> 3). Backups
 * never take it, so a mounted chain still gets new points. */
int64_t cbi_chain_lock_offset(const uint8_t chain_id[16]);

/* Lock byte off of DEST/.cbimg.lock SHARED (F_RDLCK), without waiting:
 * -CBI_ELOCKED when another process holds it exclusively. A DEST where the
 * lock file cannot be created or written (read-only media) is opened
 * read-only; when it cannot be opened at all, or the file system has no
 * locks, lk->locked is 0 and 0 is returned (nothing can prune there
 * either). */
int cbi_job_lock_shared_at(const char *dest, int64_t off, cbi_joblock *lk, cbi_error *err) CBI_WUR;

/* Release what cbi_job_lock() or cbi_job_lock_at() took (NULL-safe; a lock
 * whose taking failed holds nothing). */
void cbi_job_unlock(cbi_joblock *lk);

/* What the holder of a job's lock is doing (revision 2.11). While it holds
 * the job's byte, a backup or a prune also holds a SHARED lock on one byte
 * of its own in the same file, the holder byte
 *     CBI_LOCK_OFFSET_HOLDERS + ((((key >> 28) << 2) | op) << 22) + pid
 * (op a CBI_JOB_OP_*, pid its process id, below 2^22 as on every Linux),
 * so that a run refused the lock can tell what holds it and, with a
 * range query (F_OFD_GETLK), its pid. These bytes lie above every chain
 * byte; the kernel drops them with the job's byte when the holder ends or
 * is killed, so nothing is ever stale and nothing is written. */
#define CBI_LOCK_OFFSET_HOLDERS ((int64_t)7 << 60)
enum { CBI_JOB_OP_BACKUP = 0, CBI_JOB_OP_PRUNE = 1 };
int64_t cbi_job_holder_offset(uint64_t key, int op, long pid);

/* cbi_job_lock() for a backup or a prune (op), then the holder byte of
 * (key, op, this process), taken with the job's byte's descriptor (nothing
 * is marked on a file system without locks). When another process holds
 * the job: -CBI_ELOCKED, err the refusal of cbi_lock_refusal() naming what
 * it does (cbi_job_lock_holder()), job, source and dest. */
int cbi_job_lock_op(const char *dest, uint64_t key, int op, const char *job, const char *source, cbi_joblock *lk,
		    cbi_error *err) CBI_WUR;

/* Who holds job key's lock in dest now, as the holder bytes tell: *op a
 * CBI_JOB_OP_* or -1 when it cannot be told (no holder byte: a cbimg
 * older than revision 2.11, a holder that has just ended, or two holders
 * in the byte's slot); *pid its process id when a process of that id runs
 * cbimg on this machine, else 0 (a holder on another host of a network
 * file system, or in another pid namespace). Never takes a lock. */
void cbi_job_lock_holder(const char *dest, uint64_t key, int *op, long *pid);

/* The one-line refusal of a run that found a job's lock held (local and S3
 * alike), into out:
 *     another cbimg (WHO) is backing up job 'J' of 'S' to 'D'
 *     another cbimg (WHO) is pruning job 'J' of 'S' in 'D'
 *     another cbimg (WHO) holds the lock of job 'J' of 'S' in 'D'
 * op -1 (unknown) gives the last form, never a guess; who (e.g. "host H,
 * pid P", "pid P") NULL or "" leaves the parenthesis out. */
void cbi_lock_refusal(char *out, size_t sz, int op, const char *who, const char *job, const char *source,
		      const char *dest);

/* "backup" or "prune" for a CBI_JOB_OP_*, NULL for another value; and back
 * (-1 for a name it does not know). */
const char *cbi_job_op_name(int op);
int cbi_job_op_parse(const char *name);

/* The tag of a backup's temporary files (cbi_sfw_create_tagged()):
 * "cbimg-<key>-<pid>"; their names start with "." and the tag. prefix
 * receives ".cbimg-<key>-", which every temporary file of the job's
 * backups starts with (a killed run's leftovers). */
void cbi_job_tmp_tag(uint64_t key, long pid, char *out, size_t outsz);
void cbi_job_tmp_prefix(uint64_t key, char *out, size_t outsz);

/* The job's directory in the local state: STATE_DIR/<key>. */
int cbi_job_state_dir(const char *state_dir, uint64_t key, char *out, size_t outsz);

/* File name of the key file copy in a job's state directory. */
#define CBI_STATE_KEY_NAME "chain.cbk"

/* File name of the UUID of the file system the job last wrote to (destfs.h),
 * in the job's state directory: kept when a new state replaces the old. */
#define CBI_STATE_DEST_FS_NAME "dest-fs"

/* Path of the copy of the key file kept in the local state of job (host,
 * source_id, job): STATE_DIR/<key>/chain.cbk. */
void cbi_keyfile_state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
			    char *out, size_t outsz);

#endif
