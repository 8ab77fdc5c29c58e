/* test_snapshot.c - the choice of a snapshot mode (cbi_snap_choose, a pure
 * function over the facts), and exec mode end to end on a file: the
 * command's output is what is read, its cleanup runs with $CBIMG_SNAPSHOT,
 * a failing command or one that prints nothing is refused. Freezing needs
 * root and a mount: tests/e2e/t_snapshot*.sh. */
#include "testutil.h"

#include "snapshot.h"
#include "util.h"

static int choose(cbi_snap_facts f, char *msg)
{
	f.what = "/dev/sdz";
	f.mnt = "/mnt/z";
	return cbi_snap_choose(&f, msg, 1024);
}

static void test_choose_not_live(void **state)
{
	char m[1024];
	for (int mode = CBI_SNAP_AUTO; mode <= CBI_SNAP_FREEZE; mode++)
		assert_int_equal(choose((cbi_snap_facts){ .asked = mode }, m), CBI_SNAP_NONE);
	/* not live, even without any means: none, not a refusal */
	assert_int_equal(choose((cbi_snap_facts){ .asked = CBI_SNAP_TRACE, .used_only = 1 }, m), CBI_SNAP_NONE);
}

static void test_choose_auto(void **state)
{
	char m[1024];
	cbi_snap_facts f = { .mounted_rw = 1, .freezable = 1, .traceable = 1 };
	assert_int_equal(choose(f, m), CBI_SNAP_TRACE);
	f.traceable = 0;
	assert_int_equal(choose(f, m), CBI_SNAP_FREEZE);
	f.freezable = 0;
	f.traceable = 1; /* tracing alone is no use: the re-read needs the freeze */
	f.why_no_freeze = "it holds DEST '/backup'";
	assert_int_equal(choose(f, m), -CBI_EMOUNTED);
	assert_non_null(strstr(m, "it holds DEST"));
	assert_non_null(strstr(m, "--snapshot exec"));
	assert_non_null(strstr(m, "--allow-inconsistent"));
	assert_null(strchr(m, '\n'));
	f.is_file = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_REFLINK);
	f.is_file = 0;
	f.allow_inconsistent = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_NONE);
}

static void test_choose_explicit(void **state)
{
	char m[1024];
	cbi_snap_facts f = { .asked = CBI_SNAP_NONE, .mounted_rw = 1, .freezable = 1 };
	assert_int_equal(choose(f, m), -CBI_EMOUNTED);
	assert_non_null(strstr(m, "--allow-inconsistent"));
	f.allow_inconsistent = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_NONE);
	f = (cbi_snap_facts){ .asked = CBI_SNAP_TRACE, .mounted_rw = 1, .freezable = 1,
			      .why_no_trace = "no tracefs" };
	assert_int_equal(choose(f, m), -CBI_EMOUNTED);
	assert_non_null(strstr(m, "no tracefs"));
	f.traceable = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_TRACE);
	f = (cbi_snap_facts){ .asked = CBI_SNAP_FREEZE, .mounted_rw = 1, .why_no_freeze = "needs root" };
	assert_int_equal(choose(f, m), -CBI_EMOUNTED);
	assert_non_null(strstr(m, "needs root"));
	f.freezable = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_FREEZE);
	/* reflink: files only, live or not */
	f = (cbi_snap_facts){ .asked = CBI_SNAP_REFLINK };
	assert_int_equal(choose(f, m), -CBI_EUSAGE);
	f.is_file = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_REFLINK);
	/* exec: a command, and only with exec (or auto) */
	f = (cbi_snap_facts){ .asked = CBI_SNAP_EXEC };
	assert_int_equal(choose(f, m), -CBI_EUSAGE);
	f.have_cmd = 1;
	assert_int_equal(choose(f, m), CBI_SNAP_EXEC);
	f.asked = CBI_SNAP_AUTO;
	assert_int_equal(choose(f, m), CBI_SNAP_EXEC);
	f.asked = CBI_SNAP_FREEZE;
	assert_int_equal(choose(f, m), -CBI_EUSAGE);
}

static void test_choose_used_only(void **state)
{
	char m[1024];
	cbi_snap_facts f = { .used_only = 1, .mounted_rw = 1, .freezable = 1, .traceable = 1 };
	assert_int_equal(choose(f, m), -CBI_EMOUNTED);
	assert_non_null(strstr(m, "--used-only"));
	assert_non_null(strstr(m, "mounted read-write"));
	f.asked = CBI_SNAP_FREEZE; /* the bitmaps hold still while frozen */
	assert_int_equal(choose(f, m), CBI_SNAP_FREEZE);
}

static void test_exec_and_cleanup(void **state)
{
	tu_fix *f = *state;
	char src[4096], snap[4096], cmd[8192], cleanup[8192];
	snprintf(src, sizeof src, "%s", tu_path(f->dir, "origin.img"));
	snprintf(snap, sizeof snap, "%s", tu_path(f->dir, "snap.img"));
	tu_write_pattern(src, 65536, 1);
	tu_write_pattern(snap, 65536, 2);
	snprintf(cmd, sizeof cmd, "echo making; echo \"$CBIMG_SOURCE\" > '%s/seen'; echo '%s'", f->dir, snap);
	snprintf(cleanup, sizeof cleanup, "echo \"$CBIMG_SNAPSHOT\" > '%s/cleaned'", f->dir);
	cbi_snap_cfg c = { .source = src, .dest = f->dir, .cmd = cmd, .cleanup = cleanup };
	cbi_snap *s = NULL;
	cbi_error e;
	assert_int_equal(cbi_snap_begin(&c, &s, &e), 0);
	assert_int_equal(cbi_snap_mode(s), CBI_SNAP_EXEC);
	assert_string_equal(cbi_snap_read_path(s), snap);
	assert_int_equal(cbi_snap_opened(s, 65536, &e), 0);
	assert_int_equal(cbi_snap_opened(s, 4096, &e), -CBI_EMISMATCH); /* not the origin's size */
	char w[512];
	assert_int_equal(cbi_snap_end(s, w, sizeof w), 0);
	size_t n;
	char *seen = (char *)tu_read_file(tu_path(f->dir, "seen"), &n);
	assert_non_null(strstr(seen, "origin.img"));
	free(seen);
	char *cl = (char *)tu_read_file(tu_path(f->dir, "cleaned"), &n);
	assert_non_null(strstr(cl, "snap.img"));
	free(cl);

	/* a failing command: refused, and its cleanup still runs */
	unlink(tu_path(f->dir, "cleaned"));
	c.cmd = "echo half; exit 3";
	assert_int_equal(cbi_snap_begin(&c, &s, &e), -CBI_EREAD);
	assert_non_null(strstr(e.msg, "exit status 3"));
	assert_int_equal(cbi_snap_end(s, w, sizeof w), 0);
	assert_true(tu_exists(tu_path(f->dir, "cleaned")));
	/* nothing printed; and a failing cleanup: a warning */
	c.cmd = "true";
	c.cleanup = "exit 1";
	assert_int_equal(cbi_snap_begin(&c, &s, &e), -CBI_EREAD);
	assert_non_null(strstr(e.msg, "printed no device"));
	assert_int_equal(cbi_snap_end(s, w, sizeof w), 1);
	assert_non_null(strstr(w, "--snapshot-cleanup"));
}

/* A file nothing mounts needs no snapshot; --snapshot reflink clones it (or
 * says its file system has no reflinks). */
static void test_plain_file_and_reflink(void **state)
{
	tu_fix *f = *state;
	char src[4096];
	snprintf(src, sizeof src, "%s", tu_path(f->dir, "disk.img"));
	tu_write_pattern(src, 65536, 1);
	cbi_snap_cfg c = { .source = src, .dest = f->dir };
	cbi_snap *s = NULL;
	cbi_error e;
	assert_int_equal(cbi_snap_begin(&c, &s, &e), 0);
	assert_int_equal(cbi_snap_mode(s), CBI_SNAP_NONE);
	assert_false(cbi_snap_live(s));
	assert_string_equal(cbi_snap_read_path(s), src);
	assert_int_equal(cbi_snap_end(s, NULL, 0), 0);
	c.mode = CBI_SNAP_REFLINK;
	int rc = cbi_snap_begin(&c, &s, &e);
	if (rc == 0) {
		assert_string_not_equal(cbi_snap_read_path(s), src);
		assert_true(tu_exists(cbi_snap_read_path(s)));
		assert_int_equal(cbi_snap_opened(s, 65536, &e), 0);
		assert_int_equal(tu_count(f->dir, ".tmp", 1), 0); /* the clone's name is gone */
	} else {
		assert_non_null(strstr(e.msg, "reflink"));
	}
	assert_int_equal(cbi_snap_end(s, NULL, 0), 0);
	assert_int_equal(tu_count(f->dir, ".tmp", 1), 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_choose_not_live),
		cmocka_unit_test(test_choose_auto),
		cmocka_unit_test(test_choose_explicit),
		cmocka_unit_test(test_choose_used_only),
		T(test_exec_and_cleanup),
		T(test_plain_file_and_reflink),
	};
	return cmocka_run_group_tests_name("snapshot", tests, NULL, NULL);
}
