/* SPDX-License-Identifier: MIT */
/*
 * The on-disk format of an upager image, and its reader; shared by the
 * daemon (which writes images and reads them as sources: image.h) and
 * upagerctl (which reads the trailer to choose a size and to word errors).
 * The format itself is described in src/daemon/image.h.
 *
 * All integers are little-endian.  Checksums are 64-bit FNV-1a.
 */
#ifndef UPAGER_IMAGEFMT_H
#define UPAGER_IMAGEFMT_H

#include <stddef.h>
#include <stdint.h>

#define IMAGE_MAGIC "UPGIMG01" /* 8 bytes, no NUL: header and footer */
#define IMAGE_VERSION 1
#define IMAGE_HEADER_SIZE 128
#define IMAGE_FOOTER_SIZE 64

/* At the trailer's start, at offset `size` of the file. */
struct image_header {
	char magic[8];	      /* IMAGE_MAGIC */
	uint32_t version;     /* IMAGE_VERSION */
	uint32_t page_size;   /* bytes */
	uint64_t size;	      /* the data: bytes 0..size of the file, whole
			       * pages; the trailer starts here */
	uint64_t image_id;    /* random, this image's identity */
	uint64_t base_id;     /* incremental: the image_id of the full image
			       * it goes on top of; 0 for a full image */
	uint64_t nr_pages;    /* size / page_size */
	uint64_t nr_carried;  /* pages the image carries: all of them
			       * (full), the bitmap's set bits
			       * (incremental) */
	uint64_t bitmap_off;  /* incremental: file offset of the bitmap
			       * (right after this header); 0 if full */
	uint64_t bitmap_len;  /* bytes: (nr_pages + 7) / 8, or 0 */
	uint64_t bitmap_sum;  /* checksum of the bitmap, or 0 */
	uint64_t created_ns;  /* CLOCK_REALTIME at the save */
	uint64_t reserved[4]; /* 0 */
	uint64_t header_sum;  /* checksum of the bytes before it */
};

/* The file's last IMAGE_FOOTER_SIZE bytes. */
struct image_footer {
	char magic[8];	      /* IMAGE_MAGIC */
	uint64_t trailer_off; /* where the header is: `size` */
	uint64_t trailer_len; /* header + bitmap (the footer follows) */
	uint32_t version;     /* IMAGE_VERSION */
	uint32_t reserved0;
	uint64_t reserved[3];
	uint64_t footer_sum; /* checksum of the bytes before it */
};

_Static_assert(sizeof(struct image_header) == IMAGE_HEADER_SIZE, "header");
_Static_assert(sizeof(struct image_footer) == IMAGE_FOOTER_SIZE, "footer");

/* What a reader needs of an image, in host byte order. */
struct image_info {
	uint32_t page_size;
	uint64_t size;
	uint64_t image_id;
	uint64_t base_id;
	uint64_t nr_pages;
	uint64_t nr_carried;
	uint64_t bitmap_off;
	uint64_t bitmap_len;
	uint64_t bitmap_sum;
	uint64_t created_ns;
	uint64_t file_size;
};

/* 64-bit FNV-1a of @n bytes, continuing from @h (start with IMAGE_SUM0). */
#define IMAGE_SUM0 0xcbf29ce484222325ull
uint64_t image_sum(uint64_t h, const void *p, size_t n);

/*
 * image_probe - whether regular file @fd is an upager image, from its end
 * @info: its trailer, on success
 * @why: on -EINVAL, what is wrong, in words (may be NULL)
 *
 * Returns 0 (an image), -ENODATA (no footer: a raw file), -EINVAL (a
 * footer but a damaged or inconsistent trailer, or a version this build
 * does not read), or another -errno (reading it).
 */
int image_probe(int fd, struct image_info *info, const char **why);

/*
 * image_bitmap_read - the bitmap of incremental image @info of @fd,
 * checked against its checksum, into a malloc()ed buffer of
 * info->bitmap_len bytes (bit i of byte i / 8: page i is carried).
 * Returns 0, -EINVAL (damaged, or not incremental), -ENOMEM, -errno.
 */
int image_bitmap_read(int fd, const struct image_info *info, uint8_t **out);

/* Whether bit @i of @bitmap is set. */
static inline int image_bit(const uint8_t *bitmap, uint64_t i)
{
	return (bitmap[i / 8] >> (i % 8)) & 1;
}

/*
 * image_trailer_make - the header (at @hdr) and footer for an image of
 * @info (its page_size, size, ids, nr_carried, bitmap_len, bitmap_sum,
 * created_ns); fills in the offsets.
 */
void image_trailer_make(const struct image_info *info, struct image_header *hdr,
			struct image_footer *foot);

#endif
