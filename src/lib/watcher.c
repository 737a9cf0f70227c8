// SPDX-License-Identifier: MIT
/*
 * The watcher: one thread a connection that answers the attachments'
 * faults once the daemon is gone.
 *
 * It sleeps on the daemon's pidfd (or, without one, on the socket's
 * hang-up).  When the daemon dies, the faults it had read are never
 * answered: the watcher wakes them, and from then on reads every uffd on
 * its list and answers each fault where it can do so correctly (see
 * answer()): a page in the memfd is mapped, a zero-source page is zeroed,
 * any other access gets SIGBUS in the faulting thread.
 *
 * It must be able to run while another thread is inside fork(): fork()
 * holds the allocator's locks and the library's own (see fork.c) and, with
 * fork events, waits for the watcher to read the fork event of each uffd.
 * So the watcher allocates nothing once the daemon is gone (fixed arrays on
 * its stack, SERVE_MAX and DEFER_MAX), uses no stdio stream, and takes only
 * serve_lock, which the fork handlers never hold.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "lib.h"

/* The watcher's list */

int serve_add(struct upager *u, const struct upager_attachment *a)
{
	struct serve e = {
		.uffd = fcntl(a->uffd, F_DUPFD_CLOEXEC, lib_fd_floor),
		.memfd = fcntl(a->memfd, F_DUPFD_CLOEXEC, lib_fd_floor),
		.dev = a->dev,
		.ino = a->ino,
		.source = a->source,
		.features = a->features,
		.a = a,
	};
	struct serve *room = NULL;
	int dup_err = e.uffd < 0 || e.memfd < 0 ? errno : 0, ret = 0;

	/*
	 * The list is allocated whole, once, and never while serve_lock is
	 * held: under the preload shim this runs inside malloc (which maps
	 * memory with its arena locked), and another thread holding
	 * serve_lock must not wait for that arena.
	 */
	pthread_mutex_lock(&u->serve_lock);
	if (!u->serves) {
		pthread_mutex_unlock(&u->serve_lock);
		room = calloc(SERVE_MAX, sizeof(*room));
		pthread_mutex_lock(&u->serve_lock);
		if (!u->serves && room) {
			u->serves = room;
			u->serves_cap = SERVE_MAX;
			room = NULL;
		}
	}
	if (dup_err) {
		ret = -dup_err;
	} else if (!u->serves) {
		ret = -ENOMEM;
	} else if (u->nr_serves == SERVE_MAX) {
		ret = -EMFILE; /* attachments of one connection */
	}
	if (!ret)
		u->serves[u->nr_serves++] = e;
	pthread_mutex_unlock(&u->serve_lock);
	free(room);
	if (ret) {
		if (e.uffd >= 0)
			close(e.uffd);
		if (e.memfd >= 0)
			close(e.memfd);
	}
	return ret;
}

void serve_forget(struct upager *u, const struct upager_attachment *a)
{
	pthread_mutex_lock(&u->serve_lock);
	for (size_t i = 0; i < u->nr_serves; i++)
		if (u->serves[i].a == a)
			u->serves[i].gone = true;
	pthread_mutex_unlock(&u->serve_lock);
}

static void serve_close(struct serve *e)
{
	close(e->uffd);
	close(e->memfd);
}

/* The watcher's own (or no thread's, once it stopped or in a child). */
void serve_reap(struct upager *u, bool all)
{
	pthread_mutex_lock(&u->serve_lock);
	for (size_t i = 0; i < u->nr_serves;) {
		if (!all && !u->serves[i].gone) {
			i++;
			continue;
		}
		serve_close(&u->serves[i]);
		u->serves[i] = u->serves[--u->nr_serves];
	}
	pthread_mutex_unlock(&u->serve_lock);
}

/* Answering faults after the daemon died */

static uint64_t mmap_min_addr = 1ull << 16;

/* Read once, before the watcher may have to run during a fork. */
static void read_mmap_min_addr(void)
{
	char buf[32] = "";
	int fd = open("/proc/sys/vm/mmap_min_addr", O_RDONLY | O_CLOEXEC);
	uint64_t ps = lib_page_size();
	unsigned long long v;

	if (fd < 0)
		return;
	if (read(fd, buf, sizeof(buf) - 1) > 0 &&
	    sscanf(buf, "%llu", &v) == 1 && v > mmap_min_addr)
		mmap_min_addr = (v + ps - 1) & ~(ps - 1);
	close(fd);
}

/*
 * Wakes every thread waiting on @uffd, wherever it faulted: the daemon
 * read those faults and will never answer them; they fault again, to us.
 * The range is the whole user address space, whose top we try from the
 * largest the architecture may have down.
 */
static void uffd_wake_all(int uffd)
{
	static const unsigned int bits[] = { 56, 52, 48, 47, 39 };

	for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		uint64_t top = (1ull << bits[i]) - lib_page_size();

		if (uffd_wake(uffd, mmap_min_addr, top - mmap_min_addr) == 0)
			return;
	}
}

/* A uffd_*() result, as answer() needs it: 0, -EAGAIN, or 1 to wake. */
static int uffd_result(int ret)
{
	if (ret == 0 || ret == -EAGAIN)
		return ret;
	return 1;
}

/*
 * A frame for page @off of a zero-source segment, put into the memfd
 * through a shared read-only mapping of our own (a read fault on a hole of
 * a shared shmem mapping allocates the page), so that a private attachment
 * maps the segment's frame, not a private zero page.
 */
static int memfd_materialize(int memfd, off_t off)
{
	long ps = lib_page_size();
	void *p = mmap(NULL, ps, PROT_READ, MAP_SHARED, memfd, off);

	if (p == MAP_FAILED)
		return -errno;
	(void)*(volatile const char *)p;
	munmap(p, ps);
	return 0;
}

/*
 * Answers the fault @m on @e's uffd: 0, or -EAGAIN when an event is pending
 * on the uffd (read it, then answer again).  The bytes come from the
 * memfd, or are zeros for a zero source; anything else gets SIGBUS in the
 * faulting thread.
 */
static int answer(const struct serve *e, const struct uffd_msg *m)
{
	uint64_t ps = lib_page_size();
	uint64_t addr = m->arg.pagefault.address & ~(ps - 1);
	struct vma v;
	int ret;

	if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		ret = uffd_result(
			uffd_writeprotect(e->uffd, addr, ps, false, true));
		goto out;
	}
	ret = vma_at(addr, &v);
	if (ret <= 0) {
		ret = 1; /* unmapped meanwhile: the refault decides */
		goto out;
	}
	if (v.ino == e->ino && v.dev == e->dev) {
		off_t off = v.off + (addr - v.start);
		bool present = lseek(e->memfd, off, SEEK_DATA) == off;

		if (!present && e->source == UPAGER_SOURCE_ZERO) {
			if (v.shared) {
				ret = uffd_result(uffd_zeropage(e->uffd, addr,
								ps, true, NULL));
				goto out;
			}
			present = memfd_materialize(e->memfd, off) == 0;
		}
		if (present) {
			/* A shared mapping finds the frame on the refault;
			 * a private one is mapped it. */
			if (v.shared)
				ret = 1;
			else
				ret = uffd_result(uffd_continue(e->uffd, addr,
								ps, true, NULL));
			goto out;
		}
	}
	/* The bytes are at the source, which only the daemon reads: the
	 * access fails, and only that thread's. */
	if (e->features & UFFD_FEATURE_POISON) {
		ret = uffd_poison(e->uffd, addr, ps, true, NULL);
		ret = ret == -EEXIST ? 1 : uffd_result(ret);
	} else if (e->features & UFFD_FEATURE_THREAD_ID) {
		syscall(SYS_tgkill, getpid(), m->arg.pagefault.feat.ptid,
			SIGBUS);
		ret = 1;
	} else {
		ret = 1; /* cannot answer it: it faults again */
	}
out:
	if (ret == 1)
		uffd_wake(e->uffd, addr, ps);
	return ret == -EAGAIN ? -EAGAIN : 0;
}

/*
 * The most uffds one connection's watcher answers, and faults it keeps
 * waiting for an event: fixed, because the watcher must not allocate (a
 * fork in another thread holds the allocator's locks while it waits for
 * the watcher to read its fork event).
 */
#define DEFER_MAX 256

struct deferred {
	int uffd;
	struct uffd_msg m;
};

/*
 * Reads what @e's uffd holds and answers it.  A fault that meets a pending
 * event is kept in @defer (the event is read next) and answered again.  A
 * forked child's uffd is closed at once: the child registers its own (see
 * child_fallback), and holding its ctx would only make it wait.
 */
static void serve_read(const struct serve *e, struct deferred *defer,
		       size_t *nr_defer)
{
	struct uffd_msg m;

	while (uffd_read(e->uffd, &m, 1) == 1) {
		if (m.event == UFFD_EVENT_FORK) {
			close((int)m.arg.fork.ufd);
			continue;
		}
		if (m.event != UFFD_EVENT_PAGEFAULT || answer(e, &m) == 0)
			continue;
		if (*nr_defer < DEFER_MAX) {
			defer[(*nr_defer)++] = (struct deferred){ e->uffd, m };
		} else {
			uint64_t ps = lib_page_size();

			/* it refaults */
			uffd_wake(e->uffd, m.arg.pagefault.address & ~(ps - 1),
				  ps);
		}
	}
}

static void orphan_serve(struct upager *u)
{
	struct deferred defer[DEFER_MAX];
	struct serve snap[SERVE_MAX];
	struct pollfd pfd[SERVE_MAX + 1];
	size_t nr_defer = 0, n;

	pthread_mutex_lock(&u->serve_lock);
	for (size_t i = 0; i < u->nr_serves; i++)
		uffd_wake_all(u->serves[i].uffd);
	pthread_mutex_unlock(&u->serve_lock);

	while (!atomic_load(&u->stopping)) {
		uint64_t v;
		size_t k;

		/* The list as it is now; only this thread closes its fds. */
		serve_reap(u, false);
		pthread_mutex_lock(&u->serve_lock);
		n = u->nr_serves;
		memcpy(snap, u->serves, n * sizeof(*snap));
		pthread_mutex_unlock(&u->serve_lock);
		pfd[0] = (struct pollfd){ .fd = u->wake_efd, .events = POLLIN };
		for (size_t i = 0; i < n; i++)
			pfd[i + 1] = (struct pollfd){ .fd = snap[i].uffd,
						      .events = POLLIN };
		if (poll(pfd, n + 1, nr_defer ? 1 : -1) < 0 && errno != EINTR)
			break;
		if ((pfd[0].revents & POLLIN) &&
		    read(u->wake_efd, &v, sizeof(v)) < 0)
			v = 0;
		for (size_t i = 0; i < n; i++)
			if (pfd[i + 1].revents & POLLIN)
				serve_read(&snap[i], defer, &nr_defer);
		/* Faults that met an event: the event is read now. */
		k = 0;
		for (size_t i = 0; i < nr_defer; i++) {
			size_t j;

			for (j = 0; j < n && snap[j].uffd != defer[i].uffd; j++)
				;
			if (j < n && answer(&snap[j], &defer[i].m) == -EAGAIN)
				defer[k++] = defer[i];
		}
		nr_defer = k;
	}
}

bool daemon_gone(struct upager *u, int wait_ms)
{
	struct pollfd p = { .fd = u->daemon_pidfd, .events = POLLIN };

	if (u->daemon_pidfd < 0)
		return u->sock < 0;
	return poll(&p, 1, wait_ms) > 0;
}

static void *watcher_main(void *arg)
{
	struct upager *u = arg;
	sigset_t all;

	if (lib_thread_hook)
		lib_thread_hook();
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	atomic_store(&u->watcher_ready, true);
	for (;;) {
		struct pollfd pfd[2] = {
			u->daemon_pidfd >= 0 ?
				(struct pollfd){ .fd = u->daemon_pidfd,
						 .events = POLLIN } :
				(struct pollfd){ .fd = u->sock, .events = 0 },
			{ .fd = u->wake_efd, .events = POLLIN },
		};

		serve_reap(u, false);
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			return NULL;
		/* Consume the kick before looking at why: a stop that comes
		 * after the look kicks again. */
		if (pfd[1].revents & POLLIN) {
			uint64_t v;

			if (read(u->wake_efd, &v, sizeof(v)) < 0)
				v = 0;
		}
		if (atomic_load(&u->stopping))
			return NULL;
		if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR) ||
		    u->sock < 0) {
			orphan_serve(u);
			return NULL;
		}
	}
}

int watcher_start(struct upager *u)
{
	int ret = 0;

	lib_page_size();
	read_mmap_min_addr();
	pthread_mutex_lock(&u->att_lock);
	if (!u->watcher_running) {
		u->wake_efd = fd_high(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
		if (u->wake_efd < 0)
			ret = u->wake_efd;
		else
			ret = -pthread_create(&u->watcher, NULL, watcher_main,
					      u);
		if (!ret)
			u->watcher_running = true;
	}
	pthread_mutex_unlock(&u->att_lock);
	/*
	 * Return only once the thread runs its own code: a fork while it
	 * is still being set up (allocating, in an ASan build, under the
	 * allocator's lock) would leave the child a lock nobody unlocks.
	 */
	while (!ret && !atomic_load(&u->watcher_ready))
		sched_yield();
	return ret;
}

void watcher_kick(struct upager *u)
{
	uint64_t one = 1;

	if (u->wake_efd >= 0 && write(u->wake_efd, &one, sizeof(one)) < 0)
		return;
}

void watcher_stop(struct upager *u)
{
	/* (An inherited connection's watcher stayed in the parent.) */
	if (u->watcher_running && !inherited(u)) {
		atomic_store(&u->stopping, true);
		watcher_kick(u);
		pthread_join(u->watcher, NULL);
	}
	serve_reap(u, true);
	free(u->serves);
	u->serves = NULL;
	u->nr_serves = u->serves_cap = 0;
	if (u->wake_efd >= 0)
		close(u->wake_efd);
	u->wake_efd = -1;
}
