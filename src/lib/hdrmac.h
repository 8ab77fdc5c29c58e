/* hdrmac.h - the header MAC of an encrypted chain's image and index files
 * (format/SPEC.md, "Encryption"): bytes 488..503 of the header, HMAC-SHA256
 * under the chain's file-mac key, and the key id beside it. The module below
 * image.c and index.c that makes and checks them; the chain reader
 * (chainrd.h) is the one place that checks them for the library's readers. */
#ifndef CBI_HDRMAC_H
#define CBI_HDRMAC_H

#include "crypto.h"
#include "format.h"

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
