/*
 * cmd_info.c - 'cbimg info' and 'cbimg list', and the presentation of a
 * point (hex ids, ISO 8601 times, the JSON point object) that backup reuses.
 */
#include "cli.h"
#include "json.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OPT_JSON = 256, OPT_HOST, OPT_SOURCE, OPT_JOB, OPT_STATE_DIR, OPT_NO_STATE };

/* ---------------------------------------------------------- presentation */

void cli_hex(const uint8_t *bytes, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 15];
	}
	out[2 * n] = '\0';
}

char *cli_iso_time(int64_t ns, char buf[32])
{
	/* floor division, so times before 1970 round down too */
	time_t sec = (time_t)(ns / 1000000000 - (ns % 1000000000 < 0));
	struct tm tm;

	if (!gmtime_r(&sec, &tm) || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, 32, "@%" PRId64, ns);
	return buf;
}

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* s with control characters replaced by '?', for a terminal: the fields
 * come from files that may be damaged or crafted. */
static const char *printable(const char *s, char *buf, size_t size)
{
	size_t i;

	for (i = 0; s[i] && i + 1 < size; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	buf[i] = '\0';
	return buf;
}

const char *cli_printable(const char *s, char *buf, size_t size)
{
	return printable(s, buf, size);
}

static int is_zero(const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

static int is_full(const cbi_point *p)
{
	return p->type == CBI_FULL;
}

static const char *type_name(const cbi_point *p)
{
	if (p->type == CBI_INCREMENTAL && p->merged && p->first_seq == 0)
		return "synthetic full";
	return p->type == CBI_FULL ? "full" : p->type == CBI_INCREMENTAL ? "incremental" : "unknown";
}

/* The name a listing shows: the image, or the index when the image is gone. */
static const char *display_file(const cbi_point *p)
{
	return base_name(p->file[0] ? p->file : p->index_file);
}

/* The point object; schema: it is a document of its own (info) or an
 * element of one (list), which carries the schema version. */
static void json_point(struct json *j, const char *key, const cbi_point *p, int schema, int listed)
{
	char hex[65], when[32], path[4096], ipath[4096];

	/* on S3: the objects' s3:// URLs, not the local view's files */
	cli_s3_named(p->file, path, sizeof path);
	cli_s3_named(p->index_file, ipath, sizeof ipath);
	json_begin_object(j, key);
	if (schema)
		json_u64(j, "schema", CLI_JSON_SCHEMA);
	json_string(j, "file", display_file(p));
	json_string(j, "index_file", base_name(p->index_file));
	json_string(j, "path", path[0] ? path : NULL);
	json_string(j, "index_path", ipath);
	cli_hex(p->point_id, 16, hex);
	json_string(j, "id", hex);
	if (is_full(p) || is_zero(p->parent_id, 16)) {
		json_null(j, "parent");
		json_null(j, "parent_digest");
	} else {
		cli_hex(p->parent_id, 16, hex);
		json_string(j, "parent", hex);
		cli_hex(p->parent_digest, 32, hex);
		json_string(j, "parent_digest", hex);
	}
	cli_hex(p->chain_id, 16, hex);
	json_string(j, "chain", hex);
	json_u64(j, "seq", p->seq);
	json_string(j, "type", type_name(p));
	json_string(j, "job", p->job);
	json_string(j, "source", p->source_id);
	json_string(j, "source_path", p->source_path);
	json_string(j, "host", p->host);
	json_string(j, "created", cli_iso_time(p->created_ns, when));
	json_i64_string(j, "created_ns", p->created_ns);
	json_u64(j, "size", p->source_size);
	json_u64(j, "block_size", p->block_size);
	json_u64(j, "blocks", p->n_blocks);
	json_u64(j, "changed_blocks", p->changed_blocks);
	json_u64(j, "zero_blocks", p->zero_blocks);
	json_u64(j, "stored_blocks", p->stored_blocks);
	json_u64(j, "stored_bytes", p->stored_bytes);
	json_u64(j, "index_bytes", p->index_bytes);
	/* info only: the catalog that list reads has no such column */
	if (schema && !listed && p->index_version) {
		json_u64(j, "index_version", p->index_version);
		json_bool(j, "index_runs", p->index_version == 3);
	}
	json_u64(j, "segment_size", p->segment_size);
	json_bool(j, "encrypted", p->encrypted);
	json_bool(j, "used_only", p->used_only);
	json_bool(j, "rescue", p->rescue);
	json_u64(j, "bad_bytes", p->bad_bytes);
	json_u64(j, "bad_ranges", p->bad_ranges);
	json_string(j, "hash", p->hash_alg == CBI_HASH_SHA256_128 ? "sha256" : "xxh3");
	cli_hex(p->index_digest, 32, hex);
	json_string(j, "index_digest", hex);
	json_bool(j, "has_image", p->has_image);
	json_bool(j, "merged", p->merged);
	json_u64(j, "first_seq", p->type == CBI_FULL ? 0 : p->merged ? p->first_seq : p->seq);
	if (listed) {
		json_bool(j, "restorable", !p->broken);
		json_bool(j, "parent_elsewhere", p->parent_elsewhere);
	}
	json_end_object(j);
}

void cli_json_point(struct json *j, const char *key, const cbi_point *p)
{
	json_point(j, key, p, 0, 0);
}

/* ------------------------------------------------------------------ info */

static const struct cli_option info_options[] = {
	{ OPT_JSON, "json", NULL, "print the point as one JSON object" },
	CLI_OPTS_SELECT,
	CLI_OPT_HELP,
	CLI_OPT_END
};

static void kv(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kv(const char *key, const char *fmt, ...)
{
	va_list ap;

	printf("%s:%*s", key, (int)(16 - strlen(key)), "");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void kv_size(const char *key, uint64_t bytes)
{
	char h[32];

	kv(key, "%" PRIu64 " (%s)", bytes, cli_human_size(bytes, h));
}

static void print_point(const cbi_point *p)
{
	char hex[65], when[32], text[256], path[4096], ipath[4096];

	/* on S3: the objects' s3:// URLs, not the local view's files */
	kv("file", "%s", cli_s3_named(p->file[0] ? p->file : "-", path, sizeof path));
	kv("index_file", "%s", cli_s3_named(p->index_file, ipath, sizeof ipath));
	kv("type", "%s", type_name(p));
	kv("job", "%s", printable(p->job, text, sizeof text));
	kv("seq", "%" PRIu32, p->seq);
	cli_hex(p->point_id, 16, hex);
	kv("id", "%s", hex);
	cli_hex(p->chain_id, 16, hex);
	kv("chain", "%s", hex);
	if (is_full(p) || is_zero(p->parent_id, 16)) {
		kv("parent", "-");
	} else {
		cli_hex(p->parent_id, 16, hex);
		kv("parent", "%s", hex);
		cli_hex(p->parent_digest, 32, hex);
		kv("parent_digest", "%s", hex);
	}
	cli_hex(p->index_digest, 32, hex);
	kv("index_digest", "%s", hex);
	kv("created", "%s", cli_iso_time(p->created_ns, when));
	kv("host", "%s", printable(p->host, text, sizeof text));
	kv("source", "%s", printable(p->source_id, text, sizeof text));
	kv("source_path", "%s", printable(p->source_path, text, sizeof text));
	kv_size("size", p->source_size);
	kv_size("block_size", p->block_size);
	kv("blocks", "%" PRIu64, p->n_blocks);
	kv("changed_blocks", "%" PRIu64, p->changed_blocks);
	kv("zero_blocks", "%" PRIu64, p->zero_blocks);
	kv("stored_blocks", "%" PRIu64, p->stored_blocks);
	kv_size("stored_bytes", p->stored_bytes);
	kv_size("index_bytes", p->index_bytes);
	if (p->index_version == 3)
		kv("index", "runs (version 3: a run of zero blocks is one entry)");
	else if (p->index_version)
		kv("index", "fixed (version %" PRIu32 ": one entry per block)", p->index_version);
	else
		kv("index", "- (no index file read)");
	if (p->segment_size) {
		/* exact MiB: 4095 MiB must not read as "4.0 GiB" */
		uint64_t si = (p->stored_bytes + p->segment_size - 1) / p->segment_size;
		uint64_t sx = (p->index_bytes + p->segment_size - 1) / p->segment_size;
		kv("segments", "%" PRIu64 " MiB each: image %" PRIu64 " file%s, index %" PRIu64 " file%s",
		   p->segment_size >> 20, si, si == 1 ? "" : "s", sx, sx == 1 ? "" : "s");
	} else {
		kv("segments", "-");
	}
	kv("hash", "%s%s", p->hash_alg == CBI_HASH_SHA256_128 ? "SHA-256/128" : "XXH3-128",
	   p->encrypted ? ", keyed" : "");
	kv("encrypted", "%s", p->encrypted ? "yes (AES-256-GCM; key file .cbk beside the chain)" : "no");
	kv("used_only", "%s", p->used_only ? "yes (blocks the file system did not use were not read: they "
					    "restore as zeros)" : "no (every block)");
	if (p->rescue)
		kv("bad", "%" PRIu64 " bytes in %" PRIu64 " range%s unreadable on the source (read with --rescue%s)",
		   p->bad_bytes, p->bad_ranges, p->bad_ranges == 1 ? "" : "s",
		   p->bad_ranges ? "; restore needs --allow-bad" : "");
	kv("image", "%s", p->has_image ? "complete" : p->file[0] ? "incomplete" : "missing");
}

static int cmd_info(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_point p, chosen;
	cbi_error err = { 0 };
	struct cli_select sel = { 0 };
	const char *file;
	int json = 0, c, rc;

	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		if ((rc = cli_select_option(cmd, &sel, c, optarg)) < 0)
			return CLI_USAGE;
		if (rc > 0)
			continue;
		switch (c) {
		case OPT_JSON: json = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_select_operands(cmd, &sel, &argc, argv, 0)))
		return rc;
	if (cli_select_active(&sel, 1)) {
		if ((rc = cli_select_point(cmd, &sel, argv[optind], &chosen)))
			return rc;
		file = cli_point_path(&chosen);
	} else {
		if ((rc = cli_select_file(cmd, argv[optind])))
			return rc;
		file = argv[optind];
	}

	rc = cbi_point_info(file, &p, &err);
	if (rc < 0)
		return cli_fail(rc, &err);
	if (json) {
		struct json j;
		json_init(&j, stdout);
		json_point(&j, NULL, &p, 1, 0);
		json_finish(&j);
	} else {
		print_point(&p);
	}
	return CLI_OK;
}

const struct cli_command cli_info = {
	.name = "info",
	.operands = "[--json] FILE",
	.summary = "show the header and trailer of an image or index file",
	.description = "The file's digest is not checked; use 'cbimg verify' for that. Instead of\n"
		       "FILE, a selector chooses a point in directory DEST: 'cbimg info DEST\n"
		       "latest' (or --latest) the newest, --at TIME the newest created at or before\n"
		       "TIME; --host, --source and --job narrow the choice to one job.",
	.options = info_options,
	.run = cmd_info,
};

/* ------------------------------------------------------------------ list */

static const struct cli_option list_options[] = {
	{ OPT_HOST, "host", "H", "only the points of host H" },
	{ OPT_SOURCE, "source", "S", "only the points of source S (its id or its path)" },
	{ OPT_JOB, "job", "J", "only the points of job J" },
	{ OPT_JSON, "json", NULL, "print one JSON array with an object per point" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "local state that knows parents elsewhere (default /var/lib/cbimg)" },
	{ OPT_NO_STATE, "no-state", NULL, "do not use the local state: every missing parent is damage" },
	CLI_OPTS_SELECT_TIME,
	CLI_OPT_HELP,
	CLI_OPT_END
};

enum { COL_FILE, COL_HOST, COL_JOB, COL_CHAIN, COL_SEQ, COL_TYPE, COL_CREATED, COL_SIZE, COL_CHANGED,
       COL_STORED, COL_BAD, N_COLS };

static const char *const col_names[N_COLS] = {
	"FILE", "HOST", "JOB", "CHAIN", "SEQ", "TYPE", "CREATED", "SIZE", "CHANGED", "STORED", "BAD",
};
static const int col_right[N_COLS] = { 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1 };
/* Columns shown: BAD (bytes a --rescue backup could not read) only when a
 * point listed was read with --rescue. */
static int n_cols = N_COLS - 1;

/* Cells of one row; static buffers for the short ones. */
struct row {
	const char *cell[N_COLS];
	char seq[16], created[32], size[32], changed[24], stored[32], job[80], host[80], chain[33];
	char bad[32];
};

static void fill_row(struct row *r, const cbi_point *p)
{
	snprintf(r->seq, sizeof r->seq, "%" PRIu32, p->seq);
	snprintf(r->changed, sizeof r->changed, "%" PRIu64, p->changed_blocks);
	cli_human_size(p->source_size, r->size);
	if (p->has_image)
		cli_human_size(p->stored_bytes, r->stored);
	else
		snprintf(r->stored, sizeof r->stored, "%s", p->file[0] ? "incomplete" : "missing");
	cli_hex(p->chain_id, 16, r->chain);
	r->chain[8] = '\0';  /* the first 8 hex digits tell the chains of a DEST apart */
	r->cell[COL_FILE] = display_file(p);
	r->cell[COL_HOST] = printable(p->host, r->host, sizeof r->host);
	r->cell[COL_CHAIN] = r->chain;
	r->cell[COL_TYPE] = p->parent_elsewhere ? "parent elsewhere" : p->broken ? "no parent!" : type_name(p);
	r->cell[COL_JOB] = printable(p->job, r->job, sizeof r->job);
	r->cell[COL_SEQ] = r->seq;
	r->cell[COL_CREATED] = cli_iso_time(p->created_ns, r->created);
	r->cell[COL_SIZE] = r->size;
	r->cell[COL_CHANGED] = r->changed;
	r->cell[COL_STORED] = r->stored;
	if (p->rescue)
		snprintf(r->bad, sizeof r->bad, "%" PRIu64, p->bad_bytes);
	else
		snprintf(r->bad, sizeof r->bad, "-");
	r->cell[COL_BAD] = r->bad;
}

static void print_row(const char *const cell[N_COLS], const int width[N_COLS])
{
	for (int c = 0; c < n_cols; c++) {
		const char *sep = c ? "  " : "";
		if (c == n_cols - 1 && !col_right[c])
			printf("%s%s", sep, cell[c]);
		else
			printf("%s%*s", sep, col_right[c] ? width[c] : -width[c], cell[c]);
	}
	putchar('\n');
}

static void print_table(const cbi_point *pts, size_t n)
{
	int width[N_COLS];
	struct row r;

	for (int c = 0; c < N_COLS; c++)
		width[c] = (int)strlen(col_names[c]);
	for (size_t i = 0; i < n; i++)
		if (pts[i].rescue)
			n_cols = N_COLS;
	for (size_t i = 0; i < n; i++) {
		fill_row(&r, &pts[i]);
		for (int c = 0; c < N_COLS; c++)
			if ((int)strlen(r.cell[c]) > width[c])
				width[c] = (int)strlen(r.cell[c]);
	}
	print_row(col_names, width);
	for (size_t i = 0; i < n; i++) {
		fill_row(&r, &pts[i]);
		print_row(r.cell, width);
	}
}

static int cmd_list(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_point *pts = NULL;
	size_t n = 0;
	cbi_error err = { 0 };
	cbi_list_filter filter = { 0 };
	struct cli_select sel = { 0 };
	const char *state_dir = NULL;
	int json = 0, no_state = 0, c, rc;

	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		if ((rc = cli_select_option(cmd, &sel, c, optarg)) < 0)
			return CLI_USAGE;
		if (rc > 0)
			continue;
		switch (c) {
		case OPT_JSON: json = 1; break;
		case OPT_STATE_DIR: state_dir = optarg; break;
		case OPT_NO_STATE: no_state = 1; break;
		case OPT_HOST: filter.host = optarg; break;
		case OPT_SOURCE: filter.source = optarg; break;
		case OPT_JOB: filter.job = optarg; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_select_operands(cmd, &sel, &argc, argv, 0)))
		return rc;

	if (cli_select_active(&sel, 0)) {
		/* --latest or --at: only the point chosen, among the filter's */
		sel.sel.host = filter.host;
		sel.sel.source = filter.source;
		sel.sel.job = filter.job;
		if (!(pts = malloc(sizeof *pts)))
			return cli_fail(-ENOMEM, NULL);
		if ((rc = cli_select_point(cmd, &sel, argv[optind], pts))) {
			free(pts);
			return rc;
		}
		n = 1;
	} else {
		rc = cbi_list_filtered(argv[optind], &filter, &pts, &n, &err);
		if (rc < 0)
			return cli_fail(rc, &err);
		if (!state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
			state_dir = getenv("CBIMG_STATE_DIR");
		if (!no_state && (rc = cbi_list_mark_elsewhere(argv[optind], state_dir, pts, n, &err)) < 0) {
			free(pts);
			return cli_fail(rc, &err);
		}
	}
	if (json) {
		struct json j;
		json_init(&j, stdout);
		json_begin_array(&j, NULL);
		for (size_t i = 0; i < n; i++)
			json_point(&j, NULL, &pts[i], 1, 1);
		json_end_array(&j);
		json_finish(&j);
	} else if (n == 0) {
		cli_say(NULL, "no %spoints in '%s'", filter.host || filter.source || filter.job ? "matching " : "",
			argv[optind]);
	} else {
		print_table(pts, n);
	}
	size_t broken = 0, elsewhere = 0;
	for (size_t i = 0; i < n; i++) {
		broken += pts[i].broken && !pts[i].parent_elsewhere;
		elsewhere += pts[i].parent_elsewhere != 0;
	}
	free(pts);
	if (elsewhere && !json)
		/* an outbox: the chain's earlier points are at the remote site */
		fprintf(stderr,
			"cbimg: %zu point%s continue%s a chain whose earlier points are elsewhere (the local state "
			"says so; shown as 'parent elsewhere'): restorable where the whole chain is\n",
			elsewhere, cli_plural(elsewhere), elsewhere == 1 ? "s" : "");
	if (broken) {
		/* a chain whose parent was moved or deleted: nothing says so otherwise */
		cli_say(NULL,
			"%zu point%s cannot be restored: a parent point is missing from '%s' (shown as "
			"'no parent!'); run 'cbimg verify'",
			broken, cli_plural(broken), argv[optind]);
		return CLI_DAMAGE;
	}
	return CLI_OK;
}

const struct cli_command cli_list = {
	.name = "list",
	.operands = "[--host H] [--source S] [--job J] [--latest | --at TIME] [--json] [--state-dir DIR | --no-state] DEST",
	.summary = "list the points (full and incremental images) in directory DEST",
	.description = "Points are grouped by host, job and source, and sorted by creation time\n"
		       "within each group: the newest point of a group is its last, whatever\n"
		       "chain it is in. CHAIN is the first 8 hex digits of the chain id, SIZE the\n"
		       "size of the source, CHANGED the number of blocks that differ from the\n"
		       "parent point, STORED the size of the image file. --host, --source and\n"
		       "--job keep only the points that match (exactly). --latest (or the operand\n"
		       "'latest' after DEST) shows only the newest point, --at TIME the newest\n"
		       "created at or before TIME; several matching jobs are refused (exit 2).\n"
		       "The listing comes from\n"
		       "the catalog DEST/cbimg-catalog.sqlite, checked against the files first.\n"
		       "A point whose parent is missing is 'no parent!' (exit 3), unless the\n"
		       "local state of its job (--state-dir) holds its chain at or after it and\n"
		       "DEST's run log never recorded the missing point being made there (an\n"
		       "outbox): then 'parent elsewhere' (exit 0).",
	.options = list_options,
	.run = cmd_list,
};
