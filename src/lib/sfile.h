/* sfile.h - sealed files: the crash-safe writer and checked reader that
 * image and index files are built on (format/SPEC.md, "File life cycle").
 *
 * A sealed file is written under a temporary name in its final directory,
 * SHA-256 is computed over every byte as it is appended, and the 128-byte
 * trailer carries that digest in its last 32 bytes. Only a file whose
 * trailer has been written, fsynced and renamed to its final name counts. */
#ifndef CBI_SFILE_H
#define CBI_SFILE_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

typedef struct cbi_sfw cbi_sfw;

/* Create a temporary file that will become final_path on commit.
 * Returns 0 or -errno; fills err. */
int cbi_sfw_create(const char *final_path, cbi_sfw **out, cbi_error *err) CBI_WUR;

/* Same, with the temporary name ".TAG.BASENAME.tmp": a caller that holds a
 * lock can then recognise and remove its own leftovers of a killed run. */
int cbi_sfw_create_tagged(const char *final_path, const char *tag, cbi_sfw **out,
			  cbi_error *err) CBI_WUR;

/* Append len bytes (buffered). 0 or -errno (-ENOSPC when full). */
int cbi_sfw_write(cbi_sfw *w, const void *buf, size_t len) CBI_WUR;

/* Logical offset of the next byte to be appended. */
uint64_t cbi_sfw_offset(const cbi_sfw *w);

/* Append the first 96 bytes of the trailer, then the SHA-256 of everything
 * before the digest field, flush and fsync. digest receives the SHA-256. */
int cbi_sfw_seal(cbi_sfw *w, const uint8_t *trailer96, uint8_t digest[32]) CBI_WUR;

/* Rename the sealed temporary file to its final name (the caller fsyncs the
 * directory after committing all files of a point). Frees w on success. */
int cbi_sfw_commit(cbi_sfw *w, cbi_error *err) CBI_WUR;

/* Close and unlink the temporary file; NULL-safe. */
void cbi_sfw_abort(cbi_sfw *w);

const char *cbi_sfw_final_path(const cbi_sfw *w);

/* ---- reader ---- */
typedef struct cbi_sfr {
	int fd;
	uint64_t size;
	char path[4096];
} cbi_sfr;

/* Open path read-only; fails with -CBI_ETRUNCATED if it is too short to
 * hold a header and a trailer. */
int cbi_sfr_open(const char *path, cbi_sfr **out, cbi_error *err) CBI_WUR;
int cbi_sfr_pread(const cbi_sfr *r, void *buf, size_t len, uint64_t off) CBI_WUR;

/* Recompute the SHA-256 over [0, size-32) and compare with the last 32
 * bytes. Returns 0, -CBI_EDAMAGED on mismatch, or an I/O error. If
 * bad_off is non-NULL and the digest mismatches, it is set to -1 (the
 * digest cannot tell where). */
int cbi_sfr_check_digest(const cbi_sfr *r, cbi_progress_fn fn, void *ud) CBI_WUR;

void cbi_sfr_close(cbi_sfr *r);

#endif
