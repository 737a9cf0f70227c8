/* SPDX-License-Identifier: MIT */
/*
 * upager-bench: what LD_PRELOAD=libupager-preload.so costs an unmodified
 * program, as ratios to the same program without it (see bench-preload.c).
 */
#ifndef UPAGER_BENCH_PRELOAD_H
#define UPAGER_BENCH_PRELOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "bench-systems.h"

struct bench_preload_opts {
	struct bench_env *env; /* the daemon the shim's runs use; its conn
				* is NULL when it could not be reached */
	const char *program;   /* preload-workload */
	const char *shim;      /* libupager-preload.so */
	uint64_t size;	       /* bytes first touched, and forked */
	unsigned int churn;    /* malloc/free rounds of the churn figure */
	unsigned int runs, warmup;
	bool json;
	const char *json_out;
	bool progress;
};

/*
 * Run the workload and print its report (a table and target lines, or
 * JSON).  Returns 0, or 1 when a run failed or the daemon was not there.
 */
int bench_preload_run(const struct bench_preload_opts *o);

#endif
