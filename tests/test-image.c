// SPDX-License-Identifier: MIT
/*
 * Images: save a segment to a file, restore it as a new segment, byte for
 * byte; incremental images over their base; every bad input refused with
 * its own code while the daemon goes on serving.

 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"
#include "imagefmt.h"

#define TRAILER_FULL (IMAGE_HEADER_SIZE + IMAGE_FOOTER_SIZE)

static void path_in(char *buf, size_t len, const struct h_daemon *d,
		    const char *name)
{
	snprintf(buf, len, "%s/%s", d->dir, name);
}

/* Saves @name (since @since, or NULL) to @path (asserted). */
static struct upager_save_result save(struct upager *u, const char *name,
				      const char *since, const char *path)
{
	struct upager_save_result r;
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int ret;

	ck_assert_int_ge(fd, 0);
	ret = upager_save(u, name, fd, since, &r);
	ck_assert_msg(ret == 0, "save %s%s%s: %s", name, since ? " since " : "",
		      since ? since : "", strerror(-ret));
	close(fd);
	return r;
}

/* A save expected to fail; returns the code. */
static int save_err(struct upager *u, const char *name, const char *since,
		    int fd)
{
	struct upager_save_result r;

	return upager_save(u, name, fd, since, &r);
}

/* Creates @name over image @path (size 0: the image's). */
static int create_from(struct upager *u, const char *name, const char *path,
		       const char *base, uint64_t size)
{
	struct upager_create_opts o = { .size = size, .source_fd = -1 };
	int bfd = -1, ret;

	o.source_fd = h_open_ro(path);
	if (base)
		bfd = h_open_ro(base);
	ret = base ? upager_create_image(u, name, &o, bfd) :
		     upager_create(u, name, &o);
	close(o.source_fd);
	if (bfd >= 0)
		close(bfd);
	return ret;
}

/* The bytes of segment @name, through an attachment (malloc'ed). */
static char *seg_bytes(struct upager *u, const char *name, size_t size)
{
	struct upager_attachment *a;
	char *map = h_attach(u, name, UPAGER_ATTACH_RDONLY, &a);
	char *buf = malloc(size);

	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(upager_attachment_size(a), size);
	memcpy(buf, map, size);
	upager_detach(a);
	return buf;
}

/* The daemon still answers, and still creates and deletes. */
static void assert_serving(struct upager *u)
{
	struct upager_create_opts o = { .size = H_PAGE, .source_fd = -1 };

	h_stats(u);
	ck_assert_int_eq(upager_create(u, "alive", &o), 0);
	ck_assert_int_eq(upager_delete(u, "alive", 0), 0);
}

/* Whether @dir's filesystem reports holes (SEEK_HOLE before the end). */
static bool fs_has_holes(const char *dir)
{
	char path[512];
	bool holes;
	int fd;

	snprintf(path, sizeof(path), "%s/holes-probe", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
	ck_assert_int_eq(pwrite(fd, "x", 1, (1 << 20) - 1), 1);
	holes = lseek(fd, 0, SEEK_HOLE) == 0;
	close(fd);
	unlink(path);
	return holes;
}

/*
 * The image at @path holds @expect (@size bytes): its data, holes where
 * the pages are zero (when the filesystem tells), a full image's trailer.
 */
static void check_full_image(const char *path, const char *expect, size_t size,
			     uint64_t image_id, bool holes)
{
	struct image_info info;
	uint64_t data_pages = 0;
	struct stat st;
	char *got;
	int fd = h_open_ro(path);

	ck_assert_int_eq(image_probe(fd, &info, NULL), 0);
	ck_assert_uint_eq(info.size, size);
	ck_assert_uint_eq(info.page_size, H_PAGE);
	ck_assert_uint_eq(info.image_id, image_id);
	ck_assert_uint_eq(info.base_id, 0);
	ck_assert_uint_eq(info.nr_pages, size / H_PAGE);
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_uint_eq(st.st_size, size + TRAILER_FULL);
	got = malloc(size);
	ck_assert_ptr_nonnull(got);
	ck_assert_int_eq(pread(fd, got, size, 0), (ssize_t)size);
	ck_assert_int_eq(h_first_diff(got, expect, size), -1);
	for (size_t off = 0; holes && off < size; off += H_PAGE) {
		bool zero = h_first_nonzero(expect + off, H_PAGE) < 0;
		off_t data = lseek(fd, off, SEEK_DATA);

		ck_assert_msg(zero ? data != (off_t)off : data == (off_t)off,
			      "page %zu: %s, but SEEK_DATA says %lld",
			      off / H_PAGE, zero ? "zero" : "data",
			      (long long)data);
		data_pages += !zero;
	}
	if (holes)
		ck_assert_msg((uint64_t)st.st_blocks * 512 <=
				      (data_pages + 1) * H_PAGE + 65536,
			      "%llu blocks for %llu data pages",
			      (unsigned long long)st.st_blocks,
			      (unsigned long long)data_pages);
	free(got);
	close(fd);
}

/* Writes patterns into some pages of @map: every third, and a few bytes
 * at the end of others; the rest stay zero.  Returns how many pages. */
static uint64_t write_patterns(char *map, size_t size, uint64_t seed)
{
	uint64_t n = 0;

	for (size_t pg = 0; pg < size / H_PAGE; pg++) {
		char *p = map + pg * H_PAGE;

		if (pg % 3 == 0) {
			h_fill(p, H_PAGE, seed + pg);
			n++;
		} else if (pg % 7 == 1) {
			p[H_PAGE - 1] = (char)(pg | 1);
			n++;
		}
	}
	return n;
}

/* Zero segments written with patterns, of several sizes: saved with
 * holes, restored byte for byte. */
START_TEST(test_save_restore_sizes)
{
	static const size_t pages[] = { 1, 2, 255, 256, 257, 1000, 1027 };
	struct h_daemon d;
	struct upager *u;
	bool holes;

	h_daemon_start(&d);
	u = h_connect(&d);
	holes = fs_has_holes(d.dir);
	if (!holes)
		printf("note: %s reports no holes: not checked\n", d.dir);
	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
		size_t size = pages[i] * H_PAGE;
		struct upager_save_result r;
		struct upager_segment_info info;
		struct upager_attachment *a;
		char path[512], name[32], rname[32], *map, *expect, *got;
		uint64_t written;

		snprintf(name, sizeof(name), "z%zu", pages[i]);
		snprintf(rname, sizeof(rname), "r%zu", pages[i]);
		path_in(path, sizeof(path), &d, name);
		h_create(u, name, size, -1, 0);
		map = h_attach(u, name, 0, &a);
		written = write_patterns(map, size, i);
		expect = malloc(size);
		memcpy(expect, map, size);
		upager_detach(a);

		r = save(u, name, NULL, path);
		ck_assert_uint_eq(r.pages, pages[i]);
		ck_assert_uint_eq(r.pages_data, written);
		ck_assert_uint_eq(r.bytes_written,
				  written * H_PAGE + TRAILER_FULL);
		ck_assert_uint_ne(r.image_id, 0);
		ck_assert_uint_eq(r.base_id, 0);
		check_full_image(path, expect, size, r.image_id, holes);

		ck_assert_int_eq(create_from(u, rname, path, NULL, 0), 0);
		info = h_stat(u, rname);
		ck_assert_uint_eq(info.size, size);
		ck_assert_uint_eq(info.source, UPAGER_SOURCE_FILE);
		got = seg_bytes(u, rname, size);
		ck_assert_int_eq(h_first_diff(got, expect, size), -1);
		free(got);
		free(expect);
	}
	assert_serving(u);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* A file-backed segment, some pages written: the image is the file's
 * bytes with the writes, and a smaller --size restores a prefix. */
START_TEST(test_save_file_backed)
{
	size_t size = 300 * H_PAGE + 123, rsize = 301 * H_PAGE;
	struct upager_attachment *a;
	struct upager_save_result r;
	struct h_daemon d;
	struct upager *u;
	char path[512], *data, *expect, *map, *got;

	h_daemon_start(&d);
	u = h_connect(&d);
	data = h_file_segment(&d, u, "f", size, 42);
	expect = calloc(1, rsize);
	memcpy(expect, data, size);
	map = h_attach(u, "f", 0, &a);
	for (size_t pg = 5; pg < 300; pg += 11) {
		memset(map + pg * H_PAGE, 0, H_PAGE); /* now a zero page */
		memset(expect + pg * H_PAGE, 0, H_PAGE);
		h_fill(map + (pg + 1) * H_PAGE, 100, pg);
		h_fill(expect + (pg + 1) * H_PAGE, 100, pg);
	}
	upager_detach(a);
	path_in(path, sizeof(path), &d, "f.img");
	r = save(u, "f", NULL, path);
	ck_assert_uint_eq(r.pages, rsize / H_PAGE);
	check_full_image(path, expect, rsize, r.image_id, fs_has_holes(d.dir));
	ck_assert_int_eq(create_from(u, "rf", path, NULL, 0), 0);
	got = seg_bytes(u, "rf", rsize);
	ck_assert_int_eq(h_first_diff(got, expect, rsize), -1);
	free(got);
	/* a prefix, not a multiple of the page size */
	ck_assert_int_eq(create_from(u, "rf2", path, NULL, 7 * H_PAGE + 1), 0);
	ck_assert_uint_eq(h_stat(u, "rf2").size, 8 * H_PAGE);
	got = seg_bytes(u, "rf2", 8 * H_PAGE);
	ck_assert_int_eq(h_first_diff(got, expect, 8 * H_PAGE), -1);
	free(got);
	free(expect);
	free(data);
	assert_serving(u);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* Flips a byte of @path at @off. */
static void flip(const char *path, off_t off)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	char c;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, &c, 1, off), 1);
	c ^= 0x20;
	ck_assert_int_eq(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static void copy_file(const char *from, const char *to)
{
	size_t n;
	void *p = h_read_file(from, &n);
	int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
	close(fd);
	free(p);
}

/*
 * Two snapshots of segment "a": "s1" saved full, then "a" written and
 * "b" cut and saved --since "s1", an incremental image on top of the
 * first.  Fills @full and @inc (paths).
 */
static void make_incremental(struct h_daemon *d, struct upager *u, size_t size,
			     char *full, char *inc, size_t len,
			     struct upager_save_result *rf,
			     struct upager_save_result *ri)
{
	struct upager_attachment *at;
	char *map;
	int fd, ret;

	path_in(full, len, d, "a.full");
	path_in(inc, len, d, "b.inc");
	h_create(u, "a", size, -1, 0);
	map = h_attach(u, "a", 0, &at);
	write_patterns(map, size, 7);
	ck_assert_int_eq(upager_snapshot(u, "a", "s1", NULL), 0);
	*rf = save(u, "s1", NULL, full);
	h_fill(map + 3 * H_PAGE, H_PAGE, 99);	   /* data changed */
	memset(map + 6 * H_PAGE, 0, H_PAGE);	   /* data to zero */
	map[size - 1] = 'z';			   /* the last page */
	h_fill(map + 10 * H_PAGE, 2 * H_PAGE, 98); /* zero to data */
	ck_assert_int_eq(upager_snapshot(u, "a", "b", NULL), 0);
	h_fill(map + 20 * H_PAGE, H_PAGE, 97); /* after: in neither */
	upager_detach(at);
	fd = open(inc, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ret = upager_save(u, "b", fd, "s1", ri);
	close(fd);
	ck_assert_int_eq(ret, 0);
}

/* The bitmap of incremental image @path: which pages it carries. */
static uint8_t *inc_bitmap(const char *path, struct image_info *info)
{
	uint8_t *bm = NULL;
	int fd = h_open_ro(path);

	ck_assert_int_eq(image_probe(fd, info, NULL), 0);
	ck_assert_int_eq(image_bitmap_read(fd, info, &bm), 0);
	close(fd);
	return bm;
}

/* Every bad input has its code, and the daemon goes on serving. */
START_TEST(test_bad_inputs)
{
	struct upager_save_result rf, ri;
	struct h_daemon d;
	struct upager *u;
	char full[512], inc[512], raw[512], path[512], *data;
	int fd, p[2];

	h_daemon_start(&d);
	u = h_connect(&d);
	make_incremental(&d, u, 64 * H_PAGE, full, inc, sizeof(full), &rf, &ri);
	data = h_make_file(raw, sizeof(raw), d.dir, "raw", 64 * H_PAGE, 3);
	free(data);
	path_in(path, sizeof(path), &d, "out");

	/* save */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_eq(save_err(u, "nosuch", NULL, fd), -ENOENT);
	ck_assert_int_eq(save_err(u, "a", "nosuch", fd), -ENOENT);
	ck_assert_int_eq(save_err(u, "a", "a", fd), -EINVAL);
	close(fd);
	fd = h_open_ro(path);
	ck_assert_int_eq(save_err(u, "a", NULL, fd), -EBADF);
	close(fd);
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	ck_assert_int_eq(save_err(u, "a", NULL, p[1]), -EINVAL);
	close(p[0]);
	close(p[1]);
	assert_serving(u);

	/* restore */
	ck_assert_int_eq(create_from(u, "x", full, NULL, 65 * H_PAGE), -EINVAL);
	ck_assert_int_eq(create_from(u, "x", raw, full, 0), -EINVAL);
	ck_assert_int_eq(create_from(u, "x", full, full, 0), -EINVAL);
	ck_assert_int_eq(create_from(u, "x", inc, NULL, 0), -EINVAL);
	ck_assert_int_eq(create_from(u, "x", inc, raw, 0), -EINVAL);
	ck_assert_int_eq(create_from(u, "x", inc, inc, 0), -EINVAL);
	/* a full image of the same size, but another one */
	save(u, "b", NULL, path);
	ck_assert_int_eq(create_from(u, "x", inc, path, 0), -EXDEV);
	/* --since: an older snapshot of the same segment, only */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_eq(save_err(u, "s1", "b", fd), -EINVAL);
	ck_assert_int_eq(save_err(u, "b", "a", fd), -EINVAL);
	close(fd);
	/* a damaged header, then footer: no image, and no raw file */
	copy_file(full, path);
	flip(path, 64 * H_PAGE + 20);
	ck_assert_int_eq(create_from(u, "x", path, NULL, 0), -EINVAL);
	copy_file(full, path);
	flip(path, 64 * H_PAGE + TRAILER_FULL - 10);
	ck_assert_int_eq(create_from(u, "x", path, NULL, 0), -EINVAL);
	/* no footer at all: a raw file, as before (its size must be said) */
	copy_file(full, path);
	ck_assert_int_eq(truncate(path, 64 * H_PAGE + TRAILER_FULL - 1), 0);
	ck_assert_int_eq(create_from(u, "x", path, NULL, 0), -EINVAL);
	ck_assert_int_eq(create_from(u, "x", path, NULL, H_PAGE), 0);
	ck_assert_uint_eq(h_stat(u, "x").source, UPAGER_SOURCE_FILE);
	ck_assert_int_eq(h_stat(u, "x").size, H_PAGE);
	assert_serving(u);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * An incremental image over its base gives back the newer snapshot, and
 * carries exactly the pages written between the two cuts.
 */
START_TEST(test_incremental_written)
{
	size_t size = 300 * H_PAGE;
	struct upager_save_result rf, ri;
	struct image_info info;
	struct h_daemon d;
	struct upager *u;
	char full[512], inc[512], *want, *got;
	uint8_t *bm;

	h_daemon_start(&d);
	u = h_connect(&d);
	make_incremental(&d, u, size, full, inc, sizeof(full), &rf, &ri);
	ck_assert_uint_eq(ri.base_id, rf.image_id);
	ck_assert_uint_ne(ri.image_id, rf.image_id);
	ck_assert_uint_eq(ri.pages, size / H_PAGE);
	/* pages 3, 10, 11, the last with data; 6 carried as a hole */
	ck_assert_uint_eq(ri.pages_data, 4);
	bm = inc_bitmap(inc, &info);
	ck_assert_uint_eq(info.base_id, rf.image_id);
	ck_assert_uint_eq(info.nr_carried, 5);
	for (uint64_t pg = 0; pg < size / H_PAGE; pg++)
		ck_assert_msg(image_bit(bm, pg) == (pg == 3 || pg == 6 ||
						    pg == 10 || pg == 11 ||
						    pg == size / H_PAGE - 1),
			      "page %llu", (unsigned long long)pg);
	free(bm);
	ck_assert_int_eq(create_from(u, "r", inc, full, 0), 0);
	ck_assert_uint_eq(h_stat(u, "r").source, UPAGER_SOURCE_IMAGE);
	ck_assert_uint_eq(h_stat(u, "r").size, size);
	want = seg_bytes(u, "b", size);
	got = seg_bytes(u, "r", size);
	ck_assert_int_eq(h_first_diff(got, want, size), -1);
	free(got);
	free(want);
	assert_serving(u);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/*
 * Through snapshots: S1, some pages written, S2; S1 saved full, S2 since
 * S1; the incremental image carries exactly the written pages, and over
 * the full one it gives back S2.
 */
START_TEST(test_incremental_snapshots)
{
	static const uint64_t wrote[] = { 0, 1, 2, 17, 200, 255, 256, 511 };
	size_t size = 512 * H_PAGE;
	struct upager_snapshot_result sr;
	struct upager_save_result rf, ri;
	struct upager_attachment *at;
	struct image_info info;
	struct h_daemon d;
	struct upager *u;
	char full[512], inc[512], *map, *want, *got;
	uint8_t *bm;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "s", size, -1, 0);
	map = h_attach(u, "s", 0, &at);
	write_patterns(map, size, 1);
	ck_assert_int_eq(upager_snapshot(u, "s", "s1", &sr), 0);
	for (size_t i = 0; i < sizeof(wrote) / sizeof(wrote[0]); i++)
		h_fill(map + wrote[i] * H_PAGE, 64, 1000 + i);
	ck_assert_int_eq(upager_snapshot(u, "s", "s2", &sr), 0);
	/* after S2: in neither image */
	h_fill(map + 100 * H_PAGE, H_PAGE, 5);
	upager_detach(at);

	path_in(full, sizeof(full), &d, "s1.full");
	path_in(inc, sizeof(inc), &d, "s2.inc");
	rf = save(u, "s1", NULL, full);
	ri = save(u, "s2", "s1", inc);
	ck_assert_uint_eq(ri.base_id, rf.image_id);
	bm = inc_bitmap(inc, &info);
	ck_assert_uint_eq(info.nr_carried, sizeof(wrote) / sizeof(wrote[0]));
	for (size_t i = 0; i < sizeof(wrote) / sizeof(wrote[0]); i++)
		ck_assert_msg(image_bit(bm, wrote[i]), "page %llu",
			      (unsigned long long)wrote[i]);
	free(bm);
	ck_assert_int_eq(create_from(u, "r2", inc, full, 0), 0);
	want = seg_bytes(u, "s2", size);
	got = seg_bytes(u, "r2", size);
	ck_assert_int_eq(h_first_diff(got, want, size), -1);
	free(got);
	free(want);
	/* a base that is not the one: S2's full image */
	save(u, "s2", NULL, full);
	ck_assert_int_eq(create_from(u, "r3", inc, full, 0), -EXDEV);
	assert_serving(u);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

/* upagerctl save and create: output, options, one-line errors. */
static void ctl(struct h_run *r, const struct h_daemon *d, ...)
{
	const char *argv[16];
	size_t n = 0;
	const char *arg;
	va_list ap;

	argv[n++] = h_upagerctl();
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	va_start(ap, d);
	while ((arg = va_arg(ap, const char *)) && n < 15)
		argv[n++] = arg;
	va_end(ap);
	argv[n] = NULL;
	h_run(argv, NULL, 0, r);
}

static void assert_one_line_error(const struct h_run *r, int code,
				  const char *needle)
{
	h_assert_exit(r->status, code);
	ck_assert_msg(r->err_len > 0 &&
			      strchr(r->err, '\n') == r->err + r->err_len - 1,
		      "not one line: %s", r->err);
	ck_assert_msg(strstr(r->err, needle), "'%s' not in: %s", needle, r->err);
}

START_TEST(test_ctl)
{
	struct upager_attachment *at;
	struct h_daemon d;
	struct upager *u;
	struct h_run r;
	char img[512], img2[512], dir[512], bad[512], *map, *want, *got;
	struct stat st;
	mode_t um;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "c", 100 * H_PAGE, -1, 0);
	map = h_attach(u, "c", 0, &at);
	write_patterns(map, 100 * H_PAGE, 11);
	want = malloc(100 * H_PAGE);
	memcpy(want, map, 100 * H_PAGE);
	upager_detach(at);
	path_in(img, sizeof(img), &d, "c.img");
	path_in(img2, sizeof(img2), &d, "c2.img");

	ctl(&r, &d, "save", "c", img, NULL);
	h_assert_exit(r.status, 0);
	ck_assert_msg(strstr(r.out, "pages:") && strstr(r.out, "image id:"),
		      "%s", r.out);
	h_run_free(&r);
	ck_assert_int_eq(stat(img, &st), 0);
	um = umask(0);
	umask(um);
	ck_assert_uint_eq(st.st_mode & 0777, 0666 & ~um);
	ctl(&r, &d, "save", "--json", "c", img2, NULL);
	h_assert_exit(r.status, 0);
	ck_assert_msg(strstr(r.out, "\"pages\": 100") &&
			      strstr(r.out, "\"base_id\": null"),
		      "%s", r.out);
	h_run_free(&r);

	ctl(&r, &d, "create", "rc", "--source", img, NULL);
	h_assert_exit(r.status, 0);
	h_run_free(&r);
	got = seg_bytes(u, "rc", 100 * H_PAGE);
	ck_assert_int_eq(h_first_diff(got, want, 100 * H_PAGE), -1);
	free(got);

	/* errors: one line each, exit 1 (2 for usage), file untouched */
	path_in(bad, sizeof(bad), &d, "no/such/dir/x.img");
	ctl(&r, &d, "save", "c", bad, NULL);
	assert_one_line_error(&r, 1, "cannot open");
	h_run_free(&r);
	path_in(dir, sizeof(dir), &d, "");
	ctl(&r, &d, "save", "c", dir, NULL);
	assert_one_line_error(&r, 1, "Is a directory");
	h_run_free(&r);
	ctl(&r, &d, "save", "nosuch", img, NULL);
	assert_one_line_error(&r, 1, "no such segment");
	h_run_free(&r);
	ck_assert_int_eq(stat(img, &st), 0);
	ck_assert_uint_eq(st.st_size, 100 * H_PAGE + TRAILER_FULL);
	path_in(bad, sizeof(bad), &d, "never.img");
	ctl(&r, &d, "save", "c", bad, "--since", "nosuch", NULL);
	assert_one_line_error(&r, 1, "--since nosuch");
	h_run_free(&r);
	ck_assert_int_eq(access(bad, F_OK), -1);
	ctl(&r, &d, "save", "c", NULL);
	h_assert_exit(r.status, 2);
	h_run_free(&r);
	ctl(&r, &d, "create", "x", "--source", img, "--size", "1M", NULL);
	assert_one_line_error(&r, 1, "larger than the image");
	h_run_free(&r);
	ctl(&r, &d, "create", "x", "--source", img, "--base", img2, NULL);
	assert_one_line_error(&r, 1, "full image: it takes no --base");
	h_run_free(&r);
	ctl(&r, &d, "create", "x", "--base", img2, "--size", "4K", NULL);
	h_assert_exit(r.status, 2);
	h_run_free(&r);

	ctl(&r, &d, "save", "--help", NULL);
	h_assert_exit(r.status, 0);
	ck_assert_msg(strstr(r.out, "--since"), "%s", r.out);
	h_run_free(&r);
	ctl(&r, &d, "create", "--help", NULL);
	h_assert_exit(r.status, 0);
	ck_assert_msg(strstr(r.out, "--base"), "%s", r.out);
	h_run_free(&r);
	free(want);
	assert_serving(u);
	upager_disconnect(u);
	h_daemon_stop(&d);
}
END_TEST

struct save_arg {
	const char *sock, *path;
	int ret;
	uint64_t ns;
};

static void *save_thread(void *p)
{
	struct save_arg *s = p;
	struct upager_save_result r;
	struct upager *u;
	int fd = open(s->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	s->ret = upager_connect(s->sock, &u);
	if (!s->ret) {
		s->ret = upager_save(u, "big", fd, NULL, &r);
		s->ns = r.ns;
		upager_disconnect(u);
	}
	close(fd);
	return NULL;
}

/*
 * A save runs beside the control plane: other clients are answered
 * meanwhile; a client that goes away mid-save, and a daemon that stops
 * mid-save, leave nothing behind (the daemon exits 0, without leaks
 * under AddressSanitizer).
 */
START_TEST(test_save_beside_requests)
{
	size_t size = 64 * H_MIB;
	struct upager_attachment *at;
	struct save_arg sa;
	struct h_daemon d;
	struct upager *u;
	pthread_t t;
	char path[512], *map;
	uint64_t worst = 0, n = 0;
	int status;
	pid_t pid;

	h_daemon_start(&d);
	u = h_connect(&d);
	h_create(u, "big", size, -1, 0);
	map = h_attach(u, "big", 0, &at);
	h_fill(map, size, 5);
	upager_detach(at);
	path_in(path, sizeof(path), &d, "big.img");
	sa = (struct save_arg){ .sock = d.sock, .path = path };
	ck_assert_int_eq(pthread_create(&t, NULL, save_thread, &sa), 0);
	for (uint64_t end = h_now_ms() + 200; h_now_ms() < end; n++) {
		uint64_t t0 = h_now_ms();

		h_stats(u);
		if (h_now_ms() - t0 > worst)
			worst = h_now_ms() - t0;
	}
	pthread_join(t, NULL);
	ck_assert_int_eq(sa.ret, 0);
	printf("save of 64 MiB: %.1f ms; %llu stats meanwhile, the slowest "
	       "%llu ms\n",
	       sa.ns / 1e6, (unsigned long long)n, (unsigned long long)worst);

	/* the client goes mid-save */
	pid = h_fork();
	if (pid == 0) {
		struct upager *cu = h_child_connect(d.sock);
		int fd = open(path, O_RDWR | O_CLOEXEC);
		struct upager_save_result r;

		upager_save(cu, "big", fd, NULL, &r);
		_exit(0);
	}
	h_nap_ms(5);
	kill(pid, SIGKILL);
	h_wait_child(pid);
	assert_serving(u);

	/* the daemon stops mid-save */
	pid = h_fork();
	if (pid == 0) {
		struct upager *cu = h_child_connect(d.sock);
		int fd = open(path, O_RDWR | O_CLOEXEC);
		struct upager_save_result r;
		int ret = upager_save(cu, "big", fd, NULL, &r);

		_exit(ret == 0 || ret == -EPIPE ? 0 : 1);
	}
	h_nap_ms(5);
	upager_disconnect(u);
	h_daemon_stop(&d);
	status = h_wait_child(pid);
	h_assert_exit(status, 0);
}
END_TEST

static Suite *image_suite(void)
{
	Suite *s = h_suite("image");
	TCase *tc;

	tc = h_tcase(s, "full", H_NEED_DAEMON);
	tcase_add_test(tc, test_save_restore_sizes);
	tcase_add_test(tc, test_save_file_backed);
	tcase_add_test(tc, test_bad_inputs);
	tcase_add_test(tc, test_ctl);
	tcase_add_test(tc, test_save_beside_requests);

	tc = h_tcase(s, "incremental", H_NEED_DAEMON);
	tcase_add_test(tc, test_incremental_written);
	tcase_add_test(tc, test_incremental_snapshots);
	return s;
}

int main(void)
{
	h_main(image_suite());
}
