/* size.c - parsing and printing of byte counts and plain numbers. */
#include "cli.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Digits only (no sign, no spaces); stops at the first non-digit. */
static int parse_digits(const char **sp, uint64_t *out)
{
	const char *s = *sp;
	uint64_t v = 0;

	if (!isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*sp = s;
	*out = v;
	return 0;
}

int cli_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGT";
	uint64_t v;
	int shift = 0;

	if (!s || parse_digits(&s, &v) < 0)
		return -1;
	if (*s) {
		const char *u = strchr(units, toupper((unsigned char)*s));
		if (u) {
			shift = 10 * (int)(u - units + 1);
			s++;
			/* "K", "KB" and "KiB" all mean 1024 */
			if (strcasecmp(s, "iB") == 0 || strcasecmp(s, "B") == 0)
				s += strlen(s);
		} else if (strcasecmp(s, "B") == 0) {
			s++;
		}
	}
	if (*s)
		return -1;
	if (shift && v > (UINT64_MAX >> shift))
		return -1;
	*out = v << shift;
	return 0;
}

int cli_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	uint64_t v;

	if (!s || parse_digits(&s, &v) < 0 || *s || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

char *cli_human_size(uint64_t bytes, char buf[32])
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	int u = -1;

	if (bytes < 1024) {
		snprintf(buf, 32, "%u B", (unsigned)bytes);
		return buf;
	}
	while (v >= 1024.0 && u < 5) {
		v /= 1024.0;
		u++;
	}
	/* 1023.96 KiB would print as "1024.0 KiB": go up one unit instead */
	if (v >= 1023.95 && u < 5) {
		v /= 1024.0;
		u++;
	}
	snprintf(buf, 32, "%.1f %s", v, units[u]);
	return buf;
}

double cli_mb_per_s(uint64_t bytes, double seconds)
{
	return seconds > 0 ? (double)bytes / seconds / 1e6 : 0.0;
}
