/* SPDX-License-Identifier: MIT */
/*
 * Fault-serving threads.  Each owns a set of attachments and an io_uring on
 * which it polls their userfaultfds and pidfds and runs source reads.  The
 * main thread and other workers talk to a worker only through its inbox
 * (a locked queue and an eventfd).
 */
#ifndef UPAGER_WORKER_H
#define UPAGER_WORKER_H

#include <liburing.h>

#include "fill.h"
#include "list.h"

struct attachment;
struct daemon;
struct worker;

int worker_start(struct daemon *d, unsigned int id, struct worker **out);
/* Asks @w to stop, joins it and frees it. */
void worker_stop(struct worker *w);

/* Has @w, @att's owner (set before @att was published: it polls the
 * pidfd), and the workers after it poll the uffd.  Each takes a ref. */
void worker_add(struct worker *w, struct attachment *att);
/* Asks the workers polling @att (owner @w) to stop and drop their refs. */
void worker_remove(struct worker *w, struct attachment *att);
/* @att's pidfd was opened after it was added: poll it. */
void worker_watch_pid(struct worker *w, struct attachment *att);
/* Wakes @w to look at its attachments' retry lists. */
void worker_kick(struct worker *w);

/* The worker for a new attachment: round robin. */
struct worker *worker_pick(struct daemon *d);

/* user_data tags: the low 3 bits of an SQE's user_data */
enum {
	TAG_FILL = FILL_IO_TAG,
	TAG_UFFD = 2,
	TAG_PIDFD = 3,
	TAG_INBOX = 4,
	TAG_MASK = 7,
};

#endif
