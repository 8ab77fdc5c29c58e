/* s3view.c - DEST and points on object storage (s3://BUCKET/PREFIX) for
 * every command: --s3-endpoint URL is taken from anywhere among the
 * options; backup hands an s3:// DEST to cbi_objstore_backup(); the read
 * commands (list, info, restore, verify, mount) get a local view of the
 * bucket (cbi_objstore_view) in place of the s3:// operand, catalog rebuild
 * one made anew (cbi_objstore_rebuild); log keeps its operand
 * (cbi_objstore_log). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cli_s3_endpoint;
const char *cli_s3_state_dir;

static char view[4096];
static char operand[8192];
static int view_made;
static char shown[4096]; /* the s3:// operand the view stands for */
static char shown_dir[4096]; /* s3://BUCKET/PREFIX: what the view directory stands for */

/* The value of --state-dir among the options, else $CBIMG_STATE_DIR. */
static const char *state_dir(int argc, char **argv)
{
	for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], "--state-dir") && i + 1 < argc)
			return argv[i + 1];
		if (!strncmp(argv[i], "--state-dir=", 12))
			return argv[i] + 12;
	}
	const char *e = getenv("CBIMG_STATE_DIR");
	return e && *e ? e : NULL;
}

int cli_s3_prepare(const struct cli_command *cmd, int *argc, char **argv)
{
	const char *name = cmd->name;
	/* --s3-endpoint URL / --s3-endpoint=URL: taken out of argv */
	for (int i = 1; i < *argc && strcmp(argv[i], "--"); i++) {
		int n = 0;
		if (!strcmp(argv[i], "--s3-endpoint")) {
			if (i + 1 >= *argc) {
				cli_error("option '--s3-endpoint' needs a URL");
				return CLI_USAGE;
			}
			cli_s3_endpoint = argv[i + 1];
			n = 2;
		} else if (!strncmp(argv[i], "--s3-endpoint=", 14)) {
			cli_s3_endpoint = argv[i] + 14;
			n = 1;
		}
		if (n) {
			memmove(argv + i, argv + i + n, (size_t)(*argc - i - n + 1) * sizeof *argv);
			*argc -= n;
			i--;
		}
	}
	int images = !strcmp(name, "restore") || !strcmp(name, "verify") || !strcmp(name, "mount");
	int rebuild = !strcmp(name, "catalog"), log = !strcmp(name, "log");
	if (!strcmp(name, "backup") || !strcmp(name, "prune"))
		return CLI_OK; /* backup and prune take their DEST themselves */
	if (!images && !rebuild && !log && strcmp(name, "list") && strcmp(name, "info")) {
		for (int i = 2; i < *argc && strcmp(argv[i], "--"); i++)
			if (cbi_objstore_is_url(argv[i])) {
				cli_error("'%s': %s does not work on S3 (backup, list, info, restore, verify, "
					  "prune, mount, log and catalog do)", argv[i], name);
				return CLI_USAGE;
			}
		return CLI_OK;
	}
	const char *sd = state_dir(*argc, argv);
	cli_s3_state_dir = sd;
	int has_sd = 0;
	for (const struct cli_option *o = cmd->options; o && o->id; o++)
		has_sd |= o->name && !strcmp(o->name, "state-dir");
	for (int i = 2; !has_sd && i < *argc && strcmp(argv[i], "--"); i++) {
		/* --state-dir for a command without one: the view's only */
		int n = !strcmp(argv[i], "--state-dir") && i + 1 < *argc ? 2 : !strncmp(argv[i], "--state-dir=", 12);
		if (n) {
			memmove(argv + i, argv + i + n, (size_t)(*argc - i - n + 1) * sizeof *argv);
			*argc -= n;
			i--;
		}
	}
	for (int i = 2; i < *argc; i++) {
		if (!cbi_objstore_is_url(argv[i]) || (argv[i - 1][0] == '-' && !strchr(argv[i - 1], '=') &&
						      !strcmp(argv[i - 1], "--state-dir")))
			continue;
		if (log) /* the runs recorded here: cmd_log asks the library (cbi_objstore_log) */
			break;
		/* s3://b/p/NAME.cbx: the view of s3://b/p, then NAME in it */
		char url[4096];
		const char *pt = NULL;
		snprintf(url, sizeof url, "%s", argv[i]);
		size_t l = strlen(url);
		if (l > 4 && (!strcmp(url + l - 4, ".cbx") || !strcmp(url + l - 4, ".cbi"))) {
			char *sl = strrchr(url, '/');
			if (sl && sl > url + 5) {
				*sl = 0;
				pt = argv[i] + (sl - url) + 1;
			}
		}
		cbi_error err = { 0 };
		int rc = rebuild ? cbi_objstore_rebuild(url, cli_s3_endpoint, sd, view, sizeof view, &err)
				 : cbi_objstore_view(url, cli_s3_endpoint, sd, images, pt, view, sizeof view, &err);
		snprintf(shown, sizeof shown, "%s", argv[i]);
		snprintf(shown_dir, sizeof shown_dir, "%s", url);
		if (rc)
			return cli_fail(rc, &err);
		view_made = images;
		size_t nup = 0;
		if (!strcmp(name, "verify") && !cbi_objstore_uploads(url, cli_s3_endpoint, sd, &nup, &err) && nup)
			fprintf(stderr,
				"cbimg: note: %zu unfinished multipart upload%s under '%s': a backup running, or "
				"a killed one (its job's next run aborts it)\n",
				nup, nup == 1 ? "" : "s", url);
		if (pt)
			snprintf(operand, sizeof operand, "%s/%s", view, pt);
		else
			snprintf(operand, sizeof operand, "%s", view);
		argv[i] = operand;
		break; /* one s3:// operand */
	}
	return CLI_OK;
}

const char *cli_s3_shown(const char *arg)
{
	return shown[0] && !strcmp(arg, view) ? shown : arg;
}

void cli_s3_name(char *s, size_t sz)
{
	if (shown_dir[0] && view[0])
		cbi_objstore_subst(s, sz, view, shown_dir);
}

const char *cli_s3_named(const char *s, char *buf, size_t sz)
{
	snprintf(buf, sz, "%s", s ? s : "");
	cli_s3_name(buf, sz);
	return buf;
}

void cli_s3_detach(void)
{
	view_made = 0;
}

void cli_s3_finish(void)
{
	if (view_made)
		cbi_objstore_view_end(view);
	view_made = 0;
}
