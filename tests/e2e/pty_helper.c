/* pty_helper.c - run a command on a pseudo-terminal and play a short script
 * against it, for tests of what cbimg does at a terminal (tests/e2e, built
 * by the test with cc ... -lutil).
 *
 *   pty_helper [-t SECONDS] STEP... -- COMMAND [ARG...]
 *
 * Steps, in order:
 *   expect=TEXT   wait until the command has written TEXT (since the last expect)
 *   noecho        wait until the terminal's ECHO flag is off (a passphrase prompt)
 *   reading       wait until the command is blocked in read(2) (a signal sent
 *                 before that, between a prompt's write and its read, is
 *                 lost by readpassphrase(3): a race no typist can hit)
 *   sleep=MS      wait MS milliseconds
 *   line=TEXT     type TEXT and Enter
 *   intr          type the terminal's interrupt character (Ctrl-C)
 * Then it waits for the command to end, at most SECONDS (default 10) per step
 * and for the end; a command still running then is killed (SIGKILL).
 *
 * Prints on stdout, one per line:
 *   status=exit N | status=signal N | status=timeout
 *   echo=on | echo=off              (the terminal's ECHO flag at the end)
 *   elapsed_ms=N                    (from the last step to the end)
 * then "output:" and everything the command wrote to the terminal.
 * Exit status: 0 when every step was played, 1 when a step timed out (the
 * same lines are printed), 2 for a usage or system error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static char out[1 << 16];
static size_t out_len, seen; /* seen: where the next expect starts looking */

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Read what the command wrote, waiting at most ms. 0, or -1 at end of file. */
static int pump(int master, int ms)
{
	struct pollfd p = { .fd = master, .events = POLLIN };
	int r = poll(&p, 1, ms);
	if (r <= 0)
		return 0;
	char b[4096];
	ssize_t n = read(master, b, sizeof b);
	if (n <= 0)
		return n < 0 && errno == EINTR ? 0 : -1;
	size_t k = (size_t)n;
	if (k > sizeof out - 1 - out_len)
		k = sizeof out - 1 - out_len;
	memcpy(out + out_len, b, k);
	out_len += k;
	out[out_len] = 0;
	return 0;
}

static int echo_on(int fd)
{
	struct termios t;
	if (tcgetattr(fd, &t) < 0)
		return -1;
	return (t.c_lflag & ECHO) != 0;
}

/* Is the command blocked in read(2)? From /proc/PID/syscall (its first
 * field is the number of the system call it waits in); where that file
 * cannot be read, from its state (sleeping), after a pause. */
static int in_read(pid_t pid)
{
	char path[64], line[256] = "";
	snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
	FILE *f = fopen(path, "r");
	if (f) {
		int ok = fgets(line, sizeof line, f) != NULL;
		fclose(f);
		if (ok && strncmp(line, "running", 7)) {
			long nr = strtol(line, NULL, 10);
#if defined(__NR_read)
			return nr == __NR_read;
#else
			return nr == 0;
#endif
		}
		if (ok)
			return 0;
	}
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if (!(f = fopen(path, "r")))
		return 0;
	int ok = fgets(line, sizeof line, f) != NULL;
	fclose(f);
	const char *p = ok ? strrchr(line, ')') : NULL;
	if (!p || p[1] != ' ' || p[2] != 'S')
		return 0;
	usleep(200000);
	return 1;
}

int main(int argc, char **argv)
{
	int secs = 10, first = 1;
	if (argc > 2 && !strcmp(argv[1], "-t")) {
		secs = atoi(argv[2]);
		first = 3;
	}
	int dash = first;
	while (dash < argc && strcmp(argv[dash], "--"))
		dash++;
	if (dash + 1 >= argc || secs <= 0) {
		fprintf(stderr, "usage: pty_helper [-t SECONDS] STEP... -- COMMAND [ARG...]\n");
		return 2;
	}
	int master;
	pid_t pid = forkpty(&master, NULL, NULL, NULL);
	if (pid < 0) {
		perror("forkpty");
		return 2;
	}
	if (pid == 0) {
		execvp(argv[dash + 1], argv + dash + 1);
		perror("execvp");
		_exit(127);
	}
	/* Our own descriptor of the terminal: its settings stay readable after
	 * the command has ended. */
	int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
	if (slave < 0) {
		perror("open pty");
		kill(pid, SIGKILL);
		return 2;
	}
	struct termios t;
	if (tcgetattr(slave, &t) < 0) {
		perror("tcgetattr");
		kill(pid, SIGKILL);
		return 2;
	}
	char intr = (char)t.c_cc[VINTR];

	int rc = 0;
	double last = now_ms();
	for (int i = first; i < dash && !rc; i++) {
		const char *s = argv[i];
		double deadline = now_ms() + secs * 1e3;
		if (!strncmp(s, "expect=", 7)) {
			const char *want = s + 7;
			char *hit;
			while (!(hit = strstr(out + seen, want)) && now_ms() < deadline)
				if (pump(master, 50) < 0)
					break;
			if (!hit) {
				fprintf(stderr, "pty_helper: '%s' not seen\n", want);
				rc = 1;
			} else {
				seen = (size_t)(hit - out) + strlen(want);
			}
		} else if (!strcmp(s, "noecho")) {
			while (echo_on(slave) != 0 && now_ms() < deadline)
				pump(master, 20);
			if (echo_on(slave) != 0) {
				fprintf(stderr, "pty_helper: echo never turned off\n");
				rc = 1;
			}
		} else if (!strncmp(s, "line=", 5)) {
			if (write(master, s + 5, strlen(s + 5)) < 0 || write(master, "\r", 1) < 0)
				rc = 1;
		} else if (!strcmp(s, "reading")) {
			while (!in_read(pid) && now_ms() < deadline)
				pump(master, 5);
			if (!in_read(pid)) {
				fprintf(stderr, "pty_helper: the command never waited in read(2)\n");
				rc = 1;
			}
		} else if (!strncmp(s, "sleep=", 6)) {
			double until = now_ms() + atoi(s + 6);
			while (now_ms() < until)
				pump(master, 10);
		} else if (!strcmp(s, "intr")) {
			if (write(master, &intr, 1) != 1)
				rc = 1;
		} else {
			fprintf(stderr, "pty_helper: unknown step '%s'\n", s);
			kill(pid, SIGKILL);
			return 2;
		}
		last = now_ms();
	}

	/* wait for the end, draining the terminal meanwhile */
	int status = 0, ended = 0;
	double deadline = now_ms() + secs * 1e3;
	while (!ended && now_ms() < deadline) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			ended = 1;
		else
			pump(master, 20);
	}
	double elapsed = now_ms() - last;
	if (!ended) {
		/* for the report: the command's signal masks and where it waits */
		char path[64], line[256];
		snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
		FILE *f = fopen(path, "r");
		while (f && fgets(line, sizeof line, f))
			if (!strncmp(line, "Sig", 3) || !strncmp(line, "ShdPnd", 6) || !strncmp(line, "State", 5))
				fprintf(stderr, "pty_helper: still running: %s", line);
		if (f)
			fclose(f);
		const char *more[] = { "wchan", "syscall" };
		for (int k = 0; k < 2; k++) {
			snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, more[k]);
			if ((f = fopen(path, "r"))) {
				if (fgets(line, sizeof line, f))
					fprintf(stderr, "pty_helper: still running: %s: %s\n", more[k], line);
				fclose(f);
			}
		}
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}
	while (pump(master, 50) == 0 && out_len < sizeof out - 1) {
		struct pollfd p = { .fd = master, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0)
			break;
	}
	if (!ended)
		printf("status=timeout\n");
	else if (WIFEXITED(status))
		printf("status=exit %d\n", WEXITSTATUS(status));
	else
		printf("status=signal %d\n", WTERMSIG(status));
	int e = echo_on(slave);
	printf("echo=%s\n", e > 0 ? "on" : e == 0 ? "off" : "unknown");
	printf("elapsed_ms=%.0f\n", elapsed);
	printf("output:\n%s\n", out);
	close(slave);
	close(master);
	return rc;
}
