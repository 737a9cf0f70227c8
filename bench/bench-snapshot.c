// SPDX-License-Identifier: MIT
/*
 * upager-bench: snapshots measured whole (see bench-snapshot.h).
 *
 * snapshot.  A process has SIZE of memory populated and two threads writing
 * a counter into random pages of it, nonstop; something freezes a copy of
 * that memory while they run.  The kernel's way is fork(): the caller waits
 * while the page tables are copied and write-protected, and a writer that
 * touches a page already protected waits for the whole fork (its fault
 * needs the address space's lock, which fork holds).  upagerd's way is
 * upager_snapshot(): the daemon write-protects every attachment and holds a
 * write to a protected page until the cut is recorded.  The figure that
 * matters is the writers' pause: each writer times every store
 * (CLOCK_MONOTONIC on both sides), and the longest store that overlaps the
 * cut (fork() called to fork() returned, upager_snapshot() called to
 * returned) is the pause it saw.  The daemon's own account of the cut
 * (cut_ns, protect_ns, max_hold_ns) is reported beside it.
 *
 * On a 2-vCPU machine two writers and the thread that cuts are three
 * runnable threads on two CPUs: a store can look long because its thread
 * was preempted, not held.  So while the cut is near, the writers read
 * their involuntary context switches (getrusage RUSAGE_THREAD) around every
 * store, and a store during which the thread was preempted is counted
 * apart ("preempted"), not as a pause; a thread held in a fault sleeps, a
 * voluntary switch.  The longest store of all is in the JSON too.
 *
 * Each run is fresh: the memory populated, the writers started, the cut
 * taken, then the fork's child killed or the snapshot deleted and every
 * byte given back before the next run.  fork and upagerd runs alternate.
 *
 * snapmem.  Two figures.  The daemon's metadata per page: its RssAnon and
 * VmPTE (/proc/PID/status) before a segment of SIZE exists, after it is
 * populated, and after a snapshot of it is cut, divided by its pages
 * (RssShmem, the frames the daemon maps, is reported apart: that is the
 * data, not metadata).  And N private readers of one snapshot: N forked
 * processes attach it UPAGER_ATTACH_PRIVATE and read every page; the
 * memory is the snapshot's allocated_bytes plus the readers' private pages
 * (Anonymous of their mapping in /proc/self/smaps), over its size.  The
 * kernel reference is the same N readers of a populated memfd mapped
 * MAP_PRIVATE.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <upager/upager.h>

#include "bench-snapshot.h"
#include "bench-stats.h"
#include "json.h"
#include "size.h"

#define SNAP_MAX_WRITERS 16
#define SNAP_MAX_READERS 64
/* writers run this long before the cut is armed, then armed this long */
#define SNAP_SETTLE_NS 20000000ULL
#define SNAP_ARM_NS 5000000ULL
/* and go on this long after it, so a store held to its end completes */
#define SNAP_TAIL_NS 10000000ULL

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ULL),
			       (long)(ns % 1000000000ULL) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static const char *size_str(uint64_t bytes, char *buf)
{
	/* SIZE_FORMAT_MAX is always enough */
	if (size_format(bytes, buf, SIZE_FORMAT_MAX) < 0)
		strcpy(buf, "?");
	return buf;
}

/* A field of /proc/meminfo or /proc/PID/status, in kB; -1 if absent. */
static long long proc_kb(const char *path, const char *field)
{
	size_t flen = strlen(field);
	long long kb = -1;
	char line[256];
	FILE *f = fopen(path, "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, flen) && line[flen] == ':') {
			kb = strtoll(line + flen + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kb;
}

/* Is there room for @need more bytes, with a margin? */
static bool mem_room(uint64_t need, char *why, size_t len)
{
	long long avail = proc_kb("/proc/meminfo", "MemAvailable");
	char a[SIZE_FORMAT_MAX], n[SIZE_FORMAT_MAX];

	need += need / 8 + (256ULL << 20);
	if (avail < 0 || (uint64_t)avail * 1024 >= need)
		return true;
	bench_fmt(why, len, "not enough memory: %s available, %s needed",
		  size_str((uint64_t)avail * 1024, a), size_str(need, n));
	return false;
}

static void progress(const struct bench_snap_opts *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void progress(const struct bench_snap_opts *o, const char *fmt, ...)
{
	va_list ap;

	if (!o->progress || !isatty(STDERR_FILENO))
		return;
	fputs("\r\033[K", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fflush(stderr);
}

static void progress_end(const struct bench_snap_opts *o)
{
	if (o->progress && isatty(STDERR_FILENO))
		fputs("\r\033[K", stderr);
}

static void report_header(const struct bench_snap_opts *o, const char *wl,
			  bool runs, FILE *f)
{
	struct utsname uts;

	fprintf(f, "%s: ", wl);
	if (runs)
		fprintf(f, "%u run%s (median) after %u warm-up, ", o->runs,
			o->runs == 1 ? "" : "s", o->warmup);
	fprintf(f, "%ld CPUs, Linux %s\n", sysconf(_SC_NPROCESSORS_ONLN),
		uname(&uts) ? "?" : uts.release);
	if (o->daemon && o->env->daemon_desc[0])
		fprintf(f, "upagerd: %s\n", o->env->daemon_desc);
}

static void json_num(FILE *f, const char *name, double v, bool comma)
{
	fprintf(f, "\"%s\": ", name);
	if (v < 0)
		fprintf(f, "null");
	else
		fprintf(f, "%.0f", v);
	if (comma)
		fprintf(f, ", ");
}

static void json_head(const struct bench_snap_opts *o, const char *wl, FILE *f)
{
	struct utsname uts;

	fprintf(f, "{\n  \"tool\": \"upager-bench\", \"format\": 1, "
		   "\"workload\": ");
	json_write_string(f, wl);
	fprintf(f,
		",\n  \"config\": {\"runs\": %u, \"warmup\": %u, "
		"\"writers\": %u, \"readers\": %u, \"reader_size\": %" PRIu64
		", \"cpus\": %ld, \"kernel\": ",
		o->runs, o->warmup, o->writers, o->readers, o->reader_size,
		sysconf(_SC_NPROCESSORS_ONLN));
	json_write_string(f, uname(&uts) ? NULL : uts.release);
	fprintf(f, ", \"daemon\": ");
	if (o->daemon && o->env->daemon_desc[0])
		json_write_string(f, o->env->daemon_desc);
	else
		fprintf(f, "null");
	fprintf(f, ", \"daemon_na\": ");
	if (o->daemon_na)
		json_write_string(f, o->daemon_na);
	else
		fprintf(f, "null");
	fprintf(f, "},\n  \"results\": [\n");
}

static int json_tail(const struct bench_report *rep, FILE *f)
{
	fprintf(f, "\n  ],\n  ");
	bench_report_json_targets(rep, f);
	fprintf(f, "\n}\n");
	return ferror(f) ? -EIO : 0;
}

/* What a workload's JSON writer needs: the workload's own results. */
struct json_out {
	const struct bench_snap_opts *o;
	const struct bench_report *rep;
	const void *rows;
	unsigned int n;
	const void *rows2; /* snapmem: the readers */
	unsigned int n2;
};

/* JSON on stdout (--json) and to --json-out; -errno if the file failed. */
static int json_emit(const struct json_out *j,
		     void (*write)(FILE *f, const struct json_out *j))
{
	FILE *f;
	int r = 0;

	if (j->o->json)
		write(stdout, j);
	if (!j->o->json_out)
		return 0;
	f = fopen(j->o->json_out, "w");
	if (!f) {
		r = -errno;
	} else {
		write(f, j);
		if (ferror(f))
			r = -EIO;
		if (fclose(f) && !r)
			r = -errno;
	}
	if (r < 0)
		fprintf(stderr, "upager-bench: %s: %s\n", j->o->json_out,
			strerror(-r));
	return r;
}

/* ==== snapshot: the writers' pause ==== */

/* Shared by the thread that cuts and the writers. */
struct snap_window {
	_Atomic uint64_t t0; /* the cut's start; 0 before */
	_Atomic uint64_t t1; /* its end; UINT64_MAX before */
	_Atomic int armed;   /* the cut is near: watch for preemption */
	_Atomic int stop;
	_Atomic unsigned int ready;
};

struct snap_writer {
	pthread_t tid;
	struct snap_window *w;
	char *base;
	size_t pages, page_size;
	uint64_t seed;
	/* out */
	uint64_t max_ns;     /* longest store in the cut, not preempted */
	uint64_t max_all_ns; /* longest store in the cut */
	uint64_t stores;     /* in all */
	uint64_t in_cut;     /* stores that overlapped the cut */
	uint64_t preempted;  /* of those, preempted */
};

static void *snap_writer_main(void *arg)
{
	struct snap_writer *wr = arg;
	struct snap_window *w = wr->w;
	struct rusage ru0 = { 0 }, ru1 = { 0 };
	uint64_t counter = 0, a, b, t0, t1;

	atomic_fetch_add(&w->ready, 1);
	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		size_t page = bench_xorshift(&wr->seed) % wr->pages;
		volatile uint64_t *p =
			(volatile uint64_t *)(wr->base + page * wr->page_size +
					      8);
		bool armed = atomic_load(&w->armed);

		if (armed)
			getrusage(RUSAGE_THREAD, &ru0);
		a = bench_now_ns();
		*p = ++counter;
		b = bench_now_ns();
		wr->stores++;
		if (!armed)
			continue;
		getrusage(RUSAGE_THREAD, &ru1);
		t0 = atomic_load(&w->t0);
		t1 = atomic_load(&w->t1);
		if (!t0 || b < t0 || a > t1)
			continue;
		wr->in_cut++;
		if (b - a > wr->max_all_ns)
			wr->max_all_ns = b - a;
		if (ru1.ru_nivcsw != ru0.ru_nivcsw) {
			wr->preempted++;
			continue;
		}
		if (b - a > wr->max_ns)
			wr->max_ns = b - a;
	}
	return NULL;
}

struct snap_fig {
	double call_ns;	    /* fork() or upager_snapshot() in the caller */
	double wait_ns;	    /* the writers' longest store in it */
	double wait_all_ns; /* the same, preempted stores included */
	double in_cut;	    /* stores that overlapped it */
	double preempted;   /* of those, preempted */
	double cut_ns;	    /* upagerd's account: res.cut_ns */
	double protect_ns;
	double hold_ns;
	double held;
	double stores_per_s; /* the writers' rate outside the cut */
};

#define SNAP_FIG_N (sizeof(struct snap_fig) / sizeof(double))

static void snap_fig_none(struct snap_fig *g)
{
	double *d = (double *)g;
	size_t i;

	for (i = 0; i < SNAP_FIG_N; i++)
		d[i] = -1;
}

struct snap_writers {
	struct snap_window *w;
	struct snap_writer wr[SNAP_MAX_WRITERS];
	unsigned int n;
	uint64_t t_start;
};

static int writers_start(struct snap_writers *ws, unsigned int n, char *base,
			 size_t pages, size_t page_size, uint64_t seed)
{
	unsigned int i;
	int r;

	ws->w = mmap(NULL, sizeof(*ws->w), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (ws->w == MAP_FAILED) {
		ws->w = NULL;
		return -errno;
	}
	atomic_store(&ws->w->t1, UINT64_MAX);
	ws->n = 0;
	for (i = 0; i < n; i++) {
		struct snap_writer *wr = &ws->wr[i];

		memset(wr, 0, sizeof(*wr));
		wr->w = ws->w;
		wr->base = base;
		wr->pages = pages;
		wr->page_size = page_size;
		wr->seed = (seed * 2 + 1) * (i + 1) * 0x9E3779B97F4A7C15ULL | 1;
		r = -pthread_create(&wr->tid, NULL, snap_writer_main, wr);
		if (r < 0)
			return r;
		ws->n++;
	}
	while (atomic_load(&ws->w->ready) < ws->n)
		sleep_ns(100000);
	ws->t_start = bench_now_ns();
	/* let them run, then watch them */
	sleep_ns(SNAP_SETTLE_NS);
	atomic_store(&ws->w->armed, 1);
	sleep_ns(SNAP_ARM_NS);
	return 0;
}

/* Stop and join the writers; their figures into @g.  Accepts none. */
static void writers_stop(struct snap_writers *ws, struct snap_fig *g)
{
	uint64_t stores = 0, end;
	unsigned int i;

	if (!ws->w)
		return;
	if (ws->n)
		sleep_ns(SNAP_TAIL_NS);
	atomic_store(&ws->w->stop, 1);
	for (i = 0; i < ws->n; i++)
		pthread_join(ws->wr[i].tid, NULL);
	end = bench_now_ns();
	if (g && ws->n) {
		g->wait_ns = g->wait_all_ns = g->in_cut = g->preempted = 0;
		for (i = 0; i < ws->n; i++) {
			const struct snap_writer *wr = &ws->wr[i];

			if ((double)wr->max_ns > g->wait_ns)
				g->wait_ns = (double)wr->max_ns;
			if ((double)wr->max_all_ns > g->wait_all_ns)
				g->wait_all_ns = (double)wr->max_all_ns;
			g->in_cut += (double)wr->in_cut;
			g->preempted += (double)wr->preempted;
			stores += wr->stores;
		}
		/* no store overlapped the cut: nobody was held */
		if (!g->in_cut)
			g->wait_ns = g->wait_all_ns = 0;
		g->stores_per_s = (double)stores * 1e9 /
				  (double)(end - ws->t_start);
	}
	munmap(ws->w, sizeof(*ws->w));
	ws->w = NULL;
}

static void cut_begin(struct snap_writers *ws)
{
	atomic_store(&ws->w->t0, bench_now_ns());
}

static void cut_end(struct snap_writers *ws)
{
	atomic_store(&ws->w->t1, bench_now_ns());
}

/* The reference: fork() with @len populated and the writers running. */
static int fork_run(const struct bench_snap_opts *o, uint64_t len,
		    struct snap_fig *g, char *err, size_t errlen)
{
	size_t ps = o->env->page_size;
	struct snap_writers ws = { 0 };
	pid_t parent = getpid(), pid = -1;
	uint64_t t0, t1;
	char *p;
	int r;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	if (p == MAP_FAILED) {
		bench_fmt(err, errlen, "mmap: %s", strerror(errno));
		return -errno;
	}
	/* 4 KiB pages, as a segment's: fork copies one entry per page */
	bench_no_huge(p, len);
	bench_populate(p, len, ps);
	r = writers_start(&ws, o->writers, p, len / ps, ps, o->seed);
	if (r < 0) {
		bench_fmt(err, errlen, "writers: %s", strerror(-r));
		goto out;
	}
	fflush(stdout);
	fflush(stderr);
	cut_begin(&ws);
	t0 = bench_now_ns();
	pid = fork();
	t1 = bench_now_ns();
	if (!pid) /* the copy, kept until the run ends: as a snapshot is */
		bench_child_sleep(parent);
	cut_end(&ws);
	if (pid < 0) {
		r = -errno;
		bench_fmt(err, errlen, "fork: %s", strerror(errno));
	}
	g->call_ns = (double)(t1 - t0);
out:
	writers_stop(&ws, g);
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	munmap(p, len);
	return r;
}

/* A daemon segment, attached and populated, and the name of its snapshot. */
struct snap_seg {
	char name[64], snap[80];
	struct upager_attachment *att;
	bool snapped; /* snap was cut */
};

/* Detach and delete the segment, and its snapshot if it was cut. */
static void seg_drop(struct bench_env *env, struct snap_seg *s)
{
	if (s->snapped && upager_delete(env->conn, s->snap, 0) == -EBUSY)
		upager_delete(env->conn, s->snap, UPAGER_DELETE_FORCE);
	upager_detach(s->att);
	if (upager_delete(env->conn, s->name, 0) == -EBUSY)
		upager_delete(env->conn, s->name, UPAGER_DELETE_FORCE);
}

/*
 * Create a segment of @size, attach it and populate it.  Returns 0, or
 * -errno with @err saying why (then nothing is left of it).
 */
static int seg_make(struct bench_env *env, struct snap_seg *s, uint64_t size,
		    char *err, size_t errlen)
{
	struct upager_create_opts copts = { .size = size,
					    .source_fd = -1,
					    .mode = 0600 };
	int r;

	memset(s, 0, sizeof(*s));
	bench_fmt(s->name, sizeof(s->name), "bench-%d-%u", (int)getpid(),
		  ++env->seq);
	bench_fmt(s->snap, sizeof(s->snap), "%s-snap", s->name);
	r = upager_create(env->conn, s->name, &copts);
	if (r < 0) {
		bench_fmt(err, errlen, "upager_create: %s", strerror(-r));
		return r;
	}
	r = upager_attach(env->conn, s->name, 0, &s->att);
	if (r < 0) {
		bench_fmt(err, errlen, "upager_attach: %s", strerror(-r));
		seg_drop(env, s);
		return r;
	}
	bench_populate(upager_attachment_addr(s->att), size, env->page_size);
	return 0;
}

/* upagerd: upager_snapshot() of a segment of @len, the writers running. */
static int upagerd_run(const struct bench_snap_opts *o, uint64_t len,
		       struct snap_fig *g, char *err, size_t errlen)
{
	struct bench_env *env = o->env;
	size_t ps = env->page_size;
	struct upager_snapshot_result res;
	struct snap_writers ws = { 0 };
	struct snap_seg s;
	uint64_t t0, t1;
	int r;

	r = seg_make(env, &s, len, err, errlen);
	if (r < 0)
		return r;
	r = writers_start(&ws, o->writers, upager_attachment_addr(s.att),
			  len / ps, ps, o->seed);
	if (r < 0) {
		bench_fmt(err, errlen, "writers: %s", strerror(-r));
		goto out;
	}
	cut_begin(&ws);
	t0 = bench_now_ns();
	r = upager_snapshot(env->conn, s.name, s.snap, &res);
	t1 = bench_now_ns();
	cut_end(&ws);
	if (r < 0) {
		bench_fmt(err, errlen, "%s",
			  r == -EOPNOTSUPP ? BENCH_NO_SNAPSHOTS : strerror(-r));
		goto out;
	}
	s.snapped = true;
	g->call_ns = (double)(t1 - t0);
	g->cut_ns = (double)res.cut_ns;
	g->protect_ns = (double)res.protect_ns;
	g->hold_ns = (double)res.max_hold_ns;
	g->held = (double)res.writers_held;
out:
	writers_stop(&ws, r < 0 ? NULL : g);
	seg_drop(env, &s);
	return r;
}

struct snap_row {
	uint64_t size;
	struct snap_fig fork, upagerd; /* medians */
	char fork_err[160], upagerd_err[160];
	bool upagerd_na; /* no snapshots: no failure */
};

static void snap_median(struct snap_fig *runs, unsigned int n,
			struct snap_fig *out)
{
	bench_median_fields((const double *)runs, n, SNAP_FIG_N, (double *)out);
}

static void ms_cell(FILE *f, double ns, int width)
{
	if (ns < 0)
		fprintf(f, " %*s", width, "-");
	else
		fprintf(f, " %*.2f", width, ns / 1e6);
}

static void snap_table(const struct bench_snap_opts *o,
		       const struct snap_row *rows, unsigned int n, FILE *f)
{
	char sz[SIZE_FORMAT_MAX];
	unsigned int i;

	report_header(o, "snapshot", true, f);
	fprintf(f,
		"%u writer thread%s storing a counter into random pages, "
		"nonstop\n",
		o->writers, o->writers == 1 ? "" : "s");
	fprintf(f, "%-10s %9s %9s | %9s %9s %9s %9s %9s %7s | %9s\n", "size",
		"fork ms", "wait ms", "call ms", "cut ms", "protect", "hold ms",
		"wait ms", "held", "wait/fork");
	for (i = 0; i < n; i++) {
		const struct snap_row *r = &rows[i];
		const struct snap_fig *k = &r->fork, *u = &r->upagerd;

		fprintf(f, "%-10s", size_str(r->size, sz));
		if (r->fork_err[0]) {
			fprintf(f, " %-19s |", "error");
		} else {
			ms_cell(f, k->call_ns, 9);
			ms_cell(f, k->wait_ns, 9);
			fprintf(f, " |");
		}
		if (r->upagerd_err[0]) {
			fprintf(f, " %s\n", r->upagerd_err);
			continue;
		}
		ms_cell(f, u->call_ns, 9);
		ms_cell(f, u->cut_ns, 9);
		ms_cell(f, u->protect_ns, 9);
		ms_cell(f, u->hold_ns, 9);
		ms_cell(f, u->wait_ns, 9);
		if (u->held < 0)
			fprintf(f, " %7s", "-");
		else
			fprintf(f, " %7.0f", u->held);
		fprintf(f, " |");
		if (!r->fork_err[0] && k->wait_ns > 0 && u->wait_ns >= 0)
			fprintf(f, " %8.2fx\n", u->wait_ns / k->wait_ns);
		else
			fprintf(f, " %9s\n", "-");
	}
	for (i = 0; i < n; i++)
		if (rows[i].fork_err[0])
			fprintf(f, "fork %s: %s\n", size_str(rows[i].size, sz),
				rows[i].fork_err);
	fputs("(fork ms: fork() in the caller; wait ms: the writers' longest "
	      "store that\n"
	      " overlapped the cut, preempted stores left out; call ms: "
	      "upager_snapshot()\n"
	      " in the caller; cut, protect, hold: the daemon's account "
	      "(res.cut_ns,\n"
	      " protect_ns, max_hold_ns); held: writes it held; wait/fork: "
	      "upagerd's\n"
	      " writers' pause over fork's)\n",
	      f);
}

static void json_fig(FILE *f, const char *name, const struct snap_fig *g,
		     const char *err)
{
	fprintf(f, "\"%s\": {", name);
	if (err && err[0]) {
		fprintf(f, "\"error\": ");
		json_write_string(f, err);
		fprintf(f, "}");
		return;
	}
	json_num(f, "call_ns", g->call_ns, true);
	json_num(f, "writer_wait_ns", g->wait_ns, true);
	json_num(f, "writer_wait_all_ns", g->wait_all_ns, true);
	json_num(f, "stores_in_cut", g->in_cut, true);
	json_num(f, "stores_preempted", g->preempted, true);
	json_num(f, "cut_ns", g->cut_ns, true);
	json_num(f, "protect_ns", g->protect_ns, true);
	json_num(f, "max_hold_ns", g->hold_ns, true);
	json_num(f, "writers_held", g->held, true);
	json_num(f, "stores_per_s", g->stores_per_s, false);
	fprintf(f, "}");
}

static void snapshot_json(FILE *f, const struct json_out *j)
{
	const struct snap_row *rows = j->rows;
	unsigned int i;

	json_head(j->o, "snapshot", f);
	for (i = 0; i < j->n; i++) {
		fprintf(f, "    {\"size\": %" PRIu64 ", ", rows[i].size);
		json_fig(f, "fork", &rows[i].fork, rows[i].fork_err);
		fprintf(f, ", ");
		json_fig(f, "upagerd", &rows[i].upagerd, rows[i].upagerd_err);
		fprintf(f, "}%s\n", i + 1 < j->n ? "," : "");
	}
	json_tail(j->rep, f);
}

/* The progress line of run @it (warm-ups first) of @who at @size. */
static void run_progress(const struct bench_snap_opts *o, uint64_t size,
			 const char *who, unsigned int it)
{
	bool measured = it >= o->warmup;
	char sz[SIZE_FORMAT_MAX];

	progress(o, "snapshot %s %s %s %u/%u", size_str(size, sz), who,
		 measured ? "run" : "warm-up",
		 measured ? it - o->warmup + 1 : it + 1,
		 measured ? o->runs : o->warmup);
}

int bench_snapshot_run(const struct bench_snap_opts *o)
{
	unsigned int n = o->nr_sizes, i, it, total = o->warmup + o->runs;
	struct bench_report rep = { .workload = "snapshot" };
	struct snap_fig *kf, *uf;
	struct snap_row *rows;
	char sz[SIZE_FORMAT_MAX], name[96];
	bool failed = false;

	rows = calloc(n, sizeof(*rows));
	kf = calloc(total, sizeof(*kf));
	uf = calloc(total, sizeof(*uf));
	if (!rows || !kf || !uf)
		abort();
	for (i = 0; i < n; i++) {
		struct snap_row *row = &rows[i];
		unsigned int nk = 0, nu = 0;

		row->size = o->sizes[i];
		snap_fig_none(&row->fork);
		snap_fig_none(&row->upagerd);
		if (!o->reference)
			bench_fmt(row->fork_err, sizeof(row->fork_err),
				  "not run (--systems)");
		if (!o->daemon)
			bench_fmt(row->upagerd_err, sizeof(row->upagerd_err),
				  "not run (--systems)");
		else if (o->daemon_na)
			bench_fmt(row->upagerd_err, sizeof(row->upagerd_err),
				  "%s", o->daemon_na);
		row->upagerd_na = o->daemon && o->daemon_na &&
				  !strcmp(o->daemon_na, BENCH_NO_SNAPSHOTS);
		if (!mem_room(row->size, row->fork_err, sizeof(row->fork_err))) {
			bench_fmt(row->upagerd_err, sizeof(row->upagerd_err),
				  "%s", row->fork_err);
			continue;
		}
		for (it = 0; it < total; it++) {
			bool measured = it >= o->warmup;
			struct snap_fig g;

			if (!row->fork_err[0]) {
				run_progress(o, row->size, "fork", it);
				snap_fig_none(&g);
				if (fork_run(o, row->size, &g, row->fork_err,
					     sizeof(row->fork_err)) == 0 &&
				    measured)
					kf[nk++] = g;
			}
			if (!row->upagerd_err[0]) {
				run_progress(o, row->size, "upagerd", it);
				snap_fig_none(&g);
				if (upagerd_run(o, row->size, &g,
						row->upagerd_err,
						sizeof(row->upagerd_err)) == 0 &&
				    measured)
					uf[nu++] = g;
				if (!strcmp(row->upagerd_err,
					    BENCH_NO_SNAPSHOTS))
					row->upagerd_na = true;
			}
		}
		if (!row->fork_err[0])
			snap_median(kf, nk, &row->fork);
		if (!row->upagerd_err[0])
			snap_median(uf, nu, &row->upagerd);
		if ((o->reference && row->fork_err[0]) ||
		    (o->daemon && row->upagerd_err[0] && !row->upagerd_na))
			failed = true;
	}
	progress_end(o);

	for (i = 0; i < n; i++) {
		const struct snap_row *row = &rows[i];
		double v = -1;

		if (!row->fork_err[0] && !row->upagerd_err[0] &&
		    row->fork.wait_ns > 0 && row->upagerd.wait_ns >= 0)
			v = row->upagerd.wait_ns / row->fork.wait_ns;
		bench_fmt(name, sizeof(name),
			  "snapshot/%s writer pause upagerd/fork",
			  size_str(row->size, sz));
		bench_report_target(&rep, name, v, "<=", 0.5);
	}

	if (json_emit(&(struct json_out){ .o = o,
					  .rep = &rep,
					  .rows = rows,
					  .n = n },
		      snapshot_json) < 0)
		failed = true;
	if (!o->json) {
		snap_table(o, rows, n, stdout);
		fputc('\n', stdout);
		bench_report_targets(&rep, stdout);
	}
	fflush(stdout);
	free(rows);
	free(kf);
	free(uf);
	return failed ? 1 : 0;
}

/* ==== snapmem: what snapshots cost in memory ==== */

struct proc_mem {
	long long anon_kb, pte_kb, shmem_kb, rss_kb;
};

static int proc_mem_read(pid_t pid, struct proc_mem *m)
{
	char path[64];

	bench_fmt(path, sizeof(path), "/proc/%d/status", (int)pid);
	m->anon_kb = proc_kb(path, "RssAnon");
	m->pte_kb = proc_kb(path, "VmPTE");
	m->shmem_kb = proc_kb(path, "RssShmem");
	m->rss_kb = proc_kb(path, "VmRSS");
	return m->anon_kb < 0 || m->pte_kb < 0 ? -ESRCH : 0;
}

/* Bytes per page of the growth from @a to @b. */
static double per_page(long long a_kb, long long b_kb, uint64_t pages)
{
	return (double)(b_kb - a_kb) * 1024.0 / (double)pages;
}

struct meta_row {
	uint64_t size;
	struct proc_mem before, populated, snapped;
	bool has_populated, has_snapped;
	char err[160];
	bool na; /* no snapshots: the populated figures only */
};

/* The daemon's metadata (RssAnon + VmPTE) grown from before to @after. */
static double meta_per_page(const struct meta_row *m,
			    const struct proc_mem *after, uint64_t pages)
{
	return per_page(m->before.anon_kb + m->before.pte_kb,
			after->anon_kb + after->pte_kb, pages);
}

static int meta_measure(const struct bench_snap_opts *o, pid_t dpid,
			struct meta_row *m)
{
	struct bench_env *env = o->env;
	struct snap_seg s;
	int r;

	r = proc_mem_read(dpid, &m->before);
	if (r < 0) {
		bench_fmt(m->err, sizeof(m->err), "cannot read /proc/%d/status",
			  (int)dpid);
		return r;
	}
	r = seg_make(env, &s, m->size, m->err, sizeof(m->err));
	if (r < 0)
		return r;
	m->has_populated = !proc_mem_read(dpid, &m->populated);
	r = upager_snapshot(env->conn, s.name, s.snap, NULL);
	if (r == -EOPNOTSUPP) {
		m->na = true;
		r = 0;
	} else if (r < 0) {
		bench_fmt(m->err, sizeof(m->err), "upager_snapshot: %s",
			  strerror(-r));
	} else {
		s.snapped = true;
		m->has_snapped = !proc_mem_read(dpid, &m->snapped);
	}
	seg_drop(env, &s);
	return r;
}

/* What one private reader reports of its mapping (smaps, kB). */
struct reader_mem {
	long long rss_kb, anon_kb, private_dirty_kb;
	int error;
};

struct readers_shared {
	_Atomic unsigned int done;
	struct reader_mem r[SNAP_MAX_READERS];
};

/* The smaps fields of the mapping that starts at @addr, in this process. */
static int smaps_of(const void *addr, struct reader_mem *m)
{
	unsigned long start, end;
	char line[512];
	bool in = false;
	FILE *f = fopen("/proc/self/smaps", "re");
	int r = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		/* a mapping's header: "start-end perms offset dev inode" */
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2) {
			if (in)
				break;
			in = start == (unsigned long)addr;
			if (in)
				r = 0;
			continue;
		}
		if (!in)
			continue;
		if (!strncmp(line, "Rss:", 4))
			m->rss_kb = strtoll(line + 4, NULL, 10);
		else if (!strncmp(line, "Anonymous:", 10))
			m->anon_kb = strtoll(line + 10, NULL, 10);
		else if (!strncmp(line, "Private_Dirty:", 14))
			m->private_dirty_kb = strtoll(line + 14, NULL, 10);
	}
	fclose(f);
	return r;
}

static uint64_t read_all(const char *p, size_t len, size_t ps)
{
	uint64_t sum = 0;
	size_t off;

	for (off = 0; off < len; off += ps)
		sum += ((const volatile char *)p)[off + 1];
	return sum;
}

/*
 * Body of reader @i: map the memfd @fd (kernel) or attach snapshot @snap
 * privately, read every page, report, wait for @release to close.
 */
static void reader_main(const struct bench_snap_opts *o,
			struct readers_shared *sh, unsigned int i, int fd,
			const char *snap, int release)
{
	struct reader_mem *m = &sh->r[i];
	struct upager_attachment *att = NULL;
	struct upager *conn = NULL;
	size_t len = o->reader_size;
	char *p = NULL, c;
	int r;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (fd >= 0) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		r = p == MAP_FAILED ? -errno : 0;
	} else {
		r = upager_connect(o->env->sock, &conn);
		if (!r)
			r = upager_attach(conn, snap, UPAGER_ATTACH_PRIVATE,
					  &att);
		if (!r)
			p = upager_attachment_addr(att);
	}
	if (!r &&
	    read_all(p, len, o->env->page_size) !=
		    (uint64_t)BENCH_POPULATE_MARK * (len / o->env->page_size))
		r = -EBADMSG;
	if (!r)
		r = smaps_of(p, m);
	m->error = r;
	atomic_fetch_add(&sh->done, 1);
	while (read(release, &c, 1) < 0 && errno == EINTR)
		;
	upager_detach(att);
	upager_disconnect(conn);
	_exit(r ? 1 : 0);
}

struct readers_row {
	const char *system;
	double frames;	     /* the memfd's or the snapshot's bytes */
	double parent_bytes; /* upagerd: the segment's allocated_bytes */
	double readers_anon; /* their private pages, bytes */
	double readers_dirty;
	double readers_rss;
	double pages_private, pages_shared;
	char err[160];
	bool na;
};

static int readers_run(const struct bench_snap_opts *o, int fd,
		       const char *snap, struct readers_row *row)
{
	struct readers_shared *sh;
	pid_t pids[SNAP_MAX_READERS];
	unsigned int n = o->readers, i, started = 0;
	int rel[2], status, r = 0;
	uint64_t deadline;

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return -errno;
	if (pipe2(rel, O_CLOEXEC) < 0) {
		r = -errno;
		munmap(sh, sizeof(*sh));
		return r;
	}
	fflush(stdout);
	fflush(stderr);
	for (i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] < 0) {
			r = -errno;
			break;
		}
		if (!pids[i]) {
			close(rel[1]);
			reader_main(o, sh, i, fd, snap, rel[0]);
		}
		started++;
	}
	close(rel[0]);
	/* minutes at most: a reader of 256 MiB takes a second or two */
	deadline = bench_now_ns() + 600ULL * 1000000000ULL;
	while (!r && atomic_load(&sh->done) < started) {
		for (i = 0; i < started; i++)
			if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
				pids[i] = -1;
				r = -ECHILD;
			}
		if (bench_now_ns() > deadline)
			r = -ETIMEDOUT;
		sleep_ns(1000000);
	}
	/* every reader still has its mapping: the figures now */
	if (!r && !snap) {
		struct stat st;

		if (fstat(fd, &st) < 0)
			r = -errno;
		else
			row->frames = (double)st.st_blocks * 512;
	} else if (!r) {
		struct upager_segment_info info;

		r = upager_stat(o->env->conn, snap, &info);
		if (!r) {
			row->frames = (double)info.allocated_bytes;
			row->pages_private = (double)info.pages_private;
			row->pages_shared = (double)info.pages_shared;
		}
	}
	row->readers_anon = row->readers_dirty = row->readers_rss = 0;
	for (i = 0; !r && i < started; i++) {
		if (sh->r[i].error) {
			r = sh->r[i].error;
			break;
		}
		row->readers_anon += (double)sh->r[i].anon_kb * 1024;
		row->readers_dirty += (double)sh->r[i].private_dirty_kb * 1024;
		row->readers_rss += (double)sh->r[i].rss_kb * 1024;
	}
	close(rel[1]);
	for (i = 0; i < started; i++) {
		if (pids[i] <= 0)
			continue;
		if (waitpid(pids[i], &status, 0) == pids[i] && !r &&
		    !(WIFEXITED(status) && !WEXITSTATUS(status)))
			r = -ECHILD;
	}
	munmap(sh, sizeof(*sh));
	if (r < 0)
		bench_fmt(row->err, sizeof(row->err), "readers: %s",
			  strerror(-r));
	return r;
}

static int readers_kernel(const struct bench_snap_opts *o,
			  struct readers_row *row)
{
	size_t len = o->reader_size;
	char *p;
	int fd, r;

	row->system = "kernel-memfd";
	fd = memfd_create("upager-bench-readers", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)len) < 0) {
		r = -errno;
		bench_fmt(row->err, sizeof(row->err), "memfd: %s",
			  strerror(errno));
		if (fd >= 0)
			close(fd);
		return r;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		close(fd);
		return r;
	}
	bench_populate(p, len, o->env->page_size);
	munmap(p, len);
	r = readers_run(o, fd, NULL, row);
	close(fd);
	return r;
}

static int readers_upagerd(const struct bench_snap_opts *o,
			   struct readers_row *row)
{
	struct bench_env *env = o->env;
	struct upager_segment_info info;
	struct snap_seg s;
	int r;

	row->system = "upagerd";
	r = seg_make(env, &s, o->reader_size, row->err, sizeof(row->err));
	if (r < 0)
		return r;
	r = upager_snapshot(env->conn, s.name, s.snap, NULL);
	if (r < 0) {
		row->na = r == -EOPNOTSUPP;
		bench_fmt(row->err, sizeof(row->err), "%s",
			  row->na ? BENCH_NO_SNAPSHOTS : strerror(-r));
		goto out;
	}
	s.snapped = true;
	r = readers_run(o, -1, s.snap, row);
	if (!r && !upager_stat(env->conn, s.name, &info))
		row->parent_bytes = (double)info.allocated_bytes;
out:
	seg_drop(env, &s);
	return r;
}

static double readers_ratio(const struct bench_snap_opts *o,
			    const struct readers_row *row)
{
	if (row->err[0] || row->frames < 0)
		return -1;
	return (row->frames + row->readers_anon) / (double)o->reader_size;
}

/* The target on the daemon's metadata after @what (n/a unless @has). */
static void meta_target(struct bench_report *rep, const struct meta_row *m,
			const char *what, const struct proc_mem *after,
			bool has, uint64_t pages, bool info)
{
	char sz[SIZE_FORMAT_MAX], name[96];
	struct bench_target *t;

	bench_fmt(name, sizeof(name), "snapmem/%s daemon metadata, %s",
		  size_str(m->size, sz), what);
	t = bench_report_target(rep, name,
				has ? meta_per_page(m, after, pages) : -1,
				"<=", 16);
	if (t) {
		t->unit = "B/page";
		t->info = info;
	}
}

/* A row of the metadata table: the growth from before to @after. */
static void meta_line(FILE *f, const char *size, const char *after_name,
		      const struct meta_row *m, const struct proc_mem *after,
		      uint64_t pages)
{
	fprintf(f, "%-10s %-16s %9.2f %9.2f %9.2f %11.2f\n", size, after_name,
		per_page(m->before.anon_kb, after->anon_kb, pages),
		per_page(m->before.pte_kb, after->pte_kb, pages),
		meta_per_page(m, after, pages),
		per_page(m->before.shmem_kb, after->shmem_kb, pages));
}

static void snapmem_table(const struct bench_snap_opts *o,
			  const struct meta_row *meta, unsigned int nm,
			  const struct readers_row *rd, unsigned int nr, FILE *f)
{
	char sz[SIZE_FORMAT_MAX], sz2[SIZE_FORMAT_MAX], sz3[SIZE_FORMAT_MAX];
	unsigned int i;

	report_header(o, "snapmem", false, f);
	fprintf(f, "\nupagerd's memory per page of a segment (B/page, "
		   "growth of /proc/PID/status):\n");
	fprintf(f, "%-10s %-16s %9s %9s %9s %11s\n", "size", "after", "RssAnon",
		"VmPTE", "meta", "RssShmem");
	for (i = 0; i < nm; i++) {
		const struct meta_row *m = &meta[i];
		uint64_t pages = m->size / o->env->page_size;

		if (m->err[0] && !m->has_populated) {
			fprintf(f, "%-10s %s\n", size_str(m->size, sz), m->err);
			continue;
		}
		meta_line(f, size_str(m->size, sz), "populate", m,
			  &m->populated, pages);
		if (m->has_snapped)
			meta_line(f, "", "+ snapshot", m, &m->snapped, pages);
		else
			fprintf(f, "%-10s %-16s %s\n", "", "+ snapshot",
				m->na ? BENCH_NO_SNAPSHOTS :
					(m->err[0] ? m->err : "-"));
	}
	fprintf(f,
		"\n%u private readers of one %s snapshot, each reading every "
		"page:\n",
		o->readers, size_str(o->reader_size, sz));
	fprintf(f, "%-14s %12s %12s %12s %12s %8s\n", "system", "frames",
		"readers anon", "readers rss", "parent", "memory");
	for (i = 0; i < nr; i++) {
		const struct readers_row *r = &rd[i];

		if (r->err[0]) {
			fprintf(f, "%-14s %s\n", r->system, r->err);
			continue;
		}
		fprintf(f, "%-14s %12s %12s %12s", r->system,
			size_str((uint64_t)r->frames, sz),
			size_str((uint64_t)r->readers_anon, sz2),
			size_str((uint64_t)r->readers_rss, sz3));
		fprintf(f, " %12s %7.2fx\n",
			r->parent_bytes >= 0 ?
				size_str((uint64_t)r->parent_bytes, sz) :
				"-",
			readers_ratio(o, r));
	}
	fputs("(meta: RssAnon + VmPTE, the daemon's own memory; RssShmem: "
	      "frames the\n"
	      " daemon maps, data not metadata; frames: the memfd's blocks, or "
	      "the\n"
	      " snapshot's allocated_bytes; readers anon: the private pages "
	      "of their\n"
	      " mappings (smaps Anonymous); parent: the segment's "
	      "allocated_bytes, not\n"
	      " counted; memory: (frames + readers anon) / snapshot size)\n",
	      f);
}

static void json_mem(FILE *f, const char *name, const struct proc_mem *m)
{
	fprintf(f,
		", \"%s\": {\"anon\": %lld, \"pte\": %lld, \"shmem\": %lld, "
		"\"rss\": %lld}",
		name, m->anon_kb, m->pte_kb, m->shmem_kb, m->rss_kb);
}

static void snapmem_json(FILE *f, const struct json_out *j)
{
	const struct bench_snap_opts *o = j->o;
	const struct meta_row *meta = j->rows;
	const struct readers_row *rd = j->rows2;
	const char *sep = "";
	unsigned int i;

	json_head(o, "snapmem", f);
	for (i = 0; i < j->n; i++, sep = ",\n") {
		const struct meta_row *m = &meta[i];

		fprintf(f,
			"%s    {\"kind\": \"metadata\", \"size\": %" PRIu64
			", \"error\": ",
			sep, m->size);
		if (m->err[0] || m->na)
			json_write_string(f, m->err[0] ? m->err :
							 BENCH_NO_SNAPSHOTS);
		else
			fprintf(f, "null");
		/* kB, from /proc/PID/status of the daemon */
		json_mem(f, "before_kb", &m->before);
		if (m->has_populated)
			json_mem(f, "populated_kb", &m->populated);
		if (m->has_snapped)
			json_mem(f, "snapshot_kb", &m->snapped);
		fprintf(f, "}");
	}
	for (i = 0; i < j->n2; i++, sep = ",\n") {
		const struct readers_row *r = &rd[i];

		fprintf(f, "%s    {\"kind\": \"readers\", \"system\": ", sep);
		json_write_string(f, r->system);
		fprintf(f,
			", \"readers\": %u, \"size\": %" PRIu64 ", \"error\": ",
			o->readers, o->reader_size);
		if (r->err[0]) {
			json_write_string(f, r->err);
			fprintf(f, "}");
			continue;
		}
		fprintf(f, "null, ");
		json_num(f, "frames_bytes", r->frames, true);
		json_num(f, "readers_anon_bytes", r->readers_anon, true);
		json_num(f, "readers_private_dirty_bytes", r->readers_dirty,
			 true);
		json_num(f, "readers_rss_bytes", r->readers_rss, true);
		json_num(f, "parent_bytes", r->parent_bytes, true);
		json_num(f, "snapshot_pages_private", r->pages_private, true);
		json_num(f, "snapshot_pages_shared", r->pages_shared, true);
		fprintf(f, "\"memory_over_size\": %.4f}", readers_ratio(o, r));
	}
	fprintf(f, "\n");
	json_tail(j->rep, f);
}

int bench_snapmem_run(const struct bench_snap_opts *o)
{
	struct bench_report rep = { .workload = "snapmem" };
	struct readers_row rd[2];
	struct meta_row *meta;
	unsigned int nm = 0, nr = 0, i;
	char sz[SIZE_FORMAT_MAX], name[96];
	struct bench_target *t;
	bool failed = false;
	pid_t dpid = -ESRCH;

	meta = calloc(o->nr_sizes, sizeof(*meta));
	if (!meta)
		abort();
	memset(rd, 0, sizeof(rd));
	/* without snapshots the daemon runs: its populated figures stand */
	if (o->daemon &&
	    (!o->daemon_na || !strcmp(o->daemon_na, BENCH_NO_SNAPSHOTS)))
		dpid = bench_upagerd_pid(o->env);
	for (i = 0; o->daemon && i < o->nr_sizes; i++) {
		struct meta_row *m = &meta[nm++];

		m->size = o->sizes[i];
		if (o->daemon_na && strcmp(o->daemon_na, BENCH_NO_SNAPSHOTS)) {
			bench_fmt(m->err, sizeof(m->err), "%s", o->daemon_na);
			continue;
		}
		if (dpid < 0) {
			bench_fmt(m->err, sizeof(m->err),
				  "the daemon's pid is not known");
			failed = true;
			continue;
		}
		if (!mem_room(m->size, m->err, sizeof(m->err)))
			continue;
		progress(o, "snapmem metadata %s", size_str(m->size, sz));
		if (meta_measure(o, dpid, m) < 0)
			failed = true;
	}
	if (o->reference) {
		struct readers_row *r = &rd[nr++];

		progress(o, "snapmem %u readers kernel-memfd", o->readers);
		r->parent_bytes = r->pages_private = r->pages_shared = -1;
		if (readers_kernel(o, r) < 0)
			failed = true;
	}
	if (o->daemon) {
		struct readers_row *r = &rd[nr++];

		r->system = "upagerd";
		r->parent_bytes = r->pages_private = r->pages_shared = -1;
		if (o->daemon_na) {
			r->na = !strcmp(o->daemon_na, BENCH_NO_SNAPSHOTS);
			bench_fmt(r->err, sizeof(r->err), "%s", o->daemon_na);
		} else {
			progress(o, "snapmem %u readers upagerd", o->readers);
			if (readers_upagerd(o, r) < 0 && !r->na)
				failed = true;
		}
	}
	progress_end(o);

	for (i = 0; i < nm; i++) {
		const struct meta_row *m = &meta[i];
		uint64_t pages = m->size / o->env->page_size;

		meta_target(&rep, m, "populated + snapshot", &m->snapped,
			    m->has_snapped, pages, false);
		meta_target(&rep, m, "populated", &m->populated,
			    m->has_populated, pages, true);
	}
	for (i = 0; i < nr; i++) {
		bench_fmt(name, sizeof(name),
			  "snapmem/%u readers of %s: memory/size %s", o->readers,
			  size_str(o->reader_size, sz), rd[i].system);
		t = bench_report_target(&rep, name, readers_ratio(o, &rd[i]),
					"<=", 1.1);
		if (t)
			t->info = strcmp(rd[i].system, "upagerd") != 0;
	}

	if (json_emit(&(struct json_out){ .o = o,
					  .rep = &rep,
					  .rows = meta,
					  .n = nm,
					  .rows2 = rd,
					  .n2 = nr },
		      snapmem_json) < 0)
		failed = true;
	if (!o->json) {
		snapmem_table(o, meta, nm, rd, nr, stdout);
		fputc('\n', stdout);
		bench_report_targets(&rep, stdout);
	}
	fflush(stdout);
	free(meta);
	return failed ? 1 : 0;
}
