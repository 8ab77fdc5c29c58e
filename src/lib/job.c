/* job.c - the job key and the layout of a job's files (job.h). */
#include "job.h"

#include <stdio.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "util.h"

uint64_t cbi_state_key(const char *host, const char *source_id, const char *job)
{
	/* Streamed: a fixed buffer would have to truncate long strings (and a
	 * truncated snprintf's return value is not the length it wrote). */
	XXH3_state_t s;
	XXH3_INITSTATE(&s);
	XXH3_64bits_reset(&s);
	XXH3_64bits_update(&s, host, strlen(host) + 1);
	XXH3_64bits_update(&s, source_id, strlen(source_id) + 1);
	XXH3_64bits_update(&s, job, strlen(job));
	return XXH3_64bits_digest(&s);
}

int cbi_job_lock_path(const char *dest, uint64_t key, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s/.cbimg-%016llx.lock", dest, (unsigned long long)key);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

int cbi_job_is_lock_name(const char *n)
{
	return strlen(n) == 28 && !strncmp(n, ".cbimg-", 7) && !strcmp(n + 23, ".lock") &&
	       strspn(n + 7, "0123456789abcdef") == 16;
}

void cbi_job_tmp_tag(uint64_t key, long pid, char *out, size_t outsz)
{
	snprintf(out, outsz, "cbimg-%016llx-%ld", (unsigned long long)key, pid);
}

void cbi_job_tmp_prefix(uint64_t key, char *out, size_t outsz)
{
	snprintf(out, outsz, ".cbimg-%016llx-", (unsigned long long)key);
}

int cbi_job_state_dir(const char *state_dir, uint64_t key, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s/%016llx", state_dir, (unsigned long long)key);
	return n < 0 || (size_t)n >= outsz ? -ENAMETOOLONG : 0;
}

void cbi_keyfile_state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
			    char *out, size_t outsz)
{
	snprintf(out, outsz, "%.3000s/%016llx/" CBI_STATE_KEY_NAME, state_dir,
		 (unsigned long long)cbi_state_key(host, source_id, job));
}
