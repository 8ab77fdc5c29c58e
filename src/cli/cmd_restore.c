/* cmd_restore.c - 'cbimg restore': write the disk state of a point. */
#include "cli.h"
#include "json.h"

#include <getopt.h>
#include <inttypes.h>

#include <stdlib.h>

enum { OPT_FORCE = 256, OPT_CHANGED_ONLY, OPT_THREADS, OPT_JSON, OPT_PASSWORD_FILE, OPT_STATE_DIR,
       OPT_JSON_PROGRESS, OPT_PARTITION, OPT_ALLOW_BAD };

static const struct cli_option restore_options[] = {
	{ OPT_FORCE, "force", NULL, "overwrite a non-empty file or a device" },
	{ OPT_CHANGED_ONLY, "changed-only", NULL, "write only blocks that differ on TARGET" },
	{ OPT_THREADS, "threads", "N", "worker threads (default: one per CPU)" },
	{ OPT_PARTITION, "partition", "N", "restore only partition N of the disk's partition table" },
	{ OPT_ALLOW_BAD, "allow-bad", NULL, "restore a point's bad ranges (unreadable at backup) as zeros" },
	{ OPT_PASSWORD_FILE, "password-file", "FILE", "passphrase of an encrypted chain from FILE (default: $CBIMG_PASSWORD, or ask)" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "also look for the chain's key file here (default /var/lib/cbimg)" },
	{ 'q', "quiet", NULL, "print neither progress nor summary" },
	{ OPT_JSON, "json", NULL, "print the result as one JSON object" },
	{ OPT_JSON_PROGRESS, "json-progress", NULL, "print progress as JSON Lines on stdout" },
	CLI_OPTS_SELECT,
	CLI_OPT_HELP,
	CLI_OPT_END
};

static void print_summary(const cbi_restore_opts *o, const cbi_restore_result *r)
{
	char h[32];

	printf("restored '%s' to '%s'\n", o->point, o->target);
	printf("blocks:   %" PRIu64 " total, %" PRIu64 " written, %" PRIu64 " skipped\n",
	       r->blocks_total, r->blocks_written, r->blocks_skipped);
	printf("written:  %s\n", cli_human_size(r->bytes_written, h));
	if (r->bad_ranges)
		printf("bad:      %" PRIu64 " bytes in %" PRIu64 " range%s written as zeros (unreadable at backup)\n",
		       r->bad_bytes, r->bad_ranges, cli_plural(r->bad_ranges));
	printf("time:     %.2f s, %.1f MB/s\n", r->seconds, cli_mb_per_s(r->bytes_written, r->seconds));
}

static void print_json(const cbi_restore_opts *o, const cbi_restore_result *r)
{
	struct json j;

	cbi_point p;
	cbi_error err = { 0 };

	json_init(&j, stdout);
	json_begin_object(&j, NULL);
	json_u64(&j, "schema", CLI_JSON_SCHEMA);
	/* "point" is the point object everywhere (as in backup and list) */
	if (cbi_point_info(o->point, &p, &err) == 0)
		cli_json_point(&j, "point", &p);
	else
		json_null(&j, "point");
	json_string(&j, "target", o->target);
	json_u64(&j, "blocks_total", r->blocks_total);
	json_u64(&j, "blocks_written", r->blocks_written);
	json_u64(&j, "blocks_skipped", r->blocks_skipped);
	json_u64(&j, "bytes_written", r->bytes_written);
	json_u64(&j, "bad_bytes", r->bad_bytes);
	json_u64(&j, "bad_ranges", r->bad_ranges);
	json_double(&j, "seconds", r->seconds);
	json_end_object(&j);
	json_finish(&j);
}

static int cmd_restore(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_restore_opts o = { 0 };
	cbi_restore_result r = { 0 };
	cbi_error err = { 0 };
	struct cli_progress prog;
	struct cli_pass pass;
	struct cli_select sel = { 0 };
	cbi_point chosen;
	int quiet = 0, json = 0, json_progress = 0, c, rc;
	uint64_t v;

	cli_pass_init(&pass, "CBIMG_PASSWORD");
	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		if ((rc = cli_select_option(cmd, &sel, c, optarg)) < 0)
			return CLI_USAGE;
		if (rc > 0)
			continue;
		switch (c) {
		case OPT_FORCE: o.force = 1; break;
		case OPT_CHANGED_ONLY: o.changed_only = 1; break;
		case OPT_ALLOW_BAD: o.allow_bad = 1; break;
		case OPT_THREADS:
			if (cli_parse_uint(optarg, 0, 1024, &v) < 0)
				return cli_usage_error(cmd, "invalid thread count '%s': expected 0 to 1024",
						       optarg);
			o.threads = (int)v;
			break;
		case OPT_PARTITION:
			if (cli_parse_uint(optarg, 1, 1u << 20, &v) < 0)
				return cli_usage_error(cmd, "invalid partition number '%s'", optarg);
			o.partition = (unsigned)v;
			break;
		case OPT_PASSWORD_FILE: pass.file = optarg; break;
		case OPT_STATE_DIR: o.state_dir = optarg; break;
		case 'q': quiet = 1; break;
		case OPT_JSON: json = 1; break;
		case OPT_JSON_PROGRESS: json_progress = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_select_operands(cmd, &sel, &argc, argv, 1)))
		return rc;
	if (cli_select_active(&sel, 1)) {
		/* DEST and a selector: the library chooses the point */
		if ((rc = cli_select_point(cmd, &sel, argv[optind], &chosen)))
			return rc;
		o.point = cli_point_path(&chosen);
		if (!quiet && !json && !json_progress) {
			char shown[4096]; /* on S3: the image's s3:// URL */
			fprintf(stderr, "cbimg: note: restoring '%s'\n", cli_s3_named(o.point, shown, sizeof shown));
		}
	} else {
		if ((rc = cli_select_file(cmd, argv[optind])))
			return rc;
		o.point = argv[optind];
	}
	o.target = argv[optind + 1];

	cli_progress_init(&prog, quiet || json);
	if (json_progress)
		cli_progress_json(&prog, "restore");
	o.progress = cli_progress_cb;
	o.progress_ud = &prog;
	o.pass = cli_pass_cb;
	o.pass_ud = &pass;
	if (!o.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		o.state_dir = getenv("CBIMG_STATE_DIR");
	rc = cbi_restore(&o, &r, &err);
	cli_pass_wipe(&pass);
	cli_progress_end(&prog);
	if (rc < 0)
		return cli_fail(rc, &err);

	if (json)
		print_json(&o, &r);
	else if (!quiet && !json_progress)
		print_summary(&o, &r);
	if (r.bad_ranges) {
		fflush(stdout);
		fprintf(stderr, "cbimg: warning: %" PRIu64 " bytes in %" PRIu64 " bad range%s were unreadable at backup and "
			"were written as zeros\n", r.bad_bytes, r.bad_ranges, cli_plural(r.bad_ranges));
		return CLI_WARN;
	}
	return CLI_OK;
}

const struct cli_command cli_restore = {
	.name = "restore",
	.operands = "[options] POINT TARGET",
	.summary = "write the disk state saved in POINT to TARGET",
	.description =
		"POINT is an image (.cbi) or index (.cbx) file; the points it builds on are\n"
		"found by their ids. Or a selector chooses it in directory DEST:\n"
		"'cbimg restore DEST latest TARGET' (or --latest) the newest point, --at TIME\n"
		"the newest created at or before TIME (2026-12-06T10:00:00Z, or local time\n"
		"'2026-12-06 10:00'); --host, --source and --job narrow the choice to one\n"
		"job (several matching jobs are refused, exit 2). --json-progress prints\n"
		"progress as JSON Lines on stdout. TARGET is a block device or a file. A mounted TARGET\n"
		"is refused; an existing non-empty file or a device needs --force.\n"
		"An encrypted chain needs its passphrase and its key file (.cbk) beside the\n"
		"chain or in the local state. Exit 4: wrong or missing passphrase.\n"
		"A point with bad ranges (backup --rescue) is refused with exit 3, naming\n"
		"them; --allow-bad writes them as zeros and exits 5.",
	.options = restore_options,
	.run = cmd_restore,
};
