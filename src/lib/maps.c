// SPDX-License-Identifier: MIT
/*
 * Where an attachment's mappings are: /proc/self/maps, read by hand.
 *
 * mremap moves and grows an attachment's ranges behind the library's
 * back, so detach, a fork child and the watcher find them by the memfd's
 * inode rather than by the address attach returned.  The walk allocates
 * nothing and uses no stdio stream: the watcher reads the maps while
 * another thread may be inside fork() with the allocator's locks held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>

#include "lib.h"

/*
 * Calls @fn for each mapping, stopping when it returns non-zero.  Returns
 * what @fn returned last, or -errno when the maps cannot be read.
 */
static int maps_walk(int (*fn)(const struct vma *, void *), void *arg)
{
	/* No stdio, no malloc: the watcher reads this while another thread
	 * may be inside fork() with the allocator's locks held. */
	char buf[8192];
	size_t have = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	while (!ret) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
		char *line = buf, *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += n;
		buf[have] = '\0';
		while (!ret && (nl = strchr(line, '\n'))) {
			unsigned long long lo, hi, off, ino;
			unsigned int maj, min;
			char perms[8];

			*nl = '\0';
			if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &lo,
				   &hi, perms, &off, &maj, &min, &ino) == 7) {
				struct vma v = {
					.start = lo,
					.end = hi,
					.off = off,
					.dev = makedev(maj, min),
					.ino = ino,
					.shared = perms[3] == 's',
					.prot = (perms[0] == 'r' ? PROT_READ :
								   0) |
						(perms[1] == 'w' ? PROT_WRITE :
								   0) |
						(perms[2] == 'x' ? PROT_EXEC :
								   0),
				};

				ret = fn(&v, arg);
			}
			line = nl + 1;
		}
		have -= line - buf;
		if (have == sizeof(buf) - 1) {
			/* A line longer than the buffer (a long path): its
			 * head was parsed at the start, drop the rest. */
			have = 0;
			continue;
		}
		memmove(buf, line, have);
	}
	close(fd);
	return ret;
}

int vma_walk(int (*fn)(const struct vma *, void *), void *arg)
{
	return maps_walk(fn, arg);
}

struct vma_find {
	uintptr_t addr;
	struct vma *out;
};

static int vma_find_fn(const struct vma *v, void *arg)
{
	struct vma_find *q = arg;

	if (q->addr < v->start || q->addr >= v->end)
		return 0;
	*q->out = *v;
	return 1;
}

int vma_at(uintptr_t addr, struct vma *out)
{
	struct vma_find q = { .addr = addr, .out = out };

	return maps_walk(vma_find_fn, &q);
}

struct vma_list {
	dev_t dev;
	ino_t ino;
	struct vma *v;
	size_t n;
	int err;
};

static int vma_list_fn(const struct vma *v, void *arg)
{
	struct vma_list *l = arg;
	void *p;

	if (v->ino != l->ino || v->dev != l->dev)
		return 0;
	p = realloc(l->v, (l->n + 1) * sizeof(*l->v));
	if (!p) {
		l->err = -ENOMEM;
		return 1;
	}
	l->v = p;
	l->v[l->n++] = *v;
	return 0;
}

int vmas_of(dev_t dev, ino_t ino, struct vma **out)
{
	struct vma_list l = { .dev = dev, .ino = ino };
	int ret = maps_walk(vma_list_fn, &l);

	if (ret < 0 || l.err) {
		free(l.v);
		return ret < 0 ? ret : l.err;
	}
	*out = l.v;
	return l.n;
}
