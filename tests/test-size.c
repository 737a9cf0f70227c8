/* SPDX-License-Identifier: MIT */
/* Unit tests for size_parse() and size_format(). */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "size.h"

#define KIB (UINT64_C(1) << 10)
#define MIB (UINT64_C(1) << 20)
#define GIB (UINT64_C(1) << 30)
#define TIB (UINT64_C(1) << 40)

struct parse_case {
	const char *in;
	int ret;
	uint64_t val; /* when ret == 0 */
};

static const struct parse_case parse_good[] = {
	{ "0", 0, 0 },
	{ "1", 0, 1 },
	{ "4096", 0, 4096 },
	{ "007", 0, 7 },
	{ "4096B", 0, 4096 },
	{ "4096b", 0, 4096 },
	{ "1K", 0, KIB },
	{ "1k", 0, KIB },
	{ "64M", 0, 64 * MIB },
	{ "64m", 0, 64 * MIB },
	{ "64MB", 0, 64 * MIB },
	{ "64MiB", 0, 64 * MIB },
	{ "64mib", 0, 64 * MIB },
	{ "64MIB", 0, 64 * MIB },
	{ "1g", 0, GIB },
	{ "1G", 0, GIB },
	{ "3GiB", 0, 3 * GIB },
	{ "2T", 0, 2 * TIB },
	{ "2tb", 0, 2 * TIB },
	{ "0K", 0, 0 },
	{ "18446744073709551615", 0, UINT64_MAX },
	{ "018446744073709551615", 0, UINT64_MAX },
	{ "16777215T", 0, UINT64_C(16777215) << 40 },
	{ "17179869183G", 0, UINT64_C(17179869183) << 30 },
	{ "1P", 0, UINT64_C(1) << 50 },
	{ "1p", 0, UINT64_C(1) << 50 },
	{ "1PiB", 0, UINT64_C(1) << 50 },
	{ "16383P", 0, UINT64_C(16383) << 50 },
	{ "1E", 0, UINT64_C(1) << 60 },
	{ "15eb", 0, UINT64_C(15) << 60 },
	{ "0Z", 0, 0 },
	{ "0YiB", 0, 0 },
};

static const struct parse_case parse_bad[] = {
	{ "", -EINVAL, 0 },
	{ "-1", -EINVAL, 0 },
	{ "+1", -EINVAL, 0 },
	{ " 1", -EINVAL, 0 },
	{ "1 ", -EINVAL, 0 },
	{ "1 K", -EINVAL, 0 },
	{ "K", -EINVAL, 0 },
	{ "MiB", -EINVAL, 0 },
	{ "abc", -EINVAL, 0 },
	{ "12abc", -EINVAL, 0 },
	{ "1.5G", -EINVAL, 0 },
	{ "0x10", -EINVAL, 0 },
	{ "1X", -EINVAL, 0 },
	{ "1Pi", -EINVAL, 0 },
	{ "1PB2", -EINVAL, 0 },
	{ "1KK", -EINVAL, 0 },
	{ "1Ki", -EINVAL, 0 },
	{ "1iB", -EINVAL, 0 },
	{ "1BB", -EINVAL, 0 },
	{ "1KBx", -EINVAL, 0 },
	{ "1KiBB", -EINVAL, 0 },
	{ "99999999999999999999junk", -EINVAL, 0 },
	{ "18446744073709551616", -ERANGE, 0 },
	{ "99999999999999999999", -ERANGE, 0 },
	{ "184467440737095516150", -ERANGE, 0 },
	{ "16777216T", -ERANGE, 0 },
	{ "17179869184G", -ERANGE, 0 },
	{ "18014398509481984K", -ERANGE, 0 },
	/* past 2^64 with a big suffix: too large, never "invalid" */
	{ "16384P", -ERANGE, 0 },
	{ "16E", -ERANGE, 0 },
	{ "1Z", -ERANGE, 0 },
	{ "1ZiB", -ERANGE, 0 },
	{ "1Y", -ERANGE, 0 },
	{ "99999999999999999999Y", -ERANGE, 0 },
};

START_TEST(test_parse_good)
{
	const struct parse_case *c = &parse_good[_i];
	uint64_t v = 12345;

	ck_assert_msg(size_parse(c->in, &v) == 0, "\"%s\" rejected", c->in);
	ck_assert_msg(v == c->val, "\"%s\": got %ju, want %ju", c->in,
		      (uintmax_t)v, (uintmax_t)c->val);
}
END_TEST

START_TEST(test_parse_bad)
{
	const struct parse_case *c = &parse_bad[_i];
	uint64_t v = 12345;
	int ret = size_parse(c->in, &v);

	ck_assert_msg(ret == c->ret, "\"%s\": got %d, want %d", c->in, ret,
		      c->ret);
	ck_assert_msg(v == 12345, "\"%s\": output written on failure", c->in);
}
END_TEST

START_TEST(test_parse_null)
{
	uint64_t v;

	ck_assert_int_eq(size_parse(NULL, &v), -EINVAL);
	ck_assert_int_eq(size_parse("1", NULL), -EINVAL);
}
END_TEST

struct format_case {
	uint64_t in;
	const char *out;
};

static const struct format_case format_cases[] = {
	{ 0, "0 B" },
	{ 1, "1 B" },
	{ 1023, "1023 B" },
	{ 1024, "1.0 KiB" },
	{ 1536, "1.5 KiB" },
	{ 1075, "1.0 KiB" }, /* 1.0498 */
	{ 1076, "1.1 KiB" }, /* 1.0508 */
	{ 4096, "4.0 KiB" },
	{ 1048473, "1023.9 KiB" }, /* 1023.899 */
	{ 1048525, "1.0 MiB" },	   /* 1023.950: rounds to 1024.0 KiB */
	{ MIB - 1, "1.0 MiB" },
	{ MIB, "1.0 MiB" },
	{ 64 * MIB, "64.0 MiB" },
	{ 64 * MIB + 64 * KIB, "64.1 MiB" },
	{ GIB, "1.0 GiB" },
	{ 3 * GIB / 2, "1.5 GiB" },
	{ TIB, "1.0 TiB" },
	{ 1023 * TIB, "1023.0 TiB" },
	{ UINT64_C(1) << 50, "1.0 PiB" },
	{ UINT64_C(1) << 60, "1.0 EiB" },
	{ UINT64_MAX, "16.0 EiB" },
};

START_TEST(test_format)
{
	const struct format_case *c = &format_cases[_i];
	char buf[SIZE_FORMAT_MAX];

	ck_assert_int_eq(size_format(c->in, buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, c->out);
}
END_TEST

START_TEST(test_format_exact_fit)
{
	char buf[sizeof("1023.9 KiB")];

	ck_assert_int_eq(size_format(1048473, buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "1023.9 KiB");
}
END_TEST

START_TEST(test_format_short_buffer)
{
	char buf[8];

	memset(buf, 'x', sizeof(buf));
	ck_assert_int_eq(size_format(64 * MIB, buf, sizeof(buf)), -ENOSPC);
	ck_assert_str_eq(buf, "64.0 Mi");
	ck_assert_int_eq(size_format(1023, buf, 4), -ENOSPC);
	ck_assert_str_eq(buf, "102");
	ck_assert_int_eq(size_format(1, buf, 1), -ENOSPC);
	ck_assert_str_eq(buf, "");
}
END_TEST

START_TEST(test_format_bad_buffer)
{
	char buf[SIZE_FORMAT_MAX];

	ck_assert_int_eq(size_format(1, NULL, sizeof(buf)), -EINVAL);
	ck_assert_int_eq(size_format(1, buf, 0), -EINVAL);
}
END_TEST

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static Suite *size_suite(void)
{
	Suite *s = suite_create("size");
	TCase *tc;

	tc = tcase_create("size_parse");
	tcase_add_loop_test(tc, test_parse_good, 0, N(parse_good));
	tcase_add_loop_test(tc, test_parse_bad, 0, N(parse_bad));
	tcase_add_test(tc, test_parse_null);
	suite_add_tcase(s, tc);

	tc = tcase_create("size_format");
	tcase_add_loop_test(tc, test_format, 0, N(format_cases));
	tcase_add_test(tc, test_format_exact_fit);
	tcase_add_test(tc, test_format_short_buffer);
	tcase_add_test(tc, test_format_bad_buffer);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(size_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
