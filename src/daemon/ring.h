/* SPDX-License-Identifier: MIT */
/*
 * Waiting on an io_uring without looking busy.
 *
 * A task sleeping in io_uring_enter() with requests in flight is accounted
 * as I/O wait: an idle daemon, whose rings always hold a poll or a read
 * waiting for the next event, shows its CPUs in iowait and its threads as
 * stalled on I/O (PSI).  Since 6.15 the kernel leaves that accounting out
 * when the wait passes IORING_ENTER_NO_IOWAIT, and says it can with
 * IORING_FEAT_NO_IOWAIT.  liburing gained io_uring_set_iowait() for it only
 * in 2.10; Debian 12 has 2.3, so the wait is made here.
 */
#ifndef UPAGER_RING_H
#define UPAGER_RING_H

#include <liburing.h>

#ifndef IORING_ENTER_NO_IOWAIT
#define IORING_ENTER_NO_IOWAIT (1U << 7)
#endif
#ifndef IORING_FEAT_NO_IOWAIT
#define IORING_FEAT_NO_IOWAIT (1U << 17)
#endif

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
