// SPDX-License-Identifier: MIT
/*
 * upager-bench: the project's fault-latency yardstick.
 *
 * One invocation measures one workload (a subcommand) on several systems side
 * by side: the kernel alone (memfd, anonymous, file mmap), a minimal
 * userfaultfd handler in the same process, the floor (the best a handler
 * can do: one per faulting thread, on its CPU), and upagerd, whose figures
 * are read as ratios to the floor's.  A workload is a set
 * of variants (page order x faulting threads x processes, and for `file` the
 * page-cache state); each variant runs every system the workload lists.
 *
 * Every access that first touches a page is timed in the faulting thread,
 * with CLOCK_MONOTONIC on each side of one volatile load or store.  Samples
 * go to a preallocated array shared with forked children, so a run costs no
 * allocation and no message while it is timed.  Throughput is the number of
 * pages over the wall time from the barrier release to the last worker done.
 *
 * Noise: a 2-vCPU virtual machine swings by tens of percent from one second
 * to the next.  So every system gets warm-up runs, then the measured runs
 * are interleaved (run 1 of every system, then run 2 of every system, ...)
 * so that a slow stretch of the machine hits all systems alike, and each
 * figure is the median over the runs.  Ratios of medians are what the
 * targets check (all but one: the max latency the issue asks for in ms);
 * they are reported, never turned into a failing exit code.
 *
 * Snapshots (issue 8): `wp` is one more workload of that kind, the first
 * write to each page of memory armed to copy it first (the kernel's COW
 * after fork, a minimal uffd-wp handler, upagerd after upager_snapshot).
 * `snapshot` (the pause a cut imposes on running writers, against fork's)
 * and `snapmem` (memory per page, private readers of one snapshot) measure
 * a snapshot whole, not per page: they run themselves (bench-snapshot.c)
 * with the same options, systems and report conventions.
 *
 * The LD_PRELOAD shim (issue 9): `preload` runs unmodified programs
 * (preload-workload) with and without libupager-preload.so against the
 * daemon the bench started, and reports the shim's cost as ratios to the
 * program alone (bench-preload.c).  It finds the program and the shim next
 * to itself in the build tree, as it finds upagerd.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include "bench-preload.h"
#include "bench-snapshot.h"
#include "bench-stats.h"
#include "bench-systems.h"
#include "fd.h"
#include "size.h"

#define BENCH_MAX_LIST 16
#define BENCH_MAX_SYSTEMS 16
#define BENCH_MAX_THREADS 64
#define BENCH_MAX_PROCS 64
#define BENCH_MAX_WORKERS (BENCH_MAX_THREADS * BENCH_MAX_PROCS)
#define BENCH_DEFAULT_PAGES 16384 /* 64 MiB of 4 KiB pages */
#define BENCH_QUICK_PAGES 256
#define BENCH_SNAP_DEFAULT_SIZE (1ULL << 30)
#define BENCH_READERS_DEFAULT_SIZE (256ULL << 20)
#define BENCH_QUICK_SIZE (16ULL << 20)
#define BENCH_CHURN_DEFAULT 5000
#define BENCH_CHURN_QUICK 200
#define BENCH_VERIFY_MAX 65536 /* pages checked after a run */
#define BENCH_PROGRESS_AFTER_NS 2000000000ULL

struct bench_ctx;

struct bench_opts {
	uint64_t pages;
	bool pages_set;
	unsigned int runs;
	unsigned int warmup;
	unsigned int threads[BENCH_MAX_LIST], nr_threads;
	unsigned int procs[BENCH_MAX_LIST], nr_procs;
	const char *orders[2];
	unsigned int nr_orders;
	const char *caches[2];
	unsigned int nr_caches;
	const char *systems[BENCH_MAX_SYSTEMS];
	unsigned int nr_systems;
	int access; /* -1: the workload's default; 0 read; 1 write */
	bool json;
	const char *json_out;
	const char *socket;
	const char *daemon;
	const char *daemon_args[16];
	unsigned int nr_daemon_args;
	const char *file;
	uint64_t seed;
	bool quick;
	bool progress;
	/* snapshot, snapmem */
	uint64_t sizes[BENCH_SNAP_MAX_SIZES];
	unsigned int nr_sizes;
	unsigned int writers;
	unsigned int readers;
	uint64_t reader_size;
	/* preload */
	const char *program;
	const char *shim;
	unsigned int churn;
};

/*
 * A workload: the variants it runs and the systems it runs them on, with
 * their own system list when their setup differs (wp: populate, then
 * protect or snapshot).  One that is not a set of first touches per page
 * (snapshot, snapmem) runs itself through run.
 */
struct bench_workload {
	const char *name;
	const char *summary;
	const char *help;
	bool write_default;
	bool has_cache; /* variants per page-cache state */
	bool populated; /* its systems write BENCH_POPULATE_MARK first */
	bool one_proc;	/* its systems arm the memory in one process */
	const unsigned int *default_threads;
	const unsigned int *default_procs; /* 0-terminated */
	const struct bench_system *const *systems;
	int (*prepare)(struct bench_ctx *c);
	void (*cleanup)(struct bench_ctx *c);
	/* before each run: set the page-cache state; returns -errno */
	int (*before_run)(struct bench_ctx *c, const struct bench_variant *v,
			  double *resident);
	void (*targets)(struct bench_report *r);
	/* runs the whole workload instead; returns the exit status */
	int (*run)(struct bench_ctx *c);
};

/* Shared with forked children (MAP_SHARED): the barrier and the clock. */
struct bench_ctl {
	_Atomic uint32_t ready; /* workers at the barrier */
	_Atomic uint32_t go;	/* BENCH_GO_* */
	_Atomic uint32_t done;	/* workers done touching */
	_Atomic int32_t error;	/* first -errno of a child */
	char errmsg[160];
	uint64_t t_start;
	uint64_t t_end[BENCH_MAX_WORKERS];
};

enum {
	BENCH_GO_WAIT = 0,
	BENCH_GO_TOUCH = 1,
	BENCH_GO_VERIFY = 2, /* every worker is done: check the content */
	BENCH_GO_ABORT = 3,
};

struct bench_ctx {
	const struct bench_workload *wl;
	struct bench_opts *o;
	struct bench_env env;
	const struct bench_system *systems[BENCH_MAX_SYSTEMS];
	unsigned int nr_systems;
	bool sys_failed[BENCH_MAX_SYSTEMS];
	bool sys_skipped[BENCH_MAX_SYSTEMS]; /* init: -EOPNOTSUPP */
	size_t pages;
	size_t page_size;
	bool write;
	int file_fd;
	char file_path[PATH_MAX];
	bool file_temp;
	uint32_t *order;       /* [pages] */
	uint64_t *samples;     /* [pages], shared */
	struct bench_ctl *ctl; /* shared */
	char errmsg[200];
	pid_t main_pid;
	/* progress */
	uint64_t t0, last_progress;
	unsigned int step, nr_steps;
	bool progress_tty, progress_shown;
};

struct bench_worker {
	struct bench_ctx *c;
	const struct bench_system *sys;
	struct bench_touch touch;
	unsigned int id;
};

static struct bench_ctx *g_ctx; /* for the signal handlers */
static volatile sig_atomic_t g_stopping;

/* ---- small helpers ---- */

static void die_usage(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));

static void die_usage(const char *fmt, ...)
{
	va_list ap;

	fputs("upager-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see --help)\n", stderr);
	exit(2);
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val,
		  const struct timespec *timeout)
{
	/* not FUTEX_PRIVATE: the word lives in memory shared with children */
	return syscall(SYS_futex, (uint32_t *)addr, op, val, timeout, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
	futex(addr, FUTEX_WAKE, INT_MAX, NULL);
}

/* Wait until *addr != val, at most @ms milliseconds (-1: no limit). */
static void futex_wait_ne(_Atomic uint32_t *addr, uint32_t val, int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	futex(addr, FUTEX_WAIT, val, ms < 0 ? NULL : &ts);
}

/* ---- the file workload's source ---- */

static int file_make_temp(struct bench_ctx *c)
{
	const char *tmp = getenv("TMPDIR");
	size_t bytes = c->pages * c->page_size, off, i;
	uint64_t seed = c->o->seed | 1;
	uint64_t *buf;
	int fd, r = 0;

	if (!tmp || !*tmp)
		tmp = "/tmp";
	bench_fmt(c->file_path, sizeof(c->file_path),
		  "%s/upager-bench-file.XXXXXX", tmp);
	fd = mkstemp(c->file_path);
	if (fd < 0) {
		r = -errno;
		bench_fmt(c->errmsg, sizeof(c->errmsg), "mkstemp %s: %s",
			  c->file_path, strerror(errno));
		return r;
	}
	c->file_temp = true;
	buf = malloc(1 << 20);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	/* pseudo-random: no sparse file, no zero page a pager could skip */
	for (off = 0; off < bytes && !r; off += 1 << 20) {
		size_t n = bytes - off < (1 << 20) ? bytes - off : (1 << 20);

		for (i = 0; i < n / 8; i++)
			buf[i] = bench_xorshift(&seed);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			r = errno ? -errno : -EIO;
	}
	free(buf);
	/* clean pages only: a cold run must be able to drop them */
	if (!r && fdatasync(fd) < 0)
		r = -errno;
	close(fd);
	if (r < 0) {
		bench_fmt(c->errmsg, sizeof(c->errmsg), "writing %s: %s",
			  c->file_path, strerror(-r));
		return r;
	}
	c->file_fd = open(c->file_path, O_RDONLY | O_CLOEXEC);
	return c->file_fd < 0 ? -errno : 0;
}

static int file_prepare(struct bench_ctx *c)
{
	struct stat st;
	size_t file_pages;

	if (!c->o->file)
		return file_make_temp(c);
	bench_fmt(c->file_path, sizeof(c->file_path), "%s", c->o->file);
	c->file_fd = open(c->file_path, O_RDONLY | O_CLOEXEC);
	if (c->file_fd < 0 || fstat(c->file_fd, &st) < 0)
		die_usage("--file %s: %s", c->o->file, strerror(errno));
	if (!S_ISREG(st.st_mode))
		die_usage("--file %s: not a regular file", c->o->file);
	file_pages = (size_t)st.st_size / c->page_size;
	if (!file_pages)
		die_usage("--file %s: smaller than a page", c->o->file);
	if (file_pages < c->pages) {
		if (c->o->pages_set)
			fprintf(stderr,
				"upager-bench: --file has %zu pages; "
				"using %zu\n",
				file_pages, file_pages);
		c->pages = file_pages;
	}
	return 0;
}

static void file_cleanup(struct bench_ctx *c)
{
	if (c->file_fd >= 0)
		close(c->file_fd);
	c->file_fd = -1;
	if (c->file_temp)
		unlink(c->file_path);
	c->file_temp = false;
}

/* Fraction of the run's part of the file in the page cache. */
static double file_resident(struct bench_ctx *c)
{
	size_t len = c->pages * c->page_size, i, n = 0;
	unsigned char *vec;
	void *p;

	p = mmap(NULL, len, PROT_READ, MAP_SHARED, c->file_fd, 0);
	if (p == MAP_FAILED)
		return -1;
	vec = malloc(c->pages);
	if (vec && !mincore(p, len, vec))
		for (i = 0; i < c->pages; i++)
			n += vec[i] & 1;
	munmap(p, len);
	free(vec);
	return (double)n / (double)c->pages;
}

static int file_before_run(struct bench_ctx *c, const struct bench_variant *v,
			   double *resident)
{
	size_t len = c->pages * c->page_size, off;
	char *buf;

	if (!strcmp(v->cache, "cold")) {
		if (posix_fadvise(c->file_fd, 0, 0, POSIX_FADV_DONTNEED))
			return -EIO;
	} else {
		buf = malloc(1 << 20);
		if (!buf)
			return -ENOMEM;
		for (off = 0; off < len; off += 1 << 20)
			if (pread(c->file_fd, buf, 1 << 20, (off_t)off) < 0)
				break;
		free(buf);
	}
	*resident = file_resident(c);
	return 0;
}

/* ---- one run ---- */

static void progress(struct bench_ctx *c, const char *what)
{
	uint64_t now = bench_now_ns();

	c->step++;
	if (!c->o->progress || now - c->t0 < BENCH_PROGRESS_AFTER_NS)
		return;
	if (c->progress_tty) {
		fprintf(stderr, "\r\033[K[%u/%u] %s", c->step, c->nr_steps,
			what);
	} else {
		if (c->last_progress && now - c->last_progress < 5000000000ULL)
			return;
		fprintf(stderr, "[%u/%u] %s\n", c->step, c->nr_steps, what);
	}
	fflush(stderr);
	c->last_progress = now;
	c->progress_shown = true;
}

static void progress_end(struct bench_ctx *c)
{
	if (c->progress_tty && c->progress_shown)
		fprintf(stderr, "\r\033[K");
}

/* ---- signals and fatal errors ---- */

static void cleanup_now(struct bench_ctx *c)
{
	if (!c || getpid() != c->main_pid)
		return;
	if (c->file_temp)
		unlink(c->file_path);
	bench_env_kill_daemon(&c->env);
}

static void on_signal(int sig)
{
	/* from now on a fault the dying daemon cannot serve is expected */
	g_stopping = 1;
	cleanup_now(g_ctx);
	_exit(128 + sig);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	static const char msg[] = "upager-bench: SIGBUS: a page of a run "
				  "could not be filled\n";

	(void)sig;
	(void)si;
	(void)uc;
	/* the thread that is stopping the bench will _exit: wait for it */
	if (g_stopping)
		for (;;)
			pause();
	g_stopping = 1;
	if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
		_exit(1);
	cleanup_now(g_ctx);
	_exit(1);
}

static void fatal(struct bench_ctx *c, const char *msg)
{
	g_stopping = 1;
	progress_end(c);
	fprintf(stderr, "upager-bench: %s during a run; stopping\n", msg);
	cleanup_now(c);
	_exit(1);
}

static void *worker_main(void *arg)
{
	struct bench_worker *w = arg;
	struct bench_ctl *ctl = w->c->ctl;
	uint32_t go;

	atomic_fetch_add(&ctl->ready, 1);
	futex_wake_all(&ctl->ready);
	while ((go = atomic_load(&ctl->go)) == BENCH_GO_WAIT)
		futex_wait_ne(&ctl->go, BENCH_GO_WAIT, -1);
	if (go == BENCH_GO_ABORT)
		return NULL;
	w->sys->touch(&w->touch);
	ctl->t_end[w->id] = bench_now_ns();
	atomic_fetch_add(&ctl->done, 1);
	futex_wake_all(&ctl->done);
	return NULL;
}

/*
 * Check the content of the pages process @p touched: a pager that fills a
 * page with the wrong bytes must not look fast.
 */
static int verify(struct bench_ctx *c, const struct bench_variant *v,
		  char *base, unsigned int p)
{
	unsigned int nw = v->threads * v->procs;
	size_t lo = bench_slice_lo(c->pages, p * v->threads, nw);
	size_t hi = bench_slice_lo(c->pages, (p + 1) * v->threads, nw);
	size_t stride = c->pages / BENCH_VERIFY_MAX + 1, k;
	unsigned char want[64];

	for (k = lo; k < hi; k += stride) {
		size_t page = c->order[k];
		const char *got = base + page * c->page_size;

		memset(want, 0, sizeof(want));
		if (c->file_fd >= 0 && pread(c->file_fd, want, sizeof(want),
					     (off_t)(page * c->page_size)) < 0)
			return -errno;
		if (c->wl->populated)
			want[1] = BENCH_POPULATE_MARK;
		if (c->write)
			want[0] = 1;
		if (memcmp(got, want, sizeof(want))) {
			bench_fmt(c->errmsg, sizeof(c->errmsg),
				  "page %zu has wrong content", page);
			return -EBADMSG;
		}
	}
	return 0;
}

/*
 * Start @threads workers of process @p on @base; they wait at the barrier.
 * A pinned system's start on their CPU: fresh threads, so nothing of the
 * pinning outlives the run.
 */
static int start_workers(struct bench_ctx *c, const struct bench_system *sys,
			 const struct bench_variant *v, unsigned int p,
			 char *base, struct bench_worker *w, pthread_t *tid)
{
	unsigned int nw = v->threads * v->procs, t;
	pthread_attr_t attr;
	cpu_set_t cpus;
	int r;

	for (t = 0; t < v->threads; t++) {
		unsigned int id = p * v->threads + t;

		w[t] = (struct bench_worker){
			.c = c, .sys = sys, .id = id,
			.touch = {
				.worker = id,
				.base = base, .page_size = c->page_size,
				.order = c->order,
				.lo = bench_slice_lo(c->pages, id, nw),
				.hi = bench_slice_lo(c->pages, id + 1, nw),
				.samples = c->samples, .write = c->write,
			},
		};
		r = -pthread_attr_init(&attr);
		if (!r) {
			CPU_ZERO(&cpus);
			CPU_SET(bench_worker_cpu(id), &cpus);
			if (sys->flags & BENCH_SYS_PINNED)
				r = -pthread_attr_setaffinity_np(&attr,
								 sizeof(cpus),
								 &cpus);
			if (!r)
				r = -pthread_create(&tid[t], &attr, worker_main,
						    &w[t]);
			pthread_attr_destroy(&attr);
		}
		if (r < 0) {
			/* let the started ones go, as if aborted */
			atomic_store(&c->ctl->go, BENCH_GO_ABORT);
			futex_wake_all(&c->ctl->go);
			while (t--)
				pthread_join(tid[t], NULL);
			return r;
		}
	}
	return 0;
}

static void child_fail(struct bench_ctx *c, const char *what, int r)
{
	int32_t zero = 0;

	if (atomic_compare_exchange_strong(&c->ctl->error, &zero, r))
		bench_fmt(c->ctl->errmsg, sizeof(c->ctl->errmsg), "%s: %s",
			  what, c->errmsg[0] ? c->errmsg : strerror(-r));
}

/* Body of forked child @p; never returns. */
static void child_main(struct bench_ctx *c, const struct bench_system *sys,
		       struct bench_run *run, const struct bench_variant *v,
		       unsigned int p)
{
	struct bench_worker w[BENCH_MAX_THREADS];
	pthread_t tid[BENCH_MAX_THREADS];
	struct bench_map map = { .in_child = true, .proc = p };
	unsigned int t;
	int r, rc = 0;

	/* a child left alone by a dead bench could hang on its next fault */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGBUS, SIG_DFL);
	c->errmsg[0] = '\0';
	r = sys->attach(run, &map);
	if (r < 0) {
		child_fail(c, "attach", r);
		atomic_fetch_add(&c->ctl->ready, v->threads);
		futex_wake_all(&c->ctl->ready);
		_exit(1);
	}
	r = start_workers(c, sys, v, p, map.addr, w, tid);
	if (r < 0) {
		child_fail(c, "pthread_create", r);
		atomic_fetch_add(&c->ctl->ready, v->threads);
		futex_wake_all(&c->ctl->ready);
		sys->detach(run, &map);
		_exit(1);
	}
	for (t = 0; t < v->threads; t++)
		pthread_join(tid[t], NULL);
	/* check only once nobody touches any more: no skew on the others */
	while (atomic_load(&c->ctl->go) == BENCH_GO_TOUCH)
		futex_wait_ne(&c->ctl->go, BENCH_GO_TOUCH, -1);
	if (atomic_load(&c->ctl->go) == BENCH_GO_VERIFY) {
		r = verify(c, v, map.addr, p);
		if (r < 0) {
			child_fail(c, "verify", r);
			rc = 1;
		}
	}
	r = sys->detach(run, &map);
	if (r < 0) {
		child_fail(c, "detach", r);
		rc = 1;
	}
	_exit(rc);
}

/*
 * Wait until ctl->@word reaches @n, watching the children for an early death
 * and the daemon for any: a dead pager leaves its faulting threads hung or
 * SIGBUSed, so that ends the whole bench.
 */
static int wait_count(struct bench_ctx *c, _Atomic uint32_t *word, uint32_t n,
		      pid_t *pids, bool *reaped, unsigned int nr_pids)
{
	char msg[128];
	unsigned int i;
	uint32_t cur;
	int status;

	while ((cur = atomic_load(word)) < n) {
		futex_wait_ne(word, cur, 20);
		if (bench_env_check_daemon(&c->env, msg, sizeof(msg)) < 0)
			fatal(c, msg);
		for (i = 0; i < nr_pids; i++) {
			if (reaped[i] ||
			    waitpid(pids[i], &status, WNOHANG) != pids[i])
				continue;
			reaped[i] = true;
			bench_fmt(c->errmsg, sizeof(c->errmsg),
				  "process %u of the run %s %d", i,
				  WIFSIGNALED(status) ? "died of signal" :
							"exited with",
				  WIFSIGNALED(status) ? WTERMSIG(status) :
							WEXITSTATUS(status));
			return -ECHILD;
		}
	}
	return 0;
}

/*
 * The pager's CPU over the touch phase, for a pager outside the bench:
 * read at the barrier (@end false) and once every worker is done.
 */
static void pager_cpu_mark(const struct bench_system *sys,
			   struct bench_run *run, bool end)
{
	uint64_t ns;

	if (!sys->pager_cpu || sys->pager_cpu(run, &ns) < 0) {
		run->cpu_started = false;
		return;
	}
	if (!end) {
		run->cpu_start = ns;
		run->cpu_started = true;
	} else if (run->cpu_started && ns >= run->cpu_start) {
		run->stats.cpu_valid = true;
		run->stats.cpu_ns = ns - run->cpu_start;
	}
}

static int run_procs(struct bench_ctx *c, const struct bench_system *sys,
		     struct bench_run *run, const struct bench_variant *v)
{
	pid_t pids[BENCH_MAX_PROCS];
	bool reaped[BENCH_MAX_PROCS] = { false };
	uint32_t nw = v->threads * v->procs;
	unsigned int p, started = 0;
	int r = 0, status;

	fflush(stdout);
	fflush(stderr);
	for (p = 0; p < v->procs; p++) {
		pids[p] = fork();
		if (pids[p] < 0) {
			r = -errno;
			bench_fmt(c->errmsg, sizeof(c->errmsg), "fork: %s",
				  strerror(errno));
			break;
		}
		if (!pids[p])
			child_main(c, sys, run, v, p);
		started++;
	}
	if (!r)
		r = wait_count(c, &c->ctl->ready, nw, pids, reaped, started);
	if (!r && atomic_load(&c->ctl->error))
		r = atomic_load(&c->ctl->error);
	if (r < 0) {
		atomic_store(&c->ctl->go, BENCH_GO_ABORT);
		futex_wake_all(&c->ctl->go);
	} else {
		pager_cpu_mark(sys, run, false);
		c->ctl->t_start = bench_now_ns();
		atomic_store(&c->ctl->go, BENCH_GO_TOUCH);
		futex_wake_all(&c->ctl->go);
		r = wait_count(c, &c->ctl->done, nw, pids, reaped, started);
		pager_cpu_mark(sys, run, true);
		atomic_store(&c->ctl->go,
			     r < 0 ? BENCH_GO_ABORT : BENCH_GO_VERIFY);
		futex_wake_all(&c->ctl->go);
	}
	for (p = 0; p < started; p++) {
		if (reaped[p])
			continue;
		if (waitpid(pids[p], &status, 0) == pids[p] && !r &&
		    !(WIFEXITED(status) && !WEXITSTATUS(status)))
			r = -ECHILD;
	}
	if (atomic_load(&c->ctl->error)) {
		r = atomic_load(&c->ctl->error);
		bench_fmt(c->errmsg, sizeof(c->errmsg), "%s", c->ctl->errmsg);
	} else if (r == -ECHILD && !c->errmsg[0]) {
		bench_fmt(c->errmsg, sizeof(c->errmsg),
			  "a process of the run "
			  "failed");
	}
	return r;
}

static int run_here(struct bench_ctx *c, const struct bench_system *sys,
		    struct bench_run *run, const struct bench_variant *v)
{
	struct bench_worker w[BENCH_MAX_THREADS];
	pthread_t tid[BENCH_MAX_THREADS];
	struct bench_map map = { .in_child = false };
	unsigned int t;
	int r;

	r = sys->attach(run, &map);
	if (r < 0) {
		bench_fmt(c->errmsg, sizeof(c->errmsg), "attach: %s",
			  strerror(-r));
		return r;
	}
	r = start_workers(c, sys, v, 0, map.addr, w, tid);
	if (r < 0) {
		bench_fmt(c->errmsg, sizeof(c->errmsg), "pthread_create: %s",
			  strerror(-r));
		sys->detach(run, &map);
		return r;
	}
	wait_count(c, &c->ctl->ready, v->threads, NULL, NULL, 0);
	pager_cpu_mark(sys, run, false);
	c->ctl->t_start = bench_now_ns();
	atomic_store(&c->ctl->go, BENCH_GO_TOUCH);
	futex_wake_all(&c->ctl->go);
	wait_count(c, &c->ctl->done, v->threads, NULL, NULL, 0);
	pager_cpu_mark(sys, run, true);
	for (t = 0; t < v->threads; t++)
		pthread_join(tid[t], NULL);
	r = verify(c, v, map.addr, 0);
	if (r < 0 && !c->errmsg[0])
		bench_fmt(c->errmsg, sizeof(c->errmsg), "verify: %s",
			  strerror(-r));
	t = (unsigned int)sys->detach(run, &map);
	if ((int)t < 0 && !r) {
		r = (int)t;
		bench_fmt(c->errmsg, sizeof(c->errmsg), "detach: %s",
			  strerror(-r));
	}
	return r;
}

/* One run of @sys on @v: its samples are in c->samples, its wall time out. */
static int run_one(struct bench_ctx *c, const struct bench_system *sys,
		   const struct bench_variant *v, uint64_t *wall_ns,
		   struct bench_sys_stats *stats)
{
	struct bench_run run = {
		.env = &c->env,
		.pages = c->pages,
		.len = c->pages * c->page_size,
		.threads = v->threads,
		.procs = v->procs,
		.source_fd = c->file_fd,
		.fd = -1,
	};
	unsigned int nw = v->threads * v->procs, i;
	uint64_t end = 0;
	int r;

	c->errmsg[0] = '\0';
	memset(c->ctl, 0, sizeof(*c->ctl));
	/*
	 * A fresh open file description per run: the kernel keeps read-ahead
	 * state in it, and no system should inherit another's (or the
	 * checks').
	 */
	if (c->file_fd >= 0) {
		run.source_fd = open(c->file_path, O_RDONLY | O_CLOEXEC);
		if (run.source_fd < 0) {
			r = -errno;
			bench_fmt(c->errmsg, sizeof(c->errmsg), "open %s: %s",
				  c->file_path, strerror(errno));
			return r;
		}
	}
	r = sys->setup(&run);
	if (r < 0) {
		bench_fmt(c->errmsg, sizeof(c->errmsg), "setup: %s",
			  strerror(-r));
		if (run.source_fd >= 0)
			close(run.source_fd);
		return r;
	}
	if (v->procs == 1)
		r = run_here(c, sys, &run, v);
	else
		r = run_procs(c, sys, &run, v);
	sys->teardown(&run);
	if (run.source_fd >= 0)
		close(run.source_fd);
	*stats = run.stats;
	/* the system's own words say more than the step's errno */
	if (r < 0 && run.error[0])
		bench_fmt(c->errmsg, sizeof(c->errmsg), "%s", run.error);
	if (r < 0)
		return r;
	for (i = 0; i < nw; i++)
		if (c->ctl->t_end[i] > end)
			end = c->ctl->t_end[i];
	*wall_ns = end > c->ctl->t_start ? end - c->ctl->t_start : 1;
	return 0;
}

/* The order of the accesses: each worker's slice, shuffled for random. */
static void make_order(struct bench_ctx *c, const struct bench_variant *v)
{
	unsigned int nw = v->threads * v->procs, w;
	uint64_t seed = c->o->seed * 2 + 1;
	size_t k;

	for (k = 0; k < c->pages; k++)
		c->order[k] = (uint32_t)k;
	if (strcmp(v->order, "random"))
		return;
	for (w = 0; w < nw; w++) {
		size_t lo = bench_slice_lo(c->pages, w, nw);
		size_t hi = bench_slice_lo(c->pages, w + 1, nw);

		for (k = hi - 1; k > lo; k--) {
			size_t j = lo + bench_xorshift(&seed) % (k - lo + 1);
			uint32_t tmp = c->order[k];

			c->order[k] = c->order[j];
			c->order[j] = tmp;
		}
	}
}

/* ---- targets ---- */

static bool res_ok(const struct bench_result *r)
{
	return r && !r->error[0] && r->nr_runs;
}

static struct bench_target *target_ratio(struct bench_report *rep,
					 const char *name,
					 const struct bench_result *a,
					 double fa, const struct bench_result *b,
					 double fb, const char *op, double goal)
{
	double v = -1;

	if (res_ok(a) && res_ok(b) && fa >= 0 && fb > 0)
		v = fa / fb;
	return bench_report_target(rep, name, v, op, goal);
}

/* How faults/s grows with threads (2t/1t) and with processes (2p/1p). */
static void scaling_targets(struct bench_report *rep, const char *order,
			    bool info)
{
	static const char *const more[][2] = {
		{ "2t/1p", "2t/1t" },
		{ "1t/2p", "2p/1p" },
	};
	const struct bench_result *one, *two;
	struct bench_target *t;
	char name[96], v[48];
	unsigned int i;

	bench_fmt(v, sizeof(v), "%s/1t/1p", order);
	one = bench_report_find(rep, "upagerd", v);
	for (i = 0; i < 2; i++) {
		bench_fmt(v, sizeof(v), "%s/%s", order, more[i][0]);
		two = bench_report_find(rep, "upagerd", v);
		if (info && (!one || !two))
			continue;
		bench_fmt(name, sizeof(name), "missing/%s %s faults/s upagerd",
			  order, more[i][1]);
		t = target_ratio(rep, name, two,
				 two ? two->fig.faults_per_s : 0, one,
				 one ? one->fig.faults_per_s : 0, ">=", 1.8);
		if (t)
			t->info = info;
	}
}

static void missing_targets(struct bench_report *rep)
{
	const struct bench_result *u, *fl, *k;
	struct bench_target *t;

	u = bench_report_find(rep, "upagerd", "random/1t/1p");
	fl = bench_report_find(rep, "floor", "random/1t/1p");
	target_ratio(rep, "missing/random/1t p50 upagerd/floor", u,
		     u ? u->fig.p50_ns : 0, fl, fl ? fl->fig.p50_ns : 0,
		     "<=", 1.15);
	target_ratio(rep, "missing/random/1t p99/p50 upagerd", u,
		     u ? u->fig.p99_ns : 0, u, u ? u->fig.p50_ns : 0, "<=", 3.0);
	scaling_targets(rep, "random", false);
	scaling_targets(rep, "seq", true);

	/* the one absolute figure: the issue asks for it */
	u = bench_report_find(rep, "upagerd", "seq/1t/1p");
	t = bench_report_target(rep, "missing/seq/1t max latency upagerd",
				res_ok(u) ? u->fig.max_ns / 1e6 : -1, "<=", 2.0);
	if (t)
		t->unit = "ms";
	k = bench_report_find(rep, "kernel-memfd", "seq/1t/1p");
	target_ratio(rep, "missing/seq/1t faults/s upagerd/kernel-memfd", u,
		     u ? u->fig.faults_per_s : 0, k,
		     k ? k->fig.faults_per_s : 0, ">=", 1.5);

	u = bench_report_find(rep, "upagerd", "random/1t/1p");
	target_ratio(rep, "missing/random/1t cpu/fault upagerd/floor", u,
		     u ? u->fig.cpu_per_fault_ns : 0, fl,
		     fl ? fl->fig.cpu_per_fault_ns : 0, "<=", 1.3);
}

static void file_targets(struct bench_report *rep)
{
	const struct bench_result *u, *k;

	u = bench_report_find(rep, "upagerd", "seq/1t/1p/cold");
	k = bench_report_find(rep, "kernel-file", "seq/1t/1p/cold");
	target_ratio(rep, "file/seq/cold faults/s upagerd/kernel-file", u,
		     u ? u->fig.faults_per_s : 0, k,
		     k ? k->fig.faults_per_s : 0, ">=", 1.0);
	u = bench_report_find(rep, "upagerd", "seq/1t/1p/warm");
	k = bench_report_find(rep, "kernel-file", "seq/1t/1p/warm");
	target_ratio(rep, "file/seq/warm faults/s upagerd/kernel-file", u,
		     u ? u->fig.faults_per_s : 0, k,
		     k ? k->fig.faults_per_s : 0, ">=", 0.3);
}

/*
 * Copy before write: upagerd's wp fault against the kernel's COW fault
 * (which no user-space copy can match: a ratio to watch) and against the
 * minimal uffd-wp handler doing the same copy in the faulting process.
 */
static void wp_targets(struct bench_report *rep)
{
	static const char *const variants[] = { "random/1t/1p", "seq/1t/1p" };
	const struct bench_result *u, *k, *m;
	struct bench_target *t;
	char name[96];
	unsigned int i;

	for (i = 0; i < 2; i++) {
		u = bench_report_find(rep, "upagerd", variants[i]);
		k = bench_report_find(rep, "kernel-cow", variants[i]);
		m = bench_report_find(rep, "minimal-wp", variants[i]);
		if (i && !u)
			continue;
		bench_fmt(name, sizeof(name), "wp/%s p50 upagerd/kernel-cow",
			  variants[i]);
		t = target_ratio(rep, name, u, u ? u->fig.p50_ns : 0, k,
				 k ? k->fig.p50_ns : 0, "<=", 8.0);
		if (t)
			t->info = i;
		bench_fmt(name, sizeof(name), "wp/%s p50 upagerd/minimal-wp",
			  variants[i]);
		t = target_ratio(rep, name, u, u ? u->fig.p50_ns : 0, m,
				 m ? m->fig.p50_ns : 0, "<=", 1.15);
		if (t)
			t->info = i;
	}
}

/* ---- snapshot, snapmem: whole snapshots (bench-snapshot.c) ---- */

static void snap_opts_fill(struct bench_ctx *c, struct bench_snap_opts *so)
{
	const struct bench_opts *o = c->o;
	unsigned int i;

	memset(so, 0, sizeof(*so));
	so->env = &c->env;
	memcpy(so->sizes, o->sizes, sizeof(so->sizes));
	so->nr_sizes = o->nr_sizes;
	so->runs = o->runs;
	so->warmup = o->warmup;
	so->writers = o->writers;
	so->readers = o->readers;
	so->reader_size = o->reader_size;
	so->seed = o->seed;
	so->json = o->json;
	so->json_out = o->json_out;
	so->progress = o->progress;
	for (i = 0; i < c->nr_systems; i++) {
		if (c->systems[i]->flags & BENCH_SYS_REFERENCE) {
			so->reference = true;
			continue;
		}
		so->daemon = true;
		if (c->sys_skipped[i])
			so->daemon_na = BENCH_NO_SNAPSHOTS;
		else if (c->sys_failed[i])
			so->daemon_na = c->env.error[0] ? c->env.error :
							  "init failed";
	}
}

static int snapshot_run(struct bench_ctx *c)
{
	struct bench_snap_opts so;

	snap_opts_fill(c, &so);
	return bench_snapshot_run(&so);
}

static int snapmem_run(struct bench_ctx *c)
{
	struct bench_snap_opts so;

	snap_opts_fill(c, &so);
	return bench_snapmem_run(&so);
}

/* ---- preload: the LD_PRELOAD shim's cost (bench-preload.c) ---- */

/*
 * @path, else @rel from the directory of this program (the build tree:
 * bench/), into @buf.  Returns the path to use.
 */
static const char *beside_self(const char *path, const char *rel, char *buf,
			       size_t len)
{
	char exe[PATH_MAX], *slash;
	ssize_t n;

	if (path)
		return path;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return rel;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	bench_fmt(buf, len, "%s/%s", exe, rel);
	return buf;
}

static int preload_prepare(struct bench_ctx *c)
{
	static char program[PATH_MAX + 32], shim[PATH_MAX + 48];
	static char abs_program[PATH_MAX], abs_shim[PATH_MAX];
	struct bench_opts *o = c->o;

	o->program = beside_self(o->program, "preload-workload", program,
				 sizeof(program));
	o->shim = beside_self(o->shim, "../src/preload/libupager-preload.so",
			      shim, sizeof(shim));
	if (access(o->shim, R_OK) < 0) {
		/* a build without the shim: skipped, as the tests say 77 */
		printf("preload: SKIP: the shim is not built (%s: %s); build "
		       "src/preload or give --shim PATH\n",
		       o->shim, strerror(errno));
		exit(77);
	}
	if (access(o->program, X_OK) < 0) {
		bench_fmt(c->errmsg, sizeof(c->errmsg),
			  "%s: %s (give --program PATH)", o->program,
			  strerror(errno));
		return -ENOENT;
	}
	/* LD_PRELOAD of a relative path breaks in a program that chdirs */
	if (realpath(o->shim, abs_shim))
		o->shim = abs_shim;
	if (realpath(o->program, abs_program))
		o->program = abs_program;
	return 0;
}

static void preload_cleanup(struct bench_ctx *c)
{
	(void)c;
}

static int preload_run(struct bench_ctx *c)
{
	const struct bench_opts *o = c->o;
	struct bench_preload_opts po = {
		.env = &c->env,
		.program = o->program,
		.shim = o->shim,
		.size = o->sizes[0],
		.churn = o->churn,
		.runs = o->runs,
		.warmup = o->warmup,
		.json = o->json,
		.json_out = o->json_out,
		.progress = o->progress,
	};

	return bench_preload_run(&po);
}

/* ---- the workloads ---- */

static const unsigned int threads_1_2[] = { 1, 2, 0 };
static const unsigned int only_1[] = { 1, 0 };

static const struct bench_system *const missing_systems[] = {
	&bench_kernel_memfd, &bench_kernel_anon, &bench_minimal,
	&bench_floor,	     &bench_upagerd,	 NULL,
};

static const struct bench_system *const file_systems[] = {
	&bench_kernel_file, &bench_minimal, &bench_floor, &bench_upagerd, NULL,
};

static const struct bench_system *const wp_systems[] = {
	&bench_kernel_cow,
	&bench_minimal_wp,
	&bench_upagerd_wp,
	NULL,
};

static const struct bench_system *const snapshot_systems[] = {
	&bench_kernel_fork,
	&bench_upagerd_wp,
	NULL,
};

/* snapmem's reference: private readers of a plain memfd */
static const struct bench_system *const snapmem_systems[] = {
	&bench_kernel_memfd,
	&bench_upagerd_wp,
	NULL,
};

/* preload: the same program without the shim, and with it */
static const struct bench_system preload_plain = {
	.name = "plain",
	.summary = "the program alone, no LD_PRELOAD",
	.flags = BENCH_SYS_REFERENCE,
};

static const struct bench_system preload_shim = {
	.name = "upagerd",
	.summary = "the program with LD_PRELOAD=libupager-preload.so, on the "
		   "bench's upagerd",
	.flags = BENCH_SYS_DAEMON,
	.init = bench_upagerd_init,
	.fini = bench_upagerd_fini,
};

static const struct bench_system *const preload_systems[] = {
	&preload_plain,
	&preload_shim,
	NULL,
};

static const struct bench_workload workloads[] = {
	{
		.name = "missing",
		.summary = "first touch of a zero-filled segment",
		.help = "Every page is touched once, for the first time: a missing fault on every\n"
			"system.  Variants: --order x --threads x --procs (defaults seq,random;\n"
			"1,2; 1,2).  With several processes, kernel-memfd, floor and upagerd\n"
			"share one segment (the floor's processes map one memfd, as upagerd's map\n"
			"one segment: the same shmem work behind the ratio) and each process\n"
			"touches its own slice; kernel-anon and minimal have one private mapping\n"
			"per process.  The floor zero-fills with UFFDIO_ZEROPAGE.  Default\n"
			"access: write.\n",
		.write_default = true,
		.default_threads = threads_1_2,
		.default_procs = threads_1_2,
		.systems = missing_systems,
		.targets = missing_targets,
	},
	{
		.name = "file",
		.summary = "first touch of a file-backed segment vs mmap",
		.help = "Every page of a file-backed segment is touched once; the reference is a\n"
			"MAP_PRIVATE mmap of the same file (with the kernel's read-ahead and\n"
			"fault-around: not every first touch faults there).  Variants: --order x\n"
			"--cache x --threads x --procs (defaults seq,random; warm,cold; 1; 1).\n"
			"cold drops the file's pages (posix_fadvise DONTNEED) before each run;\n"
			"warm reads the file through first.  Default access: read.\n"
			"The file is --file PATH, else a temporary file of --pages pages of\n"
			"pseudo-random bytes in $TMPDIR, removed at the end.  minimal and floor\n"
			"fill a page with pread + UFFDIO_COPY.\n",
		.write_default = false,
		.has_cache = true,
		.default_threads = only_1,
		.default_procs = only_1,
		.systems = file_systems,
		.prepare = file_prepare,
		.cleanup = file_cleanup,
		.before_run = file_before_run,
		.targets = file_targets,
	},
	{
		.name = "wp",
		.summary = "first write after a snapshot: copy before write",
		.help = "Every page is populated (written once), the memory is armed, then every\n"
			"page is written once more, timed: a write-protect fault that copies the\n"
			"page first.  kernel-cow: private anonymous memory and fork() of a child\n"
			"that sleeps, so the parent's first write to a page is the kernel's COW\n"
			"fault.  minimal-wp: a memfd MAP_SHARED registered MODE_WP and\n"
			"write-protected; one handler thread pwrite()s the page into a second\n"
			"memfd and un-protects it (UFFDIO_WRITEPROTECT mode 0 wakes the writer).\n"
			"upagerd: a segment attached and populated, then upager_snapshot(); after\n"
			"the run the snapshot is checked to show every page as it was at the cut,\n"
			"and deleted.  Variants: --order x --threads (defaults seq,random; 1,2);\n"
			"one process.  Targets: upagerd's p50 over kernel-cow's and over\n"
			"minimal-wp's.  A daemon without snapshots: upagerd is n/a, no failure.\n",
		.write_default = true,
		.populated = true,
		.one_proc = true,
		.default_threads = threads_1_2,
		.default_procs = only_1,
		.systems = wp_systems,
		.targets = wp_targets,
	},
	{
		.name = "snapshot",
		.summary = "a snapshot's pause on running writers vs fork()",
		.help = "A process has --size populated (default 1G; a list, e.g.\n"
			"--size 64M,256M,1G,4G, for the scaling table) and --writers threads\n"
			"(default 2) storing a counter into random pages nonstop, each store\n"
			"timed.  kernel-fork: fork() of it (anonymous private memory, 4 KiB\n"
			"pages), the child kept until the run ends.  upagerd: a segment attached\n"
			"and populated, then upager_snapshot().  Reported per size (medians of\n"
			"--runs, fork and upagerd runs alternating, fresh memory each): fork()'s\n"
			"time in the caller, upager_snapshot()'s, the daemon's account of the cut\n"
			"(cut_ns, protect_ns, max_hold_ns, writers_held), and the writers' pause:\n"
			"the longest store that overlapped the cut, stores during which the\n"
			"writer was preempted (involuntary context switch) left out.  Target:\n"
			"upagerd's writer pause <= 0.5x fork's.  Each snapshot is deleted after\n"
			"its run; a size without room in MemAvailable is skipped.\n",
		.write_default = true,
		.default_threads = only_1,
		.default_procs = only_1,
		.systems = snapshot_systems,
		.run = snapshot_run,
	},
	{
		.name = "snapmem",
		.summary =
			"memory of snapshots: daemon metadata, private readers",
		.help = "Daemon metadata: upagerd's RssAnon and VmPTE (/proc/PID/status) before a\n"
			"segment of --size (default 1G; a list) exists, after it is populated, and\n"
			"after a snapshot of it is cut, per page of it (target <= 16 B/page;\n"
			"RssShmem is shown apart: frames, not metadata).  Private readers:\n"
			"--readers N forked processes (default 8) attach one snapshot of\n"
			"--reader-size (default 256M) UPAGER_ATTACH_PRIVATE and read every page;\n"
			"memory = (the snapshot's allocated_bytes + the Anonymous pages of the\n"
			"readers' mappings) / its size, target <= 1.1x.  kernel-memfd: the same\n"
			"readers of a populated memfd mapped MAP_PRIVATE.  The daemon's pid must\n"
			"be known (started by the bench, or a --socket daemon that did not\n"
			"detach).\n",
		.write_default = false,
		.default_threads = only_1,
		.default_procs = only_1,
		.systems = snapmem_systems,
		.run = snapmem_run,
	},
	{
		.name = "preload",
		.summary = "an unmodified program with the LD_PRELOAD shim "
			   "vs without",
		.help = "preload-workload, run with and without\n"
			"LD_PRELOAD=libupager-preload.so (UPAGER_SOCKET: the bench's upagerd,\n"
			"UPAGER_REQUIRE=1), each figure's two runs back to back, which goes first\n"
			"alternating; medians of --runs, ratios shim/plain:\n"
			"  first touch: mmap(--size) (default 1G), one byte written a page; the\n"
			"    time the program measures, and the whole process's (fork+exec to\n"
			"    exit); the same through malloc(--size), and reserved PROT_NONE\n"
			"    and opened by mprotect 1 MiB at a time.  Target <= 1.5x.\n"
			"  fork: --size written, fork(), the child reads all of it: the parent's\n"
			"    pause in fork(), the child's read, and while the child holds what it\n"
			"    read, Pss (/proc/PID/smaps_rollup) of parent and child, and for the\n"
			"    shim of upagerd too (and its resident_bytes counter); their sum is\n"
			"    the memory figure.  The child must read the exact bytes.\n"
			"  churn: malloc(2M), write 4 pages, free, --churn N rounds (default\n"
			"    5000): microseconds per round.\n"
			"  small: --size in blocks of 16 B to 1 KiB, allocated and written by\n"
			"    2 threads (the shim's arenas).  Target <= 1.5x.  Then\n"
			"    malloc(64)/free pairs: nanoseconds per pair.\n"
			"A shim run that made no daemon segment is an error.  --program PATH\n"
			"(default preload-workload next to upager-bench) and --shim PATH (default\n"
			"../src/preload/libupager-preload.so next to it; not there: exit 77,\n"
			"skipped).  $UPAGER_PRELOAD_FIRST (a sanitizer build's runtime) is\n"
			"preloaded before the shim.  --quick: 16M, 200 churn rounds, 1 run.\n",
		.write_default = true,
		.default_threads = only_1,
		.default_procs = only_1,
		.systems = preload_systems,
		.prepare = preload_prepare,
		.cleanup = preload_cleanup,
		.run = preload_run,
	},
};

#define NR_WORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

/* ---- command line ---- */

static void usage(FILE *f)
{
	unsigned int i;

	fprintf(f,
		"Usage: upager-bench <workload> [options]\n"
		"       upager-bench <workload> --help\n"
		"\n"
		"Measure first-touch fault latency and throughput of one access pattern on\n"
		"the kernel alone, a minimal userfaultfd handler, the floor, and upagerd,\n"
		"side by side.\n"
		"\n"
		"The floor is the best a userfaultfd handler does on this machine, the\n"
		"reference upagerd is measured against: shmem memory (a memfd, MAP_SHARED)\n"
		"registered MISSING, and for each faulting thread a userfaultfd over its own\n"
		"slice and a handler thread of its own that blocks in poll() and answers\n"
		"with UFFDIO_ZEROPAGE (a file: pread + UFFDIO_COPY).  Faulting thread i and\n"
		"its handler are pinned to CPU (i mod CPUs the bench may use).\n"
		"\n"
		"Workloads:\n");
	for (i = 0; i < NR_WORKLOADS; i++)
		fprintf(f, "  %-10s %s\n", workloads[i].name,
			workloads[i].summary);
	fprintf(f, "\nSystems:\n");
	for (i = 0; bench_all_systems[i]; i++)
		fprintf(f, "  %-14s %s\n", bench_all_systems[i]->name,
			bench_all_systems[i]->summary);
	fprintf(f,
		"\n"
		"Options (every workload):\n"
		"  --pages N          pages per run (K/M/G suffixes; default %d = 64 MiB)\n"
		"  --runs R           measured runs per system; the median is reported (5)\n"
		"  --warmup W         unmeasured runs per system first (1)\n"
		"  --threads LIST     faulting threads per process, e.g. 1,2\n"
		"  --procs LIST       processes sharing the segment, e.g. 1,2\n"
		"  --order LIST       seq, random (rand)\n"
		"  --cache LIST       file only: warm, cold\n"
		"  --systems LIST     systems to run (default: all the workload has)\n"
		"  --access read|write  the timed access (default per workload)\n"
		"  --json             JSON on stdout instead of the table\n"
		"  --json-out PATH    also write the JSON to PATH\n"
		"  --socket PATH      use the upagerd listening there; do not start one\n"
		"  --daemon PATH      the upagerd to start (default: ../src/daemon/upagerd next\n"
		"                     to this program, else upagerd in $PATH)\n"
		"  --daemon-arg ARG   one more argument for the upagerd started, e.g.\n"
		"                     --daemon-arg=--spin-us=20 (repeat for more)\n"
		"  --file PATH        file workload: the source file\n"
		"  --size LIST        snapshot, snapmem: memory sizes, e.g. 64M,256M,1G,4G (1G);\n"
		"                     preload: one size (1G)\n"
		"  --writers N        snapshot: writer threads (2)\n"
		"  --readers N        snapmem: private readers of one snapshot (8)\n"
		"  --reader-size SIZE snapmem: that snapshot's size (256M)\n"
		"  --program PATH     preload: the program (default preload-workload next to\n"
		"                     this program)\n"
		"  --shim PATH        preload: the shim (default\n"
		"                     ../src/preload/libupager-preload.so next to this program)\n"
		"  --churn N          preload: malloc/free rounds of the churn figure (%d)\n"
		"  --seed N           random page order seed (1)\n"
		"  --quick            tiny sizes, 1 run, no warm-up (the test suite)\n"
		"  --no-progress      no progress line on stderr\n"
		"  -h, --help         this help\n"
		"\n"
		"Every first touch of a page is timed in its thread; one that costs about\n"
		"the timer (\"timer N ns\" in the header) did not fault: the pager or the\n"
		"kernel had mapped it ahead (read-ahead, fault-around).\n"
		"\n"
		"Columns, each the median over the runs: p50 .. p99.9 and max (the slowest\n"
		"first touch of a run), us; faults/s and MB/s, pages over the touch phase's\n"
		"wall time; cpu/fault, the pager's CPU time per fault it served, us:\n"
		"minimal's and the floor's handler threads (CLOCK_THREAD_CPUTIME_ID, read\n"
		"as each ends), upagerd's threads over the touch phase (the first field of\n"
		"/proc/PID/task/*/schedstat) per fault its segment counts (missing + minor\n"
		"+ wp: a page it filled ahead costs CPU but is no fault); \"-\" for the\n"
		"kernel, and for upagerd with --socket (its pid is not known).  Under\n"
		"upagerd's row, read-ahead: the pages its segment filled ahead of any fault\n"
		"in the last run, and the hit rate touched / (touched + untouched) of those\n"
		"the daemon checked (\"-\" while none was).\n"
		"\n"
		"Exit status: 0, 1 if a system failed, 2 on a bad option, 77 when preload\n"
		"has no shim to run.  Missed targets are reported, never an error.\n",
		BENCH_DEFAULT_PAGES, BENCH_CHURN_DEFAULT);
}

static void workload_usage(const struct bench_workload *wl, FILE *f)
{
	unsigned int i;

	fprintf(f,
		"Usage: upager-bench %s [options]\n\n%s: %s.\n\n%s\n"
		"Systems:\n",
		wl->name, wl->name, wl->summary, wl->help);
	for (i = 0; wl->systems[i]; i++)
		fprintf(f, "  %-14s %s\n", wl->systems[i]->name,
			wl->systems[i]->summary);
	fprintf(f, "\nOptions: see upager-bench --help.\n");
}

static unsigned int parse_uint(const char *opt, const char *s, unsigned int min,
			       unsigned int max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max || *s == '-')
		die_usage("%s: '%s' is not a number in %u..%u", opt, s, min,
			  max);
	return (unsigned int)v;
}

static unsigned int parse_uint_list(const char *opt, const char *s,
				    unsigned int *out, unsigned int max)
{
	char *dup = strdup(s), *tok, *save = NULL;
	unsigned int n = 0;

	if (!dup)
		abort();
	for (tok = strtok_r(dup, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (n == BENCH_MAX_LIST)
			die_usage("%s: at most %d values", opt, BENCH_MAX_LIST);
		out[n++] = parse_uint(opt, tok, 1, max);
	}
	free(dup);
	if (!n)
		die_usage("%s: empty list", opt);
	return n;
}

/* A LIST of byte counts (K/M/G suffixes), each a whole number of pages. */
static unsigned int parse_size_list(const char *opt, const char *s,
				    uint64_t *out)
{
	char *dup = strdup(s), *tok, *save = NULL;
	uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);
	unsigned int n = 0;

	if (!dup)
		abort();
	for (tok = strtok_r(dup, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (n == BENCH_SNAP_MAX_SIZES)
			die_usage("%s: at most %d values", opt,
				  BENCH_SNAP_MAX_SIZES);
		if (size_parse(tok, &out[n]) < 0 || out[n] < ps ||
		    out[n] > (1ULL << 40) || out[n] % ps)
			die_usage("%s: '%s' is not a size of whole pages "
				  "up to 1T",
				  opt, tok);
		n++;
	}
	free(dup);
	if (!n)
		die_usage("%s: empty list", opt);
	return n;
}

/* Split a LIST of names, each one of @allowed (aliases: "a=b"). */
static unsigned int parse_names(const char *opt, const char *s, const char **out,
				unsigned int max, const char *const *allowed)
{
	char *dup = strdup(s), *tok, *save = NULL;
	unsigned int n = 0, i, j;

	if (!dup)
		abort();
	for (tok = strtok_r(dup, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		const char *name = NULL;

		for (i = 0; allowed[i]; i++) {
			const char *eq = strchr(allowed[i], '=');
			size_t len = eq ? (size_t)(eq - allowed[i]) :
					  strlen(allowed[i]);

			if (strlen(tok) == len &&
			    !strncmp(tok, allowed[i], len)) {
				name = eq ? eq + 1 : allowed[i];
				break;
			}
		}
		if (!name)
			die_usage("%s: unknown value '%s'", opt, tok);
		for (j = 0; j < n; j++)
			if (!strcmp(out[j], name))
				break;
		if (j < n)
			continue;
		if (n == max)
			die_usage("%s: too many values", opt);
		out[n++] = name;
	}
	free(dup);
	if (!n)
		die_usage("%s: empty list", opt);
	return n;
}

enum {
	OPT_PAGES = 256,
	OPT_RUNS,
	OPT_WARMUP,
	OPT_THREADS,
	OPT_PROCS,
	OPT_ORDER,
	OPT_CACHE,
	OPT_SYSTEMS,
	OPT_ACCESS,
	OPT_JSON,
	OPT_JSON_OUT,
	OPT_SOCKET,
	OPT_DAEMON,
	OPT_FILE,
	OPT_SEED,
	OPT_QUICK,
	OPT_NO_PROGRESS,
	OPT_DAEMON_ARG,
	OPT_SIZE,
	OPT_WRITERS,
	OPT_READERS,
	OPT_READER_SIZE,
	OPT_PROGRAM,
	OPT_SHIM,
	OPT_CHURN,
};

static const struct option long_opts[] = {
	{ "pages", required_argument, NULL, OPT_PAGES },
	{ "runs", required_argument, NULL, OPT_RUNS },
	{ "warmup", required_argument, NULL, OPT_WARMUP },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "procs", required_argument, NULL, OPT_PROCS },
	{ "order", required_argument, NULL, OPT_ORDER },
	{ "cache", required_argument, NULL, OPT_CACHE },
	{ "systems", required_argument, NULL, OPT_SYSTEMS },
	{ "access", required_argument, NULL, OPT_ACCESS },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "json-out", required_argument, NULL, OPT_JSON_OUT },
	{ "socket", required_argument, NULL, OPT_SOCKET },
	{ "daemon", required_argument, NULL, OPT_DAEMON },
	{ "daemon-arg", required_argument, NULL, OPT_DAEMON_ARG },
	{ "file", required_argument, NULL, OPT_FILE },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "quick", no_argument, NULL, OPT_QUICK },
	{ "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
	{ "size", required_argument, NULL, OPT_SIZE },
	{ "writers", required_argument, NULL, OPT_WRITERS },
	{ "readers", required_argument, NULL, OPT_READERS },
	{ "reader-size", required_argument, NULL, OPT_READER_SIZE },
	{ "program", required_argument, NULL, OPT_PROGRAM },
	{ "shim", required_argument, NULL, OPT_SHIM },
	{ "churn", required_argument, NULL, OPT_CHURN },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void parse_opts(int argc, char **argv, const struct bench_workload *wl,
		       struct bench_opts *o)
{
	static const char *const order_names[] = {
		"seq", "sequential=seq", "random", "rand=random", NULL,
	};
	static const char *const cache_names[] = { "warm", "cold", NULL };
	static const char *sys_names[BENCH_MAX_SYSTEMS + 1];
	bool runs_set = false, warmup_set = false, reader_size_set = false;
	unsigned int i;
	int opt;

	for (i = 0; bench_all_systems[i]; i++)
		sys_names[i] = bench_all_systems[i]->name;
	sys_names[i] = NULL;
	opterr = 0;
	optind = 2; /* argv[1] is the workload */
	while ((opt = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
		switch (opt) {
		case OPT_PAGES:
			if (size_parse(optarg, &o->pages) < 0 || !o->pages ||
			    o->pages > UINT32_MAX)
				die_usage("--pages: '%s' is not a page count "
					  "in 1..2^32-1",
					  optarg);
			o->pages_set = true;
			break;
		case OPT_RUNS:
			o->runs = parse_uint("--runs", optarg, 1, 1000);
			runs_set = true;
			break;
		case OPT_WARMUP:
			o->warmup = parse_uint("--warmup", optarg, 0, 1000);
			warmup_set = true;
			break;
		case OPT_THREADS:
			o->nr_threads = parse_uint_list("--threads", optarg,
							o->threads,
							BENCH_MAX_THREADS);
			break;
		case OPT_PROCS:
			o->nr_procs = parse_uint_list("--procs", optarg,
						      o->procs, BENCH_MAX_PROCS);
			break;
		case OPT_ORDER:
			o->nr_orders = parse_names("--order", optarg, o->orders,
						   2, order_names);
			break;
		case OPT_CACHE:
			if (!wl->has_cache)
				die_usage("--cache: the %s workload has no "
					  "cache variants",
					  wl->name);
			o->nr_caches = parse_names("--cache", optarg, o->caches,
						   2, cache_names);
			break;
		case OPT_SYSTEMS:
			if (!strcmp(wl->name, "preload"))
				die_usage("--systems: preload runs both sides "
					  "(its figures are their ratios)");
			o->nr_systems = parse_names("--systems", optarg,
						    o->systems,
						    BENCH_MAX_SYSTEMS,
						    sys_names);
			break;
		case OPT_ACCESS:
			if (!strcmp(optarg, "read"))
				o->access = 0;
			else if (!strcmp(optarg, "write"))
				o->access = 1;
			else
				die_usage("--access: '%s' is neither read "
					  "nor write",
					  optarg);
			break;
		case OPT_JSON:
			o->json = true;
			break;
		case OPT_JSON_OUT:
			o->json_out = optarg;
			break;
		case OPT_SOCKET:
			o->socket = optarg;
			break;
		case OPT_DAEMON:
			o->daemon = optarg;
			break;
		case OPT_DAEMON_ARG:
			if (o->nr_daemon_args == 15)
				die_usage("--daemon-arg: at most 15");
			o->daemon_args[o->nr_daemon_args++] = optarg;
			break;
		case OPT_FILE:
			if (strcmp(wl->name, "file"))
				die_usage("--file: only for the file workload");
			o->file = optarg;
			break;
		case OPT_SEED: {
			char *end;

			errno = 0;
			o->seed = strtoull(optarg, &end, 0);
			if (errno || end == optarg || *end)
				die_usage("--seed: '%s' is not a number",
					  optarg);
			break;
		}
		case OPT_QUICK:
			o->quick = true;
			break;
		case OPT_NO_PROGRESS:
			o->progress = false;
			break;
		case OPT_SIZE:
			if (!wl->run)
				die_usage("--size: only for snapshot, snapmem "
					  "and preload (the others take "
					  "--pages)");
			o->nr_sizes = parse_size_list("--size", optarg,
						      o->sizes);
			if (!strcmp(wl->name, "preload") && o->nr_sizes != 1)
				die_usage("--size: preload takes one size");
			break;
		case OPT_PROGRAM:
		case OPT_SHIM:
		case OPT_CHURN:
			if (strcmp(wl->name, "preload"))
				die_usage("--%s: only for preload",
					  opt == OPT_PROGRAM ? "program" :
					  opt == OPT_SHIM    ? "shim" :
							       "churn");
			if (opt == OPT_PROGRAM)
				o->program = optarg;
			else if (opt == OPT_SHIM)
				o->shim = optarg;
			else
				o->churn = parse_uint("--churn", optarg, 1,
						      100000000);
			break;
		case OPT_WRITERS:
			if (strcmp(wl->name, "snapshot"))
				die_usage("--writers: only for snapshot");
			o->writers = parse_uint("--writers", optarg, 1, 16);
			break;
		case OPT_READERS:
			if (strcmp(wl->name, "snapmem"))
				die_usage("--readers: only for snapmem");
			o->readers = parse_uint("--readers", optarg, 1, 64);
			break;
		case OPT_READER_SIZE:
			if (strcmp(wl->name, "snapmem"))
				die_usage("--reader-size: only for snapmem");
			if (parse_size_list("--reader-size", optarg,
					    &o->reader_size) != 1)
				die_usage("--reader-size: one size");
			reader_size_set = true;
			break;
		case 'h':
			workload_usage(wl, stdout);
			exit(0);
		case ':':
			die_usage("%s needs a value", argv[optind - 1]);
		default:
			die_usage("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die_usage("unexpected argument '%s'", argv[optind]);
	if (o->quick) {
		if (!o->pages_set)
			o->pages = BENCH_QUICK_PAGES;
		if (!runs_set)
			o->runs = 1;
		if (!warmup_set)
			o->warmup = 0;
		if (!o->nr_sizes)
			o->sizes[o->nr_sizes++] = BENCH_QUICK_SIZE;
		if (!reader_size_set)
			o->reader_size = BENCH_QUICK_SIZE;
		if (!o->readers)
			o->readers = 2;
		if (!o->churn)
			o->churn = BENCH_CHURN_QUICK;
	}
	if (!o->churn)
		o->churn = BENCH_CHURN_DEFAULT;
	if (!o->nr_sizes)
		o->sizes[o->nr_sizes++] = BENCH_SNAP_DEFAULT_SIZE;
	if (!o->reader_size)
		o->reader_size = BENCH_READERS_DEFAULT_SIZE;
	if (!o->writers)
		o->writers = 2;
	if (!o->readers)
		o->readers = 8;
	if (wl->one_proc &&
	    (o->nr_procs != 0 && (o->nr_procs > 1 || o->procs[0] != 1)))
		die_usage("--procs: the %s workload runs in one process",
			  wl->name);
	if (!o->nr_threads)
		for (; wl->default_threads[o->nr_threads]; o->nr_threads++)
			o->threads[o->nr_threads] =
				wl->default_threads[o->nr_threads];
	if (!o->nr_procs)
		for (; wl->default_procs[o->nr_procs]; o->nr_procs++)
			o->procs[o->nr_procs] = wl->default_procs[o->nr_procs];
	if (!o->nr_orders) {
		o->orders[0] = "seq";
		o->orders[1] = "random";
		o->nr_orders = 2;
	}
	if (wl->has_cache && !o->nr_caches) {
		o->caches[0] = "warm";
		o->caches[1] = "cold";
		o->nr_caches = 2;
	}
}

/* ---- the run loop ---- */

static void select_systems(struct bench_ctx *c)
{
	const struct bench_opts *o = c->o;
	unsigned int i, j;

	for (i = 0; c->wl->systems[i]; i++) {
		const struct bench_system *s = c->wl->systems[i];
		bool want = !o->nr_systems;

		for (j = 0; j < o->nr_systems; j++)
			if (!strcmp(o->systems[j], s->name))
				want = true;
		if (want)
			c->systems[c->nr_systems++] = s;
	}
	for (j = 0; j < o->nr_systems; j++) {
		for (i = 0; i < c->nr_systems; i++)
			if (!strcmp(o->systems[j], c->systems[i]->name))
				break;
		if (i == c->nr_systems)
			fprintf(stderr,
				"upager-bench: %s does not apply to "
				"%s; skipped\n",
				o->systems[j], c->wl->name);
	}
	if (!c->nr_systems)
		die_usage("--systems: none applies to %s", c->wl->name);
}

static unsigned int make_variants(struct bench_ctx *c,
				  struct bench_variant **out)
{
	const struct bench_opts *o = c->o;
	unsigned int nc = c->wl->has_cache ? o->nr_caches : 1;
	unsigned int oi, ti, pi, ci, n = 0;
	struct bench_variant *v;

	v = calloc((size_t)o->nr_orders * o->nr_threads * o->nr_procs * nc,
		   sizeof(*v));
	if (!v)
		abort();
	/* cache outermost for file: all warm results, then all cold */
	for (ci = 0; ci < nc; ci++)
		for (oi = 0; oi < o->nr_orders; oi++)
			for (pi = 0; pi < o->nr_procs; pi++)
				for (ti = 0; ti < o->nr_threads; ti++) {
					struct bench_variant *x = &v[n];

					x->order = o->orders[oi];
					x->threads = o->threads[ti];
					x->procs = o->procs[pi];
					x->cache = c->wl->has_cache ?
							   o->caches[ci] :
							   NULL;
					if ((size_t)x->threads * x->procs >
					    c->pages)
						continue;
					bench_fmt(x->name, sizeof(x->name),
						  "%s/%ut/%up%s%s", x->order,
						  x->threads, x->procs,
						  x->cache ? "/" : "",
						  x->cache ? x->cache : "");
					n++;
				}
	*out = v;
	return n;
}

static void *shared_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("upager-bench: mmap");
		exit(1);
	}
	return p;
}

static void result_finish(struct bench_result *res)
{
	bench_figures_median(res->runs, res->nr_runs, &res->fig);
	bench_dist_compute(res->pool, res->nr_pool, &res->dist);
	free(res->pool);
	res->pool = NULL;
}

int main(int argc, char **argv)
{
	struct bench_opts o = {
		.pages = BENCH_DEFAULT_PAGES,
		.runs = 5,
		.warmup = 1,
		.access = -1,
		.seed = 1,
		.progress = true,
	};
	struct bench_ctx c = { .o = &o, .file_fd = -1 };
	struct bench_report rep = { 0 };
	struct bench_variant *variants;
	struct bench_result *results;
	unsigned int nv, vi, si, it, i;
	bool failed = false;
	struct utsname uts;
	struct sigaction sa = { .sa_handler = on_signal };
	struct sigaction sa_bus = {
		.sa_sigaction = on_sigbus,
		.sa_flags = SA_SIGINFO,
	};
	int r;

	/* stdin is never read; stdout gets the report; stderr only talks */
	r = fd_stdio_guard();
	if (r < 0 || (r & (1 << STDOUT_FILENO))) {
		fprintf(stderr, "upager-bench: %s\n",
			r < 0 ? "cannot open /dev/null" :
				"stdout is closed: the report goes there");
		return 1;
	}
	if (argc < 2)
		die_usage("no workload given");
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		usage(stdout);
		return 0;
	}
	for (i = 0; i < NR_WORKLOADS; i++)
		if (!strcmp(argv[1], workloads[i].name))
			c.wl = &workloads[i];
	if (!c.wl)
		die_usage("unknown workload '%s'", argv[1]);
	parse_opts(argc, argv, c.wl, &o);

	c.main_pid = getpid();
	c.page_size = (size_t)sysconf(_SC_PAGESIZE);
	c.pages = (size_t)o.pages;
	c.write = o.access < 0 ? c.wl->write_default : o.access == 1;
	c.env.page_size = c.page_size;
	c.env.daemon_path = o.daemon;
	c.env.socket_path = o.socket;
	c.env.daemon_args = o.daemon_args;
	c.progress_tty = isatty(STDERR_FILENO);
	select_systems(&c);

	g_ctx = &c;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGBUS, &sa_bus, NULL);

	if (c.wl->prepare) {
		r = c.wl->prepare(&c);
		if (r < 0) {
			fprintf(stderr, "upager-bench: %s: %s\n", c.wl->name,
				c.errmsg[0] ? c.errmsg : strerror(-r));
			c.wl->cleanup(&c);
			return 1;
		}
	}
	for (si = 0; si < c.nr_systems; si++) {
		const struct bench_system *s = c.systems[si];

		if (!s->init)
			continue;
		r = s->init(&c.env);
		if (r == -EOPNOTSUPP &&
		    !strcmp(c.env.error, BENCH_NO_SNAPSHOTS)) {
			/* said in the results: no failure */
			c.sys_failed[si] = c.sys_skipped[si] = true;
		} else if (r < 0) {
			fprintf(stderr, "upager-bench: %s: %s\n", s->name,
				c.env.error[0] ? c.env.error : strerror(-r));
			c.sys_failed[si] = true;
		}
	}
	if (c.wl->run) {
		r = c.wl->run(&c);
		for (si = 0; si < c.nr_systems; si++)
			if (c.systems[si]->fini)
				c.systems[si]->fini(&c.env);
		if (c.wl->cleanup)
			c.wl->cleanup(&c);
		g_ctx = NULL;
		return r;
	}

	c.order = calloc(c.pages, sizeof(*c.order));
	c.samples = shared_alloc(c.pages * sizeof(*c.samples));
	c.ctl = shared_alloc(sizeof(*c.ctl));
	if (!c.order)
		abort();
	nv = make_variants(&c, &variants);
	results = calloc((size_t)nv * c.nr_systems, sizeof(*results));
	if (!results)
		abort();
	for (vi = 0; vi < nv; vi++) {
		for (si = 0; si < c.nr_systems; si++) {
			struct bench_result *res =
				&results[vi * c.nr_systems + si];

			res->workload = c.wl->name;
			res->system = c.systems[si]->name;
			res->access = c.write ? "write" : "read";
			res->variant = variants[vi];
			res->pages = c.pages;
			res->page_size = c.page_size;
			res->reference = c.systems[si]->flags &
					 BENCH_SYS_REFERENCE;
			res->cache_resident = -1;
			res->runs = calloc(o.runs, sizeof(*res->runs));
			if (!res->runs)
				abort();
			if (c.sys_failed[si])
				bench_fmt(res->error, sizeof(res->error), "%s",
					  c.env.error[0] ? c.env.error :
							   "init failed");
			res->skipped = c.sys_skipped[si];
		}
	}

	rep.timer_ns = bench_timer_overhead_ns();
	c.nr_steps = nv * (o.warmup + o.runs) * c.nr_systems;
	c.t0 = bench_now_ns();
	for (vi = 0; vi < nv; vi++) {
		const struct bench_variant *v = &variants[vi];

		make_order(&c, v);
		/* every sample of the variant's runs, until its figures */
		for (si = 0; si < c.nr_systems; si++) {
			struct bench_result *res =
				&results[vi * c.nr_systems + si];

			res->pool = malloc(c.pages * o.runs *
					   sizeof(*res->pool));
			if (!res->pool)
				abort();
		}
		for (it = 0; it < o.warmup + o.runs; it++) {
			bool measured = it >= o.warmup;

			for (si = 0; si < c.nr_systems; si++) {
				struct bench_result *res =
					&results[vi * c.nr_systems + si];
				const struct bench_system *s = c.systems[si];
				struct bench_figures *fig;
				struct bench_sys_stats st = { 0 };
				double resident = -1;
				uint64_t wall = 0;
				char what[160];

				bench_fmt(what, sizeof(what),
					  "%s %s %s %s %u/%u", c.wl->name,
					  v->name, s->name,
					  measured ? "run" : "warm-up",
					  measured ? it - o.warmup + 1 : it + 1,
					  measured ? o.runs : o.warmup);
				progress(&c, what);
				if (res->error[0])
					continue;
				if (c.wl->before_run) {
					r = c.wl->before_run(&c, v, &resident);
					if (r < 0) {
						bench_fmt(res->error,
							  sizeof(res->error),
							  "cache %s: %s",
							  v->cache,
							  strerror(-r));
						continue;
					}
				}
				r = run_one(&c, s, v, &wall, &st);
				if (r < 0) {
					bench_fmt(res->error,
						  sizeof(res->error), "%s",
						  c.errmsg[0] ? c.errmsg :
								strerror(-r));
					continue;
				}
				res->sys_stats = st;
				res->cache_resident = resident;
				if (!measured)
					continue;
				memcpy(res->pool + res->nr_pool, c.samples,
				       c.pages * sizeof(*c.samples));
				res->nr_pool += c.pages;
				fig = &res->runs[res->nr_runs++];
				bench_figures_compute(c.samples, c.pages, wall,
						      c.page_size, fig);
				if (st.cpu_valid && st.faults_served)
					fig->cpu_per_fault_ns =
						(double)st.cpu_ns /
						(double)st.faults_served;
			}
		}
		for (si = 0; si < c.nr_systems; si++)
			result_finish(&results[vi * c.nr_systems + si]);
	}
	progress_end(&c);

	for (i = 0; i < nv * c.nr_systems; i++) {
		if (results[i].error[0] && !results[i].skipped)
			failed = true;
		/* an init failure was said once already */
		if (results[i].error[0] && strcmp(results[i].error, c.env.error))
			fprintf(stderr, "upager-bench: %s %s %s: %s\n",
				results[i].workload, results[i].variant.name,
				results[i].system, results[i].error);
	}
	rep.workload = c.wl->name;
	rep.kernel = uname(&uts) ? NULL : uts.release;
	rep.nr_cpus = sysconf(_SC_NPROCESSORS_ONLN);
	rep.page_size = c.page_size;
	rep.pages = c.pages;
	rep.runs = o.runs;
	rep.warmup = o.warmup;
	rep.seed = o.seed;
	rep.file = c.file_fd >= 0 ? c.file_path : NULL;
	rep.daemon = c.env.daemon_desc[0] ? c.env.daemon_desc : NULL;
	rep.results = results;
	rep.nr_results = (size_t)nv * c.nr_systems;
	c.wl->targets(&rep);

	if (o.json_out) {
		FILE *f = fopen(o.json_out, "w");

		if (!f || bench_report_json(&rep, f) < 0 || fclose(f)) {
			fprintf(stderr, "upager-bench: %s: %s\n", o.json_out,
				strerror(errno));
			failed = true;
		}
	}
	if (o.json) {
		bench_report_json(&rep, stdout);
	} else {
		bench_report_table(&rep, stdout);
		fputc('\n', stdout);
		bench_report_targets(&rep, stdout);
	}
	fflush(stdout);

	for (si = 0; si < c.nr_systems; si++)
		if (c.systems[si]->fini)
			c.systems[si]->fini(&c.env);
	if (c.wl->cleanup)
		c.wl->cleanup(&c);
	g_ctx = NULL;
	for (i = 0; i < nv * c.nr_systems; i++)
		free(results[i].runs);
	free(results);
	free(variants);
	free(c.order);
	return failed ? 1 : 0;
}
