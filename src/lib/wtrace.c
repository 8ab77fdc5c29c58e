/* wtrace.c - the write tracer of the "trace" snapshot mode (wtrace.h): which
 * blocks of a block device were written while a backup read it, from the
 * kernel's block tracepoints in a private tracefs instance (libtracefs).
 *
 * Why the set of blocks it reports is complete
 * ============================================
 * The backup reads every block once (the main pass), then freezes the file
 * system, collects, re-reads the collected blocks, and thaws. A block's
 * final image is right when the main pass read it after its last change
 * before the freeze, or when it is re-read. So the set must hold every
 * block whose content may have changed after some moment before the main
 * pass read it; we show that it holds every block that a write request
 * changed, or may have changed, after cbi_wtrace_start() returned.
 *
 * 1. The event. One tracepoint is enabled, filtered in the kernel on the
 *    device (below): block_rq_complete. It fires in blk_update_request()
 *    and blk_complete_request(), the two functions through which every
 *    request of a blk-mq device completes (blk_mq_end_request(), the
 *    drivers' partial completions, blk_mq_end_request_batch()), with the
 *    range completed: for a partial completion, the part done. Every write
 *    to such a device is carried by requests (bios are merged into
 *    requests or split into several; the block layer has no other way to
 *    the driver), and a request completes only after its data reached the
 *    device. So:
 *    - a write that completed before start was on the device before the
 *      main pass began: the main pass read it;
 *    - a write that completes after start, whenever it was submitted
 *      (before start: in a plug list, in the I/O scheduler, at the
 *      driver), is recorded with its range when it completes;
 *    - a write racing with start: the tracepoint fires after the data
 *      reached the device, and enabling an event is done when the write(2)
 *      to its "enable" file returns (the static key is patched on every
 *      CPU), so either the event is recorded or the data was in place
 *      before start returned;
 *    - at collect, called after the freeze returned, every write of the
 *      file system has completed (freezing waits for it), so its event is
 *      in the buffer (a tracepoint commits its event before it returns)
 *      and collect, which drains synchronously, sees it.
 *    Hence no drain of the queue at start is needed. A flush would not have
 *    been one anyway: fsync, BLKFLSBUF and REQ_PREFLUSH make completed
 *    writes durable and do not wait for writes in flight.
 *    Submissions (block_bio_queue) add nothing to this argument, and cost:
 *    the block layer merges bios into requests, and a buffered 1 GiB write
 *    to a loop device gave 262144 block_bio_queue events (4 KiB bios) and
 *    2048 block_rq_complete events (512 KiB requests), measured here; with
 *    both, a writer under load overran the default buffer. A submission
 *    event would only add writes submitted but not completed at collect,
 *    which under the freeze are not the file system's.
 *    The completion's range is exact only for request-based (blk-mq)
 *    devices: loop, SCSI/SATA, NVMe, virtio, nbd, request-based
 *    multipath. Bio-based drivers (device-mapper, md, pmem, zram, brd,
 *    and the head device nvmeXnY of a namespace under NVMe native
 *    multipath) have no requests, and a bio's range at completion may be
 *    advanced: cbi_wtrace_usable() refuses them (no "mq" directory in
 *    sysfs) and the caller uses another snapshot mode. So are zoned
 *    devices (a zone append lands at the zone's write pointer, not at the
 *    request's sector) and DAX devices (queue/dax: writes through memory
 *    mappings never become requests). Writes that reach a
 *    device without a request are not seen: DAX mappings; SCSI
 *    pass-through (SG_IO) writes carry no range; for a loop device, writes
 *    to its backing file that do not go through the loop device (the loop
 *    driver's own writes to that file are events of the backing file's
 *    disk, not of loopN). Nor does the backup's freeze stop any of these,
 *    nor raw writes to the device by other processes while it re-reads.
 *
 *    Measured on Linux 6.18 (tests/e2e/t_wtrace.sh checks each): an
 *    O_DIRECT write to loopN completes as "WS" with its range; buffered
 *    writes through a mounted ext4 as "W" (writeback) and "WSM"/"FWFSM"
 *    (jbd2) at sync; blkdiscard as "DS", blkdiscard -z (write-zeroes) as
 *    "NS"; an fsync's flush as "FF" with sector (u64)-1 and no sectors. A
 *    write to partition loopNp2 (device 259:1) completes on loopN (7:N)
 *    with the partition's start (/sys/class/block/loopNp2/start, in
 *    512-byte sectors) added: the block layer remaps a partition's bios to
 *    the whole disk before it makes requests. A write submitted 0.5 s
 *    before start to a loop device whose writes take 4 s (an nbdfuse file
 *    through nbdkit's delay filter) is recorded.
 *
 * 2. Which requests change data. Every event that is not a read counts,
 *    over its whole range: writes ('W'), discards and secure erases ('D',
 *    "DE": a discarded range may read back as zeroes or anything), write-
 *    zeroes ('N' on this kernel, "WZ" on later ones), zone operations
 *    ('Z'), and any operation a later kernel names with a new letter.
 *    Flushes carry no range ("F", "FF") and mark nothing; a write with
 *    REQ_PREFLUSH ("FW...") is a write. Reads are the rwbs strings that
 *    start with 'R' (blk_fill_rwbs puts the operation first, after an 'F'
 *    that only writes can have). The kernel filter is
 *        dev == D && !(rwbs ~ "R*")
 *    and it must be written so: the filter compares a fixed-size char
 *    array over its whole size, and the bytes after the string's NUL are
 *    whatever the buffer held before, so a glob such as "*R*" matches
 *    discards at random (seen here: blkdiscard's "DS" was dropped). A
 *    front match ("R*") compares only the first byte and is exact. The
 *    filter keeps the backup's own reads, the whole disk's worth, out of
 *    the buffer. The events are parsed again here and the device checked
 *    again, so a kernel that took a filter less exactly than written could
 *    only add blocks.
 *
 * 3. Nothing lost, or say so. The instance's buffers do not overwrite
 *    (option overwrite off): when one is full, new events are dropped and
 *    counted. cbi_wtrace_collect() reads, after draining, each CPU's
 *    per_cpu/cpuN/stats and reports complete=0 when any of "overrun",
 *    "commit overrun" or "dropped events" is not zero, when a page read
 *    carries the kernel's missed-events mark, when a stats file cannot be
 *    read or parsed, or when memory ran out: loss is sticky, from start
 *    on. The caller then falls back to a full compare pass under the
 *    freeze. A background thread drains the buffers every WT_DRAIN_MS
 *    into a list of ranges in memory (merged as it grows), so the buffer
 *    size bounds the burst between two drains, not the whole backup.
 *
 * tracefs. The tracing directory is /sys/kernel/tracing (or the debugfs
 * tracing directory); when no tracefs is mounted, libtracefs mounts it at
 * /sys/kernel/tracing (cbi_wtrace_usable and start do, as root), and it is
 * left mounted, as systemd mounts it at boot. Each tracer has its own
 * instance, instances/cbimg-wtrace-PID-SEQ, removed on every exit path of
 * start and by stop. A process that dies without stop (kill -9, a crash)
 * leaves its instance behind, events enabled; the next start removes the
 * instances of this name whose PID is no longer a live process. A live
 * tracer keeps its instance's tracing_on file open, which makes the
 * kernel refuse to remove the instance (EBUSY, checked by t_wtrace.sh), so
 * a tracer of another pid namespace, whose PID looks dead from here, is not
 * removed by mistake. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <tracefs.h>

#include "mounts.h"
#include "util.h"
#include "wtrace.h"

#define WT_SECTOR 512u
#define WT_DEFAULT_KIB 4096u /* per CPU: about 32000 write requests between two drains */
#define WT_DRAIN_MS 100
#define WT_PREFIX "cbimg-wtrace-"

/* The tracepoints recorded (see the top: completions suffice). */
#define WT_NEV 1
static const char *const wt_events[WT_NEV] = { "block_rq_complete" };

/* A range of sectors of devpath (not of the whole disk): [s, e). */
typedef struct wt_range {
	uint64_t s, e;
} wt_range;

/* The facts about devpath that tracing needs. */
typedef struct wt_dev {
	uint32_t kdev;  /* the whole disk's device number, kernel encoding (major << 20 | minor) */
	uint64_t start; /* devpath's first sector on the whole disk */
	uint64_t len;   /* devpath's length in sectors */
} wt_dev;

struct cbi_wtrace {
	struct tracefs_instance *inst;
	struct tep_handle *tep;
	int hold_fd; /* the instance's tracing_on, open: another process cannot remove the instance */
	wt_dev d;
	int id[WT_NEV];
	struct tep_format_field *f_dev[WT_NEV], *f_sector[WT_NEV], *f_nr[WT_NEV], *f_rwbs[WT_NEV];
	pthread_mutex_t mu; /* the fields below, and the draining itself */
	wt_range *r;
	size_t n, cap, n_merged; /* r[0..n_merged) is sorted and disjoint */
	int lost;                /* an event may have been lost: sticky */
	int oom;                 /* a range could not be stored: sticky */
	uint64_t n_events;
	pthread_t thr;
	int thr_started;
	int thr_stop; /* under mu */
	pthread_cond_t cv;
};

static unsigned wt_seq;

/* ------------------------------------------------------------ the device */

/* A decimal number from a sysfs file: 0 or -1. */
static int sysfs_u64(const char *path, uint64_t *v)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	unsigned long long x;
	int ok = fscanf(f, "%llu", &x) == 1;
	fclose(f);
	if (!ok)
		return -1;
	*v = x;
	return 0;
}

/* The first line of a sysfs file, without its newline: 0 or -1. */
static int sysfs_line(const char *path, char *buf, size_t sz)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int ok = fgets(buf, (int)sz, f) != NULL;
	fclose(f);
	if (!ok)
		return -1;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static int wt_dev_info(const char *devpath, wt_dev *d, cbi_error *err)
{
	struct stat st;
	if (stat(devpath, &st) < 0)
		return cbi_err(err, -errno, "'%s': %s", devpath, strerror(errno));
	if (!S_ISBLK(st.st_mode))
		return cbi_err(err, -ENOTSUP, "'%s': not a block device, write tracing needs one", devpath);
	dev_t whole;
	if (cbi_dev_whole_disk(st.st_rdev, &whole))
		return cbi_err(err, -ENOTSUP, "'%s': no such block device in sysfs", devpath);
	char p[128];
	d->start = 0;
	if (whole != st.st_rdev) {
		snprintf(p, sizeof p, "/sys/dev/block/%u:%u/start", major(st.st_rdev), minor(st.st_rdev));
		if (sysfs_u64(p, &d->start))
			return cbi_err(err, -ENOTSUP, "'%s': cannot read the partition's start ('%s')",
				       devpath, p);
	}
	snprintf(p, sizeof p, "/sys/dev/block/%u:%u/size", major(st.st_rdev), minor(st.st_rdev));
	if (sysfs_u64(p, &d->len))
		return cbi_err(err, -ENOTSUP, "'%s': cannot read its size ('%s')", devpath, p);
	if (d->start > UINT64_MAX / WT_SECTOR - d->len)
		return cbi_err(err, -ENOTSUP, "'%s': size out of range", devpath);
	snprintf(p, sizeof p, "/sys/dev/block/%u:%u/mq", major(whole), minor(whole));
	if (access(p, F_OK) < 0)
		return cbi_err(err, -ENOTSUP,
			       "'%s': not a blk-mq device (a bio-based driver such as device-mapper or md): "
			       "writes in flight when tracing starts could go unseen",
			       devpath);
	/* zone append writes where the zone's write pointer is, not at the
	 * request's sector; DAX maps the media into memory, past the block layer */
	char v[32];
	snprintf(p, sizeof p, "/sys/dev/block/%u:%u/queue/zoned", major(whole), minor(whole));
	if (sysfs_line(p, v, sizeof v) == 0 && strcmp(v, "none") != 0)
		return cbi_err(err, -ENOTSUP,
			       "'%s': a zoned device (%s): its writes cannot be traced by sector", devpath,
			       v);
	snprintf(p, sizeof p, "/sys/dev/block/%u:%u/queue/dax", major(whole), minor(whole));
	if (sysfs_line(p, v, sizeof v) == 0 && strcmp(v, "0") != 0)
		return cbi_err(err, -ENOTSUP,
			       "'%s': a DAX device: writes through memory mappings bypass the block layer",
			       devpath);
	if (major(whole) >= (1u << 12) || minor(whole) >= (1u << 20))
		return cbi_err(err, -ENOTSUP, "'%s': device number out of range", devpath);
	d->kdev = (uint32_t)major(whole) << 20 | (uint32_t)minor(whole);
	return 0;
}

/* ------------------------------------------------------------- tracefs */

/* Find tracefs, mounting it when absent, and check that the block
 * tracepoints are there and that we may make instances. A tracefs that
 * libtracefs mounted here stays mounted after the run, on purpose: another
 * cbimg may be tracing through it at the same time, and systemd mounts the
 * same one at boot (a chroot without it keeps it until it is unmounted). */
static int wt_tracefs(const char *devpath, cbi_error *err)
{
	const char *dir = tracefs_tracing_dir(); /* mounts tracefs when absent */
	if (!dir)
		return cbi_err(err, -ENOTSUP,
			       "'%s': no tracefs mounted, and mounting one at /sys/kernel/tracing failed%s",
			       devpath, geteuid() ? " (not root)" : "");
	char p[512];
	for (int k = 0; k < WT_NEV; k++) {
		snprintf(p, sizeof p, "%.400s/events/block/%s/filter", dir, wt_events[k]);
		if (access(p, F_OK) < 0)
			return cbi_err(err, -ENOTSUP,
				       "'%s': the kernel has no block tracepoint %s (in '%.400s')", devpath,
				       wt_events[k], dir);
	}
	snprintf(p, sizeof p, "%.400s/instances", dir);
	if (access(p, W_OK) < 0)
		return cbi_err(err, -ENOTSUP, "'%s': no permission to make a tracing instance in '%s'%s",
			       devpath, p, geteuid() ? " (not root)" : "");
	return 0;
}

int cbi_wtrace_usable(const char *devpath, cbi_error *err)
{
	wt_dev d;
	int rc = wt_dev_info(devpath, &d, err);
	return rc ? rc : wt_tracefs(devpath, err);
}

/* Remove the instances that dead processes left (see the top of the file). */
static void wt_remove_stale(void)
{
	/* not tracefs_instances(): libtracefs 1.6 leaks its regex */
	const char *dir = tracefs_tracing_dir();
	char p[512];
	snprintf(p, sizeof p, "%.400s/instances", dir ? dir : "");
	DIR *dp = dir ? opendir(p) : NULL;
	struct dirent *de;
	while (dp && (de = readdir(dp))) {
		long pid = 0;
		unsigned seq;
		int end = 0;
		if (sscanf(de->d_name, WT_PREFIX "%ld-%u%n", &pid, &seq, &end) != 2 || de->d_name[end] ||
		    pid <= 0 || pid == (long)getpid() || !(kill((pid_t)pid, 0) < 0 && errno == ESRCH))
			continue;
		struct tracefs_instance *in = tracefs_instance_alloc(NULL, de->d_name);
		if (in) {
			(void)tracefs_instance_destroy(in); /* EBUSY when still in use */
			tracefs_instance_free(in);
		}
	}
	if (dp)
		closedir(dp);
}

/* ------------------------------------------------------------- ranges */

static int wt_cmp(const void *a, const void *b)
{
	const wt_range *x = a, *y = b;
	return x->s < y->s ? -1 : x->s > y->s;
}

/* Sort and merge t->r (overlapping or adjacent ranges become one). */
static void wt_merge(cbi_wtrace *t)
{
	if (t->n == t->n_merged)
		return;
	qsort(t->r, t->n, sizeof *t->r, wt_cmp);
	size_t o = 0;
	for (size_t i = 0; i < t->n; i++) {
		if (o && t->r[i].s <= t->r[o - 1].e) {
			if (t->r[i].e > t->r[o - 1].e)
				t->r[o - 1].e = t->r[i].e;
		} else {
			t->r[o++] = t->r[i];
		}
	}
	t->n = t->n_merged = o;
}

/* Record that sectors [s, s + nr) of the whole disk were written. */
static void wt_add(cbi_wtrace *t, uint64_t s, uint64_t nr)
{
	uint64_t e = s > UINT64_MAX - nr ? UINT64_MAX : s + nr;
	uint64_t ps = t->d.start, pe = t->d.start + t->d.len;
	if (e <= ps || s >= pe)
		return; /* another partition of the disk */
	s = (s < ps ? ps : s) - ps;
	e = (e > pe ? pe : e) - ps;
	if (t->n && t->r[t->n - 1].s <= s && s <= t->r[t->n - 1].e) {
		/* a sequential writer extends its last range */
		if (e > t->r[t->n - 1].e)
			t->r[t->n - 1].e = e; /* still sorted and disjoint: it was the last */
		return;
	}
	if (t->n == t->cap) {
		wt_merge(t);
		if (!t->cap || t->n * 2 > t->cap) {
			size_t nc = t->cap ? t->cap * 2 : 1024;
			wt_range *nr2 = nc < SIZE_MAX / sizeof *nr2 ? realloc(t->r, nc * sizeof *nr2) : NULL;
			if (!nr2) {
				t->oom = 1;
				return;
			}
			t->r = nr2;
			t->cap = nc;
		}
	}
	t->r[t->n++] = (wt_range){ s, e };
}

/* ------------------------------------------------------------- draining */

static int wt_on_event(struct tep_event *ev, struct tep_record *rec, int cpu, void *ctx)
{
	cbi_wtrace *t = ctx;
	(void)cpu;
	if (rec->missed_events)
		t->lost = 1;
	int k = 0;
	while (k < WT_NEV && ev->id != t->id[k])
		k++;
	if (k == WT_NEV)
		return 0;
	t->n_events++;
	unsigned long long dev, sec, nr;
	struct tep_format_field *fr = t->f_rwbs[k];
	if (tep_read_number_field(t->f_dev[k], rec->data, &dev) ||
	    tep_read_number_field(t->f_sector[k], rec->data, &sec) ||
	    tep_read_number_field(t->f_nr[k], rec->data, &nr) || fr->offset < 0 || fr->size <= 0 ||
	    fr->offset + fr->size > rec->size) {
		t->lost = 1; /* an event we cannot read */
		return 0;
	}
	if (dev != t->d.kdev)
		return 0;
	const char *rwbs = (const char *)rec->data + fr->offset;
	if (fr->size > 0 && rwbs[0] == 'R')
		return 0; /* a read (see the top: 'R' is only ever first) */
	if (nr)
		wt_add(t, sec, nr);
	return 0;
}

/* Check every CPU's loss counters; sets t->lost when any is not zero or
 * cannot be read. */
static void wt_check_stats(cbi_wtrace *t)
{
	char *dir = tracefs_instance_get_file(t->inst, "per_cpu");
	DIR *dp = dir ? opendir(dir) : NULL;
	int ncpu = 0;
	struct dirent *de;
	while (dp && (de = readdir(dp))) {
		if (strncmp(de->d_name, "cpu", 3) != 0)
			continue;
		char f[64];
		snprintf(f, sizeof f, "per_cpu/%.32s/stats", de->d_name);
		char *s = tracefs_instance_file_read(t->inst, f, NULL);
		int seen = 0;
		for (char *l = s; l && *l;) {
			char *nl = strchr(l, '\n');
			if (nl)
				*nl = 0;
			static const char *const keys[] = { "overrun: ", "commit overrun: ",
							    "dropped events: " };
			for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
				size_t kl = strlen(keys[i]);
				if (strncmp(l, keys[i], kl) == 0) {
					seen |= 1 << i;
					if (strtoull(l + kl, NULL, 10) != 0)
						t->lost = 1;
				}
			}
			l = nl ? nl + 1 : l + strlen(l);
		}
		free(s);
		if (seen != 7)
			t->lost = 1; /* unreadable, or a format we do not know */
		ncpu++;
	}
	if (dp)
		closedir(dp);
	tracefs_put_tracing_file(dir);
	if (!ncpu)
		t->lost = 1;
}

/* Read every event recorded so far into t->r. Caller holds t->mu. */
static int wt_drain(cbi_wtrace *t)
{
	if (tracefs_iterate_raw_events(t->tep, t->inst, NULL, 0, wt_on_event, t) < 0)
		return -EIO;
	wt_check_stats(t);
	return 0;
}

static void *wt_thread(void *arg)
{
	cbi_wtrace *t = arg;
	pthread_mutex_lock(&t->mu);
	while (!t->thr_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += WT_DRAIN_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&t->cv, &t->mu, &ts);
		if (!t->thr_stop && wt_drain(t) < 0)
			t->lost = 1;
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

/* ------------------------------------------------------------- start/stop */

/* Turn one block event of our instance on or off, and read the switch back.
 * Not tracefs_event_enable(): it matches the system and event names as
 * regular expressions over every event directory of the kernel (some 300
 * stat calls, milliseconds on each run's start and end). */
static int wt_enable(cbi_wtrace *t, const char *ev, int on)
{
	if (tracefs_event_file_write(t->inst, "block", ev, "enable", on ? "1" : "0") < 0)
		return -1;
	int sz = 0;
	char *back = tracefs_event_file_read(t->inst, "block", ev, "enable", &sz);
	int ok = back && sz > 0 && back[0] == (on ? '1' : '0');
	free(back);
	return ok ? 0 : -1;
}

void cbi_wtrace_stop(cbi_wtrace *t)
{
	if (!t)
		return;
	if (t->thr_started) {
		pthread_mutex_lock(&t->mu);
		t->thr_stop = 1;
		pthread_cond_signal(&t->cv);
		pthread_mutex_unlock(&t->mu);
		pthread_join(t->thr, NULL);
	}
	if (t->inst) {
		for (int k = 0; k < WT_NEV; k++)
			(void)wt_enable(t, wt_events[k], 0);
		if (t->hold_fd >= 0)
			close(t->hold_fd);
		t->hold_fd = -1;
		(void)tracefs_instance_destroy(t->inst);
		tracefs_instance_free(t->inst);
	}
	if (t->hold_fd >= 0)
		close(t->hold_fd);
	if (t->tep)
		tep_free(t->tep);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t->r);
	free(t);
}

/* A parser of the ring buffer's pages and of our events only. Not
 * tracefs_local_events_system(): it also loads /proc/kallsyms (megabytes,
 * in a buffer grown by realloc: seconds, a minute under ASan), which no
 * block event needs. NULL when a format cannot be read or parsed. */
static struct tep_handle *wt_tep(void)
{
	struct tep_handle *tep = tep_alloc();
	int sz = 0;
	char *buf = tep ? tracefs_instance_file_read(NULL, "events/header_page", &sz) : NULL;
	int ok = buf && tep_parse_header_page(tep, buf, (unsigned long)sz, (int)sizeof(long)) == 0;
	free(buf);
	for (int k = 0; ok && k < WT_NEV; k++) {
		buf = tracefs_event_file_read(NULL, "block", wt_events[k], "format", &sz);
		ok = buf && tep_parse_event(tep, buf, (unsigned long)sz, "block") == TEP_ERRNO__SUCCESS;
		free(buf);
	}
	if (ok) {
		tep_set_long_size(tep, (int)sizeof(long));
		tep_set_page_size(tep, (int)sysconf(_SC_PAGESIZE));
		return tep;
	}
	if (tep)
		tep_free(tep);
	return NULL;
}

/* The kernel filter of one event; a simpler one (the device only) when the
 * kernel does not take it. */
static int wt_filter(cbi_wtrace *t, const char *ev)
{
	char f[128];
	snprintf(f, sizeof f, "dev == %" PRIu32 " && !(rwbs ~ \"R*\")", t->d.kdev);
	if (tracefs_event_file_write(t->inst, "block", ev, "filter", f) >= 0)
		return 0;
	snprintf(f, sizeof f, "dev == %" PRIu32, t->d.kdev);
	return tracefs_event_file_write(t->inst, "block", ev, "filter", f) >= 0 ? 0 : -1;
}

int cbi_wtrace_start(const char *devpath, uint32_t buf_kib, cbi_wtrace **out, cbi_error *err)
{
	*out = NULL;
	cbi_wtrace *t = calloc(1, sizeof *t);
	if (!t)
		return cbi_err(err, -ENOMEM, "'%s': out of memory", devpath);
	t->hold_fd = -1;
	pthread_mutex_init(&t->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cv, &ca);
	pthread_condattr_destroy(&ca);
	int rc = wt_dev_info(devpath, &t->d, err);
	if (!rc)
		rc = wt_tracefs(devpath, err);
	if (rc)
		goto fail;
	wt_remove_stale();

	char name[64];
	snprintf(name, sizeof name, WT_PREFIX "%ld-%u", (long)getpid(),
		 __atomic_fetch_add(&wt_seq, 1, __ATOMIC_RELAXED));
	t->inst = tracefs_instance_create(name);
	if (!t->inst || !tracefs_instance_is_new(t->inst)) {
		rc = cbi_err(err, -EEXIST, "'%s': cannot make the tracing instance '%s'", devpath, name);
		if (t->inst)
			tracefs_instance_free(t->inst); /* someone else's: not ours to destroy */
		t->inst = NULL;
		goto fail;
	}
	t->hold_fd = tracefs_instance_file_open(t->inst, "tracing_on", O_RDONLY | O_CLOEXEC);
	if (t->hold_fd < 0 || tracefs_option_disable(t->inst, TRACEFS_OPTION_OVERWRITE) < 0 ||
	    tracefs_instance_set_buffer_size(t->inst, buf_kib ? buf_kib : WT_DEFAULT_KIB, -1) < 0) {
		rc = cbi_err(err, -EIO, "'%s': cannot set up the tracing instance '%s'", devpath, name);
		goto fail;
	}
	t->tep = wt_tep();
	for (int k = 0; k < WT_NEV; k++) {
		struct tep_event *ev = t->tep ? tep_find_event_by_name(t->tep, "block", wt_events[k]) : NULL;
		if (ev) {
			t->id[k] = ev->id;
			t->f_dev[k] = tep_find_field(ev, "dev");
			t->f_sector[k] = tep_find_field(ev, "sector");
			t->f_nr[k] = tep_find_field(ev, "nr_sector");
			t->f_rwbs[k] = tep_find_field(ev, "rwbs");
		}
		if (!ev || !t->f_dev[k] || !t->f_sector[k] || !t->f_nr[k] || !t->f_rwbs[k]) {
			rc = cbi_err(err, -ENOTSUP,
				     "'%s': the tracepoint block/%s has not the fields dev, sector, "
				     "nr_sector and rwbs",
				     devpath, wt_events[k]);
			goto fail;
		}
		if (wt_filter(t, wt_events[k]) < 0) {
			rc = cbi_err(err, -EIO, "'%s': cannot set the filter of block/%s", devpath,
				     wt_events[k]);
			goto fail;
		}
	}
	if (tracefs_trace_on(t->inst) < 0) {
		rc = cbi_err(err, -EIO, "'%s': cannot turn tracing on in '%s'", devpath, name);
		goto fail;
	}
	for (int k = WT_NEV - 1; k >= 0; k--) {
		if (wt_enable(t, wt_events[k], 1) < 0) {
			rc = cbi_err(err, -EIO, "'%s': cannot enable the tracepoint block/%s", devpath,
				     wt_events[k]);
			goto fail;
		}
	}
	/* The reader takes no signal: the caller's handlers (thaw, cleanup)
	 * run in the caller's threads. */
	rc = -cbi_thread_start_quiet(&t->thr, wt_thread, t);
	if (rc) {
		rc = cbi_err(err, rc, "'%s': cannot start the trace reader: %s", devpath, strerror(-rc));
		goto fail;
	}
	t->thr_started = 1;
	*out = t;
	return 0;
fail:
	cbi_wtrace_stop(t);
	return rc;
}

/* ------------------------------------------------------------- collect */

int cbi_wtrace_collect(cbi_wtrace *t, uint32_t bs, uint64_t n_blocks, uint8_t *touched, uint64_t *n_marked,
		       int *complete, cbi_error *err)
{
	*n_marked = 0;
	*complete = 0;
	if (!bs || bs % WT_SECTOR)
		return cbi_err(err, -EINVAL, "write trace: block size %" PRIu32 " is not a multiple of 512",
			       bs);
	pthread_mutex_lock(&t->mu);
	int rc = wt_drain(t);
	if (rc) {
		pthread_mutex_unlock(&t->mu);
		return cbi_err(err, rc, "write trace: cannot read the trace buffers of '%s'",
			       tracefs_instance_get_name(t->inst));
	}
	if (t->oom) {
		pthread_mutex_unlock(&t->mu);
		return cbi_err(err, -ENOMEM, "write trace: out of memory for the written ranges");
	}
	wt_merge(t);
	uint64_t marked = 0;
	for (size_t i = 0; i < t->n; i++) {
		uint64_t b = t->r[i].s * WT_SECTOR / bs, be = (t->r[i].e * WT_SECTOR + bs - 1) / bs;
		if (be > n_blocks)
			be = n_blocks;
		for (; b < be; b++) {
			uint8_t m = (uint8_t)(1u << (b % 8));
			if (!(touched[b / 8] & m)) {
				touched[b / 8] |= m;
				marked++;
			}
		}
	}
	*n_marked = marked;
	*complete = !t->lost;
	pthread_mutex_unlock(&t->mu);
	return 0;
}
