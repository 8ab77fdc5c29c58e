/* liveread.c - the read of a backup under its snapshot mode (liveread.h). */
#define _GNU_SOURCE
#include "liveread.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "util.h"

/* ----------------------------------------------------------------- spool */

/* A spool: pipeline blocks, in the order given, in an unnamed file. */
typedef struct spool {
	FILE *f;
	const uint8_t *only;      /* keep only the blocks set here (NULL: all) */
	uint64_t n;
} spool;

typedef struct sp_rec {
	uint64_t block;
	cbi_idx_ent ent;
	uint32_t raw_len, stored_len, rec_flags;
	uint8_t changed, store, pad[6];
} sp_rec;

static int spool_open(spool *sp, const char *dir, cbi_error *err)
{
	memset(sp, 0, sizeof *sp);
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		/* no O_TMPFILE here: a name, gone at once */
		char p[4096];
		snprintf(p, sizeof p, "%.3000s/.cbimg-spool.%ld.tmp", dir, (long)getpid());
		fd = cbi_create_tmp(p, 0600);
		if (fd >= 0)
			unlink(p);
		else
			errno = -fd;
	}
	if (fd < 0 || !(sp->f = fdopen(fd, "w+b"))) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return cbi_err(err, -e, "unable to make a spool file in '%s': %s", dir, strerror(e));
	}
	setvbuf(sp->f, NULL, _IOFBF, 1 << 20);
	return 0;
}

static void spool_close(spool *sp)
{
	if (sp->f)
		fclose(sp->f);
	sp->f = NULL;
}

static int spool_sink(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err)
{
	spool *sp = ud;
	if (sp->only && !((sp->only[block >> 3] >> (block & 7)) & 1))
		return 0;
	sp_rec r;
	memset(&r, 0, sizeof r);
	r.block = block;
	r.ent = b->ent;
	r.raw_len = b->raw_len;
	r.stored_len = b->store ? b->stored_len : 0;
	r.rec_flags = b->rec_flags;
	r.changed = (uint8_t)!!b->changed;
	r.store = (uint8_t)!!b->store;
	if (fwrite(&r, sizeof r, 1, sp->f) != 1 || (r.stored_len && fwrite(b->payload, r.stored_len, 1, sp->f) != 1))
		return cbi_err(err, -errno ? -errno : -EIO, "unable to write the spool: %s", strerror(errno));
	sp->n++;
	return 0;
}

/* The next record of a spool being read back into r and buf; 0, 1 at its
 * end, or an error. */
static int spool_next(spool *sp, sp_rec *r, uint8_t *buf, size_t bufsz, cbi_error *err)
{
	size_t got = fread(r, sizeof *r, 1, sp->f);
	if (got != 1)
		return feof(sp->f) ? 1 : cbi_err(err, -EIO, "unable to read the spool back: %s", strerror(errno));
	if (r->stored_len > bufsz || (r->stored_len && fread(buf, r->stored_len, 1, sp->f) != 1))
		return cbi_err(err, -EIO, "unable to read the spool back: short record");
	return 0;
}

static int spool_rewind(spool *sp, cbi_error *err)
{
	if (fflush(sp->f) || fseeko(sp->f, 0, SEEK_SET))
		return cbi_err(err, -errno, "unable to read the spool back: %s", strerror(errno));
	return 0;
}

static int feed(const cbi_pipe_cfg *pc, const sp_rec *r, const uint8_t *payload, cbi_error *err)
{
	cbi_pipe_block b = { .ent = r->ent, .changed = r->changed, .store = r->store, .raw_len = r->raw_len,
			     .stored_len = r->stored_len, .rec_flags = r->rec_flags, .payload = payload };
	return pc->sink(pc->sink_ud, r->block, &b, err);
}

/* The main spool into the caller's sink, each block of the re-read spool in
 * place of the main one's. Both are in increasing block order. */
static int replay(const cbi_pipe_cfg *pc, spool *main, spool *re, cbi_error *err)
{
	size_t bufsz = pc->block_size + (pc->block_size >> 7) + 4096;
	uint8_t *b1 = malloc(bufsz), *b2 = malloc(bufsz);
	sp_rec r1, r2;
	int rc = !b1 || !b2 ? cbi_err(err, -ENOMEM, "out of memory") : 0;
	int e2 = 1;
	if (!rc && !(rc = spool_rewind(main, err)) && !(rc = spool_rewind(re, err)))
		e2 = rc = spool_next(re, &r2, b2, bufsz, err);
	if (rc == 1)
		rc = 0;
	while (!rc) {
		int e1 = spool_next(main, &r1, b1, bufsz, err);
		if (e1) {
			rc = e1 == 1 ? 0 : e1;
			break;
		}
		if (!e2 && r2.block == r1.block) {
			if ((rc = feed(pc, &r2, b2, err)))
				break;
			e2 = spool_next(re, &r2, b2, bufsz, err);
			if (e2 < 0)
				rc = e2;
			continue;
		}
		rc = feed(pc, &r1, b1, err);
	}
	free(b1);
	free(b2);
	return rc;
}

/* -------------------------------------------------------------- the runs */

typedef struct frozen_run {
	const cbi_pipe_cfg *pc;
	cbi_snap *snap;
} frozen_run;

/* Progress while frozen: an expired freeze stops the read. */
static int frozen_progress(void *ud, uint64_t done, uint64_t total)
{
	frozen_run *f = ud;
	if (cbi_snap_expired(f->snap))
		return 1;
	return f->pc->progress ? f->pc->progress(f->pc->progress_ud, done, total) : 0;
}

/* One pipeline run of cfg (its sink, map as set on the source) while s is
 * frozen: the timeout is watched. */
static int run_frozen(cbi_snap *s, cbi_pipe_cfg cfg, cbi_pipe_stats *ps, cbi_error *err)
{
	frozen_run f = { .pc = &cfg, .snap = s };
	cbi_pipe_cfg c2 = cfg;
	c2.progress = frozen_progress;
	c2.progress_ud = &f;
	int rc = cbi_pipe_run(&c2, ps, err);
	if (rc == -ECANCELED && cbi_snap_expired(s))
		rc = cbi_err(err, -ETIMEDOUT, "the freeze lasted longer than --freeze-timeout: nothing of this "
			     "run was kept");
	return rc;
}

/* The blocks re-read frozen must come from the device, not from a page
 * cache that the main run may have filled with what was there before. */
static void bypass_cache(cbi_source *src)
{
	if (!src->is_dev || src->direct)
		return;
	posix_fadvise(src->fd, 0, 0, POSIX_FADV_DONTNEED);
	ioctl(src->fd, BLKFLSBUF, 0);
}

static int read_trace(cbi_snap *s, const cbi_pipe_cfg *pc, const char *spool_dir, cbi_pipe_stats *ps,
		      cbi_live_stats *ls, cbi_error *err)
{
	spool main, re;
	memset(&re, 0, sizeof re);
	uint64_t nb = cbi_nblocks(pc->src->size, pc->block_size), marked = 0;
	uint8_t *touched = calloc(nb / 8 + 1, 1);
	const uint8_t *old_map = pc->src->used;
	uint32_t old_bs = pc->src->used_bs;
	int complete = 0, rc;
	if (!touched)
		return cbi_err(err, -ENOMEM, "out of memory");
	if ((rc = spool_open(&main, spool_dir, err))) {
		free(touched);
		return rc;
	}
	/* 1. tracing before the first block is read */
	if ((rc = cbi_snap_trace_start(s, err)))
		goto end;
	/* 2. the main run, into the spool */
	cbi_pipe_cfg c = *pc;
	c.sink = spool_sink;
	c.sink_zeros = NULL;
	c.sink_ud = &main;
	if ((rc = cbi_pipe_run(&c, ps, err)))
		goto end;
	/* 3. frozen: what was written since tracing started */
	if ((rc = cbi_snap_freeze(s, err)))
		goto end;
	if ((rc = cbi_snap_collect(s, pc->block_size, nb, touched, &marked, &complete, err)))
		goto end;
	bypass_cache(pc->src);
	cbi_pipe_stats ps2 = { 0 };
	if (!complete) {
		/* an event may be lost: the set cannot be trusted; every block
		 * again, frozen, straight into the sink */
		ls->trace_incomplete = 1;
		ls->blocks_reread = nb;
		spool_close(&main);
		if ((rc = run_frozen(s, *pc, &ps2, err)))
			goto end;
		rc = cbi_snap_thaw(s, err);
		goto end;
	}
	/* 4. those blocks again, frozen, into a second spool */
	ls->blocks_reread = marked;
	if (marked) {
		if ((rc = spool_open(&re, spool_dir, err)))
			goto end;
		re.only = touched;
		cbi_source_set_map(pc->src, touched, pc->block_size);
		c = *pc;
		c.sink = spool_sink;
		c.sink_zeros = NULL;
		c.sink_ud = &re;
		rc = run_frozen(s, c, &ps2, err);
		cbi_source_set_map(pc->src, old_map, old_bs);
		if (rc)
			goto end;
	}
	/* 5. thaw; then the point is written from the spools */
	if ((rc = cbi_snap_thaw(s, err)))
		goto end;
	if (!re.f && (rc = spool_open(&re, spool_dir, err)))
		goto end;
	rc = replay(pc, &main, &re, err);
end:
	cbi_source_set_map(pc->src, old_map, old_bs);
	spool_close(&main);
	spool_close(&re);
	free(touched);
	return rc;
}

/* --allow-inconsistent: each block's hash and zero flag as first read. */
typedef struct first_rec {
	const cbi_pipe_cfg *pc;
	uint8_t *h;               /* 17 bytes a block */
	int64_t changed;
} first_rec;

static int record_sink(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err)
{
	first_rec *f = ud;
	memcpy(f->h + block * 17, b->ent.hash, 16);
	f->h[block * 17 + 16] = (uint8_t)(b->ent.flags & CBI_IDX_ZERO);
	return f->pc->sink(f->pc->sink_ud, block, b, err);
}

static int compare_sink(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err)
{
	first_rec *f = ud;
	uint8_t z = (uint8_t)(b->ent.flags & CBI_IDX_ZERO);
	if (f->h[block * 17 + 16] != z || (!z && memcmp(f->h + block * 17, b->ent.hash, 16)))
		f->changed++;
	return 0;
}

static int read_checked(const cbi_pipe_cfg *pc, cbi_pipe_stats *ps, cbi_live_stats *ls, cbi_error *err)
{
	uint64_t nb = cbi_nblocks(pc->src->size, pc->block_size);
	first_rec f = { .pc = pc, .h = calloc(nb, 17) };
	if (!f.h)
		return cbi_err(err, -ENOMEM, "out of memory");
	cbi_pipe_cfg c = *pc;
	c.sink = record_sink;
	c.sink_zeros = NULL;
	c.sink_ud = &f;
	int rc = cbi_pipe_run(&c, ps, err);
	if (!rc) {
		cbi_pipe_stats ps2 = { 0 };
		c.sink = compare_sink;
		c.sink_zeros = NULL;
		rc = cbi_pipe_run(&c, &ps2, err);
		ls->changed_during = f.changed;
	}
	free(f.h);
	return rc;
}

int cbi_live_read(cbi_snap *s, const cbi_pipe_cfg *pc, int check_changes, const char *spool_dir,
		  cbi_pipe_stats *ps, cbi_live_stats *ls, cbi_error *err)
{
	memset(ls, 0, sizeof *ls);
	ls->changed_during = -1;
	int rc;
	switch (cbi_snap_mode(s)) {
	case CBI_SNAP_TRACE:
		return read_trace(s, pc, spool_dir, ps, ls, err);
	case CBI_SNAP_FREEZE:
		if ((rc = cbi_snap_freeze(s, err))) /* no-op when the caller froze already */
			return rc;
		if ((rc = run_frozen(s, *pc, ps, err)))
			return rc;
		return cbi_snap_thaw(s, err);
	default:
		if (check_changes)
			return read_checked(pc, ps, ls, err);
		return cbi_pipe_run(pc, ps, err);
	}
}
