/* objview.h - the images of a restore's, verify's or mount's view of an
 * s3:// DEST read by ranged GETs (s3rd.h), not downloaded: objstore.c makes
 * the view (indexes and key files copied, images as stand-ins linked from
 * the cache) and calls these. One view per process. */
#ifndef CBI_OBJVIEW_H
#define CBI_OBJVIEW_H

#include <stddef.h>

#include "s3.h"
#include "s3rd.h"
#include "util.h"

/* Every image of objs[0..n) (keys below kp, names ending .cbi) that has a
 * stand-in dir/NAME becomes a stand-in read from the bucket (its first and
 * last ends bytes taken locally when the stand-in is larger than 2 * ends,
 * the whole file when it is not), through the sealed-file opener
 * (cbi_sfr_set_opener()). Reader settings from the environment:
 * CBIMG_S3_JOBS (parallel GETs, default 4), CBIMG_S3_CACHE_MIB (memory
 * for ranges, default 64). CBIMG_S3_TRACE=FILE appends a line "GET KEY OFF
 * LEN" per GET to FILE (tests). 0 or a negative code. */
int cbi_objview_start(const cbi_s3_cfg *cfg, const char *bucket, const char *kp, const cbi_s3_obj *objs,
		      size_t n, const char *dir, uint64_t ends, cbi_error *err) CBI_WUR;

/* The reader's figures so far (zeros without a view). */
void cbi_objview_stats(cbi_s3rd_stats *st);

/* The message of the last failed GET ("" if none). */
void cbi_objview_last_error(char *out, size_t sz);

/* Stop: the opener removed, the reader and its client freed. Only after
 * every reader of the view's files is closed. */
void cbi_objview_end(void);

#endif
