// SPDX-License-Identifier: MIT
/*
 * Demand paging end to end: file and zero sources, shared frames across
 * processes, read-only attachments.  Every read is compared with the
 * source's bytes, never with another read of the segment.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "harness.h"

#define NREADERS 4

/*
 * 64 MiB read by four processes released at once: each sees the file, and
 * the daemon read every byte of it exactly once.
 */
START_TEST(test_file_concurrent_readers)
{
	const size_t size = 64 * H_MIB;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512];
	int go[2], res[2], fd;
	pid_t pids[NREADERS];
	uint64_t sum;
	void *data;
	char *map;

	h_daemon_start(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 1);
	sum = h_checksum(data, size);
	u = h_connect(&d);
	fd = h_open_ro(path);
	h_create(u, "img", size, fd, 0);
	close(fd);
	ck_assert_int_eq(pipe(go), 0);
	ck_assert_int_eq(pipe(res), 0);

	for (int i = 0; i < NREADERS; i++) {
		pids[i] = h_fork();
		if (pids[i] == 0) {
			struct upager *cu;
			struct upager_attachment *ca;
			char c;
			long diff;
			int ret;

			close(go[1]);
			cu = h_child_connect(d.sock);
			ret = upager_attach(cu, "img", 0, &ca);
			CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
			CHILD_CHECK(upager_attachment_size(ca) == size,
				    "attachment size %zu",
				    upager_attachment_size(ca));
			h_send(res[1], 'r');
			/* released together: the parent closes go[1] */
			CHILD_CHECK(read(go[0], &c, 1) == 0, "barrier");
			map = upager_attachment_addr(ca);
			h_send_u64(res[1], h_checksum(map, size));
			diff = h_first_diff(map, data, size);
			CHILD_CHECK(diff < 0, "byte %ld differs from the file",
				    diff);
			upager_detach(ca);
			upager_disconnect(cu);
			_exit(0);
		}
	}
	close(go[0]);
	for (int i = 0; i < NREADERS; i++)
		ck_assert_int_eq(h_recv(res[0]), 'r');
	close(go[1]);
	for (int i = 0; i < NREADERS; i++)
		ck_assert_msg(h_recv_u64(res[0]) == sum,
			      "a reader's checksum differs from the file's");
	for (int i = 0; i < NREADERS; i++)
		ck_assert_int_eq(h_child_exit_code(pids[i]), 0);
	close(res[0]);
	close(res[1]);

	info = h_wait_attachments(u, "img", 0);
	ck_assert_uint_eq(info.nr_attachments, 0);
	H_WAIT_STAT(u, "img", info, info.pages_filled >= size / H_PAGE);
	ck_assert_uint_eq(info.size, size);
	ck_assert_uint_eq(info.source, UPAGER_SOURCE_FILE);
	/* nothing read twice, nothing filled twice */
	ck_assert_uint_eq(info.bytes_read, size);
	ck_assert_uint_eq(info.pages_filled, size / H_PAGE);
	ck_assert_uint_eq(info.resident_bytes, size);

	/* A second pass finds every frame in the memfd. */
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(h_checksum(map, size) == sum, 1);
	info = h_stat(u, "img");
	ck_assert_uint_eq(info.bytes_read, size);
	ck_assert_uint_eq(info.pages_filled, size / H_PAGE);
	ck_assert_uint_eq(info.nr_attachments, 1);
	ck_assert_uint_eq(info.nr_pids, 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)getpid());
	ck_assert_int_eq(upager_detach(a), 0);

	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* A file shorter than the segment (and a size not a page multiple). */
START_TEST(test_file_shorter_than_segment)
{
	const size_t fsize = H_MIB + 1234, ssize = 4 * H_MIB - 100;
	const size_t rounded = 4 * H_MIB;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512];
	void *data;
	char *map;
	int fd;

	h_daemon_start(&d);
	data = h_make_file(path, sizeof(path), d.dir, "short", fsize, 2);
	u = h_connect(&d);
	fd = h_open_ro(path);
	h_create(u, "short", ssize, fd, 0);
	close(fd);
	info = h_stat(u, "short");
	ck_assert_uint_eq(info.size, rounded);
	ck_assert_str_eq(info.source_path, path);

	map = h_attach(u, "short", 0, &a);
	ck_assert_uint_eq(upager_attachment_size(a), rounded);
	/* read the tail first: the file's end is read as part of a run */
	ck_assert_int_eq(h_first_nonzero(map + fsize, rounded - fsize), -1);
	ck_assert_int_eq(h_first_diff(map, data, fsize), -1);
	H_WAIT_STAT(u, "short", info, info.pages_filled >= rounded / H_PAGE);
	ck_assert_uint_eq(info.bytes_read, fsize);
	ck_assert_uint_eq(info.pages_filled, rounded / H_PAGE);
	ck_assert_int_eq(upager_detach(a), 0);

	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* Holes in a sparse file read as zeros; its data where it is. */
START_TEST(test_file_sparse)
{
	static const struct {
		size_t off, len;
	} runs[] = {
		{ 0, 65536 },
		{ H_MIB + 100, 4900 },	/* unaligned, inside a page */
		{ 3 * H_MIB - 10, 20 }, /* across a page boundary */
		{ 5 * H_MIB, H_MIB },
		{ 8 * H_MIB - 4096, 4096 }, /* the last page */
	};
	const size_t size = 8 * H_MIB;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512], *expect, *map;
	int fd;

	h_daemon_start(&d);
	expect = calloc(1, size);
	ck_assert_ptr_nonnull(expect);
	snprintf(path, sizeof(path), "%s/sparse", d.dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, size), 0);
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		h_fill(expect + runs[i].off, runs[i].len, 100 + i);
		ck_assert_int_eq(pwrite(fd, expect + runs[i].off, runs[i].len,
					runs[i].off),
				 (ssize_t)runs[i].len);
	}
	/* it has holes indeed */
	ck_assert_int_eq(lseek(fd, 0, SEEK_HOLE), 65536);
	close(fd);

	u = h_connect(&d);
	fd = h_open_ro(path);
	h_create(u, "sparse", size, fd, 0);
	close(fd);
	map = h_attach(u, "sparse", 0, &a);
	ck_assert_int_eq(h_first_diff(map, expect, size), -1);
	H_WAIT_STAT(u, "sparse", info, info.pages_filled >= size / H_PAGE);
	ck_assert_uint_eq(info.pages_filled, size / H_PAGE);
	ck_assert_int_eq(upager_detach(a), 0);

	upager_disconnect(u);
	free(expect);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Zero source: what one process writes another reads (the frames are
 * shared), and the other's writes come back; untouched pages are zero.
 */
START_TEST(test_zero_shared_frames)
{
	const size_t size = 8 * H_MIB;
	const size_t aoff = 4096 + 17, alen = 3 * H_MIB; /* A writes */
	const size_t boff = 6 * H_MIB, blen = H_MIB + 3; /* B writes */
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *pa, *pb, *map, *expect;
	struct h_peer b;

	pa = malloc(alen);
	pb = malloc(blen);
	expect = calloc(1, size);
	h_fill(pa, alen, 7);
	h_fill(pb, blen, 8);
	memcpy(expect + aoff, pa, alen);
	memcpy(expect + boff, pb, blen);

	h_daemon_start(&d);
	/* B: forked before A attaches, so it is its own client */
	if (h_peer_fork(&b) == 0) {
		struct upager_attachment *ca;
		struct upager *cu;
		long diff;
		int ret;

		h_peer_wait(&b); /* for A */
		cu = h_child_connect(d.sock);
		ret = upager_attach(cu, "z", 0, &ca);
		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		/* A's bytes, zeros elsewhere (B's range not written yet) */
		diff = h_first_diff(map, expect, boff);
		CHILD_CHECK(diff < 0, "byte %ld is not what A wrote", diff);
		diff = h_first_nonzero(map + boff, size - boff);
		CHILD_CHECK(diff < 0, "byte %ld is not zero", (long)boff + diff);
		memcpy(map + boff, pb, blen);
		h_peer_ready(&b, 'w');
		upager_detach(ca);
		upager_disconnect(cu);
		_exit(0);
	}

	u = h_connect(&d);
	h_create(u, "z", size, -1, 0);
	info = h_stat(u, "z");
	ck_assert_uint_eq(info.source, UPAGER_SOURCE_ZERO);
	ck_assert_str_eq(info.source_path, "");
	map = h_attach(u, "z", 0, &a);
	memcpy(map + aoff, pa, alen);
	h_peer_go(&b);
	h_peer_expect(&b, 'w');
	/* B's writes, through A's mapping */
	ck_assert_int_eq(h_first_diff(map, expect, size), -1);
	h_peer_go(&b);
	ck_assert_int_eq(h_peer_end(&b), 0);
	info = h_stat(u, "z");
	ck_assert_uint_eq(info.bytes_read, 0);
	ck_assert_int_eq(upager_detach(a), 0);

	upager_disconnect(u);
	free(pa);
	free(pb);
	free(expect);
	h_daemon_stop(&d);
}
END_TEST

static sigjmp_buf segv_jmp;
static volatile void *segv_addr;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
	segv_addr = si->si_addr;
	siglongjmp(segv_jmp, 1);
}

/*
 * A read-only attachment sees the same bytes as a read-write one (file
 * and written pages, and pages nobody touched yet), and a write through
 * it is SIGSEGV.  Made writable with mprotect, its writes stay private.
 */
START_TEST(test_rdonly_attach)
{
	const size_t size = 4 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512], *map, *expect;
	char patch[10000];
	struct h_peer p;
	int fd;

	h_daemon_start(&d);
	expect = h_make_file(path, sizeof(path), d.dir, "img", size, 3);
	h_fill(patch, sizeof(patch), 33);
	memcpy(expect + 2 * H_MIB + 5, patch, sizeof(patch));

	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *ca;
		struct upager *cu;
		struct sigaction sa = { .sa_sigaction = on_segv,
					.sa_flags = SA_SIGINFO };
		volatile char *target;
		long diff;
		int ret;

		h_peer_wait(&p);
		cu = h_child_connect(d.sock);
		ret = upager_attach(cu, "img", UPAGER_ATTACH_RDONLY, &ca);
		CHILD_CHECK(ret == 0, "attach rdonly: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		/* backwards, so read-ahead does not hide a bad minor path */
		for (size_t off = size; off > 0; off -= H_MIB) {
			diff = h_first_diff(map + off - H_MIB,
					    expect + off - H_MIB, H_MIB);
			CHILD_CHECK(diff < 0, "byte %ld differs",
				    (long)(off - H_MIB) + diff);
		}
		/* a write is SIGSEGV at that address */
		target = map + 2 * H_MIB + 5;
		sigaction(SIGSEGV, &sa, NULL);
		if (sigsetjmp(segv_jmp, 1) == 0) {
			*target = 'X';
			CHILD_CHECK(0, "a write through a read-only attachment "
				       "succeeded");
		}
		CHILD_CHECK(segv_addr == target, "SIGSEGV at %p, not %p",
			    (void *)segv_addr, (void *)target);
		signal(SIGSEGV, SIG_DFL);
		/* made writable: the write is private */
		CHILD_CHECK(mprotect(map, size, PROT_READ | PROT_WRITE) == 0,
			    "mprotect: %s", strerror(errno));
		memset(map + 3 * H_MIB, 'P', 8192);
		CHILD_CHECK(map[3 * H_MIB] == 'P', "private write lost");
		h_peer_ready(&p, 'd');
		upager_detach(ca);
		upager_disconnect(cu);
		_exit(0);
	}

	u = h_connect(&d);
	fd = h_open_ro(path);
	h_create(u, "img", size, fd, 0);
	close(fd);
	map = h_attach(u, "img", 0, &a);
	/* some pages filled and written, the rest left to the reader */
	memcpy(map + 2 * H_MIB + 5, patch, sizeof(patch));
	h_peer_go(&p);
	h_peer_expect(&p, 'd');
	/* neither the SIGSEGV write nor the private one reached the frames */
	ck_assert_int_eq(h_first_diff(map, expect, size), -1);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), 0);
	ck_assert_int_eq(upager_detach(a), 0);

	upager_disconnect(u);
	free(expect);
	h_daemon_stop(&d);
}
END_TEST

/* Read-only attachment of a zero segment: zeros, and written bytes. */
START_TEST(test_rdonly_zero)
{
	const size_t size = 2 * H_MIB;
	struct upager_attachment *a, *r;
	struct h_daemon d;
	struct upager *u;
	char *map, *ro, *expect;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", size, -1, 0644);
	expect = calloc(1, size);
	h_fill(expect + H_MIB, 5000, 9);
	map = h_attach(u, "z", 0, &a);
	memcpy(map + H_MIB, expect + H_MIB, 5000);
	ro = h_attach(u, "z", UPAGER_ATTACH_RDONLY, &r);
	ck_assert_int_eq(h_first_diff(ro, expect, size), -1);
	ck_assert_uint_eq(h_stat(u, "z").nr_attachments, 2);
	ck_assert_int_eq(upager_detach(r), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_uint_eq(h_stat(u, "z").nr_attachments, 0);
	upager_disconnect(u);
	free(expect);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The counters say what happened, exactly: one random fault is one missing
 * fault filling one page; a sequential read grows the read-ahead window
 * and takes fewer faults than pages; a read-only reader of filled pages
 * takes minor faults only; no write-protect fault without a snapshot; and
 * threads that fault on one page at once wait for a single fill.
 */
struct same_page {
	const char *map;
	const char *data;
	pthread_barrier_t *bar;
	size_t first, rounds;
	int bad;
};

static void *same_page_main(void *arg)
{
	struct same_page *t = arg;

	for (size_t r = 0; r < t->rounds; r++) {
		size_t off = (t->first + r * 16) * H_PAGE;

		pthread_barrier_wait(t->bar);
		if (memcmp(t->map + off, t->data + off, H_PAGE))
			t->bad++;
	}
	return NULL;
}

START_TEST(test_counters)
{
	const size_t size = 64 * H_MIB, seq = 4 * H_MIB;
	struct upager_segment_info i0, i1;
	struct upager_attachment *a, *r;
	struct same_page t[4];
	pthread_barrier_t bar;
	pthread_t th[4];
	struct h_daemon d;
	struct upager *u;
	char *data, *map, *rmap;
	size_t off;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 21);
	map = h_attach(u, "img", 0, &a);

	/* one random page: one fault, one page, one page's bytes */
	ck_assert_int_eq(h_read_check(map + 40 * H_MIB, data + 40 * H_MIB,
				      H_PAGE, &off),
			 H_READ_OK);
	H_WAIT_STAT(u, "img", i0, i0.pages_filled >= 1);
	ck_assert_uint_eq(i0.faults_missing, 1);
	ck_assert_uint_eq(i0.faults_minor, 0);
	ck_assert_uint_eq(i0.faults_wp, 0);
	ck_assert_uint_eq(i0.pages_filled, 1);
	ck_assert_uint_eq(i0.bytes_read, H_PAGE);
	ck_assert_uint_eq(i0.readahead_max_pages, 1);

	/* sequential: the window grows, faults are fewer than pages */
	ck_assert_int_eq(h_read_check(map, data, seq, &off), H_READ_OK);
	/* (read-ahead may still be filling beyond: wait for the bytes and
	 * the pages of its fills to agree) */
	H_WAIT_STAT(u, "img", i1,
		    i1.pages_filled >= 1 + seq / H_PAGE &&
			    i1.bytes_read == i1.pages_filled * H_PAGE);
	ck_assert_uint_ge(i1.pages_filled, 1 + seq / H_PAGE);
	ck_assert_uint_gt(i1.readahead_max_pages, 16);
	ck_assert_uint_lt(i1.faults_missing - i0.faults_missing,
			  seq / H_PAGE / 8);
	ck_assert_uint_eq(i1.faults_minor, 0);
	ck_assert_uint_eq(i1.faults_wp, 0);
	ck_assert_uint_eq(i1.bytes_read, i1.pages_filled * H_PAGE);

	/* a reader of filled pages: minor faults only */
	rmap = h_attach(u, "img", UPAGER_ATTACH_RDONLY, &r);
	ck_assert_int_eq(h_read_check(rmap, data, seq, &off), H_READ_OK);
	H_WAIT_STAT(u, "img", i0, i0.faults_minor > 0);
	ck_assert_uint_gt(i0.faults_minor, 0);
	ck_assert_uint_eq(i0.faults_missing, i1.faults_missing);
	ck_assert_uint_eq(i0.faults_wp, 0);
	ck_assert_int_eq(upager_detach(r), 0);

	/* four threads on one page at once, round after round on pages
	 * nobody read: some fault waits for another's fill */
	pthread_barrier_init(&bar, NULL, 4);
	for (int i = 0; i < 4; i++) {
		t[i] = (struct same_page){ .map = map,
					   .data = data,
					   .bar = &bar,
					   .first = 2048,
					   .rounds = 400 };
		pthread_create(&th[i], NULL, same_page_main, &t[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(t[i].bad, 0);
	}
	pthread_barrier_destroy(&bar);
	H_WAIT_STAT(u, "img", i1, i1.faults_waited > 0);
	ck_assert_msg(i1.faults_waited > 0,
		      "no fault ever waited for another's "
		      "fill in 400 rounds of 4 threads on one page");
	ck_assert_uint_eq(i1.faults_wp, 0);
	ck_assert_uint_eq(h_stats(u).faults_waited, i1.faults_waited);

	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Read-ahead past the window, and whether it was used.  A read-only
 * attachment reads 8 MiB in order: the daemon reads ahead of it, by page
 * offset (nothing is mapped into the process ahead of its touch), as far
 * as its read-ahead goes past the latest fault.  The stream's own faults
 * have the daemon check what it read ahead behind it against the
 * process's pagemap (touched), and a touch where the read-ahead stopped
 * checks the rest (not touched: the stream stopped before).
 */
START_TEST(test_readahead_hits)
{
	const size_t size = 64 * H_MIB, streamed = 8 * H_MIB;
	size_t far;
	struct upager_segment_info i0, i1, i2;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 17);
	map = h_attach(u, "img", UPAGER_ATTACH_RDONLY, &a);
	for (size_t off = 0; off < streamed; off += H_PAGE)
		ck_assert_int_eq(map[off], data[off]);
	/* The read-ahead settles: it stops so far past the latest fault. */
	i0 = h_stat(u, "img");
	for (int k = 0; k < 100; k++) {
		h_nap_ms(20);
		i1 = h_stat(u, "img");
		if (i1.readahead_pages == i0.readahead_pages)
			break;
		i0 = i1;
	}
	ck_assert_msg(i1.readahead_pages > 0, "nothing was read ahead");
	ck_assert_uint_le(i1.readahead_pages, size / H_PAGE);
	/* A fault where the read-ahead stopped (the first page the memfd
	 * does not hold): what was read ahead below it is checked. */
	for (far = streamed; far < size; far += H_PAGE) {
		unsigned char in;

		ck_assert_int_eq(mincore(map + far, H_PAGE, &in), 0);
		if (!(in & 1))
			break;
	}
	ck_assert_uint_lt(far, size);
	ck_assert_int_eq(memcmp(map + far, data + far, H_PAGE), 0);
	H_WAIT_STAT(u, "img", i2,
		    i2.readahead_touched + i2.readahead_untouched > 0);
	ck_assert_msg(i2.readahead_touched > 0,
		      "no page read ahead was touched (%llu pages ahead, "
		      "%llu untouched)",
		      (unsigned long long)i2.readahead_pages,
		      (unsigned long long)i2.readahead_untouched);
	ck_assert_msg(i2.readahead_untouched > 0,
		      "every page read ahead was touched (%llu ahead, %llu "
		      "touched): the pages past the stream's end were not",
		      (unsigned long long)i2.readahead_pages,
		      (unsigned long long)i2.readahead_touched);
	ck_assert_uint_le(i2.readahead_touched + i2.readahead_untouched,
			  i2.readahead_pages);
	/* Touched: what the stream read, and what the daemon mapped with its
	 * last window (UFFDIO_CONTINUE of a run of present pages). */
	ck_assert_uint_le(i2.readahead_touched, streamed / H_PAGE + 1024);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

static Suite *paging_suite(void)
{
	Suite *s = h_suite("paging");
	TCase *tc;

	tc = h_tcase(s, "file", H_NEED_BASE);
	tcase_add_test(tc, test_file_concurrent_readers);
	tcase_add_test(tc, test_file_shorter_than_segment);
	tcase_add_test(tc, test_file_sparse);
	tcase_add_test(tc, test_counters);

	tc = h_tcase(s, "zero", H_NEED_DAEMON);
	tcase_add_test(tc, test_zero_shared_frames);

	tc = h_tcase(s, "rdonly", H_NEED_BASE);
	tcase_add_test(tc, test_rdonly_attach);
	tcase_add_test(tc, test_readahead_hits);
	tcase_add_test(tc, test_rdonly_zero);
	return s;
}

int main(void)
{
	h_main(paging_suite());
}
