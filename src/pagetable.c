// SPDX-License-Identifier: MIT
#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>

#include "pagetable.h"

int pagetable_init(struct pagetable *pt, uint64_t npages)
{
	void *p = mmap(NULL, npages * sizeof(*pt->e), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	pt->e = p;
	pt->npages = npages;
	return 0;
}

void pagetable_fini(struct pagetable *pt)
{
	if (pt->e)
		munmap((void *)pt->e, pt->npages * sizeof(*pt->e));
	pt->e = NULL;
}
