// SPDX-License-Identifier: MIT
/* Per-user limits: the policy and the tally.  See quota.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quota.h"

void quota_limits_default(struct quota_limits *l, uid_t daemon_uid)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	uint64_t bytes = QUOTA_MIN_DEFAULT_BYTES;

	/* A quarter of memory: four users at their limit fill it. */
	if (pages > 0 && psize > 0 &&
	    (uint64_t)pages / 4 * (uint64_t)psize > bytes)
		bytes = (uint64_t)pages / 4 * (uint64_t)psize;
	memset(l, 0, sizeof(*l));
	l->max[QUOTA_SEGMENTS] = QUOTA_DEFAULT_SEGMENTS;
	l->max[QUOTA_BYTES] = bytes & ~((1ull << 20) - 1);
	l->max[QUOTA_CONNECTIONS] = QUOTA_DEFAULT_CONNECTIONS;
	l->max[QUOTA_ATTACHMENTS] = QUOTA_DEFAULT_ATTACHMENTS;
	l->daemon_uid = daemon_uid;
	l->idle_timeout_ns = QUOTA_DEFAULT_IDLE_SEC * 1000000000ull;
}

const char *quota_kind_name(enum quota_kind k)
{
	static const char *const names[QUOTA_KINDS] = {
		[QUOTA_SEGMENTS] = "segments",
		[QUOTA_BYTES] = "bytes",
		[QUOTA_CONNECTIONS] = "connections",
		[QUOTA_ATTACHMENTS] = "attachments",
	};

	return (unsigned int)k < QUOTA_KINDS ? names[k] : "unknown";
}

bool quota_exempt(const struct quota_limits *l, uid_t uid)
{
	return !l->limit_root && (uid == 0 || uid == l->daemon_uid);
}

uint64_t quota_limit(const struct quota_limits *l, uid_t uid,
		     enum quota_kind kind)
{
	if ((unsigned int)kind >= QUOTA_KINDS || quota_exempt(l, uid))
		return QUOTA_UNLIMITED;
	return l->max[kind];
}

int quota_check(const struct quota_limits *l, uid_t uid, enum quota_kind kind,
		uint64_t used, uint64_t more)
{
	uint64_t max = quota_limit(l, uid, kind);

	if (max == QUOTA_UNLIMITED)
		return 0;
	/* used may exceed max: forked children are not refused */
	if (used <= max && more <= max - used)
		return 0;
	return kind == QUOTA_CONNECTIONS ? -EUSERS : -EDQUOT;
}

uint64_t *quota_usage_field(struct upager_usage *u, enum quota_kind kind)
{
	switch (kind) {
	case QUOTA_SEGMENTS:
		return &u->segments;
	case QUOTA_BYTES:
		return &u->bytes;
	case QUOTA_CONNECTIONS:
		return &u->connections;
	case QUOTA_ATTACHMENTS:
		return &u->attachments;
	default:
		return NULL;
	}
}

/* The index of @uid's record, or where it would go. */
static size_t tally_index(const struct quota_tally *t, uid_t uid)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->v[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct upager_usage *quota_tally_find(const struct quota_tally *t, uid_t uid)
{
	size_t i = tally_index(t, uid);

	return i < t->n && t->v[i].uid == uid ? &t->v[i] : NULL;
}

struct upager_usage *quota_tally_get(struct quota_tally *t, uid_t uid)
{
	size_t i = tally_index(t, uid);

	if (i < t->n && t->v[i].uid == uid)
		return &t->v[i];
	if (t->n == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 8;
		void *p = realloc(t->v, cap * sizeof(*t->v));

		if (!p)
			return NULL;
		t->v = p;
		t->cap = cap;
	}
	memmove(&t->v[i + 1], &t->v[i], (t->n - i) * sizeof(*t->v));
	memset(&t->v[i], 0, sizeof(*t->v));
	t->v[i].uid = uid;
	t->n++;
	return &t->v[i];
}

int quota_tally_add(struct quota_tally *t, uid_t uid, enum quota_kind kind,
		    uint64_t amount)
{
	struct upager_usage *u;
	uint64_t *f;

	if ((unsigned int)kind >= QUOTA_KINDS)
		return -EINVAL;
	u = quota_tally_get(t, uid);
	if (!u)
		return -ENOMEM;
	f = quota_usage_field(u, kind);
	*f = *f > UINT64_MAX - amount ? UINT64_MAX : *f + amount;
	return 0;
}

void quota_usage_limits(const struct quota_limits *l, struct upager_usage *u)
{
	u->flags = quota_exempt(l, u->uid) ? UPAGER_USAGE_EXEMPT : 0;
	u->max_segments = quota_limit(l, u->uid, QUOTA_SEGMENTS);
	u->max_bytes = quota_limit(l, u->uid, QUOTA_BYTES);
	u->max_connections = quota_limit(l, u->uid, QUOTA_CONNECTIONS);
	u->max_attachments = quota_limit(l, u->uid, QUOTA_ATTACHMENTS);
	u->idle_timeout_ms = l->idle_timeout_ns / 1000000;
}

void quota_tally_free(struct quota_tally *t)
{
	if (!t)
		return;
	free(t->v);
	t->v = NULL;
	t->n = t->cap = 0;
}
