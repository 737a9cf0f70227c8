// SPDX-License-Identifier: MIT
/*
 * upager-trace: per-process histograms of the time threads spend waiting in
 * userfaultfd faults, measured in the kernel (see upager-trace.bpf.c).
 *
 * The loader is deliberately passive: the BPF side aggregates everything in
 * maps, and this program only loads it, waits (for --duration, for SIGINT or
 * SIGTERM, or for the --pid process to exit) and then reads the maps once.
 * Nothing crosses to user space per fault.
 *
 * Two methods (see upager-trace.bpf.c): fentry/fexit on handle_userfault(),
 * exact and cheap, and a fallback built on the page-fault and sched_switch
 * tracepoints for kernels that refuse fentry programs. --method auto tries
 * fentry first and falls back only when the kernel says it cannot (EPERM,
 * ENOTSUPP, ...), never on a bug of ours such as a verifier rejection.
 *
 * Exit status: 0 success, 1 runtime error, 2 bad usage, 3 tracing is not
 * possible here (not root, no BTF, no BPF, neither method loads). Tests
 * treat 3 as "skip".
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "upager-trace.h"
#include "upager-trace.skel.h"

#define EXIT_USAGE 2
#define EXIT_UNSUPPORTED 3

#define VMLINUX_BTF "/sys/kernel/btf/vmlinux"

static const char *const kind_names[UPAGER_TRACE_NR_KINDS] = {
	[UPAGER_TRACE_MISSING] = "missing",
	[UPAGER_TRACE_WP] = "wp",
	[UPAGER_TRACE_MINOR] = "minor",
	[UPAGER_TRACE_UNKNOWN] = "unknown",
};

enum method {
	METHOD_AUTO,
	METHOD_FENTRY,
	METHOD_SCHED,
};

static const char *const method_names[] = {
	[METHOD_AUTO] = "auto",
	[METHOD_FENTRY] = "fentry",
	[METHOD_SCHED] = "sched",
};

struct options {
	pid_t pid;	 /* 0: every process */
	double duration; /* seconds; 0: until a signal */
	enum method method;
	bool json;
	bool verbose;
};

/* One traced process: its histograms by kind and their sum. */
struct proc_stats {
	__u32 tgid;
	char comm[UPAGER_TRACE_COMM_LEN];
	struct upager_trace_hist kinds[UPAGER_TRACE_NR_KINDS];
	struct upager_trace_hist all;
};

struct report {
	enum method method;
	struct proc_stats *procs;
	size_t nr_procs;
	struct upager_trace_hist total;
	double elapsed;
	__u64 dropped;
	__u64 unknown_reason;
	__u64 ends_from_wakeup; /* sched method: switch-in not seen */
};

static bool verbose;
/* Set while probing fentry in auto mode: its failure is expected, not news. */
static bool quiet_libbpf;

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
	va_list ap;

	fputs("upager-trace: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt,
			va_list ap)
{
	/* Warnings explain load failures; debug output is for -v only. */
	if (!verbose && (level == LIBBPF_DEBUG || quiet_libbpf))
		return 0;
	return vfprintf(stderr, fmt, ap);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: upager-trace [--pid PID] [--duration SECONDS] [--json]\n"
		"                    [--method auto|fentry|sched] [--verbose]\n"
		"\n"
		"Measure, in the kernel, how long threads wait in userfaultfd faults\n"
		"(entry to return of handle_userfault), per process and by fault kind\n"
		"(missing, wp, minor), as log2 histograms of nanoseconds.\n"
		"\n"
		"  -p, --pid PID          trace only this process (thread-group id); tracing\n"
		"                         also ends when it exits\n"
		"  -d, --duration SECS    trace for SECS seconds (fractions allowed); default:\n"
		"                         until SIGINT (Ctrl-C) or SIGTERM\n"
		"  -j, --json             print the result as one JSON object on stdout\n"
		"  -m, --method M         fentry: fentry/fexit on handle_userfault (exact);\n"
		"                         sched: page-fault and sched_switch tracepoints, for\n"
		"                         kernels that refuse fentry; auto (default): fentry,\n"
		"                         else sched\n"
		"  -v, --verbose          show libbpf's debug output\n"
		"  -h, --help             show this help\n"
		"\n"
		"Needs root and BTF (" VMLINUX_BTF ").\n"
		"Exit status: 0 success, 1 error, 2 bad usage, 3 tracing unsupported here.\n");
}

static int parse_pid(const char *s, pid_t *pid)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v <= 0 || v > INT_MAX)
		return -EINVAL;
	*pid = (pid_t)v;
	return 0;
}

static int parse_duration(const char *s, double *secs)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	/* Cap at a year: the timerfd arithmetic need not go further. */
	if (errno || end == s || *end || !isfinite(v) || v <= 0 ||
	    v > 365.0 * 24 * 3600)
		return -EINVAL;
	*secs = v;
	return 0;
}

/* Returns 0, or the exit status to leave with. */
static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "pid", required_argument, NULL, 'p' },
		{ "duration", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "method", required_argument, NULL, 'm' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "p:d:jm:vh", longopts, NULL)) >= 0) {
		switch (c) {
		case 'p':
			if (parse_pid(optarg, &o->pid)) {
				msg("invalid --pid '%s': expected a positive process id",
				    optarg);
				return EXIT_USAGE;
			}
			break;
		case 'd':
			if (parse_duration(optarg, &o->duration)) {
				msg("invalid --duration '%s': expected a positive number of seconds",
				    optarg);
				return EXIT_USAGE;
			}
			break;
		case 'j':
			o->json = true;
			break;
		case 'm':
			if (!strcmp(optarg, "auto")) {
				o->method = METHOD_AUTO;
			} else if (!strcmp(optarg, "fentry")) {
				o->method = METHOD_FENTRY;
			} else if (!strcmp(optarg, "sched")) {
				o->method = METHOD_SCHED;
			} else {
				msg("invalid --method '%s': expected auto, fentry or sched",
				    optarg);
				return EXIT_USAGE;
			}
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		msg("unexpected argument '%s'", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	return 0;
}

/* A pidfd lets the wait loop notice the traced process exiting. */
static int open_pidfd(pid_t pid)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);

	return fd < 0 ? -errno : fd;
}

/*
 * The thread-group id of @pid, or -errno (-ESRCH: no such process). The
 * filter is by tgid, so a thread's id given as --pid would match nothing.
 */
static int pid_tgid(pid_t pid)
{
	char path[64], line[128];
	int tgid = -ESRCH;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? -ESRCH : -errno;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Tgid: %d", &tgid) == 1)
			break;
	fclose(f);
	return tgid;
}

static int make_timerfd(double secs)
{
	struct itimerspec its = { 0 };
	double frac;
	int fd;

	fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	its.it_value.tv_sec = (time_t)secs;
	frac = secs - (double)its.it_value.tv_sec;
	its.it_value.tv_nsec = (long)(frac * 1e9);
	if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
		its.it_value.tv_nsec = 1;
	if (timerfd_settime(fd, 0, &its, NULL)) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static double now_secs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Wait for the first of: the signal fd, the timer, the traced process's exit.
 * Negative fds are ignored by poll(). Returns 0 or -errno.
 */
static int wait_for_end(int sigfd, int timerfd, int pidfd, pid_t pid)
{
	struct pollfd pfd[3] = {
		{ .fd = sigfd, .events = POLLIN },
		{ .fd = timerfd, .events = POLLIN },
		{ .fd = pidfd, .events = POLLIN },
	};

	for (;;) {
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (pfd[2].revents && verbose)
			msg("pid %d exited", (int)pid);
		if (pfd[0].revents || pfd[1].revents || pfd[2].revents)
			return 0;
	}
}

static void hist_add(struct upager_trace_hist *dst,
		     const struct upager_trace_hist *src)
{
	int i;

	dst->count += src->count;
	dst->sum_ns += src->sum_ns;
	if (src->max_ns > dst->max_ns)
		dst->max_ns = src->max_ns;
	for (i = 0; i < UPAGER_TRACE_SLOTS; i++)
		dst->slots[i] += src->slots[i];
}

/* Slot k holds [2^k, 2^(k+1) - 1]; slot 0 also holds 0. */
static __u64 slot_lower(int slot)
{
	return slot ? 1ULL << slot : 0;
}

static __u64 slot_upper(int slot)
{
	return slot == 63 ? UINT64_MAX : (1ULL << (slot + 1)) - 1;
}

/*
 * The q-quantile, interpolated linearly inside the log2 bucket that holds it:
 * exact to the bucket (a factor of two), and never above the observed max.
 */
static __u64 hist_quantile(const struct upager_trace_hist *h, double q)
{
	double target = q * (double)h->count, cum = 0;
	int i;

	if (!h->count)
		return 0;
	for (i = 0; i < UPAGER_TRACE_SLOTS; i++) {
		double c = (double)h->slots[i], lo, width, v;

		if (!h->slots[i])
			continue;
		if (cum + c >= target) {
			lo = (double)slot_lower(i);
			width = (double)slot_upper(i) - lo + 1;
			v = lo + width * (target - cum) / c;
			if (v > (double)h->max_ns)
				return h->max_ns;
			return (__u64)v;
		}
		cum += c;
	}
	return h->max_ns;
}

static struct proc_stats *report_proc(struct report *r, __u32 tgid)
{
	struct proc_stats *p;
	size_t i;

	for (i = 0; i < r->nr_procs; i++)
		if (r->procs[i].tgid == tgid)
			return &r->procs[i];
	p = realloc(r->procs, (r->nr_procs + 1) * sizeof(*p));
	if (!p)
		return NULL;
	r->procs = p;
	p = &r->procs[r->nr_procs++];
	memset(p, 0, sizeof(*p));
	p->tgid = tgid;
	return p;
}

static int proc_cmp(const void *a, const void *b)
{
	const struct proc_stats *pa = a, *pb = b;

	if (pa->all.count != pb->all.count)
		return pa->all.count > pb->all.count ? -1 : 1;
	return pa->tgid < pb->tgid ? -1 : pa->tgid > pb->tgid;
}

/* Read the histogram map into @r. Returns 0 or -errno. */
static int report_collect(struct upager_trace *skel, struct report *r)
{
	int fd = bpf_map__fd(skel->maps.hists);
	struct upager_trace_key key, next, *prev = NULL;
	struct upager_trace_hist h;
	struct proc_stats *p;

	while (!bpf_map_get_next_key(fd, prev, &next)) {
		key = next;
		prev = &key;
		if (bpf_map_lookup_elem(fd, &key, &h)) {
			/* Deleted under us: cannot happen, nobody deletes. */
			if (errno == ENOENT)
				continue;
			return -errno;
		}
		if (key.kind >= UPAGER_TRACE_NR_KINDS)
			continue;
		p = report_proc(r, key.tgid);
		if (!p)
			return -ENOMEM;
		if (!p->comm[0] || key.kind == UPAGER_TRACE_MISSING)
			memcpy(p->comm, h.comm, sizeof(p->comm));
		p->comm[sizeof(p->comm) - 1] = '\0';
		hist_add(&p->kinds[key.kind], &h);
		hist_add(&p->all, &h);
		hist_add(&r->total, &h);
	}
	if (errno != ENOENT)
		return -errno;

	if (r->nr_procs > 1)
		qsort(r->procs, r->nr_procs, sizeof(*r->procs), proc_cmp);
	r->dropped = skel->bss->dropped_waiters + skel->bss->dropped_hists;
	r->ends_from_wakeup = skel->bss->ends_from_wakeup;
	if (verbose && r->method == METHOD_SCHED)
		msg("sched method: %" PRIu64 " stack scans, %" PRIu64
		    " found a uffd wait; %" PRIu64
		    " waits ended at their wake-up",
		    (uint64_t)skel->bss->stack_scans,
		    (uint64_t)skel->bss->stack_scan_hits,
		    (uint64_t)skel->bss->ends_from_wakeup);
	r->unknown_reason = skel->bss->unknown_reason;
	return 0;
}

/* ---- readable output ---- */

static void print_stars(__u64 val, __u64 max, int width)
{
	int n = max ? (int)((double)val * width / (double)max) : 0;
	int i;

	/* A non-empty bucket always gets at least one star. */
	if (val && !n)
		n = 1;
	for (i = 0; i < width; i++)
		putchar(i < n ? '*' : ' ');
}

/* In the style of bcc's print_log2_hist, trimmed to the non-empty range. */
static void print_log2_hist(const struct upager_trace_hist *h)
{
	int first = -1, last = -1, i, w;
	__u64 max = 0;
	char buf[32];

	for (i = 0; i < UPAGER_TRACE_SLOTS; i++) {
		if (!h->slots[i])
			continue;
		if (first < 0)
			first = i;
		last = i;
		if (h->slots[i] > max)
			max = h->slots[i];
	}
	if (first < 0)
		return;
	w = snprintf(buf, sizeof(buf), "%" PRIu64, (uint64_t)slot_upper(last));
	if (w < 5)
		w = 5;
	printf("%*s%-*s : count     distribution\n", w + 1, "nsecs", w + 4, "");
	for (i = first; i <= last; i++) {
		printf("%*" PRIu64 " -> %-*" PRIu64 " : %-9" PRIu64 " |", w + 1,
		       (uint64_t)slot_lower(i), w, (uint64_t)slot_upper(i),
		       (uint64_t)h->slots[i]);
		print_stars(h->slots[i], max, 40);
		puts("|");
	}
}

static double us(__u64 ns)
{
	return (double)ns / 1000.0;
}

static void print_row(const char *pid, const char *comm,
		      const struct upager_trace_hist *kinds,
		      const struct upager_trace_hist *all)
{
	printf("%-8s %-16s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64
	       " %10.1f %10.1f %10.1f %10.1f\n",
	       pid, comm, (uint64_t)kinds[UPAGER_TRACE_MISSING].count,
	       (uint64_t)kinds[UPAGER_TRACE_WP].count,
	       (uint64_t)kinds[UPAGER_TRACE_MINOR].count, (uint64_t)all->count,
	       all->count ? us(all->sum_ns) / (double)all->count : 0.0,
	       us(hist_quantile(all, 0.50)), us(hist_quantile(all, 0.99)),
	       us(all->max_ns));
}

static void report_print_text(const struct report *r)
{
	struct upager_trace_hist total_kinds[UPAGER_TRACE_NR_KINDS];
	char pid[16];
	size_t i;
	int k;

	printf("\nTraced %.1f s (%s method): %" PRIu64
	       " userfaultfd waits in %zu process%s.\n",
	       r->elapsed, method_names[r->method], (uint64_t)r->total.count,
	       r->nr_procs, r->nr_procs == 1 ? "" : "es");
	if (!r->nr_procs)
		goto warnings;

	printf("\n%-8s %-16s %9s %9s %9s %9s %10s %10s %10s %10s\n", "PID",
	       "COMM", "MISSING", "WP", "MINOR", "TOTAL", "AVG(us)", "P50(us)",
	       "P99(us)", "MAX(us)");
	memset(total_kinds, 0, sizeof(total_kinds));
	for (i = 0; i < r->nr_procs; i++) {
		const struct proc_stats *p = &r->procs[i];

		snprintf(pid, sizeof(pid), "%u", p->tgid);
		print_row(pid, p->comm, p->kinds, &p->all);
		for (k = 0; k < UPAGER_TRACE_NR_KINDS; k++)
			hist_add(&total_kinds[k], &p->kinds[k]);
	}
	if (r->nr_procs > 1)
		print_row("ALL", "-", total_kinds, &r->total);

	/* One histogram per kind: missing and wp waits differ in origin. */
	for (i = 0; i < r->nr_procs; i++) {
		const struct proc_stats *p = &r->procs[i];

		for (k = 0; k < UPAGER_TRACE_NR_KINDS; k++) {
			if (!p->kinds[k].count)
				continue;
			printf("\npid %u [%s] %s faults: %" PRIu64
			       ", wait p50 %.1f us, p99 %.1f us\n",
			       p->tgid, p->comm, kind_names[k],
			       (uint64_t)p->kinds[k].count,
			       us(hist_quantile(&p->kinds[k], 0.50)),
			       us(hist_quantile(&p->kinds[k], 0.99)));
			print_log2_hist(&p->kinds[k]);
		}
	}

warnings:
	if (r->dropped)
		printf("\nwarning: %" PRIu64
		       " waits not recorded (BPF maps full)\n",
		       (uint64_t)r->dropped);
	if (r->ends_from_wakeup)
		printf("\nnote: %" PRIu64 " waits ended at their wake-up: their "
		       "switch-in was not visible to the tracer\n",
		       (uint64_t)r->ends_from_wakeup);
	if (r->unknown_reason)
		printf("\nwarning: unknown handle_userfault reason 0x%" PRIx64
		       ": VM_UFFD_* bits differ on this kernel\n",
		       (uint64_t)r->unknown_reason);
}

/* ---- JSON output ---- */

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			/* comm is bytes, not UTF-8: escape anything odd. */
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_counts(const struct upager_trace_hist *kinds)
{
	int k;

	putchar('{');
	for (k = 0; k < UPAGER_TRACE_NR_KINDS; k++)
		printf("%s\"%s\": %" PRIu64, k ? ", " : "", kind_names[k],
		       (uint64_t)kinds[k].count);
	putchar('}');
}

/* Fields shared by a process, a kind and the totals; ends without a comma. */
static void json_hist(const struct upager_trace_hist *h)
{
	bool first = true;
	int i;

	printf("\"total\": %" PRIu64 ", \"sum_ns\": %" PRIu64
	       ", \"avg_ns\": %" PRIu64 ", \"max_ns\": %" PRIu64
	       ", \"p50_ns\": %" PRIu64 ", \"p99_ns\": %" PRIu64
	       ", \"histogram\": [",
	       (uint64_t)h->count, (uint64_t)h->sum_ns,
	       (uint64_t)(h->count ? h->sum_ns / h->count : 0),
	       (uint64_t)h->max_ns, (uint64_t)hist_quantile(h, 0.50),
	       (uint64_t)hist_quantile(h, 0.99));
	for (i = 0; i < UPAGER_TRACE_SLOTS; i++) {
		if (!h->slots[i])
			continue;
		printf("%s{\"lower_ns\": %" PRIu64 ", \"upper_ns\": %" PRIu64
		       ", \"count\": %" PRIu64 "}",
		       first ? "" : ", ", (uint64_t)slot_lower(i),
		       (uint64_t)slot_upper(i), (uint64_t)h->slots[i]);
		first = false;
	}
	putchar(']');
}

static void json_kinds(const struct upager_trace_hist *kinds)
{
	bool first = true;
	int k;

	printf("\"kinds\": {");
	for (k = 0; k < UPAGER_TRACE_NR_KINDS; k++) {
		if (!kinds[k].count)
			continue;
		printf("%s\"%s\": {", first ? "" : ", ", kind_names[k]);
		json_hist(&kinds[k]);
		putchar('}');
		first = false;
	}
	putchar('}');
}

static void report_print_json(const struct report *r, const struct options *o)
{
	struct upager_trace_hist total_kinds[UPAGER_TRACE_NR_KINDS];
	size_t i;
	int k;

	memset(total_kinds, 0, sizeof(total_kinds));
	printf("{\"method\": \"%s\", \"duration_s\": %.3f, \"pid_filter\": ",
	       method_names[r->method], r->elapsed);
	if (o->pid)
		printf("%d", (int)o->pid);
	else
		printf("null");
	printf(",\n \"processes\": [");
	for (i = 0; i < r->nr_procs; i++) {
		const struct proc_stats *p = &r->procs[i];

		printf("%s\n  {\"pid\": %u, \"comm\": ", i ? "," : "", p->tgid);
		json_string(p->comm);
		printf(", \"counts\": ");
		json_counts(p->kinds);
		printf(", ");
		json_hist(&p->all);
		printf(", ");
		json_kinds(p->kinds);
		putchar('}');
		for (k = 0; k < UPAGER_TRACE_NR_KINDS; k++)
			hist_add(&total_kinds[k], &p->kinds[k]);
	}
	printf("],\n \"totals\": {\"processes\": %zu, \"counts\": ",
	       r->nr_procs);
	json_counts(total_kinds);
	printf(", ");
	json_hist(&r->total);
	printf(", ");
	json_kinds(total_kinds);
	printf(", \"dropped\": %" PRIu64 ", \"unknown_reason\": %" PRIu64
	       ", \"ends_from_wakeup\": %" PRIu64 "}}\n",
	       (uint64_t)r->dropped, (uint64_t)r->unknown_reason,
	       (uint64_t)r->ends_from_wakeup);
}

/* ---- setup ---- */

static bool errno_unsupported(int err)
{
	/* 524 is the kernel's ENOTSUPP, which leaks out of bpf(2). */
	/* Not EACCES or EINVAL: those are the verifier rejecting our code. */
	return err == EPERM || err == ENOSYS || err == EOPNOTSUPP ||
	       err == 524 || err == ESRCH || err == ENOENT;
}

/* Is @name a kernel symbol? The sched method needs the address of one. */
static bool kallsyms_has(const char *name)
{
	char line[256], sym[128];
	bool found = false;
	FILE *f;

	f = fopen("/proc/kallsyms", "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "%*s %*s %127s", sym) == 1 &&
			!strcmp(sym, name);
	fclose(f);
	return found;
}

/* Each method is a set of programs; load only the chosen one's. */
static void skel_select(struct upager_trace *skel, enum method m)
{
	bool fentry = m == METHOD_FENTRY;

	bpf_program__set_autoload(skel->progs.uffd_enter, fentry);
	bpf_program__set_autoload(skel->progs.uffd_exit, fentry);
	bpf_program__set_autoload(skel->progs.fault_user, !fentry);
	bpf_program__set_autoload(skel->progs.fault_kernel, !fentry);
	bpf_program__set_autoload(skel->progs.sched_switch, !fentry);
	bpf_program__set_autoload(skel->progs.sched_waking, !fentry);
	/* The other method's maps still get created: keep them small. */
	bpf_map__set_max_entries(skel->maps.waiters,
				 fentry ? UPAGER_TRACE_MAX_WAITERS : 1);
}

/*
 * Open, load and attach method @m's programs. Returns the skeleton, or NULL
 * with *err = -errno and *stage the step that failed.
 */
static struct upager_trace *trace_start(enum method m, pid_t pid, int *err,
					const char **stage)
{
	struct upager_trace *skel;

	if (m == METHOD_SCHED && !kallsyms_has("userfaultfd_wake_function")) {
		*err = -ENOENT;
		*stage = "looking up userfaultfd_wake_function in /proc/kallsyms";
		return NULL;
	}
	*stage = "opening the BPF object";
	skel = upager_trace__open();
	if (!skel) {
		*err = -errno;
		return NULL;
	}
	skel->rodata->targ_tgid = (__u32)pid;
	skel_select(skel, m);
	*stage = "loading BPF programs";
	*err = upager_trace__load(skel);
	if (!*err) {
		*stage = "attaching BPF programs";
		*err = upager_trace__attach(skel);
	}
	if (*err) {
		upager_trace__destroy(skel);
		return NULL;
	}
	return skel;
}

int main(int argc, char **argv)
{
	struct options o = { 0 };
	struct upager_trace *skel = NULL;
	struct report r = { 0 };
	int sigfd = -1, timerfd = -1, pidfd = -1;
	int ret = 1, err = 0, fentry_err = 0;
	const char *stage = "", *fentry_stage = "";
	double start;
	sigset_t mask;

	err = parse_args(argc, argv, &o);
	if (err)
		return err;
	verbose = o.verbose;

	if (geteuid() != 0) {
		msg("must run as root (loads BPF programs into the kernel)");
		return EXIT_UNSUPPORTED;
	}
	if (access(VMLINUX_BTF, R_OK)) {
		msg("kernel BTF %s not readable: %s (needs CONFIG_DEBUG_INFO_BTF)",
		    VMLINUX_BTF, strerror(errno));
		return EXIT_UNSUPPORTED;
	}
	if (o.pid) {
		err = pid_tgid(o.pid);
		if (err == -ESRCH) {
			msg("no process with pid %d", (int)o.pid);
			return EXIT_USAGE;
		}
		if (err > 0 && err != o.pid) {
			msg("%d is a thread of process %d; pass the process id",
			    (int)o.pid, err);
			return EXIT_USAGE;
		}
		pidfd = open_pidfd(o.pid);
		/* No pidfds (old kernel): trace on, without exit detection. */
		if (pidfd < 0)
			pidfd = -1;
	}

	libbpf_set_print(libbpf_print);

	if (o.method != METHOD_SCHED) {
		quiet_libbpf = o.method == METHOD_AUTO;
		skel = trace_start(METHOD_FENTRY, o.pid, &err, &stage);
		quiet_libbpf = false;
		r.method = METHOD_FENTRY;
		fentry_err = err;
		fentry_stage = stage;
		if (!skel && o.method == METHOD_AUTO &&
		    errno_unsupported(-err)) {
			if (verbose)
				msg("fentry method: %s: %s; falling back to the sched method",
				    stage, strerror(-err));
			o.method = METHOD_SCHED;
		}
	}
	if (!skel && o.method == METHOD_SCHED) {
		skel = trace_start(METHOD_SCHED, o.pid, &err, &stage);
		r.method = METHOD_SCHED;
	}
	if (!skel) {
		if (fentry_err && r.method == METHOD_SCHED)
			msg("fentry method: %s: %s", fentry_stage,
			    strerror(-fentry_err));
		msg("%s method: %s: %s", method_names[r.method], stage,
		    strerror(-err));
		if (o.method == METHOD_FENTRY && errno_unsupported(-err))
			msg("this kernel refuses fentry programs; --method sched works without them");
		ret = errno_unsupported(-err) ? EXIT_UNSUPPORTED : 1;
		goto out;
	}

	/* Block before announcing readiness, so no early signal is lost. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) ||
	    (sigfd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0) {
		msg("signalfd: %s", strerror(errno));
		goto out;
	}
	if (o.duration > 0) {
		timerfd = make_timerfd(o.duration);
		if (timerfd < 0) {
			msg("timerfd: %s", strerror(-timerfd));
			goto out;
		}
	}

	start = now_secs();
	if (o.pid)
		fprintf(stderr,
			"upager-trace: tracing userfaultfd waits of pid %d",
			(int)o.pid);
	else
		fprintf(stderr,
			"upager-trace: tracing userfaultfd waits of all processes");
	if (o.duration > 0)
		fprintf(stderr, " for %g s", o.duration);
	fprintf(stderr, " (%s method)... Hit Ctrl-C to end.\n",
		method_names[r.method]);

	err = wait_for_end(sigfd, timerfd, pidfd, o.pid);
	if (err) {
		msg("poll: %s", strerror(-err));
		goto out;
	}
	r.elapsed = now_secs() - start;

	/* Stop counting so the report is one consistent snapshot. */
	upager_trace__detach(skel);
	err = report_collect(skel, &r);
	if (err) {
		msg("reading BPF maps: %s", strerror(-err));
		goto out;
	}
	if (o.json)
		report_print_json(&r, &o);
	else
		report_print_text(&r);
	if (fflush(stdout) || ferror(stdout)) {
		msg("writing output: %s", strerror(errno));
		goto out;
	}
	ret = 0;
out:
	free(r.procs);
	upager_trace__destroy(skel);
	if (sigfd >= 0)
		close(sigfd);
	if (timerfd >= 0)
		close(timerfd);
	if (pidfd >= 0)
		close(pidfd);
	return ret;
}
