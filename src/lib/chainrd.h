/* chainrd.h - the chain reader: opening a chain and deciding whether to
 * trust it, in one place for restore, verify, info, backup's parent
 * lookup and (later) merge and mount.
 *
 * A cbi_chain holds the points of one directory (a scan, dest.h), the chain
 * chosen in it (the tip and its ancestors, oldest to newest), the tip's
 * index, the images of the chain opened lazily, and the unlocked keys of
 * every encrypted chain it met (each chain is unlocked once, its failure
 * remembered with its message). The verdict is made here: ids and parent
 * links (cbi_chain_resolve()), header key ids and MACs, the tip's index
 * digest, whether an image fits the chain, and the rollback check against
 * the local state. Nothing else in the library sets keys on an index or
 * image (cbi_index_set_keys(), cbi_image_set_keys()) or unlocks a chain
 * (unlock.h): the library's readers go through here.
 *
 * Not thread-safe: one thread calls these; images obtained here may be read
 * by many threads at once (image.h). */
#ifndef CBI_CHAINRD_H
#define CBI_CHAINRD_H

#include "chain.h"
#include "dest.h"
#include "image.h"
#include "index.h"
#include "util.h"

typedef struct cbi_chain_opts {
	cbi_pass_fn pass;       /* passphrase of an encrypted chain; NULL: none */
	void *pass_ud;
	const char *state_dir;  /* the local state (key file copies, rollback check);
	                         * NULL or "": CBI_DEFAULT_STATE_DIR */
	int no_state;           /* use no local state at all */
	int keep_pass;          /* keep the passphrase that unlocked the chain, for
	                         * cbi_chain_pass() (backup rewraps the key with it) */
	int *failed_at;         /* if non-NULL: the step at which an open or
	                         * cbi_chain_check() failed, CBI_CHAIN_AT_*; 0 when the
	                         * check passed. Written by each open and check: it
	                         * must stay valid until cbi_chain_close(). For a
	                         * caller that words each failure with its own
	                         * context (backup's parent) */
} cbi_chain_opts;

/* The steps of cbi_chain_check(), in order (cbi_chain_opts.failed_at). */
enum {
	CBI_CHAIN_AT_OPEN = 1,  /* reading the directory or an index file */
	CBI_CHAIN_AT_UNLOCK,    /* unlocking the chain (unlock.h: its codes and texts) */
	CBI_CHAIN_AT_HEADER,    /* an index header against the keys: -CBI_EAUTH */
	CBI_CHAIN_AT_DIGEST,    /* the tip's index digest */
};

typedef struct cbi_chain cbi_chain;

/* Open the chain of the point that FILE (any .cbi or .cbx of it) belongs to
 * and check it (cbi_chain_check()): everything taken from the tip's index
 * is then authentic. -CBI_ENOPARENT when the point's index is not in FILE's
 * directory or a parent is missing; the other codes of cbi_chain_check(). */
int cbi_chain_open(const char *file, const cbi_chain_opts *o, cbi_chain **out, cbi_error *err) CBI_WUR;

/* Open the newest point of job (host, source_id, job) in directory dest
 * (the newest by creation time, then seq) and check it. -CBI_ENOCHAIN when
 * dest holds no point of the job. */
int cbi_chain_open_job(const char *dest, const char *host, const char *source_id, const char *job,
		       const cbi_chain_opts *o, cbi_chain **out, cbi_error *err) CBI_WUR;

/* Open only the point of one index file, whose ancestors are elsewhere
 * (an outbox continued from the local state: the parent index is the
 * state's copy), with the key files of directory key_dir (and of the local
 * state), and check it: its header against the keys, its digest. The
 * chain has one known point (cbi_chain_point() of other seqs is NULL; no
 * image is opened). No directory but key_dir is scanned. */
int cbi_chain_open_tip(const char *index_file, const char *key_dir, const cbi_chain_opts *o,
		       cbi_chain **out, cbi_error *err) CBI_WUR;

/* Open directory dir (every point in it, no chain chosen yet): verify. */
int cbi_chain_open_dir(const char *dir, const cbi_chain_opts *o, cbi_chain **out, cbi_error *err) CBI_WUR;

void cbi_chain_close(cbi_chain *c);

/* The scan of the directory (NULL for cbi_chain_open_tip()). */
const cbi_dest *cbi_chain_dest(const cbi_chain *c);

/* Every complete point of the directory, sorted as cbi_chain_scan() sorts. */
const cbi_point *cbi_chain_points(const cbi_chain *c, size_t *n);

/* Index into cbi_chain_points() of the point with me's point id and index
 * digest, or -1. */
long cbi_chain_find(const cbi_chain *c, const cbi_point *me);

/* Choose the chain that ends at point i of cbi_chain_points(): follow the
 * parent links (cbi_chain_resolve()). Images opened for an earlier choice
 * are closed; keys stay. Nothing is checked against keys or digests: see
 * cbi_chain_check(). */
int cbi_chain_select(cbi_chain *c, size_t i, cbi_error *err) CBI_WUR;

/* The strict verdict on the chosen chain: the tip's index opened; for an
 * encrypted chain, the chain unlocked and the header of every index of the
 * chain checked against its keys (each names its parent, so the parent
 * links are then authentic, -CBI_EAUTH if not); the tip's index digest
 * checked (-CBI_EDAMAGED: damaged, or altered when encrypted). */
int cbi_chain_check(cbi_chain *c, cbi_error *err) CBI_WUR;

/* Length of the chosen chain (the tip's seq + 1; 0 before a choice). */
uint32_t cbi_chain_len(const cbi_chain *c);

/* The point of seq s of the chosen chain, NULL if unknown. */
const cbi_point *cbi_chain_point(const cbi_chain *c, uint32_t s);

/* The tip's index, after cbi_chain_check(): owned by c. */
cbi_index *cbi_chain_tip_index(const cbi_chain *c);

/* The image of seq s of the chosen chain, opened on first use, checked
 * against the keys (encrypted) and the chain (chain id, seq, block size,
 * source size). A failure is remembered with its message: the next call for
 * s fails at once with the same code and text. -CBI_ENOPARENT when the image
 * is missing, a damage code when it is there but damaged. Owned by c. */
int cbi_chain_image(cbi_chain *c, uint32_t s, cbi_image **out, cbi_error *err) CBI_WUR;

/* The keys of the chain of header h (NULL for a plain h), unlocked on first
 * use through the key files of the directory and the local state's copy,
 * once per chain: a failure is remembered with its message (unlock.h for
 * the codes). *k stays valid until cbi_chain_close(). */
int cbi_chain_keys(cbi_chain *c, const cbi_hdr *h, const cbi_keys **k, cbi_error *err) CBI_WUR;

/* Check the header of an index of an encrypted chain against the keys of
 * its chain (key id, header MAC) and give the reader its keys; for an image,
 * against the keys of the chain of index x (whatever its own header says);
 * no-op for a plain index x. The unlock's code when the chain cannot be
 * unlocked, -CBI_EAUTH with "'FILE': REASON" when the header fails. */
int cbi_chain_auth_index(cbi_chain *c, cbi_index *x, cbi_error *err) CBI_WUR;
int cbi_chain_auth_image(cbi_chain *c, const cbi_index *x, cbi_image *m, cbi_error *err) CBI_WUR;

/* Rule I8: does image m, paired with point p, carry p's index header
 * (cbi_hdr_pair_problem())? x: p's index if open, else NULL (its header is
 * read from p->index_file). 0, -CBI_EDAMAGED with "'IMAGE': header does not
 * match its index file ..." naming the field, or the index's open error. */
int cbi_chain_image_fits(const cbi_point *p, const cbi_image *m, const cbi_index *x, cbi_error *err) CBI_WUR;

/* The key file that unlocked the chosen chain ("" if none) and, with
 * keep_pass, its passphrase and length (NULL if none). */
const char *cbi_chain_key_file(const cbi_chain *c);
const char *cbi_chain_pass(const cbi_chain *c, int *len);

/* The rollback check of point p, the newest point of its chain here,
 * against the local state st[0..nst) (cbi_state_snapshot(), read before
 * the directory was scanned). -CBI_EMISMATCH when the state records
 * another point at a seq this chain has here (a fork, a point replaced), or
 * a newer point that does not continue p (its parent, or the blocks its
 * index says are unchanged since p, differ). A state that is newer and
 * continues p is no damage: the chain here is behind it (a seed disk,
 * points that went to an outbox or another disk): 0 with *behind the number
 * of seqs it is behind. *state_seq: the state's seq of the chain (0 when the
 * state does not know it). */
int cbi_chain_check_state(const cbi_chain *c, const cbi_point *p, const cbi_point *st, size_t nst,
			  uint32_t *behind, uint32_t *state_seq, cbi_error *err) CBI_WUR;

/* The files a restore of the chosen chain reads, so that its target is never
 * one of them (target.h, cbi_target_guard): every index and image file of
 * the chain with their segments, and the key file that unlocked it, each by
 * device and inode (files that cannot be stat'ed are left out: nothing
 * reads them); and the chain's directory into *dir (its path malloc'ed; dev
 * and ino zero when it cannot be stat'ed). *files is released with
 * cbi_fids_free(), dir->path with free(). 0 or -ENOMEM. */
int cbi_chain_files(const cbi_chain *c, cbi_fid **files, size_t *n, cbi_fid *dir, cbi_error *err) CBI_WUR;

#endif
