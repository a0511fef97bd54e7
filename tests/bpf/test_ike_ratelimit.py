"""The IKE_SA_INIT rate limit of the classifier (xdpsec/bpf/include/ratelimit.h), through BPF_PROG_TEST_RUN.

RFC 7296 §2.6: a responder answers IKE_SA_INIT from anybody, so a flood of them from spoofed sources is the way to
exhaust it. XDP keeps token buckets per source prefix and one global bucket and drops the excess as
`ike_init_rate`; configured peers have a bucket of their own. The IKE headers come from scapy's IKEv2 layer, an
encoder independent of xdpsec's.

BPF time cannot be faked, so the cases use buckets that real time barely refills while they run (1 request per
second, or a sleep that fills the bucket many times over) and bound what a refill during the test could add.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.contrib.ikev2 import IKEv2
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdpsec.io.bpf import XdpAction

pytestmark = pytest.mark.bpf

GW4, GW6 = "203.0.113.1", "2001:db8::1"
IKE_PORT, NATT_PORT = 500, 4500  # RFC 7296 §2, RFC 3948 §2.2
NON_ESP_MARKER = b"\0\0\0\0"
SA_INIT, IKE_AUTH, INFORMATIONAL = 34, 35, 37  # RFC 7296 §3.1 exchange types
BODY = bytes(range(40))  # stands in for the SA, KE and Nonce payloads: the limit reads the header only
BIG = 1_000_000  # a rate or burst that never limits anything in a test


def ike(src: str, *, dport: int = IKE_PORT, exchange: int = SA_INIT, flags: str = "Initiator",
        rspi: bytes = bytes(8), ispi: bytes = b"\x11" * 8, body: bytes = BODY, cut: int | None = None) -> bytes:
    """An IKE message from `src` to the gateway (its first `cut` bytes); to 4500 behind the non-ESP marker."""
    msg = (bytes(IKEv2(init_SPI=ispi, resp_SPI=rspi, exch_type=exchange, flags=flags)) + body)[:cut]
    ip = IP(src=src, dst=GW4) if ipaddress.ip_address(src).version == 4 else IPv6(src=src, dst=GW6)
    marker = NON_ESP_MARKER if dport == NATT_PORT else b""
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / UDP(sport=500, dport=dport)
                 / (marker + msg))


@pytest.fixture
def limits(clf):
    """clf.set_ike_limits with fresh buckets; the limit and the exempt peers are gone after the test."""
    clf.clear_ike_limits()

    def configure(*, rate=BIG, burst=BIG, global_rate=BIG, global_burst=None, prefix4=24, prefix6=64):
        clf.set_ike_limits(rate=rate, burst=burst, global_rate=global_rate, global_burst=global_burst,
                           prefix4=prefix4, prefix6=prefix6)
    try:
        yield configure
    finally:
        clf.clear_ike_limits()
        clf.set_ike_exempt([])


def verdicts(run, frames) -> list[str]:
    """'pass' or the drop reason of each frame, in order; a pass is always counted as IKE."""
    out = []
    for f in frames:
        o = run(f)
        if o.verdict == XdpAction.PASS:
            assert o.drop is None and o.stats["ike"] == 1
            out.append("pass")
        else:
            assert o.verdict == XdpAction.DROP and o.stats["drop"] == 1 and not o.stats["ike"]
            out.append(o.drop.name.lower())
    return out


def test_no_limit_until_configured(clf, run):
    assert verdicts(run, [ike("198.51.100.7")] * 50) == ["pass"] * 50


@pytest.mark.parametrize("dport", [IKE_PORT, NATT_PORT])
def test_a_burst_beyond_the_bucket_is_dropped_and_counted_and_another_prefix_passes(clf, run, limits, dport):
    limits(rate=1, burst=5)
    before = clf.drops().get("ike_init_rate", 0)
    t0 = time.monotonic()
    got = verdicts(run, [ike(f"198.51.100.{i}", dport=dport) for i in range(1, 21)])
    refilled = int(time.monotonic() - t0) + 1  # tokens 1/s could have added meanwhile (bound)
    passed = got.count("pass")
    assert 5 <= passed <= 5 + refilled and got[:5] == ["pass"] * 5
    assert got.count("ike_init_rate") == 20 - passed
    assert clf.drops()["ike_init_rate"] - before == 20 - passed  # counted under its name
    assert verdicts(run, [ike("203.0.113.77", dport=dport)]) == ["pass"]  # another /24 has its own bucket


def test_the_bucket_refills_over_time_up_to_its_burst(run, limits):
    limits(rate=20, burst=3)  # a token every 50 ms
    src = "198.51.100.7"
    assert verdicts(run, [ike(src)] * 3) == ["pass"] * 3
    assert verdicts(run, [ike(src)]) == ["ike_init_rate"]
    time.sleep(0.5)  # ten intervals: the bucket is full again, and holds no more than its burst
    t0 = time.monotonic()
    got = verdicts(run, [ike(src)] * 8)
    extra = int((time.monotonic() - t0) / 0.05) + 1
    assert got[:3] == ["pass"] * 3 and 3 <= got.count("pass") <= 3 + extra, got
    assert got[-1] == "ike_init_rate"


def test_the_global_bucket_bounds_a_flood_spread_over_many_prefixes(run, limits):
    limits(rate=BIG, burst=BIG, global_rate=1, global_burst=4)
    got = verdicts(run, [ike(f"198.51.{i}.1") for i in range(12)])
    assert got[:4] == ["pass"] * 4 and got.count("pass") <= 6 and got[-1] == "ike_init_rate"


def test_a_prefix_over_its_limit_takes_nothing_from_the_global_bucket(run, limits):
    limits(rate=1, burst=2, global_rate=1, global_burst=4)
    got = verdicts(run, [ike("198.51.100.1")] * 50)
    assert got.count("pass") <= 3
    # the global bucket still holds what the flooding prefix did not get past its own bucket
    assert verdicts(run, [ike("203.0.113.9"), ike("192.0.2.9")]) == ["pass", "pass"]


EXHAUSTED = ("198.51.100.7", "2001:db8:1::7")


@pytest.mark.parametrize("src", EXHAUSTED)
@pytest.mark.parametrize("dport", [IKE_PORT, NATT_PORT])
@pytest.mark.parametrize("what,msg", [
    ("IKE_AUTH request", dict(exchange=IKE_AUTH, rspi=b"\x22" * 8)),
    ("INFORMATIONAL request (DPD, Delete)", dict(exchange=INFORMATIONAL, rspi=b"\x22" * 8)),
    ("INFORMATIONAL response", dict(exchange=INFORMATIONAL, rspi=b"\x22" * 8, flags="Response")),
    ("IKE_SA_INIT with a responder SPI", dict(rspi=b"\x22" * 8)),
    # a responder's N(COOKIE) or INVALID_KE_PAYLOAD answer has SPIr zero (§2.6, §1.2): not a request
    ("IKE_SA_INIT response, SPIr zero", dict(flags="Response")),
    ("IKE_SA_INIT from a responder (no I flag)", dict(flags=0)),
    ("shorter than an IKE header", dict(cut=27)),
])
def test_messages_that_create_no_ike_sa_are_never_limited(run, limits, src, dport, what, msg):
    limits(rate=1, burst=1, global_rate=1, global_burst=1)
    assert verdicts(run, [ike(src, dport=dport)] * 3)[1:] == ["ike_init_rate"] * 2  # the source's bucket is empty
    assert verdicts(run, [ike(src, dport=dport, **msg)] * 20) == ["pass"] * 20, what


@pytest.mark.parametrize("prefix6,neighbour,shares", [
    (64, "2001:db8:1::ffff", True),
    (64, "2001:db8:1:0:ffff:ffff:ffff:ffff", True),
    (64, "2001:db8:1:1::7", False),
    (48, "2001:db8:1:1::7", True),
    (48, "2001:db8:2::7", False),
    (128, "2001:db8:1::8", False),
])
def test_ipv6_sources_are_keyed_by_their_prefix(run, limits, prefix6, neighbour, shares):
    limits(rate=1, burst=2, prefix6=prefix6)
    assert verdicts(run, [ike("2001:db8:1::7")] * 3)[-1] == "ike_init_rate"
    assert verdicts(run, [ike(neighbour)]) == (["ike_init_rate"] if shares else ["pass"])


@pytest.mark.parametrize("prefix4,neighbour,shares", [
    (24, "198.51.100.250", True),
    (24, "198.51.101.7", False),
    (16, "198.51.101.7", True),
    (32, "198.51.100.8", False),
])
def test_ipv4_sources_are_keyed_by_their_prefix(run, limits, prefix4, neighbour, shares):
    limits(rate=1, burst=2, prefix4=prefix4)
    assert verdicts(run, [ike("198.51.100.7")] * 3)[-1] == "ike_init_rate"
    assert verdicts(run, [ike(neighbour)]) == (["ike_init_rate"] if shares else ["pass"])


def test_an_exempt_peer_is_not_locked_out_by_a_flood_from_its_prefix_or_elsewhere(clf, run, limits):
    peer, peer6 = ipaddress.ip_address("198.51.100.7"), ipaddress.ip_address("2001:db8:1::7")
    limits(rate=1, burst=3, global_rate=1, global_burst=3)
    clf.set_ike_exempt([peer, peer6])
    spoofed = [ike(f"198.51.100.{i}") for i in range(100, 140)] + [ike(f"203.0.113.{i}") for i in range(40)] \
        + [ike(f"2001:db8:1::{i:x}") for i in range(100, 140)]
    assert verdicts(run, spoofed).count("pass") <= 3 + 3 + 3  # its prefixes' and the global bucket are empty
    # its own bucket, by exact address: the same rate, the burst intact
    assert verdicts(run, [ike(str(peer))] * 3 + [ike(str(peer6))] * 3) == ["pass"] * 6
    # a flood spoofing the peer's exact address empties that bucket only: nobody else is exempt with it
    assert verdicts(run, [ike(str(peer))] * 5).count("ike_init_rate") >= 4
    assert verdicts(run, [ike(str(peer6))]) == ["ike_init_rate"]


def test_exempt_peers_are_replaced_and_a_removed_one_meets_its_prefix_again(clf, run, limits):
    peer = ipaddress.ip_address("198.51.100.7")
    limits(rate=1, burst=1, global_rate=BIG)
    clf.set_ike_exempt([peer])
    assert verdicts(run, [ike("198.51.100.99")] * 2) == ["pass", "ike_init_rate"]
    assert verdicts(run, [ike(str(peer))]) == ["pass"]
    clf.set_ike_exempt([ipaddress.ip_address("192.0.2.1"), peer])  # kept: its bucket with it (now empty)
    assert verdicts(run, [ike(str(peer))]) == ["ike_init_rate"]
    clf.set_ike_exempt([ipaddress.ip_address("192.0.2.1")])
    assert len(clf["xs_ike_exempt"]) == 1
    assert verdicts(run, [ike(str(peer))]) == ["ike_init_rate"]  # back in 198.51.100.0/24, whose bucket is empty


@pytest.mark.parametrize("kwargs", [
    dict(rate=0, burst=1, global_rate=1),
    dict(rate=1, burst=0, global_rate=1),
    dict(rate=1, burst=1, global_rate=0),
    dict(rate=10**10, burst=1, global_rate=1),
])
def test_nonsense_limits_are_refused(clf, kwargs):
    with pytest.raises(ValueError):
        clf.set_ike_limits(**kwargs)
