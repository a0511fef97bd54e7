"""The XDP classifier on crafted frames (scapy), through BPF_PROG_TEST_RUN.

Each case asserts the verdict, the drop reason counted (or none) and, for steered frames, the metadata left in
front of the frame. Steered frames reach XDP_REDIRECT because an AF_XDP socket is bound to loopback queue 0 of the
module's private namespace (see conftest.py); the redirect itself is not performed by a test run.
"""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from xdpsec.abi import XS_META_MAGIC, Action, DropReason, Kind, PolicyDir, XsMeta
from xdpsec.io.bpf import XdpAction
from xdpsec.sa import ANY_PORT, PortRange
from xdpsec.spd import Policy

pytestmark = pytest.mark.bpf

LO_SLOT = 0  # conftest registers loopback, where the test runs arrive, as interface slot 0
GW4, GW6 = ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("2001:db8::1")
PEER4, PEER6 = "198.51.100.7", "2001:db8:2::7"
LAN4, REMOTE4 = "192.0.2.10", "198.51.100.20"
ESP_BODY = bytes(range(32))
SPI = 0x1000


def eth(*tags):
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for tag in tags:
        frame = frame / tag
    return frame


def esp4(spi=SPI, dst=str(GW4), **ip):
    return bytes(eth() / IP(src=PEER4, dst=dst, **ip) / ESP(spi=spi, seq=1, data=ESP_BODY))


def policy(pid, direction, action, src, dst, *, proto=0, sports=ANY_PORT, dports=ANY_PORT, child=None,
           priority=None):
    return Policy(id=pid, name=f"p{pid}", direction=direction, action=action,
                  priority=pid if priority is None else priority, src=ipaddress.ip_network(src),
                  dst=ipaddress.ip_network(dst), proto=proto, sports=sports, dports=dports, child=child)


def assert_steered(out, kind, *, sa_index, owner, l3_off=14, l4_off, policy_id=0, ip_version=4):
    assert out.drop is None
    assert out.verdict == XdpAction.REDIRECT
    m: XsMeta = out.meta
    assert m is not None, "no metadata in front of a steered frame"
    assert (m.magic, m.kind, m.sa_index, m.owner, m.ifslot) == (XS_META_MAGIC, kind, sa_index, owner, LO_SLOT)
    assert (m.l3_off, m.l4_off, m.policy_id, m.ip_version) == (l3_off, l4_off, policy_id, ip_version)


def assert_dropped(out, reason):
    assert (out.verdict, out.drop) == (XdpAction.DROP, reason)
    assert out.stats["drop"] == 1


def assert_passed(out):
    assert (out.verdict, out.drop) == (XdpAction.PASS, None)
    assert out.stats["pass"] == 1 and out.meta is None


# -- layer 2 and parsing ------------------------------------------------------------------------------------

def test_non_ip_passes(clf, run):
    out = run(bytes(eth() / ARP(pdst="192.0.2.1")))
    assert_passed(out)
    assert out.stats["rx"] == 1


def test_foreign_interface_untouched(clf, run):
    clf.del_iface(1)
    out = run(esp4())
    assert (out.verdict, out.drop, dict(out.stats)) == (XdpAction.PASS, None, {})


@pytest.mark.parametrize("tags,l3_off", [
    ((Dot1Q(vlan=10),), 18),
    ((Dot1AD(vlan=20), Dot1Q(vlan=10)), 22),
])
def test_vlan_tagged_esp_steered_with_l3_offset(clf, run, tags, l3_off):
    clf.set_sa_in(SPI, 50, sa_index=3, owner=1, encap=False)
    frame = bytes(eth(*tags) / IP(src=PEER4, dst=str(GW4)) / ESP(spi=SPI, seq=1, data=ESP_BODY))
    out = run(frame)
    assert_steered(out, Kind.ESP, sa_index=3, owner=1, l3_off=l3_off, l4_off=l3_off + 20)
    assert out.stats["vlan"] == 1 and out.stats["inbound_esp"] == 1
    assert out.data_out == frame, "the frame itself must be left as it was"


def test_vlan_tagged_cleartext_meets_the_spd(clf, run):
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, "192.0.2.0/24", "198.51.100.0/24")], {})
    frame = bytes(eth(Dot1Q(vlan=5)) / IP(src=LAN4, dst=REMOTE4) / UDP(sport=1, dport=2))
    assert_dropped(run(frame), DropReason.POLICY_DISCARD)


def test_ipv4_options_skipped(clf, run):
    clf.set_sa_in(SPI, 50, sa_index=4, owner=0, encap=False)
    frame = bytes(eth() / IP(src=PEER4, dst=str(GW4), options=b"\x94\x04\x00\x00" * 2)
                  / ESP(spi=SPI, seq=1, data=ESP_BODY))
    assert_steered(run(frame), Kind.ESP, sa_index=4, owner=0, l4_off=14 + 28)


def test_ipv6_extension_headers_walked(clf, run):
    clf.set_sa_in(SPI, 50, sa_index=5, owner=2, encap=False)
    exts = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=[PEER6])
    frame = bytes(eth() / IPv6(src=PEER6, dst=str(GW6)) / exts / ESP(spi=SPI, seq=1, data=ESP_BODY))
    # 40 + hop-by-hop 8 + destination options 8 + routing 8 + one address 16
    assert_steered(run(frame), Kind.ESP, sa_index=5, owner=2, l4_off=14 + 40 + 8 + 8 + 24,
                   ip_version=6)


def test_ipv6_exthdr_chain_too_deep(clf, run):
    chain = IPv6ExtHdrDestOpt()
    for _ in range(8):
        chain = chain / IPv6ExtHdrDestOpt()
    frame = bytes(eth() / IPv6(src=PEER6, dst=str(GW6)) / chain / UDP(sport=1, dport=2))
    assert_dropped(run(frame), DropReason.EXTHDR_DEPTH)


def _ipv4_hdr(ihl=5, tot_len=None, proto=17, body=b""):
    tot = tot_len if tot_len is not None else ihl * 4 + len(body)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 0, 0, 64, proto, 0,
                      ipaddress.ip_address(PEER4).packed, GW4.packed)
    return hdr + b"\0" * (ihl * 4 - 20) + body


ETH_IP4 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
ETH_IP6 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD))


@pytest.mark.parametrize("frame,reason", [
    # what the frame lies about -> the reason it is dropped under (a test run refuses frames below 14 bytes)
    pytest.param(bytes(eth())[:12] + b"\x81\x00\x00", DropReason.MALFORMED_ETH, id="vlan-tag-cut"),
    pytest.param(ETH_IP4 + _ipv4_hdr()[:12], DropReason.MALFORMED_IP, id="ipv4-header-cut"),
    pytest.param(ETH_IP4 + _ipv4_hdr(ihl=4, body=b"\0" * 16), DropReason.MALFORMED_IP, id="ipv4-ihl-below-5"),
    pytest.param(ETH_IP4 + _ipv4_hdr(tot_len=200, body=b"\0" * 8), DropReason.MALFORMED_IP,
                 id="ipv4-total-length-past-frame"),
    pytest.param(ETH_IP4 + _ipv4_hdr(ihl=15, tot_len=40)[:40], DropReason.MALFORMED_IP,
                 id="ipv4-options-longer-than-packet"),
    pytest.param(ETH_IP6 + bytes(IPv6(src=PEER6, dst=str(GW6)))[:30], DropReason.MALFORMED_IP,
                 id="ipv6-header-cut"),
    pytest.param(ETH_IP6 + bytes(IPv6(src=PEER6, dst=str(GW6), nh=60, plen=8)) + b"\x11\x05" + b"\0" * 6,
                 DropReason.MALFORMED_IP, id="ipv6-dstopts-longer-than-payload"),
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=6, body=b"\0" * 12), DropReason.MALFORMED_L4, id="tcp-cut"),
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=17, body=b"\0" * 6), DropReason.MALFORMED_L4, id="udp-cut"),
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=1, body=b"\0" * 2), DropReason.MALFORMED_L4, id="icmp-cut"),
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=50, body=b"\0" * 6), DropReason.MALFORMED_L4, id="esp-cut"),
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=51, body=b"\0" * 10), DropReason.MALFORMED_L4, id="ah-cut"),
    # the IP header says the packet ends before the transport header does, though the frame is longer
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=17, tot_len=24, body=b"\0" * 20), DropReason.MALFORMED_L4,
                 id="udp-past-ip-total-length"),
    pytest.param(ETH_IP4 + _ipv4_hdr(proto=17, body=bytes(UDP(sport=4500, dport=4500, len=200))),
                 DropReason.MALFORMED_L4, id="udp-length-past-ip-packet"),
])
def test_truncated_headers_dropped_by_layer(clf, run, frame, reason):
    assert_dropped(run(frame), reason)


# -- IKE and NAT traversal ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dport,payload", [
    (500, b"\x11" * 28),                     # IKE (RFC 7296 2)
    (4500, b"\0\0\0\0" + b"\x11" * 28),      # IKE behind the non-ESP marker (RFC 3948 2.2)
])
def test_ike_passes_even_when_default_discards(clf, run, dport, payload):
    clf.set_config(default_action=Action.DISCARD)
    out = run(bytes(eth() / IP(src=PEER4, dst=str(GW4)) / UDP(sport=dport, dport=dport) / payload))
    assert_passed(out)
    assert out.stats["ike"] == 1


def test_nat_keepalive_dropped(clf, run):
    # RFC 3948 2.3: one 0xFF byte. The frame is padded to Ethernet's 60 bytes: only the UDP length says 1.
    frame = bytes(eth() / IP(src=PEER4, dst=str(GW4)) / UDP(sport=4500, dport=4500) / b"\xff").ljust(60, b"\0")
    assert_dropped(run(frame), DropReason.NAT_KEEPALIVE)


# -- inbound IPsec ------------------------------------------------------------------------------------------

def test_esp_known_spi_steered(clf, run):
    clf.set_sa_in(SPI, 50, sa_index=7, owner=1, encap=False)
    out = run(esp4())
    assert_steered(out, Kind.ESP, sa_index=7, owner=1, l4_off=34)
    assert out.stats["inbound_esp"] == 1


def test_esp_in_udp_steered_with_udp_offset(clf, run):
    clf.set_sa_in(SPI, 50, sa_index=8, owner=0, encap=True)
    frame = bytes(eth() / IP(src=PEER4, dst=str(GW4)) / UDP(sport=4500, dport=4500)
                  / ESP(spi=SPI, seq=1, data=ESP_BODY))
    out = run(frame)
    assert_steered(out, Kind.ESP_UDP, sa_index=8, owner=0, l4_off=34)
    assert out.stats["inbound_esp_udp"] == 1


def test_encap_port_comes_from_config(clf, run):
    clf.set_config(encap_port=14500)
    clf.set_sa_in(SPI, 50, sa_index=8, owner=0, encap=True)
    frame = bytes(eth() / IP(src=PEER4, dst=str(GW4)) / UDP(sport=14500, dport=14500)
                  / ESP(spi=SPI, seq=1, data=ESP_BODY))
    assert_steered(run(frame), Kind.ESP_UDP, sa_index=8, owner=0, l4_off=34)


def test_ah_known_spi_steered(clf, run):
    clf.set_sa_in(SPI, 51, sa_index=9, owner=3, encap=False)
    frame = bytes(eth() / IP(src=PEER4, dst=str(GW4)) / AH(spi=SPI, seq=1, nh=4, icv=b"\0" * 16)
                  / IP(src="192.0.2.1", dst="192.0.2.2"))
    out = run(frame)
    assert_steered(out, Kind.AH, sa_index=9, owner=3, l4_off=34)
    assert out.stats["inbound_ah"] == 1


def test_same_spi_other_protocol_is_another_sa(clf, run):
    clf.set_sa_in(SPI, 51, sa_index=9, owner=3, encap=False)
    clf.set_local_addrs([GW4])
    assert_dropped(run(esp4()), DropReason.UNKNOWN_SPI)


def test_unknown_spi_to_local_address_dropped(clf, run):
    clf.set_local_addrs([GW4, GW6])
    assert_dropped(run(esp4()), DropReason.UNKNOWN_SPI)
    frame6 = bytes(eth() / IPv6(src=PEER6, dst=str(GW6)) / ESP(spi=SPI, seq=1, data=ESP_BODY))
    assert_dropped(run(frame6), DropReason.UNKNOWN_SPI)


def test_unknown_spi_in_transit_meets_the_spd(clf, run):
    clf.set_local_addrs([GW4])
    assert_passed(run(esp4(dst="198.51.100.99")))
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, "0.0.0.0/0", "0.0.0.0/0", proto=50)], {})
    assert_dropped(run(esp4(dst="198.51.100.99")), DropReason.POLICY_DISCARD)


@pytest.mark.parametrize("installed_encap,arrives_in_udp", [(True, False), (False, True)])
def test_encapsulation_mismatch(clf, run, installed_encap, arrives_in_udp):
    clf.set_sa_in(SPI, 50, sa_index=1, owner=0, encap=installed_encap)
    inner = ESP(spi=SPI, seq=1, data=ESP_BODY)
    l4 = UDP(sport=4500, dport=4500) / inner if arrives_in_udp else inner
    assert_dropped(run(bytes(eth() / IP(src=PEER4, dst=str(GW4)) / l4)), DropReason.SA_MISMATCH)


@pytest.mark.parametrize("frag", [{"flags": "MF"}, {"frag": 100}])
def test_fragmented_esp_dropped(clf, run, frag):
    clf.set_sa_in(SPI, 50, sa_index=1, owner=0, encap=False)
    assert_dropped(run(esp4(**frag)), DropReason.IPSEC_FRAGMENT)


def test_fragmented_esp_ipv6_dropped(clf, run):
    frame = bytes(eth() / IPv6(src=PEER6, dst=str(GW6)) / IPv6ExtHdrFragment(m=1, id=7)
                  / ESP(spi=SPI, seq=1, data=ESP_BODY))
    assert_dropped(run(frame), DropReason.IPSEC_FRAGMENT)


def test_no_socket_on_queue(clf, run):
    clf.set_sa_in(SPI, 50, sa_index=1, owner=0, encap=False)
    clf.del_xsk(LO_SLOT, 0)
    out = run(esp4())
    assert_dropped(out, DropReason.NO_SOCKET)
    assert out.meta is None


# -- SPD ----------------------------------------------------------------------------------------------------

def cleartext(src=LAN4, dst=REMOTE4, l4=None):
    return bytes(eth() / IP(src=src, dst=dst) / (l4 if l4 is not None else UDP(sport=1234, dport=53)))


OUT_LAN = ("192.0.2.0/24", "198.51.100.0/24")
IN_LAN = ("198.51.100.0/24", "192.0.2.0/24")


def test_protect_with_sa_steered(clf, run):
    clf.set_policies([policy(11, PolicyDir.OUT, Action.PROTECT, *OUT_LAN, child="c/net")], {"c/net": 3})
    clf.set_child_sa(3, sa_index=42, owner=1)
    out = run(cleartext())
    assert_steered(out, Kind.PROTECT, sa_index=42, owner=1, l4_off=34, policy_id=11)
    assert out.stats["protect"] == 1
    assert clf.policy_hits() == {11: 1}


def test_protect_without_sa_raises_one_acquire_per_interval(clf, run):
    """start_action = trap: the packet is dropped (never in clear) and the coordinator is asked for the SA,
    with the packet's selectors; a burst for the same child raises one event, not one per packet."""
    clf.set_policies([policy(11, PolicyDir.OUT, Action.PROTECT, *OUT_LAN, child="c/net")], {"c/net": 3})
    clf["xs_acquire_last"].clear()
    events = []
    clf.on_acquire(events.append)
    for _ in range(5):
        assert_dropped(run(cleartext()), DropReason.NO_SA)
    clf.poll_acquires(100)
    assert len(events) == 1, events
    ev = events[0]
    assert (ev.child_id, ev.policy_id, ev.family, ev.proto, ev.sport, ev.dport) == (3, 11, 4, 17, 1234, 53)
    assert bytes(ev.src)[:4] == ipaddress.ip_address(LAN4).packed
    assert bytes(ev.dst)[:4] == ipaddress.ip_address(REMOTE4).packed


def test_protect_without_sa_never_in_clear(clf, run):
    clf.set_policies([policy(11, PolicyDir.OUT, Action.PROTECT, *OUT_LAN, child="c/net")], {"c/net": 3})
    assert_dropped(run(cleartext()), DropReason.NO_SA)
    clf.set_child_sa(3, sa_index=42, owner=1)
    clf.clear_child_sa(3)  # e.g. the SA expired
    assert_dropped(run(cleartext()), DropReason.NO_SA)


def test_discard_and_bypass(clf, run):
    clf.set_policies([
        policy(1, PolicyDir.OUT, Action.BYPASS, "192.0.2.0/24", "198.51.100.20/32"),
        policy(2, PolicyDir.OUT, Action.DISCARD, *OUT_LAN),
    ], {})
    assert_passed(run(cleartext(dst="198.51.100.20")))
    assert_dropped(run(cleartext(dst="198.51.100.21")), DropReason.POLICY_DISCARD)
    assert clf.policy_hits() == {1: 1, 2: 1}


def test_cleartext_matching_inbound_protect_dropped(clf, run):
    # RFC 4301 5.2: what should have come through an SA may not arrive in clear
    clf.set_policies([policy(1, PolicyDir.OUT, Action.PROTECT, *OUT_LAN, child="c"),
                      policy(2, PolicyDir.IN, Action.PROTECT, *IN_LAN)], {"c": 0})
    assert_dropped(run(cleartext(src=REMOTE4, dst=LAN4)), DropReason.POLICY_CLEARTEXT)


@pytest.mark.parametrize("icmp,passes", [
    (ICMPv6ND_NA(tgt="2001:db8:c::2"), True),    # RFC 4861: the answer a host needs to reach its peer at all
    (ICMPv6ND_NS(tgt="2001:db8:c::1"), True),
    (ICMPv6EchoRequest(), False),                # ordinary ICMPv6 between protected hosts is not exempt
])
def test_neighbour_discovery_bypasses_a_host_to_host_policy(clf, run, icmp, passes):
    # A transport-mode pair protects everything between the two addresses: ND must still flow in clear.
    clf.set_policies([policy(1, PolicyDir.IN, Action.PROTECT, "2001:db8:c::2/128", "2001:db8:c::1/128")], {})
    out = run(bytes(eth() / IPv6(src="2001:db8:c::2", dst="2001:db8:c::1", hlim=255) / icmp))
    if passes:
        assert_passed(out)
    else:
        assert_dropped(out, DropReason.POLICY_CLEARTEXT)


def test_inbound_discard_and_bypass(clf, run):
    clf.set_policies([policy(1, PolicyDir.IN, Action.BYPASS, "198.51.100.20/32", "192.0.2.0/24"),
                      policy(2, PolicyDir.IN, Action.DISCARD, *IN_LAN)], {})
    clf.set_config(default_action=Action.DISCARD)
    assert_passed(run(cleartext(src=REMOTE4, dst=LAN4)))
    assert_dropped(run(cleartext(src="198.51.100.21", dst=LAN4)), DropReason.POLICY_DISCARD)


@pytest.mark.parametrize("l4,hit", [
    (TCP(sport=40000, dport=443), True),
    (TCP(sport=40000, dport=444), False),     # port outside the range
    (TCP(sport=40000, dport=400), True),      # low edge of 400-443
    (TCP(sport=40000, dport=399), False),
    (UDP(sport=40000, dport=443), False),     # protocol selector
    (ICMP(type=8, code=0), False),
])
def test_port_range_and_protocol_selectors(clf, run, l4, hit):
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, *OUT_LAN, proto=6,
                             sports=PortRange(1024, 65535), dports=PortRange(400, 443))], {})
    out = run(cleartext(l4=l4))
    if hit:
        assert_dropped(out, DropReason.POLICY_DISCARD)
    else:
        assert_passed(out)


@pytest.mark.parametrize("icmp,hit", [(ICMP(type=8, code=0), True), (ICMP(type=0, code=0), False),
                                      (ICMP(type=8, code=1), False)])
def test_icmp_type_and_code_as_ports(clf, run, icmp, hit):
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, *OUT_LAN, proto=1,
                             sports=PortRange(8, 8), dports=PortRange(0, 0))], {})
    out = run(cleartext(l4=icmp))
    assert out.drop == (DropReason.POLICY_DISCARD if hit else None)


def test_non_first_fragment_has_no_ports(clf, run):
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, *OUT_LAN, proto=17, dports=PortRange(53, 53)),
                      policy(2, PolicyDir.OUT, Action.DISCARD, *OUT_LAN, proto=17, dports=PortRange(0, 0))], {})
    frame = bytes(eth() / IP(src=LAN4, dst=REMOTE4, proto=17, frag=10) / (b"\0" * 16))
    assert_dropped(run(frame), DropReason.POLICY_DISCARD)
    assert clf.policy_hits() == {1: 0, 2: 1}


def test_priority_order_earlier_bypass_shadows_protect(clf, run):
    clf.set_policies([policy(2, PolicyDir.OUT, Action.PROTECT, *OUT_LAN, child="c", priority=20),
                      policy(1, PolicyDir.OUT, Action.BYPASS, *OUT_LAN, priority=10)], {"c": 0})
    clf.set_child_sa(0, sa_index=1, owner=0)
    assert_passed(run(cleartext()))
    assert clf.policy_hits() == {1: 1, 2: 0}


@pytest.mark.parametrize("default,reason", [(Action.BYPASS, None), (Action.DISCARD, DropReason.POLICY_DISCARD)])
def test_default_action(clf, run, default, reason):
    clf.set_config(default_action=default)
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, "192.0.2.0/24", "203.0.113.0/24")], {})
    assert run(cleartext()).drop == reason


def test_bank_flip_replaces_the_whole_set(clf, run):
    first = [policy(1, PolicyDir.OUT, Action.DISCARD, *OUT_LAN),
             policy(2, PolicyDir.OUT, Action.DISCARD, "192.0.2.0/24", "203.0.113.0/24")]
    clf.set_policies(first, {})
    assert run(cleartext()).drop == DropReason.POLICY_DISCARD
    clf.set_policies([policy(3, PolicyDir.OUT, Action.DISCARD, "192.0.2.0/24", "203.0.113.0/24")], {})
    assert run(cleartext()).drop is None  # policy 1 is gone
    assert run(cleartext(dst="203.0.113.9")).drop == DropReason.POLICY_DISCARD
    assert clf.policy_hits() == {3: 1}
    clf.set_policies([], {})  # and back to the other bank, now empty
    assert run(cleartext(dst="203.0.113.9")).drop is None


def test_ipv6_policy(clf, run):
    clf.set_policies([policy(1, PolicyDir.OUT, Action.DISCARD, "2001:db8:1::/48", "2001:db8:2::/48")], {})
    frame = bytes(eth() / IPv6(src="2001:db8:1::5", dst="2001:db8:2::5") / UDP(sport=1, dport=2))
    assert_dropped(run(frame), DropReason.POLICY_DISCARD)
    # an IPv4 packet never matches an IPv6 policy, whatever its bits
    assert_passed(run(cleartext(src="32.1.13.184", dst="32.1.13.184")))


# -- pins ---------------------------------------------------------------------------------------------------

def test_pin_and_unpin_every_map(clf):
    from pathlib import Path

    directory = Path(f"/sys/fs/bpf/xst-bpf-{os.getpid()}")
    try:
        clf.pin(str(directory))
        assert sorted(p.name for p in directory.iterdir()) == clf.map_names()
        assert all(name.startswith("xs_") for name in clf.map_names())
    finally:
        clf.unpin()
    assert not directory.exists()
