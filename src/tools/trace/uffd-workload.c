// SPDX-License-Identifier: MIT
/*
 * uffd-workload: a known number of userfaultfd faults, for checking
 * upager-trace against ground truth.
 *
 * It maps PAGES pages, registers them with a userfaultfd in one of three
 * modes and serves the faults from a handler thread, the way upagerd does:
 *
 *   missing  anonymous private memory; UFFDIO_COPY fills each page
 *   wp       anonymous memory, populated, then write-protected; each write
 *            faults and UFFDIO_WRITEPROTECT (mode 0) un-protects and wakes
 *   minor    a shmem memfd whose pages are in the page cache but not mapped
 *            here; UFFDIO_CONTINUE maps them
 *
 * Protocol (for tests, which must attach a tracer before any fault):
 * everything is set up first; then it reads one byte from stdin (EOF also
 * means go), touches every page once from THREADS threads (disjoint slices),
 * checks the contents, and prints on stdout
 *
 *	mode=<mode> pages=<n> threads=<t>
 *	faults=<number of page faults its handler served>
 *
 * and exits 0. Exit 77 if userfaultfd or the mode's feature is unavailable,
 * 1 on any other failure. Each page is touched exactly once and fault-around
 * is off for uffd-registered shmem, so faults equals pages when all is well;
 * the count printed is the handler's, not an assumption.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include "uffd.h"

#define EXIT_SKIP 77

enum mode {
	MODE_MISSING,
	MODE_WP,
	MODE_MINOR,
};

static const char *const mode_names[] = {
	[MODE_MISSING] = "missing",
	[MODE_WP] = "wp",
	[MODE_MINOR] = "minor",
};

static const uint64_t reg_mode[] = {
	[MODE_MISSING] = UFFDIO_REGISTER_MODE_MISSING,
	[MODE_WP] = UFFDIO_REGISTER_MODE_WP,
	[MODE_MINOR] = UFFDIO_REGISTER_MODE_MINOR,
};

struct workload {
	enum mode mode;
	size_t pages;
	unsigned int threads;
	size_t page_size;
	char *area;
	char *src; /* one page, source of UFFDIO_COPY */
	int uffd;
	int stop_fd;	      /* eventfd: tells the handler to return */
	unsigned long faults; /* served by the handler */
};

struct toucher {
	struct workload *w;
	size_t first, count;
	int err;
};

static unsigned char pattern(size_t page)
{
	return (unsigned char)(page * 7 + 1);
}

static int serve_fault(struct workload *w, const struct uffd_msg *m)
{
	unsigned long addr = m->arg.pagefault.address & ~(w->page_size - 1);
	size_t page = (addr - (unsigned long)w->area) / w->page_size;
	int err = -EINVAL;

	switch (w->mode) {
	case MODE_MISSING:
		memset(w->src, pattern(page), w->page_size);
		err = uffd_copy(w->uffd, addr, w->src, w->page_size, true, NULL);
		break;
	case MODE_WP:
		/* un-protect, and wake the writer */
		err = uffd_writeprotect(w->uffd, addr, w->page_size, false,
					true);
		break;
	case MODE_MINOR:
		err = uffd_continue(w->uffd, addr, w->page_size, true, NULL);
		break;
	}
	return err == -EEXIST ? 0 : err;
}

/* The touchers would wait forever on a dead handler: give up loudly. */
static void handler_fail(const char *what, int err)
{
	fprintf(stderr, "uffd-workload: handler: %s: %s\n", what,
		strerror(-err));
	exit(1);
}

static void *handler_main(void *arg)
{
	struct workload *w = arg;
	struct pollfd pfd[2] = {
		{ .fd = w->uffd, .events = POLLIN },
		{ .fd = w->stop_fd, .events = POLLIN },
	};
	struct uffd_msg msgs[64];
	ssize_t n;
	int i, err;

	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			handler_fail("poll", -errno);
		}
		if (pfd[1].revents)
			return NULL;
		n = read(w->uffd, msgs, sizeof(msgs));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			handler_fail("read", -errno);
		}
		for (i = 0; i < (int)(n / (ssize_t)sizeof(msgs[0])); i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			err = serve_fault(w, &msgs[i]);
			if (err)
				handler_fail("resolving a fault", err);
			w->faults++;
		}
	}
}

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	struct workload *w = t->w;
	size_t i;

	for (i = t->first; i < t->first + t->count; i++) {
		volatile char *p = w->area + i * w->page_size;

		if (w->mode == MODE_WP)
			*p = (char)pattern(i); /* a write, which WP traps */
		if ((unsigned char)*p != pattern(i)) {
			t->err = -EIO;
			return NULL;
		}
	}
	return NULL;
}

/* Returns 0, -errno, or 77-worthy -ENOSYS/-EPERM/-EOPNOTSUPP. */
static int workload_setup(struct workload *w)
{
	uint64_t need = w->mode == MODE_MINOR ? UFFD_FEATURE_MINOR_SHMEM : 0;
	size_t len = w->pages * w->page_size, i;
	int memfd = -1, err;

	/* -EOPNOTSUPP without the mode's feature */
	w->uffd = uffd_open(need, need, UFFD_OPEN_USER_ONLY, NULL);
	if (w->uffd < 0)
		return w->uffd;

	w->src = mmap(NULL, w->page_size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (w->src == MAP_FAILED)
		return -errno;

	if (w->mode == MODE_MINOR) {
		memfd = memfd_create("uffd-workload", MFD_CLOEXEC);
		if (memfd < 0)
			return -errno;
		if (ftruncate(memfd, (off_t)len))
			goto fail_memfd;
		/* Into the page cache: the mapping below takes minor faults. */
		for (i = 0; i < w->pages; i++) {
			memset(w->src, pattern(i), w->page_size);
			if (pwrite(memfd, w->src, w->page_size,
				   (off_t)(i * w->page_size)) !=
			    (ssize_t)w->page_size)
				goto fail_memfd;
		}
		w->area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
			       memfd, 0);
		if (w->area == MAP_FAILED)
			goto fail_memfd;
		close(memfd);
	} else {
		w->area = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (w->area == MAP_FAILED)
			return -errno;
		/* One fault per 4 KiB page, never one per 2 MiB. */
		madvise(w->area, len, MADV_NOHUGEPAGE);
		if (w->mode == MODE_WP)
			for (i = 0; i < w->pages; i++)
				w->area[i * w->page_size] = 0;
	}

	err = uffd_register(w->uffd, (uintptr_t)w->area, len, reg_mode[w->mode],
			    NULL);
	if (err)
		return err == -EINVAL ? -EOPNOTSUPP : err;
	if (w->mode == MODE_WP) {
		err = uffd_writeprotect(w->uffd, (uintptr_t)w->area, len, true,
					true);
		if (err)
			return err;
	}

	w->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (w->stop_fd < 0)
		return -errno;
	return 0;

fail_memfd:
	err = -errno;
	close(memfd);
	return err;
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || end == s || *end || !*out || *out > max || s[0] == '-')
		return -EINVAL;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: uffd-workload [-m missing|wp|minor] [-n PAGES] [-t THREADS]\n"
		"Sets up PAGES pages (default 1000) under a userfaultfd, waits for one byte\n"
		"(or EOF) on stdin, touches every page once from THREADS threads (default 1),\n"
		"then prints 'faults=N', N being the faults its handler served.\n");
}

int main(int argc, char **argv)
{
	struct workload w = { .mode = MODE_MISSING,
			      .pages = 1000,
			      .threads = 1,
			      .uffd = -1,
			      .stop_fd = -1 };
	struct toucher *touchers = NULL;
	pthread_t handler, *tids = NULL;
	unsigned long v;
	size_t per, i;
	uint64_t one = 1;
	char go;
	int c, err;

	while ((c = getopt(argc, argv, "m:n:t:h")) != -1) {
		switch (c) {
		case 'm':
			for (i = 0; i < 3; i++)
				if (!strcmp(optarg, mode_names[i]))
					break;
			if (i == 3) {
				fprintf(stderr,
					"uffd-workload: unknown mode '%s'\n",
					optarg);
				return 2;
			}
			w.mode = (enum mode)i;
			break;
		case 'n':
			if (parse_ulong(optarg, 1UL << 24, &v)) {
				fprintf(stderr,
					"uffd-workload: bad page count '%s'\n",
					optarg);
				return 2;
			}
			w.pages = v;
			break;
		case 't':
			if (parse_ulong(optarg, 256, &v)) {
				fprintf(stderr,
					"uffd-workload: bad thread count '%s'\n",
					optarg);
				return 2;
			}
			w.threads = (unsigned int)v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (w.threads > w.pages)
		w.threads = (unsigned int)w.pages;
	w.page_size = (size_t)sysconf(_SC_PAGESIZE);

	err = workload_setup(&w);
	if (err) {
		fprintf(stderr, "uffd-workload: %s setup: %s\n",
			mode_names[w.mode], strerror(-err));
		return err == -ENOSYS || err == -EPERM || err == -EOPNOTSUPP ?
			       EXIT_SKIP :
			       1;
	}
	err = pthread_create(&handler, NULL, handler_main, &w);
	if (err) {
		fprintf(stderr, "uffd-workload: pthread_create: %s\n",
			strerror(err));
		return 1;
	}

	/* The go signal: anything, or EOF. */
	while (read(STDIN_FILENO, &go, 1) < 0 && errno == EINTR)
		;

	touchers = calloc(w.threads, sizeof(*touchers));
	tids = calloc(w.threads, sizeof(*tids));
	if (!touchers || !tids) {
		fprintf(stderr, "uffd-workload: out of memory\n");
		return 1;
	}
	per = w.pages / w.threads;
	for (i = 0; i < w.threads; i++) {
		touchers[i].w = &w;
		touchers[i].first = i * per;
		touchers[i].count = i == w.threads - 1 ? w.pages - i * per :
							 per;
		err = pthread_create(&tids[i], NULL, toucher_main, &touchers[i]);
		if (err) {
			fprintf(stderr, "uffd-workload: pthread_create: %s\n",
				strerror(err));
			return 1;
		}
	}
	err = 0;
	for (i = 0; i < w.threads; i++) {
		pthread_join(tids[i], NULL);
		if (touchers[i].err)
			err = touchers[i].err;
	}

	if (write(w.stop_fd, &one, sizeof(one)) != sizeof(one)) {
		fprintf(stderr, "uffd-workload: eventfd: %s\n", strerror(errno));
		return 1;
	}
	pthread_join(handler, NULL);
	if (err) {
		fprintf(stderr,
			"uffd-workload: a page read back wrong contents\n");
		return 1;
	}
	printf("mode=%s pages=%zu threads=%u\n", mode_names[w.mode], w.pages,
	       w.threads);
	printf("faults=%lu\n", w.faults);
	free(touchers);
	free(tids);
	return 0;
}
