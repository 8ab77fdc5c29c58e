/* clock_shim.c - LD_PRELOAD for tests: CLOCK_REALTIME reads as the Unix time
 * in $CBIMG_TEST_TIME (seconds), so that a test can make backups days and
 * weeks apart (t_prune.sh, keep rules). Other clocks are left alone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

int clock_gettime(clockid_t clk, struct timespec *ts)
{
	static int (*real)(clockid_t, struct timespec *);
	const char *t = getenv("CBIMG_TEST_TIME");
	if (clk == CLOCK_REALTIME && t && *t) {
		ts->tv_sec = (time_t)strtoll(t, NULL, 10);
		ts->tv_nsec = 0;
		return 0;
	}
	if (!real)
		real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
	return real(clk, ts);
}
