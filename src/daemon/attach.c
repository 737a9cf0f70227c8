// SPDX-License-Identifier: MIT
/*
 * Attachments: their life (new, fork, kill, reap), the address ranges they
 * map and how the uffd's events change them, and their retry lists.  The
 * design and the locking are in attach.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/kcmp.h>
#include <sys/sysmacros.h>

#include "attach.h"
#include "daemon.h"
#include "log.h"
#include "segment.h"

static int ranges_add(struct attachment *att, uint64_t start, uint64_t len,
		      uint64_t pgoff)
{
	if (att->nr_ranges == att->ranges_cap) {
		unsigned int cap = att->ranges_cap ? 2 * att->ranges_cap : 4;
		void *p = realloc(att->ranges, cap * sizeof(*att->ranges));

		if (!p)
			return -ENOMEM;
		att->ranges = p;
		att->ranges_cap = cap;
	}
	att->ranges[att->nr_ranges++] = (struct att_range){
		.start = start,
		.len = len,
		.pgoff = pgoff,
	};
	return 0;
}

static struct attachment *attach_alloc(struct segment *seg, int uffd)
{
	struct attachment *att = calloc(1, sizeof(*att));

	if (!att)
		return NULL;
	att->id = atomic_fetch_add(&seg->d->next_att_id, 1) + 1;
	att->refs = 1;
	att->seg = seg;
	segment_get(seg);
	att->uffd = uffd;
	att->pidfd = -1;
	att->created_ns = now_ns();
	pthread_mutex_init(&att->lock, NULL);
	list_init(&att->seg_link);
	list_init(&att->all_link);
	return att;
}

int attach_new(struct segment *seg, int uffd, pid_t pid, uint64_t start,
	       uint64_t len, uint64_t pgoff, struct attachment **out)
{
	struct attachment *att = attach_alloc(seg, uffd);

	if (!att)
		return -ENOMEM;
	if (ranges_add(att, start, len, pgoff)) {
		att->uffd = -1;
		attach_put(att);
		return -ENOMEM;
	}
	att->pid = pid;
	*out = att;
	return 0;
}

int attach_fork(struct attachment *parent, int uffd, struct attachment **out)
{
	struct attachment *att = attach_alloc(parent->seg, uffd);

	if (!att)
		return -ENOMEM;
	att->uid = parent->uid;
	att->parent_pid = atomic_load(&parent->pid);
	att->parent_id = parent->id;
	att->flags = parent->flags;
	att->uffd_features = parent->uffd_features;
	att->uffd_ioctls = parent->uffd_ioctls;
	pthread_mutex_lock(&parent->lock);
	for (unsigned int i = 0; i < parent->nr_ranges; i++) {
		struct att_range *r = &parent->ranges[i];

		if (ranges_add(att, r->start, r->len, r->pgoff)) {
			pthread_mutex_unlock(&parent->lock);
			att->uffd = -1;
			attach_put(att);
			return -ENOMEM;
		}
	}
	pthread_mutex_unlock(&parent->lock);
	*out = att;
	return 0;
}

void attach_publish(struct attachment *att)
{
	struct daemon *d = att->seg->d;

	list_add_tail(&att->seg_link, &att->seg->attachments);
	list_add_tail(&att->all_link, &d->attachments);
	att->seg->nr_attachments++;
	atomic_fetch_add(&d->nr_attachments, 1);
	/* A forked child's, whose pid the main thread looks for. */
	if (atomic_load(&att->pid) == 0)
		atomic_fetch_add(&d->unresolved, 1);
}

bool attach_uffd_served(struct daemon *d, int fd)
{
	struct attachment *att;
	pid_t self = getpid();

	list_for_each_entry(att, &d->attachments, all_link)
		if (syscall(SYS_kcmp, self, self, KCMP_FILE, fd, att->uffd) == 0)
			return true;
	return false;
}

void attach_pids(struct segment *seg, struct upager_segment_info *info)
{
	struct attachment *att;

	list_for_each_entry(att, &seg->attachments, seg_link) {
		if (info->nr_pids == UPAGER_STAT_PIDS)
			break;
		info->pids[info->nr_pids++] = atomic_load(&att->pid);
	}
}

struct attachment *attach_find(struct daemon *d, uint64_t id)
{
	struct attachment *att, *found = NULL;

	pthread_mutex_lock(&d->lock);
	list_for_each_entry(att, &d->attachments, all_link) {
		if (att->id == id) {
			found = att;
			attach_get(att);
			break;
		}
	}
	pthread_mutex_unlock(&d->lock);
	return found;
}

void attach_get(struct attachment *att)
{
	atomic_fetch_add(&att->refs, 1);
}

void attach_put(struct attachment *att)
{
	if (!att || atomic_fetch_sub(&att->refs, 1) != 1)
		return;
	if (att->uffd >= 0)
		close(att->uffd);
	if (att->pidfd >= 0)
		close(att->pidfd);
	segment_put(att->seg);
	pthread_mutex_destroy(&att->lock);
	free(att->pollers);
	free(att->ranges);
	free(att->retry);
	free(att);
}

int attach_set_pid(struct attachment *att, pid_t pid)
{
	int fd = syscall(SYS_pidfd_open, pid, 0);

	if (fd < 0)
		return -errno;
	att->pidfd = fd;
	atomic_store(&att->pid, pid);
	return 0;
}

int attach_lookup(struct attachment *att, uint64_t addr, uint64_t *pgoff,
		  uint64_t *run)
{
	uint64_t ps = att->seg->page_size;
	int ret = -ENOENT;

	pthread_mutex_lock(&att->lock);
	for (unsigned int i = 0; i < att->nr_ranges; i++) {
		struct att_range *r = &att->ranges[i];

		if (addr >= r->start && addr - r->start < r->len) {
			*pgoff = r->pgoff + (addr - r->start) / ps;
			*run = (r->start + r->len - addr) / ps;
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&att->lock);
	return ret;
}

/*
 * Cuts [start, end) out of the ranges; when @moved is not NULL, the pieces
 * cut out are added to it, as ranges of @moved (which need not be sorted).
 * Walks backwards, so the pieces it adds at the end are never walked.
 * Returns 0 or -ENOMEM.
 */
static int ranges_cut(struct attachment *att, uint64_t start, uint64_t end,
		      struct attachment *moved)
{
	uint64_t ps = att->seg->page_size;
	int ret = 0;

	for (unsigned int i = att->nr_ranges; i-- > 0;) {
		struct att_range r = att->ranges[i];
		uint64_t rend = r.start + r.len;
		uint64_t lo = start > r.start ? start : r.start;
		uint64_t hi = end < rend ? end : rend;

		if (lo >= hi)
			continue;
		if (moved)
			ret |= ranges_add(moved, lo, hi - lo,
					  r.pgoff + (lo - r.start) / ps);
		/* Remove r, then add back what is left on either side. */
		att->ranges[i] = att->ranges[--att->nr_ranges];
		if (r.start < lo)
			ret |= ranges_add(att, r.start, lo - r.start, r.pgoff);
		if (hi < rend)
			ret |= ranges_add(att, hi, rend - hi,
					  r.pgoff + (hi - r.start) / ps);
	}
	return ret ? -ENOMEM : 0;
}

static void ranges_oom(struct attachment *att)
{
	/* A lost range would leave faults in it unserved: give up the
	 * attachment loudly rather than serve it wrong. */
	pr_err("attach", "%s: pid %d: out of memory tracking ranges",
	       att->seg->name, (int)atomic_load(&att->pid));
	attach_kill(att, "dropped");
}

/* The mapping of @pid at @addr: 0 with its bounds and file, or -ENOENT. */
static int vma_at(pid_t pid, uint64_t addr, uint64_t *lo, uint64_t *hi,
		  uint64_t *off, dev_t *dev, ino_t *ino)
{
	char path[64], line[512];
	int ret = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long l, h, o, i;
		unsigned int maj, min;

		/* A long path may split a line: its tail never parses. */
		if (sscanf(line, "%llx-%llx %*s %llx %x:%x %llu", &l, &h, &o,
			   &maj, &min, &i) != 6 ||
		    addr < l || addr >= h)
			continue;
		*lo = l;
		*hi = h;
		*off = o;
		*dev = makedev(maj, min);
		*ino = i;
		ret = 0;
		break;
	}
	fclose(f);
	return ret;
}

int attach_discover(struct attachment *att, uint64_t addr, pid_t tid,
		    bool alone, bool *drain)
{
	pid_t pid = atomic_load(&att->pid) > 0 ? atomic_load(&att->pid) : tid;
	uint64_t ps = att->seg->page_size;
	struct stat st;

	if (pid <= 0 || fstat(att->seg->memfd, &st) < 0)
		return -ENOENT;
	for (int tries = 0; tries < 4; tries++) {
		uint64_t gen = atomic_load(&att->ev_gen), lo, hi, off;
		bool same = false;
		dev_t dev;
		ino_t ino;
		int ret = vma_at(pid, addr, &lo, &hi, &off, &dev, &ino);

		if (ret)
			return ret;
		if (dev != st.st_dev || ino != st.st_ino || off % ps ||
		    (hi - lo) % ps)
			return -EINVAL;
		/* What /proc said holds unless an event was applied since:
		 * an event read later describes a change made later.  With
		 * other readers, no event may be read meanwhile either. */
		if (!alone && !gate_drain_enter(&att->gate))
			return -EAGAIN;
		if (atomic_load(&att->ev_gen) == gen) {
			pthread_mutex_lock(&att->lock);
			ret = ranges_cut(att, lo, hi, NULL);
			ret |= ranges_add(att, lo, hi - lo, off / ps);
			pthread_mutex_unlock(&att->lock);
			same = true;
		}
		if (!alone && gate_release(&att->gate))
			*drain = true;
		if (same) {
			if (ret)
				ranges_oom(att);
			return ret ? -ENOMEM : 0;
		}
	}
	return -EAGAIN;
}

int attach_unmap(struct attachment *att, uint64_t start, uint64_t end)
{
	int ret;

	pthread_mutex_lock(&att->lock);
	ret = ranges_cut(att, start, end, NULL);
	pthread_mutex_unlock(&att->lock);
	return ret;
}

int attach_remap(struct attachment *att, uint64_t from, uint64_t to,
		 uint64_t len)
{
	struct attachment moved = { .seg = att->seg };
	int ret;

	pthread_mutex_lock(&att->lock);
	ret = ranges_cut(att, from, from + len, &moved);
	/* What was mapped at the destination is gone (mremap unmaps it). */
	ret |= ranges_cut(att, to, to + len, NULL);
	for (unsigned int i = 0; i < moved.nr_ranges; i++)
		ret |= ranges_add(att, moved.ranges[i].start - from + to,
				  moved.ranges[i].len, moved.ranges[i].pgoff);
	pthread_mutex_unlock(&att->lock);
	free(moved.ranges);
	return ret ? -ENOMEM : 0;
}

bool attach_has_ranges(struct attachment *att)
{
	bool ret;

	pthread_mutex_lock(&att->lock);
	ret = att->nr_ranges > 0;
	pthread_mutex_unlock(&att->lock);
	return ret;
}

int attach_requeue(struct attachment *att, uint64_t addr)
{
	if (atomic_load(&att->dead))
		return 0;
	pthread_mutex_lock(&att->lock);
	if (att->nr_retry == att->retry_cap) {
		unsigned int cap = att->retry_cap ? 2 * att->retry_cap : 8;
		void *p = realloc(att->retry, cap * sizeof(*att->retry));

		if (!p) {
			pthread_mutex_unlock(&att->lock);
			return -ENOMEM;
		}
		att->retry = p;
		att->retry_cap = cap;
	}
	att->retry[att->nr_retry++] = addr;
	pthread_mutex_unlock(&att->lock);
	daemon_kick(atomic_load(&att->kick_fd));
	return 0;
}

void attach_owe_drain(struct attachment *att)
{
	atomic_fetch_or(&att->gate, GATE_AGAIN);
	daemon_kick(atomic_load(&att->kick_fd));
}

/*
 * No daemon lock here: the caller may hold an attachment's lock, which
 * comes after it (daemon.h).  The main thread does the rest.
 */
bool attach_kill(struct attachment *att, const char *why)
{
	struct daemon *d = att->seg->d;
	struct attachment *head;

	if (atomic_exchange(&att->dead, true))
		return false;
	pr_info("attach", "%s: pid %d: attachment %llu %s", att->seg->name,
		(int)atomic_load(&att->pid), (unsigned long long)att->id, why);
	atomic_fetch_sub(&d->nr_attachments, 1);
	attach_get(att);
	head = atomic_load(&d->killed);
	do
		att->kill_next = head;
	while (!atomic_compare_exchange_weak(&d->killed, &head, att));
	daemon_wake_main(d);
	return true;
}

struct attachment *attach_reap(struct daemon *d)
{
	struct attachment *list, *att;

	if (!atomic_load_explicit(&d->killed, memory_order_relaxed))
		return NULL;
	list = atomic_exchange(&d->killed, NULL);
	pthread_mutex_lock(&d->lock);
	for (att = list; att; att = att->kill_next) {
		struct segment *seg = att->seg;

		list_del_init(&att->seg_link);
		list_del_init(&att->all_link);
		/* UPAGER_DELETE_UNUSED: the last one takes the name along */
		att->put_seg = !--seg->nr_attachments && seg->delete_unused &&
			       !seg->deleted;
		if (att->put_seg) {
			segment_unpublish(d, seg);
			pr_notice("segment",
				  "%s: deleted (its last attachment gone)",
				  seg->name);
		}
		/* (pid changes on the main thread only) */
		if (atomic_load(&att->pid) == 0)
			atomic_fetch_sub(&d->unresolved, 1);
	}
	pthread_mutex_unlock(&d->lock);
	for (att = list; att; att = att->kill_next)
		if (att->put_seg)
			segment_put(att->seg); /* the list's (it holds its own)
						*/
	return list;
}
