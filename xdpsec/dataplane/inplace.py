"""The in-place fast path: ESP tunnel mode with an AEAD, encrypted and decrypted where the frame lies in the UMEM.

Why: profiling the copy path (docs/PERFORMANCE.md) showed a 64-byte packet spending 13 µs (protect) and 31 µs
(unprotect) in Python around a cipher call of under 1 µs: the IP header parsed three to five times into
dataclasses, the packet copied between the UMEM, `bytes` and `bytearray` four or five times, headers built
field by field, selectors matched through `ipaddress` objects. This module does the common case, ESP in tunnel
mode with AES-GCM or ChaCha20-Poly1305 (any outer family, ESP-in-UDP over IPv4), with each header read once
by one `struct` call, one precomputed header written by one `pack_into`, and the cipher running on the UMEM
itself (`encrypt_into`/`decrypt_into`). The frame that came in is the frame that goes out.

Outbound, in the frame the kernel wrote (the tx descriptor may start in the frame's headroom, and the 256
bytes in front of the packet leave room for any outer header)::

    received      ........[meta][eth][inner IP packet ......]
    transmitted   [eth'][outer IP][UDP]?[ESP][IV][inner IP packet ......][pad][pl][nh][ICV]
                  ^ descriptor start                ^ encrypted in place ^ written after the packet

Inbound, the plaintext replaces the ciphertext where it lies and the new Ethernet header is written over the
end of the ESP header and IV, right in front of it::

    received      [eth][outer IP][UDP]?[ESP][IV][ciphertext .....................][ICV]
    transmitted                          [eth'][inner IP packet ....][pad][pl][nh] (not sent)

How the fast path stays exactly as correct as the general one (xdpsec/esp/mode.py, PacketCore.process), which
stays the reference and which tests/unit/test_core.py checks it against byte for byte:

* It only takes packets it fully understands: outer and inner IPv4 without options or IPv6 without extension
  headers, lengths consistent, IPv4 header checksums verifying, TTL > 1, a resolved route, no fragmentation
  needed, ECN marks that need no merging. Anything else returns `FALLBACK` *before any byte or any state has
  changed*, and the caller runs the general path on the same frame, which drops or handles it with its named
  reason. No drop reason is decided here that the general path would decide differently.
* Sequence numbers come from `OutboundSA.next_seq` (seqstore reservations included); the replay window is
  checked before and updated after the ICV exactly as in `esp_decap` (RFC 4303 §3.4.3).
* Once a packet is decrypted it cannot go back to the general path (the window moved, the ciphertext is
  gone). The rare cases met after that point (ECN merge, IPv6 extension headers, unresolved next hop,
  fragmentation) take the general path's own pieces (`tunnel_inner`, `check_selectors`, `PacketCore.forward`)
  on a copy of the plaintext.

Checksums are updated incrementally (RFC 1624): decrementing the TTL adds 0x0100 to the word it shares with
the protocol, so HC' = ~(~HC + ~m + m') = ~(~HC + 0xFEFF) (eqn. 3, with ~m + m' = 0xFFFF - 0x0100). The outer
IPv4 header's checksum is the SA's precomputed sum of its constant words plus the four words that change.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from xdpsec.abi import Drop, DropReason
from xdpsec.crypto.esp import aad_for
from xdpsec.esp.codec import _PAD, HEADER_LEN, NEXT_HEADER_DUMMY, TRAILER_LEN
from xdpsec.esp.mode import OUTER_TTL, InboundSA, OutboundSA, check_selectors, tunnel_inner
from xdpsec.esp.replay import SEQ_SPACE
from xdpsec.sa import Mode, Protocol, TrafficSelector
from xdpsec.wire import ip
from xdpsec.wire.ip import IPProto

if TYPE_CHECKING:
    from xdpsec.dataplane.core import PacketCore

ETH_HLEN = 14
IV_LEN = 8  # the explicit IV of AES-GCM and ChaCha20-Poly1305 in ESP (RFC 4106 §3.1, RFC 7634 §2)
ICV_LEN = 16
UDP_HLEN = 8
ESP_HLEN = HEADER_LEN + IV_LEN  # SPI, sequence number, IV
#: The shortest ESP packet that can verify: header, IV, pad length and next header, ICV (RFC 4303 §2).
ESP_MIN = ESP_HLEN + TRAILER_LEN + ICV_LEN
IPV4_MAX = 0xFFFF
IPV6_MAX_PAYLOAD = 0xFFFF
_IPIP, _IPV6_IN_IP = 4, 41
#: The outer ECN values that change the inner header (RFC 6040 §4.2): left to the general path.
_ECN_MERGE = frozenset({1, 3})  # ECT(1), CE

#: Returned when the fast path does not take a packet; nothing in the frame or in any SA was changed.
FALLBACK = object()

_V4_IN = struct.Struct("!xBHxxHBB")  # tos, total length, flags+offset, ttl, protocol
_V6_IN = struct.Struct("!IHBB")  # version/class/flow, payload length, next header, hop limit
_U16 = struct.Struct("!H")
_U32X2 = struct.Struct("!II")
_PORTS = struct.Struct("!HH")
#: Bytes of the upper-layer header the selector check needs present (as `ip.flow` demands, RFC 1858 §3).
_L4_MIN = {IPProto.TCP: 20, IPProto.UDP: 8, IPProto.UDPLITE: 8, IPProto.SCTP: 12, IPProto.ICMP: 4,
           IPProto.ICMPV6: 4}
_PORT_PROTOS = frozenset({IPProto.TCP, IPProto.UDP, IPProto.UDPLITE, IPProto.SCTP})
_V6_EXT = frozenset({IPProto.HOPOPTS, IPProto.ROUTING, IPProto.DSTOPTS, IPProto.FRAGMENT, IPProto.AH,
                     IPProto.ESP, IPProto.NONE})


def _fold(s: int) -> int:
    """One's complement sum of a sum of 16-bit words (RFC 1071 §4.1: end-around carry)."""
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _ttl_checksum(old: int) -> int:
    """The IPv4 header checksum after the TTL drops by one (RFC 1624 eqn. 3, see the module docstring)."""
    return ~_fold((~old & 0xFFFF) + 0xFEFF) & 0xFFFF


def _eligible(params) -> bool:
    return (params.protocol == Protocol.ESP and params.mode == Mode.TUNNEL and params.tfc_pad == 0
            and params.transform.is_aead)


class OutPlan:
    """How one outbound SA's packets are built in place: the outer headers as one precompiled struct."""

    __slots__ = ("sa", "sa_index", "cipher", "spi", "esn", "remote", "family", "encap", "hdr", "hdr_len",
                 "csum_base", "addrs", "outer_ip")

    @classmethod
    def build(cls, sa: OutboundSA, sa_index: int) -> OutPlan | None:
        """The plan, or None if the SA is not one the fast path does (the general path does all)."""
        p = sa.params
        if not _eligible(p) or (p.family == 6 and p.encap is not None):
            return None  # IPv6 ESP-in-UDP needs a UDP checksum over the whole datagram: left to mode.py
        return cls(sa, sa_index)

    def __init__(self, sa: OutboundSA, sa_index: int) -> None:
        p = sa.params
        self.sa = sa
        self.sa_index = sa_index
        self.cipher = sa._esp.cipher
        self.spi = p.spi
        self.esn = p.transform.esn
        self.remote = p.remote.packed
        self.family = p.family
        self.encap = (p.encap.sport, p.encap.dport) if p.encap is not None else None
        self.addrs = p.local.packed + p.remote.packed
        udp = "HHHH" if self.encap else ""
        # eth | outer IP | UDP? | SPI, seq, IV (the IV is the 64-bit sequence number, RFC 4106 §3.1)
        if self.family == 4:
            self.hdr = struct.Struct(f"!14sHHHHHH8s{udp}IIQ")
            self.outer_ip = ip.IPV4_HEADER_LEN
            proto = IPProto.UDP if self.encap else IPProto.ESP
            # The words of the outer IPv4 header that never change (version/IHL, TTL/protocol, addresses);
            # TOS, total length, identification and flags are added per packet.
            self.csum_base = 0x4500 + (OUTER_TTL << 8 | proto) + sum(_U16.unpack_from(self.addrs, i)[0]
                                                                      for i in range(0, 8, 2))
        else:
            self.hdr = struct.Struct(f"!14sIHBB32s{udp}IIQ")
            self.outer_ip = ip.IPV6_HEADER_LEN
            self.csum_base = 0
        self.hdr_len = self.outer_ip + (UDP_HLEN if self.encap else 0) + ESP_HLEN

    def run(self, core: PacketCore, buf: memoryview, p: int, avail: int, lo: int, hi: int):
        """Protect the IP packet at buf[p:p + avail] in place; (egress slot, start, length) or FALLBACK."""
        first = buf[p]
        if first == 0x45:
            if avail < ip.IPV4_HEADER_LEN:
                return FALLBACK
            tos, total, frag, ttl, _proto = _V4_IN.unpack_from(buf, p)
            # RFC 1812 §5.2.2: a router verifies the header checksum of what it forwards (XDP ran before the
            # kernel's check). RFC 1812 §5.3.1: TTL 1 gets an ICMP error, which the general path sends.
            if not ip.IPV4_HEADER_LEN <= total <= avail or ttl <= 1 or ip.checksum(buf[p:p + 20]):
                return FALLBACK
            df = frag & 0x4000  # RFC 4301 §8.1: DF copied from the inner header, as mode.py does
            nh = _IPIP
        elif first >> 4 == 6:
            if avail < ip.IPV6_HEADER_LEN:
                return FALLBACK
            vtcfl, plen, first_nh, ttl = _V6_IN.unpack_from(buf, p)
            total = ip.IPV6_HEADER_LEN + plen
            # Extension headers are walked (and their lies dropped) by ip.parse in the general path.
            if total > avail or ttl <= 1 or first_nh in _V6_EXT:
                return FALLBACK
            tos, df, nh = (vtcfl >> 20) & 0xFF, 0, _IPV6_IN_IP
        else:
            return FALLBACK
        route = core.fib.get(self.remote)
        if route is None:  # not asked yet, or no route: the general path asks, holds or drops
            return FALLBACK
        pad = -(total + TRAILER_LEN) & 3  # RFC 4303 §2.4: the ciphertext ends on a 4-byte boundary
        clen = total + pad + TRAILER_LEN
        olen = self.hdr_len + clen + ICV_LEN
        start = p - ETH_HLEN - self.hdr_len
        if olen > route.mtu or olen > IPV4_MAX or start < lo or p + clen + ICV_LEN > hi:
            return FALLBACK  # fragmentation, ICMP too big, or no room in the frame: the general path
        sa = self.sa
        seq = sa.next_seq()  # may raise Drop(SEQ_EXHAUSTED); nothing has been written yet
        # Forwarding the inner packet: TTL first (RFC 1812 §5.3.1), then encapsulation.
        if nh == _IPIP:
            buf[p + 8] = ttl - 1
            _U16.pack_into(buf, p + 10, _ttl_checksum(_U16.unpack_from(buf, p + 10)[0]))
        else:
            buf[p + 7] = ttl - 1
        end = p + total
        buf[end:end + pad] = _PAD[:pad]
        buf[end + pad] = pad
        buf[end + pad + 1] = nh
        seq_lo = seq % SEQ_SPACE
        eth = route.eth4 if self.family == 4 else route.eth6
        if self.family == 4:
            sa._ident = ident = (sa._ident + 1) & 0xFFFF
            flags = 0x4000 if df else 0
            csum = ~_fold(self.csum_base + tos + olen + ident + flags) & 0xFFFF
            fields = [eth, 0x4500 | tos, olen, ident, flags, OUTER_TTL << 8 | (IPProto.UDP if self.encap
                                                                             else IPProto.ESP), csum, self.addrs]
        else:
            fields = [eth, (6 << 28) | (tos << 20), olen - ip.IPV6_HEADER_LEN,
                      IPProto.UDP if self.encap else IPProto.ESP, OUTER_TTL, self.addrs]
        if self.encap:
            # RFC 3948 §2.1: the IPv4 UDP checksum is sent as zero.
            fields += [self.encap[0], self.encap[1], olen - self.outer_ip, 0]
        self.hdr.pack_into(buf, start, *fields, self.spi, seq_lo, seq)
        esp = p - ESP_HLEN
        seq_hi = (seq // SEQ_SPACE).to_bytes(4, "big") if self.esn else b""
        self.cipher.seal_in_place(aad_for(buf[esp:esp + HEADER_LEN], seq_hi), seq.to_bytes(8, "big"), buf, p, clen)
        sa.packets += 1
        sa.bytes += total
        st = core.sa_stats[self.sa_index]
        st.packets += 1
        st.bytes += olen
        return route.slot, start, olen + ETH_HLEN


class _Selectors:
    """An SA's traffic selectors as integers, so the RFC 4301 §5.2 check needs no `ipaddress` objects."""

    __slots__ = ("local", "remote", "ports")

    def __init__(self, local: tuple[TrafficSelector, ...], remote: tuple[TrafficSelector, ...]) -> None:
        self.local = [self._one(ts) for ts in local]
        self.remote = [self._one(ts) for ts in remote]
        self.ports = any(ts.proto or not ts.ports.is_any for ts in local + remote)

    @staticmethod
    def _one(ts: TrafficSelector) -> tuple[int, int, int, int, int, int, bool]:
        net = ts.net
        return (net.version, int(net.network_address), int(net.netmask), ts.proto, ts.ports.lo, ts.ports.hi,
                ts.ports.is_any)

    @staticmethod
    def _match(sels, version: int, addr: int, proto: int, port: int) -> bool:
        """`TrafficSelector.matches` over a list, any of them (an empty list allows anything)."""
        if not sels:
            return True
        for v, net, mask, sproto, lo, hi, any_port in sels:
            if v == version and addr & mask == net and (not sproto or proto == sproto) and \
                    (any_port or lo <= port <= hi):
                return True
        return False


class InPlan:
    """How one inbound SA's packets are opened in place."""

    __slots__ = ("sa", "cipher", "spi", "esn", "local", "encap", "window", "selectors", "sa_index")

    @classmethod
    def build(cls, sa: InboundSA, sa_index: int) -> InPlan | None:
        return cls(sa, sa_index) if _eligible(sa.params) else None

    def __init__(self, sa: InboundSA, sa_index: int) -> None:
        p = sa.params
        self.sa = sa
        self.sa_index = sa_index
        self.cipher = sa._esp.cipher
        self.spi = p.spi
        self.esn = p.transform.esn
        self.local = p.local.packed
        self.encap = p.encap is not None
        self.window = sa.window
        self.selectors = _Selectors(p.local_ts, p.remote_ts) if (p.local_ts or p.remote_ts) else None

    def run(self, core: PacketCore, buf: memoryview, p: int, avail: int, out: list):
        """Unprotect the ESP packet at buf[p:p + avail] in place: (egress slot, start, length), None when the
        packet was consumed without an in-place frame to send (dropped, a dummy, or copies put in `out`), or
        FALLBACK (untouched)."""
        first = buf[p]
        if first == 0x45:
            if avail < ip.IPV4_HEADER_LEN:
                return FALLBACK
            tos, total, frag, _ttl, proto = _V4_IN.unpack_from(buf, p)
            # Fragments (MF or an offset, RFC 4303 §3.4.1), other destinations, bad checksums: general path.
            if not ip.IPV4_HEADER_LEN <= total <= avail or frag & 0x3FFF or buf[p + 16:p + 20] != self.local \
                    or ip.checksum(buf[p:p + 20]):
                return FALLBACK
            hl = ip.IPV4_HEADER_LEN
        elif first >> 4 == 6:
            if avail < ip.IPV6_HEADER_LEN:
                return FALLBACK
            vtcfl, plen, proto, _ttl = _V6_IN.unpack_from(buf, p)
            total = ip.IPV6_HEADER_LEN + plen
            if total > avail or buf[p + 24:p + 40] != self.local:
                return FALLBACK
            tos, hl = (vtcfl >> 20) & 0xFF, ip.IPV6_HEADER_LEN
        else:
            return FALLBACK
        if self.encap:
            if proto != IPProto.UDP or hl + UDP_HLEN > total:
                return FALLBACK
            udp_len = _U16.unpack_from(buf, p + hl + 4)[0]
            if not UDP_HLEN <= udp_len <= total - hl:
                return FALLBACK
            esp, end = p + hl + UDP_HLEN, p + hl + udp_len
        else:
            if proto != IPProto.ESP:
                return FALLBACK
            esp, end = p + hl, p + total
        n = end - esp
        if n < ESP_MIN or (n - ESP_HLEN - ICV_LEN) & 3:
            return FALLBACK
        spi, seq_lo = _U32X2.unpack_from(buf, esp)
        if spi != self.spi:
            return FALLBACK
        # RFC 4303 §3.4.3: the replay pre-check before the ICV; Drop(REPLAY) changes nothing.
        seq = self.window.check(seq_lo)
        seq_hi = (seq // SEQ_SPACE).to_bytes(4, "big") if self.esn else b""
        ct = esp + ESP_HLEN
        self.cipher.open_in_place(aad_for(buf[esp:esp + HEADER_LEN], seq_hi), bytes(buf[esp + HEADER_LEN:ct]),
                                  buf, ct, end - ct)
        pt_end = end - ICV_LEN - TRAILER_LEN
        pad, nh = buf[pt_end], buf[pt_end + 1]
        plen = pt_end - pad - ct
        # RFC 4303 §2.4: the default padding is 1, 2, 3, ...; the receiver checks it.
        if plen < 0 or buf[ct + plen:pt_end] != _PAD[:pad]:
            raise Drop(DropReason.BAD_PADDING)
        self.window.update(seq)
        if nh == NEXT_HEADER_DUMMY:  # RFC 4303 §2.6: authenticated, then discarded by design
            self._account(core, total, None)
            core.dummies += 1
            return None
        return self._inner(core, buf, ct, plen, nh, tos, total, out)

    def _account(self, core: PacketCore, outer_len: int, inner_len: int | None) -> None:
        """The counters PacketCore._inbound and mode.unprotect keep for an authentic packet."""
        if inner_len is not None:
            self.sa.packets += 1
            self.sa.bytes += inner_len
        st = core.sa_stats[self.sa_index]
        st.packets += 1
        st.bytes += outer_len
        if core.on_inbound_seq is not None:
            core.on_inbound_seq(self.sa_index, self.window.top)

    def _inner(self, core: PacketCore, buf: memoryview, q: int, n: int, nh: int, outer_tos: int,
               outer_len: int, out: list):
        """Check and forward the decrypted inner packet at buf[q:q + n]."""
        first = buf[q] if n else 0
        fast = outer_tos & 3 not in _ECN_MERGE
        if fast and nh == _IPIP and first == 0x45 and n >= ip.IPV4_HEADER_LEN:
            _tos, total, frag, ttl, proto = _V4_IN.unpack_from(buf, q)
            fast = ip.IPV4_HEADER_LEN <= total <= n
            version, hl, first_fragment = 4, ip.IPV4_HEADER_LEN, not frag & 0x1FFF
            src, dst = buf[q + 12:q + 16], buf[q + 16:q + 20]
        elif fast and nh == _IPV6_IN_IP and first >> 4 == 6 and n >= ip.IPV6_HEADER_LEN:
            _vtcfl, plen, proto, ttl = _V6_IN.unpack_from(buf, q)
            total = ip.IPV6_HEADER_LEN + plen
            fast = total <= n and proto not in _V6_EXT
            version, hl, first_fragment = 6, ip.IPV6_HEADER_LEN, True
            src, dst = buf[q + 8:q + 24], buf[q + 24:q + 40]
        else:
            fast = False
        if fast and (need := _L4_MIN.get(proto)) is not None and first_fragment and hl + need > total:
            fast = False  # a truncated upper-layer header: the general path drops it as BAD_INNER
        if not fast:
            return self._slow_inner(core, bytes(buf[q:q + n]), nh, outer_tos, outer_len, out)
        if (sels := self.selectors) is not None:
            sport = dport = 0
            if sels.ports and first_fragment:
                if proto in _PORT_PROTOS:
                    sport, dport = _PORTS.unpack_from(buf, q + hl)
                elif proto in _L4_MIN:  # ICMP: type and code stand for the ports (RFC 4301 §4.4.1.1)
                    sport, dport = buf[q + hl], buf[q + hl + 1]
            if not sels._match(sels.local, version, int.from_bytes(dst), proto, dport) or \
                    not sels._match(sels.remote, version, int.from_bytes(src), proto, sport):
                raise Drop(DropReason.SELECTOR_MISMATCH)
        self._account(core, outer_len, total)
        dst = bytes(dst)
        route = core.fib.get(dst)
        if route is None or total > route.mtu:  # ask/hold/no route, or fragment: PacketCore.forward
            core.forward(bytearray(buf[q:q + total]), out, decrement=True, sa_index=self.sa_index)
            return None
        if not route.local:  # a packet for this host keeps its TTL: the local stack receives it
            if ttl <= 1:
                raise Drop(DropReason.TTL_EXCEEDED)
            if version == 4:
                buf[q + 8] = ttl - 1
                _U16.pack_into(buf, q + 10, _ttl_checksum(_U16.unpack_from(buf, q + 10)[0]))
            else:
                buf[q + 7] = ttl - 1
        buf[q - ETH_HLEN:q] = route.eth4 if version == 4 else route.eth6
        return route.slot, q - ETH_HLEN, total + ETH_HLEN

    def _slow_inner(self, core: PacketCore, payload: bytes, nh: int, outer_tos: int, outer_len: int, out: list):
        """After decryption, the general path's steps on a copy (ECN merge, extension headers, odd packets)."""
        inner = tunnel_inner(nh, payload, outer_tos)
        if self.selectors is not None:
            check_selectors(self.sa, inner)
        self._account(core, outer_len, len(inner))
        core.forward(bytearray(inner), out, decrement=True, sa_index=self.sa_index)
        return None
