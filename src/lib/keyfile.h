/* keyfile.h - the key file (.cbk) of an encrypted chain (format/SPEC.md,
 * "Key files"): the chain's data key, wrapped with AES-256-GCM under a key
 * that scrypt derives from the passphrase. It lies beside the chain's
 * files (found by content, like them) and in the local state; a passphrase
 * change rewrites these 256 bytes and nothing else. */
#ifndef CBI_KEYFILE_H
#define CBI_KEYFILE_H

#include "crypto.h"
#include "format.h"

#define CBI_KF_SIZE 256u
#define CBI_MAGIC_KEY "CBIMGKEY"
#define CBI_KDF_SCRYPT 1u

/* The scrypt costs writers make and readers accept. */
#define CBI_KDF_MIN_LOG2_N 10u
#define CBI_KDF_MAX_LOG2_N 24u
#define CBI_KDF_MAX_R 64u
#define CBI_KDF_MAX_P 64u

typedef struct cbi_keyfile {
	uint32_t version;
	uint8_t chain_id[16];
	uint8_t key_id[16];
	uint32_t kdf;            /* CBI_KDF_SCRYPT */
	uint32_t log2_n, r, p;
	uint8_t salt[32];
	uint8_t nonce[12];
	uint8_t wrapped[CBI_KEY_LEN];
	uint8_t tag[CBI_TAG_LEN];
} cbi_keyfile;

/* The key file's fields (format.h, "layouts"). */
extern const cbi_layout cbi_kf_layout;

void cbi_keyfile_encode(const cbi_keyfile *kf, uint8_t buf[CBI_KF_SIZE]);
/* -CBI_EFORMAT (not a key file, or a later version) or -CBI_EDAMAGED
 * (checksum or field values). */
int cbi_keyfile_decode(const uint8_t buf[CBI_KF_SIZE], cbi_keyfile *kf) CBI_WUR;

/* Read / write a key file. Writing goes through a temporary name, fsync,
 * rename and a directory fsync. 0 or a negative code; fills err. */
int cbi_keyfile_read(const char *path, cbi_keyfile *kf, cbi_error *err) CBI_WUR;
int cbi_keyfile_write(const char *path, const cbi_keyfile *kf, cbi_error *err) CBI_WUR;

/* Wrap k's data key under the passphrase with fresh salt and nonce and the
 * given scrypt cost (zeros: defaults). 0, -CBI_EUSAGE for a cost out of
 * range, or another negative code. */
int cbi_keyfile_wrap(cbi_keyfile *kf, const cbi_keys *k, const char *pass, size_t passlen,
		     const cbi_kdf_params *kdf) CBI_WUR;

/* Unwrap into out (every key derived). -CBI_EPASS when the passphrase is
 * wrong (or the file was altered), -ENOMEM when its scrypt cost is too
 * high to run here. */
int cbi_keyfile_unwrap(const cbi_keyfile *kf, const char *pass, size_t passlen, cbi_keys *out) CBI_WUR;

/* File name (no directory) of the key file of the chain whose header is h. */
void cbi_keyfile_name(const cbi_hdr *h, char *out, size_t outsz);

/* scrypt cost of the local state's copy of a key file (format/SPEC.md,
 * "Key files"): that copy stays on the machine that holds the source disk,
 * and unlocking it must not cost an incremental more than milliseconds. */
#define CBI_STATE_KDF_LOG2_N 12u
#define CBI_STATE_KDF_R 8u
#define CBI_STATE_KDF_P 1u

/* Moved out, still reachable from here: the header MAC (hdrmac.h), the
 * job's layout, cbi_keyfile_state_path() (job.h), unlocking a chain and
 * finding its key files, cbi_chain_unlock() and cbi_keyfile_find()
 * (unlock.h). */
#include "hdrmac.h"
#include "job.h"
#include "unlock.h"

#endif
