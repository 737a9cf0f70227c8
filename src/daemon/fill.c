// SPDX-License-Identifier: MIT
/*
 * The fill path; the design is in fill.h.
 *
 * What a fill does with each UFFDIO_COPY result (the kernel copies page by
 * page and stops at the first failure, reporting what it copied):
 *   -EEXIST  the frame is already in the memfd (filled behind our back):
 *            it is present; go on with the next page.
 *   -EAGAIN  an event (remove, remap) is pending on the uffd and must be
 *            read first: keep what was read, wait for the worker to read
 *            the event, copy again (see fill_deliver).
 *   -ENOENT, -EFAULT, -EINVAL   the mapping changed under us: give the
 *            pages back and wake the thread, whose retry finds the new
 *            reality.
 *   -ESRCH, -ENOSPC   the process is gone: give the pages back.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "attach.h"
#include "daemon.h"
#include "fill.h"
#include "log.h"
#include "proto.h"
#include "ring.h"
#include "segment.h"
#include "uffd.h"

#define RA_MIN 1

/* One run of pages being read and put into a segment, on one worker. */
struct fill {
	struct io_req req; /* the source read's completions */
	struct source_read rd;
	struct filler *fl; /* the worker it runs on */
	struct segment *seg;
	struct attachment *att;	     /* the faulting one; holds a reference */
	uint64_t addr;		     /* where the run starts in att */
	bool prefetch;		     /* nobody waits at addr */
	bool answered;		     /* the faulting thread was answered */
	uint32_t from;		     /* pages before it are in the memfd */
	struct list_head stall_link; /* on its filler's stalled list */
};

void filler_init(struct filler *fl, struct daemon *d, struct io_uring *ring)
{
	memset(fl, 0, sizeof(*fl));
	fl->d = d;
	fl->ring = ring;
	fl->buf_size = (size_t)FILL_MAX_PAGES * sysconf(_SC_PAGESIZE);
	list_init(&fl->stalled);
}

void filler_fini(struct filler *fl)
{
	while (fl->nr_bufs)
		munmap(fl->bufs[--fl->nr_bufs], fl->buf_size);
}

/* A read buffer, recycled: NULL when out of memory. */
static void *buf_get(struct filler *fl)
{
	void *p;

	if (fl->nr_bufs)
		return fl->bufs[--fl->nr_bufs];
	p = mmap(NULL, fl->buf_size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void buf_put(struct filler *fl, void *buf)
{
	if (fl->nr_bufs < FILL_BUF_CACHE)
		fl->bufs[fl->nr_bufs++] = buf;
	else
		munmap(buf, fl->buf_size);
}

/* Wakes @att's threads waiting on [addr, addr + len): they fault again. */
static void att_wake(struct attachment *att, uint64_t addr, uint64_t len)
{
	int ret = uffd_wake(att->uffd, addr, len);

	if (ret && ret != -ESRCH)
		pr_debug("fault", "wake %#llx: %s", (unsigned long long)addr,
			 strerror(-ret));
}

/*
 * Drives the fault at @addr of @att again later, from the attachment's
 * retry list.  Without the memory for that, the fault is failed instead:
 * the thread is woken and its access faults again, a new message the
 * daemon reads like any other.  Slower, never lost; and no worse than
 * it was (an access that needs an event read first finds it read by
 * then, one that needs memory tries again).
 */
void fill_retry(struct attachment *att, uint64_t addr)
{
	if (attach_requeue(att, addr) == -ENOMEM)
		att_wake(att, addr, att->seg->page_size);
}

/* Maps frames already in the memfd into a private attachment. */
static void att_continue(struct attachment *att, uint64_t addr, uint64_t len)
{
	switch (uffd_continue(att->uffd, addr, len, true, NULL)) {
	case 0:
	case -ESRCH: /* the process is gone */
		break;
	case -EAGAIN: /* an event first */
		fill_retry(att, addr);
		break;
	default: /* -EEXIST: mapped already; -ENOENT: moved */
		att_wake(att, addr, len);
		break;
	}
}

/*
 * The source could not give the page: the access fails with SIGBUS, like
 * an I/O error under a kernel file mapping.
 */
static void att_poison(struct attachment *att, uint64_t addr, uint64_t len)
{
	if (att->uffd_features & UFFD_FEATURE_POISON) {
		switch (uffd_poison(att->uffd, addr, len, true, NULL)) {
		case 0:
		case -EEXIST: /* poisoned or filled already */
			return;
		case -EAGAIN: /* an event first */
			fill_retry(att, addr);
			return;
		case -ESRCH: /* the process is gone */
		case -ENOSPC:
			break;
		default: /* -ENOENT: it moved: refault */
			att_wake(att, addr, len);
			return;
		}
	}
	/* No poison markers: the thread cannot be answered with a wrong
	 * byte, so the process gets the SIGBUS directly. */
	pid_t pid = atomic_load(&att->pid);
	if (pid > 0)
		kill(pid, SIGBUS);
}

/* Wakes or drives again the faults parked on pages [first, first + n). */
static void fill_unpark(struct segment *seg, uint64_t first, uint64_t n)
{
	struct seg_waiter woken[16];
	unsigned int nr;

	do {
		nr = segment_unpark(seg, first, n, woken, 16);
		for (unsigned int i = 0; i < nr; i++) {
			struct seg_waiter *sw = &woken[i];
			uint64_t st = pte_get(&seg->pt, sw->pgoff);

			if ((st & PTE_PRESENT) &&
			    (sw->att->flags & UPG_REGISTER_RDONLY))
				att_continue(sw->att, sw->addr, seg->page_size);
			else if (st & PTE_PRESENT)
				att_wake(sw->att, sw->addr, seg->page_size);
			else
				fill_retry(sw->att, sw->addr);
			attach_put(sw->att);
		}
	} while (nr == 16);
}

/*
 * How many pages to read for a fault at @pgoff.  Context read-ahead, as the
 * kernel's page cache does it: the run of present pages just before this
 * one says how sequential the access is, however many threads and
 * processes interleave their streams, so no per-stream state is needed.
 * A random access gets one page; a stream doubles its window each fault.
 */
static uint32_t ra_pages(struct segment *seg, uint64_t pgoff)
{
	uint32_t h = pte_run_below(&seg->pt, pgoff, FILL_MAX_PAGES / 2,
				   PTE_PRESENT);

	return h ? 2 * h : RA_MIN;
}

static void fill_free(struct fill *f)
{
	if (f->rd.buf)
		buf_put(f->fl, f->rd.buf);
	attach_put(f->att);
	f->fl->nr_fills--;
	free(f);
}

/* Puts pages [from, npages) of the run back to absent. */
static void fill_release(struct fill *f, uint32_t from)
{
	if (from < f->rd.npages)
		pte_end_busy_run(&f->seg->pt, f->rd.pgoff + from,
				 f->rd.npages - from, 0);
}

/*
 * Puts pages [from, npages) of the run into the memfd.  A shared attachment
 * gets them through its own mapping, which also maps them there; a private
 * (read-only) one cannot (UFFDIO_COPY into a private mapping makes private
 * pages), so they go in through the daemon's direct map and are then
 * mapped with UFFDIO_CONTINUE.  Returns the bytes done; @err gets 0, or
 * -errno for what stopped it.
 */
static uint64_t fill_ioctl(struct fill *f, uint32_t from, int *err)
{
	uint64_t ps = f->seg->page_size;
	uint64_t len = (uint64_t)(f->rd.npages - from) * ps;
	bool direct = f->att->flags & UPG_REGISTER_RDONLY;
	uint64_t dst = direct ? (uintptr_t)f->seg->map +
					(f->rd.pgoff + from) * ps :
				f->addr + from * ps;
	int uffd = direct ? f->seg->d->fill_uffd : f->att->uffd;
	uint64_t pgoff, run, done;

	if (!direct) {
		/* The address still maps these pages (see attach.h). */
		spin_read_lock(&f->att->evlock);
		if (attach_lookup(f->att, dst, &pgoff, &run) < 0 ||
		    pgoff != f->rd.pgoff + from || run < len / ps) {
			spin_read_unlock(&f->att->evlock);
			*err = -ENOENT;
			return 0;
		}
	}
	/* Into the direct map nobody waits: no wake. */
	if (f->rd.zero)
		*err = uffd_zeropage(uffd, dst, len, !direct, &done);
	else
		*err = uffd_copy(uffd, dst, (char *)f->rd.buf + from * ps, len,
				 !direct, &done);
	if (!direct)
		spin_read_unlock(&f->att->evlock);
	return done;
}

/*
 * Puts the run into the memfd, page states following what each ioctl did.
 * Returns the pages from the start of the run that are present now; @err
 * is what stopped it (-errno), if anything did.
 */
static uint32_t fill_map(struct fill *f, int *err, bool *first_copied)
{
	struct segment *seg = f->seg;
	uint32_t done = f->from, filled = 0;

	*err = 0;
	*first_copied = false;
	while (done < f->rd.npages) {
		uint32_t n = fill_ioctl(f, done, err) / seg->page_size;

		if (!n && *err == -EEXIST) {
			/* Filled behind our back: present, not ours. */
			pte_end_busy(&seg->pt, f->rd.pgoff + done++,
				     PTE_PRESENT);
			continue;
		}
		if (!n)
			break;
		/* All, or part: the next call reports what stopped it. */
		if (done == 0)
			*first_copied = true;
		filled += n;
		pte_end_busy_run(&seg->pt, f->rd.pgoff + done, n, PTE_PRESENT);
		done += n;
		*err = 0;
	}
	counter_add(seg->c.pages_filled, filled);
	return done;
}

/*
 * Tells the faulting thread how its fill went.  A UFFDIO_COPY into its
 * own mapping woke it already; a frame found there already, or put in
 * through the direct map, needs a wake or a UFFDIO_CONTINUE.  @err: what
 * stopped the fill before its first page (-errno), when @done is 0.
 */
static void fill_answer(struct fill *f, uint32_t done, int err,
			bool first_copied)
{
	struct attachment *att = f->att;
	struct segment *seg = f->seg;

	if (done > 0) {
		if (att->flags & UPG_REGISTER_RDONLY)
			att_continue(att, f->addr,
				     (uint64_t)done * seg->page_size);
		else if (!first_copied)
			att_wake(att, f->addr, seg->page_size);
		return;
	}
	switch (err) {
	case -EAGAIN: /* an event first: read it, then again */
		fill_retry(att, f->addr);
		break;
	case -ESRCH: /* the process is gone */
	case -ENOSPC:
		if (attach_kill(att, "gone"))
			counter_add(seg->d->clients_exited, 1);
		break;
	default: /* -ENOENT and the like: the mapping changed
		  * under us; the thread's retry finds out */
		att_wake(att, f->addr, seg->page_size);
		break;
	}
}

static int fill_start(struct filler *fl, struct segment *seg,
		      struct attachment *att, uint64_t addr, uint64_t pgoff,
		      uint32_t n, bool prefetch);

/*
 * Asynchronous read-ahead: a long sequential run starts reading the next
 * one before anybody faults on it, and copies it into the same process's
 * mapping, so that stream finds its pages mapped and other processes find
 * them in the memfd, while the daemon reads further.  It runs at most
 * PREFETCH_AHEAD windows past the latest fault, so a stream that stopped
 * stops costing memory.
 */
#define PREFETCH_MIN 64
#define PREFETCH_AHEAD 4

static void fill_prefetch_next(struct filler *fl, struct fill *f)
{
	struct segment *seg = f->seg;
	uint64_t ps = seg->page_size;
	uint64_t next = f->rd.pgoff + f->rd.npages;
	uint64_t addr = f->addr + (uint64_t)f->rd.npages * ps;
	uint64_t last = atomic_load_explicit(&seg->last_fault,
					     memory_order_relaxed);
	uint64_t pgoff, run;
	uint32_t n = 0;

	if (f->rd.npages < PREFETCH_MIN || atomic_load(&f->att->dead) ||
	    next > last + PREFETCH_AHEAD * (uint64_t)FILL_MAX_PAGES ||
	    attach_lookup(f->att, addr, &pgoff, &run) < 0 || pgoff != next)
		return;
	if (run > f->rd.npages)
		run = f->rd.npages;
	n = pte_claim_run(&seg->pt, next, run);
	if (n)
		fill_start(fl, seg, f->att, addr, next, n, true);
}

static void fill_deliver(struct filler *fl, struct fill *f);

/* The run is in the buffer (or failed with @res < 0): map it. */
static void fill_finish(struct filler *fl, struct fill *f, int res)
{
	struct segment *seg = f->seg;

	counter_add(seg->c.bytes_read, f->rd.bytes_read);
	if (res == -EBUSY || res == -ENOMEM) {
		/* Our own shortage, not the source's: try again later. */
		fill_release(f, 0);
		if (!f->prefetch)
			fill_retry(f->att, f->addr);
		goto out;
	}
	if (res < 0 && f->rd.done >= seg->page_size &&
	    f->rd.done / seg->page_size < f->rd.npages) {
		/* The run read fine up to a bad page: map that part.  The
		 * bad page is read again on its own when it faults. */
		uint32_t good = f->rd.done / seg->page_size;

		fill_release(f, good);
		fill_unpark(seg, f->rd.pgoff + good, f->rd.npages - good);
		f->rd.npages = good;
		res = 0;
	}
	if (res < 0) {
		/* Only the page asked for is poisoned: the read-ahead may
		 * read fine on its own. */
		pr_warn("fault", "%s: source read of pages %llu+%u failed: %s",
			seg->name, (unsigned long long)f->rd.pgoff,
			f->rd.npages, strerror(-res));
		fill_release(f, f->prefetch ? 0 : 1);
		if (!f->prefetch) {
			pte_end_busy(&seg->pt, f->rd.pgoff, PTE_POISON);
			att_poison(f->att, f->addr, seg->page_size);
		}
		goto out;
	}
	/* The next read goes out first, to run while this run is copied. */
	fill_prefetch_next(fl, f);
	fill_deliver(fl, f);
	return;
out:
	fill_unpark(seg, f->rd.pgoff, f->rd.npages);
	fill_free(f);
}

/*
 * Puts the run that is in the buffer into the memfd and answers the
 * faulting thread.  A copy that meets a pending event (EAGAIN) keeps the
 * buffer and the pages it has not copied yet: the fill waits on its
 * filler's stalled list until the event is read, then resumes here.  The
 * source is never read twice for it.
 */
static void fill_deliver(struct filler *fl, struct fill *f)
{
	struct segment *seg = f->seg;
	uint32_t first = f->from, done;
	bool first_copied;
	int err;

	done = fill_map(f, &err, &first_copied);
	if (err == -EAGAIN && done < f->rd.npages &&
	    !(f->att->flags & UPG_REGISTER_RDONLY) &&
	    !atomic_load(&f->att->dead)) {
		if (done > 0 && !f->prefetch && !f->answered) {
			fill_answer(f, done, 0, first_copied);
			f->answered = true;
		}
		fill_unpark(seg, f->rd.pgoff + first, done - first);
		f->from = done;
		list_add_tail(&f->stall_link, &fl->stalled);
		return;
	}
	fill_release(f, done);
	if (!f->prefetch && !f->answered)
		fill_answer(f, done, err, first_copied);
	else if (done > first && (f->att->flags & UPG_REGISTER_RDONLY))
		att_continue(f->att, f->addr + (uint64_t)first * seg->page_size,
			     (uint64_t)(done - first) * seg->page_size);
	fill_unpark(seg, f->rd.pgoff + first, f->rd.npages - first);
	fill_free(f);
}

void fill_take_stalled(struct filler *fl, struct list_head *list)
{
	list_init(list);
	while (!list_empty(&fl->stalled)) {
		struct list_head *n = fl->stalled.next;

		list_del_init(n);
		list_add_tail(n, list);
	}
}

void fill_resume(struct filler *fl, struct list_head *stalled)
{
	struct fill *f, *tmp;

	list_for_each_entry_safe(f, tmp, stalled, stall_link) {
		list_del_init(&f->stall_link);
		if (atomic_load(&f->att->dead)) {
			fill_release(f, f->from);
			fill_unpark(f->seg, f->rd.pgoff + f->from,
				    f->rd.npages - f->from);
			fill_free(f);
			continue;
		}
		fill_deliver(fl, f);
	}
}

struct attachment *fill_stalled_attachment(struct list_head *stall_link)
{
	return list_entry(stall_link, struct fill, stall_link)->att;
}

/* A completion of the source read: the run is in, or more was queued. */
static void fill_read_done(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct fill *f = container_of(req, struct fill, req);
	int ret = source_complete(f->seg->src, &f->rd, cqe->res, f->fl->ring);

	if (ret != 0)
		fill_finish(f->fl, f, ret < 0 ? ret : 0);
}

/*
 * A private attachment faulted on a frame that is in the memfd: map it and
 * the present frames after it (up to the read-ahead window), so that a
 * reader of a filled segment takes one round trip per window, not per page.
 */
static void continue_run(struct attachment *att, uint64_t addr, uint64_t pgoff,
			 uint64_t run)
{
	struct segment *seg = att->seg;
	uint64_t n, max = ra_pages(seg, pgoff);

	if (max > run)
		max = run;
	n = 1 +
	    (max > 1 ? pte_run_from(&seg->pt, pgoff + 1, max - 1, PTE_PRESENT) :
		       0);
	att_continue(att, addr, n * seg->page_size);
}

/*
 * Reads pages [pgoff, pgoff + n), claimed BUSY by the caller, and puts them
 * into the memfd through @att's mapping at @addr: for its fault there, or
 * as read-ahead (@prefetch).  On failure the pages are given back and
 * -ENOMEM returned.
 */
static int fill_start(struct filler *fl, struct segment *seg,
		      struct attachment *att, uint64_t addr, uint64_t pgoff,
		      uint32_t n, bool prefetch)
{
	struct fill *f = calloc(1, sizeof(*f));
	int ret;

	if (f && seg->src->ops->kind != UPAGER_SOURCE_ZERO) {
		f->rd.buf = buf_get(fl);
		if (!f->rd.buf) {
			free(f);
			f = NULL;
		}
	}
	if (!f) {
		pte_end_busy_run(&seg->pt, pgoff, n, 0);
		fill_unpark(seg, pgoff, n);
		return -ENOMEM;
	}
	fl->nr_fills++;
	f->fl = fl;
	f->seg = seg;
	f->att = att;
	attach_get(att);
	f->addr = addr;
	f->prefetch = prefetch;
	f->rd.pgoff = pgoff;
	f->rd.npages = n;
	f->req.complete = fill_read_done;
	f->rd.user_data = &f->req;
	list_init(&f->stall_link);
	ret = source_read(seg->src, &f->rd, fl->ring);
	if (ret != 0)
		fill_finish(fl, f, ret < 0 ? ret : 0);
	return 0;
}

void fill_fault(struct filler *fl, struct attachment *att, uint64_t addr,
		pid_t tid)
{
	struct segment *seg = att->seg;
	uint64_t pgoff, run, st;
	uint32_t n, max;
	int ret;

	if (attach_lookup(att, addr, &pgoff, &run) < 0) {
		/*
		 * A range the events did not describe (mremap grew it, or
		 * left it mapped): /proc says what it maps.  Nothing there:
		 * the retry finds that out (SIGSEGV).  Something else,
		 * registered with our uffd by the client: SIGBUS, rather
		 * than a fault that comes back for ever.
		 */
		ret = attach_discover(att, addr, tid);
		if (ret == -EINVAL)
			att_poison(att, addr, seg->page_size);
		if (ret || attach_lookup(att, addr, &pgoff, &run) < 0) {
			if (ret != -EINVAL)
				att_wake(att, addr, seg->page_size);
			return;
		}
	}
	for (;;) {
		st = pte_get(&seg->pt, pgoff);
		if (st & PTE_POISON) {
			att_poison(att, addr, seg->page_size);
			return;
		}
		if (st & PTE_PRESENT) {
			if (segment_memfd_has(seg, pgoff)) {
				if (att->flags & UPG_REGISTER_RDONLY)
					continue_run(att, addr, pgoff, run);
				else
					att_wake(att, addr, seg->page_size);
				return;
			}
			/* Punched out (MADV_REMOVE): fill it again. */
			pte_present_to_absent(&seg->pt, pgoff);
			continue;
		}
		ret = pte_claim(&seg->pt, pgoff);
		if (ret > 0)
			break;
		if (ret < 0) {
			fill_retry(att, addr); /* -ENOMEM: see there */
			return;
		}
		attach_get(att);
		ret = segment_park(seg, att, pgoff, addr);
		if (ret > 0) {
			counter_add(seg->c.faults_waited, 1);
			return;
		}
		attach_put(att);
		if (ret < 0) {
			fill_retry(att, addr); /* -ENOMEM: see there */
			return;
		}
	}

	atomic_store_explicit(&seg->last_fault, pgoff, memory_order_relaxed);
	max = ra_pages(seg, pgoff);
	if (max > run)
		max = run;
	n = 1 + (max > 1 ? pte_claim_run(&seg->pt, pgoff + 1, max - 1) : 0);
	if (n > counter_get(seg->c.readahead_max))
		atomic_store(&seg->c.readahead_max, n);
	if (fill_start(fl, seg, att, addr, pgoff, n, false))
		fill_retry(att, addr); /* -ENOMEM: see there */
}
