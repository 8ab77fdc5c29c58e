/* test_elsewhere.c - the rule of cbi_list_mark_elsewhere() (an outbox's
 * points whose parents are at the remote site), as the pure walk
 * cbi_elsewhere_walk(): from the local state's point down the parent links
 * through DEST's points; marked only when the link that leaves DEST does not
 * name a point DEST's run log says was made there. */
#include "testutil.h"

#include "elsewhere.h"

/* Point seq of chain c: id (c, seq), digest (c, seq, 0xd), parent seq - 1. */
static cbi_point pt(uint8_t c, uint32_t seq)
{
	cbi_point p;
	memset(&p, 0, sizeof p);
	p.chain_id[0] = c;
	p.point_id[0] = c;
	p.point_id[1] = (uint8_t)seq;
	p.index_digest[0] = c;
	p.index_digest[1] = (uint8_t)seq;
	p.index_digest[2] = 0xd;
	p.seq = seq;
	p.type = seq ? CBI_INCREMENTAL : CBI_FULL;
	if (seq) {
		p.parent_id[0] = c;
		p.parent_id[1] = (uint8_t)(seq - 1);
		p.parent_digest[0] = c;
		p.parent_digest[1] = (uint8_t)(seq - 1);
		p.parent_digest[2] = 0xd;
	}
	p.broken = seq != 0;
	return p;
}

static size_t marks(const cbi_point *p, size_t n)
{
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		m |= (size_t)(p[i].parent_elsewhere != 0) << i;
	return m;
}

static void test_outbox(void **state)
{
	(void)state;
	/* an outbox: seqs 3 and 4 of chain 1 (0..2 at the remote site) */
	cbi_point p[2] = { pt(1, 3), pt(1, 4) };
	cbi_point tip = pt(1, 4);
	assert_int_equal(cbi_elsewhere_walk(p, 2, &tip, NULL, 0), 2);
	assert_int_equal(marks(p, 2), 3);
	/* the state is ahead of the outbox (seq 5 went out already) */
	cbi_point q[2] = { pt(1, 3), pt(1, 4) };
	tip = pt(1, 5);
	assert_int_equal(cbi_elsewhere_walk(q, 2, &tip, NULL, 0), 2);
	/* ... but not when its parent is not here */
	cbi_point r[1] = { pt(1, 3) };
	tip = pt(1, 5);
	assert_int_equal(cbi_elsewhere_walk(r, 1, &tip, NULL, 0), 0);
	assert_int_equal(marks(r, 1), 0);
}

static void test_not_vouched(void **state)
{
	(void)state;
	/* a point between is gone: the state vouches for the newest only */
	cbi_point p[2] = { pt(1, 2), pt(1, 4) };
	cbi_point tip = pt(1, 4);
	assert_int_equal(cbi_elsewhere_walk(p, 2, &tip, NULL, 0), 1);
	assert_int_equal(marks(p, 2), 2);
	/* a state of another chain vouches for nothing */
	cbi_point q[2] = { pt(1, 3), pt(1, 4) };
	tip = pt(2, 4);
	assert_int_equal(cbi_elsewhere_walk(q, 2, &tip, NULL, 0), 0);
	/* the same id with another digest (a forged or replaced point) */
	cbi_point r[1] = { pt(1, 4) };
	tip = pt(1, 4);
	tip.index_digest[5] = 1;
	assert_int_equal(cbi_elsewhere_walk(r, 1, &tip, NULL, 0), 0);
	/* a whole chain is no outbox (nothing to mark) */
	cbi_point s[2] = { pt(1, 0), pt(1, 1) };
	tip = pt(1, 1);
	assert_int_equal(cbi_elsewhere_walk(s, 2, &tip, NULL, 0), 0);
}

static void test_made_here(void **state)
{
	(void)state;
	/* a backup disk whose full was moved away: its run log records the
	 * full made there, so the chain is damaged, not elsewhere */
	cbi_point p[2] = { pt(1, 1), pt(1, 2) };
	cbi_point full = pt(1, 0), tip = pt(1, 2);
	uint8_t made[3][16] = { { 9 } };
	memcpy(made[1], full.point_id, 16);
	memcpy(made[2], p[0].point_id, 16);
	assert_int_equal(cbi_elsewhere_walk(p, 2, &tip, (const uint8_t(*)[16])made, 3), 0);
	assert_int_equal(marks(p, 2), 0);
	/* the run log records other points only: elsewhere */
	assert_int_equal(cbi_elsewhere_walk(p, 2, &tip, (const uint8_t(*)[16])made + 2, 1), 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_outbox),
		cmocka_unit_test(test_not_vouched),
		cmocka_unit_test(test_made_here),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
