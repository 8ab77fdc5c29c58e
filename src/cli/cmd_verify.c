/* cmd_verify.c - 'cbimg verify': check files, chains and blocks. */
#include "cli.h"
#include "json.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { OPT_JSON = 256, OPT_PASSWORD_FILE, OPT_STATE_DIR, OPT_NO_STATE, OPT_JSON_PROGRESS };

static const struct cli_option verify_options[] = {
	{ 'q', "quiet", NULL, "print only the problems, no progress, notes or summary" },
	{ OPT_JSON, "json", NULL, "print the result as one JSON object" },
	{ OPT_PASSWORD_FILE, "password-file", "FILE", "passphrase of encrypted chains from FILE (default: $CBIMG_PASSWORD, or ask)" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "local state to compare with (default /var/lib/cbimg)" },
	{ OPT_NO_STATE, "no-state", NULL, "do not compare with the local state" },
	{ OPT_JSON_PROGRESS, "json-progress", NULL, "print progress as JSON Lines on stdout" },
	CLI_OPTS_SELECT,
	CLI_OPT_HELP,
	CLI_OPT_END
};

struct problem {
	char *file;
	int64_t block;
	char *what;
};

struct verify_state {
	int json;
	int quiet;
	struct problem *notes;  /* --json: notes kept for the final object */
	size_t nnotes, capnotes;
	FILE *out;              /* where problems are printed: stdout, or stderr under
	                         * --json-progress (stdout holds JSON Lines only) */
	struct cli_progress *prog;
	struct problem *list;   /* --json: problems kept for the final object */
	size_t n, cap;
	uint64_t seen;          /* problems reported through the callback */
	int nomem;
};

/* cbi_verify_fn: print at once, or keep for the JSON object. */
static void on_problem(void *ud, const char *file, int64_t block, const char *what)
{
	struct verify_state *s = ud;
	char fb[4096], wb[4096]; /* an S3 view's files named by their s3:// URLs */

	s->seen++;
	file = cli_s3_named(file, fb, sizeof fb);
	what = cli_s3_named(what, wb, sizeof wb);
	if (!s->json) {
		cli_progress_end(s->prog);
		if (block >= 0)
			fprintf(s->out, "DAMAGED %s: block %" PRId64 ": %s\n", file, block, what);
		else
			fprintf(s->out, "DAMAGED %s: %s\n", file, what);
		fflush(s->out);
		return;
	}
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 16;
		struct problem *l = realloc(s->list, cap * sizeof *l);
		if (!l) {
			s->nomem = 1;
			return;
		}
		s->list = l;
		s->cap = cap;
	}
	s->list[s->n].file = strdup(file);
	s->list[s->n].what = strdup(what);
	s->list[s->n].block = block;
	if (!s->list[s->n].file || !s->list[s->n].what) {
		free(s->list[s->n].file);
		free(s->list[s->n].what);
		s->nomem = 1;
		return;
	}
	s->n++;
}

/* cbi_verify_fn for notes (not problems): on stderr unless -q, or kept
 * for the JSON object. */
static void on_note(void *ud, const char *file, int64_t block, const char *what)
{
	struct verify_state *s = ud;
	char fb[4096], wb[4096]; /* an S3 view's files named by their s3:// URLs */

	(void)block;
	file = cli_s3_named(file, fb, sizeof fb);
	what = cli_s3_named(what, wb, sizeof wb);
	if (!s->json) {
		if (!s->quiet) {
			cli_progress_end(s->prog);
			fprintf(stderr, "cbimg: note: %s\n", what ? what : "");
		}
		return;
	}
	if (s->nnotes == s->capnotes) {
		size_t cap = s->capnotes ? 2 * s->capnotes : 4;
		struct problem *l = realloc(s->notes, cap * sizeof *l);
		if (!l) {
			s->nomem = 1;
			return;
		}
		s->notes = l;
		s->capnotes = cap;
	}
	s->notes[s->nnotes].file = strdup(file ? file : "");
	s->notes[s->nnotes].what = strdup(what ? what : "");
	s->notes[s->nnotes].block = -1;
	if (!s->notes[s->nnotes].file || !s->notes[s->nnotes].what) {
		free(s->notes[s->nnotes].file);
		free(s->notes[s->nnotes].what);
		s->nomem = 1;
		return;
	}
	s->nnotes++;
}

static void print_json(const char *path, const struct verify_state *s, const cbi_verify_result *r,
		       int status, const char *error)
{
	struct json j;

	json_init(&j, stdout);
	json_begin_object(&j, NULL);
	json_u64(&j, "schema", CLI_JSON_SCHEMA);
	char shown[4096];
	json_string(&j, "path", cli_s3_named(path, shown, sizeof shown)); /* on S3: the s3:// operand */
	json_bool(&j, "ok", status == CLI_OK || status == CLI_WARN);
	json_i64(&j, "exit", status);
	json_u64(&j, "files_checked", r->files_checked);
	json_u64(&j, "points_checked", r->points_checked);
	json_u64(&j, "blocks_checked", r->blocks_checked);
	json_u64(&j, "bytes_checked", r->bytes_checked);
	json_u64(&j, "problem_count", s->n);
	json_u64(&j, "behind", r->behind);
	json_u64(&j, "bad_points", r->bad_points);
	json_u64(&j, "bad_bytes", r->bad_bytes);
	json_string(&j, "error", error);
	json_begin_array(&j, "problems");
	for (size_t i = 0; i < s->n; i++) {
		json_begin_object(&j, NULL);
		/* "path": "file" is a name relative to DEST in every other object */
		json_string(&j, "path", s->list[i].file);
		if (s->list[i].block >= 0)
			json_i64(&j, "block", s->list[i].block);
		else
			json_null(&j, "block");
		json_string(&j, "problem", s->list[i].what);
		json_end_object(&j);
	}
	json_end_array(&j);
	json_begin_array(&j, "notes");
	for (size_t i = 0; i < s->nnotes; i++) {
		json_begin_object(&j, NULL);
		json_string(&j, "file", s->notes[i].file);
		json_string(&j, "note", s->notes[i].what);
		json_end_object(&j);
	}
	json_end_array(&j);
	json_end_object(&j);
	json_finish(&j);
}

static void free_state(struct verify_state *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->list[i].file);
		free(s->list[i].what);
	}
	free(s->list);
	for (size_t i = 0; i < s->nnotes; i++) {
		free(s->notes[i].file);
		free(s->notes[i].what);
	}
	free(s->notes);
}

static int cmd_verify(const struct cli_command *cmd, int argc, char **argv)
{
	struct verify_state s = { 0 };
	cbi_verify_result r = { 0 };
	cbi_verify_opts vo = { 0 };
	struct cli_pass pass;
	cbi_error err = { 0 };
	struct cli_progress prog;
	const char *path, *error = NULL;
	int quiet = 0, json_progress = 0, c, rc, status;
	uint64_t problems;
	struct stat st;
	struct cli_select sel = { 0 };
	cbi_point chosen;

	cli_pass_init(&pass, "CBIMG_PASSWORD");
	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		if ((rc = cli_select_option(cmd, &sel, c, optarg)) < 0)
			return CLI_USAGE;
		if (rc > 0)
			continue;
		switch (c) {
		case 'q': quiet = 1; break;
		case OPT_JSON: s.json = 1; break;
		case OPT_PASSWORD_FILE: pass.file = optarg; break;
		case OPT_STATE_DIR: vo.state_dir = optarg; break;
		case OPT_NO_STATE: vo.no_state = 1; break;
		case OPT_JSON_PROGRESS: json_progress = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_select_operands(cmd, &sel, &argc, argv, 0)))
		return rc;
	path = argv[optind];
	if (cli_select_active(&sel, 1)) {
		/* DEST and a selector: that point and its ancestors */
		if ((rc = cli_select_point(cmd, &sel, path, &chosen)))
			return rc;
		path = cli_point_path(&chosen);
		if (!quiet && !s.json && !json_progress) {
			char shown[4096]; /* on S3: the point's s3:// URL */
			fprintf(stderr, "cbimg: note: verifying '%s'\n", cli_s3_named(path, shown, sizeof shown));
		}
	}
	/* a directory is verified whole; a file must be a point file */
	if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (rc = cli_check_point_file(path)))
		return rc;

	cli_progress_init(&prog, quiet || s.json);
	s.out = stdout;
	if (json_progress) {
		cli_progress_json(&prog, "verify");
		s.out = stderr;
	}
	s.prog = &prog;
	s.quiet = quiet;
	vo.fn = on_problem;
	vo.note = on_note;
	vo.ud = &s;
	vo.progress = cli_progress_cb;
	vo.progress_ud = &prog;
	vo.pass = cli_pass_cb;
	vo.pass_ud = &pass;
	if (!vo.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		vo.state_dir = getenv("CBIMG_STATE_DIR");
	rc = cbi_verify(path, &vo, &r, &err);
	cli_pass_wipe(&pass);
	cli_progress_end(&prog);

	if (s.nomem) {
		free_state(&s);
		cli_error("out of memory while collecting the problems found");
		return CLI_FAIL;
	}
	if (rc < 0 && !cbi_is_damage(rc)) {  /* verification could not run */
		free_state(&s);
		return cli_fail(rc, &err);
	}
	/* Damage that stopped verification early, or that the callback did not
	 * describe, is shown as an error line too. */
	if (rc < 0 && (rc != -CBI_EDAMAGED || s.seen == 0)) {
		cli_fail(rc, &err);
		cli_s3_name(err.msg, sizeof err.msg);
		error = err.msg[0] ? err.msg : cbi_strerror(rc);
	}
	problems = r.problems > s.seen ? r.problems : s.seen;
	if (error && problems == 0)
		problems = 1;
	status = rc == 0 && problems == 0 ? CLI_OK : CLI_DAMAGE;
	/* A chain behind the local state (a seed disk, an outbox's origin) is not
	 * damage but is worth a monitor's attention: "succeeded with warnings". */
	if (status == CLI_OK && (r.behind || r.duplicates)) /* behind the state; duplicate files */
		status = CLI_WARN;
	if (s.json) {
		print_json(path, &s, &r, status, error);
	} else if (!quiet && !json_progress) {
		printf("verified %" PRIu64 " file%s, %" PRIu64 " point%s, %" PRIu64 " block%s: ",
		       r.files_checked, cli_plural(r.files_checked), r.points_checked,
		       cli_plural(r.points_checked), r.blocks_checked, cli_plural(r.blocks_checked));
		if (status == CLI_OK || status == CLI_WARN)
			printf("OK%s\n", r.bad_points ? " (with known-bad bytes: see the notes)" : "");
		else
			printf("%" PRIu64 " problem%s\n", problems, cli_plural(problems));
	}
	free_state(&s);
	return status;
}

const struct cli_command cli_verify = {
	.name = "verify",
	.operands = "[options] PATH",
	.summary = "check files, chains and stored blocks for damage",
	.description =
		"PATH is an image (.cbi) or index (.cbx) file, which is checked with all the\n"
		"points it builds on, or a directory, whose chains are all checked. Each\n"
		"problem is printed as 'DAMAGED <file>: [block <n>: ]<problem>'.\n"
		"Encrypted chains need their passphrase: every file's HMAC and every\n"
		"record's GCM tag is then checked. Each chain is compared with the local\n"
		"state (--no-state: skip): a chain the state shows forked or replaced is a\n"
		"problem; one that is behind the state (a seed disk) is a note.\n"
		"Instead of PATH, a selector chooses one point in directory DEST:\n"
		"'cbimg verify DEST latest' (or --latest), --at TIME, --host, --source and\n"
		"--job as in 'cbimg restore'. --json-progress prints progress as JSON Lines.\n"
		"Exit 3: problems found; 4: wrong or missing passphrase.",
	.options = verify_options,
	.run = cmd_verify,
};
