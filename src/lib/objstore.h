/* objstore.h - the parts of objstore.c (the s3:// DEST; cbimg.h has its
 * API) that tests reach directly. */
#ifndef CBI_OBJSTORE_H
#define CBI_OBJSTORE_H

#include <stddef.h>

/* A point file name "HOST_SRC_JOB_YYYYmmddTHHMMSSZ_(full|incr)SEQ_ID8.EXT"
 * (EXT three letters): out gets "TIMESTAMP SEQ" (seq zero-padded to 10
 * digits), which sorts as the points were made, and *jpl (optional) the
 * length of "HOST_SRC_JOB_"; out is "" when name is not such a name. */
void cbi_objstore_name_order(const char *name, char *out, size_t sz, size_t *jpl);

#endif
