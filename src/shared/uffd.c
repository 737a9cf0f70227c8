// SPDX-License-Identifier: MIT
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include "fd.h"
#include "uffd.h"

static int sys_userfaultfd(unsigned int flags)
{
	return syscall(SYS_userfaultfd, flags);
}

/* A bare userfaultfd, before UFFDIO_API. */
static int uffd_raw(unsigned int flags)
{
	unsigned int f = O_CLOEXEC;
	int fd;

	if (!(flags & UFFD_OPEN_BLOCKING))
		f |= O_NONBLOCK;
	if (flags & UFFD_OPEN_USER_ONLY)
		f |= UFFD_USER_MODE_ONLY;
	fd = sys_userfaultfd(f);
	if (fd < 0 && errno == EPERM && !(flags & UFFD_OPEN_USER_ONLY))
		fd = sys_userfaultfd(f | UFFD_USER_MODE_ONLY);
	return fd_above_stdio(fd < 0 ? -errno : fd);
}

static int uffd_api(int fd, uint64_t features, uint64_t *got)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	if (got)
		*got = api.features;
	return 0;
}

int uffd_offered(uint64_t *features)
{
	int fd = uffd_raw(UFFD_OPEN_USER_ONLY), ret;

	if (fd < 0)
		return fd;
	ret = uffd_api(fd, 0, features);
	close(fd);
	return ret;
}

int uffd_open(uint64_t want, uint64_t must, unsigned int flags, uint64_t *got)
{
	uint64_t offered;
	int fd, ret = uffd_offered(&offered);

	if (ret)
		return ret;
	want &= offered;
	if ((want & must) != must)
		return -EOPNOTSUPP;
	for (;;) {
		fd = uffd_raw(flags);
		if (fd < 0)
			return fd;
		ret = uffd_api(fd, want, NULL);
		if (!ret)
			break;
		close(fd);
		/* Fork events need CAP_SYS_PTRACE when unprivileged. */
		if (ret != -EPERM || !(want & UFFD_FEATURE_EVENT_FORK) ||
		    (must & UFFD_FEATURE_EVENT_FORK))
			return ret;
		want &= ~UFFD_FEATURE_EVENT_FORK;
	}
	if (got)
		*got = want;
	return fd;
}

int uffd_features_of(int fd, uint64_t *features)
{
	char path[64], line[128];
	unsigned long long api, feat, ioctls;
	int ret = -EINVAL;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "API: %llx:%llx:%llx", &api, &feat, &ioctls) !=
		    3)
			continue;
		/* Bit 31 is the kernel's own "initialized"; a uffd that never
		 * completed UFFDIO_API shows no feature at all. */
		if (feat) {
			*features = feat & 0x7fffffffull;
			ret = 0;
		}
		break;
	}
	fclose(f);
	return ret;
}

int uffd_register(int uffd, uint64_t start, uint64_t len, uint64_t mode,
		  uint64_t *ioctls)
{
	struct uffdio_register r = {
		.range = { .start = start, .len = len },
		.mode = mode,
	};

	if (ioctl(uffd, UFFDIO_REGISTER, &r) < 0)
		return -errno;
	if (ioctls)
		*ioctls = r.ioctls;
	return 0;
}

int uffd_unregister(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	return ioctl(uffd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

/* A ranged ioctl's outcome: what it did in @done, 0 or -errno. */
static int ranged(int ret, int64_t did, uint64_t len, uint64_t *done)
{
	int err = ret < 0 ? -errno : 0;

	if (done)
		*done = ret < 0 ? (did > 0 ? (uint64_t)did : 0) : len;
	return err;
}

int uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, bool wake,
	      uint64_t *done)
{
	return uffd_copy_wp(uffd, dst, src, len, wake, false, done);
}

int uffd_copy_wp(int uffd, uint64_t dst, const void *src, uint64_t len,
		 bool wake, bool wp, uint64_t *done)
{
	struct uffdio_copy c = {
		.dst = dst,
		.src = (uintptr_t)src,
		.len = len,
		.mode = (wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE) |
			(wp ? UFFDIO_COPY_MODE_WP : 0),
	};
	int ret = ioctl(uffd, UFFDIO_COPY, &c);

	return ranged(ret, c.copy, len, done);
}

int uffd_zeropage(int uffd, uint64_t dst, uint64_t len, bool wake,
		  uint64_t *done)
{
	struct uffdio_zeropage z = {
		.range = { .start = dst, .len = len },
		.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE,
	};
	int ret = ioctl(uffd, UFFDIO_ZEROPAGE, &z);

	return ranged(ret, z.zeropage, len, done);
}

int uffd_continue(int uffd, uint64_t start, uint64_t len, bool wake,
		  uint64_t *done)
{
	struct uffdio_continue c = {
		.range = { .start = start, .len = len },
		.mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE,
	};
	int ret = ioctl(uffd, UFFDIO_CONTINUE, &c);

	return ranged(ret, c.mapped, len, done);
}

int uffd_poison(int uffd, uint64_t start, uint64_t len, bool wake,
		uint64_t *done)
{
	struct uffdio_poison p = {
		.range = { .start = start, .len = len },
		.mode = wake ? 0 : UFFDIO_POISON_MODE_DONTWAKE,
	};
	int ret = ioctl(uffd, UFFDIO_POISON, &p);

	return ranged(ret, p.updated, len, done);
}

int uffd_wake(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	return ioctl(uffd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

int uffd_writeprotect(int uffd, uint64_t start, uint64_t len, bool protect,
		      bool wake)
{
	/* The kernel refuses DONTWAKE with WP: protecting wakes nobody. */
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP :
			wake	? 0 :
				  UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
	};

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

ssize_t uffd_read(int uffd, struct uffd_msg *msgs, size_t n)
{
	static _Atomic bool no_nowait; /* the daemon's workers share it */
	struct iovec iov = { .iov_base = msgs, .iov_len = n * sizeof(*msgs) };
	ssize_t got;

	do {
		if (!no_nowait) {
			got = preadv2(uffd, &iov, 1, -1, RWF_NOWAIT);
			if (got >= 0 || errno != EOPNOTSUPP)
				continue;
			/* An old kernel: the best we can, at once. */
			no_nowait = true;
		}
		if (!(fcntl(uffd, F_GETFL) & O_NONBLOCK))
			fcntl(uffd, F_SETFL, O_NONBLOCK);
		got = read(uffd, msgs, iov.iov_len);
	} while (got < 0 && errno == EINTR);
	if (got < 0)
		return errno == EAGAIN ? 0 : -errno;
	return got / sizeof(*msgs);
}
