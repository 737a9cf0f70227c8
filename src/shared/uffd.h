/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd: opening and negotiating one, and every ioctl the project
 * uses, for the daemon, the library, the benchmark and the tests alike.
 *
 * Every function returns 0 (or a count) or -errno.  The outcomes a caller
 * recovers from have names of their own:
 *
 *   -EEXIST   the page is there already (filled by someone else)
 *   -EAGAIN   an event (fork, remap, remove, unmap) is pending on the uffd:
 *             read it, then retry with what you have
 *   -ENOENT   the mapping changed under the call (unmapped, moved)
 *   -ESRCH    the address space is gone (the process exited or exec'd)
 *
 * The ranged ioctls (copy, zeropage, continue, poison) may do part of the
 * range before they fail: @done gets the bytes done either way.
 */
#ifndef UPAGER_UFFD_H
#define UPAGER_UFFD_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "uffd-compat.h"

/* uffd_open() flags */
#define UFFD_OPEN_USER_ONLY 0x1u /* user-mode faults only, always */
#define UFFD_OPEN_BLOCKING 0x2u	 /* reads block (no O_NONBLOCK) */

/*
 * uffd_open - a userfaultfd with the features of @want the kernel offers
 * @must: features without which there is no point: -EOPNOTSUPP
 * @got: the features enabled (may be NULL)
 *
 * Without UFFD_OPEN_USER_ONLY, a refusal (EPERM: unprivileged, with
 * vm.unprivileged_userfaultfd=0) falls back to user-mode-only faults,
 * which is all a mapping touched from user space needs.  UFFDIO_API takes
 * only features the kernel has, so its offer is read first on a throwaway
 * uffd; EVENT_FORK needs CAP_SYS_PTRACE and is dropped when refused.
 * Returns the descriptor (close-on-exec, never 0, 1 or 2) or -errno.
 */
int uffd_open(uint64_t want, uint64_t must, unsigned int flags, uint64_t *got);

/* The features the running kernel offers: 0 or -errno. */
int uffd_offered(uint64_t *features);

/*
 * uffd_features_of - the features enabled on @fd (of any process: its
 * fdinfo), or -EINVAL when it never completed UFFDIO_API.
 */
int uffd_features_of(int fd, uint64_t *features);

int uffd_register(int uffd, uint64_t start, uint64_t len, uint64_t mode,
		  uint64_t *ioctls);
int uffd_unregister(int uffd, uint64_t start, uint64_t len);

int uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, bool wake,
	      uint64_t *done);
/* uffd_copy(), the pages mapped write-protected with @wp. */
int uffd_copy_wp(int uffd, uint64_t dst, const void *src, uint64_t len,
		 bool wake, bool wp, uint64_t *done);
int uffd_zeropage(int uffd, uint64_t dst, uint64_t len, bool wake,
		  uint64_t *done);
int uffd_continue(int uffd, uint64_t start, uint64_t len, bool wake,
		  uint64_t *done);
int uffd_poison(int uffd, uint64_t start, uint64_t len, bool wake,
		uint64_t *done);
int uffd_wake(int uffd, uint64_t start, uint64_t len);
int uffd_writeprotect(int uffd, uint64_t start, uint64_t len, bool protect,
		      bool wake);

/*
 * uffd_read - read up to @n messages without ever blocking, whatever the
 * file's flags say (a client shares the open file description and may
 * clear O_NONBLOCK).  Returns the messages read, 0 when none is pending,
 * or -errno.
 */
ssize_t uffd_read(int uffd, struct uffd_msg *msgs, size_t n);

/* Whether @err (negative) is one of the recoverable outcomes above. */
static inline bool uffd_recoverable(int err)
{
	return err == -EEXIST || err == -EAGAIN || err == -ENOENT ||
	       err == -ESRCH;
}

#endif
