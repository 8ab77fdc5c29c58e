/* objstore.h - the parts of objstore.c (the s3:// DEST; cbimg.h has its
 * API) that tests reach directly. */
#ifndef CBI_OBJSTORE_H
#define CBI_OBJSTORE_H

#include <stddef.h>

/* A point file name "HOST_SRC_JOB_YYYYmmddTHHMMSSZ_(full|incr)SEQ_ID8.EXT"
 * (EXT three letters): out gets "TIMESTAMP SEQ" (seq zero-padded to 10
 * digits), which sorts as the points were made, and *jpl (optional) the
 * length of "HOST_SRC_JOB_"; out is "" when name is not such a name. */
void cbi_objstore_name_order(const char *name, char *out, size_t sz, size_t *jpl);

/* ------------------------------------------- for objprune.c (prune on S3)
 * An open s3:// DEST: its client, key prefix and local base directory
 * STATE/s3/<where>/, and the job's lock object, with the rules backup
 * follows (format/SPEC.md, "Lock object"). */
#include <stdint.h>

#include "s3.h"

typedef struct cbi_os cbi_os;

/* Open url (endpoint and state_dir as cbi_objstore_backup() takes them):
 * the client and the base directory (created). *out: cbi_os_close(). */
int cbi_os_open(const char *url, const char *endpoint, const char *state_dir, cbi_os **out, cbi_error *err);
void cbi_os_close(cbi_os *o);
cbi_s3 *cbi_os_s3(cbi_os *o);
const char *cbi_os_bucket(const cbi_os *o);
const char *cbi_os_key_prefix(const cbi_os *o); /* "" or "a/b/" */
const char *cbi_os_base(const cbi_os *o);       /* STATE/s3/<where> */

/* Take job key jk's lock object for host (this machine), job name what
 * and source (named in messages), its body naming op (a CBI_JOB_OP_*,
 * job.h) (-CBI_ELOCKED: held, the message saying what the holder does
 * when its body tells; note: a takeover, one line), and renew its lease
 * while it is held, as a backup does (s3lease.h); release it (the renewal
 * ended, the object deleted only if it still names this run). */
int cbi_os_lock(cbi_os *o, uint64_t jk, const char *host, const char *what, const char *source, int op, char *note,
		size_t nsz, cbi_error *err);
void cbi_os_unlock(cbi_os *o, uint64_t jk);

/* 0 while the lock of cbi_os_lock() is held (s3lease.h's rules: call it
 * before each request that changes the bucket), else -CBI_ELOCKED naming
 * the lock and why. 0 when no lock was taken. */
int cbi_os_held(cbi_os *o, cbi_error *err);


/* Remove every file of dir, and dir itself with and_dir. */
void cbi_os_rm_files(const char *dir, int and_dir);

#endif
