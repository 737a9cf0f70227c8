// SPDX-License-Identifier: MIT
/*
 * Fault-serving threads.
 *
 * A worker sleeps in ring_submit_and_wait() on one ring that carries
 * everything it waits for: a multishot poll on the userfaultfd of each
 * attachment it serves, a poll on the pidfd of each it owns, the source
 * reads of its fills, and its inbox eventfd.  One worker is pinned to each
 * CPU and every worker polls every uffd (see worker_add), so a fault is
 * read by the worker on the faulting thread's CPU.  A readable uffd is
 * drained with read() in batches; a batch's events are applied before its
 * faults are served (see drain_uffd), then the faults that had to wait for
 * an event are driven again.
 *
 * Polls are tagged with the attachment's id, not its address, so that a
 * poll completion arriving after the attachment was removed finds nothing
 * and is dropped.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include "attach.h"
#include "fill.h"
#include "log.h"
#include "ring.h"
#include "segment.h"
#include "uffd.h"
#include "daemon.h"
#include "worker.h"

#define RING_ENTRIES 256
#define UFFD_MSG_BATCH 32

enum cmd_kind { CMD_ADD, CMD_REMOVE, CMD_WATCH_PID, CMD_STOP };

struct cmd {
	enum cmd_kind kind;
	struct attachment *att;	/* holds a reference */
	struct cmd *next;
};

struct worker {
	struct daemon *d;
	unsigned int id;
	pthread_t thread;
	struct io_uring ring;
	int efd;
	uint64_t efd_val;
	bool stop;

	pthread_mutex_t inbox_lock;
	struct cmd *inbox, **inbox_tail;

	struct attachment **atts;	/* owned; worker thread only */
	unsigned int nr_atts, atts_cap;

	uint64_t served;		/* uffd messages read */
	struct filler fl;		/* the fills running on this ring */
};

struct worker *worker_pick(struct daemon *d)
{
	unsigned int i = atomic_fetch_add(&d->next_worker, 1);

	return d->workers[i % d->nr_workers];
}

static struct io_uring_sqe *get_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	if (!sqe) {
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

static void post(struct worker *w, enum cmd_kind kind, struct attachment *att)
{
	struct cmd *c = calloc(1, sizeof(*c));

	if (!c) {
		pr_err("worker", "out of memory posting to worker %u", w->id);
		return;
	}
	c->kind = kind;
	c->att = att;
	if (att)
		attach_get(att);
	pthread_mutex_lock(&w->inbox_lock);
	*w->inbox_tail = c;
	w->inbox_tail = &c->next;
	pthread_mutex_unlock(&w->inbox_lock);
	worker_kick(w);
}

void worker_kick(struct worker *w)
{
	uint64_t one = 1;

	if (write(w->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		pr_err("worker", "kick: %s", strerror(errno));
}

/*
 * Every worker polls the attachment's uffd, up to MAX_POLLERS of them from
 * the owner on: a fault is read by whichever comes first, which is nearly
 * always the worker pinned to the faulting thread's CPU, since it runs the
 * moment the faulting thread sleeps while a wake-up of another CPU takes
 * tens of microseconds (DESIGN.md, "Where the time goes").  Two threads of
 * one process faulting on two CPUs are then served in parallel.  The owner
 * alone watches the pidfd.
 */
#define MAX_POLLERS 4

static unsigned int nr_pollers(struct daemon *d)
{
	return d->nr_workers < MAX_POLLERS ? d->nr_workers : MAX_POLLERS;
}

void worker_add(struct worker *w, struct attachment *att)
{
	struct daemon *d = w->d;

	for (unsigned int i = 0; i < nr_pollers(d); i++)
		post(d->workers[(w->id + i) % d->nr_workers], CMD_ADD, att);
}

void worker_remove(struct worker *w, struct attachment *att)
{
	struct daemon *d = w->d;

	for (unsigned int i = 0; i < nr_pollers(d); i++)
		post(d->workers[(w->id + i) % d->nr_workers], CMD_REMOVE, att);
}

void worker_watch_pid(struct worker *w, struct attachment *att)
{
	post(w, CMD_WATCH_PID, att);
}

static void arm_efd(struct worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_read(sqe, w->efd, &w->efd_val, sizeof(w->efd_val), 0);
	io_uring_sqe_set_data64(sqe, TAG_INBOX);
}

static void arm_uffd(struct worker *w, struct attachment *att)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_poll_multishot(sqe, att->uffd, POLLIN);
	io_uring_sqe_set_data64(sqe, att->id << 3 | TAG_UFFD);
}

static void arm_pidfd(struct worker *w, struct attachment *att)
{
	struct io_uring_sqe *sqe;

	if (att->pidfd < 0 || att->pidfd_polled)
		return;
	att->pidfd_polled = true;
	sqe = get_sqe(w);
	io_uring_prep_poll_add(sqe, att->pidfd, POLLIN);
	io_uring_sqe_set_data64(sqe, att->id << 3 | TAG_PIDFD);
}

static struct attachment *find_att(struct worker *w, uint64_t id,
				   unsigned int *idx)
{
	for (unsigned int i = 0; i < w->nr_atts; i++) {
		if (w->atts[i]->id == id) {
			if (idx)
				*idx = i;
			return w->atts[i];
		}
	}
	return NULL;
}

static void own(struct worker *w, struct attachment *att)
{
	if (w->nr_atts == w->atts_cap) {
		unsigned int cap = w->atts_cap ? 2 * w->atts_cap : 16;
		void *p = realloc(w->atts, cap * sizeof(*w->atts));

		if (!p) {
			pr_err("worker", "out of memory: dropping attachment");
			attach_kill(att, "dropped");
			return;
		}
		w->atts = p;
		w->atts_cap = cap;
	}
	attach_get(att);
	w->atts[w->nr_atts++] = att;
	arm_uffd(w, att);
	if (att->owner == w)
		arm_pidfd(w, att);
}

static void disown(struct worker *w, struct attachment *att)
{
	struct io_uring_sqe *sqe;
	unsigned int i;

	if (!find_att(w, att->id, &i))
		return;
	w->atts[i] = w->atts[--w->nr_atts];
	sqe = get_sqe(w);
	io_uring_prep_poll_remove(sqe, att->id << 3 | TAG_UFFD);
	io_uring_sqe_set_data64(sqe, 0);
	if (att->pidfd >= 0 && att->owner == w) {
		sqe = get_sqe(w);
		io_uring_prep_poll_remove(sqe, att->id << 3 | TAG_PIDFD);
		io_uring_sqe_set_data64(sqe, 0);
	}
	attach_put(att);
}

static void handle_fork(struct worker *w, struct attachment *parent, int ufd)
{
	struct attachment *child;
	struct segment *seg = parent->seg;
	struct daemon *d = w->d;

	counter_add(d->events_fork, 1);
	if (attach_fork(parent, ufd, &child)) {
		/* Closing the uffd unregisters the child's ranges: its next
		 * touch of an absent page would read zeros.  Nothing else
		 * can be done without memory; say so loudly. */
		pr_err("fault", "%s: out of memory for a forked child of pid %d",
		       seg->name, (int)atomic_load(&parent->pid));
		close(ufd);
		return;
	}
	/* Owned before anyone can find it. */
	child->owner = worker_pick(d);
	pthread_mutex_lock(&d->lock);
	attach_publish(child);
	atomic_fetch_add(&d->unresolved, 1);
	pthread_mutex_unlock(&d->lock);
	pr_info("fault", "%s: pid %d forked: attachment %llu", seg->name,
		(int)atomic_load(&parent->pid), (unsigned long long)child->id);
	worker_add(child->owner, child);
	attach_put(child);
	/* The main thread finds the child's pid. */
	daemon_wake_main(d);
}

static void handle_pagefault(struct worker *w, struct attachment *att,
			     const struct uffd_msg *m)
{
	struct segment *seg = att->seg;
	uint64_t addr = m->arg.pagefault.address & ~(uint64_t)(seg->page_size - 1);
	uint64_t flags = m->arg.pagefault.flags;
	pid_t tid = att->uffd_features & UFFD_FEATURE_THREAD_ID ?
			    (pid_t)m->arg.pagefault.feat.ptid : 0;

	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		/* No snapshot protects anything yet: let the write go. */
		counter_add(seg->c.faults_wp, 1);
		if (uffd_writeprotect(att->uffd, addr, seg->page_size, false,
				      true) == -EAGAIN)
			attach_requeue(att, addr);	/* an event first */
		return;
	}
	if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
		/* The frame is in the memfd: map it.  The missing path
		 * checks that and handles a frame punched meanwhile. */
		counter_add(seg->c.faults_minor, 1);
		fill_fault(&w->fl, att, addr, tid);
		return;
	}
	counter_add(seg->c.faults_missing, 1);
	fill_fault(&w->fl, att, addr, tid);
	if (!atomic_load(&att->pid) && !atomic_load(&att->fault_tid) &&
	    (att->uffd_features & UFFD_FEATURE_THREAD_ID)) {
		/* A forked child's first fault says who it is. */
		atomic_store(&att->fault_tid, (pid_t)m->arg.pagefault.feat.ptid);
		daemon_wake_main(w->d);
	}
}

static void drive_retries(struct worker *w, struct attachment *att)
{
	uint64_t *addrs;
	unsigned int n;

	pthread_mutex_lock(&att->lock);
	addrs = att->retry;
	n = att->nr_retry;
	att->retry = NULL;
	att->nr_retry = att->retry_cap = 0;
	pthread_mutex_unlock(&att->lock);
	for (unsigned int i = 0; i < n && !atomic_load(&att->dead); i++)
		fill_fault(&w->fl, att, addrs[i], 0);
	free(addrs);
}

/* Applies a non-fault event; the caller holds att->evlock for writing. */
static void handle_event(struct worker *w, struct attachment *att,
			 const struct uffd_msg *m)
{
	switch (m->event) {
	case UFFD_EVENT_FORK:
		handle_fork(w, att, m->arg.fork.ufd);
		break;
	case UFFD_EVENT_REMAP:
		counter_add(w->d->events_remap, 1);
		atomic_fetch_add(&att->ev_gen, 1);
		attach_remap(att, m->arg.remap.from, m->arg.remap.to,
			     m->arg.remap.len);
		break;
	case UFFD_EVENT_REMOVE:
		/* The frames stay PRESENT in the table; a fault on a
		 * punched one re-checks. */
		counter_add(w->d->events_remove, 1);
		break;
	case UFFD_EVENT_UNMAP:
		counter_add(w->d->events_unmap, 1);
		atomic_fetch_add(&att->ev_gen, 1);
		attach_unmap(att, m->arg.remove.start, m->arg.remove.end);
		if (!attach_has_ranges(att))
			attach_kill(att, "unmapped");
		break;
	default:
		pr_warn("fault", "%s: unknown uffd event %u", att->seg->name,
			m->event);
		break;
	}
}

/*
 * Reads and serves what @att's uffd holds; returns the messages read.
 * Events are applied before the faults read with them: a fault's address
 * is looked up in the mappings as they are now, which is what a
 * UFFDIO_COPY to that address fills.  Reading and applying the events is
 * one step under the evlock (see attach.h).  The read never blocks, whatever
 * the file's flags (the client shares the open file and may clear
 * O_NONBLOCK): a blocking read would hold the evlock while waiting for a
 * fault that may never come.
 */
static unsigned int drain_uffd(struct worker *w, struct attachment *att)
{
	struct uffd_msg msgs[UFFD_MSG_BATCH];
	unsigned int total = 0;
	ssize_t n;

	do {
		size_t nr = 0;

		spin_write_lock(&att->evlock);
		n = uffd_read(att->uffd, msgs, UFFD_MSG_BATCH);
		for (ssize_t i = 0; i < n; i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				msgs[nr++] = msgs[i];
			else
				handle_event(w, att, &msgs[i]);
		}
		spin_write_unlock(&att->evlock);
		if (n < 0) {
			pr_warn("fault", "%s: read uffd: %s", att->seg->name,
				strerror(-n));
			break;
		}
		total += n;
		for (size_t i = 0; i < nr; i++)
			handle_pagefault(w, att, &msgs[i]);
	} while (n == UFFD_MSG_BATCH);	/* a full batch: more? */
	drive_retries(w, att);
	w->served += total;
	return total;
}

static void run_inbox(struct worker *w)
{
	struct cmd *c;

	pthread_mutex_lock(&w->inbox_lock);
	c = w->inbox;
	w->inbox = NULL;
	w->inbox_tail = &w->inbox;
	pthread_mutex_unlock(&w->inbox_lock);
	while (c) {
		struct cmd *next = c->next;

		switch (c->kind) {
		case CMD_ADD:
			if (!w->stop && !atomic_load(&c->att->dead))
				own(w, c->att);
			break;
		case CMD_REMOVE:
			disown(w, c->att);
			break;
		case CMD_WATCH_PID:
			if (find_att(w, c->att->id, NULL))
				arm_pidfd(w, c->att);
			break;
		case CMD_STOP:
			w->stop = true;
			break;
		}
		if (c->att)
			attach_put(c->att);
		free(c);
		c = next;
	}
	/* Faults re-driven from other threads land on their owner here. */
	for (unsigned int i = 0; i < w->nr_atts; i++)
		if (w->atts[i]->nr_retry)
			drive_retries(w, w->atts[i]);
}

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	struct attachment *att;

	switch (ud & TAG_MASK) {
	case TAG_FILL:
		fill_io_done(&w->fl, (void *)(uintptr_t)(ud & ~(uint64_t)TAG_MASK),
			     cqe->res);
		break;
	case TAG_UFFD:
		att = find_att(w, ud >> 3, NULL);
		if (!att)
			break;
		if (cqe->res < 0 && cqe->res != -ECANCELED)
			pr_warn("fault", "%s: poll uffd: %s", att->seg->name,
				strerror(-cqe->res));
		drain_uffd(w, att);
		if (!(cqe->flags & IORING_CQE_F_MORE) && !atomic_load(&att->dead))
			arm_uffd(w, att);
		break;
	case TAG_PIDFD:
		att = find_att(w, ud >> 3, NULL);
		if (att && cqe->res >= 0 && attach_kill(att, "exited"))
			counter_add(w->d->clients_exited, 1);
		break;
	case TAG_INBOX:
		run_inbox(w);
		if (!w->stop)
			arm_efd(w);
		break;
	}
}

/*
 * Fills whose copy met a pending event: read the events (and whatever
 * faults came with them), then copy again what the fills hold.
 */
static void resume_stalled(struct worker *w)
{
	struct list_head list, *n;

	fill_take_stalled(&w->fl, &list);
	for (n = list.next; n != &list; n = n->next) {
		struct attachment *att = fill_stalled_attachment(n);

		if (!atomic_load(&att->dead))
			drain_uffd(w, att);
	}
	fill_resume(&w->fl, &list);
}

static void reap(struct worker *w)
{
	struct io_uring_cqe *cqe;
	unsigned int head, n = 0;

	io_uring_for_each_cqe(&w->ring, head, cqe) {
		handle_cqe(w, cqe);
		n++;
	}
	io_uring_cq_advance(&w->ring, n);
	if (!list_empty(&w->fl.stalled))
		resume_stalled(w);
}

/*
 * After serving a fault, look for the next one for a while before sleeping.
 * A faulting thread's next fault usually follows within microseconds, and
 * waking a sleeping worker on another CPU costs tens of them (DESIGN.md,
 * "Where the time goes"): the spin saves one of the two hand-offs.  Reading
 * the uffds directly finds a fault sooner than its poll completion would.
 */
static void spin(struct worker *w)
{
	uint64_t until = now_ns() + w->d->spin_ns;

	while (!w->stop) {
		uint64_t before = w->served;

		for (unsigned int i = 0; i < w->nr_atts; i++)
			drain_uffd(w, w->atts[i]);
		io_uring_submit_and_get_events(&w->ring);
		reap(w);
		if (w->served != before)
			until = now_ns() + w->d->spin_ns;
		else if (now_ns() >= until)
			break;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	if (w->d->pinned) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(w->id, &set);
		if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
			pr_warn("worker", "%u: cannot pin to its CPU", w->id);
	}
	arm_efd(w);
	/* After a stop, fills in flight still complete: they hold
	 * references that must be dropped. */
	while (!w->stop || w->fl.nr_fills) {
		uint64_t before = w->served;
		int ret = ring_submit_and_wait(&w->ring);

		if (ret < 0 && ret != -EINTR && ret != -EAGAIN &&
		    ret != -EBUSY) {
			pr_err("worker", "%u: io_uring: %s", w->id, strerror(-ret));
			break;
		}
		reap(w);
		if (w->d->spin_ns && w->served != before)
			spin(w);
	}
	while (w->nr_atts)
		disown(w, w->atts[w->nr_atts - 1]);
	return NULL;
}

int worker_start(struct daemon *d, unsigned int id, struct worker **out)
{
	struct worker *w = calloc(1, sizeof(*w));
	int ret;

	if (!w)
		return -ENOMEM;
	w->d = d;
	w->id = id;
	w->inbox_tail = &w->inbox;
	pthread_mutex_init(&w->inbox_lock, NULL);
	w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->efd < 0) {
		ret = -errno;
		goto err;
	}
	ret = io_uring_queue_init(RING_ENTRIES, &w->ring, 0);
	if (ret < 0)
		goto err;
	filler_init(&w->fl, d, &w->ring);
	ret = -pthread_create(&w->thread, NULL, worker_main, w);
	if (ret) {
		io_uring_queue_exit(&w->ring);
		goto err;
	}
	*out = w;
	return 0;
err:
	if (w->efd >= 0)
		close(w->efd);
	free(w);
	return ret;
}

void worker_stop(struct worker *w)
{
	if (!w)
		return;
	post(w, CMD_STOP, NULL);
	pthread_join(w->thread, NULL);
	run_inbox(w);	/* drop what was posted after the stop */
	filler_fini(&w->fl);
	io_uring_queue_exit(&w->ring);
	close(w->efd);
	pthread_mutex_destroy(&w->inbox_lock);
	free(w->atts);
	free(w);
}
