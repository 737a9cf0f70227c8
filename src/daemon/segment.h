/* SPDX-License-Identifier: MIT */
/*
 * Segments and the missing-fault path.
 *
 * A segment's frames live in one memfd; page i is at offset i * page_size.
 * A missing fault claims the page in the page table (absent -> BUSY) and,
 * with it, a run of following absent pages as read-ahead; reads the run
 * from the source; and UFFDIO_COPYs it into the faulting process, which on
 * shmem puts the frames into the memfd's page cache: every other process
 * mapping the segment then finds them there without faulting.  A fault
 * that finds its page BUSY parks on the segment's wait list and is woken
 * (UFFDIO_WAKE on its own userfaultfd) when the fill lands, or re-driven if
 * the fill failed.  A page is therefore read from its source once, however
 * many processes touch it.
 *
 * Locking: name, size, memfd and source are fixed at create.  The page
 * table is lock-free (pagetable.h).  The wait list has its own mutex.
 * The attachment list and `deleted` are under the daemon lock.  Counters
 * are relaxed atomics.
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
struct worker;

struct seg_waiter {
	uint64_t pgoff;
	uint64_t addr;
	struct attachment *att;	/* holds a reference */
};

struct segment {
	struct daemon *d;
	uint64_t id;
	char name[UPAGER_NAME_MAX + 1];
	uint64_t size;
	uint64_t npages;
	uint32_t page_size;
	uid_t uid;		/* the creator's: owner and group */
	gid_t gid;
	uint32_t mode;
	int memfd;
	void *map;		/* the daemon's own mapping of the memfd,
				 * registered with d->fill_uffd: a frame
				 * filled there is whole before any process
				 * can see it */
	struct source *src;
	struct pagetable pt;
	_Atomic int refs;

	/* under the daemon lock */
	bool deleted;
	struct list_head link;		/* daemon's segment list */
	struct list_head attachments;
	unsigned int nr_attachments;

	pthread_mutex_t wait_lock;
	struct seg_waiter *waiters;
	unsigned int nr_waiters, waiters_cap;

	struct seg_counters c;
	_Atomic uint64_t last_fault;	/* page; bounds read-ahead */
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

/* Fills @info; the caller holds the daemon lock. */
void segment_info(struct segment *seg, struct upager_segment_info *info);
uint64_t segment_resident_bytes(struct segment *seg);

/*
 * segment_fault_missing - serve a missing fault at @addr (page-aligned)
 * of @att, on worker @w.  Never blocks on I/O: a read goes to @w's ring.
 * @tid: the faulting thread, when known (0 otherwise).
 */
void segment_fault_missing(struct worker *w, struct attachment *att,
			   uint64_t addr, pid_t tid);

/* Resumes the stalled fills on @list (taken off @w's stalled list). */
void segment_fills_resume(struct worker *w, struct list_head *list);
/* The attachment of the stalled fill whose link is @stall_link. */
struct attachment *segment_fill_attachment(struct list_head *stall_link);

/* Maps frames in the memfd into @att (a private attachment). */
void att_continue(struct attachment *att, uint64_t addr, uint64_t len);

/* A fill's I/O completion arrived on @w's ring. */
void segment_fill_io_done(struct worker *w, void *fill, int res);

#endif
