/* cbimg-plugin.c - nbdkit plugin: the disk of a cbimg point over NBD,
 * read-only, through the library's point reader (cbimg.h, "point reader"):
 *
 *     nbdkit cbimg point=/backup/sdb/NAME.cbx [password=+FILE] [state-dir=DIR] [cache=SIZE]
 *
 * Every block is checked as cbimg mount checks it: a block that fails
 * gives an NBD read error (EIO) for that request, never wrong bytes. The
 * point reader is opened once, when nbdkit is ready to serve (before it
 * forks into the background: errors show on the terminal), and shared by
 * every connection and thread (it is thread-safe). While nbdkit runs, the
 * chain is protected from prune as a mount is. */
#define NBDKIT_API_VERSION 2
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-plugin.h>

#include "cbimg.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *point;
static char *password;
static char *state_dir;
static uint64_t cache_bytes;
static cbi_pointrd *reader;

static void cbimg_unload(void)
{
	cbi_pointrd_close(reader);
	reader = NULL;
	free(point);
	free(state_dir);
	if (password) {
		memset(password, 0, strlen(password));
		free(password);
	}
}

static int cbimg_config(const char *key, const char *value)
{
	if (!strcmp(key, "point")) {
		free(point);
		if (!(point = nbdkit_realpath(value)))
			return -1;
	} else if (!strcmp(key, "password")) {
		free(password);
		password = NULL;
		if (nbdkit_read_password(value, &password) == -1)
			return -1;
	} else if (!strcmp(key, "state-dir")) {
		free(state_dir);
		if (!(state_dir = strdup(value))) {
			nbdkit_error("out of memory");
			return -1;
		}
	} else if (!strcmp(key, "cache")) {
		int64_t v = nbdkit_parse_size(value);
		if (v < 0)
			return -1;
		cache_bytes = v ? (uint64_t)v : 1;
	} else {
		nbdkit_error("unknown parameter '%s'", key);
		return -1;
	}
	return 0;
}

static int cbimg_config_complete(void)
{
	if (!point) {
		nbdkit_error("you must give point=FILE (an image or index file of the point)");
		return -1;
	}
	return 0;
}

static int give_pass(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	size_t n;
	if (!password)
		return -CBI_EPASS;
	n = strlen(password);
	if (n >= bufsz)
		return -CBI_EPASS;
	memcpy(buf, password, n + 1);
	return (int)n;
}

static void log_bad(void *ud, const char *msg)
{
	nbdkit_error("%s", msg);
}

static int cbimg_get_ready(void)
{
	cbi_pointrd_opts o = { .point = point, .pass = give_pass, .state_dir = state_dir,
			       .cache_bytes = cache_bytes, .lock = 1, .log = log_bad };
	cbi_error err = { 0 };
	if (!o.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		o.state_dir = getenv("CBIMG_STATE_DIR");
	int rc = cbi_pointrd_open(&o, &reader, &err);
	if (rc < 0) {
		nbdkit_error("%s", err.msg[0] ? err.msg : cbi_strerror(rc));
		return -1;
	}
	return 0;
}

static void *cbimg_open(int readonly)
{
	return reader; /* one reader for every connection */
}

static int64_t cbimg_get_size(void *h)
{
	return (int64_t)cbi_pointrd_size(h);
}

static int cbimg_can_write(void *h)
{
	return 0;
}

static int cbimg_can_multi_conn(void *h)
{
	return 1; /* read-only: every connection sees the same bytes */
}

static int cbimg_pread(void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
	cbi_error err = { 0 };
	int64_t got = cbi_pointrd_pread(h, buf, count, offset, &err);
	if (got < 0) {
		errno = EIO; /* the reader has logged which block */
		return -1;
	}
	if ((uint64_t)got != count) {
		nbdkit_error("read beyond the end of the disk");
		errno = EIO;
		return -1;
	}
	return 0;
}

static struct nbdkit_plugin plugin = {
	.name = "cbimg",
	.longname = "cbimg point reader",
	.version = CBIMG_VERSION_STRING,
	.description = "the disk of a cbimg point, read-only",
	.unload = cbimg_unload,
	.config = cbimg_config,
	.config_complete = cbimg_config_complete,
	.config_help = "point=FILE      (required) an image (.cbi) or index (.cbx) file of the point\n"
		       "password=PASS   passphrase of an encrypted chain (+FILE: from FILE, -: ask)\n"
		       "state-dir=DIR   also look for the chain's key file here\n"
		       "cache=SIZE      decompressed blocks kept (default 64M)",
	.magic_config_key = "point",
	.get_ready = cbimg_get_ready,
	.open = cbimg_open,
	.get_size = cbimg_get_size,
	.can_write = cbimg_can_write,
	.can_multi_conn = cbimg_can_multi_conn,
	.pread = cbimg_pread,
	.errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN(plugin)
