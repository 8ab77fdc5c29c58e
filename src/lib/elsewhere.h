/* elsewhere.h - which points of a listing continue a chain whose earlier
 * points are elsewhere (an outbox), by the local state's word (cbimg.h,
 * cbi_list_mark_elsewhere). */
#ifndef CBI_ELSEWHERE_H
#define CBI_ELSEWHERE_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

/* The rule of cbi_list_mark_elsewhere() for one job, with no files: tip is
 * the job's local state (its newest point), made[0..nmade) the point ids of
 * the backups that DEST's run log records as made into DEST. Walks from tip
 * (or, when tip is not among pts, from its parent) down the parent links
 * through pts, within tip's chain, until a link leaves pts; when one does
 * and its point id is not in made, every point of the walk gets
 * parent_elsewhere = 1. Returns the number of points marked. A pure
 * function (unit-tested). */
size_t cbi_elsewhere_walk(cbi_point *pts, size_t n, const cbi_point *tip, const uint8_t (*made)[16], size_t nmade);

#endif
