"""The IP Authentication Header (RFC 4302): its wire format and the "mutable fields zeroed" view of a packet.

    0                   1                   2                   3
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    | Next Header   |  Payload Len  |          RESERVED             |
    |                 Security Parameters Index (SPI)               |
    |                    Sequence Number (low 32 bits)              |
    |                ICV (16, 24 or 32 bytes) + padding             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

AH authenticates the whole IP packet, including the header in front of it, except what routers may change on
the way. RFC 4302 §3.3.3.1 lists those fields; the ICV is computed over a copy of the header chain with them
set to zero (the bytes after AH are never mutable and are fed to the MAC untouched, without a copy).
`mode.py` places AH in the packet and runs the replay window; this module only knows the bytes.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from xdpsec.abi import Drop, DropReason
from xdpsec.wire.ip import IPV4_HEADER_LEN, IPV6_HEADER_LEN, Buffer, IPProto

#: Next Header, Payload Len, Reserved, SPI, Sequence Number (RFC 4302 §2).
AH_FIXED_LEN = 12
#: Where the ICV starts inside AH.
ICV_OFFSET = AH_FIXED_LEN

_AH = struct.Struct("!BBHII")


class IPv4Option(enum.IntEnum):
    """IPv4 option types (the whole type byte) RFC 4302 appendix A.1 lists as immutable."""

    EOL = 0
    NOP = 1
    SECURITY = 130  # RFC 1108
    EXTENDED_SECURITY = 133  # RFC 1108
    COMMERCIAL_SECURITY = 134  # CIPSO
    ROUTER_ALERT = 148  # RFC 2113
    SDMD = 149  # Sender Directed Multi-Destination Delivery, RFC 1770


#: Appendix A.1: these are included in the ICV. Every other option (record route, timestamp, source routes and
#: anything unknown) is zeroed in full, type and length included, which is also what Linux (ah4.c) does.
IMMUTABLE_IPV4_OPTIONS = frozenset(IPv4Option)

#: RFC 8200 §4.2: the third-highest bit of an IPv6 option type says "option data may change en route";
#: RFC 4302 §3.3.3.1.2.2 zeroes the data of such options (not their type and length).
IPV6_OPTION_MUTABLE = 0x20
_IPV6_PAD1 = 0

#: IPv6 extension headers that go in front of ESP/AH in transport mode (RFC 4302 §3.1.1, RFC 4303 §3.1.1).
_BEFORE_IPSEC = frozenset({IPProto.HOPOPTS, IPProto.ROUTING, IPProto.DSTOPTS})


class AHHeader(NamedTuple):
    next_header: int
    length: int  # bytes of the whole AH, ICV and padding included
    spi: int
    seq_low: int


def ah_length(icv_len: int, version: int) -> int:
    """Bytes of an AH carrying an `icv_len`-byte ICV: padded to 32 bits for IPv4, 64 bits for IPv6
    (RFC 4302 §2.2 and §3.3.3.2.1, "MUST insert only enough padding")."""
    align = 4 if version == 4 else 8
    return -(-(AH_FIXED_LEN + icv_len) // align) * align


def pack_ah(next_header: int, length: int, spi: int, seq_low: int) -> bytearray:
    """An AH of `length` bytes whose ICV and padding are zero, ready for the ICV computation."""
    # RFC 4302 §2.2: Payload Len is the length of AH in 32-bit words minus 2; Reserved is zero (§2.3).
    header = bytearray(length)
    _AH.pack_into(header, 0, next_header, length // 4 - 2, 0, spi, seq_low)
    return header


def parse_ah(packet: Buffer, off: int, end: int) -> AHHeader:
    """The AH at `packet[off:]`, which must fit before `end`."""
    if off + AH_FIXED_LEN > end:
        raise Drop(DropReason.TRUNCATED)
    next_header, payload_len, _reserved, spi, seq_low = _AH.unpack_from(packet, off)
    length = (payload_len + 2) * 4
    if off + length > end:
        raise Drop(DropReason.TRUNCATED)  # Payload Len claims more than the packet carries
    return AHHeader(next_header, length, spi, seq_low)


def ipv6_ipsec_offset(packet: Buffer, end: int) -> tuple[int, int]:
    """(offset where ESP or AH goes in an IPv6 packet in transport mode, offset of the Next Header byte naming it).

    RFC 4302 §3.1.1 and RFC 4303 §3.1.1 put AH/ESP after the hop-by-hop, routing and fragment headers and let
    destination options come before or after. Like Linux (ip6_find_1stfragopt) and scapy, destination options
    that follow a routing header are for the final destination and stay behind ESP/AH; those before go in front.
    The chain's lengths were checked by `ip.parse`.
    """
    off, nh_off, routing_seen = IPV6_HEADER_LEN, 6, False
    nh = packet[6]
    while nh in _BEFORE_IPSEC and off < end:
        if nh == IPProto.DSTOPTS and routing_seen:
            break
        routing_seen |= nh == IPProto.ROUTING
        nh_off, nh = off, packet[off]
        off += (packet[off + 1] + 1) * 8
    return off, nh_off


def zero_mutable(header: Buffer, version: int) -> bytearray:
    """A copy of the IP header chain in front of AH with its mutable fields zeroed (RFC 4302 §3.3.3.1).

    `header` is the IPv4 header with its options, or the IPv6 header with the extension headers before AH.
    """
    buf = bytearray(header)
    if version == 4:
        # §3.3.3.1.1.1: TOS (routers rewrite DSCP/ECN), flags and fragment offset, TTL, header checksum.
        buf[1] = 0
        buf[6:9] = bytes(3)
        buf[10:12] = bytes(2)
        _zero_ipv4_options(buf, IPV4_HEADER_LEN, len(buf))
        return buf
    # §3.3.3.1.2.1: traffic class, flow label, hop limit. The version nibble stays.
    buf[0] &= 0xF0
    buf[1:4] = bytes(3)
    buf[7] = 0
    nh, off = buf[6], IPV6_HEADER_LEN
    while off < len(buf):
        if off + 2 > len(buf) or off + (buf[off + 1] + 1) * 8 > len(buf):
            raise Drop(DropReason.MALFORMED_IP)
        ext_end = off + (buf[off + 1] + 1) * 8
        if nh in (IPProto.HOPOPTS, IPProto.DSTOPTS):
            _zero_ipv6_options(buf, off + 2, ext_end)
        # A routing header is taken as it is: RFC 4302 asks the sender to present a type 0 header as the
        # receiver will see it, and type 0 is gone (RFC 5095); at the receiver its segments left is 0.
        nh, off = buf[off], ext_end
    return buf


def _zero_ipv4_options(buf: bytearray, start: int, end: int) -> None:
    """Zero every option not in appendix A.1's immutable list; `Drop(MALFORMED_IP)` for a lying length."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == IPv4Option.EOL:
            return  # RFC 791: the rest of the header is padding
        if kind == IPv4Option.NOP:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
            raise Drop(DropReason.MALFORMED_IP)  # the option's length runs past the header
        length = buf[i + 1]
        if kind not in IMMUTABLE_IPV4_OPTIONS:
            buf[i:i + length] = bytes(length)
        i += length


def _zero_ipv6_options(buf: bytearray, start: int, end: int) -> None:
    """Zero the data of options marked "may change en route" in one hop-by-hop/destination options header."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == _IPV6_PAD1:
            i += 1
            continue
        if i + 2 > end or i + 2 + buf[i + 1] > end:
            raise Drop(DropReason.MALFORMED_IP)  # option data runs past its extension header
        length = buf[i + 1]
        if kind & IPV6_OPTION_MUTABLE:
            buf[i + 2:i + 2 + length] = bytes(length)
        i += 2 + length
