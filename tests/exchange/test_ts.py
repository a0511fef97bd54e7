"""Traffic selector narrowing (RFC 7296 §2.9) and conversion between prefixes and wire ranges (§3.13.1)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpsec.ike import ts, wire
from xdpsec.ike.consts import TsType
from xdpsec.sa import PortRange, TrafficSelector


def sel(text: str) -> ts.TsRange:
    """'198.51.100.0/24', '198.51.100.0/24 tcp 80-90', '192.0.2.1-192.0.2.6', with 'icmp 8' for ICMP echo."""
    parts = text.split()
    addr, proto, ports = parts[0], 0, PortRange()
    if len(parts) > 1:
        proto = {"tcp": 6, "udp": 17, "icmp": 1}[parts[1]]
    if len(parts) > 2:
        lo, _, hi = parts[2].partition("-")
        ports = PortRange(int(lo), int(hi or lo))
    if "-" in addr:
        lo, hi = (ipaddress.ip_address(x) for x in addr.split("-"))
        r = ts.TsRange.from_selector(TrafficSelector(ipaddress.ip_network(f"{lo}/32"), proto, ports))
        return ts.TsRange(r.version, r.proto, r.start_port, r.end_port, int(lo), int(hi))
    return ts.TsRange.from_selector(TrafficSelector(ipaddress.ip_network(addr), proto, ports))


# (proposed by the initiator, allowed by our policy, the narrowed result)
NARROWING = [
    (["198.51.100.0/24"], ["198.51.100.0/24"], ["198.51.100.0/24"]),
    (["198.51.100.0/24"], ["198.51.100.0/25"], ["198.51.100.0/25"]),                 # we narrow
    (["198.51.100.0/25"], ["198.51.100.0/24"], ["198.51.100.0/25"]),                 # they asked for less
    (["198.51.100.0/25"], ["198.51.100.128/25"], []),                                # TS_UNACCEPTABLE
    (["198.51.100.0/24"], ["2001:db8::/32"], []),                                     # families differ
    (["198.51.100.0/24 tcp"], ["198.51.100.0/24"], ["198.51.100.0/24 tcp"]),          # any proto admits tcp
    (["198.51.100.0/24"], ["198.51.100.0/24 udp 53"], ["198.51.100.0/24 udp 53"]),
    (["198.51.100.0/24 tcp"], ["198.51.100.0/24 udp"], []),                           # protocols differ
    (["198.51.100.0/24 tcp 80-90"], ["198.51.100.0/24 tcp 85-100"], ["198.51.100.0/24 tcp 85-90"]),
    # §2.9: the initiator's first selector is the packet that triggered it; its intersection stays first
    (["198.51.100.7/32 tcp 443", "198.51.100.0/24"], ["198.51.100.0/24"],
     ["198.51.100.7/32 tcp 443", "198.51.100.0/24"]),
    (["198.51.100.0/24"], ["198.51.100.0/26", "198.51.100.192/26"], ["198.51.100.0/26", "198.51.100.192/26"]),
    (["192.0.2.1-192.0.2.6"], ["192.0.2.4/30"], ["192.0.2.4-192.0.2.6"]),             # ranges, not prefixes
]


@pytest.mark.parametrize(("proposed", "allowed", "result"), NARROWING)
def test_narrow(proposed, allowed, result):
    assert ts.narrow([sel(p) for p in proposed], [sel(a) for a in allowed]) == [sel(r) for r in result]


def test_covers_accepts_only_narrowing():
    ours = [sel("198.51.100.0/24")]
    assert ts.covers(ours, [sel("198.51.100.0/25")])
    assert ts.covers(ours, [sel("198.51.100.0/24 tcp 80")])
    assert not ts.covers(ours, [sel("198.51.100.0/23")])
    assert not ts.covers([sel("198.51.100.0/24 tcp")], [sel("198.51.100.0/24")])  # any proto is wider


def test_non_prefix_range_is_split_into_prefixes():
    r = sel("192.0.2.1-192.0.2.6")
    assert [str(s.net) for s in r.selectors()] == ["192.0.2.1/32", "192.0.2.2/31", "192.0.2.4/31", "192.0.2.6/32"]


def test_icmp_type_maps_to_the_high_octet():
    # §3.13.1: for ICMP the "port" is Type (high octet) and Code (low octet).
    echo = TrafficSelector(ipaddress.ip_network("192.0.2.0/24"), 1, PortRange(8, 8))
    r = ts.TsRange.from_selector(echo)
    assert (r.start_port, r.end_port) == (0x0800, 0x08FF)
    assert r.selectors() == [echo]


def test_wire_round_trip():
    ranges = [sel("198.51.100.0/24 tcp 80-90"), sel("2001:db8::/48")]
    payload = ts.to_wire(ranges)
    assert payload.selectors[0] == wire.TrafficSelector(TsType.IPV4_ADDR_RANGE, 6, 80, 90,
                                                        bytes([198, 51, 100, 0]), bytes([198, 51, 100, 255]))
    assert ts.from_wire(payload) == ranges


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_split_covers_exactly_the_range(x, y):
    lo, hi = min(x, y), max(x, y)
    r = ts.TsRange(4, 0, 0, 65535, lo, hi)
    nets = [s.net for s in r.selectors()]
    assert int(nets[0].network_address) == lo and int(nets[-1].broadcast_address) == hi
    assert sum(n.num_addresses for n in nets) == hi - lo + 1       # no gaps, no overlaps (they are sorted)
    assert all(int(a.broadcast_address) + 1 == int(b.network_address) for a, b in itertools.pairwise(nets))
