// SPDX-License-Identifier: MIT
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include "source.h"

/* zero */

static int zero_read(struct source *src, struct source_read *rd,
		     struct io_uring *ring)
{
	rd->zero = true;
	rd->bytes_read = 0;
	rd->done = rd->npages * src->page_size;
	return 1;
}

static int zero_complete(struct source *src, struct source_read *rd, int res,
			 struct io_uring *ring)
{
	return -EINVAL;	/* never queues I/O */
}

static void plain_destroy(struct source *src)
{
	if (src->fd >= 0)
		close(src->fd);
	free(src);
}

static const struct source_ops zero_ops = {
	.name = "zero",
	.kind = UPAGER_SOURCE_ZERO,
	.read = zero_read,
	.complete = zero_complete,
	.destroy = plain_destroy,
};

/* file */

/*
 * Queue a read of what is still missing of the run.  Past the end of the
 * file there is nothing to read: that part is zeroed here, which is also
 * what a hole reads as.
 */
static int file_queue(struct source *src, struct source_read *rd,
		      struct io_uring *ring)
{
	uint32_t len = rd->npages * src->page_size;
	uint64_t off = rd->pgoff * src->page_size + rd->done;
	struct io_uring_sqe *sqe;

	if (off >= src->file_size) {
		memset((char *)rd->buf + rd->done, 0, len - rd->done);
		rd->done = len;
		return 1;
	}
	sqe = io_uring_get_sqe(ring);
	if (!sqe) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
		if (!sqe)
			return -EBUSY;
	}
	io_uring_prep_read(sqe, src->fd, (char *)rd->buf + rd->done,
			   len - rd->done, off);
	io_uring_sqe_set_data(sqe, rd->user_data);
	return 0;
}

static int file_read(struct source *src, struct source_read *rd,
		     struct io_uring *ring)
{
	rd->done = 0;
	rd->bytes_read = 0;
	rd->zero = false;
	return file_queue(src, rd, ring);
}

static int file_complete(struct source *src, struct source_read *rd, int res,
			 struct io_uring *ring)
{
	uint32_t len = rd->npages * src->page_size;

	if (res == -EAGAIN || res == -EINTR)
		return file_queue(src, rd, ring);
	if (res < 0)
		return res;
	rd->bytes_read += res;
	rd->done += res;
	if (res == 0) {
		/* The file shrank under us: what is gone reads as zero. */
		memset((char *)rd->buf + rd->done, 0, len - rd->done);
		rd->done = len;
	}
	if (rd->done == len)
		return 1;
	return file_queue(src, rd, ring);
}

static const struct source_ops file_ops = {
	.name = "file",
	.kind = UPAGER_SOURCE_FILE,
	.read = file_read,
	.complete = file_complete,
	.destroy = plain_destroy,
};

static int source_alloc(const struct source_ops *ops, uint32_t page_size,
			struct source **out)
{
	struct source *src = calloc(1, sizeof(*src));

	if (!src)
		return -ENOMEM;
	src->ops = ops;
	src->page_size = page_size;
	src->fd = -1;
	*out = src;
	return 0;
}

int source_zero_new(uint32_t page_size, struct source **out)
{
	return source_alloc(&zero_ops, page_size, out);
}

int source_file_new(int fd, uint32_t page_size, struct source **out)
{
	struct source *src;
	char link[64];
	struct stat st;
	int flags, ret;
	ssize_t n;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return -EINVAL;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0)
		return -errno;
	if ((flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return -EBADF;
	ret = source_alloc(&file_ops, page_size, &src);
	if (ret)
		return ret;
	src->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (src->fd < 0) {
		ret = -errno;
		free(src);
		return ret;
	}
	src->file_size = st.st_size;
	if (S_ISBLK(st.st_mode)) {
		uint64_t bytes;

		if (ioctl(fd, BLKGETSIZE64, &bytes) == 0)
			src->file_size = bytes;
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", src->fd);
	n = readlink(link, src->path, sizeof(src->path) - 1);
	src->path[n > 0 ? n : 0] = '\0';
	*out = src;
	return 0;
}

void source_destroy(struct source *src)
{
	if (src)
		src->ops->destroy(src);
}
