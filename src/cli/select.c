/* select.c - point selectors on the command line (--latest, --at TIME,
 * --host, --source, --job, "DEST latest"): the choice itself is the
 * library's (cbi_select_point()). */
#include "cli.h"

#include <getopt.h>
#include <string.h>
#include <sys/stat.h>

int cli_select_option(const struct cli_command *cmd, struct cli_select *s, int id, const char *arg)
{
	cbi_error err = { 0 };

	switch (id) {
	case CLI_OPT_LATEST: s->latest = 1; return 1;
	case CLI_OPT_AT:
		if (cbi_parse_time(arg, &s->sel.at_ns, &err) < 0) {
			cli_usage_error(cmd, "%s", err.msg);
			return -1;
		}
		return 1;
	case CLI_OPT_SEL_HOST: s->sel.host = arg; s->narrow = 1; return 1;
	case CLI_OPT_SEL_SOURCE: s->sel.source = arg; s->narrow = 1; return 1;
	case CLI_OPT_SEL_JOB: s->sel.job = arg; s->narrow = 1; return 1;
	}
	return 0;
}

int cli_select_operands(const struct cli_command *cmd, struct cli_select *s, int *argc, char **argv,
			int rest)
{
	if (*argc - optind == rest + 2 && !strcmp(argv[optind + 1], "latest")) {
		s->latest = 1;
		memmove(&argv[optind + 1], &argv[optind + 2], (size_t)(*argc - optind - 2) * sizeof *argv);
		(*argc)--;
		argv[*argc] = NULL;
	}
	return cli_check_operands(cmd, *argc, argv, rest + 1);
}

int cli_select_active(const struct cli_select *s, int narrow)
{
	return s->latest || s->sel.at_ns || (narrow && s->narrow);
}

int cli_select_point(const struct cli_command *cmd, const struct cli_select *s, const char *dest,
		     cbi_point *out)
{
	cbi_error err = { 0 };
	struct stat st;
	int rc;

	if (stat(dest, &st) == 0 && !S_ISDIR(st.st_mode))
		return cli_usage_error(cmd, "'%s' is not a directory: a selector (latest, --latest, --at, "
				       "--host, --source, --job) chooses a point in DEST", dest);
	rc = cbi_select_point(dest, &s->sel, out, &err);
	if (rc < 0)
		return cli_fail(rc, &err);
	return 0;
}

const char *cli_point_path(const cbi_point *p)
{
	return p->file[0] ? p->file : p->index_file;
}

int cli_select_file(const struct cli_command *cmd, const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return cli_usage_error(cmd, "'%s' is a directory: name a point file in it, or select a point "
				       "with 'latest', --latest or --at TIME", path);
	return cli_check_point_file(path);
}
