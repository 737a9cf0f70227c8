// SPDX-License-Identifier: MIT
/*
 * Snapshots, clones, images: requests the daemon does all the work of.
 */
#include <errno.h>
#include <string.h>

#include "lib.h"
#include "proto.h"

/* A request naming two segments (struct upg_name2), as request(). */
static int name2_request(struct upager *u, uint16_t type, const char *name,
			 const char *name2, uint32_t mode, int fd, void *reply,
			 size_t rlen)
{
	struct upg_name2 m;

	memset(&m, 0, sizeof(m));
	if (!u || copy_name(m.name, sizeof(m.name), name) ||
	    (name2 && copy_name(m.name2, sizeof(m.name2), name2)))
		return -EINVAL;
	if (!(u->features & UPG_FEATURE_SNAPSHOT))
		return -EOPNOTSUPP;
	m.mode = mode;
	/* A save is answered when the image is written: no timeout. */
	if (type == UPG_SAVE)
		return request_long(u, &m, sizeof(m), type, fd, reply, rlen);
	return request(u, &m, sizeof(m), type, fd, reply, rlen, NULL);
}

UPAGER_API int upager_snapshot(struct upager *u, const char *name,
			       const char *snap,
			       struct upager_snapshot_result *res)
{
	struct upg_snapshot_reply r;
	int ret;

	if (!snap)
		return set_errno(-EINVAL);
	ret = name2_request(u, UPG_SNAPSHOT, name, snap, 0, -1, &r, sizeof(r));
	if (ret >= 0 && res)
		*res = r.res;
	return set_errno(ret < 0 ? ret : 0);
}

UPAGER_API int upager_clone(struct upager *u, const char *snap,
			    const char *name, uint32_t mode)
{
	if (!name || mode > 0777)
		return set_errno(-EINVAL);
	return set_errno(
		name2_request(u, UPG_CLONE, snap, name, mode, -1, NULL, 0));
}

UPAGER_API int upager_save(struct upager *u, const char *name, int fd,
			   const char *since, struct upager_save_result *res)
{
	struct upg_save_reply r;
	int ret;

	if (fd < 0)
		return set_errno(-EBADF);
	ret = name2_request(u, UPG_SAVE, name, since, 0, fd, &r, sizeof(r));
	if (ret >= 0 && res)
		*res = r.res;
	return set_errno(ret < 0 ? ret : 0);
}

UPAGER_API int upager_create_image(struct upager *u, const char *name,
				   const struct upager_create_opts *opts,
				   int base_fd)
{
	struct upg_create m;
	struct upg_hdr b;
	int ret;

	memset(&m, 0, sizeof(m));
	if (!u || !opts || opts->source_fd < 0 ||
	    copy_name(m.name, sizeof(m.name), name))
		return set_errno(-EINVAL);
	if (base_fd < 0)
		return set_errno(-EBADF);
	if (!(u->features & UPG_FEATURE_SNAPSHOT))
		return set_errno(-EOPNOTSUPP);
	m.size = opts->size;
	m.mode = opts->mode;
	m.source = UPAGER_SOURCE_IMAGE;
	/* The base goes first: the daemon keeps it for this create. */
	memset(&b, 0, sizeof(b));
	ret = request(u, &b, sizeof(b), UPG_BASE, base_fd, NULL, 0, NULL);
	if (!ret)
		ret = request(u, &m, sizeof(m), UPG_CREATE, opts->source_fd,
			      NULL, 0, NULL);
	return set_errno(ret);
}
