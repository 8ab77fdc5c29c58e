/* dest.h - the one scanner of a destination directory (DEST). It reads the
 * directory once and classifies every entry by its name: a point file
 * (image or index: which one is found by reading it, never by its name,
 * format/SPEC.md), a key file, segment N of a point file, a temporary file,
 * a lock file, the catalog, or a foreign file. On request it reads what the
 * point files and key files say, opening each file once.
 *
 * Every loop over a DEST-like directory in the library goes through here:
 * the point scan (cbi_chain_scan), the chain reader, unlocking, verify's
 * check of stray files, the catalog's cheap check, the local state. */
#ifndef CBI_DEST_H
#define CBI_DEST_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"
#include "keyfile.h"

/* The catalog's file in DEST (catalog.h), its rollback journal, and the
 * names a corrupt one is moved aside to. */
#define CBI_CATALOG_NAME "cbimg-catalog.sqlite"

enum cbi_dent_kind {
	CBI_DENT_FOREIGN = 0, /* not cbimg's: left alone */
	CBI_DENT_POINT,       /* NAME.cbi or NAME.cbx, NAME not starting with '.' */
	CBI_DENT_KEY,         /* NAME.cbk, NAME not starting with '.' */
	CBI_DENT_SEGMENT,     /* POINTNAME.NNN: segment NNN of the point file POINTNAME */
	CBI_DENT_TEMP,        /* .NAME.tmp: a file being written (or a killed run's) */
	CBI_DENT_LOCK,        /* .cbimg.lock, or an old .cbimg-<16 hex digits>.lock (job.h) */
	CBI_DENT_CATALOG,     /* cbimg-catalog.sqlite[-journal], or one moved aside (.corrupt);
	                       * the run log cbimg-log.jsonl (runlog.h) */
};

/* What a point file says (CBI_DEST_READ). */
typedef struct cbi_dent_point {
	int rc;                /* 0: it reads as an image or index file (header, trailer,
	                        * segments); else why not, with the message in msg */
	char msg[512];
	int kind;              /* CBI_KIND_INDEX or CBI_KIND_IMAGE: what its header says
	                        * (also when rc != 0, if the header itself is valid); 0 */
	uint32_t nseg;         /* rc == 0: the segments it was read from (1: one file) */
	cbi_point p;           /* rc == 0: as cbi_point_read_file() fills it; rc != 0 and
	                        * kind != 0: the header's fields */
} cbi_dent_point;

/* What a key file says (CBI_DEST_KEYS). */
typedef struct cbi_dent_key {
	int rc;                /* 0: a key file (then kf); else why not */
	char msg[512];
	cbi_keyfile kf;
} cbi_dent_key;

typedef struct cbi_dent {
	char *name;            /* the entry's name, without directory */
	int kind;              /* enum cbi_dent_kind */
	size_t base_len;       /* CBI_DENT_SEGMENT: length of the point file's name */
	uint64_t seg;          /* CBI_DENT_SEGMENT: its number NNN */
	int has_stat;          /* CBI_DEST_STAT: size, mtime_ns and ino are set */
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino;          /* inode number (the catalog's file identity, catalog.c) */
	cbi_dent_point *pt;    /* CBI_DEST_READ, CBI_DENT_POINT: what it says */
	cbi_dent_key *key;     /* CBI_DEST_KEYS, CBI_DENT_KEY: what it says */
} cbi_dent;

/* What a scan does besides classifying names. */
enum {
	CBI_DEST_STAT = 1,     /* stat every point file and segment (no file is opened) */
	CBI_DEST_READ = 2,     /* read every point file: header and trailer, once */
	CBI_DEST_KEYS = 4,     /* read every key file */
};

typedef struct cbi_dest {
	char dir[4096];
	cbi_dent *e;           /* sorted by name */
	size_t n;
} cbi_dest;

/* Scan directory dir (flags: CBI_DEST_*). Unreadable or damaged files are
 * entries too (their rc says why); only a directory that cannot be read
 * fails the scan (-ENOENT, -ENOTDIR, ... with err filled), unless flags has
 * CBI_DEST_MISSING_OK, which makes a missing directory an empty scan.
 * *out is released with cbi_dest_free(). */
#define CBI_DEST_MISSING_OK 8
int cbi_dest_scan(const char *dir, unsigned flags, cbi_dest **out, cbi_error *err) CBI_WUR;
void cbi_dest_free(cbi_dest *d);

/* dir/name of entry e into out: 0 or -ENAMETOOLONG. */
int cbi_dest_path(const cbi_dest *d, const cbi_dent *e, char *out, size_t outsz) CBI_WUR;

/* The entry named name, or NULL. */
const cbi_dent *cbi_dest_find(const cbi_dest *d, const char *name);

/* The complete points of a scan made with CBI_DEST_READ: every index file
 * that reads as one, paired with its image (cbi_chain_pair()), sorted by
 * host, job, source, chain, seq. *out is malloc'ed. 0 or -ENOMEM. */
int cbi_dest_points(const cbi_dest *d, cbi_point **out, size_t *n, cbi_error *err) CBI_WUR;

/* Classify one name (what cbi_dest_scan() does for each entry): the kind,
 * and for a segment its base length and number. */
int cbi_dest_classify(const char *name, size_t *base_len, uint64_t *seg);

/* Could directory entry name be a point file: a .cbx or .cbi name that does
 * not start with '.' (temporary and lock files do)? */
int cbi_chain_is_point_name(const char *name);

/* All complete points of directory dir (index file present and structurally
 * valid; image matched by point id and index digest). Damaged or unfinished
 * files are skipped. *out is malloc'ed, sorted by host, job, chain, seq.
 * The scan with CBI_DEST_READ, then cbi_dest_points(). */
int cbi_chain_scan(const char *dir, cbi_point **out, size_t *n, cbi_error *err) CBI_WUR;

#endif
