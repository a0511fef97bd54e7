"""Differential test: the classifier's SPD decision equals xdpsec.spd's for random policies and flows.

Policies and flows are drawn from small pools of documentation addresses, prefixes, protocols and ports so that
overlaps (and therefore first-match order, OUT/IN interplay and default actions) are common. The expected
decision is the rule of xdpsec/bpf/include/spd.h written with `spd.lookup`, the Python reference of the matcher.
Larger cases scatter the drawn policies among fillers over up to a full bank, so that the XDP walk's chunks (one
run of the SPD program each, chained by tail calls) and their boundaries are crossed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6Unknown, IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether

from xdpsec import spd
from xdpsec.abi import XS_MAX_POLICIES, Action, DropReason, Kind, PolicyDir
from xdpsec.io.bpf import XdpAction
from xdpsec.sa import Flow, PortRange

pytestmark = pytest.mark.bpf

ADDRS = {
    4: ["192.0.2.1", "192.0.2.2", "192.0.2.129", "198.51.100.1", "198.51.100.77", "203.0.113.5"],
    6: ["2001:db8::1", "2001:db8::2", "2001:db8:0:1::1", "2001:db8:1::9"],
}
PREFIXES = {4: [0, 8, 24, 25, 30, 32], 6: [0, 32, 48, 64, 128]}
PROTOS = {4: [0, 1, 6, 17, 50, 47], 6: [0, 58, 6, 17, 50]}
PORTS = [0, 22, 53, 80, 443, 1024, 40000, 65535]  # never 500/4500: IKE and NAT-T skip the SPD
ICMP_VALUES = [0, 3, 8, 128]
FLOWS_PER_CASE = 150
CHILDREN = ["a", "b", "c"]


def rand_net(rng, version):
    addr = ipaddress.ip_address(rng.choice(ADDRS[version]))
    return ipaddress.ip_network((addr, rng.choice(PREFIXES[version])), strict=False)


def rand_range(rng, pool):
    kind = rng.random()
    if kind < 0.5:
        return PortRange()
    lo, hi = sorted((rng.choice(pool), rng.choice(pool)))
    return PortRange(lo, lo) if kind < 0.75 else PortRange(lo, hi)


def rand_policy(rng, pid):
    version = rng.choice((4, 6))
    proto = rng.choice(PROTOS[version])
    pool = ICMP_VALUES if proto in (1, 58) else PORTS
    action = rng.choice(list(Action))
    direction = rng.choice(list(PolicyDir))
    return spd.Policy(
        id=pid, name=f"p{pid}", direction=direction, action=action, priority=rng.randrange(5),
        src=rand_net(rng, version), dst=rand_net(rng, version), proto=proto,
        sports=rand_range(rng, pool), dports=rand_range(rng, pool),
        child=rng.choice(CHILDREN) if action == Action.PROTECT and direction == PolicyDir.OUT else None)


def rand_flow(rng) -> Flow:
    version = rng.choice((4, 6))
    proto = rng.choice([p for p in PROTOS[version] if p])
    pool = ICMP_VALUES if proto in (1, 58) else PORTS
    ported = proto in (1, 58, 6, 17)
    return Flow(src=ipaddress.ip_address(rng.choice(ADDRS[version])),
                dst=ipaddress.ip_address(rng.choice(ADDRS[version])), proto=proto,
                sport=rng.choice(pool) if ported else 0, dport=rng.choice(pool) if ported else 0)


def frame(flow: Flow) -> bytes:
    ip = (IP if flow.src.version == 4 else IPv6)(src=str(flow.src), dst=str(flow.dst))
    l4 = {
        6: lambda: TCP(sport=flow.sport, dport=flow.dport),
        17: lambda: UDP(sport=flow.sport, dport=flow.dport),
        1: lambda: ICMP(type=flow.sport, code=flow.dport),
        58: lambda: ICMPv6Unknown(type=flow.sport, code=flow.dport),
        50: lambda: ESP(spi=0x4242, seq=1, data=b"\0" * 16),  # no SA and no local address: just traffic
    }.get(flow.proto, lambda: b"\0" * 8)()
    if flow.src.version == 4 and flow.proto == 47:
        ip.proto = 47
    elif flow.proto == 47:
        ip.nh = 47
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4)


def expected(policies, sas, default, flow):
    """(verdict, drop reason, (policy id, SA index) when steered): the rule of spd.h via spd.lookup."""
    out = spd.lookup(policies, PolicyDir.OUT, flow)
    inbound = spd.lookup(policies, PolicyDir.IN, flow)
    if out is not None and out.action == Action.PROTECT:
        if out.child not in sas:
            return XdpAction.DROP, DropReason.NO_SA, None
        return XdpAction.REDIRECT, None, (out.id, sas[out.child])
    if out is not None and out.action == Action.DISCARD:
        return XdpAction.DROP, DropReason.POLICY_DISCARD, None
    if inbound is not None:
        return {
            Action.PROTECT: (XdpAction.DROP, DropReason.POLICY_CLEARTEXT, None),
            Action.DISCARD: (XdpAction.DROP, DropReason.POLICY_DISCARD, None),
            Action.BYPASS: (XdpAction.PASS, None, None),
        }[inbound.action]
    if out is not None or default == Action.BYPASS:
        return XdpAction.PASS, None, None
    return XdpAction.DROP, DropReason.POLICY_DISCARD, None


def filler(rng, pid):
    """A policy no drawn flow matches (its source is outside ADDRS): it only pushes the others down the bank."""
    version = rng.choice((4, 6))
    src = ipaddress.ip_network("203.0.113.200/32" if version == 4 else "2001:db8:ffff::1/128")
    return spd.Policy(id=pid, name=f"f{pid}", direction=rng.choice(list(PolicyDir)), action=rng.choice(list(Action)),
                      priority=0, src=src, dst=rand_net(rng, version), child="a")


def spread(rng, policies, total):
    """`policies` in their order, scattered among fillers up to `total` rows, renumbered 1..total: the
    matches then fall in different chunks of the XDP walk (spd.h), including the last."""
    slots = sorted(rng.sample(range(total), len(policies)))
    rows = [filler(rng, 0) for _ in range(total)]
    for slot, policy in zip(slots, policies, strict=True):
        rows[slot] = policy
    return [dataclasses.replace(p, id=i) for i, p in enumerate(rows, start=1)]


#: (seed, rows in the bank): small SPDs, then ones the walk crosses chunk boundaries of, up to a full bank.
CASES = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 257), (5, 1000), (6, 2500), (7, XS_MAX_POLICIES)]


@pytest.mark.parametrize(("seed", "total"), CASES)
def test_classifier_agrees_with_reference(clf, run, seed, total):
    rng = random.Random(seed)
    policies = sorted((rand_policy(rng, pid) for pid in range(1, rng.randrange(5, 60))),
                      key=lambda p: p.priority)
    if total:
        policies = spread(rng, policies, total)
    child_ids = {name: i for i, name in enumerate(CHILDREN)}
    sas = {name: 100 + i for i, name in enumerate(CHILDREN) if rng.random() < 0.7}
    default = rng.choice((Action.BYPASS, Action.DISCARD))
    clf.set_config(default_action=default)
    clf.set_policies(policies, child_ids)
    for name, sa_index in sas.items():
        clf.set_child_sa(child_ids[name], sa_index=sa_index, owner=0)

    verdicts = set()
    for _ in range(FLOWS_PER_CASE):
        flow = rand_flow(rng)
        out = run(frame(flow))
        want = expected(policies, sas, default, flow)
        steered = (out.meta.policy_id, out.meta.sa_index) if out.meta is not None else None
        assert (out.verdict, out.drop, steered) == want, f"{flow} with policies {policies}"
        if out.meta is not None:
            assert out.meta.kind == Kind.PROTECT
        verdicts.add(want[:2])
    # the draw must exercise more than one outcome, or the comparison proves little
    assert len(verdicts) >= 3, verdicts


def test_a_bank_holds_at_most_max_policies(clf):
    rng = random.Random(8)
    with pytest.raises(ValueError, match="at most"):
        clf.set_policies(spread(rng, [], XS_MAX_POLICIES + 1), {"a": 0})
