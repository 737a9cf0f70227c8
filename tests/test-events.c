// SPDX-License-Identifier: MIT
/*
 * What a process does to its mapping, and the daemon follows: fork,
 * munmap, mremap, madvise(MADV_DONTNEED), madvise(MADV_REMOVE).  Bytes are
 * compared with the source file (or the bytes written), never with another
 * read of the segment.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "harness.h"

/* A file-backed segment @name of @size bytes from seed @seed; returns the
 * file's bytes. */
static bool has_pid(const struct upager_segment_info *info, pid_t pid)
{
	for (uint32_t i = 0; i < info->nr_pids; i++)
		if (info->pids[i] == (uint32_t)pid)
			return true;
	return false;
}

/*
 * fork: the child reads pages the parent never touched (from the file),
 * its writes are the parent's (one shared mapping), its connection works,
 * and the daemon drops its attachment when it exits.
 */
START_TEST(test_fork_child)
{
	const size_t size = 8 * H_MIB;
	const size_t woff = 5 * H_MIB + 100, wlen = 3 * 4096;
	struct upager_segment_info info;
	struct upager_daemon_stats st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map, *patch;
	struct h_peer p;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 11);
	patch = malloc(wlen);
	h_fill(patch, wlen, 12);
	map = h_attach(u, "img", 0, &a);
	/* the parent touches the first page only */
	ck_assert_int_eq(memcmp(map, data, 4096), 0);

	if (h_peer_fork(&p) == 0) {
		struct upager_segment_info ci;
		long diff;
		int ret;

		/* untouched pages, backwards (no read-ahead to hide behind) */
		for (size_t off = size; off > H_MIB; off -= H_MIB) {
			diff = h_first_diff(map + off - H_MIB,
					    data + off - H_MIB, H_MIB);
			CHILD_CHECK(diff < 0, "child: byte %ld differs",
				    (long)(off - H_MIB) + diff);
		}
		diff = h_first_diff(map, data, H_MIB);
		CHILD_CHECK(diff < 0, "child: byte %ld differs", diff);
		/* the inherited connection is the child's own */
		ret = upager_stat(u, "img", &ci);
		CHILD_CHECK(ret == 0, "child: stat: %s", strerror(-ret));
		CHILD_CHECK(ci.nr_attachments == 2, "child: %u attachments",
			    ci.nr_attachments);
		memcpy(map + woff, patch, wlen);
		h_peer_ready(&p, 'w');
		_exit(0);
	}

	h_peer_expect(&p, 'w');
	/* the child's pid is known while it lives */
	H_WAIT_STAT(u, "img", info, has_pid(&info, p.pid));
	ck_assert_uint_eq(info.nr_attachments, 2);
	ck_assert_msg(has_pid(&info, p.pid), "child pid %d not in stat",
		      (int)p.pid);
	ck_assert_msg(has_pid(&info, getpid()), "parent pid not in stat");
	/* the child's writes, the file elsewhere */
	ck_assert_int_eq(memcmp(map + woff, patch, wlen), 0);
	ck_assert_int_eq(h_first_diff(map, data, woff), -1);
	ck_assert_int_eq(h_first_diff(map + woff + wlen, data + woff + wlen,
				      size - woff - wlen),
			 -1);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), 0);

	info = h_wait_attachments(u, "img", 1);
	ck_assert_uint_eq(info.nr_attachments, 1);
	ck_assert_uint_eq(info.nr_pids, 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)getpid());
	st = h_stats(u);
	ck_assert_uint_eq(st.events_fork, 1);
	ck_assert_uint_ge(st.clients_exited, 1);
	ck_assert_uint_eq(st.attachments, 1);
	/* each page was read once, by whichever process came first */
	H_WAIT_STAT(u, "img", info, info.pages_filled >= size / H_PAGE);
	ck_assert_uint_eq(info.pages_filled, size / H_PAGE);
	ck_assert_uint_eq(info.bytes_read, size);

	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_uint_eq(h_wait_attachments(u, "img", 0).nr_attachments, 0);
	upager_disconnect(u);
	free(data);
	free(patch);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The same with the daemon a child of the attaching process (a program
 * that starts its own upagerd): the daemon maps every segment's memfd
 * itself, and must not take itself for the forked child.
 */
START_TEST(test_fork_daemon_is_our_child)
{
	const size_t size = 2 * H_MIB;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	struct h_peer p;

	h_daemon_init(&d);
	d.direct = true;
	h_daemon_restart(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 14);
	map = h_attach(u, "img", 0, &a);

	if (h_peer_fork(&p) == 0) {
		struct upager_segment_info ci;
		long diff = h_first_diff(map, data, size);
		int ret;

		CHILD_CHECK(diff < 0, "child: byte %ld differs", diff);
		ret = upager_stat(u, "img", &ci);
		CHILD_CHECK(ret == 0,
			    "child: stat through the inherited "
			    "connection: %s",
			    strerror(-ret));
		h_peer_ready(&p, 'r');
		_exit(0);
	}
	h_peer_expect(&p, 'r');
	H_WAIT_STAT(u, "img", info, has_pid(&info, p.pid));
	ck_assert_msg(has_pid(&info, p.pid),
		      "child pid %d not in stat (pids %u %u)", (int)p.pid,
		      info.pids[0], info.pids[1]);
	ck_assert_msg(!has_pid(&info, d.pid),
		      "the daemon (pid %d) is listed as attached", (int)d.pid);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), 0);
	info = h_wait_attachments(u, "img", 1);
	ck_assert_uint_eq(info.nr_attachments, 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)getpid());
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Several children forked in a row (a pre-forking server): each must be
 * served through its own uffd.  Children end one by one; after each end,
 * every survivor touches a page nobody touched yet, which only its own
 * attachment can fill.  A survivor whose uffd went with a sibling's
 * attachment would hang there.
 */
#define NCHILD 16

START_TEST(test_fork_many_children)
{
	const size_t size = NCHILD * NCHILD * 8 * H_PAGE;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	int to_c[NCHILD][2], to_p[2];
	pid_t pids[NCHILD];

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 15);
	ck_assert_int_eq(pipe(to_p), 0);
	for (int i = 0; i < NCHILD; i++)
		ck_assert_int_eq(pipe(to_c[i]), 0);
	map = h_attach(u, "img", 0, &a);

	for (int i = 0; i < NCHILD; i++) {
		pids[i] = h_fork();
		if (pids[i] == 0) {
			char cmd;

			/* a round number: read the page of (round, me); 'x':
			 * exit.  Answers 'a' + i when the bytes are right,
			 * 'A' + i when not. */
			while (read(to_c[i][0], &cmd, 1) == 1 && cmd != 'x') {
				size_t pg = ((size_t)cmd * NCHILD + i) * 8;
				bool ok = !memcmp(map + pg * H_PAGE,
						  data + pg * H_PAGE, H_PAGE);

				h_send(to_p[1], (char)((ok ? 'a' : 'A') + i));
			}
			_exit(0);
		}
	}
	close(to_p[1]);
	info = h_wait_attachments(u, "img", NCHILD + 1);
	ck_assert_uint_eq(info.nr_attachments, NCHILD + 1);

	for (int round = 0; round < NCHILD; round++) {
		/* the oldest living child goes */
		h_send(to_c[round][1], 'x');
		ck_assert_int_eq(h_child_exit_code(pids[round]), 0);
		info = h_wait_attachments(u, "img", NCHILD - round);
		ck_assert_uint_eq(info.nr_attachments, NCHILD - round);
		/* every survivor faults on a page of its own */
		for (int i = round + 1; i < NCHILD; i++)
			h_send(to_c[i][1], (char)round);
		for (int n = round + 1; n < NCHILD; n++) {
			char c = 0;
			int ret = h_recv_timeout(to_p[0], &c, H_TIMEOUT_MS);
			int i = c >= 'a' ? c - 'a' : c - 'A';
			size_t pg = ((size_t)round * NCHILD + i) * 8;
			bool zeros, right;

			ck_assert_msg(ret == 1,
				      "round %d: a child's fault was "
				      "not served",
				      round);
			if (c >= 'a')
				continue;
			zeros = h_first_nonzero(map + pg * H_PAGE, H_PAGE) < 0;
			right = !memcmp(map + pg * H_PAGE, data + pg * H_PAGE,
					H_PAGE);
			ck_abort_msg("round %d: child %d (pid %d) read wrong "
				     "bytes (%s) at page %zu after its sibling "
				     "%d exited; the segment now reads %s there",
				     round, i, (int)pids[i],
				     zeros ? "zeros" : "not zeros", pg, round,
				     right ? "right" :
					     "wrong bytes for everyone");
		}
	}
	info = h_wait_attachments(u, "img", 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)getpid());
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Children forked and ended one at a time: each exit is counted once in
 * clients_exited, and each child's attachment goes.
 */
START_TEST(test_fork_exits_counted_once)
{
	const int rounds = 60;
	struct upager_segment_info info;
	struct upager_daemon_stats st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *map, page[H_PAGE];

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", H_MIB, -1, 0);
	map = h_attach(u, "z", 0, &a);
	for (int i = 0; i < rounds; i++) {
		pid_t pid;

		h_fill(page, H_PAGE, 300 + i);
		pid = h_fork();
		if (pid == 0) {
			memcpy(map + i * H_PAGE, page, H_PAGE);
			_exit(0);
		}
		ck_assert_int_eq(h_child_exit_code(pid), 0);
		ck_assert_int_eq(h_first_diff(map + i * H_PAGE, page, H_PAGE),
				 -1);
		info = h_wait_attachments(u, "z", 1);
		ck_assert_uint_eq(info.nr_attachments, 1);
	}
	H_WAIT_STATS(u, st, st.clients_exited >= (uint64_t)rounds);
	ck_assert_uint_eq(st.events_fork, rounds);
	ck_assert_msg(st.clients_exited == (uint64_t)rounds,
		      "%d children exited, clients_exited says %llu", rounds,
		      (unsigned long long)st.clients_exited);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* fork of a process with a read-only attachment: the child reads right. */
START_TEST(test_fork_rdonly)
{
	const size_t size = 4 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 16);
	map = h_attach(u, "img", UPAGER_ATTACH_RDONLY, &a);
	ck_assert_int_eq(memcmp(map, data, H_PAGE), 0);
	pid = h_fork();
	if (pid == 0) {
		long diff;

		for (size_t off = size; off > 0; off -= H_MIB) {
			diff = h_first_diff(map + off - H_MIB,
					    data + off - H_MIB, H_MIB);
			CHILD_CHECK(diff < 0, "child: byte %ld differs",
				    (long)(off - H_MIB) + diff);
		}
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_uint_eq(h_wait_attachments(u, "img", 1).nr_attachments, 1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* A child that detaches its inherited attachment leaves the parent's. */
START_TEST(test_fork_child_detaches)
{
	const size_t size = 2 * H_MIB;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	struct h_peer p;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 13);
	map = h_attach(u, "img", 0, &a);

	if (h_peer_fork(&p) == 0) {
		long diff = h_first_diff(map + H_MIB, data + H_MIB, 4096);
		int ret;

		CHILD_CHECK(diff < 0, "child: byte %ld differs", diff);
		ret = upager_detach(a);
		CHILD_CHECK(ret == 0, "child: detach: %s", strerror(-ret));
		h_peer_ready(&p, 'd');
		upager_disconnect(u);
		_exit(0);
	}
	h_peer_expect(&p, 'd');
	/* the child still lives: its attachment is gone all the same */
	info = h_wait_attachments(u, "img", 1);
	ck_assert_uint_eq(info.nr_attachments, 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)getpid());
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * A client that execs another program: its mapping is gone with its old
 * address space, so its attachment must go too (the segment can then be
 * deleted without --force), although the process lives on.
 */
START_TEST(test_exec_drops_attachment)
{
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	struct h_peer p;
	int ret;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", H_MIB, -1, 0);
	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *ca;
		struct upager *cu = h_child_connect(d.sock);
		char *map;

		ret = upager_attach(cu, "z", 0, &ca);
		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		map[0] = 1;
		h_send(p.tx, 'a');
		/* cat waits on the pipe until the parent closes it */
		CHILD_CHECK(dup2(p.rx, 0) == 0, "dup2");
		execl("/bin/cat", "cat", (char *)NULL);
		_exit(127);
	}
	h_peer_expect(&p, 'a');
	ck_assert_uint_eq(h_stat(u, "z").nr_attachments, 1);
	/* the exec closed the child's end of the pipe to us */
	ck_assert_int_eq(h_recv_timeout(p.rx, &(char){ 0 }, H_TIMEOUT_MS), 0);
	info = h_wait_attachments(u, "z", 0);
	ret = upager_delete(u, "z", 0);
	/* (closing our end of its stdin ends cat) */
	ck_assert_int_eq(h_peer_end(&p), 0);
	ck_assert_msg(info.nr_attachments == 0,
		      "pid %u exec'd %d ms ago and is still attached",
		      info.pids[0], H_TIMEOUT_MS);
	ck_assert_int_eq(ret, 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* munmap of the middle: the rest still reads right, detach still works. */
START_TEST(test_munmap_middle)
{
	const size_t size = 8 * H_MIB;
	struct upager_daemon_stats st0, st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 21);
	map = h_attach(u, "img", 0, &a);
	st0 = h_stats(u);
	ck_assert_int_eq(munmap(map + 2 * H_MIB, 2 * H_MIB), 0);
	H_WAIT_STATS(u, st, st.events_unmap > st0.events_unmap);
	ck_assert_uint_gt(st.events_unmap, st0.events_unmap);
	/* after the hole first: the daemon must map offset, not order */
	ck_assert_int_eq(h_first_diff(map + 4 * H_MIB, data + 4 * H_MIB,
				      4 * H_MIB),
			 -1);
	ck_assert_int_eq(h_first_diff(map, data, 2 * H_MIB), -1);
	ck_assert_uint_eq(h_stat(u, "img").nr_attachments, 1);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_uint_eq(h_wait_attachments(u, "img", 0).nr_attachments, 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * mremap of an untouched part to a new place: its pages fault at the new
 * address and fill with the bytes of their segment offset.
 */
START_TEST(test_mremap_part)
{
	const size_t size = 8 * H_MIB, moff = 3 * H_MIB, mlen = 2 * H_MIB;
	struct upager_daemon_stats st0, st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map, *dst, *moved;
	unsigned char vec;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 31);
	map = h_attach(u, "img", 0, &a);
	/* a page before the moved part, so a stream seems to lead into it */
	ck_assert_int_eq(memcmp(map + moff - 4096, data + moff - 4096, 4096), 0);
	dst = mmap(NULL, mlen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(dst, MAP_FAILED);
	st0 = h_stats(u);
	moved = mremap(map + moff, mlen, mlen, MREMAP_MAYMOVE | MREMAP_FIXED,
		       dst);
	ck_assert_ptr_eq(moved, dst);
	H_WAIT_STATS(u, st, st.events_remap > st0.events_remap);
	ck_assert_uint_gt(st.events_remap, st0.events_remap);
	/* the old place is a hole now */
	ck_assert_int_eq(mincore(map + moff, 4096, &vec), -1);
	ck_assert_int_eq(errno, ENOMEM);
	/* backwards, then forwards */
	for (size_t off = mlen; off > 0; off -= 4096)
		ck_assert_msg(memcmp(moved + off - 4096,
				     data + moff + off - 4096, 4096) == 0,
			      "moved page at %zu differs", off - 4096);
	ck_assert_int_eq(h_first_diff(moved, data + moff, mlen), -1);
	/* the parts left in place */
	ck_assert_int_eq(h_first_diff(map, data, moff), -1);
	ck_assert_int_eq(h_first_diff(map + moff + mlen, data + moff + mlen,
				      size - moff - mlen),
			 -1);
	/* writes through the new address are the segment's */
	memset(moved + 4096, 0x5a, 100);
	ck_assert_int_eq(munmap(moved, mlen), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	map = h_attach(u, "img", 0, &a);
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq((unsigned char)map[moff + 4096 + i], 0x5a);
	ck_assert_int_eq(memcmp(map + moff + 4096 + 100,
				data + moff + 4096 + 100, 4096 - 100),
			 0);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_uint_eq(h_wait_attachments(u, "img", 0).nr_attachments, 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* mremap that grows nothing but moves the whole tail, untouched. */
START_TEST(test_mremap_tail_untouched)
{
	const size_t size = 4 * H_MIB, moff = H_MIB, mlen = 3 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map, *dst, *moved;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 32);
	map = h_attach(u, "img", 0, &a);
	dst = mmap(NULL, mlen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(dst, MAP_FAILED);
	moved = mremap(map + moff, mlen, mlen, MREMAP_MAYMOVE | MREMAP_FIXED,
		       dst);
	ck_assert_ptr_eq(moved, dst);
	/* random order: every page alone */
	for (size_t i = 0; i < mlen / 4096; i++) {
		size_t pg = (i * 577) % (mlen / 4096);

		ck_assert_msg(memcmp(moved + pg * 4096, data + moff + pg * 4096,
				     4096) == 0,
			      "moved page %zu differs", pg);
	}
	ck_assert_int_eq(h_first_diff(map, data, moff), -1);
	ck_assert_int_eq(munmap(moved, mlen), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* MADV_DONTNEED of written pages of a shared mapping keeps the data. */
START_TEST(test_madv_dontneed_keeps)
{
	const size_t size = 4 * H_MIB, off = H_MIB, len = 64 * 1024;
	struct upager_daemon_stats st0, st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map, *patch;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 41);
	patch = malloc(len);
	h_fill(patch, len, 42);
	map = h_attach(u, "img", 0, &a);
	memcpy(map + off, patch, len);
	st0 = h_stats(u);
	ck_assert_int_eq(madvise(map + off, len, MADV_DONTNEED), 0);
	H_WAIT_STATS(u, st, st.events_remove > st0.events_remove);
	ck_assert_uint_gt(st.events_remove, st0.events_remove);
	ck_assert_int_eq(memcmp(map + off, patch, len), 0);
	ck_assert_int_eq(h_first_diff(map, data, off), -1);
	ck_assert_int_eq(h_first_diff(map + off + len, data + off + len,
				      size - off - len),
			 -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	free(patch);
	h_daemon_stop(&d);
}
END_TEST

/*
 * MADV_REMOVE of written pages of a file segment: the range reverts to
 * the file's bytes, in this mapping and in another one of the segment.
 */
START_TEST(test_madv_remove_file)
{
	const size_t size = 4 * H_MIB, off = 2 * H_MIB, len = 64 * 1024;
	struct upager_segment_info info;
	struct upager_attachment *a, *b;
	struct h_daemon d;
	struct upager *u;
	char *data, *map, *other, *patch;
	uint64_t read0;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 51);
	patch = malloc(len);
	h_fill(patch, len, 52);
	map = h_attach(u, "img", 0, &a);
	other = h_attach(u, "img", 0, &b);
	ck_assert_ptr_ne(map, other);
	/* everything filled: the re-read of the range is the only one */
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	memcpy(map + off, patch, len);
	ck_assert_int_eq(memcmp(other + off, patch, len), 0);
	H_WAIT_STAT(u, "img", info, info.bytes_read >= size);
	read0 = info.bytes_read;
	ck_assert_uint_eq(read0, size);

	ck_assert_int_eq(madvise(map + off, len, MADV_REMOVE), 0);
	/* through the other mapping first, then this one */
	ck_assert_int_eq(h_first_diff(other + off, data + off, len), -1);
	ck_assert_int_eq(h_first_diff(map + off, data + off, len), -1);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	H_WAIT_STAT(u, "img", info, info.bytes_read >= read0 + len);
	ck_assert_uint_eq(info.bytes_read, read0 + len);
	ck_assert_uint_eq(info.resident_bytes, size);

	/* MADV_REMOVE of pages never written: the file's bytes too */
	ck_assert_int_eq(madvise(map, 8192, MADV_REMOVE), 0);
	ck_assert_int_eq(h_first_diff(map, data, 8192), -1);

	ck_assert_int_eq(upager_detach(b), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	free(patch);
	h_daemon_stop(&d);
}
END_TEST

/* MADV_REMOVE of written pages of a zero segment: zeros again. */
START_TEST(test_madv_remove_zero)
{
	const size_t size = 4 * H_MIB, off = H_MIB + 8192, len = 40960;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *map;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", size, -1, 0);
	map = h_attach(u, "z", 0, &a);
	memset(map + off - 4096, 0x77, len + 8192);
	ck_assert_int_eq(madvise(map + off, len, MADV_REMOVE), 0);
	ck_assert_int_eq(h_first_nonzero(map + off, len), -1);
	/* the neighbours keep what was written */
	for (size_t i = 0; i < 4096; i++) {
		ck_assert_int_eq(map[off - 4096 + i], 0x77);
		ck_assert_int_eq(map[off + len + i], 0x77);
	}
	ck_assert_int_eq(h_first_nonzero(map, off - 4096), -1);
	ck_assert_int_eq(h_first_nonzero(map + off + len + 4096,
					 size - off - len - 4096),
			 -1);
	/* and it can be written again */
	memset(map + off, 0x33, len);
	ck_assert_int_eq(map[off + len - 1], 0x33);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *events_suite(void)
{
	Suite *s = h_suite("events");
	TCase *tc;

	tc = h_tcase(s, "fork", H_NEED_BASE | UFFD_FEATURE_EVENT_FORK);
	tcase_add_test(tc, test_fork_child);
	tcase_add_test(tc, test_fork_daemon_is_our_child);
	tcase_add_test(tc, test_fork_child_detaches);
	tcase_add_test(tc, test_fork_rdonly);
	tcase_add_test(tc, test_fork_many_children);
	tcase_add_test(tc, test_fork_exits_counted_once);
	tcase_add_test(tc, test_exec_drops_attachment);

	tc = h_tcase(s, "unmap-remap",
		     H_NEED_BASE | UFFD_FEATURE_EVENT_UNMAP |
			     UFFD_FEATURE_EVENT_REMAP);
	tcase_add_test(tc, test_munmap_middle);
	tcase_add_test(tc, test_mremap_part);
	tcase_add_test(tc, test_mremap_tail_untouched);

	tc = h_tcase(s, "madvise", H_NEED_BASE | UFFD_FEATURE_EVENT_REMOVE);
	tcase_add_test(tc, test_madv_dontneed_keeps);
	tcase_add_test(tc, test_madv_remove_file);
	tcase_add_test(tc, test_madv_remove_zero);
	return s;
}

int main(void)
{
	h_main(events_suite());
}
