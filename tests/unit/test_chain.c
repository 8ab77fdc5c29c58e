/* test_chain.c - scanning a directory for points, resolving chains,
 * point file names. Points are made with the public cbi_backup(). */
#include "testutil.h"

#include "chain.h"
#include "format.h"
#include "util.h"

#define SRC_SIZE (256u * 1024u + 512u)

typedef struct chain_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	cbi_backup_result r[4];
} chain_fix;

static void change_block(const char *src, uint64_t block, uint64_t seed)
{
	uint8_t b[4096];
	tu_fill_random(b, sizeof b, seed);
	uint64_t off = block * 4096;
	size_t len = off + 4096 > SRC_SIZE ? SRC_SIZE - off : 4096;
	tu_pwrite(src, b, len, (off_t)off);
}

/* A full and 3 incrementals of a 65-block file. */
static int setup_chain(void **state)
{
	chain_fix *c = calloc(1, sizeof *c);
	if (!c)
		return -1;
	*state = c;
	tu_mkdtemp(c->dir, sizeof c->dir);
	snprintf(c->src, sizeof c->src, "%s/disk.img", c->dir);
	snprintf(c->dest, sizeof c->dest, "%s/dest", c->dir);
	assert_int_equal(mkdir(c->dest, 0755), 0);
	tu_write_pattern(c->src, SRC_SIZE, 1);
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	for (int i = 0; i < 4; i++) {
		if (i)
			change_block(c->src, (uint64_t)(i * 10), (uint64_t)i + 100);
		tu_backup_ok(&o, &c->r[i]);
		assert_int_equal(c->r[i].point.seq, (uint32_t)i);
	}
	return 0;
}

static int teardown_chain(void **state)
{
	chain_fix *c = *state;
	if (c) {
		tu_rm_rf(c->dir);
		free(c);
	}
	return 0;
}

static void scan(const char *dir, cbi_point **pts, size_t *n)
{
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_chain_scan(dir, pts, n, &e);
	if (rc)
		fail_msg("scan %s: %d %s", dir, rc, e.msg);
}

static void test_scan_sorted_and_resolve(void **state)
{
	chain_fix *c = *state;
	assert_int_equal(tu_count(c->dest, ".cbi", 0), 4);
	assert_int_equal(tu_count(c->dest, ".cbx", 0), 4);
	assert_int_equal(tu_count(c->dest, ".tmp", -1), 0);
	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++) {
		const cbi_point *p = &pts[i];
		assert_int_equal(p->seq, (uint32_t)i);
		assert_int_equal(p->type, i ? CBI_INCREMENTAL : CBI_FULL);
		assert_true(p->has_image);
		assert_memory_equal(p->point_id, c->r[i].point.point_id, 16);
		assert_memory_equal(p->chain_id, pts[0].chain_id, 16);
		assert_memory_equal(p->index_digest, c->r[i].point.index_digest, 32);
		assert_string_equal(p->file, c->r[i].point.file);
		assert_string_equal(p->index_file, c->r[i].point.index_file);
		assert_string_equal(p->host, "testhost");
		assert_string_equal(p->job, "unit");
		assert_string_equal(p->source_id, "test:disk0");
		assert_int_equal(p->block_size, 4096);
		assert_true(p->source_size == SRC_SIZE);
		assert_true(p->n_blocks == cbi_nblocks(SRC_SIZE, 4096));
		assert_true(p->stored_bytes == (uint64_t)tu_file_size(p->file));
		assert_true(p->index_bytes == (uint64_t)tu_file_size(p->index_file));
		if (i) {
			assert_memory_equal(p->parent_id, pts[i - 1].point_id, 16);
			assert_memory_equal(p->parent_digest, pts[i - 1].index_digest, 32);
			assert_true(p->changed_blocks == 1);
		}
		assert_int_equal(cbi_chain_find_id(pts, n, p->point_id), (long)i);
	}
	uint8_t none[16] = { 0 };
	assert_int_equal(cbi_chain_find_id(pts, n, none), -1);

	for (size_t tip = 0; tip < n; tip++) {
		size_t *ch = NULL;
		cbi_error e;
		assert_int_equal(cbi_chain_resolve(pts, n, tip, &ch, &e), 0);
		for (size_t s = 0; s <= tip; s++)
			assert_int_equal(ch[s], s);
		free(ch);
	}

	/* cbi_list is the same scan */
	cbi_point *l = NULL;
	size_t ln = 0;
	assert_int_equal(cbi_list(c->dest, &l, &ln, NULL), 0);
	assert_int_equal(ln, n);
	for (size_t i = 0; i < n; i++)
		assert_memory_equal(l[i].point_id, pts[i].point_id, 16);
	free(l);
	free(pts);
}

static void test_point_info(void **state)
{
	chain_fix *c = *state;
	cbi_point p;
	cbi_error e;
	/* from the image file: the partner index is found */
	assert_int_equal(cbi_point_info(c->r[2].point.file, &p, &e), 0);
	assert_int_equal(p.seq, 2);
	assert_true(p.has_image);
	assert_string_equal(p.file, c->r[2].point.file);
	assert_string_equal(p.index_file, c->r[2].point.index_file);
	assert_true(p.changed_blocks == 1);
	/* from the index file */
	assert_int_equal(cbi_point_info(c->r[0].point.index_file, &p, &e), 0);
	assert_int_equal(p.type, CBI_FULL);
	assert_string_equal(p.file, c->r[0].point.file);
	assert_true(p.changed_blocks == c->r[0].blocks_changed);
	assert_true(p.stored_blocks == c->r[0].blocks_stored);
	/* missing file */
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_point_info(tu_path(c->dest, "nope.cbx"), &p, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "nope.cbx"));
	/* the source file is not a cbimg file */
	assert_int_equal(cbi_point_info(c->src, &p, &e), -CBI_EFORMAT);
}

static void test_rename_keeps_resolution(void **state)
{
	chain_fix *c = *state;
	/* give every file a meaningless name; the image and index of a point
	 * no longer share a name stem, and the order of names is reversed */
	const char *names[4][2] = { { "zz-3.cbi", "aa-0.cbx" }, { "yy-2.cbi", "bb-1.cbx" },
				   { "xx-1.cbi", "cc-2.cbx" }, { "ww-0.cbi", "dd-3.cbx" } };
	for (int i = 0; i < 4; i++) {
		assert_int_equal(rename(c->r[i].point.file, tu_path(c->dest, names[i][0])), 0);
		assert_int_equal(rename(c->r[i].point.index_file, tu_path(c->dest, names[i][1])), 0);
	}
	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(pts[i].seq, (uint32_t)i);
		assert_true(pts[i].has_image);
		assert_string_equal(pts[i].file, tu_path(c->dest, names[i][0]));
		assert_string_equal(pts[i].index_file, tu_path(c->dest, names[i][1]));
	}
	size_t *ch = NULL;
	assert_int_equal(cbi_chain_resolve(pts, n, 3, &ch, NULL), 0);
	for (size_t s = 0; s < 4; s++)
		assert_int_equal(ch[s], s);
	free(ch);
	free(pts);

	/* the next backup continues the renamed chain */
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	cbi_backup_result r;
	change_block(c->src, 50, 555);
	tu_backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 4);
	assert_memory_equal(r.point.parent_id, c->r[3].point.point_id, 16);
	assert_true(r.blocks_changed == 1);
}

static void test_deleted_full_no_parent(void **state)
{
	chain_fix *c = *state;
	assert_int_equal(unlink(c->r[0].point.index_file), 0);
	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 3); /* the orphan image is not a point */
	assert_int_equal(pts[0].seq, 1);
	for (size_t tip = 0; tip < n; tip++) {
		size_t *ch = NULL;
		cbi_error e;
		memset(&e, 0, sizeof e);
		int rc = cbi_chain_resolve(pts, n, tip, &ch, &e);
		assert_int_equal(rc, -CBI_ENOPARENT);
		assert_int_equal(e.code, -CBI_ENOPARENT);
		char hex[33];
		cbi_id_hex(c->r[0].point.point_id, hex);
		assert_non_null(strstr(e.msg, hex)); /* names the missing point */
		assert_null(ch);
	}
	free(pts);

	/* deleting the image of the full only: the points remain, without image */
	assert_int_equal(unlink(c->r[0].point.file), 0);
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 3);
	free(pts);
}

static void test_deleted_full_image_only(void **state)
{
	chain_fix *c = *state;
	assert_int_equal(unlink(c->r[0].point.file), 0);
	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 4);
	assert_false(pts[0].has_image);
	assert_true(pts[1].has_image);
	size_t *ch = NULL;
	assert_int_equal(cbi_chain_resolve(pts, n, 3, &ch, NULL), 0); /* links are in the indexes */
	free(ch);
	free(pts);
}

static void test_deleted_middle(void **state)
{
	chain_fix *c = *state;
	assert_int_equal(unlink(c->r[2].point.index_file), 0);
	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 3);
	size_t *ch = NULL;
	assert_int_equal(cbi_chain_resolve(pts, n, 1, &ch, NULL), 0); /* seq 1 still fine */
	free(ch);
	assert_int_equal(pts[2].seq, 3);
	assert_int_equal(cbi_chain_resolve(pts, n, 2, &ch, NULL), -CBI_ENOPARENT);
	free(pts);
}

static void test_temp_and_damaged_files_ignored(void **state)
{
	chain_fix *c = *state;
	/* an unfinished write: a copy under the writer's temporary name */
	char tmpname[512];
	const char *base = strrchr(c->r[1].point.index_file, '/') + 1;
	snprintf(tmpname, sizeof tmpname, ".%s.12345.tmp", base);
	tu_copy_file(c->r[1].point.index_file, tu_path(c->dest, tmpname));
	/* a dot file that ends like an index */
	tu_copy_file(c->r[1].point.index_file, tu_path(c->dest, ".hidden.cbx"));
	/* a truncated index and a junk image under normal names */
	size_t n0;
	uint8_t *b = tu_read_file(c->r[3].point.index_file, &n0);
	tu_write_file(tu_path(c->dest, "truncated.cbx"), b, n0 - 1);
	free(b);
	tu_write_file(tu_path(c->dest, "junk.cbi"), "not an image", 12);
	/* other files and a subdirectory */
	tu_write_file(tu_path(c->dest, "notes.txt"), "x", 1);
	assert_int_equal(mkdir(tu_path(c->dest, "sub.cbx"), 0755), 0);
	/* an exact duplicate of an index under another name counts once */
	tu_copy_file(c->r[2].point.index_file, tu_path(c->dest, "copy-of-2.cbx"));

	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(pts[i].seq, (uint32_t)i);
		assert_int_not_equal(strrchr(pts[i].index_file, '/')[1], '.');
	}
	size_t *ch = NULL;
	assert_int_equal(cbi_chain_resolve(pts, n, 3, &ch, NULL), 0);
	free(ch);
	free(pts);
}

static void test_scan_errors(void **state)
{
	chain_fix *c = *state;
	cbi_point *pts = NULL;
	size_t n = 0;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_chain_scan(tu_path(c->dir, "missing"), &pts, &n, &e), -ENOENT);
	assert_non_null(strstr(e.msg, "missing"));
	assert_int_equal(cbi_chain_scan(c->src, &pts, &n, &e), -ENOTDIR);
	/* an empty directory: no points, no error */
	const char *empty = tu_path(c->dir, "empty");
	assert_int_equal(mkdir(empty, 0755), 0);
	assert_int_equal(cbi_chain_scan(empty, &pts, &n, &e), 0);
	assert_int_equal(n, 0);
	free(pts);
}

static void test_two_chains(void **state)
{
	chain_fix *c = *state;
	cbi_backup_opts o = tu_bopts(c->src, c->dest);
	o.force_full = 1;
	cbi_backup_result r5, r6;
	tu_backup_ok(&o, &r5);
	assert_int_equal(r5.point.seq, 0);
	assert_memory_not_equal(r5.point.chain_id, c->r[0].point.chain_id, 16);
	o.force_full = 0;
	change_block(c->src, 7, 777);
	tu_backup_ok(&o, &r6);
	assert_int_equal(r6.point.seq, 1);
	assert_memory_equal(r6.point.chain_id, r5.point.chain_id, 16);
	assert_memory_equal(r6.point.parent_id, r5.point.point_id, 16);

	cbi_point *pts = NULL;
	size_t n = 0;
	scan(c->dest, &pts, &n);
	assert_int_equal(n, 6);
	/* grouped by chain, in seq order inside a chain */
	for (size_t i = 1; i < n; i++) {
		int same = !memcmp(pts[i].chain_id, pts[i - 1].chain_id, 16);
		if (same)
			assert_int_equal(pts[i].seq, pts[i - 1].seq + 1);
		else
			assert_int_equal(pts[i].seq, 0);
	}
	long t6 = cbi_chain_find_id(pts, n, r6.point.point_id);
	assert_true(t6 >= 0);
	size_t *ch = NULL;
	assert_int_equal(cbi_chain_resolve(pts, n, (size_t)t6, &ch, NULL), 0);
	assert_memory_equal(pts[ch[0]].point_id, r5.point.point_id, 16);
	assert_memory_equal(pts[ch[1]].point_id, r6.point.point_id, 16);
	free(ch);
	free(pts);
}

/* LIBRARY BUG (chain.c cbi_point_filename + cbi_sanitize_name): the host
 * name is the first part of a point's file name and '.' is kept by the
 * sanitizer, so a host such as ".lab" yields ".lab_..." files that the
 * scanner skips as temporary files: the backup succeeds but its point is
 * never found, and every later run is a new full. */
static void test_dot_host_point_is_found(void **state)
{
	chain_fix *c = *state;
	const char *dest2 = tu_path(c->dir, "dest2");
	assert_int_equal(mkdir(dest2, 0755), 0);
	cbi_backup_opts o = tu_bopts(c->src, dest2);
	o.host = ".lab";
	cbi_backup_result r;
	tu_backup_ok(&o, &r);
	const char *base = strrchr(r.point.index_file, '/') + 1;
	cbi_point *pts = NULL;
	size_t n = 0;
	scan(dest2, &pts, &n);
	free(pts);
	if (n != 1)
		fail_msg("LIBRARY BUG: point written as '%s' (host \".lab\") not found by scan (n=%zu)", base, n);
	assert_int_not_equal(base[0], '.');
}

/* ------------------------------------------------- synthetic arrays */

static cbi_point synth(uint32_t seq, uint8_t id, uint8_t parent)
{
	cbi_point p;
	memset(&p, 0, sizeof p);
	p.seq = seq;
	p.type = seq ? CBI_INCREMENTAL : CBI_FULL;
	p.point_id[0] = id;
	p.index_digest[0] = id;
	if (seq) {
		p.parent_id[0] = parent;
		p.parent_digest[0] = parent;
	}
	p.chain_id[0] = 0xcc;
	p.block_size = 4096;
	p.source_size = 1 << 20;
	snprintf(p.index_file, sizeof p.index_file, "p%u.cbx", id);
	return p;
}

static void test_resolve_synthetic(void **state)
{
	(void)state;
	cbi_point pts[5];
	size_t *ch = NULL;
	cbi_error e;
	/* stored out of order: resolution follows ids, not positions */
	pts[0] = synth(2, 3, 2);
	pts[1] = synth(0, 1, 0);
	pts[2] = synth(1, 2, 1);
	assert_int_equal(cbi_chain_resolve(pts, 3, 0, &ch, &e), 0);
	assert_int_equal(ch[0], 1);
	assert_int_equal(ch[1], 2);
	assert_int_equal(ch[2], 0);
	free(ch);

	/* parent digest differs (the parent index was rewritten): no parent */
	pts[2].index_digest[5] ^= 1;
	assert_int_equal(cbi_chain_resolve(pts, 3, 0, &ch, &e), -CBI_ENOPARENT);
	pts[2].index_digest[5] ^= 1;

	/* parent of another chain, block size or source size */
	pts[2].chain_id[0] = 0xdd;
	assert_int_equal(cbi_chain_resolve(pts, 3, 0, &ch, &e), -CBI_EDAMAGED);
	pts[2].chain_id[0] = 0xcc;
	pts[1].block_size = 8192;
	assert_int_equal(cbi_chain_resolve(pts, 3, 0, &ch, &e), -CBI_EDAMAGED);
	pts[1].block_size = 4096;
	pts[1].source_size++;
	assert_int_equal(cbi_chain_resolve(pts, 3, 0, &ch, &e), -CBI_EDAMAGED);
	pts[1].source_size--;

	/* seq gap: the parent is seq 0 but the child claims seq 2 */
	pts[0] = synth(2, 3, 1);
	assert_int_equal(cbi_chain_resolve(pts, 3, 0, &ch, &e), -CBI_EDAMAGED);

	/* a full alone */
	assert_int_equal(cbi_chain_resolve(pts, 3, 1, &ch, &e), 0);
	assert_int_equal(ch[0], 1);
	free(ch);
}

static void test_point_filename_fat_safe(void **state)
{
	(void)state;
	const char *hosts[] = { "server01", "a:b*c?d", "h\"<>|\\/", "ü-host", "" };
	const char *jobs[] = { "nightly", "x/y", "job with spaces", "*", "" };
	const char *paths[] = { "/dev/sda", "/dev/disk/by-id/usb-Foo:Bar*0?", "C:\\disk.img", "rel|ative",
				"" };
	const uint32_t seqs[] = { 0, 1, 42, 9999, 123456 };
	for (int i = 0; i < 5; i++) {
		cbi_hdr h;
		memset(&h, 0, sizeof h);
		cbi_strlcpy(h.host, hosts[i], sizeof h.host);
		cbi_strlcpy(h.job, jobs[i], sizeof h.job);
		cbi_strlcpy(h.source_path, paths[i], sizeof h.source_path);
		h.seq = seqs[i];
		h.type = seqs[i] ? CBI_INCREMENTAL : CBI_FULL;
		h.created_ns = 1732246496000000000LL + i;
		for (int k = 0; k < 16; k++)
			h.point_id[k] = (uint8_t)(0xa0 + k + i);
		const char *exts[] = { "cbi", "cbx" };
		for (int x = 0; x < 2; x++) {
			char name[512];
			cbi_point_filename(&h, exts[x], name, sizeof name);
			assert_true(strlen(name) > 4);
			for (const char *p = name; *p; p++) {
				if (strchr("\\/:*?\"<>|", *p) || (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
					fail_msg("invalid character 0x%02x in '%s'", (unsigned char)*p, name);
			}
			size_t l = strlen(name);
			assert_string_equal(name + l - 4, x ? ".cbx" : ".cbi");
			assert_non_null(strstr(name, h.type == CBI_FULL ? "full" : "incr"));
			assert_non_null(strstr(name, "20241122T")); /* UTC timestamp */
			char hex[33];
			cbi_id_hex(h.point_id, hex);
			hex[8] = 0;
			assert_non_null(strstr(name, hex)); /* short point id */
			assert_true(l < 255);               /* FAT and ext4 name limit */
		}
	}
	/* distinct points get distinct names even at the same second */
	cbi_hdr a, b;
	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	a.created_ns = b.created_ns = 1732246496000000000LL;
	a.point_id[0] = 1;
	b.point_id[0] = 2;
	char na[512], nb[512];
	cbi_point_filename(&a, "cbi", na, sizeof na);
	cbi_point_filename(&b, "cbi", nb, sizeof nb);
	assert_string_not_equal(na, nb);
	/* long fields are shortened */
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	memset(h.host, 'h', 63);
	memset(h.job, 'j', 63);
	memset(h.source_path, 'p', 63);
	char name[512];
	cbi_point_filename(&h, "cbx", name, sizeof name);
	assert_true(strlen(name) < 160);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_chain, teardown_chain)
	const struct CMUnitTest tests[] = {
		T(test_scan_sorted_and_resolve),
		T(test_point_info),
		T(test_rename_keeps_resolution),
		T(test_deleted_full_no_parent),
		T(test_deleted_full_image_only),
		T(test_deleted_middle),
		T(test_temp_and_damaged_files_ignored),
		T(test_scan_errors),
		T(test_two_chains),
		T(test_dot_host_point_is_found),
		cmocka_unit_test(test_resolve_synthetic),
		cmocka_unit_test(test_point_filename_fat_safe),
	};
	return cmocka_run_group_tests_name("chain", tests, NULL, NULL);
}
