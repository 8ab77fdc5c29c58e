/* snapshot.h - a consistent image of a source in use (issue 13,
 * cbimg-backup(1), "SNAPSHOTS"): which mode a backup uses, and the means of
 * each (internal). The backup asks this module for the path to read, then
 * calls its hooks around the read:
 *
 *   freeze   cbi_snap_freeze() before the read, cbi_snap_thaw() after it;
 *   trace    cbi_snap_trace_start() before the read; after it
 *            cbi_snap_freeze(), cbi_snap_collect(), the re-read, then
 *            cbi_snap_thaw() (wtrace.h records the writes);
 *   reflink  the path to read is a clone of the file (FICLONE), made by
 *            cbi_snap_begin() under a freeze of the file system that a loop
 *            device over the file carries, if any;
 *   exec     the path to read is what the user's command printed; its
 *            cleanup command runs in cbi_snap_end().
 *
 * A frozen file system is never left frozen: cbi_snap_end() thaws on every
 * exit path, and a guardian process, forked before the first freeze, thaws
 * when cbimg dies (even by SIGKILL: it sees the end of a socket whose only
 * writer was cbimg) or when the freeze outlasts its timeout. */
#ifndef CBI_SNAPSHOT_H
#define CBI_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

/* What the choice of a mode depends on (cbi_snap_choose()). */
typedef struct cbi_snap_facts {
	int asked;              /* CBI_SNAP_* asked for */
	int have_cmd;           /* a snapshot command was given */
	int allow_inconsistent;
	int used_only;
	int is_file;            /* the source is a regular file */
	int mounted_rw;         /* it (or a loop device over it) is mounted read-write */
	int freezable;          /* every such mount can be frozen here */
	int traceable;          /* writes to its device can be traced here */
	const char *what;       /* the source, for messages */
	const char *mnt;        /* where it is mounted read-write */
	const char *why_no_freeze; /* reasons, for messages ("" when none) */
	const char *why_no_trace;
} cbi_snap_facts;

/* The mode to use, from facts alone (a pure function): a CBI_SNAP_* other
 * than AUTO, or a negative code with msg (one line) filled: -CBI_EUSAGE (a
 * mode that does not apply: reflink of a device, a command without exec),
 * -CBI_EMOUNTED (a source mounted read-write and no usable mode; the message
 * names the options). A source not mounted read-write gets CBI_SNAP_NONE for
 * auto, none, trace and freeze: it needs no snapshot. */
int cbi_snap_choose(const cbi_snap_facts *f, char *msg, size_t msgsz);

/* "auto", "none", "trace", "freeze", "reflink", "exec"; "?" otherwise. */
const char *cbi_snap_mode_name(int mode);

typedef struct cbi_snap_cfg {
	int mode;                 /* CBI_SNAP_* asked for */
	int allow_inconsistent;
	int used_only;
	const char *source;       /* the origin, as given */
	const char *dest;         /* a freeze of the file system holding it is refused */
	const char *state_dir;    /* the same (NULL: no local state) */
	uint32_t freeze_timeout_ms; /* 0: 60 s */
	const char *cmd, *cleanup; /* exec */
	uint32_t trace_buf_kib;   /* trace: per-CPU buffer (0: the tracer's default) */
} cbi_snap_cfg;

typedef struct cbi_snap cbi_snap;

/* Look at the source (its mounts, the loop devices over a file), choose the
 * mode (cbi_snap_choose()), and for exec run the command, for reflink make
 * the clone. *out is the caller's (cbi_snap_end(), also after a failure: a
 * command that ran gets its cleanup). Errors as cbi_snap_choose(), and
 * -errno or -CBI_EREAD for a command or clone that failed. */
int cbi_snap_begin(const cbi_snap_cfg *c, cbi_snap **out, cbi_error *err) CBI_WUR;

/* A context of mode `mode` for source path, with nothing to freeze and no
 * command: trace then traces path (a block device). For tests, and for
 * callers that manage the source's consistency themselves. NULL without
 * memory. */
cbi_snap *cbi_snap_fixed(int mode, const char *path);

/* The mode chosen (never AUTO). */
int cbi_snap_mode(const cbi_snap *s);

/* Is the source in use: mounted read-write (a loop device over a file too)? */
int cbi_snap_live(const cbi_snap *s);

/* The path to read: the source itself, the clone or the command's output. */
const char *cbi_snap_read_path(const cbi_snap *s);

/* The source at cbi_snap_read_path() is open (size bytes): a clone's name is
 * removed now (the open file stays readable, and nothing is left behind if
 * cbimg is killed); a snapshot whose size is not the origin's is refused
 * (-CBI_EMISMATCH). */
int cbi_snap_opened(cbi_snap *s, uint64_t size, cbi_error *err) CBI_WUR;

/* Trace mode: start recording writes (cbi_wtrace_start()). */
int cbi_snap_trace_start(cbi_snap *s, cbi_error *err) CBI_WUR;

/* Trace mode, frozen: the blocks written since cbi_snap_trace_start(), as
 * cbi_wtrace_collect(). */
int cbi_snap_collect(cbi_snap *s, uint32_t bs, uint64_t n_blocks, uint8_t *touched, uint64_t *n_marked,
		     int *complete, cbi_error *err) CBI_WUR;

/* Freeze every read-write mount of the source (the guardian first). No-op
 * when there is none. -errno with the mount point named when one cannot be
 * frozen (the ones frozen before it are thawed again). */
int cbi_snap_freeze(cbi_snap *s, cbi_error *err) CBI_WUR;

/* Has the freeze lasted longer than its timeout? (the guardian thaws then) */
int cbi_snap_expired(const cbi_snap *s);

/* Thaw, stop the guardian, and add the freeze's duration to the window.
 * -ETIMEDOUT when the freeze outlasted the timeout (the guardian thawed: what
 * was read frozen may not be consistent), -errno when a thaw failed. */
int cbi_snap_thaw(cbi_snap *s, cbi_error *err) CBI_WUR;

/* Milliseconds the source's file system was frozen in all. */
double cbi_snap_freeze_ms(const cbi_snap *s);

/* Thaw if still frozen, stop tracing, remove a clone, run the cleanup
 * command, free. Returns 0, or 1 with warn filled (one line) when the
 * cleanup failed. Safe with NULL. */
int cbi_snap_end(cbi_snap *s, char *warn, size_t warnsz);

#endif
