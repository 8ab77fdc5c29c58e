/* wtrace_helper.c - drives the write tracer (src/lib/wtrace.c) for
 * tests/e2e/t_wtrace.sh; built by the Makefile as BUILD/tests/wtrace_helper.
 *
 *   wtrace_helper usable DEV
 *       exit 0 when DEV can be traced here, else 77 with the reason
 *   wtrace_helper trace DEV BS BUF_KIB CMD [ARG...]
 *       starts tracing DEV (per-CPU buffer BUF_KIB KiB, 0: default), runs
 *       CMD, collects into a bitmap of blocks of BS bytes, twice (the
 *       second call must add nothing), stops, and prints
 *           complete=C marked=N
 *       then each run of marked blocks as "FIRST LAST" (inclusive), one a
 *       line. Exit 0, 1 on an error (message on stderr), 77 when DEV
 *       cannot be traced here; CMD's failure is an error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "wtrace.h"

static int run(char **argv)
{
	pid_t p = fork();
	if (p < 0)
		return -1;
	if (p == 0) {
		execvp(argv[0], argv);
		_exit(127);
	}
	int st;
	if (waitpid(p, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	cbi_error err = { 0 };
	if (argc == 3 && !strcmp(argv[1], "usable")) {
		if (cbi_wtrace_usable(argv[2], &err)) {
			printf("%s\n", err.msg);
			return 77;
		}
		return 0;
	}
	if (argc < 6 || strcmp(argv[1], "trace")) {
		fprintf(stderr, "usage: wtrace_helper usable DEV | trace DEV BS BUF_KIB CMD [ARG...]\n");
		return 2;
	}
	const char *dev = argv[2];
	uint32_t bs = (uint32_t)strtoul(argv[3], NULL, 10), kib = (uint32_t)strtoul(argv[4], NULL, 10);
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	uint64_t size = 0;
	if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) < 0 || !bs) {
		fprintf(stderr, "wtrace_helper: '%s': %s\n", dev, strerror(errno));
		return 1;
	}
	close(fd);
	uint64_t nb = (size + bs - 1) / bs;
	uint8_t *map = calloc(nb / 8 + 1, 1);
	cbi_wtrace *t = NULL;
	int rc = cbi_wtrace_start(dev, kib, &t, &err);
	if (rc) {
		fprintf(stderr, "wtrace_helper: %s\n", err.msg);
		return rc == -ENOTSUP ? 77 : 1;
	}
	if (run(argv + 5) < 0) {
		fprintf(stderr, "wtrace_helper: '%s' failed\n", argv[5]);
		cbi_wtrace_stop(t);
		return 1;
	}
	uint64_t marked = 0, again = 0;
	int complete = 0, complete2 = 0;
	if (cbi_wtrace_collect(t, bs, nb, map, &marked, &complete, &err) ||
	    cbi_wtrace_collect(t, bs, nb, map, &again, &complete2, &err)) {
		fprintf(stderr, "wtrace_helper: %s\n", err.msg);
		cbi_wtrace_stop(t);
		return 1;
	}
	cbi_wtrace_stop(t);
	if (again || complete2 != complete) {
		fprintf(stderr,
			"wtrace_helper: a second collect marked %" PRIu64
			" more blocks, complete %d then %d\n",
			again, complete, complete2);
		return 1;
	}
	printf("complete=%d marked=%" PRIu64 "\n", complete, marked);
	for (uint64_t b = 0; b < nb; b++) {
		if (!(map[b / 8] >> (b % 8) & 1))
			continue;
		uint64_t e = b;
		while (e + 1 < nb && (map[(e + 1) / 8] >> ((e + 1) % 8) & 1))
			e++;
		printf("%" PRIu64 " %" PRIu64 "\n", b, e);
		b = e;
	}
	free(map);
	return 0;
}
