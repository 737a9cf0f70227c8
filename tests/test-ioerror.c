// SPDX-License-Identifier: MIT
/*
 * The daemon against failures of the system under it: a source that
 * cannot be read, its descriptor limit, a start that fails half-way, and
 * what an idle daemon looks like to monitoring.
 *
 * A source read error is made with the daemon's test hook
 * UPAGER_TEST_FAIL_PAGES (src/source.c): reads of those pages of every file
 * source fail with EIO, as on a disk with bad sectors.  Start failures are
 * made in the daemon's own process (a seccomp filter, resource limits set
 * before exec), never by changing the machine's settings.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <liburing.h>

#include "harness.h"
#include "proto.h"

#ifndef IORING_FEAT_NO_IOWAIT
#define IORING_FEAT_NO_IOWAIT (1U << 17) /* 6.15; as the daemon's ring.h */
#endif

/* Source read errors */

#define BAD_PAGE 20
#define NPAGES 64

/* A daemon whose file sources cannot read page BAD_PAGE. */
static void start_failing_daemon(struct h_daemon *d)
{
	char v[32];

	snprintf(v, sizeof(v), "%d", BAD_PAGE);
	ck_assert_int_eq(setenv("UPAGER_TEST_FAIL_PAGES", v, 1), 0);
	h_daemon_start(d);
	unsetenv("UPAGER_TEST_FAIL_PAGES");
}

/*
 * In a child: attach @name and check that every page but BAD_PAGE reads
 * the file's bytes and that BAD_PAGE raises SIGBUS, in the order @order:
 * 'b' the bad page first, 'a' all from the start.
 */
static void __attribute__((noreturn))
reader(const char *sock, const char *name, const char *data, char order)
{
	const size_t ps = H_PAGE, bad = BAD_PAGE * H_PAGE;
	struct upager_attachment *a;
	struct upager *u = h_child_connect(sock);
	int ret = upager_attach(u, name, UPAGER_ATTACH_RDONLY, &a);
	const char *map;
	size_t off = 0;

	CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
	map = upager_attachment_addr(a);
	if (order == 'b') {
		ret = h_read_check(map + bad, data + bad, ps, &off);
		CHILD_CHECK(ret == H_READ_SIGBUS && off == 0,
			    "bad page first: %d at +%zu", ret, off);
	}
	ret = h_read_check(map, data, bad, &off);
	CHILD_CHECK(ret == H_READ_OK, "pages before the bad one: %d at %zu",
		    ret, off);
	ret = h_read_check(map + bad, data + bad, ps, &off);
	CHILD_CHECK(ret == H_READ_SIGBUS && off == 0, "bad page: %d at +%zu",
		    ret, off);
	ret = h_read_check(map + bad + ps, data + bad + ps,
			   (NPAGES - BAD_PAGE - 1) * ps, &off);
	CHILD_CHECK(ret == H_READ_OK, "pages after the bad one: %d at +%zu",
		    ret, off);
	upager_detach(a);
	upager_disconnect(u);
	_exit(0);
}

/*
 * A page the source cannot read: its access raises SIGBUS, in this
 * process and in every other, and stays so; every other page, before and
 * after it, reads the file's bytes; and the daemon serves on.  (Zero
 * bytes instead of the SIGBUS would be silent corruption.)
 */
START_TEST(test_read_error_sigbus)
{
	const size_t size = NPAGES * H_PAGE;
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	char *data;
	pid_t pid;

	start_failing_daemon(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 71);
	/* the bad page first: its read-ahead window starts there */
	pid = h_fork();
	if (pid == 0)
		reader(d.sock, "img", data, 'b');
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	/* another process, later: the same, from the start */
	pid = h_fork();
	if (pid == 0)
		reader(d.sock, "img", data, 'a');
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	info = h_stat(u, "img");
	ck_assert_uint_eq(info.nr_attachments, 0);
	/* every page but the bad one was read once, into the memfd */
	ck_assert_uint_eq(info.pages_filled, NPAGES - 1);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Read from the start, the bad page falls inside a read-ahead window that
 * starts before it: the page asked for, and all others but the bad one,
 * still read right: the fill maps the pages a failed read got before its
 * error instead of poisoning the page asked for.
 */
START_TEST(test_read_error_in_window)
{
	const size_t size = NPAGES * H_PAGE;
	struct h_daemon d;
	struct upager *u;
	char *data;
	pid_t pid;

	start_failing_daemon(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 72);
	pid = h_fork();
	if (pid == 0)
		reader(d.sock, "img", data, 'a');
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* The descriptor limit */

static unsigned int count_fds(pid_t pid)
{
	char path[64];
	struct dirent *de;
	unsigned int n = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	dir = opendir(path);
	ck_assert_msg(dir, "%s: %s", path, strerror(errno));
	while ((de = readdir(dir)))
		if (de->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

/* The soft and hard RLIMIT_NOFILE of @pid, from /proc. */
static void nofile_of(pid_t pid, unsigned long long *soft,
		      unsigned long long *hard)
{
	char path[64], line[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	f = fopen(path, "re");
	ck_assert_msg(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Max open files %llu %llu", soft, hard) == 2)
			found = true;
	fclose(f);
	ck_assert_msg(found, "no 'Max open files' in %s", path);
}

/* At start the daemon takes all the descriptors it is allowed. */
START_TEST(test_nofile_raised)
{
	struct rlimit old, low;
	unsigned long long soft, hard;
	struct h_daemon d;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	if (old.rlim_max <= 256) {
		fprintf(stderr, "SKIP %s: hard limit %llu\n", __func__,
			(unsigned long long)old.rlim_max);
		return;
	}
	low = old;
	low.rlim_cur = 256;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	h_daemon_start(&d);
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
	nofile_of(d.pid, &soft, &hard);
	ck_assert_uint_eq(hard, old.rlim_max);
	ck_assert_msg(soft == hard, "soft limit %llu, hard %llu", soft, hard);
	h_daemon_stop(&d);
}
END_TEST

/*
 * A raw connection's hello: 0 when the daemon took it, -errno when it
 * refused it, -ETIMEDOUT when it did not answer within @ms.
 */
static int raw_hello(const struct h_daemon *d, int *out, int ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct upg_hello m;
	char buf[UPG_MSG_MAX];
	struct upg_hdr *r = (struct upg_hdr *)buf;
	struct pollfd p;
	ssize_t n;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	strcpy(sa.sun_path, d->sock);
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		      "connect: %s", strerror(errno));
	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	n = send(fd, &m, sizeof(m), MSG_NOSIGNAL);
	p = (struct pollfd){ .fd = fd, .events = POLLIN };
	if (poll(&p, 1, ms) != 1) {
		close(fd);
		return -ETIMEDOUT;
	}
	n = recv(fd, buf, sizeof(buf), 0);
	ck_assert_msg(n >= (ssize_t)sizeof(*r), "hello reply: %zd (%s)", n,
		      n < 0 ? strerror(errno) : "short");
	ck_assert_uint_eq(r->seq, 1);
	ck_assert_uint_eq(r->type, UPG_HELLO);
	if (r->status) {
		close(fd);
		return r->status;
	}
	*out = fd;
	return 0;
}

/* In a child: upager_connect's result, as the exit code (its -errno). */
static pid_t connect_in_child(const struct h_daemon *d)
{
	pid_t pid = h_fork();

	if (pid == 0) {
		struct upager *u = NULL;
		int ret = upager_connect(d->sock, &u);

		upager_disconnect(u);
		_exit(-ret);
	}
	return pid;
}

/*
 * At its descriptor limit the daemon answers new clients at once with
 * EMFILE, however many wait, refuses a descriptor it cannot take with
 * EMFILE (no protocol error), and takes clients again when descriptors
 * come back.
 */
START_TEST(test_fd_limit)
{
	enum { MAX_CONNS = 64, WAITERS = 6 };
	struct upager_create_opts o = { .size = H_PAGE };
	struct upager_daemon_stats st0, st;
	struct rlimit rl;
	int conns[MAX_CONNS], nconns = 0, ret = 0;
	pid_t waiters[WAITERS];
	struct h_daemon d;
	struct upager *u;
	char path[512];
	uint64_t t0;

	h_daemon_start(&d);
	u = h_connect(&d);
	free(h_make_file(path, sizeof(path), d.dir, "img", H_PAGE, 5));
	st0 = h_stats(u);
	/* a few descriptors to spare, no more */
	rl.rlim_cur = rl.rlim_max = count_fds(d.pid) + 8;
	ck_assert_int_eq(prlimit(d.pid, RLIMIT_NOFILE, &rl, NULL), 0);

	while (nconns < MAX_CONNS) {
		int fd = -1;

		ret = raw_hello(&d, &fd, 3000);
		ck_assert_msg(ret != -ETIMEDOUT,
			      "connection %d: no answer within 3 s at the fd limit",
			      nconns);
		if (ret)
			break;
		conns[nconns++] = fd;
	}
	ck_assert_msg(ret == -EMFILE, "after %d connections: %d", nconns, ret);
	ck_assert_int_ge(nconns, 1);

	/* the library's connect, several at once: each gets EMFILE soon */
	t0 = h_now_ms();
	for (int i = 0; i < WAITERS; i++)
		waiters[i] = connect_in_child(&d);
	for (int i = 0; i < WAITERS; i++)
		ck_assert_int_eq(h_child_exit_code(waiters[i]), EMFILE);
	ck_assert_msg(h_now_ms() - t0 < 3000, "EMFILE took %llu ms",
		      (unsigned long long)(h_now_ms() - t0));

	/* a source descriptor the daemon cannot take: refused, not a
	 * protocol error, and the connection goes on */
	o.source_fd = h_open_ro(path);
	ret = upager_create(u, "f", &o);
	close(o.source_fd);
	ck_assert_msg(ret == -EMFILE, "create at the fd limit: %d", ret);
	st = h_stats(u);
	ck_assert_uint_eq(st.protocol_errors, st0.protocol_errors);

	/* descriptors come back: clients are taken again */
	for (int i = 0; i < 4 && nconns; i++)
		close(conns[--nconns]);
	{
		uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;
		struct upager *v = NULL;

		do {
			ret = upager_connect(d.sock, &v);
			if (ret)
				h_nap_ms(10);
		} while (ret == -EMFILE && h_now_ms() < deadline);
		ck_assert_msg(ret == 0, "connect after closing some: %d", ret);
		h_create(v, "z", H_PAGE, -1, 0);
		upager_disconnect(v);
	}
	while (nconns)
		close(conns[--nconns]);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* Failed starts */

static bool socket_exists(const struct h_daemon *d)
{
	struct stat st;

	return lstat(d->sock, &st) == 0;
}

static void set_nofile(void *arg)
{
	struct rlimit rl = { .rlim_cur = *(rlim_t *)arg,
			     .rlim_max = *(rlim_t *)arg };

	CHILD_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s",
		    strerror(errno));
}

/*
 * Whatever step of the start runs out of descriptors, before or after
 * the socket is bound, a daemon that does not start leaves no socket file.
 */
START_TEST(test_start_failure_fd_limit)
{
	struct h_daemon d;
	bool started = false;
	int status;

	for (rlim_t n = 4; n < 64 && !started; n++) {
		/* a directory, and a log, each: a sanitizer cannot report at
		 * the exit of a daemon without descriptors */
		h_daemon_init(&d);
		h_daemon_spawn_with(&d, NULL, set_nofile, &n);
		started = h_daemon_wait(&d, &status);
		if (started)
			break;
		ck_assert_msg(!WIFEXITED(status) || WEXITSTATUS(status) != 0,
			      "limit %d: exit 0 without starting", (int)n);
		if (socket_exists(&d)) {
			h_daemon_dump_log(&d);
			ck_abort_msg("limit %d: the failed daemon left %s behind",
				     (int)n, d.sock);
		}
		h_dir_remove(d.dir);
	}
	ck_assert_msg(started, "no daemon started with up to 63 descriptors");
	/* without a descriptor to spare, LeakSanitizer could not run at
	 * its exit: killed, not stopped */
	h_daemon_kill(&d);
	h_dir_remove(d.dir);
}
END_TEST

#if defined(__x86_64__)
#define H_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define H_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

struct deny {
	long nr;
	int err;
};

/* In the daemon-to-be: system call @nr fails with @err. */
static void deny_syscall(void *arg)
{
	const struct deny *dn = arg;
	struct sock_filter f[] = {
#ifdef H_AUDIT_ARCH
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, H_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
#endif
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, dn->nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K,
			 SECCOMP_RET_ERRNO | (dn->err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]),
				   .filter = f };

	CHILD_CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0,
		    "no_new_privs: %s", strerror(errno));
	CHILD_CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0,
		    "seccomp: %s", strerror(errno));
}

static bool log_has(const struct h_daemon *d, const char *needle)
{
	size_t len;
	char *log = h_read_file(d->log, &len);
	bool found;

	log[len] = '\0'; /* h_read_file leaves room for it */
	found = strstr(log, needle) != NULL;

	free(log);
	return found;
}

/*
 * io_uring refused (kernel.io_uring_disabled, or a container's seccomp
 * profile): the daemon fails after it bound its socket, and must remove it.
 */
START_TEST(test_start_failure_no_io_uring)
{
	struct deny dn = { .nr = __NR_io_uring_setup, .err = EPERM };
	struct h_daemon d;
	int status;

	h_daemon_init(&d);
	h_daemon_spawn_with(&d, NULL, deny_syscall, &dn);
	ck_assert_msg(!h_daemon_wait(&d, &status),
		      "upagerd started without io_uring");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1,
		      "status %#x", status);
	if (socket_exists(&d)) {
		h_daemon_dump_log(&d);
		ck_abort_msg("the failed daemon left %s behind", d.sock);
	}
	h_dir_remove(d.dir);
}
END_TEST

/*
 * userfaultfd refused: no socket, and the error says how to allow it.
 */
START_TEST(test_start_failure_no_userfaultfd)
{
	struct deny dn = { .nr = __NR_userfaultfd, .err = EPERM };
	struct h_daemon d;
	int status;

	h_daemon_init(&d);
	h_daemon_spawn_with(&d, NULL, deny_syscall, &dn);
	ck_assert_msg(!h_daemon_wait(&d, &status),
		      "upagerd started without userfaultfd");
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1,
		      "status %#x", status);
	ck_assert_msg(!socket_exists(&d), "%s left behind", d.sock);
	if (!log_has(&d, "sysctl vm.unprivileged_userfaultfd=1")) {
		h_daemon_dump_log(&d);
		ck_abort_msg("the error does not say how to allow userfaultfd");
	}
	h_dir_remove(d.dir);
}
END_TEST

static void become_nobody(void *arg)
{
	h_become(65534, 65534, NULL, 0);
}

static bool unprivileged_uffd_off(void)
{
	char buf[8] = "";
	int fd = open("/proc/sys/vm/unprivileged_userfaultfd", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	return n > 0 && buf[0] == '0';
}

/*
 * An unprivileged daemon where unprivileged userfaultfd is off (the
 * default): user-mode faults are all it needs, so it starts and serves
 * its user; and stopped, it removes its socket.
 */
START_TEST(test_unprivileged_daemon)
{
	const size_t size = 16 * H_PAGE;
	struct h_daemon d;
	char *data;
	int status;
	pid_t pid;

	if (geteuid() != 0 || !unprivileged_uffd_off()) {
		fprintf(stderr,
			"SKIP %s: needs root and vm.unprivileged_userfaultfd=0\n",
			__func__);
		return;
	}
	h_daemon_init(&d);
	ck_assert_int_eq(chown(d.dir, 65534, 65534), 0);
	h_daemon_spawn_with(&d, NULL, become_nobody, NULL);
	if (!h_daemon_wait(&d, &status)) {
		h_daemon_dump_log(&d);
		ck_abort_msg("an unprivileged upagerd did not start (status %#x)%s",
			     status,
			     socket_exists(&d) ? ", its socket left behind" :
						 "");
	}
	{
		char path[512];

		data = h_make_file(path, sizeof(path), d.dir, "img", size, 73);
	}
	pid = h_fork();
	if (pid == 0) {
		struct upager_attachment *a;
		struct upager *u;
		char path[600], *map;
		size_t off;
		int fd, ret;

		h_become(65534, 65534, NULL, 0);
		u = h_child_connect(d.sock);
		snprintf(path, sizeof(path), "%s/img", d.dir);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		CHILD_CHECK(fd >= 0, "open: %s", strerror(errno));
		{
			struct upager_create_opts o = { .size = size,
							.source_fd = fd };

			ret = upager_create(u, "img", &o);
		}
		CHILD_CHECK(ret == 0, "create: %s", strerror(-ret));
		close(fd);
		ret = upager_attach(u, "img", 0, &a);
		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(a);
		ret = h_read_check(map, data, size, &off);
		CHILD_CHECK(ret == H_READ_OK, "read: %d at %zu", ret, off);
		upager_detach(a);
		/* read-only: filled through the daemon's own direct map */
		fd = open(path, O_RDONLY | O_CLOEXEC);
		CHILD_CHECK(fd >= 0, "open: %s", strerror(errno));
		{
			struct upager_create_opts o = { .size = size,
							.source_fd = fd };

			ret = upager_create(u, "img2", &o);
		}
		CHILD_CHECK(ret == 0, "create: %s", strerror(-ret));
		close(fd);
		ret = upager_attach(u, "img2", UPAGER_ATTACH_RDONLY, &a);
		CHILD_CHECK(ret == 0, "attach read-only: %s", strerror(-ret));
		map = upager_attachment_addr(a);
		ret = h_read_check(map, data, size, &off);
		CHILD_CHECK(ret == H_READ_OK, "read-only: %d at %zu", ret, off);
		upager_detach(a);
		upager_disconnect(u);
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	free(data);
	h_daemon_term(&d);
	ck_assert_msg(!socket_exists(&d), "stopped, it left %s", d.sock);
	h_dir_remove(d.dir);
}
END_TEST

/* Idle */

static bool write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? write(fd, s, strlen(s)) : -1;

	if (fd >= 0)
		close(fd);
	return n == (ssize_t)strlen(s);
}

/* The cgroup v2 directory this process is in, or false. */
static bool own_cgroup2(char *out, size_t len)
{
	char line[1024], mnt[512] = "", cg[512] = "";
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		char *sep = strstr(line, " - cgroup2 ");

		if (sep && sscanf(line, "%*s %*s %*s %*s %511s", mnt) == 1)
			break;
		mnt[0] = '\0';
	}
	fclose(f);
	f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "0::", 3) &&
		    sscanf(line + 3, "%511s", cg) == 1)
			break;
	fclose(f);
	if (!mnt[0] || !cg[0])
		return false;
	snprintf(out, len, "%s%s", mnt, strcmp(cg, "/") ? cg : "");
	return true;
}

/* "some ... total=N" of a pressure file: µs some task stalled on I/O. */
static long long io_stall_us(const char *dir)
{
	char path[1024], line[256];
	long long total = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/io.pressure", dir);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		char *t = strstr(line, "total=");

		if (!strncmp(line, "some", 4) && t)
			total = atoll(t + 6);
	}
	fclose(f);
	return total;
}

static bool kernel_has_no_iowait(void)
{
	struct io_uring ring;
	bool has;

	if (io_uring_queue_init(4, &ring, 0))
		return false;
	has = ring.features & IORING_FEAT_NO_IOWAIT;
	io_uring_queue_exit(&ring);
	return has;
}

/* CPU time (user + system, in clock ticks) of thread @tid of @pid. */
static unsigned long long cpu_ticks(pid_t pid, pid_t tid)
{
	char path[96], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", (int)pid,
		 (int)tid);
	f = fopen(path, "re");
	ck_assert_msg(f, "%s: %s", path, strerror(errno));
	p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
	fclose(f);
	/* after the name: state, then fields 4..13, then utime, stime */
	ck_assert_msg(p && sscanf(p + 2,
				  "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
				  &ut, &st) == 2,
		      "%s: unreadable", path);
	return ut + st;
}

/*
 * An idle daemon looks idle: its main thread neither spins nor counts as
 * waiting for I/O.  The I/O wait is measured as the I/O pressure of a
 * threaded cgroup holding the main thread alone (with the kernel's iowait
 * accounting it stalls the whole time it waits); the cgroup is made for
 * the test and removed after it.
 */
START_TEST(test_idle_not_iowait)
{
	char base[600], grp[700] = "", thr[760] = "", pid_s[32];
	long long before = -1, after = -1;
	unsigned long long t0, t1;
	struct h_daemon d;
	bool ok = false;

	h_daemon_start(&d);
	snprintf(pid_s, sizeof(pid_s), "%d", (int)d.pid);
	if (kernel_has_no_iowait() && geteuid() == 0 &&
	    own_cgroup2(base, sizeof(base))) {
		char p1[800], p2[800], p3[800];

		snprintf(grp, sizeof(grp), "%s/upager-idle-%d", base,
			 (int)getpid());
		snprintf(thr, sizeof(thr), "%s/main", grp);
		snprintf(p1, sizeof(p1), "%s/cgroup.procs", grp);
		snprintf(p2, sizeof(p2), "%s/cgroup.type", thr);
		snprintf(p3, sizeof(p3), "%s/cgroup.threads", thr);
		ok = mkdir(grp, 0755) == 0 && write_file(p1, pid_s) &&
		     mkdir(thr, 0755) == 0 && write_file(p2, "threaded") &&
		     write_file(p3, pid_s);
	}
	h_nap_ms(200);
	t0 = cpu_ticks(d.pid, d.pid);
	before = ok ? io_stall_us(thr) : -1;
	h_nap_ms(1000);
	after = ok ? io_stall_us(thr) : -1;
	t1 = cpu_ticks(d.pid, d.pid);
	if (ok || grp[0]) {
		char p[700];

		/* back where it came from, then the cgroups go */
		snprintf(p, sizeof(p), "%s/cgroup.procs", base);
		write_file(p, pid_s);
		rmdir(thr);
		rmdir(grp);
	}
	h_daemon_stop(&d);
	ck_assert_msg((t1 - t0) * 1000 / sysconf(_SC_CLK_TCK) < 100,
		      "idle for 1 s, the daemon's main thread ran for %llu ticks",
		      t1 - t0);
	if (!ok || before < 0 || after < 0) {
		fprintf(stderr,
			"SKIP %s (iowait): needs IORING_FEAT_NO_IOWAIT, root and a cgroup v2 with io.pressure\n",
			__func__);
		return;
	}
	ck_assert_msg(after - before < 100000,
		      "idle for 1 s, the daemon's main thread stalled on I/O for %lld us",
		      after - before);
}
END_TEST

static Suite *ioerror_suite(void)
{
	Suite *s = h_suite("ioerror");
	TCase *tc;

	tc = h_tcase(s, "source", H_NEED_BASE | UFFD_FEATURE_POISON);
	tcase_add_test(tc, test_read_error_sigbus);
	tcase_add_test(tc, test_read_error_in_window);

	tc = h_tcase(s, "fdlimit", H_NEED_BASE);
	tcase_add_test(tc, test_nofile_raised);
	tcase_add_test(tc, test_fd_limit);

	tc = h_tcase(s, "start", H_NEED_BASE);
	tcase_add_test(tc, test_start_failure_fd_limit);
	tcase_add_test(tc, test_start_failure_no_io_uring);
	tcase_add_test(tc, test_start_failure_no_userfaultfd);
	tcase_add_test(tc, test_unprivileged_daemon);

	tc = h_tcase(s, "idle", H_NEED_DAEMON);
	tcase_add_test(tc, test_idle_not_iowait);
	return s;
}

int main(void)
{
	h_main(ioerror_suite());
}
