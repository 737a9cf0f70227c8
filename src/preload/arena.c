// SPDX-License-Identifier: MIT
/*
 * The shim's allocator for requests below $UPAGER_MIN_SIZE: its arenas
 * are managed mappings, so that a program's small allocations are the
 * daemon's memory too (faulted in by it, copied at fork, snapshotted,
 * saved).
 *
 * glibc reserves its thread arenas (64 MiB, PROT_NONE, opened with
 * mprotect as they fill) and grows its heap (brk) with libc-internal
 * calls that symbol interposition never sees.  The only way to have that
 * memory managed is to allocate it here, from arenas of the same shape
 * that the shim maps itself.  When: from the first allocation of a
 * thread other than the main one (where glibc would reserve an arena),
 * or once the main thread has asked $UPAGER_MIN_SIZE bytes of small
 * blocks (where its heap would have grown that far); before that, and
 * whenever no arena can be had (no daemon, its limits), glibc's; and
 * glibc's own allocations always (preload.c: from_libc()).  Blocks keep
 * their owner: free() tells the arenas' from glibc's by address, so a
 * program holds both kinds at once.
 *
 * An arena: ARENA_SIZE bytes aligned to ARENA_SIZE, a private segment
 * mapped read-write whole (MAP_NORESERVE; a page is memory once touched).
 * Not PROT_NONE opened with mprotect as it fills, as glibc's: nothing
 * is committed before it is touched either way (the memfd has no page
 * until then), and whole it is one mapping, without a system call to
 * open the next step.
 * Its first pages are its header: a bitmap of the
 * pages in use, one of those that may hold bytes (calloc need not clear
 * the others), and a descriptor (struct pmeta) per page.  Pages go out in
 * runs, first fit, as
 *  - a slab: the objects of one size class (16 B to 16 KiB, four classes
 *    a doubling), handed out from a free list and then never-used ones;
 *  - a run: one block above 16 KiB, in pages.
 * A block's arena is its address rounded down to ARENA_SIZE, looked up in
 * a lock-free set of arenas: free() reads nothing of a pointer that is
 * not the arenas' (glibc's, the shim's large blocks).
 *
 * Each thread keeps a few free objects of each class (no lock; a key's
 * destructor gives them back when the thread ends).  A class's slabs with
 * free objects are on its list, under its lock; the pages of all arenas
 * are under pg_lock.  Freed pages (a run's, an empty slab's) serve the
 * next slab or run; memory goes back to the system in purge().
 *
 * Locks, in order: the class locks (ascending), pg_lock, then preload.c's
 * (fork's prepare handler takes them so, and holds them across the cut
 * and the kernel's fork: the child's copy of the arenas and of this
 * file's static state agree).  grow_lock, then preload.c's (arena_grow()).
 * Nothing calls into preload.c with a class lock or pg_lock held: purge()
 * and arena_grow() let them go first.  Other threads' caches are lost to
 * a fork child (their objects leak), as their threads are.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "shim.h"

#define ARENA_SHIFT 26 /* 64 MiB, as glibc's */
#define ARENA_SIZE ((uintptr_t)1 << ARENA_SHIFT)
#define AP_SHIFT 12
#define AP_SIZE ((uintptr_t)1 << AP_SHIFT)
#define NPAGES (ARENA_SIZE >> AP_SHIFT)
#define SMALL_MAX 16384	     /* largest object of a slab */
#define NCLS 36		     /* size classes up to SMALL_MAX */
#define SLAB_MAX_PAGES 16    /* a slab's pages at most */
#define RUN_MAX (NPAGES / 4) /* pages of a run at most: 16 MiB */
#define PURGE_PAGES 4096 /* free pages that may hold bytes, an arena's most */
#define PURGE_MIN 16	 /* pages: a free span punched, at least */
#define PURGE_SPANS 64	 /* spans punched by one purge, at most */
#define REG_SLOTS 2048	 /* the set of arenas (half full at most) */
#define ARENA_MAGIC 0x75706167617265 /* "upagare" */

/* Off the fast paths of malloc and free. */
#define SLOW __attribute__((noinline, cold))

enum { PM_FREE, PM_SLAB, PM_RUN, PM_TAIL };

/* A page's descriptor: of a slab's or a run's first page (@npages its
 * length), or of a slab's later page (PM_TAIL, @npages back to the
 * first). */
struct pmeta {
	struct pmeta *next, *prev; /* a slab on its class's list */
	void *free;		   /* a slab's free objects, linked */
	uint16_t npages;
	uint16_t nfree; /* a slab's objects free, listed or never used */
	uint16_t bump;	/* a slab's objects ever handed out */
	uint8_t kind, cls;
};

struct arena {
	uint64_t magic;
	struct arena *next;
	uint32_t hint;	     /* no page below is free */
	uint32_t top;	     /* no page from here up was ever used */
	uint32_t dirty_free; /* pages free that may hold bytes */
	uint32_t purge_at;   /* purge() from this many */
	bool purging;
	uint64_t used[NPAGES / 64];
	uint64_t dirty[NPAGES / 64]; /* may hold bytes */
	struct pmeta meta[NPAGES];
};

#define HDR_PAGES ((sizeof(struct arena) + AP_SIZE - 1) >> AP_SHIFT)

_Static_assert(sizeof(struct pmeta) == 32, "pmeta: 32 bytes");
_Static_assert(NPAGES <= UINT16_MAX, "pmeta: page counts in 16 bits");

enum { AR_NEVER, AR_COUNTING, AR_ON };
static _Atomic int state = AR_NEVER;
static bool grow_failed, lost;
static struct arena *purge_due; /* pg_lock: one to purge() */

/* The classes: object size, slab pages and objects, objects a thread
 * keeps. */
static uint32_t cls_size[NCLS];
static uint16_t cls_pages[NCLS], cls_nobj[NCLS], cls_keep[NCLS];

static struct cls_state {
	pthread_mutex_t lock;
	struct pmeta *partial; /* slabs with free objects */
	unsigned int npartial;
} cls[NCLS];

static pthread_mutex_t grow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct arena *arenas;   /* pg_lock; in order of making */
static unsigned int arena_gen; /* pg_lock: arenas made */

static _Atomic uintptr_t reg[REG_SLOTS];
static _Atomic uintptr_t reg_lo = UINTPTR_MAX, reg_hi;

/* A thread's free objects. */
enum { TC_NEW, TC_LIVE, TC_DEAD };
static __thread struct tcache {
	void *head[NCLS];
	uint16_t n[NCLS];
	uint8_t state;
	signed char main; /* the process's first thread; -1: not asked */
	size_t asked;	  /* the main thread's small requests, counted */
} tc SHIM_TLS = { .main = -1 };
static pthread_key_t tc_key;

static unsigned int size_cls(size_t size)
{
	unsigned int lg;

	if (size <= 128)
		return size ? (size - 1) >> 4 : 0;
	lg = 63 - __builtin_clzl(size - 1); /* 2^lg < size <= 2^(lg+1) */
	return 8 + (lg - 7) * 4 + (((size - 1) >> (lg - 2)) & 3);
}

static void cls_init(void)
{
	for (unsigned int c = 0; c < NCLS; c++) {
		size_t size, best = 0, best_waste = SIZE_MAX;

		if (c < 8)
			size = (c + 1) * 16;
		else
			size = (size_t)(5 + (c - 8) % 4)
			       << (7 + (c - 8) / 4 - 2);
		/* Pages for at least 8 objects with little left over; at
		 * most SLAB_MAX_PAGES, for at least 4. */
		for (size_t n = 1; n <= SLAB_MAX_PAGES; n++) {
			size_t bytes = n * AP_SIZE, waste = bytes % size;

			if (bytes < 4 * size)
				continue;
			if (bytes >= 8 * size && waste * 16 <= bytes) {
				best = n;
				break;
			}
			if (waste * 1024 / bytes < best_waste) {
				best_waste = waste * 1024 / bytes;
				best = n;
			}
		}
		cls_size[c] = size;
		cls_pages[c] = best;
		cls_nobj[c] = best * AP_SIZE / size;
		cls_keep[c] = size >= 8192	? 2 :
			      16384 / size > 64 ? 64 :
						  16384 / size;
		pthread_mutex_init(&cls[c].lock, NULL);
	}
}

/* Bitmaps */

static bool bit(const uint64_t *b, size_t i)
{
	return b[i >> 6] >> (i & 63) & 1;
}

static void bits_set(uint64_t *b, size_t i, size_t n, bool on)
{
	for (size_t e = i + n; i < e; i++) {
		if (!(i & 63) && i + 64 <= e) {
			b[i >> 6] = on ? ~0ull : 0;
			i += 63;
		} else if (on) {
			b[i >> 6] |= 1ull << (i & 63);
		} else {
			b[i >> 6] &= ~(1ull << (i & 63));
		}
	}
}

static size_t bits_count(const uint64_t *b, size_t i, size_t n)
{
	size_t c = 0;

	for (size_t e = i + n; i < e; i++) {
		if (!(i & 63) && i + 64 <= e) {
			c += __builtin_popcountll(b[i >> 6]);
			i += 63;
		} else {
			c += bit(b, i);
		}
	}
	return c;
}

static size_t round_up(size_t x, size_t a)
{
	return (x + a - 1) / a * a;
}

/* The set of arenas */

static size_t reg_hash(uintptr_t base)
{
	return ((base >> ARENA_SHIFT) * 0x9e3779b97f4a7c15ull) >> 53; /* 11 */
}

static struct arena *arena_of(const void *p)
{
	uintptr_t base = (uintptr_t)p & ~(ARENA_SIZE - 1);

	if (base < atomic_load_explicit(&reg_lo, memory_order_relaxed) ||
	    base >= atomic_load_explicit(&reg_hi, memory_order_relaxed))
		return NULL;
	for (size_t h = reg_hash(base), n = 0; n < REG_SLOTS;
	     n++, h = (h + 1) % REG_SLOTS) {
		uintptr_t v = atomic_load_explicit(&reg[h],
						   memory_order_acquire);

		if (v == base)
			return (struct arena *)base;
		if (!v)
			break;
	}
	return NULL;
}

/* grow_lock held. */
static bool reg_add(uintptr_t base)
{
	for (size_t h = reg_hash(base), n = 0; n < REG_SLOTS / 2;
	     n++, h = (h + 1) % REG_SLOTS) {
		if (atomic_load(&reg[h]))
			continue;
		atomic_store_explicit(&reg[h], base, memory_order_release);
		if (base < atomic_load(&reg_lo))
			atomic_store(&reg_lo, base);
		if (base + ARENA_SIZE > atomic_load(&reg_hi))
			atomic_store(&reg_hi, base + ARENA_SIZE);
		return true;
	}
	return false;
}

/* Pages */

static struct arena *arena_of_meta(const struct pmeta *m)
{
	return (struct arena *)((uintptr_t)m & ~(ARENA_SIZE - 1));
}

static char *page_addr(const struct pmeta *m)
{
	struct arena *a = arena_of_meta(m);

	return (char *)a + ((size_t)(m - a->meta) << AP_SHIFT);
}

/* First fit of @n free pages at a multiple of @align pages in @a: the
 * first's index, or 0 (the header's). */
static size_t fit(const struct arena *a, size_t n, size_t align)
{
	size_t i = round_up(a->hint, align), j;

	while (i + n <= NPAGES) {
		if (a->used[i >> 6] == ~0ull) {
			i = round_up((i | 63) + 1, align);
			continue;
		}
		for (j = i; j < i + n && !bit(a->used, j); j++)
			;
		if (j == i + n)
			return i;
		i = round_up(j + 1, align);
	}
	return 0;
}

/*
 * pg_lock held.  @n pages at a multiple of @align pages, marked in use: their
 * first descriptor, and in @zero whether they read zeros; NULL when no arena
 * has them (@gen: the arenas seen).
 */
static struct pmeta *pages_get(size_t n, size_t align, bool *zero,
			       unsigned int *gen)
{
	for (struct arena *a = arenas; a; a = a->next) {
		size_t i = fit(a, n, align), k;

		if (!i)
			continue;
		bits_set(a->used, i, n, true);
		k = bits_count(a->dirty, i, n);
		*zero = !k;
		a->dirty_free -= k;
		bits_set(a->dirty, i, n, true);
		if (i == a->hint)
			a->hint = i + n;
		if (i + n > a->top)
			a->top = i + n;
		return &a->meta[i];
	}
	*gen = arena_gen;
	return NULL;
}

/* pg_lock held.  The pages of @m go back; @zero: they read zeros. */
static void pages_put(struct pmeta *m, bool zero)
{
	struct arena *a = arena_of_meta(m);
	size_t i = m - a->meta, n = m->npages;

	for (size_t k = 0; k < n; k++)
		m[k].kind = PM_FREE;
	bits_set(a->used, i, n, false);
	if (zero)
		bits_set(a->dirty, i, n, false);
	else
		a->dirty_free += bits_count(a->dirty, i, n);
	if (i < a->hint)
		a->hint = i;
	if (a->dirty_free >= a->purge_at && !a->purging)
		purge_due = a;
}

/*
 * Memory goes back: once an arena holds PURGE_PAGES free pages that may
 * hold bytes, its free spans of at least PURGE_MIN pages are punched
 * (when that makes them read zeros: not while a fork child's snapshot
 * shares them).  Not at each free: a program that frees and allocates
 * again (realloc growing a buffer) would fault its pages in again through
 * the daemon each time; glibc keeps what its arenas held, too.  The spans
 * are taken (marked in use) under pg_lock and punched without it:
 * preload.c's table lock is taken by the punch, and fork() holds that
 * one while the atfork handler takes pg_lock.  No lock held here.
 */
static SLOW void purge(struct arena *a)
{
	struct {
		uint32_t i, n;
		bool zero;
	} sp[PURGE_SPANS];
	size_t k = 0, n = 0, i, j;

	pthread_mutex_lock(&pg_lock);
	if (purge_due == a)
		purge_due = NULL;
	if (a->purging || a->dirty_free < a->purge_at) {
		pthread_mutex_unlock(&pg_lock);
		return;
	}
	a->purging = true;
	for (i = HDR_PAGES; i < a->top && k < PURGE_SPANS; i = j + 1) {
		for (j = i; j < a->top && !bit(a->used, j) && bit(a->dirty, j);
		     j++)
			;
		if (j - i >= PURGE_MIN) {
			sp[k++] = (typeof(sp[0])){ .i = i, .n = j - i };
			bits_set(a->used, i, j - i, true);
		}
	}
	pthread_mutex_unlock(&pg_lock);
	shim_guard++;
	for (size_t s = 0; s < k; s++) {
		sp[s].zero = shim_release((char *)a +
						  ((size_t)sp[s].i << AP_SHIFT),
					  (size_t)sp[s].n << AP_SHIFT);
		n += sp[s].zero ? sp[s].n : 0;
	}
	shim_guard--;
	pthread_mutex_lock(&pg_lock);
	for (size_t s = 0; s < k; s++) {
		bits_set(a->used, sp[s].i, sp[s].n, false);
		if (sp[s].zero)
			bits_set(a->dirty, sp[s].i, sp[s].n, false);
		if (sp[s].i < a->hint)
			a->hint = sp[s].i;
	}
	a->dirty_free -= n;
	/* What could not be punched (a snapshot shares it, or the arena is
	 * the kernel's memory now) is not tried again at every free. */
	a->purge_at = a->dirty_free + PURGE_PAGES;
	a->purging = false;
	pthread_mutex_unlock(&pg_lock);
	shim_debug("arena at %p: %zu pages punched in %zu spans", (void *)a, n,
		   k);
}

/* No lock held, not inside the shim. */
static void maybe_purge(void)
{
	struct arena *a = purge_due;

	if (a) {
		int e = errno;

		purge(a);
		errno = e;
	}
}

/*
 * A new arena, unless one was made since @gen.  No lock of the
 * allocator held but maybe grow_lock (@locked).  0, or -1 when none can
 * be had (from then on the arenas stay as they are).
 */
static int arena_grow(unsigned int gen, bool locked)
{
	struct arena *a = NULL, **tail;
	int ret = -1, e = errno;

	shim_guard++;
	if (!locked)
		pthread_mutex_lock(&grow_lock);
	pthread_mutex_lock(&pg_lock);
	if (arena_gen != gen)
		ret = 0;
	pthread_mutex_unlock(&pg_lock);
	if (ret && !grow_failed) {
		a = shim_arena_map(ARENA_SIZE);
		if (a && reg_add((uintptr_t)a)) {
			a->magic = ARENA_MAGIC;
			a->hint = HDR_PAGES;
			a->purge_at = PURGE_PAGES;
			bits_set(a->used, 0, HDR_PAGES, true);
			bits_set(a->dirty, 0, HDR_PAGES, true);
			pthread_mutex_lock(&pg_lock);
			for (tail = &arenas; *tail; tail = &(*tail)->next)
				;
			*tail = a;
			arena_gen++;
			pthread_mutex_unlock(&pg_lock);
			shim_debug("arena at %p (%zu MiB)", (void *)a,
				   (size_t)(ARENA_SIZE >> 20));
			ret = 0;
		} else {
			/* (mapped, not registered: it stays, unused) */
			grow_failed = true;
			shim_debug("no arena: small blocks are glibc's from "
				   "now on");
		}
	}
	if (!locked)
		pthread_mutex_unlock(&grow_lock);
	shim_guard--;
	errno = e;
	return ret;
}

/* Slabs: class lock held */

static void list_add(struct cls_state *k, struct pmeta *m)
{
	m->prev = NULL;
	m->next = k->partial;
	if (k->partial)
		k->partial->prev = m;
	k->partial = m;
	k->npartial++;
}

static void list_del(struct cls_state *k, struct pmeta *m)
{
	if (m->prev)
		m->prev->next = m->next;
	else
		k->partial = m->next;
	if (m->next)
		m->next->prev = m->prev;
	k->npartial--;
}

static struct pmeta *slab_new(unsigned int c, unsigned int *gen)
{
	struct pmeta *m;
	bool zero;

	pthread_mutex_lock(&pg_lock);
	m = pages_get(cls_pages[c], 1, &zero, gen);
	pthread_mutex_unlock(&pg_lock);
	if (!m)
		return NULL;
	*m = (struct pmeta){ .npages = cls_pages[c],
			     .nfree = cls_nobj[c],
			     .kind = PM_SLAB,
			     .cls = c };
	for (unsigned int k = 1; k < cls_pages[c]; k++)
		m[k] = (struct pmeta){ .npages = k, .kind = PM_TAIL };
	list_add(&cls[c], m);
	return m;
}

static void *slab_pop(struct pmeta *m, unsigned int c)
{
	void *p = m->free;

	if (p)
		m->free = *(void **)p;
	else
		p = page_addr(m) + (size_t)m->bump++ * cls_size[c];
	if (!--m->nfree)
		list_del(&cls[c], m);
	return p;
}

static void slab_push(struct pmeta *m, unsigned int c, void *p)
{
	struct cls_state *k = &cls[c];

	*(void **)p = m->free;
	m->free = p;
	if (!m->nfree++)
		list_add(k, m);
	if (m->nfree == cls_nobj[c] && k->npartial > 1) {
		/* empty, and not the class's last: its pages go back */
		list_del(k, m);
		pthread_mutex_lock(&pg_lock);
		pages_put(m, false);
		pthread_mutex_unlock(&pg_lock);
	}
}

/* The descriptor of the slab or run holding @p, in arena @a. */
static struct pmeta *meta_of(struct arena *a, const void *p)
{
	struct pmeta *m = &a->meta[((uintptr_t)p - (uintptr_t)a) >> AP_SHIFT];

	if (m->kind == PM_TAIL)
		m -= m->npages;
	if (m->kind == PM_FREE ||
	    (m->kind == PM_RUN && (char *)p != page_addr(m))) {
		shim_log("fatal: free(): invalid pointer %p", p);
		abort();
	}
	return m;
}

/* Thread caches */

static SLOW void tc_flush(unsigned int c, unsigned int keep)
{
	pthread_mutex_lock(&cls[c].lock);
	while (tc.n[c] > keep) {
		void *p = tc.head[c];

		tc.head[c] = *(void **)p;
		tc.n[c]--;
		slab_push(meta_of(arena_of(p), p), c, p);
	}
	pthread_mutex_unlock(&cls[c].lock);
	maybe_purge();
}

static void tc_exit(void *arg)
{
	(void)arg;
	for (unsigned int c = 0; c < NCLS; c++)
		if (tc.n[c])
			tc_flush(c, 0);
	tc.state = TC_DEAD;
}

/* The thread's cache is given back when it ends. */
static SLOW void tc_live(void)
{
	if (tc.state != TC_NEW)
		return;
	shim_guard++; /* (a key's second-level array is calloc()ed) */
	pthread_setspecific(tc_key, &tc);
	shim_guard--;
	tc.state = TC_LIVE;
}

/* An object of class @c from the class's slabs, with more for the
 * thread's cache; NULL when no arena has room. */
static SLOW void *cls_refill(unsigned int c)
{
	struct cls_state *k = &cls[c];
	unsigned int want, gen = 0;
	void *first = NULL;

	tc_live();
	want = tc.state == TC_DEAD ? 1 : cls_keep[c] / 2 + 1;
	for (;;) {
		pthread_mutex_lock(&k->lock);
		while (want) {
			struct pmeta *m = k->partial;
			void *p;

			if (!m && !(m = slab_new(c, &gen)))
				break;
			p = slab_pop(m, c);
			if (first) {
				*(void **)p = tc.head[c];
				tc.head[c] = p;
				tc.n[c]++;
			} else {
				first = p;
			}
			want--;
		}
		pthread_mutex_unlock(&k->lock);
		if (first || arena_grow(gen, false))
			return first;
	}
}

static void *cls_alloc(unsigned int c)
{
	void *p = tc.head[c];

	if (!p)
		return cls_refill(c);
	tc.head[c] = *(void **)p;
	tc.n[c]--;
	return p;
}

/* Runs */

static SLOW void *run_alloc(size_t size, size_t align, bool *zero)
{
	size_t n = size ? (size + AP_SIZE - 1) >> AP_SHIFT : 1;
	size_t al = align > AP_SIZE ? align >> AP_SHIFT : 1;
	unsigned int gen = 0;
	struct pmeta *m;

	if (size > (RUN_MAX << AP_SHIFT) || al > RUN_MAX)
		return NULL;
	do {
		pthread_mutex_lock(&pg_lock);
		m = pages_get(n, al, zero, &gen);
		if (m)
			*m = (struct pmeta){ .npages = n, .kind = PM_RUN };
		pthread_mutex_unlock(&pg_lock);
		if (m)
			return page_addr(m);
	} while (arena_grow(gen, false) == 0);
	return NULL;
}

/* @inside: called with the guard held (a pthread_atfork handler while
 * fork() holds every lock): nothing is waited for; what cannot be freed
 * now stays allocated. */
static SLOW void run_free(struct pmeta *m, bool inside)
{
	if (inside) {
		if (pthread_mutex_trylock(&pg_lock)) {
			shim_debug("free of %p inside the shim: kept",
				   (void *)page_addr(m));
			return;
		}
	} else {
		pthread_mutex_lock(&pg_lock);
	}
	pages_put(m, false);
	pthread_mutex_unlock(&pg_lock);
	if (!inside)
		maybe_purge();
}

/* Entry points (shim.h) */

/* Whether this request turns the arenas on (see the top of the file). */
static SLOW bool arena_enable(size_t size)
{
	if (tc.main < 0)
		tc.main = syscall(SYS_gettid) == getpid();
	int e = errno;

	if (tc.main && (tc.asked += size) < cfg_min_size)
		return false;
	shim_guard++;
	pthread_mutex_lock(&grow_lock);
	if (atomic_load(&state) == AR_COUNTING) {
		if (shim_connected() && arena_grow(0, true) == 0) {
			atomic_store(&state, AR_ON);
			shim_debug("small blocks from the shim's arenas on (%s)",
				   tc.main ? "the main thread's heap grew" :
					     "a second thread allocates");
		} else {
			atomic_store(&state, AR_NEVER);
		}
	}
	pthread_mutex_unlock(&grow_lock);
	shim_guard--;
	errno = e;
	return atomic_load(&state) == AR_ON;
}

void *arena_alloc(size_t size, size_t align, bool zero)
{
	int s = atomic_load_explicit(&state, memory_order_relaxed);
	bool clean = false;
	void *p;

	if (s != AR_ON && (s != AR_COUNTING || !arena_enable(size)))
		return NULL;
	if (align <= 16 && size <= SMALL_MAX) {
		p = cls_alloc(size_cls(size));
		if (p && zero)
			memset(p, 0, size);
		return p;
	}
	if (align <= AP_SIZE && size <= SMALL_MAX) {
		/* a class whose objects are aligned so (slabs are pages) */
		for (unsigned int c = size_cls(size); c < NCLS; c++)
			if (cls_size[c] % align == 0) {
				p = cls_alloc(c);
				if (p && zero)
					memset(p, 0, size);
				return p;
			}
	}
	p = run_alloc(size, align, &clean);
	if (p && zero && !clean)
		memset(p, 0, size);
	return p;
}

bool arena_owns(const void *p)
{
	return arena_of(p) != NULL;
}

bool arena_free(void *p)
{
	struct arena *a = arena_of(p);
	bool inside = shim_guard != 0;
	struct pmeta *m;
	unsigned int c;

	if (!a)
		return false;
	if (lost)
		return true; /* not this process's memory: it leaks */
	m = meta_of(a, p);
	if (m->kind == PM_RUN) {
		run_free(m, inside);
		return true;
	}
	c = m->cls;
	if (!inside && tc.state == TC_LIVE && tc.n[c] < cls_keep[c]) {
		*(void **)p = tc.head[c];
		tc.head[c] = p;
		tc.n[c]++;
		return true;
	}
	if (inside || tc.state == TC_DEAD) {
		if (inside ? pthread_mutex_trylock(&cls[c].lock) :
			     pthread_mutex_lock(&cls[c].lock)) {
			shim_debug("free of %p inside the shim: kept", p);
			return true;
		}
		slab_push(m, c, p);
		pthread_mutex_unlock(&cls[c].lock);
		return true;
	}
	tc_live();
	tc_flush(c, cls_keep[c] / 2);
	*(void **)p = tc.head[c];
	tc.head[c] = p;
	tc.n[c]++;
	return true;
}

size_t arena_usable(const void *p)
{
	struct pmeta *m = meta_of(arena_of(p), p);

	return m->kind == PM_RUN ? (size_t)m->npages << AP_SHIFT :
				   cls_size[m->cls];
}

bool arena_span(const void *addr, uintptr_t *start, size_t *len)
{
	struct arena *a = arena_of(addr);
	size_t i, k;

	if (!a || lost || (uintptr_t)addr < (uintptr_t)a + HDR_PAGES * AP_SIZE)
		return false;
	i = ((uintptr_t)addr - (uintptr_t)a) >> AP_SHIFT;
	/* a run's later pages say nothing: back to its first */
	for (k = i;
	     k >= HDR_PAGES && a->meta[k].kind == PM_FREE && i - k < RUN_MAX;
	     k--)
		;
	if (k < HDR_PAGES)
		return false;
	if (a->meta[k].kind == PM_TAIL)
		k -= a->meta[k].npages;
	if ((a->meta[k].kind != PM_SLAB && a->meta[k].kind != PM_RUN) ||
	    k + a->meta[k].npages <= i)
		return false;
	*start = (uintptr_t)a + (k << AP_SHIFT);
	*len = (size_t)a->meta[k].npages << AP_SHIFT;
	return true;
}

bool arena_fits(const void *p, size_t size)
{
	struct pmeta *m = meta_of(arena_of(p), p);
	struct arena *a = arena_of_meta(m);
	size_t i = m - a->meta, n = m->npages, want;
	bool ok;

	if (m->kind == PM_SLAB)
		return size <= SMALL_MAX && size_cls(size) == m->cls;
	if (size <= SMALL_MAX || size > (RUN_MAX << AP_SHIFT))
		return false;
	/* A run shrinks or grows in place, as glibc's chunks do when the
	 * pages after it are free: no copy, no page faulted in again. */
	want = (size + AP_SIZE - 1) >> AP_SHIFT;
	if (want == n)
		return true;
	if (want > n && i + want > NPAGES)
		return false;
	pthread_mutex_lock(&pg_lock);
	if (want < n) {
		struct pmeta tail = { .npages = n - want };

		m[want] = tail;
		m->npages = want;
		pages_put(&m[want], false);
		ok = true;
	} else {
		ok = !bits_count(a->used, i + n, want - n);
		if (ok) {
			bits_set(a->used, i + n, want - n, true);
			a->dirty_free -= bits_count(a->dirty, i + n, want - n);
			bits_set(a->dirty, i + n, want - n, true);
			if (a->hint == i + n)
				a->hint = i + want;
			if (i + want > a->top)
				a->top = i + want;
			m->npages = want;
		}
	}
	pthread_mutex_unlock(&pg_lock);
	if (want < n)
		maybe_purge();
	return ok;
}

void arena_fork_prepare(void)
{
	for (unsigned int c = 0; c < NCLS; c++)
		pthread_mutex_lock(&cls[c].lock);
	pthread_mutex_lock(&pg_lock);
}

void arena_fork_parent(void)
{
	pthread_mutex_unlock(&pg_lock);
	for (unsigned int c = NCLS; c-- > 0;)
		pthread_mutex_unlock(&cls[c].lock);
}

void arena_fork_child(void)
{
	pthread_mutex_init(&pg_lock, NULL);
	for (unsigned int c = 0; c < NCLS; c++)
		pthread_mutex_init(&cls[c].lock, NULL);
	pthread_mutex_init(&grow_lock, NULL);
	tc.main = 1;
}

void arena_lost(void)
{
	lost = true;
	atomic_store(&state, AR_NEVER);
}

void arena_stop(void)
{
	grow_failed = true;
}

void arena_init(void)
{
	if (sysconf(_SC_PAGESIZE) != (long)AP_SIZE)
		return;
	cls_init();
	if (pthread_key_create(&tc_key, tc_exit))
		return;
	atomic_store(&state, AR_COUNTING);
}
