/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the image format's reader (imagefmt.h): a trailer made
 * by image_trailer_make() reads back; any damaged byte of it is refused;
 * a file without a footer is a raw file.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "imagefmt.h"

#define PS 4096u
#define NPAGES 21u /* a bitmap whose last byte is partly used */

/* A memfd holding an image of NPAGES pages (incremental with @base_id),
 * whose bitmap sets pages 0, 7 and 20. */
static int make_image(uint64_t base_id, uint8_t *bitmap_out)
{
	struct image_info info = {
		.page_size = PS,
		.size = (uint64_t)NPAGES * PS,
		.image_id = 0x1234,
		.base_id = base_id,
		.nr_pages = NPAGES,
		.nr_carried = base_id ? 3 : NPAGES,
		.created_ns = 1,
	};
	uint8_t bm[(NPAGES + 7) / 8] = { 0x81, 0x00, 0x10 };
	struct image_header h;
	struct image_footer f;
	int fd = memfd_create("img", MFD_CLOEXEC);
	off_t off = info.size;

	ck_assert_int_ge(fd, 0);
	if (base_id) {
		info.bitmap_len = sizeof(bm);
		info.bitmap_sum = image_sum(IMAGE_SUM0, bm, sizeof(bm));
	}
	image_trailer_make(&info, &h, &f);
	ck_assert_int_eq(ftruncate(fd, off), 0);
	ck_assert_int_eq(pwrite(fd, &h, sizeof(h), off), sizeof(h));
	off += sizeof(h);
	if (base_id) {
		ck_assert_int_eq(pwrite(fd, bm, sizeof(bm), off), sizeof(bm));
		off += sizeof(bm);
	}
	ck_assert_int_eq(pwrite(fd, &f, sizeof(f), off), sizeof(f));
	if (bitmap_out)
		memcpy(bitmap_out, bm, sizeof(bm));
	return fd;
}

START_TEST(test_full_round_trip)
{
	struct image_info info;
	int fd = make_image(0, NULL);

	ck_assert_int_eq(image_probe(fd, &info, NULL), 0);
	ck_assert_uint_eq(info.page_size, PS);
	ck_assert_uint_eq(info.size, NPAGES * PS);
	ck_assert_uint_eq(info.image_id, 0x1234);
	ck_assert_uint_eq(info.base_id, 0);
	ck_assert_uint_eq(info.nr_pages, NPAGES);
	ck_assert_uint_eq(info.bitmap_len, 0);
	close(fd);
}
END_TEST

START_TEST(test_incremental_round_trip)
{
	struct image_info info;
	uint8_t want[(NPAGES + 7) / 8], *bm = NULL;
	int fd = make_image(0x99, want);

	ck_assert_int_eq(image_probe(fd, &info, NULL), 0);
	ck_assert_uint_eq(info.base_id, 0x99);
	ck_assert_uint_eq(info.nr_carried, 3);
	ck_assert_uint_eq(info.bitmap_off, NPAGES * PS + IMAGE_HEADER_SIZE);
	ck_assert_int_eq(image_bitmap_read(fd, &info, &bm), 0);
	ck_assert_int_eq(memcmp(bm, want, sizeof(want)), 0);
	for (unsigned int i = 0; i < NPAGES; i++)
		ck_assert_int_eq(image_bit(bm, i), i == 0 || i == 7 || i == 20);
	free(bm);
	close(fd);
}
END_TEST

/* Every byte of the trailer and footer matters (but reserved ones are
 * checksummed too): a flipped one is refused, never read as raw. */
START_TEST(test_damaged_byte)
{
	uint64_t base = _i % 2 ? 0x99 : 0;
	int fd = make_image(base, NULL);
	off_t end = lseek(fd, 0, SEEK_END), at = NPAGES * PS + _i / 2;
	struct image_info info;
	uint8_t *bm = NULL;
	char c;
	int ret;

	if (at >= end) {
		close(fd);
		return;
	}
	ck_assert_int_eq(pread(fd, &c, 1, at), 1);
	c ^= 0x01;
	ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
	ret = image_probe(fd, &info, NULL);
	if (ret == 0) /* the bitmap's bytes: its own checksum */
		ret = image_bitmap_read(fd, &info, &bm);
	/* the footer's magic: no image, a raw file */
	if (at >= end - IMAGE_FOOTER_SIZE && at < end - IMAGE_FOOTER_SIZE + 8)
		ck_assert_int_eq(ret, -ENODATA);
	else
		ck_assert_msg(ret == -EINVAL, "byte %lld: %d", (long long)at,
			      ret);
	free(bm);
	close(fd);
}
END_TEST

START_TEST(test_raw_files)
{
	struct image_info info;
	int fd = memfd_create("raw", MFD_CLOEXEC);

	ck_assert_int_eq(image_probe(fd, &info, NULL), -ENODATA); /* empty */
	ck_assert_int_eq(ftruncate(fd, 10 * PS), 0);
	ck_assert_int_eq(image_probe(fd, &info, NULL), -ENODATA); /* zeros */
	close(fd);
	/* an image with something appended: its footer is not the end */
	fd = make_image(0, NULL);
	ck_assert_int_eq(pwrite(fd, "x", 1, lseek(fd, 0, SEEK_END)), 1);
	ck_assert_int_eq(image_probe(fd, &info, NULL), -ENODATA);
	close(fd);
}
END_TEST

static Suite *imagefmt_suite(void)
{
	Suite *s = suite_create("imagefmt");
	TCase *tc = tcase_create("imagefmt");
	int trailer = IMAGE_HEADER_SIZE + (NPAGES + 7) / 8 + IMAGE_FOOTER_SIZE;

	tcase_add_test(tc, test_full_round_trip);
	tcase_add_test(tc, test_incremental_round_trip);
	tcase_add_loop_test(tc, test_damaged_byte, 0, 2 * trailer);
	tcase_add_test(tc, test_raw_files);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(imagefmt_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
