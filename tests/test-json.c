/* SPDX-License-Identifier: MIT */
/* Unit tests for the JSON writer: valid UTF-8 out, whatever bytes go in. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* What @write(@arg) puts on a stream, NUL-terminated (free it). */
static char *capture(void (*write)(FILE *, const void *), const void *arg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	ck_assert_ptr_nonnull(f);
	write(f, arg);
	ck_assert_int_eq(fclose(f), 0);
	return buf;
}

static void write_string(FILE *f, const void *s)
{
	json_write_string(f, s);
}

static const struct {
	const char *in, *out;
} strings[] = {
	{ "", "\"\"" },
	{ "plain", "\"plain\"" },
	{ "q\"b\\", "\"q\\\"b\\\\\"" },
	{ "\n\r\t", "\"\\n\\r\\t\"" },
	{ "\x01\x1f\x7f", "\"\\u0001\\u001f\\u007f\"" },
	{ "\xc2\x9b", "\"\\u009b\"" },		  /* C1: one-byte CSI */
	{ "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", /* é € 😀 */
	  "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"" },
	{ "\xff", "\"\\ufffd\"" },
	{ "a\x80z", "\"a\\ufffdz\"" },	      /* stray continuation */
	{ "\xc0\xaf", "\"\\ufffd\\ufffd\"" }, /* overlong */
	{ "\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"" }, /* surrogate */
	{ "\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" }, /* >
								       U+10FFFF
								     */
	{ "\xe2\x82", "\"\\ufffd\\ufffd\"" }, /* cut short */
};

START_TEST(test_string)
{
	char *out = capture(write_string, strings[_i].in);

	ck_assert_str_eq(out, strings[_i].out);
	free(out);
}
END_TEST

START_TEST(test_string_null)
{
	char *out = capture(write_string, NULL);

	ck_assert_str_eq(out, "\"\"");
	free(out);
}
END_TEST

START_TEST(test_utf8_decode)
{
	uint32_t cp = 0;

	ck_assert_uint_eq(utf8_decode((const unsigned char *)"A", &cp), 1);
	ck_assert_uint_eq(cp, 'A');
	ck_assert_uint_eq(utf8_decode((const unsigned char *)"\xc3\xa9", &cp),
			  2);
	ck_assert_uint_eq(cp, 0xe9);
	ck_assert_uint_eq(utf8_decode((const unsigned char *)"\xf4\x8f\xbf\xbf",
				      &cp),
			  4);
	ck_assert_uint_eq(cp, 0x10ffff);
	ck_assert_uint_eq(utf8_decode((const unsigned char *)"\xc3", &cp), 0);
	ck_assert(utf8_is_control(0x9f));
	ck_assert(!utf8_is_control(0xa0));
}
END_TEST

static void write_doc(FILE *f, const void *arg)
{
	struct json j = JSON_INIT(f);

	json_open(&j, NULL, '{', true);
	json_u64(&j, "n", 18446744073709551615ull);
	json_string(&j, "s", "x\xff");
	json_open(&j, "a", '[', false);
	json_u64(&j, NULL, 1);
	json_bool(&j, NULL, true);
	json_null(&j, NULL);
	json_close(&j, ']');
	json_open(&j, "empty", '{', true);
	json_close(&j, '}');
	json_close(&j, '}');
}

START_TEST(test_writer)
{
	char *out = capture(write_doc, NULL);

	ck_assert_str_eq(out, "{\n"
			      "  \"n\": 18446744073709551615,\n"
			      "  \"s\": \"x\\ufffd\",\n"
			      "  \"a\": [1, true, null],\n"
			      "  \"empty\": {}\n"
			      "}\n");
	free(out);
}
END_TEST

static Suite *json_suite(void)
{
	Suite *s = suite_create("json");
	TCase *tc = tcase_create("strings");

	tcase_add_loop_test(tc, test_string, 0, N(strings));
	tcase_add_test(tc, test_string_null);
	tcase_add_test(tc, test_utf8_decode);
	suite_add_tcase(s, tc);

	tc = tcase_create("writer");
	tcase_add_test(tc, test_writer);
	suite_add_tcase(s, tc);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(json_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
