/* test_state.c - the local state (state.h) and the job layout (job.h): the
 * job key of long names, the reason a damaged state index is reported with,
 * and a failed directory fsync reported instead of a success. */
#include "testutil.h"

#include <sys/syscall.h>
#include <xxhash.h>

#include "job.h"
#include "state.h"
#include "util.h"

/* ---- fsync of directories fails at the Nth call when fail_dir_at is N
 * (the library is linked statically: this takes the place of libc's). */
static int dir_fsyncs, fail_dir_at;

int fsync(int fd);
int fsync(int fd)
{
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && fail_dir_at && ++dir_fsyncs == fail_dir_at) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fsync, fd);
}

typedef struct sfix {
	char dir[256];
	char src[4096];
	char dest[4096];
	char state[4096];
	cbi_backup_result r;
} sfix;

static int setup_s(void **state)
{
	sfix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	snprintf(f->state, sizeof f->state, "%s/state", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	tu_write_pattern(f->src, 64 * 1024, 3);
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	tu_backup_ok(&o, &f->r);
	return 0;
}

static int teardown_s(void **state)
{
	sfix *f = *state;
	fail_dir_at = 0;
	if (f) {
		tu_rm_rf(f->dir);
		free(f);
	}
	return 0;
}

/* state.c:22: the key of names longer than a fixed buffer is the hash of
 * every byte of them (a truncated snprintf let XXH3 read past the buffer). */
static void test_job_key_of_long_names(void **state)
{
	(void)state;
	static char host[700], src[900], job[600], all[2300];
	memset(host, 'h', sizeof host - 1);
	memset(src, 's', sizeof src - 1);
	memset(job, 'j', sizeof job - 1);
	size_t n = 0;
	memcpy(all + n, host, strlen(host) + 1);
	n += strlen(host) + 1;
	memcpy(all + n, src, strlen(src) + 1);
	n += strlen(src) + 1;
	memcpy(all + n, job, strlen(job));
	n += strlen(job);
	assert_true(cbi_state_key(host, src, job) == XXH3_64bits(all, n));
	/* and of short ones, as before */
	assert_true(cbi_state_key("pc1", "disk", "daily") == XXH3_64bits("pc1\0disk\0daily", 14));
	assert_true(cbi_state_key(host, src, job) != cbi_state_key(host, src, "j"));
}

static void test_job_layout(void **state)
{
	(void)state;
	char p[4096];
	uint64_t k = 0x0123456789abcdefull;
	assert_int_equal(cbi_job_lock_path("/d", k, p, sizeof p), 0);
	assert_string_equal(p, "/d/.cbimg-0123456789abcdef.lock");
	assert_true(cbi_job_is_lock_name(p + 3));
	assert_false(cbi_job_is_lock_name(".cbimg-0123456789abcdef.lck"));
	assert_int_equal(cbi_job_lock_path("/d", k, p, 10), -ENAMETOOLONG);
	assert_int_equal(cbi_job_state_dir("/s", k, p, sizeof p), 0);
	assert_string_equal(p, "/s/0123456789abcdef");
	cbi_job_tmp_tag(k, 42, p, sizeof p);
	assert_string_equal(p, "cbimg-0123456789abcdef-42");
	cbi_job_tmp_prefix(k, p, sizeof p);
	assert_string_equal(p, ".cbimg-0123456789abcdef-");
	cbi_keyfile_state_path("/s", "pc1", "disk", "daily", p, sizeof p);
	char want[64];
	snprintf(want, sizeof want, "/s/%016llx/chain.cbk",
		 (unsigned long long)cbi_state_key("pc1", "disk", "daily"));
	assert_string_equal(p, want);
}

/* state.c:51, 61-64: a state index that is no index is reported with a
 * reason, not with an uninitialised message. */
static void test_damaged_state_says_why(void **state)
{
	sfix *f = *state;
	uint64_t key = cbi_state_key("testhost", "test:disk0", "unit");
	char kd[4096];
	assert_int_equal(mkdir(f->state, 0700), 0);
	assert_int_equal(cbi_job_state_dir(f->state, key, kd, sizeof kd), 0);
	assert_int_equal(mkdir(kd, 0700), 0);
	size_t len = 0;
	uint8_t *b = tu_read_file(f->r.point.file, &len); /* an image under an index's name */
	tu_write_file(tu_path(kd, "x.cbx"), b, len);
	free(b);
	cbi_point tip;
	int found = -1;
	cbi_error e;
	memset(e.msg, 'Z', sizeof e.msg); /* what an unset message would show */
	e.msg[sizeof e.msg - 1] = 0;
	assert_int_equal(cbi_state_load(f->state, key, &tip, &found, &e), -CBI_EDAMAGED);
	assert_int_equal(found, 0);
	assert_int_equal(e.code, -CBI_EDAMAGED);
	if (!strstr(e.msg, "x.cbx") || !strstr(e.msg, "not an index file"))
		fail_msg("state damage reported as: %.200s", e.msg);
	/* an index whose digest fails */
	unlink(tu_path(kd, "x.cbx"));
	b = tu_read_file(f->r.point.index_file, &len);
	b[512 + 3] ^= 1; /* an entry: the structure holds */
	tu_write_file(tu_path(kd, "y.cbx"), b, len);
	free(b);
	memset(e.msg, 'Z', sizeof e.msg - 1);
	assert_int_equal(cbi_state_load(f->state, key, &tip, &found, &e), -CBI_EDAMAGED);
	assert_int_equal(found, 0);
	assert_non_null(strstr(e.msg, "digest mismatch"));
	assert_non_null(strstr(e.msg, "y.cbx"));
	/* beside an intact index, a damaged one is no damage of the state */
	assert_int_equal(cbi_state_save(f->state, key, f->r.point.index_file, NULL, NULL, 0, &e), 0);
	tu_write_file(tu_path(kd, "y.cbx"), "damaged", 7);
	assert_int_equal(cbi_state_load(f->state, key, &tip, &found, &e), 0);
	assert_int_equal(found, 1);
	assert_memory_equal(tip.point_id, f->r.point.point_id, 16);
	/* a state directory that cannot be read: another code, with a message */
	if (geteuid() != 0) {
		assert_int_equal(chmod(kd, 0), 0);
		memset(&e, 0, sizeof e);
		int rc = cbi_state_load(f->state, key, &tip, &found, &e);
		assert_int_equal(chmod(kd, 0700), 0);
		assert_true(rc < 0 && rc != -CBI_EDAMAGED);
		assert_int_equal(e.code, rc);
		assert_true(e.msg[0] != 0);
	}
}

/* state.c:134, 148: a directory fsync that fails is reported: the state's
 * new name may not be durable. */
static void test_state_save_reports_dir_fsync(void **state)
{
	sfix *f = *state;
	uint64_t key = cbi_state_key("testhost", "test:disk0", "unit");
	cbi_error e;
	for (int at = 1; at <= 2; at++) {
		dir_fsyncs = 0;
		fail_dir_at = at;
		memset(&e, 0, sizeof e);
		int rc = cbi_state_save(f->state, key, f->r.point.index_file, NULL, NULL, 0, &e);
		fail_dir_at = 0;
		if (rc != -EIO)
			fail_msg("directory fsync %d failed, cbi_state_save = %d (%s)", at, rc, e.msg);
		assert_non_null(strstr(e.msg, "sync"));
	}
	dir_fsyncs = 0;
	assert_int_equal(cbi_state_save(f->state, key, f->r.point.index_file, NULL, NULL, 0, &e), 0);
	cbi_point tip;
	int found = 0;
	assert_int_equal(cbi_state_load(f->state, key, &tip, &found, &e), 0);
	assert_int_equal(found, 1);
	assert_memory_equal(tip.point_id, f->r.point.point_id, 16);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_job_key_of_long_names),
		cmocka_unit_test(test_job_layout),
		cmocka_unit_test_setup_teardown(test_damaged_state_says_why, setup_s, teardown_s),
		cmocka_unit_test_setup_teardown(test_state_save_reports_dir_fsync, setup_s, teardown_s),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
