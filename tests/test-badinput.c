// SPDX-License-Identifier: MIT
/*
 * Bad input: wrong names, sizes, sources, permissions and protocol
 * garbage.  Each is refused with the documented error (or the sender is
 * disconnected), and the daemon goes on serving everybody else: after each
 * case a client creates, attaches, writes and reads a segment.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "harness.h"
#include "proto.h"
#include "uffd.h"

/* The daemon serves: a new connection creates, attaches, writes, reads. */
static void still_serves(const struct h_daemon *d)
{
	static int n;
	struct upager_attachment *a;
	struct upager *u = h_connect(d);
	char name[32];
	char *map;

	snprintf(name, sizeof(name), "alive-%d", n++);
	h_create(u, name, 3 * H_PAGE, -1, 0);
	map = h_attach(u, name, 0, &a);
	ck_assert_int_eq(h_first_nonzero(map, 3 * H_PAGE), -1);
	memset(map + H_PAGE, n, H_PAGE);
	ck_assert_int_eq(map[2 * H_PAGE - 1], (char)n);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_int_eq(upager_delete(u, name, 0), 0);
	upager_disconnect(u);
}

START_TEST(test_unknown_segment)
{
	struct upager_segment_info info;
	struct upager_attachment *a = NULL;
	struct h_daemon d;
	struct upager *u;

	h_daemon_start(&d);
	u = h_connect(&d);
	errno = 0;
	ck_assert_int_eq(upager_stat(u, "nope", &info), -ENOENT);
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_int_eq(upager_attach(u, "nope", 0, &a), -ENOENT);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(upager_attach(u, "nope", UPAGER_ATTACH_RDONLY, &a),
			 -ENOENT);
	ck_assert_int_eq(upager_delete(u, "nope", 0), -ENOENT);
	ck_assert_int_eq(upager_delete(u, "nope", UPAGER_DELETE_FORCE), -ENOENT);
	still_serves(&d);
	/* the same connection goes on, too */
	h_create(u, "nope", H_PAGE, -1, 0);
	ck_assert_int_eq(upager_stat(u, "nope", &info), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

START_TEST(test_bad_sizes_and_flags)
{
	struct upager_create_opts o = { .source_fd = -1 };
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;

	h_daemon_start(&d);
	u = h_connect(&d);
	o.size = 0;
	ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
	still_serves(&d);
	o.size = UPAGER_MAX_SIZE + 1;
	ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
	o.size = UINT64_MAX;
	ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
	still_serves(&d);
	o.size = H_PAGE;
	o.mode = 01777;
	ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
	o.mode = 0;
	h_create(u, "s", H_PAGE, -1, 0);
	ck_assert_uint_eq(h_stat(u, "s").mode, 0600);
	ck_assert_int_eq(upager_attach(u, "s", 0x80, &a), -EINVAL);
	ck_assert_int_eq(upager_delete(u, "s", 0x80), -EINVAL);
	still_serves(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

START_TEST(test_bad_names)
{
	static const char *bad[] = {
		"",
		"a/b",
		"/",
		"..",
		".",
		"a b",
		"a\nb",
		"é",
		/* 64 characters */
		"0123456789012345678901234567890123456789012345678901234567890123",
	};
	const char *good63 =
		"012345678901234567890123456789012345678901234567890123456789012";
	struct upager_create_opts o = { .size = H_PAGE, .source_fd = -1 };
	struct upager_segment_info info;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;

	h_daemon_start(&d);
	u = h_connect(&d);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(upager_create(u, bad[i], &o) == -EINVAL,
			      "create '%s' was not EINVAL", bad[i]);
		ck_assert_int_eq(upager_stat(u, bad[i], &info), -EINVAL);
		ck_assert_int_eq(upager_attach(u, bad[i], 0, &a), -EINVAL);
		ck_assert_int_eq(upager_delete(u, bad[i], 0), -EINVAL);
	}
	ck_assert_int_eq(upager_create(u, NULL, &o), -EINVAL);
	still_serves(&d);
	/* the longest name, and dots that are not "." or ".." */
	h_create(u, good63, H_PAGE, -1, 0);
	ck_assert_str_eq(h_stat(u, good63).name, good63);
	h_create(u, "...", H_PAGE, -1, 0);
	h_create(u, ".hidden-A_9", H_PAGE, -1, 0);
	ck_assert_int_eq(upager_list(u, NULL, 0), 3);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

START_TEST(test_bad_sources)
{
	struct upager_create_opts o = { .size = H_MIB };
	struct h_daemon d;
	struct upager *u;
	char path[512];
	void *data;
	int fd, ret;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", H_MIB, 91);

	/* a missing file: nothing to open, and a closed descriptor */
	ck_assert_int_lt(open("/nonexistent/upager-image", O_RDONLY), 0);
	o.source_fd = 1000;
	ck_assert_int_eq(fcntl(1000, F_GETFD), -1);
	ret = upager_create(u, "s", &o);
	ck_assert_msg(ret == -EBADF, "a closed fd as the source: %d", ret);
	still_serves(&d);

	/* a directory */
	o.source_fd = open(d.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_ge(o.source_fd, 0);
	ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
	close(o.source_fd);
	still_serves(&d);

	/* write-only: the daemon could not read it */
	o.source_fd = open(path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(o.source_fd, 0);
	ret = upager_create(u, "s", &o);
	ck_assert_msg(ret == -EBADF, "a write-only source: %d", ret);
	close(o.source_fd);
	still_serves(&d);

	/* O_PATH: not open for reading either */
	o.source_fd = open(path, O_PATH | O_CLOEXEC);
	ck_assert_int_ge(o.source_fd, 0);
	ret = upager_create(u, "s", &o);
	ck_assert_msg(ret == -EBADF, "an O_PATH source: %d", ret);
	close(o.source_fd);

	/* not a file: a pipe, a character device */
	{
		int p[2];

		ck_assert_int_eq(pipe(p), 0);
		o.source_fd = p[0];
		ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
		close(p[0]);
		close(p[1]);
	}
	o.source_fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
	close(o.source_fd);
	/* a FIFO with no writer (opened without blocking) and a socket:
	 * refused at once, never read */
	{
		char fifo[600];
		uint64_t t0 = h_now_ms();
		int sp[2];

		snprintf(fifo, sizeof(fifo), "%s/fifo", d.dir);
		ck_assert_int_eq(mkfifo(fifo, 0600), 0);
		o.source_fd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		ck_assert_int_ge(o.source_fd, 0);
		ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
		close(o.source_fd);
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
		o.source_fd = sp[0];
		ck_assert_int_eq(upager_create(u, "s", &o), -EINVAL);
		close(sp[0]);
		close(sp[1]);
		ck_assert_uint_lt(h_now_ms() - t0, 2000);
	}
	still_serves(&d);

	/* none of them left a segment behind */
	ck_assert_int_eq(upager_list(u, NULL, 0), 0);
	/* and the file itself works */
	fd = h_open_ro(path);
	h_create(u, "s", H_MIB, fd, 0);
	close(fd);
	{
		struct upager_attachment *a;
		char *map = h_attach(u, "s", 0, &a);

		ck_assert_int_eq(h_first_diff(map, data, H_MIB), -1);
		ck_assert_int_eq(upager_detach(a), 0);
	}
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

START_TEST(test_duplicate_name)
{
	struct upager_create_opts o = { .size = 2 * H_PAGE, .source_fd = -1 };
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512], *map;
	void *data;
	int fd;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "dup", H_PAGE, -1, 0);
	ck_assert_int_eq(upager_create(u, "dup", &o), -EEXIST);
	ck_assert_int_eq(errno, EEXIST);
	/* with a file source too; the first one is untouched */
	data = h_make_file(path, sizeof(path), d.dir, "img", H_PAGE, 92);
	fd = h_open_ro(path);
	o.source_fd = fd;
	ck_assert_int_eq(upager_create(u, "dup", &o), -EEXIST);
	close(fd);
	ck_assert_uint_eq(h_stat(u, "dup").size, H_PAGE);
	ck_assert_uint_eq(h_stat(u, "dup").source, UPAGER_SOURCE_ZERO);
	map = h_attach(u, "dup", 0, &a);
	ck_assert_int_eq(h_first_nonzero(map, H_PAGE), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_int_eq(upager_list(u, NULL, 0), 1);
	still_serves(&d);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Delete while attached: EBUSY; forced, the name goes at once but the
 * attached client keeps reading the right bytes (pages it never touched
 * included), the name can be reused, and the detach is clean.
 */
START_TEST(test_delete_attached)
{
	const size_t size = 4 * H_MIB;
	struct upager_segment_info info;
	struct upager_daemon_stats st;
	struct upager_attachment *a, *b;
	struct h_daemon d;
	struct upager *u;
	char path[512], *data, *map, *nmap;
	int fd;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 93);
	fd = h_open_ro(path);
	h_create(u, "seg", size, fd, 0);
	close(fd);
	map = h_attach(u, "seg", 0, &a);
	ck_assert_int_eq(memcmp(map, data, H_PAGE), 0);
	ck_assert_int_eq(upager_delete(u, "seg", 0), -EBUSY);
	ck_assert_int_eq(errno, EBUSY);
	ck_assert_uint_eq(h_stat(u, "seg").nr_attachments, 1);
	still_serves(&d);

	ck_assert_int_eq(upager_delete(u, "seg", UPAGER_DELETE_FORCE), 0);
	ck_assert_int_eq(upager_stat(u, "seg", &info), -ENOENT);
	ck_assert_int_eq(upager_attach(u, "seg", 0, &b), -ENOENT);
	/* untouched pages still come from the file */
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	/* the name is free: a new, independent segment */
	h_create(u, "seg", size, -1, 0);
	nmap = h_attach(u, "seg", 0, &b);
	ck_assert_int_eq(h_first_nonzero(nmap, size), -1);
	memset(nmap, 0xee, H_PAGE);
	ck_assert_int_eq(memcmp(map, data, H_PAGE), 0);
	map[H_PAGE] ^= 0xff;
	ck_assert_int_eq(h_first_nonzero(nmap + H_PAGE, H_PAGE), -1);
	ck_assert_int_eq(upager_detach(b), 0);
	still_serves(&d);

	/* the deleted segment's attachment detaches cleanly */
	ck_assert_int_eq(upager_detach(a), 0);
	H_WAIT_STATS(u, st, st.attachments == 0);
	ck_assert_uint_eq(st.attachments, 0);
	ck_assert_uint_eq(st.segments, 1);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* Drops to uid/gid 65534 (nobody) in a forked child. */
static void become_nobody(void)
{
	CHILD_CHECK(setgroups(0, NULL) == 0, "setgroups: %s", strerror(errno));
	CHILD_CHECK(setresgid(65534, 65534, 65534) == 0, "setresgid: %s",
		    strerror(errno));
	CHILD_CHECK(setresuid(65534, 65534, 65534) == 0, "setresuid: %s",
		    strerror(errno));
}

/*
 * Another user: a 0600 root segment does not exist for them (ENOENT for
 * everything: whether a segment one may not read exists is not told); a
 * 0644 one can be stat'ed (without its source path and pids) and attached
 * read-only (right bytes) but not read-write nor deleted (EACCES); the
 * user's own segment is all theirs.
 */
START_TEST(test_permissions)
{
	const size_t size = H_MIB;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512], *data, *map;
	int fd;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 94);
	fd = h_open_ro(path);
	h_create(u, "private", size, fd, 0600);
	h_create(u, "shared", size, fd, 0644);
	close(fd);
	/* some of "shared" filled by root, the rest left to the reader */
	map = h_attach(u, "shared", 0, &a);
	ck_assert_int_eq(memcmp(map, data, 2 * H_PAGE), 0);

	pid = h_fork();
	if (pid == 0) {
		struct upager_create_opts o = { .size = H_PAGE,
						.source_fd = -1 };
		struct upager_segment_info info, list[4];
		struct upager_attachment *ca;
		struct upager *cu;
		char *cmap;
		long diff;
		int ret;

		become_nobody();
		cu = h_child_connect(d.sock);
		ret = upager_stat(cu, "private", &info);
		CHILD_CHECK(ret == -ENOENT, "stat private: %d", ret);
		ret = upager_attach(cu, "private", UPAGER_ATTACH_RDONLY, &ca);
		CHILD_CHECK(ret == -ENOENT, "attach private ro: %d", ret);
		ret = upager_attach(cu, "private", 0, &ca);
		CHILD_CHECK(ret == -ENOENT, "attach private rw: %d", ret);
		ret = upager_delete(cu, "private", UPAGER_DELETE_FORCE);
		CHILD_CHECK(ret == -ENOENT, "delete private: %d", ret);

		ret = upager_stat(cu, "shared", &info);
		CHILD_CHECK(ret == 0, "stat shared: %d", ret);
		CHILD_CHECK(info.uid == 0 && info.mode == 0644,
			    "shared: uid %u mode %o", info.uid, info.mode);
		/* the owner's business: where its bytes come from, who maps it
		 */
		CHILD_CHECK(info.source_path[0] == '\0' && info.nr_pids == 0 &&
				    info.pids[0] == 0 &&
				    info.nr_attachments >= 1,
			    "shared: path '%s', %u pids shown to another user",
			    info.source_path, info.nr_pids);
		ret = upager_attach(cu, "shared", 0, &ca);
		CHILD_CHECK(ret == -EACCES, "attach shared rw: %d", ret);
		ret = upager_delete(cu, "shared", 0);
		CHILD_CHECK(ret == -EACCES, "delete shared: %d", ret);
		ret = upager_attach(cu, "shared", UPAGER_ATTACH_RDONLY, &ca);
		CHILD_CHECK(ret == 0, "attach shared ro: %d", ret);
		cmap = upager_attachment_addr(ca);
		diff = h_first_diff(cmap, data, size);
		CHILD_CHECK(diff < 0, "shared: byte %ld differs", diff);
		upager_detach(ca);

		/* only what it may read is listed */
		ret = upager_list(cu, list, 4);
		CHILD_CHECK(ret == 1 && !strcmp(list[0].name, "shared"),
			    "list: %d", ret);
		/* its own segment */
		ret = upager_create(cu, "mine", &o);
		CHILD_CHECK(ret == 0, "create mine: %d", ret);
		ret = upager_attach(cu, "mine", 0, &ca);
		CHILD_CHECK(ret == 0, "attach mine: %d", ret);
		cmap = upager_attachment_addr(ca);
		cmap[100] = 42;
		CHILD_CHECK(cmap[100] == 42 && cmap[0] == 0, "mine");
		upager_detach(ca);
		upager_disconnect(cu);
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	{
		struct upager_segment_info info = h_stat(u, "mine");

		ck_assert_uint_eq(info.uid, 65534);
		ck_assert_uint_eq(info.mode, 0600);
	}
	/* root may do anything */
	ck_assert_int_eq(upager_delete(u, "mine", 0), 0);
	ck_assert_int_eq(h_first_diff(map, data, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	still_serves(&d);
	upager_disconnect(u);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* Raw protocol */

static int raw_connect(const struct h_daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_uint_lt(strlen(d->sock), sizeof(sa.sun_path));
	memcpy(sa.sun_path, d->sock, strlen(d->sock) + 1);
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		      "connect: %s", strerror(errno));
	return fd;
}

/* Sends one record, with @fd as SCM_RIGHTS unless < 0 (or two of them). */
static void raw_send(int sock, const void *buf, size_t len, int fd, int fd2)
{
	union {
		struct cmsghdr c;
		char b[CMSG_SPACE(2 * sizeof(int))];
	} cbuf;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		int fds[2] = { fd, fd2 };
		int n = fd2 >= 0 ? 2 : 1;
		struct cmsghdr *c;

		memset(&cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf.b;
		mh.msg_controllen = CMSG_SPACE(n * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(c), fds, n * sizeof(int));
	}
	ck_assert_int_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

/* The next record from the daemon: its length, 0 on hang-up. */
static ssize_t raw_recv(int sock, void *buf, size_t len)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	ssize_t n;

	ck_assert_msg(poll(&p, 1, H_TIMEOUT_MS) == 1,
		      "no answer from the daemon within %d ms", H_TIMEOUT_MS);
	n = recv(sock, buf, len, 0);
	if (n < 0 && errno == ECONNRESET)
		return 0;
	ck_assert_msg(n >= 0, "recv: %s", strerror(errno));
	return n;
}

static void raw_hello(int sock)
{
	struct upg_hello m;
	char buf[UPG_MSG_MAX];

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	raw_send(sock, &m, sizeof(m), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)), sizeof(m));
	ck_assert_int_eq(((struct upg_hdr *)buf)->status, 0);
}

/* One garbage case: the sender is dropped and counted; others go on. */
struct garbage {
	const char *what;
	bool hello; /* say hello first */
	void (*send)(int sock);
	bool counted;	    /* protocol_errors goes up */
	const char *reason; /* the log says "protocol error: <reason>" */
};

static void g_random(int sock)
{
	char buf[200];

	h_fill(buf, sizeof(buf), 95);
	raw_send(sock, buf, sizeof(buf), -1, -1);
}

static void g_short_header(int sock)
{
	struct upg_hdr h;

	proto_hdr_init(&h, UPG_HELLO, sizeof(h), 1);
	raw_send(sock, &h, 10, -1, -1);
}

static void g_wrong_magic(int sock)
{
	struct upg_hello m = { .features = 0 };

	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	m.h.magic = 0x12345678;
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_wrong_version(int sock)
{
	struct upg_hello m = { .features = 0 };

	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	m.h.version = UPG_VERSION + 1;
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_hello_with_fd(int sock)
{
	struct upg_hello m = { .features = 0 };
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	raw_send(sock, &m, sizeof(m), fd, -1);
	close(fd);
}

static void g_request_before_hello(int sock)
{
	struct upg_name m;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_STAT, sizeof(m), 1);
	strcpy(m.name, "x");
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_size_mismatch(int sock)
{
	struct upg_name m;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_STAT, sizeof(m) + 8, 2);
	strcpy(m.name, "x");
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_wrong_length_for_type(int sock)
{
	struct upg_hello m = { .features = 0 };

	/* a hello-sized STAT, header consistent with the record */
	proto_hdr_init(&m.h, UPG_STAT, sizeof(m), 2);
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_longer_than_type(int sock)
{
	char buf[sizeof(struct upg_name) + 8];
	struct upg_name *m = (struct upg_name *)buf;

	/* a stat with 8 bytes more, the header consistent with the record */
	memset(buf, 0, sizeof(buf));
	proto_hdr_init(&m->h, UPG_STAT, sizeof(buf), 2);
	strcpy(m->name, "z");
	raw_send(sock, buf, sizeof(buf), -1, -1);
}

static void g_unknown_type(int sock)
{
	struct upg_hdr h;

	proto_hdr_init(&h, 999, sizeof(h), 2);
	raw_send(sock, &h, sizeof(h), -1, -1);
}

static void g_unknown_feature(int sock)
{
	struct upg_hello m = { .features = 1ull << 63 };

	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 1);
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_second_hello(int sock)
{
	struct upg_hello m = { .features = 0 };

	proto_hdr_init(&m.h, UPG_HELLO, sizeof(m), 2);
	raw_send(sock, &m, sizeof(m), -1, -1);
}

static void g_two_fds(int sock)
{
	struct upg_create m;
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_CREATE, sizeof(m), 2);
	strcpy(m.name, "two");
	m.size = H_PAGE;
	m.source = UPAGER_SOURCE_FILE;
	raw_send(sock, &m, sizeof(m), fd, fd);
	close(fd);
}

static void g_status_set(int sock)
{
	struct upg_hdr h;

	proto_hdr_init(&h, UPG_STATS, sizeof(h), 2);
	h.status = -1;
	raw_send(sock, &h, sizeof(h), -1, -1);
}

static void g_empty_record(int sock)
{
	raw_send(sock, "", 0, -1, -1);
}

static const struct garbage garbage[] = {
	{ "random bytes", false, g_random, true, "bad magic" },
	{ "a short header", false, g_short_header, true,
	  "a record of 10 bytes, shorter than a header" },
	{ "a wrong magic", false, g_wrong_magic, true, "bad magic 0x12345678" },
	{ "a wrong version", false, g_wrong_version, true,
	  "protocol version 2, not 1" },
	{ "an fd with a hello", false, g_hello_with_fd, true,
	  "a descriptor with hello" },
	{ "a request before hello", false, g_request_before_hello, true,
	  "stat before hello" },
	{ "a header size that is not the record's", true, g_size_mismatch, true,
	  "header says 104 bytes, the record has 96" },
	{ "a record too short for its type", true, g_wrong_length_for_type,
	  true, "stat of 32 bytes, not 96" },
	{ "a record longer than its type", true, g_longer_than_type, true,
	  "stat of 104 bytes, not 96" },
	{ "an unknown type", true, g_unknown_type, true,
	  "unknown request type 999" },
	{ "an unknown feature bit", false, g_unknown_feature, true,
	  "unknown feature bits 0x8000000000000000" },
	{ "a second hello", true, g_second_hello, true, "a second hello" },
	{ "two fds", true, g_two_fds, true, "2 descriptors with one record" },
	{ "a status in a request", true, g_status_set, true,
	  "status -1 in a stats request" },
	{ "random bytes after hello", true, g_random, true, "bad magic" },
	{ "an empty record", true, g_empty_record, false, NULL },
};

/* Whether the daemon's log has a line with @needle. */
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

START_TEST(test_protocol_garbage)
{
	const struct garbage *g = &garbage[_i];
	struct upager_daemon_stats st0, st;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char buf[UPG_MSG_MAX], *map;
	int sock;

	h_daemon_start(&d);
	/* a client connected before the garbage, with pages in use */
	u = h_connect(&d);
	h_create(u, "z", H_MIB, -1, 0);
	map = h_attach(u, "z", 0, &a);
	memset(map, 0x11, H_PAGE);
	st0 = h_stats(u);

	sock = raw_connect(&d);
	if (g->hello)
		raw_hello(sock);
	g->send(sock);
	ck_assert_msg(raw_recv(sock, buf, sizeof(buf)) == 0,
		      "%s: the sender was not disconnected", g->what);
	close(sock);
	if (g->counted) {
		char line[200];

		H_WAIT_STATS(u, st, st.protocol_errors > st0.protocol_errors);
		ck_assert_msg(st.protocol_errors == st0.protocol_errors + 1,
			      "%s: protocol_errors %llu -> %llu", g->what,
			      (unsigned long long)st0.protocol_errors,
			      (unsigned long long)st.protocol_errors);
		/* and the log says which check failed */
		snprintf(line, sizeof(line), "protocol error: %s", g->reason);
		if (!log_has(&d, line)) {
			h_daemon_dump_log(&d);
			ck_abort_msg("%s: no '%s' in the log", g->what, line);
		}
	}
	/* the daemon and the other client are unaffected */
	ck_assert_int_eq(map[H_PAGE - 1], 0x11);
	ck_assert_int_eq(h_first_nonzero(map + H_PAGE, H_MIB - H_PAGE), -1);
	ck_assert_uint_eq(h_stat(u, "z").nr_attachments, 1);
	ck_assert_int_eq(upager_list(u, NULL, 0), 1);
	still_serves(&d);
	ck_assert_int_eq(upager_detach(a), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* Refused requests that are well-formed: an error reply, no disconnect. */
START_TEST(test_protocol_refusals)
{
	struct upager_daemon_stats st0, st;
	struct h_daemon d;
	struct upager *u;
	char buf[UPG_MSG_MAX];
	struct upg_hdr *r = (struct upg_hdr *)buf;
	struct upg_create c;
	struct upg_register reg;
	struct upg_name nm;
	int sock, memfd, uffd;
	void *anon;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", H_MIB, -1, 0);
	st0 = h_stats(u);
	sock = raw_connect(&d);
	raw_hello(sock);

	/* names the library would not send */
	memset(&c, 0, sizeof(c));
	proto_hdr_init(&c.h, UPG_CREATE, sizeof(c), 3);
	c.size = H_PAGE;
	c.source = UPAGER_SOURCE_ZERO;
	strcpy(c.name, "a/b");
	raw_send(sock, &c, sizeof(c), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	ck_assert_uint_eq(r->seq, 3);
	strcpy(c.name, "..");
	raw_send(sock, &c, sizeof(c), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	memset(c.name, 'a', sizeof(c.name)); /* no NUL at all */
	raw_send(sock, &c, sizeof(c), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	/* a file source without a file, a zero source with one, a bad kind */
	strcpy(c.name, "x");
	c.source = UPAGER_SOURCE_FILE;
	raw_send(sock, &c, sizeof(c), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	memfd = memfd_create("x", MFD_CLOEXEC);
	c.source = UPAGER_SOURCE_ZERO;
	raw_send(sock, &c, sizeof(c), memfd, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	c.source = 77;
	raw_send(sock, &c, sizeof(c), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);

	/* register: not a userfaultfd */
	memset(&reg, 0, sizeof(reg));
	proto_hdr_init(&reg.h, UPG_REGISTER, sizeof(reg), 4);
	reg.seg_id = h_stat(u, "z").id;
	reg.len = H_MIB;
	reg.uffd_ioctls = ~0ull;
	anon = mmap(NULL, H_MIB, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	reg.addr = (uintptr_t)anon;
	raw_send(sock, &reg, sizeof(reg), memfd, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	/* a real userfaultfd, but over memory that is not the segment's */
	uffd = uffd_open(UFFD_FEATURE_MISSING_SHMEM, UFFD_FEATURE_MISSING_SHMEM,
			 0, NULL);
	ck_assert_int_ge(uffd, 0);
	ck_assert_int_eq(uffd_register(uffd, (uintptr_t)anon, H_MIB,
				       UFFDIO_REGISTER_MODE_MISSING,
				       &reg.uffd_ioctls),
			 0);
	raw_send(sock, &reg, sizeof(reg), uffd, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -EINVAL);
	/* an unknown segment id */
	reg.seg_id = 999999;
	raw_send(sock, &reg, sizeof(reg), uffd, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_hdr));
	ck_assert_int_eq(r->status, -ENOENT);
	close(uffd);
	close(memfd);
	/* nobody's attachment */
	{
		struct upg_detach m;

		memset(&m, 0, sizeof(m));
		proto_hdr_init(&m.h, UPG_DETACH, sizeof(m), 5);
		m.attach_id = 424242;
		raw_send(sock, &m, sizeof(m), -1, -1);
		ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
				 sizeof(struct upg_hdr));
		ck_assert_int_eq(r->status, -ENOENT);
	}
	/* the connection still works */
	memset(&nm, 0, sizeof(nm));
	proto_hdr_init(&nm.h, UPG_STAT, sizeof(nm), 6);
	strcpy(nm.name, "z");
	raw_send(sock, &nm, sizeof(nm), -1, -1);
	ck_assert_int_eq(raw_recv(sock, buf, sizeof(buf)),
			 sizeof(struct upg_info));
	ck_assert_int_eq(r->status, 0);
	ck_assert_uint_eq(r->seq, 6);
	ck_assert_str_eq(((struct upg_info *)buf)->info.name, "z");
	close(sock);

	st = h_stats(u);
	ck_assert_uint_eq(st.protocol_errors, st0.protocol_errors);
	ck_assert_uint_eq(st.segments, 1);
	ck_assert_uint_eq(st.attachments, 0);
	munmap(anon, H_MIB);
	still_serves(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * A client that dies with a request in flight (its reply fails with EPIPE)
 * did nothing malformed: no protocol error is counted or logged.
 */
START_TEST(test_client_gone_before_reply)
{
	struct upager_daemon_stats st0, st;
	struct h_daemon d;
	struct upager *u;
	struct upg_hdr m;
	struct upg_name nm;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "z", H_PAGE, -1, 0);
	st0 = h_stats(u);
	for (int i = 0; i < 20; i++) {
		int sock = raw_connect(&d);

		raw_hello(sock);
		/* one reply, several replies, a refusal: none read */
		switch (i % 3) {
		case 0:
			proto_hdr_init(&m, UPG_STATS, sizeof(m), 2);
			raw_send(sock, &m, sizeof(m), -1, -1);
			break;
		case 1:
			proto_hdr_init(&m, UPG_LIST, sizeof(m), 2);
			raw_send(sock, &m, sizeof(m), -1, -1);
			break;
		case 2:
			memset(&nm, 0, sizeof(nm));
			proto_hdr_init(&nm.h, UPG_STAT, sizeof(nm), 2);
			strcpy(nm.name, "nope");
			raw_send(sock, &nm, sizeof(nm), -1, -1);
			break;
		}
		close(sock);
	}
	/* the daemon saw them all go */
	H_WAIT_STATS(u, st, st.connections == st0.connections);
	ck_assert_uint_eq(st.connections, st0.connections);
	ck_assert_uint_eq(st.protocol_errors, st0.protocol_errors);
	ck_assert_msg(!log_has(&d, "protocol error"),
		      "a client that went away was logged as a protocol error");
	still_serves(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* A source on a block device, on purpose: a loop device over a file. */
START_TEST(test_block_device_source)
{
	const size_t size = 64 * H_PAGE;
	struct loop_config lc;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char path[512], dev[64], *data, *map;
	int ctl, img, loop = -1;
	size_t off;

	if (geteuid() != 0) {
		fprintf(stderr, "SKIP %s: needs root\n", __func__);
		return;
	}
	h_daemon_start(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 97);
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	img = h_open_ro(path);
	/* another process may take the free device first: try again */
	for (int i = 0; ctl >= 0 && loop < 0 && i < 10; i++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);

		if (n < 0)
			break;
		snprintf(dev, sizeof(dev), "/dev/loop%d", n);
		loop = open(dev, O_RDONLY | O_CLOEXEC);
		if (loop < 0)
			break;
		memset(&lc, 0, sizeof(lc));
		lc.fd = img;
		/* gone when the last descriptor of it closes */
		lc.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
		if (ioctl(loop, LOOP_CONFIGURE, &lc) < 0) {
			close(loop);
			loop = -1;
		}
	}
	close(img);
	if (ctl >= 0)
		close(ctl);
	if (loop < 0) {
		fprintf(stderr, "SKIP %s: no loop device\n", __func__);
		free(data);
		h_daemon_stop(&d);
		return;
	}
	u = h_connect(&d);
	h_create(u, "dev", size, loop, 0);
	ck_assert_str_eq(h_stat(u, "dev").source_path, dev);
	map = h_attach(u, "dev", UPAGER_ATTACH_RDONLY, &a);
	ck_assert_int_eq(h_read_check(map, data, size, &off), H_READ_OK);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_int_eq(upager_delete(u, "dev", 0), 0);
	close(loop);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static int child_attach(int sock, const char *name, uint32_t flags, int *fd)
{
	struct upg_name m;

	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.h, UPG_ATTACH, sizeof(m), 2);
	strcpy(m.name, name);
	m.flags = flags;
	return h_child_request(sock, &m, sizeof(m), -1, fd);
}

/*
 * The permission check at attach, at the wire, as another user: a refusal
 * carries no memfd (the library's later error would come too late: the
 * descriptor would be in the other user's hands), and a read-only attach
 * gets a memfd that cannot be written, remapped writable or reopened for
 * writing.
 */
START_TEST(test_attach_refused_at_the_wire)
{
	struct h_daemon d;
	struct upager *u;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "private", H_MIB, -1, 0600);
	h_create(u, "readable", H_MIB, -1, 0644);
	pid = h_fork();
	if (pid == 0) {
		char path[64];
		void *p;
		int sock, fd, ret, w;

		become_nobody();
		sock = h_child_raw_hello(d.sock);
		ret = child_attach(sock, "private", 0, &fd);
		CHILD_CHECK(ret == -ENOENT && fd < 0, "private rw: %d, fd %d",
			    ret, fd);
		ret = child_attach(sock, "private", UPAGER_ATTACH_RDONLY, &fd);
		CHILD_CHECK(ret == -ENOENT && fd < 0, "private ro: %d, fd %d",
			    ret, fd);
		ret = child_attach(sock, "readable", 0, &fd);
		CHILD_CHECK(ret == -EACCES && fd < 0, "readable rw: %d, fd %d",
			    ret, fd);
		ret = child_attach(sock, "readable", UPAGER_ATTACH_RDONLY, &fd);
		CHILD_CHECK(ret == 0 && fd >= 0, "readable ro: %d, fd %d", ret,
			    fd);
		CHILD_CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY,
			    "the read-only attach's memfd is open for writing");
		w = write(fd, "x", 1);
		CHILD_CHECK(w < 0 && errno == EBADF, "write: %d (%s)", w,
			    strerror(errno));
		p = mmap(NULL, H_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
			 0);
		CHILD_CHECK(p == MAP_FAILED && errno == EACCES,
			    "writable shared mapping: %s", strerror(errno));
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		w = open(path, O_RDWR | O_CLOEXEC);
		CHILD_CHECK(w < 0 && errno == EACCES,
			    "reopened for writing through /proc: %d (%s)", w,
			    strerror(errno));
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	/* the read-only attach registered nothing */
	ck_assert_uint_eq(h_stat(u, "readable").nr_attachments, 0);
	still_serves(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Another user cannot detach root's attachment, whatever its id: ENOENT,
 * and the attachment goes on serving (pages never touched still come from
 * the file).
 */
START_TEST(test_detach_other_users_attachment)
{
	const size_t size = 64 * H_PAGE;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *data, *map;
	size_t off;
	int go[2];
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 98);
	/* forked before the attach, it has no attachment of its own */
	ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
	pid = h_fork();
	if (pid == 0) {
		int sock, ret;

		close(go[1]);
		become_nobody();
		sock = h_child_raw_hello(d.sock);
		CHILD_CHECK(h_recv_timeout(go[0], &(char){ 0 }, H_TIMEOUT_MS) ==
				    1,
			    "no go");
		for (uint64_t id = 0; id < 64; id++) {
			struct upg_detach m;
			int fd;

			memset(&m, 0, sizeof(m));
			proto_hdr_init(&m.h, UPG_DETACH, sizeof(m), 3 + id);
			m.attach_id = id;
			ret = h_child_request(sock, &m, sizeof(m), -1, &fd);
			CHILD_CHECK(ret == -ENOENT && fd < 0, "detach %llu: %d",
				    (unsigned long long)id, ret);
		}
		_exit(0);
	}
	close(go[0]);
	map = h_attach(u, "img", 0, &a);
	ck_assert_int_eq(memcmp(map, data, H_PAGE), 0);
	h_send(go[1], 'g');
	close(go[1]);
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	ck_assert_uint_eq(h_stat(u, "img").nr_attachments, 1);
	ck_assert_msg(!log_has(&d, "detached"), "an attachment was detached");
	ck_assert_int_eq(h_read_check(map, data, size, &off), H_READ_OK);
	ck_assert_int_eq(upager_detach(a), 0);
	free(data);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* Users and groups of the group-permission test */
#define OWNER 65534 /* nobody, group nogroup */
#define OTHER 65533 /* a uid of nobody's, in a group of its own */
#define GROUP 65534

struct gcase {
	const char *name; /* segment, created by OWNER */
	unsigned int flags;
	int want; /* attach's result */
};

static void attach_cases(const char *sock, const struct gcase *c, size_t n,
			 const char *who)
{
	struct upager *u = h_child_connect(sock);

	for (size_t i = 0; i < n; i++) {
		struct upager_attachment *a;
		int ret = upager_attach(u, c[i].name, c[i].flags, &a);

		CHILD_CHECK(ret == c[i].want, "%s: attach %s %s: %d, not %d",
			    who, c[i].name,
			    c[i].flags ? "read-only" : "read-write", ret,
			    c[i].want);
		if (!ret) {
			char *map = upager_attachment_addr(a);

			/* a byte of the group's own segment: it is shared */
			if (!strcmp(c[i].name, "g660") && !c[i].flags)
				map[7] = 42;
			CHILD_CHECK(map[0] == 0, "%s: %s", who, c[i].name);
			upager_detach(a);
		}
	}
	upager_disconnect(u);
}

/*
 * Group permissions, as a file's: the owner's bits for the owner (even
 * when the group's allow more), the group's for a member by primary or
 * supplementary group, the others' for the rest.
 */
START_TEST(test_group_permissions)
{
	static const struct gcase member[] = {
		{ "g660", 0, 0 },
		{ "g660", UPAGER_ATTACH_RDONLY, 0 },
		{ "g640", 0, -EACCES },
		{ "g640", UPAGER_ATTACH_RDONLY, 0 },
		{ "g600", UPAGER_ATTACH_RDONLY, -ENOENT },
		{ "o060", 0, 0 },
	};
	static const struct gcase stranger[] = {
		{ "g660", UPAGER_ATTACH_RDONLY, -ENOENT },
		{ "g640", UPAGER_ATTACH_RDONLY, -ENOENT },
		{ "g604", UPAGER_ATTACH_RDONLY, 0 },
		{ "g604", 0, -EACCES },
	};
	static const struct gcase owner[] = {
		{ "o060", UPAGER_ATTACH_RDONLY, -ENOENT },
		{ "g660", 0, 0 },
	};
	static const struct {
		const char *name;
		uint32_t mode;
	} segs[] = {
		{ "g660", 0660 }, { "g640", 0640 }, { "g600", 0600 },
		{ "g604", 0604 }, { "o060", 0060 },
	};
	const gid_t groups[] = { 100, GROUP };
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	/* the owner creates them: their group is its group */
	pid = h_fork();
	if (pid == 0) {
		struct upager *cu;

		h_become(OWNER, GROUP, NULL, 0);
		cu = h_child_connect(d.sock);
		for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
			struct upager_create_opts o = { .size = H_PAGE,
							.source_fd = -1,
							.mode = segs[i].mode };
			int ret = upager_create(cu, segs[i].name, &o);

			CHILD_CHECK(ret == 0, "create %s: %d", segs[i].name,
				    ret);
		}
		upager_disconnect(cu);
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);

	/* a member by a supplementary group */
	pid = h_fork();
	if (pid == 0) {
		h_become(OTHER, OTHER, groups, 2);
		attach_cases(d.sock, member, sizeof(member) / sizeof(member[0]),
			     "supplementary member");
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	/* a member by its primary group */
	pid = h_fork();
	if (pid == 0) {
		h_become(OTHER, GROUP, NULL, 0);
		attach_cases(d.sock, member, sizeof(member) / sizeof(member[0]),
			     "primary member");
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	/* not a member */
	pid = h_fork();
	if (pid == 0) {
		struct upager_segment_info list[8];
		struct upager *cu;
		int ret;

		h_become(OTHER, OTHER, groups, 1);
		attach_cases(d.sock, stranger,
			     sizeof(stranger) / sizeof(stranger[0]), "stranger");
		cu = h_child_connect(d.sock);
		ret = upager_stat(cu, "g660", &list[0]);
		CHILD_CHECK(ret == -ENOENT, "stranger: stat g660: %d", ret);
		ret = upager_list(cu, list, 8);
		CHILD_CHECK(ret == 1 && !strcmp(list[0].name, "g604"),
			    "stranger: list: %d", ret);
		upager_disconnect(cu);
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	/* the owner does not fall back to the group's bits */
	pid = h_fork();
	if (pid == 0) {
		h_become(OWNER, GROUP, NULL, 0);
		attach_cases(d.sock, owner, sizeof(owner) / sizeof(owner[0]),
			     "owner");
		_exit(0);
	}
	ck_assert_int_eq(h_child_exit_code(pid), 0);
	info = h_stat(u, "g660");
	ck_assert_uint_eq(info.uid, OWNER);
	ck_assert_uint_eq(info.mode, 0660);
	{
		struct upager_attachment *a;
		char *map = h_attach(u, "g660", UPAGER_ATTACH_RDONLY, &a);

		ck_assert_int_eq(map[7], 42); /* a member wrote it */
		ck_assert_int_eq(upager_detach(a), 0);
	}
	still_serves(&d);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *badinput_suite(void)
{
	Suite *s = h_suite("badinput");
	TCase *tc;

	tc = h_tcase(s, "requests", H_NEED_BASE);
	tcase_add_test(tc, test_unknown_segment);
	tcase_add_test(tc, test_bad_sizes_and_flags);
	tcase_add_test(tc, test_bad_names);
	tcase_add_test(tc, test_bad_sources);
	tcase_add_test(tc, test_duplicate_name);
	tcase_add_test(tc, test_delete_attached);
	tcase_add_test(tc, test_permissions);
	tcase_add_test(tc, test_group_permissions);
	tcase_add_test(tc, test_block_device_source);

	tc = h_tcase(s, "protocol", H_NEED_BASE);
	tcase_add_loop_test(tc, test_protocol_garbage, 0,
			    sizeof(garbage) / sizeof(garbage[0]));
	tcase_add_test(tc, test_protocol_refusals);
	tcase_add_test(tc, test_client_gone_before_reply);
	tcase_add_test(tc, test_attach_refused_at_the_wire);
	tcase_add_test(tc, test_detach_other_users_attachment);
	return s;
}

int main(void)
{
	h_main(badinput_suite());
}
