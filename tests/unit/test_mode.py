"""protect/unprotect as the worker sees them: the drop table, sequence numbers, selectors, ECN, NAT-T checksums."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.abi import Drop, DropReason
from xdpsec.esp.codec import EspContext, esp_encap
from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.sa import (
    Direction,
    Encr,
    Integ,
    Mode,
    PortRange,
    Protocol,
    SAParams,
    TrafficSelector,
    Transform,
    UdpEncap,
)
from xdpsec.wire import ip

US4, PEER4 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("198.51.100.1")
US6, PEER6 = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8:1::1")
GCM = Transform(Encr.AES_GCM_16, 128)
CBC = Transform(Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128)
AH256 = Transform(None, 0, Integ.HMAC_SHA2_256_128)
KEYS = random.Random(1)
SPI = 0x1234


def params(direction: Direction, protocol: Protocol = Protocol.ESP, mode: Mode = Mode.TUNNEL,
           transform: Transform = GCM, family: int = 4, **kw) -> SAParams:
    """One side of an SA; the keys are fixed so both directions share them."""
    us, peer = (US4, PEER4) if family == 4 else (US6, PEER6)
    local, remote = (us, peer) if direction == Direction.OUT else (peer, us)
    keys = random.Random(int(transform.encr or 0) * 100 + int(transform.integ or 0))
    return SAParams(spi=SPI, protocol=protocol, direction=direction, mode=mode, transform=transform,
                    local=local, remote=remote, enc_key=keys.randbytes(transform.enc_key_len),
                    integ_key=keys.randbytes(transform.integ_key_len), **kw)


def pair(**kw) -> tuple[OutboundSA, InboundSA]:
    return OutboundSA(params(Direction.OUT, **kw)), InboundSA(params(Direction.IN, **kw))


def udp_packet(src: str, dst: str, payload: bytes = b"hello", sport: int = 1234, tos: int = 0) -> bytes:
    """An IPv4 or IPv6 UDP packet with a correct checksum."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = bytearray(struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload)
    struct.pack_into("!H", udp, 6, ip.checksum(ip.pseudo_header(s, d, 17, len(udp)) + udp) or 0xFFFF)
    if s.version == 4:
        return ip.build_ipv4(s, d, 17, bytes(udp), tos=tos)
    return ip.build_ipv6(s, d, 17, bytes(udp), tclass=tos)


def inner_for(sa: OutboundSA, **kw) -> bytes:
    p = sa.params
    if p.mode == Mode.TRANSPORT:
        return udp_packet(str(p.local), str(p.remote), **kw)
    if p.family == 4:
        return udp_packet("203.0.113.5", "198.51.100.77", **kw)
    return udp_packet("2001:db8:a::5", "2001:db8:b::77", **kw)


def fix_ipv4_checksum(wire: bytearray) -> bytearray:
    if wire[0] >> 4 == 4:
        hl = (wire[0] & 15) * 4
        wire[10:12] = b"\0\0"
        struct.pack_into("!H", wire, 10, ip.checksum(wire[:hl]))
    return wire


def drop_reason(sa: InboundSA, wire: bytes) -> DropReason | None:
    try:
        unprotect(sa, wire)
    except Drop as drop:
        return drop.reason
    return None


CONFIGS = [
    dict(protocol=Protocol.ESP, mode=Mode.TUNNEL, transform=GCM, family=4),
    dict(protocol=Protocol.ESP, mode=Mode.TUNNEL, transform=CBC, family=6),
    dict(protocol=Protocol.ESP, mode=Mode.TRANSPORT, transform=CBC, family=4),
    dict(protocol=Protocol.ESP, mode=Mode.TUNNEL, transform=GCM, family=4, encap=UdpEncap()),
    dict(protocol=Protocol.ESP, mode=Mode.TRANSPORT, transform=GCM, family=6, encap=UdpEncap(4501, 4500)),
    dict(protocol=Protocol.AH, mode=Mode.TUNNEL, transform=AH256, family=4),
    dict(protocol=Protocol.AH, mode=Mode.TRANSPORT, transform=AH256, family=6),
]
CONFIG_IDS = [f"{c['protocol'].name}-{c['mode'].value}-v{c['family']}{'-udp' if 'encap' in c else ''}"
              for c in CONFIGS]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_round_trip_and_replay(config):
    out, inb = pair(**config)
    packets = [inner_for(out, payload=bytes([i]) * i) for i in range(5)]
    wires = [protect(out, p) for p in packets]
    for p, w in zip(packets, wires, strict=True):
        assert unprotect(inb, w) == p
    assert (out.seq, out.packets, inb.packets) == (5, 5, 5)
    assert out.bytes == inb.bytes == sum(map(len, packets))
    for w in wires:  # RFC 4303 §3.4.3 / RFC 4302 §3.4.3: every one of them again is a replay
        assert drop_reason(inb, w) == DropReason.REPLAY
    assert inb.packets == 5


def _exempt_bits(config: dict, wire: bytes) -> set[int]:
    """Bits a change of which need not be detected: IPv6 traffic class, flow label and hop limit (no checksum,
    mutable for AH), the IPv6 source address under ESP (ESP does not protect the IP header, RFC 4303 §3.1, and
    SAs are found by SPI and destination, RFC 4301 §4.1; IPv4's header checksum still catches it), and the UDP
    ports and checksum of ESP-in-UDP (RFC 3948 §2.1: not relied upon)."""
    exempt: set[int] = set()
    if wire[0] >> 4 == 6:
        exempt |= set(range(4, 32)) | set(range(56, 64))
        if config["protocol"] == Protocol.ESP:
            exempt |= set(range(64, 192))
    if "encap" in config:
        off = ip.parse(wire).header_len * 8
        exempt |= set(range(off, off + 32)) | set(range(off + 48, off + 64))
    return exempt


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_every_bit_flip_is_dropped(config):
    out, inb = pair(**config)
    wire = protect(out, inner_for(out, payload=b"x" * 3))
    exempt = _exempt_bits(config, wire)
    for bit in range(len(wire) * 8):
        if bit in exempt:
            continue
        bad = bytearray(wire)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        assert drop_reason(inb, bytes(bad)) is not None, f"flip of bit {bit} (byte {bit // 8}) went through"
    assert unprotect(inb, wire) is not None  # the original still verifies: the flips did not move the window


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_wrong_outer_destination(config):
    out, inb = pair(**config)
    wire = bytearray(protect(out, inner_for(out)))
    if config["family"] == 4:
        wire[19] ^= 1
    else:
        wire[39] ^= 1
    assert drop_reason(inb, bytes(fix_ipv4_checksum(wire))) == DropReason.SA_MISMATCH


@pytest.mark.parametrize(("sender", "receiver"), [
    (dict(protocol=Protocol.ESP), dict(protocol=Protocol.AH, transform=AH256)),  # ESP to an AH SA
    (dict(protocol=Protocol.AH, transform=AH256), dict(protocol=Protocol.ESP)),  # AH to an ESP SA
    (dict(encap=UdpEncap()), dict()),  # ESP-in-UDP to a plain ESP SA
    (dict(), dict(encap=UdpEncap())),  # plain ESP to an ESP-in-UDP SA
], ids=["esp-to-ah", "ah-to-esp", "udp-to-esp", "esp-to-udp"])
def test_wrong_protocol_or_encapsulation(sender, receiver):
    out = OutboundSA(params(Direction.OUT, **sender))
    inb = InboundSA(params(Direction.IN, **receiver))
    assert drop_reason(inb, protect(out, inner_for(out))) == DropReason.SA_MISMATCH


def test_fragmented_esp_is_dropped():
    out, inb = pair()
    wire = bytearray(protect(out, inner_for(out)))
    wire[6] |= 0x20  # More Fragments
    assert drop_reason(inb, bytes(fix_ipv4_checksum(wire))) == DropReason.IPSEC_FRAGMENT


@pytest.mark.parametrize("protocol", [Protocol.ESP, Protocol.AH])
def test_tunnel_with_tcp_next_header(protocol):
    """A transport-mode packet (next header 17, UDP) fed to a tunnel-mode SA with the same keys."""
    transform = GCM if protocol == Protocol.ESP else AH256
    out = OutboundSA(params(Direction.OUT, protocol=protocol, mode=Mode.TRANSPORT, transform=transform))
    inb = InboundSA(params(Direction.IN, protocol=protocol, mode=Mode.TUNNEL, transform=transform))
    assert drop_reason(inb, protect(out, inner_for(out))) == DropReason.BAD_NEXT_HEADER


def test_esp_dummy_packet_is_discarded():
    """RFC 4303 §2.6: next header 59 is a dummy packet; it is consumed (window moves) and nothing comes out."""
    _, inb = pair()
    esp = esp_encap(EspContext(params(Direction.OUT)), 1, 59, b"\0" * 20)
    wire = ip.build_ipv4(US4, PEER4, 50, esp)
    assert unprotect(inb, wire) is None
    assert drop_reason(inb, wire) == DropReason.REPLAY


def test_tunnel_inner_garbage_is_bad_inner():
    _, inb = pair()
    esp = esp_encap(EspContext(params(Direction.OUT)), 1, 4, b"\x45" + b"\0" * 10)
    assert drop_reason(inb, ip.build_ipv4(US4, PEER4, 50, esp)) == DropReason.BAD_INNER
    esp = esp_encap(EspContext(params(Direction.OUT)), 2, 41, udp_packet("203.0.113.5", "198.51.100.77"))
    assert drop_reason(inb, ip.build_ipv4(US4, PEER4, 50, esp)) == DropReason.BAD_INNER  # says v6, is v4


def test_tfc_padding_is_stripped():
    out, inb = pair(tfc_pad=100)
    packet = inner_for(out)
    wire = protect(out, packet)
    assert len(wire) > len(packet) + 100
    assert unprotect(inb, wire) == packet


NET = ipaddress.ip_network
SELECTOR_CASES = [
    # (local_ts, remote_ts, inner src, inner dst, dropped?)
    ((), (), "203.0.113.5", "198.51.100.77", False),
    ((TrafficSelector(NET("198.51.100.0/24")),), (TrafficSelector(NET("203.0.113.0/24")),),
     "203.0.113.5", "198.51.100.77", False),
    ((TrafficSelector(NET("198.51.100.0/24")),), (TrafficSelector(NET("203.0.113.0/28")),),
     "203.0.113.20", "198.51.100.77", True),  # source outside remote_ts
    ((TrafficSelector(NET("198.51.100.0/28")),), (),
     "203.0.113.5", "198.51.100.77", True),  # destination outside local_ts
    ((TrafficSelector(NET("198.51.100.0/28")), TrafficSelector(NET("198.51.100.64/26"))), (),
     "203.0.113.5", "198.51.100.77", False),  # any of several
    ((), (TrafficSelector(NET("203.0.113.0/24"), proto=6),), "203.0.113.5", "198.51.100.77", True),  # UDP, not TCP
    ((TrafficSelector(NET("198.51.100.0/24"), proto=17, ports=PortRange(53, 53)),),
     (), "203.0.113.5", "198.51.100.77", False),  # destination port 53
    ((), (TrafficSelector(NET("2001:db8::/32")),), "203.0.113.5", "198.51.100.77", True),  # other family
]


@pytest.mark.parametrize(("local_ts", "remote_ts", "src", "dst", "dropped"), SELECTOR_CASES)
def test_inbound_selector_check(local_ts, remote_ts, src, dst, dropped):
    out = OutboundSA(params(Direction.OUT))
    inb = InboundSA(params(Direction.IN, local_ts=local_ts, remote_ts=remote_ts))
    wire = protect(out, udp_packet(src, dst))
    assert drop_reason(inb, wire) == (DropReason.SELECTOR_MISMATCH if dropped else None)


def test_sequence_exhaustion_without_esn():
    """RFC 4303 §3.3.3: 2^32-1 is the last number; the counter never cycles to 0."""
    out = OutboundSA(params(Direction.OUT), next_seq=2**32 - 1)
    wire = protect(out, inner_for(out))
    assert struct.unpack_from("!I", wire, 24)[0] == 2**32 - 1
    with pytest.raises(Drop) as drop:
        protect(out, inner_for(out))
    assert drop.value.reason == DropReason.SEQ_EXHAUSTED
    assert out.seq == 2**32 - 1 and out.packets == 1


def test_sequence_with_esn_crosses_2_32_and_ends_at_2_64():
    transform = Transform(Encr.AES_GCM_16, 128, esn=True)
    out = OutboundSA(params(Direction.OUT, transform=transform), next_seq=2**32 - 1)
    inb = InboundSA(params(Direction.IN, transform=transform))
    inb.window.update(2**32 - 2)
    for expected_low in (2**32 - 1, 0, 1):
        wire = protect(out, inner_for(out))
        assert struct.unpack_from("!I", wire, 24)[0] == expected_low
        assert unprotect(inb, wire) is not None
    assert inb.window.top == 2**32 + 1
    last = OutboundSA(params(Direction.OUT, transform=transform), next_seq=2**64 - 1)
    protect(last, inner_for(last))
    with pytest.raises(Drop) as drop:
        protect(last, inner_for(last))
    assert drop.value.reason == DropReason.SEQ_EXHAUSTED


def test_reserve_once_per_block_and_never_past_the_limit():
    calls: list[int] = []

    def reserve(sa: OutboundSA) -> int:
        calls.append(sa.seq)
        return sa.seq + 3  # a block of 3 numbers after the last one used

    out = OutboundSA(params(Direction.OUT), next_seq=10, reserve=reserve)
    used = []
    for _ in range(7):
        wire = protect(out, inner_for(out))
        used.append(struct.unpack_from("!I", wire, 24)[0])
        assert used[-1] <= out.seq_limit
    assert used == list(range(10, 17))
    assert calls == [9, 12, 15]  # one call per block of 3, before its first number


def test_reserve_that_gives_nothing_is_exhaustion():
    out = OutboundSA(params(Direction.OUT), next_seq=5, reserve=lambda sa: sa.seq)
    with pytest.raises(Drop) as drop:
        protect(out, inner_for(out))
    assert drop.value.reason == DropReason.SEQ_EXHAUSTED and out.seq == 4


def test_reserve_is_clamped_to_the_sequence_space():
    out = OutboundSA(params(Direction.OUT), next_seq=2**32 - 1, reserve=lambda sa: 2**40)
    protect(out, inner_for(out))
    assert out.seq_limit == 2**32 - 1
    with pytest.raises(Drop):
        protect(out, inner_for(out))


# RFC 6040 §4.2, figure 4: (inner ECN, outer ECN) -> inner ECN after decapsulation; None = dropped.
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
ECN_TABLE = [
    (NOT_ECT, NOT_ECT, NOT_ECT), (NOT_ECT, ECT0, NOT_ECT), (NOT_ECT, ECT1, NOT_ECT), (NOT_ECT, CE, None),
    (ECT0, NOT_ECT, ECT0), (ECT0, ECT0, ECT0), (ECT0, ECT1, ECT1), (ECT0, CE, CE),
    (ECT1, NOT_ECT, ECT1), (ECT1, ECT0, ECT1), (ECT1, ECT1, ECT1), (ECT1, CE, CE),
    (CE, NOT_ECT, CE), (CE, ECT0, CE), (CE, ECT1, CE), (CE, CE, CE),
]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("inner_ecn", "outer_ecn", "result"), ECN_TABLE)
def test_ecn_decapsulation(family, inner_ecn, outer_ecn, result):
    out, inb = pair(family=family)
    packet = inner_for(out, tos=0xB8 | inner_ecn)  # DSCP EF
    wire = bytearray(protect(out, packet))
    assert ip.parse(wire).tos == 0xB8 | inner_ecn  # RFC 6040 §4.1 normal mode: copied on encapsulation
    if family == 4:
        wire[1] = (wire[1] & 0xFC) | outer_ecn
    else:
        wire[1] = (wire[1] & 0xCF) | (outer_ecn << 4)
    fix_ipv4_checksum(wire)
    if result is None:
        assert drop_reason(inb, bytes(wire)) is not None
        return
    inner = unprotect(inb, bytes(wire))
    info = ip.parse(inner)
    assert info.tos == 0xB8 | result
    if family == 4:
        assert ip.checksum(inner[:20]) == 0


def test_nat_t_transport_restores_the_udp_checksum():
    """RFC 3948 §3.1.2: a NAT rewrote the sender's address; the restored packet's UDP checksum is recomputed."""
    encap = UdpEncap()
    out = OutboundSA(params(Direction.OUT, mode=Mode.TRANSPORT, encap=encap))
    inb = InboundSA(params(Direction.IN, mode=Mode.TRANSPORT, encap=encap))
    wire = bytearray(protect(out, inner_for(out, payload=b"abc" * 7)))
    assert wire[9] == 17 and struct.unpack_from("!HHHH", wire, 20)[::3] == (4500, 0)  # RFC 3948 §2.1
    wire[12:16] = ipaddress.ip_address("203.0.113.99").packed  # the NAT's public address
    restored = unprotect(inb, bytes(fix_ipv4_checksum(wire)))
    info = ip.parse(restored)
    assert info.src == ipaddress.ip_address("203.0.113.99").packed and info.proto == 17
    udp = restored[info.header_len:]
    assert ip.checksum(ip.pseudo_header(info.src, info.dst, 17, len(udp)) + udp) == 0


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mangled_packets_only_ever_drop(config, data):
    """Network input raises nothing but Drop: truncations, extensions and random rewrites of a valid packet."""
    out, inb = pair(**config)
    wire = bytearray(protect(out, inner_for(out)))
    cut = data.draw(st.integers(0, len(wire)))
    tail = data.draw(st.binary(max_size=40))
    pos = data.draw(st.integers(0, len(wire) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    wire[pos:pos + len(patch)] = patch
    for candidate in (bytes(wire[:cut]) + tail, bytes(wire), bytes(fix_ipv4_checksum(wire))):
        try:
            unprotect(inb, candidate)
        except Drop:
            pass
