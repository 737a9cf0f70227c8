/* SPDX-License-Identifier: MIT */
/*
 * JSON writing, for the tools that print it (upagerctl --json,
 * upager-bench --json): strings that are valid UTF-8 whatever bytes they
 * were given, and just enough structure for our output (nested objects
 * and arrays of strings, numbers, booleans and nulls).
 *
 * Strings come from names, paths and kernel strings, which are bytes, not
 * text: well-formed UTF-8 is copied, control characters (C0, DEL, C1) are
 * escaped as \u00NN (\n, \r, \t and the quote and backslash as such), and
 * each byte that is not part of well-formed UTF-8 becomes \ufffd.
 */
#ifndef UPAGER_JSON_H
#define UPAGER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * utf8_decode - the length of the well-formed UTF-8 sequence at @s (1 to
 * 4 bytes), its code point in *@cp; 0 when @s does not start one: a stray
 * continuation byte, an overlong form, a surrogate, past U+10FFFF, or cut
 * short (a NUL is never a continuation byte, so this never reads past the
 * string's end).
 */
size_t utf8_decode(const unsigned char *s, uint32_t *cp);

/* C0 controls, DEL and the C1 controls (0x9b is a one-byte CSI). */
static inline bool utf8_is_control(uint32_t cp)
{
	return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

/* json_write_string - @s as a JSON string on @f (NULL: ""). */
void json_write_string(FILE *f, const char *s);

/*
 * A JSON writer.  Containers opened "multiline" put each member on its
 * own line, indented two spaces a level; the others keep theirs on one
 * line.  The outermost container's close ends the line.
 */
#define JSON_DEPTH 4

struct json {
	FILE *f;
	int depth;
	bool empty[JSON_DEPTH];
	bool multiline[JSON_DEPTH];
};

#define JSON_INIT(file) ((struct json){ .f = (file), .depth = -1 })

/*
 * json_member - the separator and the key (none when NULL, inside an
 * array or at the top) before a member; its value is the caller's to
 * write to j->f.
 */
void json_member(struct json *j, const char *key);

/* Opens an object ('{') or an array ('['), a member @key of its parent. */
void json_open(struct json *j, const char *key, char bracket, bool multiline);

/* Closes the innermost container with @bracket ('}' or ']'). */
void json_close(struct json *j, char bracket);

void json_u64(struct json *j, const char *key, uint64_t v);
void json_string(struct json *j, const char *key, const char *s);
void json_bool(struct json *j, const char *key, bool v);
void json_null(struct json *j, const char *key);

#endif
