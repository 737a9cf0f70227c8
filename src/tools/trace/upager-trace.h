/* SPDX-License-Identifier: MIT */
/*
 * upager-trace: what the BPF side and the loader share.
 *
 * The BPF program keeps one histogram per (process, fault kind) in a hash
 * map; the loader reads the map when tracing ends and sums kinds per
 * process. Keying by kind as well as by tgid costs little and lets the
 * loader report missing, write-protect and minor waits apart: they are
 * answered by different daemon paths and their latencies differ.
 *
 * Both sides include this file: the BPF side after vmlinux.h, the loader
 * after <linux/types.h>, so only __u32/__u64 are used here.
 */
#ifndef UPAGER_TRACE_H
#define UPAGER_TRACE_H

#define UPAGER_TRACE_COMM_LEN 16

/*
 * log2 buckets of the wait in nanoseconds: slot 0 holds waits of 0 and 1 ns,
 * slot k (k > 0) holds [2^k, 2^(k+1) - 1]. 64 slots cover every u64, so no
 * slot is a catch-all and every bucket has a finite upper bound.
 */
#define UPAGER_TRACE_SLOTS 64

/* Concurrently waiting threads we can time; more are counted as dropped. */
#define UPAGER_TRACE_MAX_WAITERS 16384
/* (tgid, kind) pairs we keep histograms for. */
#define UPAGER_TRACE_MAX_ENTRIES 4096

/*
 * The kind of a fault, from handle_userfault()'s @reason argument.
 * UNKNOWN is a reason we could not map: it means the vm_flags bit values
 * compiled into the BPF program do not match the running kernel.
 */
enum upager_trace_kind {
	UPAGER_TRACE_MISSING = 0,
	UPAGER_TRACE_WP = 1,
	UPAGER_TRACE_MINOR = 2,
	UPAGER_TRACE_UNKNOWN = 3,
	UPAGER_TRACE_NR_KINDS = 4,
};

struct upager_trace_key {
	__u32 tgid;
	__u32 kind; /* enum upager_trace_kind */
};

/* Updated from any CPU with atomic adds; the loader reads it at the end. */
struct upager_trace_hist {
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns; /* racy maximum: may miss a concurrent larger wait */
	char comm[UPAGER_TRACE_COMM_LEN]; /* of the thread-group leader */
	__u64 slots[UPAGER_TRACE_SLOTS];
};

/*
 * Global counters in the BPF program's .bss, read through the skeleton.
 * dropped_waiters: waits lost because per-thread state could not be stored.
 * dropped_hists: waits lost because the histogram map was full.
 * unknown_reason: fentry method: the last @reason that matched no known kind.
 * stack_scans, stack_scan_hits: sched method: kernel-stack scans for a
 *	queued uffd wait, and how many found one.
 * ends_from_wakeup: sched method: waits whose end was taken from their
 *	wake-up because their switch-in was invisible.
 */

#endif /* UPAGER_TRACE_H */
