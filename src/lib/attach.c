// SPDX-License-Identifier: MIT
/*
 * Attach and detach.
 *
 * Attach maps the segment's memfd, registers the mapping with a uffd of
 * its own and sends that uffd to the daemon; a copy goes on the watcher's
 * list, for the day the daemon dies.  Detach finds the attachment's
 * mappings wherever mremap took them (maps.c) and makes each inaccessible
 * before its range stops being served.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "lib.h"
#include "proto.h"

/* The userfaultfd features an attachment uses, where the kernel has them. */
static const uint64_t wanted_features =
	UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
	UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
	UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_THREAD_ID |
	UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED |
	UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_POISON;

/*
 * Non-blocking; unprivileged with vm.unprivileged_userfaultfd=0, user-mode
 * faults only, which is all a mapping touched from user space needs.
 * EVENT_FORK needs CAP_SYS_PTRACE: without it, fork children lose the
 * registration, which is why the mapping is then MADV_DONTFORK (see
 * attach).
 */
int att_uffd_open(uint64_t *features)
{
	return uffd_open(wanted_features, 0, 0, features);
}

/*
 * The mappings of @a now, wherever mremap took them: those of its memfd
 * registered through its uffd (all of its memfd's, when @probe is false).
 */
static int att_vmas(struct upager_attachment *a, bool probe, struct vma **out)
{
	struct vma *v;
	int n = vmas_of(a->dev, a->ino, &v), k = 0;

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++)
		if (!probe || vma_register(a->uffd, &v[i], a->reg_mode) == 0)
			v[k++] = v[i];
	*out = v;
	return k;
}

#define ATTACH_FLAGS \
	(UPAGER_ATTACH_RDONLY | UPAGER_ATTACH_PRIVATE | UPAGER_ATTACH_DONTFORK)

/*
 * upager_attach(); @wire: more UPG_ATTACH flags for the request (the
 * owner check, with @owner); @at: where (MAP_FIXED), or NULL.
 */
static int attach(struct upager *u, const char *name, unsigned int flags,
		  uint32_t wire, uint32_t owner, void *at,
		  struct upager_attachment **out)
{
	struct upg_attach_reply ar;
	struct upg_register reg;
	struct upg_register_reply rr;
	uint64_t ioctls;
	struct upager_attachment *a;
	struct stat st;
	uint64_t features = 0;
	int prot = PROT_READ, ret;
	/* Mapped MAP_PRIVATE: its frames are mapped with UFFDIO_CONTINUE. */
	bool priv = flags & (UPAGER_ATTACH_RDONLY | UPAGER_ATTACH_PRIVATE);

	if (!u || !out || (flags & ~ATTACH_FLAGS) ||
	    ((uintptr_t)at & (lib_page_size() - 1)) ||
	    (flags & UPAGER_ATTACH_RDONLY && flags & UPAGER_ATTACH_PRIVATE))
		return set_errno(-EINVAL);
	a = calloc(1, sizeof(*a));
	if (!a)
		return set_errno(-ENOMEM);
	a->u = u;
	a->memfd = -1;
	a->uffd = -1;
	a->addr = MAP_FAILED;
	a->flags = flags & ~UPAGER_ATTACH_DONTFORK;
	ret = name_request(u, UPG_ATTACH, name,
			   (flags & ~UPAGER_ATTACH_DONTFORK) | wire, owner, &ar,
			   sizeof(ar), &a->memfd);
	if (ret < 0)
		goto err;
	if (a->memfd < 0 || fstat(a->memfd, &st) < 0) {
		ret = -EPROTO;
		goto err;
	}
	a->dev = st.st_dev;
	a->ino = st.st_ino;
	a->seg_id = ar.seg_id;
	a->size = ar.size;
	a->source = ar.source;
	/*
	 * Read-only: the fd is open read-only, and userfaultfd refuses a
	 * shared mapping that could never be written.  A private one is
	 * accepted: the daemon fills its frames in the memfd and maps them
	 * with UFFDIO_CONTINUE (minor faults), so they are still the shared
	 * frames, and this process cannot change them.  A private attachment
	 * of a snapshot is that mapping made writable: the kernel copies a
	 * frame for this process the first time it writes it.
	 */
	if (!(flags & UPAGER_ATTACH_RDONLY))
		prot |= PROT_WRITE;
	a->addr = mmap(at, a->size, prot,
		       (priv ? MAP_PRIVATE : MAP_SHARED) | (at ? MAP_FIXED : 0),
		       a->memfd, 0);
	if (a->addr == MAP_FAILED) {
		ret = -errno;
		goto err;
	}
	ret = att_uffd_open(&features);
	if (ret < 0)
		goto err;
	a->uffd = ret;
	a->features = features;
	/* Without fork events a child's copy of the range would be served
	 * by nobody (zeros): it does not inherit the mapping then. */
	a->dontfork = flags & UPAGER_ATTACH_DONTFORK;
	if (!(features & UFFD_FEATURE_EVENT_FORK) || a->dontfork)
		madvise(a->addr, a->size, MADV_DONTFORK);
	a->reg_mode = UFFDIO_REGISTER_MODE_MISSING;
	/* Write-protect mode now, so snapshots need no re-registration. */
	if (!priv && (features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
		a->reg_mode |= UFFDIO_REGISTER_MODE_WP;
	if (priv) {
		if (!(features & UFFD_FEATURE_MINOR_SHMEM)) {
			ret = -EOPNOTSUPP;
			goto err;
		}
		a->reg_mode |= UFFDIO_REGISTER_MODE_MINOR;
	}
	ret = uffd_register(a->uffd, (uintptr_t)a->addr, a->size, a->reg_mode,
			    &ioctls);
	if (ret < 0)
		goto err;
	ret = watcher_start(u);
	if (!ret)
		ret = serve_add(u, a);
	if (ret < 0)
		goto err;
	memset(&reg, 0, sizeof(reg));
	reg.seg_id = a->seg_id;
	reg.addr = (uintptr_t)a->addr;
	reg.len = a->size;
	reg.uffd_features = features;
	reg.uffd_ioctls = ioctls;
	reg.flags = priv ? UPG_REGISTER_RDONLY : 0;
	ret = request(u, &reg, sizeof(reg), UPG_REGISTER, a->uffd, &rr,
		      sizeof(rr), NULL);
	if (ret < 0) {
		serve_forget(u, a);
		watcher_kick(u);
		goto err;
	}
	a->attach_id = rr.attach_id;
	pthread_mutex_lock(&u->att_lock);
	a->next = u->atts;
	u->atts = a;
	pthread_mutex_unlock(&u->att_lock);
	*out = a;
	return 0;
err:
	/* The uffd goes first: munmap of a range registered with unmap
	 * events would wait for a reader that is not there.  Nothing has
	 * touched the mapping: its address was never handed out. */
	if (a->uffd >= 0)
		close(a->uffd);
	/* At a place asked for, a reservation stays: unmapped, another
	 * thread's mmap could take it before the caller maps it again. */
	if (a->addr != MAP_FAILED && at)
		mmap(at, a->size, PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
		     -1, 0);
	else if (a->addr != MAP_FAILED)
		munmap(a->addr, a->size);
	if (a->memfd >= 0)
		close(a->memfd);
	free(a);
	return set_errno(ret);
}

UPAGER_API int upager_attach(struct upager *u, const char *name,
			     unsigned int flags, struct upager_attachment **out)
{
	return attach(u, name, flags, 0, 0, NULL, out);
}

UPAGER_API int upager_attach_at(struct upager *u, const char *name,
				unsigned int flags, void *addr,
				struct upager_attachment **out)
{
	if (!addr)
		return set_errno(-EINVAL);
	return attach(u, name, flags, 0, 0, addr, out);
}

UPAGER_API int upager_attach_owner(struct upager *u, const char *name,
				   unsigned int flags, uint32_t owner_uid,
				   struct upager_attachment **out)
{
	if (u && !(u->features & UPG_FEATURE_OWNER))
		return set_errno(-EOPNOTSUPP);
	return attach(u, name, flags, UPG_ATTACH_OWNER, owner_uid, NULL, out);
}

UPAGER_API void *upager_attachment_addr(const struct upager_attachment *a)
{
	return a ? a->addr : NULL;
}

UPAGER_API size_t upager_attachment_size(const struct upager_attachment *a)
{
	return a ? a->size : 0;
}

/*
 * Unmaps every mapping of @a, wherever mremap moved it.  Each becomes
 * inaccessible before its range stops being served (unregistered, or its
 * uffd closed): a thread that still touches it gets SIGSEGV, as it would
 * under munmap, instead of a zero page in the segment.  @own: the uffd is
 * ours (not a forked child's inherited copy of the parent's).
 */
static void att_unmap(struct upager_attachment *a, bool own)
{
	struct vma *v = NULL, whole = {
		.start = (uintptr_t)a->addr,
		.end = (uintptr_t)a->addr + a->size,
	};
	int n = att_vmas(a, own, &v);

	if (n < 0) {
		/* /proc unreadable: the range as we mapped it. */
		v = &whole;
		n = 1;
	}
	for (int i = 0; i < n; i++)
		mprotect((void *)v[i].start, v[i].end - v[i].start, PROT_NONE);
	/* Else munmap would wait for the daemon to read its unmap event. */
	for (int i = 0; own && i < n; i++)
		uffd_unregister(a->uffd, v[i].start, v[i].end - v[i].start);
	for (int i = 0; i < n; i++)
		munmap((void *)v[i].start, v[i].end - v[i].start);
	if (v != &whole)
		free(v);
}

UPAGER_API int upager_detach(struct upager_attachment *a)
{
	struct upager *u;
	struct upager_attachment **pp;
	struct upg_detach m;
	int ret = 0;

	if (!a)
		return 0;
	u = a->u;
	pthread_mutex_lock(&u->att_lock);
	for (pp = &u->atts; *pp; pp = &(*pp)->next) {
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	}
	pthread_mutex_unlock(&u->att_lock);
	if (!inherited(u)) {
		serve_forget(u, a);
		att_unmap(a, true);
		memset(&m, 0, sizeof(m));
		m.attach_id = a->attach_id;
		ret = request(u, &m, sizeof(m), UPG_DETACH, -1, NULL, 0, NULL);
		if (ret == -EPIPE || ret == -ECONNRESET || ret == -ENOTCONN)
			ret = 0; /* the daemon is gone: nothing to tell */
		watcher_kick(u);
	} else {
		/* The child's range belongs to the uffd the daemon got at
		 * fork; ours is the parent's.  The daemon sees the unmap. */
		att_unmap(a, false);
	}
	if (a->uffd >= 0)
		close(a->uffd);
	close(a->memfd);
	free(a);
	return set_errno(ret);
}
