// SPDX-License-Identifier: MIT
/*
 * Per-user limits (issue 10, items 6 and 7): one user cannot exhaust the
 * daemon for everyone, and a name cannot be squatted on a program that
 * says whose segment it expects.
 *
 * The daemon runs as root.  User A (uid 65534) is driven to each of its
 * limits and refused with the documented error, while user B (uid 65533)
 * is still served -- it creates, attaches, faults and reads its bytes back
 * -- and root, exempt by default, is not limited at all.  Usage is checked
 * as each user sees it and as root sees it, value by value.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "harness.h"
#include "proto.h"
#include "uffd.h"

#define USER_A 65534
#define USER_B 65533
#define KIB 1024u

static void become(uid_t uid)
{
	h_become(uid, uid, NULL, 0);
}

/* Waits (bounded) for @pid and asserts it exited 0. */
static void expect_ok(pid_t pid)
{
	int status = h_wait_child(pid);

	h_assert_exit(status, 0);
}

static int create(struct upager *u, const char *name, uint64_t size,
		  uint32_t mode)
{
	struct upager_create_opts o = { .size = size,
					.source_fd = -1,
					.mode = mode };

	return upager_create(u, name, &o);
}

/*
 * In a child: @u is served: a new segment @name is created and attached,
 * its untouched pages read as zero, bytes written through one attachment
 * are read back through a second, read-only one; then it is removed.
 */
static void child_served(struct upager *u, const char *name, uint64_t seed)
{
	const size_t size = 4 * H_PAGE;
	struct upager_attachment *a, *r;
	char data[2 * H_PAGE], *p, *q;
	int ret;

	ret = create(u, name, size, 0600);
	CHILD_CHECK(ret == 0, "%s: create: %d", name, ret);
	ret = upager_attach(u, name, 0, &a);
	CHILD_CHECK(ret == 0, "%s: attach: %d", name, ret);
	p = upager_attachment_addr(a);
	CHILD_CHECK(h_first_nonzero(p, size) == -1, "%s: not zero", name);
	h_fill(data, sizeof(data), seed);
	memcpy(p + H_PAGE, data, sizeof(data));
	ret = upager_attach(u, name, UPAGER_ATTACH_RDONLY, &r);
	CHILD_CHECK(ret == 0, "%s: attach read-only: %d", name, ret);
	q = upager_attachment_addr(r);
	CHILD_CHECK(memcmp(q + H_PAGE, data, sizeof(data)) == 0 &&
			    h_first_nonzero(q, H_PAGE) == -1 &&
			    h_first_nonzero(q + 3 * H_PAGE, H_PAGE) == -1,
		    "%s: the bytes read back differ", name);
	CHILD_CHECK(upager_detach(r) == 0 && upager_detach(a) == 0,
		    "%s: detach", name);
	ret = upager_delete(u, name, 0);
	CHILD_CHECK(ret == 0, "%s: delete: %d", name, ret);
}

/* In a child: its own usage record, the one record a user is shown. */
static struct upager_usage child_usage(struct upager *u)
{
	struct upager_usage v[4];
	int n;

	memset(v, 0xa5, sizeof(v));
	n = upager_usage(u, v, 4);
	CHILD_CHECK(n == 1, "usage: %d records", n);
	CHILD_CHECK(v[0].uid == geteuid(), "usage of uid %u", v[0].uid);
	return v[0];
}

/* Root's view: @uid's record, if it has one.  Sorted, no duplicates. */
static bool usage_of(struct upager *u, uid_t uid, struct upager_usage *out)
{
	struct upager_usage v[16];
	int n = upager_usage(u, v, 16);

	ck_assert_int_ge(n, 1);
	ck_assert_int_le(n, 16);
	for (int i = 1; i < n; i++)
		ck_assert_uint_lt(v[i - 1].uid, v[i].uid);
	for (int i = 0; i < n; i++) {
		if (v[i].uid == uid) {
			*out = v[i];
			return true;
		}
	}
	return false;
}

struct wait_usage {
	struct upager *u;
	uid_t uid;
	uint64_t connections, attachments;
};

static bool usage_reached(void *arg)
{
	struct wait_usage *w = arg;
	struct upager_usage r = { 0 };

	usage_of(w->u, w->uid, &r);
	return r.connections == w->connections &&
	       r.attachments == w->attachments;
}

/* Waits (bounded) until @uid holds that many connections and attachments:
 * the daemon learns of a process's exit a moment after it. */
static void wait_usage(struct upager *u, uid_t uid, uint64_t conns,
		       uint64_t atts)
{
	struct wait_usage w = { u, uid, conns, atts };

	ck_assert_msg(h_wait_until(usage_reached, &w, H_TIMEOUT_MS),
		      "uid %u: not %llu connections and %llu attachments",
		      (unsigned int)uid, (unsigned long long)conns,
		      (unsigned long long)atts);
}

/* The exempt view of root: every limit unset. */
static void assert_exempt(const struct upager_usage *r)
{
	ck_assert_uint_eq(r->flags, UPAGER_USAGE_EXEMPT);
	ck_assert_uint_eq(r->max_segments, UPAGER_UNLIMITED);
	ck_assert_uint_eq(r->max_bytes, UPAGER_UNLIMITED);
	ck_assert_uint_eq(r->max_connections, UPAGER_UNLIMITED);
	ck_assert_uint_eq(r->max_attachments, UPAGER_UNLIMITED);
}

/* upagerctl run as @uid: exit status, stdout and stderr (at most 4 KiB). */
struct ctl_out {
	int status;
	char out[4096], err[4096];
};

static void read_all(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r;

	while (n + 1 < len && (r = read(fd, buf + n, len - 1 - n)) > 0)
		n += r;
	buf[n] = '\0';
	close(fd);
}

static void ctl_as_in(uid_t uid, const struct h_daemon *d, const char *in,
		      struct ctl_out *o, const char *a1, const char *a2,
		      const char *a3, const char *a4)
{
	const char *argv[] = {
		h_upagerctl(), "--socket", d->sock, a1, a2, a3, a4, NULL
	};
	int out[2], err[2], inp[2];
	pid_t pid;

	ck_assert_int_eq(pipe(out), 0);
	ck_assert_int_eq(pipe(err), 0);
	ck_assert_int_eq(pipe(inp), 0);
	/* small: it fits the pipe */
	ck_assert_int_eq(write(inp[1], in, strlen(in)), (ssize_t)strlen(in));
	close(inp[1]);
	pid = h_fork();
	if (pid == 0) {
		become(uid);
		dup2(inp[0], 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		close_range(3, ~0u, 0);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(inp[0]);
	close(out[1]);
	close(err[1]);
	read_all(out[0], o->out, sizeof(o->out));
	read_all(err[0], o->err, sizeof(o->err));
	o->status = h_wait_child(pid);
}

#define ctl_as(uid, d, o, a1, a2, a3, a4) \
	ctl_as_in((uid), (d), "", (o), (a1), (a2), (a3), (a4))

/*
 * Segments and bytes: A is refused at each limit with -EDQUOT, its
 * segments count until their memory is gone (after a delete, until the
 * last detach) and after its processes exit; B is served meanwhile and has
 * limits of its own; root is not limited.
 */
START_TEST(test_segments_and_bytes)
{
	static const char *const args[] = { "--max-segments", "2",
					    "--max-bytes", "1M", NULL };
	struct upager_usage r;
	struct h_daemon d;
	struct upager *u;
	struct ctl_out o;
	struct h_peer pa;
	pid_t b;

	h_daemon_start_args(&d, args);
	if (h_peer_fork(&pa) == 0) {
		struct upager_attachment *at;
		struct upager_usage me;
		struct upager *cu;
		char *p;
		int ret;

		become(USER_A);
		cu = h_child_connect(d.sock);
		ret = create(cu, "a1", 512 * KIB, 0);
		CHILD_CHECK(ret == 0, "a1: %d", ret);
		errno = 0;
		ret = create(cu, "a2", 600 * KIB, 0);
		CHILD_CHECK(ret == -EDQUOT && errno == EDQUOT,
			    "a2 of 600K past 1M: %d", ret);
		me = child_usage(cu);
		CHILD_CHECK(me.segments == 1 && me.bytes == 512 * KIB &&
				    me.flags == 0 && me.max_segments == 2 &&
				    me.max_bytes == 1024 * KIB,
			    "usage: %llu segments, %llu bytes",
			    (unsigned long long)me.segments,
			    (unsigned long long)me.bytes);
		/* up to the limit exactly */
		ret = create(cu, "a2", 512 * KIB, 0);
		CHILD_CHECK(ret == 0, "a2 of 512K: %d", ret);
		ret = create(cu, "a3", H_PAGE, 0);
		CHILD_CHECK(ret == -EDQUOT, "a third segment: %d", ret);
		ret = create(cu, "a1", H_PAGE, 0);
		CHILD_CHECK(ret == -EEXIST, "a taken name: %d", ret);
		/* deleted while attached: it holds its memory still */
		ret = upager_attach(cu, "a1", 0, &at);
		CHILD_CHECK(ret == 0, "attach a1: %d", ret);
		p = upager_attachment_addr(at);
		p[0] = 'A';
		ret = upager_delete(cu, "a1", UPAGER_DELETE_FORCE);
		CHILD_CHECK(ret == 0, "delete a1: %d", ret);
		ret = create(cu, "a3", H_PAGE, 0);
		CHILD_CHECK(ret == -EDQUOT, "a3 while a1 is attached: %d", ret);
		me = child_usage(cu);
		CHILD_CHECK(me.segments == 2 && me.bytes == 1024 * KIB &&
				    me.attachments == 1 && me.connections == 1,
			    "usage with a1 deleted: %llu segments",
			    (unsigned long long)me.segments);
		CHILD_CHECK(p[0] == 'A', "a1's byte");
		CHILD_CHECK(upager_detach(at) == 0, "detach");
		ret = create(cu, "a3", 10000, 0);
		CHILD_CHECK(ret == 0, "a3 once a1 is gone: %d", ret);
		me = child_usage(cu);
		/* sizes count rounded up to whole pages */
		CHILD_CHECK(me.segments == 2 &&
				    me.bytes == 512 * KIB + 3 * H_PAGE &&
				    me.attachments == 0,
			    "usage: %llu segments, %llu bytes",
			    (unsigned long long)me.segments,
			    (unsigned long long)me.bytes);
		h_peer_ready(&pa, 'r');
		upager_disconnect(cu);
		_exit(0);
	}
	h_peer_expect(&pa, 'r');
	/* B: served, with limits of its own */
	b = h_fork();
	if (b == 0) {
		struct upager *cu;
		int ret;

		become(USER_B);
		cu = h_child_connect(d.sock);
		child_served(cu, "b-served", 71);
		ret = create(cu, "b1", 1024 * KIB, 0);
		CHILD_CHECK(ret == 0, "b1 of 1M: %d", ret);
		ret = create(cu, "b2", H_PAGE, 0);
		CHILD_CHECK(ret == -EDQUOT, "b2 past 1M: %d", ret);
		upager_disconnect(cu);
		_exit(0);
	}
	expect_ok(b);
	/* root: exempt */
	u = h_connect(&d);
	ck_assert_int_eq(create(u, "r1", 1ull << 30, 0), 0);
	ck_assert_int_eq(create(u, "r2", 1ull << 30, 0), 0);
	ck_assert_int_eq(create(u, "r3", 1ull << 30, 0), 0);
	ck_assert(usage_of(u, 0, &r));
	assert_exempt(&r);
	ck_assert_uint_eq(r.segments, 3);
	ck_assert_uint_eq(r.bytes, 3ull << 30);
	ck_assert(usage_of(u, USER_A, &r));
	ck_assert_uint_eq(r.flags, 0);
	ck_assert_uint_eq(r.segments, 2);
	ck_assert_uint_eq(r.bytes, 512 * KIB + 3 * H_PAGE);
	ck_assert_uint_eq(r.connections, 1);
	ck_assert_uint_eq(r.max_segments, 2);
	ck_assert_uint_eq(r.max_bytes, 1024 * KIB);
	ck_assert(usage_of(u, USER_B, &r));
	ck_assert_uint_eq(r.segments, 1);
	ck_assert_uint_eq(r.bytes, 1024 * KIB);

	/* A's processes are gone; its segments are not, nor their count */
	h_peer_go(&pa);
	ck_assert_int_eq(h_peer_end(&pa), 0);
	wait_usage(u, USER_A, 0, 0);
	ck_assert(usage_of(u, USER_A, &r));
	ck_assert_uint_eq(r.segments, 2);
	ck_assert_uint_eq(r.bytes, 512 * KIB + 3 * H_PAGE);
	/* and upagerctl says which limit */
	ctl_as(USER_A, &d, &o, "create", "a4", "--size", "4K");
	h_assert_exit(o.status, 1);
	ck_assert_msg(strstr(o.err, "over the segment limit of uid 65534: "
				    "2 of 2 segments"),
		      "stderr: %s", o.err);
	ctl_as(USER_B, &d, &o, "create", "b2", "--size", "4K");
	h_assert_exit(o.status, 1);
	ck_assert_msg(strstr(o.err, "over the size limit of uid 65533: "
				    "1.0 MiB of 1.0 MiB in segments"),
		      "stderr: %s", o.err);
	/* the owner or root frees them */
	ck_assert_int_eq(upager_delete(u, "a2", 0), 0);
	ck_assert(usage_of(u, USER_A, &r));
	ck_assert_uint_eq(r.segments, 1);
	ck_assert_uint_eq(r.bytes, 3 * H_PAGE);
	ctl_as(USER_A, &d, &o, "create", "a4", "--size", "4K");
	h_assert_exit(o.status, 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* --limit-root: root is limited like anyone. */
START_TEST(test_limit_root)
{
	static const char *const args[] = { "--max-segments", "1",
					    "--limit-root", NULL };
	struct upager_usage r;
	struct h_daemon d;
	struct upager *u;

	h_daemon_start_args(&d, args);
	u = h_connect(&d);
	ck_assert_int_eq(create(u, "r1", H_PAGE, 0), 0);
	ck_assert_int_eq(create(u, "r2", H_PAGE, 0), -EDQUOT);
	ck_assert(usage_of(u, 0, &r));
	ck_assert_uint_eq(r.flags, 0);
	ck_assert_uint_eq(r.segments, 1);
	ck_assert_uint_eq(r.max_segments, 1);
	ck_assert_uint_ne(r.max_bytes, UPAGER_UNLIMITED);
	ck_assert_int_eq(upager_delete(u, "r1", 0), 0);
	ck_assert_int_eq(create(u, "r2", H_PAGE, 0), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * A REGISTER made with a memfd fetched while A was under its limit: the
 * register itself is checked.  Returns its status.
 */
static int raw_register_as_a(const struct h_daemon *d, int memfd,
			     uint64_t seg_id, size_t size)
{
	struct upg_register m;
	int sock = h_child_raw_hello(d->sock), uffd, fd, ret;
	void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd,
			 0);

	CHILD_CHECK(map != MAP_FAILED, "mmap: %s", strerror(errno));
	uffd = uffd_open(UFFD_FEATURE_MISSING_SHMEM, UFFD_FEATURE_MISSING_SHMEM,
			 UFFD_OPEN_USER_ONLY, NULL);
	CHILD_CHECK(uffd >= 0, "userfaultfd: %s", strerror(-uffd));
	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_REGISTER, sizeof(m), 2);
	m.seg_id = seg_id;
	m.addr = (uintptr_t)map;
	m.len = size;
	m.uffd_ioctls = ~0ull;
	ret = h_child_request(sock, &m, sizeof(m), uffd, &fd);
	close(uffd);
	close(sock);
	/* never touched: it stays mapped until the process exits */
	return ret;
}

/*
 * Attachments: A is refused its third (at attach and at register alike);
 * B is served meanwhile; root is not limited.
 */
START_TEST(test_attachments)
{
	static const char *const args[] = { "--max-attachments", "2", NULL };
	const size_t size = 8 * H_PAGE;
	struct upager_attachment *ra[3];
	struct upager_usage r;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	struct h_peer pa;
	pid_t b;

	h_daemon_start_args(&d, args);
	u = h_connect(&d);
	ck_assert_int_eq(create(u, "shared", size, 0666), 0);
	data = malloc(size);
	h_fill(data, size, 5);
	map = h_attach(u, "shared", 0, &ra[0]);
	memcpy(map, data, size);
	ck_assert_int_eq(upager_detach(ra[0]), 0);
	if (h_peer_fork(&pa) == 0) {
		struct upager_segment_info info;
		struct upager_attachment *x, *y, *z = NULL;
		struct upager_usage me;
		struct upager *cu;
		int memfd, ret;
		char *p, *q;

		become(USER_A);
		cu = h_child_connect(d.sock);
		ret = upager_stat(cu, "shared", &info);
		CHILD_CHECK(ret == 0, "stat: %d", ret);
		/* a memfd while under the limit, for a late register */
		{
			struct upg_name m;
			int sock = h_child_raw_hello(d.sock);

			memset(&m, 0, sizeof(m));
			proto_hdr_init(&m.h, UPG_ATTACH, sizeof(m), 2);
			strcpy(m.name, "shared");
			ret = h_child_request(sock, &m, sizeof(m), -1, &memfd);
			CHILD_CHECK(ret == 0 && memfd >= 0, "raw attach: %d",
				    ret);
			close(sock);
		}
		ret = upager_attach(cu, "shared", 0, &x);
		CHILD_CHECK(ret == 0, "first: %d", ret);
		ret = upager_attach(cu, "shared", UPAGER_ATTACH_RDONLY, &y);
		CHILD_CHECK(ret == 0, "second: %d", ret);
		errno = 0;
		ret = upager_attach(cu, "shared", 0, &z);
		CHILD_CHECK(ret == -EDQUOT && errno == EDQUOT && !z,
			    "third: %d", ret);
		ret = upager_attach(cu, "shared", UPAGER_ATTACH_RDONLY, &z);
		CHILD_CHECK(ret == -EDQUOT, "third read-only: %d", ret);
		ret = raw_register_as_a(&d, memfd, info.id, size);
		CHILD_CHECK(ret == -EDQUOT, "a late register: %d", ret);
		p = upager_attachment_addr(x);
		q = upager_attachment_addr(y);
		CHILD_CHECK(memcmp(p, data, size) == 0 &&
				    memcmp(q, data, size) == 0,
			    "A's bytes");
		me = child_usage(cu);
		CHILD_CHECK(me.attachments == 2 && me.max_attachments == 2,
			    "usage: %llu attachments",
			    (unsigned long long)me.attachments);

		h_peer_ready(&pa, 'r');
		/* a slot free again */
		CHILD_CHECK(upager_detach(y) == 0, "detach");
		ret = upager_attach(cu, "shared", 0, &z);
		CHILD_CHECK(ret == 0, "after a detach: %d", ret);
		CHILD_CHECK(memcmp(upager_attachment_addr(z), data, size) == 0,
			    "bytes");
		ret = raw_register_as_a(&d, memfd, info.id, size);
		CHILD_CHECK(ret == -EDQUOT, "a late register at 2: %d", ret);
		CHILD_CHECK(upager_detach(z) == 0, "detach");
		ret = raw_register_as_a(&d, memfd, info.id, size);
		CHILD_CHECK(ret == 0, "a late register under: %d", ret);
		upager_detach(x);
		upager_disconnect(cu);
		_exit(0);
	}
	h_peer_expect(&pa, 'r');
	ck_assert(usage_of(u, USER_A, &r));
	ck_assert_uint_eq(r.attachments, 2);
	b = h_fork();
	if (b == 0) {
		struct upager_attachment *x;
		struct upager *cu;
		int ret;

		become(USER_B);
		cu = h_child_connect(d.sock);
		child_served(cu, "b-served", 72);
		ret = upager_attach(cu, "shared", 0, &x);
		CHILD_CHECK(ret == 0, "B attaches: %d", ret);
		CHILD_CHECK(memcmp(upager_attachment_addr(x), data, size) == 0,
			    "B's bytes");
		upager_detach(x);
		upager_disconnect(cu);
		_exit(0);
	}
	expect_ok(b);
	for (int i = 0; i < 3; i++) {
		map = h_attach(u, "shared", UPAGER_ATTACH_RDONLY, &ra[i]);
		ck_assert_int_eq(memcmp(map, data, size), 0);
	}
	ck_assert(usage_of(u, 0, &r));
	ck_assert_uint_eq(r.attachments, 3);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(upager_detach(ra[i]), 0);
	h_peer_go(&pa);
	ck_assert_int_eq(h_peer_end(&pa), 0);
	wait_usage(u, USER_A, 0, 0);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * A forked child's attachments count against its user, though they are
 * never refused (the child exists already, and its mapping must be
 * served).  An unprivileged process has no fork events (they need
 * CAP_SYS_PTRACE), so root plays the user here, with --limit-root.
 */
START_TEST(test_attachments_fork)
{
	static const char *const args[] = { "--max-attachments", "2",
					    "--limit-root", NULL };
	const size_t size = 8 * H_PAGE;
	struct upager_attachment *x, *y, *z = NULL;
	struct upager_usage r;
	struct h_daemon d;
	struct upager *u;
	char *data, *p;
	int go[2], status;
	pid_t child;

	h_daemon_start_args(&d, args);
	u = h_connect(&d);
	ck_assert_int_eq(create(u, "f", size, 0), 0);
	data = malloc(size);
	h_fill(data, size, 6);
	p = h_attach(u, "f", 0, &x);
	memcpy(p, data, size);
	h_attach(u, "f", UPAGER_ATTACH_RDONLY, &y);
	ck_assert_int_eq(upager_attach(u, "f", 0, &z), -EDQUOT);
	ck_assert_int_eq(pipe(go), 0);
	child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		size_t off;
		int ret = h_read_check(p, data, size, &off);

		CHILD_CHECK(ret == H_READ_OK, "child: %d at %zu", ret, off);
		h_recv(go[0]);
		_exit(0);
	}
	wait_usage(u, 0, 2, 4);
	ck_assert(usage_of(u, 0, &r));
	ck_assert_uint_eq(r.attachments, 4);
	ck_assert_uint_eq(r.max_attachments, 2);
	ck_assert_int_eq(upager_attach(u, "f", 0, &z), -EDQUOT);
	h_send(go[1], 'q');
	status = h_wait_child(child);
	h_assert_exit(status, 0);
	wait_usage(u, 0, 1, 2);
	ck_assert_int_eq(upager_attach(u, "f", 0, &z), -EDQUOT);
	ck_assert_int_eq(upager_detach(y), 0);
	p = h_attach(u, "f", 0, &z);
	ck_assert_int_eq(memcmp(p, data, size), 0);
	ck_assert_int_eq(upager_detach(z), 0);
	ck_assert_int_eq(upager_detach(x), 0);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* A raw connection that says nothing. */
static int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	CHILD_CHECK(sock >= 0, "socket: %s", strerror(errno));
	strcpy(sa.sun_path, path);
	CHILD_CHECK(connect(sock, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		    "connect: %s", strerror(errno));
	return sock;
}

/* What comes on @sock within @ms: a record's size, 0 on hang-up, -1. */
static ssize_t recv_within(int sock, void *buf, size_t len, int ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };

	if (poll(&p, 1, ms) != 1)
		return -1;
	return recv(sock, buf, len, MSG_DONTWAIT);
}

/*
 * Connections: A's third is answered -EUSERS; a flood of connections that
 * never say hello is answered so too and closed, not held; B and root
 * connect and are served meanwhile.
 */
START_TEST(test_connections)
{
	static const char *const args[] = { "--max-connections", "2", NULL };
	struct upager_usage r;
	struct upager *ru[5];
	struct h_daemon d;
	struct upager *u;
	struct h_peer pa;
	pid_t b;

	h_daemon_start_args(&d, args);
	if (h_peer_fork(&pa) == 0) {
		enum { FLOOD = 30 };
		struct upager *c1, *c2, *c3 = NULL;
		struct upager_usage me;
		int socks[FLOOD], ret;

		become(USER_A);
		c1 = h_child_connect(d.sock);
		c2 = h_child_connect(d.sock);
		errno = 0;
		ret = upager_connect(d.sock, &c3);
		CHILD_CHECK(ret == -EUSERS && errno == EUSERS && !c3,
			    "a third connection: %d", ret);
		me = child_usage(c1);
		CHILD_CHECK(me.connections == 2 && me.max_connections == 2,
			    "usage: %llu connections",
			    (unsigned long long)me.connections);
		for (int i = 0; i < FLOOD; i++)
			socks[i] = raw_connect(d.sock);
		for (int i = 0; i < FLOOD; i++) {
			struct upg_hdr h;
			ssize_t n = recv_within(socks[i], &h, sizeof(h),
						H_TIMEOUT_MS);

			CHILD_CHECK(n == sizeof(h) && h.type == UPG_HELLO &&
					    h.seq == 1 && h.status == -EUSERS,
				    "flood %d: %zd bytes, status %d", i, n,
				    n == sizeof(h) ? h.status : 0);
			/* closed by the daemon, not held: within the wait
			 * for a hello, a second and a sweep */
			n = recv_within(socks[i], &h, sizeof(h), 3000);
			CHILD_CHECK(n == 0, "flood %d: not closed: %zd", i, n);
			close(socks[i]);
		}
		me = child_usage(c1);
		CHILD_CHECK(me.connections == 2, "after the flood: %llu",
			    (unsigned long long)me.connections);
		h_peer_ready(&pa, 'r');
		upager_disconnect(c2);
		/* the hang-up is seen a moment later */
		{
			uint64_t dl = h_now_ms() + H_TIMEOUT_MS;

			while ((ret = upager_connect(d.sock, &c3)) == -EUSERS &&
			       h_now_ms() < dl)
				h_nap_ms(5);
		}
		CHILD_CHECK(ret == 0, "a connection once one is closed: %d",
			    ret);
		child_served(c3, "a-served", 73);
		upager_disconnect(c3);
		upager_disconnect(c1);
		_exit(0);
	}
	h_peer_expect(&pa, 'r');
	b = h_fork();
	if (b == 0) {
		struct upager *c1, *c2;

		become(USER_B);
		c1 = h_child_connect(d.sock);
		c2 = h_child_connect(d.sock);
		child_served(c2, "b-served", 74);
		upager_disconnect(c2);
		upager_disconnect(c1);
		_exit(0);
	}
	expect_ok(b);
	u = h_connect(&d);
	for (int i = 0; i < 5; i++)
		ru[i] = h_connect(&d);
	ck_assert(usage_of(u, 0, &r));
	assert_exempt(&r);
	ck_assert_uint_ge(r.connections, 6);
	ck_assert(usage_of(u, USER_A, &r));
	ck_assert_uint_eq(r.connections, 2);
	ck_assert_uint_eq(r.max_connections, 2);
	for (int i = 0; i < 5; i++)
		upager_disconnect(ru[i]);
	h_peer_go(&pa);
	ck_assert_int_eq(h_peer_end(&pa), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * The idle timeout: a connection with no request for that long and no
 * attachment of its process is closed (root's too: it is about
 * descriptors, not users); one that makes requests, or whose process has
 * an attachment, is kept.  The library makes a connection closed so
 * again, in place, at its next request.
 */
START_TEST(test_idle_timeout)
{
	static const char *const args[] = { "--idle-timeout", "1", NULL };
	struct upager_usage r;
	struct h_daemon d;
	struct upager *u;
	char buf[64];
	uint64_t t0, t1;
	pid_t busy, att;
	ssize_t n;
	int sock;

	h_daemon_start_args(&d, args);
	u = h_connect(&d);
	ck_assert_int_eq(create(u, "keep", 4 * H_PAGE, 0666), 0);
	ck_assert(usage_of(u, 0, &r));
	ck_assert_uint_eq(r.idle_timeout_ms, 1000);
	upager_disconnect(u);

	/* root, idle: closed after the timeout, not before */
	sock = h_child_raw_hello(d.sock);
	t0 = h_now_ms();
	n = recv_within(sock, buf, sizeof(buf), 5000);
	t1 = h_now_ms();
	ck_assert_int_eq(n, 0);
	ck_assert_uint_ge(t1 - t0, 900);
	ck_assert_uint_le(t1 - t0, 3000);
	close(sock);

	/* A: a busy connection stays, and goes once idle */
	busy = h_fork();
	if (busy == 0) {
		struct upager_daemon_stats st;
		struct upager *cu;
		int ret;

		become(USER_A);
		cu = h_child_connect(d.sock);
		for (int i = 0; i < 10; i++) {
			ret = upager_stats(cu, &st);
			CHILD_CHECK(ret == 0, "busy, request %d: %d", i, ret);
			h_nap_ms(250);
		}
		h_nap_ms(2500);
		/* closed by the daemon (the raw connection above shows it);
		 * the library makes it again for the next request */
		ret = upager_stats(cu, &st);
		CHILD_CHECK(ret == 0, "idle, made again: %d", ret);
		ret = upager_stats(cu, &st);
		CHILD_CHECK(ret == 0, "and used again: %d", ret);
		upager_disconnect(cu);
		_exit(0);
	}
	/* A with an attachment: kept however long it is idle */
	att = h_fork();
	if (att == 0) {
		struct upager_daemon_stats st;
		struct upager_attachment *x;
		struct upager *cu;
		char *p;
		int ret;

		become(USER_A);
		cu = h_child_connect(d.sock);
		ret = upager_attach(cu, "keep", 0, &x);
		CHILD_CHECK(ret == 0, "attach: %d", ret);
		p = upager_attachment_addr(x);
		p[H_PAGE] = 'k';
		h_nap_ms(2500);
		ret = upager_stats(cu, &st);
		CHILD_CHECK(ret == 0, "attached, idle: %d", ret);
		CHILD_CHECK(p[H_PAGE] == 'k' && p[2 * H_PAGE] == 0, "bytes");
		CHILD_CHECK(upager_detach(x) == 0, "detach");
		upager_disconnect(cu);
		_exit(0);
	}
	expect_ok(busy);
	expect_ok(att);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Usage as each user sees it: a user is shown one record, its own, with
 * the limits; root every user that holds anything.  upagerctl stats shows
 * the same.
 */
START_TEST(test_usage)
{
	/* what upagerctl stats --json says of each */
	static const char *const stats_json[] = {
		"\"uid\": 0, ",
		"\"exempt\": true, \"segments\": 0, ",
		"\"max_segments\": null",
		"\"uid\": 65534, ",
		"\"exempt\": false, \"segments\": 2, \"bytes\": 16384, ",
		"\"connections\": 1, \"attachments\": 1, \"max_segments\": 5, "
		"\"max_bytes\": 67108864, \"max_connections\": 7, "
		"\"max_attachments\": 9}",
		"\"idle_timeout_ms\": 60000",
	};
	static const char *const args[] = { "--max-segments",
					    "5",
					    "--max-bytes",
					    "64M",
					    "--max-connections",
					    "7",
					    "--max-attachments",
					    "9",
					    NULL };
	struct upager_usage r, v[8];
	struct h_daemon d;
	struct upager *u;
	struct ctl_out o;
	struct h_peer pa;
	int n;
	pid_t b;

	h_daemon_start_args(&d, args);
	if (h_peer_fork(&pa) == 0) {
		struct upager_attachment *x;
		struct upager_usage me;
		struct upager *cu;
		char *p;
		int ret;

		become(USER_A);
		cu = h_child_connect(d.sock);
		ret = create(cu, "ua", 10000, 0644);
		CHILD_CHECK(ret == 0, "ua: %d", ret);
		ret = create(cu, "ub", H_PAGE, 0);
		CHILD_CHECK(ret == 0, "ub: %d", ret);
		ret = upager_attach(cu, "ua", 0, &x);
		CHILD_CHECK(ret == 0, "attach: %d", ret);
		p = upager_attachment_addr(x);
		memset(p, 'u', 3 * H_PAGE);
		ret = upager_usage(cu, NULL, 0);
		CHILD_CHECK(ret == 1, "count only: %d", ret);
		me = child_usage(cu);
		CHILD_CHECK(me.flags == 0 && me.segments == 2 &&
				    me.bytes == 4 * H_PAGE &&
				    me.resident_bytes >= 3 * H_PAGE &&
				    me.resident_bytes <= 4 * H_PAGE &&
				    me.connections == 1 && me.attachments == 1,
			    "usage: %llu segments, %llu bytes, %llu resident, "
			    "%llu connections, %llu attachments",
			    (unsigned long long)me.segments,
			    (unsigned long long)me.bytes,
			    (unsigned long long)me.resident_bytes,
			    (unsigned long long)me.connections,
			    (unsigned long long)me.attachments);
		CHILD_CHECK(me.max_segments == 5 && me.max_bytes == 64 << 20 &&
				    me.max_connections == 7 &&
				    me.max_attachments == 9 &&
				    me.idle_timeout_ms == 60000,
			    "limits");
		h_peer_ready(&pa, 'r');
		upager_detach(x);
		upager_disconnect(cu);
		_exit(0);
	}
	h_peer_expect(&pa, 'r');
	b = h_fork();
	if (b == 0) {
		struct upager_usage me;
		struct upager *cu;

		become(USER_B);
		cu = h_child_connect(d.sock);
		/* its own record only, though it holds nothing */
		me = child_usage(cu);
		CHILD_CHECK(me.uid == USER_B && me.flags == 0 &&
				    me.segments == 0 && me.bytes == 0 &&
				    me.resident_bytes == 0 &&
				    me.attachments == 0 && me.connections == 1 &&
				    me.max_segments == 5 &&
				    me.max_attachments == 9,
			    "B's usage");
		upager_disconnect(cu);
		_exit(0);
	}
	expect_ok(b);
	/* the tool, as B: its own user only */
	ctl_as(USER_B, &d, &o, "stats", NULL, NULL, NULL);
	h_assert_exit(o.status, 0);
	ck_assert_msg(strstr(o.out, "user:                65533") &&
			      !strstr(o.out, "65534") &&
			      strstr(o.out, "  segments:"
					    "          0 of 5\n"),
		      "stdout: %s", o.out);

	u = h_connect(&d);
	wait_usage(u, USER_B, 0, 0);
	n = upager_usage(u, v, 8);
	/* root and A; B holds nothing now */
	ck_assert_int_eq(n, 2);
	ck_assert_uint_eq(v[0].uid, 0);
	assert_exempt(&v[0]);
	ck_assert_uint_eq(v[0].segments, 0);
	ck_assert_uint_eq(v[0].connections, 1);
	ck_assert_uint_eq(v[1].uid, USER_A);
	ck_assert_uint_eq(v[1].segments, 2);
	ck_assert_uint_eq(v[1].bytes, 4 * H_PAGE);
	ck_assert_uint_eq(v[1].attachments, 1);
	ck_assert_uint_eq(v[1].connections, 1);
	ck_assert_uint_ge(v[1].resident_bytes, 3 * H_PAGE);
	ck_assert_uint_eq(v[1].max_bytes, 64 << 20);
	/* a short array: the count all the same */
	memset(&r, 0, sizeof(r));
	ck_assert_int_eq(upager_usage(u, &r, 1), 2);
	ck_assert_uint_eq(r.uid, 0);
	ck_assert_int_eq(upager_usage(u, NULL, 1), -EINVAL);
	/* the tool, as root: every user */
	ctl_as(0, &d, &o, "stats", "--json", NULL, NULL);
	h_assert_exit(o.status, 0);
	for (size_t i = 0; i < sizeof(stats_json) / sizeof(stats_json[0]); i++)
		ck_assert_msg(strstr(o.out, stats_json[i]),
			      "no %s in stdout: %s", stats_json[i], o.out);
	h_peer_go(&pa);
	ck_assert_int_eq(h_peer_end(&pa), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* "uid 0 (root)", or "uid 65533" for a uid without a name */
static const char *uid_desc(uid_t uid, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(uid);

	if (pw)
		snprintf(buf, len, "uid %u (%s)", (unsigned int)uid,
			 pw->pw_name);
	else
		snprintf(buf, len, "uid %u", (unsigned int)uid);
	return buf;
}

/* A raw hello offering @features: the socket, the features answered. */
static int raw_hello(const char *path, uint64_t features, uint64_t *answer)
{
	struct upg_hello m, r;
	int sock = raw_connect(path);
	ssize_t n;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	m.features = features;
	CHILD_CHECK(send(sock, &m, sizeof(m), MSG_NOSIGNAL) == sizeof(m),
		    "send hello: %s", strerror(errno));
	n = recv_within(sock, &r, sizeof(r), H_TIMEOUT_MS);
	*answer = n == sizeof(r) && r.h.status == 0 ? r.features : ~0ull;
	if (n == 0)
		*answer = ~1ull; /* hung up: refused */
	return sock;
}

static int raw_attach_owner(int sock, const char *name, uint32_t flags,
			    uint32_t owner, int *memfd)
{
	struct upg_name m;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_ATTACH, sizeof(m), 2);
	snprintf(m.name, sizeof(m.name), "%s", name);
	m.flags = flags;
	m.owner = owner;
	return h_child_request(sock, &m, sizeof(m), -1, memfd);
}

/*
 * Item 7: B squats a name A expects.  A's plain attach takes B's segment;
 * its owner-checked attach is refused with -EPERM and attaches only the
 * right owner's, bytes checked.  A segment one may not see is not told of.
 * The feature is negotiated, and so is the usage request.
 */
START_TEST(test_owner)
{
	const size_t size = 4 * H_PAGE;
	struct upager_attachment *x;
	struct h_daemon d;
	struct upager *u;
	struct ctl_out o;
	char *rootdata, *bdata, *map, want[256], b1[64], b2[64];
	pid_t a, b;

	h_daemon_start(&d);
	u = h_connect(&d);
	rootdata = malloc(size);
	bdata = malloc(size);
	h_fill(rootdata, size, 81);
	h_fill(bdata, size, 82);
	ck_assert_int_eq(create(u, "svc", size, 0644), 0);
	map = h_attach(u, "svc", 0, &x);
	memcpy(map, rootdata, size);
	ck_assert_int_eq(upager_detach(x), 0);
	b = h_fork();
	if (b == 0) {
		struct upager *cu;
		int ret;

		become(USER_B);
		cu = h_child_connect(d.sock);
		ret = create(cu, "app", size, 0666);
		CHILD_CHECK(ret == 0, "squat: %d", ret);
		ret = upager_attach(cu, "app", 0, &x);
		CHILD_CHECK(ret == 0, "attach: %d", ret);
		memcpy(upager_attachment_addr(x), bdata, size);
		upager_detach(x);
		ret = create(cu, "bpriv", size, 0600);
		CHILD_CHECK(ret == 0, "bpriv: %d", ret);
		upager_disconnect(cu);
		_exit(0);
	}
	expect_ok(b);
	a = h_fork();
	if (a == 0) {
		struct upager_attachment *y = NULL;
		struct upager *cu;
		uint64_t got;
		int sock, fd, ret;
		char buf[64];

		become(USER_A);
		cu = h_child_connect(d.sock);
		/* without the check, the squatter's bytes */
		ret = upager_attach(cu, "app", 0, &y);
		CHILD_CHECK(ret == 0 && memcmp(upager_attachment_addr(y), bdata,
					       size) == 0,
			    "plain: %d", ret);
		upager_detach(y);
		y = NULL;
		errno = 0;
		ret = upager_attach_owner(cu, "app", 0, USER_A, &y);
		CHILD_CHECK(ret == -EPERM && errno == EPERM && !y,
			    "expecting its own: %d", ret);
		ret = upager_attach_owner(cu, "app", UPAGER_ATTACH_RDONLY, 0,
					  &y);
		CHILD_CHECK(ret == -EPERM && !y, "expecting root's: %d", ret);
		ret = upager_attach_owner(cu, "app", UPAGER_ATTACH_RDONLY,
					  USER_B, &y);
		CHILD_CHECK(ret == 0 && memcmp(upager_attachment_addr(y), bdata,
					       size) == 0,
			    "B's: %d", ret);
		upager_detach(y);
		ret = upager_attach_owner(cu, "svc", UPAGER_ATTACH_RDONLY, 0,
					  &y);
		CHILD_CHECK(ret == 0 && memcmp(upager_attachment_addr(y),
					       rootdata, size) == 0,
			    "root's: %d", ret);
		upager_detach(y);
		ret = upager_attach_owner(cu, "svc", UPAGER_ATTACH_RDONLY,
					  USER_A, &y);
		CHILD_CHECK(ret == -EPERM, "svc as A's: %d", ret);
		/* the access check first: no more said than ENOENT */
		ret = upager_attach_owner(cu, "bpriv", UPAGER_ATTACH_RDONLY,
					  USER_A, &y);
		CHILD_CHECK(ret == -ENOENT, "bpriv, wrong owner: %d", ret);
		ret = upager_attach_owner(cu, "bpriv", UPAGER_ATTACH_RDONLY,
					  USER_B, &y);
		CHILD_CHECK(ret == -ENOENT, "bpriv, right owner: %d", ret);
		ret = upager_attach_owner(cu, "none", 0, USER_A, &y);
		CHILD_CHECK(ret == -ENOENT, "none: %d", ret);
		ret = upager_attach_owner(cu, "app", 0x80, USER_B, &y);
		CHILD_CHECK(ret == -EINVAL, "bad flags: %d", ret);
		upager_disconnect(cu);

		/* the wire: not negotiated, no owner check */
		sock = raw_hello(d.sock, 0, &got);
		CHILD_CHECK(got == 0, "features %#llx", (unsigned long long)got);
		ret = raw_attach_owner(sock, "app", UPG_ATTACH_OWNER, USER_B,
				       &fd);
		CHILD_CHECK(ret == -EINVAL && fd < 0, "not negotiated: %d", ret);
		/* nor usage: that is a protocol error */
		{
			struct upg_hdr h;

			proto_hdr_init(&h, UPG_USAGE, sizeof(h), 3);
			CHILD_CHECK(send(sock, &h, sizeof(h), MSG_NOSIGNAL) ==
					    sizeof(h),
				    "send");
			CHILD_CHECK(recv_within(sock, buf, sizeof(buf),
						H_TIMEOUT_MS) == 0,
				    "usage without its feature answered");
		}
		close(sock);
		sock = raw_hello(d.sock, UPG_FEATURE_OWNER, &got);
		CHILD_CHECK(got == UPG_FEATURE_OWNER, "features %#llx",
			    (unsigned long long)got);
		ret = raw_attach_owner(sock, "app", UPG_ATTACH_OWNER, USER_A,
				       &fd);
		CHILD_CHECK(ret == -EPERM && fd < 0, "wrong owner: %d", ret);
		ret = raw_attach_owner(sock, "app", 0, USER_B, &fd);
		CHILD_CHECK(ret == -EINVAL && fd < 0, "owner, no flag: %d", ret);
		ret = raw_attach_owner(sock, "app", UPG_ATTACH_OWNER, USER_B,
				       &fd);
		CHILD_CHECK(ret == 0 && fd >= 0, "right owner: %d", ret);
		close(fd);
		close(sock);
		/* a bit nobody knows: refused */
		sock = raw_hello(d.sock, UPG_FEATURES_KNOWN | (1ull << 40),
				 &got);
		CHILD_CHECK(got == ~1ull, "unknown bit: %#llx",
			    (unsigned long long)got);
		close(sock);
		_exit(0);
	}
	expect_ok(a);

	/* upagerctl cat/write --owner */
	ctl_as(0, &d, &o, "cat", "app", "--owner", "65533");
	h_assert_exit(o.status, 0);
	ck_assert_int_eq(memcmp(o.out, bdata, sizeof(o.out) - 1), 0);
	ctl_as(0, &d, &o, "cat", "app", "--owner", "root");
	h_assert_exit(o.status, 1);
	ck_assert_str_eq(o.out, "");
	snprintf(want, sizeof(want),
		 "upagerctl: cat: app: owned by %s, not "
		 "by %s: not attached",
		 uid_desc(USER_B, b1, sizeof(b1)), uid_desc(0, b2, sizeof(b2)));
	ck_assert_msg(strstr(o.err, want), "stderr: %s", o.err);
	ctl_as(USER_A, &d, &o, "cat", "svc", "--owner", "65534");
	h_assert_exit(o.status, 1);
	ck_assert_str_eq(o.out, "");
	snprintf(want, sizeof(want),
		 "upagerctl: cat: svc: owned by %s, not "
		 "by %s: not attached",
		 uid_desc(0, b1, sizeof(b1)), uid_desc(USER_A, b2, sizeof(b2)));
	ck_assert_msg(strstr(o.err, want), "stderr: %s", o.err);
	/* write: the squatted name refused, nothing written; the owner's
	 * taken (by name) */
	ctl_as_in(USER_A, &d, "SECRET", &o, "write", "app", "--owner", "nobody");
	h_assert_exit(o.status, 1);
	snprintf(want, sizeof(want),
		 "upagerctl: write: app: owned by %s, not "
		 "by %s: not attached",
		 uid_desc(USER_B, b1, sizeof(b1)),
		 uid_desc(USER_A, b2, sizeof(b2)));
	ck_assert_msg(strstr(o.err, want), "stderr: %s", o.err);
	map = h_attach(u, "app", UPAGER_ATTACH_RDONLY, &x);
	ck_assert_int_eq(memcmp(map, bdata, size), 0);
	ck_assert_int_eq(upager_detach(x), 0);
	ctl_as_in(USER_A, &d, "SECRET", &o, "write", "app", "--owner", "65533");
	h_assert_exit(o.status, 0);
	map = h_attach(u, "app", UPAGER_ATTACH_RDONLY, &x);
	ck_assert_int_eq(memcmp(map, "SECRET", 6), 0);
	ck_assert_int_eq(memcmp(map + 6, bdata + 6, size - 6), 0);
	ck_assert_int_eq(upager_detach(x), 0);
	ctl_as(0, &d, &o, "cat", "app", "--owner", "no-such-user-here");
	h_assert_exit(o.status, 2);
	ck_assert_msg(strstr(o.err, "--owner: no user 'no-such-user-here'"),
		      "stderr: %s", o.err);
	/* nothing was written through the refused attach */
	map = h_attach(u, "svc", UPAGER_ATTACH_RDONLY, &x);
	ck_assert_int_eq(memcmp(map, rootdata, size), 0);
	ck_assert_int_eq(upager_detach(x), 0);
	free(rootdata);
	free(bdata);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *quota_suite(void)
{
	Suite *s = h_suite("quota");
	TCase *tc;

	tc = h_tcase(s, "limits", H_NEED_BASE | UFFD_FEATURE_EVENT_FORK);
	tcase_add_test(tc, test_segments_and_bytes);
	tcase_add_test(tc, test_limit_root);
	tcase_add_test(tc, test_attachments);
	tcase_add_test(tc, test_attachments_fork);
	tcase_add_test(tc, test_connections);
	tcase_add_test(tc, test_idle_timeout);
	tcase_add_test(tc, test_usage);

	tc = h_tcase(s, "owner", H_NEED_BASE);
	tcase_add_test(tc, test_owner);
	return s;
}

int main(void)
{
	if (geteuid() != 0) {
		fprintf(stderr, "test-quota: needs root (to play two other "
				"users against a root daemon)\n");
		return 77;
	}
	h_main(quota_suite());
}
