/* job.h - where a job's files live. A job is (host, source id, job name);
 * its key names everything that belongs to the job outside its chain's
 * files, so that the layout is written down once:
 *
 *     DEST/.cbimg-<key>.lock              the lock of its backups (format/SPEC.md, "Lock file")
 *     DEST/.cbimg-<key>-<pid>.NAME.tmp    a backup's temporary files (tag "cbimg-<key>-<pid>")
 *     STATE_DIR/<key>/NAME.cbx            the local state: a copy of the newest index (state.h)
 *     STATE_DIR/<key>/chain.cbk           ... and of an encrypted chain's key file (keyfile.h)
 *
 * where <key> is the 16 hex digits of the job key. */
#ifndef CBI_JOB_H
#define CBI_JOB_H

#include <stddef.h>
#include <stdint.h>

#define CBI_DEFAULT_STATE_DIR "/var/lib/cbimg"

/* The job key: XXH3-64 of "host NUL source_id NUL job" (every byte of
 * them, however long). */
uint64_t cbi_state_key(const char *host, const char *source_id, const char *job);

/* The job's lock file in dest: DEST/.cbimg-<key>.lock. -ENAMETOOLONG if it
 * does not fit in out. */
int cbi_job_lock_path(const char *dest, uint64_t key, char *out, size_t outsz);

/* Is name (no directory) a lock file name ".cbimg-<16 hex digits>.lock"? */
int cbi_job_is_lock_name(const char *name);

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

/* Path of the copy of the key file kept in the local state of job (host,
 * source_id, job): STATE_DIR/<key>/chain.cbk. */
void cbi_keyfile_state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
			    char *out, size_t outsz);

#endif
