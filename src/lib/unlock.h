/* unlock.h - unlocking an encrypted chain: finding its key files (in DEST
 * and the local state's copy), asking for the passphrase once and
 * unwrapping the chain's data key. The one place in the library that
 * unlocks; the chain reader (chainrd.h) calls it once per chain and
 * checks the headers against the keys. */
#ifndef CBI_UNLOCK_H
#define CBI_UNLOCK_H

#include <stddef.h>

#include "crypto.h"
#include "format.h"

struct cbi_dest;

/* Unlock the chain of header h: find the local state's copy of its key file
 * (state_dir may be NULL) and its key files in the scan d (made with
 * CBI_DEST_KEYS), ask pass for the passphrase once and unwrap the first
 * that opens (the state's copy first: it is the cheap one; key files
 * carrying h's key id before the others, whose mismatch the caller's header
 * check then reports as damage). used (if non-NULL) receives the path of
 * that key file; pw (if non-NULL, CBI_PASS_MAX bytes) the passphrase and
 * *pwlen its length, for the caller to wipe. -CBI_ENOKEY when no key file
 * exists, -CBI_EDAMAGED when the only ones are damaged, -CBI_EPASS when no
 * passphrase was given or none opened. */
int cbi_unlock(const struct cbi_dest *d, const char *state_dir, const cbi_hdr *h, cbi_pass_fn pass, void *ud,
	       cbi_keys *out, char *used, size_t usedsz, char *pw, int *pwlen, cbi_error *err) CBI_WUR;

/* The same for the key files of directory dir (scanned here; a missing
 * directory holds none). A convenience for tests and tools: the library's
 * readers unlock through the chain reader (chainrd.h). */
int cbi_chain_unlock(const char *dir, const char *state_dir, const cbi_hdr *h, cbi_pass_fn pass, void *ud,
		     cbi_keys *out, char *used, size_t usedsz, char *pw, int *pwlen, cbi_error *err) CBI_WUR;

/* Key files in dir (names ending in .cbk, not starting with '.') of chain
 * chain_id: up to max paths into paths[], their number in *n. 0 or -errno
 * when dir cannot be read (a missing dir is 0 files). */
int cbi_keyfile_find(const char *dir, const uint8_t chain_id[16], char (*paths)[4096], size_t max,
		     size_t *n) CBI_WUR;

#endif
