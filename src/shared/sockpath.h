/* SPDX-License-Identifier: MIT */
/* Where the daemon listens when nobody says: shared by all who connect. */
#ifndef UPAGER_SOCKPATH_H
#define UPAGER_SOCKPATH_H

#include <stddef.h>

/*
 * sockpath_default - the daemon's socket path when none is given:
 * $UPAGER_SOCKET, else $XDG_RUNTIME_DIR/upager.sock, else
 * /run/upager/upager.sock for root and /tmp/upager-$UID.sock for others.
 * Returns its length, or -ENAMETOOLONG (for @len or for a socket address).
 */
int sockpath_default(char *buf, size_t len);

#endif
