/* SPDX-License-Identifier: MIT */
/*
 * libupager's insides: the structs its files share, and what each file
 * offers the others.  See client.c for the design.
 *
 *   client.c   the connection and its requests
 *   attach.c   attach and detach
 *   maps.c     this process's mappings, from /proc/self/maps
 *   fork.c     the fork handlers, and a child's claim or fallback
 *   watcher.c  the thread that answers faults once the daemon is gone
 */
#ifndef UPAGER_LIB_H
#define UPAGER_LIB_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <upager/upager.h>

#include "fd.h"
#include "uffd.h"

#define UPAGER_API __attribute__((visibility("default")))

/*
 * One attachment.  Its fields are set by attach and, in a fork child, by
 * the child's claim or fallback (only the forking thread runs there);
 * @next is guarded by the connection's att_lock.
 */
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
	uint64_t features; /* of the uffd */
	uint64_t reg_mode; /* UFFDIO_REGISTER_MODE_* of its mappings */
	dev_t dev;	   /* the memfd's inode: what its mappings */
	ino_t ino;	   /* show in /proc/self/maps */
	bool dontfork;	   /* UPAGER_ATTACH_DONTFORK */
};

/*
 * A uffd the watcher answers once the daemon is gone.  Self-contained (its
 * own descriptors), so a detach meanwhile frees nothing it uses: detach
 * only marks it @gone, and the watcher closes it.
 */
#define SERVE_MAX 256 /* see orphan_serve */

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

/*
 * A connection.  Lock order: the registry's lock (fork.c), then req_lock,
 * then att_lock; the fork handlers take all three, so serve_lock, which the
 * watcher takes, is never held with them.
 */
struct upager {
	struct upager *reg_next; /* every connection, for fork (the
				  * registry's lock) */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int sock;	  /* -1: the daemon is gone */
	pid_t pid;	  /* the process that connected */
	uid_t daemon_uid; /* the daemon's identity, pinned at */
	pid_t daemon_pid; /* connect for the process's life */
	int timeout_ms;
	bool broken; /* a reply timed out: out of step */
	uint64_t seq;
	uint64_t features;	  /* UPG_FEATURE_*, negotiated at hello */
	pthread_mutex_t req_lock; /* one request at a time: guards
				   * sock's traffic, seq, broken */

	pthread_mutex_t att_lock; /* attachments and watcher state */
	struct upager_attachment *atts;
	pthread_t watcher;
	bool watcher_running;
	int wake_efd;	  /* tells the watcher to look again */
	int daemon_pidfd; /* readable when the daemon is gone */
	_Atomic bool stopping;
	_Atomic bool watcher_ready;

	/* Not taken by the fork handlers: the watcher must be able to read
	 * a fork event while fork() holds the locks above. */
	pthread_mutex_t serve_lock;
	struct serve *serves;
	size_t nr_serves, serves_cap;
};

/* The public functions' return: -errno also in errno. */
static inline int set_errno(int ret)
{
	if (ret < 0)
		errno = -ret;
	return ret;
}

/*
 * The lowest descriptor the library keeps: 3 (never stdio), or higher when
 * the preload shim asks for it, so that the descriptors of its many
 * attachments stay out of the low numbers the program expects (select()).
 * Set once, before the first connection.
 */
extern int lib_fd_floor;

/*
 * fd_place - descriptor @fd (or -errno, passed through) moved to
 * lib_fd_floor or above, close-on-exec.  Returns the descriptor, or -errno
 * (and @fd is closed either way).
 */
static inline int fd_place(int fd)
{
	int nfd, err;

	if (fd < 0 || fd >= lib_fd_floor)
		return fd;
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, lib_fd_floor);
	if (nfd < 0 && lib_fd_floor > 3)
		nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3); /* the high ones full */
	err = errno;
	close(fd);
	if (nfd >= 0)
		return nfd;
	return fd_above_stdio(-err);
}

/*
 * fd_high - a system call's result (a descriptor, or -1 with errno set)
 * moved to 3 or above: a program started with stdio closed must not find
 * its output going into the daemon's socket.  Returns the descriptor, or
 * -errno (and the descriptor is closed either way).
 */
static inline int fd_high(int ret)
{
	return fd_place(ret < 0 ? -errno : ret);
}

/*
 * Called first by every thread the library starts (the watcher), when
 * set: the preload shim marks such threads as its own, so that what they
 * map goes to the kernel untouched.  Set once, before the first connection.
 */
extern void (*lib_thread_hook)(void);

/* The page size, read once (before the watcher may run during a fork). */
long lib_page_size(void);

/* client.c: the connection */

/* Whether @u was inherited across fork (it is the parent's). */
bool inherited(const struct upager *u);

/*
 * request - one request and its reply.  @reply gets the reply (exactly
 * @rlen bytes, else -EPROTO); @rfd a descriptor that came with it.
 * Returns the reply's status, or -EPIPE when the daemon hung up,
 * -ETIMEDOUT when it did not answer in time, -ECHILD on an inherited
 * connection.
 */
int request(struct upager *u, void *msg, size_t len, uint16_t type, int fd,
	    void *reply, size_t rlen, int *rfd);

/*
 * request_long - request() for a request whose answer takes as long as
 * its work (a save): the reply is waited for without the connection's
 * timeout; a daemon that dies is still -EPIPE.
 */
int request_long(struct upager *u, void *msg, size_t len, uint16_t type, int fd,
		 void *reply, size_t rlen);

/* Copies a valid segment name into @dst: 0, or -EINVAL. */
int copy_name(char *dst, size_t room, const char *name);

/* A request about the segment @name (struct upg_name), as request(). */
int name_request(struct upager *u, uint16_t type, const char *name,
		 uint32_t flags, uint32_t owner, void *reply, size_t rlen,
		 int *rfd);

/*
 * sock_connect - a connected socket to @path, with @timeout_ms on every
 * send and receive (connect included), and the peer's credentials in
 * @cred.  Returns the socket or -errno.
 */
int sock_connect(const char *path, int timeout_ms, struct ucred *cred);

/* Says hello on a fresh connection: 0 or -errno. */
int hello(struct upager *u);

/* maps.c: this process's mappings */

struct vma {
	uintptr_t start, end;
	uint64_t off; /* file offset at start */
	dev_t dev;
	ino_t ino;
	bool shared;
	int prot; /* PROT_* */
};

/*
 * vma_walk - calls @fn for each mapping of this process, in address order,
 * until it returns non-zero; returns that, or -errno.  Allocates nothing.
 */
int vma_walk(int (*fn)(const struct vma *, void *), void *arg);

/*
 * vma_at - the mapping at @addr: 1 (in @out), 0 when none, or -errno.
 * Allocates nothing and takes no lock: the watcher calls it while another
 * thread may be inside fork().
 */
int vma_at(uintptr_t addr, struct vma *out);

/*
 * vmas_of - every mapping of the file (@dev, @ino): their count, with a
 * malloc()ed array of them in @out (free it), or -errno.
 */
int vmas_of(dev_t dev, ino_t ino, struct vma **out);

/*
 * vma_register - register @v with @uffd in @mode.  For a range already
 * registered through @uffd this succeeds and changes nothing, and it fails
 * with -EBUSY for a range registered through another uffd: which is how we
 * tell our mappings from another attachment's of the same segment.
 */
static inline int vma_register(int uffd, const struct vma *v, uint64_t mode)
{
	return uffd_register(uffd, v->start, v->end - v->start, mode, NULL);
}

/* attach.c */

/*
 * att_uffd_open - a userfaultfd with the features an attachment uses that
 * the kernel has, enabled in @features.  Returns it or -errno.
 */
int att_uffd_open(uint64_t *features);

/* fork.c: the registry of connections the fork handlers see */

/* Adds @u (and installs the fork handlers, once). */
void fork_track(struct upager *u);

/* Removes @u. */
void fork_untrack(struct upager *u);

/*
 * Set before the first connection by a caller that runs the fork handlers
 * itself (the preload shim, which must cut its snapshots after the
 * program's own prepare handlers and before these take the connections'
 * locks): then none are installed, and it calls these from its own.
 */
extern bool lib_fork_external;
void lib_fork_prepare(void);
void lib_fork_parent(void);
void lib_fork_child(void);

/* watcher.c */

/*
 * watcher_start - the connection's watcher thread, unless it runs already.
 * Returns once the thread runs its own code: 0 or -errno.
 */
int watcher_start(struct upager *u);

/* Tells the watcher to look at its list again. */
void watcher_kick(struct upager *u);

/*
 * watcher_stop - at disconnect: the watcher stopped (unless the
 * connection was inherited: it stayed in the parent), every uffd on its
 * list closed, its eventfd closed.
 */
void watcher_stop(struct upager *u);

/* Whether the daemon is gone, waiting at most @wait_ms for its pidfd. */
bool daemon_gone(struct upager *u, int wait_ms);

/*
 * serve_add - put @a on the watcher's list (copies of its descriptors):
 * 0, or -errno (-EMFILE past SERVE_MAX attachments of one connection).
 */
int serve_add(struct upager *u, const struct upager_attachment *a);

/* Take @a off the list (its entry is closed by the watcher). */
void serve_forget(struct upager *u, const struct upager_attachment *a);

/* Close what detach left on the list, or (@all) everything on it. */
void serve_reap(struct upager *u, bool all);

#endif
