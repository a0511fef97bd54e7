"""Policies of IKE child instances from their negotiated selectors (xdpsec/coordinator.py, module docstring).

RFC 7296 §2.9: the responder may narrow the proposed selectors, and the SA then covers only the narrowed set;
RFC 4301 §4.4.1: the SPD entries an IKE-created SA needs come from its selectors. A `%any` responder therefore
gives each peer's instance its own OUT PROTECT (steering to that instance) and IN PROTECT entries, ahead of the
child's configured policies, which stay as the catch-all. The derivation, the merge order and the instance
names are pure functions: tables here, and a property against `xdpsec.spd.lookup` (the reference the XDP
classifier is tested against in tests/bpf/).
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpsec import config as configmod
from xdpsec.abi import Action, PolicyDir
from xdpsec.coordinator import (
    INSTANCE_POLICY_IDS,
    ChildPair,
    ChildPairs,
    PairState,
    base_child,
    instance_policies,
    merge_policies,
    needs_own_policies,
)
from xdpsec.ike.conf import IkeConnConfig
from xdpsec.ikeservice import instance_name
from xdpsec.sa import (
    Direction,
    Encr,
    Flow,
    Mode,
    PortRange,
    Protocol,
    SAParams,
    TrafficSelector,
    Transform,
    UdpEncap,
)
from xdpsec.spd import Policy, auto_priority, lookup, ordered

GCM = Transform(Encr.AES_GCM_16, 128)
HUB_LAN = "198.51.100.0/25"
SPOKES = "198.51.100.128/25"  # what the %any connection accepts
BASE = "hub/lan"


def ts(text: str) -> TrafficSelector:
    return configmod.parse_ts(text)


def out_sa(local: list[str], remote: list[str], peer: str = "192.0.2.11", encap: UdpEncap | None = None) -> SAParams:
    return SAParams(spi=0x1234, protocol=Protocol.ESP, direction=Direction.OUT, mode=Mode.TUNNEL, transform=GCM,
                    local=ipaddress.ip_address("2001:db8:f::1" if ":" in peer else "192.0.2.1"),
                    remote=ipaddress.ip_address(peer),
                    enc_key=bytes(20), encap=encap, local_ts=tuple(map(ts, local)),
                    remote_ts=tuple(map(ts, remote)))


def rows(policies: list[Policy]) -> list[tuple]:
    return [(p.direction, p.action, str(p.src), str(p.dst), p.proto, (p.sports.lo, p.sports.hi),
             (p.dports.lo, p.dports.hi), p.child) for p in policies]


ANY = (0, 65535)
INST = f"{BASE}[192.0.2.11]"

# (local_ts, remote_ts as negotiated) -> the policies' selectors, OUT first
DERIVATION = [
    pytest.param([HUB_LAN], ["198.51.100.128/27"],
                 [(PolicyDir.OUT, Action.PROTECT, HUB_LAN, "198.51.100.128/27", 0, ANY, ANY, INST),
                  (PolicyDir.IN, Action.PROTECT, "198.51.100.128/27", HUB_LAN, 0, ANY, ANY, INST)],
                 id="narrowed-subnet"),
    pytest.param([HUB_LAN, "2001:db8:a::/64"], ["198.51.100.130/32", "2001:db8:1::/64"],
                 [(PolicyDir.OUT, Action.PROTECT, HUB_LAN, "198.51.100.130/32", 0, ANY, ANY, INST),
                  (PolicyDir.OUT, Action.PROTECT, "2001:db8:a::/64", "2001:db8:1::/64", 0, ANY, ANY, INST),
                  (PolicyDir.IN, Action.PROTECT, "198.51.100.130/32", HUB_LAN, 0, ANY, ANY, INST),
                  (PolicyDir.IN, Action.PROTECT, "2001:db8:1::/64", "2001:db8:a::/64", 0, ANY, ANY, INST)],
                 id="two-families-never-crossed"),
    pytest.param(["198.51.100.10/32[tcp/443]"], ["198.51.100.130/32[tcp]"],
                 [(PolicyDir.OUT, Action.PROTECT, "198.51.100.10/32", "198.51.100.130/32", 6, (443, 443), ANY,
                   INST),
                  (PolicyDir.IN, Action.PROTECT, "198.51.100.130/32", "198.51.100.10/32", 6, ANY, (443, 443),
                   INST)],
                 id="protocol-and-port"),
    pytest.param([f"{HUB_LAN}[icmp/8]"], ["198.51.100.128/27[icmp]"],
                 # the ICMP type sits in the source-port slot in both directions (XFRM, config.py)
                 [(PolicyDir.OUT, Action.PROTECT, HUB_LAN, "198.51.100.128/27", 1, (8, 8), ANY, INST),
                  (PolicyDir.IN, Action.PROTECT, "198.51.100.128/27", HUB_LAN, 1, (8, 8), ANY, INST)],
                 id="icmp-type"),
    pytest.param(["198.51.100.10/32[udp]"], ["198.51.100.130/32[tcp]"], [], id="protocols-disjoint"),
]


@pytest.mark.parametrize(("local", "remote", "expected"), DERIVATION)
def test_policies_from_negotiated_selectors(local, remote, expected):
    assert rows(instance_policies(INST, out_sa(local, remote))) == expected


def test_automatic_priority_unless_the_child_sets_one():
    auto = instance_policies(INST, out_sa([HUB_LAN], ["198.51.100.128/27"]))
    assert [p.priority for p in auto] == [auto_priority(p) for p in auto]
    assert {p.priority for p in instance_policies(INST, out_sa([HUB_LAN], ["198.51.100.128/27"]), 7)} == {7}


def _configured(remote: str = SPOKES, priority: int = 0) -> list[Policy]:
    """The %any child's policies as config.py writes them (ids 1..n), plus an unrelated pass shunt."""
    pols = []
    for direction, src, dst in ((PolicyDir.OUT, HUB_LAN, remote), (PolicyDir.IN, remote, HUB_LAN)):
        p = Policy(0, BASE, direction, Action.PROTECT, priority, ipaddress.ip_network(src),
                   ipaddress.ip_network(dst), child=BASE)
        pols.append(p if priority else Policy(**{**p.__dict__, "priority": auto_priority(p)}))
    shunt = Policy(0, "hub/mgmt", PolicyDir.OUT, Action.BYPASS, 0, ipaddress.ip_network(HUB_LAN),
                   ipaddress.ip_network("203.0.113.0/24"))
    return ordered([*pols, Policy(**{**shunt.__dict__, "priority": auto_priority(shunt)})])


def _numbered(policies: list[Policy], start: int = INSTANCE_POLICY_IDS) -> list[Policy]:
    return [Policy(**{**p.__dict__, "id": i}) for i, p in enumerate(policies, start)]


def flow(src: str, dst: str, proto: int = 1, sport: int = 8) -> Flow:
    return Flow(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, 0)


def test_instances_come_before_the_catch_all_and_configured_ids_stay():
    configured = _configured()
    one = _numbered(instance_policies(f"{BASE}[192.0.2.11]", out_sa([HUB_LAN], ["198.51.100.128/27"])))
    two = _numbered(instance_policies(f"{BASE}[192.0.2.12]", out_sa([HUB_LAN], ["198.51.100.160/27"])), 1 << 25)
    spd = merge_policies(configured, {f"{BASE}[192.0.2.11]": one, f"{BASE}[192.0.2.12]": two})
    # every configured policy is still there with its id, in its relative order
    assert [p for p in spd if p.id < INSTANCE_POLICY_IDS] == configured
    names = [p.child for p in spd if p.direction == PolicyDir.OUT and p.action == Action.PROTECT]
    assert names == [f"{BASE}[192.0.2.11]", f"{BASE}[192.0.2.12]", BASE]
    # each peer's traffic goes to its own instance; the rest of the %any range to the catch-all (no SA: drop)
    table = [("198.51.100.10", "198.51.100.130", f"{BASE}[192.0.2.11]"),
             ("198.51.100.10", "198.51.100.170", f"{BASE}[192.0.2.12]"),
             ("198.51.100.10", "198.51.100.200", BASE)]
    for src, dst, child in table:
        assert lookup(spd, PolicyDir.OUT, flow(src, dst)).child == child, (src, dst)
        assert lookup(spd, PolicyDir.IN, flow(dst, src)).child == child, (dst, src)
    assert lookup(spd, PolicyDir.OUT, flow("198.51.100.10", "203.0.113.5")).action == Action.BYPASS


def test_same_priority_class_instance_first_and_more_specific_first():
    """A child with an explicit priority: its instances share it, and win ties against the configured policy,
    the narrower instance first even if it came later."""
    configured = _configured(priority=100)
    wide = _numbered(instance_policies(f"{BASE}[192.0.2.11]", out_sa([HUB_LAN], [SPOKES]), 100))
    narrow = _numbered(instance_policies(f"{BASE}[192.0.2.12]", out_sa([HUB_LAN], ["198.51.100.130/32"]), 100))
    spd = merge_policies(configured, {f"{BASE}[192.0.2.11]": wide, f"{BASE}[192.0.2.12]": narrow})
    out = [p.child for p in spd if p.direction == PolicyDir.OUT and p.priority == 100]
    assert out == [f"{BASE}[192.0.2.12]", f"{BASE}[192.0.2.11]", BASE]
    assert lookup(spd, PolicyDir.OUT, flow("198.51.100.10", "198.51.100.130")).child == f"{BASE}[192.0.2.12]"
    assert lookup(spd, PolicyDir.OUT, flow("198.51.100.10", "198.51.100.131")).child == f"{BASE}[192.0.2.11]"


def test_without_instances_the_spd_is_the_configuration():
    assert merge_policies(_configured(), {}) == _configured()


@pytest.mark.parametrize(("remote", "any_peer", "needed"), [
    pytest.param(SPOKES, False, False, id="one-peer-as-configured"),
    pytest.param("198.51.100.128/27", False, True, id="one-peer-narrowed"),
    pytest.param(SPOKES, True, True, id="any-peer-even-unnarrowed"),
    pytest.param("198.51.100.128/27", True, True, id="any-peer-narrowed"),
])
def test_which_instances_need_policies_of_their_own(remote, any_peer, needed):
    derived = instance_policies(BASE, out_sa([HUB_LAN], [remote]))
    configured = [p for p in _configured() if p.child == BASE]
    assert needs_own_policies(derived, configured, any_peer=any_peer) is needed


def _conn(remote_addrs: tuple) -> IkeConnConfig:
    return IkeConnConfig(name="hub", local_addrs=(ipaddress.ip_address("192.0.2.1"),), remote_addrs=remote_addrs,
                         proposals=(), local=None, remote=None, children=())  # type: ignore[arg-type]


@pytest.mark.parametrize(("remote_addrs", "peer", "encap", "name"), [
    pytest.param((ipaddress.ip_address("192.0.2.11"),), "192.0.2.11", None, BASE, id="configured-peer"),
    pytest.param((), "192.0.2.11", None, f"{BASE}[192.0.2.11]", id="any-peer"),
    pytest.param((), "192.0.2.11", UdpEncap(4500, 4500), f"{BASE}[192.0.2.11]", id="encap-no-nat"),
    pytest.param((), "192.0.2.3", UdpEncap(4500, 31000), f"{BASE}[192.0.2.3]:31000", id="behind-a-nat"),
    pytest.param((), "2001:db8:f::11", None, f"{BASE}[2001:db8:f::11]", id="ipv6"),
])
def test_instance_names(remote_addrs, peer, encap, name):
    sa = out_sa([HUB_LAN], [SPOKES], peer=peer, encap=encap)
    assert instance_name(_conn(remote_addrs), "hub", "lan", sa) == name
    assert base_child(name) == BASE


def test_pairs_are_per_instance():
    """A second peer's pair must not retire the first peer's (the limitation this design removes)."""
    pairs = ChildPairs()
    one, two = ChildPair(1, 2, 0x101, 0x201), ChildPair(3, 4, 0x102, 0x202)
    pairs.add(f"{BASE}[192.0.2.11]", one, activate=True)
    pairs.add(f"{BASE}[192.0.2.12]", two, activate=True)
    assert one.state == two.state == PairState.ACTIVE
    assert pairs.instances(BASE) == [f"{BASE}[192.0.2.11]", f"{BASE}[192.0.2.12]"]
    pairs.remove(f"{BASE}[192.0.2.11]", one)
    assert pairs.instances(BASE) == [f"{BASE}[192.0.2.12]"] and pairs.active(f"{BASE}[192.0.2.12]") is two
    assert pairs.instances("hub/other") == []


@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4, unique=True),
       st.integers(min_value=128, max_value=255))
def test_every_address_goes_to_its_own_instance_or_the_catch_all(peers, host):
    """Property: peers own disjoint /27s of the %any range; a flow to any address of it is steered to the
    instance owning that address, or to the configured catch-all if no peer owns it, in both directions."""
    instances = {}
    for i in peers:
        name = f"{BASE}[192.0.2.{11 + i}]"
        net = f"198.51.100.{128 + 32 * i}/27"
        instances[name] = _numbered(instance_policies(name, out_sa([HUB_LAN], [net])), INSTANCE_POLICY_IDS + 8 * i)
    spd = merge_policies(_configured(), instances)
    dst = f"198.51.100.{host}"
    owner = (host - 128) // 32
    expected = f"{BASE}[192.0.2.{11 + owner}]" if owner in peers else BASE
    assert lookup(spd, PolicyDir.OUT, flow("198.51.100.10", dst)).child == expected
    assert lookup(spd, PolicyDir.IN, flow(dst, "198.51.100.10")).child == expected


def test_port_ranges_survive():
    (out, _inb) = instance_policies(INST, out_sa(["198.51.100.10/32[udp/1000-2000]"], ["198.51.100.130/32[udp]"]))
    assert out.sports == PortRange(1000, 2000) and out.dports.is_any
