// SPDX-License-Identifier: MIT
/*
 * Fault-serving threads.
 *
 * A worker sleeps in ring_submit_and_wait() on one ring that carries
 * everything it waits for: a multishot poll on the userfaultfd of each
 * attachment it reads, a poll on the pidfd of each it owns, the source
 * reads of its fills, and its inbox eventfd.  One worker is pinned to each
 * CPU (when the daemon runs one per CPU).
 *
 * Who reads a uffd.  A fault wakes every poller of its uffd, and the one
 * on the faulting thread's CPU runs the moment that thread sleeps, while
 * waking another CPU's costs tens of microseconds and finds, most of the
 * time, that the first took the message.  So a uffd has one reader, its
 * home: the worker on the CPU its threads fault on.  The home follows them:
 * every SAMPLE_NS a reader looks up the CPU of a faulting thread (the
 * message's UFFD_FEATURE_THREAD_ID, /proc/TID/stat), and the home places
 * the readers where the threads were seen in the last SEEN_NS: a
 * uffd whose threads fault on one CPU moves its home there; one whose
 * threads fault on several gets a reader on each, so that they are served
 * in parallel.
 *
 * Why one reader needs no lock.  A UFFDIO_COPY fills the pages of the
 * address it is given; the daemon looks that address up in the ranges the
 * events have told it (attach.h).  The kernel fails a copy while an event
 * that changes the mappings (remap, unmap, remove, fork) is pending, until
 * it is read; but once it is read and before it is applied, a copy by
 * another thread could land at an address that maps other pages now.  A
 * worker that reads every event itself, and applies them before it does
 * anything else, never copies in that window.  Several readers take the
 * attachment's gate (attach.h): a drain (read, apply) and copies exclude
 * each other, nobody waits for it, and a copy never wakes the faulting
 * thread inside it (fill.c, "Three ways into a process's pages").
 *
 * The rules that make both safe (att->readers, bit i for worker i):
 *  - a worker reads and copies into a process only while its bit is set:
 *    alone, without the gate; with others, inside it;
 *  - only the home sets bits (its own thread, before the new reader
 *    starts), and only when it is a reader itself: so a worker alone in
 *    readers is the home and nobody can join it behind its back;
 *  - a worker clears its own bit, on its own thread, between two things it
 *    does: it is never inside a drain or a copy when it leaves;
 *  - whoever is not a reader fills by page offset (fill.c), which is right
 *    whatever the mappings are.
 *
 * A worker's share of an attachment is its `struct poller`, one per worker
 * in the attachment's array: its polls, on the worker's ring, carry it as
 * their completion's io_req, each with a reference to the attachment.
 * Other threads tell a worker about a poller through its inbox (a locked
 * list, and a kick of its eventfd): the worker then brings the poller in
 * line with the attachment (poller_sync): read or not, watch the pid, drop
 * it when dead.  Telling allocates nothing and cannot fail.
 *
 * Read-ahead past a faulting window is queued for an idle worker (fill.c):
 * a worker with nothing to do runs one chunk at a time, looking at its
 * ring between two.
 */
#include <errno.h>
#include <fcntl.h>
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
#include "snapshot.h"
#include "uffd.h"
#include "worker.h"

#define RING_ENTRIES 256
#define UFFD_MSG_BATCH 32
#define SAMPLE_NS 2000000ull /* a faulting thread's CPU, this often */
#define SEEN_NS                                                      \
	60000000ull	 /* a CPU no thread faulted on for this long \
			  * loses its reader */
#define STALL_NS 100000	 /* stalled fills are tried again after */
#define PROTECT_TRIES 64 /* a cut's protection in one drain, at most */

/* One worker's share of one attachment, in the attachment's array. */
struct poller {
	struct io_req uffd_req;	 /* the multishot poll of att->uffd */
	struct io_req pidfd_req; /* the owner's poll of att->pidfd */
	struct worker *w;
	struct attachment *att;
	bool reading;	 /* the uffd poll is wanted */
	bool uffd_armed; /* each armed poll holds a reference */
	bool pidfd_armed;
	bool pid_watched; /* the pidfd poll was armed once */
	bool listed;	  /* on w->pollers */
	bool queued;	  /* in the inbox (inbox_lock), with a reference */
	_Atomic uint64_t seen_ns; /* a thread last faulted on this worker's
				   * CPU then (any reader writes it) */
	struct list_head link;	  /* w->pollers: reading or watching */
	struct poller *next;	  /* in the inbox */
};

/*
 * Locking: the inbox (inbox, inbox_tail, and the pollers' queued) is
 * under inbox_lock and `stopping` is atomic; everything else is the worker
 * thread's, or set before it starts.
 */
struct worker {
	struct daemon *d;
	unsigned int id;
	uint64_t bit; /* 1 << id: its bit in att->readers */
	pthread_t thread;
	struct io_uring ring;
	int efd; /* kicks the worker */
	uint64_t efd_val;
	struct io_req efd_req;
	_Atomic bool stopping; /* worker_stop() asked */
	bool stop;

	pthread_mutex_t inbox_lock;
	struct poller *inbox, **inbox_tail; /* pollers to look at */

	struct list_head pollers; /* with a poll armed or wanted */
	uint64_t served;	  /* uffd messages read */
	struct filler fl;	  /* the fills running on this ring */
};

static void uffd_polled(struct io_req *req, const struct io_uring_cqe *cqe);
static void pidfd_polled(struct io_req *req, const struct io_uring_cqe *cqe);

static struct poller *poller_of(struct attachment *att, struct worker *w)
{
	return &((struct poller *)att->pollers)[w->id];
}

/*
 * Places @att's home, round robin (the threads' CPUs move it later), and
 * makes its pollers, before it is published.  0, or -ENOMEM.
 */
int worker_assign(struct daemon *d, struct attachment *att)
{
	unsigned int i = atomic_fetch_add(&d->next_worker, 1);
	struct worker *w = d->workers[i % d->nr_workers];
	struct poller *p = calloc(d->nr_workers, sizeof(*p));

	if (!p)
		return -ENOMEM;
	for (i = 0; i < d->nr_workers; i++) {
		p[i].uffd_req.complete = uffd_polled;
		p[i].pidfd_req.complete = pidfd_polled;
		p[i].w = d->workers[i];
		p[i].att = att;
		list_init(&p[i].link);
	}
	att->pollers = p;
	att->owner = w;
	atomic_store(&att->home, w);
	atomic_store(&att->kick_fd, w->efd);
	atomic_store(&att->readers, w->bit);
	atomic_store(&att->want, w->bit);
	return 0;
}

void worker_kick(struct worker *w)
{
	daemon_kick(w->efd);
}

/* Asks @p's worker to look at it (poller_sync). */
static void poller_post(struct poller *p)
{
	struct worker *w = p->w;
	bool kick = false;

	pthread_mutex_lock(&w->inbox_lock);
	if (!p->queued) {
		p->queued = true;
		attach_get(p->att);
		p->next = NULL;
		*w->inbox_tail = p;
		w->inbox_tail = &p->next;
		kick = true;
	}
	pthread_mutex_unlock(&w->inbox_lock);
	if (kick)
		worker_kick(w);
}

void worker_add(struct attachment *att)
{
	poller_post(poller_of(att, atomic_load(&att->home)));
}

void worker_remove(struct attachment *att)
{
	struct daemon *d = att->owner->d;

	if (!att->pollers)
		return;
	for (unsigned int i = 0; i < d->nr_workers; i++) {
		struct poller *p = poller_of(att, d->workers[i]);

		if (i == att->owner->id ||
		    (atomic_load(&att->readers) & d->workers[i]->bit))
			poller_post(p);
	}
}

void worker_watch_pid(struct attachment *att)
{
	poller_post(poller_of(att, att->owner));
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
	attach_get(p->att);
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
	attach_get(att);
}

/*
 * Ends a poll of @p: its last completion comes, and drops the poll's
 * reference.  Only because the cancel cannot miss the poll (ring_cancel:
 * an async cancel, which a wakeup in flight does not defeat, where a poll
 * removal would leave a multishot poll armed for good, holding the
 * attachment).
 */
static void cancel(struct poller *p, struct io_req *req, bool armed)
{
	if (armed && ring_cancel(&p->w->ring, req))
		pr_err("worker", "%u: cannot cancel a poll: ring full",
		       p->w->id);
}

/*
 * On or off w->pollers, as it has polls armed or wanted; on it, it holds a
 * reference.  Taking it off may free @p (with its attachment): the last
 * thing a caller does with it.
 */
static void poller_list(struct poller *p)
{
	bool want = p->reading || p->uffd_armed || p->pidfd_armed;

	if (want && !p->listed) {
		p->listed = true;
		attach_get(p->att);
		list_add_tail(&p->link, &p->w->pollers);
	} else if (!want && p->listed) {
		p->listed = false;
		list_del_init(&p->link);
		attach_put(p->att);
	}
}

/* @p's worker stops reading the uffd: between two things it does. */
static void stop_reading(struct poller *p)
{
	struct attachment *att = p->att;
	unsigned int retries;

	p->reading = false;
	cancel(p, &p->uffd_req, p->uffd_armed);
	atomic_fetch_and(&att->readers, ~p->w->bit);
	/* A kick meant for it as the home (a drain owed, faults to drive
	 * again) goes to the home now: its kick_fd was stored first. */
	pthread_mutex_lock(&att->lock);
	retries = att->nr_retry;
	pthread_mutex_unlock(&att->lock);
	if (retries || (atomic_load(&att->gate) & GATE_AGAIN))
		daemon_kick(atomic_load(&att->kick_fd));
}

/* Brings @p in line with its attachment: read or not, watch the pid. */
static void poller_sync(struct poller *p)
{
	struct attachment *att = p->att;
	struct worker *w = p->w;
	bool dead = w->stop || atomic_load(&att->dead);
	bool read = !dead && (atomic_load(&att->want) & w->bit);

	if (read && !p->reading && !(atomic_load(&att->readers) & w->bit)) {
		/* Chosen as the home while it was leaving: it sets its own
		 * bit back only where nobody reads (nobody copies alone). */
		uint64_t none = 0;

		read = atomic_load(&att->home) == w &&
		       atomic_compare_exchange_strong(&att->readers, &none,
						      w->bit);
	}
	if (read && !p->reading) {
		p->reading = true;
		if (!p->uffd_armed)
			arm_uffd(p);
	} else if (!read && p->reading) {
		stop_reading(p);
	} else if (!read) {
		/* Asked to join, then not, before it started. */
		atomic_fetch_and(&att->readers, ~w->bit);
	}
	if (dead)
		cancel(p, &p->pidfd_req, p->pidfd_armed);
	else
		arm_pidfd(p);
	poller_list(p); /* (the caller holds a reference) */
}

static void arm_efd(struct worker *w)
{
	if (ring_read(&w->ring, w->efd, &w->efd_val, sizeof(w->efd_val),
		      &w->efd_req))
		pr_err("worker", "%u: cannot read its eventfd: ring full",
		       w->id);
}

/* ---- where a uffd is read ---- */

/* The CPU thread @tid last ran on (field 39 of /proc/TID/stat), or -1. */
static int thread_cpu(pid_t tid)
{
	char path[48], buf[1024], *p;
	ssize_t n;
	int fd, field;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the name may hold anything */
	if (!p)
		return -1;
	/* ") S ..." : field 3 starts after the space. */
	for (field = 2; *p && field < 39; p++)
		if (*p == ' ')
			field++;
	return field == 39 ? atoi(p) : -1;
}

/* Notes the CPU thread @tid of @att faults on, once per SAMPLE_NS. */
static void sample(struct worker *w, struct attachment *att, pid_t tid,
		   uint64_t now)
{
	int cpu = thread_cpu(tid);

	if (cpu < 0 || (unsigned int)cpu >= w->d->nr_workers)
		return;
	atomic_store(&poller_of(att, w->d->workers[cpu])->seen_ns, now);
}

/*
 * The home places @att's readers on the CPUs its threads were seen on:
 * new ones join (their bits set before they start), a new home is chosen
 * among them if this one's CPU is not among them, and the others are told
 * to leave.  The home itself leaves last, after handing over.
 */
static void place(struct worker *w, struct poller *p)
{
	struct attachment *att = p->att;
	struct daemon *d = w->d;
	uint64_t readers = atomic_load(&att->readers), add, go;
	uint64_t now = now_ns(), want = 0;
	struct worker *home = w;

	for (unsigned int i = 0; i < d->nr_workers; i++) {
		struct poller *q = poller_of(att, d->workers[i]);
		uint64_t seen = atomic_load(&q->seen_ns);

		if (seen && now - seen < SEEN_NS)
			want |= d->workers[i]->bit;
	}
	if (!want || (want == atomic_load(&att->want) && (want & w->bit) &&
		      (readers & want) == want))
		return;
	if (!(want & w->bit))
		home = d->workers[__builtin_ctzll(
			want & readers ? want & readers : want)];
	add = want & ~readers;
	go = readers & ~want & ~w->bit;
	atomic_fetch_or(&att->readers, add);
	atomic_store(&att->want, want);
	if (home != w) {
		atomic_store(&att->home, home);
		atomic_store(&att->kick_fd, home->efd);
		counter_add(d->home_moves, 1);
	}
	if (__builtin_popcountll(want) > 1)
		counter_add(d->pollers_added, __builtin_popcountll(add));
	for (uint64_t m = add | go | (home != w ? home->bit : 0); m; m &= m - 1)
		poller_post(poller_of(att, d->workers[__builtin_ctzll(m)]));
	if (!(want & w->bit)) {
		stop_reading(p);
		poller_list(p);
	}
}

/* ---- reading a uffd ---- */

/*
 * What the events of a batch leave to do once it is out of the drain:
 * publishing a forked child takes the daemon lock, and logging or closing
 * is not for the gate, which every reader of the uffd takes.
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

	/* Served before anyone can find it. */
	if (worker_assign(d, child)) {
		/* Dropped: its uffd closes, which unregisters its ranges
		 * (see events_finish). */
		pr_err("fault", "%s: out of memory for a forked child of pid %d",
		       seg->name, (int)atomic_load(&parent->pid));
		attach_put(child);
		return;
	}
	pthread_mutex_lock(&d->lock);
	attach_publish(child);
	pthread_mutex_unlock(&d->lock);
	pr_info("fault", "%s: pid %d forked: attachment %llu", seg->name,
		(int)atomic_load(&parent->pid), (unsigned long long)child->id);
	worker_add(child);
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
		counter_add(seg->c.faults_wp, 1);
		fill_wp(&w->fl, att, addr);
		return;
	}
	if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
		/* The frame is in the memfd: map it.  The missing path
		 * checks that and handles a frame punched meanwhile. */
		counter_add(seg->c.faults_minor, 1);
		fill_ahead_check(att, addr);
		fill_fault(&w->fl, att, addr, tid);
		return;
	}
	counter_add(seg->c.faults_missing, 1);
	fill_ahead_check(att, addr);
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
	for (unsigned int i = 0; i < n && !atomic_load(&att->dead); i++) {
		if (addrs[i] & FILL_RETRY_WP)
			fill_wp(&w->fl, att, addrs[i] & ~FILL_RETRY_WP);
		else
			fill_fault(&w->fl, att, addrs[i], 0);
	}
	free(addrs);
}

/* Applies a non-fault event.  What must wait goes into @a. */
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
		 * punched one re-checks, and so does a cut. */
		counter_add(w->d->events_remove, 1);
		snapshot_removed(att, m->arg.remove.start, m->arg.remove.end);
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
 * UFFDIO_COPY to that address fills.  With other readers, reading and
 * applying is one step inside the gate, and the faults are served after
 * it; a drain the gate refuses is done by whoever holds it.  The read
 * never blocks, whatever the file's flags (the client shares the open
 * file and may clear O_NONBLOCK).
 */
static unsigned int drain_uffd(struct worker *w, struct poller *p)
{
	struct attachment *att = p->att;
	struct uffd_msg msgs[UFFD_MSG_BATCH];
	unsigned int total = 0, protect_tries = 0;
	bool again = false, protect;
	ssize_t n;

	do {
		struct events_after a; /* (its arrays need no zeroing) */
		bool alone = atomic_load(&att->readers) == w->bit;
		size_t nr = 0;

		if (!p->reading || (!alone && !gate_drain_enter(&att->gate)))
			break; /* refused: the holder drains again */
		if (alone && (atomic_load(&att->gate) & GATE_AGAIN))
			atomic_fetch_and(&att->gate, ~GATE_AGAIN); /* stale */
		a.nr_children = a.nr_lost = 0;
		a.unmapped = a.oom = false;
		/* A cut's write-protection: here, where no copy into the
		 * process runs and the events read so far are applied.  An
		 * event pending fails it: read it, then again. */
		protect = atomic_load(&att->protect_want) !=
				  atomic_load(&att->protect_done) &&
			  snapshot_protect(att) == -EAGAIN &&
			  ++protect_tries < PROTECT_TRIES;
		n = uffd_read(att->uffd, msgs, UFFD_MSG_BATCH);
		for (ssize_t i = 0; i < n; i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				msgs[nr++] = msgs[i];
			else
				handle_event(w, att, &msgs[i], &a);
		}
		again = !alone && gate_release(&att->gate);
		counter_add(w->d->uffd_reads, 1);
		if (n <= 0)
			counter_add(w->d->uffd_reads_empty, 1);
		if (n < 0) {
			if (again)
				attach_owe_drain(att);
			pr_warn("fault", "%s: read uffd: %s", att->seg->name,
				strerror(-n));
			break;
		}
		if (nr < (size_t)n)
			events_finish(w, att, &a);
		total += n;
		if (nr && w->d->pinned &&
		    (att->uffd_features & UFFD_FEATURE_THREAD_ID)) {
			uint64_t now = now_ns();

			if (now >= atomic_load(&att->sample_ns)) {
				atomic_store(&att->sample_ns, now + SAMPLE_NS);
				sample(w, att,
				       (pid_t)msgs[nr - 1].arg.pagefault.feat.ptid,
				       now);
				if (atomic_load(&att->home) == w)
					place(w, p);
			}
		}
		w->fl.draining = att;
		for (size_t i = 0; i < nr; i++)
			handle_pagefault(w, att, &msgs[i]);
		w->fl.draining = NULL;
		/* A drain refused while this worker copied: now. */
		if (!alone && (atomic_load(&att->gate) & GATE_AGAIN))
			again = true;
	} while (n == UFFD_MSG_BATCH || again || protect); /* more? */
	if (protect_tries == PROTECT_TRIES)
		attach_owe_drain(att); /* later: others' turn first */
	if (again && !p->reading)
		attach_owe_drain(att); /* it left meanwhile (place) */
	if (p->reading)
		drive_retries(w, att);
	w->served += total;
	return total;
}

/*
 * The inbox: pollers to bring in line with their attachments; then faults
 * to drive again (from other threads: they land on a reader here), and
 * drains owed (a copy left the gate with one refused meanwhile).
 */
static void run_inbox(struct worker *w)
{
	struct poller *p, *tmp, *next;

	pthread_mutex_lock(&w->inbox_lock);
	p = w->inbox;
	w->inbox = NULL;
	w->inbox_tail = &w->inbox;
	for (struct poller *q = p; q; q = q->next)
		q->queued = false;
	pthread_mutex_unlock(&w->inbox_lock);
	if (atomic_load(&w->stopping))
		w->stop = true;
	for (; p; p = next) {
		next = p->next;
		poller_sync(p);
		attach_put(p->att);
	}
	list_for_each_entry_safe(p, tmp, &w->pollers, link) {
		if (!p->reading)
			continue;
		if (atomic_load(&p->att->gate) & GATE_AGAIN)
			drain_uffd(w, p);
		else
			drive_retries(w, p->att);
	}
}

static void inbox_kicked(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct worker *w = container_of(req, struct worker, efd_req);

	(void)cqe;
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
	struct attachment *att = p->att;
	bool more = cqe->flags & IORING_CQE_F_MORE;

	if (cqe->res < 0 && cqe->res != -ECANCELED)
		pr_warn("fault", "%s: poll uffd: %s", att->seg->name,
			strerror(-cqe->res));
	drain_uffd(p->w, p);
	if (more)
		return;
	p->uffd_armed = false;
	if (p->reading && !atomic_load(&att->dead))
		arm_uffd(p);
	poller_list(p);
	attach_put(att);
}

/* The owner's pidfd poll: the process exited (or it was cancelled). */
static void pidfd_polled(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct poller *p = container_of(req, struct poller, pidfd_req);
	struct attachment *att = p->att;

	p->pidfd_armed = false;
	if (cqe->res >= 0 && !atomic_load(&att->dead) &&
	    attach_kill(att, "exited"))
		counter_add(p->w->d->clients_exited, 1);
	poller_list(p);
	attach_put(att);
}

/*
 * Fills whose copy met a pending event: read the events (and whatever
 * faults came with them), then copy again what the fills hold (a worker
 * that no longer reads that uffd fills by page offset).
 */
static void resume_stalled(struct worker *w)
{
	struct list_head list, *n;

	fill_take_stalled(&w->fl, &list);
	for (n = list.next; n != &list; n = n->next) {
		struct attachment *att = fill_stalled_attachment(n);

		if (!atomic_load(&att->dead))
			drain_uffd(w, poller_of(att, w));
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
 * After serving a fault, look for the next one for a while before sleeping
 * (--spin-us; off by default: a worker spinning on the faulting thread's
 * CPU takes that CPU from it).
 */
static void spin(struct worker *w)
{
	uint64_t until = now_ns() + w->d->spin_ns;
	struct poller *p, *tmp;

	while (!w->stop) {
		uint64_t before = w->served;

		list_for_each_entry_safe(p, tmp, &w->pollers, link)
			drain_uffd(w, p);
		io_uring_submit_and_get_events(&w->ring);
		reap(w);
		if (w->served != before)
			until = now_ns() + w->d->spin_ns;
		else if (now_ns() >= until)
			break;
	}
}

/*
 * Idle: run read-ahead while there is some (and room on the ring), a chunk
 * at a time, taking what the ring has between two.  The idle bit is set
 * before the queue is looked at, and fill.c queues before it looks for
 * idle workers to kick: one of the two sees the other.
 */
static void run_ahead(struct worker *w)
{
	while (!w->stop) {
		if (!fill_run_ahead(&w->fl) && !fill_idle(&w->fl)) {
			atomic_fetch_or(&w->d->idle, w->bit);
			if (!fill_ahead_waiting(w->d) || !fill_run_ahead(&w->fl))
				return;
			atomic_fetch_and(&w->d->idle, ~w->bit);
		}
		io_uring_submit_and_get_events(&w->ring);
		reap(w);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct poller *p, *tmp;

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
		int ret;

		run_ahead(w);
		if (list_empty(&w->fl.stalled)) {
			ret = ring_submit_and_wait(&w->ring);
		} else {
			/* A copy failed for an event read meanwhile, whose
			 * thread has not run yet: nothing wakes us for it. */
			struct __kernel_timespec ts = { 0, STALL_NS };
			struct io_uring_cqe *cqe;

			io_uring_submit(&w->ring);
			ret = io_uring_wait_cqe_timeout(&w->ring, &cqe, &ts);
			if (ret == -ETIME)
				ret = 0;
		}
		atomic_fetch_and(&w->d->idle, ~w->bit);
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
	list_for_each_entry_safe(p, tmp, &w->pollers, link) {
		if (p->reading)
			stop_reading(p);
		cancel(p, &p->pidfd_req, p->pidfd_armed);
	}
	return NULL;
}

int worker_start(struct daemon *d, unsigned int id, struct worker **out)
{
	struct worker *w = calloc(1, sizeof(*w));
	int ret;

	if (!w)
		return -ENOMEM;
	if (id >= 64) {
		free(w);
		return -EINVAL; /* att->readers has 64 bits */
	}
	w->d = d;
	w->id = id;
	w->bit = 1ull << id;
	w->efd_req.complete = inbox_kicked;
	w->inbox_tail = &w->inbox;
	list_init(&w->pollers);
	pthread_mutex_init(&w->inbox_lock, NULL);
	w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->efd < 0) {
		ret = -errno;
		goto err;
	}
	ret = io_uring_queue_init(RING_ENTRIES, &w->ring, 0);
	if (ret < 0)
		goto err;
	filler_init(&w->fl, d, &w->ring, id);
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
	if (!w)
		return;
	atomic_store(&w->stopping, true);
	worker_kick(w);
	pthread_join(w->thread, NULL);
	atomic_fetch_and(&w->d->idle, ~w->bit);
}

void worker_free(struct worker *w)
{
	struct poller *p, *tmp;

	if (!w)
		return;
	run_inbox(w); /* drop what was posted after the stop */
	io_uring_queue_exit(&w->ring);
	/* No completion can come any more: the polls' references go. */
	list_for_each_entry_safe(p, tmp, &w->pollers, link) {
		struct attachment *att = p->att;
		unsigned int refs = p->uffd_armed + p->pidfd_armed;

		attach_get(att);
		p->uffd_armed = p->pidfd_armed = p->reading = false;
		poller_list(p);
		while (refs--)
			attach_put(att);
		attach_put(att);
	}
	filler_fini(&w->fl);
	close(w->efd);
	pthread_mutex_destroy(&w->inbox_lock);
	free(w);
}
