/* bench/randread.c - random 4 KiB reads of a file: latency percentiles.
 *   randread FILE COUNT [SEED]
 *   randread --xattr FILE NAME     (prints an extended attribute's value)
 * Reads COUNT distinct 4 KiB-aligned pieces of FILE in a random order
 * (readahead off: POSIX_FADV_RANDOM), one pread(2) each, and prints
 * "reads=N p50_us=X p90_us=Y p99_us=Z max_us=W mean_us=V". Compiled by
 * bench/mount.sh. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "--xattr")) {
		char v[4096];
		ssize_t n = getxattr(argv[2], argv[3], v, sizeof v - 1);
		if (n < 0) {
			perror(argv[2]);
			return 1;
		}
		v[n] = 0;
		printf("%s\n", v);
		return 0;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: randread FILE COUNT [SEED]\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		perror(argv[1]);
		return 1;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	uint64_t pages = (uint64_t)st.st_size / 4096, n = strtoull(argv[2], NULL, 10);
	uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 42;
	if (n > pages)
		n = pages;
	uint64_t *pg = malloc(pages * sizeof *pg);
	double *lat = malloc(n * sizeof *lat);
	char buf[4096];
	if (!pg || !lat)
		return 1;
	for (uint64_t i = 0; i < pages; i++)
		pg[i] = i;
	for (uint64_t i = 0; i < n; i++) { /* partial Fisher-Yates: n distinct pages */
		uint64_t j = i + rng(&seed) % (pages - i), t = pg[i];
		pg[i] = pg[j];
		pg[j] = t;
	}
	double sum = 0;
	for (uint64_t i = 0; i < n; i++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		if (pread(fd, buf, sizeof buf, (off_t)(pg[i] * 4096)) != (ssize_t)sizeof buf) {
			perror("pread");
			return 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		lat[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
		sum += lat[i];
	}
	qsort(lat, n, sizeof *lat, cmp_d);
	printf("reads=%llu p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f mean_us=%.0f\n", (unsigned long long)n,
	       lat[n / 2], lat[n * 90 / 100], lat[n * 99 / 100], lat[n - 1], sum / (double)n);
	return 0;
}
