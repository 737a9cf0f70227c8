/* SPDX-License-Identifier: MIT */
/*
 * Snapshots: the declarations images are written against.  A placeholder
 * until the snapshot core lands (it brings the real header and
 * snapshot.c); nothing calls these yet (image.c, save_cut() and
 * save_changed(), marks where they go).
 */
#ifndef UPAGER_SNAPSHOT_H
#define UPAGER_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

struct segment;

/*
 * snapshot_take - an unpublished, temporary snapshot of live segment
 * @seg, cut now (its writers go on); segment_put() it.  0 or -errno.
 */
int snapshot_take(struct segment *seg, struct segment **out);

/* Whether page @pgoff differs between @older and @newer, two snapshots
 * of one segment. */
bool snapshot_changed(struct segment *older, struct segment *newer,
		      uint64_t pgoff);

/* 0, or -EINVAL when @older is not an older snapshot of @newer's parent. */
int snapshot_check_since(struct segment *older, struct segment *newer);

#endif
