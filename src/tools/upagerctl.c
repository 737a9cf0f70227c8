/* SPDX-License-Identifier: MIT */
/*
 * upagerctl: the command-line tool for upagerd.
 *
 *	upagerctl [--socket PATH] COMMAND [ARGS]
 *
 * Every command is one entry in commands[]: its name, its handler, its
 * usage line and help text, and the options it takes besides the two every
 * command takes (--socket and --help).  One parser serves them all: it
 * collects the options into struct args and the handler reads what it needs
 * from there.  Options may come anywhere on the command's line, before or
 * after the segment name ("--" ends them, for names that start with '-').
 *
 * cat and write go through a real attachment, so their bytes take the fault
 * path like any client's.  They copy through a bounce buffer with memcpy()
 * rather than handing the mapping to read(2) or write(2): a fault taken
 * inside the kernel's copy_to_user()/copy_from_user() on a userfaultfd range
 * registered user-mode-only fails with EFAULT instead of reaching the daemon.
 *
 * A page of the mapping that cannot be filled (its source failed, or the
 * daemon died before filling it) raises SIGBUS in the copy, as a file
 * mapping with an I/O error would.  cat and write catch it around the copy
 * (sigsetjmp/siglongjmp) and fail with the offset of that page.
 *
 * stdio: a descriptor 0, 1 or 2 that is closed when we start is held open
 * on /dev/null, opened the wrong way round so that reading a closed stdin
 * or writing a closed stdout still fails (EBADF), and so that no later
 * open() or socket() -- the library's connection -- can take its number and
 * receive our output.  A command that needs a closed stream refuses to run.
 * With stderr closed the commands run; their messages are lost, the exit
 * status is not.
 *
 * Text from the daemon or the command line (names, paths) is escaped before
 * it is shown: in text output, control characters (C0, DEL, C1), bytes that
 * are not UTF-8 and the backslash are written as \xNN (backslash as \\), so
 * a path cannot move the cursor, recolour a terminal or break a table row.
 * JSON output is always valid UTF-8: control characters become \u00NN and
 * each byte that is not part of well-formed UTF-8 becomes \ufffd (U+FFFD,
 * the replacement character).  Such bytes cannot be carried by a JSON string,
 * so they are replaced rather than guessed at.
 *
 * Exit status: 0 on success, 1 when an operation failed, 2 for a usage
 * error (unknown command or option, missing or extra argument, bad value).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <upager/upager.h>

#include "fd.h"
#include "imagefmt.h"
#include "json.h"
#include "proto.h"
#include "size.h"

#ifndef UPAGER_VERSION
#define UPAGER_VERSION "unknown"
#endif

#define PROG "upagerctl"
#define EXIT_USAGE 2
#define PARSE_OK -1		      /* parsed; go on and run */
#define BOUNCE_SIZE (1u << 20)	      /* cat and write copy this at once */
#define MAX_OPTIONS 16		      /* per command, with the common ones */
#define KEY_WIDTH 20		      /* "key:" column of stat and stats */
#define SHOW_CHARS 40		      /* of an argument quoted in a message */
#define SHOW_MAX (4 * SHOW_CHARS + 8) /* escaped, with "…" and the NUL */
#define PATH_CHARS 1024		      /* of a path quoted in a message */
/* A name or path from the daemon, escaped: at most 4 bytes a byte. */
#define TEXT_MAX (4 * UPAGER_PATH_MAX + 8)
#define ELLIPSIS "\u2026"

#define STDIN_CLOSED (1u << STDIN_FILENO)
#define STDOUT_CLOSED (1u << STDOUT_FILENO)
#define STDERR_CLOSED (1u << STDERR_FILENO)

/* Which of fds 0, 1, 2 were closed when we started (STDIN_CLOSED...). */
static unsigned int stdio_closed;

enum {
	OPT_HELP = 'h',
	OPT_SOCKET = 0x100,
	OPT_VERSION,
	OPT_SIZE,
	OPT_SOURCE,
	OPT_MODE,
	OPT_FORCE,
	OPT_UNUSED,
	OPT_JSON,
	OPT_OFFSET,
	OPT_LENGTH,
	OPT_VERBOSE,
	OPT_OWNER,
	OPT_PID,
	OPT_SINCE,
	OPT_BASE,
};

struct command;

/* The parsed command line: what the handlers read. */
struct args {
	const struct command *cmd;
	const char *socket; /* NULL: the library's default */
	const char *name;   /* the segment, for commands that take one */
	const char *name2;  /* the second (snapshot, clone) */
	const char *file;   /* save: the image */
	const char *source;
	const char *base;  /* create: --base, the full image under --source */
	const char *since; /* save: --since, the older snapshot */
	uint64_t size;
	uint64_t offset;
	uint64_t length;
	uint32_t mode;
	uint32_t owner; /* --owner: the uid the segment must have */
	bool has_owner;
	uint32_t pid; /* list --pid: that process's segments only */
	bool has_pid;
	bool has_size;
	bool has_length;
	bool force;
	bool unused;
	bool json;
	bool verbose;
};

struct command {
	const char *name;
	int (*handler)(struct upager *u, const struct args *a);
	const char *usage;	      /* what follows the command's name */
	const char *help;	      /* what it does, its own options */
	const struct option *options; /* besides --socket and --help */
	unsigned int needs;	      /* NEEDS_* */
};

#define NEEDS_NAME 0x1u	  /* a segment NAME */
#define NEEDS_SIZE 0x2u	  /* --size, unless --source (an image's own) */
#define NEEDS_STDIN 0x4u  /* reads stdin */
#define NEEDS_STDOUT 0x8u /* writes stdout */
#define NEEDS_FILE 0x10u  /* a FILE after NAME */
#define NEEDS_NAME2 0x20u /* a second segment name after NAME */

/*
 * text_escape - @s made safe to show on a terminal or in a table
 * @buf, @len: the result, NUL-terminated; 4 * strlen(@s) + 4 is enough
 * @s: the text, any bytes
 * @max: show at most this many characters of @s, then "…"
 *
 * Control characters, bytes that are not UTF-8 and the backslash become
 * \xNN (the backslash \\).  Returns the width of the result in columns,
 * one a character (wide characters are not measured).  Stops early, with
 * what fitted, when @len is too small.
 */
static int text_escape(char *buf, size_t len, const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t at = 0, chars = 0, n, i, need;
	bool escape;
	int width = 0;
	uint32_t cp;

	buf[0] = '\0';
	for (; *p; p += n, chars++) {
		if (chars == max) {
			if (at + sizeof(ELLIPSIS) <= len) {
				memcpy(buf + at, ELLIPSIS, sizeof(ELLIPSIS));
				width++;
			}
			break;
		}
		n = utf8_decode(p, &cp);
		escape = !n || utf8_is_control(cp);
		if (!n)
			n = 1;
		if (escape)
			need = 4 * n;
		else if (cp == '\\')
			need = 2;
		else
			need = n;
		if (at + need + 1 > len)
			break;
		if (escape) {
			for (i = 0; i < n; i++)
				snprintf(buf + at + 4 * i, 5, "\\x%02x", p[i]);
			width += (int)need;
		} else if (cp == '\\') {
			memcpy(buf + at, "\\\\", 2);
			width += 2;
		} else {
			memcpy(buf + at, p, n);
			width++;
		}
		at += need;
		buf[at] = '\0';
	}
	return width;
}

/*
 * @s escaped and cut to SHOW_CHARS characters, to quote in a message.  Two
 * buffers in turn, so one message can quote two things.
 */
static const char *show(const char *s)
{
	static char bufs[2][SHOW_MAX];
	static unsigned int next;
	char *buf = bufs[next++ % 2];

	text_escape(buf, SHOW_MAX, s, SHOW_CHARS);
	return buf;
}

static int usage_error(const struct command *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int usage_error(const struct command *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": ");
	if (cmd)
		fprintf(stderr, "%s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '" PROG "%s%s --help'.\n", cmd ? " " : "",
		cmd ? cmd->name : "");
	return EXIT_USAGE;
}

/* One line: "upagerctl: COMMAND: [NAME: ]MESSAGE". */
static void vreport(const struct args *a, const char *fmt, va_list ap)
{
	fprintf(stderr, PROG ": %s: ", a->cmd->name);
	if (a->name)
		fprintf(stderr, "%s: ", a->name);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

/* A failure, reported.  Returns 1. */
static int fail(const struct args *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int fail(const struct args *a, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(a, fmt, ap);
	va_end(ap);
	return EXIT_FAILURE;
}

/* Something the user should know, though it worked. */
static void note(const struct args *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void note(const struct args *a, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(a, fmt, ap);
	va_end(ap);
}

/* The documented failures of the client API, in the tool's words. */
static const char *error_text(int err)
{
	switch (err) {
	case ENOENT:
		return "no such segment";
	case EEXIST:
		return "segment exists";
	case EACCES:
	case EPERM:
		return "permission denied";
	case EBUSY:
		return "segment is attached (or a snapshot with clones); use --force";
	case EINVAL:
		return "invalid argument";
	case EDQUOT:
		return "over your user's limits on upagerd (see '" PROG
		       " stats')";
	case EUSERS:
		return "your user has as many connections open to upagerd as "
		       "it allows one user";
	case EOPNOTSUPP:
		return "upagerd does not offer this (an older version?)";
	case EPIPE:
	case ECONNRESET:
		return "upagerd hung up";
	case EPROTO:
		return "upagerd speaks another protocol version";
	default:
		return strerror(err);
	}
}

/* A failed library call: @err is the positive errno. */
static int fail_errno(const struct args *a, int err)
{
	return fail(a, "%s", error_text(err));
}

static void print_key(const char *key)
{
	printf("%s:%*s", key, (int)(KEY_WIDTH - strlen(key)), "");
}

static void print_u64(const char *key, uint64_t v)
{
	print_key(key);
	printf("%" PRIu64 "\n", v);
}

/* @s escaped: it may be a name or path from the daemon. */
static void print_str(const char *key, const char *s)
{
	char text[TEXT_MAX];

	text_escape(text, sizeof(text), s, SIZE_MAX);
	print_key(key);
	printf("%s\n", text);
}

/* "64.0 MiB (67108864 bytes)" */
static void print_bytes(const char *key, uint64_t v)
{
	char human[SIZE_FORMAT_MAX];

	size_format(v, human, sizeof(human));
	print_key(key);
	if (v < 1024)
		printf("%s\n", human);
	else
		printf("%s (%" PRIu64 " bytes)\n", human, v);
}

/* The struct came over a socket: make its strings and counts safe to use. */
static void info_sanitize(struct upager_segment_info *info)
{
	info->name[sizeof(info->name) - 1] = '\0';
	info->source_path[sizeof(info->source_path) - 1] = '\0';
	info->parent[sizeof(info->parent) - 1] = '\0';
	if (info->nr_pids > UPAGER_STAT_PIDS)
		info->nr_pids = UPAGER_STAT_PIDS;
}

static const char *kind_name(uint32_t kind)
{
	switch (kind) {
	case UPAGER_KIND_SEGMENT:
		return "segment";
	case UPAGER_KIND_SNAPSHOT:
		return "snapshot";
	case UPAGER_KIND_CLONE:
		return "clone";
	}
	return "unknown";
}

static const char *source_kind_name(uint32_t kind)
{
	const char *s = upager_source_name(kind);

	return s ? s : "unknown";
}

/* "zero", or the file's path (or "file" when the daemon gave none). */
static const char *source_text(const struct upager_segment_info *info)
{
	if (info->source_path[0])
		return info->source_path;
	return source_kind_name(info->source);
}

static uint64_t info_faults(const struct upager_segment_info *info)
{
	return info->faults_missing + info->faults_wp + info->faults_minor;
}

/* "0644": the permission bits as stat shows them, in text and JSON. */
static void mode_text(uint32_t mode, char *buf, size_t len)
{
	snprintf(buf, len, "%04" PRIo32, mode);
}

static void info_json(struct json *j, const struct upager_segment_info *info,
		      bool multiline)
{
	char mode[16];
	uint32_t i;

	json_open(j, NULL, '{', multiline);
	json_string(j, "name", info->name);
	json_string(j, "source_path", info->source_path);
	json_u64(j, "id", info->id);
	json_u64(j, "size", info->size);
	json_u64(j, "page_size", info->page_size);
	json_u64(j, "source", info->source);
	json_string(j, "source_name", source_kind_name(info->source));
	json_u64(j, "uid", info->uid);
	mode_text(info->mode, mode, sizeof(mode));
	json_string(j, "mode", mode);
	json_u64(j, "faults_missing", info->faults_missing);
	json_u64(j, "faults_wp", info->faults_wp);
	json_u64(j, "faults_minor", info->faults_minor);
	json_u64(j, "faults_waited", info->faults_waited);
	json_u64(j, "pages_filled", info->pages_filled);
	json_u64(j, "bytes_read", info->bytes_read);
	json_u64(j, "resident_bytes", info->resident_bytes);
	json_u64(j, "readahead_max_pages", info->readahead_max_pages);
	json_u64(j, "readahead_pages", info->readahead_pages);
	json_u64(j, "readahead_touched", info->readahead_touched);
	json_u64(j, "readahead_untouched", info->readahead_untouched);
	json_string(j, "kind", kind_name(info->kind));
	json_string(j, "parent", info->parent);
	json_u64(j, "nr_snapshots", info->nr_snapshots);
	json_u64(j, "nr_clones", info->nr_clones);
	json_u64(j, "cut_ns", info->cut_ns);
	json_u64(j, "pages_shared", info->pages_shared);
	json_u64(j, "pages_private", info->pages_private);
	json_u64(j, "pages_cbw", info->pages_cbw);
	json_u64(j, "allocated_bytes", info->allocated_bytes);
	json_u64(j, "nr_attachments", info->nr_attachments);
	json_u64(j, "nr_pids", info->nr_pids);
	json_open(j, "pids", '[', false);
	for (i = 0; i < info->nr_pids; i++)
		json_u64(j, NULL, info->pids[i]);
	json_close(j, ']');
	json_close(j, '}');
}

static void print_owner(uint32_t uid)
{
	struct passwd *pw = getpwuid(uid);

	print_key("owner");
	if (pw)
		printf("%" PRIu32 " (%s)\n", uid, pw->pw_name);
	else
		printf("%" PRIu32 "\n", uid);
}

static void print_pids(const struct upager_segment_info *info)
{
	uint32_t i;

	print_key("pids");
	if (!info->nr_pids)
		fputs("-", stdout);
	/* pid 0: a forked child the daemon has not identified yet */
	for (i = 0; i < info->nr_pids; i++) {
		if (i)
			putchar(' ');
		if (info->pids[i])
			printf("%" PRIu32, info->pids[i]);
		else
			putchar('?');
	}
	putchar('\n');
}

/* touched/(touched+untouched) as "87.5%", "-" when none was checked: a
 * page the process unmapped first counts in neither. */
static void print_hit_rate(const char *key, uint64_t touched, uint64_t untouched)
{
	/* as doubles: the sum of two uint64_t may wrap */
	double checked = (double)touched + (double)untouched;

	print_key(key);
	if (checked > 0)
		printf("%.1f%%\n", 100.0 * (double)touched / checked);
	else
		puts("-");
}

static void print_readahead(uint64_t pages, uint64_t touched, uint64_t untouched)
{
	print_u64("readahead pages", pages);
	print_u64("readahead touched", touched);
	print_u64("readahead untouched", untouched);
	print_hit_rate("readahead hit rate", touched, untouched);
}

static void info_text(const struct upager_segment_info *info)
{
	char mode[16];

	mode_text(info->mode, mode, sizeof(mode));
	print_str("name", info->name);
	print_u64("id", info->id);
	print_bytes("size", info->size);
	print_bytes("page size", info->page_size);
	print_str("source", source_kind_name(info->source));
	print_str("source path", info->source_path[0] ? info->source_path : "-");
	print_owner(info->uid);
	print_str("mode", mode);
	print_u64("attachments", info->nr_attachments);
	print_pids(info);
	print_bytes("resident", info->resident_bytes);
	print_u64("pages filled", info->pages_filled);
	print_bytes("bytes read", info->bytes_read);
	print_u64("readahead max pages", info->readahead_max_pages);
	print_readahead(info->readahead_pages, info->readahead_touched,
			info->readahead_untouched);
	print_u64("faults missing", info->faults_missing);
	print_u64("faults wp", info->faults_wp);
	print_u64("faults minor", info->faults_minor);
	print_u64("faults waited", info->faults_waited);
	print_str("kind", kind_name(info->kind));
	if (info->kind != UPAGER_KIND_SEGMENT)
		print_str(info->kind == UPAGER_KIND_SNAPSHOT ? "snapshot of" :
							       "clone of",
			  info->parent[0] ? info->parent : "(deleted)");
	if (info->kind == UPAGER_KIND_SNAPSHOT) {
		print_u64("pages shared", info->pages_shared);
		print_u64("pages own", info->pages_private);
		print_u64("copied before write", info->pages_cbw);
		print_u64("clones", info->nr_clones);
	} else {
		print_u64("snapshots", info->nr_snapshots);
		print_u64("pages protected", info->pages_shared);
		print_u64("copied before write", info->pages_cbw);
	}
	print_bytes("memory used", info->allocated_bytes);
}

/* "a directory": what a file that is not what we wanted is instead. */
static const char *file_type_text(mode_t mode)
{
	if (S_ISREG(mode))
		return "a regular file";
	if (S_ISDIR(mode))
		return "a directory";
	if (S_ISCHR(mode))
		return "a character device";
	if (S_ISBLK(mode))
		return "a block device";
	if (S_ISFIFO(mode))
		return "a FIFO";
	if (S_ISSOCK(mode))
		return "a socket";
	if (S_ISLNK(mode))
		return "a symbolic link";
	return "of an unknown type";
}

/*
 * Open --source for the daemon to read.  Returns the fd, or -1 (reported).
 * O_NONBLOCK so that opening a FIFO with no writer returns at once (to be
 * refused); it is cleared again, as the daemon's io_uring reads of a file
 * marked O_NONBLOCK could fail with EAGAIN instead of waiting.
 */
static int open_source(const struct args *a, const char *file, const char *what)
{
	char path[4 * PATH_CHARS + 8];
	struct stat st;
	int fd, flags;

	text_escape(path, sizeof(path), file, PATH_CHARS);
	/* The type first, without opening: opening a FIFO blocks, and
	 * some devices act on open.  Again after the open, for the race. */
	if (stat(file, &st) == 0 && !S_ISREG(st.st_mode) &&
	    !S_ISBLK(st.st_mode)) {
		fail(a, "%s %s: not a regular file but %s", what, path,
		     file_type_text(st.st_mode));
		return -1;
	}
	fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		fail(a, "cannot open %s %s: %s", what, path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		fail(a, "%s %s: %s", what, path, strerror(errno));
		goto err;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		fail(a, "%s %s: not a regular file but %s", what, path,
		     file_type_text(st.st_mode));
		goto err;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
		fail(a, "%s %s: %s", what, path, strerror(errno));
		goto err;
	}
	return fd;
err:
	close(fd);
	return -1;
}

/*
 * A segment is whole pages: say so when --size was not.  The daemon's own
 * figure when it lets us stat the segment, else our page size's.
 */
static void note_rounding(struct upager *u, const struct args *a)
{
	struct upager_segment_info info;
	uint64_t size, page;
	long ps;

	memset(&info, 0, sizeof(info));
	if (upager_stat(u, a->name, &info) == 0 && info.size && info.page_size) {
		size = info.size;
		page = info.page_size;
	} else {
		ps = sysconf(_SC_PAGESIZE);
		page = ps > 0 ? (uint64_t)ps : 4096;
		size = (a->size + page - 1) / page * page;
	}
	if (size != a->size)
		note(a,
		     "size rounded up to %" PRIu64 " bytes (whole pages "
		     "of %" PRIu64 " bytes)",
		     size, page);
}

/*
 * What users hold of the daemon, into a calloc()ed array: root's covers
 * every user, anyone else's only themselves.  A user that appears between
 * the count and the fetch makes the count grow: fetch again.
 */
static int usage_fetch(struct upager *u, struct upager_usage **out, size_t *nr)
{
	struct upager_usage *v = NULL;
	size_t cap = 0;
	int n;

	for (;;) {
		n = upager_usage(u, v, cap);
		if (n < 0 || (size_t)n <= cap)
			break;
		free(v);
		cap = (size_t)n + 8;
		v = calloc(cap, sizeof(*v));
		if (!v)
			return -ENOMEM;
	}
	if (n < 0) {
		free(v);
		return n;
	}
	*out = v;
	*nr = (size_t)n;
	return 0;
}

/* The caller's own record.  0 or -errno. */
static int usage_mine(struct upager *u, struct upager_usage *mine)
{
	struct upager_usage *v = NULL;
	size_t nr = 0, i;
	int ret = usage_fetch(u, &v, &nr);

	for (i = 0; !ret && i < nr; i++)
		if (v[i].uid == geteuid())
			break;
	if (!ret && i == nr)
		ret = -ENOENT;
	if (!ret)
		*mine = v[i];
	free(v);
	return ret;
}

/* "1.5 GiB" */
static const char *bytes_text(uint64_t v, char *buf, size_t len)
{
	size_format(v, buf, len);
	return buf;
}

/*
 * A request refused with EDQUOT: say which limit, from the caller's usage
 * (@attach: an attach, else a create of @size bytes).
 */
static int fail_quota(struct upager *u, const struct args *a, bool attach,
		      uint64_t size)
{
	char used[SIZE_FORMAT_MAX], max[SIZE_FORMAT_MAX], more[SIZE_FORMAT_MAX];
	struct upager_usage me;

	if (usage_mine(u, &me))
		return fail_errno(a, EDQUOT);
	if (attach)
		return fail(a,
			    "over the attachment limit of uid %" PRIu32
			    ": %" PRIu64 " of %" PRIu64 " attachments",
			    me.uid, me.attachments, me.max_attachments);
	if (me.segments >= me.max_segments)
		return fail(a,
			    "over the segment limit of uid %" PRIu32
			    ": %" PRIu64 " of %" PRIu64 " segments",
			    me.uid, me.segments, me.max_segments);
	return fail(a,
		    "over the size limit of uid %" PRIu32 ": %s of %s in "
		    "segments, %s more asked",
		    me.uid, bytes_text(me.bytes, used, sizeof(used)),
		    bytes_text(me.max_bytes, max, sizeof(max)),
		    bytes_text(size, more, sizeof(more)));
}

static const char *user_name(uint32_t uid)
{
	struct passwd *pw = getpwuid(uid);

	return pw ? pw->pw_name : NULL;
}

/* "0123456789abcdef": an image's id as upagerctl shows it. */
static const char *id_text(uint64_t id, char *buf, size_t len)
{
	snprintf(buf, len, "%016" PRIx64, id);
	return buf;
}

/*
 * What --source (@fd) and --base say of each other, checked before the
 * daemon is asked, so that a mistake gets its own words.  @img gets the
 * source's trailer; @is_image whether it has one.  Returns EXIT_SUCCESS
 * or the exit status (reported).
 */
static int check_images(const struct args *a, int fd, int base_fd,
			struct image_info *img, bool *is_image)
{
	char path[4 * PATH_CHARS + 8], bpath[4 * PATH_CHARS + 8];
	char id1[20], id2[20];
	struct image_info base;
	const char *why = "";
	int ret;

	text_escape(path, sizeof(path), a->source, PATH_CHARS);
	ret = image_probe(fd, img, &why);
	*is_image = ret == 0;
	if (ret == -EINVAL)
		return fail(a, "source %s: a damaged upager image: %s", path,
			    why);
	if (ret && ret != -ENODATA)
		return fail(a, "source %s: %s", path, strerror(-ret));
	if (!a->base) {
		if (*is_image && img->base_id)
			return fail(a,
				    "source %s is an incremental image (saved "
				    "with --since): give the full image it "
				    "was saved on top of with --base IMAGE",
				    path);
		return EXIT_SUCCESS;
	}
	if (!*is_image)
		return fail(a,
			    "source %s is not an upager image: --base goes "
			    "with an incremental image",
			    path);
	if (!img->base_id)
		return fail(a, "source %s is a full image: it takes no --base",
			    path);
	text_escape(bpath, sizeof(bpath), a->base, PATH_CHARS);
	ret = image_probe(base_fd, &base, &why);
	if (ret == -EINVAL)
		return fail(a, "base %s: a damaged upager image: %s", bpath,
			    why);
	if (ret == -ENODATA)
		return fail(a, "base %s is not an upager image", bpath);
	if (ret)
		return fail(a, "base %s: %s", bpath, strerror(-ret));
	if (base.base_id)
		return fail(a,
			    "base %s is an incremental image: the base must "
			    "be a full image",
			    bpath);
	if (img->base_id != base.image_id)
		return fail(a,
			    "image %s was not saved on top of %s (it needs "
			    "image %s; %s is image %s)",
			    path, bpath, id_text(img->base_id, id1, sizeof(id1)),
			    bpath, id_text(base.image_id, id2, sizeof(id2)));
	if (img->size != base.size || img->page_size != base.page_size)
		return fail(a, "image %s and base %s differ in size", path,
			    bpath);
	return EXIT_SUCCESS;
}

static int cmd_create(struct upager *u, const struct args *a)
{
	struct upager_create_opts opts = {
		.size = a->size,
		.source_fd = -1,
		.mode = a->mode,
	};
	char limit[SIZE_FORMAT_MAX], path[4 * PATH_CHARS + 8];
	struct image_info img;
	bool is_image = false;
	int base_fd = -1, status = EXIT_SUCCESS, ret;

	if (a->source) {
		opts.source_fd = open_source(a, a->source, "source");
		if (opts.source_fd < 0)
			return EXIT_FAILURE;
	}
	if (a->base) {
		base_fd = open_source(a, a->base, "base");
		if (base_fd < 0)
			status = EXIT_FAILURE;
	}
	if (status == EXIT_SUCCESS && a->source)
		status = check_images(a, opts.source_fd, base_fd, &img,
				      &is_image);
	if (status == EXIT_SUCCESS && !a->has_size && !is_image) {
		text_escape(path, sizeof(path), a->source, PATH_CHARS);
		status = usage_error(a->cmd,
				     "missing --size (source %s is not an "
				     "upager image, whose size it would be)",
				     path);
	}
	if (status == EXIT_SUCCESS && is_image && a->size > img.size)
		status = fail(a,
			      "--size is larger than the image's %s "
			      "(%" PRIu64 " bytes)",
			      bytes_text(img.size, limit, sizeof(limit)),
			      img.size);
	if (status != EXIT_SUCCESS)
		goto out;
	if (a->base)
		ret = upager_create_image(u, a->name, &opts, base_fd);
	else
		ret = upager_create(u, a->name, &opts);
	if (ret == -EDQUOT)
		status = fail_quota(u, a, false,
				    a->has_size ? a->size : img.size);
	else if (ret == -EXDEV)
		status = fail(a, "image %s was not saved on top of %s",
			      show(a->source), show(a->base));
	else if (ret < 0)
		status = fail_errno(a, -ret);
	else if (a->has_size)
		note_rounding(u, a);
out:
	if (opts.source_fd >= 0)
		close(opts.source_fd);
	if (base_fd >= 0)
		close(base_fd);
	return status;
}

/*
 * Opens FILE to save into, as the user: a new file (0666 less the umask),
 * or an existing regular one, not truncated here (the daemon truncates it
 * when the save starts, so a refused save leaves it as it was).  @created
 * says whether it is new (removed again if the save fails).  Returns the
 * fd or -1 (reported).
 */
static int open_image_out(const struct args *a, bool *created)
{
	char path[4 * PATH_CHARS + 8];
	struct stat st;
	int fd;

	text_escape(path, sizeof(path), a->file, PATH_CHARS);
	*created = true;
	fd = open(a->file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY,
		  0666);
	if (fd < 0 && errno == EEXIST) {
		*created = false;
		if (stat(a->file, &st) == 0 && !S_ISREG(st.st_mode)) {
			fail(a, "cannot save to %s: not a regular file but %s",
			     path, file_type_text(st.st_mode));
			return -1;
		}
		fd = open(a->file, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	}
	if (fd < 0) {
		fail(a, "cannot open %s for writing: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		fail(a, "cannot save to %s: not a regular file", path);
		close(fd);
		return -1;
	}
	return fd;
}

static void save_text(const struct args *a, const struct upager_save_result *r)
{
	char b[SIZE_FORMAT_MAX], id[20], path[4 * PATH_CHARS + 8];
	double ms = r->ns / 1e6;

	text_escape(path, sizeof(path), a->file, PATH_CHARS);
	print_str("image", path);
	print_u64("pages", r->pages);
	print_key("data pages");
	printf("%" PRIu64 " (%" PRIu64 " %s)\n", r->pages_data,
	       r->pages - r->pages_data,
	       a->since ? "holes or unchanged" : "holes");
	print_key("bytes written");
	printf("%s (%" PRIu64 ")\n", bytes_text(r->bytes_written, b, sizeof(b)),
	       r->bytes_written);
	print_key("time");
	printf("%.1f ms", ms);
	if (r->ns)
		printf(" (%.0f MiB/s written)",
		       r->bytes_written / (r->ns / 1e9) / (1024.0 * 1024.0));
	putchar('\n');
	print_str("image id", id_text(r->image_id, id, sizeof(id)));
	if (r->base_id)
		print_str("on top of image",
			  id_text(r->base_id, id, sizeof(id)));
}

static void save_json(const struct args *a, const struct upager_save_result *r)
{
	struct json j = JSON_INIT(stdout);
	char id[20];

	json_open(&j, NULL, '{', true);
	json_string(&j, "name", a->name);
	json_string(&j, "file", a->file);
	if (a->since)
		json_string(&j, "since", a->since);
	json_u64(&j, "pages", r->pages);
	json_u64(&j, "pages_data", r->pages_data);
	json_u64(&j, "bytes_written", r->bytes_written);
	json_u64(&j, "ns", r->ns);
	/* strings: a 64-bit id is no JSON number for every reader */
	json_string(&j, "image_id", id_text(r->image_id, id, sizeof(id)));
	if (r->base_id)
		json_string(&j, "base_id", id_text(r->base_id, id, sizeof(id)));
	else
		json_null(&j, "base_id");
	json_close(&j, '}');
}

static int cmd_save(struct upager *u, const struct args *a)
{
	struct upager_segment_info info;
	struct upager_save_result r;
	bool created;
	int fd, ret;

	/* Before FILE is touched: a missing segment leaves it alone. */
	ret = upager_stat(u, a->name, &info);
	if (ret < 0)
		return fail_errno(a, -ret);
	if (a->since) {
		ret = upager_stat(u, a->since, &info);
		if (ret < 0)
			return fail(a, "--since %s: %s", a->since,
				    error_text(-ret));
	}
	fd = open_image_out(a, &created);
	if (fd < 0)
		return EXIT_FAILURE;
	ret = upager_save(u, a->name, fd, a->since, &r);
	close(fd);
	if (ret < 0 && created)
		unlink(a->file);
	if (ret == -EINVAL && a->since)
		return fail(a,
			    "--since %s: not an older snapshot of the same "
			    "segment",
			    a->since);
	if (ret < 0)
		return fail_errno(a, -ret);
	if (a->json)
		save_json(a, &r);
	else
		save_text(a, &r);
	return EXIT_SUCCESS;
}

static int cmd_delete(struct upager *u, const struct args *a)
{
	int ret;

	ret = upager_delete(u, a->name,
			    (a->force ? UPAGER_DELETE_FORCE : 0) |
				    (a->unused ? UPAGER_DELETE_UNUSED : 0));
	return ret < 0 ? fail_errno(a, -ret) : EXIT_SUCCESS;
}

static double ms(uint64_t ns)
{
	return ns / 1e6;
}

static int cmd_snapshot(struct upager *u, const struct args *a)
{
	struct upager_snapshot_result r;
	struct json j = JSON_INIT(stdout);
	int ret;

	ret = upager_snapshot(u, a->name, a->name2, &r);
	if (ret == -EINVAL)
		return fail(a, "%s is a snapshot: clone it to snapshot that",
			    a->name);
	if (ret == -EOPNOTSUPP)
		return fail(a,
			    "an attachment of %s cannot be write-protected "
			    "(kernel without UFFD_FEATURE_WP_UNPOPULATED?)",
			    a->name);
	if (ret == -EDQUOT)
		return fail_quota(u, a, false, 0);
	if (ret < 0)
		return fail_errno(a, -ret);
	if (a->json) {
		json_open(&j, NULL, '{', true);
		json_string(&j, "snapshot", a->name2);
		json_string(&j, "segment", a->name);
		json_u64(&j, "cut_ns", r.cut_ns);
		json_u64(&j, "protect_ns", r.protect_ns);
		json_u64(&j, "max_hold_ns", r.max_hold_ns);
		json_u64(&j, "writers_held", r.writers_held);
		json_u64(&j, "pages_shared", r.pages_shared);
		json_u64(&j, "attachments", r.attachments);
		json_close(&j, '}');
		putchar('\n');
		return EXIT_SUCCESS;
	}
	printf("snapshot %s of %s: %" PRIu64 " pages shared, %" PRIu64
	       " attachments protected\n"
	       "cut took %.3f ms (protect %.3f ms); %" PRIu64
	       " writes held, the longest %.3f ms\n",
	       a->name2, a->name, r.pages_shared, r.attachments, ms(r.cut_ns),
	       ms(r.protect_ns), r.writers_held, ms(r.max_hold_ns));
	return EXIT_SUCCESS;
}

static int cmd_clone(struct upager *u, const struct args *a)
{
	int ret = upager_clone(u, a->name, a->name2, a->mode);

	if (ret == -EINVAL)
		return fail(a, "%s is not a snapshot", a->name);
	if (ret == -EDQUOT)
		return fail_quota(u, a, false, 0);
	return ret < 0 ? fail_errno(a, -ret) : EXIT_SUCCESS;
}

static int cmd_stat(struct upager *u, const struct args *a)
{
	struct upager_segment_info info;
	struct json j = JSON_INIT(stdout);
	int ret;

	memset(&info, 0, sizeof(info));
	ret = upager_stat(u, a->name, &info);
	if (ret < 0)
		return fail_errno(a, -ret);
	info_sanitize(&info);
	if (a->json)
		info_json(&j, &info, true);
	else
		info_text(&info);
	return EXIT_SUCCESS;
}

/*
 * Every segment, into a calloc()ed array.  Segments created between the
 * count and the fetch make the count grow: fetch again with more room.
 */
static int list_fetch(struct upager *u, struct upager_segment_info **out,
		      size_t *nr)
{
	struct upager_segment_info *infos = NULL;
	size_t cap = 0;
	int ret;

	for (;;) {
		ret = upager_list(u, infos, cap);
		if (ret < 0 || (size_t)ret <= cap)
			break;
		free(infos);
		cap = (size_t)ret + (size_t)ret / 4 + 4;
		infos = calloc(cap, sizeof(*infos));
		if (!infos) {
			ret = -ENOMEM;
			break;
		}
	}
	if (ret < 0) {
		free(infos);
		return ret;
	}
	*out = infos;
	*nr = (size_t)ret;
	return 0;
}

static int info_cmp_name(const void *x, const void *y)
{
	const struct upager_segment_info *a = x, *b = y;

	return strcmp(a->name, b->name);
}

static void list_json(const struct upager_segment_info *infos, size_t nr)
{
	struct json j = JSON_INIT(stdout);
	size_t i;

	json_open(&j, NULL, '[', true);
	for (i = 0; i < nr; i++)
		info_json(&j, &infos[i], false);
	json_close(&j, ']');
}

static int max_int(int a, int b)
{
	return a > b ? a : b;
}

/*
 * The table pads by columns, not bytes: names and paths are escaped first
 * and may hold multi-byte characters.
 */
static void list_text(const struct upager_segment_info *infos, size_t nr)
{
	char size[SIZE_FORMAT_MAX], resident[SIZE_FORMAT_MAX];
	char name[TEXT_MAX], source[TEXT_MAX];
	int wname = 4, wsource = 6, n, m;
	size_t i;

	for (i = 0; i < nr; i++) {
		n = text_escape(name, sizeof(name), infos[i].name, SIZE_MAX);
		m = text_escape(source, sizeof(source), source_text(&infos[i]),
				SIZE_MAX);
		wname = max_int(wname, n);
		wsource = max_int(wsource, m);
	}
	printf("%-*s %-8s %10s  %-*s %10s %7s %12s\n", wname, "NAME", "KIND",
	       "SIZE", wsource, "SOURCE", "RESIDENT", "ATTACH", "FAULTS");
	for (i = 0; i < nr; i++) {
		const struct upager_segment_info *info = &infos[i];

		n = text_escape(name, sizeof(name), info->name, SIZE_MAX);
		m = text_escape(source, sizeof(source), source_text(info),
				SIZE_MAX);
		size_format(info->size, size, sizeof(size));
		size_format(info->resident_bytes, resident, sizeof(resident));
		printf("%s%*s %-8s %10s  %s%*s %10s %7" PRIu32 " %12" PRIu64
		       "\n",
		       name, wname - n, "", kind_name(info->kind), size, source,
		       wsource - m, "", resident, info->nr_attachments,
		       info_faults(info));
	}
}

/*
 * Whether @info belongs to process @pid: attached by it, or named after
 * it by the preload shim ("pid<PID>.<n>", attached or not).
 */
static bool of_pid(const struct upager_segment_info *info, uint32_t pid)
{
	char prefix[32];

	for (uint32_t k = 0; k < info->nr_pids; k++)
		if (info->pids[k] == pid)
			return true;
	snprintf(prefix, sizeof(prefix), "pid%" PRIu32 ".", pid);
	return !strncmp(info->name, prefix, strlen(prefix));
}

static int cmd_list(struct upager *u, const struct args *a)
{
	struct upager_segment_info *infos;
	size_t nr, i;
	int ret;

	ret = list_fetch(u, &infos, &nr);
	if (ret < 0)
		return fail_errno(a, -ret);
	for (i = 0; i < nr; i++)
		info_sanitize(&infos[i]);
	if (a->has_pid) {
		size_t kept = 0;

		for (i = 0; i < nr; i++)
			if (of_pid(&infos[i], a->pid))
				infos[kept++] = infos[i];
		nr = kept;
	}
	if (nr)
		qsort(infos, nr, sizeof(*infos), info_cmp_name);
	if (a->json)
		list_json(infos, nr);
	else
		list_text(infos, nr);
	free(infos);
	return EXIT_SUCCESS;
}

static void print_uptime(uint64_t ns)
{
	uint64_t s = ns / 1000000000u;

	print_key("uptime");
	if (s >= 86400)
		printf("%" PRIu64 "d ", s / 86400);
	printf("%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 " (%" PRIu64 " ns)\n",
	       s / 3600 % 24, s / 60 % 60, s % 60, ns);
}

static void stats_text(const struct upager_daemon_stats *st)
{
	print_uptime(st->uptime_ns);
	print_u64("segments", st->segments);
	print_u64("attachments", st->attachments);
	print_u64("connections", st->connections);
	print_u64("threads", st->threads);
	print_u64("faults missing", st->faults_missing);
	print_u64("faults wp", st->faults_wp);
	print_u64("faults minor", st->faults_minor);
	print_u64("faults waited", st->faults_waited);
	print_u64("pages filled", st->pages_filled);
	print_bytes("bytes read", st->bytes_read);
	print_bytes("resident", st->resident_bytes);
	print_readahead(st->readahead_pages, st->readahead_touched,
			st->readahead_untouched);
	print_u64("events fork", st->events_fork);
	print_u64("events remap", st->events_remap);
	print_u64("events remove", st->events_remove);
	print_u64("events unmap", st->events_unmap);
	print_u64("clients exited", st->clients_exited);
	print_u64("protocol errors", st->protocol_errors);
	print_u64("uffd reads", st->uffd_reads);
	print_u64("uffd reads empty", st->uffd_reads_empty);
	print_u64("home moves", st->home_moves);
	print_u64("pollers added", st->pollers_added);
	print_u64("segments created", st->segments_created);
}

static void stats_json(struct json *j, const struct upager_daemon_stats *st)
{
	json_u64(j, "uptime_ns", st->uptime_ns);
	json_u64(j, "segments", st->segments);
	json_u64(j, "attachments", st->attachments);
	json_u64(j, "connections", st->connections);
	json_u64(j, "threads", st->threads);
	json_u64(j, "faults_missing", st->faults_missing);
	json_u64(j, "faults_wp", st->faults_wp);
	json_u64(j, "faults_minor", st->faults_minor);
	json_u64(j, "faults_waited", st->faults_waited);
	json_u64(j, "pages_filled", st->pages_filled);
	json_u64(j, "bytes_read", st->bytes_read);
	json_u64(j, "resident_bytes", st->resident_bytes);
	json_u64(j, "events_fork", st->events_fork);
	json_u64(j, "events_remap", st->events_remap);
	json_u64(j, "events_remove", st->events_remove);
	json_u64(j, "events_unmap", st->events_unmap);
	json_u64(j, "clients_exited", st->clients_exited);
	json_u64(j, "protocol_errors", st->protocol_errors);
	json_u64(j, "readahead_pages", st->readahead_pages);
	json_u64(j, "readahead_touched", st->readahead_touched);
	json_u64(j, "readahead_untouched", st->readahead_untouched);
	json_u64(j, "uffd_reads", st->uffd_reads);
	json_u64(j, "uffd_reads_empty", st->uffd_reads_empty);
	json_u64(j, "home_moves", st->home_moves);
	json_u64(j, "pollers_added", st->pollers_added);
	json_u64(j, "segments_created", st->segments_created);
}

/* "3 of 256", or "3" with no limit */
static void print_used(const char *key, uint64_t v, uint64_t max)
{
	print_key(key);
	if (max == UPAGER_UNLIMITED)
		printf("%" PRIu64 "\n", v);
	else
		printf("%" PRIu64 " of %" PRIu64 "\n", v, max);
}

static void print_used_bytes(const char *key, uint64_t v, uint64_t max)
{
	char h[SIZE_FORMAT_MAX], hm[SIZE_FORMAT_MAX];

	print_key(key);
	size_format(v, h, sizeof(h));
	if (max == UPAGER_UNLIMITED) {
		printf("%s (%" PRIu64 " bytes)\n", h, v);
		return;
	}
	size_format(max, hm, sizeof(hm));
	printf("%s of %s (%" PRIu64 " of %" PRIu64 " bytes)\n", h, hm, v, max);
}

static void usage_text(const struct upager_usage *v, size_t nr)
{
	char name[TEXT_MAX];

	if (nr) {
		print_key("idle timeout");
		if (v[0].idle_timeout_ms)
			printf("%" PRIu64 " s\n", v[0].idle_timeout_ms / 1000);
		else
			printf("never\n");
	}
	for (size_t i = 0; i < nr; i++) {
		const char *n = user_name(v[i].uid);

		print_key("user");
		printf("%" PRIu32, v[i].uid);
		if (n) {
			text_escape(name, sizeof(name), n, SHOW_CHARS);
			printf(" (%s)", name);
		}
		printf("%s\n", v[i].flags & UPAGER_USAGE_EXEMPT ?
				       ", exempt from the limits" :
				       "");
		print_used("  segments", v[i].segments, v[i].max_segments);
		print_used_bytes("  bytes", v[i].bytes, v[i].max_bytes);
		print_bytes("  resident", v[i].resident_bytes);
		print_used("  connections", v[i].connections,
			   v[i].max_connections);
		print_used("  attachments", v[i].attachments,
			   v[i].max_attachments);
	}
}

/* A limit: null when there is none. */
static void json_limit(struct json *j, const char *key, uint64_t v)
{
	if (v != UPAGER_UNLIMITED) {
		json_u64(j, key, v);
		return;
	}
	json_null(j, key);
}

static void usage_json(struct json *j, const struct upager_usage *v, size_t nr)
{
	json_u64(j, "idle_timeout_ms", nr ? v[0].idle_timeout_ms : 0);
	json_open(j, "users", '[', true);
	for (size_t i = 0; i < nr; i++) {
		const char *n = user_name(v[i].uid);

		json_open(j, NULL, '{', false);
		json_u64(j, "uid", v[i].uid);
		if (n)
			json_string(j, "user", n);
		json_bool(j, "exempt", v[i].flags & UPAGER_USAGE_EXEMPT);
		json_u64(j, "segments", v[i].segments);
		json_u64(j, "bytes", v[i].bytes);
		json_u64(j, "resident_bytes", v[i].resident_bytes);
		json_u64(j, "connections", v[i].connections);
		json_u64(j, "attachments", v[i].attachments);
		json_limit(j, "max_segments", v[i].max_segments);
		json_limit(j, "max_bytes", v[i].max_bytes);
		json_limit(j, "max_connections", v[i].max_connections);
		json_limit(j, "max_attachments", v[i].max_attachments);
		json_close(j, '}');
	}
	json_close(j, ']');
}

static int cmd_stats(struct upager *u, const struct args *a)
{
	struct upager_daemon_stats st;
	struct upager_usage *v = NULL;
	size_t nr = 0;
	int ret;

	memset(&st, 0, sizeof(st));
	ret = upager_stats(u, &st);
	if (ret < 0)
		return fail_errno(a, -ret);
	/* an older daemon has no limits to show */
	ret = usage_fetch(u, &v, &nr);
	if (ret < 0 && ret != -EOPNOTSUPP)
		return fail_errno(a, -ret);
	if (a->json) {
		struct json j = JSON_INIT(stdout);

		json_open(&j, NULL, '{', true);
		stats_json(&j, &st);
		if (ret == 0)
			usage_json(&j, v, nr);
		json_close(&j, '}');
	} else {
		stats_text(&st);
		usage_text(v, nr);
	}
	free(v);
	return EXIT_SUCCESS;
}

/* Write all of @buf to @fd.  Returns 0 or -errno. */
static int write_all(int fd, const char *buf, size_t len)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	ssize_t n;

	while (len) {
		n = write(fd, buf, len);
		if (n < 0 && errno == EAGAIN) {
			/* a non-blocking stdout: wait until it drains */
			if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
				return -errno;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read @len bytes from @fd, fewer only at its end.  Returns them or -errno. */
static ssize_t read_full(int fd, char *buf, size_t len)
{
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		n = read(fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* Report a failed detach, unless something failed before it. */
static int detach(const struct args *a, struct upager_attachment *at, int status)
{
	int ret = upager_detach(at);

	if (ret < 0 && status == EXIT_SUCCESS)
		return fail(a, "detach: %s", error_text(-ret));
	return status;
}

static int check_offset(const struct args *a, uint64_t size)
{
	char off[SIZE_FORMAT_MAX], sz[SIZE_FORMAT_MAX];

	if (a->offset <= size)
		return 0;
	size_format(a->offset, off, sizeof(off));
	size_format(size, sz, sizeof(sz));
	return fail(a,
		    "offset %" PRIu64 " (%s) is beyond the end of the "
		    "segment (size %" PRIu64 ", %s)",
		    a->offset, off, size, sz);
}

/*
 * The copy a SIGBUS interrupts (see copy_guarded()).  Only the main thread
 * copies; the library's threads never touch the mapping.
 */
static sigjmp_buf bus_env;
static volatile sig_atomic_t bus_armed;
static void *volatile bus_addr;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	/* a fault in our copy, not a kill(2) */
	if (bus_armed && si->si_code > 0) {
		bus_armed = 0;
		bus_addr = si->si_addr;
		siglongjmp(bus_env, 1);
	}
	/* not ours: die of it, as without the handler (it is blocked here,
	 * so it is delivered when we return) */
	signal(SIGBUS, SIG_DFL);
	raise(SIGBUS);
}

/* Returns 0, or -1 with errno set. */
static int bus_catch(void)
{
	struct sigaction sa = {
		.sa_sigaction = on_sigbus,
		.sa_flags = SA_SIGINFO,
	};

	sigemptyset(&sa.sa_mask);
	return sigaction(SIGBUS, &sa, NULL);
}

/*
 * memcpy(@dst, @src, @n) where one side lies in the mapping @map of @size
 * bytes.  Returns 0, or -EFAULT when a page of the mapping could not be
 * filled (SIGBUS), with the offset of that page in the mapping in *@bad
 * (UINT64_MAX if the address is not in it).  bus_catch() first.
 */
static int copy_guarded(void *dst, const void *src, size_t n, const char *map,
			uint64_t size, uint64_t *bad)
{
	uintptr_t at, base = (uintptr_t)map;
	long page;

	if (sigsetjmp(bus_env, 1)) {
		at = (uintptr_t)bus_addr;
		page = sysconf(_SC_PAGESIZE);
		if (page <= 0)
			page = 1;
		*bad = UINT64_MAX;
		if (at >= base && at - base < size)
			*bad = (at - base) / (uint64_t)page * (uint64_t)page;
		return -EFAULT;
	}
	bus_armed = 1;
	/* faults here, in user mode, are the daemon's to serve */
	memcpy(dst, src, n);
	bus_armed = 0;
	return 0;
}

/* A page of the mapping raised SIGBUS: say which and why.  Returns 1. */
static int fail_sigbus(const struct args *a, const char *verb, uint64_t bad,
		       uint64_t done)
{
	char at[48] = "a page";

	if (bad != UINT64_MAX)
		snprintf(at, sizeof(at), "the page at offset %" PRIu64, bad);
	return fail(a,
		    "cannot %s %s (SIGBUS: its source failed, or upagerd "
		    "is gone); %" PRIu64 " bytes copied before it",
		    verb, at, done);
}

/*
 * Copy @len bytes of the mapping @map (@size bytes), from @off on, to
 * stdout.
 */
static int cat_range(const struct args *a, const char *map, uint64_t size,
		     uint64_t off, uint64_t len)
{
	uint64_t done = 0, bad = UINT64_MAX;
	char *bounce;
	size_t chunk;
	int ret = 0;

	bounce = malloc(BOUNCE_SIZE);
	if (!bounce)
		return fail(a, "%s", strerror(ENOMEM));
	if (bus_catch() < 0) {
		free(bounce);
		return fail(a, "sigaction: %s", strerror(errno));
	}
	while (len && !ret) {
		chunk = len < BOUNCE_SIZE ? (size_t)len : BOUNCE_SIZE;
		ret = copy_guarded(bounce, map + off, chunk, map, size, &bad);
		if (ret)
			break;
		ret = write_all(STDOUT_FILENO, bounce, chunk);
		off += chunk;
		len -= chunk;
		done += chunk;
	}
	free(bounce);
	if (ret == -EFAULT)
		return fail_sigbus(a, "read", bad, done);
	/* The reader went away (`upagerctl cat x | head`): not our failure. */
	if (ret == -EPIPE)
		return EXIT_SUCCESS;
	if (ret < 0)
		return fail(a, "write to stdout: %s", strerror(-ret));
	return EXIT_SUCCESS;
}

/* "uid 1000 (alice)" */
static const char *uid_text(uint32_t uid, char *buf, size_t len)
{
	const char *n = user_name(uid);
	char name[SHOW_MAX];

	if (!n) {
		snprintf(buf, len, "uid %" PRIu32, uid);
		return buf;
	}
	text_escape(name, sizeof(name), n, SHOW_CHARS);
	snprintf(buf, len, "uid %" PRIu32 " (%s)", uid, name);
	return buf;
}

/*
 * Attaches NAME for cat or write: with --owner, only a segment of that
 * owner.  Reports a failure and returns EXIT_FAILURE, else EXIT_SUCCESS.
 */
static int attach_for(struct upager *u, const struct args *a,
		      unsigned int flags, struct upager_attachment **at)
{
	char want[SHOW_MAX + 32], has[SHOW_MAX + 32];
	struct upager_segment_info info;
	int ret;

	if (a->has_owner)
		ret = upager_attach_owner(u, a->name, flags, a->owner, at);
	else
		ret = upager_attach(u, a->name, flags, at);
	if (ret == 0)
		return EXIT_SUCCESS;
	if (ret == -EDQUOT)
		return fail_quota(u, a, true, 0);
	if (ret != -EPERM || !a->has_owner)
		return fail_errno(a, -ret);
	uid_text(a->owner, want, sizeof(want));
	/* who has it instead, if we may know (it may have changed since) */
	if (upager_stat(u, a->name, &info) == 0 && info.uid != a->owner)
		return fail(a, "owned by %s, not by %s: not attached",
			    uid_text(info.uid, has, sizeof(has)), want);
	return fail(a, "not owned by %s: not attached", want);
}

static int cmd_cat(struct upager *u, const struct args *a)
{
	struct upager_attachment *at;
	uint64_t size, len;
	const char *base;
	int status;

	if (attach_for(u, a, UPAGER_ATTACH_RDONLY, &at))
		return EXIT_FAILURE;
	base = upager_attachment_addr(at);
	size = upager_attachment_size(at);

	status = check_offset(a, size);
	if (status)
		goto out;
	len = a->has_length ? a->length : size - a->offset;
	if (len > size - a->offset) {
		status = fail(a,
			      "offset %" PRIu64 " + length %" PRIu64
			      " is beyond the end of the segment (size %" PRIu64
			      ")",
			      a->offset, len, size);
		goto out;
	}
	signal(SIGPIPE, SIG_IGN);
	status = cat_range(a, base, size, a->offset, len);
out:
	return detach(a, at, status);
}

/*
 * When stdin is a regular file we can tell before writing anything that it
 * holds too much.  A pipe we only find out about once it is full.
 */
static int check_input_fits(const struct args *a, uint64_t room)
{
	struct stat st;
	off_t pos;

	if (fstat(STDIN_FILENO, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	pos = lseek(STDIN_FILENO, 0, SEEK_CUR);
	if (pos < 0 || st.st_size <= pos || (uint64_t)(st.st_size - pos) <= room)
		return 0;
	return fail(a,
		    "input holds %" PRIu64 " bytes, but only %" PRIu64
		    " fit at offset %" PRIu64 "; nothing written",
		    (uint64_t)(st.st_size - pos), room, a->offset);
}

/* Copy stdin into the mapping @map (@size bytes) from @off on. */
static int write_range(const struct args *a, char *map, uint64_t size,
		       uint64_t off)
{
	uint64_t room = size - off, done = 0, bad = UINT64_MAX;
	char *dst = map + off;
	size_t fit;
	char *bounce;
	ssize_t n;
	int status = EXIT_SUCCESS;

	bounce = malloc(BOUNCE_SIZE);
	if (!bounce)
		return fail(a, "%s", strerror(ENOMEM));
	if (bus_catch() < 0) {
		free(bounce);
		return fail(a, "sigaction: %s", strerror(errno));
	}
	for (;;) {
		n = read_full(STDIN_FILENO, bounce, BOUNCE_SIZE);
		if (n < 0) {
			status = fail(a, "read from stdin: %s",
				      strerror((int)-n));
			break;
		}
		if (n == 0)
			break;
		fit = room - done < (uint64_t)n ? (size_t)(room - done) :
						  (size_t)n;
		if (copy_guarded(dst + done, bounce, fit, map, size, &bad)) {
			status = fail_sigbus(a, "write", bad, done);
			break;
		}
		done += fit;
		if (fit < (size_t)n) {
			status = fail(a,
				      "input holds more than the %" PRIu64
				      " bytes that fit at offset %" PRIu64
				      "; only those were written",
				      room, a->offset);
			break;
		}
	}
	free(bounce);
	if (status == EXIT_SUCCESS && a->verbose)
		printf("%" PRIu64 " bytes written\n", done);
	return status;
}

static int cmd_write(struct upager *u, const struct args *a)
{
	struct upager_attachment *at;
	uint64_t size;
	char *base;
	int status;

	if (attach_for(u, a, 0, &at))
		return EXIT_FAILURE;
	base = upager_attachment_addr(at);
	size = upager_attachment_size(at);

	status = check_offset(a, size);
	if (!status)
		status = check_input_fits(a, size - a->offset);
	if (!status)
		status = write_range(a, base, size, a->offset);
	return detach(a, at, status);
}

static const struct option create_options[] = {
	{ "size", required_argument, NULL, OPT_SIZE },
	{ "source", required_argument, NULL, OPT_SOURCE },
	{ "base", required_argument, NULL, OPT_BASE },
	{ "mode", required_argument, NULL, OPT_MODE },
	{ NULL, 0, NULL, 0 },
};

static const struct option save_options[] = {
	{ "since", required_argument, NULL, OPT_SINCE },
	{ "json", no_argument, NULL, OPT_JSON },
	{ NULL, 0, NULL, 0 },
};

static const struct option delete_options[] = {
	{ "force", no_argument, NULL, OPT_FORCE },
	{ "unused", no_argument, NULL, OPT_UNUSED },
	{ NULL, 0, NULL, 0 },
};

static const struct option json_options[] = {
	{ "json", no_argument, NULL, OPT_JSON },
	{ NULL, 0, NULL, 0 },
};

static const struct option cat_options[] = {
	{ "offset", required_argument, NULL, OPT_OFFSET },
	{ "length", required_argument, NULL, OPT_LENGTH },
	{ "owner", required_argument, NULL, OPT_OWNER },
	{ NULL, 0, NULL, 0 },
};

static const struct option list_options[] = {
	{ "pid", required_argument, NULL, OPT_PID },
	{ "json", no_argument, NULL, OPT_JSON },
	{ NULL, 0, NULL, 0 },
};

static const struct option clone_options[] = {
	{ "mode", required_argument, NULL, OPT_MODE },
	{ NULL, 0, NULL, 0 },
};

static const struct option write_options[] = {
	{ "offset", required_argument, NULL, OPT_OFFSET },
	{ "verbose", no_argument, NULL, OPT_VERBOSE },
	{ "owner", required_argument, NULL, OPT_OWNER },
	{ NULL, 0, NULL, 0 },
};

static const struct command commands[] = {
	{
		.name = "create",
		.handler = cmd_create,
		.usage = "NAME --size SIZE [--source FILE [--base IMAGE]] "
			 "[--mode OCTAL]",
		.help = "Create segment NAME.\n\n"
			"  --size SIZE     bytes, or with a suffix K, M, G, T "
			"(powers of 1024);\n"
			"                  rounded up to whole pages (said on "
			"stderr), at most 1T;\n"
			"                  optional with an image as --source "
			"(its size, the most\n"
			"                  it may be)\n"
			"  --source FILE   fill never-written pages from FILE "
			"(default: zeros):\n"
			"                  a raw file, or an image written by "
			"'" PROG " save'\n"
			"  --base IMAGE    --source is an incremental image "
			"(saved with --since):\n"
			"                  IMAGE is the full image it was "
			"saved on top of; pages\n"
			"                  come from --source where it has "
			"them, else from IMAGE\n"
			"  --mode OCTAL    permission bits (default 0600)\n",
		.options = create_options,
		.needs = NEEDS_NAME | NEEDS_SIZE,
	},
	{
		.name = "save",
		.handler = cmd_save,
		.usage = "NAME FILE [--since OLDER] [--json]",
		.help = "Save segment or snapshot NAME to FILE, an image: its "
			"bytes, zero pages\nleft as holes, then a trailer. "
			"FILE is created (mode 0666 less your\numask) or "
			"overwritten; a save that fails leaves no new file "
			"behind.\nRestore it with '" PROG " create NEW "
			"--source FILE'.\n\n"
			"  --since OLDER   an incremental image: only the "
			"pages that differ from\n"
			"                  OLDER, an older snapshot of the "
			"same segment; restore\n"
			"                  it with --source FILE --base "
			"(the full image of OLDER)\n"
			"  --json          a JSON object\n",
		.options = save_options,
		.needs = NEEDS_NAME | NEEDS_FILE | NEEDS_STDOUT,
	},
	{
		.name = "delete",
		.handler = cmd_delete,
		.usage = "NAME [--force | --unused]",
		.help = "Delete segment NAME.\n\n"
			"  --force         even while attached: the name goes "
			"now, the memory\n"
			"                  when the last attachment does\n"
			"  --unused        now if nothing is attached, else when "
			"the last\n"
			"                  attachment goes (the name stays until "
			"then)\n",
		.options = delete_options,
		.needs = NEEDS_NAME,
	},
	{
		.name = "snapshot",
		.handler = cmd_snapshot,
		.usage = "NAME SNAP [--json]",
		.help = "Cut snapshot SNAP of segment NAME, now, while the "
			"processes attached to\nit go on: a read-only segment "
			"that keeps NAME's bytes as they are at the\ncut.  "
			"Says how long the cut took and the longest time a "
			"writer waited.\n\n"
			"  --json          a JSON object\n",
		.options = json_options,
		.needs = NEEDS_NAME | NEEDS_NAME2 | NEEDS_STDOUT,
	},
	{
		.name = "clone",
		.handler = cmd_clone,
		.usage = "SNAP NAME [--mode OCTAL]",
		.help = "Make NAME, a writable segment whose pages come from "
			"snapshot SNAP until\nthey are written.\n\n"
			"  --mode OCTAL    permission bits (default 0600)\n",
		.options = clone_options,
		.needs = NEEDS_NAME | NEEDS_NAME2,
	},
	{
		.name = "list",
		.handler = cmd_list,
		.usage = "[--pid PID] [--json]",
		.help = "List the segments you may see.\n\n"
			"  --pid PID       only those process PID has attached "
			"or the preload shim\n"
			"                  named after it (pidPID.N)\n"
			"  --json          a JSON array of objects\n",
		.options = list_options,
		.needs = NEEDS_STDOUT,
	},
	{
		.name = "stat",
		.handler = cmd_stat,
		.usage = "NAME [--json]",
		.help = "Describe segment NAME.\n\n"
			"  --json          a JSON object\n",
		.options = json_options,
		.needs = NEEDS_NAME | NEEDS_STDOUT,
	},
	{
		.name = "cat",
		.handler = cmd_cat,
		.usage = "NAME [--offset N] [--length N] [--owner USER]",
		.help = "Write the contents of segment NAME to stdout, "
			"through an attachment.\n\n"
			"  --offset N      start at byte N (default 0)\n"
			"  --length N      write N bytes (default: up to the "
			"end)\n"
			"  --owner USER    only if USER (a name or uid) owns "
			"NAME: anybody may\n"
			"                  create a name first\n",
		.options = cat_options,
		.needs = NEEDS_NAME | NEEDS_STDOUT,
	},
	{
		.name = "write",
		.handler = cmd_write,
		.usage = "NAME [--offset N] [--verbose] [--owner USER]",
		.help = "Copy stdin into segment NAME, through an "
			"attachment.\n\n"
			"  --offset N      start at byte N (default 0)\n"
			"  --verbose       say how many bytes were written\n"
			"  --owner USER    only if USER (a name or uid) owns "
			"NAME: anybody may\n"
			"                  create a name first\n",
		.options = write_options,
		.needs = NEEDS_NAME | NEEDS_STDIN,
	},
	{
		.name = "stats",
		.handler = cmd_stats,
		.usage = "[--json]",
		.help = "Show the daemon's counters, and what users hold of "
			"it against their\nlimits: root sees every user, "
			"anyone else themselves.\n\n"
			"  --json          a JSON object\n",
		.options = json_options,
		.needs = NEEDS_STDOUT,
	},
};

#define NR_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const struct command *command_find(const char *name)
{
	size_t i;

	for (i = 0; i < NR_COMMANDS; i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

/* What proto_name_valid() accepts, in words. */
static void name_rules_help(void)
{
	printf("NAME: 1 to %d characters of A-Z a-z 0-9 . _ - "
	       "(not \".\" or \"..\").\n",
	       UPAGER_NAME_MAX);
}

static void command_help(const struct command *cmd)
{
	printf("usage: " PROG " [--socket PATH] %s %s\n\n%s"
	       "  --socket PATH   the daemon's socket (default: "
	       "$UPAGER_SOCKET, else the\n"
	       "                  per-user default)\n"
	       "  -h, --help      show this help\n",
	       cmd->name, cmd->usage, cmd->help);
	if (cmd->needs & NEEDS_NAME) {
		putchar('\n');
		name_rules_help();
	}
}

static void global_help(void)
{
	size_t i;

	printf("usage: " PROG " [--socket PATH] COMMAND [ARGS]\n\n"
	       "Manage the segments of upagerd.\n\ncommands:\n");
	for (i = 0; i < NR_COMMANDS; i++)
		printf("  %-7s %s\n", commands[i].name, commands[i].usage);
	printf("\noptions:\n"
	       "  --socket PATH   the daemon's socket (default: "
	       "$UPAGER_SOCKET, else the\n"
	       "                  per-user default)\n"
	       "  -h, --help      show this help\n"
	       "  --version       show the version\n\n"
	       "SIZE, N: a byte count, optionally with K, M, G or T "
	       "(powers of 1024).\n");
	name_rules_help();
	printf("'" PROG " COMMAND --help' describes a command.\n");
}

/*
 * getopt_long() returned ':' or '?' (opterr is 0): say why.  @word is the
 * argument it was looking at; neither parser lets getopt permute, so that
 * is argv[optind] as it was before the call.
 */
static int option_error(const struct command *cmd, const char *word, int c)
{
	char opt[2] = { (char)optopt, '\0' };

	if (strncmp(word, "--", 2)) {
		if (c == ':')
			return usage_error(cmd,
					   "option '-%s' needs an "
					   "argument",
					   show(opt));
		return usage_error(cmd, "unknown option '-%s'", show(opt));
	}
	if (c == ':')
		return usage_error(cmd, "option '%s' needs an argument",
				   show(word));
	/* a known long option given "=value" sets optopt to its value */
	if (optopt)
		return usage_error(cmd, "option '%.*s' takes no argument",
				   (int)strcspn(word, "="), word);
	return usage_error(cmd, "unknown option '%s'", show(word));
}

/* A byte count of at most @max ("1P" is too large, not invalid). */
static int parse_size_arg(const struct command *cmd, const char *opt,
			  const char *arg, uint64_t max, uint64_t *out)
{
	char limit[SIZE_FORMAT_MAX];
	uint64_t v;
	int ret = size_parse(arg, &v);

	if (ret == -ERANGE || (!ret && v > max)) {
		size_format(max, limit, sizeof(limit));
		return usage_error(cmd, "%s '%s' is too large (at most %s)",
				   opt, show(arg), limit);
	}
	if (ret < 0)
		return usage_error(cmd,
				   "invalid %s '%s' (a byte count such "
				   "as 4096, 64K or 1GiB)",
				   opt, show(arg));
	*out = v;
	return PARSE_OK;
}

static int parse_mode_arg(const struct command *cmd, const char *arg,
			  uint32_t *out)
{
	const char *p;
	uint32_t mode = 0;

	for (p = arg; *p >= '0' && *p <= '7' && mode <= 0777; p++)
		mode = mode * 8 + (uint32_t)(*p - '0');
	if (p == arg || *p || mode > 0777)
		return usage_error(cmd,
				   "invalid --mode '%s' (octal permission "
				   "bits, 0 to 0777)",
				   show(arg));
	*out = mode;
	return PARSE_OK;
}

/* A user name or a uid. */
static int parse_owner_arg(const struct command *cmd, const char *arg,
			   uint32_t *out)
{
	struct passwd *pw;
	unsigned long long v;
	char *end;

	if (*arg >= '0' && *arg <= '9') {
		errno = 0;
		v = strtoull(arg, &end, 10);
		/* (uid_t)-1 is no user's */
		if (errno || *end || v >= UINT32_MAX)
			return usage_error(cmd,
					   "invalid --owner '%s' (a user "
					   "name or a uid)",
					   show(arg));
		*out = (uint32_t)v;
		return PARSE_OK;
	}
	pw = *arg ? getpwnam(arg) : NULL;
	if (!pw)
		return usage_error(cmd, "--owner: no user '%s'", show(arg));
	*out = pw->pw_uid;
	return PARSE_OK;
}

static int apply_option(struct args *a, int opt, const char *arg)
{
	const struct command *cmd = a->cmd;
	int ret;

	switch (opt) {
	case OPT_SOCKET:
		if (!*arg)
			return usage_error(cmd, "--socket needs a path");
		a->socket = arg;
		return PARSE_OK;
	case OPT_SIZE:
		a->has_size = true;
		ret = parse_size_arg(cmd, "--size", arg, UPAGER_MAX_SIZE,
				     &a->size);
		if (ret == PARSE_OK && !a->size)
			return usage_error(cmd, "--size must be at least 1 "
						"byte");
		return ret;
	case OPT_SOURCE:
		if (!*arg)
			return usage_error(cmd, "--source needs a file");
		a->source = arg;
		return PARSE_OK;
	case OPT_BASE:
		if (!*arg)
			return usage_error(cmd, "--base needs a file");
		a->base = arg;
		return PARSE_OK;
	case OPT_SINCE:
		if (!proto_name_valid(arg, UPAGER_NAME_MAX + 2))
			return usage_error(cmd,
					   "invalid --since '%s' (a snapshot's "
					   "name)",
					   show(arg));
		a->since = arg;
		return PARSE_OK;
	case OPT_MODE:
		return parse_mode_arg(cmd, arg, &a->mode);
	case OPT_FORCE:
		if (a->unused)
			return usage_error(cmd, "--force and --unused: one or "
						"the other");
		a->force = true;
		return PARSE_OK;
	case OPT_UNUSED:
		if (a->force)
			return usage_error(cmd, "--force and --unused: one or "
						"the other");
		a->unused = true;
		return PARSE_OK;
	case OPT_JSON:
		a->json = true;
		return PARSE_OK;
	case OPT_OFFSET:
		return parse_size_arg(cmd, "--offset", arg, UINT64_MAX,
				      &a->offset);
	case OPT_LENGTH:
		a->has_length = true;
		return parse_size_arg(cmd, "--length", arg, UINT64_MAX,
				      &a->length);
	case OPT_VERBOSE:
		a->verbose = true;
		return PARSE_OK;
	case OPT_OWNER:
		a->has_owner = true;
		return parse_owner_arg(cmd, arg, &a->owner);
	case OPT_PID: {
		unsigned long long v;
		char *end;

		errno = 0;
		v = strtoull(arg, &end, 10);
		if (errno || *end || !*arg || *arg == '-' || v == 0 ||
		    v > INT32_MAX)
			return usage_error(cmd, "invalid --pid '%s'", show(arg));
		a->pid = (uint32_t)v;
		a->has_pid = true;
		return PARSE_OK;
	}
	}
	return usage_error(cmd, "internal error: option %d", opt);
}

/* NAME, or an argument too many. */
/* NAME, or an argument too many.  Shown cut short and escaped. */
static int apply_positional(struct args *a, const char *arg)
{
	size_t len;

	bool second = (a->cmd->needs & NEEDS_NAME2) && a->name;

	if ((a->cmd->needs & NEEDS_FILE) && a->name && !a->file) {
		if (!*arg)
			return usage_error(a->cmd, "FILE must not be empty");
		a->file = arg;
		return PARSE_OK;
	}
	if (!(a->cmd->needs & NEEDS_NAME) || (a->name && !second) ||
	    (second && a->name2))
		return usage_error(a->cmd, "unexpected argument '%s'",
				   show(arg));
	if (proto_name_valid(arg, UPAGER_NAME_MAX + 2)) {
		*(second ? &a->name2 : &a->name) = arg;
		return PARSE_OK;
	}
	len = strlen(arg);
	if (len > UPAGER_NAME_MAX)
		return usage_error(a->cmd,
				   "segment name '%s' is too long "
				   "(%zu bytes; at most %d)",
				   show(arg), len, UPAGER_NAME_MAX);
	return usage_error(a->cmd,
			   "invalid segment name '%s' (1 to %d of "
			   "A-Z a-z 0-9 . _ -, not . or ..)",
			   show(arg), UPAGER_NAME_MAX);
}

/* The command's options after the common ones, in one getopt table. */
static void command_options(const struct command *cmd, struct option *opts)
{
	static const struct option common[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "help", no_argument, NULL, OPT_HELP },
	};
	const struct option *o;
	size_t n = 0;

	for (; n < sizeof(common) / sizeof(common[0]); n++)
		opts[n] = common[n];
	for (o = cmd->options; o->name && n < MAX_OPTIONS - 1; o++)
		opts[n++] = *o;
	memset(&opts[n], 0, sizeof(*opts));
}

static int check_required(const struct args *a)
{
	if ((a->cmd->needs & NEEDS_NAME) && !a->name)
		return usage_error(a->cmd, "missing segment NAME");
	if ((a->cmd->needs & NEEDS_NAME2) && !a->name2)
		return usage_error(a->cmd, "missing the second name");
	if ((a->cmd->needs & NEEDS_FILE) && !a->file)
		return usage_error(a->cmd, "missing FILE");
	if ((a->cmd->needs & NEEDS_SIZE) && !a->has_size && !a->source)
		return usage_error(a->cmd, "missing --size");
	if (a->base && !a->source)
		return usage_error(a->cmd, "--base goes with --source");
	return PARSE_OK;
}

/*
 * Parse a command's line; argv[0] is the command's name.  "-" first in
 * optstring hands us each non-option in place, so options may follow NAME
 * even under POSIXLY_CORRECT; ":" lets us word the errors ourselves.
 */
static int parse_command(struct args *a, int argc, char **argv)
{
	struct option opts[MAX_OPTIONS];
	int c, ret, at;

	command_options(a->cmd, opts);
	optind = 0;
	opterr = 0;
	for (;;) {
		at = optind ? optind : 1;
		c = getopt_long(argc, argv, "-:h", opts, NULL);
		if (c == -1)
			break;
		switch (c) {
		case 1:
			ret = apply_positional(a, optarg);
			break;
		case OPT_HELP:
			command_help(a->cmd);
			return EXIT_SUCCESS;
		case ':':
		case '?':
			return option_error(a->cmd, argv[at], c);
		default:
			ret = apply_option(a, c, optarg);
		}
		if (ret != PARSE_OK)
			return ret;
	}
	/* after "--": the rest are arguments, even if they start with '-' */
	for (; optind < argc; optind++) {
		ret = apply_positional(a, argv[optind]);
		if (ret != PARSE_OK)
			return ret;
	}
	return check_required(a);
}

/* The options before COMMAND; "+" stops at the first non-option. */
static int parse_global(struct args *a, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	int c, at;

	opterr = 0;
	for (;;) {
		at = optind ? optind : 1;
		c = getopt_long(argc, argv, "+:h", opts, NULL);
		if (c == -1)
			break;
		switch (c) {
		case OPT_SOCKET:
			if (!*optarg)
				return usage_error(NULL, "--socket needs a "
							 "path");
			a->socket = optarg;
			break;
		case OPT_HELP:
			global_help();
			return EXIT_SUCCESS;
		case OPT_VERSION:
			printf(PROG " " UPAGER_VERSION "\n");
			return EXIT_SUCCESS;
		default:
			return option_error(NULL, argv[at], c);
		}
	}
	if (optind >= argc)
		return usage_error(NULL, "missing COMMAND");
	a->cmd = command_find(argv[optind]);
	if (!a->cmd)
		return usage_error(NULL, "unknown command '%s'",
				   show(argv[optind]));
	return PARSE_OK;
}

/*
 * Why connecting to @path failed, in words that say what to do: connect(2)
 * says "Connection refused" alike for a file that is no socket and for a
 * socket nobody listens on.
 */
static const char *connect_error_text(const char *path, int err, char *buf,
				      size_t len)
{
	struct stat st;

	if (err != ECONNREFUSED && err != ENOENT && err != ENOTSOCK)
		return error_text(err);
	/* stat, not lstat: connect(2) follows symbolic links */
	if (stat(path, &st) < 0) {
		if (errno == ENOENT)
			return "no such socket (is upagerd running?)";
		return strerror(err);
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(buf, len, "not a socket but %s",
			 file_type_text(st.st_mode));
		return buf;
	}
	if (err == ECONNREFUSED)
		return "nothing listens on it (is upagerd running?)";
	return strerror(err);
}

static int connect_daemon(const struct args *a, struct upager **u)
{
	char path[UPAGER_PATH_MAX], shown[4 * PATH_CHARS + 8], why[64];
	const char *p = a->socket;
	int ret;

	ret = upager_connect(a->socket, u);
	if (ret == 0)
		return EXIT_SUCCESS;
	if (!p) {
		p = path;
		if (upager_socket_path(path, sizeof(path)) < 0)
			snprintf(path, sizeof(path), "(the default socket)");
	}
	text_escape(shown, sizeof(shown), p, PATH_CHARS);
	fprintf(stderr, PROG ": %s: cannot connect to upagerd at %s: %s\n",
		a->cmd->name, shown,
		connect_error_text(p, -ret, why, sizeof(why)));
	return EXIT_FAILURE;
}

/* A command that needs a stream that was closed does not start. */
static int check_stdio(const struct args *a)
{
	bool out = (a->cmd->needs & NEEDS_STDOUT) || a->verbose;

	if ((a->cmd->needs & NEEDS_STDIN) && (stdio_closed & STDIN_CLOSED))
		return fail(a, "stdin is closed: nothing to read");
	if (out && (stdio_closed & STDOUT_CLOSED))
		return fail(a, "stdout is closed: nowhere to write");
	return EXIT_SUCCESS;
}

/* Output to a full disk or a closed pipe must not exit 0 silently. */
static int flush_stdout(const struct args *a, int status)
{
	int err;

	if (fflush(stdout) == 0 && !ferror(stdout))
		return status;
	err = errno;
	if (status != EXIT_SUCCESS)
		return EXIT_FAILURE;
	fputs(PROG ": ", stderr);
	if (a->cmd)
		fprintf(stderr, "%s: ", a->cmd->name);
	if (stdio_closed & STDOUT_CLOSED)
		fputs("stdout is closed: nowhere to write\n", stderr);
	else
		fprintf(stderr, "write to stdout: %s\n", strerror(err));
	return EXIT_FAILURE;
}

int main(int argc, char **argv)
{
	struct args a = { .cmd = NULL };
	struct upager *u = NULL;
	int ret;

	/* see the top of the file */
	ret = fd_stdio_guard();
	if (ret < 0) {
		/* stderr may be what is missing: the status still says it */
		fprintf(stderr, PROG ": cannot open /dev/null: %s\n",
			strerror(-ret));
		return EXIT_FAILURE;
	}
	stdio_closed = ret;
	ret = parse_global(&a, argc, argv);
	if (ret == PARSE_OK)
		ret = parse_command(&a, argc - optind, argv + optind);
	if (ret != PARSE_OK)
		return flush_stdout(&a, ret);

	ret = check_stdio(&a);
	if (ret == EXIT_SUCCESS)
		ret = connect_daemon(&a, &u);
	if (ret == EXIT_SUCCESS)
		ret = a.cmd->handler(u, &a);
	upager_disconnect(u);
	return flush_stdout(&a, ret);
}
