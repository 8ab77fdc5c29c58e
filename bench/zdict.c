/* bench/zdict.c - what a per-chain zstd dictionary would gain a full backup
 * (issue 16, target 4), measured outside cbimg on the blocks it would store.
 *
 *   cc -O2 -o zdict bench/zdict.c -lzstd
 *   zdict IMG BLOCK_SIZE LEVEL [TRAIN_MIB [DICT_KIB [first|spread]]]
 *
 * IMG is read in blocks of BLOCK_SIZE bytes; all-zero blocks are skipped
 * (cbimg stores none). Every other block is compressed on its own, as cbimg
 * compresses a record: once with ZSTD_compressCCtx at LEVEL (what cbimg does
 * today) and once with ZSTD_compress_usingCDict over a dictionary of DICT_KIB
 * KiB (default 112, zstd's own default) trained with ZDICT_trainFromBuffer on
 * TRAIN_MIB MiB (default 8) of the non-zero blocks: the first ones ("first",
 * the default: what a writer has in hand when it starts) or blocks spread
 * evenly over the whole source ("spread": needs a pass over the source
 * first). A block that does not shrink is stored raw, as cbimg does; each
 * record costs its 40-byte header. The dictionary's own size is added to
 * the dictionary total (it would be stored once in the chain).
 *
 * Prints one line of key=value pairs: blocks, raw bytes, both totals and the
 * dictionary's, CPU seconds of each compression pass and of the training,
 * and each pass's decompression CPU seconds (restore's cost). Times are
 * CPU time of this single thread (CLOCK_THREAD_CPUTIME_ID).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#define ZDICT_STATIC_LINKING_ONLY
#include <zdict.h>
#include <zstd.h>

#define REC_HDR 40u /* cbimg's record header (format/SPEC.md, "Records") */

static double cpu(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static int is_zero(const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void get(int fd, uint64_t i, size_t bs, size_t n, uint8_t *to)
{
	if (pread(fd, to, n, (off_t)(i * bs)) != (ssize_t)n)
		die("pread");
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s IMG BLOCK_SIZE LEVEL [TRAIN_MIB [DICT_KIB [first|spread]]]\n", argv[0]);
		return 2;
	}
	size_t bs = strtoull(argv[2], NULL, 0);
	int level = atoi(argv[3]);
	size_t train = (argc > 4 ? strtoull(argv[4], NULL, 0) : 8) << 20;
	size_t dict_cap = (argc > 5 ? strtoull(argv[5], NULL, 0) : 112) << 10;
	int spread = argc > 6 && !strcmp(argv[6], "spread");
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st))
		die(argv[1]);
	if (bs < 4096 || bs > (64u << 20)) {
		fprintf(stderr, "bad block size\n");
		return 2;
	}

	/* The non-zero blocks: their numbers and lengths (each pass reads
	 * them again, from the page cache, outside the timed calls). */
	uint64_t nblk = ((uint64_t)st.st_size + bs - 1) / bs, nz = 0;
	uint8_t *blk = malloc(bs);
	size_t cap = 1024, *len = malloc(cap * sizeof *len);
	uint64_t *num = malloc(cap * sizeof *num);
	uint64_t raw = 0;
	if (!blk || !len || !num)
		die("malloc");
	for (uint64_t i = 0; i < nblk; i++) {
		ssize_t n = pread(fd, blk, bs, (off_t)(i * bs));
		if (n <= 0)
			die("pread");
		if (is_zero(blk, (size_t)n))
			continue;
		if (nz == cap) {
			cap *= 2;
			len = realloc(len, cap * sizeof *len);
			num = realloc(num, cap * sizeof *num);
			if (!len || !num)
				die("realloc");
		}
		num[nz] = i;
		len[nz++] = (size_t)n;
		raw += (uint64_t)n;
	}

	/* samples: the first TRAIN bytes of data, or every k-th block */
	size_t ns = 0, want = train / bs ? train / bs : 1, step = 1;
	if (spread && nz > want)
		step = nz / want;
	uint8_t *sbuf = malloc(train + bs);
	size_t *slen = malloc((want + 1) * sizeof *slen), soff = 0;
	if (!sbuf || !slen)
		die("malloc");
	for (uint64_t i = 0; i < nz && ns < want && soff + len[i] <= train + bs; i += step) {
		get(fd, num[i], bs, len[i], sbuf + soff);
		slen[ns++] = len[i];
		soff += len[i];
	}
	uint8_t *dict = malloc(dict_cap);
	if (!dict)
		die("malloc");
	double t0 = cpu();
	size_t dsz = ZDICT_trainFromBuffer(dict, dict_cap, sbuf, slen, (unsigned)ns);
	double t_train = cpu() - t0;
	if (ZDICT_isError(dsz)) {
		fprintf(stderr, "training failed: %s\n", ZDICT_getErrorName(dsz));
		return 1;
	}

	size_t bound = ZSTD_compressBound(bs);
	uint8_t *out = malloc(bound), *back = malloc(bs);
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	ZSTD_DCtx *dc = ZSTD_createDCtx();
	ZSTD_CDict *cd = ZSTD_createCDict(dict, dsz, level);
	ZSTD_DDict *dd = ZSTD_createDDict(dict, dsz);
	if (!out || !back || !cc || !dc || !cd || !dd)
		die("zstd contexts");
	uint64_t plain = 0, withd = dsz;
	double c_plain = 0, c_dict = 0, d_plain = 0, d_dict = 0;
	for (int pass = 0; pass < 2; pass++) {
		uint64_t *tot = pass ? &withd : &plain;
		double *ct = pass ? &c_dict : &c_plain, *dt = pass ? &d_dict : &d_plain;
		for (uint64_t i = 0; i < nz; i++) {
			get(fd, num[i], bs, len[i], blk);
			double a = cpu();
			size_t n = pass ? ZSTD_compress_usingCDict(cc, out, bound, blk, len[i], cd)
					: ZSTD_compressCCtx(cc, out, bound, blk, len[i], level);
			*ct += cpu() - a;
			if (ZSTD_isError(n)) {
				fprintf(stderr, "compress: %s\n", ZSTD_getErrorName(n));
				return 1;
			}
			if (n >= len[i]) { /* stored raw */
				*tot += len[i] + REC_HDR;
				continue;
			}
			*tot += n + REC_HDR;
			a = cpu();
			size_t m = pass ? ZSTD_decompress_usingDDict(dc, back, bs, out, n, dd)
					: ZSTD_decompressDCtx(dc, back, bs, out, n);
			*dt += cpu() - a;
			if (ZSTD_isError(m) || m != len[i] || memcmp(back, blk, m)) {
				fprintf(stderr, "round trip failed at block %llu\n", (unsigned long long)i);
				return 1;
			}
		}
	}
	printf("block=%zu level=%d blocks=%llu raw=%llu train_mib=%zu samples=%zu mode=%s dict=%zu "
	       "plain=%llu with_dict=%llu ratio=%.4f train_s=%.3f comp_plain_s=%.3f comp_dict_s=%.3f "
	       "dec_plain_s=%.3f dec_dict_s=%.3f\n",
	       bs, level, (unsigned long long)nz, (unsigned long long)raw, train >> 20, ns,
	       spread ? "spread" : "first", dsz, (unsigned long long)plain, (unsigned long long)withd,
	       (double)withd / (double)plain, t_train, c_plain, c_dict, d_plain, d_dict);
	return 0;
}
