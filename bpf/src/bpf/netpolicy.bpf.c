/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * A cell's network allow-list (`[isolation] network-allow`): a connect() or
 * an addressed sendmsg() by a task in the cgroup this is attached to goes
 * through only towards a (protocol, port range, address prefix) the cell's
 * manifest lists; anything else fails with EPERM and is counted.
 *
 * One instance per cell, its rules frozen in .rodata before load, so the
 * verifier sees a bounded loop over constants and the cell cannot change
 * them. Attached to the cell's cgroup directly (cgroup backend) or pinned
 * and named in the unit's BPFProgram= (systemd backend), so it is in place
 * before the cell's first instruction runs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define QT_NET_MAX_RULES 64
#define QT_FAMILY_ANY 0
#define QT_FAMILY_V4 4
#define QT_FAMILY_V6 6

struct qt_net_rule {
	/* Network byte order; an IPv4 address is addr[0]. */
	__u32 addr[4];
	/* Host byte order, inclusive. */
	__u16 port_lo;
	__u16 port_hi;
	/* IPPROTO_TCP (6) or IPPROTO_UDP (17). */
	__u8 protocol;
	/* QT_FAMILY_*: any host, or addr/prefix in that family. */
	__u8 family;
	__u8 prefix;
	__u8 pad;
};

const volatile __u32 rule_count = 0;
const volatile struct qt_net_rule rules[QT_NET_MAX_RULES] = {};

/* Refused calls since load; user space reads it for alerts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} denied SEC(".maps");

/* The mask of the bits of 32-bit word `word` that a prefix of `prefix` bits covers. */
static __always_inline __u32 word_mask(__u32 prefix, __u32 word)
{
	__u32 start = word * 32;

	if (prefix <= start)
		return 0;
	if (prefix >= start + 32)
		return 0xffffffff;
	return bpf_htonl(0xffffffff << (32 - (prefix - start)));
}

static __always_inline int matches(const volatile struct qt_net_rule *r, const __u32 *addr, __u32 words)
{
	for (__u32 w = 0; w < 4; w++) {
		if (w >= words)
			break;
		__u32 mask = word_mask(r->prefix, w);

		if ((addr[w] & mask) != (r->addr[w] & mask))
			return 0;
	}
	return 1;
}

static __always_inline int decide(__u32 protocol, __u16 port, __u8 family, const __u32 *addr)
{
	__u32 n = rule_count;

	for (__u32 i = 0; i < QT_NET_MAX_RULES; i++) {
		if (i >= n)
			break;
		const volatile struct qt_net_rule *r = &rules[i];

		if (r->protocol != protocol || port < r->port_lo || port > r->port_hi)
			continue;
		if (r->family == QT_FAMILY_ANY)
			return 1;
		if (r->family == family && matches(r, addr, family == QT_FAMILY_V4 ? 1 : 4))
			return 1;
	}
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&denied, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

static __always_inline int check4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = { ctx->user_ip4, 0, 0, 0 };

	return decide(ctx->protocol, bpf_ntohs((__u16)ctx->user_port), QT_FAMILY_V4, addr);
}

static __always_inline int check6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

	/* A dual-stack socket reaches an IPv4 host as ::ffff:a.b.c.d: judge it as that host. */
	if (addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff)) {
		addr[0] = addr[3];
		return decide(ctx->protocol, bpf_ntohs((__u16)ctx->user_port), QT_FAMILY_V4, addr);
	}
	return decide(ctx->protocol, bpf_ntohs((__u16)ctx->user_port), QT_FAMILY_V6, addr);
}

SEC("cgroup/connect4")
int qt_connect4(struct bpf_sock_addr *ctx)
{
	return check4(ctx);
}

SEC("cgroup/connect6")
int qt_connect6(struct bpf_sock_addr *ctx)
{
	return check6(ctx);
}

SEC("cgroup/sendmsg4")
int qt_sendmsg4(struct bpf_sock_addr *ctx)
{
	return check4(ctx);
}

SEC("cgroup/sendmsg6")
int qt_sendmsg6(struct bpf_sock_addr *ctx)
{
	return check6(ctx);
}
