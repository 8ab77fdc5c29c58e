/* fuzz.h - helpers shared by the fuzz targets (tests/fuzz/fuzz_*.c).
 *
 * Every target is a libFuzzer entry point, LLVMFuzzerTestOneInput(), built
 * two ways (Makefile): with clang -fsanitize=fuzzer,address,undefined for
 * `make fuzz`, and with a plain main() (replay.c) under ASan/UBSan for
 * `make check`, which replays the seed corpus tests/fuzz/corpus/<target>/.
 *
 * Most inputs start with a control byte (FZ_*): the harness, not the
 * library, then repairs what a mutation would otherwise never get right
 * (the header checksum and MAC, the file digest), so that the fuzzer also
 * reaches the checks behind them. The library is never changed for fuzzing:
 * the files it reads are ordinary files in a per-process directory on tmpfs
 * (/dev/shm when present), written from the input. */
#ifndef CBI_FUZZ_H
#define CBI_FUZZ_H

#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "crypto.h"
#include "format.h"
#include "hdrmac.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Call x, whose result (CBI_WUR) the target does not need: what it reads
 * must only not crash, leak or hang. */
#define FZ_TRY(x)            \
	do {                 \
		if ((x) != 0) { \
		}            \
	} while (0)

/* Control byte bits. */
#define FZ_FIX_HDR 0x01    /* recompute the header checksum (and MAC, encrypted: fz_keys) */
#define FZ_FIX_DIGEST 0x02 /* recompute the file digest (last 32 bytes; HMAC when encrypted) */
#define FZ_DIGEST 0x04     /* also run the digest check */
#define FZ_KEYED 0x08      /* set the fixed keys on an encrypted file */

/* The data key of every encrypted file of the corpus (gen_seeds.c makes
 * them with it): the harness can check MACs and open records. */
static inline int fz_keys(const uint8_t chain_id[16], cbi_keys *k)
{
	uint8_t dk[CBI_KEY_LEN];
	memset(dk, 0x42, sizeof dk);
	return cbi_keys_derive(k, chain_id, dk);
}

static char fz_dir_path[256];

static int fz_rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p) < 0 ? 0 : 0;
}

/* Remove everything below dir (dir itself too when self). */
static inline void fz_rm_tree(const char *dir, int self)
{
	if (self) {
		nftw(dir, fz_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
		return;
	}
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	char p[4096];
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		nftw(p, fz_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	}
	closedir(d);
}

static void fz_cleanup(void)
{
	if (fz_dir_path[0])
		fz_rm_tree(fz_dir_path, 1);
}

/* This process's scratch directory (created once, removed at exit). */
static inline const char *fz_dir(void)
{
	if (!fz_dir_path[0]) {
		const char *base = getenv("CBIMG_FUZZ_TMP");
		struct stat st;
		if (!base)
			base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
				       ? "/dev/shm"
				       : "/tmp";
		snprintf(fz_dir_path, sizeof fz_dir_path, "%s/cbimg-fuzz.%ld", base, (long)getpid());
		if (mkdir(fz_dir_path, 0700) < 0 && errno != EEXIST) {
			perror(fz_dir_path);
			abort();
		}
		atexit(fz_cleanup);
	}
	return fz_dir_path;
}

/* dir/name into out. */
static inline void fz_path(char *out, size_t outsz, const char *dir, const char *name)
{
	snprintf(out, outsz, "%s/%s", dir, name);
}

/* Write path with exactly data[0..n), replacing what was there. */
static inline void fz_write(const char *path, const void *data, size_t n)
{
	unlink(path);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		perror(path);
		abort();
	}
	if (n && cbi_pwrite_full(fd, data, n, 0)) {
		perror(path);
		abort();
	}
	close(fd);
}

/* Repair the header at b (CBI_HDR_SIZE bytes): checksum, and for a header
 * flagged encrypted the MAC under fz_keys() first. */
static inline void fz_fix_hdr(uint8_t *b)
{
	if (ld32(b + 16) & CBI_HDR_ENCRYPTED) {
		cbi_keys k;
		uint8_t mac[16];
		if (!fz_keys(b + 48, &k) && !cbi_hdr_mac(b, &k, mac)) {
			memcpy(b + 472, k.key_id, 16);
			memcpy(b + CBI_HDR_MAC_OFF, mac, 16);
		}
		cbi_keys_wipe(&k);
	}
	st64(b + 504, XXH3_64bits(b, 504));
}

/* Repair the digest in the last 32 bytes of the file b[0..n): SHA-256 of
 * the rest, or HMAC-SHA256 under fz_keys() when its header says encrypted. */
static inline void fz_fix_digest(uint8_t *b, size_t n)
{
	if (n < CBI_HDR_SIZE + CBI_TRL_SIZE)
		return;
	cbi_keys k;
	int keyed = (ld32(b + 16) & CBI_HDR_ENCRYPTED) && !fz_keys(b + 48, &k);
	cbi_dg *dg = NULL;
	if (!cbi_dg_new(keyed ? k.mac_key : NULL, &dg)) {
		if (cbi_dg_update(dg, b, n - 32) || cbi_dg_final(dg, b + n - 32))
			memset(b + n - 32, 0, 32);
		cbi_dg_free(dg);
	}
	if (keyed)
		cbi_keys_wipe(&k);
}

/* A buffer that only grows (kept between inputs: no leak, no cost). */
typedef struct fz_buf {
	uint8_t *p;
	size_t cap;
} fz_buf;

static inline uint8_t *fz_buf_get(fz_buf *b, size_t n)
{
	if (n > b->cap) {
		free(b->p);
		b->p = malloc(n);
		if (!b->p)
			abort();
		b->cap = n;
	}
	return b->p;
}

#endif
