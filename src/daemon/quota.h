/* SPDX-License-Identifier: MIT */
/*
 * Per-user limits of the daemon: what one uid may hold of it.
 *
 * The daemon usually runs as root and serves every local user, so whatever
 * it holds on a user's behalf (memory, address space, descriptors) is held
 * outside that user's own limits.  Four things are limited per uid:
 *
 *  - segments: how many the uid owns;
 *  - bytes: the sum of their sizes.  A size is what a segment may come to
 *    hold (its memfd never holds more) and what it reserves of the
 *    daemon's address space at once (the daemon maps every memfd whole),
 *    so limiting sizes bounds both, checked once at create, with nothing
 *    to refuse later in the middle of a fault.  Resident bytes are
 *    reported, not limited: they are at most the sizes;
 *  - connections open to the daemon;
 *  - attachments (each costs the daemon a uffd and a pidfd).
 *
 * A segment counts against its owner from its create until its memory is
 * gone: a segment outlives the processes that made it (it is a named
 * object, like a file in /dev/shm), and one deleted while attached still
 * holds its memory until its last attachment goes.
 *
 * Usage is not kept in counters: it is counted from the daemon's own lists
 * (segments, attachments, connections) when a request needs it, under the
 * lock that guards those lists, so a check and the creation it allows are
 * one step and no counter can drift from what really exists.  The lists
 * are short for any one uid, and requests that count are rare next to
 * faults, which never do.
 *
 * Root, and the user the daemon runs as, are exempt unless the daemon is
 * told otherwise (--limit-root): the daemon is theirs to stop anyway.
 * A refused request gets -EDQUOT (segments, bytes, attachments); a
 * connection over its uid's limit is answered -EUSERS at hello and closed.
 */
#ifndef UPAGER_QUOTA_H
#define UPAGER_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <upager/upager.h>

enum quota_kind {
	QUOTA_SEGMENTS,
	QUOTA_BYTES,
	QUOTA_CONNECTIONS,
	QUOTA_ATTACHMENTS,
	QUOTA_KINDS,
};

#define QUOTA_UNLIMITED UPAGER_UNLIMITED

/* Defaults; bytes default to a quarter of physical memory. */
#define QUOTA_DEFAULT_SEGMENTS 256
#define QUOTA_DEFAULT_CONNECTIONS 256
#define QUOTA_DEFAULT_ATTACHMENTS 1024
#define QUOTA_DEFAULT_IDLE_SEC 60
#define QUOTA_MIN_DEFAULT_BYTES (1ull << 30) /* on a very small machine */

struct quota_limits {
	uint64_t max[QUOTA_KINDS]; /* per uid; QUOTA_UNLIMITED: none */
	bool limit_root;	   /* root and daemon_uid are limited too */
	uid_t daemon_uid;	   /* exempt with root */
	uint64_t idle_timeout_ns;  /* an idle connection is closed after
				    * this; 0: never */
};

/* The defaults, for a daemon running as @daemon_uid. */
void quota_limits_default(struct quota_limits *l, uid_t daemon_uid);

/* "segments", "bytes", "connections", "attachments". */
const char *quota_kind_name(enum quota_kind k);

bool quota_exempt(const struct quota_limits *l, uid_t uid);

/* The limit of @kind for @uid: QUOTA_UNLIMITED when exempt or unset. */
uint64_t quota_limit(const struct quota_limits *l, uid_t uid,
		     enum quota_kind kind);

/*
 * quota_check - may @uid, which uses @used of @kind, take @more?
 * Returns 0, or the refusal: -EUSERS for connections, -EDQUOT for the
 * rest.  Overflow-safe: @more beyond any limit is refused.
 */
int quota_check(const struct quota_limits *l, uid_t uid, enum quota_kind kind,
		uint64_t used, uint64_t more);

/* The counter of @kind in a usage record. */
uint64_t *quota_usage_field(struct upager_usage *u, enum quota_kind kind);

/*
 * The usage of several uids, sorted by uid.  Not locked: the caller
 * builds it under the lock of what it counts, and owns it.
 */
struct quota_tally {
	struct upager_usage *v;
	size_t n, cap;
};

/*
 * quota_tally_get - @uid's record in @t, added (zeroed) if missing.
 * Returns NULL when out of memory.
 */
struct upager_usage *quota_tally_get(struct quota_tally *t, uid_t uid);

/* @uid's record, or NULL when it has none. */
struct upager_usage *quota_tally_find(const struct quota_tally *t, uid_t uid);

/*
 * quota_tally_add - add @amount of @kind to @uid's record.
 * Returns 0 or -ENOMEM.
 */
int quota_tally_add(struct quota_tally *t, uid_t uid, enum quota_kind kind,
		    uint64_t amount);

/*
 * quota_usage_limits - fill the limit fields and the exempt flag of @u (its
 * uid set) from @l.
 */
void quota_usage_limits(const struct quota_limits *l, struct upager_usage *u);

/* Frees @t's records; @t may be reused.  Accepts NULL. */
void quota_tally_free(struct quota_tally *t);

#endif
