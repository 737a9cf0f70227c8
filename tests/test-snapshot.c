// SPDX-License-Identifier: MIT
/*
 * Snapshots and clones with a real daemon and real processes: the cut is
 * consistent while several processes (and their forked children) write;
 * a snapshot keeps its bytes while its parent is overwritten; private
 * attachments share the snapshot's frames; snapshots and clones come and
 * go without leaks; every refusal has its errno; the daemon dying, a
 * MADV_REMOVE, a file source, attaches, detaches and munmaps racing the
 * cut.  Bytes are compared with what was written, never with another read
 * of the segment, and nothing is judged by the clock.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "harness.h"

#define SNAP_FEATURES                                    \
	(H_NEED_BASE | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | \
	 UFFD_FEATURE_WP_UNPOPULATED)

/* --- helpers --- */

/*
 * Checks whose failure should not hide what the rest of a test finds: the
 * test goes on, and SOFT_END fails it with every message.
 */
static char soft_msgs[4096];

#define SOFT_CHECK(cond, ...)                                            \
	do {                                                             \
		if (!(cond)) {                                           \
			size_t l_ = strlen(soft_msgs);                   \
			snprintf(soft_msgs + l_, sizeof(soft_msgs) - l_, \
				 "\n  line %d: ", __LINE__);             \
			l_ = strlen(soft_msgs);                          \
			snprintf(soft_msgs + l_, sizeof(soft_msgs) - l_, \
				 __VA_ARGS__);                           \
		}                                                        \
	} while (0)
#define SOFT_END() ck_assert_msg(!soft_msgs[0], "failed:%s", soft_msgs)

/* Word @w of page @page of pattern @seed: never zero. */
static inline uint64_t pat_word(uint64_t seed, uint64_t page, uint64_t w)
{
	uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^
		     ((page << 9) | w) * 0xBF58476D1CE4E5B9ull;

	x ^= x >> 31;
	x *= 0x94D049BB133111EBull;
	x ^= x >> 29;
	return x | 1;
}

/* Pages [@first, @first + @n) of pattern @seed into @buf. */
static void pat_fill(void *buf, uint64_t first, uint64_t n, uint64_t seed)
{
	uint64_t *w = buf;

	for (uint64_t p = 0; p < n; p++)
		for (uint64_t i = 0; i < H_PAGE / 8; i++)
			*w++ = pat_word(seed, first + p, i);
}

/* A malloc'ed buffer of @size bytes of pattern @seed (pages from 0). */
static char *pat_buf(size_t size, uint64_t seed)
{
	char *b = malloc(size);

	ck_assert_ptr_nonnull(b);
	pat_fill(b, 0, size / H_PAGE, seed);
	return b;
}

/*
 * Segment "seg" of @size, created and attached read-write (@a, mapped at
 * *@map), written with pattern 1: returns a copy of what it holds.
 */
static char *seg_written(struct upager *u, size_t size,
			 struct upager_attachment **a, char **map)
{
	char *data = pat_buf(size, 1);

	h_create(u, "seg", size, -1, 0600);
	*map = h_attach(u, "seg", 0, a);
	memcpy(*map, data, size);
	return data;
}

/*
 * The byte offset of the first word of [@p, @p + @n pages) that is not
 * pattern @seed for pages from @first, or -1.
 */
static long pat_diff(const void *p, uint64_t first, uint64_t n, uint64_t seed)
{
	const volatile uint64_t *w = p;

	for (uint64_t pg = 0; pg < n; pg++)
		for (uint64_t i = 0; i < H_PAGE / 8; i++)
			if (w[pg * (H_PAGE / 8) + i] !=
			    pat_word(seed, first + pg, i))
				return (long)(pg * H_PAGE + i * 8);
	return -1;
}

static void snap(struct upager *u, const char *seg, const char *name,
		 struct upager_snapshot_result *res)
{
	struct upager_snapshot_result r;
	int ret = upager_snapshot(u, seg, name, res ? res : &r);

	ck_assert_msg(ret == 0, "snapshot %s of %s: %s", name, seg,
		      strerror(-ret));
}

static void del(struct upager *u, const char *name, unsigned int flags)
{
	int ret = upager_delete(u, name, flags);

	ck_assert_msg(ret == 0, "delete %s: %s", name, strerror(-ret));
}

static void clone_(struct upager *u, const char *s, const char *name)
{
	int ret = upager_clone(u, s, name, 0600);

	ck_assert_msg(ret == 0, "clone %s of %s: %s", name, s, strerror(-ret));
}

/* Attaches @name read-only and compares it with @expect. */
static void check_rdonly(struct upager *u, const char *name, const char *expect,
			 size_t size)
{
	struct upager_attachment *a;
	const char *map = h_attach(u, name, UPAGER_ATTACH_RDONLY, &a);
	long diff;

	ck_assert_uint_eq(upager_attachment_size(a), size);
	diff = h_first_diff(map, expect, size);
	ck_assert_msg(diff < 0,
		      "%s: byte %ld (page %ld) differs: %#x, expected %#x",
		      name, diff, diff / (long)H_PAGE,
		      diff < 0 ? 0 : (unsigned char)map[diff],
		      diff < 0 ? 0 : (unsigned char)expect[diff]);
	ck_assert_int_eq(upager_detach(a), 0);
}

/* The daemon still serves: a fresh segment, attached, written, read. */
static void still_serves(struct upager *u, const char *after)
{
	struct upager_attachment *a;
	volatile char *map;
	int ret;

	h_create(u, "probe", 64 * 1024, -1, 0600);
	map = h_attach(u, "probe", 0, &a);
	ck_assert_msg(map[5000] == 0, "after %s: probe not zero", after);
	map[5000] = 0x5a;
	ck_assert_msg(map[5000] == 0x5a, "after %s: probe write lost", after);
	ck_assert_int_eq(upager_detach(a), 0);
	ret = upager_delete(u, "probe", 0);
	ck_assert_msg(ret == 0, "after %s: delete probe: %s", after,
		      strerror(-ret));
}

static int nr_fds(pid_t pid)
{
	char path[64];
	struct dirent *de;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	ck_assert_msg(d, "%s: %s", path, strerror(errno));
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/*
 * Private_Dirty (kB) of @pid: of the mapping that starts at @start, or of
 * the whole process (@start 0, smaps_rollup).  -1 if not found.
 */
static long private_dirty_kb(pid_t pid, uintptr_t start)
{
	char path[64], line[512];
	bool in = start == 0;
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid,
		 start ? "smaps" : "smaps_rollup");
	f = fopen(path, "r");
	ck_assert_msg(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		long v;

		if (start && sscanf(line, "%lx-%lx ", &lo, &hi) == 2 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			in = lo == start;
			continue;
		}
		if (in && sscanf(line, "Private_Dirty: %ld kB", &v) == 1) {
			kb = v;
			break;
		}
	}
	fclose(f);
	return kb;
}

/* --- 1. the cut is consistent under totally ordered writes --- */

/*
 * Every write takes a ticket s, waits until done == s, writes s + 1 at the
 * start and at the end of page s % npages, and sets done = s + 1.  At any
 * instant at most one write is in flight, so a consistent cut with done ==
 * x shows, for every page, the last value <= x that went there, except
 * that the write of x + 1 may have stored its first word and not yet its
 * second.  A cut that is torn across pages (a later write in, an earlier
 * one out) breaks that.
 */
struct ctr {
	_Atomic uint64_t ticket;
	_Atomic uint64_t done;
	_Atomic uint32_t waiters;
	_Atomic int stop;
	_Atomic uint64_t forks;	      /* children the writer forked */
	_Atomic uint64_t child_fails; /* of those, not exiting 0 */
	_Atomic uint64_t writes;
};

static void ctr_wait(struct ctr *c, uint64_t s)
{
	uint64_t v;

	for (int i = 0; i < 200; i++) {
		if (atomic_load(&c->done) == s)
			return;
		__builtin_ia32_pause();
	}
	for (;;) {
		atomic_fetch_add(&c->waiters, 1);
		v = atomic_load(&c->done);
		if (v != s) {
			struct timespec ts = { 0, 2 * 1000 * 1000 };

			/* the low word of done (little-endian), shared */
			syscall(SYS_futex, (uint32_t *)&c->done, FUTEX_WAIT,
				(uint32_t)v, &ts, NULL, 0);
		}
		atomic_fetch_sub(&c->waiters, 1);
		if (v == s || atomic_load(&c->done) == s)
			return;
	}
}

static void ctr_write(struct ctr *c, char *seg, uint64_t npages)
{
	uint64_t s = atomic_fetch_add(&c->ticket, 1);
	volatile uint64_t *pg;

	ctr_wait(c, s);
	pg = (volatile uint64_t *)(seg + (s % npages) * H_PAGE);
	pg[0] = s + 1;
	pg[H_PAGE / 8 - 1] = s + 1;
	atomic_store(&c->done, s + 1);
	if (atomic_load(&c->waiters))
		syscall(SYS_futex, (uint32_t *)&c->done, FUTEX_WAKE, INT_MAX,
			NULL, NULL, 0);
	atomic_fetch_add(&c->writes, 1);
}

struct ctr_thread {
	struct ctr *c;
	char *seg;
	uint64_t npages;
};

static void *ctr_writer_main(void *arg)
{
	struct ctr_thread *t = arg;

	while (!atomic_load(&t->c->stop))
		ctr_write(t->c, t->seg, t->npages);
	return NULL;
}

/* Forks a child every few ms that takes 50 tickets and exits. */
static void *ctr_forker_main(void *arg)
{
	struct ctr_thread *t = arg;

	while (!atomic_load(&t->c->stop)) {
		int status;
		pid_t pid = fork();

		if (pid < 0) {
			atomic_fetch_add(&t->c->child_fails, 1);
			break;
		}
		if (pid == 0) {
			for (int i = 0; i < 50; i++)
				ctr_write(t->c, t->seg, t->npages);
			_exit(0);
		}
		atomic_fetch_add(&t->c->forks, 1);
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0)
			atomic_fetch_add(&t->c->child_fails, 1);
		h_nap_ms(3);
	}
	return NULL;
}

static void __attribute__((noreturn))
ctr_writer(const char *sock, struct ctr *c, struct h_peer *p)
{
	struct upager_attachment *a;
	struct upager *u = h_child_connect(sock);
	struct ctr_thread t;
	pthread_t th[3];
	int ret = upager_attach(u, "seg", 0, &a);

	CHILD_CHECK(ret == 0, "writer: attach: %s", strerror(-ret));
	t = (struct ctr_thread){ .c = c,
				 .seg = upager_attachment_addr(a),
				 .npages = upager_attachment_size(a) / H_PAGE };
	pthread_create(&th[0], NULL, ctr_writer_main, &t);
	pthread_create(&th[1], NULL, ctr_writer_main, &t);
	pthread_create(&th[2], NULL, ctr_forker_main, &t);
	h_send(p->tx, 's');
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	CHILD_CHECK(atomic_load(&c->child_fails) == 0,
		    "writer: %lu of %lu forked children failed",
		    (unsigned long)atomic_load(&c->child_fails),
		    (unsigned long)atomic_load(&c->forks));
	_exit(0);
}

/* The value page @p holds once done == @x: the last v <= x with
 * (v - 1) % n == p, or 0. */
static uint64_t ctr_expect(uint64_t p, uint64_t x, uint64_t n)
{
	if (x == 0 || x - 1 < p)
		return 0;
	return p + n * ((x - 1 - p) / n) + 1;
}

/*
 * Checks snapshot @name cut while done went from @d0 to @d1.  Returns the
 * number of wrong pages (the first few are printed).
 */
static uint64_t ctr_verify(struct upager *u, const char *name, uint64_t n,
			   uint64_t d0, uint64_t d1)
{
	struct upager_attachment *a;
	const char *map = h_attach(u, name, UPAGER_ATTACH_RDONLY, &a);
	uint64_t *first = malloc(n * 8), *last = malloc(n * 8);
	uint64_t m = 0, x, pm = 0, bad = 0;
	bool torn = false;

	for (uint64_t p = 0; p < n; p++) {
		const volatile uint64_t *pg =
			(const volatile uint64_t *)(map + p * H_PAGE);

		first[p] = pg[0];
		last[p] = pg[H_PAGE / 8 - 1];
		if (first[p] > m) {
			m = first[p];
			pm = p;
		}
	}
	ck_assert_int_eq(upager_detach(a), 0);
	if (m) {
		ck_assert_msg((m - 1) % n == pm,
			      "%s: page %lu holds %lu, not its value", name,
			      (unsigned long)pm, (unsigned long)m);
		torn = last[pm] != m;
	}
	/* done at the cut: m, or m - 1 with m's second word not stored */
	x = torn ? m - 1 : m;
	if (x < d0 || x > d1 + 1) {
		fprintf(stderr,
			"%s: cut at done=%lu (max %lu, torn %d), outside "
			"[%lu, %lu + 1] read around the call\n",
			name, (unsigned long)x, (unsigned long)m, torn,
			(unsigned long)d0, (unsigned long)d1);
		bad++;
	}
	for (uint64_t p = 0; p < n; p++) {
		uint64_t e = ctr_expect(p, x, n);
		uint64_t e0 = torn && p == pm ? m : e;

		if (first[p] == e0 && last[p] == e)
			continue;
		if (bad++ < 8)
			fprintf(stderr,
				"%s: page %lu holds %lu / %lu, expected "
				"%lu / %lu (cut at done=%lu, max %lu, "
				"d0 %lu, d1 %lu)\n",
				name, (unsigned long)p, (unsigned long)first[p],
				(unsigned long)last[p], (unsigned long)e0,
				(unsigned long)e, (unsigned long)x,
				(unsigned long)m, (unsigned long)d0,
				(unsigned long)d1);
	}
	free(first);
	free(last);
	return bad;
}

START_TEST(test_consistency)
{
	const size_t size = 64 * H_MIB;
	const uint64_t npages = size / H_PAGE;
	const int bursts = 10, per_burst = 3;
	struct upager_segment_info info;
	uint64_t d0[3], d1[3], bad = 0, held = 0;
	struct h_daemon d;
	struct upager *u;
	struct h_peer p;
	struct ctr *c;

	c = mmap(NULL, H_PAGE, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(c, MAP_FAILED);
	memset(c, 0, sizeof(*c));
	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	if (h_peer_fork(&p) == 0)
		ctr_writer(d.sock, c, &p);
	ck_assert_int_eq(h_recv(p.rx), 's');
	/* some pages written, most not yet */
	while (atomic_load(&c->done) < 2000)
		h_nap_ms(1);

	for (int b = 0; b < bursts; b++) {
		char name[32];

		for (int k = 0; k < per_burst; k++) {
			struct upager_snapshot_result res;

			snprintf(name, sizeof(name), "s%d", b * per_burst + k);
			d0[k] = atomic_load(&c->done);
			snap(u, "seg", name, &res);
			d1[k] = atomic_load(&c->done);
			held += res.writers_held;
			h_nap_ms(3);
		}
		for (int k = 0; k < per_burst; k++) {
			snprintf(name, sizeof(name), "s%d", b * per_burst + k);
			bad += ctr_verify(u, name, npages, d0[k], d1[k]);
			del(u, name, 0);
		}
	}
	atomic_store(&c->stop, 1);
	ck_assert_int_eq(h_peer_end(&p), 0);
	fprintf(stderr,
		"consistency: %d snapshots, %lu writes, %lu forks, %lu "
		"writes held by cuts\n",
		bursts * per_burst, (unsigned long)atomic_load(&c->writes),
		(unsigned long)atomic_load(&c->forks), (unsigned long)held);
	ck_assert_msg(bad == 0, "%lu wrong pages in the snapshots",
		      (unsigned long)bad);
	ck_assert_uint_ge(atomic_load(&c->forks), 3);
	/* (a snapshot goes with the last reference to it, a moment
	 * after its delete and detaches) */
	H_WAIT_STAT(u, "seg", info, info.nr_snapshots == 0);
	ck_assert_uint_eq(info.nr_snapshots, 0);
	SOFT_CHECK(info.pages_shared == 0,
		   "no snapshot left, yet %lu pages protected for one",
		   (unsigned long)info.pages_shared);
	still_serves(u, "consistency");
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	munmap(c, H_PAGE);
}
END_TEST

/* --- 2. a snapshot keeps its bytes --- */

struct pw_thread {
	char *map;
	const char *src;
	size_t off, len;
};

static void *pw_main(void *arg)
{
	struct pw_thread *t = arg;

	memcpy(t->map + t->off, t->src + t->off, t->len);
	return NULL;
}

/* Two threads copy their quarters of @src (quarters 2 * @id, 2 * @id + 1). */
static void write_quarters(char *map, const char *src, size_t size, int id)
{
	struct pw_thread t[2];
	pthread_t th[2];

	for (int i = 0; i < 2; i++) {
		t[i] = (struct pw_thread){ .map = map,
					   .src = src,
					   .off = (2 * id + i) * size / 4,
					   .len = size / 4 };
		pthread_create(&th[i], NULL, pw_main, &t[i]);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
}

START_TEST(test_isolation)
{
	const size_t size = 8 * H_MIB;
	struct upager_segment_info si, pi;
	struct h_peer w[2], r;
	struct h_daemon d;
	struct upager *u;
	char *a = pat_buf(size, 1), *b = pat_buf(size, 2);

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	for (int i = 0; i < 2; i++) {
		if (h_peer_fork(&w[i]) == 0) {
			struct upager_attachment *at;
			struct upager *cu = h_child_connect(d.sock);
			int ret = upager_attach(cu, "seg", 0, &at);
			char *map;

			CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
			map = upager_attachment_addr(at);
			write_quarters(map, a, size, i);
			h_peer_ready(&w[i], 'a');
			write_quarters(map, b, size, i);
			h_peer_ready(&w[i], 'b');
			_exit(0);
		}
	}
	for (int i = 0; i < 2; i++)
		h_peer_expect(&w[i], 'a');
	snap(u, "seg", "snap", NULL);
	/* a reader of the snapshot, attached (half read) before the writes */
	if (h_peer_fork(&r) == 0) {
		struct upager_attachment *at;
		struct upager *cu = h_child_connect(d.sock);
		int ret = upager_attach(cu, "snap", UPAGER_ATTACH_RDONLY, &at);
		const char *map;
		size_t off;

		CHILD_CHECK(ret == 0, "attach snap: %s", strerror(-ret));
		map = upager_attachment_addr(at);
		ret = h_read_check(map, a, size / 2, &off);
		CHILD_CHECK(ret == H_READ_OK, "snap before: %d at %zu", ret,
			    off);
		h_peer_ready(&r, 'r');
		ret = h_read_check(map, a, size, &off);
		CHILD_CHECK(ret == H_READ_OK,
			    "snap after, old mapping: %s at %zu",
			    ret == H_READ_DIFF ? "wrong byte" : "SIGBUS", off);
		_exit(0);
	}
	h_peer_expect(&r, 'r');
	for (int i = 0; i < 2; i++)
		h_peer_go(&w[i]);
	for (int i = 0; i < 2; i++)
		h_peer_expect(&w[i], 'b');
	h_peer_go(&r);
	ck_assert_int_eq(h_peer_end(&r), 0);

	check_rdonly(u, "snap", a, size);
	check_rdonly(u, "seg", b, size);
	{
		const char *argv[] = { h_upagerctl(), "--socket", d.sock,
				       "cat",	      "snap",	  NULL };
		struct h_run run;

		h_run(argv, NULL, 0, &run);
		h_assert_exit(run.status, 0);
		ck_assert_uint_eq(run.out_len, size);
		ck_assert_int_eq(h_first_diff(run.out, a, size), -1);
		h_run_free(&run);
	}
	si = h_stat(u, "snap");
	pi = h_stat(u, "seg");
	ck_assert_uint_eq(si.kind, UPAGER_KIND_SNAPSHOT);
	ck_assert_str_eq(si.parent, "seg");
	ck_assert_uint_gt(si.pages_cbw, 0);
	ck_assert_uint_gt(pi.pages_cbw, 0);
	ck_assert_uint_eq(pi.nr_snapshots, 1);
	for (int i = 0; i < 2; i++) {
		h_peer_go(&w[i]);
		ck_assert_int_eq(h_peer_end(&w[i]), 0);
	}
	del(u, "snap", 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	free(a);
	free(b);
}
END_TEST

/* --- 3. private attachments share the snapshot's frames --- */

#define NREADERS 8
static const uint64_t own_pages[] = { 0,     1,	    2,	   777,	  4096,
				      12345, 30000, 32768, 50000, 65535 };
#define NOWN (sizeof(own_pages) / sizeof(own_pages[0]))

static bool is_own(uint64_t p)
{
	for (size_t i = 0; i < NOWN; i++)
		if (own_pages[i] == p)
			return true;
	return false;
}

static void __attribute__((noreturn))
private_reader(const char *sock, int id, size_t size, struct h_peer *p)
{
	struct upager_attachment *at;
	struct upager *u = h_child_connect(sock);
	const uint64_t n = size / H_PAGE;
	char *map;
	long diff;
	int ret;

	ret = upager_attach(u, "snap", UPAGER_ATTACH_PRIVATE, &at);
	CHILD_CHECK(ret == 0, "reader %d: attach private: %s", id,
		    strerror(-ret));
	map = upager_attachment_addr(at);
	CHILD_CHECK(upager_attachment_size(at) == size, "reader %d: size", id);
	/* start at different places, so first touches interleave */
	for (uint64_t i = 0; i < n; i += 256) {
		uint64_t pg = (i + (uint64_t)id * n / NREADERS) % n;

		diff = pat_diff(map + pg * H_PAGE, pg, 256, 1);
		CHILD_CHECK(diff < 0, "reader %d: byte %ld of page %lu wrong",
			    id, diff, (unsigned long)pg);
	}
	h_send_u64(p->tx, (uint64_t)(uintptr_t)map);
	h_peer_ready(p, 'r');
	for (size_t i = 0; i < NOWN; i++)
		pat_fill(map + own_pages[i] * H_PAGE, own_pages[i], 1, 100 + id);
	for (size_t i = 0; i < NOWN; i++) {
		diff = pat_diff(map + own_pages[i] * H_PAGE, own_pages[i], 1,
				100 + id);
		CHILD_CHECK(diff < 0, "reader %d: own page %lu: byte %ld", id,
			    (unsigned long)own_pages[i], diff);
	}
	h_peer_ready(p, 'w');
	/* the others wrote theirs meanwhile: still ours, the rest the
	 * snapshot's */
	for (uint64_t pg = 0; pg < n; pg++) {
		diff = pat_diff(map + pg * H_PAGE, pg, 1,
				is_own(pg) ? 100 + id : 1);
		CHILD_CHECK(diff < 0, "reader %d: after: page %lu byte %ld", id,
			    (unsigned long)pg, diff);
	}
	_exit(0);
}

START_TEST(test_private_sharing)
{
	const size_t size = 256 * H_MIB;
	struct upager_segment_info si, pi;
	struct upager_attachment *a, *ra;
	struct h_peer r[NREADERS];
	uintptr_t addr[NREADERS];
	struct h_daemon d;
	struct upager *u;
	char *map;
	const char *rmap;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	map = h_attach(u, "seg", 0, &a);
	pat_fill(map, 0, size / H_PAGE, 1);
	snap(u, "seg", "snap", NULL);
	/* the parent goes on; its new bytes are not the snapshot's */
	pat_fill(map + 777 * H_PAGE, 777, 1, 2);
	for (int i = 0; i < NREADERS; i++)
		if (h_peer_fork(&r[i]) == 0)
			private_reader(d.sock, i, size, &r[i]);
	for (int i = 0; i < NREADERS; i++) {
		addr[i] = (uintptr_t)h_recv_u64(r[i].rx);
		h_peer_expect(&r[i], 'r');
	}
	for (int i = 0; i < NREADERS; i++)
		h_peer_go(&r[i]);
	for (int i = 0; i < NREADERS; i++)
		h_peer_expect(&r[i], 'w');

	/* everyone wrote their pages: a read-only attachment sees none */
	rmap = h_attach(u, "snap", UPAGER_ATTACH_RDONLY, &ra);
	for (size_t i = 0; i < NOWN; i++) {
		long diff = pat_diff(rmap + own_pages[i] * H_PAGE, own_pages[i],
				     1, 1);

		ck_assert_msg(diff < 0, "rdonly: page %lu byte %ld",
			      (unsigned long)own_pages[i], diff);
	}
	ck_assert_int_eq(pat_diff(rmap, 0, size / H_PAGE, 1), -1);
	ck_assert_int_eq(upager_detach(ra), 0);
	ck_assert_int_eq(pat_diff(map + 777 * H_PAGE, 777, 1, 2), -1);

	si = h_stat(u, "snap");
	pi = h_stat(u, "seg");
	fprintf(stderr,
		"private: snapshot allocated %lu KiB, shared %lu, private "
		"%lu; segment allocated %lu KiB\n",
		(unsigned long)(si.allocated_bytes >> 10),
		(unsigned long)si.pages_shared, (unsigned long)si.pages_private,
		(unsigned long)(pi.allocated_bytes >> 10));
	ck_assert_msg(si.allocated_bytes <= size + H_MIB,
		      "the snapshot holds %lu bytes",
		      (unsigned long)si.allocated_bytes);
	ck_assert_uint_le(pi.allocated_bytes, size + H_MIB);
	for (int i = 0; i < NREADERS; i++) {
		long vma = private_dirty_kb(r[i].pid, addr[i]);
		long all = private_dirty_kb(r[i].pid, 0);

		fprintf(stderr,
			"private: reader %d: Private_Dirty %ld kB of the "
			"attachment, %ld kB in all\n",
			i, vma, all);
		ck_assert_msg(vma >= 0, "reader %d: no mapping at %#lx", i,
			      (unsigned long)addr[i]);
		ck_assert_msg(vma >= (long)(NOWN * H_PAGE / 1024) && vma < 1024,
			      "reader %d: %ld kB private dirty in the "
			      "attachment",
			      i, vma);
		ck_assert_msg(all >= 0 && all < 4096,
			      "reader %d: %ld kB private dirty", i, all);
	}
	for (int i = 0; i < NREADERS; i++) {
		h_peer_go(&r[i]);
		ck_assert_int_eq(h_peer_end(&r[i]), 0);
	}
	ck_assert_int_eq(upager_detach(a), 0);
	del(u, "snap", 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
}
END_TEST

/* --- 4. many snapshots, and nothing left behind --- */

START_TEST(test_many_snapshots_and_lifetime)
{
	const size_t size = H_MIB;
	const uint64_t n = size / H_PAGE;
	struct upager_segment_info info;
	struct upager_daemon_stats st0, st;
	struct upager_attachment *a;
	char *v1, *v2, *v3, *map;
	struct h_daemon d;
	struct upager *u;
	int fds0, fds;
	uint64_t dl;

	h_daemon_start(&d);
	u = h_connect(&d);
	v1 = seg_written(u, size, &a, &map);
	snap(u, "seg", "t1", NULL);
	v2 = malloc(size);
	memcpy(v2, v1, size);
	pat_fill(v2 + 10 * H_PAGE, 10, 50, 2); /* pages 10..59 */
	memcpy(map + 10 * H_PAGE, v2 + 10 * H_PAGE, 50 * H_PAGE);
	snap(u, "seg", "t2", NULL);
	v3 = malloc(size);
	memcpy(v3, v2, size);
	pat_fill(v3 + 40 * H_PAGE, 40, 100, 3); /* pages 40..139 */
	memcpy(map + 40 * H_PAGE, v3 + 40 * H_PAGE, 100 * H_PAGE);
	snap(u, "seg", "t3", NULL);
	map[size - 1] = 0x77; /* after the last */
	check_rdonly(u, "t1", v1, size);
	check_rdonly(u, "t2", v2, size);
	check_rdonly(u, "t3", v3, size);
	info = h_stat(u, "seg");
	ck_assert_uint_eq(info.nr_snapshots, 3);
	del(u, "t2", 0);
	ck_assert_int_eq(upager_stat(u, "t2", &info), -ENOENT);
	check_rdonly(u, "t1", v1, size);
	check_rdonly(u, "t3", v3, size);
	/* the parent writes what t1 and t3 share, after t2 went */
	memset(map, 0x11, 5 * H_PAGE);
	memset(map + 45 * H_PAGE, 0x22, 5 * H_PAGE);
	check_rdonly(u, "t1", v1, size);
	check_rdonly(u, "t3", v3, size);
	/* (a snapshot goes with the last reference to it, a moment
	 * after its delete and detaches) */
	H_WAIT_STAT(u, "seg", info, info.nr_snapshots == 2);
	ck_assert_uint_eq(info.nr_snapshots, 2);
	del(u, "t1", 0);
	check_rdonly(u, "t3", v3, size);
	del(u, "t3", 0);
	/* (a snapshot goes with the last reference to it, a moment
	 * after its delete and detaches) */
	H_WAIT_STAT(u, "seg", info, info.nr_snapshots == 0);
	ck_assert_uint_eq(info.nr_snapshots, 0);
	SOFT_CHECK(info.pages_shared == 0,
		   "no snapshot left, yet %lu pages protected for one",
		   (unsigned long)info.pages_shared);

	/* 1,000 cuts and deletes */
	fds0 = nr_fds(d.pid);
	st0 = h_stats(u);
	for (int i = 0; i < 1000; i++) {
		struct upager_snapshot_result res;

		if (i % 7 == 0)
			map[(i % n) * H_PAGE + 8] = (char)i;
		snap(u, "seg", "c", &res);
		ck_assert_uint_eq(res.pages_shared, n);
		if (i % 100 == 0) {
			struct upager_attachment *sa;
			const char *smap = h_attach(u, "c",
						    UPAGER_ATTACH_RDONLY, &sa);

			ck_assert_int_eq(h_first_diff(smap, map, size), -1);
			ck_assert_int_eq(upager_detach(sa), 0);
		}
		del(u, "c", 0);
	}
	/* (closes may trail the reply a moment) */
	dl = h_now_ms() + H_TIMEOUT_MS;
	while ((fds = nr_fds(d.pid)) != fds0 && h_now_ms() < dl)
		h_nap_ms(5);
	ck_assert_msg(fds == fds0, "the daemon had %d fds, now %d", fds0, fds);
	H_WAIT_STATS(u, st, st.segments == st0.segments);
	ck_assert_uint_eq(st.segments, st0.segments);
	ck_assert_uint_eq(st.attachments, st0.attachments);
	/* (a snapshot goes with the last reference to it, a moment
	 * after its delete and detaches) */
	H_WAIT_STAT(u, "seg", info, info.nr_snapshots == 0);
	ck_assert_uint_eq(info.nr_snapshots, 0);
	SOFT_CHECK(info.pages_shared == 0,
		   "no snapshot left, yet %lu pages protected for one",
		   (unsigned long)info.pages_shared);
	ck_assert_uint_le(info.allocated_bytes, size);
	fprintf(stderr,
		"lifetime: daemon resident %lu KiB, segment allocated %lu "
		"KiB, cbw %lu\n",
		(unsigned long)(st.resident_bytes >> 10),
		(unsigned long)(info.allocated_bytes >> 10),
		(unsigned long)info.pages_cbw);
	ck_assert_uint_le(st.resident_bytes, size + 64 * 1024);
	/* the segment still writes without faulting on stale protection */
	memset(map, 0x33, size);
	ck_assert_int_eq(upager_detach(a), 0);
	still_serves(u, "lifetime");
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	free(v1);
	free(v2);
	free(v3);
}
END_TEST

/*
 * A snapshot deleted right after its last attachment detached goes, and
 * the next cut does not trip on it: the last reference to it is dropped
 * by a worker while the next snapshot of the parent is being cut.
 */
START_TEST(test_delete_after_detach)
{
	const size_t size = 256 * 1024;
	struct upager_segment_info info;
	struct upager_attachment *a;
	uint64_t slow = 0, worst = 0;
	struct h_daemon d;
	struct upager *u;
	char *map;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	map = h_attach(u, "seg", 0, &a);
	memset(map, 0x42, size);
	for (int i = 0; i < 300; i++) {
		struct upager_attachment *sa;
		const char *smap;
		uint64_t t0;

		map[(i % (size / H_PAGE)) * H_PAGE] = (char)i;
		snap(u, "seg", "c", NULL);
		smap = h_attach(u, "c", UPAGER_ATTACH_RDONLY, &sa);
		ck_assert_int_eq(h_first_diff(smap, map, size), -1);
		ck_assert_int_eq(upager_detach(sa), 0);
		del(u, "c", 0);
		if (i % 30)
			continue;
		/* the snapshot goes once deleted and detached */
		t0 = h_now_ms();
		H_WAIT_STAT(u, "seg", info, info.nr_snapshots == 0);
		ck_assert_msg(info.nr_snapshots == 0,
			      "round %d: deleted and detached, the snapshot "
			      "still counts after %d ms",
			      i, H_TIMEOUT_MS);
		if (h_now_ms() - t0 > 100)
			slow++;
		if (h_now_ms() - t0 > worst)
			worst = h_now_ms() - t0;
	}
	fprintf(stderr, "delete_after_detach: %lu slow releases, worst %lu ms\n",
		(unsigned long)slow, (unsigned long)worst);
	ck_assert_int_eq(upager_detach(a), 0);
	still_serves(u, "delete_after_detach");
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* --- 5. clones --- */

START_TEST(test_clone)
{
	const size_t size = 4 * H_MIB;
	struct upager_attachment *pa, *ca, *cca;
	struct upager_segment_info info;
	char *a, *b, *cexp, *ccexp, *pmap, *cmap, *ccmap;
	struct h_daemon d;
	struct upager *u;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	a = pat_buf(size, 1);
	b = malloc(size);
	memcpy(b, a, size);
	pat_fill(b, 0, 256, 2); /* first MiB */
	pmap = h_attach(u, "seg", 0, &pa);
	memcpy(pmap, a, size / 2); /* the rest stays zero... */
	memset(a + size / 2, 0, size / 2);
	memset(b + size / 2, 0, size / 2);
	snap(u, "seg", "snap", NULL);
	memcpy(pmap, b, H_MIB);
	clone_(u, "snap", "cl");
	info = h_stat(u, "cl");
	ck_assert_uint_eq(info.kind, UPAGER_KIND_CLONE);
	ck_assert_str_eq(info.parent, "snap");
	ck_assert_uint_eq(info.size, size);
	ck_assert_uint_eq(h_stat(u, "snap").nr_clones, 1);

	/* the clone reads the snapshot; its writes are its own */
	cmap = h_attach(u, "cl", 0, &ca);
	ck_assert_int_eq(h_first_diff(cmap, a, size), -1);
	cexp = malloc(size);
	memcpy(cexp, a, size);
	pat_fill(cexp + 512 * H_PAGE, 512, 64, 3); /* zero pages */
	pat_fill(cexp + 100 * H_PAGE, 100, 64, 3); /* snapshot's pages */
	memcpy(cmap + 512 * H_PAGE, cexp + 512 * H_PAGE, 64 * H_PAGE);
	memcpy(cmap + 100 * H_PAGE, cexp + 100 * H_PAGE, 64 * H_PAGE);
	ck_assert_int_eq(h_first_diff(cmap, cexp, size), -1);
	check_rdonly(u, "snap", a, size);
	ck_assert_int_eq(h_first_diff(pmap, b, size), -1);

	/* the snapshot has a clone */
	ck_assert_int_eq(upager_delete(u, "snap", 0), -EBUSY);
	del(u, "snap", UPAGER_DELETE_FORCE);
	ck_assert_int_eq(upager_stat(u, "snap", &info), -ENOENT);
	ck_assert_int_eq(h_first_diff(cmap, cexp, size), -1);
	check_rdonly(u, "cl", cexp, size);
	/* pages of the clone never touched yet, after the delete */
	ck_assert_int_eq(upager_detach(ca), 0);
	cmap = h_attach(u, "cl", 0, &ca);
	ck_assert_int_eq(h_first_diff(cmap, cexp, size), -1);
	ck_assert_int_eq(h_first_diff(pmap, b, size), -1);

	/* a snapshot of the clone, and a clone of that */
	snap(u, "cl", "cs", NULL);
	info = h_stat(u, "cs");
	ck_assert_uint_eq(info.kind, UPAGER_KIND_SNAPSHOT);
	ck_assert_str_eq(info.parent, "cl");
	memset(cmap + 700 * H_PAGE, 0x44, 10 * H_PAGE);
	check_rdonly(u, "cs", cexp, size);
	clone_(u, "cs", "cc");
	ccmap = h_attach(u, "cc", 0, &cca);
	ck_assert_int_eq(h_first_diff(ccmap, cexp, size), -1);
	ccexp = malloc(size);
	memcpy(ccexp, cexp, size);
	memset(ccexp + 3 * H_PAGE, 0x55, 3 * H_PAGE);
	memset(ccmap + 3 * H_PAGE, 0x55, 3 * H_PAGE);
	ck_assert_int_eq(h_first_diff(ccmap, ccexp, size), -1);
	check_rdonly(u, "cs", cexp, size);
	memset(cexp + 700 * H_PAGE, 0x44, 10 * H_PAGE);
	ck_assert_int_eq(h_first_diff(cmap, cexp, size), -1);
	ck_assert_int_eq(h_first_diff(pmap, b, size), -1);

	/* tear down in an awkward order */
	ck_assert_int_eq(upager_delete(u, "cs", 0), -EBUSY);
	ck_assert_int_eq(upager_detach(ca), 0);
	del(u, "cl", 0);
	ck_assert_int_eq(h_first_diff(ccmap, ccexp, size), -1);
	del(u, "cs", UPAGER_DELETE_FORCE);
	ck_assert_int_eq(h_first_diff(ccmap, ccexp, size), -1);
	ck_assert_int_eq(upager_detach(cca), 0);
	check_rdonly(u, "cc", ccexp, size);
	del(u, "cc", 0);
	ck_assert_int_eq(upager_detach(pa), 0);
	/* (a snapshot goes with the last reference to it, a moment
	 * after its delete and detaches) */
	H_WAIT_STAT(u, "seg", info, info.nr_snapshots == 0);
	ck_assert_uint_eq(info.nr_snapshots, 0);
	SOFT_CHECK(info.pages_shared == 0,
		   "no snapshot left, yet %lu pages protected for one",
		   (unsigned long)info.pages_shared);
	ck_assert_uint_eq(h_stats(u).segments, 1);
	still_serves(u, "clones");
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	free(a);
	free(b);
	free(cexp);
	free(ccexp);
}
END_TEST

/* --- 6. refusals --- */

#define EXPECT_ERR(call, err)                                                  \
	do {                                                                   \
		int r_ = (call);                                               \
		ck_assert_msg(r_ == -(err), "%s: %d (%s), expected %s", #call, \
			      r_, strerror(-r_), strerror(err));               \
		still_serves(u, #call);                                        \
	} while (0)

START_TEST(test_bad_input)
{
	struct upager_attachment *a = NULL, *pa;
	struct upager_segment_info info;
	struct h_daemon d;
	struct upager *u;
	char *pmap;
	int ret;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", H_MIB, -1, 0600);
	pmap = h_attach(u, "seg", 0, &pa);
	memset(pmap, 0x61, H_MIB);
	snap(u, "seg", "snap", NULL);

	EXPECT_ERR(upager_attach(u, "snap", 0, &a), EROFS);
	EXPECT_ERR(upager_snapshot(u, "snap", "s2", NULL), EINVAL);
	ck_assert_int_eq(upager_stat(u, "s2", &info), -ENOENT);
	EXPECT_ERR(upager_clone(u, "seg", "c", 0600), EINVAL);
	ck_assert_int_eq(upager_stat(u, "c", &info), -ENOENT);
	EXPECT_ERR(upager_snapshot(u, "seg", "snap", NULL), EEXIST);
	EXPECT_ERR(upager_snapshot(u, "seg", "seg", NULL), EEXIST);
	EXPECT_ERR(upager_clone(u, "snap", "seg", 0600), EEXIST);
	EXPECT_ERR(upager_clone(u, "snap", "snap", 0600), EEXIST);
	EXPECT_ERR(upager_snapshot(u, "nope", "x", NULL), ENOENT);
	EXPECT_ERR(upager_clone(u, "nope", "x", 0600), ENOENT);
	ck_assert_int_eq(upager_stat(u, "x", &info), -ENOENT);
	EXPECT_ERR(upager_attach(u, "seg", UPAGER_ATTACH_PRIVATE, &a), EINVAL);
	EXPECT_ERR(upager_attach(u, "nope", UPAGER_ATTACH_PRIVATE, &a), ENOENT);
	EXPECT_ERR(upager_snapshot(u, "seg", "", NULL), EINVAL);
	EXPECT_ERR(upager_snapshot(u, "seg", "a/b", NULL), EINVAL);
	EXPECT_ERR(upager_snapshot(u, "seg", NULL, NULL), EINVAL);
	EXPECT_ERR(upager_clone(u, "snap", "..", 0600), EINVAL);
	EXPECT_ERR(upager_clone(u, "snap", "c", 01000), EINVAL);

	clone_(u, "snap", "cl");
	EXPECT_ERR(upager_clone(u, "cl", "c2", 0600), EINVAL);
	EXPECT_ERR(upager_attach(u, "cl", UPAGER_ATTACH_PRIVATE, &a), EINVAL);
	EXPECT_ERR(upager_delete(u, "snap", 0), EBUSY);
	EXPECT_ERR(upager_snapshot(u, "seg", "cl", NULL), EEXIST);

	/* read-only and private at once: either is fine, not a crash */
	ret = upager_attach(u, "snap",
			    UPAGER_ATTACH_RDONLY | UPAGER_ATTACH_PRIVATE, &a);
	ck_assert_msg(ret == 0 || ret == -EINVAL, "rdonly|private: %s",
		      strerror(-ret));
	if (ret == 0)
		ck_assert_int_eq(upager_detach(a), 0);
	still_serves(u, "rdonly|private");

	/* a segment deleted (force, attached): its name is gone */
	h_create(u, "gone", H_MIB, -1, 0600);
	{
		struct upager_attachment *ga;
		char *gmap = h_attach(u, "gone", 0, &ga);

		gmap[0] = 1;
		del(u, "gone", UPAGER_DELETE_FORCE);
		EXPECT_ERR(upager_snapshot(u, "gone", "gs", NULL), ENOENT);
		gmap[1] = 2;
		ck_assert_int_eq(upager_detach(ga), 0);
	}

	/* everything still right */
	{
		char *e = malloc(H_MIB);

		memset(e, 0x61, H_MIB);
		check_rdonly(u, "snap", e, H_MIB);
		check_rdonly(u, "cl", e, H_MIB);
		ck_assert_int_eq(h_first_diff(pmap, e, H_MIB), -1);
		free(e);
	}
	ck_assert_int_eq(upager_detach(pa), 0);
	del(u, "cl", 0);
	/* the clone counts until its last reference goes, a moment after
	 * its detach and delete (see the report: EBUSY meanwhile) */
	H_WAIT_STAT(u, "snap", info, info.nr_clones == 0);
	ck_assert_uint_eq(info.nr_clones, 0);
	del(u, "snap", 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
}
END_TEST

/* --- 7. the daemon dies while every page is write-protected --- */

struct ww_thread {
	char *map;
	size_t off, len;
	uint64_t seed;
};

static void *ww_main(void *arg)
{
	struct ww_thread *t = arg;

	pat_fill(t->map + t->off, t->off / H_PAGE, t->len / H_PAGE, t->seed);
	return NULL;
}

START_TEST(test_daemon_killed_with_snapshot)
{
	const size_t size = 16 * H_MIB;
	struct upager_snapshot_result res;
	struct h_daemon d;
	struct upager *u;
	struct h_peer p;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *a;
		struct upager *cu = h_child_connect(d.sock);
		struct ww_thread t[2];
		pthread_t th[2];
		char *map;
		long diff;
		int ret = upager_attach(cu, "seg", 0, &a);

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		map = upager_attachment_addr(a);
		pat_fill(map, 0, size / H_PAGE, 1);
		h_peer_ready(&p, 'p');
		/* the daemon is dead: no write may hang */
		alarm(8);
		for (int i = 0; i < 2; i++) {
			t[i] = (struct ww_thread){ .map = map,
						   .off = i * size / 2,
						   .len = size / 2,
						   .seed = 2 };
			pthread_create(&th[i], NULL, ww_main, &t[i]);
		}
		for (int i = 0; i < 2; i++)
			pthread_join(th[i], NULL);
		diff = pat_diff(map, 0, size / H_PAGE, 2);
		CHILD_CHECK(diff < 0, "byte %ld not what was written", diff);
		_exit(0);
	}
	h_peer_expect(&p, 'p');
	snap(u, "seg", "snap", &res);
	ck_assert_uint_eq(res.pages_shared, size / H_PAGE);
	/* (counts only those not protected yet when the cut looked: the
	 * reader may have been quicker) */
	ck_assert_uint_le(res.attachments, 1);
	upager_disconnect(u);
	h_daemon_kill(&d);
	h_peer_go(&p);
	{
		int status = h_wait_child(p.pid);

		close(p.rx);
		close(p.tx);
		ck_assert_msg(!WIFSIGNALED(status) ||
				      WTERMSIG(status) != SIGALRM,
			      "a write hung after the daemon died");
		h_assert_exit(status, 0);
	}
	h_dir_remove(d.dir);
}
END_TEST

/* --- 8. MADV_REMOVE of a page a snapshot shares --- */

START_TEST(test_madv_remove_snapshot)
{
	const size_t size = 4 * H_MIB;
	const uint64_t n = size / H_PAGE;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	struct h_peer p;
	char *map, *orig;

	h_daemon_start(&d);
	u = h_connect(&d);
	orig = seg_written(u, size, &a, &map);
	snap(u, "seg", "snap", NULL);
	/* a reader that copies pages 0..99 of the snapshot before the
	 * removes */
	if (h_peer_fork(&p) == 0) {
		struct upager_attachment *sa;
		struct upager *cu = h_child_connect(d.sock);
		int ret = upager_attach(cu, "snap", UPAGER_ATTACH_RDONLY, &sa);
		int lost = 0, fresh = 0;
		const char *smap;
		size_t off;

		CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
		smap = upager_attachment_addr(sa);
		ret = h_read_check(smap, orig, 100 * H_PAGE, &off);
		CHILD_CHECK(ret == H_READ_OK, "before: %d at %zu", ret, off);
		h_peer_ready(&p, 'r');
		for (uint64_t pg = 0; pg < n; pg++) {
			ret = h_read_check(smap + pg * H_PAGE,
					   orig + pg * H_PAGE, H_PAGE, &off);
			CHILD_CHECK(ret != H_READ_DIFF,
				    "page %lu: byte %zu is %#x, not the "
				    "snapshot's %#x",
				    (unsigned long)pg, off,
				    (unsigned char)smap[pg * H_PAGE + off],
				    (unsigned char)orig[pg * H_PAGE + off]);
			if (ret == H_READ_SIGBUS) {
				/* only removed pages, never one it read */
				CHILD_CHECK(pg >= 100 && pg % 16 == 3,
					    "page %lu: SIGBUS",
					    (unsigned long)pg);
				lost++;
			} else if (pg % 16 == 3) {
				fresh++;
			}
		}
		fprintf(stderr,
			"madv_remove: %d removed pages lost, %d read right\n",
			lost, fresh);
		_exit(0);
	}
	h_peer_expect(&p, 'r');
	/* remove every 16th page (+3), then write some of them again */
	for (uint64_t pg = 3; pg < n; pg += 16)
		ck_assert_int_eq(madvise(map + pg * H_PAGE, H_PAGE, MADV_REMOVE),
				 0);
	for (uint64_t pg = 3; pg < n; pg += 32)
		memset(map + pg * H_PAGE, 0xee, H_PAGE);
	h_peer_go(&p);
	ck_assert_int_eq(h_peer_end(&p), 0);
	/* the parent: zeros where removed, 0xee where written again */
	for (uint64_t pg = 0; pg < n; pg++) {
		const char *e = orig + pg * H_PAGE;
		static char zero[H_PAGE], ee[H_PAGE];

		memset(ee, 0xee, H_PAGE);
		if (pg % 16 == 3)
			e = pg % 32 == 3 ? ee : zero;
		ck_assert_msg(memcmp(map + pg * H_PAGE, e, H_PAGE) == 0,
			      "segment page %lu", (unsigned long)pg);
	}
	ck_assert_int_eq(upager_detach(a), 0);
	del(u, "snap", 0);
	still_serves(u, "madv_remove");
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	free(orig);
}
END_TEST

/* --- 9. a file-backed segment --- */

START_TEST(test_file_segment_snapshot)
{
	const size_t size = 4 * H_MIB;
	struct upager_attachment *a, *sa;
	char *data, *expect, *map;
	const char *smap;
	struct h_daemon d;
	struct upager *u;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "img", size, 21);
	map = h_attach(u, "img", 0, &a);
	/* pages 0..63 read, 128..191 written, the rest never touched */
	ck_assert_int_eq(h_first_diff(map, data, 64 * H_PAGE), -1);
	expect = malloc(size);
	memcpy(expect, data, size);
	pat_fill(expect + 128 * H_PAGE, 128, 64, 5);
	memcpy(map + 128 * H_PAGE, expect + 128 * H_PAGE, 64 * H_PAGE);
	snap(u, "img", "snap", NULL);
	smap = h_attach(u, "snap", UPAGER_ATTACH_RDONLY, &sa);
	/* half of it now, through this mapping */
	ck_assert_int_eq(h_first_diff(smap, expect, size / 2), -1);
	/* the parent writes untouched pages and read ones */
	memset(map + 300 * H_PAGE, 0x99, 200 * H_PAGE);
	memset(map + 700 * H_PAGE, 0x98, 100 * H_PAGE);
	memset(map, 0x97, 32 * H_PAGE);
	memset(map + 150 * H_PAGE, 0x96, 10 * H_PAGE);
	ck_assert_int_eq(h_first_diff(smap, expect, size), -1);
	check_rdonly(u, "snap", expect, size);
	ck_assert_uint_eq(h_stat(u, "snap").kind, UPAGER_KIND_SNAPSHOT);
	ck_assert_int_eq(upager_detach(sa), 0);
	memset(expect + 300 * H_PAGE, 0x99, 200 * H_PAGE);
	memset(expect + 700 * H_PAGE, 0x98, 100 * H_PAGE);
	memset(expect, 0x97, 32 * H_PAGE);
	memset(expect + 150 * H_PAGE, 0x96, 10 * H_PAGE);
	ck_assert_int_eq(h_first_diff(map, expect, size), -1);
	ck_assert_int_eq(upager_detach(a), 0);
	check_rdonly(u, "img", expect, size);
	del(u, "snap", 0);
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	free(data);
	free(expect);
}
END_TEST

/* --- 10. attaches, detaches and munmaps during cuts --- */

START_TEST(test_unmap_during_cut)
{
	const size_t size = 16 * H_MIB;
	const int nsnaps = 40;
	struct upager_segment_info info;
	struct upager_attachment *a;
	_Atomic int *stop;
	struct h_daemon d;
	struct upager *u;
	struct h_peer p1, p2;
	char *data, *map;
	uint64_t n1, n2;

	stop = mmap(NULL, H_PAGE, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(stop, MAP_FAILED);
	*stop = 0;
	h_daemon_start(&d);
	u = h_connect(&d);
	data = seg_written(u, size, &a, &map);
	ck_assert_int_eq(upager_detach(a), 0);

	/* attach, read a little, detach, again */
	if (h_peer_fork(&p1) == 0) {
		struct upager *cu = h_child_connect(d.sock);
		uint64_t rounds = 0;

		h_send(p1.tx, 's');
		while (!atomic_load(stop)) {
			struct upager_attachment *ca;
			unsigned int fl = rounds % 3 == 2 ?
						  UPAGER_ATTACH_RDONLY :
						  0;
			int ret = upager_attach(cu, "seg", fl, &ca);
			const char *cm;
			size_t off = (rounds * 37 % (size / H_PAGE)) * H_PAGE;

			CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
			cm = upager_attachment_addr(ca);
			CHILD_CHECK(memcmp(cm + off, data + off, H_PAGE) == 0,
				    "attacher: page at %zu", off);
			ret = upager_detach(ca);
			CHILD_CHECK(ret == 0, "detach: %s", strerror(-ret));
			rounds++;
		}
		h_send_u64(p1.tx, rounds);
		_exit(0);
	}
	/* attach, then munmap its attachment piece by piece */
	if (h_peer_fork(&p2) == 0) {
		struct upager *cu = h_child_connect(d.sock);
		uint64_t rounds = 0;

		h_send(p2.tx, 's');
		while (!atomic_load(stop)) {
			struct upager_attachment *ca;
			int ret = upager_attach(cu, "seg", 0, &ca);
			char *cm;

			CHILD_CHECK(ret == 0, "attach: %s", strerror(-ret));
			cm = upager_attachment_addr(ca);
			for (size_t off = 0; off < size; off += H_MIB) {
				/* read the first page of the MiB, unmap
				 * the rest of it */
				CHILD_CHECK(memcmp(cm + off, data + off,
						   H_PAGE) == 0,
					    "unmapper: page at %zu", off);
				CHILD_CHECK(munmap(cm + off + H_PAGE,
						   H_MIB - H_PAGE) == 0,
					    "munmap: %s", strerror(errno));
			}
			ret = upager_detach(ca);
			CHILD_CHECK(ret == 0, "detach: %s", strerror(-ret));
			rounds++;
		}
		h_send_u64(p2.tx, rounds);
		_exit(0);
	}
	h_peer_expect(&p1, 's');
	h_peer_expect(&p2, 's');
	for (int i = 0; i < nsnaps; i++) {
		char name[32];

		snprintf(name, sizeof(name), "s%d", i);
		snap(u, "seg", name, NULL);
		if (i >= 2) {
			snprintf(name, sizeof(name), "s%d", i - 2);
			check_rdonly(u, name, data, size);
			del(u, name, 0);
		}
	}
	for (int i = nsnaps - 2; i < nsnaps; i++) {
		char name[32];

		snprintf(name, sizeof(name), "s%d", i);
		check_rdonly(u, name, data, size);
		del(u, name, 0);
	}
	atomic_store(stop, 1);
	n1 = h_recv_u64(p1.rx);
	n2 = h_recv_u64(p2.rx);
	ck_assert_int_eq(h_peer_end(&p1), 0);
	ck_assert_int_eq(h_peer_end(&p2), 0);
	fprintf(stderr,
		"unmap_during_cut: %d snapshots, %lu attach/detach, %lu "
		"munmap rounds\n",
		nsnaps, (unsigned long)n1, (unsigned long)n2);
	check_rdonly(u, "seg", data, size);
	ck_assert_uint_eq(h_wait_attachments(u, "seg", 0).nr_attachments, 0);
	info = h_stat(u, "seg");
	SOFT_CHECK(info.pages_shared == 0,
		   "no snapshot left, yet %lu pages protected for one",
		   (unsigned long)info.pages_shared);
	still_serves(u, "unmap_during_cut");
	upager_disconnect(u);
	h_daemon_stop(&d);
	SOFT_END();
	free(data);
	munmap(stop, H_PAGE);
}
END_TEST

/*
 * Memory the events never described is cut too: a range grown back in
 * place with mremap (no event says so) maps the segment's frames again.
 * A write there after the cut must copy before it writes, whether or not
 * the daemon ever saw a fault there.
 */
START_TEST(test_undescribed_range_protected)
{
	const size_t size = 64 * H_PAGE, part = 16 * H_PAGE;
	struct upager_attachment *a;
	struct h_daemon d;
	struct upager *u;
	char *map, *grown, *before;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "seg", size, -1, 0600);
	map = h_attach(u, "seg", 0, &a);
	pat_fill(map, 0, size / H_PAGE, 7);
	before = pat_buf(size, 7);
	/* the tail goes (an unmap event), then comes back in place (none) */
	ck_assert_int_eq(munmap(map + size - part, part), 0);
	grown = mremap(map, size - part, size, 0);
	ck_assert_msg(grown == map, "mremap in place: %s", strerror(errno));
	snap(u, "seg", "s", NULL);
	memset(map + size - part, 0x5a, part); /* the undescribed tail */
	memset(map, 0x6b, H_PAGE);	       /* a described page */
	check_rdonly(u, "s", before, size);
	ck_assert_int_eq((unsigned char)map[size - 1], 0x5a);
	ck_assert_int_eq(upager_detach(a), 0);
	free(before);
	still_serves(u, "undescribed");
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

static Suite *snapshot_suite(void)
{
	Suite *s = h_suite("snapshot");
	TCase *tc;

	tc = h_tcase(s, "cut", SNAP_FEATURES | UFFD_FEATURE_EVENT_FORK);
	tcase_add_test(tc, test_consistency);
	tcase_add_test(tc, test_isolation);
	tcase_add_test(tc, test_private_sharing);

	tc = h_tcase(s, "lifetime", SNAP_FEATURES);
	tcase_add_test(tc, test_many_snapshots_and_lifetime);
	tcase_add_test(tc, test_delete_after_detach);
	tcase_add_test(tc, test_clone);
	tcase_add_test(tc, test_bad_input);

	tc = h_tcase(s, "failure",
		     SNAP_FEATURES | UFFD_FEATURE_POISON |
			     UFFD_FEATURE_EVENT_REMOVE);
	tcase_add_test(tc, test_daemon_killed_with_snapshot);
	tcase_add_test(tc, test_madv_remove_snapshot);

	tc = h_tcase(s, "sources", SNAP_FEATURES);
	tcase_add_test(tc, test_file_segment_snapshot);

	tc = h_tcase(s, "races",
		     SNAP_FEATURES | UFFD_FEATURE_EVENT_UNMAP |
			     UFFD_FEATURE_EVENT_REMAP);
	tcase_add_test(tc, test_unmap_during_cut);
	tcase_add_test(tc, test_undescribed_range_protected);
	return s;
}

int main(void)
{
	h_main(snapshot_suite());
}
