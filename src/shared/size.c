/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "size.h"

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static char to_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/*
 * The suffix after the digits: "", "B", or K/M/G/T/P/E/Z/Y then "", "B" or
 * "iB".  P and beyond are accepted so that "1P" is "too large" for a caller
 * with a limit, and "1Z" is -ERANGE here, rather than either being "invalid".
 */
static int suffix_shift(const char *p, unsigned int *shift)
{
	switch (to_lower(*p)) {
	case '\0':
		*shift = 0;
		return 0;
	case 'b':
		*shift = 0;
		return p[1] == '\0' ? 0 : -EINVAL;
	case 'k':
		*shift = 10;
		break;
	case 'm':
		*shift = 20;
		break;
	case 'g':
		*shift = 30;
		break;
	case 't':
		*shift = 40;
		break;
	case 'p':
		*shift = 50;
		break;
	case 'e':
		*shift = 60;
		break;
	case 'z':
		*shift = 70;
		break;
	case 'y':
		*shift = 80;
		break;
	default:
		return -EINVAL;
	}
	p++;
	if (to_lower(*p) == 'i')
		p++;
	else if (*p == '\0')
		return 0;
	if (to_lower(*p) != 'b' || p[1] != '\0')
		return -EINVAL;
	return 0;
}

int size_parse(const char *s, uint64_t *out)
{
	const char *end;
	unsigned int shift;
	uint64_t v = 0;
	int ret;

	if (!s || !out || !is_digit(*s))
		return -EINVAL;
	for (end = s; is_digit(*end); end++)
		;
	/* Junk is -EINVAL even when the digits before it overflow. */
	ret = suffix_shift(end, &shift);
	if (ret)
		return ret;

	for (; s < end; s++) {
		unsigned int d = (unsigned int)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	/* Z and Y: anything but 0 is past 2^64 (and >> 64 is undefined). */
	if (shift >= 64 && v)
		return -ERANGE;
	if (shift < 64 && v > UINT64_MAX >> shift)
		return -ERANGE;
	*out = shift < 64 ? v << shift : 0;
	return 0;
}

/* @bytes in units of 2^(10 * @unit), in tenths, rounded half up. */
static uint64_t tenths_of(uint64_t bytes, unsigned int unit)
{
	unsigned int shift = 10 * unit;
	uint64_t div = UINT64_C(1) << shift;
	uint64_t rem = bytes & (div - 1);

	/* rem * 10 cannot overflow: div is at most 2^60. */
	return (bytes >> shift) * 10 + (rem * 10 + div / 2) / div;
}

int size_format(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = {
		"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
	};
	const unsigned int last = sizeof(units) / sizeof(units[0]) - 1;
	unsigned int unit = 1;
	uint64_t tenths;
	int n;

	if (!buf || !len)
		return -EINVAL;

	if (bytes < 1024) {
		n = snprintf(buf, len, "%" PRIu64 " B", bytes);
	} else {
		while (unit < last && bytes >> (10 * (unit + 1)))
			unit++;
		tenths = tenths_of(bytes, unit);
		/* 1023.95 KiB and up round to 1024.0: say 1.0 MiB instead. */
		if (tenths >= 10240 && unit < last)
			tenths = tenths_of(bytes, ++unit);
		n = snprintf(buf, len, "%" PRIu64 ".%u %s", tenths / 10,
			     (unsigned int)(tenths % 10), units[unit]);
	}
	if (n < 0)
		return -EINVAL;
	return (size_t)n < len ? 0 : -ENOSPC;
}
