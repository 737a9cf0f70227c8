// SPDX-License-Identifier: MIT
/*
 * Processes that die: a client killed in the middle of faulting, and the
 * daemon killed under its clients.  Never a wrong byte: every byte a
 * client reads is checked against its source, and a page the daemon never
 * filled must fail with SIGBUS after the daemon died, not read as zeros.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "harness.h"

/* exit codes of the children below */
#define EX_OK 0
#define EX_DIFF 1      /* (CHILD_CHECK) a wrong byte */
#define EX_SIGBUS 3    /* SIGBUS where the test expects one */
#define EX_NO_SIGBUS 4 /* read to the end without SIGBUS */

/*
 * A child that reads the whole segment, checking every byte, punches it
 * out of the memfd (MADV_REMOVE) and reads it again, forever: it faults
 * all the time.  Sends 's' after its first pass and a byte per pass.
 */
static void __attribute__((noreturn))
fault_forever(const char *sock, const char *name, const char *data, size_t size,
	      int report)
{
	struct upager_attachment *a;
	struct upager *u = h_child_connect(sock);
	int ret = upager_attach(u, name, 0, &a);
	char *map;

	CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
	map = upager_attachment_addr(a);
	for (unsigned int pass = 0;; pass++) {
		long diff = h_first_diff(map, data, size);

		CHILD_CHECK(diff < 0, "pass %u: byte %ld differs", pass, diff);
		h_send(report, 'p');
		CHILD_CHECK(madvise(map, size, MADV_REMOVE) == 0,
			    "MADV_REMOVE: %s", strerror(errno));
	}
}

/*
 * A client SIGKILLed while it faults: its attachment goes, and the daemon
 * serves another client (reading the same pages meanwhile) right.
 */
START_TEST(test_client_killed_while_faulting)
{
	const size_t size = 32 * H_MIB;
	struct upager_segment_info info;
	struct upager_daemon_stats st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	int vrep[2], srep[2], sstop[2], status;
	pid_t victim, survivor;
	uint64_t faults0;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 61);
	ck_assert_int_eq(pipe(vrep), 0);
	ck_assert_int_eq(pipe(srep), 0);
	ck_assert_int_eq(pipe(sstop), 0);

	victim = h_fork();
	if (victim == 0)
		fault_forever(d.sock, "img", data, size, vrep[1]);
	close(vrep[1]);
	/* The survivor reads pages the victim keeps punching out, so both
	 * fault on the same pages and wait on each other's fills. */
	survivor = h_fork();
	if (survivor == 0) {
		struct upager_attachment *ca;
		struct upager *cu = h_child_connect(d.sock);
		int ret = upager_attach(cu, "img", 0, &ca);
		char *cmap, c;

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		cmap = upager_attachment_addr(ca);
		fcntl(sstop[0], F_SETFL, O_NONBLOCK);
		for (unsigned int pass = 0;; pass++) {
			long diff = h_first_diff(cmap, data, size);

			CHILD_CHECK(diff < 0,
				    "survivor pass %u: byte %ld "
				    "differs",
				    pass, diff);
			h_send(srep[1], 'p');
			if (read(sstop[0], &c, 1) == 1)
				break;
		}
		upager_detach(ca);
		upager_disconnect(cu);
		_exit(0);
	}
	close(srep[1]);
	close(sstop[0]);

	ck_assert_int_eq(h_recv(vrep[0]), 'p');
	ck_assert_int_eq(h_recv(vrep[0]), 'p');
	ck_assert_int_eq(h_recv(srep[0]), 'p');
	/* in the middle of a pass: faults are being served right now */
	faults0 = h_stat(u, "img").faults_missing;
	H_WAIT_STAT(u, "img", info, info.faults_missing > faults0 + 50);
	ck_assert_uint_gt(info.faults_missing, faults0 + 50);
	ck_assert_int_eq(kill(victim, SIGKILL), 0);
	status = h_wait_child(victim);
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		      "the victim ended by itself (%#x): a wrong byte?", status);

	/* the victim's attachment goes, the survivor's stays */
	info = h_wait_attachments(u, "img", 1);
	ck_assert_uint_eq(info.nr_attachments, 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)survivor);
	st = h_stats(u);
	ck_assert_uint_eq(st.attachments, 1);
	/* two more full passes of the survivor, after the kill */
	while (h_recv_timeout(srep[0], &(char){ 0 }, 0) == 1)
		;
	ck_assert_int_eq(h_recv(srep[0]), 'p');
	ck_assert_int_eq(h_recv(srep[0]), 'p');
	h_send(sstop[1], 's');
	ck_assert_int_eq(h_child_exit_code(survivor), 0);

	/* and a new client, after punching everything out */
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(madvise(map, size, MADV_REMOVE), 0);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	info = h_wait_attachments(u, "img", 0);
	ck_assert_uint_eq(info.nr_attachments, 0);
	ck_assert_uint_eq(h_stats(u).attachments, 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* A client SIGKILLed with a fault pending in the daemon's read. */
START_TEST(test_client_killed_many)
{
	const size_t size = 8 * H_MIB;
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	int rep[2];

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 62);
	ck_assert_int_eq(pipe(rep), 0);
	for (int round = 0; round < 8; round++) {
		pid_t pid = h_fork();
		int status;

		if (pid == 0)
			fault_forever(d.sock, "img", data, size, rep[1]);
		ck_assert_int_eq(h_recv(rep[0]), 'p');
		/* kill at varying points of a pass */
		for (int i = 0; i < round % 3; i++)
			ck_assert_int_eq(h_recv(rep[0]), 'p');
		kill(pid, SIGKILL);
		status = h_wait_child(pid);
		ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
			      "child ended otherwise than by our SIGKILL: %#x",
			      status);
		while (h_recv_timeout(rep[0], &(char){ 0 }, 0) == 1)
			;
	}
	info = h_wait_attachments(u, "img", 0);
	ck_assert_uint_eq(info.nr_attachments, 0);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(madvise(map, size, MADV_REMOVE), 0);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The daemon SIGKILLed under a zero-segment client: it keeps its written
 * bytes, reads zeros where nothing was written, and can write on.
 */
START_TEST(test_daemon_killed_zero)
{
	const size_t size = 8 * H_MIB, half = 4 * H_MIB;
	struct h_daemon d;
	struct upager *u;
	char *patch;
	struct h_peer p;

	h_daemon_start(&d);
	patch = malloc(half);
	h_fill(patch, half, 71);
	u = h_connect(&d);
	h_create(u, "z", size, -1, 0);
	upager_disconnect(u);

	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *ca;
		struct upager *cu = h_child_connect(d.sock);
		struct upager_segment_info ci;
		int ret = upager_attach(cu, "z", 0, &ca);
		char *map;
		size_t off;

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		memcpy(map, patch, half);
		h_peer_ready(&p, 'h');
		ret = h_read_check(map, patch, half, &off);
		CHILD_CHECK(ret == H_READ_OK, "written half: %s at %zu",
			    ret == H_READ_DIFF ? "wrong byte" : "SIGBUS", off);
		ret = h_read_check(map + half, NULL, size - half, &off);
		CHILD_CHECK(ret == H_READ_OK, "never written: %s at %zu",
			    ret == H_READ_DIFF ? "wrong byte" : "SIGBUS",
			    half + off);
		memset(map + half, 0x5c, H_MIB);
		CHILD_CHECK(map[half + H_MIB - 1] == 0x5c, "write lost");
		/* the connection reports the hang-up */
		ret = upager_stat(cu, "z", &ci);
		CHILD_CHECK(ret == -EPIPE || ret == -ECONNRESET,
			    "stat after the daemon died: %d", ret);
		upager_detach(ca);
		upager_disconnect(cu);
		_exit(EX_OK);
	}
	h_peer_expect(&p, 'h');
	h_daemon_kill(&d);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), EX_OK);
	h_dir_remove(d.dir);
	free(patch);
}
END_TEST

/*
 * The daemon SIGKILLed under a file-segment client that read the first
 * part: that part reads right, and the first page the daemon never filled
 * gives SIGBUS (so do later ones), never zeros.
 */
START_TEST(test_daemon_killed_file)
{
	const size_t size = 32 * H_MIB, first = 8 * H_MIB;
	struct h_daemon d;
	struct upager *u;
	char *data;
	struct h_peer p;
	int memfd;
	uint64_t hole, got;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 72);
	upager_disconnect(u);

	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *ca;
		struct upager *cu = h_child_connect(d.sock);
		int ret = upager_attach(cu, "img", 0, &ca);
		char *map;
		size_t off;
		uint64_t expect;

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		ret = h_read_check(map, data, first, &off);
		CHILD_CHECK(ret == H_READ_OK, "before the kill: %d at %zu", ret,
			    off);
		h_peer_ready(&p, 'h');
		expect = h_recv_u64(p.rx);
		/* on from where the child stopped */
		ret = h_read_check(map + first, data + first, size - first,
				   &off);
		CHILD_CHECK(ret != H_READ_DIFF,
			    "byte %zu differs from the "
			    "file after the daemon died",
			    first + off);
		if (ret == H_READ_OK)
			_exit(EX_NO_SIGBUS);
		h_send_u64(p.tx, first + off);
		CHILD_CHECK(first + off == expect,
			    "SIGBUS at %zu, the first "
			    "page never filled is at %llu",
			    first + off, (unsigned long long)expect);
		/* poisoned for good; the filled part still reads right */
		ret = h_read_check(map + first + off, data + first + off,
				   H_PAGE, &off);
		CHILD_CHECK(ret == H_READ_SIGBUS, "second access: %d", ret);
		ret = h_read_check(map, data, first, &off);
		CHILD_CHECK(ret == H_READ_OK, "filled part: %d at %zu", ret,
			    off);
		/* the last page: never filled either */
		ret = h_read_check(map + size - H_PAGE, data + size - H_PAGE,
				   H_PAGE, &off);
		CHILD_CHECK(ret == H_READ_SIGBUS, "last page: %d", ret);
		_exit(EX_SIGBUS);
	}
	h_peer_expect(&p, 'h');
	memfd = h_open_memfd(p.pid, "img");
	h_daemon_kill(&d);
	/* what the daemon managed to fill is final now */
	hole = lseek(memfd, first, SEEK_HOLE);
	ck_assert_msg(hole < size - H_PAGE,
		      "the daemon filled the whole "
		      "segment (%llu): nothing to test",
		      (unsigned long long)hole);
	ck_assert_int_eq(lseek(memfd, size - H_PAGE, SEEK_DATA), -1);
	h_peer_go(&p);
	h_send_u64(p.tx, hole);
	got = h_recv_u64(p.rx);
	ck_assert_int_eq(h_peer_end(&p), EX_SIGBUS);
	ck_assert_uint_eq(got, hole);
	close(memfd);
	h_dir_remove(d.dir);
	free(data);
}
END_TEST

/*
 * The daemon SIGKILLed while a client streams through a file segment
 * (punching it out after each pass): every byte it reads is right, up to
 * a SIGBUS on a page that was not in the memfd.
 */
START_TEST(test_daemon_killed_mid_stream)
{
	const size_t size = 32 * H_MIB;
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	char *data;
	int rep[2];
	pid_t pid;
	uint64_t faults0;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 73);
	ck_assert_int_eq(pipe(rep), 0);
	pid = h_fork();
	if (pid == 0) {
		struct upager_attachment *ca;
		struct upager *cu = h_child_connect(d.sock);
		int ret = upager_attach(cu, "img", 0, &ca);
		char *map;
		size_t off;

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		for (unsigned int pass = 0; pass < 1000; pass++) {
			ret = h_read_check(map, data, size, &off);
			CHILD_CHECK(ret != H_READ_DIFF,
				    "pass %u: byte %zu "
				    "differs",
				    pass, off);
			if (ret == H_READ_SIGBUS)
				_exit(EX_SIGBUS);
			h_send(rep[1], 'p');
			CHILD_CHECK(madvise(map, size, MADV_REMOVE) == 0,
				    "MADV_REMOVE: %s", strerror(errno));
		}
		_exit(EX_NO_SIGBUS);
	}
	close(rep[1]);
	ck_assert_int_eq(h_recv(rep[0]), 'p');
	faults0 = h_stat(u, "img").faults_missing;
	H_WAIT_STAT(u, "img", info, info.faults_missing > faults0 + 20);
	upager_disconnect(u);
	h_daemon_kill(&d);
	ck_assert_int_eq(h_child_exit_code(pid), EX_SIGBUS);
	h_dir_remove(d.dir);
	free(data);
}
END_TEST

/*
 * The daemon SIGKILLed after an attached process forked: the child, too,
 * reads filled pages right and gets SIGBUS for the others.
 */
START_TEST(test_daemon_killed_after_fork)
{
	/* Large enough that read-ahead after the first part (up to 4 windows
	 * of 4 MiB) cannot reach the last page. */
	const size_t size = 64 * H_MIB, first = 2 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	struct h_peer p;
	size_t off;
	int ret;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 74);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(h_read_check(map, data, first, &off), H_READ_OK);

	if (h_peer_fork(&p) == 0) {
		h_peer_ready(&p, 'f');
		ret = h_read_check(map, data, first, &off);
		CHILD_CHECK(ret == H_READ_OK, "filled part: %d at %zu", ret,
			    off);
		ret = h_read_check(map + size - H_PAGE, data + size - H_PAGE,
				   H_PAGE, &off);
		CHILD_CHECK(ret != H_READ_DIFF, "the last page read %s",
			    "wrong bytes (zeros?)");
		_exit(ret == H_READ_SIGBUS ? EX_SIGBUS : EX_NO_SIGBUS);
	}
	h_peer_expect(&p, 'f');
	h_daemon_kill(&d);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), EX_SIGBUS);
	/* the parent likewise */
	ck_assert_int_eq(h_read_check(map, data, first, &off), H_READ_OK);
	ck_assert_int_eq(h_read_check(map + size - H_PAGE, data + size - H_PAGE,
				      H_PAGE, &off),
			 H_READ_SIGBUS);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_dir_remove(d.dir);
	free(data);
}
END_TEST

/*
 * The daemon SIGKILLed under read-only attachments: a file segment's
 * filled pages read right (mapped from the memfd), its others give SIGBUS;
 * a zero segment's untouched pages read zeros and written ones their bytes.
 */
START_TEST(test_daemon_killed_rdonly)
{
	/* Beyond read-ahead's reach from the first part, as above. */
	const size_t size = 64 * H_MIB, first = H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *zmap, *patch;
	struct h_peer p;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 75);
	h_create(u, "z", size, -1, 0644);
	patch = malloc(H_MIB);
	h_fill(patch, H_MIB, 76);
	/* written through a read-write attachment, which stays */
	zmap = h_attach(u, "z", 0, &a);
	memcpy(zmap + 2 * H_MIB, patch, H_MIB);

	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *fa, *za;
		struct upager *cu = h_child_connect(d.sock);
		char *fmap, *rz;
		size_t off;
		int ret;

		ret = upager_attach(cu, "img", UPAGER_ATTACH_RDONLY, &fa);
		CHILD_CHECK(ret == 0, "attach img ro: %s", strerror(-ret));
		ret = upager_attach(cu, "z", UPAGER_ATTACH_RDONLY, &za);
		CHILD_CHECK(ret == 0, "attach z ro: %s", strerror(-ret));
		fmap = upager_attachment_addr(fa);
		rz = upager_attachment_addr(za);
		ret = h_read_check(fmap, data, first, &off);
		CHILD_CHECK(ret == H_READ_OK, "img before: %d at %zu", ret, off);
		h_peer_ready(&p, 'h');
		ret = h_read_check(fmap, data, first, &off);
		CHILD_CHECK(ret == H_READ_OK, "img filled part: %d at %zu", ret,
			    off);
		ret = h_read_check(fmap + size - H_PAGE, data + size - H_PAGE,
				   H_PAGE, &off);
		CHILD_CHECK(ret == H_READ_SIGBUS, "img last page: %s",
			    ret == H_READ_OK ? "read without the daemon" :
					       "wrong bytes");
		ret = h_read_check(rz, NULL, 2 * H_MIB, &off);
		CHILD_CHECK(ret == H_READ_OK, "z untouched: %d at %zu", ret,
			    off);
		ret = h_read_check(rz + 2 * H_MIB, patch, H_MIB, &off);
		CHILD_CHECK(ret == H_READ_OK, "z written: %d at %zu", ret, off);
		ret = h_read_check(rz + 3 * H_MIB, NULL, size - 3 * H_MIB, &off);
		CHILD_CHECK(ret == H_READ_OK, "z rest: %d at %zu", ret, off);
		_exit(EX_OK);
	}
	h_peer_expect(&p, 'h');
	h_daemon_kill(&d);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), EX_OK);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_dir_remove(d.dir);
	free(data);
	free(patch);
}
END_TEST

static Suite *failure_suite(void)
{
	Suite *s = h_suite("failure");
	TCase *tc;

	tc = h_tcase(s, "client-killed",
		     H_NEED_BASE | UFFD_FEATURE_EVENT_REMOVE);
	tcase_add_test(tc, test_client_killed_while_faulting);
	tcase_add_test(tc, test_client_killed_many);

	tc = h_tcase(s, "daemon-killed", H_NEED_BASE);
	tcase_add_test(tc, test_daemon_killed_zero);
	h_add_test(tc, test_daemon_killed_file, UFFD_FEATURE_POISON);
	h_add_test(tc, test_daemon_killed_mid_stream,
		   UFFD_FEATURE_POISON | UFFD_FEATURE_EVENT_REMOVE);
	h_add_test(tc, test_daemon_killed_after_fork,
		   UFFD_FEATURE_POISON | UFFD_FEATURE_EVENT_FORK);
	h_add_test(tc, test_daemon_killed_rdonly, UFFD_FEATURE_POISON);
	return s;
}

int main(void)
{
	h_main(failure_suite());
}
