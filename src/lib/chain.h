/* chain.h - reading points and linking them into chains.
 * Points are found by scanning file contents, never by file names: a chain
 * stays valid when its files are moved or renamed (format/SPEC.md). */
#ifndef CBI_CHAIN_H
#define CBI_CHAIN_H

#include "format.h"

#include "index.h"

/* Read header and trailer of one .cbx or .cbi file into p (the fields the
 * file carries; partner fields are left as they are). kind receives
 * CBI_KIND_INDEX or CBI_KIND_IMAGE. Structural checks only, no digest. The
 * file is opened once. */
int cbi_point_read_file(const char *path, cbi_point *p, int *kind, cbi_error *err) CBI_WUR;

/* Same; nseg (if non-NULL) receives the number of segments read (1: one
 * file). On failure *kind is still what the file's header says (0 when it
 * is no valid header) and p holds the header's fields then: whose damaged
 * file it is. */
int cbi_point_read(const char *path, cbi_point *p, int *kind, uint32_t *nseg, cbi_error *err) CBI_WUR;

/* The format version in the header of the index file index_path (3: an
 * index of runs), or 0 when it cannot be read or is not an index header.
 * Not part of what a scan or the catalog gives (cbi_point.index_version
 * stays 0 there): cbi_point_info() alone fills it. */
uint32_t cbi_point_index_version(const char *index_path);

/* What an open index says, into p (its index_file is the index's path). */
void cbi_point_from_index(cbi_point *p, const cbi_index *x);

/* What pairing an index with its image needs to know of an image file. */
typedef struct cbi_image_ref {
	uint8_t point_id[16];
	uint8_t index_digest[32]; /* of the index the image belongs to */
	uint64_t size;            /* the image's size (its stored_bytes) */
	const char *path;
	int merged;               /* a merged image (header flag MERGED): then its links */
	uint8_t parent_id[16];    /* the point's effective parent, all zero: a synthetic full */
	uint8_t parent_digest[32];
} cbi_image_ref;

/* Make points of what a directory holds: pts[0..*n) are index files as read
 * by cbi_point_read_file(), imgs[0..ni) its image files. Exact duplicates of
 * an index (same point id and index digest) count once (the smallest
 * index_file path is kept); each index is paired with the image of the same
 * point id and index digest that covers the most (a merged image whose
 * parent is among pts, lowest first seq first; then the smallest path),
 * which sets file, stored_bytes and has_image, and for a merged image
 * merged, first_seq and the effective parent_id and parent_digest; the result is sorted by host, job, source,
 * chain, seq. *n may shrink; pts keeps its allocation. 0 or -ENOMEM. */
int cbi_chain_pair(cbi_point *pts, size_t *n, const cbi_image_ref *imgs, size_t ni,
		   cbi_error *err) CBI_WUR;

/* The lowest seq whose blocks p's image holds: 0 for a full, the parent's
 * seq + 1 for a merged point, else p's seq. */
uint32_t cbi_point_first_seq(const cbi_point *p);

/* Does p name a parent: an incremental that is not a synthetic full (a
 * merged point whose image names none)? */
int cbi_point_has_parent(const cbi_point *p);

/* Set pts[i].broken for every point whose parent links (the effective ones
 * of merged points) do not lead, among pts, to a full or synthetic full.
 * 0 or -ENOMEM. */
int cbi_chain_mark_broken(cbi_point *pts, size_t n);

/* Follow parent links from pts[tip] down to the full (or a synthetic full).
 * On success *out holds indexes into pts, out[s] being the point whose image
 * holds the blocks of seq s (length pts[tip].seq+1): the point of seq s, or
 * the merged point that replaced it.
 * -CBI_ENOPARENT (with the missing id in err) when a link is missing. */
int cbi_chain_resolve(const cbi_point *pts, size_t n, size_t tip, size_t **out,
		      cbi_error *err) CBI_WUR;

/* Index into pts of the point whose point_id is id, or -1. */
long cbi_chain_find_id(const cbi_point *pts, size_t n, const uint8_t id[16]);

/* Copy the header's fields into p (the other fields are left as they are). */
void cbi_point_from_hdr(cbi_point *p, const cbi_hdr *h);

/* File name (no directory) for a point's file: ext is "cbi" or "cbx". */
void cbi_point_filename(const cbi_hdr *h, const char *ext, char *out, size_t outsz);

/* The directory scan (cbi_chain_scan(), cbi_chain_is_point_name()) is in
 * dest.h; id formatting (cbi_id_hex()) in util. */
#include "dest.h"

#endif
