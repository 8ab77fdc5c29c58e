/* crypto_helper.c - byte-level tools for tests/e2e/t_crypto.sh, built by
 * that test into its temporary directory (cc crypto_helper.c -lxxhash).
 *
 *   crypto_helper xxh128 FILE OFFSET LEN
 *       XXH3-128 (seed 0) of LEN bytes of FILE at OFFSET (fewer at the end
 *       of the file), as the 32 hex digits of the 16 bytes cbimg stores:
 *       low 64 bits little-endian, then high 64 bits little-endian.
 *   crypto_helper hdrsum FILE [LEN]
 *       rewrite a checksum: XXH3-64 (seed 0) of bytes 0..LEN-1, stored as a
 *       little-endian u64 at offset LEN. LEN 504 (default): the header
 *       checksum of a .cbi/.cbx; 248: the checksum of a key file (.cbk).
 *   crypto_helper table FILE
 *       the block table of an image file, one line per record:
 *       "BLOCK OFFSET STORED_LEN FLAGS" (decimal).
 *   crypto_helper flip FILE OFFSET
 *       invert the lowest bit of the byte at OFFSET, in place.
 *   crypto_helper count FILE HEX
 *       how many times the bytes given as hex digits occur in FILE.
 * Exit status: 0 ok, 1 error (message on stderr). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static void die(const char *what, const char *path)
{
	fprintf(stderr, "crypto_helper: %s '%s': %s\n", what, path, errno ? strerror(errno) : "bad input");
	exit(1);
}

/* Whole file into memory; size in *n. */
static unsigned char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die("cannot open", path);
	size_t cap = 1 << 20, len = 0;
	unsigned char *b = malloc(cap);
	for (;;) {
		if (!b)
			die("out of memory reading", path);
		size_t r = fread(b + len, 1, cap - len, f);
		len += r;
		if (len < cap)
			break;
		cap *= 2;
		b = realloc(b, cap);
	}
	if (ferror(f))
		die("cannot read", path);
	fclose(f);
	*n = len;
	return b;
}

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static int cmd_xxh128(const char *path, unsigned long long off, unsigned long long len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die("cannot open", path);
	unsigned char *b = malloc(len ? len : 1);
	if (!b || fseeko(f, (off_t)off, SEEK_SET))
		die("cannot seek in", path);
	size_t n = fread(b, 1, len, f);
	fclose(f);
	XXH128_hash_t h = XXH3_128bits(b, n);
	unsigned char out[16];
	put_le64(out, h.low64);
	put_le64(out + 8, h.high64);
	for (int i = 0; i < 16; i++)
		printf("%02x", out[i]);
	printf("\n");
	free(b);
	return 0;
}

static int cmd_hdrsum(const char *path, unsigned long len)
{
	FILE *f = fopen(path, "r+b");
	unsigned char h[512];
	if (len < 1 || len > 504)
		die("checksum length out of range for", path);
	if (!f || fread(h, 1, len + 8, f) != len + 8)
		die("cannot read the start of", path);
	put_le64(h + len, XXH3_64bits(h, len));
	if (fseek(f, (long)len, SEEK_SET) || fwrite(h + len, 1, 8, f) != 8 || fclose(f))
		die("cannot write", path);
	return 0;
}

static int cmd_flip(const char *path, unsigned long long off)
{
	FILE *f = fopen(path, "r+b");
	int c;
	if (!f || fseeko(f, (off_t)off, SEEK_SET) || (c = fgetc(f)) == EOF)
		die("cannot read the byte to flip in", path);
	if (fseeko(f, (off_t)off, SEEK_SET) || fputc(c ^ 1, f) == EOF || fclose(f))
		die("cannot write", path);
	return 0;
}

static int cmd_table(const char *path)
{
	size_t n;
	unsigned char *b = slurp(path, &n);
	if (n < 640)
		die("too short", path);
	const unsigned char *t = b + n - 128;
	uint64_t tab = le64(t + 8), cnt = le64(t + 16);
	if (tab > n || cnt > (n - tab) / 24)
		die("bad trailer in", path);
	for (uint64_t i = 0; i < cnt; i++) {
		const unsigned char *e = b + tab + 24 * i;
		printf("%llu %llu %u %u\n", (unsigned long long)le64(e), (unsigned long long)le64(e + 8), le32(e + 16),
		       le32(e + 20));
	}
	free(b);
	return 0;
}

static int cmd_count(const char *path, const char *hex)
{
	size_t hl = strlen(hex), nl = hl / 2, n;
	if (!nl || hl % 2)
		die("odd hex string", hex);
	unsigned char *needle = malloc(nl);
	for (size_t i = 0; i < nl; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			die("bad hex string", hex);
		needle[i] = (unsigned char)v;
	}
	unsigned char *b = slurp(path, &n);
	unsigned long count = 0;
	const unsigned char *p = b, *end = b + n;
	while (p < end && (p = memmem(p, (size_t)(end - p), needle, nl))) {
		count++;
		p++;
	}
	printf("%lu\n", count);
	free(b);
	free(needle);
	return 0;
}

int main(int argc, char **argv)
{
	errno = 0;
	if (argc == 5 && !strcmp(argv[1], "xxh128"))
		return cmd_xxh128(argv[2], strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0));
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "hdrsum"))
		return cmd_hdrsum(argv[2], argc == 4 ? strtoul(argv[3], NULL, 0) : 504);
	if (argc == 4 && !strcmp(argv[1], "flip"))
		return cmd_flip(argv[2], strtoull(argv[3], NULL, 0));
	if (argc == 3 && !strcmp(argv[1], "table"))
		return cmd_table(argv[2]);
	if (argc == 4 && !strcmp(argv[1], "count"))
		return cmd_count(argv[2], argv[3]);
	fprintf(stderr, "usage: crypto_helper xxh128 FILE OFF LEN | hdrsum FILE [LEN] | flip FILE OFF | table FILE | count FILE HEX\n");
	return 1;
}
