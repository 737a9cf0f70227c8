/* SPDX-License-Identifier: MIT */
/*
 * The io_uring plumbing the main thread and the workers share: requests
 * that carry their own completion handler, a submission slot when the
 * ring is full, and waiting without looking busy.
 *
 * A request on a ring is for some object (a connection, an attachment's
 * poll, a fill's read): the object embeds a struct io_req whose address is
 * the SQE's user_data, and ring_dispatch() hands each completion to that
 * io_req's handler, which finds its object with container_of().  A
 * completion whose user_data is 0 has no handler and is dropped (a
 * cancel's own has one: it says when a cancel failed).  The object must
 * outlive its requests: a
 * multishot poll's last completion, the one without IORING_CQE_F_MORE,
 * comes even after the poll was cancelled, so an object with a poll armed
 * holds a reference for it, dropped by that last completion.
 *
 * Waiting: a task sleeping in io_uring_enter() with requests in flight is
 * accounted as I/O wait: an idle daemon, whose rings always hold a poll or
 * a read waiting for the next event, shows its CPUs in iowait and its
 * threads as stalled on I/O (PSI).  Since 6.15 the kernel leaves that
 * accounting out when the wait passes IORING_ENTER_NO_IOWAIT, and says it
 * can with IORING_FEAT_NO_IOWAIT.  liburing gained io_uring_set_iowait()
 * for it only in 2.10; Debian 12 has 2.3, so the wait is made here.
 */
#ifndef UPAGER_RING_H
#define UPAGER_RING_H

#include <stdbool.h>
#include <liburing.h>

#ifndef IORING_ENTER_NO_IOWAIT
#define IORING_ENTER_NO_IOWAIT (1U << 7)
#endif
#ifndef IORING_FEAT_NO_IOWAIT
#define IORING_FEAT_NO_IOWAIT (1U << 17)
#endif

struct io_req {
	void (*complete)(struct io_req *req, const struct io_uring_cqe *cqe);
};

/*
 * ring_sqe - a free submission slot of @ring; when there is none, what is
 * queued is submitted first.  NULL when the ring stays full.
 */
struct io_uring_sqe *ring_sqe(struct io_uring *ring);

/*
 * ring_poll - poll @fd for POLLIN (multishot with @multi), completing on
 * @req.  ring_read - read @len bytes of @fd into @buf, completing on @req.
 * ring_cancel - cancel the poll completing on @req (its last completion
 * still comes).  Each queues one SQE: 0, or -EBUSY when the ring is full.
 */
int ring_poll(struct io_uring *ring, int fd, bool multi, struct io_req *req);
int ring_read(struct io_uring *ring, int fd, void *buf, unsigned int len,
	      struct io_req *req);
int ring_cancel(struct io_uring *ring, struct io_req *req);

/*
 * ring_dispatch - hand every completion ready on @ring to its handler.
 * A handler may queue and submit requests.  Returns how many there were.
 */
unsigned int ring_dispatch(struct io_uring *ring);

/*
 * ring_submit_and_wait - submit what is queued on @ring, then wait for at
 * least one completion
 *
 * The contract of io_uring_submit_and_wait(@ring, 1): returns the number
 * of SQEs submitted (0 when there were none), or -errno (-EINTR when a
 * signal cut the wait short).  Where the kernel has IORING_FEAT_NO_IOWAIT
 * the wait is not accounted as I/O wait; it then costs a second
 * io_uring_enter() when there was something to submit and no completion
 * is ready yet.  @ring must not use a registered ring fd.
 */
int ring_submit_and_wait(struct io_uring *ring);

#endif
