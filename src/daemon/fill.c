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
 *            reality.  -ENOENT for a run of pages is first taken to be a
 *            run across mappings (mprotect splits a range without an
 *            event): the run goes by offset (below), which needs none.
 *   -ESRCH, -ENOSPC   the process is gone: give the pages back.
 *
 * Three ways into a process's pages (fill_ioctl):
 *   alone     the worker is the uffd's only reader (worker.c): it reads
 *             and applies every event itself, so the ranges it looks the
 *             address up in are the process's mappings, and a change not
 *             read yet fails the copy with EAGAIN.  UFFDIO_COPY into the
 *             process, which wakes the faulting thread: one system call.
 *   gated     one of several readers: the same copy, inside the gate
 *             (attach.h) that keeps drains out, without the wake-up
 *             (UFFDIO_COPY_MODE_DONTWAKE), which comes after the gate is
 *             left: nothing is held while a woken thread runs.
 *   by offset any worker, always right: the frames go into the memfd
 *             through the daemon's own map, where the page offset is the
 *             address, then the thread is woken and maps the frame with a
 *             minor fault of its own.  Read-only attachments (mapped with
 *             UFFDIO_CONTINUE), read-ahead, a worker that does not read the
 *             uffd (any more), and a copy the gate refused go this way.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
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
#include "snapshot.h"
#include "uffd.h"
#include "worker.h"

#define RA_MIN 1

/*
 * Read-ahead past the faulting window goes in chunks of at most AHEAD_CHUNK
 * pages, one at a time per idle worker (at most AHEAD_INFLIGHT of its
 * reads in flight), starting once a window reached AHEAD_MIN pages and
 * staying within AHEAD_WINDOWS windows of the latest fault: a stream that
 * stopped stops costing memory, and no fault waits behind more than one
 * chunk of it.  Not for a zero source: there is nothing to wait for that
 * reading ahead would hide, and its windows, mapped into the process with
 * the answer, cost the stream no fault at all where pages filled ahead
 * cost it a minor fault each (measured: 64 MiB written in order took 26
 * ms with stalls of 2-4 ms behind chunks, 21 ms and 0.6 ms at most
 * without).
 */
#define AHEAD_MIN 64
#define AHEAD_CHUNK 256
#define AHEAD_INFLIGHT 4
#define AHEAD_WINDOWS 4
#define AHEAD_REACH (AHEAD_WINDOWS * (uint64_t)FILL_MAX_PAGES)

/* One run of pages being read and put into a segment, on one worker. */
struct fill {
	struct io_req req; /* the source read's completions */
	struct source_read rd;
	struct filler *fl; /* the worker it runs on */
	struct segment *seg;
	struct attachment *att;	     /* the faulting one; holds a reference */
	uint64_t addr;		     /* where the run starts in att */
	bool ahead;		     /* read-ahead: nobody waits at addr */
	bool answered;		     /* the faulting thread was answered */
	bool by_offset;		     /* an ioctl went by offset */
	bool gated;		     /* the last ioctl went through the gate */
	bool offset_only;	     /* the rest goes by offset */
	uint32_t from;		     /* pages before it are in the memfd */
	struct list_head stall_link; /* on its filler's stalled list */
};

/* Read-ahead waiting for an idle worker, on d->ahead. */
struct ahead_job {
	struct list_head link;
	struct attachment *att; /* holds a reference */
	uint64_t addr;
	uint64_t pgoff;
	uint32_t n;
};

void filler_init(struct filler *fl, struct daemon *d, struct io_uring *ring,
		 unsigned int id)
{
	memset(fl, 0, sizeof(*fl));
	fl->d = d;
	fl->ring = ring;
	fl->bit = 1ull << id;
	fl->buf_size = (size_t)FILL_MAX_PAGES * sysconf(_SC_PAGESIZE);
	list_init(&fl->stalled);
	/* Address space only: reading it maps the kernel's zero page. */
	fl->zeros = mmap(NULL, fl->buf_size, PROT_READ,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (fl->zeros == MAP_FAILED)
		fl->zeros = NULL;
}

static bool zap_step(struct filler *fl);

void filler_fini(struct filler *fl)
{
	while (zap_step(fl))
		;
	while (fl->nr_bufs)
		munmap(fl->bufs[--fl->nr_bufs], fl->buf_size);
	if (fl->zeros)
		munmap(fl->zeros, fl->buf_size);
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
		att_wake(att, addr & ~FILL_RETRY_WP, att->seg->page_size);
}

/* How this worker may reach into @att's process now (see the top). */
enum into { INTO_ALONE, INTO_GATED, BY_OFFSET };

static enum into into_enter(struct filler *fl, struct attachment *att)
{
	uint64_t r = atomic_load_explicit(&att->readers, memory_order_acquire);

	if (r == fl->bit)
		return INTO_ALONE;
	if ((r & fl->bit) && gate_copy_enter(&att->gate))
		return INTO_GATED;
	return BY_OFFSET;
}

static void into_exit(struct filler *fl, struct attachment *att, enum into how)
{
	/* The last copier out owes a drain that was refused meanwhile: the
	 * drain this fill is served from does it when it is done with its
	 * faults; else the home, a reader whatever happens meanwhile (not
	 * here, inside a fill). */
	if (how == INTO_GATED && gate_copy_exit(&att->gate) &&
	    fl->draining != att)
		daemon_kick(atomic_load(&att->kick_fd));
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
 * The source could not give the page @pgoff: the access at @addr fails
 * with SIGBUS, like an I/O error under a kernel file mapping.  A poison
 * marker goes in at an address, as a copy does: only a reader of the uffd
 * puts it there, and only while @addr still maps @pgoff (ATT_NOT_OURS:
 * @addr maps no page of the segment, but memory the client registered
 * with our uffd).
 */
#define ATT_NOT_OURS UINT64_MAX

static void att_poison(struct filler *fl, struct attachment *att, uint64_t addr,
		       uint64_t pgoff, uint64_t len)
{
	if (att->uffd_features & UFFD_FEATURE_POISON) {
		enum into how = into_enter(fl, att);
		uint64_t at, run;
		int ret;

		if (how == BY_OFFSET) {
			fill_retry(att, addr); /* for a reader */
			return;
		}
		if (pgoff != ATT_NOT_OURS &&
		    (attach_lookup(att, addr, &at, &run) < 0 || at != pgoff)) {
			/* It moved: the thread faults again where it is. */
			into_exit(fl, att, how);
			att_wake(att, addr, len);
			return;
		}
		ret = uffd_poison(att->uffd, addr, len, true, NULL);
		into_exit(fl, att, how);
		switch (ret) {
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

/*
 * A fault at @addr, which the ranges the events describe do not hold
 * (mremap grew a range, or left it mapped): what /proc says, applied by a
 * reader.  Returns attach_discover()'s answer, or 1 when this worker is no
 * reader: the fault (@retry: its FILL_RETRY_* bits) was handed to one.
 */
static int att_discover(struct filler *fl, struct attachment *att,
			uint64_t addr, pid_t tid, uint64_t retry)
{
	bool drain = false;
	int ret;

	if (!(atomic_load(&att->readers) & fl->bit)) {
		fill_retry(att, addr | retry);
		return 1;
	}
	ret = attach_discover(att, addr, tid,
			      atomic_load(&att->readers) == fl->bit, &drain);
	if (drain)
		attach_owe_drain(att);
	return ret;
}

void fill_wp(struct filler *fl, struct attachment *att, uint64_t addr)
{
	struct segment *seg = att->seg;
	uint64_t pgoff, run;
	bool foreign = false;
	enum into how;
	int ret;

	if (attach_lookup(att, addr, &pgoff, &run) < 0) {
		/* As for a missing fault: a page of the segment is never let
		 * go unseen, a snapshot may share it. */
		ret = att_discover(fl, att, addr, 0, FILL_RETRY_WP);
		if (ret == 1)
			return;
		if (ret && ret != -EINVAL) {
			att_wake(att, addr, seg->page_size); /* it refaults */
			return;
		}
		foreign = ret == -EINVAL; /* registered, not ours */
	}
	how = into_enter(fl, att);
	if (how == BY_OFFSET) {
		fill_retry(att, addr | FILL_RETRY_WP); /* for a reader */
		return;
	}
	/* Looked up inside: the page copied is the page un-protected. */
	if (attach_lookup(att, addr, &pgoff, &run) == 0) {
		if (snapshot_wp(seg, att, addr, pgoff)) {
			into_exit(fl, att, how); /* held by a cut */
			return;
		}
	} else if (!foreign) {
		into_exit(fl, att, how); /* it moved meanwhile: refault */
		att_wake(att, addr, seg->page_size);
		return;
	}
	ret = uffd_writeprotect(att->uffd, addr, seg->page_size, false,
				how == INTO_ALONE);
	into_exit(fl, att, how);
	switch (ret) {
	case 0:
		if (how != INTO_ALONE)
			att_wake(att, addr, seg->page_size);
		break;
	case -EAGAIN: /* an event first */
		fill_retry(att, addr | FILL_RETRY_WP);
		break;
	case -ESRCH:
		break;
	default: /* moved: it faults again where it is */
		att_wake(att, addr, seg->page_size);
		break;
	}
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
	if (f->ahead)
		f->fl->nr_ahead--;
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
 * Puts pages [from, npages) of the run into the memfd, the way into_enter()
 * allows (see the top).  Returns the bytes done; @err gets 0, or -errno for
 * what stopped it; @woke: the faulting thread was woken by it.
 */
static uint64_t fill_ioctl(struct fill *f, uint32_t from, int *err, bool *woke)
{
	struct attachment *att = f->att;
	uint64_t ps = f->seg->page_size;
	uint64_t len = (uint64_t)(f->rd.npages - from) * ps;
	uint64_t dst = f->addr + from * ps, pgoff, run, done;
	void *src = (char *)f->rd.buf + from * ps;
	enum into how = BY_OFFSET;
	int uffd = att->uffd;
	bool wp;

	if (!(att->flags & UPG_REGISTER_RDONLY) && !f->offset_only)
		how = into_enter(f->fl, att);
	/* The address still maps these pages (the ranges follow every
	 * event read, and one not read yet fails the copy: EAGAIN). */
	if (how != BY_OFFSET &&
	    (attach_lookup(att, dst, &pgoff, &run) < 0 ||
	     pgoff != f->rd.pgoff + from || run < len / ps)) {
		into_exit(f->fl, att, how);
		how = BY_OFFSET;
	}
	if (how == BY_OFFSET) {
		/* Nobody waits on the daemon's own map: no wake. */
		dst = (uintptr_t)f->seg->map + (f->rd.pgoff + from) * ps;
		uffd = f->seg->d->fill_uffd;
	}
	/* During a cut, what lands in a process lands write-protected
	 * (snapshot.h): its reader may have protected the range already.
	 * UFFDIO_ZEROPAGE cannot protect; a copy of zeros can. */
	wp = how != BY_OFFSET && atomic_load(&f->seg->cutting);
	if (f->rd.zero && wp && !f->fl->zeros) {
		into_exit(f->fl, att, how); /* (no memory at start) */
		how = BY_OFFSET;
		wp = false;
		dst = (uintptr_t)f->seg->map + (f->rd.pgoff + from) * ps;
		uffd = f->seg->d->fill_uffd;
	}
	if (f->rd.zero && wp)
		src = f->fl->zeros;
	if (f->rd.zero && !wp)
		*err = uffd_zeropage(uffd, dst, len, how == INTO_ALONE, &done);
	else
		*err = uffd_copy_wp(uffd, dst, src, len, how == INTO_ALONE, wp,
				    &done);
	into_exit(f->fl, att, how);
	*woke = how == INTO_ALONE;
	f->by_offset |= how == BY_OFFSET;
	f->gated = how == INTO_GATED;
	return done;
}

/*
 * Puts the run into the memfd, page states following what each ioctl did.
 * Returns the pages from the start of the run that are present now; @err
 * is what stopped it (-errno), if anything did; @woke: the first page's
 * ioctl woke the faulting thread.
 */
static uint32_t fill_map(struct fill *f, int *err, bool *woke)
{
	struct segment *seg = f->seg;
	uint32_t done = f->from, filled = 0;

	*err = 0;
	*woke = false;
	while (done < f->rd.npages) {
		bool w;
		uint32_t n = fill_ioctl(f, done, err, &w) / seg->page_size;

		if (!n && *err == -EEXIST) {
			/* Filled behind our back: present, not ours. */
			pte_end_busy(&seg->pt, f->rd.pgoff + done++,
				     PTE_PRESENT);
			continue;
		}
		if (!n && *err == -ENOENT && !f->offset_only &&
		    f->rd.npages - done > 1) {
			/* Most likely the run spans mappings the events
			 * never described (mprotect split the range: an
			 * arena opened as it grows), and the kernel copies
			 * within one.  By offset, which knows no mappings;
			 * if the mapping did go, the thread's retry finds
			 * that out as before. */
			f->offset_only = true;
			continue;
		}
		if (!n && *err == -EAGAIN && f->gated) {
			/* An event to read first, and another reader may be
			 * the one who reads it: nothing would wake this fill
			 * up again.  By offset, which no event stops. */
			f->offset_only = true;
			continue;
		}
		if (!n)
			break;
		/* All, or part: the next call reports what stopped it. */
		if (done == 0)
			*woke = w;
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
 * own mapping by the only reader woke it already; any other way needs a
 * wake or a UFFDIO_CONTINUE.  @err: what stopped the fill before its
 * first page (-errno), when @done is 0.
 */
static void fill_answer(struct fill *f, uint32_t done, int err, bool woke)
{
	struct attachment *att = f->att;
	struct segment *seg = f->seg;

	if (done > 0) {
		if (att->flags & UPG_REGISTER_RDONLY)
			att_continue(att, f->addr,
				     (uint64_t)done * seg->page_size);
		else if (!woke)
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

/* ---- read-ahead past the window ---- */

/* Wakes an idle worker but @self, if one sleeps: it runs the read-ahead. */
static void ahead_kick(struct daemon *d, uint64_t self)
{
	uint64_t idle = atomic_load(&d->idle) & ~self;

	if (idle)
		worker_kick(d->workers[__builtin_ctzll(idle)]);
}

/*
 * Queues the read-ahead that follows the run [pgoff, pgoff + n) at @addr
 * of @att, for an idle worker: the next chunk, if the stream is long
 * enough and not too far ahead of its latest fault, and the pages are
 * still mapped there.
 */
static void ahead_queue(struct filler *fl, struct attachment *att,
			uint64_t addr, uint64_t pgoff, uint32_t n)
{
	struct segment *seg = att->seg;
	struct daemon *d = seg->d;
	uint64_t next = pgoff + n, at = addr + (uint64_t)n * seg->page_size;
	uint64_t last = atomic_load_explicit(&seg->last_fault,
					     memory_order_relaxed);
	uint64_t where, run;
	struct ahead_job *j;

	if (atomic_load(&att->dead) ||
	    seg->src->ops->kind == UPAGER_SOURCE_ZERO ||
	    next > last + AHEAD_REACH || next >= seg->npages ||
	    pte_get(&seg->pt, next) != 0 ||
	    attach_lookup(att, at, &where, &run) < 0 || where != next)
		return;
	j = malloc(sizeof(*j));
	if (!j)
		return; /* read-ahead is a guess: no harm */
	j->att = att;
	attach_get(att);
	j->addr = at;
	j->pgoff = next;
	j->n = run < AHEAD_CHUNK ? run : AHEAD_CHUNK;
	pthread_mutex_lock(&d->ahead_lock);
	list_add_tail(&j->link, &d->ahead);
	atomic_fetch_add(&d->nr_ahead, 1);
	pthread_mutex_unlock(&d->ahead_lock);
	ahead_kick(d, fl->bit);
}

bool fill_ahead_waiting(struct daemon *d)
{
	return atomic_load(&d->nr_ahead) != 0;
}

static struct ahead_job *ahead_take(struct daemon *d)
{
	struct ahead_job *j = NULL;

	pthread_mutex_lock(&d->ahead_lock);
	if (!list_empty(&d->ahead)) {
		j = list_entry(d->ahead.next, struct ahead_job, link);
		list_del_init(&j->link);
		atomic_fetch_sub(&d->nr_ahead, 1);
	}
	pthread_mutex_unlock(&d->ahead_lock);
	return j;
}

void fill_ahead_flush(struct daemon *d)
{
	struct ahead_job *j;

	while ((j = ahead_take(d))) {
		attach_put(j->att);
		free(j);
	}
}

/* Counts how many of @n pages at @addr the process maps (pagemap bit 63). */
static int pages_mapped(pid_t pid, uint64_t addr, uint32_t n, uint32_t ps,
			uint32_t *mapped)
{
	uint64_t ent[AHEAD_CHUNK];
	char path[64];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	*mapped = 0;
	for (uint32_t at = 0; at < n && !ret;) {
		uint32_t k = n - at < AHEAD_CHUNK ? n - at : AHEAD_CHUNK;
		ssize_t got = pread(fd, ent, k * sizeof(ent[0]),
				    (addr / ps + at) * sizeof(ent[0]));

		if (got != (ssize_t)(k * sizeof(ent[0])))
			ret = -EIO;
		for (uint32_t i = 0; i < k && !ret; i++)
			*mapped += ent[i] >> 63;
		at += k;
	}
	close(fd);
	return ret;
}

/* Checks pages read ahead for @att: touched or not (unchecked when the
 * process cannot be read any more). */
static void ahead_count(struct attachment *att, const struct att_ahead *a,
			unsigned int nr)
{
	struct segment *seg = att->seg;
	pid_t pid = atomic_load(&att->pid);

	for (unsigned int i = 0; i < nr && pid > 0; i++) {
		uint32_t mapped;

		if (pages_mapped(pid, a[i].addr, a[i].n, seg->page_size,
				 &mapped))
			continue;
		counter_add(seg->c.readahead_touched, mapped);
		counter_add(seg->c.readahead_untouched, a[i].n - mapped);
	}
}

/*
 * Notes pages [addr, addr + n pages) read ahead for @att's stream: a
 * stream's chunks join the records next to them.
 */
static void ahead_note(struct attachment *att, uint64_t addr, uint32_t n)
{
	uint64_t ps = att->seg->page_size, end = addr + (uint64_t)n * ps;
	struct att_ahead *pred = NULL, *succ = NULL;
	unsigned int nr;

	pthread_mutex_lock(&att->lock);
	nr = att->nr_ahead;
	for (unsigned int i = 0; i < nr; i++) {
		struct att_ahead *a = &att->ahead[i];

		if (a->addr + (uint64_t)a->n * ps == addr)
			pred = a;
		else if (a->addr == end)
			succ = a;
	}
	/* Chunks land in any order (two workers): each joins its
	 * neighbours, so a stream stays one record. */
	if (pred && succ) {
		pred->n += n + succ->n;
		*succ = att->ahead[--nr];
	} else if (pred) {
		pred->n += n;
	} else if (succ) {
		succ->addr = addr;
		succ->n += n;
	} else {
		if (nr == ATT_AHEAD) {
			/* The oldest goes unchecked: its stream did not
			 * come back (or it is another's, far away). */
			memmove(att->ahead, att->ahead + 1,
				(ATT_AHEAD - 1) * sizeof(att->ahead[0]));
			nr--;
		}
		att->ahead[nr++] = (struct att_ahead){ addr, n };
	}
	atomic_store_explicit(&att->nr_ahead, nr, memory_order_relaxed);
	pthread_mutex_unlock(&att->lock);
}

void fill_ahead_check(struct attachment *att, uint64_t addr)
{
	uint64_t ps = att->seg->page_size;
	struct att_ahead done[ATT_AHEAD];
	unsigned int nr = 0, keep = 0;

	if (!atomic_load_explicit(&att->nr_ahead, memory_order_relaxed))
		return;
	pthread_mutex_lock(&att->lock);
	for (unsigned int i = 0; i < att->nr_ahead; i++) {
		struct att_ahead *a = &att->ahead[i];

		uint64_t end = a->addr + (uint64_t)a->n * ps;

		/* The stream faulted again at the end of what was read
		 * ahead for it (another stream's fault further up says
		 * nothing about this one). */
		if (end <= addr && addr - end < AHEAD_REACH * ps)
			done[nr++] = *a;
		else
			att->ahead[keep++] = *a;
	}
	atomic_store_explicit(&att->nr_ahead, keep, memory_order_relaxed);
	pthread_mutex_unlock(&att->lock);
	ahead_count(att, done, nr);
}

static int fill_start(struct filler *fl, struct segment *seg,
		      struct attachment *att, uint64_t addr, uint64_t pgoff,
		      uint32_t n, bool ahead);

bool fill_run_ahead(struct filler *fl)
{
	struct ahead_job *j;
	struct segment *seg;
	uint32_t n;

	if (fl->nr_ahead >= AHEAD_INFLIGHT || !fill_ahead_waiting(fl->d))
		return false;
	j = ahead_take(fl->d);
	if (!j)
		return false;
	seg = j->att->seg;
	/* Claimed now, not when queued: a fault that came first filled its
	 * own window. */
	n = atomic_load(&j->att->dead) ?
		    0 :
		    pte_claim_run(&seg->pt, j->pgoff, j->n);
	/* The next chunk is queued first: another idle worker fills it
	 * while this one fills this. */
	if (n == j->n)
		ahead_queue(fl, j->att, j->addr, j->pgoff, n);
	if (n)
		fill_start(fl, seg, j->att, j->addr, j->pgoff, n, true);
	attach_put(j->att);
	free(j);
	return true;
}

/*
 * The daemon's map keeps no page tables for what was filled through it:
 * they would grow with every page filled by offset (a sparse segment's
 * memory would be mostly page tables).  Unmapped when the worker is idle
 * (fill_idle), off the faulting thread's path, ZAP_STEP pages at a time so
 * that a fault that comes meanwhile waits for one step at most; a stream's
 * runs join into one range.
 */
#define ZAP_STEP 256

static bool zap_step(struct filler *fl)
{
	struct fill_zap *z;
	uint64_t n;

	if (!fl->nr_zap)
		return false;
	z = &fl->zap[0];
	n = z->n < ZAP_STEP ? z->n : ZAP_STEP;
	madvise((char *)z->seg->map + z->pgoff * z->seg->page_size,
		n * z->seg->page_size, MADV_DONTNEED);
	z->pgoff += n;
	z->n -= n;
	if (!z->n) {
		segment_put(z->seg);
		memmove(fl->zap, fl->zap + 1, --fl->nr_zap * sizeof(*z));
	}
	return fl->nr_zap != 0;
}

static void zap_later(struct filler *fl, struct segment *seg, uint64_t pgoff,
		      uint64_t n)
{
	if (fl->nr_zap) {
		struct fill_zap *z = &fl->zap[fl->nr_zap - 1];

		if (z->seg == seg && z->pgoff + z->n == pgoff) {
			z->n += n;
			return;
		}
	}
	while (fl->nr_zap == FILL_ZAPS)
		zap_step(fl);
	segment_get(seg);
	fl->zap[fl->nr_zap++] = (struct fill_zap){ seg, pgoff, n };
}

bool fill_idle(struct filler *fl)
{
	return zap_step(fl);
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
		if (!f->ahead)
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
		fill_release(f, f->ahead ? 0 : 1);
		if (!f->ahead) {
			pte_end_busy(&seg->pt, f->rd.pgoff, PTE_POISON);
			att_poison(fl, f->att, f->addr, f->rd.pgoff,
				   seg->page_size);
		}
		goto out;
	}
	fill_deliver(fl, f);
	return;
out:
	fill_unpark(seg, f->rd.pgoff, f->rd.npages);
	fill_free(f);
}

/*
 * Puts the run that is in the buffer into the memfd and answers the
 * faulting thread; then the read-ahead after it is queued.  A copy that
 * meets a pending event (EAGAIN) keeps the buffer and the pages it has not
 * copied yet: the fill waits on its filler's stalled list until the event
 * is read, then resumes here.  The source is never read twice for it.
 */
static void fill_deliver(struct filler *fl, struct fill *f)
{
	struct segment *seg = f->seg;
	uint32_t first = f->from, done;
	bool woke;
	int err;

	done = fill_map(f, &err, &woke);
	if (err == -EAGAIN && done < f->rd.npages &&
	    !(f->att->flags & UPG_REGISTER_RDONLY) &&
	    !atomic_load(&f->att->dead)) {
		if (done > 0 && !f->ahead && !f->answered) {
			fill_answer(f, done, 0, woke);
			f->answered = true;
		}
		fill_unpark(seg, f->rd.pgoff + first, done - first);
		f->from = done;
		list_add_tail(&f->stall_link, &fl->stalled);
		return;
	}
	fill_release(f, done);
	if (!f->ahead && !f->answered)
		fill_answer(f, done, err, woke);
	else if (done > first && !f->ahead &&
		 (f->att->flags & UPG_REGISTER_RDONLY))
		att_continue(f->att, f->addr + (uint64_t)first * seg->page_size,
			     (uint64_t)(done - first) * seg->page_size);
	fill_unpark(seg, f->rd.pgoff + first, f->rd.npages - first);
	if (f->ahead && done > first)
		counter_add(seg->c.readahead_pages, done - first);
	if (done > first && f->by_offset) {
		zap_later(fl, seg, f->rd.pgoff + first, done - first);
		/* Not mapped into the process: whether it touches the
		 * pages can be checked. */
		if (f->ahead)
			ahead_note(f->att,
				   f->addr + (uint64_t)first * seg->page_size,
				   done - first);
	}
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
 * into the memfd: for @att's fault at @addr, or as read-ahead for its
 * stream (@ahead).  On failure the pages are given back and -ENOMEM
 * returned.
 */
static int fill_start(struct filler *fl, struct segment *seg,
		      struct attachment *att, uint64_t addr, uint64_t pgoff,
		      uint32_t n, bool ahead)
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
	fl->nr_ahead += ahead;
	f->fl = fl;
	f->seg = seg;
	f->att = att;
	attach_get(att);
	f->addr = addr;
	f->ahead = ahead;
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
	uint32_t n, max, want;
	int ret;

	if (attach_lookup(att, addr, &pgoff, &run) < 0) {
		/*
		 * A range the events did not describe (mremap grew it, or
		 * left it mapped): /proc says what it maps.  Nothing there:
		 * the retry finds that out (SIGSEGV).  Something else,
		 * registered with our uffd by the client: SIGBUS, rather
		 * than a fault that comes back for ever.
		 */
		ret = att_discover(fl, att, addr, tid, 0);
		if (ret == 1)
			return;
		if (ret == -EINVAL)
			att_poison(fl, att, addr, ATT_NOT_OURS, seg->page_size);
		if (ret || attach_lookup(att, addr, &pgoff, &run) < 0) {
			if (ret != -EINVAL)
				att_wake(att, addr, seg->page_size);
			return;
		}
	}
	for (;;) {
		st = pte_get(&seg->pt, pgoff);
		if (st & PTE_POISON) {
			att_poison(fl, att, addr, pgoff, seg->page_size);
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
			/* Punched out (MADV_REMOVE): fill it again.  A
			 * snapshot that shared the frame lost it. */
			if (st & PTE_PRESERVE)
				snapshot_lost(seg, pgoff);
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
	want = ra_pages(seg, pgoff);
	max = want < AHEAD_CHUNK ? want : AHEAD_CHUNK;
	if (max > run)
		max = run;
	n = 1 + (max > 1 ? pte_claim_run(&seg->pt, pgoff + 1, max - 1) : 0);
	if (n > counter_get(seg->c.readahead_max))
		atomic_store(&seg->c.readahead_max, n);
	/* A stream: what follows its window goes to an idle worker, which
	 * starts on it while this one fills the window. */
	if (want >= AHEAD_MIN && n == max)
		ahead_queue(fl, att, addr, pgoff, n);
	if (fill_start(fl, seg, att, addr, pgoff, n, false))
		fill_retry(att, addr); /* -ENOMEM: see there */
}
