// SPDX-License-Identifier: MIT
/*
 * The daemon runs as root and serves every local user: what another user
 * (uid 65534 here) must not be able to do to it or through it.  Each test
 * plays the attacker as an unprivileged process against a root daemon and
 * checks that the attack fails and that everyone else is still served,
 * byte for byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "harness.h"
#include "proto.h"
#include "uffd.h"

#define NOBODY 65534

/* snprintf into an array, asserting it fits */
#define FMT(buf, ...)                                               \
	ck_assert_int_lt(snprintf((buf), sizeof(buf), __VA_ARGS__), \
			 (int)sizeof(buf))

static void become_nobody(void)
{
	h_become(NOBODY, NOBODY, NULL, 0);
}

/* Waits (bounded) for @pid and asserts it exited with @code. */
static void expect_exit(pid_t pid, int code)
{
	int status = h_wait_child(pid);

	h_assert_exit(status, code);
}

/* This process's first userfaultfd, from /proc/self/fd; -1 if none. */
static int find_uffd(void)
{
	char path[64], link[64];

	for (int fd = 3; fd < 1024; fd++) {
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		if (!strcmp(link, "anon_inode:[userfaultfd]"))
			return fd;
	}
	return -1;
}

/* A raw REGISTER of [addr, addr + len) of segment @seg_id through @uffd. */
static int raw_register(int sock, uint64_t seg_id, uint64_t addr, uint64_t len,
			int uffd)
{
	struct upg_register m;
	int fd;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_REGISTER, sizeof(m), 3);
	m.seg_id = seg_id;
	m.addr = addr;
	m.len = len;
	m.uffd_ioctls = ~0ull;
	return h_child_request(sock, &m, sizeof(m), uffd, &fd);
}

/* A raw ATTACH of @name: its status; the memfd in @memfd, the id in @id. */
static int raw_attach(int sock, const char *name, int *memfd, uint64_t *id)
{
	struct upg_name m;
	int ret;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_ATTACH, sizeof(m), 2);
	snprintf(m.name, sizeof(m.name), "%s", name);
	ret = h_child_request(sock, &m, sizeof(m), -1, memfd);
	/* (the reply's body is not kept by h_child_request: stat tells) */
	*id = 0;
	return ret;
}

/*
 * Item 2: a uffd registered twice is refused, and a client that clears
 * O_NONBLOCK on its uffd and steals its own fault messages (so that a
 * blocking read in the daemon would wait for ever) stalls nobody: another
 * user reads a file segment through, and the daemon stops on SIGTERM.
 */
static void *steal_main(void *arg)
{
	int uffd = *(int *)arg;
	struct uffd_msg m;

	for (;;)
		if (read(uffd, &m, sizeof(m)) < 0 && errno != EINTR &&
		    errno != EAGAIN)
			return NULL;
}

static void *touch_main(void *arg)
{
	volatile char *p = arg;

	for (size_t off = 0;; off = (off + 4096 * 7) % (8 * H_MIB))
		(void)p[off];
	return NULL;
}

START_TEST(test_uffd_once_never_blocks)
{
	const size_t size = 16 * H_MIB;
	struct h_daemon d;
	struct upager *u;
	struct h_peer attacker;
	char *data;
	pid_t reader;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 401);
	if (h_peer_fork(&attacker) == 0) {
		struct upager_create_opts o = { .size = 8 * H_MIB,
						.source_fd = -1 };
		struct upager_segment_info info;
		struct upager_attachment *a;
		struct upager *cu;
		pthread_t th;
		char *map, *second;
		int uffd, sock, memfd, ret;
		uint64_t id;

		become_nobody();
		cu = h_child_connect(d.sock);
		CHILD_CHECK(upager_create(cu, "mine", &o) == 0, "create");
		CHILD_CHECK(upager_attach(cu, "mine", 0, &a) == 0, "attach");
		map = upager_attachment_addr(a);
		CHILD_CHECK(upager_stat(cu, "mine", &info) == 0, "stat");
		uffd = find_uffd();
		CHILD_CHECK(uffd >= 0, "no uffd");
		/* the same uffd, a second mapping, a second registration */
		sock = h_child_raw_hello(d.sock);
		ret = raw_attach(sock, "mine", &memfd, &id);
		CHILD_CHECK(ret == 0 && memfd >= 0, "raw attach: %d", ret);
		second = mmap(NULL, 8 * H_MIB, PROT_READ | PROT_WRITE,
			      MAP_SHARED, memfd, 0);
		CHILD_CHECK(second != MAP_FAILED, "mmap");
		ret = uffd_register(uffd, (uintptr_t)second, 8 * H_MIB,
				    UFFDIO_REGISTER_MODE_MISSING, NULL);
		CHILD_CHECK(ret == 0, "register: %s", strerror(-ret));
		ret = raw_register(sock, info.id, (uintptr_t)second, 8 * H_MIB,
				   uffd);
		CHILD_CHECK(ret == -EBUSY, "the uffd served twice: %d", ret);
		/* blocking, and its messages stolen */
		CHILD_CHECK(fcntl(uffd, F_SETFL, 0) == 0, "F_SETFL");
		pthread_create(&th, NULL, steal_main, &uffd);
		for (int i = 0; i < 2; i++)
			pthread_create(&th, NULL, touch_main, map);
		h_peer_ready(&attacker, 'r');
		_exit(0);
	}
	h_peer_expect(&attacker, 'r');
	/* another user, meanwhile: served */
	for (int round = 0; round < 3; round++) {
		reader = h_fork();
		if (reader == 0) {
			struct upager_attachment *ra;
			struct upager *ru = h_child_connect(d.sock);
			size_t off;
			int ret = upager_attach(ru, "img", UPAGER_ATTACH_RDONLY,
						&ra);

			CHILD_CHECK(ret == 0, "attach: %d", ret);
			ret = h_read_check(upager_attachment_addr(ra), data,
					   size, &off);
			CHILD_CHECK(ret == H_READ_OK, "read: %d at %zu", ret,
				    off);
			upager_detach(ra);
			upager_disconnect(ru);
			_exit(0);
		}
		expect_exit(reader, 0);
		ck_assert_int_eq(upager_delete(u, "img", UPAGER_DELETE_FORCE),
				 0);
		free(data);
		data = h_file_segment(&d, u, "img", size, 402 + round);
	}
	h_peer_go(&attacker);
	ck_assert_int_eq(h_peer_end(&attacker), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d); /* SIGTERM still stops it */
}
END_TEST

/*
 * Item 3: a forked child's uffd goes only to its own process, proven.
 * Two children of an attached parent, forked without the library's
 * handlers (so neither claimed): one that became another user is refused
 * even its own; a same-user sibling naming an address every sibling maps
 * (the segment) proves nothing and is refused; a probe page of its own
 * gets its own uffd.
 */
START_TEST(test_claim_needs_proof)
{
	const size_t size = 4 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	int go[2];
	pid_t v, x;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 403);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(memcmp(map, data, H_PAGE), 0);
	ck_assert_int_eq(pipe(go), 0);
	/* the victim: a child that only keeps its mapping */
	v = syscall(SYS_fork);
	if (v == 0) {
		char c;

		if (read(go[0], &c, 1) < 0)
			_exit(1);
		_exit(memcmp(map + H_PAGE, data + H_PAGE, H_PAGE) ? 1 : 0);
	}
	ck_assert_int_gt(v, 0);
	for (int round = 0; round < 2; round++) {
		x = syscall(SYS_fork);
		if (x == 0) {
			struct upg_claim m;
			void *probe;
			int sock, fd, ret;

			if (round == 0)
				become_nobody();
			sock = h_child_raw_hello(d.sock);
			memset(&m, 0, sizeof(m));
			proto_hdr_init(&m.h, UPG_CLAIM, sizeof(m), 2);
			/* the daemon's first attachment: the parent's */
			m.parent_attach_id = 1;
			m.probe_addr = (uintptr_t)map;
			ret = h_child_request(sock, &m, sizeof(m), -1, &fd);
			if (round == 0) {
				CHILD_CHECK(ret < 0 && fd < 0,
					    "another user "
					    "got a uffd: %d, fd %d",
					    ret, fd);
				_exit(0);
			}
			CHILD_CHECK(ret == -EPERM && fd < 0,
				    "a probe every "
				    "sibling maps: %d, fd %d",
				    ret, fd);
			/* a page mapped after the fork: the sibling has
			 * nothing there */
			probe = mmap(NULL, H_PAGE, PROT_READ,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHILD_CHECK(probe != MAP_FAILED, "probe");
			m.h.seq = 3;
			m.probe_addr = (uintptr_t)probe;
			ret = h_child_request(sock, &m, sizeof(m), -1, &fd);
			CHILD_CHECK(ret == 0 && fd >= 0, "its own probe: %d",
				    ret);
			_exit(0);
		}
		ck_assert_int_gt(x, 0);
		expect_exit(x, 0);
	}
	h_send(go[1], 'g');
	expect_exit(v, 0);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Item 4: a forked child reconnects only to the daemon its parent
 * connected to.  The socket path is re-taken by another user's listener;
 * the child tells it nothing (not one byte) and is served all the same by
 * its daemon, through the fork event.
 */
START_TEST(test_child_trusts_its_daemon)
{
	const size_t size = 8 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char moved[320], *data, *map;
	struct h_peer fake;
	uint64_t got;
	pid_t child;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 404);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(memcmp(map, data, H_PAGE), 0);
	snprintf(moved, sizeof(moved), "%s.moved", d.sock);
	ck_assert_int_eq(rename(d.sock, moved), 0);
	if (h_peer_fork(&fake) == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		uint64_t bytes = 0;
		int ls;

		/* bound by root (the test's directory is root's), listening
		 * as the other user: the peer credentials are listen()'s */
		ls = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		strcpy(sa.sun_path, d.sock);
		CHILD_CHECK(bind(ls, (struct sockaddr *)&sa, sizeof(sa)) == 0,
			    "bind: %s", strerror(errno));
		chmod(d.sock, 0666);
		become_nobody();
		CHILD_CHECK(listen(ls, 8) == 0, "listen: %s", strerror(errno));
		h_send(fake.tx, 'l');
		/* until the parent's go */
		for (;;) {
			struct pollfd p[2] = { { .fd = ls, .events = POLLIN },
					       { .fd = fake.rx,
						 .events = POLLIN } };
			char buf[UPG_MSG_MAX];

			poll(p, 2, H_TIMEOUT_MS);
			if (p[1].revents)
				break;
			if (p[0].revents & POLLIN) {
				int cs = accept(ls, NULL, NULL);
				struct pollfd q = { .fd = cs, .events = POLLIN };
				ssize_t n;

				while (poll(&q, 1, 500) == 1 &&
				       (n = recv(cs, buf, sizeof(buf), 0)) > 0)
					bytes += n;
				close(cs);
			}
		}
		h_send_u64(fake.tx, bytes);
		_exit(0);
	}
	h_peer_expect(&fake, 'l');
	child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		size_t off;
		int ret = h_read_check(map, data, size, &off);

		_exit(ret == H_READ_OK ? 0 : 1);
	}
	expect_exit(child, 0);
	h_peer_go(&fake);
	got = h_recv_u64(fake.rx);
	ck_assert_int_eq(h_peer_end(&fake), 0);
	ck_assert_msg(got == 0,
		      "the child sent %llu bytes to another user's "
		      "socket",
		      (unsigned long long)got);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	ck_assert_int_eq(rename(moved, d.sock), 0);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Item 5: the daemon works in no directory another user can swap things
 * in, and sets its socket's mode without following a path.
 */
static void run_daemon_at(const char *sock, struct h_run *r)
{
	const char *argv[] = { h_upagerd(), "--socket", sock, "--foreground",
			       NULL };

	h_run(argv, NULL, 0, r);
}

START_TEST(test_socket_directory)
{
	static const struct {
		const char *dir;
		mode_t mode;
		uid_t owner;
		const char *why;
	} bad[] = {
		{ "open", 0777, 0, "writable by other users" },
		{ "theirs", 0755, NOBODY, "belongs to another user" },
	};
	char path[512], real[512];
	struct h_daemon d;
	struct h_run r;
	struct stat st;
	struct upager *u;

	h_daemon_init(&d);
	/* a symlink for a directory */
	FMT(real, "%s/real", d.dir);
	ck_assert_int_eq(mkdir(real, 0755), 0);
	FMT(path, "%s/link", d.dir);
	ck_assert_int_eq(symlink(real, path), 0);
	FMT(path, "%s/link/s.sock", d.dir);
	run_daemon_at(path, &r);
	h_assert_exit(r.status, 1);
	ck_assert_msg(strstr(r.err, "symbolic link"), "stderr: %s", r.err);
	h_run_free(&r);
	FMT(path, "%s/s.sock", real);
	ck_assert_int_eq(lstat(path, &st), -1);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		FMT(real, "%s/%s", d.dir, bad[i].dir);
		ck_assert_int_eq(mkdir(real, 0755), 0);
		ck_assert_int_eq(chmod(real, bad[i].mode), 0);
		ck_assert_int_eq(chown(real, bad[i].owner, bad[i].owner), 0);
		FMT(path, "%s/s.sock", real);
		run_daemon_at(path, &r);
		h_assert_exit(r.status, 1);
		ck_assert_msg(strstr(r.err, bad[i].why), "%s: stderr: %s",
			      bad[i].dir, r.err);
		h_run_free(&r);
		ck_assert_int_eq(lstat(path, &st), -1);
	}
	/* a sticky world-writable directory (/tmp's kind) is fine, and the
	 * socket is 0666 */
	FMT(real, "%s/sticky", d.dir);
	ck_assert_int_eq(mkdir(real, 0755), 0);
	ck_assert_int_eq(chmod(real, 01777), 0);
	FMT(d.sock, "%s/s.sock", real);
	h_daemon_restart(&d);
	ck_assert_int_eq(lstat(d.sock, &st), 0);
	ck_assert_msg(S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0666,
		      "socket mode %o", st.st_mode);
	u = h_connect(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Item 8: a registration whose end wraps past 2^64, and a uffd that never
 * completed UFFDIO_API, are refused; the owner still deletes the segment.
 */
START_TEST(test_register_bogus)
{
	struct h_daemon d;
	struct upager *u;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	pid = h_fork();
	if (pid == 0) {
		struct upager_create_opts o = { .size = H_MIB, .source_fd = -1 };
		struct upager_segment_info info;
		struct upager *cu;
		int sock, memfd, raw, ret;
		uint64_t id;
		void *map;

		become_nobody();
		cu = h_child_connect(d.sock);
		CHILD_CHECK(upager_create(cu, "n", &o) == 0, "create");
		CHILD_CHECK(upager_stat(cu, "n", &info) == 0, "stat");
		sock = h_child_raw_hello(d.sock);
		ret = raw_attach(sock, "n", &memfd, &id);
		CHILD_CHECK(ret == 0 && memfd >= 0, "attach: %d", ret);
		map = mmap(NULL, H_MIB, PROT_READ | PROT_WRITE, MAP_SHARED,
			   memfd, 0);
		CHILD_CHECK(map != MAP_FAILED, "mmap");
		/* no UFFDIO_API on it */
		raw = syscall(SYS_userfaultfd,
			      O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
		CHILD_CHECK(raw >= 0, "userfaultfd: %s", strerror(errno));
		ret = raw_register(sock, info.id, (uintptr_t)map, H_MIB, raw);
		CHILD_CHECK(ret == -EINVAL, "a uffd without API: %d", ret);
		/* a range ending past 2^64 */
		{
			struct uffdio_api api = {
				.api = UFFD_API,
				.features = UFFD_FEATURE_MISSING_SHMEM,
			};

			CHILD_CHECK(ioctl(raw, UFFDIO_API, &api) == 0, "API");
		}
		ret = raw_register(sock, info.id, -(uint64_t)H_PAGE, H_MIB, raw);
		CHILD_CHECK(ret == -EINVAL, "a wrapping range: %d", ret);
		CHILD_CHECK(upager_stat(cu, "n", &info) == 0 &&
				    info.nr_attachments == 0,
			    "attachments: %u", info.nr_attachments);
		ret = upager_delete(cu, "n", 0);
		CHILD_CHECK(ret == 0, "the owner's plain delete: %d", ret);
		_exit(0);
	}
	expect_exit(pid, 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *security_suite(void)
{
	Suite *s = h_suite("security");
	TCase *tc;

	tc = h_tcase(s, "uffd", H_NEED_BASE);
	tcase_add_test(tc, test_uffd_once_never_blocks);
	tcase_add_test(tc, test_register_bogus);

	tc = h_tcase(s, "fork", H_NEED_BASE | UFFD_FEATURE_EVENT_FORK);
	tcase_add_test(tc, test_claim_needs_proof);
	tcase_add_test(tc, test_child_trusts_its_daemon);

	tc = h_tcase(s, "socket", H_NEED_DAEMON);
	tcase_add_test(tc, test_socket_directory);
	return s;
}

int main(void)
{
	if (geteuid() != 0) {
		fprintf(stderr, "security: needs root to play another user\n");
		return 77;
	}
	h_main(security_suite());
}
