/* SPDX-License-Identifier: MIT */
/*
 * The daemon's global state.
 *
 * Threads: the main thread runs the control plane (socket, requests,
 * signals, housekeeping) on its own io_uring; each worker thread serves the
 * faults of the attachments it owns on its own io_uring.  Segments and
 * their attachment lists are under `lock`; the fault path never takes it.
 */
#ifndef UPAGER_DAEMON_H
#define UPAGER_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "list.h"
#include "segment.h"

struct worker;

struct daemon_state {
	pthread_mutex_t lock;
	struct list_head segments;	/* under lock */
	unsigned int nr_segments;	/* under lock */
	struct list_head attachments;	/* live ones, under lock */
	uint64_t next_seg_id;		/* under lock */
	_Atomic uint64_t next_att_id;
	_Atomic uint64_t nr_attachments;

	struct worker **workers;
	unsigned int nr_workers;
	bool pinned;			/* worker i runs on CPU i only */
	_Atomic unsigned int next_worker;

	uint64_t start_ns;
	uint64_t spin_ns;		/* workers look for faults this long
					 * before sleeping */
	uint64_t uffd_features;		/* what the running kernel offers */
	int main_efd;			/* wakes the main thread */
	int fill_uffd;			/* registers segments' direct maps */

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

extern struct daemon_state upd;

uint64_t now_ns(void);

#define counter_add(c, v) atomic_fetch_add_explicit(&(c), (v), memory_order_relaxed)
#define counter_get(c) atomic_load_explicit(&(c), memory_order_relaxed)

#endif
