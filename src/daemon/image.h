/* SPDX-License-Identifier: MIT */
/*
 * Images: a segment saved to a file, and read back as a source.
 *
 * The format (structs and reader in src/shared/imagefmt.h, which upagerctl
 * shares).  An image of a segment of `size` bytes is:
 *
 *   [0, size)        the segment's bytes, page i at i * page_size.  Zero
 *                    pages are holes: never written, so the file is
 *                    sparse and a raw reader sees the segment as it was.
 *   [size, +128)     the header: magic "UPGIMG01", version, page_size,
 *                    size, image_id (random 64 bits), base_id (0 for a
 *                    full image), nr_pages, nr_carried, bitmap_off,
 *                    bitmap_len, bitmap_sum, created_ns, and a checksum of
 *                    the header (64-bit FNV-1a, little-endian fields).
 *   [+bitmap_len)    incremental images only: one bit a page, set for the
 *                    pages the image carries (its holes then read as zero
 *                    pages it carries; the pages not set come from the base).
 *   last 64 bytes    the footer: magic, the trailer's offset (= size) and
 *                    length, version, checksum.  A reader finds the trailer
 *                    from the end of the file; a file whose last 64 bytes
 *                    are no valid footer is a raw file, read as before.
 *
 * A full image is a file source limited to [0, size) (source.c); an
 * incremental one is laid over the full image it was saved on top of (its
 * base_id is that image's image_id) by the image source below.  Only one
 * level: the base must be a full image.
 *
 * Identity.  Every segment gets a random image_id at creation.  A full
 * save of snapshot S records S's; an incremental save of S2 since S1
 * records S2's as its image_id and S1's as its base_id, so the full image
 * of S1 is the base it needs.  A live segment is saved through a temporary
 * snapshot of it (a fresh id each time).
 *
 * Saving.  The saving thread reads the segment a chunk at a time
 * (segment_read: the memfd's frames, the source for the rest), leaves zero
 * pages as holes and writes each run of data pages with one write on its
 * own small io_uring, several chunks' writes in flight; then the trailer,
 * then fsync.  The server runs a save on a thread of its own, so the
 * control plane goes on meanwhile (server.c).
 */
#ifndef UPAGER_IMAGE_H
#define UPAGER_IMAGE_H

#include <stdint.h>
#include <upager/upager.h>

#include "imagefmt.h"
#include "source.h"

struct segment;
struct image_save;

/*
 * image_save_new - prepare a save of @seg (and for an incremental one,
 * since @since) to @fd, on the calling thread: checks @fd (-EBADF: not
 * open for writing; -EINVAL: not a regular file) and @since (-EINVAL: not
 * an older snapshot of the same segment), and takes the cut of a live
 * segment.  On success @fd is the save's (closed by image_save_free) and
 * references to the segments are held.  Returns 0 or -errno.
 */
int image_save_new(struct segment *seg, struct segment *since, int fd,
		   struct image_save **out);

/*
 * image_save_run - write the image, blocking (any thread).  Returns 0 and
 * fills @res, or -errno (-ECANCELED after image_save_cancel; the file is
 * truncated to nothing on failure).
 */
int image_save_run(struct image_save *sv, struct upager_save_result *res);

/* Makes a running image_save_run() stop soon (any thread). */
void image_save_cancel(struct image_save *sv);

/* Accepts NULL. */
void image_save_free(struct image_save *sv);

/*
 * source_image_new - the layered source of an incremental image @fd over
 * its base @base_fd (both taken as duplicates).  -EBADF: not readable;
 * -EINVAL: either is not an image, @fd is not incremental, @base_fd is
 * not a full image, or they differ in size or page size; -EXDEV: @fd was
 * not saved on top of @base_fd.  src->image_size is the image's size.
 */
int source_image_new(int fd, int base_fd, uint32_t page_size,
		     struct source **out);

#endif
