// SPDX-License-Identifier: MIT
/*
 * fork(): the handlers, and what a child does before fork() returns.
 *
 * The prepare handler takes every connection's request and attachment
 * locks, so no request or attachment change is half done across the fork.
 * In the child, each connection that was the parent's gets a connection
 * of its own to the same daemon, and each attachment the child inherited
 * a uffd of its own: the daemon got the child's uffd with the fork event,
 * and the child claims it, proving with a probe page which child it is.
 * When the daemon is gone by then, the child registers uffds of its own
 * and answers its faults itself (the watcher), as the parent does.
 *
 * The watcher is not among the locks: with fork events, fork() waits for
 * someone to read them, which the parent's watcher does once the daemon is
 * gone, while this thread holds the locks here.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#include "lib.h"
#include "proto.h"

/* Every connection, for the fork handlers. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct upager *reg_head; /* guarded by reg_lock */
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
	if (!lib_fork_external)
		pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

bool lib_fork_external;

void lib_fork_prepare(void)
{
	atfork_prepare();
}

void lib_fork_parent(void)
{
	atfork_parent();
}

void lib_fork_child(void)
{
	atfork_child();
}

void fork_track(struct upager *u)
{
	pthread_once(&atfork_once, atfork_register);
	pthread_mutex_lock(&reg_lock);
	u->reg_next = reg_head;
	reg_head = u;
	pthread_mutex_unlock(&reg_lock);
}

void fork_untrack(struct upager *u)
{
	pthread_mutex_lock(&reg_lock);
	for (struct upager **pp = &reg_head; *pp; pp = &(*pp)->reg_next) {
		if (*pp == u) {
			*pp = u->reg_next;
			break;
		}
	}
	pthread_mutex_unlock(&reg_lock);
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
	long ps = lib_page_size();
	uintptr_t slot = (uintptr_t)(getpid() & 0x3fffff) * 2 * ps;

	for (uintptr_t base = 0x500000000000; base <= 0x700000000000;
	     base += 0x100000000000) {
		void *p = mmap((void *)(base + slot), ps, PROT_READ,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			       -1, 0);

		if (p == (void *)(base + slot))
			return p;
		if (p != MAP_FAILED)
			munmap(p, ps); /* an old kernel ignored the hint */
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
		ret = request(u, &m, sizeof(m), UPG_CLAIM, -1, &r, sizeof(r),
			      &fd);
		if (ret != -EAGAIN)
			break;
		usleep(500);
	}
	if (ret < 0)
		return ret;
	if (fd < 0)
		return -EPROTO;
	if (a->uffd >= 0)
		close(a->uffd); /* the parent's */
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

			ret = vma_register(uffd, &v[i], a->reg_mode);
			if (ret != -EBUSY ||
			    (mine && vma_register(mine->uffd, &v[i],
						  mine->reg_mode) == 0)) {
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
		/* the same segment's attachment before this one */
		bool same = prev && prev->ino == a->ino && prev->uffd >= 0;
		uint64_t features;
		int fd = att_uffd_open(&features);

		if (a->uffd >= 0)
			close(a->uffd); /* the parent's */
		a->uffd = fd;
		if (fd < 0)
			continue;
		a->features = features;
		child_register(u, a, fd, same ? prev : NULL);
		serve_add(u, a);
	}
	if (u->atts && watcher_start(u) == 0)
		watcher_kick(u);
}

static void child_reconnect(struct upager *u)
{
	struct upager_attachment *a, **pp;
	int old = u->sock, ret, wait_ms = 0;
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
	/* Mappings made MADV_DONTFORK (no fork events, or asked for) are
	 * not here. */
	for (pp = &u->atts; (a = *pp);) {
		if (a->features & UFFD_FEATURE_EVENT_FORK && !a->dontfork) {
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
	munmap(probe, lib_page_size());
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
	if (ret == -EPIPE || ret == -ECONNRESET)
		wait_ms = 1000;
	else if (ret == -ECONNREFUSED || ret == -ENOENT)
		wait_ms = 250;
	if (daemon_gone(u, wait_ms))
		child_fallback(u);
}
