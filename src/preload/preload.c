// SPDX-License-Identifier: MIT
/*
 * libupager-preload: unmodified programs on daemon-managed memory.
 *
 * Preloaded, this library interposes libc's mmap family, fork, clone,
 * pthread_create, _exit, the exec calls, shm_unlink and malloc.  An anonymous
 * private mapping of at least $UPAGER_MIN_SIZE, and a MAP_SHARED|MAP_ANONYMOUS
 * mapping of any size, becomes a segment of the daemon (zero source, named
 * pid<PID>.<N>), attached at the address the program gets; so do
 * mappings of /dev/zero (the kernel makes them anonymous memory).  A
 * MAP_SHARED mapping of a POSIX shm object (a /dev/shm file) becomes its
 * named segment, shm.<name>.<inode>, which unrelated processes share
 * (see shm_seg()).  Everything else goes to the kernel untouched.
 *
 * The address is the kernel's choice: a PROT_NONE placeholder is mapped
 * first with the program's address, MAP_FIXED and MAP_FIXED_NOREPLACE,
 * so every refusal and errno is the kernel's own; the segment is then
 * attached over the placeholder (upager_attach_at).  When that fails, the
 * program gets an ordinary mapping there instead.
 *
 * What the program sees must not change, and a segment is a MAP_SHARED
 * mapping of a memfd, so for private memory the shim does what the
 * kernel would have done for anonymous memory:
 *
 *  - munmap of a private range punches it out of the memfd (the memory
 *    goes back); a segment left with no mapped byte is detached and
 *    deleted.  MAP_FIXED over a managed range unmaps it first, the same.
 *  - MADV_DONTNEED and MADV_FREE on private memory punch (MADV_REMOVE),
 *    so the range reads zeros, as anonymous memory does; MADV_REMOVE on
 *    it is EINVAL, as on anonymous memory.
 *  - mremap of private memory that must grow, move to a given address or
 *    leave its old range mapped is emulated: a new mapping, a copy, the
 *    old range unmapped (or punched, for MREMAP_DONTUNMAP).  Shrinking is
 *    an munmap of the tail; a shared range is moved by the kernel and the
 *    daemon follows it (remap events).
 *  - fork(): private segments are attached MADV_DONTFORK, so the child
 *    inherits nothing of them from the kernel.  In the shim's atfork
 *    prepare handler (after the program's: see fork_op), each is
 *    snapshotted (a consistent cut); in its child handler (before the
 *    program's, and before fork() returns),
 *    each snapshot is cloned, the clone's pages moved to the addresses
 *    they had in the parent, and the snapshot deleted.  A child that
 *    cannot get its copy aborts with a message rather than run on memory
 *    that is not there.  MADV_DONTFORK and MADV_WIPEONFORK on private
 *    ranges are kept in the table and honoured here.  Shared segments are
 *    inherited as they are (the library claims the child's uffd).
 *  - While a fork child's snapshot may share a private segment, its
 *    frames are not punched (punchable(), priv_zero()).
 *  - clone() without CLONE_VM: the child's private ranges are PROT_NONE,
 *    but for its stack's block when that is managed (copied).
 *  - mprotect is not interposed: the kernel applies it to the mapping.
 *
 * Re-entrancy: the library allocates, maps and starts a thread; a
 * thread-local shim_guard sends whatever the shim itself (and the library's
 * watcher thread) calls to the kernel, and whatever they allocate to
 * glibc (__libc_malloc).  The table lock is a leaf: nothing is called
 * while it is held except raw system calls, except by fork()'s handlers,
 * which hold it across the cut and the kernel's fork so that the child's
 * table is whole (glibc's allocator never calls into this file: its own
 * mmap calls are internal to libc; a free() of the shim's block under the
 * guard never waits for the lock: see "malloc").
 *
 * malloc and friends: requests of at least $UPAGER_MIN_SIZE become
 * blocks on managed private mappings (glibc maps its large blocks with
 * internal calls that the mmap above never sees); see "malloc".  Smaller
 * ones come from the shim's arenas, managed mappings too (arena.c).
 *
 * Lifetime: a process deletes the segments it created at exit, at _exit
 * and before an exec (with UPAGER_DELETE_FORCE: its mappings stay usable
 * until the process goes).  A process killed with SIGKILL leaves its
 * segments' names behind (the daemon drops their attachments, so no
 * memory is mapped, but the frames stay with the name): the next
 * preloaded process to connect deletes segments whose pid is gone.
 */
/* Both mmap and mmap64 are defined here: no renaming of either. */
#undef _FILE_OFFSET_BITS
#include <alloca.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include <upager/upager.h>

#include "lib.h"
#include "proto.h"
#include "shim.h"
#include "size.h"

#define PRELOAD_API __attribute__((visibility("default")))

/* glibc's allocator by its own names: the shim's allocations are not the
 * program's. */
void *__libc_malloc(size_t size);
void *__libc_calloc(size_t n, size_t size);
void __libc_free(void *p);
void *__libc_realloc(void *p, size_t size);
void *__libc_memalign(size_t align, size_t size);
void *__libc_valloc(size_t size);
void *__libc_pvalloc(size_t size);

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#define MADV_KEEPONFORK 19
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/* Raw system calls: the kernel's answer, errno set the libc way. */
static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd,
		      off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static int sys_munmap(void *addr, size_t len)
{
	return syscall(SYS_munmap, addr, len);
}

static void *sys_mremap(void *old, size_t old_len, size_t new_len, int flags,
			void *new_addr)
{
	return (void *)syscall(SYS_mremap, old, old_len, new_len, flags,
			       new_addr);
}

static int sys_madvise(void *addr, size_t len, int advice)
{
	return syscall(SYS_madvise, addr, len, advice);
}

static int sys_mprotect(void *addr, size_t len, int prot)
{
	return syscall(SYS_mprotect, addr, len, prot);
}

/* libc's own @fn, found once */
#define REAL(fn, type)         \
	static type real_##fn; \
	if (!real_##fn)        \
	real_##fn = (type)dlsym(RTLD_NEXT, #fn)

/* Configuration, read once at load */

size_t cfg_min_size = 1 << 20;
bool cfg_debug;
static bool cfg_require, cfg_shm = true;
static const char *cfg_socket;
static dev_t shm_dev; /* of /dev/shm; 0: no such file system */

/* The connection: made at the first mapping worth managing. */
enum { SHIM_UNTRIED, SHIM_ON, SHIM_OFF };
static _Atomic int shim_state = SHIM_UNTRIED;
static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static struct upager *conn;
static long page_size = 4096;
/* malloc() requests from this size up are the shim's: SIZE_MAX until
 * loaded, and when the shim is off (one test on the fast path). */
static size_t malloc_min = SIZE_MAX;

/* Non-zero while this thread runs the shim or the library. */
__thread int shim_guard SHIM_TLS;

static void guard_hook(void)
{
	shim_guard = 1;
}

/*
 * A segment, and the ranges of this process that map parts of it.
 * @att is the library's; @owner the process that created the segment (it
 * deletes it).  Pieces point at it; @pieces counts them.
 */
struct seg {
	char name[UPAGER_NAME_MAX + 1];
	struct upager_attachment *att;
	size_t size;
	pid_t owner;		/* 0: a shm object's, never */
	unsigned int att_flags; /* UPAGER_ATTACH_RDONLY or 0 */
	unsigned int pieces;
	bool priv;
	bool fresh;			/* fork child: made there */
	bool cut;			/* a fork's snapshot was cut of it */
	bool shm;			/* a shm object's (owner 0) */
	bool converted;			/* no cut at a fork: the kernel's
					 * private memory now (fork_convert) */
	bool clone;			/* fork child: its source is the cut,
					 * so a punched page reads the
					 * parent's bytes again, not zeros */
	bool lost;			/* fork child: shared, not inherited */
	struct seg *dead_next;		/* unmanage(): the caller's list */
	char snap[UPAGER_NAME_MAX + 1]; /* fork: the cut, "" if none */
};

#define PIECE_DONTFORK 0x1u
#define PIECE_WIPEONFORK 0x2u

/* [start, end) of this process maps [off, off + end - start) of @seg. */
struct piece {
	uintptr_t start, end;
	size_t off;
	struct seg *seg;
	unsigned int flags;
};

/*
 * The table, sorted by start.  tbl_lock guards it and the segs' @pieces;
 * it is a leaf lock (see the top of this file).  The array is mapped with
 * raw system calls, never malloc()ed.
 */
static pthread_mutex_t tbl_lock = PTHREAD_MUTEX_INITIALIZER;
static struct piece *tbl;
static size_t tbl_n, tbl_cap;
static atomic_uint seg_count; /* for the names */
/* The process the table describes: a vfork or CLONE_VM child shares it
 * but must not act on it at exit or exec. */
static pid_t tbl_pid;

void shim_log(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "upager-preload[%d]: ", getpid());
	va_list ap;

	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(buf) - 1)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(STDERR_FILENO, buf, n) < 0) {
		/* nowhere else to say it */
	}
}

#define debug(...) shim_debug(__VA_ARGS__)

static uintptr_t page_up(uintptr_t x)
{
	return (x + page_size - 1) & ~(uintptr_t)(page_size - 1);
}

/* Table */

static int tbl_reserve(size_t n)
{
	size_t cap = tbl_cap ? tbl_cap : page_size / sizeof(*tbl);
	void *p;

	if (n <= tbl_cap)
		return 0;
	while (cap < n)
		cap *= 2;
	if (tbl)
		p = sys_mremap(tbl, tbl_cap * sizeof(*tbl), cap * sizeof(*tbl),
			       MREMAP_MAYMOVE, NULL);
	else
		p = sys_mmap(NULL, cap * sizeof(*tbl), PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	tbl = p;
	tbl_cap = cap;
	return 0;
}

/* Inserts @pc in order.  Caller holds tbl_lock.  0 or -ENOMEM. */
static int tbl_insert(const struct piece *pc)
{
	size_t i;

	if (tbl_reserve(tbl_n + 1))
		return -ENOMEM;
	for (i = tbl_n; i > 0 && tbl[i - 1].start > pc->start; i--)
		tbl[i] = tbl[i - 1];
	tbl[i] = *pc;
	tbl_n++;
	pc->seg->pieces++;
	return 0;
}

static void tbl_remove_at(size_t i)
{
	tbl[i].seg->pieces--;
	memmove(&tbl[i], &tbl[i + 1], (tbl_n - i - 1) * sizeof(*tbl));
	tbl_n--;
}

/* The index of the first piece that ends after @addr (maybe tbl_n). */
static size_t tbl_first(uintptr_t addr)
{
	size_t lo = 0, hi = tbl_n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (tbl[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool tbl_overlaps(uintptr_t s, uintptr_t e)
{
	size_t i = tbl_first(s);

	return i < tbl_n && tbl[i].start < e;
}

/*
 * Splits the piece holding @at so that a piece starts at @at.  Caller
 * holds tbl_lock.  0 or -ENOMEM.
 */
static int tbl_split(uintptr_t at)
{
	size_t i = tbl_first(at);
	struct piece b;

	if (i == tbl_n || tbl[i].start >= at)
		return 0;
	b = tbl[i];
	b.off += at - b.start;
	b.start = at;
	if (tbl_reserve(tbl_n + 1))
		return -ENOMEM;
	tbl[i].end = at;
	return tbl_insert(&b);
}

/* Connection */

static void seg_free(struct seg *s)
{
	__libc_free(s);
}

/*
 * The segment name of the POSIX shm object @name (a /dev/shm file, inode
 * @ino) in @out: "shm.<name>.<ino>", so that a name unlinked and created
 * again is another segment.  0, or -EINVAL when it makes no valid name.
 */
static int shm_seg_name(const char *name, ino_t ino, char *out)
{
	int n = snprintf(out, UPAGER_NAME_MAX + 1, "shm.%s.%llu", name,
			 (unsigned long long)ino);

	if (n > UPAGER_NAME_MAX || !proto_name_valid(out, UPAGER_NAME_MAX + 1))
		return -EINVAL;
	return 0;
}

/*
 * Whether segment @v is left over: named after a pid that is gone (or
 * after this pid: left by the image before an exec), or after a shm
 * object whose /dev/shm file is gone (unlinked by a process without the
 * shim).
 */
/* Whether @name is a shm object's segment whose /dev/shm file is gone
 * (unlinked, or another file by that name now). */
static bool shm_file_gone(const char *name)
{
	const char *dot = strrchr(name, '.');
	char path[UPAGER_NAME_MAX + 16];
	struct stat st;

	if (strncmp(name, "shm.", 4) || dot == name + 3)
		return false;
	snprintf(path, sizeof(path), "/dev/shm/%.*s", (int)(dot - name - 4),
		 name + 4);
	return stat(path, &st) ? errno == ENOENT :
				 st.st_ino != strtoull(dot + 1, NULL, 10);
}

static bool stale(const struct upager_segment_info *v)
{
	unsigned long pid;
	char *end;

	if (v->uid != geteuid() || v->nr_attachments)
		return false; /* (a process that maps it may fork) */
	if (!strncmp(v->name, "shm.", 4))
		return shm_file_gone(v->name);
	if (strncmp(v->name, "pid", 3))
		return false;
	pid = strtoul(v->name + 3, &end, 10);
	if (*end != '.' || !pid || pid > INT_MAX)
		return false;
	return (pid_t)pid == getpid() || (kill(pid, 0) < 0 && errno == ESRCH);
}

/* Deletes the segments left over (stale()): what a process killed with
 * SIGKILL left, say. */
static void reap_stale(struct upager *u)
{
	struct upager_segment_info *v;
	int n = upager_list(u, NULL, 0);

	if (n <= 0)
		return;
	n += 16;
	v = __libc_malloc(n * sizeof(*v));
	if (!v)
		return;
	n = upager_list(u, v, n);
	for (int i = 0; i < n; i++)
		if (stale(&v[i]) &&
		    upager_delete(u, v[i].name, UPAGER_DELETE_FORCE) == 0)
			debug("deleted %s, left by a process that is gone",
			      v[i].name);
	__libc_free(v);
}

/* The connection, made once; NULL when the shim is off. */
static struct upager *shim_conn(void)
{
	int state = atomic_load(&shim_state), ret;

	if (state == SHIM_ON)
		return conn;
	if (state == SHIM_OFF)
		return NULL;
	pthread_mutex_lock(&conn_lock);
	if (atomic_load(&shim_state) == SHIM_UNTRIED) {
		ret = upager_connect(cfg_socket, &conn);
		if (ret == 0) {
			reap_stale(conn);
			atomic_store(&shim_state, SHIM_ON);
			debug("connected to the daemon (pid %d)",
			      upager_daemon_pid(conn));
		} else {
			shim_log("%s: no daemon (%s): running on ordinary memory",
				 cfg_require ? "error" : "warning",
				 strerror(-ret));
			if (cfg_require)
				abort();
			malloc_min = SIZE_MAX;
			atomic_store(&shim_state, SHIM_OFF);
		}
	}
	pthread_mutex_unlock(&conn_lock);
	return atomic_load(&shim_state) == SHIM_ON ? conn : NULL;
}

/*
 * A new segment of @len bytes attached at @at (over a placeholder),
 * @priv: not inherited by fork (the fork wrapper copies it).  Returns it,
 * or NULL with nothing left in the daemon (@at may be unmapped then).
 */
/* The library took no more attachments (descriptors, or its limit of
 * one connection): none is asked for until one goes (seg_drop()). */
static atomic_bool att_full;

static struct seg *seg_new(size_t len, void *at, bool priv)
{
	struct upager_create_opts o = { .size = len, .source_fd = -1 };
	struct upager *u = shim_conn();
	struct seg *s;
	int ret;

	if (!u || atomic_load(&att_full))
		return NULL;
	s = __libc_calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->owner = getpid();
	s->priv = priv;
	s->size = len;
	snprintf(s->name, sizeof(s->name), "pid%d.%u", s->owner,
		 atomic_fetch_add(&seg_count, 1) + 1);
	ret = upager_create(u, s->name, &o);
	if (ret == -EEXIST) {
		/* left by our image before an exec that failed to say so */
		upager_delete(u, s->name, UPAGER_DELETE_FORCE);
		ret = upager_create(u, s->name, &o);
	}
	if (ret == 0) {
		ret = upager_attach_at(u, s->name,
				       priv ? UPAGER_ATTACH_DONTFORK : 0, at,
				       &s->att);
		if (ret)
			upager_delete(u, s->name, UPAGER_DELETE_FORCE);
		if (ret == -EMFILE)
			atomic_store(&att_full, true);
	}
	if (ret) {
		debug("%zu bytes at %p: %s: ordinary memory", len, at,
		      strerror(-ret));
		seg_free(s);
		return NULL;
	}
	return s;
}

/*
 * Shared segment @s's name goes when no process maps it any more (the
 * daemon deletes it at the last detach): until then another process
 * that maps it may fork a child that attaches it again by name (no fork
 * events).
 */
static void shared_forget(struct seg *s)
{
	if (shim_conn() &&
	    upager_delete(conn, s->name, UPAGER_DELETE_UNUSED) == 0)
		debug("%s: deleted once no process maps it", s->name);
}

/* The last piece of @s is gone: detach, and delete it if it is ours. */
static void seg_drop(struct seg *s)
{
	upager_detach(s->att);
	atomic_store(&att_full, false);
	if (s->priv && s->owner == getpid() && shim_conn()) {
		upager_delete(conn, s->name, UPAGER_DELETE_FORCE);
		debug("%s: unmapped, deleted", s->name);
	} else {
		debug("%s: unmapped, detached", s->name);
		if (!s->priv && (s->owner || (s->shm && shm_file_gone(s->name))))
			shared_forget(s);
	}
	seg_free(s);
}

/*
 * Whether private segment @s may have frames punched out of its memfd:
 * not while a snapshot (a fork child's copy) still shares them.  The
 * kernel punches without waiting for the daemon, which then cannot copy
 * the pages out first (DESIGN.md: remove events), and the child would
 * lose them.  Once a fork cut one, the daemon is asked.
 */
static bool punchable(struct seg *s)
{
	struct upager_segment_info info;

	if (s->converted)
		return false; /* a fork child maps the same frames */
	if (!s->cut)
		return true;
	if (shim_conn() && upager_stat(conn, s->name, &info) == 0 &&
	    info.nr_snapshots == 0) {
		s->cut = false;
		return true;
	}
	return false;
}

/*
 * [@start, @end) of private piece @pc reads zeros again (MADV_DONTNEED on
 * anonymous memory).  Punched, when that means zeros: not in a fork
 * child's clone (a hole there reads its source, the parent's cut: zeros
 * are written over all of it) nor while a snapshot shares the segment
 * (zeros are written over what has data; each write copies the page out
 * to the snapshot first).  Caller holds tbl_lock.  0 or -1 (errno).
 */
static int priv_zero(const struct piece *pc, uintptr_t start, uintptr_t end)
{
	struct vma v;

	if (!pc->seg->clone && punchable(pc->seg))
		return sys_madvise((void *)start, end - start, MADV_REMOVE);
	/* One mapping (one protection) at a time, opened for the writes. */
	for (uintptr_t at = start, ve; at < end; at = ve) {
		off_t o = pc->off + (at - pc->start), oe;

		if (vma_at(at, &v) != 1)
			v = (struct vma){ .end = end,
					  .prot = PROT_READ | PROT_WRITE };
		ve = v.end < end ? v.end : end;
		oe = o + (ve - at);
		if (pc->seg->converted) {
			/* the kernel's private memory: fresh zeros */
			sys_mmap((void *)at, ve - at, v.prot,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			continue;
		}
		if (v.prot != (PROT_READ | PROT_WRITE))
			sys_mprotect((void *)at, ve - at,
				     PROT_READ | PROT_WRITE);
		if (pc->seg->clone)
			memset((void *)at, 0, ve - at);
		while (!pc->seg->clone && o < oe) {
			int fd = pc->seg->att->memfd;
			off_t d = lseek(fd, o, SEEK_DATA), h;

			if (d < 0 || d >= oe)
				break;
			h = lseek(fd, d, SEEK_HOLE);
			if (h < 0 || h > oe)
				h = oe;
			memset((void *)(pc->start + (d - pc->off)), 0, h - d);
			o = h;
		}
		if (v.prot != (PROT_READ | PROT_WRITE))
			sys_mprotect((void *)at, ve - at, v.prot);
	}
	return 0;
}

/*
 * Takes [s, e) out of the table: private parts are punched out of their
 * memfds (the memory goes back).  Segments left with nothing go on
 * @dead, for drop_dead() once the caller has unmapped or replaced the
 * range: detaching earlier would free the addresses for another thread's
 * mmap before the caller's munmap.  0, or -ENOMEM when a piece could not
 * be split.
 */
static int unmanage(uintptr_t s, uintptr_t e, struct seg **dead)
{
	int ret = 0;

	pthread_mutex_lock(&tbl_lock);
	if (tbl_overlaps(s, e) && (tbl_split(s) || tbl_split(e)))
		ret = -ENOMEM;
	for (size_t i = tbl_first(s); !ret && i < tbl_n && tbl[i].start < e;) {
		struct piece pc = tbl[i];

		/* (Not punched while a snapshot shares it: the segment's
		 * frames go when it is deleted and the snapshot is done.) */
		if (pc.seg->priv && punchable(pc.seg))
			sys_madvise((void *)pc.start, pc.end - pc.start,
				    MADV_REMOVE);
		tbl_remove_at(i);
		if (!pc.seg->pieces) {
			pc.seg->dead_next = *dead;
			*dead = pc.seg;
		}
	}
	pthread_mutex_unlock(&tbl_lock);
	return ret;
}

static void drop_dead(struct seg *dead)
{
	while (dead) {
		struct seg *next = dead->dead_next;

		seg_drop(dead);
		dead = next;
	}
}

/* mmap */

/* What a mapping is to the shim. */
enum map_kind {
	KIND_KERNEL, /* not managed: the kernel's */
	KIND_ANON,   /* anonymous: a zero-source segment */
	KIND_ZERO,   /* of /dev/zero: the same, as the kernel makes it */
	KIND_SHM,    /* shared, of a /dev/shm file: its named segment */
};

/* Whether a mapping of @len bytes with @flags (anonymous, or of
 * /dev/zero) is worth a segment. */
#define GROW_MAX_PIECES 8

/* Set by mremap growing managed memory in place: the tail is managed
 * whatever its size, so that the range stays one mapping to a later
 * mremap (the kernel would have merged it). */
static __thread bool any_size;

static bool manageable(size_t len, int flags)
{
	int type = flags & MAP_TYPE;

	if (type == MAP_SHARED || type == MAP_SHARED_VALIDATE)
		return true;
	return type == MAP_PRIVATE && (len >= cfg_min_size || any_size);
}

/*
 * What mmap(@len, @flags, @fd) is; for KIND_SHM, @st is @fd's and @shm its
 * segment's name.  A shm object is recognised by its file, not by
 * shm_open(): its descriptor's link in /proc names it.
 */
static enum map_kind map_kind(size_t len, int flags, int fd, struct stat *st,
			      char *shm)
{
	int type = flags & MAP_TYPE;
	char link[40], path[PATH_MAX];
	ssize_t n;

	if (!len ||
	    (flags & (MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB | MAP_32BIT)))
		return KIND_KERNEL;
	if (flags & MAP_ANONYMOUS)
		return manageable(len, flags) ? KIND_ANON : KIND_KERNEL;
	if (fd < 0 || fstat(fd, st))
		return KIND_KERNEL;
	if (S_ISCHR(st->st_mode) && st->st_rdev == makedev(1, 5))
		return manageable(len, flags) ? KIND_ZERO : KIND_KERNEL;
	if (!cfg_shm || !S_ISREG(st->st_mode) || st->st_dev != shm_dev ||
	    (type != MAP_SHARED && type != MAP_SHARED_VALIDATE))
		return KIND_KERNEL;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n <= 9 || strncmp(path, "/dev/shm/", 9))
		return KIND_KERNEL;
	path[n] = '\0';
	/* unlinked: its segment, while a process maps it (shm_seg()) */
	if (!st->st_nlink && n > 10 && strstr(path, " (deleted)"))
		*strstr(path, " (deleted)") = '\0';
	if (strchr(path + 9, '/') || shm_seg_name(path + 9, st->st_ino, shm)) {
		debug("mmap of %s: not a name for a segment: the kernel's",
		      path);
		return KIND_KERNEL;
	}
	return KIND_SHM;
}

/*
 * Shm object @fd (@st) as segment @name, created (its source the file,
 * so what the file held is what the segment holds) or found, and its
 * range from @off moved over the kernel's mapping [@at, @at + @len).
 * Unrelated processes share it by name; it lives until shm_unlink().
 * Returns the seg, or NULL with @at untouched.
 */
static struct seg *shm_seg(const char *name, int fd, const struct stat *st,
			   off_t off, size_t len, void *at)
{
	struct upager_create_opts o = {
		.size = page_up((size_t)st->st_size > off + len ?
					(size_t)st->st_size :
					off + len),
		.source_fd = fd,
		.mode = st->st_mode & 0777,
	};
	struct upager *u = shim_conn();
	int acc = fcntl(fd, F_GETFL) & O_ACCMODE, ret;
	uintptr_t base;
	struct seg *s;

	if (!u)
		return NULL;
	s = __libc_calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	strcpy(s->name, name);
	s->shm = true;
	/* Unlinked, it is not made again: found, or the file's. */
	ret = st->st_nlink ? upager_create(u, name, &o) : -EEXIST;
	s->att_flags = acc == O_RDONLY ? UPAGER_ATTACH_RDONLY : 0;
	if (ret == 0 || ret == -EEXIST)
		ret = upager_attach(u, name, s->att_flags, &s->att);
	if (ret)
		goto fail;
	base = (uintptr_t)upager_attachment_addr(s->att);
	s->size = upager_attachment_size(s->att);
	if (off + len > s->size) {
		/* grown since its segment was made */
		ret = -EFBIG;
	} else if (sys_mremap((void *)(base + off), len, len,
			      MREMAP_MAYMOVE | MREMAP_FIXED, at) == MAP_FAILED) {
		ret = -errno;
	}
	if (ret) {
		upager_detach(s->att);
		goto fail;
	}
	/* What the mapping does not cover. */
	if (off)
		sys_munmap((void *)base, off);
	if (off + len < s->size)
		sys_munmap((void *)(base + off + len), s->size - off - len);
	return s;
fail:
	shim_log("warning: shm %s: %s: this mapping is the file's, not shared "
		 "with other processes' upager mappings",
		 name, strerror(-ret));
	seg_free(s);
	return NULL;
}

/*
 * mmap(@addr, @len, ..., @flags with MAP_FIXED) over managed memory.  The
 * kernel refuses before it touches the old range (a bad descriptor, an
 * access mode, a place outside the address space), and so must the shim:
 * the managed range is taken out only once the kernel has accepted the
 * mapping.  The place is asked with MAP_FIXED_NOREPLACE (the kernel's
 * checks of MAP_FIXED, then EEXIST: the range is in use); the mapping
 * itself is made where the kernel likes, then moved over the range with
 * mremap(MREMAP_FIXED), which replaces it in one step: no other thread
 * can map into a hole meanwhile.  Errors are the kernel's, but ENOMEM
 * when the table cannot be split.  Where there is no room for the
 * mapping beside the range (an address-space or commit limit), the
 * kernel's own MAP_FIXED call, with the range unmanaged first.
 */
static void *map_over(void *addr, size_t len, int prot, int flags, int fd,
		      off_t off)
{
	uintptr_t s = (uintptr_t)addr, e = page_up(s + len);
	int any = flags & ~(MAP_FIXED | MAP_32BIT | MAP_POPULATE);
	struct seg *dead = NULL;
	void *p;

	p = sys_mmap(addr, len, prot, any | MAP_FIXED_NOREPLACE, fd, off);
	if (p != MAP_FAILED)
		sys_munmap(p, len); /* free after all (or an old kernel) */
	else if (errno != EEXIST)
		return MAP_FAILED;
	p = sys_mmap(NULL, len, prot, flags & ~(MAP_FIXED | MAP_32BIT), fd, off);
	if (p == MAP_FAILED && errno != ENOMEM && errno != EAGAIN)
		return MAP_FAILED;
	if (unmanage(s, e, &dead)) {
		if (p != MAP_FAILED)
			sys_munmap(p, len);
		errno = ENOMEM;
		return MAP_FAILED;
	}
	if (p == MAP_FAILED ||
	    sys_mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr) ==
		    MAP_FAILED) {
		/* Not movable (a special mapping, say): the kernel's call. */
		if (p != MAP_FAILED)
			sys_munmap(p, len);
		p = sys_mmap(addr, len, prot, flags, fd, off);
	} else {
		p = addr;
	}
	drop_dead(dead);
	return p;
}

static void *shim_mmap(void *addr, size_t len, int prot, int flags, int fd,
		       off_t off)
{
	bool over = false, priv;
	char shm[UPAGER_NAME_MAX + 1];
	enum map_kind kind;
	struct stat st;
	struct piece pc;
	struct seg *s;
	void *p;

	/* MAP_FIXED_NOREPLACE wins over MAP_FIXED: it replaces nothing. */
	if ((flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) == MAP_FIXED && len &&
	    !((uintptr_t)addr & (page_size - 1)) && len < (size_t)PTRDIFF_MAX) {
		pthread_mutex_lock(&tbl_lock);
		over = tbl_overlaps((uintptr_t)addr,
				    page_up((uintptr_t)addr + len));
		pthread_mutex_unlock(&tbl_lock);
		if (over)
			debug("mmap MAP_FIXED over managed %p+%zu", addr, len);
	}
	kind = map_kind(len, flags, fd, &st, shm);
	if (kind == KIND_KERNEL || !shim_conn())
		return over ? map_over(addr, len, prot, flags, fd, off) :
			      sys_mmap(addr, len, prot, flags, fd, off);
	priv = (flags & MAP_TYPE) == MAP_PRIVATE;
	/*
	 * The kernel picks the place and says what is wrong: a PROT_NONE
	 * placeholder for anonymous memory; for a descriptor, the kernel's
	 * own mapping (its access checks are the descriptor's).
	 */
	if (kind == KIND_ANON)
		p = (over ? map_over :
			    sys_mmap)(addr, len, PROT_NONE,
				      MAP_PRIVATE | MAP_ANONYMOUS |
					      MAP_NORESERVE |
					      (flags & (MAP_FIXED |
							MAP_FIXED_NOREPLACE)),
				      -1, off);
	else
		p = (over ? map_over : sys_mmap)(addr, len, prot,
						 flags & ~MAP_POPULATE, fd, off);
	if (p == MAP_FAILED)
		return p;
	len = page_up(len);
	if (kind == KIND_SHM) {
		s = shm_seg(shm, fd, &st, off, len, p);
		if (!s)
			goto kernel;
	} else {
		s = seg_new(len, p, priv);
		if (!s)
			goto kernel_again;
	}
	if (prot != (PROT_READ | PROT_WRITE))
		sys_mprotect(p, len, prot);
	pc = (struct piece){ .start = (uintptr_t)p,
			     .end = (uintptr_t)p + len,
			     .off = kind == KIND_SHM ? (size_t)off : 0,
			     .seg = s };
	pthread_mutex_lock(&tbl_lock);
	if (tbl_insert(&pc)) {
		pthread_mutex_unlock(&tbl_lock);
		seg_drop(s);
		goto kernel_again;
	}
	pthread_mutex_unlock(&tbl_lock);
	if (flags & MAP_POPULATE)
		sys_madvise(p, len,
			    prot & PROT_WRITE ? MADV_POPULATE_WRITE :
						MADV_POPULATE_READ);
	debug("mmap %zu %s%s -> %s at %p", len, priv ? "private" : "shared",
	      kind == KIND_ZERO ? " /dev/zero" :
	      kind == KIND_SHM	? " shm" :
				  "",
	      s->name, p);
	return p;

kernel_again:
	/* The placeholder may be gone: the mapping asked for, at @p. */
	return sys_mmap(p, len, prot,
			(flags & ~MAP_FIXED_NOREPLACE) | MAP_FIXED, fd, off);
kernel:
	if (flags & MAP_POPULATE)
		sys_madvise(p, len,
			    prot & PROT_WRITE ? MADV_POPULATE_WRITE :
						MADV_POPULATE_READ);
	return p;
}

/* tbl_lock held: the piece of private managed memory holding @addr (not
 * the kernel's memory yet: fork_convert()), or NULL. */
static struct piece *private_at(uintptr_t addr)
{
	size_t i = tbl_first(addr);

	if (i < tbl_n && tbl[i].start <= addr && tbl[i].seg->priv &&
	    !tbl[i].seg->converted)
		return &tbl[i];
	return NULL;
}

/* For arena.c (shim.h) */

bool shim_connected(void)
{
	return shim_conn() != NULL;
}

void *shim_arena_map(size_t len)
{
	uintptr_t r, a;
	bool managed;
	size_t i;
	void *p;

	p = sys_mmap(NULL, 2 * len, PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	r = (uintptr_t)p;
	a = (r + len - 1) & ~(uintptr_t)(len - 1);
	if (a > r)
		sys_munmap(p, a - r);
	sys_munmap((void *)(a + len), r + len - a);
	/* over the reservation: the segment, or the kernel's memory */
	p = shim_mmap((void *)a, len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
		      -1, 0);
	if (p == MAP_FAILED) {
		sys_munmap((void *)a, len);
		return NULL;
	}
	pthread_mutex_lock(&tbl_lock);
	i = tbl_first(a);
	managed = i < tbl_n && tbl[i].start == a && tbl[i].end == a + len;
	pthread_mutex_unlock(&tbl_lock);
	if (!managed) {
		sys_munmap(p, len);
		return NULL;
	}
	return p;
}

bool shim_release(void *p, size_t len)
{
	uintptr_t s = (uintptr_t)p;
	struct piece *pc;
	bool zero = false;

	pthread_mutex_lock(&tbl_lock);
	pc = private_at(s);
	if (pc && pc->end >= s + len && !pc->seg->clone && punchable(pc->seg))
		zero = sys_madvise(p, len, MADV_REMOVE) == 0;
	pthread_mutex_unlock(&tbl_lock);
	return zero;
}

/*
 * AddressSanitizer, preloaded before the shim, maps its symbolizer's
 * memory through mmap while it prints a report, holding its thread
 * registry: a first attachment then would start the library's watcher
 * thread (pthread_create waits for that registry) and hang the report.
 * Its mappings then are the kernel's.
 */
extern int __asan_report_present(void) __attribute__((weak));

static bool in_sanitizer_report(void)
{
	return __asan_report_present && __asan_report_present();
}

PRELOAD_API void *mmap(void *addr, size_t len, int prot, int flags, int fd,
		       off_t off)
{
	void *p;
	int e;

	if (shim_guard || in_sanitizer_report())
		return sys_mmap(addr, len, prot, flags, fd, off);
	shim_guard++;
	e = errno;
	p = shim_mmap(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED)
		errno = e;
	shim_guard--;
	return p;
}

PRELOAD_API void *mmap64(void *addr, size_t len, int prot, int flags, int fd,
			 off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

/* munmap */

PRELOAD_API int munmap(void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr;
	struct seg *dead = NULL;
	int ret, e;

	if (shim_guard || !len || (s & (page_size - 1)) ||
	    len > (size_t)PTRDIFF_MAX || atomic_load(&shim_state) != SHIM_ON)
		return sys_munmap(addr, len);
	shim_guard++;
	e = errno;
	if (unmanage(s, page_up(s + len), &dead)) {
		errno = ENOMEM;
		ret = -1;
	} else {
		ret = sys_munmap(addr, len);
	}
	drop_dead(dead);
	if (!ret)
		errno = e; /* drop_dead's calls may have set it */
	shim_guard--;
	return ret;
}

/* madvise */

/*
 * Advice on private managed memory that must mean what it means on
 * anonymous memory.  Returns 1 when done (@ret set), 0 to pass through.
 */
static int shim_madvise(uintptr_t s, uintptr_t e, int advice, int *ret)
{
	bool priv_any = false;

	switch (advice) {
	case MADV_DONTNEED:
	case MADV_FREE:
	case MADV_REMOVE:
	case MADV_DONTFORK:
	case MADV_DOFORK:
	case MADV_WIPEONFORK:
	case MADV_KEEPONFORK:
		break;
	default:
		return 0;
	}
	pthread_mutex_lock(&tbl_lock);
	for (size_t i = tbl_first(s); i < tbl_n && tbl[i].start < e; i++)
		priv_any |= tbl[i].seg->priv;
	if (!priv_any) {
		pthread_mutex_unlock(&tbl_lock);
		return 0;
	}
	*ret = 0;
	if (advice == MADV_REMOVE) {
		/* Not on private memory: the kernel's answer for it. */
		errno = EINVAL;
		*ret = -1;
	} else if (advice == MADV_DONTNEED || advice == MADV_FREE) {
		uintptr_t at = s;

		for (size_t i = tbl_first(s); i < tbl_n && tbl[i].start < e;
		     i++) {
			uintptr_t ps = tbl[i].start > s ? tbl[i].start : s;
			uintptr_t pe = tbl[i].end < e ? tbl[i].end : e;

			/* Unmanaged gaps before it: the kernel's advice. */
			if (ps > at &&
			    sys_madvise((void *)at, ps - at, advice) < 0)
				*ret = -1;
			if ((tbl[i].seg->priv ? priv_zero(&tbl[i], ps, pe) :
						sys_madvise((void *)ps, pe - ps,
							    advice)) < 0)
				*ret = -1;
			at = pe;
		}
		if (at < e && sys_madvise((void *)at, e - at, advice) < 0)
			*ret = -1;
	} else if (tbl_split(s) || tbl_split(e)) {
		errno = EAGAIN;
		*ret = -1;
	} else {
		for (size_t i = tbl_first(s); i < tbl_n && tbl[i].start < e;
		     i++) {
			if (!tbl[i].seg->priv) {
				/* the kernel's, on the shared mapping */
				sys_madvise((void *)tbl[i].start,
					    tbl[i].end - tbl[i].start, advice);
				continue;
			}
			/* the kernel forks a converted one: it must know */
			if (tbl[i].seg->converted &&
			    (advice == MADV_DONTFORK || advice == MADV_DOFORK))
				sys_madvise((void *)tbl[i].start,
					    tbl[i].end - tbl[i].start, advice);
			if (advice == MADV_DONTFORK)
				tbl[i].flags |= PIECE_DONTFORK;
			else if (advice == MADV_DOFORK)
				tbl[i].flags &= ~PIECE_DONTFORK;
			else if (advice == MADV_WIPEONFORK)
				tbl[i].flags |= PIECE_WIPEONFORK;
			else
				tbl[i].flags &= ~PIECE_WIPEONFORK;
		}
	}
	pthread_mutex_unlock(&tbl_lock);
	return 1;
}

PRELOAD_API int madvise(void *addr, size_t len, int advice)
{
	uintptr_t s = (uintptr_t)addr;
	int ret;

	if (shim_guard || !len || (s & (page_size - 1)) ||
	    len > (size_t)PTRDIFF_MAX || atomic_load(&shim_state) != SHIM_ON)
		return sys_madvise(addr, len, advice);
	shim_guard++;
	if (!shim_madvise(s, page_up(s + len), advice, &ret))
		ret = sys_madvise(addr, len, advice);
	shim_guard--;
	return ret;
}

/* mremap */

/* one_mapping()'s walk: [at, end) is left to see. */
struct one_map {
	uintptr_t at, end;
	bool strict;
	int prot;
	int ret;
};

static int one_map_fn(const struct vma *v, void *arg)
{
	struct one_map *m = arg;

	if (v->end <= m->at)
		return 0;
	if (v->start > m->at || (m->ret && (m->strict || v->prot != m->prot))) {
		m->ret = 0;
		return 1;
	}
	m->prot = v->prot;
	m->ret = 1;
	m->at = v->end;
	return m->at >= m->end;
}

/*
 * Whether [@s, @e) is one mapping to the program, as mremap asks (EFAULT
 * otherwise: more than one mapping, or a hole): 1 with its protection in
 * @prot, 0 if not, -errno when /proc cannot tell.  Asked of /proc, not of
 * the table: mprotect splits a piece into VMAs the table does not know.
 * Unless @strict, adjacent VMAs of one protection count as one: that is
 * how the shim's own pieces of what the kernel would have merged
 * (anonymous memory grown in place: a segment per step) look there.
 * @s == @e: the mapping at @s.
 */
static int one_mapping(uintptr_t s, uintptr_t e, bool strict, int *prot)
{
	struct one_map m = { .at = s,
			     .end = e > s ? e : s + 1,
			     .strict = strict };
	int ret = vma_walk(one_map_fn, &m);

	if (ret < 0)
		return ret;
	*prot = m.prot;
	return m.ret && m.at >= m.end;
}

/*
 * Private managed memory moved, grown or left behind: a new mapping (of
 * the shim, so managed if it qualifies; MAP_FIXED replaces the target
 * only once the kernel has accepted it), the bytes copied, the old range
 * unmapped (or, MREMAP_DONTUNMAP, punched: it reads zeros, as the
 * kernel leaves it).  @prot: the old range's, one for all of it.
 */
static void *remap_copy(uintptr_t old, size_t old_len, size_t new_len,
			int flags, void *new_addr, int prot)
{
	size_t n = old_len < new_len ? old_len : new_len;
	void *p;

	p = shim_mmap(new_addr, new_len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS |
			      (flags & MREMAP_FIXED ? MAP_FIXED : 0),
		      -1, 0);
	if (p == MAP_FAILED)
		return p;
	if (!(prot & PROT_READ))
		sys_mprotect((void *)old, old_len, prot | PROT_READ);
	memcpy(p, (void *)old, n);
	if (prot != (PROT_READ | PROT_WRITE))
		sys_mprotect(p, new_len, prot);
	if (flags & MREMAP_DONTUNMAP) {
		/* what the kernel leaves behind: pages that read zeros */
		pthread_mutex_lock(&tbl_lock);
		for (size_t i = tbl_first(old);
		     i < tbl_n && tbl[i].start < old + old_len; i++)
			priv_zero(&tbl[i],
				  tbl[i].start > old ? tbl[i].start : old,
				  tbl[i].end < old + old_len ? tbl[i].end :
							       old + old_len);
		pthread_mutex_unlock(&tbl_lock);
		if (!(prot & PROT_READ))
			sys_mprotect((void *)old, old_len, prot);
	} else {
		struct seg *dead = NULL;

		unmanage(old, old + old_len, &dead);
		sys_munmap((void *)old, old_len);
		drop_dead(dead);
	}
	return p;
}

static void *shim_mremap(uintptr_t old, size_t old_len, size_t new_len,
			 int flags, void *new_addr)
{
	uintptr_t oe = old + old_len, at = old;
	struct seg *dead = NULL;
	bool managed, target = false, covered = true, priv = true;
	int prot = PROT_READ | PROT_WRITE;
	size_t npieces = 0;
	struct piece pc = { 0 };
	void *p;

	/* The kernel's refusals of the flags, whatever the memory. */
	if (((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE)) ||
	    ((flags & MREMAP_DONTUNMAP) &&
	     (!(flags & MREMAP_MAYMOVE) || old_len != page_up(new_len))))
		return sys_mremap((void *)old, old_len, new_len, flags,
				  new_addr);
	pthread_mutex_lock(&tbl_lock);
	managed = tbl_overlaps(old, old_len ? oe : old + 1);
	/* Adjacent pieces are one mapping to the program (the kernel would
	 * have merged anonymous ones). */
	for (size_t i = tbl_first(old); i < tbl_n && tbl[i].start < oe; i++) {
		if (!npieces++)
			pc = tbl[i];
		covered &= tbl[i].start <= at;
		priv &= tbl[i].seg->priv;
		at = tbl[i].end;
	}
	covered &= at >= oe;
	if (flags & MREMAP_FIXED)
		target = tbl_overlaps((uintptr_t)new_addr,
				      page_up((uintptr_t)new_addr + new_len));
	pthread_mutex_unlock(&tbl_lock);
	if (!old_len && managed) {
		/* A duplicate of a managed shared mapping would be unserved. */
		errno = EINVAL;
		return MAP_FAILED;
	}
	if (flags & MREMAP_FIXED) {
		uintptr_t ns = (uintptr_t)new_addr, ne = page_up(ns + new_len);

		if ((ns & (page_size - 1)) || (ns < oe && ne > old)) {
			errno = EINVAL;
			return MAP_FAILED;
		}
	}
	if (!managed && !target)
		return sys_mremap((void *)old, old_len, new_len, flags,
				  new_addr);
	if (managed && (!covered || (!priv && npieces > 1))) {
		errno = EFAULT; /* more than one mapping */
		return MAP_FAILED;
	}
	/*
	 * Moved or grown: the kernel refuses a range that is not one mapping
	 * (mprotect may have split it) before it touches anything, the
	 * target of MREMAP_FIXED included; what a move drops is unmapped
	 * first, unchecked.  Since Linux 6.17 a move of the same size may
	 * span mappings and holes: for memory of the kernel's, its start
	 * must be mapped; managed memory is one mapping still (its pieces
	 * are registered with userfaultfd, which the kernel does not move
	 * that way either).  /proc unreadable: the table's word, and the
	 * first part's protection.
	 */
	if (!managed || (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) ||
	    new_len > old_len) {
		size_t keep = page_up(new_len) < old_len ? page_up(new_len) :
							   old_len;
		bool span = !managed && (flags & MREMAP_FIXED) &&
			    page_up(new_len) == old_len;

		if (one_mapping(old, span ? old : old + keep, !managed,
				&prot) == 0) {
			errno = EFAULT;
			return MAP_FAILED;
		}
	}
	/*
	 * A managed target of a move the kernel makes goes now: the kernel
	 * has nothing left to refuse that would have kept it (its later
	 * refusals come after it unmapped the target), and it replaces the
	 * range in one step.  The shim's own move (remap_copy) maps over it
	 * with shim_mmap's MAP_FIXED, which checks before it unmanages.
	 */
	if (target && (!managed || !priv) &&
	    unmanage((uintptr_t)new_addr,
		     page_up((uintptr_t)new_addr + new_len), &dead)) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	if (!managed) {
		p = sys_mremap((void *)old, old_len, new_len, flags, new_addr);
		goto out;
	}
	if (!(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) && new_len <= old_len) {
		if (page_up(new_len) < old_len) {
			struct seg *d2 = NULL;

			unmanage(old + page_up(new_len), oe, &d2);
			sys_munmap((void *)(old + page_up(new_len)),
				   old_len - page_up(new_len));
			drop_dead(d2);
		}
		p = (void *)old;
		goto out;
	}
	if (!priv) {
		size_t noff = pc.off + (old - pc.start);

		/* The kernel moves it; the daemon follows (remap events). */
		p = sys_mremap((void *)old, old_len, new_len, flags, new_addr);
		if (p == MAP_FAILED || (p == (void *)old && new_len <= old_len))
			goto out;
		pthread_mutex_lock(&tbl_lock);
		if (!(flags & MREMAP_DONTUNMAP)) {
			if (p == (void *)old || tbl_split(old) || tbl_split(oe))
				pc.seg = NULL; /* grown in place, or no room */
			else
				tbl_remove_at(tbl_first(old));
		}
		if (pc.seg && p != (void *)old) {
			pc.start = (uintptr_t)p;
			pc.end = (uintptr_t)p + page_up(new_len);
			pc.off = noff;
			tbl_insert(&pc);
		} else if (p == (void *)old) {
			size_t i = tbl_first(old);

			tbl[i].end = old + page_up(new_len);
		}
		pthread_mutex_unlock(&tbl_lock);
		goto out;
	}
	if (!(flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) &&
	    (!(flags & MREMAP_MAYMOVE) || npieces < GROW_MAX_PIECES)) {
		/* Grow in place if there is room, as the kernel prefers:
		 * the tail is a mapping (a segment) of its own, up to
		 * GROW_MAX_PIECES of them; then moved and copied into one. */
		any_size = true;
		p = shim_mmap((void *)oe, new_len - old_len, prot,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			      -1, 0);
		any_size = false;
		if (p != MAP_FAILED) {
			p = (void *)old;
			goto out;
		}
		if (!(flags & MREMAP_MAYMOVE)) {
			errno = ENOMEM;
			goto out;
		}
	}
	p = remap_copy(old, old_len, new_len, flags, new_addr, prot);
out:
	drop_dead(dead);
	return p;
}

PRELOAD_API void *mremap(void *old, size_t old_len, size_t new_len, int flags,
			 ...)
{
	void *new_addr = NULL, *p;
	va_list ap;
	int e;

	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	if (shim_guard || ((uintptr_t)old & (page_size - 1)) || !new_len ||
	    (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) ||
	    old_len > (size_t)PTRDIFF_MAX || new_len > (size_t)PTRDIFF_MAX ||
	    atomic_load(&shim_state) != SHIM_ON)
		return sys_mremap(old, old_len, new_len, flags, new_addr);
	shim_guard++;
	e = errno;
	p = shim_mremap((uintptr_t)old, page_up(old_len), new_len, flags,
			new_addr);
	if (p != MAP_FAILED)
		errno = e;
	shim_guard--;
	return p;
}

/* malloc */

/*
 * glibc's allocator maps its large blocks and arenas with libc-internal
 * calls no preload can see, so the allocator's entry points are
 * interposed instead: a request of at least $UPAGER_MIN_SIZE is a block
 * of the shim, a private managed mapping of its own (shim_mmap); a
 * smaller one is the arenas' (arena.c) once they are on, and everything
 * else is glibc's (__libc_malloc and friends, by the names glibc exports
 * for this; no dlsym).
 *
 * A block: [map, map + len) mapped; the user's pointer is page-aligned,
 * and the page before it holds the header.  free(), realloc() and
 * malloc_usable_size() tell blocks from glibc's without touching memory
 * that may not be there: a pointer not page-aligned is glibc's (no lock);
 * a page-aligned one is glibc's unless blk_slots holds it, and only then
 * is its header read.  blk_slots is a lock-free open-addressed set (the
 * table's lock may be held by this very thread: fork's atfork handlers),
 * in static memory, so a fork child inherits it with the blocks.
 */
#define BLK_MAGIC 0x75706167626c6b31ull /* "upagblk1" */
#define BLK_SLOTS 1024			/* > the attachments of a connection */
#define BLK_TOMB ((uintptr_t)1)
#define BLK_MAX_SEGS 8 /* in-place growth makes a segment per step */

struct blk_hdr {
	uint64_t magic;
	void *user;    /* the pointer the program holds */
	uintptr_t map; /* what free() unmaps */
	size_t map_len;
	size_t size; /* what the program asked for */
	unsigned int segs;
};

static _Atomic uintptr_t blk_slots[BLK_SLOTS];
static atomic_uint blk_live;

static size_t blk_hash(uintptr_t p)
{
	return ((p >> 12) * 0x9e3779b97f4a7c15ull) >> 54; /* 10 bits */
}

static bool blk_add(uintptr_t p)
{
	size_t h = blk_hash(p);

	for (size_t n = 0; n < BLK_SLOTS; n++, h = (h + 1) % BLK_SLOTS) {
		uintptr_t v = atomic_load(&blk_slots[h]);

		if ((v == 0 || v == BLK_TOMB) &&
		    atomic_compare_exchange_strong(&blk_slots[h], &v, p)) {
			atomic_fetch_add(&blk_live, 1);
			return true;
		}
	}
	return false;
}

/* The slot holding @p, or -1. */
static long blk_find(uintptr_t p)
{
	size_t h = blk_hash(p);

	if (!atomic_load_explicit(&blk_live, memory_order_relaxed))
		return -1;
	for (size_t n = 0; n < BLK_SLOTS; n++, h = (h + 1) % BLK_SLOTS) {
		uintptr_t v = atomic_load(&blk_slots[h]);

		if (v == p)
			return h;
		if (!v)
			break;
	}
	return -1;
}

/* The header of the shim's block @p, or NULL: glibc's. */
static struct blk_hdr *blk_of(void *p)
{
	struct blk_hdr *h;

	if (!p || ((uintptr_t)p & (page_size - 1)) || blk_find((uintptr_t)p) < 0)
		return NULL;
	h = (struct blk_hdr *)((uintptr_t)p - page_size);
	return h->magic == BLK_MAGIC && h->user == p ? h : NULL;
}

/* Guard held.  Unmaps @h's block (the shim's munmap path). */
static void blk_unmap(uintptr_t map, size_t len)
{
	struct seg *dead = NULL;

	if (unmanage(map, map + len, &dead) == 0)
		sys_munmap((void *)map, len);
	drop_dead(dead);
}

/*
 * Freed blocks kept for the next allocation.  A block costs a segment,
 * four round trips to the daemon (create, attach, detach, delete) where
 * glibc reuses its memory, so a program that allocates and frees large
 * blocks in a loop would pay them each time.  A kept block is punched
 * (its memory goes back; it reads zeros again, as a fresh one) but stays
 * mapped and attached; an allocation it fits (at most twice its size)
 * takes it.  Not kept: a block a fork's snapshot may share (punchable()),
 * grown in place (several segments), or larger than BLK_KEEP_MAX.  A
 * kept block is not a fork child's (PIECE_DONTFORK: no snapshot of it).
 * keep_lock nests inside tbl_lock; fork() holds it across the fork.
 */
#define BLK_KEEP 8
#define BLK_KEEP_MAX ((size_t)64 << 20)

static pthread_mutex_t keep_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kept {
	uintptr_t map;
	size_t len;
} kept_blk[BLK_KEEP];
static size_t nkeep;

/* Guard held.  Keeps the block mapped at [@map, @map + @len): true, or
 * false when the caller must unmap it. */
static bool blk_keep(uintptr_t map, size_t len)
{
	bool kept = false;
	size_t i;

	if (len > BLK_KEEP_MAX)
		return false;
	pthread_mutex_lock(&tbl_lock);
	i = tbl_first(map);
	if (i < tbl_n && tbl[i].start == map && tbl[i].end == map + len &&
	    tbl[i].seg->priv && !tbl[i].seg->cut && !tbl[i].seg->clone &&
	    !tbl[i].seg->converted && tbl[i].seg->pieces == 1) {
		pthread_mutex_lock(&keep_lock);
		if (nkeep < BLK_KEEP) {
			sys_mprotect((void *)map, len, PROT_READ | PROT_WRITE);
			sys_madvise((void *)map, len, MADV_REMOVE);
			/* a fork child gets none (no snapshot of it) */
			tbl[i].flags = PIECE_DONTFORK;
			kept_blk[nkeep++] = (struct kept){ map, len };
			kept = true;
		}
		pthread_mutex_unlock(&keep_lock);
	}
	pthread_mutex_unlock(&tbl_lock);
	return kept;
}

/* A kept mapping of at least @len bytes (at most twice), taken: its
 * address, its length in @got; 0 when none fits. */
static uintptr_t blk_take(size_t len, size_t *got)
{
	uintptr_t map = 0;
	size_t best = BLK_KEEP, i;

	pthread_mutex_lock(&tbl_lock);
	pthread_mutex_lock(&keep_lock);
	for (i = 0; i < nkeep; i++)
		if (kept_blk[i].len >= len && kept_blk[i].len / 2 <= len &&
		    (best == BLK_KEEP || kept_blk[i].len < kept_blk[best].len))
			best = i;
	if (best < BLK_KEEP) {
		map = kept_blk[best].map;
		*got = kept_blk[best].len;
		kept_blk[best] = kept_blk[--nkeep];
		i = tbl_first(map);
		if (i < tbl_n && tbl[i].start == map)
			tbl[i].flags = 0;
	}
	pthread_mutex_unlock(&keep_lock);
	pthread_mutex_unlock(&tbl_lock);
	return map;
}

/*
 * Guard held.  A block of @size bytes aligned to @align (a power of two),
 * or NULL (errno kept): the caller asks glibc.  Fresh: it reads zeros.
 */
static void *blk_alloc(size_t size, size_t align)
{
	size_t slack = align > (size_t)page_size ? align - page_size : 0;
	size_t len;
	uintptr_t map, user;
	struct blk_hdr *h;
	bool managed;
	int e = errno;
	void *p;

	if (size > (size_t)PTRDIFF_MAX - slack - 2 * page_size)
		return NULL;
	len = page_up(size) + page_size + slack;
	map = blk_take(len, &len);
	if (map) {
		managed = true;
	} else {
		p = shim_mmap(NULL, len, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		errno = e;
		if (p == MAP_FAILED)
			return NULL;
		map = (uintptr_t)p;
		pthread_mutex_lock(&tbl_lock);
		size_t i = tbl_first(map);
		managed = i < tbl_n && tbl[i].start == map;
		pthread_mutex_unlock(&tbl_lock);
	}
	user = (map + page_size + align - 1) & ~(uintptr_t)(align - 1);
	if (!managed || !blk_add(user)) {
		/* Ordinary memory is glibc's business. */
		blk_unmap(map, len);
		errno = e;
		return NULL;
	}
	h = (struct blk_hdr *)(user - page_size);
	*h = (struct blk_hdr){ .magic = BLK_MAGIC,
			       .user = (void *)user,
			       .map = map,
			       .map_len = len,
			       .size = size,
			       .segs = 1 };
	debug("malloc %zu (align %zu) -> block at %p", size, align,
	      (void *)user);
	return (void *)user;
}

/* Guard held.  Frees the shim's block @h. */
static void blk_free(struct blk_hdr *h)
{
	uintptr_t map = h->map;
	size_t len = h->map_len, size = h->size;
	void *user = h->user;
	long slot = blk_find((uintptr_t)user);

	h->magic = 0;
	if (slot >= 0) {
		atomic_store(&blk_slots[slot], BLK_TOMB);
		atomic_fetch_sub(&blk_live, 1);
	}
	if (h->segs == 1 && blk_keep(map, len)) {
		debug("free %zu -> block at %p kept", size, user); /* punched */
		return;
	}
	debug("free %zu -> block at %p unmapped", size, user);
	blk_unmap(map, len);
}

/* Guard held.  realloc() of the shim's block @h to @size (not 0). */
static void *blk_realloc(struct blk_hdr *h, size_t size)
{
	void *p = h->user, *n;
	size_t need, keep = h->size < size ? h->size : size;
	int e = errno;

	if (size > (size_t)PTRDIFF_MAX - 2 * page_size)
		goto copy;
	need = page_up((uintptr_t)p + size) - h->map;
	if (size >= malloc_min && need <= h->map_len) {
		/* Shrink in place: the tail goes back. */
		if (need < h->map_len)
			blk_unmap(h->map + need, h->map_len - need);
		h->map_len = need;
		h->size = size;
		return p;
	}
	if (size >= malloc_min && h->segs < BLK_MAX_SEGS) {
		/* Grow in place: the shim's mremap maps the tail. */
		n = shim_mremap(h->map, h->map_len, need, 0, NULL);
		if (n != MAP_FAILED) {
			debug("realloc %zu -> %zu: block at %p grown in place",
			      h->size, size, p);
			h->map_len = need;
			h->size = size;
			h->segs++;
			return p;
		}
		errno = e;
	}
copy:
	n = size >= malloc_min ? blk_alloc(size, page_size) :
				 arena_alloc(size, 0, false);
	if (!n)
		n = __libc_malloc(size);
	if (!n)
		return NULL;
	memcpy(n, p, keep);
	blk_free(h);
	return n;
}

/*
 * glibc's own allocations stay glibc's: its fork code, in the child and
 * before any atfork handler runs, resets state it malloc()ed (NSS's, for
 * one), which must be there already; a block of the arenas is not until
 * the shim's child handler has made the child's copy.  Told by the
 * caller: a return address in libc's or the dynamic loader's code.
 */
static struct {
	uintptr_t lo, hi;
} libc_text[4];
static unsigned int nlibc_text;

/* @arg: addresses of code in libc and in the dynamic loader, NULL-ended:
 * the objects holding one are the ones (whatever their file names). */
static int libc_text_fn(struct dl_phdr_info *info, size_t size, void *arg)
{
	const uintptr_t *in = arg;
	bool ours = false;

	(void)size;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		for (const uintptr_t *a = in; *a; a++)
			ours |= ph->p_type == PT_LOAD && *a >= lo &&
				*a < lo + ph->p_memsz;
	}
	if (!ours)
		return 0;
	for (int i = 0; i < info->dlpi_phnum && nlibc_text < 4; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
			libc_text[nlibc_text].lo = info->dlpi_addr + ph->p_vaddr;
			libc_text[nlibc_text].hi = libc_text[nlibc_text].lo +
						   ph->p_memsz;
			nlibc_text++;
		}
	}
	return 0;
}

static bool from_libc(const void *ra)
{
	for (unsigned int i = 0; i < nlibc_text; i++)
		if ((uintptr_t)ra >= libc_text[i].lo &&
		    (uintptr_t)ra < libc_text[i].hi)
			return true;
	return false;
}

/* A small block for a caller at @ra: the arenas', unless that is glibc
 * itself (or the arenas are not on). */
static void *small_alloc(size_t size, size_t align, bool zero, const void *ra)
{
	if (shim_guard || from_libc(ra))
		return NULL;
	return arena_alloc(size, align, zero);
}

static size_t (*real_usable)(void *);

static size_t libc_usable_size(void *p)
{
	if (!real_usable) {
		shim_guard++;
		real_usable = (size_t(*)(void *))dlsym(RTLD_NEXT,
						       "malloc_usable_size");
		shim_guard--;
	}
	return real_usable ? real_usable(p) : 0;
}

PRELOAD_API void *malloc(size_t size)
{
	void *p;

	if (size < malloc_min || shim_guard) {
		p = small_alloc(size, 0, false, __builtin_return_address(0));
		return p ? p : __libc_malloc(size);
	}
	shim_guard++;
	p = blk_alloc(size, page_size);
	shim_guard--;
	return p ? p : __libc_malloc(size);
}

PRELOAD_API void free(void *p)
{
	struct blk_hdr *h;
	int e;

	if (!p || arena_free(p))
		return;
	if (((uintptr_t)p & (page_size - 1)) || !(h = blk_of(p))) {
		__libc_free(p);
		return;
	}
	if (shim_guard) {
		/* The shim's own code, or an atfork handler while fork()
		 * holds the table: never wait on it here. */
		if (pthread_mutex_trylock(&tbl_lock)) {
			debug("free of block %p inside the shim: kept", p);
			return;
		}
		pthread_mutex_unlock(&tbl_lock);
	}
	shim_guard++;
	e = errno; /* glibc's free() keeps it too */
	blk_free(h);
	errno = e;
	shim_guard--;
}

PRELOAD_API void *calloc(size_t n, size_t size)
{
	size_t total;
	void *p;

	if (__builtin_mul_overflow(n, size, &total) || shim_guard)
		return __libc_calloc(n, size);
	if (total < malloc_min) {
		p = small_alloc(total, 0, true, __builtin_return_address(0));
		return p ? p : __libc_calloc(n, size);
	}
	shim_guard++;
	p = blk_alloc(total, page_size); /* reads zeros: not touched */
	shim_guard--;
	return p ? p : __libc_calloc(n, size);
}

/* realloc() of the arenas' block @p (arena.c): kept, or moved. */
static void *arena_realloc(void *p, size_t size)
{
	size_t old;
	void *n;

	if (!size) {
		arena_free(p);
		return NULL;
	}
	if (arena_fits(p, size))
		return p;
	old = arena_usable(p);
	n = shim_guard ? __libc_malloc(size) : malloc(size);
	if (!n)
		return NULL;
	memcpy(n, p, old < size ? old : size);
	arena_free(p);
	return n;
}

PRELOAD_API void *realloc(void *p, size_t size)
{
	struct blk_hdr *h;
	int e = errno;
	void *n;

	if (!p && !shim_guard && !from_libc(__builtin_return_address(0)))
		return malloc(size);
	if (p && arena_owns(p)) {
		n = arena_realloc(p, size);
		if (n)
			errno = e;
		return n;
	}
	h = blk_of(p);
	if (!h) {
		size_t old;

		if (!p || size < malloc_min || shim_guard)
			return __libc_realloc(p, size);
		/* glibc's block grown past the threshold. */
		old = libc_usable_size(p);
		if (old >= size)
			return __libc_realloc(p, size);
		shim_guard++;
		n = blk_alloc(size, page_size);
		shim_guard--;
		if (!n)
			return __libc_realloc(p, size);
		memcpy(n, p, old);
		__libc_free(p);
		return n;
	}
	if (!size) {
		free(p);
		return NULL;
	}
	shim_guard++;
	n = blk_realloc(h, size);
	if (n)
		errno = e; /* the old block's unmapping may have set it */
	shim_guard--;
	return n;
}

PRELOAD_API void *reallocarray(void *p, size_t n, size_t size)
{
	size_t total;

	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, total);
}

/* @align a power of two: the arenas', a block, or glibc's; @ra: the
 * caller. */
static void *aligned(size_t align, size_t size, const void *ra)
{
	void *p;

	if (shim_guard)
		return __libc_memalign(align, size);
	if (size < malloc_min) {
		p = small_alloc(size, align, false, ra);
		return p ? p : __libc_memalign(align, size);
	}
	if (align < (size_t)page_size)
		align = page_size;
	shim_guard++;
	p = blk_alloc(size, align);
	shim_guard--;
	return p ? p : __libc_memalign(align, size);
}

/* glibc: a non-power of two is rounded up (aligned_alloc too). */
static void *memalign_at(size_t align, size_t size, const void *ra)
{
	if (align & (align - 1)) {
		size_t a = 1;

		while (a && a < align)
			a <<= 1;
		if (!a) {
			errno = EINVAL;
			return NULL;
		}
		align = a;
	}
	return aligned(align ? align : 1, size, ra);
}

PRELOAD_API void *memalign(size_t align, size_t size)
{
	return memalign_at(align, size, __builtin_return_address(0));
}

PRELOAD_API void *aligned_alloc(size_t align, size_t size)
{
	return memalign_at(align, size, __builtin_return_address(0));
}

PRELOAD_API int posix_memalign(void **out, size_t align, size_t size)
{
	int e = errno;
	void *p;

	if (!align || align % sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	p = aligned(align, size, __builtin_return_address(0));
	if (!p)
		return ENOMEM;
	errno = e;
	*out = p;
	return 0;
}

PRELOAD_API void *valloc(size_t size)
{
	if (shim_guard)
		return __libc_valloc(size);
	return aligned(page_size, size, __builtin_return_address(0));
}

PRELOAD_API void *pvalloc(size_t size)
{
	if (shim_guard || size > (size_t)PTRDIFF_MAX)
		return __libc_pvalloc(size);
	return aligned(page_size, page_up(size ? size : 1),
		       __builtin_return_address(0));
}

PRELOAD_API size_t malloc_usable_size(void *p)
{
	struct blk_hdr *h;

	if (p && arena_owns(p))
		return arena_usable(p);
	h = blk_of(p);
	if (!h)
		return libc_usable_size(p);
	return h->map + h->map_len - (uintptr_t)p;
}

/* fork */

static void die(const char *what, const char *name, int err)
{
	shim_log("fatal: fork child: %s %s: %s; aborting rather than share "
		 "the parent's private memory",
		 what, name, strerror(err > 0 ? err : -err));
	abort();
}

/*
 * What mprotect made of private ranges, recorded by the parent at the
 * cut: the child gets its copies mapped read-write and puts these back.
 */
#define FORK_PROTS 4096

static struct fork_prot {
	uintptr_t start, end;
	int prot;
} fork_prots[FORK_PROTS];
static size_t fork_nprots;
static bool fork_prots_lost;

static int fork_prot_fn(const struct vma *v, void *arg)
{
	for (size_t i = tbl_first(v->start); i < tbl_n && tbl[i].start < v->end;
	     i++) {
		uintptr_t s = tbl[i].start > v->start ? tbl[i].start : v->start;
		uintptr_t e = tbl[i].end < v->end ? tbl[i].end : v->end;

		if ((!tbl[i].seg->priv && !tbl[i].seg->lost) ||
		    tbl[i].seg->converted || v->prot == (PROT_READ | PROT_WRITE))
			continue;
		if (fork_nprots == FORK_PROTS) {
			fork_prots_lost = true;
			return 1;
		}
		fork_prots[fork_nprots++] = (struct fork_prot){
			.start = s, .end = e, .prot = v->prot
		};
	}
	return 0;
}

/*
 * Parent, tbl_lock held: private segment @s has no cut for the fork (the
 * daemon gone, @err, or refusing it: its limits; @err 0: it will hold a
 * thread's stack, see pthread_create()), so its ranges become
 * the kernel's private memory, mapped MAP_PRIVATE from its memfd: the
 * bytes stay (a write that lands before the mapping changes is in the
 * memfd, one after is the new mapping's copy), and the kernel's fork
 * gives the child its copy-on-write copy.  The memfd is written no more;
 * its frames are not punched (punchable()), and DONTNEED maps fresh
 * zeros (priv_zero()).  0, or -1 when a range could not be mapped (the
 * child then aborts).
 */
static int fork_convert(struct seg *s, int err)
{
	struct vma v;

	for (size_t k = 0; k < tbl_n; k++) {
		struct piece *pc = &tbl[k];

		if (pc->seg != s)
			continue;
		for (uintptr_t at = pc->start, ve; at < pc->end; at = ve) {
			if (vma_at(at, &v) != 1)
				return -1;
			ve = v.end < pc->end ? v.end : pc->end;
			if (sys_mmap((void *)at, ve - at, v.prot,
				     MAP_PRIVATE | MAP_FIXED, s->att->memfd,
				     pc->off + (at - pc->start)) == MAP_FAILED)
				return -1;
		}
		if (pc->flags & PIECE_DONTFORK)
			sys_madvise((void *)pc->start, pc->end - pc->start,
				    MADV_DONTFORK);
	}
	s->converted = true;
	if (err)
		shim_log("warning: fork: no snapshot of %s (%s): its memory is "
			 "ordinary private memory from now on",
			 s->name, strerror(err));
	return 0;
}

/* Parent, tbl_lock held: cut a snapshot of each private segment. */
static void fork_cut(unsigned int gen)
{
	for (size_t i = 0; i < tbl_n; i++) {
		struct seg *s = tbl[i].seg;
		bool any = false;

		if (!s->priv || s->converted || s->snap[0])
			continue;
		for (size_t k = i; k < tbl_n; k++)
			if (tbl[k].seg == s && !(tbl[k].flags & PIECE_DONTFORK))
				any = true;
		if (!any)
			continue;
		snprintf(s->snap, sizeof(s->snap), "%.48s.f%u", s->name, gen);
		if (upager_snapshot(conn, s->name, s->snap, NULL) == 0) {
			s->cut = true;
		} else if (fork_convert(s, errno) == 0) {
			s->snap[0] = '\0';
		} else {
			shim_log("fork: snapshot of %s: %s", s->name,
				 strerror(errno));
			strcpy(s->snap, "-"); /* the child aborts */
		}
	}
	/* Shared segments the kernel will not give the child (no fork
	 * events): the child attaches them again. */
	for (size_t i = 0; i < tbl_n; i++) {
		struct seg *s = tbl[i].seg;

		s->lost = !s->priv &&
			  !(s->att->features & UFFD_FEATURE_EVENT_FORK);
	}
	fork_nprots = 0;
	fork_prots_lost = false;
	if (vma_walk(fork_prot_fn, NULL) < 0)
		fork_prots_lost = true;
}

/*
 * fork() does its work in the shim's pthread_atfork handlers, installed
 * at load before any other.  glibc runs prepare handlers last installed
 * first, so the shim's runs after the program's, and its parent and child
 * handlers before the program's: the cut sees whole what the program's
 * prepare handlers lock; nothing of the shim is held while those run (one
 * may wait for a thread that allocates or maps); and the program's child
 * handlers find the child's copies in place.  The library's handlers run
 * inside the shim's (lib_fork_external), after the cut, which talks to the
 * daemon over the connections they lock.  Every fork that runs glibc's
 * handlers is handled, glibc's own too (daemon(3) forks inside libc,
 * past the wrapper), but one from inside the shim (the guard held).
 */
struct fork_op {
	bool active;	  /* this fork is handled here */
	bool on;	  /* the shim was on: cut, table locked */
	int ready[2];	  /* a child attaches shared segments by name */
	unsigned int gen; /* its cuts' in cuts_pending */
	int err;	  /* errno at the start */
};

static __thread struct fork_op fork_op SHIM_TLS;

/*
 * The cuts of forks that ran: a child deletes its own once cloned, and
 * the fork() wrapper those of a fork that failed.  A fork of glibc's own
 * (daemon(3)) is not known to have failed: its cuts stay named until a
 * preloaded process reaps them (stale()) once this one is gone, rather
 * than go while its child may still be cloning them.  tbl_lock.
 */
static struct cut_name {
	char name[UPAGER_NAME_MAX + 1];
	unsigned int gen;
} * cuts_pending;
static size_t ncuts_pending, cuts_cap;

static void fork_child(void);

/* Parent, tbl_lock held: the cuts' names go to cuts_pending. */
static void cut_remember(const char *name, unsigned int gen)
{
	if (ncuts_pending >= 4096) {
		/* glibc's own forks', the oldest: forgotten (reaped) */
		memmove(cuts_pending, cuts_pending + 2048,
			(ncuts_pending - 2048) * sizeof(*cuts_pending));
		ncuts_pending -= 2048;
	}
	if (ncuts_pending == cuts_cap) {
		size_t cap = cuts_cap * 2 + 8;
		void *p = __libc_realloc(cuts_pending,
					 cap * sizeof(*cuts_pending));

		if (!p)
			return; /* (then reaped, as glibc's own forks') */
		cuts_pending = p;
		cuts_cap = cap;
	}
	snprintf(cuts_pending[ncuts_pending].name, sizeof(cuts_pending[0].name),
		 "%s", name);
	cuts_pending[ncuts_pending++].gen = gen;
}

static void fork_parent_done(struct fork_op *f)
{
	for (size_t i = 0; i < tbl_n; i++) {
		struct seg *s = tbl[i].seg;

		if (s->snap[0] && strcmp(s->snap, "-"))
			cut_remember(s->snap, f->gen);
		s->snap[0] = '\0';
	}
}

/* The pending cuts of fork @gen go; deleted in the daemon if @del.
 * tbl_lock held. */
static void cuts_drop(unsigned int gen, bool del)
{
	size_t k = 0;

	for (size_t i = 0; i < ncuts_pending; i++) {
		if (cuts_pending[i].gen != gen) {
			cuts_pending[k++] = cuts_pending[i];
			continue;
		}
		if (del && shim_conn())
			upager_delete(conn, cuts_pending[i].name,
				      UPAGER_DELETE_FORCE);
	}
	ncuts_pending = k;
}

static void fk_prepare(void)
{
	static atomic_uint gen;
	struct fork_op *f = &fork_op;

	f->gen = 0;
	f->active = !shim_guard;
	if (!f->active)
		return;
	shim_guard++;
	f->err = errno; /* the handlers leave it as they found it */
	f->ready[0] = f->ready[1] = -1;
	/* The arenas cut whole: no allocation half done in the copy. */
	arena_fork_prepare();
	/* A connection half made by another thread is not the child's. */
	pthread_mutex_lock(&conn_lock);
	f->on = atomic_load(&shim_state) == SHIM_ON;
	if (!f->on)
		return;
	pthread_mutex_lock(&tbl_lock);
	pthread_mutex_lock(&keep_lock);
	f->gen = atomic_fetch_add(&gen, 1) + 1;
	fork_cut(f->gen);
	/* A child that attaches shared segments again by name: the parent
	 * waits for it, so that its exit cannot take a name first. */
	for (size_t i = 0; i < tbl_n && f->ready[0] < 0; i++)
		if (tbl[i].seg->lost && pipe2(f->ready, O_CLOEXEC))
			f->ready[0] = f->ready[1] = -1;
	lib_fork_prepare();
}

static void fk_parent(void)
{
	struct fork_op *f = &fork_op;
	char c;

	if (!f->active)
		return;
	if (f->on) {
		lib_fork_parent();
		fork_parent_done(f);
		pthread_mutex_unlock(&keep_lock);
		pthread_mutex_unlock(&tbl_lock);
	}
	pthread_mutex_unlock(&conn_lock);
	arena_fork_parent();
	if (f->ready[0] >= 0) {
		/* (EOF at once if the fork failed) */
		close(f->ready[1]);
		while (read(f->ready[0], &c, 1) < 0 && errno == EINTR)
			;
		close(f->ready[0]);
	}
	f->active = false;
	shim_guard--;
	errno = f->err;
}

static void fk_child(void)
{
	struct fork_op *f = &fork_op;

	if (!f->active)
		return;
	pthread_mutex_init(&conn_lock, NULL);
	if (f->on) {
		ncuts_pending = 0; /* the parent's */
		pthread_mutex_init(&tbl_lock, NULL);
		pthread_mutex_init(&keep_lock, NULL);
		nkeep = 0; /* not inherited (MADV_DONTFORK) */
		tbl_pid = getpid();
		lib_fork_child();
		pthread_mutex_lock(&tbl_lock);
		fork_child();
		pthread_mutex_unlock(&tbl_lock);
		if (f->ready[0] >= 0) {
			close(f->ready[0]);
			close(f->ready[1]); /* the parent reads EOF */
		}
	}
	arena_fork_child();
	f->active = false;
	shim_guard--;
	errno = f->err;
}

/*
 * Child: @old's cut cloned (a private segment), or @old attached again (a
 * shared one the kernel did not let the child inherit: no fork events,
 * unprivileged), and its pieces moved into place.
 */
static void fork_clone(struct seg *old, pid_t me)
{
	struct upager_attachment *a;
	uintptr_t base;
	struct seg *s;
	int ret;

	if (old->priv && !strcmp(old->snap, "-"))
		die("no snapshot of", old->name, EIO);
	s = __libc_calloc(1, sizeof(*s));
	if (!s)
		die("memory for", old->name, ENOMEM);
	s->owner = old->priv ? me : old->owner;
	s->priv = old->priv;
	s->clone = old->priv;
	s->fresh = true;
	s->size = old->size;
	if (old->priv) {
		snprintf(s->name, sizeof(s->name), "pid%d.%u", me,
			 atomic_fetch_add(&seg_count, 1) + 1);
		ret = upager_clone(conn, old->snap, s->name, 0);
		if (ret)
			die("clone of", old->snap, ret);
	} else {
		memcpy(s->name, old->name, sizeof(s->name));
	}
	s->att_flags = old->att_flags;
	ret = upager_attach(conn, s->name,
			    old->priv ? UPAGER_ATTACH_DONTFORK : s->att_flags,
			    &a);
	if (ret)
		die("attach of", s->name, ret);
	s->att = a;
	base = (uintptr_t)upager_attachment_addr(a);
	if (old->priv)
		upager_delete(conn, old->snap, UPAGER_DELETE_FORCE);
	for (size_t k = 0; k < tbl_n; k++) {
		struct piece *pc = &tbl[k];
		size_t len = pc->end - pc->start;

		if (pc->seg != old)
			continue;
		pc->seg = s;
		old->pieces--;
		s->pieces++;
		if (pc->flags & (PIECE_DONTFORK | PIECE_WIPEONFORK))
			continue; /* fork_child() */
		if (sys_mremap((void *)(base + pc->off), len, len,
			       MREMAP_MAYMOVE | MREMAP_FIXED,
			       (void *)pc->start) == MAP_FAILED)
			die("mremap of", s->name, errno);
	}
	/* What no piece of the parent mapped. */
	sys_munmap((void *)base, s->size);
	if (old->priv)
		debug("fork: %s is a clone of %s", s->name, old->snap);
	else
		debug("fork: %s attached again (no fork events)", s->name);
	seg_free(old);
}

/*
 * Child, tbl_lock held, one thread: every private segment becomes a clone
 * of its cut, mapped where the parent had it.  The kernel gave the child
 * nothing there (the attachments are MADV_DONTFORK): placeholders keep
 * the places while the clones are attached elsewhere and moved in.  The
 * library dropped the parent's private attachments already: their
 * @att must not be used here.
 */
static void fork_child(void)
{
	pid_t me = getpid();
	size_t i;

	for (i = 0; i < tbl_n; i++)
		if ((tbl[i].seg->priv && !tbl[i].seg->converted) ||
		    tbl[i].seg->lost)
			sys_mmap((void *)tbl[i].start,
				 tbl[i].end - tbl[i].start, PROT_NONE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
					 MAP_FIXED,
				 -1, 0);
	for (i = 0; i < tbl_n;) {
		struct seg *old = tbl[i].seg;

		if (old->converted) {
			/* the kernel's copy; the library dropped its
			 * attachment (MADV_DONTFORK) */
			old->att = NULL;
			i++;
		} else if (old->fresh || (!old->priv && !old->lost)) {
			i++;
		} else if (!old->priv) {
			fork_clone(old, me);
		} else if (!old->snap[0]) {
			/* every piece MADV_DONTFORK: nothing inherited */
			sys_munmap((void *)tbl[i].start,
				   tbl[i].end - tbl[i].start);
			tbl_remove_at(i);
			if (!old->pieces)
				seg_free(old);
		} else {
			fork_clone(old, me);
		}
	}
	if (fork_prots_lost)
		die("mprotect state of", "private ranges", ENOMEM);
	for (i = 0; i < fork_nprots; i++)
		sys_mprotect((void *)fork_prots[i].start,
			     fork_prots[i].end - fork_prots[i].start,
			     fork_prots[i].prot);
	/* Pieces the child must not have, or must have zeroed. */
	for (i = 0; i < tbl_n;) {
		struct piece pc = tbl[i];

		pc.seg->fresh = false;
		if (!pc.seg->priv ||
		    !(pc.flags & (PIECE_DONTFORK | PIECE_WIPEONFORK))) {
			i++;
			continue;
		}
		tbl_remove_at(i);
		if (pc.flags & PIECE_DONTFORK)
			sys_munmap((void *)pc.start, pc.end - pc.start);
		else
			sys_mmap((void *)pc.start, pc.end - pc.start,
				 PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (!pc.seg->pieces) {
			pthread_mutex_unlock(&tbl_lock);
			seg_drop(pc.seg);
			pthread_mutex_lock(&tbl_lock);
		}
	}
}

static pid_t (*real_fork)(void);

/*
 * The shim's handlers must be installed before any other: a library's
 * constructor may run before the shim's and call pthread_atfork (which
 * is __register_atfork, called from the caller's own copy of
 * libc_nonshared): whoever comes first installs the shim's first.
 */
typedef int (*register_atfork_fn)(void (*)(void), void (*)(void),
				  void (*)(void), void *);
extern void *__dso_handle;

static register_atfork_fn real_register_atfork;

int __register_atfork(void (*prepare)(void), void (*parent)(void),
		      void (*child)(void), void *dso);

static void fork_handlers_once(void)
{
	real_register_atfork = (register_atfork_fn)dlsym(RTLD_NEXT,
							 "__register_atfork");
	lib_fork_external = true;
	if (real_register_atfork)
		real_register_atfork(fk_prepare, fk_parent, fk_child,
				     __dso_handle);
}

static void fork_handlers_install(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, fork_handlers_once);
}

PRELOAD_API int __register_atfork(void (*prepare)(void), void (*parent)(void),
				  void (*child)(void), void *dso)
{
	fork_handlers_install();
	if (!real_register_atfork)
		return ENOMEM;
	return real_register_atfork(prepare, parent, child, dso);
}

static pid_t fork_here(void)
{
	pid_t pid = real_fork(); /* the handlers above */
	int e = errno;

	if (pid != 0 && fork_op.gen) {
		/* A child deletes the names; those of a failed fork go. */
		shim_guard++;
		pthread_mutex_lock(&tbl_lock);
		cuts_drop(fork_op.gen, pid < 0);
		pthread_mutex_unlock(&tbl_lock);
		fork_op.gen = 0;
		shim_guard--;
	}
	errno = e;
	return pid;
}

/*
 * A stack in private managed memory (a thread's of malloc()ed memory, in
 * the arenas, say) is not there in a fork child until the child has made
 * its copy, which it does on some stack: a side stack of the kernel's,
 * mapped for the call (the child inherits it).
 */
#define SIDE_STACK (256 * 1024)

/* Whether @addr is in private managed memory: [*lo, *hi) its range. */
static bool in_private(uintptr_t addr, uintptr_t *lo, uintptr_t *hi)
{
	struct piece *pc;

	pthread_mutex_lock(&tbl_lock);
	pc = private_at(addr);
	if (pc) {
		*lo = pc->start;
		*hi = pc->end;
	}
	pthread_mutex_unlock(&tbl_lock);
	return pc != NULL;
}

struct fork_side {
	ucontext_t caller, side;
	pid_t pid;
	int err;
};

static __thread struct fork_side *fork_side_cur SHIM_TLS;

static void fork_side_run(void)
{
	struct fork_side *o = fork_side_cur;

	o->pid = fork_here();
	o->err = errno;
}

PRELOAD_API pid_t fork(void)
{
	uintptr_t lo, hi;
	struct fork_side *o;
	char *side;
	pid_t pid;
	int e;

	if (!real_fork)
		real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
	if (shim_guard)
		return real_fork();
	if (atomic_load(&shim_state) != SHIM_ON ||
	    !in_private((uintptr_t)__builtin_frame_address(0), &lo, &hi))
		return fork_here();
	side = sys_mmap(NULL, SIDE_STACK, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (side == MAP_FAILED)
		return fork_here(); /* (the child faults) */
	debug("fork from a stack in managed memory: on a side stack");
	o = (struct fork_side *)side;
	getcontext(&o->side);
	o->side.uc_stack.ss_sp = side + sizeof(*o);
	o->side.uc_stack.ss_size = SIDE_STACK - sizeof(*o);
	o->side.uc_link = &o->caller;
	fork_side_cur = o;
	makecontext(&o->side, fork_side_run, 0);
	swapcontext(&o->caller, &o->side);
	/* back on the program's stack: in the child, its copy */
	pid = o->pid;
	e = o->err;
	sys_munmap(side, SIDE_STACK);
	errno = e;
	return pid;
}

/*
 * pthread_create() with a stack of the program's (pthread_attr_setstack)
 * in private managed memory, malloc()ed in the arenas, say: glibc puts
 * the thread's descriptor and TLS there, which a fork child needs before
 * it can have its copy (fork() from the thread), and a private segment
 * is not inherited.  The segment becomes the kernel's private memory
 * first (fork_convert()), while no thread waits on a futex in it that
 * the change of mapping would lose: it holds no thread descriptor yet.
 */
typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *,
				 void *(*)(void *), void *);

PRELOAD_API int pthread_create(pthread_t *t, const pthread_attr_t *attr,
			       void *(*fn)(void *), void *arg)
{
	struct piece *pc;
	void *stack;
	size_t len;

	REAL(pthread_create, pthread_create_fn);
	if (attr && !shim_guard && atomic_load(&shim_state) == SHIM_ON &&
	    !pthread_attr_getstack(attr, &stack, &len) && len) {
		shim_guard++;
		pthread_mutex_lock(&tbl_lock);
		pc = private_at((uintptr_t)stack + len - 1);
		if (pc && fork_convert(pc->seg, 0) == 0)
			debug("pthread_create: its stack at %p is in %s: "
			      "ordinary private memory from now on",
			      stack, pc->seg->name);
		pthread_mutex_unlock(&tbl_lock);
		shim_guard--;
	}
	return real_pthread_create(t, attr, fn, arg);
}

/* exit and exec: the names of our segments go */

static void forget_all(void)
{
	pid_t me = getpid();

	if (shim_guard || atomic_load(&shim_state) != SHIM_ON || me != tbl_pid)
		return;
	arena_stop();
	shim_guard++;
	pthread_mutex_lock(&tbl_lock);
	for (size_t i = 0; i < tbl_n; i++) {
		struct seg *s = tbl[i].seg;

		if (s->shm && shm_file_gone(s->name))
			shared_forget(s);
		if (!s->owner)
			continue; /* a shm object's, or done */
		/* The mappings stay usable until the process goes. */
		if (!s->priv)
			shared_forget(s);
		else if (s->owner == me)
			upager_delete(conn, s->name, UPAGER_DELETE_FORCE);
		s->owner = 0;
	}
	pthread_mutex_unlock(&tbl_lock);
	shim_guard--;
}

__attribute__((destructor)) static void shim_fini(void)
{
	forget_all();
}

PRELOAD_API void _exit(int status)
{
	static void (*real)(int);

	forget_all();
	if (!real)
		real = (void (*)(int))dlsym(RTLD_NEXT, "_exit");
	real(status);
	syscall(SYS_exit_group, status);
	__builtin_unreachable();
}

static void exec_failed(const char *fn)
{
	int e = errno;

	debug("%s failed: our segments stay mapped, without names", fn);
	errno = e;
}

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);

PRELOAD_API int execve(const char *path, char *const argv[], char *const envp[])
{
	REAL(execve, execve_fn);
	forget_all();
	real_execve(path, argv, envp);
	exec_failed("execve");
	return -1;
}

PRELOAD_API int execv(const char *path, char *const argv[])
{
	REAL(execv, execv_fn);
	forget_all();
	real_execv(path, argv);
	exec_failed("execv");
	return -1;
}

PRELOAD_API int execvp(const char *file, char *const argv[])
{
	REAL(execvp, execv_fn);
	forget_all();
	real_execvp(file, argv);
	exec_failed("execvp");
	return -1;
}

PRELOAD_API int execvpe(const char *file, char *const argv[], char *const envp[])
{
	REAL(execvpe, execve_fn);
	forget_all();
	real_execvpe(file, argv, envp);
	exec_failed("execvpe");
	return -1;
}

/*
 * The exec calls glibc makes through its internal execve, which the
 * wrappers above never see.  Their argv is built on the caller's stack,
 * as glibc does (a vfork child must not allocate).
 */

/* How many arguments follow the first, up to the NULL. */
static size_t args_after(va_list ap)
{
	size_t n = 0;
	va_list aq;

	va_copy(aq, ap);
	while (va_arg(aq, const char *))
		n++;
	va_end(aq);
	return n;
}

/* @v (room for @n + 2) from @arg0 and @ap; what follows the NULL in
 * @envp (execle) if not NULL. */
static char **argv_fill(char **v, size_t n, const char *arg0, va_list ap,
			char *const **envp)
{
	v[0] = (char *)arg0;
	for (size_t i = 1; i <= n + 1; i++)
		v[i] = va_arg(ap, char *);
	if (envp)
		*envp = va_arg(ap, char *const *);
	return v;
}

PRELOAD_API int execl(const char *path, const char *arg, ...)
{
	va_list ap;
	size_t n;
	char **v;

	va_start(ap, arg);
	n = args_after(ap);
	v = argv_fill(alloca((n + 2) * sizeof(*v)), n, arg, ap, NULL);
	va_end(ap);
	return execv(path, v);
}

PRELOAD_API int execlp(const char *file, const char *arg, ...)
{
	va_list ap;
	size_t n;
	char **v;

	va_start(ap, arg);
	n = args_after(ap);
	v = argv_fill(alloca((n + 2) * sizeof(*v)), n, arg, ap, NULL);
	va_end(ap);
	return execvp(file, v);
}

PRELOAD_API int execle(const char *path, const char *arg, ...)
{
	char *const *envp;
	va_list ap;
	size_t n;
	char **v;

	va_start(ap, arg);
	n = args_after(ap);
	v = argv_fill(alloca((n + 2) * sizeof(*v)), n, arg, ap, &envp);
	va_end(ap);
	return execve(path, v, envp);
}

typedef int (*fexecve_fn)(int, char *const[], char *const[]);
typedef int (*execveat_fn)(int, const char *, char *const[], char *const[], int);

PRELOAD_API int fexecve(int fd, char *const argv[], char *const envp[])
{
	REAL(fexecve, fexecve_fn);
	forget_all();
	real_fexecve(fd, argv, envp);
	exec_failed("fexecve");
	return -1;
}

PRELOAD_API int execveat(int dirfd, const char *path, char *const argv[],
			 char *const envp[], int flags)
{
	REAL(execveat, execveat_fn);
	if (!real_execveat) {
		errno = ENOSYS;
		return -1;
	}
	forget_all();
	real_execveat(dirfd, path, argv, envp, flags);
	exec_failed("execveat");
	return -1;
}

/* clone() without CLONE_VM */

struct clone_call {
	int (*fn)(void *);
	void *arg;
	char *copy; /* the child's stack's block, copied; NULL: none */
	uintptr_t lo;
	size_t len;
	void *top;
	ucontext_t uc;
};

/* The child's stack: the block of private managed memory holding it (an
 * arena's slab or run, or the range), at most this much of it. */
#define CLONE_STACK_MAX ((size_t)8 << 20)

static struct clone_call *clone_cur;

static void clone_run(void)
{
	syscall(SYS_exit, clone_cur->fn(clone_cur->arg));
}

/*
 * The child of a clone() without CLONE_VM, on a side stack: it gets no
 * copy of the parent's private managed memory (that is fork()'s work,
 * and the attachments are MADV_DONTFORK), so the ranges become
 * PROT_NONE: a touch faults (SIGSEGV) where it could otherwise read
 * whatever the child maps there next.  The one exception is the block
 * holding the child's stack (malloc()ed, say), copied by the parent: it
 * is moved into place and the function runs on it.  The arenas are lost
 * to the child: its blocks there are never freed, and it allocates from
 * glibc.
 */
static int clone_child(void *arg)
{
	struct clone_call *c = arg;
	bool any = false;

	/* held by the parent across the clone (no atfork handlers here) */
	pthread_mutex_init(&conn_lock, NULL);
	pthread_mutex_init(&tbl_lock, NULL);
	pthread_mutex_init(&keep_lock, NULL);
	nkeep = 0; /* not inherited (MADV_DONTFORK) */
	arena_lost();
	/* Its memory is the kernel's: the connection is the parent's. */
	atomic_store(&shim_state, SHIM_OFF);
	malloc_min = SIZE_MAX;
	shim_guard = 0;
	for (size_t i = 0; i < tbl_n; i++) {
		if (!tbl[i].seg->priv || tbl[i].seg->converted)
			continue;
		sys_mmap((void *)tbl[i].start, tbl[i].end - tbl[i].start,
			 PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
			 -1, 0);
		any = true;
	}
	if (any)
		shim_log("warning: clone() without CLONE_VM: the parent's private "
			 "memory managed by upager is not this child's (PROT_NONE; "
			 "fork() copies it)%s",
			 c->copy ? ", but for its stack's block" : "");
	if (!c->copy)
		return c->fn(c->arg);
	if (sys_mremap(c->copy, c->len, c->len, MREMAP_MAYMOVE | MREMAP_FIXED,
		       (void *)c->lo) == MAP_FAILED) {
		shim_log("fatal: clone() child: its stack: %s", strerror(errno));
		abort();
	}
	getcontext(&c->uc);
	c->uc.uc_stack.ss_sp = (void *)c->lo;
	c->uc.uc_stack.ss_size = (uintptr_t)c->top - c->lo;
	c->uc.uc_link = NULL;
	clone_cur = c;
	makecontext(&c->uc, clone_run, 0);
	setcontext(&c->uc);
	abort();
}

/* The block of private managed memory holding the stack below @top,
 * copied into @c: true, or false when there is none (or no copy). */
static bool clone_stack(struct clone_call *c, void *top)
{
	uintptr_t t = (uintptr_t)top, lo, hi, start;
	size_t len;
	struct vma v;

	if (!top || !in_private(t - 1, &lo, &hi))
		return false;
	if (arena_span((void *)(t - 1), &start, &len)) {
		lo = start;
		hi = start + len;
	}
	if (t - lo > CLONE_STACK_MAX)
		lo = (t - CLONE_STACK_MAX) & ~(uintptr_t)(page_size - 1);
	hi = page_up(t) < hi ? page_up(t) : hi;
	if (vma_at(lo, &v) != 1 || v.end < hi || !(v.prot & PROT_READ))
		return false;
	c->copy = sys_mmap(NULL, hi - lo, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c->copy == MAP_FAILED) {
		c->copy = NULL;
		return false;
	}
	memcpy(c->copy, (void *)lo, hi - lo);
	c->lo = lo;
	c->len = hi - lo;
	c->top = top;
	return true;
}

typedef int (*clone_fn)(int (*)(void *), void *, int, void *, ...);

PRELOAD_API int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
	struct clone_call *c;
	pid_t *ptid, *ctid;
	char *side;
	void *tls;
	va_list ap;
	int ret, e;

	REAL(clone, clone_fn);
	va_start(ap, arg);
	ptid = va_arg(ap, pid_t *);
	tls = va_arg(ap, void *);
	ctid = va_arg(ap, pid_t *);
	va_end(ap);
	if ((flags & CLONE_VM) || atomic_load(&shim_state) != SHIM_ON ||
	    shim_guard)
		return real_clone(fn, stack, flags, arg, ptid, tls, ctid);
	side = sys_mmap(NULL, SIDE_STACK, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (side == MAP_FAILED)
		return real_clone(fn, stack, flags, arg, ptid, tls, ctid);
	shim_guard++;
	c = (struct clone_call *)side;
	*c = (struct clone_call){ .fn = fn, .arg = arg };
	if (clone_stack(c, stack))
		debug("clone: the child's stack at %p is managed: copied",
		      stack);
	/* The table as it is at the clone: the child reads its copy. */
	pthread_mutex_lock(&conn_lock);
	pthread_mutex_lock(&tbl_lock);
	pthread_mutex_lock(&keep_lock);
	/* The child starts on the side stack only to move its copy in. */
	ret = real_clone(clone_child, c->copy ? side + SIDE_STACK : stack,
			 flags, c, ptid, tls, ctid);
	e = errno;
	pthread_mutex_unlock(&keep_lock);
	pthread_mutex_unlock(&tbl_lock);
	pthread_mutex_unlock(&conn_lock);
	if (c->copy)
		sys_munmap(c->copy, c->len);
	sys_munmap(side, SIDE_STACK);
	shim_guard--;
	errno = e;
	return ret;
}

/* shm_unlink: the name's segment goes with it */

typedef int (*shm_unlink_fn)(const char *);

PRELOAD_API int shm_unlink(const char *name)
{
	char seg[UPAGER_NAME_MAX + 1], path[PATH_MAX];
	bool known = false;
	struct stat st;
	int ret, e;

	REAL(shm_unlink, shm_unlink_fn);
	if (shim_guard || !cfg_shm || atomic_load(&shim_state) == SHIM_OFF)
		return real_shm_unlink(name);
	shim_guard++;
	while (*name == '/')
		name++;
	snprintf(path, sizeof(path), "/dev/shm/%s", name);
	if (stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
	    shm_seg_name(name, st.st_ino, seg) == 0)
		known = true;
	ret = real_shm_unlink(name);
	e = errno;
	/* Mapped somewhere, it stays for whoever maps it (a child attaching
	 * it again by name, say), until the last detach. */
	if (ret == 0 && known && shim_conn() &&
	    upager_delete(conn, seg, UPAGER_DELETE_UNUSED) == 0)
		debug("shm_unlink: %s deleted once no process maps it", seg);
	errno = e;
	shim_guard--;
	return ret;
}

/* Load */

__attribute__((constructor)) static void shim_init(void)
{
	const char *e;
	struct rlimit rl;
	uint64_t v;

	page_size = sysconf(_SC_PAGESIZE);
	tbl_pid = getpid();
	/* First of all handlers: see fork_op. */
	fork_handlers_install();
	lib_thread_hook = guard_hook;
	e = getenv("UPAGER_MIN_SIZE");
	if (e && *e) {
		if (size_parse(e, &v) == 0 && v > 0)
			cfg_min_size = v;
		else
			shim_log("warning: UPAGER_MIN_SIZE=%s: not a size", e);
	}
	e = getenv("UPAGER_LOG");
	cfg_debug = e && !strcmp(e, "debug");
	e = getenv("UPAGER_REQUIRE");
	cfg_require = e && !strcmp(e, "1");
	e = getenv("UPAGER_SOCKET");
	cfg_socket = e && *e ? e : NULL;
	e = getenv("UPAGER_SHM");
	cfg_shm = !(e && !strcmp(e, "0"));
	{
		struct stat st;

		if (stat("/dev/shm", &st) == 0)
			shm_dev = st.st_dev;
	}
	e = getenv("UPAGER_DISABLE");
	if (e && !strcmp(e, "1"))
		atomic_store(&shim_state, SHIM_OFF);
	else
		malloc_min = cfg_min_size;
	if (malloc_min != SIZE_MAX)
		arena_init();
	{
		uintptr_t in[] = {
			(uintptr_t)__libc_malloc,
			(uintptr_t)dlsym(RTLD_DEFAULT, "__tls_get_addr"),
			(uintptr_t)dlsym(RTLD_DEFAULT, "_dl_find_object"),
			0,
		};

		if (!in[1]) {
			in[1] = in[2];
			in[2] = 0;
		}
		dl_iterate_phdr(libc_text_fn, in);
	}
	/* Our descriptors above the low ones the program expects. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur >= 256 &&
	    rl.rlim_cur != RLIM_INFINITY)
		lib_fd_floor = rl.rlim_cur / 2 < 4096 ? rl.rlim_cur / 2 : 4096;
	debug("loaded: min size %zu; glibc's code in %u ranges", cfg_min_size,
	      nlibc_text);
}
