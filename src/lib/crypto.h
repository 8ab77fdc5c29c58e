/* crypto.h - the cryptography of encrypted chains and strong hashes
 * (format/SPEC.md, "Encryption"). Everything here is a thin layer over
 * OpenSSL libcrypto: HKDF-SHA256, scrypt, AES-256-GCM, AES-256 (one block),
 * HMAC-SHA256 and SHA-256. Nothing is hand-written but the byte layouts.
 *
 * Keys of a chain: one random 32-byte data key (DK), wrapped in the chain's
 * key file (keyfile.h). Every other key is derived from it with HKDF-SHA256
 * (salt = chain id, info = "cbimg-v2 " LABEL [|| point id]):
 *   key-id       16 bytes: names the DK in headers and key files
 *   file-mac     HMAC-SHA256 key of file digests and header MACs
 *   block-hash   AES-256 key of the keyed block hash
 *   record       (with the point id) AES-256-GCM key of one point's records */
#ifndef CBI_CRYPTO_H
#define CBI_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "cbimg.h"

#define CBI_KEY_LEN 32u
#define CBI_TAG_LEN 16u
#define CBI_HDR_MAC_LEN 16u

/* A chain's keys, derived from its data key. Plain data: copy freely,
 * wipe with cbi_keys_wipe(). */
typedef struct cbi_keys {
	uint8_t chain_id[16];
	uint8_t dk[CBI_KEY_LEN];
	uint8_t key_id[16];
	uint8_t mac_key[CBI_KEY_LEN];
	uint8_t hash_key[CBI_KEY_LEN];
} cbi_keys;

/* How block hashes are computed in a chain. */
typedef struct cbi_hashspec {
	uint32_t alg;                 /* CBI_HASH_XXH3_128 or CBI_HASH_SHA256_128 */
	int keyed;                    /* encrypted chain: AES-256(key, hash) */
	uint8_t key[CBI_KEY_LEN];
} cbi_hashspec;

/* Per-thread OpenSSL contexts. Not shareable between threads; any key may
 * be used with any context. */
typedef struct cbi_cx cbi_cx;
cbi_cx *cbi_cx_new(void);
void cbi_cx_free(cbi_cx *cx);

/* HKDF-SHA256 (RFC 5869). 0 or -EIO. */
int cbi_hkdf(const uint8_t *ikm, size_t ikmlen, const uint8_t *salt, size_t saltlen,
	     const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen) CBI_WUR;

/* scrypt (RFC 7914) with N = 2^log2_n. 0, -EINVAL for parameters out of
 * range, -ENOMEM when the parameters need more memory than 1 GiB. */
int cbi_scrypt(const char *pass, size_t passlen, const uint8_t *salt, size_t saltlen, uint32_t log2_n,
	       uint32_t r, uint32_t p, uint8_t *out, size_t outlen) CBI_WUR;

/* Derive every key of a chain from its data key. 0 or -EIO. */
int cbi_keys_derive(cbi_keys *k, const uint8_t chain_id[16], const uint8_t dk[CBI_KEY_LEN]) CBI_WUR;

/* The record key of one point. 0 or -EIO. */
int cbi_keys_record_key(const cbi_keys *k, const uint8_t point_id[16], uint8_t out[CBI_KEY_LEN]) CBI_WUR;

void cbi_keys_wipe(cbi_keys *k);

/* AES-256-GCM with a 12-byte nonce. seal writes len bytes of ciphertext to
 * out (may equal in) and the tag to tag. open returns 0, or -CBI_EAUTH when
 * the tag does not match (out then holds garbage the caller must not use). */
int cbi_gcm_seal(cbi_cx *cx, const uint8_t key[CBI_KEY_LEN], const uint8_t nonce[12], const uint8_t *aad,
		 size_t aadlen, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[CBI_TAG_LEN]) CBI_WUR;
int cbi_gcm_open(cbi_cx *cx, const uint8_t key[CBI_KEY_LEN], const uint8_t nonce[12], const uint8_t *aad,
		 size_t aadlen, const uint8_t *in, size_t len, const uint8_t tag[CBI_TAG_LEN], uint8_t *out) CBI_WUR;

/* Records: nonce = block number (8 bytes LE) || 4 zero bytes; AAD = chain
 * id || point id || the 40-byte record header. */
void cbi_rec_nonce(uint64_t block, uint8_t nonce[12]);
#define CBI_REC_AAD_LEN (16u + 16u + 40u)
void cbi_rec_aad(const uint8_t chain_id[16], const uint8_t point_id[16], const uint8_t rec_hdr[40],
		 uint8_t aad[CBI_REC_AAD_LEN]);

/* Block hash under spec hs (NULL: plain XXH3-128). cx is needed for SHA-256
 * and keyed hashes (NULL then: -EINVAL). 0 or -EIO. */
int cbi_hash_block_spec(const cbi_hashspec *hs, cbi_cx *cx, const void *data, size_t len,
			uint8_t out[16]) CBI_WUR;

/* HMAC-SHA256 in one go. 0 or -EIO. */
int cbi_hmac(const uint8_t key[CBI_KEY_LEN], const void *data, size_t len, uint8_t out[32]) CBI_WUR;

/* A running file digest: SHA-256, or HMAC-SHA256 when a key is given. */
typedef struct cbi_dg cbi_dg;
int cbi_dg_new(const uint8_t *mac_key, cbi_dg **out) CBI_WUR;
int cbi_dg_update(cbi_dg *d, const void *data, size_t len) CBI_WUR;
int cbi_dg_final(cbi_dg *d, uint8_t out[32]) CBI_WUR;
void cbi_dg_free(cbi_dg *d);

/* Constant-time comparison: 0 when equal. */
int cbi_ct_memcmp(const void *a, const void *b, size_t n);

#endif
