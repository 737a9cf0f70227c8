// SPDX-License-Identifier: MIT
/*
 * libupager: the client side.
 *
 * Attaching maps the segment's memfd (MAP_SHARED; MAP_PRIVATE of a
 * read-only descriptor for a read-only attachment), registers the mapping
 * with a fresh userfaultfd and hands that uffd to the daemon.
 *
 * The one rule everything here follows: a mapping of a segment must never
 * be touchable while no live userfaultfd stands behind it, because the
 * kernel then fills a never-filled page of the shared memfd with zeros,
 * which every process reads as data.  Hence:
 *
 *  - The library keeps its own copy of each uffd.  A watcher thread per
 *    connection sleeps on the daemon's pidfd; when the daemon dies it
 *    answers the faults itself, where it can do so correctly: a page in the
 *    memfd is mapped, a zero-source page is zeroed (in the memfd, so that
 *    other processes' later writes stay visible), any other access gets
 *    SIGBUS in the faulting thread (UFFDIO_POISON).  It finds what an
 *    address maps in /proc/self/maps, so ranges moved or grown by mremap
 *    are answered too.  It takes no lock that fork() holds (see atfork).
 *  - Detach makes every mapping of the attachment inaccessible before it
 *    unregisters the uffd: a thread still touching it gets SIGSEGV, as
 *    under munmap, never a zero page.
 *  - A forked child gets its own uffd from the daemon (the claim) before
 *    fork() returns.  When the daemon is gone by then, the child registers
 *    a uffd of its own and answers its faults itself.
 *
 * No descriptor of the library is ever 0, 1 or 2, and every wait for the
 * daemon is bounded by $UPAGER_TIMEOUT_MS (default 30 s).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>

#include "proto.h"
#include "sockpath.h"
#include "uffd-compat.h"

#define UPAGER_API __attribute__((visibility("default")))

#define DEFAULT_TIMEOUT_MS 30000

struct upager_attachment {
	struct upager *u;
	struct upager_attachment *next;
	void *addr;
	size_t size;
	int memfd;
	int uffd;
	uint64_t seg_id;
	uint64_t attach_id;
	uint32_t source;
	unsigned int flags;
	uint64_t features;	/* of the uffd */
	uint64_t reg_mode;	/* UFFDIO_REGISTER_MODE_* of its mappings */
	dev_t dev;		/* the memfd's inode: what its mappings */
	ino_t ino;		/* show in /proc/self/maps */
};

/*
 * A uffd the watcher answers once the daemon is gone.  Self-contained (its
 * own descriptors), so a detach meanwhile frees nothing it uses: detach
 * only marks it @gone, and the watcher closes it.
 */
#define SERVE_MAX 256	/* see orphan_serve */

struct serve {
	int uffd;
	int memfd;
	dev_t dev;
	ino_t ino;
	uint32_t source;
	uint64_t features;
	const struct upager_attachment *a;
	bool gone;
};

struct upager {
	struct upager *reg_next;	/* every connection, for fork */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int sock;			/* -1: the daemon is gone */
	pid_t pid;			/* the process that connected */
	uid_t daemon_uid;		/* the daemon's identity, pinned at */
	pid_t daemon_pid;		/* connect for the process's life */
	int timeout_ms;
	bool broken;			/* a reply timed out: out of step */
	uint64_t seq;
	uint64_t features;		/* UPG_FEATURE_*, negotiated at hello */
	pthread_mutex_t req_lock;	/* one request at a time */

	pthread_mutex_t att_lock;	/* attachments and watcher state */
	struct upager_attachment *atts;
	pthread_t watcher;
	bool watcher_running;
	int wake_efd;			/* tells the watcher to look again */
	int daemon_pidfd;		/* readable when the daemon is gone */
	_Atomic bool stopping;
	_Atomic bool watcher_ready;

	/* Not taken by the fork handlers: the watcher must be able to read
	 * a fork event while fork() holds the locks above. */
	pthread_mutex_t serve_lock;
	struct serve *serves;
	size_t nr_serves, serves_cap;
};

static int set_errno(int ret)
{
	if (ret < 0)
		errno = -ret;
	return ret;
}

/*
 * Moves @fd to 3 or above: a program started with stdio closed must not
 * find its output going into the daemon's socket.  Returns the new fd, or
 * -errno (and @fd is closed either way).
 */
static int fd_high(int fd)
{
	int nfd, err;

	if (fd < 0)
		return -errno;
	if (fd > 2)
		return fd;
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	err = errno;
	close(fd);
	return nfd < 0 ? -err : nfd;
}

static int timeout_from_env(void)
{
	const char *e = getenv("UPAGER_TIMEOUT_MS");
	char *end;
	long v;

	if (!e || !*e)
		return DEFAULT_TIMEOUT_MS;
	errno = 0;
	v = strtol(e, &end, 10);
	if (errno || *end || v <= 0 || v > INT_MAX)
		return DEFAULT_TIMEOUT_MS;
	return v;
}

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct upager *reg_head;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void child_reconnect(struct upager *u);

/* No request or attachment change may be half done across a fork. */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
	for (struct upager *u = reg_head; u; u = u->reg_next) {
		pthread_mutex_lock(&u->req_lock);
		pthread_mutex_lock(&u->att_lock);
	}
}

static void atfork_parent(void)
{
	for (struct upager *u = reg_head; u; u = u->reg_next) {
		pthread_mutex_unlock(&u->att_lock);
		pthread_mutex_unlock(&u->req_lock);
	}
	pthread_mutex_unlock(&reg_lock);
}

static void atfork_child(void)
{
	atfork_parent();
	for (struct upager *u = reg_head; u; u = u->reg_next)
		child_reconnect(u);
}

static void atfork_register(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

UPAGER_API int upager_socket_path(char *buf, size_t len)
{
	return set_errno(sockpath_default(buf, len));
}

UPAGER_API const char *upager_source_name(uint32_t kind)
{
	switch (kind) {
	case UPAGER_SOURCE_ZERO:
		return "zero";
	case UPAGER_SOURCE_FILE:
		return "file";
	case UPAGER_SOURCE_SNAPSHOT:
		return "snapshot";
	}
	return "unknown";
}

static bool inherited(const struct upager *u)
{
	return u->pid != getpid();
}

/*
 * One reply from the daemon.  Returns its size, or -EPIPE when the daemon
 * hung up, -ETIMEDOUT when it did not answer within the connection's
 * timeout (the connection is out of step then, and fails from now on).
 */
static ssize_t recv_reply(struct upager *u, void *buf, size_t len, int *fd)
{
	ssize_t n = proto_recv(u->sock, buf, len, fd, 0);

	if (n == -EAGAIN || n == -EWOULDBLOCK) {
		u->broken = true;
		return -ETIMEDOUT;
	}
	if (n > 0 && *fd >= 0 && (*fd = fd_high(*fd)) < 0)
		return *fd;
	return n == 0 ? -EPIPE : n;
}

/* Sends a request: 0, or -errno as recv_reply says. */
static int send_request(struct upager *u, void *msg, size_t len,
			uint16_t type, int fd)
{
	int ret;

	if (u->sock < 0)
		return -EPIPE;
	if (u->broken)
		return -ETIMEDOUT;
	proto_hdr_init(msg, type, len, ++u->seq);
	ret = proto_send(u->sock, msg, len, fd, 0);
	if (ret == -EAGAIN || ret == -EWOULDBLOCK) {
		u->broken = true;
		ret = -ETIMEDOUT;
	}
	return ret;
}

/*
 * One request and its reply.  @reply gets the reply (at most @rlen bytes);
 * @rfd a descriptor that came with it.  Returns the reply's status.
 */
static int request(struct upager *u, void *msg, size_t len, uint16_t type,
		   int fd, void *reply, size_t rlen, int *rfd)
{
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));
	struct upg_hdr *r = (struct upg_hdr *)buf;
	int ret, got_fd = -1;
	ssize_t n;

	if (inherited(u))
		return -ECHILD;
	pthread_mutex_lock(&u->req_lock);
	ret = send_request(u, msg, len, type, fd);
	if (ret)
		goto out;
	n = recv_reply(u, buf, sizeof(buf), &got_fd);
	if (n < 0) {
		ret = n;
		goto out;
	}
	if (r->seq != u->seq || r->type != type) {
		ret = -EPROTO;
		goto out;
	}
	ret = r->status;
	if (ret >= 0 && reply) {
		if ((size_t)n != rlen) {
			ret = -EPROTO;
			goto out;
		}
		memcpy(reply, buf, rlen);
	}
	if (ret >= 0 && rfd) {
		*rfd = got_fd;
		got_fd = -1;
	}
out:
	if (got_fd >= 0)
		close(got_fd);
	pthread_mutex_unlock(&u->req_lock);
	return ret;
}

/*
 * A connected socket to @path, with @timeout_ms on every send and receive
 * (connect included), and the peer's credentials in @cred.  Returns the
 * socket or -errno.
 */
static int sock_connect(const char *path, int timeout_ms, struct ucred *cred)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = timeout_ms / 1000,
			      .tv_usec = timeout_ms % 1000 * 1000 };
	socklen_t clen = sizeof(*cred);
	int fd, ret;

	memcpy(sa.sun_path, path, sizeof(sa.sun_path));
	fd = fd_high(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
	if (fd < 0)
		return fd;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &clen) < 0) {
		ret = errno == EAGAIN || errno == EINPROGRESS ? -ETIMEDOUT
							      : -errno;
		close(fd);
		return ret;
	}
	return fd;
}

/* Says hello on a fresh connection. */
static int hello(struct upager *u)
{
	struct upg_hello m = { .features = UPG_FEATURES_KNOWN }, r;
	int ret = request(u, &m, sizeof(m), UPG_HELLO, -1, &r, sizeof(r), NULL);

	if (!ret && (r.features & ~UPG_FEATURES_KNOWN))
		ret = -EPROTO;
	if (!ret)
		u->features = r.features;
	return ret;
}

UPAGER_API int upager_connect(const char *socket_path, struct upager **out)
{
	struct ucred cred;
	struct upager *u;
	int ret;

	if (!out)
		return set_errno(-EINVAL);
	u = calloc(1, sizeof(*u));
	if (!u)
		return set_errno(-ENOMEM);
	u->sock = -1;
	u->wake_efd = -1;
	u->daemon_pidfd = -1;
	if (socket_path) {
		ret = strlen(socket_path) < sizeof(u->path) ? 0 : -ENAMETOOLONG;
		if (!ret)
			strcpy(u->path, socket_path);
	} else {
		ret = upager_socket_path(u->path, sizeof(u->path));
	}
	if (ret < 0) {
		free(u);
		return set_errno(ret);
	}
	pthread_once(&atfork_once, atfork_register);
	u->pid = getpid();
	u->timeout_ms = timeout_from_env();
	pthread_mutex_init(&u->req_lock, NULL);
	pthread_mutex_init(&u->att_lock, NULL);
	pthread_mutex_init(&u->serve_lock, NULL);
	u->sock = sock_connect(u->path, u->timeout_ms, &cred);
	if (u->sock < 0) {
		ret = u->sock;
		goto err;
	}
	/* Only root or ourselves may serve our memory. */
	if (cred.uid != 0 && cred.uid != geteuid()) {
		ret = -EPERM;
		goto err;
	}
	u->daemon_uid = cred.uid;
	u->daemon_pid = cred.pid;
	/* The daemon's death, not a closed connection, orphans our faults.
	 * (No pid across pid namespaces: then the hang-up must do.) */
	if (cred.pid > 0)
		u->daemon_pidfd = fd_high(syscall(SYS_pidfd_open, cred.pid, 0));
	ret = hello(u);
	if (ret)
		goto err;
	pthread_mutex_lock(&reg_lock);
	u->reg_next = reg_head;
	reg_head = u;
	pthread_mutex_unlock(&reg_lock);
	*out = u;
	return 0;
err:
	if (u->sock >= 0)
		close(u->sock);
	if (u->daemon_pidfd >= 0)
		close(u->daemon_pidfd);
	pthread_mutex_destroy(&u->req_lock);
	pthread_mutex_destroy(&u->att_lock);
	pthread_mutex_destroy(&u->serve_lock);
	free(u);
	return set_errno(ret);
}

static int copy_name(char *dst, size_t room, const char *name)
{
	if (!name || !proto_name_valid(name, UPAGER_NAME_MAX + 2))
		return -EINVAL;
	snprintf(dst, room, "%s", name);
	return 0;
}

UPAGER_API int upager_create(struct upager *u, const char *name,
			     const struct upager_create_opts *opts)
{
	struct upg_create m;

	memset(&m, 0, sizeof(m));
	if (!u || !opts || copy_name(m.name, sizeof(m.name), name))
		return set_errno(-EINVAL);
	m.size = opts->size;
	m.mode = opts->mode;
	m.source = opts->source_fd >= 0 ? UPAGER_SOURCE_FILE : UPAGER_SOURCE_ZERO;
	return set_errno(request(u, &m, sizeof(m), UPG_CREATE, opts->source_fd,
				 NULL, 0, NULL));
}

static int name_request(struct upager *u, uint16_t type, const char *name,
			uint32_t flags, uint32_t owner, void *reply,
			size_t rlen, int *rfd)
{
	struct upg_name m;

	memset(&m, 0, sizeof(m));
	if (!u || copy_name(m.name, sizeof(m.name), name))
		return -EINVAL;
	m.flags = flags;
	m.owner = owner;
	return request(u, &m, sizeof(m), type, -1, reply, rlen, rfd);
}

UPAGER_API int upager_delete(struct upager *u, const char *name,
			     unsigned int flags)
{
	return set_errno(name_request(u, UPG_DELETE, name, flags, 0, NULL, 0,
				      NULL));
}

UPAGER_API int upager_stat(struct upager *u, const char *name,
			   struct upager_segment_info *info)
{
	struct upg_info r;
	int ret;

	if (!info)
		return set_errno(-EINVAL);
	ret = name_request(u, UPG_STAT, name, 0, 0, &r, sizeof(r), NULL);
	if (ret >= 0) {
		*info = r.info;
		ret = 0;
	}
	return set_errno(ret);
}

UPAGER_API int upager_list(struct upager *u, struct upager_segment_info *infos,
			   size_t max)
{
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));
	struct upg_hdr m, *r = (struct upg_hdr *)buf;
	size_t n = 0;
	int ret, fd;

	if (!u || (max && !infos))
		return set_errno(-EINVAL);
	if (inherited(u))
		return set_errno(-ECHILD);
	pthread_mutex_lock(&u->req_lock);
	ret = send_request(u, &m, sizeof(m), UPG_LIST, -1);
	while (ret == 0) {
		ssize_t len = recv_reply(u, buf, sizeof(buf), &fd);

		if (len < 0) {
			ret = len;
			break;
		}
		if (fd >= 0)
			close(fd);
		if (r->seq != u->seq) {
			ret = -EPROTO;
		} else if (r->type == UPG_LIST) {
			ret = r->status < 0 ? r->status : (int)n;
			break;
		} else if (r->type != UPG_LIST_ENTRY ||
			   (size_t)len != sizeof(struct upg_info)) {
			ret = -EPROTO;
		} else {
			if (n < max)
				infos[n] = ((struct upg_info *)buf)->info;
			n++;
		}
	}
	pthread_mutex_unlock(&u->req_lock);
	return set_errno(ret);
}

UPAGER_API int upager_stats(struct upager *u, struct upager_daemon_stats *st)
{
	struct upg_stats r;
	struct upg_hdr m;
	int ret;

	if (!u || !st)
		return set_errno(-EINVAL);
	ret = request(u, &m, sizeof(m), UPG_STATS, -1, &r, sizeof(r), NULL);
	if (ret >= 0) {
		*st = r.st;
		ret = 0;
	}
	return set_errno(ret);
}

UPAGER_API int upager_usage(struct upager *u, struct upager_usage *out,
			    size_t max)
{
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));
	struct upg_hdr m, *r = (struct upg_hdr *)buf;
	size_t n = 0;
	int ret, fd;

	if (!u || (max && !out))
		return set_errno(-EINVAL);
	if (inherited(u))
		return set_errno(-ECHILD);
	if (!(u->features & UPG_FEATURE_USAGE))
		return set_errno(-EOPNOTSUPP);
	pthread_mutex_lock(&u->req_lock);
	ret = send_request(u, &m, sizeof(m), UPG_USAGE, -1);
	while (ret == 0) {
		ssize_t len = recv_reply(u, buf, sizeof(buf), &fd);

		if (len < 0) {
			ret = len;
			break;
		}
		if (fd >= 0)
			close(fd);
		if (r->seq != u->seq) {
			ret = -EPROTO;
		} else if (r->type == UPG_USAGE) {
			ret = r->status < 0 ? r->status : (int)n;
			break;
		} else if (r->type != UPG_USAGE_ENTRY ||
			   (size_t)len != sizeof(struct upg_usage)) {
			ret = -EPROTO;
		} else {
			if (n < max)
				out[n] = ((struct upg_usage *)buf)->usage;
			n++;
		}
	}
	pthread_mutex_unlock(&u->req_lock);
	return set_errno(ret);
}

/* userfaultfd */

static const uint64_t wanted_features =
	UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
	UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
	UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_THREAD_ID |
	UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED |
	UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_POISON;

static int uffd_open(void)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	/* Unprivileged, with vm.unprivileged_userfaultfd=0: user faults
	 * only, which is all a mapping touched from user space needs. */
	if (fd < 0 && errno == EPERM)
		fd = syscall(SYS_userfaultfd,
			     O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	return fd_high(fd);
}

/*
 * A userfaultfd with the features we use that the kernel has.  EVENT_FORK
 * needs CAP_SYS_PTRACE: without it, fork children lose the registration,
 * which is why the mapping is then MADV_DONTFORK (see attach).
 */
static int uffd_create(uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = uffd_open(), ret;
	uint64_t want;

	if (fd < 0)
		return fd;
	ret = ioctl(fd, UFFDIO_API, &api);
	close(fd);
	if (ret < 0)
		return -errno;
	want = api.features & wanted_features;
	for (;;) {
		fd = uffd_open();
		if (fd < 0)
			return fd;
		api = (struct uffdio_api){ .api = UFFD_API, .features = want };
		if (ioctl(fd, UFFDIO_API, &api) == 0)
			break;
		ret = -errno;
		close(fd);
		if (ret != -EPERM || !(want & UFFD_FEATURE_EVENT_FORK))
			return ret;
		want &= ~UFFD_FEATURE_EVENT_FORK;
	}
	*features = want;
	return fd;
}

/* The mappings of a memfd in this process, from /proc/self/maps. */

struct vma {
	uintptr_t start, end;
	uint64_t off;		/* file offset at start */
	dev_t dev;
	ino_t ino;
	bool shared;
};

/*
 * Calls @fn for each mapping, stopping when it returns non-zero.  Returns
 * what @fn returned last, or -errno when the maps cannot be read.
 */
static int maps_walk(int (*fn)(const struct vma *, void *), void *arg)
{
	/* No stdio, no malloc: the watcher reads this while another thread
	 * may be inside fork() with the allocator's locks held. */
	char buf[8192];
	size_t have = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	while (!ret) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
		char *line = buf, *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += n;
		buf[have] = '\0';
		while (!ret && (nl = strchr(line, '\n'))) {
			unsigned long long lo, hi, off, ino;
			unsigned int maj, min;
			char perms[8];

			*nl = '\0';
			if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &lo,
				   &hi, perms, &off, &maj, &min, &ino) == 7) {
				struct vma v = {
					.start = lo, .end = hi, .off = off,
					.dev = makedev(maj, min), .ino = ino,
					.shared = perms[3] == 's',
				};

				ret = fn(&v, arg);
			}
			line = nl + 1;
		}
		have -= line - buf;
		if (have == sizeof(buf) - 1) {
			/* A line longer than the buffer (a long path): its
			 * head was parsed at the start, drop the rest. */
			have = 0;
			continue;
		}
		memmove(buf, line, have);
	}
	close(fd);
	return ret;
}

struct vma_find {
	uintptr_t addr;
	struct vma *out;
};

static int vma_find_fn(const struct vma *v, void *arg)
{
	struct vma_find *q = arg;

	if (q->addr < v->start || q->addr >= v->end)
		return 0;
	*q->out = *v;
	return 1;
}

/* The mapping at @addr: 1 (in @out), 0 when none, or -errno. */
static int vma_at(uintptr_t addr, struct vma *out)
{
	struct vma_find q = { .addr = addr, .out = out };

	return maps_walk(vma_find_fn, &q);
}

struct vma_list {
	dev_t dev;
	ino_t ino;
	struct vma *v;
	size_t n;
	int err;
};

static int vma_list_fn(const struct vma *v, void *arg)
{
	struct vma_list *l = arg;
	void *p;

	if (v->ino != l->ino || v->dev != l->dev)
		return 0;
	p = realloc(l->v, (l->n + 1) * sizeof(*l->v));
	if (!p) {
		l->err = -ENOMEM;
		return 1;
	}
	l->v = p;
	l->v[l->n++] = *v;
	return 0;
}

/* Every mapping of (@dev, @ino): the count, with the array in @out. */
static int vmas_of(dev_t dev, ino_t ino, struct vma **out)
{
	struct vma_list l = { .dev = dev, .ino = ino };
	int ret = maps_walk(vma_list_fn, &l);

	if (ret < 0 || l.err) {
		free(l.v);
		return ret < 0 ? ret : l.err;
	}
	*out = l.v;
	return l.n;
}

/*
 * Registers [v->start, v->end) with @uffd in @mode.  For a range already
 * registered through @uffd this succeeds and changes nothing, and it fails
 * with EBUSY for a range registered through another uffd: which is how we
 * tell our mappings from another attachment's of the same segment.
 */
static int uffd_register(int uffd, const struct vma *v, uint64_t mode)
{
	struct uffdio_register r = {
		.range = { .start = v->start, .len = v->end - v->start },
		.mode = mode,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &r) < 0 ? -errno : 0;
}

/*
 * The mappings of @a now, wherever mremap took them: those of its memfd
 * registered through its uffd (all of its memfd's, when @probe is false).
 */
static int att_vmas(struct upager_attachment *a, bool probe, struct vma **out)
{
	struct vma *v;
	int n = vmas_of(a->dev, a->ino, &v), k = 0;

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++)
		if (!probe || uffd_register(a->uffd, &v[i], a->reg_mode) == 0)
			v[k++] = v[i];
	*out = v;
	return k;
}

/* The watcher's list */

static int serve_add(struct upager *u, const struct upager_attachment *a)
{
	struct serve e = {
		.uffd = fcntl(a->uffd, F_DUPFD_CLOEXEC, 3),
		.memfd = fcntl(a->memfd, F_DUPFD_CLOEXEC, 3),
		.dev = a->dev, .ino = a->ino, .source = a->source,
		.features = a->features, .a = a,
	};
	int ret = 0;

	pthread_mutex_lock(&u->serve_lock);
	if (e.uffd < 0 || e.memfd < 0) {
		ret = -errno;
	} else if (u->nr_serves == SERVE_MAX) {
		ret = -EMFILE;	/* attachments of one connection */
	} else if (u->nr_serves == u->serves_cap) {
		size_t cap = u->serves_cap ? 2 * u->serves_cap : 4;
		void *p = realloc(u->serves, cap * sizeof(*u->serves));

		if (p) {
			u->serves = p;
			u->serves_cap = cap;
		} else {
			ret = -ENOMEM;
		}
	}
	if (!ret)
		u->serves[u->nr_serves++] = e;
	pthread_mutex_unlock(&u->serve_lock);
	if (ret) {
		if (e.uffd >= 0)
			close(e.uffd);
		if (e.memfd >= 0)
			close(e.memfd);
	}
	return ret;
}

static void serve_forget(struct upager *u, const struct upager_attachment *a)
{
	pthread_mutex_lock(&u->serve_lock);
	for (size_t i = 0; i < u->nr_serves; i++)
		if (u->serves[i].a == a)
			u->serves[i].gone = true;
	pthread_mutex_unlock(&u->serve_lock);
}

static void serve_close(struct serve *e)
{
	close(e->uffd);
	close(e->memfd);
}

/* Closes what detach left behind.  The watcher's own (or no thread's). */
static void serve_reap(struct upager *u, bool all)
{
	pthread_mutex_lock(&u->serve_lock);
	for (size_t i = 0; i < u->nr_serves;) {
		if (!all && !u->serves[i].gone) {
			i++;
			continue;
		}
		serve_close(&u->serves[i]);
		u->serves[i] = u->serves[--u->nr_serves];
	}
	pthread_mutex_unlock(&u->serve_lock);
}

/* Answering faults after the daemon died */

static long page_size(void)
{
	static long ps;

	if (!ps)
		ps = sysconf(_SC_PAGESIZE);
	return ps;
}

static uint64_t mmap_min_addr = 1ull << 16;

/* Read once, before the watcher may have to run during a fork. */
static void read_mmap_min_addr(void)
{
	char buf[32] = "";
	int fd = open("/proc/sys/vm/mmap_min_addr", O_RDONLY | O_CLOEXEC);
	unsigned long long v;

	if (fd < 0)
		return;
	if (read(fd, buf, sizeof(buf) - 1) > 0 && sscanf(buf, "%llu", &v) == 1 &&
	    v > mmap_min_addr)
		mmap_min_addr = (v + page_size() - 1) & ~(uint64_t)(page_size() - 1);
	close(fd);
}

/*
 * Wakes every thread waiting on @uffd, wherever it faulted: the daemon
 * read those faults and will never answer them; they fault again, to us.
 * The range is the whole user address space, whose top we try from the
 * largest the architecture may have down.
 */
static void uffd_wake_all(int uffd)
{
	static const unsigned int bits[] = { 56, 52, 48, 47, 39 };

	for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		struct uffdio_range r = {
			.start = mmap_min_addr,
			.len = (1ull << bits[i]) - page_size() - mmap_min_addr,
		};

		if (ioctl(uffd, UFFDIO_WAKE, &r) == 0)
			return;
	}
}

/* An ioctl's result, as answer() needs it: 0, -EAGAIN, or 1 to wake. */
static int uffd_result(int ret)
{
	if (ret == 0)
		return 0;
	return errno == EAGAIN ? -EAGAIN : 1;
}

/*
 * A frame for page @off of a zero-source segment, put into the memfd
 * through a shared read-only mapping of our own (a read fault on a hole of
 * a shared shmem mapping allocates the page), so that a private attachment
 * maps the segment's frame, not a private zero page.
 */
static int memfd_materialize(int memfd, off_t off)
{
	void *p = mmap(NULL, page_size(), PROT_READ, MAP_SHARED, memfd, off);

	if (p == MAP_FAILED)
		return -errno;
	(void)*(volatile const char *)p;
	munmap(p, page_size());
	return 0;
}

/*
 * Answers the fault @m on @e's uffd: 0, or -EAGAIN when an event is pending
 * on the uffd (read it, then answer again).  The bytes come from the
 * memfd, or are zeros for a zero source; anything else gets SIGBUS in the
 * faulting thread.
 */
static int answer(const struct serve *e, const struct uffd_msg *m)
{
	uint64_t addr = m->arg.pagefault.address & ~(uint64_t)(page_size() - 1);
	struct uffdio_range r = { .start = addr, .len = page_size() };
	struct vma v;
	int ret;

	if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		struct uffdio_writeprotect wp = { .range = r };

		ret = uffd_result(ioctl(e->uffd, UFFDIO_WRITEPROTECT, &wp));
		goto out;
	}
	ret = vma_at(addr, &v);
	if (ret <= 0) {
		ret = 1;	/* unmapped meanwhile: the refault decides */
		goto out;
	}
	if (v.ino == e->ino && v.dev == e->dev) {
		off_t off = v.off + (addr - v.start);
		bool present = lseek(e->memfd, off, SEEK_DATA) == off;
		struct uffdio_continue c = { .range = r };

		if (!present && e->source == UPAGER_SOURCE_ZERO) {
			if (v.shared) {
				struct uffdio_zeropage z = { .range = r };

				ret = uffd_result(ioctl(e->uffd, UFFDIO_ZEROPAGE,
							&z));
				goto out;
			}
			present = memfd_materialize(e->memfd, off) == 0;
		}
		if (present) {
			/* A shared mapping finds the frame on the refault;
			 * a private one is mapped it. */
			ret = v.shared ? 1 : uffd_result(ioctl(
				e->uffd, UFFDIO_CONTINUE, &c));
			goto out;
		}
	}
	/* The bytes are at the source, which only the daemon reads: the
	 * access fails, and only that thread's. */
	if (e->features & UFFD_FEATURE_POISON) {
		struct uffdio_poison p = { .range = r };

		ret = ioctl(e->uffd, UFFDIO_POISON, &p);
		if (ret < 0 && errno == EEXIST)
			ret = 1;
		else
			ret = uffd_result(ret);
	} else if (e->features & UFFD_FEATURE_THREAD_ID) {
		syscall(SYS_tgkill, getpid(), m->arg.pagefault.feat.ptid,
			SIGBUS);
		ret = 1;
	} else {
		ret = 1;	/* cannot answer it: it faults again */
	}
out:
	if (ret == 1)
		ioctl(e->uffd, UFFDIO_WAKE, &r);
	return ret == -EAGAIN ? -EAGAIN : 0;
}

/*
 * The most uffds one connection's watcher answers, and faults it keeps
 * waiting for an event: fixed, because the watcher must not allocate (a
 * fork in another thread holds the allocator's locks while it waits for
 * the watcher to read its fork event).
 */
#define DEFER_MAX 256

struct deferred {
	int uffd;
	struct uffd_msg m;
};

/*
 * Reads what @e's uffd holds and answers it.  A fault that meets a pending
 * event is kept in @defer (the event is read next) and answered again.  A
 * forked child's uffd is closed at once: the child registers its own (see
 * child_fallback), and holding its ctx would only make it wait.
 */
static void serve_read(const struct serve *e, struct deferred *defer,
		       size_t *nr_defer)
{
	struct uffd_msg m;

	while (read(e->uffd, &m, sizeof(m)) == sizeof(m)) {
		if (m.event == UFFD_EVENT_FORK) {
			close((int)m.arg.fork.ufd);
			continue;
		}
		if (m.event != UFFD_EVENT_PAGEFAULT || answer(e, &m) == 0)
			continue;
		if (*nr_defer < DEFER_MAX) {
			defer[(*nr_defer)++] = (struct deferred){ e->uffd, m };
		} else {
			struct uffdio_range r = {
				.start = m.arg.pagefault.address &
					 ~(uint64_t)(page_size() - 1),
				.len = page_size(),
			};

			ioctl(e->uffd, UFFDIO_WAKE, &r);	/* refaults */
		}
	}
}

static void orphan_serve(struct upager *u)
{
	struct deferred defer[DEFER_MAX];
	struct serve snap[SERVE_MAX];
	struct pollfd pfd[SERVE_MAX + 1];
	size_t nr_defer = 0, n;

	pthread_mutex_lock(&u->serve_lock);
	for (size_t i = 0; i < u->nr_serves; i++)
		uffd_wake_all(u->serves[i].uffd);
	pthread_mutex_unlock(&u->serve_lock);

	while (!atomic_load(&u->stopping)) {
		uint64_t v;
		size_t k;

		/* The list as it is now; only this thread closes its fds. */
		serve_reap(u, false);
		pthread_mutex_lock(&u->serve_lock);
		n = u->nr_serves;
		memcpy(snap, u->serves, n * sizeof(*snap));
		pthread_mutex_unlock(&u->serve_lock);
		pfd[0] = (struct pollfd){ .fd = u->wake_efd, .events = POLLIN };
		for (size_t i = 0; i < n; i++)
			pfd[i + 1] = (struct pollfd){ .fd = snap[i].uffd,
						      .events = POLLIN };
		if (poll(pfd, n + 1, nr_defer ? 1 : -1) < 0 && errno != EINTR)
			break;
		if ((pfd[0].revents & POLLIN) &&
		    read(u->wake_efd, &v, sizeof(v)) < 0)
			v = 0;
		for (size_t i = 0; i < n; i++)
			if (pfd[i + 1].revents & POLLIN)
				serve_read(&snap[i], defer, &nr_defer);
		/* Faults that met an event: the event is read now. */
		k = 0;
		for (size_t i = 0; i < nr_defer; i++) {
			size_t j;

			for (j = 0; j < n && snap[j].uffd != defer[i].uffd; j++)
				;
			if (j < n && answer(&snap[j], &defer[i].m) == -EAGAIN)
				defer[k++] = defer[i];
		}
		nr_defer = k;
	}
}

static bool daemon_gone(struct upager *u, int wait_ms)
{
	struct pollfd p = { .fd = u->daemon_pidfd, .events = POLLIN };

	if (u->daemon_pidfd < 0)
		return u->sock < 0;
	return poll(&p, 1, wait_ms) > 0;
}

static void *watcher_main(void *arg)
{
	struct upager *u = arg;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	atomic_store(&u->watcher_ready, true);
	for (;;) {
		struct pollfd pfd[2] = {
			u->daemon_pidfd >= 0 ?
				(struct pollfd){ .fd = u->daemon_pidfd,
						 .events = POLLIN } :
				(struct pollfd){ .fd = u->sock, .events = 0 },
			{ .fd = u->wake_efd, .events = POLLIN },
		};

		serve_reap(u, false);
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			return NULL;
		/* Consume the kick before looking at why: a stop that comes
		 * after the look kicks again. */
		if (pfd[1].revents & POLLIN) {
			uint64_t v;

			if (read(u->wake_efd, &v, sizeof(v)) < 0)
				v = 0;
		}
		if (atomic_load(&u->stopping))
			return NULL;
		if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR) ||
		    u->sock < 0) {
			orphan_serve(u);
			return NULL;
		}
	}
}

static int watcher_start(struct upager *u)
{
	int ret = 0;

	page_size();
	read_mmap_min_addr();
	pthread_mutex_lock(&u->att_lock);
	if (!u->watcher_running) {
		u->wake_efd = fd_high(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
		if (u->wake_efd < 0)
			ret = u->wake_efd;
		else
			ret = -pthread_create(&u->watcher, NULL, watcher_main, u);
		if (!ret)
			u->watcher_running = true;
	}
	pthread_mutex_unlock(&u->att_lock);
	/*
	 * Return only once the thread runs its own code: a fork while it
	 * is still being set up (allocating, in an ASan build, under the
	 * allocator's lock) would leave the child a lock nobody unlocks.
	 */
	while (!ret && !atomic_load(&u->watcher_ready))
		sched_yield();
	return ret;
}

static void watcher_kick(struct upager *u)
{
	uint64_t one = 1;

	if (u->wake_efd >= 0 && write(u->wake_efd, &one, sizeof(one)) < 0)
		return;
}

/* Attach / detach */

/*
 * upager_attach(); @wire: more UPG_ATTACH flags for the request (the
 * owner check, with @owner).
 */
static int attach(struct upager *u, const char *name, unsigned int flags,
		  uint32_t wire, uint32_t owner, struct upager_attachment **out)
{
	struct upg_attach_reply ar;
	struct upg_register reg;
	struct upg_register_reply rr;
	struct uffdio_register ur;
	struct upager_attachment *a;
	struct stat st;
	uint64_t features = 0;
	int prot = PROT_READ, ret;

	if (!u || !out || (flags & ~UPAGER_ATTACH_RDONLY))
		return set_errno(-EINVAL);
	a = calloc(1, sizeof(*a));
	if (!a)
		return set_errno(-ENOMEM);
	a->u = u;
	a->memfd = -1;
	a->uffd = -1;
	a->addr = MAP_FAILED;
	a->flags = flags;
	ret = name_request(u, UPG_ATTACH, name, flags | wire, owner, &ar,
			   sizeof(ar), &a->memfd);
	if (ret < 0)
		goto err;
	if (a->memfd < 0 || fstat(a->memfd, &st) < 0) {
		ret = -EPROTO;
		goto err;
	}
	a->dev = st.st_dev;
	a->ino = st.st_ino;
	a->seg_id = ar.seg_id;
	a->size = ar.size;
	a->source = ar.source;
	/*
	 * Read-only: the fd is open read-only, and userfaultfd refuses a
	 * shared mapping that could never be written.  A private one is
	 * accepted: the daemon fills its frames in the memfd and maps them
	 * with UFFDIO_CONTINUE (minor faults), so they are still the shared
	 * frames, and this process cannot change them.
	 */
	if (!(flags & UPAGER_ATTACH_RDONLY))
		prot |= PROT_WRITE;
	a->addr = mmap(NULL, a->size, prot,
		       flags & UPAGER_ATTACH_RDONLY ? MAP_PRIVATE : MAP_SHARED,
		       a->memfd, 0);
	if (a->addr == MAP_FAILED) {
		ret = -errno;
		goto err;
	}
	ret = uffd_create(&features);
	if (ret < 0)
		goto err;
	a->uffd = ret;
	a->features = features;
	/* Without fork events a child's copy of the range would be served
	 * by nobody (zeros): it does not inherit the mapping then. */
	if (!(features & UFFD_FEATURE_EVENT_FORK))
		madvise(a->addr, a->size, MADV_DONTFORK);
	a->reg_mode = UFFDIO_REGISTER_MODE_MISSING;
	/* Write-protect mode now, so snapshots need no re-registration. */
	if (!(flags & UPAGER_ATTACH_RDONLY) &&
	    (features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
		a->reg_mode |= UFFDIO_REGISTER_MODE_WP;
	if (flags & UPAGER_ATTACH_RDONLY) {
		if (!(features & UFFD_FEATURE_MINOR_SHMEM)) {
			ret = -EOPNOTSUPP;
			goto err;
		}
		a->reg_mode |= UFFDIO_REGISTER_MODE_MINOR;
	}
	ur = (struct uffdio_register){
		.range = { .start = (uintptr_t)a->addr, .len = a->size },
		.mode = a->reg_mode,
	};
	if (ioctl(a->uffd, UFFDIO_REGISTER, &ur) < 0) {
		ret = -errno;
		goto err;
	}
	ret = watcher_start(u);
	if (!ret)
		ret = serve_add(u, a);
	if (ret < 0)
		goto err;
	memset(&reg, 0, sizeof(reg));
	reg.seg_id = a->seg_id;
	reg.addr = (uintptr_t)a->addr;
	reg.len = a->size;
	reg.uffd_features = features;
	reg.uffd_ioctls = ur.ioctls;
	reg.flags = flags & UPAGER_ATTACH_RDONLY ? UPG_REGISTER_RDONLY : 0;
	ret = request(u, &reg, sizeof(reg), UPG_REGISTER, a->uffd, &rr,
		      sizeof(rr), NULL);
	if (ret < 0) {
		serve_forget(u, a);
		watcher_kick(u);
		goto err;
	}
	a->attach_id = rr.attach_id;
	pthread_mutex_lock(&u->att_lock);
	a->next = u->atts;
	u->atts = a;
	pthread_mutex_unlock(&u->att_lock);
	*out = a;
	return 0;
err:
	/* The uffd goes first: munmap of a range registered with unmap
	 * events would wait for a reader that is not there.  Nothing has
	 * touched the mapping: its address was never handed out. */
	if (a->uffd >= 0)
		close(a->uffd);
	if (a->addr != MAP_FAILED)
		munmap(a->addr, a->size);
	if (a->memfd >= 0)
		close(a->memfd);
	free(a);
	return set_errno(ret);
}

UPAGER_API int upager_attach(struct upager *u, const char *name,
			     unsigned int flags, struct upager_attachment **out)
{
	return attach(u, name, flags, 0, 0, out);
}

UPAGER_API int upager_attach_owner(struct upager *u, const char *name,
				   unsigned int flags, uint32_t owner_uid,
				   struct upager_attachment **out)
{
	if (u && !(u->features & UPG_FEATURE_OWNER))
		return set_errno(-EOPNOTSUPP);
	return attach(u, name, flags, UPG_ATTACH_OWNER, owner_uid, out);
}

UPAGER_API void *upager_attachment_addr(const struct upager_attachment *a)
{
	return a ? a->addr : NULL;
}

UPAGER_API size_t upager_attachment_size(const struct upager_attachment *a)
{
	return a ? a->size : 0;
}

/*
 * Unmaps every mapping of @a, wherever mremap moved it.  Each becomes
 * inaccessible before its range stops being served (unregistered, or its
 * uffd closed): a thread that still touches it gets SIGSEGV, as it would
 * under munmap, instead of a zero page in the segment.  @own: the uffd is
 * ours (not a forked child's inherited copy of the parent's).
 */
static void att_unmap(struct upager_attachment *a, bool own)
{
	struct vma *v = NULL, whole = {
		.start = (uintptr_t)a->addr,
		.end = (uintptr_t)a->addr + a->size,
	};
	int n = att_vmas(a, own, &v);

	if (n < 0) {
		/* /proc unreadable: the range as we mapped it. */
		v = &whole;
		n = 1;
	}
	for (int i = 0; i < n; i++)
		mprotect((void *)v[i].start, v[i].end - v[i].start, PROT_NONE);
	for (int i = 0; own && i < n; i++) {
		struct uffdio_range r = { .start = v[i].start,
					  .len = v[i].end - v[i].start };

		/* Else munmap would wait for the daemon to read its unmap
		 * event. */
		ioctl(a->uffd, UFFDIO_UNREGISTER, &r);
	}
	for (int i = 0; i < n; i++)
		munmap((void *)v[i].start, v[i].end - v[i].start);
	if (v != &whole)
		free(v);
}

UPAGER_API int upager_detach(struct upager_attachment *a)
{
	struct upager *u;
	struct upager_attachment **pp;
	struct upg_detach m;
	int ret = 0;

	if (!a)
		return 0;
	u = a->u;
	pthread_mutex_lock(&u->att_lock);
	for (pp = &u->atts; *pp; pp = &(*pp)->next) {
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	}
	pthread_mutex_unlock(&u->att_lock);
	if (!inherited(u)) {
		serve_forget(u, a);
		att_unmap(a, true);
		memset(&m, 0, sizeof(m));
		m.attach_id = a->attach_id;
		ret = request(u, &m, sizeof(m), UPG_DETACH, -1, NULL, 0, NULL);
		if (ret == -EPIPE || ret == -ECONNRESET || ret == -ENOTCONN)
			ret = 0;	/* the daemon is gone: nothing to tell */
		watcher_kick(u);
	} else {
		/* The child's range belongs to the uffd the daemon got at
		 * fork; ours is the parent's.  The daemon sees the unmap. */
		att_unmap(a, false);
	}
	if (a->uffd >= 0)
		close(a->uffd);
	close(a->memfd);
	free(a);
	return set_errno(ret);
}

UPAGER_API void upager_disconnect(struct upager *u)
{
	if (!u)
		return;
	pthread_mutex_lock(&reg_lock);
	for (struct upager **pp = &reg_head; *pp; pp = &(*pp)->reg_next) {
		if (*pp == u) {
			*pp = u->reg_next;
			break;
		}
	}
	pthread_mutex_unlock(&reg_lock);
	while (u->atts)
		upager_detach(u->atts);
	if (u->watcher_running && !inherited(u)) {
		atomic_store(&u->stopping, true);
		watcher_kick(u);
		pthread_join(u->watcher, NULL);
	}
	/* (An inherited connection's watcher stayed in the parent.) */
	serve_reap(u, true);
	free(u->serves);
	if (u->wake_efd >= 0)
		close(u->wake_efd);
	if (u->daemon_pidfd >= 0)
		close(u->daemon_pidfd);
	if (u->sock >= 0)
		close(u->sock);
	pthread_mutex_destroy(&u->req_lock);
	pthread_mutex_destroy(&u->att_lock);
	pthread_mutex_destroy(&u->serve_lock);
	free(u);
}

/*
 * In a fork child, before fork() returns: a connection of our own, and our
 * own uffd for each attachment (see the top of this file).  Only the
 * forking thread exists here and nothing touches the mappings until we
 * return.
 */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/*
 * A page at an address derived from our pid, which no sibling forked from
 * the same parent has mapped: the daemon proves with it which uffd is ours
 * (see struct upg_claim).
 */
static void *probe_map(void)
{
	long ps = page_size();
	uintptr_t slot = (uintptr_t)(getpid() & 0x3fffff) * 2 * ps;

	for (uintptr_t base = 0x500000000000; base <= 0x700000000000;
	     base += 0x100000000000) {
		void *p = mmap((void *)(base + slot), ps, PROT_READ,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			       -1, 0);

		if (p == (void *)(base + slot))
			return p;
		if (p != MAP_FAILED)
			munmap(p, ps);	/* an old kernel ignored the hint */
	}
	return MAP_FAILED;
}

static int claim(struct upager *u, struct upager_attachment *a, void *probe)
{
	struct upg_claim m;
	struct upg_register_reply r;
	int fd = -1, ret;

	/* The daemon may not have read the fork event yet: -EAGAIN. */
	for (int i = 0; i < 2000; i++) {
		memset(&m, 0, sizeof(m));
		m.parent_attach_id = a->attach_id;
		m.probe_addr = (uintptr_t)probe;
		ret = request(u, &m, sizeof(m), UPG_CLAIM, -1, &r, sizeof(r), &fd);
		if (ret != -EAGAIN)
			break;
		usleep(500);
	}
	if (ret < 0)
		return ret;
	if (fd < 0)
		return -EPROTO;
	if (a->uffd >= 0)
		close(a->uffd);		/* the parent's */
	a->uffd = fd;
	a->attach_id = r.attach_id;
	return 0;
}

/*
 * Registers every mapping of @a's memfd with a uffd of our own, in the
 * child, once the daemon is gone: until then the daemon's copy of our
 * uffd (or the dying daemon's io_uring) holds the registration and this
 * fails with EBUSY, so it is retried for the connection's timeout.  A
 * mapping registered already through @mine (another attachment of the
 * same segment, done first) is ours.  Returns 0 or -errno.
 */
static int child_register(struct upager *u, struct upager_attachment *a,
			  int uffd, struct upager_attachment *mine)
{
	uint64_t deadline = 0;
	struct vma *v;
	int n = vmas_of(a->dev, a->ino, &v), ret = 0;

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		for (;;) {
			struct timespec ts;
			uint64_t now;

			ret = uffd_register(uffd, &v[i], a->reg_mode);
			if (ret != -EBUSY || (mine &&
			    uffd_register(mine->uffd, &v[i], mine->reg_mode) == 0)) {
				ret = ret == -EBUSY ? 0 : ret;
				break;
			}
			clock_gettime(CLOCK_MONOTONIC, &ts);
			now = ts.tv_sec * 1000ull + ts.tv_nsec / 1000000;
			if (!deadline)
				deadline = now + u->timeout_ms;
			if (now > deadline)
				break;
			usleep(1000);
		}
		if (ret)
			break;
	}
	if (ret) {
		/* Nobody will serve these: inaccessible beats zeros. */
		for (int i = 0; i < n; i++)
			mprotect((void *)v[i].start, v[i].end - v[i].start,
				 PROT_NONE);
	}
	free(v);
	return ret;
}

/*
 * The daemon died before the child had its own uffd: register our own and
 * answer our faults ourselves, as the parent does.
 */
static void child_fallback(struct upager *u)
{
	struct upager_attachment *a, *prev = NULL;

	if (u->sock >= 0)
		close(u->sock);
	u->sock = -1;
	u->pid = getpid();
	for (a = u->atts; a; prev = a, a = a->next) {
		uint64_t features;
		int fd = uffd_create(&features);

		if (a->uffd >= 0)
			close(a->uffd);		/* the parent's */
		a->uffd = fd;
		if (fd < 0)
			continue;
		a->features = features;
		child_register(u, a, fd, prev && prev->ino == a->ino &&
					 prev->uffd >= 0 ? prev : NULL);
		serve_add(u, a);
	}
	if (u->atts && watcher_start(u) == 0)
		watcher_kick(u);
}

static void child_reconnect(struct upager *u)
{
	struct upager_attachment *a, **pp;
	int old = u->sock, ret;
	pid_t parent = u->pid;
	struct ucred cred;
	void *probe;

	/* The parent's watcher did not come along; its list holds the
	 * parent's uffds, which must not be used here. */
	u->watcher_running = false;
	atomic_store(&u->watcher_ready, false);
	if (u->wake_efd >= 0)
		close(u->wake_efd);
	u->wake_efd = -1;
	pthread_mutex_init(&u->serve_lock, NULL);
	serve_reap(u, true);
	/* Mappings made MADV_DONTFORK (no fork events) are not here. */
	for (pp = &u->atts; (a = *pp);) {
		if (a->features & UFFD_FEATURE_EVENT_FORK) {
			pp = &a->next;
			continue;
		}
		*pp = a->next;
		close(a->uffd);
		close(a->memfd);
		free(a);
	}
	ret = sock_connect(u->path, u->timeout_ms, &cred);
	if (ret >= 0 && (cred.uid != u->daemon_uid ||
			 (u->daemon_pid > 0 && cred.pid != u->daemon_pid))) {
		/* Not the daemon we attached through: tell it nothing. */
		close(ret);
		ret = -EPERM;
	}
	if (ret < 0)
		goto fail;
	u->sock = ret;
	u->pid = getpid();
	u->seq = 0;
	u->broken = false;
	ret = hello(u);
	if (ret)
		goto fail_sock;
	probe = probe_map();
	if (probe == MAP_FAILED) {
		ret = -ENOMEM;
		goto fail_sock;
	}
	for (a = u->atts; a; a = a->next)
		if ((ret = claim(u, a, probe)))
			break;
	munmap(probe, page_size());
	if (ret)
		goto fail_sock;
	close(old);
	for (a = u->atts; a; a = a->next)
		serve_add(u, a);
	if (u->atts)
		watcher_start(u);
	return;
fail_sock:
	close(u->sock);
fail:
	u->sock = old;
	u->pid = parent;
	u->broken = false;
	/*
	 * The daemon gone (or going: its socket refuses, or it hung up
	 * mid-claim, while its pidfd may take a moment to say so): nobody
	 * else will hold our uffds.  Alive: it serves our faults through
	 * the fork event all the same, on the parent's connection.
	 */
	if (daemon_gone(u, ret == -EPIPE || ret == -ECONNRESET ? 1000 :
			   ret == -ECONNREFUSED || ret == -ENOENT ? 250 : 0))
		child_fallback(u);
}
