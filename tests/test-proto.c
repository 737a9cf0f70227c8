/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the wire protocol (message sizes, names, one record with
 * at most one descriptor over SOCK_SEQPACKET) and for the log level parser,
 * the other half of the common library.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "log.h"
#include "proto.h"

/* --- message sizes --- */

struct size_case {
	uint16_t type;
	size_t size;
};

static const struct size_case request_sizes[] = {
	{ UPG_HELLO, sizeof(struct upg_hello) },
	{ UPG_CREATE, sizeof(struct upg_create) },
	{ UPG_DELETE, sizeof(struct upg_name) },
	{ UPG_STAT, sizeof(struct upg_name) },
	{ UPG_LIST, sizeof(struct upg_hdr) },
	{ UPG_STATS, sizeof(struct upg_hdr) },
	{ UPG_ATTACH, sizeof(struct upg_name) },
	{ UPG_REGISTER, sizeof(struct upg_register) },
	{ UPG_DETACH, sizeof(struct upg_detach) },
	{ UPG_USAGE, sizeof(struct upg_hdr) },
	/* not requests */
	{ 0, 0 },
	{ UPG_LIST_ENTRY, 0 },
	{ UPG_USAGE_ENTRY, 0 },
	{ UPG_TYPE_MAX, 0 },
	{ 0xffff, 0 },
};

START_TEST(test_request_size)
{
	const struct size_case *c = &request_sizes[_i];

	ck_assert_msg(proto_request_size(c->type) == c->size,
		      "type %u: got %zu, want %zu", c->type,
		      proto_request_size(c->type), c->size);
}
END_TEST

START_TEST(test_sizes_fixed)
{
	/* The wire layout: what the _Static_asserts pin, checked again here
	 * so a change to one of them shows up as a test diff too. */
	ck_assert_uint_eq(sizeof(struct upg_hdr), 24);
	ck_assert_uint_eq(sizeof(struct upg_hello), 32);
	ck_assert_uint_eq(sizeof(struct upg_create), 104);
	ck_assert_uint_eq(sizeof(struct upg_name), 96);
	ck_assert_uint_eq(sizeof(struct upg_attach_reply), 48);
	ck_assert_uint_eq(sizeof(struct upg_register), 72);
	ck_assert_uint_eq(sizeof(struct upg_register_reply), 32);
	ck_assert_uint_eq(sizeof(struct upg_detach), 32);
	ck_assert_uint_eq(sizeof(struct upg_info), 720);
	ck_assert_uint_eq(sizeof(struct upg_stats), 232);
	ck_assert_uint_eq(sizeof(struct upager_usage), 88);
	ck_assert_uint_eq(sizeof(struct upg_usage), 112);
	/* the owner of an owner-checked attach is where "reserved" was */
	ck_assert_uint_eq(offsetof(struct upg_name, owner), 92);
	ck_assert_uint_eq(UPG_ATTACH_OWNER & (UPAGER_ATTACH_RDONLY |
					      UPAGER_ATTACH_PRIVATE),
			  0);
	ck_assert_uint_eq(UPG_FEATURES_KNOWN, UPG_FEATURE_USAGE |
						      UPG_FEATURE_OWNER |
						      UPG_FEATURE_SNAPSHOT);
	ck_assert_uint_eq(sizeof(struct upg_name2), 160);
	ck_assert_uint_eq(sizeof(struct upg_snapshot_reply), 72);
	ck_assert_uint_eq(sizeof(struct upg_save_reply), 72);

	/* Every message, request or reply, fits the receive buffer. */
	for (uint16_t t = 0; t < UPG_TYPE_MAX; t++)
		ck_assert_uint_le(proto_request_size(t), UPG_MSG_MAX);
	ck_assert_uint_le(sizeof(struct upg_info), UPG_MSG_MAX);
	ck_assert_uint_le(sizeof(struct upg_stats), UPG_MSG_MAX);
	ck_assert_uint_le(sizeof(struct upg_usage), UPG_MSG_MAX);
	ck_assert_uint_le(sizeof(struct upg_attach_reply), UPG_MSG_MAX);
}
END_TEST

START_TEST(test_hdr_init)
{
	struct upg_hdr h;

	memset(&h, 0xa5, sizeof(h));
	proto_hdr_init(&h, UPG_STAT, sizeof(struct upg_name), 0x1122334455ull);
	ck_assert_uint_eq(h.magic, UPG_MAGIC);
	ck_assert_uint_eq(h.version, UPG_VERSION);
	ck_assert_uint_eq(h.type, UPG_STAT);
	ck_assert_uint_eq(h.size, sizeof(struct upg_name));
	ck_assert_int_eq(h.status, 0);
	ck_assert_uint_eq(h.seq, 0x1122334455ull);
	ck_assert_mem_eq(&h.magic, "UPGR", 4);
}
END_TEST

/* --- names --- */

static char name63[UPAGER_NAME_MAX + 1];
static char name64[UPAGER_NAME_MAX + 2];

static void names_setup(void)
{
	memset(name63, 'a', UPAGER_NAME_MAX);
	name63[UPAGER_NAME_MAX] = '\0';
	memset(name64, 'b', UPAGER_NAME_MAX + 1);
	name64[UPAGER_NAME_MAX + 1] = '\0';
}

static const char *const names_good[] = {
	"a",   "Z",	  "0",	 "seg", "seg-1_x.y", "..a",
	"a..", ".hidden", "...", "-",	"_",	     "ABCxyz-09._",
};

static const char *const names_bad[] = {
	"",  ".",    "..",   "/", "a/b", "/a", "a/",   "../a", "a b",
	" ", "a\tb", "a\nb", "é", "a:b", "a*", "a\\b", "\x7f", "\xff",
};

START_TEST(test_name_good)
{
	const char *n = names_good[_i];

	ck_assert_msg(proto_name_valid(n, UPAGER_NAME_MAX + 1),
		      "\"%s\" rejected", n);
}
END_TEST

START_TEST(test_name_bad)
{
	const char *n = names_bad[_i];

	ck_assert_msg(!proto_name_valid(n, UPAGER_NAME_MAX + 1),
		      "\"%s\" accepted", n);
}
END_TEST

START_TEST(test_name_length)
{
	char field[UPAGER_NAME_MAX + 1];

	ck_assert(proto_name_valid(name63, sizeof(name63)));
	ck_assert(proto_name_valid(name63, 1024));
	ck_assert(!proto_name_valid(name64, sizeof(name64)));
	ck_assert(!proto_name_valid(name64, 1024));

	/* A full field with no NUL (as on the wire): unterminated. */
	memset(field, 'c', sizeof(field));
	ck_assert(!proto_name_valid(field, sizeof(field)));
	/* Terminated at the last byte: 63 characters, fine. */
	field[UPAGER_NAME_MAX] = '\0';
	ck_assert(proto_name_valid(field, sizeof(field)));
	/* A short name whose NUL is just past @room is unterminated too. */
	ck_assert(!proto_name_valid("abcd", 4));
	ck_assert(proto_name_valid("abcd", 5));
	ck_assert(!proto_name_valid("abcd", 0));
}
END_TEST

/* --- send and receive --- */

static int sv[2] = { -1, -1 };

static void sock_setup(void)
{
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0,
				    sv),
			 0);
}

static void sock_teardown(void)
{
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	sv[0] = sv[1] = -1;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

static int tmp_file(void)
{
	char path[] = "/tmp/upager-test-proto-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	unlink(path);
	return fd;
}

static void hello_init(struct upg_hello *m, uint64_t seq)
{
	memset(m, 0, sizeof(*m));
	proto_hdr_init(&m->h, UPG_HELLO, sizeof(*m), seq);
	m->features = 0x0123456789abcdefull;
}

/* Sends @len bytes of @msg with @nfd descriptors, bypassing proto_send. */
static void raw_send(int sock, const void *msg, size_t len, const int *fds,
		     int nfd, int ncmsg)
{
	union {
		struct cmsghdr c;
		char buf[CMSG_SPACE(16 * sizeof(int)) * 2];
	} cbuf;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memset(&cbuf, 0, sizeof(cbuf));
	if (nfd > 0) {
		struct cmsghdr *c;
		int per = ncmsg > 1 ? nfd / ncmsg : nfd;

		ck_assert_int_le(nfd, 16);
		mh.msg_control = cbuf.buf;
		if (ncmsg > 1)
			mh.msg_controllen = ncmsg *
					    CMSG_SPACE(per * sizeof(int));
		else
			mh.msg_controllen = CMSG_SPACE(nfd * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		for (int k = 0; k < (ncmsg > 1 ? ncmsg : 1); k++) {
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(per * sizeof(int));
			memcpy(CMSG_DATA(c), fds + k * per, per * sizeof(int));
			c = CMSG_NXTHDR(&mh, c);
		}
	}
	ck_assert_int_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

START_TEST(test_roundtrip_nofd)
{
	struct upg_hello out, in;
	int fd = 1234;

	hello_init(&out, 42);
	ck_assert_int_eq(proto_send(sv[0], &out, sizeof(out), -1, 0), 0);
	memset(&in, 0, sizeof(in));
	/* A buffer of exactly the record's size is enough. */
	ck_assert_int_eq(proto_recv(sv[1], &in, sizeof(in), &fd, 0), sizeof(in));
	ck_assert_int_eq(fd, -1);
	ck_assert_mem_eq(&in, &out, sizeof(out));
}
END_TEST

START_TEST(test_roundtrip_big_buffer)
{
	/* The daemon receives into a UPG_MSG_MAX buffer: the return value,
	 * not the buffer, says how long the record was. */
	struct upg_register out;
	char buf[UPG_MSG_MAX];
	int fd;

	memset(&out, 0, sizeof(out));
	proto_hdr_init(&out.h, UPG_REGISTER, sizeof(out), 7);
	out.addr = 0x7f0000001000ull;
	out.len = 1 << 20;
	ck_assert_int_eq(proto_send(sv[1], &out, sizeof(out), -1, 0), 0);
	ck_assert_int_eq(proto_recv(sv[0], buf, sizeof(buf), &fd, 0),
			 sizeof(out));
	ck_assert_int_eq(fd, -1);
	ck_assert_mem_eq(buf, &out, sizeof(out));
}
END_TEST

START_TEST(test_roundtrip_fd)
{
	struct upg_name out;
	char buf[UPG_MSG_MAX];
	struct stat a, b;
	int file = tmp_file(), fd = -1, before;

	ck_assert_int_eq(write(file, "hello", 5), 5);
	memset(&out, 0, sizeof(out));
	proto_hdr_init(&out.h, UPG_ATTACH, sizeof(out), 9);
	strcpy(out.name, "seg");
	before = count_fds();

	ck_assert_int_eq(proto_send(sv[0], &out, sizeof(out), file, 0), 0);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0),
			 sizeof(out));
	ck_assert_mem_eq(buf, &out, sizeof(out));
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ne(fd, file);
	ck_assert_int_eq(count_fds(), before + 1);

	ck_assert_int_eq(fstat(file, &a), 0);
	ck_assert_int_eq(fstat(fd, &b), 0);
	ck_assert_uint_eq(a.st_ino, b.st_ino);
	ck_assert_uint_eq(a.st_dev, b.st_dev);
	/* Received descriptors are close-on-exec. */
	ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	/* Same open file description: the offset is shared. */
	ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 5);

	close(fd);
	close(file);
}
END_TEST

START_TEST(test_seq_of_messages)
{
	/* Records stay records: three back to back come out as three. */
	struct upg_hello out[3], in;
	int fd;

	for (int i = 0; i < 3; i++) {
		hello_init(&out[i], 100 + i);
		ck_assert_int_eq(proto_send(sv[0], &out[i], sizeof(out[i]), -1,
					    0),
				 0);
	}
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(proto_recv(sv[1], &in, sizeof(in), &fd, 0),
				 sizeof(in));
		ck_assert_uint_eq(in.h.seq, 100 + i);
	}
	ck_assert_int_eq(proto_recv(sv[1], &in, sizeof(in), &fd, MSG_DONTWAIT),
			 -EAGAIN);
	ck_assert_int_eq(fd, -1);
}
END_TEST

enum corrupt {
	C_MAGIC,
	C_VERSION,
	C_SIZE_BIG,
	C_SIZE_SMALL,
	C_SHORT,
	C_EMPTY_FD,
	C_MAX
};

static const char *const corrupt_names[] = {
	"bad magic",
	"bad version",
	"size > record",
	"size < record",
	"shorter than a header",
	"empty record with a descriptor",
};

/* A bad record is -EPROTO, with or without a descriptor, and leaks none. */
static void check_corrupt(enum corrupt how, bool with_fd)
{
	struct upg_hello m;
	char buf[UPG_MSG_MAX];
	size_t len = sizeof(m);
	int file = tmp_file(), fd = 77, before;

	hello_init(&m, 1);
	switch (how) {
	case C_MAGIC:
		m.h.magic = 0x52475056u;
		break;
	case C_VERSION:
		m.h.version = UPG_VERSION + 1;
		break;
	case C_SIZE_BIG:
		m.h.size = sizeof(m) + 8;
		break;
	case C_SIZE_SMALL:
		m.h.size = sizeof(m) - 8;
		break;
	case C_SHORT:
		len = sizeof(m.h) - 1;
		break;
	case C_EMPTY_FD:
		len = 0;
		with_fd = true;
		break;
	default:
		break;
	}
	before = count_fds();
	raw_send(sv[0], &m, len, &file, with_fd ? 1 : 0, 1);
	ck_assert_msg(proto_recv(sv[1], buf, sizeof(buf), &fd, 0) == -EPROTO,
		      "%s%s: not -EPROTO", corrupt_names[how],
		      with_fd ? " (with fd)" : "");
	ck_assert_int_eq(fd, -1);
	ck_assert_msg(count_fds() == before, "%s: %d descriptors leaked",
		      corrupt_names[how], count_fds() - before);

	/* The connection is still in step: the next record is fine. */
	hello_init(&m, 2);
	ck_assert_int_eq(proto_send(sv[0], &m, sizeof(m), -1, 0), 0);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), sizeof(m));
	ck_assert_uint_eq(((struct upg_hdr *)buf)->seq, 2);
	close(file);
}

START_TEST(test_corrupt)
{
	check_corrupt(_i, false);
}
END_TEST

START_TEST(test_corrupt_fd)
{
	check_corrupt(_i, true);
}
END_TEST

START_TEST(test_truncated)
{
	/* A record longer than the buffer is not silently cut short. */
	char big[2 * UPG_MSG_MAX];
	char buf[UPG_MSG_MAX];
	struct upg_hdr *h = (struct upg_hdr *)big;
	int file = tmp_file(), fd = 77, before;

	memset(big, 0, sizeof(big));
	proto_hdr_init(h, UPG_HELLO, sizeof(big), 3);
	before = count_fds();

	ck_assert_int_eq(proto_send(sv[0], big, sizeof(big), -1, 0), 0);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), -EPROTO);
	ck_assert_int_eq(fd, -1);

	ck_assert_int_eq(proto_send(sv[0], big, sizeof(big), file, 0), 0);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), -EPROTO);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(count_fds(), before);

	/* One byte too long for the buffer, header claiming the buffer. */
	h->size = sizeof(buf);
	ck_assert_int_eq(proto_send(sv[0], big, sizeof(buf) + 1, file, 0), 0);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), -EPROTO);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(count_fds(), before);
	close(file);
}
END_TEST

START_TEST(test_two_fds)
{
	struct upg_hello m;
	char buf[UPG_MSG_MAX];
	int files[16], fd = 77, before;

	for (int i = 0; i < 16; i++)
		files[i] = tmp_file();
	hello_init(&m, 5);
	before = count_fds();

	/* two in one cmsg */
	raw_send(sv[0], &m, sizeof(m), files, 2, 1);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), -EPROTO);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(count_fds(), before);

	/* one in each of two cmsgs */
	raw_send(sv[0], &m, sizeof(m), files, 2, 2);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), -EPROTO);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(count_fds(), before);

	/* more than the control buffer holds (MSG_CTRUNC) */
	raw_send(sv[0], &m, sizeof(m), files, 16, 1);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), -EPROTO);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(count_fds(), before);

	for (int i = 0; i < 16; i++)
		close(files[i]);
}
END_TEST

START_TEST(test_peer_closed)
{
	struct upg_hello m;
	char buf[UPG_MSG_MAX];
	int fd = 77;

	/* What was sent before the hang-up is still delivered. */
	hello_init(&m, 6);
	ck_assert_int_eq(proto_send(sv[0], &m, sizeof(m), -1, 0), 0);
	close(sv[0]);
	sv[0] = -1;
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), sizeof(m));
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), 0);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), &fd, 0), 0);

	/* The other way: sending to a closed peer is -EPIPE, no SIGPIPE. */
	ck_assert_int_eq(proto_send(sv[1], &m, sizeof(m), -1, 0), -EPIPE);
}
END_TEST

START_TEST(test_bad_socket)
{
	struct upg_hello m;
	char buf[UPG_MSG_MAX];
	int fd = 77;

	hello_init(&m, 1);
	ck_assert_int_eq(proto_send(-1, &m, sizeof(m), -1, 0), -EBADF);
	ck_assert_int_eq(proto_recv(-1, buf, sizeof(buf), &fd, 0), -EBADF);
	ck_assert_int_eq(fd, -1);
}
END_TEST

/* --- log --- */

static const struct {
	const char *name;
	int level;
} log_levels[] = {
	{ "error", LOG_ERR }, { "warning", LOG_WARN }, { "notice", LOG_NOTICE },
	{ "info", LOG_INFO }, { "debug", LOG_DEBUG },
};

static const char *const log_bad[] = {
	"",	 "err",	  "warn", "Error", "DEBUG", "debug ",
	" info", "infos", "0",	  "4",	   "trace", "critical",
};

START_TEST(test_log_level_good)
{
	log_max_level = -1;
	ck_assert_int_eq(log_level_parse(log_levels[_i].name), 0);
	ck_assert_int_eq(log_max_level, log_levels[_i].level);
	ck_assert(log_enabled(log_levels[_i].level));
	ck_assert(!log_enabled(log_levels[_i].level + 1));
}
END_TEST

START_TEST(test_log_level_bad)
{
	log_max_level = LOG_INFO;
	ck_assert_int_eq(log_level_parse(log_bad[_i]), -EINVAL);
	ck_assert_int_eq(log_max_level, LOG_INFO);
}
END_TEST

START_TEST(test_log_order)
{
	ck_assert_int_lt(LOG_ERR, LOG_WARN);
	ck_assert_int_lt(LOG_WARN, LOG_NOTICE);
	ck_assert_int_lt(LOG_NOTICE, LOG_INFO);
	ck_assert_int_lt(LOG_INFO, LOG_DEBUG);
}
END_TEST

/* log_msg writes one line, "<time> <level>: <module>: <text>". */
START_TEST(test_log_msg)
{
	char out[4096];
	int p[2], saved;
	ssize_t n;

	ck_assert_int_eq(pipe(p), 0);
	saved = dup(2);
	ck_assert_int_eq(dup2(p[1], 2), 2);
	log_max_level = LOG_NOTICE;
	pr_err("mod", "x=%d", 1);
	pr_info("mod", "hidden");
	pr_debug("mod", "hidden");
	pr_notice("other", "%s", "shown");
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(p[1]);
	n = read(p[0], out, sizeof(out) - 1);
	close(p[0]);
	ck_assert_int_gt(n, 0);
	out[n] = '\0';
	ck_assert_ptr_nonnull(strstr(out, " error: mod: x=1\n"));
	ck_assert_ptr_nonnull(strstr(out, " notice: other: shown\n"));
	ck_assert_ptr_null(strstr(out, "hidden"));
}
END_TEST

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static Suite *proto_suite(void)
{
	Suite *s = suite_create("proto");
	TCase *tc;

	tc = tcase_create("sizes");
	tcase_add_loop_test(tc, test_request_size, 0, N(request_sizes));
	tcase_add_test(tc, test_sizes_fixed);
	tcase_add_test(tc, test_hdr_init);
	suite_add_tcase(s, tc);

	tc = tcase_create("names");
	tcase_add_checked_fixture(tc, names_setup, NULL);
	tcase_add_loop_test(tc, test_name_good, 0, N(names_good));
	tcase_add_loop_test(tc, test_name_bad, 0, N(names_bad));
	tcase_add_test(tc, test_name_length);
	suite_add_tcase(s, tc);

	tc = tcase_create("send_recv");
	tcase_add_checked_fixture(tc, sock_setup, sock_teardown);
	tcase_add_test(tc, test_roundtrip_nofd);
	tcase_add_test(tc, test_roundtrip_big_buffer);
	tcase_add_test(tc, test_roundtrip_fd);
	tcase_add_test(tc, test_seq_of_messages);
	tcase_add_loop_test(tc, test_corrupt, 0, C_MAX);
	tcase_add_loop_test(tc, test_corrupt_fd, 0, C_MAX);
	tcase_add_test(tc, test_truncated);
	tcase_add_test(tc, test_two_fds);
	tcase_add_test(tc, test_peer_closed);
	tcase_add_test(tc, test_bad_socket);
	suite_add_tcase(s, tc);

	return s;
}

static Suite *log_suite(void)
{
	Suite *s = suite_create("log");
	TCase *tc;

	tc = tcase_create("level");
	tcase_add_loop_test(tc, test_log_level_good, 0, N(log_levels));
	tcase_add_loop_test(tc, test_log_level_bad, 0, N(log_bad));
	tcase_add_test(tc, test_log_order);
	tcase_add_test(tc, test_log_msg);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(proto_suite());
	int failed;

	srunner_add_suite(sr, log_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
