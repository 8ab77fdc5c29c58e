/* state.h - the local state of a job: a copy of the newest point's index,
 * kept on the backed-up machine (default /var/lib/cbimg), so that a chain
 * can be continued when DEST does not hold it (an outbox for a remote site
 * that was seeded with the full image). Layout:
 *
 *     STATE_DIR/<key>/<index file name>.cbx
 *
 * where <key> is the 16 hex digits of the job key (job.h). The directory holds one index, replaced
 * atomically after each successful backup, and for an encrypted chain a
 * copy of its key file, chain.cbk (keyfile.h). */
#ifndef CBI_STATE_H
#define CBI_STATE_H

#include <stdint.h>

#include "cbimg.h"
#include "job.h" /* the job key (cbi_state_key()), CBI_DEFAULT_STATE_DIR, the layout */

/* Find the newest index in STATE_DIR/<key>. 0 with *found = 0 when there
 * is none (or no such directory), 0 with *found = 1 and *tip filled when
 * there is an intact one. -CBI_EDAMAGED (err: "'FILE': REASON") when the
 * state holds index files but none is intact (fails its structure check, or
 * for an unencrypted one its digest check); another negative code (err
 * filled) when the state directory cannot be read. */
int cbi_state_load(const char *state_dir, uint64_t key, cbi_point *tip, int *found, cbi_error *err) CBI_WUR;

/* Every index of the local state, of every job (all of them, not only each
 * job's newest; damaged ones, and ones a backup replaces while they are
 * read, are left out), read now: what verify compares a DEST with. Read
 * before DEST is scanned, a snapshot is never ahead of DEST by a point the
 * scan missed: a backup commits its point to DEST before it saves the
 * state. *out is malloc'ed (index_file: the state's copy). 0, -ENOMEM, or
 * the error of an unreadable state directory (a missing one is empty). */
int cbi_state_snapshot(const char *state_dir, cbi_point **out, size_t *n) CBI_WUR;

struct cbi_keys;

/* Make the index at index_path the job's state: copy it under a temporary
 * name, fsync, rename, fsync the directory, then remove older indexes.
 * For an encrypted chain (keys non-NULL), first write chain.cbk: the data
 * key wrapped under pass at the state's low scrypt cost (keyfile.h), so the
 * state never holds an encrypted index without its key file, and the next
 * incremental unlocks in milliseconds. */
int cbi_state_save(const char *state_dir, uint64_t key, const char *index_path, const struct cbi_keys *keys,
		   const char *pass, size_t passlen, cbi_error *err) CBI_WUR;

#endif
