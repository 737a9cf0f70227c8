/* SPDX-License-Identifier: MIT */
/*
 * The daemon's state: one `struct daemon`, made by main and passed to what
 * needs it; a segment keeps a pointer to it, a worker too, an attachment
 * reaches it through its segment.
 *
 * Threads.  The main thread runs the control plane (socket, requests,
 * signals, housekeeping) on its own io_uring, and is the only one to take
 * attachments off the lists (attach_reap) and to set a forked child's pid.
 * Each worker thread serves the faults of the attachments it polls on its
 * own io_uring.  The fault path never takes the daemon lock; a worker takes
 * it only to publish a forked child.
 *
 * Lock order, outermost first.  A thread holding one of these takes only
 * what its entry names:
 *
 *   1. the daemon lock, d->lock (mutex): the segment and attachment lists
 *      and what the structs below say.  Taken holding no other lock, and
 *      no other is taken under it.  Held for list work and short system
 *      calls (fstat, kcmp, pidfd_open, memfd_create, a non-blocking send),
 *      never across /proc scans or calls into other processes' memory:
 *      those collect under it (with references), work without it, and
 *      check again under it.
 *   2. an attachment's lock (mutex): its ranges, retry list and read-ahead
 *      records; takes nothing (attach_fork holds the parent's while it
 *      fills the child, which nobody else can see yet).  No system call
 *      under it.
 *
 *   No worker ever waits for another: reading a uffd and copying into its
 *   process are ordered by who reads it and by an attachment's gate
 *   (attach.h), which is never waited on (worker.c).
 *
 *   Leaves, taken holding no other lock and taking none: a segment's
 *   wait_lock (its parked faults), a worker's inbox_lock (its inbox), the
 *   daemon's ahead_lock (read-ahead waiting for an idle worker).
 *
 * Fields: the comments on each struct say which lock guards what; the
 * rest is atomic, or set before the threads start and then read-only.
 */
#ifndef UPAGER_DAEMON_H
#define UPAGER_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "list.h"
#include "quota.h"

struct attachment;
struct worker;

#define counter_add(c, v) \
	atomic_fetch_add_explicit(&(c), (v), memory_order_relaxed)
#define counter_get(c) atomic_load_explicit(&(c), memory_order_relaxed)

/* A segment's fault counters (relaxed atomics); the daemon keeps the sum
 * of its deleted segments' in the same form. */
struct seg_counters {
	_Atomic uint64_t faults_missing;
	_Atomic uint64_t faults_wp;
	_Atomic uint64_t faults_minor;
	_Atomic uint64_t faults_waited;
	_Atomic uint64_t pages_filled;
	_Atomic uint64_t bytes_read;
	_Atomic uint64_t readahead_max;
	_Atomic uint64_t readahead_pages;     /* filled ahead of any fault */
	_Atomic uint64_t readahead_touched;   /* of those, found mapped */
	_Atomic uint64_t readahead_untouched; /* found not mapped */
};

struct daemon {
	pthread_mutex_t lock;
	struct list_head segments;    /* under lock */
	unsigned int nr_segments;     /* under lock */
	struct list_head attachments; /* live ones, under lock */
	uint64_t next_seg_id;	      /* under lock */
	_Atomic uint64_t next_att_id;
	_Atomic uint64_t nr_attachments;

	/* Set by main before the first thread starts, then read-only: */
	struct worker **workers;
	unsigned int nr_workers;
	bool pinned; /* worker i runs on CPU i only */
	uint64_t start_ns;
	uint64_t spin_ns;	    /* workers look for faults this long
				     * before sleeping */
	uint64_t uffd_features;	    /* what the running kernel offers */
	int main_efd;		    /* wakes the main thread */
	int fill_uffd;		    /* registers segments' direct maps */
	struct quota_limits limits; /* per user */

	/* Atomic: */
	_Atomic unsigned int next_worker;
	struct seg_counters retired; /* of deleted segments */
	_Atomic uint64_t connections;
	_Atomic uint64_t events_fork;
	_Atomic uint64_t events_remap;
	_Atomic uint64_t events_remove;
	_Atomic uint64_t events_unmap;
	_Atomic uint64_t clients_exited;
	_Atomic uint64_t protocol_errors;
	_Atomic uint64_t unresolved; /* forked attachments without pid */
	/* Read-ahead waiting for an idle worker (fill.c), and the workers
	 * about to sleep (bit i: worker i): */
	pthread_mutex_t ahead_lock;
	struct list_head ahead; /* under ahead_lock */
	_Atomic unsigned int nr_ahead;
	_Atomic uint64_t idle;

	/* the fault dispatch: */
	_Atomic uint64_t uffd_reads;	   /* read()s on clients' uffds */
	_Atomic uint64_t uffd_reads_empty; /* of those, with no message */
	_Atomic uint64_t home_moves;	   /* a uffd's home worker moved */
	_Atomic uint64_t pollers_added;	   /* a uffd polled by one more
					    * worker */

	/* Killed, for the main thread to take off the lists (attach.h): a
	 * lock-free stack, pushed by anyone, emptied by the main thread. */
	struct attachment *_Atomic killed;
};

/* Empty state, no thread, no descriptor; the limits are the defaults. */
void daemon_init(struct daemon *d);
/* Frees what daemon_init() made. */
void daemon_fini(struct daemon *d);

/* Wakes the thread waiting on the eventfd @efd (main's, a worker's). */
void daemon_kick(int efd);
/* Wakes the main thread (housekeeping: forks, killed attachments). */
void daemon_wake_main(struct daemon *d);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);

#endif
