// SPDX-License-Identifier: MIT
/*
 * Snapshots and clones: the cut, copy before write, the sources that read
 * a snapshot's and a clone's pages, and what a snapshot gives back when
 * it goes.  The model is in snapshot.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "attach.h"
#include "daemon.h"
#include "fill.h"
#include "log.h"
#include "proto.h"
#include "segment.h"
#include "snapshot.h"
#include "uffd.h"

#define CUT_TIMEOUT_NS (30 * 1000000000ull)

static uint64_t clock_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* ---- the sources ---- */

/* A snapshot's: its parent's frame (SHARING), else its parent's source. */
struct cut_source {
	struct source src;
	struct segment *snap; /* owns this source */
};

/* A clone's: what its snapshot reads. */
struct clone_source {
	struct source src;
	struct segment *snap; /* a reference */
};

/*
 * Page @p of snapshot @snap as it was at the cut, into @buf.  A SHARING
 * page is read from the parent's frame; a copy before write may land in
 * the snapshot meanwhile (and the parent's frame change right after), so
 * the entry is looked at again after the read: a page that became
 * PRESENT is read from the snapshot's own frame.  A parent's frame that
 * is gone (a client punched it out) cannot be read: -EIO, never a wrong
 * byte.
 */
static int cut_page(struct segment *snap, uint64_t p, void *buf)
{
	struct segment *parent = snap->parent;
	uint32_t ps = snap->page_size;
	off_t off = (off_t)(p * ps);

	for (;;) {
		uint64_t e = pte_get(&snap->pt, p);

		if (e & PTE_POISON)
			return -EIO;
		/* its own frame: filled, or copied before write (a fill
		 * of it may still be in flight: it finds the frame there) */
		if (((e & PTE_PRESENT) && !(e & PTE_BUSY)) || (e & PTE_CBW)) {
			if (pread(snap->memfd, buf, ps, off) != (ssize_t)ps)
				return -EIO;
			return 0;
		}
		if (!(e & PTE_SHARING))
			return source_read_sync(parent->src, p, 1, buf);
		if (pread(parent->memfd, buf, ps, off) != (ssize_t)ps)
			return -EIO;
		if (pte_get(&snap->pt, p) & (PTE_CBW | PTE_POISON)) {
			/* copied before write meanwhile: its copy, if whole */
			if (segment_memfd_has(snap, p))
				continue;
			return -EIO;
		}
		if (!segment_memfd_has(parent, p))
			return -EIO; /* lost: punched out */
		return 0;
	}
}

static int cut_read_sync(struct source *src, uint64_t pgoff, uint32_t npages,
			 void *buf)
{
	struct cut_source *cs = (struct cut_source *)src;

	for (uint32_t i = 0; i < npages; i++) {
		int ret = cut_page(cs->snap, pgoff + i,
				   (char *)buf + (size_t)i * src->page_size);

		if (ret)
			return ret;
	}
	return 0;
}

/* Reads complete at once: the frames are memory, the sources' own sync
 * reads are page cache reads for the most part. */
static int sync_read(struct source *src, struct source_read *rd,
		     struct io_uring *ring)
{
	(void)ring;
	rd->zero = false;
	rd->bytes_read = 0;
	/* Page by page: a page that cannot be read (lost) fails its own
	 * fault, not the run's (fill.c maps the pages before it). */
	for (rd->done = 0; rd->done < rd->npages * src->page_size;
	     rd->done += src->page_size) {
		int ret = src->ops->read_sync(src,
					      rd->pgoff +
						      rd->done / src->page_size,
					      1, (char *)rd->buf + rd->done);

		if (ret)
			return ret;
	}
	return 1;
}

static int sync_complete(struct source *src, struct source_read *rd, int res,
			 struct io_uring *ring)
{
	return -EINVAL; /* never queues I/O */
}

static void cut_destroy(struct source *src)
{
	free(src);
}

static const struct source_ops cut_ops = {
	.name = "snapshot",
	.kind = UPAGER_SOURCE_SNAPSHOT,
	.read = sync_read,
	.complete = sync_complete,
	.read_sync = cut_read_sync,
	.destroy = cut_destroy,
};

static int clone_read_sync(struct source *src, uint64_t pgoff, uint32_t npages,
			   void *buf)
{
	return segment_read(((struct clone_source *)src)->snap, pgoff, npages,
			    buf);
}

static void clone_destroy(struct source *src)
{
	struct segment *snap = ((struct clone_source *)src)->snap;

	atomic_fetch_sub(&snap->nr_clones, 1);
	segment_put(snap);
	free(src);
}

static const struct source_ops clone_ops = {
	.name = "snapshot",
	.kind = UPAGER_SOURCE_SNAPSHOT,
	.read = sync_read,
	.complete = sync_complete,
	.read_sync = clone_read_sync,
	.destroy = clone_destroy,
};

/* ---- copy before write ---- */

/*
 * Page @p of @seg is about to be written: copy it into every snapshot
 * that still shares it, then it needs no protection.  cow_lock held; the
 * page is write-protected in every attachment, so its frame holds still.
 */
static void cbw_locked(struct segment *seg, uint64_t p)
{
	uint32_t ps = seg->page_size;
	off_t off = (off_t)(p * ps);
	static _Thread_local char page[65536];
	char *buf = ps <= sizeof(page) ? page : NULL;
	struct segment *s;
	int have = buf ? -1 : 0; /* -1: not read yet */

	list_for_each_entry(s, &seg->snapshots, snap_link) {
		uint64_t e = pte_get(&s->pt, p), old, nw;

		if (!(e & PTE_SHARING))
			continue;
		if (!(e & PTE_PRESENT)) {
			if (have < 0)
				have = pread(seg->memfd, buf, ps, off) ==
					       (ssize_t)ps &&
				       segment_memfd_has(seg, p);
			if (!have ||
			    pwrite(s->memfd, buf, ps, off) != (ssize_t)ps) {
				pr_err("snapshot",
				       "%s: page %llu lost: its frame is gone",
				       s->name, (unsigned long long)p);
				pte_set(&s->pt, p, PTE_POISON);
				pte_clear(&s->pt, p, PTE_SHARING);
				continue;
			}
			atomic_fetch_add(&s->pages_cbw, 1);
		}
		/* A fill of it in flight finds the frame there (EEXIST). */
		_Atomic uint64_t *w = pte_ref(&s->pt, p);
		old = atomic_load(w);
		do {
			nw = (old & ~PTE_SHARING) | PTE_CBW;
			if (!(old & PTE_BUSY))
				nw |= PTE_PRESENT;
		} while (!atomic_compare_exchange_weak(w, &old, nw));
	}
	pte_clear(&seg->pt, p, PTE_PRESERVE);
	atomic_fetch_add(&seg->pages_cbw, 1);
}

void snapshot_lost(struct segment *seg, uint64_t pgoff)
{
	struct segment *s;

	pthread_mutex_lock(&seg->cow_lock);
	list_for_each_entry(s, &seg->snapshots, snap_link) {
		uint64_t e = pte_get(&s->pt, pgoff);

		if ((e & PTE_SHARING) && !(e & PTE_PRESENT)) {
			pr_err("snapshot",
			       "%s: page %llu lost: punched out of "
			       "%s",
			       s->name, (unsigned long long)pgoff, seg->name);
			pte_set(&s->pt, pgoff, PTE_POISON);
			pte_clear(&s->pt, pgoff, PTE_SHARING);
		}
	}
	pte_clear(&seg->pt, pgoff, PTE_PRESERVE);
	pthread_mutex_unlock(&seg->cow_lock);
}

void snapshot_removed(struct attachment *att, uint64_t start, uint64_t end)
{
	struct segment *seg = att->seg;
	uint64_t ps = seg->page_size, a = start & ~(ps - 1);

	while (a < end) {
		uint64_t pgoff, run, n;

		if (attach_lookup(att, a, &pgoff, &run) < 0) {
			a += ps;
			continue;
		}
		n = (end - a + ps - 1) / ps;
		if (n > run)
			n = run;
		for (uint64_t i = 0; i < n; i++)
			if (pte_get(&seg->pt, pgoff + i) & PTE_PRESENT)
				pte_set(&seg->pt, pgoff + i, PTE_MAYBE_GONE);
		a += n * ps;
	}
}

bool snapshot_wp(struct segment *seg, struct attachment *att, uint64_t addr,
		 uint64_t pgoff)
{
	if (!atomic_load(&seg->cutting) &&
	    !(pte_get(&seg->pt, pgoff) & PTE_PRESERVE))
		return false; /* nothing shares it: let it go */
	pthread_mutex_lock(&seg->cow_lock);
	if (atomic_load(&seg->cutting)) {
		if (seg->nr_held == seg->held_cap) {
			unsigned int cap = seg->held_cap ? 2 * seg->held_cap :
							   64;
			void *p = realloc(seg->held, cap * sizeof(*seg->held));

			if (!p) {
				/* Not held: woken, it faults again. */
				pthread_mutex_unlock(&seg->cow_lock);
				uffd_wake(att->uffd, addr, seg->page_size);
				return true;
			}
			seg->held = p;
			seg->held_cap = cap;
		}
		attach_get(att);
		seg->held[seg->nr_held++] = (struct snap_held){
			.att = att,
			.addr = addr,
			.ns = clock_ns(CLOCK_MONOTONIC),
		};
		pthread_mutex_unlock(&seg->cow_lock);
		return true;
	}
	if (pte_get(&seg->pt, pgoff) & PTE_PRESERVE)
		cbw_locked(seg, pgoff);
	pthread_mutex_unlock(&seg->cow_lock);
	return false;
}

/* ---- the cut ---- */

/*
 * What the events never described (mremap growing a range in place, the
 * old range MREMAP_DONTUNMAP leaves mapped) is protected too: every
 * mapping of the memfd in the process that this uffd has registered (the
 * others fail with ENOENT, and so are left alone).  -EAGAIN: an event
 * first.
 */
static int protect_unseen(struct attachment *att)
{
	pid_t pid = atomic_load(&att->pid);
	char path[64], line[512];
	struct stat st;
	int ret = 0;
	FILE *f;

	if (pid <= 0 || fstat(att->seg->memfd, &st) < 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (!ret && fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi, ino;
		unsigned int maj, min;
		uint64_t pgoff, run;

		if (sscanf(line, "%llx-%llx %*s %*x %x:%x %llu", &lo, &hi, &maj,
			   &min, &ino) != 5 ||
		    ino != st.st_ino || makedev(maj, min) != st.st_dev)
			continue;
		if (attach_lookup(att, lo, &pgoff, &run) == 0 &&
		    lo + run * att->seg->page_size >= hi)
			continue; /* a range it knows: protected already */
		ret = uffd_writeprotect(att->uffd, lo, hi - lo, true, true);
		if (ret != -EAGAIN)
			ret = 0;
	}
	fclose(f);
	return ret;
}

int snapshot_protect(struct attachment *att)
{
	uint64_t want = atomic_load(&att->protect_want);
	struct att_range *r = NULL;
	unsigned int n = 0;
	int ret = 0;

	atomic_store(&att->protect_ns, clock_ns(CLOCK_MONOTONIC));
	pthread_mutex_lock(&att->lock);
	if (att->nr_ranges) {
		r = malloc(att->nr_ranges * sizeof(*r));
		if (r) {
			n = att->nr_ranges;
			memcpy(r, att->ranges, n * sizeof(*r));
		}
	}
	pthread_mutex_unlock(&att->lock);
	if (att->nr_ranges && !r)
		return -EAGAIN; /* memory: again */
	for (unsigned int i = 0; i < n && !ret; i++) {
		ret = uffd_writeprotect(att->uffd, r[i].start, r[i].len, true,
					false);
		if (ret == -EAGAIN)
			break;
		if (ret && ret != -ESRCH)
			pr_warn("snapshot", "%s: pid %d: protect %#llx+%llu: %s",
				att->seg->name, (int)atomic_load(&att->pid),
				(unsigned long long)r[i].start,
				(unsigned long long)r[i].len, strerror(-ret));
		if (ret != -EAGAIN)
			ret = 0;
	}
	free(r);
	if (!ret)
		ret = protect_unseen(att);
	if (ret == -EAGAIN)
		return ret;
	atomic_store(&att->protect_done, want);
	return 0;
}

/* Cuts and protections of a new attachment, numbered in order. */
static _Atomic uint64_t cuts;

/* Asks @att's reader to protect it, for request @seq or later. */
static void protect_ask(struct attachment *att, uint64_t seq)
{
	uint64_t w = atomic_load(&att->protect_want);

	while (w < seq &&
	       !atomic_compare_exchange_weak(&att->protect_want, &w, seq))
		;
	attach_owe_drain(att);
}

static bool protected_for(struct attachment *att, uint64_t seq)
{
	return atomic_load(&att->protect_done) >= seq;
}

/* Whether @att must be protected by a cut. */
static bool att_writes(struct attachment *att)
{
	return !atomic_load(&att->dead) && !(att->flags & UPG_REGISTER_RDONLY);
}

/* Asks the readers of @seg's writing attachments to protect them. */
static void protect_post(struct segment *seg, uint64_t seq)
{
	struct attachment *att;

	pthread_mutex_lock(&seg->d->lock);
	list_for_each_entry(att, &seg->attachments, seg_link)
		if (att_writes(att))
			protect_ask(att, seq);
	pthread_mutex_unlock(&seg->d->lock);
}

/*
 * Waits for the readers of @v[0..n) to have protected them for request
 * @seq (or for them to die), until @deadline: returns how many did not.
 */
static unsigned int await_protected(struct attachment **v, unsigned int n,
				    uint64_t seq, uint64_t deadline)
{
	long sleep_ns = 2000;

	for (;;) {
		struct timespec ts = { 0, sleep_ns };
		unsigned int left = 0;

		for (unsigned int i = 0; i < n; i++)
			left += att_writes(v[i]) && !protected_for(v[i], seq);
		if (!left || clock_ns(CLOCK_MONOTONIC) > deadline)
			return left;
		nanosleep(&ts, NULL);
		if (sleep_ns < 1000000)
			sleep_ns *= 2;
	}
}

/*
 * Asks the reader of every writing attachment of @seg to protect it for
 * cut @seq, and waits, until a round finds none left: a child forked from
 * one of them is published before its parent's protection is done (a fork
 * not read yet fails it), and protected in the next round.
 */
static int protect_all(struct segment *seg, uint64_t seq)
{
	struct daemon *d = seg->d;
	uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + CUT_TIMEOUT_NS;

	for (;;) {
		struct attachment **v = NULL, *att;
		unsigned int n = 0, cap = 0, left;

		pthread_mutex_lock(&d->lock);
		list_for_each_entry(att, &seg->attachments, seg_link) {
			if (!att_writes(att) || protected_for(att, seq))
				continue;
			if (n == cap) {
				void *p;

				cap = cap ? 2 * cap : 16;
				p = realloc(v, cap * sizeof(*v));
				if (!p) {
					pthread_mutex_unlock(&d->lock);
					for (unsigned int i = 0; i < n; i++)
						attach_put(v[i]);
					free(v);
					return -ENOMEM;
				}
				v = p;
			}
			attach_get(att);
			v[n++] = att;
		}
		pthread_mutex_unlock(&d->lock);
		if (!n)
			return 0;
		for (unsigned int i = 0; i < n; i++)
			protect_ask(v[i], seq);
		left = await_protected(v, n, seq, deadline);
		for (unsigned int i = 0; i < n; i++)
			attach_put(v[i]);
		free(v);
		if (left) {
			pr_err("snapshot",
			       "%s: %u attachments not protected "
			       "in 30 s",
			       seg->name, left);
			return -ETIMEDOUT;
		}
	}
}

/* The cut's record: a walk of the parent's table, and of the previous
 * snapshot's. */
struct record {
	struct segment *parent, *snap, *prev;
	uint64_t pages;
	int err;
};

/*
 * Whether the parent's memfd holds page @p's frame.  A page being filled
 * has it once its copy landed (and the process may have written it since);
 * until then it is the source's, whatever comes.  A present page a remove
 * event covered may have lost it (MADV_REMOVE punches it out, and the
 * event comes first).  Only those are looked at: a seek of the memfd can
 * cost what a walk of its page cache does.
 */
static bool rec_has(struct record *rc, _Atomic uint64_t *e, uint64_t p)
{
	uint64_t v = atomic_load(e);

	if (!(v & (PTE_MAYBE_GONE | PTE_BUSY)))
		return true;
	if (!segment_memfd_has(rc->parent, p))
		return false;
	if (v & PTE_MAYBE_GONE)
		atomic_fetch_and(e, ~PTE_MAYBE_GONE);
	return true;
}

/* The leaf of @pt holding entry @i, made if need be: NULL without memory. */
static struct pt_leaf *leaf_of(struct pagetable *pt, uint64_t i)
{
	_Atomic uint64_t *w = pte_ref(pt, i);

	return w ? (struct pt_leaf *)(w - (i & PT_LEAF_MASK)) : NULL;
}

/* One leaf of the parent: a descent of each table a leaf, not a page. */
static void rec_parent_leaf(void *arg, uint64_t first, struct pt_leaf *l)
{
	struct record *rc = arg;
	struct pt_leaf *sl = pt_leaf_lookup(&rc->snap->pt, first);
	struct pt_leaf *pl = rc->prev ? pt_leaf_lookup(&rc->prev->pt, first) :
					NULL;

	for (unsigned int k = 0; k < PT_LEAF_SLOTS; k++) {
		uint64_t p = first + k, e, bits = PTE_SHARING;

		if (p >= rc->parent->npages)
			return;
		e = atomic_load(&l->e[k]);
		if (sl && (atomic_load(&sl->e[k]) & PTE_SHARING)) {
			/* shared since the first walk: a snapshot that went
			 * meanwhile may have let the parent's page go */
			if (!(e & PTE_PRESERVE))
				atomic_fetch_or(&l->e[k], PTE_PRESERVE);
			continue;
		}
		if (!(e & (PTE_PRESENT | PTE_BUSY)) || (e & PTE_POISON) ||
		    (sl && (atomic_load(&sl->e[k]) & PTE_POISON)) ||
		    !rec_has(rc, &l->e[k], p))
			continue;
		if (!sl && !(sl = leaf_of(&rc->snap->pt, p))) {
			rc->err = -ENOMEM;
			return;
		}
		if (rc->prev && !(pl && (atomic_load(&pl->e[k]) & PTE_SHARING)))
			bits |= PTE_CHANGED;
		atomic_fetch_or(&sl->e[k], bits);
		atomic_fetch_or(&l->e[k], PTE_PRESERVE);
		rc->pages++;
	}
}

/* Pages the previous snapshot has (shared or its own) that this one reads
 * from the source: they differ too. */
static void rec_prev_leaf(void *arg, uint64_t first, struct pt_leaf *l)
{
	struct record *rc = arg;

	for (unsigned int k = 0; k < PT_LEAF_SLOTS; k++) {
		uint64_t p = first + k, e;

		if (p >= rc->parent->npages)
			return;
		e = atomic_load(&l->e[k]);
		if ((e & (PTE_SHARING | PTE_PRESENT | PTE_POISON)) &&
		    !(pte_get(&rc->snap->pt, p) & PTE_SHARING) &&
		    !pte_set(&rc->snap->pt, p, PTE_CHANGED))
			rc->err = -ENOMEM;
	}
}

/*
 * The newest snapshot of @seg still alive, with a reference; NULL if none.
 * One whose last reference went is on the list until snapshot_release()
 * takes it off: it is not taken back.  cow_lock held.
 */
static struct segment *last_live(struct segment *seg)
{
	struct list_head *at;

	for (at = seg->snapshots.prev; at != &seg->snapshots; at = at->prev) {
		struct segment *s = list_entry(at, struct segment, snap_link);
		int r = atomic_load(&s->refs);

		while (r > 0)
			if (atomic_compare_exchange_weak(&s->refs, &r, r + 1))
				return s;
	}
	return NULL;
}

static int snapshot_cut(struct segment *seg, struct segment *snap,
			struct upager_snapshot_result *res)
{
	uint64_t t0 = clock_ns(CLOCK_MONOTONIC), t1, t2, seq;
	struct record rc = { .parent = seg, .snap = snap };
	struct snap_held *held;
	struct attachment *att;
	unsigned int nheld;
	int ret = 0;

	memset(res, 0, sizeof(*res));
	/* Every writer must be protectable, and its unmapped pages too. */
	pthread_mutex_lock(&seg->d->lock);
	list_for_each_entry(att, &seg->attachments, seg_link)
		if (att_writes(att) && !snapshot_can_protect(att))
			ret = -EOPNOTSUPP;
	pthread_mutex_unlock(&seg->d->lock);
	if (ret)
		return ret;

	/* One cut of a segment at a time; copies wait for none. */
	seq = atomic_fetch_add(&cuts, 1) + 1;
	pthread_mutex_lock(&seg->cow_lock);
	while (atomic_load(&seg->cutting)) {
		pthread_mutex_unlock(&seg->cow_lock);
		usleep(100);
		pthread_mutex_lock(&seg->cow_lock);
	}
	atomic_store(&seg->cutting, seq);
	pthread_mutex_unlock(&seg->cow_lock);

	/*
	 * The record, in two walks.  The first, while the readers protect
	 * (the other CPU): the pages present now.  Nothing it records
	 * changes meanwhile: a write to a preserved page is held, and a page
	 * filled from now on lands protected with its source's bytes.  The
	 * second, once every attachment is protected, is the cut: the pages
	 * that came in meanwhile.  The previous snapshot stays (a
	 * reference); its shared pages do not change while cutting.  The new
	 * one is listed from the start: what gives back or loses a page the
	 * parent shares sees that this one shares it too.
	 */
	pthread_mutex_lock(&seg->cow_lock);
	rc.prev = last_live(seg);
	list_add_tail(&snap->snap_link, &seg->snapshots);
	atomic_fetch_add(&seg->nr_snapshots, 1);
	pthread_mutex_unlock(&seg->cow_lock);
	protect_post(seg, seq); /* the readers start */
	pagetable_walk(&seg->pt, rec_parent_leaf, &rc);

	ret = protect_all(seg, seq);
	t1 = clock_ns(CLOCK_MONOTONIC);
	pthread_mutex_lock(&seg->d->lock);
	list_for_each_entry(att, &seg->attachments, seg_link)
		res->attachments += att_writes(att) && protected_for(att, seq);
	pthread_mutex_unlock(&seg->d->lock);

	pthread_mutex_lock(&seg->cow_lock);
	if (!ret && !rc.err) {
		pagetable_walk(&seg->pt, rec_parent_leaf, &rc);
		if (rc.prev && !rc.err)
			pagetable_walk(&rc.prev->pt, rec_prev_leaf, &rc);
	}
	if (!ret)
		ret = rc.err;
	if (!ret)
		snap->cut_ns = clock_ns(CLOCK_REALTIME);
	/* Whatever happened, the writers go on. */
	atomic_store(&seg->cutting, 0);
	held = seg->held;
	nheld = seg->nr_held;
	seg->held = NULL;
	seg->nr_held = seg->held_cap = 0;
	pthread_mutex_unlock(&seg->cow_lock);

	t2 = clock_ns(CLOCK_MONOTONIC);
	for (unsigned int i = 0; i < nheld; i++) {
		struct attachment *a = held[i].att;
		/* The write came after its page was protected, and its
		 * reader read it once done protecting: the hold is at most
		 * from the start of that. */
		uint64_t from = atomic_load(&a->protect_ns);

		if (!from || from > held[i].ns)
			from = held[i].ns;
		if (t2 - from > res->max_hold_ns)
			res->max_hold_ns = t2 - from;
		/* Its reader copies before it lets it write. */
		if (attach_requeue(a, held[i].addr | FILL_RETRY_WP) == -ENOMEM)
			uffd_wake(a->uffd, held[i].addr, seg->page_size);
		attach_put(a);
	}
	free(held);
	segment_put(rc.prev);
	res->writers_held = nheld;
	res->pages_shared = rc.pages;
	res->protect_ns = t1 - t0;
	res->cut_ns = t2 - t0;
	return ret;
}

bool snapshot_can_protect(struct attachment *att)
{
	return (att->flags & UPG_REGISTER_RDONLY) ||
	       ((att->uffd_ioctls & (1ull << _UFFDIO_WRITEPROTECT)) &&
		(att->uffd_features & UFFD_FEATURE_WP_UNPOPULATED));
}

int snapshot_attach(struct attachment *att)
{
	struct segment *seg = att->seg;
	uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + CUT_TIMEOUT_NS;
	uint64_t seq;

	if (!att_writes(att) ||
	    (!atomic_load(&seg->cutting) && !atomic_load(&seg->nr_snapshots)))
		return 0;
	if (!snapshot_can_protect(att))
		return -EOPNOTSUPP;
	seq = atomic_fetch_add(&cuts, 1) + 1;
	protect_ask(att, seq);
	return await_protected(&att, 1, seq, deadline) ? -ETIMEDOUT : 0;
}

/* ---- snapshots and clones ---- */

int snapshot_new(struct segment *parent, const char *name, uid_t uid, gid_t gid,
		 uint32_t mode, struct segment **out,
		 struct upager_snapshot_result *res)
{
	struct upager_snapshot_result r;
	struct cut_source *cs;
	struct segment *snap;
	int ret;

	if (parent->is_snapshot)
		return -EINVAL;
	cs = calloc(1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	cs->src.ops = &cut_ops;
	cs->src.page_size = parent->page_size;
	cs->src.fd = -1;
	snprintf(cs->src.path, sizeof(cs->src.path), "%s", parent->name);
	ret = segment_new(parent->d, name, parent->size, uid, gid, mode,
			  &cs->src, &snap);
	if (ret) {
		free(cs);
		return ret;
	}
	cs->snap = snap;
	snap->is_snapshot = true;
	segment_get(parent);
	snap->parent = parent;
	ret = snapshot_cut(parent, snap, res ? res : &r);
	if (ret) {
		segment_put(snap); /* unlisted, what it shared given back */
		return ret;
	}
	*out = snap;
	return 0;
}

int snapshot_take(struct segment *seg, struct segment **out)
{
	char name[UPAGER_NAME_MAX + 1];

	if (seg->is_snapshot) {
		segment_get(seg);
		*out = seg;
		return 0;
	}
	snprintf(name, sizeof(name), "%.50s.save", seg->name);
	return snapshot_new(seg, name, seg->uid, seg->gid, seg->mode, out, NULL);
}

int snapshot_clone(struct segment *snap, const char *name, uid_t uid, gid_t gid,
		   uint32_t mode, struct segment **out)
{
	struct clone_source *cs;
	int ret;

	if (!snap->is_snapshot)
		return -EINVAL;
	cs = calloc(1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	cs->src.ops = &clone_ops;
	cs->src.page_size = snap->page_size;
	cs->src.fd = -1;
	snprintf(cs->src.path, sizeof(cs->src.path), "%s", snap->name);
	segment_get(snap);
	atomic_fetch_add(&snap->nr_clones, 1);
	cs->snap = snap;
	ret = segment_new(snap->d, name, snap->size, uid, gid, mode, &cs->src,
			  out);
	if (ret) {
		clone_destroy(&cs->src);
		return ret;
	}
	(*out)->origin = snap;
	return 0;
}

/* ---- what differs, what is shared ---- */

int snapshot_check_since(struct segment *older, struct segment *newer)
{
	struct segment *s;
	int ret = -EINVAL;

	if (!older->is_snapshot || !newer->is_snapshot || older == newer ||
	    older->parent != newer->parent)
		return -EINVAL;
	pthread_mutex_lock(&newer->parent->cow_lock);
	list_for_each_entry(s, &newer->parent->snapshots, snap_link) {
		if (s == newer)
			break; /* newer first: wrong order */
		if (s == older) {
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&newer->parent->cow_lock);
	return ret;
}

bool snapshot_changed(struct segment *older, struct segment *newer,
		      uint64_t pgoff)
{
	struct segment *s = older;
	bool changed = false;

	pthread_mutex_lock(&newer->parent->cow_lock);
	/* Each snapshot says whether it differs from the one before. */
	list_for_each_entry_continue(s, &newer->parent->snapshots, snap_link)
	{
		if (pte_get(&s->pt, pgoff) & PTE_CHANGED) {
			changed = true;
			break;
		}
		if (s == newer)
			break;
	}
	pthread_mutex_unlock(&newer->parent->cow_lock);
	return changed;
}

struct counts {
	uint64_t bits, n;
};

static void count_leaf(void *arg, uint64_t first, struct pt_leaf *l)
{
	struct counts *c = arg;

	(void)first;
	for (unsigned int k = 0; k < PT_LEAF_SLOTS; k++)
		if ((atomic_load(&l->e[k]) & (c->bits | PTE_PRESENT)) == c->bits)
			c->n++;
}

void snapshot_info(struct segment *seg, struct upager_segment_info *info)
{
	struct segment *rel = seg->is_snapshot ? seg->parent : seg->origin;
	struct counts c = { .bits = seg->is_snapshot ? PTE_SHARING :
						       PTE_PRESERVE };
	struct stat st;

	info->kind = seg->is_snapshot ? UPAGER_KIND_SNAPSHOT :
		     seg->origin      ? UPAGER_KIND_CLONE :
					UPAGER_KIND_SEGMENT;
	if (rel && !rel->deleted)
		snprintf(info->parent, sizeof(info->parent), "%s", rel->name);
	info->nr_snapshots = atomic_load(&seg->nr_snapshots);
	info->nr_clones = atomic_load(&seg->nr_clones);
	info->cut_ns = seg->cut_ns;
	info->pages_cbw = atomic_load(&seg->pages_cbw);
	if (seg->is_snapshot) {
		pagetable_walk(&seg->pt, count_leaf, &c);
		info->pages_shared = c.n;
	} else {
		/* PRESERVE goes with PRESENT: count it alone */
		struct counts p = { .bits = PTE_PRESERVE | PTE_PRESENT };

		pagetable_walk(&seg->pt, count_leaf, &p);
		info->pages_shared = p.n;
	}
	if (fstat(seg->memfd, &st) == 0) {
		info->allocated_bytes = (uint64_t)st.st_blocks * 512;
		if (seg->is_snapshot)
			info->pages_private = info->allocated_bytes /
					      seg->page_size;
	}
}

/* ---- a snapshot goes ---- */

struct giveback {
	struct segment *parent, *snap, *next;
};

static void giveback_leaf(void *arg, uint64_t first, struct pt_leaf *l)
{
	struct giveback *g = arg;

	for (unsigned int k = 0; k < PT_LEAF_SLOTS; k++) {
		uint64_t p = first + k, e = atomic_load(&l->e[k]);
		struct segment *s;
		bool needed = false;

		if (p >= g->snap->npages)
			return;
		if ((e & PTE_CHANGED) && g->next)
			pte_set(&g->next->pt, p, PTE_CHANGED);
		if (!(e & PTE_SHARING))
			continue;
		list_for_each_entry(s, &g->parent->snapshots, snap_link) {
			uint64_t o = pte_get(&s->pt, p);

			if ((o & PTE_SHARING) && !(o & PTE_PRESENT)) {
				needed = true;
				break;
			}
		}
		/* Nobody needs the frame kept: the next write of it is let
		 * go without a copy. */
		if (!needed)
			pte_clear(&g->parent->pt, p, PTE_PRESERVE);
	}
}

/* The last snapshot went: nothing is preserved any more. */
static void unpreserve_leaf(void *arg, uint64_t first, struct pt_leaf *l)
{
	(void)arg;
	(void)first;
	for (unsigned int k = 0; k < PT_LEAF_SLOTS; k++)
		if (atomic_load(&l->e[k]) & PTE_PRESERVE)
			atomic_fetch_and(&l->e[k], ~PTE_PRESERVE);
}

void snapshot_release(struct segment *seg)
{
	struct segment *parent = seg->parent;
	struct giveback g = { .parent = parent, .snap = seg };

	free(seg->held);
	if (!parent)
		return;
	pthread_mutex_lock(&parent->cow_lock);
	if (!list_empty(&seg->snap_link)) {
		if (seg->snap_link.next != &parent->snapshots)
			g.next = list_entry(seg->snap_link.next, struct segment,
					    snap_link);
		list_del_init(&seg->snap_link);
		atomic_fetch_sub(&parent->nr_snapshots, 1);
		if (list_empty(&parent->snapshots))
			pagetable_walk(&parent->pt, unpreserve_leaf, NULL);
		else
			pagetable_walk(&seg->pt, giveback_leaf, &g);
	}
	pthread_mutex_unlock(&parent->cow_lock);
	seg->parent = NULL;
	segment_put(parent);
}
