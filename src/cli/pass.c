/* pass.c - where passphrases come from: --password-file, the CBIMG_PASSWORD
 * environment variable, or a prompt without echo on the terminal. */
#include "cli.h"

#include <bsd/readpassphrase.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Set once a password file's problem was printed: the library's own
 * "no passphrase" error would only repeat it (see cli_fail). */
static int pass_reported;

int cli_pass_reported(void)
{
	return pass_reported;
}

/* The passphrase in buf[0 .. n - 1] (format/SPEC.md, "Passphrase bytes"):
 * its first line, without the "\n" that ends it and one "\r" before that
 * (or at the end). Returns its length; buf is cut there. */
static size_t pass_line(char *buf, size_t n)
{
	char *nl = memchr(buf, '\n', n);
	if (nl) {
		*nl = 0;
		n = (size_t)(nl - buf);
	}
	if (n && buf[n - 1] == '\r')
		buf[--n] = 0;
	return n;
}

/* Read the first line of path (without its line ending). */
static int read_pass_file(const char *path, char *buf, size_t bufsz)
{
	int fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : 0;
	if (fd < 0 && errno == EINTR && cli_interrupted())
		return -ECANCELED; /* a FIFO nobody writes to: the signal ends the wait */
	if (fd < 0) {
		cli_error("unable to read password file '%s': %s", path, strerror(errno));
		pass_reported = 1;
		return -CBI_EPASS;
	}
	size_t n = 0;
	for (;;) {
		ssize_t r = read(fd, buf + n, bufsz - 1 - n);
		if (r < 0 && errno == EINTR && !cli_interrupted())
			continue;
		if (r < 0) {
			cli_error("unable to read password file '%s': %s", path, strerror(errno));
			n = 0;
			break;
		}
		if (r == 0 || (n += (size_t)r) == bufsz - 1)
			break;
		if (memchr(buf, '\n', n))
			break;
	}
	/* a first line that fills the buffer must end right there: a longer
	 * passphrase is refused, never cut */
	int too_long = 0;
	if (n == bufsz - 1 && !memchr(buf, '\n', n)) {
		char c;
		ssize_t r;
		while ((r = read(fd, &c, 1)) < 0 && errno == EINTR)
			;
		too_long = r > 0 && c != '\n' && c != '\r';
	}
	if (fd)
		close(fd);
	buf[n] = 0;
	if (too_long) {
		cli_error("password file '%s': the passphrase is longer than %zu bytes", path, bufsz - 1);
		pass_reported = 1;
		return -CBI_EPASS;
	}
	n = pass_line(buf, n);
	/* A passphrase is text: a NUL byte would end it early (a key made of
	 * random bytes would be protected only by those before its first NUL),
	 * so it is refused, never cut. */
	if (memchr(buf, 0, n)) {
		explicit_bzero(buf, bufsz);
		cli_error("password file '%s': the passphrase contains a NUL byte: a passphrase is a line of text "
			  "(for random bytes, use their base64 or hex form)", path);
		pass_reported = 1;
		return -CBI_EPASS;
	}
	if (!n) {
		cli_error("password file '%s' holds no passphrase", path);
		pass_reported = 1;
		return -CBI_EPASS;
	}
	return (int)n;
}

/* Prompt on the terminal (/dev/tty, never stdin) with echo off, through
 * readpassphrase(3): it restores the terminal on every path, and a signal
 * (Ctrl-C) ends the prompt at once: after restoring the terminal it sends
 * the signal on to our handler, so cli_interrupted() is then true and the
 * command ends with "cbimg: interrupted" (exit 1, see cli_fail). */
static int prompt(const char *text, char *buf, size_t bufsz)
{
	if (cli_interrupted())
		return -ECANCELED;
	cli_progress_clear();
	char *got = readpassphrase(text, buf, bufsz, RPP_ECHO_OFF | RPP_REQUIRE_TTY);
	if (!got || cli_interrupted()) {
		explicit_bzero(buf, bufsz);
		return cli_interrupted() ? -ECANCELED : -CBI_EPASS;
	}
	return (int)strlen(buf);
}

int cli_pass_cb(void *ud, const char *what, int confirm, char *buf, size_t bufsz)
{
	struct cli_pass *p = ud;
	int n;
	if (cli_interrupted())
		return -ECANCELED; /* never ask again after Ctrl-C */
	if (p->have) {
		memcpy(buf, p->cached, (size_t)p->len + 1);
		return p->len;
	}
	if (p->file) {
		n = read_pass_file(p->file, buf, bufsz);
	} else if (p->env && getenv(p->env)) {
		/* as a password file's content: a value written with a final
		 * newline ($(cat file), a here-string) is the same passphrase */
		const char *e = getenv(p->env);
		size_t len = strlen(e);
		if (len >= bufsz)
			return -CBI_EPASS;
		memcpy(buf, e, len + 1);
		n = (int)pass_line(buf, len);
		if (!n) {
			explicit_bzero(buf, bufsz);
			return -CBI_EPASS;
		}
	} else {
		char text[512], again[CBI_PASS_MAX];
		snprintf(text, sizeof text, "%s for %s: ", p->label ? p->label : "Passphrase", what);
		if (!isatty(0) && !isatty(2))
			return -CBI_EPASS; /* no terminal to ask on */
		n = prompt(text, buf, bufsz);
		if (n > 0 && confirm) {
			snprintf(text, sizeof text, "%s again: ", p->label ? p->label : "Passphrase");
			int m = prompt(text, again, sizeof again);
			if (m < 0) {
				explicit_bzero(buf, bufsz);
				return m;
			}
			if (m != n || memcmp(buf, again, (size_t)n)) {
				memset(again, 0, sizeof again);
				cli_error("the passphrases differ");
				return -CBI_EPASS;
			}
			memset(again, 0, sizeof again);
		}
	}
	if (n > 0 && (size_t)n < sizeof p->cached) {
		memcpy(p->cached, buf, (size_t)n + 1);
		p->len = n;
		p->have = 1;
	}
	return n;
}

void cli_pass_init(struct cli_pass *p, const char *env)
{
	memset(p, 0, sizeof *p);
	p->env = env;
}

void cli_pass_wipe(struct cli_pass *p)
{
	volatile char *c = p->cached;
	for (size_t i = 0; i < sizeof p->cached; i++)
		c[i] = 0;
	p->have = 0;
}

int cli_parse_scrypt(const char *s, cbi_kdf_params *k)
{
	unsigned a, b, c;
	char end;
	/* the writer's floor: never cheaper than the local state's copy */
	if (sscanf(s, "%u:%u:%u%c", &a, &b, &c, &end) != 3 || a < CBI_KDF_FLOOR_LOG2_N || a > 24 ||
	    b < CBI_KDF_FLOOR_R || b > 64 || !c || c > 64)
		return -1;
	k->log2_n = a;
	k->r = b;
	k->p = c;
	return 0;
}
