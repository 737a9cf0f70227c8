/* SPDX-License-Identifier: MIT */
/* The control plane: the socket, client requests, signals, housekeeping. */
#ifndef UPAGER_SERVER_H
#define UPAGER_SERVER_H

struct daemon;

/*
 * server_run - serve on @listen_fd until SIGTERM or SIGINT
 * Returns 0 on a clean stop, -errno when the event loop failed.
 */
int server_run(struct daemon *d, int listen_fd);

#endif
