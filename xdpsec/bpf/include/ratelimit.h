/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A rate limit on IKE_SA_INIT requests, so that a flood of them is dropped in XDP instead of reaching the
 * single IKE thread in Python through a socket whose buffer it would overflow.
 *
 * IKE_SA_INIT is the one exchange a responder answers for anybody, before any authentication, and RFC 7296
 * 2.6 warns that a flood of them from spoofed addresses is the way to exhaust a responder. COOKIEs keep that
 * flood from creating state; this limit keeps it from taking the CPU and the socket: token buckets keyed by
 * the source prefix (IPv4 /24, IPv6 /64 by default: what one attacker usually controls, and what spoofing
 * within one network gives), in an LRU hash so that their number is bounded, plus one global bucket for a flood
 * spread over many prefixes. A request needs a token from its prefix's bucket, then one from the global bucket.
 *
 * Configured peers (the remote_addrs of IKE connections, written by the coordinator into xs_ike_exempt) have
 * a bucket of their own, by exact address, at the per-prefix rate, and skip the prefix and global buckets: a
 * flood spoofed from their prefix, or from everywhere, cannot lock them out. Spoofing a peer's exact address
 * locks out that peer alone (it would without the exemption too), and takes nothing from the others.
 *
 * Only requests that create an IKE SA are limited (responder SPI zero, Initiator flag, not a response):
 * every message of an established IKE SA carries its responder's SPI and is never counted here. The buckets
 * are GCRA (the "virtual scheduling" form of a token bucket, ITU-T I.371): one time per bucket, the moment
 * it will be full again, so that the program needs no division. Check and update are not atomic: CPUs racing
 * on one bucket may each take the same token, which lets at most one extra request per racing CPU through.
 */
#ifndef XDPSEC_RATELIMIT_H
#define XDPSEC_RATELIMIT_H

#define IKE_HDR_LEN 28                  /* RFC 7296 3.1 */
#define IKE_EXCHANGE_SA_INIT 34         /* RFC 7296 3.1: exchange type IKE_SA_INIT */
#define IKE_FLAG_INITIATOR 0x08         /* RFC 7296 3.1: I, set by the original initiator */
#define IKE_FLAG_RESPONSE 0x20          /* RFC 7296 3.1: R, set in responses */

/* The IKE header (RFC 7296 3.1) up to the flags: all the limit looks at. */
struct ike_hdr_ {
	__u32 spi_i[2];
	__u32 spi_r[2];
	__u8 next_payload;
	__u8 version;
	__u8 exchange;
	__u8 flags;
};

BPF_ARRAY(xs_ike_limits, struct xs_ike_limits, 1);
/* source prefix (masked, struct xs_addr_key) -> the bucket's time: when it is full again, bpf_ktime_get_ns */
BPF_TABLE("lru_hash", struct xs_addr_key, __u64, xs_ike_prefixes, XS_MAX_IKE_PREFIXES);
/* a configured peer's exact address -> its own bucket's time */
BPF_HASH(xs_ike_exempt, struct xs_addr_key, __u64, XS_MAX_IKE_EXEMPT);
BPF_ARRAY(xs_ike_global, __u64, 1);

/* A request from the original initiator that opens a new IKE SA: only IKE_SA_INIT has SPIr zero (3.1). */
static __always_inline int is_ike_sa_init_request(const struct ike_hdr_ *h)
{
	return h->exchange == IKE_EXCHANGE_SA_INIT &&
	       (h->flags & (IKE_FLAG_INITIATOR | IKE_FLAG_RESPONSE)) == IKE_FLAG_INITIATOR &&
	       (h->spi_r[0] | h->spi_r[1]) == 0;
}

/*
 * Take a token from the bucket whose time is *tat: 1 if there was one. A request moves the time by one
 * interval (1/rate); the bucket is empty when that time would lie more than `burst` (burst intervals) ahead.
 */
static __always_inline int bucket_take(__u64 *tat, __u64 now, __u64 interval, __u64 burst)
{
	__u64 next = (*tat > now ? *tat : now) + interval;

	if (next - now > burst)
		return 0;
	*tat = next;
	return 1;
}

static __always_inline void mask_prefix(struct xs_addr_key *key, const struct xs_ike_limits *lim)
{
	const __be32 *mask = key->family == 4 ? lim->mask4 : lim->mask6;

	key->addr[0] &= mask[0];
	key->addr[1] &= mask[1];
	key->addr[2] &= mask[2];
	key->addr[3] &= mask[3];
}

/* 1: let the IKE_SA_INIT request from pkt's source through; 0: it is over the limit. */
static __always_inline int ike_init_admit(const struct xs_pkt *pkt)
{
	struct xs_addr_key key = { .family = pkt->family };
	struct xs_ike_limits *lim;
	__u64 now, fresh = 0, *tat;
	__u32 zero = 0;

	lim = xs_ike_limits.lookup(&zero);
	if (!lim || !lim->interval_ns)
		return 1;               /* not configured: no limit */
	now = bpf_ktime_get_ns();
	__builtin_memcpy(key.addr, pkt->src, sizeof(key.addr));

	tat = xs_ike_exempt.lookup(&key);
	if (tat)
		return bucket_take(tat, now, lim->interval_ns, lim->burst_ns);

	mask_prefix(&key, lim);
	tat = xs_ike_prefixes.lookup(&key);
	if (!tat) {
		/* a new prefix starts full; a concurrent insert from another CPU is as good as ours */
		xs_ike_prefixes.insert(&key, &fresh);
		tat = xs_ike_prefixes.lookup(&key);
	}
	/* a prefix that could not be kept (it is evicted at once) still meets the global bucket */
	if (tat && !bucket_take(tat, now, lim->interval_ns, lim->burst_ns))
		return 0;
	tat = xs_ike_global.lookup(&zero);
	return !tat || bucket_take(tat, now, lim->global_interval_ns, lim->global_burst_ns);
}

/*
 * The limit applied to an IKE message (UDP 500, or 4500 after the non-ESP marker), whose header starts at hdr.
 * Returns XDP_PASS or the drop. Anything shorter than an IKE header is not an IKE_SA_INIT request we could
 * recognise: it passes, and the IKE core counts it as malformed.
 */
static __always_inline int ike_limit(const struct xs_pkt *pkt, void *hdr, void *end)
{
	struct ike_hdr_ *h = hdr;

	if (hdr + IKE_HDR_LEN > end || !is_ike_sa_init_request(h) || ike_init_admit(pkt))
		return XDP_PASS;
	return drop(XS_DROP_IKE_INIT_RATE);
}

#endif /* XDPSEC_RATELIMIT_H */
