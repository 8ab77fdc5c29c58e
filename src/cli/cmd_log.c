/*
 * cmd_log.c - 'cbimg log' (the history of backup runs in DEST's catalog)
 * and 'cbimg catalog rebuild'.
 */
#include "cli.h"
#include "json.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_JSON = 256, OPT_HOST, OPT_SOURCE, OPT_JOB, OPT_LIMIT };

/* ------------------------------------------------------------------- log */

static const struct cli_option log_options[] = {
	{ OPT_HOST, "host", "H", "only the runs of host H" },
	{ OPT_SOURCE, "source", "S", "only the runs of source S (its id or its path)" },
	{ OPT_JOB, "job", "J", "only the runs of job J" },
	{ OPT_LIMIT, "limit", "N", "only the newest N runs" },
	{ OPT_JSON, "json", NULL, "print one JSON array with an object per run" },
	CLI_OPT_HELP,
	CLI_OPT_END
};

enum { C_STARTED, C_ENDED, C_DURATION, C_HOST, C_JOB, C_SOURCE, C_RESULT, C_READ, C_WRITTEN, C_FILE,
       N_C };

static const char *const c_names[N_C] = {
	"STARTED", "ENDED", "DURATION", "HOST", "JOB", "SOURCE", "RESULT", "READ", "WRITTEN", "FILE",
};
static const int c_right[N_C] = { 0, 0, 1, 0, 0, 0, 0, 1, 1, 0 };

struct log_row {
	const char *cell[N_C];
	char started[32], ended[32], duration[32], host[80], job[80], source[80], read[32],
		written[32], file[280];
};

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* "45s", "3m07s", "2h05m": whole seconds, rounded down. */
static void format_duration(int64_t ns, char buf[32])
{
	int64_t s = ns / 1000000000;

	if (s < 60)
		snprintf(buf, 32, "%" PRId64 "s", s);
	else if (s < 3600)
		snprintf(buf, 32, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else
		snprintf(buf, 32, "%" PRId64 "h%02" PRId64 "m", s / 3600, s / 60 % 60);
}

static void fill_log_row(struct log_row *r, const cbi_run *u)
{
	int ended = u->ended_ns != 0;

	cli_iso_time(u->started_ns, r->started);
	if (ended) {
		cli_iso_time(u->ended_ns, r->ended);
		format_duration(u->ended_ns > u->started_ns ? u->ended_ns - u->started_ns : 0,
				r->duration);
	} else {
		strcpy(r->ended, "-");
		strcpy(r->duration, "-");
	}
	cli_human_size(u->bytes_read, r->read);
	cli_human_size(u->bytes_written, r->written);
	r->cell[C_STARTED] = r->started;
	r->cell[C_ENDED] = r->ended;
	r->cell[C_DURATION] = r->duration;
	r->cell[C_HOST] = cli_printable(u->host, r->host, sizeof r->host);
	r->cell[C_JOB] = cli_printable(u->job, r->job, sizeof r->job);
	r->cell[C_SOURCE] = cli_printable(u->source_path[0] ? u->source_path : u->source_id, r->source,
					  sizeof r->source);
	r->cell[C_RESULT] = cbi_run_result_name(u->result);
	r->cell[C_READ] = r->read;
	r->cell[C_WRITTEN] = r->written;
	if (u->kind == CBI_RUN_PRUNE) {
		/* a prune writes no point of its own */
		snprintf(r->file, sizeof r->file, "prune: %" PRIu32 " point%s removed", u->points_removed,
			 u->points_removed == 1 ? "" : "s");
		r->cell[C_FILE] = r->file;
		return;
	}
	r->cell[C_FILE] = u->file[0] || u->index_file[0] ?
		cli_printable(base_name(u->file[0] ? u->file : u->index_file), r->file, sizeof r->file) :
		"-";
}

static void print_log_row(const char *const cell[N_C], const int width[N_C])
{
	for (int c = 0; c < N_C; c++) {
		const char *sep = c ? "  " : "";

		if (c == N_C - 1)
			printf("%s%s", sep, cell[c]);
		else
			printf("%s%*s", sep, c_right[c] ? width[c] : -width[c], cell[c]);
	}
	putchar('\n');
}

/* One line per run; a run's message (why it failed, or a warning) follows
 * on a line of its own, indented. */
static void print_log_table(const cbi_run *runs, size_t n)
{
	int width[N_C];
	struct log_row r;
	char msg[600];

	for (int c = 0; c < N_C; c++)
		width[c] = (int)strlen(c_names[c]);
	for (size_t i = 0; i < n; i++) {
		fill_log_row(&r, &runs[i]);
		for (int c = 0; c < N_C; c++)
			if ((int)strlen(r.cell[c]) > width[c])
				width[c] = (int)strlen(r.cell[c]);
	}
	print_log_row(c_names, width);
	for (size_t i = 0; i < n; i++) {
		fill_log_row(&r, &runs[i]);
		print_log_row(r.cell, width);
		if (runs[i].message[0])
			printf("    %s\n", cli_printable(runs[i].message, msg, sizeof msg));
	}
}

static int is_zero16(const uint8_t *b)
{
	for (int i = 0; i < 16; i++)
		if (b[i])
			return 0;
	return 1;
}

static void json_run(struct json *j, const cbi_run *u)
{
	char when[32], hex[33];

	json_begin_object(j, NULL);
	json_u64(j, "schema", CLI_JSON_SCHEMA);
	json_i64(j, "id", u->id);
	json_string(j, "host", u->host);
	json_string(j, "job", u->job);
	json_string(j, "source", u->source_id);
	json_string(j, "source_path", u->source_path);
	json_string(j, "started", cli_iso_time(u->started_ns, when));
	json_i64_string(j, "started_ns", u->started_ns);
	if (u->ended_ns) {
		json_string(j, "ended", cli_iso_time(u->ended_ns, when));
		json_i64_string(j, "ended_ns", u->ended_ns);
		json_double(j, "seconds", (double)(u->ended_ns - u->started_ns) / 1e9);
	} else {
		json_null(j, "ended");
		json_null(j, "ended_ns");
		json_null(j, "seconds");
	}
	json_string(j, "result", cbi_run_result_name(u->result));
	json_string(j, "kind", u->kind == CBI_RUN_PRUNE ? "prune" : "backup");
	if (u->kind == CBI_RUN_PRUNE)
		json_u64(j, "points_removed", u->points_removed);
	json_string(j, "message", u->message[0] ? u->message : NULL);
	json_u64(j, "bytes_read", u->bytes_read);
	json_u64(j, "bytes_written", u->bytes_written);
	/* "point" is an object, as in backup, restore and list (with the members
	 * the run knows); type, file and index_file repeat it for short jq paths */
	if (is_zero16(u->point_id)) {
		json_null(j, "point");
		json_null(j, "type");
	} else {
		json_begin_object(j, "point");
		cli_hex(u->point_id, 16, hex);
		json_string(j, "id", hex);
		json_string(j, "type", u->type == CBI_FULL ? "full" : "incremental");
		json_string(j, "file", u->file[0] ? u->file : NULL);
		json_string(j, "index_file", u->index_file[0] ? u->index_file : NULL);
		json_end_object(j);
		json_string(j, "type", u->type == CBI_FULL ? "full" : "incremental");
	}
	json_string(j, "file", u->file[0] ? u->file : NULL);
	json_string(j, "index_file", u->index_file[0] ? u->index_file : NULL);
	json_end_object(j);
}

static int cmd_log(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_list_filter filter = { 0 };
	cbi_run *runs = NULL;
	size_t n = 0;
	cbi_error err = { 0 };
	uint64_t limit;
	int json = 0, c, rc;

	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		switch (c) {
		case OPT_JSON: json = 1; break;
		case OPT_HOST: filter.host = optarg; break;
		case OPT_SOURCE: filter.source = optarg; break;
		case OPT_JOB: filter.job = optarg; break;
		case OPT_LIMIT:
			if (cli_parse_uint(optarg, 1, SIZE_MAX, &limit))
				return cli_usage_error(cmd, "invalid --limit '%s': a number from 1 up",
						       optarg);
			filter.limit = (size_t)limit;
			break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_check_operands(cmd, argc, argv, 1)))
		return rc;

	rc = cbi_objstore_is_url(argv[optind]) /* the runs recorded on this machine (cbimg-log(1)) */
		     ? cbi_objstore_log(argv[optind], cli_s3_endpoint, cli_s3_state_dir, &filter, &runs, &n, &err)
		     : cbi_log(argv[optind], &filter, &runs, &n, &err);
	if (rc < 0)
		return cli_fail(rc, &err);
	if (json) {
		struct json j;
		json_init(&j, stdout);
		json_begin_array(&j, NULL);
		for (size_t i = 0; i < n; i++)
			json_run(&j, &runs[i]);
		json_end_array(&j);
		json_finish(&j);
	} else if (n == 0) {
		cli_say(NULL, "no %sruns recorded in '%s'", filter.host || filter.source || filter.job ? "matching " : "",
			argv[optind]);
	} else {
		print_log_table(runs, n);
	}
	free(runs);
	return CLI_OK;
}

const struct cli_command cli_log = {
	.name = "log",
	.operands = "[--host H] [--source S] [--job J] [--limit N] [--json] DEST",
	.summary = "show the history of backup runs into directory DEST",
	.description =
		"One line per backup run recorded in the catalog DEST/cbimg-catalog.sqlite,\n"
		"oldest first, failed and interrupted runs included: when it started and\n"
		"ended, host, job, source, result, bytes read from the source and written to\n"
		"DEST, and the image file of the point it wrote. The message of a failed run\n"
		"(or the warning of a successful one) follows on its own line. The history\n"
		"is only in the catalog: deleting the catalog forgets it.",
	.options = log_options,
	.run = cmd_log,
};

/* --------------------------------------------------------------- catalog */

static const struct cli_option catalog_options[] = {
	{ 'q', "quiet", NULL, "print nothing on success" },
	{ OPT_JSON, "json", NULL, "print the result as one JSON object" },
	CLI_OPT_HELP,
	CLI_OPT_END
};

static int cmd_catalog(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_error err = { 0 };
	cbi_point *pts = NULL;
	size_t n = 0;
	int quiet = 0, json = 0, c, rc;

	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		switch (c) {
		case 'q': quiet = 1; break;
		case OPT_JSON: json = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_check_operands(cmd, argc, argv, 2)))
		return rc;
	if (strcmp(argv[optind], "rebuild") != 0)
		return cli_usage_error(cmd, "unknown action '%s' (only 'rebuild')", argv[optind]);

	const char *dest = argv[optind + 1];
	/* an s3:// DEST: its view was made anew and its catalog rebuilt from a LIST by cli_s3_prepare */
	rc = cli_s3_shown(dest) != dest ? 0 : cbi_catalog_rebuild(dest, &err);
	if (rc < 0)
		return cli_fail(rc, &err);
	if (!quiet || json) {
		rc = cbi_list(dest, &pts, &n, &err);
		if (rc < 0)
			return cli_fail(rc, &err);
		free(pts);
	}
	if (json) {
		struct json j;
		json_init(&j, stdout);
		json_begin_object(&j, NULL);
		json_u64(&j, "schema", CLI_JSON_SCHEMA);
		json_string(&j, "action", "rebuild");
		json_string(&j, "dest", cli_s3_shown(dest));
		json_u64(&j, "points", n);
		json_end_object(&j);
		json_finish(&j);
	} else if (!quiet) {
		printf("catalog of '%s' rebuilt: %zu point%s\n", cli_s3_shown(dest), n, cli_plural(n));
	}
	return CLI_OK;
}

const struct cli_command cli_catalog = {
	.name = "catalog",
	.operands = "[-q] [--json] rebuild DEST",
	.summary = "rebuild the catalog of directory DEST from its files",
	.description =
		"The catalog DEST/cbimg-catalog.sqlite is a cache of what the image and index\n"
		"files say, kept up to date automatically: 'list' reads only the files it\n"
		"does not know. 'rebuild' reads every file again. The run history that\n"
		"'cbimg log' shows is kept.",
	.options = catalog_options,
	.run = cmd_catalog,
};
