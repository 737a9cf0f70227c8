/* SPDX-License-Identifier: MIT */
/*
 * Snapshots: point-in-time, copy-on-write copies of live segments, cut
 * while the processes attached to them go on; and clones, writable
 * segments made of a snapshot.
 *
 * A snapshot is a read-only segment with a memfd and a page table of its
 * own.  A page of it is, by its entry (pagetable.h):
 *   PRESENT   its own frame: copied before the parent wrote it (CBW), or
 *             on a read of the snapshot's own mapping
 *   SHARING   the parent's frame, which nobody wrote since the cut
 *   neither   what the parent's source gives (absent in the parent at
 *             the cut, or a fill of it still in flight)
 * and a parent's page that some snapshot may still share has PRESERVE:
 * it is write-protected in every attachment, and its first write is held
 * until the page was copied into every snapshot that shares it.
 *
 * The cut (snapshot_cut): with the segment's `cutting` set, every
 * attachment's reader write-protects the attachment's ranges
 * (UFFDIO_WRITEPROTECT, which with UFFD_FEATURE_WP_UNPOPULATED also marks
 * pages the process has not mapped), inside a drain of its uffd, so that
 * no copy into that process is in flight and every event read is applied
 * (a fork not read yet fails the protect with EAGAIN until it is: its
 * child is known, and protected too, before the cut ends).  Missing faults
 * go on being served meanwhile, their pages mapped write-protected.  A
 * write to a protected page is held, not answered, until the cut is
 * recorded: so no write can be seen by another thread and yet fall after
 * the cut.  Then the cut records which pages the parent has (SHARING,
 * PRESERVE) and releases the held writes, which copy before they write.
 * Readers never wait; a writer waits for the protection pass at most.
 *
 * Locking: the parent's cow_lock orders cuts, copies before write, the
 * held writes and the list of snapshots; a snapshot's frames are copied
 * under its parent's lock.  Lock order: daemon lock, then cow_lock.
 */
#ifndef UPAGER_SNAPSHOT_H
#define UPAGER_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include <upager/upager.h>

struct attachment;
struct segment;

/* A write held by a cut. */
struct snap_held {
	struct attachment *att; /* a reference */
	uint64_t addr;
	uint64_t ns; /* when it was read */
};

/*
 * snapshot_new - an unpublished snapshot of @parent named @name (the
 * caller owns it: @uid, @gid, @mode), cut now.  Returns 0 or -errno
 * (-EINVAL: @parent is a snapshot; -EOPNOTSUPP: an attachment of @parent
 * cannot be write-protected).  @res: what the cut took.
 */
int snapshot_new(struct segment *parent, const char *name, uid_t uid, gid_t gid,
		 uint32_t mode, struct segment **out,
		 struct upager_snapshot_result *res);

/*
 * snapshot_clone - a new, unpublished writable segment whose pages come
 * from snapshot @snap until written.
 */
int snapshot_clone(struct segment *snap, const char *name, uid_t uid, gid_t gid,
		   uint32_t mode, struct segment **out);

/*
 * snapshot_take - an unnamed snapshot of @seg for a save (a snapshot is
 * taken as it is).  Release it with segment_put().
 */
int snapshot_take(struct segment *seg, struct segment **out);

/*
 * snapshot_wp - the write at @addr (page @pgoff) of an attachment of
 * @seg faulted on a protected page: returns true when a cut holds it (the
 * cut drives it again when it ends), false once the page was copied into
 * every snapshot that shares it: the caller un-protects it.
 */
bool snapshot_wp(struct segment *seg, struct attachment *att, uint64_t addr,
		 uint64_t pgoff);

/*
 * snapshot_protect - the reader of @att, inside a drain (worker.c):
 * write-protect its ranges for the cut that asked.  Returns 0, or -EAGAIN
 * when an event must be read first (drain, then call again).
 */
int snapshot_protect(struct attachment *att);

/*
 * snapshot_removed - @att's uffd told of a remove (MADV_DONTNEED or
 * MADV_REMOVE) of [@start, @end): the frames there may be punched out
 * next; a cut looks before it shares them.
 */
void snapshot_removed(struct attachment *att, uint64_t start, uint64_t end);

/*
 * snapshot_lost - page @pgoff of @seg, which snapshots shared, was punched
 * out of its memfd: the snapshots that had no copy of it lost it (their
 * readers get SIGBUS, a save EIO), never read its new content.
 */
void snapshot_lost(struct segment *seg, uint64_t pgoff);

/* Whether a cut can write-protect @att (read-only ones need not). */
bool snapshot_can_protect(struct attachment *att);

/*
 * snapshot_attach - @att, just published, writes a segment that has
 * snapshots (or is being cut): have its reader write-protect it before
 * the process is told it is attached.  0 or -errno (-ETIMEDOUT).
 */
int snapshot_attach(struct attachment *att);

/* Whether page @pgoff differs between @older and @newer, snapshots of one
 * parent (@older cut first). */
bool snapshot_changed(struct segment *older, struct segment *newer,
		      uint64_t pgoff);
/* 0 when @older is an older snapshot of @newer's parent; -EINVAL else. */
int snapshot_check_since(struct segment *older, struct segment *newer);

/* Fills the snapshot fields of @info (segment_info). */
void snapshot_info(struct segment *seg, struct upager_segment_info *info);

/* @seg is being freed: give back what its snapshots hold of it. */
void snapshot_release(struct segment *seg);

#endif
