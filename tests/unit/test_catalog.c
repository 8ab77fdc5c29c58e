/* test_catalog.c - the SQLite catalog of a destination directory: built and
 * kept up to date from the files (new, changed, renamed, vanished files, a
 * catalog copied from another directory, a corrupt one), filters, the run
 * history through cbi_backup() (ok, failed, interrupted, concurrent
 * writers), and backups that go on when the catalog cannot be used. A
 * listing from the catalog must always equal the scan of the files. */
#include "testutil.h"

#include <sqlite3.h>
#include <sys/wait.h>
#include <time.h>

#include "catalog.h"
#include "chain.h"
#include "util.h"

#define SRC_SIZE (64u * 1024u + 512u)

typedef struct cat_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	char db[4096];     /* DEST/cbimg-catalog.sqlite */
} cat_fix;

static int setup_cat(void **state)
{
	cat_fix *c = calloc(1, sizeof *c);
	if (!c)
		return -1;
	*state = c;
	tu_mkdtemp(c->dir, sizeof c->dir);
	snprintf(c->src, sizeof c->src, "%s/disk.img", c->dir);
	snprintf(c->dest, sizeof c->dest, "%s/dest", c->dir);
	snprintf(c->db, sizeof c->db, "%.3000s/%s", c->dest, CBI_CATALOG_NAME);
	assert_int_equal(mkdir(c->dest, 0755), 0);
	tu_write_pattern(c->src, SRC_SIZE, 1);
	return 0;
}

static int teardown_cat(void **state)
{
	cat_fix *c = *state;
	if (c) {
		tu_rm_rf(c->dir);
		free(c);
	}
	return 0;
}

/* A backup of src (its first block changed by seed) as host/sid/job. */
static void backup_as(const char *src, const char *dest, const char *host, const char *sid,
		      const char *job, uint64_t seed, cbi_backup_result *r)
{
	uint8_t b[4096];
	tu_fill_random(b, sizeof b, seed);
	tu_pwrite(src, b, sizeof b, 0);
	cbi_backup_opts o = tu_bopts(src, dest);
	o.host = host;
	o.source_id = sid;
	o.job = job;
	tu_backup_ok(&o, r);
	if (r->warning[0])
		fail_msg("unexpected warning: %s", r->warning);
}

/* Three points: two of job a (a chain), one of job b. */
static void three_points(cat_fix *c, cbi_backup_result r[3])
{
	backup_as(c->src, c->dest, "h1", "s1", "a", 1, &r[0]);
	backup_as(c->src, c->dest, "h1", "s1", "a", 2, &r[1]);
	backup_as(c->src, c->dest, "h1", "s1", "b", 3, &r[2]);
}

static cbi_catalog_stats sync_ok(const char *dest, int full)
{
	cbi_catalog_stats st;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_catalog_sync(dest, full, &st, &e);
	if (rc)
		fail_msg("cbi_catalog_sync(%s) = %d: %s", dest, rc, e.msg);
	return st;
}

static int filter_match(const cbi_list_filter *f, const cbi_point *p)
{
	return !f || ((!f->host || !*f->host || !strcmp(f->host, p->host)) &&
		      (!f->source || !*f->source || !strcmp(f->source, p->source_id) ||
		       !strcmp(f->source, p->source_path)) &&
		      (!f->job || !*f->job || !strcmp(f->job, p->job)));
}

/* cbi_list_filtered() equals the scan of the files, filtered; returns n. */
static size_t list_equals_scan(const char *dest, const cbi_list_filter *f)
{
	cbi_point *l = NULL, *s = NULL;
	size_t nl = 0, ns = 0, k = 0;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_list_filtered(dest, f, &l, &nl, &e), 0);
	assert_int_equal(cbi_chain_scan(dest, &s, &ns, &e), 0);
	cbi_list_sort(s, ns); /* the listing's order: by group, then creation time */
	for (size_t i = 0; i < ns; i++) {
		if (!filter_match(f, &s[i]))
			continue;
		assert_true(k < nl);
		if (memcmp(&l[k], &s[i], sizeof s[i]))
			fail_msg("point %zu differs: catalog '%s' seq %u, files '%s' seq %u", k,
				 l[k].index_file, l[k].seq, s[i].index_file, s[i].seq);
		k++;
	}
	assert_int_equal(k, nl);
	free(l);
	free(s);
	return nl;
}

static size_t list_count(const char *dest, const cbi_list_filter *f)
{
	cbi_point *l = NULL;
	size_t n = 0;
	assert_int_equal(cbi_list_filtered(dest, f, &l, &n, NULL), 0);
	free(l);
	return n;
}

static cbi_run *log_ok(const char *dest, const cbi_list_filter *f, size_t *n)
{
	cbi_run *runs = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_log(dest, f, &runs, n, &e);
	if (rc)
		fail_msg("cbi_log(%s) = %d: %s", dest, rc, e.msg);
	return runs;
}

static void set_mtime(const char *path, time_t sec)
{
	struct timespec ts[2] = { { sec, 0 }, { sec, 0 } };
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static const char *base(const char *path)
{
	return strrchr(path, '/') + 1;
}

/* ------------------------------------------------------------------ tests */

static void test_built_by_backups_and_rebuilt(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r[3];
	three_points(c, r);
	assert_true(tu_exists(c->db));
	/* the backups put their points in: nothing to read */
	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_int_equal(st.files, 6);
	assert_int_equal(st.opened, 0);
	assert_int_equal(st.removed, 0);
	assert_false(st.created);
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);

	/* deleted: made again from the files, on the next listing */
	assert_int_equal(unlink(c->db), 0);
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);
	assert_true(tu_exists(c->db));
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 0);

	/* an explicit rebuild reads every file and keeps the runs */
	assert_int_equal(unlink(c->db), 0);
	backup_as(c->src, c->dest, "h1", "s1", "b", 4, &r[0]);
	cbi_error e;
	assert_int_equal(cbi_catalog_rebuild(c->dest, &e), 0);
	st = sync_ok(c->dest, 1);
	assert_int_equal(st.files, 8);
	assert_int_equal(st.opened, 8);
	assert_int_equal(list_equals_scan(c->dest, NULL), 4);
	size_t n = 0;
	cbi_run *runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 1); /* the three before the deletion are forgotten */
	free(runs);
	/* no leftovers of the journal */
	assert_false(tu_exists(tu_path(c->dest, CBI_CATALOG_NAME "-journal")));
}

static void test_stale_rows_follow_the_files(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r[3];
	three_points(c, r);
	(void)sync_ok(c->dest, 0);

	/* renamed files: the old names vanish, the new ones are read */
	assert_int_equal(rename(r[1].point.index_file, tu_path(c->dest, "renamed.cbx")), 0);
	assert_int_equal(rename(r[1].point.file, tu_path(c->dest, "renamed.cbi")), 0);
	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 2);
	assert_int_equal(st.removed, 2);
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);

	/* a file that is no point: read once, then remembered as such */
	tu_write_file(tu_path(c->dest, "junk.cbx"), "not an index", 12);
	tu_write_file(tu_path(c->dest, "notes.txt"), "x", 1);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 1);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 0);
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);

	/* a changed file (new mtime) is read again */
	set_mtime(r[0].point.index_file, 1000000000);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 1);
	assert_int_equal(st.removed, 0);

	/* an index replaced by a damaged one of another size */
	size_t len;
	uint8_t *b = tu_read_file(r[2].point.index_file, &len);
	tu_write_file(r[2].point.index_file, b, len - 1);
	free(b);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 1);
	assert_int_equal(list_equals_scan(c->dest, NULL), 2);

	/* an image whose index is gone; points without images */
	assert_int_equal(unlink(r[0].point.index_file), 0);
	assert_int_equal(unlink(tu_path(c->dest, "renamed.cbi")), 0);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 0);
	assert_int_equal(st.removed, 2);
	assert_int_equal(list_equals_scan(c->dest, NULL), 1);

	/* files written by someone who does not know the catalog (a copy, a
	 * cbimg without it): found */
	char other[4096];
	snprintf(other, sizeof other, "%s/other", c->dir);
	assert_int_equal(mkdir(other, 0755), 0);
	cbi_backup_result ro;
	backup_as(c->src, other, "h2", "s2", "c", 9, &ro);
	tu_copy_file(ro.point.index_file, tu_path(c->dest, base(ro.point.index_file)));
	tu_copy_file(ro.point.file, tu_path(c->dest, base(ro.point.file)));
	assert_int_equal(list_equals_scan(c->dest, NULL), 2);
	/* duplicates of an index and of an image count once, paired alike */
	tu_copy_file(ro.point.index_file, tu_path(c->dest, "zz-copy.cbx"));
	tu_copy_file(ro.point.file, tu_path(c->dest, "0-copy.cbi"));
	assert_int_equal(list_equals_scan(c->dest, NULL), 2);
}

static void test_catalog_from_another_dir(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r[3];
	three_points(c, r);
	(void)sync_ok(c->dest, 0);

	/* DEST copied elsewhere with its catalog, times kept, and one index
	 * replaced there by a damaged copy of the same size and time: a catalog
	 * that trusted names, sizes and times would still list it */
	char copy[4096];
	snprintf(copy, sizeof copy, "%s/copy", c->dir);
	assert_int_equal(mkdir(copy, 0755), 0);
	DIR *d = opendir(c->dest);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		const char *from = tu_path(c->dest, de->d_name), *to = tu_path(copy, de->d_name);
		struct stat st;
		assert_int_equal(stat(from, &st), 0);
		tu_copy_file(from, to);
		set_mtime(to, st.st_mtim.tv_sec);
		set_mtime(from, st.st_mtim.tv_sec);
	}
	closedir(d);
	(void)sync_ok(c->dest, 0); /* the times were reset */
	const char *victim = tu_path(copy, base(r[1].point.index_file));
	struct stat vs;
	assert_int_equal(stat(victim, &vs), 0);
	tu_flip_byte(victim, 100, 0x01); /* in the header: its checksum fails */
	set_mtime(victim, vs.st_mtim.tv_sec);

	cbi_catalog_stats st = sync_ok(copy, 0);
	assert_true(st.other_dir);
	assert_int_equal(st.opened, 6);
	/* r[1] damaged: r[0] and r[2] stay */
	assert_int_equal(list_equals_scan(copy, NULL), 2);
	st = sync_ok(copy, 0);
	assert_false(st.other_dir);
	assert_int_equal(st.opened, 0);
	/* the original is untouched */
	st = sync_ok(c->dest, 0);
	assert_false(st.other_dir);
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);
	/* the catalog alone, copied into a directory of other points */
	char lone[4096];
	snprintf(lone, sizeof lone, "%s/lone", c->dir);
	assert_int_equal(mkdir(lone, 0755), 0);
	cbi_backup_result rl;
	backup_as(c->src, lone, "h9", "s9", "z", 5, &rl);
	tu_copy_file(c->db, tu_path(lone, CBI_CATALOG_NAME));
	assert_int_equal(list_equals_scan(lone, NULL), 1);
}

static void test_corrupt_catalog_moved_aside(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r[3];
	three_points(c, r);
	const char *aside = tu_path(c->dest, CBI_CATALOG_NAME ".corrupt");

	/* garbage */
	uint8_t junk[8192];
	tu_fill_random(junk, sizeof junk, 7);
	tu_write_file(c->db, junk, sizeof junk);
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);
	assert_true(tu_exists(aside));
	assert_true(tu_file_equals(aside, junk, sizeof junk));
	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_false(st.moved_aside);
	assert_int_equal(st.opened, 0);

	/* a damaged page inside a real catalog */
	assert_int_equal(unlink(aside), 0);
	assert_true(tu_file_size(c->db) > 4096);
	tu_fill_random(junk, sizeof junk, 8);
	tu_pwrite(c->db, junk, sizeof junk, 4096); /* every page but the first */
	st = sync_ok(c->dest, 0);
	assert_true(st.moved_aside);
	assert_true(tu_exists(aside));
	assert_int_equal(list_equals_scan(c->dest, NULL), 3);

	/* another program's SQLite database under our name */
	assert_int_equal(unlink(aside), 0);
	assert_int_equal(unlink(c->db), 0);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(c->db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES(1)", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	st = sync_ok(c->dest, 0);
	assert_true(st.moved_aside);
	assert_true(st.created);
	assert_int_equal(st.opened, 6);
	assert_true(tu_exists(aside));

	/* the history survives neither, but backups and log go on */
	tu_write_file(c->db, junk, sizeof junk);
	backup_as(c->src, c->dest, "h1", "s1", "a", 11, &r[0]);
	size_t n = 0;
	cbi_run *runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 1);
	assert_int_equal(runs[0].result, CBI_RUN_OK);
	free(runs);
	assert_int_equal(list_equals_scan(c->dest, NULL), 4);
}

static void test_filters(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r;
	char src2[4096];
	snprintf(src2, sizeof src2, "%s/disk2.img", c->dir);
	tu_write_pattern(src2, SRC_SIZE, 2);
	backup_as(c->src, c->dest, "alpha", "disk:1", "daily", 1, &r);
	backup_as(c->src, c->dest, "alpha", "disk:1", "daily", 2, &r);
	backup_as(src2, c->dest, "alpha", "disk:2", "daily", 3, &r);
	backup_as(c->src, c->dest, "beta", "disk:1", "weekly", 4, &r);
	backup_as(src2, c->dest, "beta", "disk:2", "daily", 5, &r);

	struct {
		cbi_list_filter f;
		size_t points;
	} cases[] = {
		{ { NULL, NULL, NULL, 0 }, 5 },
		{ { "alpha", NULL, NULL, 0 }, 3 },
		{ { "beta", NULL, NULL, 0 }, 2 },
		{ { NULL, "disk:1", NULL, 0 }, 3 },
		{ { NULL, "disk:2", NULL, 0 }, 2 },
		{ { NULL, NULL, "daily", 0 }, 4 },
		{ { "beta", "disk:1", "weekly", 0 }, 1 },
		{ { "beta", "disk:1", "daily", 0 }, 0 },
		{ { "gamma", NULL, NULL, 0 }, 0 },
		{ { "", "", "", 0 }, 5 }, /* empty strings match anything */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_int_equal(list_equals_scan(c->dest, &cases[i].f), cases[i].points);
		size_t n = 0;
		cbi_run *runs = log_ok(c->dest, &cases[i].f, &n);
		assert_int_equal(n, cases[i].points); /* one ok run per point */
		free(runs);
	}
	/* --source also takes the source path */
	const char *path = r.point.source_path;
	cbi_list_filter f = { NULL, path, NULL, 0 };
	assert_int_equal(list_equals_scan(c->dest, &f), 2);
	/* the same without the catalog (unusable: a directory in its place) */
	assert_int_equal(unlink(c->db), 0);
	assert_int_equal(mkdir(c->db, 0755), 0);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_int_equal(list_count(c->dest, &cases[i].f), cases[i].points);
	assert_int_equal(list_count(c->dest, &f), 2);
}

static int cancel_at_once(void *ud, uint64_t done, uint64_t total)
{
	(void)ud;
	(void)done;
	(void)total;
	return 1;
}

static void test_runs_recorded(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r;
	cbi_error e;
	backup_as(c->src, c->dest, "h1", "s1", "a", 1, &r);
	int64_t t_ok = cbi_wallclock_ns();

	/* refused: the source size changed */
	tu_write_pattern(c->src, SRC_SIZE + 4096, 2);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	o.host = "h1";
	o.source_id = "s1";
	o.job = "a";
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EMISMATCH);
	/* cancelled */
	o.force_full = 1;
	o.progress = cancel_at_once;
	assert_int_equal(cbi_backup(&o, &r, &e), -ECANCELED);
	/* a run that never recorded its end (killed) is marked interrupted by
	 * the next run of the same host, source and job */
	int64_t id = 0;
	assert_int_equal(cbi_catalog_run_begin(c->dest, "h1", "s1", "/dev/x", "a", &id, &e), 0);
	assert_true(id > 0);
	size_t n = 0;
	cbi_run *runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 4);
	assert_int_equal(runs[3].result, CBI_RUN_RUNNING);
	assert_int_equal(runs[3].ended_ns, 0);
	free(runs);
	o.progress = NULL;
	tu_backup_ok(&o, &r);

	runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 5);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(runs[i].host, "h1");
		assert_string_equal(runs[i].source_id, "s1");
		assert_string_equal(runs[i].job, "a");
		assert_true(runs[i].started_ns > 0);
		if (i)
			assert_true(runs[i].id > runs[i - 1].id);
	}
	assert_int_equal(runs[0].result, CBI_RUN_OK);
	assert_true(runs[0].ended_ns >= runs[0].started_ns && runs[0].ended_ns <= t_ok);
	assert_int_equal(runs[0].bytes_read, SRC_SIZE);
	assert_true(runs[0].bytes_written > 0);
	assert_int_equal(runs[0].type, CBI_FULL);
	assert_true(strstr(runs[0].file, ".cbi") && !strchr(runs[0].file, '/'));
	assert_true(strstr(runs[0].index_file, ".cbx"));
	assert_string_equal(runs[0].message, "");

	assert_int_equal(runs[1].result, CBI_RUN_FAILED);
	assert_non_null(strstr(runs[1].message, "--full"));
	assert_string_equal(runs[1].file, "");
	assert_true(cbi_is_zero(runs[1].point_id, 16));
	assert_int_equal(runs[2].result, CBI_RUN_INTERRUPTED);
	assert_true(runs[2].ended_ns > 0);
	assert_int_equal(runs[3].result, CBI_RUN_INTERRUPTED);
	assert_int_equal(runs[3].ended_ns, 0);
	assert_non_null(strstr(runs[3].message, "without recording"));
	assert_int_equal(runs[4].result, CBI_RUN_OK);
	assert_memory_equal(runs[4].point_id, r.point.point_id, 16);
	assert_string_equal(runs[4].file, base(r.point.file));
	assert_int_equal(runs[4].bytes_written, r.bytes_written);
	free(runs);

	/* the newest N */
	cbi_list_filter f = { NULL, NULL, NULL, 2 };
	runs = log_ok(c->dest, &f, &n);
	assert_int_equal(n, 2);
	assert_int_equal(runs[0].result, CBI_RUN_INTERRUPTED);
	assert_int_equal(runs[1].result, CBI_RUN_OK);
	free(runs);

	/* the successful run put its point in the catalog */
	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 0);
	assert_int_equal(list_equals_scan(c->dest, NULL), 2);

	assert_string_equal(cbi_run_result_name(CBI_RUN_OK), "ok");
	assert_string_equal(cbi_run_result_name(CBI_RUN_FAILED), "failed");
	assert_string_equal(cbi_run_result_name(CBI_RUN_INTERRUPTED), "interrupted");
	assert_string_equal(cbi_run_result_name(CBI_RUN_RUNNING), "running");
	assert_string_equal(cbi_run_result_name(99), "unknown");
	assert_int_equal(cbi_catalog_run_end(c->dest, 0, 0, NULL, &r, &e), 0);
}

/* An interrupted run is logged with what it read and wrote before it
 * stopped (issue 14, item 13), not 0 B. */
static int cancel_after_data(void *ud, uint64_t done, uint64_t total)
{
	(void)total;
	uint64_t *at = ud;
	if (!done)
		return 0;
	*at = done;
	return 1;
}

static void test_interrupted_run_counts(void **state)
{
	cat_fix *c = *state;
	const char *big = tu_path(c->dir, "big.img");
	size_t size = 4u << 20;
	uint8_t *b = malloc(size);
	assert_non_null(b);
	tu_fill_random(b, size, 9);
	tu_write_file(big, b, size);
	free(b);
	cbi_backup_opts o = tu_bopts(big, c->dest);
	o.block_size = 64 * 1024;
	o.threads = 1;
	uint64_t at = 0;
	o.progress = cancel_after_data;
	o.progress_ud = &at;
	cbi_backup_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_backup(&o, &r, &e), -ECANCELED);
	assert_true(at > 0);
	assert_true(r.bytes_read >= at);
	assert_true(r.bytes_written > 0);
	size_t n = 0;
	cbi_run *runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 1);
	assert_int_equal(runs[0].result, CBI_RUN_INTERRUPTED);
	assert_int_equal(runs[0].bytes_read, r.bytes_read);
	assert_int_equal(runs[0].bytes_written, r.bytes_written);
	assert_true(runs[0].bytes_read > 0 && runs[0].bytes_written > 0);
	free(runs);
}

/* An outbox (a chain continued from the local state) holds no catalog, so
 * that shipping its files never replaces the remote's (item 17); nor does
 * a listing make one there. */
static void test_outbox_holds_no_catalog(void **state)
{
	cat_fix *c = *state;
	char sd[4096], out[4096];
	snprintf(sd, sizeof sd, "%s/state", c->dir);
	snprintf(out, sizeof out, "%s/outbox", c->dir);
	assert_int_equal(mkdir(out, 0755), 0);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	o.no_state = 0;
	o.state_dir = sd;
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_true(tu_exists(c->db));
	o.dest = out;
	o.outbox = 1; /* continuing from the local state needs --outbox (issue 14) */
	tu_backup_ok(&o, &r);
	assert_int_equal(r.from_state, 1);
	assert_false(tu_exists(tu_path(out, CBI_CATALOG_NAME)));
	tu_backup_ok(&o, &r); /* continues the outbox's own incremental */
	assert_int_equal(r.point.seq, 2);
	assert_false(tu_exists(tu_path(out, CBI_CATALOG_NAME)));
	cbi_point *pts = NULL;
	size_t n = 0;
	cbi_error e;
	assert_int_equal(cbi_list(out, &pts, &n, &e), 0);
	assert_int_equal(n, 2);
	free(pts);
	assert_false(tu_exists(tu_path(out, CBI_CATALOG_NAME)));
	/* a failed run there leaves none either */
	tu_write_pattern(c->src, SRC_SIZE + 4096, 2);
	assert_int_equal(cbi_backup(&o, &r, &e), -CBI_EMISMATCH);
	assert_false(tu_exists(tu_path(out, CBI_CATALOG_NAME)));
	/* the first DEST keeps its history */
	cbi_run *runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 1);
	free(runs);
}

static void test_backup_without_catalog(void **state)
{
	cat_fix *c = *state;
	/* the catalog cannot be created: a directory is in the way */
	assert_int_equal(mkdir(c->db, 0755), 0);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	assert_non_null(strstr(r.warning, "catalog"));
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 1);
	assert_non_null(strstr(r.warning, "catalog"));
	assert_int_equal(list_equals_scan(c->dest, NULL), 2);
	cbi_run *runs = NULL;
	size_t n = 0;
	cbi_error e;
	assert_int_not_equal(cbi_log(c->dest, NULL, &runs, &n, &e), 0);
	assert_non_null(strstr(e.msg, "catalog"));
	assert_int_not_equal(cbi_catalog_rebuild(c->dest, &e), 0);

	/* an existing warning is kept, the note appended */
	o.block_size = 8192; /* ignored for an existing chain: a warning */
	tu_backup_ok(&o, &r);
	assert_non_null(strstr(r.warning, "--block-size"));
	assert_non_null(strstr(r.warning, "; "));
	assert_non_null(strstr(r.warning, "catalog"));

	/* read-only catalog file: only meaningful when not root */
	assert_int_equal(rmdir(c->db), 0);
	o.block_size = 0;
	tu_backup_ok(&o, &r);
	assert_string_equal(r.warning, "");
	if (geteuid() != 0) {
		assert_int_equal(chmod(c->db, 0444), 0);
		tu_backup_ok(&o, &r);
		assert_non_null(strstr(r.warning, "catalog"));
		/* the listing is right all the same (from the files) */
		assert_int_equal(list_equals_scan(c->dest, NULL), 5);
		/* a read-only DEST: list works, nothing is written */
		assert_int_equal(chmod(c->db, 0644), 0);
		assert_int_equal(chmod(c->dest, 0555), 0);
		assert_int_equal(list_equals_scan(c->dest, NULL), 5);
		assert_int_equal(chmod(c->dest, 0755), 0);
	} else {
		print_message("(read-only catalog file not tested: running as root)\n");
	}
}

static void test_no_catalog_where_no_points(void **state)
{
	cat_fix *c = *state;
	cbi_point *pts = NULL;
	size_t n = 0;
	assert_int_equal(cbi_list(c->dest, &pts, &n, NULL), 0);
	assert_int_equal(n, 0);
	free(pts);
	cbi_run *runs = NULL;
	assert_int_equal(cbi_log(c->dest, NULL, &runs, &n, NULL), 0);
	assert_int_equal(n, 0);
	assert_false(tu_exists(c->db));
	/* point files, but no backup ever ran here (a copy, test vectors):
	 * listed from the files, no catalog made */
	char other[4096];
	snprintf(other, sizeof other, "%.4000s/other", c->dir);
	assert_int_equal(mkdir(other, 0755), 0);
	cbi_backup_result r;
	backup_as(c->src, other, "h", "s", "j", 1, &r);
	tu_copy_file(r.point.index_file, tu_path(c->dest, "p.cbx"));
	tu_copy_file(r.point.file, tu_path(c->dest, "p.cbi"));
	assert_int_equal(list_equals_scan(c->dest, NULL), 1);
	assert_false(tu_exists(c->db));
	/* where a backup has run (its lock file is there), the listing makes it */
	char lock[64];
	snprintf(lock, sizeof lock, ".cbimg-%016x.lock", 0x1234abcdu);
	tu_write_file(tu_path(c->dest, lock), "", 0);
	assert_int_equal(list_equals_scan(c->dest, NULL), 1);
	assert_true(tu_exists(c->db));
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_list(tu_path(c->dir, "missing"), &pts, &n, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "missing"));
	assert_int_equal(cbi_log(tu_path(c->dir, "missing"), NULL, &runs, &n, &e), -ENOENT);
	assert_int_equal(cbi_log(c->src, NULL, &runs, &n, &e), -ENOTDIR);
}

/* Split files: a segment that changes or vanishes makes its file stale. */
static void test_split_segments(void **state)
{
	cat_fix *c = *state;
	const char *big = tu_path(c->dir, "big.img");
	uint8_t *b = malloc(3u << 20);
	assert_non_null(b);
	tu_fill_random(b, 3u << 20, 3); /* incompressible: the image has 3 segments */
	tu_write_file(big, b, 3u << 20);
	free(b);
	cbi_backup_opts o = tu_bopts(big, c->dest);
	o.split = 1u << 20;
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	char seg[4096];
	snprintf(seg, sizeof seg, "%.4000s.001", r.point.file);
	assert_true(tu_exists(seg));
	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_int_equal(st.files, 2);
	assert_int_equal(st.opened, 0);
	assert_int_equal(list_equals_scan(c->dest, NULL), 1);

	/* a segment replaced: the image is read again */
	size_t len;
	uint8_t *s1 = tu_read_file(seg, &len);
	assert_int_equal(unlink(seg), 0);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 1);
	cbi_point *pts = NULL;
	size_t n = 0;
	assert_int_equal(cbi_list(c->dest, &pts, &n, NULL), 0);
	assert_int_equal(n, 1);
	assert_false(pts[0].has_image); /* incomplete without its segment */
	free(pts);
	assert_int_equal(list_equals_scan(c->dest, NULL), 1);
	tu_write_file(seg, s1, len);
	free(s1);
	st = sync_ok(c->dest, 0);
	assert_int_equal(st.opened, 1);
	assert_int_equal(list_equals_scan(c->dest, NULL), 1);
	assert_int_equal(cbi_list(c->dest, &pts, &n, NULL), 0);
	assert_true(pts[0].has_image);
	free(pts);
}

/* Three processes back up three sources into the same DEST at once, twice
 * each: every backup succeeds and the catalog has every run and point. */
static void test_concurrent_writers(void **state)
{
	cat_fix *c = *state;
	pid_t pids[3];
	for (int k = 0; k < 3; k++) {
		char src[4096], host[32], sid[32];
		snprintf(src, sizeof src, "%s/pc%d.img", c->dir, k);
		snprintf(host, sizeof host, "pc%d", k);
		snprintf(sid, sizeof sid, "disk:%d", k);
		tu_write_pattern(src, 8 * SRC_SIZE, (uint64_t)k + 20);
		pids[k] = fork();
		assert_true(pids[k] >= 0);
		if (pids[k] == 0) {
			int bad = 0;
			for (int i = 0; i < 2; i++) {
				cbi_backup_opts o = tu_bopts(src, c->dest);
				o.host = host;
				o.source_id = sid;
				cbi_backup_result r;
				cbi_error e;
				cbi_point *pts = NULL;
				size_t n = 0;
				if (cbi_backup(&o, &r, &e) || r.warning[0])
					bad = 1;
				if (cbi_list(c->dest, &pts, &n, &e))
					bad = 1;
				free(pts);
			}
			_exit(bad);
		}
	}
	for (int k = 0; k < 3; k++) {
		int status = 0;
		assert_int_equal(waitpid(pids[k], &status, 0), pids[k]);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
	}
	size_t n = 0;
	cbi_run *runs = log_ok(c->dest, NULL, &n);
	assert_int_equal(n, 6);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(runs[i].result, CBI_RUN_OK);
	free(runs);
	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_int_equal(st.files, 12);
	assert_int_equal(st.opened, 0);
	assert_int_equal(list_equals_scan(c->dest, NULL), 6);
}

/* Processes that find no catalog create it at the same moment (released
 * together by closing a pipe they wait on): none may take another's
 * half-made catalog for a foreign or corrupt one, every run is recorded. */
static void test_concurrent_creation(void **state)
{
	cat_fix *c = *state;
	enum { ROUNDS = 8, PROCS = 4 };
	for (int round = 0; round < ROUNDS; round++) {
		char dest[4096];
		int go[2];
		pid_t pids[PROCS];
		snprintf(dest, sizeof dest, "%.3000s/r%d", c->dir, round);
		assert_int_equal(mkdir(dest, 0755), 0);
		assert_int_equal(pipe(go), 0);
		for (int k = 0; k < PROCS; k++) {
			pids[k] = fork();
			assert_true(pids[k] >= 0);
			if (pids[k] == 0) {
				char host[32], b;
				int64_t id = 0;
				cbi_error e;
				close(go[1]);
				snprintf(host, sizeof host, "pc%d", k);
				if (read(go[0], &b, 1) != 0)
					_exit(2);
				_exit(cbi_catalog_run_begin(dest, host, "s", "/dev/x", "j", &id, &e) || !id);
			}
		}
		close(go[0]);
		close(go[1]); /* go */
		for (int k = 0; k < PROCS; k++) {
			int status = 0;
			assert_int_equal(waitpid(pids[k], &status, 0), pids[k]);
			assert_true(WIFEXITED(status));
			assert_int_equal(WEXITSTATUS(status), 0);
		}
		size_t n = 0;
		cbi_run *runs = log_ok(dest, NULL, &n);
		assert_int_equal(n, PROCS);
		free(runs);
		assert_false(tu_exists(tu_path(dest, CBI_CATALOG_NAME ".corrupt")));
	}
}

/* 3000 points: rows put into the catalog directly (for 6000 tiny files
 * standing in for them), then listed. The time is printed, never asserted. */
static void test_many_points(void **state)
{
	cat_fix *c = *state;
	enum { N = 3000 };
	cbi_backup_result r;
	backup_as(c->src, c->dest, "h", "s", "j", 1, &r); /* makes the catalog */
	assert_int_equal(unlink(r.point.file), 0);
	assert_int_equal(unlink(r.point.index_file), 0);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(c->db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_stmt *ip = NULL, *ii = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
		"INSERT INTO points VALUES(?1, ?2, ?3, ?4, ?5, zeroblob(16), zeroblob(32), ?6, ?7, ?8,"
		" 4096, 1048576, 256, ?9, ?10, ?11, ?12, '/dev/x', 256, 0, 256, 1048576, 6784, 0, 0, 1, 0, 0, 0, 0)",
		-1, &ip, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db,
		"INSERT INTO images VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 256, 256, ?12, NULL)",
		-1, &ii, NULL), SQLITE_OK);
	for (int i = 0; i < N; i++) {
		char name[64], host[16], job[16];
		uint8_t chain[16] = { 0 }, id[16] = { 0 }, dig[32] = { 0 };
		struct stat st;
		snprintf(host, sizeof host, "host%d", i % 10);
		snprintf(job, sizeof job, "job%d", i % 7);
		chain[0] = (uint8_t)(i % 10);
		st32(id, (uint32_t)i + 1);
		st32(dig, (uint32_t)i * 7 + 1);
		for (int kind = 0; kind < 2; kind++) {
			snprintf(name, sizeof name, "p%05d.%s", i, kind ? "cbi" : "cbx");
			tu_write_file(tu_path(c->dest, name), "x", 1);
			assert_int_equal(stat(tu_path(c->dest, name), &st), 0);
			sqlite3_stmt *s = kind ? ii : ip;
			sqlite3_bind_text(s, 1, name, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int64(s, 2, st.st_size);
			sqlite3_bind_int64(s, 3, (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
			if (!kind) {
				sqlite3_bind_blob(s, 4, chain, 16, SQLITE_TRANSIENT);
				sqlite3_bind_blob(s, 5, id, 16, SQLITE_TRANSIENT);
				sqlite3_bind_blob(s, 6, dig, 32, SQLITE_TRANSIENT);
				sqlite3_bind_int(s, 7, i / 10);
				sqlite3_bind_int(s, 8, i < 10 ? CBI_FULL : CBI_INCREMENTAL);
				sqlite3_bind_int64(s, 9, 1700000000000000000LL + i);
				sqlite3_bind_text(s, 10, job, -1, SQLITE_TRANSIENT);
				sqlite3_bind_text(s, 11, host, -1, SQLITE_TRANSIENT);
				sqlite3_bind_text(s, 12, "disk:0", -1, SQLITE_TRANSIENT);
			} else {
				sqlite3_bind_blob(s, 4, id, 16, SQLITE_TRANSIENT);
				sqlite3_bind_blob(s, 5, dig, 32, SQLITE_TRANSIENT);
				sqlite3_bind_blob(s, 6, chain, 16, SQLITE_TRANSIENT);
				sqlite3_bind_int(s, 7, i / 10);
				sqlite3_bind_int64(s, 8, 1700000000000000000LL + i);
				sqlite3_bind_text(s, 9, job, -1, SQLITE_TRANSIENT);
				sqlite3_bind_text(s, 10, host, -1, SQLITE_TRANSIENT);
				sqlite3_bind_text(s, 11, "disk:0", -1, SQLITE_TRANSIENT);
				sqlite3_bind_int64(s, 12, 1000 + i);
			}
			assert_int_equal(sqlite3_step(s), SQLITE_DONE);
			sqlite3_reset(s);
		}
	}
	sqlite3_finalize(ip);
	sqlite3_finalize(ii);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	cbi_catalog_stats st = sync_ok(c->dest, 0);
	assert_int_equal(st.files, 2 * N);
	assert_int_equal(st.opened, 0);
	assert_int_equal(st.removed, 2); /* the real point's files */

	double t0 = cbi_now();
	cbi_point *pts = NULL;
	size_t n = 0;
	assert_int_equal(cbi_list(c->dest, &pts, &n, NULL), 0);
	double t1 = cbi_now();
	assert_int_equal(n, N);
	for (size_t i = 0; i < n; i++) {
		assert_true(pts[i].has_image);
		assert_int_equal(pts[i].stored_bytes, 1000 + ld32(pts[i].point_id) - 1);
		if (i) { /* host, job, source, chain, seq */
			int cmp = strcmp(pts[i - 1].host, pts[i].host);
			if (!cmp)
				cmp = strcmp(pts[i - 1].job, pts[i].job);
			if (!cmp)
				cmp = (pts[i - 1].seq > pts[i].seq) - (pts[i - 1].seq < pts[i].seq);
			assert_true(cmp <= 0);
		}
	}
	free(pts);
	cbi_list_filter f = { "host3", NULL, "job2", 0 };
	double t2 = cbi_now();
	assert_int_equal(cbi_list_filtered(c->dest, &f, &pts, &n, NULL), 0);
	double t3 = cbi_now();
	assert_int_equal(n, N / 70 + (N % 70 > 23 ? 1 : 0)); /* i % 10 == 3 and i % 7 == 2 */
	free(pts);
	print_message("list of %d points from the catalog: %.1f ms (filtered to one host and job: %.1f ms)\n",
		      N, (t1 - t0) * 1e3, (t3 - t2) * 1e3);
}

/* A catalog of schema 2 (before points.used_only) is upgraded in place
 * when it is opened for writing, and keeps its rows and runs. */
static void test_schema_upgrade(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r;
	backup_as(c->src, c->dest, "h", "s", "j", 1, &r);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(c->db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "ALTER TABLE points DROP COLUMN used_only; ALTER TABLE images DROP COLUMN link;"
				      " PRAGMA user_version=2;"
				      " UPDATE meta SET value=2 WHERE key='schema_version'", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	backup_as(c->src, c->dest, "h", "s", "j", 2, &r); /* opens it for writing */
	cbi_point *pts = NULL;
	size_t n = 0;
	cbi_error e;
	assert_int_equal(cbi_list_filtered(c->dest, NULL, &pts, &n, &e), 0);
	assert_int_equal(n, 2);
	assert_int_equal(pts[1].seq, 1);
	assert_int_equal(pts[1].used_only, 0);
	free(pts);
	assert_int_equal(sqlite3_open(c->db, &db), SQLITE_OK);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT (SELECT user_version FROM pragma_user_version),"
				      " (SELECT count(*) FROM points WHERE used_only = 0)", -1, &st, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 6);
	assert_int_equal(sqlite3_column_int(st, 1), 2);
	sqlite3_finalize(st);
	sqlite3_close(db);
	cbi_run *runs = NULL;
	assert_int_equal(cbi_log(c->dest, NULL, &runs, &n, &e), 0);
	assert_int_equal(n, 2);
	free(runs);
}

/* The listing sorts each host/job/source group by creation time, so that
 * the newest point comes last even when a newer chain has a smaller id
 * (issue 14: `jq '.[-1]'` returned an older point once a job had two chains). */
static void test_newest_last(void **state)
{
	(void)state;
	cbi_point p[4];
	memset(p, 0, sizeof p);
	for (int i = 0; i < 4; i++) {
		strcpy(p[i].host, "h");
		strcpy(p[i].job, "j");
		strcpy(p[i].source_id, "s");
		snprintf(p[i].index_file, sizeof p[i].index_file, "/d/%d.cbx", i);
	}
	/* given in the old order (chain, seq): the new chain 00.. first */
	memset(p[0].chain_id, 0x00, 16); p[0].seq = 0; p[0].created_ns = 3000;
	memset(p[1].chain_id, 0xff, 16); p[1].seq = 0; p[1].created_ns = 1000;
	memset(p[2].chain_id, 0xff, 16); p[2].seq = 1; p[2].created_ns = 2000;
	strcpy(p[3].job, "a"); p[3].created_ns = 9000; /* another group sorts first */
	cbi_list_sort(p, 4);
	assert_string_equal(p[0].job, "a");
	assert_int_equal(p[1].created_ns, 1000);
	assert_int_equal(p[2].created_ns, 2000);
	assert_int_equal(p[3].created_ns, 3000);
	assert_int_equal(p[3].chain_id[0], 0x00);
}

/* Two chains of one job and another job between them, from the catalog and
 * from the files alike: newest last in each group. */
static void test_list_two_chains(void **state)
{
	cat_fix *c = *state;
	cbi_backup_result r;
	backup_as(c->src, c->dest, "h1", "s1", "a", 1, &r);
	backup_as(c->src, c->dest, "h1", "s1", "a", 2, &r);
	backup_as(c->src, c->dest, "h1", "s1", "b", 3, &r);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	o.host = "h1";
	o.source_id = "s1";
	o.job = "a";
	o.force_full = 1;
	tu_backup_ok(&o, &r);
	uint8_t newest[16];
	memcpy(newest, r.point.point_id, 16);
	assert_int_equal(list_equals_scan(c->dest, NULL), 4);
	cbi_point *pts = NULL;
	size_t n = 0;
	cbi_list_filter f = { .job = "a" };
	assert_int_equal(cbi_list_filtered(c->dest, &f, &pts, &n, NULL), 0);
	assert_int_equal(n, 3);
	for (size_t i = 1; i < n; i++)
		assert_true(pts[i - 1].created_ns <= pts[i].created_ns);
	assert_memory_equal(pts[n - 1].point_id, newest, 16);
	free(pts);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_cat, teardown_cat)
	const struct CMUnitTest tests[] = {
		T(test_built_by_backups_and_rebuilt),
		T(test_stale_rows_follow_the_files),
		T(test_catalog_from_another_dir),
		T(test_corrupt_catalog_moved_aside),
		T(test_filters),
		T(test_runs_recorded),
		T(test_interrupted_run_counts),
		T(test_outbox_holds_no_catalog),
		T(test_backup_without_catalog),
		T(test_no_catalog_where_no_points),
		T(test_split_segments),
		T(test_concurrent_writers),
		T(test_concurrent_creation),
		T(test_many_points),
		T(test_schema_upgrade),
		T(test_newest_last),
		T(test_list_two_chains),
	};
	return cmocka_run_group_tests_name("catalog", tests, NULL, NULL);
}
