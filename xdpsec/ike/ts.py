"""Traffic selectors for IKEv2: wire ranges, our prefix selectors, and narrowing (RFC 7296 §2.9).

The SPD and the SAD speak `xdpsec.sa.TrafficSelector` (a prefix, a protocol, a port range); IKEv2 speaks
address *ranges* (§3.13.1). Narrowing works on ranges, `TsRange`, because the intersection of two prefixes
with different port ranges, or of a peer's arbitrary range with a prefix, is a range. Converting back to
our selectors splits a range that is not a prefix into the fewest prefixes that cover it exactly, so
`192.0.2.1-192.0.2.6` becomes four selectors (.1/32, .2/31, .4/31, .6/32): same traffic, more SPD entries.

ICMP and ICMPv6 carry the message type and code in the "port" fields of an IKEv2 selector (type in the
high octet, §3.13.1); `sa.TrafficSelector` keeps just the type, as XFRM does, so the conversion shifts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xdpsec.ike import wire
from xdpsec.ike.consts import TsType
from xdpsec.sa import PortRange, TrafficSelector

#: IP protocols whose "ports" are ICMP type/code (RFC 7296 §3.13.1, RFC 4301 §4.4.1.1).
_ICMP_PROTOS = frozenset({1, 58})
_TS_TYPE = {4: TsType.IPV4_ADDR_RANGE, 6: TsType.IPV6_ADDR_RANGE}
_VERSION = {int(v): k for k, v in _TS_TYPE.items()}
_ADDR_LEN = {4: 4, 6: 16}


@dataclass(frozen=True, order=True)
class TsRange:
    """One IKEv2 traffic selector as integers: family, protocol (0 = any), port range, address range."""

    version: int
    proto: int
    start_port: int
    end_port: int
    start: int
    end: int

    @classmethod
    def from_selector(cls, ts: TrafficSelector) -> TsRange:
        lo, hi = ts.ports.lo, ts.ports.hi
        if ts.proto in _ICMP_PROTOS and not ts.ports.is_any:
            lo, hi = lo << 8, (hi << 8) | 0xFF  # every code of the configured types
        net = ts.net
        return cls(net.version, ts.proto, lo, hi, int(net.network_address), int(net.broadcast_address))

    def selectors(self) -> list[TrafficSelector]:
        """Our prefix selectors covering exactly this range (several when it is not a prefix)."""
        lo, hi = self.start_port, self.end_port
        if self.proto in _ICMP_PROTOS and (lo, hi) != (0, 0xFFFF):
            lo, hi = lo >> 8, hi >> 8  # codes are not expressible in sa.TrafficSelector; keep the types
        ports = PortRange(lo, hi)
        addr = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        nets = ipaddress.summarize_address_range(addr(self.start), addr(self.end))
        return [TrafficSelector(net, self.proto, ports) for net in nets]

    def to_wire(self) -> wire.TrafficSelector:
        n = _ADDR_LEN[self.version]
        return wire.TrafficSelector(_TS_TYPE[self.version], self.proto, self.start_port, self.end_port,
                                    self.start.to_bytes(n, "big"), self.end.to_bytes(n, "big"))

    @classmethod
    def from_wire(cls, ts: wire.TrafficSelector) -> TsRange:
        return cls(_VERSION[int(ts.ts_type)], ts.ip_proto, ts.start_port, ts.end_port,
                   int.from_bytes(ts.start, "big"), int.from_bytes(ts.end, "big"))

    def intersect(self, other: TsRange) -> TsRange | None:
        """The traffic both selectors cover, or None. Protocol 0 means any (§3.13.1)."""
        if self.version != other.version:
            return None
        if self.proto and other.proto and self.proto != other.proto:
            return None
        start_port, end_port = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        start, end = max(self.start, other.start), min(self.end, other.end)
        if start_port > end_port or start > end:
            return None
        return TsRange(self.version, self.proto or other.proto, start_port, end_port, start, end)


def ranges(selectors: Iterable[TrafficSelector]) -> list[TsRange]:
    return [TsRange.from_selector(ts) for ts in selectors]


def selectors(rs: Iterable[TsRange]) -> tuple[TrafficSelector, ...]:
    out: list[TrafficSelector] = []
    for r in rs:
        out.extend(ts for ts in r.selectors() if ts not in out)
    return tuple(out)


def to_wire(rs: Iterable[TsRange]) -> wire.TS:
    return wire.TS(tuple(r.to_wire() for r in rs))


def from_wire(ts: wire.TS) -> list[TsRange]:
    """The ranges of a TS payload; selector types we do not know are skipped (§3.13.1: types are extensible,
    a responder narrows them away)."""
    return [TsRange.from_wire(s) for s in ts.selectors if int(s.ts_type) in _VERSION]


def narrow(proposed: Sequence[TsRange], allowed: Sequence[TsRange]) -> list[TsRange]:
    """§2.9: the part of what the peer proposed that our policy allows, in the peer's order.

    The peer's first selector may be the packet that triggered the exchange (§2.9: "a very specific Traffic
    Selector including the addresses in the packet"); keeping its order puts the intersection holding that
    packet first. Empty means TS_UNACCEPTABLE. Duplicates (a range inside two allowed ranges) appear once.
    """
    out: list[TsRange] = []
    for p in proposed:
        for a in allowed:
            r = p.intersect(a)
            if r is not None and r not in out:
                out.append(r)
    return out


def covers(outer: Sequence[TsRange], inner: Sequence[TsRange]) -> bool:
    """Does every range of `inner` lie within one range of `outer`? An initiator checks with this that the
    responder only narrowed (§2.9: the responder's selectors MUST be a subset of the initiator's)."""
    return all(any(o.intersect(i) == i for o in outer) for i in inner)


def overlaps(a_local: Iterable[TrafficSelector], a_remote: Iterable[TrafficSelector],
             b_local: Iterable[TrafficSelector], b_remote: Iterable[TrafficSelector]) -> bool:
    """Could one packet belong to both child SAs, (a_local <-> a_remote) and (b_local <-> b_remote)? Both
    sides must meet. A %any responder refuses a second peer selectors another peer's child holds (§2.9)."""
    return _meet(a_local, b_local) and _meet(a_remote, b_remote)


def _meet(a: Iterable[TrafficSelector], b: Iterable[TrafficSelector]) -> bool:
    bs = ranges(b)
    return any(x.intersect(y) is not None for x in ranges(a) for y in bs)
