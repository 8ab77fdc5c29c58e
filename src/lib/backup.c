/* backup.c - cbi_backup(): choose full or incremental, run the pipeline,
 * write image and index under temporary names, then commit them. */
#define _GNU_SOURCE
#include <dirent.h>
#include <openssl/crypto.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "catalog.h"
#include "chain.h"
#include "fsmap.h"
#include "fsprobe.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "pipeline.h"
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
			return cbi_err(err, rc, "unable to write '%s': %s", st->img_path, cbi_errtext(rc));
		st->stored++;
	}
	if (b->changed)
		st->changed++;
	if (b->ent.flags & CBI_IDX_ZERO)
		st->zero++;
	rc = cbi_index_writer_add(st->idx, &b->ent);
	if (rc)
		return cbi_err(err, rc, "unable to write the index in '%s': %s", st->img_path,
			       cbi_errtext(rc));
	return 0;
}

/* One lock file per (host, source, job) in DEST, so that two runs of the
 * same job never fork a chain, while different sources run concurrently:
 * named by the job's key (state.h). */
#define lock_key cbi_state_key

/* With the lock held, remove what a killed run of the same (host, source,
 * job) left: temporary files tagged with our key, and images whose index
 * was never committed (a crash between the two renames). Neither was ever
 * a point. */
static void remove_leftovers(const char *dest, const cbi_hdr *h, const cbi_point *pts, size_t n)
{
	char prefix[64], path[4096];
	uint64_t key = lock_key(h->host, h->source_id, h->job);
	snprintf(prefix, sizeof prefix, ".cbimg-%016llx-", (unsigned long long)key);
	/* An interrupted commit's image is newer than every point of its key;
	 * older orphans (say, images copied here without their index) are the
	 * user's and are left alone for verify to report. */
	int64_t newest = INT64_MIN;
	for (size_t i = 0; i < n; i++)
		if (lock_key(pts[i].host, pts[i].source_id, pts[i].job) == key && pts[i].created_ns > newest)
			newest = pts[i].created_ns;
	DIR *d = opendir(dest);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		if ((size_t)snprintf(path, sizeof path, "%.3000s/%.1000s", dest, de->d_name) >= sizeof path)
			continue;
		if (!strncmp(de->d_name, prefix, strlen(prefix)) && len > 4 &&
		    !strcmp(de->d_name + len - 4, ".tmp")) {
			unlink(path);
			continue;
		}
		if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".cbi"))
			continue;
		cbi_point p;
		int kind = 0;
		memset(&p, 0, sizeof p);
		if (cbi_point_read_file(path, &p, &kind, NULL) || kind != CBI_KIND_IMAGE ||
		    lock_key(p.host, p.source_id, p.job) != key || cbi_chain_find_id(pts, n, p.point_id) >= 0 ||
		    p.created_ns <= newest)
			continue;
		/* An index under the partner name, even a damaged one, means this
		 * was a committed point: keep its data for the user to salvage. */
		char partner[4096];
		cbi_strlcpy(partner, path, sizeof partner);
		memcpy(partner + strlen(partner) - 4, ".cbx", 4);
		if (access(partner, F_OK) == 0)
			continue;
		cbi_sfile_remove(path); /* and its segments */
	}
	closedir(d);
}

static int take_lock(const char *dest, const cbi_hdr *h, cbi_joblock *lk, cbi_error *err)
{
	int rc = cbi_job_lock(dest, lock_key(h->host, h->source_id, h->job), lk, err);
	if (rc == -CBI_ELOCKED)
		rc = cbi_err(err, rc, "another cbimg is backing up job '%s' of '%s' to '%s'", h->job,
			     h->source_path, dest);
	return rc;
}

static void append_warning(cbi_backup_result *r, const char *msg)
{
	size_t n = strlen(r->warning);
	if (n && n + 2 < sizeof r->warning) {
		memcpy(r->warning + n, "; ", 3);
		n += 2;
	}
	cbi_strlcpy(r->warning + n, msg, sizeof r->warning - n);
}

/* Decide which newest point to continue from when DEST (*tp, or NULL) and
 * the local state (st, when found) may disagree. Never forks a chain and
 * never silently starts a new one: a disagreement is either resolved in
 * favour of DEST with a notice, or refused with an explanation. */
static int reconcile(const cbi_point **tp, const cbi_point *st, int sfound, int sdamaged,
		     const char *why, const cbi_hdr *h, const cbi_backup_opts *o, cbi_backup_result *r,
		     cbi_error *err)
{
	char a[33], b[33];
	const cbi_point *d = *tp;
	if (!sfound) {
		if (!sdamaged && !d)
			snprintf(r->notice, sizeof r->notice,
				 "no chain of job '%s' in '%s' and no local state of it: starting a new chain",
				 h->job, o->dest);
		if (sdamaged && !d)
			return cbi_err(err, -CBI_EDAMAGED,
				       "the local state of job '%s' is damaged (%s) and '%s' holds no chain of it: "
				       "use --full to start a new chain",
				       h->job, why, o->dest);
		if (sdamaged)
			snprintf(r->notice, sizeof r->notice,
				 "the local state of job '%s' is damaged (%s); continuing from the newest point "
				 "in '%s' (seq %u)",
				 h->job, why, o->dest, d->seq);
		return 0;
	}
	if (!d) {
		*tp = st;
		r->from_state = 1;
		cbi_id_hex(st->chain_id, a);
		snprintf(r->notice, sizeof r->notice,
			 "'%s' holds no chain of job '%s': continuing chain %s after seq %u from the local "
			 "state (index only; the chain's images are elsewhere)",
			 o->dest, h->job, a, st->seq);
		return 0;
	}
	if (!memcmp(d->point_id, st->point_id, 16))
		return 0;
	cbi_id_hex(d->chain_id, a);
	cbi_id_hex(st->chain_id, b);
	if (memcmp(d->chain_id, st->chain_id, 16)) {
		if (st->encrypted && !d->encrypted)
			return cbi_err(err, -CBI_EMISMATCH,
				       "the local state of job '%s' follows encrypted chain %s, but the newest point "
				       "in '%s' is on unencrypted chain %s: refusing to continue it in clear; use "
				       "--full --encrypt to start a new encrypted chain",
				       h->job, b, o->dest, a);
		snprintf(r->notice, sizeof r->notice,
			 "the local state follows chain %s (seq %u) but the newest point of job '%s' in '%s' "
			 "is on chain %s (seq %u): continuing the chain in '%s'",
			 b, st->seq, h->job, o->dest, a, d->seq, o->dest);
		return 0;
	}
	if (d->seq > st->seq) {
		snprintf(r->notice, sizeof r->notice,
			 "the local state of job '%s' is at seq %u, '%s' has seq %u: continuing from '%s'",
			 h->job, st->seq, o->dest, d->seq, o->dest);
		return 0;
	}
	if (d->seq < st->seq)
		return cbi_err(err, -CBI_EMISMATCH,
			       "the local state of job '%s' is at seq %u but the newest point in '%s' is seq "
			       "%u: the points in between are elsewhere (an outbox?); copy them into '%s', "
			       "or use --full",
			       h->job, st->seq, o->dest, d->seq, o->dest);
	return cbi_err(err, -CBI_EMISMATCH,
		       "seq %u of job '%s' in '%s' is not the point the local state holds: the chain "
		       "was forked; use --full to start a new chain",
		       d->seq, h->job, o->dest);
}

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
		rc = cbi_err(err, rc, "no random numbers: %s", cbi_errtext(rc));
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
		rc = cbi_err(err, rc, "scrypt cost out of range: log2 N from 10 to 24, r and p from 1 to 64");
		goto end;
	}
	if (rc) {
		rc = cbi_err(err, rc, "unable to wrap the chain key: %s", cbi_errtext(rc));
		goto end;
	}
	cbi_keyfile_name(h, name, sizeof name);
	snprintf(key_path, kpsz, "%.3000s/%.1000s", o->dest, name);
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
		return cbi_err(err, rc, "unable to wrap the chain key: %s", cbi_errtext(rc));
	cbi_keyfile_name(h, name, sizeof name);
	snprintf(r->key_file, sizeof r->key_file, "%.3000s/%.1000s", o->dest, name);
	if ((rc = cbi_keyfile_write(r->key_file, &kf, err)))
		return rc;
	r->key_file_new = 1;
	return 0;
}

/* Pick the newest point of (host, source, job) in pts, or -1. */
static long find_tip(const cbi_point *pts, size_t n, const cbi_hdr *h)
{
	long best = -1;
	for (size_t i = 0; i < n; i++) {
		const cbi_point *p = &pts[i];
		if (strcmp(p->host, h->host) || strcmp(p->job, h->job) || strcmp(p->source_id, h->source_id))
			continue;
		if (best < 0 || p->created_ns > pts[best].created_ns ||
		    (p->created_ns == pts[best].created_ns && p->seq > pts[best].seq))
			best = (long)i;
	}
	return best;
}

int cbi_backup(const cbi_backup_opts *o, cbi_backup_result *r, cbi_error *err)
{
	double t0 = cbi_now();
	memset(r, 0, sizeof *r);
	cbi_source *src = NULL;
	cbi_fsmap *fsmap = NULL;  /* used_only: the blocks the source's file system uses */
	cbi_point *pts = NULL;
	size_t npts = 0;
	cbi_index *parent = NULL;
	bk_state st = { 0 };
	cbi_pipe_stats ps = { 0 }; /* what the pipeline read, also when it stopped early */
	int rc = 0;
	cbi_joblock lock = { .fd = -1 };
	cbi_keys keys;            /* the chain's keys when it is encrypted */
	int encrypted = 0;
	char key_used[4096] = ""; /* the key file that opened the chain */
	char *pw = NULL;          /* its passphrase, kept for the state's key copy */
	int pwlen = 0;
	uint8_t rec_key[CBI_KEY_LEN];
	cbi_hashspec hs;
	memset(&keys, 0, sizeof keys);
	memset(&hs, 0, sizeof hs);
	int64_t run_id = 0; /* the run's row in DEST's catalog, 0 if none */
	char img_path[4096], idx_path[4096], name[512];
	cbi_hdr h;
	memset(&h, 0, sizeof h);

	if (!o->source || !o->dest)
		return cbi_err(err, -CBI_EUSAGE, "source and destination are required");
	uint32_t bs = o->block_size ? o->block_size : CBI_DEFAULT_BLOCK_SIZE;
	if (bs < CBI_MIN_BLOCK_SIZE || bs > CBI_MAX_BLOCK_SIZE || (bs & (bs - 1)))
		return cbi_err(err, -CBI_EUSAGE, "block size %u is not a power of two from 4K to 4M", bs);
	int level = o->level ? o->level : 3;
	if (level < 1 || level > ZSTD_maxCLevel())
		return cbi_err(err, -CBI_EUSAGE, "compression level %d out of range 1..%d", level,
			       ZSTD_maxCLevel());
	if (o->hash_alg > CBI_HASH_SHA256)
		return cbi_err(err, -CBI_EUSAGE, "unknown block hash algorithm %u", o->hash_alg);
	const char *job = o->job && *o->job ? o->job : "default";
	if (strlen(job) > 63)
		return cbi_err(err, -CBI_EUSAGE, "job name '%s' longer than 63 bytes", job);
	if (o->host && strlen(o->host) > 63)
		return cbi_err(err, -CBI_EUSAGE, "host name '%s' longer than 63 bytes", o->host);
	if (o->source_id && strlen(o->source_id) > 127)
		return cbi_err(err, -CBI_EUSAGE, "source id longer than 127 bytes");
	struct stat dst;
	if (stat(o->dest, &dst) < 0)
		return cbi_err(err, -errno, "unable to use destination '%s': %s", o->dest, strerror(errno));
	if (!S_ISDIR(dst.st_mode))
		return cbi_err(err, -ENOTDIR, "destination '%s' is not a directory", o->dest);
	if (access(o->dest, W_OK) < 0)
		return cbi_err(err, -errno, "destination '%s' is not writable: %s", o->dest, strerror(errno));
	/* Segments where DEST's file system limits file sizes (FAT). */
	if ((rc = cbi_split_choose(o->dest, o->split, &h.segment_mib, r->dest_fs, sizeof r->dest_fs, err)))
		return rc;

	if ((rc = cbi_source_open(o->source, &src, err)))
		return rc;
	if (o->used_only && src->is_dev && cbi_dev_mounted_rw(src->rdev)) {
		rc = cbi_err(err, -CBI_EMOUNTED,
			     "--used-only: source '%s' is mounted read-write, so its block bitmaps change "
			     "while it is read; unmount it or mount it read-only",
			     o->source);
		goto end;
	}
	if (src->is_dev && cbi_dev_mounted_rw(src->rdev))
		snprintf(r->warning, sizeof r->warning,
			 "source '%s' is mounted read-write: the image may be inconsistent; unmount it, "
			 "mount it read-only or back up a snapshot",
			 o->source);

	h.hash_alg = o->hash_alg ? o->hash_alg : CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.level = (uint32_t)level;
	h.source_size = src->size;
	h.created_ns = cbi_wallclock_ns();
	cbi_strlcpy(h.job, job, sizeof h.job);
	if (o->host && *o->host) {
		cbi_strlcpy(h.host, o->host, sizeof h.host);
	} else if (gethostname(h.host, sizeof h.host - 1) < 0) {
		cbi_strlcpy(h.host, "localhost", sizeof h.host);
	}
	cbi_strlcpy(h.source_id, o->source_id ? o->source_id : src->id, sizeof h.source_id);
	/* keep the tail of long paths: it is the part that names the device */
	size_t pl = strlen(o->source);
	cbi_strlcpy(h.source_path, pl > 63 ? o->source + pl - 63 : o->source, sizeof h.source_path);

	if ((rc = take_lock(o->dest, &h, &lock, err)))
		goto end;
	cbi_error ce; /* the catalog is a cache: its failures are warnings */
	if (cbi_catalog_run_begin(o->dest, h.host, h.source_id, h.source_path, h.job, &run_id, &ce))
		append_warning(r, ce.msg);
	if ((rc = cbi_chain_scan(o->dest, &pts, &npts, err)))
		goto end;
	if (lock.locked)
		remove_leftovers(o->dest, &h, pts, npts);
	long tip = o->force_full ? -1 : find_tip(pts, npts, &h);
	const cbi_point *tp = tip >= 0 ? &pts[tip] : NULL;
	cbi_point stp;
	int sfound = 0, sdamaged = 0;
	const char *state_dir = o->state_dir && *o->state_dir ? o->state_dir : CBI_DEFAULT_STATE_DIR;
	if (!o->no_state && !o->force_full) {
		char why[700];
		memset(&stp, 0, sizeof stp);
		if (cbi_state_load(state_dir, lock_key(h.host, h.source_id, h.job), &stp, &sfound, &sdamaged,
				   why, sizeof why))
			sdamaged = 1, snprintf(why, sizeof why, "'%s' unreadable", state_dir);
		if ((rc = reconcile(&tp, &stp, sfound, sdamaged, why, &h, o, r, err)))
			goto end;
	}
	if (!tp && !sfound && !o->force_full && !o->source_id) {
		/* Same path and job, other identity: another disk under the same name. */
		for (size_t i = 0; i < npts; i++)
			if (!strcmp(pts[i].host, h.host) && !strcmp(pts[i].job, h.job) &&
			    !strcmp(pts[i].source_path, h.source_path)) {
				rc = cbi_err(err, -CBI_EMISMATCH,
					     "source '%s' is now '%s' but job '%s' in '%s' backs up '%s': "
					     "another disk? use --full to start a new chain",
					     o->source, h.source_id, h.job, o->dest, pts[i].source_id);
				goto end;
			}
	}
	if (tp && !tp->encrypted) {
		/* A chain is encrypted throughout: an unencrypted newest point of
		 * an encrypted chain was forged, and continuing it would write the
		 * disk's changes in clear. */
		int enc_seen = sfound && stp.encrypted && !memcmp(stp.chain_id, tp->chain_id, 16);
		for (size_t i = 0; i < npts && !enc_seen; i++)
			enc_seen = pts[i].encrypted && !memcmp(pts[i].chain_id, tp->chain_id, 16);
		if (enc_seen) {
			rc = cbi_err(err, -CBI_EAUTH,
				     "newest point '%s' of job '%s' is unencrypted, but its chain is encrypted: "
				     "the point was forged or altered; run 'cbimg verify'",
				     tp->index_file, h.job);
			goto end;
		}
	}
	if (tp) {
		if (tp->source_size != src->size) {
			rc = cbi_err(err, -CBI_EMISMATCH,
				     "source '%s' is %llu bytes but its chain for job '%s' holds %llu; "
				     "use --full to start a new chain",
				     o->source, (unsigned long long)src->size, h.job,
				     (unsigned long long)tp->source_size);
			goto end;
		}
		if (tp->seq >= UINT32_MAX - 1) {
			tp = NULL; /* chain exhausted: start anew */
		} else {
			if ((rc = cbi_index_open(tp->index_file, &parent, err)))
				goto end;
			if (parent->hdr.flags & CBI_HDR_ENCRYPTED) {
				/* DEST's key files first, then the local state's copy */
				if (!(pw = malloc(CBI_PASS_MAX))) {
					rc = cbi_err(err, -ENOMEM, "out of memory");
					goto end;
				}
				if ((rc = cbi_chain_unlock(o->dest, o->no_state ? NULL : state_dir, &parent->hdr, o->pass,
							   o->pass_ud, &keys, key_used, sizeof key_used, pw, &pwlen, err)))
					goto end;
				if ((rc = cbi_index_set_keys(parent, &keys))) {
					/* the chain was unlocked: another key id in one of its
					 * headers means the header was altered */
					rc = cbi_err(err, -CBI_EAUTH, "newest index '%s' of job '%s': %s", tp->index_file,
						     h.job,
						     cbi_hdr_keyed_problem(rc));
					goto end;
				}
				encrypted = 1;
			} else if (o->encrypt) {
				rc = cbi_err(err, -CBI_EUSAGE,
					     "job '%s' in '%s' continues an unencrypted chain: --encrypt applies to new "
					     "chains; add --full to start an encrypted one",
					     h.job, o->dest);
				goto end;
			}
			if ((rc = cbi_index_check_digest(parent))) {
				rc = cbi_err(err, rc == -CBI_EDAMAGED ? -CBI_EDAMAGED : rc,
					     "newest index '%s' of job '%s' is damaged (%s): run 'cbimg verify', "
					     "or use --full",
					     tp->index_file, h.job, cbi_errtext(rc));
				goto end;
			}
			if (o->block_size && o->block_size != tp->block_size) {
				char w[96];
				snprintf(w, sizeof w,
					 "--block-size applies to new chains only; this chain uses %u bytes",
					 tp->block_size);
				append_warning(r, w); /* after the mount or catalog warning, if any */
			}
			if (o->hash_alg && o->hash_alg != parent->hdr.hash_alg)
				append_warning(r, "--hash applies to new chains only; this chain keeps its hash");
			h.hash_alg = parent->hdr.hash_alg;
			bs = tp->block_size;
			h.type = CBI_INCREMENTAL;
			h.seq = tp->seq + 1;
			memcpy(h.chain_id, tp->chain_id, 16);
			memcpy(h.parent_id, tp->point_id, 16);
			memcpy(h.parent_digest, tp->index_digest, 32);
		}
	}
	if (!tp) {
		h.type = CBI_FULL;
		h.seq = 0;
		if ((rc = cbi_random(h.chain_id, 16))) {
			rc = cbi_err(err, rc, "no random numbers: %s", cbi_errtext(rc));
			goto end;
		}
		if (o->encrypt && !(pw = malloc(CBI_PASS_MAX))) {
			rc = cbi_err(err, -ENOMEM, "out of memory");
			goto end;
		}
		if (o->encrypt && (rc = new_chain_key(o, &h, &keys, key_used, sizeof key_used, pw, &pwlen, r, err)))
			goto end;
		encrypted = o->encrypt;
	}
	if ((rc = cbi_random(h.point_id, 16))) {
		rc = cbi_err(err, rc, "no random numbers: %s", cbi_errtext(rc));
		goto end;
	}
	h.block_size = bs;
	h.n_blocks = cbi_nblocks(src->size, bs);
	hs.alg = h.hash_alg;
	if (o->used_only) {
		/* read before any block: the map is what "used" means for this point */
		if ((rc = cbi_fsmap_read(o->source, src->size, bs, &fsmap, err)))
			goto end;
		cbi_source_set_map(src, fsmap->used, bs);
		h.flags |= CBI_HDR_USED_ONLY;
	}
	if (encrypted) {
		h.flags |= CBI_HDR_ENCRYPTED;
		hs.keyed = 1;
		memcpy(hs.key, keys.hash_key, CBI_KEY_LEN);
		if ((rc = cbi_keys_record_key(&keys, h.point_id, rec_key))) {
			rc = cbi_err(err, rc, "key derivation failed");
			goto end;
		}
		/* The chain's key file belongs beside its points: an outbox that
		 * continues a chain from the local state gets a copy. */
		if (!r->key_file_new && (rc = ensure_key_file(o, &h, &keys, pw, pwlen, r, err)))
			goto end;
	}

	cbi_point_filename(&h, "cbi", name, sizeof name);
	snprintf(img_path, sizeof img_path, "%s/%s", o->dest, name);
	cbi_point_filename(&h, "cbx", name, sizeof name);
	snprintf(idx_path, sizeof idx_path, "%s/%s", o->dest, name);
	st.img_path = img_path;
	char tag[64];
	snprintf(tag, sizeof tag, "cbimg-%016llx-%ld",
		 (unsigned long long)lock_key(h.host, h.source_id, h.job), (long)getpid());
	if ((rc = cbi_image_writer_create(img_path, tag, &h, encrypted ? &keys : NULL, &st.img, err)))
		goto end;
	if ((rc = cbi_index_writer_create(idx_path, tag, &h, encrypted ? &keys : NULL, &st.idx, err)))
		goto end;

	cbi_pipe_cfg pc = {
		.src = src, .parent = parent, .block_size = bs, .seq = h.seq, .level = level,
		.threads = o->threads, .sink = sink, .sink_ud = &st,
		.hs = &hs, .rec_key = encrypted ? rec_key : NULL, .chain_id = h.chain_id, .point_id = h.point_id,
		.progress = o->progress, .progress_ud = o->progress_ud,
	};
	if ((rc = cbi_pipe_run(&pc, &ps, err)))
		goto end;

	cbi_idx_trailer it = { 0 };
	it.changed_blocks = st.changed;
	it.zero_blocks = st.zero;
	it.stored_blocks = st.stored;
	it.image_size = cbi_image_writer_final_size(st.img);
	if ((rc = cbi_index_writer_seal(st.idx, &it))) {
		rc = cbi_err(err, rc, "unable to write '%s': %s", idx_path, cbi_errtext(rc));
		goto end;
	}
	if ((rc = cbi_image_writer_seal(st.img, st.changed, it.digest))) {
		rc = cbi_err(err, rc, "unable to write '%s': %s", img_path, cbi_errtext(rc));
		goto end;
	}
	/* Commit: the image first, then the index. A point exists only when its
	 * index does, so a crash between the two renames leaves an orphan image
	 * that nothing takes for a point. */
	if ((rc = cbi_image_writer_commit(st.img, err)))
		goto end;
	st.img = NULL;
	/* The image's rename must be durable before the index's: otherwise a
	 * power loss could keep the index (the point) without its image. */
	if ((rc = cbi_fsync_dir(o->dest))) {
		cbi_sfile_remove(img_path);
		rc = cbi_err(err, rc, "unable to sync directory '%s': %s", o->dest, cbi_errtext(rc));
		goto end;
	}
	if ((rc = cbi_index_writer_commit(st.idx, err))) {
		cbi_sfile_remove(img_path);
		goto end;
	}
	st.idx = NULL;
	if ((rc = cbi_fsync_dir(o->dest))) {
		rc = cbi_err(err, rc, "unable to sync directory '%s': %s", o->dest, cbi_errtext(rc));
		goto end;
	}

	if (!o->no_state) {
		cbi_error se;
		if (cbi_state_save(state_dir, lock_key(h.host, h.source_id, h.job), idx_path, encrypted ? &keys : NULL,
				   pw, (size_t)pwlen, &se))
			append_warning(r, se.msg);
	}

	memset(&r->point, 0, sizeof r->point);
	cbi_point_from_hdr(&r->point, &h);
	cbi_strlcpy(r->point.file, img_path, sizeof r->point.file);
	cbi_strlcpy(r->point.index_file, idx_path, sizeof r->point.index_file);
	memcpy(r->point.index_digest, it.digest, 32);
	r->point.changed_blocks = st.changed;
	r->point.zero_blocks = st.zero;
	r->point.stored_blocks = st.stored;
	r->point.stored_bytes = it.image_size;
	r->point.index_bytes = it.file_size;
	r->point.has_image = 1;
	r->blocks_total = h.n_blocks;
	r->blocks_read = (ps.bytes_read + bs - 1) / bs;
	r->blocks_changed = st.changed;
	r->blocks_zero = st.zero;
	r->blocks_unused = fsmap ? h.n_blocks - fsmap->used_blocks : 0;
	r->blocks_stored = st.stored;
	r->bytes_read = ps.bytes_read;
	r->bytes_written = it.image_size + it.file_size;
end:
	if (rc) { /* a failed or interrupted run: what it read and wrote before it stopped */
		r->bytes_read = ps.bytes_read;
		r->bytes_written = cbi_image_writer_written(st.img) + cbi_index_writer_written(st.idx);
	}
	cbi_image_writer_abort(st.img);
	cbi_index_writer_abort(st.idx);
	if (rc && r->key_file_new) {
		/* a new chain's key file without any point of the chain */
		unlink(r->key_file);
		r->key_file[0] = 0;
		r->key_file_new = 0;
	}
	cbi_keys_wipe(&keys);
	if (pw)
		OPENSSL_cleanse(pw, CBI_PASS_MAX);
	free(pw);
	OPENSSL_cleanse(rec_key, sizeof rec_key);
	OPENSSL_cleanse(&hs, sizeof hs);
	if (run_id && cbi_catalog_run_end(o->dest, run_id, rc,
					  rc ? (err && err->msg[0] ? err->msg : cbi_errtext(rc)) : r->warning,
					  r, &ce))
		append_warning(r, ce.msg);
	cbi_index_close(parent);
	cbi_source_close(src);
	cbi_fsmap_free(fsmap);
	free(pts);
	cbi_job_unlock(&lock);
	r->seconds = cbi_now() - t0;
	return rc;
}
