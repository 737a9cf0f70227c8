// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * upager-trace: how long threads wait in userfaultfd faults, seen from the
 * kernel.
 *
 * Every userfaultfd fault goes through handle_userfault(vmf, reason): it
 * queues the fault on the uffd, wakes the reader and puts the faulting thread
 * to sleep until the handler resolves the range (UFFDIO_COPY, _CONTINUE,
 * _WRITEPROTECT, _WAKE, ...). Two ways to time that wait live here; the loader
 * loads one set of programs, never both.
 *
 * fentry (preferred): fentry/fexit on handle_userfault(). Entry to return is
 * the whole wait of the faulting thread: both hand-offs, the handler's work,
 * any queueing behind other faults. fexit sees the arguments again, so only
 * the entry time is carried across. @reason is exactly one of
 * VM_UFFD_MISSING, VM_UFFD_WP or VM_UFFD_MINOR; those are vm_flags bits,
 * declared as macros (since 6.18 from an anonymous enum of bit numbers that
 * no type uses) and so absent from BTF: CO-RE cannot relocate them and they
 * are fixed here. From include/linux/mm.h of v6.18:
 *
 *	DECLARE_VMA_BIT(UFFD_MISSING, 9)	VM_UFFD_MISSING = 0x200
 *	DECLARE_VMA_BIT(UFFD_WP, 12)		VM_UFFD_WP      = 0x1000
 *	DECLARE_VMA_BIT(UFFD_MINOR, 41)		VM_UFFD_MINOR   = 1UL << 41
 *
 * MISSING and WP have not moved since they appeared (4.3, 5.7). MINOR has:
 * bit 37 when added (5.13), 38 from 6.6 (VM_SHADOW_STACK took 37), 41 since
 * "mm: fix VM_UFFD_MINOR == VM_SHADOW_STACK on USERFAULTFD=y && ARM64_GCS=y"
 * (May 2025, also sent to stable, so on older stable kernels too). Checked
 * on the project's 6.18 kernel: a BPF task_vma iterator read vm_flags of
 * uffd-workload's registered range in each mode, and exactly bit 9 (missing),
 * 12 (wp) or 41 (minor) was the one added by registration. A reason that
 * matches none of the three is counted as UNKNOWN and kept in unknown_reason,
 * so a kernel that moves a bit again shows up as such, not as wrong counts.
 *
 * sched (fallback): for kernels that refuse fentry programs (no trampolines,
 * or a policy: the project's VMs answer EPERM to fentry, fexit and lsm
 * programs while tracepoint and iterator programs load; kprobes are no help
 * there either, CONFIG_KPROBES is off), the same wait is rebuilt from
 * tracepoints:
 *
 *   1. exceptions:page_fault_user/_kernel: the thread enters a page fault;
 *      remember when, in task-local storage.
 *   2. sched:sched_switch, prev blocking after a fault: is it asleep in
 *      handle_userfault()? That function keeps a struct
 *      userfaultfd_wait_queue on its stack, queued on the uffd, whose
 *      wait_queue_entry has .private = the task and .func =
 *      userfaultfd_wake_function. Scan the task's kernel stack, from the top,
 *      for that pair; accept it only if the entry is still linked into a
 *      list (a stale copy left by an earlier fault was unlinked, so its
 *      next pointer is itself or poison). The kind is read from the queued
 *      message (UFFD_PAGEFAULT_FLAG_WP/_MINOR, stable uapi bits), so this
 *      method does not depend on the vm_flags bit values at all.
 *   3. sched:sched_switch, next is such a waiter: the wait is over.
 *   4. sched:sched_waking of such a waiter: remember when. Some switches
 *      are invisible to tracepoint programs (on the project's VMs, every
 *      switch away from the VM agent's threads: programs do not run in their
 *      context), so when a waiter is next seen running (a fault, a switch
 *      out) without its switch-in having been seen, its wait ends at the
 *      wake-up, short of the scheduling delay; ends_from_wakeup counts those.
 *   5. sched:sched_waking of a thread that faulted and has not slept since:
 *      the handler resolved its fault while it was on its way to schedule();
 *      the same scan tells (the waker unlinks the entry only after the
 *      wake-up), and the wait is over at once.
 *
 * So a wait runs from the fault's entry to the thread running again: a
 * little more than fentry's (the fault's own work before handle_userfault)
 * and a little less (the tail of handle_userfault after schedule()), both
 * well under a microsecond. Not seen: waits entered through get_user_pages()
 * rather than a CPU fault (no fault tracepoint: process_vm_readv, O_DIRECT
 * into uffd memory, ...); a second wait in the same fault after a spurious
 * wake-up; and a fault the handler resolved before the faulting thread even
 * decided to sleep (it then neither sleeps nor is woken; it waited about a
 * microsecond). The last needs a handler already busy with other faults:
 * 0.1-0.5% of faults with 4 faulting threads on 2 vCPUs here, none seen with
 * one. The scan costs a few hundred bytes of stack reads per fault that
 * blocks; a fault that does not block costs one task-storage write, and
 * every context switch and wake-up of a traced task a task-storage lookup.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "upager-trace.h"

#define VM_UFFD_MISSING (1UL << 9)
#define VM_UFFD_WP (1UL << 12)
#define VM_UFFD_MINOR (1UL << 41)

/* include/uapi/linux/userfaultfd.h: ABI, will not move. */
#define UFFD_PAGEFAULT_FLAG_WP (1ULL << 1)
#define UFFD_PAGEFAULT_FLAG_MINOR (1ULL << 2)

#define TASK_RUNNING 0

#define cmpxchg(p, old, new) __sync_val_compare_and_swap(p, old, new)

/* The stack scan reads this much at a time, top down... */
#define SCAN_CHUNK 512
#define SCAN_WORDS (SCAN_CHUNK / 8)
/* ...at most this many times: 32 KiB, THREAD_SIZE on x86-64 with KASAN. */
#define SCAN_MAX_CHUNKS 64

/* Set by the loader before load: 0 traces every process. */
const volatile __u32 targ_tgid = 0;

__u64 dropped_waiters = 0;
__u64 dropped_hists = 0;
__u64 unknown_reason = 0;
/* sched method: stack scans made and how many found a uffd wait. */
__u64 stack_scans = 0;
__u64 stack_scan_hits = 0;
/* sched method: waits whose end was taken from the wake-up (wait_settle()). */
__u64 ends_from_wakeup = 0;

/* fentry: entry time of each thread now inside handle_userfault(). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPAGER_TRACE_MAX_WAITERS);
	__type(key, __u32);
	__type(value, __u64);
} waiters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UPAGER_TRACE_MAX_ENTRIES);
	__type(key, struct upager_trace_key);
	__type(value, struct upager_trace_hist);
} hists SEC(".maps");

/* sched: per-thread state, freed with the thread. */
struct task_wait {
	__u64 fault_ts; /* entry of the fault in progress, or 0 */
	__u64 wait_ts;	/* start of the uffd wait in progress, or 0 */
	__u64 woken_ts; /* when that wait's thread was woken, or 0 */
	__u32 kind;	/* of that wait */
	__u32 tries;	/* sleeps left to look for a uffd wait in this fault */
};

/*
 * A fault may sleep on something else (a lock, I/O) before it reaches
 * handle_userfault(), so one fruitless scan must not end the search; but a
 * fault that did not block at all leaves fault_ts behind, and every later
 * sleep of the thread would pay for a scan. Two tries bound both.
 */
#define SCAN_TRIES 2

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_wait);
} task_waits SEC(".maps");

struct scan_buf {
	__u64 w[SCAN_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_buf);
} scan_bufs SEC(".maps");

/* Weak: its absence must not fail the fentry method's load. */
extern const void userfaultfd_wake_function __ksym __weak;

/* Too big for the 512-byte BPF stack: the initial value lives in .bss. */
static struct upager_trace_hist zero_hist;

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	/* Branchy binary search: bounded, and the verifier likes it. */
	if (v >> 32) {
		v >>= 32;
		r += 32;
	}
	if (v >> 16) {
		v >>= 16;
		r += 16;
	}
	if (v >> 8) {
		v >>= 8;
		r += 8;
	}
	if (v >> 4) {
		v >>= 4;
		r += 4;
	}
	if (v >> 2) {
		v >>= 2;
		r += 2;
	}
	if (v >> 1)
		r += 1;
	return r;
}

static __always_inline bool traced(struct task_struct *task)
{
	return !targ_tgid || task->tgid == targ_tgid;
}

/* Add one wait of @task's process to its histogram of @kind. */
static __always_inline void account(struct task_struct *task, __u32 kind,
				    __u64 delta)
{
	struct upager_trace_key key = { .tgid = task->tgid, .kind = kind };
	struct upager_trace_hist *h;
	__u32 slot;

	h = bpf_map_lookup_elem(&hists, &key);
	if (!h) {
		/* NOEXIST: a racing CPU may have created it first; fine. */
		bpf_map_update_elem(&hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &key);
		if (!h) {
			__sync_fetch_and_add(&dropped_hists, 1);
			return;
		}
		/* Name the process after its leader, not the faulting one. */
		BPF_CORE_READ_STR_INTO(&h->comm, task, group_leader, comm);
	}

	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->sum_ns, delta);
	slot = log2_u64(delta) & (UPAGER_TRACE_SLOTS - 1);
	__sync_fetch_and_add(&h->slots[slot], 1);
	if (delta > h->max_ns)
		h->max_ns = delta;
}

/* ---- fentry method ---- */

static __always_inline __u32 reason_kind(unsigned long reason)
{
	switch (reason) {
	case VM_UFFD_MISSING:
		return UPAGER_TRACE_MISSING;
	case VM_UFFD_WP:
		return UPAGER_TRACE_WP;
	case VM_UFFD_MINOR:
		return UPAGER_TRACE_MINOR;
	default:
		unknown_reason = reason;
		return UPAGER_TRACE_UNKNOWN;
	}
}

SEC("fentry/handle_userfault")
int BPF_PROG(uffd_enter, struct vm_fault *vmf, unsigned long reason)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	__u64 ts;

	if (targ_tgid && tgid != targ_tgid)
		return 0;
	ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&waiters, &tid, &ts, BPF_ANY))
		__sync_fetch_and_add(&dropped_waiters, 1);
	return 0;
}

SEC("fexit/handle_userfault")
int BPF_PROG(uffd_exit, struct vm_fault *vmf, unsigned long reason,
	     vm_fault_t ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *tsp, delta;

	/* No entry: filtered out, or the wait began before we attached. */
	tsp = bpf_map_lookup_elem(&waiters, &tid);
	if (!tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	bpf_map_delete_elem(&waiters, &tid);
	account(bpf_get_current_task_btf(), reason_kind(reason), delta);
	return 0;
}

/* ---- sched method ---- */

/* End @task's uffd wait, if one is in progress, at @end. */
static __always_inline void wait_end(struct task_struct *task,
				     struct task_wait *tw, __u64 end)
{
	__u64 start = tw->wait_ts;

	/* cmpxchg: exactly one of the paths that may end a wait does. */
	if (!start || cmpxchg(&tw->wait_ts, start, 0) != start)
		return;
	tw->woken_ts = 0;
	account(task, tw->kind, end - start);
}

/*
 * @task is seen running, so any wait it was in is over, and we missed its
 * switch-in: some switches are invisible to tracepoint programs (on the
 * project's VMs, those away from the VM agent's threads). The end we saw
 * last is the wake-up; the switch-in follows it by a scheduling delay.
 */
static __always_inline void wait_settle(struct task_struct *task,
					struct task_wait *tw)
{
	__u64 woken = tw->woken_ts;

	if (!tw->wait_ts)
		return;
	__sync_fetch_and_add(&ends_from_wakeup, 1);
	wait_end(task, tw, woken ? woken : bpf_ktime_get_ns());
}

static __always_inline int fault_entry(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_wait *tw;

	if (!traced(task))
		return 0;
	tw = bpf_task_storage_get(&task_waits, task, NULL,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (tw) {
		wait_settle(task, tw);
		tw->fault_ts = bpf_ktime_get_ns();
		tw->tries = SCAN_TRIES;
	} else
		__sync_fetch_and_add(&dropped_waiters, 1);
	return 0;
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(fault_user, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	return fault_entry();
}

SEC("tp_btf/page_fault_kernel")
int BPF_PROG(fault_kernel, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	return fault_entry();
}

/*
 * @wq points at a wait_queue_entry whose .private and .func say "a uffd fault
 * waiter": if it is still queued, return the kind of its fault, else -1.
 */
static __always_inline int uwq_kind(__u64 wq)
{
	struct userfaultfd_wait_queue *uwq;
	struct list_head *entry, *next;
	__u64 flags;

	uwq = (void *)(wq - bpf_core_field_offset(struct userfaultfd_wait_queue,
						  wq));
	entry = (void *)(wq +
			 bpf_core_field_offset(struct wait_queue_entry, entry));
	next = BPF_CORE_READ(uwq, wq.entry.next);
	/*
	 * Queued: linked both ways. Woken entries are list_del_init()ed
	 * (next == self), the others list_del()ed (next is poison).
	 */
	if (!next || next == entry || BPF_CORE_READ(next, prev) != entry)
		return -1;
	flags = BPF_CORE_READ(uwq, msg.arg.pagefault.flags);
	if (flags & UFFD_PAGEFAULT_FLAG_WP)
		return UPAGER_TRACE_WP;
	if (flags & UFFD_PAGEFAULT_FLAG_MINOR)
		return UPAGER_TRACE_MINOR;
	return UPAGER_TRACE_MISSING;
}

struct scan_ctx {
	__u64 task;  /* the .private we look for */
	__u64 func;  /* the .func we look for */
	__u64 top;   /* lowest address scanned so far */
	__u64 base;  /* bottom of the stack */
	__u64 above; /* the word just above top: pairs across chunks */
	int kind;    /* result, -1 until found */
};

static long scan_chunk(__u32 i, void *data)
{
	struct scan_ctx *c = data;
	struct scan_buf *b;
	__u32 zero = 0;
	__u64 addr, next;
	int j, kind;

	/* .func must follow .private: true of every wait_queue_entry so far. */
	if (bpf_core_field_offset(struct wait_queue_entry, func) !=
	    bpf_core_field_offset(struct wait_queue_entry, private) + 8)
		return 1;
	b = bpf_map_lookup_elem(&scan_bufs, &zero);
	if (!b)
		return 1;
	addr = c->top - SCAN_CHUNK;
	if (addr < c->base ||
	    bpf_probe_read_kernel(b->w, SCAN_CHUNK, (void *)addr))
		return 1;
	for (j = SCAN_WORDS - 1; j >= 0; j--) {
		next = j == SCAN_WORDS - 1 ? c->above :
					     b->w[(j + 1) & (SCAN_WORDS - 1)];
		if (b->w[j] != c->task || next != c->func)
			continue;
		kind = uwq_kind(addr + j * 8 -
				bpf_core_field_offset(struct wait_queue_entry,
						      private));
		if (kind >= 0) {
			c->kind = kind;
			return 1;
		}
	}
	c->above = b->w[0];
	c->top = addr;
	return 0;
}

/* The kind of the uffd fault @task waits in, or -1 if none. */
static __always_inline int find_uffd_wait(struct task_struct *task)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	struct scan_ctx c = {
		.func = (__u64)&userfaultfd_wake_function,
		.kind = -1,
	};
	__u64 chunks;

	if (!c.func)
		return -1;
	/*
	 * The scan needs addresses as plain numbers: the verifier forbids
	 * arithmetic on typed pointers, and copying one through memory is
	 * how to drop its type. pt_regs sit at the very top of the stack.
	 */
	if (bpf_probe_read_kernel(&c.task, sizeof(c.task), &task) ||
	    bpf_probe_read_kernel(&c.top, sizeof(c.top), &regs))
		return -1;
	c.base = (__u64)BPF_CORE_READ(task, stack);
	if (!c.base || c.top <= c.base)
		return -1;
	chunks = (c.top - c.base) / SCAN_CHUNK;
	if (chunks > SCAN_MAX_CHUNKS)
		chunks = SCAN_MAX_CHUNKS;
	__sync_fetch_and_add(&stack_scans, 1);
	bpf_loop(chunks, scan_chunk, &c, 0);
	if (c.kind >= 0)
		__sync_fetch_and_add(&stack_scan_hits, 1);
	return c.kind;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct task_wait *tw;
	__u64 start;
	int kind;

	if (traced(prev)) {
		tw = bpf_task_storage_get(&task_waits, prev, NULL, 0);
		if (tw)
			wait_settle(prev, tw);
	} else {
		tw = NULL;
	}

	/* prev goes to sleep: in a uffd fault? */
	if (tw && !preempt && prev_state != TASK_RUNNING) {
		start = tw->fault_ts;
		if (start) {
			kind = find_uffd_wait(prev);
			/* The cmpxchg settles a race with sched_waking. */
			if (kind >= 0) {
				if (cmpxchg(&tw->fault_ts, start, 0) == start) {
					tw->kind = kind;
					tw->woken_ts = 0;
					tw->wait_ts = start;
				}
			} else if (!--tw->tries) {
				cmpxchg(&tw->fault_ts, start, 0);
			}
		}
	}

	/* next runs again: the end of its wait, if it was one. */
	if (traced(next)) {
		tw = bpf_task_storage_get(&task_waits, next, NULL, 0);
		if (tw)
			wait_end(next, tw, bpf_ktime_get_ns());
	}
	return 0;
}

/*
 * Two jobs. For a thread in a uffd wait: note the wake-up, the fallback end
 * of the wait should its switch-in be invisible. For a thread woken after a
 * fault but before it got to sleep: the handler resolved the fault while the
 * thread was still on its way to schedule(), so there will be no switch to
 * see. If it is in handle_userfault() its entry is still queued (the waker
 * unlinks it only after the wake-up), so the scan finds it; its wait ends
 * now.
 */
SEC("tp_btf/sched_waking")
int BPF_PROG(sched_waking, struct task_struct *p)
{
	struct task_wait *tw;
	__u64 start;
	int kind;

	if (!traced(p))
		return 0;
	tw = bpf_task_storage_get(&task_waits, p, NULL, 0);
	if (!tw)
		return 0;
	if (tw->wait_ts) {
		/* Woken before: it ran and slept again unseen. */
		if (tw->woken_ts)
			wait_settle(p, tw);
		else
			tw->woken_ts = bpf_ktime_get_ns();
		return 0;
	}
	start = tw->fault_ts;
	if (!start)
		return 0;
	kind = find_uffd_wait(p);
	/* p's own switch-out may have seen the wait first. */
	if (kind < 0 || cmpxchg(&tw->fault_ts, start, 0) != start)
		return 0;
	account(p, kind, bpf_ktime_get_ns() - start);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
