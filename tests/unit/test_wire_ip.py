"""xdpsec.wire.ip against scapy as the independent oracle, tables of malformed packets, and properties.

scapy builds and dissects every packet here on its own: what `parse`/`flow` say about a packet must equal what
scapy's dissection says, and what `build_*`/`fragment_ipv4` produce must dissect (and reassemble) in scapy with
correct checksums.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Security,
    IPOption_Timestamp,
    defragment,
)
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.sctp import SCTP
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from xdpsec.abi import Drop, DropReason
from xdpsec.sa import Flow
from xdpsec.wire import ip
from xdpsec.wire.ip import IPProto

SRC4, DST4 = "192.0.2.1", "198.51.100.2"
SRC6, DST6 = "2001:db8::1", "2001:db8:1::2"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ports = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=64)


# --- strategies: scapy packets ------------------------------------------------------------------------------------

ipv4_options = st.lists(st.sampled_from([
    lambda: IPOption_NOP(),
    lambda: IPOption_RR(),
    lambda: IPOption_LSRR(routers=["203.0.113.7"]),
    lambda: IPOption_Router_Alert(),
    lambda: IPOption_Timestamp(),
    lambda: IPOption_Security(),
]), max_size=3).map(lambda makers: [m() for m in makers])


@st.composite
def l4_v4(draw):
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "other"]))
    if kind == "tcp":
        return TCP(sport=draw(ports), dport=draw(ports))
    if kind == "udp":
        return UDP(sport=draw(ports), dport=draw(ports))
    if kind == "sctp":
        return SCTP(sport=draw(ports), dport=draw(ports))
    if kind == "icmp":
        return ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255)))
    return Raw(draw(payloads))


@st.composite
def ipv4_packets(draw):
    upper = draw(l4_v4())
    frag = draw(st.sampled_from([0, 0, 0, 1, 185]))
    mf = draw(st.booleans())
    flags = ("MF" if mf else 0) or (draw(st.sampled_from(["DF", 0])))
    pkt = IP(src=SRC4, dst=DST4, ttl=draw(st.integers(0, 255)), tos=draw(st.integers(0, 255)), frag=frag,
             flags=flags, id=draw(ports), options=draw(ipv4_options))
    if isinstance(upper, Raw):
        pkt.proto = draw(st.sampled_from([47, 50, 51, 253]))
    return raw(pkt / upper / Raw(draw(payloads)))


@st.composite
def ipv6_ext_chain(draw):
    chain = [IPv6ExtHdrHopByHop(options=[PadN(optdata=bytes(draw(st.integers(0, 20))))])] if draw(st.booleans()) else []
    fragment_used = False
    for _ in range(draw(st.integers(0, ip.MAX_EXT_HEADERS - len(chain)))):
        kind = draw(st.sampled_from(["routing", "dstopt", "fragment"]))
        if kind == "routing":
            chain.append(IPv6ExtHdrRouting(addresses=[f"2001:db8::{i:x}" for i in range(draw(st.integers(0, 3)))]))
        elif kind == "dstopt":
            chain.append(IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(draw(st.integers(0, 30))))]))
        elif not fragment_used:
            fragment_used = True
            chain.append(IPv6ExtHdrFragment(offset=draw(st.sampled_from([0, 0, 1, 100])), m=draw(st.booleans()),
                                            id=draw(st.integers(0, 2**32 - 1))))
    return chain


@st.composite
def ipv6_packets(draw):
    pkt = IPv6(src=SRC6, dst=DST6, hlim=draw(st.integers(0, 255)), tc=draw(st.integers(0, 255)),
               fl=draw(st.integers(0, 0xFFFFF)))
    for ext in draw(ipv6_ext_chain()):
        pkt = pkt / ext
    kind = draw(st.sampled_from(["tcp", "udp", "echo", "unreach", "other"]))
    upper = {
        "tcp": lambda: TCP(sport=draw(ports), dport=draw(ports)),
        "udp": lambda: UDP(sport=draw(ports), dport=draw(ports)),
        "echo": lambda: ICMPv6EchoRequest(id=draw(ports)),
        "unreach": lambda: ICMPv6DestUnreach(code=draw(st.integers(0, 6))),
        "other": lambda: Raw(draw(payloads)),
    }[kind]()
    return raw(pkt / upper / Raw(draw(payloads)))


# --- the oracle: what scapy's dissection says ---------------------------------------------------------------------

_V6_EXT = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)


def scapy_view(data: bytes) -> tuple[dict, Flow]:
    """IPInfo fields and the Flow of `data`, read off scapy's dissection."""
    if data[0] >> 4 == 4:
        p = IP(data)
        fields = dict(version=4, header_len=p.ihl * 4, proto=p.proto, proto_off=9, total_len=p.len,
                      src=socket.inet_aton(p.src), dst=socket.inet_aton(p.dst), ttl=p.ttl, tos=p.tos,
                      df=bool(p.flags.DF), fragment=bool(p.flags.MF) or p.frag != 0, first_fragment=p.frag == 0)
        upper = p.payload
    else:
        p = IPv6(data)
        off, proto, proto_off, fragment, first = 40, p.nh, 6, False, True
        upper = p.payload
        while isinstance(upper, _V6_EXT) and first:
            proto_off, proto = off, upper.nh
            off += len(upper) - len(upper.payload)
            if isinstance(upper, IPv6ExtHdrFragment):
                fragment, first = True, upper.offset == 0
            upper = upper.payload
        fields = dict(version=6, header_len=off, proto=proto, proto_off=proto_off, total_len=40 + p.plen,
                      src=socket.inet_pton(socket.AF_INET6, p.src), dst=socket.inet_pton(socket.AF_INET6, p.dst),
                      ttl=p.hlim, tos=p.tc, df=False, fragment=fragment, first_fragment=first)
    src = ipaddress.ip_address(fields["src"])
    dst = ipaddress.ip_address(fields["dst"])
    proto = fields["proto"]
    if not fields["first_fragment"]:
        return fields, Flow(src, dst, proto)
    for cls in (TCP, UDP, SCTP):
        if isinstance(upper, cls):
            return fields, Flow(src, dst, proto, upper.sport, upper.dport)
    if proto in (IPProto.ICMP, IPProto.ICMPV6) and hasattr(upper, "type"):
        return fields, Flow(src, dst, proto, upper.type, upper.code)
    return fields, Flow(src, dst, proto)


@FAST
@given(ipv4_packets() | ipv6_packets(), st.binary(max_size=6))
def test_parse_and_flow_agree_with_scapy(data, padding):
    """Random IPv4 (with options, fragments) and IPv6 (with hop-by-hop, routing, destination options and fragment
    headers) packets: every IPInfo field and the Flow equal scapy's dissection. Trailing Ethernet padding is
    ignored (the total length decides, RFC 791 §3.1 / RFC 8200 §3). Non-first fragments have no ports
    (RFC 4301 §7); ICMP/ICMPv6 selectors are type and code (RFC 4301 §4.4.1.1)."""
    fields, expected_flow = scapy_view(data)
    info = ip.parse(data + padding)
    assert {k: getattr(info, k) for k in fields} == fields
    assert ip.flow(data + padding) == expected_flow
    assert ip.flow(memoryview(bytearray(data)), info) == expected_flow


def test_flow_udplite_and_non_first_fragment():
    """UDP-Lite carries ports like UDP (RFC 3828 §3.1); a non-first fragment has none (RFC 4301 §7)."""
    pkt = ip.build_ipv4(SRC4, DST4, IPProto.UDPLITE, struct.pack("!HHHH", 1234, 4321, 8, 0))
    assert ip.flow(pkt) == Flow(ipaddress.ip_address(SRC4), ipaddress.ip_address(DST4), 136, 1234, 4321)
    frag = raw(IP(src=SRC4, dst=DST4, frag=10) / UDP(sport=1, dport=2))
    assert ip.flow(frag).sport == ip.flow(frag).dport == 0


# --- malformed input ----------------------------------------------------------------------------------------------

V4_SAMPLE = raw(IP(src=SRC4, dst=DST4, options=[IPOption_RR(), IPOption_LSRR(routers=["203.0.113.7"])])
                / TCP(sport=1, dport=2) / Raw(b"x" * 10))
V6_SAMPLE = raw(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
                / IPv6ExtHdrFragment(offset=0, m=1) / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / Raw(b"y" * 10))


@pytest.mark.parametrize("sample", [V4_SAMPLE, V6_SAMPLE], ids=["v4", "v6"])
def test_every_truncation_is_malformed_ip(sample):
    """A packet shorter than its total length is a lie we cannot process (RFC 1812 §5.2.2)."""
    for cut in range(len(sample)):
        with pytest.raises(Drop) as e:
            ip.parse(sample[:cut])
        assert e.value.reason == DropReason.MALFORMED_IP, cut


@pytest.mark.parametrize("sample", [V4_SAMPLE, V6_SAMPLE], ids=["v4", "v6"])
def test_total_length_cutting_into_l4_is_malformed_l4(sample):
    """A length that covers the IP header chain but not the whole fixed transport header: the first fragment must
    carry it (RFC 1858 §3, RFC 7112 §5)."""
    header_len = ip.parse(sample).header_len
    for length in range(header_len, len(sample) + 1):
        lied = bytearray(sample)
        if sample[0] >> 4 == 4:
            struct.pack_into("!H", lied, 2, length)
        else:
            struct.pack_into("!H", lied, 4, length - 40)
        need = 20 if sample is V4_SAMPLE else 8
        if length - header_len >= need:
            ip.flow(lied)
            continue
        with pytest.raises(Drop) as e:
            ip.flow(lied)
        assert e.value.reason == DropReason.MALFORMED_L4, length


def _v4_with(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(V4_SAMPLE)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


MALFORMED = {
    "empty": b"",
    "version 0": bytes([0x05]) + V4_SAMPLE[1:],
    "version 5": bytes([0x55]) + V4_SAMPLE[1:],
    "version 15": bytes([0xF5]) + V4_SAMPLE[1:],
    **{f"ihl {n}": _v4_with(0, "!B", 0x40 | n) for n in range(5)},
    "ihl beyond total length": raw(IP(src=SRC4, dst=DST4, ihl=15) / Raw(bytes(30))),
    "total length below header": _v4_with(2, "!H", 20),
    "total length zero": _v4_with(2, "!H", 0),
    "total length beyond buffer": _v4_with(2, "!H", len(V4_SAMPLE) + 1),
    "ipv6 header short": V6_SAMPLE[:39],
    "ipv6 payload length beyond buffer": V6_SAMPLE[:4] + struct.pack("!H", len(V6_SAMPLE) - 39) + V6_SAMPLE[6:],
    "ipv6 ext header beyond payload length":
        raw(IPv6(src=SRC6, dst=DST6, plen=8) / IPv6ExtHdrDestOpt(len=1, options=[PadN(optdata=bytes(12))])),
    "ipv6 fragment header truncated": raw(IPv6(src=SRC6, dst=DST6, plen=4) / IPv6ExtHdrFragment())[:44],
    "hop-by-hop after another header (RFC 8200 §4.1)":
        raw(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_table(data):
    with pytest.raises(Drop) as e:
        ip.parse(data)
    assert e.value.reason == DropReason.MALFORMED_IP
    with pytest.raises(Drop):
        ip.flow(data)


def test_verify_checksum():
    """RFC 1812 §5.2.2: a router verifies the IPv4 header checksum; any single flipped bit in the header is
    caught (RFC 1071 §2). Off by default, IPv6 has nothing to verify."""
    assert ip.parse(V4_SAMPLE, verify_checksum=True).header_len == 32
    assert ip.parse(V6_SAMPLE, verify_checksum=True).version == 6
    for bit in range(32 * 8):
        bad = bytearray(V4_SAMPLE)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            ip.parse(bad)
        except Drop:
            continue  # the flip broke the header some other way
        with pytest.raises(Drop) as e:
            ip.parse(bad, verify_checksum=True)
        assert e.value.reason == DropReason.MALFORMED_IP


def _chain(n: int) -> bytes:
    pkt = IPv6(src=SRC6, dst=DST6)
    for _ in range(n):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return raw(pkt / UDP(sport=7, dport=9))


def test_extension_header_depth():
    """MAX_EXT_HEADERS headers are walked; one more is EXTHDR_DEPTH, like the classifier's bounded loop."""
    info = ip.parse(_chain(ip.MAX_EXT_HEADERS))
    assert (info.proto, info.header_len) == (IPProto.UDP, 40 + 8 * ip.MAX_EXT_HEADERS)
    assert ip.flow(_chain(ip.MAX_EXT_HEADERS)).dport == 9
    with pytest.raises(Drop) as e:
        ip.parse(_chain(ip.MAX_EXT_HEADERS + 1))
    assert e.value.reason == DropReason.EXTHDR_DEPTH


def test_esp_and_ah_end_the_chain():
    """ESP/AH follow the extension headers that precede them (RFC 4303 §3.1.1, RFC 4302 §3.1.1): proto points at
    them and header_len at their first byte."""
    for proto in (IPProto.ESP, IPProto.AH):
        data = raw(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop(nh=proto) / Raw(bytes(24)))
        info = ip.parse(data)
        assert (info.proto, info.proto_off, info.header_len) == (proto, 40, 48)
        assert ip.flow(data).sport == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120) | st.tuples(st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.binary(max_size=120)).map(
    lambda t: bytes([t[0]]) + t[1]))
def test_random_bytes_raise_only_drop(data):
    """Network input never raises anything but Drop."""
    for fn in (ip.parse, ip.flow):
        try:
            fn(data)
        except Drop:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([V4_SAMPLE, V6_SAMPLE]), st.integers(0, 200), st.integers(0, 255))
def test_mutated_packets_raise_only_drop(sample, pos, value):
    data = bytearray(sample)
    data[pos % len(data)] = value
    try:
        ip.flow(data)
    except Drop:
        pass


# --- checksums ----------------------------------------------------------------------------------------------------

def test_checksum_rfc1071_example():
    """RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is its complement 220d."""
    assert ip.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@given(st.binary(max_size=200))
def test_checksum_matches_scapy(data):
    assert ip.checksum(data) == scapy_checksum(data)


@given(st.binary(max_size=100).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=100))
def test_checksum_initial_is_a_partial_sum(head, tail):
    """Summing in two steps equals summing the concatenation (RFC 1071 §2(B), associativity)."""
    partial = ~ip.checksum(head) & 0xFFFF
    assert ip.checksum(tail, partial) == ip.checksum(head + tail)


def test_checksum_zero_cases():
    """All-zero data sums to +0 (checksum ffff); data summing to -0 (ffff) has checksum 0 (RFC 1071 §1)."""
    assert ip.checksum(bytes(8)) == 0xFFFF
    assert ip.checksum(b"\xff\xff") == 0
    assert ip.checksum(b"\x12\x34\xed\xcb") == 0


@FAST
@given(st.sampled_from([(SRC4, DST4, IP), (SRC6, DST6, IPv6)]), ports, ports, payloads)
def test_pseudo_header_gives_scapys_udp_checksum(family, sport, dport, payload):
    """UDP checksum over the pseudo header (RFC 768; RFC 8200 §8.1), compared with scapy's."""
    src, dst, layer = family
    pkt = layer(raw(layer(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)))
    udp = bytearray(raw(pkt[UDP]))
    struct.pack_into("!H", udp, 6, 0)
    ours = ip.checksum(ip.pseudo_header(ipaddress.ip_address(src), ipaddress.ip_address(dst).packed, 17, len(udp))
                       + udp)
    assert (ours or 0xFFFF) == pkt[UDP].chksum  # RFC 768: a computed 0 is sent as all ones


# --- building -----------------------------------------------------------------------------------------------------

def _scapy_recomputed(pkt) -> bytes:
    """A scapy packet serialized with every checksum and length recomputed by scapy."""
    pkt = pkt.copy()
    for lay in pkt.iterpayloads():
        for field in ("chksum", "cksum", "len", "plen", "ihl"):
            if field in lay.fields:
                delattr(lay, field)
    return raw(pkt)


@FAST
@given(st.integers(0, 255), st.integers(0, 255), st.booleans(), ports, ports, payloads)
def test_build_ipv4_is_what_scapy_builds(ttl, tos, df, ident, sport, payload_seed):
    """The header checksum (RFC 791 §3.1) and every field as scapy writes them."""
    udp = raw(UDP(sport=sport, dport=53) / Raw(payload_seed))
    built = ip.build_ipv4(ipaddress.ip_address(SRC4), socket.inet_aton(DST4), 17, udp, ttl=ttl, tos=tos, df=df,
                          ident=ident)
    expected = raw(IP(src=SRC4, dst=DST4, ttl=ttl, tos=tos, flags="DF" if df else 0, id=ident, proto=17) / Raw(udp))
    assert built == expected
    assert IP(built)[UDP].sport == sport


@FAST
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFFF), payloads)
def test_build_ipv6_is_what_scapy_builds(hlim, tclass, label, payload):
    built = ip.build_ipv6(ipaddress.ip_address(SRC6), socket.inet_pton(socket.AF_INET6, DST6), 59, payload,
                          hop_limit=hlim, tclass=tclass, flow_label=label)
    assert built == raw(IPv6(src=SRC6, dst=DST6, nh=59, hlim=hlim, tc=tclass, fl=label) / Raw(payload))


def test_build_rejects_oversize_and_wrong_family():
    with pytest.raises(ValueError):
        ip.build_ipv4(socket.inet_aton(SRC4), socket.inet_aton(DST4), 17, bytes(65516))
    with pytest.raises(ValueError):
        ip.build_ipv6(ipaddress.ip_address(SRC6), ipaddress.ip_address(DST6), 17, bytes(65536))
    with pytest.raises(ValueError):
        ip.build_ipv4(ipaddress.ip_address(SRC6), socket.inet_aton(DST4), 17, b"")


@pytest.mark.parametrize("sample", [V4_SAMPLE, V6_SAMPLE], ids=["v4", "v6"])
@pytest.mark.parametrize("delta", [-8, 0, 5, 100])
def test_set_payload_len(sample, delta):
    """After changing the payload, the lengths (and the IPv4 header checksum) are what scapy computes."""
    info = ip.parse(sample)
    buf = bytearray(sample[:len(sample) + delta] if delta < 0 else sample + bytes(delta))
    ip.set_payload_len(buf, info, len(buf))
    pkt = (IP if info.version == 4 else IPv6)(sample)
    pkt[Raw].load = pkt[Raw].load[:delta] if delta < 0 else pkt[Raw].load + bytes(delta)
    expected = _scapy_recomputed(pkt)
    assert bytes(buf[:info.header_len]) == expected[:info.header_len]
    assert ip.parse(buf).total_len == len(buf)


# --- TTL --------------------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(2, 255), st.integers(0, 255), ports, ports, st.integers(0, 255), ipv4_options,
       st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.integers(0, 4))
def test_decrement_ttl_incremental_equals_full(ttl, tos, ident, frag, proto, options, src, dst, offset):
    """RFC 1624 §3 eqn. 3 gives the same checksum as recomputing over the whole header (RFC 1071), for any
    header, including the -0/+0 corner RFC 1624 §3 is about."""
    header = bytearray(raw(IP(src=ipaddress.ip_address(src).compressed, dst=ipaddress.ip_address(dst).compressed,
                              ttl=ttl, tos=tos, id=ident, frag=frag & 0x1FFF, proto=proto, options=options)))
    buf = bytearray(offset) + header
    assert ip.decrement_ttl(buf, offset)
    after = buf[offset:]
    assert after[8] == ttl - 1
    full = bytearray(after)
    struct.pack_into("!H", full, 10, 0)
    assert struct.unpack_from("!H", after, 10)[0] == ip.checksum(full)
    assert ip.checksum(after) == 0  # a valid header sums to -0 (RFC 1071 §1)


@pytest.mark.parametrize("target", [0x0000, 0x00FF, 0xFEFF, 0xFF00, 0xFFFE])
@pytest.mark.parametrize("ttl", [2, 64, 255])
def test_decrement_ttl_checksum_corners(target, ttl):
    """Checksums where the +0x100 the TTL decrement adds must carry around (>= ff00), and 0000, the example of
    RFC 1624 §3 where eqn. 2 goes wrong: eqn. 3 must agree with a full recomputation."""
    # The header sum grows by one for each unit of the identification field (one's complement arithmetic).
    base_sum = ~struct.unpack_from("!H", ip.build_ipv4(SRC4, DST4, 17, b"", ttl=ttl), 10)[0] & 0xFFFF
    first = ((~target & 0xFFFF) - base_sum) % 0xFFFF
    ident = next(i for i in (first, first + 0xFFFF) if i <= 0xFFFF and struct.unpack_from(
        "!H", ip.build_ipv4(SRC4, DST4, 17, b"", ident=i, ttl=ttl), 10)[0] == target)
    header = bytearray(ip.build_ipv4(SRC4, DST4, 17, b"", ident=ident, ttl=ttl))
    assert ip.decrement_ttl(header)
    assert header == ip.build_ipv4(SRC4, DST4, 17, b"", ident=ident, ttl=ttl - 1)


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_refuses_expired(ttl):
    """A TTL / hop limit of 1 or 0 is not forwarded (RFC 1812 §5.3.1, RFC 8200 §3): nothing changes."""
    for data in (ip.build_ipv4(socket.inet_aton(SRC4), socket.inet_aton(DST4), 17, b"", ttl=ttl),
                 ip.build_ipv6(ipaddress.ip_address(SRC6), ipaddress.ip_address(DST6), 17, b"", hop_limit=ttl)):
        buf = bytearray(data)
        assert not ip.decrement_ttl(buf)
        assert buf == data


def test_decrement_hop_limit():
    buf = bytearray(ip.build_ipv6(ipaddress.ip_address(SRC6), ipaddress.ip_address(DST6), 17, b"", hop_limit=2))
    assert ip.decrement_ttl(memoryview(buf))
    assert ip.parse(buf).ttl == 1


def test_decrement_ttl_not_ip():
    with pytest.raises(Drop):
        ip.decrement_ttl(bytearray(bytes([0x15]) + bytes(40)))


# --- fragmentation ----------------------------------------------------------------------------------------------

@FAST
@given(st.integers(0, 3000), st.integers(68, 1500), ipv4_options, ports)
def test_fragments_reassemble_in_scapy(size, mtu, options, ident):
    """RFC 791 §2.3/§3.2: every fragment fits the MTU, data is cut at multiples of 8 bytes, only options with the
    copy bit follow into later fragments (§3.1), and scapy's reassembly gives back the original packet."""
    original = raw(IP(src=SRC4, dst=DST4, id=ident, options=options) / UDP(sport=5, dport=6) / Raw(bytes(size)))
    header_len = ip.parse(original).header_len
    if mtu - header_len < 8:
        with pytest.raises(ValueError):
            ip.fragment_ipv4(original, mtu)
        return
    fragments = ip.fragment_ipv4(original, mtu)
    if len(original) <= mtu:
        assert fragments == [original]
        return
    copied = ip._copied_options(original[20:header_len])
    for i, frag in enumerate(fragments):
        pkt = IP(frag)
        assert len(frag) <= mtu
        assert _scapy_recomputed(pkt)[:20] == frag[:20]  # checksum and lengths as scapy computes them
        assert pkt.flags.MF == (i < len(fragments) - 1)
        assert pkt.id == ident
        if i:
            assert frag[20:pkt.ihl * 4] == copied
        if i < len(fragments) - 1:
            assert (pkt.len - pkt.ihl * 4) % 8 == 0
    reassembled = defragment([IP(f) for f in fragments])
    assert len(reassembled) == 1
    assert raw(reassembled[0]) == original


def test_copied_options():
    """The copy bit is the high bit of the option type (RFC 791 §3.1): LSRR (0x83) and Security (0x82) are copied,
    Record Route (0x07), Timestamp (0x44) and NOP are not."""
    options = raw(IP(options=[IPOption_RR(), IPOption_NOP(), IPOption_LSRR(routers=["203.0.113.7"]),
                              IPOption_Timestamp(), IPOption_Security()]))[20:]
    assert ip._copied_options(options) == raw(IPOption_LSRR(routers=["203.0.113.7"])) + raw(IPOption_Security()) + \
        bytes(2)
    with pytest.raises(Drop):
        ip._copied_options(bytes([0x83, 40, 0, 0]))


def test_refragmenting_a_fragment():
    """A fragment fragmented again keeps its offset base and its MF flag on the last piece (RFC 791 §3.2)."""
    original = raw(IP(src=SRC4, dst=DST4, id=9) / UDP(sport=5, dport=6) / Raw(bytes(range(256)) * 8))
    first, *rest = ip.fragment_ipv4(original, 1000)
    smaller = ip.fragment_ipv4(first, 300) + [p for r in rest for p in ip.fragment_ipv4(r, 300)]
    assert all(len(p) <= 300 for p in smaller)
    assert raw(defragment([IP(p) for p in smaller])[0]) == original


def test_fragment_refusals():
    """DF forbids fragmentation (RFC 791 §3.1); an MTU below header + 8 bytes cannot carry a fragment."""
    df = raw(IP(src=SRC4, dst=DST4, flags="DF") / Raw(bytes(2000)))
    with pytest.raises(ValueError):
        ip.fragment_ipv4(df, 1500)
    assert ip.fragment_ipv4(df, 2020) == [df]
    with pytest.raises(ValueError):
        ip.fragment_ipv4(raw(IP(src=SRC4, dst=DST4) / Raw(bytes(100))), 27)
    with pytest.raises(ValueError):
        ip.fragment_ipv4(V6_SAMPLE, 60)
