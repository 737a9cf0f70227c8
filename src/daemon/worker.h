/* SPDX-License-Identifier: MIT */
/*
 * Fault-serving threads.  Each polls the userfaultfds of a set of
 * attachments (and the pidfds of those it owns) on its own io_uring, on
 * which it also runs the source reads of its fills.  Other threads talk to
 * a worker only through its inbox (a locked list and an eventfd).
 */
#ifndef UPAGER_WORKER_H
#define UPAGER_WORKER_H

struct attachment;
struct daemon;
struct worker;

int worker_start(struct daemon *d, unsigned int id, struct worker **out);
/*
 * worker_stop - ask @w to stop and join it; worker_free() frees it once
 * every worker has stopped (until then the others may still tell it
 * things).
 */
void worker_stop(struct worker *w);
void worker_free(struct worker *w);

/*
 * worker_assign - set @att's owner (its pidfd) and home (its uffd), round
 * robin, and make what the workers need to serve it; before @att is
 * published.  0, or -ENOMEM.
 */
int worker_assign(struct daemon *d, struct attachment *att);

/*
 * worker_add - serve @att (published): its home reads the uffd, the owner
 * polls its pidfd; the home moves, or others join it, as the threads fault
 * on other CPUs (worker.c).
 */
void worker_add(struct attachment *att);
/* Tells the workers serving @att, which is dead, to drop it. */
void worker_remove(struct attachment *att);
/* Tells @att's owner that its pid (and pidfd) is known now: poll it. */
void worker_watch_pid(struct attachment *att);
/* Wakes @w to look at its attachments (faults to drive again...). */
void worker_kick(struct worker *w);

/*
 * worker_reap_killed - take the attachments killed since the last call off
 * the daemon's lists and tell their workers to drop them (attach_reap).
 * Main thread only, while the workers run.
 */
void worker_reap_killed(struct daemon *d);

#endif
