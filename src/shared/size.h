/* SPDX-License-Identifier: MIT */
/*
 * Byte counts as people write them: "4096", "64K", "64MiB", "1g".
 * Suffixes are powers of 1024 (K, M, G, T, P, E, Z, Y), in either case,
 * optionally followed by "B" or "iB".
 */
#ifndef UPAGER_SIZE_H
#define UPAGER_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Room for the longest size_format() text, "1023.9 KiB", and its NUL. */
#define SIZE_FORMAT_MAX 16

/*
 * size_parse - parse a byte count with an optional binary suffix
 * @s: the text: decimal digits, then nothing, "B", or one of K, M, G, T,
 *     P, E, Z, Y (either case) followed by nothing, "B" or "iB"; no sign,
 *     no spaces
 * @out: the value on success; untouched on failure
 *
 * Returns 0, -EINVAL for an empty string or anything but the above, or
 * -ERANGE when the value does not fit in 64 bits (so "1Z" and "16E" are
 * -ERANGE: too large, not malformed; "0Z" is 0).
 */
int size_parse(const char *s, uint64_t *out);

/*
 * size_format - describe a byte count for people
 * @bytes: the count
 * @buf, @len: where to put the text; SIZE_FORMAT_MAX is always enough
 *
 * Below 1 KiB the exact count ("512 B"), else one decimal in the largest
 * unit that keeps it below 1024, rounded to nearest ("64.0 MiB", "1.5 KiB").
 * Returns 0, -EINVAL for a NULL or empty buffer, or -ENOSPC when the text
 * did not fit (@buf then holds it truncated, NUL-terminated).
 */
int size_format(uint64_t bytes, char *buf, size_t len);

#endif
