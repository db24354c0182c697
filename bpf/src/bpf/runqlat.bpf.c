/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * STEPPPS TIME: run-queue latency per cgroup.
 *
 * A task is stamped when it becomes runnable (woken, newly created, or
 * preempted while still runnable) and the wait is measured when it is
 * switched in. Stamps live in task storage (a pointer off task_struct, no
 * hashing, freed with the task); the log2 histograms live in a per-CPU hash
 * so that CPUs never share a cache line.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "intf.h"
#include "scope.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} queued_at SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	/* Resized from Rust (Options::max_cgroups). */
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct qt_hist);
} runq_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QT_STAT_NR);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void mark_queued(struct task_struct *p)
{
	__u64 *ts;

	if (!scope_cgroup_id(p))
		return;
	ts = bpf_task_storage_get(&queued_at, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ts)
		*ts = bpf_ktime_get_ns();
}

/* floor(log2(v)) for v >= 1, without loops (the verifier and the hot path both prefer none). */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r, shift;

	r = (v > 0xFFFFFFFFULL) << 5;
	v >>= r;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline void record(__u64 cgid, __u64 wait_ns)
{
	__u64 us = wait_ns / 1000;
	__u32 slot = us ? log2_u64(us) + 1 : 0;
	struct qt_hist *h;

	if (slot >= QT_HIST_SLOTS)
		slot = QT_HIST_SLOTS - 1;

	h = bpf_map_lookup_elem(&runq_hist, &cgid);
	if (!h) {
		struct qt_hist zero = {};

		/* BPF_NOEXIST: another CPU may have created it meanwhile; both then use that one. */
		bpf_map_update_elem(&runq_hist, &cgid, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&runq_hist, &cgid);
		if (!h) {
			__u32 key = QT_STAT_SAMPLES_LOST;
			__u64 *lost = bpf_map_lookup_elem(&stats, &key);

			if (lost)
				(*lost)++;
			return;
		}
	}
	/* Per-CPU value and tracepoints run with preemption off: no atomics needed. */
	/*
	 * The mask is a no-op after the clamp, but it is what convinces the
	 * verifier; the barrier keeps clang from dropping it as redundant.
	 */
	barrier_var(slot);
	h->slots[slot & (QT_HIST_SLOTS - 1)]++;
	h->sum_ns += wait_ns;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(qt_sched_wakeup, struct task_struct *p)
{
	mark_queued(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(qt_sched_wakeup_new, struct task_struct *p)
{
	mark_queued(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(qt_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	__u64 cgid, *ts, now;

	/*
	 * A task switched out while still runnable goes straight back on the
	 * run queue and waits there like a woken one; CPU-bound cells would
	 * otherwise never show their waits. The idle task (pid 0) is never
	 * queued.
	 */
	if ((preempt || prev_state == 0) && prev->pid)
		mark_queued(prev);

	cgid = scope_cgroup_id(next);
	if (!cgid)
		return 0;
	ts = bpf_task_storage_get(&queued_at, next, 0, 0);
	if (!ts || !*ts)
		return 0;
	now = bpf_ktime_get_ns();
	record(cgid, now - *ts);
	*ts = 0;
	return 0;
}
