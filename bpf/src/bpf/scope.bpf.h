/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * Which tasks the programs look at: those whose v2 cgroup is the target
 * ancestor (quantum.slice) or below it. Everyone else must leave the hot
 * paths after a handful of loads, because every context switch on the
 * machine goes through them.
 */
#ifndef QT_SCOPE_BPF_H
#define QT_SCOPE_BPF_H

/* Set from Rust before load; frozen in .rodata, so the verifier and JIT see constants. */
const volatile __u64 target_ancestor_cgid = 1;
const volatile __u32 target_level = 0;

/*
 * Cells sit a few levels below the ancestor; a task deeper than this below it
 * is treated as out of scope rather than walked further.
 */
#define QT_MAX_DEPTH_BELOW 16

/*
 * Returns the task's v2 cgroup id when the task is in scope, 0 otherwise
 * (0 is never a cgroup id: kernfs ids start at 1).
 *
 * Only plain BTF pointer loads (tp_btf arguments are BTF pointers), no
 * helper calls and no map lookups: the cgroup's level says at once whether
 * it can be below the target at all, and then as many parent hops as levels
 * separate them reach the one ancestor to compare. (cgroup->ancestors[]
 * would be one load, but the verifier refuses loads from a flexible array
 * through a BTF pointer, and bpf_probe_read costs a helper call.)
 */
static __always_inline __u64 scope_cgroup_id(struct task_struct *p)
{
	struct cgroup *cgrp = p->cgroups->dfl_cgrp;
	struct cgroup_subsys_state *css = &cgrp->self;
	int hops = (int)cgrp->level - (int)target_level;

	if (hops < 0 || hops > QT_MAX_DEPTH_BELOW)
		return 0;
	for (int i = 0; i < QT_MAX_DEPTH_BELOW && i < hops; i++)
		css = css->parent;
	if (css->cgroup->kn->id != target_ancestor_cgid)
		return 0;
	return cgrp->kn->id;
}

#endif /* QT_SCOPE_BPF_H */
