/* SPDX-License-Identifier: MIT */
/*
 * upager-bench: the systems a workload is measured on, behind one table of
 * operations.
 *
 * A run of one system goes:
 *
 *   setup     once, in the bench process: make the memory object (a memfd,
 *             a daemon segment) that every process of the run will share;
 *   attach    in each process that touches pages (the bench process itself,
 *             or each forked child when the variant has several processes):
 *             map it, and for the in-process handlers start their threads;
 *   touch     in each faulting thread: first-touch a slice of the pages,
 *             timing every access;
 *   detach    in the same process as attach: unmap, stop the handler;
 *   teardown  in the bench process: drop the memory object.
 *
 * The systems:
 *   kernel-memfd  a plain memfd mapped MAP_SHARED (children map the
 *                 inherited memfd: the pages are shared);
 *   kernel-anon   a private anonymous mapping (one per process: nothing is
 *                 shared between processes);
 *   kernel-file   a MAP_PRIVATE mmap of the file (file workload only);
 *   minimal       a private anonymous mapping registered MISSING with a
 *                 userfaultfd, served by one handler thread in the same
 *                 process: poll + read + UFFDIO_COPY, the userfaultfd(2)
 *                 manual page's example (one per process, like kernel-anon);
 *   floor         the best a userfaultfd handler can do here, the reference
 *                 upagerd is held to: a memfd mapped MAP_SHARED (shmem, as
 *                 upagerd's segments are; children map the inherited memfd,
 *                 as upagerd's processes share a segment), and every
 *                 faulting thread has a userfaultfd of its own over its own
 *                 slice, registered MISSING, and a handler thread of its own
 *                 that blocks in poll() and answers with UFFDIO_ZEROPAGE (a
 *                 file source: pread + UFFDIO_COPY), one page at a time.
 *                 Both threads are pinned to one CPU (BENCH_SYS_PINNED): a
 *                 fault is two context switches on one CPU, never a wake-up
 *                 across CPUs;
 *   upagerd       a daemon segment: upager_create, then upager_attach in
 *                 every touching process (children upager_connect first).
 *
 * The wp workload's systems populate their memory in attach (every page
 * written once, BENCH_POPULATE_MARK at byte 1) and arm it so that the timed
 * first write to each page takes a write fault that copies the page:
 *   kernel-cow    a private anonymous mapping, then fork() a child that
 *                 sleeps: the parent's first write to a page is the kernel's
 *                 copy-on-write fault (the child is killed in detach);
 *   minimal-wp    a memfd MAP_SHARED registered MODE_WP and write-protected
 *                 (UFFDIO_WRITEPROTECT), one handler thread: on a WP fault it
 *                 pwrite()s the page into a second memfd (a copy before
 *                 write) and un-protects it (UFFDIO_WRITEPROTECT mode 0,
 *                 which wakes the writer);
 *   upagerd (wp)  a daemon segment, attached, populated, then
 *                 upager_snapshot(): the daemon copies each page into the
 *                 snapshot before the first write.  detach checks that the
 *                 snapshot still shows every page as it was at the cut.
 *
 * Workloads choose the memory's content through bench_run.source_fd: -1 is
 * zero-filled, otherwise the file whose pages the mapping must show.
 *
 * The pager's CPU time per fault: the in-process handlers (minimal, floor)
 * read their thread's CPU clock as they end and add it, with the faults
 * they served, to counters shared with the children (bench_run.handlers);
 * teardown reports the sums.  upagerd's is the time on CPU of the daemon's
 * threads (/proc/PID/task/TID/schedstat) from the barrier to the last
 * worker done, read through pager_cpu, over the faults its segment counts.
 */
#ifndef UPAGER_BENCH_SYSTEMS_H
#define UPAGER_BENCH_SYSTEMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench-stats.h"

struct upager;

/* Per invocation: what the systems share across runs. */
struct bench_env {
	size_t page_size;
	const char *daemon_path;	/* --daemon, or NULL to look it up */
	const char *socket_path;	/* --socket, or NULL to start one */
	const char *const *daemon_args; /* more upagerd arguments */

	/* upagerd state, set by its init */
	char sock[108];	       /* the socket the runs use */
	char tmpdir[256];      /* private dir of a started daemon */
	pid_t daemon_pid;      /* 0 when not started by us */
	struct upager *conn;   /* the bench process's connection */
	char daemon_desc[512]; /* for the report */
	unsigned int seq;      /* segment names */
	char error[160];       /* why init failed */
};

/* One run of one system. */
struct bench_run {
	struct bench_env *env;
	size_t pages;
	size_t len;			 /* pages * page size */
	unsigned int threads, procs;	 /* faulting threads per process */
	int source_fd;			 /* -1: zero-filled; else the file */
	int fd;				 /* kernel-memfd: the memfd */
	char name[64];			 /* upagerd: the segment */
	char snap[64];			 /* upagerd (wp): its snapshot */
	struct bench_handlers *handlers; /* minimal, floor: their counters,
					  * shared with the children */
	uint64_t cpu_start;		 /* pager_cpu at the barrier */
	bool cpu_started;
	struct bench_sys_stats stats; /* filled by teardown, if it can */
	char error[160];	      /* why a step failed, when -errno is
				       * not enough; "" otherwise */
};

/* One process's view of a run. */
struct bench_map {
	bool in_child;	   /* a forked child, not the bench */
	unsigned int proc; /* its index: its workers are proc * threads + t */
	char *addr;
	void *priv;
};

/* One faulting thread's share of a run. */
struct bench_touch {
	unsigned int worker; /* proc * threads + thread */
	char *base;
	size_t page_size;
	const uint32_t *order; /* page index of every access */
	size_t lo, hi;	       /* its accesses: [lo, hi) */
	uint64_t *samples;     /* samples[k]: ns of access k */
	bool write;
};

#define BENCH_SYS_REFERENCE 0x1u /* upagerd is compared with it */
#define BENCH_SYS_DAEMON 0x2u	 /* needs init (upagerd) */
/* faulting threads start pinned to bench_worker_cpu(worker) */
#define BENCH_SYS_PINNED 0x4u

struct bench_system {
	const char *name;
	const char *summary;
	unsigned int flags;
	/* once per invocation; optional; fini is called even if init failed */
	int (*init)(struct bench_env *env);
	void (*fini)(struct bench_env *env);
	int (*setup)(struct bench_run *run);
	int (*attach)(struct bench_run *run, struct bench_map *map);
	void (*touch)(const struct bench_touch *t);
	int (*detach)(struct bench_run *run, struct bench_map *map);
	void (*teardown)(struct bench_run *run);
	/*
	 * optional, in the bench process: the CPU ns a pager outside the
	 * bench has used so far, read at the barrier and once every worker
	 * is done; 0 or -errno when it cannot be read
	 */
	int (*pager_cpu)(struct bench_run *run, uint64_t *ns);
};

extern const struct bench_system bench_kernel_memfd;
extern const struct bench_system bench_kernel_anon;
extern const struct bench_system bench_kernel_file;
extern const struct bench_system bench_minimal;
extern const struct bench_system bench_floor;
extern const struct bench_system bench_upagerd;
extern const struct bench_system bench_kernel_cow;
extern const struct bench_system bench_minimal_wp;
extern const struct bench_system bench_upagerd_wp;
extern const struct bench_system bench_kernel_fork; /* snapshot: a name */

/* Written at byte 1 of every page by the wp systems' populate. */
#define BENCH_POPULATE_MARK 0x5a

/*
 * What a system's init sets in env->error when the daemon has no snapshots
 * (its init then returns -EOPNOTSUPP): the results say it, and it is no
 * failure of the bench.
 */
#define BENCH_NO_SNAPSHOTS "n/a (daemon without snapshots)"

/*
 * Start or reach upagerd (as the upagerd system's init), and stop it (fini,
 * which accepts an env whose init failed).
 */
int bench_upagerd_init(struct bench_env *env);
void bench_upagerd_fini(struct bench_env *env);

/*
 * Does the daemon of env->conn cut snapshots?  0 if it does, -EOPNOTSUPP
 * (env->error says BENCH_NO_SNAPSHOTS) if not, or another -errno.
 */
int bench_upagerd_probe_snapshots(struct bench_env *env);

/* The daemon's pid: started by the bench, or the socket's peer; or -errno. */
pid_t bench_upagerd_pid(const struct bench_env *env);

/* Every page of [base, base + len) written once: the populate mark. */
void bench_populate(char *base, size_t len, size_t page_size);

/* Turn transparent huge pages off for a range (every system is at 4 KiB). */
void bench_no_huge(void *addr, size_t len);

/*
 * In the child of a fork() by @parent (its pid, read before): sleep until
 * killed, dying with @parent, or at once if @parent is already gone.  The
 * child keeps the parent's memory shared, copy on write.
 */
_Noreturn void bench_child_sleep(pid_t parent);

/*
 * Every system, for --systems and --help (upagerd once: the wp workload's
 * is the same daemon, set up otherwise).
 */
extern const struct bench_system *const bench_all_systems[];

/* First of the @nw slices of @n accesses (pages) of worker @w. */
static inline size_t bench_slice_lo(size_t n, unsigned int w, unsigned int nw)
{
	return (size_t)((unsigned __int128)n * w / nw);
}

/*
 * The CPU of worker @w of a pinned system: the (@w mod count)-th CPU the
 * bench may run on (all online CPUs, unless it was started under taskset).
 */
int bench_worker_cpu(unsigned int w);

/* The timed first touch every system uses. */
void bench_touch_timed(const struct bench_touch *t);

/* xorshift64*: the pseudo-random page orders and file contents. */
static inline uint64_t bench_xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* CLOCK_MONOTONIC in ns. */
uint64_t bench_now_ns(void);

/* Median cost of the timing pair around an access that does not fault. */
double bench_timer_overhead_ns(void);

/*
 * Has the daemon we started died?  Returns 0 (alive, or not ours) or
 * -ECHILD with @msg saying how it ended; it is reaped then.
 */
int bench_env_check_daemon(struct bench_env *env, char *msg, size_t len);

/*
 * Stop a daemon we started and remove its directory.  Async-signal-safe:
 * the SIGINT handler calls it.
 */
void bench_env_kill_daemon(struct bench_env *env);

#endif
