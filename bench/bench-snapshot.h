/* SPDX-License-Identifier: MIT */
/*
 * upager-bench: the workloads that measure a snapshot as a whole, not one
 * fault per page (see bench-snapshot.c).
 *
 *   snapshot  the pause a consistent cut imposes on a process that keeps
 *             writing, against the pause of fork() (the kernel's way to
 *             freeze a copy of a process's memory), by size;
 *   snapmem   what snapshots cost in memory: the daemon's metadata per page,
 *             and N processes reading one snapshot privately.
 */
#ifndef UPAGER_BENCH_SNAPSHOT_H
#define UPAGER_BENCH_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "bench-systems.h"

#define BENCH_SNAP_MAX_SIZES 16

struct bench_snap_opts {
	struct bench_env *env;
	uint64_t sizes[BENCH_SNAP_MAX_SIZES]; /* bytes, page-aligned */
	unsigned int nr_sizes;
	unsigned int runs, warmup;
	unsigned int writers;  /* snapshot: writer threads */
	unsigned int readers;  /* snapmem: private readers */
	uint64_t reader_size;  /* snapmem: their snapshot's size */
	uint64_t seed;	       /* writers' page order */
	bool reference;	       /* run the kernel reference */
	bool daemon;	       /* run upagerd's side */
	const char *daemon_na; /* why not, when it was asked for: "n/a
				* (daemon without snapshots)", an init
				* error; NULL when it runs */
	bool json;
	const char *json_out;
	bool progress;
};

/*
 * Run the workload and print its report (a table and target lines, or
 * JSON).  Returns 0, or 1 when a measurement failed (n/a for a daemon
 * without snapshots is no failure).
 */
int bench_snapshot_run(const struct bench_snap_opts *o);
int bench_snapmem_run(const struct bench_snap_opts *o);

#endif
