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
 * A worker's share of an attachment is a `struct poller`: its polls, on
 * the worker's ring, carry it as their completion's io_req.  A poller is
 * allocated when the attachment is added (worker_add fails there, with
 * -ENOMEM, before anything is posted) and reaches its worker through the
 * inbox, a list of pollers under inbox_lock.  Everything else the worker
 * is told comes as a kick of its eventfd with the news in the attachment
 * itself (dead, a fault to drive again, a pid to watch): telling a worker
 * allocates nothing and cannot fail.  A poller lives until its worker has
 * dropped it and the last completion of each of its polls has come (the
 * final one of a multishot poll, without IORING_CQE_F_MORE, comes after a
 * cancellation too): a completion never finds it freed.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "attach.h"
#include "daemon.h"
#include "fill.h"
#include "log.h"
#include "ring.h"
#include "segment.h"
#include "uffd.h"
#include "worker.h"

#define RING_ENTRIES 256
#define UFFD_MSG_BATCH 32

/*
 * One worker's share of one attachment.  Its worker's thread alone uses
 * it, but for `next`, under the inbox lock until the worker takes it.
 */
struct poller {
	struct io_req uffd_req;	 /* the multishot poll of att->uffd */
	struct io_req pidfd_req; /* the owner's poll of att->pidfd */
	struct worker *w;
	struct attachment *att; /* holds a reference */
	unsigned int refs;	/* the worker's list's, each poll's */
	bool uffd_armed, pidfd_armed;
	bool pid_watched;      /* the pidfd poll was armed once */
	bool gone;	       /* dropped by its worker */
	struct list_head link; /* w->pollers, then w->gone */
	struct poller *next;   /* in the inbox */
};

/*
 * Locking: the inbox (inbox, inbox_tail) is under inbox_lock and
 * `stopping` is atomic; everything else is the worker thread's, or set
 * before it starts.
 */
struct worker {
	struct daemon *d;
	unsigned int id;
	pthread_t thread;
	struct io_uring ring;
	int efd; /* kicks the worker */
	uint64_t efd_val;
	struct io_req efd_req;
	_Atomic bool stopping; /* worker_stop() asked */
	bool stop;

	pthread_mutex_t inbox_lock;
	struct poller *inbox, **inbox_tail; /* pollers to take on */

	struct list_head pollers; /* served */
	struct list_head gone;	  /* dropped, their polls not done yet */
	uint64_t served;	  /* uffd messages read */
	struct filler fl;	  /* the fills running on this ring */
};

void worker_assign(struct daemon *d, struct attachment *att)
{
	unsigned int i = atomic_fetch_add(&d->next_worker, 1);

	att->owner = d->workers[i % d->nr_workers];
	att->kick_fd = att->owner->efd;
}

void worker_kick(struct worker *w)
{
	daemon_kick(w->efd);
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

static struct worker *poller_worker(struct attachment *att, unsigned int i)
{
	struct daemon *d = att->owner->d;

	return d->workers[(att->owner->id + i) % d->nr_workers];
}

static void uffd_polled(struct io_req *req, const struct io_uring_cqe *cqe);
static void pidfd_polled(struct io_req *req, const struct io_uring_cqe *cqe);

static void poller_put(struct poller *p)
{
	if (--p->refs)
		return;
	list_del_init(&p->link);
	attach_put(p->att);
	free(p);
}

int worker_add(struct attachment *att)
{
	struct poller *p[MAX_POLLERS];
	unsigned int n = nr_pollers(att->owner->d);

	for (unsigned int i = 0; i < n; i++) {
		p[i] = calloc(1, sizeof(*p[i]));
		if (!p[i]) {
			while (i--)
				free(p[i]);
			return -ENOMEM;
		}
	}
	for (unsigned int i = 0; i < n; i++) {
		struct worker *w = poller_worker(att, i);

		p[i]->uffd_req.complete = uffd_polled;
		p[i]->pidfd_req.complete = pidfd_polled;
		p[i]->w = w;
		p[i]->att = att;
		attach_get(att);
		p[i]->refs = 1;
		list_init(&p[i]->link);
		pthread_mutex_lock(&w->inbox_lock);
		*w->inbox_tail = p[i];
		w->inbox_tail = &p[i]->next;
		pthread_mutex_unlock(&w->inbox_lock);
		worker_kick(w);
	}
	return 0;
}

void worker_remove(struct attachment *att)
{
	for (unsigned int i = 0; i < nr_pollers(att->owner->d); i++)
		worker_kick(poller_worker(att, i));
}

void worker_watch_pid(struct attachment *att)
{
	worker_kick(att->owner);
}

void worker_reap_killed(struct daemon *d)
{
	struct attachment *att, *next;

	for (att = attach_reap(d); att; att = next) {
		next = att->kill_next;
		worker_remove(att);
		attach_put(att);
	}
}

/*
 * A poll that cannot be armed (the ring full even after a submit) would
 * leave the attachment unserved: drop it loudly instead.
 */
static void arm_failed(struct poller *p, const char *what)
{
	pr_err("worker",
	       "%s: %u: cannot poll the %s of attachment %llu: ring full",
	       p->att->seg->name, p->w->id, what,
	       (unsigned long long)p->att->id);
	attach_kill(p->att, "dropped");
}

static void arm_uffd(struct poller *p)
{
	if (ring_poll(&p->w->ring, p->att->uffd, true, &p->uffd_req)) {
		arm_failed(p, "uffd");
		return;
	}
	p->uffd_armed = true;
	p->refs++;
}

/* The owner's: once the pid is known (a forked child's comes later). */
static void arm_pidfd(struct poller *p)
{
	struct attachment *att = p->att;

	/* pidfd is set before pid, and pid is atomic. */
	if (p->pid_watched || att->owner != p->w ||
	    atomic_load(&att->pid) <= 0 || att->pidfd < 0)
		return;
	p->pid_watched = true;
	if (ring_poll(&p->w->ring, att->pidfd, false, &p->pidfd_req)) {
		arm_failed(p, "pidfd");
		return;
	}
	p->pidfd_armed = true;
	p->refs++;
}

static void own(struct worker *w, struct poller *p)
{
	list_add_tail(&p->link, &w->pollers);
	arm_uffd(p);
	arm_pidfd(p);
}

/* Drops @p; its polls are cancelled and it goes when they are done. */
static void disown(struct poller *p)
{
	struct worker *w = p->w;

	p->gone = true;
	list_del_init(&p->link);
	list_add_tail(&p->link, &w->gone);
	if ((p->uffd_armed && ring_cancel(&w->ring, &p->uffd_req)) ||
	    (p->pidfd_armed && ring_cancel(&w->ring, &p->pidfd_req)))
		pr_err("worker", "%u: cannot cancel a poll: ring full", w->id);
	poller_put(p);
}

static void arm_efd(struct worker *w)
{
	if (ring_read(&w->ring, w->efd, &w->efd_val, sizeof(w->efd_val),
		      &w->efd_req))
		pr_err("worker", "%u: cannot read its eventfd: ring full",
		       w->id);
}

/*
 * What the events of a batch leave to do once the evlock is released: the
 * daemon lock comes before the evlock (daemon.h), and logging or closing
 * is not for a spinning lock that every worker polling the uffd takes on
 * every fault.
 */
struct events_after {
	struct attachment *children[UFFD_MSG_BATCH]; /* forked */
	int lost[UFFD_MSG_BATCH]; /* forked, no memory for them: uffds */
	unsigned int nr_children, nr_lost;
	bool unmapped; /* no range left */
	bool oom;      /* a range could not be tracked */
};

/* A forked child's attachment: published, served, and its pid looked for. */
static void fork_publish(struct worker *w, struct attachment *parent,
			 struct attachment *child)
{
	struct segment *seg = parent->seg;
	struct daemon *d = w->d;

	/* Owned before anyone can find it. */
	worker_assign(d, child);
	pthread_mutex_lock(&d->lock);
	attach_publish(child);
	pthread_mutex_unlock(&d->lock);
	pr_info("fault", "%s: pid %d forked: attachment %llu", seg->name,
		(int)atomic_load(&parent->pid), (unsigned long long)child->id);
	if (worker_add(child)) {
		/* Nobody would serve it: drop it, loudly (see below). */
		pr_err("fault", "%s: out of memory for a forked child of pid %d",
		       seg->name, (int)atomic_load(&parent->pid));
		attach_kill(child, "dropped");
	}
	attach_put(child);
	/* The main thread finds the child's pid. */
	daemon_wake_main(d);
}

static void events_finish(struct worker *w, struct attachment *att,
			  struct events_after *a)
{
	for (unsigned int i = 0; i < a->nr_lost; i++) {
		/* Closing the uffd unregisters the child's ranges: its next
		 * touch of an absent page would read zeros.  Nothing else
		 * can be done without memory; say so loudly. */
		pr_err("fault", "%s: out of memory for a forked child of pid %d",
		       att->seg->name, (int)atomic_load(&att->pid));
		close(a->lost[i]);
	}
	for (unsigned int i = 0; i < a->nr_children; i++)
		fork_publish(w, att, a->children[i]);
	if (a->oom) {
		/* A lost range would leave faults in it unserved: give up the
		 * attachment loudly rather than serve it wrong. */
		pr_err("fault", "%s: pid %d: out of memory tracking ranges",
		       att->seg->name, (int)atomic_load(&att->pid));
		attach_kill(att, "dropped");
	} else if (a->unmapped) {
		attach_kill(att, "unmapped");
	}
}

static void handle_pagefault(struct worker *w, struct attachment *att,
			     const struct uffd_msg *m)
{
	struct segment *seg = att->seg;
	uint64_t addr = m->arg.pagefault.address &
			~(uint64_t)(seg->page_size - 1);
	uint64_t flags = m->arg.pagefault.flags;
	pid_t tid = att->uffd_features & UFFD_FEATURE_THREAD_ID ?
			    (pid_t)m->arg.pagefault.feat.ptid :
			    0;

	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		/* No snapshot protects anything yet: let the write go. */
		counter_add(seg->c.faults_wp, 1);
		if (uffd_writeprotect(att->uffd, addr, seg->page_size, false,
				      true) == -EAGAIN)
			fill_retry(att, addr); /* an event first */
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
	if (n) {
		att->retry = NULL;
		att->nr_retry = att->retry_cap = 0;
	}
	pthread_mutex_unlock(&att->lock);
	if (!n)
		return;
	for (unsigned int i = 0; i < n && !atomic_load(&att->dead); i++)
		fill_fault(&w->fl, att, addrs[i], 0);
	free(addrs);
}

/*
 * Applies a non-fault event; the caller holds att->evlock for writing.
 * What must wait for the lock's release goes into @a.
 */
static void handle_event(struct worker *w, struct attachment *att,
			 const struct uffd_msg *m, struct events_after *a)
{
	struct attachment *child;

	switch (m->event) {
	case UFFD_EVENT_FORK:
		/* The child's ranges are the parent's now, before the
		 * events after this one change them. */
		counter_add(w->d->events_fork, 1);
		if (attach_fork(att, m->arg.fork.ufd, &child))
			a->lost[a->nr_lost++] = m->arg.fork.ufd;
		else
			a->children[a->nr_children++] = child;
		break;
	case UFFD_EVENT_REMAP:
		counter_add(w->d->events_remap, 1);
		atomic_fetch_add(&att->ev_gen, 1);
		if (attach_remap(att, m->arg.remap.from, m->arg.remap.to,
				 m->arg.remap.len))
			a->oom = true;
		break;
	case UFFD_EVENT_REMOVE:
		/* The frames stay PRESENT in the table; a fault on a
		 * punched one re-checks. */
		counter_add(w->d->events_remove, 1);
		break;
	case UFFD_EVENT_UNMAP:
		counter_add(w->d->events_unmap, 1);
		atomic_fetch_add(&att->ev_gen, 1);
		if (attach_unmap(att, m->arg.remove.start, m->arg.remove.end))
			a->oom = true;
		if (!attach_has_ranges(att))
			a->unmapped = true;
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
 * one step under the evlock (see attach.h); what they leave to do is done
 * after it, before the faults.  The read never blocks, whatever the file's
 * flags (the client shares the open file and may clear O_NONBLOCK): a
 * blocking read would hold the evlock while waiting for a fault that may
 * never come.
 */
static unsigned int drain_uffd(struct worker *w, struct attachment *att)
{
	struct uffd_msg msgs[UFFD_MSG_BATCH];
	unsigned int total = 0;
	ssize_t n;

	do {
		struct events_after a; /* (its arrays need no zeroing) */
		size_t nr = 0;

		a.nr_children = a.nr_lost = 0;
		a.unmapped = a.oom = false;
		spin_write_lock(&att->evlock);
		n = uffd_read(att->uffd, msgs, UFFD_MSG_BATCH);
		for (ssize_t i = 0; i < n; i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				msgs[nr++] = msgs[i];
			else
				handle_event(w, att, &msgs[i], &a);
		}
		spin_write_unlock(&att->evlock);
		if (n < 0) {
			pr_warn("fault", "%s: read uffd: %s", att->seg->name,
				strerror(-n));
			break;
		}
		if (nr < (size_t)n)
			events_finish(w, att, &a);
		total += n;
		for (size_t i = 0; i < nr; i++)
			handle_pagefault(w, att, &msgs[i]);
	} while (n == UFFD_MSG_BATCH); /* a full batch: more? */
	drive_retries(w, att);
	w->served += total;
	return total;
}

/*
 * The inbox: pollers to take on; then whatever a kick was for, which the
 * attachments say: killed (drop it), faults to drive again (from other
 * threads: they land on their owner here), a pid known at last (watch it).
 */
static void run_inbox(struct worker *w)
{
	struct poller *p, *tmp, *next;

	pthread_mutex_lock(&w->inbox_lock);
	p = w->inbox;
	w->inbox = NULL;
	w->inbox_tail = &w->inbox;
	pthread_mutex_unlock(&w->inbox_lock);
	if (atomic_load(&w->stopping))
		w->stop = true;
	for (; p; p = next) {
		next = p->next;
		if (w->stop || atomic_load(&p->att->dead))
			poller_put(p);
		else
			own(w, p);
	}
	list_for_each_entry_safe(p, tmp, &w->pollers, link) {
		if (atomic_load(&p->att->dead)) {
			disown(p);
			continue;
		}
		drive_retries(w, p->att);
		arm_pidfd(p);
	}
}

static void inbox_kicked(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct worker *w = container_of(req, struct worker, efd_req);

	run_inbox(w);
	if (!w->stop)
		arm_efd(w);
}

/*
 * A completion of the multishot poll of the uffd.  Its last one (no
 * IORING_CQE_F_MORE) drops the poll's reference: after a cancellation, or
 * when the kernel ended the poll, which is then armed again.
 */
static void uffd_polled(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct poller *p = container_of(req, struct poller, uffd_req);
	bool more = cqe->flags & IORING_CQE_F_MORE;

	if (!more)
		p->uffd_armed = false;
	if (!p->gone) {
		if (cqe->res < 0 && cqe->res != -ECANCELED)
			pr_warn("fault", "%s: poll uffd: %s", p->att->seg->name,
				strerror(-cqe->res));
		drain_uffd(p->w, p->att);
		if (!more && !atomic_load(&p->att->dead))
			arm_uffd(p);
	}
	if (!more)
		poller_put(p);
}

/* The owner's pidfd poll: the process exited (or it was cancelled). */
static void pidfd_polled(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct poller *p = container_of(req, struct poller, pidfd_req);

	p->pidfd_armed = false;
	if (!p->gone && cqe->res >= 0 && attach_kill(p->att, "exited"))
		counter_add(p->w->d->clients_exited, 1);
	poller_put(p);
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
	ring_dispatch(&w->ring);
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
	struct poller *p;

	while (!w->stop) {
		uint64_t before = w->served;

		list_for_each_entry(p, &w->pollers, link)
			drain_uffd(w, p->att);
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
			pr_err("worker", "%u: io_uring: %s", w->id,
			       strerror(-ret));
			break;
		}
		reap(w);
		if (w->d->spin_ns && w->served != before)
			spin(w);
	}
	while (!list_empty(&w->pollers))
		disown(list_entry(w->pollers.next, struct poller, link));
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
	w->efd_req.complete = inbox_kicked;
	w->inbox_tail = &w->inbox;
	list_init(&w->pollers);
	list_init(&w->gone);
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
	pthread_mutex_destroy(&w->inbox_lock);
	free(w);
	return ret;
}

void worker_stop(struct worker *w)
{
	struct poller *p, *tmp;

	if (!w)
		return;
	atomic_store(&w->stopping, true);
	worker_kick(w);
	pthread_join(w->thread, NULL);
	run_inbox(w); /* drop what was posted after the stop */
	io_uring_queue_exit(&w->ring);
	/* No completion can come any more: the dropped pollers go. */
	list_for_each_entry_safe(p, tmp, &w->gone, link) {
		p->refs = 1;
		poller_put(p);
	}
	filler_fini(&w->fl);
	close(w->efd);
	pthread_mutex_destroy(&w->inbox_lock);
	free(w);
}
