/* catalog.c - the SQLite catalog of a destination directory (catalog.h).
 *
 * The catalog is a cache: every function here treats the files of DEST as
 * the truth and the catalog as disposable. Writes are short IMMEDIATE
 * transactions in rollback-journal mode (journal_mode=DELETE: WAL needs
 * shared memory, which network and FUSE filesystems do not offer) with a
 * 30 s busy timeout, so that a few processes sharing a DEST on a network
 * share or a FAT disk take turns. Files are read outside any transaction. */
#define _GNU_SOURCE
#include "catalog.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "chain.h"
#include "dest.h"
#include "mounts.h"
#include "runlog.h"
#include "sfile.h"
#include "util.h"

#define CAT_APP_ID 0x43424943  /* "CBIC": PRAGMA application_id */
#define CAT_SCHEMA 6           /* PRAGMA user_version; 2 added points.encrypted, hash_alg;
                                * 3 points.used_only; 4 images.link (merged images);
                                * 5 runs.kind, runs.points_removed (prune runs); 6 points.rescue,
                                * bad_bytes, bad_ranges (rev. 2.5); the idents table is
                                * added in place: ident_table() */
#define CAT_BUSY_MS 30000
#define CAT_BATCH 64           /* files per write transaction while syncing */

/* The identity of the file of each row of points, images and ignored (fent). */
#define IDENTS_SQL "CREATE TABLE IF NOT EXISTS idents(name TEXT PRIMARY KEY, ident INTEGER NOT NULL);"

static const char schema_sql[] =
	"CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS points("
	" name TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
	" chain_id BLOB NOT NULL, point_id BLOB NOT NULL, parent_id BLOB NOT NULL,"
	" parent_digest BLOB NOT NULL, index_digest BLOB NOT NULL, seq INTEGER NOT NULL,"
	" type INTEGER NOT NULL, block_size INTEGER NOT NULL, source_size INTEGER NOT NULL,"
	" n_blocks INTEGER NOT NULL, created_ns INTEGER NOT NULL, job TEXT NOT NULL,"
	" host TEXT NOT NULL, source_id TEXT NOT NULL, source_path TEXT NOT NULL,"
	" changed_blocks INTEGER NOT NULL, zero_blocks INTEGER NOT NULL,"
	" stored_blocks INTEGER NOT NULL, image_bytes INTEGER NOT NULL,"
	" index_bytes INTEGER NOT NULL, segment_size INTEGER NOT NULL,"
	" encrypted INTEGER NOT NULL DEFAULT 0, hash_alg INTEGER NOT NULL DEFAULT 1,"
	" used_only INTEGER NOT NULL DEFAULT 0, rescue INTEGER NOT NULL DEFAULT 0,"
	" bad_bytes INTEGER NOT NULL DEFAULT 0, bad_ranges INTEGER NOT NULL DEFAULT 0);"
	"CREATE INDEX IF NOT EXISTS points_key ON points(host, job, source_id);"
	"CREATE TABLE IF NOT EXISTS images("
	" name TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
	" point_id BLOB NOT NULL, index_digest BLOB NOT NULL, chain_id BLOB NOT NULL,"
	" seq INTEGER NOT NULL, created_ns INTEGER NOT NULL, job TEXT NOT NULL,"
	" host TEXT NOT NULL, source_id TEXT NOT NULL, changed_blocks INTEGER NOT NULL,"
	" stored_blocks INTEGER NOT NULL, image_bytes INTEGER NOT NULL, link BLOB);"
	"CREATE TABLE IF NOT EXISTS ignored("
	" name TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
	" reason TEXT NOT NULL);"
	IDENTS_SQL
	"CREATE TABLE IF NOT EXISTS runs("
	" id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, source_id TEXT NOT NULL,"
	" source_path TEXT NOT NULL, job TEXT NOT NULL, started_ns INTEGER NOT NULL,"
	" ended_ns INTEGER, result TEXT NOT NULL, message TEXT NOT NULL DEFAULT '',"
	" bytes_read INTEGER NOT NULL DEFAULT 0, bytes_written INTEGER NOT NULL DEFAULT 0,"
	" type INTEGER, point_id BLOB, file TEXT, index_file TEXT,"
	" kind TEXT NOT NULL DEFAULT 'backup', points_removed INTEGER NOT NULL DEFAULT 0);";

static const char *const result_names[] = {
	[CBI_RUN_RUNNING] = "running",
	[CBI_RUN_OK] = "ok",
	[CBI_RUN_FAILED] = "failed",
	[CBI_RUN_INTERRUPTED] = "interrupted",
};

const char *cbi_run_result_name(int result)
{
	if (result < 0 || result > CBI_RUN_INTERRUPTED)
		return "unknown";
	return result_names[result];
}

static int result_code(const char *name)
{
	for (int i = 0; i <= CBI_RUN_INTERRUPTED; i++)
		if (name && !strcmp(name, result_names[i]))
			return i;
	return -1;
}

/* ------------------------------------------------------------ connection */

typedef struct cat {
	sqlite3 *db;
	const char *dest;
	char path[4096];
	struct stat fst;          /* the catalog file as found, to move aside only it */
	int have_fst;
	int readonly;             /* writes are impossible */
	int other_dir;            /* built for another directory, not reset (read-only) */
	int corrupt;              /* SQLite said corrupt or not a database */
	int has_ident;            /* it has the idents table (ident_table()) */
	cbi_catalog_stats *st;
} cat;

/* Fill err from a failed SQLite call rc (doing `what`) and return a negative
 * code: the errno SQLite saw if any, else one that matches the SQLite code. */
static int cat_fail(cat *c, cbi_error *err, int rc, const char *what)
{
	int code;
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED: code = -EBUSY; break;
	case SQLITE_READONLY: code = -EROFS; break;
	case SQLITE_FULL: code = -ENOSPC; break;
	case SQLITE_NOMEM: code = -ENOMEM; break;
	case SQLITE_NOLFS: code = -EFBIG; break;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB: code = -EIO; c->corrupt = 1; break;
	default: code = -EIO; break;
	}
	int sys = c->db ? sqlite3_system_errno(c->db) : 0;
	if (code == -EIO && !c->corrupt && sys > 0)
		code = -sys;
	return cbi_err(err, code, "catalog '%s': unable to %s: %s", c->path, what,
		       c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
}

static int cat_exec(cat *c, const char *sql, const char *what, cbi_error *err)
{
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : cat_fail(c, err, rc, what);
}

static int cat_prepare(cat *c, const char *sql, sqlite3_stmt **s, cbi_error *err)
{
	int rc = sqlite3_prepare_v2(c->db, sql, -1, s, NULL);
	return rc == SQLITE_OK ? 0 : cat_fail(c, err, rc, "read it");
}

/* The single integer a query (a PRAGMA) returns, 0 if none. */
static int cat_int(cat *c, const char *sql, int64_t *out, cbi_error *err)
{
	sqlite3_stmt *s = NULL;
	int rc = cat_prepare(c, sql, &s, err);
	if (rc)
		return rc;
	*out = 0;
	int r = sqlite3_step(s);
	if (r == SQLITE_ROW)
		*out = sqlite3_column_int64(s, 0);
	else if (r != SQLITE_DONE)
		rc = cat_fail(c, err, r, "read it");
	sqlite3_finalize(s);
	return rc;
}

static int cat_begin(cat *c, cbi_error *err)
{
	return cat_exec(c, "BEGIN IMMEDIATE", "lock it for writing", err);
}

static void cat_rollback(cat *c)
{
	if (c->db && !sqlite3_get_autocommit(c->db))
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

static int cat_commit(cat *c, cbi_error *err)
{
	int rc = cat_exec(c, "COMMIT", "write it", err);
	if (rc)
		cat_rollback(c);
	return rc;
}

static void cat_close(cat *c)
{
	if (c->db) {
		cat_rollback(c);
		sqlite3_close_v2(c->db);
		c->db = NULL;
	}
}

static void bind_str(sqlite3_stmt *s, int i, const char *v, size_t max)
{
	sqlite3_bind_text(s, i, v, (int)strnlen(v, max), SQLITE_TRANSIENT);
}

/* NULL or "" binds NULL: "match anything" in the filter clauses. */
static void bind_opt(sqlite3_stmt *s, int i, const char *v)
{
	if (v && *v)
		sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(s, i);
}

static void col_str(sqlite3_stmt *s, int i, char *out, size_t size)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	cbi_strlcpy(out, t ? (const char *)t : "", size);
}

static void col_blob(sqlite3_stmt *s, int i, uint8_t *out, size_t size)
{
	const void *b = sqlite3_column_blob(s, i);
	size_t n = (size_t)sqlite3_column_bytes(s, i);
	memset(out, 0, size);
	if (b)
		memcpy(out, b, CBI_MIN(n, size));
}

/* The directory identity recorded in meta, so that a catalog copied from
 * elsewhere is known for what it is. */
static int dir_matches(cat *c, const struct stat *ds, int *match, cbi_error *err)
{
	int64_t dev = 0, ino = 0;
	int rc = cat_int(c, "SELECT value FROM meta WHERE key = 'dir_dev'", &dev, err);
	if (!rc)
		rc = cat_int(c, "SELECT value FROM meta WHERE key = 'dir_ino'", &ino, err);
	*match = !rc && (uint64_t)dev == (uint64_t)ds->st_dev && (uint64_t)ino == (uint64_t)ds->st_ino;
	return rc;
}

static int set_dir(cat *c, const struct stat *ds, cbi_error *err)
{
	char sql[160];
	snprintf(sql, sizeof sql,
		 "INSERT OR REPLACE INTO meta VALUES('dir_dev', %lld), ('dir_ino', %lld)",
		 (long long)ds->st_dev, (long long)ds->st_ino);
	return cat_exec(c, sql, "write it", err);
}

/* Is the file system of device dev mounted with fusefat, the FUSE FAT
 * driver? Its writes into existing files are unreliable (overwriting or
 * appending in a reopened file can grow it with junk), which no database
 * survives; the files cbimg writes once, front to back, are unaffected. */
static int on_fusefat(dev_t dev)
{
	cbi_mount m;
	return cbi_mount_find(dev, 0, &m) &&
	       (!strcmp(m.type, "fuse.fusefat") || (!strcmp(m.type, "fuse") && !strcmp(m.source, "fusefat")));
}

/* The file identities (fent) live in table idents, created in place where
 * it is missing (a catalog made before them). A row without one (written by
 * a version of cbimg that does not know them) is trusted by name, size and
 * mtime as before; one with one must match the file. Nothing else changes,
 * so the schema version stays. A read-only catalog without the table is
 * used as it is (c->has_ident 0). */
static int ident_table(cat *c, cbi_error *err)
{
	int64_t n = 0;
	int rc = cat_int(c, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'idents'", &n, err);
	if (!rc && !n && !c->readonly)
		rc = cat_exec(c, IDENTS_SQL, "upgrade it", err);
	c->has_ident = !rc && (n || !c->readonly);
	return rc;
}

/* Open DEST's catalog: create it (when create is set) with the schema, check
 * that it is ours and of a schema we know, and forget its files when it was
 * built for another directory. On failure c->db is closed unless the error
 * is corruption (c->corrupt), which the caller answers by moving it aside. */
static int cat_open(cat *c, const char *dest, int create, cbi_error *err)
{
	struct stat ds;
	int rc;
	if (stat(dest, &ds) < 0)
		return cbi_err(err, -errno, "unable to open directory '%s': %s", dest, strerror(errno));
	if (!S_ISDIR(ds.st_mode))
		return cbi_err(err, -ENOTDIR, "'%s' is not a directory", dest);
	if (on_fusefat(ds.st_dev))
		return cbi_err(err, -ENOTSUP,
			       "no catalog in '%s': fusefat corrupts files written in place; mount the "
			       "disk with the kernel's vfat driver to keep one",
			       dest);
	c->dest = dest;
	if ((size_t)snprintf(c->path, sizeof c->path, "%s/%s", dest, CBI_CATALOG_NAME) >= sizeof c->path)
		return cbi_err(err, -ENAMETOOLONG, "path of the catalog in '%s' too long", dest);
	c->have_fst = stat(c->path, &c->fst) == 0;
	if (c->have_fst && !S_ISREG(c->fst.st_mode))
		return cbi_err(err, -EINVAL, "catalog '%s' is not a regular file", c->path);
	if (!c->have_fst && !create)
		return cbi_err(err, -ENOENT, "no catalog '%s'", c->path);
	if (!c->have_fst && ds.st_nlink == 0) /* removed while in use: no catalog in it */
		return cbi_err(err, -ENOENT, "directory '%s' was removed", dest);

	/* A journal is a regular file: SQLite refuses to follow a link at its
	 * name (and the catalog would stay unusable), so one planted there is
	 * removed (the link only, never what it names); so is a FIFO. */
	char journal[4200];
	struct stat js;
	snprintf(journal, sizeof journal, "%s-journal", c->path);
	if (lstat(journal, &js) == 0 && !S_ISREG(js.st_mode) && !S_ISDIR(js.st_mode))
		(void)unlink(journal);
	int r = sqlite3_open_v2(c->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (r != SQLITE_OK && c->have_fst) {
		sqlite3_close_v2(c->db);
		c->db = NULL;
		r = sqlite3_open_v2(c->path, &c->db, SQLITE_OPEN_READONLY, NULL);
	}
	if (r != SQLITE_OK) {
		rc = cat_fail(c, err, r, "open it");
		goto fail;
	}
	if (!c->have_fst)
		c->have_fst = stat(c->path, &c->fst) == 0;
	sqlite3_extended_result_codes(c->db, 1);
	sqlite3_busy_timeout(c->db, CAT_BUSY_MS);
	c->readonly = sqlite3_db_readonly(c->db, "main") == 1;

	/* The application id and schema version from one snapshot: a catalog
	 * that another process is creating right now shows both or neither. */
	int64_t app = 0, ver = 0, objs = 0;
	if ((rc = cat_exec(c, "BEGIN", "read it", err)) ||
	    (rc = cat_int(c, "PRAGMA application_id", &app, err)) ||
	    (rc = cat_int(c, "PRAGMA user_version", &ver, err)))
		goto fail;
	cat_rollback(c);
	if (app == 0 && ver == 0) {
		/* New: create it holding the write lock, unless another process
		 * has meanwhile, or the file is some other database. */
		if (c->readonly) {
			rc = cbi_err(err, -EROFS, "catalog '%s' is empty and read-only", c->path);
			goto fail;
		}
		if ((rc = cat_exec(c, "PRAGMA journal_mode=DELETE", "set its journal mode", err)) ||
		    (rc = cat_begin(c, err)) || (rc = cat_int(c, "PRAGMA application_id", &app, err)) ||
		    (rc = cat_int(c, "PRAGMA user_version", &ver, err)) ||
		    (rc = cat_int(c, "SELECT count(*) FROM sqlite_master", &objs, err)))
			goto fail;
		if (app == 0 && ver == 0 && objs) {
			c->corrupt = 1;
			rc = cbi_err(err, -EIO, "'%s' is not a cbimg catalog", c->path);
			goto fail;
		}
		if (app == 0 && ver == 0) {
			char sql[160];
			snprintf(sql, sizeof sql,
				 "PRAGMA application_id=%d; PRAGMA user_version=%d;"
				 " INSERT INTO meta VALUES('schema_version', %d)",
				 CAT_APP_ID, CAT_SCHEMA, CAT_SCHEMA);
			if ((rc = cat_exec(c, schema_sql, "create it", err)) || (rc = set_dir(c, &ds, err)) ||
			    (rc = cat_exec(c, sql, "create it", err)))
				goto fail;
			app = CAT_APP_ID;
			ver = CAT_SCHEMA;
			if (c->st)
				c->st->created = 1;
		}
		if ((rc = cat_commit(c, err)))
			goto fail;
	}
	if (app != CAT_APP_ID) {
		c->corrupt = 1;
		rc = cbi_err(err, -EIO, "'%s' is not a cbimg catalog", c->path);
		goto fail;
	}
	if (ver >= 1 && ver <= 5 && !c->readonly) {
		/* Schema 1 knew only version-1 files (plain, XXH3), schema 2 no
		 * used-only points, schema 5 no points read with --rescue: what the new columns' defaults say. Upgrade in
		 * place, once. */
		if ((rc = cat_begin(c, err)) || (rc = cat_int(c, "PRAGMA user_version", &ver, err)))
			goto fail;
		int64_t has_kind = 0, has_rescue = 0;
		if (ver >= 1 && ver <= 5 &&
		    (rc = cat_int(c, "SELECT count(*) FROM pragma_table_info('runs') WHERE name = 'kind'", &has_kind,
				  err)))
			goto fail;
		if (ver >= 1 && ver <= 5 &&
		    (rc = cat_int(c, "SELECT count(*) FROM pragma_table_info('points') WHERE name = 'rescue'",
				  &has_rescue, err)))
			goto fail;
		if (ver >= 1 && ver <= 5) {
			char sql[1024];
			snprintf(sql, sizeof sql,
				 "%s%s%s%s%s PRAGMA user_version=%d; UPDATE meta SET value=%d WHERE key='schema_version'",
				 ver == 1 ? "ALTER TABLE points ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;"
					    " ALTER TABLE points ADD COLUMN hash_alg INTEGER NOT NULL DEFAULT 1;"
					  : "",
				 ver <= 2 ? " ALTER TABLE points ADD COLUMN used_only INTEGER NOT NULL DEFAULT 0;" : "",
				 ver <= 3 ? " ALTER TABLE images ADD COLUMN link BLOB;" : "",
				 has_kind ? "" :
					    " ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';"
					    " ALTER TABLE runs ADD COLUMN points_removed INTEGER NOT NULL DEFAULT 0;",
				 has_rescue ? " DELETE FROM ignored;" :
					     " ALTER TABLE points ADD COLUMN rescue INTEGER NOT NULL DEFAULT 0;"
					     " ALTER TABLE points ADD COLUMN bad_bytes INTEGER NOT NULL DEFAULT 0;"
					     " ALTER TABLE points ADD COLUMN bad_ranges INTEGER NOT NULL DEFAULT 0;"
					     " DELETE FROM ignored;", /* files an older reader could not read (flag bit 3) */
				 CAT_SCHEMA, CAT_SCHEMA);
			if ((rc = cat_exec(c, sql, "upgrade it", err)))
				goto fail;
			ver = CAT_SCHEMA;
		}
		if ((rc = cat_commit(c, err)))
			goto fail;
	}
	if (ver != CAT_SCHEMA) {
		rc = cbi_err(err, -ENOTSUP, "catalog '%s' has schema version %lld; this cbimg knows %d",
			     c->path, (long long)ver, CAT_SCHEMA);
		goto fail;
	}
	if ((rc = ident_table(c, err)))
		goto fail;
	/* A catalog written elsewhere with WAL would need shared memory. */
	if (!c->readonly && (rc = cat_exec(c, "PRAGMA journal_mode=DELETE", "set its journal mode", err)))
		goto fail;

	int match = 0;
	if ((rc = dir_matches(c, &ds, &match, err)))
		goto fail;
	if (!match) {
		if (c->readonly) {
			c->other_dir = 1;
		} else {
			if ((rc = cat_begin(c, err)) || (rc = dir_matches(c, &ds, &match, err)))
				goto fail;
			if (!match &&
			    ((rc = cat_exec(c, c->has_ident ? "DELETE FROM points; DELETE FROM images;"
								 " DELETE FROM ignored; DELETE FROM idents"
							       : "DELETE FROM points; DELETE FROM images;"
								 " DELETE FROM ignored",
					    "reset it", err)) ||
			     (rc = set_dir(c, &ds, err))))
				goto fail;
			if ((rc = cat_commit(c, err)))
				goto fail;
			if (!match && c->st)
				c->st->other_dir = 1;
		}
	}
	return 0;
fail:
	if (!c->corrupt)
		cat_close(c);
	else
		cat_rollback(c);
	return rc;
}

/* Rename a corrupt catalog (and its journal) to *.corrupt, unless another
 * process has already replaced it: only the file we found broken goes. */
static int move_aside(cat *c, cbi_error *err)
{
	struct stat now;
	char aside[4200], journal[4200];
	if (!c->have_fst || stat(c->path, &now) < 0 || now.st_dev != c->fst.st_dev ||
	    now.st_ino != c->fst.st_ino)
		return 0;
	snprintf(aside, sizeof aside, "%s.corrupt", c->path);
	if (rename(c->path, aside) < 0)
		return cbi_err(err, -errno, "unable to move corrupt catalog '%s' aside: %s", c->path,
			       strerror(errno));
	/* a hot journal belongs to the old file and must not be replayed into a new one */
	snprintf(journal, sizeof journal, "%s-journal", c->path);
	snprintf(aside, sizeof aside, "%s.corrupt-journal", c->path);
	/* only a regular file is the old catalog's journal: a link (or FIFO)
	 * planted at its name is removed, never moved aside with it */
	struct stat js;
	if (lstat(journal, &js) == 0 && !S_ISREG(js.st_mode))
		unlink(journal);
	else if (rename(journal, aside) < 0 && errno != ENOENT)
		unlink(journal);
	if (c->st)
		c->st->moved_aside = 1;
	return 0;
}

typedef int (*cat_op)(cat *c, void *arg, cbi_error *err);

/* Open the catalog and run op on it; a catalog found corrupt (on opening or
 * by op) is moved aside and op runs once more on a new one. */
static int cat_run(const char *dest, int create, cbi_catalog_stats *st, cat_op op, void *arg,
		   cbi_error *err)
{
	cbi_catalog_stats unused;
	if (!st)
		st = &unused;
	memset(st, 0, sizeof *st);
	for (int attempt = 0;; attempt++) {
		cat c;
		memset(&c, 0, sizeof c);
		c.st = st;
		int rc = cat_open(&c, dest, create || attempt, err);
		if (!rc)
			rc = op(&c, arg, err);
		cat_close(&c);
		if (!rc || !c.corrupt || attempt)
			return rc;
		memset(st, 0, sizeof *st); /* count the second attempt only */
		if ((rc = move_aside(&c, err)))
			return rc;
	}
}

/* ----------------------------------------------------------- file rows */

/* A point file as the directory shows it, or as the catalog remembers it.
 * Its fingerprint: size, mtime and an identity, id, made of the inode
 * numbers of the file and its segments (a file replaced through a rename,
 * as rsync and most copies do, by one of the same name, size and mtime is
 * noticed) and, in a row, of the table the row is in (a row moved to
 * another table, its other columns kept, is noticed and the file read
 * again). */
typedef struct fent {
	char *name;
	int64_t size, mtime_ns;
	int64_t id;               /* dir side: ident_add() of the inodes; row side: as stored */
	int tab;                  /* row side: T_POINTS, T_IMAGES, T_IGNORED */
} fent;

enum { T_POINTS = 1, T_IMAGES, T_IGNORED };

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Fold one file's (or segment's) inode number into id: order does not matter. */
static void ident_add(fent *f, uint64_t ino)
{
	f->id = (int64_t)((uint64_t)f->id + mix64(ino));
}

/* The ident stored in a row of table tab for a file of identity id (never 0,
 * which rows from before schema 4 hold). */
static int64_t ident_row(int64_t id, int tab)
{
	uint64_t v = mix64((uint64_t)id ^ mix64((uint64_t)tab)) & INT64_MAX;
	return (int64_t)(v ? v : 1);
}

static int fent_cmp(const void *a, const void *b)
{
	return strcmp(((const fent *)a)->name, ((const fent *)b)->name);
}

static void fents_free(fent *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

static int fents_add(fent **v, size_t *n, size_t *cap, const char *name, int64_t size, int64_t mtime)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 256;
		fent *t = realloc(*v, nc * sizeof *t);
		if (!t)
			return -ENOMEM;
		*v = t;
		*cap = nc;
	}
	if (!((*v)[*n].name = strdup(name)))
		return -ENOMEM;
	(*v)[*n].size = size;
	(*v)[*n].mtime_ns = mtime;
	(*v)[*n].id = 0;
	(*v)[*n].tab = 0;
	(*n)++;
	return 0;
}

static int load_known(cat *c, fent **out, size_t *n, cbi_error *err)
{
	sqlite3_stmt *s = NULL;
	size_t cap = 0;
	int rc = cat_prepare(c,
			     c->has_ident ? "SELECT t.name, size, mtime_ns, ident, 1 FROM points t"
					    " LEFT JOIN idents i ON i.name = t.name UNION ALL "
					    "SELECT t.name, size, mtime_ns, ident, 2 FROM images t"
					    " LEFT JOIN idents i ON i.name = t.name UNION ALL "
					    "SELECT t.name, size, mtime_ns, ident, 3 FROM ignored t"
					    " LEFT JOIN idents i ON i.name = t.name"
					  : "SELECT name, size, mtime_ns, NULL, 1 FROM points UNION ALL "
					    "SELECT name, size, mtime_ns, NULL, 2 FROM images UNION ALL "
					    "SELECT name, size, mtime_ns, NULL, 3 FROM ignored",
			     &s, err);
	*out = NULL;
	*n = 0;
	if (rc)
		return rc;
	int r;
	while ((r = sqlite3_step(s)) == SQLITE_ROW) {
		const unsigned char *name = sqlite3_column_text(s, 0);
		if (fents_add(out, n, &cap, name ? (const char *)name : "", sqlite3_column_int64(s, 1),
			      sqlite3_column_int64(s, 2))) {
			rc = cbi_err(err, -ENOMEM, "out of memory");
			break;
		}
		/* 0: no identity recorded */
		(*out)[*n - 1].id = sqlite3_column_type(s, 3) == SQLITE_NULL ? 0 : sqlite3_column_int64(s, 3);
		(*out)[*n - 1].tab = sqlite3_column_int(s, 4);
	}
	if (!rc && r != SQLITE_DONE)
		rc = cat_fail(c, err, r, "read it");
	sqlite3_finalize(s);
	if (!rc && *n)
		qsort(*out, *n, sizeof **out, fent_cmp);
	return rc;
}

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* A file's fingerprint takes in its segments: the sum of the sizes and the
 * newest mtime, so that a segment that changes or vanishes is noticed. */
static void add_segment(fent *f, int64_t size, int64_t mtime)
{
	f->size += size;
	if (mtime > f->mtime_ns)
		f->mtime_ns = mtime;
}

/* The point files of dir (the names the directory scan considers), with
 * their segments' sizes and times folded in, sorted by name: the scan's
 * names and stat() data, no file opened. */
static int scan_names(const char *dir, fent **out, size_t *n, cbi_error *err)
{
	cbi_dest *d = NULL;
	size_t cap = 0;
	*out = NULL;
	*n = 0;
	int rc = cbi_dest_scan(dir, CBI_DEST_STAT, &d, err);
	if (rc)
		return rc;
	/* The scan is sorted by name, so each file's entry is found by name. */
	for (size_t i = 0; !rc && i < d->n; i++) {
		const cbi_dent *e = &d->e[i];
		if (e->kind == CBI_DENT_POINT && e->has_stat &&
		    fents_add(out, n, &cap, e->name, (int64_t)e->size, e->mtime_ns))
			rc = cbi_err(err, -ENOMEM, "out of memory");
		else if (e->kind == CBI_DENT_POINT && e->has_stat)
			ident_add(&(*out)[*n - 1], e->ino);
	}
	for (size_t i = 0; !rc && i < d->n; i++) {
		const cbi_dent *e = &d->e[i];
		if (e->kind != CBI_DENT_SEGMENT || !e->has_stat)
			continue;
		char base[4096];
		memcpy(base, e->name, e->base_len);
		base[e->base_len] = 0;
		fent key = { .name = base };
		fent *f = *n ? bsearch(&key, *out, *n, sizeof **out, fent_cmp) : NULL;
		if (f) {
			add_segment(f, (int64_t)e->size, e->mtime_ns);
			ident_add(f, e->ino);
		}
	}
	cbi_dest_free(d);
	return rc;
}

/* The fingerprint of one file and its segments, found by name. */
static int fingerprint(const char *path, fent *f)
{
	struct stat st;
	char seg[4096];
	if (stat(path, &st) < 0)
		return -errno;
	f->size = (int64_t)st.st_size;
	f->mtime_ns = mtime_ns(&st);
	f->id = 0;
	ident_add(f, (uint64_t)st.st_ino);
	for (uint32_t k = 1; !cbi_sfile_segment_name(path, k, seg, sizeof seg) && !stat(seg, &st); k++) {
		add_segment(f, (int64_t)st.st_size, mtime_ns(&st));
		ident_add(f, (uint64_t)st.st_ino);
	}
	return 0;
}

/* One file read for the catalog: what cbi_point_read_file() said. */
typedef struct frow {
	const fent *f;
	int kind;                 /* CBI_KIND_INDEX, CBI_KIND_IMAGE, 0: not a point file */
	cbi_point p;
	char reason[256];
} frow;

static void read_row(const char *dest, const fent *f, frow *row)
{
	char path[4096];
	cbi_error e;
	memset(row, 0, sizeof *row);
	row->f = f;
	memset(&e, 0, sizeof e);
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dest, f->name) >= sizeof path) {
		cbi_strlcpy(row->reason, "path too long", sizeof row->reason);
		return;
	}
	if (cbi_point_read_file(path, &row->p, &row->kind, &e)) {
		row->kind = 0;
		cbi_strlcpy(row->reason, e.msg[0] ? e.msg : "unreadable", sizeof row->reason);
	}
}

static const char sql_ins_point[] =
	"INSERT OR REPLACE INTO points(name, size, mtime_ns, chain_id, point_id, parent_id,"
	" parent_digest, index_digest, seq, type, block_size, source_size, n_blocks, created_ns,"
	" job, host, source_id, source_path, changed_blocks, zero_blocks, stored_blocks,"
	" image_bytes, index_bytes, segment_size, encrypted, hash_alg, used_only, rescue, bad_bytes, bad_ranges)"
	" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
	" ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)";
static const char sql_ins_image[] =
	"INSERT OR REPLACE INTO images(name, size, mtime_ns, point_id, index_digest, chain_id, seq,"
	" created_ns, job, host, source_id, changed_blocks, stored_blocks, image_bytes, link)"
	" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";
static const char sql_ins_ignored[] =
	"INSERT OR REPLACE INTO ignored(name, size, mtime_ns, reason) VALUES(?1, ?2, ?3, ?4)";

enum { S_DEL_POINT, S_DEL_IMAGE, S_DEL_IGNORED, S_DEL_IDENT, S_INS_POINT, S_INS_IMAGE, S_INS_IGNORED,
       S_INS_IDENT, S_N };

static int step_reset(cat *c, sqlite3_stmt *s, cbi_error *err)
{
	int r = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return r == SQLITE_DONE ? 0 : cat_fail(c, err, r, "write it");
}

static void bind_point(sqlite3_stmt *s, const frow *row)
{
	const cbi_point *p = &row->p;
	sqlite3_bind_text(s, 1, row->f->name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 2, row->f->size);
	sqlite3_bind_int64(s, 3, row->f->mtime_ns);
	if (row->kind == CBI_KIND_INDEX) {
		sqlite3_bind_blob(s, 4, p->chain_id, 16, SQLITE_TRANSIENT);
		sqlite3_bind_blob(s, 5, p->point_id, 16, SQLITE_TRANSIENT);
		sqlite3_bind_blob(s, 6, p->parent_id, 16, SQLITE_TRANSIENT);
		sqlite3_bind_blob(s, 7, p->parent_digest, 32, SQLITE_TRANSIENT);
		sqlite3_bind_blob(s, 8, p->index_digest, 32, SQLITE_TRANSIENT);
		sqlite3_bind_int64(s, 9, p->seq);
		sqlite3_bind_int64(s, 10, p->type);
		sqlite3_bind_int64(s, 11, p->block_size);
		sqlite3_bind_int64(s, 12, (int64_t)p->source_size);
		sqlite3_bind_int64(s, 13, (int64_t)p->n_blocks);
		sqlite3_bind_int64(s, 14, p->created_ns);
		bind_str(s, 15, p->job, sizeof p->job);
		bind_str(s, 16, p->host, sizeof p->host);
		bind_str(s, 17, p->source_id, sizeof p->source_id);
		bind_str(s, 18, p->source_path, sizeof p->source_path);
		sqlite3_bind_int64(s, 19, (int64_t)p->changed_blocks);
		sqlite3_bind_int64(s, 20, (int64_t)p->zero_blocks);
		sqlite3_bind_int64(s, 21, (int64_t)p->stored_blocks);
		sqlite3_bind_int64(s, 22, (int64_t)p->stored_bytes);
		sqlite3_bind_int64(s, 23, (int64_t)p->index_bytes);
		sqlite3_bind_int64(s, 24, (int64_t)p->segment_size);
		sqlite3_bind_int64(s, 25, p->encrypted);
		sqlite3_bind_int64(s, 26, p->hash_alg);
		sqlite3_bind_int64(s, 27, p->used_only);
		sqlite3_bind_int64(s, 28, p->rescue);
		sqlite3_bind_int64(s, 29, (int64_t)p->bad_bytes);
		sqlite3_bind_int64(s, 30, (int64_t)p->bad_ranges);
	} else if (row->kind == CBI_KIND_IMAGE) {
		sqlite3_bind_blob(s, 4, p->point_id, 16, SQLITE_TRANSIENT);
		sqlite3_bind_blob(s, 5, p->index_digest, 32, SQLITE_TRANSIENT);
		sqlite3_bind_blob(s, 6, p->chain_id, 16, SQLITE_TRANSIENT);
		sqlite3_bind_int64(s, 7, p->seq);
		sqlite3_bind_int64(s, 8, p->created_ns);
		bind_str(s, 9, p->job, sizeof p->job);
		bind_str(s, 10, p->host, sizeof p->host);
		bind_str(s, 11, p->source_id, sizeof p->source_id);
		sqlite3_bind_int64(s, 12, (int64_t)p->changed_blocks);
		sqlite3_bind_int64(s, 13, (int64_t)p->stored_blocks);
		sqlite3_bind_int64(s, 14, (int64_t)p->stored_bytes);
		if (p->merged) { /* its effective parent: id || index digest */
			uint8_t link[48];
			memcpy(link, p->parent_id, 16);
			memcpy(link + 16, p->parent_digest, 32);
			sqlite3_bind_blob(s, 15, link, 48, SQLITE_TRANSIENT);
		}
	} else {
		bind_str(s, 4, row->reason, sizeof row->reason);
	}
}

/* One short write transaction: forget every file (clear_all) or the files
 * named in del, then record the rows read. */
static int flush(cat *c, int clear_all, const fent *del, size_t ndel, const frow *rows, size_t nrows,
		 cbi_error *err)
{
	static const char *const sql[S_N] = {
		[S_DEL_POINT] = "DELETE FROM points WHERE name = ?1",
		[S_DEL_IMAGE] = "DELETE FROM images WHERE name = ?1",
		[S_DEL_IGNORED] = "DELETE FROM ignored WHERE name = ?1",
		[S_DEL_IDENT] = "DELETE FROM idents WHERE name = ?1",
		[S_INS_POINT] = sql_ins_point,
		[S_INS_IMAGE] = sql_ins_image,
		[S_INS_IGNORED] = sql_ins_ignored,
		[S_INS_IDENT] = "INSERT OR REPLACE INTO idents(name, ident) VALUES(?1, ?2)",
	};
	sqlite3_stmt *s[S_N] = { 0 };
	int rc = 0;
	if (c->readonly)
		return cbi_err(err, -EROFS, "catalog '%s' is read-only and out of date", c->path);
	if (!c->has_ident)
		return cbi_err(err, -EROFS, "catalog '%s' cannot be upgraded", c->path); /* never: see ident_table() */
	if ((rc = cat_begin(c, err)))
		return rc;
	for (int i = 0; i < S_N && !rc; i++)
		rc = cat_prepare(c, sql[i], &s[i], err);
	if (!rc && clear_all)
		rc = cat_exec(c, "DELETE FROM points; DELETE FROM images; DELETE FROM ignored; DELETE FROM idents",
			      "write it", err);
	for (size_t i = 0; i < ndel + nrows && !rc; i++) {
		const char *name = i < ndel ? del[i].name : rows[i - ndel].f->name;
		for (int t = S_DEL_POINT; t <= S_DEL_IDENT && !rc; t++) {
			sqlite3_bind_text(s[t], 1, name, -1, SQLITE_TRANSIENT);
			rc = step_reset(c, s[t], err);
		}
		if (i < ndel || rc)
			continue;
		const frow *row = &rows[i - ndel];
		sqlite3_stmt *ins = row->kind == CBI_KIND_INDEX ? s[S_INS_POINT] :
				    row->kind == CBI_KIND_IMAGE ? s[S_INS_IMAGE] : s[S_INS_IGNORED];
		bind_point(ins, row);
		if ((rc = step_reset(c, ins, err)))
			continue;
		/* the file's identity, bound to the table of its row */
		int tab = row->kind == CBI_KIND_INDEX ? T_POINTS : row->kind == CBI_KIND_IMAGE ? T_IMAGES : T_IGNORED;
		sqlite3_bind_text(s[S_INS_IDENT], 1, row->f->name, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(s[S_INS_IDENT], 2, ident_row(row->f->id, tab));
		rc = step_reset(c, s[S_INS_IDENT], err);
	}
	for (int i = 0; i < S_N; i++)
		sqlite3_finalize(s[i]);
	if (!rc)
		rc = cat_commit(c, err);
	cat_rollback(c);
	return rc;
}

/* Bring the file rows up to date with DEST: compare the names, sizes and
 * mtimes the directory shows with the rows (no file is opened for that),
 * read the files that are new or changed, drop the rows of vanished ones.
 * full: forget every row and read every file. */
static int cat_sync(cat *c, int full, cbi_error *err)
{
	fent *known = NULL, *dir = NULL, *del = NULL;
	size_t nk = 0, nd = 0, ndel = 0, capdel = 0, nrows = 0;
	frow *rows = NULL;
	int rc, clear = full;
	if (c->other_dir)
		return cbi_err(err, -EROFS, "catalog '%s' was built for another directory and is read-only",
			       c->path);
	if (full && c->readonly) {
		/* nothing can be rewritten: say whether it is out of date */
		if ((rc = cat_sync(c, 0, err)))
			return rc;
		return cbi_err(err, -EROFS, "catalog '%s' is read-only: not rebuilt (it is up to date with "
			       "the files' names, sizes and identities)", c->path);
	}
	/* rows first, then the directory: a row added meanwhile by a backup is
	 * for a file that the directory already shows */
	if (!full && (rc = load_known(c, &known, &nk, err)))
		goto end;
	if ((rc = scan_names(c->dest, &dir, &nd, err)))
		goto end;
	if (!(rows = malloc(CAT_BATCH * sizeof *rows))) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	c->st->files = nd;
	size_t i = 0, j = 0;
	while (i < nd || j < nk) {
		int cmp = i == nd ? 1 : j == nk ? -1 : strcmp(dir[i].name, known[j].name);
		if (cmp > 0) { /* vanished */
			if (fents_add(&del, &ndel, &capdel, known[j].name, 0, 0)) {
				rc = cbi_err(err, -ENOMEM, "out of memory");
				goto end;
			}
			c->st->removed++;
			j++;
			continue;
		}
		if (cmp == 0) {
			/* a name in two tables (never written so) is read again */
			int dup = j + 1 < nk && !strcmp(known[j].name, known[j + 1].name);
			int same = !dup && dir[i].size == known[j].size && dir[i].mtime_ns == known[j].mtime_ns &&
				   (!known[j].id || ident_row(dir[i].id, known[j].tab) == known[j].id);
			while (j + 1 < nk && !strcmp(known[j].name, known[j + 1].name))
				j++;
			j++;
			if (same) {
				i++;
				continue;
			}
		}
		read_row(c->dest, &dir[i++], &rows[nrows++]);
		c->st->opened++;
		if (nrows == CAT_BATCH) {
			if ((rc = flush(c, clear, del, ndel, rows, nrows, err)))
				goto end;
			for (size_t k = 0; k < ndel; k++)
				free(del[k].name);
			clear = 0;
			ndel = 0;
			nrows = 0;
		}
	}
	if (clear || ndel || nrows)
		rc = flush(c, clear, del, ndel, rows, nrows, err);
end:
	free(rows);
	fents_free(known, nk);
	fents_free(dir, nd);
	for (size_t k = 0; k < ndel; k++)
		free(del[k].name);
	free(del);
	return rc;
}

/* ------------------------------------------------------------- listing */

#define FILTER_SQL                                                                     \
	"(?1 IS NULL OR host = ?1) AND (?2 IS NULL OR source_id = ?2 OR source_path = ?2)" \
	" AND (?3 IS NULL OR job = ?3)"

static void bind_filter(sqlite3_stmt *s, const cbi_list_filter *f)
{
	bind_opt(s, 1, f ? f->host : NULL);
	bind_opt(s, 2, f ? f->source : NULL);
	bind_opt(s, 3, f ? f->job : NULL);
}

static int filter_match(const cbi_list_filter *f, const char *host, const char *source_id,
			const char *source_path, const char *job)
{
	if (!f)
		return 1;
	if (f->host && *f->host && strcmp(f->host, host))
		return 0;
	if (f->source && *f->source && strcmp(f->source, source_id) && strcmp(f->source, source_path))
		return 0;
	if (f->job && *f->job && strcmp(f->job, job))
		return 0;
	return 1;
}

typedef struct list_arg {
	const cbi_list_filter *f;
	cbi_point *pts;
	size_t n;
} list_arg;

static int count_rows(cat *c, const char *sql, const cbi_list_filter *f, size_t *n, cbi_error *err)
{
	sqlite3_stmt *s = NULL;
	int rc = cat_prepare(c, sql, &s, err);
	if (rc)
		return rc;
	bind_filter(s, f);
	int r = sqlite3_step(s);
	if (r == SQLITE_ROW)
		*n = (size_t)sqlite3_column_int64(s, 0);
	else
		rc = cat_fail(c, err, r, "read it");
	sqlite3_finalize(s);
	return rc;
}

/* The points that match a->f, from the rows (one read transaction, so that
 * points and images agree), paired and sorted by cbi_chain_pair(). */
static int load_points(cat *c, list_arg *a, cbi_error *err)
{
	static const char sql_pts[] =
		"SELECT name, chain_id, point_id, parent_id, parent_digest, index_digest, seq, type,"
		" block_size, source_size, n_blocks, created_ns, job, host, source_id, source_path,"
		" changed_blocks, zero_blocks, stored_blocks, image_bytes, index_bytes, segment_size,"
		" encrypted, hash_alg, used_only, rescue, bad_bytes, bad_ranges FROM points WHERE " FILTER_SQL
		/* the listing order, so that cbi_chain_pair() has little to move */
		" ORDER BY host, job, source_id, chain_id, seq, created_ns, name";
	static const char sql_imgs[] =
		"SELECT name, point_id, index_digest, image_bytes, link FROM images"
		" WHERE point_id IN (SELECT point_id FROM points WHERE " FILTER_SQL ")";
	sqlite3_stmt *s = NULL;
	cbi_point *pts = NULL;
	cbi_image_ref *imgs = NULL;
	size_t n = 0, ni = 0, k = 0;
	int rc, r = SQLITE_DONE;
	if ((rc = cat_exec(c, "BEGIN", "read it", err)))
		return rc;
	if ((rc = count_rows(c, "SELECT count(*) FROM points WHERE " FILTER_SQL, a->f, &n, err)) ||
	    (rc = count_rows(c, "SELECT count(*) FROM (" "SELECT 1 FROM images WHERE point_id IN"
				"(SELECT point_id FROM points WHERE " FILTER_SQL "))", a->f, &ni, err)))
		goto end;
	pts = calloc(n ? n : 1, sizeof *pts);
	imgs = calloc(ni ? ni : 1, sizeof *imgs);
	if (!pts || !imgs) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if ((rc = cat_prepare(c, sql_pts, &s, err)))
		goto end;
	bind_filter(s, a->f);
	while (k < n && (r = sqlite3_step(s)) == SQLITE_ROW) {
		cbi_point *p = &pts[k++];
		char name[256];
		col_str(s, 0, name, sizeof name);
		snprintf(p->index_file, sizeof p->index_file, "%s/%s", c->dest, name);
		col_blob(s, 1, p->chain_id, 16);
		col_blob(s, 2, p->point_id, 16);
		col_blob(s, 3, p->parent_id, 16);
		col_blob(s, 4, p->parent_digest, 32);
		col_blob(s, 5, p->index_digest, 32);
		p->seq = (uint32_t)sqlite3_column_int64(s, 6);
		p->first_seq = p->seq; /* a merged image's pairing lowers it */
		p->type = sqlite3_column_int(s, 7);
		p->block_size = (uint32_t)sqlite3_column_int64(s, 8);
		p->source_size = (uint64_t)sqlite3_column_int64(s, 9);
		p->n_blocks = (uint64_t)sqlite3_column_int64(s, 10);
		p->created_ns = sqlite3_column_int64(s, 11);
		col_str(s, 12, p->job, sizeof p->job);
		col_str(s, 13, p->host, sizeof p->host);
		col_str(s, 14, p->source_id, sizeof p->source_id);
		col_str(s, 15, p->source_path, sizeof p->source_path);
		p->changed_blocks = (uint64_t)sqlite3_column_int64(s, 16);
		p->zero_blocks = (uint64_t)sqlite3_column_int64(s, 17);
		p->stored_blocks = (uint64_t)sqlite3_column_int64(s, 18);
		p->stored_bytes = (uint64_t)sqlite3_column_int64(s, 19);
		p->index_bytes = (uint64_t)sqlite3_column_int64(s, 20);
		p->segment_size = (uint64_t)sqlite3_column_int64(s, 21);
		p->encrypted = sqlite3_column_int(s, 22);
		p->hash_alg = (uint32_t)sqlite3_column_int64(s, 23);
		p->used_only = sqlite3_column_int(s, 24);
		p->rescue = sqlite3_column_int(s, 25);
		p->bad_bytes = (uint64_t)sqlite3_column_int64(s, 26);
		p->bad_ranges = (uint64_t)sqlite3_column_int64(s, 27);
	}
	if (r != SQLITE_ROW && r != SQLITE_DONE) {
		rc = cat_fail(c, err, r, "read it");
		goto end;
	}
	n = k;
	sqlite3_finalize(s);
	if ((rc = cat_prepare(c, sql_imgs, &s, err)))
		goto end;
	bind_filter(s, a->f);
	k = 0;
	r = SQLITE_DONE;
	while (k < ni && (r = sqlite3_step(s)) == SQLITE_ROW) {
		cbi_image_ref *m = &imgs[k];
		const unsigned char *name = sqlite3_column_text(s, 0);
		char *path;
		if (asprintf(&path, "%s/%s", c->dest, name ? (const char *)name : "") < 0) {
			rc = cbi_err(err, -ENOMEM, "out of memory");
			goto end;
		}
		m->path = path;
		k++;
		col_blob(s, 1, m->point_id, 16);
		col_blob(s, 2, m->index_digest, 32);
		m->size = (uint64_t)sqlite3_column_int64(s, 3);
		if (sqlite3_column_bytes(s, 4) == 48) {
			const uint8_t *l = sqlite3_column_blob(s, 4);
			m->merged = 1;
			memcpy(m->parent_id, l, 16);
			memcpy(m->parent_digest, l + 16, 32);
		}
	}
	if (r != SQLITE_ROW && r != SQLITE_DONE) {
		rc = cat_fail(c, err, r, "read it");
		goto end;
	}
	ni = k;
	if ((rc = cbi_chain_pair(pts, &n, imgs, ni, err)))
		goto end;
	a->pts = pts;
	a->n = n;
	pts = NULL;
end:
	sqlite3_finalize(s);
	cat_rollback(c); /* ends the read transaction */
	free(pts);
	for (size_t j = 0; imgs && j < ni; j++)
		free((char *)imgs[j].path); /* calloc'ed: NULL when not set */
	free(imgs);
	return rc;
}

static int op_list(cat *c, void *arg, cbi_error *err)
{
	int rc = cat_sync(c, 0, err);
	return rc ? rc : load_points(c, arg, err);
}

/* Has cbimg backed up into dir: does it hold a backup's lock file,
 * ".cbimg-<16 hex digits>.lock" (format/SPEC.md, "Lock file")? A listing
 * makes a missing catalog only there, not in any directory that happens to
 * hold point files (copies, test vectors, read-only archives). */
static int is_backup_dest(const char *dir)
{
	cbi_dest *d = NULL;
	int found = 0;
	if (cbi_dest_scan(dir, 0, &d, NULL))
		return 0;
	for (size_t i = 0; i < d->n && !found; i++)
		found = d->e[i].kind == CBI_DENT_LOCK;
	cbi_dest_free(d);
	return found;
}

static int catalog_exists(const char *dest)
{
	char path[4096];
	struct stat st;
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dest, CBI_CATALOG_NAME) >= sizeof path)
		return 0;
	return stat(path, &st) == 0;
}

/* The listing order (cbimg.h, cbi_list_filtered()): the host/job/source group,
 * then the creation time, so that the newest point of a group comes last
 * whatever chain it is in; chain, seq and file only break ties. */
static int listing_cmp(const void *a, const void *b)
{
	const cbi_point *x = a, *y = b;
	int c = strcmp(x->host, y->host);
	if (!c)
		c = strcmp(x->job, y->job);
	if (!c)
		c = strcmp(x->source_id, y->source_id);
	if (!c)
		c = (x->created_ns > y->created_ns) - (x->created_ns < y->created_ns);
	if (!c)
		c = memcmp(x->chain_id, y->chain_id, 16);
	if (!c)
		c = (x->seq > y->seq) - (x->seq < y->seq);
	return c ? c : strcmp(x->index_file, y->index_file);
}

void cbi_list_sort(cbi_point *pts, size_t n)
{
	if (n > 1)
		qsort(pts, n, sizeof *pts, listing_cmp);
}

/* Does a DEST with points pts[0..n) look like an outbox: points, none of
 * them a full (every chain here continues one kept elsewhere)? An outbox
 * holds no catalog and no run log: its files are shipped to a site that
 * keeps its own, which a copied catalog would replace (issue 14, item 17). */
static int outbox_shaped(const cbi_point *pts, size_t n)
{
	/* a chain's base here: a full, or a synthetic full (a prune rolled
	 * the full forward: its seq is not 0) */
	for (size_t i = 0; i < n; i++)
		if (!cbi_point_has_parent(&pts[i]))
			return 0;
	return n > 0;
}

int cbi_list_filtered(const char *dest, const cbi_list_filter *f, cbi_point **out, size_t *n,
		      cbi_error *err)
{
	list_arg a = { .f = f };
	*out = NULL;
	*n = 0;
	if (catalog_exists(dest) && cat_run(dest, 1, NULL, op_list, &a, NULL) == 0) {
		cbi_list_sort(a.pts, a.n);
		if (cbi_chain_mark_broken(a.pts, a.n)) {
			free(a.pts);
			return cbi_err(err, -ENOMEM, "out of memory");
		}
		*out = a.pts;
		*n = a.n;
		return 0;
	}
	/* The catalog is only a cache: without it, read the files. */
	cbi_point *pts = NULL;
	size_t np = 0, w = 0;
	int rc = cbi_chain_scan(dest, &pts, &np, err);
	if (rc)
		return rc;
	/* Where backups run, make the missing catalog (not in an outbox). */
	if (!catalog_exists(dest) && is_backup_dest(dest) && !outbox_shaped(pts, np) &&
	    cat_run(dest, 1, NULL, op_list, &a, NULL) == 0) {
		free(pts);
		cbi_list_sort(a.pts, a.n);
		if (cbi_chain_mark_broken(a.pts, a.n)) {
			free(a.pts);
			return cbi_err(err, -ENOMEM, "out of memory");
		}
		*out = a.pts;
		*n = a.n;
		return 0;
	}
	for (size_t i = 0; i < np; i++)
		if (filter_match(f, pts[i].host, pts[i].source_id, pts[i].source_path, pts[i].job)) {
			if (w != i)
				pts[w] = pts[i];
			w++;
		}
	cbi_list_sort(pts, w);
	if (cbi_chain_mark_broken(pts, w)) {
		free(pts);
		return cbi_err(err, -ENOMEM, "out of memory");
	}
	*out = pts;
	*n = w;
	return 0;
}

int cbi_list(const char *dest, cbi_point **out, size_t *n, cbi_error *err)
{
	return cbi_list_filtered(dest, NULL, out, n, err);
}

static int op_sync(cat *c, void *arg, cbi_error *err)
{
	return cat_sync(c, *(const int *)arg, err);
}

int cbi_catalog_sync(const char *dest, int full, cbi_catalog_stats *st, cbi_error *err)
{
	return cat_run(dest, 1, st, op_sync, &full, err);
}

int cbi_catalog_rebuild(const char *dest, cbi_error *err)
{
	return cbi_catalog_sync(dest, 1, NULL, err);
}

/* ------------------------------------------------------------------ runs */

/* Can the SQLite catalog not live in dest (fusefat: cat_open())? The run
 * history is then kept in the run log (runlog.h). */
static int no_sqlite(const char *dest)
{
	struct stat ds;
	return stat(dest, &ds) == 0 && on_fusefat(ds.st_dev);
}

/* The warning a backup shows when the catalog could not record its run. */
static int not_recorded(int rc, cbi_error *err)
{
	char why[sizeof err->msg];
	if (!err)
		return rc;
	cbi_strlcpy(why, err->msg, sizeof why);
	return cbi_err(err, rc, "run not recorded in the catalog (the backup itself is unaffected): %s",
		       why);
}

typedef struct begin_arg {
	const char *host, *source_id, *source_path, *job;
	int64_t id;
	int kind;
} begin_arg;

static int op_begin(cat *c, void *arg, cbi_error *err)
{
	begin_arg *a = arg;
	sqlite3_stmt *s = NULL;
	int rc;
	if ((rc = cat_begin(c, err)))
		return rc;
	/* We hold the lock of (host, source, job): a run of it still marked
	 * running ended without recording its result (killed, power loss). */
	if ((rc = cat_prepare(c,
			      "UPDATE runs SET result = 'interrupted', message = CASE WHEN message = ''"
			      " THEN 'the run ended without recording its result' ELSE message END"
			      " WHERE result = 'running' AND host = ?1 AND source_id = ?2 AND job = ?3",
			      &s, err)))
		goto end;
	sqlite3_bind_text(s, 1, a->host, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 2, a->source_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 3, a->job, -1, SQLITE_TRANSIENT);
	if ((rc = step_reset(c, s, err)))
		goto end;
	sqlite3_finalize(s);
	if ((rc = cat_prepare(c,
			      "INSERT INTO runs(host, source_id, source_path, job, started_ns, result, kind)"
			      " VALUES(?1, ?2, ?3, ?4, ?5, 'running', ?6)",
			      &s, err)))
		goto end;
	sqlite3_bind_text(s, 1, a->host, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 2, a->source_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 3, a->source_path, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 4, a->job, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 5, cbi_wallclock_ns());
	sqlite3_bind_text(s, 6, a->kind == CBI_RUN_PRUNE ? "prune" : "backup", -1, SQLITE_STATIC);
	if ((rc = step_reset(c, s, err)))
		goto end;
	a->id = sqlite3_last_insert_rowid(c->db);
	rc = cat_commit(c, err);
end:
	sqlite3_finalize(s);
	cat_rollback(c);
	if (rc)
		a->id = 0;
	return rc;
}

static int run_begin(const char *dest, int kind, const char *host, const char *source_id,
		     const char *source_path, const char *job, int64_t *run_id, cbi_error *err)
{
	begin_arg a = { host ? host : "", source_id ? source_id : "", source_path ? source_path : "",
			job ? job : "", 0, kind };
	if (no_sqlite(dest)) {
		int rc = cbi_runlog_begin_kind(dest, kind, host, source_id, source_path, job, run_id, err);
		return rc ? not_recorded(rc, err) : 0;
	}
	int rc = cat_run(dest, 1, NULL, op_begin, &a, err);
	*run_id = rc ? 0 : a.id;
	return rc ? not_recorded(rc, err) : 0;
}

int cbi_catalog_run_begin(const char *dest, const char *host, const char *source_id,
			  const char *source_path, const char *job, int64_t *run_id, cbi_error *err)
{
	return run_begin(dest, CBI_RUN_BACKUP, host, source_id, source_path, job, run_id, err);
}

int cbi_catalog_prune_begin(const char *dest, const char *host, const char *source_id,
			    const char *source_path, const char *job, int64_t *run_id, cbi_error *err)
{
	return run_begin(dest, CBI_RUN_PRUNE, host, source_id, source_path, job, run_id, err);
}

typedef struct end_arg {
	int64_t id;
	int result;
	const char *message;
	const cbi_backup_result *r;
	uint32_t removed;
} end_arg;

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

/* The rows of the point a backup has just written. The catalog's role
 * (issue 10): it is a cache of what the files say, for listing (cbimg list,
 * log), and never the ground for a decision: backup, restore, verify and
 * info open the chain's files themselves (the chain reader, chainrd.h),
 * which they must read anyway to trust them. So the run-end update does not
 * read the two files the backup has just written (and knows): their rows
 * are made from the backup's result, r->point, which holds what the files
 * say; only their fingerprints (size, mtime, segments) come from stat(). */
static int new_point_rows(const cbi_point *p, fent f[2], frow rows[2], size_t *n)
{
	const char *paths[2] = { p->index_file, p->file };
	*n = 0;
	for (int i = 0; i < 2; i++) {
		if (!paths[i][0] || fingerprint(paths[i], &f[*n]))
			continue;
		if (!(f[*n].name = strdup(base_name(paths[i]))))
			return -ENOMEM;
		frow *row = &rows[*n];
		memset(row, 0, sizeof *row);
		row->f = &f[*n];
		row->kind = i == 0 ? CBI_KIND_INDEX : CBI_KIND_IMAGE;
		row->p = *p;
		if (i == 1) {
			/* what an image's trailer says (cbi_point_read_file()) */
			row->p.zero_blocks = 0;
			row->p.index_bytes = 0;
			row->p.index_file[0] = 0;
		} else {
			row->p.file[0] = 0;
		}
		(*n)++;
	}
	return 0;
}

static int op_end(cat *c, void *arg, cbi_error *err)
{
	end_arg *a = arg;
	const cbi_backup_result *r = a->r;
	const cbi_point *p = &r->point;
	int has_point = a->result == CBI_RUN_OK && p->index_file[0];
	sqlite3_stmt *s = NULL;
	fent f[2] = { { 0 } };
	frow *rows = NULL;
	size_t nrows = 0;
	int rc;
	if ((rc = cat_begin(c, err)))
		return rc;
	if ((rc = cat_prepare(c,
			      "UPDATE runs SET ended_ns = ?2, result = ?3, message = ?4, bytes_read = ?5,"
			      " bytes_written = ?6, type = ?7, point_id = ?8, file = ?9, index_file = ?10,"
			      " points_removed = ?11 WHERE id = ?1",
			      &s, err)))
		goto end;
	sqlite3_bind_int64(s, 1, a->id);
	sqlite3_bind_int64(s, 2, cbi_wallclock_ns());
	sqlite3_bind_text(s, 3, cbi_run_result_name(a->result), -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, a->message ? a->message : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 5, (int64_t)r->bytes_read);
	sqlite3_bind_int64(s, 6, (int64_t)r->bytes_written);
	sqlite3_bind_int64(s, 11, a->removed);
	if (has_point) {
		sqlite3_bind_int64(s, 7, p->type);
		sqlite3_bind_blob(s, 8, p->point_id, 16, SQLITE_TRANSIENT);
		if (p->file[0])
			sqlite3_bind_text(s, 9, base_name(p->file), -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(s, 10, base_name(p->index_file), -1, SQLITE_TRANSIENT);
	}
	if ((rc = step_reset(c, s, err)))
		goto end;
	/* no row: the catalog was deleted or replaced while the backup ran */
	int lost = sqlite3_changes(c->db) == 0;
	if ((rc = cat_commit(c, err)))
		goto end;
	if (lost)
		rc = cbi_err(err, -ENOENT, "catalog '%s' was replaced while the backup ran", c->path);
	if (!has_point)
		goto end;
	/* The new point's rows, read from its files, so that the next listing
	 * need not open them. */
	if (!(rows = malloc(2 * sizeof *rows)) || new_point_rows(p, f, rows, &nrows)) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if (nrows && !c->other_dir) {
		int frc = flush(c, 0, NULL, 0, rows, nrows, lost ? NULL : err);
		if (!lost)
			rc = frc; /* else keep the warning above */
	}
end:
	sqlite3_finalize(s);
	cat_rollback(c);
	free(f[0].name);
	free(f[1].name);
	free(rows);
	return rc;
}

/* An outbox's run: its row goes, and the catalog file with it when no run
 * is left (holding the write lock while it is unlinked). */
static int op_forget(cat *c, void *arg, cbi_error *err)
{
	end_arg *a = arg;
	char sql[96], journal[4200];
	int64_t left = 0;
	int rc;
	snprintf(sql, sizeof sql, "DELETE FROM runs WHERE id = %lld", (long long)a->id);
	if ((rc = cat_begin(c, err)) || (rc = cat_exec(c, sql, "write it", err)) ||
	    (rc = cat_int(c, "SELECT count(*) FROM runs", &left, err)))
		goto end;
	if (left) {
		rc = cat_commit(c, err);
		goto end;
	}
	snprintf(journal, sizeof journal, "%s-journal", c->path);
	if (unlink(c->path) < 0) {
		rc = cbi_err(err, -errno, "unable to remove catalog '%s': %s", c->path, strerror(errno));
		goto end;
	}
	unlink(journal);
end:
	cat_rollback(c);
	return rc;
}

static int run_end(const char *dest, int64_t run_id, int result_code, const char *message,
		   const cbi_backup_result *r, int may_forget, cbi_error *err)
{
	if (!run_id)
		return 0;
	end_arg a = { run_id,
		      result_code == 0 ? CBI_RUN_OK :
		      result_code == -ECANCELED ? CBI_RUN_INTERRUPTED : CBI_RUN_FAILED,
		      message, r, 0 };
	/* An outbox keeps no history (outbox_shaped()): a DEST without a full
	 * that holds points, or into which this run continued a chain from the
	 * local state. A DEST holding a full (this run's, or any) is none. */
	int forget = 0;
	if (may_forget && !(a.result == CBI_RUN_OK && r->point.type == CBI_FULL)) {
		cbi_point *pts = NULL;
		size_t n = 0;
		if (!cbi_chain_scan(dest, &pts, &n, NULL))
			forget = outbox_shaped(pts, n) || (r->from_state && !n);
		free(pts);
	}
	int rc;
	if (no_sqlite(dest))
		rc = cbi_runlog_end(dest, run_id, a.result, message, r, forget, err);
	else
		/* a catalog is made only where this run's lock file is: not in
		 * the directory below a DEST that was (lazily) unmounted meanwhile */
		rc = cat_run(dest, catalog_exists(dest) || is_backup_dest(dest), NULL, forget ? op_forget : op_end,
			     &a, err);
	return rc ? not_recorded(rc, err) : 0;
}

int cbi_catalog_run_end(const char *dest, int64_t run_id, int result_code, const char *message,
			const cbi_backup_result *r, cbi_error *err)
{
	return run_end(dest, run_id, result_code, message, r, 1, err);
}

int cbi_catalog_run_end_kept(const char *dest, int64_t run_id, int result_code, const char *message,
			     const cbi_backup_result *r, cbi_error *err)
{
	return run_end(dest, run_id, result_code, message, r, 0, err);
}

int cbi_catalog_prune_end(const char *dest, int64_t run_id, int result_code, const char *message,
			  uint64_t bytes_read, uint64_t bytes_written, uint32_t points_removed, cbi_error *err)
{
	if (!run_id)
		return 0;
	cbi_backup_result r;
	memset(&r, 0, sizeof r);
	r.bytes_read = bytes_read;
	r.bytes_written = bytes_written;
	end_arg a = { run_id,
		      result_code == 0 ? CBI_RUN_OK :
		      result_code == -ECANCELED ? CBI_RUN_INTERRUPTED : CBI_RUN_FAILED,
		      message, &r, points_removed };
	int rc;
	if (no_sqlite(dest))
		return cbi_runlog_end_removed(dest, run_id, a.result, message, &r, points_removed, 0, err);
	if ((rc = cat_run(dest, 1, NULL, op_end, &a, err)))
		return not_recorded(rc, err);
	return cbi_catalog_sync(dest, 0, NULL, err);
}

typedef struct log_arg {
	const cbi_list_filter *f;
	cbi_run *runs;
	size_t n;
} log_arg;

static int op_log(cat *c, void *arg, cbi_error *err)
{
	log_arg *a = arg;
	sqlite3_stmt *s = NULL;
	size_t cap = 0;
	int rc = cat_prepare(c,
			     "SELECT id, host, source_id, source_path, job, started_ns, ended_ns, result,"
			     " message, bytes_read, bytes_written, type, point_id, file, index_file, kind, points_removed"
			     " FROM runs WHERE " FILTER_SQL " ORDER BY id DESC LIMIT ?4",
			     &s, err);
	if (rc)
		return rc;
	bind_filter(s, a->f);
	sqlite3_bind_int64(s, 4, a->f && a->f->limit ? (int64_t)CBI_MIN(a->f->limit, (size_t)INT64_MAX) : -1);
	int r;
	while ((r = sqlite3_step(s)) == SQLITE_ROW) {
		if (a->n == cap) {
			size_t nc = cap ? cap * 2 : 64;
			cbi_run *t = realloc(a->runs, nc * sizeof *t);
			if (!t) {
				rc = cbi_err(err, -ENOMEM, "out of memory");
				break;
			}
			a->runs = t;
			cap = nc;
		}
		cbi_run *u = &a->runs[a->n++];
		char res[32];
		memset(u, 0, sizeof *u);
		u->id = sqlite3_column_int64(s, 0);
		col_str(s, 1, u->host, sizeof u->host);
		col_str(s, 2, u->source_id, sizeof u->source_id);
		col_str(s, 3, u->source_path, sizeof u->source_path);
		col_str(s, 4, u->job, sizeof u->job);
		u->started_ns = sqlite3_column_int64(s, 5);
		u->ended_ns = sqlite3_column_int64(s, 6);
		col_str(s, 7, res, sizeof res);
		u->result = result_code(res);
		if (u->result < 0)
			u->result = CBI_RUN_FAILED;
		col_str(s, 8, u->message, sizeof u->message);
		u->bytes_read = (uint64_t)sqlite3_column_int64(s, 9);
		u->bytes_written = (uint64_t)sqlite3_column_int64(s, 10);
		u->type = sqlite3_column_int(s, 11);
		col_blob(s, 12, u->point_id, 16);
		col_str(s, 13, u->file, sizeof u->file);
		col_str(s, 14, u->index_file, sizeof u->index_file);
		col_str(s, 15, res, sizeof res);
		u->kind = !strcmp(res, "prune") ? CBI_RUN_PRUNE : CBI_RUN_BACKUP;
		u->points_removed = (uint32_t)sqlite3_column_int64(s, 16);
	}
	if (!rc && r != SQLITE_DONE)
		rc = cat_fail(c, err, r, "read it");
	sqlite3_finalize(s);
	if (rc) {
		free(a->runs);
		a->runs = NULL;
		a->n = 0;
		return rc;
	}
	for (size_t i = 0, j = a->n ? a->n - 1 : 0; i < j; i++, j--) { /* oldest first */
		cbi_run t = a->runs[i];
		a->runs[i] = a->runs[j];
		a->runs[j] = t;
	}
	return 0;
}

int cbi_log(const char *dest, const cbi_list_filter *f, cbi_run **out, size_t *n, cbi_error *err)
{
	log_arg a = { .f = f };
	struct stat ds;
	*out = NULL;
	*n = 0;
	if (stat(dest, &ds) < 0)
		return cbi_err(err, -errno, "unable to open directory '%s': %s", dest, strerror(errno));
	if (!S_ISDIR(ds.st_mode))
		return cbi_err(err, -ENOTDIR, "'%s' is not a directory", dest);
	if (!catalog_exists(dest)) {
		/* A DEST where the catalog cannot live keeps a run log; else no
		 * backup has run here (or the catalog was deleted). */
		if (cbi_runlog_exists(dest) || no_sqlite(dest))
			return cbi_runlog_read(dest, f, out, n, err);
		return 0;
	}
	int rc = cat_run(dest, 0, NULL, op_log, &a, err);
	if (rc)
		return rc;
	*out = a.runs;
	*n = a.n;
	return 0;
}
