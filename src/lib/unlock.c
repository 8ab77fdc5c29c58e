/* unlock.c - unlocking an encrypted chain (unlock.h). */
#define _GNU_SOURCE
#include "unlock.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>

#include "dest.h"
#include "job.h"
#include "keyfile.h"
#include "util.h"

int cbi_keyfile_find(const char *dir, const uint8_t chain_id[16], char (*paths)[4096], size_t max, size_t *n)
{
	cbi_dest *d = NULL;
	*n = 0;
	int rc = cbi_dest_scan(dir, CBI_DEST_KEYS | CBI_DEST_MISSING_OK, &d, NULL);
	if (rc)
		return rc;
	for (size_t i = 0; i < d->n && *n < max; i++) {
		const cbi_dent *e = &d->e[i];
		if (e->key && !e->key->rc && !memcmp(e->key->kf.chain_id, chain_id, 16) &&
		    !cbi_dest_path(d, e, paths[*n], sizeof paths[0]))
			(*n)++;
	}
	cbi_dest_free(d);
	return 0;
}

#define MAX_CAND 32 /* the state's copy and up to 31 key files of one chain in a directory */

typedef struct cand {
	cbi_keyfile kf;
	char path[4096];
} cand;

int cbi_unlock(const cbi_dest *d, const char *state_dir, const cbi_hdr *h, cbi_pass_fn pass, void *ud,
	       cbi_keys *out, char *used, size_t usedsz, char *pwout, int *pwlen, cbi_error *err)
{
	cand *cd = calloc(MAX_CAND, sizeof *cd);
	char *pw = malloc(CBI_PASS_MAX);
	char id[9], what[256];
	const cbi_dent *bad = NULL; /* the first file named like a key file that is none */
	size_t n = 0;
	int rc;
	cbi_id_short(h->chain_id, id);
	if (!cd || !pw) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if (state_dir && *state_dir) {
		cbi_keyfile_state_path(state_dir, h->host, h->source_id, h->job, cd[n].path, sizeof cd[n].path);
		if (!cbi_keyfile_read(cd[n].path, &cd[n].kf, NULL) && !memcmp(cd[n].kf.chain_id, h->chain_id, 16))
			n++;
	}
	for (size_t i = 0; i < d->n && n < MAX_CAND; i++) {
		const cbi_dent *e = &d->e[i];
		if (!e->key)
			continue;
		if (e->key->rc) {
			if (!bad)
				bad = e;
			continue;
		}
		if (memcmp(e->key->kf.chain_id, h->chain_id, 16) || cbi_dest_path(d, e, cd[n].path, sizeof cd[n].path))
			continue;
		cd[n++].kf = e->key->kf;
	}
	if (!n) {
		if (bad) {
			rc = cbi_err(err, -CBI_EDAMAGED,
				     "chain %s (job '%s' of '%s') is encrypted and has no intact key file: %s; "
				     "copy an intact copy of it into '%s'",
				     id, h->job, h->host, bad->key->msg, d->dir);
			goto end;
		}
		rc = cbi_err(err, -CBI_ENOKEY,
			     "chain %s (job '%s' of '%s') is encrypted, but its key file (.cbk) is neither in "
			     "'%s' nor in the local state: copy it there",
			     id, h->job, h->host, d->dir);
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
			if (!cbi_ct_memcmp(cd[i].kf.key_id, h->key_id, 16) != !round)
				continue;
			if (!tried)
				tried = cd[i].path;
			rc = cbi_keyfile_unwrap(&cd[i].kf, pw, (size_t)len, out);
			if (rc && rc != -CBI_EPASS && rc != -ENOMEM && !other)
				other = rc;
			if (!rc && used)
				cbi_strlcpy(used, cd[i].path, usedsz);
			if (rc == -ENOMEM) {
				rc = cbi_err(err, rc, "key file '%s': its scrypt cost needs more than 1 GiB of memory",
					     cd[i].path);
				goto end;
			}
		}
	if (rc && other)
		rc = cbi_err(err, other, "chain %s (job '%s' of '%s'): unable to unwrap its key: %s", id, h->job,
			     h->host, cbi_strerror(other));
	else if (rc)
		rc = cbi_err(err, -CBI_EPASS, "wrong passphrase for chain %s (job '%s' of '%s'; key file '%s')", id,
			     h->job, h->host, tried ? tried : cd[0].path);
	if (!rc && pwout) {
		memcpy(pwout, pw, (size_t)len);
		pwout[len] = 0;
		*pwlen = len;
	}
end:
	if (pw)
		OPENSSL_cleanse(pw, CBI_PASS_MAX);
	free(pw);
	free(cd);
	return rc;
}

int cbi_chain_unlock(const char *dir, const char *state_dir, const cbi_hdr *h, cbi_pass_fn pass, void *ud,
		     cbi_keys *out, char *used, size_t usedsz, char *pw, int *pwlen, cbi_error *err)
{
	cbi_dest *d = NULL;
	int rc = cbi_dest_scan(dir, CBI_DEST_KEYS | CBI_DEST_MISSING_OK, &d, err);
	if (rc)
		return cbi_err(err, rc, "unable to read directory '%s': %s", dir, cbi_strerror(rc));
	rc = cbi_unlock(d, state_dir, h, pass, ud, out, used, usedsz, pw, pwlen, err);
	cbi_dest_free(d);
	return rc;
}
