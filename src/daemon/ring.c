// SPDX-License-Identifier: MIT
/* The io_uring plumbing the main thread and the workers share; see ring.h. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "log.h"
#include "ring.h"

static int sys_io_uring_enter(int fd, unsigned int to_submit,
			      unsigned int min_complete, unsigned int flags)
{
	long ret = syscall(__NR_io_uring_enter, fd, to_submit, min_complete,
			   flags, NULL, _NSIG / 8);

	return ret < 0 ? -errno : (int)ret;
}

struct io_uring_sqe *ring_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	return sqe;
}

int ring_poll(struct io_uring *ring, int fd, bool multi, struct io_req *req)
{
	struct io_uring_sqe *sqe = ring_sqe(ring);

	if (!sqe)
		return -EBUSY;
	if (multi)
		io_uring_prep_poll_multishot(sqe, fd, POLLIN);
	else
		io_uring_prep_poll_add(sqe, fd, POLLIN);
	io_uring_sqe_set_data(sqe, req);
	return 0;
}

int ring_read(struct io_uring *ring, int fd, void *buf, unsigned int len,
	      struct io_req *req)
{
	struct io_uring_sqe *sqe = ring_sqe(ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data(sqe, req);
	return 0;
}

/*
 * A cancel's own completion: 0, the poll was found and will complete with
 * -ECANCELED; -ENOENT, it had completed already (its last completion is on
 * its way or was seen).  Anything else means a poll may be left armed, with
 * the reference it holds: say so.
 */
static void cancel_done(struct io_req *req, const struct io_uring_cqe *cqe)
{
	(void)req;
	if (cqe->res < 0 && cqe->res != -ENOENT)
		pr_warn("ring", "a poll cancel failed: %s", strerror(-cqe->res));
}

static struct io_req cancel_req = { .complete = cancel_done };

/*
 * IORING_OP_ASYNC_CANCEL, never IORING_OP_POLL_REMOVE.  A poll removal
 * must take the poll's ownership to disarm it, and a wakeup holds that
 * from the moment the file signals until the poll's task work runs (on
 * the thread that armed it, the next time it runs task work): the
 * removal then fails with -EALREADY and leaves the poll armed.  A
 * multishot poll survives that for good: it completes with
 * IORING_CQE_F_MORE and re-arms, its last completion never comes, and
 * what it holds is never dropped (a uffd poll: its attachment, with the
 * uffd, the pidfd and the segment's memfd and memory; a connection's
 * poll: the connection).  It is the common case for a uffd poll being
 * cancelled: its process is faulting, or unmapping the range, right
 * then.  An async cancel marks the poll cancelled whoever owns it, and
 * its task work then ends it with -ECANCELED.
 */
int ring_cancel(struct io_uring *ring, struct io_req *req)
{
	struct io_uring_sqe *sqe = ring_sqe(ring);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_cancel64(sqe, (uintptr_t)req, 0);
	io_uring_sqe_set_data(sqe, &cancel_req);
	return 0;
}

unsigned int ring_dispatch(struct io_uring *ring)
{
	struct io_uring_cqe *cqe;
	unsigned int head, n = 0;

	io_uring_for_each_cqe(ring, head, cqe)
	{
		struct io_req *req = io_uring_cqe_get_data(cqe);

		if (req)
			req->complete(req, cqe);
		n++;
	}
	io_uring_cq_advance(ring, n);
	return n;
}

int ring_submit_and_wait(struct io_uring *ring)
{
	int submitted = 0, ret;

	if (!(ring->features & IORING_FEAT_NO_IOWAIT))
		return io_uring_submit_and_wait(ring, 1);
	/*
	 * liburing 2.3 cannot pass the flag, and moving queued SQEs into the
	 * kernel's ring is its private business: it submits, the wait is
	 * ours.
	 */
	if (io_uring_sq_ready(ring)) {
		submitted = io_uring_submit(ring);
		if (submitted < 0)
			return submitted;
	}
	if (io_uring_cq_ready(ring))
		return submitted;
	ret = sys_io_uring_enter(ring->ring_fd, 0, 1,
				 IORING_ENTER_GETEVENTS |
					 IORING_ENTER_NO_IOWAIT);
	/* As io_uring_enter(): what was submitted hides a failed wait. */
	return submitted ? submitted : (ret < 0 ? ret : 0);
}
