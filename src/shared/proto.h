/* SPDX-License-Identifier: MIT */
/*
 * The wire protocol between libupager and upagerd.
 *
 * One request, one reply, over a Unix SOCK_SEQPACKET socket: every message
 * is one record, so a short or long record is an error, not a framing
 * problem.  Fields are fixed-width and every message size is asserted at
 * compile time, so a library and a daemon built by different compilers
 * agree.  A file descriptor travels with a message as SCM_RIGHTS: the source
 * file (create), the memfd (attach reply) and the userfaultfd (register).
 *
 * The client says hello first with the protocol version and the feature
 * bits it knows; the daemon answers with the bits both know.  A bit the
 * daemon does not know is refused, never ignored.
 */
#ifndef UPAGER_PROTO_H
#define UPAGER_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <upager/upager.h>

#define UPG_MAGIC 0x52475055u /* "UPGR" little-endian */
#define UPG_VERSION 1

/*
 * Feature bits negotiated at hello.  A request a feature brings is made
 * only on a connection that negotiated it; the daemon refuses it otherwise.
 */
/* UPG_USAGE: per-user usage and limits */
#define UPG_FEATURE_USAGE (1ull << 0)
#define UPG_FEATURE_OWNER (1ull << 1) /* UPG_ATTACH with UPG_ATTACH_OWNER */
/* UPG_SNAPSHOT, UPG_CLONE, UPG_SAVE, UPG_BASE */
#define UPG_FEATURE_SNAPSHOT (1ull << 2)
#define UPG_FEATURES_KNOWN \
	(UPG_FEATURE_USAGE | UPG_FEATURE_OWNER | UPG_FEATURE_SNAPSHOT)

enum upg_type {
	UPG_HELLO = 1,
	UPG_CREATE, /* + source fd when source == FILE */
	UPG_DELETE,
	UPG_STAT,
	UPG_LIST, /* replies: UPG_LIST_ENTRY..., then UPG_LIST */
	UPG_LIST_ENTRY,
	UPG_STATS,
	UPG_ATTACH,   /* reply + memfd */
	UPG_REGISTER, /* + userfaultfd */
	UPG_DETACH,
	UPG_CLAIM, /* reply + the child's userfaultfd */
	UPG_USAGE, /* replies: UPG_USAGE_ENTRY..., then UPG_USAGE */
	UPG_USAGE_ENTRY,
	UPG_SNAPSHOT, /* upg_name2: name, snapshot; reply upg_snapshot_reply */
	UPG_CLONE,    /* upg_name2: snapshot, new segment, mode */
	UPG_SAVE,     /* upg_name2: name, since or ""; + the image fd;
		       * reply upg_save_reply */
	UPG_BASE,     /* bare header + a base image fd, for the next
		       * UPG_CREATE of source UPAGER_SOURCE_IMAGE */
	UPG_TYPE_MAX,
};

struct upg_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t size;	/* of the whole message */
	int32_t status; /* replies: 0, a count, or -errno */
	uint64_t seq;	/* echoed in the reply */
};

struct upg_hello {
	struct upg_hdr h;
	uint64_t features;
};

struct upg_create {
	struct upg_hdr h;
	char name[UPAGER_NAME_MAX + 1];
	uint64_t size;
	uint32_t mode;
	uint32_t source; /* enum upager_source_kind */
};

/*
 * Attach only a segment that @owner owns (UPG_FEATURE_OWNER); refused
 * with -EPERM otherwise.  Not one of the UPAGER_ATTACH_* bits, which the
 * library passes through as they are.
 */
#define UPG_ATTACH_OWNER (1u << 31)

/* delete, stat, attach */
struct upg_name {
	struct upg_hdr h;
	char name[UPAGER_NAME_MAX + 1];
	uint32_t flags;
	uint32_t owner; /* attach with UPG_ATTACH_OWNER; else 0 */
};

/* snapshot, clone, save: two names */
struct upg_name2 {
	struct upg_hdr h;
	char name[UPAGER_NAME_MAX + 1];
	char name2[UPAGER_NAME_MAX + 1];
	uint32_t flags;
	uint32_t mode;
};

struct upg_snapshot_reply {
	struct upg_hdr h;
	struct upager_snapshot_result res;
};

struct upg_save_reply {
	struct upg_hdr h;
	struct upager_save_result res;
};

struct upg_attach_reply {
	struct upg_hdr h;
	uint64_t seg_id;
	uint64_t size;
	uint32_t page_size;
	uint32_t source;
};

#define UPG_REGISTER_RDONLY 0x1u

struct upg_register {
	struct upg_hdr h;
	uint64_t seg_id;
	uint64_t addr;
	uint64_t len;
	uint64_t uffd_features; /* what the client's UFFDIO_API enabled */
	uint64_t uffd_ioctls;	/* what UFFDIO_REGISTER returned */
	uint32_t flags;
	uint32_t reserved;
};

struct upg_register_reply {
	struct upg_hdr h;
	uint64_t attach_id;
};

struct upg_detach {
	struct upg_hdr h;
	uint64_t attach_id;
};

/*
 * A forked child claims the attachment the daemon made for it from
 * UFFD_EVENT_FORK, naming its parent's attachment: the daemon learns the
 * child's pid and hands it a copy of its uffd, so that the child, too, can
 * answer its own faults if the daemon dies.  Reply: upg_register_reply.
 *
 * Siblings forked from one attachment have identical address spaces, so
 * the child proves which uffd is its own: it maps a page at probe_addr
 * that no sibling has, and the daemon's UFFDIO_REGISTER of that page
 * succeeds only through the uffd of the child's mm.
 */
struct upg_claim {
	struct upg_hdr h;
	uint64_t parent_attach_id;
	uint64_t probe_addr; /* one page, mapped by the child alone */
};

struct upg_info {
	struct upg_hdr h;
	struct upager_segment_info info;
};

struct upg_stats {
	struct upg_hdr h;
	struct upager_daemon_stats st;
};

/* One user's record in the reply to UPG_USAGE (a bare header). */
struct upg_usage {
	struct upg_hdr h;
	struct upager_usage usage;
};

_Static_assert(sizeof(struct upg_hdr) == 24, "upg_hdr");
_Static_assert(sizeof(struct upg_hello) == 32, "upg_hello");
_Static_assert(sizeof(struct upg_create) == 104, "upg_create");
_Static_assert(sizeof(struct upg_name) == 96, "upg_name");
_Static_assert(sizeof(struct upg_attach_reply) == 48, "upg_attach_reply");
_Static_assert(sizeof(struct upg_register) == 72, "upg_register");
_Static_assert(sizeof(struct upg_register_reply) == 32, "upg_register_reply");
_Static_assert(sizeof(struct upg_detach) == 32, "upg_detach");
_Static_assert(sizeof(struct upg_claim) == 40, "upg_claim");
_Static_assert(sizeof(struct upager_segment_info) == 696, "segment_info");
_Static_assert(sizeof(struct upg_info) == 720, "upg_info");
_Static_assert(sizeof(struct upg_name2) == 160, "upg_name2");
_Static_assert(sizeof(struct upager_snapshot_result) == 48, "snap_result");
_Static_assert(sizeof(struct upg_snapshot_reply) == 72, "upg_snapshot_reply");
_Static_assert(sizeof(struct upager_save_result) == 48, "save_result");
_Static_assert(sizeof(struct upg_save_reply) == 72, "upg_save_reply");
_Static_assert(sizeof(struct upager_daemon_stats) == 208, "daemon_stats");
_Static_assert(sizeof(struct upg_stats) == 232, "upg_stats");
_Static_assert(sizeof(struct upager_usage) == 88, "usage");
_Static_assert(sizeof(struct upg_usage) == 112, "upg_usage");

#define UPG_MSG_MAX 1024 /* larger than any message */

/* The size a request of @type must have, or 0 for an unknown type. */
size_t proto_request_size(uint16_t type);

void proto_hdr_init(struct upg_hdr *h, uint16_t type, uint32_t size,
		    uint64_t seq);

/* True when @name is 1..UPAGER_NAME_MAX of [A-Za-z0-9._-], not "." or "..". */
int proto_name_valid(const char *name, size_t room);

/*
 * proto_send - send one message, with @fd as SCM_RIGHTS unless it is < 0.
 * Returns 0 or -errno (-EPIPE when the peer is gone).
 */
int proto_send(int sock, const void *msg, size_t len, int fd, int flags);

/*
 * proto_recv - receive one message into @buf
 * @fd: set to a received descriptor (O_CLOEXEC), or -1
 *
 * Checks magic, version and that the header's size is the record's size.
 * More than one descriptor, or a truncated record, is -EPROTO (and any
 * received descriptors are closed).  Returns the size, 0 when the peer hung
 * up, or -errno.
 */
ssize_t proto_recv(int sock, void *buf, size_t len, int *fd, int flags);

#endif
