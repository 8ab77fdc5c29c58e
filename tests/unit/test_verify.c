/* test_verify.c - cbi_verify(): intact chains, damaged records, indexes
 * and files, and the reference vectors in $CBIMG_VECTORS. */
#include "testutil.h"

#include "format.h"
#include "image.h"
#include "util.h"

#define BS 4096u

/* Everything the callback was told, one "FILE: [block N: ]PROBLEM" line
 * each, like the CLI prints them. */
typedef struct findings {
	char lines[64][1400];
	int n;
	int64_t max_block;
	int total;
} findings;

static void on_problem(void *ud, const char *file, int64_t block, const char *problem)
{
	findings *f = ud;
	f->total++;
	if (block > f->max_block)
		f->max_block = block;
	if (f->n < 64) {
		if (block >= 0)
			snprintf(f->lines[f->n], sizeof f->lines[0], "%.600s: block %lld: %.700s", file,
				 (long long)block, problem);
		else
			snprintf(f->lines[f->n], sizeof f->lines[0], "%.600s: %.700s", file, problem);
		f->n++;
	}
}

static void findings_init(findings *f)
{
	memset(f, 0, sizeof *f);
	f->max_block = -1;
}

static int findings_has(const findings *f, const char *needle)
{
	for (int i = 0; i < f->n; i++)
		if (strstr(f->lines[i], needle))
			return 1;
	return 0;
}

static void findings_dump(const findings *f)
{
	for (int i = 0; i < f->n; i++)
		print_message("  finding: %s\n", f->lines[i]);
}

typedef struct vf_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	cbi_backup_result r[3];
} vf_fix;

/* A chain of 3 points of a 200-block file. */
static int setup_vf(void **state)
{
	vf_fix *v = calloc(1, sizeof *v);
	if (!v)
		return -1;
	*state = v;
	tu_mkdtemp(v->dir, sizeof v->dir);
	snprintf(v->src, sizeof v->src, "%s/disk.img", v->dir);
	snprintf(v->dest, sizeof v->dest, "%s/dest", v->dir);
	assert_int_equal(mkdir(v->dest, 0755), 0);
	size_t size = 200 * BS + 10;
	uint8_t *d = malloc(size);
	assert_non_null(d);
	tu_fill_text(d, size, 1);
	memset(d + 50 * BS, 0, 20 * BS);
	tu_fill_random(d + 100 * BS, 4 * BS, 3);
	tu_write_file(v->src, d, size);
	cbi_backup_opts o = tu_bopts(v->src, v->dest);
	tu_backup_ok(&o, &v->r[0]);
	uint8_t b[BS];
	tu_fill_text(b, BS, 500);
	tu_pwrite(v->src, b, BS, 7 * BS);
	tu_pwrite(v->src, b, BS, 55 * BS);
	tu_backup_ok(&o, &v->r[1]);
	tu_fill_text(b, BS, 600);
	tu_pwrite(v->src, b, BS, 8 * BS);
	tu_backup_ok(&o, &v->r[2]);
	free(d);
	return 0;
}

static int teardown_vf(void **state)
{
	vf_fix *v = *state;
	if (v) {
		tu_rm_rf(v->dir);
		free(v);
	}
	return 0;
}

static int verify(const char *path, findings *f, cbi_verify_result *r, cbi_error *e)
{
	findings_init(f);
	memset(e, 0, sizeof *e);
	return cbi_verify(path, &(cbi_verify_opts){ .fn = on_problem, .ud = f, .no_state = 1 }, r, e);
}

static void test_intact(void **state)
{
	vf_fix *v = *state;
	findings f;
	cbi_verify_result r;
	cbi_error e;
	int rc = verify(v->dest, &f, &r, &e);
	if (rc) {
		findings_dump(&f);
		fail_msg("verify of an intact chain: %d %s", rc, e.msg);
	}
	assert_int_equal(f.total, 0);
	assert_true(r.problems == 0);
	assert_true(r.points_checked == 3);
	assert_true(r.files_checked == 6);
	/* every stored record was checked */
	uint64_t stored = v->r[0].blocks_stored + v->r[1].blocks_stored + v->r[2].blocks_stored;
	assert_true(r.blocks_checked == stored);

	/* a single file: it and its ancestors */
	assert_int_equal(verify(v->r[2].point.index_file, &f, &r, &e), 0);
	assert_true(r.points_checked == 3);
	assert_int_equal(verify(v->r[1].point.file, &f, &r, &e), 0);
	assert_true(r.points_checked == 2);
	assert_int_equal(verify(v->r[0].point.file, &f, &r, &e), 0);
	assert_true(r.points_checked == 1);
	/* a NULL callback is allowed */
	assert_int_equal(cbi_verify(v->dest, &(cbi_verify_opts){ .no_state = 1 }, &r, NULL), 0);
	/* an empty directory holds nothing wrong */
	const char *empty = tu_path(v->dir, "empty");
	assert_int_equal(mkdir(empty, 0755), 0);
	assert_int_equal(verify(empty, &f, &r, &e), 0);
	assert_true(r.points_checked == 0);
}

static void test_flipped_record_byte(void **state)
{
	vf_fix *v = *state;
	/* block 7 of seq 1 (compressed text) */
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(v->r[1].point.file, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, 7, &te), 0);
	cbi_image_close(m);
	tu_flip_byte(v->r[1].point.file, te.offset + CBI_REC_HDR_SIZE + te.stored_len / 2, 0x10);

	findings f;
	cbi_verify_result r;
	cbi_error e;
	int rc = verify(v->dest, &f, &r, &e);
	assert_int_equal(rc, -CBI_EDAMAGED);
	assert_int_equal(e.code, -CBI_EDAMAGED);
	assert_true(f.total > 0);
	assert_true(r.problems == (uint64_t)f.total);
	assert_true(f.max_block >= 0);
	assert_true(findings_has(&f, "block 7: "));
	assert_true(findings_has(&f, "SHA-256 digest mismatch"));
	/* only the damaged image is named */
	for (int i = 0; i < f.n; i++)
		if (!strstr(f.lines[i], v->r[1].point.file)) {
			findings_dump(&f);
			fail_msg("finding about another file: %s", f.lines[i]);
		}
	/* verify of seq 0 alone does not see it; of seq 2 does (ancestor) */
	assert_int_equal(verify(v->r[0].point.index_file, &f, &r, &e), 0);
	assert_int_equal(verify(v->r[2].point.index_file, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "block 7: "));
}

static void test_flipped_raw_record_byte(void **state)
{
	vf_fix *v = *state;
	/* block 101 of the full: random data, stored raw */
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(v->r[0].point.file, &m, NULL), 0);
	cbi_tab_ent te;
	assert_int_equal(cbi_image_find(m, 101, &te), 0);
	assert_int_equal(te.flags, 0);
	cbi_image_close(m);
	tu_flip_byte(v->r[0].point.file, te.offset + CBI_REC_HDR_SIZE + 1, 0x01);
	findings f;
	cbi_verify_result r;
	cbi_error e;
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "block 101: block hash mismatch"));
}

static void test_flipped_index_byte(void **state)
{
	vf_fix *v = *state;
	findings f;
	cbi_verify_result r;
	cbi_error e;
	/* hash of entry 8 of seq 2 (a block seq 2 stored) */
	uint64_t off = CBI_HDR_SIZE + 8 * CBI_IDX_ENT_SIZE;
	tu_flip_byte(v->r[2].point.index_file, off, 0xff);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "SHA-256 digest mismatch"));
	assert_true(findings_has(&f, "block 8: block does not match the index"));
	assert_true(f.max_block >= 0);
	tu_flip_byte(v->r[2].point.index_file, off, 0xff);
	assert_int_equal(verify(v->dest, &f, &r, &e), 0);

	/* an unchanged entry of seq 1 (block 30, owned by seq 0) */
	off = CBI_HDR_SIZE + 30 * CBI_IDX_ENT_SIZE + 3;
	tu_flip_byte(v->r[1].point.index_file, off, 0x01);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "block 30: "));
	assert_true(findings_has(&f, "SHA-256 digest mismatch"));
	tu_flip_byte(v->r[1].point.index_file, off, 0x01);

	/* the owner field of an entry: a seq newer than the point */
	off = CBI_HDR_SIZE + 31 * CBI_IDX_ENT_SIZE + 16;
	tu_flip_byte(v->r[1].point.index_file, off, 0x04);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "block 31: "));
	tu_flip_byte(v->r[1].point.index_file, off, 0x04);

	/* a trailer counter: only the digest can tell */
	int64_t sz = tu_file_size(v->r[0].point.index_file);
	tu_flip_byte(v->r[0].point.index_file, (uint64_t)sz - 128 + 24, 0x01);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "SHA-256 digest mismatch"));
}

static void test_truncated_file_in_dir(void **state)
{
	vf_fix *v = *state;
	findings f;
	cbi_verify_result r;
	cbi_error e;
	/* the newest image loses its last byte */
	int64_t sz = tu_file_size(v->r[2].point.file);
	assert_int_equal(truncate(v->r[2].point.file, sz - 1), 0);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, v->r[2].point.file));
	assert_true(findings_has(&f, "image file of this point is missing"));
	/* an index cut short */
	sz = tu_file_size(v->r[1].point.index_file);
	assert_int_equal(truncate(v->r[1].point.index_file, sz / 2), 0);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, v->r[1].point.index_file));
	assert_true(findings_has(&f, "not found: the chain is incomplete")); /* seq 2's parent */
	/* a tiny file with a point name */
	tu_write_file(tu_path(v->dest, "tiny.cbx"), "CBIMGIDX", 8);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "tiny.cbx"));
	/* temporary files and other names are not findings */
	const char *ok = tu_path(v->dir, "ok");
	assert_int_equal(mkdir(ok, 0755), 0);
	tu_copy_file(v->r[0].point.file, tu_path(ok, "full.cbi"));
	tu_copy_file(v->r[0].point.index_file, tu_path(ok, "full.cbx"));
	tu_write_file(tu_path(ok, ".full.cbi.123.tmp"), "half", 4);
	tu_write_file(tu_path(ok, "README"), "x", 1);
	assert_int_equal(verify(ok, &f, &r, &e), 0);
	assert_true(r.points_checked == 1);
}

static void test_missing_files(void **state)
{
	vf_fix *v = *state;
	findings f;
	cbi_verify_result r;
	cbi_error e;
	/* orphan image */
	assert_int_equal(unlink(v->r[2].point.index_file), 0);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "image file without a matching index file"));
	/* verify of the orphan image itself */
	assert_int_equal(verify(v->r[2].point.file, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(f.total > 0);
	/* missing full */
	assert_int_equal(unlink(v->r[0].point.index_file), 0);
	assert_int_equal(unlink(v->r[0].point.file), 0);
	assert_int_equal(verify(v->dest, &f, &r, &e), -CBI_EDAMAGED);
	assert_true(findings_has(&f, "(seq 0)"));
	assert_true(findings_has(&f, "not found: the chain is incomplete"));
	/* nothing there at all */
	int rc = verify(tu_path(v->dir, "nothing"), &f, &r, &e);
	assert_int_equal(rc, -ENOENT);
	assert_false(cbi_is_damage(rc));
	assert_non_null(strstr(e.msg, "nothing"));
	/* a file that is not a cbimg file */
	rc = verify(v->src, &f, &r, &e);
	assert_true(rc < 0);
}

static int cancel_cb(void *ud, uint64_t done, uint64_t total)
{
	(void)ud;
	(void)done;
	(void)total;
	return 1;
}

static void test_cancel(void **state)
{
	vf_fix *v = *state;
	cbi_verify_result r;
	cbi_error e;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_verify(v->dest, &(cbi_verify_opts){ .progress = cancel_cb, .no_state = 1 }, &r, &e), -ECANCELED);
	assert_int_equal(e.code, -ECANCELED);
}

/* Progress covers the whole run, in bytes: every index once, every image
 * twice (digest, records), never going back, ending at the total. */
typedef struct prog_rec {
	uint64_t calls, last, total, back, total_changed;
} prog_rec;

static int prog_cb(void *ud, uint64_t done, uint64_t total)
{
	prog_rec *p = ud;
	if (p->calls && done < p->last)
		p->back++;
	if (p->calls && total != p->total)
		p->total_changed++;
	p->calls++;
	p->last = done;
	p->total = total;
	return 0;
}

static void test_progress_bytes(void **state)
{
	vf_fix *v = *state;
	uint64_t want = 0;
	for (int i = 0; i < 3; i++)
		want += v->r[i].point.index_bytes + 2 * v->r[i].point.stored_bytes;
	prog_rec p = { 0 };
	cbi_verify_result r;
	assert_int_equal(cbi_verify(v->dest, &(cbi_verify_opts){ .progress = prog_cb, .progress_ud = &p,
								  .no_state = 1 }, &r, NULL), 0);
	assert_true(p.calls >= 3);
	assert_int_equal(p.back, 0);
	assert_int_equal(p.total_changed, 0);
	assert_int_equal(p.total, want);
	assert_int_equal(p.last, want);
	assert_int_equal(r.bytes_checked, want);
	/* one file: its chain's points only, from 0 again */
	memset(&p, 0, sizeof p);
	assert_int_equal(cbi_verify(v->r[1].point.file, &(cbi_verify_opts){ .progress = prog_cb,
			 .progress_ud = &p, .no_state = 1 }, &r, NULL), 0);
	want = 0;
	for (int i = 0; i < 2; i++)
		want += v->r[i].point.index_bytes + 2 * v->r[i].point.stored_bytes;
	assert_int_equal(p.back, 0);
	assert_int_equal(p.total, want);
	assert_int_equal(p.last, want);
}

/* A chain behind the local state is a note, not a problem; a state that
 * records another point at a seq the chain has is a problem. */
static void on_note(void *ud, const char *file, int64_t block, const char *what)
{
	findings *f = ud;
	(void)block;
	if (f->n < 64)
		snprintf(f->lines[f->n++], sizeof f->lines[0], "NOTE %.600s: %.700s", file, what);
}

static void test_behind_state(void **state)
{
	vf_fix *v = *state;
	char sd[4096], seed[4096];
	snprintf(sd, sizeof sd, "%s/state", v->dir);
	snprintf(seed, sizeof seed, "%s/seed", v->dir);
	assert_int_equal(mkdir(seed, 0755), 0);
	/* a seed disk holds the full; the state continues past it */
	cbi_backup_opts o = tu_bopts(v->src, seed);
	o.no_state = 0;
	o.state_dir = sd;
	cbi_backup_result r0, r1;
	tu_backup_ok(&o, &r0);
	char out[4096];
	snprintf(out, sizeof out, "%s/outbox", v->dir);
	assert_int_equal(mkdir(out, 0755), 0);
	o.dest = out;
	o.outbox = 1; /* continuing from the local state needs --outbox (issue 14) */
	tu_backup_ok(&o, &r1);
	assert_int_equal(r1.point.seq, 1);
	assert_int_equal(r1.from_state, 1);
	findings f;
	cbi_verify_result r;
	cbi_error e;
	findings_init(&f);
	memset(&e, 0, sizeof e);
	cbi_verify_opts vo = { .fn = on_problem, .note = on_note, .ud = &f, .state_dir = sd };
	int rc = cbi_verify(seed, &vo, &r, &e);
	if (rc)
		findings_dump(&f);
	assert_int_equal(rc, 0);
	assert_int_equal(r.problems, 0);
	assert_int_equal(r.behind, 1);
	assert_true(findings_has(&f, "NOTE"));
	assert_true(findings_has(&f, "ends at seq 0 here; the local state is at seq 1: 1 point behind"));
	/* the full's own file: the same */
	findings_init(&f);
	assert_int_equal(cbi_verify(r0.point.file, &vo, &r, &e), 0);
	assert_int_equal(r.behind, 1);
	/* a fork: another seq 1 on the seed disk than the state's */
	o.dest = seed;
	o.no_state = 1;
	o.outbox = 0;
	cbi_backup_result r2;
	tu_backup_ok(&o, &r2);
	assert_int_equal(r2.point.seq, 1);
	findings_init(&f);
	assert_int_equal(cbi_verify(seed, &vo, &r, &e), -CBI_EDAMAGED);
	assert_int_equal(r.behind, 0);
	assert_true(findings_has(&f, "forked"));
}

/* ------------------------------------------------------------ vectors */

static int vectors_dir(const char *sub, char *out, size_t outsz)
{
	const char *vec = getenv("CBIMG_VECTORS");
	struct stat st;
	if (!vec || !*vec)
		return 0;
	if ((size_t)snprintf(out, outsz, "%s/%s", vec, sub) >= outsz)
		return 0;
	return stat(out, &st) == 0 && S_ISDIR(st.st_mode);
}

static int name_cmp(const void *a, const void *b) { return strcmp(a, b); }

/* Subdirectories of dir, sorted; returns the count. */
static int subdirs(const char *dir, char names[][256], int max)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) && n < max) {
		if (de->d_name[0] == '.')
			continue;
		char p[4400];
		struct stat st;
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
			cbi_strlcpy(names[n++], de->d_name, 256);
	}
	closedir(d);
	qsort(names, (size_t)n, 256, name_cmp);
	return n;
}

static void test_vectors(void **state)
{
	(void)state;
	char valid[4096], damaged[4096];
	if (!vectors_dir("valid", valid, sizeof valid)) {
		print_message("skipped: $CBIMG_VECTORS/valid not present (CBIMG_VECTORS=%s)\n",
			      getenv("CBIMG_VECTORS") ? getenv("CBIMG_VECTORS") : "(unset)");
		skip();
		return;
	}
	static char names[64][256];
	findings f;
	cbi_verify_result r;
	cbi_error e;
	int n = subdirs(valid, names, 64);
	assert_true(n > 0);
	for (int i = 0; i < n; i++) {
		char p[4400];
		snprintf(p, sizeof p, "%.3800s/%.255s", valid, names[i]);
		int rc = verify(p, &f, &r, &e);
		if (rc) {
			findings_dump(&f);
			fail_msg("valid/%s: verify = %d (%s)", names[i], rc, e.msg);
		}
		assert_true(r.points_checked > 0);
	}
	print_message("valid: %d directories verified\n", n);

	if (!vectors_dir("damaged", damaged, sizeof damaged)) {
		print_message("note: $CBIMG_VECTORS/damaged not present\n");
		return;
	}
	n = subdirs(damaged, names, 64);
	assert_true(n > 0);
	int failures = 0;
	for (int i = 0; i < n; i++) {
		char p[4400], exp[4500];
		snprintf(p, sizeof p, "%.3800s/%.255s", damaged, names[i]);
		int rc = verify(p, &f, &r, &e);
		/* a case with an 'exit' file is not damage (revision 2.4: a
		 * duplicate is a warning, in notes that make-vectors.sh checks) */
		snprintf(exp, sizeof exp, "%s/exit", p);
		if (access(exp, F_OK) == 0) {
			if (rc != 0 || r.problems || !r.duplicates) {
				print_error("damaged/%s: verify = %d, %llu problems, %llu duplicates; want 0, 0, > 0\n",
					    names[i], rc, (unsigned long long)r.problems,
					    (unsigned long long)r.duplicates);
				failures++;
			}
			continue;
		}
		if (!cbi_is_damage(rc)) {
			findings_dump(&f);
			print_error("damaged/%s: verify = %d (%s), want a damage code\n", names[i], rc, e.msg);
			failures++;
			continue;
		}
		/* every line of the case's expect file is in a finding */
		snprintf(exp, sizeof exp, "%s/expect", p);
		FILE *fp = fopen(exp, "r");
		if (!fp)
			continue;
		char line[1024];
		while (fgets(line, sizeof line, fp)) {
			line[strcspn(line, "\n")] = 0;
			if (!line[0])
				continue;
			if (!findings_has(&f, line)) {
				findings_dump(&f);
				print_error("damaged/%s: no finding contains '%s'\n", names[i], line);
				failures++;
			}
		}
		fclose(fp);
	}
	print_message("damaged: %d directories verified\n", n);
	assert_int_equal(failures, 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_vf, teardown_vf)
	const struct CMUnitTest tests[] = {
		T(test_intact),
		T(test_flipped_record_byte),
		T(test_flipped_raw_record_byte),
		T(test_flipped_index_byte),
		T(test_truncated_file_in_dir),
		T(test_missing_files),
		T(test_cancel),
		T(test_progress_bytes),
		T(test_behind_state),
		cmocka_unit_test(test_vectors),
	};
	return cmocka_run_group_tests_name("verify", tests, NULL, NULL);
}
