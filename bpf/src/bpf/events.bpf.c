/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * STEPPPS EVENT: exec, exit, OOM kill and TCP connect of processes in
 * scope, one ring buffer record each; an exec or a connect also names the
 * process's cgroup (its unit), for security-ai's baselines. A full ring buffer costs the event, never the kernel:
 * the loss is counted in a per-CPU array that user space sums.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "intf.h"
#include "scope.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Resized from Rust (Options::ringbuf_bytes). */
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QT_STAT_NR);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Never written: it only puts struct qt_event into the object's BTF so that
 * the skeleton generates its Rust twin.
 */
struct qt_event qt_event_layout = {};

static __always_inline void emit(struct task_struct *p, __u64 cgid, __u32 kind, __u32 exit_status)
{
	struct qt_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__u32 key = QT_STAT_EVENTS_DROPPED;
		__u64 *dropped = bpf_map_lookup_elem(&stats, &key);

		if (dropped)
			(*dropped)++;
		return;
	}
	e->cgroup_id = cgid;
	e->timestamp_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->pid = p->tgid;
	e->exit_status = exit_status;
	e->_pad = 0;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
	e->cgroup[0] = 0;
	if (kind == QT_EVENT_EXEC)
		bpf_probe_read_kernel_str(e->cgroup, sizeof(e->cgroup), p->cgroups->dfl_cgrp->kn->name);
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	e->dport = 0;
	e->family = 0;
	e->_pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}

#define QT_AF_INET 2
#define QT_AF_INET6 10
#define QT_IPPROTO_TCP 6

/*
 * A TCP socket entering SYN_SENT: connect() runs this in the connecting
 * task, so the current task's cgroup is the connecting cell's. (UDP has
 * no such moment; a cell's UDP destinations are not seen here.)
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(qt_tcp_connect, const struct sock *sk, const int oldstate, const int newstate)
{
	struct task_struct *p;
	struct qt_event *e;
	__u16 family;
	__u64 cgid;

	if (newstate != TCP_SYN_SENT || sk->sk_protocol != QT_IPPROTO_TCP)
		return 0;
	p = bpf_get_current_task_btf();
	cgid = scope_cgroup_id(p);
	if (!cgid)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != QT_AF_INET && family != QT_AF_INET6)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 key = QT_STAT_EVENTS_DROPPED;
		__u64 *dropped = bpf_map_lookup_elem(&stats, &key);

		if (dropped)
			(*dropped)++;
		return 0;
	}
	e->cgroup_id = cgid;
	e->timestamp_ns = bpf_ktime_get_ns();
	e->kind = QT_EVENT_CONNECT;
	e->pid = p->tgid;
	e->exit_status = 0;
	e->_pad = 0;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
	bpf_probe_read_kernel_str(e->cgroup, sizeof(e->cgroup), p->cgroups->dfl_cgrp->kn->name);
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == QT_AF_INET) {
		e->daddr[0] = sk->__sk_common.skc_daddr;
	} else {
		e->daddr[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
		e->daddr[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
		e->daddr[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
		e->daddr[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	}
	e->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	e->family = family;
	e->_pad2 = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(qt_process_exec, struct task_struct *p)
{
	__u64 cgid = scope_cgroup_id(p);

	if (cgid)
		emit(p, cgid, QT_EVENT_EXEC, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(qt_process_exit, struct task_struct *p)
{
	__u64 cgid;

	/*
	 * One event per process, when its last thread exits: signal->live
	 * has already been decremented here. (Newer kernels pass this as a
	 * `group_dead` argument; reading it keeps older ones working.)
	 */
	if (p->signal->live.counter != 0)
		return 0;
	cgid = scope_cgroup_id(p);
	if (cgid)
		emit(p, cgid, QT_EVENT_EXIT, p->exit_code);
	return 0;
}

/* The OOM killer chose `p`; runs in the allocating task, which need not be `p`. */
SEC("tp_btf/mark_victim")
int BPF_PROG(qt_oom_mark_victim, struct task_struct *p)
{
	__u64 cgid = scope_cgroup_id(p);

	if (cgid)
		emit(p, cgid, QT_EVENT_OOM_KILL, 0);
	return 0;
}
