// SPDX-License-Identifier: MIT
/* The image format's reader and trailer (imagefmt.h). */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <upager/upager.h>

#include "fd.h"
#include "imagefmt.h"

uint64_t image_sum(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* A read that finds the file ending first: shorter than its trailer says. */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	int ret = fd_pread_full(fd, buf, len, off);

	return ret == -ENODATA ? -EINVAL : ret;
}

static int bad(const char **why, const char *what)
{
	if (why)
		*why = what;
	return -EINVAL;
}

int image_probe(int fd, struct image_info *info, const char **why)
{
	struct image_footer f;
	struct image_header h;
	uint64_t trailer_off, trailer_len, ps;
	struct stat st;
	int ret;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size < IMAGE_HEADER_SIZE + IMAGE_FOOTER_SIZE)
		return -ENODATA;
	ret = pread_full(fd, &f, sizeof(f), st.st_size - sizeof(f));
	if (ret)
		return ret == -EINVAL ? -ENODATA : ret;
	if (memcmp(f.magic, IMAGE_MAGIC, 8))
		return -ENODATA;
	if (image_sum(IMAGE_SUM0, &f,
		      offsetof(struct image_footer, footer_sum)) !=
	    le64toh(f.footer_sum))
		return bad(why, "its footer is damaged (checksum)");
	if (le32toh(f.version) != IMAGE_VERSION)
		return bad(why, "an image version this build does not read");
	trailer_off = le64toh(f.trailer_off);
	trailer_len = le64toh(f.trailer_len);
	if (trailer_len < IMAGE_HEADER_SIZE ||
	    trailer_off > (uint64_t)st.st_size ||
	    trailer_len > (uint64_t)st.st_size - trailer_off ||
	    trailer_off + trailer_len + IMAGE_FOOTER_SIZE !=
		    (uint64_t)st.st_size)
		return bad(why, "its footer does not match the file's size");
	ret = pread_full(fd, &h, sizeof(h), trailer_off);
	if (ret)
		return ret;
	if (memcmp(h.magic, IMAGE_MAGIC, 8) ||
	    image_sum(IMAGE_SUM0, &h,
		      offsetof(struct image_header, header_sum)) !=
		    le64toh(h.header_sum))
		return bad(why, "its header is damaged (checksum)");
	memset(info, 0, sizeof(*info));
	info->page_size = le32toh(h.page_size);
	info->size = le64toh(h.size);
	info->image_id = le64toh(h.image_id);
	info->base_id = le64toh(h.base_id);
	info->nr_pages = le64toh(h.nr_pages);
	info->nr_carried = le64toh(h.nr_carried);
	info->bitmap_off = le64toh(h.bitmap_off);
	info->bitmap_len = le64toh(h.bitmap_len);
	info->bitmap_sum = le64toh(h.bitmap_sum);
	info->created_ns = le64toh(h.created_ns);
	info->file_size = st.st_size;
	ps = info->page_size;
	if (le32toh(h.version) != IMAGE_VERSION)
		return bad(why, "an image version this build does not read");
	if (ps < 512 || (ps & (ps - 1)) || info->size % ps ||
	    info->size != trailer_off || info->size > UPAGER_MAX_SIZE ||
	    info->nr_pages != info->size / ps || !info->image_id ||
	    info->nr_carried > info->nr_pages)
		return bad(why, "its header is inconsistent");
	if (!info->base_id) {
		if (info->bitmap_off || info->bitmap_len ||
		    info->nr_carried != info->nr_pages ||
		    trailer_len != IMAGE_HEADER_SIZE)
			return bad(why, "its header is inconsistent");
	} else if (info->bitmap_off != trailer_off + IMAGE_HEADER_SIZE ||
		   info->bitmap_len != (info->nr_pages + 7) / 8 ||
		   trailer_len != IMAGE_HEADER_SIZE + info->bitmap_len) {
		return bad(why, "its bitmap's place is inconsistent");
	}
	return 0;
}

int image_bitmap_read(int fd, const struct image_info *info, uint8_t **out)
{
	uint64_t carried = 0;
	uint8_t *bm;
	int ret;

	if (!info->base_id || !info->bitmap_len)
		return -EINVAL;
	bm = malloc(info->bitmap_len);
	if (!bm)
		return -ENOMEM;
	ret = pread_full(fd, bm, info->bitmap_len, info->bitmap_off);
	if (!ret &&
	    image_sum(IMAGE_SUM0, bm, info->bitmap_len) != info->bitmap_sum)
		ret = -EINVAL;
	/* No bit past the last page, and as many set as the header says. */
	if (!ret && info->nr_pages % 8 &&
	    bm[info->bitmap_len - 1] >> (info->nr_pages % 8))
		ret = -EINVAL;
	for (uint64_t i = 0; !ret && i < info->bitmap_len; i++)
		carried += __builtin_popcount(bm[i]);
	if (!ret && carried != info->nr_carried)
		ret = -EINVAL;
	if (ret) {
		free(bm);
		return ret;
	}
	*out = bm;
	return 0;
}

void image_trailer_make(const struct image_info *info, struct image_header *hdr,
			struct image_footer *foot)
{
	uint64_t bitmap_off = info->base_id ? info->size + IMAGE_HEADER_SIZE :
					      0;

	memset(hdr, 0, sizeof(*hdr));
	memcpy(hdr->magic, IMAGE_MAGIC, 8);
	hdr->version = htole32(IMAGE_VERSION);
	hdr->page_size = htole32(info->page_size);
	hdr->size = htole64(info->size);
	hdr->image_id = htole64(info->image_id);
	hdr->base_id = htole64(info->base_id);
	hdr->nr_pages = htole64(info->size / info->page_size);
	hdr->nr_carried = htole64(info->nr_carried);
	hdr->bitmap_off = htole64(bitmap_off);
	hdr->bitmap_len = htole64(info->base_id ? info->bitmap_len : 0);
	hdr->bitmap_sum = htole64(info->base_id ? info->bitmap_sum : 0);
	hdr->created_ns = htole64(info->created_ns);
	hdr->header_sum = htole64(
		image_sum(IMAGE_SUM0, hdr,
			  offsetof(struct image_header, header_sum)));

	memset(foot, 0, sizeof(*foot));
	memcpy(foot->magic, IMAGE_MAGIC, 8);
	foot->trailer_off = htole64(info->size);
	foot->trailer_len = htole64(IMAGE_HEADER_SIZE +
				    (info->base_id ? info->bitmap_len : 0));
	foot->version = htole32(IMAGE_VERSION);
	foot->footer_sum = htole64(
		image_sum(IMAGE_SUM0, foot,
			  offsetof(struct image_footer, footer_sum)));
}
