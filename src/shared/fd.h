/* SPDX-License-Identifier: MIT */
/* Descriptors of a library that works inside someone else's process. */
#ifndef UPAGER_FD_H
#define UPAGER_FD_H

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

/*
 * fd_above_stdio - @fd moved to 3 or above (close-on-exec), so that a
 * program started with stdio closed never finds its output going into one
 * of ours.  @fd is a descriptor or -errno, passed through.  Returns the
 * descriptor or -errno (and @fd is closed either way).
 */
static inline int fd_above_stdio(int fd)
{
	int nfd, err;

	if (fd < 0 || fd > 2)
		return fd;
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	err = errno;
	close(fd);
	return nfd < 0 ? -err : nfd;
}

#endif
