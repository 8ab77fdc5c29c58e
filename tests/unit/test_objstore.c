/* test_objstore.c - the s3:// DEST (objstore.c): point-name order, and,
 * when CBIMG_S3_TEST_BUCKET names a bucket on $S3_ENDPOINT
 * (tests/e2e/t_s3.sh sets one up), backups into it with the lock object's
 * rules: a live lock refuses, an expired one is taken over, a kill's
 * leftover upload is aborted; and the lock of cbi_os_lock() (prune's):
 * its lease renewed past its length, lost once another writer replaced
 * it, whose object the release then leaves alone. */
#include "testutil.h"

#include "cbimg.h"
#include "job.h"
#include "objstore.h"
#include "s3.h"
#include "util.h"

static void test_name_order(void **state)
{
	(void)state;
	char a[64], b[64], c[64];
	size_t jpl = 0;
	cbi_objstore_name_order("pc1_sda_daily_20261206T101500Z_full0000_0123abcd.cbx", a, sizeof a, &jpl);
	assert_string_equal(a, "20261206T101500Z 0000000000");
	assert_int_equal(jpl, strlen("pc1_sda_daily_"));
	cbi_objstore_name_order("pc1_sda_daily_20261206T101500Z_incr0001_0123abcd.cbx", b, sizeof b, NULL);
	cbi_objstore_name_order("pc1_sda_daily_20261206T101500Z_incr12345_0123abcd.cbi", c, sizeof c, &jpl);
	assert_string_equal(c, "20261206T101500Z 0000012345"); /* seq past 9999: more digits */
	assert_true(strcmp(a, b) < 0 && strcmp(b, c) < 0);
	/* names with '_' in the fields still find the timestamp from the end */
	cbi_objstore_name_order("my_pc_sd_a_job_x_20261207T000000Z_full0000_ffffffff.cbx", a, sizeof a, &jpl);
	assert_string_equal(a, "20261207T000000Z 0000000000");
	assert_int_equal(jpl, strlen("my_pc_sd_a_job_x_"));
	const char *bad[] = { "x.cbx", "a_b_c_20261206T101500Z_full000_0123abcd.cbx",
			      "a_b_c_20261206T101500Z_diff0000_0123abcd.cbx", "a_b_c_2026120XT101500Z_full0000_0123abcd.cbx",
			      "_20261206T101500Z_full0000_0123abcd.cbx", "a_b_c_20261206T101500Z_full0000-0123abcd.cbx" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cbi_objstore_name_order(bad[i], a, sizeof a, NULL);
		assert_string_equal(a, "");
	}
	assert_true(cbi_objstore_is_url("s3://b/x"));
	assert_false(cbi_objstore_is_url("/s3://b"));
	assert_false(cbi_objstore_is_url(NULL));
}

static void put_lock(cbi_s3 *s, const char *prefix, uint64_t key, const char *host, long pid, long long exp)
{
	char k[256], body[256];
	cbi_error e;
	snprintf(k, sizeof k, "%s/.cbimg-lock-%016llx", prefix, (unsigned long long)key);
	int n = snprintf(body, sizeof body, "cbimg-lock 1\nhost %s\npid %ld\nexpires_ns %lld\n", host, pid, exp);
	cbi_s3_delete(s, k, &e);
	assert_int_equal(cbi_s3_put(s, k, body, (size_t)n, 1, &e), 0);
}

static void test_server(void **state)
{
	const char *bucket = tu_s3_bucket();
	const char *dir = *state;
	char src[4096], url[256], sd[4096];
	snprintf(src, sizeof src, "%s/disk.img", dir);
	snprintf(sd, sizeof sd, "%s/state", dir);
	snprintf(url, sizeof url, "s3://%s/unit-%ld", bucket, (long)getpid());
	uint8_t *d = malloc(1 << 20);
	tu_fill_random(d, 1 << 20, 3);
	FILE *f = fopen(src, "w");
	fwrite(d, 1, 1 << 20, f);
	fclose(f);
	free(d);
	cbi_backup_opts o = { .source = src, .dest = url, .host = "unithost", .source_id = "unit-src",
			      .job = "j", .state_dir = sd, .block_size = 64 * 1024 };
	cbi_backup_result r;
	cbi_error e;
	assert_int_equal(cbi_objstore_backup(&o, NULL, &r, &e), 0);
	assert_int_equal(r.point.type, CBI_FULL);
	assert_true(r.bytes_sent >= (1 << 20));
	assert_int_equal(strncmp(r.point.index_file, "s3://", 5), 0);

	cbi_s3_cfg cfg;
	cbi_s3 *s;
	assert_int_equal(cbi_s3_cfg_load(&cfg, NULL, &e), 0);
	assert_int_equal(cbi_s3_open(&cfg, bucket, &s, &e), 0);
	char prefix[64];
	snprintf(prefix, sizeof prefix, "unit-%ld", (long)getpid());
	uint64_t key = cbi_state_key("unithost", "unit-src", "j");
	long long far = (long long)cbi_wallclock_ns() + 3600LL * 1000000000LL;
	/* a live lock of another host: refused, naming it */
	put_lock(s, prefix, key, "otherhost", 1, far);
	assert_int_equal(cbi_objstore_backup(&o, NULL, &r, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "otherhost"));
	/* a body without an op line (before revision 2.11): no guess at what it does */
	assert_non_null(strstr(e.msg, "another cbimg (host otherhost, pid 1) holds the lock of job 'j' of '"));
	/* a lock of this host's dead pid: taken over */
	put_lock(s, prefix, key, "unithost", 999999999, far);
	/* (the job's host is "unithost": the check compares the lock's host with it) */
	assert_int_equal(cbi_objstore_backup(&o, NULL, &r, &e), 0);
	assert_non_null(strstr(r.notice[0] ? r.notice : r.warning, "took over"));
	assert_int_equal(r.point.type, CBI_INCREMENTAL);
	/* an expired lease: taken over */
	put_lock(s, prefix, key, "otherhost", 1, 1);
	assert_int_equal(cbi_objstore_backup(&o, NULL, &r, &e), 0);
	assert_int_equal(r.point.seq, 2);
	/* the lock is gone after a run */
	char k[256];
	uint64_t sz;
	snprintf(k, sizeof k, "%s/.cbimg-lock-%016llx", prefix, (unsigned long long)key);
	assert_int_equal(cbi_s3_head(s, k, &sz, &e), -ENOENT);
	/* the view for list: three indexes */
	char view[4096];
	assert_int_equal(cbi_objstore_view(url, NULL, sd, 0, NULL, view, sizeof view, &e), 0);
	int cnt = 0;
	char cmd[4300];
	snprintf(cmd, sizeof cmd, "ls '%s'/*.cbx | wc -l", view);
	FILE *p = popen(cmd, "r");
	assert_int_equal(fscanf(p, "%d", &cnt), 1);
	pclose(p);
	assert_int_equal(cnt, 3);
	cbi_s3_close(s);
}

static void test_os_lock(void **state)
{
	(void)state;
	const char *bucket = tu_s3_bucket();
	char url[256], sd[4096], prefix[64], k[256], note[600] = "";
	snprintf(prefix, sizeof prefix, "unit-oslock-%ld", (long)getpid());
	snprintf(url, sizeof url, "s3://%s/%s", bucket, prefix);
	snprintf(sd, sizeof sd, "%s/state", (const char *)*state);
	setenv("CBIMG_S3_LEASE", "2", 1);
	cbi_os *o = NULL, *o2 = NULL;
	cbi_error e;
	uint64_t key = cbi_state_key("unithost", "unit-src", "p"), sz;
	snprintf(k, sizeof k, "%s/.cbimg-lock-%016llx", prefix, (unsigned long long)key);
	assert_int_equal(cbi_os_open(url, NULL, sd, &o, &e), 0);
	assert_int_equal(cbi_os_held(o, &e), 0); /* no lock taken: nothing to lose */
	assert_int_equal(cbi_os_lock(o, key, "unithost", "p", "unit-src", CBI_JOB_OP_PRUNE, note, sizeof note, &e), 0);
	usleep(2600 * 1000); /* past the lease: held, because renewed */
	assert_int_equal(cbi_os_held(o, &e), 0);
	assert_int_equal(cbi_os_open(url, NULL, sd, &o2, &e), 0);
	assert_int_equal(cbi_os_lock(o2, key, "unithost", "p", "unit-src", CBI_JOB_OP_BACKUP, note, sizeof note, &e),
			 -CBI_ELOCKED);
	/* the holder's body says it prunes (revision 2.11), and the refusal says so */
	assert_non_null(strstr(e.msg, ") is pruning job 'p' of 'unit-src' in 's3://"));
	cbi_os_close(o2);
	/* another writer's object in its place: lost at the next renewal */
	put_lock(cbi_os_s3(o), prefix, key, "otherhost", 1, (long long)cbi_wallclock_ns() + 3600LL * 1000000000LL);
	for (int i = 0; i < 40 && !cbi_os_held(o, NULL); i++)
		usleep(100 * 1000);
	assert_int_equal(cbi_os_held(o, &e), -CBI_ELOCKED);
	assert_true(strstr(e.msg, "took it over") || strstr(e.msg, "removed by another writer"));
	cbi_os_unlock(o, key);
	assert_int_equal(cbi_s3_head(cbi_os_s3(o), k, &sz, &e), 0); /* left to its owner */
	cbi_s3_delete(cbi_os_s3(o), k, &e);
	cbi_os_close(o);
	unsetenv("CBIMG_S3_LEASE");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_order),
		cmocka_unit_test_setup_teardown(test_server, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test_setup_teardown(test_os_lock, tu_setup_dir, tu_teardown_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
