/* keyfile.c - key files of encrypted chains, and unlocking a chain. */
#define _GNU_SOURCE
#include "keyfile.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "state.h"
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

int cbi_keyfile_decode(const uint8_t b[CBI_KF_SIZE], cbi_keyfile *kf)
{
	memset(kf, 0, sizeof *kf);
	if (memcmp(b + cbi_layout_field(&cbi_kf_layout, "magic")->off, CBI_MAGIC_KEY, 8))
		return -CBI_EFORMAT;
	if (ld32(b + cbi_layout_field(&cbi_kf_layout, "version")->off) != 2)
		return -CBI_EFORMAT;
	int rc = cbi_layout_decode(&cbi_kf_layout, b, kf); /* checksum, size, fields */
	if (rc)
		return rc;
	if (kf->kdf != CBI_KDF_SCRYPT)
		return -CBI_EFORMAT;
	/* scrypt runs before the tag can be checked, so whoever can write a key
	 * file could make opening it run for days: readers accept only the
	 * writer's range (format/SPEC.md, "Key files"). */
	if (kf->log2_n < CBI_KDF_MIN_LOG2_N || kf->log2_n > CBI_KDF_MAX_LOG2_N || kf->r < 1 ||
	    kf->r > CBI_KDF_MAX_R || kf->p < 1 || kf->p > CBI_KDF_MAX_P)
		return -CBI_EDAMAGED;
	if (!cbi_layout_reserved_zero(&cbi_kf_layout, b))
		return -CBI_EDAMAGED;
	return 0;
}

int cbi_keyfile_read(const char *path, cbi_keyfile *kf, cbi_error *err)
{
	uint8_t b[CBI_KF_SIZE + 1];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cbi_err(err, -errno, "unable to open key file '%s': %s", path, strerror(errno));
	ssize_t n = read(fd, b, sizeof b);
	int e = errno;
	close(fd);
	if (n < 0)
		return cbi_err(err, -e, "unable to read key file '%s': %s", path, strerror(e));
	if (n != CBI_KF_SIZE)
		return cbi_err(err, n < CBI_KF_SIZE ? -CBI_ETRUNCATED : -CBI_EDAMAGED,
			       "key file '%s' is %zd bytes, not %u", path, n, CBI_KF_SIZE);
	int rc = cbi_keyfile_decode(b, kf);
	if (rc)
		return cbi_err(err, rc, "'%s': %s", path,
			       rc == -CBI_EFORMAT ? "not a cbimg key file or unsupported version"
						  : "damaged key file (checksum)");
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
		return cbi_err(err, fd, "unable to create '%s': %s", tmp, cbi_errtext(fd));
	/* a umask or an inherited ACL must not widen a key file's mode */
	if (fchmod(fd, 0600) < 0) {
		int e = -errno;
		close(fd);
		unlink(tmp);
		return cbi_err(err, e, "unable to create '%s': %s", tmp, cbi_errtext(e));
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
		return cbi_err(err, rc, "unable to write key file '%s': %s", path, cbi_errtext(rc));
	}
	if ((rc = cbi_fsync_dir(dir)))
		return cbi_err(err, rc, "unable to sync directory '%s': %s", dir, cbi_errtext(rc));
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
	if (d.log2_n < CBI_KDF_MIN_LOG2_N || d.log2_n > CBI_KDF_MAX_LOG2_N || d.r > CBI_KDF_MAX_R ||
	    d.p > CBI_KDF_MAX_P)
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

void cbi_keyfile_state_path(const char *state_dir, const char *host, const char *source_id, const char *job,
			    char *out, size_t outsz)
{
	snprintf(out, outsz, "%.3000s/%016llx/chain.cbk", state_dir,
		 (unsigned long long)cbi_state_key(host, source_id, job));
}

/* Go through the key file names in dir: those that read as key files of
 * chain_id go to paths (up to max, their number in *n), those that do not
 * read as key files are counted in *nbad (the first one's path to bad). */
static int scan_key_files(const char *dir, const uint8_t *chain_id, char (*paths)[4096], size_t max, size_t *n,
			  char *bad, size_t badsz, size_t *nbad)
{
	*n = 0;
	*nbad = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *de;
	while ((de = readdir(d)) && *n < max) {
		if (de->d_name[0] == '.' || !cbi_has_ext(de->d_name, ".cbk"))
			continue;
		char path[4096];
		cbi_keyfile kf;
		if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= sizeof path)
			continue;
		if (cbi_keyfile_read(path, &kf, NULL)) {
			if (!(*nbad)++ && bad)
				cbi_strlcpy(bad, path, badsz);
			continue;
		}
		if (paths && !memcmp(kf.chain_id, chain_id, 16))
			cbi_strlcpy(paths[(*n)++], path, sizeof paths[0]);
	}
	closedir(d);
	return 0;
}

int cbi_keyfile_find(const char *dir, const uint8_t chain_id[16], char (*paths)[4096], size_t max, size_t *n)
{
	size_t nbad;
	return scan_key_files(dir, chain_id, paths, max, n, NULL, 0, &nbad);
}

#define MAX_CAND 32 /* the state's copy and up to 31 key files of one chain in a directory */

int cbi_chain_unlock(const char *dir, const char *state_dir, const cbi_hdr *h, cbi_pass_fn pass, void *ud,
		     cbi_keys *out, char *used, size_t usedsz, char *pwout, int *pwlen, cbi_error *err)
{
	char(*cand)[4096] = calloc(MAX_CAND, sizeof *cand);
	char *pw = malloc(CBI_PASS_MAX);
	char id[33], what[256];
	size_t n = 0;
	int rc;
	cbi_id_hex(h->chain_id, id);
	id[8] = 0;
	if (!cand || !pw) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if (state_dir && *state_dir) {
		cbi_keyfile kf;
		cbi_keyfile_state_path(state_dir, h->host, h->source_id, h->job, cand[n], sizeof cand[n]);
		if (!cbi_keyfile_read(cand[n], &kf, NULL) && !memcmp(kf.chain_id, h->chain_id, 16))
			n++;
	}
	size_t m = 0, nbad = 0;
	char bad[4096]; /* the first file named like a key file that is none */
	if ((rc = scan_key_files(dir, h->chain_id, cand + n, MAX_CAND - 1, &m, bad, sizeof bad, &nbad))) {
		rc = cbi_err(err, rc, "unable to read directory '%s': %s", dir, cbi_errtext(rc));
		goto end;
	}
	n += m;
	if (!n) {
		if (nbad) {
			cbi_keyfile kf;
			cbi_error ke;
			int krc = cbi_keyfile_read(bad, &kf, &ke);
			rc = cbi_err(err, -CBI_EDAMAGED,
				     "chain %s (job '%s' of '%s') is encrypted and has no intact key file: %s; "
				     "copy an intact copy of it into '%s'",
				     id, h->job, h->host, krc ? ke.msg : "a key file cannot be read", dir);
			goto end;
		}
		rc = cbi_err(err, -CBI_ENOKEY,
			     "chain %s (job '%s' of '%s') is encrypted, but its key file (.cbk) is neither in "
			     "'%s' nor in the local state: copy it there",
			     id, h->job, h->host, dir);
		goto end;
	}
	snprintf(what, sizeof what, "chain %s, job '%s' of '%s'", id, h->job, h->host);
	int len = pass ? pass(ud, what, 0, pw, CBI_PASS_MAX) : -CBI_EPASS;
	if (len < 0 || len >= (int)CBI_PASS_MAX) {
		rc = cbi_err(err, -CBI_EPASS,
			     "chain %s (job '%s' of '%s') is encrypted: no passphrase given "
			     "(--password-file, CBIMG_PASSWORD or a terminal)",
			     id, h->job, h->host);
		goto end;
	}
	/* A chain has one data key, so every key file of its chain id should
	 * carry the key id its headers name. Those that do are tried first; the
	 * others after them, since the header h may be the altered one: the
	 * caller's header check (key id, MAC) then reports it as altered rather
	 * than as a wrong passphrase. */
	rc = -CBI_EPASS;
	const char *tried = NULL; /* the key file a wrong passphrase is reported for */
	int other = 0;            /* an error that is not a wrong passphrase */
	for (int round = 0; round < 2 && rc; round++)
		for (size_t i = 0; i < n && rc; i++) {
			cbi_keyfile kf;
			if (cbi_keyfile_read(cand[i], &kf, NULL) ||
			    !cbi_ct_memcmp(kf.key_id, h->key_id, 16) != !round)
				continue;
			if (!tried)
				tried = cand[i];
			rc = cbi_keyfile_unwrap(&kf, pw, (size_t)len, out);
			if (rc && rc != -CBI_EPASS && rc != -ENOMEM && !other)
				other = rc;
			if (!rc && used)
				cbi_strlcpy(used, cand[i], usedsz);
			if (rc == -ENOMEM) {
				rc = cbi_err(err, rc, "key file '%s': its scrypt cost needs more than 1 GiB of memory",
					     cand[i]);
				goto end;
			}
		}
	if (rc && other)
		rc = cbi_err(err, other, "chain %s (job '%s' of '%s'): unable to unwrap its key: %s", id, h->job,
			     h->host, cbi_errtext(other));
	else if (rc)
		rc = cbi_err(err, -CBI_EPASS, "wrong passphrase for chain %s (job '%s' of '%s'; key file '%s')", id,
			     h->job, h->host, tried ? tried : cand[0]);
	if (!rc && pwout) {
		memcpy(pwout, pw, (size_t)len);
		pwout[len] = 0;
		*pwlen = len;
	}
end:
	if (pw)
		OPENSSL_cleanse(pw, CBI_PASS_MAX);
	free(pw);
	free(cand);
	return rc;
}

int cbi_hdr_mac(const uint8_t hdr[CBI_HDR_SIZE], const cbi_keys *k, uint8_t out[16])
{
	uint8_t m[32];
	int rc = cbi_hmac(k->mac_key, hdr, CBI_HDR_MAC_OFF, m);
	memcpy(out, m, 16);
	return rc;
}

int cbi_hdr_encode_keyed(cbi_hdr *h, const cbi_keys *k, uint8_t buf[CBI_HDR_SIZE])
{
	h->version = cbi_hdr_version_for(h);
	if (!(h->flags & CBI_HDR_ENCRYPTED)) {
		memset(h->key_id, 0, 16);
		memset(h->hdr_mac, 0, 16);
		cbi_hdr_encode(h, buf);
		return 0;
	}
	if (!k)
		return -EINVAL;
	memcpy(h->key_id, k->key_id, 16);
	memset(h->hdr_mac, 0, 16);
	cbi_hdr_encode(h, buf);
	int rc = cbi_hdr_mac(buf, k, h->hdr_mac);
	if (!rc)
		cbi_hdr_encode(h, buf);
	return rc;
}

const char *cbi_hdr_keyed_problem(int rc)
{
	return rc == -CBI_EPASS ? "its header names another key than the chain's key file: the header or the "
				  "key file was altered"
				: "header authentication failed: the header was altered";
}

int cbi_hdr_check_keyed(const cbi_hdr *h, const cbi_keys *k)
{
	if (!(h->flags & CBI_HDR_ENCRYPTED))
		return 0;
	if (memcmp(h->key_id, k->key_id, 16) || memcmp(h->chain_id, k->chain_id, 16))
		return -CBI_EPASS;
	uint8_t b[CBI_HDR_SIZE], m[16];
	cbi_hdr_encode(h, b);
	int rc = cbi_hdr_mac(b, k, m);
	if (rc)
		return rc;
	return cbi_ct_memcmp(m, h->hdr_mac, 16) ? -CBI_EAUTH : 0;
}
