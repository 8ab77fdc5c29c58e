/* test_prune.c - the keep rules (a pure function) and merged points: a
 * kept point keeps its index file, id and digest; removed points are gone;
 * every kept point restores; an interrupted prune is finished by the next. */
#include "testutil.h"

#include <time.h>

#include <openssl/evp.h>

#include "catalog.h"
#include "chain.h"
#include "format.h"
#include "runlog.h"
#include "util.h"

#define H (3600LL * 1000000000LL)
#define DAY (24 * H)
#define T0 1795305600LL * 1000000000LL /* 2026-11-22T00:00:00Z, a Sunday */

static cbi_point pt(int64_t ns, uint8_t chain, uint32_t seq)
{
	cbi_point p;
	memset(&p, 0, sizeof p);
	p.created_ns = ns;
	p.chain_id[0] = chain;
	p.point_id[0] = (uint8_t)(chain * 64 + seq);
	p.seq = seq;
	return p;
}

static unsigned kept_mask(const cbi_point *pts, size_t n, cbi_keep_rules r)
{
	unsigned why[32], m = 0;
	assert_int_equal(cbi_prune_select(pts, n, &r, why), 0);
	for (size_t i = 0; i < n; i++)
		if (why[i])
			m |= 1u << i;
	return m;
}

static void test_select_rules(void **state)
{
	(void)state;
	setenv("TZ", "UTC", 1);
	tzset();
	/* 10 points: two a day at 06:00 and 18:00 for 5 days (Sun 22 .. Thu 26) */
	cbi_point p[10];
	for (int i = 0; i < 10; i++)
		p[i] = pt(T0 + (i / 2) * DAY + (i % 2 ? 18 : 6) * H, 1, (uint32_t)i);
	cbi_keep_rules none = { 0 };
	unsigned why[10];
	assert_int_equal(cbi_prune_select(p, 10, &none, why), -CBI_EUSAGE);
	/* the newest always */
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .last = 1 }), 1u << 9);
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .last = 3 }), 7u << 7);
	/* the newest of each of the last 3 days */
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .daily = 3 }), (1u << 9) | (1u << 7) | (1u << 5));
	/* weeks: Sun 22 is ISO week 47, Mon 23 .. week 48 */
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .weekly = 5 }), (1u << 9) | (1u << 1));
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .monthly = 2 }), 1u << 9);
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .hourly = 4 }), 15u << 6);
	/* within 1 day of the newest (26th 18:00): strictly less than 24 h */
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .within_ns = DAY }), 3u << 8);
	/* union of rules */
	assert_int_equal(kept_mask(p, 10, (cbi_keep_rules){ .last = 1, .weekly = 2 }), (1u << 9) | (1u << 1));
	/* order does not matter */
	cbi_point q[10];
	for (int i = 0; i < 10; i++)
		q[i] = p[9 - i];
	assert_int_equal(kept_mask(q, 10, (cbi_keep_rules){ .daily = 3 }), 1u | (1u << 2) | (1u << 4));
	/* chains: the newest chain whole */
	cbi_point c[6] = { pt(T0, 1, 0), pt(T0 + H, 1, 1), pt(T0 + 2 * H, 2, 0), pt(T0 + 3 * H, 2, 1),
			   pt(T0 + 4 * H, 3, 0), pt(T0 + 5 * H, 3, 1) };
	assert_int_equal(kept_mask(c, 6, (cbi_keep_rules){ .chains = 2 }), 15u << 2);
	unsigned w[6];
	cbi_keep_rules r = { .chains = 1, .last = 1 };
	assert_int_equal(cbi_prune_select(c, 6, &r, w), 0);
	assert_int_equal(w[5], CBI_KEEP_CHAINS | CBI_KEEP_LAST | CBI_KEEP_NEWEST);
	assert_int_equal(w[4], CBI_KEEP_CHAINS);
	assert_int_equal(w[3], 0);
}

typedef struct pfix {
	char dir[256], src[512], dest[512];
	cbi_backup_result r[6];
	uint8_t *state[6]; /* the source at each point */
} pfix;

#define SRC_SIZE (64u * 4096u)

static int setup_points(void **state)
{
	pfix *f = calloc(1, sizeof *f);
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	tu_write_pattern(f->src, SRC_SIZE, 1);
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	for (int i = 0; i < 6; i++) {
		uint8_t b[4096];
		tu_fill_random(b, sizeof b, (uint64_t)i + 50);
		if (i)
			tu_pwrite(f->src, b, sizeof b, (off_t)(4096 * (i * 7 % 64)));
		tu_backup_ok(&o, &f->r[i]);
		size_t len;
		f->state[i] = tu_read_file(f->src, &len);
	}
	return 0;
}

static int teardown_points(void **state)
{
	pfix *f = *state;
	tu_rm_rf(f->dir);
	for (int i = 0; i < 6; i++)
		free(f->state[i]);
	free(f);
	return 0;
}

static void restores(pfix *f, int i)
{
	cbi_restore_result rr;
	char out[4200];
	snprintf(out, sizeof out, "%s/out%d", f->dir, i);
	tu_restore_ok(f->r[i].point.index_file, out, &rr);
	assert_true(tu_file_equals(out, f->state[i], SRC_SIZE));
	unlink(out);
}

static void test_merge_keeps_identity(void **state)
{
	pfix *f = *state;
	size_t len;
	uint8_t *x4 = tu_read_file(f->r[4].point.index_file, &len);
	uint8_t *x5 = tu_read_file(f->r[5].point.index_file, &len);
	cbi_prune_opts o = { .dest = f->dest, .keep = { .last = 2 } };
	cbi_prune_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	o.dry_run = 1;
	assert_int_equal(cbi_prune(&o, &r, &e), 0);
	assert_int_equal(r.n, 6);
	assert_int_equal(r.items[4].action, CBI_PRUNE_SYNTH_FULL);
	assert_int_equal(r.items[5].action, CBI_PRUNE_KEEP);
	assert_int_equal(r.items[0].action, CBI_PRUNE_REMOVE);
	assert_true(tu_exists(f->r[0].point.index_file)); /* dry run: nothing changed */
	cbi_prune_result_free(&r);
	o.dry_run = 0;
	if (cbi_prune(&o, &r, &e))
		fail_msg("prune: %s", e.msg);
	assert_int_equal(r.removed, 4);
	assert_int_equal(r.merged, 1);
	cbi_prune_result_free(&r);
	for (int i = 0; i < 4; i++) {
		assert_false(tu_exists(f->r[i].point.index_file));
		assert_false(tu_exists(f->r[i].point.file));
	}
	assert_false(tu_exists(f->r[4].point.file)); /* its old image */
	/* identity: the kept points' index files are byte for byte the same */
	assert_true(tu_file_equals(f->r[4].point.index_file, x4, len));
	assert_true(tu_file_equals(f->r[5].point.index_file, x5, len));
	cbi_point *pts = NULL;
	size_t n = 0;
	assert_int_equal(cbi_list(f->dest, &pts, &n, &e), 0);
	assert_int_equal(n, 2);
	assert_true(pts[0].merged);
	assert_int_equal(pts[0].first_seq, 0); /* a synthetic full */
	assert_false(pts[0].broken || pts[1].broken);
	free(pts);
	restores(f, 4);
	restores(f, 5);
	cbi_verify_result vr;
	assert_int_equal(cbi_verify(f->dest, &(cbi_verify_opts){ .no_state = 1 }, &vr, &e), 0);
	/* the next backup continues the newest point */
	cbi_backup_opts bo = tu_bopts(f->src, f->dest);
	cbi_backup_result br;
	tu_backup_ok(&bo, &br);
	assert_int_equal(br.point.seq, 6);
	assert_memory_equal(br.point.parent_id, f->r[5].point.point_id, 16);
	free(x4);
	free(x5);
}

/* A prune killed after its merged image was renamed in: both images of
 * the kept point and the removed points are there; the points restore, and
 * the next prune removes what the merged image replaced. */
static void interrupted_merge(pfix *f, int by_backup)
{
	char keep[4200], kept_img[4200];
	/* keep seq 5's old image and seq 0's files aside, prune, put them back */
	snprintf(keep, sizeof keep, "%s/old5.cbi", f->dir);
	tu_copy_file(f->r[5].point.file, keep);
	cbi_prune_opts o = { .dest = f->dest, .keep = { .last = 1 } };
	cbi_prune_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	char save[4][2][4200];
	for (int i = 1; i < 5; i++) {
		snprintf(save[i - 1][0], sizeof save[0][0], "%s/s%d.cbx", f->dir, i);
		snprintf(save[i - 1][1], sizeof save[0][1], "%s/s%d.cbi", f->dir, i);
		tu_copy_file(f->r[i].point.index_file, save[i - 1][0]);
		tu_copy_file(f->r[i].point.file, save[i - 1][1]);
	}
	if (cbi_prune(&o, &r, &e))
		fail_msg("prune: %s", e.msg);
	cbi_prune_result_free(&r);
	const char *mi = tu_find(f->dest, ".cbi", "-m0000");
	assert_non_null(mi);
	cbi_strlcpy(kept_img, mi, sizeof kept_img);
	/* the state after step 1 (SPEC "Order of the changes") with seqs 1-4 back */
	tu_copy_file(keep, f->r[5].point.file);
	for (int i = 1; i < 5; i++) {
		tu_copy_file(save[i - 1][0], f->r[i].point.index_file);
		tu_copy_file(save[i - 1][1], f->r[i].point.file);
	}
	restores(f, 5);
	if (by_backup) {
		/* issue 11: the next backup of the job finishes it too, with a note */
		cbi_backup_opts bo = tu_bopts(f->src, f->dest);
		cbi_backup_result br;
		memset(&e, 0, sizeof e);
		if (cbi_backup(&bo, &br, &e))
			fail_msg("backup: %s", e.msg);
		assert_true(br.n_warnings >= 1);
		assert_non_null(strstr(br.warnings[0], "interrupted prune"));
		assert_int_equal(br.point.type, CBI_INCREMENTAL);
		assert_memory_equal(br.point.parent_id, f->r[5].point.point_id, 16);
		assert_int_equal(tu_count(f->dest, ".cbx", 0), 2);
		assert_int_equal(tu_count(f->dest, ".cbi", 0), 2);
		restores(f, 5);
		return;
	}
	o.keep.last = 1;
	if (cbi_prune(&o, &r, &e))
		fail_msg("prune: %s", e.msg);
	assert_true(r.n_notes >= 1);
	assert_non_null(strstr(r.notes[0], "interrupted prune"));
	cbi_prune_result_free(&r);
	assert_int_equal(tu_count(f->dest, ".cbx", 0), 1);
	assert_int_equal(tu_count(f->dest, ".cbi", 0), 1);
	restores(f, 5);
}

static void test_interrupted_merge_finished(void **state)
{
	interrupted_merge(*state, 0);
}

static void test_interrupted_merge_finished_by_backup(void **state)
{
	interrupted_merge(*state, 1);
}

/* ------------------------------------------------------------ vectors */

static int vec_pass(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	(void)what;
	(void)confirm;
	size_t n;
	char *p = (char *)tu_read_file(ud, &n);
	while (n && (p[n - 1] == '\n' || p[n - 1] == '\r'))
		n--;
	if (n >= bufsz) {
		free(p);
		return -1;
	}
	memcpy(buf, p, n);
	buf[n] = 0;
	free(p);
	return (int)n;
}

static void sha256_hex(const char *path, char hex[65])
{
	size_t n;
	uint8_t *b = tu_read_file(path, &n), d[32];
	unsigned int dl = 0;
	assert_int_equal(EVP_Digest(b, n, d, &dl, EVP_sha256(), NULL), 1);
	free(b);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* One merged vector: the points (seq, first_seq, merged) are as SPEC's
 * "Test vectors" describes, and each restores to expected.sha256. */
static void check_merged_vector(const char *dir, const char *tmp, const uint32_t (*want)[3], size_t nwant,
				const char *passfile)
{
	cbi_point *pts = NULL;
	size_t n = 0;
	cbi_error e;
	if (cbi_list(dir, &pts, &n, &e))
		fail_msg("list '%s': %s", dir, e.msg);
	assert_int_equal(n, nwant);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(pts[i].seq, want[i][0]);
		assert_int_equal(pts[i].first_seq, want[i][1]);
		assert_int_equal(pts[i].merged, (int)want[i][2]);
		assert_false(pts[i].broken);
		/* the image's header carries MERGED exactly when the point is merged */
		size_t len;
		uint8_t *b = tu_read_file(pts[i].file, &len);
		cbi_hdr h;
		assert_int_equal(cbi_hdr_decode(b, &h), 0);
		assert_int_equal(!!(h.flags & CBI_HDR_MERGED), (int)want[i][2]);
		free(b);
	}
	char exp[4200], line[200];
	snprintf(exp, sizeof exp, "%s/expected.sha256", dir);
	FILE *fp = fopen(exp, "r");
	assert_non_null(fp);
	int lines = 0;
	while (fgets(line, sizeof line, fp)) {
		unsigned seq;
		char hex[65], got[65];
		assert_int_equal(sscanf(line, "%u %64s", &seq, hex), 2);
		size_t i = 0;
		while (i < n && pts[i].seq != seq)
			i++;
		assert_true(i < n);
		const char *t = tu_path(tmp, "vec.img");
		unlink(t);
		cbi_restore_opts o = { .point = pts[i].index_file, .target = t, .threads = 2,
				       .pass = passfile ? vec_pass : NULL, .pass_ud = (void *)passfile,
				       .state_dir = tu_path(tmp, "nostate") };
		cbi_restore_result r;
		if (cbi_restore(&o, &r, &e))
			fail_msg("'%s' seq %u: restore: %s", dir, seq, e.msg);
		sha256_hex(t, got);
		assert_string_equal(got, hex);
		lines++;
	}
	fclose(fp);
	assert_int_equal(lines, (int)nwant);
	free(pts);
}

static void test_merged_vectors(void **state)
{
	tu_fix *f = *state;
	const char *vec = getenv("CBIMG_VECTORS");
	char plain[4096], enc[4096], pass[4200];
	if (!vec || snprintf(plain, sizeof plain, "%s/valid/merged", vec) >= (int)sizeof plain ||
	    snprintf(enc, sizeof enc, "%s/encrypted/merged", vec) >= (int)sizeof enc || !tu_exists(plain) ||
	    !tu_exists(enc)) {
		print_message("skipped: $CBIMG_VECTORS/valid/merged or encrypted/merged not present\n");
		skip();
		return;
	}
	/* seq 0 (full), seq 3 merged over seqs 1-2 (first 1, parent seq 0) */
	static const uint32_t wp[][3] = { { 0, 0, 0 }, { 3, 1, 1 } };
	check_merged_vector(plain, f->dir, wp, 2, NULL);
	/* seq 2: a synthetic full (first 0), records re-sealed under its key */
	static const uint32_t we[][3] = { { 2, 0, 1 } };
	snprintf(pass, sizeof pass, "%s/passphrase", enc);
	check_merged_vector(enc, f->dir, we, 1, pass);
}

/* A prune is a run of kind "prune" in the catalog and in the run log (where
 * the catalog cannot live), with its byte counts and points removed. */
static void test_prune_runs_recorded(void **state)
{
	tu_fix *f = *state;
	cbi_error e;
	int64_t id = 0;
	cbi_run *runs = NULL;
	size_t n = 0;
	assert_int_equal(cbi_catalog_prune_begin(f->dir, "h", "s", "p", "j", &id, &e), 0);
	assert_true(id > 0);
	assert_int_equal(cbi_catalog_prune_end(f->dir, id, 0, NULL, 100, 200, 3, &e), 0);
	assert_int_equal(cbi_log(f->dir, NULL, &runs, &n, &e), 0);
	assert_int_equal(n, 1);
	assert_int_equal(runs[0].kind, CBI_RUN_PRUNE);
	assert_int_equal(runs[0].result, CBI_RUN_OK);
	assert_int_equal(runs[0].points_removed, 3);
	assert_true(runs[0].bytes_read == 100 && runs[0].bytes_written == 200);
	free(runs);
	/* the run log */
	char rl[4200];
	snprintf(rl, sizeof rl, "%s/rl", f->dir);
	assert_int_equal(mkdir(rl, 0755), 0);
	assert_int_equal(cbi_runlog_begin_kind(rl, CBI_RUN_PRUNE, "h", "s", "p", "j", &id, &e), 0);
	cbi_backup_result r;
	memset(&r, 0, sizeof r);
	r.bytes_read = 7;
	assert_int_equal(cbi_runlog_end_removed(rl, id, CBI_RUN_OK, NULL, &r, 2, 0, &e), 0);
	assert_int_equal(cbi_runlog_begin(rl, "h", "s", "p", "j", &id, &e), 0);
	assert_int_equal(cbi_runlog_read(rl, NULL, &runs, &n, &e), 0);
	assert_int_equal(n, 2);
	assert_int_equal(runs[0].kind, CBI_RUN_PRUNE);
	assert_int_equal(runs[0].points_removed, 2);
	assert_true(runs[0].bytes_read == 7);
	assert_int_equal(runs[1].kind, CBI_RUN_BACKUP);
	free(runs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_select_rules),
		cmocka_unit_test_setup_teardown(test_merge_keeps_identity, setup_points, teardown_points),
		cmocka_unit_test_setup_teardown(test_interrupted_merge_finished, setup_points, teardown_points),
		cmocka_unit_test_setup_teardown(test_interrupted_merge_finished_by_backup, setup_points, teardown_points),
		cmocka_unit_test_setup_teardown(test_merged_vectors, tu_setup_dir, tu_teardown_dir),
		cmocka_unit_test_setup_teardown(test_prune_runs_recorded, tu_setup_dir, tu_teardown_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
