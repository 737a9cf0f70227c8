/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the per-page table: the state transitions of one entry,
 * threads racing for the same pages (each page claimed exactly once), and a
 * table for a huge segment that costs nothing until it is touched.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pagetable.h"

#define NPAGES 64
#define SHARE(n) ((uint64_t)(n) << 32)	/* the snapshot share count */

static struct pagetable pt;

static void setup(void)
{
	ck_assert_int_eq(pagetable_init(&pt, NPAGES), 0);
}

static void teardown(void)
{
	pagetable_fini(&pt);
}

static void pte_set(uint64_t i, uint64_t v)
{
	atomic_store(&pt.e[i], v);
}

START_TEST(test_init_absent)
{
	ck_assert_ptr_nonnull((void *)pt.e);
	ck_assert_uint_eq(pt.npages, NPAGES);
	for (uint64_t i = 0; i < NPAGES; i++)
		ck_assert_uint_eq(pte_get(&pt, i), 0);
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
	pte_set(2, PTE_PRESENT | PTE_BUSY);
	ck_assert(!pte_present_to_absent(&pt, 2));
	ck_assert_uint_eq(pte_get(&pt, 2), PTE_PRESENT | PTE_BUSY);
}
END_TEST

START_TEST(test_other_bits_kept)
{
	/* PRESERVE and the share count survive every transition. */
	pte_set(9, SHARE(3) | PTE_PRESERVE);
	ck_assert(pte_try_busy(&pt, 9));
	ck_assert_uint_eq(pte_get(&pt, 9), SHARE(3) | PTE_PRESERVE | PTE_BUSY);
	pte_end_busy(&pt, 9, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&pt, 9), SHARE(3) | PTE_PRESERVE | PTE_PRESENT);
	ck_assert(pte_present_to_absent(&pt, 9));
	ck_assert_uint_eq(pte_get(&pt, 9), SHARE(3) | PTE_PRESERVE);

	pte_set(10, SHARE(1));
	ck_assert(pte_try_busy(&pt, 10));
	pte_end_busy(&pt, 10, 0);
	ck_assert_uint_eq(pte_get(&pt, 10), SHARE(1));
}
END_TEST

START_TEST(test_last_entry)
{
	ck_assert(pte_try_busy(&pt, NPAGES - 1));
	pte_end_busy(&pt, NPAGES - 1, PTE_PRESENT);
	ck_assert_uint_eq(pte_get(&pt, NPAGES - 1), PTE_PRESENT);
}
END_TEST

START_TEST(test_fini_twice)
{
	struct pagetable t;

	ck_assert_int_eq(pagetable_init(&t, 1), 0);
	pagetable_fini(&t);
	ck_assert_ptr_null((void *)t.e);
	pagetable_fini(&t);	/* a destructor accepts what it left */
}
END_TEST

/* --- concurrency --- */

#define RACE_THREADS 8
#define RACE_PAGES (1u << 16)
#define RACE_ROUNDS 4

struct race {
	struct pagetable *pt;
	pthread_barrier_t *start;
	_Atomic uint32_t *claims;	/* per page */
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
		uint64_t j = (k + (uint64_t)r->id * (RACE_PAGES / RACE_THREADS)) %
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

	ck_assert_int_eq(pagetable_init(&t, RACE_PAGES), 0);
	claims = calloc(RACE_PAGES, sizeof(*claims));
	ck_assert_ptr_nonnull(claims);

	for (int round = 0; round < RACE_ROUNDS; round++) {
		uint64_t total = 0;

		pthread_barrier_init(&start, NULL, RACE_THREADS);
		for (unsigned int i = 0; i < RACE_THREADS; i++) {
			r[i] = (struct race){ .pt = &t, .start = &start,
					      .claims = claims, .id = i };
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
	_Atomic uint32_t *owner;	/* per page: 0 free, else id + 1 */
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
		c[i] = (struct churn){ .pt = &t, .start = &start,
				       .wins = &wins, .owner = owner,
				       .id = i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, churn_thread,
						&c[i]),
				 0);
	}
	for (unsigned int i = 0; i < RACE_THREADS; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(c[i].bad == 0, "thread %u: %d double claims",
			      i, c[i].bad);
	}
	pthread_barrier_destroy(&start);
	ck_assert_uint_gt(wins, 0);
	for (uint64_t i = 0; i < CHURN_PAGES; i++)
		ck_assert_uint_eq(pte_get(&t, i), 0);
	pagetable_fini(&t);
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
	/* 1 TiB of 4 KiB pages: a 2 GiB table, of which we touch 3 pages. */
	const uint64_t npages = (UINT64_C(1) << 40) / 4096;
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

	after = rss_kib();
	if (before >= 0 && after >= 0)
		ck_assert_msg(after - before < 16 * 1024,
			      "table of 1 TiB cost %ld KiB resident",
			      after - before);
	pagetable_fini(&t);
	ck_assert_ptr_null((void *)t.e);
}
END_TEST

static Suite *pagetable_suite(void)
{
	Suite *s = suite_create("pagetable");
	TCase *tc;

	tc = tcase_create("transitions");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_init_absent);
	tcase_add_test(tc, test_busy_once);
	tcase_add_test(tc, test_end_busy_present);
	tcase_add_test(tc, test_end_busy_poison);
	tcase_add_test(tc, test_end_busy_absent);
	tcase_add_test(tc, test_present_to_absent);
	tcase_add_test(tc, test_other_bits_kept);
	tcase_add_test(tc, test_last_entry);
	tcase_add_test(tc, test_fini_twice);
	suite_add_tcase(s, tc);

	tc = tcase_create("race");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_race_claim_once);
	tcase_add_test(tc, test_race_churn);
	suite_add_tcase(s, tc);

	tc = tcase_create("huge");
	tcase_add_test(tc, test_huge_lazy);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(pagetable_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
