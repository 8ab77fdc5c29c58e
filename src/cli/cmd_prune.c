/* cmd_prune.c - 'cbimg prune': keep rules, merged points. */
#include "cli.h"
#include "json.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum {
	OPT_HOST = 256, OPT_SOURCE, OPT_JOB, OPT_LAST, OPT_HOURLY, OPT_DAILY, OPT_WEEKLY, OPT_MONTHLY, OPT_YEARLY,
	OPT_WITHIN, OPT_CHAINS, OPT_DRY_RUN, OPT_JSON, OPT_PASSWORD_FILE, OPT_STATE_DIR, OPT_NO_STATE,
	OPT_JSON_PROGRESS,
};

static const struct cli_option prune_options[] = {
	{ OPT_HOST, "host", "H", "the points of host H" },
	{ OPT_SOURCE, "source", "S", "the points of source S (its id or its path)" },
	{ OPT_JOB, "job", "J", "the points of job J" },
	{ OPT_LAST, "keep-last", "N", "keep the N newest points" },
	{ OPT_HOURLY, "keep-hourly", "N", "keep the newest point of each of the last N hours that have one" },
	{ OPT_DAILY, "keep-daily", "N", "... of each of the last N days" },
	{ OPT_WEEKLY, "keep-weekly", "N", "... of each of the last N weeks (ISO weeks)" },
	{ OPT_MONTHLY, "keep-monthly", "N", "... of each of the last N months" },
	{ OPT_YEARLY, "keep-yearly", "N", "... of each of the last N years" },
	{ OPT_WITHIN, "keep-within", "DURATION", "keep the points made within DURATION (30d, 2w, 12h, 1y2m) of the newest" },
	{ OPT_CHAINS, "keep-chains", "N", "keep every point of the N newest chains" },
	{ OPT_DRY_RUN, "dry-run", NULL, "show what would be kept, merged and removed; change nothing" },
	{ 'q', "quiet", NULL, "print neither progress nor the table (notes still go to stderr)" },
	{ OPT_JSON, "json", NULL, "print the result as one JSON object" },
	{ OPT_JSON_PROGRESS, "json-progress", NULL, "print progress as JSON Lines on stdout" },
	{ OPT_PASSWORD_FILE, "password-file", "FILE", "passphrase of an encrypted chain from FILE (default: $CBIMG_PASSWORD, or ask)" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "where to look for key file copies too (default /var/lib/cbimg)" },
	{ OPT_NO_STATE, "no-state", NULL, "do not use the local state" },
	CLI_OPT_HELP,
	CLI_OPT_END
};

/* A duration: numbers with units h, d, w, m (30 days: months, as restic),
 * y (365 days) or min, e.g. "30d", "1y6m", "90min". 0 or -1. */
static int parse_duration(const char *s, int64_t *out)
{
	const int64_t H = 3600LL * 1000000000LL, D = 24 * H;
	int64_t total = 0;
	if (!*s)
		return -1;
	while (*s) {
		char *end;
		if (*s < '0' || *s > '9')
			return -1;
		unsigned long long v = strtoull(s, &end, 10);
		if (end == s || v > 100000)
			return -1;
		int64_t unit;
		if (!strncmp(end, "min", 3)) {
			unit = 60LL * 1000000000LL;
			end += 3;
		} else {
			switch (*end) {
			case 'h': unit = H; break;
			case 'd': unit = D; break;
			case 'w': unit = 7 * D; break;
			case 'm': unit = 30 * D; break;
			case 'y': unit = 365 * D; break;
			default: return -1;
			}
			end++;
		}
		total += (int64_t)v * unit;
		s = end;
	}
	*out = total;
	return total > 0 ? 0 : -1;
}

static const char *action_name(int a)
{
	switch (a) {
	case CBI_PRUNE_MERGE: return "merge";
	case CBI_PRUNE_SYNTH_FULL: return "synthetic-full";
	case CBI_PRUNE_REMOVE: return "remove";
	default: return "keep";
	}
}

static void why_text(unsigned why, char *buf, size_t sz)
{
	static const char *const names[] = { "last", "hourly", "daily", "weekly", "monthly",
					      "yearly", "within", "chains", "newest" };
	buf[0] = 0;
	for (unsigned b = 0; b < sizeof names / sizeof names[0]; b++)
		if (why & (1u << b)) {
			size_t l = strlen(buf);
			snprintf(buf + l, sz - l, "%s%s", l ? "," : "", names[b]);
		}
}

static int cmd_prune(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_prune_opts o = { 0 };
	cbi_prune_result r;
	cbi_error err = { 0 };
	struct cli_pass pass;
	struct cli_progress prog;
	int json = 0, json_progress = 0, quiet = 0, c, rc;
	uint64_t v;

	cli_pass_init(&pass, "CBIMG_PASSWORD");
	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		unsigned *cnt = NULL;
		switch (c) {
		case OPT_HOST: o.host = optarg; break;
		case OPT_SOURCE: o.source = optarg; break;
		case OPT_JOB: o.job = optarg; break;
		case OPT_LAST: cnt = &o.keep.last; break;
		case OPT_HOURLY: cnt = &o.keep.hourly; break;
		case OPT_DAILY: cnt = &o.keep.daily; break;
		case OPT_WEEKLY: cnt = &o.keep.weekly; break;
		case OPT_MONTHLY: cnt = &o.keep.monthly; break;
		case OPT_YEARLY: cnt = &o.keep.yearly; break;
		case OPT_CHAINS: cnt = &o.keep.chains; break;
		case OPT_WITHIN:
			if (parse_duration(optarg, &o.keep.within_ns))
				return cli_usage_error(cmd, "invalid --keep-within '%s' (e.g. 30d, 2w, 12h, 1y6m)",
						       optarg);
			break;
		case OPT_DRY_RUN: o.dry_run = 1; break;
		case 'q': quiet = 1; break;
		case OPT_JSON: json = 1; cli_json_mode = 1; break;
		case OPT_JSON_PROGRESS: json_progress = 1; break;
		case OPT_PASSWORD_FILE: pass.file = optarg; break;
		case OPT_STATE_DIR: o.state_dir = optarg; break;
		case OPT_NO_STATE: o.no_state = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
		if (cnt) {
			if (cli_parse_uint(optarg, 1, 1000000, &v))
				return cli_usage_error(cmd, "invalid count '%s' (1 or more)", optarg);
			*cnt = (unsigned)v;
		}
	}
	if ((rc = cli_check_operands(cmd, argc, argv, 1)))
		return rc;
	o.dest = argv[optind];
	if (!o.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		o.state_dir = getenv("CBIMG_STATE_DIR");
	o.pass = cli_pass_cb;
	o.pass_ud = &pass;
	/* progress of the merged images' writes: a line on a terminal, or JSON
	 * Lines with --json-progress (the final --json document follows them) */
	cli_progress_init(&prog, json || quiet);
	if (json_progress)
		cli_progress_json(&prog, "prune");
	o.progress = cli_progress_cb;
	o.progress_ud = &prog;
	/* an s3:// DEST: the same prune, carried over to the bucket (objprune.c) */
	rc = cbi_objstore_is_url(o.dest) ? cbi_objstore_prune(&o, cli_s3_endpoint, &r, &err) : cbi_prune(&o, &r, &err);
	cli_pass_wipe(&pass);
	cli_progress_end(&prog);
	if (rc < 0) {
		cbi_prune_result_free(&r);
		return cli_fail(rc, &err);
	}
	if (json) {
		struct json j;
		char hex[65], why[96];
		json_init(&j, stdout);
		json_begin_object(&j, NULL);
		json_u64(&j, "schema", CLI_JSON_SCHEMA);
		json_bool(&j, "dry_run", o.dry_run);
		json_u64(&j, "kept", r.kept);
		json_u64(&j, "removed", o.dry_run ? r.n - r.kept : r.removed);
		json_u64(&j, "merged", r.merged);
		json_u64(&j, "bytes_removed", r.bytes_removed);
		json_u64(&j, "bytes_written", r.bytes_written);
		if (cbi_objstore_is_url(o.dest)) {
			json_u64(&j, "bytes_sent", r.bytes_sent);
			json_u64(&j, "bytes_received", r.bytes_received);
		}
		json_begin_array(&j, "points");
		for (size_t i = 0; i < r.n; i++) {
			const cbi_point *p = &r.items[i].point;
			json_begin_object(&j, NULL);
			json_string(&j, "index_file", p->index_file);
			cli_hex(p->point_id, 16, hex);
			json_string(&j, "id", hex);
			cli_hex(p->chain_id, 16, hex);
			json_string(&j, "chain", hex);
			json_u64(&j, "seq", p->seq);
			json_i64_string(&j, "created_ns", p->created_ns);
			json_string(&j, "action", action_name(r.items[i].action));
			why_text(r.items[i].why, why, sizeof why);
			json_string(&j, "why", why);
			json_end_object(&j);
		}
		json_end_array(&j);
		json_begin_array(&j, "notes");
		for (unsigned k = 0; k < r.n_notes; k++) {
			char nb[1400];
			json_string(&j, NULL, cli_s3_named(r.notes[k], nb, sizeof nb));
		}
		json_end_array(&j);
		json_end_object(&j);
		json_finish(&j);
	} else if (json_progress || quiet) {
		/* stdout holds JSON Lines only (or nothing, with -q): the notes go
		 * to stderr */
		for (unsigned k = 0; k < r.n_notes; k++)
			cli_say("note", "%s", r.notes[k]);
	} else {
		char nb[1400];
		for (unsigned k = 0; k < r.n_notes; k++)
			printf("note: %s\n", cli_s3_named(r.notes[k], nb, sizeof nb));
		for (size_t i = 0; i < r.n; i++) {
			const cbi_point *p = &r.items[i].point;
			char when[32], chain[33], why[96];
			cli_hex(p->chain_id, 16, chain);
			chain[8] = 0;
			why_text(r.items[i].why, why, sizeof why);
			printf("%-14s %s  %s  seq %-5" PRIu32 " %s%s%s\n", action_name(r.items[i].action), chain,
			       cli_iso_time(p->created_ns, when), p->seq, why[0] ? "(" : "", why, why[0] ? ")" : "");
		}
		char a[32], b[32];
		size_t to_merge = 0;
		for (size_t i = 0; i < r.n; i++)
			to_merge += r.items[i].action == CBI_PRUNE_MERGE || r.items[i].action == CBI_PRUNE_SYNTH_FULL;
		if (o.dry_run)
			printf("dry run: %zu point%s kept, %zu to remove, %zu merged image%s to write; nothing changed\n",
			       r.kept, cli_plural(r.kept), r.n - r.kept, to_merge, cli_plural(to_merge));
		else
			printf("%zu point%s kept, %zu removed, %zu merged image%s written (%s), %s freed\n", r.kept,
			       cli_plural(r.kept), r.removed, r.merged, cli_plural(r.merged),
			       cli_human_size(r.bytes_written, a), cli_human_size(r.bytes_removed, b));
	}
	cbi_prune_result_free(&r);
	return CLI_OK;
}

const struct cli_command cli_prune = {
	.name = "prune",
	.operands = "[--host H] [--source S] [--job J] [--keep-* N] [--keep-within D] [--dry-run] [--json] DEST",
	.summary = "remove the points of one job that no keep rule keeps, merging what later points need",
	.description = "Keep rules as restic's: --keep-daily 7 keeps the newest point of each of\n"
		       "the last 7 days that have one; a point is kept when any rule keeps it,\n"
		       "and the newest point always is. A removed point that a kept point builds\n"
		       "on is folded into the next kept point, which gets a new image file (its\n"
		       "index file, id and digest stay); when the full goes, the oldest kept\n"
		       "point becomes a synthetic full. Without a rule nothing is removed.\n"
		       "--json-progress prints JSON Lines progress objects on stdout (bytes of\n"
		       "blocks copied into merged images), the --json document last if asked.",
	.options = prune_options,
	.run = cmd_prune,
};
