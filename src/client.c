// SPDX-License-Identifier: MIT
/*
 * libupager: the client side.
 *
 * Attaching maps the segment's memfd MAP_SHARED, registers the mapping
 * with a fresh userfaultfd and hands that uffd to the daemon.  The library
 * keeps its own reference to the uffd for one reason: if the daemon dies,
 * nobody else would answer the mapping's faults, and a thread touching an
 * absent page would hang; had the library closed its reference too, the
 * kernel would fill such pages with zeros, silently.  So each connection
 * has a watcher thread that sleeps until the socket hangs up and then
 * serves the faults itself, where it can do so correctly: a page already
 * in the memfd is mapped, a zero-source page is zeroed, and any other
 * access fails with SIGBUS (UFFDIO_POISON).  Never a wrong byte.
 *
 * A forked child inherits the mappings; the daemon gets the child's uffd
 * from UFFD_EVENT_FORK and serves it.  In the child, before fork() returns,
 * a pthread_atfork handler connects anew (the inherited socket is the
 * parent's), claims each attachment's new uffd from the daemon and starts
 * the child's own watcher, so the child is as safe from a daemon crash as
 * its parent and its connection works.  If the claim fails, the child's
 * connection stays the parent's: calls other than detach and disconnect
 * fail with -ECHILD there.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include "proto.h"
#include "uffd-compat.h"

#define UPAGER_API __attribute__((visibility("default")))

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
};

/*
 * A uffd the watcher serves after the daemon died: an attachment's, or a
 * forked child's that the kernel handed us then.  Self-contained (its own
 * descriptors, the geometry copied), so a detach meanwhile frees nothing
 * it uses; @a only names the attachment, to notice the detach.
 */
struct orphan {
	int uffd;
	int memfd;
	uintptr_t base;
	size_t size;
	uint32_t source;
	unsigned int flags;
	const struct upager_attachment *a;	/* NULL: a child's, kept */
};

struct upager {
	struct upager *reg_next;	/* every connection, for fork */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int sock;
	pid_t pid;			/* the process that connected */
	uint64_t seq;
	pthread_mutex_t req_lock;	/* one request at a time */

	pthread_mutex_t att_lock;	/* attachments and watcher state */
	struct upager_attachment *atts;
	pthread_t watcher;
	bool watcher_running;
	int wake_efd;			/* tells the watcher to look again */
	int daemon_pidfd;		/* readable when the daemon is gone */
	_Atomic bool stopping;
	_Atomic bool watcher_ready;
};

static int set_errno(int ret)
{
	if (ret < 0)
		errno = -ret;
	return ret;
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
	const char *env = getenv("UPAGER_SOCKET");
	int n;

	if (env && *env)
		n = snprintf(buf, len, "%s", env);
	else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
		n = snprintf(buf, len, "%s/upager.sock", env);
	else if (geteuid() == 0)
		n = snprintf(buf, len, "/run/upager/upager.sock");
	else
		n = snprintf(buf, len, "/tmp/upager-%u.sock", (unsigned)geteuid());
	if (n < 0 || (size_t)n >= len ||
	    (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return set_errno(-ENAMETOOLONG);
	return n;
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
 * One request and its reply.  @reply gets the reply (at most @rlen bytes);
 * @rfd a descriptor that came with it.  Returns the reply's status.
 */
static int request(struct upager *u, void *msg, size_t len, uint16_t type,
		   int fd, void *reply, size_t rlen, int *rfd)
{
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));
	struct upg_hdr *h = msg, *r = (struct upg_hdr *)buf;
	int ret, got_fd = -1;
	ssize_t n;

	if (inherited(u))
		return -ECHILD;
	pthread_mutex_lock(&u->req_lock);
	proto_hdr_init(h, type, len, ++u->seq);
	ret = proto_send(u->sock, msg, len, fd, 0);
	if (ret)
		goto out;
	n = proto_recv(u->sock, buf, sizeof(buf), &got_fd, 0);
	if (n <= 0) {
		ret = n == 0 ? -EPIPE : (int)n;
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

UPAGER_API int upager_connect(const char *socket_path, struct upager **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct upg_hello hello = { .features = UPG_FEATURES_KNOWN }, rh;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	struct upager *u;
	int ret;

	if (!out)
		return set_errno(-EINVAL);
	if (socket_path) {
		if (strlen(socket_path) >= sizeof(sa.sun_path))
			return set_errno(-ENAMETOOLONG);
		strcpy(sa.sun_path, socket_path);
	} else {
		ret = upager_socket_path(sa.sun_path, sizeof(sa.sun_path));
		if (ret < 0)
			return ret;
	}
	pthread_once(&atfork_once, atfork_register);
	u = calloc(1, sizeof(*u));
	if (!u)
		return set_errno(-ENOMEM);
	memcpy(u->path, sa.sun_path, sizeof(u->path));
	u->pid = getpid();
	u->wake_efd = -1;
	u->daemon_pidfd = -1;
	pthread_mutex_init(&u->req_lock, NULL);
	pthread_mutex_init(&u->att_lock, NULL);
	u->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (u->sock < 0 ||
	    connect(u->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockopt(u->sock, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) {
		ret = -errno;
		goto err;
	}
	/* Only root or ourselves may serve our memory. */
	if (cred.uid != 0 && cred.uid != geteuid()) {
		ret = -EPERM;
		goto err;
	}
	/* The daemon's death, not a closed connection, orphans our faults.
	 * (No pid across pid namespaces: then the hang-up must do.) */
	u->daemon_pidfd = cred.pid > 0 ? syscall(SYS_pidfd_open, cred.pid, 0) : -1;
	ret = request(u, &hello, sizeof(hello), UPG_HELLO, -1, &rh, sizeof(rh),
		      NULL);
	if (ret)
		goto err;
	if (rh.features & ~UPG_FEATURES_KNOWN) {
		ret = -EPROTO;
		goto err;
	}
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
			uint32_t flags, void *reply, size_t rlen, int *rfd)
{
	struct upg_name m;

	memset(&m, 0, sizeof(m));
	if (!u || copy_name(m.name, sizeof(m.name), name))
		return -EINVAL;
	m.flags = flags;
	return request(u, &m, sizeof(m), type, -1, reply, rlen, rfd);
}

UPAGER_API int upager_delete(struct upager *u, const char *name,
			     unsigned int flags)
{
	return set_errno(name_request(u, UPG_DELETE, name, flags, NULL, 0, NULL));
}

UPAGER_API int upager_stat(struct upager *u, const char *name,
			   struct upager_segment_info *info)
{
	struct upg_info r;
	int ret;

	if (!info)
		return set_errno(-EINVAL);
	ret = name_request(u, UPG_STAT, name, 0, &r, sizeof(r), NULL);
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
	proto_hdr_init(&m, UPG_LIST, sizeof(m), ++u->seq);
	ret = proto_send(u->sock, &m, sizeof(m), -1, 0);
	while (ret == 0) {
		ssize_t len = proto_recv(u->sock, buf, sizeof(buf), &fd, 0);

		if (len <= 0) {
			ret = len == 0 ? -EPIPE : (int)len;
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
	return fd < 0 ? -errno : fd;
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

/* The watcher: serves our own faults once the daemon is gone. */

static void orphan_answer(struct orphan *o, const struct uffd_msg *m)
{
	long ps = sysconf(_SC_PAGESIZE);
	uint64_t addr = m->arg.pagefault.address & ~(uint64_t)(ps - 1);
	struct uffdio_range r = { .start = addr, .len = ps };

	if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		struct uffdio_writeprotect wp = { .range = r };

		ioctl(o->uffd, UFFDIO_WRITEPROTECT, &wp);
		return;
	}
	if (addr >= o->base && addr - o->base < o->size) {
		off_t off = addr - o->base;

		if (lseek(o->memfd, off, SEEK_DATA) == off) {
			struct uffdio_continue c = { .range = r };

			if (!(o->flags & UPAGER_ATTACH_RDONLY) ||
			    ioctl(o->uffd, UFFDIO_CONTINUE, &c) < 0)
				ioctl(o->uffd, UFFDIO_WAKE, &r);
			return;
		}
		if (o->source == UPAGER_SOURCE_ZERO) {
			struct uffdio_zeropage z = { .range = r };

			if (ioctl(o->uffd, UFFDIO_ZEROPAGE, &z) < 0)
				ioctl(o->uffd, UFFDIO_WAKE, &r);
			return;
		}
	}
	/* The bytes are at the source, which only the daemon reads (or the
	 * range moved and its offset is unknown): fail the access. */
	struct uffdio_poison p = { .range = r };
	if (ioctl(o->uffd, UFFDIO_POISON, &p) < 0 && errno != EEXIST)
		kill(getpid(), SIGBUS);
}

static void orphan_close(struct orphan *o)
{
	close(o->uffd);
	close(o->memfd);
}

static int orphan_add(struct orphan **os, size_t *n, const struct orphan *o)
{
	void *p = realloc(*os, (*n + 1) * sizeof(**os));

	if (!p)
		return -ENOMEM;
	*os = p;
	(*os)[(*n)++] = *o;
	return 0;
}

static bool listed(struct upager *u, const struct upager_attachment *a)
{
	for (struct upager_attachment *it = u->atts; it; it = it->next)
		if (it == a)
			return true;
	return false;
}

static void orphan_serve(struct upager *u)
{
	struct orphan *os = NULL, o;
	struct upager_attachment *a;
	size_t n = 0;

	pthread_mutex_lock(&u->att_lock);
	for (a = u->atts; a; a = a->next) {
		struct uffdio_range r = { .start = (uintptr_t)a->addr,
					  .len = a->size };

		o = (struct orphan){
			.uffd = fcntl(a->uffd, F_DUPFD_CLOEXEC, 3),
			.memfd = fcntl(a->memfd, F_DUPFD_CLOEXEC, 3),
			.base = (uintptr_t)a->addr, .size = a->size,
			.source = a->source, .flags = a->flags, .a = a,
		};
		if (o.uffd < 0 || o.memfd < 0 || orphan_add(&os, &n, &o)) {
			orphan_close(&o);
			continue;
		}
		/* Faults the daemon read but never answered are lost with
		 * it: wake their threads so they fault again, to us. */
		ioctl(a->uffd, UFFDIO_WAKE, &r);
	}
	pthread_mutex_unlock(&u->att_lock);

	while (!atomic_load(&u->stopping)) {
		struct pollfd *pfd = calloc(n + 1, sizeof(*pfd));
		size_t live = n;

		if (!pfd)
			break;
		pfd[0] = (struct pollfd){ .fd = u->wake_efd, .events = POLLIN };
		for (size_t i = 0; i < n; i++)
			pfd[i + 1] = (struct pollfd){ .fd = os[i].uffd,
						      .events = POLLIN };
		if (poll(pfd, n + 1, -1) < 0 && errno != EINTR) {
			free(pfd);
			break;
		}
		if (pfd[0].revents & POLLIN) {
			uint64_t v;

			if (read(u->wake_efd, &v, sizeof(v)) < 0)
				v = 0;
		}
		for (size_t i = 0; i < live; i++) {
			struct uffd_msg m;

			if (!(pfd[i + 1].revents & POLLIN))
				continue;
			while (read(os[i].uffd, &m, sizeof(m)) == sizeof(m)) {
				if (m.event == UFFD_EVENT_PAGEFAULT) {
					orphan_answer(&os[i], &m);
					continue;
				}
				if (m.event != UFFD_EVENT_FORK)
					continue;
				o = os[i];
				o.uffd = m.arg.fork.ufd;
				o.memfd = fcntl(os[i].memfd, F_DUPFD_CLOEXEC, 3);
				o.a = NULL;
				if (o.memfd < 0 || orphan_add(&os, &n, &o))
					orphan_close(&o);
			}
		}
		free(pfd);
		/* Drop what was detached meanwhile. */
		pthread_mutex_lock(&u->att_lock);
		for (size_t i = 0; i < n;) {
			if (!os[i].a || listed(u, os[i].a)) {
				i++;
				continue;
			}
			orphan_close(&os[i]);
			os[i] = os[--n];
		}
		pthread_mutex_unlock(&u->att_lock);
	}
	for (size_t i = 0; i < n; i++)
		orphan_close(&os[i]);
	free(os);
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
		if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			orphan_serve(u);
			return NULL;
		}
	}
}

static int watcher_start(struct upager *u)
{
	int ret = 0;

	pthread_mutex_lock(&u->att_lock);
	if (!u->watcher_running) {
		u->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (u->wake_efd < 0)
			ret = -errno;
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

UPAGER_API int upager_attach(struct upager *u, const char *name,
			     unsigned int flags, struct upager_attachment **out)
{
	struct upg_attach_reply ar;
	struct upg_register reg;
	struct upg_register_reply rr;
	struct uffdio_register ur;
	struct upager_attachment *a;
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
	ret = name_request(u, UPG_ATTACH, name, flags, &ar, sizeof(ar), &a->memfd);
	if (ret < 0)
		goto err;
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
	ur = (struct uffdio_register){
		.range = { .start = (uintptr_t)a->addr, .len = a->size },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	/* Write-protect mode now, so snapshots need no re-registration. */
	if (!(flags & UPAGER_ATTACH_RDONLY) &&
	    (features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
		ur.mode |= UFFDIO_REGISTER_MODE_WP;
	if (flags & UPAGER_ATTACH_RDONLY) {
		if (!(features & UFFD_FEATURE_MINOR_SHMEM)) {
			ret = -EOPNOTSUPP;
			goto err;
		}
		ur.mode |= UFFDIO_REGISTER_MODE_MINOR;
	}
	if (ioctl(a->uffd, UFFDIO_REGISTER, &ur) < 0) {
		ret = -errno;
		goto err;
	}
	memset(&reg, 0, sizeof(reg));
	reg.seg_id = a->seg_id;
	reg.addr = (uintptr_t)a->addr;
	reg.len = a->size;
	reg.uffd_features = features;
	reg.uffd_ioctls = ur.ioctls;
	reg.flags = flags & UPAGER_ATTACH_RDONLY ? UPG_REGISTER_RDONLY : 0;
	ret = request(u, &reg, sizeof(reg), UPG_REGISTER, a->uffd, &rr,
		      sizeof(rr), NULL);
	if (ret < 0)
		goto err;
	a->attach_id = rr.attach_id;
	ret = watcher_start(u);
	if (ret < 0) {
		upager_detach(a);
		return set_errno(ret);
	}
	pthread_mutex_lock(&u->att_lock);
	a->next = u->atts;
	u->atts = a;
	pthread_mutex_unlock(&u->att_lock);
	watcher_kick(u);
	*out = a;
	return 0;
err:
	/* The uffd goes first: munmap of a range registered with unmap
	 * events would wait for a reader that is not there. */
	if (a->uffd >= 0)
		close(a->uffd);
	if (a->addr != MAP_FAILED)
		munmap(a->addr, a->size);
	if (a->memfd >= 0)
		close(a->memfd);
	free(a);
	return set_errno(ret);
}

UPAGER_API void *upager_attachment_addr(const struct upager_attachment *a)
{
	return a ? a->addr : NULL;
}

UPAGER_API size_t upager_attachment_size(const struct upager_attachment *a)
{
	return a ? a->size : 0;
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
		struct uffdio_range r = { .start = (uintptr_t)a->addr,
					  .len = a->size };

		/* Unregister first: with the range registered, munmap would
		 * wait for the daemon to read its unmap event. */
		ioctl(a->uffd, UFFDIO_UNREGISTER, &r);
		munmap(a->addr, a->size);
		memset(&m, 0, sizeof(m));
		m.attach_id = a->attach_id;
		ret = request(u, &m, sizeof(m), UPG_DETACH, -1, NULL, 0, NULL);
		if (ret == -EPIPE || ret == -ECONNRESET || ret == -ENOTCONN)
			ret = 0;	/* the daemon is gone: nothing to tell */
		watcher_kick(u);
	} else {
		/* The child's range belongs to the uffd the daemon got at
		 * fork; ours is the parent's.  The daemon sees the unmap. */
		munmap(a->addr, a->size);
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
	if (u->watcher_running) {
		if (inherited(u)) {
			/* The watcher thread stayed in the parent. */
		} else {
			atomic_store(&u->stopping, true);
			watcher_kick(u);
			pthread_join(u->watcher, NULL);
		}
	}
	if (u->wake_efd >= 0)
		close(u->wake_efd);
	if (u->daemon_pidfd >= 0)
		close(u->daemon_pidfd);
	close(u->sock);
	pthread_mutex_destroy(&u->req_lock);
	pthread_mutex_destroy(&u->att_lock);
	free(u);
}

/*
 * In a fork child, before fork() returns: a connection of our own, and our
 * own uffd for each attachment (see the top of this file).  Only
 * async-signal-safe work and what glibc allows after fork happen here.
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
	long ps = sysconf(_SC_PAGESIZE);
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

static void child_reconnect(struct upager *u)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct upg_hello hello = { .features = UPG_FEATURES_KNOWN }, rh;
	struct upager_attachment *a, **pp;
	int old = u->sock, sock;
	pid_t parent = u->pid;
	void *probe;

	/* The parent's watcher did not come along. */
	u->watcher_running = false;
	atomic_store(&u->watcher_ready, false);
	if (u->wake_efd >= 0)
		close(u->wake_efd);
	u->wake_efd = -1;
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
	memcpy(sa.sun_path, u->path, sizeof(sa.sun_path));
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return;
	if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(sock);
		return;
	}
	u->sock = sock;
	u->pid = getpid();
	u->seq = 0;
	if (request(u, &hello, sizeof(hello), UPG_HELLO, -1, &rh, sizeof(rh),
		    NULL))
		goto fail;
	probe = probe_map();
	if (probe == MAP_FAILED)
		goto fail;
	for (a = u->atts; a; a = a->next)
		if (claim(u, a, probe))
			break;
	munmap(probe, sysconf(_SC_PAGESIZE));
	if (a)
		goto fail;
	close(old);
	if (u->atts)
		watcher_start(u);
	return;
fail:
	/* Stay the parent's connection: the daemon serves our faults
	 * through the fork event all the same. */
	close(sock);
	u->sock = old;
	u->pid = parent;
}
