// SPDX-License-Identifier: MIT
/*
 * upagerd: the daemon.  Parses options, claims the socket, probes the
 * kernel's userfaultfd features, starts the fault-serving workers and runs
 * the control plane until SIGTERM/SIGINT.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include "attach.h"
#include "log.h"
#include "segment.h"
#include "server.h"
#include "uffd-compat.h"
#include "upagerd.h"
#include "worker.h"

struct daemon_state upd = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.segments = LIST_HEAD_INIT(upd.segments),
	.attachments = LIST_HEAD_INIT(upd.attachments),
};

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

#define DEFAULT_SPIN_US 0

static void usage(FILE *f)
{
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
		"  -h, --help             this text\n"
		"  -V, --version          the version\n", DEFAULT_SPIN_US);
}

/* The kernel's userfaultfd features, from a throwaway uffd. */
static int probe_uffd(uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);

	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	close(fd);
	*features = api.features;
	return 0;
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
 * Binds @path, refusing when a live daemon answers there and replacing a
 * socket file nobody listens on.
 */
static int listen_on(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, ret;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	make_parent_dir(path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		struct stat st;
		int probe;

		ret = -errno;
		if (ret != -EADDRINUSE)
			goto err;
		probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (probe >= 0 &&
		    connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			ret = -EADDRINUSE;	/* a live daemon */
			goto err;
		}
		if (probe >= 0)
			close(probe);
		if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode)) {
			ret = -EEXIST;		/* not ours to remove */
			goto err;
		}
		pr_notice("main", "replacing stale socket %s", path);
		unlink(path);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			ret = -errno;
			goto err;
		}
	}
	/* Access is decided per segment, by the peer's uid. */
	chmod(path, 0666);
	if (listen(fd, 128) < 0) {
		ret = -errno;
		goto err;
	}
	return fd;
err:
	close(fd);
	return ret;
}

static void shutdown_segments(void)
{
	struct segment *seg, *tmp;
	struct attachment *att;

	/* Take every attachment out of service, then drop the segments. */
	for (;;) {
		att = NULL;
		pthread_mutex_lock(&upd.lock);
		list_for_each_entry(seg, &upd.segments, link) {
			if (!list_empty(&seg->attachments)) {
				att = list_entry(seg->attachments.next,
						 struct attachment, seg_link);
				attach_get(att);
				break;
			}
		}
		pthread_mutex_unlock(&upd.lock);
		if (!att)
			break;
		attach_kill(att, "daemon stopping");
		attach_put(att);
	}
	pthread_mutex_lock(&upd.lock);
	list_for_each_entry_safe(seg, tmp, &upd.segments, link) {
		list_del_init(&seg->link);
		segment_put(seg);
	}
	pthread_mutex_unlock(&upd.lock);
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
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{}
	};
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const char *sock = NULL;
	long threads = sysconf(_SC_NPROCESSORS_ONLN);
	bool foreground = false;
	long spin_us = DEFAULT_SPIN_US;
	bool pin = true;
	sigset_t mask;
	int c, fd, ret;

	while ((c = getopt_long(argc, argv, "s:t:l:fhV", opts, NULL)) != -1) {
		char *end;

		switch (c) {
		case 's':
			sock = optarg;
			break;
		case 't':
			errno = 0;
			threads = strtol(optarg, &end, 10);
			if (errno || *end || threads < 1 || threads > 256) {
				fprintf(stderr, "upagerd: --threads: expected 1..256, got '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'l':
			if (log_level_parse(optarg)) {
				fprintf(stderr, "upagerd: --log-level: unknown level '%s'\n",
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
				fprintf(stderr, "upagerd: --spin-us: expected 0..1000000, got '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
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
		fprintf(stderr, "upagerd: unexpected argument '%s'\nTry 'upagerd --help'.\n",
			argv[optind]);
		return 2;
	}
	if (!sock) {
		if (upager_socket_path(path, sizeof(path)) < 0) {
			fprintf(stderr, "upagerd: socket path too long\n");
			return 1;
		}
		sock = path;
	}

	ret = probe_uffd(&upd.uffd_features);
	if (ret) {
		pr_err("main", "userfaultfd unavailable: %s", strerror(-ret));
		return 1;
	}
	fd = listen_on(sock);
	if (fd < 0) {
		if (fd == -EADDRINUSE)
			pr_err("main", "%s: another upagerd is listening there",
			       sock);
		else
			pr_err("main", "%s: %s", sock, strerror(-fd));
		return 1;
	}
	if (!foreground && daemon(0, 1) < 0) {
		pr_err("main", "daemon: %s", strerror(errno));
		return 1;
	}

	/* Signals arrive through the main ring's signalfd; workers and the
	 * library's threads never see them. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* The daemon's own uffd, for filling frames through its direct
	 * maps; no fault ever arrives on it (the daemon never touches an
	 * absent frame). */
	upd.fill_uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (upd.fill_uffd >= 0) {
		struct uffdio_api api = { .api = UFFD_API,
					  .features = UFFD_FEATURE_MISSING_SHMEM };

		if (ioctl(upd.fill_uffd, UFFDIO_API, &api) < 0) {
			close(upd.fill_uffd);
			upd.fill_uffd = -1;
		}
	}
	if (upd.fill_uffd < 0) {
		pr_err("main", "userfaultfd for direct maps: %s", strerror(errno));
		return 1;
	}

	upd.start_ns = now_ns();
	upd.spin_ns = spin_us * 1000;
	upd.main_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	upd.nr_workers = threads;
	/* One worker per CPU, each pinned to its CPU: attachments follow
	 * their faulting threads (worker.c).  Other counts float. */
	upd.pinned = pin && threads == sysconf(_SC_NPROCESSORS_ONLN) &&
		     threads == sysconf(_SC_NPROCESSORS_CONF);
	upd.workers = calloc(threads, sizeof(*upd.workers));
	if (upd.main_efd < 0 || !upd.workers) {
		pr_err("main", "setup: %s", strerror(errno));
		return 1;
	}
	for (long i = 0; i < threads; i++) {
		ret = worker_start(i, &upd.workers[i]);
		if (ret) {
			pr_err("main", "worker %ld: %s", i, strerror(-ret));
			return 1;
		}
	}
	pr_notice("main", "listening on %s with %ld threads (uffd features %#llx)",
		  sock, threads, (unsigned long long)upd.uffd_features);

	ret = server_run(fd);

	close(fd);
	unlink(sock);
	shutdown_segments();
	for (unsigned int i = 0; i < upd.nr_workers; i++)
		worker_stop(upd.workers[i]);
	free(upd.workers);
	close(upd.main_efd);
	if (ret) {
		pr_err("main", "event loop: %s", strerror(-ret));
		return 1;
	}
	pr_notice("main", "stopped");
	return 0;
}
