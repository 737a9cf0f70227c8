// SPDX-License-Identifier: MIT
/*
 * upagerctl end to end, against a real daemon: what it prints, what it
 * exits with, and the bytes that cat and write move.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "harness.h"

#define MAX_ARGS 16
/* What --help says of segment names (proto_name_valid()). */
#define NAME_RULES                                       \
	"NAME: 1 to 63 characters of A-Z a-z 0-9 . _ - " \
	"(not \".\" or \"..\")"

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

/*
 * ctl() with descriptor @fd (0, 1 or 2) closed when upagerctl starts: a
 * shell closes it and execs upagerctl, so nothing else differs.  @in is
 * still offered on the pipe that would have been stdin.
 */
static void ctl_closed(struct h_run *r, const struct h_daemon *d, int fd,
		       const void *in, size_t in_len, ...)
{
	static const char *const scripts[] = {
		"exec \"$@\" 0<&-",
		"exec \"$@\" 1>&-",
		"exec \"$@\" 2>&-",
	};
	const char *argv[MAX_ARGS + 8];
	size_t n = 0;
	const char *arg;
	va_list ap;

	ck_assert(fd >= 0 && fd <= 2);
	argv[n++] = "/bin/sh";
	argv[n++] = "-c";
	argv[n++] = scripts[fd];
	argv[n++] = "sh";
	argv[n++] = h_upagerctl();
	if (d) {
		argv[n++] = "--socket";
		argv[n++] = d->sock;
	}
	va_start(ap, in_len);
	while ((arg = va_arg(ap, const char *)) && n < MAX_ARGS + 7)
		argv[n++] = arg;
	va_end(ap);
	argv[n] = NULL;
	h_run(argv, in, in_len, r);
}

#define ck_assert_exit(r, code)                                           \
	ck_assert_msg(WIFEXITED((r)->status) &&                           \
			      WEXITSTATUS((r)->status) == (code),         \
		      "exit %d expected, status %#x; stderr: %s", (code), \
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

/* The string value of "key" in JSON text (no escapes in it), or fails. */
static void json_str(const char *json, const char *key, char *out, size_t len)
{
	char pat[80];
	const char *p, *end;

	snprintf(pat, sizeof(pat), "\"%s\": \"", key);
	p = strstr(json, pat);
	ck_assert_msg(p, "no string \"%s\" in: %s", key, json);
	p += strlen(pat);
	end = strchr(p, '"');
	ck_assert_msg(end && (size_t)(end - p) < len, "\"%s\" unterminated",
		      key);
	memcpy(out, p, (size_t)(end - p));
	out[end - p] = '\0';
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
				      "cat",	"write",  "stats" };
	struct h_run r;

	ctl(&r, NULL, NULL, 0, "--help", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "usage: upagerctl"));
	ck_assert_msg(strstr(r.out, NAME_RULES),
		      "--help lacks the name rules: %s", r.out);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		ck_assert_msg(strstr(r.out, cmds[i]), "--help lacks %s",
			      cmds[i]);
	h_run_free(&r);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		ctl(&r, NULL, NULL, 0, cmds[i], "--help", NULL);
		ck_assert_exit(&r, 0);
		ck_assert_msg(strstr(r.out, cmds[i]), "%s --help: %s", cmds[i],
			      r.out);
		/* every command that takes a NAME says what one may be */
		if (strstr(r.out, " NAME"))
			ck_assert_msg(strstr(r.out, NAME_RULES),
				      "%s --help lacks the name rules: %s",
				      cmds[i], r.out);
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
	/* the daemon's usage errors, likewise */
	{
		const char *argv[] = { h_upagerd(), "--socket", "", NULL };

		h_run(argv, NULL, 0, &r);
		ck_assert_exit(&r, 2);
		ck_assert_ptr_nonnull(strstr(r.err, "--socket"));
		h_run_free(&r);
	}
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
	ck_assert_msg(strstr(r.err, "is upagerd running?"), "stderr: %s", r.err);
	ck_assert_uint_eq(r.out_len, 0);
	h_run_free(&r);
	h_dir_remove(d.dir);
}
END_TEST

START_TEST(test_bad_size)
{
	static const char *sizes[] = { "0", "abc", "2T", "1.5G", "-1", "" };
	static const char *large[] = {
		"1P", "2T", "1E", "1Z", "1099511627777", "99999999999999999999"
	};
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
	/* past the limit, or past 64 bits: "too large", never "invalid" */
	for (size_t i = 0; i < sizeof(large) / sizeof(large[0]); i++) {
		ctl(&r, &d, NULL, 0, "create", "s", "--size", large[i], NULL);
		ck_assert_exit(&r, 2);
		ck_assert_msg(strstr(r.err, "too large") &&
				      !strstr(r.err, "invalid"),
			      "--size %s: stderr: %s", large[i], r.err);
		h_run_free(&r);
	}
	ctl(&r, &d, NULL, 0, "create", "s", "--size", "12X", NULL);
	ck_assert_exit(&r, 2);
	ck_assert_msg(strstr(r.err, "invalid --size '12X'"), "stderr: %s",
		      r.err);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "s", NULL); /* no --size */
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
		"a/b",
		"..",
		"a b",
		"x\n",
		"0123456789012345678901234567890123456789012345678901234567890123",
	};
	struct h_daemon d;
	struct h_run r;

	char longname[1001];

	h_daemon_start(&d);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		ctl(&r, &d, NULL, 0, "create", names[i], "--size", "4K", NULL);
		ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 2,
			      "create '%s': status %#x (exit 2 expected); "
			      "stderr: %s",
			      names[i], r.status, r.err);
		h_run_free(&r);
	}
	/* a control character is shown escaped, not raw */
	ctl(&r, &d, NULL, 0, "stat", "x\ny\033[2J", NULL);
	ck_assert_exit(&r, 2);
	ck_assert_msg(strstr(r.err, "'x\\x0ay\\x1b[2J'") &&
			      !strchr(r.err, '\033'),
		      "stderr: %s", r.err);
	ck_assert_uint_eq(count(r.err, "\n"), 2); /* message, "Try" */
	h_run_free(&r);
	/* a name too long: said so, and not echoed back in full */
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	ctl(&r, &d, NULL, 0, "create", longname, "--size", "4K", NULL);
	ck_assert_exit(&r, 2);
	ck_assert_msg(strstr(r.err, "too long") && strstr(r.err, "1000 bytes") &&
			      strstr(r.err, "at most 63") &&
			      strstr(r.err, "\u2026"),
		      "stderr: %s", r.err);
	ck_assert_msg(!strstr(r.err, longname + 900) && r.err_len < 300,
		      "the long name was echoed: %zu bytes", r.err_len);
	h_run_free(&r);
	/* 63 is fine: no rule the help does not state */
	longname[63] = '\0';
	ctl(&r, &d, NULL, 0, "create", longname, "--size", "4K", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
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
	const size_t size = 3 * H_MIB + 1000; /* not a page multiple */
	const size_t rounded = 3 * H_MIB + H_PAGE;
	struct h_daemon d;
	struct h_run r;
	char path[512], *data, *expect;

	h_daemon_start(&d);
	data = h_make_file(path, sizeof(path), d.dir, "img", size, 101);
	ctl(&r, &d, NULL, 0, "create", "img", "--size", "3M", "--source", path,
	    "--mode", "0640", NULL);
	ck_assert_exit(&r, 0);
	/* whole pages: no note */
	ck_assert_msg(r.err_len == 0, "stderr: %s", r.err);
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
	{
		char mode[16];

		json_str(r.out, "mode", mode, sizeof(mode));
		ck_assert_str_eq(mode, "0640");
	}
	ck_assert_uint_eq(json_u64(r.out, "source"), UPAGER_SOURCE_FILE);
	ck_assert_uint_eq(json_u64(r.out, "bytes_read"), 0);
	ck_assert_uint_eq(json_u64(r.out, "nr_attachments"), 0);
	/* never faulted: nothing read ahead, nothing checked */
	ck_assert_uint_eq(json_u64(r.out, "readahead_pages"), 0);
	ck_assert_uint_eq(json_u64(r.out, "readahead_touched"), 0);
	ck_assert_uint_eq(json_u64(r.out, "readahead_untouched"), 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "stat", "img", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "\nreadahead pages:"));
	/* none checked: no rate, not 0% */
	ck_assert_ptr_nonnull(strstr(r.out, "\nreadahead hit rate:  -\n"));
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

		H_WAIT_STAT(u, "img", info,
			    info.pages_filled >= 3 * H_MIB / H_PAGE);
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
	/* present, whatever the faults above made of them */
	json_u64(r.out, "readahead_pages");
	json_u64(r.out, "readahead_touched");
	json_u64(r.out, "readahead_untouched");
	json_u64(r.out, "uffd_reads");
	json_u64(r.out, "uffd_reads_empty");
	json_u64(r.out, "home_moves");
	json_u64(r.out, "pollers_added");
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "stats", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.out, "\nreadahead hit rate: "));
	ck_assert_ptr_nonnull(strstr(r.out, "\nuffd reads empty: "));
	ck_assert_ptr_nonnull(strstr(r.out, "\npollers added: "));
	h_run_free(&r);

	/* the rounded size: a whole-page segment from a longer file */
	ctl(&r, &d, NULL, 0, "create", "odd", "--size", "3146728", "--source",
	    path, NULL);
	ck_assert_exit(&r, 0);
	ck_assert_msg(strstr(r.err, "size rounded up to 3149824 bytes (whole "
				    "pages"),
		      "stderr: %s", r.err);
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

/*
 * The daemon's socket path names something else, or nothing listens: the
 * message says which, not just "Connection refused".
 */
START_TEST(test_socket_errors)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char file[300], dead[300];
	struct h_daemon d;
	struct h_run r;
	int fd, sock;

	h_daemon_init(&d);
	snprintf(file, sizeof(file), "%s/plain", d.dir);
	fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	/* a socket that is bound but never listened on */
	snprintf(dead, sizeof(dead), "%s/dead.sock", d.dir);
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(sock, 0);
	ck_assert_uint_lt(strlen(dead), sizeof(sa.sun_path));
	memcpy(sa.sun_path, dead, strlen(dead) + 1);
	ck_assert_int_eq(bind(sock, (struct sockaddr *)&sa, sizeof(sa)), 0);

	ctl(&r, NULL, NULL, 0, "--socket", file, "list", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, file) &&
			      strstr(r.err, "not a socket but a regular file"),
		      "stderr: %s", r.err);
	h_run_free(&r);
	ctl(&r, NULL, NULL, 0, "--socket", d.dir, "stats", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "not a socket but a directory"),
		      "stderr: %s", r.err);
	h_run_free(&r);
	ctl(&r, NULL, NULL, 0, "--socket", dead, "list", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "nothing listens") &&
			      strstr(r.err, "is upagerd running?"),
		      "stderr: %s", r.err);
	h_run_free(&r);
	/* the command's own --socket, too */
	ctl(&r, NULL, NULL, 0, "list", "--socket", dead, NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "is upagerd running?"), "stderr: %s", r.err);
	h_run_free(&r);
	/* an empty path is a usage error, before anything is tried */
	ctl(&r, NULL, NULL, 0, "--socket", "", "list", NULL);
	ck_assert_exit(&r, 2);
	h_run_free(&r);
	ctl(&r, NULL, NULL, 0, "list", "--socket", "", NULL);
	ck_assert_exit(&r, 2);
	h_run_free(&r);
	close(sock);
	h_dir_remove(d.dir);
}
END_TEST

/* A FIFO as --source: refused at once, not a hang in open(). */
START_TEST(test_source_fifo)
{
	struct h_daemon d;
	struct h_run r;
	char fifo[300];
	struct upager *u;

	h_daemon_start(&d);
	snprintf(fifo, sizeof(fifo), "%s/fifo", d.dir);
	ck_assert_int_eq(mkfifo(fifo, 0600), 0);
	ctl(&r, &d, NULL, 0, "create", "f", "--size", "4K", "--source", fifo,
	    NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "not a regular file but a FIFO"),
		      "stderr: %s", r.err);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "f", "--size", "4K", "--source", d.dir,
	    NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "not a regular file but a directory"),
		      "stderr: %s", r.err);
	h_run_free(&r);
	u = h_connect(&d);
	ck_assert_int_eq(upager_list(u, NULL, 0), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* Sizes are whole pages: create says so when --size is not. */
START_TEST(test_create_rounding_note)
{
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	struct h_run r;

	h_daemon_start(&d);
	ctl(&r, &d, NULL, 0, "create", "r", "--size", "5000", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_msg(strstr(r.err, "upagerctl: create: r: size rounded up to "
				    "8192 bytes (whole pages of 4096 bytes)"),
		      "stderr: %s", r.err);
	ck_assert_uint_eq(r.out_len, 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "w", "--size", "8K", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_msg(r.err_len == 0, "a note for a whole size: %s", r.err);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "one", "--size", "1", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_ptr_nonnull(strstr(r.err, "rounded up to 4096 bytes"));
	h_run_free(&r);
	/* what the note says is what the daemon did */
	u = h_connect(&d);
	info = h_stat(u, "r");
	ck_assert_uint_eq(info.size, 8192);
	info = h_stat(u, "one");
	ck_assert_uint_eq(info.size, 4096);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * With fd 0, 1 or 2 closed, no descriptor of upagerctl's (the library's
 * socket above all) may take its number: a closed stdin must not make
 * `write` read the daemon's socket (it hung), a closed stdout must not make
 * `cat` write the segment into it (it did, and exited 0).  A command that
 * needs the closed stream fails with a message; the others work.
 */
START_TEST(test_stdio_closed)
{
	static const char *const need_out[][2] = {
		{ "cat", "z" },
		{ "stat", "z" },
		{ "list", NULL },
		{ "stats", NULL },
	};
	const size_t size = 8192;
	struct upager_daemon_stats st;
	char in[64], *zeros;
	struct h_daemon d;
	struct upager *u;
	struct h_run r;

	h_daemon_start(&d);
	zeros = calloc(1, size);
	memset(in, 'A', sizeof(in));
	ctl(&r, &d, NULL, 0, "create", "z", "--size", "8K", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);

	/* stdin closed: write refuses (bounded: h_run fails on a hang) */
	ctl_closed(&r, &d, 0, in, sizeof(in), "write", "z", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "upagerctl: write: z: stdin is closed"),
		      "stderr: %s", r.err);
	ck_assert_uint_eq(r.out_len, 0);
	h_run_free(&r);
	/* stdout closed: everything that prints refuses, before any work */
	for (size_t i = 0; i < sizeof(need_out) / sizeof(need_out[0]); i++) {
		ctl_closed(&r, &d, 1, NULL, 0, need_out[i][0], need_out[i][1],
			   NULL);
		ck_assert_exit(&r, 1);
		ck_assert_msg(strstr(r.err, "stdout is closed"),
			      "%s: stderr: %s", need_out[i][0], r.err);
		ck_assert_uint_eq(r.out_len, 0);
		h_run_free(&r);
	}
	ctl_closed(&r, &d, 1, in, sizeof(in), "write", "z", "--verbose", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_ptr_nonnull(strstr(r.err, "stdout is closed"));
	h_run_free(&r);
	ctl_closed(&r, NULL, 1, NULL, 0, "--help", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_ptr_nonnull(strstr(r.err, "stdout is closed"));
	h_run_free(&r);
	/* stderr closed: an error still exits 1, and says nothing anywhere */
	ctl_closed(&r, &d, 2, NULL, 0, "stat", "nope", NULL);
	ck_assert_exit(&r, 1);
	ck_assert_uint_eq(r.out_len, 0);
	ck_assert_uint_eq(r.err_len, 0);
	h_run_free(&r);
	/* what needs no closed stream works */
	ctl_closed(&r, &d, 1, NULL, 0, "create", "y", "--size", "4K", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl_closed(&r, &d, 0, NULL, 0, "cat", "z", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, size);
	h_run_free(&r);
	ctl_closed(&r, &d, 2, in, sizeof(in), "write", "z", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl_closed(&r, &d, 0, NULL, 0, "delete", "y", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);

	/* no byte went where it should not: the segment holds only what the
	 * one working write put there, the daemon saw no garbage */
	memset(zeros, 'A', sizeof(in));
	ctl(&r, &d, NULL, 0, "cat", "z", NULL);
	ck_assert_exit(&r, 0);
	ck_assert_uint_eq(r.out_len, size);
	ck_assert_int_eq(h_first_diff(r.out, zeros, size), -1);
	h_run_free(&r);
	u = h_connect(&d);
	st = h_stats(u);
	ck_assert_uint_eq(st.protocol_errors, 0);
	ck_assert_uint_eq(st.segments, 1);
	upager_disconnect(u);
	free(zeros);
	h_daemon_stop(&d);
}
END_TEST

/* upager-bench, too: its report must not go into one of its descriptors. */
START_TEST(test_bench_stdout_closed)
{
	const char *root = getenv("UPAGER_BUILD_ROOT");
	const char *argv[] = { "/bin/sh", "-c",	     "exec \"$@\" 1>&-", "sh",
			       NULL,	  "missing", "--help",		 NULL };
	char bench[512];
	struct h_run r;

	ck_assert_msg(root && *root, "$UPAGER_BUILD_ROOT is not set");
	snprintf(bench, sizeof(bench), "%s/bench/upager-bench", root);
	if (access(bench, X_OK) < 0) {
		fprintf(stderr, "SKIP part: %s not built\n", bench);
		return;
	}
	argv[4] = bench;
	h_run(argv, NULL, 0, &r);
	ck_assert_exit(&r, 1);
	ck_assert_msg(strstr(r.err, "stdout is closed"), "stderr: %s", r.err);
	h_run_free(&r);
	/* with stdout open, the same runs */
	h_run(argv + 4, NULL, 0, &r);
	ck_assert_exit(&r, 0);
	ck_assert_uint_gt(r.out_len, 0);
	h_run_free(&r);
}
END_TEST

/*
 * Strictly well-formed UTF-8 (no overlong forms, surrogates or values past
 * U+10FFFF) with no control character but @allowed (C0, DEL, C1).  Returns
 * the offset of the first offence, or -1.
 */
static long bad_text(const char *buf, size_t len, const char *allowed)
{
	const unsigned char *p = (const unsigned char *)buf;
	size_t i = 0, n, k;
	uint32_t cp, min;

	while (i < len) {
		if (p[i] < 0x80) {
			n = 1;
			cp = p[i];
			min = 0;
		} else if (p[i] >= 0xc2 && p[i] <= 0xdf) {
			n = 2;
			cp = p[i] & 0x1f;
			min = 0x80;
		} else if (p[i] >= 0xe0 && p[i] <= 0xef) {
			n = 3;
			cp = p[i] & 0x0f;
			min = 0x800;
		} else if (p[i] >= 0xf0 && p[i] <= 0xf4) {
			n = 4;
			cp = p[i] & 0x07;
			min = 0x10000;
		} else {
			return (long)i;
		}
		if (i + n > len)
			return (long)i;
		for (k = 1; k < n; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return (long)i;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return (long)i;
		if ((cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) &&
		    !(cp < 0x80 && strchr(allowed, (int)cp)))
			return (long)i;
		i += n;
	}
	return -1;
}

/* Characters (code points) in [s, s + n): the width of a table line. */
static size_t utf8_chars(const char *s, size_t n)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] & 0xc0) != 0x80)
			c++;
	return c;
}

/* Runs python3's json.load on @json and then @check (Python). */
static void python_json_check(const char *json, size_t len, const char *check)
{
	static const char *const pythons[] = { "/usr/bin/python3",
					       "/usr/local/bin/python3" };
	char prog[1024];
	const char *argv[] = { NULL, "-c", prog, NULL };
	struct h_run r;

	for (size_t i = 0; i < sizeof(pythons) / sizeof(pythons[0]); i++)
		if (!argv[0] && access(pythons[i], X_OK) == 0)
			argv[0] = pythons[i];
	if (!argv[0]) {
		fprintf(stderr, "no python3: its JSON check skipped\n");
		return;
	}
	snprintf(prog, sizeof(prog),
		 "import json, sys\n"
		 "d = json.loads(sys.stdin.buffer.read().decode('utf-8'))\n"
		 "%s\n",
		 check);
	h_run(argv, json, len, &r);
	ck_assert_msg(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
		      "python3 rejects the JSON: %s\n%.*s", r.err, (int)len,
		      json);
	h_run_free(&r);
}

/*
 * A source path with an escape sequence, a C1 control, a newline and a byte
 * that is not UTF-8: JSON output stays valid UTF-8 (the bad byte becomes
 * U+FFFD, controls \u00NN), text output shows them as \xNN, so nothing raw
 * reaches a terminal and the table keeps its rows and columns.
 */
START_TEST(test_output_escaping)
{
	/* ESC [ 3 1 m, U+009B (CSI), LF, 0xff, 'é' (well-formed), '\' */
	static const char fname[] = "img\033[31m\302\233\n\377\303\251\\x";
	struct h_daemon d;
	struct h_run r;
	char path[512], *data, *line, *save;
	size_t width = 0, lines = 0;
	long bad;

	h_daemon_start(&d);
	data = h_make_file(path, sizeof(path), d.dir, fname, 8192, 7);
	ctl(&r, &d, NULL, 0, "create", "esc", "--size", "8K", "--source", path,
	    "--mode", "0644", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "create", "a-much-longer-name-than-esc", "--size",
	    "4K", NULL);
	ck_assert_exit(&r, 0);
	h_run_free(&r);

	ctl(&r, &d, NULL, 0, "stat", "esc", "--json", NULL);
	ck_assert_exit(&r, 0);
	bad = bad_text(r.out, r.out_len, "\n");
	ck_assert_msg(bad < 0, "stat --json: bad byte %#x at %ld",
		      (unsigned char)r.out[bad < 0 ? 0 : bad], bad);
	ck_assert_msg(strstr(r.out, "img\\u001b[31m\\u009b\\n\\ufffd\303\251"
				    "\\\\x\""),
		      "stat --json: %s", r.out);
	python_json_check(r.out, r.out_len,
			  "assert d['source_path'].endswith("
			  "'/img\\x1b[31m\\x9b\\n\\ufffd\\u00e9\\\\x'), d\n"
			  "assert d['mode'] == '0644', d\n"
			  "assert d['name'] == 'esc', d");
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "list", "--json", NULL);
	ck_assert_exit(&r, 0);
	bad = bad_text(r.out, r.out_len, "\n");
	ck_assert_msg(bad < 0, "list --json: bad byte at %ld", bad);
	python_json_check(r.out, r.out_len,
			  "assert len(d) == 2, d\n"
			  "assert d[0]['name'] == 'a-much-longer-name-than-esc', d\n"
			  "assert d[0]['mode'] == '0600', d\n"
			  "assert '\\ufffd' in d[1]['source_path'], d");
	h_run_free(&r);

	/* text: every control and bad byte as \xNN, the backslash doubled */
	ctl(&r, &d, NULL, 0, "stat", "esc", NULL);
	ck_assert_exit(&r, 0);
	bad = bad_text(r.out, r.out_len, "\n");
	ck_assert_msg(bad < 0, "stat: bad byte at %ld: %s", bad, r.out);
	ck_assert_msg(strstr(r.out, "img\\x1b[31m\\xc2\\x9b\\x0a\\xff\303\251"
				    "\\\\x\n"),
		      "stat: %s", r.out);
	ck_assert_ptr_nonnull(strstr(r.out, "mode:                0644\n"));
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "list", NULL);
	ck_assert_exit(&r, 0);
	bad = bad_text(r.out, r.out_len, "\n");
	ck_assert_msg(bad < 0, "list: bad byte at %ld: %s", bad, r.out);
	ck_assert_ptr_nonnull(strstr(r.out, "\\x1b[31m"));
	/* a header and one row a segment, all of one width in characters */
	for (line = strtok_r(r.out, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save), lines++) {
		size_t w = utf8_chars(line, strlen(line));

		if (!width)
			width = w;
		ck_assert_msg(w == width,
			      "list: line %zu is %zu wide, not "
			      "%zu: '%s'",
			      lines, w, width, line);
	}
	ck_assert_uint_eq(lines, 3);
	h_run_free(&r);

	/* a message quoting the path escapes it too */
	ctl(&r, &d, NULL, 0, "create", "x", "--size", "4K", "--source", d.dir,
	    NULL);
	ck_assert_exit(&r, 1);
	ck_assert_msg(bad_text(r.err, r.err_len, "\n") < 0, "stderr: %s", r.err);
	h_run_free(&r);
	{
		char missing[600];

		snprintf(missing, sizeof(missing), "%s.gone", path);
		ctl(&r, &d, NULL, 0, "create", "x", "--size", "4K", "--source",
		    missing, NULL);
		ck_assert_exit(&r, 1);
		ck_assert_msg(bad_text(r.err, r.err_len, "\n") < 0 &&
				      strstr(r.err, "img\\x1b[31m"),
			      "stderr: %s", r.err);
		h_run_free(&r);
	}
	free(data);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Small segments (under the 64-page read-ahead window and around it), file
 * and zero, read to their very last byte by cat and written to it by write.
 * Read-ahead running a page past the end of a small segment would spin: the
 * harness kills the command after H_TIMEOUT_MS and fails.
 */
/*
 * list --pid: the segments a process attached or the preload shim named
 * after it (pidPID.N), nothing else; stats counts the segments created
 * since start, deleted or not.
 */
START_TEST(test_list_pid_and_created)
{
	struct upager_attachment *at;
	struct h_daemon d;
	struct upager *u;
	struct h_run r;
	char mine[32], pid[16];

	h_daemon_start(&d);
	u = h_connect(&d);
	snprintf(mine, sizeof(mine), "pid%d.1", (int)getpid());
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	h_create(u, mine, H_PAGE, -1, 0);
	h_create(u, "pid1.1", H_PAGE, -1, 0);
	h_create(u, "attached", H_PAGE, -1, 0);
	h_create(u, "gone", H_PAGE, -1, 0);
	ck_assert_int_eq(upager_delete(u, "gone", 0), 0);
	h_attach(u, "attached", 0, &at);
	ctl(&r, &d, NULL, 0, "list", "--pid", pid, "--json", NULL);
	ck_assert_int_eq(WEXITSTATUS(r.status), 0);
	ck_assert_ptr_nonnull(strstr(r.out, "\"attached\""));
	ck_assert_ptr_nonnull(strstr(r.out, mine));
	ck_assert_ptr_null(strstr(r.out, "pid1.1"));
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "list", "--pid", "0", NULL);
	ck_assert_int_eq(WEXITSTATUS(r.status), 2);
	ck_assert_ptr_nonnull(strstr(r.err, "invalid --pid"));
	h_run_free(&r);
	ctl(&r, &d, NULL, 0, "stats", "--json", NULL);
	ck_assert_ptr_nonnull(strstr(r.out, "\"segments_created\": 4"));
	h_run_free(&r);
	ck_assert_int_eq(upager_detach(at), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

START_TEST(test_small_segments_to_end)
{
	static const unsigned int pages[] = { 1, 2, 3, 63, 64, 65 };
	struct h_daemon d;
	struct upager *u;
	struct h_run r;

	h_daemon_start(&d);
	u = h_connect(&d);
	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
		const size_t size = pages[i] * H_PAGE;
		char *in = malloc(size), *zero = calloc(1, size), *file;
		char name[4][32], tail[32];

		/* cat-then-write and write-first, of a file and of zeros */
		for (int k = 0; k < 4; k++)
			snprintf(name[k], sizeof(name[k]), "%s%u-%s",
				 k & 1 ? "z" : "f", pages[i], k & 2 ? "w" : "c");
		file = h_file_segment(&d, u, name[0], size, 300 + i);
		free(h_file_segment(&d, u, name[2], size, 300 + i));
		h_create(u, name[1], size, -1, 0);
		h_create(u, name[3], size, -1, 0);
		h_fill(in, size, 400 + i);

		for (int k = 0; k < 4; k++) {
			const char *expect = k & 1 ? zero : file;

			if (!(k & 2)) {
				/* the last page first, then all of it */
				snprintf(tail, sizeof(tail), "%zu", size - 100);
				ctl(&r, &d, NULL, 0, "cat", name[k], "--offset",
				    tail, NULL);
				ck_assert_exit(&r, 0);
				ck_assert_uint_eq(r.out_len, 100);
				ck_assert_int_eq(h_first_diff(r.out,
							      expect + size -
								      100,
							      100),
						 -1);
				h_run_free(&r);
				ctl(&r, &d, NULL, 0, "cat", name[k], NULL);
				ck_assert_exit(&r, 0);
				ck_assert_msg(r.out_len == size,
					      "cat %s: %zu bytes", name[k],
					      r.out_len);
				ck_assert_int_eq(h_first_diff(r.out, expect,
							      size),
						 -1);
				h_run_free(&r);
			}
			/* exactly the segment's size: fits, to the end */
			ctl(&r, &d, in, size, "write", name[k], "--verbose",
			    NULL);
			ck_assert_exit(&r, 0);
			ck_assert_uint_eq(r.out_len,
					  snprintf(tail, sizeof(tail),
						   "%zu bytes written\n", size));
			ck_assert_str_eq(r.out, tail);
			h_run_free(&r);
			ctl(&r, &d, NULL, 0, "cat", name[k], NULL);
			ck_assert_exit(&r, 0);
			ck_assert_uint_eq(r.out_len, size);
			ck_assert_msg(h_first_diff(r.out, in, size) == -1,
				      "%s: byte %ld differs", name[k],
				      h_first_diff(r.out, in, size));
			h_run_free(&r);
		}
		free(in);
		free(zero);
		free(file);
	}
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* A process with stdin, stdout, stderr as given; it dies with us. */
static pid_t spawn_fds(const char *const *argv, int in, int out, int err)
{
	pid_t pid = h_fork();

	if (pid == 0) {
		signal(SIGPIPE, SIG_DFL);
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
			_exit(126);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

/*
 * Reads @fd into @r->out (@max bytes at most; SIZE_MAX: to EOF), and
 * @efd to EOF into @r->err alongside.  Bounded by H_TIMEOUT_MS.
 */
static void read_pipes(int fd, int efd, size_t max, struct h_run *r)
{
	uint64_t deadline = h_now_ms() + H_TIMEOUT_MS;
	size_t cap_out = r->out_len + 1, cap_err = r->err_len + 1;

	while ((fd >= 0 && r->out_len < max) || (max == SIZE_MAX && efd >= 0)) {
		struct pollfd p[2] = {
			{ .fd = r->out_len < max ? fd : -1, .events = POLLIN },
			{ .fd = efd, .events = POLLIN },
		};
		int *fds[2] = { &fd, &efd };

		ck_assert_msg(h_now_ms() < deadline,
			      "no EOF within %d ms; "
			      "stderr: %s",
			      H_TIMEOUT_MS, r->err);
		if (poll(p, 2, 10) <= 0)
			continue;
		for (int i = 0; i < 2; i++) {
			char **buf = i ? &r->err : &r->out;
			size_t *len = i ? &r->err_len : &r->out_len;
			size_t *cap = i ? &cap_err : &cap_out;
			size_t want = i ? 65536 :
					  (max - *len < 65536 ? max - *len :
								65536);
			ssize_t n;

			if (!p[i].revents)
				continue;
			if (*len + want + 1 > *cap) {
				*cap = (*len + want + 1) * 2;
				*buf = realloc(*buf, *cap);
				ck_assert_ptr_nonnull(*buf);
			}
			n = read(*fds[i], *buf + *len, want);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				*fds[i] = -1;
				continue;
			}
			*len += (size_t)n;
			(*buf)[*len] = '\0';
		}
	}
}

/*
 * `upagerctl cat` of a file segment whose daemon dies mid-way: the pages
 * nobody filled cannot be read (SIGBUS, never zeros).  cat reports the
 * offset and exits 1; what it wrote before is the file's bytes.
 */
START_TEST(test_cat_daemon_dies)
{
	const size_t size = 32 * H_MIB;
	const char *argv[8];
	struct h_daemon d;
	struct upager *u;
	struct h_run r = { 0 };
	int pout[2], perr[2], null, status;
	unsigned long long off = 0;
	char *data;
	const char *at;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "big", size, 77);
	upager_disconnect(u);
	ck_assert_int_eq(pipe2(pout, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(perr, O_CLOEXEC), 0);
	null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(null, 0);
	argv[0] = h_upagerctl();
	argv[1] = "--socket";
	argv[2] = d.sock;
	argv[3] = "cat";
	argv[4] = "big";
	argv[5] = NULL;
	pid = spawn_fds(argv, null, pout[1], perr[1]);
	close(null);
	close(pout[1]);
	close(perr[1]);
	r.out = calloc(1, 1);
	r.err = calloc(1, 1);

	/* cat is copying (and blocked on the full pipe): kill the daemon */
	read_pipes(pout[0], perr[0], 64 * 1024, &r);
	h_daemon_kill(&d);
	read_pipes(pout[0], perr[0], SIZE_MAX, &r);
	status = h_wait_child(pid);
	close(pout[0]);
	close(perr[0]);

	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1,
		      "cat: status %#x (exit 1 expected); stderr: %s", status,
		      r.err);
	at = strstr(r.err, "the page at offset ");
	ck_assert_msg(at && strstr(r.err, "SIGBUS") &&
			      sscanf(at, "the page at offset %llu", &off) == 1,
		      "stderr: %s", r.err);
	ck_assert_msg(r.out_len < size && r.out_len <= off && off < size &&
			      off % H_PAGE == 0,
		      "%zu bytes out, bad page at %llu", r.out_len, off);
	ck_assert_int_eq(h_first_diff(r.out, data, r.out_len), -1);
	h_run_free(&r);
	free(data);
	h_dir_remove(d.dir);
}
END_TEST

/* The daemon's log lines start with an ISO 8601 UTC time, to the ms. */
START_TEST(test_log_timestamp)
{
	struct h_daemon d;
	char line[1024] = "";
	struct tm tm = { 0 };
	regex_t re;
	time_t t, now;
	FILE *f;

	h_daemon_start(&d);
	f = fopen(d.log, "re");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
	fclose(f);
	ck_assert_int_eq(regcomp(&re,
				 "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:"
				 "[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z (error|warning|"
				 "notice|info|debug): [a-z]+: ",
				 REG_EXTENDED | REG_NOSUB),
			 0);
	ck_assert_msg(regexec(&re, line, 0, NULL, 0) == 0, "log line: %s", line);
	regfree(&re);
	/* UTC, and now */
	ck_assert_int_eq(sscanf(line, "%d-%d-%dT%d:%d:%d", &tm.tm_year,
				&tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
				&tm.tm_min, &tm.tm_sec),
			 6);
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	t = timegm(&tm);
	now = time(NULL);
	ck_assert_msg(t <= now && now - t < 60, "log time %lld, now %lld",
		      (long long)t, (long long)now);
	h_daemon_stop(&d);
}
END_TEST

static Suite *ctl_suite(void)
{
	Suite *s = h_suite("ctl");
	TCase *tc;

	tc = h_tcase(s, "usage", H_NEED_DAEMON);
	tcase_add_test(tc, test_help);
	tcase_add_test(tc, test_no_daemon);
	tcase_add_test(tc, test_bad_size);
	tcase_add_test(tc, test_bad_name);
	tcase_add_test(tc, test_unknown_segment);
	tcase_add_test(tc, test_socket_errors);
	tcase_add_test(tc, test_source_fifo);
	tcase_add_test(tc, test_create_rounding_note);
	tcase_add_test(tc, test_log_timestamp);

	tc = h_tcase(s, "stdio", H_NEED_BASE);
	tcase_add_test(tc, test_stdio_closed);
	tcase_add_test(tc, test_bench_stdout_closed);

	tc = h_tcase(s, "output", H_NEED_DAEMON);
	tcase_add_test(tc, test_output_escaping);

	tc = h_tcase(s, "data", H_NEED_BASE);
	tcase_add_test(tc, test_file_segment_end_to_end);
	tcase_add_test(tc, test_write_cat_round_trip);
	tcase_add_test(tc, test_small_segments_to_end);
	tcase_add_test(tc, test_list_pid_and_created);
	tcase_add_test(tc, test_cat_daemon_dies);
	return s;
}

int main(void)
{
	h_main(ctl_suite());
}
