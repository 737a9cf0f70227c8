/* SPDX-License-Identifier: MIT */
/*
 * What tests/preload-semantics.c and preload-workload.c share: the hash
 * their patterns are made of (mix), and the cut at fork as they check it: a
 * thread writes word i := ++seq in address order, over and over, while another
 * forks.  Whatever instant the fork took, the child must see the memory of one
 * instant: every word the largest seq <= P (P the largest in memory) that is i
 * + 1 modulo the word count.
 */
#ifndef UPAGER_CUT_WRITER_H
#define UPAGER_CUT_WRITER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A 64-bit mix (MurmurHash3's finaliser): patterns and checksums. */
static inline uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

struct writer {
	volatile uint64_t *w;
	size_t n;
	atomic_uint_fast64_t sweeps;
	atomic_bool stop;
};

static inline void *writer_main(void *arg)
{
	struct writer *wr = arg;
	uint64_t seq = 0;

	while (!atomic_load_explicit(&wr->stop, memory_order_relaxed)) {
		for (size_t i = 0; i < wr->n; i++)
			wr->w[i] = ++seq;
		atomic_fetch_add(&wr->sweeps, 1);
	}
	return NULL;
}

/* The first word that breaks the cut, or -1. */
static inline long cut_check(const volatile uint64_t *w, size_t n)
{
	uint64_t P = 0;

	for (size_t i = 0; i < n; i++)
		if (w[i] > P)
			P = w[i];
	for (size_t i = 0; i < n; i++) {
		uint64_t want = P - ((P - (i + 1)) % n);

		if (w[i] != want)
			return (long)i;
	}
	return -1;
}

#endif
