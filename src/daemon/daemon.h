/* SPDX-License-Identifier: MIT */
/*
 * The daemon's state: one `struct daemon`, made by main and passed to what
 * needs it; a segment keeps a pointer to it, a worker too, an attachment
 * reaches it through its segment.
 *
 * Threads: the main thread runs the control plane (socket, requests,
 * signals, housekeeping) on its own io_uring; each worker thread serves the
 * faults of the attachments it polls on its own io_uring.  Segments and
 * their attachment lists are under `lock`; the fault path never takes it.
 */
#ifndef UPAGER_DAEMON_H
#define UPAGER_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "list.h"
#include "quota.h"

struct worker;

#define counter_add(c, v) atomic_fetch_add_explicit(&(c), (v), memory_order_relaxed)
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
};

struct daemon {
	pthread_mutex_t lock;
	struct list_head segments;	/* under lock */
	unsigned int nr_segments;	/* under lock */
	struct list_head attachments;	/* live ones, under lock */
	uint64_t next_seg_id;		/* under lock */
	_Atomic uint64_t next_att_id;
	_Atomic uint64_t nr_attachments;

	/* Set by main before the first thread starts, then read-only. */
	struct worker **workers;
	unsigned int nr_workers;
	bool pinned;			/* worker i runs on CPU i only */
	uint64_t start_ns;
	uint64_t spin_ns;		/* workers look for faults this long
					 * before sleeping */
	uint64_t uffd_features;		/* what the running kernel offers */
	int main_efd;			/* wakes the main thread */
	int fill_uffd;			/* registers segments' direct maps */
	struct quota_limits limits;	/* per user */

	_Atomic unsigned int next_worker;
	struct seg_counters retired;	/* of deleted segments */
	_Atomic uint64_t connections;
	_Atomic uint64_t events_fork;
	_Atomic uint64_t events_remap;
	_Atomic uint64_t events_remove;
	_Atomic uint64_t events_unmap;
	_Atomic uint64_t clients_exited;
	_Atomic uint64_t protocol_errors;
	_Atomic uint64_t unresolved;	/* forked attachments without pid */
};

/* Empty state, no thread, no descriptor; the limits are the defaults. */
void daemon_init(struct daemon *d);
/* Frees what daemon_init() made. */
void daemon_fini(struct daemon *d);

/* Wakes the main thread (housekeeping: forks, killed attachments). */
void daemon_wake_main(struct daemon *d);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);

#endif
