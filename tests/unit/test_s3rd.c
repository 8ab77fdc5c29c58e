/* test_s3rd.c - ranged reads behind sealed-file readers (s3rd.c), over a
 * fake object in memory: every read returns the object's bytes; hinted
 * records are coalesced into few GETs and freed once read; a whole pass
 * reads the object, not the stand-in's ends; memory stays within the
 * bound; a failed GET fails the read with its message kept; a file that is
 * no stand-in is read as before. */
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>

#include "s3rd.h"
#include "sfile.h"

#define OBJ (20u << 20)
#define ENDS (64u << 10)

typedef struct fake {
	uint8_t *obj;
	pthread_mutex_t mu;
	uint64_t gets, bytes, max_len;
	uint64_t fail_at; /* a GET that covers this offset fails (0: none) */
} fake;

static int fake_fetch(void *ud, const char *key, uint64_t off, uint64_t len, void *buf, cbi_error *err)
{
	fake *f = ud;
	assert_string_equal(key, "p/x.cbi");
	assert_true(off + len <= OBJ);
	pthread_mutex_lock(&f->mu);
	f->gets++;
	f->bytes += len;
	if (len > f->max_len)
		f->max_len = len;
	int fail = f->fail_at && off <= f->fail_at && f->fail_at < off + len;
	pthread_mutex_unlock(&f->mu);
	if (fail)
		return cbi_err(err, -EIO, "'s3://b/%s': injected failure", key);
	memcpy(buf, f->obj + off, len);
	return 0;
}

typedef struct setup {
	fake fk;
	cbi_s3rd *rd;
	char path[512];
	cbi_sfr *r;
} setup;

/* A stand-in of OBJ bytes at DIR/x.cbi whose ends hold ends_fill (not the
 * object's bytes, so that a test can tell where a read came from) or the
 * object's own bytes (ends_fill < 0). */
static void make(setup *s, const char *dir, const cbi_s3rd_cfg *c, int ends_fill)
{
	memset(s, 0, sizeof *s);
	s->fk.obj = malloc(OBJ);
	assert_non_null(s->fk.obj);
	for (uint32_t i = 0; i < OBJ; i++)
		s->fk.obj[i] = (uint8_t)(i * 2654435761u >> 13);
	pthread_mutex_init(&s->fk.mu, NULL);
	snprintf(s->path, sizeof s->path, "%s/x.cbi", dir);
	int fd = open(s->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, OBJ), 0);
	uint8_t *e = malloc(ENDS);
	assert_non_null(e);
	for (int k = 0; k < 2; k++) {
		uint64_t at = k ? OBJ - ENDS : 0;
		if (ends_fill < 0)
			memcpy(e, s->fk.obj + at, ENDS);
		else
			memset(e, ends_fill, ENDS);
		assert_int_equal(pwrite(fd, e, ENDS, (off_t)at), ENDS);
	}
	free(e);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	close(fd);
	assert_int_equal(cbi_s3rd_new(c, fake_fetch, &s->fk, &s->rd, NULL), 0);
	assert_int_equal(cbi_s3rd_add(s->rd, st.st_dev, st.st_ino, "p/x.cbi", OBJ, ENDS, NULL), 0);
	cbi_sfr_set_opener(cbi_s3rd_opener, s->rd);
	assert_int_equal(cbi_sfr_open(s->path, &s->r, NULL), 0);
	assert_non_null(s->r->ops);
}

static void done(setup *s)
{
	cbi_sfr_close(s->r);
	cbi_sfr_set_opener(NULL, NULL);
	cbi_s3rd_free(s->rd);
	pthread_mutex_destroy(&s->fk.mu);
	free(s->fk.obj);
}

static void test_reads(void **state)
{
	tu_fix *fx = *state;
	setup s;
	cbi_s3rd_cfg c = { .jobs = 3, .cache = 8u << 20 };
	make(&s, fx->dir, &c, -1);
	uint8_t *b = malloc(3u << 20);
	uint64_t seed = 7;
	for (int i = 0; i < 300; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		uint64_t off = (seed >> 20) % OBJ;
		size_t len = (size_t)((seed >> 8) % (3u << 20));
		if (len > OBJ - off)
			len = OBJ - off;
		assert_int_equal(cbi_sfr_pread(s.r, b, len, off), 0);
		assert_memory_equal(b, s.fk.obj + off, len);
	}
	/* beyond the end */
	assert_int_equal(cbi_sfr_pread(s.r, b, 2, OBJ - 1), -CBI_ETRUNCATED);
	cbi_s3rd_stats st;
	cbi_s3rd_get_stats(s.rd, &st);
	assert_true(st.local > 0 && st.gets > 0);
	assert_true(st.peak <= c.cache + (3u << 20)); /* the bound, plus the reader's own window */
	free(b);
	done(&s);
}

/* records of 100 KiB with 10 KiB between them, hinted: one GET per 4 MiB */
#define REC (100u << 10)
#define STEP (110u << 10)

typedef struct rdr {
	setup *s;
	int part, nparts;
} rdr;

static void *read_records(void *ud)
{
	rdr *t = ud;
	uint8_t *b = malloc(REC);
	for (uint64_t off = ENDS + (uint64_t)t->part * STEP; off + REC < OBJ - ENDS; off += (uint64_t)t->nparts * STEP) {
		assert_int_equal(cbi_sfr_pread(t->s->r, b, REC, off), 0);
		assert_memory_equal(b, t->s->fk.obj + off, REC);
	}
	free(b);
	return NULL;
}

static void test_hints(void **state)
{
	tu_fix *fx = *state;
	setup s;
	cbi_s3rd_cfg c = { .jobs = 4, .cache = 32u << 20 };
	make(&s, fx->dir, &c, -1);
	uint64_t nrec = 0;
	for (uint64_t off = ENDS; off + REC < OBJ - ENDS; off += STEP, nrec++)
		cbi_sfr_will_need(s.r, off, REC);
	pthread_t th[4];
	rdr t[4];
	for (int i = 0; i < 4; i++) {
		t[i] = (rdr){ .s = &s, .part = i, .nparts = 4 };
		assert_int_equal(pthread_create(&th[i], NULL, read_records, &t[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	cbi_s3rd_stats st;
	cbi_s3rd_get_stats(s.rd, &st);
	/* coalesced: far fewer GETs than records, none larger than 4 MiB, and
	 * nothing fetched twice */
	assert_true(st.gets * 10 < nrec);
	assert_true(s.fk.max_len <= (4u << 20));
	assert_true(st.bytes <= OBJ);
	assert_int_equal(st.dropped, 0);
	done(&s);
}

static void test_whole(void **state)
{
	tu_fix *fx = *state;
	setup s;
	cbi_s3rd_cfg c = { .jobs = 4, .cache = 12u << 20 };
	make(&s, fx->dir, &c, 0xAA); /* the stand-in's ends are wrong */
	uint8_t b[64];
	/* an ordinary read takes the ends locally */
	assert_int_equal(cbi_sfr_pread(s.r, b, sizeof b, 0), 0);
	for (size_t i = 0; i < sizeof b; i++)
		assert_int_equal(b[i], 0xAA);
	/* a whole pass reads the object only, in ranges of at most 4 MiB ahead */
	uint8_t *buf = malloc(1u << 20);
	cbi_sfr_whole(s.r, 1);
	for (uint64_t off = 0; off < OBJ; off += 1u << 20) {
		assert_int_equal(cbi_sfr_pread(s.r, buf, 1u << 20, off), 0);
		assert_memory_equal(buf, s.fk.obj + off, 1u << 20);
	}
	cbi_sfr_whole(s.r, 0);
	free(buf);
	cbi_s3rd_stats st;
	cbi_s3rd_get_stats(s.rd, &st);
	assert_true(st.bytes >= OBJ && st.bytes <= OBJ + (4u << 20));
	assert_true(st.peak <= c.cache + (4u << 20));
	assert_true(s.fk.max_len <= (4u << 20));
	done(&s);
}

static void test_failure(void **state)
{
	tu_fix *fx = *state;
	setup s;
	make(&s, fx->dir, NULL, -1);
	s.fk.fail_at = 5u << 20;
	uint8_t b[100];
	assert_int_equal(cbi_sfr_pread(s.r, b, sizeof b, 5u << 20), -EIO);
	char msg[256];
	cbi_s3rd_last_error(s.rd, msg, sizeof msg);
	assert_non_null(strstr(msg, "injected failure"));
	/* the next read of it tries again */
	s.fk.fail_at = 0;
	assert_int_equal(cbi_sfr_pread(s.r, b, sizeof b, 5u << 20), 0);
	assert_memory_equal(b, s.fk.obj + (5u << 20), sizeof b);
	done(&s);
}

/* After a fork (mount's serving process) the child reads with threads of
 * its own: the parent's, with reads ahead queued, are not in the child. */
static void test_fork(void **state)
{
	tu_fix *fx = *state;
	setup s;
	make(&s, fx->dir, NULL, -1);
	uint8_t *b = malloc(1u << 20);
	cbi_sfr_whole(s.r, 1);
	assert_int_equal(cbi_sfr_pread(s.r, b, 1u << 20, 0), 0); /* reads ahead queued */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int bad = 0;
		for (uint64_t off = 1u << 20; off < (12u << 20); off += 1u << 20)
			bad += cbi_sfr_pread(s.r, b, 1u << 20, off) || memcmp(b, s.fk.obj + off, 1u << 20);
		_exit(bad ? 1 : 0);
	}
	int ws = 0;
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	cbi_sfr_whole(s.r, 0);
	free(b);
	done(&s);
}

/* A file that is no stand-in is an ordinary local file. */
static void test_local(void **state)
{
	tu_fix *fx = *state;
	setup s;
	make(&s, fx->dir, NULL, -1);
	char other[512];
	snprintf(other, sizeof other, "%s/y.cbi", fx->dir);
	int fd = open(other, O_RDWR | O_CREAT | O_TRUNC, 0600);
	uint8_t z[4096] = { 1, 2, 3 };
	assert_int_equal(write(fd, z, sizeof z), (ssize_t)sizeof z);
	close(fd);
	cbi_sfr *r = NULL;
	assert_int_equal(cbi_sfr_open(other, &r, NULL), 0);
	assert_null(r->ops);
	uint8_t b[3];
	assert_int_equal(cbi_sfr_pread(r, b, 3, 0), 0);
	assert_int_equal(b[2], 3);
	cbi_sfr_close(r);
	done(&s);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, tu_setup_dir, tu_teardown_dir)
	const struct CMUnitTest tests[] = { T(test_reads), T(test_hints), T(test_whole), T(test_failure), T(test_fork),
					    T(test_local) };
	return cmocka_run_group_tests(tests, NULL, NULL);
}
