/* cmd_passwd.c - 'cbimg passwd': change the passphrase of an encrypted chain. */
#include "cli.h"
#include "json.h"

#include <getopt.h>
#include <stdlib.h>

enum { OPT_PASSWORD_FILE = 256, OPT_NEW_PASSWORD_FILE, OPT_SCRYPT, OPT_STATE_DIR, OPT_NO_STATE, OPT_JSON };

static const struct cli_option passwd_options[] = {
	{ OPT_PASSWORD_FILE, "password-file", "FILE", "current passphrase from FILE (default: $CBIMG_PASSWORD, or ask)" },
	{ OPT_NEW_PASSWORD_FILE, "new-password-file", "FILE", "new passphrase from FILE (default: $CBIMG_NEW_PASSWORD, or ask twice)" },
	{ OPT_SCRYPT, "scrypt", "N:R:P", "scrypt cost log2(N):r:p of the new wrapping (default 15:8:4)" },
	{ OPT_STATE_DIR, "state-dir", "DIR", "also rewrap the local state's copy here (default /var/lib/cbimg)" },
	{ OPT_NO_STATE, "no-state", NULL, "leave the local state's copy alone" },
	{ 'q', "quiet", NULL, "print nothing but errors" },
	{ OPT_JSON, "json", NULL, "print the result as one JSON object" },
	CLI_OPT_HELP,
	CLI_OPT_END
};

static int cmd_passwd(const struct cli_command *cmd, int argc, char **argv)
{
	cbi_passwd_opts o = { 0 };
	cbi_passwd_result r = { 0 };
	cbi_error err = { 0 };
	struct cli_pass cur, neu;
	int quiet = 0, json = 0, c, rc;

	cli_pass_init(&cur, "CBIMG_PASSWORD");
	cli_pass_init(&neu, "CBIMG_NEW_PASSWORD");
	cur.label = "Current passphrase";
	neu.label = "New passphrase";
	while ((c = cli_getopt(cmd, argc, argv)) != -1) {
		switch (c) {
		case OPT_PASSWORD_FILE: cur.file = optarg; break;
		case OPT_NEW_PASSWORD_FILE: neu.file = optarg; break;
		case OPT_SCRYPT:
			if (cli_parse_scrypt(optarg, &o.kdf))
				return cli_usage_error(cmd, "invalid scrypt cost '%s': expected LOG2N:R:P with LOG2N "
						       "12 to 24, R 8 to 64, P 1 to 64", optarg);
			break;
		case OPT_STATE_DIR: o.state_dir = optarg; break;
		case OPT_NO_STATE: o.no_state = 1; break;
		case 'q': quiet = 1; break;
		case OPT_JSON: json = 1; break;
		default: return cli_opt_exit(cmd, c);
		}
	}
	if ((rc = cli_check_operands(cmd, argc, argv, 1)))
		return rc;
	o.path = argv[optind];
	if (!o.state_dir && getenv("CBIMG_STATE_DIR") && *getenv("CBIMG_STATE_DIR"))
		o.state_dir = getenv("CBIMG_STATE_DIR");
	o.pass = cli_pass_cb;
	o.pass_ud = &cur;
	o.new_pass = cli_pass_cb;
	o.new_pass_ud = &neu;
	rc = cbi_passwd(&o, &r, &err);
	cli_pass_wipe(&cur);
	cli_pass_wipe(&neu);
	if (rc < 0)
		return cli_fail(rc, &err);
	if (json) {
		struct json j;
		json_init(&j, stdout);
		json_begin_object(&j, NULL);
		json_u64(&j, "schema", CLI_JSON_SCHEMA);
		json_u64(&j, "rewrapped", r.rewrapped);
		json_u64(&j, "skipped", r.skipped);
		json_string(&j, "key_file", r.first);
		json_end_object(&j);
		json_finish(&j);
	} else if (!quiet) {
		printf("passphrase changed: %u key file%s rewritten (%s)\n", r.rewrapped, r.rewrapped == 1 ? "" : "s",
		       r.first);
		if (r.skipped)
			printf("left alone: %u key file%s of the chain that the current passphrase does not open\n",
			       r.skipped, r.skipped == 1 ? "" : "s");
	}
	return CLI_OK;
}

const struct cli_command cli_passwd = {
	.name = "passwd",
	.operands = "[options] PATH",
	.summary = "change the passphrase of an encrypted chain",
	.description =
		"PATH is the chain's key file (.cbk) or any of its .cbi/.cbx files. Every key\n"
		"file of the chain in that directory and in the local state that the current\n"
		"passphrase opens is rewritten under the new one; no image or index file\n"
		"changes. Copies elsewhere (another disk, a remote site) keep the old\n"
		"passphrase until passwd is run there too, or the new key file is copied.\n"
		"Exit 4: wrong or missing passphrase.",
	.options = passwd_options,
	.run = cmd_passwd,
};
