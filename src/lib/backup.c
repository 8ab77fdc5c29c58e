/* backup.c - cbi_backup(): choose full or incremental, run the pipeline,
 * write image and index under temporary names, then commit them.
 *
 * A run goes through five phases over one context (bk_run): validate the
 * options and open the source; choose the parent (under the job's lock:
 * scan DEST once through the chain reader, read the local state, then a
 * pure decision, cbi_backup_choose_parent()); keys (the chain reader opens,
 * unlocks and checks the parent, or a new chain's key is made); write the
 * point; finish (local state, result). Nothing here unlocks a chain or
 * checks a header MAC or an index digest: chainrd.h does. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "backup.h"
#include "badmap.h"
#include "catalog.h"
#include "chain.h"
#include "chainrd.h"
#include "dest.h"
#include "destfs.h"
#include "fsmap.h"
#include "fsprobe.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "liveread.h"
#include "pipeline.h"
#include "prune.h"
#include "snapshot.h"
#include "source.h"
#include "state.h"
#include "util.h"

typedef struct bk_state {
	cbi_image_writer *img;
	cbi_index_writer *idx;
	const char *img_path;
	uint64_t changed, zero, stored;
} bk_state;

static int sink(void *ud, uint64_t block, const cbi_pipe_block *b, cbi_error *err)
{
	bk_state *st = ud;
	int rc;
	if (b->store) {
		rc = cbi_image_writer_add(st->img, block, b->rec_flags, b->raw_len, b->ent.hash, b->payload,
					  b->stored_len);
		if (rc)
			return cbi_err(err, rc, "unable to write '%s': %s", st->img_path, cbi_strerror(rc));
		st->stored++;
	}
	if (b->changed)
		st->changed++;
	if (b->ent.flags & CBI_IDX_ZERO)
		st->zero++;
	rc = cbi_index_writer_add(st->idx, &b->ent);
	if (rc)
		return cbi_err(err, rc, "unable to write the index in '%s': %s", st->img_path,
			       cbi_strerror(rc));
	return 0;
}

static int sink_zeros(void *ud, uint64_t first, uint64_t n, cbi_error *err)
{
	bk_state *st = ud;
	(void)first;
	st->zero += n;
	int rc = cbi_index_writer_add_zeros(st->idx, n);
	if (rc)
		return cbi_err(err, rc, "unable to write the index in '%s': %s", st->img_path,
			       cbi_strerror(rc));
	return 0;
}

/* The job's key (job.h): it names the job's lock file in DEST, its
 * temporary files and its local state, so that two runs of the same job
 * never fork a chain, while different sources run concurrently. */
static uint64_t job_key(const cbi_hdr *h)
{
	return cbi_state_key(h->host, h->source_id, h->job);
}

/* With the lock held, remove what a killed run of the same (host, source,
 * job) left in DEST (its scan d): temporary files tagged with our key, and
 * images whose index was never committed (a crash between the two
 * renames). Neither was ever a point. */
static void remove_leftovers(const cbi_dest *d, const cbi_hdr *h, const cbi_point *pts, size_t n)
{
	char prefix[64], path[4096], partner[4096];
	uint64_t key = job_key(h);
	cbi_job_tmp_prefix(key, prefix, sizeof prefix);
	/* An interrupted commit's image is newer than every point of its key;
	 * older orphans (say, images copied here without their index) are the
	 * user's and are left alone for verify to report. */
	int64_t newest = INT64_MIN;
	for (size_t i = 0; i < n; i++)
		if (cbi_state_key(pts[i].host, pts[i].source_id, pts[i].job) == key && pts[i].created_ns > newest)
			newest = pts[i].created_ns;
	for (size_t i = 0; i < d->n; i++) {
		const cbi_dent *e = &d->e[i];
		if (cbi_dest_path(d, e, path, sizeof path))
			continue;
		if (e->kind == CBI_DENT_TEMP && !strncmp(e->name, prefix, strlen(prefix))) {
			unlink(path);
			continue;
		}
		const cbi_point *p = e->pt ? &e->pt->p : NULL;
		if (e->kind != CBI_DENT_POINT || !cbi_has_ext(e->name, ".cbi") || !p || e->pt->rc ||
		    e->pt->kind != CBI_KIND_IMAGE || cbi_state_key(p->host, p->source_id, p->job) != key ||
		    cbi_chain_find_id(pts, n, p->point_id) >= 0 || p->created_ns <= newest)
			continue;
		/* An index under the partner name, even a damaged one, means this
		 * was a committed point: keep its data for the user to salvage. */
		cbi_strlcpy(partner, e->name, sizeof partner);
		memcpy(partner + strlen(partner) - 4, ".cbx", 4);
		if (cbi_dest_find(d, partner))
			continue;
		cbi_sfile_remove(path); /* and its segments */
	}
}

static int take_lock(const char *dest, const cbi_hdr *h, cbi_joblock *lk, cbi_error *err)
{
	/* refused: the message says what holds the job (a backup, a prune) */
	return cbi_job_lock_op(dest, job_key(h), CBI_JOB_OP_BACKUP, h->job, h->source_path, lk, err);
}

/* A non-fatal note for the user: kept in the list, and in the joined string
 * the older callers read. */
static void append_warning(cbi_backup_result *r, const char *msg)
{
	if (r->n_warnings < CBI_MAX_WARNINGS)
		cbi_strlcpy(r->warnings[r->n_warnings++], msg, sizeof r->warnings[0]);
	size_t n = strlen(r->warning);
	if (n && n + 2 < sizeof r->warning) {
		memcpy(r->warning + n, "; ", 3);
		n += 2;
	}
	cbi_strlcpy(r->warning + n, msg, sizeof r->warning - n);
}

/* ------------------------------------------------------ choosing the parent */

/* The newest point of (host, source, job) in pts, or NULL. */
static const cbi_point *find_tip(const cbi_parent_in *in)
{
	const cbi_point *best = NULL;
	for (size_t i = 0; i < in->npts; i++) {
		const cbi_point *p = &in->pts[i];
		if (strcmp(p->host, in->host) || strcmp(p->job, in->job) || strcmp(p->source_id, in->source_id))
			continue;
		if (!best || p->created_ns > best->created_ns ||
		    (p->created_ns == best->created_ns && p->seq > best->seq))
			best = p;
	}
	return best;
}

static void refuse(cbi_parent_choice *c, int why, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void refuse(cbi_parent_choice *c, int why, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof c->msg, fmt, ap);
	va_end(ap);
	c->from = CBI_FROM_REFUSE;
	c->tip = NULL;
	c->why = why;
	c->code = code;
}

static void notice(cbi_parent_choice *c, int why, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void notice(cbi_parent_choice *c, int why, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof c->msg, fmt, ap);
	va_end(ap);
	c->why = why;
}

/* DEST's newest point (c->tip, or NULL) and the local state may disagree:
 * either resolve it in favour of DEST with a notice, take the state's point
 * when DEST holds no chain, or refuse with an explanation. */
static void reconcile(const cbi_parent_in *in, cbi_parent_choice *c)
{
	char a[33], b[33];
	const cbi_point *d = c->tip, *st = in->state;
	const char *why = in->state_why ? in->state_why : "unknown reason";
	if (in->state_status != CBI_STATE_FOUND) {
		int damaged = in->state_status == CBI_STATE_DAMAGED;
		if (damaged && !d)
			refuse(c, CBI_WHY_DAMAGED_NO_CHAIN, -CBI_EDAMAGED,
			       "the local state of job '%s' is damaged (%s) and '%s' holds no chain of it: "
			       "use --full to start a new chain",
			       in->job, why, in->dest);
		else if (!d && in->outbox)
			refuse(c, CBI_WHY_OUTBOX_NO_STATE, -CBI_ENOCHAIN,
			       "--outbox: '%s' holds no chain of job '%s' and there is no local state of it "
			       "to continue; seed the remote site with a full first",
			       in->dest, in->job);
		else if (!d)
			notice(c, CBI_WHY_FIRST,
			       "no chain of job '%s' in '%s' and no local state of it: starting a new chain", in->job,
			       in->dest);
		else if (damaged)
			notice(c, CBI_WHY_STATE_DAMAGED,
			       "the local state of job '%s' is damaged (%s); continuing from the newest point "
			       "in '%s' (seq %u)",
			       in->job, why, in->dest, d->seq);
		return;
	}
	if (!d && !in->outbox) {
		/* Another disk of a rotation, or a replaced one: continuing the
		 * state's chain here would write a point whose parents are on
		 * another disk. An outbox must be asked for. */
		cbi_id_hex(st->chain_id, a);
		if (st->encrypted && !in->encrypt)
			refuse(c, CBI_WHY_CLEAR_AFTER_ENCRYPTED, -CBI_EMISMATCH,
			       "'%s' holds no chain of job '%s' and the local state follows encrypted chain "
			       "%s: refusing to start an unencrypted one; add --encrypt (or --full for a "
			       "clear chain, or --outbox to continue the state's chain into an outbox)",
			       in->dest, in->job, a);
		else
			notice(c, CBI_WHY_NEW_DEST,
			       "'%s' holds no chain of job '%s': starting a new chain with a full (the local "
			       "state follows chain %s, seq %u, elsewhere; use --outbox to continue it "
			       "into an outbox instead)",
			       in->dest, in->job, a, st->seq);
		return;
	}
	if (!d) {
		c->tip = st;
		c->from = CBI_FROM_STATE;
		c->from_state = 1;
		cbi_id_hex(st->chain_id, a);
		notice(c, CBI_WHY_OUTBOX,
		       "'%s' holds no chain of job '%s': continuing chain %s after seq %u from the local "
		       "state (index only; the chain's images are elsewhere)",
		       in->dest, in->job, a, st->seq);
		return;
	}
	if (!memcmp(d->point_id, st->point_id, 16))
		return;
	cbi_id_hex(d->chain_id, a);
	cbi_id_hex(st->chain_id, b);
	if (memcmp(d->chain_id, st->chain_id, 16)) {
		if (st->encrypted && !d->encrypted)
			refuse(c, CBI_WHY_CLEAR_AFTER_ENCRYPTED, -CBI_EMISMATCH,
			       "the local state of job '%s' follows encrypted chain %s, but the newest point "
			       "in '%s' is on unencrypted chain %s: refusing to continue it in clear; use "
			       "--full --encrypt to start a new encrypted chain",
			       in->job, b, in->dest, a);
		else
			notice(c, CBI_WHY_OTHER_CHAIN,
			       "the local state follows chain %s (seq %u) but the newest point of job '%s' in '%s' "
			       "is on chain %s (seq %u): continuing the chain in '%s'",
			       b, st->seq, in->job, in->dest, a, d->seq, in->dest);
		return;
	}
	if (d->seq > st->seq)
		notice(c, CBI_WHY_STATE_BEHIND,
		       "the local state of job '%s' is at seq %u, '%s' has seq %u: continuing from '%s'", in->job,
		       st->seq, in->dest, d->seq, in->dest);
	else if (d->seq < st->seq)
		refuse(c, CBI_WHY_STATE_AHEAD, -CBI_EMISMATCH,
		       "the local state of job '%s' is at seq %u but the newest point in '%s' is seq "
		       "%u: the points in between are elsewhere (an outbox?); copy them into '%s', "
		       "or use --full",
		       in->job, st->seq, in->dest, d->seq, in->dest);
	else
		refuse(c, CBI_WHY_FORKED, -CBI_EMISMATCH,
		       "seq %u of job '%s' in '%s' is not the point the local state holds: the chain "
		       "was forked; use --full to start a new chain",
		       d->seq, in->job, in->dest);
}

void cbi_backup_choose_parent(const cbi_parent_in *in, cbi_parent_choice *c)
{
	memset(c, 0, sizeof *c);
	c->tip = in->force_full ? NULL : find_tip(in);
	c->from = c->tip ? CBI_FROM_DEST : CBI_FROM_NEW;
	if (in->state_status != CBI_STATE_UNUSED && !in->force_full) {
		reconcile(in, c);
		if (c->from == CBI_FROM_REFUSE)
			return;
	}
	int sfound = in->state_status == CBI_STATE_FOUND && !in->force_full;
	const cbi_point *tp = c->tip;
	if (!tp && !in->force_full && !in->source_id_given) {
		/* Same path and job, other identity: another disk under the same name. */
		for (size_t i = 0; i < in->npts; i++) {
			const cbi_point *p = &in->pts[i];
			if (!strcmp(p->host, in->host) && !strcmp(p->job, in->job) &&
			    !strcmp(p->source_path, in->source_path)) {
				refuse(c, CBI_WHY_OTHER_DISK, -CBI_EMISMATCH,
				       "source '%s' is now '%s' but job '%s' in '%s' backs up '%s': "
				       "another disk? use --full to start a new chain",
				       in->source, in->source_id, in->job, in->dest, p->source_id);
				return;
			}
		}
	}
	if (tp && !tp->encrypted) {
		/* A chain is encrypted throughout: an unencrypted newest point of
		 * an encrypted chain was forged, and continuing it would write the
		 * disk's changes in clear. */
		int enc_seen = sfound && in->state->encrypted && !memcmp(in->state->chain_id, tp->chain_id, 16);
		for (size_t i = 0; i < in->npts && !enc_seen; i++)
			enc_seen = in->pts[i].encrypted && !memcmp(in->pts[i].chain_id, tp->chain_id, 16);
		if (enc_seen) {
			refuse(c, CBI_WHY_FORGED_CLEAR, -CBI_EAUTH,
			       "newest point '%s' of job '%s' is unencrypted, but its chain is encrypted: "
			       "the point was forged or altered; run 'cbimg verify'",
			       tp->index_file, in->job);
			return;
		}
	}
	if (tp && tp->source_size != in->source_size) {
		refuse(c, CBI_WHY_SIZE, -CBI_EMISMATCH,
		       "source '%s' is %llu bytes but its chain for job '%s' holds %llu; "
		       "use --full to start a new chain",
		       in->source, (unsigned long long)in->source_size, in->job,
		       (unsigned long long)tp->source_size);
		return;
	}
	if (tp && tp->seq >= UINT32_MAX - 1) {
		c->exhausted = 1; /* chain exhausted: start anew */
		c->from = CBI_FROM_NEW;
		c->tip = NULL;
	}
}

/* ------------------------------------------------------------------- keys */

/* A new encrypted chain: a random data key, wrapped under the passphrase
 * (asked for with confirmation) in a key file written to DEST now, before
 * any file of the chain. */
static int new_chain_key(const cbi_backup_opts *o, cbi_hdr *h, cbi_keys *keys, char *key_path, size_t kpsz,
			 char *pw, int *pwlen, cbi_backup_result *r, cbi_error *err)
{
	uint8_t dk[CBI_KEY_LEN];
	char id[33], what[256], name[512];
	cbi_keyfile kf;
	int rc = cbi_random(dk, sizeof dk);
	if (rc) {
		rc = cbi_err(err, rc, "no random numbers: %s", cbi_strerror(rc));
		goto end;
	}
	if ((rc = cbi_keys_derive(keys, h->chain_id, dk))) {
		rc = cbi_err(err, rc, "key derivation failed");
		goto end;
	}
	cbi_id_hex(h->chain_id, id);
	id[8] = 0;
	snprintf(what, sizeof what, "new chain %s, job '%s' of '%s'", id, h->job, h->host);
	int len = o->pass ? o->pass(o->pass_ud, what, 1, pw, CBI_PASS_MAX) : -CBI_EPASS;
	if (len <= 0 || len >= (int)CBI_PASS_MAX) {
		rc = cbi_err(err, -CBI_EPASS,
			     len == 0 ? "--encrypt: the passphrase is empty"
				      : "--encrypt needs a passphrase (--password-file, CBIMG_PASSWORD or a terminal)");
		goto end;
	}
	*pwlen = len;
	rc = cbi_keyfile_wrap(&kf, keys, pw, (size_t)len, &o->kdf);
	if (rc == -CBI_EUSAGE) {
		rc = cbi_err(err, rc, "scrypt cost out of range: log2 N from 12 to 24, r from 8 to 64, p from 1 to 64");
		goto end;
	}
	if (rc) {
		rc = cbi_err(err, rc, "unable to wrap the chain key: %s", cbi_strerror(rc));
		goto end;
	}
	cbi_keyfile_name(h, name, sizeof name);
	snprintf(key_path, kpsz, "%.3000s/%.1000s", o->dest, name);
	/* Ours from now on, unless the name is taken (the chain id is random:
	 * only by chance), so that a write that fails after its rename (the
	 * directory's sync) leaves no key file of a chain that has no point. */
	if (access(key_path, F_OK) < 0) {
		cbi_strlcpy(r->key_file, key_path, sizeof r->key_file);
		r->key_file_new = 1;
	}
	if ((rc = cbi_keyfile_write(key_path, &kf, err)))
		goto end;
	cbi_strlcpy(r->key_file, key_path, sizeof r->key_file);
	r->key_file_new = 1;
end:
	OPENSSL_cleanse(dk, sizeof dk);
	return rc;
}

/* Continuing an encrypted chain: make sure DEST holds its key file. When
 * it does not (an outbox, continued from the local state), write one,
 * wrapped anew at the full cost: the state's copy is wrapped cheaply and
 * must not leave the machine. */
static int ensure_key_file(const cbi_backup_opts *o, const cbi_hdr *h, const cbi_keys *keys, const char *pw,
			   int pwlen, cbi_backup_result *r, cbi_error *err)
{
	char name[512];
	char(*found)[4096] = malloc(sizeof *found);
	size_t n = 0;
	int rc = found ? cbi_keyfile_find(o->dest, h->chain_id, found, 1, &n) : -ENOMEM;
	if (!rc && n) {
		cbi_strlcpy(r->key_file, found[0], sizeof r->key_file);
		free(found);
		return 0;
	}
	free(found);
	cbi_keyfile kf;
	if ((rc = cbi_keyfile_wrap(&kf, keys, pw, (size_t)pwlen, &o->kdf)))
		return cbi_err(err, rc, "unable to wrap the chain key: %s", cbi_strerror(rc));
	cbi_keyfile_name(h, name, sizeof name);
	snprintf(r->key_file, sizeof r->key_file, "%.3000s/%.1000s", o->dest, name);
	if ((rc = cbi_keyfile_write(r->key_file, &kf, err)))
		return rc;
	r->key_file_new = 1;
	return 0;
}

/* ------------------------------------------------------------- the run */

/* One run of cbi_backup(): what each phase finds, and what the cleanup
 * releases. */
typedef struct bk_run {
	const cbi_backup_opts *o;
	cbi_backup_result *r;
	cbi_error *err;
	uint32_t bs;              /* block size */
	int level;
	const char *job;
	const char *state_dir;
	cbi_hdr h;                /* the new point's header */
	cbi_source *src;
	cbi_fsmap *fsmap;         /* used_only: the blocks the source's file system uses */
	cbi_joblock lock;
	int64_t run_id;           /* the run's row in DEST's catalog, 0 if none */
	cbi_chain *dest;          /* DEST's one scan (the chain reader) */
	const cbi_point *pts;     /* DEST's points, owned by dest */
	size_t npts;
	cbi_point stp;            /* the local state's point */
	cbi_parent_choice choice;
	cbi_chain *pchain;        /* the parent, opened and checked by the chain reader */
	int pfailed_at;           /* where its check failed (CBI_CHAIN_AT_*) */
	cbi_index *parent;        /* the parent's index (owned by pchain), NULL for a full */
	cbi_keys keys;            /* the chain's keys when it is encrypted */
	int encrypted;
	char key_used[4096];      /* the key file that opened the chain */
	char *pw;                 /* its passphrase, kept for the state's key copy */
	int pwlen;
	uint8_t rec_key[CBI_KEY_LEN];
	cbi_hashspec hs;
	bk_state st;
	char img_path[4096], idx_path[4096];
	cbi_pipe_stats ps;
	cbi_idx_trailer it;
	int committed;            /* the index has its final name: the point exists */
	cbi_rescue rescue;        /* rescue: what could not be read (badmap.h) */
	cbi_snap *snap;           /* the snapshot mode and its means (snapshot.h) */
	const cbi_backup_hooks *hk; /* a caller's changes (backup.h), or NULL */
} bk_run;

/* Phase 1: the options, DEST, the source, and the new point's identity. */
static int bk_validate(bk_run *b)
{
	const cbi_backup_opts *o = b->o;
	cbi_error *err = b->err;
	int rc;
	if (!o->source || !o->dest)
		return cbi_err(err, -CBI_EUSAGE, "source and destination are required");
	b->bs = o->block_size ? o->block_size : CBI_DEFAULT_BLOCK_SIZE;
	if (b->bs < CBI_MIN_BLOCK_SIZE || b->bs > CBI_MAX_BLOCK_SIZE || (b->bs & (b->bs - 1)))
		return cbi_err(err, -CBI_EUSAGE, "block size %u is not a power of two from 4K to 4M", b->bs);
	b->level = o->level ? o->level : 3;
	if (b->level < 1 || b->level > CBI_MAX_LEVEL)
		return cbi_err(err, -CBI_EUSAGE, "compression level %d out of range 1..%d", b->level,
			       CBI_MAX_LEVEL);
	if (o->hash_alg > CBI_HASH_SHA256_128)
		return cbi_err(err, -CBI_EUSAGE, "unknown block hash algorithm %u", o->hash_alg);
	b->job = o->job && *o->job ? o->job : "default";
	if (strlen(b->job) > 63)
		return cbi_err(err, -CBI_EUSAGE, "job name '%s' longer than 63 bytes", b->job);
	if (o->host && strlen(o->host) > 63)
		return cbi_err(err, -CBI_EUSAGE, "host name '%s' longer than 63 bytes", o->host);
	if (o->source_id && strlen(o->source_id) > 127)
		return cbi_err(err, -CBI_EUSAGE, "source id longer than 127 bytes");
	if (o->outbox && (o->force_full || o->no_state))
		return cbi_err(err, -CBI_EUSAGE, "--outbox continues the local state's chain: not with %s",
			       o->force_full ? "--full" : "--no-state");
	b->state_dir = o->state_dir && *o->state_dir ? o->state_dir : CBI_DEFAULT_STATE_DIR;
	struct stat dst;
	if (stat(o->dest, &dst) < 0)
		return cbi_err(err, -errno, "unable to use destination '%s': %s", o->dest, strerror(errno));
	if (!S_ISDIR(dst.st_mode))
		return cbi_err(err, -ENOTDIR, "destination '%s' is not a directory", o->dest);
	if (access(o->dest, W_OK) < 0)
		return cbi_err(err, -errno, "destination '%s' is not writable: %s", o->dest, strerror(errno));
	/* Segments where DEST's file system limits file sizes (FAT). */
	if ((rc = cbi_split_choose(o->dest, o->split, &b->h.segment_mib, b->r->dest_fs, sizeof b->r->dest_fs,
				   err)))
		return rc;

	/* A source in use (mounted read-write, or the file of a loop device
	 * that is): the snapshot mode, and what to read (snapshot.h). */
	cbi_snap_cfg sc = { .mode = o->snapshot, .allow_inconsistent = o->allow_inconsistent,
			    .used_only = o->used_only, .source = o->source, .dest = o->dest,
			    .state_dir = o->no_state ? NULL : b->state_dir,
			    .freeze_timeout_ms = o->freeze_timeout_ms, .cmd = o->snapshot_cmd,
			    .cleanup = o->snapshot_cleanup, .trace_buf_kib = o->trace_buf_kib };
	if ((rc = cbi_snap_begin(&sc, &b->snap, err)))
		return rc;
	cbi_strlcpy(b->r->snapshot, cbi_snap_mode_name(cbi_snap_mode(b->snap)), sizeof b->r->snapshot);
	if ((rc = cbi_source_open(cbi_snap_read_path(b->snap), &b->src, err)))
		return rc;
	const cbi_source *src = b->src;
	if ((rc = cbi_snap_opened(b->snap, src->size, err)))
		return rc;

	cbi_hdr *h = &b->h;
	h->hash_alg = o->hash_alg ? o->hash_alg : CBI_HASH_XXH3_128;
	h->compression = CBI_COMP_ZSTD;
	h->level = (uint32_t)b->level;
	h->source_size = src->size;
	h->created_ns = cbi_wallclock_ns();
	cbi_strlcpy(h->job, b->job, sizeof h->job);
	if (o->host && *o->host) {
		cbi_strlcpy(h->host, o->host, sizeof h->host);
	} else if (gethostname(h->host, sizeof h->host - 1) < 0) {
		cbi_strlcpy(h->host, "localhost", sizeof h->host);
	}
	/* a snapshot is backed up as its origin: the origin's identity and chain */
	char origin_id[sizeof h->source_id];
	if (strcmp(src->path, o->source))
		cbi_source_identity(o->source, origin_id, sizeof origin_id);
	cbi_strlcpy(h->source_id, o->source_id ? o->source_id : strcmp(src->path, o->source) ? origin_id : src->id,
		    sizeof h->source_id);
	/* keep the tail of long paths: it is the part that names the device */
	size_t pl = strlen(o->source);
	cbi_strlcpy(h->source_path, pl > 63 ? o->source + pl - 63 : o->source, sizeof h->source_path);
	/* DEST where its disk should be: not a bare mount point (destfs.h) */
	if ((rc = cbi_dest_check(o->dest, o->dest_uuid, o->no_state ? NULL : b->state_dir, h->host, h->source_id,
				  h->job, err)))
		return rc;
	return 0;
}

/* Phase 2: under the job's lock, what DEST (one scan, the chain reader's)
 * and the local state hold, then the decision (cbi_backup_choose_parent).
 * The parent lookup happens here and in bk_keys() only. */
static int bk_choose_parent(bk_run *b)
{
	const cbi_backup_opts *o = b->o;
	cbi_hdr *h = &b->h;
	int rc;
	if ((rc = take_lock(o->dest, h, &b->lock, b->err)))
		return rc;
	cbi_error ce; /* the catalog is a cache: its failures are warnings */
	if (cbi_catalog_run_begin(o->dest, h->host, h->source_id, h->source_path, h->job, &b->run_id, &ce))
		append_warning(b->r, ce.msg);
	if (b->lock.locked && cbi_prune_finish_interrupted(o->dest, job_key(h), h->job, ce.msg, sizeof ce.msg))
		append_warning(b->r, ce.msg); /* issue 11: a prune killed midway is finished first */
	cbi_chain_opts dco = { .no_state = 1 }; /* the points only: nothing is unlocked here */
	if ((rc = cbi_chain_open_dir(o->dest, &dco, &b->dest, b->err)))
		return rc;
	b->pts = cbi_chain_points(b->dest, &b->npts);
	if (b->lock.locked)
		remove_leftovers(cbi_chain_dest(b->dest), h, b->pts, b->npts);

	char why[sizeof ce.msg] = "";
	cbi_parent_in in = {
		.pts = b->pts, .npts = b->npts,
		.host = h->host, .source_id = h->source_id, .job = h->job, .source_path = h->source_path,
		.source_size = b->src->size, .state = &b->stp, .state_why = why,
		.force_full = o->force_full, .source_id_given = o->source_id != NULL,
		.encrypt = o->encrypt, .outbox = o->outbox,
		.dest = o->dest, .source = o->source,
	};
	if (!o->no_state && !o->force_full) {
		int found = 0;
		cbi_error se;
		int src = cbi_state_load(b->state_dir, job_key(h), &b->stp, &found, &se);
		if (src == -CBI_EDAMAGED)
			cbi_strlcpy(why, se.msg, sizeof why);
		else if (src)
			snprintf(why, sizeof why, "'%s' unreadable", b->state_dir);
		in.state_status = found ? CBI_STATE_FOUND : src ? CBI_STATE_DAMAGED : CBI_STATE_MISSING;
	}
	cbi_parent_choice *c = &b->choice;
	cbi_backup_choose_parent(&in, c);
	if (c->from == CBI_FROM_REFUSE)
		return cbi_err(b->err, c->code, "%s", c->msg);
	/* issue 11: never an incremental onto a chain whose parent is missing
	 * here, unless the local state vouches for its tip (an outbox, whose
	 * chain continues one kept at the remote site) */
	if (c->tip && c->tip >= b->pts && c->tip < b->pts + b->npts && c->tip->broken &&
	    !(in.state_status == CBI_STATE_FOUND && !memcmp(b->stp.point_id, c->tip->point_id, 16)))
		return cbi_err(b->err, -CBI_ENOPARENT,
			       "the chain of job '%s' in '%s' is incomplete: a parent of its newest point '%s' is "
			       "missing, so an incremental could not be restored; put the missing files back, or "
			       "use --full to start a new chain",
			       h->job, o->dest, c->tip->index_file);
	cbi_strlcpy(b->r->notice, c->msg, sizeof b->r->notice);
	b->r->from_state = c->from_state;
	return 0;
}

/* The parent's check failed at step b->pfailed_at (chainrd.h): the reader's
 * reason, put in backup's context. An unlock's message (no key file, wrong
 * or no passphrase) stands alone. */
static int parent_failed(bk_run *b, int rc)
{
	const cbi_point *tp = b->choice.tip;
	cbi_error *err = b->err;
	switch (b->pfailed_at) {
	case CBI_CHAIN_AT_UNLOCK:
		return rc;
	case CBI_CHAIN_AT_HEADER:
		/* the chain was unlocked: another key id or MAC in its header
		 * means the header was altered */
		return cbi_err_prefix(err, rc, "newest index '%s' of job '%s'", tp->index_file, b->h.job);
	case CBI_CHAIN_AT_DIGEST:
		if (cbi_is_damage(rc) && err) {
			char inner[sizeof err->msg];
			cbi_strlcpy(inner, err->msg[0] ? err->msg : cbi_strerror(rc), sizeof inner);
			return cbi_err(err, rc,
				       "newest index '%s' of job '%s' is damaged (%.700s): run 'cbimg verify', "
				       "or use --full",
				       tp->index_file, b->h.job, inner);
		}
		if (cbi_is_damage(rc))
			return rc;
		return cbi_err_prefix(err, rc, "unable to check newest index '%s' of job '%s'", tp->index_file,
				      b->h.job);
	default:
		return cbi_err_prefix(err, rc, "newest point of job '%s' in '%s'", b->h.job, b->o->dest);
	}
}

/* --encrypt continues no unencrypted chain. */
static int refuse_encrypt(bk_run *b)
{
	return cbi_err(b->err, -CBI_EUSAGE,
		       "job '%s' in '%s' continues an unencrypted chain: --encrypt applies to new "
		       "chains; add --full to start an encrypted one",
		       b->h.job, b->o->dest);
}

/* Phase 3, continuing a chain: the chain reader opens the parent's index
 * (in DEST, or the local state's copy for an outbox), unlocks the chain when
 * it is encrypted (DEST's key files, then the local state's copy), checks
 * the header and the digest; then the chain's settings. */
static int bk_keys_parent(bk_run *b)
{
	const cbi_backup_opts *o = b->o;
	const cbi_point *tp = b->choice.tip;
	cbi_hdr *h = &b->h;
	int rc;
	if (o->encrypt && !tp->encrypted)
		return refuse_encrypt(b); /* before the checks, as the header says */
	cbi_chain_opts co = { .pass = o->pass, .pass_ud = o->pass_ud, .state_dir = b->state_dir,
			      .no_state = o->no_state, .keep_pass = 1, .failed_at = &b->pfailed_at };
	if ((rc = cbi_chain_open_tip(tp->index_file, o->dest, &co, &b->pchain, b->err)))
		return parent_failed(b, rc);
	b->parent = cbi_chain_tip_index(b->pchain);
	if (b->parent->hdr.flags & CBI_HDR_ENCRYPTED) {
		const cbi_keys *k = NULL;
		if ((rc = cbi_chain_keys(b->pchain, &b->parent->hdr, &k, b->err)))
			return rc; /* unlocked by the open: its failure remembered */
		b->keys = *k;
		int pwlen = 0;
		const char *pw = cbi_chain_pass(b->pchain, &pwlen);
		if (!(b->pw = calloc(1, CBI_PASS_MAX)))
			return cbi_err(b->err, -ENOMEM, "out of memory");
		if (pw)
			memcpy(b->pw, pw, (size_t)pwlen);
		b->pwlen = pwlen;
		cbi_strlcpy(b->key_used, cbi_chain_key_file(b->pchain), sizeof b->key_used);
		b->encrypted = 1;
	} else if (o->encrypt) {
		return refuse_encrypt(b);
	}
	if (o->block_size && o->block_size != tp->block_size) {
		char w[96];
		snprintf(w, sizeof w, "--block-size applies to new chains only; this chain uses %u bytes",
			 tp->block_size);
		append_warning(b->r, w); /* after the mount or catalog warning, if any */
	}
	if (o->hash_alg && o->hash_alg != b->parent->hdr.hash_alg)
		append_warning(b->r, "--hash applies to new chains only; this chain keeps its hash");
	h->hash_alg = b->parent->hdr.hash_alg;
	b->bs = tp->block_size;
	h->type = CBI_INCREMENTAL;
	h->seq = tp->seq + 1;
	memcpy(h->chain_id, tp->chain_id, 16);
	memcpy(h->parent_id, tp->point_id, 16);
	memcpy(h->parent_digest, tp->index_digest, 32);
	return 0;
}

/* Phase 3: the parent and the chain's keys, or a new chain (and its key
 * file in DEST when encrypted); then the new point's id and record key. */
static int bk_keys(bk_run *b)
{
	const cbi_backup_opts *o = b->o;
	cbi_hdr *h = &b->h;
	cbi_error *err = b->err;
	int rc;
	if (b->choice.tip) {
		if ((rc = bk_keys_parent(b)))
			return rc;
	} else {
		h->type = CBI_FULL;
		h->seq = 0;
		if ((rc = cbi_random(h->chain_id, 16)))
			return cbi_err(err, rc, "no random numbers: %s", cbi_strerror(rc));
		if (o->encrypt && !(b->pw = malloc(CBI_PASS_MAX)))
			return cbi_err(err, -ENOMEM, "out of memory");
		if (o->encrypt && (rc = new_chain_key(o, h, &b->keys, b->key_used, sizeof b->key_used, b->pw,
						      &b->pwlen, b->r, err)))
			return rc;
		b->encrypted = o->encrypt;
	}
	if ((rc = cbi_random(h->point_id, 16)))
		return cbi_err(err, rc, "no random numbers: %s", cbi_strerror(rc));
	if (b->encrypted) {
		h->flags |= CBI_HDR_ENCRYPTED;
		b->hs.keyed = 1;
		memcpy(b->hs.key, b->keys.hash_key, CBI_KEY_LEN);
		if ((rc = cbi_keys_record_key(&b->keys, h->point_id, b->rec_key)))
			return cbi_err(err, rc, "key derivation failed");
		/* The chain's key file belongs beside its points: an outbox that
		 * continues a chain from the local state gets a copy. */
		if (!b->r->key_file_new && (rc = ensure_key_file(o, h, &b->keys, b->pw, b->pwlen, b->r, err)))
			return rc;
	}
	return 0;
}

/* Commit: the image first, then the index. A point exists only when its
 * index does, so a crash between the two renames leaves an orphan image
 * that nothing takes for a point.
 *
 * Once the index has its final name, the point is committed, and nothing
 * of it is removed any more: not the image, not the index, not the chain's
 * key file. A failure of the directory sync that follows is reported (the
 * backup fails, the local state is not moved to the point), but the point
 * is kept whole, so that whatever `list` shows restores. Rolling it back
 * instead would take more name operations on a directory that has just
 * failed to sync, each of which can fail or be lost in turn, and a rollback
 * stopped half-way (index gone, image kept; or the key file gone, the index
 * kept) is exactly the point that cannot be restored. Kept, the worst a power
 * loss can do is lose the index's name: the image's name and the key file
 * were synced before it, so what remains is an orphan image, which the next
 * run of the job removes (remove_leftovers), and no point. */
static int bk_commit(bk_run *b)
{
	const char *dest = b->o->dest;
	cbi_error *err = b->err;
	int rc;
	if ((rc = cbi_image_writer_commit(b->st.img, err)))
		return rc;
	b->st.img = NULL;
	/* The image's rename must be durable before the index's: otherwise a
	 * power loss could keep the index (the point) without its image. */
	if ((rc = cbi_fsync_dir(dest))) {
		cbi_sfile_remove(b->img_path);
		return cbi_err(err, rc, "unable to sync directory '%s': %s", dest, cbi_strerror(rc));
	}
	if ((rc = cbi_index_writer_commit(b->st.idx, err))) {
		cbi_sfile_remove(b->img_path);
		return rc;
	}
	b->st.idx = NULL;
	b->committed = 1;
	if ((rc = cbi_fsync_dir(dest)))
		return cbi_err(err, rc,
			       "unable to sync directory '%s': %s; the point '%s' is written and kept whole, "
			       "but it may not survive a power loss",
			       dest, cbi_strerror(rc), b->idx_path);
	return 0;
}

/* ------------------------------------------------------------ free space */

uint64_t cbi_backup_space_need(int full, uint64_t n_blocks, uint32_t block_size, uint64_t data_bytes,
			       int data_known)
{
	uint64_t items = n_blocks;
	/* a full's index of runs (revision 2.6): at most one item per block
	 * holding data and one run between two of them */
	if (full && data_known && block_size && n_blocks >= CBI_IDX_RUNS_MIN_BLOCKS)
		items = CBI_MIN(n_blocks, 2 * (data_bytes / block_size + 1) + 1);
	uint64_t need = items * CBI_IDX_ENT_SIZE + 4 * (CBI_HDR_SIZE + CBI_TRL_SIZE);
	if (!full || !block_size)
		return need;
	uint64_t data = data_bytes / (data_known ? CBI_SPACE_RATIO_KNOWN : CBI_SPACE_RATIO_UNKNOWN);
	uint64_t stored = (data_bytes / block_size) / (data_known ? 1 : CBI_SPACE_RATIO_UNKNOWN);
	return need + data + stored * (CBI_REC_HDR_SIZE + CBI_TAB_ENT_SIZE);
}

/* What the source holds, for the estimate: the used blocks of its ext2/3/4
 * file system (the map of --used-only, or read here for the estimate
 * only), else an image file's allocated bytes; *known = 0 when neither is
 * known (the source's size is returned). */
static uint64_t bk_source_data(bk_run *b, int *known)
{
	const cbi_source *src = b->src;
	*known = 1;
	/* an image file holds at most its allocated bytes: a sparse file whose
	 * file system is smaller than the file (everything past the file
	 * system's end counts as used) is not estimated at its apparent size */
	struct stat st;
	uint64_t alloc = UINT64_MAX;
	if (!src->is_dev && fstat(src->fd, &st) == 0 && S_ISREG(st.st_mode))
		alloc = CBI_MIN((uint64_t)st.st_blocks * 512, src->size);
	if (b->fsmap)
		return CBI_MIN(b->fsmap->used_blocks * b->bs, alloc);
	cbi_fsmap *m = NULL;
	cbi_error e;
	if (!cbi_fsmap_read(src->path, src->size, b->bs, &m, &e)) {
		uint64_t used = m->used_blocks * b->bs;
		cbi_fsmap_free(m);
		return CBI_MIN(used, alloc);
	}
	if (alloc != UINT64_MAX)
		return alloc;
	*known = 0;
	return src->size;
}

/* Refuse early (-ENOSPC) when DEST clearly lacks the space the point needs
 * (cbi_backup_space_need). DEST whose free space is not known (statvfs
 * fails, or reports no blocks, as some FUSE file systems do) is not
 * checked, nor is anything with no_space_check. */
static int bk_check_space(bk_run *b)
{
	const cbi_backup_opts *o = b->o;
	struct statvfs vs;
	if (o->no_space_check || statvfs(o->dest, &vs) < 0 || !vs.f_blocks || !vs.f_frsize)
		return 0;
	uint64_t avail = (uint64_t)vs.f_bavail * vs.f_frsize;
	/* with an image sink (backup.h), only the index is in DEST */
	int full = b->h.type == CBI_FULL && !(b->hk && b->hk->image_write), known = 1;
	uint64_t data = full ? bk_source_data(b, &known) : 0;
	uint64_t need = cbi_backup_space_need(full, b->h.n_blocks, b->bs, data, known);
	if (avail >= need)
		return 0;
	return cbi_err(b->err, -ENOSPC,
		       "not enough space in '%s': %llu bytes free, a %s of '%s' needs about %llu "
		       "(an estimate: --no-space-check to try anyway)",
		       o->dest, (unsigned long long)avail, full ? "full" : "incremental", o->source,
		       (unsigned long long)need);
}

/* The read, as the snapshot mode wants it (liveread.h), and what it tells
 * the user. */
static int bk_read(bk_run *b, const cbi_pipe_cfg *pc)
{
	cbi_backup_result *r = b->r;
	cbi_live_stats ls;
	int check = cbi_snap_mode(b->snap) == CBI_SNAP_NONE && b->o->allow_inconsistent && cbi_snap_live(b->snap);
	int rc = cbi_live_read(b->snap, pc, check, b->o->dest, &b->ps, &ls, b->err);
	r->blocks_reread = ls.blocks_reread;
	r->trace_incomplete = ls.trace_incomplete;
	r->blocks_changed_during_read = ls.changed_during;
	if (rc)
		return rc;
	char w[512];
	if (ls.trace_incomplete) {
		snprintf(w, sizeof w,
			 "the write trace of '%s' lost events (its buffer overran): every block was read again "
			 "under the freeze instead (a larger --trace-buffer avoids that)",
			 b->o->source);
		append_warning(r, w);
	}
	if (check) {
		snprintf(w, sizeof w,
			 "source '%s' was read without a snapshot while mounted read-write: %lld block%s changed "
			 "during the read, so the image may be inconsistent",
			 b->o->source, (long long)ls.changed_during, ls.changed_during == 1 ? "" : "s");
		append_warning(r, w);
	}
	return 0;
}

/* Phase 4: read the source through the pipeline into a new image and
 * index under temporary names, seal and commit them. */
static int bk_write_point(bk_run *b)
{
	const cbi_backup_opts *o = b->o;
	cbi_hdr *h = &b->h;
	cbi_error *err = b->err;
	char name[512];
	int rc;
	h->block_size = b->bs;
	h->n_blocks = cbi_nblocks(b->src->size, b->bs);
	b->hs.alg = h->hash_alg;
	/* frozen before the map is read: it must be the frozen file system's */
	if (cbi_snap_mode(b->snap) == CBI_SNAP_FREEZE && (rc = cbi_snap_freeze(b->snap, err)))
		return rc;
	/* an incremental's records at level 1 unless asked: as small, less CPU
	 * (bench/README.md, "Compression level of incrementals") */
	if (!o->level && h->type == CBI_INCREMENTAL)
		b->level = CBI_INCR_LEVEL, h->level = CBI_INCR_LEVEL;
	if (o->used_only) {
		/* read before any block: the map is what "used" means for this point */
		if ((rc = cbi_fsmap_read(b->src->path, b->src->size, b->bs, &b->fsmap, err)))
			return rc;
		cbi_source_set_map(b->src, b->fsmap->used, b->bs);
		h->flags |= CBI_HDR_USED_ONLY;
	}
	if (o->rescue) {
		if ((rc = cbi_rescue_init(&b->rescue, cbi_source_sector(b->src), o->retries)))
			return cbi_err(err, rc, "out of memory");
		b->src->rescue = &b->rescue;
		h->flags |= CBI_HDR_BAD_RANGES;
	}
	if ((rc = bk_check_space(b)))
		return rc;

	cbi_point_filename(h, "cbi", name, sizeof name);
	snprintf(b->img_path, sizeof b->img_path, "%.3000s/%.1000s", o->dest, name);
	cbi_point_filename(h, "cbx", name, sizeof name);
	snprintf(b->idx_path, sizeof b->idx_path, "%.3000s/%.1000s", o->dest, name);
	b->st.img_path = b->img_path;
	char tag[64];
	cbi_job_tmp_tag(job_key(h), (long)getpid(), tag, sizeof tag);
	const cbi_keys *keys = b->encrypted ? &b->keys : NULL;
	const cbi_backup_hooks *hk = b->hk;
	if (hk && hk->image_write) {
		if ((rc = hk->image_begin ? hk->image_begin(hk->ud, b->img_path,
							    cbi_backup_image_bound(h->n_blocks, b->bs), err)
					  : 0) ||
		    (rc = cbi_image_writer_create_sink(b->img_path, h, keys, hk->image_write, hk->ud, &b->st.img,
						       err)))
			return rc;
	} else if ((rc = cbi_image_writer_create(b->img_path, tag, h, keys, &b->st.img, err))) {
		return rc;
	}
	if ((rc = cbi_index_writer_create(b->idx_path, tag, h, keys, &b->st.idx, err)))
		return rc;

	cbi_pipe_cfg pc = {
		.src = b->src, .parent = b->parent, .block_size = b->bs, .seq = h->seq, .level = b->level,
		.threads = o->threads, .sink = sink, .sink_zeros = sink_zeros, .sink_ud = &b->st,
		.hs = &b->hs, .rec_key = b->encrypted ? b->rec_key : NULL, .chain_id = h->chain_id,
		.point_id = h->point_id, .progress = o->progress, .progress_ud = o->progress_ud,
	};
	if ((rc = bk_read(b, &pc)))
		return rc;
	if (o->rescue) {
		cbi_badmap_normalize(&b->rescue.map);
		cbi_index_writer_set_badmap(b->st.idx, &b->rescue.map);
	}

	cbi_idx_trailer *it = &b->it;
	it->changed_blocks = b->st.changed;
	it->zero_blocks = b->st.zero;
	it->stored_blocks = b->st.stored;
	it->image_size = cbi_image_writer_final_size(b->st.img);
	if ((rc = cbi_index_writer_seal(b->st.idx, it)))
		return cbi_err(err, rc, "unable to write '%s': %s", b->idx_path, cbi_strerror(rc));
	if ((rc = cbi_image_writer_seal(b->st.img, b->st.changed, it->digest)))
		return cbi_err(err, rc, "unable to write '%s': %s", b->img_path, cbi_strerror(rc));
	return bk_commit(b);
}

/* rescue: the summary, and a warning when bytes are missing. */
static void bk_rescue_result(bk_run *b)
{
	cbi_backup_result *r = b->r;
	const cbi_rescue *q = &b->rescue;
	if (!b->o->rescue)
		return;
	r->rescue = 1;
	r->bad_bytes = q->map.bytes;
	r->bad_ranges = q->map.n;
	r->failed_reads = q->failed_reads;
	r->retry_reads = q->retry_reads;
	r->rescued_bytes = q->rescued;
	r->point.bad_bytes = q->map.bytes; /* the catalog's row is made from r->point */
	r->point.bad_ranges = q->map.n;
}

/* The result's description of the point written. */
static void bk_fill_result(bk_run *b)
{
	cbi_backup_result *r = b->r;
	const cbi_hdr *h = &b->h;
	memset(&r->point, 0, sizeof r->point);
	cbi_point_from_hdr(&r->point, h);
	cbi_strlcpy(r->point.file, b->img_path, sizeof r->point.file);
	cbi_strlcpy(r->point.index_file, b->idx_path, sizeof r->point.index_file);
	memcpy(r->point.index_digest, b->it.digest, 32);
	r->point.changed_blocks = b->st.changed;
	r->point.zero_blocks = b->st.zero;
	r->point.stored_blocks = b->st.stored;
	r->point.stored_bytes = b->it.image_size;
	r->point.index_bytes = b->it.file_size;
	r->point.has_image = 1;
	r->blocks_total = h->n_blocks;
	r->blocks_read = (b->ps.bytes_read + b->bs - 1) / b->bs;
	r->blocks_changed = b->st.changed;
	r->blocks_zero = b->st.zero;
	r->blocks_unused = b->fsmap ? h->n_blocks - b->fsmap->used_blocks : 0;
	r->blocks_stored = b->st.stored;
	r->bytes_read = b->ps.bytes_read;
	r->bytes_written = b->it.image_size + b->it.file_size;
	bk_rescue_result(b);
}

/* Phase 5: the local state follows the new point; the result. */
static void bk_finish(bk_run *b)
{
	const cbi_hdr *h = &b->h;
	if (!b->o->no_state) {
		cbi_error se;
		if (cbi_state_save(b->state_dir, job_key(h), b->idx_path,
				   b->encrypted ? &b->keys : NULL, b->pw, (size_t)b->pwlen, &se))
			append_warning(b->r, se.msg);
	}
	bk_fill_result(b);
	if (b->rescue.map.n) {
		char w[512], d[256];
		cbi_badmap_describe(&b->rescue.map, 3, d, sizeof d);
		snprintf(w, sizeof w,
			 "%llu bytes in %zu range%s of '%s' could not be read (%s): they are recorded in the "
			 "point as bad ranges, not as data",
			 (unsigned long long)b->rescue.map.bytes, b->rescue.map.n, b->rescue.map.n == 1 ? "" : "s",
			 b->o->source, d);
		append_warning(b->r, w);
	}
}

/* Release what the phases took; a failed run leaves no new file behind
 * unless its point was committed (bk_commit). */
static int bk_end(bk_run *b, int rc)
{
	cbi_backup_result *r = b->r;
	/* thawed on every path; the snapshot command's cleanup */
	char sw[512];
	r->freeze_ms = cbi_snap_freeze_ms(b->snap);
	if (cbi_snap_end(b->snap, sw, sizeof sw))
		append_warning(r, sw);
	b->snap = NULL;
	if (rc && !b->committed) { /* a failed or interrupted run: what it read and wrote before it stopped */
		r->bytes_read = b->ps.bytes_read;
		r->bytes_written = cbi_image_writer_written(b->st.img) + cbi_index_writer_written(b->st.idx);
	}
	cbi_image_writer_abort(b->st.img);
	cbi_index_writer_abort(b->st.idx);
	if (rc && b->committed)
		bk_fill_result(b); /* the point kept: the caller can name it */
	if (rc && r->key_file_new && !b->committed) {
		/* a new chain's key file without any point of the chain */
		unlink(r->key_file);
		r->key_file[0] = 0;
		r->key_file_new = 0;
	}
	cbi_keys_wipe(&b->keys);
	if (b->pw)
		OPENSSL_cleanse(b->pw, CBI_PASS_MAX);
	free(b->pw);
	OPENSSL_cleanse(b->rec_key, sizeof b->rec_key);
	OPENSSL_cleanse(&b->hs, sizeof b->hs);
	cbi_error ce;
	if (b->hk && b->hk->run_id)
		*b->hk->run_id = b->run_id; /* the caller records the run's end */
	else if (b->run_id && cbi_catalog_run_end(b->o->dest, b->run_id, rc,
					     rc ? (b->err && b->err->msg[0] ? b->err->msg : cbi_strerror(rc))
						: r->warning,
					     r, &ce))
		append_warning(r, ce.msg);
	cbi_chain_close(b->pchain); /* and the parent's index */
	cbi_chain_close(b->dest);
	cbi_source_close(b->src);
	cbi_fsmap_free(b->fsmap);
	cbi_rescue_free(&b->rescue);
	cbi_job_unlock(&b->lock);
	return rc;
}

uint64_t cbi_backup_image_bound(uint64_t n_blocks, uint32_t block_size)
{
	return CBI_HDR_SIZE + CBI_TRL_SIZE +
	       n_blocks * ((uint64_t)block_size + CBI_TAG_LEN + CBI_REC_HDR_SIZE + CBI_TAB_ENT_SIZE);
}

int cbi_backup(const cbi_backup_opts *o, cbi_backup_result *r, cbi_error *err)
{
	return cbi_backup_hooked(o, NULL, r, err);
}

int cbi_backup_hooked(const cbi_backup_opts *o, const cbi_backup_hooks *hk, cbi_backup_result *r,
		      cbi_error *err)
{
	double t0 = cbi_now();
	memset(r, 0, sizeof *r);
	r->blocks_changed_during_read = -1;
	bk_run *b = calloc(1, sizeof *b);
	if (!b)
		return cbi_err(err, -ENOMEM, "out of memory");
	b->o = o;
	b->r = r;
	b->hk = hk;
	b->err = err;
	b->lock.fd = -1;
	int rc = bk_validate(b);
	if (!rc)
		rc = bk_choose_parent(b);
	if (!rc)
		rc = bk_keys(b);
	if (!rc)
		rc = bk_write_point(b);
	if (!rc)
		bk_finish(b);
	rc = bk_end(b, rc);
	OPENSSL_cleanse(b, sizeof *b);
	free(b);
	r->seconds = cbi_now() - t0;
	return rc;
}
