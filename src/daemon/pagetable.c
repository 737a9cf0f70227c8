// SPDX-License-Identifier: MIT
/* The per-page table: a lock-free radix tree; see pagetable.h. */
#include <errno.h>
#include <stdlib.h>

#include "pagetable.h"

_Static_assert(sizeof(struct pt_leaf) == PT_LEAF_SLOTS * sizeof(uint64_t),
	       "a leaf is its words");
_Static_assert(PT_LEAF_SHIFT + PT_NODE_SHIFT <= 63, "node shifts");

int pagetable_init(struct pagetable *pt, uint64_t npages)
{
	unsigned int h = 0;

	if (!npages || npages > PT_MAX_PAGES)
		return -EINVAL;
	while ((npages - 1) >> (PT_LEAF_SHIFT + h * PT_NODE_SHIFT))
		h++;
	atomic_init(&pt->root, NULL);
	pt->npages = npages;
	pt->height = h;
	atomic_init(&pt->mem, 0);
	atomic_init(&pt->lost, 0);
	return 0;
}

static void pt_walk(void *n, unsigned int h, uint64_t first,
		    void (*fn)(void *arg, uint64_t first, struct pt_leaf *l),
		    void *arg)
{
	struct pt_node *node = n;

	if (!n)
		return;
	if (!h) {
		fn(arg, first, n);
		return;
	}
	for (unsigned int k = 0; k < PT_NODE_SLOTS; k++)
		pt_walk(atomic_load_explicit(&node->slot[k],
					     memory_order_acquire),
			h - 1,
			first + ((uint64_t)k
				 << (PT_LEAF_SHIFT + (h - 1) * PT_NODE_SHIFT)),
			fn, arg);
}

void pagetable_walk(struct pagetable *pt,
		    void (*fn)(void *arg, uint64_t first, struct pt_leaf *l),
		    void *arg)
{
	pt_walk(atomic_load_explicit(&pt->root, memory_order_acquire),
		pt->height, 0, fn, arg);
}

static void pt_free(void *n, unsigned int h)
{
	struct pt_node *node = n;

	if (!n)
		return;
	for (unsigned int k = 0; h && k < PT_NODE_SLOTS; k++)
		pt_free(atomic_load_explicit(&node->slot[k],
					     memory_order_relaxed),
			h - 1);
	free(n);
}

void pagetable_fini(struct pagetable *pt)
{
	pt_free(atomic_load_explicit(&pt->root, memory_order_relaxed),
		pt->height);
	atomic_store_explicit(&pt->root, NULL, memory_order_relaxed);
	atomic_store_explicit(&pt->mem, 0, memory_order_relaxed);
}

/*
 * The node in @link, installed if there is none: zeroed, then published
 * with a release CAS so that whoever loads the pointer (acquire) sees the
 * zeros.  The loser of a race frees its node and takes the winner's.
 */
static void *pt_node_get(struct pagetable *pt, _Atomic(void *) *link,
			 size_t size)
{
	void *n = atomic_load_explicit(link, memory_order_acquire);
	void *fresh;

	if (n)
		return n;
	fresh = calloc(1, size);
	if (!fresh)
		return NULL;
	if (atomic_compare_exchange_strong_explicit(link, &n, fresh,
						    memory_order_acq_rel,
						    memory_order_acquire)) {
		atomic_fetch_add_explicit(&pt->mem, size, memory_order_relaxed);
		return fresh;
	}
	free(fresh);
	atomic_fetch_add_explicit(&pt->lost, 1, memory_order_relaxed);
	return n;
}

_Atomic uint64_t *pte_ref(struct pagetable *pt, uint64_t i)
{
	_Atomic(void *) *link = &pt->root;
	struct pt_leaf *l;

	for (unsigned int h = pt->height; h; h--) {
		unsigned int shift = PT_LEAF_SHIFT + (h - 1) * PT_NODE_SHIFT;
		struct pt_node *node = pt_node_get(pt, link, sizeof(*node));

		if (!node)
			return NULL;
		link = &node->slot[(i >> shift) & PT_NODE_MASK];
	}
	l = pt_node_get(pt, link, sizeof(*l));
	return l ? &l->e[i & PT_LEAF_MASK] : NULL;
}

/* Whether @e has every bit of @bits. */
static inline bool pte_has(uint64_t e, uint64_t bits)
{
	return (e & bits) == bits;
}

uint64_t pte_run_below(struct pagetable *pt, uint64_t i, uint64_t max,
		       uint64_t bits)
{
	uint64_t n = 0;

	if (max > i)
		max = i;
	while (n < max) {
		uint64_t j = i - n - 1;	       /* the next entry down */
		uint64_t k = j & PT_LEAF_MASK; /* its slot; k..0 here */
		struct pt_leaf *l = pt_leaf_lookup(pt, j);

		if (!l) {
			/* absent entries: 0 */
			if (bits)
				break;
			n += k + 1 < max - n ? k + 1 : max - n;
			continue;
		}
		for (;;) {
			uint64_t e = atomic_load_explicit(&l->e[k],
							  memory_order_acquire);

			if (!pte_has(e, bits))
				return n;
			if (++n == max || k-- == 0)
				break;
		}
	}
	return n;
}

uint64_t pte_run_from(struct pagetable *pt, uint64_t i, uint64_t max,
		      uint64_t bits)
{
	uint64_t n = 0;

	if (i >= pt->npages)
		return 0;
	if (max > pt->npages - i)
		max = pt->npages - i;
	while (n < max) {
		uint64_t j = i + n;
		uint64_t k = j & PT_LEAF_MASK; /* its slot; k..MASK here */
		struct pt_leaf *l = pt_leaf_lookup(pt, j);

		if (!l) {
			if (bits)
				break;
			n += PT_LEAF_SLOTS - k < max - n ? PT_LEAF_SLOTS - k :
							   max - n;
			continue;
		}
		for (;;) {
			uint64_t e = atomic_load_explicit(&l->e[k],
							  memory_order_acquire);

			if (!pte_has(e, bits))
				return n;
			if (++n == max || ++k == PT_LEAF_SLOTS)
				break;
		}
	}
	return n;
}

/* The leaf of entry @i, made if need be. */
static struct pt_leaf *pt_leaf_make(struct pagetable *pt, uint64_t i)
{
	struct pt_leaf *l = pt_leaf_lookup(pt, i);
	_Atomic uint64_t *e;

	if (l)
		return l;
	e = pte_ref(pt, i);
	return e ? (struct pt_leaf *)(e - (i & PT_LEAF_MASK)) : NULL;
}

uint64_t pte_claim_run(struct pagetable *pt, uint64_t i, uint64_t max)
{
	uint64_t n = 0;

	if (i >= pt->npages)
		return 0;
	if (max > pt->npages - i)
		max = pt->npages - i;
	while (n < max) {
		uint64_t k = (i + n) & PT_LEAF_MASK;
		struct pt_leaf *l = pt_leaf_make(pt, i + n);

		if (!l)
			return n;
		for (;;) {
			_Atomic uint64_t *e = &l->e[k];
			uint64_t old =
				atomic_load_explicit(e, memory_order_acquire);

			do {
				if (old & (PTE_PRESENT | PTE_BUSY | PTE_POISON))
					return n;
			} while (!atomic_compare_exchange_weak_explicit(
				e, &old, old | PTE_BUSY, memory_order_acq_rel,
				memory_order_acquire));
			if (++n == max || ++k == PT_LEAF_SLOTS)
				break;
		}
	}
	return n;
}

void pte_end_busy_run(struct pagetable *pt, uint64_t i, uint64_t n, uint64_t set)
{
	uint64_t done = 0;

	if (i >= pt->npages)
		return;
	if (n > pt->npages - i)
		n = pt->npages - i;
	while (done < n) {
		uint64_t k = (i + done) & PT_LEAF_MASK;
		uint64_t here = PT_LEAF_SLOTS - k;
		struct pt_leaf *l = pt_leaf_lookup(pt, i + done);

		if (here > n - done)
			here = n - done;
		if (!l && set)
			l = pt_leaf_make(pt, i + done);
		if (!l) {
			/* absent and nothing to set (or no memory: see
			 * pte_end_busy) */
			done += here;
			continue;
		}
		for (uint64_t j = k; j < k + here; j++) {
			_Atomic uint64_t *e = &l->e[j];
			uint64_t old =
				atomic_load_explicit(e, memory_order_acquire);

			while (!atomic_compare_exchange_weak_explicit(
				e, &old, (old & ~PTE_BUSY) | set,
				memory_order_acq_rel, memory_order_acquire))
				;
		}
		done += here;
	}
}
