/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Header parsing for the classifier: a cursor walks the frame and one parse_* function per header checks the
 * bounds before touching a byte (the verifier insists, and so does a frame that lies about its lengths).
 * Each parser returns 0 or the drop reason that names what the frame lied about; what they learn goes into
 * struct xs_pkt, the only thing the SPD and the steering code look at.
 */
#ifndef XDPSEC_PARSE_H
#define XDPSEC_PARSE_H

#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88A8)
#define ETH_P_IP_BE bpf_htons(0x0800)
#define ETH_P_IPV6_BE bpf_htons(0x86DD)

#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_ESP_ 50
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_DSTOPTS_ 60

#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1FFF

struct cursor {
	void *pos;
	void *end;
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

/* What the classifier knows about a frame once its headers are parsed. Addresses as in struct xs_policy. */
struct xs_pkt {
	__be32 src[4];
	__be32 dst[4];
	__u16 sport;                    /* host order; ICMP type */
	__u16 dport;                    /* host order; ICMP code */
	__u16 l3_off;
	__u16 l4_off;                   /* 0: no transport header seen (non-first fragment, no next header) */
	__u16 l4_len;                   /* bytes from l4_off to the end of the IP packet */
	__u8 family;                    /* 4 or 6 */
	__u8 proto;                     /* transport protocol after IPv6 extension headers */
	__u8 fragment;                  /* part of a fragmented datagram (first or not) */
	__u8 later_fragment;            /* fragment offset != 0: no transport header */
	__u8 vlan_tags;
	__u8 pad;
};

/* Ethernet and up to XS_MAX_VLAN_TAGS 802.1ad/802.1Q tags: returns the inner ethertype (network order). */
static __always_inline int parse_eth(struct cursor *c, void *start, struct xs_pkt *pkt, __be16 *ethertype)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > c->end)
		return XS_DROP_MALFORMED_ETH;
	c->pos = eth + 1;
	*ethertype = eth->h_proto;

#pragma unroll
	for (int i = 0; i < XS_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr_ *vlan = c->pos;

		if (*ethertype != ETH_P_8021Q_BE && *ethertype != ETH_P_8021AD_BE)
			break;
		/* the tag promised another 4 bytes and an inner ethertype that are not there */
		if ((void *)(vlan + 1) > c->end)
			return XS_DROP_MALFORMED_ETH;
		c->pos = vlan + 1;
		*ethertype = vlan->proto;
		pkt->vlan_tags++;
	}
	pkt->l3_off = c->pos - start;
	return 0;
}

/* IPv4 header including options (IHL > 5). Sets proto, addresses, fragment state and l4_len. */
static __always_inline int parse_ipv4(struct cursor *c, struct xs_pkt *pkt)
{
	struct iphdr *iph = c->pos;
	__u32 hlen, tot_len;
	__u16 frag;

	if ((void *)(iph + 1) > c->end)
		return XS_DROP_MALFORMED_IP;
	hlen = iph->ihl * 4;
	tot_len = bpf_ntohs(iph->tot_len);
	/* a version that is not 4, a header shorter than 20 bytes, or lengths that point past the frame */
	if (iph->version != 4 || hlen < sizeof(*iph) || tot_len < hlen)
		return XS_DROP_MALFORMED_IP;
	if (c->pos + tot_len > c->end)
		return XS_DROP_MALFORMED_IP;
	if (c->pos + hlen > c->end)
		return XS_DROP_MALFORMED_IP;

	pkt->family = 4;
	pkt->proto = iph->protocol;
	pkt->src[0] = iph->saddr;
	pkt->dst[0] = iph->daddr;
	frag = bpf_ntohs(iph->frag_off);
	pkt->fragment = (frag & (IPV4_MF | IPV4_OFFSET)) != 0;
	pkt->later_fragment = (frag & IPV4_OFFSET) != 0;
	pkt->l4_len = tot_len - hlen;
	c->pos += hlen;
	return 0;
}

/* Generic layout of hop-by-hop, routing and destination options headers (RFC 8200 4.3-4.6). */
struct ipv6_opt_ {
	__u8 nexthdr;
	__u8 hdrlen;                    /* in 8-byte units, not counting the first 8 */
};

struct ipv6_frag_ {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;                /* offset << 3 | M */
	__be32 id;
};

static __always_inline int ipv6_is_exthdr(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS_ || nexthdr == IPPROTO_ROUTING_ || nexthdr == IPPROTO_DSTOPTS_ ||
	       nexthdr == IPPROTO_FRAGMENT_;
}

/*
 * IPv6 header and up to XS_MAX_EXTHDRS extension headers (RFC 8200 4.1). ESP and AH end the walk: they are
 * what we look for. After a fragment header with a non-zero offset there is no transport header to parse.
 */
static __always_inline int parse_ipv6(struct cursor *c, struct xs_pkt *pkt)
{
	struct ipv6hdr *ip6 = c->pos;
	void *payload_end;
	__u8 nexthdr;

	if ((void *)(ip6 + 1) > c->end)
		return XS_DROP_MALFORMED_IP;
	if (ip6->version != 6)
		return XS_DROP_MALFORMED_IP;
	/* payload length 0 would be a jumbogram (RFC 2675), which never fits a frame we can receive */
	payload_end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
	if (payload_end > c->end)
		return XS_DROP_MALFORMED_IP;

	pkt->family = 6;
	__builtin_memcpy(pkt->src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->dst, &ip6->daddr, 16);
	nexthdr = ip6->nexthdr;
	c->pos = ip6 + 1;

#pragma unroll
	for (int i = 0; i < XS_MAX_EXTHDRS; i++) {
		if (!ipv6_is_exthdr(nexthdr) || pkt->later_fragment)
			break;
		if (nexthdr == IPPROTO_FRAGMENT_) {
			struct ipv6_frag_ *fh = c->pos;

			if ((void *)(fh + 1) > c->end)
				return XS_DROP_MALFORMED_IP;
			pkt->fragment = 1;
			pkt->later_fragment = (bpf_ntohs(fh->frag_off) & 0xFFF8) != 0;
			nexthdr = fh->nexthdr;
			c->pos = fh + 1;
		} else {
			struct ipv6_opt_ *oh = c->pos;

			if ((void *)(oh + 1) > c->end)
				return XS_DROP_MALFORMED_IP;
			nexthdr = oh->nexthdr;
			c->pos += (oh->hdrlen + 1) * 8;
		}
		/* the header's length field points past the packet */
		if (c->pos > payload_end)
			return XS_DROP_MALFORMED_IP;
	}
	if (ipv6_is_exthdr(nexthdr) && !pkt->later_fragment)
		return XS_DROP_EXTHDR_DEPTH;

	pkt->proto = nexthdr;
	pkt->l4_len = payload_end - c->pos;
	return 0;
}

/*
 * Transport header: ports (or ICMP type/code) for the SPD. Only a first fragment (or an unfragmented packet)
 * has one; ESP and AH need their fixed header here because the SPI is looked up next.
 */
static __always_inline int parse_l4(struct cursor *c, void *start, struct xs_pkt *pkt)
{
	__u32 need;

	if (pkt->later_fragment)
		return 0;
	switch (pkt->proto) {
	case IPPROTO_TCP_:
		need = sizeof(struct tcphdr);
		break;
	case IPPROTO_UDP_:
		need = sizeof(struct udphdr);
		break;
	case IPPROTO_ICMP_:
	case IPPROTO_ICMPV6_:
		need = 4;               /* type, code, checksum */
		break;
	case IPPROTO_ESP_:
		need = 8;               /* SPI, sequence number (RFC 4303 2) */
		break;
	case IPPROTO_AH_:
		need = 12;              /* next header, length, reserved, SPI, sequence number (RFC 4302 2) */
		break;
	default:
		return 0;               /* no selectors beyond the protocol */
	}
	/* the IP header promised a transport header that the packet does not hold */
	if (pkt->l4_len < need || c->pos + need > c->end)
		return XS_DROP_MALFORMED_L4;
	pkt->l4_off = c->pos - start;

	if (pkt->proto == IPPROTO_TCP_ || pkt->proto == IPPROTO_UDP_) {
		/* source and destination ports are the first 4 bytes of both */
		struct udphdr *uh = c->pos;

		if ((void *)(uh + 1) > c->end)
			return XS_DROP_MALFORMED_L4;
		pkt->sport = bpf_ntohs(uh->source);
		pkt->dport = bpf_ntohs(uh->dest);
	} else if (pkt->proto == IPPROTO_ICMP_ || pkt->proto == IPPROTO_ICMPV6_) {
		__u8 *icmp = c->pos;

		if ((void *)(icmp + 2) > c->end)
			return XS_DROP_MALFORMED_L4;
		pkt->sport = icmp[0];
		pkt->dport = icmp[1];
	}
	return 0;
}

#endif /* XDPSEC_PARSE_H */
