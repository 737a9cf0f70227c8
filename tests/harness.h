/* SPDX-License-Identifier: MIT */
/*
 * The integration-test harness: a real upagerd on a private socket in a
 * fresh directory, real client processes, and helpers to check bytes.
 *
 * Every test program's main() is h_main(suite): it runs the suite (CK_FORK:
 * each test in its own process), prints the log of every daemon a failed
 * test left behind, and exits EXIT_FAILURE on any failure.  Each test case
 * (h_tcase) or test (h_add_test) declares the userfaultfd features it
 * needs: where the kernel lacks one, that case or test is left out with a
 * line "SKIP ..." on stdout, and the program exits 77 when nothing was
 * left to run.  $H_HIDE_FEATURES (a mask of UFFD_FEATURE_* bits) makes
 * the harness take those features for missing, to try the skips.
 *
 * Processes the harness starts (daemons, forked clients) die with the test
 * process that started them (PR_SET_PDEATHSIG), so a failed assertion
 * leaves nothing running.  Waits are bounded (H_TIMEOUT_MS) and poll a
 * condition; nothing sleeps and hopes.
 */
#ifndef UPAGER_TESTS_HARNESS_H
#define UPAGER_TESTS_HARNESS_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <upager/upager.h>

#include "uffd-compat.h"

#define H_TIMEOUT_MS 10000 /* any wait for the daemon or a child */
#define H_TCASE_TIMEOUT 60 /* seconds, per test */
#define H_PAGE 4096u
#define H_MIB (1024u * 1024u)

/*
 * Userfaultfd features (UFFD_FEATURE_*) a test case needs, for h_tcase():
 * H_NEED_DAEMON to start a daemon (and attach shared), H_NEED_BASE to
 * attach read-only as well.
 */
#define H_NEED_DAEMON UFFD_FEATURE_MISSING_SHMEM
#define H_NEED_BASE (H_NEED_DAEMON | UFFD_FEATURE_MINOR_SHMEM)

/* Runs @s; never returns.  Exit 77 when every test was left out. */
int h_main(Suite *s) __attribute__((noreturn));

/* The program's suite, named @name (for the SKIP lines). */
Suite *h_suite(const char *name);

/*
 * h_tcase - a test case @name of @s, with the harness's timeout, whose
 * tests need the userfaultfd @features (0: none).  Where the kernel lacks
 * one, the case is set aside: its tests never run, and a line
 * "SKIP <suite>/<case>: the kernel lacks userfaultfd <FEATURE>" says so.
 */
TCase *h_tcase(Suite *s, const char *name, uint64_t features);

/*
 * h_add_test - tcase_add_test(@tc, @test), unless the kernel lacks a
 * userfaultfd feature of @features, which the test needs beyond its
 * case's: then it is left out with a line "SKIP <suite>/<case>/<test>".
 */
void h_add_test(TCase *tc, const TTest *test, uint64_t features);

struct h_daemon {
	pid_t pid;	  /* the daemon */
	pid_t waiter;	  /* our child that ends as the daemon does */
	bool direct;	  /* the daemon is our own child (no waiter) */
	const char *test; /* the test that started it, for the log */
	char dir[256];	  /* fresh, holds the socket and the log */
	char sock[300];
	char log[300];
};

/*
 * h_daemon_start - a fresh directory and a daemon listening in it; returns
 * once a client can connect.  Fails the test otherwise.
 */
#define h_daemon_start(d) h_daemon_start_((d), __func__)
void h_daemon_start_(struct h_daemon *d, const char *test);

/* Only the fresh directory: set fields, then h_daemon_restart(). */
#define h_daemon_init(d) h_daemon_init_((d), __func__)
void h_daemon_init_(struct h_daemon *d, const char *test);

/* Starts the daemon again in @d's directory, on the same socket. */
void h_daemon_restart(struct h_daemon *d);

/*
 * h_daemon_spawn - start upagerd on @d's socket with @extra arguments
 * (NULL-terminated, may be NULL), then those of $H_UPAGERD_ARGS (split at
 * spaces), without waiting for it.  Returns its pid.
 */
pid_t h_daemon_spawn(struct h_daemon *d, const char *const *extra);

/*
 * h_daemon_stop - SIGTERM, wait (bounded), assert it exited 0, remove the
 * directory.  The log is printed when it did not exit 0.
 */
void h_daemon_stop(struct h_daemon *d);

/* The same, but the directory stays. */
void h_daemon_term(struct h_daemon *d);

/* SIGKILL and reap it; the directory stays (h_daemon_stop or h_dir_remove). */
void h_daemon_kill(struct h_daemon *d);

/* Prints the daemon's log to stderr. */
void h_daemon_dump_log(const struct h_daemon *d);

/* Removes @dir and everything in it. */
void h_dir_remove(const char *dir);

/* A connection to @d (asserted). */
struct upager *h_connect(const struct h_daemon *d);

/* Segment info / daemon counters (asserted). */
struct upager_segment_info h_stat(struct upager *u, const char *name);
struct upager_daemon_stats h_stats(struct upager *u);

/* Creates @name over @source_fd (-1: zero) with @mode (asserted). */
void h_create(struct upager *u, const char *name, uint64_t size, int source_fd,
	      uint32_t mode);

/* Attaches @name (asserted); returns the mapping. */
void *h_attach(struct upager *u, const char *name, unsigned int flags,
	       struct upager_attachment **out);

/*
 * h_wait_attachments - poll stat until @name has @n attachments, at most
 * H_TIMEOUT_MS.  Returns the last info; the caller asserts on it.
 */
struct upager_segment_info h_wait_attachments(struct upager *u,
					      const char *name, uint32_t n);

/*
 * H_WAIT_STAT - poll stat of @name into @info until @cond holds, at most
 * H_TIMEOUT_MS; the caller asserts on @info afterwards.  Counters are
 * updated after the faulting thread was woken, so a client that just read
 * its pages may see them a moment later: wait for them, never sleep.
 */
#define H_WAIT_STAT(u, name, info, cond)                    \
	do {                                                \
		uint64_t h_dl_ = h_now_ms() + H_TIMEOUT_MS; \
		for (;;) {                                  \
			(info) = h_stat((u), (name));       \
			if ((cond) || h_now_ms() > h_dl_)   \
				break;                      \
			h_nap_ms(5);                        \
		}                                           \
	} while (0)

/* Likewise for the daemon-wide counters. */
#define H_WAIT_STATS(u, st, cond)                           \
	do {                                                \
		uint64_t h_dl_ = h_now_ms() + H_TIMEOUT_MS; \
		for (;;) {                                  \
			(st) = h_stats(u);                  \
			if ((cond) || h_now_ms() > h_dl_)   \
				break;                      \
			h_nap_ms(5);                        \
		}                                           \
	} while (0)

uint64_t h_now_ms(void);
void h_nap_ms(int ms);

/* Poll @cond(@arg) every few ms for at most @timeout_ms. */
bool h_wait_until(bool (*cond)(void *), void *arg, int timeout_ms);

/* Data */

/* @n bytes of xorshift64 data from @seed (never all zero in a page). */
void h_fill(void *buf, size_t n, uint64_t seed);

/*
 * h_make_file - @dir/@name holding @size bytes of h_fill(@seed) data.
 * Writes the path to @path.  Returns the data (malloc'ed, the caller frees),
 * for comparison.
 */
void *h_make_file(char *path, size_t pathlen, const char *dir, const char *name,
		  size_t size, uint64_t seed);

/* Opens @path read-only (asserted). */
int h_open_ro(const char *path);

/*
 * h_file_segment - a file of @size bytes of h_fill(@seed) data in @d's
 * directory, and segment @name over it.  Returns the data (free it).
 */
char *h_file_segment(struct h_daemon *d, struct upager *u, const char *name,
		     size_t size, uint64_t seed);

/* The whole of @path, malloc'ed; @size gets its length. */
void *h_read_file(const char *path, size_t *size);

/* A 64-bit checksum of @n bytes. */
uint64_t h_checksum(const void *p, size_t n);

/* The offset of the first byte where @a and @b differ, or -1. */
long h_first_diff(const void *a, const void *b, size_t n);

/* The offset of the first non-zero byte of @p, or -1. */
long h_first_nonzero(const void *p, size_t n);

/*
 * h_read_check - read [p, p + len) a page at a time (p page-aligned) and
 * compare with @expect (NULL: zeros).  Returns H_READ_OK, H_READ_DIFF with
 * the offset of the first wrong byte in @off, or H_READ_SIGBUS with the
 * offset of the page whose access raised SIGBUS in @off (every byte before
 * it was right).  For forked children: installs a SIGBUS handler.
 */
enum { H_READ_OK = 0, H_READ_DIFF = 1, H_READ_SIGBUS = 2 };
int h_read_check(const char *p, const char *expect, size_t len, size_t *off);

/* Opens (through /proc) the memfd of segment @name that @pid holds. */
int h_open_memfd(pid_t pid, const char *name);

/* Processes */

/*
 * h_fork - fork; the child dies with its parent.  Returns the pid (in the
 * parent) or 0 (in the child).
 */
pid_t h_fork(void);

/* Waits (bounded) for @pid; returns its wait status.  Kills it on timeout
 * and fails the test. */
int h_wait_child(pid_t pid);

/* The exit code @pid ended with; fails the test if it did not exit. */
int h_child_exit_code(pid_t pid);

/* Asserts that @status is a normal exit with @code. */
#define h_assert_exit(status, code)                                       \
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == (code), \
		      "expected exit %d, got %s %d", (code),              \
		      WIFEXITED(status) ? "exit" : "signal",              \
		      WIFEXITED(status) ? WEXITSTATUS(status) :           \
					  WTERMSIG(status))

/*
 * A forked child and a pipe each way between it and its parent: the
 * handshake "the child is ready (a byte), the parent says go (a byte)".
 * After h_peer_fork, @rx and @tx are this process's ends, in either
 * process (also for h_send_u64 and h_recv_u64).
 */
struct h_peer {
	pid_t pid; /* the child, in the parent; 0 in the child */
	int rx;	   /* reads what the other process sends */
	int tx;	   /* sends to the other process */
};

/*
 * h_peer_fork - h_fork() with the two pipes (close-on-exec).  Returns the
 * child's pid in the parent, 0 in the child.
 */
pid_t h_peer_fork(struct h_peer *p);

/* In the child: says @c to the parent, then waits for its go. */
void h_peer_ready(struct h_peer *p, char c);

/* In the child: waits for the parent's go (a byte); returns it. */
char h_peer_wait(struct h_peer *p);

/* In the parent: asserts that the child's next byte is @c (bounded). */
void h_peer_expect(struct h_peer *p, char c);

/* In the parent: lets a child waiting in h_peer_ready or h_peer_wait go. */
void h_peer_go(struct h_peer *p);

/*
 * h_peer_end - in the parent: closes its ends and waits (bounded) for the
 * child; returns its exit code (fails the test if it did not exit).
 */
int h_peer_end(struct h_peer *p);

/* One-byte messages over a pipe: bounded reads. */
void h_send(int fd, char c);
char h_recv(int fd);				     /* asserted */
int h_recv_timeout(int fd, char *c, int timeout_ms); /* 1, 0 on EOF, -ETIMEDOUT
						      */
void h_send_u64(int fd, uint64_t v);
uint64_t h_recv_u64(int fd);

/* In a forked child: report and _exit(1) unless @cond. */
#define CHILD_CHECK(cond, ...)                                         \
	do {                                                           \
		if (!(cond)) {                                         \
			h_child_fail(__FILE__, __LINE__, __VA_ARGS__); \
		}                                                      \
	} while (0)
void h_child_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 3, 4)));

/* A connection made in a forked child (reports and exits on failure). */
struct upager *h_child_connect(const char *sock);

struct h_run {
	int status;	 /* wait status */
	char *out, *err; /* NUL-terminated */
	size_t out_len, err_len;
};

/*
 * h_run - run @argv (NULL-terminated) with @in on its stdin, capturing
 * stdout and stderr; killed after H_TIMEOUT_MS (fails the test).
 */
void h_run(const char *const *argv, const void *in, size_t in_len,
	   struct h_run *r);
void h_run_free(struct h_run *r);

/* $UPAGERD / $UPAGERCTL */
const char *h_upagerd(void);
const char *h_upagerctl(void);

/*
 * h_daemon_spawn_with - like h_daemon_spawn(), but the daemon is our own
 * child (@d->direct) and @setup(@arg) runs in it just before the exec: to
 * set resource limits, drop privileges (report failures with CHILD_CHECK).
 * The log is opened before @setup, as the test's user.
 */
pid_t h_daemon_spawn_with(struct h_daemon *d, const char *const *extra,
			  void (*setup)(void *), void *arg);

/*
 * h_daemon_wait - wait (bounded) until a client can connect to @d's
 * daemon (returns true) or it exits (returns false, its wait status in
 * @status, and @d->pid is 0).  Fails the test on timeout.
 */
bool h_daemon_wait(struct h_daemon *d, int *status);

/*
 * h_become - in a forked child: become @uid with primary group @gid and
 * the @n supplementary @groups (may be NULL when 0), dumpable as a
 * process that user started.
 */
void h_become(uid_t uid, gid_t gid, const gid_t *groups, size_t n);

/*
 * h_child_raw_hello - in a forked child: a raw connection to @path that
 * said hello (checked).
 */
int h_child_raw_hello(const char *path);

/*
 * h_child_request - in a forked child: send the request @msg (with @sendfd
 * as SCM_RIGHTS unless < 0) and return its reply's status; @fd gets a
 * descriptor that came with the reply, or -1.
 */
int h_child_request(int sock, void *msg, size_t len, int sendfd, int *fd);

/*
 * h_daemon_start_args - h_daemon_start() with more upagerd options
 * (@extra, NULL-terminated): limits, timeouts.
 */
#define h_daemon_start_args(d, extra) \
	h_daemon_start_args_((d), __func__, (extra))
void h_daemon_start_args_(struct h_daemon *d, const char *test,
			  const char *const *extra);

#endif
