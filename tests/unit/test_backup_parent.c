/* test_backup_parent.c - cbi_backup_choose_parent(), the pure decision of
 * which point a backup continues from: DEST's newest point and the local
 * state's ahead of each other, behind, equal, missing or damaged, and the
 * refusals (another disk, a forged clear point, another size), with --full
 * and --no-state. No file is touched: every input is built in memory. */
#include "testutil.h"

#include "backup.h"
#include "format.h"

#define SIZE (1u << 20)

static void mkpt(cbi_point *p, uint8_t chain, uint8_t point, uint32_t seq, int64_t created, int encrypted)
{
	memset(p, 0, sizeof *p);
	memset(p->chain_id, chain, 16);
	memset(p->point_id, point, 16);
	p->seq = seq;
	p->type = seq ? CBI_INCREMENTAL : CBI_FULL;
	p->created_ns = created;
	p->encrypted = encrypted;
	p->block_size = 4096;
	p->source_size = SIZE;
	strcpy(p->host, "pc1");
	strcpy(p->job, "daily");
	strcpy(p->source_id, "disk-A");
	strcpy(p->source_path, "/dev/sda");
	snprintf(p->index_file, sizeof p->index_file, "d/p%02x.cbx", point);
}

static cbi_parent_in base_in(const cbi_point *pts, size_t n, int status, const cbi_point *state)
{
	cbi_parent_in in = {
		.pts = pts, .npts = n,
		.host = "pc1", .source_id = "disk-A", .job = "daily", .source_path = "/dev/sda",
		.source_size = SIZE, .state_status = status, .state = state, .state_why = "'x': digest mismatch",
		.dest = "d", .source = "/dev/sda",
	};
	return in;
}

static cbi_parent_choice decide(const cbi_parent_in *in)
{
	cbi_parent_choice c;
	memset(&c, 0xa5, sizeof c); /* everything must be set */
	cbi_backup_choose_parent(in, &c);
	return c;
}

/* Neither DEST nor the state knows the job: a new chain, said so. */
static void test_nothing_anywhere(void **state)
{
	(void)state;
	cbi_parent_in in = base_in(NULL, 0, CBI_STATE_MISSING, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_null(c.tip);
	assert_int_equal(c.why, CBI_WHY_FIRST);
	assert_int_equal(c.code, 0);
	assert_non_null(strstr(c.msg, "starting a new chain"));
	/* --no-state: no notice */
	in.state_status = CBI_STATE_UNUSED;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.why, CBI_WHY_NONE);
	assert_string_equal(c.msg, "");
}

/* DEST holds the chain, the state is missing: DEST's newest, quietly. */
static void test_dest_only(void **state)
{
	(void)state;
	cbi_point pts[3];
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 12, 2, 300, 0);
	mkpt(&pts[2], 1, 11, 1, 200, 0);
	cbi_parent_in in = base_in(pts, 3, CBI_STATE_MISSING, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[1]);
	assert_int_equal(c.why, CBI_WHY_NONE);
	assert_string_equal(c.msg, "");
	assert_int_equal(c.from_state, 0);
	in.state_status = CBI_STATE_UNUSED;
	c = decide(&in);
	assert_ptr_equal(c.tip, &pts[1]);
}

/* The newest point is the job's own: other hosts, jobs and sources are
 * ignored; equal times go to the higher seq. */
static void test_tip_is_the_jobs_newest(void **state)
{
	(void)state;
	cbi_point pts[5];
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	mkpt(&pts[2], 1, 12, 2, 200, 0); /* same time, higher seq */
	mkpt(&pts[3], 2, 20, 0, 900, 0);
	strcpy(pts[3].job, "weekly");
	mkpt(&pts[4], 3, 30, 0, 900, 0);
	strcpy(pts[4].host, "pc2");
	cbi_parent_in in = base_in(pts, 5, CBI_STATE_UNUSED, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[2]);
}

/* Both at the same point: DEST's, no notice. */
static void test_equal(void **state)
{
	(void)state;
	cbi_point pts[2], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	mkpt(&st, 1, 11, 1, 200, 0);
	cbi_parent_in in = base_in(pts, 2, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[1]);
	assert_int_equal(c.why, CBI_WHY_NONE);
	assert_string_equal(c.msg, "");
}

/* DEST ahead of the state (the state missed a run): DEST's, with a notice. */
static void test_dest_ahead(void **state)
{
	(void)state;
	cbi_point pts[3], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	mkpt(&pts[2], 1, 12, 2, 300, 0);
	mkpt(&st, 1, 11, 1, 200, 0);
	cbi_parent_in in = base_in(pts, 3, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[2]);
	assert_int_equal(c.why, CBI_WHY_STATE_BEHIND);
	assert_non_null(strstr(c.msg, "is at seq 1, 'd' has seq 2"));
}

/* DEST behind the state (points went elsewhere, or a rollback): refused. */
static void test_dest_behind(void **state)
{
	(void)state;
	cbi_point pts[2], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	mkpt(&st, 1, 12, 2, 300, 0);
	cbi_parent_in in = base_in(pts, 2, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_null(c.tip);
	assert_int_equal(c.why, CBI_WHY_STATE_AHEAD);
	assert_int_equal(c.code, -CBI_EMISMATCH);
	assert_non_null(strstr(c.msg, "points in between are elsewhere"));
}

/* Same seq, another point: a fork, refused. */
static void test_forked(void **state)
{
	(void)state;
	cbi_point pts[2], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	mkpt(&st, 1, 99, 1, 250, 0);
	cbi_parent_in in = base_in(pts, 2, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_FORKED);
	assert_int_equal(c.code, -CBI_EMISMATCH);
	assert_non_null(strstr(c.msg, "forked"));
}

/* DEST holds no chain of the job, the state does, and --outbox: an outbox,
 * from the state. */
static void test_dest_missing_outbox(void **state)
{
	(void)state;
	cbi_point st, other;
	mkpt(&st, 1, 11, 1, 200, 1);
	mkpt(&other, 5, 50, 0, 100, 0);
	strcpy(other.job, "weekly");
	cbi_parent_in in = base_in(&other, 1, CBI_STATE_FOUND, &st);
	in.outbox = 1;
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_STATE);
	assert_ptr_equal(c.tip, &st);
	assert_int_equal(c.why, CBI_WHY_OUTBOX);
	assert_int_equal(c.from_state, 1);
	assert_non_null(strstr(c.msg, "from the local state"));
}

/* The state is damaged: DEST's newest with a notice, or refused when DEST
 * holds nothing to continue. */
static void test_state_damaged(void **state)
{
	(void)state;
	cbi_point pts[1];
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	cbi_parent_in in = base_in(pts, 1, CBI_STATE_DAMAGED, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[0]);
	assert_int_equal(c.why, CBI_WHY_STATE_DAMAGED);
	assert_non_null(strstr(c.msg, "is damaged ('x': digest mismatch); continuing"));
	in = base_in(NULL, 0, CBI_STATE_DAMAGED, NULL);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_DAMAGED_NO_CHAIN);
	assert_int_equal(c.code, -CBI_EDAMAGED);
	assert_non_null(strstr(c.msg, "use --full"));
}

/* The state follows another chain: DEST's chain wins with a notice, unless
 * the state's chain is encrypted and DEST's is not. */
static void test_other_chain(void **state)
{
	(void)state;
	cbi_point pts[1], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&st, 2, 20, 3, 50, 0);
	cbi_parent_in in = base_in(pts, 1, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[0]);
	assert_int_equal(c.why, CBI_WHY_OTHER_CHAIN);
	st.encrypted = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_CLEAR_AFTER_ENCRYPTED);
	assert_int_equal(c.code, -CBI_EMISMATCH);
}

/* --full: a new chain whatever DEST and the state hold, without notice. */
static void test_force_full(void **state)
{
	(void)state;
	cbi_point pts[1], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	strcpy(pts[0].source_id, "disk-B"); /* another disk too */
	pts[0].source_size = 7;
	mkpt(&st, 1, 12, 2, 300, 0);
	cbi_parent_in in = base_in(pts, 1, CBI_STATE_FOUND, &st);
	in.force_full = 1;
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_null(c.tip);
	assert_int_equal(c.why, CBI_WHY_NONE);
	assert_string_equal(c.msg, "");
}

/* Same host, job and path, another source id: another disk, refused unless
 * the id was given. */
static void test_other_disk(void **state)
{
	(void)state;
	cbi_point pts[1];
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	strcpy(pts[0].source_id, "disk-B");
	cbi_parent_in in = base_in(pts, 1, CBI_STATE_MISSING, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_OTHER_DISK);
	assert_int_equal(c.code, -CBI_EMISMATCH);
	assert_non_null(strstr(c.msg, "backs up 'disk-B'"));
	in.source_id_given = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.why, CBI_WHY_FIRST);
}

/* An unencrypted newest point of a chain that is encrypted elsewhere (in
 * DEST, or in the state) was forged: refused. */
static void test_forged_clear(void **state)
{
	(void)state;
	cbi_point pts[2], st;
	mkpt(&pts[0], 1, 10, 0, 100, 1);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	cbi_parent_in in = base_in(pts, 2, CBI_STATE_UNUSED, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_FORGED_CLEAR);
	assert_int_equal(c.code, -CBI_EAUTH);
	/* only the state knows the chain is encrypted */
	pts[0].encrypted = 0;
	mkpt(&st, 1, 10, 0, 100, 1);
	in = base_in(pts, 2, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_FORGED_CLEAR);
}

/* The source's size differs from the chain's: refused. */
static void test_size_changed(void **state)
{
	(void)state;
	cbi_point pts[1];
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	cbi_parent_in in = base_in(pts, 1, CBI_STATE_UNUSED, NULL);
	in.source_size = SIZE * 2;
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_SIZE);
	assert_int_equal(c.code, -CBI_EMISMATCH);
}

/* A chain at the last seq: a new chain instead, the notice kept. */
static void test_exhausted(void **state)
{
	(void)state;
	cbi_point pts[1], st;
	mkpt(&pts[0], 1, 10, UINT32_MAX - 1, 100, 0);
	mkpt(&st, 1, 10, UINT32_MAX - 1, 100, 0);
	cbi_parent_in in = base_in(pts, 1, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_null(c.tip);
	assert_int_equal(c.exhausted, 1);
	/* from the state (an outbox): from_state stays set, as before */
	in = base_in(NULL, 0, CBI_STATE_FOUND, &st);
	in.outbox = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.from_state, 1);
	assert_int_equal(c.why, CBI_WHY_OUTBOX);
}

/* DEST holds no chain of the job but the state does (another disk of a
 * rotation, a replaced disk), without --outbox: a new chain in DEST, with a
 * note that names --outbox; never the state's point. */
static void test_dest_missing_new_chain(void **state)
{
	(void)state;
	cbi_point st, other;
	mkpt(&st, 1, 11, 1, 200, 0);
	mkpt(&other, 5, 50, 0, 100, 0);
	strcpy(other.job, "weekly");
	cbi_parent_in in = base_in(&other, 1, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_null(c.tip);
	assert_int_equal(c.why, CBI_WHY_NEW_DEST);
	assert_int_equal(c.code, 0);
	assert_int_equal(c.from_state, 0);
	assert_non_null(strstr(c.msg, "starting a new chain with a full"));
	assert_non_null(strstr(c.msg, "--outbox"));
	/* an empty DEST too */
	in = base_in(NULL, 0, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.why, CBI_WHY_NEW_DEST);
	/* the same path and job under another identity in DEST: still another
	 * disk, refused as for a first backup */
	mkpt(&other, 5, 50, 0, 100, 0);
	strcpy(other.source_id, "disk-B");
	in = base_in(&other, 1, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_OTHER_DISK);
}

/* The state follows an encrypted chain and DEST holds none: the new chain
 * must be encrypted too (--encrypt), else refused; --outbox continues. */
static void test_dest_missing_encrypted_state(void **state)
{
	(void)state;
	cbi_point st;
	mkpt(&st, 1, 11, 1, 200, 1);
	cbi_parent_in in = base_in(NULL, 0, CBI_STATE_FOUND, &st);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_CLEAR_AFTER_ENCRYPTED);
	assert_int_equal(c.code, -CBI_EMISMATCH);
	assert_non_null(strstr(c.msg, "--encrypt"));
	in.encrypt = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.why, CBI_WHY_NEW_DEST);
	in.encrypt = 0;
	in.outbox = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_STATE);
	assert_ptr_equal(c.tip, &st);
	/* --full: whatever the state holds */
	in.outbox = 0;
	in.force_full = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.why, CBI_WHY_NONE);
}

/* --outbox with nothing to continue: refused, not a silent full. */
static void test_outbox_without_state(void **state)
{
	(void)state;
	cbi_parent_in in = base_in(NULL, 0, CBI_STATE_MISSING, NULL);
	in.outbox = 1;
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_REFUSE);
	assert_int_equal(c.why, CBI_WHY_OUTBOX_NO_STATE);
	assert_int_equal(c.code, -CBI_ENOCHAIN);
	assert_non_null(strstr(c.msg, "--outbox"));
	/* a damaged state: the damage is what is reported */
	in.state_status = CBI_STATE_DAMAGED;
	c = decide(&in);
	assert_int_equal(c.why, CBI_WHY_DAMAGED_NO_CHAIN);
	/* DEST holds the chain: --outbox changes nothing */
	cbi_point pts[2], st;
	mkpt(&pts[0], 1, 10, 0, 100, 0);
	mkpt(&pts[1], 1, 11, 1, 200, 0);
	mkpt(&st, 1, 11, 1, 200, 0);
	in = base_in(pts, 2, CBI_STATE_FOUND, &st);
	in.outbox = 1;
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &pts[1]);
	assert_int_equal(c.why, CBI_WHY_NONE);
}

/* Two disks in rotation, A, B, A, B, with one local state that follows the
 * disk written last: each disk continues its own chain. */
static void test_rotation(void **state)
{
	(void)state;
	cbi_point a[2], b[2], st;
	/* 1. A: nothing anywhere: a full on A */
	cbi_parent_in in = base_in(NULL, 0, CBI_STATE_MISSING, NULL);
	cbi_parent_choice c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	mkpt(&a[0], 0xa, 0xa0, 0, 100, 0);
	st = a[0];
	/* 2. B: empty, the state follows A's chain: a full on B */
	in = base_in(NULL, 0, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_NEW);
	assert_int_equal(c.why, CBI_WHY_NEW_DEST);
	mkpt(&b[0], 0xb, 0xb0, 0, 200, 0);
	st = b[0];
	/* 3. A: A's own chain, the state follows B's: A's, with a note */
	in = base_in(a, 1, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &a[0]);
	assert_int_equal(c.why, CBI_WHY_OTHER_CHAIN);
	mkpt(&a[1], 0xa, 0xa1, 1, 300, 0);
	st = a[1];
	/* 4. B: B's own chain */
	in = base_in(b, 1, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &b[0]);
	mkpt(&b[1], 0xb, 0xb1, 1, 400, 0);
	st = b[1];
	/* 5. A again: seq 1 of A's chain */
	in = base_in(a, 2, CBI_STATE_FOUND, &st);
	c = decide(&in);
	assert_int_equal(c.from, CBI_FROM_DEST);
	assert_ptr_equal(c.tip, &a[1]);
}

/* The free-space estimate: the index always; a full's data compressed 4
 * to 1 when what the source holds is known, its size 16 to 1 otherwise. */
static void test_space_need(void **state)
{
	(void)state;
	uint64_t base = 4 * (CBI_HDR_SIZE + CBI_TRL_SIZE);
	uint64_t nb = 4096, bs = 256 * 1024, size = nb * bs; /* 1 GiB */
	assert_int_equal(cbi_backup_space_need(0, nb, (uint32_t)bs, size, 1), base + nb * CBI_IDX_ENT_SIZE);
	uint64_t used = 400ull << 20;
	assert_int_equal(cbi_backup_space_need(1, nb, (uint32_t)bs, used, 1),
			 base + nb * CBI_IDX_ENT_SIZE + used / 4 + (used / bs) * (CBI_REC_HDR_SIZE + CBI_TAB_ENT_SIZE));
	assert_int_equal(cbi_backup_space_need(1, nb, (uint32_t)bs, size, 0),
			 base + nb * CBI_IDX_ENT_SIZE + size / 16 +
				 (nb / 16) * (CBI_REC_HDR_SIZE + CBI_TAB_ENT_SIZE));
	/* an empty file system: the index only, and never below it */
	assert_int_equal(cbi_backup_space_need(1, nb, (uint32_t)bs, 0, 1), base + nb * CBI_IDX_ENT_SIZE);
	/* a sparse 1 TiB source of 4 KiB blocks holding 4 GiB: an index of runs,
	 * so 24 bytes per data block and run, not per block */
	uint64_t tnb = (1ull << 40) / 4096, data = 4ull << 30;
	assert_int_equal(cbi_backup_space_need(1, tnb, 4096, data, 1),
			 base + (2 * (data / 4096 + 1) + 1) * CBI_IDX_ENT_SIZE + data / 4 +
				 (data / 4096) * (CBI_REC_HDR_SIZE + CBI_TAB_ENT_SIZE));
	/* a huge source does not overflow */
	assert_true(cbi_backup_space_need(1, 1ull << 40, 4096, 1ull << 52, 1) > (1ull << 50));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nothing_anywhere),
		cmocka_unit_test(test_dest_only),
		cmocka_unit_test(test_tip_is_the_jobs_newest),
		cmocka_unit_test(test_equal),
		cmocka_unit_test(test_dest_ahead),
		cmocka_unit_test(test_dest_behind),
		cmocka_unit_test(test_forked),
		cmocka_unit_test(test_dest_missing_outbox),
		cmocka_unit_test(test_state_damaged),
		cmocka_unit_test(test_other_chain),
		cmocka_unit_test(test_force_full),
		cmocka_unit_test(test_other_disk),
		cmocka_unit_test(test_forged_clear),
		cmocka_unit_test(test_size_changed),
		cmocka_unit_test(test_exhausted),
		cmocka_unit_test(test_dest_missing_new_chain),
		cmocka_unit_test(test_dest_missing_encrypted_state),
		cmocka_unit_test(test_outbox_without_state),
		cmocka_unit_test(test_rotation),
		cmocka_unit_test(test_space_need),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
