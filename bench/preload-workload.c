// SPDX-License-Identifier: MIT
/*
 * preload-workload: programs for tests/test-preload.sh and
 * `upager-bench preload` (bench-preload.c), plain C with no knowledge of upager
 *(they run with and without LD_PRELOAD=libupager-preload.so).
 *
 *   hold SIZE SEED FILE
 *	Maps SIZE bytes of private anonymous memory, fills it with the
 *	pattern SEED, writes the same bytes to FILE (the expected image),
 *	prints "ready PID", then keeps writing another 16 MiB mapping until
 *	its stdin is closed.  For a snapshot and save taken while it runs.
 *
 *   fork-reader SIZE ROUNDS
 *	Maps SIZE bytes private, a thread writes word i := ++seq over it in
 *	address order, again and again; ROUNDS times the main thread forks
 *	and the child reads all of it while the parent keeps writing: the
 *	child must see one instant (see preload-semantics.c, fork-cut).
 *	Prints "fork-reader: N of N consistent", exits 0 when all were.
 *
 *   shared-workers SIZE N
 *	MAP_SHARED|MAP_ANONYMOUS of SIZE, N forked workers each fill their
 *	slice; the parent prints the checksum of the whole.
 *
 *   touch SIZE [malloc|grow]
 *	mmap(SIZE) (or malloc(SIZE): glibc's own mmap calls, which symbol
 *	interposition does not see; or grow: reserved PROT_NONE and opened
 *	with mprotect 1 MiB at a time, as glibc's arenas and many runtimes'
 *	heaps), write one byte a page (the first touch), print the wall
 *	time in ns on stderr ("touch-ns N").
 *
 *   fork-touch SIZE
 *	Maps and writes SIZE bytes private, then forks; the child reads all
 *	of it.  Prints on stdout, one "key value" a line: fork-pause-ns
 *	(the parent's time in fork()), child-read-ns, and the memory
 *	(Pss, from /proc/PID/smaps_rollup, in KiB) of parent and child once
 *	the child has read everything: parent-pss-kib, child-pss-kib; then
 *	waits for a line on stdin before it exits (so that a caller can
 *	measure the daemon at that moment), when the third argument "wait"
 *	is given.
 *
 *   small SIZE THREADS PAIRS
 *	THREADS threads allocate SIZE bytes in all in small blocks (16 B to
 *	1 KiB, as a program's objects and strings), write each whole, free
 *	them; then each makes PAIRS rounds of malloc(64) and free.  Prints
 *	on stderr the wall time of the allocate-and-write phase
 *	("small-ns N") and the time per round of the second
 *	("small-pair-ns N", per thread, the threads at once).  glibc serves
 *	them from its arenas and heap; the shim from its own (managed).
 *
 *   churn ITERS [BYTES]
 *	ITERS times: malloc(BYTES) (default 2 MiB), write 4 pages of it
 *	(first, two inner, last), free it; after a few untimed rounds (glibc
 *	settles its mmap threshold, the shim connects).  Prints the wall
 *	time of the timed loop on stderr ("churn-ns N").  A program that
 *	allocates and frees large buffers in a loop: glibc reuses its own
 *	memory, the shim makes and deletes a segment each time.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "cut-writer.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	switch (*end) {
	case 'G':
	case 'g':
		v <<= 10;
		/* fall through */
	case 'M':
	case 'm':
		v <<= 10;
		/* fall through */
	case 'K':
	case 'k':
		v <<= 10;
	}
	return (size_t)v;
}

static void *map_private(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static int hold(size_t n, uint64_t seed, const char *file)
{
	uint64_t *p = map_private(n);
	volatile uint64_t *busy = map_private(16 << 20);

	for (size_t i = 0; i < n / 8; i++)
		p[i] = mix(seed + i);
	FILE *f = fopen(file, "w");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f)) {
		perror(file);
		return 2;
	}
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	/* keep running, and writing, until stdin closes */
	fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
	for (uint64_t gen = 1;; gen++) {
		char c;
		ssize_t r;

		for (size_t i = 0; i < (16 << 20) / 8; i += 512)
			busy[i] = gen;
		r = read(0, &c, 1);
		if (r == 0 || (r < 0 && errno != EAGAIN))
			break;
		usleep(1000);
	}
	/* the held memory is as it was */
	for (size_t i = 0; i < n / 8; i++)
		if (p[i] != mix(seed + i))
			return 1;
	return 0;
}

static int fork_reader(size_t n, int rounds)
{
	struct writer wr = { .n = n / 8 };
	int ok = 0;
	pthread_t t;

	wr.w = map_private(n);
	pthread_create(&t, NULL, writer_main, &wr);
	for (int r = 0; r < rounds; r++) {
		uint64_t s0 = atomic_load(&wr.sweeps);

		while (atomic_load(&wr.sweeps) < s0 + 1)
			sched_yield();
		fflush(stdout);
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0) {
			long bad = cut_check(wr.w, wr.n);

			if (bad >= 0)
				fprintf(stderr, "fork-reader: word %ld\n", bad);
			_exit(bad < 0 ? 0 : 1);
		}
		int st;
		waitpid(pid, &st, 0);
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
	}
	atomic_store(&wr.stop, true);
	pthread_join(t, NULL);
	printf("fork-reader: %d of %d consistent\n", ok, rounds);
	return ok == rounds ? 0 : 1;
}

static uint64_t sum(const void *p, size_t n)
{
	const uint64_t *w = p;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n / 8; i++)
		h = (h ^ w[i]) * 0x100000001b3ull;
	return h;
}

static int shared_workers(size_t n, int workers)
{
	uint64_t *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	size_t slice = n / 8 / workers;

	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	fflush(stdout);
	for (int w = 0; w < workers; w++) {
		pid_t pid = fork();

		if (pid == 0) {
			for (size_t i = w * slice; i < (w + 1) * slice; i++)
				p[i] = mix(i * 31 + w);
			_exit(0);
		}
	}
	int bad = 0, st;
	while (wait(&st) > 0)
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			bad++;
	printf("shared-workers: %d workers, %zu MiB, sum=%016llx\n", workers,
	       n >> 20, (unsigned long long)sum(p, n));
	return bad ? 1 : 0;
}

static int touch(size_t n, bool use_malloc, bool grow)
{
	uint64_t t0 = now_ns();
	volatile char *p;

	if (grow) {
		p = mmap(NULL, n, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED)
			return 2;
		for (size_t o = 0; o < n; o += 1 << 20) {
			size_t step = n - o < (1 << 20) ? n - o : 1 << 20;

			if (mprotect((char *)p + o, step,
				     PROT_READ | PROT_WRITE))
				return 2;
			for (size_t i = 0; i < step; i += 4096)
				p[o + i] = 1;
		}
		fprintf(stderr, "touch-ns %llu\n",
			(unsigned long long)(now_ns() - t0));
		munmap((void *)p, n);
		return 0;
	}
	p = use_malloc ? malloc(n) : map_private(n);
	if (!p)
		return 2;
	for (size_t i = 0; i < n; i += 4096)
		p[i] = 1;
	fprintf(stderr, "touch-ns %llu\n", (unsigned long long)(now_ns() - t0));
	if (use_malloc)
		free((void *)p); /* (a sanitizer build reports a leak) */
	else
		munmap((void *)p, n);
	return 0;
}

struct small_thr {
	pthread_t tid;
	size_t bytes;
	long pairs;
	uint64_t pair_ns;
	int err;
};

static pthread_barrier_t small_go;

static void *small_thread(void *arg)
{
	struct small_thr *t = arg;
	size_t cap = t->bytes / 16 + 1, n = 0, have = 0;
	char **v = malloc(cap * sizeof(*v));
	uint64_t t0;

	pthread_barrier_wait(&small_go);
	for (uint64_t r = (uintptr_t)t; v && have < t->bytes && n < cap; n++) {
		size_t len = 16 + (mix(r + n) & 1008); /* 16 to 1024 */

		v[n] = malloc(len);
		if (!v[n]) {
			t->err = 1;
			break;
		}
		memset(v[n], (int)n, len);
		have += len;
	}
	pthread_barrier_wait(&small_go);
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
	t0 = now_ns();
	for (long i = 0; i < t->pairs; i++) {
		volatile char *p = malloc(64);

		if (!p) {
			t->err = 1;
			break;
		}
		p[0] = (char)i;
		free((void *)p);
	}
	t->pair_ns = now_ns() - t0;
	return NULL;
}

static int small(size_t bytes, int threads, long pairs)
{
	struct small_thr *t = calloc(threads > 0 ? threads : 1, sizeof(*t));
	uint64_t t0, pair_ns = 0;
	int err = 0;

	if (!t || threads < 1 || pairs < 1)
		return 2;
	pthread_barrier_init(&small_go, NULL, threads + 1);
	for (int i = 0; i < threads; i++) {
		t[i] = (struct small_thr){ .bytes = bytes / threads,
					   .pairs = pairs };
		if (pthread_create(&t[i].tid, NULL, small_thread, &t[i]))
			return 2;
	}
	pthread_barrier_wait(&small_go);
	t0 = now_ns();
	pthread_barrier_wait(&small_go);
	fprintf(stderr, "small-ns %llu\n", (unsigned long long)(now_ns() - t0));
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i].tid, NULL);
		err |= t[i].err;
		pair_ns += t[i].pair_ns;
	}
	fprintf(stderr, "small-pair-ns %.2f\n",
		(double)pair_ns / threads / pairs);
	free(t);
	return err ? 2 : 0;
}

static int churn(long iters, size_t n)
{
	uint64_t t0 = 0;

	if (iters < 1 || n < 4096)
		return 2;
	for (long i = -8; i < iters; i++) {
		if (i == 0)
			t0 = now_ns();
		volatile char *p = malloc(n);

		if (!p) {
			perror("malloc");
			return 2;
		}
		p[0] = (char)i;
		p[n / 3] = (char)i;
		p[2 * n / 3] = (char)i;
		p[n - 1] = (char)i;
		free((void *)p);
	}
	fprintf(stderr, "churn-ns %llu\n", (unsigned long long)(now_ns() - t0));
	return 0;
}

static long pss_kib(pid_t pid)
{
	char path[64], line[256];
	long v = -1;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

static int fork_touch(size_t n, bool wait_line)
{
	uint64_t *p = map_private(n);
	int to_parent[2], to_child[2];

	for (size_t i = 0; i < n / 8; i++)
		p[i] = mix(i);
	if (pipe(to_parent) || pipe(to_child))
		return 2;
	fflush(stdout);
	uint64_t t0 = now_ns();
	pid_t pid = fork();
	uint64_t pause = now_ns() - t0;
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		/* a parent that dies must not leave the child waiting */
		close(to_child[1]);
		close(to_parent[0]);
		uint64_t t1 = now_ns(), h = sum(p, n);
		uint64_t dt = now_ns() - t1;
		char c;

		if (write(to_parent[1], &dt, sizeof(dt)) != sizeof(dt) ||
		    write(to_parent[1], &h, sizeof(h)) != sizeof(h))
			_exit(2);
		/* stay, with what we read mapped, until the parent is done */
		if (read(to_child[0], &c, 1) < 0)
			_exit(2);
		_exit(0);
	}
	uint64_t dt, h;
	close(to_child[0]);
	close(to_parent[1]);
	if (read(to_parent[0], &dt, sizeof(dt)) != sizeof(dt) ||
	    read(to_parent[0], &h, sizeof(h)) != sizeof(h))
		return 2;
	printf("fork-pause-ns %llu\n", (unsigned long long)pause);
	printf("child-read-ns %llu\n", (unsigned long long)dt);
	printf("child-sum-ok %d\n", h == sum(p, n));
	printf("parent-pss-kib %ld\n", pss_kib(getpid()));
	printf("child-pss-kib %ld\n", pss_kib(pid));
	printf("child-pid %d\n", (int)pid);
	fflush(stdout);
	if (wait_line) {
		char line[16];

		if (!fgets(line, sizeof(line), stdin))
			line[0] = 0;
	}
	if (write(to_child[1], "x", 1) != 1)
		return 2;
	int st;
	waitpid(pid, &st, 0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "hold"))
		return hold(parse_size(argv[2]), strtoull(argv[3], NULL, 0),
			    argv[4]);
	if (argc == 4 && !strcmp(argv[1], "fork-reader"))
		return fork_reader(parse_size(argv[2]), atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "shared-workers"))
		return shared_workers(parse_size(argv[2]), atoi(argv[3]));
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "touch"))
		return touch(parse_size(argv[2]),
			     argc == 4 && !strcmp(argv[3], "malloc"),
			     argc == 4 && !strcmp(argv[3], "grow"));
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "fork-touch"))
		return fork_touch(parse_size(argv[2]),
				  argc == 4 && !strcmp(argv[3], "wait"));
	if (argc == 5 && !strcmp(argv[1], "small"))
		return small(parse_size(argv[2]), atoi(argv[3]), atol(argv[4]));
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "churn"))
		return churn(atol(argv[2]),
			     argc == 4 ? parse_size(argv[3]) : 2 << 20);
	fprintf(stderr, "usage: see preload-workload.c\n");
	return 2;
}
