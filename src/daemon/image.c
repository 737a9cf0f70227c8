// SPDX-License-Identifier: MIT
/*
 * Images: saving a segment (full or incremental) and the layered source of
 * an incremental image over its base.  The format and the design are in
 * image.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <liburing.h>

#include "fd.h"
#include "image.h"
#include "log.h"
#include "ring.h"
#include "segment.h"
#include "snapshot.h"

#define SAVE_CHUNK 256u /* pages read at once (1 MiB of 4 KiB pages) */
#define SAVE_BUFS 8u	/* chunks whose writes may be in flight */
#define SAVE_QD 64u	/* writes in flight at most */

struct save_buf {
	char *mem; /* SAVE_CHUNK pages */
	unsigned int pending;
};

/* One write of a run of data pages. */
struct save_write {
	struct save_buf *b;
	const char *p;
	uint64_t off;
	uint32_t len;
};

struct image_save {
	struct segment *seg;   /* what is saved: a snapshot, or the cut */
	struct segment *since; /* incremental: the older snapshot */
	int fd;
	_Atomic bool cancel;
	uint64_t start_ns;
	uint64_t image_id, base_id;

	/* image_save_run's */
	struct io_uring ring;
	struct save_buf bufs[SAVE_BUFS];
	unsigned int inflight;
	uint64_t bytes;
	int err; /* the first write error */
};

static uint64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/*
 * save_cut: what a save of @seg reads: a live segment goes through an
 * unpublished snapshot of it, cut now, so that its writers go on and the
 * image is one instant; a snapshot is saved as it is.
 */
static int save_cut(struct segment *seg, struct segment **out)
{
	return snapshot_take(seg, out);
}

/* save_check_since: may @newer be saved on top of @older? */
static int save_check_since(struct segment *older, struct segment *newer)
{
	return snapshot_check_since(older, newer);
}

/*
 * save_changed: whether page @pgoff of the saved snapshot differs from
 * @since's: the daemon knows, from the cuts (snapshot.h), without reading.
 */
static int save_changed(struct image_save *sv, uint64_t pgoff, const char *page)
{
	(void)page;
	return snapshot_changed(sv->since, sv->seg, pgoff);
}

int image_save_new(struct segment *seg, struct segment *since, int fd,
		   struct image_save **out)
{
	struct image_save *sv;
	struct stat st;
	int flags, ret;

	flags = fcntl(fd, F_GETFL);
	if (flags < 0)
		return -errno;
	if ((flags & O_ACCMODE) == O_RDONLY || (flags & O_PATH))
		return -EBADF;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if (since) {
		ret = save_check_since(since, seg);
		if (ret)
			return ret;
	}
	sv = calloc(1, sizeof(*sv));
	if (!sv)
		return -ENOMEM;
	sv->start_ns = now_ns();
	ret = save_cut(seg, &sv->seg);
	if (ret) {
		free(sv);
		return ret;
	}
	if (since) {
		segment_get(since);
		sv->since = since;
		sv->base_id = since->image_id;
	}
	sv->image_id = sv->seg->image_id;
	sv->fd = fd;
	*out = sv;
	return 0;
}

void image_save_cancel(struct image_save *sv)
{
	atomic_store(&sv->cancel, true);
}

void image_save_free(struct image_save *sv)
{
	if (!sv)
		return;
	segment_put(sv->seg);
	segment_put(sv->since);
	close(sv->fd);
	free(sv);
}

static bool page_is_zero(const char *p, uint32_t len)
{
	const uint64_t *w = (const uint64_t *)p;

	for (uint32_t i = 0; i < len / 8; i += 4)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
			return false;
	return true;
}

/* One write's completion; a short one is finished by hand. */
static void save_complete(struct image_save *sv, struct io_uring_cqe *cqe)
{
	struct save_write *w = io_uring_cqe_get_data(cqe);
	int res = cqe->res, ret = 0;

	io_uring_cqe_seen(&sv->ring, cqe);
	if (res == -EINTR || res == -EAGAIN)
		res = 0;
	if (res < 0)
		ret = res;
	else if ((uint32_t)res < w->len)
		ret = fd_pwrite_full(sv->fd, w->p + res, w->len - res,
				     w->off + res);
	if (ret && !sv->err)
		sv->err = ret;
	if (!ret)
		sv->bytes += w->len;
	w->b->pending--;
	sv->inflight--;
	free(w);
}

/* Waits for one completion at least, and handles what came. */
static int save_reap(struct image_save *sv, bool wait)
{
	struct io_uring_cqe *cqe;
	int ret;

	if (wait) {
		ret = io_uring_submit_and_wait(&sv->ring, 1);
		if (ret < 0 && ret != -EINTR)
			return ret;
	}
	while (io_uring_peek_cqe(&sv->ring, &cqe) == 0)
		save_complete(sv, cqe);
	return 0;
}

static int save_queue(struct image_save *sv, struct save_buf *b, const char *p,
		      uint64_t off, uint32_t len)
{
	struct io_uring_sqe *sqe;
	struct save_write *w;
	int ret;

	while (sv->inflight >= SAVE_QD) {
		ret = save_reap(sv, true);
		if (ret)
			return ret;
	}
	w = malloc(sizeof(*w));
	if (!w)
		return -ENOMEM;
	*w = (struct save_write){ .b = b, .p = p, .off = off, .len = len };
	sqe = io_uring_get_sqe(&sv->ring);
	if (!sqe) {
		io_uring_submit(&sv->ring);
		sqe = io_uring_get_sqe(&sv->ring);
	}
	if (!sqe) {
		free(w);
		return -EBUSY;
	}
	io_uring_prep_write(sqe, sv->fd, p, len, off);
	io_uring_sqe_set_data(sqe, w);
	b->pending++;
	sv->inflight++;
	return 0;
}

/* A buffer with no write in flight. */
static int save_buf_get(struct image_save *sv, struct save_buf **out)
{
	for (;;) {
		for (unsigned int i = 0; i < SAVE_BUFS; i++) {
			if (!sv->bufs[i].pending) {
				*out = &sv->bufs[i];
				return 0;
			}
		}
		int ret = save_reap(sv, true);

		if (ret)
			return ret;
	}
}

/*
 * Pages [pgoff, pgoff + n) into @b, and their data runs queued.  Pages
 * that are carried (all of a full image; the changed ones of an
 * incremental one, marked in @bitmap) and not zero are data.
 */
static int save_chunk(struct image_save *sv, struct save_buf *b, uint64_t pgoff,
		      uint32_t n, uint8_t *bitmap, uint64_t *carried,
		      uint64_t *data)
{
	uint32_t ps = sv->seg->page_size, run = 0;
	int ret = segment_read(sv->seg, pgoff, n, b->mem);

	if (ret)
		return ret;
	for (uint32_t i = 0; i <= n; i++) {
		const char *p = b->mem + (size_t)i * ps;
		bool is_data = false;

		if (i < n) {
			int changed = 1;

			if (bitmap) {
				changed = save_changed(sv, pgoff + i, p);
				if (changed < 0)
					return changed;
				if (changed)
					bitmap[(pgoff + i) / 8] |=
						1u << ((pgoff + i) % 8);
			}
			*carried += changed;
			is_data = changed && !page_is_zero(p, ps);
			*data += is_data;
		}
		if (is_data) {
			run++;
			continue;
		}
		if (run) {
			uint32_t first = i - run;

			ret = save_queue(sv, b, b->mem + (size_t)first * ps,
					 (pgoff + first) * ps, run * ps);
			if (ret)
				return ret;
			run = 0;
		}
	}
	return io_uring_submit(&sv->ring) < 0 ? -EIO : 0;
}

/* The trailer (header, bitmap) and the footer, after the data. */
static int save_trailer(struct image_save *sv, const uint8_t *bitmap,
			uint64_t carried)
{
	struct segment *seg = sv->seg;
	struct image_info info = {
		.page_size = seg->page_size,
		.size = seg->size,
		.image_id = sv->image_id,
		.base_id = sv->base_id,
		.nr_pages = seg->npages,
		.nr_carried = carried,
		.created_ns = realtime_ns(),
	};
	struct image_header hdr;
	struct image_footer foot;
	uint64_t off = seg->size;
	int ret;

	if (bitmap) {
		info.bitmap_len = (seg->npages + 7) / 8;
		info.bitmap_sum = image_sum(IMAGE_SUM0, bitmap, info.bitmap_len);
	}
	image_trailer_make(&info, &hdr, &foot);
	ret = fd_pwrite_full(sv->fd, &hdr, sizeof(hdr), off);
	off += sizeof(hdr);
	if (!ret && bitmap)
		ret = fd_pwrite_full(sv->fd, bitmap, info.bitmap_len, off);
	off += info.bitmap_len;
	if (!ret)
		ret = fd_pwrite_full(sv->fd, &foot, sizeof(foot), off);
	if (!ret)
		sv->bytes += sizeof(hdr) + info.bitmap_len + sizeof(foot);
	return ret;
}

int image_save_run(struct image_save *sv, struct upager_save_result *res)
{
	struct segment *seg = sv->seg;
	uint8_t *bitmap = NULL;
	uint64_t carried = 0, data = 0;
	size_t chunk_len = (size_t)SAVE_CHUNK * seg->page_size;
	unsigned int nbufs = 0;
	int ret;

	memset(res, 0, sizeof(*res));
	ret = io_uring_queue_init(SAVE_QD, &sv->ring, 0);
	if (ret < 0)
		return ret;
	if (ftruncate(sv->fd, 0) < 0 || ftruncate(sv->fd, seg->size) < 0) {
		ret = -errno;
		goto out;
	}
	ret = -ENOMEM;
	for (; nbufs < SAVE_BUFS; nbufs++) {
		sv->bufs[nbufs].mem = malloc(chunk_len);
		if (!sv->bufs[nbufs].mem)
			goto out;
	}
	if (sv->since) {
		bitmap = calloc(1, (seg->npages + 7) / 8);
		if (!bitmap)
			goto out;
	}
	ret = 0;
	for (uint64_t pg = 0; pg < seg->npages && !ret && !sv->err;
	     pg += SAVE_CHUNK) {
		uint64_t n = seg->npages - pg;
		struct save_buf *b;

		if (atomic_load(&sv->cancel)) {
			ret = -ECANCELED;
			break;
		}
		ret = save_buf_get(sv, &b);
		if (!ret)
			ret = save_chunk(sv, b, pg,
					 n < SAVE_CHUNK ? n : SAVE_CHUNK,
					 bitmap, &carried, &data);
	}
	while (sv->inflight) {
		int r = save_reap(sv, true);

		if (r && !ret)
			ret = r;
		if (r)
			break; /* the ring failed: nothing more comes */
	}
	if (!ret)
		ret = sv->err;
	if (!ret)
		ret = save_trailer(sv, bitmap, carried);
	if (!ret && fsync(sv->fd) < 0)
		ret = -errno;
	if (!ret) {
		res->pages = seg->npages;
		res->pages_data = data;
		res->bytes_written = sv->bytes;
		res->image_id = sv->image_id;
		res->base_id = sv->base_id;
		res->ns = now_ns() - sv->start_ns;
	}
out:
	if (sv->inflight && !ret)
		ret = -EIO;
	if (ret && ftruncate(sv->fd, 0) < 0)
		pr_warn("image", "%s: cannot truncate a failed image: %s",
			seg->name, strerror(errno));
	/* After the ring: nothing may still read the buffers when they go. */
	io_uring_queue_exit(&sv->ring);
	for (unsigned int i = 0; i < nbufs; i++)
		free(sv->bufs[i].mem);
	free(bitmap);
	return ret;
}

/*
 * The layered source: the pages the incremental image carries (its
 * bitmap) are read from it, the others from its base, at the same
 * offsets.  A run is read one piece at a time, a piece being the pages of
 * one origin in a row, so that each completion belongs to the piece in
 * flight.
 */
struct image_source {
	struct source src; /* fd: the incremental image */
	int base_fd;
	uint8_t *bitmap;
	uint64_t nr_pages;
};

static struct image_source *to_image(struct source *src)
{
	return (struct image_source *)src;
}

/*
 * The piece that starts at byte @off of the image: its file and the
 * bytes up to where the origin changes (at most @max).
 */
static uint32_t image_piece(struct image_source *is, uint64_t off, uint32_t max,
			    int *fd)
{
	uint32_t ps = is->src.page_size;
	uint64_t pg = off / ps;
	int carried = pg < is->nr_pages ? image_bit(is->bitmap, pg) : 0;
	uint64_t end = (pg + 1) * ps, limit = off + max;

	while (end < limit && end / ps < is->nr_pages &&
	       image_bit(is->bitmap, end / ps) == carried)
		end += ps;
	*fd = carried ? is->src.fd : is->base_fd;
	return (end < limit ? end : limit) - off;
}

static int image_queue(struct source *src, struct source_read *rd,
		       struct io_uring *ring)
{
	struct image_source *is = to_image(src);
	uint32_t len = rd->npages * src->page_size;
	uint64_t off = rd->pgoff * src->page_size + rd->done;
	struct io_uring_sqe *sqe;
	uint32_t n;
	int fd;

	if (off >= src->file_size) {
		memset((char *)rd->buf + rd->done, 0, len - rd->done);
		rd->done = len;
		return 1;
	}
	n = image_piece(is, off, len - rd->done, &fd);
	sqe = ring_sqe(ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, fd, (char *)rd->buf + rd->done, n, off);
	io_uring_sqe_set_data(sqe, rd->user_data);
	return 0;
}

static int image_read(struct source *src, struct source_read *rd,
		      struct io_uring *ring)
{
	rd->done = 0;
	rd->bytes_read = 0;
	rd->zero = false;
	return image_queue(src, rd, ring);
}

static int image_complete(struct source *src, struct source_read *rd, int res,
			  struct io_uring *ring)
{
	uint32_t len = rd->npages * src->page_size;

	if (res == -EAGAIN || res == -EINTR)
		return image_queue(src, rd, ring);
	if (res < 0)
		return res;
	if (res == 0) {
		/* A file shrank under us: the rest of the piece reads as
		 * zero. */
		uint64_t off = rd->pgoff * src->page_size + rd->done;
		int fd;
		uint32_t n = image_piece(to_image(src), off, len - rd->done,
					 &fd);

		memset((char *)rd->buf + rd->done, 0, n);
		res = n;
	} else {
		rd->bytes_read += res;
	}
	rd->done += res;
	if (rd->done == len)
		return 1;
	return image_queue(src, rd, ring);
}

static int image_read_sync(struct source *src, uint64_t pgoff, uint32_t npages,
			   void *buf)
{
	struct image_source *is = to_image(src);
	size_t len = (size_t)npages * src->page_size, done = 0;
	uint64_t off = pgoff * src->page_size;

	while (done < len && off + done < src->file_size) {
		int fd;
		uint32_t n = image_piece(is, off + done, len - done, &fd);
		ssize_t got = pread(fd, (char *)buf + done, n, off + done);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0) {
			memset((char *)buf + done, 0, n);
			got = n;
		}
		done += got;
	}
	memset((char *)buf + done, 0, len - done);
	return 0;
}

static void image_destroy(struct source *src)
{
	struct image_source *is = to_image(src);

	close(src->fd);
	close(is->base_fd);
	free(is->bitmap);
	free(is);
}

static const struct source_ops image_ops = {
	.name = "image",
	.kind = UPAGER_SOURCE_IMAGE,
	.read = image_read,
	.complete = image_complete,
	.read_sync = image_read_sync,
	.destroy = image_destroy,
};

/* @fd is readable and a regular file: 0, -EBADF, -EINVAL. */
static int image_fd_check(int fd)
{
	struct stat st;
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fstat(fd, &st) < 0)
		return -errno;
	if ((flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return -EBADF;
	return S_ISREG(st.st_mode) ? 0 : -EINVAL;
}

int source_image_new(int fd, int base_fd, uint32_t page_size,
		     struct source **out)
{
	struct image_info inc, base;
	struct image_source *is;
	const char *why = NULL;
	char link[64];
	ssize_t n;
	int ret;

	ret = image_fd_check(fd);
	if (!ret)
		ret = image_fd_check(base_fd);
	if (ret)
		return ret;
	ret = image_probe(fd, &inc, &why);
	if (!ret && !inc.base_id) {
		why = "a full image, not an incremental one";
		ret = -EINVAL;
	}
	if (ret) {
		pr_info("image", "not an incremental image: %s",
			why ? why : strerror(-ret));
		return ret == -ENODATA ? -EINVAL : ret;
	}
	ret = image_probe(base_fd, &base, &why);
	if (!ret && base.base_id) {
		why = "an incremental image: a base must be a full one";
		ret = -EINVAL;
	}
	if (ret) {
		pr_info("image", "not a base image: %s",
			why ? why : strerror(-ret));
		return ret == -ENODATA ? -EINVAL : ret;
	}
	if (inc.base_id != base.image_id) {
		pr_info("image",
			"image %016" PRIx64
			" was not saved on top of %016" PRIx64,
			inc.image_id, base.image_id);
		return -EXDEV;
	}
	if (inc.size != base.size || inc.page_size != base.page_size ||
	    inc.page_size != page_size)
		return -EINVAL;
	is = calloc(1, sizeof(*is));
	if (!is)
		return -ENOMEM;
	is->src.ops = &image_ops;
	is->src.page_size = page_size;
	is->src.file_size = inc.size;
	is->src.image_size = inc.size;
	is->nr_pages = inc.nr_pages;
	is->src.fd = -1;
	is->base_fd = -1;
	ret = image_bitmap_read(fd, &inc, &is->bitmap);
	if (!ret) {
		is->src.fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		is->base_fd = fcntl(base_fd, F_DUPFD_CLOEXEC, 3);
		if (is->src.fd < 0 || is->base_fd < 0)
			ret = -errno;
	}
	if (ret) {
		if (is->src.fd >= 0)
			close(is->src.fd);
		if (is->base_fd >= 0)
			close(is->base_fd);
		free(is->bitmap);
		free(is);
		return ret;
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", is->src.fd);
	n = readlink(link, is->src.path, sizeof(is->src.path) - 1);
	is->src.path[n > 0 ? n : 0] = '\0';
	*out = &is->src;
	return 0;
}
