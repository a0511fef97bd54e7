"""xdpsec.wire.eth against frames scapy builds: untagged, 802.1Q, QinQ (802.1ad + 802.1Q), truncations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from xdpsec.abi import Drop, DropReason
from xdpsec.wire import eth

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
L3 = raw(IP(src="192.0.2.1", dst="198.51.100.2"))
L3V6 = raw(IPv6(src="2001:db8::1", dst="2001:db8::2"))

FRAMES = {
    "untagged IPv4": (Ether(dst=MAC_A, src=MAC_B, type=eth.ETH_P_IP) / L3, 14, eth.ETH_P_IP),
    "untagged IPv6": (Ether(dst=MAC_A, src=MAC_B, type=eth.ETH_P_IPV6) / L3V6, 14, eth.ETH_P_IPV6),
    "802.1Q": (Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=10, type=eth.ETH_P_IP) / L3, 18, eth.ETH_P_IP),
    "QinQ 802.1ad + 802.1Q": (Ether(dst=MAC_A, src=MAC_B, type=eth.ETH_P_8021AD) / Dot1AD(vlan=100)
                              / Dot1Q(vlan=10, type=eth.ETH_P_IPV6) / L3V6, 22, eth.ETH_P_IPV6),
    "double 802.1Q": (Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=1) / Dot1Q(vlan=2, type=eth.ETH_P_IP) / L3, 22,
                      eth.ETH_P_IP),
    "third tag not skipped": (Ether(dst=MAC_A, src=MAC_B) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / L3, 22,
                              eth.ETH_P_8021Q),
    "ARP": (Ether(dst=MAC_A, src=MAC_B, type=0x0806) / bytes(28), 14, 0x0806),
}


@pytest.mark.parametrize(("frame", "offset", "ethertype"), FRAMES.values(), ids=FRAMES.keys())
def test_parse_eth(frame, offset, ethertype):
    data = raw(frame)
    assert eth.parse_eth(data) == (offset, ethertype)
    assert eth.parse_eth(memoryview(bytearray(data))) == (offset, ethertype)
    if ethertype == eth.ETH_P_IP:
        assert data[offset:] == L3


@pytest.mark.parametrize(("frame", "offset"), [(f, o) for f, o, _ in FRAMES.values()], ids=FRAMES.keys())
def test_truncated_headers_are_malformed_eth(frame, offset):
    data = raw(frame)
    for cut in range(offset):
        with pytest.raises(Drop) as e:
            eth.parse_eth(data[:cut])
        assert e.value.reason == DropReason.MALFORMED_ETH
    assert eth.parse_eth(data[:offset])[0] == offset  # the headers alone are enough


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_drop(data):
    try:
        offset, _ = eth.parse_eth(data)
    except Drop:
        return
    assert offset <= len(data)


def test_build_eth_matches_scapy():
    header = eth.build_eth(eth.mac_bytes(MAC_A), eth.mac_bytes(MAC_B), eth.ETH_P_IPV6)
    assert header == raw(Ether(dst=MAC_A, src=MAC_B, type=eth.ETH_P_IPV6))
    with pytest.raises(ValueError):
        eth.build_eth(b"\x00" * 5, eth.mac_bytes(MAC_B), eth.ETH_P_IP)


@given(st.binary(min_size=6, max_size=6))
def test_mac_round_trip(mac):
    assert eth.mac_bytes(eth.mac_str(mac)) == mac
    assert eth.mac_bytes(eth.mac_str(mac).upper().replace(":", "-")) == mac


@pytest.mark.parametrize("text", ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "02:00:00:00:00:0g",
                                  "02:00:00:00:00:100", "02:00:00:00:00:+1", "02:00:00:00:00: 1", "020000000000"])
def test_bad_mac(text):
    with pytest.raises(ValueError):
        eth.mac_bytes(text)
