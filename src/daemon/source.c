// SPDX-License-Identifier: MIT
/*
 * Page sources: zero and file (raw images, regular files or block
 * devices); the interface is in source.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include "imagefmt.h"
#include "log.h"
#include "ring.h"
#include "source.h"

/*
 * Test hook: UPAGER_TEST_FAIL_PAGES=FIRST-LAST (or =PAGE) in the daemon's
 * environment makes every file source fail to read pages FIRST..LAST with
 * EIO, as a disk with bad sectors there would: a read that starts in the
 * range fails, one that runs into it stops short before it.  Read once, at
 * the first file source; for the tests of the read-error path, which no
 * real file can be made to take on demand.  Never set it otherwise.
 */
static struct {
	bool on;
	uint64_t first, last;
} fail_pages;

static void fail_pages_init(void)
{
	const char *env = getenv("UPAGER_TEST_FAIL_PAGES");
	uint64_t first, last;
	char *end;

	if (!env || !*env)
		return;
	first = last = strtoull(env, &end, 10);
	if (end != env && *end == '-')
		last = strtoull(end + 1, &end, 10);
	if (end == env || *end || last < first) {
		pr_err("source",
		       "UPAGER_TEST_FAIL_PAGES=%s: expected FIRST-LAST", env);
		return;
	}
	fail_pages.first = first;
	fail_pages.last = last;
	fail_pages.on = true;
	pr_warn("source",
		"test hook: file sources fail to read pages %" PRIu64
		"-%" PRIu64 " (UPAGER_TEST_FAIL_PAGES)",
		first, last);
}

/*
 * How much of a read of @len bytes at @off gets through the test hook:
 * @len, less (it runs into a failing page), or -EIO (it starts in one).
 */
static int64_t fail_pages_clip(const struct source *src, uint64_t off,
			       uint32_t len)
{
	uint64_t lo = fail_pages.first * src->page_size;
	uint64_t hi = (fail_pages.last + 1) * src->page_size;

	if (!src->fail_pages || off + len <= lo || off >= hi)
		return len;
	if (off >= lo)
		return -EIO;
	return lo - off;
}

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
	return -EINVAL; /* never queues I/O */
}

static void plain_destroy(struct source *src)
{
	if (src->fd >= 0)
		close(src->fd);
	free(src);
}

static int zero_read_sync(struct source *src, uint64_t pgoff, uint32_t npages,
			  void *buf)
{
	memset(buf, 0, (size_t)npages * src->page_size);
	return 0;
}

static const struct source_ops zero_ops = {
	.name = "zero",
	.kind = UPAGER_SOURCE_ZERO,
	.read = zero_read,
	.complete = zero_complete,
	.read_sync = zero_read_sync,
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
	int64_t n = fail_pages_clip(src, off, len - rd->done);

	if (n < 0)
		return n;
	if (off >= src->file_size) {
		memset((char *)rd->buf + rd->done, 0, len - rd->done);
		rd->done = len;
		return 1;
	}
	sqe = ring_sqe(ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, src->fd, (char *)rd->buf + rd->done, n, off);
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

static int file_read_sync(struct source *src, uint64_t pgoff, uint32_t npages,
			  void *buf)
{
	size_t len = (size_t)npages * src->page_size, done = 0;
	uint64_t off = pgoff * src->page_size;

	while (done < len) {
		int64_t want = fail_pages_clip(src, off + done, len - done);
		ssize_t n;

		if (want < 0)
			return want;
		if (off + done >= src->file_size)
			break;
		n = pread(src->fd, (char *)buf + done, want, off + done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break; /* shrank: the rest reads as zero */
		done += n;
	}
	memset((char *)buf + done, 0, len - done);
	return 0;
}

static const struct source_ops file_ops = {
	.name = "file",
	.kind = UPAGER_SOURCE_FILE,
	.read = file_read,
	.complete = file_complete,
	.read_sync = file_read_sync,
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
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct source *src;
	uint64_t size, image_size = 0;
	char link[64];
	struct stat st;
	int flags, ret;
	ssize_t n;

	if (fstat(fd, &st) < 0)
		return -errno;
	/*
	 * A regular file, or a block device on purpose (a raw disk or
	 * partition image is what a pager reads).  Nothing else: a FIFO,
	 * socket or character device cannot be read at an offset, may block
	 * for ever, and has no size.
	 */
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return -EINVAL;
	flags = fcntl(fd, F_GETFL);
	if (flags < 0)
		return -errno;
	if ((flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return -EBADF;
	size = st.st_size;
	/* A device's size comes from the device; without it every page
	 * would read as past the end, that is as zeros. */
	if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		struct image_info info;
		const char *why = NULL;

		ret = image_probe(fd, &info, &why);
		if (!ret && (info.base_id || info.page_size != page_size)) {
			why = info.base_id ? "an incremental image (it needs "
					     "its base)" :
					     "another page size";
			ret = -EINVAL;
		}
		if (ret && ret != -ENODATA) {
			pr_info("source", "not an image to read: %s",
				why ? why : strerror(-ret));
			return ret;
		}
		if (!ret)
			image_size = info.size;
	}
	ret = source_alloc(&file_ops, page_size, &src);
	if (ret)
		return ret;
	src->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (src->fd < 0) {
		ret = -errno;
		free(src);
		return ret;
	}
	src->file_size = image_size ? image_size : size;
	src->image_size = image_size;
	pthread_once(&once, fail_pages_init);
	src->fail_pages = fail_pages.on;
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
