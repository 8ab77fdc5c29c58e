/* backup.h - the decision of cbi_backup() that is kept apart from its I/O
 * and tested on its own: which point a backup continues from (internal). */
#ifndef CBI_BACKUP_H
#define CBI_BACKUP_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

/* What the local state of a job held when it was looked at. */
enum cbi_state_status {
	CBI_STATE_UNUSED = 0, /* not read: --no-state, or --full */
	CBI_STATE_MISSING,    /* no state index */
	CBI_STATE_FOUND,      /* a state index (its tip is passed) */
	CBI_STATE_DAMAGED,    /* only a damaged one, or the directory unreadable */
};

/* Where the new point's parent comes from. */
enum cbi_parent_from {
	CBI_FROM_NEW = 0,     /* none: a new chain, with a full */
	CBI_FROM_DEST,        /* the newest point of the job in DEST */
	CBI_FROM_STATE,       /* the local state's index (DEST holds no chain, and outbox is
	                       * set: an outbox) */
	CBI_FROM_REFUSE,      /* no backup: see code and msg */
};

/* Why: the notice given with a decision, or the reason of a refusal. */
enum cbi_parent_why {
	CBI_WHY_NONE = 0,            /* DEST and the state agree, or neither was asked */
	/* decisions with a notice */
	CBI_WHY_FIRST,               /* no chain in DEST and no state: a new chain */
	CBI_WHY_STATE_DAMAGED,       /* the state is damaged: DEST's newest point */
	CBI_WHY_OUTBOX,              /* DEST holds no chain, outbox set: the state's point */
	CBI_WHY_NEW_DEST,            /* DEST holds no chain, the state does, outbox not set: a new
	                              * chain in DEST (another disk of a rotation, a replaced one) */
	CBI_WHY_OTHER_CHAIN,         /* the state follows another chain: DEST's */
	CBI_WHY_STATE_BEHIND,        /* DEST is ahead of the state: DEST's */
	/* refusals */
	CBI_WHY_DAMAGED_NO_CHAIN,    /* state damaged and no chain in DEST (-CBI_EDAMAGED) */
	CBI_WHY_CLEAR_AFTER_ENCRYPTED, /* state on an encrypted chain, DEST's newest on a clear one
	                              * (-CBI_EMISMATCH) */
	CBI_WHY_STATE_AHEAD,         /* the state is ahead of DEST: points elsewhere (-CBI_EMISMATCH) */
	CBI_WHY_FORKED,              /* same seq, other point: a fork (-CBI_EMISMATCH) */
	CBI_WHY_OTHER_DISK,          /* same path and job, other source id (-CBI_EMISMATCH) */
	CBI_WHY_FORGED_CLEAR,        /* clear newest point of an encrypted chain (-CBI_EAUTH) */
	CBI_WHY_SIZE,                /* the source's size differs from the chain's (-CBI_EMISMATCH) */
	CBI_WHY_OUTBOX_NO_STATE,     /* outbox set, DEST holds no chain and the state has no point
	                              * (-CBI_ENOCHAIN) */
};

/* Everything the decision depends on: what was found, never where. */
typedef struct cbi_parent_in {
	const cbi_point *pts;        /* the points found in DEST (any job, any order) */
	size_t npts;
	const char *host;            /* the job being backed up */
	const char *source_id;
	const char *job;
	const char *source_path;     /* as recorded in headers (its last 63 bytes) */
	uint64_t source_size;
	int state_status;            /* enum cbi_state_status */
	const cbi_point *state;      /* the state's point when CBI_STATE_FOUND, else unused */
	const char *state_why;       /* CBI_STATE_DAMAGED: why, for the messages */
	int force_full;              /* --full */
	int source_id_given;         /* --source-id: the identity was set, not derived */
	int encrypt;                 /* --encrypt: a new chain would be encrypted */
	int outbox;                  /* --outbox: when DEST holds no chain of the job, continue the
	                              * local state's (DEST is an outbox for a seeded remote site) */
	const char *dest;            /* names for the messages only */
	const char *source;
} cbi_parent_in;

typedef struct cbi_parent_choice {
	int from;                    /* enum cbi_parent_from */
	const cbi_point *tip;        /* the parent: in in->pts (DEST) or in->state; NULL otherwise */
	int why;                     /* enum cbi_parent_why */
	int code;                    /* CBI_FROM_REFUSE: the negative error code; else 0 */
	int from_state;              /* the state's point was chosen (stays set when the chain then
	                              * turns out exhausted and a new one starts) */
	int exhausted;               /* the chosen chain has no seq left: a new chain instead */
	char msg[1024];              /* the notice of a decision, or the refusal's message; "" */
} cbi_parent_choice;

/* Decide which point a backup continues from, with no I/O: the newest point
 * of (host, source_id, job) in DEST is compared with the local state's, and
 * the disagreements are resolved as cbi_backup() documents it: never
 * forking a chain and never silently starting a new one. Refusals
 * (CBI_FROM_REFUSE) carry the error code and message cbi_backup() returns. */
void cbi_backup_choose_parent(const cbi_parent_in *in, cbi_parent_choice *out);

/* The free-space preflight's estimate (cbimg-backup(1), "Free space"): the
 * bytes a point needs in DEST at the least, so that a run is refused only
 * when DEST clearly lacks them. Every point needs its index (one entry per
 * block) and the files' headers and trailers. A full needs its data too:
 * data_bytes (what the source holds: its used blocks, or an image file's
 * allocated bytes) compressed CBI_SPACE_RATIO_KNOWN to 1 when data_known,
 * else the source's size compressed CBI_SPACE_RATIO_UNKNOWN to 1 (zeros cost
 * nothing, and how much of it is zeros is not known), plus each stored
 * block's record header and table entry. The index: 24 bytes per block,
 * but for a full whose data is known and whose index will be of runs
 * (n_blocks >= CBI_IDX_RUNS_MIN_BLOCKS), 24 bytes per data block and run.
 * Incrementals: the index only (what changed is known once read). */
#define CBI_SPACE_RATIO_KNOWN 4
#define CBI_SPACE_RATIO_UNKNOWN 16
uint64_t cbi_backup_space_need(int full, uint64_t n_blocks, uint32_t block_size, uint64_t data_bytes,
			       int data_known);

/* What a caller on top of backup (objstore.c, an s3:// DEST) changes in a
 * run; NULL fields change nothing. */
typedef struct cbi_backup_hooks {
	/* The image goes to image_write (sfile.h, cbi_sfw_sink_fn) instead of a
	 * file in DEST: image_begin is called once with the image's path in
	 * DEST (its name) and an upper bound of its size, before the first
	 * byte; then image_write gets every byte of it in order. Neither sees
	 * the commit: once cbi_backup_hooked() returns 0, the image's bytes are
	 * all handed over and its index committed in DEST; making the image
	 * durable, or abandoning it on failure, is the caller's. The free-space
	 * check of DEST then counts the index only. */
	int (*image_begin)(void *ud, const char *path, uint64_t max_size, cbi_error *err);
	int (*image_write)(void *ud, const void *buf, size_t len);
	void *ud;
	/* Not NULL: the run's end is not recorded in DEST's run history; its id
	 * (0: none) is stored here and the caller records the end with
	 * cbi_catalog_run_end() once it knows the run's real outcome (an S3
	 * backup: only after its index object is committed). */
	int64_t *run_id;
} cbi_backup_hooks;

/* cbi_backup() with hooks (hk NULL: the same). */
int cbi_backup_hooked(const cbi_backup_opts *o, const cbi_backup_hooks *hk, cbi_backup_result *r,
		      cbi_error *err);

/* The largest an image of n_blocks blocks of block_size bytes can be: each
 * block stored (raw when incompressible, with a GCM tag when encrypted),
 * with its record header and table entry, plus header and trailer. */
uint64_t cbi_backup_image_bound(uint64_t n_blocks, uint32_t block_size);

#endif
