"""ICMP / ICMPv6 errors built by xdpsec.wire.icmp, dissected and checksummed by scapy, and the cases where the
RFCs forbid sending one."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
)
from scapy.packet import Raw

from xdpsec.abi import Drop
from xdpsec.wire import icmp, ip

GW4, GW6 = "203.0.113.254", "2001:db8:ffff::1"
SRC4, DST4 = "192.0.2.1", "198.51.100.2"
SRC6, DST6 = "2001:db8::1", "2001:db8:1::2"


def _checksums_ok(pkt) -> bool:
    """Does scapy compute the same IP and ICMP checksums as the ones in `pkt`?"""
    again = pkt.copy()
    for lay in again.iterpayloads():
        if lay.name.startswith(("IP in ICMP", "IPv6 in ICMP")):
            break  # the quoted packet is data, kept as it was
        for field in ("chksum", "cksum"):
            if field in lay.fields:
                delattr(lay, field)
    return raw(again) == raw(pkt)


@pytest.mark.parametrize("size", [0, 30, 1400])
def test_ipv4_fragmentation_needed(size):
    """RFC 792 / RFC 1191 §4: type 3 code 4, next-hop MTU in the low 16 bits of the second word; the quote is the
    offending packet from its IP header, as much as fits in 576 bytes (RFC 1812 §4.3.2.3); from the gateway to
    the packet's source; precedence 6 (RFC 1812 §4.3.2.5)."""
    original = raw(IP(src=SRC4, dst=DST4, flags="DF", options=[IPOption_RR()]) / TCP(sport=1, dport=2)
                   / Raw((bytes(range(256)) * 6)[:size]))
    err = icmp.too_big(original, 1380, ipaddress.ip_address(GW4))
    pkt = IP(err)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.tos) == (GW4, SRC4, 1, 0xC0)
    assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (3, 4, 1380)
    assert err[24:26] == b"\0\0"  # unused
    assert _checksums_ok(pkt)
    assert len(err) == min(576, 28 + len(original))
    assert err[28:] == original[:len(err) - 28]
    assert len(err) - 28 >= ip.parse(original).header_len + 8  # at least the header and 8 bytes (RFC 792)


@pytest.mark.parametrize("size", [0, 100, 1400])
def test_ipv6_packet_too_big(size):
    """RFC 4443 §3.2: type 2 code 0, 32-bit MTU, as much of the packet as fits in 1280 bytes (§2.4(c)),
    checksum over the pseudo header (§2.3, RFC 8200 §8.1)."""
    original = raw(IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=2) / Raw(bytes(size)))
    err = icmp.too_big(original, 1400, GW6)
    pkt = IPv6(err)
    assert (pkt.src, pkt.dst, pkt.nh) == (GW6, SRC6, 58)
    ptb = pkt[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, 1400)
    assert _checksums_ok(pkt)
    assert len(err) == min(1280, 48 + len(original))
    assert err[48:] == original[:len(err) - 48]


def test_time_exceeded():
    """ICMP type 11 code 0 (RFC 792) and ICMPv6 type 3 code 0 (RFC 4443 §3.3), quoting the packet."""
    v4 = raw(IP(src=SRC4, dst=DST4, ttl=1) / UDP(sport=1, dport=33434))
    pkt = IP(icmp.time_exceeded(v4, GW4))
    assert (pkt.src, pkt.dst, pkt[ICMP].type, pkt[ICMP].code) == (GW4, SRC4, 11, 0)
    assert _checksums_ok(pkt) and raw(pkt)[28:] == v4
    v6 = raw(IPv6(src=SRC6, dst=DST6, hlim=1) / UDP(sport=1, dport=33434))
    pkt6 = IPv6(icmp.time_exceeded(v6, ipaddress.ip_address(GW6).packed))
    assert (pkt6.src, pkt6.dst) == (GW6, SRC6)
    assert (pkt6[ICMPv6TimeExceeded].type, pkt6[ICMPv6TimeExceeded].code) == (3, 0)
    assert _checksums_ok(pkt6) and raw(pkt6)[48:] == v6


NO_ERROR_V4 = {
    "ICMP dest unreachable (RFC 1812 §4.3.2.7)": IP(src=SRC4, dst=DST4) / ICMP(type=3, code=1),
    "ICMP time exceeded": IP(src=SRC4, dst=DST4) / ICMP(type=11),
    "ICMP parameter problem": IP(src=SRC4, dst=DST4) / ICMP(type=12),
    "ICMP redirect": IP(src=SRC4, dst=DST4) / ICMP(type=5),
    "ICMP source quench": IP(src=SRC4, dst=DST4) / ICMP(type=4),
    "ICMP without a type byte": IP(src=SRC4, dst=DST4, proto=1),
    "non-initial fragment": IP(src=SRC4, dst=DST4, frag=100) / Raw(bytes(16)),
    "multicast destination": IP(src=SRC4, dst="224.0.0.5") / UDP(),
    "limited broadcast destination": IP(src=SRC4, dst="255.255.255.255") / UDP(),
    "source 0.0.0.0": IP(src="0.0.0.0", dst=DST4) / UDP(),
    "source in 0/8": IP(src="0.1.2.3", dst=DST4) / UDP(),
    "loopback source (RFC 1812 §5.3.7)": IP(src="127.0.0.1", dst=DST4) / UDP(),
    "multicast source": IP(src="239.1.1.1", dst=DST4) / UDP(),
    "class E source": IP(src="240.0.0.1", dst=DST4) / UDP(),
}
NO_ERROR_V6 = {
    "ICMPv6 error (RFC 4443 §2.4(e.1))": IPv6(src=SRC6, dst=DST6) / ICMPv6DestUnreach(),
    "ICMPv6 too big": IPv6(src=SRC6, dst=DST6) / ICMPv6PacketTooBig(),
    "ICMPv6 without a type byte": IPv6(src=SRC6, dst=DST6, nh=58),
    "unspecified source (§2.4(e.6))": IPv6(src="::", dst=DST6) / UDP(),
    "multicast source": IPv6(src="ff02::1", dst=DST6) / UDP(),
}


@pytest.mark.parametrize("pkt", NO_ERROR_V4.values(), ids=NO_ERROR_V4.keys())
def test_no_ipv4_error(pkt):
    assert icmp.too_big(raw(pkt), 1000, GW4) is None
    assert icmp.time_exceeded(raw(pkt), GW4) is None


@pytest.mark.parametrize("pkt", NO_ERROR_V6.values(), ids=NO_ERROR_V6.keys())
def test_no_ipv6_error(pkt):
    assert icmp.too_big(raw(pkt), 1280, GW6) is None
    assert icmp.time_exceeded(raw(pkt), GW6) is None


def test_errors_that_are_sent():
    """Informational ICMP is answered; IPv6 Packet Too Big goes to multicast destinations too (RFC 4443
    §2.4(e.3)) while Time Exceeded does not (§2.4(e.2)); an IPv6 non-first fragment is answered, RFC 4443 has no
    rule against it and the sender needs the MTU."""
    assert icmp.too_big(raw(IP(src=SRC4, dst=DST4) / ICMP(type=8)), 1000, GW4) is not None
    assert icmp.too_big(raw(IPv6(src=SRC6, dst=DST6) / ICMPv6EchoRequest()), 1280, GW6) is not None
    multicast = raw(IPv6(src=SRC6, dst="ff0e::1") / UDP())
    assert icmp.too_big(multicast, 1280, GW6) is not None
    assert icmp.time_exceeded(multicast, GW6) is None
    later = raw(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(offset=10, nh=58) / Raw(bytes(16)))
    assert icmp.too_big(later, 1280, GW6) is not None


def test_malformed_packet_is_a_drop():
    with pytest.raises(Drop):
        icmp.too_big(b"\x45" + bytes(10), 1000, GW4)
    with pytest.raises(Drop):
        icmp.time_exceeded(b"", GW6)


def test_source_of_the_other_family_is_a_bug():
    with pytest.raises(ValueError):
        icmp.too_big(raw(IP(src=SRC4, dst=DST4) / UDP()), 1000, GW6)
