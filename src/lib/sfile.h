/* sfile.h - sealed files: the crash-safe writer and checked reader that
 * image and index files are built on (format/SPEC.md, "File life cycle"
 * and "Segments").
 *
 * A sealed file is written under a temporary name in its final directory,
 * SHA-256 is computed over every byte as it is appended, and the 128-byte
 * trailer carries that digest in its last 32 bytes. Only a file whose
 * trailer has been written, fsynced and renamed to its final name counts.
 *
 * A sealed file may be stored as segments of a fixed size S (for file
 * systems such as FAT that limit the size of a file): NAME holds the
 * logical bytes [0, S), NAME.001 the bytes [S, 2S), NAME.002 ... The
 * header's segment_mib field records S; the reader joins the segments and
 * everything above this layer sees one logical file. */
#ifndef CBI_SFILE_H
#define CBI_SFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "cbimg.h"

/* Segment sizes are whole MiB (the header records MiB). */
#define CBI_SEG_UNIT (1ull << 20)

typedef struct cbi_sfw cbi_sfw;

/* Create a temporary file that will become final_path on commit.
 * Returns 0 or -errno; fills err. */
int cbi_sfw_create(const char *final_path, cbi_sfw **out, cbi_error *err) CBI_WUR;

/* Same, with the temporary name ".TAG.BASENAME.tmp": a caller that holds a
 * lock can then recognise and remove its own leftovers of a killed run. */
int cbi_sfw_create_tagged(const char *final_path, const char *tag, cbi_sfw **out,
			  cbi_error *err) CBI_WUR;

/* Same, stored as segments of seg_size bytes (a multiple of CBI_SEG_UNIT;
 * 0: one file). The caller writes a header whose segment_mib is
 * seg_size / CBI_SEG_UNIT. Segment k >= 1 is created when its first byte is
 * written, under the temporary name of "final_path.NNN" (same decoration as
 * the first segment); a full segment is fsynced and closed before the next
 * is opened. -EINVAL for a seg_size that is not a whole number of MiB. */
int cbi_sfw_create_split(const char *final_path, const char *tag, uint64_t seg_size, cbi_sfw **out,
			 cbi_error *err) CBI_WUR;

/* Where a sealed file's bytes go instead of a file (an S3 upload,
 * s3up.h): called with every byte of the file exactly once, in order, in
 * pieces of up to 1 MiB (the digest included, last). 0, or a negative
 * code that fails the write (the writer can then only be aborted). */
typedef int (*cbi_sfw_sink_fn)(void *ud, const void *buf, size_t len);

/* A writer whose bytes go to fn instead of a file: nothing is created in
 * final_path's directory (final_path only names the file). No segments;
 * seal() hands the last bytes to fn (there is nothing to fsync), commit()
 * and abort() only free the writer: completing or abandoning what fn
 * received is the caller's. */
int cbi_sfw_create_sink(const char *final_path, cbi_sfw_sink_fn fn, void *ud, cbi_sfw **out,
			cbi_error *err) CBI_WUR;

/* Make the file's digest HMAC-SHA256 under key (32 bytes) instead of
 * SHA-256: for the files of an encrypted chain. Only before the first
 * write; 0, -EINVAL after it, or -EIO. */
int cbi_sfw_set_mac(cbi_sfw *w, const uint8_t key[32]) CBI_WUR;

/* Compute the digest on a thread of its own (dgpipe.h) from now on: each
 * buffer is hashed while this thread writes it out and fills the next; the
 * file written is the same. Any time before cbi_sfw_seal(), once; after
 * cbi_sfw_set_mac(). For a writer that copies more than it computes (a
 * merged image). 0, or -ENOMEM or a thread's error (the writer then goes
 * on hashing in the caller's thread: nothing is lost). */
int cbi_sfw_hash_async(cbi_sfw *w) CBI_WUR;

/* Start writing each buffer back to the disk as soon as it is written
 * (sync_file_range(SYNC_FILE_RANGE_WRITE), advisory), so that the fsync of
 * cbi_sfw_seal() finds little left to write: the write-out of a large file
 * overlaps its making instead of following it (bench/RESULTS.md, prune). */
void cbi_sfw_write_behind(cbi_sfw *w);

/* For a writer that copies what it writes (a merged image): this thread
 * writes each buffer through the page cache (with write-behind) and a
 * thread of its own computes the digest by reading the file back, up to
 * 128 MiB behind; the pages it has read are dropped from the page cache
 * once written back, and cbi_sfw_seal() flushes the data while the digest
 * catches up (bench/RESULTS.md, prune, session 9). The file written is the
 * same byte for byte, and the digest covers what the file holds. A write
 * error surfaces at the next cbi_sfw_write() that fills a buffer, a read
 * error of the digest at seal. Once, before anything is hashed, after
 * cbi_sfw_set_mac(); for a sink, as cbi_sfw_hash_async(). 0, -EINVAL,
 * -ENOMEM or a thread's error (nothing changed then). */
int cbi_sfw_copy_mode(cbi_sfw *w) CBI_WUR;

/* In copy mode, the first error of the thread that reads the file back
 * (0: none so far, or not in copy mode), also after the writer failed: a
 * caller can tell a file system that does not read back what was just
 * written (fusefat failed such a read with EPERM, bench/RESULTS.md) from a
 * failing write, and write the file again without copy mode. */
int cbi_sfw_readback_error(const cbi_sfw *w);

/* Copy mode's window, for tests (before cbi_sfw_copy_mode()): the writer
 * waits while it is more than lag bytes ahead of the digest (0: never
 * waits), and drops pages drop_step bytes at a time (0: never drops), at
 * least drop_behind bytes behind what it has written, with an fdatasync
 * once flush_step bytes were written since the last. */
void cbi_sfw_copy_window(cbi_sfw *w, uint64_t lag, uint64_t drop_step, uint64_t drop_behind, uint64_t flush_step);

/* Append len bytes (buffered). 0 or -errno (-ENOSPC when full). */
int cbi_sfw_write(cbi_sfw *w, const void *buf, size_t len) CBI_WUR;

/* Logical offset of the next byte to be appended. */
uint64_t cbi_sfw_offset(const cbi_sfw *w);

/* Number of segments written so far (1 for an unsplit file). */
uint32_t cbi_sfw_segments(const cbi_sfw *w);

/* Append the first 96 bytes of the trailer, then the SHA-256 of everything
 * before the digest field, flush and fsync. digest receives the SHA-256. */
int cbi_sfw_seal(cbi_sfw *w, const uint8_t *trailer96, uint8_t digest[32]) CBI_WUR;

/* Rename the sealed temporary file to its final name (the caller fsyncs the
 * directory after committing all files of a point). A split file's
 * segments NAME.001 ... are renamed first and NAME, the only name a
 * directory scan takes, last. Frees w on success; on failure w stays valid
 * and cbi_sfw_abort() removes what was written, renamed segments too. */
int cbi_sfw_commit(cbi_sfw *w, cbi_error *err) CBI_WUR;

/* Close and unlink the temporary file(s); NULL-safe. */
void cbi_sfw_abort(cbi_sfw *w);

const char *cbi_sfw_final_path(const cbi_sfw *w);

/* Name of segment k of the file at path: path itself for k = 0, else
 * "path.NNN" (k in decimal, at least 3 digits). -ENAMETOOLONG if it does
 * not fit. */
int cbi_sfile_segment_name(const char *path, uint32_t k, char *out, size_t outsz) CBI_WUR;

/* The inverse, for a name without directory: is name "BASE.NNN" (NNN at
 * least 3 and at most 10 decimal digits)? Then 1, with the length of BASE
 * in *base_len and NNN in *k (0 and values above UINT32_MAX included: such
 * names are never segments of a file); else 0. Whether BASE is a sealed
 * file's name is the caller's question (dest.h). */
int cbi_sfile_segment_parse(const char *name, size_t *base_len, uint64_t *k);

/* Unlink a committed sealed file and its segments path.001, path.002, ...
 * (up to the first one that does not exist). */
void cbi_sfile_remove(const char *path);

struct cbi_sfr;

/* ---- read back-ends: a file whose bytes are elsewhere ----
 * A sealed file may be a local stand-in for an object on S3 (objstore.c,
 * s3rd.h): a regular file of the object's size whose bytes the reader takes
 * from the object by ranged reads. One opener per process is asked, at each
 * cbi_sfr_open(), whether the regular file it opened (by device and inode)
 * is such a stand-in. Local files never see it beyond that question. */
typedef struct cbi_sfr_ops {
	/* len bytes at off (within the size) into buf: 0 or a negative code */
	int (*pread)(void *h, void *buf, size_t len, uint64_t off);
	/* [off, off+len) will be read soon (a hint: may be ignored) */
	void (*will_need)(void *h, uint64_t off, uint64_t len);
	/* a pass over every byte in order starts (on = 1) or ends (0) */
	void (*whole)(void *h, int on);
	void (*close)(void *h);
} cbi_sfr_ops;

/* Called with the opened file's descriptor and stat: 1 with *ops and *h
 * when it is a stand-in, 0 when it is an ordinary file, or a negative code
 * (err filled). */
typedef int (*cbi_sfr_opener)(void *ud, int fd, const struct stat *st, const cbi_sfr_ops **ops, void **h,
			      cbi_error *err);

/* Install the process's opener (NULL: none); not while readers are open. */
void cbi_sfr_set_opener(cbi_sfr_opener fn, void *ud);

/* Hints: the bytes [off, off+len) will be read soon (a stand-in's back-end
 * fetches them; a local file of one segment gets posix_fadvise WILLNEED:
 * the kernel starts reading it now; nothing is returned or promised); a
 * whole pass starts/ends (stand-ins only). */
void cbi_sfr_will_need(const struct cbi_sfr *r, uint64_t off, uint64_t len);
void cbi_sfr_whole(const struct cbi_sfr *r, int on);

/* ---- reader ---- */
struct sfr_segs;

typedef struct cbi_sfr {
	int fd;               /* the first (or only) segment */
	uint64_t size;        /* logical size: all segments together */
	char path[4096];      /* the first segment, the name a scan sees */
	uint32_t nseg;        /* segments found: 1 for an unsplit file */
	uint64_t seg_size;    /* from the header; 0: one file (or a joined copy) */
	struct sfr_segs *segs; /* NULL when nseg = 1 */
	const struct cbi_sfr_ops *ops; /* a stand-in's back-end (NULL: a local file) */
	void *rh;             /* its handle */
} cbi_sfr;

/* Open path read-only; fails with -CBI_ETRUNCATED if it is too short to
 * hold a header and a trailer. When the file's header (if it is a valid
 * one) says the file is split, its following segments are looked up by
 * name in the same directory and checked: every segment but the last must
 * be exactly seg_size bytes, and the logical file must end with a trailer
 * magic. A missing segment fails with -CBI_ETRUNCATED and a message that
 * names it. A first segment larger than seg_size is taken as a joined copy
 * (the segments concatenated into one file) and read alone. */
int cbi_sfr_open(const char *path, cbi_sfr **out, cbi_error *err) CBI_WUR;

/* Read len bytes at logical offset off, across segments. 0, -CBI_ETRUNCATED
 * beyond the end, or -errno. */
int cbi_sfr_pread(const cbi_sfr *r, void *buf, size_t len, uint64_t off) CBI_WUR;

/* Recompute the SHA-256 over the logical bytes [0, size-32) and compare
 * with the last 32. Returns 0, -CBI_EDAMAGED on mismatch (the digest cannot
 * tell where, nor in which segment), -ECANCELED when fn asked to stop, or
 * an I/O error. */
int cbi_sfr_check_digest(const cbi_sfr *r, cbi_progress_fn fn, void *ud) CBI_WUR;

/* Same for a file whose digest is HMAC-SHA256 under mac_key (NULL:
 * SHA-256). A mismatch means damage or tampering. */
int cbi_sfr_check_digest_mac(const cbi_sfr *r, const uint8_t *mac_key, cbi_progress_fn fn, void *ud) CBI_WUR;

void cbi_sfr_close(cbi_sfr *r);

/* Copy the logical content of the sealed file at path (all its segments)
 * to the open file out_fd from offset 0, as one file (a joined copy, which
 * cbi_sfr_open() accepts). 0 or a negative error; fills err. */
int cbi_sfile_copy_joined(const char *path, int out_fd, cbi_error *err) CBI_WUR;

#endif
