/* test_flusher.c - the flusher (flusher.h): it calls fdatasync once a
 * step of bytes has been written, not before; it keeps the first failure
 * of its fdatasync and returns it from cbi_flusher_error() and
 * cbi_flusher_stop(); a NULL flusher (one that could not start) is a
 * no-op everywhere. */
#include "testutil.h"

#include <errno.h>
#include <time.h>

#include "flusher.h"

/* Wait up to 5 s for the flusher to have made n fdatasyncs (or failed). */
static void wait_for(cbi_flusher *f, unsigned n, int want_err)
{
	for (int i = 0; i < 500; i++) {
		if (want_err ? cbi_flusher_error(f) != 0 : cbi_flusher_count(f) >= n)
			return;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

static void test_flushes_a_step_at_a_time(void **state)
{
	tu_fix *f = *state;
	char path[4200];
	snprintf(path, sizeof path, "%s/file", f->dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	uint8_t buf[64 << 10];
	memset(buf, 0xa5, sizeof buf);
	cbi_flusher *fl = cbi_flusher_start(fd, 1u << 20);
	assert_non_null(fl);
	/* less than a step: nothing asked */
	for (int i = 0; i < 15; i++) {
		assert_int_equal(pwrite(fd, buf, sizeof buf, (off_t)i * (off_t)sizeof buf), (ssize_t)sizeof buf);
		cbi_flusher_wrote(fl, sizeof buf);
	}
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	assert_int_equal(cbi_flusher_count(fl), 0);
	/* the 16th makes a step */
	assert_int_equal(pwrite(fd, buf, sizeof buf, 15 * (off_t)sizeof buf), (ssize_t)sizeof buf);
	cbi_flusher_wrote(fl, sizeof buf);
	wait_for(fl, 1, 0);
	assert_true(cbi_flusher_count(fl) >= 1);
	/* more steps: more flushes (several asked while one runs are one) */
	for (int i = 16; i < 64; i++) {
		assert_int_equal(pwrite(fd, buf, sizeof buf, (off_t)i * (off_t)sizeof buf), (ssize_t)sizeof buf);
		cbi_flusher_wrote(fl, sizeof buf);
		wait_for(fl, (unsigned)(i + 1) / 16, 0);
	}
	assert_true(cbi_flusher_count(fl) >= 2);
	assert_true(cbi_flusher_count(fl) <= 4);
	assert_int_equal(cbi_flusher_error(fl), 0);
	assert_int_equal(cbi_flusher_stop(fl), 0);
	assert_int_equal(close(fd), 0);
}

static void test_failure_is_kept(void **state)
{
	(void)state;
	int p[2];
	assert_int_equal(pipe(p), 0);
	/* fdatasync of a pipe fails (EINVAL): as a write-back error would */
	cbi_flusher *fl = cbi_flusher_start(p[1], 100);
	assert_non_null(fl);
	assert_int_equal(cbi_flusher_error(fl), 0);
	cbi_flusher_wrote(fl, 100);
	wait_for(fl, 0, 1);
	assert_int_equal(cbi_flusher_error(fl), -EINVAL);
	cbi_flusher_wrote(fl, 100); /* asked again: the first failure stays */
	assert_int_equal(cbi_flusher_stop(fl), -EINVAL);
	close(p[0]);
	close(p[1]);
}

static void test_null_is_a_no_op(void **state)
{
	(void)state;
	cbi_flusher_wrote(NULL, 1u << 30);
	assert_int_equal(cbi_flusher_error(NULL), 0);
	assert_int_equal(cbi_flusher_count(NULL), 0);
	assert_int_equal(cbi_flusher_stop(NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_flushes_a_step_at_a_time, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test(test_failure_is_kept),
		cmocka_unit_test(test_null_is_a_no_op),
	};
	return cmocka_run_group_tests_name("flusher", tests, NULL, NULL);
}
