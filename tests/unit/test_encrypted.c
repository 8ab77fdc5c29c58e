/* test_encrypted.c - encrypted chains through the public API: backup
 * (full and incremental), restore and verify with the passphrase; wrong or
 * missing passphrases; nothing of the source's contents in DEST; an altered
 * record; cbi_passwd; SHA-256/128 block hashes. scrypt runs at N = 2^10,
 * r = 8, p = 1 to keep the tests fast. The local state lives in the
 * fixture's directory (restore would otherwise look in /var/lib/cbimg). */
#include "testutil.h"

#include <openssl/evp.h>
#include <xxhash.h>

#include "crypto.h"
#include "format.h"
#include "image.h"
#include "index.h"
#include "keyfile.h"
#include "chain.h"
#include "util.h"

#define BS 4096u
#define NBLK 49u
#define SIZE (48u * BS + 1000u) /* the last block 1000 bytes */
#define PASS "correct horse battery staple"
#define MARKER "PLAINTEXT-MARKER-cbimg-6d1f0a9e"

typedef struct enc_fix {
	char dir[256];
	char src[4096];
	char dest[4096];
	char out[4096];
	char state[4096];  /* an empty state directory for restore */
	uint8_t *data;     /* the source's current bytes */
} enc_fix;

static int is_zero_v0(uint64_t i) { return i >= 10 && i < 14; }
static int is_random_v0(uint64_t i) { return i >= 20 && i < 24; }

static void put_block(enc_fix *f, uint64_t i, uint64_t seed)
{
	uint32_t len = cbi_block_len(SIZE, BS, i);
	tu_fill_text(f->data + i * BS, len, seed);
	tu_pwrite(f->src, f->data + i * BS, len, (off_t)(i * BS));
}

static int setup_enc(void **state)
{
	enc_fix *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	*state = f;
	tu_mkdtemp(f->dir, sizeof f->dir);
	snprintf(f->src, sizeof f->src, "%s/disk.img", f->dir);
	snprintf(f->dest, sizeof f->dest, "%s/dest", f->dir);
	snprintf(f->out, sizeof f->out, "%s/restored.img", f->dir);
	snprintf(f->state, sizeof f->state, "%s/state", f->dir);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	assert_int_equal(mkdir(f->state, 0700), 0);
	f->data = calloc(1, SIZE);
	assert_non_null(f->data);
	for (uint64_t i = 0; i < NBLK; i++) {
		uint8_t *b = f->data + i * BS;
		uint32_t len = cbi_block_len(SIZE, BS, i);
		if (is_zero_v0(i))
			continue;
		if (is_random_v0(i))
			tu_fill_random(b, len, i); /* stored raw in a plain chain */
		else
			tu_fill_text(b, len, i);
	}
	/* the marker in a raw block and in a compressible one */
	memcpy(f->data + 20 * BS + 100, MARKER, strlen(MARKER));
	memcpy(f->data + 2 * BS + 50, MARKER, strlen(MARKER));
	tu_write_file(f->src, f->data, SIZE);
	return 0;
}

static int teardown_enc(void **state)
{
	enc_fix *f = *state;
	if (f) {
		tu_rm_rf(f->dir);
		free(f->data);
		free(f);
	}
	return 0;
}

/* A check of a bug found and fixed (U1: a plain point on an encrypted
 * chain, U2: unbounded scrypt costs, U3: writing through a planted
 * temporary, U4: header bytes outside the MAC): it fails, naming the bug,
 * should the bug come back. */
static void known_bug(const char *id, const char *what)
{
	fail_msg("[%s] %s", id, what);
}

/* ------------------------------------------------------ passphrases */

typedef struct pass_cb {
	const char *pw;   /* NULL: no passphrase (-CBI_EPASS) */
	int calls;
	int confirms;     /* calls with confirm = 1 */
} pass_cb;

static int give_pass(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	pass_cb *p = ud;
	p->calls++;
	p->confirms += confirm != 0;
	assert_non_null(what);
	if (!p->pw)
		return -CBI_EPASS;
	size_t n = strlen(p->pw);
	assert_true(n < bufsz);
	memcpy(buf, p->pw, n + 1);
	return (int)n;
}

static cbi_backup_opts enc_opts(enc_fix *f, pass_cb *cb)
{
	cbi_backup_opts o = tu_bopts(f->src, f->dest);
	o.encrypt = 1;
	o.kdf = (cbi_kdf_params){ 12, 8, 1 };
	o.pass = cb ? give_pass : NULL;
	o.pass_ud = cb;
	return o;
}

static int backup(const cbi_backup_opts *o, cbi_backup_result *r, cbi_error *e)
{
	memset(e, 0, sizeof *e);
	memset(r, 0, sizeof *r);
	return cbi_backup(o, r, e);
}

static void backup_ok(const cbi_backup_opts *o, cbi_backup_result *r)
{
	cbi_error e;
	int rc = backup(o, r, &e);
	if (rc)
		fail_msg("cbi_backup = %d: %s", rc, e.msg);
}

static int restore(enc_fix *f, const char *point, pass_cb *cb, cbi_error *e)
{
	cbi_restore_opts o;
	cbi_restore_result r;
	memset(&o, 0, sizeof o);
	memset(e, 0, sizeof *e);
	o.point = point;
	o.target = f->out;
	o.force = 1;
	o.threads = 2;
	o.pass = cb ? give_pass : NULL;
	o.pass_ud = cb;
	o.state_dir = f->state;
	unlink(f->out);
	return cbi_restore(&o, &r, e);
}

static void restore_equals(enc_fix *f, const char *point, pass_cb *cb, const uint8_t *want)
{
	cbi_error e;
	int rc = restore(f, point, cb, &e);
	if (rc)
		fail_msg("cbi_restore(%s) = %d: %s", point, rc, e.msg);
	if (!tu_file_equals(f->out, want, SIZE))
		fail_msg("restore of '%s' differs from the source", point);
}

/* ---------------------------------------------------------- verify */

typedef struct findings {
	char lines[32][1200];
	int n;
	int64_t blocks[32];
} findings;

static void on_problem(void *ud, const char *file, int64_t block, const char *problem)
{
	findings *fs = ud;
	if (fs->n < 32) {
		snprintf(fs->lines[fs->n], sizeof fs->lines[0], "%.500s: block %lld: %.600s", file, (long long)block,
			 problem);
		fs->blocks[fs->n] = block;
		fs->n++;
	}
}

static int verify(const char *path, pass_cb *cb, findings *fs, cbi_verify_result *r, cbi_error *e)
{
	memset(fs, 0, sizeof *fs);
	memset(e, 0, sizeof *e);
	cbi_verify_opts o = { .fn = on_problem, .ud = fs, .pass = cb ? give_pass : NULL, .pass_ud = cb,
			      .no_state = 1 };
	return cbi_verify(path, &o, r, e);
}

static void verify_clean(const char *path, pass_cb *cb)
{
	findings fs;
	cbi_verify_result r;
	cbi_error e;
	int rc = verify(path, cb, &fs, &r, &e);
	for (int i = 0; i < fs.n; i++)
		print_message("  finding: %s\n", fs.lines[i]);
	if (rc || r.problems)
		fail_msg("cbi_verify(%s) = %d (%s), %llu problems", path, rc, e.msg, (unsigned long long)r.problems);
	assert_true(r.blocks_checked > 0);
	assert_true(r.files_checked >= 2);
}

/* ------------------------------------------------------- DEST files */

/* Every entry of DEST: name and, except for the catalog (whose run
 * history changes with every run, failed ones too), its bytes. */
typedef struct snap {
	int n;
	char names[32][256];
	uint8_t *bytes[32];
	size_t len[32];
} snap;

static int is_catalog(const char *name) { return !strncmp(name, "cbimg-catalog.sqlite", 20); }

static int cmp_name(const void *a, const void *b) { return strcmp(a, b); }

static void snap_take(const char *dir, snap *s)
{
	memset(s, 0, sizeof *s);
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		assert_true(s->n < 32);
		cbi_strlcpy(s->names[s->n++], de->d_name, sizeof s->names[0]);
	}
	closedir(d);
	qsort(s->names, (size_t)s->n, sizeof s->names[0], cmp_name);
	for (int i = 0; i < s->n; i++)
		if (!is_catalog(s->names[i]))
			s->bytes[i] = tu_read_file(tu_path(dir, s->names[i]), &s->len[i]);
}

static void snap_free(snap *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->bytes[i]);
}

static void snap_assert_same(const snap *a, const snap *b)
{
	if (a->n != b->n) {
		for (int i = 0; i < b->n; i++)
			print_message("  now: %s\n", b->names[i]);
		fail_msg("DEST had %d entries, now %d", a->n, b->n);
	}
	for (int i = 0; i < a->n; i++) {
		assert_string_equal(a->names[i], b->names[i]);
		if (is_catalog(a->names[i]))
			continue;
		if (a->len[i] != b->len[i] || memcmp(a->bytes[i], b->bytes[i], a->len[i]))
			fail_msg("'%s' changed", a->names[i]);
	}
}

/* Does any file of dir hold needle? Names the first in *where. */
static int dir_contains(const char *dir, const void *needle, size_t n, char *where, size_t wsz)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	int found = 0;
	while (!found && (de = readdir(d))) {
		const char *p = tu_path(dir, de->d_name);
		struct stat st;
		if (lstat(p, &st) || !S_ISREG(st.st_mode))
			continue;
		size_t len;
		uint8_t *b = tu_read_file(p, &len);
		if (memmem(b, len, needle, n)) {
			found = 1;
			if (where)
				snprintf(where, wsz, "%s", de->d_name);
		}
		free(b);
	}
	closedir(d);
	return found;
}

/* Unwrap the chain's key file with the passphrase. */
static void chain_keys(const char *key_file, const char *pass, cbi_keys *k)
{
	cbi_keyfile kf;
	cbi_error e;
	assert_int_equal(cbi_keyfile_read(key_file, &kf, &e), 0);
	assert_int_equal(cbi_keyfile_unwrap(&kf, pass, strlen(pass), k), 0);
}

static uint32_t hdr_u32(const char *file, size_t off)
{
	uint8_t b[CBI_HDR_SIZE];
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, sizeof b, 0), (ssize_t)sizeof b);
	close(fd);
	return ld32(b + off);
}

/* ------------------------------------------------------------ tests */

static void test_full_incremental_restore_verify(void **state)
{
	enc_fix *f = *state;
	pass_cb cb = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &cb);
	cbi_backup_result r0, r1, r2;
	backup_ok(&o, &r0);
	assert_int_equal(cb.calls, 1);
	assert_int_equal(cb.confirms, 1); /* a new passphrase: asked with confirmation */
	assert_true(r0.point.encrypted);
	assert_int_equal(r0.point.hash_alg, CBI_HASH_XXH3_128);
	assert_int_equal(r0.point.type, CBI_FULL);
	assert_true(r0.key_file_new);
	assert_true(tu_exists(r0.key_file));
	assert_true(tu_file_size(r0.key_file) == CBI_KF_SIZE);
	assert_true(r0.blocks_changed == NBLK - 4);
	assert_true(r0.blocks_zero == 4);
	assert_int_equal(tu_count(f->dest, ".cbk", 0), 1);
	/* version 2, flags: encrypted */
	assert_int_equal(hdr_u32(r0.point.index_file, 8), 2);
	assert_int_equal(hdr_u32(r0.point.index_file, 16), CBI_HDR_ENCRYPTED);
	assert_int_equal(hdr_u32(r0.point.file, 8), 2);
	assert_int_equal(hdr_u32(r0.point.file, 16), CBI_HDR_ENCRYPTED);
	assert_int_equal(hdr_u32(r0.point.file, 24), CBI_HASH_XXH3_128);
	uint8_t *v0 = malloc(SIZE);
	assert_non_null(v0);
	memcpy(v0, f->data, SIZE);

	/* every record sealed; every index hash keyed */
	cbi_keys k;
	chain_keys(r0.key_file, PASS, &k);
	cbi_image *m = NULL;
	assert_int_equal(cbi_image_open(r0.point.file, &m, NULL), 0);
	assert_true(m->trl.record_count == NBLK - 4);
	for (uint64_t i = 0; i < m->trl.record_count; i++) {
		cbi_tab_ent te;
		assert_int_equal(cbi_image_table_get(m, i, &te), 0);
		assert_true(te.flags & CBI_REC_AEAD);
	}
	cbi_image_close(m);
	cbi_index *x = NULL;
	assert_int_equal(cbi_index_open(r0.point.index_file, &x, NULL), 0);
	assert_int_equal(cbi_index_check_digest(x), -CBI_ENOKEY); /* not without the keys */
	assert_int_equal(cbi_index_set_keys(x, &k), 0);
	assert_int_equal(cbi_index_check_digest(x), 0);
	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	cbi_hashspec hs = { .alg = CBI_HASH_XXH3_128, .keyed = 1 };
	memcpy(hs.key, k.hash_key, 32);
	for (uint64_t i = 0; i < NBLK; i++) {
		cbi_idx_ent e;
		assert_int_equal(cbi_index_get(x, i, &e), 0);
		if (is_zero_v0(i)) {
			assert_int_equal(e.flags, CBI_IDX_ZERO);
			continue;
		}
		uint8_t want[16];
		assert_int_equal(
			cbi_hash_block_spec(&hs, cx, f->data + i * BS, cbi_block_len(SIZE, BS, i), want), 0);
		assert_memory_equal(e.hash, want, 16);
	}
	cbi_index_close(x);
	cbi_cx_free(cx);
	cbi_keys_wipe(&k);

	/* an incremental: 3 blocks changed, one zero block filled */
	put_block(f, 1, 101);
	put_block(f, 11, 111);
	put_block(f, 48, 148);
	cb.calls = cb.confirms = 0;
	o.kdf = (cbi_kdf_params){ 0, 0, 0 }; /* the chain's key file decides now */
	backup_ok(&o, &r1);
	assert_int_equal(cb.calls, 1);
	assert_int_equal(cb.confirms, 0);
	assert_int_equal(r1.point.seq, 1);
	assert_true(r1.point.encrypted);
	assert_false(r1.key_file_new);
	assert_string_equal(r1.key_file, r0.key_file);
	assert_true(r1.blocks_changed == 3);
	assert_true(r1.blocks_stored == 3);
	assert_memory_equal(r1.point.chain_id, r0.point.chain_id, 16);
	assert_int_equal(tu_count(f->dest, ".cbk", 0), 1);

	/* an incremental without changes */
	backup_ok(&o, &r2);
	assert_true(r2.blocks_changed == 0);

	cb.calls = 0;
	restore_equals(f, r0.point.index_file, &cb, v0);
	assert_int_equal(cb.calls, 1);
	restore_equals(f, r1.point.file, &cb, f->data);
	restore_equals(f, r2.point.index_file, &cb, f->data);

	/* verify: the directory, and one point (with its ancestors) */
	cb.calls = 0;
	verify_clean(f->dest, &cb);
	assert_int_equal(cb.calls, 1); /* once per chain and run */
	verify_clean(r1.point.index_file, &cb);
	free(v0);
}

/* Wrong, missing or empty passphrases: -CBI_EPASS from backup, restore and
 * verify; a failed backup adds nothing to DEST and changes no file. */
static void test_wrong_or_no_passphrase(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS }, bad = { .pw = "wrong" }, none = { .pw = NULL }, empty = { .pw = "" };
	cbi_backup_opts o = enc_opts(f, NULL);
	cbi_backup_result r, r0;
	cbi_error e;

	/* a new chain needs a passphrase: nothing is written without one */
	snap s0, s1;
	snap_take(f->dest, &s0);
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	assert_int_equal(e.code, -CBI_EPASS);
	o.pass = give_pass;
	o.pass_ud = &none;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	o.pass_ud = &empty;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	assert_int_equal(tu_count(f->dest, ".cbk", -1), 0);
	assert_int_equal(tu_count(f->dest, ".cbi", -1), 0);
	assert_int_equal(tu_count(f->dest, ".cbx", -1), 0);
	snap_free(&s0);

	o.pass_ud = &good;
	backup_ok(&o, &r0);
	put_block(f, 3, 303);

	snap_take(f->dest, &s0);
	o.pass_ud = &bad;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	assert_int_equal(bad.calls, 1);
	assert_non_null(strstr(e.msg, "passphrase"));
	o.pass = NULL;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	o.pass = give_pass;
	o.pass_ud = &none;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	/* --encrypt is for new chains, but a plain incremental of an encrypted
	 * chain still needs the passphrase */
	o.encrypt = 0;
	o.pass_ud = &bad;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	snap_take(f->dest, &s1);
	snap_assert_same(&s0, &s1);
	snap_free(&s1);

	assert_int_equal(restore(f, r0.point.index_file, &bad, &e), -CBI_EPASS);
	assert_int_equal(e.code, -CBI_EPASS);
	assert_false(tu_exists(f->out));
	assert_int_equal(restore(f, r0.point.index_file, &none, &e), -CBI_EPASS);
	assert_int_equal(restore(f, r0.point.file, NULL, &e), -CBI_EPASS);
	assert_false(tu_exists(f->out));
	assert_int_equal(tu_count(f->dir, ".tmp", -1), 0);

	findings fs;
	cbi_verify_result vr;
	assert_int_equal(verify(f->dest, &bad, &fs, &vr, &e), -CBI_EPASS);
	assert_int_equal(e.code, -CBI_EPASS);
	assert_int_equal(verify(r0.point.index_file, &bad, &fs, &vr, &e), -CBI_EPASS);
	assert_int_equal(verify(f->dest, NULL, &fs, &vr, &e), -CBI_EPASS);
	snap_take(f->dest, &s1);
	snap_assert_same(&s0, &s1);
	snap_free(&s1);
	snap_free(&s0);

	/* and the right one still works */
	o.pass_ud = &good;
	backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 1);
	restore_equals(f, r.point.index_file, &good, f->data);
}

/* Without its key file a chain cannot be opened: -CBI_ENOKEY. */
static void test_missing_key_file(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0;
	cbi_error e;
	backup_ok(&o, &r0);
	char kp[4096];
	snprintf(kp, sizeof kp, "%s", r0.key_file);
	char moved[4096];
	snprintf(moved, sizeof moved, "%s/keep.cbk", f->dir);
	assert_int_equal(rename(kp, moved), 0);
	good.calls = 0;
	assert_int_equal(restore(f, r0.point.index_file, &good, &e), -CBI_ENOKEY);
	assert_int_equal(good.calls, 0);
	findings fs;
	cbi_verify_result vr;
	int rc = verify(f->dest, &good, &fs, &vr, &e);
	assert_true(rc != 0);
	/* back under any name ending in .cbk: found by content */
	snprintf(kp, sizeof kp, "%s", tu_path(f->dest, "any-name.cbk"));
	assert_int_equal(rename(moved, kp), 0);
	restore_equals(f, r0.point.index_file, &good, f->data);
	verify_clean(f->dest, &good);
}

/* Nothing of the source's contents is in DEST: neither a marker string
 * (in a raw and in a compressible block) nor the plain XXH3-128 or
 * SHA-256 of any block, nor the data key. Positive controls: the same
 * searches find the marker and the hashes in a plain chain, and the keyed
 * hashes in the encrypted one. */
static void test_nothing_in_clear(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0, r1;
	backup_ok(&o, &r0);
	put_block(f, 5, 505);
	memcpy(f->data + 5 * BS + 7, MARKER, strlen(MARKER));
	tu_pwrite(f->src, f->data + 5 * BS, BS, 5 * BS);
	backup_ok(&o, &r1);
	assert_true(r1.blocks_changed == 1);

	char plain[4096], where[256];
	snprintf(plain, sizeof plain, "%s/plain", f->dir);
	assert_int_equal(mkdir(plain, 0755), 0);
	cbi_backup_opts po = tu_bopts(f->src, plain);
	tu_backup_ok(&po, &r1);
	assert_true(dir_contains(plain, MARKER, strlen(MARKER), NULL, 0));

	if (dir_contains(f->dest, MARKER, strlen(MARKER), where, sizeof where))
		fail_msg("the marker is in clear in '%s'", where);
	/* nor a shorter piece of it */
	if (dir_contains(f->dest, MARKER + 10, 12, where, sizeof where))
		fail_msg("12 bytes of the marker are in clear in '%s'", where);

	cbi_keys k;
	chain_keys(r0.key_file, PASS, &k);
	if (dir_contains(f->dest, k.dk, 32, where, sizeof where) || dir_contains(f->dest, k.dk, 8, where, sizeof where))
		fail_msg("the data key is in clear in '%s'", where);
	if (dir_contains(f->dest, k.mac_key, 16, where, sizeof where) ||
	    dir_contains(f->dest, k.hash_key, 16, where, sizeof where))
		fail_msg("a derived key is in clear in '%s'", where);

	cbi_cx *cx = cbi_cx_new();
	assert_non_null(cx);
	cbi_hashspec keyed = { .alg = CBI_HASH_XXH3_128, .keyed = 1 };
	memcpy(keyed.key, k.hash_key, 32);
	int keyed_found = 0;
	for (uint64_t i = 0; i < NBLK; i++) {
		const uint8_t *b = f->data + i * BS;
		uint32_t len = cbi_block_len(SIZE, BS, i);
		if (cbi_is_zero(b, len))
			continue;
		uint8_t h[16], s[32];
		cbi_block_hash(b, len, h);
		assert_true(dir_contains(plain, h, 16, NULL, 0));
		if (dir_contains(f->dest, h, 16, where, sizeof where))
			fail_msg("the XXH3-128 of block %llu is in '%s'", (unsigned long long)i, where);
		if (dir_contains(f->dest, h, 8, where, sizeof where))
			fail_msg("half the XXH3-128 of block %llu is in '%s'", (unsigned long long)i, where);
		EVP_Digest(b, len, s, NULL, EVP_sha256(), NULL);
		if (dir_contains(f->dest, s, 16, where, sizeof where))
			fail_msg("the SHA-256 of block %llu is in '%s'", (unsigned long long)i, where);
		assert_int_equal(cbi_hash_block_spec(&keyed, cx, b, len, h), 0);
		keyed_found += dir_contains(f->dest, h, 16, NULL, 0);
	}
	assert_int_equal(keyed_found, NBLK - 4);
	cbi_cx_free(cx);
	cbi_keys_wipe(&k);
}

/* One byte changed in a record's payload (and, separately, in its tag):
 * verify names the block, restore stops with a damage code and writes no
 * target. */
static void test_altered_record(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0;
	backup_ok(&o, &r0);
	static const uint64_t blocks[] = { 21, 7 }; /* a raw record, a compressed one */
	static const int in_tag[] = { 0, 1 };
	for (size_t t = 0; t < 2; t++) {
		uint64_t blk = blocks[t];
		cbi_image *m = NULL;
		cbi_tab_ent te;
		assert_int_equal(cbi_image_open(r0.point.file, &m, NULL), 0);
		assert_int_equal(cbi_image_find(m, blk, &te), 0);
		cbi_image_close(m);
		assert_true(te.stored_len > CBI_TAG_LEN + 8);
		uint64_t off = te.offset + CBI_REC_HDR_SIZE + (in_tag[t] ? te.stored_len - 3 : te.stored_len / 2);
		tu_flip_byte(r0.point.file, off, 0x04);

		findings fs;
		cbi_verify_result vr;
		cbi_error e;
		int rc = verify(f->dest, &good, &fs, &vr, &e);
		assert_int_not_equal(rc, 0);
		assert_true(vr.problems >= 1);
		int named = 0;
		for (int i = 0; i < fs.n; i++) {
			print_message("  finding: %s\n", fs.lines[i]);
			if (fs.blocks[i] == (int64_t)blk && strstr(fs.lines[i], r0.point.file))
				named = 1;
			/* no other block is blamed */
			assert_true(fs.blocks[i] == -1 || fs.blocks[i] == (int64_t)blk);
		}
		assert_true(named);

		rc = restore(f, r0.point.index_file, &good, &e);
		print_message("  restore: %d %s\n", rc, e.msg);
		assert_true(rc < 0);
		assert_true(cbi_is_damage(rc));
		char want[64];
		snprintf(want, sizeof want, "block %llu", (unsigned long long)blk);
		assert_non_null(strstr(e.msg, want));
		assert_false(tu_exists(f->out));

		tu_flip_byte(r0.point.file, off, 0x04);
		verify_clean(f->dest, &good);
	}
}

/* cbi_passwd: the old passphrase stops working, the new one works, and no
 * image or index file changes. */
static void test_passwd(void **state)
{
	enc_fix *f = *state;
	pass_cb oldp = { .pw = PASS }, newp = { .pw = "new passphrase 2" }, bad = { .pw = "bad" };
	cbi_backup_opts o = enc_opts(f, &oldp);
	cbi_backup_result r0, r1;
	cbi_error e;
	backup_ok(&o, &r0);
	put_block(f, 4, 404);
	backup_ok(&o, &r1);
	snap s0, s1;
	snap_take(f->dest, &s0);
	size_t kl;
	uint8_t *k0 = tu_read_file(r0.key_file, &kl);

	cbi_passwd_opts po = { .path = r0.key_file, .pass = give_pass, .pass_ud = &bad, .new_pass = give_pass,
			       .new_pass_ud = &newp, .kdf = { 12, 8, 1 }, .no_state = 1 };
	cbi_passwd_result pr;
	memset(&e, 0, sizeof e);
	assert_int_equal(cbi_passwd(&po, &pr, &e), -CBI_EPASS);
	assert_int_equal(newp.calls, 0); /* not asked for a new one */
	assert_true(tu_file_equals(r0.key_file, k0, kl));
	po.pass = NULL;
	assert_int_equal(cbi_passwd(&po, &pr, &e), -CBI_EPASS);
	/* an empty new passphrase is refused */
	po.pass = give_pass;
	po.pass_ud = &oldp;
	pass_cb empty = { .pw = "" };
	po.new_pass_ud = &empty;
	assert_int_equal(cbi_passwd(&po, &pr, &e), -CBI_EPASS);
	assert_true(tu_file_equals(r0.key_file, k0, kl));

	po.new_pass_ud = &newp;
	memset(&e, 0, sizeof e);
	int rc = cbi_passwd(&po, &pr, &e);
	if (rc)
		fail_msg("cbi_passwd = %d: %s", rc, e.msg);
	assert_int_equal(pr.rewrapped, 1);
	assert_int_equal(pr.skipped, 0);
	assert_string_equal(pr.first, r0.key_file);
	assert_int_equal(newp.confirms, 1);
	assert_false(tu_file_equals(r0.key_file, k0, kl));
	struct stat st;
	assert_int_equal(stat(r0.key_file, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	/* image and index files byte-identical, nothing added or removed */
	snap_take(f->dest, &s1);
	assert_int_equal(s0.n, s1.n);
	for (int i = 0; i < s0.n; i++) {
		assert_string_equal(s0.names[i], s1.names[i]);
		if (cbi_has_ext(s0.names[i], ".cbi") || cbi_has_ext(s0.names[i], ".cbx"))
			assert_true(s0.len[i] == s1.len[i] && !memcmp(s0.bytes[i], s1.bytes[i], s0.len[i]));
	}
	snap_free(&s1);
	snap_free(&s0);
	/* the same data key */
	cbi_keys ka, kb;
	cbi_keyfile kf;
	assert_int_equal(cbi_keyfile_decode(k0, &kf), 0);
	assert_int_equal(cbi_keyfile_unwrap(&kf, PASS, strlen(PASS), &ka), 0);
	chain_keys(r0.key_file, newp.pw, &kb);
	assert_memory_equal(&ka, &kb, sizeof ka);
	cbi_keys_wipe(&ka);
	cbi_keys_wipe(&kb);
	free(k0);

	findings fs;
	cbi_verify_result vr;
	assert_int_equal(restore(f, r1.point.index_file, &oldp, &e), -CBI_EPASS);
	assert_int_equal(verify(f->dest, &oldp, &fs, &vr, &e), -CBI_EPASS);
	o.pass_ud = &oldp;
	cbi_backup_result r2;
	assert_int_equal(backup(&o, &r2, &e), -CBI_EPASS);
	restore_equals(f, r1.point.index_file, &newp, f->data);
	verify_clean(f->dest, &newp);
	o.pass_ud = &newp;
	backup_ok(&o, &r2);
	assert_int_equal(r2.point.seq, 2);

	/* back again, naming the chain by one of its index files */
	cbi_passwd_opts po2 = { .path = r2.point.index_file, .pass = give_pass, .pass_ud = &newp,
				.new_pass = give_pass, .new_pass_ud = &oldp, .kdf = { 12, 8, 1 }, .no_state = 1 };
	rc = cbi_passwd(&po2, &pr, &e);
	if (rc)
		fail_msg("cbi_passwd = %d: %s", rc, e.msg);
	assert_int_equal(pr.rewrapped, 1);
	restore_equals(f, r2.point.file, &oldp, f->data);
	assert_int_equal(restore(f, r2.point.file, &newp, &e), -CBI_EPASS);
}

/* SHA-256/128 block hashes, plain and encrypted: version 2, hash_alg 2;
 * backup, incremental, restore and verify work. */
static void test_sha256_chains(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	for (int enc = 0; enc < 2; enc++) {
		char dest[4096];
		snprintf(dest, sizeof dest, "%s/sha%d", f->dir, enc);
		assert_int_equal(mkdir(dest, 0755), 0);
		cbi_backup_opts o = enc_opts(f, &good);
		o.dest = dest;
		o.encrypt = enc;
		o.hash_alg = CBI_HASH_SHA256_128;
		uint8_t *v0 = malloc(SIZE);
		assert_non_null(v0);
		memcpy(v0, f->data, SIZE);
		cbi_backup_result r0, r1;
		backup_ok(&o, &r0);
		assert_int_equal(r0.point.hash_alg, CBI_HASH_SHA256_128);
		assert_int_equal(r0.point.encrypted, enc);
		assert_int_equal(hdr_u32(r0.point.index_file, 8), 2);
		assert_int_equal(hdr_u32(r0.point.index_file, 24), 2);
		assert_int_equal(hdr_u32(r0.point.file, 24), 2);

		/* the index holds SHA-256/128, keyed when encrypted */
		cbi_keys k;
		memset(&k, 0, sizeof k);
		if (enc)
			chain_keys(r0.key_file, PASS, &k);
		cbi_index *x = NULL;
		assert_int_equal(cbi_index_open(r0.point.index_file, &x, NULL), 0);
		uint8_t s[32], want[16];
		cbi_idx_ent ie;
		assert_int_equal(cbi_index_get(x, 7, &ie), 0);
		EVP_Digest(f->data + 7 * BS, BS, s, NULL, EVP_sha256(), NULL);
		if (enc) {
			cbi_cx *cx = cbi_cx_new();
			cbi_hashspec hs = { .alg = CBI_HASH_SHA256_128, .keyed = 1 };
			memcpy(hs.key, k.hash_key, 32);
			assert_int_equal(cbi_hash_block_spec(&hs, cx, f->data + 7 * BS, BS, want), 0);
			cbi_cx_free(cx);
			assert_memory_not_equal(want, s, 16);
		} else {
			memcpy(want, s, 16);
		}
		assert_memory_equal(ie.hash, want, 16);
		cbi_index_close(x);
		cbi_keys_wipe(&k);

		put_block(f, 30, 3000 + (uint64_t)enc);
		put_block(f, 12, 1200 + (uint64_t)enc);
		o.hash_alg = 0; /* the chain keeps its hash */
		backup_ok(&o, &r1);
		assert_int_equal(r1.point.hash_alg, CBI_HASH_SHA256_128);
		assert_true(r1.blocks_changed == 2);
		restore_equals(f, r0.point.file, &good, v0);
		restore_equals(f, r1.point.file, &good, f->data);
		verify_clean(dest, &good);
		/* XXH3 requested for a SHA-256 chain: a warning, the chain's hash */
		o.hash_alg = CBI_HASH_XXH3_128;
		backup_ok(&o, &r1);
		assert_int_equal(r1.point.hash_alg, CBI_HASH_SHA256_128);
		assert_int_equal(hdr_u32(r1.point.index_file, 24), 2);
		assert_string_not_equal(r1.warning, "");
		verify_clean(dest, &good);
		free(v0);
	}
	/* an unknown algorithm */
	cbi_backup_opts o = enc_opts(f, &good);
	o.hash_alg = 3;
	cbi_backup_result r;
	cbi_error e;
	assert_int_equal(backup(&o, &r, &e), -CBI_EUSAGE);
}

/* --encrypt does not turn a plain chain into an encrypted one; a new
 * chain (force_full) does. */
static void test_encrypt_needs_new_chain(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts po = tu_bopts(f->src, f->dest);
	cbi_backup_result r;
	cbi_error e;
	tu_backup_ok(&po, &r);
	assert_false(r.point.encrypted);
	assert_int_equal(hdr_u32(r.point.index_file, 8), 1); /* a plain chain stays version 1 */
	cbi_backup_opts o = enc_opts(f, &good);
	assert_int_equal(backup(&o, &r, &e), -CBI_EUSAGE);
	assert_int_equal(good.calls, 0);
	o.force_full = 1;
	backup_ok(&o, &r);
	assert_true(r.point.encrypted);
	assert_int_equal(r.point.type, CBI_FULL);
	o.force_full = 0;
	backup_ok(&o, &r);
	assert_true(r.point.encrypted);
	assert_int_equal(r.point.seq, 1);
	restore_equals(f, r.point.index_file, &good, f->data);
	verify_clean(f->dest, &good);
}


/* Swap bytes between two places of a file. */
static void swap_bytes(const char *path, uint64_t a, uint64_t b, size_t n)
{
	size_t len;
	uint8_t *d = tu_read_file(path, &len);
	assert_true(a + n <= len && b + n <= len);
	uint8_t *t = malloc(n);
	assert_non_null(t);
	memcpy(t, d + a, n);
	memmove(d + a, d + b, n);
	memcpy(d + b, t, n);
	tu_pwrite(path, d + a, n, (off_t)a);
	tu_pwrite(path, d + b, n, (off_t)b);
	free(t);
	free(d);
}

static cbi_tab_ent find_rec(const char *image, uint64_t block)
{
	cbi_image *m = NULL;
	cbi_tab_ent te;
	assert_int_equal(cbi_image_open(image, &m, NULL), 0);
	assert_int_equal(cbi_image_find(m, block, &te), 0);
	cbi_image_close(m);
	return te;
}

/* Sealed records are bound to their block and point: two payloads of
 * equal length swapped inside one image, or an older point's record of the
 * same block put in place of the newer one, fail authentication. */
static void test_moved_and_replayed_records(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0, r1;
	cbi_error e;
	backup_ok(&o, &r0);
	/* block 22 gets other random bytes: raw again, the same stored length */
	tu_fill_random(f->data + 22 * BS, BS, 2222);
	tu_pwrite(f->src, f->data + 22 * BS, BS, 22 * BS);
	backup_ok(&o, &r1);
	assert_true(r1.blocks_changed == 1);

	/* moved: the payloads (ciphertext and tag) of blocks 20 and 21 */
	cbi_tab_ent a = find_rec(r0.point.file, 20), b = find_rec(r0.point.file, 21);
	assert_int_equal(a.stored_len, b.stored_len);
	swap_bytes(r0.point.file, a.offset + CBI_REC_HDR_SIZE, b.offset + CBI_REC_HDR_SIZE, a.stored_len);
	int rc = restore(f, r0.point.index_file, &good, &e);
	assert_int_equal(rc, -CBI_EAUTH);
	assert_non_null(strstr(e.msg, "block 20"));
	assert_false(tu_exists(f->out));
	swap_bytes(r0.point.file, a.offset + CBI_REC_HDR_SIZE, b.offset + CBI_REC_HDR_SIZE, a.stored_len);
	restore_equals(f, r1.point.index_file, &good, f->data);

	/* replayed: seq 0's whole record of block 22 (header too) over seq 1's */
	cbi_tab_ent old = find_rec(r0.point.file, 22), cur = find_rec(r1.point.file, 22);
	assert_int_equal(old.stored_len, cur.stored_len);
	size_t n0, n1;
	uint8_t *i0 = tu_read_file(r0.point.file, &n0), *i1 = tu_read_file(r1.point.file, &n1);
	size_t rl = CBI_REC_HDR_SIZE + cur.stored_len;
	tu_pwrite(r1.point.file, i0 + old.offset, rl, (off_t)cur.offset);
	rc = restore(f, r1.point.index_file, &good, &e);
	assert_int_equal(rc, -CBI_EAUTH);
	assert_non_null(strstr(e.msg, "block 22"));
	findings fs;
	cbi_verify_result vr;
	assert_int_not_equal(verify(f->dest, &good, &fs, &vr, &e), 0);
	int named = 0;
	for (int i = 0; i < fs.n; i++)
		named |= fs.blocks[i] == 22 && strstr(fs.lines[i], r1.point.file) != NULL;
	assert_true(named);
	/* and the record as it was opens again */
	tu_pwrite(r1.point.file, i1 + cur.offset, rl, (off_t)cur.offset);
	restore_equals(f, r1.point.index_file, &good, f->data);
	free(i0);
	free(i1);
}

/* Change a header field of a file and recompute the header checksum, as an
 * attacker can: only the header MAC can tell. */
static void alter_header(const char *path, size_t off, uint8_t mask)
{
	uint8_t b[CBI_HDR_SIZE];
	int fd = open(path, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, sizeof b, 0), (ssize_t)sizeof b);
	b[off] ^= mask;
	st64(b + 504, XXH3_64bits(b, 504));
	assert_int_equal(pwrite(fd, b, sizeof b, 0), (ssize_t)sizeof b);
	close(fd);
}

/* An altered header of an ancestor's index, of an image, or a changed entry
 * of the restored point's index: restore refuses with a damage code;
 * verify reports it. */
static void test_altered_headers_and_index(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0, r1, r2;
	cbi_error e;
	backup_ok(&o, &r0);
	put_block(f, 6, 606);
	backup_ok(&o, &r1);
	put_block(f, 8, 808);
	backup_ok(&o, &r2);
	struct {
		const char *file;
		size_t off;
	} cases[] = {
		{ r0.point.index_file, 136 },  /* created_ns of the full's index */
		{ r1.point.index_file, 100 },  /* parent_digest of seq 1: parent "not found" */
		{ r1.point.index_file, 410 },  /* source path of seq 1 */
		{ r0.point.file, 144 },        /* level in the full's image */
		{ r1.point.file, 152 },        /* job name in seq 1's image */
		{ r2.point.index_file, 512 + 24 * 6 + 3 }, /* an entry's hash: the index's HMAC */
		{ r2.point.index_file, 512 + 24 * 8 + 16 }, /* an entry's owner */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		if (cases[i].off < CBI_HDR_SIZE)
			alter_header(cases[i].file, cases[i].off, 0x01);
		else
			tu_flip_byte(cases[i].file, cases[i].off, 0x01);
		int rc = restore(f, r2.point.index_file, &good, &e);
		print_message("  case %zu: restore %d %s\n", i, rc, e.msg);
		assert_true(rc < 0);
		assert_true(cbi_is_damage(rc) || (i == 1 && rc == -CBI_ENOPARENT));
		assert_false(tu_exists(f->out));
		findings fs;
		cbi_verify_result vr;
		rc = verify(f->dest, &good, &fs, &vr, &e);
		assert_int_not_equal(rc, 0);
		int named = 0;
		for (int j = 0; j < fs.n; j++)
			named |= strstr(fs.lines[j], cases[i].file) != NULL;
		if (!named) {
			for (int j = 0; j < fs.n; j++)
				print_message("  finding: %s\n", fs.lines[j]);
			fail_msg("case %zu: '%s' not named", i, cases[i].file);
		}
		if (cases[i].off < CBI_HDR_SIZE)
			alter_header(cases[i].file, cases[i].off, 0x01);
		else
			tu_flip_byte(cases[i].file, cases[i].off, 0x01);
	}
	restore_equals(f, r2.point.index_file, &good, f->data);
	verify_clean(f->dest, &good);
}

/* With a local state: it gets a copy of the key file (cheaper scrypt cost,
 * same data key); restore opens the chain from it when DEST has none; an
 * incremental writes a key file back to DEST at the chain's full cost. */
static void test_local_state_key_copy(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS }, bad = { .pw = "bad" };
	cbi_backup_opts o = enc_opts(f, &good);
	o.no_state = 0;
	o.state_dir = f->state;
	o.kdf = (cbi_kdf_params){ 13, 8, 1 };
	cbi_backup_result r0, r1;
	cbi_error e;
	backup_ok(&o, &r0);
	char sp[4096];
	cbi_keyfile_state_path(f->state, r0.point.host, r0.point.source_id, r0.point.job, sp, sizeof sp);
	assert_true(tu_exists(sp));
	struct stat st;
	assert_int_equal(stat(sp, &st), 0);
	assert_int_equal(st.st_mode & 077, 0); /* private */
	cbi_keyfile kd, ks;
	assert_int_equal(cbi_keyfile_read(r0.key_file, &kd, &e), 0);
	assert_int_equal(cbi_keyfile_read(sp, &ks, &e), 0);
	assert_int_equal(kd.log2_n, 13);
	/* the state's copy: the state's own, lower cost (format/SPEC.md) */
	assert_int_equal(ks.log2_n, CBI_STATE_KDF_LOG2_N);
	assert_int_equal(ks.r, CBI_STATE_KDF_R);
	assert_int_equal(ks.p, CBI_STATE_KDF_P);
	assert_memory_equal(ks.key_id, kd.key_id, 16);
	cbi_keys a, b;
	chain_keys(r0.key_file, PASS, &a);
	chain_keys(sp, PASS, &b);
	assert_memory_equal(&a, &b, sizeof a);
	cbi_keys_wipe(&a);
	cbi_keys_wipe(&b);

	/* DEST without its key file: restore uses the state's copy */
	char moved[4096];
	snprintf(moved, sizeof moved, "%s/keep.cbk", f->dir);
	assert_int_equal(rename(r0.key_file, moved), 0);
	restore_equals(f, r0.point.index_file, &good, f->data);
	assert_int_equal(restore(f, r0.point.index_file, &bad, &e), -CBI_EPASS);

	/* an incremental puts a key file back, at the full cost */
	put_block(f, 9, 909);
	o.pass_ud = &bad;
	assert_int_equal(backup(&o, &r1, &e), -CBI_EPASS);
	assert_int_equal(tu_count(f->dest, ".cbk", -1), 0);
	o.pass_ud = &good;
	backup_ok(&o, &r1);
	assert_int_equal(r1.point.seq, 1);
	assert_int_equal(tu_count(f->dest, ".cbk", 0), 1);
	assert_true(r1.key_file_new);
	assert_int_equal(cbi_keyfile_read(r1.key_file, &kd, &e), 0);
	assert_int_equal(kd.log2_n, 13);
	assert_memory_equal(kd.key_id, ks.key_id, 16);
	/* DEST alone opens the chain again */
	char empty[4096];
	snprintf(empty, sizeof empty, "%s", f->state);
	cbi_strlcpy(f->state, tu_path(f->dir, "no-state"), sizeof f->state);
	restore_equals(f, r1.point.index_file, &good, f->data);
	cbi_strlcpy(f->state, empty, sizeof f->state);
	verify_clean(f->dest, &good);
}

/* Restore onto an existing target, writing only blocks whose (keyed, or
 * SHA-256) hash differs: the hash of the target's blocks must be made the
 * chain's way, or every block would count as changed. */
static void test_changed_only_restore(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	static const struct {
		int enc;
		uint32_t alg;
	} kinds[] = { { 1, CBI_HASH_XXH3_128 }, { 1, CBI_HASH_SHA256_128 }, { 0, CBI_HASH_SHA256_128 } };
	for (size_t k = 0; k < 3; k++) {
		char dest[4096];
		snprintf(dest, sizeof dest, "%s/co%zu", f->dir, k);
		assert_int_equal(mkdir(dest, 0755), 0);
		cbi_backup_opts o = enc_opts(f, &good);
		o.dest = dest;
		o.encrypt = kinds[k].enc;
		o.hash_alg = kinds[k].alg;
		cbi_backup_result r0;
		backup_ok(&o, &r0);
		restore_equals(f, r0.point.index_file, &good, f->data);
		/* damage 3 blocks of the target: data, a zero block, the last */
		uint8_t junk[BS];
		memset(junk, 0x77, sizeof junk);
		tu_pwrite(f->out, junk, BS, 3 * BS);
		tu_pwrite(f->out, junk, BS, 11 * BS);
		tu_pwrite(f->out, junk, 1000, 48 * BS);
		cbi_restore_opts ro;
		memset(&ro, 0, sizeof ro);
		ro.point = r0.point.file;
		ro.target = f->out;
		ro.force = 1;
		ro.changed_only = 1;
		ro.threads = 1;
		ro.pass = give_pass;
		ro.pass_ud = &good;
		ro.state_dir = f->state;
		cbi_restore_result rr;
		cbi_error e;
		memset(&e, 0, sizeof e);
		int rc = cbi_restore(&ro, &rr, &e);
		if (rc)
			fail_msg("changed-only restore = %d: %s", rc, e.msg);
		assert_true(tu_file_equals(f->out, f->data, SIZE));
		if (rr.blocks_written != 3 || rr.blocks_skipped != NBLK - 3)
			fail_msg("kind %zu: %llu written, %llu skipped; want 3 and %u", k,
				 (unsigned long long)rr.blocks_written, (unsigned long long)rr.blocks_skipped, NBLK - 3);
		unlink(f->out);
	}
}

/* What anyone who can write to DEST can make without any key: a plain
 * (unencrypted) incremental on top of the encrypted point `parent`, all of
 * whose blocks are `fake` (every block owned by the forged point). Only
 * public values are used: the parent's point id and its index's digest
 * (an HMAC, but stored in the clear in its trailer). */
static void forge_plain_child(const char *dest, const cbi_point *parent, const uint8_t *fake, char *idx_out)
{
	cbi_index *px = NULL;
	cbi_error e;
	assert_int_equal(cbi_index_open(parent->index_file, &px, &e), 0);
	cbi_hdr h = px->hdr;
	cbi_index_close(px);
	h.flags = 0;
	memset(h.key_id, 0, 16);
	memset(h.hdr_mac, 0, 16);
	h.type = CBI_INCREMENTAL;
	h.seq = parent->seq + 1;
	memcpy(h.parent_id, parent->point_id, 16);
	memcpy(h.parent_digest, parent->index_digest, 32);
	tu_fill_random(h.point_id, 16, 4242);
	h.created_ns = parent->created_ns + 1000000000LL;
	char name[512], ip[4096], xp[4096];
	cbi_point_filename(&h, "cbi", name, sizeof name);
	snprintf(ip, sizeof ip, "%s", tu_path(dest, name));
	cbi_point_filename(&h, "cbx", name, sizeof name);
	snprintf(xp, sizeof xp, "%s", tu_path(dest, name));
	cbi_image_writer *iw = NULL;
	cbi_index_writer *xw = NULL;
	h.kind = CBI_KIND_IMAGE;
	assert_int_equal(cbi_image_writer_create(ip, NULL, &h, NULL, &iw, &e), 0);
	h.kind = CBI_KIND_INDEX;
	assert_int_equal(cbi_index_writer_create(xp, NULL, &h, NULL, &xw, &e), 0);
	uint64_t stored = 0;
	for (uint64_t i = 0; i < NBLK; i++) {
		uint32_t len = cbi_block_len(SIZE, BS, i);
		cbi_idx_ent ie = { .owner = h.seq };
		cbi_block_hash(fake + i * BS, len, ie.hash);
		assert_int_equal(cbi_image_writer_add(iw, i, 0, len, ie.hash, fake + i * BS, len), 0);
		assert_int_equal(cbi_index_writer_add(xw, &ie), 0);
		stored++;
	}
	cbi_idx_trailer it = { .changed_blocks = NBLK, .stored_blocks = stored };
	it.image_size = cbi_image_writer_final_size(iw);
	assert_int_equal(cbi_index_writer_seal(xw, &it), 0);
	assert_int_equal(cbi_image_writer_seal(iw, NBLK, it.digest), 0);
	assert_int_equal(cbi_image_writer_commit(iw, &e), 0);
	assert_int_equal(cbi_index_writer_commit(xw, &e), 0);
	strcpy(idx_out, xp);
}

/* format/SPEC.md: "A chain is encrypted when its full says so; every file
 * of the chain then is." A plain point that names an encrypted parent is
 * a forgery (or a downgrade): restore must not take its blocks without
 * authentication, verify must report it, and -- worst -- backup must not
 * continue the chain from it without encryption. */
static void test_plain_point_on_encrypted_chain(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0, r2;
	cbi_error e;
	backup_ok(&o, &r0);
	uint8_t *fake = malloc(SIZE);
	assert_non_null(fake);
	tu_fill_text(fake, SIZE, 31337);
	char forged[4096];
	forge_plain_child(f->dest, &r0.point, fake, forged);

	int failures = 0;
	good.calls = 0;
	int rc = restore(f, forged, &good, &e);
	if (rc == 0) {
		print_error("restore of a plain point whose parent is encrypted succeeded (passphrase asked %d "
			    "times); the target holds the forger's bytes: %s\n",
			    good.calls, tu_file_equals(f->out, fake, SIZE) ? "yes" : "no");
		failures++;
	}
	findings fs;
	cbi_verify_result vr;
	rc = verify(f->dest, &good, &fs, &vr, &e);
	if (rc == 0 && vr.problems == 0) {
		print_error("verify reports no problem with a plain point in an encrypted chain\n");
		failures++;
	}
	/* the next backup: with encrypt set (as a scheduled job that always
	 * says --encrypt would), it refuses to continue a plain chain ... */
	put_block(f, 2, 202);
	memcpy(f->data + 2 * BS + 50, MARKER, strlen(MARKER));
	tu_pwrite(f->src, f->data + 2 * BS, BS, 2 * BS);
	rc = backup(&o, &r2, &e);
	assert_int_not_equal(rc, 0);
	assert_false(dir_contains(f->dest, MARKER, strlen(MARKER), NULL, 0));
	/* ... but an ordinary incremental (encrypt not asked for) must too */
	o.encrypt = 0;
	rc = backup(&o, &r2, &e);
	if (rc == 0 && !r2.point.encrypted) {
		print_error("the backup after it continued the chain UNENCRYPTED (seq %u): the source's "
			    "contents are now in clear in DEST: %s\n",
			    r2.point.seq, dir_contains(f->dest, MARKER, strlen(MARKER), NULL, 0) ? "yes" : "no");
		failures++;
	}
	free(fake);
	if (failures)
		known_bug("U1", "a plain point on an encrypted chain is restored without authentication, "
				"passes verify, and the next incremental continues the chain unencrypted");
}

/* Backup's parent goes through the chain reader: each failure keeps the
 * reader's reason and backup's context. A wrong passphrase is the unlock's
 * own message; an altered header of the newest index is -CBI_EAUTH, an
 * altered entry -CBI_EDAMAGED with the advice to verify; nothing written. */
static void test_backup_parent_failures(void **state)
{
	enc_fix *f = *state;
	pass_cb good = { .pw = PASS }, bad = { .pw = "wrong" };
	cbi_backup_opts o = enc_opts(f, &good);
	cbi_backup_result r0, r;
	cbi_error e;
	char want[9000];
	backup_ok(&o, &r0);
	o.encrypt = 0; /* continuing: the chain says it is encrypted */
	o.pass_ud = &bad;
	assert_int_equal(backup(&o, &r, &e), -CBI_EPASS);
	assert_non_null(strstr(e.msg, "wrong passphrase"));
	assert_null(strstr(e.msg, "newest"));
	o.pass_ud = &good;
	snprintf(want, sizeof want, "newest index '%s' of job '%s': ", r0.point.index_file, r0.point.job);

	alter_header(r0.point.index_file, 136, 0x01); /* created_ns */
	assert_int_equal(backup(&o, &r, &e), -CBI_EAUTH);
	if (strncmp(e.msg, want, strlen(want)) || !strstr(e.msg, "header authentication failed"))
		fail_msg("altered header reported as: %s", e.msg);
	alter_header(r0.point.index_file, 136, 0x01);

	tu_flip_byte(r0.point.index_file, 512 + 24 * 2 + 3, 0x01); /* an entry's hash: the index's MAC */
	assert_int_equal(backup(&o, &r, &e), -CBI_EDAMAGED);
	snprintf(want, sizeof want, "newest index '%s' of job '%s' is damaged (index '%s': ", r0.point.index_file,
		 r0.point.job, r0.point.index_file);
	if (strncmp(e.msg, want, strlen(want)) || !strstr(e.msg, "authentication failed: the file was altered") ||
	    !strstr(e.msg, "): run 'cbimg verify', or use --full"))
		fail_msg("altered index reported as: %s", e.msg);
	tu_flip_byte(r0.point.index_file, 512 + 24 * 2 + 3, 0x01);
	assert_int_equal(tu_count(f->dest, ".tmp", -1), 0);

	backup_ok(&o, &r);
	assert_int_equal(r.point.seq, 1);
	assert_memory_equal(r.point.parent_id, r0.point.point_id, 16);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_enc, teardown_enc)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_full_incremental_restore_verify),
		T(test_wrong_or_no_passphrase),
		T(test_missing_key_file),
		T(test_nothing_in_clear),
		T(test_altered_record),
		T(test_moved_and_replayed_records),
		T(test_altered_headers_and_index),
		T(test_local_state_key_copy),
		T(test_changed_only_restore),
		T(test_plain_point_on_encrypted_chain),
		T(test_passwd),
		T(test_sha256_chains),
		T(test_encrypt_needs_new_chain),
		T(test_backup_parent_failures),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
