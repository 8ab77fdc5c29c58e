/* elsewhere.c - points whose earlier points are elsewhere (an outbox):
 * cbimg.h, cbi_list_mark_elsewhere(); the rule is in cbimg-list(1) and
 * README.md ("Outboxes"). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "elsewhere.h"
#include "job.h"
#include "state.h"
#include "util.h"

/* The point of pts with this id and index digest in chain, or -1. */
static long find_point(const cbi_point *pts, size_t n, const uint8_t chain[16], const uint8_t id[16],
		       const uint8_t digest[32])
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(pts[i].point_id, id, 16) && !memcmp(pts[i].index_digest, digest, 32) &&
		    !memcmp(pts[i].chain_id, chain, 16))
			return (long)i;
	return -1;
}

size_t cbi_elsewhere_walk(cbi_point *pts, size_t n, const cbi_point *tip, const uint8_t (*made)[16], size_t nmade)
{
	size_t *walk = malloc((n ? n : 1) * sizeof *walk), nw = 0;
	if (!walk)
		return 0;
	const uint8_t *id = tip->point_id, *digest = tip->index_digest;
	uint32_t below = UINT32_MAX; /* seqs fall along the walk (a cycle cannot) */
	long cur = find_point(pts, n, tip->chain_id, id, digest);
	if (cur < 0) { /* the state is ahead of DEST: start at its parent */
		if (!cbi_point_has_parent(tip)) {
			free(walk);
			return 0;
		}
		id = tip->parent_id;
		digest = tip->parent_digest;
		below = tip->seq;
		cur = find_point(pts, n, tip->chain_id, id, digest);
	}
	while (cur >= 0 && pts[cur].seq < below && nw < n) {
		const cbi_point *p = &pts[cur];
		walk[nw++] = (size_t)cur;
		if (!cbi_point_has_parent(p)) { /* the chain is whole here */
			free(walk);
			return 0;
		}
		below = p->seq;
		id = p->parent_id;
		digest = p->parent_digest;
		cur = find_point(pts, n, tip->chain_id, id, digest);
	}
	if (cur >= 0) { /* a link back up: forged, not an outbox */
		free(walk);
		return 0;
	}
	/* the link leaves DEST at point id: a point made into DEST is missing,
	 * not elsewhere */
	for (size_t k = 0; k < nmade; k++)
		if (!memcmp(made[k], id, 16)) {
			free(walk);
			return 0;
		}
	for (size_t k = 0; k < nw; k++)
		pts[walk[k]].parent_elsewhere = 1;
	free(walk);
	return nw;
}

int cbi_list_mark_elsewhere(const char *dest, const char *state_dir, cbi_point *pts, size_t n, cbi_error *err)
{
	size_t nbroken = 0;
	for (size_t i = 0; i < n; i++)
		nbroken += pts[i].broken != 0;
	if (!nbroken)
		return 0;
	if (!state_dir || !*state_dir)
		state_dir = CBI_DEFAULT_STATE_DIR;
	/* the points backups made into DEST (its run log; none in an outbox,
	 * which keeps no catalog) */
	cbi_run *runs = NULL;
	size_t nruns = 0;
	int rc = cbi_log(dest, NULL, &runs, &nruns, err);
	if (rc)
		return rc;
	uint8_t (*made)[16] = malloc((nruns ? nruns : 1) * sizeof *made);
	uint64_t *done = malloc(n * sizeof *done);
	size_t nmade = 0, ndone = 0;
	if (!made || !done) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	for (size_t r = 0; r < nruns; r++)
		if (runs[r].kind == CBI_RUN_BACKUP && runs[r].type)
			memcpy(made[nmade++], runs[r].point_id, 16);
	/* one walk per job that has a broken point */
	for (size_t i = 0; i < n; i++) {
		if (!pts[i].broken)
			continue;
		uint64_t key = cbi_state_key(pts[i].host, pts[i].source_id, pts[i].job);
		int seen = 0;
		for (size_t k = 0; k < ndone && !seen; k++)
			seen = done[k] == key;
		if (seen)
			continue;
		done[ndone++] = key;
		cbi_point tip;
		int found = 0;
		/* an unreadable or damaged state vouches for nothing */
		if (cbi_state_load(state_dir, key, &tip, &found, NULL) || !found)
			continue;
		cbi_elsewhere_walk(pts, n, &tip, (const uint8_t(*)[16])made, nmade);
	}
end:
	free(made);
	free(done);
	free(runs);
	return rc;
}
