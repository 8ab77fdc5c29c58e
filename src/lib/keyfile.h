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

/* Path of the copy kept in the local state of job (host, source_id, job). */
void cbi_keyfile_state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
			    char *out, size_t outsz);

/* Key files in dir (names ending in .cbk, not starting with '.') of chain
 * chain_id: up to max paths into paths[], their number in *n. 0 or -errno
 * when dir cannot be read (a missing dir is 0 files). */
int cbi_keyfile_find(const char *dir, const uint8_t chain_id[16], char (*paths)[4096], size_t max,
		     size_t *n) CBI_WUR;

/* scrypt cost of the local state's copy of a key file (format/SPEC.md,
 * "Key files"): that copy stays on the machine that holds the source disk,
 * and unlocking it must not cost an incremental more than milliseconds. */
#define CBI_STATE_KDF_LOG2_N 12u
#define CBI_STATE_KDF_R 8u
#define CBI_STATE_KDF_P 1u

/* Unlock the chain of header h: find the local state's copy of its key file
 * (state_dir may be NULL) and its key files in dir, ask pass for the
 * passphrase once and unwrap the first that opens (the state's copy first:
 * it is the cheap one; key files carrying h's key id before the others,
 * whose mismatch the caller's header check then reports as damage).
 * used (if non-NULL) receives the path of that key file; pw (if non-NULL,
 * CBI_PASS_MAX bytes) the passphrase and *pwlen its length, for the caller
 * to wipe. -CBI_ENOKEY when no key file exists, -CBI_EDAMAGED when the only
 * ones are damaged, -CBI_EPASS when no passphrase was given or none
 * opened. */
int cbi_chain_unlock(const char *dir, const char *state_dir, const cbi_hdr *h, cbi_pass_fn pass, void *ud,
		     cbi_keys *out, char *used, size_t usedsz, char *pw, int *pwlen, cbi_error *err) CBI_WUR;

/* Why a header check of an unlocked chain (cbi_index_set_keys,
 * cbi_image_set_keys) failed with rc: -CBI_EPASS means its key id is not
 * the one of the key file the passphrase opened (a chain has one data key,
 * so one of the two was altered), anything else a failed header MAC. */
const char *cbi_hdr_keyed_problem(int rc);

/* The header MAC of an encrypted file: HMAC-SHA256 under k's file-mac key of
 * the encoded header's bytes 0..487, truncated to 16 bytes. */
int cbi_hdr_mac(const uint8_t hdr[CBI_HDR_SIZE], const cbi_keys *k, uint8_t out[16]) CBI_WUR;

/* Encode h (with h->hdr_mac set from k when h is encrypted) into buf. */
int cbi_hdr_encode_keyed(cbi_hdr *h, const cbi_keys *k, uint8_t buf[CBI_HDR_SIZE]) CBI_WUR;

/* Check an encrypted file's header against k: key id and header MAC.
 * -CBI_EPASS if the key id differs (another key), -CBI_EAUTH if the MAC
 * does not match. */
int cbi_hdr_check_keyed(const cbi_hdr *h, const cbi_keys *k) CBI_WUR;

#endif
