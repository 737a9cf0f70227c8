// SPDX-License-Identifier: MIT
#include <inttypes.h>

#include "json.h"

size_t utf8_decode(const unsigned char *s, uint32_t *cp)
{
	uint32_t v, min;
	size_t n, i;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		v = s[0] & 0x1f;
		min = 0x80;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		v = s[0] & 0x0f;
		min = 0x800;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		v = s[0] & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

void json_write_string(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	uint32_t cp;
	size_t n;

	fputc('"', f);
	for (; *p; p += n) {
		n = utf8_decode(p, &cp);
		if (!n) {
			fputs("\\ufffd", f);
			n = 1;
			continue;
		}
		switch (cp) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			if (utf8_is_control(cp))
				fprintf(f, "\\u%04" PRIx32, cp);
			else
				fwrite(p, 1, n, f);
		}
	}
	fputc('"', f);
}

void json_member(struct json *j, const char *key)
{
	int d = j->depth;

	if (d >= 0) {
		if (!j->empty[d])
			fputc(',', j->f);
		if (j->multiline[d])
			fprintf(j->f, "\n%*s", 2 * (d + 1), "");
		else if (!j->empty[d])
			fputc(' ', j->f);
		j->empty[d] = false;
	}
	if (key) {
		json_write_string(j->f, key);
		fputs(": ", j->f);
	}
}

void json_open(struct json *j, const char *key, char bracket, bool multiline)
{
	json_member(j, key);
	fputc(bracket, j->f);
	j->depth++;
	j->empty[j->depth] = true;
	j->multiline[j->depth] = multiline;
}

void json_close(struct json *j, char bracket)
{
	int d = j->depth--;

	if (j->multiline[d] && !j->empty[d])
		fprintf(j->f, "\n%*s", 2 * d, "");
	fputc(bracket, j->f);
	if (j->depth < 0)
		fputc('\n', j->f);
}

void json_u64(struct json *j, const char *key, uint64_t v)
{
	json_member(j, key);
	fprintf(j->f, "%" PRIu64, v);
}

void json_string(struct json *j, const char *key, const char *s)
{
	json_member(j, key);
	json_write_string(j->f, s);
}

void json_bool(struct json *j, const char *key, bool v)
{
	json_member(j, key);
	fputs(v ? "true" : "false", j->f);
}

void json_null(struct json *j, const char *key)
{
	json_member(j, key);
	fputs("null", j->f);
}
