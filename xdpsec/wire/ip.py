"""IPv4 and IPv6 on the wire: parse, build, checksum, TTL decrement and IPv4 fragmentation.

Every packet the workers touch goes through `parse` once; the resulting `IPInfo` carries the offsets the ESP/AH
code and the forwarding path need, so nothing re-walks the header chain. Parsing is defensive: the packet comes
from the network, so every length is checked against the buffer before it is trusted and every lie ends in
`Drop(MALFORMED_IP)` (or `Drop(EXTHDR_DEPTH)` for an IPv6 chain longer than we walk). Functions work on
`bytes`, `bytearray` and `memoryview` alike through `struct.unpack_from`, so a UMEM frame is never copied to be
read. Nothing here imports scapy; the tests use it as the independent oracle.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from xdpsec.abi import Drop, DropReason
from xdpsec.sa import Flow

Buffer = bytes | bytearray | memoryview
Address = bytes | str | ipaddress.IPv4Address | ipaddress.IPv6Address


class IPProto(enum.IntEnum):
    """IP protocol / IPv6 Next Header numbers we look at (IANA "Assigned Internet Protocol Numbers")."""

    HOPOPTS = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    ROUTING = 43
    FRAGMENT = 44
    ESP = 50
    AH = 51
    ICMPV6 = 58
    NONE = 59
    DSTOPTS = 60
    SCTP = 132
    UDPLITE = 136


IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
MAX_EXT_HEADERS = 8
IPV4_MAX_TOTAL_LEN = 0xFFFF
IPV6_MAX_PAYLOAD_LEN = 0xFFFF  # jumbograms (RFC 2675) are not supported

# IPv4 flags and fragment offset share one 16-bit word (RFC 791 §3.1).
_IPV4_DF = 0x4000
_IPV4_MF = 0x2000
_IPV4_OFFSET_MASK = 0x1FFF

# IPv6 extension headers we walk: the ones that may precede ESP/AH/the upper layer (RFC 8200 §4.1, RFC 4303 §3.1.1).
# AH and ESP end the walk: they are what the caller is looking for.
_IPV6_EXT_HEADERS = frozenset({IPProto.HOPOPTS, IPProto.ROUTING, IPProto.DSTOPTS, IPProto.FRAGMENT})
_IPV6_FRAG_HEADER_LEN = 8

# Bytes of the upper-layer header that must be present to read the selector fields. RFC 7112 (IPv6) and RFC 1858
# §3 (IPv4 tiny fragments) let a first fragment that lacks its whole transport header be dropped, so we ask for
# the fixed header, not just the ports.
_L4_MIN_LEN = {
    IPProto.TCP: 20,  # RFC 9293 §3.1, data offset >= 5
    IPProto.UDP: 8,  # RFC 768
    IPProto.UDPLITE: 8,  # RFC 3828 §3.1
    IPProto.SCTP: 12,  # RFC 9260 §3.1 common header
    IPProto.ICMP: 4,  # RFC 792: type, code, checksum
    IPProto.ICMPV6: 4,  # RFC 4443 §2.1
}
_PORT_PROTOS = frozenset({IPProto.TCP, IPProto.UDP, IPProto.UDPLITE, IPProto.SCTP})


@dataclass(frozen=True, slots=True)
class IPInfo:
    """What the data path needs to know about one IP header chain. Offsets are from the start of the IP header."""

    version: int  # 4 or 6
    header_len: int  # IPv4 header incl. options, or IPv6 header + the extension headers before the upper layer
    proto: int  # upper-layer protocol: IPv4 protocol, or the last Next Header of the IPv6 chain
    proto_off: int  # offset of the byte holding `proto`
    total_len: int  # IPv4 total length; IPv6 40 + payload length
    src: bytes
    dst: bytes
    ttl: int  # TTL or hop limit
    tos: int  # IPv4 TOS / IPv6 traffic class
    df: bool  # IPv4 DF; False for IPv6
    fragment: bool  # IPv4 MF or offset != 0; IPv6 fragment header present
    first_fragment: bool  # False only for a fragment with a non-zero offset


def parse(packet: Buffer, *, verify_checksum: bool = False) -> IPInfo:
    """Parse the IP header (and IPv6 extension headers) at the start of `packet`.

    Bytes after the total length (Ethernet padding) are ignored. Raises `Drop(MALFORMED_IP)` for any
    inconsistency and `Drop(EXTHDR_DEPTH)` for more than MAX_EXT_HEADERS IPv6 extension headers. A router must
    verify the IPv4 header checksum of what it forwards (RFC 1812 §5.2.2): `verify_checksum=True` does, for
    packets straight off the wire (XDP runs before the kernel's own check); IPv6 has no header checksum.
    """
    if not len(packet):
        raise Drop(DropReason.MALFORMED_IP)
    version = packet[0] >> 4
    if version == 4:
        info = _parse_ipv4(packet)
        if verify_checksum and checksum(packet[:info.header_len]) != 0:
            raise Drop(DropReason.MALFORMED_IP)
        return info
    if version == 6:
        return _parse_ipv6(packet)
    raise Drop(DropReason.MALFORMED_IP)


def _parse_ipv4(packet: Buffer) -> IPInfo:
    if len(packet) < IPV4_HEADER_LEN:
        raise Drop(DropReason.MALFORMED_IP)
    vihl, tos, total_len, _ident, frag, ttl, proto = struct.unpack_from("!BBHHHBB", packet)
    header_len = (vihl & 0x0F) * 4
    # The packet lies if its header is shorter than the fixed part, or if its total length claims fewer bytes
    # than its own header or more than we received (RFC 1812 §5.2.2).
    if header_len < IPV4_HEADER_LEN or not header_len <= total_len <= len(packet):
        raise Drop(DropReason.MALFORMED_IP)
    offset = frag & _IPV4_OFFSET_MASK
    return IPInfo(
        version=4, header_len=header_len, proto=proto, proto_off=9, total_len=total_len,
        src=bytes(packet[12:16]), dst=bytes(packet[16:20]), ttl=ttl, tos=tos, df=bool(frag & _IPV4_DF),
        fragment=bool(frag & _IPV4_MF) or offset != 0, first_fragment=offset == 0,
    )


def _parse_ipv6(packet: Buffer) -> IPInfo:
    if len(packet) < IPV6_HEADER_LEN:
        raise Drop(DropReason.MALFORMED_IP)
    vtcfl, payload_len, next_header, hop_limit = struct.unpack_from("!IHBB", packet)
    total_len = IPV6_HEADER_LEN + payload_len
    if total_len > len(packet):
        raise Drop(DropReason.MALFORMED_IP)
    off, proto_off, depth = IPV6_HEADER_LEN, 6, 0
    fragment, first_fragment = False, True
    while next_header in _IPV6_EXT_HEADERS:
        depth += 1
        if depth > MAX_EXT_HEADERS:
            raise Drop(DropReason.EXTHDR_DEPTH)
        # Hop-by-Hop Options may only follow the IPv6 header itself (RFC 8200 §4.1).
        if next_header == IPProto.HOPOPTS and depth != 1:
            raise Drop(DropReason.MALFORMED_IP)
        if off + 2 > total_len:
            raise Drop(DropReason.MALFORMED_IP)
        if next_header == IPProto.FRAGMENT:
            ext_len = _IPV6_FRAG_HEADER_LEN
            if off + ext_len > total_len:
                raise Drop(DropReason.MALFORMED_IP)
            fragment = True
            first_fragment = struct.unpack_from("!H", packet, off + 2)[0] >> 3 == 0
        else:
            ext_len = (packet[off + 1] + 1) * 8  # RFC 8200 §4.3: Hdr Ext Len in 8-octet units, not counting the first 8
            if off + ext_len > total_len:
                raise Drop(DropReason.MALFORMED_IP)
        next_header, proto_off = packet[off], off
        off += ext_len
        if not first_fragment:
            # What follows the fragment header of a non-first fragment is the middle of some header, not the
            # header Next Header names (RFC 8200 §4.5): stop here.
            break
    return IPInfo(
        version=6, header_len=off, proto=next_header, proto_off=proto_off, total_len=total_len,
        src=bytes(packet[8:24]), dst=bytes(packet[24:40]), ttl=hop_limit, tos=(vtcfl >> 20) & 0xFF, df=False,
        fragment=fragment, first_fragment=first_fragment,
    )


def flow(packet: Buffer, info: IPInfo | None = None) -> Flow:
    """The selector fields of `packet` (RFC 4301 §4.4.1.1).

    Ports come from TCP/UDP/UDP-Lite/SCTP; for ICMP/ICMPv6 sport is the type and dport the code. A non-first
    fragment carries no ports, so they are 0 (the OPAQUE case of RFC 4301 §7). Raises `Drop(MALFORMED_L4)` if
    the upper-layer header is truncated, `Drop(MALFORMED_IP)` / `Drop(EXTHDR_DEPTH)` from `parse`.
    """
    if info is None:
        info = parse(packet)
    make = ipaddress.IPv4Address if info.version == 4 else ipaddress.IPv6Address
    src, dst, proto = make(info.src), make(info.dst), info.proto
    need = _L4_MIN_LEN.get(proto)
    if need is None or not info.first_fragment:
        return Flow(src, dst, proto)
    off = info.header_len
    if off + need > info.total_len:
        raise Drop(DropReason.MALFORMED_L4)
    if proto in _PORT_PROTOS:
        sport, dport = struct.unpack_from("!HH", packet, off)
    else:
        sport, dport = packet[off], packet[off + 1]
    return Flow(src, dst, proto, sport, dport)


def checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 Internet checksum of `data`: the 16-bit value to store in the checksum field.

    `initial` is a partial sum (not complemented) of data checksummed elsewhere. The sum of 16-bit words with
    end-around carry equals the big-endian integer of the data modulo 0xFFFF, because 2**16 = 1 (mod 0xFFFF);
    one C-level bignum reduction beats a Python loop over words. The one's complement sum of anything non-zero
    is never +0, so a zero remainder of non-zero data means 0xFFFF (RFC 1071 §1, "-0").
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # RFC 1071 §4.1: an odd byte is padded with a zero on the right
    value += initial
    folded = value % 0xFFFF
    if folded == 0 and value:
        folded = 0xFFFF
    return ~folded & 0xFFFF


def pseudo_header(src: Address, dst: Address, proto: int, length: int) -> bytes:
    """The pseudo header the TCP/UDP/ICMPv6 checksum covers (RFC 768, RFC 9293 §3.1; RFC 8200 §8.1)."""
    src_b, dst_b = _addr_bytes(src), _addr_bytes(dst)
    if len(src_b) != len(dst_b):
        raise ValueError("source and destination address families differ")
    if len(src_b) == 4:
        return src_b + dst_b + struct.pack("!BBH", 0, proto, length)
    return src_b + dst_b + struct.pack("!I3xB", length, proto)


def build_ipv4(src: Address, dst: Address, proto: int, payload: bytes, *, ttl: int = 64, tos: int = 0,
               df: bool = False, ident: int = 0) -> bytes:
    """An IPv4 packet with a 20-byte header and a correct header checksum."""
    src_b, dst_b = _addr_bytes(src, 4), _addr_bytes(dst, 4)
    total_len = IPV4_HEADER_LEN + len(payload)
    if total_len > IPV4_MAX_TOTAL_LEN:
        raise ValueError(f"IPv4 packet of {total_len} bytes exceeds {IPV4_MAX_TOTAL_LEN}")
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, total_len, ident, _IPV4_DF if df else 0, ttl,
                                   proto, 0, src_b, dst_b))
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + bytes(payload)


def build_ipv6(src: Address, dst: Address, next_header: int, payload: bytes, *, hop_limit: int = 64,
               tclass: int = 0, flow_label: int = 0) -> bytes:
    """An IPv6 packet without extension headers (the caller puts any at the front of `payload`)."""
    src_b, dst_b = _addr_bytes(src, 16), _addr_bytes(dst, 16)
    if len(payload) > IPV6_MAX_PAYLOAD_LEN:
        raise ValueError(f"IPv6 payload of {len(payload)} bytes exceeds {IPV6_MAX_PAYLOAD_LEN} (no jumbograms)")
    vtcfl = (6 << 28) | ((tclass & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return struct.pack("!IHBB16s16s", vtcfl, len(payload), next_header, hop_limit, src_b, dst_b) + bytes(payload)


def set_payload_len(buf: bytearray | memoryview, info: IPInfo, new_total_len: int) -> None:
    """Rewrite the length of the IP packet at the start of `buf`: IPv4 total length and header checksum, or the
    IPv6 payload length. `info` describes the header as it is in `buf`."""
    if info.version == 4:
        if not info.header_len <= new_total_len <= IPV4_MAX_TOTAL_LEN:
            raise ValueError(f"IPv4 total length {new_total_len} out of range")
        struct.pack_into("!H", buf, 2, new_total_len)
        struct.pack_into("!H", buf, 10, 0)
        struct.pack_into("!H", buf, 10, checksum(buf[:info.header_len]))
    else:
        payload_len = new_total_len - IPV6_HEADER_LEN
        if not 0 <= payload_len <= IPV6_MAX_PAYLOAD_LEN:
            raise ValueError(f"IPv6 total length {new_total_len} out of range")
        struct.pack_into("!H", buf, 4, payload_len)


def decrement_ttl(buf: bytearray | memoryview, off: int = 0) -> bool:
    """Decrement the TTL / hop limit of the IP header at `buf[off:]` in place.

    Returns False and leaves the packet alone if it is 1 or 0: the packet must not be forwarded (RFC 1812
    §5.3.1, RFC 8200 §3). The IPv4 header checksum is updated incrementally, HC' = ~(~HC + ~m + m') (RFC 1624
    §3, eqn. 3), m being the TTL/protocol word.
    """
    if len(buf) < off + IPV4_HEADER_LEN:
        raise Drop(DropReason.MALFORMED_IP)
    version = buf[off] >> 4
    if version == 4:
        ttl, proto, old_sum = struct.unpack_from("!BBH", buf, off + 8)
        if ttl <= 1:
            return False
        old_word = (ttl << 8) | proto
        new_word = old_word - 0x100
        acc = (~old_sum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
        acc = (acc & 0xFFFF) + (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16)
        struct.pack_into("!BBH", buf, off + 8, ttl - 1, proto, ~acc & 0xFFFF)
        return True
    if version == 6 and len(buf) >= off + IPV6_HEADER_LEN:
        if buf[off + 7] <= 1:
            return False
        buf[off + 7] -= 1
        return True
    raise Drop(DropReason.MALFORMED_IP)


def fragment_ipv4(packet: Buffer, mtu: int) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most `mtu` bytes (RFC 791 §2.3 and §3.2, "Fragmentation").

    Data is cut at multiples of 8 bytes; the first fragment keeps all options, the others only those with the
    copy bit set (RFC 791 §3.1, "Options"). A packet that is itself a fragment is fragmented again: offsets
    continue from its own and the last piece keeps its MF flag. A packet that fits is returned as it is.
    Raises ValueError if DF is set or the MTU cannot carry the header and 8 bytes of data.
    """
    info = parse(packet)
    if info.version != 4:
        raise ValueError("not an IPv4 packet")
    if info.total_len <= mtu:
        return [bytes(packet[:info.total_len])]
    if info.df:
        raise ValueError("DF is set: the packet may not be fragmented (RFC 791 §3.1); send ICMP too big")
    if mtu - info.header_len < 8:
        raise ValueError(f"MTU {mtu} cannot carry a {info.header_len}-byte header and 8 bytes of data")
    frag_word = struct.unpack_from("!H", packet, 6)[0]
    base_offset = (frag_word & _IPV4_OFFSET_MASK) * 8
    last_mf = frag_word & _IPV4_MF
    options = bytes(packet[IPV4_HEADER_LEN:info.header_len])
    copied = _copied_options(options)
    data = memoryview(packet)[info.header_len:info.total_len]
    fixed = bytearray(packet[:IPV4_HEADER_LEN])
    fragments = []
    pos = 0
    while pos < len(data):
        opts = options if pos == 0 else copied
        room = (mtu - IPV4_HEADER_LEN - len(opts)) & ~7
        chunk = data[pos:pos + room]
        more = last_mf if pos + len(chunk) == len(data) else _IPV4_MF
        fragments.append(_ipv4_fragment(fixed, opts, chunk, (base_offset + pos) // 8, more))
        pos += len(chunk)
    return fragments


def _ipv4_fragment(fixed: bytearray, options: bytes, chunk: memoryview, offset8: int, more: int) -> bytes:
    header_len = IPV4_HEADER_LEN + len(options)
    header = bytearray(fixed) + options
    header[0] = 0x40 | header_len // 4
    struct.pack_into("!HHH", header, 2, header_len + len(chunk), struct.unpack_from("!H", fixed, 4)[0],
                     more | offset8)
    struct.pack_into("!H", header, 10, 0)
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + bytes(chunk)


def _copied_options(options: bytes) -> bytes:
    """The options with the copy bit set (RFC 791 §3.1), padded with End of Option List to a multiple of 4."""
    out = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # End of Option List: the rest is padding
            break
        if kind == 1:  # No Operation: a single byte, never copied
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            raise Drop(DropReason.MALFORMED_IP)  # an option whose length runs past the header
        length = options[i + 1]
        if kind & 0x80:
            out += options[i:i + length]
        i += length
    out += bytes(-len(out) % 4)
    return bytes(out)


def _addr_bytes(addr: Address, size: int | None = None) -> bytes:
    """Raw address bytes from bytes, an ipaddress object or its text form (configuration values)."""
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr)
    raw = addr.packed if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address) else bytes(addr)
    if len(raw) not in (4, 16) or (size is not None and len(raw) != size):
        raise ValueError(f"bad address {addr!r} (need {size or '4 or 16'} bytes)")
    return raw
