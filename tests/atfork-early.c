// SPDX-License-Identifier: MIT
/*
 * atfork-early: a library that installs pthread_atfork handlers from its
 * constructor, as libraries do.  Linked into preload-semantics, it is
 * initialised before a preloaded library (ELF init order), so its
 * handlers are installed before the shim's own: the shim must still run
 * its prepare handler after them and its child handler before them
 * (preload.c: __register_atfork).  The handlers call what the program
 * sets.
 */
#include <pthread.h>
#include <stddef.h>

__attribute__((visibility("default"))) void (*atfork_early_prepare)(void);
__attribute__((visibility("default"))) void (*atfork_early_parent)(void);
__attribute__((visibility("default"))) void (*atfork_early_child)(void);

static void prepare(void)
{
	if (atfork_early_prepare)
		atfork_early_prepare();
}

static void parent(void)
{
	if (atfork_early_parent)
		atfork_early_parent();
}

static void child(void)
{
	if (atfork_early_child)
		atfork_early_child();
}

__attribute__((constructor)) static void atfork_early_init(void)
{
	pthread_atfork(prepare, parent, child);
}
