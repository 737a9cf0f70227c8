// SPDX-License-Identifier: MIT
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"

int log_max_level = LOG_NOTICE;

static const char *const level_names[] = {
	[LOG_ERR] = "error", [LOG_WARN] = "warning", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

int log_level_parse(const char *s)
{
	for (int i = 0; i <= LOG_DEBUG; i++) {
		if (!strcmp(s, level_names[i])) {
			log_max_level = i;
			return 0;
		}
	}
	return -EINVAL;
}

/*
 * "2026-12-01T15:20:27.123Z": ISO 8601 in UTC, to the millisecond.  UTC
 * rather than local time so that lines logged in different time zones sort
 * and compare as they are, and so that logging never reads the time zone
 * database (localtime_r() may, under a lock, on any call).
 */
static void log_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	size_t n = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (gmtime_r(&ts.tv_sec, &tm))
		n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!n) {
		/* a year past 9999 or so: the raw seconds still say when */
		snprintf(buf, len, "%lld", (long long)ts.tv_sec);
		return;
	}
	snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

void log_msg(int level, const char *module, const char *fmt, ...)
{
	char line[1024], stamp[LOG_TIMESTAMP_MAX];
	va_list ap;
	int n;

	if (level > log_max_level)
		return;
	log_timestamp(stamp, sizeof(stamp));
	n = snprintf(line, sizeof(line), "%s %s: %s: ", stamp,
		     level_names[level], module);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	/* One write a line, so threads' lines do not interleave. */
	fprintf(stderr, "%s\n", line);
}
