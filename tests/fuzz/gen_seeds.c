/* gen_seeds.c - writes the generated part of the seed corpus
 * (tests/fuzz/corpus/<target>/gen-*), in each target's input format:
 *
 *   gen_seeds CORPUS_DIR VECTORS_DIR
 *
 * From format/vectors (plain files, version 1) and from points written here
 * with the library's own writers: encrypted under the fixed data key of
 * fuzz.h (fz_keys), SHA-256 hashes, used-only, split into 1 MiB segments
 * (zero blocks stored raw, so that the sparse segment format keeps them
 * small), a key file under the passphrase "fuzz" at the lowest scrypt cost,
 * and DESTs with a catalog and a run log. Regenerating replaces every gen-*
 * file (ids and times are fixed, but the key file's salt is random). */
#include "fuzz.h"

#include <glob.h>
#include <zstd.h>

#include "catalog.h"
#include "dest.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "runlog.h"

static const char *corpus;

static void die(const char *what)
{
	fprintf(stderr, "gen_seeds: %s\n", what);
	exit(1);
}

static uint8_t *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path);
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
	if (!b || fread(b, 1, (size_t)len, f) != (size_t)len)
		die(path);
	fclose(f);
	*n = (size_t)len;
	return b;
}

/* corpus/target/name := ctl || a[0..an) || b[0..bn) */
static void seed(const char *target, const char *name, uint8_t ctl, const void *a, size_t an, const void *b,
		 size_t bn)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/%s", corpus, target);
	mkdir(p, 0755);
	snprintf(p, sizeof p, "%s/%s/gen-%s", corpus, target, name);
	FILE *f = fopen(p, "wb");
	if (!f || fwrite(&ctl, 1, 1, f) != 1 || (an && fwrite(a, 1, an, f) != an) ||
	    (bn && fwrite(b, 1, bn, f) != bn) || fclose(f))
		die(p);
}

/* ------------------------------------------------------------- points */

enum { P_ENC = 1, P_SHA = 2, P_USED = 4, P_SPLIT = 8, P_RUNS = 16 };

/* Write a full point (image p.cbi and index p.cbx of dir/stem) of a source
 * of size bytes with 4 KiB blocks; every third block zero. P_SPLIT: 1 MiB
 * segments and 1 MiB blocks, every block stored raw as zeros (a large,
 * sparse file of few records). P_RUNS: a run-length index (version 3),
 * blocks 3 to 7 of every 8 zero. */
static void mk_point(const char *dir, const char *stem, unsigned how, uint64_t size, uint8_t pid)
{
	cbi_hdr h;
	memset(&h, 0, sizeof h);
	h.block_size = how & P_SPLIT ? 1u << 20 : 4096;
	h.hash_alg = how & P_SHA ? CBI_HASH_SHA256_128 : CBI_HASH_XXH3_128;
	h.compression = CBI_COMP_ZSTD;
	h.flags = (how & P_ENC ? CBI_HDR_ENCRYPTED : 0) | (how & P_USED ? CBI_HDR_USED_ONLY : 0);
	h.source_size = size;
	h.n_blocks = cbi_nblocks(size, h.block_size);
	for (int i = 0; i < 16; i++) {
		h.chain_id[i] = (uint8_t)(0xc0 + i + (how & P_ENC ? 0x10 : 0));
		h.point_id[i] = (uint8_t)(pid + i);
	}
	h.type = CBI_FULL;
	h.created_ns = 1767225600000000000LL + pid;
	h.level = 3;
	h.segment_mib = how & P_SPLIT ? 1 : 0;
	h.version = cbi_hdr_version_for(&h); /* the image's: runs are the index's alone */
	h.runs = !!(how & P_RUNS);
	cbi_strlcpy(h.job, "j", sizeof h.job);
	cbi_strlcpy(h.host, "h", sizeof h.host);
	cbi_strlcpy(h.source_id, "fuzz:d", sizeof h.source_id);
	cbi_strlcpy(h.source_path, "/dev/d", sizeof h.source_path);

	cbi_keys k;
	uint8_t rec_key[CBI_KEY_LEN];
	cbi_hashspec hs = { .alg = h.hash_alg };
	if (how & P_ENC) {
		if (fz_keys(h.chain_id, &k) || cbi_keys_record_key(&k, h.point_id, rec_key))
			die("keys");
		memcpy(h.key_id, k.key_id, 16);
		hs.keyed = 1;
		memcpy(hs.key, k.hash_key, CBI_KEY_LEN);
	}
	char ip[4096], xp[4096];
	snprintf(ip, sizeof ip, "%s/%s.cbi", dir, stem);
	snprintf(xp, sizeof xp, "%s/%s.cbx", dir, stem);
	cbi_error err;
	cbi_image_writer *iw = NULL;
	cbi_index_writer *xw = NULL;
	const cbi_keys *kp = how & P_ENC ? &k : NULL;
	if (cbi_image_writer_create(ip, NULL, &h, kp, &iw, &err) ||
	    cbi_index_writer_create(xp, NULL, &h, kp, &xw, &err))
		die(err.msg);
	cbi_cx *cx = cbi_cx_new();
	size_t bufsz = ZSTD_compressBound(h.block_size) + CBI_TAG_LEN;
	uint8_t *data = malloc(h.block_size), *buf = malloc(bufsz);
	if (!data || !buf)
		die("out of memory");
	uint64_t zero = 0, stored = 0;
	for (uint64_t i = 0; i < h.n_blocks; i++) {
		uint32_t len = cbi_block_len(size, h.block_size, i);
		int z = (how & P_SPLIT) || (how & P_RUNS ? i % 8 >= 3 : i % 3 == 2);
		for (uint32_t j = 0; j < len; j++)
			data[j] = z ? 0 : (uint8_t)('a' + (j * 7 + i) % 26);
		cbi_idx_ent e = { .owner = 0, .flags = 0 };
		if (cbi_hash_block_spec(&hs, cx, data, len, e.hash))
			die("hash");
		if (z && !(how & P_SPLIT)) {
			e.flags = CBI_IDX_ZERO;
			zero++;
		} else {
			uint32_t flags = 0, n = len;
			if (how & P_SPLIT) {
				memcpy(buf, data, len);
			} else {
				size_t c = ZSTD_compress(buf, bufsz - CBI_TAG_LEN, data, len, 3);
				if (ZSTD_isError(c))
					die("zstd");
				n = (uint32_t)c;
				flags = CBI_REC_ZSTD;
			}
			if (how & P_ENC) {
				flags |= CBI_REC_AEAD;
				cbi_rec_hdr rh = { .flags = flags, .block = i, .stored_len = n + CBI_TAG_LEN,
						   .raw_len = len };
				memcpy(rh.hash, e.hash, 16);
				uint8_t hb[CBI_REC_HDR_SIZE];
				cbi_rec_hdr_encode(&rh, hb);
				if (cbi_image_seal_record(cx, rec_key, h.chain_id, h.point_id, hb, i, buf, n))
					die("seal");
				n += CBI_TAG_LEN;
			}
			if (cbi_image_writer_add(iw, i, flags, len, e.hash, buf, n))
				die("image add");
			stored++;
		}
		if (cbi_index_writer_add(xw, &e))
			die("index add");
	}
	cbi_idx_trailer t;
	memset(&t, 0, sizeof t);
	t.changed_blocks = h.n_blocks - zero;
	t.zero_blocks = zero;
	t.stored_blocks = stored;
	t.image_size = cbi_image_writer_final_size(iw);
	if (cbi_index_writer_seal(xw, &t) || cbi_image_writer_seal(iw, h.n_blocks - zero, t.digest) ||
	    cbi_index_writer_commit(xw, &err) || cbi_image_writer_commit(iw, &err))
		die("seal/commit");
	cbi_cx_free(cx);
	free(data);
	free(buf);
}

static void mk_keyfile(const char *path, const uint8_t chain_id[16])
{
	cbi_keys k;
	cbi_keyfile kf;
	cbi_kdf_params kdf = { CBI_KDF_MIN_LOG2_N, 1, 1 };
	cbi_error err;
	if (fz_keys(chain_id, &k) || cbi_keyfile_wrap(&kf, &k, "fuzz", 4, &kdf) ||
	    cbi_keyfile_write(path, &kf, &err))
		die("key file");
}

/* ------------------------------------------------------------ formats */

/* header target: header, image trailer, index trailer */
static void header_seed(const char *name, const uint8_t *f, size_t n)
{
	uint8_t b[CBI_HDR_SIZE + 2 * CBI_TRL_SIZE];
	memset(b, 0, sizeof b);
	memcpy(b, f, CBI_HDR_SIZE);
	memcpy(b + CBI_HDR_SIZE + (memcmp(f, CBI_MAGIC_IMAGE, 8) ? CBI_TRL_SIZE : 0), f + n - CBI_TRL_SIZE,
	       CBI_TRL_SIZE);
	seed("header", name, 0, b, sizeof b, NULL, 0);
}

/* segments target: the set of the sealed file at path, as its non-zero runs */
static void segments_seed(const char *name, const char *path, const uint8_t *kinds, unsigned nk, uint8_t ctl)
{
	cbi_sfr *r = NULL;
	cbi_error err;
	if (cbi_sfr_open(path, &r, &err))
		die(err.msg);
	size_t n = (size_t)r->size;
	uint8_t *f = malloc(n);
	if (!f || cbi_sfr_pread(r, f, n, 0))
		die("read set");
	uint32_t nseg = r->nseg;
	cbi_sfr_close(r);
	uint64_t last = n - (uint64_t)(nseg - 1) * CBI_SEG_UNIT;
	size_t cap = 4096 + n, o = 0;
	uint8_t *s = malloc(cap);
	s[o++] = (uint8_t)(nseg - 1);
	st16(s + o, (uint16_t)(last / 256));
	o += 2;
	s[o++] = (uint8_t)(last % 256);
	for (uint32_t k = 1; k < nseg; k++)
		s[o++] = k - 1 < nk ? kinds[k - 1] : 0;
	memcpy(s + o, f, CBI_HDR_SIZE);
	o += CBI_HDR_SIZE;
	memcpy(s + o, f + n - CBI_TRL_SIZE, CBI_TRL_SIZE);
	o += CBI_TRL_SIZE;
	for (size_t i = CBI_HDR_SIZE; i < n - CBI_TRL_SIZE;) {
		if (!f[i]) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < n - CBI_TRL_SIZE && j - i < 60000 && (f[j] || (j + 8 < n && cbi_is_zero(f + j, 8) == 0)))
			j++;
		if (o + 6 + (j - i) > cap)
			die("segments seed too large");
		st32(s + o, (uint32_t)i);
		st16(s + o + 4, (uint16_t)(j - i));
		memcpy(s + o + 6, f + i, j - i);
		o += 6 + (j - i);
		i = j;
	}
	seed("segments", name, ctl, s, o, NULL, 0);
	free(s);
	free(f);
}

/* dest target: the regular files of dir (and a lock file when asked) */
static void dest_seed(const char *name, const char *dir, uint8_t ctl)
{
	static const char *const table[] = { CBI_CATALOG_NAME, "cbimg-log.jsonl", ".cbimg.lock" };
	struct dirent **list;
	int ne = scandir(dir, &list, NULL, alphasort);
	if (ne < 0)
		die(dir);
	size_t cap = 1 << 20, o = 0;
	uint8_t *s = malloc(cap);
	for (int i = 0; i < ne; i++) {
		char p[4096];
		struct stat st;
		const char *nm = list[i]->d_name;
		snprintf(p, sizeof p, "%s/%s", dir, nm);
		if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && strlen(nm) < 200) {
			size_t n;
			uint8_t *f = slurp(p, &n);
			int sel = -1;
			for (int t = 0; t < 3; t++)
				if (!strcmp(nm, table[t]))
					sel = t == 0 ? 9 : t == 1 ? 11 : 12; /* fuzz_dest.c's names[] */
			size_t nl = sel < 0 ? 1 + strlen(nm) : 0;
			if (n + nl > 65535 || o + 3 + nl + n > cap)
				die("dest seed too large");
			s[o] = (uint8_t)(sel < 0 ? 0x3f : sel);
			st16(s + o + 1, (uint16_t)(n + nl));
			o += 3;
			if (nl) {
				s[o] = (uint8_t)(nl - 1);
				memcpy(s + o + 1, nm, nl - 1);
				o += nl;
			}
			memcpy(s + o, f, n);
			o += n;
			free(f);
		}
		free(list[i]);
	}
	free(list);
	seed("dest", name, ctl, s, o, NULL, 0);
	free(s);
}

static void vector_seeds(const char *vec)
{
	static const struct {
		const char *dir, *glob;
	} files[] = {
		{ "valid/tail", "_full0000_a7da2e0c" },
		{ "valid/tail", "_incr0001_2f2bfa70" },
		{ "valid/chain1", "_incr0001_bd63c5e3" },
	};
	char p[4096];
	for (unsigned i = 0; i < sizeof files / sizeof files[0]; i++)
		for (int img = 0; img < 2; img++) {
			snprintf(p, sizeof p, "%s/%s/vectorhost_disk.img_vec_20261122T044817Z%s.%s", vec, files[i].dir,
				 files[i].glob, img ? "cbi" : "cbx");
			size_t n;
			uint8_t *f = slurp(p, &n);
			char name[64];
			snprintf(name, sizeof name, "vec%u-%s", i, img ? "cbi" : "cbx");
			header_seed(name, f, n);
			seed(img ? "image" : "index", name, FZ_DIGEST, f, n, NULL, 0);
			free(f);
		}
}

/* valid/rescue (revision 2.5): its index files, which carry bad-range maps;
 * their names hold the time they were made, so they are found by glob. */
static void rescue_seeds(const char *vec)
{
	char pat[4096];
	glob_t g;
	snprintf(pat, sizeof pat, "%s/valid/rescue/*.cbx", vec);
	if (glob(pat, 0, NULL, &g))
		return;
	for (size_t i = 0; i < g.gl_pathc; i++) {
		size_t n;
		uint8_t *f = slurp(g.gl_pathv[i], &n);
		char name[64];
		snprintf(name, sizeof name, "rescue%zu-cbx", i);
		header_seed(name, f, n);
		seed("index", name, FZ_DIGEST, f, n, NULL, 0);
		free(f);
	}
	globfree(&g);
}

static void gen_points(const char *tmp)
{
	static const struct {
		const char *name;
		unsigned how;
	} kinds[] = { { "enc", P_ENC },	  { "sha", P_SHA },	  { "used", P_USED },
		      { "encsha", P_ENC | P_SHA }, { "runs", P_RUNS }, { "encruns", P_ENC | P_RUNS } };
	char dir[2048], p[4096];
	for (unsigned i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		snprintf(dir, sizeof dir, "%s/%s", tmp, kinds[i].name);
		mkdir(dir, 0700);
		mk_point(dir, "p", kinds[i].how, (kinds[i].how & P_RUNS ? 40 : 5) * 4096 + 1000, (uint8_t)(0x10 * i));
		uint8_t ctl = kinds[i].how & P_ENC ? FZ_KEYED | FZ_DIGEST : FZ_DIGEST;
		for (int img = 0; img < 2; img++) {
			snprintf(p, sizeof p, "%s/p.%s", dir, img ? "cbi" : "cbx");
			size_t n;
			uint8_t *f = slurp(p, &n);
			char name[64];
			snprintf(name, sizeof name, "%s-%s", kinds[i].name, img ? "cbi" : "cbx");
			header_seed(name, f, n);
			seed(img ? "image" : "index", name, ctl, f, n, NULL, 0);
			free(f);
		}
	}
	/* a key file of the encrypted chain, and a DEST of it with a catalog
	 * and a run log */
	snprintf(dir, sizeof dir, "%s/enc", tmp);
	uint8_t cid[16];
	for (int i = 0; i < 16; i++)
		cid[i] = (uint8_t)(0xd0 + i);
	snprintf(p, sizeof p, "%s/h_d_j_key_d0d1d2d3.cbk", dir);
	mk_keyfile(p, cid);
	size_t n;
	uint8_t *f = slurp(p, &n);
	seed("keyfile", "kdf10", 0, f, n, NULL, 0);
	seed("keyfile", "kdf10-fix", FZ_FIX_HDR, f, n, NULL, 0);
	free(f);
	dest_seed("enc-nocat", dir, 0);
	cbi_error err;
	cbi_catalog_stats st;
	int64_t run = 0;
	cbi_backup_result res;
	memset(&res, 0, sizeof res);
	if (cbi_catalog_sync(dir, 0, &st, &err) || cbi_catalog_run_begin(dir, "h", "fuzz:d", "/dev/d", "j", &run, &err) ||
	    cbi_catalog_run_end(dir, run, -EIO, "unable to read", &res, &err))
		die(err.msg);
	dest_seed("enc-cat", dir, FZ_FIX_HDR);
	dest_seed("enc-cat-rebuild", dir, FZ_FIX_HDR | 0x30);
	snprintf(dir, sizeof dir, "%s/sha", tmp);
	if (cbi_runlog_begin(dir, "h", "fuzz:d", "/dev/d", "j", &run, &err) ||
	    cbi_runlog_end(dir, run, CBI_RUN_FAILED, "no space", &res, 0, &err) ||
	    cbi_runlog_begin(dir, "h", "fuzz:d", "/dev/d", "j", &run, &err))
		die(err.msg);
	dest_seed("sha-runlog", dir, 0x40);

	/* split sets: an image of 2.5 MiB and its index (one segment) */
	snprintf(dir, sizeof dir, "%s/split", tmp);
	mkdir(dir, 0700);
	mk_point(dir, "p", P_SPLIT, (5u << 19) + 10, 0x70);
	snprintf(p, sizeof p, "%s/p.cbi", dir);
	static const uint8_t plain[] = { 0, 0, 0 }, odd[] = { 4, 5, 7 }, bad[] = { 0, 0x08, 0x10 };
	segments_seed("img3", p, plain, 3, FZ_DIGEST);
	segments_seed("img3-kinds", p, odd, 3, 0);
	segments_seed("img3-sizes", p, bad, 3, 0);
	snprintf(p, sizeof p, "%s/p.cbx", dir);
	segments_seed("idx1", p, plain, 0, FZ_DIGEST);
	/* many segments: the reader keeps 8 open */
	snprintf(dir, sizeof dir, "%s/split10", tmp);
	mkdir(dir, 0700);
	mk_point(dir, "p", P_SPLIT, 19u << 19, 0x80);
	snprintf(p, sizeof p, "%s/p.cbi", dir);
	segments_seed("img10", p, plain, 0, 0);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: gen_seeds CORPUS_DIR VECTORS_DIR\n");
		return 2;
	}
	corpus = argv[1];
	mkdir(corpus, 0755);
	char tmp[] = "/tmp/cbimg-gen-seeds.XXXXXX";
	if (!mkdtemp(tmp))
		die("mkdtemp");
	vector_seeds(argv[2]);
	rescue_seeds(argv[2]);
	gen_points(tmp);
	/* the DEST of the vectors' short chain, as a backup leaves it */
	char p[4096];
	snprintf(p, sizeof p, "%s/valid/tail", argv[2]);
	dest_seed("vec-tail", p, 0);
	fz_rm_tree(tmp, 1);
	return 0;
}
