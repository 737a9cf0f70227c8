/* SPDX-License-Identifier: MIT */
/*
 * upager-bench: samples, figures, the median of runs, and the report.
 *
 * A run yields one latency sample per page (ns, in the order the pages were
 * touched) and the wall time of its touch phase.  Its figures are exact
 * percentiles of those samples (nearest rank, after a sort).  A result is the
 * median, figure by figure, of its measured runs: on a noisy 2-vCPU machine
 * one slow run must not move the figure, and medians of runs are what the
 * ratios are taken from.  The latency distribution of a result pools the
 * samples of all its measured runs, so the plot shows every fault measured.
 */
#ifndef UPAGER_BENCH_STATS_H
#define UPAGER_BENCH_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * Figures of one run, or the per-figure median of several.  A negative
 * figure was not measured; a median is taken over the runs that have it.
 */
struct bench_figures {
	double p50_ns;
	double p90_ns;
	double p99_ns;
	double p999_ns;
	double max_ns;
	double mean_ns;
	double wall_ns;		 /* barrier release to last worker done */
	double faults_per_s;	 /* pages touched / wall time */
	double mb_per_s;	 /* 10^6 bytes per second */
	double cpu_per_fault_ns; /* the pager's CPU over the faults it
				  * served; < 0: not known */
};

/*
 * Percentile points of a distribution: 0, 1, ..., 90, then towards 100 in
 * steps that are even on a log scale of 1/(1 - p), the usual axis of a
 * latency-by-percentile plot.
 */
#define BENCH_DIST_POINTS 128
/* Log histogram: 4 buckets per power of two, from 16 ns up to ~68 s. */
#define BENCH_HIST_SUB 4
#define BENCH_HIST_MIN_SHIFT 4
#define BENCH_HIST_BUCKETS (32 * BENCH_HIST_SUB)

struct bench_dist {
	unsigned int nr_points;
	double pct[BENCH_DIST_POINTS];
	uint64_t ns[BENCH_DIST_POINTS];
	uint64_t hist[BENCH_HIST_BUCKETS];
	uint64_t nr_samples;
};

/* Counters a system can report about its own work. */
struct bench_sys_stats {
	/* the pager's CPU time over the run, and the faults it served */
	bool cpu_valid;
	uint64_t cpu_ns;
	uint64_t faults_served;
	/* upagerd's stat of the run's segment */
	bool valid;
	uint64_t faults_missing;
	uint64_t faults_minor;
	uint64_t faults_wp;
	uint64_t faults_waited;
	uint64_t pages_filled;
	uint64_t bytes_read;
	uint64_t readahead_max_pages;
	uint64_t readahead_pages;     /* filled ahead of any fault */
	uint64_t readahead_touched;   /* of those, found mapped */
	uint64_t readahead_untouched; /* found not mapped */
};

/* The variant of a workload a result was measured on. */
struct bench_variant {
	const char *order;    /* "seq" or "random" */
	unsigned int threads; /* faulting threads per process */
	unsigned int procs;   /* processes */
	const char *cache;    /* "warm", "cold", or NULL */
	char name[48];	      /* "random/2t/1p", "seq/1t/1p/cold" */
};

struct bench_result {
	const char *workload;
	const char *system;
	const char *access; /* "read" or "write" */
	struct bench_variant variant;
	size_t pages;
	size_t page_size;
	bool reference; /* a system upagerd is compared with */

	unsigned int nr_runs;	    /* measured runs done */
	struct bench_figures *runs; /* [runs requested] */
	struct bench_figures fig;   /* median of runs */
	uint64_t *pool;		    /* samples of all measured runs */
	size_t nr_pool;
	struct bench_dist dist;
	struct bench_sys_stats sys_stats; /* of the last run */
	double cache_resident; /* file: fraction cached before the last
				* run, or < 0 when not measured */
	char error[160];       /* "" unless the system failed */
	bool skipped;	       /* error says why it could not run here
				* (n/a): no failure */
};

struct bench_target {
	char name[96]; /* e.g. "missing/random/1t p99/p50 upagerd" */
	double value;
	const char *op; /* "<=" or ">=" */
	double goal;
	const char *unit; /* of value and goal: NULL for a ratio */
	bool info;	  /* a figure the issue asks to watch, no target */
	bool met;
};

struct bench_report {
	const char *workload;
	size_t page_size;
	size_t pages;
	unsigned int runs;
	unsigned int warmup;
	uint64_t seed;
	double timer_ns;    /* cost of the timing itself, median */
	const char *kernel; /* uname release */
	long nr_cpus;	    /* online CPUs */
	const char *file;   /* file workload: the source file */
	const char *daemon; /* how upagerd was reached, or NULL */
	struct bench_result *results;
	size_t nr_results;
	struct bench_target targets[16];
	size_t nr_targets;
};

/* snprintf that truncates quietly: for messages, where a cut is fine. */
int bench_fmt(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Sort @ns and compute a run's figures.  Returns 0 or -EINVAL (no sample). */
int bench_figures_compute(uint64_t *ns, size_t n, uint64_t wall_ns,
			  size_t page_size, struct bench_figures *out);

/*
 * The median of each of @nr_fields doubles over @n runs (@runs: n rows of
 * nr_fields), over the runs that measured it (>= 0); -1 where none did.
 */
void bench_median_fields(const double *runs, size_t n, size_t nr_fields,
			 double *out);

/* Per-figure median of @n runs. */
void bench_figures_median(const struct bench_figures *runs, size_t n,
			  struct bench_figures *out);

/* Sort @ns and fill @dist with its percentile points and histogram. */
void bench_dist_compute(uint64_t *ns, size_t n, struct bench_dist *dist);

/* Nearest-rank percentile of sorted @ns (0 < @pct <= 100). */
uint64_t bench_percentile(const uint64_t *sorted, size_t n, double pct);

/* The result of @system on variant @variant, or NULL. */
const struct bench_result *bench_report_find(const struct bench_report *r,
					     const char *system,
					     const char *variant);

/*
 * Append a target line; @value < 0 means it could not be computed.
 * Returns the line, for its unit and info, or NULL when there is no room.
 */
struct bench_target *bench_report_target(struct bench_report *r,
					 const char *name, double value,
					 const char *op, double goal);

void bench_report_table(const struct bench_report *r, FILE *f);
void bench_report_targets(const struct bench_report *r, FILE *f);
int bench_report_json(const struct bench_report *r, FILE *f);
/* The "targets": [...] member of the JSON, for the workloads that write
 * their own results. */
void bench_report_json_targets(const struct bench_report *r, FILE *f);

#endif
