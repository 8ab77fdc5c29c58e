/*
 * main.c - cbimg command dispatch, help, version, and the option parser
 * that every command builds from its table of struct cli_option.
 */
#include "cli.h"
#include "json.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const struct cli_command *const commands[] = {
	&cli_backup, &cli_restore, &cli_verify, &cli_info, &cli_list, &cli_log, &cli_catalog, &cli_passwd,
	&cli_prune,
	&cli_mount, &cli_umount,
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const struct cli_command *find_command(const char *name)
{
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (strcmp(commands[i]->name, name) == 0)
			return commands[i];
	return NULL;
}

/* ------------------------------------------------------------ messages */

int cli_json_mode;

/* The first error message of the run, for the JSON error object. */
static char first_error[1200];

/* The message of fmt into msg, an S3 view's files named by their s3://
 * URLs, and the first error of the run kept (for the JSON error object)
 * when error is set. */
static void format_msg(char *msg, size_t sz, int error, const char *fmt, va_list ap)
{
	vsnprintf(msg, sz, fmt, ap);
	cli_s3_name(msg, sz);
	if (error && !first_error[0])
		snprintf(first_error, sizeof first_error, "%.1199s", msg);
}

void cli_error(const char *fmt, ...)
{
	va_list ap;
	char msg[4096];

	cli_progress_clear(); /* never on the end of a progress line */
	fflush(stdout);
	va_start(ap, fmt);
	format_msg(msg, sizeof msg, 1, fmt, ap);
	va_end(ap);
	fprintf(stderr, "cbimg: %s\n", msg);
}

void cli_say(const char *kind, const char *fmt, ...)
{
	va_list ap;
	char msg[4096];

	cli_progress_clear();
	fflush(stdout);
	va_start(ap, fmt);
	format_msg(msg, sizeof msg, 0, fmt, ap);
	va_end(ap);
	fprintf(stderr, "cbimg: %s%s%s\n", kind ? kind : "", kind ? ": " : "", msg);
}

void cli_json_error(const char *msg, int status)
{
	struct json j;

	json_init(&j, stdout);
	json_begin_object(&j, NULL);
	json_u64(&j, "schema", CLI_JSON_SCHEMA);
	json_string(&j, "error", msg && msg[0] ? msg : "failed");
	json_i64(&j, "exit", status);
	json_end_object(&j);
	json_finish(&j);
}

/* Edit distance (insertions, deletions, substitutions, swaps of neighbours)
 * between a and b, at most 64 characters of each. */
static int edit_distance(const char *a, const char *b)
{
	int la = (int)strnlen(a, 64), lb = (int)strnlen(b, 64);
	int d[65][65];

	for (int i = 0; i <= la; i++)
		d[i][0] = i;
	for (int k = 0; k <= lb; k++)
		d[0][k] = k;
	for (int i = 1; i <= la; i++) {
		for (int k = 1; k <= lb; k++) {
			int v = d[i - 1][k - 1] + (a[i - 1] != b[k - 1]);
			if (d[i - 1][k] + 1 < v)
				v = d[i - 1][k] + 1;
			if (d[i][k - 1] + 1 < v)
				v = d[i][k - 1] + 1;
			if (i > 1 && k > 1 && a[i - 1] == b[k - 2] && a[i - 2] == b[k - 1] &&
			    d[i - 2][k - 2] + 1 < v)
				v = d[i - 2][k - 2] + 1;
			d[i][k] = v;
		}
	}
	return d[la][lb];
}

const char *cli_did_you_mean(const char *word, const char *const *names, size_t n)
{
	const char *best = NULL, *prefix = NULL;
	int best_d = 3, prefixes = 0;  /* a suggestion is at most 2 edits away */
	size_t len = strlen(word);

	if (!len)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		int d = edit_distance(word, names[i]);

		if (d < best_d) {
			best_d = d;
			best = names[i];
		}
		if (len >= 2 && !strncmp(word, names[i], len)) {
			prefix = names[i];
			prefixes++;
		}
	}
	if (best && best_d < (int)strlen(best))  /* not just any short word */
		return best;
	return prefixes == 1 ? prefix : NULL;
}

/* "cbimg: unknown command 'bakup' (did you mean 'backup'?)" */
static int unknown_command(const char *name)
{
	const char *names[N_COMMANDS + 1];
	const char *guess;

	for (size_t i = 0; i < N_COMMANDS; i++)
		names[i] = commands[i]->name;
	names[N_COMMANDS] = "help";
	guess = cli_did_you_mean(name, names, N_COMMANDS + 1);
	if (guess)
		cli_error("unknown command '%s' (did you mean '%s'?)", name, guess);
	else
		cli_error("unknown command '%s'", name);
	return CLI_USAGE;
}

int cli_fail(int rc, const cbi_error *err)
{
	/* After SIGINT or SIGTERM whatever failed failed because of it (a
	 * passphrase prompt ended by Ctrl-C comes back as "no passphrase"). */
	if (cli_interrupted()) {
		cli_error("interrupted");
		return CLI_FAIL;
	}
	if (rc == -CBI_EPASS && cli_pass_reported())
		; /* the password file's problem was printed: one line is enough */
	else if (err && err->msg[0])
		cli_error("%s", err->msg);
	else
		cli_error("%s", cbi_strerror(rc));
	if (rc == -CBI_EUSAGE || rc == -CBI_ENOTCBI)
		return CLI_USAGE;
	if (rc == -CBI_EPASS)
		return CLI_PASS;
	return cbi_is_damage(rc) ? CLI_DAMAGE : CLI_FAIL;
}

int cli_check_point_file(const char *path)
{
	cbi_error err = { 0 };
	int rc = cbi_probe(path, &err);

	return rc == -CBI_ENOTCBI ? cli_fail(rc, &err) : 0;
}

static void usage_hint(const struct cli_command *cmd)
{
	fprintf(stderr, "usage: cbimg %s %s\n", cmd->name, cmd->operands);
	fprintf(stderr, "Try 'cbimg %s --help' for more information.\n", cmd->name);
}

int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
{
	va_list ap;
	char msg[4096];

	fflush(stdout);
	va_start(ap, fmt);
	format_msg(msg, sizeof msg, 1, fmt, ap); /* an operand on S3: its s3:// URL */
	va_end(ap);
	fprintf(stderr, "cbimg %s: %s\n", cmd->name, msg);
	usage_hint(cmd);
	return CLI_USAGE;
}

/* The name of operand k (from 0) in cmd's operand synopsis: the words
 * outside brackets, such as SOURCE and DEST in "[options] SOURCE DEST".
 * Copied to buf; "" if there is no such word. */
static const char *operand_name(const struct cli_command *cmd, int k, char *buf, size_t size)
{
	const char *s = cmd->operands;
	int depth = 0;

	buf[0] = '\0';
	while (*s) {
		size_t n;

		if (*s == '[' || *s == ']') {
			depth += *s == '[' ? 1 : -1;
			s++;
			continue;
		}
		if (*s == ' ') {
			s++;
			continue;
		}
		n = strcspn(s, " []");
		if (depth == 0 && k-- == 0) {
			snprintf(buf, size, "%.*s", (int)n, s);
			break;
		}
		s += n;
	}
	return buf;
}

int cli_check_operands(const struct cli_command *cmd, int argc, char **argv, int want)
{
	int have = argc - optind;
	char name[64];

	if (have < want) {
		operand_name(cmd, have, name, sizeof name);
		if (!name[0])
			return cli_usage_error(cmd, "missing operand");
		if (strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == strlen(name))
			return cli_usage_error(cmd, "missing %s operand", name);
		return cli_usage_error(cmd, "missing operand '%s'", name);
	}
	if (have > want)
		return cli_usage_error(cmd, "unexpected operand '%s'", argv[optind + want]);
	return 0;
}

/* ---------------------------------------------------------------- usage */

#define HELP_COLUMN 26

void cli_print_usage(const struct cli_command *cmd, FILE *f)
{
	fprintf(f, "usage: cbimg %s %s\n\n%s\n", cmd->name, cmd->operands, cmd->summary);
	if (cmd->description)
		fprintf(f, "\n%s\n", cmd->description);
	fputs("\noptions:\n", f);
	for (const struct cli_option *o = cmd->options; o->id; o++) {
		char left[64];
		int n;

		if (o->id < 128)
			n = snprintf(left, sizeof left, "  -%c, --%s", o->id, o->name);
		else
			n = snprintf(left, sizeof left, "      --%s", o->name);
		if (o->arg && n > 0 && n < (int)sizeof left)
			n += snprintf(left + n, sizeof left - (size_t)n, " %s", o->arg);
		if (n + 2 > HELP_COLUMN)
			fprintf(f, "%s\n%*s%s\n", left, HELP_COLUMN, "", o->help);
		else
			fprintf(f, "%-*s%s\n", HELP_COLUMN, left, o->help);
	}
}

static void print_main_usage(FILE *f)
{
	fputs("usage: cbimg [--version] [--help] COMMAND [ARGS]\n\n"
	      "Changed-block incremental disk imager: a full image of a block device or\n"
	      "raw image file, then incrementals that store only the changed blocks.\n\n"
	      "commands:\n", f);
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %-10s%s\n", commands[i]->name, commands[i]->summary);
	fputs("\nRun 'cbimg help COMMAND' or 'cbimg COMMAND --help' for its options.\n"
	      "Exit status: 0 ok, 1 failure, 2 usage error, 3 damage detected, 4 wrong or missing passphrase.\n", f);
}

/* --------------------------------------------------------------- options */

int cli_getopt(const struct cli_command *cmd, int argc, char **argv)
{
	static struct option longopts[CLI_MAX_OPTIONS + 1];
	static char shortopts[2 * CLI_MAX_OPTIONS + 2];
	static const struct cli_command *built;
	int c, idx = -1;

	if (built != cmd) {
		size_t n = 0, s = 0;

		shortopts[s++] = ':';  /* report a missing argument as ':' */
		for (const struct cli_option *o = cmd->options; o->id && n < CLI_MAX_OPTIONS; o++, n++) {
			longopts[n] = (struct option){ o->name, o->arg ? required_argument : no_argument,
						       NULL, o->id };
			if (o->id < 128) {
				shortopts[s++] = (char)o->id;
				if (o->arg)
					shortopts[s++] = ':';
			}
		}
		memset(&longopts[n], 0, sizeof longopts[n]);
		shortopts[s] = '\0';
		built = cmd;
		optind = 1;
		opterr = 0;
	}

	c = getopt_long(argc, argv, shortopts, longopts, &idx);
	if (c == '?' || c == ':') {
		const struct cli_option *o = cmd->options;

		while (o->id && o->id != optopt)
			o++;
		if (c == ':' && o->id) {
			cli_usage_error(cmd, "option '--%s' requires an argument", o->name);
		} else if (o->id) {  /* "--flag=value" */
			cli_usage_error(cmd, "option '--%s' takes no argument", o->name);
		} else if (optopt > 0 && optopt < 128) {
			cli_usage_error(cmd, "unknown option '-%c'", optopt);
		} else {
			/* an unknown or ambiguous long option: getopt_long() has
			 * stepped past it, so it is argv[optind - 1] */
			const char *word = optind > 0 && optind <= argc ? argv[optind - 1] : "";
			int len = (int)strcspn(word, "=");
			const char *names[CLI_MAX_OPTIONS];
			const char *guess = NULL;
			char bare[64];
			size_t n = 0;

			for (o = cmd->options; o->id && n < CLI_MAX_OPTIONS; o++)
				names[n++] = o->name;
			if (!strncmp(word, "--", 2)) {
				snprintf(bare, sizeof bare, "%.*s", len - 2, word + 2);
				guess = cli_did_you_mean(bare, names, n);
			}
			if (guess)
				cli_usage_error(cmd, "unknown option '%.*s' (did you mean '--%s'?)", len, word,
						guess);
			else
				cli_usage_error(cmd, "unknown option '%.*s'", len, word);
		}
		return '?';
	}
	return c;
}

int cli_opt_exit(const struct cli_command *cmd, int id)
{
	if (id == 'h') {
		cli_print_usage(cmd, stdout);
		return CLI_OK;
	}
	if (id != '?')  /* an option in the table that the command forgot */
		cli_usage_error(cmd, "option not supported here");
	return CLI_USAGE;
}

/* ------------------------------------------------------------------ main */

static int cmd_help(int argc, char **argv)
{
	const struct cli_command *cmd;

	if (argc < 2) {
		print_main_usage(stdout);
		return CLI_OK;
	}
	cmd = find_command(argv[1]);
	if (!cmd)
		return unknown_command(argv[1]);
	cli_print_usage(cmd, stdout);
	return CLI_OK;
}

static int finish(int status)
{
	/* --json: a failure that printed no JSON document prints its error as one */
	if (cli_json_mode && status != CLI_OK && status != CLI_WARN && !json_documents)
		cli_json_error(first_error, status);
	/* a full disk or closed pipe on stdout must not look like success */
	if (fflush(stdout) != 0 || ferror(stdout)) {
		if (errno != EPIPE)
			fprintf(stderr, "cbimg: unable to write to standard output: %s\n",
				strerror(errno));
		return status ? status : CLI_FAIL;
	}
	return status;
}

int main(int argc, char **argv)
{
	const struct cli_command *cmd;
	const char *name = argc > 1 ? argv[1] : NULL;

	/* --json anywhere among the options (before "--"): errors too are JSON */
	for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
		if (!strcmp(argv[i], "--json"))
			cli_json_mode = 1;
	if (!name) {
		print_main_usage(stderr);
		return CLI_USAGE;
	}
	if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
		return finish(cmd_help(1, argv + 1));
	if (strcmp(name, "help") == 0)
		return finish(cmd_help(argc - 1, argv + 1));
	if (strcmp(name, "--version") == 0) {
		printf("cbimg %s (format version %d)\n", CBIMG_VERSION_STRING, CBI_FORMAT_VERSION);
		return finish(CLI_OK);
	}
	if (name[0] == '-') {
		cli_error("unknown option '%s'", name);
		fputs("Try 'cbimg --help' for more information.\n", stderr);
		return finish(CLI_USAGE);
	}
	cmd = find_command(name);
	if (!cmd) {
		unknown_command(name);
		fputs("Try 'cbimg --help' for more information.\n", stderr);
		return finish(CLI_USAGE);
	}
	cli_signals_install();
	int st = cli_s3_prepare(cmd, &argc, argv); /* s3:// operands (s3view.c) */
	if (st == CLI_OK)
		st = cmd->run(cmd, argc - 1, argv + 1);
	cli_s3_finish();
	return finish(st);
}
