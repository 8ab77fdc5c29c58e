/* test_s3lease.c - the lock object's body and its lease (s3lease.c): the
 * body's text both ways (pure), the renewal times, and, when
 * CBIMG_S3_TEST_BUCKET names a bucket on $S3_ENDPOINT (tests/e2e/t_s3.sh),
 * renewals against the server and a lock lost to another writer. */
#include "testutil.h"

#include <pthread.h>
#include <time.h>

#include "s3.h"
#include "s3lease.h"
#include "util.h"

static void test_body(void **state)
{
	(void)state;
	cbi_s3lock a = { .host = "pc1", .pid = 4242, .run = "0123456789abcdef", .expires_ns = 1765000000123456789LL };
	char b[512];
	int n = cbi_s3lock_body(b, sizeof b, &a);
	assert_true(n > 0);
	assert_string_equal(b, "cbimg-lock 1\nhost pc1\npid 4242\nrun 0123456789abcdef\nexpires_ns 1765000000123456789\n");
	cbi_s3lock p;
	assert_int_equal(cbi_s3lock_parse(b, &p), 0);
	assert_string_equal(p.host, "pc1");
	assert_int_equal(p.pid, 4242);
	assert_string_equal(p.run, "0123456789abcdef");
	assert_int_equal(p.expires_ns, a.expires_ns);
	/* revision 2.7's body, without a run line */
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nhost h\npid 7\nexpires_ns 5\n", &p), 0);
	assert_string_equal(p.run, "");
	assert_int_equal(p.pid, 7);
	assert_int_equal(p.expires_ns, 5);
	/* without a run, the body has no run line */
	a.run[0] = 0;
	n = cbi_s3lock_body(b, sizeof b, &a);
	assert_null(strstr(b, "run"));
	/* revision 2.11: the op line, written by backup and prune, read back */
	cbi_s3lock w = { .host = "pc1", .pid = 4242, .run = "0123456789abcdef", .op = "prune", .expires_ns = 9 };
	n = cbi_s3lock_body(b, sizeof b, &w);
	assert_true(n > 0);
	assert_string_equal(b, "cbimg-lock 1\nhost pc1\npid 4242\nrun 0123456789abcdef\nop prune\nexpires_ns 9\n");
	assert_int_equal(cbi_s3lock_parse(b, &p), 0);
	assert_string_equal(p.op, "prune");
	assert_string_equal(p.run, "0123456789abcdef");
	assert_int_equal(p.pid, 4242);
	assert_int_equal(p.expires_ns, 9);
	strcpy(w.op, "backup");
	assert_true(cbi_s3lock_body(b, sizeof b, &w) > 0);
	assert_int_equal(cbi_s3lock_parse(b, &p), 0);
	assert_string_equal(p.op, "backup");
	/* bodies without it (older writers) stay valid, op "" */
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nhost h\npid 7\nrun 00\nexpires_ns 5\n", &p), 0);
	assert_string_equal(p.op, "");
	assert_string_equal(p.run, "00");
	/* an empty op line is empty (the next line is not taken for it); one
	 * too long is cut, and names no operation a reader knows */
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nhost h\nop \nexpires_ns 5\n", &p), 0);
	assert_string_equal(p.op, "");
	assert_int_equal(p.expires_ns, 5);
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nop pruneeeeeeeeeeeeeeeeeee x\nexpires_ns 5\n", &p), 0);
	assert_int_equal(strlen(p.op), sizeof p.op - 1);
	/* unknown lines, and an op this version does not know, are ignored */
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nhost h\nop merge\nzone z\nexpires_ns 5\n", &p), 0);
	assert_string_equal(p.op, "merge");
	/* not a lock, or no expiry */
	assert_int_equal(cbi_s3lock_parse("hello\n", &p), -EINVAL);
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nhost h\npid 7\n", &p), -EINVAL);
	assert_int_equal(cbi_s3lock_parse("cbimg-lock 1\nexpires_ns x\n", &p), -EINVAL);
	/* too small a buffer */
	assert_int_equal(cbi_s3lock_body(b, 20, &a), -ENAMETOOLONG);
}

static void test_times(void **state)
{
	(void)state;
	const int64_t h12 = 12LL * 3600 * 1000000000LL;
	assert_int_equal(cbi_s3lease_period(h12), 4LL * 3600 * 1000000000LL);
	assert_int_equal(cbi_s3lease_hold(h12), 10LL * 3600 * 1000000000LL);
	/* held for longer than a period, shorter than the lease: a renewal
	 * that fails once is tried again before the hold ends */
	for (int64_t l = 1000000000LL; l <= h12; l *= 7) {
		assert_true(cbi_s3lease_hold(l) > cbi_s3lease_period(l) * 2);
		assert_true(cbi_s3lease_hold(l) < l);
	}
	int64_t a = cbi_s3lease_mono_ns(), b = cbi_s3lease_mono_ns();
	assert_true(b >= a && a > 0);
}

/* -------------------------------------------------------- the server */

typedef struct lost_rec {
	pthread_mutex_t mu;
	int calls, code;
	char why[512];
} lost_rec;

static void on_lost(void *ud, int code, const char *why)
{
	lost_rec *r = ud;
	pthread_mutex_lock(&r->mu);
	r->calls++;
	r->code = code;
	cbi_strlcpy(r->why, why, sizeof r->why);
	pthread_mutex_unlock(&r->mu);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void put_lock(cbi_s3 *s, const char *key, const cbi_s3lock *l)
{
	char b[512];
	cbi_error e;
	int n = cbi_s3lock_body(b, sizeof b, l);
	assert_int_equal(cbi_s3_put(s, key, b, (size_t)n, 0, &e), 0);
}

static void test_server(void **state)
{
	(void)state;
	const char *bucket = tu_s3_bucket();
	cbi_s3_cfg cfg;
	cbi_s3 *s;
	cbi_error e;
	assert_int_equal(cbi_s3_cfg_load(&cfg, NULL, &e), 0);
	assert_int_equal(cbi_s3_open(&cfg, bucket, &s, &e), 0);
	char key[128];
	snprintf(key, sizeof key, "lease-%ld/.cbimg-lock-0000000000000001", (long)getpid());
	const int64_t lease = 3000000000LL; /* 3 s: renewed every 1 s (a loaded machine delays requests) */
	cbi_s3lock me = { .host = "unithost", .pid = 1234, .run = "feedfacefeedface" };
	me.expires_ns = cbi_wallclock_ns() + lease;
	int64_t sent = cbi_s3lease_mono_ns();
	put_lock(s, key, &me);
	lost_rec r = { .mu = PTHREAD_MUTEX_INITIALIZER };
	cbi_s3lease *l;
	assert_int_equal(cbi_s3lease_start(s, key, &me, lease, sent, "job 'j' in 's3://x/y'", on_lost, &r, &l, &e), 0);
	/* held well past the lease: renewed */
	sleep_ms(4500);
	assert_int_equal(cbi_s3lease_held(l, &e), 0);
	assert_true(cbi_s3lease_renewals(l) >= 2);
	assert_int_equal(r.calls, 0);
	char got[512];
	size_t gl = 0;
	assert_int_equal(cbi_s3_get(s, key, 0, 0, got, sizeof got - 1, &gl, &e), 0);
	got[gl] = 0;
	cbi_s3lock now;
	assert_int_equal(cbi_s3lock_parse(got, &now), 0);
	assert_string_equal(now.run, me.run);
	assert_true(now.expires_ns > me.expires_ns + 1500000000LL); /* moved on */
	/* another writer takes it over: lost within a period or two, once */
	cbi_s3lock other = { .host = "otherhost", .pid = 99, .run = "0000000000000099" };
	other.expires_ns = cbi_wallclock_ns() + 3600LL * 1000000000LL;
	put_lock(s, key, &other);
	sleep_ms(2500);
	pthread_mutex_lock(&r.mu);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.code, -CBI_ELOCKED);
	assert_non_null(strstr(r.why, "otherhost"));
	assert_non_null(strstr(r.why, "job 'j' in 's3://x/y'"));
	pthread_mutex_unlock(&r.mu);
	assert_int_equal(cbi_s3lease_held(l, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "took it over"));
	cbi_s3lease_stop(l);
	/* the other writer's object is left alone */
	assert_int_equal(cbi_s3_get(s, key, 0, 0, got, sizeof got - 1, &gl, &e), 0);
	got[gl] = 0;
	assert_non_null(strstr(got, "otherhost"));
	cbi_s3_delete(s, key, &e);
	/* a lease never renewed (a stopped renewal, time run out) is not held */
	me.expires_ns = cbi_wallclock_ns() + lease;
	assert_int_equal(cbi_s3lease_start(s, key, &me, lease, cbi_s3lease_mono_ns() - lease, "job 'j'", NULL, NULL, &l,
					   &e),
			 0);
	assert_int_equal(cbi_s3lease_held(l, &e), -CBI_ELOCKED);
	assert_non_null(strstr(e.msg, "lease ran out"));
	cbi_s3lease_stop(l);
	cbi_s3_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_body),
		cmocka_unit_test(test_times),
		cmocka_unit_test(test_server),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
