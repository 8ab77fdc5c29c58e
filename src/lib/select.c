/* select.c - point selectors: the newest point of one host/source/job group,
 * at or before a time (cbimg.h, cbi_select_point(), cbi_parse_time()). */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cbimg.h"
#include "util.h"

#define MAX_LISTED 4  /* groups named in an ambiguity message; the rest are counted */

static int same_group(const cbi_point *a, const cbi_point *b)
{
	return !strcmp(a->host, b->host) && !strcmp(a->job, b->job) && !strcmp(a->source_id, b->source_id);
}

static void iso_time(int64_t ns, char buf[32])
{
	time_t t = (time_t)(ns / 1000000000);
	struct tm tm;

	if (!gmtime_r(&t, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, 32, "@%lld", (long long)t);
}

/* "host 'a' job 'j' source 's'" of p, appended to buf. */
static void append_group(char *buf, size_t size, const cbi_point *p, const char *sep)
{
	size_t len = strlen(buf);

	if (len < size)
		snprintf(buf + len, size - len, "%shost '%s' job '%s' source '%s'", sep, p->host, p->job,
			 p->source_id);
}

int cbi_select_point(const char *dest, const cbi_selector *s, cbi_point *out, cbi_error *err)
{
	static const cbi_selector newest = { 0 };
	cbi_list_filter f = { 0 };
	cbi_point *pts = NULL;
	size_t n = 0, groups = 0;
	long best = -1;
	const cbi_point *first = NULL;
	char list[640] = "", when[32];
	int rc;

	if (!s)
		s = &newest;
	f.host = s->host;
	f.source = s->source;
	f.job = s->job;
	rc = cbi_list_filtered(dest, &f, &pts, &n, err);
	if (rc < 0)
		goto end;
	/* Points of a group are contiguous and oldest first: the last eligible
	 * point of a group is its newest at or before s->at_ns. */
	for (size_t i = 0; i < n; i++) {
		if (s->at_ns && pts[i].created_ns > s->at_ns)
			continue;
		if (!first || !same_group(first, &pts[i])) {
			if (groups < MAX_LISTED)
				append_group(list, sizeof list, &pts[i], groups ? ", " : "");
			groups++;
			first = &pts[i];
		}
		best = (long)i;
	}
	if (groups > 1) {
		char more[64] = "";
		if (groups > MAX_LISTED)
			snprintf(more, sizeof more, " and %zu more", groups - MAX_LISTED);
		rc = cbi_err(err, -CBI_EUSAGE, "several jobs in '%s' match: %s%s; narrow with --host, "
			     "--source or --job", dest, list, more);
		goto end;
	}
	if (best < 0) {
		const char *what = (s->host && *s->host) || (s->source && *s->source) || (s->job && *s->job) ?
			"matching " : "";
		if (n > 0 && s->at_ns) {
			iso_time(s->at_ns, when);
			rc = cbi_err(err, -CBI_ENOCHAIN, "no %spoint in '%s' was created at or before %s", what,
				     dest, when);
		} else {
			rc = cbi_err(err, -CBI_ENOCHAIN, "no %spoints in '%s'", what, dest);
		}
		goto end;
	}
	*out = pts[best];
	rc = 0;
end:
	free(pts);
	return rc;
}

/* ------------------------------------------------------------------ time */

/* Exactly `digits` decimal digits at *p into *v; advances *p. */
static int num(const char **p, int digits, int *v)
{
	int x = 0;

	for (int i = 0; i < digits; i++) {
		if (!isdigit((unsigned char)(*p)[i]))
			return -1;
		x = x * 10 + ((*p)[i] - '0');
	}
	*p += digits;
	*v = x;
	return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (no time zone). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
	static const int d[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : d[m - 1];
}

static int bad_time(const char *s, cbi_error *err)
{
	return cbi_err(err, -CBI_EUSAGE, "invalid time '%s': expected YYYY-MM-DD[ HH:MM[:SS]] (local "
		       "time), YYYY-MM-DDTHH:MM[:SS]Z (UTC, or +HH:MM) or @SECONDS", s);
}

int cbi_parse_time(const char *s, int64_t *ns, cbi_error *err)
{
	const char *p = s;
	int y, mo, d, h = 0, mi = 0, se = 0, zone = 0, off = 0;
	int64_t secs;

	if (!s || !*s)
		return bad_time(s ? s : "", err);
	if (*p == '@') {
		char *e;
		long long v;
		if (!isdigit((unsigned char)p[1]))
			return bad_time(s, err);
		errno = 0;
		v = strtoll(p + 1, &e, 10);
		if (*e || errno || v > INT64_MAX / 1000000000 - 1)
			return bad_time(s, err);
		*ns = (int64_t)v * 1000000000 + 999999999;
		return 0;
	}
	if (num(&p, 4, &y) || *p++ != '-' || num(&p, 2, &mo) || *p++ != '-' || num(&p, 2, &d))
		return bad_time(s, err);
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (num(&p, 2, &h) || *p++ != ':' || num(&p, 2, &mi))
			return bad_time(s, err);
		if (*p == ':') {
			p++;
			if (num(&p, 2, &se))
				return bad_time(s, err);
		}
		if (*p == 'Z' || *p == 'z') {
			zone = 1;
			p++;
		} else if (*p == '+' || *p == '-') {
			int sign = *p++ == '-' ? -1 : 1, oh, om;
			if (num(&p, 2, &oh))
				return bad_time(s, err);
			if (*p == ':')
				p++;
			if (num(&p, 2, &om) || oh > 23 || om > 59)
				return bad_time(s, err);
			zone = 1;
			off = sign * (oh * 3600 + om * 60);
		}
	}
	if (*p || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
	    se > 60)
		return bad_time(s, err);
	if (se == 60)  /* a leap second: the last second of its minute */
		se = 59;
	if (zone) {
		secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off;
	} else {
		struct tm tm = { 0 };
		time_t t;
		tm.tm_year = y - 1900;
		tm.tm_mon = mo - 1;
		tm.tm_mday = d;
		tm.tm_hour = h;
		tm.tm_min = mi;
		tm.tm_sec = se;
		tm.tm_isdst = -1;
		t = mktime(&tm);
		if (t == (time_t)-1)
			return bad_time(s, err);
		secs = (int64_t)t;
	}
	if (secs < 0)
		return bad_time(s, err);
	*ns = secs * 1000000000 + 999999999;
	return 0;
}
