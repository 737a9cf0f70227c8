// SPDX-License-Identifier: MIT
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/un.h>

#include "sockpath.h"

int sockpath_default(char *buf, size_t len)
{
	const char *env = getenv("UPAGER_SOCKET");
	int n;

	if (env && *env)
		n = snprintf(buf, len, "%s", env);
	else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
		n = snprintf(buf, len, "%s/upager.sock", env);
	else if (geteuid() == 0)
		n = snprintf(buf, len, "/run/upager/upager.sock");
	else
		n = snprintf(buf, len, "/tmp/upager-%u.sock",
			     (unsigned)geteuid());
	if (n < 0 || (size_t)n >= len ||
	    (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return -ENAMETOOLONG;
	return n;
}
