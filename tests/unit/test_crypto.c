/* test_crypto.c - the OpenSSL wrappers of crypto.c against published
 * vectors (RFC 5869 HKDF, RFC 7914 scrypt, the GCM specification's test
 * cases, RFC 4231 HMAC, FIPS 180-2 SHA-256), the keyed block hash, the key
 * derivation of a chain (pinned values) and the record nonce and AAD.
 *
 * Every expected value below was typed from its RFC or specification and
 * checked again with the openssl command-line tool and python3 (hashlib,
 * hmac, cryptography); values specific to cbimg (derived keys, keyed block
 * hashes) were computed only with those tools, never with this library. */
#include "testutil.h"

#include <openssl/evp.h>

#include "crypto.h"
#include "format.h"
#include "util.h"

/* ------------------------------------------------------------ helpers */

static void unhex(const char *hex, uint8_t *out, size_t n)
{
	assert_int_equal(strlen(hex), 2 * n);
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* Compare n bytes of got with the hex string want; print both on failure. */
static void assert_hex(const uint8_t *got, const char *want, size_t n)
{
	uint8_t w[256];
	assert_true(n <= sizeof w);
	unhex(want, w, n);
	if (memcmp(got, w, n)) {
		char g[513];
		for (size_t i = 0; i < n; i++)
			snprintf(g + 2 * i, 3, "%02x", got[i]);
		print_error("got  %s\nwant %s\n", g, want);
		fail();
	}
}

static void fill_seq(uint8_t *b, size_t n, uint8_t first)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(first + i);
}

/* One AES-256 block, straight through OpenSSL, as the reference for the
 * keyed block hash. */
static void aes256_block(const uint8_t key[32], const uint8_t in[16], uint8_t out[16])
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n = 0, m = 0;
	assert_non_null(c);
	assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_ecb(), NULL, key, NULL), 1);
	EVP_CIPHER_CTX_set_padding(c, 0);
	assert_int_equal(EVP_EncryptUpdate(c, out, &n, in, 16), 1);
	assert_int_equal(n, 16);
	assert_int_equal(EVP_EncryptFinal_ex(c, out + n, &m), 1);
	assert_int_equal(m, 0);
	EVP_CIPHER_CTX_free(c);
}

static void sha256(const void *d, size_t n, uint8_t out[32])
{
	unsigned int l = 0;
	assert_int_equal(EVP_Digest(d, n, out, &l, EVP_sha256(), NULL), 1);
	assert_int_equal(l, 32);
}

/* --------------------------------------------------------------- HKDF */

/* RFC 5869, A.1 (test case 1): basic test case with SHA-256. */
static void test_hkdf_rfc5869_case1(void **state)
{
	(void)state;
	uint8_t ikm[22], salt[13], info[10], okm[42];
	memset(ikm, 0x0b, sizeof ikm);
	fill_seq(salt, sizeof salt, 0x00);
	fill_seq(info, sizeof info, 0xf0);
	assert_int_equal(cbi_hkdf(ikm, sizeof ikm, salt, sizeof salt, info, sizeof info, okm, sizeof okm), 0);
	assert_hex(okm,
		   "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
		   "34007208d5b887185865",
		   42);
	/* a shorter output is a prefix of the longer one */
	uint8_t o16[16];
	assert_int_equal(cbi_hkdf(ikm, sizeof ikm, salt, sizeof salt, info, sizeof info, o16, sizeof o16), 0);
	assert_memory_equal(o16, okm, 16);
}

/* RFC 5869, A.3 (test case 3): zero-length salt and info. */
static void test_hkdf_rfc5869_case3(void **state)
{
	(void)state;
	uint8_t ikm[22], okm[42];
	memset(ikm, 0x0b, sizeof ikm);
	assert_int_equal(cbi_hkdf(ikm, sizeof ikm, (const uint8_t *)"", 0, (const uint8_t *)"", 0, okm, sizeof okm),
			 0);
	assert_hex(okm,
		   "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
		   "9d201395faa4b61a96c8",
		   42);
}

/* ------------------------------------------------------------- scrypt */

/* RFC 7914, section 12: the first three vectors (the fourth needs 1 GiB). */
static void test_scrypt_rfc7914(void **state)
{
	(void)state;
	uint8_t out[64];
	assert_int_equal(cbi_scrypt("", 0, (const uint8_t *)"", 0, 4, 1, 1, out, sizeof out), 0);
	assert_hex(out,
		   "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442"
		   "fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906",
		   64);
	assert_int_equal(cbi_scrypt("password", 8, (const uint8_t *)"NaCl", 4, 10, 8, 16, out, sizeof out), 0);
	assert_hex(out,
		   "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
		   "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640",
		   64);
	assert_int_equal(cbi_scrypt("pleaseletmein", 13, (const uint8_t *)"SodiumChloride", 14, 14, 8, 1, out,
				    sizeof out),
			 0);
	assert_hex(out,
		   "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
		   "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887",
		   64);
}

static void test_scrypt_params(void **state)
{
	(void)state;
	uint8_t out[32], salt[32] = { 1 };
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 0, 8, 1, out, sizeof out), -EINVAL);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 41, 8, 1, out, sizeof out), -EINVAL);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 0, 1, out, sizeof out), -EINVAL);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 8, 0, out, sizeof out), -EINVAL);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 1u << 15, 1u << 15, out, sizeof out), -EINVAL);
	/* more than 1 GiB: refused before any work */
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 31, 1, 1, out, sizeof out), -ENOMEM);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 20, 16, 1, out, sizeof out), -ENOMEM);
	/* each input matters */
	uint8_t a[32], b[32];
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 8, 1, a, sizeof a), 0);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 8, 1, b, sizeof b), 0);
	assert_memory_equal(a, b, 32);
	assert_int_equal(cbi_scrypt("pW", 2, salt, sizeof salt, 10, 8, 1, b, sizeof b), 0);
	assert_memory_not_equal(a, b, 32);
	assert_int_equal(cbi_scrypt("pw", 1, salt, sizeof salt, 10, 8, 1, b, sizeof b), 0);
	assert_memory_not_equal(a, b, 32);
	salt[31] ^= 1;
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 8, 1, b, sizeof b), 0);
	assert_memory_not_equal(a, b, 32);
	salt[31] ^= 1;
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 11, 8, 1, b, sizeof b), 0);
	assert_memory_not_equal(a, b, 32);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 7, 1, b, sizeof b), 0);
	assert_memory_not_equal(a, b, 32);
	assert_int_equal(cbi_scrypt("pw", 2, salt, sizeof salt, 10, 8, 2, b, sizeof b), 0);
	assert_memory_not_equal(a, b, 32);
}

/* -------------------------------------------------------- AES-256-GCM */

/* McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16:
 * 256-bit key, 96-bit IV, 60 bytes of plaintext, 20 bytes of AAD. */
#define TC16_KEY "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
#define TC16_IV "cafebabefacedbaddecaf888"
#define TC16_PT                                                                                                \
	"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"                                     \
	"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
#define TC16_AAD "feedfacedeadbeeffeedfacedeadbeefabaddad2"
#define TC16_CT                                                                                                \
	"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"                                     \
	"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
#define TC16_TAG "76fc6ece0f4e1768cddf8853bb2d551b"

typedef struct tc16 {
	uint8_t key[32], iv[12], pt[60], aad[20], ct[60], tag[16];
} tc16;

static void tc16_load(tc16 *t)
{
	unhex(TC16_KEY, t->key, 32);
	unhex(TC16_IV, t->iv, 12);
	unhex(TC16_PT, t->pt, 60);
	unhex(TC16_AAD, t->aad, 20);
	unhex(TC16_CT, t->ct, 60);
	unhex(TC16_TAG, t->tag, 16);
}

static void test_gcm_spec_case16(void **state)
{
	(void)state;
	tc16 t;
	tc16_load(&t);
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	uint8_t out[60], tag[16];
	assert_int_equal(cbi_gcm_seal(cx, t.key, t.iv, t.aad, 20, t.pt, 60, out, tag), 0);
	assert_memory_equal(out, t.ct, 60);
	assert_memory_equal(tag, t.tag, 16);
	memset(out, 0, sizeof out);
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), 0);
	assert_memory_equal(out, t.pt, 60);
	/* in place, as records are sealed */
	uint8_t buf[60 + 16];
	memcpy(buf, t.pt, 60);
	assert_int_equal(cbi_gcm_seal(cx, t.key, t.iv, t.aad, 20, buf, 60, buf, buf + 60), 0);
	assert_memory_equal(buf, t.ct, 60);
	assert_memory_equal(buf + 60, t.tag, 16);
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, buf, 60, buf + 60, buf), 0);
	assert_memory_equal(buf, t.pt, 60);
	cbi_cx_free(cx);
}

/* Test cases 13 and 14: zero key and IV, empty and one-block plaintext,
 * no AAD. */
static void test_gcm_spec_case13_14(void **state)
{
	(void)state;
	uint8_t key[32] = { 0 }, iv[12] = { 0 }, pt[16] = { 0 }, ct[16], tag[16], back[16];
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	assert_int_equal(cbi_gcm_seal(cx, key, iv, NULL, 0, pt, 0, ct, tag), 0);
	assert_hex(tag, "530f8afbc74536b9a963b4f1c4cb738b", 16);
	assert_int_equal(cbi_gcm_open(cx, key, iv, NULL, 0, ct, 0, tag, back), 0);
	tag[0] ^= 1;
	assert_int_equal(cbi_gcm_open(cx, key, iv, NULL, 0, ct, 0, tag, back), -CBI_EAUTH);
	assert_int_equal(cbi_gcm_seal(cx, key, iv, NULL, 0, pt, 16, ct, tag), 0);
	assert_hex(ct, "cea7403d4d606b6e074ec5d3baf39d18", 16);
	assert_hex(tag, "d0d1c8a799996bf0265b98b5d48ab919", 16);
	assert_int_equal(cbi_gcm_open(cx, key, iv, NULL, 0, ct, 16, tag, back), 0);
	assert_memory_equal(back, pt, 16);
	cbi_cx_free(cx);
}

/* Any change to ciphertext, tag, AAD, nonce or key fails the tag, and one
 * failure does not poison the context for the next call. */
static void test_gcm_open_rejects_changes(void **state)
{
	(void)state;
	tc16 t;
	tc16_load(&t);
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	uint8_t out[60];
	for (size_t i = 0; i < 60; i++) {
		t.ct[i] ^= 0x01;
		assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), -CBI_EAUTH);
		t.ct[i] ^= 0x01;
	}
	for (size_t i = 0; i < 16; i++) {
		t.tag[i] ^= 0x80;
		assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), -CBI_EAUTH);
		t.tag[i] ^= 0x80;
	}
	for (size_t i = 0; i < 20; i++) {
		t.aad[i] ^= 0x40;
		assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), -CBI_EAUTH);
		t.aad[i] ^= 0x40;
	}
	/* AAD dropped or shortened, ciphertext shortened */
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, NULL, 0, t.ct, 60, t.tag, out), -CBI_EAUTH);
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 19, t.ct, 60, t.tag, out), -CBI_EAUTH);
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 59, t.tag, out), -CBI_EAUTH);
	for (size_t i = 0; i < 12; i++) {
		t.iv[i] ^= 0x02;
		assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), -CBI_EAUTH);
		t.iv[i] ^= 0x02;
	}
	t.key[31] ^= 0x01;
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), -CBI_EAUTH);
	t.key[31] ^= 0x01;
	/* another record nonce (the next block) */
	uint8_t n0[12], n1[12], buf[60 + 16];
	cbi_rec_nonce(7, n0);
	cbi_rec_nonce(8, n1);
	memcpy(buf, t.pt, 60);
	assert_int_equal(cbi_gcm_seal(cx, t.key, n0, t.aad, 20, buf, 60, buf, buf + 60), 0);
	assert_int_equal(cbi_gcm_open(cx, t.key, n1, t.aad, 20, buf, 60, buf + 60, out), -CBI_EAUTH);
	assert_int_equal(cbi_gcm_open(cx, t.key, n0, t.aad, 20, buf, 60, buf + 60, out), 0);
	assert_memory_equal(out, t.pt, 60);
	/* and the untouched vector still opens */
	assert_int_equal(cbi_gcm_open(cx, t.key, t.iv, t.aad, 20, t.ct, 60, t.tag, out), 0);
	assert_memory_equal(out, t.pt, 60);
	cbi_cx_free(cx);
}

/* A large in-place seal/open through one context, many times, with
 * alternating keys: nothing of one call leaks into the next. */
static void test_gcm_context_reuse(void **state)
{
	(void)state;
	enum { N = 256 * 1024 + 7 };
	uint8_t *pt = malloc(N), *buf = malloc(N + 16);
	assert_non_null(pt);
	assert_non_null(buf);
	tu_fill_random(pt, N, 42);
	uint8_t k1[32], k2[32], nonce[12], aad[CBI_REC_AAD_LEN] = { 0 };
	fill_seq(k1, 32, 1);
	fill_seq(k2, 32, 2);
	cbi_cx *cx = cbi_cx_new(), *cx2 = cbi_cx_new();
	assert_non_null(cx);
	assert_non_null(cx2);
	for (uint64_t b = 0; b < 6; b++) {
		const uint8_t *k = b & 1 ? k2 : k1;
		cbi_rec_nonce(b, nonce);
		memcpy(buf, pt, N);
		assert_int_equal(cbi_gcm_seal(cx, k, nonce, aad, sizeof aad, buf, N, buf, buf + N), 0);
		assert_memory_not_equal(buf, pt, 64);
		assert_int_equal(cbi_gcm_open(cx2, k, nonce, aad, sizeof aad, buf, N, buf + N, buf), 0);
		assert_memory_equal(buf, pt, N);
	}
	cbi_cx_free(cx);
	cbi_cx_free(cx2);
	cbi_cx_free(NULL);
	free(pt);
	free(buf);
}

static void test_rec_nonce_and_aad(void **state)
{
	(void)state;
	uint8_t n[12];
	memset(n, 0xee, sizeof n);
	cbi_rec_nonce(0x0102030405060708ull, n);
	assert_hex(n, "080706050403020100000000", 12);
	cbi_rec_nonce(0, n);
	assert_hex(n, "000000000000000000000000", 12);
	cbi_rec_nonce(UINT64_MAX, n);
	assert_hex(n, "ffffffffffffffff00000000", 12);

	uint8_t cid[16], pid[16], rh[40], aad[CBI_REC_AAD_LEN];
	fill_seq(cid, 16, 0x00);
	fill_seq(pid, 16, 0x10);
	fill_seq(rh, 40, 0x20);
	cbi_rec_aad(cid, pid, rh, aad);
	assert_int_equal(CBI_REC_AAD_LEN, 72);
	for (size_t i = 0; i < 72; i++)
		assert_int_equal(aad[i], i);
}

/* ------------------------------------------------------ HMAC, digests */

/* RFC 4231 test cases 1 and 2. cbi_hmac takes a 32-byte key; HMAC pads
 * any key shorter than the SHA-256 block (64 bytes) with zeros, so the
 * RFC's 20-byte and 4-byte keys zero-padded to 32 bytes are the same keys. */
static void test_hmac_rfc4231(void **state)
{
	(void)state;
	uint8_t key[32], out[32];
	memset(key, 0, sizeof key);
	memset(key, 0x0b, 20);
	assert_int_equal(cbi_hmac(key, "Hi There", 8, out), 0);
	assert_hex(out, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 32);
	memset(key, 0, sizeof key);
	memcpy(key, "Jefe", 4);
	assert_int_equal(cbi_hmac(key, "what do ya want for nothing?", 28, out), 0);
	assert_hex(out, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 32);
}

/* A full 32-byte key (bytes 0x40..0x5f); the expected values come from
 * python3 hmac and `openssl dgst -sha256 -mac HMAC -macopt hexkey:...`. */
#define K32_MSG "cbimg file digest test"
#define K32_MAC "be2164301f5b6dfedb8ad405b656bb128acc3026af842e7df7dfa4d8b7b2f123"
#define K32_ABC "910f4315f170bdf2f5a197d760828322c22cf67c043b7df72b6920db6e4caf97"

static void test_hmac_32byte_key(void **state)
{
	(void)state;
	uint8_t key[32], out[32];
	fill_seq(key, 32, 0x40);
	assert_int_equal(cbi_hmac(key, K32_MSG, strlen(K32_MSG), out), 0);
	assert_hex(out, K32_MAC, 32);
	assert_int_equal(cbi_hmac(key, "abc", 3, out), 0);
	assert_hex(out, K32_ABC, 32);
	/* empty message */
	uint8_t e1[32], e2[32];
	assert_int_equal(cbi_hmac(key, "", 0, e1), 0);
	cbi_dg *d = NULL;
	assert_int_equal(cbi_dg_new(key, &d), 0);
	assert_int_equal(cbi_dg_final(d, e2), 0);
	cbi_dg_free(d);
	assert_memory_equal(e1, e2, 32);
}

/* Feed msg to a running digest in pieces of step bytes. */
static void dg_run(const uint8_t *key, const void *msg, size_t len, size_t step, uint8_t out[32])
{
	cbi_dg *d = NULL;
	assert_int_equal(cbi_dg_new(key, &d), 0);
	assert_non_null(d);
	const uint8_t *p = msg;
	for (size_t off = 0; off < len; off += step) {
		size_t n = len - off < step ? len - off : step;
		assert_int_equal(cbi_dg_update(d, p + off, n), 0);
	}
	assert_int_equal(cbi_dg_update(d, p, 0), 0);
	assert_int_equal(cbi_dg_final(d, out), 0);
	cbi_dg_free(d);
}

/* FIPS 180-2 examples for the unkeyed digest; HMAC for the keyed one. */
static void test_dg(void **state)
{
	(void)state;
	uint8_t out[32];
	static const char m2[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	for (size_t step = 1; step <= 64; step *= 4) {
		dg_run(NULL, "abc", 3, step, out);
		assert_hex(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 32);
		dg_run(NULL, m2, strlen(m2), step, out);
		assert_hex(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", 32);
		dg_run(NULL, "", 0, step, out);
		assert_hex(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 32);
	}
	uint8_t key[32];
	fill_seq(key, 32, 0x40);
	for (size_t step = 1; step <= 32; step *= 2) {
		dg_run(key, K32_MSG, strlen(K32_MSG), step, out);
		assert_hex(out, K32_MAC, 32);
	}
	/* a long message: keyed digest == cbi_hmac, unkeyed == SHA-256 */
	enum { N = 100000 };
	uint8_t *m = malloc(N), ref[32];
	assert_non_null(m);
	tu_fill_random(m, N, 7);
	dg_run(key, m, N, 4093, out);
	assert_int_equal(cbi_hmac(key, m, N, ref), 0);
	assert_memory_equal(out, ref, 32);
	dg_run(NULL, m, N, 4093, out);
	sha256(m, N, ref);
	assert_memory_equal(out, ref, 32);
	/* and keyed differs from unkeyed */
	uint8_t k2[32];
	dg_run(key, m, N, N, k2);
	assert_memory_not_equal(out, k2, 32);
	free(m);
	cbi_dg_free(NULL);
}

static void test_ct_memcmp(void **state)
{
	(void)state;
	uint8_t a[32], b[32];
	fill_seq(a, 32, 3);
	memcpy(b, a, 32);
	assert_int_equal(cbi_ct_memcmp(a, b, 32), 0);
	assert_int_equal(cbi_ct_memcmp(a, b, 0), 0);
	for (size_t i = 0; i < 32; i++) {
		b[i] ^= 0x10;
		assert_int_not_equal(cbi_ct_memcmp(a, b, 32), 0);
		b[i] ^= 0x10;
	}
}

/* ----------------------------------------------------- block hashes */

/* format/SPEC.md, "Block hash": block 0 of the valid/chain1 vector. */
static void spec_block0(uint8_t b[4096])
{
	for (int i = 0; i < 128; i++) {
		char line[40];
		snprintf(line, sizeof line, "cbimg s0 blk 000000 ln %03d", i);
		memset(b + 32 * i, ' ', 31);
		memcpy(b + 32 * i, line, strlen(line));
		b[32 * i + 31] = '\n';
	}
}

static void test_block_hash_spec_example(void **state)
{
	(void)state;
	uint8_t b[4096], h[16];
	spec_block0(b);
	cbi_block_hash(b, sizeof b, h);
	assert_hex(h, "bc2c3d2b9d73da96ae663bd49820353a", 16);
	assert_int_equal(cbi_hash_block_spec(NULL, NULL, b, sizeof b, h), 0);
	assert_hex(h, "bc2c3d2b9d73da96ae663bd49820353a", 16);
}

/* Keyed hashes of "abc" under the key 0x60..0x7f:
 *   XXH3-128("abc") as stored = 50392f89945faf7885613a73b65ab006 (xxhsum -H2
 *   prints 06b05ab6733a618578af5f94892f3950, most significant byte first)
 *   SHA-256("abc")[0..15]     = ba7816bf8f01cfea414140de5dae2223
 * each through `openssl enc -aes-256-ecb -nopad -K 6061...7f`. */
#define ABC_XXH "50392f89945faf7885613a73b65ab006"
#define ABC_SHA "ba7816bf8f01cfea414140de5dae2223"
#define ABC_XXH_KEYED "cf5bedd778e49720ecd5c33d092766c2"
#define ABC_SHA_KEYED "47e4a0cef62e0276d6bd4e9585623a0a"

static void test_hash_block_spec_vectors(void **state)
{
	(void)state;
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	uint8_t h[16];
	cbi_hashspec hs;
	memset(&hs, 0, sizeof hs);

	hs.alg = CBI_HASH_XXH3_128;
	assert_int_equal(cbi_hash_block_spec(&hs, NULL, "abc", 3, h), 0); /* no cx needed */
	assert_hex(h, ABC_XXH, 16);
	hs.alg = CBI_HASH_SHA256_128;
	assert_int_equal(cbi_hash_block_spec(&hs, cx, "abc", 3, h), 0);
	assert_hex(h, ABC_SHA, 16);

	hs.keyed = 1;
	fill_seq(hs.key, 32, 0x60);
	hs.alg = CBI_HASH_XXH3_128;
	assert_int_equal(cbi_hash_block_spec(&hs, cx, "abc", 3, h), 0);
	assert_hex(h, ABC_XXH_KEYED, 16);
	hs.alg = CBI_HASH_SHA256_128;
	assert_int_equal(cbi_hash_block_spec(&hs, cx, "abc", 3, h), 0);
	assert_hex(h, ABC_SHA_KEYED, 16);

	/* SHA-256 and keyed hashes need a context; unknown algorithms fail */
	assert_int_equal(cbi_hash_block_spec(&hs, NULL, "abc", 3, h), -EINVAL);
	hs.alg = CBI_HASH_XXH3_128;
	assert_int_equal(cbi_hash_block_spec(&hs, NULL, "abc", 3, h), -EINVAL);
	hs.keyed = 0;
	hs.alg = CBI_HASH_SHA256_128;
	assert_int_equal(cbi_hash_block_spec(&hs, NULL, "abc", 3, h), -EINVAL);
	hs.alg = 3;
	assert_int_equal(cbi_hash_block_spec(&hs, cx, "abc", 3, h), -EINVAL);
	hs.alg = 0;
	assert_int_equal(cbi_hash_block_spec(&hs, cx, "abc", 3, h), -EINVAL);
	cbi_cx_free(cx);
}

/* Against OpenSSL directly, on blocks of several sizes: unkeyed XXH3 ==
 * cbi_block_hash, unkeyed SHA == SHA-256 prefix, keyed == AES-256(key, the
 * unkeyed value). */
static void test_hash_block_spec_matches_reference(void **state)
{
	(void)state;
	static const size_t lens[] = { 0, 1, 15, 16, 17, 1000, 4096, 65536 + 3 };
	uint8_t *b = malloc(65536 + 3);
	assert_non_null(b);
	tu_fill_random(b, 65536 + 3, 9);
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	uint8_t key[32];
	fill_seq(key, 32, 0x99);
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		size_t n = lens[i];
		uint8_t x[16], s[32], want[16], got[16];
		cbi_block_hash(b, n, x);
		sha256(b, n, s);
		cbi_hashspec hs = { .alg = CBI_HASH_XXH3_128 };
		assert_int_equal(cbi_hash_block_spec(&hs, cx, b, n, got), 0);
		assert_memory_equal(got, x, 16);
		hs.alg = CBI_HASH_SHA256_128;
		assert_int_equal(cbi_hash_block_spec(&hs, cx, b, n, got), 0);
		assert_memory_equal(got, s, 16);
		hs.keyed = 1;
		memcpy(hs.key, key, 32);
		assert_int_equal(cbi_hash_block_spec(&hs, cx, b, n, got), 0);
		aes256_block(key, s, want);
		assert_memory_equal(got, want, 16);
		hs.alg = CBI_HASH_XXH3_128;
		assert_int_equal(cbi_hash_block_spec(&hs, cx, b, n, got), 0);
		aes256_block(key, x, want);
		assert_memory_equal(got, want, 16);
		assert_memory_not_equal(got, x, 16);
	}
	free(b);
	cbi_cx_free(cx);
}

/* Keyed: equal data equal hashes, other key other hash; switching keys on
 * one context (it caches the AES key schedule) gives what a fresh context
 * gives. */
static void test_hash_block_keyed_properties(void **state)
{
	(void)state;
	uint8_t blk[4096], blk2[4096];
	tu_fill_text(blk, sizeof blk, 1);
	memcpy(blk2, blk, sizeof blk);
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	for (uint32_t alg = CBI_HASH_XXH3_128; alg <= CBI_HASH_SHA256_128; alg++) {
		cbi_hashspec a = { .alg = alg, .keyed = 1 }, b = a, plain = { .alg = alg };
		fill_seq(a.key, 32, 0x01);
		fill_seq(b.key, 32, 0x01);
		b.key[31] ^= 0x80; /* one bit apart */
		uint8_t ha[16], ha2[16], hb[16], hp[16], hfresh[16];
		assert_int_equal(cbi_hash_block_spec(&a, cx, blk, sizeof blk, ha), 0);
		assert_int_equal(cbi_hash_block_spec(&b, cx, blk, sizeof blk, hb), 0);
		assert_int_equal(cbi_hash_block_spec(&a, cx, blk2, sizeof blk2, ha2), 0);
		assert_int_equal(cbi_hash_block_spec(&plain, cx, blk, sizeof blk, hp), 0);
		assert_memory_equal(ha, ha2, 16);
		assert_memory_not_equal(ha, hb, 16);
		assert_memory_not_equal(ha, hp, 16);
		assert_memory_not_equal(hb, hp, 16);
		/* a fresh context agrees with the one that switched keys */
		cbi_cx *cx2 = cbi_cx_new();
		assert_non_null(cx2);
		assert_int_equal(cbi_hash_block_spec(&b, cx2, blk, sizeof blk, hfresh), 0);
		assert_memory_equal(hfresh, hb, 16);
		cbi_cx_free(cx2);
		/* one changed byte of data changes the keyed hash */
		blk2[100] ^= 1;
		assert_int_equal(cbi_hash_block_spec(&a, cx, blk2, sizeof blk2, ha2), 0);
		assert_memory_not_equal(ha, ha2, 16);
		blk2[100] ^= 1;
		/* keyed == 0 ignores the key */
		cbi_hashspec pk = plain;
		memset(pk.key, 0xaa, 32);
		assert_int_equal(cbi_hash_block_spec(&pk, cx, blk, sizeof blk, ha2), 0);
		assert_memory_equal(ha2, hp, 16);
	}
	cbi_cx_free(cx);
}

/* ------------------------------------------------------ chain keys */

/* chain id 00..0f, DK 20..3f, point id f0..ff. Computed with python3:
 * HKDF-SHA256(IKM = DK, salt = chain id, info = "cbimg-v2 " label [|| point
 * id]), checked with `openssl kdf ... HKDF` for the key id. */
#define PIN_KEY_ID "a09765b84483be65e7f2cf1c9483ac08"
#define PIN_MAC_KEY "f59cfa29c2f1b8e3fb898cd51c5b03e768669fbdbac340b5e01fbf2a6a3e7ac8"
#define PIN_HASH_KEY "8125d317a4d48581411bf6aaa3d944caae045a22b3b97dc6c349ef8c778154a8"
#define PIN_REC_KEY "2a29b746c5bf91893239d3cec11a2b38d00d88c27ab22d41531837ea9291448b"

static void test_keys_derive_pinned(void **state)
{
	(void)state;
	uint8_t cid[16], dk[32], pid[16], rk[32];
	fill_seq(cid, 16, 0x00);
	fill_seq(dk, 32, 0x20);
	fill_seq(pid, 16, 0xf0);
	cbi_keys k;
	memset(&k, 0xcc, sizeof k);
	assert_int_equal(cbi_keys_derive(&k, cid, dk), 0);
	assert_memory_equal(k.chain_id, cid, 16);
	assert_memory_equal(k.dk, dk, 32);
	assert_hex(k.key_id, PIN_KEY_ID, 16);
	assert_hex(k.mac_key, PIN_MAC_KEY, 32);
	assert_hex(k.hash_key, PIN_HASH_KEY, 32);
	assert_int_equal(cbi_keys_record_key(&k, pid, rk), 0);
	assert_hex(rk, PIN_REC_KEY, 32);
	/* same as cbi_hkdf with the documented inputs */
	uint8_t info[64], ref[32];
	size_t n = strlen("cbimg-v2 record");
	memcpy(info, "cbimg-v2 record", n);
	memcpy(info + n, pid, 16);
	assert_int_equal(cbi_hkdf(dk, 32, cid, 16, info, n + 16, ref, 32), 0);
	assert_memory_equal(rk, ref, 32);
	cbi_keys_wipe(&k);
	uint8_t zero[sizeof k];
	memset(zero, 0, sizeof zero);
	assert_memory_equal(&k, zero, sizeof k);
}

static void test_keys_derive_properties(void **state)
{
	(void)state;
	uint8_t cid[16], dk[32];
	tu_fill_random(cid, 16, 1);
	tu_fill_random(dk, 32, 2);
	cbi_keys a, b, c, d;
	assert_int_equal(cbi_keys_derive(&a, cid, dk), 0);
	assert_int_equal(cbi_keys_derive(&b, cid, dk), 0);
	assert_memory_equal(&a, &b, sizeof a); /* deterministic */
	/* the three keys differ from each other and from DK */
	assert_memory_not_equal(a.mac_key, a.hash_key, 32);
	assert_memory_not_equal(a.mac_key, a.dk, 32);
	assert_memory_not_equal(a.hash_key, a.dk, 32);
	assert_memory_not_equal(a.key_id, a.mac_key, 16);
	assert_memory_not_equal(a.key_id, a.hash_key, 16);
	assert_memory_not_equal(a.key_id, a.dk, 16);
	/* another chain id: every key differs */
	cid[0] ^= 1;
	assert_int_equal(cbi_keys_derive(&c, cid, dk), 0);
	cid[0] ^= 1;
	assert_memory_not_equal(a.key_id, c.key_id, 16);
	assert_memory_not_equal(a.mac_key, c.mac_key, 32);
	assert_memory_not_equal(a.hash_key, c.hash_key, 32);
	/* another DK: likewise */
	dk[31] ^= 1;
	assert_int_equal(cbi_keys_derive(&d, cid, dk), 0);
	assert_memory_not_equal(a.key_id, d.key_id, 16);
	assert_memory_not_equal(a.mac_key, d.mac_key, 32);
	assert_memory_not_equal(a.hash_key, d.hash_key, 32);
	/* record keys: one per point id, none equal to another key */
	uint8_t p1[16], p2[16], r1[32], r1b[32], r2[32], rc_[32];
	tu_fill_random(p1, 16, 3);
	memcpy(p2, p1, 16);
	p2[15] ^= 1;
	assert_int_equal(cbi_keys_record_key(&a, p1, r1), 0);
	assert_int_equal(cbi_keys_record_key(&a, p1, r1b), 0);
	assert_int_equal(cbi_keys_record_key(&a, p2, r2), 0);
	assert_int_equal(cbi_keys_record_key(&c, p1, rc_), 0);
	assert_memory_equal(r1, r1b, 32);
	assert_memory_not_equal(r1, r2, 32);
	assert_memory_not_equal(r1, rc_, 32);
	assert_memory_not_equal(r1, a.mac_key, 32);
	assert_memory_not_equal(r1, a.hash_key, 32);
	assert_memory_not_equal(r1, a.dk, 32);
	cbi_keys_wipe(&a);
	cbi_keys_wipe(&b);
	cbi_keys_wipe(&c);
	cbi_keys_wipe(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hkdf_rfc5869_case1),
		cmocka_unit_test(test_hkdf_rfc5869_case3),
		cmocka_unit_test(test_scrypt_rfc7914),
		cmocka_unit_test(test_scrypt_params),
		cmocka_unit_test(test_gcm_spec_case16),
		cmocka_unit_test(test_gcm_spec_case13_14),
		cmocka_unit_test(test_gcm_open_rejects_changes),
		cmocka_unit_test(test_gcm_context_reuse),
		cmocka_unit_test(test_rec_nonce_and_aad),
		cmocka_unit_test(test_hmac_rfc4231),
		cmocka_unit_test(test_hmac_32byte_key),
		cmocka_unit_test(test_dg),
		cmocka_unit_test(test_ct_memcmp),
		cmocka_unit_test(test_block_hash_spec_example),
		cmocka_unit_test(test_hash_block_spec_vectors),
		cmocka_unit_test(test_hash_block_spec_matches_reference),
		cmocka_unit_test(test_hash_block_keyed_properties),
		cmocka_unit_test(test_keys_derive_pinned),
		cmocka_unit_test(test_keys_derive_properties),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
