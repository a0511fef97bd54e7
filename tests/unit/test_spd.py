"""The SPD matcher: first match in priority order, strongSwan's automatic priorities, and a brute-force check."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.abi import Action, PolicyDir
from xdpsec.sa import ANY_PORT, Flow, PortRange
from xdpsec.spd import PRIO_BASE, Policy, auto_priority, covers, lookup, matches, ordered

OUT, IN = PolicyDir.OUT, PolicyDir.IN
BYPASS, DISCARD, PROTECT = Action.BYPASS, Action.DISCARD, Action.PROTECT
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58


def pol(name, src, dst, action=PROTECT, direction=OUT, priority=0, proto=0, sports=ANY_PORT, dports=ANY_PORT):
    p = Policy(id=0, name=name, direction=direction, action=action, priority=priority,
               src=ipaddress.ip_network(src), dst=ipaddress.ip_network(dst), proto=proto, sports=sports,
               dports=dports)
    return p if priority else Policy(**{**p.__dict__, "priority": auto_priority(p)})


def flow(src, dst, proto=TCP, sport=40000, dport=80):
    return Flow(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport)


SPD = ordered([
    pol("tunnel", "198.51.100.0/24", "203.0.113.0/24"),
    pol("web-drop", "198.51.100.0/24", "203.0.113.0/24", DISCARD, proto=TCP, dports=PortRange(80, 80)),
    pol("dns-pass", "198.51.100.0/24", "203.0.113.53/32", BYPASS, proto=UDP, dports=PortRange(53, 53)),
    pol("ping-drop", "198.51.100.0/24", "203.0.113.0/24", DISCARD, proto=ICMP, sports=PortRange(8, 8)),
    pol("tunnel-in", "203.0.113.0/24", "198.51.100.0/24", direction=IN),
    pol("v6", "2001:db8:1::/48", "2001:db8:2::/48"),
    pol("v6-high-ports", "2001:db8:1::/48", "2001:db8:2::/48", DISCARD, proto=UDP,
        dports=PortRange(1024, 65535)),
    pol("manual-first", "192.0.2.0/24", "192.0.2.0/24", BYPASS, priority=1),
])


@pytest.mark.parametrize("direction,f,expected", [
    (OUT, flow("198.51.100.7", "203.0.113.9", TCP, 40000, 80), "web-drop"),  # port rule beats the tunnel
    (OUT, flow("198.51.100.7", "203.0.113.9", TCP, 40000, 443), "tunnel"),
    (OUT, flow("198.51.100.7", "203.0.113.9", UDP, 40000, 80), "tunnel"),  # port 80, but not TCP
    (OUT, flow("198.51.100.7", "203.0.113.53", UDP, 5353, 53), "dns-pass"),
    (OUT, flow("198.51.100.7", "203.0.113.54", UDP, 5353, 53), "tunnel"),
    (OUT, flow("198.51.100.7", "203.0.113.9", ICMP, 8, 0), "ping-drop"),  # echo request: type 8
    (OUT, flow("198.51.100.7", "203.0.113.9", ICMP, 0, 0), "tunnel"),  # echo reply: type 0
    (OUT, flow("198.51.100.7", "203.0.113.9", TCP, 0, 0), "tunnel"),  # non-first fragment: no ports
    (OUT, flow("203.0.113.9", "198.51.100.7"), None),  # that is the IN direction
    (IN, flow("203.0.113.9", "198.51.100.7"), "tunnel-in"),
    (IN, flow("198.51.100.7", "203.0.113.9"), None),
    (OUT, flow("2001:db8:1::1", "2001:db8:2::1", UDP, 5000, 1023), "v6"),
    (OUT, flow("2001:db8:1::1", "2001:db8:2::1", UDP, 5000, 1024), "v6-high-ports"),
    (OUT, flow("2001:db8:1::1", "2001:db8:3::1", UDP, 5000, 1024), None),
    (OUT, flow("::ffff:198.51.100.7", "::ffff:203.0.113.9"), None),  # v4-mapped is IPv6: no v4 policy
    (OUT, flow("192.0.2.1", "192.0.2.2"), "manual-first"),
])
def test_lookup(direction, f, expected):
    found = lookup(SPD, direction, f)
    assert (found.name if found else None) == expected


def test_ordered_is_stable_and_numbers_from_one():
    a, b, c = (pol(n, "192.0.2.0/24", "198.51.100.0/24", priority=5) for n in "abc")
    first = pol("first", "192.0.2.0/24", "198.51.100.0/24", priority=1)
    result = ordered([a, b, first, c])
    assert [p.name for p in result] == ["first", "a", "b", "c"]
    assert [p.id for p in result] == [1, 2, 3, 4]


def test_auto_priority_is_strongswans_formula():
    # kernel_netlink_ipsec.c get_priority: base - 512 * prefix bits - 256 for a protocol - 4 * port mask bits
    assert auto_priority(pol("x", "0.0.0.0/0", "0.0.0.0/0")) == 2 * PRIO_BASE
    assert auto_priority(pol("x", "0.0.0.0/0", "0.0.0.0/0", BYPASS)) == PRIO_BASE
    exact = pol("x", "192.0.2.1/32", "192.0.2.2/32", proto=TCP, sports=PortRange(1, 1), dports=PortRange(80, 80))
    assert auto_priority(exact) == 2 * PRIO_BASE - 512 * 64 - 256 - 4 * 32
    assert auto_priority(pol("x", "0.0.0.0/0", "0.0.0.0/0", proto=TCP, dports=PortRange(0, 255))) == \
        2 * PRIO_BASE - 256 - 4 * 8


@pytest.mark.parametrize("specific,general", [
    (pol("a", "192.0.2.0/25", "0.0.0.0/0"), pol("b", "192.0.2.0/24", "0.0.0.0/0")),
    (pol("a", "192.0.2.0/24", "0.0.0.0/0", proto=UDP), pol("b", "192.0.2.0/24", "0.0.0.0/0")),
    (pol("a", "0.0.0.0/0", "0.0.0.0/0", proto=UDP, dports=PortRange(53, 53)),
     pol("b", "0.0.0.0/0", "0.0.0.0/0", proto=UDP, dports=PortRange(1024, 65535))),
    # one prefix bit outweighs any protocol and port narrowing
    (pol("a", "192.0.2.0/25", "0.0.0.0/0"),
     pol("b", "192.0.2.0/24", "0.0.0.0/0", proto=TCP, sports=PortRange(1, 1), dports=PortRange(2, 2))),
    # a pass shunt beats the most specific IPsec policy (POLICY_PRIORITY_PASS)
    (pol("a", "0.0.0.0/0", "0.0.0.0/0", BYPASS), pol("b", "192.0.2.1/32", "192.0.2.2/32", proto=TCP)),
    (pol("a", "2001:db8::/64", "::/0"), pol("b", "2001:db8::/48", "::/0")),
])
def test_auto_priority_orders_specific_first(specific, general):
    assert auto_priority(specific) < auto_priority(general)


@pytest.mark.parametrize("outer,inner,expected", [
    (pol("o", "192.0.2.0/24", "0.0.0.0/0"), pol("i", "192.0.2.0/25", "198.51.100.0/24"), True),
    (pol("o", "192.0.2.0/25", "0.0.0.0/0"), pol("i", "192.0.2.0/24", "198.51.100.0/24"), False),
    (pol("o", "0.0.0.0/0", "0.0.0.0/0"), pol("i", "0.0.0.0/0", "0.0.0.0/0", proto=TCP), True),
    (pol("o", "0.0.0.0/0", "0.0.0.0/0", proto=TCP), pol("i", "0.0.0.0/0", "0.0.0.0/0"), False),
    (pol("o", "0.0.0.0/0", "0.0.0.0/0", proto=TCP, dports=PortRange(1, 100)),
     pol("i", "0.0.0.0/0", "0.0.0.0/0", proto=TCP, dports=PortRange(80, 80)), True),
    (pol("o", "0.0.0.0/0", "0.0.0.0/0", proto=TCP, dports=PortRange(1, 79)),
     pol("i", "0.0.0.0/0", "0.0.0.0/0", proto=TCP, dports=PortRange(79, 80)), False),
    (pol("o", "::/0", "::/0"), pol("i", "0.0.0.0/0", "0.0.0.0/0"), False),
])
def test_covers(outer, inner, expected):
    assert covers(outer, inner) is expected


# --- property: lookup == a brute-force reference written without ipaddress containment -------------------------

_NETS = ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.128/25", "198.51.100.64/26", "198.51.100.7/32",
         "0.0.0.0/0"]
_ranges = st.one_of(st.just(ANY_PORT), st.tuples(st.integers(0, 9), st.integers(0, 9)).map(
    lambda t: PortRange(min(t), max(t))))
_policies = st.builds(
    lambda src, dst, action, direction, priority, proto, sports, dports: Policy(
        0, "p", direction, action, priority, ipaddress.ip_network(src), ipaddress.ip_network(dst),
        proto, sports if proto else ANY_PORT, dports if proto else ANY_PORT),
    st.sampled_from(_NETS), st.sampled_from(_NETS), st.sampled_from(list(Action)), st.sampled_from([OUT, IN]),
    st.integers(1, 4), st.sampled_from([0, TCP, UDP, ICMP]), _ranges, _ranges)
_flows = st.builds(
    lambda s, d, proto, sp, dp: Flow(ipaddress.ip_address(f"198.51.100.{s}"), ipaddress.ip_address(f"198.51.100.{d}"),
                                     proto, sp, dp),
    st.sampled_from([0, 7, 63, 64, 100, 127, 128, 200, 255]), st.sampled_from([0, 7, 64, 128, 255]),
    st.sampled_from([TCP, UDP, ICMP, 47]), st.integers(0, 10), st.integers(0, 10))


def _in_net(addr, net) -> bool:
    mask = ((1 << 32) - 1) ^ ((1 << (32 - net.prefixlen)) - 1)
    return int(addr) & mask == int(net.network_address)


def _reference(policies, direction, f):
    """The matching policy with the lowest (priority, configuration index), by exhaustive search."""
    hits = [(p.priority, i, p) for i, p in enumerate(policies) if p.direction == direction
            and _in_net(f.src, p.src) and _in_net(f.dst, p.dst) and p.proto in (0, f.proto)
            and p.sports.lo <= f.sport <= p.sports.hi and p.dports.lo <= f.dport <= p.dports.hi]
    return min(hits, key=lambda h: h[:2])[1] if hits else None


@settings(max_examples=300)
@given(st.lists(_policies, max_size=12).map(lambda ps: [Policy(**{**p.__dict__, "name": str(i)})
                                                        for i, p in enumerate(ps)]),
       st.sampled_from([OUT, IN]), _flows)
def test_lookup_equals_brute_force(policies, direction, f):
    found = lookup(ordered(policies), direction, f)
    expected = _reference(policies, direction, f)
    assert (int(found.name) if found else None) == expected


@given(_policies, _policies, _flows)
def test_covers_implies_every_match(outer, inner, f):
    if covers(outer, inner) and matches(inner, f):
        assert matches(outer, f)
