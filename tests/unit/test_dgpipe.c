/* test_dgpipe.c - the digest pipe (dgpipe.h): the digest fed on its thread
 * equals a one-shot SHA-256 (and HMAC) of the same bytes for many ways of
 * splitting them, ranges arrive in order and whole, an error of the
 * consumer stops it and reaches the caller, buffers are never lost, and the
 * sealed-file writer's file and digest are the same with the pipe and
 * write-behind as without them (plain, HMAC, split into segments); copy
 * mode (the digest reads the file back, with the default window and with a
 * small one that makes the writer wait and drop pages) writes the same
 * files. */
#include "testutil.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <time.h>

#include "crypto.h"
#include "dgpipe.h"
#include "sfile.h"
#include "util.h"

static void sha256(const void *buf, size_t len, uint8_t out[32])
{
	unsigned int dl = 0;
	assert_int_equal(EVP_Digest(buf, len, out, &dl, EVP_sha256(), NULL), 1);
	assert_int_equal(dl, 32);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int feed_dg(void *ud, const void *data, size_t len) { return cbi_dg_update(ud, data, len) ? -EIO : 0; }

/* Hand data[0, n) to a pipe of nbuf buffers of bufsz bytes, in pieces cut
 * by mode: 0 whole buffers, 1 random lengths, 2 random lengths at random
 * offsets inside the buffer (as the sealed-file writer's seal does), with
 * some empty hand-overs. Returns the digest made by the pipe. */
static void pipe_digest(const uint8_t *data, size_t n, size_t nbuf, size_t bufsz, int mode, uint64_t seed,
			const uint8_t *mac_key, uint8_t out[32])
{
	cbi_dg *dg = NULL;
	cbi_dgpipe *p = NULL;
	assert_int_equal(cbi_dg_new(mac_key, &dg), 0);
	assert_int_equal(cbi_dgpipe_new(nbuf, bufsz, feed_dg, dg, &p), 0);
	size_t done = 0;
	while (done < n) {
		uint8_t *b = cbi_dgpipe_get(p);
		assert_non_null(b);
		size_t off = mode == 2 ? (size_t)(rnd(&seed) % bufsz) : 0;
		size_t room = bufsz - off;
		size_t len = mode == 0 ? room : (size_t)(rnd(&seed) % (room + 1));
		if (len > n - done)
			len = n - done;
		memset(b, 0xa5, bufsz); /* what the pipe must not hash */
		memcpy(b + off, data + done, len);
		assert_int_equal(cbi_dgpipe_put(p, b, off, len), 0);
		/* the caller may still read what it handed over */
		assert_memory_equal(b + off, data + done, len);
		done += len;
	}
	assert_int_equal(cbi_dgpipe_drain(p), 0);
	assert_int_equal(cbi_dg_final(dg, out), 0);
	cbi_dgpipe_free(p);
	cbi_dg_free(dg);
}

static void test_digest_equals_one_shot(void **state)
{
	(void)state;
	size_t sizes[] = { 0, 1, 63, 64, 65, 4095, 4096, 100000, 3u << 20 };
	size_t bufs[] = { 1, 7, 4096, 1u << 20 };
	size_t nbufs[] = { 2, 3, 8 };
	uint8_t *data = malloc(3u << 20);
	assert_non_null(data);
	tu_fill_random(data, 3u << 20, 77);
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		uint8_t want[32];
		sha256(data, sizes[i], want);
		for (size_t j = 0; j < sizeof bufs / sizeof bufs[0]; j++) {
			if (bufs[j] < 64 && sizes[i] > 5000)
				continue; /* millions of hand-overs: slow, and says nothing more */
			for (size_t k = 0; k < sizeof nbufs / sizeof nbufs[0]; k++)
				for (int mode = 0; mode < 3; mode++) {
					uint8_t got[32];
					pipe_digest(data, sizes[i], nbufs[k], bufs[j], mode, rnd(&seed), NULL,
						    got);
					if (memcmp(got, want, 32))
						fail_msg("size %zu, buffers %zu x %zu, mode %d: digest differs",
							 sizes[i], nbufs[k], bufs[j], mode);
				}
		}
	}
	/* HMAC-SHA256 (an encrypted chain's files) too */
	uint8_t key[32], want[32], got[32];
	unsigned int ml = 0;
	for (int i = 0; i < 32; i++)
		key[i] = (uint8_t)(i * 7 + 1);
	assert_non_null(HMAC(EVP_sha256(), key, 32, data, 1000003, want, &ml));
	pipe_digest(data, 1000003, 4, 65536, 1, 99, key, got);
	assert_memory_equal(got, want, 32);
	free(data);
}

/* A consumer that checks order and wholeness, sleeps at random, and fails
 * once it has seen fail_at bytes (SIZE_MAX: never). */
typedef struct ord {
	const uint8_t *data;
	size_t seen;
	size_t fail_at;
	int calls_after_fail;
	int failed;
	int bad;
	uint64_t seed;
} ord;

static int feed_ord(void *ud, const void *d, size_t len)
{
	ord *o = ud;
	if (o->failed)
		o->calls_after_fail++;
	if (memcmp(d, o->data + o->seen, len))
		o->bad = 1;
	o->seen += len;
	if (rnd(&o->seed) % 4 == 0) {
		struct timespec ts = { 0, (long)(rnd(&o->seed) % 300) * 1000 };
		nanosleep(&ts, NULL);
	}
	if (o->seen >= o->fail_at) {
		o->failed = 1;
		return -EIO;
	}
	return 0;
}

static void test_order_under_delays(void **state)
{
	(void)state;
	size_t n = 1u << 20;
	uint8_t *data = malloc(n);
	assert_non_null(data);
	tu_fill_random(data, n, 5);
	ord o = { .data = data, .fail_at = SIZE_MAX, .seed = 3 };
	cbi_dgpipe *p = NULL;
	assert_int_equal(cbi_dgpipe_new(3, 1000, feed_ord, &o, &p), 0);
	uint64_t seed = 11;
	for (size_t done = 0; done < n;) {
		uint8_t *b = cbi_dgpipe_get(p);
		size_t len = CBI_MIN((size_t)(rnd(&seed) % 1001), n - done);
		memcpy(b, data + done, len);
		assert_int_equal(cbi_dgpipe_put(p, b, 0, len), 0);
		done += len;
	}
	assert_int_equal(cbi_dgpipe_drain(p), 0);
	assert_true(o.seen == n);
	assert_false(o.bad);
	/* drained: nothing in flight, every buffer free again */
	uint8_t *b[3];
	for (int i = 0; i < 3; i++)
		b[i] = cbi_dgpipe_get(p);
	assert_true(b[0] != b[1] && b[1] != b[2] && b[0] != b[2]);
	for (int i = 0; i < 3; i++)
		assert_int_equal(cbi_dgpipe_put(p, b[i], 0, 0), 0);
	cbi_dgpipe_free(p);
	free(data);
}

static void test_error_propagates(void **state)
{
	(void)state;
	size_t n = 200000;
	uint8_t *data = malloc(n);
	assert_non_null(data);
	tu_fill_random(data, n, 6);
	for (size_t fail_at = 1; fail_at < n; fail_at = fail_at * 3 + 1000) {
		ord o = { .data = data, .fail_at = fail_at, .seed = fail_at };
		cbi_dgpipe *p = NULL;
		assert_int_equal(cbi_dgpipe_new(2, 4096, feed_ord, &o, &p), 0);
		size_t done = 0;
		/* the caller goes on handing over: every buffer comes back (no
		 * hang), and put reports the error once the thread has met it */
		while (done < n) {
			uint8_t *b = cbi_dgpipe_get(p);
			size_t len = CBI_MIN((size_t)4096, n - done);
			memcpy(b, data + done, len);
			int rc = cbi_dgpipe_put(p, b, 0, len);
			assert_true(rc == 0 || rc == -EIO);
			done += len;
		}
		assert_int_equal(cbi_dgpipe_drain(p), -EIO);
		assert_int_equal(cbi_dgpipe_drain(p), -EIO);
		/* fn is not called after it failed, and saw only a prefix */
		assert_int_equal(o.calls_after_fail, 0);
		assert_false(o.bad);
		assert_true(o.seen >= fail_at && o.seen < fail_at + 4096);
		uint8_t *b = cbi_dgpipe_get(p);
		assert_int_equal(cbi_dgpipe_put(p, b, 0, 10), -EIO);
		cbi_dgpipe_free(p);
	}
	free(data);
}

static void test_bad_arguments_and_free_in_flight(void **state)
{
	(void)state;
	cbi_dgpipe *p = NULL;
	ord o = { .fail_at = SIZE_MAX };
	assert_int_equal(cbi_dgpipe_new(1, 100, feed_ord, &o, &p), -EINVAL);
	assert_int_equal(cbi_dgpipe_new(2, 0, feed_ord, &o, &p), -EINVAL);
	assert_int_equal(cbi_dgpipe_new(2, 100, NULL, &o, &p), -EINVAL);
	assert_null(p);
	uint8_t *data = calloc(1, 100);
	assert_non_null(data);
	o.data = data;
	assert_int_equal(cbi_dgpipe_new(2, 100, feed_ord, &o, &p), 0);
	uint8_t foreign[100];
	assert_int_equal(cbi_dgpipe_put(p, foreign, 0, 10), -EINVAL);
	uint8_t *b = cbi_dgpipe_get(p);
	assert_int_equal(cbi_dgpipe_put(p, b, 50, 51), -EINVAL); /* past the buffer */
	assert_int_equal(cbi_dgpipe_put(p, b, 101, 0), -EINVAL);
	memset(b, 0, 100);
	assert_int_equal(cbi_dgpipe_put(p, b, 0, 100), 0);
	/* handed over twice: the caller owns no buffer, refused */
	assert_int_equal(cbi_dgpipe_put(p, b, 0, 100), -EINVAL);
	b = cbi_dgpipe_get(p);
	assert_int_equal(cbi_dgpipe_put(p, b, 0, 100), 0);
	/* freed with ranges perhaps still queued: joins, leaks nothing (ASan) */
	cbi_dgpipe_free(p);
	cbi_dgpipe_free(NULL);
	free(data);
}

/* ---------------------------------------------- the sealed-file writer */

/* Write size bytes in uneven pieces to final (segments of seg bytes, HMAC
 * under key when not NULL); mode bit 1: with the pipe, bit 2: write-behind,
 * bit 4: copy mode instead (the digest reads the file back), bit 8: with a
 * small window (the writer waits for the digest and drops pages often).
 * Returns the digest and leaves the committed file. */
static void write_sealed(const char *final, const uint8_t *data, size_t size, uint64_t seg,
			 const uint8_t *key, int mode, uint8_t digest[32])
{
	cbi_sfw *w = NULL;
	cbi_error e;
	int async = mode & 1, copy = (mode & 4) != 0;
	assert_int_equal(cbi_sfw_create_split(final, NULL, seg, &w, &e), 0);
	if (key)
		assert_int_equal(cbi_sfw_set_mac(w, key), 0);
	if (mode & 2)
		cbi_sfw_write_behind(w);
	if (mode & 8)
		cbi_sfw_copy_window(w, 64 << 10, 128 << 10, 256 << 10, 512 << 10);
	size_t off = 0, chunk = 1;
	int switched = 0;
	while (off < size) {
		size_t n = CBI_MIN(chunk, size - off);
		assert_int_equal(cbi_sfw_write(w, data + off, n), 0);
		off += n;
		chunk = chunk * 3 + 7;
		if (copy && !switched && off > 1000) {
			assert_int_equal(cbi_sfw_copy_mode(w), 0);
			assert_int_equal(cbi_sfw_copy_mode(w), -EINVAL); /* once */
			switched = 1;
		}
		if (async && !switched && off > 1000) { /* after the first bytes, as an image's header */
			assert_int_equal(cbi_sfw_hash_async(w), 0);
			assert_int_equal(cbi_sfw_hash_async(w), 0); /* once is enough */
			switched = 1;
		}
	}
	if (copy && !switched)
		assert_int_equal(cbi_sfw_copy_mode(w), 0);
	if (async && !switched)
		assert_int_equal(cbi_sfw_hash_async(w), 0);
	if (key && (async || copy)) /* the pipe feeds the digest: it is not replaced */
		assert_int_equal(cbi_sfw_set_mac(w, key), -EINVAL);
	uint8_t t[96];
	for (int i = 0; i < 96; i++)
		t[i] = (uint8_t)(0x60 + i);
	assert_int_equal(cbi_sfw_seal(w, t, digest), 0);
	assert_int_equal(cbi_sfw_commit(w, &e), 0);
}

static void test_sealed_file_same_with_pipe(void **state)
{
	tu_fix *f = *state;
	size_t sizes[] = { 0, 500, 5000, (1u << 20) - 96, (1u << 20) - 95, (5u << 20) + 12345 };
	uint8_t *data = malloc((5u << 20) + 12345);
	assert_non_null(data);
	tu_fill_random(data, (5u << 20) + 12345, 8);
	uint8_t key[32];
	memset(key, 0x5c, sizeof key);
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
		for (int variant = 0; variant < 3; variant++) {
			uint64_t seg = variant == 2 ? 2u << 20 : 0;
			const uint8_t *k = variant == 1 ? key : NULL;
			char a[4096];
			uint8_t da[32];
			snprintf(a, sizeof a, "%s/sync%zu-%d.cbi", f->dir, i, variant);
			write_sealed(a, data, sizes[i], seg, k, 0, da);
			for (int mode = 1; mode < 6; mode++) {
				if (mode == 5) /* copy mode with a small window */
					mode = 12;
				char b[4096];
				uint8_t db[32];
				snprintf(b, sizeof b, "%s/pipe%zu-%d-%d.cbi", f->dir, i, variant, mode);
				write_sealed(b, data, sizes[i], seg, k, mode, db);
				assert_memory_equal(da, db, 32);
				/* byte for byte the same file, segments and all */
				for (uint32_t s = 0;; s++) {
					char sa[4200], sb[4200];
					assert_int_equal(cbi_sfile_segment_name(a, s, sa, sizeof sa), 0);
					assert_int_equal(cbi_sfile_segment_name(b, s, sb, sizeof sb), 0);
					int ea = tu_exists(sa), eb = tu_exists(sb);
					assert_int_equal(ea, eb);
					if (!ea)
						break;
					size_t na, nb;
					uint8_t *fa = tu_read_file(sa, &na), *fb = tu_read_file(sb, &nb);
					assert_true(na == nb);
					assert_memory_equal(fa, fb, na);
					free(fa);
					free(fb);
				}
				if (!seg && sizes[i] >= 4096) { /* the reader takes it (too short: refused) */
					cbi_sfr *r = NULL;
					assert_int_equal(cbi_sfr_open(b, &r, NULL), 0);
					assert_int_equal(cbi_sfr_check_digest_mac(r, k, NULL, NULL), 0);
					cbi_sfr_close(r);
				}
			}
		}
	free(data);
}

static void test_sealed_abort_with_pipe(void **state)
{
	tu_fix *f = *state;
	cbi_sfw *w = NULL;
	assert_int_equal(cbi_sfw_create(tu_path(f->dir, "x.cbi"), &w, NULL), 0);
	assert_int_equal(cbi_sfw_hash_async(w), 0);
	uint8_t *data = calloc(1, 3u << 20);
	assert_non_null(data);
	assert_int_equal(cbi_sfw_write(w, data, 3u << 20), 0);
	cbi_sfw_abort(w); /* buffers in flight: joined and freed (ASan) */
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);
	/* copy mode: the digest reading the file back, in segments */
	assert_int_equal(cbi_sfw_create_split(tu_path(f->dir, "y.cbi"), NULL, 1u << 20, &w, NULL), 0);
	assert_int_equal(cbi_sfw_copy_mode(w), 0);
	assert_int_equal(cbi_sfw_write(w, data, 3u << 20), 0);
	cbi_sfw_abort(w);
	assert_int_equal(tu_count(f->dir, NULL, -1), 0);
	free(data);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_digest_equals_one_shot),
		cmocka_unit_test(test_order_under_delays),
		cmocka_unit_test(test_error_propagates),
		cmocka_unit_test(test_bad_arguments_and_free_in_flight),
		T(test_sealed_file_same_with_pipe),
		T(test_sealed_abort_with_pipe),
	};
	return cmocka_run_group_tests_name("dgpipe", tests, NULL, NULL);
}
