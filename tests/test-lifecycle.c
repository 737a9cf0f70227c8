// SPDX-License-Identifier: MIT
/*
 * The daemon's life: SIGTERM with clients attached, one daemon per socket,
 * a stale socket replaced, a path that is not a socket left alone; and the
 * client library's own life (connect, attach, detach, disconnect).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"

/*
 * SIGTERM while a client is attached: the daemon exits 0 and removes its
 * socket; the client keeps its written bytes and reads zeros elsewhere.
 */
START_TEST(test_sigterm_with_client_attached)
{
	const size_t size = 4 * H_MIB, wlen = H_MIB;
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	struct stat st;
	char *patch;
	struct h_peer p;

	h_daemon_start(&d);
	patch = malloc(wlen);
	h_fill(patch, wlen, 81);
	u = h_connect(&d);
	h_create(u, "z", size, -1, 0);

	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *ca;
		struct upager *cu;
		char *map;
		long diff;
		int ret;

		cu = h_child_connect(d.sock);
		ret = upager_attach(cu, "z", 0, &ca);
		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(ca);
		memcpy(map, patch, wlen);
		h_peer_ready(&p, 'a');
		/* the daemon is gone: our bytes, zeros where nobody wrote */
		diff = h_first_diff(map, patch, wlen);
		CHILD_CHECK(diff < 0, "byte %ld lost", diff);
		diff = h_first_nonzero(map + wlen, size - wlen);
		CHILD_CHECK(diff < 0, "byte %ld not zero", (long)wlen + diff);
		memset(map + 2 * H_MIB, 0x44, 4096);
		CHILD_CHECK(map[2 * H_MIB + 4095] == 0x44, "write lost");
		upager_detach(ca);
		upager_disconnect(cu);
		_exit(0);
	}
	h_peer_expect(&p, 'a');
	info = h_stat(u, "z");
	ck_assert_uint_eq(info.nr_attachments, 1);
	ck_assert_uint_eq(info.pids[0], (uint32_t)p.pid);
	upager_disconnect(u);

	h_daemon_term(&d); /* asserts exit status 0 */
	ck_assert_int_eq(lstat(d.sock, &st), -1);
	ck_assert_int_eq(errno, ENOENT);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), 0);
	h_dir_remove(d.dir);
	free(patch);
}
END_TEST

/* One daemon per socket: a second one exits non-zero, the first serves on. */
START_TEST(test_second_daemon_refused)
{
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	struct h_run r;
	char *map;

	h_daemon_start(&d);
	{
		const char *argv[] = { h_upagerd(), "--socket", d.sock,
				       "--foreground", NULL };

		h_run(argv, NULL, 0, &r);
	}
	ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0,
		      "a second upagerd on %s: status %#x", d.sock, r.status);
	ck_assert_msg(strstr(r.err, d.sock), "no word of the socket: %s", r.err);
	h_run_free(&r);
	/* the first still serves, on the same path */
	u = h_connect(&d);
	h_create(u, "z", H_MIB, -1, 0);
	map = h_attach(u, "z", 0, &a);
	map[12345] = 7;
	ck_assert_int_eq(map[12345], 7);
	ck_assert_int_eq(h_first_nonzero(map, 12345), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* A socket file left by a killed daemon is replaced by the next one. */
START_TEST(test_stale_socket_replaced)
{
	const size_t size = 2 * H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	struct stat st;
	char path[512], *data, *map;
	int fd;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "old", H_MIB, -1, 0);
	upager_disconnect(u);
	h_daemon_kill(&d);
	ck_assert_int_eq(lstat(d.sock, &st), 0);
	ck_assert_msg(S_ISSOCK(st.st_mode), "no stale socket left");
	/* nobody answers there (the old listener may linger a moment in
	 * the kernel, so the refusal can be a reset) */
	ck_assert_int_lt(upager_connect(d.sock, &u), 0);

	h_daemon_restart(&d);
	u = h_connect(&d);
	/* the one that answers now is the new daemon */
	ck_assert_int_eq(upager_daemon_pid(u), d.pid);
	ck_assert_int_eq(upager_daemon_pid(NULL), -EINVAL);
	/* a new daemon: the old one's segments are gone */
	ck_assert_int_eq(upager_list(u, NULL, 0), 0);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 82);
	fd = h_open_ro(path);
	h_create(u, "img", size, fd, 0);
	close(fd);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The pid of the upagerd serving @sock, from /proc/PID/cmdline (the
 * socket's peer credentials name the process that listened: the parent
 * that detached), or -1.
 */
static pid_t daemon_on(const char *sock)
{
	DIR *dir = opendir("/proc");
	struct dirent *e;
	pid_t pid = -1;

	while (dir && pid < 0 && (e = readdir(dir))) {
		char path[300], buf[4096];
		ssize_t n;
		int fd;

		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		for (ssize_t k = 0; k < n; k++)
			if (!buf[k])
				buf[k] = ' ';
		buf[n > 0 ? n : 0] = '\0';
		if (strstr(buf, "upagerd") && strstr(buf, sock))
			pid = atoi(e->d_name);
	}
	if (dir)
		closedir(dir);
	return pid;
}

/*
 * Started as most people start it, without --foreground: it detaches (a
 * fork) and serves.  What it made before the fork belonged to the parent
 * that exited; a segment is created, filled from its file and written
 * through an attachment, and the bytes are right.
 */
START_TEST(test_detached_daemon_serves)
{
	const size_t size = 4 * H_MIB;
	const char *argv[] = { "/bin/sh", "-c", NULL, NULL };
	struct upager_attachment *a;
	struct h_daemon d;
	struct h_run r;
	struct upager *u;
	char path[512], cmd[1400], *data, *map;
	pid_t pid;
	int fd;

	h_daemon_init_(&d, __func__);
	/* Its stderr (which it keeps) to the log: the run ends with the
	 * parent. */
	snprintf(cmd, sizeof(cmd), "exec '%s' --socket '%s' 2>'%s' >/dev/null",
		 h_upagerd(), d.sock, d.log);
	argv[2] = cmd;
	h_run(argv, NULL, 0, &r);
	ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
		      "upagerd: %s", r.err);
	h_run_free(&r);
	pid = daemon_on(d.sock);
	ck_assert_int_gt(pid, 0);
	u = h_connect(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 12);
	fd = h_open_ro(path);
	h_create(u, "img", size, fd, 0);
	close(fd);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	memset(map + H_MIB, 0x3c, H_PAGE);
	ck_assert_int_eq(upager_detach(a), 0);
	map = h_attach(u, "img", UPAGER_ATTACH_RDONLY, &a);
	ck_assert_int_eq((unsigned char)map[H_MIB + H_PAGE - 1], 0x3c);
	ck_assert_int_eq(h_first_diff(map, data, H_MIB), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	free(data);
	ck_assert_int_eq(kill(pid, SIGTERM), 0);
	for (uint64_t end = h_now_ms() + H_TIMEOUT_MS; kill(pid, 0) == 0;) {
		ck_assert_msg(h_now_ms() < end, "upagerd did not stop");
		h_nap_ms(10);
	}
	h_dir_remove(d.dir);
}
END_TEST

/* Something at the socket path that is not a socket is not removed. */
START_TEST(test_not_a_socket_left_alone)
{
	struct h_daemon d;
	struct h_run r;
	struct stat st;
	FILE *f;

	h_daemon_init(&d);
	f = fopen(d.sock, "we");
	ck_assert_ptr_nonnull(f);
	fputs("precious\n", f);
	fclose(f);
	{
		const char *argv[] = { h_upagerd(), "--socket", d.sock,
				       "--foreground", NULL };

		h_run(argv, NULL, 0, &r);
	}
	ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0,
		      "upagerd over a regular file: status %#x", r.status);
	h_run_free(&r);
	ck_assert_int_eq(lstat(d.sock, &st), 0);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_int_eq(st.st_size, 9);
	h_dir_remove(d.dir);
}
END_TEST

static void spin_ns(long ns)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do
		clock_gettime(CLOCK_MONOTONIC, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000000000L + t.tv_nsec - t0.tv_nsec <
	       ns);
}

/*
 * upager_disconnect() right after upager_detach(), many times: it must
 * return every time (the library's watcher thread must see the stop).
 * Runs in a child so that a hang is a bounded failure.
 */
START_TEST(test_detach_disconnect_loop)
{
	const int rounds = 4000;
	struct h_daemon d;
	struct upager *u;
	int prog[2];
	pid_t pid;
	uint64_t done = 0;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", 64 * 1024, -1, 0);
	upager_disconnect(u);
	ck_assert_int_eq(pipe(prog), 0);
	pid = h_fork();
	if (pid == 0) {
		close(prog[0]);
		for (int i = 0; i < rounds; i++) {
			struct upager_attachment *ca;
			struct upager *cu = h_child_connect(d.sock);
			volatile char *map;
			int ret = upager_attach(cu, "z", 0, &ca);

			CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
			map = upager_attachment_addr(ca);
			map[i * 4099 % 65536] = (char)(i % 127 + 1);
			CHILD_CHECK(map[i * 4099 % 65536] == (char)(i % 127 + 1),
				    "round %d: wrote and read back another byte",
				    i);
			/* let the watcher thread fall asleep in poll(), where
			 * the race needs it */
			spin_ns(200000);
			ret = upager_detach(ca);
			CHILD_CHECK(ret == 0, "detach: %s", strerror(-ret));
			/* sweep the gap through the watcher's wake-up */
			spin_ns((i * 37L) % 50000);
			upager_disconnect(cu);
			h_send_u64(prog[1], (uint64_t)i + 1);
		}
		_exit(0);
	}
	close(prog[1]);
	/* progress, each round within the bound */
	for (;;) {
		char *p = (char *)&done;
		uint64_t v = 0;
		size_t got = 0;
		int ret = 1;

		while (got < sizeof(v) &&
		       (ret = h_recv_timeout(prog[0], (char *)&v + got,
					     H_TIMEOUT_MS)) == 1)
			got++;
		if (ret != 1)
			break;
		(void)p;
		done = v;
	}
	if (done != (uint64_t)rounds) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		ck_abort_msg("the client hung after %llu of %d rounds "
			     "(upager_disconnect after upager_detach)",
			     (unsigned long long)done, rounds);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	u = h_connect(&d);
	ck_assert_uint_eq(h_wait_attachments(u, "z", 0).nr_attachments, 0);
	/* every byte the rounds wrote is in the segment, nothing else */
	{
		struct upager_attachment *a;
		char *expect = calloc(1, 65536);
		char *map = h_attach(u, "z", 0, &a);

		for (int i = 0; i < rounds; i++)
			expect[i * 4099 % 65536] = (char)(i % 127 + 1);
		ck_assert_int_eq(h_first_diff(map, expect, 65536), -1);
		ck_assert_int_eq(upager_detach(a), 0);
		free(expect);
	}
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* The descriptors process @pid has open, or -1. */
static int fd_count(pid_t pid)
{
	char path[64];
	struct dirent *e;
	DIR *dir;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dir = opendir(path);
	if (!dir)
		return -1;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

/*
 * @rounds of: create a fresh segment, attach it with @flags, touch every
 * page (read, or write with @write), with @child a forked child touching
 * it too (through its own attachment, from UFFD_EVENT_FORK), detach,
 * delete.
 */
static void churn(struct upager *u, int rounds, unsigned int flags, bool write,
		  bool child)
{
	const size_t size = 256 * 1024;

	for (int i = 0; i < rounds; i++) {
		struct upager_attachment *a;
		volatile char *map;

		h_create(u, "churn", size, -1, 0);
		map = h_attach(u, "churn", flags, &a);
		for (size_t off = 0; off < size / 2; off += H_PAGE)
			if (write)
				map[off] = (char)(i + 1);
			else
				ck_assert_int_eq(map[off], 0);
		if (child) {
			pid_t pid = h_fork();

			if (pid == 0) {
				for (size_t off = size / 2; off < size;
				     off += H_PAGE) {
					CHILD_CHECK(map[off] == 0,
						    "child: byte %zu not zero",
						    off);
					if (write)
						map[off] = (char)(i + 2);
				}
				_exit(0);
			}
			ck_assert_int_eq(h_child_exit_code(pid), 0);
		} else {
			for (size_t off = size / 2; off < size; off += H_PAGE)
				if (write)
					map[off] = (char)(i + 2);
				else
					ck_assert_int_eq(map[off], 0);
		}
		if (write)
			ck_assert_int_eq(map[size - H_PAGE], (char)(i + 2));
		ck_assert_int_eq(upager_detach(a), 0);
		/* (a child's attachment goes when the daemon sees it exit) */
		ck_assert_uint_eq(h_wait_attachments(u, "churn", 0).nr_attachments,
				  0);
		ck_assert_int_eq(upager_delete(u, "churn", 0), 0);
	}
}

/* Waits (bounded) for @pid to hold @n descriptors; the last count. */
static int wait_fd_count(pid_t pid, int n)
{
	uint64_t end = h_now_ms() + H_TIMEOUT_MS;
	int now;

	while ((now = fd_count(pid)) != n && h_now_ms() < end)
		h_nap_ms(10);
	return now;
}

/* The daemon is back to @base descriptors after churn @what. */
static void expect_fds_back(pid_t pid, int base, const char *what)
{
	int now = wait_fd_count(pid, base);

	ck_assert_msg(now == base,
		      "%s: the daemon holds %d descriptors, %d before: "
		      "attachments or segments not freed",
		      what, now, base);
}

/*
 * Attach, touch, detach, delete, many times over, with the daemon's
 * workers (one per CPU) moving each userfaultfd's reader to the CPU its
 * thread faults on: every attachment must be freed after its detach, and
 * its segment with it (its memfd, its memory).  The daemon's descriptors
 * say so: each attachment holds its uffd and a pidfd, each segment its
 * memfd.  A worker that stops reading a uffd cancels its multishot poll,
 * often while a fault or an unmap event is waking that poll; a cancel
 * lost then left the poll armed for good, holding the attachment.
 */
START_TEST(test_attach_churn_frees_everything)
{
	struct upager_daemon_stats st;
	struct h_daemon d;
	struct upager *u;
	int base;

	h_daemon_start(&d);
	u = h_connect(&d);
	base = fd_count(d.pid);
	ck_assert_int_gt(base, 0);

	churn(u, 300, UPAGER_ATTACH_RDONLY, false, false);
	expect_fds_back(d.pid, base, "read-only");
	churn(u, 300, 0, true, false);
	expect_fds_back(d.pid, base, "read-write");
	churn(u, 100, 0, true, true);
	expect_fds_back(d.pid, base, "forked children");

	st = h_stats(u);
	ck_assert_uint_eq(st.segments, 0);
	ck_assert_uint_eq(st.attachments, 0);
	ck_assert_uint_eq(st.resident_bytes, 0);
	ck_assert_uint_eq(st.events_fork, 100);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * UPAGER_DELETE_UNUSED: the name stays while anything is attached (another
 * process may attach it meanwhile) and goes at the last detach, also when
 * that is a process's death; unattached, it goes at once.
 */
static bool seg_exists(struct upager *u, const char *name)
{
	struct upager_segment_info info;

	return upager_stat(u, name, &info) == 0;
}

START_TEST(test_delete_unused)
{
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	volatile char *p;
	uint64_t dl;
	pid_t pid;
	int go[2];

	h_daemon_start(&d);
	u = h_connect(&d);
	ck_assert_int_eq(upager_delete(u, "none", UPAGER_DELETE_UNUSED),
			 -ENOENT);
	h_create(u, "idle", 64 * 1024, -1, 0);
	ck_assert_int_eq(upager_delete(u, "idle", 0x4), -EINVAL);
	ck_assert_int_eq(upager_delete(u, "idle", UPAGER_DELETE_UNUSED), 0);
	ck_assert(!seg_exists(u, "idle"));

	h_create(u, "u", 64 * 1024, -1, 0);
	ck_assert_int_eq(upager_attach(u, "u", 0, &a), 0);
	p = upager_attachment_addr(a);
	p[100] = 'a';
	ck_assert_int_eq(upager_delete(u, "u", UPAGER_DELETE_UNUSED), 0);
	ck_assert(seg_exists(u, "u"));
	/* another process attaches it by name meanwhile, and stays */
	ck_assert_int_eq(pipe(go), 0);
	pid = h_fork();
	if (pid == 0) {
		struct upager *cu = h_child_connect(d.sock);
		struct upager_attachment *ca;
		volatile char *q;
		char c;

		close(go[1]);
		CHILD_CHECK(upager_attach(cu, "u", 0, &ca) == 0, "attach");
		q = upager_attachment_addr(ca);
		CHILD_CHECK(q[100] == 'a', "the first process's byte");
		q[200] = 'b';
		CHILD_CHECK(read(go[0], &c, 1) == 0, "wait");
		_exit(0);
	}
	close(go[0]);
	while (p[200] != 'b')
		h_nap_ms(1);
	ck_assert_int_eq(upager_detach(a), 0);
	h_nap_ms(100);
	ck_assert_msg(seg_exists(u, "u"), "gone while the child maps it");
	/* its last attachment goes with the process */
	kill(pid, SIGKILL);
	h_wait_child(pid);
	close(go[1]);
	dl = h_now_ms() + H_TIMEOUT_MS;
	while (seg_exists(u, "u") && h_now_ms() < dl)
		h_nap_ms(5);
	ck_assert_msg(!seg_exists(u, "u"), "still there after the last detach");
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *lifecycle_suite(void)
{
	Suite *s = h_suite("lifecycle");
	TCase *tc;

	tc = h_tcase(s, "daemon", H_NEED_DAEMON);
	tcase_add_test(tc, test_sigterm_with_client_attached);
	tcase_add_test(tc, test_second_daemon_refused);
	tcase_add_test(tc, test_stale_socket_replaced);
	tcase_add_test(tc, test_not_a_socket_left_alone);
	tcase_add_test(tc, test_detached_daemon_serves);

	tc = h_tcase(s, "client", H_NEED_DAEMON);
	tcase_add_test(tc, test_detach_disconnect_loop);
	tcase_add_test(tc, test_delete_unused);
	h_add_test(tc, test_attach_churn_frees_everything,
		   H_NEED_BASE | UFFD_FEATURE_EVENT_FORK);
	return s;
}

int main(void)
{
	h_main(lifecycle_suite());
}
