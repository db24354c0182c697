/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * The contract between the BPF programs and quantum-bpf's Rust side.
 *
 * Every struct here reaches Rust through the skeleton's generated `types`
 * module (each is referenced by a map or a global, so it is in the object's
 * BTF), so the layouts cannot drift apart: change a field here and the Rust
 * decoding stops compiling.
 */
#ifndef QT_INTF_H
#define QT_INTF_H

/*
 * Run-queue latency histogram: slot 0 holds waits under 1 us, slot i >= 1
 * holds waits in [2^(i-1), 2^i) us; the last slot also holds everything
 * longer (2^30 us is about 18 minutes, so nothing real lands beyond it).
 */
#define QT_HIST_SLOTS 32

#define QT_COMM_LEN 16
/*
 * Room for the leaf name of the process's cgroup: a cell's unit,
 * "quantum-" + a 63-byte cell name + ".N.service" fits.
 */
#define QT_CGROUP_NAME_LEN 128

enum qt_event_kind {
	QT_EVENT_EXEC = 1,
	QT_EVENT_EXIT = 2,
	QT_EVENT_OOM_KILL = 3,
	/* A TCP connect() from the process (the socket entered SYN_SENT). */
	QT_EVENT_CONNECT = 4,
};

/* Indexes of the per-CPU `stats` array. */
enum qt_stat {
	/* An event found the ring buffer full and was thrown away. */
	QT_STAT_EVENTS_DROPPED = 0,
	/* A latency sample found the histogram map full (too many cgroups). */
	QT_STAT_SAMPLES_LOST = 1,
	QT_STAT_NR = 2,
};

/* One value of the per-CPU `runq_hist` hash, keyed by v2 cgroup id. */
struct qt_hist {
	__u64 slots[QT_HIST_SLOTS];
	/* Sum of all waits, so user space can report an exact mean. */
	__u64 sum_ns;
};

/* One ring buffer record. */
struct qt_event {
	__u64 cgroup_id;
	/* CLOCK_MONOTONIC (bpf_ktime_get_ns). */
	__u64 timestamp_ns;
	__u32 kind; /* enum qt_event_kind */
	/* The process (thread-group) id. */
	__u32 pid;
	/* QT_EVENT_EXIT: the wait(2) status, (code << 8) | signal. */
	__u32 exit_status;
	__u32 _pad;
	char comm[QT_COMM_LEN];
	/*
	 * QT_EVENT_EXEC: the leaf name of the process's cgroup (its unit), so
	 * that user space can tell whose exec it was after the cgroup is gone;
	 * empty for the other kinds.
	 */
	char cgroup[QT_CGROUP_NAME_LEN];
	/*
	 * QT_EVENT_CONNECT: the destination, as the socket has it: the
	 * address in network order (IPv4 in daddr[0]), the port in host order.
	 */
	__u32 daddr[4];
	__u16 dport;
	__u16 family; /* AF_INET or AF_INET6 */
	__u32 _pad2;
};

#endif /* QT_INTF_H */
