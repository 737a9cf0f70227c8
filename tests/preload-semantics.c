// SPDX-License-Identifier: MIT
/*
 * preload-semantics: the memory semantics a program relies on, exercised
 * one section at a time, with a deterministic transcript on stdout
 * (checksums, values, errno names: never an address or a time).
 *
 * It tests Linux, not upager: it passes on its own, and test-preload.sh
 * runs it again under LD_PRELOAD=libupager-preload.so and requires the same
 * transcript, byte for byte, and the same exit status (issue 9).
 *
 * Usage: preload-semantics [SECTION...]   (default: every section)
 *        preload-semantics --list
 * Exit 0 when every section matched its expectations, 1 otherwise; a
 * failing section prints "FAIL" with what differed on its line.
 *
 * Internal entries (the program execs itself):
 *        --exec-child LABEL        allocate, fill, print a checksum line
 *        --shm-child NAME SIZE     open a POSIX shm name, check the
 *                                  parent's half, write the other half
 *        --fork-connect US         fork while another thread makes the
 *                                  first large allocation (under the
 *                                  shim: the first connection), US
 *                                  microseconds into it
 *        --exit-together           a shared mapping, a fork, both exit
 *                                  at once (test-preload.sh loops it)
 *        --asan-report             a heap overflow for AddressSanitizer
 *                                  to report (exit 77 in other builds)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <malloc.h>
#include <pwd.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/mman.h>

#include "cut-writer.h"
#include <sys/stat.h>
#include <sys/wait.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef MADV_FREE
#define MADV_FREE 8
#endif

#define KiB (1024ul)
#define MiB (1024ul * 1024ul)
#define PAGE 4096ul

extern char **environ;

static const char *self_exe;
static bool section_ok;
static char fail_msg[512];

/* ---- helpers ---- */

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;

	if (!section_ok)
		return; /* the first failure of a section is the one shown */
	section_ok = false;
	va_start(ap, fmt);
	vsnprintf(fail_msg, sizeof(fail_msg), fmt, ap);
	va_end(ap);
}

#define EXPECT(cond, ...)                  \
	do {                               \
		if (!(cond))               \
			fail(__VA_ARGS__); \
	} while (0)

static const char *errname(int e)
{
	switch (e) {
	case 0:
		return "0";
	case EINVAL:
		return "EINVAL";
	case ENOMEM:
		return "ENOMEM";
	case EFAULT:
		return "EFAULT";
	case EEXIST:
		return "EEXIST";
	case EBADF:
		return "EBADF";
	case EACCES:
		return "EACCES";
	case EPERM:
		return "EPERM";
	case ENOENT:
		return "ENOENT";
	case EAGAIN:
		return "EAGAIN";
	case ENODEV:
		return "ENODEV";
	case EOVERFLOW:
		return "EOVERFLOW";
	default:
		return "E?";
	}
}

/*
 * AddressSanitizer's malloc is first (a sanitizer build): the shim's
 * arenas are not used, ASan warns about stacks it did not make, and
 * (GCC 12's) it takes no lock at fork: a fork child that allocates while
 * another thread was inside ASan's allocator can deadlock.
 */
extern void __asan_init(void) __attribute__((weak));

static bool asan(void)
{
	return __asan_init != NULL;
}

/* Word i of the pattern @seed: never zero. */
static uint64_t pat(uint64_t seed, size_t i)
{
	return mix(seed * 0x9e3779b97f4a7c15ull + i) | 1;
}

static void fill(void *p, size_t n, uint64_t seed)
{
	uint64_t *w = p;

	for (size_t i = 0; i < n / 8; i++)
		w[i] = pat(seed, i);
}

/*
 * true when [p, p + n) holds the pattern @seed from byte @off of it: the
 * bytes that fill(p - off, ..., seed) wrote there
 */
static bool check_at(const void *p, size_t n, uint64_t seed, size_t off)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < n / 8; i++)
		if (w[i] != pat(seed, off / 8 + i))
			return false;
	return true;
}

static bool check(const void *p, size_t n, uint64_t seed)
{
	return check_at(p, n, seed, 0);
}

static bool is_zero(const void *p, size_t n)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < n / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* A checksum of @n bytes (n a multiple of 8), printed in transcripts. */
static uint64_t sum(const void *p, size_t n)
{
	const uint64_t *w = p;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n / 8; i++)
		h = (h ^ w[i]) * 0x100000001b3ull;
	return h;
}

/* Probing an address: 0 it worked, else the signal it raised. */
static __thread sigjmp_buf probe_jb;
static __thread volatile int probe_armed;

static void probe_handler(int sig)
{
	if (!probe_armed) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	siglongjmp(probe_jb, sig);
}

static void probe_init(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = probe_handler;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

static int probe(void *addr, bool write)
{
	volatile char *p = addr;
	int sig;

	sig = sigsetjmp(probe_jb, 1);
	if (sig) {
		probe_armed = 0;
		return sig;
	}
	probe_armed = 1;
	if (write)
		*p = *p;
	else
		(void)*p;
	probe_armed = 0;
	return 0;
}

static const char *signame(int s)
{
	return s == 0	    ? "ok" :
	       s == SIGSEGV ? "SIGSEGV" :
	       s == SIGBUS  ? "SIGBUS" :
			      "SIG?";
}

static void *map_anon(size_t len, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | flags,
		       -1, 0);

	if (p == MAP_FAILED) {
		fail("mmap(%zu) failed: %s", len, errname(errno));
		return NULL;
	}
	return p;
}

/* fork with stdout flushed, so that nothing buffered is printed twice */
static pid_t xfork(void)
{
	fflush(stdout);
	fflush(stderr);
	return fork();
}

/* The exit code of @pid; 128 + signal when it was killed. */
static int wait_code(pid_t pid)
{
	int st;

	if (pid < 0)
		return -1;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return -1;
}

static void xwrite_byte(int fd, char c)
{
	while (write(fd, &c, 1) < 0 && errno == EINTR)
		;
}

static char xread_byte(int fd)
{
	char c = 0;

	while (read(fd, &c, 1) < 0 && errno == EINTR)
		;
	return c;
}

/* ---- sections ---- */

static void s_anon(void)
{
	static const size_t sizes[] = { 1 * MiB, 3 * MiB + 4 * KiB, 16 * MiB,
					64 * MiB };

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];
		char *p = map_anon(n, MAP_PRIVATE);

		if (!p)
			return;
		bool zero = is_zero(p, n);

		fill(p, n, 100 + k);
		printf("anon %zu KiB: zero=%s sum=%016llx pattern=%s\n", n / KiB,
		       zero ? "yes" : "no", (unsigned long long)sum(p, n),
		       check(p, n, 100 + k) ? "ok" : "bad");
		EXPECT(zero, "anon %zu: not zero", n);
		munmap(p, n);
	}
}

static void s_shared_anon(void)
{
	size_t n = 8 * MiB;
	char *p = map_anon(n, MAP_SHARED);
	int to_child[2], to_parent[2];

	if (!p)
		return;
	EXPECT(is_zero(p, n), "not zero");
	fill(p, n / 2, 1); /* before the fork: the child sees it */
	if (pipe(to_child) || pipe(to_parent)) {
		fail("pipe");
		return;
	}
	pid_t pid = xfork();
	if (pid == 0) {
		if (!check(p, n / 2, 1))
			_exit(2);
		fill(p + n / 2, n / 2, 2);
		xwrite_byte(to_parent[1], 'w');
		xread_byte(to_child[0]); /* the parent wrote the first half */
		_exit(check(p, n / 2, 3) ? 0 : 3);
	}
	xread_byte(to_parent[0]);
	bool seen = check(p + n / 2, n / 2, 2);
	fill(p, n / 2, 3);
	xwrite_byte(to_child[1], 'g');
	int code = wait_code(pid);
	printf("shared-anon: parent sees child's write=%s child sees parent's "
	       "write=%s (child exit %d) sum=%016llx\n",
	       seen ? "yes" : "no", code == 0 ? "yes" : "no", code,
	       (unsigned long long)sum(p, n));
	EXPECT(seen && code == 0, "sharing broken");
	close(to_child[0]), close(to_child[1]);
	close(to_parent[0]), close(to_parent[1]);
	munmap(p, n);
}

/* The cut at fork (cut-writer.h). */
static void s_fork_cut(void)
{
	size_t bytes = 32 * MiB;
	struct writer wr = { .n = bytes / 8 };
	int ok = 0, rounds = 5;

	wr.w = map_anon(bytes, MAP_PRIVATE);
	if (!wr.w)
		return;
	pthread_t t;
	pthread_create(&t, NULL, writer_main, &wr);
	for (int r = 0; r < rounds; r++) {
		uint64_t s0 = atomic_load(&wr.sweeps);

		while (atomic_load(&wr.sweeps) < s0 + 2)
			sched_yield();
		pid_t pid = xfork();
		if (pid == 0) {
			long bad = cut_check(wr.w, wr.n);

			if (bad >= 0)
				fprintf(stderr, "fork-cut: word %ld\n", bad);
			_exit(bad < 0 ? 0 : 1);
		}
		if (wait_code(pid) == 0)
			ok++;
	}
	atomic_store(&wr.stop, true);
	pthread_join(t, NULL);
	printf("fork-cut: %d of %d children saw one instant of a 32 MiB range "
	       "being written\n",
	       ok, rounds);
	EXPECT(ok == rounds, "a child saw a torn range");
	munmap((void *)wr.w, bytes);
}

static void s_fork_private(void)
{
	size_t n = 16 * MiB;
	char *p = map_anon(n, MAP_PRIVATE);
	int to_child[2], to_parent[2];

	if (!p)
		return;
	fill(p, n, 11);
	if (pipe(to_child) || pipe(to_parent)) {
		fail("pipe");
		return;
	}
	pid_t pid = xfork();
	if (pid == 0) {
		if (!check(p, n, 11))
			_exit(2);
		fill(p, n / 2, 12);
		xwrite_byte(to_parent[1], 'w');
		xread_byte(to_child[0]);
		/* the parent has written since: not here */
		_exit(check(p, n / 2, 12) &&
				      check_at(p + n / 2, n / 2, 11, n / 2) ?
			      0 :
			      3);
	}
	xread_byte(to_parent[0]);
	bool parent_kept = check(p, n, 11);
	fill(p + n / 4, n / 2, 13);
	xwrite_byte(to_child[1], 'g');
	int code = wait_code(pid);
	printf("fork-private: child saw the fork's memory and kept its writes="
	       "%s, parent unaffected by the child=%s sum=%016llx\n",
	       code == 0 ? "yes" : "no", parent_kept ? "yes" : "no",
	       (unsigned long long)sum(p, n));
	EXPECT(code == 0 && parent_kept, "child exit %d, parent_kept %d", code,
	       parent_kept);
	close(to_child[0]), close(to_child[1]);
	close(to_parent[0]), close(to_parent[1]);
	munmap(p, n);
}

static void s_munmap(void)
{
	size_t n = 4 * MiB, pages = n / PAGE;
	char *p = map_anon(n, MAP_PRIVATE);

	if (!p)
		return;
	fill(p, n, 21);
	/* holes: the first page, pages 100-199, the last 10 */
	int r1 = munmap(p, PAGE);
	int r2 = munmap(p + 100 * PAGE, 100 * PAGE);
	int r3 = munmap(p + (pages - 10) * PAGE, 10 * PAGE);
	EXPECT(!r1 && !r2 && !r3, "munmap failed");
	int holes = 0, readable = 0, intact = 0;
	for (size_t i = 0; i < pages; i++) {
		bool hole = i == 0 || (i >= 100 && i < 200) || i >= pages - 10;
		int s = probe(p + i * PAGE, false);

		if (hole) {
			if (s == SIGSEGV)
				holes++;
		} else if (s == 0) {
			readable++;
			const uint64_t *w = (const uint64_t *)(p + i * PAGE);

			if (w[0] == pat(21, i * PAGE / 8) &&
			    w[PAGE / 8 - 1] == pat(21, (i + 1) * PAGE / 8 - 1))
				intact++;
		}
	}
	printf("munmap: holes SIGSEGV %d/111, rest readable %d/%zu, "
	       "intact %d\n",
	       holes, readable, pages - 111, intact);
	EXPECT(holes == 111 && readable == (int)(pages - 111) &&
		       intact == readable,
	       "munmap of parts");
	/* the pieces left go one by one */
	EXPECT(!munmap(p + PAGE, 99 * PAGE), "munmap piece");
	EXPECT(!munmap(p + 200 * PAGE, (pages - 210) * PAGE), "munmap piece");
	EXPECT(probe(p + 150 * PAGE + PAGE, false) == SIGSEGV, "still there");
}

static void s_mremap(void)
{
	size_t n = 4 * MiB;
	char *a = map_anon(n, MAP_PRIVATE);

	if (!a)
		return;
	fill(a, n, 31);

	/* grow, may move */
	char *b = mremap(a, n, 2 * n, MREMAP_MAYMOVE);
	EXPECT(b != MAP_FAILED, "grow: %s", errname(errno));
	if (b == MAP_FAILED)
		return;
	bool g_old = check(b, n, 31), g_new = is_zero(b + n, n);
	fill(b + n, n, 32);
	printf("mremap grow 4->8 MiB: old kept=%s new zero=%s\n",
	       g_old ? "yes" : "no", g_new ? "yes" : "no");
	EXPECT(g_old && g_new, "grow");

	/* grow in place, into a hole we made */
	char *c = map_anon(4 * n, MAP_PRIVATE);
	if (!c)
		return;
	fill(c, n, 33);
	munmap(c + n, 3 * n);
	char *c2 = mremap(c, n, 3 * n, 0);
	bool in_place = c2 == c;
	printf("mremap grow in place: %s kept=%s tail zero=%s\n",
	       in_place ? "same address" : errname(errno),
	       in_place && check(c, n, 33) ? "yes" : "no",
	       in_place && is_zero(c + n, 2 * n) ? "yes" : "no");
	EXPECT(in_place && check(c, n, 33) && is_zero(c + n, 2 * n),
	       "grow in place");
	/* growing without MAYMOVE where something is in the way: ENOMEM */
	char *blk = mmap(c + 3 * n, PAGE, PROT_READ,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
			 0);
	errno = 0;
	void *r = mremap(c, 3 * n, 4 * n, 0);
	printf("mremap grow blocked: %s\n",
	       r == MAP_FAILED ? errname(errno) : "moved?");
	EXPECT(r == MAP_FAILED && errno == ENOMEM, "blocked grow");
	if (blk != MAP_FAILED)
		munmap(blk, PAGE);
	munmap(c, 3 * n);

	/* shrink: in place, the tail gone */
	char *s = mremap(b, 2 * n, n / 2, 0);
	EXPECT(s == b, "shrink moved or failed");
	if (s != b)
		return;
	bool s_kept = check(s, n / 2, 31);
	int s_tail = probe(s + n / 2, false);
	printf("mremap shrink 8->2 MiB: kept=%s past the end=%s\n",
	       s_kept ? "yes" : "no", signame(s_tail));
	EXPECT(s_kept && s_tail == SIGSEGV, "shrink");

	/* move to a fixed place inside a reservation */
	char *resv = mmap(NULL, 4 * n, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (resv == MAP_FAILED) {
		fail("reserve");
		return;
	}
	char *m = mremap(s, n / 2, n / 2, MREMAP_MAYMOVE | MREMAP_FIXED,
			 resv + n);
	EXPECT(m == resv + n, "fixed move");
	if (m != resv + n)
		return;
	bool m_kept = check(m, n / 2, 31);
	int m_old = probe(s, false), m_around = probe(resv, false);
	printf("mremap MREMAP_FIXED: kept=%s old=%s reservation=%s\n",
	       m_kept ? "yes" : "no", signame(m_old), signame(m_around));
	EXPECT(m_kept && m_old == SIGSEGV && m_around == SIGSEGV, "fixed move");

	/* DONTUNMAP: the old range stays, reading zeros (private anon) */
	char *d = mremap(m, n / 2, n / 2, MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
			 NULL);
	if (d == MAP_FAILED) {
		printf("mremap MREMAP_DONTUNMAP: %s\n", errname(errno));
		fail("dontunmap: %s", errname(errno));
	} else {
		bool d_kept = check(d, n / 2, 31);
		int d_old = probe(m, false);
		bool d_zero = d_old == 0 && is_zero(m, n / 2);
		printf("mremap MREMAP_DONTUNMAP: new kept=%s old %s zero=%s\n",
		       d_kept ? "yes" : "no", signame(d_old),
		       d_zero ? "yes" : "no");
		EXPECT(d_kept && d_zero, "dontunmap");
		fill(m, PAGE, 34); /* the old range is still private memory */
		EXPECT(check(m, PAGE, 34) && check(d, PAGE, 31),
		       "dontunmap old range write");
		munmap(d, n / 2);
	}
	munmap(resv, 4 * n);

	/* shared anonymous: a move keeps it shared with a child */
	char *sh = map_anon(n, MAP_SHARED);
	if (!sh)
		return;
	fill(sh, n, 35);
	char *sh2 = mremap(sh, n, n, MREMAP_MAYMOVE | MREMAP_FIXED,
			   mmap(NULL, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0));
	EXPECT(sh2 != MAP_FAILED && check(sh2, n, 35), "shared move");
	pid_t pid = xfork();
	if (pid == 0) {
		fill(sh2, PAGE, 36);
		_exit(0);
	}
	wait_code(pid);
	printf("mremap shared move: kept=%s still shared=%s\n",
	       check_at(sh2 + PAGE, n - PAGE, 35, PAGE) ? "yes" : "no",
	       check(sh2, PAGE, 36) ? "yes" : "no");
	EXPECT(check(sh2, PAGE, 36), "shared move: not shared");
	/* shared anonymous memory grown past its object: SIGBUS */
	char *sh3 = mremap(sh2, n, 2 * n, MREMAP_MAYMOVE);
	if (sh3 != MAP_FAILED) {
		int sb = probe(sh3 + n + PAGE, false);
		printf("mremap shared grow: old kept=%s new part=%s\n",
		       check_at(sh3 + PAGE, n - PAGE, 35, PAGE) ? "yes" : "no",
		       signame(sb));
		EXPECT(sb == SIGBUS, "shared grow");
		munmap(sh3, 2 * n);
	} else {
		printf("mremap shared grow: %s\n", errname(errno));
		fail("shared grow");
	}
}

static void s_madvise(void)
{
	size_t n = 8 * MiB;
	char *p = map_anon(n, MAP_PRIVATE);

	if (!p)
		return;
	fill(p, n, 41);
	int r = madvise(p + n / 4, n / 2, MADV_DONTNEED);
	bool z = is_zero(p + n / 4, n / 2);
	bool rest = check(p, n / 4, 41) &&
		    check_at(p + 3 * n / 4, n / 4, 41, 3 * n / 4);
	printf("madvise DONTNEED private: ret=%d range zero=%s rest kept=%s\n",
	       r, z ? "yes" : "no", rest ? "yes" : "no");
	EXPECT(r == 0 && z && rest, "dontneed");
	fill(p, n, 42);
	EXPECT(check(p, n, 42), "write after dontneed");

	/*
	 * MADV_FREE: the kernel frees the pages lazily; until it does, they
	 * read back as they were.  Each page is one or the other, and a
	 * write after the advice sticks.
	 */
	r = madvise(p, n, MADV_FREE);
	int bad = 0;
	for (size_t i = 0; i < n / PAGE; i++) {
		const char *pg = p + i * PAGE;
		const uint64_t *w = (const uint64_t *)pg;

		if (!is_zero(pg, PAGE) && w[0] != pat(42, i * PAGE / 8))
			bad++;
	}
	fill(p, n / 2, 43);
	printf("madvise FREE private: ret=%d pages neither old nor zero=%d "
	       "write after it kept=%s\n",
	       r, bad, check(p, n / 2, 43) ? "yes" : "no");
	EXPECT(r == 0 && bad == 0 && check(p, n / 2, 43), "free");
	munmap(p, n);

	/* shared anonymous: DONTNEED drops the mapping, not the data */
	char *s = map_anon(n, MAP_SHARED);
	if (!s)
		return;
	fill(s, n, 44);
	r = madvise(s, n, MADV_DONTNEED);
	printf("madvise DONTNEED shared: ret=%d data kept=%s\n", r,
	       check(s, n, 44) ? "yes" : "no");
	EXPECT(r == 0 && check(s, n, 44), "shared dontneed");
	munmap(s, n);

	/* WILLNEED, SEQUENTIAL, HUGEPAGE: hints, nothing changes */
	p = map_anon(n, MAP_PRIVATE);
	if (!p)
		return;
	fill(p, n, 45);
	int h1 = madvise(p, n, MADV_WILLNEED);
	int h2 = madvise(p, n, MADV_SEQUENTIAL);
	int h3 = madvise(p, n, MADV_NORMAL);
	printf("madvise hints: ret=%d,%d,%d kept=%s\n", h1, h2, h3,
	       check(p, n, 45) ? "yes" : "no");
	EXPECT(!h1 && !h2 && !h3 && check(p, n, 45), "hints");
	munmap(p, n);
}

static void s_fork_advice(void)
{
	size_t n = 4 * MiB;
	char *keep = map_anon(n, MAP_PRIVATE);
	char *gone = map_anon(n, MAP_PRIVATE);
	char *wipe = map_anon(n, MAP_PRIVATE);

	if (!keep || !gone || !wipe)
		return;
	fill(keep, n, 51);
	fill(gone, n, 52);
	fill(wipe, n, 53);
	int r1 = madvise(gone, n, MADV_DONTFORK);
	int r2 = madvise(wipe, n, MADV_WIPEONFORK);
	pid_t pid = xfork();
	if (pid == 0) {
		int code = 0;

		if (!check(keep, n, 51))
			code |= 1;
		if (probe(gone, false) != SIGSEGV ||
		    probe(gone + n - PAGE, false) != SIGSEGV)
			code |= 2;
		if (!is_zero(wipe, n))
			code |= 4;
		fill(wipe, PAGE, 54); /* still usable memory */
		if (!check(wipe, PAGE, 54))
			code |= 8;
		_exit(code);
	}
	int code = wait_code(pid);
	bool parent = check(gone, n, 52) && check(wipe, n, 53);
	printf("madvise DONTFORK/WIPEONFORK: ret=%d,%d child: kept=%s "
	       "DONTFORK range gone=%s WIPEONFORK zero=%s; parent kept=%s\n",
	       r1, r2, code & 1 ? "no" : "yes", code & 2 ? "no" : "yes",
	       code & 4 ? "no" : "yes", parent ? "yes" : "no");
	EXPECT(!r1 && !r2 && code == 0 && parent, "child code %d", code);
	/* DOFORK undoes it */
	madvise(gone, n, MADV_DOFORK);
	pid = xfork();
	if (pid == 0)
		_exit(check(gone, n, 52) ? 0 : 1);
	code = wait_code(pid);
	printf("madvise DOFORK: child sees the range=%s\n",
	       code == 0 ? "yes" : "no");
	EXPECT(code == 0, "dofork");
	munmap(keep, n);
	munmap(gone, n);
	munmap(wipe, n);
}

static void s_mprotect(void)
{
	size_t n = 4 * MiB;
	char *p = map_anon(n, MAP_PRIVATE);

	if (!p)
		return;
	fill(p, n, 61);
	int r = mprotect(p + PAGE, n - 2 * PAGE, PROT_READ);
	int w_ro = probe(p + 2 * PAGE, true);
	int r_ro = probe(p + 2 * PAGE, false);
	int w_edge = probe(p, true);
	int r2 = mprotect(p + PAGE, PAGE, PROT_NONE);
	int r_none = probe(p + PAGE, false);
	int r3 = mprotect(p, n, PROT_READ | PROT_WRITE);
	fill(p, n / 2, 62);
	bool kept = check_at(p + n / 2, n / 2, 61, n / 2) && check(p, n / 2, 62);
	printf("mprotect: ret=%d,%d,%d write to PROT_READ=%s read=%s "
	       "write outside=%s read PROT_NONE=%s back to rw kept=%s\n",
	       r, r2, r3, signame(w_ro), signame(r_ro), signame(w_edge),
	       signame(r_none), kept ? "yes" : "no");
	EXPECT(!r && !r2 && !r3 && w_ro == SIGSEGV && r_ro == 0 &&
		       w_edge == 0 && r_none == SIGSEGV && kept,
	       "mprotect");
	munmap(p, n);

	/* glibc's arenas: reserved PROT_NONE, opened piece by piece */
	size_t res = 64 * MiB;
	char *a = mmap(NULL, res, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (a == MAP_FAILED) {
		fail("reserve");
		return;
	}
	int before = probe(a, false);
	int o1 = mprotect(a, 2 * MiB, PROT_READ | PROT_WRITE);
	bool z1 = is_zero(a, 2 * MiB);
	fill(a, 2 * MiB, 63);
	int o2 = mprotect(a + 2 * MiB, 6 * MiB, PROT_READ | PROT_WRITE);
	bool z2 = is_zero(a + 2 * MiB, 6 * MiB);
	fill(a + 2 * MiB, 6 * MiB, 64);
	int beyond = probe(a + 8 * MiB, false);
	printf("mprotect reservation: before=%s opened ret=%d,%d zero=%s,%s "
	       "beyond=%s sums=%016llx,%016llx\n",
	       signame(before), o1, o2, z1 ? "yes" : "no", z2 ? "yes" : "no",
	       signame(beyond), (unsigned long long)sum(a, 2 * MiB),
	       (unsigned long long)sum(a + 2 * MiB, 6 * MiB));
	EXPECT(before == SIGSEGV && !o1 && !o2 && z1 && z2 && beyond == SIGSEGV,
	       "reservation");
	munmap(a, res);
}

static void s_map_fixed(void)
{
	size_t n = 8 * MiB;
	char *p = map_anon(n, MAP_PRIVATE);

	if (!p)
		return;
	fill(p, n, 71);
	char *q = mmap(p + 2 * MiB, 2 * MiB, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	bool at = q == p + 2 * MiB;
	bool zero = at && is_zero(q, 2 * MiB);
	bool around = check(p, 2 * MiB, 71) &&
		      ((const uint64_t *)(p + 4 * MiB))[0] ==
			      pat(71, 4 * MiB / 8);
	printf("MAP_FIXED over a range: at the address=%s new part zero=%s "
	       "around kept=%s\n",
	       at ? "yes" : "no", zero ? "yes" : "no", around ? "yes" : "no");
	EXPECT(at && zero && around, "map fixed");

	/* a shared mapping fixed over private memory */
	char *s = mmap(p + 6 * MiB, MiB, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	bool s_at = s == p + 6 * MiB;
	if (s_at)
		fill(s, MiB, 72);
	pid_t pid = xfork();
	if (pid == 0) {
		if (s_at)
			fill(s, PAGE, 73);
		_exit(0);
	}
	wait_code(pid);
	bool shared = s_at && check(s, PAGE, 73);
	printf("MAP_FIXED shared over private: shared with a child=%s\n",
	       shared ? "yes" : "no");
	EXPECT(shared, "fixed shared");

	errno = 0;
	void *r = mmap(p + MiB, MiB, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	int e1 = r == MAP_FAILED ? errno : 0;
	errno = 0;
	r = mmap(p + n - MiB, 2 * MiB, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	int e2 = r == MAP_FAILED ? errno : 0;
	if (r != MAP_FAILED)
		munmap(r, 2 * MiB);
	bool kept = check(p, 2 * MiB, 71);
	/* into a hole: it works, at that address */
	munmap(p + 4 * MiB, MiB);
	r = mmap(p + 4 * MiB, MiB, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	bool hole = r == p + 4 * MiB && is_zero(r, MiB);
	printf("MAP_FIXED_NOREPLACE: over a range %s, overlapping its end %s, "
	       "range kept=%s, into a hole=%s\n",
	       errname(e1), errname(e2), kept ? "yes" : "no",
	       hole ? "yes" : "no");
	EXPECT(e1 == EEXIST && e2 == EEXIST && kept && hole, "noreplace");
	munmap(p, n);
}

static void s_map_flags(void)
{
	size_t n = 16 * MiB;
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED) {
		fail("populate: %s", errname(errno));
		return;
	}
	bool z = is_zero(p, n);
	fill(p, n, 81);
	printf("MAP_POPULATE: zero=%s sum=%016llx\n", z ? "yes" : "no",
	       (unsigned long long)sum(p, n));
	EXPECT(z, "populate");
	munmap(p, n);

	/* MAP_NORESERVE: a big range, touched sparsely */
	size_t big = 1024 * MiB;
	p = mmap(NULL, big, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		fail("noreserve: %s", errname(errno));
		return;
	}
	uint64_t h = 0;
	bool zero = true;
	for (size_t off = 0; off < big; off += 4 * MiB + PAGE) {
		uint64_t *w = (uint64_t *)(p + off);

		if (*w)
			zero = false;
		*w = pat(82, off);
		h = mix(h ^ *w);
	}
	uint64_t h2 = 0;
	for (size_t off = 0; off < big; off += 4 * MiB + PAGE)
		h2 = mix(h2 ^ *(uint64_t *)(p + off));
	printf("MAP_NORESERVE 1 GiB sparse: zero=%s sum=%016llx read back=%s\n",
	       zero ? "yes" : "no", (unsigned long long)h,
	       h == h2 ? "yes" : "no");
	EXPECT(zero && h == h2, "noreserve");
	munmap(p, big);

	/* below any threshold: small mappings too */
	p = map_anon(64 * KiB, MAP_PRIVATE);
	if (!p)
		return;
	z = is_zero(p, 64 * KiB);
	fill(p, 64 * KiB, 83);
	printf("small anon 64 KiB: zero=%s sum=%016llx\n", z ? "yes" : "no",
	       (unsigned long long)sum(p, 64 * KiB));
	munmap(p, 64 * KiB);

	/* MAP_STACK, MAP_GROWSDOWN pass through: still plain memory */
	p = mmap(NULL, 2 * MiB, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	EXPECT(p != MAP_FAILED, "stack");
	if (p != MAP_FAILED) {
		z = is_zero(p, 2 * MiB);
		fill(p, 2 * MiB, 84);
		printf("MAP_STACK: zero=%s pattern=%s\n", z ? "yes" : "no",
		       check(p, 2 * MiB, 84) ? "ok" : "bad");
		munmap(p, 2 * MiB);
	}
}

struct errcase {
	const char *name;
	long ret;
	int err;
	int want_err; /* 0: must succeed */
};

static void s_errno(void)
{
	struct errcase c[32];
	int nc = 0;
	char *p = map_anon(4 * MiB, MAP_PRIVATE);
	char *unmapped;

	if (!p)
		return;
	/* an address range known to be free */
	unmapped = map_anon(4 * MiB, MAP_PRIVATE);
	munmap(unmapped, 4 * MiB);

#define TRY(nm, want, expr)                                        \
	do {                                                       \
		errno = 0;                                         \
		long r_ = (long)(expr);                            \
		c[nc++] = (struct errcase){ nm, r_, errno, want }; \
	} while (0)
#define MMAP_RC(x) ((x) == MAP_FAILED ? -1L : 0L)
	TRY("mmap len 0", EINVAL,
	    MMAP_RC(mmap(NULL, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			 0)));
	TRY("mmap len 2^62", ENOMEM,
	    MMAP_RC(mmap(NULL, 1ul << 62, PROT_READ,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)));
	TRY("mmap no type", EINVAL,
	    MMAP_RC(mmap(NULL, MiB, PROT_READ, MAP_ANONYMOUS, -1, 0)));
	TRY("mmap fixed unaligned", EINVAL,
	    MMAP_RC(mmap(p + 1, MiB, PROT_READ,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)));
	TRY("mmap bad fd", EBADF,
	    MMAP_RC(mmap(NULL, MiB, PROT_READ, MAP_PRIVATE, 12345, 0)));
	TRY("mmap anon offset unaligned", EINVAL,
	    MMAP_RC(mmap(NULL, MiB, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			 1)));
	TRY("munmap unaligned", EINVAL, munmap(p + 1, PAGE));
	TRY("munmap len 0", EINVAL, munmap(p, 0));
	TRY("munmap unmapped", 0, munmap(unmapped, MiB));
	TRY("mremap unaligned", EINVAL,
	    MMAP_RC(mremap(p + 1, PAGE, 2 * PAGE, MREMAP_MAYMOVE)));
	TRY("mremap new len 0", EINVAL, MMAP_RC(mremap(p, PAGE, 0, 0)));
	TRY("mremap unmapped", EFAULT,
	    MMAP_RC(mremap(unmapped, PAGE, 2 * PAGE, MREMAP_MAYMOVE)));
	TRY("mremap fixed without maymove", EINVAL,
	    MMAP_RC(mremap(p, PAGE, PAGE, MREMAP_FIXED, unmapped)));
	TRY("mremap dontunmap size change", EINVAL,
	    MMAP_RC(mremap(p, PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
			   NULL)));
	TRY("mremap bad flags", EINVAL, MMAP_RC(mremap(p, PAGE, PAGE, 0x100)));
	TRY("madvise unaligned", EINVAL, madvise(p + 1, PAGE, MADV_DONTNEED));
	TRY("madvise bad advice", EINVAL, madvise(p, PAGE, 12345));
	TRY("madvise unmapped", ENOMEM, madvise(unmapped, PAGE, MADV_DONTNEED));
	TRY("madvise len 0", 0, madvise(p, 0, MADV_DONTNEED));
	TRY("mprotect unaligned", EINVAL, mprotect(p + 1, PAGE, PROT_READ));
	TRY("mprotect unmapped", ENOMEM, mprotect(unmapped, PAGE, PROT_READ));
	TRY("mprotect bad prot", EINVAL, mprotect(p, PAGE, 0x1000));
	/* (Not "mprotect over a range partly unmapped", nor what such a
	 * failed mprotect leaves changed: mprotect is not interposed, and
	 * whether the hole next to p is still free depends on who mapped
	 * what meanwhile, a sanitizer or glibc's malloc.) */
#undef TRY
#undef MMAP_RC
	int bad = 0;
	for (int i = 0; i < nc; i++) {
		bool okc = c[i].want_err ?
				   c[i].ret == -1 && c[i].err == c[i].want_err :
				   c[i].ret == 0;

		printf("errno %s: ret=%ld errno=%s%s\n", c[i].name, c[i].ret,
		       c[i].ret == -1 ? errname(c[i].err) : "-",
		       okc ? "" : " (unexpected)");
		if (!okc)
			bad++;
	}
	EXPECT(bad == 0, "%d unexpected", bad);
	mprotect(p, 4 * MiB, PROT_READ | PROT_WRITE);
	/* the memory the bad calls were aimed at is untouched */
	fill(p, 4 * MiB, 91);
	EXPECT(check(p, 4 * MiB, 91), "after errors");
	munmap(p, 4 * MiB);
}

struct thr {
	int id;
	int errors;
	uint64_t h;
};

static void *map_thread(void *arg)
{
	struct thr *t = arg;
	uint64_t rnd = mix(t->id + 1);

	for (int it = 0; it < 40; it++) {
		rnd = mix(rnd);
		size_t pages = 256 + rnd % 512; /* 1 MiB to 3 MiB */
		size_t n = pages * PAGE;
		char *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED) {
			t->errors++;
			continue;
		}
		for (size_t i = 0; i < pages; i++) {
			uint64_t *w = (uint64_t *)(p + i * PAGE);

			if (w[0] || w[PAGE / 8 - 1])
				t->errors++;
			w[0] = pat(t->id * 1000 + it, i);
		}
		/* a hole in the middle, then the rest */
		size_t lo = pages / 3, hi = 2 * pages / 3;
		if (munmap(p + lo * PAGE, (hi - lo) * PAGE))
			t->errors++;
		for (size_t i = 0; i < pages; i++) {
			if (i >= lo && i < hi)
				continue;
			uint64_t v = *(uint64_t *)(p + i * PAGE);

			if (v != pat(t->id * 1000 + it, i))
				t->errors++;
			t->h = mix(t->h ^ v);
		}
		if (munmap(p, lo * PAGE) ||
		    munmap(p + hi * PAGE, (pages - hi) * PAGE))
			t->errors++;
	}
	return NULL;
}

static void s_threads(void)
{
	pthread_t tid[8];
	struct thr t[8];
	uint64_t h = 0;
	int errors = 0;

	for (int i = 0; i < 8; i++) {
		t[i] = (struct thr){ .id = i };
		pthread_create(&tid[i], NULL, map_thread, &t[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(tid[i], NULL);
		errors += t[i].errors;
		h ^= mix(t[i].h + i);
	}
	printf("threads: 8 x 40 mmap/touch/munmap of parts: errors=%d "
	       "sum=%016llx\n",
	       errors, (unsigned long long)h);
	EXPECT(errors == 0, "threads");
}

static void *malloc_thread(void *arg)
{
	struct thr *t = arg;
	size_t n = 100 * MiB;
	char *p = malloc(n);

	if (!p) {
		t->errors++;
		return NULL;
	}
	fill(p, n, 200 + t->id);
	t->h = sum(p, n);
	if (!check(p, n, 200 + t->id))
		t->errors++;
	free(p);
	/* arenas: many mid-sized blocks */
	enum { NB = 512 };
	static __thread char *blk[NB];
	for (int i = 0; i < NB; i++) {
		size_t sz = 1024 + (mix(t->id * NB + i) % (96 * KiB));

		sz &= ~7ul;
		blk[i] = malloc(sz);
		if (!blk[i]) {
			t->errors++;
			continue;
		}
		fill(blk[i], sz, t->id * NB + i);
	}
	for (int i = 0; i < NB; i++) {
		size_t sz = (1024 + (mix(t->id * NB + i) % (96 * KiB))) & ~7ul;

		if (blk[i] && !check(blk[i], sz, t->id * NB + i))
			t->errors++;
		if (blk[i])
			t->h = mix(t->h ^ sum(blk[i], sz));
		free(blk[i]);
	}
	return NULL;
}

static void s_malloc(void)
{
	pthread_t tid[4];
	struct thr t[4];
	int errors = 0;

	for (int i = 0; i < 4; i++) {
		t[i] = (struct thr){ .id = i };
		pthread_create(&tid[i], NULL, malloc_thread, &t[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(tid[i], NULL);
	for (int i = 0; i < 4; i++) {
		errors += t[i].errors;
		printf("malloc thread %d: 100 MiB and 512 blocks: sum=%016llx\n",
		       i, (unsigned long long)t[i].h);
	}
	EXPECT(errors == 0, "malloc: %d errors", errors);
}

/* The image that --exec-child runs: its own allocation, its own line. */
static int exec_child(const char *label)
{
	size_t n = 24 * MiB;
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *m = malloc(8 * MiB);

	if (p == MAP_FAILED || !m)
		return 2;
	bool z = is_zero(p, n);
	fill(p, n, 300);
	fill(m, 8 * MiB, 301);
	printf("exec child (%s): zero=%s sum=%016llx,%016llx\n", label,
	       z ? "yes" : "no", (unsigned long long)sum(p, n),
	       (unsigned long long)sum(m, 8 * MiB));
	fflush(stdout);
	free(m);
	munmap(p, n);
	return z ? 0 : 1;
}

/* vfork + execlp, in a frame of its own (vfork's return twice) */
static __attribute__((noinline)) int vfork_execlp(void)
{
	pid_t pid;

	fflush(stdout);
	pid = vfork();
	if (pid == 0) {
		execlp(self_exe, self_exe, "--exec-child", "execlp",
		       (char *)NULL);
		_exit(127);
	}
	return wait_code(pid);
}

static int clone_exec(void *arg)
{
	char *const argv[] = { (char *)self_exe, "--exec-child", "clone", NULL };

	(void)arg;
	execv(self_exe, argv);
	return 127;
}

static void s_exec(void)
{
	size_t n = 8 * MiB;
	char *p = map_anon(n, MAP_PRIVATE);

	if (!p)
		return;
	fill(p, n, 310); /* memory the exec must leave behind */

	/* fork + execv */
	pid_t pid = xfork();
	if (pid == 0) {
		char *const argv[] = { (char *)self_exe, "--exec-child",
				       "execv", NULL };
		execv(self_exe, argv);
		_exit(127);
	}
	int c1 = wait_code(pid);

	/* vfork + execv */
	fflush(stdout);
	pid = vfork();
	if (pid == 0) {
		char *const argv[] = { (char *)self_exe, "--exec-child",
				       "vfork", NULL };
		execv(self_exe, argv);
		_exit(127);
	}
	int c2 = wait_code(pid);

	/* posix_spawn */
	fflush(stdout);
	char *const argv3[] = { (char *)self_exe, "--exec-child", "posix_spawn",
				NULL };
	int sr = posix_spawn(&pid, self_exe, NULL, NULL, argv3, environ);
	int c3 = sr ? -1 : wait_code(pid);

	/* posix_spawnp, with file actions */
	fflush(stdout);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, 1, 1);
	char *const argv4[] = { (char *)self_exe, "--exec-child",
				"posix_spawnp", NULL };
	sr = posix_spawnp(&pid, self_exe, &fa, NULL, argv4, environ);
	int c4 = sr ? -1 : wait_code(pid);
	posix_spawn_file_actions_destroy(&fa);

	/* system(): fork + exec of a shell */
	fflush(stdout);
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "'%s' --exec-child system", self_exe);
	int c5 = system(cmd);
	c5 = WIFEXITED(c5) ? WEXITSTATUS(c5) : -1;

	/* the list forms, which glibc runs through its internal execve */
	fflush(stdout);
	pid = xfork();
	if (pid == 0) {
		execl(self_exe, self_exe, "--exec-child", "execl", (char *)NULL);
		_exit(127);
	}
	int c6 = wait_code(pid);
	fflush(stdout);
	pid = xfork();
	if (pid == 0) {
		execle(self_exe, self_exe, "--exec-child", "execle",
		       (char *)NULL, environ);
		_exit(127);
	}
	int c7 = wait_code(pid);
	int c8 = vfork_execlp();

	/* clone() without CLONE_VM, which execs at once */
	fflush(stdout);
	size_t stack_len = 256 * KiB;
	char *stack = malloc(stack_len);
	pid = stack ? clone(clone_exec, stack + stack_len, SIGCHLD, NULL) : -1;
	int c9 = pid < 0 ? -1 : wait_code(pid);
	free(stack);

	bool kept = check(p, n, 310);
	printf("exec: exit codes execv=%d vfork=%d posix_spawn=%d "
	       "posix_spawnp=%d system=%d execl=%d execle=%d vfork+execlp=%d "
	       "clone=%d; parent's memory kept=%s\n",
	       c1, c2, c3, c4, c5, c6, c7, c8, c9, kept ? "yes" : "no");
	EXPECT(!c1 && !c2 && !c3 && !c4 && !c5 && !c6 && !c7 && !c8 && !c9 &&
		       kept,
	       "exec");
	munmap(p, n);
}

/*
 * Under the shim with UPAGER_EXPECT_MANAGED=1 (test-preload.sh, where it
 * checks what the shim manages): whether @p is mapped from a segment's
 * memfd, as @want says.  Without them: true (the transcript never says).
 */
static bool managed_as(const void *p, bool want)
{
	const char *pre = getenv("LD_PRELOAD"),
		   *expect = getenv("UPAGER_EXPECT_MANAGED");
	char line[512];
	bool found = false;
	FILE *f;

	if (!pre || !strstr(pre, "upager-preload") || !expect ||
	    strcmp(expect, "1"))
		return true;
	f = fopen("/proc/self/maps", "r");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx", &s, &e) == 2 && (uintptr_t)p >= s &&
		    (uintptr_t)p < e)
			found = strstr(line, "memfd:upager:") != NULL;
	}
	fclose(f);
	return found == want;
}

static bool managed(const void *p)
{
	return managed_as(p, true);
}

/* POSIX shm is managed unless UPAGER_SHM=0 */
static bool shm_managed(const void *p)
{
	const char *e = getenv("UPAGER_SHM");

	return managed_as(p, !(e && !strcmp(e, "0")));
}

static void s_devzero(void)
{
	size_t n = 4 * MiB;
	int fd = open("/dev/zero", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		fail("open /dev/zero");
		return;
	}
	char *pr = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	char *sh = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (pr == MAP_FAILED || sh == MAP_FAILED) {
		fail("mmap /dev/zero");
		return;
	}
	bool z = is_zero(pr, n) && is_zero(sh, n);
	bool man = managed(pr) && managed(sh);
	fill(pr, n, 401);
	fill(sh, n, 402);
	pid_t pid = xfork();
	if (pid == 0) {
		int code = 0;

		if (!check(pr, n, 401) || !check(sh, n, 402))
			code = 1;
		fill(pr, n, 403);
		fill(sh, n / 2, 404);
		_exit(code);
	}
	int code = wait_code(pid);
	bool priv = check(pr, n, 401);
	bool shared = check(sh, n / 2, 404) &&
		      check_at(sh + n / 2, n / 2, 402, n / 2);
	printf("/dev/zero: zero=%s child saw both=%s private stays private=%s "
	       "shared is shared=%s\n",
	       z ? "yes" : "no", code == 0 ? "yes" : "no", priv ? "yes" : "no",
	       shared ? "yes" : "no");
	EXPECT(z && code == 0 && priv && shared, "/dev/zero");
	EXPECT(man, "/dev/zero: not managed by the shim");
	munmap(pr, n);
	munmap(sh, n);
}

/* --shm-child NAME SIZE: check the parent's half, write the other one */
static int shm_child(const char *name, size_t n)
{
	int fd = shm_open(name, O_RDWR, 0);

	if (fd < 0)
		return 2;
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return 3;
	if (!check(p, n / 2, 501))
		return 4;
	if (!shm_managed(p))
		return 5;
	fill(p + n / 2, n / 2, 502);
	return 0;
}

static void s_shm(void)
{
	size_t n = 8 * MiB;
	char name[64];

	snprintf(name, sizeof(name), "/upager-psem-%d", (int)getpid());
	shm_unlink(name);
	int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0) {
		fail("shm_open: %s", errname(errno));
		return;
	}
	int tr = ftruncate(fd, n);
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	struct stat st;
	fstat(fd, &st);
	close(fd);
	if (tr || p == MAP_FAILED) {
		fail("shm mmap");
		shm_unlink(name);
		return;
	}
	bool z = is_zero(p, n);
	fill(p, n / 2, 501);

	/* another process, which opens the name itself */
	char size[32];
	snprintf(size, sizeof(size), "%zu", n);
	pid_t pid = xfork();
	if (pid == 0) {
		char *const argv[] = { (char *)self_exe, "--shm-child", name,
				       size, NULL };
		execv(self_exe, argv);
		_exit(127);
	}
	int code = wait_code(pid);
	bool seen = check(p + n / 2, n / 2, 502);

	/* a second mapping of the name in this process sees the same */
	fd = shm_open(name, O_RDONLY, 0);
	char *q = fd < 0 ? MAP_FAILED :
			   mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
	if (fd >= 0)
		close(fd);
	bool same = q != MAP_FAILED && sum(q, n) == sum(p, n);
	bool man = shm_managed(p) && (q == MAP_FAILED || shm_managed(q));
	int ul = shm_unlink(name);
	/* unlinked, still shared with a child (which, without fork events,
	 * attaches it again by name under the shim) */
	pid = xfork();
	if (pid == 0) {
		fill(p, PAGE, 503);
		_exit(0);
	}
	bool after = wait_code(pid) == 0 && check(p, PAGE, 503);
	errno = 0;
	int again = shm_open(name, O_RDWR, 0);
	int again_err = errno;
	printf("shm_open: size=%lld zero=%s other process exit=%d and its "
	       "write seen=%s second mapping same=%s unlink=%d reopen=%s "
	       "child after unlink shares=%s sum=%016llx\n",
	       (long long)st.st_size, z ? "yes" : "no", code,
	       seen ? "yes" : "no", same ? "yes" : "no", ul,
	       again < 0 ? errname(again_err) : "opened", after ? "yes" : "no",
	       (unsigned long long)sum(p, n));
	EXPECT(z && code == 0 && seen && same && ul == 0 && again < 0 &&
		       again_err == ENOENT && after,
	       "shm");
	EXPECT(man, "shm: not managed by the shim as UPAGER_SHM says");
	if (again >= 0)
		close(again);
	if (q != MAP_FAILED)
		munmap(q, n);
	munmap(p, n);
}

/*
 * The parent lets go of its memory right after a fork (free, munmap,
 * MADV_DONTNEED, also of read-only memory) before the child reads its
 * copy: the child still reads what was there at the fork; the child's
 * own MADV_DONTNEED of its copy reads zeros.
 */
static void s_fork_release(void)
{
	size_t n = 16 * MiB, m = 8 * MiB;
	char *blk = malloc(n), *p = map_anon(m, MAP_PRIVATE);
	char *ro = map_anon(m, MAP_PRIVATE);
	int go[2];

	if (!blk || !p || !ro || pipe(go)) {
		fail("setup");
		return;
	}
	fill(blk, n, 601);
	fill(p, m, 602);
	fill(ro, m, 603);
	mprotect(ro, m, PROT_READ);
	pid_t pid = xfork();
	if (pid == 0) {
		char c;

		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(2);
		if (!check(blk, n, 601) || !check(p, m, 602) ||
		    !check(ro, m, 603))
			_exit(1);
		/* and the child's own DONTNEED of its copy reads zeros */
		char *h = (char *)(((uintptr_t)blk + n / 2 + PAGE - 1) &
				   ~(PAGE - 1));
		size_t hl = ((uintptr_t)blk + n - (uintptr_t)h) & ~(PAGE - 1);
		if (madvise(h, hl, MADV_DONTNEED) ||
		    madvise(ro, m, MADV_DONTNEED) || !is_zero(h, hl) ||
		    !is_zero(ro, m) || !check(blk, n / 2, 601))
			_exit(3);
		/* and what MREMAP_DONTUNMAP leaves behind reads zeros */
		char *d = mremap(p, 16 * PAGE, 16 * PAGE,
				 MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);
		if (d == MAP_FAILED && errno == EINVAL)
			_exit(0); /* a kernel without it */
		if (d == MAP_FAILED || !check(d, 16 * PAGE, 602) ||
		    !is_zero(p, 16 * PAGE) ||
		    !check_at(p + 16 * PAGE, m - 16 * PAGE, 602, 16 * PAGE))
			_exit(4);
		/* DONTNEED over two protections (a guard page first) */
		char *g = p + 32 * PAGE;
		mprotect(g, PAGE, PROT_NONE);
		if (madvise(g, 4 * PAGE, MADV_DONTNEED) ||
		    mprotect(g, PAGE, PROT_READ | PROT_WRITE) ||
		    !is_zero(g, 4 * PAGE) ||
		    !check_at(g + 4 * PAGE, PAGE, 602, 36 * PAGE))
			_exit(5);
		_exit(0);
	}
	close(go[0]);
	free(blk);
	munmap(p, m / 2);
	int dn = madvise(p + m / 2, m / 2, MADV_DONTNEED);
	int dr = madvise(ro, m, MADV_DONTNEED);
	bool zp = is_zero(p + m / 2, m / 2), zr = is_zero(ro, m);
	if (write(go[1], "x", 1) != 1)
		fail("write");
	close(go[1]);
	int code = wait_code(pid);
	printf("fork-release: child saw the fork's bytes=%s; parent: "
	       "dontneed=%d,%d reads zero=%s,%s\n",
	       code == 0 ? "yes" : "no", dn, dr, zp ? "yes" : "no",
	       zr ? "yes" : "no");
	EXPECT(code == 0 && !dn && !dr && zp && zr, "fork-release");
	munmap(p + m / 2, m / 2);
	munmap(ro, m);
}

/*
 * Calls the kernel refuses leave the memory they targeted as it was, and
 * calls that succeed leave errno as it was.
 */
static void s_failed_calls(void)
{
	size_t n = 8 * MiB;
	char *p = map_anon(n, MAP_PRIVATE);
	int fd = open(self_exe, O_RDONLY | O_CLOEXEC);

	if (!p)
		return;
	fill(p, n, 81);

	/* MAP_FIXED over memory: a bad descriptor, a read-only one mapped
	 * shared and writable */
	errno = 0;
	void *q = mmap(p + MiB, MiB, PROT_READ, MAP_PRIVATE | MAP_FIXED, 999, 0);
	int e1 = q == MAP_FAILED ? errno : 0;
	errno = 0;
	q = mmap(p, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
	int e2 = q == MAP_FAILED ? errno : 0;
	bool kept = check(p, n, 81);
	printf("MAP_FIXED refused: bad fd %s, read-only fd shared writable %s, "
	       "memory kept=%s\n",
	       errname(e1), errname(e2), kept ? "yes" : "no");
	EXPECT(e1 == EBADF && e2 == EACCES && kept, "map fixed refused");

	/* MREMAP_FIXED onto memory: the old range unmapped, or two mappings
	 * grown (Linux 6.17 moves two mappings, but does not grow them) */
	char *h = map_anon(MiB, MAP_PRIVATE);
	char *t = map_anon(4 * MiB, MAP_PRIVATE);
	if (!h || !t)
		return;
	munmap(h, MiB);
	errno = 0;
	q = mremap(h, MiB, MiB, MREMAP_MAYMOVE | MREMAP_FIXED, p);
	int e3 = q == MAP_FAILED ? errno : 0;
	fill(t, 4 * MiB, 82);
	mprotect(t + 2 * MiB, 2 * MiB, PROT_READ);
	errno = 0;
	q = mremap(t, 4 * MiB, 6 * MiB, MREMAP_MAYMOVE | MREMAP_FIXED,
		   p + 2 * MiB);
	int e4 = q == MAP_FAILED ? errno : 0;
	kept = check(p, n, 81);
	printf("MREMAP_FIXED refused: old unmapped %s, old two mappings grown %s, "
	       "target kept=%s\n",
	       errname(e3), errname(e4), kept ? "yes" : "no");
	EXPECT(e3 == EFAULT && e4 == EFAULT && kept, "mremap fixed refused");

	/* mremap across two protections is more than one mapping */
	errno = 0;
	q = mremap(t, 4 * MiB, 8 * MiB, MREMAP_MAYMOVE);
	int e5 = q == MAP_FAILED ? errno : 0;
	mprotect(t + 2 * MiB, 2 * MiB, PROT_NONE);
	errno = 0;
	q = mremap(t, 4 * MiB, 8 * MiB, MREMAP_MAYMOVE);
	int e6 = q == MAP_FAILED ? errno : 0;
	mprotect(t + 2 * MiB, 2 * MiB, PROT_READ | PROT_WRITE);
	bool t_kept = check(t, 4 * MiB, 82);
	/* one protection throughout: moved with it */
	mprotect(t, 4 * MiB, PROT_READ);
	char *m = mremap(t, 4 * MiB, 8 * MiB, MREMAP_MAYMOVE);
	bool moved = m != MAP_FAILED;
	int rd = moved ? probe(m, false) : -1, wr = moved ? probe(m, true) : -1;
	bool m_kept = moved && check(m, 4 * MiB, 82);
	printf("mremap over RW|R %s, over RW|NONE %s, range kept=%s; "
	       "over R: moved=%s read %s write %s bytes kept=%s\n",
	       errname(e5), errname(e6), t_kept ? "yes" : "no",
	       moved ? "yes" : "no", signame(rd), signame(wr),
	       m_kept ? "yes" : "no");
	EXPECT(e5 == EFAULT && e6 == EFAULT && t_kept && moved && rd == 0 &&
		       wr == SIGSEGV && m_kept,
	       "mremap two protections");
	munmap(moved ? m : t, moved ? 8 * MiB : 4 * MiB);

	/* errno kept by calls that succeed */
	int ek[5];
	char *s = map_anon(4 * MiB, MAP_SHARED);
	char *b = malloc(4 * MiB), *c = malloc(4 * MiB);
	if (!s || !b || !c)
		return;
	p[0] = s[0] = b[0] = c[0] = 1;
	errno = 77;
	ek[0] = munmap(p, n) ? -1 : errno;
	errno = 77;
	ek[1] = munmap(s, 4 * MiB) ? -1 : errno;
	errno = 77;
	free(b);
	ek[2] = errno;
	errno = 77;
	b = realloc(c, 8 * MiB);
	ek[3] = b ? errno : -1;
	errno = 77;
	c = realloc(b, 100);
	ek[4] = c ? errno : -1;
	free(c);
	printf("errno after munmap %d, munmap shared %d, free %d, realloc "
	       "larger %d, realloc below the threshold %d\n",
	       ek[0], ek[1], ek[2], ek[3], ek[4]);
	EXPECT(ek[0] == 77 && ek[1] == 77 && ek[2] == 77 && ek[3] == 77 &&
		       ek[4] == 77,
	       "errno changed");
	if (fd >= 0)
		close(fd);
}

/* --fork-connect: another thread's first large allocation races fork */
static void *alloc_main(void *arg)
{
	char *p = malloc(4 * MiB);

	(void)arg;
	if (p)
		memset(p, 1, 4 * MiB);
	return p;
}

static int fork_connect(long us)
{
	struct timespec ts = { 0, us * 1000 };
	pthread_t t;
	void *blk;

	if (pthread_create(&t, NULL, alloc_main, NULL))
		return 2;
	nanosleep(&ts, NULL);
	pid_t pid = fork();
	if (pid == 0) {
		alarm(5); /* a child that hangs fails its parent's wait */
		if (asan())
			_exit(0); /* ASan's allocation, not the shim's: see
				   * asan() */
		char *q = malloc(2 * MiB);

		if (!q)
			_exit(3);
		fill(q, 2 * MiB, 801);
		_exit(check(q, 2 * MiB, 801) ? 0 : 4);
	}
	pthread_join(t, &blk);
	int code = pid < 0 ? -1 : wait_code(pid);
	free(blk);
	return code == 0 && blk ? 0 : 1;
}

/* --exit-together: what each process maps must go with them */
static int exit_together(void)
{
	char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return 2;
	p[0] = 1;
	if (fork() == 0) {
		p[1] = 2;
		_exit(0);
	}
	return 0;
}

/* fork while the first connection is being made, at 20 instants */
static void s_fork_connect(void)
{
	int failed = 0;

	for (int i = 0; i < 20; i++) {
		char us[16];

		snprintf(us, sizeof(us), "%d", i * 150);
		fflush(stdout);
		pid_t pid = xfork();
		if (pid == 0) {
			execl(self_exe, self_exe, "--fork-connect", us,
			      (char *)NULL);
			_exit(127);
		}
		if (wait_code(pid) != 0)
			failed++;
	}
	printf("fork-connect: 20 forks racing the first connection, "
	       "failed=%d\n",
	       failed);
	EXPECT(failed == 0, "fork-connect");
}

/* --asan-report: AddressSanitizer's report maps memory through the
 * shim (test-preload.sh: it must come out whole, not hang). */
static int asan_report(void)
{
#if defined(__SANITIZE_ADDRESS__)
	char *volatile p = malloc(64);

	p[64] = 1;
	free(p);
	return 0;
#else
	return 77;
#endif
}

/*
 * mremap growth: a small tail grown in place, then the whole range grown
 * again with MREMAP_MAYMOVE (one mapping to the kernel, which grows in
 * place when there is room), the bytes kept.
 */
static void s_mremap_grow(void)
{
	char *r = mmap(NULL, 16 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);

	if (r == MAP_FAILED) {
		fail("mmap");
		return;
	}
	munmap(r + 2 * MiB, 14 * MiB); /* room after it */
	char *p = mmap(r, 2 * MiB, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	fill(p, 2 * MiB, 701);
	char *q = mremap(p, 2 * MiB, 2 * MiB + 64 * KiB, 0);
	bool small = q == p;
	if (small)
		fill(p + 2 * MiB, 64 * KiB, 702);
	char *m = mremap(p, 2 * MiB + 64 * KiB, 8 * MiB, MREMAP_MAYMOVE);
	bool whole = m != MAP_FAILED;
	bool kept = whole && check(m, 2 * MiB, 701) &&
		    check(m + 2 * MiB, 64 * KiB, 702) &&
		    is_zero(m + 2 * MiB + 64 * KiB, 6 * MiB - 64 * KiB);
	int mp = whole ? mprotect(m, 8 * MiB, PROT_READ) : -1;
	printf("mremap-grow: 64 KiB in place=%s, then the whole to 8 MiB=%s "
	       "bytes kept=%s mprotect of it=%d\n",
	       small ? "yes" : "no", whole ? "yes" : errname(errno),
	       kept ? "yes" : "no", mp);
	EXPECT(small && whole && kept && mp == 0, "mremap-grow");
	munmap(whole ? m : p, whole ? 8 * MiB : 2 * MiB + 64 * KiB);
}

/*
 * Small blocks, below UPAGER_MIN_SIZE: glibc's arenas without the shim,
 * the shim's (managed) with it.  Threads allocate every way there is,
 * free each other's blocks, end with blocks cached; a fork child checks
 * and changes them; a thread on a stack of malloc()ed memory forks.
 */
enum { AR_THREADS = 4, AR_BLOCKS = 4000 };

struct ar_blk {
	char *p;
	size_t len;
	uint64_t seed;
};

static struct ar_blk ar_blk[AR_THREADS][AR_BLOCKS];

/* Block @i's size: mostly small, some to 16 KiB, a few to 300 KiB. */
static size_t ar_size(uint64_t r)
{
	size_t sz = r % 100 < 80 ? r % 512 :
		    r % 100 < 98 ? r % (16 * KiB) :
				   r % (300 * KiB);

	return (sz & ~7ul) + 8;
}

struct ar_thr {
	int id;
	int errors;
	bool managed;
};

static void *ar_thread(void *arg)
{
	struct ar_thr *t = arg;
	struct ar_blk *b = ar_blk[t->id];

	for (int i = 0; i < AR_BLOCKS; i++) {
		uint64_t r = mix(t->id * AR_BLOCKS + i + 7);
		size_t len = ar_size(r);
		void *p = NULL;

		switch (r % 7) {
		case 0:
			p = calloc(1, len);
			if (p && !is_zero(p, len))
				t->errors++;
			break;
		case 1:
			p = memalign(64, len);
			if ((uintptr_t)p % 64)
				t->errors++;
			break;
		case 2:
			if (posix_memalign(&p, 4096, len) || (uintptr_t)p % 4096)
				t->errors++;
			break;
		default:
			p = malloc(len);
		}
		if (!p || malloc_usable_size(p) < len) {
			t->errors++;
			continue;
		}
		b[i] = (struct ar_blk){ p, len, r };
		fill(p, len, r);
	}
	t->managed = managed(b[0].p);
	/* every third freed and allocated again as a calloc (zeros after
	 * the bytes of the freed one); every fifth grown or shrunk */
	for (int i = 0; i < AR_BLOCKS; i += 3) {
		free(b[i].p);
		b[i].p = calloc(b[i].len / 8, 8);
		if (!b[i].p || !is_zero(b[i].p, b[i].len))
			t->errors++;
		else
			fill(b[i].p, b[i].len, b[i].seed);
	}
	for (int i = 1; i < AR_BLOCKS; i += 5) {
		size_t len = i % 2 ? b[i].len * 3 : (b[i].len / 16 + 1) * 8;
		size_t keep = len < b[i].len ? len : b[i].len;
		char *p = realloc(b[i].p, len);

		if (!p || !check(p, keep, b[i].seed)) {
			t->errors++;
			continue;
		}
		b[i].p = p;
		b[i].len = len;
		fill(p, len, b[i].seed);
	}
	return NULL;
}

/* Frees thread @id's odd blocks, made by another thread. */
static void *ar_freer(void *arg)
{
	struct ar_blk *b = ar_blk[(long)arg];

	for (int i = 1; i < AR_BLOCKS; i += 2) {
		free(b[i].p);
		b[i].p = NULL;
	}
	return NULL;
}

/* Whether every live block holds its pattern; their sum in @h. */
static int ar_check(uint64_t *h)
{
	int bad = 0;

	*h = 0;
	for (int k = 0; k < AR_THREADS; k++)
		for (int i = 0; i < AR_BLOCKS; i++) {
			struct ar_blk *b = &ar_blk[k][i];

			if (!b->p)
				continue;
			if (!check(b->p, b->len, b->seed))
				bad++;
			*h = mix(*h ^ sum(b->p, b->len));
		}
	return bad;
}

static void *ar_forker(void *arg)
{
	(void)arg;
	pid_t pid = fork();

	if (pid == 0) {
		uint64_t h;

		_exit(ar_check(&h) ? 1 : 0);
	}
	return (void *)(intptr_t)(pid < 0 ? -1 : wait_code(pid));
}

/* A coroutine on a malloc()ed stack (its thread's TLS elsewhere) forks. */
static ucontext_t co_main, co_ctx;
static int co_child = -1;

static void co_fork(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		uint64_t h;

		_exit(ar_check(&h) ? 1 : 0);
	}
	co_child = pid < 0 ? -1 : wait_code(pid);
}

static int coroutine_fork(void)
{
	size_t len = 256 * KiB;
	char *stack = malloc(len);

	if (!stack || getcontext(&co_ctx))
		return -1;
	co_ctx.uc_stack.ss_sp = stack;
	co_ctx.uc_stack.ss_size = len;
	co_ctx.uc_link = &co_main;
	makecontext(&co_ctx, co_fork, 0);
	swapcontext(&co_main, &co_ctx);
	free(stack);
	return co_child;
}

/*
 * The program's pthread_atfork handlers, as programs use them: prepare
 * takes a lock of the program's while another thread, holding it,
 * allocates (small and large blocks) and updates a malloc()ed object; the
 * child must see the object whole (the fork's instant is the handlers'),
 * its child handler touches that object and frees a block, and glibc's
 * own state (NSS, used by a thread) must be there for glibc's fork code.
 * Under the shim: no deadlock (it holds nothing while the program's
 * prepare handlers run), no tear (it cuts after them), no fault in the
 * child handler (the copies are in place before it runs).
 */
static pthread_mutex_t af_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int af_stop;
static bool af_on; /* the handlers stay for later forks: off then */
static struct af_obj {
	long a, pad[64], b;
	pid_t pid;
} * af_obj;
static void *af_block;

static void af_take(void)
{
	if (af_on)
		pthread_mutex_lock(&af_lock);
}

static void af_give(void)
{
	if (af_on)
		pthread_mutex_unlock(&af_lock);
}

static void af_child(void)
{
	if (!af_on)
		return;
	af_obj->pid = getpid();
	free(af_block);
	pthread_mutex_unlock(&af_lock);
}

static void *af_allocator(void *arg)
{
	void *v[64];

	while (!atomic_load(&af_stop)) {
		pthread_mutex_lock(&af_lock);
		af_obj->a++;
		for (int i = 0; i < 64; i++)
			v[i] = malloc(64 + i * 100);
		char *big = malloc(3 * MiB);
		if (big)
			big[MiB] = 1;
		free(big);
		for (int i = 0; i < 64; i++)
			free(v[i]);
		af_obj->b++;
		pthread_mutex_unlock(&af_lock);
	}
	return arg;
}

/* atfork-early.c: what its handlers call */
extern void (*atfork_early_prepare)(void);
extern void (*atfork_early_parent)(void);
extern void (*atfork_early_child)(void);

static void *af_nss(void *arg)
{
	struct passwd *pw = getpwuid(0);

	return pw ? arg : NULL;
}

/* How many of 50 forks had a child that saw all that right. */
static int atfork_forks(void)
{
	pthread_t t;
	int ok = 0;

	/* installed by a library's constructor, before the shim's */
	atfork_early_prepare = af_take;
	atfork_early_parent = af_give;
	atfork_early_child = af_child;
	if (pthread_create(&t, NULL, af_nss, NULL))
		return -1;
	pthread_join(t, NULL);
	af_obj = calloc(1, sizeof(*af_obj));
	if (!af_obj)
		return -1;
	atomic_store(&af_stop, 0);
	af_on = true;
	if (pthread_create(&t, NULL, af_allocator, NULL))
		return -1;
	for (int f = 0; f < 50; f++) {
		af_block = malloc(100 + f);

		pid_t pid = fork();

		if (pid == 0)
			_exit(af_obj->a == af_obj->b && af_obj->pid == getpid() ?
				      0 :
				      1);
		ok += pid > 0 && wait_code(pid) == 0;
		free(af_block);
		af_block = NULL;
	}
	atomic_store(&af_stop, 1);
	pthread_join(t, NULL);
	af_on = false;
	free(af_obj);
	return ok;
}

/* Odd requests: size 0 aligned past a page, sizes past the address
 * space (ASan aborts on those), errno kept by allocations that
 * succeed. */
static bool odd_requests(void)
{
	void *a = NULL, *b = NULL, *c = NULL, *big;
	bool ok = true;

	ok &= !posix_memalign(&a, 8192, 0) && !posix_memalign(&b, 8192, 0) &&
	      !posix_memalign(&c, 8192, 0);
	ok &= a != b && b != c && a != c && !((uintptr_t)a % 8192) &&
	      !((uintptr_t)b % 8192) && !((uintptr_t)c % 8192);
	free(a);
	free(b);
	free(c);
	/* (through a pointer: the compiler knows these must fail) */
	void *(*volatile re)(void *, size_t) = realloc;

	big = malloc(100 * KiB);
	for (int k = 0; k < 2 && big && !asan(); k++) {
		errno = 0;
		ok &= !re(big, k ? SIZE_MAX : SIZE_MAX - 4000) &&
		      errno == ENOMEM;
	}
	free(big);
	errno = EDOM;
	for (int i = 0; i < 3000; i++)
		free(malloc(i * 7));
	ok &= errno == EDOM;
	/* 40 MiB of mid-sized blocks written and freed (the shim punches
	 * what its arenas hold past 16 MiB), then as callocs: zeros; one
	 * grown by realloc a step at a time keeps its bytes */
	enum { NMID = 80 };
	static char *mid[NMID];
	for (int i = 0; i < NMID; i++)
		if ((mid[i] = malloc(512 * KiB)))
			memset(mid[i], 0x33 + i, 512 * KiB);
	for (int i = 0; i < NMID; i++)
		free(mid[i]);
	for (int i = 0; i < NMID; i++) {
		mid[i] = calloc(1, 512 * KiB);
		ok &= mid[i] && is_zero(mid[i], 512 * KiB);
	}
	char *g = NULL;
	for (size_t len = 20 * KiB; len <= 900 * KiB; len += 20 * KiB) {
		char *n = realloc(g, len);

		if (!n) {
			ok = false;
			break;
		}
		ok &= len == 20 * KiB || check(n, len - 20 * KiB, 77);
		g = n;
		fill(g, len, 77);
	}
	free(g);
	for (int i = 0; i < NMID; i++)
		free(mid[i]);
	return ok;
}

static void s_arenas(void)
{
	pthread_t tid[AR_THREADS];
	struct ar_thr t[AR_THREADS];
	int errors = 0, bad, child, stack_child = -1;
	uint64_t h, h2;
	bool man = true;

	for (int i = 0; i < AR_THREADS; i++) {
		t[i] = (struct ar_thr){ .id = i };
		pthread_create(&tid[i], NULL, ar_thread, &t[i]);
	}
	for (int i = 0; i < AR_THREADS; i++) {
		pthread_join(tid[i], NULL);
		errors += t[i].errors;
		man &= t[i].managed;
	}
	bad = ar_check(&h);
	printf("arenas: %d threads x %d blocks: errors=%d bad=%d sum=%016llx\n",
	       AR_THREADS, AR_BLOCKS, errors, bad, (unsigned long long)h);

	/* a fork child checks them all, frees some, overwrites others */
	pid_t pid = xfork();
	if (pid == 0) {
		int code = ar_check(&h2) ? 1 : 0;

		for (int i = 0; i < AR_BLOCKS; i++) {
			if (i % 2)
				free(ar_blk[0][i].p);
			else if (ar_blk[1][i].p)
				memset(ar_blk[1][i].p, 0x5a, ar_blk[1][i].len);
		}
		for (int i = 0; i < 1000; i++) {
			char *p = malloc(100 + i);

			if (!p)
				code = 1;
			else
				memset(p, 0x77, 100 + i);
		}
		_exit(code);
	}
	child = wait_code(pid);
	bad = ar_check(&h2);
	printf("arenas: fork child saw them=%s; parent's kept=%s\n",
	       child == 0 ? "yes" : "no", !bad && h2 == h ? "yes" : "no");

	/* daemon(3) forks inside glibc, past the fork() symbol */
	int pfd[2];
	char dc = '?';

	if (pipe(pfd) == 0) {
		pid = xfork();
		if (pid == 0) {
			close(pfd[0]);
			if (daemon(1, 1) == 0) {
				dc = ar_check(&h2) ? 'n' : 'y';
				if (write(pfd[1], &dc, 1) != 1)
					_exit(3);
			}
			_exit(0);
		}
		close(pfd[1]);
		wait_code(pid);
		if (read(pfd[0], &dc, 1) != 1)
			dc = '?';
		close(pfd[0]);
	}
	printf("arenas: daemon(3)'s child saw them=%s\n",
	       dc == 'y' ? "yes" : "no");
	EXPECT(dc == 'y', "arenas: daemon(3)");
	EXPECT(!errors && child == 0 && !bad && h2 == h, "arenas");
	bool odd = odd_requests();

	/* other threads free them; then a thread on a malloc()ed stack forks */
	for (int i = 0; i < AR_THREADS; i++)
		pthread_create(&tid[i], NULL, ar_freer, (void *)(long)i);
	for (int i = 0; i < AR_THREADS; i++)
		pthread_join(tid[i], NULL);
	bad = ar_check(&h2);
	int co = asan() ? 0 : coroutine_fork();
	size_t stack_len = 512 * KiB;
	void *stack = malloc(stack_len);
	pthread_attr_t attr;
	void *ret = NULL;

	pthread_attr_init(&attr);
	if (asan())
		stack_child = 0;
	else if (stack && !pthread_attr_setstack(&attr, stack, stack_len) &&
		 !pthread_create(&tid[0], &attr, ar_forker, NULL) &&
		 !pthread_join(tid[0], &ret))
		stack_child = (int)(intptr_t)ret;
	pthread_attr_destroy(&attr);
	free(stack);
	printf("arenas: freed by other threads: bad=%d; fork on a malloc()ed "
	       "stack: child exit %d, from a coroutine: %d\n",
	       bad, stack_child, co);
	EXPECT(!bad && stack_child == 0 && co == 0,
	       "arenas: cross-thread free or fork");
	EXPECT(man || asan(), "arenas: a thread's small block is not managed");
	int af = atfork_forks();
	printf("arenas: forks with the program's atfork handlers (a lock held "
	       "by an allocating thread, NSS used): %d of 50 right; odd "
	       "requests ok=%s\n",
	       af, odd ? "yes" : "no");
	EXPECT(af == 50 && odd, "arenas: atfork or odd requests");
	for (int k = 0; k < AR_THREADS; k++)
		for (int i = 0; i < AR_BLOCKS; i++) {
			free(ar_blk[k][i].p);
			ar_blk[k][i].p = NULL;
		}
}

struct section {
	const char *name;
	void (*fn)(void);
};

static const struct section sections[] = {
	{ "anon", s_anon },
	{ "shared-anon", s_shared_anon },
	{ "fork-cut", s_fork_cut },
	{ "fork-private", s_fork_private },
	{ "munmap", s_munmap },
	{ "mremap", s_mremap },
	{ "madvise", s_madvise },
	{ "fork-advice", s_fork_advice },
	{ "mprotect", s_mprotect },
	{ "map-fixed", s_map_fixed },
	{ "map-flags", s_map_flags },
	{ "errno", s_errno },
	{ "threads", s_threads },
	{ "malloc", s_malloc },
	{ "arenas", s_arenas },
	{ "exec", s_exec },
	{ "devzero", s_devzero },
	{ "shm", s_shm },
	{ "fork-release", s_fork_release },
	{ "failed-calls", s_failed_calls },
	{ "mremap-grow", s_mremap_grow },
	{ "fork-connect", s_fork_connect },
};

#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

static bool run_section(const struct section *s)
{
	section_ok = true;
	fail_msg[0] = 0;
	s->fn();
	printf("== %s: %s%s%s\n", s->name, section_ok ? "ok" : "FAIL",
	       section_ok ? "" : ": ", fail_msg);
	fflush(stdout);
	return section_ok;
}

int main(int argc, char **argv)
{
	static char exe[4096];
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (len <= 0)
		return 2;
	exe[len] = 0;
	self_exe = exe;
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);

	if (argc == 3 && !strcmp(argv[1], "--exec-child"))
		return exec_child(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "--fork-connect"))
		return fork_connect(strtol(argv[2], NULL, 10));
	if (argc == 2 && !strcmp(argv[1], "--exit-together"))
		return exit_together();
	if (argc == 2 && !strcmp(argv[1], "--asan-report"))
		return asan_report();
	if (argc == 4 && !strcmp(argv[1], "--shm-child"))
		return shm_child(argv[2], strtoul(argv[3], NULL, 10));
	if (argc == 2 && !strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < NSECTIONS; i++)
			printf("%s\n", sections[i].name);
		return 0;
	}
	probe_init();

	int failed = 0, ran = 0;
	for (size_t i = 0; i < NSECTIONS; i++) {
		bool want = argc == 1;

		for (int a = 1; a < argc; a++)
			if (!strcmp(argv[a], sections[i].name))
				want = true;
		if (!want)
			continue;
		ran++;
		if (!run_section(&sections[i]))
			failed++;
	}
	if (!ran) {
		fprintf(stderr, "preload-semantics: no such section\n");
		return 2;
	}
	printf("== %d sections, %d failed\n", ran, failed);
	return failed ? 1 : 0;
}
