"""The SPD flow cache (xdpsec/bpf/include/spd.h): a cached decision is the walk's, and only under its generation.

The first packet of a flow walks the SPD and files both first matches in xs_spd_cache; the second takes them from
there. Both must give what xdpsec.spd's lookup says (the rule of spd.h, as in test_differential.py). Then: every
SPD write retires what was cached before it, while child SAs and the default action, which are not cached, apply
at once to cached flows; an entry is used only if it repeats its own key (recycled LRU elements); hits and misses
are counted in the XDP stats.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether
from test_differential import CHILDREN, expected, frame, rand_flow, rand_policy, spread

from xdpsec import abi
from xdpsec.abi import Action, DropReason, PolicyDir
from xdpsec.io.bpf import XdpAction
from xdpsec.sa import ANY_PORT, Flow
from xdpsec.spd import Policy

pytestmark = pytest.mark.bpf

LAN, REMOTE = "192.0.2.10", "198.51.100.20"
FLOW = Flow(ipaddress.ip_address(LAN), ipaddress.ip_address(REMOTE), 17, 1234, 80)
CHILD_ID = 1


def policy(pid, direction, action, src="192.0.2.0/24", dst="198.51.100.0/24", child=None):
    return Policy(id=pid, name=f"p{pid}", direction=direction, action=action, priority=pid,
                  src=ipaddress.ip_network(src), dst=ipaddress.ip_network(dst), sports=ANY_PORT, dports=ANY_PORT,
                  child=child)


def decision(out):
    """What a packet's outcome says about the SPD: verdict, drop reason, and (policy, SA) when steered."""
    return out.verdict, out.drop, (out.meta.policy_id, out.meta.sa_index) if out.meta is not None else None


def cache_counts(out) -> tuple[int, int]:
    return out.stats["spd_cache_hit"], out.stats["spd_cache_miss"]


# -- (1) a cached decision is the walk's, and the reference's ------------------------------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), total=st.sampled_from([0, 0, 300]))
def test_cached_decision_equals_walk_and_reference(clf, run, seed, total):
    rng = random.Random(seed)
    policies = sorted((rand_policy(rng, pid) for pid in range(1, rng.randrange(2, 40))), key=lambda p: p.priority)
    if total:
        policies = spread(rng, policies, total)  # matches beyond the first chunk of the walk
    child_ids = {name: i for i, name in enumerate(CHILDREN)}
    sas = {name: 100 + i for i, name in enumerate(CHILDREN) if rng.random() < 0.7}
    default = rng.choice((Action.BYPASS, Action.DISCARD))
    clf.set_config(default_action=default)
    clf.set_policies(policies, child_ids)  # a new generation: nothing of an earlier example is cached
    for child in CHILDREN:
        if child in sas:
            clf.set_child_sa(child_ids[child], sa_index=sas[child], owner=0)
        else:
            clf.clear_child_sa(child_ids[child])

    seen: set[Flow] = set()
    for _ in range(25):
        flow = rand_flow(rng)
        want = expected(policies, sas, default, flow)
        walked = run(frame(flow))
        assert cache_counts(walked) == ((1, 0) if flow in seen else (0, 1)), flow
        cached = run(frame(flow))
        assert cache_counts(cached) == (1, 0), flow
        assert decision(walked) == decision(cached) == want, f"{flow} with policies {policies}"
        seen.add(flow)


# -- (2) what invalidates a cached decision, and what needs not -----------------------------------------------

DISCARD_OUT = [policy(1, PolicyDir.OUT, Action.DISCARD)]
PROTECT_OUT = [policy(1, PolicyDir.OUT, Action.PROTECT, child="c")]
PROTECT_IN = [policy(1, PolicyDir.IN, Action.PROTECT), policy(2, PolicyDir.OUT, Action.BYPASS)]
BYPASS_THEN_DISCARD = [policy(1, PolicyDir.OUT, Action.BYPASS, dst="198.51.100.16/28"),
                       policy(2, PolicyDir.OUT, Action.DISCARD)]
DISCARD_THEN_BYPASS = [dataclasses.replace(p, priority=3 - p.priority) for p in BYPASS_THEN_DISCARD]
PASSED = (XdpAction.PASS, None, None)
DISCARDED = (XdpAction.DROP, DropReason.POLICY_DISCARD, None)
CLEARTEXT = (XdpAction.DROP, DropReason.POLICY_CLEARTEXT, None)


@pytest.mark.parametrize(("before", "after", "want_before", "want_after"), [
    ([], DISCARD_OUT, PASSED, DISCARDED),
    (DISCARD_OUT, [], DISCARDED, PASSED),
    (DISCARD_OUT, PROTECT_OUT, DISCARDED, (XdpAction.REDIRECT, None, (1, 7))),
    (PROTECT_OUT, PROTECT_IN, (XdpAction.REDIRECT, None, (1, 7)), CLEARTEXT),
    (PROTECT_IN, [policy(1, PolicyDir.IN, Action.BYPASS)], CLEARTEXT, PASSED),
    (BYPASS_THEN_DISCARD, DISCARD_THEN_BYPASS, PASSED, DISCARDED),
    (DISCARD_OUT, DISCARD_OUT, DISCARDED, DISCARDED),  # the same set again: walked again all the same
], ids=["bypass>discard", "discard>default", "discard>protect", "protect>in-protect", "in-protect>in-bypass",
        "reordered", "rewritten-unchanged"])
def test_new_policies_retire_cached_decisions(clf, run, before, after, want_before, want_after):
    packet = frame(FLOW)
    clf.set_child_sa(CHILD_ID, sa_index=7, owner=0)
    clf.set_policies(before, {"c": CHILD_ID})
    run(packet)
    out = run(packet)
    assert (decision(out), cache_counts(out)) == (want_before, (1, 0))

    clf.set_policies(after, {"c": CHILD_ID})
    out = run(packet)
    assert (decision(out), cache_counts(out)) == (want_after, (0, 1))
    out = run(packet)
    assert (decision(out), cache_counts(out)) == (want_after, (1, 0))


def test_policy_write_bumps_the_generation(clf):
    gen = clf["xs_config"][ctypes.c_uint32(0)].spd_generation
    clf.set_policies(DISCARD_OUT, {})
    assert clf["xs_config"][ctypes.c_uint32(0)].spd_generation == gen + 1
    clf.invalidate_spd_cache()
    assert clf["xs_config"][ctypes.c_uint32(0)].spd_generation == gen + 2


def test_invalidate_makes_the_next_packet_walk(clf, run):
    clf.set_policies(DISCARD_OUT, {})
    packet = frame(FLOW)
    run(packet)
    clf.invalidate_spd_cache()
    out = run(packet)
    assert (decision(out), cache_counts(out)) == (DISCARDED, (0, 1))


def test_child_sa_changes_reach_cached_flows(clf, run):
    """Only the match is cached: the child's SA is looked up for every packet, so a rekey needs no new generation."""
    clf.set_policies(PROTECT_OUT, {"c": CHILD_ID})
    clf.set_child_sa(CHILD_ID, sa_index=7, owner=0)
    packet = frame(FLOW)
    assert decision(run(packet)) == (XdpAction.REDIRECT, None, (1, 7))

    clf.set_child_sa(CHILD_ID, sa_index=8, owner=1)  # a rekey
    out = run(packet)
    assert (decision(out), out.meta.owner, cache_counts(out)) == ((XdpAction.REDIRECT, None, (1, 8)), 1, (1, 0))
    clf.clear_child_sa(CHILD_ID)
    out = run(packet)
    assert (decision(out), cache_counts(out)) == ((XdpAction.DROP, DropReason.NO_SA, None), (1, 0))


def test_default_action_reaches_cached_flows(clf, run):
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, dst="203.0.113.0/24")], {})
    packet = frame(FLOW)
    assert decision(run(packet)) == PASSED
    clf.set_config(default_action=Action.DISCARD)
    out = run(packet)
    assert (decision(out), cache_counts(out)) == (DISCARDED, (1, 0))


def test_policy_hits_counted_for_cached_flows(clf, run):
    clf.set_policies(DISCARD_OUT, {})
    packet = frame(FLOW)
    for _ in range(3):
        run(packet)
    assert clf.policy_hits() == {1: 3}


# -- the entry itself: its key, its generation ----------------------------------------------------------------

def flow_key(flow: Flow) -> abi.XsFlowKey:
    words = lambda addr: (ctypes.c_uint32 * 4).from_buffer_copy(addr.packed.ljust(16, b"\0"))  # noqa: E731
    return abi.XsFlowKey(src=words(flow.src), dst=words(flow.dst), sport=flow.sport, dport=flow.dport,
                         family=flow.src.version, proto=flow.proto)


def forged(flow: Flow, generation: int, *, key_flow: Flow | None = None) -> abi.XsSpdCacheVal:
    """An entry saying that OUT policy 99 (DISCARD) matched, which no installed policy does."""
    hit = abi.XsSpdHit(policy_id=99, action=Action.DISCARD, found=1)
    return abi.XsSpdCacheVal(m=abi.XsSpdMatch(out=hit), generation=generation, key=flow_key(key_flow or flow))


@pytest.mark.parametrize(("gen_delta", "key_flow", "used"), [
    (0, None, True),
    (-1, None, False),
    (0, Flow(FLOW.src, FLOW.dst, 17, 1234, 81), False),
], ids=["current", "older-generation", "recycled-for-another-flow"])
def test_entry_used_only_under_its_generation_and_own_key(clf, run, gen_delta, key_flow, used):
    """The key the program builds is the mirror's (a forged entry is found), and it is used only if both the
    generation and the key repeated inside it agree."""
    clf.set_policies([], {})
    gen = clf["xs_config"][ctypes.c_uint32(0)].spd_generation
    clf["xs_spd_cache"][flow_key(FLOW)] = forged(FLOW, gen + gen_delta, key_flow=key_flow)
    out = run(frame(FLOW))
    if used:
        assert (decision(out), cache_counts(out)) == (DISCARDED, (1, 0))
    else:
        assert (decision(out), cache_counts(out)) == (PASSED, (0, 1))
        entry = clf["xs_spd_cache"][flow_key(FLOW)]  # the walk's result replaced the forged entry
        assert (entry.generation, entry.m.out.found, bytes(entry.key)) == (gen, 0, bytes(flow_key(FLOW)))


def test_walk_files_both_matches_under_its_generation(clf, run):
    clf.set_policies(PROTECT_IN, {})
    run(frame(FLOW))
    entry = clf["xs_spd_cache"][flow_key(FLOW)]
    got = getattr(entry.m, "in")
    assert (entry.m.out.found, entry.m.out.policy_id, entry.m.out.action) == (1, 2, Action.BYPASS)
    assert (got.found, got.policy_id, got.action) == (1, 1, Action.PROTECT)
    assert entry.generation == clf["xs_config"][ctypes.c_uint32(0)].spd_generation


# -- (3) counters ------------------------------------------------------------------------------------------------

def test_hits_and_misses_counted(clf, run):
    clf.set_policies(DISCARD_OUT, {})
    other = Flow(FLOW.src, FLOW.dst, 17, 1235, 80)
    assert cache_counts(run(frame(FLOW))) == (0, 1)
    assert cache_counts(run(frame(other))) == (0, 1)
    for _ in range(3):
        assert cache_counts(run(frame(FLOW))) == (1, 0)
    stats = clf.stats()
    assert {"spd_cache_hit", "spd_cache_miss"} <= stats.keys()


def test_traffic_that_skips_the_spd_counts_neither(clf, run):
    """IKE and ESP for an SA we hold are decided before the SPD: no lookup, no count."""
    clf.set_sa_in(0x1000, 50, sa_index=3, owner=0, encap=False)
    esp = bytes(Ether() / IP(src=REMOTE, dst=LAN) / ESP(spi=0x1000, seq=1, data=bytes(16)))
    ike = bytes(Ether() / IP(src=REMOTE, dst=LAN) / UDP(sport=500, dport=500) / bytes(28))
    for packet in (esp, ike):
        out = run(packet)
        assert out.verdict in (XdpAction.REDIRECT, XdpAction.PASS)
        assert cache_counts(out) == (0, 0)
