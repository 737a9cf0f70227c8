// SPDX-License-Identifier: MIT
/*
 * upagerctl end to end, against a real daemon: what it prints, what it
 * exits with, and the bytes that cat and write move.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "harness.h"

#define MAX_ARGS 16

/*
 * Runs upagerctl --socket SOCK ARGS... (NULL-terminated) with @in on stdin.
 * A NULL @d runs it without --socket.
 */
static void ctl(struct h_run *r, const struct h_daemon *d, const void *in,
		size_t in_len, ...)
{
	const char *argv[MAX_ARGS + 4];
	size_t n = 0;
	const char *arg;
	va_list ap;

	argv[n++] = h_upagerctl();
	if (d) {
		argv[n++] = "--socket";
		argv[n++] = d->sock;
	}
	va_start(ap, in_len);
	while ((arg = va_arg(ap, const char *)) && n < MAX_ARGS + 3)
		argv[n++] = arg;
	va_end(ap);
	argv[n] = NULL;
	h_run(argv, in, in_len, r);
}

#define ck_assert_exit(r, code)						\
	ck_assert_msg(WIFEXITED((r)->status) &&				\
		      WEXITSTATUS((r)->status) == (code),		\
		      "exit %d expected, status %#x; stderr: %s", (code),	\
		      (r)->status, (r)->err)

/* The unsigned value of "key": in JSON text, or fails. */
static uint64_t json_u64(const char *json, const char *key)
{
	char pat[80];
	const char *p;
	char *end;
	uint64_t v;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(json, pat);
	ck_assert_msg(p, "no \"%s\" in: %s", key, json);
	p += strlen(pat);
	while (*p == ' ')
		p++;
	errno = 0;
	v = strtoull(p, &end, 10);
	ck_assert_msg(end != p && !errno, "\"%s\" is not a number", key);
	return v;
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

START_TEST(test_help)
{
	static const char *cmds[] = { "create", "delete", "list", "stat",
				      "cat", "write", "stats" };
	struct h_run r;

	ctl(&r, NULL, NULL, 0, "--help", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "usage: upagerctl"));
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		ck_assert_msg(strstr(r.out, cmds[i]), "--help lacks %s", cmds[i]);
	h_run_free(&r);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		ctl(&r, NULL, NULL, 0, cmds[i], "--help", NULL);
		ck_assert_exit(&r, 0);
		ck_assert_msg(strstr(r.out, cmds[i]), "%s --help: %s", cmds[i],
			      r.out);
		h_run_free(&r);
	}
	/* usage errors: 2, on stderr */
	ctl(&r, NULL, NULL, 0, NULL);
	ck_assert_exit(&r, 2);
	ck_assert_uint_gt(r.err_len, 0);
	h_run_free(&r);
	ctl(&r, NULL, NULL, 0, "frobnicate", NULL);
	ck_assert_exit(&r, 2);
	ck_assert_ptr_nonnull(strstr(r.err, "frobnicate"));
	h_run_free(&r);
	ctl(&r, NULL, NULL, 0, "stat", NULL);
	ck_assert_exit(&r, 2);
	h_run_free(&r);
	ctl(&r, NULL, NULL, 0, "list", "--bogus", NULL);
	ck_assert_exit(&r, 2);
	ck_assert_ptr_nonnull(strstr(r.err, "--bogus"));
	h_run_free(&r);
}
END_TEST

/* No daemon there: 1, with a message. */
START_TEST(test_no_daemon)
{
	struct h_daemon d;
	struct h_run r;

	h_daemon_init(&d);
	ctl(&r, &d, NULL, 0, "list", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_ptr_nonnull(strstr(r.err, d.sock));
	ck_assert_uint_eq(r.out_len, 0);
	h_run_free(&r);
	h_dir_remove(d.dir);
}
END_TEST

START_TEST(test_bad_size)
{
	static const char *sizes[] = { "0", "abc", "2T", "1.5G", "-1", "" };
	struct upager *u;
	struct h_daemon d;
	struct h_run r;

	h_daemon_start(&d);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		ctl(&r, &d, NULL, 0, "create", "s", "--size", sizes[i], NULL);
		ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 2,
			      "--size '%s': status %#x", sizes[i], r.status);
		ck_assert_uint_gt(r.err_len, 0);
		h_run_free(&r);
	}
	ctl(&r, &d, NULL, 0, "create", "s", NULL);	/* no --size */
	ck_assert_exit(&r, 2);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "s", "--size", "4K", "--mode", "999",
	    NULL);
	ck_assert_exit(&r, 2);
	h_run_free(&r);
	/* nothing was created */
	u = h_connect(&d);
	ck_assert_int_eq(upager_list(u, NULL, 0), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* A bad segment name is a usage error (2), whatever is wrong with it. */
START_TEST(test_bad_name)
{
	static const char *names[] = {
		"a/b", "..", "a b", "x\n",
		"0123456789012345678901234567890123456789012345678901234567890123",
	};
	struct h_daemon d;
	struct h_run r;

	h_daemon_start(&d);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		ctl(&r, &d, NULL, 0, "create", names[i], "--size", "4K", NULL);
		ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 2,
			      "create '%s': status %#x (exit 2 expected); "
			      "stderr: %s", names[i], r.status, r.err);
		h_run_free(&r);
	}
	h_daemon_stop(&d);
}
END_TEST

START_TEST(test_unknown_segment)
{
	static const char *cmds[] = { "stat", "cat", "write", "delete" };
	struct h_daemon d;
	struct h_run r;

	h_daemon_start(&d);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		ctl(&r, &d, "x", 1, cmds[i], "nope", NULL);
		ck_assert_exit(&r, 1);
		ck_assert_msg(strstr(r.err, "nope") &&
			      strstr(r.err, "no such segment"),
			      "%s nope: stderr '%s'", cmds[i], r.err);
		ck_assert_uint_eq(r.out_len, 0);
		h_run_free(&r);
	}
	/* a source that does not exist */
	ctl(&r, &d, NULL, 0, "create", "s", "--size", "4K", "--source",
	    "/nonexistent/image", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_ptr_nonnull(strstr(r.err, "/nonexistent/image"));
	h_run_free(&r);
	h_daemon_stop(&d);
}
END_TEST

/* create, list, stat, cat of a file segment: the bytes and the counters. */
START_TEST(test_file_segment_end_to_end)
{
	const size_t size = 3 * H_MIB + 1000;	/* not a page multiple */
	const size_t rounded = 3 * H_MIB + H_PAGE;
	struct h_daemon d;
	struct h_run r;
	char path[512], *data, *expect;

	h_daemon_start(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 101);
	ctl(&r, &d, NULL, 0, "create", "img", "--size", "3M", "--source", path,
	    "--mode", "0640", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "zz", "--size", "64K", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "img", "--size", "4K", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_ptr_nonnull(strstr(r.err, "exists"));
	h_run_free(&r);

	ctl(&r, &d, NULL, 0, "list", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "NAME"));
	ck_assert_ptr_nonnull(strstr(r.out, "img"));
	ck_assert_ptr_nonnull(strstr(r.out, "zz"));
	ck_assert_ptr_nonnull(strstr(r.out, path));
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "list", "--json", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_int_eq(r.out[0], '[');
	ck_assert_uint_eq(count(r.out, "\"name\": \"img\""), 1);
	ck_assert_uint_eq(count(r.out, "\"name\": \"zz\""), 1);
	ck_assert_uint_eq(count(r.out, "\"size\":"), 2);
	h_run_free(&r);

	ctl(&r, &d, NULL, 0, "stat", "img", "--json", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_int_eq(r.out[0], '{');
	ck_assert_uint_eq(json_u64(r.out, "size"), 3 * H_MIB);
	ck_assert_uint_eq(json_u64(r.out, "mode"), 0640);
	ck_assert_uint_eq(json_u64(r.out, "source"), UPAGER_SOURCE_FILE);
	ck_assert_uint_eq(json_u64(r.out, "bytes_read"), 0);
	ck_assert_uint_eq(json_u64(r.out, "nr_attachments"), 0);
	h_run_free(&r);

	/* cat: the file's first 3 MiB (the segment is 3M, not the file) */
	ctl(&r, &d, NULL, 0, "cat", "img", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, 3 * H_MIB);
	ck_assert_int_eq(h_first_diff(r.out, data, 3 * H_MIB), -1);
	h_run_free(&r);
	/* a range, unaligned */
	ctl(&r, &d, NULL, 0, "cat", "img", "--offset", "12345", "--length",
	    "100000", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, 100000);
	ck_assert_int_eq(h_first_diff(r.out, data + 12345, 100000), -1);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "cat", "img", "--offset", "4M", NULL);
	ck_assert_exit(&r, 1);
	h_run_free(&r);

	/* every page read once, by cat's read-only attachment */
	{
		struct upager *u = h_connect(&d);
		struct upager_segment_info info;

		H_WAIT_STAT(u, "img", info, info.pages_filled >= 3 * H_MIB / H_PAGE);
		upager_disconnect(u);
	}
	ctl(&r, &d, NULL, 0, "stat", "img", "--json", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(json_u64(r.out, "bytes_read"), 3 * H_MIB);
	ck_assert_uint_eq(json_u64(r.out, "pages_filled"), 3 * H_MIB / H_PAGE);
	ck_assert_uint_eq(json_u64(r.out, "resident_bytes"), 3 * H_MIB);
	h_run_free(&r);
	/* human-readable stat */
	ctl(&r, &d, NULL, 0, "stat", "img", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "img"));
	ck_assert_ptr_nonnull(strstr(r.out, "0640"));
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "stats", "--json", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(json_u64(r.out, "segments"), 2);
	ck_assert_uint_eq(json_u64(r.out, "protocol_errors"), 0);
	ck_assert_uint_ge(json_u64(r.out, "bytes_read"), 3 * H_MIB);
	h_run_free(&r);

	/* the rounded size: a whole-page segment from a longer file */
	ctl(&r, &d, NULL, 0, "create", "odd", "--size", "3146728", "--source",
	    path, NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "cat", "odd", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, rounded);
	expect = calloc(1, rounded);
	memcpy(expect, data, size);
	ck_assert_int_eq(h_first_diff(r.out, expect, rounded), -1);
	h_run_free(&r);
	free(expect);

	ctl(&r, &d, NULL, 0, "delete", "img", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "stat", "img", NULL);
	ck_assert_exit(&r, 1);
	h_run_free(&r);
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/* write then cat, with --offset: the bytes go where they were sent. */
START_TEST(test_write_cat_round_trip)
{
	const size_t size = 2 * H_MIB, off = 5000, len = 300000;
	struct h_daemon d;
	struct h_run r;
	char *in, *expect, offs[32];

	h_daemon_start(&d);
	in = malloc(len);
	h_fill(in, len, 102);
	expect = calloc(1, size);
	memcpy(expect + off, in, len);
	snprintf(offs, sizeof(offs), "%zu", off);

	ctl(&r, &d, NULL, 0, "create", "z", "--size", "2M", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl(&r, &d, in, len, "write", "z", "--offset", offs, "--verbose", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "300000 bytes written"));
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "cat", "z", "--offset", offs, "--length", "300000",
	    NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, len);
	ck_assert_int_eq(h_first_diff(r.out, in, len), -1);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "cat", "z", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, size);
	ck_assert_int_eq(h_first_diff(r.out, expect, size), -1);
	h_run_free(&r);

	/* more input than room after the offset: 1; from a pipe, what fits
	 * is written (and said so), nothing beyond the end */
	ctl(&r, &d, in, len, "write", "z", "--offset", "1900000", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_ptr_nonnull(strstr(r.err, "only those were written"));
	h_run_free(&r);
	memcpy(expect + 1900000, in, size - 1900000);
	ctl(&r, &d, NULL, 0, "cat", "z", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_int_eq(h_first_diff(r.out, expect, size), -1);
	h_run_free(&r);

	/* delete while another client is attached: refused unless forced */
	{
		struct upager_attachment *a;
		struct upager *u = h_connect(&d);
		char *map = h_attach(u, "z", 0, &a);

		ctl(&r, &d, NULL, 0, "delete", "z", NULL);
		ck_assert_exit(&r, 1);
		ck_assert_ptr_nonnull(strstr(r.err, "attached"));
		h_run_free(&r);
		ctl(&r, &d, NULL, 0, "delete", "z", "--force", NULL);
		ck_assert_exit(&r, 0);
		h_run_free(&r);
		ck_assert_int_eq(h_first_diff(map, expect, size), -1);
		ck_assert_int_eq(upager_detach(a), 0);
		upager_disconnect(u);
	}
	ctl(&r, &d, NULL, 0, "list", "--json", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(count(r.out, "\"name\""), 0);
	h_run_free(&r);
	free(in);
	free(expect);
	h_daemon_stop(&d);
}
END_TEST

static Suite *ctl_suite(void)
{
	Suite *s = suite_create("ctl");
	TCase *tc = h_tcase("usage");

	tcase_add_test(tc, test_help);
	tcase_add_test(tc, test_no_daemon);
	tcase_add_test(tc, test_bad_size);
	tcase_add_test(tc, test_bad_name);
	tcase_add_test(tc, test_unknown_segment);
	suite_add_tcase(s, tc);
	tc = h_tcase("data");
	tcase_add_test(tc, test_file_segment_end_to_end);
	tcase_add_test(tc, test_write_cat_round_trip);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	h_main(ctl_suite(), H_NEED_BASE);
}
