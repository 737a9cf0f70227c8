/* SPDX-License-Identifier: MIT */
/*
 * Daemon and tool logging: a level, a module prefix, one line a message.
 * Each line starts with the time in UTC, ISO 8601 to the millisecond:
 *	2026-12-01T15:20:27.123Z notice: main: listening on ...
 */
#ifndef UPAGER_LOG_H
#define UPAGER_LOG_H

enum log_level { LOG_ERR, LOG_WARN, LOG_NOTICE, LOG_INFO, LOG_DEBUG };

/* Room for "2026-12-01T15:20:27.123Z" and its NUL, with years to spare. */
#define LOG_TIMESTAMP_MAX 32

extern int log_max_level;

/* Parses "error", "warning", "notice", "info", "debug".  0 or -EINVAL. */
int log_level_parse(const char *s);
void log_msg(int level, const char *module, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_enabled(l) ((l) <= log_max_level)
#define pr_err(mod, ...) log_msg(LOG_ERR, mod, __VA_ARGS__)
#define pr_warn(mod, ...) log_msg(LOG_WARN, mod, __VA_ARGS__)
#define pr_notice(mod, ...) log_msg(LOG_NOTICE, mod, __VA_ARGS__)
#define pr_info(mod, ...) log_msg(LOG_INFO, mod, __VA_ARGS__)
#define pr_debug(mod, ...)                                    \
	do {                                                  \
		if (log_enabled(LOG_DEBUG))                   \
			log_msg(LOG_DEBUG, mod, __VA_ARGS__); \
	} while (0)

#endif
