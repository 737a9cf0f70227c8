// SPDX-License-Identifier: MIT
/*
 * upager-bench: figures, medians, distributions, and the two report formats
 * (a table for people, JSON for machines and scripts/plot-bench.sh).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bench-stats.h"
#include "json.h"

int bench_fmt(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return n;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

uint64_t bench_percentile(const uint64_t *sorted, size_t n, double pct)
{
	size_t rank;

	if (!n)
		return 0;
	/* nearest rank: the smallest sample with at least pct% at or below */
	rank = (size_t)ceil(pct / 100.0 * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

int bench_figures_compute(uint64_t *ns, size_t n, uint64_t wall_ns,
			  size_t page_size, struct bench_figures *out)
{
	double sum = 0;
	size_t i;

	if (!n || !wall_ns)
		return -EINVAL;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	for (i = 0; i < n; i++)
		sum += (double)ns[i];
	out->p50_ns = (double)bench_percentile(ns, n, 50);
	out->p90_ns = (double)bench_percentile(ns, n, 90);
	out->p99_ns = (double)bench_percentile(ns, n, 99);
	out->p999_ns = (double)bench_percentile(ns, n, 99.9);
	out->max_ns = (double)ns[n - 1];
	out->mean_ns = sum / (double)n;
	out->wall_ns = (double)wall_ns;
	out->faults_per_s = (double)n * 1e9 / (double)wall_ns;
	out->mb_per_s = (double)n * (double)page_size * 1e3 / (double)wall_ns;
	out->cpu_per_fault_ns = -1; /* the caller's, if it knows */
	return 0;
}

static double median_of(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	if (n & 1)
		return v[n / 2];
	return (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_median_fields(const double *runs, size_t n, size_t nr_fields,
			 double *out)
{
	double *v = calloc(n ? n : 1, sizeof(*v)), x;
	size_t f, i, k;

	if (!v)
		abort();
	for (f = 0; f < nr_fields; f++) {
		for (i = k = 0; i < n; i++) {
			x = runs[i * nr_fields + f];
			if (x >= 0)
				v[k++] = x;
		}
		out[f] = k ? median_of(v, k) : -1;
	}
	free(v);
}

void bench_figures_median(const struct bench_figures *runs, size_t n,
			  struct bench_figures *out)
{
	/* the struct is all doubles: take the median field by field */
	_Static_assert(sizeof(struct bench_figures) % sizeof(double) == 0,
		       "bench_figures must hold doubles only");
	memset(out, 0, sizeof(*out));
	if (!n)
		return;
	bench_median_fields((const double *)runs, n,
			    sizeof(*out) / sizeof(double), (double *)out);
}

static unsigned int hist_bucket(uint64_t ns)
{
	unsigned int msb, sub, idx;

	if (ns < (1ULL << BENCH_HIST_MIN_SHIFT))
		return 0;
	msb = 63 - (unsigned int)__builtin_clzll(ns);
	sub = (unsigned int)(ns >> (msb - 2)) & (BENCH_HIST_SUB - 1);
	idx = (msb - BENCH_HIST_MIN_SHIFT) * BENCH_HIST_SUB + sub;
	return idx < BENCH_HIST_BUCKETS ? idx : BENCH_HIST_BUCKETS - 1;
}

static uint64_t hist_lo(unsigned int idx)
{
	unsigned int msb = idx / BENCH_HIST_SUB + BENCH_HIST_MIN_SHIFT;
	unsigned int sub = idx % BENCH_HIST_SUB;

	if (!idx)
		return 0;
	return (uint64_t)(BENCH_HIST_SUB + sub) << (msb - 2);
}

void bench_dist_compute(uint64_t *ns, size_t n, struct bench_dist *d)
{
	static const double low[] = { 0,  1,  5,  10, 20, 25, 30,
				      40, 50, 60, 70, 75, 80, 90 };
	unsigned int k, np = 0;
	size_t i;

	memset(d, 0, sizeof(*d));
	if (!n)
		return;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	d->nr_samples = n;
	for (k = 0; k < sizeof(low) / sizeof(low[0]); k++) {
		d->pct[np] = low[k];
		d->ns[np++] = low[k] ? bench_percentile(ns, n, low[k]) : ns[0];
	}
	/* ten points per decade of the tail, while the samples resolve it */
	for (k = 11; np < BENCH_DIST_POINTS - 1; k++) {
		double tail = pow(10, -(double)k / 10);

		if (tail * (double)n < 1)
			break;
		d->pct[np] = 100 * (1 - tail);
		d->ns[np] = bench_percentile(ns, n, d->pct[np]);
		np++;
	}
	d->pct[np] = 100;
	d->ns[np++] = ns[n - 1];
	d->nr_points = np;
	for (i = 0; i < n; i++)
		d->hist[hist_bucket(ns[i])]++;
}

const struct bench_result *bench_report_find(const struct bench_report *r,
					     const char *system,
					     const char *variant)
{
	size_t i;

	for (i = 0; i < r->nr_results; i++) {
		const struct bench_result *res = &r->results[i];

		if (!strcmp(res->system, system) &&
		    !strcmp(res->variant.name, variant))
			return res;
	}
	return NULL;
}

struct bench_target *bench_report_target(struct bench_report *r,
					 const char *name, double value,
					 const char *op, double goal)
{
	struct bench_target *t;

	if (r->nr_targets >= sizeof(r->targets) / sizeof(r->targets[0]))
		return NULL;
	t = &r->targets[r->nr_targets++];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->value = value;
	t->op = op;
	t->goal = goal;
	if (value < 0)
		t->met = false;
	else if (!strcmp(op, "<="))
		t->met = value <= goal;
	else
		t->met = value >= goal;
	return t;
}

static bool result_ok(const struct bench_result *res)
{
	return res && !res->error[0] && res->nr_runs;
}

/* upagerd's figure over the reference's: > 1 means upagerd is higher. */
static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

/*
 * Of the pages read ahead that were checked, the share the process they
 * were read for had touched; < 0 while none was checked.
 */
static double readahead_hit_rate(const struct bench_sys_stats *s)
{
	uint64_t checked = s->readahead_touched + s->readahead_untouched;

	return checked ? (double)s->readahead_touched / (double)checked : -1;
}

/* ---- table ---- */

static void table_row(FILE *f, const char *variant, const char *system,
		      const struct bench_figures *g)
{
	char cpu[16] = "-";

	if (g->cpu_per_fault_ns >= 0)
		snprintf(cpu, sizeof(cpu), "%.2f", g->cpu_per_fault_ns / 1e3);
	fprintf(f,
		"%-18s %-22s %8.2f %8.2f %8.2f %8.2f %9.2f %10.0f %8.1f %9s\n",
		variant, system, g->p50_ns / 1e3, g->p90_ns / 1e3,
		g->p99_ns / 1e3, g->p999_ns / 1e3, g->max_ns / 1e3,
		g->faults_per_s, g->mb_per_s, cpu);
}

static void table_ratio_row(FILE *f, const struct bench_figures *u,
			    const struct bench_result *ref)
{
	const struct bench_figures *g = &ref->fig;
	char label[40], cpu[16] = "-";

	snprintf(label, sizeof(label), "  upagerd/%s", ref->system);
	if (u->cpu_per_fault_ns >= 0 && g->cpu_per_fault_ns > 0)
		snprintf(cpu, sizeof(cpu), "%.2fx",
			 u->cpu_per_fault_ns / g->cpu_per_fault_ns);
	fprintf(f,
		"%-18s %-22s %7.2fx %7.2fx %7.2fx %7.2fx %8.2fx %9.2fx %7.2fx "
		"%9s\n",
		"", label, ratio(u->p50_ns, g->p50_ns),
		ratio(u->p90_ns, g->p90_ns), ratio(u->p99_ns, g->p99_ns),
		ratio(u->p999_ns, g->p999_ns), ratio(u->max_ns, g->max_ns),
		ratio(u->faults_per_s, g->faults_per_s),
		ratio(u->mb_per_s, g->mb_per_s), cpu);
}

/* upagerd's read-ahead in the last run: how much, and how much of it hit. */
static void table_readahead(FILE *f, const struct bench_sys_stats *s)
{
	double hit = readahead_hit_rate(s);
	char rate[16] = "-";

	if (hit >= 0)
		snprintf(rate, sizeof(rate), "%.1f%%", hit * 100);
	fprintf(f,
		"%-18s %-22s %llu pages ahead, hit %s (%llu touched, %llu "
		"untouched)\n",
		"", "  read-ahead", (unsigned long long)s->readahead_pages,
		rate, (unsigned long long)s->readahead_touched,
		(unsigned long long)s->readahead_untouched);
}

void bench_report_table(const struct bench_report *r, FILE *f)
{
	const char *last = "";
	size_t i, j;

	fprintf(f,
		"%s: %zu pages x %zu KiB per run, %u run%s (median) after "
		"%u warm-up, timer %.0f ns, %ld CPUs, Linux %s\n",
		r->workload, r->pages, r->page_size / 1024, r->runs,
		r->runs == 1 ? "" : "s", r->warmup, r->timer_ns, r->nr_cpus,
		r->kernel ? r->kernel : "?");
	if (r->file)
		fprintf(f, "file: %s\n", r->file);
	if (r->daemon)
		fprintf(f, "upagerd: %s\n", r->daemon);
	fprintf(f, "%-18s %-22s %8s %8s %8s %8s %9s %10s %8s %9s\n", "variant",
		"system", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us",
		"faults/s", "MB/s", "cpu/fault");
	for (i = 0; i < r->nr_results; i++) {
		const struct bench_result *res = &r->results[i];
		const char *vname = res->variant.name;

		if (strcmp(last, vname) && i)
			fputc('\n', f);
		if (res->error[0]) {
			fprintf(f, "%-18s %-22s %s%s\n",
				strcmp(last, vname) ? vname : "", res->system,
				res->skipped ? "" : "error: ", res->error);
		} else {
			table_row(f, strcmp(last, vname) ? vname : "",
				  res->system, &res->fig);
		}
		last = vname;
		if (strcmp(res->system, "upagerd") || !result_ok(res))
			continue;
		if (res->sys_stats.valid)
			table_readahead(f, &res->sys_stats);
		for (j = 0; j < r->nr_results; j++) {
			const struct bench_result *ref = &r->results[j];

			if (ref->reference && result_ok(ref) &&
			    !strcmp(ref->variant.name, vname))
				table_ratio_row(f, &res->fig, ref);
		}
	}
	fputs("(latency: per first touch of a page, us; max: the slowest "
	      "touch;\n"
	      " cpu/fault: the pager's CPU time per fault it served, us: "
	      "minimal's and\n"
	      " the floor's handler threads, upagerd's threads over the touch "
	      "phase,\n"
	      " \"-\" where not known; read-ahead: upagerd's pages filled "
	      "ahead of any\n"
	      " fault in the last run, and the share of those checked that "
	      "were touched;\n"
	      " ratios: upagerd's figure over the reference's)\n",
	      f);
}

void bench_report_targets(const struct bench_report *r, FILE *f)
{
	size_t i;

	for (i = 0; i < r->nr_targets; i++) {
		const struct bench_target *t = &r->targets[i];
		const char *unit = t->unit ? t->unit : "";
		const char *sp = t->unit ? " " : "";

		/* "info": the same goal, on a variant the issue only watches */
		fprintf(f, "%-6s %s = ", t->info ? "info" : "target", t->name);
		if (t->value < 0)
			fprintf(f, "n/a (goal %s %g%s%s) NOT RUN\n", t->op,
				t->goal, sp, unit);
		else
			fprintf(f, "%.2f%s%s (goal %s %g%s%s) %s\n", t->value,
				sp, unit, t->op, t->goal, sp, unit,
				t->met ? "MET" : "MISSED");
	}
}

/* ---- JSON ---- */

static void json_figures(FILE *f, const struct bench_figures *g)
{
	fprintf(f,
		"\"p50_ns\": %.1f, \"p90_ns\": %.1f, \"p99_ns\": %.1f, "
		"\"p999_ns\": %.1f, \"max_ns\": %.1f, \"mean_ns\": %.1f, "
		"\"wall_ns\": %.0f, \"faults_per_s\": %.1f, \"mb_per_s\": %.2f, "
		"\"cpu_per_fault_ns\": ",
		g->p50_ns, g->p90_ns, g->p99_ns, g->p999_ns, g->max_ns,
		g->mean_ns, g->wall_ns, g->faults_per_s, g->mb_per_s);
	if (g->cpu_per_fault_ns >= 0)
		fprintf(f, "%.1f", g->cpu_per_fault_ns);
	else
		fprintf(f, "null");
}

static void json_dist(FILE *f, const struct bench_dist *d)
{
	unsigned int i;
	bool first = true;

	fprintf(f, "\"distribution\": {\"samples\": %llu, \"percentiles\": [",
		(unsigned long long)d->nr_samples);
	for (i = 0; i < d->nr_points; i++)
		fprintf(f, "%s[%.4f, %llu]", i ? ", " : "", d->pct[i],
			(unsigned long long)d->ns[i]);
	fprintf(f, "], \"histogram\": [");
	for (i = 0; i < BENCH_HIST_BUCKETS; i++) {
		if (!d->hist[i])
			continue;
		fprintf(f, "%s[%llu, %llu, %llu]", first ? "" : ", ",
			(unsigned long long)hist_lo(i),
			(unsigned long long)(i + 1 < BENCH_HIST_BUCKETS ?
						     hist_lo(i + 1) :
						     UINT64_MAX),
			(unsigned long long)d->hist[i]);
		first = false;
	}
	fprintf(f, "]}");
}

static void json_result(const struct bench_report *r,
			const struct bench_result *res, FILE *f)
{
	const struct bench_variant *v = &res->variant;
	unsigned int i;
	size_t j;
	bool first = true;

	fprintf(f, "    {\"workload\": ");
	json_write_string(f, res->workload);
	fprintf(f, ", \"system\": ");
	json_write_string(f, res->system);
	fprintf(f, ", \"variant\": ");
	json_write_string(f, v->name);
	fprintf(f, ", \"order\": ");
	json_write_string(f, v->order);
	fprintf(f, ", \"threads\": %u, \"procs\": %u, \"cache\": ", v->threads,
		v->procs);
	if (v->cache)
		json_write_string(f, v->cache);
	else
		fprintf(f, "null");
	fprintf(f, ", \"access\": ");
	json_write_string(f, res->access);
	fprintf(f, ", \"pages\": %zu, \"page_size\": %zu, \"reference\": %s",
		res->pages, res->page_size, res->reference ? "true" : "false");
	if (res->error[0]) {
		fprintf(f, ", \"error\": ");
		json_write_string(f, res->error);
		fprintf(f, ", \"skipped\": %s}",
			res->skipped ? "true" : "false");
		return;
	}
	fprintf(f, ", \"runs\": %u,\n     ", res->nr_runs);
	json_figures(f, &res->fig);
	if (res->cache_resident >= 0)
		fprintf(f, ", \"cache_resident_before\": %.3f",
			res->cache_resident);
	if (res->sys_stats.cpu_valid)
		fprintf(f,
			",\n     \"pager_cpu\": {\"cpu_ns\": %llu, "
			"\"faults_served\": %llu}",
			(unsigned long long)res->sys_stats.cpu_ns,
			(unsigned long long)res->sys_stats.faults_served);
	if (res->sys_stats.valid) {
		const struct bench_sys_stats *s = &res->sys_stats;

		fprintf(f,
			",\n     \"daemon_stats\": {\"faults_missing\": %llu, "
			"\"faults_minor\": %llu, \"faults_wp\": %llu, "
			"\"faults_waited\": %llu, \"pages_filled\": %llu, "
			"\"bytes_read\": %llu, \"readahead_max_pages\": %llu, "
			"\"readahead_pages\": %llu, \"readahead_touched\": %llu, "
			"\"readahead_untouched\": %llu, \"readahead_hit_rate\": ",
			(unsigned long long)s->faults_missing,
			(unsigned long long)s->faults_minor,
			(unsigned long long)s->faults_wp,
			(unsigned long long)s->faults_waited,
			(unsigned long long)s->pages_filled,
			(unsigned long long)s->bytes_read,
			(unsigned long long)s->readahead_max_pages,
			(unsigned long long)s->readahead_pages,
			(unsigned long long)s->readahead_touched,
			(unsigned long long)s->readahead_untouched);
		if (readahead_hit_rate(s) >= 0)
			fprintf(f, "%.4f}", readahead_hit_rate(s));
		else
			fprintf(f, "null}");
	}
	if (!strcmp(res->system, "upagerd")) {
		fprintf(f, ",\n     \"ratios\": {");
		for (j = 0; j < r->nr_results; j++) {
			const struct bench_result *ref = &r->results[j];

			if (!ref->reference || !result_ok(ref) ||
			    strcmp(ref->variant.name, v->name))
				continue;
			fprintf(f, "%s", first ? "" : ", ");
			json_write_string(f, ref->system);
			fprintf(f,
				": {\"p50\": %.3f, \"p99\": %.3f, "
				"\"p999\": %.3f, \"max\": %.3f, "
				"\"faults_per_s\": %.3f, \"cpu_per_fault\": ",
				ratio(res->fig.p50_ns, ref->fig.p50_ns),
				ratio(res->fig.p99_ns, ref->fig.p99_ns),
				ratio(res->fig.p999_ns, ref->fig.p999_ns),
				ratio(res->fig.max_ns, ref->fig.max_ns),
				ratio(res->fig.faults_per_s,
				      ref->fig.faults_per_s));
			if (res->fig.cpu_per_fault_ns >= 0 &&
			    ref->fig.cpu_per_fault_ns > 0)
				fprintf(f, "%.3f}",
					res->fig.cpu_per_fault_ns /
						ref->fig.cpu_per_fault_ns);
			else
				fprintf(f, "null}");
			first = false;
		}
		fprintf(f, "}");
	}
	fprintf(f, ",\n     \"run_figures\": [");
	for (i = 0; i < res->nr_runs; i++) {
		fprintf(f, "%s{", i ? ", " : "");
		json_figures(f, &res->runs[i]);
		fprintf(f, "}");
	}
	fprintf(f, "],\n     ");
	json_dist(f, &res->dist);
	fprintf(f, "}");
}

void bench_report_json_targets(const struct bench_report *r, FILE *f)
{
	size_t i;

	fprintf(f, "\"targets\": [");
	for (i = 0; i < r->nr_targets; i++) {
		const struct bench_target *t = &r->targets[i];

		fprintf(f, "%s\n    {\"name\": ", i ? "," : "");
		json_write_string(f, t->name);
		if (t->value < 0)
			fprintf(f, ", \"value\": null");
		else
			fprintf(f, ", \"value\": %.4f", t->value);
		fprintf(f, ", \"op\": \"%s\", \"goal\": %g, \"unit\": ", t->op,
			t->goal);
		if (t->unit)
			json_write_string(f, t->unit);
		else
			fprintf(f, "null");
		fprintf(f, ", \"informational\": %s, \"met\": %s}",
			t->info ? "true" : "false", t->met ? "true" : "false");
	}
	fprintf(f, "%s]", r->nr_targets ? "\n  " : "");
}

int bench_report_json(const struct bench_report *r, FILE *f)
{
	size_t i;

	fprintf(f, "{\n  \"tool\": \"upager-bench\", \"format\": 1, "
		   "\"workload\": ");
	json_write_string(f, r->workload);
	fprintf(f,
		",\n  \"config\": {\"pages\": %zu, \"page_size\": %zu, "
		"\"runs\": %u, \"warmup\": %u, \"seed\": %llu, "
		"\"timer_ns\": %.1f, \"file\": ",
		r->pages, r->page_size, r->runs, r->warmup,
		(unsigned long long)r->seed, r->timer_ns);
	if (r->file)
		json_write_string(f, r->file);
	else
		fprintf(f, "null");
	fprintf(f, ", \"kernel\": ");
	json_write_string(f, r->kernel);
	fprintf(f, ", \"cpus\": %ld, \"daemon\": ", r->nr_cpus);
	if (r->daemon)
		json_write_string(f, r->daemon);
	else
		fprintf(f, "null");
	fprintf(f, "},\n  \"results\": [\n");
	for (i = 0; i < r->nr_results; i++) {
		json_result(r, &r->results[i], f);
		fprintf(f, "%s\n", i + 1 < r->nr_results ? "," : "");
	}
	fprintf(f, "  ],\n  ");
	bench_report_json_targets(r, f);
	fprintf(f, "\n}\n");
	return ferror(f) ? -EIO : 0;
}
