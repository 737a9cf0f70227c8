// SPDX-License-Identifier: MIT
/*
 * The control plane, on the main thread's io_uring.
 *
 * Requests are small and answered at once, one reply per request (a list
 * is several records then a terminator).  A client that sends anything
 * malformed is disconnected: with SEQPACKET a bad record cannot be skipped
 * safely, and nobody else is affected.
 *
 * Out of descriptors: accept() fails with EMFILE and the connection stays
 * in the backlog, where nothing would ever tell the loop about it again
 * (the listening socket's poll fires on arrivals, not on what waits).  So
 * the server keeps one descriptor in reserve: it gives it up to accept the
 * client at the head of the backlog, answers that client's hello with
 * -EMFILE before it is even read (its first request is always hello, seq
 * 1), reads the hello (closing a socket with an unread request would reset
 * the connection and lose the answer), closes it and takes the reserve
 * back, then goes on with the backlog.  A client that does not say hello
 * within REFUSE_WAIT_MS is closed all the same.
 *
 * Per-user limits (quota.h) are checked where a resource is taken: create
 * (segments, bytes), attach and register (attachments), accept
 * (connections), each under the lock of the lists it counts.  A connection
 * over its user's limit is answered -EUSERS at once, the same way, and
 * closed once its hello is read.  A sweep every few ticks closes the
 * connections idle for the idle timeout: no request for that long and no
 * attachment of their process.
 *
 * Forked children: UFFD_EVENT_FORK gives the daemon the child's uffd but not
 * its pid.  The housekeeping tick finds it: first among the parent's
 * children, then among all processes, as the one that maps the segment's
 * memfd (by inode) and is not attached yet.  A child not found within a
 * few seconds has exited already and is dropped.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

#include "attach.h"
#include "daemon.h"
#include "image.h"
#include "log.h"
#include "proto.h"
#include "quota.h"
#include "ring.h"
#include "segment.h"
#include "snapshot.h"
#include "server.h"
#include "source.h"
#include "uffd.h"
#include "worker.h"

#define TICK_MS 20
#define FORK_RESOLVE_NS (3ull * 1000000000)
#define REFUSE_WAIT_MS 1000
/* refused connections of a uid that wait for their hello */
#define REFUSE_PENDING_MAX 8
/* idle and refused connections, every 200 ms */
#define SWEEP_TICKS 10
#define LOG_EVERY_NS 1000000000ull /* rate limit of repeated warnings */

/*
 * A client's connection.  It lives while it is open and while its poll is
 * armed: conn_close() drops the one reference and cancels the poll, whose
 * last completion drops the other.
 */
struct conn {
	struct io_req req; /* its socket's multishot poll */
	unsigned int refs;
	bool armed; /* its poll holds a reference */
	bool closed;
	struct server *s;
	int fd;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	gid_t *groups; /* supplementary groups at connect */
	int nr_groups;
	bool hello;
	uint64_t features; /* UPG_FEATURE_*, negotiated at hello */
	uint64_t last_ns;  /* its last request, for the idle timeout */
	int refused;	   /* -EUSERS: over its uid's limit, answered
			    * so, closed once its hello is read */
	uint64_t refuse_deadline_ns;
	int send_err;	       /* a reply could not be sent: drop it */
	int base_fd;	       /* UPG_BASE: the base image for its next
				* create of an image source, or -1 */
	bool busy;	       /* a save runs for it: its next requests
				* wait in the socket until it is done */
	char why[128];	       /* the protocol error, for the log */
	struct list_head link; /* the server's conns, then closing */
};

/* A warning that may repeat quickly: logged at most once a second. */
struct ratelimit {
	uint64_t last_ns;
	unsigned int missed;
};

/* The main thread's alone. */
struct server {
	struct daemon *d;
	struct io_uring ring;
	int listen_fd, sfd, tfd;
	uint64_t efd_val, tfd_val;
	struct signalfd_siginfo si;
	struct io_req listen_req, signal_req, efd_req, timer_req;
	struct list_head conns;
	struct list_head closing; /* closed, their polls not done yet */
	struct list_head saves;	  /* struct save_job, running */
	uint64_t ticks;
	bool stop;

	int reserve_fd;		  /* /dev/null, given up to refuse one */
	int refuse_fd;		  /* that client, until its hello is read */
	struct io_req refuse_req; /* refuse_fd's poll */
	bool refuse_polled;	  /* until that poll's completion came: no
				   * other refusal starts before */
	uint64_t refuse_deadline_ns;
	bool accept_stalled; /* the backlog may hold connections */
	struct ratelimit rl_refuse, rl_accept, rl_lost_fd, rl_quota;
};

static bool ratelimit_ok(struct ratelimit *rl, unsigned int *missed)
{
	uint64_t now = now_ns();

	if (rl->last_ns && now - rl->last_ns < LOG_EVERY_NS) {
		rl->missed++;
		return false;
	}
	rl->last_ns = now;
	*missed = rl->missed;
	rl->missed = 0;
	return true;
}

/*
 * The main thread cannot do without its own polls and reads (the socket,
 * signals, the timer, its eventfd): one that cannot be queued (the ring
 * full even after a submit) stops the daemon.
 */
static void arm_poll(struct server *s, int fd, struct io_req *req)
{
	if (ring_poll(&s->ring, fd, true, req)) {
		pr_err("server", "cannot poll: ring full: stopping");
		s->stop = true;
	}
}

static void arm_read(struct server *s, int fd, void *buf, size_t len,
		     struct io_req *req)
{
	if (ring_read(&s->ring, fd, buf, len, req)) {
		pr_err("server", "cannot read: ring full: stopping");
		s->stop = true;
	}
}

/*
 * Attachments collected under the daemon lock, each with a reference, to
 * work on without it (what takes time, reads /proc or calls into another
 * process has no business under the lock).
 */
struct att_set {
	struct attachment **v;
	size_t n, cap;
};

static int att_set_add(struct att_set *set, struct attachment *att)
{
	if (set->n == set->cap) {
		size_t cap = set->cap ? 2 * set->cap : 16;
		void *p = realloc(set->v, cap * sizeof(*set->v));

		if (!p)
			return -ENOMEM;
		set->v = p;
		set->cap = cap;
	}
	attach_get(att);
	set->v[set->n++] = att;
	return 0;
}

static void att_set_put(struct att_set *set)
{
	for (size_t i = 0; i < set->n; i++)
		attach_put(set->v[i]);
	free(set->v);
	set->v = NULL;
	set->n = set->cap = 0;
}

/* Segments */

static struct segment *seg_find(struct daemon *d, const char *name)
{
	struct segment *seg;

	list_for_each_entry(seg, &d->segments, link)
		if (!strcmp(seg->name, name))
			return seg;
	return NULL;
}

static struct segment *seg_find_id(struct daemon *d, uint64_t id)
{
	struct segment *seg;

	list_for_each_entry(seg, &d->segments, link)
		if (seg->id == id)
			return seg;
	return NULL;
}

static bool conn_in_group(const struct conn *c, gid_t gid)
{
	if (c->gid == gid)
		return true;
	for (int i = 0; i < c->nr_groups; i++)
		if (c->groups[i] == gid)
			return true;
	return false;
}

/*
 * File-like permission check: @want is a mask of 4 (read) and 2 (write).
 * The owner's bits apply to the owner, the group's to a member of the
 * segment's group (by the peer's gid or a supplementary group), the
 * others' to the rest; as with a file, the owner does not fall back to the
 * group's bits.
 */
static int seg_access(struct segment *seg, struct conn *c, unsigned int want)
{
	unsigned int bits;

	if (c->uid == 0)
		return 0;
	if (c->uid == seg->uid)
		bits = seg->mode >> 6;
	else if (conn_in_group(c, seg->gid))
		bits = seg->mode >> 3;
	else
		bits = seg->mode;
	return (bits & want) == want ? 0 : -EACCES;
}

/*
 * Sends one message to @c.  A failure (the client is gone, or does not
 * read its replies) is remembered: the request is then not answered with
 * it, the connection is dropped, and it is no protocol error.
 */
static int conn_send(struct conn *c, const void *msg, size_t len, int fd)
{
	int ret = proto_send(c->fd, msg, len, fd, MSG_DONTWAIT);

	if (ret == -EPROTO)
		ret = -EMSGSIZE; /* short: not the client's fault */
	if (ret && !c->send_err)
		c->send_err = ret;
	return ret;
}

/*
 * The segment @name as @c may see it: -ENOENT when there is none or @c may
 * not read it (whether a segment one may not read exists is not told),
 * -EACCES when @c may read it but not as @want asks.  Under the daemon lock.
 */
static int seg_lookup(struct conn *c, struct segment *seg, unsigned int want)
{
	if (!seg || seg_access(seg, c, 4))
		return -ENOENT;
	return seg_access(seg, c, want);
}

/*
 * What a reader who is neither the owner nor root does not see: the source
 * file's path and the attached processes.
 */
static void info_for(struct conn *c, struct segment *seg,
		     struct upager_segment_info *info)
{
	segment_info(seg, info);
	attach_pids(seg, info);
	if (c->uid == 0 || c->uid == seg->uid)
		return;
	memset(info->source_path, 0, sizeof(info->source_path));
	memset(info->pids, 0, sizeof(info->pids));
	info->nr_pids = 0;
}

/*
 * Usage per uid, counted from the lists (quota.h): segments and their
 * sizes by owner (a deleted segment while it is still attached: it holds
 * its memory until then), attachments by the registering user (a forked
 * child's by its parent's), connections by peer.  With @one only @uid's.
 * Under the daemon lock; connections are the main thread's.
 */
static int usage_segment(struct quota_tally *t, struct segment *seg,
			 bool resident)
{
	int ret = quota_tally_add(t, seg->uid, QUOTA_SEGMENTS, 1);

	if (!ret)
		ret = quota_tally_add(t, seg->uid, QUOTA_BYTES, seg->size);
	if (!ret && resident)
		quota_tally_get(t, seg->uid)->resident_bytes +=
			segment_resident_bytes(seg);
	return ret;
}

static int usage_count(struct server *s, struct quota_tally *t, bool one,
		       uid_t uid, bool resident)
{
	struct daemon *d = s->d;
	struct segment *seg;
	struct attachment *att;
	struct conn *c;
	int ret = 0;

	list_for_each_entry(seg, &d->segments, link)
		if (!ret && (!one || seg->uid == uid))
			ret = usage_segment(t, seg, resident);
	list_for_each_entry(att, &d->attachments, all_link) {
		seg = att->seg;
		/* a deleted segment once: by its first attachment */
		if (!ret && seg->deleted && (!one || seg->uid == uid) &&
		    seg->attachments.next == &att->seg_link)
			ret = usage_segment(t, seg, resident);
		if (!ret && (!one || att->uid == uid))
			ret = quota_tally_add(t, att->uid, QUOTA_ATTACHMENTS, 1);
	}
	list_for_each_entry(c, &s->conns, link)
		if (!ret && !c->refused && (!one || c->uid == uid))
			ret = quota_tally_add(t, c->uid, QUOTA_CONNECTIONS, 1);
	return ret;
}

/*
 * quota_take - may @c's user take @more of @kind, and (for segments) also
 * @bytes more?  0, or -EDQUOT / -EUSERS (logged), or -ENOMEM.  Under the
 * daemon lock: the caller creates what it asked for before unlocking.
 */
static int quota_take(struct conn *c, enum quota_kind kind, uint64_t more,
		      uint64_t bytes)
{
	struct daemon *d = c->s->d;
	struct quota_tally t = { 0 };
	struct upager_usage *u;
	enum quota_kind k = kind;
	unsigned int missed;
	int ret;

	if (quota_exempt(&d->limits, c->uid))
		return 0;
	ret = usage_count(c->s, &t, true, c->uid, false);
	u = ret ? NULL : quota_tally_get(&t, c->uid);
	if (!u) {
		quota_tally_free(&t);
		return -ENOMEM;
	}
	ret = quota_check(&d->limits, c->uid, k, *quota_usage_field(u, k), more);
	if (!ret && kind == QUOTA_SEGMENTS) {
		k = QUOTA_BYTES;
		more = bytes;
		ret = quota_check(&d->limits, c->uid, k, u->bytes, bytes);
	}
	if (ret && ratelimit_ok(&c->s->rl_quota, &missed))
		pr_notice("server",
			  "pid %d uid %d: refused: %llu %s of %llu, %llu more asked (%u more since)",
			  (int)c->pid, (int)c->uid,
			  (unsigned long long)*quota_usage_field(u, k),
			  quota_kind_name(k),
			  (unsigned long long)quota_limit(&d->limits, c->uid, k),
			  (unsigned long long)more, missed);
	quota_tally_free(&t);
	return ret;
}

/* Requests: each returns the reply's status and sends what it needs to. */

static int reply(struct conn *c, void *msg, size_t len, uint16_t type,
		 const struct upg_hdr *req, int status, int fd)
{
	struct upg_hdr *h = msg;

	proto_hdr_init(h, type, len, req->seq);
	h->status = status;
	return conn_send(c, msg, len, fd);
}

/* @fd (a source) and @base_fd (UPG_BASE's) stay the caller's. */
/* Publishes @seg, new, under the daemon lock. */
static void seg_publish(struct daemon *d, struct segment *seg)
{
	seg->id = ++d->next_seg_id;
	list_add_tail(&seg->link, &d->segments);
	d->nr_segments++;
}

static int do_create(struct conn *c, const struct upg_create *m, int fd,
		     int base_fd)
{
	struct daemon *d = c->s->d;
	struct source *src = NULL;
	struct segment *seg;
	uint32_t ps = sysconf(_SC_PAGESIZE);
	uint64_t size = m->size;
	int ret;

	if (!proto_name_valid(m->name, sizeof(m->name)) ||
	    m->size > UPAGER_MAX_SIZE || m->mode > 0777)
		return -EINVAL;
	switch (m->source) {
	case UPAGER_SOURCE_ZERO:
		if (fd >= 0)
			return -EINVAL;
		ret = source_zero_new(ps, &src);
		break;
	case UPAGER_SOURCE_FILE:
		if (fd < 0)
			return -EINVAL;
		ret = source_file_new(fd, ps, &src);
		break;
	case UPAGER_SOURCE_IMAGE:
		if (fd < 0 || base_fd < 0)
			return -EINVAL;
		ret = source_image_new(fd, base_fd, ps, &src);
		break;
	default:
		return -EINVAL;
	}
	if (ret)
		return ret;
	/*
	 * An image: its size unless one is given, and never more than its
	 * data (what lies past it is its trailer, or nothing of its).
	 */
	if (src->image_size && !size)
		size = src->image_size;
	if (!size || (src->image_size && size > src->image_size)) {
		source_destroy(src);
		return -EINVAL;
	}
	pthread_mutex_lock(&d->lock);
	if (seg_find(d, m->name)) {
		ret = -EEXIST;
		goto out;
	}
	/* the size as segment_new rounds it */
	ret = quota_take(c, QUOTA_SEGMENTS, 1,
			 (size + ps - 1) & ~(uint64_t)(ps - 1));
	if (ret)
		goto out;
	ret = segment_new(d, m->name, size, c->uid, c->gid,
			  m->mode ? m->mode : 0600, src, &seg);
	if (ret)
		goto out;
	src = NULL;
	seg_publish(d, seg);
	pr_notice("segment", "%s: created by pid %d: %llu bytes, %s source%s%s",
		  seg->name, (int)c->pid, (unsigned long long)seg->size,
		  seg->src->ops->name, seg->src->path[0] ? " " : "",
		  seg->src->path);
out:
	pthread_mutex_unlock(&d->lock);
	source_destroy(src);
	return ret;
}

static int do_delete(struct conn *c, const struct upg_name *m)
{
	struct daemon *d = c->s->d;
	struct segment *seg;
	int ret = 0;

	if (!proto_name_valid(m->name, sizeof(m->name)) ||
	    (m->flags & ~(UPAGER_DELETE_FORCE | UPAGER_DELETE_UNUSED)))
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	seg = seg_find(d, m->name);
	ret = seg_lookup(c, seg, 0);
	if (!ret && c->uid != 0 && c->uid != seg->uid)
		ret = -EACCES;
	else if (!ret && (m->flags & UPAGER_DELETE_UNUSED) &&
		 seg->nr_attachments) {
		/* attach_reap() deletes it at the last detach */
		seg->delete_unused = true;
		pthread_mutex_unlock(&d->lock);
		pr_info("segment", "%s: deleted by pid %d once unattached",
			seg->name, (int)c->pid);
		return 0;
	} else if (!ret &&
		   (seg->nr_attachments || atomic_load(&seg->nr_clones)) &&
		   !(m->flags & UPAGER_DELETE_FORCE))
		ret = -EBUSY; /* a forced one lives on for its clones */
	if (!ret) {
		segment_unpublish(d, seg);
		pr_notice("segment", "%s: deleted by pid %d%s", seg->name,
			  (int)c->pid, seg->nr_attachments ? " (attached)" : "");
	}
	pthread_mutex_unlock(&d->lock);
	if (!ret)
		segment_put(seg);
	return ret;
}

static int do_stat(struct conn *c, const struct upg_name *m)
{
	struct daemon *d = c->s->d;
	struct upg_info r;
	struct segment *seg;
	int ret = 0;

	if (!proto_name_valid(m->name, sizeof(m->name)) || m->flags)
		return -EINVAL;
	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&d->lock);
	seg = seg_find(d, m->name);
	ret = seg_lookup(c, seg, 4);
	if (!ret)
		info_for(c, seg, &r.info);
	pthread_mutex_unlock(&d->lock);
	if (ret)
		return ret;
	return reply(c, &r, sizeof(r), UPG_STAT, &m->h, 0, -1) ?: 1;
}

static int do_list(struct conn *c, const struct upg_hdr *m)
{
	struct daemon *d = c->s->d;
	struct upg_info r;
	struct segment *seg;
	int n = 0, ret = 0;

	pthread_mutex_lock(&d->lock);
	list_for_each_entry(seg, &d->segments, link) {
		if (seg_access(seg, c, 4))
			continue;
		memset(&r, 0, sizeof(r));
		info_for(c, seg, &r.info);
		ret = reply(c, &r, sizeof(r), UPG_LIST_ENTRY, m, 0, -1);
		if (ret)
			break;
		n++;
	}
	pthread_mutex_unlock(&d->lock);
	return ret ? ret : n;
}

static void sum_counters(struct daemon *d, struct upager_daemon_stats *st)
{
	struct segment *seg;

	st->faults_missing = counter_get(d->retired.faults_missing);
	st->faults_wp = counter_get(d->retired.faults_wp);
	st->faults_minor = counter_get(d->retired.faults_minor);
	st->faults_waited = counter_get(d->retired.faults_waited);
	st->pages_filled = counter_get(d->retired.pages_filled);
	st->bytes_read = counter_get(d->retired.bytes_read);
	st->readahead_pages = counter_get(d->retired.readahead_pages);
	st->readahead_touched = counter_get(d->retired.readahead_touched);
	st->readahead_untouched = counter_get(d->retired.readahead_untouched);
	list_for_each_entry(seg, &d->segments, link) {
		st->faults_missing += counter_get(seg->c.faults_missing);
		st->faults_wp += counter_get(seg->c.faults_wp);
		st->faults_minor += counter_get(seg->c.faults_minor);
		st->faults_waited += counter_get(seg->c.faults_waited);
		st->pages_filled += counter_get(seg->c.pages_filled);
		st->bytes_read += counter_get(seg->c.bytes_read);
		st->readahead_pages += counter_get(seg->c.readahead_pages);
		st->readahead_touched += counter_get(seg->c.readahead_touched);
		st->readahead_untouched += counter_get(
			seg->c.readahead_untouched);
		st->resident_bytes += segment_resident_bytes(seg);
	}
}

static int do_stats(struct conn *c, const struct upg_hdr *m)
{
	struct daemon *d = c->s->d;
	struct upg_stats r;
	struct upager_daemon_stats *st = &r.st;

	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&d->lock);
	st->segments = d->nr_segments;
	st->segments_created = d->next_seg_id;
	sum_counters(d, st);
	pthread_mutex_unlock(&d->lock);
	st->uptime_ns = now_ns() - d->start_ns;
	st->attachments = counter_get(d->nr_attachments);
	st->connections = counter_get(d->connections);
	st->threads = d->nr_workers;
	st->events_fork = counter_get(d->events_fork);
	st->events_remap = counter_get(d->events_remap);
	st->events_remove = counter_get(d->events_remove);
	st->events_unmap = counter_get(d->events_unmap);
	st->clients_exited = counter_get(d->clients_exited);
	st->protocol_errors = counter_get(d->protocol_errors);
	st->uffd_reads = counter_get(d->uffd_reads);
	st->uffd_reads_empty = counter_get(d->uffd_reads_empty);
	st->home_moves = counter_get(d->home_moves);
	st->pollers_added = counter_get(d->pollers_added);
	return reply(c, &r, sizeof(r), UPG_STATS, m, 0, -1) ?: 1;
}

/*
 * Root is told every user that holds anything, and itself; anyone else
 * only themselves.  One UPG_USAGE_ENTRY each, by uid; the count follows.
 */
static int do_usage(struct conn *c, const struct upg_hdr *m)
{
	struct daemon *d = c->s->d;
	struct quota_tally t = { 0 };
	struct upg_usage r;
	int ret;

	pthread_mutex_lock(&d->lock);
	ret = usage_count(c->s, &t, c->uid != 0, c->uid, true);
	pthread_mutex_unlock(&d->lock);
	if (!ret && !quota_tally_get(&t, c->uid))
		ret = -ENOMEM;
	for (size_t i = 0; !ret && i < t.n; i++) {
		memset(&r, 0, sizeof(r));
		r.usage = t.v[i];
		quota_usage_limits(&d->limits, &r.usage);
		ret = reply(c, &r, sizeof(r), UPG_USAGE_ENTRY, m, 0, -1);
	}
	if (!ret)
		ret = t.n;
	quota_tally_free(&t);
	return ret;
}

static int do_attach(struct conn *c, const struct upg_name *m)
{
	struct daemon *d = c->s->d;
	struct upg_attach_reply r;
	struct segment *seg;
	unsigned int want = 4;
	uint32_t known = UPAGER_ATTACH_RDONLY | UPAGER_ATTACH_PRIVATE;
	/* private: written by the process alone, read from the memfd */
	bool ro = m->flags & (UPAGER_ATTACH_RDONLY | UPAGER_ATTACH_PRIVATE);
	int ret, fd = -1;

	if (c->features & UPG_FEATURE_OWNER)
		known |= UPG_ATTACH_OWNER;
	if (!proto_name_valid(m->name, sizeof(m->name)) ||
	    (m->flags & ~known) || (m->owner && !(m->flags & UPG_ATTACH_OWNER)))
		return -EINVAL;
	if (!ro)
		want |= 2;
	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&d->lock);
	seg = seg_find(d, m->name);
	ret = seg_lookup(c, seg, want);
	/* A snapshot is read-only; only a snapshot is mapped private. */
	if (!ret && seg->is_snapshot && !ro)
		ret = -EROFS;
	if (!ret && !seg->is_snapshot && (m->flags & UPAGER_ATTACH_PRIVATE))
		ret = -EINVAL;
	/* After the lookup: a segment one may not see is not told of. */
	if (!ret && (m->flags & UPG_ATTACH_OWNER) && seg->uid != m->owner)
		ret = -EPERM;
	/* Refused here already, before the client maps and registers. */
	if (!ret)
		ret = quota_take(c, QUOTA_ATTACHMENTS, 1, 0);
	if (!ret) {
		r.seg_id = seg->id;
		r.size = seg->size;
		r.page_size = seg->page_size;
		r.source = seg->src->ops->kind;
		fd = seg->memfd;
		if (ro) {
			/* A read-only open file: it cannot be mapped for
			 * writing, nor written. */
			char path[64];

			snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				ret = -errno;
		}
	}
	pthread_mutex_unlock(&d->lock);
	if (ret)
		return ret;
	ret = reply(c, &r, sizeof(r), UPG_ATTACH, &m->h, 0, fd);
	if (ro)
		close(fd);
	return ret ?: 1;
}

/* @fd is a userfaultfd (of any process: the kernel binds it to its mm). */
static bool is_uffd(int fd)
{
	char path[64], link[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return false;
	link[n] = '\0';
	return !strcmp(link, "anon_inode:[userfaultfd]");
}

/*
 * Whether [addr, addr + len) of @pid maps @seg's memfd from offset 0, by
 * its inode in /proc/PID/maps: the daemon trusts no address it cannot see.
 * With @len 0: whether @pid maps the memfd anywhere.
 */
static bool maps_segment(pid_t pid, struct segment *seg, uint64_t addr,
			 uint64_t len)
{
	char path[64], line[512];
	uint64_t covered = addr;
	bool any = false;
	struct stat st;
	FILE *f;

	if (fstat(seg->memfd, &st) < 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi, off, ino;

		if (sscanf(line, "%llx-%llx %*s %llx %*s %llu", &lo, &hi, &off,
			   &ino) != 4)
			continue;
		if (ino != st.st_ino || !strstr(line, "upager:"))
			continue;
		any = true;
		if (!len)
			break;
		/* The VMA must map segment offset p - addr at address p. */
		if (lo <= covered && hi > covered && lo >= addr &&
		    off == lo - addr)
			covered = hi;
	}
	fclose(f);
	return len ? covered >= addr + len : any;
}

/*
 * The features the kernel enabled on the uffd @fd, from its fdinfo: what
 * the client says it asked for is not evidence.  A uffd that never
 * completed the API handshake (no MISSING_SHMEM: it could not serve a
 * segment) is -EINVAL.
 */
static int uffd_real_features(int fd, uint64_t *features)
{
	int ret = uffd_features_of(fd, features);

	if (!ret && !(*features & UFFD_FEATURE_MISSING_SHMEM))
		ret = -EINVAL;
	return ret;
}

static int do_register(struct conn *c, const struct upg_register *m, int fd)
{
	struct daemon *d = c->s->d;
	uint64_t features = 0;
	struct upg_register_reply r;
	struct attachment *att = NULL;
	struct segment *seg, *held = NULL;
	unsigned int want = 4;
	int ret;

	if (fd < 0)
		return -EINVAL;
	if (!is_uffd(fd) || (m->flags & ~UPG_REGISTER_RDONLY) ||
	    !(m->uffd_ioctls & (1ull << _UFFDIO_COPY)) ||
	    m->addr + m->len < m->addr || uffd_real_features(fd, &features)) {
		close(fd);
		return -EINVAL;
	}
	if (!(m->flags & UPG_REGISTER_RDONLY))
		want |= 2;
	pthread_mutex_lock(&d->lock);
	seg = seg_find_id(d, m->seg_id);
	ret = seg_lookup(c, seg, want);
	if (!ret && seg->is_snapshot && !(m->flags & UPG_REGISTER_RDONLY))
		ret = -EROFS;
	if (!ret && (m->addr % seg->page_size || m->len != seg->size))
		ret = -EINVAL;
	if (!ret) {
		segment_get(seg);
		held = seg;
	}
	pthread_mutex_unlock(&d->lock);
	if (ret)
		goto out;
	/* /proc is read without the lock; the segment is looked up again. */
	if (!maps_segment(c->pid, seg, m->addr, m->len)) {
		ret = -EINVAL;
		goto out;
	}
	pthread_mutex_lock(&d->lock);
	if (seg_find_id(d, m->seg_id) != seg)
		ret = -ENOENT; /* deleted meanwhile */
	/* One uffd, one attachment: served twice it would be read by two. */
	if (!ret && attach_uffd_served(d, fd))
		ret = -EBUSY;
	if (!ret)
		ret = quota_take(c, QUOTA_ATTACHMENTS, 1, 0);
	if (!ret)
		ret = attach_new(seg, fd, c->pid, m->addr, m->len, 0, &att);
	if (!ret) {
		fd = -1;
		att->flags = m->flags;
		att->uid = c->uid;
		att->uffd_features = features;
		att->uffd_ioctls = m->uffd_ioctls;
		/* Snapshots would miss what it writes. */
		if ((atomic_load(&seg->nr_snapshots) ||
		     atomic_load(&seg->cutting)) &&
		    !snapshot_can_protect(att))
			ret = -EOPNOTSUPP;
		else
			ret = worker_assign(d, att);
	}
	if (!ret)
		ret = attach_set_pid(att, c->pid);
	if (!ret) {
		attach_publish(att);
		pr_info("attach",
			"%s: pid %d attached at %#llx: attachment %llu",
			seg->name, (int)c->pid, (unsigned long long)m->addr,
			(unsigned long long)att->id);
	}
	pthread_mutex_unlock(&d->lock);
out:
	segment_put(held); /* an attachment holds its own */
	if (ret) {
		attach_put(att);
		if (fd >= 0)
			close(fd);
		return ret;
	}
	worker_add(att);
	/* Protected before it is told it may write. */
	ret = snapshot_attach(att);
	if (ret) {
		attach_kill(att, "unprotected");
		attach_put(att);
		return ret;
	}
	memset(&r, 0, sizeof(r));
	r.attach_id = att->id;
	attach_put(att);
	return reply(c, &r, sizeof(r), UPG_REGISTER, &m->h, 0, -1) ?: 1;
}

static int do_detach(struct conn *c, const struct upg_detach *m)
{
	struct attachment *att = attach_find(c->s->d, m->attach_id);

	if (att && atomic_load(&att->pid) != c->pid && c->uid != 0) {
		attach_put(att);
		att = NULL;
	}
	if (!att)
		return -ENOENT;
	attach_kill(att, "detached");
	attach_put(att);
	worker_reap_killed(c->s->d);
	return 0;
}

/* The parent of @pid, from /proc; 0 if unknown. */
static pid_t parent_of(pid_t pid)
{
	char path[64], buf[512], *p;
	pid_t ppid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')))
		sscanf(p + 1, " %*c %d", &ppid);
	fclose(f);
	return ppid;
}

/*
 * Whether @uffd belongs to the mm in which [addr, addr + page) is mapped:
 * registering that page through it works only then.  Undone at once.
 */
static bool uffd_owns(int uffd, uint64_t addr)
{
	uint64_t len = sysconf(_SC_PAGESIZE);
	int ret = uffd_register(uffd, addr, len, UFFDIO_REGISTER_MODE_MISSING,
				NULL);

	if (ret) {
		pr_debug("server", "probe %#llx: %s", (unsigned long long)addr,
			 strerror(-ret));
		return false;
	}
	uffd_unregister(uffd, addr, len);
	return true;
}

static void resolved(struct attachment *att, pid_t pid, const char *how)
{
	struct daemon *d = att->seg->d;
	if (attach_set_pid(att, pid))
		return;
	atomic_fetch_sub(&d->unresolved, 1);
	pr_info("attach", "%s: attachment %llu is pid %d (%s)", att->seg->name,
		(unsigned long long)att->id, (int)pid, how);
	worker_watch_pid(att);
}

/*
 * A forked child claims the attachment the daemon made for it.  The proof
 * is the probe page: mapped at an address only the claimant's mm has, it
 * can be registered through the claimant's uffd alone.  A probe that
 * several candidates' uffds can register (an address every sibling maps,
 * like the segment itself) proves nothing and is refused, as is a claim
 * from another user than the attachment's.
 */
static int do_claim(struct conn *c, const struct upg_claim *m)
{
	struct daemon *d = c->s->d;
	struct upg_register_reply r;
	struct attachment *att, *found = NULL;
	struct att_set cands = { 0 };
	pid_t ppid = parent_of(c->pid);
	int ret = 0, owners = 0;

	if (m->probe_addr % sysconf(_SC_PAGESIZE))
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	list_for_each_entry(att, &d->attachments, all_link) {
		pid_t pid = atomic_load(&att->pid);

		/* Only the attachment's user may have its uffd. */
		if (att->parent_id != m->parent_attach_id ||
		    att->parent_pid != ppid || (pid && pid != c->pid) ||
		    (c->uid != 0 && c->uid != att->uid))
			continue;
		ret = att_set_add(&cands, att);
		if (ret)
			break;
	}
	pthread_mutex_unlock(&d->lock);
	/*
	 * The probes register through other processes' uffds: not under
	 * the lock.  The candidates' pids change on this thread only, so
	 * what matched above still does.
	 */
	for (size_t i = 0; !ret && i < cands.n; i++) {
		if (uffd_owns(cands.v[i]->uffd, m->probe_addr)) {
			found = cands.v[i];
			owners++;
		}
	}
	if (!ret && owners > 1) {
		pr_warn("server",
			"pid %d: claim refused: the probe at %#llx is "
			"no proof (%d candidates map it)",
			(int)c->pid, (unsigned long long)m->probe_addr, owners);
		ret = -EPERM;
	} else if (!ret && !found) {
		ret = -EAGAIN; /* the fork event is not read yet */
	}
	if (ret) {
		att_set_put(&cands);
		return ret;
	}
	pthread_mutex_lock(&d->lock);
	if (!atomic_load(&found->pid))
		resolved(found, c->pid, "claimed");
	pthread_mutex_unlock(&d->lock);
	memset(&r, 0, sizeof(r));
	r.attach_id = found->id;
	ret = reply(c, &r, sizeof(r), UPG_CLAIM, &m->h, 0, found->uffd);
	att_set_put(&cands);
	return ret ?: 1;
}

static const char *type_name(uint16_t type)
{
	static const char *const names[UPG_TYPE_MAX] = {
		[UPG_HELLO] = "hello",
		[UPG_CREATE] = "create",
		[UPG_DELETE] = "delete",
		[UPG_STAT] = "stat",
		[UPG_LIST] = "list",
		[UPG_LIST_ENTRY] = "list entry",
		[UPG_STATS] = "stats",
		[UPG_ATTACH] = "attach",
		[UPG_REGISTER] = "register",
		[UPG_DETACH] = "detach",
		[UPG_CLAIM] = "claim",
		[UPG_USAGE] = "usage",
		[UPG_USAGE_ENTRY] = "usage entry",
		[UPG_SNAPSHOT] = "snapshot",
		[UPG_CLONE] = "clone",
		[UPG_SAVE] = "save",
		[UPG_BASE] = "base",
	};

	return type < UPG_TYPE_MAX && names[type] ? names[type] : "unknown";
}

/* A protocol error: says which check failed, in @c->why. */
__attribute__((format(printf, 2, 3))) static int
protocol_error(struct conn *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->why, sizeof(c->why), fmt, ap);
	va_end(ap);
	return -EPROTO;
}

/*
 * The checks of proto_recv(), each with its reason for the log, and one
 * more outcome: a descriptor that came with the record but could not be
 * installed because the daemon is at its descriptor limit (@lost gets
 * -EMFILE or -ENFILE).  That is the daemon's shortage, not the client's
 * mistake: the request is answered with it.  Returns the record's size,
 * 0 on hang-up, -EPROTO (reason in @c->why) or -errno.
 */
static ssize_t conn_recv(struct conn *c, void *buf, size_t len, int *fd,
			 int *lost)
{
	union {
		struct cmsghdr c;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} cbuf;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = cbuf.buf,
		.msg_controllen = sizeof(cbuf.buf),
	};
	const struct upg_hdr *h = buf;
	int nfds = 0, ret = 0;
	bool other = false;
	ssize_t n;

	*fd = -1;
	*lost = 0;
	do
		n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm;
	     cm = CMSG_NXTHDR(&mh, cm)) {
		size_t k;

		if (cm->cmsg_level != SOL_SOCKET ||
		    cm->cmsg_type != SCM_RIGHTS) {
			other = true;
			continue;
		}
		k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++, nfds++) {
			int d;

			memcpy(&d, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (nfds == 0)
				*fd = d;
			else
				close(d);
		}
	}
	if (n == 0 && nfds == 0 && !other && !(mh.msg_flags & MSG_CTRUNC))
		return 0;
	if (mh.msg_flags & MSG_TRUNC)
		ret = protocol_error(c, "a record longer than any message");
	else if (other)
		ret = protocol_error(c, "a control message not SCM_RIGHTS");
	else if (nfds > 1)
		ret = protocol_error(c, "%d descriptors with one record", nfds);
	else if ((size_t)n < sizeof(*h))
		ret = protocol_error(c,
				     "a record of %zd bytes, shorter than a header",
				     n);
	else if (h->magic != UPG_MAGIC)
		ret = protocol_error(c, "bad magic %#x", h->magic);
	else if (h->version != UPG_VERSION)
		ret = protocol_error(c, "protocol version %u, not %u",
				     h->version, UPG_VERSION);
	else if (h->size != (size_t)n)
		ret = protocol_error(c,
				     "header says %u bytes, the record has %zd",
				     h->size, n);
	if (!ret && (mh.msg_flags & MSG_CTRUNC)) {
		/* Descriptors the kernel could not install here.  At the
		 * limit that is ours to answer; otherwise the control data
		 * was more than any request carries. */
		int probe = nfds ? -1 : fcntl(c->fd, F_DUPFD_CLOEXEC, 3);

		if (!nfds && probe < 0 && (errno == EMFILE || errno == ENFILE))
			*lost = -errno;
		else
			ret = protocol_error(c, "control data truncated");
		if (probe >= 0)
			close(probe);
	}
	if (ret && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	return ret ? ret : n;
}

/*
 * Runs one request.  Returns 0, -EPROTO to drop the client for a protocol
 * error (reason in @c->why), or another -errno when a reply could not be
 * sent (the client is dropped too, but did nothing wrong).
 */
/* Snapshots, clones, images */

/*
 * Looks up @name for a new segment made of it (read permission), takes
 * its reference and @new's quota: 0 or -errno.  Under the daemon lock.
 */
static int made_of(struct conn *c, const char *name, const char *new,
		   struct segment **out)
{
	struct daemon *d = c->s->d;
	struct segment *seg = seg_find(d, name);
	int ret = seg_lookup(c, seg, 4);

	if (!ret && seg_find(d, new))
		ret = -EEXIST;
	if (!ret)
		ret = quota_take(c, QUOTA_SEGMENTS, 1, seg->size);
	if (!ret) {
		segment_get(seg);
		*out = seg;
	}
	return ret;
}

static int do_snapshot(struct conn *c, const struct upg_name2 *m)
{
	struct daemon *d = c->s->d;
	struct upg_snapshot_reply r;
	struct segment *seg = NULL, *snap;
	int ret;

	if (!proto_name_valid(m->name, sizeof(m->name)) ||
	    !proto_name_valid(m->name2, sizeof(m->name2)) || m->flags || m->mode)
		return -EINVAL;
	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&d->lock);
	ret = made_of(c, m->name, m->name2, &seg);
	pthread_mutex_unlock(&d->lock);
	if (ret)
		return ret;
	/* Cut without the daemon lock: the readers publish forks under it.
	 * The snapshot has its parent's mode, and the caller owns it. */
	ret = snapshot_new(seg, m->name2, c->uid, c->gid, seg->mode, &snap,
			   &r.res);
	if (!ret) {
		pthread_mutex_lock(&d->lock);
		if (seg_find(d, m->name2)) {
			ret = -EEXIST; /* taken meanwhile */
		} else {
			seg_publish(d, snap);
			snap = NULL;
		}
		pthread_mutex_unlock(&d->lock);
		segment_put(snap);
	}
	segment_put(seg);
	if (ret)
		return ret;
	pr_notice("segment",
		  "%s: snapshot %s by pid %d: %llu pages shared, cut %llu us, "
		  "writers held %llu (longest %llu us)",
		  m->name, m->name2, (int)c->pid,
		  (unsigned long long)r.res.pages_shared,
		  (unsigned long long)r.res.cut_ns / 1000,
		  (unsigned long long)r.res.writers_held,
		  (unsigned long long)r.res.max_hold_ns / 1000);
	return reply(c, &r, sizeof(r), UPG_SNAPSHOT, &m->h, 0, -1) ?: 1;
}

static int do_clone(struct conn *c, const struct upg_name2 *m)
{
	struct daemon *d = c->s->d;
	struct segment *snap = NULL, *seg;
	int ret;

	if (!proto_name_valid(m->name, sizeof(m->name)) ||
	    !proto_name_valid(m->name2, sizeof(m->name2)) || m->flags ||
	    m->mode > 0777)
		return -EINVAL;
	pthread_mutex_lock(&d->lock);
	ret = made_of(c, m->name, m->name2, &snap);
	if (!ret)
		ret = snapshot_clone(snap, m->name2, c->uid, c->gid,
				     m->mode ? m->mode : 0600, &seg);
	if (!ret)
		seg_publish(d, seg);
	pthread_mutex_unlock(&d->lock);
	segment_put(snap);
	if (!ret)
		pr_notice("segment", "%s: clone %s by pid %d", m->name,
			  m->name2, (int)c->pid);
	return ret;
}

/*
 * A save runs on a thread of its own: writing a large segment takes
 * seconds, which the control plane must not stop for.  Its connection is
 * busy meanwhile: its next requests wait unread in the socket (the
 * library sends one at a time anyway), and the idle sweep leaves it
 * alone.  The thread's end wakes the main thread, which answers and
 * reads on (saves_reap).  The job holds a reference to the connection,
 * which may be closed meanwhile (the answer then goes nowhere).
 */
static void conn_put(struct conn *c);
static void conn_close(struct server *s, struct conn *c, const char *why);
static void conn_readable(struct server *s, struct conn *c);

struct save_job {
	struct list_head link; /* the server's saves */
	struct conn *c;	       /* a reference */
	struct upg_hdr req;    /* answered with its seq */
	struct image_save *sv;
	pthread_t thread;
	_Atomic bool done;
	int status;
	struct upager_save_result res;
	char name[UPAGER_NAME_MAX + 1];
};

static void *save_thread(void *arg)
{
	struct save_job *job = arg;
	struct daemon *d = job->c->s->d;

	job->status = image_save_run(job->sv, &job->res);
	atomic_store(&job->done, true);
	daemon_wake_main(d);
	return NULL;
}

static void save_job_free(struct save_job *job)
{
	pthread_join(job->thread, NULL);
	image_save_free(job->sv);
	list_del_init(&job->link);
	conn_put(job->c);
	free(job);
}

/* The saves that ended: answer their clients, who may go on. */
static void saves_reap(struct server *s)
{
	struct save_job *job, *tmp;

	list_for_each_entry_safe(job, tmp, &s->saves, link) {
		struct conn *c = job->c;
		struct upg_save_reply r;

		if (!atomic_load(&job->done))
			continue;
		if (job->status)
			pr_notice("image", "%s: save for pid %d failed: %s",
				  job->name, (int)c->pid,
				  strerror(-job->status));
		else
			pr_info("image",
				"%s: saved for pid %d: %llu pages, %llu of "
				"data, %llu bytes in %llu ms",
				job->name, (int)c->pid,
				(unsigned long long)job->res.pages,
				(unsigned long long)job->res.pages_data,
				(unsigned long long)job->res.bytes_written,
				(unsigned long long)(job->res.ns / 1000000));
		c->busy = false;
		c->last_ns = now_ns();
		if (!c->closed) {
			memset(&r, 0, sizeof(r));
			r.res = job->res;
			if (job->status)
				reply(c, &r, sizeof(struct upg_hdr), UPG_SAVE,
				      &job->req, job->status, -1);
			else
				reply(c, &r, sizeof(r), UPG_SAVE, &job->req, 0,
				      -1);
			if (c->send_err)
				conn_close(s, c, strerror(-c->send_err));
			else
				conn_readable(s, c); /* what waited */
		}
		save_job_free(job);
	}
}

/* The daemon stops: the saves running are cut short. */
static void saves_stop(struct server *s)
{
	struct save_job *job;

	list_for_each_entry(job, &s->saves, link)
		image_save_cancel(job->sv);
	while (!list_empty(&s->saves))
		save_job_free(list_entry(s->saves.next, struct save_job, link));
}

/* Takes @fd.  Answered when the save ends (saves_reap), or refused now. */
static int do_save(struct conn *c, const struct upg_name2 *m, int fd)
{
	struct daemon *d = c->s->d;
	struct segment *seg, *since = NULL;
	struct save_job *job = NULL;
	int ret = 0;

	if (fd < 0 || !proto_name_valid(m->name, sizeof(m->name)) ||
	    (m->name2[0] && !proto_name_valid(m->name2, sizeof(m->name2))) ||
	    m->flags || m->mode) {
		ret = -EINVAL;
		goto out;
	}
	job = calloc(1, sizeof(*job));
	if (!job) {
		ret = -ENOMEM;
		goto out;
	}
	pthread_mutex_lock(&d->lock);
	seg = seg_find(d, m->name);
	ret = seg_lookup(c, seg, 4);
	if (!ret && m->name2[0]) {
		since = seg_find(d, m->name2);
		ret = seg_lookup(c, since, 4);
	}
	if (!ret) {
		segment_get(seg);
		if (since)
			segment_get(since);
	}
	pthread_mutex_unlock(&d->lock);
	if (ret)
		goto out;
	ret = image_save_new(seg, since, fd, &job->sv);
	segment_put(seg);
	segment_put(since);
	if (ret)
		goto out;
	fd = -1;
	job->c = c;
	job->req = m->h;
	snprintf(job->name, sizeof(job->name), "%s", m->name);
	c->refs++;
	ret = pthread_create(&job->thread, NULL, save_thread, job);
	if (ret) {
		c->refs--;
		image_save_free(job->sv);
		ret = -ret;
		goto out;
	}
	list_add_tail(&job->link, &c->s->saves);
	c->busy = true;
	return 1; /* answered at the end */
out:
	if (fd >= 0)
		close(fd);
	free(job);
	return ret;
}

/* Takes @fd: kept for the connection's next create (do_create). */
static int do_base(struct conn *c, int fd)
{
	if (fd < 0)
		return -EINVAL;
	if (c->base_fd >= 0)
		close(c->base_fd);
	c->base_fd = fd;
	return 0;
}

static int handle_request(struct conn *c, const void *buf, size_t n, int fd,
			  int lost)
{
	const struct upg_hdr *h = buf;
	size_t want = proto_request_size(h->type);
	struct upg_hdr r;
	int ret;

	if (!want)
		ret = protocol_error(c, "unknown request type %u", h->type);
	else if (!c->hello && h->type != UPG_HELLO)
		ret = protocol_error(c, "%s before hello", type_name(h->type));
	else if (n != want)
		ret = protocol_error(c, "%s of %zu bytes, not %zu",
				     type_name(h->type), n, want);
	else if (h->status != 0)
		ret = protocol_error(c, "status %d in a %s request", h->status,
				     type_name(h->type));
	else if (fd >= 0 && h->type != UPG_CREATE && h->type != UPG_REGISTER &&
		 h->type != UPG_SAVE && h->type != UPG_BASE)
		ret = protocol_error(c, "a descriptor with %s",
				     type_name(h->type));
	else
		ret = 0;
	if (ret || lost) {
		if (fd >= 0)
			close(fd);
		if (ret)
			return ret;
		/* Its descriptor did not make it: a refusal, not an error. */
		proto_hdr_init(&r, h->type, sizeof(r), h->seq);
		r.status = lost;
		conn_send(c, &r, sizeof(r), -1);
		return c->send_err;
	}
	switch (h->type) {
	case UPG_HELLO: {
		const struct upg_hello *m = buf;
		struct upg_hello rh = { .features = m->features &
						    UPG_FEATURES_KNOWN };

		if (c->hello)
			return protocol_error(c, "a second hello");
		if (m->features & ~UPG_FEATURES_KNOWN)
			return protocol_error(c, "unknown feature bits %#llx",
					      (unsigned long long)m->features &
						      ~UPG_FEATURES_KNOWN);
		c->hello = true;
		c->features = rh.features;
		reply(c, &rh, sizeof(rh), UPG_HELLO, h, 0, -1);
		return c->send_err;
	}
	case UPG_CREATE: {
		/* A base (UPG_BASE) is for the one create that follows. */
		int base_fd = c->base_fd;

		c->base_fd = -1;
		ret = do_create(c, buf, fd, base_fd);
		if (fd >= 0)
			close(fd);
		if (base_fd >= 0)
			close(base_fd);
		break;
	}
	case UPG_DELETE:
		ret = do_delete(c, buf);
		break;
	case UPG_STAT:
		ret = do_stat(c, buf);
		break;
	case UPG_LIST:
		ret = do_list(c, buf);
		if (ret >= 0) {
			proto_hdr_init(&r, UPG_LIST, sizeof(r), h->seq);
			r.status = ret;
			conn_send(c, &r, sizeof(r), -1);
			return c->send_err;
		}
		break;
	case UPG_STATS:
		ret = do_stats(c, buf);
		break;
	case UPG_USAGE:
		if (!(c->features & UPG_FEATURE_USAGE))
			return protocol_error(c, "usage without its feature");
		ret = do_usage(c, buf);
		if (ret >= 0) {
			proto_hdr_init(&r, UPG_USAGE, sizeof(r), h->seq);
			r.status = ret;
			conn_send(c, &r, sizeof(r), -1);
			return c->send_err;
		}
		break;
	case UPG_ATTACH:
		ret = do_attach(c, buf);
		break;
	case UPG_REGISTER:
		ret = do_register(c, buf, fd);
		break;
	case UPG_DETACH:
		ret = do_detach(c, buf);
		break;
	case UPG_CLAIM:
		ret = do_claim(c, buf);
		break;
	case UPG_SNAPSHOT:
	case UPG_CLONE:
	case UPG_SAVE:
	case UPG_BASE:
		if (!(c->features & UPG_FEATURE_SNAPSHOT)) {
			if (fd >= 0)
				close(fd);
			return protocol_error(c, "%s without its feature",
					      type_name(h->type));
		}
		if (h->type == UPG_SNAPSHOT)
			ret = do_snapshot(c, buf);
		else if (h->type == UPG_CLONE)
			ret = do_clone(c, buf);
		else if (h->type == UPG_SAVE)
			ret = do_save(c, buf, fd);
		else
			ret = do_base(c, fd);
		break;
	default:
		/* proto_request_size() knows a type this switch does not */
		return protocol_error(c, "request type %u not served", h->type);
	}
	/* A reply that failed half-way is not followed by a status. */
	if (c->send_err)
		return c->send_err;
	if (ret == 1)
		return 0; /* replied already */
	if (ret > 0)
		ret = 0;
	proto_hdr_init(&r, h->type, sizeof(r), h->seq);
	r.status = ret;
	/* A refused request gets a bare header whatever its type. */
	conn_send(c, &r, sizeof(r), -1);
	return c->send_err;
}

static void conn_put(struct conn *c)
{
	if (--c->refs)
		return;
	list_del_init(&c->link);
	if (c->base_fd >= 0)
		close(c->base_fd);
	free(c->groups);
	free(c);
}

static void conn_polled(struct io_req *req, const struct io_uring_cqe *cqe);

static int conn_arm(struct server *s, struct conn *c)
{
	int ret = ring_poll(&s->ring, c->fd, true, &c->req);

	if (!ret) {
		c->armed = true;
		c->refs++;
	}
	return ret;
}

static void conn_close(struct server *s, struct conn *c, const char *why)
{
	pr_info("server", "pid %d: connection closed: %s", (int)c->pid, why);
	if (c->armed && ring_cancel(&s->ring, &c->req))
		pr_err("server", "pid %d: cannot cancel a poll: ring full",
		       (int)c->pid);
	list_del_init(&c->link);
	list_add_tail(&c->link, &s->closing);
	close(c->fd);
	c->fd = -1;
	c->closed = true;
	atomic_fetch_sub(&s->d->connections, 1);
	conn_put(c);
}

/*
 * A refused connection: its hello (or hang-up) came.  Read, so that the
 * close does not reset the connection before the answer is read.
 */
static void refused_done(struct server *s, struct conn *c)
{
	char buf[UPG_MSG_MAX];

	while (recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
	conn_close(s, c, "refused");
}

static void conn_readable(struct server *s, struct conn *c)
{
	struct daemon *d = s->d;
	char buf[UPG_MSG_MAX] __attribute__((aligned(8)));

	if (c->refused) {
		refused_done(s, c);
		return;
	}
	for (;;) {
		int fd, lost, ret;

		if (c->busy)
			return; /* read when its save is done */
		ssize_t n = conn_recv(c, buf, sizeof(buf), &fd, &lost);
		unsigned int missed;

		if (n == -EAGAIN)
			return;
		if (n == 0) {
			conn_close(s, c, "hang-up");
			return;
		}
		c->last_ns = now_ns();
		if (lost && ratelimit_ok(&s->rl_lost_fd, &missed))
			pr_warn("server",
				"pid %d: a descriptor it sent was dropped: %s (%u more since)",
				(int)c->pid, strerror(-lost), missed);
		/* Requests see the lists without what was killed since. */
		worker_reap_killed(d);
		ret = n < 0 ? (int)n : handle_request(c, buf, n, fd, lost);
		if (ret == -EPROTO) {
			/* Only malformed input counts; the reason is logged. */
			counter_add(d->protocol_errors, 1);
			pr_warn("server",
				"pid %d: protocol error: %s: disconnected",
				(int)c->pid, c->why);
			conn_close(s, c, "protocol error");
			return;
		}
		if (ret < 0) {
			conn_close(s, c, strerror(-ret));
			return;
		}
	}
}

/* Supplementary groups of the peer, for group permissions (Linux 4.13+). */
static int conn_get_groups(struct conn *c)
{
	socklen_t len = 16 * sizeof(gid_t);

	for (;;) {
		gid_t *g = realloc(c->groups, len ? len : sizeof(gid_t));

		if (!g)
			return -ENOMEM;
		c->groups = g;
		if (!getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, g, &len)) {
			c->nr_groups = len / sizeof(gid_t);
			return 0;
		}
		if (errno == ENOPROTOOPT) {
			c->nr_groups = 0; /* before 4.13: primary only */
			return 0;
		}
		if (errno != ERANGE)
			return -errno;
	}
}

static int reserve_open(struct server *s)
{
	if (s->reserve_fd < 0)
		s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	return s->reserve_fd < 0 ? -errno : 0;
}

/* A refusal is under way: its client is open, or its poll not done. */
static bool refusing(struct server *s)
{
	return s->refuse_fd >= 0 || s->refuse_polled;
}

/*
 * The refused client said hello (or hung up, or took too long): close it.
 * @polled: its poll completed (else it is cancelled, as it holds the
 * socket open).
 */
static void refuse_done(struct server *s, bool polled)
{
	char buf[UPG_MSG_MAX];

	if (s->refuse_fd < 0)
		return;
	while (recv(s->refuse_fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
	/* Its poll's completion still comes: refuse_polled until then. */
	if (!polled && s->refuse_polled && ring_cancel(&s->ring, &s->refuse_req))
		pr_err("server", "cannot cancel a poll: ring full");
	close(s->refuse_fd);
	s->refuse_fd = -1;
	if (reserve_open(s))
		pr_warn("server", "no descriptor to keep in reserve: %s",
			strerror(errno));
}

/*
 * Accepts the client at the head of the backlog on the reserve descriptor
 * and answers it with @err (see the top of this file).  Returns true when
 * it is done with and the next one can be taken, false when the backlog
 * must wait: for its hello, or because the accept failed.
 */
static bool refuse_one(struct server *s, int err)
{
	struct upg_hdr h;
	struct ucred cred = { .pid = 0, .uid = -1 };
	socklen_t len = sizeof(cred);
	unsigned int missed;
	char buf[UPG_MSG_MAX];
	ssize_t n;
	int fd;

	close(s->reserve_fd);
	s->reserve_fd = -1;
	fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0) {
		reserve_open(s);
		return false;
	}
	getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
	if (ratelimit_ok(&s->rl_refuse, &missed))
		pr_warn("server",
			"pid %d uid %d: connection refused: %s (%u more since)",
			(int)cred.pid, (int)cred.uid, strerror(err), missed);
	proto_hdr_init(&h, UPG_HELLO, sizeof(h), 1);
	h.status = -err;
	proto_send(fd, &h, sizeof(h), -1, MSG_DONTWAIT);
	s->refuse_fd = fd;
	n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_PEEK);
	if (n >= 0 || errno != EAGAIN) {
		refuse_done(s, true);
		return s->reserve_fd >= 0;
	}
	s->refuse_deadline_ns = now_ns() + REFUSE_WAIT_MS * 1000000ull;
	if (ring_poll(&s->ring, fd, false, &s->refuse_req)) {
		refuse_done(s, true);
		return s->reserve_fd >= 0;
	}
	s->refuse_polled = true;
	return false;
}

/* Connections of @uid: counted (false), or refused and waiting (true). */
static uint64_t conns_of(struct server *s, uid_t uid, bool refused)
{
	struct conn *c;
	uint64_t n = 0;

	list_for_each_entry(c, &s->conns, link)
		if (c->uid == uid && !!c->refused == refused)
			n++;
	return n;
}

/*
 * @c (not on the list yet) is over its user's connection limit.  It is
 * answered -EUSERS at once, as its hello would be (a client's first
 * request is always hello, seq 1), and closed once that hello is read
 * (closing a socket with a request unread resets the connection and loses
 * the answer), or after REFUSE_WAIT_MS.  A few wait so per uid; past
 * them a connection is closed at once, with or without its answer: a
 * client that floods the daemon with connections cannot make it hold
 * descriptors for them.  Returns true when @c is to be closed now.
 */
static bool conn_refuse(struct server *s, struct conn *c, uint64_t used)
{
	struct daemon *d = s->d;
	struct upg_hdr h;
	char b;
	unsigned int missed;

	if (ratelimit_ok(&s->rl_quota, &missed))
		pr_notice("server",
			  "pid %d uid %d: connection refused: %llu connections of %llu (%u more since)",
			  (int)c->pid, (int)c->uid, (unsigned long long)used,
			  (unsigned long long)quota_limit(&d->limits, c->uid,
							  QUOTA_CONNECTIONS),
			  missed);
	proto_hdr_init(&h, UPG_HELLO, sizeof(h), 1);
	h.status = -EUSERS;
	proto_send(c->fd, &h, sizeof(h), -1, MSG_DONTWAIT);
	if (recv(c->fd, &b, 1, MSG_DONTWAIT | MSG_PEEK) >= 0 ||
	    errno != EAGAIN) {
		while (recv(c->fd, &b, 1, MSG_DONTWAIT) > 0)
			;
		return true;
	}
	if (conns_of(s, c->uid, true) >= REFUSE_PENDING_MAX)
		return true;
	c->refused = -EUSERS;
	c->refuse_deadline_ns = now_ns() + REFUSE_WAIT_MS * 1000000ull;
	return false;
}

static void do_accept(struct server *s)
{
	struct daemon *d = s->d;
	unsigned int missed;

	for (;;) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct conn *c;
		int fd = accept4(s->listen_fd, NULL, NULL,
				 SOCK_CLOEXEC | SOCK_NONBLOCK);
		int sndbuf = 1 << 20;

		if (fd < 0) {
			int err = errno;

			if (err == EINTR || err == ECONNABORTED)
				continue;
			if (err == EAGAIN) {
				s->accept_stalled = false;
				return;
			}
			s->accept_stalled = true;
			if ((err == EMFILE || err == ENFILE) && !refusing(s) &&
			    s->reserve_fd >= 0) {
				if (refuse_one(s, err))
					continue;
				return;
			}
			/* Waits for the refused client, or descriptors or
			 * memory coming back: the tick tries again. */
			if (!refusing(s) && ratelimit_ok(&s->rl_accept, &missed))
				pr_warn("server", "accept: %s (%u more since)",
					strerror(err), missed);
			return;
		}
		c = calloc(1, sizeof(*c));
		if (!c ||
		    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			free(c);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->base_fd = -1;
		if (conn_get_groups(c)) {
			free(c->groups);
			free(c);
			close(fd);
			continue;
		}
		/* Room for a long list reply without blocking. */
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
		c->req.complete = conn_polled;
		c->refs = 1;
		c->s = s;
		c->pid = cred.pid;
		c->uid = cred.uid;
		c->gid = cred.gid;
		c->last_ns = now_ns();
		if (!quota_exempt(&d->limits, c->uid)) {
			uint64_t used = conns_of(s, c->uid, false);

			if (quota_check(&d->limits, c->uid, QUOTA_CONNECTIONS,
					used, 1) &&
			    conn_refuse(s, c, used)) {
				free(c->groups);
				free(c);
				close(fd);
				continue;
			}
		}
		list_add_tail(&c->link, &s->conns);
		atomic_fetch_add(&d->connections, 1);
		pr_info("server", "pid %d uid %d gid %d: connected",
			(int)c->pid, (int)c->uid, (int)c->gid);
		if (conn_arm(s, c))
			conn_close(s, c, "cannot poll it: ring full");
	}
}

/* Whether a live attachment belongs to @pid.  Takes the daemon lock. */
static bool pid_attached(struct daemon *d, pid_t pid)
{
	struct attachment *att;
	bool found = false;

	pthread_mutex_lock(&d->lock);
	list_for_each_entry(att, &d->attachments, all_link)
		if (atomic_load(&att->pid) == pid) {
			found = true;
			break;
		}
	pthread_mutex_unlock(&d->lock);
	return found;
}

/*
 * Closes the connections idle for the idle timeout: no request for that
 * long, and no attachment of their process (the library keeps its
 * connection while it has attachments, and a hang-up would tell it the
 * daemon died).  And the refused ones whose hello did not come in time.
 */
static void conns_sweep(struct server *s)
{
	uint64_t now = now_ns(), idle = s->d->limits.idle_timeout_ns;
	struct conn *c, *tmp;

	list_for_each_entry_safe(c, tmp, &s->conns, link) {
		if (c->refused) {
			if (now > c->refuse_deadline_ns)
				conn_close(s, c, "refused, no hello");
			continue;
		}
		if (!idle || c->busy || now - c->last_ns < idle ||
		    pid_attached(s->d, c->pid))
			continue;
		pr_info("server", "pid %d uid %d: idle for %llu s", (int)c->pid,
			(int)c->uid,
			(unsigned long long)((now - c->last_ns) /
					     1000000000ull));
		conn_close(s, c, "idle");
	}
}

/* Forked children */

static bool pid_maps(pid_t pid, struct segment *seg)
{
	return maps_segment(pid, seg, 0, 0);
}

/*
 * A process other than the daemon that maps @seg and is none of @taken
 * (the pids of its attachments), from every /proc/PID/maps; 0 if none.
 */
static pid_t find_any_mapper(struct segment *seg, const pid_t *taken,
			     size_t nr_taken)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	pid_t found = 0;

	if (!d)
		return 0;
	while (!found && (de = readdir(d))) {
		bool is_taken = false;
		pid_t pid;

		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		pid = atoi(de->d_name);
		for (size_t i = 0; i < nr_taken && !is_taken; i++)
			is_taken = taken[i] == pid;
		if (pid != getpid() && !is_taken && pid_maps(pid, seg))
			found = pid;
	}
	closedir(d);
	return found;
}

/* The thread group of thread @tid, from /proc; 0 if unknown. */
static pid_t tgid_of(pid_t tid)
{
	char path[64], line[128];
	pid_t tgid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Tgid: %d", &tgid) == 1)
			break;
	fclose(f);
	return tgid;
}

/* An unresolved forked child, looked into without the daemon lock. */
struct fork_cand {
	struct attachment *att; /* with a reference */
	pid_t tid;		/* a thread of it seen faulting, or 0 */
	bool expired;		/* unclaimed for FORK_RESOLVE_NS */
	pid_t *taken;		/* expired: the pids of its segment's
				 * attachments then */
	size_t nr_taken;
	pid_t pid; /* found: its pid; -1: it is gone */
};

/* The pids of @seg's attachments, under the daemon lock; NULL if none or
 * out of memory (@n says which). */
static pid_t *seg_pids(struct segment *seg, size_t *n)
{
	struct attachment *att;
	pid_t *pids;

	*n = 0;
	pids = calloc(seg->nr_attachments ? seg->nr_attachments : 1,
		      sizeof(*pids));
	if (!pids)
		return NULL;
	list_for_each_entry(att, &seg->attachments, seg_link)
		if (*n < seg->nr_attachments)
			pids[(*n)++] = atomic_load(&att->pid);
	return pids;
}

/*
 * Finds the pids of forked children that did not claim their attachment
 * (a raw clone, or a claim still on its way).  Only proof counts: the
 * claim (the child maps a page that only its own uffd can register), or a
 * fault (its thread id); a guess from /proc could hand one child's uffd
 * and faults to another process.  An attachment whose process is gone
 * (nobody unattached maps the segment any more) is dropped.
 *
 * The candidates are collected under the daemon lock, /proc is read
 * without it, and what was found is applied under it again if the
 * attachment is still unresolved and alive.  Pids change on this thread
 * only, so the pids an attachment had then are the pids it has now.
 */
static void resolve_forks(struct daemon *d)
{
	struct fork_cand *cands = NULL, *c;
	size_t n = 0, cap = 0;
	struct segment *seg;
	struct attachment *att;
	uint64_t now = now_ns();

	pthread_mutex_lock(&d->lock);
	list_for_each_entry(seg, &d->segments, link) {
		list_for_each_entry(att, &seg->attachments, seg_link) {
			if (atomic_load(&att->pid) || atomic_load(&att->dead))
				continue;
			if (n == cap) {
				size_t ncap = cap ? 2 * cap : 8;
				void *p = realloc(cands, ncap * sizeof(*cands));

				if (!p)
					goto collected; /* the rest next tick */
				cands = p;
				cap = ncap;
			}
			c = &cands[n];
			*c = (struct fork_cand){
				.att = att,
				.tid = atomic_load(&att->fault_tid),
				.expired = now - att->created_ns >=
					   FORK_RESOLVE_NS,
			};
			if (c->expired)
				c->taken = seg_pids(seg, &c->nr_taken);
			if (!c->tid && !c->taken)
				continue; /* nothing to look for yet */
			attach_get(att);
			n++;
		}
	}
collected:
	pthread_mutex_unlock(&d->lock);

	for (c = cands; c < cands + n; c++) {
		pid_t pid = c->tid ? tgid_of(c->tid) : 0;

		if (pid > 0)
			c->pid = pid;
		else if (c->taken &&
			 !find_any_mapper(c->att->seg, c->taken, c->nr_taken))
			c->pid = -1; /* mapped by no unattached process */
	}

	pthread_mutex_lock(&d->lock);
	for (c = cands; c < cands + n; c++) {
		att = c->att;
		if (atomic_load(&att->pid) || atomic_load(&att->dead))
			c->pid = 0; /* claimed, or killed, meanwhile */
		if (!c->pid)
			continue;
		if (c->pid > 0) {
			resolved(att, c->pid, "faulted");
			c->pid = 0;
			continue;
		}
		/* It exited; killed below (attach_kill takes no lock, but
		 * has no business under this one either). */
		atomic_store(&att->pid, -1);
		atomic_fetch_sub(&d->unresolved, 1);
	}
	pthread_mutex_unlock(&d->lock);

	for (c = cands; c < cands + n; c++) {
		if (c->pid < 0 && attach_kill(c->att, "forked child exited"))
			counter_add(d->clients_exited, 1);
		attach_put(c->att);
		free(c->taken);
	}
	free(cands);
}

/*
 * A process that exec'd keeps its pid (the pidfd stays quiet) but dropped
 * the mm its uffd belongs to.  UFFDIO_CONTINUE of one page of its range
 * tells: -ESRCH when that mm is gone.  On a live mm it does nothing a
 * fault would not (a shared attachment refuses it; a private one maps the
 * frame if the memfd has it).
 */
#define PROBE_EVERY_TICKS 25

static void probe_exec(struct daemon *d)
{
	struct att_set set = { 0 };
	struct attachment *att;
	int ret;

	pthread_mutex_lock(&d->lock);
	list_for_each_entry(att, &d->attachments, all_link)
		if (atomic_load(&att->pid) > 0 && att_set_add(&set, att))
			break; /* the rest next time */
	pthread_mutex_unlock(&d->lock);
	for (size_t i = 0; i < set.n; i++) {
		uint64_t start = 0, len = 0;

		att = set.v[i];
		pthread_mutex_lock(&att->lock);
		if (att->nr_ranges) {
			start = att->ranges[0].start;
			len = att->seg->page_size;
		}
		pthread_mutex_unlock(&att->lock);
		ret = len ? uffd_continue(att->uffd, start, len, false, NULL) :
			    0;
		/* -ESRCH: the address space is gone */
		if (ret == -ESRCH && attach_kill(att, "gone (exec)"))
			counter_add(d->clients_exited, 1);
	}
	att_set_put(&set);
}

/* The event loop: each request's completion handler */

static void listen_polled(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct server *s = container_of(req, struct server, listen_req);

	do_accept(s);
	if (!(cqe->flags & IORING_CQE_F_MORE))
		arm_poll(s, s->listen_fd, &s->listen_req);
}

static void signal_read(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct server *s = container_of(req, struct server, signal_req);

	if (cqe->res == sizeof(s->si) && s->si.ssi_signo != SIGHUP) {
		pr_notice("server", "%s: stopping", strsignal(s->si.ssi_signo));
		s->stop = true;
		return;
	}
	arm_read(s, s->sfd, &s->si, sizeof(s->si), &s->signal_req);
}

static void efd_read(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct server *s = container_of(req, struct server, efd_req);
	struct daemon *d = s->d;

	worker_reap_killed(d);
	if (atomic_load(&d->unresolved))
		resolve_forks(d);
	saves_reap(s);
	arm_read(s, d->main_efd, &s->efd_val, sizeof(s->efd_val), &s->efd_req);
}

static void timer_read(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct server *s = container_of(req, struct server, timer_req);
	struct daemon *d = s->d;

	if (atomic_load(&d->unresolved))
		resolve_forks(d);
	if (++s->ticks % PROBE_EVERY_TICKS == 0)
		probe_exec(d);
	if (s->ticks % SWEEP_TICKS == 0)
		conns_sweep(s);
	if (s->refuse_fd >= 0 && now_ns() > s->refuse_deadline_ns)
		refuse_done(s, false);
	if (s->refuse_fd < 0 && s->reserve_fd < 0)
		reserve_open(s);
	if (s->accept_stalled && !refusing(s))
		do_accept(s);
	arm_read(s, s->tfd, &s->tfd_val, sizeof(s->tfd_val), &s->timer_req);
}

/* The refused client said hello or hung up (or the poll was cancelled). */
static void refuse_polled(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct server *s = container_of(req, struct server, refuse_req);

	s->refuse_polled = false;
	if (s->refuse_fd < 0)
		return; /* a client closed already */
	refuse_done(s, true);
	do_accept(s);
}

/*
 * A completion of a connection's multishot poll.  Its last one (no
 * IORING_CQE_F_MORE) drops the poll's reference: after conn_close()
 * cancelled it, or when the kernel ended the poll, which is then armed
 * again.
 */
static void conn_polled(struct io_req *req, const struct io_uring_cqe *cqe)
{
	struct conn *c = container_of(req, struct conn, req);
	struct server *s = c->s;
	bool more = cqe->flags & IORING_CQE_F_MORE;

	if (!more)
		c->armed = false;
	if (!c->closed) {
		conn_readable(s, c); /* may close it */
		if (!c->closed && !more && conn_arm(s, c))
			conn_close(s, c, "cannot poll it: ring full");
	}
	if (!more)
		conn_put(c);
}

static int setup(struct server *s, struct daemon *d, int listen_fd)
{
	struct itimerspec its = {
		.it_interval = { .tv_nsec = TICK_MS * 1000000L },
		.it_value = { .tv_nsec = TICK_MS * 1000000L },
	};
	sigset_t mask;
	int ret;

	memset(s, 0, sizeof(*s));
	s->d = d;
	list_init(&s->conns);
	list_init(&s->closing);
	list_init(&s->saves);
	s->listen_req.complete = listen_polled;
	s->signal_req.complete = signal_read;
	s->efd_req.complete = efd_read;
	s->timer_req.complete = timer_read;
	s->refuse_req.complete = refuse_polled;
	s->listen_fd = listen_fd;
	s->refuse_fd = -1;
	s->reserve_fd = -1;
	if (reserve_open(s))
		return -errno;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	s->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (s->sfd < 0 || s->tfd < 0)
		return -errno;
	if (timerfd_settime(s->tfd, 0, &its, NULL) < 0)
		return -errno;
	ret = io_uring_queue_init(256, &s->ring, 0);
	if (ret < 0)
		return ret;
	arm_poll(s, listen_fd, &s->listen_req);
	arm_read(s, s->sfd, &s->si, sizeof(s->si), &s->signal_req);
	arm_read(s, d->main_efd, &s->efd_val, sizeof(s->efd_val), &s->efd_req);
	arm_read(s, s->tfd, &s->tfd_val, sizeof(s->tfd_val), &s->timer_req);
	return 0;
}

int server_run(struct daemon *d, int listen_fd)
{
	struct server s;
	struct conn *c, *tmp;
	int ret;

	ret = setup(&s, d, listen_fd);
	if (ret)
		return ret;
	while (!s.stop) {
		ret = ring_submit_and_wait(&s.ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			break;
		ret = 0;
		worker_reap_killed(d);
		ring_dispatch(&s.ring);
	}
	while (!list_empty(&s.conns))
		conn_close(&s, list_entry(s.conns.next, struct conn, link),
			   "daemon stopping");
	saves_stop(&s);
	refuse_done(&s, false);
	io_uring_queue_exit(&s.ring);
	/* No completion can come any more: the closed connections go. */
	list_for_each_entry_safe(c, tmp, &s.closing, link) {
		c->refs = 1;
		conn_put(c);
	}
	close(s.sfd);
	close(s.tfd);
	if (s.reserve_fd >= 0)
		close(s.reserve_fd);
	return ret < 0 ? ret : 0;
}
