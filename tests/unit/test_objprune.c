/* test_objprune.c - prune on an s3:// DEST (objprune.c): which byte ranges
 * of an image are fetched for the records a merge copies. The prune
 * itself runs against a real RGW in tests/e2e/t_s3.sh. */
#include "testutil.h"

#include "format.h"
#include "objprune.h"
#include "util.h"

/* A block table of n entries: block b[k] at offset off[k], stored_len len[k]. */
static void table_of(uint8_t *t, size_t n, const uint64_t *b, const uint64_t *off, const uint32_t *len)
{
	memset(t, 0, n * CBI_TAB_ENT_SIZE);
	for (size_t k = 0; k < n; k++) {
		st64(t + k * CBI_TAB_ENT_SIZE, b[k]);
		st64(t + k * CBI_TAB_ENT_SIZE + 8, off[k]);
		st32(t + k * CBI_TAB_ENT_SIZE + 16, len[k]);
	}
}

static void test_ranges(void **state)
{
	(void)state;
	/* five records packed from 512: 100, 200, 300, 400, 500 payload bytes */
	uint64_t b[5] = { 1, 3, 4, 7, 9 }, off[5];
	uint32_t len[5] = { 100, 200, 300, 400, 500 };
	uint64_t o = CBI_HDR_SIZE;
	for (int k = 0; k < 5; k++) {
		off[k] = o;
		o += CBI_REC_HDR_SIZE + len[k];
	}
	uint64_t tab_off = o;
	uint8_t t[5 * CBI_TAB_ENT_SIZE], need[10] = { 0 };
	cbi_range r[5];
	size_t n = 99;
	table_of(t, 5, b, off, len);

	/* nothing needed: no range */
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 1 << 20, r, &n), 0);
	assert_int_equal(n, 0);

	/* blocks 1, 4, 9 with no gap allowed: three ranges, each a whole record */
	need[1] = need[4] = need[9] = 1;
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 1 << 20, r, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(r[0].off, off[0]);
	assert_int_equal(r[0].len, CBI_REC_HDR_SIZE + 100);
	assert_int_equal(r[1].off, off[2]);
	assert_int_equal(r[1].len, CBI_REC_HDR_SIZE + 300);
	assert_int_equal(r[2].off, off[4]);
	assert_int_equal(r[2].len, CBI_REC_HDR_SIZE + 500);

	/* a gap of one record (240 bytes) is bridged when gap allows it */
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 240, 1 << 20, r, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(r[0].off, off[0]);
	assert_int_equal(r[0].len, off[2] + CBI_REC_HDR_SIZE + 300 - off[0]);
	assert_int_equal(r[1].off, off[4]);

	/* adjacent records merge; max_len splits the run */
	memset(need, 1, sizeof need);
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 1 << 20, r, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(r[0].off, CBI_HDR_SIZE);
	assert_int_equal(r[0].len, tab_off - CBI_HDR_SIZE);
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 600, r, &n), 0);
	assert_true(n >= 3);
	uint64_t sum = 0;
	for (size_t k = 0; k < n; k++) {
		assert_true(r[k].len <= 600);
		if (k)
			assert_int_equal(r[k].off, r[k - 1].off + r[k - 1].len);
		sum += r[k].len;
	}
	assert_int_equal(sum, tab_off - CBI_HDR_SIZE); /* every byte once, in order */

	/* a needed record outside [512, table_offset): damaged; an unneeded
	 * one is not looked at */
	uint64_t bad_off[5] = { off[0], off[1], tab_off - 10, off[3], off[4] };
	table_of(t, 5, b, bad_off, len);
	memset(need, 0, sizeof need);
	need[1] = 1;
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 1 << 20, r, &n), 0);
	assert_int_equal(n, 1);
	need[4] = 1;
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 1 << 20, r, &n), -CBI_EDAMAGED);
	bad_off[2] = 100; /* inside the header */
	table_of(t, 5, b, bad_off, len);
	assert_int_equal(cbi_objprune_ranges(t, 5, tab_off, need, 10, 0, 1 << 20, r, &n), -CBI_EDAMAGED);

	/* a block number past n_blocks is never needed */
	uint64_t big[1] = { 1000 };
	table_of(t, 1, big, off, len);
	assert_int_equal(cbi_objprune_ranges(t, 1, tab_off, need, 10, 0, 1 << 20, r, &n), 0);
	assert_int_equal(n, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ranges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
