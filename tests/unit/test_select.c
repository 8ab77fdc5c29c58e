/* test_select.c - point selectors (cbi_select_point()): the newest point of
 * one host/source/job group, whichever chain it is in, at or before a time;
 * several matching groups refused with the candidates named; and the time
 * syntax of cbi_parse_time(). */
#include "testutil.h"

#include <time.h>

#define SRC_SIZE (64u * 1024u)

typedef struct sel_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
} sel_fix;

static int setup_sel(void **state)
{
	sel_fix *c = calloc(1, sizeof *c);
	if (!c)
		return -1;
	*state = c;
	tu_mkdtemp(c->dir, sizeof c->dir);
	snprintf(c->src, sizeof c->src, "%s/disk.img", c->dir);
	snprintf(c->dest, sizeof c->dest, "%s/dest", c->dir);
	assert_int_equal(mkdir(c->dest, 0755), 0);
	tu_write_pattern(c->src, SRC_SIZE, 1);
	return 0;
}

static int teardown_sel(void **state)
{
	sel_fix *c = *state;
	if (c) {
		tu_rm_rf(c->dir);
		free(c);
	}
	return 0;
}

static void backup_as(sel_fix *c, const char *host, const char *job, int full, uint64_t seed,
		      cbi_backup_result *r)
{
	uint8_t b[4096];
	tu_fill_random(b, sizeof b, seed);
	tu_pwrite(c->src, b, sizeof b, 0);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	o.host = host;
	o.job = job;
	o.force_full = full;
	tu_backup_ok(&o, r);
}

static void assert_same_point(const cbi_point *a, const cbi_point *b)
{
	assert_memory_equal(a->point_id, b->point_id, 16);
	assert_string_equal(a->index_file, b->index_file);
}

static void test_newest_of_one_job(void **state)
{
	sel_fix *c = *state;
	cbi_backup_result r[4];
	cbi_point p;
	cbi_error e = { 0 };

	/* two chains: the newest point is the second chain's full, not the
	 * first chain's seq 1 */
	backup_as(c, "h1", "daily", 0, 1, &r[0]);
	backup_as(c, "h1", "daily", 0, 2, &r[1]);
	backup_as(c, "h1", "daily", 1, 3, &r[2]);
	assert_int_equal(cbi_select_point(c->dest, NULL, &p, &e), 0);
	assert_same_point(&p, &r[2].point);
	assert_int_equal(p.seq, 0);
	assert_true(p.has_image);

	cbi_selector s = { .job = "daily", .host = "h1", .source = "test:disk0" };
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
	assert_same_point(&p, &r[2].point);

	backup_as(c, "h1", "daily", 0, 4, &r[3]);
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
	assert_same_point(&p, &r[3].point);
}

static void test_at_time(void **state)
{
	sel_fix *c = *state;
	cbi_backup_result r[3];
	cbi_point p;
	cbi_error e = { 0 };

	backup_as(c, "h1", "daily", 0, 1, &r[0]);
	backup_as(c, "h1", "daily", 0, 2, &r[1]);
	backup_as(c, "h1", "daily", 0, 3, &r[2]);
	for (int i = 0; i < 3; i++) {
		cbi_selector s = { .at_ns = r[i].point.created_ns };
		assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
		assert_same_point(&p, &r[i].point);
	}
	/* between the second and the third: the second */
	cbi_selector s = { .at_ns = r[2].point.created_ns - 1 };
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
	assert_same_point(&p, &r[1].point);
	/* before the first: none */
	s.at_ns = r[0].point.created_ns - 1;
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), -CBI_ENOCHAIN);
	assert_non_null(strstr(e.msg, "at or before"));
	/* far in the future: the newest */
	s.at_ns = INT64_MAX;
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
	assert_same_point(&p, &r[2].point);
}

static void test_ambiguous(void **state)
{
	sel_fix *c = *state;
	cbi_backup_result r[3];
	cbi_point p;
	cbi_error e = { 0 };

	backup_as(c, "h1", "daily", 0, 1, &r[0]);
	backup_as(c, "h1", "weekly", 0, 2, &r[1]);
	backup_as(c, "h2", "daily", 0, 3, &r[2]);
	assert_int_equal(cbi_select_point(c->dest, NULL, &p, &e), -CBI_EUSAGE);
	assert_non_null(strstr(e.msg, "several jobs"));
	assert_non_null(strstr(e.msg, "host 'h1' job 'daily'"));
	assert_non_null(strstr(e.msg, "host 'h1' job 'weekly'"));
	assert_non_null(strstr(e.msg, "host 'h2' job 'daily'"));
	assert_non_null(strstr(e.msg, "--host"));

	cbi_selector s = { .job = "daily" };
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), -CBI_EUSAGE);
	assert_null(strstr(e.msg, "weekly"));
	s.host = "h2";
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
	assert_same_point(&p, &r[2].point);
	s.host = "h1";
	assert_int_equal(cbi_select_point(c->dest, &s, &p, &e), 0);
	assert_same_point(&p, &r[0].point);

	/* a time before the other groups existed leaves one candidate */
	cbi_selector t = { .at_ns = r[0].point.created_ns };
	assert_int_equal(cbi_select_point(c->dest, &t, &p, &e), 0);
	assert_same_point(&p, &r[0].point);

	/* no such job */
	cbi_selector u = { .job = "nosuch" };
	assert_int_equal(cbi_select_point(c->dest, &u, &p, &e), -CBI_ENOCHAIN);
	assert_non_null(strstr(e.msg, "no matching points"));
}

static void test_many_candidates_counted(void **state)
{
	sel_fix *c = *state;
	cbi_backup_result r;
	cbi_point p;
	cbi_error e = { 0 };
	char job[16];

	for (int i = 0; i < 6; i++) {
		snprintf(job, sizeof job, "j%d", i);
		backup_as(c, "h1", job, 0, (uint64_t)i + 1, &r);
	}
	assert_int_equal(cbi_select_point(c->dest, NULL, &p, &e), -CBI_EUSAGE);
	assert_non_null(strstr(e.msg, "and 2 more"));
}

static void test_empty_dest(void **state)
{
	sel_fix *c = *state;
	cbi_point p;
	cbi_error e = { 0 };

	assert_int_equal(cbi_select_point(c->dest, NULL, &p, &e), -CBI_ENOCHAIN);
	assert_non_null(strstr(e.msg, "no points"));
	assert_true(cbi_select_point(tu_path(c->dir, "missing"), NULL, &p, &e) < 0);
}

static int64_t parse_ok(const char *s)
{
	int64_t ns = 0;
	cbi_error e = { 0 };
	int rc = cbi_parse_time(s, &ns, &e);
	if (rc)
		print_error("cbi_parse_time(%s) = %d: %s\n", s, rc, e.msg);
	assert_int_equal(rc, 0);
	assert_int_equal(ns % 1000000000, 999999999);
	return ns / 1000000000;
}

static void test_parse_time(void **state)
{
	(void)state;
	cbi_error e = { 0 };
	int64_t ns;

	assert_int_equal(parse_ok("2026-12-06T10:00:00Z"), 1796551200);
	assert_int_equal(parse_ok("2026-12-06T10:00Z"), 1796551200);
	assert_int_equal(parse_ok("2026-12-06T12:00:00+02:00"), 1796551200);
	assert_int_equal(parse_ok("2026-12-06T05:30:00-0430"), 1796551200);
	assert_int_equal(parse_ok("2024-02-29T00:00:00Z"), 1709164800);
	assert_int_equal(parse_ok("@1796551200"), 1796551200);
	/* local time */
	setenv("TZ", "UTC", 1);
	tzset();
	assert_int_equal(parse_ok("2026-12-06 10:00:00"), 1796551200);
	assert_int_equal(parse_ok("2026-12-06 10:00"), 1796551200);
	assert_int_equal(parse_ok("2026-12-06"), 1796515200);
	assert_int_equal(parse_ok("2026-12-06T10:00:00"), 1796551200);
	setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3", 1);
	tzset();
	assert_int_equal(parse_ok("2026-12-06 11:00"), 1796551200);  /* winter: UTC+1 */
	assert_int_equal(parse_ok("2026-07-01 02:00"), 1782864000);  /* summer: UTC+2 */
	unsetenv("TZ");
	tzset();

	static const char *const bad[] = {
		"", "latest", "2026-13-01", "2026-02-30", "2025-02-29", "2026-12-06T25:00Z", "2026-12-06 10",
		"2026-12-06T10:00:00Zjunk", "26-12-06", "2026-12-6", "@", "@-5", "@12x", "1969-12-31",
		"2026-12-06T10:00+25:00",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&e, 0, sizeof e);
		if (cbi_parse_time(bad[i], &ns, &e) != -CBI_EUSAGE)
			fail_msg("'%s' was accepted", bad[i]);
		assert_non_null(strstr(e.msg, "invalid time"));
	}
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_sel, teardown_sel)
	const struct CMUnitTest tests[] = {
		T(test_newest_of_one_job),
		T(test_at_time),
		T(test_ambiguous),
		T(test_many_candidates_counted),
		T(test_empty_dest),
		cmocka_unit_test(test_parse_time),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
