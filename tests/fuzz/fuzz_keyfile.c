/* fuzz_keyfile.c - key files (keyfile.c): cbi_keyfile_decode, the reader
 * cbi_keyfile_read (a file of any length), and cbi_keyfile_unwrap with the
 * corpus's passphrase "fuzz" when the file's scrypt cost is the cheapest
 * (2^10, r 1, p 1: about a millisecond; anything dearer is only decoded).
 *
 * Input: a control byte (FZ_FIX_HDR repairs the checksum at 248), then the
 * file. What decodes must re-encode to the same 256 bytes. */
#include "fuzz.h"

#include "keyfile.h"

#define PASS "fuzz"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t ctl = data[0];
	size_t n = size - 1;
	uint8_t b[CBI_KF_SIZE], re[CBI_KF_SIZE];
	memset(b, 0, sizeof b);
	memcpy(b, data + 1, CBI_MIN(n, sizeof b));
	if (ctl & FZ_FIX_HDR)
		st64(b + 248, XXH3_64bits(b, 248));

	cbi_keyfile kf;
	if (cbi_keyfile_decode(b, &kf) == 0) {
		cbi_keyfile_encode(&kf, re);
		if (memcmp(b, re, sizeof b)) {
			fprintf(stderr, "key file: decoded and re-encoded bytes differ\n");
			abort();
		}
		if (kf.log2_n == CBI_KDF_MIN_LOG2_N && kf.r == 1 && kf.p == 1) {
			cbi_keys k;
			if (cbi_keyfile_unwrap(&kf, PASS, strlen(PASS), &k) == 0) {
				if (memcmp(k.key_id, kf.key_id, 16) || memcmp(k.chain_id, kf.chain_id, 16))
					abort(); /* unwrap must check what it returns */
				cbi_keys_wipe(&k);
			}
		}
	}
	/* the reader: the file as given, of any length */
	char path[512];
	cbi_error err;
	fz_path(path, sizeof path, fz_dir(), "k.cbk");
	if (ctl & FZ_FIX_HDR && n >= CBI_KF_SIZE) {
		uint8_t *f = malloc(n);
		if (!f)
			abort();
		memcpy(f, data + 1, n);
		memcpy(f, b, CBI_KF_SIZE);
		fz_write(path, f, n);
		free(f);
	} else {
		fz_write(path, data + 1, n);
	}
	FZ_TRY(cbi_keyfile_read(path, &kf, &err));
	return 0;
}
