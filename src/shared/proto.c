// SPDX-License-Identifier: MIT
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "proto.h"

size_t proto_request_size(uint16_t type)
{
	switch (type) {
	case UPG_HELLO:
		return sizeof(struct upg_hello);
	case UPG_CREATE:
		return sizeof(struct upg_create);
	case UPG_DELETE:
	case UPG_STAT:
	case UPG_ATTACH:
		return sizeof(struct upg_name);
	case UPG_LIST:
	case UPG_STATS:
	case UPG_USAGE:
		return sizeof(struct upg_hdr);
	case UPG_REGISTER:
		return sizeof(struct upg_register);
	case UPG_DETACH:
		return sizeof(struct upg_detach);
	case UPG_CLAIM:
		return sizeof(struct upg_claim);
	case UPG_SNAPSHOT:
	case UPG_CLONE:
	case UPG_SAVE:
		return sizeof(struct upg_name2);
	case UPG_BASE:
		return sizeof(struct upg_hdr);
	}
	return 0;
}

void proto_hdr_init(struct upg_hdr *h, uint16_t type, uint32_t size,
		    uint64_t seq)
{
	memset(h, 0, sizeof(*h));
	h->magic = UPG_MAGIC;
	h->version = UPG_VERSION;
	h->type = type;
	h->size = size;
	h->seq = seq;
}

int proto_name_valid(const char *name, size_t room)
{
	size_t n = strnlen(name, room);

	if (n == 0 || n > UPAGER_NAME_MAX || n == room)
		return 0;
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-'))
			return 0;
	}
	return 1;
}

int proto_send(int sock, const void *msg, size_t len, int fd, int flags)
{
	union {
		struct cmsghdr c;
		char buf[CMSG_SPACE(sizeof(int))];
	} cbuf;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		memset(&cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf.buf;
		mh.msg_controllen = sizeof(cbuf.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, flags | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EPROTO;
}

static void close_fds(struct msghdr *mh)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < nfd; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			close(fd);
		}
	}
}

ssize_t proto_recv(int sock, void *buf, size_t len, int *fd, int flags)
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
	int nfds = 0;
	ssize_t n;

	*fd = -1;
	do
		n = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		goto bad;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
	     c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			goto bad;
		nfds += (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if (nfds == 1)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	}
	if (n == 0 && nfds == 0)
		return 0;
	if (nfds > 1 || (size_t)n < sizeof(*h) || h->magic != UPG_MAGIC ||
	    h->version != UPG_VERSION || h->size != (size_t)n)
		goto bad;
	return n;
bad:
	close_fds(&mh);
	*fd = -1;
	return -EPROTO;
}
