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
 * The table is an anonymous MAP_NORESERVE mapping: untouched parts of a
 * large, sparsely used segment cost nothing.
 */
#ifndef UPAGER_PAGETABLE_H
#define UPAGER_PAGETABLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define PTE_PRESENT 0x1ull
#define PTE_BUSY 0x2ull
#define PTE_PRESERVE 0x4ull
#define PTE_POISON 0x8ull

struct pagetable {
	_Atomic uint64_t *e;
	uint64_t npages;
};

int pagetable_init(struct pagetable *pt, uint64_t npages);
void pagetable_fini(struct pagetable *pt);

static inline uint64_t pte_get(struct pagetable *pt, uint64_t i)
{
	return atomic_load_explicit(&pt->e[i], memory_order_acquire);
}

/* absent -> BUSY.  True when this caller now owns the fill. */
static inline bool pte_try_busy(struct pagetable *pt, uint64_t i)
{
	uint64_t old = pte_get(pt, i);

	while (!(old & (PTE_PRESENT | PTE_BUSY | PTE_POISON))) {
		if (atomic_compare_exchange_weak_explicit(
			    &pt->e[i], &old, old | PTE_BUSY,
			    memory_order_acq_rel, memory_order_acquire))
			return true;
	}
	return false;
}

/* Clears BUSY and sets @set (PRESENT, POISON or nothing for absent). */
static inline void pte_end_busy(struct pagetable *pt, uint64_t i, uint64_t set)
{
	uint64_t old = pte_get(pt, i);

	while (!atomic_compare_exchange_weak_explicit(
		&pt->e[i], &old, (old & ~PTE_BUSY) | set, memory_order_acq_rel,
		memory_order_acquire))
		;
}

/* PRESENT -> absent, when the frame turned out to be gone. */
static inline bool pte_present_to_absent(struct pagetable *pt, uint64_t i)
{
	uint64_t old = pte_get(pt, i);

	while ((old & PTE_PRESENT) && !(old & PTE_BUSY)) {
		if (atomic_compare_exchange_weak_explicit(
			    &pt->e[i], &old, old & ~PTE_PRESENT,
			    memory_order_acq_rel, memory_order_acquire))
			return true;
	}
	return false;
}

#endif
