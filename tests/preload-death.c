// SPDX-License-Identifier: MIT
/*
 * preload-death: a program whose daemon is killed while it runs (issue 9:
 * "no wrong byte").  test-preload.sh runs it under the preload shim, waits
 * for its "ready" line on stdout, SIGKILLs the daemon, waits for it to be
 * gone and writes "go" on the program's stdin.  The program then checks
 * every page it has and prints what it found.
 *
 * Usage: preload-death memory [MALLOC_MIB [MMAP_MIB]]
 *   MALLOC_MIB malloc'ed (default 256) and MMAP_MIB mmap'ed (default 64,
 *   MAP_PRIVATE|MAP_ANONYMOUS): of each four pages, two are written with a
 *   per-page pattern, one read (zero) and one left untouched.  After "go":
 *   every written page holds its pattern and every other page reads zero
 *   (a SIGBUS is a wrong answer too: these pages are all zero-source or
 *   in the segment); then every page is written again and read back, new
 *   large memory is allocated, written, checked and freed, and the old
 *   memory is reshaped (MADV_DONTNEED, realloc, mremap) and checked.
 *
 * Usage: preload-death fork [MIB]
 *   MIB (default 64) malloc'ed and MIB/2 mmap'ed, written whole, then
 *   fork(): the child reads the first half of each (its bytes must be
 *   right), says "ready", and after "go" reads the rest: each page either
 *   holds the parent's bytes at the fork or its read gets SIGBUS (the page
 *   lived only in the daemon); zeros or other bytes are wrong.  The parent
 *   keeps writing its own copy meanwhile (the child must not see it), and
 *   checks its own pages at the end.  With "race", the child reads the
 *   second half at once, without waiting for "go": the kill comes while
 *   it reads (the stress of it is a loop of runs with random delays).
 *
 * Usage: preload-death fork-after [MIB]
 *   The same memory, written; "ready"; after "go" (the daemon gone) the
 *   program forks, and the child must read every byte right.
 *
 * Usage: preload-death churn [MIB]
 *   MIB (default 64) malloc'ed and written; a second thread allocates,
 *   writes, checks and frees blocks of 1-8 MiB in a loop, through malloc
 *   and mmap, while the daemon dies.  After "go" it goes on for another
 *   second; then every page is checked.
 *
 * Usage: preload-death clone-dontneed [MIB]
 *   Not about the daemon's death (a reproducer, with the daemon alive, and
 *   no "ready"): a fork child's MADV_DONTNEED of its private memory must
 *   read zero.
 *
 * Output: "ready PID", then one "result ..." line of counts per region,
 * each with "wrong N"; "PASS" or "FAIL" last.  Exit 0 when nothing was
 * wrong, 1 otherwise, 2 on a usage or setup error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
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

#define MiB (1024ul * 1024ul)

static size_t page;

/* The pattern of page @pg of region @r, generation @gen: word @w. */
static inline uint64_t pat(unsigned int r, size_t pg, unsigned int gen, size_t w)
{
	uint64_t x = ((uint64_t)r << 48 | (uint64_t)gen << 40 | pg) *
		     0x9e3779b97f4a7c15ull;

	return (x ^ (x >> 29)) + w;
}

static void page_fill(unsigned char *p, unsigned int r, size_t pg,
		      unsigned int gen)
{
	uint64_t *q = (uint64_t *)p;

	for (size_t w = 0; w < page / 8; w++)
		q[w] = pat(r, pg, gen, w);
}

/* What a page holds, as far as the checks care. */
enum verdict { V_OK, V_ZERO, V_OTHER, V_SIGBUS };

/*
 * SIGBUS while reading a page: the read is abandoned (siglongjmp) and
 * counted.  Each thread that reads has its own landing.
 */
static __thread sigjmp_buf bus_jmp;
static __thread volatile sig_atomic_t bus_armed;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (bus_armed) {
		bus_armed = 0;
		siglongjmp(bus_jmp, 1);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void sigbus_catch(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO | SA_NODEFER };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

/*
 * Reads page @pg of region @r at @p: V_OK when it holds generation @gen
 * of the pattern (or zeros, for @gen 0), V_ZERO when it reads zero where
 * a pattern was expected, V_OTHER for other bytes, V_SIGBUS when the read
 * got SIGBUS.
 */
static enum verdict page_check(const unsigned char *p, unsigned int r,
			       size_t pg, unsigned int gen)
{
	const volatile uint64_t *q = (const volatile uint64_t *)p;
	bool zero = true, match = true;

	if (sigsetjmp(bus_jmp, 1))
		return V_SIGBUS;
	bus_armed = 1;
	for (size_t w = 0; w < page / 8; w++) {
		uint64_t v = q[w];

		if (v)
			zero = false;
		if (!gen || v != pat(r, pg, gen, w))
			match = false;
	}
	bus_armed = 0;
	if (!gen)
		return zero ? V_OK : V_OTHER;
	if (match)
		return V_OK;
	return zero ? V_ZERO : V_OTHER;
}

/* Writes generation @gen of page @pg and reads it back, as page_check. */
static enum verdict page_rewrite(unsigned char *p, unsigned int r, size_t pg,
				 unsigned int gen)
{
	if (sigsetjmp(bus_jmp, 1))
		return V_SIGBUS;
	bus_armed = 1;
	page_fill(p, r, pg, gen);
	bus_armed = 0;
	return page_check(p, r, pg, gen);
}

struct counts {
	size_t ok, zero, other, sigbus;
	long first_bad; /* page index, -1 */
};

static void count(struct counts *c, enum verdict v, size_t pg)
{
	switch (v) {
	case V_OK:
		c->ok++;
		return;
	case V_ZERO:
		c->zero++;
		break;
	case V_OTHER:
		c->other++;
		break;
	case V_SIGBUS:
		c->sigbus++;
		break;
	}
	if (c->first_bad < 0)
		c->first_bad = (long)pg;
}

/* Reads a line from stdin: 0 when it is "go". */
static int wait_go(void)
{
	char line[64];

	if (!fgets(line, sizeof(line), stdin))
		return -1;
	return strncmp(line, "go", 2) ? -1 : 0;
}

static void say_ready(void)
{
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
}

/* --- memory --- */

/* Region @r's page @pg before the kill: 0,1 written; 2 read; 3 untouched. */
static unsigned int memory_gen(size_t pg)
{
	return pg % 4 < 2 ? 1 : 0;
}

static void memory_prepare(unsigned char *m, size_t pages, unsigned int r)
{
	volatile unsigned char sink;

	for (size_t pg = 0; pg < pages; pg++) {
		if (pg % 4 < 2)
			page_fill(m + pg * page, r, pg, 1);
		else if (pg % 4 == 2)
			sink = m[pg * page + 123];
	}
	(void)sink;
}

/* Every page as it was left, then every page written and read back. */
static bool memory_verify(const char *what, unsigned char *m, size_t pages,
			  unsigned int r)
{
	struct counts before = { .first_bad = -1 }, after = { .first_bad = -1 };
	size_t wrote = 0;

	for (size_t pg = 0; pg < pages; pg++) {
		enum verdict v = page_check(m + pg * page, r, pg,
					    memory_gen(pg));

		count(&before, v, pg);
		if (pg % 4 < 2 && v == V_OK)
			wrote++;
	}
	for (size_t pg = 0; pg < pages; pg++)
		count(&after, page_rewrite(m + pg * page, r, pg, 2), pg);
	printf("result %s: pages %zu, written and intact %zu, zero as expected "
	       "%zu; wrong %zu (zeros %zu, other %zu, sigbus %zu, first %ld); "
	       "rewritten and read back %zu, wrong %zu\n",
	       what, pages, wrote, before.ok - wrote,
	       before.zero + before.other + before.sigbus, before.zero,
	       before.other, before.sigbus, before.first_bad, after.ok,
	       pages - after.ok);
	return before.ok == pages && after.ok == pages;
}

/* New large memory after the daemon died: ordinary memory, working. */
static bool memory_new(size_t mib)
{
	size_t len = mib * MiB, pages = len / page;
	struct counts c = { .first_bad = -1 };
	unsigned char *a = malloc(len);
	unsigned char *b = mmap(NULL, len, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (!a || b == MAP_FAILED) {
		printf("result new: allocation failed: %s; wrong 1\n",
		       strerror(errno));
		return false;
	}
	for (size_t pg = 0; pg < pages; pg++) {
		count(&c, page_check(b + pg * page, 7, pg, 0), pg);
		page_fill(a + pg * page, 5, pg, 3);
		page_fill(b + pg * page, 6, pg, 3);
	}
	for (size_t pg = 0; pg < pages; pg++) {
		count(&c, page_check(a + pg * page, 5, pg, 3), pg);
		count(&c, page_check(b + pg * page, 6, pg, 3), pg);
	}
	free(a);
	munmap(b, len);
	printf("result new: %zu MiB malloc'ed and %zu MiB mmap'ed after the "
	       "kill, ok %zu of %zu; wrong %zu\n",
	       mib, mib, c.ok, 3 * pages, 3 * pages - c.ok);
	return c.ok == 3 * pages;
}

/*
 * What the program does to its memory after the daemon died: MADV_DONTNEED
 * (reads zero again), realloc growing the malloc'ed block and mremap
 * doubling the mmap'ed one (the old bytes moved along, the new tail of
 * the mapping zero).  Both regions hold generation 2 on entry.
 */
static bool memory_reshape(unsigned char **a, size_t ml, unsigned char **b,
			   size_t mm)
{
	size_t dn = mm / 4 / page, extra = mm / page;
	struct counts c = { .first_bad = -1 };
	size_t checked = 0;
	unsigned char *p;

	if (madvise(*b, dn * page, MADV_DONTNEED)) {
		printf("result reshape: madvise: %s; wrong 1\n",
		       strerror(errno));
		return false;
	}
	for (size_t pg = 0; pg < dn; pg++, checked++)
		count(&c, page_check(*b + pg * page, 2, pg, 0), pg);
	for (size_t pg = 0; pg < dn; pg++, checked++)
		count(&c, page_rewrite(*b + pg * page, 2, pg, 2), pg);
	p = realloc(*a, ml + mm);
	if (!p) {
		printf("result reshape: realloc: %s; wrong 1\n",
		       strerror(errno));
		return false;
	}
	*a = p;
	for (size_t pg = 0; pg < ml / page; pg++, checked++)
		count(&c, page_check(p + pg * page, 1, pg, 2), pg);
	for (size_t pg = ml / page; pg < (ml + mm) / page; pg++, checked++)
		count(&c, page_rewrite(p + pg * page, 1, pg, 2), pg);
	p = mremap(*b, mm, 2 * mm, MREMAP_MAYMOVE);
	if (p == MAP_FAILED) {
		printf("result reshape: mremap: %s; wrong 1\n", strerror(errno));
		return false;
	}
	*b = p;
	for (size_t pg = 0; pg < mm / page; pg++, checked++)
		count(&c, page_check(p + pg * page, 2, pg, 2), pg);
	for (size_t pg = mm / page; pg < mm / page + extra; pg++, checked++)
		count(&c, page_check(p + pg * page, 2, pg, 0), pg);
	printf("result reshape: MADV_DONTNEED, realloc, mremap after the kill: "
	       "pages ok %zu of %zu (zeros %zu, other %zu, sigbus %zu, first "
	       "%ld); wrong %zu\n",
	       c.ok, checked, c.zero, c.other, c.sigbus, c.first_bad,
	       checked - c.ok);
	return c.ok == checked;
}

static int run_memory(size_t malloc_mib, size_t mmap_mib)
{
	size_t ml = malloc_mib * MiB, mm = mmap_mib * MiB;
	unsigned char *a = malloc(ml);
	unsigned char *b = mmap(NULL, mm, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bool ok = true;

	if (!a || b == MAP_FAILED) {
		perror("preload-death: allocation");
		return 2;
	}
	memory_prepare(a, ml / page, 1);
	memory_prepare(b, mm / page, 2);
	say_ready();
	if (wait_go())
		return 2;
	ok &= memory_verify("malloc", a, ml / page, 1);
	ok &= memory_verify("mmap", b, mm / page, 2);
	ok &= memory_new(32);
	ok &= memory_reshape(&a, ml, &b, mm);
	free(a);
	if (munmap(b, 2 * mm)) {
		printf("result munmap: %s; wrong 1\n", strerror(errno));
		ok = false;
	}
	puts(ok ? "PASS" : "FAIL");
	return ok ? 0 : 1;
}

/* --- fork --- */

/* The fork modes' memory: region 1 malloc'ed, region 2 mmap'ed. */
struct region {
	const char *what;
	unsigned char *m;
	size_t pages;
};

static int regions_alloc(struct region *rg, size_t malloc_mib, size_t mmap_mib)
{
	rg[0] = (struct region){ "malloc", malloc(malloc_mib * MiB),
				 malloc_mib * MiB / page };
	rg[1] = (struct region){ "mmap",
				 mmap(NULL, mmap_mib * MiB,
				      PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
				 mmap_mib * MiB / page };
	if (!rg[0].m || rg[1].m == MAP_FAILED) {
		perror("preload-death: allocation");
		return -1;
	}
	return 0;
}

/* Reads pages [@from, @to) of each region, expecting generation 1. */
static void regions_read(const struct region *rg, bool rest, struct counts *c)
{
	for (unsigned int r = 0; r < 2; r++) {
		size_t half = rg[r].pages / 2;
		size_t from = rest ? half : 0, to = rest ? rg[r].pages : half;

		for (size_t pg = from; pg < to; pg++)
			count(&c[r],
			      page_check(rg[r].m + pg * page, r + 1, pg, 1), pg);
	}
}

static int fork_child(const struct region *rg, bool race)
{
	struct counts first[2] = { { .first_bad = -1 }, { .first_bad = -1 } };
	struct counts rest[2] = { { .first_bad = -1 }, { .first_bad = -1 } };
	bool ok = true;

	regions_read(rg, false, first);
	say_ready();
	if (!race && wait_go())
		return 2;
	regions_read(rg, true, rest);
	if (race && wait_go())
		return 2;
	/* Again: a page that got SIGBUS once must not read zero now. */
	for (unsigned int r = 0; r < 2; r++)
		for (size_t pg = rg[r].pages / 2; pg < rg[r].pages; pg++) {
			enum verdict v = page_check(rg[r].m + pg * page, r + 1,
						    pg, 1);

			if (v == V_ZERO || v == V_OTHER)
				count(&rest[r], v, pg);
		}
	for (unsigned int r = 0; r < 2; r++) {
		size_t half = rg[r].pages / 2;
		size_t wrong = half - first[r].ok + rest[r].zero + rest[r].other;

		printf("result child %s: first half read before the kill: ok "
		       "%zu of %zu (zeros %zu, other %zu, sigbus %zu); second "
		       "half after: right bytes %zu, sigbus %zu, zeros %zu, "
		       "other %zu (first %ld); wrong %zu\n",
		       rg[r].what, first[r].ok, half, first[r].zero,
		       first[r].other, first[r].sigbus, rest[r].ok,
		       rest[r].sigbus, rest[r].zero, rest[r].other,
		       rest[r].first_bad, wrong);
		ok &= !wrong &&
		      rest[r].ok + rest[r].sigbus == rg[r].pages - half;
	}
	fflush(stdout);
	return ok ? 0 : 1;
}

/*
 * The parent keeps writing every third page of each region until the
 * child is done, before and after the kill (the child must not see it);
 * then it checks its own pages.
 */
static int fork_parent(const struct region *rg, pid_t pid)
{
	unsigned int gen = 1;
	bool ok = true;
	int status;

	for (;;) {
		pid_t w;

		gen = gen == 2 ? 3 : 2;
		for (unsigned int r = 0; r < 2; r++)
			for (size_t pg = 0; pg < rg[r].pages; pg += 3)
				page_fill(rg[r].m + pg * page, r + 1, pg, gen);
		w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		if (w < 0) {
			perror("preload-death: waitpid");
			return 2;
		}
		usleep(1000);
	}
	for (unsigned int r = 0; r < 2; r++) {
		struct counts c = { .first_bad = -1 };

		for (size_t pg = 0; pg < rg[r].pages; pg++)
			count(&c,
			      page_check(rg[r].m + pg * page, r + 1, pg,
					 pg % 3 ? 1 : gen),
			      pg);
		printf("result parent %s: own pages ok %zu of %zu; wrong %zu\n",
		       rg[r].what, c.ok, rg[r].pages, rg[r].pages - c.ok);
		ok &= c.ok == rg[r].pages;
	}
	printf("result parent: child %s %d; wrong %d\n",
	       WIFEXITED(status) ? "exit" : "signal",
	       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
	       !(WIFEXITED(status) && !WEXITSTATUS(status)));
	ok &= WIFEXITED(status) && !WEXITSTATUS(status);
	puts(ok ? "PASS" : "FAIL");
	return ok ? 0 : 1;
}

/*
 * @after: fork after "go" (the daemon gone), and the child reads it all
 * (it must all be right: nothing is only the daemon's then).  @race: see
 * the top of the file.
 */
static int run_fork(size_t mib, bool after, bool race)
{
	struct region rg[2];
	pid_t pid;

	if (regions_alloc(rg, mib, mib / 2))
		return 2;
	for (unsigned int r = 0; r < 2; r++)
		for (size_t pg = 0; pg < rg[r].pages; pg++)
			page_fill(rg[r].m + pg * page, r + 1, pg, 1);
	if (after) {
		say_ready();
		if (wait_go())
			return 2;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		perror("preload-death: fork");
		return 2;
	}
	if (pid == 0 && after) {
		struct counts c[2] = { { .first_bad = -1 },
				       { .first_bad = -1 } };
		size_t wrong = 0;

		regions_read(rg, false, c);
		regions_read(rg, true, c);
		for (unsigned int r = 0; r < 2; r++) {
			wrong += rg[r].pages - c[r].ok;
			printf("result child %s: forked after the kill: ok %zu "
			       "of %zu (zeros %zu, other %zu, sigbus %zu); "
			       "wrong %zu\n",
			       rg[r].what, c[r].ok, rg[r].pages, c[r].zero,
			       c[r].other, c[r].sigbus, rg[r].pages - c[r].ok);
		}
		fflush(stdout);
		_exit(wrong ? 1 : 0);
	}
	if (pid == 0)
		_exit(fork_child(rg, race));
	return fork_parent(rg, pid);
}

/* --- churn --- */

static atomic_bool churn_stop;
static atomic_size_t churn_rounds, churn_wrong, churn_failed;

static void *churn_main(void *arg)
{
	unsigned int seed = 9;

	(void)arg;
	sigbus_catch();
	while (!atomic_load(&churn_stop)) {
		size_t n = atomic_load(&churn_rounds);
		size_t len = (1 + rand_r(&seed) % 8) * MiB, pages = len / page;
		bool use_mmap = n % 2;
		unsigned char *p;

		if (use_mmap) {
			p = mmap(NULL, len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				p = NULL;
		} else {
			p = malloc(len);
		}
		if (!p) {
			atomic_fetch_add(&churn_failed, 1);
			continue;
		}
		for (size_t pg = 0; pg < pages; pg += 2) {
			if (use_mmap &&
			    page_check(p + pg * page, 9, pg, 0) != V_OK)
				atomic_fetch_add(&churn_wrong, 1);
			page_fill(p + pg * page, 9, pg, 1 + n % 200);
		}
		for (size_t pg = 0; pg < pages; pg += 2)
			if (page_check(p + pg * page, 9, pg, 1 + n % 200) !=
			    V_OK)
				atomic_fetch_add(&churn_wrong, 1);
		if (use_mmap)
			munmap(p, len);
		else
			free(p);
		atomic_fetch_add(&churn_rounds, 1);
	}
	return NULL;
}

static int run_churn(size_t mib)
{
	size_t len = mib * MiB, pages = len / page, r0, r1;
	unsigned char *m = malloc(len);
	struct counts c = { .first_bad = -1 };
	struct timespec t = { .tv_sec = 1 };
	pthread_t th;

	if (!m) {
		perror("preload-death: malloc");
		return 2;
	}
	memory_prepare(m, pages, 1);
	if (pthread_create(&th, NULL, churn_main, NULL)) {
		fputs("preload-death: pthread_create failed\n", stderr);
		return 2;
	}
	while (atomic_load(&churn_rounds) < 20)
		usleep(1000);
	say_ready();
	if (wait_go())
		return 2;
	r0 = atomic_load(&churn_rounds);
	nanosleep(&t, NULL);
	atomic_store(&churn_stop, true);
	pthread_join(th, NULL);
	r1 = atomic_load(&churn_rounds);
	for (size_t pg = 0; pg < pages; pg++)
		count(&c, page_check(m + pg * page, 1, pg, memory_gen(pg)), pg);
	free(m);
	printf("result churn: blocks %zu (%zu after the kill), failed "
	       "allocations %zu, wrong blocks %zu; held pages ok %zu of %zu "
	       "(zeros %zu, other %zu, sigbus %zu); wrong %zu\n",
	       r1, r1 - r0, atomic_load(&churn_failed),
	       atomic_load(&churn_wrong), c.ok, pages, c.zero, c.other,
	       c.sigbus, atomic_load(&churn_wrong) + pages - c.ok);
	if (c.ok == pages && !atomic_load(&churn_wrong) && r1 > r0) {
		puts("PASS");
		return 0;
	}
	puts("FAIL");
	return 1;
}

/*
 * Not about the daemon's death: a reproducer.  A fork child's private
 * memory after MADV_DONTNEED must read zero, as anonymous memory does
 * (under the shim the child's memory is a clone of the parent's cut, and
 * the punched pages are filled again from that cut).
 */
static int run_clone_dontneed(size_t mib)
{
	size_t len = mib * MiB, pages = len / page;
	unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int status;
	pid_t pid;

	if (m == MAP_FAILED) {
		perror("preload-death: mmap");
		return 2;
	}
	for (size_t pg = 0; pg < pages; pg++)
		page_fill(m + pg * page, 1, pg, 1);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct counts c = { .first_bad = -1 };

		for (size_t pg = 0; pg < pages / 2; pg++)
			count(&c, page_check(m + pg * page, 1, pg, 1), pg);
		madvise(m, len, MADV_DONTNEED);
		for (size_t pg = 0; pg < pages; pg++)
			count(&c, page_check(m + pg * page, 1, pg, 0), pg);
		printf("result clone-dontneed: child, %zu pages (half read "
		       "before) after MADV_DONTNEED: ok %zu, not zero %zu, "
		       "sigbus %zu (first %ld); wrong %zu\n",
		       pages, c.ok - pages / 2, c.other, c.sigbus, c.first_bad,
		       pages + pages / 2 - c.ok);
		fflush(stdout);
		_exit(c.ok == pages + pages / 2 ? 0 : 1);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid) {
		perror("preload-death: fork");
		return 2;
	}
	status = WIFEXITED(status) && !WEXITSTATUS(status);
	puts(status ? "PASS" : "FAIL");
	return status ? 0 : 1;
}

static size_t arg_mib(int argc, char **argv, int i, size_t dflt)
{
	return argc > i ? strtoul(argv[i], NULL, 10) : dflt;
}

int main(int argc, char **argv)
{
	page = (size_t)sysconf(_SC_PAGESIZE);
	sigbus_catch();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "memory"))
		return run_memory(arg_mib(argc, argv, 2, 256),
				  arg_mib(argc, argv, 3, 64));
	if (argc >= 2 && !strcmp(argv[1], "fork"))
		return run_fork(arg_mib(argc, argv, 2, 64), false,
				argc > 3 && !strcmp(argv[3], "race"));
	if (argc >= 2 && !strcmp(argv[1], "fork-after"))
		return run_fork(arg_mib(argc, argv, 2, 64), true, false);
	if (argc >= 2 && !strcmp(argv[1], "churn"))
		return run_churn(arg_mib(argc, argv, 2, 64));
	if (argc >= 2 && !strcmp(argv[1], "clone-dontneed"))
		return run_clone_dontneed(arg_mib(argc, argv, 2, 8));
	fprintf(stderr,
		"usage: %s memory [MALLOC_MIB [MMAP_MIB]] | "
		"fork [MIB [race]] | fork-after [MIB] | churn [MIB] | "
		"clone-dontneed [MIB]\n",
		argv[0]);
	return 2;
}
