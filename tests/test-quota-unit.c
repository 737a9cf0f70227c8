// SPDX-License-Identifier: MIT
/* Unit tests of the per-user limits: policy, checks, the tally. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "quota.h"

static struct quota_limits limits(uint64_t segs, uint64_t bytes, uint64_t conns,
				  uint64_t atts)
{
	struct quota_limits l;

	quota_limits_default(&l, 1000);
	l.max[QUOTA_SEGMENTS] = segs;
	l.max[QUOTA_BYTES] = bytes;
	l.max[QUOTA_CONNECTIONS] = conns;
	l.max[QUOTA_ATTACHMENTS] = atts;
	return l;
}

START_TEST(test_defaults)
{
	struct quota_limits l;
	uint64_t mem = (uint64_t)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE);

	quota_limits_default(&l, 4242);
	ck_assert_uint_eq(l.max[QUOTA_SEGMENTS], QUOTA_DEFAULT_SEGMENTS);
	ck_assert_uint_eq(l.max[QUOTA_CONNECTIONS], QUOTA_DEFAULT_CONNECTIONS);
	ck_assert_uint_eq(l.max[QUOTA_ATTACHMENTS], QUOTA_DEFAULT_ATTACHMENTS);
	ck_assert_uint_eq(l.idle_timeout_ns,
			  QUOTA_DEFAULT_IDLE_SEC * 1000000000ull);
	ck_assert_uint_eq(l.daemon_uid, 4242);
	ck_assert(!l.limit_root);
	/* a quarter of memory, whole MiB, never below 1 GiB */
	ck_assert_uint_eq(l.max[QUOTA_BYTES] % (1u << 20), 0);
	ck_assert_uint_ge(l.max[QUOTA_BYTES], QUOTA_MIN_DEFAULT_BYTES);
	if (mem / 4 > QUOTA_MIN_DEFAULT_BYTES) {
		ck_assert_uint_le(l.max[QUOTA_BYTES], mem / 4);
		ck_assert_uint_gt(l.max[QUOTA_BYTES],
				  mem / 4 - (1u << 20) - sysconf(_SC_PAGESIZE));
	} else {
		ck_assert_uint_eq(l.max[QUOTA_BYTES], QUOTA_MIN_DEFAULT_BYTES);
	}
}
END_TEST

START_TEST(test_exempt)
{
	struct quota_limits l = limits(1, 1, 1, 1);

	ck_assert(quota_exempt(&l, 0));
	ck_assert(quota_exempt(&l, 1000)); /* the daemon's user */
	ck_assert(!quota_exempt(&l, 65534));
	ck_assert(!quota_exempt(&l, 1));
	ck_assert_uint_eq(quota_limit(&l, 0, QUOTA_SEGMENTS), QUOTA_UNLIMITED);
	ck_assert_uint_eq(quota_limit(&l, 1000, QUOTA_BYTES), QUOTA_UNLIMITED);
	ck_assert_uint_eq(quota_limit(&l, 65534, QUOTA_SEGMENTS), 1);
	ck_assert_int_eq(quota_check(&l, 0, QUOTA_SEGMENTS, 5, 1), 0);
	ck_assert_int_eq(quota_check(&l, 1000, QUOTA_CONNECTIONS, 5, 1), 0);
	ck_assert_int_eq(quota_check(&l, 65534, QUOTA_SEGMENTS, 1, 1), -EDQUOT);

	l.limit_root = true;
	ck_assert(!quota_exempt(&l, 0));
	ck_assert(!quota_exempt(&l, 1000));
	ck_assert_uint_eq(quota_limit(&l, 0, QUOTA_SEGMENTS), 1);
	ck_assert_int_eq(quota_check(&l, 0, QUOTA_SEGMENTS, 1, 1), -EDQUOT);
	ck_assert_int_eq(quota_check(&l, 1000, QUOTA_CONNECTIONS, 1, 1),
			 -EUSERS);
}
END_TEST

START_TEST(test_check)
{
	struct quota_limits l = limits(3, 10 << 20, 2, 4);
	const uid_t u = 65534;

	/* up to the limit, not past it */
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 0, 1), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 2, 1), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 3, 1), -EDQUOT);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 4, 1), -EDQUOT);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 3, 0), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 4, 0), -EDQUOT);
	/* bytes: the whole request must fit */
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, 6 << 20, 4 << 20), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, 6 << 20, (4 << 20) + 1),
			 -EDQUOT);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, 0, 10 << 20), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, 0, (10 << 20) + 1),
			 -EDQUOT);
	/* no wrap-around */
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, 1, UINT64_MAX),
			 -EDQUOT);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, UINT64_MAX, 1),
			 -EDQUOT);
	/* each kind its errno */
	ck_assert_int_eq(quota_check(&l, u, QUOTA_CONNECTIONS, 1, 1), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_CONNECTIONS, 2, 1), -EUSERS);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_ATTACHMENTS, 3, 1), 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_ATTACHMENTS, 4, 1), -EDQUOT);
	/* a zero limit refuses all; none refuses nothing */
	l.max[QUOTA_SEGMENTS] = 0;
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, 0, 1), -EDQUOT);
	l.max[QUOTA_SEGMENTS] = QUOTA_UNLIMITED;
	ck_assert_int_eq(quota_check(&l, u, QUOTA_SEGMENTS, UINT64_MAX - 1, 1),
			 0);
	ck_assert_int_eq(quota_check(&l, u, QUOTA_BYTES, 0, UINT64_MAX),
			 -EDQUOT);
}
END_TEST

START_TEST(test_tally)
{
	static const uid_t uids[] = { 500, 0, 65534, 7, 500, 1000, 7, 0 };
	struct quota_tally t = { 0 };
	struct upager_usage *r;

	ck_assert_ptr_null(quota_tally_find(&t, 0));
	for (size_t i = 0; i < sizeof(uids) / sizeof(uids[0]); i++) {
		ck_assert_int_eq(quota_tally_add(&t, uids[i], QUOTA_SEGMENTS, 1),
				 0);
		ck_assert_int_eq(quota_tally_add(&t, uids[i], QUOTA_BYTES,
						 4096 * (i + 1)),
				 0);
	}
	ck_assert_int_eq(quota_tally_add(&t, 7, QUOTA_CONNECTIONS, 3), 0);
	ck_assert_int_eq(quota_tally_add(&t, 7, QUOTA_ATTACHMENTS, 2), 0);
	ck_assert_int_eq(quota_tally_add(&t, 7, QUOTA_KINDS, 2), -EINVAL);
	/* sorted, one record each */
	ck_assert_uint_eq(t.n, 5);
	for (size_t i = 1; i < t.n; i++)
		ck_assert_uint_lt(t.v[i - 1].uid, t.v[i].uid);
	r = quota_tally_find(&t, 500);
	ck_assert_ptr_nonnull(r);
	ck_assert_uint_eq(r->segments, 2);
	ck_assert_uint_eq(r->bytes, 4096 * (1 + 5));
	ck_assert_uint_eq(r->connections, 0);
	r = quota_tally_find(&t, 7);
	ck_assert_uint_eq(r->segments, 2);
	ck_assert_uint_eq(r->bytes, 4096 * (4 + 7));
	ck_assert_uint_eq(r->connections, 3);
	ck_assert_uint_eq(r->attachments, 2);
	ck_assert_uint_eq(quota_tally_find(&t, 65534)->bytes, 4096 * 3);
	ck_assert_ptr_null(quota_tally_find(&t, 8));
	/* get returns the same record, or makes a zeroed one */
	ck_assert_ptr_eq(quota_tally_get(&t, 7), r);
	r = quota_tally_get(&t, 8);
	ck_assert_uint_eq(t.n, 6);
	ck_assert_uint_eq(r->uid, 8);
	ck_assert_uint_eq(r->segments + r->bytes + r->attachments, 0);
	ck_assert_ptr_eq(quota_usage_field(r, QUOTA_BYTES), &r->bytes);
	ck_assert_ptr_eq(quota_usage_field(r, QUOTA_CONNECTIONS),
			 &r->connections);
	ck_assert_ptr_null(quota_usage_field(r, QUOTA_KINDS));
	/* saturating */
	ck_assert_int_eq(quota_tally_add(&t, 8, QUOTA_BYTES, UINT64_MAX - 1), 0);
	ck_assert_int_eq(quota_tally_add(&t, 8, QUOTA_BYTES, 5), 0);
	ck_assert_uint_eq(quota_tally_find(&t, 8)->bytes, UINT64_MAX);
	quota_tally_free(&t);
	ck_assert_uint_eq(t.n, 0);
	ck_assert_ptr_null(t.v);
	quota_tally_free(NULL);
	/* reusable, and many uids */
	for (uid_t u = 3000; u > 0; u -= 3)
		ck_assert_int_eq(quota_tally_add(&t, u, QUOTA_SEGMENTS, u), 0);
	ck_assert_uint_eq(t.n, 1000);
	for (size_t i = 0; i < t.n; i++) {
		ck_assert_uint_eq(t.v[i].uid, 3 * (i + 1));
		ck_assert_uint_eq(t.v[i].segments, 3 * (i + 1));
	}
	quota_tally_free(&t);
}
END_TEST

START_TEST(test_usage_limits)
{
	struct quota_limits l = limits(3, 1 << 30, 2, 4);
	struct upager_usage u = { .uid = 65534, .segments = 9 };

	l.idle_timeout_ns = 2500000000ull;
	quota_usage_limits(&l, &u);
	ck_assert_uint_eq(u.flags, 0);
	ck_assert_uint_eq(u.max_segments, 3);
	ck_assert_uint_eq(u.max_bytes, 1 << 30);
	ck_assert_uint_eq(u.max_connections, 2);
	ck_assert_uint_eq(u.max_attachments, 4);
	ck_assert_uint_eq(u.idle_timeout_ms, 2500);
	ck_assert_uint_eq(u.segments, 9); /* usage untouched */

	u.uid = 0;
	quota_usage_limits(&l, &u);
	ck_assert_uint_eq(u.flags, UPAGER_USAGE_EXEMPT);
	ck_assert_uint_eq(u.max_segments, UPAGER_UNLIMITED);
	ck_assert_uint_eq(u.max_bytes, UPAGER_UNLIMITED);
	ck_assert_uint_eq(u.max_connections, UPAGER_UNLIMITED);
	ck_assert_uint_eq(u.max_attachments, UPAGER_UNLIMITED);

	l.limit_root = true;
	l.idle_timeout_ns = 0;
	quota_usage_limits(&l, &u);
	ck_assert_uint_eq(u.flags, 0);
	ck_assert_uint_eq(u.max_segments, 3);
	ck_assert_uint_eq(u.idle_timeout_ms, 0);
	ck_assert_str_eq(quota_kind_name(QUOTA_ATTACHMENTS), "attachments");
	ck_assert_str_eq(quota_kind_name(QUOTA_KINDS), "unknown");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("quota");
	TCase *tc = tcase_create("quota");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_exempt);
	tcase_add_test(tc, test_check);
	tcase_add_test(tc, test_tally);
	tcase_add_test(tc, test_usage_limits);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
