/* test_catalog_adv.c - the catalog checks what it caches (issue 15, item
 * 7): each file row carries a cheap identity of its file (the inode numbers
 * of the file and its segments, bound to the table of the row), so that
 *  - a row moved to another table (a point moved to "ignored"), its name,
 *    size and mtime kept, is noticed and the file read again: list shows
 *    every point that the files hold;
 *  - a file replaced through a rename by another one of the same name, size
 *    and mtime is read again;
 *  - a catalog without identities (made before them) gets them in place and
 *    keeps working;
 * and (item 9) no catalog is made in the directory below a DEST unmounted
 * during a run, and a link planted at a corrupt catalog's journal name is
 * never moved aside with it. */
#include "testutil.h"

#include <sqlite3.h>

#include "catalog.h"
#include "chain.h"
#include "dest.h"
#include "util.h"

#define SRC_SIZE (64u * 1024u + 512u)

typedef struct fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	char db[4096];
	cbi_backup_result r[2];
} fix;

static int setup(void **state)
{
	fix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	snprintf(f->db, sizeof f->db, "%.3000s/%s", f->dest, CBI_CATALOG_NAME);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	tu_write_pattern(f->src, SRC_SIZE, 1);
	for (int i = 0; i < 2; i++) {
		uint8_t b[4096];
		tu_fill_random(b, sizeof b, (uint64_t)i + 7);
		tu_pwrite(f->src, b, sizeof b, 0);
		cbi_backup_opts o = tu_bopts(f->src, f->dest);
		tu_backup_ok(&o, &f->r[i]);
	}
	return 0;
}

static int teardown(void **state)
{
	fix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f);
	}
	return 0;
}

static void sql(const char *db, const char *q)
{
	sqlite3 *h = NULL;
	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	char *msg = NULL;
	if (sqlite3_exec(h, q, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", q, msg ? msg : "?");
	sqlite3_free(msg);
	sqlite3_close(h);
}

/* The listing (from the catalog) equals the scan of the files. */
static size_t list_is_scan(const char *dest)
{
	cbi_point *l = NULL, *s = NULL;
	size_t nl = 0, ns = 0;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_list(dest, &l, &nl, &e), 0);
	assert_int_equal(cbi_chain_scan(dest, &s, &ns, &e), 0);
	cbi_list_sort(s, ns);
	assert_int_equal(nl, ns);
	for (size_t i = 0; i < ns; i++) {
		assert_memory_equal(l[i].point_id, s[i].point_id, 16);
		assert_memory_equal(l[i].index_digest, s[i].index_digest, 32);
		assert_string_equal(l[i].index_file, s[i].index_file);
		assert_string_equal(l[i].file, s[i].file);
	}
	free(l);
	free(s);
	return nl;
}

static const char *base(const char *path)
{
	return strrchr(path, '/') + 1;
}

static void test_row_moved_to_ignored(void **state)
{
	fix *f = *state;
	assert_int_equal(list_is_scan(f->dest), 2);
	char q[2048];
	/* the incremental's index row to "ignored", name, size and mtime kept */
	snprintf(q, sizeof q,
		 "BEGIN; INSERT INTO ignored(name, size, mtime_ns, reason) SELECT name, size, mtime_ns,"
		 " 'planted' FROM points WHERE name = '%s'; DELETE FROM points WHERE name = '%s'; COMMIT",
		 base(f->r[1].point.index_file), base(f->r[1].point.index_file));
	sql(f->db, q);
	assert_int_equal(list_is_scan(f->dest), 2);
	/* the same for the image row: the point would be listed without its image */
	snprintf(q, sizeof q,
		 "BEGIN; INSERT INTO ignored(name, size, mtime_ns, reason) SELECT name, size, mtime_ns,"
		 " 'planted' FROM images WHERE name = '%s'; DELETE FROM images WHERE name = '%s'; COMMIT",
		 base(f->r[0].point.file), base(f->r[0].point.file));
	sql(f->db, q);
	assert_int_equal(list_is_scan(f->dest), 2);
}

static void test_file_replaced_same_size_and_mtime(void **state)
{
	fix *f = *state;
	assert_int_equal(list_is_scan(f->dest), 2);
	/* the incremental's index replaced, through a rename, by a copy of the
	 * full's (index files of one source have one size), its mtime set back */
	const char *inc = f->r[1].point.index_file;
	struct stat st;
	assert_int_equal(stat(inc, &st), 0);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s/x.tmp", f->dir);
	tu_copy_file(f->r[0].point.index_file, tmp);
	assert_int_equal(tu_file_size(tmp), st.st_size);
	struct timespec ts[2] = { st.st_atim, st.st_mtim };
	assert_int_equal(utimensat(AT_FDCWD, tmp, ts, 0), 0);
	assert_int_equal(rename(tmp, inc), 0);
	cbi_catalog_stats cs;
	cbi_error e;
	assert_int_equal(cbi_catalog_sync(f->dest, 0, &cs, &e), 0);
	assert_int_equal(cs.opened, 1);
	list_is_scan(f->dest);
}

static void test_catalog_without_idents(void **state)
{
	fix *f = *state;
	sql(f->db, "DROP TABLE idents");
	/* rows without an identity are trusted as before (a catalog made before them) */
	cbi_catalog_stats cs;
	cbi_error e;
	assert_int_equal(cbi_catalog_sync(f->dest, 0, &cs, &e), 0);
	assert_int_equal(cs.opened, 0);
	assert_int_equal(list_is_scan(f->dest), 2);
	/* a full sync records them: a moved row is then noticed */
	assert_int_equal(cbi_catalog_sync(f->dest, 1, &cs, &e), 0);
	char q[2048];
	snprintf(q, sizeof q,
		 "BEGIN; INSERT INTO ignored(name, size, mtime_ns, reason) SELECT name, size, mtime_ns,"
		 " 'planted' FROM points WHERE name = '%s'; DELETE FROM points WHERE name = '%s'; COMMIT",
		 base(f->r[0].point.index_file), base(f->r[0].point.index_file));
	sql(f->db, q);
	assert_int_equal(list_is_scan(f->dest), 2);
}

/* Item 9: a run that ends after its DEST was lazily unmounted finds, at the
 * same path, the directory below: no catalog is made there (no lock file of
 * a backup in it). */
static void test_run_end_in_the_directory_below(void **state)
{
	fix *f = *state;
	cbi_error e;
	int64_t id = 0;
	assert_int_equal(cbi_catalog_run_begin(f->dest, "h", "s", "/dev/x", "j", &id, &e), 0);
	assert_true(id > 0);
	/* the "unmount": DEST's name now shows another, empty directory */
	char moved[4096];
	snprintf(moved, sizeof moved, "%s/dest.mounted", f->dir);
	assert_int_equal(rename(f->dest, moved), 0);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	cbi_backup_result r;
	memset(&r, 0, sizeof r);
	memset(&e, 0, sizeof e);
	assert_int_not_equal(cbi_catalog_run_end(f->dest, id, -EIO, "lost", &r, &e), 0);
	assert_false(tu_exists(f->db));
	assert_int_equal(tu_count(f->dest, "", 1), 0);
}

/* Item 9: a symbolic link planted at the journal's name of a corrupt
 * catalog is removed, never moved aside with it (nor followed). */
static void test_corrupt_catalog_journal_link(void **state)
{
	fix *f = *state;
	char target[4096], journal[4200], aside[4200];
	snprintf(target, sizeof target, "%s/target", f->dir);
	snprintf(journal, sizeof journal, "%s-journal", f->db);
	snprintf(aside, sizeof aside, "%s.corrupt-journal", f->db);
	tu_write_file(target, "keep", 4);
	uint8_t junk[4096];
	tu_fill_random(junk, sizeof junk, 5);
	tu_write_file(f->db, junk, sizeof junk);
	assert_int_equal(symlink(target, journal), 0);
	assert_int_equal(list_is_scan(f->dest), 2);
	struct stat st;
	assert_true(lstat(aside, &st) < 0 || !S_ISLNK(st.st_mode));
	assert_true(lstat(journal, &st) < 0 || !S_ISLNK(st.st_mode));
	assert_true(tu_file_equals(target, "keep", 4));
	assert_true(tu_exists(tu_path(f->dest, CBI_CATALOG_NAME ".corrupt")));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_row_moved_to_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_replaced_same_size_and_mtime, setup, teardown),
		cmocka_unit_test_setup_teardown(test_catalog_without_idents, setup, teardown),
		cmocka_unit_test_setup_teardown(test_run_end_in_the_directory_below, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_catalog_journal_link, setup, teardown),
	};
	return cmocka_run_group_tests_name("catalog_adv", tests, NULL, NULL);
}
