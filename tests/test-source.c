/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for page sources: the zero source completes at once; the file
 * source is driven through a real io_uring the way a worker drives it
 * (submit, wait for the completion, hand it to source_complete until that
 * says the run is in), over a temporary file: runs inside the file, across
 * and past its end, over holes, and with short reads.
 *
 * Without io_uring (disabled, or an old kernel) the file tests are skipped
 * and the program exits 77 if nothing else failed.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "source.h"

#define PS 4096u
#define FILE_PAGES 10
#define FILE_TAIL 100 /* bytes of a partial last page */
#define FILE_SIZE (FILE_PAGES * PS + FILE_TAIL)

static char tmp_path[PATH_MAX];
static int tmp_fd = -1;
static unsigned char *contents; /* what the file holds */
static struct io_uring ring;
static struct source *src;

static uint8_t byte_at(uint64_t off)
{
	/* Differs from page to page and within a page; never all zero. */
	return (uint8_t)(off * 7 + off / PS * 13 + 1);
}

/* Creates a temporary file; its name goes to @path (PATH_MAX bytes). */
static int tmp_create(char *path)
{
	const char *dir = getenv("TMPDIR");
	int fd;

	snprintf(path, PATH_MAX, "%s/upager-test-source-XXXXXX",
		 dir && *dir ? dir : "/tmp");
	fd = mkostemp(path, O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	return fd;
}

static void file_setup(void)
{
	int fd;

	contents = malloc(FILE_SIZE);
	ck_assert_ptr_nonnull(contents);
	for (uint64_t i = 0; i < FILE_SIZE; i++)
		contents[i] = byte_at(i);
	tmp_fd = tmp_create(tmp_path);
	ck_assert_int_eq(pwrite(tmp_fd, contents, FILE_SIZE, 0), FILE_SIZE);
	ck_assert_int_eq(io_uring_queue_init(8, &ring, 0), 0);
	/* The source reads through its own, read-only descriptor. */
	fd = open(tmp_path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(source_file_new(fd, PS, &src), 0);
	close(fd);
}

static void file_teardown(void)
{
	source_destroy(src);
	src = NULL;
	io_uring_queue_exit(&ring);
	if (tmp_fd >= 0)
		close(tmp_fd);
	tmp_fd = -1;
	unlink(tmp_path);
	free(contents);
	contents = NULL;
}

struct run {
	struct source_read rd;
	unsigned int submits; /* I/O round trips it took */
	bool inline_done;     /* ->read() completed it */
};

/*
 * Reads @npages at @pgoff through @s like a worker: returns what the last
 * call returned (1 when the run is in).  @cut: when non-zero, each of the
 * first completions is reported as at most @cut bytes, as a short read.
 */
static int run_read(struct source *s, struct run *r, uint64_t pgoff,
		    uint32_t npages, void *buf, int cut, int cuts)
{
	struct io_uring_cqe *cqe;
	int ret;

	memset(r, 0, sizeof(*r));
	r->rd.buf = buf;
	r->rd.pgoff = pgoff;
	r->rd.npages = npages;
	r->rd.user_data = r;
	ret = source_read(s, &r->rd, &ring);
	r->inline_done = ret == 1;
	if (ret == 1)
		ck_assert_uint_eq(io_uring_sq_ready(&ring), 0);
	while (ret == 0) {
		int res;

		ck_assert_uint_eq(io_uring_sq_ready(&ring), 1);
		ck_assert_int_eq(io_uring_submit(&ring), 1);
		ck_assert_int_eq(io_uring_wait_cqe(&ring, &cqe), 0);
		ck_assert_ptr_eq(io_uring_cqe_get_data(cqe), r);
		res = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		r->submits++;
		ck_assert_uint_lt(r->submits, 64);
		if (cut && cuts-- > 0 && res > cut)
			res = cut;
		ret = source_complete(s, &r->rd, res, &ring);
	}
	return ret;
}

/* Checks @buf holds the file's bytes of the run, zeros past the end. */
static void check_run(const unsigned char *buf, uint64_t pgoff, uint32_t npages,
		      uint64_t file_size)
{
	for (uint64_t i = 0; i < (uint64_t)npages * PS; i++) {
		uint64_t off = pgoff * PS + i;
		unsigned char want = off < file_size ? contents[off] : 0;

		ck_assert_msg(buf[i] == want,
			      "run %ju+%u: byte %ju (file offset %ju) is %#x, "
			      "want %#x",
			      (uintmax_t)pgoff, npages, (uintmax_t)i,
			      (uintmax_t)off, buf[i], want);
	}
}

static unsigned char *sentinel_buf(uint32_t npages)
{
	unsigned char *buf = malloc((size_t)npages * PS);

	ck_assert_ptr_nonnull(buf);
	memset(buf, 0xaa, (size_t)npages * PS);
	return buf;
}

/* --- zero --- */

START_TEST(test_zero)
{
	struct source *z;
	struct source_read rd = { 0 };
	unsigned char *buf = sentinel_buf(4);

	ck_assert_int_eq(source_zero_new(PS, &z), 0);
	ck_assert_uint_eq(z->ops->kind, UPAGER_SOURCE_ZERO);
	ck_assert_str_eq(z->ops->name, "zero");
	ck_assert_uint_eq(z->page_size, PS);
	ck_assert_str_eq(z->path, "");

	rd.buf = buf;
	rd.pgoff = 123456789;
	rd.npages = 4;
	/* Inline, no ring needed: NULL proves it is not touched. */
	ck_assert_int_eq(source_read(z, &rd, NULL), 1);
	ck_assert(rd.zero);
	ck_assert_uint_eq(rd.done, 4 * PS);
	ck_assert_uint_eq(rd.bytes_read, 0);
	/* The buffer is left alone: the fault path uses UFFDIO_ZEROPAGE. */
	for (size_t i = 0; i < 4 * PS; i++)
		ck_assert_uint_eq(buf[i], 0xaa);
	/* It never queues I/O, so a completion is a caller's bug. */
	ck_assert_int_eq(source_complete(z, &rd, 0, NULL), -EINVAL);

	source_destroy(z);
	source_destroy(NULL);
	free(buf);
}
END_TEST

/* --- file --- */

START_TEST(test_file_props)
{
	char want[PATH_MAX];
	struct stat st;

	ck_assert_uint_eq(src->ops->kind, UPAGER_SOURCE_FILE);
	ck_assert_str_eq(src->ops->name, "file");
	ck_assert_uint_eq(src->page_size, PS);
	ck_assert_uint_eq(src->file_size, FILE_SIZE);
	ck_assert_ptr_nonnull(realpath(tmp_path, want));
	ck_assert_str_eq(src->path, want);
	/* Its own descriptor, close-on-exec, read-only like the one given. */
	ck_assert_int_ge(src->fd, 3);
	ck_assert_int_ne(fcntl(src->fd, F_GETFD) & FD_CLOEXEC, 0);
	ck_assert_int_eq(fstat(src->fd, &st), 0);
	ck_assert_uint_eq(st.st_size, FILE_SIZE);
}
END_TEST

START_TEST(test_file_middle)
{
	unsigned char *buf = sentinel_buf(3);
	struct run r;

	ck_assert_int_eq(run_read(src, &r, 2, 3, buf, 0, 0), 1);
	ck_assert(!r.inline_done);
	ck_assert_uint_eq(r.submits, 1);
	ck_assert(!r.rd.zero);
	ck_assert_uint_eq(r.rd.done, 3 * PS);
	ck_assert_uint_eq(r.rd.bytes_read, 3 * PS);
	check_run(buf, 2, 3, FILE_SIZE);
	free(buf);
}
END_TEST

START_TEST(test_file_single_pages)
{
	unsigned char *buf = sentinel_buf(1);
	struct run r;

	for (uint64_t p = 0; p < FILE_PAGES; p++) {
		memset(buf, 0xaa, PS);
		ck_assert_int_eq(run_read(src, &r, p, 1, buf, 0, 0), 1);
		ck_assert_uint_eq(r.rd.bytes_read, PS);
		check_run(buf, p, 1, FILE_SIZE);
	}
	free(buf);
}
END_TEST

START_TEST(test_file_cross_eof)
{
	/* Pages 9..11: one full page, 100 bytes of the partial one, then
	 * zeros for the rest of page 10 and all of page 11. */
	unsigned char *buf = sentinel_buf(3);
	struct run r;

	ck_assert_int_eq(run_read(src, &r, FILE_PAGES - 1, 3, buf, 0, 0), 1);
	ck_assert(!r.inline_done);
	ck_assert(!r.rd.zero);
	ck_assert_uint_eq(r.rd.done, 3 * PS);
	ck_assert_uint_eq(r.rd.bytes_read, PS + FILE_TAIL);
	check_run(buf, FILE_PAGES - 1, 3, FILE_SIZE);
	free(buf);
}
END_TEST

START_TEST(test_file_last_partial_page)
{
	unsigned char *buf = sentinel_buf(1);
	struct run r;

	ck_assert_int_eq(run_read(src, &r, FILE_PAGES, 1, buf, 0, 0), 1);
	ck_assert_uint_eq(r.rd.bytes_read, FILE_TAIL);
	ck_assert_uint_eq(r.rd.done, PS);
	check_run(buf, FILE_PAGES, 1, FILE_SIZE);
	free(buf);
}
END_TEST

START_TEST(test_file_past_eof)
{
	unsigned char *buf = sentinel_buf(2);
	struct run r;

	ck_assert_int_eq(run_read(src, &r, FILE_PAGES + 5, 2, buf, 0, 0), 1);
	ck_assert(r.inline_done);
	ck_assert_uint_eq(r.submits, 0);
	ck_assert_uint_eq(r.rd.done, 2 * PS);
	ck_assert_uint_eq(r.rd.bytes_read, 0);
	for (size_t i = 0; i < 2 * PS; i++)
		ck_assert_uint_eq(buf[i], 0);
	free(buf);
}
END_TEST

START_TEST(test_file_whole)
{
	/* The whole file and one page past it in one run. */
	unsigned char *buf = sentinel_buf(FILE_PAGES + 2);
	struct run r;

	ck_assert_int_eq(run_read(src, &r, 0, FILE_PAGES + 2, buf, 0, 0), 1);
	ck_assert_uint_eq(r.rd.bytes_read, FILE_SIZE);
	check_run(buf, 0, FILE_PAGES + 2, FILE_SIZE);
	free(buf);
}
END_TEST

START_TEST(test_file_short_reads)
{
	/* Completions that report less than asked: the rest is queued
	 * again at the right offset, into the right part of the buffer. */
	unsigned char *buf = sentinel_buf(4);
	struct run r;

	ck_assert_int_eq(run_read(src, &r, 1, 4, buf, 1000, 5), 1);
	ck_assert_uint_eq(r.submits, 6);
	ck_assert_uint_eq(r.rd.bytes_read, 4 * PS);
	ck_assert_uint_eq(r.rd.done, 4 * PS);
	check_run(buf, 1, 4, FILE_SIZE);

	/* and across the end of the file */
	memset(buf, 0xaa, 4 * PS);
	ck_assert_int_eq(run_read(src, &r, FILE_PAGES - 2, 4, buf, 777, 3), 1);
	ck_assert_uint_eq(r.rd.bytes_read, 2 * PS + FILE_TAIL);
	check_run(buf, FILE_PAGES - 2, 4, FILE_SIZE);
	free(buf);
}
END_TEST

START_TEST(test_file_eagain_and_error)
{
	unsigned char *buf = sentinel_buf(2);
	struct io_uring_cqe *cqe;
	struct source_read rd = {
		.buf = buf, .pgoff = 3, .npages = 2, .user_data = buf
	};
	int ret;

	/* -EAGAIN: queued again, whole. */
	ck_assert_int_eq(source_read(src, &rd, &ring), 0);
	ck_assert_int_eq(io_uring_submit(&ring), 1);
	ck_assert_int_eq(io_uring_wait_cqe(&ring, &cqe), 0);
	io_uring_cqe_seen(&ring, cqe);
	ck_assert_int_eq(source_complete(src, &rd, -EAGAIN, &ring), 0);
	ck_assert_uint_eq(rd.done, 0);
	ck_assert_int_eq(io_uring_submit(&ring), 1);
	ck_assert_int_eq(io_uring_wait_cqe(&ring, &cqe), 0);
	ret = cqe->res;
	ck_assert_ptr_eq(io_uring_cqe_get_data(cqe), buf);
	io_uring_cqe_seen(&ring, cqe);
	ck_assert_int_eq(source_complete(src, &rd, ret, &ring), 1);
	check_run(buf, 3, 2, FILE_SIZE);

	/* An I/O error is handed back as it is. */
	memset(&rd, 0, sizeof(rd));
	rd.buf = buf;
	rd.pgoff = 3;
	rd.npages = 2;
	ck_assert_int_eq(source_read(src, &rd, &ring), 0);
	ck_assert_int_eq(io_uring_submit(&ring), 1);
	ck_assert_int_eq(io_uring_wait_cqe(&ring, &cqe), 0);
	io_uring_cqe_seen(&ring, cqe);
	ck_assert_int_eq(source_complete(src, &rd, -EIO, &ring), -EIO);
	ck_assert_uint_eq(io_uring_sq_ready(&ring), 0);
	free(buf);
}
END_TEST

START_TEST(test_file_shrunk)
{
	/* The file shrank after the source was made: a read of 0 bytes
	 * means the rest of the run reads as zero. */
	unsigned char *buf = sentinel_buf(3);
	struct run r;

	ck_assert_int_eq(ftruncate(tmp_fd, 2 * PS + 10), 0);
	ck_assert_uint_eq(src->file_size, FILE_SIZE);
	ck_assert_int_eq(run_read(src, &r, 1, 3, buf, 0, 0), 1);
	ck_assert_uint_eq(r.rd.bytes_read, PS + 10);
	check_run(buf, 1, 3, 2 * PS + 10);
	free(buf);
}
END_TEST

START_TEST(test_file_sparse)
{
	/* 16 pages, data only in pages 0 and 6: the rest are holes. */
	const uint64_t size = 16 * PS;
	unsigned char *buf = sentinel_buf(4);
	struct source *s;
	struct run r;
	char path[PATH_MAX];
	int fd = tmp_create(path);

	ck_assert_int_eq(ftruncate(fd, size), 0);
	ck_assert_int_eq(pwrite(fd, contents, PS, 0), PS);
	ck_assert_int_eq(pwrite(fd, contents + 6 * PS, PS, 6 * PS), PS);
	ck_assert_int_eq(source_file_new(fd, PS, &s), 0);
	ck_assert_uint_eq(s->file_size, size);
	unlink(path);
	close(fd);

	/* a run inside a hole */
	ck_assert_int_eq(run_read(s, &r, 1, 4, buf, 0, 0), 1);
	ck_assert(!r.rd.zero);
	ck_assert_uint_eq(r.rd.done, 4 * PS);
	for (size_t i = 0; i < 4 * PS; i++)
		ck_assert_uint_eq(buf[i], 0);

	/* hole, data, hole */
	memset(buf, 0xaa, 4 * PS);
	ck_assert_int_eq(run_read(s, &r, 5, 3, buf, 0, 0), 1);
	ck_assert_uint_eq(r.rd.bytes_read, 3 * PS);
	for (size_t i = 0; i < PS; i++)
		ck_assert_uint_eq(buf[i], 0);
	ck_assert_mem_eq(buf + PS, contents + 6 * PS, PS);
	for (size_t i = 2 * PS; i < 3 * PS; i++)
		ck_assert_uint_eq(buf[i], 0);

	/* data, then holes up to and past the end */
	memset(buf, 0xaa, 4 * PS);
	ck_assert_int_eq(run_read(s, &r, 0, 2, buf, 0, 0), 1);
	ck_assert_mem_eq(buf, contents, PS);
	for (size_t i = PS; i < 2 * PS; i++)
		ck_assert_uint_eq(buf[i], 0);
	memset(buf, 0xaa, 4 * PS);
	ck_assert_int_eq(run_read(s, &r, 14, 4, buf, 0, 0), 1);
	ck_assert_uint_eq(r.rd.bytes_read, 2 * PS);
	for (size_t i = 0; i < 4 * PS; i++)
		ck_assert_uint_eq(buf[i], 0);

	source_destroy(s);
	free(buf);
}
END_TEST

START_TEST(test_file_empty)
{
	/* An empty file: every run is past the end, inline. */
	unsigned char *buf = sentinel_buf(1);
	struct source *s;
	struct run r;
	char path[PATH_MAX];
	int fd = tmp_create(path);

	unlink(path);
	ck_assert_int_eq(source_file_new(fd, PS, &s), 0);
	close(fd);
	ck_assert_uint_eq(s->file_size, 0);
	ck_assert_int_eq(run_read(s, &r, 0, 1, buf, 0, 0), 1);
	ck_assert(r.inline_done);
	for (size_t i = 0; i < PS; i++)
		ck_assert_uint_eq(buf[i], 0);
	source_destroy(s);
	free(buf);
}
END_TEST

START_TEST(test_file_ring_full)
{
	/* More reads queued than the ring has entries: the source submits
	 * what is queued to make room rather than failing. */
	struct io_uring small;
	struct source_read rd[6];
	unsigned char *buf = sentinel_buf(6);
	unsigned int done = 0;

	ck_assert_int_eq(io_uring_queue_init(2, &small, 0), 0);
	for (int i = 0; i < 6; i++) {
		rd[i] = (struct source_read){ .buf = buf + i * PS,
					      .pgoff = i,
					      .npages = 1,
					      .user_data = &rd[i] };
		ck_assert_int_eq(source_read(src, &rd[i], &small), 0);
	}
	io_uring_submit(&small);
	while (done < 6) {
		struct io_uring_cqe *cqe;
		struct source_read *r;
		int res;

		ck_assert_int_eq(io_uring_wait_cqe(&small, &cqe), 0);
		r = io_uring_cqe_get_data(cqe);
		res = cqe->res;
		io_uring_cqe_seen(&small, cqe);
		ck_assert_int_eq(source_complete(src, r, res, &small), 1);
		done++;
	}
	check_run(buf, 0, 6, FILE_SIZE);
	io_uring_queue_exit(&small);
	free(buf);
}
END_TEST

/* --- what source_file_new refuses --- */

START_TEST(test_file_new_rejects)
{
	struct source *s = (struct source *)0x1;
	char path[PATH_MAX];
	int fd, sv[2];

	/* a directory */
	fd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(source_file_new(fd, PS, &s), -EINVAL);
	close(fd);

	/* a character device, a pipe, a socket */
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(source_file_new(fd, PS, &s), -EINVAL);
	close(fd);
	ck_assert_int_eq(pipe2(sv, O_CLOEXEC), 0);
	ck_assert_int_eq(source_file_new(sv[0], PS, &s), -EINVAL);
	close(sv[0]);
	close(sv[1]);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(source_file_new(sv[0], PS, &s), -EINVAL);
	close(sv[0]);
	close(sv[1]);

	/* a regular file that cannot be read */
	fd = tmp_create(path);
	close(fd);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(source_file_new(fd, PS, &s), -EBADF);
	close(fd);
	fd = open(path, O_PATH | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(source_file_new(fd, PS, &s), -EBADF);
	close(fd);

	/* not a descriptor at all */
	ck_assert_int_eq(source_file_new(-1, PS, &s), -EBADF);
	ck_assert_int_eq(source_file_new(INT_MAX, PS, &s), -EBADF);

	/* nothing was returned */
	ck_assert_ptr_eq(s, (struct source *)0x1);

	/* read-write is fine */
	fd = open(path, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(source_file_new(fd, PS, &s), 0);
	ck_assert_int_ne(s->fd, fd);
	source_destroy(s);
	close(fd);
	unlink(path);
}
END_TEST

static int count_fds(void)
{
	char link[64];
	int n = 0;

	for (int fd = 0; fd < 1024; fd++) {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		if (access(link, F_OK) == 0)
			n++;
	}
	return n;
}

START_TEST(test_file_destroy_closes)
{
	struct source *s;
	int before = count_fds();

	ck_assert_int_eq(source_file_new(tmp_fd, PS, &s), 0);
	ck_assert_int_eq(count_fds(), before + 1);
	source_destroy(s);
	ck_assert_int_eq(count_fds(), before);
}
END_TEST

static bool have_io_uring(void)
{
	struct io_uring r;
	int ret = io_uring_queue_init(2, &r, 0);

	if (ret < 0) {
		fprintf(stderr,
			"io_uring unavailable (%s): file source tests "
			"skipped\n",
			strerror(-ret));
		return false;
	}
	io_uring_queue_exit(&r);
	return true;
}

static Suite *source_suite(bool uring)
{
	Suite *s = suite_create("source");
	TCase *tc;

	tc = tcase_create("zero");
	tcase_add_test(tc, test_zero);
	suite_add_tcase(s, tc);

	tc = tcase_create("file_new");
	tcase_add_test(tc, test_file_new_rejects);
	suite_add_tcase(s, tc);

	if (!uring)
		return s;

	tc = tcase_create("file_read");
	tcase_add_checked_fixture(tc, file_setup, file_teardown);
	tcase_add_test(tc, test_file_props);
	tcase_add_test(tc, test_file_middle);
	tcase_add_test(tc, test_file_single_pages);
	tcase_add_test(tc, test_file_cross_eof);
	tcase_add_test(tc, test_file_last_partial_page);
	tcase_add_test(tc, test_file_past_eof);
	tcase_add_test(tc, test_file_whole);
	tcase_add_test(tc, test_file_short_reads);
	tcase_add_test(tc, test_file_eagain_and_error);
	tcase_add_test(tc, test_file_shrunk);
	tcase_add_test(tc, test_file_sparse);
	tcase_add_test(tc, test_file_empty);
	tcase_add_test(tc, test_file_ring_full);
	tcase_add_test(tc, test_file_destroy_closes);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	bool uring = have_io_uring();
	SRunner *sr = srunner_create(source_suite(uring));
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (failed)
		return EXIT_FAILURE;
	return uring ? EXIT_SUCCESS : 77;
}
