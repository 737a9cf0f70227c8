/* SPDX-License-Identifier: MIT */
/*
 * Attachments: one process's mapping of one segment, and the userfaultfd
 * through which the daemon serves it.
 *
 * The address ranges start as the one range the client registered and
 * follow the process's mremap/munmap through the uffd's events; a fork
 * (UFFD_EVENT_FORK) makes a new attachment with the parent's ranges, whose
 * pid the daemon finds afterwards (the event does not carry it).
 *
 * Lifetime: reference counted.  Each worker polling the uffd holds one;
 * fills in flight and parked waiters hold theirs.  attach_kill() takes an
 * attachment out of service once (whoever comes first: the process exited
 * or exec'd, it detached, its ranges are all unmapped), from any thread and
 * under any lock but the daemon lock: it marks it dead and hands it to the
 * main thread, which takes it off the daemon's lists (attach_reap) and
 * tells the workers polling it to drop it.  The uffd is closed with the
 * last reference.
 *
 * Locking (the order is in daemon.h):
 *  - fixed before the attachment is published: id, seg, owner, uffd, uid,
 *    parent_pid, parent_id, flags, uffd_features, uffd_ioctls, created_ns,
 *    pollers (the array; its entries are their workers');
 *  - pidfd: written once, by the main thread, before pid is stored; read
 *    after pid was seen set;
 *  - atomics: refs, dead, pid (0 until a forked child is identified; -1
 *    when it was found gone), fault_tid, ev_gen, and the dispatch fields
 *    (home, kick_fd, readers, want, gate, sample_ns),
 *    whose rules are in worker.c;
 *  - `lock`: ranges and the retry list, as any worker may serve or drive
 *    again a fault of this attachment; held for bookkeeping only, never
 *    across a syscall;
 *  - the daemon lock: seg_link, all_link;
 *  - kill_next: the daemon's list of killed attachments (lock-free).
 */
#ifndef UPAGER_ATTACH_H
#define UPAGER_ATTACH_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <upager/upager.h>

#include "list.h"

struct daemon;
struct segment;
struct worker;

/*
 * The gate of an attachment whose uffd several workers read (worker.c):
 * a drain (reading the uffd and applying the events read) and copies into
 * the process's mapping exclude each other, and nobody ever waits for
 * it.  A drain refused sets AGAIN and leaves: whoever holds the gate
 * drains again on leaving it.  A copy refused fills the page by its
 * offset instead (fill.c), which needs no gate.
 */
#define GATE_DRAIN (1u << 31)
#define GATE_AGAIN (1u << 30)
#define GATE_COPIES (GATE_AGAIN - 1)

/* True: the caller drains.  False: AGAIN is set for whoever holds it. */
static inline bool gate_drain_enter(_Atomic uint32_t *g)
{
	uint32_t v = atomic_load_explicit(g, memory_order_relaxed);

	for (;;) {
		if (!(v & (GATE_DRAIN | GATE_COPIES))) {
			if (atomic_compare_exchange_weak_explicit(
				    g, &v, GATE_DRAIN, memory_order_acquire,
				    memory_order_relaxed))
				return true;
		} else if (atomic_compare_exchange_weak_explicit(
				   g, &v, v | GATE_AGAIN, memory_order_relaxed,
				   memory_order_relaxed)) {
			return false; /* set while held: the holder sees it */
		}
	}
}

/* Leaves a drain.  True: a drain was refused meanwhile; the caller must
 * see that one happens (drain again, or have its worker do it). */
static inline bool gate_release(_Atomic uint32_t *g)
{
	return atomic_exchange_explicit(g, 0, memory_order_release) & GATE_AGAIN;
}

/* True: the caller may copy.  A drain held or wanted refuses it. */
static inline bool gate_copy_enter(_Atomic uint32_t *g)
{
	uint32_t v = atomic_load_explicit(g, memory_order_relaxed);

	while (!(v & (GATE_DRAIN | GATE_AGAIN)))
		if (atomic_compare_exchange_weak_explicit(g, &v, v + 1,
							  memory_order_acquire,
							  memory_order_relaxed))
			return true;
	return false;
}

/* Leaves a copy.  True: the last copier out, with a drain refused: the
 * caller must drain (gate_drain_enter takes the gate then). */
static inline bool gate_copy_exit(_Atomic uint32_t *g)
{
	uint32_t v = atomic_fetch_sub_explicit(g, 1, memory_order_release);

	return (v & GATE_COPIES) == 1 && (v & GATE_AGAIN);
}

/* Pages read ahead for this process's stream, not checked yet (fill.c). */
struct att_ahead {
	uint64_t addr;
	uint32_t n;
};

#define ATT_AHEAD 8

struct att_range {
	uint64_t start;
	uint64_t len;
	uint64_t pgoff; /* segment page at start */
};

struct attachment {
	uint64_t id;
	_Atomic int refs;
	_Atomic bool dead;
	struct segment *seg;  /* holds a reference */
	bool put_seg;	      /* attach_reap(): it took the name along */
	struct worker *owner; /* polls the pidfd */
	int uffd;
	int pidfd;		 /* -1 until the pid is known */
	_Atomic pid_t pid;	 /* 0: forked, not yet identified */
	_Atomic pid_t fault_tid; /* a thread seen faulting, while pid
				  * is 0 */
	uid_t uid;		 /* the registering process's user;
				  * its forked children's too */
	pid_t parent_pid;
	uint64_t parent_id; /* forked from this attachment */
	uint32_t flags;	    /* UPG_REGISTER_* */
	uint64_t uffd_features;
	uint64_t uffd_ioctls;
	uint64_t created_ns;

	/*
	 * Who reads the uffd (worker.c, "Who reads a uffd").  Bit i of
	 * readers: worker i may read it and copy into the process; set by
	 * the home before that worker starts, cleared by that worker once
	 * it stopped.  A worker alone in readers reads and copies without
	 * the gate; with several, drains and copies take the gate.
	 */
	struct worker *_Atomic home; /* a reader; decides who reads */
	_Atomic int kick_fd;	     /* the home's eventfd */
	_Atomic uint64_t readers;
	_Atomic uint64_t want;	       /* the readers the home chose */
	_Atomic uint32_t gate;	       /* see gate_drain_enter() */
	_Atomic uint64_t sample_ns;    /* the next thread CPU sample is due */
	void *pollers;		       /* one per worker (worker.c) */
	_Atomic uint64_t ev_gen;       /* bumped by every event that changes
					* the ranges */
	_Atomic uint64_t protect_want; /* a cut asks its reader to write-
					* protect the ranges (snapshot.h) */
	_Atomic uint64_t protect_done; /* the last cut it did that for */
	_Atomic uint64_t protect_ns;   /* when its last protection began */

	pthread_mutex_t lock; /* guards the seven below */
	struct att_range *ranges;
	unsigned int nr_ranges, ranges_cap;
	uint64_t *retry; /* fault addresses to drive again */
	unsigned int nr_retry, retry_cap;
	struct att_ahead ahead[ATT_AHEAD]; /* oldest first */
	_Atomic unsigned int nr_ahead;	   /* (read without the lock too) */

	struct list_head seg_link;    /* segment's list, daemon lock */
	struct list_head all_link;    /* daemon's list, daemon lock */
	struct attachment *kill_next; /* the daemon's killed list */
};

/* A new attachment of @seg over [start, start+len) at segment page @pgoff. */
int attach_new(struct segment *seg, int uffd, pid_t pid, uint64_t start,
	       uint64_t len, uint64_t pgoff, struct attachment **out);

/*
 * attach_publish - make @att known: on its segment's list and the daemon's
 * (and among the unresolved when its pid is not known).  The caller holds
 * the daemon lock; @att's owner is set.
 */
void attach_publish(struct attachment *att);

/*
 * attach_uffd_served - whether @fd is the same open file as the uffd of a
 * live attachment (kcmp): one uffd served twice would be polled and read
 * by two attachments.  The caller holds the daemon lock.
 */
bool attach_uffd_served(struct daemon *d, int fd);

/*
 * attach_pids - the pids of @seg's attachments into @info (as many as it
 * holds).  The caller holds the daemon lock.
 */
void attach_pids(struct segment *seg, struct upager_segment_info *info);

/* The live attachment @id, with a reference; NULL if none. */
struct attachment *attach_find(struct daemon *d, uint64_t id);

/* A child's attachment after UFFD_EVENT_FORK: the parent's ranges. */
int attach_fork(struct attachment *parent, int uffd, struct attachment **out);

void attach_get(struct attachment *att);
void attach_put(struct attachment *att);

/* Sets the pid and opens a pidfd.  0 or -errno. */
int attach_set_pid(struct attachment *att, pid_t pid);

/*
 * attach_lookup - the segment page of @addr
 * @run: set to the pages from @addr to the end of its range
 * Returns 0, or -ENOENT when @addr is in none of the ranges.
 */
int attach_lookup(struct attachment *att, uint64_t addr, uint64_t *pgoff,
		  uint64_t *run);

/*
 * attach_discover - learn what is mapped at @addr from /proc/PID/maps
 * (@tid: a thread of the process, for a forked child whose pid is not
 * known yet), for what the events do not say: mremap growing a range in
 * place or past its old length, the old range MREMAP_DONTUNMAP leaves
 * mapped.  @alone: the caller is the uffd's only reader; else the gate is
 * taken to apply what /proc said, and *@drain set when the caller must
 * drain the uffd after.  Returns 0 when @addr maps the segment now (and
 * the ranges say so), -ENOENT when nothing is mapped there, -EINVAL when
 * something else is, -EAGAIN when the mappings kept changing meanwhile
 * (or the gate was held).
 */
int attach_discover(struct attachment *att, uint64_t addr, pid_t tid,
		    bool alone, bool *drain);

/*
 * Range bookkeeping for the uffd events: 0, or -ENOMEM when a range could
 * not be tracked (the attachment cannot be served right any more: the
 * caller drops it, once it holds no lock).
 */
int attach_unmap(struct attachment *att, uint64_t start, uint64_t end);
int attach_remap(struct attachment *att, uint64_t from, uint64_t to,
		 uint64_t len);
bool attach_has_ranges(struct attachment *att);

/*
 * attach_requeue - queue the fault at @addr to be driven again by a worker
 * reading @att's uffd, and wake its home.  Returns 0 (nothing to do when @att
 * is dead), or -ENOMEM: the caller must answer the fault some other way.
 */
int attach_requeue(struct attachment *att, uint64_t addr);

/*
 * attach_owe_drain - a drain of @att's uffd was refused and nobody holds
 * the gate to do it: mark it owed (AGAIN) and kick the home, which drains
 * what it finds owed.
 */
void attach_owe_drain(struct attachment *att);

/*
 * attach_kill - take @att (published) out of service: idempotent, from any
 * thread, under any lock but the daemon lock.  @why: for the log.  True
 * for the call that did it.
 */
bool attach_kill(struct attachment *att, const char *why);

/*
 * attach_reap - the attachments killed since the last call, taken off the
 * daemon's lists (takes the daemon lock).  Main thread only.  Returns them
 * linked through kill_next, each with a reference the caller drops.
 */
struct attachment *attach_reap(struct daemon *d);

#endif
