/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Per-CPU counters: events (enum xs_stat), drops by reason (enum xs_drop) and hits per SPD slot. Per-CPU
 * arrays need no atomics; the loader sums the CPUs. Every drop goes through drop() so that no frame is
 * dropped without a named reason.
 */
#ifndef XDPSEC_STATS_H
#define XDPSEC_STATS_H

BPF_PERCPU_ARRAY(xs_stats, __u64, XS_STAT__MAX);
BPF_PERCPU_ARRAY(xs_drops, __u64, XS_DROP__MAX);
/* by policy id, so that counts survive SPD rewrites; the loader creates an entry for each id it installs */
BPF_PERCPU_HASH(xs_policy_hits, __u32, __u64, 2 * XS_MAX_POLICIES);

static __always_inline void count_stat(__u32 stat)
{
	__u64 *v = xs_stats.lookup(&stat);

	if (v)
		*v += 1;
}

static __always_inline void count_policy_hit(__u32 policy_id)
{
	__u64 *v = xs_policy_hits.lookup(&policy_id);

	if (v)
		*v += 1;
}

static __always_inline int drop(__u32 reason)
{
	__u64 *v = xs_drops.lookup(&reason);

	if (v)
		*v += 1;
	count_stat(XS_STAT_DROP);
	return XDP_DROP;
}

static __always_inline int pass(void)
{
	count_stat(XS_STAT_PASS);
	return XDP_PASS;
}

#endif /* XDPSEC_STATS_H */
