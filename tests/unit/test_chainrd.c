/* test_chainrd.c - the chain reader (chainrd.h): opening a chain, its
 * verdict (parent links, index digests, header MACs, the local state) and
 * images opened lazily with their failures remembered; verify reporting
 * each chain's own unlock failure. */
#include "testutil.h"

#include "chainrd.h"
#include "format.h"
#include "state.h"
#include "util.h"

#define SRC_SIZE (256u * 1024u + 512u)
#define PASS "correct horse battery staple"

typedef struct cfix {
	char dir[256];
	char src[4096];
	char dest[4096];
	char state[4096];
	cbi_backup_result r[4];
} cfix;

typedef struct pass_cb {
	const char *pw;
	int calls;
} pass_cb;

static int give_pass(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	pass_cb *p = ud;
	p->calls++;
	if (!p->pw)
		return -CBI_EPASS;
	size_t n = strlen(p->pw);
	assert_true(n < bufsz);
	memcpy(buf, p->pw, n + 1);
	return (int)n;
}

static void change_block(const char *src, uint64_t block, uint64_t seed)
{
	uint8_t b[4096];
	tu_fill_random(b, sizeof b, seed);
	tu_pwrite(src, b, sizeof b, (off_t)(block * 4096));
}

/* n points of job "unit" (encrypted with PASS when enc), the local state in
 * f->state when state is set. */
static void make_chain(cfix *f, int n, int enc, int state, const char *job)
{
	static pass_cb pc = { PASS, 0 };
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	if (job)
		o.job = job;
	if (enc) {
		o.encrypt = 1;
		o.kdf = (cbi_kdf_params){ 12, 8, 1 };
		o.pass = give_pass;
		o.pass_ud = &pc;
	}
	if (state) {
		o.no_state = 0;
		o.state_dir = f->state;
	}
	for (int i = 0; i < n; i++) {
		if (i)
			change_block(f->src, (uint64_t)(i * 10), (uint64_t)i + 100);
		tu_backup_ok(&o, &f->r[i]);
		assert_int_equal(f->r[i].point.seq, (uint32_t)i);
	}
}

static int setup_c(void **state)
{
	cfix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	snprintf(f->state, sizeof f->state, "%s/state", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	assert_int_equal(mkdir(f->state, 0700), 0);
	tu_write_pattern(f->src, SRC_SIZE, 1);
	return 0;
}

static int teardown_c(void **state)
{
	cfix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f);
	}
	return 0;
}

static cbi_chain_opts copts(cfix *f, pass_cb *pc)
{
	cbi_chain_opts o = { .pass = pc ? give_pass : NULL, .pass_ud = pc, .state_dir = f->state };
	return o;
}

static cbi_chain *open_ok(const char *file, const cbi_chain_opts *o)
{
	cbi_chain *c = NULL;
	cbi_error e;
	memset(&e, 0, sizeof e);
	int rc = cbi_chain_open(file, o, &c, &e);
	if (rc)
		fail_msg("cbi_chain_open(%s) = %d: %s", file, rc, e.msg);
	return c;
}

static void test_open_plain_chain(void **state)
{
	cfix *f = *state;
	make_chain(f, 4, 0, 0, NULL);
	cbi_chain_opts o = copts(f, NULL);
	cbi_chain *c = open_ok(f->r[3].point.file, &o);
	assert_int_equal(cbi_chain_len(c), 4);
	for (uint32_t s = 0; s < 4; s++) {
		const cbi_point *p = cbi_chain_point(c, s);
		assert_non_null(p);
		assert_memory_equal(p->point_id, f->r[s].point.point_id, 16);
		cbi_image *m = NULL;
		assert_int_equal(cbi_chain_image(c, s, &m, NULL), 0);
		assert_non_null(m);
		assert_int_equal(m->hdr.seq, s);
	}
	assert_null(cbi_chain_point(c, 4));
	cbi_index *x = cbi_chain_tip_index(c);
	assert_non_null(x);
	assert_memory_equal(x->hdr.point_id, f->r[3].point.point_id, 16);
	cbi_image *m = NULL;
	cbi_error e;
	assert_int_equal(cbi_chain_image(c, 4, &m, &e), -CBI_EDAMAGED);
	assert_non_null(strstr(e.msg, "beyond the chain"));
	assert_string_equal(cbi_chain_key_file(c), "");
	cbi_chain_close(c);

	/* the middle of the chain, from its index file */
	c = open_ok(f->r[1].point.index_file, &o);
	assert_int_equal(cbi_chain_len(c), 2);
	cbi_chain_close(c);

	/* the newest point of a job; none of another */
	assert_int_equal(cbi_chain_open_job(f->dest, "testhost", "test:disk0", "unit", &o, &c, &e), 0);
	assert_int_equal(cbi_chain_len(c), 4);
	cbi_chain_close(c);
	c = NULL;
	assert_int_equal(cbi_chain_open_job(f->dest, "testhost", "test:disk0", "other", &o, &c, &e), -CBI_ENOCHAIN);
	assert_null(c);
	assert_non_null(strstr(e.msg, "other"));
}

static void test_missing_parent(void **state)
{
	cfix *f = *state;
	make_chain(f, 4, 0, 0, NULL);
	assert_int_equal(rename(f->r[1].point.index_file, tu_path(f->dir, "away.cbx")), 0);
	cbi_chain_opts o = copts(f, NULL);
	cbi_chain *c = NULL;
	cbi_error e;
	assert_int_equal(cbi_chain_open(f->r[3].point.file, &o, &c, &e), -CBI_ENOPARENT);
	assert_null(c);
	assert_non_null(strstr(e.msg, "not found"));
	char id[33];
	cbi_id_hex(f->r[1].point.point_id, id);
	assert_non_null(strstr(e.msg, id));
	/* the points below the gap still open; the directory view lists all three */
	c = open_ok(f->r[0].point.file, &o);
	size_t n = 0;
	cbi_chain_points(c, &n);
	assert_int_equal(n, 3);
	cbi_chain_close(c);
	/* an index not in the file's directory */
	assert_int_equal(rename(tu_path(f->dir, "away.cbx"), f->r[1].point.index_file), 0);
	assert_int_equal(rename(f->r[2].point.index_file, tu_path(f->dir, "x.cbx")), 0);
	assert_int_equal(cbi_chain_open(f->r[2].point.file, &o, &c, &e), -CBI_ENOPARENT);
	assert_non_null(strstr(e.msg, "index file of this point is not in"));
}

static void flip(const char *path, off_t off)
{
	size_t len = 0;
	uint8_t *b = tu_read_file(path, &len);
	assert_true((size_t)off < len);
	b[off] ^= 0x10;
	tu_pwrite(path, b + off, 1, off);
	free(b);
}

static void test_damaged_index_digest(void **state)
{
	cfix *f = *state;
	make_chain(f, 3, 0, 0, NULL);
	flip(f->r[2].point.index_file, CBI_HDR_SIZE + 5); /* an entry's hash: structure intact */
	cbi_chain_opts o = copts(f, NULL);
	cbi_chain *c = NULL;
	cbi_error e;
	assert_int_equal(cbi_chain_open(f->r[2].point.file, &o, &c, &e), -CBI_EDAMAGED);
	assert_null(c);
	assert_non_null(strstr(e.msg, "digest mismatch"));
	/* a point below it is still whole */
	c = open_ok(f->r[1].point.file, &o);
	cbi_chain_close(c);
}

static void test_image_failure_remembered(void **state)
{
	cfix *f = *state;
	make_chain(f, 3, 0, 0, NULL);
	/* seq 0's image missing, seq 1's cut short */
	assert_int_equal(rename(f->r[0].point.file, tu_path(f->dir, "img0")), 0);
	size_t len = 0;
	uint8_t *b = tu_read_file(f->r[1].point.file, &len);
	tu_write_file(f->r[1].point.file, b, len - 200);
	free(b);
	cbi_chain_opts o = copts(f, NULL);
	cbi_chain *c = open_ok(f->r[2].point.file, &o);
	cbi_image *m = NULL;
	cbi_error e1, e2;
	memset(&e1, 0, sizeof e1);
	memset(&e2, 0, sizeof e2);
	assert_int_equal(cbi_chain_image(c, 0, &m, &e1), -CBI_ENOPARENT);
	assert_non_null(strstr(e1.msg, "seq 0"));
	/* the file comes back: the failure is remembered, not retried, and the
	 * second call, with or without err, says the same */
	assert_int_equal(rename(tu_path(f->dir, "img0"), f->r[0].point.file), 0);
	assert_int_equal(cbi_chain_image(c, 0, &m, NULL), -CBI_ENOPARENT);
	assert_int_equal(cbi_chain_image(c, 0, &m, &e2), -CBI_ENOPARENT);
	assert_int_equal(e2.code, e1.code);
	assert_string_equal(e2.msg, e1.msg);
	/* damage, not a missing file */
	memset(&e1, 0, sizeof e1);
	int rc = cbi_chain_image(c, 1, &m, &e1);
	assert_true(cbi_is_damage(rc));
	assert_non_null(strstr(e1.msg, "is damaged"));
	assert_int_equal(cbi_chain_image(c, 1, &m, &e2), rc);
	assert_string_equal(e2.msg, e1.msg);
	assert_int_equal(cbi_chain_image(c, 2, &m, NULL), 0);
	cbi_chain_close(c);
}

static void test_tip_only(void **state)
{
	cfix *f = *state;
	make_chain(f, 3, 1, 1, NULL);
	/* an outbox: one index (the state's copy) and the key file of DEST */
	char out[4096], idx[4200];
	snprintf(out, sizeof out, "%s/outbox", f->dir);
	assert_int_equal(mkdir(out, 0755), 0);
	snprintf(idx, sizeof idx, "%s/tip.cbx", out);
	size_t len = 0;
	uint8_t *b = tu_read_file(f->r[2].point.index_file, &len);
	tu_write_file(idx, b, len);
	free(b);
	pass_cb pc = { PASS, 0 };
	cbi_chain_opts o = { .pass = give_pass, .pass_ud = &pc, .no_state = 1, .keep_pass = 1 };
	cbi_chain *c = NULL;
	cbi_error e;
	/* no key file in the outbox and no state: cannot be unlocked */
	assert_int_equal(cbi_chain_open_tip(idx, out, &o, &c, &e), -CBI_ENOKEY);
	assert_null(c);
	/* with DEST's key files */
	memset(&e, 0, sizeof e);
	int rc = cbi_chain_open_tip(idx, f->dest, &o, &c, &e);
	if (rc)
		fail_msg("open_tip: %d %s", rc, e.msg);
	assert_int_equal(pc.calls, 1);
	assert_int_equal(cbi_chain_len(c), 3);
	assert_non_null(cbi_chain_point(c, 2));
	assert_null(cbi_chain_point(c, 1));
	assert_non_null(cbi_chain_tip_index(c));
	assert_true(cbi_chain_tip_index(c)->keyed);
	assert_string_equal(cbi_chain_key_file(c), f->r[0].key_file);
	int pl = 0;
	const char *pw = cbi_chain_pass(c, &pl);
	assert_non_null(pw);
	assert_int_equal(pl, (int)strlen(PASS));
	assert_memory_equal(pw, PASS, (size_t)pl);
	cbi_image *m = NULL;
	assert_int_equal(cbi_chain_image(c, 1, &m, &e), -EINVAL); /* no images: not a chain to read */
	cbi_chain_close(c);
	/* the state's copy of the key file unlocks it too */
	o.no_state = 0;
	o.state_dir = f->state;
	pc.calls = 0;
	assert_int_equal(cbi_chain_open_tip(idx, out, &o, &c, &e), 0);
	assert_int_equal(pc.calls, 1);
	cbi_chain_close(c);
}

static void test_wrong_passphrase(void **state)
{
	cfix *f = *state;
	make_chain(f, 2, 1, 0, NULL);
	pass_cb bad = { "not the passphrase", 0 };
	cbi_chain_opts o = copts(f, &bad);
	cbi_chain *c = NULL;
	cbi_error e;
	assert_int_equal(cbi_chain_open(f->r[1].point.file, &o, &c, &e), -CBI_EPASS);
	assert_null(c);
	assert_non_null(strstr(e.msg, "wrong passphrase"));
	assert_int_equal(bad.calls, 1);
	/* asked once per chain: the failure is remembered with its message */
	assert_int_equal(cbi_chain_open_dir(f->dest, &o, &c, &e), 0);
	bad.calls = 0;
	const cbi_point *pts;
	size_t n;
	pts = cbi_chain_points(c, &n);
	assert_int_equal(n, 2);
	cbi_index *x = NULL;
	assert_int_equal(cbi_index_open(pts[1].index_file, &x, &e), 0);
	cbi_error e1, e2;
	const cbi_keys *k = NULL;
	assert_int_equal(cbi_chain_keys(c, &x->hdr, &k, &e1), -CBI_EPASS);
	assert_int_equal(cbi_chain_auth_index(c, x, &e2), -CBI_EPASS);
	assert_null(k);
	assert_string_equal(e1.msg, e2.msg);
	assert_int_equal(bad.calls, 1);
	assert_false(x->keyed);
	cbi_index_close(x);
	cbi_chain_close(c);
	/* no passphrase at all */
	pass_cb none = { NULL, 0 };
	o = copts(f, &none);
	assert_int_equal(cbi_chain_open(f->r[1].point.file, &o, &c, &e), -CBI_EPASS);
	/* the right one */
	pass_cb good = { PASS, 0 };
	o = copts(f, &good);
	c = open_ok(f->r[1].point.file, &o);
	assert_int_equal(good.calls, 1);
	cbi_image *m = NULL;
	assert_int_equal(cbi_chain_image(c, 0, &m, &e), 0);
	assert_true(m->keyed);
	assert_string_equal(cbi_chain_key_file(c), f->r[0].key_file);
	cbi_chain_close(c);
}

/* Change a field of a file's header and write it back with a valid
 * checksum: only the header MAC can tell. */
static void alter_header(const char *path)
{
	uint8_t b[CBI_HDR_SIZE];
	cbi_hdr h;
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, sizeof b, 0), (ssize_t)sizeof b);
	assert_int_equal(cbi_hdr_decode(b, &h), 0);
	h.created_ns += 1000000000;
	cbi_hdr_encode(&h, b);
	assert_int_equal(cbi_hdr_decode(b, &h), 0);
	assert_int_equal(pwrite(fd, b, sizeof b, 0), (ssize_t)sizeof b);
	close(fd);
}

static void test_altered_header(void **state)
{
	cfix *f = *state;
	make_chain(f, 3, 1, 0, NULL);
	pass_cb pc = { PASS, 0 };
	cbi_chain_opts o = copts(f, &pc);
	cbi_chain *c = NULL;
	cbi_error e;
	/* an index of the chain below the tip: the links are checked too */
	alter_header(f->r[0].point.index_file);
	assert_int_equal(cbi_chain_open(f->r[2].point.file, &o, &c, &e), -CBI_EAUTH);
	assert_null(c);
	assert_non_null(strstr(e.msg, "header authentication failed"));
	assert_non_null(strstr(e.msg, f->r[0].point.index_file));
	/* an image: found when it is opened */
	cfix g = *f;
	snprintf(g.dest, sizeof g.dest, "%s/dest2", f->dir);
	assert_int_equal(mkdir(g.dest, 0755), 0);
	make_chain(&g, 2, 1, 0, NULL);
	alter_header(g.r[0].point.file);
	c = open_ok(g.r[1].point.file, &o);
	cbi_image *m = NULL;
	assert_int_equal(cbi_chain_image(c, 0, &m, &e), -CBI_EAUTH);
	assert_non_null(strstr(e.msg, "header authentication failed"));
	assert_int_equal(cbi_chain_image(c, 1, &m, &e), 0);
	cbi_chain_close(c);
}

static void test_rollback_against_state(void **state)
{
	cfix *f = *state;
	make_chain(f, 3, 0, 1, NULL);
	cbi_point *st = NULL;
	size_t nst = 0;
	assert_int_equal(cbi_state_snapshot(f->state, &st, &nst), 0);
	assert_int_equal(nst, 1);
	assert_int_equal(st[0].seq, 2);
	cbi_chain_opts o = copts(f, NULL);
	cbi_chain *c = open_ok(f->r[2].point.file, &o);
	cbi_error e;
	uint32_t behind = 9, sseq = 9;
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 2), st, nst, &behind, &sseq, &e), 0);
	assert_int_equal(behind, 0);
	assert_int_equal(sseq, 2);
	/* seq 1 as the newest here: the state continues it (its parent), one behind */
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 1), st, nst, &behind, &sseq, &e), 0);
	assert_int_equal(behind, 1);
	/* seq 0: two behind, continued as far as the indexes tell */
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 0), st, nst, &behind, &sseq, &e), 0);
	assert_int_equal(behind, 2);
	/* no state: nothing to compare */
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 1), st, 0, &behind, &sseq, &e), 0);
	assert_int_equal(behind, 0);
	/* another point at seq 2 in the state: forked, or a point replaced */
	cbi_point fork = st[0];
	fork.point_id[0] ^= 1;
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 2), &fork, 1, &behind, &sseq, &e),
			 -CBI_EMISMATCH);
	assert_non_null(strstr(e.msg, "forked"));
	/* ... also when the state's seq is below the tip here */
	cbi_point older = st[0];
	older.seq = 1;
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 2), &older, 1, &behind, &sseq, &e),
			 -CBI_EMISMATCH);
	/* a newer state point that does not continue the tip here */
	cbi_point other = st[0];
	other.parent_id[3] ^= 1;
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 1), &other, 1, &behind, &sseq, &e),
			 -CBI_EMISMATCH);
	assert_non_null(strstr(e.msg, "does not continue"));
	cbi_chain_close(c);
	/* two behind, but the state's index disagrees on a block it says is
	 * unchanged since seq 0: the index of seq 1 of another chain */
	cfix g = *f;
	snprintf(g.dest, sizeof g.dest, "%s/dest2", f->dir);
	snprintf(g.state, sizeof g.state, "%s/state2", f->dir);
	assert_int_equal(mkdir(g.dest, 0755), 0);
	assert_int_equal(mkdir(g.state, 0700), 0);
	change_block(g.src, 3, 77);
	make_chain(&g, 2, 0, 0, NULL);
	c = open_ok(f->r[2].point.file, &o);
	cbi_point alien = st[0];
	cbi_strlcpy(alien.index_file, g.r[1].point.index_file, sizeof alien.index_file);
	alien.seq = 2;
	assert_int_equal(cbi_chain_check_state(c, cbi_chain_point(c, 0), &alien, 1, &behind, &sseq, &e),
			 -CBI_EMISMATCH);
	cbi_chain_close(c);
	free(st);
}

/* ---- verify.c:124: every chain's own unlock failure is reported, not the
 * first chain's for every later one. */

typedef struct findings {
	char msg[8][1024];
	char file[8][4096];
	int n;
} findings;

static void on_problem(void *ud, const char *file, int64_t block, const char *problem)
{
	findings *fs = ud;
	if (fs->n < 8) {
		cbi_strlcpy(fs->msg[fs->n], problem, sizeof fs->msg[0]);
		cbi_strlcpy(fs->file[fs->n], file, sizeof fs->file[0]);
	}
	fs->n++;
}

static void test_verify_reports_each_chains_unlock_failure(void **state)
{
	cfix *f = *state;
	make_chain(f, 1, 1, 0, "alpha");
	cbi_backup_result a = f->r[0];
	make_chain(f, 1, 1, 0, "beta");
	cbi_backup_result b = f->r[0];
	findings fs;
	memset(&fs, 0, sizeof fs);
	pass_cb pc = { PASS, 0 };
	cbi_verify_opts vo = { .fn = on_problem, .ud = &fs, .pass = give_pass, .pass_ud = &pc, .no_state = 1 };
	cbi_verify_result r;
	cbi_error e;
	/* only damaged key files: damage, reported for each chain with its own
	 * reason, and verification goes on */
	tu_flip_byte(a.key_file, 200, 0x01);
	tu_flip_byte(b.key_file, 200, 0x01);
	assert_int_equal(cbi_verify(f->dest, &vo, &r, &e), -CBI_EDAMAGED);
	int chains = 0;
	for (int i = 0; i < fs.n && i < (int)(sizeof fs.msg / sizeof fs.msg[0]); i++) {
		if (!strstr(fs.msg[i], "no intact key file"))
			continue;
		const cbi_backup_result *w = !strcmp(fs.file[i], a.point.index_file) ? &a : &b;
		assert_string_equal(fs.file[i], w->point.index_file);
		char id[9];
		cbi_id_short(w->point.chain_id, id);
		if (!strstr(fs.msg[i], id) || !strstr(fs.msg[i], w == &a ? "'alpha'" : "'beta'"))
			fail_msg("problem of '%s' names another chain: %s", fs.file[i], fs.msg[i]);
		chains++;
	}
	assert_int_equal(chains, 2);
	memset(&fs, 0, sizeof fs);
	assert_int_equal(unlink(a.key_file), 0);
	assert_int_equal(unlink(b.key_file), 0);
	/* no key file (class NOKEY, revision 2.4): verify stops, as restore
	 * does, with the first chain's own reason; not a problem (exit 1) */
	assert_int_equal(cbi_verify(f->dest, &vo, &r, &e), -CBI_ENOKEY);
	assert_int_equal(fs.n, 0);
	char ia[9], ib[9];
	cbi_id_short(a.point.chain_id, ia);
	cbi_id_short(b.point.chain_id, ib);
	int is_a = strstr(e.msg, ia) != NULL;
	if (!(is_a ? strstr(e.msg, "'alpha'") != NULL : strstr(e.msg, ib) && strstr(e.msg, "'beta'")))
		fail_msg("the error names no chain, or another one's job: %s", e.msg);
	assert_non_null(strstr(e.msg, "neither in"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_plain_chain, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_missing_parent, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_damaged_index_digest, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_image_failure_remembered, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_tip_only, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_wrong_passphrase, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_altered_header, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_rollback_against_state, setup_c, teardown_c),
		cmocka_unit_test_setup_teardown(test_verify_reports_each_chains_unlock_failure, setup_c, teardown_c),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
