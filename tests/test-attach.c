/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for an attachment's range bookkeeping: which segment page an
 * address is, and how munmap and mremap (the uffd's UNMAP and REMAP events)
 * change that.
 *
 * The attachments hang off a segment on the stack with only its page size
 * set and one reference of ours, so attach_put() never frees it; no
 * userfaultfd, worker or memfd is involved; the segment's daemon is an
 * empty one of the test's own.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attach.h"
#include "segment.h"
#include "daemon.h"

#define PS 4096ull
#define BASE 0x7f0000000000ull /* where the client mapped it */
#define FAR 0x7e0000000000ull  /* where mremap moves it */
#define PG(n) ((uint64_t)(n)*PS)

static struct daemon dmn;
static struct segment seg;
static struct attachment *att;

static void new_att(uint64_t start, uint64_t npages, uint64_t pgoff)
{
	ck_assert_int_eq(attach_new(&seg, -1, getpid(), start, PG(npages),
				    pgoff, &att),
			 0);
}

static void setup(void)
{
	daemon_init(&dmn);
	memset(&seg, 0, sizeof(seg));
	seg.d = &dmn;
	seg.page_size = PS;
	seg.refs = 1;
	snprintf(seg.name, sizeof(seg.name), "test");
	att = NULL;
}

static void teardown(void)
{
	attach_put(att);
	/* Every reference the attachments took was given back. */
	ck_assert_int_eq(seg.refs, 1);
	daemon_fini(&dmn);
}

/* @addr is segment page @pgoff, with @run pages to the end of its range. */
#define ck_page(addr, want_pgoff, want_run)                                    \
	do {                                                                   \
		uint64_t _pg = ~0ull, _run = ~0ull, _a = (addr);               \
		int _r = attach_lookup(att, _a, &_pg, &_run);                  \
		ck_assert_msg(_r == 0, "%#llx: lookup %d, want page %llu",     \
			      (unsigned long long)_a, _r,                      \
			      (unsigned long long)(want_pgoff));               \
		ck_assert_msg(_pg == (uint64_t)(want_pgoff) &&                 \
				      _run == (uint64_t)(want_run),            \
			      "%#llx: page %llu run %llu, want %llu run %llu", \
			      (unsigned long long)_a, (unsigned long long)_pg, \
			      (unsigned long long)_run,                        \
			      (unsigned long long)(want_pgoff),                \
			      (unsigned long long)(want_run));                 \
	} while (0)

#define ck_nopage(addr)                                                      \
	do {                                                                 \
		uint64_t _pg = 0, _run = 0, _a = (addr);                     \
		int _r = attach_lookup(att, _a, &_pg, &_run);                \
		ck_assert_msg(_r == -ENOENT,                                 \
			      "%#llx: lookup %d (page %llu run %llu), want " \
			      "-ENOENT",                                     \
			      (unsigned long long)_a, _r,                    \
			      (unsigned long long)_pg,                       \
			      (unsigned long long)_run);                     \
	} while (0)

/* Page i at @base is segment page want[i], or unmapped where it is -1. */
static void ck_map(uint64_t base, const long long *want, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t pg = ~0ull, run = ~0ull;
		int ret = attach_lookup(att, base + PG(i), &pg, &run);

		if (want[i] < 0)
			ck_assert_msg(ret == -ENOENT,
				      "page %d at %#llx: lookup %d (segment "
				      "page %llu), want -ENOENT",
				      i, (unsigned long long)(base + PG(i)),
				      ret, (unsigned long long)pg);
		else
			ck_assert_msg(ret == 0 && pg == (uint64_t)want[i],
				      "page %d at %#llx: lookup %d (segment "
				      "page %llu), want segment page %lld",
				      i, (unsigned long long)(base + PG(i)),
				      ret, (unsigned long long)pg, want[i]);
	}
}

/* --- lookup --- */

START_TEST(test_lookup)
{
	new_att(BASE, 10, 100);
	ck_assert(attach_has_ranges(att));
	ck_assert_uint_gt(att->id, 0);
	ck_assert_int_eq(att->uffd, -1);
	ck_assert_int_eq(att->pid, getpid());
	ck_assert_int_eq(seg.refs, 2);

	ck_page(BASE, 100, 10);
	ck_page(BASE + 1, 100, 9); /* rounded down: 9 whole pages left */
	ck_page(BASE + PG(3), 103, 7);
	ck_page(BASE + PG(3) + 17, 103, 6);
	ck_page(BASE + PG(9), 109, 1);
	ck_page(BASE + PG(10) - 1, 109, 0);

	ck_nopage(BASE - 1);
	ck_nopage(BASE - PS);
	ck_nopage(BASE + PG(10));
	ck_nopage(BASE + PG(11));
	ck_nopage(0);
	ck_nopage(~0ull);
}
END_TEST

START_TEST(test_ids_distinct)
{
	struct attachment *b;

	new_att(BASE, 1, 0);
	ck_assert_int_eq(attach_new(&seg, -1, 1, FAR, PS, 0, &b), 0);
	ck_assert_uint_ne(att->id, b->id);
	ck_assert_int_eq(seg.refs, 3);
	attach_put(b);
	ck_assert_int_eq(seg.refs, 2);
}
END_TEST

/* --- unmap --- */

START_TEST(test_unmap_middle)
{
	new_att(BASE, 10, 100);
	attach_unmap(att, BASE + PG(3), BASE + PG(6));
	ck_assert(attach_has_ranges(att));
	ck_assert_uint_eq(att->nr_ranges, 2);

	ck_page(BASE, 100, 3);
	ck_page(BASE + PG(2), 102, 1);
	ck_nopage(BASE + PG(3));
	ck_nopage(BASE + PG(5));
	ck_nopage(BASE + PG(6) - 1);
	ck_page(BASE + PG(6), 106, 4);
	ck_page(BASE + PG(9), 109, 1);
	ck_nopage(BASE + PG(10));
}
END_TEST

START_TEST(test_unmap_head_tail)
{
	new_att(BASE, 10, 0);
	attach_unmap(att, BASE, BASE + PG(2));
	ck_nopage(BASE);
	ck_nopage(BASE + PG(1));
	ck_page(BASE + PG(2), 2, 8);

	attach_unmap(att, BASE + PG(8), BASE + PG(10));
	ck_page(BASE + PG(2), 2, 6);
	ck_page(BASE + PG(7), 7, 1);
	ck_nopage(BASE + PG(8));
	ck_assert_uint_eq(att->nr_ranges, 1);

	/* overlapping one end only, reaching past it */
	attach_unmap(att, BASE + PG(6), BASE + PG(100));
	ck_page(BASE + PG(5), 5, 1);
	ck_nopage(BASE + PG(6));
	attach_unmap(att, BASE - PG(100), BASE + PG(3));
	ck_nopage(BASE + PG(2));
	ck_page(BASE + PG(3), 3, 3);
	ck_assert_uint_eq(att->nr_ranges, 1);
}
END_TEST

START_TEST(test_unmap_outside)
{
	new_att(BASE, 4, 0);
	attach_unmap(att, BASE - PG(4), BASE);
	attach_unmap(att, BASE + PG(4), BASE + PG(8));
	attach_unmap(att, FAR, FAR + PG(1000));
	attach_unmap(att, BASE + PG(2), BASE + PG(2)); /* empty */
	ck_assert_uint_eq(att->nr_ranges, 1);
	ck_page(BASE, 0, 4);
	ck_page(BASE + PG(3), 3, 1);
}
END_TEST

START_TEST(test_unmap_all)
{
	new_att(BASE, 10, 0);
	attach_unmap(att, BASE, BASE + PG(10));
	ck_assert(!attach_has_ranges(att));
	ck_nopage(BASE);
	ck_nopage(BASE + PG(9));
	/* and again: nothing left to cut */
	attach_unmap(att, BASE, BASE + PG(10));
	ck_assert(!attach_has_ranges(att));
}
END_TEST

START_TEST(test_unmap_all_pieces)
{
	/* Holes punched one by one, then the rest piece by piece. */
	new_att(BASE, 8, 0);
	attach_unmap(att, BASE + PG(1), BASE + PG(2));
	attach_unmap(att, BASE + PG(5), BASE + PG(6));
	attach_unmap(att, BASE + PG(3), BASE + PG(4));
	ck_assert_uint_eq(att->nr_ranges, 4);
	ck_page(BASE, 0, 1);
	ck_page(BASE + PG(2), 2, 1);
	ck_page(BASE + PG(4), 4, 1);
	ck_page(BASE + PG(6), 6, 2);
	attach_unmap(att, BASE + PG(6), BASE + PG(8));
	attach_unmap(att, BASE, BASE + PG(1));
	attach_unmap(att, BASE + PG(4), BASE + PG(5));
	ck_assert(attach_has_ranges(att));
	attach_unmap(att, BASE + PG(2), BASE + PG(3));
	ck_assert(!attach_has_ranges(att));
}
END_TEST

/*
 * One munmap over several ranges (a munmap may span holes; the UNMAP event
 * carries the whole span).
 */
START_TEST(test_unmap_spanning_ranges)
{
	static const long long want[] = { 0, -1, -1, -1, -1, -1, -1, 7, 8, 9 };

	new_att(BASE, 10, 0);
	attach_unmap(att, BASE + PG(2), BASE + PG(3));
	attach_unmap(att, BASE + PG(5), BASE + PG(6));
	/* now [0,2) [3,5) [6,10) */
	ck_page(BASE + PG(3), 3, 2);

	attach_unmap(att, BASE + PG(1), BASE + PG(7));
	ck_map(BASE, want, 10);
	ck_page(BASE, 0, 1);
	ck_page(BASE + PG(7), 7, 3);
}
END_TEST

START_TEST(test_unmap_spanning_everything)
{
	/* Three ranges, one munmap over all of them: nothing is left. */
	new_att(BASE, 10, 0);
	attach_unmap(att, BASE + PG(2), BASE + PG(3));
	attach_unmap(att, BASE + PG(5), BASE + PG(6));
	attach_unmap(att, BASE, BASE + PG(10));
	for (int i = 0; i < 10; i++)
		ck_nopage(BASE + PG(i));
	ck_assert(!attach_has_ranges(att));
}
END_TEST

/* --- remap --- */

START_TEST(test_remap_sub_range)
{
	new_att(BASE, 10, 100);
	attach_remap(att, BASE + PG(2), FAR, PG(3));

	/* the moved pages, at their new address */
	ck_page(FAR, 102, 3);
	ck_page(FAR + PG(1) + 5, 103, 1);
	ck_page(FAR + PG(2), 104, 1);
	ck_nopage(FAR - 1);
	ck_nopage(FAR + PG(3));
	/* gone from the old address */
	ck_nopage(BASE + PG(2));
	ck_nopage(BASE + PG(4));
	/* what stayed, split */
	ck_page(BASE, 100, 2);
	ck_page(BASE + PG(1), 101, 1);
	ck_page(BASE + PG(5), 105, 5);
	ck_page(BASE + PG(9), 109, 1);
	ck_assert_uint_eq(att->nr_ranges, 3);
}
END_TEST

START_TEST(test_remap_whole)
{
	new_att(BASE, 4, 7);
	attach_remap(att, BASE, FAR, PG(4));
	for (int i = 0; i < 4; i++) {
		ck_nopage(BASE + PG(i));
		ck_page(FAR + PG(i), 7 + i, 4 - i);
	}
	ck_assert_uint_eq(att->nr_ranges, 1);

	/* and back, one page up */
	attach_remap(att, FAR, BASE + PS, PG(4));
	ck_nopage(FAR);
	ck_nopage(BASE);
	ck_page(BASE + PS, 7, 4);
	ck_page(BASE + PG(4), 10, 1);
}
END_TEST

START_TEST(test_remap_unknown)
{
	/* A remap of memory that is not ours changes nothing of ours... */
	new_att(BASE, 4, 0);
	attach_remap(att, FAR, FAR + PG(100), PG(4));
	ck_assert_uint_eq(att->nr_ranges, 1);
	ck_page(BASE, 0, 4);
	ck_nopage(FAR + PG(100));
	/* ...unless it lands on us: mremap unmapped what was there. */
	attach_remap(att, FAR, BASE + PG(1), PG(2));
	ck_page(BASE, 0, 1);
	ck_nopage(BASE + PG(1));
	ck_nopage(BASE + PG(2));
	ck_page(BASE + PG(3), 3, 1);
}
END_TEST

START_TEST(test_remap_onto_range)
{
	/* [0,8) and [10,16); move [0,4) onto [12,16), over the second. */
	new_att(BASE, 16, 0);
	attach_unmap(att, BASE + PG(8), BASE + PG(10));
	attach_remap(att, BASE, BASE + PG(12), PG(4));

	for (int i = 0; i < 4; i++)
		ck_nopage(BASE + PG(i));
	ck_page(BASE + PG(4), 4, 4);
	ck_page(BASE + PG(7), 7, 1);
	ck_nopage(BASE + PG(8));
	ck_nopage(BASE + PG(9));
	ck_page(BASE + PG(10), 10, 2);
	ck_page(BASE + PG(11), 11, 1);
	/* the replaced pages 12..15 are the moved 0..3 */
	ck_page(BASE + PG(12), 0, 4);
	ck_page(BASE + PG(13), 1, 3);
	ck_page(BASE + PG(15), 3, 1);
	ck_nopage(BASE + PG(16));
	ck_assert_uint_eq(att->nr_ranges, 3);
}
END_TEST

START_TEST(test_remap_onto_other_attachment_range)
{
	/* Two separate ranges; the second moved exactly over the first. */
	new_att(BASE, 12, 0);
	attach_unmap(att, BASE + PG(4), BASE + PG(8));
	attach_remap(att, BASE + PG(8), BASE, PG(4));
	ck_page(BASE, 8, 4);
	ck_page(BASE + PG(3), 11, 1);
	for (int i = 4; i < 12; i++)
		ck_nopage(BASE + PG(i));
	ck_assert_uint_eq(att->nr_ranges, 1);
}
END_TEST

START_TEST(test_remap_onto_several_ranges)
{
	/*
	 * One attachment of 26 pages cut into [0,2) [3,5) [6,10) [20,26);
	 * then [20,26) is moved to page 1: mremap unmaps [1,7) first, which
	 * holds parts of three ranges.  Every page of [1,7) must then be one
	 * of the moved ones (segment pages 20..25), not what was there.
	 */
	static const long long want[] = { 0, 20, 21, 22, 23, 24, 25, 7, 8, 9 };

	new_att(BASE, 26, 0);
	attach_unmap(att, BASE + PG(2), BASE + PG(3));
	attach_unmap(att, BASE + PG(5), BASE + PG(6));
	attach_unmap(att, BASE + PG(10), BASE + PG(20));
	ck_page(BASE + PG(3), 3, 2);
	ck_page(BASE + PG(20), 20, 6);

	/* mremap(BASE+20p, 6p, 6p, MREMAP_FIXED, BASE+1p) */
	attach_remap(att, BASE + PG(20), BASE + PG(1), PG(6));
	ck_map(BASE, want, 10);
	for (int i = 10; i < 26; i++)
		ck_nopage(BASE + PG(i));
}
END_TEST

START_TEST(test_remap_across_adjacent_ranges)
{
	/*
	 * Two ranges that abut (a range moved next to another: the kernel
	 * may merge the two VMAs, and a later mremap moves both at once).
	 */
	new_att(BASE, 8, 0);
	attach_remap(att, BASE + PG(4), FAR + PG(4), PG(4));
	attach_remap(att, BASE, FAR, PG(4));
	/* FAR: [0,4) and [4,8), two abutting ranges */
	ck_page(FAR + PG(3), 3, 1);
	ck_page(FAR + PG(4), 4, 4);
	attach_remap(att, FAR, BASE + PG(100), PG(8));
	for (int i = 0; i < 8; i++) {
		ck_nopage(FAR + PG(i));
		ck_page(BASE + PG(100 + i), i, (i < 4 ? 4 : 8) - i);
	}
}
END_TEST

START_TEST(test_remap_many_pieces)
{
	/*
	 * Ten one-page ranges side by side (each page moved on its own to
	 * consecutive addresses: the kernel merges such VMAs, consecutive
	 * file offsets of one memfd), then one mremap of all ten.
	 */
	new_att(BASE, 10, 0);
	for (int i = 0; i < 10; i++)
		attach_remap(att, BASE + PG(i), FAR + PG(i), PS);
	ck_assert_uint_eq(att->nr_ranges, 10);
	for (int i = 0; i < 10; i++)
		ck_page(FAR + PG(i), i, 1);

	attach_remap(att, FAR, BASE + PG(100), PG(10));
	for (int i = 0; i < 10; i++) {
		ck_nopage(FAR + PG(i));
		ck_page(BASE + PG(100 + i), i, 1);
	}
}
END_TEST

/* --- fork --- */

START_TEST(test_fork_copies_ranges)
{
	struct attachment *child;

	new_att(BASE, 10, 50);
	att->flags = 1;
	attach_unmap(att, BASE + PG(4), BASE + PG(5));
	ck_assert_int_eq(attach_fork(att, -1, &child), 0);
	ck_assert_int_eq(seg.refs, 3);
	ck_assert_ptr_eq(child->seg, &seg);
	ck_assert_int_eq(child->pid, 0);
	ck_assert_int_eq(child->parent_pid, getpid());
	ck_assert_uint_eq(child->flags, 1);
	ck_assert_uint_ne(child->id, att->id);
	ck_assert_uint_eq(child->nr_ranges, 2);

	/* The child's ranges are its own. */
	attach_unmap(child, BASE, BASE + PG(10));
	ck_assert(!attach_has_ranges(child));
	ck_page(BASE + PG(3), 53, 1);
	ck_page(BASE + PG(5), 55, 5);
	attach_put(child);
	ck_assert_int_eq(seg.refs, 2);
}
END_TEST

START_TEST(test_refcount)
{
	new_att(BASE, 1, 0);
	attach_get(att);
	attach_put(att);
	ck_assert_int_eq(seg.refs, 2);
	ck_page(BASE, 0, 1);
	attach_put(NULL);
}
END_TEST

static Suite *attach_suite(void)
{
	Suite *s = suite_create("attach");
	TCase *tc;

	tc = tcase_create("lookup");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_lookup);
	tcase_add_test(tc, test_ids_distinct);
	tcase_add_test(tc, test_refcount);
	suite_add_tcase(s, tc);

	tc = tcase_create("unmap");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_unmap_middle);
	tcase_add_test(tc, test_unmap_head_tail);
	tcase_add_test(tc, test_unmap_outside);
	tcase_add_test(tc, test_unmap_all);
	tcase_add_test(tc, test_unmap_all_pieces);
	tcase_add_test(tc, test_unmap_spanning_ranges);
	tcase_add_test(tc, test_unmap_spanning_everything);
	suite_add_tcase(s, tc);

	tc = tcase_create("remap");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_remap_sub_range);
	tcase_add_test(tc, test_remap_whole);
	tcase_add_test(tc, test_remap_unknown);
	tcase_add_test(tc, test_remap_onto_range);
	tcase_add_test(tc, test_remap_onto_other_attachment_range);
	tcase_add_test(tc, test_remap_onto_several_ranges);
	tcase_add_test(tc, test_remap_across_adjacent_ranges);
	tcase_add_test(tc, test_remap_many_pieces);
	suite_add_tcase(s, tc);

	tc = tcase_create("fork");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_fork_copies_ranges);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(attach_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
