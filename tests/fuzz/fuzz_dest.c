/* fuzz_dest.c - the catalog's view of a DEST: a directory built from the
 * input, scanned as every command scans it (dest.c: cbi_dest_scan with
 * stat, read and key files, cbi_dest_points), listed through the catalog
 * (catalog.c: cbi_list_filtered, which opens, checks, upgrades, resets or
 * moves aside DEST/cbimg-catalog.sqlite, a SQLite file that may come from
 * the input too, and brings it up to date from the files), the run history
 * (cbi_log: the catalog's runs, or the run log cbimg-log.jsonl, runlog.c)
 * and, on request, a full rebuild (cbi_catalog_sync).
 *
 * Input: a control byte, then entries: a selector byte, a u16 length (LE)
 * and that many bytes. A selector below NNAMES names the entry from the
 * table below; else the entry's first byte is the length of its name,
 * which follows ('/' and NUL replaced). Selector bit 0x80 makes the entry a
 * directory, 0x40 a symbolic link to the previous entry.
 * Control bits: FZ_FIX_HDR makes a catalog from the input this directory's
 * (its meta dir_dev/dir_ino), so that its rows are read rather than reset;
 * 0x10 runs a sync, 0x20 a full one (catalog rebuild); 0x40 filters. */
#include "fuzz.h"

#include <sqlite3.h>

#include "catalog.h"
#include "dest.h"

static const char *const names[] = {
	"h_d_j_20260101T000000Z_full0000_aaaaaaaa.cbx",
	"h_d_j_20260101T000000Z_full0000_aaaaaaaa.cbi",
	"h_d_j_20260101T000001Z_incr0001_bbbbbbbb.cbx",
	"h_d_j_20260101T000001Z_incr0001_bbbbbbbb.cbi",
	"h_d_j_20260101T000002Z_incr0002_cccccccc.cbx",
	"h_d_j_20260101T000002Z_incr0002_cccccccc.cbi",
	"h_d_j_20260101T000000Z_full0000_aaaaaaaa.cbi.001",
	"h_d_j_20260101T000000Z_full0000_aaaaaaaa.cbx.001",
	"h_d_j_key_aaaaaaaa.cbk",
	CBI_CATALOG_NAME,
	CBI_CATALOG_NAME "-journal",
	"cbimg-log.jsonl",
	".cbimg.lock",
	".h_d_j_20260101T000000Z_full0000_aaaaaaaa.cbi.4242.tmp",
	CBI_CATALOG_NAME ".corrupt",
	"other.cbx",
	"other.cbi",
	"h_d_j_key_bbbbbbbb.cbk",
};
#define NNAMES (sizeof names / sizeof names[0])

/* Make the catalog at path (if it is one) this directory's. */
static void adopt_catalog(const char *path, const char *dir)
{
	struct stat ds, fs;
	if (stat(dir, &ds) < 0 || lstat(path, &fs) < 0 || !S_ISREG(fs.st_mode))
		return;
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
		char sql[200];
		snprintf(sql, sizeof sql,
			 "UPDATE meta SET value=%lld WHERE key='dir_dev'; UPDATE meta SET value=%lld WHERE key='dir_ino'",
			 (long long)ds.st_dev, (long long)ds.st_ino);
		sqlite3_exec(db, sql, NULL, NULL, NULL);
	}
	sqlite3_close_v2(db);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t ctl = data[0];
	const uint8_t *p = data + 1;
	size_t left = size - 1;
	const char *dir = fz_dir();
	char prev[300] = "", path[4096];
	int have_cat = 0;
	for (int count = 0; left >= 3 && count < 64; count++) {
		uint8_t sel = p[0];
		size_t len = CBI_MIN((size_t)ld16(p + 1), left - 3);
		const uint8_t *b = p + 3;
		p += 3 + len;
		left -= 3 + len;
		char name[300];
		unsigned idx = sel & 0x3f;
		if (idx < NNAMES) {
			cbi_strlcpy(name, names[idx], sizeof name);
		} else {
			if (!len)
				continue;
			size_t nl = CBI_MIN((size_t)b[0], len - 1);
			if (!nl)
				continue;
			for (size_t i = 0; i < nl; i++)
				name[i] = b[1 + i] == '/' || b[1 + i] == 0 ? '_' : (char)b[1 + i];
			name[nl] = 0;
			if (!strcmp(name, ".") || !strcmp(name, ".."))
				continue;
			b += 1 + nl;
			len -= 1 + nl;
		}
		fz_path(path, sizeof path, dir, name);
		/* a later entry of the same name replaces an earlier one, whatever it was */
		fz_rm_tree(path, 1);
		if (sel & 0x80) {
			(void)mkdir(path, 0700);
		} else if (sel & 0x40) {
			if (prev[0])
				(void)symlink(prev, path);
		} else {
			fz_write(path, b, len);
			if (!strcmp(name, CBI_CATALOG_NAME))
				have_cat = 1;
		}
		cbi_strlcpy(prev, name, sizeof prev);
	}
	if (have_cat && (ctl & FZ_FIX_HDR)) {
		fz_path(path, sizeof path, dir, CBI_CATALOG_NAME);
		adopt_catalog(path, dir);
	}

	cbi_error err;
	memset(&err, 0, sizeof err);
	cbi_dest *d = NULL;
	cbi_point *pts = NULL;
	size_t np = 0;
	if (cbi_dest_scan(dir, CBI_DEST_STAT | CBI_DEST_READ | CBI_DEST_KEYS, &d, &err) == 0) {
		if (cbi_dest_points(d, &pts, &np, &err) == 0)
			free(pts);
		(void)cbi_dest_find(d, names[0]);
		cbi_dest_free(d);
	}
	cbi_list_filter f = { .host = "h", .source = "d", .job = "j", .limit = 3 };
	const cbi_list_filter *fp = (ctl & 0x40) ? &f : NULL;
	if (cbi_list_filtered(dir, fp, &pts, &np, &err) == 0)
		free(pts);
	cbi_run *runs = NULL;
	size_t nr = 0;
	if (cbi_log(dir, fp, &runs, &nr, &err) == 0)
		free(runs);
	if (ctl & 0x10) {
		cbi_catalog_stats st;
		FZ_TRY(cbi_catalog_sync(dir, (ctl & 0x20) != 0, &st, &err));
		if (cbi_list_filtered(dir, fp, &pts, &np, &err) == 0)
			free(pts);
	}
	fz_rm_tree(dir, 0);
	return 0;
}
