/* keyfile.c - key files of encrypted chains (keyfile.h). Unlocking a chain
 * with them is unlock.c. */
#define _GNU_SOURCE
#include "keyfile.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "util.h"

/* Layout (format/SPEC.md, "Key files (.cbk)"), all integers little-endian.
 * The wrap's AAD is bytes 0..111 (up to wrapped_key), so no parameter can
 * be changed without the passphrase. */
#define KF_AAD_LEN 112u
/* clang-format off */
#define K(name, off, size, type, m) { name, off, size, type, CBI_MEMBER(cbi_keyfile, m, size) }
static const cbi_field kf_fields[] = {
	{ "magic", 0, 8, CBI_F_OWN, 0 },
	K("version", 8, 4, CBI_F_U32, version),
	{ "size", 12, 4, CBI_F_SIZE, 0 },
	K("chain_id", 16, 16, CBI_F_BYTES, chain_id),
	K("key_id", 32, 16, CBI_F_BYTES, key_id),
	K("kdf", 48, 4, CBI_F_U32, kdf),
	K("log2_n", 52, 4, CBI_F_U32, log2_n),
	K("r", 56, 4, CBI_F_U32, r),
	K("p", 60, 4, CBI_F_U32, p),
	K("salt", 64, 32, CBI_F_BYTES, salt),
	K("nonce", 96, 12, CBI_F_BYTES, nonce),
	{ "reserved", 108, 4, CBI_F_RESERVED, 0 },
	K("wrapped_key", KF_AAD_LEN, CBI_KEY_LEN, CBI_F_BYTES, wrapped),
	K("tag", 144, CBI_TAG_LEN, CBI_F_BYTES, tag),
	{ "reserved", 160, 88, CBI_F_RESERVED, 0 },
	{ "checksum", 248, 8, CBI_F_XXH3, 0 },
};
#undef K
/* clang-format on */
const cbi_layout cbi_kf_layout = { "Key files (.cbk)", CBI_KF_SIZE, sizeof kf_fields / sizeof kf_fields[0],
				   kf_fields };

void cbi_keyfile_encode(const cbi_keyfile *kf, uint8_t b[CBI_KF_SIZE])
{
	memset(b, 0, CBI_KF_SIZE);
	memcpy(b + cbi_layout_field(&cbi_kf_layout, "magic")->off, CBI_MAGIC_KEY, 8);
	cbi_layout_encode(&cbi_kf_layout, kf, b);
}

/* Decode and check a key file (rules K1-K5 of format/SPEC.md); *why: the
 * reason of a failure, for its message. */
static int kf_decode(const uint8_t b[CBI_KF_SIZE], cbi_keyfile *kf, const char **why)
{
	memset(kf, 0, sizeof *kf);
	*why = "not a cbimg key file or unsupported version";
	if (memcmp(b + cbi_layout_field(&cbi_kf_layout, "magic")->off, CBI_MAGIC_KEY, 8))
		return -CBI_EFORMAT;
	if (ld32(b + cbi_layout_field(&cbi_kf_layout, "version")->off) != 2)
		return -CBI_EFORMAT;
	const cbi_field *ck = cbi_layout_field(&cbi_kf_layout, "checksum");
	if (ld64(b + ck->off) != XXH3_64bits(b, ck->off)) {
		*why = "damaged key file (checksum)";
		return -CBI_EDAMAGED;
	}
	*why = "damaged key file (size field is not 256)";
	int rc = cbi_layout_decode(&cbi_kf_layout, b, kf); /* size, fields */
	if (rc)
		return rc;
	*why = "unsupported key derivation function";
	if (kf->kdf != CBI_KDF_SCRYPT)
		return -CBI_EFORMAT;
	/* scrypt runs before the tag can be checked, so whoever can write a key
	 * file could make opening it run for days: readers accept only the
	 * writer's range (format/SPEC.md, "Key files"). */
	*why = "damaged key file (scrypt cost out of range)";
	if (kf->log2_n < CBI_KDF_MIN_LOG2_N || kf->log2_n > CBI_KDF_MAX_LOG2_N || kf->r < 1 ||
	    kf->r > CBI_KDF_MAX_R || kf->p < 1 || kf->p > CBI_KDF_MAX_P)
		return -CBI_EDAMAGED;
	*why = "damaged key file (reserved bytes not zero)";
	if (!cbi_layout_reserved_zero(&cbi_kf_layout, b))
		return -CBI_EDAMAGED;
	*why = NULL;
	return 0;
}

int cbi_keyfile_decode(const uint8_t b[CBI_KF_SIZE], cbi_keyfile *kf)
{
	const char *why;
	return kf_decode(b, kf, &why);
}

int cbi_keyfile_read(const char *path, cbi_keyfile *kf, cbi_error *err)
{
	uint8_t b[CBI_KF_SIZE + 1];
	int fd = cbi_open_regular(path, 0, NULL); /* a FIFO at the name never hangs the open */
	if (fd == -EINVAL)
		return cbi_err(err, -EINVAL, "key file '%s' is not a regular file", path);
	if (fd == -EISDIR)
		return cbi_err(err, -EISDIR, "unable to read key file '%s': %s", path, strerror(EISDIR));
	if (fd < 0)
		return cbi_err(err, fd, "unable to open key file '%s': %s", path, strerror(-fd));
	ssize_t n = read(fd, b, sizeof b);
	int e = errno;
	close(fd);
	if (n < 0)
		return cbi_err(err, -e, "unable to read key file '%s': %s", path, strerror(e));
	if (n != CBI_KF_SIZE)
		return cbi_err(err, n < CBI_KF_SIZE ? -CBI_ETRUNCATED : -CBI_EDAMAGED,
			       "key file '%s' is %zd bytes, not %u", path, n, CBI_KF_SIZE);
	const char *why;
	int rc = kf_decode(b, kf, &why);
	if (rc)
		return cbi_err(err, rc, "'%s': %s", path, why);
	return 0;
}

int cbi_keyfile_write(const char *path, const cbi_keyfile *kf, cbi_error *err)
{
	uint8_t b[CBI_KF_SIZE];
	char dir[4096], tmp[4096];
	cbi_keyfile_encode(kf, b);
	cbi_dirname(path, dir, sizeof dir);
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", dir, base, (long)getpid()) >= sizeof tmp)
		return cbi_err(err, -ENAMETOOLONG, "path too long: '%s'", path);
	int fd = cbi_create_tmp(tmp, 0600);
	if (fd < 0)
		return cbi_err(err, fd, "unable to create '%s': %s", tmp, cbi_strerror(fd));
	/* a umask or an inherited ACL must not widen a key file's mode */
	if (fchmod(fd, 0600) < 0) {
		int e = -errno;
		close(fd);
		unlink(tmp);
		return cbi_err(err, e, "unable to create '%s': %s", tmp, cbi_strerror(e));
	}
	int rc = cbi_pwrite_full(fd, b, sizeof b, 0);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path) < 0)
		rc = -errno;
	if (rc) {
		unlink(tmp);
		return cbi_err(err, rc, "unable to write key file '%s': %s", path, cbi_strerror(rc));
	}
	if ((rc = cbi_fsync_dir(dir)))
		return cbi_err(err, rc, "unable to sync directory '%s': %s", dir, cbi_strerror(rc));
	return 0;
}

static int kek_derive(const cbi_keyfile *kf, const char *pass, size_t passlen, uint8_t kek[CBI_KEY_LEN])
{
	return cbi_scrypt(pass, passlen, kf->salt, sizeof kf->salt, kf->log2_n, kf->r, kf->p, kek, CBI_KEY_LEN);
}

int cbi_keyfile_wrap(cbi_keyfile *kf, const cbi_keys *k, const char *pass, size_t passlen,
		     const cbi_kdf_params *kdf)
{
	cbi_kdf_params d = { CBI_KDF_LOG2_N, CBI_KDF_R, CBI_KDF_P };
	if (kdf && kdf->log2_n)
		d.log2_n = kdf->log2_n;
	if (kdf && kdf->r)
		d.r = kdf->r;
	if (kdf && kdf->p)
		d.p = kdf->p;
	/* the writer's floor (format/SPEC.md, "Key files", revision 2.4): no
	 * key file is cheaper to guess than the local state's copy */
	if (d.log2_n < CBI_KDF_FLOOR_LOG2_N || d.log2_n > CBI_KDF_MAX_LOG2_N || d.r < CBI_KDF_FLOOR_R ||
	    d.r > CBI_KDF_MAX_R || d.p < 1 || d.p > CBI_KDF_MAX_P)
		return -CBI_EUSAGE;
	memset(kf, 0, sizeof *kf);
	kf->version = 2;
	kf->kdf = CBI_KDF_SCRYPT;
	kf->log2_n = d.log2_n;
	kf->r = d.r;
	kf->p = d.p;
	memcpy(kf->chain_id, k->chain_id, 16);
	memcpy(kf->key_id, k->key_id, 16);
	int rc = cbi_random(kf->salt, sizeof kf->salt);
	if (!rc)
		rc = cbi_random(kf->nonce, sizeof kf->nonce);
	if (rc)
		return rc;
	uint8_t kek[CBI_KEY_LEN], aad[CBI_KF_SIZE];
	if ((rc = kek_derive(kf, pass, passlen, kek)))
		return rc;
	cbi_keyfile_encode(kf, aad);
	cbi_cx *cx = cbi_cx_new();
	rc = cx ? cbi_gcm_seal(cx, kek, kf->nonce, aad, KF_AAD_LEN, k->dk, CBI_KEY_LEN, kf->wrapped, kf->tag)
		: -ENOMEM;
	cbi_cx_free(cx);
	OPENSSL_cleanse(kek, sizeof kek);
	return rc;
}

int cbi_keyfile_unwrap(const cbi_keyfile *kf, const char *pass, size_t passlen, cbi_keys *out)
{
	uint8_t kek[CBI_KEY_LEN], aad[CBI_KF_SIZE], dk[CBI_KEY_LEN];
	int rc = kek_derive(kf, pass, passlen, kek);
	if (rc)
		return rc;
	cbi_keyfile_encode(kf, aad);
	cbi_cx *cx = cbi_cx_new();
	rc = cx ? cbi_gcm_open(cx, kek, kf->nonce, aad, KF_AAD_LEN, kf->wrapped, CBI_KEY_LEN, kf->tag, dk) : -ENOMEM;
	cbi_cx_free(cx);
	OPENSSL_cleanse(kek, sizeof kek);
	if (rc == -CBI_EAUTH)
		rc = -CBI_EPASS;
	if (!rc)
		rc = cbi_keys_derive(out, kf->chain_id, dk);
	OPENSSL_cleanse(dk, sizeof dk);
	/* A key file whose key id does not belong to its data key was altered. */
	if (!rc && cbi_ct_memcmp(out->key_id, kf->key_id, 16)) {
		cbi_keys_wipe(out);
		rc = -CBI_EPASS;
	}
	return rc;
}

void cbi_keyfile_name(const cbi_hdr *h, char *out, size_t outsz)
{
	char host[33], job[33], src[33], id[33];
	cbi_sanitize_name(h->host, host, sizeof host);
	cbi_sanitize_name(h->job, job, sizeof job);
	const char *base = strrchr(h->source_path, '/');
	cbi_sanitize_name(base ? base + 1 : h->source_path, src, sizeof src);
	cbi_id_hex(h->chain_id, id);
	id[8] = 0;
	snprintf(out, outsz, "%s_%s_%s_key_%s.cbk", host, src, job, id);
}

