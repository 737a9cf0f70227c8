/* SPDX-License-Identifier: MIT */
/*
 * What the shim's two files share: preload.c (the interposed entry
 * points, the table of managed ranges) and arena.c (the allocator of
 * requests below $UPAGER_MIN_SIZE).  Nothing here is exported
 * (preload.map).
 */
#ifndef UPAGER_PRELOAD_SHIM_H
#define UPAGER_PRELOAD_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHIM_TLS __attribute__((tls_model("initial-exec")))

/* Non-zero while this thread runs the shim or the library: what it maps
 * is the kernel's and what it allocates glibc's. */
extern __thread int shim_guard SHIM_TLS;

extern size_t cfg_min_size;
extern bool cfg_debug;

void shim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define shim_debug(...)                        \
	do {                                   \
		if (cfg_debug)                 \
			shim_log(__VA_ARGS__); \
	} while (0)

/* preload.c, for arena.c; the guard held. */

/* The connection to the daemon is up (made now if it was not tried). */
bool shim_connected(void);

/* A managed private mapping of @len bytes aligned to @len, read-write;
 * NULL (nothing left mapped) when it would not be managed. */
void *shim_arena_map(size_t len);

/* [@p, @p + @len) of managed private memory is free: punched when that
 * makes it read zeros (not while a fork child's snapshot may share it,
 * nor in a fork child's clone).  True if it reads zeros now. */
bool shim_release(void *p, size_t len);

/* arena.c, for preload.c */

void arena_init(void);

/*
 * A block of @size bytes (@align a power of two, 0: malloc's) from the
 * arenas, or NULL: not the arenas' (off, too large, no memory), the
 * caller asks glibc.  Not with the guard held by a caller that holds a
 * lock of preload.c.  @zero: the block must read zeros (calloc).
 */
void *arena_alloc(size_t size, size_t align, bool zero);

/* Whether @p is a block of the arenas (nothing at @p is read). */
bool arena_owns(const void *p);

/* Frees @p if it is a block of the arenas: true; false: not theirs
 * (nothing at @p is read). */
bool arena_free(void *p);

/* The bytes usable at the arenas' block @p. */
size_t arena_usable(const void *p);

/* The slab or run of the arenas holding @addr: true, with its first
 * byte in @start and its length in @len. */
bool arena_span(const void *addr, uintptr_t *start, size_t *len);

/* Whether the arenas' block @p can stay where it is at @size bytes (a
 * run is shrunk or grown in place if it can be). */
bool arena_fits(const void *p, size_t size);

/*
 * fork(), from preload.c's atfork handlers: the allocator's locks held
 * across the cut and the kernel's fork (taken before preload.c's; the
 * program's own prepare handlers have run), so the cut and the kernel's
 * copy of arena.c's own state agree.  arena_fork_child() makes the locks
 * again in the child.
 */
void arena_fork_prepare(void);
void arena_fork_parent(void);
void arena_fork_child(void);

/* A clone() child without CLONE_VM: the arenas are not its memory. */
void arena_lost(void);

/* Exit or exec under way: no new arena (its segment would outlive us). */
void arena_stop(void);

#endif
