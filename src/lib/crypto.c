/* crypto.c - OpenSSL wrappers for encrypted chains and strong hashes. */
#include "crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "util.h"

struct cbi_cx {
	EVP_CIPHER_CTX *gcm;
	EVP_CIPHER_CTX *ecb;
	uint8_t ecb_key[CBI_KEY_LEN]; /* key ecb was last set up with */
	int ecb_ready;
	EVP_MD_CTX *md;
};

cbi_cx *cbi_cx_new(void)
{
	cbi_cx *cx = calloc(1, sizeof *cx);
	if (!cx)
		return NULL;
	cx->gcm = EVP_CIPHER_CTX_new();
	cx->ecb = EVP_CIPHER_CTX_new();
	cx->md = EVP_MD_CTX_new();
	if (!cx->gcm || !cx->ecb || !cx->md) {
		cbi_cx_free(cx);
		return NULL;
	}
	return cx;
}

void cbi_cx_free(cbi_cx *cx)
{
	if (!cx)
		return;
	EVP_CIPHER_CTX_free(cx->gcm);
	EVP_CIPHER_CTX_free(cx->ecb);
	EVP_MD_CTX_free(cx->md);
	OPENSSL_cleanse(cx->ecb_key, sizeof cx->ecb_key);
	free(cx);
}

int cbi_hkdf(const uint8_t *ikm, size_t ikmlen, const uint8_t *salt, size_t saltlen, const uint8_t *info,
	     size_t infolen, uint8_t *out, size_t outlen)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	int rc = -EIO;
	if (kc) {
		OSSL_PARAM ps[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
			OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen),
			OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen),
			OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen),
			OSSL_PARAM_construct_end(),
		};
		if (EVP_KDF_derive(kc, out, outlen, ps) == 1)
			rc = 0;
	}
	EVP_KDF_CTX_free(kc);
	EVP_KDF_free(kdf);
	return rc;
}

int cbi_scrypt(const char *pass, size_t passlen, const uint8_t *salt, size_t saltlen, uint32_t log2_n, uint32_t r,
	       uint32_t p, uint8_t *out, size_t outlen)
{
	if (log2_n < 1 || log2_n > 40 || r < 1 || p < 1 || (uint64_t)r * p >= (1u << 30))
		return -EINVAL;
	uint64_t n = 1ull << log2_n;
	/* scrypt's own memory: 128 r N for V plus 128 r p for B. */
	uint64_t need = 128ull * r * (n + p) + (1u << 20);
	if (log2_n > 30 || need > (1ull << 30))
		return -ENOMEM;
	if (EVP_PBE_scrypt(pass, passlen, salt, saltlen, n, r, p, need, out, outlen) != 1)
		return -EIO;
	return 0;
}

static int derive(const cbi_keys *k, const char *label, const uint8_t *extra, size_t extralen, uint8_t *out,
		  size_t outlen)
{
	uint8_t info[64];
	size_t n = (size_t)snprintf((char *)info, sizeof info, "cbimg-v2 %s", label);
	if (extralen) {
		memcpy(info + n, extra, extralen);
		n += extralen;
	}
	return cbi_hkdf(k->dk, CBI_KEY_LEN, k->chain_id, 16, info, n, out, outlen);
}

int cbi_keys_derive(cbi_keys *k, const uint8_t chain_id[16], const uint8_t dk[CBI_KEY_LEN])
{
	memcpy(k->chain_id, chain_id, 16);
	memcpy(k->dk, dk, CBI_KEY_LEN);
	if (derive(k, "key-id", NULL, 0, k->key_id, 16) || derive(k, "file-mac", NULL, 0, k->mac_key, CBI_KEY_LEN) ||
	    derive(k, "block-hash", NULL, 0, k->hash_key, CBI_KEY_LEN)) {
		cbi_keys_wipe(k);
		return -EIO;
	}
	return 0;
}

int cbi_keys_record_key(const cbi_keys *k, const uint8_t point_id[16], uint8_t out[CBI_KEY_LEN])
{
	return derive(k, "record", point_id, 16, out, CBI_KEY_LEN);
}

void cbi_keys_wipe(cbi_keys *k) { OPENSSL_cleanse(k, sizeof *k); }

int cbi_gcm_seal(cbi_cx *cx, const uint8_t key[CBI_KEY_LEN], const uint8_t nonce[12], const uint8_t *aad,
		 size_t aadlen, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[CBI_TAG_LEN])
{
	EVP_CIPHER_CTX *c = cx->gcm;
	int n = 0;
	if (len > INT32_MAX || aadlen > INT32_MAX ||
	    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
	    (aadlen && EVP_EncryptUpdate(c, NULL, &n, aad, (int)aadlen) != 1) ||
	    (len && EVP_EncryptUpdate(c, out, &n, in, (int)len) != 1) || EVP_EncryptFinal_ex(c, out + len, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, CBI_TAG_LEN, tag) != 1)
		return -EIO;
	return 0;
}

int cbi_gcm_open(cbi_cx *cx, const uint8_t key[CBI_KEY_LEN], const uint8_t nonce[12], const uint8_t *aad,
		 size_t aadlen, const uint8_t *in, size_t len, const uint8_t tag[CBI_TAG_LEN], uint8_t *out)
{
	EVP_CIPHER_CTX *c = cx->gcm;
	int n = 0;
	uint8_t t[CBI_TAG_LEN];
	memcpy(t, tag, sizeof t); /* the ctrl wants a non-const pointer */
	if (len > INT32_MAX || aadlen > INT32_MAX ||
	    EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
	    (aadlen && EVP_DecryptUpdate(c, NULL, &n, aad, (int)aadlen) != 1) ||
	    (len && EVP_DecryptUpdate(c, out, &n, in, (int)len) != 1) ||
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, CBI_TAG_LEN, t) != 1)
		return -EIO;
	if (EVP_DecryptFinal_ex(c, out + len, &n) != 1)
		return -CBI_EAUTH;
	return 0;
}

void cbi_rec_nonce(uint64_t block, uint8_t nonce[12])
{
	st64(nonce, block);
	st32(nonce + 8, 0);
}

void cbi_rec_aad(const uint8_t chain_id[16], const uint8_t point_id[16], const uint8_t rec_hdr[40],
		 uint8_t aad[CBI_REC_AAD_LEN])
{
	memcpy(aad, chain_id, 16);
	memcpy(aad + 16, point_id, 16);
	memcpy(aad + 32, rec_hdr, 40);
}

int cbi_hash_block_spec(const cbi_hashspec *hs, cbi_cx *cx, const void *data, size_t len, uint8_t out[16])
{
	if (!hs || (hs->alg == CBI_HASH_XXH3_128 && !hs->keyed)) {
		cbi_block_hash(data, len, out);
		return 0;
	}
	if (!cx)
		return -EINVAL;
	uint8_t h[32];
	unsigned int hl = 0;
	if (hs->alg == CBI_HASH_SHA256_128) {
		if (EVP_DigestInit_ex(cx->md, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(cx->md, data, len) != 1 ||
		    EVP_DigestFinal_ex(cx->md, h, &hl) != 1)
			return -EIO;
	} else if (hs->alg == CBI_HASH_XXH3_128) {
		cbi_block_hash(data, len, h);
	} else {
		return -EINVAL;
	}
	if (!hs->keyed) {
		memcpy(out, h, 16);
		return 0;
	}
	/* Keyed: one AES-256 block over the (truncated) hash, a pseudorandom
	 * permutation: equal blocks still compare equal, but without the key
	 * nobody can compute the value of a block they know. */
	int n = 0;
	if (!cx->ecb_ready || memcmp(cx->ecb_key, hs->key, CBI_KEY_LEN)) {
		if (EVP_EncryptInit_ex(cx->ecb, EVP_aes_256_ecb(), NULL, hs->key, NULL) != 1)
			return -EIO;
		EVP_CIPHER_CTX_set_padding(cx->ecb, 0);
		memcpy(cx->ecb_key, hs->key, CBI_KEY_LEN);
		cx->ecb_ready = 1;
	}
	if (EVP_EncryptUpdate(cx->ecb, out, &n, h, 16) != 1 || n != 16)
		return -EIO;
	return 0;
}

int cbi_hmac(const uint8_t key[CBI_KEY_LEN], const void *data, size_t len, uint8_t out[32])
{
	size_t ol = 0;
	if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, CBI_KEY_LEN, data, len, out, 32, &ol) || ol != 32)
		return -EIO;
	return 0;
}

struct cbi_dg {
	EVP_MD_CTX *md;
	EVP_MAC *mac;
	EVP_MAC_CTX *mc;
};

int cbi_dg_new(const uint8_t *mac_key, cbi_dg **out)
{
	cbi_dg *d = calloc(1, sizeof *d);
	if (!d)
		return -ENOMEM;
	if (!mac_key) {
		d->md = EVP_MD_CTX_new();
		if (!d->md || EVP_DigestInit_ex(d->md, EVP_sha256(), NULL) != 1)
			goto fail;
	} else {
		OSSL_PARAM ps[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
			OSSL_PARAM_construct_end(),
		};
		d->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
		d->mc = d->mac ? EVP_MAC_CTX_new(d->mac) : NULL;
		if (!d->mc || EVP_MAC_init(d->mc, mac_key, CBI_KEY_LEN, ps) != 1)
			goto fail;
	}
	*out = d;
	return 0;
fail:
	cbi_dg_free(d);
	return -EIO;
}

int cbi_dg_update(cbi_dg *d, const void *data, size_t len)
{
	if (d->md)
		return EVP_DigestUpdate(d->md, data, len) == 1 ? 0 : -EIO;
	return EVP_MAC_update(d->mc, data, len) == 1 ? 0 : -EIO;
}

int cbi_dg_final(cbi_dg *d, uint8_t out[32])
{
	if (d->md) {
		unsigned int n = 0;
		return EVP_DigestFinal_ex(d->md, out, &n) == 1 && n == 32 ? 0 : -EIO;
	}
	size_t n = 0;
	return EVP_MAC_final(d->mc, out, &n, 32) == 1 && n == 32 ? 0 : -EIO;
}

void cbi_dg_free(cbi_dg *d)
{
	if (!d)
		return;
	EVP_MD_CTX_free(d->md);
	EVP_MAC_CTX_free(d->mc);
	EVP_MAC_free(d->mac);
	free(d);
}

int cbi_ct_memcmp(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n); }
