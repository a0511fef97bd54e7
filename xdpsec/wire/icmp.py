"""ICMP and ICMPv6 error messages the gateway originates while forwarding.

Two errors only: "too big" when a packet with DF (or any IPv6 packet) no longer fits after encapsulation, so the
sender's path MTU discovery learns the smaller MTU (RFC 1191, RFC 8201), and "time exceeded" when the TTL / hop
limit runs out. Each function returns the whole IP packet to send back to the offender's source, or None where
the RFCs forbid an error: never answer an error with an error, a non-first IPv4 fragment, or a source that does not
name one host (RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)); this is what keeps two gateways from ping-ponging errors.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

from xdpsec.wire import ip
from xdpsec.wire.ip import Address, Buffer, IPInfo, IPProto


class IcmpType(enum.IntEnum):
    """ICMP (IPv4) types (RFC 792)."""

    DEST_UNREACH = 3
    SOURCE_QUENCH = 4
    REDIRECT = 5
    TIME_EXCEEDED = 11
    PARAM_PROBLEM = 12


class Icmp6Type(enum.IntEnum):
    """ICMPv6 error types (RFC 4443 §2.1: types 0-127 are errors, 128-255 informational)."""

    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    INFORMATIONAL_MIN = 128


ICMP_FRAG_NEEDED = 4  # code of DEST_UNREACH: fragmentation needed and DF set (RFC 792, RFC 1191 §4)
TTL_EXCEEDED_IN_TRANSIT = 0  # code of (ICMPv6) TIME_EXCEEDED (RFC 792, RFC 4443 §3.3)

# RFC 1812 §4.3.2.7 lists these as the ICMP error messages no error may be sent about.
_ICMP_ERRORS = frozenset(IcmpType)
# RFC 1812 §4.3.2.3: quote as much as fits in 576 bytes; RFC 4443 §2.4(c): as much as fits in the minimum MTU.
_ICMP_MAX_LEN = 576
_ICMP6_MAX_LEN = 1280
_ICMP_HEADER_LEN = 8
# RFC 1812 §4.3.2.5: ICMP errors other than source quench SHOULD carry precedence 6 (internetwork control).
_ICMP_ERROR_TOS = 0xC0
_ERROR_TTL = 64

_V4_NO_ERROR_SOURCES = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",  # "network prefix of zero" (RFC 1812 §4.3.2.7)
    "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",  # invalid sources (RFC 1812 §5.3.7), incl. 255.255.255.255
))


def too_big(packet: Buffer, mtu: int, src: Address) -> bytes | None:
    """The "too big" error for `packet`, whose next hop (after encapsulation) has room for `mtu` bytes.

    IPv4: Destination Unreachable, code 4, with the next-hop MTU in the low 16 bits of the second word (RFC
    1191 §4). IPv6: Packet Too Big with a 32-bit MTU (RFC 4443 §3.2), which unlike other errors is also sent for
    multicast destinations (RFC 4443 §2.4(e.3)). Raises `Drop` if `packet` is not a well-formed IP packet.
    """
    info = ip.parse(packet)
    if info.version == 4:
        if not _v4_may_answer(packet, info):
            return None
        return _icmp4(packet, info, src, IcmpType.DEST_UNREACH, ICMP_FRAG_NEEDED, struct.pack("!HH", 0, mtu))
    if not _v6_may_answer(packet, info, multicast_dst_ok=True):
        return None
    return _icmp6(packet, info, src, Icmp6Type.PACKET_TOO_BIG, 0, struct.pack("!I", mtu))


def time_exceeded(packet: Buffer, src: Address) -> bytes | None:
    """ICMP Time Exceeded / ICMPv6 Time Exceeded, code 0 "in transit" (RFC 792, RFC 4443 §3.3; RFC 1812 §5.3.1)."""
    info = ip.parse(packet)
    if info.version == 4:
        if not _v4_may_answer(packet, info):
            return None
        return _icmp4(packet, info, src, IcmpType.TIME_EXCEEDED, TTL_EXCEEDED_IN_TRANSIT, bytes(4))
    if not _v6_may_answer(packet, info, multicast_dst_ok=False):
        return None
    return _icmp6(packet, info, src, Icmp6Type.TIME_EXCEEDED, TTL_EXCEEDED_IN_TRANSIT, bytes(4))


def _v4_may_answer(packet: Buffer, info: IPInfo) -> bool:
    """RFC 1812 §4.3.2.7: no error about an ICMP error, a non-initial fragment, a broadcast or multicast
    destination, or a source that does not name one host."""
    if not info.first_fragment:
        return False
    dst = ipaddress.IPv4Address(info.dst)
    if dst.is_multicast or dst == ipaddress.IPv4Address("255.255.255.255"):
        return False
    source = ipaddress.IPv4Address(info.src)
    if any(source in net for net in _V4_NO_ERROR_SOURCES):
        return False
    if info.proto == IPProto.ICMP:
        # An ICMP message too short to show its type might be an error: stay silent.
        if info.header_len >= info.total_len or packet[info.header_len] in _ICMP_ERRORS:
            return False
    return True


def _v6_may_answer(packet: Buffer, info: IPInfo, *, multicast_dst_ok: bool) -> bool:
    """RFC 4443 §2.4(e): no error about an ICMPv6 error, a multicast destination (except Packet Too Big), or a
    source that does not name one node. A non-first fragment cannot show whether it carries an ICMPv6 error;
    RFC 4443 does not forbid answering it and Packet Too Big must reach the sender, so it is answered."""
    source = ipaddress.IPv6Address(info.src)
    if source.is_unspecified or source.is_multicast:
        return False
    if not multicast_dst_ok and info.dst[0] == 0xFF:
        return False
    if info.proto == IPProto.ICMPV6 and info.first_fragment:
        if info.header_len >= info.total_len or packet[info.header_len] < Icmp6Type.INFORMATIONAL_MIN:
            return False
    return True


def _icmp4(packet: Buffer, info: IPInfo, src: Address, icmp_type: int, code: int, rest: bytes) -> bytes:
    room = _ICMP_MAX_LEN - ip.IPV4_HEADER_LEN - _ICMP_HEADER_LEN
    quote = bytes(packet[:min(info.total_len, room)])
    message = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + quote)
    struct.pack_into("!H", message, 2, ip.checksum(message))
    return ip.build_ipv4(src, info.src, IPProto.ICMP, bytes(message), ttl=_ERROR_TTL, tos=_ICMP_ERROR_TOS)


def _icmp6(packet: Buffer, info: IPInfo, src: Address, icmp_type: int, code: int, rest: bytes) -> bytes:
    room = _ICMP6_MAX_LEN - ip.IPV6_HEADER_LEN - _ICMP_HEADER_LEN
    quote = bytes(packet[:min(info.total_len, room)])
    message = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + quote)
    pseudo = ip.pseudo_header(src, info.src, IPProto.ICMPV6, len(message))
    struct.pack_into("!H", message, 2, ip.checksum(pseudo + message))
    return ip.build_ipv6(src, info.src, IPProto.ICMPV6, bytes(message), hop_limit=_ERROR_TTL)
