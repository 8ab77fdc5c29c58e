/* passwd.c - cbi_passwd(): rewrap an encrypted chain's data key under a new
 * passphrase. Only key files change; the chain's files never do. */
#define _GNU_SOURCE
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>

#include "chain.h"
#include "dest.h"
#include "keyfile.h"
#include "state.h"
#include "util.h"

#define MAX_FILES 64

/* The state's copies of chain chain_id: STATE/<key>/chain.cbk (job.h). */
static void find_state_copies(const char *state_dir, const uint8_t chain_id[16], char (*paths)[4096], size_t max,
			      size_t *n)
{
	cbi_dest *d = NULL;
	if (cbi_dest_scan(state_dir, 0, &d, NULL))
		return;
	for (size_t i = 0; i < d->n && *n < max; i++) {
		const char *name = d->e[i].name;
		cbi_keyfile kf;
		char path[4096];
		if (name[0] == '.' ||
		    (size_t)snprintf(path, sizeof path, "%s/%s/" CBI_STATE_KEY_NAME, state_dir, name) >= sizeof path ||
		    cbi_keyfile_read(path, &kf, NULL) || memcmp(kf.chain_id, chain_id, 16))
			continue;
		cbi_strlcpy(paths[*n], path, sizeof paths[*n]);
		(*n)++;
	}
	cbi_dest_free(d);
}

int cbi_passwd(const cbi_passwd_opts *o, cbi_passwd_result *r, cbi_error *err)
{
	memset(r, 0, sizeof *r);
	if (!o->path)
		return cbi_err(err, -CBI_EUSAGE, "a key file or a file of the chain is required");
	uint8_t chain_id[16];
	char dir[4096], id[33], what[256];
	cbi_keyfile kf;
	cbi_keys keys;
	int rc, len = -1;
	char(*files)[4096] = calloc(MAX_FILES, sizeof *files);
	char *pw = malloc(CBI_PASS_MAX), *npw = malloc(CBI_PASS_MAX);
	size_t n = 0;
	memset(&keys, 0, sizeof keys);
	if (!files || !pw || !npw) {
		rc = cbi_err(err, -ENOMEM, "out of memory");
		goto end;
	}
	if (cbi_has_ext(o->path, ".cbk")) {
		if ((rc = cbi_keyfile_read(o->path, &kf, err)))
			goto end;
		memcpy(chain_id, kf.chain_id, 16);
	} else {
		cbi_point p;
		int kind = 0;
		memset(&p, 0, sizeof p);
		if ((rc = cbi_point_read_file(o->path, &p, &kind, err)))
			goto end;
		if (!p.encrypted) {
			rc = cbi_err(err, -CBI_EUSAGE, "'%s' belongs to an unencrypted chain: it has no passphrase",
				     o->path);
			goto end;
		}
		memcpy(chain_id, p.chain_id, 16);
	}
	cbi_dirname(o->path, dir, sizeof dir);
	if ((rc = cbi_keyfile_find(dir, chain_id, files, MAX_FILES / 2, &n))) {
		rc = cbi_err(err, rc, "unable to read directory '%s': %s", dir, cbi_strerror(rc));
		goto end;
	}
	cbi_id_hex(chain_id, id);
	id[8] = 0;
	if (!n) {
		rc = cbi_err(err, -CBI_ENOKEY, "no key file of chain %s in '%s'", id, dir);
		goto end;
	}
	snprintf(what, sizeof what, "chain %s", id);
	len = o->pass ? o->pass(o->pass_ud, what, 0, pw, CBI_PASS_MAX) : -CBI_EPASS;
	if (len < 0 || len >= (int)CBI_PASS_MAX) {
		rc = cbi_err(err, -CBI_EPASS, "no current passphrase given for chain %s", id);
		goto end;
	}
	/* The local state's copies too: a run that stopped after rewriting
	 * DEST's key files but before the state's copy is taken up again with
	 * the same (old, new) passphrases, the state's copy opening. */
	size_t ndest = n;
	if (!o->no_state)
		find_state_copies(o->state_dir && *o->state_dir ? o->state_dir : CBI_DEFAULT_STATE_DIR, chain_id, files,
				  MAX_FILES, &n);
	/* Unwrap with the current passphrase: the first key file that opens. */
	rc = -CBI_EPASS;
	for (size_t i = 0; i < n && rc; i++)
		if (!cbi_keyfile_read(files[i], &kf, NULL))
			rc = cbi_keyfile_unwrap(&kf, pw, (size_t)len, &keys);
	if (rc) {
		rc = cbi_err(err, -CBI_EPASS, "wrong passphrase for chain %s ('%s')", id, files[0]);
		goto end;
	}
	snprintf(what, sizeof what, "chain %s (new)", id);
	int nlen = o->new_pass ? o->new_pass(o->new_pass_ud, what, 1, npw, CBI_PASS_MAX) : -CBI_EPASS;
	if (nlen <= 0 || nlen >= (int)CBI_PASS_MAX) {
		rc = cbi_err(err, -CBI_EPASS, nlen == 0 ? "the new passphrase is empty" : "no new passphrase given");
		goto end;
	}
	for (size_t i = 0; i < n; i++) {
		static const cbi_kdf_params cheap = { CBI_STATE_KDF_LOG2_N, CBI_STATE_KDF_R, CBI_STATE_KDF_P };
		cbi_keys other;
		/* Rewrap only what the current passphrase opens: a copy under
		 * another passphrase is someone's decision, reported, not undone. */
		if (cbi_keyfile_read(files[i], &kf, NULL) || memcmp(kf.key_id, keys.key_id, 16) ||
		    cbi_keyfile_unwrap(&kf, pw, (size_t)len, &other)) {
			r->skipped++;
			continue;
		}
		cbi_keys_wipe(&other);
		/* the state's copies keep their low cost (keyfile.h) */
		if ((rc = cbi_keyfile_wrap(&kf, &keys, npw, (size_t)nlen, i < ndest ? &o->kdf : &cheap))) {
			rc = cbi_err(err, rc, rc == -CBI_EUSAGE ? "scrypt cost out of range" : "unable to wrap the key: %s",
				     cbi_strerror(rc));
			goto end;
		}
		if ((rc = cbi_keyfile_write(files[i], &kf, err)))
			goto end;
		if (!r->rewrapped++)
			cbi_strlcpy(r->first, files[i], sizeof r->first);
	}
	rc = 0;
end:
	cbi_keys_wipe(&keys);
	if (pw)
		OPENSSL_cleanse(pw, CBI_PASS_MAX);
	if (npw)
		OPENSSL_cleanse(npw, CBI_PASS_MAX);
	free(pw);
	free(npw);
	free(files);
	return rc;
}
