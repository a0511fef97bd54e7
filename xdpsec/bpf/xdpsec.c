/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The XDP classifier of xdpsec, attached to every interface xdpsec drives.
 *
 * It decides, per frame, between the kernel stack (non-IP, IKE, SPD BYPASS), a named drop, and a worker:
 * inbound ESP / ESP-in-UDP / AH whose SPI we hold, and cleartext that an OUT PROTECT policy sends into an SA.
 * IKE_SA_INIT requests beyond a rate per source prefix, or a global one, are dropped (ratelimit.h).
 * A steered frame gets a struct xs_meta in front of it and is redirected to the AF_XDP socket of the queue it
 * arrived on (the only socket that can receive it); the meta names the SA's owner, which may be another worker.
 *
 * Two programs: xdpsec_classify parses and handles IKE and inbound IPsec; traffic for the SPD continues in
 * xdpsec_spd by a tail call, with the parsed packet in a per-CPU scratch slot. The split is for the verifier:
 * reached from every parsing path, the policy loop would be verified once per path (and exceed 1M
 * instructions); in its own program it starts from one state, whose packet fields are all unknown.
 *
 * Built by bcc (xdpsec/io/bpf.py) with -I bpf/include. The maps are the ABI of bpf/include/xdpsec_abi.h.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "xdpsec_abi.h"
#include "parse.h"
#include "stats.h"
#include "ratelimit.h"
#include "spd.h"

#define IKE_PORT 500                    /* RFC 7296 2 */

/* ICMPv6 types that belong to the link: MLD query/report/done (RFC 2710) and MLDv2 report (RFC 3810), router
 * and neighbour solicitation/advertisement and redirect (RFC 4861). */
static __always_inline int icmpv6_link_control(__u16 type)
{
	return (type >= 130 && type <= 137) || type == 143;
}
#define NON_ESP_MARKER_LEN 4            /* RFC 3948 2.2: four zero bytes where an SPI would be */
#define NAT_KEEPALIVE_BYTE 0xFF         /* RFC 3948 2.3: a single 0xFF byte */
#define XS_TO_SPD -1                    /* not IPsec for us after all: continue in the SPD program */

BPF_HASH(xs_ifaces, __u32, struct xs_iface, XS_MAX_IFACES);
BPF_ARRAY(xs_config, struct xs_config_val, 1);
BPF_HASH(xs_sa_in, struct xs_sa_in_key, struct xs_sa_in_val, XS_MAX_SAS);
BPF_HASH(xs_local_addrs, struct xs_addr_key, __u32, XS_MAX_LOCAL_ADDRS);
BPF_XSKMAP(xs_xsks, XS_MAX_IFACES * XS_MAX_QUEUES);
BPF_PROG_ARRAY(xs_progs, 1);
/* The parsed packet, from xdpsec_classify to xdpsec_spd. Per CPU: XDP runs with migration disabled and the
 * tail call follows the write directly, so no other frame can come in between on this CPU. */
BPF_PERCPU_ARRAY(xs_scratch, struct xs_pkt, 1);

/* What steer() writes into the meta, besides the frame's own offsets. */
struct steering {
	__u32 sa_index;
	__u32 policy_id;
	__u32 stat;                     /* enum xs_stat counted on success */
	__u16 owner;
	__u16 l4_off;
	__u8 kind;
};

static __always_inline int classify_ipsec(struct xdp_md *ctx, const struct xs_iface *ifc, struct xs_pkt *pkt,
					  void *hdr);
static __always_inline int classify_encap(struct xdp_md *ctx, const struct xs_iface *ifc, struct xs_pkt *pkt,
					  struct udphdr *uh);
static __always_inline int classify_cleartext(struct xdp_md *ctx, const struct xs_iface *ifc,
					      const struct xs_config_val *cfg, const struct xs_pkt *pkt);
static __always_inline int steer(struct xdp_md *ctx, const struct xs_iface *ifc, const struct xs_pkt *pkt,
				 const struct steering *s);

int xdpsec_classify(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	struct cursor c = { .pos = data, .end = (void *)(long)ctx->data_end };
	__u32 ifindex = ctx->ingress_ifindex, zero = 0;
	struct xs_pkt pkt = {};
	struct xs_config_val *cfg;
	struct xs_iface *ifc;
	__be16 ethertype;
	int rc;

	ifc = xs_ifaces.lookup(&ifindex);
	if (!ifc)
		return XDP_PASS;        /* not an interface we drive */
	cfg = xs_config.lookup(&zero);
	if (!cfg)
		return XDP_PASS;
	count_stat(XS_STAT_RX);

	rc = parse_eth(&c, data, &pkt, &ethertype);
	if (rc)
		return drop(rc);
	if (pkt.vlan_tags)
		count_stat(XS_STAT_VLAN);
	if (ethertype == ETH_P_IP_BE)
		rc = parse_ipv4(&c, &pkt);
	else if (ethertype == ETH_P_IPV6_BE)
		rc = parse_ipv6(&c, &pkt);
	else
		return pass();
	if (rc)
		return drop(rc);
	rc = parse_l4(&c, data, &pkt);
	if (rc)
		return drop(rc);

	rc = XS_TO_SPD;
	if (pkt.proto == IPPROTO_ESP_ || pkt.proto == IPPROTO_AH_) {
		rc = classify_ipsec(ctx, ifc, &pkt, c.pos);
	} else if (pkt.proto == IPPROTO_UDP_ && pkt.l4_off) {
		/* IKE belongs to the kernel (the IKE daemon), whatever the SPD says; a flood of IKE_SA_INIT does not */
		if (pkt.dport == IKE_PORT) {
			if (ike_limit(&pkt, c.pos + sizeof(struct udphdr), c.end) != XDP_PASS)
				return XDP_DROP;
			count_stat(XS_STAT_IKE);
			return pass();
		}
		if (pkt.dport == cfg->encap_port)
			rc = classify_encap(ctx, ifc, &pkt, c.pos);
	} else if (pkt.proto == IPPROTO_ICMPV6_ && pkt.l4_off && icmpv6_link_control(pkt.sport)) {
		/*
		 * Neighbour discovery and MLD are the link's own control traffic and bypass IPsec like IKE (RFC 4301
		 * 4.4.1: an SPD that protected them would stop the hosts from finding each other's MAC; IPv4's
		 * equivalent, ARP, is not IP and never reaches the SPD). A host-to-host transport policy covers the
		 * peer's unicast Neighbour Advertisements otherwise.
		 */
		return pass();
	}
	if (rc != XS_TO_SPD)
		return rc;
	if (xs_scratch.update(&zero, &pkt) || spd_walk_start(cfg, &pkt))
		return drop(XS_DROP_INTERNAL);
	xs_progs.call(ctx, XS_PROG_SPD);
	return drop(XS_DROP_INTERNAL);  /* only reached if the tail call failed */
}

int xdpsec_spd(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex, zero = 0;
	struct xs_config_val *cfg;
	struct xs_iface *ifc;
	struct xs_pkt *pkt;

	ifc = xs_ifaces.lookup(&ifindex);
	cfg = xs_config.lookup(&zero);
	pkt = xs_scratch.lookup(&zero);
	if (!ifc || !cfg || !pkt)
		return drop(XS_DROP_INTERNAL);
	return classify_cleartext(ctx, ifc, cfg, pkt);
}

static __always_inline int is_local(const struct xs_pkt *pkt)
{
	struct xs_addr_key key = { .family = pkt->family };

	__builtin_memcpy(key.addr, pkt->dst, sizeof(key.addr));
	return xs_local_addrs.lookup(&key) != NULL;
}

/*
 * An SPI we do not hold, sent to one of our addresses, is dropped (RFC 4303 3.4.2: no valid SA). Sent to
 * someone else, ESP/AH is just traffic we forward, subject to the SPD like any other.
 */
static __always_inline int unknown_spi(const struct xs_pkt *pkt)
{
	if (is_local(pkt))
		return drop(XS_DROP_UNKNOWN_SPI);
	return XS_TO_SPD;
}

/* ESP (proto 50) or AH (proto 51) directly over IP; hdr is the ESP/AH header. */
static __always_inline int classify_ipsec(struct xdp_md *ctx, const struct xs_iface *ifc, struct xs_pkt *pkt,
					  void *hdr)
{
	struct xs_sa_in_key key = { .proto = pkt->proto };
	struct steering s = { .l4_off = pkt->l4_off };
	void *end = (void *)(long)ctx->data_end;
	__be32 *spi = hdr;
	struct xs_sa_in_val *sa;

	/* the fast path does not reassemble (RFC 4303 3.4.1 has the receiver reassemble first) */
	if (pkt->fragment)
		return drop(XS_DROP_IPSEC_FRAGMENT);
	if (pkt->proto == IPPROTO_AH_) {
		spi += 1;               /* after next header, payload length and reserved (RFC 4302 2) */
		s.kind = XS_KIND_AH;
		s.stat = XS_STAT_INBOUND_AH;
	} else {
		s.kind = XS_KIND_ESP;
		s.stat = XS_STAT_INBOUND_ESP;
	}
	if ((void *)(spi + 1) > end)
		return drop(XS_DROP_MALFORMED_L4);
	key.spi = bpf_ntohl(*spi);

	sa = xs_sa_in.lookup(&key);
	if (!sa)
		return unknown_spi(pkt);
	/* an SA negotiated with UDP encapsulation must arrive in UDP (RFC 3948 2) */
	if (sa->encap)
		return drop(XS_DROP_SA_MISMATCH);
	s.sa_index = sa->sa_index;
	s.owner = sa->owner;
	return steer(ctx, ifc, pkt, &s);
}

/*
 * UDP to the encapsulation port (RFC 3948): IKE behind the non-ESP marker goes to the kernel, a NAT-keepalive
 * is dropped, anything else is ESP whose SPI starts the payload.
 */
static __always_inline int classify_encap(struct xdp_md *ctx, const struct xs_iface *ifc, struct xs_pkt *pkt,
					  struct udphdr *uh)
{
	struct steering s = { .kind = XS_KIND_ESP_UDP, .stat = XS_STAT_INBOUND_ESP_UDP, .l4_off = pkt->l4_off };
	struct xs_sa_in_key key = { .proto = IPPROTO_ESP_ };
	void *end = (void *)(long)ctx->data_end;
	__u8 *payload = (void *)(uh + 1);
	struct xs_sa_in_val *sa;
	__u32 ulen, plen;

	/*
	 * Lengths come from the UDP header, not the frame: Ethernet pads short frames, and a keepalive is one
	 * byte. A first fragment holds only part of the datagram the UDP length describes.
	 */
	if ((void *)(uh + 1) > end)
		return drop(XS_DROP_MALFORMED_L4);
	ulen = bpf_ntohs(uh->len);
	if (ulen < sizeof(*uh) || (!pkt->fragment && ulen > pkt->l4_len))
		return drop(XS_DROP_MALFORMED_L4);
	plen = (pkt->fragment ? pkt->l4_len : ulen) - sizeof(*uh);

	if (plen == 1) {
		if (payload + 1 > (__u8 *)end)
			return drop(XS_DROP_MALFORMED_L4);
		if (payload[0] == NAT_KEEPALIVE_BYTE)
			return drop(XS_DROP_NAT_KEEPALIVE);
		return drop(XS_DROP_MALFORMED_L4);
	}
	if (plen < NON_ESP_MARKER_LEN || payload + NON_ESP_MARKER_LEN > (__u8 *)end)
		return drop(XS_DROP_MALFORMED_L4);
	if (*(__u32 *)payload == 0) {
		if (ike_limit(pkt, payload + NON_ESP_MARKER_LEN, end) != XDP_PASS)
			return XDP_DROP;
		count_stat(XS_STAT_IKE);
		return pass();
	}
	/* ESP needs its SPI and sequence number (RFC 4303 2) */
	if (plen < 8)
		return drop(XS_DROP_MALFORMED_L4);
	if (pkt->fragment)
		return drop(XS_DROP_IPSEC_FRAGMENT);
	key.spi = bpf_ntohl(*(__be32 *)payload);

	sa = xs_sa_in.lookup(&key);
	if (!sa)
		return unknown_spi(pkt);
	/* and an SA negotiated without encapsulation must not arrive in UDP */
	if (!sa->encap)
		return drop(XS_DROP_SA_MISMATCH);
	s.sa_index = sa->sa_index;
	s.owner = sa->owner;
	return steer(ctx, ifc, pkt, &s);
}

/* Apply the SPD to a packet that is not (or not for us) IPsec. See spd.h for the rule. */
static __always_inline int classify_cleartext(struct xdp_md *ctx, const struct xs_iface *ifc,
					      const struct xs_config_val *cfg, const struct xs_pkt *pkt)
{
	struct xs_spd_match m;
	struct xs_child *child;
	int rc;

	rc = spd_lookup(pkt, &m);
	if (rc > 0) {                   /* the walk goes on in the next run of the SPD program (spd.h) */
		xs_progs.call(ctx, XS_PROG_SPD);
		return drop(XS_DROP_INTERNAL);
	}
	if (rc < 0)
		return drop(XS_DROP_INTERNAL);
	if (m.out.found && m.out.action == XS_ACT_PROTECT) {
		struct steering s = {
			.kind = XS_KIND_PROTECT, .stat = XS_STAT_PROTECT, .policy_id = m.out.policy_id,
			.l4_off = pkt->l4_off,
		};

		count_policy_hit(m.out.policy_id);
		/* never send in clear what a policy says to protect (RFC 4301 5.1) */
		child = xs_child_out.lookup(&m.out.child_id);
		if (!child || !child->valid) {
			raise_acquire(m.out.child_id, m.out.policy_id, pkt);
			return drop(XS_DROP_NO_SA);
		}
		s.sa_index = child->sa_index;
		s.owner = child->owner;
		return steer(ctx, ifc, pkt, &s);
	}
	if (m.out.found && m.out.action == XS_ACT_DISCARD) {
		count_policy_hit(m.out.policy_id);
		return drop(XS_DROP_POLICY_DISCARD);
	}
	if (m.in.found) {
		count_policy_hit(m.in.policy_id);
		/* cleartext that should have come through an SA (RFC 4301 5.2) */
		if (m.in.action == XS_ACT_PROTECT)
			return drop(XS_DROP_POLICY_CLEARTEXT);
		if (m.in.action == XS_ACT_DISCARD)
			return drop(XS_DROP_POLICY_DISCARD);
		return pass();
	}
	if (m.out.found) {
		count_policy_hit(m.out.policy_id);
		return pass();
	}
	if (cfg->default_action == XS_ACT_DISCARD)
		return drop(XS_DROP_POLICY_DISCARD);
	return pass();
}

/*
 * Hand the frame to the AF_XDP socket of the queue it arrived on, with the verdict in front of it. A
 * socket only receives from its own (interface, queue) binding, so the key is fixed by where the frame
 * landed; the owner in the meta tells that socket's worker where the SA lives. A frame whose meta cannot
 * be written is dropped (BAD_META) rather than sent to a worker that would have to guess.
 */
static __always_inline int steer(struct xdp_md *ctx, const struct xs_iface *ifc, const struct xs_pkt *pkt,
				 const struct steering *s)
{
	__u32 queue = ctx->rx_queue_index, slot = ifc->slot, key;
	struct xs_meta *meta;
	void *data;

	if (slot >= XS_MAX_IFACES || queue >= XS_MAX_QUEUES)
		return drop(XS_DROP_NO_SOCKET);
	key = slot * XS_MAX_QUEUES + queue;
	if (!xs_xsks.lookup(&key))
		return drop(XS_DROP_NO_SOCKET);

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		return drop(XS_DROP_BAD_META);
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if ((void *)(meta + 1) > data)
		return drop(XS_DROP_BAD_META);
	meta->magic = XS_META_MAGIC;
	meta->sa_index = s->sa_index;
	meta->policy_id = s->policy_id;
	meta->owner = s->owner;
	meta->ifslot = slot;
	meta->l3_off = pkt->l3_off;
	meta->l4_off = s->l4_off;
	meta->kind = s->kind;
	meta->ip_version = pkt->family;
	meta->pad[0] = 0;
	meta->pad[1] = 0;

	count_stat(s->stat);
	return xs_xsks.redirect_map(key, 0);
}
