/*
 * cbimg.h - public API of libcbimg, the changed-block-comparison disk imager.
 *
 * Conventions (see format/SPEC.md for the on-disk format):
 *  - Every fallible function returns 0 on success or a negative error code:
 *    either -errno (e.g. -ENOENT, -ENOSPC) or one of the CBI_E* codes below.
 *  - When a cbi_error pointer is passed, the library fills it with the code
 *    and a one-line message that names the subject and the reason, e.g.
 *    "unable to open '/dev/sdz': No such file or directory". The library never
 *    prints and never exits; the caller decides what to show.
 *  - Strings and buffers passed in stay owned by the caller. Objects returned
 *    through pointer-to-pointer arguments are owned by the caller and are
 *    released with the matching cbi_*_free() function (NULL-safe).
 */
#ifndef CBIMG_H
#define CBIMG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CBI_WUR __attribute__((warn_unused_result))

#define CBIMG_VERSION_STRING "0.1.0"
/* Newest on-disk format version this library reads and writes
 * (format/SPEC.md). Files that use no version-2 feature (encryption, SHA-256
 * block hashes) are still written as version 1; version 3 is an index of
 * runs (revision 2.6), written only for sources of 65536 blocks or more. */
#define CBI_FORMAT_VERSION 3

/* Library error codes, beyond the errno range. */
enum {
	CBI_EDAMAGED = 1000,  /* a file failed a digest, hash or structure check */
	CBI_ETRUNCATED,       /* a file ends early or has no trailer */
	CBI_EFORMAT,          /* not a cbimg file, or an unsupported version */
	CBI_ENOPARENT,        /* a parent point of a chain cannot be found */
	CBI_EMISMATCH,        /* the source does not match the chain (size, identity) */
	CBI_EUSAGE,           /* invalid option value */
	CBI_EMOUNTED,         /* target is mounted or in use */
	CBI_EEXISTS,          /* target exists and --force was not given */
	CBI_ETOOSMALL,        /* target smaller than the image */
	CBI_EREAD,            /* the source could not be read (data never replaced by zeros) */
	CBI_ENOCHAIN,         /* no chain found */
	CBI_ELOCKED,          /* another cbimg process holds the chain's lock */
	CBI_EAUTH,            /* authentication failed: encrypted data was altered */
	CBI_EPASS,            /* wrong passphrase, or none given for an encrypted chain */
	CBI_ENOKEY,           /* the key file of an encrypted chain was not found */
	CBI_ENOTCBI,          /* a file given as an operand is not a cbimg image or index */
	CBI_EBADRANGES,       /* the point holds bytes its source could not be read for (backup
	                       * --rescue); restore refuses them without --allow-bad */
};

typedef struct cbi_error {
	int code;          /* same value the function returned */
	char msg[1024];    /* one line, no trailing newline */
} cbi_error;

/* Name of an error code (negative or positive value accepted). Never NULL. */
const char *cbi_strerror(int code);

/* True when the code means that stored data was found damaged or incomplete
 * (CBI_EDAMAGED, CBI_ETRUNCATED, CBI_EFORMAT on a file that claimed to be
 * ours), or known to be missing (CBI_EBADRANGES: bytes the source could not
 * be read for). The CLI maps these to exit status 3. */
int cbi_is_damage(int code);

/* Progress callback: done and total are byte counts of the source/target.
 * Called from the thread that runs the operation, at most a few times per
 * second. Return non-zero to ask the operation to stop (it then fails with
 * -ECANCELED and leaves no finished-looking file behind). */
typedef int (*cbi_progress_fn)(void *ud, uint64_t done, uint64_t total);

/* ------------------------------------------------------------ passphrases */

/* Where the passphrase of an encrypted chain comes from. The library calls
 * it only when a chain is encrypted, at most once per chain and operation.
 * what names the chain for a prompt ("chain 1a2b3c4d, job 'daily' of
 * 'pc1'"); confirm is 1 when a new passphrase is being set (a prompt should
 * ask twice). Write at most bufsz - 1 bytes to buf and return their number,
 * or return a negative code (-CBI_EPASS: no passphrase available). */
typedef int (*cbi_pass_fn)(void *ud, const char *what, int confirm, char *buf, size_t bufsz);

#define CBI_PASS_MAX 1024

/* scrypt cost of the key that wraps a chain's data key: N = 2^log2_n, r, p.
 * Zeros take the defaults (CBI_KDF_LOG2_N, CBI_KDF_R, CBI_KDF_P: 32 MiB of
 * memory, about 0.1 s per p on this class of machine). */
typedef struct cbi_kdf_params {
	uint32_t log2_n;
	uint32_t r;
	uint32_t p;
} cbi_kdf_params;

#define CBI_KDF_LOG2_N 15u
#define CBI_KDF_R 8u
#define CBI_KDF_P 4u
/* The least cost a writer wraps a key file at (format/SPEC.md, "Key files",
 * revision 2.4): that of the local state's copy, N = 2^12, r = 8 (p >= 1).
 * -CBI_EUSAGE below it. */
#define CBI_KDF_FLOOR_LOG2_N 12u
#define CBI_KDF_FLOOR_R 8u

/* ---------------------------------------------------------------- points */

enum cbi_point_type { CBI_FULL = 1, CBI_INCREMENTAL = 2 };

/* What the header and trailer of a point's files say. */
typedef struct cbi_point {
	char file[4096];          /* path of the image file (.cbi), "" if missing */
	char index_file[4096];    /* path of the index file (.cbx) */
	uint8_t chain_id[16];
	uint8_t point_id[16];
	uint8_t parent_id[16];    /* all zero for a full */
	uint8_t parent_digest[32];
	uint8_t index_digest[32]; /* digest in this point's index trailer: SHA-256 of
	                           * every byte of the index file but the last 32 */
	uint32_t seq;             /* 0 for the full */
	int type;                 /* enum cbi_point_type */
	uint32_t block_size;
	uint64_t source_size;
	uint64_t n_blocks;
	int64_t created_ns;       /* Unix time, nanoseconds, UTC */
	char job[64];
	char host[64];
	char source_id[128];
	char source_path[64];
	uint64_t changed_blocks;  /* blocks that differ from the parent (all non-zero for a full) */
	uint64_t zero_blocks;
	uint64_t stored_blocks;   /* blocks whose data this point's image holds */
	uint64_t stored_bytes;    /* size of the image file */
	uint64_t index_bytes;     /* size of the index file */
	uint32_t index_version;   /* format version of the index file: 3 when its entries
	                           * are runs (format/SPEC.md "Run-length index"), else
	                           * 1 or 2; filled by cbi_point_info() only (0 elsewhere,
	                           * and when no index was found beside an image) */
	uint64_t segment_size;    /* the files are stored as segments NAME, NAME.001, ...
	                           * of this many bytes (format/SPEC.md, "Segments");
	                           * 0: each file is one file. Sizes above are the
	                           * segments' total. */
	int has_image;            /* image file present and complete */
	int encrypted;            /* AES-256-GCM records, keyed hashes, HMAC digests */
	uint32_t hash_alg;        /* CBI_HASH_XXH3_128 (1) or CBI_HASH_SHA256_128 (2) */
	int used_only;            /* only the blocks the source's file system used were read;
	                           * the others were recorded as zero blocks */
	int rescue;               /* read with backup --rescue: its index carries a bad-range
	                           * map (format/SPEC.md, "Bad-range map") */
	uint64_t bad_bytes;       /* rescue: source bytes that could not be read (zeros in the
	                           * point, refused by restore without allow_bad) */
	uint64_t bad_ranges;      /* how many ranges they form */
	int merged;               /* its image is a merged one (a prune folded removed points
	                           * into it, format/SPEC.md "Merged points"): parent_id and
	                           * parent_digest are the image's, naming the previous kept
	                           * point, all zero for a synthetic full; the index file is
	                           * the one the backup wrote (same id and index digest) */
	uint32_t first_seq;       /* lowest seq whose blocks this point's image holds: seq, or
	                           * the parent's seq + 1 for a merged point, 0 for a full */
	int broken;               /* cbi_list(), cbi_list_filtered(): a parent of this point
	                           * (or of one of its ancestors) is not in DEST, so the point
	                           * cannot be restored */
	int parent_elsewhere;     /* cbi_list_mark_elsewhere(): broken, but the local state
	                           * vouches that the missing points are elsewhere (an outbox) */
} cbi_point;

/* Block hash algorithms (format/SPEC.md). */
#define CBI_HASH_XXH3_128 1u   /* XXH3-128 of the block (format/SPEC.md) */
#define CBI_HASH_SHA256_128 2u /* SHA-256 of the block, its first 16 bytes */

/* Hex form of an id ("%02x" per byte) into out (33 bytes). */
void cbi_id_hex(const uint8_t id[16], char out[33]);

/* Read the header and trailer of FILE (.cbi or .cbx) without checking the
 * digest. The matching partner file is looked up in the same directory. */
int cbi_point_info(const char *file, cbi_point *out, cbi_error *err) CBI_WUR;

/* Check that FILE starts as a cbimg image or index file does (its header
 * magic; a file shorter than the magic must be a prefix of it), so that a
 * command can tell "not a cbimg file" (a usage error) from a cbimg file that
 * is damaged or truncated. Nothing else is checked. 0 when it does;
 * -CBI_ENOTCBI when it does not (an empty file counts as a truncated cbimg
 * file only when its name ends in .cbi or .cbx); -errno when it cannot be
 * opened or read. A directory or device is -CBI_ENOTCBI too. */
int cbi_probe(const char *file, cbi_error *err) CBI_WUR;

/* Scan directory DEST for complete points (index file with a valid trailer).
 * Sorted as cbi_list_filtered() sorts. *out is owned by the caller: free() it. */
int cbi_list(const char *dest, cbi_point **out, size_t *n, cbi_error *err) CBI_WUR;

/* Which points cbi_list_filtered() and which runs cbi_log() return. Each
 * string is compared exactly; NULL or "" matches anything. */
typedef struct cbi_list_filter {
	const char *host;
	const char *source;       /* the source id or the source path */
	const char *job;
	size_t limit;             /* cbi_log() only: the newest `limit` runs; 0: all */
} cbi_list_filter;

/* The points of DEST that match f (NULL: all), as cbi_list() returns them
 * (cbi_list() is this with no filter). Sorted by host, job and source (the
 * groups), then within each group by creation time, oldest first (newest
 * last, whichever chain it belongs to), then by chain and seq. Served from the catalog
 * DEST/cbimg-catalog.sqlite after a cheap check against the directory: only
 * index and image files whose name, size, mtime or identity (inode) the
 * catalog does not know are opened, rows of vanished files are dropped, a catalog that is missing
 * (in a directory that a backup has written to), corrupt (moved aside to
 * .corrupt) or built for another directory is rebuilt. When there is no
 * catalog to use (read-only DEST, no locking, a directory no backup has
 * written to), DEST is scanned instead; the result is the same either way.
 * *out is owned by the caller: free() it. */
int cbi_list_filtered(const char *dest, const cbi_list_filter *f, cbi_point **out, size_t *n,
		      cbi_error *err) CBI_WUR;

/* ------------------------------------------------------------- selectors */

/* A point chosen by what it is rather than by its file name (restore, info,
 * verify and list take one on the command line). Strings are compared
 * exactly, as cbi_list_filter compares them; NULL or "" matches anything. */
typedef struct cbi_selector {
	const char *host;
	const char *source;       /* the source id or the source path */
	const char *job;
	int64_t at_ns;            /* the newest point created at or before this Unix time in
	                           * nanoseconds (UTC); 0: the newest point of all */
} cbi_selector;

/* Choose one point of directory DEST by s (NULL: the newest point): of the
 * points cbi_list_filtered() returns for s's host, source and job, the
 * newest (by creation time, whichever chain it is in; the last of its
 * group in the listing order) created at or before s->at_ns. The points
 * must all belong to one group (host, job, source id): when several groups
 * match, nothing is chosen and -CBI_EUSAGE says which groups matched
 * ("several jobs in 'DEST' match: host 'a' job 'j' source 's', ...;
 * narrow with --host, --source or --job"), at most the first few and how
 * many more. -CBI_ENOCHAIN when no point matches (none in DEST, none of the
 * group, or none created at or before s->at_ns). On success *out is the
 * point, as cbi_list() describes it (out->index_file is its index file;
 * out->file its image file, "" when missing). */
int cbi_select_point(const char *dest, const cbi_selector *s, cbi_point *out, cbi_error *err) CBI_WUR;

/* Parse a time for cbi_selector.at_ns, into Unix nanoseconds: ISO 8601
 * "YYYY-MM-DDTHH:MM[:SS]" followed by "Z" (UTC) or an offset "+HH:MM",
 * "-HHMM"; the same without a zone, or "YYYY-MM-DD[ HH:MM[:SS]]", in local
 * time (TZ); "@SECONDS" (Unix time). A date alone is its midnight, a time
 * without seconds its :00. The result is the end of the second given
 * (SECONDS * 10^9 + 999999999), so that a point whose time is shown with
 * that second (cbimg list) is at or before it. -CBI_EUSAGE for anything
 * else (naming s and the forms expected). */
int cbi_parse_time(const char *s, int64_t *ns, cbi_error *err) CBI_WUR;

/* ---------------------------------------------------------------- backup */

/* Highest zstd level a backup accepts (-CBI_EUSAGE above it): zstd's levels
 * 20 to 22 ("--ultra") take compression contexts far larger than the memory
 * bound of a run allows (cbimg-backup(1), --threads). */
#define CBI_MAX_LEVEL 19

/* How a backup gets a consistent image of a source in use (cbimg-backup(1),
 * "SNAPSHOTS"). */
enum {
	CBI_SNAP_AUTO = 0, /* trace where usable, else freeze, else reflink (files), else refuse;
	                    * none for a source that is not mounted read-write */
	CBI_SNAP_NONE,     /* read as it is */
	CBI_SNAP_TRACE,    /* record writes during the read, freeze, re-read what changed */
	CBI_SNAP_FREEZE,   /* freeze the file system for the whole read */
	CBI_SNAP_REFLINK,  /* an image file: read a clone (FICLONE) of it */
	CBI_SNAP_EXEC,     /* read what snapshot_cmd prints */
};

typedef struct cbi_backup_opts {
	const char *source;       /* block device or raw image file */
	const char *dest;         /* directory */
	const char *job;          /* NULL -> "default" */
	const char *host;         /* NULL -> gethostname() */
	const char *source_id;    /* NULL -> derived from the device */
	int force_full;           /* start a new chain */
	uint32_t block_size;      /* 0 -> CBI_DEFAULT_BLOCK_SIZE; new chains only */
	int level;                /* zstd level 1 to CBI_MAX_LEVEL; 0 -> 3, CBI_INCR_LEVEL for an incremental */
	int threads;              /* worker threads; 0 -> number of CPUs; at most 16, and fewer
	                           * for large blocks, so that memory stays bounded */
	const char *state_dir;    /* NULL -> /var/lib/cbimg: a copy of each job's newest index */
	int no_state;             /* neither read nor write the local state */
	int outbox;               /* DEST is an outbox: when it holds no chain of the job,
	                           * continue the local state's chain (an incremental whose
	                           * parents are elsewhere, for a remote site seeded with the
	                           * full). Without it, a DEST that holds no chain of the job
	                           * gets a new chain (a full), whatever the state holds.
	                           * Refused (-CBI_EUSAGE) with force_full or no_state;
	                           * -CBI_ENOCHAIN when there is no state to continue. */
	uint64_t split;           /* store image and index files as segments of this many
	                           * bytes (a whole number of MiB, at least 1 MiB), for
	                           * file systems that limit file sizes. 0 -> automatic:
	                           * CBI_FAT_SPLIT on a FAT file system, else no segments;
	                           * CBI_SPLIT_NONE -> never. */
	int encrypt;              /* new chains: encrypt (format/SPEC.md, "Encryption") */
	uint32_t hash_alg;        /* new chains: CBI_HASH_XXH3_128 (0: default) or CBI_HASH_SHA256_128 */
	cbi_kdf_params kdf;       /* new encrypted chains: scrypt cost of the key file */
	int used_only;            /* read only the blocks that the file system on the source
	                           * (ext2, ext3, ext4 at its start) uses, from its block
	                           * bitmaps; the others are recorded as zero blocks, whatever
	                           * they hold, and restore as zeros (format/SPEC.md, "Used
	                           * blocks only"). Per point. Refused (-CBI_EMOUNTED) for a
	                           * source mounted read-write, whose bitmaps change under the
	                           * backup, and (-ENOTSUP) for a file system this library
	                           * does not fully understand: it never guesses. */
	int no_space_check;       /* skip the free-space preflight: by default a point is
	                           * refused (-ENOSPC) before anything is written when DEST's
	                           * free space is clearly below the estimate of its size
	                           * (cbimg-backup(1), "FREE SPACE") */
	cbi_pass_fn pass;         /* passphrase of an encrypted chain (asked with confirm
	                           * = 1 for a new one); NULL: none available */
	void *pass_ud;
	const char *dest_uuid;    /* refuse (-CBI_EUSAGE) unless DEST's file system has this UUID
	                           * (compared without regard to case). NULL: DEST is checked
	                           * against fstab, the usual mount places and the file system
	                           * the job wrote to last time (cbimg-backup(1), --dest-uuid) */
	/* Consistency of a live source (issue 13, cbimg-backup(1), "SNAPSHOTS"): */
	int snapshot;             /* CBI_SNAP_AUTO (0), _NONE, _TRACE, _FREEZE, _REFLINK, _EXEC */
	int allow_inconsistent;   /* _NONE on a source mounted read-write: read it anyway, then
	                           * re-read it and count the blocks that changed meanwhile
	                           * (a warning: the CLI exits 5) */
	uint32_t freeze_timeout_ms; /* longest freeze (0: 60 s); past it the guardian thaws and
	                           * the backup fails */
	const char *snapshot_cmd; /* _EXEC: prints the device or file to read */
	const char *snapshot_cleanup; /* _EXEC: removes it (every exit path), may be NULL */
	uint32_t trace_buf_kib;   /* _TRACE: per-CPU trace buffer in KiB (0: the tracer's default) */
	cbi_progress_fn progress;
	void *progress_ud;
	int rescue;               /* a source range that fails to read (a bad sector) is read
	                           * again in halves down to the logical sector size, and what
	                           * still fails is recorded in the point as a bad range (its
	                           * bytes are zeros in the blocks stored, format/SPEC.md
	                           * "Bad-range map"), not a failure. Without it a read error
	                           * fails the backup (-CBI_EREAD) and nothing is written */
	unsigned retries;         /* rescue: extra reads of a failing sector; 0 -> none */
} cbi_backup_opts;

/* Segment size used on FAT (whose files hold at most 4 GiB - 1 byte): 4095 MiB,
 * the largest whole number of MiB below that limit. */
#define CBI_FAT_SPLIT (4095ull << 20)
#define CBI_SPLIT_NONE UINT64_MAX

#define CBI_DEFAULT_BLOCK_SIZE (256u * 1024u)
/* zstd level of an incremental's records when none is asked for. */
#define CBI_INCR_LEVEL 1
#define CBI_MIN_BLOCK_SIZE (4u * 1024u)
#define CBI_MAX_BLOCK_SIZE (4u * 1024u * 1024u)

/* Warnings a backup keeps in its result's list. One run gives at most eight
 * (a live source read without a snapshot, or a trace that lost events; a
 * snapshot cleanup that failed; catalog unusable at the start and at the
 * end; --block-size and --hash ignored; local state not updated; bad
 * ranges). */
#define CBI_MAX_WARNINGS 8

typedef struct cbi_backup_result {
	cbi_point point;          /* the point written */
	uint64_t blocks_total;
	uint64_t blocks_read;     /* blocks whose bytes were read (holes skipped) */
	uint64_t blocks_changed;
	uint64_t blocks_zero;
	uint64_t blocks_unused;   /* used_only: blocks the file system did not use (not read;
	                           * counted in blocks_zero too) */
	uint64_t blocks_stored;
	uint64_t bytes_read;
	uint64_t bytes_written;   /* image + index bytes */
	double seconds;
	char warning[512];        /* the warnings below joined with "; " (cut at 511 bytes), "" if
	                           * none; kept for older callers: prefer the list */
	char warnings[CBI_MAX_WARNINGS][512]; /* non-fatal notes for the user, one line each, in
	                           * the order they arose */
	unsigned n_warnings;      /* how many of warnings[] are set (at most CBI_MAX_WARNINGS;
	                           * later ones are only in the joined string) */
	char dest_fs[32];         /* file system of DEST as detected: "fat" (FAT12/16/32,
	                           * any driver), "exfat", else the type the kernel
	                           * reports ("ext4", "fuse.sshfs", ...), "" if unknown */
	char notice[1024];        /* which chain state was used when DEST and the local
	                           * state differ, "" if they agree */
	int from_state;           /* the parent index came from the local state */
	char key_file[4096];      /* encrypted chain: its key file in DEST, "" otherwise */
	int key_file_new;         /* key_file was written by this run */
	int rescue;               /* written with rescue: the point carries a bad-range map */
	uint64_t bad_bytes;       /* rescue: bytes that could not be read (zeros in the point) */
	uint64_t bad_ranges;      /* how many separate ranges they form */
	uint64_t failed_reads;    /* reads that failed and were split or retried */
	uint64_t retry_reads;     /* reads made after those failures (pieces and retries) */
	uint64_t rescued_bytes;   /* bytes read by them, so not lost */
	char snapshot[16];        /* the snapshot mode used: "none", "trace", "freeze", "reflink", "exec" */
	double freeze_ms;         /* how long the source's file system was frozen (0: never) */
	uint64_t blocks_reread;   /* trace: blocks re-read under the freeze (written during the read,
	                           * or all of them after a lost trace event) */
	int trace_incomplete;     /* trace: an event was lost; every block was re-read frozen */
	int64_t blocks_changed_during_read; /* allow_inconsistent: blocks whose second read differed
	                           * from the first (-1: not checked) */
	uint64_t bytes_sent;      /* S3 DEST: request bytes sent (uploads), 0 otherwise */
	uint64_t bytes_received;  /* S3 DEST: response bytes received */
} cbi_backup_result;

/* Write one point of o->source into o->dest: an incremental of the job's
 * chain, or a full that starts a new one (see cbimg-backup(1) for how the
 * chain is chosen and when a backup is refused). r is filled on success;
 * warnings (the run went on) are in r->warnings, a notice about the chain
 * chosen in r->notice. On failure no new point exists and a new chain's key
 * file is removed, with one exception: when only the sync of DEST's
 * directory after the point's commit failed, the point is kept whole (it
 * restores, and `list` shows it; a power loss may lose it), r->point
 * describes it, and the local state is not moved to it. */
int cbi_backup(const cbi_backup_opts *o, cbi_backup_result *r, cbi_error *err) CBI_WUR;

/* --------------------------------------------------------------- catalog */

/* The catalog (format/SPEC.md, "The catalog") is a cache in DEST of what
 * the files say, plus the history of backup runs, which no file holds. */

enum cbi_run_result {
	CBI_RUN_RUNNING = 0,      /* started; no end recorded (yet) */
	CBI_RUN_OK,
	CBI_RUN_FAILED,
	CBI_RUN_INTERRUPTED,      /* cancelled, or its process ended without a result */
};

enum cbi_run_kind {
	CBI_RUN_BACKUP = 0,       /* a backup: bytes read from the source, written to DEST */
	CBI_RUN_PRUNE,            /* a prune (cbimg-prune(1)): bytes read from and written to
	                           * DEST for merged images, points removed */
};

/* One backup or prune run, failed ones included. */
typedef struct cbi_run {
	int64_t id;               /* increasing in the order runs started */
	char host[64];
	char source_id[128];
	char source_path[64];
	char job[64];
	int64_t started_ns;       /* Unix time, nanoseconds, UTC */
	int64_t ended_ns;         /* 0 when no end was recorded */
	int result;               /* enum cbi_run_result */
	char message[512];        /* error of a failed run, warning of an ok one, or "" */
	uint64_t bytes_read;
	uint64_t bytes_written;
	int type;                 /* enum cbi_point_type of the point written, 0 if none */
	uint8_t point_id[16];     /* all zero if no point was written */
	char file[256];           /* image file name of that point (no directory), or "" */
	char index_file[256];     /* index file name of that point, or "" */
	int kind;                 /* enum cbi_run_kind */
	uint32_t points_removed;  /* a prune: the points it removed */
} cbi_run;

/* "running", "ok", "failed", "interrupted"; "unknown" for other values. */
const char *cbi_run_result_name(int result);

/* The runs recorded in DEST's catalog that match f (NULL: all), oldest
 * first; with f->limit, only the newest f->limit of them. No catalog: 0
 * runs. *out is owned by the caller: free() it. */
int cbi_log(const char *dest, const cbi_list_filter *f, cbi_run **out, size_t *n,
	    cbi_error *err) CBI_WUR;

/* Mark the points of a listing of dest (pts from cbi_list_filtered()) that
 * continue a chain whose earlier points are elsewhere, as in an outbox
 * (cbimg-list(1), "Parent elsewhere"): parent_elsewhere = 1 on a broken
 * point when the local state of its job (state_dir; NULL: /var/lib/cbimg)
 * holds an intact index of its chain from which the parent links lead,
 * through dest's points, down to it, and the first point missing below is
 * not one that dest's run log records a backup making into dest (a full
 * moved away from a backup disk stays damage). Such points are still not
 * restorable from dest alone. 0, or an error of the run log or -ENOMEM; a
 * missing, unreadable or damaged state vouches for nothing (no error). */
int cbi_list_mark_elsewhere(const char *dest, const char *state_dir, cbi_point *pts, size_t n,
			    cbi_error *err) CBI_WUR;

/* Rebuild the points of DEST's catalog from the files (every index and image
 * file is read again), creating the catalog if needed. The run history is
 * kept: no file holds it. */
int cbi_catalog_rebuild(const char *dest, cbi_error *err) CBI_WUR;

/* --------------------------------------------------------------- restore */

typedef struct cbi_restore_opts {
	const char *point;        /* any .cbi or .cbx file of the chain */
	const char *target;       /* block device or file */
	int force;                /* allow overwriting an existing file or a device, and replacing
	                           * a file that appears at a new target's name meanwhile */
	int changed_only;         /* read target, write only blocks that differ */
	int threads;              /* worker threads that read, authenticate, decompress and
	                           * check blocks (and for changed_only read and hash the
	                           * target's); 0 -> number of CPUs; at most 16, fewer for
	                           * large blocks (memory stays bounded). The calling thread
	                           * writes, in block order, and calls progress. */
	int no_space_check;       /* skip the free-space preflight: by default a point is
	                           * refused (-ENOSPC) before anything is written when DEST's
	                           * free space is clearly below the estimate of its size
	                           * (cbimg-backup(1), "FREE SPACE") */
	cbi_pass_fn pass;         /* passphrase of an encrypted chain; NULL: none */
	void *pass_ud;
	const char *state_dir;    /* where to look for a key file copy too; NULL: /var/lib/cbimg */
	cbi_progress_fn progress;
	void *progress_ud;
	unsigned partition;       /* 0: the whole disk; N: only partition N of the point's
	                           * partition table (cbi_pointrd_map()), whose size TARGET
	                           * then gets; -ENOENT when the point has no partition N */
	int allow_bad;            /* a point with bad ranges (backup --rescue): write them as
	                           * zeros (the result counts them). Without it such a point
	                           * is refused, -CBI_EBADRANGES naming the ranges, before
	                           * anything is written (a partition: its reads that meet a
	                           * bad range fail with -EIO) */
} cbi_restore_opts;

typedef struct cbi_restore_result {
	uint64_t blocks_total;
	uint64_t blocks_written;
	uint64_t blocks_skipped;  /* already equal (changed-only) or holes */
	uint64_t bytes_written;
	double seconds;
	uint64_t bad_bytes;       /* allow_bad: bytes of bad ranges written as zeros */
	uint64_t bad_ranges;      /* and how many ranges */
} cbi_restore_result;

int cbi_restore(const cbi_restore_opts *o, cbi_restore_result *r, cbi_error *err) CBI_WUR;

/* ---------------------------------------------------------- point reader */

/* Random access to the disk as it was at a point, for front ends that show
 * it (cbimg mount, the nbdkit plugin) and for restoring a part of it. Each
 * block is taken from the point that holds its newest copy (the point's
 * index names it), decompressed, for encrypted chains authenticated, and
 * checked against the index's hash before a byte of it is returned: a block
 * that fails makes the read that covers it fail (never wrong bytes), reads
 * elsewhere go on. Decompressed blocks are kept in a bounded cache. */
typedef struct cbi_pointrd cbi_pointrd;

/* Cache of decompressed blocks when none is given: 64 MiB. */
#define CBI_POINTRD_CACHE (64ull << 20)

typedef struct cbi_pointrd_opts {
	const char *point;        /* any .cbi or .cbx file of the point */
	cbi_pass_fn pass;         /* passphrase of an encrypted chain; NULL: none */
	void *pass_ud;
	const char *state_dir;    /* where to look for a key file copy too; NULL: /var/lib/cbimg */
	uint64_t cache_bytes;     /* decompressed blocks kept (at least 4 blocks); 0: CBI_POINTRD_CACHE */
	int lock;                 /* protect the chain from prune while open: a shared lock
	                           * on its byte of the lock file in the point's directory
	                           * (format/SPEC.md, "Lock file"); -CBI_ELOCKED when a prune
	                           * holds it */
	/* Called (from the reading thread, possibly several at once) once for
	 * every read that fails on a block, with a one-line message naming the
	 * file and the block; NULL: none. */
	void (*log)(void *ud, const char *msg);
	void *log_ud;
	int allow_bad;            /* a point with bad ranges (backup --rescue): read them as
	                           * zeros; without it a read that meets one fails with -EIO */
} cbi_pointrd_opts;

/* Open the point of o->point through its chain (opened, unlocked and
 * checked as restore does: the codes of cbi_restore()). *out is the
 * caller's: cbi_pointrd_close(). */
int cbi_pointrd_open(const cbi_pointrd_opts *o, cbi_pointrd **out, cbi_error *err) CBI_WUR;

/* Size of the disk in bytes, and what the point's files say about it. */
uint64_t cbi_pointrd_size(const cbi_pointrd *r);
const cbi_point *cbi_pointrd_point(const cbi_pointrd *r);

/* Read up to len bytes at byte off into buf, as pread(2) does: the number
 * of bytes read (fewer only at the end of the disk, 0 beyond it), or a
 * negative code with err filled when a block of the range cannot be read
 * intact (-CBI_EDAMAGED, -CBI_EAUTH, -CBI_ENOPARENT, -errno): then nothing in
 * buf is to be used. Thread-safe: any number of threads may read at once. */
/* A read that meets a bad range of the point (bytes its backup could not
 * read from the source, format/SPEC.md "Bad-range map") fails with -EIO,
 * unless the reader was opened with allow_bad. */
int64_t cbi_pointrd_pread(cbi_pointrd *r, void *buf, size_t len, uint64_t off, cbi_error *err) CBI_WUR;

typedef struct cbi_pointrd_stats {
	uint64_t reads;           /* cbi_pointrd_pread() calls */
	uint64_t hits;            /* stored blocks served from the cache */
	uint64_t misses;          /* stored blocks read from the image files */
	uint64_t zero_blocks;     /* zero blocks served (never stored, never cached) */
	uint64_t failures;        /* block reads that failed */
	uint64_t cache_blocks;    /* blocks in the cache now */
	uint64_t cache_max;       /* most blocks it holds */
} cbi_pointrd_stats;

void cbi_pointrd_stats_get(cbi_pointrd *r, cbi_pointrd_stats *s);

void cbi_pointrd_close(cbi_pointrd *r);

/* A partition of the disk, from its partition table. */
typedef struct cbi_part {
	unsigned number;          /* as the table numbers it: 1, 2, ... (MBR logical: 5, ...) */
	uint64_t offset;          /* bytes from the start of the disk */
	uint64_t size;            /* bytes */
	char fstype[32];          /* file system found in it ("ext4", "xfs", "vfat", ...), "" if none */
	char uuid[40];            /* of that file system, "" if none */
} cbi_part;

#define CBI_MAX_PARTS 128

/* What libblkid finds on the disk of a point: a partition table and its
 * partitions (MBR extended partitions are containers: left out), or a file
 * system on the whole disk (which wins over an MBR: the boot sector of FAT
 * and exFAT also reads as one). */
typedef struct cbi_disk_map {
	char pttype[16];          /* "gpt", "dos", ... ; "" when there is no partition table */
	char fstype[32];          /* no table: file system on the whole disk, "" if none */
	size_t nparts;
	cbi_part parts[CBI_MAX_PARTS];
} cbi_disk_map;

/* Probe the disk of r (through r: only the sectors the probe needs are
 * read). 0 (also when nothing is found), or a negative code when a block
 * the probe needs cannot be read. */
int cbi_pointrd_map(cbi_pointrd *r, cbi_disk_map *m, cbi_error *err) CBI_WUR;

/* ---------------------------------------------------------------- verify */

/* One finding of verify: file, optional block number (-1 if none), reason. */
typedef void (*cbi_verify_fn)(void *ud, const char *file, int64_t block, const char *problem);

typedef struct cbi_verify_result {
	uint64_t files_checked;
	uint64_t points_checked;
	uint64_t blocks_checked;
	uint64_t problems;
	uint64_t behind;          /* chains that are behind the local state (not damage: a seed
	                           * disk, points that went to an outbox or another disk), each
	                           * reported through the note callback */
	uint64_t bytes_checked;   /* bytes read from the files: the progress callback's unit */
	uint64_t bad_points;      /* points with bad ranges (backup --rescue): known-bad bytes, not
	                           * damage, each reported through the note callback */
	uint64_t bad_bytes;       /* their bad ranges' bytes, all points together */
	uint64_t duplicates;      /* second copies of a point's files (format/SPEC.md, "Finding
	                           * the files", step 5): not damage, each a note; a warning */
	uint64_t nokey;           /* encrypted chains without any key file (class NOKEY): not
	                           * checked, each a note; -CBI_ENOKEY when nothing else is wrong */
} cbi_verify_result;

typedef struct cbi_verify_opts {
	cbi_verify_fn fn;         /* each problem found; NULL: only counted */
	void *ud;
	cbi_verify_fn note;       /* each note (not a problem: a chain behind the local state);
	                           * called with ud; NULL: none */
	cbi_progress_fn progress; /* bytes read from the files so far, of the whole run's
	                           * (every point's index file, and its image file twice: its
	                           * digest, then its records) */
	void *progress_ud;
	cbi_pass_fn pass;         /* passphrase of encrypted chains; NULL: none */
	void *pass_ud;
	const char *state_dir;    /* local state to compare with (rollback) and to take
	                           * key file copies from; NULL: /var/lib/cbimg */
	int no_state;             /* do neither */
} cbi_verify_opts;

/* PATH: an image or index file (it and all its ancestors are checked) or a
 * directory (every chain in it). Encrypted chains are unlocked through
 * o->pass (once per chain); their digests are then MACs and every record is
 * authenticated. The newest point of each chain is compared with the local
 * state, read before PATH's directory is scanned (so that a backup that
 * commits meanwhile is not taken for a rollback): a state that records
 * another point at a seq the chain has, or a newer point that does not
 * continue the chain, is a problem (a fork, a point replaced); a state that
 * is newer and continues the chain is a note (r->behind: the chain is
 * behind the state, as a seed disk is). Returns 0 when everything is intact,
 * -CBI_EDAMAGED when any problem was reported through fn, -CBI_EPASS when an
 * encrypted chain could not be unlocked, or another error when verification
 * could not run at all. */
int cbi_verify(const char *path, const cbi_verify_opts *o, cbi_verify_result *r, cbi_error *err) CBI_WUR;

/* ----------------------------------------------------------------- prune */

/* Keep rules of a prune, restic's semantics (cbimg-prune(1)). Each count
 * keeps the newest point of each of the N most recent periods that hold
 * points (hours, days, ISO weeks, months, years, in local time); last keeps
 * the N newest points; within keeps every point created less than within_ns
 * before the group's newest point; chains keeps every point of the N chains
 * whose newest points are the most recent. A point is kept when any rule
 * keeps it; the newest point of the group always is. */
typedef struct cbi_keep_rules {
	unsigned last, hourly, daily, weekly, monthly, yearly;
	int64_t within_ns;        /* 0: no such rule */
	unsigned chains;
} cbi_keep_rules;

/* Why a point is kept (cbi_prune_item.why), one bit per rule. */
enum {
	CBI_KEEP_LAST = 1, CBI_KEEP_HOURLY = 2, CBI_KEEP_DAILY = 4, CBI_KEEP_WEEKLY = 8,
	CBI_KEEP_MONTHLY = 16, CBI_KEEP_YEARLY = 32, CBI_KEEP_WITHIN = 64, CBI_KEEP_CHAINS = 128,
	CBI_KEEP_NEWEST = 256,
};

/* Which points of one group the rules keep: why[i] receives the bits of the
 * rules that keep pts[i] (0: removed). pts: the points of one host, job and
 * source, in any order. A pure function (no files, no clock); 0, or
 * -CBI_EUSAGE when r has no rule, -ENOMEM. */
int cbi_prune_select(const cbi_point *pts, size_t n, const cbi_keep_rules *r, unsigned *why) CBI_WUR;

typedef struct cbi_prune_opts {
	const char *dest;
	const char *host;         /* selectors (NULL or "": any); together they must match one
	                           * group (host, job, source) of DEST, else -CBI_EUSAGE */
	const char *source;       /* source id or source path */
	const char *job;
	cbi_keep_rules keep;
	int dry_run;              /* decide and report, change nothing, take no lock */
	cbi_pass_fn pass;         /* passphrase of an encrypted chain, asked only when records
	                           * must be re-encrypted into a merged image */
	void *pass_ud;
	const char *state_dir;    /* key file copies; NULL: /var/lib/cbimg */
	int no_state;
	cbi_progress_fn progress; /* NULL, or called as the merged images are written: done and
	                           * total in bytes of blocks (uncompressed) copied into them,
	                           * total known from the indexes before the first write, and a
	                           * last call with done == total; nonzero from it stops the
	                           * prune (-ECANCELED) with every point restorable */
	void *progress_ud;
} cbi_prune_opts;

enum cbi_prune_action {
	CBI_PRUNE_KEEP = 1,       /* kept as it is */
	CBI_PRUNE_MERGE,          /* kept; gets a merged image holding removed points' blocks */
	CBI_PRUNE_SYNTH_FULL,     /* kept; its merged image holds every block (the full rolls
	                           * forward) */
	CBI_PRUNE_REMOVE,         /* removed; its blocks still needed went to a kept point */
};

typedef struct cbi_prune_item {
	cbi_point point;          /* as it was before the prune */
	unsigned why;             /* CBI_KEEP_* bits; 0 for a removed point */
	int action;               /* enum cbi_prune_action */
} cbi_prune_item;

#define CBI_PRUNE_MAX_NOTES 8

typedef struct cbi_prune_result {
	cbi_prune_item *items;    /* the group's points, oldest first; cbi_prune_result_free() */
	size_t n;
	size_t kept, removed, merged; /* merged: merged images written */
	uint64_t bytes_removed;   /* sizes of the files removed (index, images) */
	uint64_t bytes_written;   /* sizes of the merged images written */
	uint64_t bytes_read;      /* records read from the chain's images for the merges */
	uint64_t bytes_sent;      /* an s3:// DEST (cbi_objstore_prune): request bodies sent */
	uint64_t bytes_received;  /* ... and response bodies received */
	char notes[CBI_PRUNE_MAX_NOTES][512]; /* an interrupted prune finished, points left alone */
	unsigned n_notes;
	double seconds;
} cbi_prune_result;

/* Remove the points of one group of o->dest that the keep rules do not
 * keep (format/SPEC.md, "Merged points"). A removed point whose later point
 * is kept is folded into the next kept point: a new image of that point
 * holds its own records plus every record whose block's newest copy lay in
 * the removed points, copied as stored (records of an encrypted chain
 * re-sealed under the kept point's key, never recompressed), and names the
 * previous kept point as its parent, none when the full was removed (a
 * synthetic full). The kept point keeps its index file, id and index
 * digest. Nothing is changed in place: new images are renamed in and the
 * directory synced before anything is removed, so that every point restores
 * at any moment; a prune interrupted before it removed all it meant to is
 * finished by the next prune (r->notes). Holds the job's lock
 * (-CBI_ELOCKED). -CBI_EUSAGE: no rule, or the selectors match several
 * groups; -CBI_ENOCHAIN: none. r is filled on success (and with what was
 * done before a failure). */
int cbi_prune(const cbi_prune_opts *o, cbi_prune_result *r, cbi_error *err) CBI_WUR;
void cbi_prune_result_free(cbi_prune_result *r);

/* ---------------------------------------------------------------- passwd */

typedef struct cbi_passwd_opts {
	const char *path;         /* a key file (.cbk), or any .cbi/.cbx file of the chain */
	cbi_pass_fn pass;         /* the current passphrase */
	void *pass_ud;
	cbi_pass_fn new_pass;     /* the new one (asked with confirm = 1) */
	void *new_pass_ud;
	cbi_kdf_params kdf;       /* scrypt cost of the new wrapping (zeros: defaults) */
	const char *state_dir;    /* also rewrap the local state's copies; NULL: /var/lib/cbimg */
	int no_state;
} cbi_passwd_opts;

typedef struct cbi_passwd_result {
	unsigned rewrapped;       /* key files rewritten */
	unsigned skipped;         /* key files of the chain the current passphrase did not open */
	char first[4096];         /* the first key file rewritten */
} cbi_passwd_result;

/* Change the passphrase of an encrypted chain: every key file of the chain
 * in PATH's directory (and in the local state) that the current passphrase
 * opens is rewritten with the same data key under the new passphrase, fresh
 * salt and nonce, through a temporary name. No image or index file changes.
 * -CBI_ENOKEY: no key file; -CBI_EPASS: the current passphrase opens none. */
int cbi_passwd(const cbi_passwd_opts *o, cbi_passwd_result *r, cbi_error *err) CBI_WUR;

#ifdef __cplusplus
}
#endif
/* --------------------------------------------------------- object storage */

/* DEST on S3-compatible object storage, "s3://BUCKET[/PREFIX]" (README.md,
 * "Object storage"; format/SPEC.md, "Object storage"). The endpoint is
 * endpoint (NULL: $S3_ENDPOINT, else $AWS_ENDPOINT_URL, else AWS), the
 * credentials $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY or the profile
 * $AWS_PROFILE of ~/.aws/credentials. Errors: -EACCES (no or bad
 * credentials), -ENOENT (no such bucket), -EHOSTUNREACH (endpoint
 * unreachable), -CBI_ELOCKED (the job's lock object is held), -EIO. */

/* Is dest an s3:// URL? */
int cbi_objstore_is_url(const char *dest);

/* cbi_backup() into o->dest = "s3://...": the point is written in a
 * staging directory under the state directory, then uploaded (key file,
 * image as a multipart upload, and last the index, created only if
 * absent: the commit). Under the job's lock object; first aborts the
 * multipart uploads a killed run of the job left. On failure nothing of the
 * point stays, in the bucket or locally, and the local state is as before.
 * r->point.file and index_file are s3:// URLs. */
int cbi_objstore_backup(const cbi_backup_opts *o, const char *endpoint, cbi_backup_result *r, cbi_error *err);

/* A local directory (in dir) that holds the bucket's indexes and key files
 * (a cache under STATE_DIR/s3/, with its catalog), for list and info; with
 * images, a directory of this run that also holds stand-ins for every
 * image, whose reads (in this process) become parallel ranged GETs of
 * only what is read (objview.h), for restore, verify and mount: end it
 * with cbi_objstore_view_end() once every reader is closed (point_name is
 * unused). */
int cbi_objstore_view(const char *url, const char *endpoint, const char *state_dir, int images,
		      const char *point_name, char *dir, size_t dirsz, cbi_error *err);
void cbi_objstore_view_end(const char *dir);

/* How many multipart uploads are unfinished under url's prefix (a backup
 * running, or one killed: the job's next run aborts its own), for verify
 * to report. */
int cbi_objstore_uploads(const char *url, const char *endpoint, const char *state_dir, size_t *n,
			 cbi_error *err);

/* cbi_prune() on o->dest = "s3://...": the same keep rules, selectors,
 * plan and guarantees (README.md, "Object storage"; format/SPEC.md,
 * "Pruning on object storage"). Under the job's lock object; first
 * aborts the multipart uploads a killed run of the job left. Objects are
 * only created (merged images, each under a name of its own) before any
 * is deleted; a prune killed at any moment leaves every point that list
 * shows restorable, and the next prune of the job finishes what it left.
 * Of the images a merge reads only the records it needs are fetched
 * (ranged GETs). r as cbi_prune()'s, with s3:// URLs for the points'
 * files, and bytes_sent and bytes_received. */
int cbi_objstore_prune(const cbi_prune_opts *o, const char *endpoint, cbi_prune_result *r, cbi_error *err);
/* The runs of backups into url recorded on this machine: the run logs of
 * the staging directories of the jobs that backed up there with this state
 * directory (STATE_DIR/s3/HASH/job-KEY/, README.md "Object storage"),
 * merged, oldest first; with f->limit, the newest f->limit. The bucket
 * holds no run log: runs made on other machines are in their own state
 * directories (their points are in cbi_objstore_view()'s listing). No
 * request is made. *out is the caller's: free() it. */
int cbi_objstore_log(const char *url, const char *endpoint, const char *state_dir, const cbi_list_filter *f,
		     cbi_run **out, size_t *n, cbi_error *err) CBI_WUR;

/* cbi_objstore_view() without images, made anew: the cache emptied, every
 * index, key file and image end fetched again after a LIST, and the
 * catalog of the cache (dir) rebuilt. */
int cbi_objstore_rebuild(const char *url, const char *endpoint, const char *state_dir, char *dir, size_t dirsz,
			 cbi_error *err) CBI_WUR;

/* Every "from" in s (a string in a buffer of sz bytes, at most 4096)
 * replaced by "to", cut to fit: messages name the bucket's objects, not the
 * local directories that stand for them (a view, a staging directory). */
void cbi_objstore_subst(char *s, size_t sz, const char *from, const char *to);

/* The ranged GETs the current view (restore, verify, mount) has made so far
 * and the bytes they fetched (zeros without a view). */
void cbi_objstore_read_stats(uint64_t *gets, uint64_t *bytes);

#endif
