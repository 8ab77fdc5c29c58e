/* test_dest.c - the DEST scanner (dest.h): every entry classified once
 * (points, key files, segments, temporary files, locks, the catalog,
 * foreign files), point files read and opened once. */
#include "testutil.h"

#include <sys/syscall.h>

#include "chain.h"
#include "dest.h"
#include "util.h"

/* ---- every open() of the library is counted for one path (the library is
 * linked statically: these definitions take the place of libc's). */
static char count_path[4096];
static int count_opens;

static int counted_open(const char *path, int flags, mode_t mode)
{
	if (count_path[0] && !strcmp(path, count_path))
		count_opens++;
	return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

/* With _FILE_OFFSET_BITS=64 the headers name this open64, as they name the
 * library's calls. */
int open(const char *path, int flags, ...);
int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & (O_CREAT | __O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	return counted_open(path, flags, mode);
}

#define SRC_SIZE (2u * 1024u * 1024u + 600u * 1024u) /* 3 segments of 1 MiB */

typedef struct dfix {
	char dir[256];
	char src[4096];
	char dest[4096];
	cbi_backup_result r[2];
} dfix;

static int setup_d(void **state)
{
	dfix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	uint8_t *b = malloc(SRC_SIZE);
	assert_non_null(b);
	tu_fill_random(b, SRC_SIZE, 7); /* incompressible: the image takes 3 segments */
	tu_write_file(f->src, b, SRC_SIZE);
	free(b);
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	o.split = 1u << 20;
	tu_backup_ok(&o, &f->r[0]);
	uint8_t blk[4096];
	tu_fill_random(blk, sizeof blk, 99);
	tu_pwrite(f->src, blk, sizeof blk, 8192);
	tu_backup_ok(&o, &f->r[1]);
	return 0;
}

static int teardown_d(void **state)
{
	dfix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f);
	}
	return 0;
}

static const char *base(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static const cbi_dent *must_find(const cbi_dest *d, const char *name)
{
	const cbi_dent *e = cbi_dest_find(d, name);
	if (!e)
		fail_msg("no entry '%s'", name);
	return e;
}

static void test_classify_names(void **state)
{
	(void)state;
	size_t bl = 0;
	uint64_t k = 0;
	assert_int_equal(cbi_dest_classify("a.cbi", NULL, NULL), CBI_DENT_POINT);
	assert_int_equal(cbi_dest_classify("a.cbx", NULL, NULL), CBI_DENT_POINT);
	assert_int_equal(cbi_dest_classify(".a.cbx", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify(".cbx", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify("h_s_j_key_0011aabb.cbk", NULL, NULL), CBI_DENT_KEY);
	assert_int_equal(cbi_dest_classify(".cbimg-0123456789abcdef.lock", NULL, NULL), CBI_DENT_LOCK);
	assert_int_equal(cbi_dest_classify(".cbimg-0123456789abcdeg.lock", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify(".cbimg-0123456789abcdef-42.x.cbi.tmp", NULL, NULL), CBI_DENT_TEMP);
	assert_int_equal(cbi_dest_classify(".x.cbx.1234.tmp", NULL, NULL), CBI_DENT_TEMP);
	assert_int_equal(cbi_dest_classify("cbimg-catalog.sqlite", NULL, NULL), CBI_DENT_CATALOG);
	assert_int_equal(cbi_dest_classify("cbimg-catalog.sqlite-journal", NULL, NULL), CBI_DENT_CATALOG);
	assert_int_equal(cbi_dest_classify("cbimg-catalog.sqlite.corrupt", NULL, NULL), CBI_DENT_CATALOG);
	assert_int_equal(cbi_dest_classify("x.cbi.001", &bl, &k), CBI_DENT_SEGMENT);
	assert_int_equal(bl, 5);
	assert_true(k == 1);
	assert_int_equal(cbi_dest_classify("x.cbx.1234", &bl, &k), CBI_DENT_SEGMENT);
	assert_true(k == 1234);
	assert_int_equal(cbi_dest_classify("x.cbi.000", &bl, &k), CBI_DENT_SEGMENT);
	assert_true(k == 0);
	assert_int_equal(cbi_dest_classify("x.cbi.01", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify("x.cbi.12345678901", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify("x.img.001", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify(".x.cbi.001", NULL, NULL), CBI_DENT_FOREIGN);
	assert_int_equal(cbi_dest_classify("notes.txt", NULL, NULL), CBI_DENT_FOREIGN);
}

static void test_scan_classifies_and_reads(void **state)
{
	dfix *f = *state;
	const char *img0 = f->r[0].point.file, *idx0 = f->r[0].point.index_file;
	/* the others a DEST may hold */
	tu_write_file(tu_path(f->dest, "notes.txt"), "hello", 5);
	tu_write_file(tu_path(f->dest, ".x.cbi.4242.tmp"), "partial", 7);
	tu_write_file(tu_path(f->dest, "h_s_j_key_00112233.cbk"), "not a key file", 14);
	tu_write_file(tu_path(f->dest, "broken.cbx"), "no header here, just some bytes of garbage", 42);
	tu_write_file(tu_path(f->dest, "orphan.cbi.001"), "x", 1);
	size_t len = 0;
	uint8_t *b = tu_read_file(img0, &len);
	tu_write_file(tu_path(f->dest, "cut.cbi"), b, 4000); /* an image cut short: its header is whole */
	free(b);
	assert_int_equal(mkdir(tu_path(f->dest, "subdir"), 0755), 0);

	cbi_dest *d = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	snprintf(count_path, sizeof count_path, "%s", img0);
	count_opens = 0;
	assert_int_equal(cbi_dest_scan(f->dest, CBI_DEST_READ | CBI_DEST_KEYS | CBI_DEST_STAT, &d, &e), 0);
	assert_int_equal(count_opens, 1); /* the split image: opened once (its first segment) */
	count_path[0] = 0;
	for (size_t i = 1; i < d->n; i++)
		assert_true(strcmp(d->e[i - 1].name, d->e[i].name) < 0);

	const cbi_dent *x = must_find(d, base(img0));
	assert_int_equal(x->kind, CBI_DENT_POINT);
	assert_non_null(x->pt);
	assert_int_equal(x->pt->rc, 0);
	assert_int_equal(x->pt->kind, CBI_KIND_IMAGE);
	assert_int_equal(x->pt->nseg, 3);
	assert_memory_equal(x->pt->p.point_id, f->r[0].point.point_id, 16);
	assert_true(x->has_stat && x->size == 1u << 20);
	x = must_find(d, base(idx0));
	assert_int_equal(x->pt->rc, 0);
	assert_int_equal(x->pt->kind, CBI_KIND_INDEX);
	assert_int_equal(x->pt->nseg, 1);
	assert_memory_equal(x->pt->p.index_digest, f->r[0].point.index_digest, 32);

	char seg[4200];
	snprintf(seg, sizeof seg, "%.4000s.001", base(img0));
	x = must_find(d, seg);
	assert_int_equal(x->kind, CBI_DENT_SEGMENT);
	assert_true(x->seg == 1);
	assert_int_equal(x->base_len, strlen(base(img0)));
	assert_null(x->pt);
	snprintf(seg, sizeof seg, "%.4000s.002", base(img0));
	assert_int_equal(must_find(d, seg)->kind, CBI_DENT_SEGMENT);
	assert_int_equal(must_find(d, "orphan.cbi.001")->kind, CBI_DENT_SEGMENT);

	assert_int_equal(must_find(d, "notes.txt")->kind, CBI_DENT_FOREIGN);
	assert_int_equal(must_find(d, "subdir")->kind, CBI_DENT_FOREIGN);
	assert_int_equal(must_find(d, ".x.cbi.4242.tmp")->kind, CBI_DENT_TEMP);
	assert_int_equal(must_find(d, CBI_CATALOG_NAME)->kind, CBI_DENT_CATALOG);
	int locks = 0;
	for (size_t i = 0; i < d->n; i++)
		locks += d->e[i].kind == CBI_DENT_LOCK;
	assert_int_equal(locks, 1); /* the backup's */

	x = must_find(d, "h_s_j_key_00112233.cbk");
	assert_int_equal(x->kind, CBI_DENT_KEY);
	assert_non_null(x->key);
	assert_true(x->key->rc < 0);
	assert_non_null(strstr(x->key->msg, "h_s_j_key_00112233.cbk"));

	x = must_find(d, "broken.cbx");
	assert_int_equal(x->kind, CBI_DENT_POINT);
	assert_true(x->pt->rc < 0);
	assert_int_equal(x->pt->kind, 0);
	assert_true(x->pt->msg[0] != 0);
	x = must_find(d, "cut.cbi");
	assert_true(cbi_is_damage(x->pt->rc));
	assert_int_equal(x->pt->kind, CBI_KIND_IMAGE); /* whose it is: its header says */
	assert_memory_equal(x->pt->p.point_id, f->r[0].point.point_id, 16);

	/* the complete points: two, paired with their images */
	cbi_point *pts = NULL;
	size_t n = 0;
	assert_int_equal(cbi_dest_points(d, &pts, &n, &e), 0);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++) {
		assert_true(pts[i].has_image);
		assert_string_equal(pts[i].file, f->r[i].point.file);
		assert_string_equal(pts[i].index_file, f->r[i].point.index_file);
	}
	free(pts);
	cbi_dest_free(d);

	/* the names only: nothing opened */
	snprintf(count_path, sizeof count_path, "%s", idx0);
	count_opens = 0;
	assert_int_equal(cbi_dest_scan(f->dest, CBI_DEST_STAT, &d, &e), 0);
	assert_int_equal(count_opens, 0);
	count_path[0] = 0;
	assert_null(must_find(d, base(idx0))->pt);
	cbi_dest_free(d);
}

static void test_point_files_opened_once(void **state)
{
	dfix *f = *state;
	/* the point scan and the point read open each file once */
	cbi_point *pts = NULL;
	size_t n = 0;
	snprintf(count_path, sizeof count_path, "%s", f->r[1].point.index_file);
	count_opens = 0;
	assert_int_equal(cbi_chain_scan(f->dest, &pts, &n, NULL), 0);
	assert_int_equal(count_opens, 1);
	free(pts);
	cbi_point p;
	int kind = 0;
	memset(&p, 0, sizeof p);
	count_opens = 0;
	assert_int_equal(cbi_point_read_file(f->r[1].point.index_file, &p, &kind, NULL), 0);
	assert_int_equal(count_opens, 1);
	assert_int_equal(kind, CBI_KIND_INDEX);
	count_path[0] = 0;
}

static void test_missing_and_not_a_dir(void **state)
{
	dfix *f = *state;
	cbi_dest *d = NULL;
	cbi_error e;
	assert_int_equal(cbi_dest_scan(tu_path(f->dir, "none"), 0, &d, &e), -ENOENT);
	assert_null(d);
	assert_non_null(strstr(e.msg, "none"));
	assert_int_equal(cbi_dest_scan(tu_path(f->dir, "none"), CBI_DEST_MISSING_OK, &d, &e), 0);
	assert_non_null(d);
	assert_int_equal(d->n, 0);
	assert_null(cbi_dest_find(d, "x"));
	cbi_dest_free(d);
	assert_int_equal(cbi_dest_scan(f->src, 0, &d, &e), -ENOTDIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_classify_names),
		cmocka_unit_test_setup_teardown(test_scan_classifies_and_reads, setup_d, teardown_d),
		cmocka_unit_test_setup_teardown(test_point_files_opened_once, setup_d, teardown_d),
		cmocka_unit_test_setup_teardown(test_missing_and_not_a_dir, setup_d, teardown_d),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
