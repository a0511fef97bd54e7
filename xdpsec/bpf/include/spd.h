/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The SPD in XDP (RFC 4301 4.4.1), with the semantics of xdpsec/spd.py: policies sit in priority order in
 * one bank of xs_policies and the first one whose selectors all match decides.
 *
 * For a cleartext packet the OUT policies are consulted first: PROTECT sends it to a worker with the child's
 * current SA, DISCARD drops it. Otherwise (an OUT BYPASS, or no OUT match) the IN policies are consulted, so
 * that cleartext which should have arrived through an SA is dropped (RFC 4301 5.2): IN PROTECT drops it as
 * POLICY_CLEARTEXT, IN DISCARD drops it, IN BYPASS passes it. An OUT BYPASS with no IN match passes; no
 * match at all takes the configured default action. One pass over the bank finds both first matches.
 *
 * The pass is walked in chunks of SPD_CHUNK policies, one chunk per run of the SPD program, which tail-calls
 * itself for the next chunk (the walk's position and matches so far wait in the per-CPU xs_spd_walk). The
 * verifier explores a bounded loop iteration by iteration, about 820 instructions each: a chunk of 256 costs
 * 235k of its 1M budget, one loop over 4,096 policies would need 3.3M. (bpf_loop() would verify its body once,
 * but bcc 0.26 does not relocate the callback's address: "R2 type=scalar expected=func".)
 * The bank and its count are read once, when the walk starts, so a bank flip between two chunks is not seen:
 * a packet still meets the whole old SPD or the whole new one.
 *
 * A walk costs up to SPD_CHUNK policies per run (measured: 3 us at 256, 23 us at 2,048 with no match), paid
 * by every packet of a flow. The flow cache xs_spd_cache remembers a walk's result, both first matches (struct
 * xs_spd_match), by everything that result depends on: family, addresses, protocol and ports (struct
 * xs_flow_key: what policy_mismatch reads, and nothing else; the ingress interface and queue only matter to
 * steering, which runs afterwards). The parser looks the flow up where the walk starts (spd_walk_start); a hit
 * starts a walk that is already over, so the SPD program's first run meets exactly the code that follows a
 * finished walk, with the same matches, and its verdict is the walk's. A finished walk files its matches.
 * - Only the matches are cached, never what follows from them: the child's SA (a rekey swaps one entry of
 *   xs_child_out), the default action and the acquire are read afresh for every packet, as after a walk.
 * - An LRU hash, because flows come and go and nothing tells the classifier a flow ended: a bounded map that
 *   evicts the least recently used flow needs no expiry and no cleaner, and a flood of new flows can only
 *   push out other flows (which then walk again), never grow the map or change a verdict.
 * - A generation instead of flushing: spd_generation in xs_config changes after every bank flip, and an entry
 *   counts only under the generation it was computed under; everything else is a miss. Emptying 65,536
 *   entries from user space would take a while during which old results would still be served; one counter
 *   invalidates them all at once. The walk reads the generation once, before the bank, and stores its
 *   result under that generation: the writer bumps it only after the flip, so a generation read never names
 *   an older bank than the one walked, and a result of the old bank can only be filed under an old generation.
 *   (Two volatile loads keep that order in the program; x86 does not reorder loads with loads.)
 * - A preallocated LRU element may be recycled for another flow while a program holds a pointer to it
 *   (kernel commit 275c30bcee66, "bpf: Don't reinit map value in prealloc_lru_pop"), so an entry repeats its
 *   key; the entry is copied to the stack first and used only if key and generation agree. (Only a recycle
 *   during the copy itself, a few instructions, could still mix two entries; closing that would need a lock.)
 * - Costs (`scripts/scale.py --spd-cost`, BPF_PROG_TEST_RUN, a packet no policy matches): a hit costs about
 *   320 ns whatever the SPD's size (the walk of an empty SPD cost 277 ns before the cache); a miss costs the
 *   lookup before the walk and an LRU update after it (bpf_map_update_elem, which may evict), about 0.45 us on
 *   top of the walk. So a flood of new flows pays slightly more per packet than without the cache (most, in
 *   proportion, with a small SPD), and every packet of a known flow pays the same small amount.
 */
#ifndef XDPSEC_SPD_H
#define XDPSEC_SPD_H

#define SPD_CHUNK 256                   /* policies per run of the SPD program */
#define SPD_MAX_RUNS 33                 /* MAX_TAIL_CALL_CNT (include/linux/bpf.h): the parser's call is one */
_Static_assert(XS_MAX_POLICIES % SPD_CHUNK == 0, "a bank is a whole number of chunks");
_Static_assert(XS_MAX_POLICIES / SPD_CHUNK + 1 <= SPD_MAX_RUNS, "the walk must fit the tail call limit");

BPF_ARRAY(xs_policies, struct xs_policy, 2 * XS_MAX_POLICIES);
BPF_ARRAY(xs_child_out, struct xs_child, XS_MAX_CHILDREN);
BPF_RINGBUF_OUTPUT(xs_acquire, 1);                       /* one page: events are rare and rate-limited */
BPF_ARRAY(xs_acquire_last, __u64, XS_MAX_CHILDREN);       /* ktime of each child's last acquire */

/* Ask the coordinator for a child's SA, at most once per XS_ACQUIRE_INTERVAL_NS per child. */
static __always_inline void raise_acquire(__u32 child_id, __u32 policy_id, const struct xs_pkt *pkt)
{
	__u64 now = bpf_ktime_get_ns(), *last = xs_acquire_last.lookup(&child_id);
	struct xs_acquire ev = {};

	if (!last || now - *last < XS_ACQUIRE_INTERVAL_NS)
		return;
	*last = now;
	__builtin_memcpy(ev.src, pkt->src, sizeof(ev.src));
	__builtin_memcpy(ev.dst, pkt->dst, sizeof(ev.dst));
	ev.child_id = child_id;
	ev.policy_id = policy_id;
	ev.sport = pkt->sport;
	ev.dport = pkt->dport;
	ev.family = pkt->family;
	ev.proto = pkt->proto;
	xs_acquire.ringbuf_output(&ev, sizeof(ev), 0);
}

/*
 * Non-zero when the packet falls outside the policy's selectors. Written without branches (BPF has no
 * set-on-condition, so every `==` would be a branch and every branch a verifier state, 256 times over).
 */
static __always_inline __u64 net_mismatch(const __be32 *addr, const __be32 *net, const __be32 *mask)
{
	return ((addr[0] & mask[0]) ^ net[0]) | ((addr[1] & mask[1]) ^ net[1]) |
	       ((addr[2] & mask[2]) ^ net[2]) | ((addr[3] & mask[3]) ^ net[3]);
}

static __always_inline __u64 policy_mismatch(const struct xs_policy *p, const struct xs_pkt *pkt)
{
	/* all ones when the policy names a protocol (1..255), zero for "any" */
	__u64 proto_mask = 0 - (((__u64)p->proto + 255) >> 8);
	/* a port below lo or above hi makes one of the differences negative: bit 63 */
	__s64 below_above = ((__s64)pkt->sport - p->sport_lo) | ((__s64)p->sport_hi - pkt->sport) |
			    ((__s64)pkt->dport - p->dport_lo) | ((__s64)p->dport_hi - pkt->dport);

	/* a packet without ports (non-first fragment, ESP, ...) carries 0: only ranges holding 0 match it */
	return (__u64)(p->family ^ pkt->family) | (((__u64)p->proto ^ pkt->proto) & proto_mask) |
	       ((__u64)below_above >> 63) | net_mismatch(pkt->src, p->src, p->src_mask) |
	       net_mismatch(pkt->dst, p->dst, p->dst_mask);
}

/*
 * The first OUT and the first IN match of the active bank (struct xs_spd_match, xdpsec_abi.h). Only values read
 * from the policy rows are kept, never the slot: the verifier then sees the same state after the loop whichever
 * iteration matched, instead of one state per slot (which exhausts its budget long before 256 policies).
 */
static __always_inline void spd_take(struct xs_spd_hit *hit, const struct xs_policy *p)
{
	hit->policy_id = p->policy_id;
	hit->child_id = p->child_id;
	hit->action = p->action;
	hit->found = 1;
}

/* Where a packet's walk stands between two runs of the SPD program. Per CPU, like xs_scratch: the runs of
 * one packet follow each other on one CPU with no other frame in between. */
struct spd_walk {
	struct xs_spd_match m;
	__u32 next;                     /* slot of the next policy to look at */
	__u32 end;                      /* one past the last slot of the bank the walk started on */
	__u32 generation;               /* spd_generation read when the walk started: the cache entry's */
	__u32 cached;                   /* 1: m came from the cache, there is nothing to walk or store */
};

BPF_PERCPU_ARRAY(xs_spd_walk, struct spd_walk, 1);
BPF_TABLE("lru_hash", struct xs_flow_key, struct xs_spd_cache_val, xs_spd_cache, XS_SPD_CACHE_SIZE);

static __always_inline void spd_flow_key(const struct xs_pkt *pkt, struct xs_flow_key *key)
{
	__builtin_memcpy(key->src, pkt->src, sizeof(key->src));
	__builtin_memcpy(key->dst, pkt->dst, sizeof(key->dst));
	key->sport = pkt->sport;
	key->dport = pkt->dport;
	key->family = pkt->family;
	key->proto = pkt->proto;
	key->pad[0] = 0;
	key->pad[1] = 0;
}

/* Equal keys, compared as words (without branches, as in policy_mismatch). */
static __always_inline int spd_same_flow(const struct xs_flow_key *a, const struct xs_flow_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	_Static_assert(sizeof(*a) == 10 * sizeof(__u32), "the flow key compares as ten words");
	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]) |
		 (x[5] ^ y[5]) | (x[6] ^ y[6]) | (x[7] ^ y[7]) | (x[8] ^ y[8]) | (x[9] ^ y[9]));
}

/*
 * Fill w->m from the cache if the flow's entry is of this generation. The entry is copied before it is
 * checked, so that what is checked is what is used (see the top of this file on recycled LRU elements).
 */
static __always_inline int spd_cache_get(struct xs_flow_key *key, struct spd_walk *w)
{
	struct xs_spd_cache_val *entry = xs_spd_cache.lookup(key), copy;

	if (!entry)
		return 0;
	__builtin_memcpy(&copy, entry, sizeof(copy));
	if (copy.generation != w->generation || !spd_same_flow(&copy.key, key))
		return 0;
	w->m = copy.m;
	return 1;
}

/*
 * Start a packet's walk on the bank active now. Called once per packet, before the first run. A flow cached
 * under the current generation starts a walk that is already over, with the cached matches.
 */
static __always_inline int spd_walk_start(const struct xs_config_val *cfg, const struct xs_pkt *pkt)
{
	__u32 zero = 0, bank, count;
	struct xs_flow_key key;
	struct spd_walk w = {};

	/* the generation before the bank: the loader bumps it after the flip (struct xs_config_val) */
	w.generation = *(volatile const __u32 *)&cfg->spd_generation;
	bank = *(volatile const __u32 *)&cfg->active_bank & 1;
	count = cfg->count[bank];
	if (count > XS_MAX_POLICIES)
		count = XS_MAX_POLICIES;
	w.next = bank * XS_MAX_POLICIES;
	w.end = w.next + count;
	spd_flow_key(pkt, &key);
	if (spd_cache_get(&key, &w)) {
		w.next = w.end;
		w.cached = 1;
		count_stat(XS_STAT_SPD_CACHE_HIT);
	} else {
		count_stat(XS_STAT_SPD_CACHE_MISS);
	}
	return xs_spd_walk.update(&zero, &w);
}

/* File a finished walk's matches under the generation it started with (never a newer one). */
static __always_inline void spd_cache_put(const struct xs_pkt *pkt, const struct spd_walk *w,
					  const struct xs_spd_match *m)
{
	struct xs_spd_cache_val entry = { .m = *m, .generation = w->generation };
	struct xs_flow_key key;

	spd_flow_key(pkt, &key);
	entry.key = key;
	xs_spd_cache.update(&key, &entry);  /* a failure only costs the next packet a walk */
}

/*
 * Look at the next chunk of the walk; m gets the matches so far. Returns 0 when they are final (the walk
 * is over: both matches found, an OUT match that decides, or the bank exhausted), 1 when the next run of
 * the SPD program must continue.
 */
static __always_inline int spd_walk_chunk(struct spd_walk *w, const struct xs_pkt *pkt, struct xs_spd_match *m)
{
	__u32 next = w->next, end = w->end;

	*m = w->m;
	/* a real loop: unrolled copies would each be verified on their own */
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SPD_CHUNK; i++) {
		__u32 slot = next + i;
		struct xs_policy *p;

		if (slot >= end)
			return 0;
		p = xs_policies.lookup(&slot);
		if (!p)
			return 0;
		if (p->direction == XS_DIR_OUT) {
			if (m->out.found || policy_mismatch(p, pkt))
				continue;
			spd_take(&m->out, p);
			/* an OUT PROTECT or DISCARD decides without looking at IN policies */
			if (p->action != XS_ACT_BYPASS)
				return 0;
		} else {
			if (m->in.found || policy_mismatch(p, pkt))
				continue;
			spd_take(&m->in, p);
		}
		if (m->out.found && m->in.found)
			return 0;
	}
	if (next + SPD_CHUNK >= end)
		return 0;
	w->next = next + SPD_CHUNK;
	w->m = *m;
	return 1;
}

/*
 * One run of the walk: 0 when m holds the final matches (a finished walk, filed in the cache, or a cached
 * one), 1 when the next run of the SPD program must continue, -1 when the walk state is missing.
 */
static __always_inline int spd_lookup(const struct xs_pkt *pkt, struct xs_spd_match *m)
{
	__u32 zero = 0;
	struct spd_walk *w = xs_spd_walk.lookup(&zero);

	if (!w)
		return -1;
	if (spd_walk_chunk(w, pkt, m))
		return 1;
	if (!w->cached)
		spd_cache_put(pkt, w, m);
	return 0;
}

#endif /* XDPSEC_SPD_H */
