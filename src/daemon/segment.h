/* SPDX-License-Identifier: MIT */
/*
 * Segments: named, shared memory whose frames live in one memfd each; page
 * i is at offset i * page_size.  A segment owns its memfd, the daemon's
 * direct map of it, its source, its page table (the state of every page),
 * and the wait list of the faults parked on a page being filled.  Filling
 * pages is the fill path's business (fill.h).
 *
 * Locking: name, size, memfd, map, source, owner and mode are fixed at
 * create, the id before the segment is published.  The page table is
 * lock-free (pagetable.h).  The wait list (waiters, nr_waiters,
 * waiters_cap) is under wait_lock.  deleted, link, attachments and
 * nr_attachments are under the daemon lock.  Counters and last_fault are
 * relaxed atomics; refs is atomic.
 */
#ifndef UPAGER_SEGMENT_H
#define UPAGER_SEGMENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon.h"
#include "list.h"
#include "pagetable.h"
#include "source.h"

struct attachment;
struct snap_held;

/* A fault parked on a BUSY page, to be answered when its fill lands. */
struct seg_waiter {
	uint64_t pgoff;
	uint64_t addr;
	struct attachment *att; /* holds a reference */
};

struct segment {
	struct daemon *d;
	uint64_t id;
	uint64_t image_id; /* random: the identity of its images
			    * (image.h) */
	char name[UPAGER_NAME_MAX + 1];
	uint64_t size;
	uint64_t npages;
	uint32_t page_size;
	uid_t uid; /* the creator's: owner and group */
	gid_t gid;
	uint32_t mode;
	int memfd;
	void *map; /* the daemon's own mapping of the memfd,
		    * registered with d->fill_uffd: a frame
		    * filled there is whole before any process
		    * can see it */
	struct source *src;
	struct pagetable pt;
	_Atomic int refs;

	/* under the daemon lock */
	bool deleted;
	bool delete_unused;    /* UPAGER_DELETE_UNUSED: at the last detach */
	struct list_head link; /* daemon's segment list */
	struct list_head attachments;
	unsigned int nr_attachments;

	pthread_mutex_t wait_lock; /* guards the wait list: */
	struct seg_waiter *waiters;
	unsigned int nr_waiters, waiters_cap;

	struct seg_counters c;
	_Atomic uint64_t last_fault; /* page; bounds read-ahead */

	/* Snapshots and clones (snapshot.h) */
	struct segment *parent; /* snapshot: cut from it (a reference) */
	struct segment *origin; /* clone: made of this snapshot (its
				 * source holds the reference) */
	bool is_snapshot;
	uint64_t cut_ns;	    /* snapshot: CLOCK_REALTIME of the cut */
	pthread_mutex_t cow_lock;   /* a parent's: its snapshots, cuts,
				     * copies before write */
	struct list_head snapshots; /* a parent's live snapshots, oldest
				     * first (cow_lock) */
	struct list_head snap_link; /* a snapshot: in parent->snapshots */
	_Atomic unsigned int nr_snapshots;
	_Atomic unsigned int nr_clones;
	_Atomic uint64_t cutting;   /* a cut in progress: its number */
	_Atomic uint64_t pages_cbw; /* copies before write (snapshot.h) */
	struct snap_held *held;	    /* writes held by the cut (cow_lock) */
	unsigned int nr_held, held_cap;
};

/*
 * segment_new - a segment of @size bytes over @src (taken over).
 * Returns 0 or -errno.
 */
int segment_new(struct daemon *d, const char *name, uint64_t size, uid_t uid,
		gid_t gid, uint32_t mode, struct source *src,
		struct segment **out);
void segment_get(struct segment *seg);
void segment_put(struct segment *seg);

/*
 * segment_retire_counters - move @seg's counts to the daemon's retired
 * ones, as it leaves the segment list (the daemon lock held): daemon-wide
 * sums, taken under that lock, then never miss a deleted segment that is
 * still attached.  What it counts later is moved when it is freed.
 */
void segment_retire_counters(struct segment *seg);

/*
 * segment_unpublish - @seg's name goes (deleted), under the daemon lock;
 * the caller puts the list's reference once it has dropped that lock.
 */
void segment_unpublish(struct daemon *d, struct segment *seg);

/*
 * Fills @info but for the attached pids (attach_pids() adds them); the
 * caller holds the daemon lock.
 */
void segment_info(struct segment *seg, struct upager_segment_info *info);
uint64_t segment_resident_bytes(struct segment *seg);

/* Whether the memfd holds the frame of page @pgoff (a client may have
 * punched it out since it was filled). */
bool segment_memfd_has(struct segment *seg, uint64_t pgoff);

/*
 * segment_read - the content of pages [@pgoff, @pgoff + @n) of @seg, as
 * a process attached to it would read them now, into @buf, blocking: the
 * frames in the memfd, the source for the rest.  Fills nothing.  For
 * saves.  Returns 0 or -errno.
 */
int segment_read(struct segment *seg, uint64_t pgoff, uint32_t n, void *buf);

/*
 * segment_park - park the fault at @addr of @att on page @pgoff while the
 * page is BUSY.  Returns 1 when parked (the caller's reference to @att goes
 * with it), 0 when the page is not BUSY any more, -ENOMEM.
 */
int segment_park(struct segment *seg, struct attachment *att, uint64_t pgoff,
		 uint64_t addr);

/*
 * segment_unpark - take up to @max of the faults parked on pages
 * [first, first + n) off the wait list, into @out (with their references).
 * Returns how many; call again while it returns @max.
 */
unsigned int segment_unpark(struct segment *seg, uint64_t first, uint64_t n,
			    struct seg_waiter *out, unsigned int max);

#endif
