// SPDX-License-Identifier: MIT
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "ring.h"

static int sys_io_uring_enter(int fd, unsigned int to_submit,
			      unsigned int min_complete, unsigned int flags)
{
	long ret = syscall(__NR_io_uring_enter, fd, to_submit, min_complete,
			   flags, NULL, _NSIG / 8);

	return ret < 0 ? -errno : (int)ret;
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
				 IORING_ENTER_GETEVENTS | IORING_ENTER_NO_IOWAIT);
	/* As io_uring_enter(): what was submitted hides a failed wait. */
	return submitted ? submitted : (ret < 0 ? ret : 0);
}
