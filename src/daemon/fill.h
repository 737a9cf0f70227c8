/* SPDX-License-Identifier: MIT */
/*
 * The fill path: how a missing (or minor) fault of an attachment is served
 * from its segment's source.
 *
 * A missing fault claims the page in the page table (absent -> BUSY) and,
 * with it, a run of following absent pages as read-ahead; reads the run
 * from the source on the worker's io_uring; and UFFDIO_COPYs it into the
 * faulting process, which on shmem puts the frames into the memfd's page
 * cache: every other process mapping the segment then finds them there
 * without faulting.  A fault that finds its page BUSY parks on the
 * segment's wait list and is woken (UFFDIO_WAKE on its own userfaultfd)
 * when the fill lands, or driven again if the fill failed.  A page is
 * therefore read from its source once, however many processes touch it.
 *
 * A private (read-only) attachment cannot take a UFFDIO_COPY (it would
 * make private pages): its fills go into the memfd through the daemon's
 * direct map, and the frames are then mapped with UFFDIO_CONTINUE.
 *
 * A fill runs on the worker that read the fault, in that worker's thread
 * only: `struct filler` is the part of a worker the fill path uses (its
 * ring, its read buffers, its stalled fills), so that the fill path knows
 * nothing else of workers.
 *
 * Read-ahead comes in two kinds.  The faulting window: a fault reads the
 * run of pages from it on, as long as the run of present pages before it
 * (context read-ahead), and maps them all into the faulting process with
 * its answer (at most 256 pages).  And ahead of the stream (file sources):
 * once a window is long, the pages after it are read in bounded chunks by
 * whichever worker is idle, after the fault was answered.  A worker that
 * is the uffd's only reader maps them into the process; any other puts
 * them into the memfd only, and the process maps them with a minor fault
 * of the kernel's own when it gets there, which is what makes them
 * observable: /proc/PID/pagemap later says whether each was touched (the
 * read-ahead hit counters).
 */
#ifndef UPAGER_FILL_H
#define UPAGER_FILL_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "list.h"

struct attachment;
struct daemon;
struct segment;

/* A read-ahead run is at most this long; read buffers are this size. */
#define FILL_MAX_PAGES 1024
#define FILL_BUF_CACHE 8

#define FILL_ZAPS 32

/* Pages of a segment's direct map whose page tables are to go. */
struct fill_zap {
	struct segment *seg; /* holds a reference */
	uint64_t pgoff;
	uint64_t n;
};

/* A worker's fill state.  Its thread alone uses it. */
struct filler {
	struct daemon *d;
	struct io_uring *ring;	     /* the worker's: source reads */
	uint64_t bit;		     /* the worker's bit in att->readers */
	struct attachment *draining; /* whose faults it serves from a
				      * drain now (worker.c) */
	struct list_head stalled;    /* fills waiting for an event to be
				      * read before they copy again */
	unsigned int nr_fills;	     /* in flight on the ring */
	unsigned int nr_ahead;	     /* of those, read-ahead */
	struct fill_zap zap[FILL_ZAPS];
	unsigned int nr_zap;
	void *zeros;		    /* FILL_MAX_PAGES pages of zeros, read
				     * only: copied write-protected */
	void *bufs[FILL_BUF_CACHE]; /* FILL_MAX_PAGES pages each */
	unsigned int nr_bufs;
	size_t buf_size;
};

void filler_init(struct filler *fl, struct daemon *d, struct io_uring *ring,
		 unsigned int id);
/* Frees the cached buffers; no fill may be in flight. */
void filler_fini(struct filler *fl);
/* The worker is idle: one step of what waits for that.  Returns whether
 * more is left. */
bool fill_idle(struct filler *fl);

/*
 * fill_fault - serve a missing (or minor) fault at @addr (page-aligned) of
 * @att.  Never blocks on I/O: a read goes to @fl's ring.  @tid: the
 * faulting thread, when known (0 otherwise).
 */
void fill_fault(struct filler *fl, struct attachment *att, uint64_t addr,
		pid_t tid);

/*
 * fill_retry - drive the fault at @addr of @att again later (an event must
 * be read first, or memory was short): from the attachment's retry list,
 * or, without memory for that, by waking the thread to fault again.
 */
void fill_retry(struct attachment *att, uint64_t addr);
/* In a retry address: the fault is a write to a protected page. */
#define FILL_RETRY_WP 0x1ull

/*
 * fill_wp - serve the write-protect fault at @addr of @att: held while a
 * cut is in progress (snapshot.h), else the page is copied into the
 * snapshots that share it, then un-protected (which lets the write go).
 */
void fill_wp(struct filler *fl, struct attachment *att, uint64_t addr);

/*
 * Fills whose copy met a pending event wait on @fl until that event is
 * read: fill_take_stalled() moves them to @list, whose attachments (see
 * fill_stalled_attachment()) the worker then reads, and fill_resume()
 * copies again what they hold.
 */
void fill_take_stalled(struct filler *fl, struct list_head *list);
struct attachment *fill_stalled_attachment(struct list_head *link);
void fill_resume(struct filler *fl, struct list_head *list);

/*
 * fill_run_ahead - start the next chunk of read-ahead waiting for an idle
 * worker, on @fl's ring.  Returns whether there was one (and room).
 */
bool fill_run_ahead(struct filler *fl);
/* Whether read-ahead waits for a worker. */
bool fill_ahead_waiting(struct daemon *d);
/* Drops the read-ahead still waiting (the daemon stops). */
void fill_ahead_flush(struct daemon *d);

/*
 * fill_ahead_check - @att faulted at @addr: check the pages read ahead for
 * it below @addr (its stream went past them) against /proc/PID/pagemap,
 * and count them touched or not.
 */
void fill_ahead_check(struct attachment *att, uint64_t addr);

#endif
