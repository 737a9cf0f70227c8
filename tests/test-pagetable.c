/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the per-page table: the state transitions of one entry,
 * the shape of the radix tree (every entry its own word, nodes only where
 * something was touched), threads racing for the same pages and for the
 * same nodes (each page claimed exactly once, each node installed once),
 * and a table for a huge segment that costs what its touched pages cost.
 *
 * `test-pagetable --bench` prints a micro-benchmark instead (not run by
 * meson test, nothing asserted).
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pagetable.h"

#define NPAGES 64
#define SHARE(n) ((uint64_t)(n) << 32) /* the snapshot share count */
#define NODE_BYTES 128u		       /* every node, leaf or interior */
#define TIB_PAGES ((UINT64_C(1) << 40) / 4096)

_Static_assert(sizeof(struct pt_leaf) == NODE_BYTES, "leaf size");
_Static_assert(sizeof(struct pt_node) == NODE_BYTES, "node size");

static struct pagetable pt;

static void setup(void)
{
	ck_assert_int_eq(pagetable_init(&pt, NPAGES), 0);
}

static void teardown(void)
{
	pagetable_fini(&pt);
}

static void pte_set_in(struct pagetable *t, uint64_t i, uint64_t v)
{
	_Atomic uint64_t *e = pte_ref(t, i);

	ck_assert_ptr_nonnull((void *)e);
	atomic_store(e, v);
}

static void entry_set(uint64_t i, uint64_t v)
{
	pte_set_in(&pt, i, v);
}

static void *root_of(struct pagetable *t)
{
	return atomic_load(&t->root);
}

/* The height pagetable_init must choose for @npages. */
static unsigned int height_for(uint64_t npages)
{
	unsigned int h = 0;

	while ((npages - 1) >> (PT_LEAF_SHIFT + h * PT_NODE_SHIFT))
		h++;
	return h;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The nodes a table of @height must hold once entries @idx[0..n) (any
 * order, repeats allowed) were touched: at each level, one node for each
 * distinct prefix.  Sorts @idx.
 */
static uint64_t nodes_for(uint64_t *idx, size_t n, unsigned int height)
{
	uint64_t nodes = 0;

	qsort(idx, n, sizeof(*idx), cmp_u64);
	for (unsigned int l = 0; l <= height; l++) {
		unsigned int shift = PT_LEAF_SHIFT + l * PT_NODE_SHIFT;

		for (size_t k = 0; k < n; k++) {
			if (k == 0 || idx[k] >> shift != idx[k - 1] >> shift)
				nodes++;
		}
	}
	return nodes;
}

/* --- transitions of one entry --- */

START_TEST(test_init_absent)
{
	ck_assert_ptr_null(root_of(&pt));
	ck_assert_uint_eq(pt.npages, NPAGES);
	ck_assert_uint_eq(pt.height, 1);
	for (uint64_t i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(pte_get(&pt, i), 0);
	/* reading allocates nothing */
	ck_assert_ptr_null(root_of(&pt));
	ck_assert_uint_eq(pagetable_mem(&pt), 0);
}
END_TEST

START_TEST(test_busy_once)
{
	ck_assert(pte_try_busy(&pt, 3));
	ck_assert_uint_eq(pte_get(&pt, 3), PTE_BUSY);
	/* A second claimer waits for the first one's fill. */
	ck_assert(!pte_try_busy(&pt, 3));
	ck_assert(!pte_try_busy(&pt, 3));
	ck_assert_uint_eq(pte_get(&pt, 3), PTE_BUSY);
	/* Neighbours are untouched. */
	ck_assert_uint_eq(pte_get(&pt, 2), 0);
	ck_assert_uint_eq(pte_get(&pt, 4), 0);
	ck_assert(pte_try_busy(&pt, 4));
}
END_TEST

START_TEST(test_claim)
{
	ck_assert_int_eq(pte_claim(&pt, 20), 1);
	ck_assert_int_eq(pte_claim(&pt, 20), 0);
	pte_end_busy(&pt, 20, PTE_PRESENT);
	ck_assert_int_eq(pte_claim(&pt, 20), 0);
	ck_assert(pte_present_to_absent(&pt, 20));
	ck_assert_int_eq(pte_claim(&pt, 20), 1);
	pte_end_busy(&pt, 20, PTE_POISON);
	ck_assert_int_eq(pte_claim(&pt, 20), 0);
}
END_TEST

START_TEST(test_end_busy_present)
{
	ck_assert(pte_try_busy(&pt, 0));
	pte_end_busy(&pt, 0, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&pt, 0), PTE_PRESENT);
	/* Present: nobody fills it again. */
	ck_assert(!pte_try_busy(&pt, 0));
	ck_assert_uint_eq(pte_get(&pt, 0), PTE_PRESENT);
}
END_TEST

START_TEST(test_end_busy_poison)
{
	ck_assert(pte_try_busy(&pt, 5));
	pte_end_busy(&pt, 5, PTE_POISON);
	ck_assert_uint_eq(pte_get(&pt, 5), PTE_POISON);
	ck_assert(!pte_try_busy(&pt, 5));
	ck_assert(!pte_present_to_absent(&pt, 5));
	ck_assert_uint_eq(pte_get(&pt, 5), PTE_POISON);
}
END_TEST

START_TEST(test_end_busy_absent)
{
	/* A fill that gave its page back: the next fault claims it again. */
	ck_assert(pte_try_busy(&pt, 7));
	pte_end_busy(&pt, 7, 0);
	ck_assert_uint_eq(pte_get(&pt, 7), 0);
	ck_assert(pte_try_busy(&pt, 7));
	ck_assert_uint_eq(pte_get(&pt, 7), PTE_BUSY);
}
END_TEST

START_TEST(test_end_busy_untouched)
{
	/* Nothing to clear and nothing to set: no node for it. */
	pte_end_busy(&pt, 40, 0);
	ck_assert_ptr_null(root_of(&pt));
	ck_assert_uint_eq(pte_get(&pt, 40), 0);
	/* Setting a bit needs the word: it is made. */
	pte_end_busy(&pt, 40, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&pt, 40), PTE_PRESENT);
}
END_TEST

START_TEST(test_present_to_absent)
{
	/* absent: nothing to do */
	ck_assert(!pte_present_to_absent(&pt, 1));
	ck_assert_uint_eq(pte_get(&pt, 1), 0);

	/* busy: the fill owns it */
	ck_assert(pte_try_busy(&pt, 1));
	ck_assert(!pte_present_to_absent(&pt, 1));
	ck_assert_uint_eq(pte_get(&pt, 1), PTE_BUSY);

	/* present, not busy: the only state it applies to */
	pte_end_busy(&pt, 1, PTE_PRESENT);
	ck_assert(pte_present_to_absent(&pt, 1));
	ck_assert_uint_eq(pte_get(&pt, 1), 0);
	ck_assert(!pte_present_to_absent(&pt, 1));

	/* and then it is claimable again */
	ck_assert(pte_try_busy(&pt, 1));

	/* present and busy at once (not reachable through try_busy) */
	entry_set(2, PTE_PRESENT | PTE_BUSY);
	ck_assert(!pte_present_to_absent(&pt, 2));
	ck_assert_uint_eq(pte_get(&pt, 2), PTE_PRESENT | PTE_BUSY);
}
END_TEST

START_TEST(test_other_bits_kept)
{
	/* PRESERVE and the share count survive every transition. */
	entry_set(9, SHARE(3) | PTE_PRESERVE);
	ck_assert(pte_try_busy(&pt, 9));
	ck_assert_uint_eq(pte_get(&pt, 9), SHARE(3) | PTE_PRESERVE | PTE_BUSY);
	pte_end_busy(&pt, 9, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&pt, 9),
			  SHARE(3) | PTE_PRESERVE | PTE_PRESENT);
	ck_assert(pte_present_to_absent(&pt, 9));
	ck_assert_uint_eq(pte_get(&pt, 9), SHARE(3) | PTE_PRESERVE);

	entry_set(10, SHARE(1));
	ck_assert(pte_try_busy(&pt, 10));
	pte_end_busy(&pt, 10, 0);
	ck_assert_uint_eq(pte_get(&pt, 10), SHARE(1));

	/* all 64 bits are the entry's */
	entry_set(11, ~(uint64_t)(PTE_PRESENT | PTE_BUSY | PTE_POISON));
	ck_assert(pte_try_busy(&pt, 11));
	ck_assert_uint_eq(pte_get(&pt, 11),
			  ~(uint64_t)(PTE_PRESENT | PTE_POISON));
	ck_assert_uint_eq(pte_get(&pt, 12), 0);
	ck_assert_uint_eq(pte_get(&pt, 10), SHARE(1));
}
END_TEST

START_TEST(test_last_entry)
{
	ck_assert(pte_try_busy(&pt, NPAGES - 1));
	pte_end_busy(&pt, NPAGES - 1, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&pt, NPAGES - 1), PTE_PRESENT);
	/* one leaf under the root */
	ck_assert_uint_eq(pagetable_mem(&pt), 2 * NODE_BYTES);
}
END_TEST

START_TEST(test_ref_stable)
{
	_Atomic uint64_t *ref[NPAGES];

	/* every entry its own word, and the same word every time */
	for (uint64_t i = 0; i < NPAGES; i++) {
		ref[i] = pte_ref(&pt, i);
		ck_assert_ptr_nonnull((void *)ref[i]);
		for (uint64_t j = 0; j < i; j++)
			ck_assert_ptr_ne((void *)ref[i], (void *)ref[j]);
	}
	for (uint64_t i = 0; i < NPAGES; i++) {
		ck_assert_ptr_eq((void *)pte_ref(&pt, i), (void *)ref[i]);
		atomic_store(ref[i], SHARE(i) | PTE_PRESENT);
	}
	for (uint64_t i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(pte_get(&pt, i), SHARE(i) | PTE_PRESENT);
	ck_assert_uint_eq(pagetable_mem(&pt),
			  (1 + NPAGES / PT_LEAF_SLOTS) * NODE_BYTES);
}
END_TEST

START_TEST(test_fini_twice)
{
	struct pagetable t;

	ck_assert_int_eq(pagetable_init(&t, 1), 0);
	ck_assert_uint_eq(t.height, 0);
	ck_assert(pte_try_busy(&t, 0));
	pagetable_fini(&t);
	ck_assert_ptr_null(root_of(&t));
	ck_assert_uint_eq(pagetable_mem(&t), 0);
	ck_assert_uint_eq(pte_get(&t, 0), 0);
	pagetable_fini(&t); /* a destructor accepts what it left */
}
END_TEST

START_TEST(test_init_sizes)
{
	struct pagetable t;

	ck_assert_int_eq(pagetable_init(&t, 0), -EINVAL);
	ck_assert_int_eq(pagetable_init(&t, PT_MAX_PAGES + 1), -EINVAL);
	ck_assert_int_eq(pagetable_init(&t, UINT64_MAX), -EINVAL);
	ck_assert_int_eq(pagetable_init(&t, PT_MAX_PAGES), 0);
	ck_assert_uint_eq(t.height, height_for(PT_MAX_PAGES));
	ck_assert(pte_try_busy(&t, PT_MAX_PAGES - 1));
	ck_assert_uint_eq(pte_get(&t, PT_MAX_PAGES - 1), PTE_BUSY);
	ck_assert_uint_eq(pte_get(&t, 0), 0);
	ck_assert_uint_eq(pagetable_mem(&t), (t.height + 1) * NODE_BYTES);
	pagetable_fini(&t);
}
END_TEST

/* --- the tree's shape --- */

/*
 * Tables of many sizes around the levels' boundaries: distinct values at
 * the boundary entries read back from their own words only, and the
 * table holds exactly the nodes on their paths.
 */
START_TEST(test_geometry)
{
	static const uint64_t sizes[] = {
		1,
		2,
		15,
		16,
		17,
		255,
		256,
		257,
		4095,
		4096,
		4097,
		65536,
		65537,
		(1u << 20) + 3,
		UINT64_C(1) << 24,
		TIB_PAGES,
		TIB_PAGES + 1,
	};
	uint64_t idx[64], sorted[64];

	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		uint64_t n = sizes[s];
		struct pagetable t;
		size_t nidx = 0;

		ck_assert_int_eq(pagetable_init(&t, n), 0);
		ck_assert_uint_eq(t.height, height_for(n));
		/* a level's first and last entries, the middle, the end */
		for (unsigned int sh = 0; sh <= 40; sh += PT_NODE_SHIFT) {
			uint64_t b = UINT64_C(1) << sh;
			uint64_t cand[] = { b - 1, b, b + 1 };

			for (int c = 0; c < 3; c++) {
				if (cand[c] < n && nidx < 60)
					idx[nidx++] = cand[c];
			}
		}
		idx[nidx++] = 0;
		idx[nidx++] = n / 2;
		idx[nidx++] = n - 1;
		/* duplicates are harmless: the value is the index's */
		for (size_t k = 0; k < nidx; k++)
			pte_set_in(&t, idx[k],
				   SHARE(idx[k] & 0xffffffff) | PTE_PRESERVE);
		for (size_t k = 0; k < nidx; k++) {
			uint64_t i = idx[k];

			ck_assert_uint_eq(pte_get(&t, i),
					  SHARE(i & 0xffffffff) | PTE_PRESERVE);
			for (int d = -2; d <= 2; d += 4) {
				uint64_t j = i + d;
				bool set = false;

				if (j >= n)
					continue;
				for (size_t m = 0; m < nidx; m++)
					set |= idx[m] == j;
				if (!set)
					ck_assert_uint_eq(pte_get(&t, j), 0);
			}
		}
		memcpy(sorted, idx, nidx * sizeof(*idx));
		ck_assert_msg(pagetable_mem(&t) ==
				      nodes_for(sorted, nidx, t.height) *
					      NODE_BYTES,
			      "%ju pages: %ju bytes of nodes for %zu entries",
			      (uintmax_t)n, (uintmax_t)pagetable_mem(&t), nidx);
		pagetable_fini(&t);
	}
}
END_TEST

/* Reads of any kind, and transitions that find nothing to do, allocate
 * nothing. */
START_TEST(test_untouched_no_alloc)
{
	struct pagetable t;
	uint64_t x = 0x9e3779b97f4a7c15ull;

	ck_assert_int_eq(pagetable_init(&t, TIB_PAGES), 0);
	ck_assert_uint_eq(t.height, 6);
	for (int k = 0; k < 100000; k++) {
		uint64_t i;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		i = x % TIB_PAGES;
		ck_assert_uint_eq(pte_get(&t, i), 0);
		ck_assert(!pte_present_to_absent(&t, i));
		pte_end_busy(&t, i, 0);
		ck_assert_uint_eq(pte_run_below(&t, i, 512, PTE_PRESENT), 0);
		ck_assert_uint_eq(pte_run_from(&t, i, 512, PTE_PRESENT), 0);
		pte_end_busy_run(&t, i, 40, 0);
	}
	ck_assert_ptr_null(root_of(&t));
	ck_assert_uint_eq(pagetable_mem(&t), 0);

	/* The first touch makes the path to it: root to leaf. */
	ck_assert(pte_try_busy(&t, TIB_PAGES / 3));
	ck_assert_uint_eq(pagetable_mem(&t), 7 * NODE_BYTES);
	/* its leaf's neighbours: nothing more */
	ck_assert(pte_try_busy(&t, TIB_PAGES / 3 ^ 1));
	ck_assert_uint_eq(pagetable_mem(&t), 7 * NODE_BYTES);
	/* reads around it: nothing more */
	for (uint64_t i = TIB_PAGES / 3 - 300; i < TIB_PAGES / 3 + 300; i++)
		pte_get(&t, i);
	ck_assert_uint_eq(pagetable_mem(&t), 7 * NODE_BYTES);
	pagetable_fini(&t);
}
END_TEST

/* --- the run helpers, against pte_get one entry at a time --- */

static uint64_t naive_below(struct pagetable *t, uint64_t i, uint64_t max,
			    uint64_t bits)
{
	uint64_t n = 0;

	while (n < max && n < i && (pte_get(t, i - n - 1) & bits) == bits)
		n++;
	return n;
}

static uint64_t naive_from(struct pagetable *t, uint64_t i, uint64_t max,
			   uint64_t bits)
{
	uint64_t n = 0;

	while (n < max && i + n < t->npages &&
	       (pte_get(t, i + n) & bits) == bits)
		n++;
	return n;
}

START_TEST(test_runs)
{
	const uint64_t n = 3000;
	struct pagetable t;
	unsigned int seed = 42;

	ck_assert_int_eq(pagetable_init(&t, n), 0);
	/* present runs of every length, some leaves never touched */
	for (uint64_t i = 0; i < n;) {
		uint64_t len = rand_r(&seed) % 70, gap = rand_r(&seed) % 40;

		if (rand_r(&seed) % 4 == 0)
			gap += 3 * PT_LEAF_SLOTS;
		for (uint64_t j = i; j < i + len && j < n; j++)
			pte_set_in(&t, j,
				   PTE_PRESENT | (j % 3 ? PTE_PRESERVE : 0));
		i += len + gap;
	}
	pte_set_in(&t, n - 1, PTE_PRESENT);
	for (uint64_t i = 0; i <= n + 2; i++) {
		static const uint64_t maxes[] = { 0,  1,   15,	16,
						  17, 100, 512, UINT64_MAX };
		static const uint64_t bitss[] = {
			PTE_PRESENT,
			PTE_PRESENT | PTE_PRESERVE,
			0,
		};

		for (size_t m = 0; m < sizeof(maxes) / sizeof(maxes[0]); m++) {
			for (size_t b = 0; b < 3; b++) {
				uint64_t mx = maxes[m], bits = bitss[b];

				ck_assert_msg(pte_run_below(&t, i, mx, bits) ==
						      naive_below(&t, i, mx,
								  bits),
					      "below %ju max %ju bits %ju",
					      (uintmax_t)i, (uintmax_t)mx,
					      (uintmax_t)bits);
				ck_assert_msg(pte_run_from(&t, i, mx, bits) ==
						      naive_from(&t, i, mx,
								 bits),
					      "from %ju max %ju bits %ju",
					      (uintmax_t)i, (uintmax_t)mx,
					      (uintmax_t)bits);
			}
		}
	}
	pagetable_fini(&t);
}
END_TEST

START_TEST(test_claim_run)
{
	const uint64_t n = 1000;
	struct pagetable t;

	ck_assert_int_eq(pagetable_init(&t, n), 0);
	/* across leaves never touched, up to an entry that is present */
	pte_set_in(&t, 100, PTE_PRESENT);
	ck_assert_uint_eq(pte_claim_run(&t, 3, 500), 97);
	for (uint64_t i = 0; i < n; i++)
		ck_assert_uint_eq(pte_get(&t, i), i >= 3 && i < 100 ? PTE_BUSY :
						  i == 100 ? PTE_PRESENT :
							     0);
	/* what is BUSY is not claimed twice */
	ck_assert_uint_eq(pte_claim_run(&t, 50, 10), 0);
	ck_assert_uint_eq(pte_claim_run(&t, 2, 10), 1);
	/* bounded by max and by the table's end */
	ck_assert_uint_eq(pte_claim_run(&t, 101, 17), 17);
	ck_assert_uint_eq(pte_claim_run(&t, 990, 100), 10);
	ck_assert_uint_eq(pte_claim_run(&t, 1000, 100), 0);
	ck_assert_uint_eq(pte_claim_run(&t, 500, 0), 0);
	ck_assert_uint_eq(pte_get(&t, 500), 0);

	/* ended as a run: PRESENT for some, given back for others */
	pte_end_busy_run(&t, 2, 50, PTE_PRESENT);
	pte_end_busy_run(&t, 52, 48, 0);
	for (uint64_t i = 0; i < 118; i++)
		ck_assert_uint_eq(pte_get(&t, i), i >= 2 && i < 52 ?
							  PTE_PRESENT :
						  i == 100 ? PTE_PRESENT :
						  i > 100  ? PTE_BUSY :
							     0);
	ck_assert_uint_eq(pte_run_below(&t, 52, 512, PTE_PRESENT), 50);
	ck_assert_uint_eq(pte_run_from(&t, 2, 512, PTE_PRESENT), 50);
	/* the other bits stay */
	pte_set_in(&t, 700, SHARE(2) | PTE_BUSY);
	pte_end_busy_run(&t, 690, 20, 0);
	ck_assert_uint_eq(pte_get(&t, 700), SHARE(2));
	ck_assert_uint_eq(pte_claim_run(&t, 699, 3), 3);
	ck_assert_uint_eq(pte_get(&t, 700), SHARE(2) | PTE_BUSY);
	pagetable_fini(&t);
}
END_TEST

/* --- concurrency --- */

#define RACE_THREADS 8
#define RACE_PAGES (1u << 16)
#define RACE_ROUNDS 4

struct race {
	struct pagetable *pt;
	pthread_barrier_t *start;
	_Atomic uint32_t *claims; /* per page */
	unsigned int id;
	uint64_t won;
};

static void *race_thread(void *arg)
{
	struct race *r = arg;

	pthread_barrier_wait(r->start);
	/* Half the threads walk up, half down, each from its own offset, so
	 * they collide all over the table. */
	for (uint64_t k = 0; k < RACE_PAGES; k++) {
		uint64_t j = (k +
			      (uint64_t)r->id * (RACE_PAGES / RACE_THREADS)) %
			     RACE_PAGES;
		uint64_t i = r->id & 1 ? RACE_PAGES - 1 - j : j;

		if (pte_try_busy(r->pt, i)) {
			atomic_fetch_add(&r->claims[i], 1);
			r->won++;
		}
	}
	return NULL;
}

START_TEST(test_race_claim_once)
{
	struct pagetable t;
	pthread_t th[RACE_THREADS];
	struct race r[RACE_THREADS];
	pthread_barrier_t start;
	_Atomic uint32_t *claims;

	/* a 1 TiB table: in the first round, every node on the way to
	 * pages [0, RACE_PAGES) is made while the threads race for it */
	ck_assert_int_eq(pagetable_init(&t, TIB_PAGES), 0);
	claims = calloc(RACE_PAGES, sizeof(*claims));
	ck_assert_ptr_nonnull(claims);

	for (int round = 0; round < RACE_ROUNDS; round++) {
		uint64_t total = 0;

		pthread_barrier_init(&start, NULL, RACE_THREADS);
		for (unsigned int i = 0; i < RACE_THREADS; i++) {
			r[i] = (struct race){ .pt = &t,
					      .start = &start,
					      .claims = claims,
					      .id = i };
			ck_assert_int_eq(pthread_create(&th[i], NULL,
							race_thread, &r[i]),
					 0);
		}
		for (unsigned int i = 0; i < RACE_THREADS; i++) {
			pthread_join(th[i], NULL);
			total += r[i].won;
		}
		pthread_barrier_destroy(&start);

		ck_assert_uint_eq(total, RACE_PAGES);
		for (uint64_t i = 0; i < RACE_PAGES; i++) {
			ck_assert_msg(claims[i] == 1,
				      "round %d: page %ju claimed %u times",
				      round, (uintmax_t)i, (unsigned)claims[i]);
			ck_assert_uint_eq(pte_get(&t, i), PTE_BUSY);
			/* Give it back for the next round: even pages as
			 * absent, odd ones present and then dropped. */
			if (i & 1) {
				pte_end_busy(&t, i, PTE_PRESENT);
				ck_assert(pte_present_to_absent(&t, i));
			} else {
				pte_end_busy(&t, i, 0);
			}
			claims[i] = 0;
		}
	}
	/* one path to the used range, each node installed once */
	ck_assert_uint_eq(pagetable_mem(&t),
			  (RACE_PAGES / 16 + RACE_PAGES / 256 +
			   RACE_PAGES / 4096 + 1 + 1 + 1 + 1) *
				  NODE_BYTES);
	free(claims);
	pagetable_fini(&t);
}
END_TEST

/*
 * Fillers end their fills while claimers keep trying: a claimer must never
 * win a page that is busy or present, and every absent page is won once.
 */
struct churn {
	struct pagetable *pt;
	pthread_barrier_t *start;
	_Atomic uint64_t *wins;
	_Atomic uint32_t *owner; /* per page: 0 free, else id + 1 */
	unsigned int id;
	int bad;
};

#define CHURN_PAGES 256u
#define CHURN_ITERS 200000u

static void *churn_thread(void *arg)
{
	struct churn *c = arg;
	unsigned int seed = c->id * 7919u + 1;

	pthread_barrier_wait(c->start);
	for (unsigned int k = 0; k < CHURN_ITERS; k++) {
		uint64_t i = rand_r(&seed) % CHURN_PAGES;
		uint32_t none = 0;

		if (!pte_try_busy(c->pt, i))
			continue;
		/* We own the page: nobody else may. */
		if (!atomic_compare_exchange_strong(&c->owner[i], &none,
						    c->id + 1))
			c->bad++;
		atomic_fetch_add(c->wins, 1);
		atomic_store(&c->owner[i], 0);
		if (k & 1) {
			pte_end_busy(c->pt, i, PTE_PRESENT);
			if (!pte_present_to_absent(c->pt, i))
				c->bad++;
		} else {
			pte_end_busy(c->pt, i, 0);
		}
	}
	return NULL;
}

START_TEST(test_race_churn)
{
	struct pagetable t;
	pthread_t th[RACE_THREADS];
	struct churn c[RACE_THREADS];
	pthread_barrier_t start;
	_Atomic uint64_t wins = 0;
	_Atomic uint32_t owner[CHURN_PAGES] = { 0 };

	ck_assert_int_eq(pagetable_init(&t, CHURN_PAGES), 0);
	pthread_barrier_init(&start, NULL, RACE_THREADS);
	for (unsigned int i = 0; i < RACE_THREADS; i++) {
		c[i] = (struct churn){ .pt = &t,
				       .start = &start,
				       .wins = &wins,
				       .owner = owner,
				       .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, churn_thread,
						&c[i]),
				 0);
	}
	for (unsigned int i = 0; i < RACE_THREADS; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(c[i].bad == 0, "thread %u: %d double claims", i,
			      c[i].bad);
	}
	pthread_barrier_destroy(&start);
	ck_assert_uint_gt(wins, 0);
	for (uint64_t i = 0; i < CHURN_PAGES; i++)
		ck_assert_uint_eq(pte_get(&t, i), 0);
	pagetable_fini(&t);
}
END_TEST

/*
 * Nodes racing to be installed.  Each round, a fresh 1 TiB table, and
 * threads released at once that all need the same path from the root:
 * each claims its own entry in one shared leaf, all claim one shared
 * entry there, each claims an entry in its own leaf under one shared
 * parent, and one in its own 16 MiB subtree.  Whoever installs a node,
 * every claim lands in the one node that stays, the shared entry is won
 * once, and the table holds each node once (a loser's node is freed, not
 * leaked: AddressSanitizer's leak check sees it).
 */
#define INSTALL_THREADS 4
#define INSTALL_ROUNDS 3000

struct install {
	struct pagetable *_Atomic t;
	_Atomic unsigned int ready, round;
	_Atomic unsigned int shared_wins;
};

static void spin_until(_Atomic unsigned int *v, unsigned int want)
{
	for (unsigned int n = 0; atomic_load(v) < want; n++) {
		if (n > 1000)
			sched_yield();
	}
}

/* Round @round's pages: a 256 MiB subtree of its own (for variety; each
 * round has a fresh table anyway). */
static uint64_t install_base(unsigned int round)
{
	return (TIB_PAGES / (INSTALL_ROUNDS + 1) * round) & ~UINT64_C(65535);
}

struct install_arg {
	struct install *in;
	unsigned int id;
	int bad;
};

static void *install_thread(void *arg)
{
	struct install_arg *a = arg;
	struct install *in = a->in;

	for (unsigned int r = 1; r <= INSTALL_ROUNDS; r++) {
		struct pagetable *t;
		uint64_t base = install_base(r);
		unsigned int id = a->id;

		spin_until(&in->round, r);
		t = atomic_load(&in->t);
		if (!pte_try_busy(t, base + id)) /* same leaf */
			a->bad++;
		if (pte_try_busy(t, base + 15)) /* same entry */
			atomic_fetch_add(&in->shared_wins, 1);
		if (!pte_try_busy(t, base + 16 * (id + 1) + id)) /* siblings */
			a->bad++;
		if (!pte_try_busy(t, base + 4096 * (id + 1))) /* cousins */
			a->bad++;
		atomic_fetch_add(&in->ready, 1);
	}
	return NULL;
}

START_TEST(test_race_install)
{
	struct install in = { 0 };
	struct install_arg args[INSTALL_THREADS];
	pthread_t th[INSTALL_THREADS];
	uint64_t lost = 0;

	for (unsigned int i = 0; i < INSTALL_THREADS; i++) {
		args[i] = (struct install_arg){ .in = &in, .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, install_thread,
						&args[i]),
				 0);
	}
	for (unsigned int r = 1; r <= INSTALL_ROUNDS; r++) {
		struct pagetable t;
		uint64_t base = install_base(r), idx[4 * INSTALL_THREADS + 1];
		size_t n = 0;

		ck_assert_int_eq(pagetable_init(&t, TIB_PAGES), 0);
		atomic_store(&in.t, &t);
		atomic_store(&in.shared_wins, 0);
		atomic_store(&in.ready, 0);
		atomic_store(&in.round, r); /* go */
		spin_until(&in.ready, INSTALL_THREADS);

		ck_assert_uint_eq(atomic_load(&in.shared_wins), 1);
		ck_assert_uint_eq(pte_get(&t, base + 15), PTE_BUSY);
		for (unsigned int id = 0; id < INSTALL_THREADS; id++) {
			idx[n++] = base + id;
			idx[n++] = base + 16 * (id + 1) + id;
			idx[n++] = base + 4096 * (id + 1);
		}
		idx[n++] = base + 15;
		for (size_t k = 0; k < n; k++)
			ck_assert_uint_eq(pte_get(&t, idx[k]), PTE_BUSY);
		ck_assert_uint_eq(pte_get(&t, base + INSTALL_THREADS), 0);
		ck_assert_uint_eq(pagetable_mem(&t),
				  nodes_for(idx, n, t.height) * NODE_BYTES);
		lost += atomic_load(&t.lost);
		pagetable_fini(&t);
	}
	for (unsigned int i = 0; i < INSTALL_THREADS; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(args[i].bad == 0, "thread %u lost %d own claims",
			      i, args[i].bad);
	}
	/* how often a node was made twice and one freed: not asserted,
	 * it depends on the machine */
	fprintf(stderr, "race_install: %ju nodes lost the race in %u rounds\n",
		(uintmax_t)lost, INSTALL_ROUNDS);
}
END_TEST

/*
 * Heavy use by many threads, then fini: every node is freed (the leak
 * check), and the table held exactly the nodes of the entries touched.
 */
#define HEAVY_THREADS 4
#define HEAVY_OPS 50000

/* Per op at most one entry a leaf of a run of up to 40: 4 leaves. */
#define HEAVY_RECORDS (4 * HEAVY_OPS)

struct heavy {
	struct pagetable *pt;
	pthread_barrier_t *start;
	uint64_t touched[HEAVY_RECORDS]; /* an entry of every leaf made */
	size_t ntouched;
	unsigned int id;
};

static void *heavy_thread(void *arg)
{
	struct heavy *h = arg;
	unsigned int seed = h->id + 1;

	pthread_barrier_wait(h->start);
	for (unsigned int k = 0; k < HEAVY_OPS; k++) {
		/* clustered: most pages near others, some alone */
		uint64_t i = ((uint64_t)rand_r(&seed) << 31 | rand_r(&seed)) %
			     TIB_PAGES;
		uint32_t n = rand_r(&seed) % 40;

		if (k % 4)
			i = (i % 64) * (TIB_PAGES / 64) + rand_r(&seed) % 65536;
		if (i + n > TIB_PAGES)
			i = TIB_PAGES - n - 1;
		switch (k % 5) {
		case 0: /* a fault: claim, fill, done */
			if (pte_try_busy(h->pt, i))
				pte_end_busy(h->pt, i, PTE_PRESENT);
			/* made its leaf, or found it */
			h->touched[h->ntouched++] = i;
			break;
		case 1: { /* a read-ahead run */
			uint32_t got = pte_claim_run(h->pt, i, n);
			/* the leaves of the entries claimed and of the one
			 * that stopped the run */
			uint64_t last = i + (got < n ? got : n - 1);

			pte_end_busy_run(h->pt, i, got, PTE_PRESENT);
			for (uint64_t j = i; n && j <= last;
			     j = (j | PT_LEAF_MASK) + 1)
				h->touched[h->ntouched++] = j;
			break;
		}
		case 2: /* the source failed */
			if (pte_try_busy(h->pt, i))
				pte_end_busy(h->pt, i, PTE_POISON);
			h->touched[h->ntouched++] = i;
			break;
		case 3: /* a punched-out frame */
			pte_present_to_absent(h->pt, i);
			break;
		default: /* lookups */
			pte_run_below(h->pt, i, 512, PTE_PRESENT);
			pte_get(h->pt, i);
			break;
		}
	}
	return NULL;
}

START_TEST(test_fini_after_heavy_use)
{
	struct pagetable t;
	struct heavy *h[HEAVY_THREADS];
	pthread_t th[HEAVY_THREADS];
	pthread_barrier_t start;
	uint64_t *all;
	size_t n = 0;

	ck_assert_int_eq(pagetable_init(&t, TIB_PAGES), 0);
	pthread_barrier_init(&start, NULL, HEAVY_THREADS);
	for (unsigned int i = 0; i < HEAVY_THREADS; i++) {
		h[i] = calloc(1, sizeof(*h[i]));
		ck_assert_ptr_nonnull(h[i]);
		*h[i] = (struct heavy){ .pt = &t, .start = &start, .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, heavy_thread,
						h[i]),
				 0);
	}
	all = calloc(HEAVY_THREADS * HEAVY_RECORDS, sizeof(*all));
	ck_assert_ptr_nonnull(all);
	for (unsigned int i = 0; i < HEAVY_THREADS; i++) {
		pthread_join(th[i], NULL);
		memcpy(all + n, h[i]->touched, h[i]->ntouched * sizeof(*all));
		n += h[i]->ntouched;
		free(h[i]);
	}
	pthread_barrier_destroy(&start);
	ck_assert_uint_eq(pagetable_mem(&t),
			  nodes_for(all, n, t.height) * NODE_BYTES);
	free(all);
	pagetable_fini(&t);
	ck_assert_uint_eq(pagetable_mem(&t), 0);
	ck_assert_ptr_null(root_of(&t));
}
END_TEST

/* --- a huge table --- */

static long rss_kib(void)
{
	long size, resident;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

START_TEST(test_huge_lazy)
{
	/* 1 TiB of 4 KiB pages, of which we touch 3. */
	const uint64_t npages = TIB_PAGES;
	struct pagetable t;
	long before, after;

	before = rss_kib();
	ck_assert_int_eq(pagetable_init(&t, npages), 0);
	ck_assert_uint_eq(t.npages, npages);

	ck_assert_uint_eq(pte_get(&t, npages / 2), 0);
	ck_assert(pte_try_busy(&t, 0));
	ck_assert(pte_try_busy(&t, npages / 2));
	ck_assert(!pte_try_busy(&t, npages / 2));
	pte_end_busy(&t, npages / 2, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&t, npages / 2), PTE_PRESENT);
	ck_assert(pte_try_busy(&t, npages - 1));
	ck_assert_uint_eq(pte_get(&t, npages - 1), PTE_BUSY);
	ck_assert_uint_eq(pte_get(&t, npages - 2), 0);
	/* three paths that share the root only */
	ck_assert_uint_eq(pagetable_mem(&t), (1 + 3 * 6) * NODE_BYTES);

	after = rss_kib();
	if (before >= 0 && after >= 0)
		ck_assert_msg(after - before < 1024,
			      "table of 1 TiB cost %ld KiB resident",
			      after - before);
	pagetable_fini(&t);
	ck_assert_ptr_null(root_of(&t));
}
END_TEST

/*
 * Item 17 of issue 6: a 1 TiB segment touched every 16 MiB.  Each touched
 * page costs its leaf and the two interior nodes below the 16 MiB level;
 * the levels above are shared.  The process's resident memory agrees
 * (malloc's headers, or AddressSanitizer's redzones, on top).
 */
START_TEST(test_huge_sparse_memory)
{
	const uint64_t stride = 4096, touches = TIB_PAGES / stride;
	struct pagetable t;
	long before, after;
	uint64_t want;

	before = rss_kib();
	ck_assert_int_eq(pagetable_init(&t, TIB_PAGES), 0);
	for (uint64_t k = 0; k < touches; k++) {
		ck_assert(pte_try_busy(&t, k * stride + k % stride));
		pte_end_busy(&t, k * stride + k % stride, PTE_PRESENT);
	}
	after = rss_kib();
	want = (3 * touches + TIB_PAGES / 65536 + TIB_PAGES / (1 << 20) +
		TIB_PAGES / (1 << 24) + 1) *
	       NODE_BYTES;
	ck_assert_uint_eq(pagetable_mem(&t), want);
	ck_assert_uint_lt(pagetable_mem(&t) / touches, 400);
	if (before >= 0 && after >= 0)
		ck_assert_msg((uint64_t)(after - before) * 1024 < touches * 1024,
			      "%ju touches cost %ld KiB resident",
			      (uintmax_t)touches, after - before);
	for (uint64_t k = 0; k < touches; k++) {
		ck_assert_uint_eq(pte_get(&t, k * stride + k % stride),
				  PTE_PRESENT);
		ck_assert_uint_eq(pte_get(&t, k * stride + (k + 1) % stride), 0);
	}
	pagetable_fini(&t);
}
END_TEST

/* Every page touched: within the budget of 16 bytes a page. */
START_TEST(test_dense_memory)
{
	const uint64_t n = UINT64_C(1) << 20;
	struct pagetable t;

	ck_assert_int_eq(pagetable_init(&t, n), 0);
	ck_assert_uint_eq(pte_claim_run(&t, 0, n), n);
	pte_end_busy_run(&t, 0, n, PTE_PRESENT);
	ck_assert_uint_eq(pte_run_from(&t, 0, n, PTE_PRESENT), n);
	ck_assert_uint_eq(pagetable_mem(&t),
			  (n / 16 + n / 256 + n / 4096 + n / 65536 + 1) *
				  NODE_BYTES);
	ck_assert_uint_lt(pagetable_mem(&t), n * 9);
	pagetable_fini(&t);
}
END_TEST

/* --- micro-benchmark: test-pagetable --bench (not run by meson test) --- */

static uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static uint64_t bench_sink;

/* Marks pages [0, n) of @t present, every @step-th one. */
static void bench_fill(struct pagetable *t, uint64_t n, uint64_t step)
{
	for (uint64_t i = 0; i < n; i += step) {
		if (pte_try_busy(t, i))
			pte_end_busy(t, i, PTE_PRESENT);
	}
}

/* The read-ahead context scan of segment.c's ra_pages(): up to 512
 * present entries just below @pgoff, one pte_get each. */
static uint32_t bench_ra_scan(struct pagetable *t, uint64_t pgoff)
{
	uint32_t h = 0;

	while (h < 512 && h < pgoff && (pte_get(t, pgoff - h - 1) & PTE_PRESENT))
		h++;
	return h;
}

static void bench_report(const char *what, uint64_t ns, uint64_t ops)
{
	printf("%-48s %8.2f ns/op  (%llu ops)\n", what, (double)ns / ops,
	       (unsigned long long)ops);
}

static int bench(void)
{
	const uint64_t dense = UINT64_C(1) << 24; /* 64 GiB */
	const uint64_t small = UINT64_C(1) << 18; /* 1 GiB */
	struct pagetable t;
	uint64_t t0, ops, x = 88172645463325252ull, sum = 0;

	printf("depth (nodes on a path): 1 GiB %u, 64 GiB %u, 1 TiB %u\n",
	       height_for(small) + 1, height_for(dense) + 1,
	       height_for(TIB_PAGES) + 1);

	/* the backwards read-ahead scan, 512 present entries each */
	if (pagetable_init(&t, small))
		return EXIT_FAILURE;
	bench_fill(&t, small, 1);
	ops = 0;
	t0 = bench_now_ns();
	for (int r = 0; r < 8; r++) {
		for (uint64_t p = 512; p < small; p += 509) {
			sum += bench_ra_scan(&t, p);
			ops += 512;
		}
	}
	bench_report("pte_get, ra_pages scan of 512 (1 GiB)",
		     bench_now_ns() - t0, ops);
	ops = 0;
	t0 = bench_now_ns();
	for (int r = 0; r < 8; r++) {
		for (uint64_t p = 512; p < small; p += 509) {
			sum += pte_run_below(&t, p, 512, PTE_PRESENT);
			ops += 512;
		}
	}
	bench_report("pte_run_below of 512, per entry (1 GiB)",
		     bench_now_ns() - t0, ops);
	pagetable_fini(&t);

	/* random and sequential lookups in a densely used 64 GiB table */
	if (pagetable_init(&t, dense))
		return EXIT_FAILURE;
	bench_fill(&t, dense, 1);
	ops = 1u << 24;
	t0 = bench_now_ns();
	for (uint64_t k = 0; k < ops; k++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		sum += pte_get(&t, x % dense);
	}
	bench_report("pte_get, random, dense 64 GiB", bench_now_ns() - t0, ops);
	t0 = bench_now_ns();
	for (uint64_t k = 0; k < dense; k++)
		sum += pte_get(&t, k);
	bench_report("pte_get, sequential, dense 64 GiB", bench_now_ns() - t0,
		     dense);
	pagetable_fini(&t);

	/* first touch: claim and fill every page of a fresh table */
	if (pagetable_init(&t, small))
		return EXIT_FAILURE;
	t0 = bench_now_ns();
	bench_fill(&t, small, 1);
	bench_report("pte_try_busy + pte_end_busy, first touch",
		     bench_now_ns() - t0, small);
	pagetable_fini(&t);
	if (pagetable_init(&t, small))
		return EXIT_FAILURE;
	t0 = bench_now_ns();
	for (uint64_t i = 0; i < small; i += 1024) {
		uint64_t n = pte_claim_run(&t, i, 1024);

		pte_end_busy_run(&t, i, n, PTE_PRESENT);
	}
	bench_report("pte_claim_run + pte_end_busy_run of 1024, first",
		     bench_now_ns() - t0, small);
	pagetable_fini(&t);

	/* a 1 TiB table touched every 16 MiB: touched and untouched
	 * entries looked up at random */
	if (pagetable_init(&t, TIB_PAGES))
		return EXIT_FAILURE;
	t0 = bench_now_ns();
	bench_fill(&t, TIB_PAGES, 4096);
	bench_report("first touch, 1 TiB every 16 MiB", bench_now_ns() - t0,
		     TIB_PAGES / 4096);
	ops = 1u << 22;
	t0 = bench_now_ns();
	for (uint64_t k = 0; k < ops; k++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		sum += pte_get(&t, x % (TIB_PAGES / 4096) * 4096);
	}
	bench_report("pte_get, random touched, 1 TiB sparse",
		     bench_now_ns() - t0, ops);
	t0 = bench_now_ns();
	for (uint64_t k = 0; k < ops; k++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		sum += pte_get(&t, x % TIB_PAGES);
	}
	bench_report("pte_get, random anywhere, 1 TiB sparse",
		     bench_now_ns() - t0, ops);
	printf("1 TiB every 16 MiB: %llu bytes of nodes, %.0f a touched page\n",
	       (unsigned long long)pagetable_mem(&t),
	       (double)pagetable_mem(&t) / (TIB_PAGES / 4096));
	pagetable_fini(&t);

	bench_sink = sum;
	return EXIT_SUCCESS;
}

static Suite *pagetable_suite(void)
{
	Suite *s = suite_create("pagetable");
	TCase *tc;

	tc = tcase_create("transitions");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_init_absent);
	tcase_add_test(tc, test_busy_once);
	tcase_add_test(tc, test_claim);
	tcase_add_test(tc, test_end_busy_present);
	tcase_add_test(tc, test_end_busy_poison);
	tcase_add_test(tc, test_end_busy_absent);
	tcase_add_test(tc, test_end_busy_untouched);
	tcase_add_test(tc, test_present_to_absent);
	tcase_add_test(tc, test_other_bits_kept);
	tcase_add_test(tc, test_last_entry);
	tcase_add_test(tc, test_ref_stable);
	tcase_add_test(tc, test_fini_twice);
	tcase_add_test(tc, test_init_sizes);
	suite_add_tcase(s, tc);

	tc = tcase_create("tree");
	tcase_add_test(tc, test_geometry);
	tcase_add_test(tc, test_untouched_no_alloc);
	tcase_add_test(tc, test_runs);
	tcase_add_test(tc, test_claim_run);
	suite_add_tcase(s, tc);

	tc = tcase_create("race");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_race_claim_once);
	tcase_add_test(tc, test_race_churn);
	tcase_add_test(tc, test_race_install);
	tcase_add_test(tc, test_fini_after_heavy_use);
	suite_add_tcase(s, tc);

	tc = tcase_create("huge");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_huge_lazy);
	tcase_add_test(tc, test_huge_sparse_memory);
	tcase_add_test(tc, test_dense_memory);
	suite_add_tcase(s, tc);

	return s;
}

int main(int argc, char **argv)
{
	SRunner *sr;
	int failed;

	if (argc > 1 && !strcmp(argv[1], "--bench"))
		return bench();
	sr = srunner_create(pagetable_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
