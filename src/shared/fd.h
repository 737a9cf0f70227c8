/* SPDX-License-Identifier: MIT */
/* Descriptors of a library that works inside someone else's process. */
#ifndef UPAGER_FD_H
#define UPAGER_FD_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
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

/*
 * fd_stdio_guard - for a program: each of fds 0, 1, 2 that is closed is
 * held open on /dev/null, the wrong way round (stdin write-only, the
 * others read-only) so that using it still fails, and no descriptor opened
 * later -- a socket, a userfaultfd, a log -- takes its number and gets the
 * program's output.  Returns a mask of the fds that were closed (bit n:
 * fd n), or -errno.
 */
static inline int fd_stdio_guard(void)
{
	int fd, nfd, closed = 0;

	for (fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		/* the lowest free number, so @fd: the ones below are open */
		nfd = open("/dev/null",
			   fd == STDIN_FILENO ? O_WRONLY : O_RDONLY);
		if (nfd < 0)
			return -errno;
		if (nfd != fd) {
			if (dup2(nfd, fd) < 0) {
				close(nfd);
				return -errno;
			}
			close(nfd);
		}
		closed |= 1 << fd;
	}
	return closed;
}

/* One loop for both below: reads into @rbuf, or writes @wbuf. */
static inline int fd_pio_full_(int fd, char *rbuf, const char *wbuf, size_t len,
			       uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		off_t at = (off_t)(off + done);
		ssize_t n = rbuf ? pread(fd, rbuf + done, len - done, at) :
				   pwrite(fd, wbuf + done, len - done, at);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return rbuf ? -ENODATA : -EIO;
		done += n;
	}
	return 0;
}

/*
 * fd_pread_full, fd_pwrite_full - all of [@buf, @buf + @len) read from (or
 * written to) @fd at @off, across short transfers and EINTR.  Return 0,
 * -errno, or -ENODATA when a read finds the file ending first (-EIO when
 * a write takes nothing).
 */
static inline int fd_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	return fd_pio_full_(fd, buf, NULL, len, off);
}

static inline int fd_pwrite_full(int fd, const void *buf, size_t len,
				 uint64_t off)
{
	return fd_pio_full_(fd, NULL, buf, len, off);
}

#endif
