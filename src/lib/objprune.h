/* objprune.h - the parts of objprune.c (prune on an s3:// DEST; cbimg.h
 * has cbi_objstore_prune) that tests reach directly. */
#ifndef CBI_OBJPRUNE_H
#define CBI_OBJPRUNE_H

#include <stddef.h>
#include <stdint.h>

typedef struct cbi_range {
	uint64_t off, len;
} cbi_range;

/* The byte ranges of an image to fetch for the records of the blocks b with
 * need[b] != 0: table is the image's block table (count entries of 24
 * bytes, format/SPEC.md "Block table"), table_offset where it starts.
 * Each record is its 40-byte header and payload; records closer than gap
 * bytes are fetched in one range, of at most max_len bytes (a single record
 * longer than that is one range of its own). out has room for count ranges;
 * *nout receives how many, in file order. A pure function: 0, or
 * -CBI_EDAMAGED for an entry whose record lies outside [512, table_offset)
 * (entries of blocks not needed are not checked). */
int cbi_objprune_ranges(const uint8_t *table, uint64_t count, uint64_t table_offset, const uint8_t *need,
			uint64_t n_blocks, uint64_t gap, uint64_t max_len, cbi_range *out, size_t *nout);

#endif
