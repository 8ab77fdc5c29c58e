/* test_runlog.c - the run log of a DEST without a catalog (runlog.h):
 * round trip of every field (names with quotes, backslashes and control
 * characters), runs left running marked interrupted, an outbox's run
 * forgotten (and the file with the last one), filters and limits, damaged
 * lines skipped, no temporary file left. */
#include "testutil.h"

#include "runlog.h"
#include "util.h"

static void test_round_trip(void **state)
{
	(void)state;
	char dir[256];
	tu_mkdtemp(dir, sizeof dir);
	int64_t id1 = 0, id2 = 0, id3 = 0;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_false(cbi_runlog_exists(dir));
	assert_int_equal(cbi_runlog_begin(dir, "h\"1\\", "s\n1", "/dev/x\t", "j\x01", &id1, &e), 0);
	assert_true(id1 > 0);
	assert_true(cbi_runlog_exists(dir));
	cbi_backup_result r;
	memset(&r, 0, sizeof r);
	r.bytes_read = 1ull << 40;
	r.bytes_written = 12345;
	r.point.type = CBI_FULL;
	memset(r.point.point_id, 0xab, 16);
	snprintf(r.point.file, sizeof r.point.file, "%s/p.cbi", dir);
	snprintf(r.point.index_file, sizeof r.point.index_file, "%s/p.cbx", dir);
	assert_int_equal(cbi_runlog_end(dir, id1, CBI_RUN_OK, "caf\xc3\xa9 \"ok\"", &r, 0, &e), 0);
	/* a run that never ends, then one of the same job: the first is interrupted */
	assert_int_equal(cbi_runlog_begin(dir, "h2", "s2", "p2", "j2", &id2, &e), 0);
	assert_int_equal(cbi_runlog_begin(dir, "h2", "s2", "p2", "j2", &id3, &e), 0);
	assert_true(id3 > id2 && id2 > id1);
	cbi_run *v = NULL;
	size_t n = 0;
	assert_int_equal(cbi_runlog_read(dir, NULL, &v, &n, &e), 0);
	assert_int_equal(n, 3);
	assert_int_equal(v[0].id, id1);
	assert_string_equal(v[0].host, "h\"1\\");
	assert_string_equal(v[0].source_id, "s\n1");
	assert_string_equal(v[0].source_path, "/dev/x\t");
	assert_string_equal(v[0].job, "j\x01");
	assert_int_equal(v[0].result, CBI_RUN_OK);
	assert_string_equal(v[0].message, "caf\xc3\xa9 \"ok\"");
	assert_true(v[0].started_ns > 1000000000ll * 1000000000ll);
	assert_true(v[0].ended_ns >= v[0].started_ns);
	assert_true(v[0].bytes_read == 1ull << 40);
	assert_int_equal(v[0].bytes_written, 12345);
	assert_int_equal(v[0].type, CBI_FULL);
	assert_memory_equal(v[0].point_id, r.point.point_id, 16);
	assert_string_equal(v[0].file, "p.cbi");
	assert_string_equal(v[0].index_file, "p.cbx");
	assert_int_equal(v[1].result, CBI_RUN_INTERRUPTED);
	assert_non_null(strstr(v[1].message, "without recording"));
	assert_int_equal(v[2].result, CBI_RUN_RUNNING);
	free(v);
	/* filters and limits */
	cbi_list_filter f = { "h2", NULL, NULL, 0 };
	assert_int_equal(cbi_runlog_read(dir, &f, &v, &n, &e), 0);
	assert_int_equal(n, 2);
	free(v);
	cbi_list_filter g = { NULL, "p2", NULL, 1 };
	assert_int_equal(cbi_runlog_read(dir, &g, &v, &n, &e), 0);
	assert_int_equal(n, 1);
	assert_int_equal(v[0].id, id3);
	free(v);
	/* a damaged line is skipped, the others still read */
	FILE *fp = fopen(tu_path(dir, CBI_RUNLOG_NAME), "a");
	assert_non_null(fp);
	fputs("{\"id\":7,\"host\":\"unterminated\n", fp);
	fclose(fp);
	assert_int_equal(cbi_runlog_read(dir, NULL, &v, &n, &e), 0);
	assert_int_equal(n, 3);
	free(v);
	/* an outbox's runs are forgotten; the file goes with the last one */
	assert_int_equal(cbi_runlog_end(dir, id3, CBI_RUN_FAILED, "x", &r, 1, &e), 0);
	assert_int_equal(cbi_runlog_end(dir, id2, CBI_RUN_FAILED, "x", &r, 1, &e), 0);
	assert_true(cbi_runlog_exists(dir));
	assert_int_equal(cbi_runlog_end(dir, id1, CBI_RUN_OK, NULL, &r, 1, &e), 0);
	assert_false(cbi_runlog_exists(dir));
	assert_int_equal(cbi_runlog_read(dir, NULL, &v, &n, &e), 0);
	assert_int_equal(n, 0);
	/* ending an unknown run says so */
	assert_int_equal(cbi_runlog_begin(dir, "h", "s", "p", "j", &id1, &e), 0);
	assert_int_equal(cbi_runlog_end(dir, id1 + 10, CBI_RUN_OK, NULL, &r, 0, &e), -ENOENT);
	/* only the log and the lock file: no temporary file left */
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d)))
		assert_false(cbi_has_ext(de->d_name, ".tmp"));
	closedir(d);
	tu_rm_rf(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
	};
	return cmocka_run_group_tests_name("runlog", tests, NULL, NULL);
}
