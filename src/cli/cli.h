/*
 * cli.h - what the cbimg commands share (src/cli only; uses only cbimg.h).
 *
 * Each command lives in cmd_<name>.c and exports one struct cli_command that
 * main.c lists in its dispatch table. A command declares its options as a
 * table of struct cli_option next to its usage, so the parser and --help are
 * built from the same data and cannot drift apart.
 */
#ifndef CBIMG_CLI_H
#define CBIMG_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "cbimg.h"

/* Exit statuses of the tool (documented in cbimg(1)). */
enum {
	CLI_OK = 0,      /* success */
	CLI_FAIL = 1,    /* the operation failed */
	CLI_USAGE = 2,   /* bad command line or option value */
	CLI_DAMAGE = 3,  /* stored data was found damaged, incomplete or altered */
	CLI_PASS = 4,    /* wrong passphrase, or none given for an encrypted chain */
	CLI_WARN = 5,    /* success, with a warning that monitoring should see (a live source
	                  * read without a snapshot, a catalog not updated or missing, a chain
	                  * behind the local state) */
};

/* One option of a command. A printable ASCII id doubles as the short option
 * letter ('q' gives -q); ids from 256 up have a long form only. */
struct cli_option {
	int id;             /* value returned by cli_getopt(), never 0 */
	const char *name;   /* long name without the leading "--" */
	const char *arg;    /* name of the argument in the usage, NULL for a flag */
	const char *help;   /* one short line */
};

#define CLI_OPT_HELP { 'h', "help", NULL, "show this help and exit" }
#define CLI_OPT_END { 0, NULL, NULL, NULL }
#define CLI_MAX_OPTIONS 32

struct cli_command {
	const char *name;                  /* "backup" */
	const char *operands;              /* "[options] SOURCE DEST" */
	const char *summary;               /* one line for 'cbimg --help' */
	const char *description;           /* a paragraph for --help, or NULL */
	const struct cli_option *options;  /* ends with CLI_OPT_END */
	/* argv[0] is the command name; returns the exit status. */
	int (*run)(const struct cli_command *cmd, int argc, char **argv);
};

extern const struct cli_command cli_backup, cli_restore, cli_verify, cli_info, cli_list, cli_log,
	cli_catalog, cli_passwd, cli_prune, cli_mount, cli_umount;

/* ----------------------------------------------------------- main.c */

/* Next option of argv for cmd, getopt_long() style (optind/optarg are the
 * usual globals; operands may be mixed with options). Returns the option's
 * id, -1 when only operands remain, 'h' for --help, or '?' after printing a
 * usage error to stderr. Commands pass 'h', '?' and unknown ids to
 * cli_opt_exit(). */
int cli_getopt(const struct cli_command *cmd, int argc, char **argv);

/* Exit status for an option the command does not handle itself: prints the
 * full usage to stdout for 'h' and returns CLI_OK, else returns CLI_USAGE. */
int cli_opt_exit(const struct cli_command *cmd, int id);

/* Full usage of cmd (for --help and 'cbimg help CMD'). */
void cli_print_usage(const struct cli_command *cmd, FILE *f);

/* "cbimg CMD: <message>" plus a short usage hint on stderr; returns CLI_USAGE. */
int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Check that exactly `want` operands follow optind; otherwise report a usage
 * error and return CLI_USAGE. Returns 0 when the count is right. */
int cli_check_operands(const struct cli_command *cmd, int argc, char **argv, int want);

/* "cbimg: <message>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "cbimg: KIND: message" (KIND NULL: "cbimg: message") on stderr, an S3
 * view's files named by their s3:// URLs (notes and warnings). */
void cli_say(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Version of every JSON document the tool prints (its member "schema");
 * raised when a member changes meaning or goes away, not when one is added. */
#define CLI_JSON_SCHEMA 1

/* --json was given: main() prints, for a run that fails without having
 * printed a JSON document, one error object on stdout (cli_json_error()). */
/* s3view.c: --s3-endpoint (taken from argv by cli_s3_prepare), and the
 * local view of an s3:// operand of list, info, restore and verify, removed
 * by cli_s3_finish(). cli_s3_prepare returns CLI_OK or an exit status. */
extern const char *cli_s3_endpoint;
int cli_s3_prepare(const struct cli_command *cmd, int *argc, char **argv);
void cli_s3_finish(void);
/* The state directory given for an s3:// operand (--state-dir, else
 * $CBIMG_STATE_DIR; NULL: the default); the s3:// operand a view directory
 * stands for (operand itself otherwise), for messages; and, in a process
 * that leaves the view to another (mount's parent after the fork), the view
 * kept at exit. */
extern const char *cli_s3_state_dir;
const char *cli_s3_shown(const char *operand);
/* Every mention of the local view in message s (of size sz) replaced by the
 * s3://BUCKET/PREFIX it stands for: errors name the bucket's objects. */
void cli_s3_name(char *s, size_t sz);
/* s (NULL: "") copied into buf (sz bytes) and named so: returns buf. */
const char *cli_s3_named(const char *s, char *buf, size_t sz);
void cli_s3_detach(void);

extern int cli_json_mode;

/* {"schema": 1, "error": msg, "exit": status} on stdout. */
void cli_json_error(const char *msg, int status);

/* Of names[0..n), the one word most likely meant (at most two edits away,
 * or the only name it is a prefix of), or NULL. */
const char *cli_did_you_mean(const char *word, const char *const *names, size_t n);

/* "s" unless n is 1: printf("%d point%s", n, cli_plural(n)). */
static inline const char *cli_plural(uint64_t n) { return n == 1 ? "" : "s"; }

/* A point file given as an operand: 0 when it starts as a cbimg image or
 * index does (or cannot be opened: the library says why later), else a
 * usage error ("'FILE': not a cbimg image or index") and CLI_USAGE. */
int cli_check_point_file(const char *path);

/* Report a failed library call (rc < 0) as one line on stderr and return the
 * exit status for it: CLI_USAGE for CBI_EUSAGE and CBI_ENOTCBI, CLI_DAMAGE for damage codes,
 * CLI_FAIL otherwise ("cbimg: interrupted" after SIGINT/SIGTERM). */
int cli_fail(int rc, const cbi_error *err);

/* ----------------------------------------------------------- pass.c */

/* A passphrase source: file (--password-file, "-" for stdin), else the
 * environment variable env, else a prompt without echo on the terminal.
 * The first passphrase obtained is kept for later chains of the same run. */
struct cli_pass {
	const char *file;
	const char *env;         /* "CBIMG_PASSWORD" */
	const char *label;       /* prompt text, NULL: "Passphrase" */
	int have, len;
	char cached[CBI_PASS_MAX];
};

void cli_pass_init(struct cli_pass *p, const char *env);
/* cbi_pass_fn with a struct cli_pass as user data. */
int cli_pass_cb(void *ud, const char *what, int confirm, char *buf, size_t bufsz);
void cli_pass_wipe(struct cli_pass *p);
/* Has a password file's problem already been printed (one line)? */
int cli_pass_reported(void);

/* "LOG2N:R:P", e.g. "15:8:4". 0 or -1. */
int cli_parse_scrypt(const char *s, cbi_kdf_params *k);

/* ----------------------------------------------------------- size.c */

/* Parse a byte count: digits with an optional K, M, G or T suffix (powers of
 * 1024; "K", "KB" and "KiB" are the same, case does not matter) or a plain
 * "B". Returns 0, or -1 for an empty string, garbage or overflow. */
int cli_parse_size(const char *s, uint64_t *out);

/* Parse a decimal integer in [min, max]. Returns 0 or -1. */
int cli_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* "512 B", "64.0 KiB", "1.2 GiB" into buf; returns buf. */
char *cli_human_size(uint64_t bytes, char buf[32]);

/* Megabytes (10^6) per second, 0 when seconds is not positive. */
double cli_mb_per_s(uint64_t bytes, double seconds);

/* --------------------------------------------------------- select.c */

/* Point selectors of restore, info, verify and list: --latest, --at TIME,
 * --host, --source, --job, and the operand "latest" after DEST. Option ids
 * from 1000 up, apart from the commands' own. */
enum { CLI_OPT_LATEST = 1000, CLI_OPT_AT, CLI_OPT_SEL_HOST, CLI_OPT_SEL_SOURCE, CLI_OPT_SEL_JOB };

#define CLI_OPTS_SELECT_TIME \
	{ CLI_OPT_LATEST, "latest", NULL, "the newest point in DEST (as the operand 'latest')" }, \
	{ CLI_OPT_AT, "at", "TIME", "the newest point in DEST created at or before TIME" }
#define CLI_OPTS_SELECT \
	CLI_OPTS_SELECT_TIME, \
	{ CLI_OPT_SEL_HOST, "host", "H", "select among the points of host H" }, \
	{ CLI_OPT_SEL_SOURCE, "source", "S", "select among the points of source S (id or path)" }, \
	{ CLI_OPT_SEL_JOB, "job", "J", "select among the points of job J" }

struct cli_select {
	cbi_selector sel;
	int latest;      /* --latest, or the operand "latest" */
	int narrow;      /* --host, --source or --job */
};

/* Take option id if it is a selector option: 1 when taken, 0 when not,
 * -1 after a usage error (an invalid TIME; return CLI_USAGE). */
int cli_select_option(const struct cli_command *cmd, struct cli_select *s, int id, const char *arg);

/* Check the operands: the point (a file, or DEST with a selector) and then
 * `rest` more. "DEST latest REST..." is taken as --latest (the operand is
 * removed from argv). 0, or the usage error's status. */
int cli_select_operands(const struct cli_command *cmd, struct cli_select *s, int *argc, char **argv,
			int rest);

/* Is a point selected from a DEST (any selector given; narrow: --host,
 * --source or --job count too)? */
int cli_select_active(const struct cli_select *s, int narrow);

/* Choose the point in dest (a directory, else a usage error): 0 and *out,
 * or the exit status after printing the error (2 for several candidates,
 * 1 when none matches). */
int cli_select_point(const struct cli_command *cmd, const struct cli_select *s, const char *dest,
		     cbi_point *out);

/* A point given as a file without a selector: cli_check_point_file(), and
 * a directory is a usage error that suggests a selector. */
int cli_select_file(const struct cli_command *cmd, const char *path);

/* The file to hand to restore/verify/info for p: its image, else its index. */
const char *cli_point_path(const cbi_point *p);

/* ------------------------------------------------------- progress.c */

/* Install SIGINT and SIGTERM handlers that only set a flag; a second signal
 * terminates at once. */
void cli_signals_install(void);

/* True once SIGINT or SIGTERM arrived. */
int cli_interrupted(void);

/* Seconds on a monotonic clock. */
double cli_now(void);

/* A one-line progress display on stderr. Always pass cli_progress_cb with
 * the struct as user data: it also asks the library to stop after a signal,
 * even when nothing is drawn. */
struct cli_progress {
	int show;        /* draw (stderr is a terminal, not -q, not --json) */
	const char *json_command; /* --json-progress: JSON Lines on stdout for this command */
	double json_last;         /* time of the last JSON line */
	uint64_t done, total;     /* the last values seen */
	double start;    /* cli_now() at init */
	double last;     /* time of the last redraw */
	int width;       /* characters on the line now, 0 when clear */
};

/* quiet: -q or --json was given; drawing also needs stderr to be a tty. */
void cli_progress_init(struct cli_progress *p, int quiet);

/* cbi_progress_fn: redraws at most about 5 times per second; returns
 * non-zero once the user asked to stop. */
int cli_progress_cb(void *ud, uint64_t done, uint64_t total);

/* --json-progress: also write one JSON object per line on stdout, at most
 * about 4 a second and a final one from cli_progress_end():
 * {"schema":1,"message_type":"progress","command":CMD,"bytes_done":N,
 * "bytes_total":N,"percent":F,"elapsed":F,"rate":F,"final":B}.
 * Other JSON documents are then printed on one line each too. */
void cli_progress_json(struct cli_progress *p, const char *command);

/* Clear the progress line (call before printing anything else); with
 * --json-progress, write the final JSON line. */
void cli_progress_end(struct cli_progress *p);

/* Clear whatever progress line is on the screen, to print a message or a
 * prompt on a line of its own; the line comes back at the next redraw.
 * cli_error() and the passphrase prompt call it. */
void cli_progress_clear(void);

/* ------------------------------------------------------- cmd_info.c */

struct json;

/* Lowercase hex of n bytes into out (2n+1 bytes). */
void cli_hex(const uint8_t *bytes, size_t n, char *out);

/* ISO 8601 UTC ("2026-11-22T04:33:23Z") of a Unix time in nanoseconds. */
char *cli_iso_time(int64_t ns, char buf[32]);

/* s with control characters replaced by '?' (for a terminal: the strings
 * come from files that may be damaged or crafted), in buf; returns buf. */
const char *cli_printable(const char *s, char *buf, size_t size);

/* Write the JSON object describing a point, as a member named key (or as an
 * array element / top-level value when key is NULL). */
void cli_json_point(struct json *j, const char *key, const cbi_point *p);

#endif
