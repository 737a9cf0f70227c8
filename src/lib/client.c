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
 *
 * The files, by what they do (lib.h holds what they share):
 *
 *   client.c   this essay; the connection (connect, hello, the timeouts)
 *              and the requests (create, delete, stat, list, stats, usage)
 *   attach.c   attach, and detach (PROT_NONE before unregister)
 *   maps.c     where an attachment's mappings are: /proc/self/maps
 *   fork.c     the fork handlers; in the child, the claim of a uffd of its
 *              own, or the fallback when the daemon is gone
 *   watcher.c  the thread that answers faults once the daemon is gone
 *              (it allocates nothing: it may run while another thread is
 *              inside fork())
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>

#include "lib.h"
#include "proto.h"
#include "sockpath.h"

#define DEFAULT_TIMEOUT_MS 30000

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
	case UPAGER_SOURCE_IMAGE:
		return "image";
	}
	return "unknown";
}

int lib_fd_floor = 3;
void (*lib_thread_hook)(void);

long lib_page_size(void)
{
	static long ps;

	if (!ps)
		ps = sysconf(_SC_PAGESIZE);
	return ps;
}

bool inherited(const struct upager *u)
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
	if (n > 0 && *fd >= 0 && (*fd = fd_place(*fd)) < 0)
		return *fd;
	return n == 0 ? -EPIPE : n;
}

/* Sends a request: 0, or -errno as recv_reply says. */
static int send_request(struct upager *u, void *msg, size_t len, uint16_t type,
			int fd)
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

/* One request and its reply; caller holds req_lock. */
static int exchange(struct upager *u, void *msg, size_t len, uint16_t type,
		    int fd, void *reply, size_t rlen, int *rfd, bool forever)
{
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));
	struct upg_hdr *r = (struct upg_hdr *)buf;
	struct timeval none = { 0 }, tv = {
		.tv_sec = u->timeout_ms / 1000,
		.tv_usec = u->timeout_ms % 1000 * 1000,
	};
	int ret, got_fd = -1;
	ssize_t n;

	ret = send_request(u, msg, len, type, fd);
	if (ret)
		goto out;
	if (forever && setsockopt(u->sock, SOL_SOCKET, SO_RCVTIMEO, &none,
				  sizeof(none)) < 0) {
		ret = -errno;
		goto out;
	}
	n = recv_reply(u, buf, sizeof(buf), &got_fd);
	if (forever &&
	    setsockopt(u->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
		u->broken = true; /* it would wait for ever from now on */
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
	return ret;
}

/*
 * The daemon closed this connection while nothing was attached through it
 * (its idle timeout): the connection is made again, in place, to the same
 * daemon (its pid and uid pinned at connect).  Caller holds req_lock.
 * 0, or -EPIPE: the connection stays closed.
 */
static int redial(struct upager *u)
{
	struct upg_hello m = { .features = UPG_FEATURES_KNOWN }, r;
	struct ucred cred;
	bool idle;
	int sock;

	pthread_mutex_lock(&u->att_lock);
	idle = !u->atts;
	pthread_mutex_unlock(&u->att_lock);
	if (!idle || u->broken || u->sock < 0 || daemon_gone(u, 0))
		return -EPIPE;
	sock = sock_connect(u->path, u->timeout_ms, &cred);
	if (sock < 0)
		return -EPIPE;
	if (cred.uid != u->daemon_uid ||
	    (u->daemon_pid > 0 && cred.pid != u->daemon_pid)) {
		close(sock);
		return -EPIPE;
	}
	close(u->sock);
	u->sock = sock;
	if (exchange(u, &m, sizeof(m), UPG_HELLO, -1, &r, sizeof(r), NULL,
		     false) ||
	    r.features != u->features) {
		u->broken = true;
		return -EPIPE;
	}
	return 0;
}

/* request(); with @forever, the reply is waited for without timeout. */
static int request_wait(struct upager *u, void *msg, size_t len, uint16_t type,
			int fd, void *reply, size_t rlen, int *rfd, bool forever)
{
	int ret;

	if (inherited(u))
		return -ECHILD;
	pthread_mutex_lock(&u->req_lock);
	ret = exchange(u, msg, len, type, fd, reply, rlen, rfd, forever);
	if ((ret == -EPIPE || ret == -ECONNRESET) && type != UPG_HELLO &&
	    redial(u) == 0)
		ret = exchange(u, msg, len, type, fd, reply, rlen, rfd, forever);
	pthread_mutex_unlock(&u->req_lock);
	return ret;
}

int request(struct upager *u, void *msg, size_t len, uint16_t type, int fd,
	    void *reply, size_t rlen, int *rfd)
{
	return request_wait(u, msg, len, type, fd, reply, rlen, rfd, false);
}

int request_long(struct upager *u, void *msg, size_t len, uint16_t type, int fd,
		 void *reply, size_t rlen)
{
	return request_wait(u, msg, len, type, fd, reply, rlen, NULL, true);
}

int sock_connect(const char *path, int timeout_ms, struct ucred *cred)
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
		ret = errno == EAGAIN || errno == EINPROGRESS ? -ETIMEDOUT :
								-errno;
		close(fd);
		return ret;
	}
	return fd;
}

int hello(struct upager *u)
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
	fork_track(u);
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

int copy_name(char *dst, size_t room, const char *name)
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
	m.source = opts->source_fd >= 0 ? UPAGER_SOURCE_FILE :
					  UPAGER_SOURCE_ZERO;
	return set_errno(request(u, &m, sizeof(m), UPG_CREATE, opts->source_fd,
				 NULL, 0, NULL));
}

int name_request(struct upager *u, uint16_t type, const char *name,
		 uint32_t flags, uint32_t owner, void *reply, size_t rlen,
		 int *rfd)
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
	return set_errno(
		name_request(u, UPG_DELETE, name, flags, 0, NULL, 0, NULL));
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

/*
 * request_entries - a request answered by a run of @entry_type records of
 * @entry_len bytes, then a @type record with the status.  The @size bytes
 * at @off in entry i go to @out + i * @size while i < @max.  Returns the
 * number of entries (which may exceed @max), or -errno as request().
 */
static int request_entries(struct upager *u, uint16_t type, uint16_t entry_type,
			   size_t entry_len, size_t off, void *out, size_t size,
			   size_t max)
{
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));
	struct upg_hdr m, *r = (struct upg_hdr *)buf;
	size_t n = 0;
	int ret, fd;

	if (inherited(u))
		return -ECHILD;
	pthread_mutex_lock(&u->req_lock);
	ret = send_request(u, &m, sizeof(m), type, -1);
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
		} else if (r->type == type) {
			ret = r->status < 0 ? r->status : (int)n;
			break;
		} else if (r->type != entry_type || (size_t)len != entry_len) {
			ret = -EPROTO;
		} else {
			if (n < max)
				memcpy((char *)out + n * size, buf + off, size);
			n++;
		}
	}
	pthread_mutex_unlock(&u->req_lock);
	return ret;
}

UPAGER_API int upager_list(struct upager *u, struct upager_segment_info *infos,
			   size_t max)
{
	if (!u || (max && !infos))
		return set_errno(-EINVAL);
	return set_errno(request_entries(u, UPG_LIST, UPG_LIST_ENTRY,
					 sizeof(struct upg_info),
					 offsetof(struct upg_info, info), infos,
					 sizeof(*infos), max));
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
	if (!u || (max && !out))
		return set_errno(-EINVAL);
	if (inherited(u))
		return set_errno(-ECHILD);
	if (!(u->features & UPG_FEATURE_USAGE))
		return set_errno(-EOPNOTSUPP);
	return set_errno(request_entries(u, UPG_USAGE, UPG_USAGE_ENTRY,
					 sizeof(struct upg_usage),
					 offsetof(struct upg_usage, usage), out,
					 sizeof(*out), max));
}

UPAGER_API pid_t upager_daemon_pid(struct upager *u)
{
	if (!u)
		return set_errno(-EINVAL);
	if (inherited(u))
		return set_errno(-ECHILD);
	return u->daemon_pid;
}

UPAGER_API void upager_disconnect(struct upager *u)
{
	if (!u)
		return;
	fork_untrack(u);
	while (u->atts)
		upager_detach(u->atts);
	watcher_stop(u);
	if (u->daemon_pidfd >= 0)
		close(u->daemon_pidfd);
	if (u->sock >= 0)
		close(u->sock);
	pthread_mutex_destroy(&u->req_lock);
	pthread_mutex_destroy(&u->att_lock);
	pthread_mutex_destroy(&u->serve_lock);
	free(u);
}
