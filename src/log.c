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

void log_msg(int level, const char *module, const char *fmt, ...)
{
	char line[1024];
	struct timespec ts;
	va_list ap;
	int n;

	if (level > log_max_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	n = snprintf(line, sizeof(line), "%lld.%03ld %s: %s: ",
		     (long long)ts.tv_sec, ts.tv_nsec / 1000000,
		     level_names[level], module);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	/* One write a line, so threads' lines do not interleave. */
	fprintf(stderr, "%s\n", line);
}
