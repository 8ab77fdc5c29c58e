/* test_pool.c - the ordered worker pool (pool.h): consume in plan order
 * under random work delays, one slot owner at a time, per-worker states,
 * items without work, the first error in plan order wins (plan, work,
 * consume, worker state), cancellation, one and many workers, and the
 * memory budget math. */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>

#include "pool.h"
#include "util.h"

#define NSLOT_MAX 64

enum { OWN_FREE, OWN_PLANNED, OWN_WORKED };

typedef struct item {
	uint64_t n;               /* item number, set by plan */
	uint64_t value;           /* set by work: a function of n */
	int nowork;
} item;

typedef struct ctx {
	item slots[NSLOT_MAX];
	atomic_int owner[NSLOT_MAX]; /* OWN_*: who may touch the slot */
	uint64_t n_items;
	uint64_t planned;
	uint64_t consumed;
	int order_ok;
	int owner_ok;
	uint64_t seed;
	int max_delay_us;
	int64_t fail_plan_at;     /* -1: never */
	int64_t fail_work_at[2];  /* up to two failing items (-1: none) */
	int fail_work_delay_us[2];
	int64_t fail_consume_at;
	int64_t cancel_at;
	int nowork_every;         /* every k-th item skips work (0: none) */
	int fail_init_at;         /* worker state k fails (-1: never) */
	atomic_int inits, finis, live_states;
	atomic_int worked;
	atomic_int work_nowork;   /* work called for an item that skips it */
	atomic_int ws_clash;      /* a worker state used by two threads at once */
	pthread_mutex_t rng_mu;
} ctx;

typedef struct wstate {
	atomic_int busy;
	int id;
} wstate;

static void ctx_init(ctx *c, uint64_t n_items)
{
	memset(c, 0, sizeof *c);
	c->n_items = n_items;
	c->order_ok = c->owner_ok = 1;
	c->seed = 12345;
	c->fail_plan_at = c->fail_consume_at = c->cancel_at = -1;
	c->fail_work_at[0] = c->fail_work_at[1] = -1;
	c->fail_init_at = -1;
	pthread_mutex_init(&c->rng_mu, NULL);
}

static int rnd_delay(ctx *c)
{
	if (!c->max_delay_us)
		return 0;
	pthread_mutex_lock(&c->rng_mu);
	int d = (int)(tu_rng(&c->seed) % (uint64_t)c->max_delay_us);
	pthread_mutex_unlock(&c->rng_mu);
	return d;
}

static int init_cb(void *ud, void **ws, cbi_error *err)
{
	ctx *c = ud;
	int k = atomic_fetch_add(&c->inits, 1);
	if (k == c->fail_init_at) {
		*ws = NULL;
		return cbi_err(err, -ENOMEM, "state %d: no memory", k);
	}
	wstate *w = calloc(1, sizeof *w);
	w->id = k;
	*ws = w;
	atomic_fetch_add(&c->live_states, 1);
	return 0;
}

static void fini_cb(void *ud, void *ws)
{
	ctx *c = ud;
	atomic_fetch_add(&c->finis, 1);
	if (ws)
		atomic_fetch_sub(&c->live_states, 1);
	free(ws);
}

static int plan_cb(void *ud, unsigned slot, cbi_error *err)
{
	ctx *c = ud;
	if (c->planned == c->n_items)
		return CBI_POOL_DONE;
	if ((int64_t)c->planned == c->fail_plan_at)
		return cbi_err(err, -EIO, "plan failed at %llu", (unsigned long long)c->planned);
	if (atomic_load(&c->owner[slot]) != OWN_FREE)
		c->owner_ok = 0;
	item *it = &c->slots[slot];
	it->n = c->planned++;
	it->value = 0;
	it->nowork = c->nowork_every && it->n % (uint64_t)c->nowork_every == 0;
	atomic_store(&c->owner[slot], OWN_PLANNED);
	return it->nowork ? CBI_POOL_NOWORK : 0;
}

static int work_cb(void *ud, void *ws, unsigned slot, cbi_error *err)
{
	ctx *c = ud;
	wstate *w = ws;
	if (atomic_fetch_add(&w->busy, 1) != 0)
		atomic_fetch_add(&c->ws_clash, 1);
	item *it = &c->slots[slot];
	if (it->nowork)
		atomic_fetch_add(&c->work_nowork, 1);
	if (atomic_load(&c->owner[slot]) != OWN_PLANNED)
		c->owner_ok = 0;
	int rc = 0;
	for (int k = 0; k < 2; k++)
		if ((int64_t)it->n == c->fail_work_at[k]) {
			usleep((useconds_t)c->fail_work_delay_us[k]);
			rc = cbi_err(err, -EBADMSG, "work failed at %llu", (unsigned long long)it->n);
		}
	if (!rc) {
		int d = rnd_delay(c);
		if (d)
			usleep((useconds_t)d);
		it->value = it->n * 7 + 1;
		atomic_store(&c->owner[slot], OWN_WORKED);
	}
	atomic_fetch_add(&c->worked, 1);
	atomic_fetch_sub(&w->busy, 1);
	return rc;
}

static int consume_cb(void *ud, unsigned slot, cbi_error *err)
{
	ctx *c = ud;
	item *it = &c->slots[slot];
	if (it->n != c->consumed)
		c->order_ok = 0;
	int expect = it->nowork ? OWN_PLANNED : OWN_WORKED;
	if (atomic_load(&c->owner[slot]) != expect || (!it->nowork && it->value != it->n * 7 + 1))
		c->owner_ok = 0;
	atomic_store(&c->owner[slot], OWN_FREE);
	c->consumed++;
	if ((int64_t)it->n == c->fail_consume_at)
		return cbi_err(err, -ENOSPC, "consume failed at %llu", (unsigned long long)it->n);
	if ((int64_t)it->n == c->cancel_at)
		return cbi_err(err, -ECANCELED, "interrupted");
	return 0;
}

static int run(ctx *c, int threads, unsigned nslots, cbi_error *e)
{
	assert_true(nslots <= NSLOT_MAX);
	cbi_pool_cfg pc = { .threads = threads, .nslots = nslots, .ud = c, .init = init_cb, .fini = fini_cb,
			    .plan = plan_cb, .work = work_cb, .consume = consume_cb };
	memset(e, 0, sizeof *e);
	return cbi_pool_run(&pc, e);
}

/* Every item consumed once, in plan order, whatever the thread count, slot
 * count and work delays; each slot has one owner at a time and each worker
 * state one thread at a time. */
static void test_order_random_delays(void **state)
{
	static const int th[] = { 1, 2, 3, 8, 16, 64 };
	static const unsigned ns[] = { 1, 2, 5, 17, 64 };
	for (size_t a = 0; a < sizeof th / sizeof *th; a++)
		for (size_t b = 0; b < sizeof ns / sizeof *ns; b++) {
			ctx c;
			ctx_init(&c, 300);
			c.max_delay_us = 300;
			c.seed = 1 + a * 10 + b;
			cbi_error e;
			int rc = run(&c, th[a], ns[b], &e);
			if (rc)
				fail_msg("threads %d slots %u: %d (%s)", th[a], ns[b], rc, e.msg);
			assert_int_equal(c.consumed, 300);
			assert_true(c.order_ok);
			assert_true(c.owner_ok);
			assert_int_equal(atomic_load(&c.worked), 300);
			assert_int_equal(atomic_load(&c.ws_clash), 0);
			assert_int_equal(atomic_load(&c.inits), th[a]);
			assert_int_equal(atomic_load(&c.finis), th[a]);
			assert_int_equal(atomic_load(&c.live_states), 0);
		}
}

/* Items without work go straight to consume, in order, among the others. */
static void test_nowork_items(void **state)
{
	static const int every[] = { 1, 2, 3 };
	for (size_t k = 0; k < 3; k++)
		for (int threads = 1; threads <= 4; threads += 3) {
			ctx c;
			ctx_init(&c, 200);
			c.nowork_every = every[k];
			c.max_delay_us = 100;
			cbi_error e;
			assert_int_equal(run(&c, threads, 3, &e), 0);
			assert_int_equal(c.consumed, 200);
			assert_true(c.order_ok);
			assert_true(c.owner_ok);
			assert_int_equal(atomic_load(&c.work_nowork), 0);
		}
}

/* No items at all: nothing consumed, success. */
static void test_empty(void **state)
{
	ctx c;
	ctx_init(&c, 0);
	cbi_error e;
	assert_int_equal(run(&c, 4, 6, &e), 0);
	assert_int_equal(c.consumed, 0);
	assert_int_equal(atomic_load(&c.worked), 0);
}

/* Two work errors: the earlier item's wins even when it fails last; every
 * item before it is consumed, none after it. */
static void test_first_error_wins_work(void **state)
{
	for (int threads = 1; threads <= 8; threads *= 2) {
		ctx c;
		ctx_init(&c, 200);
		c.fail_work_at[0] = 20;
		c.fail_work_delay_us[0] = 50000; /* fails long after item 23 */
		c.fail_work_at[1] = 23;
		cbi_error e;
		int rc = run(&c, threads, 8, &e);
		assert_int_equal(rc, -EBADMSG);
		assert_int_equal(e.code, -EBADMSG);
		assert_string_equal(e.msg, "work failed at 20");
		assert_int_equal(c.consumed, 20);
		assert_true(c.order_ok);
		assert_true(c.planned < 20 + 8 + 1);
		assert_int_equal(atomic_load(&c.live_states), 0);
	}
}

/* A plan error, a consume error and a work error: the first in plan order. */
static void test_first_error_wins_mixed(void **state)
{
	ctx c;
	cbi_error e;
	/* plan fails at 30, work at 40 (never planned): the plan error */
	ctx_init(&c, 100);
	c.fail_plan_at = 30;
	c.fail_work_at[0] = 40;
	assert_int_equal(run(&c, 3, 4, &e), -EIO);
	assert_string_equal(e.msg, "plan failed at 30");
	assert_int_equal(c.consumed, 30);
	/* work fails at 10, plan at 12: the work error, items 0..9 consumed */
	ctx_init(&c, 100);
	c.fail_plan_at = 12;
	c.fail_work_at[0] = 10;
	c.fail_work_delay_us[0] = 20000;
	assert_int_equal(run(&c, 3, 8, &e), -EBADMSG);
	assert_string_equal(e.msg, "work failed at 10");
	assert_int_equal(c.consumed, 10);
	/* consume fails at 5, work at 6: the consume error */
	ctx_init(&c, 100);
	c.fail_consume_at = 5;
	c.fail_work_at[0] = 6;
	assert_int_equal(run(&c, 2, 8, &e), -ENOSPC);
	assert_string_equal(e.msg, "consume failed at 5");
	assert_int_equal(c.consumed, 6);
	/* work fails at 0 with one worker and one slot */
	ctx_init(&c, 100);
	c.fail_work_at[0] = 0;
	assert_int_equal(run(&c, 1, 1, &e), -EBADMSG);
	assert_int_equal(c.consumed, 0);
	assert_int_equal(c.planned, 1);
}

/* consume asking to stop (a progress callback's cancel) ends the run at
 * once: nothing more is consumed and planning stops. */
static void test_cancel(void **state)
{
	ctx c;
	ctx_init(&c, 1000);
	c.cancel_at = 7;
	c.max_delay_us = 100;
	cbi_error e;
	assert_int_equal(run(&c, 4, 6, &e), -ECANCELED);
	assert_int_equal(e.code, -ECANCELED);
	assert_string_equal(e.msg, "interrupted");
	assert_int_equal(c.consumed, 8);
	assert_true(c.planned <= 8 + 6);
	assert_int_equal(atomic_load(&c.live_states), 0);
}

/* A worker state that cannot be made fails the run before any item, and
 * the states made before it are freed. */
static void test_init_failure(void **state)
{
	ctx c;
	ctx_init(&c, 10);
	c.fail_init_at = 2;
	cbi_error e;
	assert_int_equal(run(&c, 4, 6, &e), -ENOMEM);
	assert_string_equal(e.msg, "state 2: no memory");
	assert_int_equal(c.planned, 0);
	assert_int_equal(atomic_load(&c.live_states), 0);
	assert_int_equal(atomic_load(&c.finis), 2);
}

static void test_bad_config(void **state)
{
	ctx c;
	ctx_init(&c, 10);
	cbi_error e;
	assert_int_equal(run(&c, 0, 4, &e), -EINVAL);
	assert_int_equal(run(&c, 2, 0, &e), -EINVAL);
}

/* The budget: slots * per_item * unit stay within CBI_WORK_BUDGET whenever
 * an item holds more than one unit, workers within CBI_MAX_WORKERS and the
 * budget, the figures of backup's and restore's pools are kept, and a
 * short run starts no more workers than it has items. */
static void test_budget_math(void **state)
{
	assert_int_equal(cbi_worker_count(4, 100), 4);
	assert_int_equal(cbi_worker_count(64, 100), CBI_MAX_WORKERS);
	assert_int_equal(cbi_worker_count(64, 3), 3);
	assert_int_equal(cbi_worker_count(-1, 0), 1);
	assert_true(cbi_worker_count(0, 100) >= 1);
	static const uint32_t bss[] = { 512, 4096, 65536, 262144, 1u << 20, 4u << 20, 16u << 20, 64u << 20 };
	static const int req[] = { 1, 2, 4, 16, 64, 1000 };
	for (size_t a = 0; a < sizeof bss / sizeof *bss; a++)
		for (size_t b = 0; b < sizeof req / sizeof *req; b++) {
			uint32_t bs = bss[a];
			uint64_t bound = (uint64_t)bs + bs / 255 + 128 + 16; /* about ZSTD_compressBound + tag */
			uint32_t maxu = CBI_MAX(1u, (4u << 20) / bs);
			cbi_pool_dims d;
			/* backup: data + compressed output per block, threads + 2 slots */
			cbi_pool_size(req[b], bs + bound, maxu, 1, 2, 0, &d);
			assert_true(d.threads >= 1 && d.threads <= CBI_MAX_WORKERS && d.threads <= req[b]);
			assert_int_equal(d.nslots, (unsigned)d.threads + 2);
			assert_true(d.per_item >= 1 && d.per_item <= maxu);
			if (d.per_item > 1 || d.threads > 1)
				assert_true((uint64_t)d.nslots * d.per_item * (bs + bound) <= CBI_WORK_BUDGET);
			/* the rule backup had before the pool */
			uint64_t pb = bs + bound;
			int old_t = cbi_worker_count(req[b], CBI_MAX(3u, CBI_WORK_BUDGET / pb) - 2);
			assert_int_equal(d.threads, old_t);
			uint32_t old_per = (uint32_t)CBI_MAX(1u, CBI_MIN((uint64_t)maxu,
									 CBI_WORK_BUDGET / (old_t + 2u) / pb));
			assert_int_equal(d.per_item, old_per);
			/* restore: 2 * threads + 2 slots of blocks */
			cbi_pool_size(req[b], bs, maxu, 2, 2, 0, &d);
			old_t = cbi_worker_count(req[b], CBI_MAX(2u, CBI_WORK_BUDGET / bs / 2) - 1);
			assert_int_equal(d.threads, old_t);
			assert_int_equal(d.nslots, 2u * (unsigned)d.threads + 2);
			old_per = (uint32_t)CBI_MAX(1u, CBI_MIN((uint64_t)maxu,
								CBI_WORK_BUDGET / ((uint64_t)(2 * old_t + 2) * bs)));
			assert_int_equal(d.per_item, old_per);
			if (d.per_item > 1 || d.threads > 1)
				assert_true((uint64_t)d.nslots * d.per_item * bs <= CBI_WORK_BUDGET);
		}
	/* a run of 3 items of 64 blocks: 3 workers, slots for them */
	cbi_pool_dims d;
	cbi_pool_size(16, 4096, 64, 2, 2, 3 * 64, &d);
	assert_int_equal(d.per_item, 64);
	assert_int_equal(d.threads, 3);
	assert_int_equal(d.nslots, 8);
	/* a run of unknown length (0) is not capped; one of one block is */
	cbi_pool_size(16, 4096, 64, 2, 2, 0, &d);
	assert_int_equal(d.threads, 16);
	cbi_pool_size(16, 4096, 64, 2, 2, 1, &d);
	assert_int_equal(d.threads, 1);
	assert_int_equal(d.nslots, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_random_delays),
		cmocka_unit_test(test_nowork_items),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_first_error_wins_work),
		cmocka_unit_test(test_first_error_wins_mixed),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_init_failure),
		cmocka_unit_test(test_bad_config),
		cmocka_unit_test(test_budget_math),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
