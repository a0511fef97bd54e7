"""AH (RFC 4302): what routers may change in flight still verifies, anything else does not.

Each case protects a packet, changes one field the way a router (or an attacker) would, keeps the IPv4 header
checksum valid as a router does, and checks the verdict against RFC 4302 §3.3.3.1 and appendix A.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from xdpsec.abi import Drop, DropReason
from xdpsec.esp import ah
from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.sa import Direction, Integ, Mode, Protocol, SAParams, Transform
from xdpsec.wire import ip

US4, PEER4 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("198.51.100.1")
US6, PEER6 = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8:1::1")


def sa_pair(mode: Mode, family: int, esn: bool = False, integ: Integ = Integ.HMAC_SHA2_256_128):
    transform = Transform(None, 0, integ, esn=esn)
    key = random.Random(int(integ)).randbytes(transform.integ_key_len)
    us, peer = (US4, PEER4) if family == 4 else (US6, PEER6)
    common = dict(spi=0x4242, protocol=Protocol.AH, mode=mode, transform=transform, integ_key=key)
    return (SAParams(direction=Direction.OUT, local=us, remote=peer, **common),
            SAParams(direction=Direction.IN, local=peer, remote=us, **common))


def ipv4_with_options(src, dst, options: bytes, payload: bytes = b"payload!") -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0x10, 20 + len(options) + len(payload),
                                   7, 0, 64, 17, 0, src.packed, dst.packed)) + options
    struct.pack_into("!H", header, 10, ip.checksum(header))
    return bytes(header) + payload


# Router Alert (148, immutable), Record Route (7, mutable) with room for two addresses, NOP, EOL.
RA = bytes([148, 4, 0, 0])
RR = bytes([7, 11, 4]) + bytes(8)
OPTIONS = RA + RR + bytes([1])  # 4 + 11 + 1 = 16 bytes
RR_DATA = 4 + 3  # offset of the first route slot inside OPTIONS
RA_VALUE = 2  # offset of the Router Alert value inside OPTIONS


def ipv6_with_hbh(src, dst, payload: bytes = b"payload!") -> bytes:
    """IPv6 + hop-by-hop [mutable option 0x3e (4 bytes data), immutable 0x1e (4 bytes)] + UDP-ish payload."""
    hbh = bytes([17, 1, 0x3E, 4]) + b"MMMM" + bytes([0x1E, 4]) + b"IIII" + bytes([1, 0])  # PadN(0) to 16
    return ip.build_ipv6(src, dst, 0, hbh + payload, tclass=0x28, flow_label=0x12345, hop_limit=60)


def fix(wire: bytearray) -> bytes:
    if wire[0] >> 4 == 4:
        hl = (wire[0] & 15) * 4
        wire[10:12] = b"\0\0"
        struct.pack_into("!H", wire, 10, ip.checksum(wire[:hl]))
    return bytes(wire)


def set_bytes(off: int, value: bytes):
    def change(wire: bytearray) -> None:
        wire[off:off + len(value)] = value
    return change


def xor(off: int, mask: int):
    def change(wire: bytearray) -> None:
        wire[off] ^= mask
    return change


# (name, mode, family, change to the protected packet, still verifies?)
# Offsets: IPv4 header, 16 bytes of options from 20, AH at 36 (transport); IPv6 header, HBH at 40 (transport).
CASES = [
    ("v4 TTL", Mode.TUNNEL, 4, set_bytes(8, b"\x05"), True),
    ("v4 TOS", Mode.TUNNEL, 4, set_bytes(1, b"\xb8"), True),
    ("v4 DF set en route", Mode.TUNNEL, 4, xor(6, 0x40), True),
    ("v4 source address", Mode.TUNNEL, 4, xor(15, 1), False),
    ("v4 identification", Mode.TUNNEL, 4, xor(5, 1), False),
    ("v4 inner payload", Mode.TUNNEL, 4, xor(-1, 1), False),
    ("v4 inner TTL (immutable inside)", Mode.TUNNEL, 4, xor(20 + 24 + 8, 1), False),
    ("v4 record route filled in", Mode.TRANSPORT, 4, set_bytes(20 + RR_DATA, US4.packed), True),
    ("v4 record route pointer", Mode.TRANSPORT, 4, set_bytes(20 + 6, b"\x08"), True),
    ("v4 router alert value", Mode.TRANSPORT, 4, set_bytes(20 + RA_VALUE, b"\x00\x01"), False),
    ("v4 NOP turned into EOL", Mode.TRANSPORT, 4, set_bytes(20 + 15, b"\x00"), False),
    ("v4 AH next header", Mode.TRANSPORT, 4, xor(36, 1), False),
    ("v4 AH reserved", Mode.TRANSPORT, 4, xor(38, 1), False),
    ("v6 hop limit", Mode.TUNNEL, 6, set_bytes(7, b"\x01"), True),
    ("v6 traffic class (DSCP)", Mode.TUNNEL, 6, xor(0, 0x0F), True),
    ("v6 traffic class (ECN, inner ECT)", Mode.TRANSPORT, 6, xor(1, 0x30), True),
    ("v6 flow label", Mode.TUNNEL, 6, set_bytes(1, b"\x0a\xbc\xde"), True),
    ("v6 source address", Mode.TUNNEL, 6, xor(23, 1), False),
    ("v6 AH padding", Mode.TUNNEL, 6, xor(40 + 28, 1), False),
    ("v6 mutable hop-by-hop option data", Mode.TRANSPORT, 6, set_bytes(44, b"zzzz"), True),
    ("v6 immutable hop-by-hop option data", Mode.TRANSPORT, 6, set_bytes(50, b"zzzz"), False),
    ("v6 transport payload", Mode.TRANSPORT, 6, xor(-1, 0x80), False),
]


def packet_for(mode: Mode, family: int, out: SAParams) -> bytes:
    if mode == Mode.TUNNEL:
        if family == 4:
            return ip.build_ipv4(ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("198.51.100.9"), 17,
                                 b"inner payload")
        return ip.build_ipv6(ipaddress.ip_address("2001:db8:a::1"), ipaddress.ip_address("2001:db8:b::1"), 17,
                             b"inner payload")
    if family == 4:
        return ipv4_with_options(out.local, out.remote, OPTIONS)
    return ipv6_with_hbh(out.local, out.remote)


@pytest.mark.parametrize(("name", "mode", "family", "change", "verifies"), CASES, ids=[c[0] for c in CASES])
def test_mutable_fields(name, mode, family, change, verifies):
    out_params, in_params = sa_pair(mode, family)
    packet = packet_for(mode, family, out_params)
    wire = bytearray(protect(OutboundSA(out_params), packet))
    changed = bytearray(wire)
    change(changed)
    assert changed != wire, "the case changes nothing"
    inb = InboundSA(in_params)
    if verifies:
        result = unprotect(inb, fix(changed))
        if mode == Mode.TUNNEL:
            assert result == packet
    else:
        with pytest.raises(Drop) as drop:
            unprotect(inb, fix(changed))
        assert drop.value.reason in (DropReason.AUTH_FAILED, DropReason.BAD_NEXT_HEADER)
        assert unprotect(inb, bytes(wire)) is not None  # the failure did not consume the sequence number


@pytest.mark.parametrize(("integ", "family", "length"), [
    (Integ.HMAC_SHA2_256_128, 4, 28), (Integ.HMAC_SHA2_384_192, 4, 36), (Integ.HMAC_SHA2_512_256, 4, 44),
    (Integ.HMAC_SHA2_256_128, 6, 32), (Integ.HMAC_SHA2_384_192, 6, 40), (Integ.HMAC_SHA2_512_256, 6, 48),
])
def test_ah_length_and_padding(integ, family, length):
    """RFC 4302 §2.2 and §3.3.3.2.1: 12 fixed bytes + ICV, padded to 32 bits (IPv4) or 64 bits (IPv6)."""
    out_params, _ = sa_pair(Mode.TUNNEL, family, integ=integ)
    wire = protect(OutboundSA(out_params), packet_for(Mode.TUNNEL, family, out_params))
    info = ip.parse(wire)
    assert info.proto == 51
    header = ah.parse_ah(wire, info.header_len, info.total_len)
    assert header.length == length == ah.ah_length(_icv(integ), family)
    assert wire[info.header_len + 1] == length // 4 - 2
    assert wire[info.header_len + 12 + _icv(integ):info.header_len + length] == bytes(length - 12 - _icv(integ))


def _icv(integ: Integ) -> int:
    return {Integ.HMAC_SHA2_256_128: 16, Integ.HMAC_SHA2_384_192: 24, Integ.HMAC_SHA2_512_256: 32}[integ]


def test_esn_high_bits_are_in_the_icv():
    """RFC 4302 §2.5.1: with ESN the high 32 bits are authenticated though not sent. A receiver whose window
    puts the packet in the wrong 2^32 subspace computes another ICV."""
    out_params, in_params = sa_pair(Mode.TUNNEL, 4, esn=True)
    wire = protect(OutboundSA(out_params, next_seq=2**32 + 5), packet_for(Mode.TUNNEL, 4, out_params))
    fresh = InboundSA(in_params)  # infers high bits 0
    with pytest.raises(Drop) as drop:
        unprotect(fresh, wire)
    assert drop.value.reason == DropReason.AUTH_FAILED
    advanced = InboundSA(in_params)
    advanced.window.update(2**32 + 1)
    assert unprotect(advanced, wire) is not None


@pytest.mark.parametrize("options", [
    bytes([7, 40, 4]) + bytes(1),  # Record Route claiming 40 bytes in a 4-byte option area
    bytes([148, 1, 0, 0]),  # length below 2
    bytes([1, 1, 1, 68]),  # a Timestamp type byte with no length byte
])
def test_malformed_ipv4_options_are_dropped(options):
    out_params, in_params = sa_pair(Mode.TRANSPORT, 4)
    good = protect(OutboundSA(out_params), ipv4_with_options(out_params.local, out_params.remote, bytes(4)))
    wire = bytearray(good)
    wire[20:24] = options
    with pytest.raises(Drop) as drop:
        unprotect(InboundSA(in_params), fix(wire))
    assert drop.value.reason == DropReason.MALFORMED_IP


def test_zero_mutable_ipv4():
    header = bytearray(ipv4_with_options(US4, PEER4, OPTIONS, b"")[:36])
    zeroed = ah.zero_mutable(header, 4)
    assert zeroed[1] == zeroed[8] == 0 and zeroed[6:8] == zeroed[10:12] == b"\0\0"
    assert zeroed[20:24] == RA and zeroed[24:35] == bytes(11) and zeroed[35] == 1  # RR gone in full, NOP kept
    assert zeroed[12:20] == header[12:20] and zeroed[2:6] == header[2:6] and zeroed[9] == header[9]
