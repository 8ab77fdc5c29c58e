/* progress.c - progress line on stderr and clean cancellation on signals. */
#include "cli.h"
#include "json.h"

#include <inttypes.h>

#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REDRAW_INTERVAL 0.2  /* seconds: at most ~5 redraws per second */
#define JSON_INTERVAL 0.25   /* seconds: at most ~4 JSON lines per second */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	if (interrupted) {
		/* second signal: the user insists, stop now */
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	interrupted = 1;
}

void cli_signals_install(void)
{
	static const int sigs[] = { SIGINT, SIGTERM };

	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
		struct sigaction sa, old;

		/* keep ignoring what our parent told us to ignore (nohup, &) */
		if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
			continue;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_signal;
		sigemptyset(&sa.sa_mask);
		/* no SA_RESTART: a blocking call (an open, a read of a pipe) ends with
		 * EINTR, so a signal always ends the run, never waits for it */
		sa.sa_flags = 0;
		sigaction(sigs[i], &sa, NULL);
	}
}

int cli_interrupted(void)
{
	return interrupted != 0;
}

double cli_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cli_progress_init(struct cli_progress *p, int quiet)
{
	p->show = !quiet && isatty(STDERR_FILENO);
	p->start = cli_now();
	p->last = 0;
	p->width = 0;
	p->json_command = NULL;
	p->json_last = 0;
	p->done = p->total = 0;
}

void cli_progress_json(struct cli_progress *p, const char *command)
{
	p->json_command = command;
	p->show = 0;          /* stdout carries the stream; no line on stderr either */
	json_compact = 1;     /* the final --json document is one line too */
}

/* One JSON Lines progress object on stdout (cli.h, cli_progress_json()). */
static void json_line(struct cli_progress *p, double now, int final)
{
	double elapsed = now - p->start;
	double pct = p->total == 0 ? (final ? 100.0 : 0.0) :
		     p->done >= p->total ? 100.0 : 100.0 * (double)p->done / (double)p->total;

	printf("{\"schema\": %d, \"message_type\": \"progress\", \"command\": \"%s\", "
	       "\"bytes_done\": %" PRIu64 ", \"bytes_total\": %" PRIu64 ", \"percent\": %.1f, "
	       "\"elapsed\": %.3f, \"rate\": %.0f, \"final\": %s}\n",
	       CLI_JSON_SCHEMA, p->json_command, p->done, p->total, pct, elapsed,
	       elapsed > 0 ? (double)p->done / elapsed : 0.0, final ? "true" : "false");
	fflush(stdout);
	p->json_last = now;
}

/* The progress line on the screen now, if any: a message printed meanwhile
 * (cli_error, a passphrase prompt) first clears it, so that the two never
 * run together on one line. */
static struct cli_progress *shown;

static void format_eta(double seconds, char *buf, size_t size)
{
	unsigned long s = seconds < 0 ? 0 : (unsigned long)(seconds + 0.5);

	if (s >= 3600)
		snprintf(buf, size, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
	else
		snprintf(buf, size, "%lu:%02lu", s / 60, s % 60);
}

static void draw(struct cli_progress *p, uint64_t done, uint64_t total, double now)
{
	char line[160], d[32], t[32], eta[32];
	double elapsed = now - p->start;
	double rate = elapsed > 0 ? (double)done / elapsed : 0;  /* bytes/s */
	int len;

	cli_human_size(done, d);
	if (total > 0) {
		double pct = done >= total ? 100.0 : 100.0 * (double)done / (double)total;
		if (rate > 0 && done <= total)
			format_eta((double)(total - done) / rate, eta, sizeof eta);
		else
			snprintf(eta, sizeof eta, "-:--");
		len = snprintf(line, sizeof line, "%5.1f%%  %s / %s  %.1f MB/s  ETA %s", pct, d,
			       cli_human_size(total, t), rate / 1e6, eta);
	} else {
		len = snprintf(line, sizeof line, "%s  %.1f MB/s", d, rate / 1e6);
	}
	if (len < 0)
		return;
	if (len >= (int)sizeof line)
		len = (int)sizeof line - 1;
	/* pad with spaces over what a longer previous line left behind */
	fprintf(stderr, "\r%s%*s", line, p->width > len ? p->width - len : 0, "");
	if (p->width > len)
		fprintf(stderr, "\r%s", line);
	fflush(stderr);
	p->width = len;
	shown = p;
}

void cli_progress_clear(void)
{
	if (shown && shown->width > 0) {
		fprintf(stderr, "\r%*s\r", shown->width, "");
		fflush(stderr);
		shown->width = 0;
		shown->last = 0; /* redrawn at the next callback */
	}
}

int cli_progress_cb(void *ud, uint64_t done, uint64_t total)
{
	struct cli_progress *p = ud;

	if (interrupted)
		return 1;
	if (p && p->json_command) {
		double now = cli_now();
		p->done = done;
		p->total = total;
		if (p->json_last == 0 || now - p->json_last >= JSON_INTERVAL)
			json_line(p, now, 0);
	}
	if (p && p->show) {
		double now = cli_now();
		if (now - p->last >= REDRAW_INTERVAL) {
			p->last = now;
			draw(p, done, total, now);
		}
	}
	return 0;
}

void cli_progress_end(struct cli_progress *p)
{
	if (p->json_command) {
		json_line(p, cli_now(), 1);
		p->json_command = NULL;  /* one final line only */
	}
	if (p->show && p->width > 0) {
		fprintf(stderr, "\r%*s\r", p->width, "");
		fflush(stderr);
	}
	p->width = 0;
	if (shown == p)
		shown = NULL;
}
