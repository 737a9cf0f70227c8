// SPDX-License-Identifier: MIT
/*
 * The daemon's metadata grows with the pages touched, not with the size of
 * the segment: a 1 TiB zero segment touched once every 16 MiB must cost the
 * daemon little more than a few hundred bytes a touched page.  A page table
 * that spends a 4 KiB page of metadata on each isolated touch (a flat
 * array, however lazily mapped) costs 256 MiB here and fails.
 *
 * The measure is the daemon's VmRSS before and after the touches; every
 * byte touched is read back, through the same mapping and a second one.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define SEG_SIZE UPAGER_MAX_SIZE
#define STRIDE (16ull * H_MIB)
#define NTOUCH (SEG_SIZE / STRIDE)

_Static_assert(UPAGER_MAX_SIZE >= (64ull << 30),
	       "the test needs segments of at least 64 GiB");

/*
 * Allowed growth of the daemon's resident memory: 1 KiB per touched page
 * (the page table needs a few hundred bytes for an isolated page, in a
 * plain build and with AddressSanitizer's redzones alike), plus slack for
 * whatever else a daemon allocates while it serves its first faults.  The
 * old table needs 4 KiB per touched page: 256 MiB against this bound of
 * 80 MiB.
 */
#define BOUND_PER_TOUCH 1024ull
#define BOUND_SLACK (16ull * H_MIB)

/* A field of /proc/@pid/status, in KiB, or -1. */
static long status_kib(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t flen = strlen(field);
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, field, flen) && line[flen] == ':') {
			v = strtol(line + flen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* What page @k's written byte holds: never zero. */
static unsigned char touch_value(uint64_t k)
{
	return (unsigned char)(k * 37 % 255 + 1);
}

/* Even strides get a byte written at an odd offset; odd ones are read. */
static uint64_t touch_offset(uint64_t k)
{
	return k * STRIDE + (k & 1 ? 0 : 123 + k % 3000);
}

START_TEST(test_sparse_huge_segment_rss)
{
	struct upager_segment_info info;
	struct upager_attachment *a, *b;
	struct h_daemon d;
	struct upager *u;
	volatile unsigned char *map, *map2;
	long rss0, rss1, anon0, anon1;
	uint64_t grown, bound, t0, ms;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "sparse", SEG_SIZE, -1, 0);
	map = h_attach(u, "sparse", 0, &a);
	ck_assert_uint_eq(upager_attachment_size(a), SEG_SIZE);

	/* One fault first, at the very last byte, so that what a daemon
	 * sets up for its first fault is not counted. */
	ck_assert_uint_eq(map[SEG_SIZE - 1], 0);
	map[SEG_SIZE - 1] = 0xa5;

	rss0 = status_kib(d.pid, "VmRSS");
	anon0 = status_kib(d.pid, "RssAnon");
	ck_assert_int_gt(rss0, 0);

	t0 = h_now_ms();
	for (uint64_t k = 0; k < NTOUCH; k++) {
		uint64_t off = touch_offset(k);

		if (k & 1)
			ck_assert_msg(map[off] == 0, "byte %llu is %#x",
				      (unsigned long long)off, map[off]);
		else
			map[off] = touch_value(k);
	}

	ms = h_now_ms() - t0;
	rss1 = status_kib(d.pid, "VmRSS");
	anon1 = status_kib(d.pid, "RssAnon");
	ck_assert_int_gt(rss1, 0);
	grown = rss1 > rss0 ? (uint64_t)(rss1 - rss0) * 1024 : 0;
	bound = NTOUCH * BOUND_PER_TOUCH + BOUND_SLACK;
	fprintf(stderr,
		"sparse: %llu touches in %llu ms: daemon VmRSS %ld -> %ld KiB "
		"(RssAnon %ld -> %ld KiB), %llu bytes a touch, bound %llu "
		"KiB\n",
		(unsigned long long)NTOUCH, (unsigned long long)ms, rss0, rss1,
		anon0, anon1, (unsigned long long)(grown / NTOUCH),
		(unsigned long long)(bound / 1024));
	ck_assert_msg(grown < bound,
		      "daemon VmRSS grew by %llu KiB for %llu touched pages "
		      "(%llu bytes a page); bound %llu KiB",
		      (unsigned long long)(grown / 1024),
		      (unsigned long long)NTOUCH,
		      (unsigned long long)(grown / NTOUCH),
		      (unsigned long long)(bound / 1024));

	/* Every page touched was filled, and only those. */
	H_WAIT_STAT(u, "sparse", info, info.pages_filled >= NTOUCH + 1);
	ck_assert_uint_ge(info.pages_filled, NTOUCH + 1);
	ck_assert_uint_eq(info.resident_bytes, info.pages_filled * H_PAGE);

	/* The bytes: through this mapping, and through a second one that
	 * sees the frames the first one filled. */
	map2 = h_attach(u, "sparse", 0, &b);
	ck_assert_uint_eq(map[SEG_SIZE - 1], 0xa5);
	ck_assert_uint_eq(map2[SEG_SIZE - 1], 0xa5);
	ck_assert_uint_eq(map2[SEG_SIZE - 2], 0);
	for (uint64_t k = 0; k < NTOUCH; k++) {
		uint64_t off = touch_offset(k);
		unsigned char want = k & 1 ? 0 : touch_value(k);

		ck_assert_msg(map[off] == want && map2[off] == want,
			      "byte %llu: %#x and %#x, not %#x",
			      (unsigned long long)off, map[off], map2[off],
			      want);
		/* the rest of the page stays zero */
		ck_assert_uint_eq(map2[off ^ 1], 0);
		ck_assert_uint_eq(map2[(off & ~(uint64_t)(H_PAGE - 1)) +
				       H_PAGE - 1 - (k & 1)],
				  0);
	}
	/* No page beyond the touched ones was filled by the checks. */
	info = h_stat(u, "sparse");
	ck_assert_uint_eq(info.resident_bytes, info.pages_filled * H_PAGE);

	ck_assert_int_eq(upager_detach(b), 0);
	ck_assert_int_eq(upager_detach(a), 0);
	ck_assert_int_eq(upager_delete(u, "sparse", 0), 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *sparse_suite(void)
{
	Suite *s = h_suite("sparse");
	TCase *tc;

	tc = h_tcase(s, "rss", H_NEED_DAEMON);
	/* 65,536 faults, slower under AddressSanitizer */
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_sparse_huge_segment_rss);
	return s;
}

int main(void)
{
	h_main(sparse_suite());
}
