// SPDX-License-Identifier: MIT
/*
 * Segments: create, free, describe; the wait list of faults parked on a
 * page being filled.  The design and the locking are in segment.h; what
 * fills a page is fill.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "daemon.h"
#include "log.h"
#include "proto.h"
#include "segment.h"
#include "snapshot.h"
#include "uffd.h"

int segment_new(struct daemon *d, const char *name, uint64_t size, uid_t uid,
		gid_t gid, uint32_t mode, struct source *src,
		struct segment **out)
{
	struct segment *seg;
	char mname[UPAGER_NAME_MAX + 16];
	int ret;

	seg = calloc(1, sizeof(*seg));
	if (!seg)
		return -ENOMEM;
	seg->d = d;
	seg->page_size = src->page_size;
	seg->size = (size + seg->page_size - 1) &
		    ~(uint64_t)(seg->page_size - 1);
	seg->npages = seg->size / seg->page_size;
	seg->uid = uid;
	seg->gid = gid;
	seg->mode = mode;
	seg->refs = 1;
	snprintf(seg->name, sizeof(seg->name), "%s", name);
	/* Never 0, which is no image's (a full image's base_id). */
	while (!seg->image_id)
		if (getrandom(&seg->image_id, sizeof(seg->image_id), 0) < 0 &&
		    errno != EINTR) {
			ret = -errno;
			free(seg);
			return ret;
		}
	list_init(&seg->attachments);
	list_init(&seg->link);
	list_init(&seg->snapshots);
	list_init(&seg->snap_link);
	pthread_mutex_init(&seg->wait_lock, NULL);
	pthread_mutex_init(&seg->cow_lock, NULL);

	snprintf(mname, sizeof(mname), "upager:%s", name);
	seg->memfd = memfd_create(mname, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (seg->memfd < 0) {
		ret = -errno;
		goto err;
	}
	/*
	 * A memfd is born mode 0777: a client handed it read-only could
	 * reopen it read-write through /proc/self/fd.  The segment's mode is
	 * enforced by the daemon alone, so only the daemon may open it.
	 */
	if (fchmod(seg->memfd, 0600) < 0 ||
	    ftruncate(seg->memfd, seg->size) < 0) {
		ret = -errno;
		goto err;
	}
	/* Clients get this fd: they must not be able to resize it. */
	if (fcntl(seg->memfd, F_ADD_SEALS,
		  F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		ret = -errno;
		goto err;
	}
	ret = pagetable_init(&seg->pt, seg->npages);
	if (ret)
		goto err;
	seg->map = mmap(NULL, seg->size, PROT_READ | PROT_WRITE, MAP_SHARED,
			seg->memfd, 0);
	if (seg->map == MAP_FAILED) {
		ret = -errno;
		seg->map = NULL;
		goto err;
	}
	ret = uffd_register(d->fill_uffd, (uintptr_t)seg->map, seg->size,
			    UFFDIO_REGISTER_MODE_MISSING, NULL);
	if (ret)
		goto err;
	seg->src = src;
	*out = seg;
	return 0;
err:
	if (seg->map)
		munmap(seg->map, seg->size);
	pagetable_fini(&seg->pt);
	if (seg->memfd >= 0)
		close(seg->memfd);
	pthread_mutex_destroy(&seg->wait_lock);
	pthread_mutex_destroy(&seg->cow_lock);
	free(seg);
	return ret;
}

void segment_get(struct segment *seg)
{
	atomic_fetch_add(&seg->refs, 1);
}

/* Moves @c's counts to @r: each taken and zeroed at once, none lost. */
#define counter_move(r, c) counter_add((r), atomic_exchange(&(c), 0))

static void counters_retire(struct seg_counters *r, struct seg_counters *c)
{
	counter_move(r->faults_missing, c->faults_missing);
	counter_move(r->faults_wp, c->faults_wp);
	counter_move(r->faults_minor, c->faults_minor);
	counter_move(r->faults_waited, c->faults_waited);
	counter_move(r->pages_filled, c->pages_filled);
	counter_move(r->bytes_read, c->bytes_read);
	counter_move(r->readahead_pages, c->readahead_pages);
	counter_move(r->readahead_touched, c->readahead_touched);
	counter_move(r->readahead_untouched, c->readahead_untouched);
}

void segment_unpublish(struct daemon *d, struct segment *seg)
{
	seg->deleted = true;
	list_del_init(&seg->link);
	segment_retire_counters(seg);
	d->nr_segments--;
}

void segment_retire_counters(struct segment *seg)
{
	counters_retire(&seg->d->retired, &seg->c);
}

void segment_put(struct segment *seg)
{
	if (!seg || atomic_fetch_sub(&seg->refs, 1) != 1)
		return;
	pr_info("segment", "%s: freed", seg->name);
	snapshot_release(seg);
	counters_retire(&seg->d->retired, &seg->c);
	pagetable_fini(&seg->pt);
	munmap(seg->map, seg->size);
	source_destroy(seg->src);
	close(seg->memfd);
	free(seg->waiters);
	pthread_mutex_destroy(&seg->wait_lock);
	pthread_mutex_destroy(&seg->cow_lock);
	free(seg);
}

uint64_t segment_resident_bytes(struct segment *seg)
{
	struct stat st;

	if (fstat(seg->memfd, &st) < 0)
		return 0;
	return (uint64_t)st.st_blocks * 512;
}

void segment_info(struct segment *seg, struct upager_segment_info *info)
{
	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "%s", seg->name);
	snprintf(info->source_path, sizeof(info->source_path), "%s",
		 seg->src->path);
	info->id = seg->id;
	info->size = seg->size;
	info->page_size = seg->page_size;
	info->source = seg->src->ops->kind;
	info->uid = seg->uid;
	info->mode = seg->mode;
	info->faults_missing = counter_get(seg->c.faults_missing);
	info->faults_wp = counter_get(seg->c.faults_wp);
	info->faults_minor = counter_get(seg->c.faults_minor);
	info->faults_waited = counter_get(seg->c.faults_waited);
	info->pages_filled = counter_get(seg->c.pages_filled);
	info->bytes_read = counter_get(seg->c.bytes_read);
	info->readahead_max_pages = counter_get(seg->c.readahead_max);
	info->readahead_pages = counter_get(seg->c.readahead_pages);
	info->readahead_touched = counter_get(seg->c.readahead_touched);
	info->readahead_untouched = counter_get(seg->c.readahead_untouched);
	snapshot_info(seg, info);
	info->resident_bytes = segment_resident_bytes(seg);
	info->nr_attachments = seg->nr_attachments;
}

bool segment_memfd_has(struct segment *seg, uint64_t pgoff)
{
	off_t off = (off_t)(pgoff * seg->page_size);

	return lseek(seg->memfd, off, SEEK_DATA) == off;
}

int segment_read(struct segment *seg, uint64_t pgoff, uint32_t n, void *buf)
{
	uint32_t ps = seg->page_size;

	if (pgoff > seg->npages || n > seg->npages - pgoff)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		char *p = (char *)buf + (size_t)i * ps;
		off_t off = (off_t)((pgoff + i) * ps);
		int ret;

		if ((pte_get(&seg->pt, pgoff + i) & PTE_PRESENT) &&
		    segment_memfd_has(seg, pgoff + i)) {
			ssize_t got = pread(seg->memfd, p, ps, off);

			if (got == (ssize_t)ps)
				continue;
			if (got < 0)
				return -errno;
		}
		ret = source_read_sync(seg->src, pgoff + i, 1, p);
		if (ret)
			return ret;
	}
	return 0;
}

int segment_park(struct segment *seg, struct attachment *att, uint64_t pgoff,
		 uint64_t addr)
{
	int parked = 0;

	pthread_mutex_lock(&seg->wait_lock);
	if (pte_get(&seg->pt, pgoff) & PTE_BUSY) {
		if (seg->nr_waiters == seg->waiters_cap) {
			unsigned int cap = seg->waiters_cap ?
						   2 * seg->waiters_cap :
						   16;
			void *p = realloc(seg->waiters,
					  cap * sizeof(*seg->waiters));

			if (!p) {
				parked = -ENOMEM;
				goto out;
			}
			seg->waiters = p;
			seg->waiters_cap = cap;
		}
		seg->waiters[seg->nr_waiters++] = (struct seg_waiter){
			.pgoff = pgoff,
			.addr = addr,
			.att = att,
		};
		parked = 1;
	}
out:
	pthread_mutex_unlock(&seg->wait_lock);
	return parked;
}

unsigned int segment_unpark(struct segment *seg, uint64_t first, uint64_t n,
			    struct seg_waiter *out, unsigned int max)
{
	unsigned int nr = 0;

	pthread_mutex_lock(&seg->wait_lock);
	for (unsigned int i = 0; i < seg->nr_waiters && nr < max;) {
		struct seg_waiter *sw = &seg->waiters[i];

		if (sw->pgoff >= first && sw->pgoff < first + n) {
			out[nr++] = *sw;
			*sw = seg->waiters[--seg->nr_waiters];
		} else {
			i++;
		}
	}
	pthread_mutex_unlock(&seg->wait_lock);
	return nr;
}
