// SPDX-License-Identifier: MIT
/* The integration-test harness; see harness.h. */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <setjmp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "harness.h"
#include "proto.h"
#include "uffd.h"

extern char **environ;

/* Each test's daemon directory lives under this one; h_main removes it. */
static char base_dir[128];

uint64_t h_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_nap_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
			       .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

const char *h_upagerd(void)
{
	const char *p = getenv("UPAGERD");

	ck_assert_msg(p && *p, "$UPAGERD is not set");
	return p;
}

const char *h_upagerctl(void)
{
	const char *p = getenv("UPAGERCTL");

	ck_assert_msg(p && *p, "$UPAGERCTL is not set");
	return p;
}

/* main */

/*
 * What the suite is made of: the cases h_tcase() made (to name them), and
 * the cases and tests it left out.  Set-aside cases go to a suite of their
 * own that never runs, so that libcheck frees them.
 */
#define H_TCASES_MAX 64

static const char *suite_name = "?";
static struct {
	TCase *tc;
	const char *name;
} tcases[H_TCASES_MAX];
static size_t nr_tcases;
static Suite *set_aside;
static unsigned int nr_skipped;

static const struct {
	uint64_t bit;
	const char *name;
} feature_names[] = {
	{ UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP" },
	{ UFFD_FEATURE_EVENT_FORK, "EVENT_FORK" },
	{ UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP" },
	{ UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE" },
	{ UFFD_FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS" },
	{ UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM" },
	{ UFFD_FEATURE_EVENT_UNMAP, "EVENT_UNMAP" },
	{ UFFD_FEATURE_SIGBUS, "SIGBUS" },
	{ UFFD_FEATURE_THREAD_ID, "THREAD_ID" },
	{ UFFD_FEATURE_MINOR_HUGETLBFS, "MINOR_HUGETLBFS" },
	{ UFFD_FEATURE_MINOR_SHMEM, "MINOR_SHMEM" },
	{ UFFD_FEATURE_EXACT_ADDRESS, "EXACT_ADDRESS" },
	{ UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM" },
	{ UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED" },
	{ UFFD_FEATURE_POISON, "POISON" },
	{ UFFD_FEATURE_WP_ASYNC, "WP_ASYNC" },
	{ UFFD_FEATURE_MOVE, "MOVE" },
};

/*
 * NULL when the kernel offers every feature of @features, else why not
 * (in a static buffer).
 */
static const char *features_missing(uint64_t features)
{
	static bool probed;
	static uint64_t offered;
	static int err;
	static char why[256];
	uint64_t lack;
	size_t at;

	if (!probed) {
		const char *hide = getenv("H_HIDE_FEATURES");

		err = uffd_offered(&offered);
		/* to try the skips: features to take for missing */
		if (hide && *hide)
			offered &= ~strtoull(hide, NULL, 0);
		probed = true;
	}
	if (!features)
		return NULL;
	if (err) {
		snprintf(why, sizeof(why), "no userfaultfd here (%s)",
			 strerror(-err));
		return why;
	}
	lack = features & ~offered;
	if (!lack)
		return NULL;
	at = snprintf(why, sizeof(why), "the kernel lacks userfaultfd");
	for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]);
	     i++) {
		if (!(lack & feature_names[i].bit) || at >= sizeof(why))
			continue;
		at += snprintf(why + at, sizeof(why) - at, " %s",
			       feature_names[i].name);
		lack &= ~feature_names[i].bit;
	}
	if (lack && at < sizeof(why))
		snprintf(why + at, sizeof(why) - at, " %#llx",
			 (unsigned long long)lack);
	return why;
}

/* A line on stdout, out before any test forks (a buffered one would be
 * written again by every test process at its exit). */
static void say_skip(const char *what, const char *why)
{
	printf("SKIP %s: %s\n", what, why);
	fflush(stdout);
	nr_skipped++;
}

Suite *h_suite(const char *name)
{
	suite_name = name;
	return suite_create(name);
}

TCase *h_tcase(Suite *s, const char *name, uint64_t features)
{
	const char *why = features_missing(features);
	TCase *tc = tcase_create(name);
	char what[256];

	tcase_set_timeout(tc, H_TCASE_TIMEOUT);
	if (nr_tcases < H_TCASES_MAX)
		tcases[nr_tcases++] = (typeof(tcases[0])){ tc, name };
	if (!why) {
		suite_add_tcase(s, tc);
		return tc;
	}
	snprintf(what, sizeof(what), "%s/%s", suite_name, name);
	say_skip(what, why);
	if (!set_aside)
		set_aside = suite_create("set aside");
	suite_add_tcase(set_aside, tc);
	return tc;
}

void h_add_test(TCase *tc, const TTest *test, uint64_t features)
{
	const char *why = features_missing(features);
	char what[256];
	size_t i;

	if (!why) {
		tcase_add_test(tc, test);
		return;
	}
	for (i = 0; i < nr_tcases && tcases[i].tc != tc; i++)
		;
	if (i < nr_tcases)
		snprintf(what, sizeof(what), "%s/%s/%s", suite_name,
			 tcases[i].name, test->name);
	else
		snprintf(what, sizeof(what), "%s/%s", suite_name, test->name);
	say_skip(what, why);
}

static int dump_one(const char *path, const struct stat *st, int type,
		    struct FTW *ftw)
{
	const char *slash = strrchr(path, '/');
	char tpath[512], test[128] = "?";
	FILE *f;

	if (type != FTW_F || !slash || strcmp(slash + 1, "daemon.log"))
		return 0;
	snprintf(tpath, sizeof(tpath), "%.*s/test", (int)(slash - path), path);
	f = fopen(tpath, "re");
	if (f) {
		if (!fgets(test, sizeof(test), f))
			strcpy(test, "?");
		test[strcspn(test, "\n")] = '\0';
		fclose(f);
	}
	fprintf(stderr, "----- daemon log of %s (%s) -----\n", test, path);
	f = fopen(path, "re");
	if (f) {
		char line[1024];

		while (fgets(line, sizeof(line), f))
			fputs(line, stderr);
		fclose(f);
	}
	fprintf(stderr, "----- end of daemon log -----\n");
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int type,
		  struct FTW *ftw)
{
	if (type == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

void h_dir_remove(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int h_main(Suite *s)
{
	SRunner *sr;
	int failed, ran;

	snprintf(base_dir, sizeof(base_dir), "/tmp/upager-it-XXXXXX");
	if (!mkdtemp(base_dir)) {
		perror("mkdtemp");
		exit(EXIT_FAILURE);
	}
	/* The tests that drop to another uid still reach their socket. */
	chmod(base_dir, 0755);
	/* A peer that went away is an error code, not the end of the test. */
	signal(SIGPIPE, SIG_IGN);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	ran = srunner_ntests_run(sr);
	srunner_free(sr);
	if (set_aside)
		srunner_free(srunner_create(set_aside));
	/* A failed test's daemon directory is still there: show its log. */
	if (failed)
		nftw(base_dir, dump_one, 16, FTW_PHYS);
	h_dir_remove(base_dir);
	if (failed)
		exit(EXIT_FAILURE);
	exit(!ran && nr_skipped ? 77 : EXIT_SUCCESS);
}

/* Processes */

pid_t h_fork(void)
{
	pid_t parent = getpid();
	pid_t pid;

	fflush(NULL);
	pid = fork();
	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(99);
	}
	return pid;
}

int h_wait_child(pid_t pid)
{
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return status;
		ck_assert_msg(r == 0, "waitpid %d: %s", (int)pid,
			      strerror(errno));
		if (h_now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("process %d did not end within %d ms",
				     (int)pid, H_TIMEOUT_MS);
		}
		h_nap_ms(5);
	}
}

int h_child_exit_code(pid_t pid)
{
	int status = h_wait_child(pid);

	ck_assert_msg(WIFEXITED(status), "child %d killed by signal %d",
		      (int)pid, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
	return WEXITSTATUS(status);
}

void h_child_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "child %d: %s:%d: ", (int)getpid(), file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	_exit(1);
}

pid_t h_peer_fork(struct h_peer *p)
{
	int to_child[2], to_parent[2];

	ck_assert_int_eq(pipe2(to_child, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(to_parent, O_CLOEXEC), 0);
	p->pid = h_fork();
	if (p->pid == 0) {
		close(to_child[1]);
		close(to_parent[0]);
		p->rx = to_child[0];
		p->tx = to_parent[1];
	} else {
		close(to_child[0]);
		close(to_parent[1]);
		p->rx = to_parent[0];
		p->tx = to_child[1];
	}
	return p->pid;
}

char h_peer_wait(struct h_peer *p)
{
	char c;

	CHILD_CHECK(read(p->rx, &c, 1) == 1, "no go from the parent");
	return c;
}

void h_peer_ready(struct h_peer *p, char c)
{
	h_send(p->tx, c);
	h_peer_wait(p);
}

void h_peer_expect(struct h_peer *p, char c)
{
	ck_assert_int_eq(h_recv(p->rx), c);
}

void h_peer_go(struct h_peer *p)
{
	h_send(p->tx, 'g');
}

int h_peer_end(struct h_peer *p)
{
	close(p->tx);
	close(p->rx);
	p->tx = p->rx = -1;
	return h_child_exit_code(p->pid);
}

struct upager *h_child_connect(const char *sock)
{
	struct upager *u = NULL;
	int ret = upager_connect(sock, &u);

	CHILD_CHECK(ret == 0, "connect %s: %s", sock, strerror(-ret));
	return u;
}

void h_send(int fd, char c)
{
	ssize_t n;

	do
		n = write(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1) {
		/* also used by children, where ck_assert cannot report */
		fprintf(stderr, "h_send: %s\n", strerror(errno));
	}
}

int h_recv_timeout(int fd, char *c, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint64_t deadline = h_now_ms() + timeout_ms;
	ssize_t n;

	for (;;) {
		int64_t left = (int64_t)(deadline - h_now_ms());

		/* poll at least once, even with no time left */
		n = poll(&p, 1, left > 0 ? (int)left : 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0) {
			if (left > 0)
				continue;
			return -ETIMEDOUT;
		}
		n = read(fd, c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 ? -errno : (int)n;
	}
}

char h_recv(int fd)
{
	char c = 0;
	int ret = h_recv_timeout(fd, &c, H_TIMEOUT_MS);

	ck_assert_msg(ret == 1, "no message from the other process: %s",
		      ret == 0 ? "EOF" : strerror(-ret));
	return c;
}

void h_send_u64(int fd, uint64_t v)
{
	ssize_t n;

	do
		n = write(fd, &v, sizeof(v));
	while (n < 0 && errno == EINTR);
	if (n != sizeof(v))
		fprintf(stderr, "h_send_u64: %s\n", strerror(errno));
}

uint64_t h_recv_u64(int fd)
{
	uint64_t v = 0;
	char *p = (char *)&v;
	size_t got = 0;

	while (got < sizeof(v)) {
		int ret = h_recv_timeout(fd, p + got, H_TIMEOUT_MS);

		ck_assert_msg(ret == 1,
			      "short message from the other process: %s",
			      ret == 0 ? "EOF" : strerror(-ret));
		got++;
	}
	return v;
}

/* Daemon */

static void exec_daemon(struct h_daemon *d, const char *const *argv)
{
	int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

	signal(SIGPIPE, SIG_DFL);
	if (log < 0 || null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 ||
	    dup2(log, 2) < 0)
		_exit(126);
	/* nothing of the test's (pipes, sockets) goes along */
	close_range(3, ~0u, 0);
	execv(h_upagerd(), (char *const *)argv);
	_exit(127);
}

/*
 * Not a child of the test process: a process that attaches a segment and
 * forks must not find the daemon among its children (see h_daemon.direct).
 * A waiter process in between forwards the daemon's end as its own.
 */
static void spawn_via_waiter(struct h_daemon *d, const char *const *argv)
{
	int p[2];
	pid_t waiter, pid = 0;

	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	waiter = h_fork();
	if (waiter == 0) {
		int status;

		close(p[0]);
		pid = fork();
		if (pid < 0)
			_exit(125);
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			exec_daemon(d, argv);
		}
		if (write(p[1], &pid, sizeof(pid)) != sizeof(pid))
			_exit(125);
		close(p[1]);
		/* SIGTERM is for the daemon; the waiter only waits */
		signal(SIGTERM, SIG_IGN);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (WIFEXITED(status))
			_exit(WEXITSTATUS(status));
		signal(WTERMSIG(status), SIG_DFL);
		kill(getpid(), WTERMSIG(status));
		_exit(124);
	}
	close(p[1]);
	ck_assert_int_eq(read(p[0], &pid, sizeof(pid)), (ssize_t)sizeof(pid));
	close(p[0]);
	d->pid = pid;
	d->waiter = waiter;
}

#define H_ARGV_MAX 32

/* upagerd's arguments: @d's socket, @extra, then $H_UPAGERD_ARGS. */
static void daemon_argv(struct h_daemon *d, const char *const *extra,
			const char *argv[H_ARGV_MAX])
{
	static char env_args[512];
	const char *env = getenv("H_UPAGERD_ARGS");
	size_t n = 0;

	argv[n++] = "upagerd";
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	argv[n++] = "--foreground";
	argv[n++] = "--log-level";
	argv[n++] = "info";
	for (; extra && *extra && n < H_ARGV_MAX - 1; extra++)
		argv[n++] = *extra;
	/* more daemon options for every test, to try the suite with them */
	if (env && *env) {
		snprintf(env_args, sizeof(env_args), "%s", env);
		for (char *t = strtok(env_args, " "); t && n < H_ARGV_MAX - 1;
		     t = strtok(NULL, " "))
			argv[n++] = t;
	}
	argv[n] = NULL;
	h_upagerd();
}

pid_t h_daemon_spawn(struct h_daemon *d, const char *const *extra)
{
	const char *argv[H_ARGV_MAX];

	daemon_argv(d, extra, argv);
	if (!d->direct) {
		spawn_via_waiter(d, argv);
		return d->pid;
	}
	d->pid = d->waiter = h_fork();
	if (d->pid == 0)
		exec_daemon(d, argv);
	return d->pid;
}

/* Waits until a client can connect, or the daemon died. */
static void daemon_wait_ready(struct h_daemon *d)
{
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;

	for (;;) {
		struct upager *u = NULL;
		int status;

		if (upager_connect(d->sock, &u) == 0) {
			upager_disconnect(u);
			return;
		}
		if (waitpid(d->waiter, &status, WNOHANG) == d->waiter) {
			h_daemon_dump_log(d);
			d->pid = d->waiter = 0;
			ck_abort_msg("upagerd exited at start (status %#x)",
				     status);
		}
		if (h_now_ms() > deadline) {
			h_daemon_dump_log(d);
			ck_abort_msg("upagerd did not listen within %d ms",
				     H_TIMEOUT_MS);
		}
		h_nap_ms(5);
	}
}

void h_daemon_init_(struct h_daemon *d, const char *test)
{
	char path[512];
	FILE *f;

	ck_assert_msg(base_dir[0], "h_main() did not run");
	memset(d, 0, sizeof(*d));
	d->test = test;
	snprintf(d->dir, sizeof(d->dir), "%s/d-XXXXXX", base_dir);
	ck_assert_msg(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
	chmod(d->dir, 0755);
	snprintf(d->sock, sizeof(d->sock), "%s/s.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);
	snprintf(path, sizeof(path), "%s/test", d->dir);
	f = fopen(path, "we");
	if (f) {
		fprintf(f, "%s\n", test);
		fclose(f);
	}
}

void h_daemon_start_(struct h_daemon *d, const char *test)
{
	h_daemon_init_(d, test);
	h_daemon_spawn(d, NULL);
	daemon_wait_ready(d);
}

void h_daemon_restart(struct h_daemon *d)
{
	ck_assert_msg(d->pid == 0, "a daemon of this test still runs");
	h_daemon_spawn(d, NULL);
	daemon_wait_ready(d);
}

void h_daemon_dump_log(const struct h_daemon *d)
{
	FILE *f = fopen(d->log, "re");
	char line[1024];

	fprintf(stderr, "----- daemon log of %s (%s) -----\n",
		d->test ? d->test : "?", d->log);
	if (f) {
		while (fgets(line, sizeof(line), f))
			fputs(line, stderr);
		fclose(f);
	}
	fprintf(stderr, "----- end of daemon log -----\n");
}

/* A sanitizer's report in the daemon's log fails the test. */
static void check_log_clean(const struct h_daemon *d)
{
	static const char *bad[] = { "runtime error:", "AddressSanitizer",
				     "LeakSanitizer",
				     "UndefinedBehaviorSanitizer" };
	FILE *f = fopen(d->log, "re");
	char line[1024];

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			if (strstr(line, bad[i])) {
				fclose(f);
				h_daemon_dump_log(d);
				ck_abort_msg("upagerd's log has a sanitizer report: %s",
					     line);
			}
		}
	}
	fclose(f);
}

void h_daemon_stop(struct h_daemon *d)
{
	h_daemon_term(d);
	h_dir_remove(d->dir);
}

void h_daemon_term(struct h_daemon *d)
{
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;
	int status = 0;
	pid_t r;

	ck_assert_msg(d->pid > 0, "no daemon to stop");
	ck_assert_int_eq(kill(d->pid, SIGTERM), 0);
	while ((r = waitpid(d->waiter, &status, WNOHANG)) == 0) {
		if (h_now_ms() > deadline) {
			kill(d->pid, SIGKILL);
			waitpid(d->waiter, &status, 0);
			d->pid = d->waiter = 0;
			h_daemon_dump_log(d);
			ck_abort_msg("upagerd did not stop within %d ms of SIGTERM",
				     H_TIMEOUT_MS);
		}
		h_nap_ms(5);
	}
	d->pid = d->waiter = 0;
	ck_assert_int_eq(r > 0, 1);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		h_daemon_dump_log(d);
		ck_abort_msg("upagerd did not exit 0 on SIGTERM: %s %d",
			     WIFEXITED(status) ? "exit" : "signal",
			     WIFEXITED(status) ? WEXITSTATUS(status) :
						 WTERMSIG(status));
	}
	check_log_clean(d);
}

void h_daemon_kill(struct h_daemon *d)
{
	int status;

	ck_assert_msg(d->pid > 0, "no daemon to kill");
	/* (A test may have killed it already.) */
	ck_assert_msg(kill(d->pid, SIGKILL) == 0 || errno == ESRCH,
		      "kill %d: %s", (int)d->pid, strerror(errno));
	ck_assert_int_eq(waitpid(d->waiter, &status, 0), d->waiter);
	d->pid = d->waiter = 0;
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
		h_daemon_dump_log(d);
		ck_abort_msg("upagerd ended otherwise than by SIGKILL: %#x",
			     status);
	}
	check_log_clean(d);
}

/* Client helpers */

struct upager *h_connect(const struct h_daemon *d)
{
	struct upager *u = NULL;
	int ret = upager_connect(d->sock, &u);

	ck_assert_msg(ret == 0, "connect %s: %s", d->sock, strerror(-ret));
	return u;
}

struct upager_segment_info h_stat(struct upager *u, const char *name)
{
	struct upager_segment_info info;
	int ret = upager_stat(u, name, &info);

	ck_assert_msg(ret == 0, "stat %s: %s", name, strerror(-ret));
	return info;
}

struct upager_daemon_stats h_stats(struct upager *u)
{
	struct upager_daemon_stats st;
	int ret = upager_stats(u, &st);

	ck_assert_msg(ret == 0, "stats: %s", strerror(-ret));
	return st;
}

void h_create(struct upager *u, const char *name, uint64_t size, int source_fd,
	      uint32_t mode)
{
	struct upager_create_opts o = { .size = size,
					.source_fd = source_fd,
					.mode = mode };
	int ret = upager_create(u, name, &o);

	ck_assert_msg(ret == 0, "create %s: %s", name, strerror(-ret));
}

void *h_attach(struct upager *u, const char *name, unsigned int flags,
	       struct upager_attachment **out)
{
	int ret = upager_attach(u, name, flags, out);

	ck_assert_msg(ret == 0, "attach %s: %s", name, strerror(-ret));
	return upager_attachment_addr(*out);
}

bool h_wait_until(bool (*cond)(void *), void *arg, int timeout_ms)
{
	uint64_t deadline = h_now_ms() + timeout_ms;

	for (;;) {
		if (cond(arg))
			return true;
		if (h_now_ms() > deadline)
			return false;
		h_nap_ms(5);
	}
}

struct upager_segment_info h_wait_attachments(struct upager *u,
					      const char *name, uint32_t n)
{
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;
	struct upager_segment_info info;

	for (;;) {
		info = h_stat(u, name);
		if (info.nr_attachments == n || h_now_ms() > deadline)
			return info;
		h_nap_ms(5);
	}
}

/* Data */

void h_fill(void *buf, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
	unsigned char *p = buf;
	size_t i;

	if (!x)
		x = 1;
	for (i = 0; i < n; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (n - i >= 8)
			memcpy(p + i, &x, 8);
		else
			memcpy(p + i, &x, n - i);
	}
}

void *h_make_file(char *path, size_t pathlen, const char *dir, const char *name,
		  size_t size, uint64_t seed)
{
	void *data = malloc(size ? size : 1);
	size_t done = 0;
	int fd;

	ck_assert_ptr_nonnull(data);
	h_fill(data, size, seed);
	snprintf(path, pathlen, "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_msg(fd >= 0, "create %s: %s", path, strerror(errno));
	while (done < size) {
		ssize_t n = write(fd, (char *)data + done, size - done);

		ck_assert_msg(n > 0, "write %s: %s", path, strerror(errno));
		done += n;
	}
	close(fd);
	return data;
}

int h_open_ro(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	return fd;
}

void *h_read_file(const char *path, size_t *size)
{
	int fd = h_open_ro(path);
	struct stat st;
	char *buf;
	size_t done = 0;

	ck_assert_int_eq(fstat(fd, &st), 0);
	buf = malloc(st.st_size + 1);
	ck_assert_ptr_nonnull(buf);
	while (done < (size_t)st.st_size) {
		ssize_t n = pread(fd, buf + done, st.st_size - done, done);

		ck_assert_msg(n > 0, "read %s: %s", path,
			      n < 0 ? strerror(errno) : "short");
		done += n;
	}
	close(fd);
	*size = done;
	return buf;
}

uint64_t h_checksum(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t w;

		memcpy(&w, b + i, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
	}
	for (; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h ^ n;
}

long h_first_diff(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	size_t chunk = 4096;

	for (size_t off = 0; off < n; off += chunk) {
		size_t len = n - off < chunk ? n - off : chunk;

		if (memcmp(x + off, y + off, len) == 0)
			continue;
		for (size_t i = off; i < off + len; i++)
			if (x[i] != y[i])
				return (long)i;
	}
	return -1;
}

long h_first_nonzero(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i])
			return (long)i;
	return -1;
}

static sigjmp_buf bus_jmp;
static volatile uintptr_t bus_addr;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	bus_addr = (uintptr_t)si->si_addr;
	siglongjmp(bus_jmp, 1);
}

int h_read_check(const char *p, const char *expect, size_t len, size_t *off)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO | SA_NODEFER };
	struct sigaction old;
	static const char zeros[H_PAGE];
	volatile size_t pos = 0;
	int ret = H_READ_OK;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(bus_jmp, 1)) {
		*off = pos;
		ret = H_READ_SIGBUS;
		goto out;
	}
	for (; pos < len; pos += H_PAGE) {
		size_t n = len - pos < H_PAGE ? len - pos : H_PAGE;
		const char *e = expect ? expect + pos : zeros;

		/* the access that faults, outside any interceptor */
		(void)*(const volatile char *)(p + pos);
		if (memcmp(p + pos, e, n)) {
			for (size_t i = 0; i < n; i++) {
				if (p[pos + i] != e[i]) {
					*off = pos + i;
					break;
				}
			}
			ret = H_READ_DIFF;
			goto out;
		}
	}
out:
	sigaction(SIGBUS, &old, NULL);
	return ret;
}

int h_open_memfd(pid_t pid, const char *name)
{
	char dir[64], want[128], path[320], link[256];
	struct dirent *de;
	int fd = -1;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	snprintf(want, sizeof(want), "/memfd:upager:%s ", name);
	d = opendir(dir);
	ck_assert_msg(d, "%s: %s", dir, strerror(errno));
	while (fd < 0 && (de = readdir(d))) {
		ssize_t n;

		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		if (!strncmp(link, want, strlen(want)))
			fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	closedir(d);
	ck_assert_msg(fd >= 0, "no memfd of %s in process %d", name, (int)pid);
	return fd;
}

/* Commands */

static void drain(int fd, char **buf, size_t *len, size_t *cap, bool *open_)
{
	char tmp[65536];
	ssize_t n = read(fd, tmp, sizeof(tmp));

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		*open_ = false;
		return;
	}
	if (*len + n + 1 > *cap) {
		*cap = (*len + n + 1) * 2;
		*buf = realloc(*buf, *cap);
		ck_assert_ptr_nonnull(*buf);
	}
	memcpy(*buf + *len, tmp, n);
	*len += n;
	(*buf)[*len] = '\0';
}

void h_run(const char *const *argv, const void *in, size_t in_len,
	   struct h_run *r)
{
	int pin[2], pout[2], perr[2];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t dfl;
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;
	size_t in_done = 0, out_cap = 1, err_cap = 1;
	bool out_open = true, err_open = true, exited = false;
	pid_t pid;
	int ret;

	memset(r, 0, sizeof(*r));
	r->out = calloc(1, 1);
	r->err = calloc(1, 1);
	ck_assert_int_eq(pipe2(pin, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(pout, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(perr, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
	posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
	posix_spawn_file_actions_adddup2(&fa, perr[1], 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	/* posix_spawn shares the memory until exec: no fork event for a
	 * segment this process has attached. */
	/* h_main ignores SIGPIPE; the command gets the default back. */
	posix_spawnattr_init(&attr);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
	ret = posix_spawn(&pid, argv[0], &fa, &attr, (char *const *)argv,
			  environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	ck_assert_msg(ret == 0, "spawn %s: %s", argv[0], strerror(ret));
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	fcntl(pin[1], F_SETFL, O_NONBLOCK);
	if (!in_len) {
		close(pin[1]);
		pin[1] = -1;
	}
	while (out_open || err_open || !exited) {
		struct pollfd p[3] = {
			{ .fd = out_open ? pout[0] : -1, .events = POLLIN },
			{ .fd = err_open ? perr[0] : -1, .events = POLLIN },
			{ .fd = pin[1], .events = POLLOUT },
		};

		if (!exited && waitpid(pid, &r->status, WNOHANG) == pid)
			exited = true;
		if (exited && !out_open && !err_open)
			break;
		if (h_now_ms() > deadline) {
			if (!exited) {
				kill(pid, SIGKILL);
				waitpid(pid, &r->status, 0);
			}
			char cmd[512] = "";

			for (size_t i = 0; argv[i]; i++)
				snprintf(cmd + strlen(cmd),
					 sizeof(cmd) - strlen(cmd), "%s%s",
					 i ? " " : "", argv[i]);
			ck_abort_msg("'%s' did not end within %d ms; stderr: %s",
				     cmd, H_TIMEOUT_MS, r->err);
		}
		if (poll(p, 3, 10) < 0 && errno != EINTR)
			ck_abort_msg("poll: %s", strerror(errno));
		if (p[0].revents)
			drain(pout[0], &r->out, &r->out_len, &out_cap,
			      &out_open);
		if (p[1].revents)
			drain(perr[0], &r->err, &r->err_len, &err_cap,
			      &err_open);
		if (pin[1] >= 0 && (p[2].revents & (POLLOUT | POLLERR))) {
			ssize_t n = write(pin[1], (const char *)in + in_done,
					  in_len - in_done);

			if (n > 0)
				in_done += n;
			if ((n < 0 && errno != EAGAIN && errno != EINTR) ||
			    in_done == in_len) {
				close(pin[1]);
				pin[1] = -1;
			}
		}
	}
	if (pin[1] >= 0)
		close(pin[1]);
	close(pout[0]);
	close(perr[0]);
}

void h_run_free(struct h_run *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

char *h_file_segment(struct h_daemon *d, struct upager *u, const char *name,
		     size_t size, uint64_t seed)
{
	char path[512];
	char *data = h_make_file(path, sizeof(path), d->dir, name, size, seed);
	int fd = h_open_ro(path);

	h_create(u, name, size, fd, 0);
	close(fd);
	return data;
}

/* Helpers added for the hardening tests (resource limits, other users). */
#include <grp.h>

pid_t h_daemon_spawn_with(struct h_daemon *d, const char *const *extra,
			  void (*setup)(void *), void *arg)
{
	const char *argv[H_ARGV_MAX];

	daemon_argv(d, extra, argv);
	d->direct = true;
	d->pid = d->waiter = h_fork();
	if (d->pid == 0) {
		int log = open(d->log,
			       O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

		/* opened before @setup: a daemon of another user can write
		 * it all the same */
		if (log < 0)
			_exit(126);
		if (setup)
			setup(arg);
		signal(SIGPIPE, SIG_DFL);
		if (dup2(log, 1) < 0 || dup2(log, 2) < 0)
			_exit(126);
		close(0);
		if (open("/dev/null", O_RDONLY) != 0)
			_exit(126);
		close_range(3, ~0u, 0);
		execv(h_upagerd(), (char *const *)argv);
		_exit(127);
	}
	return d->pid;
}

bool h_daemon_wait(struct h_daemon *d, int *status)
{
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;

	for (;;) {
		struct upager *u = NULL;
		int ret = upager_connect(d->sock, &u);

		/* EPERM: a daemon of another user listens (the library
		 * refuses to be served by it); EMFILE: one at its
		 * descriptor limit */
		if (ret == 0 || ret == -EPERM || ret == -EMFILE) {
			upager_disconnect(u);
			return true;
		}
		if (waitpid(d->waiter, status, WNOHANG) == d->waiter) {
			d->pid = d->waiter = 0;
			return false;
		}
		if (h_now_ms() > deadline) {
			h_daemon_dump_log(d);
			ck_abort_msg("upagerd neither listened nor exited within %d ms",
				     H_TIMEOUT_MS);
		}
		h_nap_ms(5);
	}
}

void h_become(uid_t uid, gid_t gid, const gid_t *groups, size_t n)
{
	CHILD_CHECK(setgroups(n, groups) == 0, "setgroups: %s", strerror(errno));
	CHILD_CHECK(setresgid(gid, gid, gid) == 0, "setresgid %d: %s", (int)gid,
		    strerror(errno));
	CHILD_CHECK(setresuid(uid, uid, uid) == 0, "setresuid %d: %s", (int)uid,
		    strerror(errno));
	/* As a process started by that user: the uid change made it
	 * undumpable, and a daemon of that user could not read its maps. */
	CHILD_CHECK(prctl(PR_SET_DUMPABLE, 1) == 0, "dumpable: %s",
		    strerror(errno));
}

int h_child_raw_hello(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct upg_hello m;
	char buf[UPG_MSG_MAX];
	int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	ssize_t n;

	CHILD_CHECK(sock >= 0, "socket: %s", strerror(errno));
	CHILD_CHECK(strlen(path) < sizeof(sa.sun_path), "path too long");
	strcpy(sa.sun_path, path);
	CHILD_CHECK(connect(sock, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		    "connect: %s", strerror(errno));
	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	CHILD_CHECK(send(sock, &m, sizeof(m), MSG_NOSIGNAL) == sizeof(m),
		    "send hello: %s", strerror(errno));
	n = recv(sock, buf, sizeof(buf), 0);
	CHILD_CHECK(n == sizeof(m) && ((struct upg_hdr *)buf)->status == 0,
		    "hello: %zd", n);
	return sock;
}

int h_child_request(int sock, void *msg, size_t len, int sendfd, int *fd)
{
	union {
		struct cmsghdr c;
		char b[CMSG_SPACE(4 * sizeof(int))];
	} cbuf, sbuf;
	char buf[UPG_MSG_MAX];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct iovec siov = { .iov_base = msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf.b,
			     .msg_controllen = sizeof(cbuf.b) };
	struct msghdr smh = { .msg_iov = &siov, .msg_iovlen = 1 };
	struct pollfd p = { .fd = sock, .events = POLLIN };
	struct cmsghdr *c;
	ssize_t n;

	*fd = -1;
	if (sendfd >= 0) {
		memset(&sbuf, 0, sizeof(sbuf));
		smh.msg_control = sbuf.b;
		smh.msg_controllen = CMSG_SPACE(sizeof(int));
		c = CMSG_FIRSTHDR(&smh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &sendfd, sizeof(int));
	}
	CHILD_CHECK(sendmsg(sock, &smh, MSG_NOSIGNAL) == (ssize_t)len,
		    "send: %s", strerror(errno));
	CHILD_CHECK(poll(&p, 1, H_TIMEOUT_MS) == 1, "no reply");
	n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	CHILD_CHECK(n >= (ssize_t)sizeof(struct upg_hdr), "reply: %zd", n);
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		CHILD_CHECK(c->cmsg_type == SCM_RIGHTS &&
				    c->cmsg_len == CMSG_LEN(sizeof(int)) &&
				    *fd < 0,
			    "more than one descriptor with the reply");
		memcpy(fd, CMSG_DATA(c), sizeof(int));
	}
	return ((struct upg_hdr *)buf)->status;
}

void h_daemon_start_args_(struct h_daemon *d, const char *test,
			  const char *const *extra)
{
	h_daemon_init_(d, test);
	h_daemon_spawn(d, extra);
	daemon_wait_ready(d);
}
