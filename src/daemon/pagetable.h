/* SPDX-License-Identifier: MIT */
/*
 * The per-page table of a segment: one 64-bit word a page, changed only by
 * atomic compare-and-swap, so two faults on one page never fill it twice.
 *
 *   absent     (0)            content comes from the source
 *   BUSY                      a fill is in flight; later faults wait on it
 *   PRESENT                   the frame is in the segment's memfd
 *   PRESERVE                  a snapshot still shares the frame (snapshots)
 *   POISON                    the source failed: accesses get SIGBUS
 *
 * The upper 32 bits are kept for a snapshot share count.  PRESENT is a
 * belief about the memfd, not a lock on it: MADV_REMOVE by a client punches
 * the frame out, so a missing fault on a PRESENT page re-checks the memfd.
 *
 * The words live in a radix tree whose memory follows the pages touched,
 * not the segment's size.  Every node is 128 bytes, two cache lines: a
 * leaf holds the words of 16 consecutive pages, an interior node 16
 * pointers.  The height is fixed at init, the fewest levels that cover the
 * segment; a lookup loads one pointer a level, then the word:
 *
 *   pages up to   segment (4 KiB pages)       nodes on a lookup's path
 *   2^4           64 KiB                      1 (the root is the leaf)
 *   2^8           1 MiB                       2
 *   2^12          16 MiB                      3
 *   2^16          256 MiB                     4
 *   2^20          4 GiB                       5
 *   2^24          64 GiB                      6
 *   2^28          1 TiB (UPAGER_MAX_SIZE)     7
 *
 * Memory: a densely used table costs 8.5 bytes a page (9.6 with malloc's
 * headers).  An isolated touched page costs its leaf and the interior
 * nodes on its path that no other touched page shares: 3 nodes, 384 bytes,
 * for a 1 TiB segment touched every 16 MiB; in a 1 TiB segment, 7 nodes
 * (896 bytes) at most.  Nothing is allocated for pages never touched, nor
 * at init.
 *
 * A node is allocated the first time an entry under it leaves the absent
 * state (pte_claim, pte_try_busy, pte_ref and the run helpers), zeroed, and
 * published with a compare-and-swap into its parent's slot; a thread that
 * loses that race frees its own node and goes on through the winner's.
 * Readers never allocate: a missing node reads as absent.  Nodes are never
 * removed or moved until pagetable_fini (freeing one under lock-free
 * readers would need a grace period), so a word keeps its address for its
 * CAS, and a page once touched keeps its leaf while the segment lives.
 *
 * A lookup is a chain of dependent loads: pte_get of a 1 GiB segment's
 * cached entries takes some 4.5 ns where the flat array it replaced took
 * 0.8 (`test-pagetable --bench`).  Loops over consecutive pages should use
 * the run helpers at the end of this file: one descent a leaf instead of
 * one a page, about 1 ns a page.
 */
#ifndef UPAGER_PAGETABLE_H
#define UPAGER_PAGETABLE_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PTE_PRESENT 0x1ull
#define PTE_BUSY 0x2ull
#define PTE_PRESERVE 0x4ull
#define PTE_POISON 0x8ull
/*
 * A snapshot's own table (snapshot.c): SHARING, the page is its parent's
 * frame as it was at the cut (while not PRESENT here); CBW, its frame here
 * was copied before a write of the parent; CHANGED, the page differs from
 * the snapshot of the same parent cut before it.  A snapshot's page with
 * none of PRESENT, SHARING is its parent's source.
 */
#define PTE_SHARING 0x10ull
#define PTE_CBW 0x20ull
#define PTE_CHANGED 0x40ull
/* A segment's (never a snapshot's) table: a remove event covered the page
 * since it was filled; its frame may be gone. */
#define PTE_MAYBE_GONE 0x80ull

#define PT_LEAF_SHIFT 4
#define PT_LEAF_SLOTS (1u << PT_LEAF_SHIFT)
#define PT_LEAF_MASK (PT_LEAF_SLOTS - 1)
#define PT_NODE_SHIFT 4
#define PT_NODE_SLOTS (1u << PT_NODE_SHIFT)
#define PT_NODE_MASK (PT_NODE_SLOTS - 1)
/* The largest table: 2^64 bytes of 4 KiB pages. */
#define PT_MAX_PAGES (UINT64_C(1) << 52)

struct pt_leaf {
	_Atomic uint64_t e[PT_LEAF_SLOTS];
};

struct pt_node {
	_Atomic(void *) slot[PT_NODE_SLOTS]; /* a pt_node, or a pt_leaf
					      * one level up from them */
};

/*
 * Lock-free: any number of threads may look up and change entries at once.
 * pagetable_init and pagetable_fini run alone.
 */
struct pagetable {
	_Atomic(void *) root; /* a pt_node; the pt_leaf at height 0 */
	uint64_t npages;
	unsigned int height;   /* interior levels above the leaves */
	_Atomic uint64_t mem;  /* bytes of nodes held */
	_Atomic uint64_t lost; /* nodes freed after losing the race to be
				* installed (statistics, tests) */
};

/*
 * pagetable_init - a table of @npages absent entries
 *
 * Allocates nothing: nodes come with the first touch.  Returns 0, or
 * -EINVAL for 0 pages or more than PT_MAX_PAGES.
 */
int pagetable_init(struct pagetable *pt, uint64_t npages);

/* Frees every node; the table reads as empty afterwards.  Accepts a table
 * it already finished, and a zeroed one. */
void pagetable_fini(struct pagetable *pt);

/* Bytes of nodes the table holds (not counting the allocator's headers). */
static inline uint64_t pagetable_mem(struct pagetable *pt)
{
	return atomic_load_explicit(&pt->mem, memory_order_relaxed);
}

/*
 * pagetable_walk - @fn on every leaf that exists, in page order; @first is
 * the leaf's first entry (some may be past the table's end).  Leaves made
 * meanwhile may be missed.
 */
void pagetable_walk(struct pagetable *pt,
		    void (*fn)(void *arg, uint64_t first, struct pt_leaf *l),
		    void *arg);

/* Sets @bits in entry @i (its leaf made if need be): false without memory. */
static inline bool pte_set(struct pagetable *pt, uint64_t i, uint64_t bits);

/* Clears @bits in entry @i; returns the entry as it was. */
static inline uint64_t pte_clear(struct pagetable *pt, uint64_t i,
				 uint64_t bits);

/*
 * pte_ref - the word of entry @i, its leaf (and the nodes above it) made
 * if need be.  The address stays valid until pagetable_fini.  Returns NULL
 * when a node cannot be allocated.  For code that changes bits other than
 * those the helpers below change (snapshots); tests.
 */
_Atomic uint64_t *pte_ref(struct pagetable *pt, uint64_t i);

/* The leaf holding entry @i, or NULL when nothing under it was touched. */
static inline struct pt_leaf *pt_leaf_lookup(struct pagetable *pt, uint64_t i)
{
	void *n = atomic_load_explicit(&pt->root, memory_order_acquire);
	unsigned int h = pt->height;

	for (; h && n; h--) {
		struct pt_node *node = n;
		unsigned int shift = PT_LEAF_SHIFT + (h - 1) * PT_NODE_SHIFT;

		n = atomic_load_explicit(&node->slot[(i >> shift) & PT_NODE_MASK],
					 memory_order_acquire);
	}
	return n;
}

static inline uint64_t pte_get(struct pagetable *pt, uint64_t i)
{
	struct pt_leaf *l = pt_leaf_lookup(pt, i);

	if (!l)
		return 0;
	return atomic_load_explicit(&l->e[i & PT_LEAF_MASK],
				    memory_order_acquire);
}

static inline bool pte_set(struct pagetable *pt, uint64_t i, uint64_t bits)
{
	_Atomic uint64_t *e = pte_ref(pt, i);

	if (!e)
		return false;
	atomic_fetch_or_explicit(e, bits, memory_order_acq_rel);
	return true;
}

static inline uint64_t pte_clear(struct pagetable *pt, uint64_t i, uint64_t bits)
{
	struct pt_leaf *l = pt_leaf_lookup(pt, i);

	if (!l)
		return 0;
	return atomic_fetch_and_explicit(&l->e[i & PT_LEAF_MASK], ~bits,
					 memory_order_acq_rel);
}

/*
 * pte_claim - absent -> BUSY
 *
 * Returns 1 when this caller now owns the fill, 0 when the entry is BUSY,
 * PRESENT or POISON, -ENOMEM when its leaf could not be allocated.
 */
static inline int pte_claim(struct pagetable *pt, uint64_t i)
{
	struct pt_leaf *l = pt_leaf_lookup(pt, i);
	_Atomic uint64_t *e;
	uint64_t old;

	if (l)
		e = &l->e[i & PT_LEAF_MASK];
	else if (!(e = pte_ref(pt, i)))
		return -ENOMEM;
	old = atomic_load_explicit(e, memory_order_acquire);
	while (!(old & (PTE_PRESENT | PTE_BUSY | PTE_POISON))) {
		if (atomic_compare_exchange_weak_explicit(e, &old,
							  old | PTE_BUSY,
							  memory_order_acq_rel,
							  memory_order_acquire))
			return 1;
	}
	return 0;
}

/*
 * absent -> BUSY.  True when this caller now owns the fill.  False also
 * when the entry's leaf could not be allocated (use pte_claim to tell).
 */
static inline bool pte_try_busy(struct pagetable *pt, uint64_t i)
{
	return pte_claim(pt, i) > 0;
}

/* Clears BUSY and sets @set (PRESENT, POISON or nothing for absent). */
static inline void pte_end_busy(struct pagetable *pt, uint64_t i, uint64_t set)
{
	struct pt_leaf *l = pt_leaf_lookup(pt, i);
	_Atomic uint64_t *e;
	uint64_t old;

	/* A BUSY entry has its leaf: only a caller that never claimed @i
	 * and sets a bit gets to allocate here. */
	if (l)
		e = &l->e[i & PT_LEAF_MASK];
	else if (!set || !(e = pte_ref(pt, i)))
		return;
	old = atomic_load_explicit(e, memory_order_acquire);
	while (!atomic_compare_exchange_weak_explicit(e, &old,
						      (old & ~PTE_BUSY) | set,
						      memory_order_acq_rel,
						      memory_order_acquire))
		;
}

/* PRESENT -> absent, when the frame turned out to be gone. */
static inline bool pte_present_to_absent(struct pagetable *pt, uint64_t i)
{
	struct pt_leaf *l = pt_leaf_lookup(pt, i);
	_Atomic uint64_t *e;
	uint64_t old;

	if (!l)
		return false;
	e = &l->e[i & PT_LEAF_MASK];
	old = atomic_load_explicit(e, memory_order_acquire);
	while ((old & PTE_PRESENT) && !(old & PTE_BUSY)) {
		if (atomic_compare_exchange_weak_explicit(e, &old,
							  old & ~PTE_PRESENT,
							  memory_order_acq_rel,
							  memory_order_acquire))
			return true;
	}
	return false;
}

/*
 * pte_claim_run - pte_claim of @i, @i + 1, ... while it succeeds, at most
 * @max entries and never past the table's end.  Returns how many this
 * caller now owns (BUSY), from @i up; it stops early at an entry that is
 * not absent, or when a leaf cannot be allocated.
 */
uint64_t pte_claim_run(struct pagetable *pt, uint64_t i, uint64_t max);

/* pte_end_busy of entries [@i, @i + @n), never past the table's end. */
void pte_end_busy_run(struct pagetable *pt, uint64_t i, uint64_t n,
		      uint64_t set);

/*
 * pte_run_below - how many entries just below @i (@i - 1, @i - 2, ...), at
 * most @max, all have every bit of @bits set.  The read-ahead context scan:
 * one descent of the tree a leaf, not one an entry.
 */
uint64_t pte_run_below(struct pagetable *pt, uint64_t i, uint64_t max,
		       uint64_t bits);

/*
 * pte_run_from - how many entries from @i up (@i, @i + 1, ...), at most
 * @max and never past the table's end, all have every bit of @bits set.
 */
uint64_t pte_run_from(struct pagetable *pt, uint64_t i, uint64_t max,
		      uint64_t bits);

#endif
