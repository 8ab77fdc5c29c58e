/* test_target.c - the restore target writer (target.h) and the races
 * cbi_restore() must survive: a file that appears at a new target's name
 * during the restore (never replaced without --force), a name swapped for a
 * symbolic link or another file between its check and its open (refused),
 * a symbolic link given on purpose (resolved once), a file planted at the
 * temporary name, a directory that cannot be synced (an error, not a
 * success), and no temporary file left behind on any path.
 *
 * The races are made deterministic by interposing libc functions the
 * library calls (the test binary links libcbimg.a statically, so its own
 * definitions win): lstat64/stat64 swap the name right after the check,
 * fsync fails on directories, renameat2 and link can say "not supported". */
#include "testutil.h"

#include <sys/syscall.h>

#include "target.h"
#include "util.h"

#define BS 4096u

/* ---------------------------------------------------------- interposers */

enum { SWAP_NONE, SWAP_SYMLINK, SWAP_FILE };

static struct {
	int swap;                 /* SWAP_*: done once, right after a stat of swap_path */
	char swap_path[4096];
	char swap_to[4096];       /* symlink target, or the file renamed over swap_path */
	int fail_dir_fsync;
	int no_noreplace;         /* renameat2 with RENAME_NOREPLACE: EINVAL */
	int no_link;              /* link: EPERM */
	int renames;              /* renameat2 calls */
} hk;

static void after_stat(const char *p)
{
	if (!hk.swap || strcmp(p, hk.swap_path))
		return;
	int how = hk.swap;
	hk.swap = SWAP_NONE;
	if (how == SWAP_SYMLINK) {
		assert_int_equal(unlink(p), 0);
		assert_int_equal(symlink(hk.swap_to, p), 0);
	} else {
		assert_int_equal(rename(hk.swap_to, p), 0);
	}
}

int lstat64(const char *restrict p, struct stat64 *restrict st)
{
	int rc = fstatat64(AT_FDCWD, p, st, AT_SYMLINK_NOFOLLOW);
	after_stat(p);
	return rc;
}

int stat64(const char *restrict p, struct stat64 *restrict st)
{
	int rc = fstatat64(AT_FDCWD, p, st, 0);
	after_stat(p);
	return rc;
}

int fsync(int fd)
{
	struct stat64 st;
	if (hk.fail_dir_fsync && fstat64(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fsync, fd);
}

int renameat2(int ofd, const char *o, int nfd, const char *n, unsigned flags)
{
	hk.renames++;
	if (hk.no_noreplace && (flags & RENAME_NOREPLACE)) {
		errno = EINVAL;
		return -1;
	}
	return (int)syscall(SYS_renameat2, ofd, o, nfd, n, flags);
}

int link(const char *o, const char *n)
{
	if (hk.no_link) {
		errno = EPERM;
		return -1;
	}
	return (int)syscall(SYS_linkat, AT_FDCWD, o, AT_FDCWD, n, 0);
}

/* -------------------------------------------------------------- fixture */

typedef struct tg_fix {
	char dir[256];
	uint8_t *data;
	size_t size;
	char point[4096];         /* index file of a full backup of data */
} tg_fix;

static int setup_tg(void **state)
{
	memset(&hk, 0, sizeof hk);
	tg_fix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	f->size = 300 * BS + 77;
	f->data = malloc(f->size);
	assert_non_null(f->data);
	tu_fill_text(f->data, f->size, 3);
	memset(f->data + 10 * BS, 0, 20 * BS);
	const char *src = tu_path(f->dir, "disk.img");
	tu_write_file(src, f->data, f->size);
	const char *dest = tu_path(f->dir, "dest");
	assert_int_equal(mkdir(dest, 0755), 0);
	cbi_backup_opts o = tu_bopts(src, dest);
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	cbi_strlcpy(f->point, r.point.index_file, sizeof f->point);
	return 0;
}

static int teardown_tg(void **state)
{
	memset(&hk, 0, sizeof hk);
	tg_fix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f->data);
		free(f);
	}
	return 0;
}

static const char other[] = "someone else's file\n";

/* Open a new target at name, write f's data (zeros as a range) and leave it
 * to the caller to commit. */
static cbi_target *write_new(tg_fix *f, const char *name, unsigned flags)
{
	cbi_target *t = NULL;
	cbi_error e;
	int rc = cbi_target_open(name, f->size, flags, &t, &e);
	if (rc)
		fail_msg("open '%s': %d (%s)", name, rc, e.msg);
	assert_true(t->sparse_new);
	assert_int_equal(tu_count(f->dir, ".tmp", 1), 1);
	assert_int_equal(cbi_target_write(t, 0, f->data, 10 * BS, &e), 0);
	assert_int_equal(cbi_target_zero(t, 10 * BS, 20 * BS, &e), 0);
	assert_int_equal(cbi_target_write(t, 30 * BS, f->data + 30 * BS, f->size - 30 * BS, &e), 0);
	return t;
}

static cbi_restore_opts ropts(tg_fix *f, const char *target)
{
	cbi_restore_opts o;
	memset(&o, 0, sizeof o);
	o.point = f->point;
	o.target = target;
	o.threads = 2;
	return o;
}

/* ------------------------------------------------------------ the writer */

static void test_new_file(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "new.img");
	cbi_target *t = write_new(f, name, 0);
	cbi_error e;
	assert_false(tu_exists(name));
	assert_int_equal(cbi_target_commit(t, &e), 0);
	cbi_target_close(t);
	assert_true(tu_file_equals(name, f->data, f->size));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
	/* closed without a commit: nothing at the name, no temporary */
	const char *n2 = tu_path(f->dir, "abandoned.img");
	t = write_new(f, n2, 0);
	cbi_target_close(t);
	assert_false(tu_exists(n2));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* The name appears after the open, before the commit: refused, the other
 * file intact, no temporary left. */
static void test_noreplace_race(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "race.img");
	cbi_target *t = write_new(f, name, 0);
	tu_write_file(name, other, sizeof other);
	cbi_error e;
	int rc = cbi_target_commit(t, &e);
	assert_int_equal(rc, -CBI_EEXISTS);
	assert_non_null(strstr(e.msg, "appeared"));
	cbi_target_close(t);
	assert_true(tu_file_equals(name, other, sizeof other));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* With force the file that appeared is replaced. */
static void test_noreplace_force(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "forced.img");
	cbi_target *t = write_new(f, name, CBI_TARGET_FORCE);
	tu_write_file(name, other, sizeof other);
	cbi_error e;
	assert_int_equal(cbi_target_commit(t, &e), 0);
	cbi_target_close(t);
	assert_true(tu_file_equals(name, f->data, f->size));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* A file system without RENAME_NOREPLACE: a hard link, which fails on an
 * existing name just as well; without hard links either: a check just
 * before the rename. Both refuse the race and put a file in place. */
static void test_noreplace_fallbacks(void **state)
{
	tg_fix *f = *state;
	for (int nolink = 0; nolink <= 1; nolink++) {
		hk.no_noreplace = 1;
		hk.no_link = nolink;
		const char *name = tu_path(f->dir, nolink ? "fb2.img" : "fb1.img");
		cbi_target *t = write_new(f, name, 0);
		tu_write_file(name, other, sizeof other);
		cbi_error e;
		assert_int_equal(cbi_target_commit(t, &e), -CBI_EEXISTS);
		cbi_target_close(t);
		assert_true(tu_file_equals(name, other, sizeof other));
		assert_int_equal(unlink(name), 0);
		t = write_new(f, name, 0);
		int rc = cbi_target_commit(t, &e);
		if (rc)
			fail_msg("nolink %d: %d (%s)", nolink, rc, e.msg);
		cbi_target_close(t);
		assert_true(tu_file_equals(name, f->data, f->size));
		assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
	}
}

/* An existing file swapped for a symbolic link, or for another file,
 * between its check and its open: refused, nothing written through. */
static void test_swapped_name(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "existing.img");
	const char *victim = tu_path(f->dir, "victim.img");
	tu_write_file(name, "x", 1);
	tu_write_file(victim, other, sizeof other);
	hk.swap = SWAP_SYMLINK;
	cbi_strlcpy(hk.swap_path, name, sizeof hk.swap_path);
	cbi_strlcpy(hk.swap_to, victim, sizeof hk.swap_to);
	cbi_target *t = NULL;
	cbi_error e;
	int rc = cbi_target_open(name, f->size, CBI_TARGET_FORCE, &t, &e);
	assert_int_equal(rc, -ELOOP);
	assert_null(t);
	assert_non_null(strstr(e.msg, "symbolic link"));
	assert_true(tu_file_equals(victim, other, sizeof other));
	/* another regular file renamed over the name */
	assert_int_equal(unlink(name), 0);
	tu_write_file(name, "x", 1);
	const char *repl = tu_path(f->dir, "replacement.img");
	tu_write_file(repl, other, sizeof other);
	hk.swap = SWAP_FILE;
	cbi_strlcpy(hk.swap_to, repl, sizeof hk.swap_to);
	rc = cbi_target_open(name, f->size, CBI_TARGET_FORCE, &t, &e);
	assert_int_equal(rc, -EAGAIN);
	assert_true(tu_file_equals(name, other, sizeof other));
}

/* Through cbi_restore: the same swap (before: written through the link). */
static void test_restore_swapped_symlink(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "old.img");
	const char *victim = tu_path(f->dir, "victim.img");
	tu_write_file(name, "old", 3);
	tu_write_file(victim, other, sizeof other);
	hk.swap = SWAP_SYMLINK;
	cbi_strlcpy(hk.swap_path, name, sizeof hk.swap_path);
	cbi_strlcpy(hk.swap_to, victim, sizeof hk.swap_to);
	cbi_restore_opts o = ropts(f, name);
	o.force = 1;
	cbi_restore_result r;
	cbi_error e;
	assert_int_not_equal(cbi_restore(&o, &r, &e), 0);
	assert_true(tu_file_equals(victim, other, sizeof other));
}

/* A link given on purpose is resolved once: its target is written, the
 * link stays; a link to nothing is refused and nothing is created. */
static void test_symlink_on_purpose(void **state)
{
	tg_fix *f = *state;
	const char *real = tu_path(f->dir, "real.img");
	const char *lnk = tu_path(f->dir, "by-id-link");
	tu_write_file(real, "x", 1);
	assert_int_equal(symlink(real, lnk), 0);
	cbi_restore_opts o = ropts(f, lnk);
	o.force = 1;
	cbi_restore_result r;
	cbi_error e;
	int rc = cbi_restore(&o, &r, &e);
	if (rc)
		fail_msg("restore through a link: %d (%s)", rc, e.msg);
	assert_true(tu_file_equals(real, f->data, f->size));
	struct stat st;
	assert_int_equal(lstat(lnk, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	const char *dangling = tu_path(f->dir, "dangling");
	const char *nothing = tu_path(f->dir, "nothing.img");
	assert_int_equal(symlink(nothing, dangling), 0);
	o = ropts(f, dangling);
	assert_int_equal(cbi_restore(&o, &r, &e), -ENOENT);
	assert_false(tu_exists(nothing));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* ------------------------------------------------------- via cbi_restore */

typedef struct appear {
	const char *name;
	int calls;
} appear;

static int make_appear(void *ud, uint64_t done, uint64_t total)
{
	appear *a = ud;
	if (!a->calls++)
		tu_write_file(a->name, other, sizeof other);
	return 0;
}

/* A file created at the target's name during the restore is left alone
 * (before: silently replaced by the rename); with --force it is replaced. */
static void test_restore_name_appears(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "appears.img");
	appear a = { name, 0 };
	cbi_restore_opts o = ropts(f, name);
	o.progress = make_appear;
	o.progress_ud = &a;
	cbi_restore_result r;
	cbi_error e;
	assert_int_equal(cbi_restore(&o, &r, &e), -CBI_EEXISTS);
	assert_true(a.calls >= 1);
	assert_true(tu_file_equals(name, other, sizeof other));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
	assert_int_equal(unlink(name), 0);
	a.calls = 0;
	o.force = 1;
	int rc = cbi_restore(&o, &r, &e);
	if (rc)
		fail_msg("forced: %d (%s)", rc, e.msg);
	assert_true(tu_file_equals(name, f->data, f->size));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* Something planted at the temporary name (a stale temporary, or a link to
 * a file of someone else) is neither followed nor in the way (before:
 * O_EXCL refused to create the file). */
static void test_restore_planted_tmp(void **state)
{
	tg_fix *f = *state;
	const char *victim = tu_path(f->dir, "victim.img");
	tu_write_file(victim, other, sizeof other);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s/.planted.img.%ld.tmp", f->dir, (long)getpid());
	assert_int_equal(symlink(victim, tmp), 0);
	const char *name = tu_path(f->dir, "planted.img");
	cbi_restore_opts o = ropts(f, name);
	cbi_restore_result r;
	cbi_error e;
	int rc = cbi_restore(&o, &r, &e);
	if (rc)
		fail_msg("planted temporary: %d (%s)", rc, e.msg);
	assert_true(tu_file_equals(name, f->data, f->size));
	assert_true(tu_file_equals(victim, other, sizeof other));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

/* A directory that cannot be synced after the rename fails the restore
 * (before: success without a durable name). */
static void test_restore_dir_fsync_fails(void **state)
{
	tg_fix *f = *state;
	const char *name = tu_path(f->dir, "nodurable.img");
	cbi_restore_opts o = ropts(f, name);
	cbi_restore_result r;
	cbi_error e;
	hk.fail_dir_fsync = 1;
	int rc = cbi_restore(&o, &r, &e);
	hk.fail_dir_fsync = 0;
	assert_int_equal(rc, -EIO);
	assert_non_null(strstr(e.msg, "unable to sync directory"));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_tg, teardown_tg)
	const struct CMUnitTest tests[] = {
		T(test_new_file),
		T(test_noreplace_race),
		T(test_noreplace_force),
		T(test_noreplace_fallbacks),
		T(test_swapped_name),
		T(test_restore_swapped_symlink),
		T(test_symlink_on_purpose),
		T(test_restore_name_appears),
		T(test_restore_planted_tmp),
		T(test_restore_dir_fsync_fails),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
