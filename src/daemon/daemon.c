// SPDX-License-Identifier: MIT
/* The daemon's state (daemon.h): what is not the job of one module. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"

void daemon_init(struct daemon *d)
{
	memset(d, 0, sizeof(*d));
	pthread_mutex_init(&d->lock, NULL);
	list_init(&d->segments);
	list_init(&d->attachments);
	pthread_mutex_init(&d->ahead_lock, NULL);
	list_init(&d->ahead);
	d->main_efd = -1;
	d->fill_uffd = -1;
	quota_limits_default(&d->limits, geteuid());
}

void daemon_fini(struct daemon *d)
{
	pthread_mutex_destroy(&d->ahead_lock);
	pthread_mutex_destroy(&d->lock);
}

void daemon_kick(int efd)
{
	uint64_t one = 1;

	if (write(efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		pr_err("daemon", "kick: %s", strerror(errno));
}

void daemon_wake_main(struct daemon *d)
{
	daemon_kick(d->main_efd);
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}
