/* prune.h - what backup needs of prune (cbimg.h has cbi_prune itself). */
#ifndef CBI_PRUNE_H
#define CBI_PRUNE_H

#include <stddef.h>
#include <stdint.h>

/* Finish a prune of job key (name job, for the note) in dest that was
 * interrupted (killed) before it removed all it meant to (format/SPEC.md,
 * "Order of the changes"): its temporary files, images that a merged image
 * made redundant, and points a merged image replaced on which nothing
 * builds. The caller holds the job's lock (cbi_job_lock). Returns 1 when
 * something was finished (note: what, one line), 0 when there was nothing
 * to do, or a negative code (note: why); the chain's points restore in every
 * case. */
int cbi_prune_finish_interrupted(const char *dest, uint64_t key, const char *job, char *note, size_t notesz);

#endif
