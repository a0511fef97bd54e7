/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one ABI shared by the XDP programs and the Python side.
 *
 * Everything both sides must agree on lives here: drop reasons, counters, verdict kinds, map keys and values,
 * and the metadata the classifier leaves in front of a frame for the worker. xdpsec/abi.py reads the enums of
 * this file at import time (so each code is defined exactly once) and mirrors the structs with ctypes; a test
 * compares those mirrors with the layouts bcc derives from this header.
 *
 * Rules: numbers never change once released; new codes are appended; structs keep natural alignment with
 * explicit padding so that C and ctypes agree without packing pragmas.
 */
#ifndef XDPSEC_ABI_H
#define XDPSEC_ABI_H

/* Why a packet was dropped. Shared by XDP (counted in the `drops` map) and workers (counted per SA/worker). */
enum xs_drop {
	XS_DROP_NONE = 0,               /* not a drop */
	XS_DROP_MALFORMED_ETH = 1,      /* frame shorter than its Ethernet/802.1Q headers */
	XS_DROP_MALFORMED_IP = 2,       /* IP header truncated, bad version/IHL, or length beyond the frame */
	XS_DROP_MALFORMED_L4 = 3,       /* TCP/UDP/ICMP/ESP/AH header truncated */
	XS_DROP_EXTHDR_DEPTH = 4,       /* IPv6 extension header chain deeper than we parse */
	XS_DROP_POLICY_DISCARD = 5,     /* the SPD said DISCARD */
	XS_DROP_POLICY_CLEARTEXT = 6,   /* cleartext packet matched an inbound PROTECT policy (RFC 4301 5.2) */
	XS_DROP_NO_SA = 7,              /* PROTECT policy whose SA is not installed: never sent in clear */
	XS_DROP_UNKNOWN_SPI = 8,        /* ESP/AH for an SPI we do not have */
	XS_DROP_NO_SOCKET = 9,          /* no AF_XDP socket bound to the queue the packet arrived on */
	XS_DROP_IPSEC_FRAGMENT = 10,    /* fragmented ESP/AH: the fast path does not reassemble */
	XS_DROP_NAT_KEEPALIVE = 11,     /* RFC 3948 NAT-keepalive: ignored on purpose */
	XS_DROP_TRUNCATED = 12,         /* ESP/AH shorter than header + IV + ICV, or not block aligned */
	XS_DROP_REPLAY = 13,            /* sequence number replayed or left of the window (RFC 4303 3.4.3) */
	XS_DROP_AUTH_FAILED = 14,       /* integrity check value did not verify */
	XS_DROP_BAD_PADDING = 15,       /* padding bytes or pad length wrong (RFC 4303 2.4) */
	XS_DROP_BAD_NEXT_HEADER = 16,   /* next header not allowed for the SA's mode */
	XS_DROP_BAD_INNER = 17,         /* decapsulated packet is not a well-formed IP packet */
	XS_DROP_SELECTOR_MISMATCH = 18, /* inner packet outside the SA's traffic selectors (RFC 4301 5.2) */
	XS_DROP_TTL_EXCEEDED = 19,      /* TTL / hop limit ran out while forwarding */
	XS_DROP_NO_ROUTE = 20,          /* no route, or the route leaves through an interface we do not drive */
	XS_DROP_NO_NEIGHBOR = 21,       /* next hop's link-layer address not (yet) known */
	XS_DROP_TOO_BIG = 22,           /* too big after encapsulation and may not be fragmented: ICMP sent */
	XS_DROP_SEQ_EXHAUSTED = 23,     /* outbound sequence numbers used up (RFC 4303 3.3.3) */
	XS_DROP_TX_FULL = 24,           /* transmit ring full */
	XS_DROP_HANDOFF_FULL = 25,      /* ring to the worker that owns the SA full */
	XS_DROP_NO_FRAME = 26,          /* no free UMEM frame */
	XS_DROP_BAD_META = 27,          /* classifier metadata missing or inconsistent */
	XS_DROP_SA_MISMATCH = 28,       /* packet does not fit the SA it names (addresses, encapsulation, protocol) */
	XS_DROP_NOT_IP = 29,            /* not IPv4/IPv6 where IP was required */
	XS_DROP_INTERNAL = 30,          /* classifier incomplete: the SPD program is missing from xs_progs */
	XS_DROP_IKE_INIT_RATE = 31,     /* IKE_SA_INIT request over its source prefix's or the global rate */
	XS_DROP__MAX
};

/* Non-drop events counted by the classifier, per CPU, in the `stats` map. */
enum xs_stat {
	XS_STAT_RX = 0,                 /* frames seen */
	XS_STAT_PASS = 1,               /* handed to the kernel stack (BYPASS, non-IP, IKE) */
	XS_STAT_IKE = 2,                /* IKE (UDP 500, or 4500 with the non-ESP marker) passed to the kernel */
	XS_STAT_PROTECT = 3,            /* steered to a worker for outbound processing */
	XS_STAT_INBOUND_ESP = 4,        /* ESP steered to a worker */
	XS_STAT_INBOUND_ESP_UDP = 5,    /* ESP-in-UDP (RFC 3948) steered to a worker */
	XS_STAT_INBOUND_AH = 6,         /* AH steered to a worker */
	XS_STAT_DROP = 7,               /* dropped (by reason in `drops`) */
	XS_STAT_VLAN = 8,               /* 802.1Q/802.1ad tagged frames seen */
	XS_STAT_SPD_CACHE_HIT = 9,      /* SPD decision taken from the flow cache, no walk (spd.h) */
	XS_STAT_SPD_CACHE_MISS = 10,    /* SPD walked (flow not cached, or cached under older policies) */
	XS_STAT__MAX
};

/* What the classifier decided; the `kind` of struct xs_meta. */
enum xs_kind {
	XS_KIND_NONE = 0,
	XS_KIND_PROTECT = 1,            /* cleartext to be protected with SA sa_index (outbound) */
	XS_KIND_ESP = 2,                /* inbound ESP for SA sa_index */
	XS_KIND_ESP_UDP = 3,            /* inbound ESP-in-UDP for SA sa_index; l4_off points at the UDP header */
	XS_KIND_AH = 4,                 /* inbound AH for SA sa_index */
};

/* SPD actions (RFC 4301 4.4.1). */
enum xs_action {
	XS_ACT_BYPASS = 0,              /* hand to the kernel stack in clear */
	XS_ACT_DISCARD = 1,             /* drop in XDP */
	XS_ACT_PROTECT = 2,             /* apply IPsec: outbound to a worker, inbound cleartext is dropped */
};

/* SPD direction of a policy. OUT: source in local_ts, destination in remote_ts. IN: the reverse. */
enum xs_dir {
	XS_DIR_OUT = 0,
	XS_DIR_IN = 1,
};

/* Size limits of the maps. The SPD holds two banks of XS_MAX_POLICIES (see struct xs_config_val). */
#define XS_MAX_POLICIES 4096            /* walked SPD_CHUNK at a time (spd.h) */
#define XS_MAX_CHILDREN 1024
#define XS_MAX_SAS 4096
#define XS_MAX_IFACES 16
#define XS_MAX_QUEUES 64
#define XS_MAX_LOCAL_ADDRS 4096         /* a gateway with an outer address per tunnel */
#define XS_MAX_IKE_PREFIXES 16384      /* IKE_SA_INIT buckets by source prefix (LRU) */
#define XS_MAX_IKE_EXEMPT 4096         /* configured IKE peers with a bucket of their own */
#define XS_MAX_VLAN_TAGS 2              /* 802.1ad outer + 802.1Q inner */
#define XS_MAX_EXTHDRS 8                /* IPv6 extension headers parsed before giving up */
#define XS_SPD_CACHE_SIZE 65536         /* flows whose SPD matches are remembered (LRU, spd.h) */
#define XS_META_MAGIC 0x78736563        /* "xsec": struct xs_meta is present */
#define XS_PROG_SPD 0                   /* xs_progs slot of the SPD program (tail call from the parser) */

/*
 * Written by the classifier in front of a steered frame (bpf_xdp_adjust_meta), read by the worker from the
 * UMEM just before the packet. 24 bytes: at most 32 and a multiple of 4, as the kernel requires. Offsets are
 * from the start of the Ethernet header. l4_off is the ESP/AH (or, for ESP_UDP, the UDP) header for inbound
 * kinds and the transport header for PROTECT (0 when there is none: a non-first fragment or no next header).
 */
struct xs_meta {
	__u32 magic;                    /* XS_META_MAGIC */
	__u32 sa_index;                 /* SA to use: outbound SA for PROTECT, inbound SA otherwise */
	__u32 policy_id;                /* policy that chose PROTECT; 0 for inbound kinds */
	__u16 owner;                    /* worker owning the SA */
	__u16 ifslot;                   /* slot of the receiving interface (xs_ifaces) */
	__u16 l3_off;                   /* IP header, after any VLAN tags */
	__u16 l4_off;
	__u8 kind;                      /* enum xs_kind */
	__u8 ip_version;                /* 4 or 6: the outer IP header at l3_off */
	__u8 pad[2];
};

/* xs_ifaces: ifindex -> slot. Interfaces missing from this map are not ours: their frames pass untouched. */
struct xs_iface {
	__u32 slot;                     /* < XS_MAX_IFACES; XSKMAP key = slot * XS_MAX_QUEUES + rx queue */
};

/*
 * xs_config[0]. The SPD is an array of two banks; the coordinator writes the inactive bank, then stores its
 * count, then flips active_bank, then increments spd_generation (four map updates in that order): the program
 * reads spd_generation, then active_bank once, and then only the count and policies of that bank, so a packet
 * sees either the whole old set or the whole new one, and the flow cache (spd.h) never files a result of one
 * bank under the generation of a later one.
 */
struct xs_config_val {
	__u32 active_bank;              /* 0 or 1 */
	__u32 count[2];                 /* policies in each bank, <= XS_MAX_POLICIES */
	__u16 encap_port;               /* UDP destination port of RFC 3948 encapsulation (4500) */
	__u8 default_action;            /* enum xs_action when no policy matches: BYPASS or DISCARD */
	__u8 pad;
	__u32 spd_generation;           /* changes with every SPD written: older xs_spd_cache entries are misses */
};

/*
 * xs_policies[bank * XS_MAX_POLICIES + i]: one SPD entry. Addresses and masks are in network byte order, IPv4
 * in word 0 with the other words zero; the address is stored already masked. Ports are host order and
 * inclusive; for ICMP/ICMPv6 the source "port" is the message type and the destination "port" the code.
 */
struct xs_policy {
	__be32 src[4];
	__be32 src_mask[4];
	__be32 dst[4];
	__be32 dst_mask[4];
	__u16 sport_lo;
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u32 child_id;                 /* index into xs_child_out (PROTECT OUT only) */
	__u32 policy_id;
	__u8 family;                    /* IP version of src/dst: 4 or 6 */
	__u8 direction;                 /* enum xs_dir */
	__u8 action;                    /* enum xs_action */
	__u8 proto;                     /* IP protocol, 0 = any */
};

/*
 * The SPD flow cache (spd.h): a flow's first OUT and first IN match, as the walk found them under one
 * spd_generation. Only the match is kept, never the child's SA, which is looked up afterwards as after a walk.
 */
struct xs_spd_hit {
	__u32 policy_id;
	__u32 child_id;
	__u8 action;                    /* enum xs_action */
	__u8 found;                     /* 0: no policy of this direction matched (the other fields are 0) */
	__u8 pad[2];
};

struct xs_spd_match {
	struct xs_spd_hit out;
	struct xs_spd_hit in;
};

/* Everything the walk's result depends on: the selectors of RFC 4301 4.4.1.1 as the classifier parsed them. */
struct xs_flow_key {
	__be32 src[4];                  /* xs_policy address layout */
	__be32 dst[4];
	__u16 sport;                    /* host order; ICMP type; 0 without a transport header */
	__u16 dport;                    /* host order; ICMP code */
	__u8 family;                    /* 4 or 6 */
	__u8 proto;
	__u8 pad[2];
};

struct xs_spd_cache_val {
	struct xs_spd_match m;
	__u32 generation;               /* spd_generation the walk started under */
	struct xs_flow_key key;         /* the entry's own key again: an LRU element can be recycled under a reader */
};

/* xs_child_out[child_id]: the child's current outbound SA; a rekey replaces this one entry. */
struct xs_child {
	__u32 sa_index;
	__u16 owner;
	__u8 valid;                     /* 0: no SA installed (PROTECT then drops NO_SA) */
	__u8 pad;
};

/* xs_sa_in: inbound SAs by (SPI, protocol) (RFC 4301 4.1: SPI plus protocol identifies a unicast SA). */
struct xs_sa_in_key {
	__u32 spi;                      /* host order */
	__u8 proto;                     /* 50 ESP or 51 AH */
	__u8 pad[3];
};

struct xs_sa_in_val {
	__u32 sa_index;
	__u16 owner;
	__u8 encap;                     /* 1: installed for UDP encapsulation (RFC 3948): must arrive in UDP */
	__u8 pad;
};

/* xs_local_addrs: the gateway's own addresses (value unused). Same address layout as struct xs_policy. */
struct xs_addr_key {
	__be32 addr[4];
	__u8 family;                    /* 4 or 6 */
	__u8 pad[3];
};

/*
 * xs_ike_limits[0]: the IKE_SA_INIT rate limit (ratelimit.h), as GCRA parameters so that the program never
 * divides: a bucket of rate r and size b has interval 1e9 / r ns and burst b * interval ns. interval_ns 0: no
 * limit. The masks cut a source address (xs_addr_key layout) down to its prefix.
 */
struct xs_ike_limits {
	__u64 interval_ns;              /* per prefix (and per exempt peer) */
	__u64 burst_ns;
	__u64 global_interval_ns;       /* all prefixes together */
	__u64 global_burst_ns;
	__be32 mask4[4];                /* IPv4 prefix in word 0, the other words zero */
	__be32 mask6[4];
};

/*
 * xs_acquire (ring buffer): a packet matched a PROTECT policy whose child has no SA (RFC 4301 5.1's "trap").
 * The packet itself is dropped (no_sa); the coordinator may negotiate the child, proposing this packet's
 * selectors first (RFC 7296 2.9). At most one event per child per XS_ACQUIRE_INTERVAL_NS.
 */
#define XS_ACQUIRE_INTERVAL_NS 1000000000ULL
struct xs_acquire {
	__be32 src[4];
	__be32 dst[4];
	__u32 child_id;
	__u32 policy_id;
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 pad[2];
};

#endif /* XDPSEC_ABI_H */
