// SPDX-License-Identifier: MIT
/*
 * upagerd, the user-space pager.  It owns memory segments whose frames
 * live in memfds; processes attach a segment (map its memfd) through the
 * client library and hand the daemon a userfaultfd for the mapping, and
 * the daemon serves their faults: a page never touched comes from the
 * segment's source (zero, a file), read once and shared by every process
 * that maps it.
 *
 * The daemon's parts: its state and lock order (daemon.h); the control
 * server on the main thread (server.c: the socket, requests, forked
 * children, housekeeping); the workers that poll the userfaultfds
 * (worker.c) and run the fill path (fill.c); segments (segment.c) with
 * their page tables (pagetable.c) and sources (source.c); attachments
 * (attach.c); per-user limits (quota.c); the io_uring plumbing (ring.c).
 *
 * This file parses options, opens the userfaultfds the daemon needs
 * (probing the kernel's features), claims the socket, starts the workers
 * and runs the control server until SIGTERM/SIGINT.
 *
 * Whatever can fail for want of a privilege is done before the socket is
 * bound, and a start that fails after that removes the socket again: a
 * socket file nobody listens on would tell clients "connection refused"
 * instead of "no daemon".
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "attach.h"
#include "daemon.h"
#include "fill.h"
#include "log.h"
#include "quota.h"
#include "segment.h"
#include "server.h"
#include "size.h"
#include "sockpath.h"
#include "uffd.h"
#include "worker.h"

#define DEFAULT_SPIN_US 0

static void usage(FILE *f, const struct quota_limits *l)
{
	char def_bytes[SIZE_FORMAT_MAX];

	size_format(l->max[QUOTA_BYTES], def_bytes, sizeof(def_bytes));
	fprintf(f,
		"Usage: upagerd [OPTIONS]\n"
		"Serve page faults of upager segments.\n\n"
		"  -s, --socket PATH      listen here (default: $UPAGER_SOCKET,\n"
		"                         $XDG_RUNTIME_DIR/upager.sock,\n"
		"                         /run/upager/upager.sock for root,\n"
		"                         /tmp/upager-$UID.sock otherwise)\n"
		"  -t, --threads N        fault-serving threads (default: CPUs)\n"
		"  -l, --log-level LEVEL  error, warning, notice (default), info, debug\n"
		"  -f, --foreground       stay in the foreground (log to stderr)\n"
		"      --spin-us N        after a fault, look for the next one for N us\n"
		"                         before sleeping (default %u; 0: never spin)\n"
		"      --no-pin           do not pin one worker to each CPU\n"
		"\nLimits per user (N or 'unlimited'; root and the daemon's own user\n"
		"are exempt unless --limit-root):\n"
		"      --max-segments N     segments owned (default %u)\n"
		"      --max-bytes SIZE     total size of the segments owned, e.g. 64G\n"
		"                           (default: a quarter of memory, %s)\n"
		"      --max-connections N  connections open (default %u)\n"
		"      --max-attachments N  attachments (default %u)\n"
		"      --limit-root         apply the limits to root and the daemon's user\n"
		"      --idle-timeout SEC   close a connection with no request and no\n"
		"                           attachment for SEC seconds (default %u;\n"
		"                           0: never)\n"
		"\n"
		"  -h, --help             this text\n"
		"  -V, --version          the version\n",
		DEFAULT_SPIN_US, QUOTA_DEFAULT_SEGMENTS, def_bytes,
		QUOTA_DEFAULT_CONNECTIONS, QUOTA_DEFAULT_ATTACHMENTS,
		QUOTA_DEFAULT_IDLE_SEC);
}

/*
 * A limit of @kind from @arg: a count (bytes: a size such as 64G), or
 * "unlimited".  Returns 0, or 2 after saying what is wrong.
 */
static int parse_limit(struct quota_limits *l, const char *opt, const char *arg,
		       enum quota_kind kind)
{
	uint64_t v;
	char *end;

	if (!strcmp(arg, "unlimited")) {
		l->max[kind] = QUOTA_UNLIMITED;
		return 0;
	}
	if (kind == QUOTA_BYTES) {
		if (size_parse(arg, &v) || v == QUOTA_UNLIMITED) {
			fprintf(stderr,
				"upagerd: --%s: expected a size such as 64G, or 'unlimited', got '%s'\n",
				opt, arg);
			return 2;
		}
	} else {
		errno = 0;
		v = strtoull(arg, &end, 10);
		if (errno || *end || !*arg || *arg == '-' || v > UINT32_MAX) {
			fprintf(stderr,
				"upagerd: --%s: expected 0..%u or 'unlimited', got '%s'\n",
				opt, UINT32_MAX, arg);
			return 2;
		}
	}
	l->max[kind] = v;
	return 0;
}

static const char *limit_text(const struct quota_limits *l,
			      enum quota_kind kind, char *buf, size_t len)
{
	uint64_t v = l->max[kind];

	if (v == QUOTA_UNLIMITED)
		snprintf(buf, len, "unlimited");
	else if (kind == QUOTA_BYTES)
		size_format(v, buf, len);
	else
		snprintf(buf, len, "%llu", (unsigned long long)v);
	return buf;
}

static void uffd_error(const char *what, int err)
{
	if (err == -EPERM)
		pr_err("main",
		       "%s: %s: allow it with 'sysctl vm.unprivileged_userfaultfd=1', or run upagerd as root or with CAP_SYS_PTRACE (a seccomp or security policy may forbid it, too)",
		       what, strerror(-err));
	else if (err == -ENOSYS)
		pr_err("main",
		       "%s: %s: the kernel has no userfaultfd (CONFIG_USERFAULTFD)",
		       what, strerror(-err));
	else
		pr_err("main", "%s: %s", what, strerror(-err));
}

/*
 * The soft descriptor limit up to the hard one: every attachment costs the
 * daemon descriptors (its uffd, a pidfd), and systemd's soft default of
 * 1024 is far from what it may use.
 */
static void raise_nofile(void)
{
	struct rlimit rl;
	rlim_t old;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	old = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		pr_warn("main", "descriptor limit stays %llu: %s",
			(unsigned long long)old, strerror(errno));
	else
		pr_info("main", "descriptor limit raised from %llu to %llu",
			(unsigned long long)old,
			(unsigned long long)rl.rlim_cur);
}

/* Creates the socket's directory for the default root path. */
static void make_parent_dir(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return;
	*slash = '\0';
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		pr_warn("main", "mkdir %s: %s", dir, strerror(errno));
}

/*
 * Whether the socket's directory is safe to work in: a symlink, or a
 * directory another user (root and ourselves aside) owns or may rename
 * entries in, would let that user swap the socket or what we unlink.  A
 * world-writable sticky directory (/tmp) is fine: nobody else may rename
 * or remove our entries there.  Returns 0, or -errno with @why set.
 */
static int parent_dir_safe(const char *path, const char **why)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;
	struct stat st;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	if (lstat(dir, &st) < 0) {
		*why = "its directory cannot be examined";
		return -errno;
	}
	if (S_ISLNK(st.st_mode)) {
		*why = "its directory is a symbolic link";
		return -ELOOP;
	}
	if (!S_ISDIR(st.st_mode)) {
		*why = "its directory is not a directory";
		return -ENOTDIR;
	}
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		*why = "its directory belongs to another user";
		return -EPERM;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
		*why = "its directory is writable by other users";
		return -EPERM;
	}
	return 0;
}

/*
 * Binds @path, refusing when a live daemon answers there and replacing a
 * socket file nobody listens on.  The socket file is made 0666 through the
 * umask at bind (access is decided per segment, by the peer's uid), never
 * by a chmod of the path, which another user could have swapped.
 */
static int listen_on(const char *path, const char **why)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old_umask;
	int fd, ret;

	*why = NULL;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	make_parent_dir(path);
	ret = parent_dir_safe(path, why);
	if (ret)
		return ret;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* No thread runs yet: the umask is ours alone here. */
	old_umask = umask(0111);
	ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old_umask);
	if (ret < 0) {
		struct stat st;
		int probe;

		ret = -errno;
		if (ret != -EADDRINUSE)
			goto err;
		probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (probe >= 0 &&
		    connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			ret = -EADDRINUSE; /* a live daemon */
			goto err;
		}
		if (probe >= 0)
			close(probe);
		if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
			ret = -EEXIST; /* not ours to remove */
			goto err;
		}
		pr_notice("main", "replacing stale socket %s", path);
		unlink(path);
		old_umask = umask(0111);
		ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
		umask(old_umask);
		if (ret < 0) {
			ret = -errno;
			goto err;
		}
	}
	if (listen(fd, 128) < 0) {
		ret = -errno;
		goto err;
	}
	return fd;
err:
	close(fd);
	return ret;
}

static void shutdown_segments(struct daemon *d)
{
	struct segment *seg, *tmp;
	struct attachment *att;

	/* Take every attachment out of service, then drop the segments. */
	for (;;) {
		att = NULL;
		pthread_mutex_lock(&d->lock);
		list_for_each_entry(seg, &d->segments, link) {
			if (!list_empty(&seg->attachments)) {
				att = list_entry(seg->attachments.next,
						 struct attachment, seg_link);
				attach_get(att);
				break;
			}
		}
		pthread_mutex_unlock(&d->lock);
		if (!att)
			break;
		attach_kill(att, "daemon stopping");
		attach_put(att);
		worker_reap_killed(d);
	}
	pthread_mutex_lock(&d->lock);
	list_for_each_entry_safe(seg, tmp, &d->segments, link) {
		list_del_init(&seg->link);
		segment_put(seg);
	}
	pthread_mutex_unlock(&d->lock);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "threads", required_argument, NULL, 't' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "spin-us", required_argument, NULL, 'S' },
		{ "no-pin", no_argument, NULL, 'P' },
		{ "max-segments", required_argument, NULL, 'G' },
		{ "max-bytes", required_argument, NULL, 'B' },
		{ "max-connections", required_argument, NULL, 'C' },
		{ "max-attachments", required_argument, NULL, 'A' },
		{ "limit-root", no_argument, NULL, 'R' },
		{ "idle-timeout", required_argument, NULL, 'I' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{}
	};
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const char *sock = NULL, *why;
	long threads = sysconf(_SC_NPROCESSORS_ONLN);
	bool foreground = false;
	long spin_us = DEFAULT_SPIN_US;
	bool pin = true;
	long started = 0;
	sigset_t mask;
	int c, fd, ret;
	long idle;
	char lim[QUOTA_KINDS][24]; /* "unlimited", a count or a size */
	static struct daemon daemon_state;
	struct daemon *d = &daemon_state;
	struct attachment *att, *next;
	struct quota_limits *ql = &d->limits;

	daemon_init(d);
	while ((c = getopt_long(argc, argv, "s:t:l:fhV", opts, NULL)) != -1) {
		char *end;

		switch (c) {
		case 'G':
			if (parse_limit(ql, "max-segments", optarg,
					QUOTA_SEGMENTS))
				return 2;
			break;
		case 'B':
			if (parse_limit(ql, "max-bytes", optarg, QUOTA_BYTES))
				return 2;
			break;
		case 'C':
			if (parse_limit(ql, "max-connections", optarg,
					QUOTA_CONNECTIONS))
				return 2;
			break;
		case 'A':
			if (parse_limit(ql, "max-attachments", optarg,
					QUOTA_ATTACHMENTS))
				return 2;
			break;
		case 'R':
			ql->limit_root = true;
			break;
		case 'I':
			errno = 0;
			idle = strtol(optarg, &end, 10);
			if (errno || *end || !*optarg || idle < 0 ||
			    idle > 86400 * 365) {
				fprintf(stderr,
					"upagerd: --idle-timeout: expected 0..31536000 seconds, got '%s'\n",
					optarg);
				return 2;
			}
			ql->idle_timeout_ns = idle * 1000000000ull;
			break;
		case 's':
			if (!*optarg) {
				fprintf(stderr,
					"upagerd: --socket: an empty path\nTry 'upagerd --help'.\n");
				return 2;
			}
			sock = optarg;
			break;
		case 't':
			errno = 0;
			threads = strtol(optarg, &end, 10);
			if (errno || *end || threads < 1 || threads > 64) {
				fprintf(stderr,
					"upagerd: --threads: expected 1..64, got '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'l':
			if (log_level_parse(optarg)) {
				fprintf(stderr,
					"upagerd: --log-level: unknown level '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'f':
			foreground = true;
			break;
		case 'P':
			pin = false;
			break;
		case 'S':
			errno = 0;
			spin_us = strtol(optarg, &end, 10);
			if (errno || *end || spin_us < 0 || spin_us > 1000000) {
				fprintf(stderr,
					"upagerd: --spin-us: expected 0..1000000, got '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout, ql);
			return 0;
		case 'V':
			printf("upagerd %s\n", UPAGER_VERSION);
			return 0;
		default:
			fprintf(stderr, "Try 'upagerd --help'.\n");
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr,
			"upagerd: unexpected argument '%s'\nTry 'upagerd --help'.\n",
			argv[optind]);
		return 2;
	}
	if (!sock) {
		if (sockpath_default(path, sizeof(path)) < 0) {
			fprintf(stderr, "upagerd: socket path too long\n");
			return 1;
		}
		sock = path;
	}

	raise_nofile();
	/* The kernel's features, from a throwaway (user-mode-only) uffd. */
	ret = uffd_offered(&d->uffd_features);
	if (ret < 0) {
		uffd_error("userfaultfd", ret);
		return 1;
	}
	/*
	 * The daemon's own uffd, for filling frames through its direct maps.
	 * No fault ever arrives on it: the daemon writes frames there only
	 * with UFFDIO_COPY, which does not fault, and never touches an absent
	 * frame, from user space or in a system call.  User-mode-only costs
	 * nothing then (it is all an unprivileged daemon may have while
	 * vm.unprivileged_userfaultfd is 0, the default), and a kernel-mode
	 * access by mistake fails with EFAULT instead of waiting for ever on
	 * a uffd nobody reads.
	 */
	d->fill_uffd = uffd_open(UFFD_FEATURE_MISSING_SHMEM,
				 UFFD_FEATURE_MISSING_SHMEM,
				 UFFD_OPEN_USER_ONLY, NULL);
	if (d->fill_uffd < 0) {
		uffd_error("userfaultfd for direct maps", d->fill_uffd);
		return 1;
	}
	fd = listen_on(sock, &why);
	if (fd < 0) {
		if (fd == -EADDRINUSE)
			pr_err("main", "%s: another upagerd is listening there",
			       sock);
		else if (why)
			pr_err("main", "%s: refused: %s", sock, why);
		else
			pr_err("main", "%s: %s", sock, strerror(-fd));
		return 1;
	}
	/* From here on, a failed start removes the socket. */
	if (!foreground && daemon(0, 1) < 0) {
		pr_err("main", "daemon: %s", strerror(errno));
		goto fail;
	}
	if (!foreground) {
		/* A uffd serves the mm it was made in: the parent's, which
		 * just exited.  The daemon's own, made again (it worked a
		 * moment ago, in the same process image). */
		close(d->fill_uffd);
		d->fill_uffd = uffd_open(UFFD_FEATURE_MISSING_SHMEM,
					 UFFD_FEATURE_MISSING_SHMEM,
					 UFFD_OPEN_USER_ONLY, NULL);
		if (d->fill_uffd < 0) {
			uffd_error("userfaultfd for direct maps", d->fill_uffd);
			goto fail;
		}
	}

	/* Signals arrive through the main ring's signalfd; workers and the
	 * library's threads never see them. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	d->start_ns = now_ns();
	d->spin_ns = spin_us * 1000;
	d->main_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	d->nr_workers = threads;
	/* One worker per CPU, each pinned to its CPU: attachments follow
	 * their faulting threads (worker.c).  Other counts float. */
	d->pinned = pin && threads == sysconf(_SC_NPROCESSORS_ONLN) &&
		    threads == sysconf(_SC_NPROCESSORS_CONF);
	d->workers = calloc(threads, sizeof(*d->workers));
	if (d->main_efd < 0 || !d->workers) {
		pr_err("main", "setup: %s", strerror(errno));
		goto fail;
	}
	for (; started < threads; started++) {
		ret = worker_start(d, started, &d->workers[started]);
		if (ret) {
			pr_err("main", "worker %ld: %s", started,
			       strerror(-ret));
			goto fail;
		}
	}
	pr_notice("main",
		  "listening on %s with %ld threads (uffd features %#llx)",
		  sock, threads, (unsigned long long)d->uffd_features);
	pr_notice("main",
		  "limits per user%s: %s segments, %s bytes, %s connections, %s attachments; idle connections closed after %llu s%s",
		  ql->limit_root ? "" : " but root and the daemon's",
		  limit_text(ql, QUOTA_SEGMENTS, lim[0], sizeof(lim[0])),
		  limit_text(ql, QUOTA_BYTES, lim[1], sizeof(lim[1])),
		  limit_text(ql, QUOTA_CONNECTIONS, lim[2], sizeof(lim[2])),
		  limit_text(ql, QUOTA_ATTACHMENTS, lim[3], sizeof(lim[3])),
		  (unsigned long long)(ql->idle_timeout_ns / 1000000000ull),
		  ql->idle_timeout_ns ? "" : " (never)");

	ret = server_run(d, fd);

	close(fd);
	unlink(sock);
	shutdown_segments(d);
	for (unsigned int i = 0; i < d->nr_workers; i++)
		worker_stop(d->workers[i]);
	fill_ahead_flush(d);
	for (unsigned int i = 0; i < d->nr_workers; i++)
		worker_free(d->workers[i]);
	/* Killed while the workers stopped: nobody to tell any more. */
	for (att = attach_reap(d); att; att = next) {
		next = att->kill_next;
		attach_put(att);
	}
	free(d->workers);
	close(d->main_efd);
	if (ret) {
		pr_err("main", "event loop: %s", strerror(-ret));
		return 1;
	}
	pr_notice("main", "stopped");
	return 0;
fail:
	close(fd);
	unlink(sock);
	for (long i = 0; i < started; i++)
		worker_stop(d->workers[i]);
	for (long i = 0; i < started; i++)
		worker_free(d->workers[i]);
	free(d->workers);
	if (d->main_efd >= 0)
		close(d->main_efd);
	close(d->fill_uffd);
	return 1;
}
