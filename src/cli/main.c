/*
 * main.c - cbimg command dispatch, help, version, and the option parser
 * that every command builds from its table of struct cli_option.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const struct cli_command *const commands[] = {
	&cli_backup, &cli_restore, &cli_verify, &cli_info, &cli_list, &cli_log, &cli_catalog, &cli_passwd,
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

void cli_error(const char *fmt, ...)
{
	va_list ap;

	cli_progress_clear(); /* never on the end of a progress line */
	fflush(stdout);
	fputs("cbimg: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
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
	if (rc == -CBI_EUSAGE)
		return CLI_USAGE;
	if (rc == -CBI_EPASS)
		return CLI_PASS;
	return cbi_is_damage(rc) ? CLI_DAMAGE : CLI_FAIL;
}

static void usage_hint(const struct cli_command *cmd)
{
	fprintf(stderr, "usage: cbimg %s %s\n", cmd->name, cmd->operands);
	fprintf(stderr, "Try 'cbimg %s --help' for more information.\n", cmd->name);
}

int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "cbimg %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	usage_hint(cmd);
	return CLI_USAGE;
}

int cli_check_operands(const struct cli_command *cmd, int argc, char **argv, int want)
{
	int have = argc - optind;

	if (have < want)
		return cli_usage_error(cmd, "missing operand");
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
			cli_usage_error(cmd, "unknown option '%.*s'", (int)strcspn(word, "="), word);
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
	if (!cmd) {
		cli_error("unknown command '%s'", argv[1]);
		return CLI_USAGE;
	}
	cli_print_usage(cmd, stdout);
	return CLI_OK;
}

static int finish(int status)
{
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
		return CLI_USAGE;
	}
	cmd = find_command(name);
	if (!cmd) {
		cli_error("unknown command '%s'", name);
		fputs("Try 'cbimg --help' for more information.\n", stderr);
		return CLI_USAGE;
	}
	cli_signals_install();
	return finish(cmd->run(cmd, argc - 1, argv + 1));
}
