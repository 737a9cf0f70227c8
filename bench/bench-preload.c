// SPDX-License-Identifier: MIT
/*
 * upager-bench preload: what the LD_PRELOAD shim costs an unmodified
 * program (issue 9), as ratios to the same program without it, measured
 * in one run against a daemon the bench started.
 *
 * The programs are preload-workload's (plain C, no knowledge of upager),
 * each run twice per round: once as it is (no LD_PRELOAD) and once with
 * LD_PRELOAD=libupager-preload.so, UPAGER_SOCKET pointing at the bench's
 * daemon and UPAGER_REQUIRE=1 (no daemon: the program fails instead of
 * quietly running on ordinary memory).  The figures:
 *
 *   touch   mmap(SIZE), one byte written a page: the time the program
 *           measures around it, and the whole process's (fork and exec
 *           to exit: the shim's start, its connect and its cleanup
 *           included).  The same through malloc(SIZE), which the shim
 *           serves from a segment of its own.
 *   fork    SIZE written, then fork(); the child reads all of it.  The
 *           parent's pause in fork() (under the shim: a snapshot of each
 *           private segment, and the child's clone), the child's read,
 *           and, while the child still holds what it read, the memory:
 *           Pss of parent and child (/proc/PID/smaps_rollup), and of
 *           upagerd (the memfds it maps count there, split with the
 *           processes that map them too: summing Pss counts every frame
 *           once).  upagerd's resident_bytes counter is shown beside it.
 *   small   SIZE in small blocks (16 B to 1 KiB) allocated and written by
 *           2 threads (the shim's arenas, managed, against glibc's arenas
 *           and heap), and then malloc(64)/free in a loop, per round
 *           (each thread at once).
 *   churn   malloc(2 MiB), write 4 pages, free, in a loop: glibc reuses
 *           its own memory, the shim makes, attaches and deletes a
 *           segment every time.  Microseconds per round.
 *
 * A machine of two vCPUs swings by tens of percent from one second to the
 * next, so each figure's plain and shim runs follow each other directly,
 * which of the two goes first alternates from round to round, warm-up
 * rounds come first, and every figure is the median over the rounds.  The
 * ratios of those medians are the report; a missed target is reported,
 * never turned into a failing exit code.
 *
 * A run of the shim whose daemon created no segment measured nothing of
 * the shim: that is an error, not a figure.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <upager/upager.h>

#include "bench-preload.h"
#include "bench-stats.h"
#include "json.h"
#include "size.h"

extern char **environ;

/* A program that says nothing for this long is hung. */
#define PRELOAD_TIMEOUT_MS 300000
#define PRELOAD_OUT_MAX 8192

enum { PRELOAD_PLAIN, PRELOAD_SHIM, PRELOAD_HOWS };

static const char *const how_names[PRELOAD_HOWS] = { "plain", "shim" };

/* The figures of one run of one side; -1: not measured (or not its). */
enum {
	PF_TOUCH_NS,
	PF_TOUCH_PROC_NS,
	PF_MALLOC_NS,
	PF_GROW_NS,
	PF_FORK_PAUSE_NS,
	PF_CHILD_READ_NS,
	PF_PARENT_PSS_KIB,
	PF_CHILD_PSS_KIB,
	PF_DAEMON_PSS_KIB,
	PF_DAEMON_RES_KIB,
	PF_MEM_KIB, /* parent + child (+ upagerd) */
	PF_CHURN_NS,
	PF_SMALL_NS,
	PF_PAIR_NS,
	PF_N,
};

struct preload_row {
	int field;
	const char *label;
	const char *json; /* its name in the JSON (ns and KiB as measured) */
	double scale;	  /* measured / scale = shown */
	double goal;	  /* shim/plain <= goal is a target; 0: none */
	const char *target;
};

static const struct preload_row rows[] = {
	{ PF_TOUCH_NS, "first touch via mmap, in the program (ms)", "touch_ns",
	  1e6, 1.5, "preload/touch mmap shim/plain" },
	{ PF_TOUCH_PROC_NS, "first touch via mmap, whole process (ms)",
	  "touch_process_ns", 1e6, 1.5, "preload/touch process shim/plain" },
	{ PF_MALLOC_NS, "first touch via malloc, in the program (ms)",
	  "touch_malloc_ns", 1e6, 1.5, "preload/touch malloc shim/plain" },
	{ PF_GROW_NS, "first touch, PROT_NONE opened by mprotect (ms)",
	  "touch_grow_ns", 1e6, 1.5, "preload/touch grow shim/plain" },
	{ PF_FORK_PAUSE_NS, "fork(): the parent's pause (us)", "fork_pause_ns",
	  1e3, 0, NULL },
	{ PF_CHILD_READ_NS, "fork(): the child reads it all (ms)",
	  "child_read_ns", 1e6, 0, NULL },
	{ PF_PARENT_PSS_KIB, "fork(): parent Pss after the read (MiB)",
	  "parent_pss_kib", 1024, 0, NULL },
	{ PF_CHILD_PSS_KIB, "fork(): child Pss after the read (MiB)",
	  "child_pss_kib", 1024, 0, NULL },
	{ PF_DAEMON_PSS_KIB, "fork(): upagerd Pss (MiB)", "daemon_pss_kib",
	  1024, 0, NULL },
	{ PF_DAEMON_RES_KIB, "fork(): upagerd resident_bytes (MiB)",
	  "daemon_resident_kib", 1024, 0, NULL },
	{ PF_MEM_KIB, "fork(): parent + child (+ upagerd) Pss (MiB)",
	  "memory_kib", 1024, 0, NULL },
	{ PF_CHURN_NS, "churn: malloc 2M, write 4 pages, free (us)",
	  "churn_ns_per_round", 1e3, 0, NULL },
	{ PF_SMALL_NS, "small blocks, 2 threads: allocated, written (ms)",
	  "small_ns", 1e6, 1.5, "preload/small shim/plain" },
	{ PF_PAIR_NS, "small blocks: malloc(64) + free (ns)", "small_pair_ns",
	  1, 0, NULL },
};

#define NR_ROWS (sizeof(rows) / sizeof(rows[0]))

/* A program started by the bench. */
struct prog {
	pid_t pid;
	int in;	 /* a pipe to its stdin (talk), else -1 */
	int out; /* a pipe from its stdout (talk), else a memfd */
	int err; /* a memfd: its stderr */
};

struct preload_ctx {
	const struct bench_preload_opts *o;
	char **env[PRELOAD_HOWS]; /* the programs' environments */
	pid_t daemon;		  /* for its Pss; <= 0: not known */
	char errmsg[512];
};

static void prog_close(struct prog *p)
{
	if (p->in >= 0)
		close(p->in);
	if (p->out >= 0)
		close(p->out);
	if (p->err >= 0)
		close(p->err);
	p->in = p->out = p->err = -1;
}

static int env_add(char ***envp, size_t *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int env_add(char ***envp, size_t *n, const char *fmt, ...)
{
	char **e = realloc(*envp, (*n + 2) * sizeof(**envp));
	va_list ap;
	int r;

	if (!e)
		return -ENOMEM;
	*envp = e;
	va_start(ap, fmt);
	r = vasprintf(&e[*n], fmt, ap);
	va_end(ap);
	if (r < 0)
		return -ENOMEM;
	e[++*n] = NULL;
	return 0;
}

static bool env_is(const char *entry, const char *name)
{
	size_t n = strlen(name);

	return !strncmp(entry, name, n) && entry[n] == '=';
}

/*
 * The environment of each side: the bench's, without LD_PRELOAD for the
 * plain programs; with the shim, its socket and UPAGER_REQUIRE=1 for the
 * others.  A sanitizer build's shim loads only after its runtime: meson
 * names that in $UPAGER_PRELOAD_FIRST, preloaded first, and the leaks of
 * the programs it is preloaded into are not the shim's to report.
 */
static int env_make(struct preload_ctx *c)
{
	const char *first = getenv("UPAGER_PRELOAD_FIRST");
	const char *asan = getenv("ASAN_OPTIONS");
	size_t n[PRELOAD_HOWS] = { 0 };
	unsigned int h;
	char **e;
	int r = 0;

	if (first && !*first)
		first = NULL;
	for (h = 0; h < PRELOAD_HOWS; h++) {
		c->env[h] = calloc(1, sizeof(char *));
		if (!c->env[h])
			return -ENOMEM;
		for (e = environ; *e && !r; e++) {
			if (env_is(*e, "LD_PRELOAD") ||
			    (h == PRELOAD_SHIM &&
			     (env_is(*e, "UPAGER_SOCKET") ||
			      env_is(*e, "UPAGER_REQUIRE") ||
			      (first && env_is(*e, "ASAN_OPTIONS")))))
				continue;
			r = env_add(&c->env[h], &n[h], "%s", *e);
		}
	}
	if (!r)
		r = env_add(&c->env[PRELOAD_SHIM], &n[PRELOAD_SHIM],
			    "LD_PRELOAD=%s%s%s", first ? first : "",
			    first ? " " : "", c->o->shim);
	if (!r)
		r = env_add(&c->env[PRELOAD_SHIM], &n[PRELOAD_SHIM],
			    "UPAGER_SOCKET=%s", c->o->env->sock);
	if (!r)
		r = env_add(&c->env[PRELOAD_SHIM], &n[PRELOAD_SHIM],
			    "UPAGER_REQUIRE=1");
	if (!r && first)
		r = env_add(&c->env[PRELOAD_SHIM], &n[PRELOAD_SHIM],
			    "ASAN_OPTIONS=%s%sdetect_leaks=0", asan ? asan : "",
			    asan && *asan ? ":" : "");
	return r;
}

static void env_free(struct preload_ctx *c)
{
	unsigned int h;
	char **e;

	for (h = 0; h < PRELOAD_HOWS; h++) {
		for (e = c->env[h]; e && *e; e++)
			free(*e);
		free(c->env[h]);
		c->env[h] = NULL;
	}
}

/*
 * Start the program with @args (after its path) on side @how.  With @talk
 * its stdin and stdout are pipes to the bench; else it reads /dev/null and
 * its stdout goes to a memfd.  Its stderr always goes to a memfd, read
 * when it is done.  Returns 0 or -errno (c->errmsg says what).
 */
static int prog_start(struct preload_ctx *c, int how, const char *const *args,
		      bool talk, struct prog *p)
{
	const char *argv[8] = { c->o->program };
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err, r;
	unsigned int i;

	for (i = 0; args[i] && i + 2 < 8; i++)
		argv[i + 1] = args[i];
	*p = (struct prog){ .pid = -1, .in = -1, .out = -1, .err = -1 };
	err = memfd_create("preload-stderr", MFD_CLOEXEC);
	if (err < 0)
		goto fail;
	if (talk) {
		if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
			goto fail;
	} else {
		in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		out[0] = memfd_create("preload-stdout", MFD_CLOEXEC);
		if (in[0] < 0 || out[0] < 0)
			goto fail;
	}
	fflush(stdout);
	fflush(stderr);
	p->pid = fork();
	if (p->pid < 0)
		goto fail;
	if (!p->pid) {
		/* never outlive the bench, which may be killed */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGBUS, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		if (dup2(in[0], STDIN_FILENO) < 0 ||
		    dup2(talk ? out[1] : out[0], STDOUT_FILENO) < 0 ||
		    dup2(err, STDERR_FILENO) < 0)
			_exit(127);
		execve(argv[0], (char **)argv, c->env[how]);
		dprintf(STDERR_FILENO, "exec %s: %s\n", argv[0],
			strerror(errno));
		_exit(127);
	}
	close(in[0]);
	if (talk) {
		close(out[1]);
		p->in = in[1];
	}
	p->out = out[0];
	p->err = err;
	return 0;
fail:
	r = -errno;
	bench_fmt(c->errmsg, sizeof(c->errmsg), "starting %s: %s", argv[0],
		  strerror(errno));
	for (i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
	}
	if (err >= 0)
		close(err);
	return r;
}

/* The first @len - 1 bytes a memfd holds, as a string. */
static void memfd_text(int fd, char *buf, size_t len)
{
	ssize_t n = pread(fd, buf, len - 1, 0);

	buf[n > 0 ? n : 0] = '\0';
}

/* Its last line, for a message. */
static const char *last_line(char *text)
{
	size_t n = strlen(text);
	char *nl;

	while (n && text[n - 1] == '\n')
		text[--n] = '\0';
	nl = strrchr(text, '\n');
	return nl ? nl + 1 : text;
}

/*
 * Wait for the program to end; 0 if it exited 0, else -ECHILD with
 * c->errmsg saying how it ended and the last line of its stderr.
 */
static int prog_wait(struct preload_ctx *c, struct prog *p, const char *what)
{
	char text[PRELOAD_OUT_MAX];
	int status;

	if (waitpid(p->pid, &status, 0) != p->pid)
		return -errno;
	p->pid = -1;
	if (WIFEXITED(status) && !WEXITSTATUS(status))
		return 0;
	memfd_text(p->err, text, sizeof(text));
	bench_fmt(c->errmsg, sizeof(c->errmsg), "%s %s %d: %s", what,
		  WIFSIGNALED(status) ? "died of signal" : "exited with",
		  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
		  last_line(text));
	return -ECHILD;
}

/* The number after "@key " in @text, or -1. */
static double find_num(const char *text, const char *key)
{
	size_t n = strlen(key);
	const char *s;

	for (s = text; (s = strstr(s, key)); s += n)
		if ((s == text || s[-1] == '\n') && s[n] == ' ')
			return strtod(s + n + 1, NULL);
	return -1;
}

/*
 * Read the program's stdout pipe into @buf until a line starts with @key
 * (or, @key NULL, until it closes).  0, or -ETIMEDOUT / -EPIPE.
 */
static int read_until(int fd, char *buf, size_t len, size_t *used,
		      const char *key)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n;

	for (;;) {
		buf[*used] = '\0';
		if (key && find_num(buf, key) >= 0 &&
		    strchr(strstr(buf, key), '\n'))
			return 0;
		if (*used + 1 >= len)
			return -ENOBUFS;
		n = poll(&pfd, 1, PRELOAD_TIMEOUT_MS);
		if (n == 0)
			return -ETIMEDOUT;
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n < 0)
			continue;
		n = read(fd, buf + *used, len - 1 - *used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return key ? -EPIPE : 0;
		*used += (size_t)n;
	}
}

/* Pss of @pid in KiB (smaps_rollup), or -1. */
static double pss_kib(pid_t pid)
{
	char path[64], line[256];
	double v = -1;
	long kb;
	FILE *f;

	if (pid <= 0)
		return -1;
	bench_fmt(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss: %ld kB", &kb) == 1) {
			v = (double)kb;
			break;
		}
	fclose(f);
	return v;
}

static int daemon_stats(struct preload_ctx *c, struct upager_daemon_stats *st)
{
	int r = upager_stats(c->o->env->conn, st);

	if (r < 0)
		bench_fmt(c->errmsg, sizeof(c->errmsg), "upager_stats: %s",
			  strerror(-r));
	return r;
}

/*
 * The shim's run made no segment: it measured the program alone.  Not
 * checked under a sanitizer preloaded first: its malloc comes before the
 * shim's (test-preload.sh does the same).
 */
static int check_managed(struct preload_ctx *c, int how, uint64_t before,
			 const char *what)
{
	const char *first = getenv("UPAGER_PRELOAD_FIRST");
	struct upager_daemon_stats st;
	int r;

	if (how != PRELOAD_SHIM || (first && *first))
		return 0;
	r = daemon_stats(c, &st);
	if (r < 0)
		return r;
	if (st.segments_created > before)
		return 0;
	bench_fmt(c->errmsg, sizeof(c->errmsg),
		  "%s: the daemon made no segment (is UPAGER_MIN_SIZE "
		  "above the sizes?)",
		  what);
	return -ENOMSG;
}

static int created_before(struct preload_ctx *c, int how, uint64_t *n)
{
	struct upager_daemon_stats st;
	int r;

	*n = 0;
	if (how != PRELOAD_SHIM)
		return 0;
	r = daemon_stats(c, &st);
	if (!r)
		*n = st.segments_created;
	return r;
}

/*
 * Runs preload-workload @args to its end and takes the numbers after
 * @keys (NULL-ended) in what it printed on stderr into @vals; @wall_ns,
 * if not NULL: fork and exec to exit.  A shim run that made no segment is
 * an error (check_managed()).
 */
static int prog_figures(struct preload_ctx *c, int how, const char *const *args,
			const char *const *keys, double *vals, double *wall_ns)
{
	char text[PRELOAD_OUT_MAX];
	uint64_t t0, created;
	struct prog p;
	int r;

	r = created_before(c, how, &created);
	if (r < 0)
		return r;
	t0 = bench_now_ns();
	r = prog_start(c, how, args, false, &p);
	if (r < 0)
		return r;
	r = prog_wait(c, &p, args[0]);
	if (!r) {
		if (wall_ns)
			*wall_ns = (double)(bench_now_ns() - t0);
		memfd_text(p.err, text, sizeof(text));
		for (size_t i = 0; keys[i] && !r; i++) {
			vals[i] = find_num(text, keys[i]);
			if (vals[i] < 0) {
				bench_fmt(c->errmsg, sizeof(c->errmsg),
					  "%s: no %s in its output", args[0],
					  keys[i]);
				r = -EBADMSG;
			}
		}
	}
	prog_close(&p);
	return r ? r : check_managed(c, how, created, args[0]);
}

/* touch SIZE [MODE]: the program's time, and the whole process's; @mode
 * NULL (mmap), "malloc" or "grow". */
static int touch_run(struct preload_ctx *c, int how, const char *mode,
		     double *fig)
{
	char size[32];
	const char *args[] = { "touch", size, mode, NULL };
	const char *keys[] = { "touch-ns", NULL };
	double ns, wall;
	int r;

	bench_fmt(size, sizeof(size), "%" PRIu64 "K", c->o->size >> 10);
	r = prog_figures(c, how, args, keys, &ns, &wall);
	if (r)
		return r;
	if (!mode)
		fig[PF_TOUCH_PROC_NS] = wall;
	fig[!mode		    ? PF_TOUCH_NS :
	    !strcmp(mode, "malloc") ? PF_MALLOC_NS :
				      PF_GROW_NS] = ns;
	return 0;
}

/*
 * fork-touch SIZE wait: it prints its figures once the child has read
 * everything, and waits; the daemon is measured then, while the child
 * still holds its memory.
 */
static int fork_run(struct preload_ctx *c, int how, double *fig)
{
	char size[32], out[PRELOAD_OUT_MAX];
	const char *args[] = { "fork-touch", size, "wait", NULL };
	struct upager_daemon_stats st;
	uint64_t created;
	size_t used = 0;
	struct prog p;
	double mem;
	int r;

	bench_fmt(size, sizeof(size), "%" PRIu64 "K", c->o->size >> 10);
	r = created_before(c, how, &created);
	if (r < 0)
		return r;
	r = prog_start(c, how, args, true, &p);
	if (r < 0)
		return r;
	r = read_until(p.out, out, sizeof(out), &used, "child-pid");
	if (!r && how == PRELOAD_SHIM) {
		fig[PF_DAEMON_PSS_KIB] = pss_kib(c->daemon);
		r = daemon_stats(c, &st);
		if (!r)
			fig[PF_DAEMON_RES_KIB] = (double)(st.resident_bytes >>
							  10);
	}
	if (r == -ETIMEDOUT)
		kill(p.pid, SIGKILL);
	/* a line, and its stdin closed: it lets the child go and exits */
	if (write(p.in, "go\n", 3) != 3 && !r)
		r = -errno;
	close(p.in);
	p.in = -1;
	if (!r)
		r = read_until(p.out, out, sizeof(out), &used, NULL);
	else
		read_until(p.out, out, sizeof(out), &used, NULL);
	if (prog_wait(c, &p, "fork-touch") < 0) {
		r = -ECHILD;
	} else if (r < 0) {
		bench_fmt(c->errmsg, sizeof(c->errmsg),
			  "fork-touch: reading its output: %s", strerror(-r));
	} else if (find_num(out, "child-sum-ok") != 1) {
		bench_fmt(c->errmsg, sizeof(c->errmsg),
			  "fork-touch: the child read wrong bytes");
		r = -EBADMSG;
	}
	prog_close(&p);
	if (r < 0)
		return r;
	fig[PF_FORK_PAUSE_NS] = find_num(out, "fork-pause-ns");
	fig[PF_CHILD_READ_NS] = find_num(out, "child-read-ns");
	fig[PF_PARENT_PSS_KIB] = find_num(out, "parent-pss-kib");
	fig[PF_CHILD_PSS_KIB] = find_num(out, "child-pss-kib");
	mem = fig[PF_PARENT_PSS_KIB] + fig[PF_CHILD_PSS_KIB];
	if (how == PRELOAD_SHIM)
		mem = fig[PF_DAEMON_PSS_KIB] < 0 ? -1 :
						   mem + fig[PF_DAEMON_PSS_KIB];
	if (fig[PF_PARENT_PSS_KIB] < 0 || fig[PF_CHILD_PSS_KIB] < 0)
		mem = -1;
	fig[PF_MEM_KIB] = mem;
	return check_managed(c, how, created, "fork-touch");
}

/* churn ROUNDS: ns per round of malloc(2 MiB), 4 pages written, free. */
static int churn_run(struct preload_ctx *c, int how, double *fig)
{
	char rounds[16];
	const char *args[] = { "churn", rounds, NULL };
	const char *keys[] = { "churn-ns", NULL };
	double ns;
	int r;

	bench_fmt(rounds, sizeof(rounds), "%u", c->o->churn);
	r = prog_figures(c, how, args, keys, &ns, NULL);
	if (!r)
		fig[PF_CHURN_NS] = ns / c->o->churn;
	return r;
}

/* small SIZE 2 PAIRS: the arenas' first touch, and malloc/free pairs. */
static int small_run(struct preload_ctx *c, int how, double *fig)
{
	char size[32];
	const char *args[] = { "small", size, "2", "2000000", NULL };
	const char *keys[] = { "small-ns", "small-pair-ns", NULL };
	double v[2];
	int r;

	bench_fmt(size, sizeof(size), "%" PRIu64 "K", c->o->size >> 10);
	r = prog_figures(c, how, args, keys, v, NULL);
	if (!r) {
		fig[PF_SMALL_NS] = v[0];
		fig[PF_PAIR_NS] = v[1];
	}
	return r;
}

static void progress(const struct bench_preload_opts *o, unsigned int it,
		     const char *what)
{
	bool measured = it >= o->warmup;

	if (!o->progress || !isatty(STDERR_FILENO))
		return;
	fprintf(stderr, "\r\033[Kpreload %s %s %u/%u", what,
		measured ? "run" : "warm-up",
		measured ? it - o->warmup + 1 : it + 1,
		measured ? o->runs : o->warmup);
	fflush(stderr);
}

static void progress_end(const struct bench_preload_opts *o)
{
	if (o->progress && isatty(STDERR_FILENO))
		fputs("\r\033[K", stderr);
}

/* One round: each figure's plain and shim runs back to back. */
static int round_run(struct preload_ctx *c, unsigned int it,
		     double fig[PRELOAD_HOWS][PF_N])
{
	static const char *const steps[] = { "touch", "malloc", "grow",
					     "fork",  "churn",	"small" };
	unsigned int s, k;
	int r = 0;

	for (s = 0; s < 6 && !r; s++) {
		progress(c->o, it, steps[s]);
		for (k = 0; k < PRELOAD_HOWS && !r; k++) {
			/* which side goes first alternates */
			int how = (int)((k + it) % PRELOAD_HOWS);

			switch (s) {
			case 0:
				r = touch_run(c, how, NULL, fig[how]);
				break;
			case 1:
			case 2:
				r = touch_run(c, how, steps[s], fig[how]);
				break;
			case 3:
				r = fork_run(c, how, fig[how]);
				break;
			case 4:
				r = churn_run(c, how, fig[how]);
				break;
			default:
				r = small_run(c, how, fig[how]);
			}
			if (r < 0) {
				char msg[sizeof(c->errmsg)];

				bench_fmt(msg, sizeof(msg), "%s: %s",
					  how_names[how],
					  c->errmsg[0] ? c->errmsg :
							 strerror(-r));
				memcpy(c->errmsg, msg, sizeof(msg));
			}
		}
	}
	return r;
}

static double ratio_of(const double med[PRELOAD_HOWS][PF_N], int f)
{
	double a = med[PRELOAD_PLAIN][f], b = med[PRELOAD_SHIM][f];

	return a > 0 && b >= 0 ? b / a : -1;
}

static void table(const struct bench_preload_opts *o,
		  const double med[PRELOAD_HOWS][PF_N], FILE *f)
{
	char sz[SIZE_FORMAT_MAX];
	struct utsname uts;
	unsigned int i, h;

	if (size_format(o->size, sz, sizeof(sz)) < 0)
		strcpy(sz, "?");
	fprintf(f,
		"preload: %u run%s (median) after %u warm-up, %ld CPUs, "
		"Linux %s\n",
		o->runs, o->runs == 1 ? "" : "s", o->warmup,
		sysconf(_SC_NPROCESSORS_ONLN), uname(&uts) ? "?" : uts.release);
	fprintf(f, "upagerd: %s\n", o->env->daemon_desc);
	fprintf(f, "program: %s, %s; churn: %u rounds\nshim: %s\n", o->program,
		sz, o->churn, o->shim);
	fprintf(f, "%-46s %10s %10s %10s\n", "", "plain", "shim", "shim/plain");
	for (i = 0; i < NR_ROWS; i++) {
		const struct preload_row *row = &rows[i];
		double ratio = ratio_of(med, row->field);

		fprintf(f, "%-46s", row->label);
		for (h = 0; h < PRELOAD_HOWS; h++) {
			double v = med[h][row->field];

			if (v < 0)
				fprintf(f, " %10s", "-");
			else if (v / row->scale >= 100)
				fprintf(f, " %10.0f", v / row->scale);
			else if (v / row->scale >= 1)
				fprintf(f, " %10.2f", v / row->scale);
			else
				fprintf(f, " %10.3f", v / row->scale);
		}
		if (ratio < 0)
			fprintf(f, " %10s\n", "-");
		else if (ratio >= 100)
			fprintf(f, " %9.0fx\n", ratio);
		else
			fprintf(f, " %9.2fx\n", ratio);
	}
	fputs("(first touch: one byte written a page of SIZE; whole process: "
	      "fork+exec\n"
	      " to exit; fork: SIZE written, fork(), the child reads it all; "
	      "memory while\n"
	      " the child still holds it, upagerd's counted for the shim; "
	      "churn: per round)\n",
	      f);
}

static void json_val(FILE *f, double v)
{
	if (v < 0)
		fprintf(f, "null");
	else if (v == (double)(uint64_t)v)
		fprintf(f, "%.0f", v);
	else
		fprintf(f, "%.4f", v);
}

static void json_write(FILE *f, const struct bench_preload_opts *o,
		       const double med[PRELOAD_HOWS][PF_N], const double *runs,
		       unsigned int nr, const struct bench_report *rep)
{
	struct utsname uts;
	unsigned int i, h, k;

	fprintf(f,
		"{\n  \"tool\": \"upager-bench\", \"format\": 1, "
		"\"workload\": \"preload\",\n  \"config\": {\"runs\": %u, "
		"\"warmup\": %u, \"size\": %" PRIu64 ", \"churn\": %u, "
		"\"cpus\": %ld, \"kernel\": ",
		o->runs, o->warmup, o->size, o->churn,
		sysconf(_SC_NPROCESSORS_ONLN));
	json_write_string(f, uname(&uts) ? NULL : uts.release);
	fprintf(f, ", \"daemon\": ");
	json_write_string(f, o->env->daemon_desc);
	fprintf(f, ", \"program\": ");
	json_write_string(f, o->program);
	fprintf(f, ", \"shim\": ");
	json_write_string(f, o->shim);
	fprintf(f, "},\n  \"results\": [");
	for (i = 0; i < NR_ROWS; i++) {
		int fld = rows[i].field;

		fprintf(f, "%s\n    {\"figure\": \"%s\"", i ? "," : "",
			rows[i].json);
		for (h = 0; h < PRELOAD_HOWS; h++) {
			fprintf(f, ", \"%s\": ", how_names[h]);
			json_val(f, med[h][fld]);
		}
		fprintf(f, ", \"ratio\": ");
		json_val(f, ratio_of(med, fld));
		for (h = 0; h < PRELOAD_HOWS; h++) {
			fprintf(f, ", \"%s_runs\": [", how_names[h]);
			for (k = 0; k < nr; k++) {
				fprintf(f, "%s", k ? ", " : "");
				json_val(f, runs[(k * PRELOAD_HOWS + h) * PF_N +
						 fld]);
			}
			fprintf(f, "]");
		}
		fprintf(f, "}");
	}
	fprintf(f, "\n  ],\n  ");
	bench_report_json_targets(rep, f);
	fprintf(f, "\n}\n");
}

static int json_file(const struct bench_preload_opts *o,
		     const double med[PRELOAD_HOWS][PF_N], const double *runs,
		     unsigned int nr, const struct bench_report *rep)
{
	FILE *f = fopen(o->json_out, "w");
	int r = 0;

	if (!f) {
		r = -errno;
	} else {
		json_write(f, o, med, runs, nr, rep);
		if (ferror(f))
			r = -EIO;
		if (fclose(f) && !r)
			r = -errno;
	}
	if (r < 0)
		fprintf(stderr, "upager-bench: %s: %s\n", o->json_out,
			strerror(-r));
	return r;
}

/* Room for the fork: parent and child, and the daemon's copy. */
static int mem_room(const struct bench_preload_opts *o, char *msg, size_t len)
{
	char line[128], a[SIZE_FORMAT_MAX], n[SIZE_FORMAT_MAX];
	unsigned long long kb = 0;
	uint64_t need = 3 * o->size;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	if (!kb || kb * 1024 >= need)
		return 0;
	size_format(kb * 1024, a, sizeof(a));
	size_format(need, n, sizeof(n));
	bench_fmt(msg, len,
		  "MemAvailable is %s; the fork of --size needs about %s", a, n);
	return -ENOMEM;
}

int bench_preload_run(const struct bench_preload_opts *o)
{
	struct preload_ctx c = { .o = o };
	struct bench_report rep = { .workload = "preload" };
	unsigned int total = o->warmup + o->runs, it, i, nr = 0;
	double med[PRELOAD_HOWS][PF_N], (*fig)[PF_N], *runs;
	bool failed = false;
	int r;

	/* main() said why the daemon is not there */
	if (!o->env->conn)
		return 1;
	if (mem_room(o, c.errmsg, sizeof(c.errmsg)) < 0) {
		fprintf(stderr, "upager-bench: preload: %s\n", c.errmsg);
		return 1;
	}
	c.daemon = bench_upagerd_pid(o->env);
	/* a program that died before its stdin was written to is an error
	 * message, not the bench's death */
	signal(SIGPIPE, SIG_IGN);
	if (env_make(&c) < 0)
		abort();
	runs = calloc((size_t)o->runs * PRELOAD_HOWS * PF_N, sizeof(*runs));
	fig = calloc(PRELOAD_HOWS, sizeof(*fig));
	if (!runs || !fig)
		abort();
	for (it = 0; it < total; it++) {
		for (i = 0; i < PRELOAD_HOWS * PF_N; i++)
			fig[i / PF_N][i % PF_N] = -1;
		c.errmsg[0] = '\0';
		r = round_run(&c, it, fig);
		if (r < 0) {
			progress_end(o);
			fprintf(stderr, "upager-bench: preload: %s\n",
				c.errmsg[0] ? c.errmsg : strerror(-r));
			failed = true;
			break;
		}
		if (it >= o->warmup)
			memcpy(runs + (size_t)nr++ * PRELOAD_HOWS * PF_N, fig,
			       PRELOAD_HOWS * sizeof(*fig));
	}
	progress_end(o);
	env_free(&c);
	/* the median of each figure of each side over the rounds */
	for (i = 0; i < PRELOAD_HOWS; i++) {
		double *side = calloc((size_t)(nr ? nr : 1) * PF_N,
				      sizeof(*side));

		if (!side)
			abort();
		for (it = 0; it < nr; it++)
			memcpy(side + (size_t)it * PF_N,
			       runs + ((size_t)it * PRELOAD_HOWS + i) * PF_N,
			       PF_N * sizeof(*side));
		bench_median_fields(side, nr, PF_N, med[i]);
		free(side);
	}
	for (i = 0; i < NR_ROWS; i++)
		if (rows[i].goal > 0)
			bench_report_target(&rep, rows[i].target,
					    ratio_of(med, rows[i].field),
					    "<=", rows[i].goal);

	if (o->json_out && json_file(o, med, runs, nr, &rep) < 0)
		failed = true;
	if (o->json) {
		json_write(stdout, o, med, runs, nr, &rep);
	} else {
		table(o, med, stdout);
		fputc('\n', stdout);
		bench_report_targets(&rep, stdout);
	}
	fflush(stdout);
	free(runs);
	free(fig);
	return failed ? 1 : 0;
}
