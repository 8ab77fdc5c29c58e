/* cmd_backup.c - 'cbimg backup': write a full or incremental point. */
#include "cli.h"
#include "json.h"

#include <getopt.h>
#include <stdlib.h>
#include <inttypes.h>
#include <string.h>

enum {
	OPT_JOB = 256,
	OPT_FULL,
	OPT_BLOCK_SIZE,
	OPT_LEVEL,
	OPT_THREADS,
	OPT_SOURCE_ID,
	OPT_HOST,
	OPT_JSON,
	OPT_STATE_DIR,
	OPT_NO_STATE,
	OPT_SPLIT,
	OPT_ENCRYPT,
	OPT_PASSWORD_FILE,
	OPT_HASH,
	OPT_SCRYPT,
	OPT_USED_ONLY,
	OPT_JSON_PROGRESS,
	OPT_OUTBOX,
	OPT_NO_SPACE_CHECK,
	OPT_DEST_UUID,
	OPT_RESCUE,
	OPT_RETRIES,
	OPT_SNAPSHOT,
	OPT_FREEZE_TIMEOUT,
	OPT_SNAPSHOT_CMD,
	OPT_SNAPSHOT_CLEANUP,
	OPT_ALLOW_INCONSISTENT,
	OPT_TRACE_BUFFER,
};

static const struct cli_option backup_options[] = {
	{ OPT_JOB, "job", "NAME", "job name (default \"default\")" },
	{ OPT_FULL, "full", NULL, "start a new chain with a full image" },
	{ OPT_BLOCK_SIZE, "block-size", "SIZE", "block size of a new chain (default 256K)" },
	{ OPT_LEVEL, "level", "N", "zstd compression level, 1 to 19 (default 3, incrementals 1)" },
	{ OPT_THREADS, "threads", "N", "worker threads (default: one per CPU)" },
	{ OPT_SOURCE_ID, "source-id", "ID", "source identity (default: from the device)" },
	{ OPT_HOST, "host", "NAME", "host name to record (default: this host)" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "local copy of each job's newest index (default /var/lib/cbimg)" },
	{ OPT_NO_STATE, "no-state", NULL, "neither read nor update the local state" },
	{ OPT_OUTBOX, "outbox", NULL, "DEST holds no chain: continue the local state's (remote seeding)" },
	{ OPT_SPLIT, "split", "SIZE", "store files as segments of SIZE (default 4095M on FAT; 0: never)" },
	{ OPT_ENCRYPT, "encrypt", NULL, "new chain: encrypt with AES-256-GCM under a passphrase" },
	{ OPT_PASSWORD_FILE, "password-file", "FILE", "passphrase from FILE's first line (default: $CBIMG_PASSWORD, or ask)" },
	{ OPT_HASH, "hash", "ALG", "new chain: block hash xxh3 (default) or sha256" },
	{ OPT_SCRYPT, "scrypt", "N:R:P", "new encrypted chain: scrypt cost log2(N):r:p (default 15:8:4)" },
	{ OPT_USED_ONLY, "used-only", NULL, "read only the blocks the ext2/3/4 file system uses" },
	{ OPT_NO_SPACE_CHECK, "no-space-check", NULL, "write even when DEST seems to lack the space" },
	{ OPT_DEST_UUID, "dest-uuid", "UUID", "refuse unless DEST is on the file system of this UUID" },
	{ OPT_RESCUE, "rescue", NULL, "record unreadable source ranges as bad ranges instead of failing" },
	{ OPT_RETRIES, "retries", "N", "--rescue: extra reads of each failing sector (default 1)" },
	{ OPT_SNAPSHOT, "snapshot", "MODE", "a source in use: auto (default), trace, freeze, reflink, exec or none" },
	{ OPT_FREEZE_TIMEOUT, "freeze-timeout", "SECONDS", "longest freeze of the source's file system (default 60)" },
	{ OPT_SNAPSHOT_CMD, "snapshot-cmd", "CMD", "--snapshot exec: command that makes a snapshot and prints its path" },
	{ OPT_SNAPSHOT_CLEANUP, "snapshot-cleanup", "CMD", "--snapshot exec: command that removes it ($CBIMG_SNAPSHOT)" },
	{ OPT_ALLOW_INCONSISTENT, "allow-inconsistent", NULL, "--snapshot none on a source mounted read-write: read it anyway (exit 5)" },
	{ OPT_TRACE_BUFFER, "trace-buffer", "SIZE", "--snapshot trace: trace buffer per CPU (default: the tracer's)" },
	{ 'q', "quiet", NULL, "print neither progress nor summary" },
	{ OPT_JSON, "json", NULL, "print the result as one JSON object" },
	{ OPT_JSON_PROGRESS, "json-progress", NULL, "print progress as JSON Lines on stdout" },
	CLI_OPT_HELP,
	CLI_OPT_END
};

/* --rescue: a ddrescue-style account of the reads. */
static void print_rescue(const cbi_backup_result *r)
{
	char h[32];

	printf("rescued:  %s (%" PRIu64 " bytes of the source, all but the bad ranges)\n",
	       cli_human_size(r->point.source_size - r->bad_bytes, h), r->point.source_size - r->bad_bytes);
	printf("bad:      %" PRIu64 " bytes in %" PRIu64 " range%s%s\n", r->bad_bytes, r->bad_ranges,
	       cli_plural(r->bad_ranges), r->bad_ranges ? " (in the point's bad-range map: restore needs --allow-bad)" : "");
	printf("retries:  %" PRIu64 " read%s after %" PRIu64 " failed read%s, %" PRIu64 " bytes recovered by them\n",
	       r->retry_reads, cli_plural(r->retry_reads), r->failed_reads, cli_plural(r->failed_reads),
	       r->rescued_bytes);
}

static void print_summary(const cbi_backup_opts *o, const cbi_backup_result *r)
{
	const cbi_point *p = &r->point;
	char chain[33], h1[32], h2[32];

	cli_hex(p->chain_id, 16, chain);
	printf("%s backup of '%s' (job %s)\n", p->type == CBI_FULL ? "full" : "incremental",
	       o->source, p->job[0] ? p->job : o->job);
	printf("chain:    %s seq %" PRIu32 "\n", chain, p->seq);
	printf("blocks:   %" PRIu64 " total, %" PRIu64 " read, %" PRIu64 " changed, %" PRIu64
	       " stored, %" PRIu64 " zero\n",
	       r->blocks_total, r->blocks_read, r->blocks_changed, r->blocks_stored, r->blocks_zero);
	if (p->used_only)
		printf("unused:   %" PRIu64 " block%s the file system does not use (not read, zero)\n",
		       r->blocks_unused, cli_plural(r->blocks_unused));
	printf("read:     %s\n", cli_human_size(r->bytes_read, h1));
	printf("written:  %s (image %s, ", cli_human_size(r->bytes_written, h1),
	       cli_human_size(p->stored_bytes, h2));
	printf("index %s)\n", cli_human_size(p->index_bytes, h1));
	printf("time:     %.2f s, %.1f MB/s\n", r->seconds, cli_mb_per_s(r->bytes_read, r->seconds));
	if (!strcmp(r->snapshot, "trace"))
		printf("snapshot: trace, frozen %.1f ms, %" PRIu64 " block%s re-read%s\n", r->freeze_ms,
		       r->blocks_reread, cli_plural(r->blocks_reread),
		       r->trace_incomplete ? " (trace incomplete: all of them)" : "");
	else if (r->freeze_ms > 0)
		printf("snapshot: %s, frozen %.1f ms\n", r->snapshot, r->freeze_ms);
	else if (r->blocks_changed_during_read >= 0)
		printf("snapshot: none, %" PRId64 " block%s changed during the read\n",
		       r->blocks_changed_during_read, cli_plural((uint64_t)r->blocks_changed_during_read));
	else
		printf("snapshot: %s\n", r->snapshot);
	printf("image:    %s\n", p->file[0] ? p->file : p->index_file);
	if (r->rescue)
		print_rescue(r);
	if (p->encrypted)
		printf("key file: %s%s\n", r->key_file, r->key_file_new ? " (new: keep a copy of it apart)" : "");
	if (p->segment_size) {
		uint64_t n = (p->stored_bytes + p->segment_size - 1) / p->segment_size;
		printf("segments: %" PRIu64 " MiB each, image in %" PRIu64 " file%s%s%s%s\n",
		       p->segment_size >> 20, n, n == 1 ? "" : "s",
		       r->dest_fs[0] ? " (" : "", r->dest_fs, r->dest_fs[0] ? " destination)" : "");
	}
}

static void print_json(const cbi_backup_result *r)
{
	struct json j;

	json_init(&j, stdout);
	json_begin_object(&j, NULL);
	json_u64(&j, "schema", CLI_JSON_SCHEMA);
	json_string(&j, "type", r->point.type == CBI_FULL ? "full" : "incremental");
	json_u64(&j, "blocks_total", r->blocks_total);
	json_u64(&j, "blocks_read", r->blocks_read);
	json_u64(&j, "blocks_changed", r->blocks_changed);
	json_u64(&j, "blocks_zero", r->blocks_zero);
	json_u64(&j, "blocks_stored", r->blocks_stored);
	json_u64(&j, "blocks_unused", r->blocks_unused);
	json_u64(&j, "bytes_read", r->bytes_read);
	json_u64(&j, "bytes_written", r->bytes_written);
	if (cbi_objstore_is_url(r->point.index_file)) { /* an S3 DEST: what went over the wire */
		json_u64(&j, "bytes_sent", r->bytes_sent);
		json_u64(&j, "bytes_received", r->bytes_received);
	}
	json_double(&j, "seconds", r->seconds);
	/* "warning": the warnings joined with "; " (kept for older readers);
	 * "warnings": one string each */
	json_string(&j, "warning", r->warning[0] ? r->warning : NULL);
	json_begin_array(&j, "warnings");
	for (unsigned i = 0; i < r->n_warnings && i < CBI_MAX_WARNINGS; i++)
		json_string(&j, NULL, r->warnings[i]);
	json_end_array(&j);
	json_string(&j, "notice", r->notice[0] ? r->notice : NULL);
	json_bool(&j, "from_state", r->from_state);
	json_string(&j, "dest_fs", r->dest_fs[0] ? r->dest_fs : NULL);
	json_string(&j, "key_file", r->key_file[0] ? r->key_file : NULL);
	if (r->rescue) {
		json_begin_object(&j, "rescue");
		json_u64(&j, "rescued_bytes", r->point.source_size - r->bad_bytes);
		json_u64(&j, "bad_bytes", r->bad_bytes);
		json_u64(&j, "bad_ranges", r->bad_ranges);
		json_u64(&j, "failed_reads", r->failed_reads);
		json_u64(&j, "retry_reads", r->retry_reads);
		json_u64(&j, "recovered_bytes", r->rescued_bytes);
		json_end_object(&j);
	} else {
		json_null(&j, "rescue");
	}
	json_string(&j, "snapshot", r->snapshot);
	json_double(&j, "freeze_ms", r->freeze_ms);
	json_u64(&j, "blocks_reread", r->blocks_reread);
	json_bool(&j, "trace_incomplete", r->trace_incomplete);
	if (r->blocks_changed_during_read >= 0)
		json_u64(&j, "blocks_changed_during_read", (uint64_t)r->blocks_changed_during_read);
	cli_json_point(&j, "point", &r->point);
	json_end_object(&j);
	json_finish(&j);
}

static int parse_block_size(const struct cli_command *cmd, const char *s, uint32_t *out)
{
	uint64_t v;

	if (cli_parse_size(s, &v) < 0 || v < CBI_MIN_BLOCK_SIZE || v > CBI_MAX_BLOCK_SIZE ||
	    (v & (v - 1)) != 0)
		return cli_usage_error(cmd, "invalid block size '%s': expected a power of two from 4K to 4M",
				       s);
	*out = (uint32_t)v;
	return 0;
}

/* --split SIZE: whole MiB from 1M; 0 (or "none") never splits, "auto" is
 * the default (segments on FAT only). */
static int parse_split(const struct cli_command *cmd, const char *s, uint64_t *out)
{
	uint64_t v;

	if (!strcmp(s, "auto")) {
		*out = 0;
		return 0;
	}
	if (!strcmp(s, "none") || !strcmp(s, "0")) {
		*out = CBI_SPLIT_NONE;
		return 0;
	}
	if (cli_parse_size(s, &v) < 0 || v < (1u << 20) || v % (1u << 20) || v / (1u << 20) > UINT32_MAX)
		return cli_usage_error(cmd, "invalid segment size '%s': expected a whole number of MiB "
				       "from 1M, 0 or auto", s);
	*out = v;
	return 0;
}

static int cmd_backup(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_backup_opts o = { .job = "default" };
	cbi_backup_result r = { 0 };
	cbi_error err = { 0 };
	struct cli_progress prog;
	struct cli_pass pass;
	int quiet = 0, json = 0, json_progress = 0, retries = -1, c, rc;
	uint64_t v;

	cli_pass_init(&pass, "CBIMG_PASSWORD");
	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		switch (c) {
		case OPT_JOB: o.job = optarg; break;
		case OPT_FULL: o.force_full = 1; break;
		case OPT_BLOCK_SIZE:
			if (parse_block_size(cmd, optarg, &o.block_size))
				return CLI_USAGE;
			break;
		case OPT_LEVEL:
			if (cli_parse_uint(optarg, 1, CBI_MAX_LEVEL, &v) < 0)
				return cli_usage_error(cmd, "invalid level '%s': expected 1 to %d", optarg,
						       CBI_MAX_LEVEL);
			o.level = (int)v;
			break;
		case OPT_THREADS:
			if (cli_parse_uint(optarg, 0, 1024, &v) < 0)
				return cli_usage_error(cmd, "invalid thread count '%s': expected 0 to 1024",
						       optarg);
			o.threads = (int)v;
			break;
		case OPT_SOURCE_ID: o.source_id = optarg; break;
		case OPT_HOST: o.host = optarg; break;
		case OPT_STATE_DIR: o.state_dir = optarg; break;
		case OPT_NO_STATE: o.no_state = 1; break;
		case OPT_OUTBOX: o.outbox = 1; break;
		case OPT_SPLIT:
			if (parse_split(cmd, optarg, &o.split))
				return CLI_USAGE;
			break;
		case OPT_ENCRYPT: o.encrypt = 1; break;
		case OPT_PASSWORD_FILE: pass.file = optarg; break;
		case OPT_HASH:
			if (!strcmp(optarg, "xxh3"))
				o.hash_alg = CBI_HASH_XXH3_128;
			else if (!strcmp(optarg, "sha256"))
				o.hash_alg = CBI_HASH_SHA256_128;
			else
				return cli_usage_error(cmd, "invalid hash '%s': expected xxh3 or sha256", optarg);
			break;
		case OPT_SCRYPT:
			if (cli_parse_scrypt(optarg, &o.kdf))
				return cli_usage_error(cmd, "invalid scrypt cost '%s': expected LOG2N:R:P with LOG2N "
						       "12 to 24, R 8 to 64, P 1 to 64", optarg);
			break;
		case OPT_USED_ONLY: o.used_only = 1; break;
		case OPT_NO_SPACE_CHECK: o.no_space_check = 1; break;
		case OPT_DEST_UUID: o.dest_uuid = optarg; break;
		case OPT_RESCUE: o.rescue = 1; break;
		case OPT_RETRIES:
			if (cli_parse_uint(optarg, 0, 100, &v) < 0)
				return cli_usage_error(cmd, "invalid retry count '%s': expected 0 to 100", optarg);
			retries = (int)v;
			break;
		case OPT_SNAPSHOT: {
			static const char *const modes[] = { "auto", "none", "trace", "freeze", "reflink", "exec" };
			int m = -1;
			for (int i = 0; i < 6; i++)
				if (!strcmp(optarg, modes[i]))
					m = i;
			if (m < 0)
				return cli_usage_error(cmd, "invalid snapshot mode '%s': expected auto, trace, freeze, "
						       "reflink, exec or none", optarg);
			o.snapshot = m; /* the order of CBI_SNAP_* */
			break;
		}
		case OPT_FREEZE_TIMEOUT:
			if (cli_parse_uint(optarg, 1, 86400, &v) < 0)
				return cli_usage_error(cmd, "invalid freeze timeout '%s': expected 1 to 86400 seconds",
						       optarg);
			o.freeze_timeout_ms = (uint32_t)v * 1000u;
			break;
		case OPT_SNAPSHOT_CMD: o.snapshot_cmd = optarg; break;
		case OPT_SNAPSHOT_CLEANUP: o.snapshot_cleanup = optarg; break;
		case OPT_ALLOW_INCONSISTENT: o.allow_inconsistent = 1; break;
		case OPT_TRACE_BUFFER:
			if (cli_parse_size(optarg, &v) < 0 || v < 1024 || v > (1ull << 30))
				return cli_usage_error(cmd, "invalid trace buffer '%s': expected 1K to 1G", optarg);
			o.trace_buf_kib = (uint32_t)(v / 1024);
			break;
		case 'q': quiet = 1; break;
		case OPT_JSON: json = 1; break;
		case OPT_JSON_PROGRESS: json_progress = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if (retries >= 0 && !o.rescue)
		return cli_usage_error(cmd, "--retries applies to --rescue only");
	o.retries = retries >= 0 ? (unsigned)retries : 1;
	if ((rc = cli_check_operands(cmd, argc, argv, 2)))
		return rc;
	o.source = argv[optind];
	o.dest = argv[optind + 1];
	if (!o.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		o.state_dir = getenv("CBIMG_STATE_DIR");

	cli_progress_init(&prog, quiet || json);
	if (json_progress)
		cli_progress_json(&prog, "backup");
	o.progress = cli_progress_cb;
	o.progress_ud = &prog;
	o.pass = cli_pass_cb;
	o.pass_ud = &pass;
	rc = cbi_objstore_is_url(o.dest) ? cbi_objstore_backup(&o, cli_s3_endpoint, &r, &err)
					 : cbi_backup(&o, &r, &err);
	cli_pass_wipe(&pass);
	cli_progress_end(&prog);
	if (rc < 0)
		return cli_fail(rc, &err);

	if (json)
		print_json(&r);
	else if (!quiet && !json_progress)
		print_summary(&o, &r);
	if (r.notice[0] && !quiet) {
		cli_say("note", "%s", r.notice);
	}
	fflush(stdout);
	for (unsigned i = 0; i < r.n_warnings && i < CBI_MAX_WARNINGS; i++)
		cli_say("warning", "%s", r.warnings[i]);
	/* a point was written, but something needs a look (exit status 5) */
	return r.n_warnings > 0 || r.warning[0] ? CLI_WARN : CLI_OK;
}

const struct cli_command cli_backup = {
	.name = "backup",
	.operands = "[options] SOURCE DEST",
	.summary = "write a full or incremental image of SOURCE into directory DEST",
	.description =
		"SOURCE is a block device or a raw image file. The first backup of a job\n"
		"writes a full image; later ones compare every block's hash with the newest\n"
		"point of the chain and store only the blocks that changed. The block size\n"
		"is a power of two from 4K to 4M; SIZE takes the suffixes K, M, G and T\n"
		"(powers of 1024). A chain is kept per host, source and job; a source path\n"
		"whose identity changed (another disk) is refused unless --full is given.\n"
		"On a FAT file system (FAT32 USB disks), whose files hold less than 4 GiB,\n"
		"files are stored as segments NAME.cbi, NAME.cbi.001, ... of 4095M; --split\n"
		"sets the segment size anywhere. Keep a file's segments together when moving\n"
		"or renaming it.\n"
		"--encrypt starts an encrypted chain: a random key, wrapped under the\n"
		"passphrase in a key file (.cbk) beside the chain; later backups of the\n"
		"chain need the passphrase. Keep a copy of the key file apart: without it\n"
		"the chain cannot be read. Exit 4: wrong or missing passphrase.\n"
		"--used-only reads only the blocks that the ext2/3/4 file system on SOURCE\n"
		"uses (its block bitmaps); the others are stored as zero blocks and restore\n"
		"as zeros. It is refused for a source mounted read-write.\n"
		"--rescue goes on past unreadable source ranges (bad sectors): each failing\n"
		"read is split down to the logical sector size, retried (--retries), and what\n"
		"still fails is recorded in the point as a bad range (exit 5 and a summary).\n"
		"A source mounted read-write is read consistently (--snapshot, default auto:\n"
		"trace the writes during the read and re-read them frozen, else freeze the\n"
		"file system for the whole read, else clone an image file), or refused.\n"
		"Exit 5: the point was written, with a warning (a source mounted read-write\n"
		"read with --snapshot none --allow-inconsistent, a catalog not updated, ...). --json-progress prints\n"
		"progress as JSON Lines on stdout.",
	.options = backup_options,
	.run = cmd_backup,
};
