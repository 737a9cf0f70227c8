/* SPDX-License-Identifier: MIT */
/*
 * Page sources: where a page never materialized in a segment's memfd comes
 * from.  A table of operations, one instance per kind, so the fault path
 * does not care whether the bytes come from nowhere (zero), a raw image
 * file, or (later) a parent snapshot.
 *
 * A read is asynchronous: ->read() either completes at once (returns 1) or
 * queues I/O on the caller's io_uring (returns 0); the caller hands each of
 * that I/O's completions to ->complete(), which returns 1 when the run of
 * pages is in the buffer, 0 when it queued more I/O (a short read), or
 * -errno.  A zero source sets fill->zero instead of writing the buffer, so
 * the fault path can use UFFDIO_ZEROPAGE.
 */
#ifndef UPAGER_SOURCE_H
#define UPAGER_SOURCE_H

#include <stdbool.h>
#include <stdint.h>
#include <liburing.h>
#include <upager/upager.h>

struct source;

/* One run of pages being read for one fault (and its read-ahead). */
struct source_read {
	void *buf;	/* npages * page_size bytes */
	uint64_t pgoff; /* first page */
	uint32_t npages;
	uint32_t done;	     /* bytes in buf so far */
	uint64_t bytes_read; /* bytes that came from the source */
	bool zero;	     /* the run is all zeros; buf untouched */
	void *user_data;     /* the SQE's user_data for queued I/O (a
			      * struct io_req *, ring.h) */
};

struct source_ops {
	const char *name;
	uint32_t kind; /* enum upager_source_kind */
	int (*read)(struct source *src, struct source_read *rd,
		    struct io_uring *ring);
	int (*complete)(struct source *src, struct source_read *rd, int res,
			struct io_uring *ring);
	/* Reads pages [@pgoff, @pgoff + @npages) into @buf, blocking:
	 * for snapshots, clones and saves.  0 or -errno. */
	int (*read_sync)(struct source *src, uint64_t pgoff, uint32_t npages,
			 void *buf);
	void (*destroy)(struct source *src);
};

struct source {
	const struct source_ops *ops;
	uint32_t page_size;
	int fd;			    /* file: the image, read-only */
	uint64_t file_size;	    /* file: at create; an image's: its
				     * data, the trailer left out */
	uint64_t image_size;	    /* file, image: an image's size; 0
				     * for a raw file */
	char path[UPAGER_PATH_MAX]; /* file: for stat */
	bool fail_pages;	    /* file: the test hook applies */
};

int source_zero_new(uint32_t page_size, struct source **out);

/*
 * source_file_new - a raw image read through @fd
 *
 * @fd must be readable and a regular file or block device; the source
 * takes its own duplicate.  Returns 0 or -errno (-EINVAL: neither a
 * regular file nor a block device, -EBADF: not readable).
 *
 * A regular file that is a full upager image (image.h) is read only up to
 * its data's end, and src->image_size says how much that is; an
 * incremental image, or one whose trailer is damaged, is -EINVAL (an
 * incremental one needs its base: source_image_new()).
 *
 * A read that fails (->complete returns -errno) leaves in rd->done the
 * bytes at the start of the buffer that were read before the error.
 */
int source_file_new(int fd, uint32_t page_size, struct source **out);

void source_destroy(struct source *src);

static inline int source_read(struct source *src, struct source_read *rd,
			      struct io_uring *ring)
{
	return src->ops->read(src, rd, ring);
}

static inline int source_read_sync(struct source *src, uint64_t pgoff,
				   uint32_t npages, void *buf)
{
	return src->ops->read_sync(src, pgoff, npages, buf);
}

static inline int source_complete(struct source *src, struct source_read *rd,
				  int res, struct io_uring *ring)
{
	return src->ops->complete(src, rd, res, ring);
}

#endif
