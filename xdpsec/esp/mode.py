"""Whole IP packets in and out of an SA: ESP or AH, tunnel or transport mode, optionally ESP-in-UDP.

The worker that owns an SA holds its `OutboundSA` or `InboundSA` (sequence counter, replay window, counters)
and calls `protect` / `unprotect` once per packet. Everything that does not change per packet is worked out
in the constructors: the ESP context (cipher objects), the AH integrity object and AH length, the packed
outer addresses, the selectors. The codec (`codec.py`) does ESP's cryptography on SPI..ICV; this module does
what surrounds it:

    tunnel     [outer IP][UDP]?[ESP [inner IP packet] ]       [outer IP][AH][inner IP packet]
    transport  [IP hdr + opts/ext hdrs][UDP]?[ESP [payload] ]  [IP hdr + opts/ext hdrs][AH][payload]

Inbound, the outer header must name this SA (destination = our address, the SA's protocol and encapsulation),
and after decryption the packet must fall inside the SA's selectors (RFC 4301 §5.2). Network input only ever
raises `Drop`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable

from xdpsec.abi import Drop, DropReason
from xdpsec.crypto.integ import IntegAlgo
from xdpsec.esp import ah
from xdpsec.esp.codec import NEXT_HEADER_DUMMY, EspContext, esp_decap, esp_encap
from xdpsec.esp.replay import ESN_SPACE, SEQ_SPACE, ReplayWindow
from xdpsec.sa import Direction, IPAddress, Mode, Protocol, SAParams, TrafficSelector
from xdpsec.wire import ip
from xdpsec.wire.ip import IPV4_HEADER_LEN, IPV6_HEADER_LEN, Buffer, IPInfo, IPProto

#: TTL / hop limit of the outer header we build (RFC 4301 §5.1.2.1 leaves it to the encapsulator).
OUTER_TTL = 64
UDP_HEADER_LEN = 8
IPV4_MAX_TOTAL_LEN = 0xFFFF
IPV6_MAX_TOTAL_LEN = IPV6_HEADER_LEN + 0xFFFF

_IPV4_DF = 0x4000
_V4_FIXED = struct.Struct("!BBHHHBBH")  # an IPv4 header up to the addresses
_V6_FIXED = struct.Struct("!IHBB")  # an IPv6 header up to the addresses
_UDP = struct.Struct("!HHHH")
_SEQ_HI = struct.Struct("!I")
#: Next header of a tunnelled packet, by the inner IP version, and back.
_IPIP, _IPV6_IN_IP = 4, 41  # IANA protocol numbers of IPv4 and IPv6 as a payload
_TUNNEL_NH = {4: _IPIP, 6: _IPV6_IN_IP}
_TUNNEL_VERSION = {_IPIP: 4, _IPV6_IN_IP: 6}
#: Offset of the checksum in the upper-layer headers whose checksum covers the IP addresses (RFC 3948 §3.1.2).
_L4_CHECKSUM_OFF = {IPProto.TCP: 16, IPProto.UDP: 6}


class Ecn(enum.IntEnum):
    """The ECN field, the low two bits of TOS / traffic class (RFC 3168 §5)."""

    NOT_ECT = 0
    ECT1 = 1
    ECT0 = 2
    CE = 3


class OutboundSA:
    """An outbound SA's per-packet state: the sequence counter, its reserved limit, counters.

    `seq` is the last sequence number used. Numbers are used only up to `seq_limit`; past it `reserve(self)`
    is asked for a new limit (the worker records it durably first, so a restart never reuses a number).
    Without `reserve` the limit is the end of the sequence space.
    """

    __slots__ = ("params", "seq", "seq_limit", "packets", "bytes", "_reserve", "_seq_end", "_esp", "_integ",
                 "_ah_len", "_src", "_dst", "_addrs", "_ident")

    def __init__(self, params: SAParams, next_seq: int = 1,
                 reserve: Callable[[OutboundSA], int] | None = None):
        if params.direction != Direction.OUT:
            raise ValueError(f"SA {params.spi:#x} is not outbound")
        # RFC 4303 §3.3.3 / RFC 4302 §3.3.2: the counter never cycles, so the last number is 2^32-1 (2^64-1 ESN).
        self._seq_end = (ESN_SPACE if params.transform.esn else SEQ_SPACE) - 1
        if not 1 <= next_seq <= self._seq_end + 1:
            raise ValueError(f"next sequence number {next_seq} outside 1..{self._seq_end + 1}")
        self.params = params
        self.seq = next_seq - 1
        self.seq_limit = self.seq if reserve is not None else self._seq_end
        self._reserve = reserve
        self.packets = 0
        self.bytes = 0
        self._esp, self._integ, self._ah_len = _sa_crypto(params)
        self._src, self._dst = params.local.packed, params.remote.packed
        self._addrs = self._src + self._dst
        self._ident = 0  # IPv4 Identification of the outer headers we build (RFC 6864 §4.1)

    def next_seq(self) -> int:
        """Take the next sequence number, reserving a new block first if the current one is used up."""
        seq = self.seq + 1
        if seq > self.seq_limit:
            if seq > self._seq_end or self._reserve is None:
                raise Drop(DropReason.SEQ_EXHAUSTED)
            self.seq_limit = min(self._reserve(self), self._seq_end)
            if seq > self.seq_limit:
                raise Drop(DropReason.SEQ_EXHAUSTED)  # the reservation gave nothing new
        self.seq = seq
        return seq


class InboundSA:
    """An inbound SA's per-packet state: the replay window and counters."""

    __slots__ = ("params", "window", "packets", "bytes", "_esp", "_integ", "_ah_len", "_local", "_local_ts",
                 "_remote_ts")

    def __init__(self, params: SAParams):
        if params.direction != Direction.IN:
            raise ValueError(f"SA {params.spi:#x} is not inbound")
        self.params = params
        self.window = ReplayWindow(params.replay_window, params.transform.esn)
        self.packets = 0
        self.bytes = 0
        self._esp, self._integ, self._ah_len = _sa_crypto(params)
        self._local = params.local.packed
        self._local_ts = params.local_ts
        self._remote_ts = params.remote_ts


def _sa_crypto(params: SAParams) -> tuple[EspContext | None, IntegAlgo | None, int]:
    """The ESP context, or the AH integrity object and AH length (for the SA's outer family)."""
    if params.protocol == Protocol.ESP:
        return EspContext(params), None, 0
    if params.transform.integ is None:
        raise ValueError(f"AH SA {params.spi:#x} has no integrity transform")
    integ = IntegAlgo(params.transform.integ, params.integ_key)
    return None, integ, ah.ah_length(integ.icv_len, params.family)


# --- outbound ---------------------------------------------------------------------------------------------

def protect(sa: OutboundSA, packet: Buffer) -> bytes:
    """The IP packet that carries `packet` (an IP packet, no L2) through `sa`. Raises `Drop`."""
    info = ip.parse(packet)
    view = memoryview(packet)[:info.total_len]
    if sa.params.mode == Mode.TUNNEL:
        out = _tunnel_out(sa, view, info)
    else:
        out = _transport_out(sa, view, info)
    sa.packets += 1
    sa.bytes += info.total_len
    return out


def _tunnel_out(sa: OutboundSA, inner: memoryview, info: IPInfo) -> bytes:
    nh = _TUNNEL_NH[info.version]
    # RFC 4301 §5.1.2.1 and RFC 6040 §4.1 (normal mode): DSCP and ECN are copied from the inner header. DF is
    # copied from an inner IPv4 header (RFC 4301 §8.1 lets the SA choose; copying is the default); an inner IPv6
    # packet leaves it clear, as a static-MTU IPv6-in-IPv4 tunnel does (RFC 4213 §3.2).
    tos, df = info.tos, info.df
    seq = sa.next_seq()
    if sa._esp is not None:
        proto, body = _esp_body(sa, seq, nh, inner)
        return bytes(_outer_header(sa, proto, len(body), tos, df)) + body
    header = _outer_header(sa, IPProto.AH, sa._ah_len + len(inner), tos, df)
    return _ah_packet(sa, seq, nh, header, inner)


def _transport_out(sa: OutboundSA, packet: memoryview, info: IPInfo) -> bytes:
    # Transport mode protects whole datagrams between the SA's own endpoints (RFC 4301 §4.1, §7).
    if info.fragment:
        raise Drop(DropReason.IPSEC_FRAGMENT)
    if info.src != sa._src or info.dst != sa._dst:
        raise Drop(DropReason.SA_MISMATCH)
    if info.version == 4:
        ins, nh_off = info.header_len, 9  # after the header and its options (RFC 4303 §3.1.1)
    else:
        ins, nh_off = ah.ipv6_ipsec_offset(packet, info.total_len)
    nh = packet[nh_off]
    header = bytearray(packet[:ins])
    payload = packet[ins:]
    seq = sa.next_seq()
    if sa._esp is not None:
        proto, body = _esp_body(sa, seq, nh, payload)
        header[nh_off] = proto
        _set_total_len(header, info, ins + len(body))
        return bytes(header) + body
    header[nh_off] = IPProto.AH
    _set_total_len(header, info, info.total_len + sa._ah_len)
    return _ah_packet(sa, seq, nh, header, payload)


def _esp_body(sa: OutboundSA, seq: int, nh: int, payload: memoryview) -> tuple[int, bytes]:
    """(IP protocol, bytes after the IP header): ESP, or ESP in UDP (RFC 3948 §2.1)."""
    esp = esp_encap(sa._esp, seq, nh, payload)
    encap = sa.params.encap
    if encap is None:
        return IPProto.ESP, esp
    udp = bytearray(_UDP.pack(encap.sport, encap.dport, UDP_HEADER_LEN + len(esp), 0))
    # RFC 3948 §2.1: the IPv4 UDP checksum SHOULD be zero. IPv6 has no such exception for ESP-in-UDP (RFC 8200
    # §8.1), so it is computed; RFC 768: a computed 0 is sent as 0xFFFF.
    if sa.params.family == 6:
        pseudo = ip.pseudo_header(sa._src, sa._dst, IPProto.UDP, len(udp) + len(esp))
        # The pseudo and UDP headers are 48 bytes, an even count: their sum is passed on instead of a copy.
        csum = ip.checksum(esp, initial=int.from_bytes(pseudo + udp, "big"))
        struct.pack_into("!H", udp, 6, csum or 0xFFFF)
    # In transport mode behind a NAT the inner TCP/UDP checksum covers the addresses the NAT rewrites. RFC 3948
    # §3.1.2 asks the *receiver* to fix it after decapsulation (incrementally from the NAT-OA addresses, or by
    # recomputing it, or by not checking it since ESP already authenticated the payload); the sender sends it
    # unchanged. We do that: sent as is here, recomputed in `_restore_l4_checksum` on the way in.
    return IPProto.UDP, bytes(udp) + esp


def _outer_header(sa: OutboundSA, proto: int, payload_len: int, tos: int, df: bool) -> bytearray:
    """The tunnel header local -> remote for `payload_len` bytes of `proto`."""
    if sa.params.family == 4:
        total = IPV4_HEADER_LEN + payload_len
        if total > IPV4_MAX_TOTAL_LEN:
            raise Drop(DropReason.TOO_BIG)
        sa._ident = (sa._ident + 1) & 0xFFFF
        header = bytearray(_V4_FIXED.pack(0x45, tos, total, sa._ident, _IPV4_DF if df else 0, OUTER_TTL, proto, 0))
        header += sa._addrs
        struct.pack_into("!H", header, 10, ip.checksum(header))
        return header
    if payload_len > IPV6_MAX_TOTAL_LEN - IPV6_HEADER_LEN:
        raise Drop(DropReason.TOO_BIG)
    return bytearray(_V6_FIXED.pack((6 << 28) | (tos << 20), payload_len, proto, OUTER_TTL)) + sa._addrs


def _ah_packet(sa: OutboundSA, seq: int, nh: int, header: bytearray, payload: memoryview) -> bytes:
    """header + AH + payload, the ICV computed over it with the header's mutable fields zeroed (RFC 4302 §3.3.3)."""
    integ = sa._integ
    version = header[0] >> 4
    auth = ah.pack_ah(nh, sa._ah_len, sa.params.spi, seq % SEQ_SPACE)
    # RFC 4302 §2.5.1 and §3.3.3.2.2: with ESN the high 32 bits are authenticated, appended after the packet.
    seq_hi = _SEQ_HI.pack(seq // SEQ_SPACE) if sa.params.transform.esn else b""
    icv = integ.icv(ah.zero_mutable(header, version), auth, payload, seq_hi)
    auth[ah.ICV_OFFSET:ah.ICV_OFFSET + integ.icv_len] = icv
    return b"".join((header, auth, payload))


def _set_total_len(header: bytearray, info: IPInfo, total: int) -> None:
    if total > (IPV4_MAX_TOTAL_LEN if info.version == 4 else IPV6_MAX_TOTAL_LEN):
        raise Drop(DropReason.TOO_BIG)
    ip.set_payload_len(header, info, total)


# --- inbound ----------------------------------------------------------------------------------------------

def unprotect(sa: InboundSA, packet: Buffer) -> bytes | None:
    """The packet `sa` protected inside `packet` (the outer IP packet as received), or None for an ESP dummy
    packet (RFC 4303 §2.6). Raises `Drop`."""
    info = ip.parse(packet)
    if info.version == 4 and ip.checksum(memoryview(packet)[:info.header_len]):
        raise Drop(DropReason.MALFORMED_IP)  # RFC 1812 §5.2.2: the header checksum must verify
    if info.fragment:
        raise Drop(DropReason.IPSEC_FRAGMENT)  # RFC 4303 §3.4.1: reassembly comes first, we do not reassemble
    if info.dst != sa._local:
        raise Drop(DropReason.SA_MISMATCH)
    view = memoryview(packet)[:info.total_len]
    if sa._esp is not None:
        inner = _esp_in(sa, view, info)
    else:
        inner = _ah_in(sa, view, info)
    if inner is None:
        return None
    if sa._local_ts or sa._remote_ts:
        check_selectors(sa, inner)
    sa.packets += 1
    sa.bytes += len(inner)
    return inner


def _esp_in(sa: InboundSA, packet: memoryview, info: IPInfo) -> bytes | None:
    off, end = info.header_len, info.total_len
    encap = sa.params.encap is not None
    if encap:
        if info.proto != IPProto.UDP:
            raise Drop(DropReason.SA_MISMATCH)
        if off + UDP_HEADER_LEN > end:
            raise Drop(DropReason.MALFORMED_L4)
        udp_len = struct.unpack_from("!H", packet, off + 4)[0]
        if not UDP_HEADER_LEN <= udp_len <= end - off:
            raise Drop(DropReason.MALFORMED_L4)  # the UDP length lies about the datagram
        # Ports are not compared: the classifier matched them to find this SA, and a NAT may remap the peer's
        # source port at any time (RFC 7296 §2.23). The UDP checksum is not verified: ESP's ICV covers
        # everything it protects, and RFC 3948 §2.1 has IPv4 senders send zero anyway.
        esp_off, end = off + UDP_HEADER_LEN, off + udp_len
    else:
        if info.proto != IPProto.ESP:
            raise Drop(DropReason.SA_MISMATCH)
        esp_off = off
    _seq, nh, payload = esp_decap(sa._esp, packet[esp_off:end], sa.window)
    if nh == NEXT_HEADER_DUMMY:
        return None
    if sa.params.mode == Mode.TUNNEL:
        return tunnel_inner(nh, payload, info.tos)
    header = bytearray(packet[:off])
    header[info.proto_off] = nh
    _set_total_len(header, info, off + len(payload))
    if encap:
        return _restore_l4_checksum(header, info, nh, payload)
    return bytes(header) + payload


def _ah_in(sa: InboundSA, packet: memoryview, info: IPInfo) -> bytes:
    if info.proto != IPProto.AH:
        raise Drop(DropReason.SA_MISMATCH)
    off, end = info.header_len, info.total_len
    auth = ah.parse_ah(packet, off, end)
    if auth.spi != sa.params.spi:
        raise Drop(DropReason.SA_MISMATCH)
    if auth.length != sa._ah_len:
        raise Drop(DropReason.MALFORMED_L4)  # not the ICV length (and padding) this SA's algorithm has
    seq = sa.window.check(auth.seq_low)  # RFC 4302 §3.4.3: the cheap replay check before the ICV
    integ = sa._integ
    icv_start = off + ah.ICV_OFFSET
    received = packet[icv_start:icv_start + integ.icv_len]
    zeroed = bytearray(packet[off:off + auth.length])
    zeroed[ah.ICV_OFFSET:ah.ICV_OFFSET + integ.icv_len] = bytes(integ.icv_len)
    payload = packet[off + auth.length:end]
    seq_hi = _SEQ_HI.pack(seq // SEQ_SPACE) if sa.params.transform.esn else b""
    if not integ.verify(received, ah.zero_mutable(packet[:off], info.version), zeroed, payload, seq_hi):
        raise Drop(DropReason.AUTH_FAILED)
    sa.window.update(seq)
    if sa.params.mode == Mode.TUNNEL:
        return tunnel_inner(auth.next_header, payload, info.tos)
    header = bytearray(packet[:off])
    header[info.proto_off] = auth.next_header
    _set_total_len(header, info, off + len(payload))
    return bytes(header) + payload


def tunnel_inner(nh: int, payload: Buffer, outer_tos: int) -> bytes:
    """The inner packet of a tunnel-mode SA, checked, trimmed of TFC padding, with the outer ECN merged.

    `outer_tos` is the outer header's TOS / traffic class. Also the in-place path's fallback once it has
    decrypted a packet it does not handle itself (xdpsec/dataplane/inplace.py)."""
    version = _TUNNEL_VERSION.get(nh)
    if version is None:
        raise Drop(DropReason.BAD_NEXT_HEADER)  # tunnel mode carries IPv4 or IPv6 only
    try:
        info = ip.parse(payload)
    except Drop:
        raise Drop(DropReason.BAD_INNER) from None
    if info.version != version:
        raise Drop(DropReason.BAD_INNER)  # next header says one IP version, the packet is the other
    # Bytes after the inner packet's own length are TFC padding (RFC 4303 §2.7).
    return _ecn_decap(bytearray(payload[:info.total_len]), info, outer_tos & 3)


def _ecn_decap(inner: bytearray, info: IPInfo, outer_ecn: int) -> bytes:
    """RFC 6040 §4.2: carry congestion marks from the outer header into the inner one.

    Only CE and ECT(1) outside can change the inner field: CE marks an ECN-capable inner packet CE, ECT(1)
    turns an inner ECT(0) into ECT(1). CE outside a Not-ECT packet must be dropped: the congestion signal would
    otherwise be lost.
    """
    if outer_ecn not in (Ecn.CE, Ecn.ECT1):
        return bytes(inner)
    inner_ecn = info.tos & 3
    if outer_ecn == Ecn.CE:
        if inner_ecn == Ecn.NOT_ECT:
            raise Drop(DropReason.BAD_INNER)
        new = Ecn.CE
    else:
        new = Ecn.ECT1 if inner_ecn == Ecn.ECT0 else inner_ecn
    if new == inner_ecn:
        return bytes(inner)
    if info.version == 4:
        inner[1] = (inner[1] & 0xFC) | new
        inner[10:12] = bytes(2)
        struct.pack_into("!H", inner, 10, ip.checksum(inner[:info.header_len]))
    else:
        inner[1] = (inner[1] & 0xCF) | (new << 4)  # the ECN bits of the traffic class straddle bytes 0-1
    return bytes(inner)


def _restore_l4_checksum(header: bytearray, info: IPInfo, nh: int, payload: bytes) -> bytes:
    """RFC 3948 §3.1.2: after UDP-encapsulated transport mode, a NAT has changed the addresses the inner TCP/UDP
    checksum covers. ESP authenticated the payload, so the checksum is recomputed over the addresses the
    restored packet carries (an IPv4 UDP checksum of zero, "none", stays zero)."""
    csum_off = _L4_CHECKSUM_OFF.get(nh)
    if csum_off is None or len(payload) < csum_off + 2:
        return bytes(header) + payload
    l4 = bytearray(payload)
    if nh == IPProto.UDP and info.version == 4 and l4[6:8] == b"\0\0":
        return bytes(header) + payload
    l4[csum_off:csum_off + 2] = bytes(2)
    pseudo = ip.pseudo_header(info.src, info.dst, nh, len(l4))
    csum = ip.checksum(pseudo + l4)
    if nh == IPProto.UDP:
        csum = csum or 0xFFFF  # RFC 768: a computed zero is sent as all ones
    struct.pack_into("!H", l4, csum_off, csum)
    return bytes(header) + l4


def check_selectors(sa: InboundSA, inner: Buffer) -> None:
    """RFC 4301 §5.2: the decapsulated packet must be one this SA may carry: its destination in one of
    `local_ts` and its source in one of `remote_ts` (an empty list allows anything)."""
    try:
        flow = ip.flow(inner)
    except Drop:
        raise Drop(DropReason.BAD_INNER) from None
    if not _any_match(sa._local_ts, flow.dst, flow.proto, flow.dport) or \
            not _any_match(sa._remote_ts, flow.src, flow.proto, flow.sport):
        raise Drop(DropReason.SELECTOR_MISMATCH)


def _any_match(selectors: tuple[TrafficSelector, ...], addr: IPAddress, proto: int, port: int) -> bool:
    return not selectors or any(ts.matches(addr, proto, port) for ts in selectors)
