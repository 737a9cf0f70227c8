// SPDX-License-Identifier: MIT
/*
 * The corners where a mapping could be touched with nobody serving it, and
 * the ones where a fault could hang or a signal stray: a detach racing the
 * threads that touch the mapping, the daemon dying inside a fork, after a
 * mremap, with an event pending; mremap that grows an attachment; an event
 * pending while a fill copies.  Bytes are compared with the source; a zero
 * page where the file has data is the failure these tests exist for.
 *
 * Races are looped: each test repeats its scenario enough times that the
 * old behaviour failed every run here.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "harness.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

/* exit codes of the children below */
#define EX_OK 0
#define EX_SIGBUS 3
#define EX_NO_SIGBUS 4

/*
 * Accesses that may fault with SIGBUS or SIGSEGV, from any thread: each
 * thread jumps back to its own point.  A SIGBUS not caused by an access of
 * the thread itself (sent by kill(), say) is counted as stray.
 */
static __thread sigjmp_buf t_jmp;
static __thread volatile int t_armed;
static __thread int t_code; /* of the last signal caught */
static _Atomic int stray_signals;
static _Atomic int detaching;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
	if (si->si_code <= 0 || !t_armed) {
		atomic_fetch_add(&stray_signals, 1);
		if (!t_armed)
			return;
	}
	t_armed = 0;
	t_code = si->si_code;
	siglongjmp(t_jmp, sig);
}

static void catch_faults(void)
{
	struct sigaction sa = { .sa_sigaction = on_fault,
				.sa_flags = SA_SIGINFO | SA_NODEFER };

	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

/* Reads a byte of @p: 0, or the signal that access raised. */
static int access_page(const char *p)
{
	int sig;

	if ((sig = sigsetjmp(t_jmp, 1)))
		return sig;
	t_armed = 1;
	(void)*(const volatile char *)p;
	t_armed = 0;
	return 0;
}

/*
 * Reads the page at @p and compares it with @expect (NULL: zeros).
 * Returns 0 (right), 1 (wrong bytes), SIGBUS or SIGSEGV.
 */
static int touch_page(const char *p, const char *expect)
{
	static const char zeros[H_PAGE];
	const char *volatile e = expect ? expect : zeros;
	volatile int differs;
	int sig = access_page(p);

	if (sig)
		return sig;
	/*
	 * A detach may come between the access and the compare: a fault
	 * there is caught too (unarmed, the handler returns and the compare
	 * faults again, forever).
	 */
	if ((sig = sigsetjmp(t_jmp, 1)))
		return sig;
	t_armed = 1;
	differs = memcmp(p, e, H_PAGE) ? 1 : 0;
	t_armed = 0;
	return differs;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Waits (bounded) for @pid and asserts it exited with @code. */
static void expect_exit(pid_t pid, int code)
{
	int status = h_wait_child(pid);

	h_assert_exit(status, code);
}

/* Waits (bounded) until the process behind @pidfd is gone. */
static void wait_gone(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	poll(&p, 1, H_TIMEOUT_MS);
}

/*
 * A whole segment reads like @data through a fresh attachment: no page of
 * the memfd became a zero page behind the daemon's back.
 */
static void assert_segment(struct upager *u, const char *name, const char *data,
			   size_t size)
{
	struct upager_attachment *a;
	char *map = h_attach(u, name, 0, &a);
	long diff = h_first_diff(map, data, size);

	ck_assert_msg(diff < 0,
		      "%s: byte %ld (page %ld) differs from the "
		      "source%s",
		      name, diff, diff / (long)H_PAGE,
		      map[diff & ~(long)(H_PAGE - 1)] == 0 ? " (zeros)" : "");
	ck_assert_int_eq(upager_detach(a), 0);
}

/* Detach racing threads that touch the mapping. */

struct toucher {
	const char *map;
	const char *data;
	size_t size;
	uint64_t seed;
	_Atomic bool *stop;
	_Atomic unsigned long *touched;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	uint64_t s = t->seed;

	while (!atomic_load(t->stop)) {
		size_t off = (xorshift(&s) % (t->size / H_PAGE)) * H_PAGE;
		int ret = touch_page(t->map + off, t->data + off);

		/* After the detach: SIGSEGV, nothing else. */
		if (ret == SIGSEGV)
			break;
		if (ret != 0) {
			fprintf(stderr, "page %zu: %s (code %d)%s\n",
				off / H_PAGE,
				ret == 1 ? "wrong bytes" : strsignal(ret),
				t_code,
				atomic_load(&detaching) ? " while detaching" :
							  "");
			_exit(10 + ret);
		}
		atomic_fetch_add(t->touched, 1);
	}
	return NULL;
}

/*
 * One round: attach, four threads touch random pages, detach while they
 * do.  The threads see the file's bytes until the detach, then SIGSEGV;
 * never zeros.
 */
static void __attribute__((noreturn))
detach_round(const char *sock, const char *data, size_t size,
	     unsigned int flags, unsigned int round)
{
	struct upager_attachment *a;
	struct upager *u = h_child_connect(sock);
	_Atomic bool stop = false;
	_Atomic unsigned long touched = 0;
	struct toucher t[4];
	pthread_t th[4];
	int ret;

	catch_faults();
	ret = upager_attach(u, "img", flags, &a);
	CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
	for (int i = 0; i < 4; i++) {
		t[i] = (struct toucher){
			.map = upager_attachment_addr(a),
			.data = data,
			.size = size,
			.seed = round * 4 + i + 1,
			.stop = &stop,
			.touched = &touched,
		};
		pthread_create(&th[i], NULL, toucher_main, &t[i]);
	}
	while (atomic_load(&touched) < 200 + 50 * round)
		sched_yield();
	atomic_store(&detaching, 1);
	ret = upager_detach(a);
	CHILD_CHECK(ret == 0, "detach: %s", strerror(-ret));
	atomic_store(&stop, true);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	upager_disconnect(u);
	_exit(EX_OK);
}

static void detach_race(unsigned int flags)
{
	const size_t size = 64 * H_MIB;
	struct h_daemon d;
	struct upager *u;
	char *data;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 101);
	for (unsigned int round = 0; round < 20; round++) {
		pid_t pid = h_fork();

		if (pid == 0)
			detach_round(d.sock, data, size, flags, round);
		expect_exit(pid, EX_OK);
	}
	assert_segment(u, "img", data, size);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}

START_TEST(test_detach_race)
{
	detach_race(0);
}
END_TEST

START_TEST(test_detach_race_rdonly)
{
	detach_race(UPAGER_ATTACH_RDONLY);
}
END_TEST

/*
 * Detach after mremap moved the attachment: the moved mapping goes (it is
 * the attachment), what the program mapped at the old address stays, and
 * a touch of the moved range afterwards cannot make a zero page.
 */
START_TEST(test_detach_after_mremap)
{
	const size_t size = 8 * H_MIB;
	struct h_daemon d;
	struct upager *u;
	char *data;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 102);
	pid = h_fork();
	if (pid == 0) {
		struct upager_attachment *a;
		struct upager *cu = h_child_connect(d.sock);
		unsigned char vec;
		char *map, *moved, *other;
		int ret;

		catch_faults();
		ret = upager_attach(cu, "img", 0, &a);
		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(a);
		CHILD_CHECK(touch_page(map, data) == 0, "first page");
		moved = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
		moved = mremap(map, size, size, MREMAP_MAYMOVE | MREMAP_FIXED,
			       moved);
		CHILD_CHECK(moved != MAP_FAILED, "mremap: %s", strerror(errno));
		other = mmap(map, H_PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		CHILD_CHECK(other == map, "mmap at the old address");
		other[0] = 0x42;
		CHILD_CHECK(touch_page(moved + H_MIB, data + H_MIB) == 0,
			    "moved range before the detach");
		ret = upager_detach(a);
		CHILD_CHECK(ret == 0, "detach: %s", strerror(-ret));
		CHILD_CHECK(other[0] == 0x42, "detach unmapped another mapping");
		CHILD_CHECK(mincore(moved, H_PAGE, &vec) < 0 && errno == ENOMEM,
			    "the moved attachment is still mapped");
		for (size_t off = 0; off < size; off += 64 * H_PAGE)
			CHILD_CHECK(touch_page(moved + off, data + off) ==
					    SIGSEGV,
				    "the detached range at %zu", off);
		upager_disconnect(cu);
		_exit(EX_OK);
	}
	expect_exit(pid, EX_OK);
	assert_segment(u, "img", data, size);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The daemon killed at a chosen point of a fork, in a process forked
 * before this test connected anywhere, so that its own pthread_atfork
 * handlers come before the library's (prepare handlers run in reverse
 * order of registration, child handlers in order).
 */
enum kill_point { KILL_IN_CHILD, KILL_IN_PREPARE };

static int kill_pidfd = -1;
static enum kill_point kill_at;
static bool kill_armed;

static void kill_daemon_now(void)
{
	int fd = kill_pidfd;

	if (!kill_armed)
		return;
	kill_armed = false;
	syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0);
	wait_gone(fd);
}

static void at_prepare(void)
{
	if (kill_at == KILL_IN_PREPARE)
		kill_daemon_now();
}

static void at_child(void)
{
	if (kill_at == KILL_IN_CHILD)
		kill_daemon_now();
}

/*
 * In the scenario process: attach the file segment, read its first part,
 * fork with the daemon killed at @at, then both sides read.  The filled
 * part reads right; the last page, never filled, gives SIGBUS: never
 * zeros.  Exits EX_OK.
 */
static void __attribute__((noreturn))
fork_kill_scenario(int in, enum kill_point at, const char *data, size_t size)
{
	char sock[300];
	struct upager_attachment *a;
	struct upager *u;
	pid_t dpid, child;
	size_t first = 2 * H_MIB, off;
	char *map;
	int ret, status;

	pthread_atfork(at_prepare, NULL, at_child);
	CHILD_CHECK(read(in, sock, sizeof(sock)) == sizeof(sock), "socket");
	CHILD_CHECK(read(in, &dpid, sizeof(dpid)) == sizeof(dpid), "pid");
	kill_pidfd = syscall(SYS_pidfd_open, dpid, 0);
	CHILD_CHECK(kill_pidfd >= 0, "pidfd_open: %s", strerror(errno));
	u = h_child_connect(sock);
	ret = upager_attach(u, "img", 0, &a);
	CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
	map = upager_attachment_addr(a);
	ret = h_read_check(map, data, first, &off);
	CHILD_CHECK(ret == H_READ_OK, "before: %d at %zu", ret, off);
	kill_at = at;
	kill_armed = true;
	child = fork();
	CHILD_CHECK(child >= 0, "fork: %s", strerror(errno));
	if (child == 0) {
		ret = h_read_check(map, data, first, &off);
		CHILD_CHECK(ret == H_READ_OK, "child, filled part: %d at %zu",
			    ret, off);
		ret = h_read_check(map + size - H_PAGE, data + size - H_PAGE,
				   H_PAGE, &off);
		CHILD_CHECK(ret == H_READ_SIGBUS, "child, last page: %s",
			    ret == H_READ_OK ? "read without a daemon" :
					       "wrong bytes (zeros?)");
		_exit(EX_OK);
	}
	CHILD_CHECK(waitpid(child, &status, 0) == child, "waitpid");
	CHILD_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == EX_OK,
		    "the forked child failed (%#x)", status);
	ret = h_read_check(map, data, first, &off);
	CHILD_CHECK(ret == H_READ_OK, "parent, filled part: %d at %zu", ret,
		    off);
	ret = h_read_check(map + size - H_PAGE, data + size - H_PAGE, H_PAGE,
			   &off);
	CHILD_CHECK(ret == H_READ_SIGBUS, "parent, last page: %s",
		    ret == H_READ_OK ? "read without a daemon" :
				       "wrong bytes (zeros?)");
	_exit(EX_OK);
}

static void fork_kill(enum kill_point at, unsigned int rounds)
{
	const size_t size = 64 * H_MIB;

	for (unsigned int round = 0; round < rounds; round++) {
		struct h_daemon d;
		struct upager *u;
		char *data;
		int go[2], memfd;
		pid_t pid;

		data = malloc(size);
		h_fill(data, size, 103 + round);
		ck_assert_int_eq(pipe(go), 0);
		pid = h_fork();
		if (pid == 0)
			fork_kill_scenario(go[0], at, data, size);
		h_daemon_start(&d);
		u = h_connect(&d);
		free(h_file_segment(&d, u, "img", size, 103 + round));
		memfd = h_open_memfd(d.pid, "img");
		ck_assert_int_eq(write(go[1], d.sock, sizeof(d.sock)),
				 sizeof(d.sock));
		ck_assert_int_eq(write(go[1], &d.pid, sizeof(d.pid)),
				 sizeof(d.pid));
		upager_disconnect(u);
		expect_exit(pid, EX_OK);
		/* the memfd got no zero page at the end */
		ck_assert_int_eq(lseek(memfd, size - H_PAGE, SEEK_DATA), -1);
		close(memfd);
		h_daemon_kill(&d);
		h_dir_remove(d.dir);
		close(go[0]);
		close(go[1]);
		free(data);
	}
}

/* The daemon dies after it read the fork event, before the child claimed
 * its userfaultfd. */
START_TEST(test_daemon_killed_before_claim)
{
	fork_kill(KILL_IN_CHILD, 3);
}
END_TEST

/* The daemon dies while the client is inside fork(), its locks held. */
START_TEST(test_daemon_killed_inside_fork)
{
	fork_kill(KILL_IN_PREPARE, 3);
}
END_TEST

/*
 * A read-only attachment of a zero segment, the daemon dead: pages it read
 * as zeros still show what a read-write attachment writes later.  (Far
 * from what it read before, beyond the daemon's read-ahead.)
 */
START_TEST(test_daemon_killed_rdonly_zero_live)
{
	const size_t size = 64 * H_MIB, at = 48 * H_MIB, len = 4 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *map, *patch;
	struct h_peer p;
	int memfd;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", size, -1, 0644);
	map = h_attach(u, "z", 0, &a);
	patch = malloc(len);
	h_fill(patch, len, 104);
	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *ra;
		struct upager *cu = h_child_connect(d.sock);
		char *rmap;
		size_t off;
		int ret = upager_attach(cu, "z", UPAGER_ATTACH_RDONLY, &ra);

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		rmap = upager_attachment_addr(ra);
		CHILD_CHECK(h_read_check(rmap, NULL, H_PAGE, &off) == H_READ_OK,
			    "first page before");
		h_peer_ready(&p, 'a');
		/* the daemon is dead: zeros */
		ret = h_read_check(rmap + at, NULL, len, &off);
		CHILD_CHECK(ret == H_READ_OK, "zeros after: %d at %zu", ret,
			    off);
		h_peer_ready(&p, 'b');
		/* the parent wrote them meanwhile */
		ret = h_read_check(rmap + at, patch, len, &off);
		CHILD_CHECK(ret == H_READ_OK, "the writer's bytes: %s at %zu",
			    ret == H_READ_DIFF ? "stale" : "SIGBUS", off);
		_exit(EX_OK);
	}
	h_peer_expect(&p, 'a');
	memfd = h_open_memfd(d.pid, "z");
	ck_assert_int_eq(lseek(memfd, at, SEEK_DATA), -1);
	close(memfd);
	h_daemon_kill(&d);
	h_peer_go(&p);
	h_peer_expect(&p, 'b');
	memcpy(map + at, patch, len);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), EX_OK);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_dir_remove(d.dir);
	free(patch);
}
END_TEST

/*
 * The daemon dies while threads fault at addresses that mremap moved the
 * attachment to: no thread hangs; each reads the file's bytes or gets
 * SIGBUS.  And the daemon dies with REMOVE events pending: the SIGBUS goes
 * to the faulting thread only, never to the process.
 */
struct streamer {
	const char *map;
	const char *data;
	size_t size;
	uint64_t seed;
	_Atomic bool *dead;
	bool dontneed; /* MADV_DONTNEED its own page in a loop */
	int after;     /* touches after the daemon died */
	int sigbus;
};

static void *streamer_main(void *arg)
{
	struct streamer *t = arg;
	uint64_t s = t->seed;

	while (t->after < 200) {
		size_t off = (xorshift(&s) % (t->size / H_PAGE)) * H_PAGE;
		bool dead = atomic_load(t->dead);
		int ret;

		if (t->dontneed) {
			madvise((void *)t->map, H_PAGE, MADV_DONTNEED);
			ret = touch_page(t->map, t->data);
		} else {
			ret = touch_page(t->map + off, t->data + off);
		}
		if (ret == 1 || ret == SIGSEGV)
			_exit(20 + ret);
		/* (A SIGBUS may come before the child hears of the kill:
		 * the daemon died between the flag and the touch.) */
		if (ret == SIGBUS)
			t->sigbus++;
		if (dead)
			t->after++;
	}
	return NULL;
}

static void __attribute__((noreturn))
moved_scenario(const char *sock, const char *data, size_t size, struct h_peer *p)
{
	struct upager_attachment *a;
	struct upager *u = h_child_connect(sock);
	_Atomic bool dead = false;
	struct streamer t[4];
	pthread_t th[4];
	char *map, *moved;
	int ret, sigbus = 0;

	catch_faults();
	ret = upager_attach(u, "img", 0, &a);
	CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
	map = upager_attachment_addr(a);
	CHILD_CHECK(touch_page(map, data) == 0, "first page");
	moved = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	moved = mremap(map, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, moved);
	CHILD_CHECK(moved != MAP_FAILED, "mremap: %s", strerror(errno));
	for (int i = 0; i < 4; i++) {
		t[i] = (struct streamer){
			.map = moved,
			.data = data,
			.size = size,
			.seed = 7 + i,
			.dead = &dead,
			.dontneed = i == 3,
		};
		pthread_create(&th[i], NULL, streamer_main, &t[i]);
	}
	h_peer_ready(p, 's');
	atomic_store(&dead, true);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		sigbus += t[i].sigbus;
	}
	CHILD_CHECK(atomic_load(&stray_signals) == 0,
		    "%d signals not caused by the thread's own access",
		    atomic_load(&stray_signals));
	CHILD_CHECK(sigbus > 0, "no SIGBUS after the daemon died");
	_exit(EX_OK);
}

START_TEST(test_daemon_killed_moved_faults)
{
	const size_t size = 64 * H_MIB;

	for (int round = 0; round < 3; round++) {
		struct upager_segment_info info;
		struct h_daemon d;
		struct upager *u;
		struct h_peer p;
		char *data;

		h_daemon_start(&d);
		u = h_connect(&d);
		data = h_file_segment(&d, u, "img", size, 105 + round);
		if (h_peer_fork(&p) == 0)
			moved_scenario(d.sock, data, size, &p);
		h_peer_expect(&p, 's');
		H_WAIT_STAT(u, "img", info, info.faults_missing > 300);
		upager_disconnect(u);
		h_daemon_kill(&d);
		h_peer_go(&p);
		ck_assert_int_eq(h_peer_end(&p), EX_OK);
		h_dir_remove(d.dir);
		free(data);
	}
}
END_TEST

/*
 * mremap that grows part of an attachment, moved or in place into a hole,
 * and the old range after MREMAP_DONTUNMAP: the new pages read the file's
 * bytes, as they would under the kernel; past the segment's end, SIGBUS.
 */
START_TEST(test_mremap_grow)
{
	const size_t size = 16 * H_MIB, mib = H_MIB;
	struct h_daemon d;
	struct upager *u;
	char *data;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 106);
	pid = h_fork();
	if (pid == 0) {
		struct upager_attachment *a;
		struct upager *cu = h_child_connect(d.sock);
		char *map, *grown, *moved;
		size_t off;
		int ret;

		catch_faults();
		ret = upager_attach(cu, "img", 0, &a);
		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(a);
		CHILD_CHECK(touch_page(map, data) == 0, "first page");

		/* [0, 2M) grows to 4M: it must move (the rest follows it) */
		grown = mremap(map, 2 * mib, 4 * mib, MREMAP_MAYMOVE);
		CHILD_CHECK(grown != MAP_FAILED && grown != map, "grow moved");
		ret = h_read_check(grown, data, 4 * mib, &off);
		CHILD_CHECK(ret == H_READ_OK, "grown and moved: %d at %zu", ret,
			    off);

		/* [8M, 10M) grows in place into the hole at [10M, 12M) */
		CHILD_CHECK(munmap(map + 10 * mib, 2 * mib) == 0, "munmap");
		ret = mremap(map + 8 * mib, 2 * mib, 4 * mib, 0) ==
		      map + 8 * mib;
		CHILD_CHECK(ret, "grow in place: %s", strerror(errno));
		ret = h_read_check(map + 10 * mib, data + 10 * mib, 2 * mib,
				   &off);
		CHILD_CHECK(ret == H_READ_OK, "grown in place: %d at %zu", ret,
			    off);

		/* [12M, 16M) grows past the segment's end */
		grown = mremap(map + 12 * mib, 4 * mib, 4 * mib + H_PAGE,
			       MREMAP_MAYMOVE);
		CHILD_CHECK(grown != MAP_FAILED, "grow past the end");
		CHILD_CHECK(touch_page(grown + 4 * mib, NULL) == SIGBUS,
			    "past the end: no SIGBUS");
		ret = h_read_check(grown, data + 12 * mib, 4 * mib, &off);
		CHILD_CHECK(ret == H_READ_OK, "before the end: %d at %zu", ret,
			    off);

		/* [4M, 6M) moves, leaving its old range mapped */
		moved = mremap(map + 4 * mib, 2 * mib, 2 * mib,
			       MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
		CHILD_CHECK(moved != MAP_FAILED, "DONTUNMAP: %s",
			    strerror(errno));
		ret = h_read_check(map + 4 * mib, data + 4 * mib, mib, &off);
		CHILD_CHECK(ret == H_READ_OK, "old range: %d at %zu", ret, off);
		ret = h_read_check(moved + mib, data + 5 * mib, mib, &off);
		CHILD_CHECK(ret == H_READ_OK, "new range: %d at %zu", ret, off);
		ret = h_read_check(map + 5 * mib, data + 5 * mib, mib, &off);
		CHILD_CHECK(ret == H_READ_OK, "old range, after: %d at %zu",
			    ret, off);
		_exit(EX_OK);
	}
	expect_exit(pid, EX_OK);
	assert_segment(u, "img", data, size);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * A fill whose copy meets a pending event keeps what it read: streaming
 * 64 MiB while another thread MADV_DONTNEEDs one page in a loop reads the
 * file once.
 */
struct dontneeder {
	char *page;
	_Atomic bool *stop;
	_Atomic bool started;
};

static void *dontneed_main(void *arg)
{
	struct dontneeder *t = arg;

	while (!atomic_load(t->stop)) {
		madvise(t->page, H_PAGE, MADV_DONTNEED);
		atomic_store(&t->started, true);
	}
	return NULL;
}

START_TEST(test_event_during_fill_reads_once)
{
	const size_t size = 64 * H_MIB;
	struct upager_segment_info info;
	struct upager_daemon_stats st;
	struct upager_attachment *a;
	struct dontneeder t;
	_Atomic bool stop = false;
	struct h_daemon d;
	struct upager *u;
	pthread_t th;
	char *data, *map;
	size_t off;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 107);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(h_read_check(map, data, H_PAGE, &off), H_READ_OK);
	t = (struct dontneeder){ .page = map, .stop = &stop };
	pthread_create(&th, NULL, dontneed_main, &t);
	/* (a slow thread start must not let the whole read go by first) */
	while (!atomic_load(&t.started))
		sched_yield();
	ck_assert_int_eq(h_read_check(map, data, size, &off), H_READ_OK);
	atomic_store(&stop, true);
	pthread_join(th, NULL);
	info = h_stat(u, "img");
	ck_assert_msg(info.bytes_read == size,
		      "read %llu bytes from the source for a %zu-byte file",
		      (unsigned long long)info.bytes_read, size);
	/* counted as the daemon handles them: maybe a moment later */
	H_WAIT_STATS(u, st, st.events_remove > 0);
	ck_assert_uint_gt(st.events_remove, 0);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The library never holds descriptors 0, 1 or 2, even when the program
 * started with them closed: they stay free for the program.
 */
START_TEST(test_library_fds_above_stdio)
{
	struct h_daemon d;
	struct upager *u;
	char *data;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", 4 * H_MIB, 108);
	pid = h_fork();
	if (pid == 0) {
		struct upager_attachment *a, *r;
		struct upager *cu;
		size_t off;
		int ret;

		close(0);
		close(1);
		close(2);
		ret = upager_connect(d.sock, &cu);
		if (ret)
			_exit(40);
		if (upager_attach(cu, "img", 0, &a) ||
		    upager_attach(cu, "img", UPAGER_ATTACH_RDONLY, &r))
			_exit(41);
		for (int fd = 0; fd < 3; fd++)
			if (fcntl(fd, F_GETFD) >= 0)
				_exit(42 + fd);
		if (h_read_check(upager_attachment_addr(r), data, 4 * H_MIB,
				 &off) != H_READ_OK)
			_exit(45);
		upager_detach(a);
		upager_detach(r);
		upager_disconnect(cu);
		_exit(EX_OK);
	}
	expect_exit(pid, EX_OK);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Every wait of the library is bounded: a daemon that stopped answering
 * (SIGSTOP) makes connect fail with ETIMEDOUT after $UPAGER_TIMEOUT_MS.
 */
START_TEST(test_library_wait_bounded)
{
	struct h_daemon d;
	struct upager *u = NULL;
	int ret;

	h_daemon_start(&d);
	ck_assert_int_eq(kill(d.pid, SIGSTOP), 0);
	setenv("UPAGER_TIMEOUT_MS", "300", 1);
	ret = upager_connect(d.sock, &u);
	unsetenv("UPAGER_TIMEOUT_MS");
	ck_assert_int_eq(ret, -ETIMEDOUT);
	ck_assert_int_eq(errno, ETIMEDOUT);
	ck_assert_int_eq(kill(d.pid, SIGCONT), 0);
	u = h_connect(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Swapping blocks of an attachment with mremap while two threads, each
 * pinned to its own CPU, fault on it: the daemon puts a reader of the uffd
 * on each CPU, so events and copies come from two workers at once.  A copy
 * that landed at an address a swap had just given to another block would
 * put one block's bytes into another's frames; the segment read through a
 * fresh attachment after the loop says whether any did.  MADV_REMOVE now
 * and then punches frames out, so that faults (and remove events) go on.
 */
#define SWAP_BLOCK (1u << 20)
#define SWAP_BLOCKS 32
#define SWAP_ROUNDS 400

struct swap_toucher {
	char *map;
	unsigned int cpu;
	uint64_t seed;
	_Atomic bool *stop;
	_Atomic unsigned long *touched;
};

static void *swap_toucher_main(void *arg)
{
	struct swap_toucher *t = arg;
	uint64_t s = t->seed;
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(t->cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	while (!atomic_load(t->stop)) {
		size_t off = (xorshift(&s) %
			      (SWAP_BLOCKS * (SWAP_BLOCK / H_PAGE))) *
			     H_PAGE;

		/* A block in flight is a hole for a moment: SIGSEGV. */
		access_page(t->map + off);
		atomic_fetch_add(t->touched, 1);
	}
	return NULL;
}

START_TEST(test_remap_swap_two_readers)
{
	const size_t size = (size_t)SWAP_BLOCKS * SWAP_BLOCK;
	unsigned int blk[SWAP_BLOCKS], ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	_Atomic unsigned long touched = 0;
	_Atomic bool stop = false;
	struct upager_daemon_stats st;
	struct swap_toucher t[2];
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	pthread_t th[2];
	uint64_t s = 7;
	char *data, *map;

	catch_faults();
	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 71);
	map = h_attach(u, "img", 0, &a);
	for (unsigned int i = 0; i < SWAP_BLOCKS; i++)
		blk[i] = i;
	for (int i = 0; i < 2; i++) {
		t[i] = (struct swap_toucher){ .map = map,
					      .cpu = ncpu > 1 ? i : 0,
					      .seed = 11 + i,
					      .stop = &stop,
					      .touched = &touched };
		ck_assert_int_eq(pthread_create(&th[i], NULL, swap_toucher_main,
						&t[i]),
				 0);
	}
	for (int r = 0; r < SWAP_ROUNDS; r++) {
		unsigned int i = xorshift(&s) % SWAP_BLOCKS;
		unsigned int j = xorshift(&s) % SWAP_BLOCKS, k;
		char *bi = map + (size_t)i * SWAP_BLOCK;
		char *bj = map + (size_t)j * SWAP_BLOCK;
		char *tmp;

		if (i == j) {
			/* Punch it out: the next touches fill it again. */
			ck_assert_int_eq(madvise(bi, SWAP_BLOCK, MADV_REMOVE),
					 0);
			continue;
		}
		tmp = mmap(NULL, SWAP_BLOCK, PROT_NONE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ck_assert_ptr_ne(tmp, MAP_FAILED);
		ck_assert_ptr_eq(mremap(bi, SWAP_BLOCK, SWAP_BLOCK,
					MREMAP_MAYMOVE | MREMAP_FIXED, tmp),
				 tmp);
		ck_assert_ptr_eq(mremap(bj, SWAP_BLOCK, SWAP_BLOCK,
					MREMAP_MAYMOVE | MREMAP_FIXED, bi),
				 bi);
		ck_assert_ptr_eq(mremap(tmp, SWAP_BLOCK, SWAP_BLOCK,
					MREMAP_MAYMOVE | MREMAP_FIXED, bj),
				 bj);
		k = blk[i];
		blk[i] = blk[j];
		blk[j] = k;
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	ck_assert_uint_gt(atomic_load(&touched), 0);
	/* Every block where the swaps left it, every frame its own. */
	for (unsigned int i = 0; i < SWAP_BLOCKS; i++)
		ck_assert_msg(h_first_diff(map + (size_t)i * SWAP_BLOCK,
					   data + (size_t)blk[i] * SWAP_BLOCK,
					   SWAP_BLOCK) < 0,
			      "slot %u (block %u) differs", i, blk[i]);
	st = h_stats(u);
	ck_assert_int_eq(atomic_load(&stray_signals), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	assert_segment(u, "img", data, size);
	/* Both CPUs' workers read the uffd (when the daemon has two). */
	if (ncpu > 1)
		ck_assert_msg(st.pollers_added > 0,
			      "the uffd never got a second reader");
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * One thread, pinned to one CPU then to another: the uffd's home follows
 * it (a worker on the faulting thread's CPU reads the faults), and the
 * bytes are right throughout.
 */
START_TEST(test_home_follows_thread)
{
	const size_t size = 16 * H_MIB;
	unsigned int ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct upager_daemon_stats st0, st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	cpu_set_t set, old;
	char *data, *map;

	if (ncpu < 2)
		return;
	pthread_getaffinity_np(pthread_self(), sizeof(old), &old);
	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 5);
	map = h_attach(u, "img", 0, &a);
	st0 = h_stats(u);
	for (unsigned int pass = 0; pass < 2; pass++) {
		CPU_ZERO(&set);
		CPU_SET(pass, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		/* Scattered pages, one fault each, for long enough to be
		 * seen (the frames punched out after each sweep). */
		for (uint64_t end = h_now_ms() + 300; h_now_ms() < end;) {
			for (size_t i = 0; i < size / H_PAGE; i++) {
				size_t pg = (i * 7919) % (size / H_PAGE);

				ck_assert_int_eq(memcmp(map + pg * H_PAGE,
							data + pg * H_PAGE, 64),
						 0);
			}
			ck_assert_int_eq(madvise(map, size, MADV_REMOVE), 0);
		}
	}
	pthread_setaffinity_np(pthread_self(), sizeof(old), &old);
	st = h_stats(u);
	ck_assert_msg(st.home_moves > st0.home_moves,
		      "the home never moved (%llu)",
		      (unsigned long long)st.home_moves);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

static Suite *hardening_suite(void)
{
	Suite *s = h_suite("hardening");
	TCase *tc;

	tc = h_tcase(s, "detach",
		     H_NEED_BASE | UFFD_FEATURE_EVENT_REMAP |
			     UFFD_FEATURE_EVENT_UNMAP);
	tcase_add_test(tc, test_detach_race);
	tcase_add_test(tc, test_detach_race_rdonly);
	tcase_add_test(tc, test_detach_after_mremap);

	tc = h_tcase(s, "daemon-death",
		     H_NEED_BASE | UFFD_FEATURE_POISON |
			     UFFD_FEATURE_EVENT_FORK |
			     UFFD_FEATURE_EVENT_REMOVE |
			     UFFD_FEATURE_EVENT_REMAP |
			     UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_THREAD_ID);
	tcase_add_test(tc, test_daemon_killed_before_claim);
	tcase_add_test(tc, test_daemon_killed_inside_fork);
	tcase_add_test(tc, test_daemon_killed_rdonly_zero_live);
	tcase_add_test(tc, test_daemon_killed_moved_faults);

	tc = h_tcase(s, "events",
		     H_NEED_BASE | UFFD_FEATURE_EVENT_REMAP |
			     UFFD_FEATURE_EVENT_UNMAP |
			     UFFD_FEATURE_EVENT_REMOVE);
	tcase_add_test(tc, test_mremap_grow);
	tcase_add_test(tc, test_event_during_fill_reads_once);

	tc = h_tcase(s, "dispatch",
		     H_NEED_BASE | UFFD_FEATURE_EVENT_REMAP |
			     UFFD_FEATURE_EVENT_UNMAP |
			     UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_THREAD_ID);
	tcase_add_test(tc, test_remap_swap_two_readers);
	tcase_add_test(tc, test_home_follows_thread);

	tc = h_tcase(s, "library", H_NEED_BASE);
	tcase_add_test(tc, test_library_fds_above_stdio);
	tcase_add_test(tc, test_library_wait_bounded);
	return s;
}

int main(void)
{
	h_main(hardening_suite());
}
