// SPDX-License-Identifier: MIT
/*
 * upager-bench: the systems (see bench-systems.h for the model).
 *
 * The kernel references and the minimal handler are here to give upagerd's
 * figures a scale: the kernel alone is what no user-space pager can beat on
 * a missing fault, and the minimal handler is what the textbook design costs
 * on this machine (two thread hand-offs per fault, across CPUs as often as
 * not).  Both are kept exactly plain on purpose: a tuned reference would
 * hide what the daemon adds.
 *
 * The floor is the other end: the least a userfaultfd round trip costs
 * here, with nothing shared between faulting threads (a uffd and a handler
 * each) and no wake-up crossing CPUs (each handler pinned beside its
 * faulting thread, blocking in poll() so the two take turns on the CPU).
 * A daemon serving many processes cannot place itself like that; how close
 * it comes is the ratio the targets read.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <upager/upager.h>

#include "bench-systems.h"
#include "list.h" /* container_of */
#include "uffd.h"

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t ts_ns(const struct timespec *ts)
{
	return (uint64_t)ts->tv_sec * 1000000000ULL + (uint64_t)ts->tv_nsec;
}

void bench_touch_timed(const struct bench_touch *t)
{
	struct timespec a, b;
	size_t k;

	for (k = t->lo; k < t->hi; k++) {
		volatile char *p = t->base + (size_t)t->order[k] * t->page_size;

		/*
		 * The access is volatile and clock_gettime is an opaque call:
		 * the compiler cannot move it out of the pair, and a fault is
		 * taken before the second reading can complete.
		 */
		clock_gettime(CLOCK_MONOTONIC, &a);
		if (t->write)
			*p = 1;
		else
			(void)*p;
		clock_gettime(CLOCK_MONOTONIC, &b);
		t->samples[k] = ts_ns(&b) - ts_ns(&a);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

double bench_timer_overhead_ns(void)
{
	enum { N = 4001 };
	static uint64_t ns[N];
	uint32_t order[N] = { 0 };
	char page[64] = { 0 };
	struct bench_touch t = {
		.base = page,
		.page_size = 0,
		.order = order,
		.lo = 0,
		.hi = N,
		.samples = ns,
		.write = true,
	};

	bench_touch_timed(&t);
	qsort(ns, N, sizeof(ns[0]), cmp_u64);
	return (double)ns[N / 2];
}

/*
 * Transparent huge pages would turn 512 first touches into one fault and
 * 511 plain accesses; every system is measured at 4 KiB.
 */
void bench_no_huge(void *addr, size_t len)
{
	madvise(addr, len, MADV_NOHUGEPAGE);
}

/* ---- kernel-memfd ---- */

static int memfd_setup(struct bench_run *run)
{
	if (run->source_fd >= 0)
		return -EINVAL;
	run->fd = memfd_create("upager-bench", MFD_CLOEXEC);
	if (run->fd < 0)
		return -errno;
	if (ftruncate(run->fd, (off_t)run->len) < 0) {
		int r = -errno;

		close(run->fd);
		run->fd = -1;
		return r;
	}
	return 0;
}

static int memfd_attach(struct bench_run *run, struct bench_map *map)
{
	void *p = mmap(NULL, run->len, PROT_READ | PROT_WRITE, MAP_SHARED,
		       run->fd, 0);

	if (p == MAP_FAILED)
		return -errno;
	bench_no_huge(p, run->len);
	map->addr = p;
	return 0;
}

static int unmap_detach(struct bench_run *run, struct bench_map *map)
{
	if (map->addr && munmap(map->addr, run->len) < 0)
		return -errno;
	map->addr = NULL;
	return 0;
}

static void memfd_teardown(struct bench_run *run)
{
	if (run->fd >= 0)
		close(run->fd);
	run->fd = -1;
}

const struct bench_system bench_kernel_memfd = {
	.name = "kernel-memfd",
	.summary = "plain memfd, MAP_SHARED (children share it)",
	.flags = BENCH_SYS_REFERENCE,
	.setup = memfd_setup,
	.attach = memfd_attach,
	.touch = bench_touch_timed,
	.detach = unmap_detach,
	.teardown = memfd_teardown,
};

/* ---- kernel-anon ---- */

static int nothing_setup(struct bench_run *run)
{
	(void)run;
	return 0;
}

static void nothing_teardown(struct bench_run *run)
{
	(void)run;
}

static int anon_attach(struct bench_run *run, struct bench_map *map)
{
	void *p;

	if (run->source_fd >= 0)
		return -EINVAL;
	p = mmap(NULL, run->len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	bench_no_huge(p, run->len);
	map->addr = p;
	return 0;
}

const struct bench_system bench_kernel_anon = {
	.name = "kernel-anon",
	.summary = "private anonymous mapping (one per process)",
	.flags = BENCH_SYS_REFERENCE,
	.setup = nothing_setup,
	.attach = anon_attach,
	.touch = bench_touch_timed,
	.detach = unmap_detach,
	.teardown = nothing_teardown,
};

/* ---- kernel-file ---- */

static int file_attach(struct bench_run *run, struct bench_map *map)
{
	void *p;

	if (run->source_fd < 0)
		return -EINVAL;
	/* private: a write access copies the page, the file stays intact */
	p = mmap(NULL, run->len, PROT_READ | PROT_WRITE, MAP_PRIVATE,
		 run->source_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	map->addr = p;
	return 0;
}

const struct bench_system bench_kernel_file = {
	.name = "kernel-file",
	.summary = "mmap of the file, MAP_PRIVATE (kernel read-ahead)",
	.flags = BENCH_SYS_REFERENCE,
	.setup = nothing_setup,
	.attach = file_attach,
	.touch = bench_touch_timed,
	.detach = unmap_detach,
	.teardown = nothing_teardown,
};

/* ---- the in-process handlers' CPU time ---- */

/* Shared with the run's children: each handler adds itself as it ends. */
struct bench_handlers {
	_Atomic uint64_t cpu_ns;
	_Atomic uint64_t faults;
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
		return 0;
	return ts_ns(&ts);
}

static int handlers_setup(struct bench_run *run)
{
	void *p = mmap(NULL, sizeof(*run->handlers), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	run->handlers = p;
	return 0;
}

/* A handler thread's last words: its CPU time and the faults it served. */
static void handlers_add(struct bench_handlers *hs, uint64_t faults)
{
	if (!hs)
		return;
	atomic_fetch_add(&hs->cpu_ns, thread_cpu_ns());
	atomic_fetch_add(&hs->faults, faults);
}

static void handlers_teardown(struct bench_run *run)
{
	struct bench_sys_stats *s = &run->stats;

	if (!run->handlers)
		return;
	s->cpu_valid = true;
	s->cpu_ns = atomic_load(&run->handlers->cpu_ns);
	s->faults_served = atomic_load(&run->handlers->faults);
	munmap(run->handlers, sizeof(*run->handlers));
	run->handlers = NULL;
}

/* ---- the in-process handler threads (minimal, minimal-wp, floor) ---- */

/*
 * One handler thread over one userfaultfd: it blocks in poll() on the uffd
 * and on a stop eventfd (the floor's one stops every handler of a process),
 * and serves each page fault with serve().  It ends when stopfd is written,
 * or on its first error, which handler_join() returns.
 */
struct uffd_handler {
	int uffd;
	int stopfd;
	char *lo; /* the range registered: [lo, lo + len) */
	size_t len;
	size_t page_size;
	bool plain_read; /* read(2), as the manual page's example does */
	/* serve the fault @msg at @addr, its page; 0 or -errno */
	int (*serve)(struct uffd_handler *h, const struct uffd_msg *msg,
		     unsigned long addr);
	struct bench_handlers *handlers;
	pthread_t thread;
	bool started;
	uint64_t faults;
	int error; /* -errno of the handler, read after join */
};

/* One message of the uffd: 1, 0 to poll again, or -errno. */
static ssize_t handler_read(struct uffd_handler *h, struct uffd_msg *msg)
{
	ssize_t n;

	if (!h->plain_read)
		return uffd_read(h->uffd, msg, 1);
	n = read(h->uffd, msg, sizeof(*msg));
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	return n == sizeof(*msg) ? 1 : -EPROTO;
}

static void *handler_thread(void *arg)
{
	struct uffd_handler *h = arg;
	struct uffd_msg msg;
	ssize_t n;
	int r;

	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = h->uffd, .events = POLLIN },
			{ .fd = h->stopfd, .events = POLLIN },
		};

		/* blocks: a pinned handler's faulting thread needs its CPU */
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			h->error = -errno;
			break;
		}
		if (pfd[1].revents)
			break;
		n = handler_read(h, &msg);
		if (n < 0) {
			h->error = (int)n;
			break;
		}
		if (!n)
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT) {
			h->error = -EPROTO;
			break;
		}
		r = h->serve(h, &msg,
			     (unsigned long)msg.arg.pagefault.address &
				     ~(unsigned long)(h->page_size - 1));
		if (r < 0) {
			h->error = r;
			break;
		}
		h->faults++;
	}
	/* unregistering wakes the faulting threads: never a hang */
	if (h->error)
		uffd_unregister(h->uffd, (uintptr_t)h->lo, h->len);
	handlers_add(h->handlers, h->faults);
	return NULL;
}

/* Start @h's thread, pinned to @cpu unless it is -1. */
static int handler_start(struct uffd_handler *h, int cpu)
{
	pthread_attr_t attr;
	cpu_set_t cpus;
	int r;

	if (cpu < 0) {
		r = -pthread_create(&h->thread, NULL, handler_thread, h);
	} else {
		CPU_ZERO(&cpus);
		CPU_SET(cpu, &cpus);
		r = -pthread_attr_init(&attr);
		if (r < 0)
			return r;
		r = -pthread_attr_setaffinity_np(&attr, sizeof(cpus), &cpus);
		if (!r)
			r = -pthread_create(&h->thread, &attr, handler_thread,
					    h);
		pthread_attr_destroy(&attr);
	}
	if (r < 0)
		return r;
	h->started = true;
	return 0;
}

/* Tell every handler on @stopfd to end (-1: none was started). */
static void signal_stop(int stopfd)
{
	uint64_t one = 1;

	if (stopfd >= 0 && write(stopfd, &one, sizeof(one)) != sizeof(one))
		abort(); /* an eventfd write cannot fail here */
}

/* Join @h once it was told to stop; its error. */
static int handler_join(struct uffd_handler *h)
{
	if (!h->started)
		return 0;
	pthread_join(h->thread, NULL);
	h->started = false;
	return h->error;
}

/* ---- minimal, minimal-wp: one handler thread over the whole mapping ---- */

struct minimal {
	struct uffd_handler h; /* its stopfd is the minimal's own */
	char *base;
	size_t len;
	int source_fd; /* minimal */
	char *page;    /* minimal: the page it copies in */
	int copyfd;    /* minimal-wp: the copies, a memfd as large */
};

static struct minimal *minimal_new(struct bench_run *run)
{
	struct minimal *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->h.uffd = m->h.stopfd = m->copyfd = -1;
	m->len = run->len;
	m->h.page_size = run->env->page_size;
	m->h.handlers = run->handlers;
	m->source_fd = run->source_fd;
	return m;
}

static void minimal_free(struct minimal *m)
{
	if (!m)
		return;
	if (m->h.uffd >= 0)
		close(m->h.uffd);
	if (m->h.stopfd >= 0)
		close(m->h.stopfd);
	if (m->copyfd >= 0)
		close(m->copyfd);
	if (m->base)
		munmap(m->base, m->len);
	free(m->page);
	free(m);
}

/* The mapping registered: start the handler, serving with @serve. */
static int minimal_start(struct minimal *m, struct bench_map *map,
			 int (*serve)(struct uffd_handler *,
				      const struct uffd_msg *, unsigned long))
{
	int r;

	m->h.stopfd = eventfd(0, EFD_CLOEXEC);
	if (m->h.stopfd < 0)
		return -errno;
	m->h.lo = m->base;
	m->h.len = m->len;
	m->h.serve = serve;
	r = handler_start(&m->h, -1);
	if (r < 0)
		return r;
	map->addr = m->base;
	map->priv = m;
	return 0;
}

static int minimal_detach(struct bench_run *run, struct bench_map *map)
{
	struct minimal *m = map->priv;
	int r;

	(void)run;
	if (!m)
		return 0;
	signal_stop(m->h.stopfd);
	r = handler_join(&m->h);
	minimal_free(m);
	map->priv = NULL;
	map->addr = NULL;
	return r;
}

/* ---- minimal: the userfaultfd(2) example, one handler thread ---- */

static int minimal_fill(struct uffd_handler *h, const struct uffd_msg *msg,
			unsigned long addr)
{
	struct minimal *m = container_of(h, struct minimal, h);
	int r;

	(void)msg;
	if (m->source_fd >= 0) {
		off_t off = (off_t)(addr - (unsigned long)m->base);
		ssize_t n = pread(m->source_fd, m->page, h->page_size, off);

		if (n < 0)
			return -errno;
		/* past the end of the file reads as zero */
		memset(m->page + n, 0, h->page_size - (size_t)n);
	}
	r = uffd_copy(h->uffd, addr, m->page, h->page_size, true, NULL);
	return r == -EEXIST ? 0 : r;
}

static int minimal_attach(struct bench_run *run, struct bench_map *map)
{
	struct minimal *m;
	void *p;
	int r;

	m = minimal_new(run);
	if (!m)
		return -ENOMEM;
	m->h.plain_read = true;
	p = mmap(NULL, m->len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	m->base = p;
	bench_no_huge(p, m->len);
	m->page = aligned_alloc(m->h.page_size, m->h.page_size);
	if (!m->page) {
		r = -ENOMEM;
		goto fail;
	}
	memset(m->page, 0, m->h.page_size);
	/* no feature: anonymous memory, missing faults */
	r = uffd_open(0, 0, 0, NULL);
	if (r < 0)
		goto fail;
	m->h.uffd = r;
	r = uffd_register(m->h.uffd, (uintptr_t)m->base, m->len,
			  UFFDIO_REGISTER_MODE_MISSING, NULL);
	if (r < 0)
		goto fail;
	r = minimal_start(m, map, minimal_fill);
	if (r < 0)
		goto fail;
	return 0;
fail:
	minimal_free(m);
	return r;
}

const struct bench_system bench_minimal = {
	.name = "minimal",
	.summary = "uffd MISSING on anon memory, 1 handler thread "
		   "(textbook)",
	.flags = BENCH_SYS_REFERENCE,
	.setup = handlers_setup,
	.attach = minimal_attach,
	.touch = bench_touch_timed,
	.detach = minimal_detach,
	.teardown = handlers_teardown,
};

/* ---- floor: a userfaultfd and a handler per faulting thread, pinned ---- */

static cpu_set_t worker_cpus;
static int nr_worker_cpus;
static pthread_once_t worker_cpus_once = PTHREAD_ONCE_INIT;

static void worker_cpus_init(void)
{
	/*
	 * The first call comes from a thread that is not pinned (the bench's
	 * or a child's main thread): its mask is the one the bench started
	 * with.
	 */
	if (sched_getaffinity(0, sizeof(worker_cpus), &worker_cpus) < 0) {
		CPU_ZERO(&worker_cpus);
		CPU_SET(0, &worker_cpus);
	}
	nr_worker_cpus = CPU_COUNT(&worker_cpus);
}

int bench_worker_cpu(unsigned int w)
{
	int cpu, k;

	pthread_once(&worker_cpus_once, worker_cpus_init);
	k = (int)(w % (unsigned int)nr_worker_cpus);
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &worker_cpus) && !k--)
			return cpu;
	return 0;
}

struct floor_handler {
	struct uffd_handler h; /* over its worker's slice */
	struct floor *f;
	char *page; /* the file source's bounce buffer */
};

struct floor {
	int stopfd; /* one eventfd stops every handler of the process */
	char *base;
	size_t len;
	size_t page_size;
	int source_fd;
	struct bench_handlers *handlers;
	unsigned int nr;
	struct floor_handler h[];
};

static int floor_fill(struct uffd_handler *uh, const struct uffd_msg *msg,
		      unsigned long addr)
{
	struct floor_handler *h = container_of(uh, struct floor_handler, h);
	struct floor *f = h->f;
	ssize_t n;
	int r;

	(void)msg;
	if (f->source_fd < 0) {
		r = uffd_zeropage(uh->uffd, addr, f->page_size, true, NULL);
	} else {
		n = pread(f->source_fd, h->page, f->page_size,
			  (off_t)(addr - (unsigned long)f->base));
		if (n < 0)
			return -errno;
		/* past the end of the file reads as zero */
		memset(h->page + n, 0, f->page_size - (size_t)n);
		r = uffd_copy(uh->uffd, addr, h->page, f->page_size, true, NULL);
	}
	return r == -EEXIST ? 0 : r;
}

/* Stop and join the handlers; returns the first handler's error. */
static int floor_stop(struct floor *f)
{
	unsigned int i;
	int r = 0, e;

	signal_stop(f->stopfd);
	for (i = 0; i < f->nr; i++) {
		e = handler_join(&f->h[i].h);
		if (e && !r)
			r = e;
	}
	return r;
}

static void floor_free(struct floor *f)
{
	unsigned int i;

	if (!f)
		return;
	floor_stop(f);
	for (i = 0; i < f->nr; i++) {
		if (f->h[i].h.uffd >= 0)
			close(f->h[i].h.uffd);
		free(f->h[i].page);
	}
	if (f->stopfd >= 0)
		close(f->stopfd);
	if (f->base)
		munmap(f->base, f->len);
	free(f);
}

/* floor, minimal-wp: the handlers' counters and the memfd */
static void memfd_handlers_teardown(struct bench_run *run)
{
	handlers_teardown(run);
	memfd_teardown(run);
}

static int floor_setup(struct bench_run *run)
{
	int r;

	run->fd = memfd_create("upager-bench-floor", MFD_CLOEXEC);
	if (run->fd < 0)
		return -errno;
	if (ftruncate(run->fd, (off_t)run->len) < 0)
		r = -errno;
	else
		r = handlers_setup(run);
	if (r < 0)
		memfd_handlers_teardown(run);
	return r;
}

/* The userfaultfd and the pinned handler of worker @w, over its slice. */
static int floor_handler_start(struct bench_run *run, struct floor *f,
			       struct floor_handler *h, unsigned int w)
{
	unsigned int nw = run->threads * run->procs;
	size_t lo = bench_slice_lo(run->pages, w, nw);
	size_t hi = bench_slice_lo(run->pages, w + 1, nw);
	uint64_t need = f->source_fd < 0 ? (uint64_t)1 << _UFFDIO_ZEROPAGE :
					   (uint64_t)1 << _UFFDIO_COPY;
	uint64_t ioctls;
	int r;

	h->f = f;
	h->h.stopfd = f->stopfd;
	h->h.lo = f->base + lo * f->page_size;
	h->h.len = (hi - lo) * f->page_size;
	h->h.page_size = f->page_size;
	h->h.serve = floor_fill;
	h->h.handlers = f->handlers;
	if (f->source_fd >= 0) {
		h->page = aligned_alloc(f->page_size, f->page_size);
		if (!h->page)
			return -ENOMEM;
	}
	/* no feature: shmem missing faults need none */
	r = uffd_open(0, 0, 0, NULL);
	if (r < 0)
		return r;
	h->h.uffd = r;
	if (!h->h.len)
		return 0;
	r = uffd_register(h->h.uffd, (uintptr_t)h->h.lo, h->h.len,
			  UFFDIO_REGISTER_MODE_MISSING, &ioctls);
	if (r < 0)
		return r;
	if ((ioctls & need) != need)
		return -EOPNOTSUPP;
	return handler_start(&h->h, bench_worker_cpu(w));
}

static int floor_attach(struct bench_run *run, struct bench_map *map)
{
	struct floor *f;
	unsigned int t;
	void *p;
	int r;

	f = calloc(1, sizeof(*f) + run->threads * sizeof(f->h[0]));
	if (!f)
		return -ENOMEM;
	f->stopfd = -1;
	f->len = run->len;
	f->page_size = run->env->page_size;
	f->source_fd = run->source_fd;
	f->handlers = run->handlers;
	f->nr = run->threads;
	for (t = 0; t < f->nr; t++)
		f->h[t].h.uffd = -1;
	p = mmap(NULL, f->len, PROT_READ | PROT_WRITE, MAP_SHARED, run->fd, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	f->base = p;
	bench_no_huge(p, f->len);
	f->stopfd = eventfd(0, EFD_CLOEXEC);
	if (f->stopfd < 0) {
		r = -errno;
		goto fail;
	}
	for (t = 0; t < f->nr; t++) {
		r = floor_handler_start(run, f, &f->h[t],
					map->proc * run->threads + t);
		if (r < 0)
			goto fail;
	}
	map->addr = f->base;
	map->priv = f;
	return 0;
fail:
	floor_free(f);
	return r;
}

static int floor_detach(struct bench_run *run, struct bench_map *map)
{
	struct floor *f = map->priv;
	int r;

	(void)run;
	if (!f)
		return 0;
	r = floor_stop(f);
	floor_free(f);
	map->priv = NULL;
	map->addr = NULL;
	return r;
}

const struct bench_system bench_floor = {
	.name = "floor",
	.summary = "best uffd handler: shmem, uffd + handler per thread, "
		   "pinned",
	.flags = BENCH_SYS_REFERENCE | BENCH_SYS_PINNED,
	.setup = floor_setup,
	.attach = floor_attach,
	.touch = bench_touch_timed,
	.detach = floor_detach,
	.teardown = memfd_handlers_teardown,
};

/* ---- upagerd ---- */

struct upagerd_map {
	struct upager *conn; /* a child's own connection, or NULL */
	struct upager_attachment *att;
};

/* ../src/daemon/upagerd next to the bench in a build tree, else $PATH. */
static const char *daemon_lookup(const struct bench_env *env, char *buf,
				 size_t len)
{
	char exe[PATH_MAX];
	ssize_t n;

	if (env->daemon_path)
		return env->daemon_path;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		bench_fmt(buf, len, "%s/../src/daemon/upagerd", dirname(exe));
		if (access(buf, X_OK) == 0)
			return buf;
	}
	return "upagerd";
}

static int daemon_start(struct bench_env *env)
{
	char pathbuf[PATH_MAX + 32];
	const char *path = daemon_lookup(env, pathbuf, sizeof(pathbuf));
	const char *tmp = getenv("TMPDIR");
	uint64_t deadline;
	int pipefd[2], err = 0, r, status, n;
	unsigned int i;
	pid_t pid;

	if (!tmp || !*tmp)
		tmp = "/tmp";
	bench_fmt(env->tmpdir, sizeof(env->tmpdir), "%s/upager-bench.XXXXXX",
		  tmp);
	if (!mkdtemp(env->tmpdir)) {
		r = -errno;
		bench_fmt(env->error, sizeof(env->error), "mkdtemp %s: %s",
			  env->tmpdir, strerror(-r));
		env->tmpdir[0] = '\0';
		return r;
	}
	if ((size_t)bench_fmt(env->sock, sizeof(env->sock), "%s/bench.sock",
			      env->tmpdir) >= sizeof(env->sock)) {
		bench_fmt(env->error, sizeof(env->error),
			  "socket path too long under %s", env->tmpdir);
		return -ENAMETOOLONG;
	}
	/* the child reports a failed exec through a close-on-exec pipe */
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(pipefd[0]);
		close(pipefd[1]);
		return r;
	}
	if (!pid) {
		char *argv[6 + 16 + 1] = {
			(char *)path,	"--socket",    env->sock,
			"--foreground", "--log-level", "warning",
		};
		for (i = 0; env->daemon_args && env->daemon_args[i] && i < 16;
		     i++)
			argv[6 + i] = (char *)env->daemon_args[i];

		/* never outlive the bench, even after a SIGKILL */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		/* keep --json on stdout clean */
		dup2(STDERR_FILENO, STDOUT_FILENO);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		if (strchr(path, '/'))
			execv(path, argv);
		else
			execvp(path, argv);
		err = errno;
		if (write(pipefd[1], &err, sizeof(err)) < 0)
			_exit(127);
		_exit(127);
	}
	close(pipefd[1]);
	env->daemon_pid = pid;
	if (read(pipefd[0], &err, sizeof(err)) == sizeof(err)) {
		close(pipefd[0]);
		waitpid(pid, NULL, 0);
		env->daemon_pid = 0;
		bench_fmt(env->error, sizeof(env->error),
			  "cannot run %s: %s (use --daemon PATH or --socket)",
			  path, strerror(err));
		return -err;
	}
	close(pipefd[0]);
	n = bench_fmt(env->daemon_desc, sizeof(env->daemon_desc),
		      "started %s (pid %d) on %s", path, (int)pid, env->sock);
	for (i = 0; env->daemon_args && env->daemon_args[i]; i++)
		if (n >= 0 && (size_t)n < sizeof(env->daemon_desc))
			n += bench_fmt(env->daemon_desc + n,
				       sizeof(env->daemon_desc) - (size_t)n,
				       " %s", env->daemon_args[i]);

	deadline = bench_now_ns() + 5000000000ULL;
	for (;;) {
		r = upager_connect(env->sock, &env->conn);
		if (!r)
			return 0;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			env->daemon_pid = 0;
			bench_fmt(env->error, sizeof(env->error),
				  "%s exited (%s %d) before accepting "
				  "connections",
				  path, WIFEXITED(status) ? "status" : "signal",
				  WIFEXITED(status) ? WEXITSTATUS(status) :
						      WTERMSIG(status));
			return -ECHILD;
		}
		if (bench_now_ns() > deadline) {
			bench_fmt(env->error, sizeof(env->error),
				  "%s did not accept connections on %s "
				  "within 5 s: %s",
				  path, env->sock, strerror(-r));
			return -ETIMEDOUT;
		}
		usleep(10000);
	}
}

int bench_upagerd_init(struct bench_env *env)
{
	int r;

	if (!env->socket_path)
		return daemon_start(env);
	if (strlen(env->socket_path) >= sizeof(env->sock)) {
		bench_fmt(env->error, sizeof(env->error),
			  "socket path too long: %s", env->socket_path);
		return -ENAMETOOLONG;
	}
	strcpy(env->sock, env->socket_path);
	r = upager_connect(env->sock, &env->conn);
	if (r < 0) {
		bench_fmt(env->error, sizeof(env->error),
			  "cannot connect to upagerd at %s: %s", env->sock,
			  strerror(-r));
		return r;
	}
	bench_fmt(env->daemon_desc, sizeof(env->daemon_desc),
		  "existing daemon on %s", env->sock);
	return 0;
}

int bench_env_check_daemon(struct bench_env *env, char *msg, size_t len)
{
	int status;

	if (env->daemon_pid <= 0 ||
	    waitpid(env->daemon_pid, &status, WNOHANG) != env->daemon_pid)
		return 0;
	env->daemon_pid = 0;
	bench_fmt(msg, len, "upagerd %s %d",
		  WIFSIGNALED(status) ? "died of signal" : "exited with status",
		  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	return -ECHILD;
}

void bench_env_kill_daemon(struct bench_env *env)
{
	struct timespec tick = { 0, 10000000 };
	pid_t pid = env->daemon_pid;
	int i;

	if (pid > 0) {
		kill(pid, SIGTERM);
		for (i = 0; i < 500; i++) {
			if (waitpid(pid, NULL, WNOHANG) != 0)
				break;
			nanosleep(&tick, NULL);
		}
		if (i == 500) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
		env->daemon_pid = 0;
	}
	if (env->tmpdir[0]) {
		/* the daemon should have removed its socket; make sure */
		unlink(env->sock);
		rmdir(env->tmpdir);
		env->tmpdir[0] = '\0';
	}
}

void bench_upagerd_fini(struct bench_env *env)
{
	upager_disconnect(env->conn);
	env->conn = NULL;
	bench_env_kill_daemon(env);
}

static int upagerd_setup(struct bench_run *run)
{
	struct upager_create_opts opts = {
		.size = run->len,
		.source_fd = run->source_fd,
		.mode = 0600,
	};

	bench_fmt(run->name, sizeof(run->name), "bench-%d-%u", (int)getpid(),
		  ++run->env->seq);
	return upager_create(run->env->conn, run->name, &opts);
}

static int upagerd_attach(struct bench_run *run, struct bench_map *map)
{
	struct upagerd_map *um;
	struct upager *conn = run->env->conn;
	int r;

	um = calloc(1, sizeof(*um));
	if (!um)
		return -ENOMEM;
	/* a child must not speak on the bench's connection: its own */
	if (map->in_child) {
		r = upager_connect(run->env->sock, &um->conn);
		if (r < 0)
			goto fail;
		conn = um->conn;
	}
	r = upager_attach(conn, run->name, 0, &um->att);
	if (r < 0)
		goto fail;
	map->addr = upager_attachment_addr(um->att);
	map->priv = um;
	return 0;
fail:
	upager_disconnect(um->conn);
	free(um);
	return r;
}

static int upagerd_detach(struct bench_run *run, struct bench_map *map)
{
	struct upagerd_map *um = map->priv;
	int r;

	(void)run;
	if (!um)
		return 0;
	r = upager_detach(um->att);
	upager_disconnect(um->conn);
	free(um);
	map->priv = NULL;
	map->addr = NULL;
	return r;
}

/*
 * The time on CPU of every thread of @pid so far: the first field of each
 * thread's schedstat, in ns.  A thread that ended takes its time with it:
 * the daemon's workers live as long as the daemon.
 */
static int proc_cpu_ns(pid_t pid, uint64_t *ns)
{
	char path[64], buf[96];
	struct dirent *d;
	uint64_t sum = 0;
	unsigned int n = 0;
	ssize_t len;
	DIR *dir;
	int fd;

	bench_fmt(path, sizeof(path), "/proc/%d/task", (int)pid);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while ((d = readdir(dir))) {
		if (d->d_name[0] == '.')
			continue;
		bench_fmt(path, sizeof(path), "%s/schedstat", d->d_name);
		fd = openat(dirfd(dir), path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* it ended meanwhile */
		len = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (len <= 0)
			continue;
		buf[len] = '\0';
		sum += strtoull(buf, NULL, 10);
		n++;
	}
	closedir(dir);
	if (!n)
		return -ESRCH;
	*ns = sum;
	return 0;
}

pid_t bench_upagerd_pid(const struct bench_env *env)
{
	pid_t pid;

	if (env->daemon_pid > 0)
		return env->daemon_pid;
	/* an existing daemon (--socket): the pid its socket says, when it
	 * did not detach after listening */
	pid = env->conn ? upager_daemon_pid(env->conn) : -ESRCH;
	return pid > 0 ? pid : -ESRCH;
}

static int upagerd_pager_cpu(struct bench_run *run, uint64_t *ns)
{
	pid_t pid = bench_upagerd_pid(run->env);

	if (pid < 0)
		return pid;
	return proc_cpu_ns(pid, ns);
}

static void upagerd_teardown(struct bench_run *run)
{
	struct upager_segment_info info;
	struct bench_sys_stats *s = &run->stats;

	if (!run->name[0])
		return;
	if (!upager_stat(run->env->conn, run->name, &info)) {
		s->valid = true;
		s->faults_missing = info.faults_missing;
		s->faults_minor = info.faults_minor;
		s->faults_wp = info.faults_wp;
		s->faults_waited = info.faults_waited;
		/* a fresh segment per run: its counts are the run's */
		s->faults_served = info.faults_missing + info.faults_minor +
				   info.faults_wp;
		s->pages_filled = info.pages_filled;
		s->bytes_read = info.bytes_read;
		s->readahead_max_pages = info.readahead_max_pages;
		s->readahead_pages = info.readahead_pages;
		s->readahead_touched = info.readahead_touched;
		s->readahead_untouched = info.readahead_untouched;
	}
	if (upager_delete(run->env->conn, run->name, 0) == -EBUSY)
		upager_delete(run->env->conn, run->name, UPAGER_DELETE_FORCE);
	run->name[0] = '\0';
}

const struct bench_system bench_upagerd = {
	.name = "upagerd",
	.summary = "a daemon segment, upager_attach in every process",
	.flags = BENCH_SYS_DAEMON,
	.init = bench_upagerd_init,
	.fini = bench_upagerd_fini,
	.setup = upagerd_setup,
	.attach = upagerd_attach,
	.touch = bench_touch_timed,
	.detach = upagerd_detach,
	.teardown = upagerd_teardown,
	.pager_cpu = upagerd_pager_cpu,
};

/* ---- the wp workload: populated memory, armed to copy before write ---- */

void bench_populate(char *base, size_t len, size_t page_size)
{
	size_t off;

	for (off = 0; off < len; off += page_size)
		((volatile char *)base)[off + 1] = BENCH_POPULATE_MARK;
}

_Noreturn void bench_child_sleep(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	for (;;)
		pause();
}

/* ---- kernel-cow: the kernel's copy on write after fork() ---- */

static int cow_attach(struct bench_run *run, struct bench_map *map)
{
	pid_t parent = getpid(), pid;
	void *p;
	int r;

	if (run->source_fd >= 0)
		return -EINVAL;
	p = mmap(NULL, run->len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	bench_no_huge(p, run->len);
	bench_populate(p, run->len, run->env->page_size);
	/*
	 * The child shares every page until it goes: the parent's first
	 * write to each is the COW fault that copies it (the child never
	 * writes, so the parent's timing is the fault alone).
	 */
	pid = fork();
	if (pid < 0) {
		r = -errno;
		munmap(p, run->len);
		return r;
	}
	if (!pid)
		bench_child_sleep(parent);
	map->addr = p;
	map->priv = (void *)(intptr_t)pid;
	return 0;
}

static int cow_detach(struct bench_run *run, struct bench_map *map)
{
	pid_t pid = (pid_t)(intptr_t)map->priv;

	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	map->priv = NULL;
	return unmap_detach(run, map);
}

const struct bench_system bench_kernel_cow = {
	.name = "kernel-cow",
	.summary = "anon memory populated, fork() a sleeping child: "
		   "COW faults",
	.flags = BENCH_SYS_REFERENCE,
	.setup = nothing_setup,
	.attach = cow_attach,
	.touch = bench_touch_timed,
	.detach = cow_detach,
	.teardown = nothing_teardown,
};

/* ---- minimal-wp: a copy-before-write handler, one thread ---- */

static int minimal_wp_copy(struct uffd_handler *h, const struct uffd_msg *msg,
			   unsigned long addr)
{
	struct minimal *m = container_of(h, struct minimal, h);
	size_t off = addr - (unsigned long)m->base;
	ssize_t n;

	if (!(msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP))
		return -EPROTO;
	/* the page is write-protected, not read-protected: read it */
	n = pwrite(m->copyfd, m->base + off, h->page_size, (off_t)off);
	if (n != (ssize_t)h->page_size)
		return n < 0 ? -errno : -EIO;
	return uffd_writeprotect(h->uffd, addr, h->page_size, false, true);
}

static int minimal_wp_attach(struct bench_run *run, struct bench_map *map)
{
	uint64_t ioctls, need = (uint64_t)1 << _UFFDIO_WRITEPROTECT;
	struct minimal *m;
	void *p;
	int r;

	if (run->source_fd >= 0)
		return -EINVAL;
	m = minimal_new(run);
	if (!m)
		return -ENOMEM;
	p = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_SHARED, run->fd, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	m->base = p;
	bench_no_huge(p, m->len);
	bench_populate(m->base, m->len, m->h.page_size);
	m->copyfd = memfd_create("upager-bench-copies", MFD_CLOEXEC);
	if (m->copyfd < 0 || ftruncate(m->copyfd, (off_t)m->len) < 0) {
		r = -errno;
		goto fail;
	}
	/* write-protecting shmem needs its feature; every page is mapped */
	r = uffd_open(UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
		      UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0, NULL);
	if (r < 0)
		goto fail;
	m->h.uffd = r;
	r = uffd_register(m->h.uffd, (uintptr_t)m->base, m->len,
			  UFFDIO_REGISTER_MODE_WP, &ioctls);
	if (r < 0)
		goto fail;
	if ((ioctls & need) != need) {
		r = -EOPNOTSUPP;
		goto fail;
	}
	/* (the kernel refuses DONTWAKE with MODE_WP: EINVAL) */
	r = uffd_writeprotect(m->h.uffd, (uintptr_t)m->base, m->len, true, true);
	if (r < 0)
		goto fail;
	r = minimal_start(m, map, minimal_wp_copy);
	if (r < 0)
		goto fail;
	return 0;
fail:
	minimal_free(m);
	return r;
}

static int memfd_handlers_setup(struct bench_run *run)
{
	int r = memfd_setup(run);

	if (r < 0)
		return r;
	r = handlers_setup(run);
	if (r < 0)
		memfd_teardown(run);
	return r;
}

const struct bench_system bench_minimal_wp = {
	.name = "minimal-wp",
	.summary = "uffd WP on a memfd, 1 handler thread: pwrite the page "
		   "to a 2nd memfd, un-protect",
	.flags = BENCH_SYS_REFERENCE,
	.setup = memfd_handlers_setup,
	.attach = minimal_wp_attach,
	.touch = bench_touch_timed,
	.detach = minimal_detach,
	.teardown = memfd_handlers_teardown,
};

/* ---- upagerd (wp): the first writes after upager_snapshot() ---- */

int bench_upagerd_probe_snapshots(struct bench_env *env)
{
	int r;

	if (!env->conn)
		return -ENOTCONN;
	/*
	 * A name that cannot exist: a daemon that cuts snapshots says
	 * -ENOENT, and creates nothing; one that does not, -EOPNOTSUPP.
	 */
	r = upager_snapshot(env->conn, "upager-bench-no-such-segment",
			    "upager-bench-no-such-snapshot", NULL);
	if (r == -EOPNOTSUPP) {
		bench_fmt(env->error, sizeof(env->error), "%s",
			  BENCH_NO_SNAPSHOTS);
		return r;
	}
	if (r == -ENOENT)
		return 0;
	bench_fmt(env->error, sizeof(env->error),
		  "upager_snapshot of a segment that does not exist: %s",
		  r ? strerror(-r) : "succeeded");
	return r ? r : -EPROTO;
}

static int upagerd_wp_init(struct bench_env *env)
{
	int r = bench_upagerd_init(env);

	return r < 0 ? r : bench_upagerd_probe_snapshots(env);
}

static int upagerd_wp_attach(struct bench_run *run, struct bench_map *map)
{
	struct upagerd_map *um;
	struct upager_snapshot_result res;
	int r;

	r = upagerd_attach(run, map);
	if (r < 0)
		return r;
	um = map->priv;
	bench_populate(map->addr, run->len, run->env->page_size);
	bench_fmt(run->snap, sizeof(run->snap), "%s-snap", run->name);
	r = upager_snapshot(um->conn ? um->conn : run->env->conn, run->name,
			    run->snap, &res);
	if (r < 0) {
		bench_fmt(run->error, sizeof(run->error), "upager_snapshot: %s",
			  strerror(-r));
		run->snap[0] = '\0';
		upagerd_detach(run, map);
		return r;
	}
	return 0;
}

/*
 * The snapshot must still show every page as it was at the cut: the
 * populate mark, and none of the timed writes.
 */
static int upagerd_wp_check(struct bench_run *run)
{
	size_t ps = run->env->page_size, i;
	size_t stride = run->pages / 65536 + 1;
	struct upager_attachment *att;
	const unsigned char *p;
	int r;

	r = upager_attach(run->env->conn, run->snap, UPAGER_ATTACH_RDONLY, &att);
	if (r < 0) {
		bench_fmt(run->error, sizeof(run->error),
			  "attach of the snapshot: %s", strerror(-r));
		return r;
	}
	p = upager_attachment_addr(att);
	for (i = 0; i < run->pages; i += stride) {
		if (p[i * ps] == 0 && p[i * ps + 1] == BENCH_POPULATE_MARK)
			continue;
		bench_fmt(run->error, sizeof(run->error),
			  "snapshot page %zu is not as it was at the cut "
			  "(%#x %#x)",
			  i, p[i * ps], p[i * ps + 1]);
		r = -EBADMSG;
		break;
	}
	upager_detach(att);
	return r;
}

static int upagerd_wp_detach(struct bench_run *run, struct bench_map *map)
{
	int r, r2;

	r = upagerd_detach(run, map);
	if (!run->snap[0])
		return r;
	r2 = upagerd_wp_check(run);
	if (upager_delete(run->env->conn, run->snap, 0) == -EBUSY)
		upager_delete(run->env->conn, run->snap, UPAGER_DELETE_FORCE);
	run->snap[0] = '\0';
	return r < 0 ? r : r2;
}

const struct bench_system bench_upagerd_wp = {
	.name = "upagerd",
	.summary = "a daemon segment, populated, upager_snapshot(): the "
		   "first writes copy before write",
	.flags = BENCH_SYS_DAEMON,
	.init = upagerd_wp_init,
	.fini = bench_upagerd_fini,
	.setup = upagerd_setup,
	.attach = upagerd_wp_attach,
	.touch = bench_touch_timed,
	.detach = upagerd_wp_detach,
	.teardown = upagerd_teardown,
	.pager_cpu = upagerd_pager_cpu,
};

/*
 * The snapshot workload's reference: fork() of a process with the memory
 * populated.  It runs itself (bench-snapshot.c): a name to select, no
 * operations.
 */
const struct bench_system bench_kernel_fork = {
	.name = "kernel-fork",
	.summary = "fork() of a process with the memory populated "
		   "(snapshot)",
	.flags = BENCH_SYS_REFERENCE,
};

const struct bench_system *const bench_all_systems[] = {
	&bench_kernel_memfd, &bench_kernel_anon,
	&bench_kernel_file,  &bench_minimal,
	&bench_floor,	     &bench_upagerd,
	&bench_kernel_cow,   &bench_minimal_wp,
	&bench_kernel_fork,  NULL,
};
