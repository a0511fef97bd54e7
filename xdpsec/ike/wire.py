"""IKEv2 messages (RFC 7296 §3) <-> frozen dataclasses: strict parsing, canonical building, the SK framing.

A message is the 28-octet IKE header and a chain of payloads, each starting with a generic payload header
(§3.2) whose Next Payload field names the type of the *following* payload. `decode_payloads` walks that chain
once, checks every length against the buffer before using it and hands each body to the decoder of its type;
nothing is ever re-sliced from the start, and the SA payload is capped at 64 proposals of 64 transforms, so
the work done is linear in the input whatever a peer sends.

Bad input raises exactly one exception, `IkeError(notify, message)`, carrying the Notify type RFC 7296 asks
for (almost always INVALID_SYNTAX). Misusing the builders raises ValueError: that is a bug in the caller.

Reserved fields and reserved header flags are ignored on receipt and sent as zero (§3.1, §3.2). Payload types
we do not implement become `Unknown` when their critical bit is clear and raise UNSUPPORTED_CRITICAL_PAYLOAD
when it is set (§2.5).

The Encrypted payload (SK, §3.14) is always the last payload; its Next Payload field is the type of the first
payload inside it. `decode` keeps its body as `Encrypted(first, IV|ciphertext|ICV)`; `split_encrypted` and
`encode_encrypted` give the cipher the associated data it protects: the message from the IKE header through
the SK payload header (RFC 5282 §5.1 for AEAD; CBC + HMAC computes the ICV over that, the IV and ciphertext).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdpsec.ike.consts import (
    IKE_MAJOR_VERSION,
    IKE_VERSION,
    HeaderFlag,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformAttr,
    TsType,
)

IKE_HEADER_LEN = 28
MAX_PROPOSALS = 64    # our bound on hostile input: strongSwan and libreswan send a handful
MAX_TRANSFORMS = 64   # per proposal, same reason
NONCE_MIN, NONCE_MAX = 16, 256  # §3.9

_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")      # next payload, critical|reserved, payload length
_PROPOSAL = struct.Struct("!BBHBBBB")  # last/more, reserved, length, num, protocol, SPI size, num transforms
_TRANSFORM = struct.Struct("!BBHBBH")  # last/more, reserved, length, type, reserved, transform ID
_ATTR = struct.Struct("!HH")           # AF|type, value (TV) or length (TLV)
_PROTO_SPI = struct.Struct("!BBH")     # Notify: protocol, SPI size, type; Delete: protocol, SPI size, count
_TS_HEAD = struct.Struct("!BBH")       # TS type, IP protocol, selector length
_U16_PAIR = struct.Struct("!HH")       # TS ports; KE group and reserved; SKF Fragment Number and Total Fragments

_CRITICAL = 0x80          # §3.2: the only defined bit of the generic header's flags octet
_LAST = 0                 # §3.3.1, §3.3.2: last substructure
_MORE_PROPOSALS = 2       # §3.3.1
_MORE_TRANSFORMS = 3      # §3.3.2
_ATTR_TV = 0x8000         # §3.3.5: attribute format bit, 1 = type/value
_KNOWN_FLAGS = int(HeaderFlag.INITIATOR | HeaderFlag.VERSION | HeaderFlag.RESPONSE)

#: SPI sizes a proposal may carry (§3.3.1): none in IKE_SA_INIT, 8 when rekeying the IKE SA, 4 for ESP/AH.
_PROPOSAL_SPI_SIZES = {ProtocolId.IKE: (0, 8), ProtocolId.AH: (4,), ProtocolId.ESP: (4,)}
#: SPI size of a Delete payload (§3.11): the IKE SA is the one the message travels on, so no SPI.
_DELETE_SPI_SIZE = {ProtocolId.IKE: 0, ProtocolId.AH: 4, ProtocolId.ESP: 4}
#: Notify SPI size when one is present (§3.10): that of the SA it is about.
_NOTIFY_SPI_SIZE = {ProtocolId.IKE: 8, ProtocolId.AH: 4, ProtocolId.ESP: 4}
#: TS type -> (selector length, address length) (§3.13.1).
_TS_SIZES = {TsType.IPV4_ADDR_RANGE: (16, 4), TsType.IPV6_ADDR_RANGE: (40, 16)}


class IkeError(Exception):
    """The peer sent something invalid: `notify` is the Notify type to answer (or count) it with.

    `data` is that notify's Notification Data, e.g. the payload type for UNSUPPORTED_CRITICAL_PAYLOAD.
    """

    def __init__(self, notify: int, message: str, data: bytes = b""):
        super().__init__(f"{_notify_name(notify)}: {message}")
        self.notify = notify
        self.message = message
        self.data = data


def _notify_name(notify: int) -> str:
    try:
        return NotifyType(notify).name
    except ValueError:
        return str(notify)


def _syntax(message: str) -> IkeError:
    return IkeError(NotifyType.INVALID_SYNTAX, message)


def _pack(fmt: struct.Struct, *values: int | bytes) -> bytes:
    """struct.pack for the builders: an out-of-range field is the caller's bug, reported as ValueError."""
    try:
        return fmt.pack(*values)
    except struct.error as e:
        raise ValueError(f"field out of range: {e}") from None


# --- payload bodies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """§3.3.2. `key_length` in bits is attribute 14 (§3.3.5), None when absent."""

    type: int
    id: int
    key_length: int | None = None


@dataclass(frozen=True)
class Proposal:
    """§3.3.1. `spi` is empty in IKE_SA_INIT, 8 octets for an IKE rekey, 4 for ESP/AH."""

    num: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True)
class SA:
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True)
class KE:
    group: int
    data: bytes


@dataclass(frozen=True)
class Nonce:
    data: bytes  # 16..256 octets (§3.9)


@dataclass(frozen=True)
class ID:
    """IDi or IDr (§3.5); `data` as on the wire (four octets for IPV4_ADDR, text for FQDN, DER for DNs)."""

    id_type: int
    data: bytes


@dataclass(frozen=True)
class Cert:
    encoding: int
    data: bytes


@dataclass(frozen=True)
class CertReq:
    encoding: int
    data: bytes  # for X509_SIGNATURE: concatenated SHA-1 hashes of trusted CA public keys (§3.7)


@dataclass(frozen=True)
class Auth:
    method: int
    data: bytes


@dataclass(frozen=True)
class Notify:
    """§3.10. `protocol` and `spi` only for notifies about a child SA (REKEY_SA, INVALID_SELECTORS, ...)."""

    type: int
    protocol: int = 0
    spi: bytes = b""
    data: bytes = b""


@dataclass(frozen=True)
class Delete:
    """§3.11. Deleting the IKE SA carries no SPI; ESP and AH carry the deleted SAs' 4-octet inbound SPIs."""

    protocol: int
    spis: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Vendor:
    data: bytes


@dataclass(frozen=True)
class TrafficSelector:
    """§3.13.1. Addresses are 4 (IPV4_ADDR_RANGE) or 16 (IPV6_ADDR_RANGE) octets; ports are inclusive."""

    ts_type: int
    ip_proto: int
    start_port: int
    end_port: int
    start: bytes
    end: bytes


@dataclass(frozen=True)
class TS:
    """TSi or TSr (§3.13)."""

    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True)
class Unknown:
    """A payload type we do not implement, received with the critical bit clear (§2.5): kept, not understood."""

    type: int
    critical: bool
    data: bytes


@dataclass(frozen=True)
class Encrypted:
    """The SK payload as received (§3.14): `first` is the type of the first inner payload."""

    first: int
    data: bytes  # IV | ciphertext (with padding and pad length) | ICV


@dataclass(frozen=True)
class EncryptedFragment:
    """The Encrypted Fragment payload (SKF, RFC 7383 §2.5) as received: one protected piece of an SK payload.

    `first` is the type of the first inner payload in fragment 1 and zero in the others; `number` (1-based) and
    `total` are not checked against each other here: xdpsec/ike/fragment.py discards what they get wrong."""

    first: int
    number: int
    total: int
    data: bytes  # IV | ciphertext (with padding and pad length) | ICV


Body = SA | KE | ID | Cert | CertReq | Auth | Nonce | Notify | Delete | Vendor | TS | Unknown | Encrypted \
    | EncryptedFragment


@dataclass(frozen=True)
class Payload:
    """One payload of a chain. `critical` is the received bit; it matters only for types we do not know."""

    type: int
    body: Body
    critical: bool = False


class _Flags:
    flags: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)


@dataclass(frozen=True)
class Header(_Flags):
    """The IKE header (§3.1) as received; `flags` holds only the defined bits."""

    ispi: bytes
    rspi: bytes
    next_payload: int
    exchange: int
    flags: int
    msg_id: int
    length: int


@dataclass(frozen=True)
class Message(_Flags):
    """A whole IKE message; `next_payload` and `length` of the header follow from `payloads` when encoding."""

    ispi: bytes
    rspi: bytes
    exchange: int
    flags: int
    msg_id: int
    payloads: tuple[Payload, ...] = ()


# --- decoding -------------------------------------------------------------------------------------------------


def _decode_attributes(data: bytes) -> int | None:
    """The Key Length of a transform's attributes (§3.3.5); other attributes are skipped by their length."""
    key_length = None
    off = 0
    while off < len(data):
        if len(data) - off < _ATTR.size:
            raise _syntax("transform attribute truncated")
        atype, value = _ATTR.unpack_from(data, off)
        off += _ATTR.size
        if not atype & _ATTR_TV:
            if atype == TransformAttr.KEY_LENGTH:
                raise _syntax("Key Length attribute in TLV format (§3.3.5 says TV)")
            if value > len(data) - off:
                raise _syntax("transform attribute length runs past its transform")
            off += value
        elif atype & ~_ATTR_TV == TransformAttr.KEY_LENGTH:
            if key_length is not None:
                raise _syntax("Key Length attribute given twice")
            key_length = value
    return key_length


def _decode_transforms(data: bytes, count: int) -> tuple[Transform, ...]:
    if count > MAX_TRANSFORMS:
        raise _syntax(f"{count} transforms in a proposal, at most {MAX_TRANSFORMS} accepted")
    transforms = []
    off = 0
    for i in range(count):
        if len(data) - off < _TRANSFORM.size:
            raise _syntax("transform truncated, or fewer transforms than Num Transforms says")
        last, _, length, ttype, _, tid = _TRANSFORM.unpack_from(data, off)
        if length < _TRANSFORM.size or length > len(data) - off:
            raise _syntax(f"transform length {length} does not fit its proposal")
        if last != (_LAST if i == count - 1 else _MORE_TRANSFORMS):
            raise _syntax("transform Last Substruc disagrees with Num Transforms (§3.3.2: 3 more, 0 last)")
        key_length = _decode_attributes(data[off + _TRANSFORM.size:off + length])
        transforms.append(Transform(ttype, tid, key_length))
        off += length
    if off != len(data):
        raise _syntax("bytes after the last transform of a proposal")
    return tuple(transforms)


def _decode_sa(body: bytes) -> SA:
    proposals: list[Proposal] = []
    off = 0
    while True:
        if len(proposals) == MAX_PROPOSALS:
            raise _syntax(f"more than {MAX_PROPOSALS} proposals")
        if len(body) - off < _PROPOSAL.size:
            raise _syntax("proposal truncated (an SA payload holds at least one)")
        last, _, length, num, protocol, spi_size, count = _PROPOSAL.unpack_from(body, off)
        if length < _PROPOSAL.size + spi_size or length > len(body) - off:
            raise _syntax(f"proposal length {length} does not fit its SA payload and SPI")
        if protocol in _PROPOSAL_SPI_SIZES and spi_size not in _PROPOSAL_SPI_SIZES[protocol]:
            raise _syntax(f"SPI size {spi_size} for protocol {protocol} (§3.3.1)")
        spi_end = off + _PROPOSAL.size + spi_size
        transforms = _decode_transforms(body[spi_end:off + length], count)
        proposals.append(Proposal(num, protocol, body[off + _PROPOSAL.size:spi_end], transforms))
        off += length
        if last == _LAST:
            break
        if last != _MORE_PROPOSALS:
            raise _syntax(f"proposal Last Substruc {last} (§3.3.1: 2 more, 0 last)")
    if off != len(body):
        raise _syntax("bytes after the last proposal")
    _check_numbering(proposals)
    return SA(tuple(proposals))


def _check_numbering(proposals: list[Proposal]) -> None:
    """§3.3.1: proposals are numbered 1, 2, ...; an answer has one, numbered like the one it accepted."""
    if len(proposals) == 1:
        if proposals[0].num == 0:
            raise _syntax("proposal number 0")
    elif any(p.num != i for i, p in enumerate(proposals, 1)):
        raise _syntax("proposals are not numbered 1, 2, 3, ...")


def _decode_ke(body: bytes) -> KE:
    if len(body) < 4:
        raise _syntax("KE payload shorter than its group and reserved field")
    return KE(int.from_bytes(body[:2]), body[4:])


def _decode_id(body: bytes) -> ID:
    if len(body) < 4:
        raise _syntax("ID payload shorter than its type and reserved field")
    return ID(body[0], body[4:])


def _decode_cert(body: bytes) -> Cert:
    if not body:
        raise _syntax("CERT payload without a Cert Encoding")
    return Cert(body[0], body[1:])


def _decode_certreq(body: bytes) -> CertReq:
    if not body:
        raise _syntax("CERTREQ payload without a Cert Encoding")
    return CertReq(body[0], body[1:])


def _decode_auth(body: bytes) -> Auth:
    if len(body) < 4:
        raise _syntax("AUTH payload shorter than its method and reserved field")
    return Auth(body[0], body[4:])


def _decode_nonce(body: bytes) -> Nonce:
    if not NONCE_MIN <= len(body) <= NONCE_MAX:
        raise _syntax(f"nonce of {len(body)} octets (§3.9: {NONCE_MIN} to {NONCE_MAX})")
    return Nonce(body)


def _decode_notify(body: bytes) -> Notify:
    if len(body) < 4:
        raise _syntax("Notify payload shorter than its fixed fields")
    protocol, spi_size, ntype = _PROTO_SPI.unpack_from(body)
    if spi_size > len(body) - 4:
        raise _syntax(f"Notify SPI size {spi_size} runs past the payload")
    if spi_size and spi_size != _NOTIFY_SPI_SIZE.get(protocol):
        raise _syntax(f"Notify SPI size {spi_size} for protocol {protocol}")
    return Notify(ntype, protocol, body[4:4 + spi_size], body[4 + spi_size:])


def _decode_delete(body: bytes) -> Delete:
    if len(body) < 4:
        raise _syntax("Delete payload shorter than its fixed fields")
    protocol, spi_size, count = _PROTO_SPI.unpack_from(body)
    if protocol not in _DELETE_SPI_SIZE:
        raise _syntax(f"Delete for protocol {protocol}")
    if spi_size != _DELETE_SPI_SIZE[protocol]:
        raise _syntax(f"Delete SPI size {spi_size} for protocol {protocol} (§3.11)")
    if protocol == ProtocolId.IKE and count:
        raise _syntax("Delete of the IKE SA with SPIs (§3.11: zero)")
    if len(body) != 4 + spi_size * count:
        raise _syntax(f"Delete payload length does not match {count} SPIs of {spi_size} octets")
    return Delete(protocol, tuple(body[4 + i * spi_size:4 + (i + 1) * spi_size] for i in range(count)))


def _decode_vendor(body: bytes) -> Vendor:
    return Vendor(body)


def _decode_ts(body: bytes) -> TS:
    if len(body) < 4:
        raise _syntax("TS payload shorter than its fixed fields")
    if body[0] == 0:
        raise _syntax("TS payload without traffic selectors")
    selectors = []
    off = 4
    for _ in range(body[0]):
        if len(body) - off < _TS_HEAD.size:
            raise _syntax("traffic selector truncated, or fewer than Number of TSs says")
        ts_type, ip_proto, length = _TS_HEAD.unpack_from(body, off)
        if ts_type not in _TS_SIZES:
            raise _syntax(f"traffic selector type {ts_type} (only IPv4 and IPv6 address ranges)")
        want, alen = _TS_SIZES[ts_type]
        if length != want or length > len(body) - off:
            raise _syntax(f"traffic selector length {length} (§3.13.1: {want} for type {ts_type})")
        start_port, end_port = _U16_PAIR.unpack_from(body, off + 4)
        start = body[off + 8:off + 8 + alen]
        selectors.append(TrafficSelector(ts_type, ip_proto, start_port, end_port, start, body[off + 8 + alen:off + length]))
        off += length
    if off != len(body):
        raise _syntax("bytes after the last traffic selector")
    return TS(tuple(selectors))


_DECODERS: dict[int, Callable[[bytes], Body]] = {
    PayloadType.SA: _decode_sa,
    PayloadType.KE: _decode_ke,
    PayloadType.IDi: _decode_id,
    PayloadType.IDr: _decode_id,
    PayloadType.CERT: _decode_cert,
    PayloadType.CERTREQ: _decode_certreq,
    PayloadType.AUTH: _decode_auth,
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR: _decode_vendor,
    PayloadType.TSi: _decode_ts,
    PayloadType.TSr: _decode_ts,
}


def _decode_body(ptype: int, critical: bool, body: bytes) -> Body:
    decoder = _DECODERS.get(ptype)
    if decoder is not None:
        return decoder(body)
    if critical:
        # §2.5: reject the whole message; the notify data is the one-octet payload type.
        raise IkeError(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, f"critical payload type {ptype}", bytes([ptype]))
    return Unknown(ptype, False, body)


def decode_payloads(first: int, data: bytes | bytearray | memoryview) -> tuple[Payload, ...]:
    """The payload chain starting with a payload of type `first` and filling `data` exactly."""
    data = bytes(data)
    payloads = []
    off, ptype = 0, first
    while ptype != PayloadType.NONE:
        if len(data) - off < _GENERIC.size:
            raise _syntax(f"payload {ptype} truncated, or the chain announces more payloads than there are")
        nxt, flags, length = _GENERIC.unpack_from(data, off)
        if length < _GENERIC.size or length > len(data) - off:
            raise _syntax(f"payload {ptype} length {length} does not fit the message")
        critical = bool(flags & _CRITICAL)
        body = data[off + _GENERIC.size:off + length]
        off += length
        if ptype in (PayloadType.SK, PayloadType.SKF):
            # §3.14: SK is the last payload; its Next Payload names the first payload inside it. RFC 7383 §2.5:
            # so is SKF, whose body opens with its Fragment Number and Total Fragments.
            if off != len(data):
                raise _syntax("payloads after the Encrypted payload")
            if ptype == PayloadType.SK:
                payloads.append(Payload(ptype, Encrypted(nxt, body), critical))
            elif len(body) < _U16_PAIR.size:
                raise _syntax("Encrypted Fragment payload without Fragment Number and Total Fragments")
            else:
                number, total = _U16_PAIR.unpack_from(body)
                payloads.append(Payload(ptype, EncryptedFragment(nxt, number, total, body[_U16_PAIR.size:]), critical))
            return tuple(payloads)
        payloads.append(Payload(ptype, _decode_body(ptype, critical, body), critical))
        ptype = nxt
    if off != len(data):
        raise _syntax("bytes after the last payload")
    return tuple(payloads)


def decode_header(data: bytes | bytearray | memoryview) -> Header:
    """The IKE header of a whole message (one UDP payload, without the non-ESP marker)."""
    if len(data) < IKE_HEADER_LEN:
        raise _syntax(f"{len(data)} octets, shorter than the IKE header")
    ispi, rspi, nxt, version, exchange, flags, msg_id, length = _HEADER.unpack_from(data)
    if version >> 4 != IKE_MAJOR_VERSION:
        raise IkeError(NotifyType.INVALID_MAJOR_VERSION, f"major version {version >> 4}")
    if length != len(data):
        raise _syntax(f"header says {length} octets, the datagram has {len(data)}")
    return Header(ispi, rspi, nxt, exchange, flags & _KNOWN_FLAGS, msg_id, length)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """A message with its payloads in clear (IKE_SA_INIT); an SK payload is kept as `Encrypted`."""
    data = bytes(data)
    h = decode_header(data)
    payloads = decode_payloads(h.next_payload, data[IKE_HEADER_LEN:])
    return Message(h.ispi, h.rspi, h.exchange, h.flags, h.msg_id, payloads)


def split_encrypted(data: bytes | bytearray | memoryview) -> tuple[Header, bytes, int, bytes]:
    """(header, associated data, type of the first inner payload, SK body) of a protected message.

    The associated data runs from the IKE header through the SK payload's generic header (RFC 5282 §5.1).
    Payloads in front of SK (none in practice) are checked like any others, then left out.
    """
    data = bytes(data)
    h = decode_header(data)
    payloads = decode_payloads(h.next_payload, data[IKE_HEADER_LEN:])
    if not payloads or not isinstance(payloads[-1].body, Encrypted):
        raise _syntax("no Encrypted payload in a message that needs one")
    sk = payloads[-1].body
    return h, data[:len(data) - len(sk.data)], sk.first, sk.data


# --- encoding -------------------------------------------------------------------------------------------------


def _encode_transform(t: Transform, last: bool) -> bytes:
    attrs = b"" if t.key_length is None else _pack(_ATTR, _ATTR_TV | TransformAttr.KEY_LENGTH, t.key_length)
    flag = _LAST if last else _MORE_TRANSFORMS
    return _pack(_TRANSFORM, flag, 0, _TRANSFORM.size + len(attrs), t.type, 0, t.id) + attrs


def _encode_proposal(p: Proposal, last: bool) -> bytes:
    if not 0 < len(p.transforms) <= MAX_TRANSFORMS:
        raise ValueError(f"a proposal holds 1 to {MAX_TRANSFORMS} transforms, not {len(p.transforms)}")
    n = len(p.transforms)
    transforms = b"".join(_encode_transform(t, i == n - 1) for i, t in enumerate(p.transforms))
    length = _PROPOSAL.size + len(p.spi) + len(transforms)
    flag = _LAST if last else _MORE_PROPOSALS
    return _pack(_PROPOSAL, flag, 0, length, p.num, p.protocol, len(p.spi), n) + p.spi + transforms


def _encode_sa(sa: SA) -> bytes:
    if not 0 < len(sa.proposals) <= MAX_PROPOSALS:
        raise ValueError(f"an SA payload holds 1 to {MAX_PROPOSALS} proposals, not {len(sa.proposals)}")
    n = len(sa.proposals)
    return b"".join(_encode_proposal(p, i == n - 1) for i, p in enumerate(sa.proposals))


def _encode_notify(n: Notify) -> bytes:
    return _pack(_PROTO_SPI, n.protocol, len(n.spi), n.type) + n.spi + n.data


def _encode_delete(d: Delete) -> bytes:
    size = _DELETE_SPI_SIZE.get(d.protocol)
    if size is None or any(len(spi) != size for spi in d.spis) or (size == 0 and d.spis):
        raise ValueError(f"Delete for protocol {d.protocol} with SPIs {d.spis!r}")
    return _pack(_PROTO_SPI, d.protocol, size, len(d.spis)) + b"".join(d.spis)


def _encode_selector(s: TrafficSelector) -> bytes:
    length, alen = _TS_SIZES.get(s.ts_type, (0, 0))
    if not alen or len(s.start) != alen or len(s.end) != alen:
        raise ValueError(f"traffic selector type {s.ts_type} with addresses {s.start!r}, {s.end!r}")
    return _pack(_TS_HEAD, s.ts_type, s.ip_proto, length) + _pack(_U16_PAIR, s.start_port, s.end_port) + s.start + s.end


def _encode_ts(ts: TS) -> bytes:
    if not 0 < len(ts.selectors) <= 255:
        raise ValueError(f"a TS payload holds 1 to 255 selectors, not {len(ts.selectors)}")
    return bytes([len(ts.selectors), 0, 0, 0]) + b"".join(_encode_selector(s) for s in ts.selectors)


def _encode_nonce(n: Nonce) -> bytes:
    if not NONCE_MIN <= len(n.data) <= NONCE_MAX:
        raise ValueError(f"nonce of {len(n.data)} octets")
    return n.data


def _type_and_reserved(kind: int, data: bytes) -> bytes:
    """The one-octet type and three reserved octets that open ID and AUTH payloads."""
    if not 0 <= kind <= 255:
        raise ValueError(f"type {kind} does not fit one octet")
    return bytes([kind, 0, 0, 0]) + data


def _one_octet(kind: int, data: bytes) -> bytes:
    if not 0 <= kind <= 255:
        raise ValueError(f"encoding {kind} does not fit one octet")
    return bytes([kind]) + data


#: Body class -> (payload types it may be sent as, encoder).
_ENCODERS: dict[type, tuple[frozenset[int] | None, Callable]] = {
    SA: (frozenset({PayloadType.SA}), _encode_sa),
    KE: (frozenset({PayloadType.KE}), lambda b: _pack(_U16_PAIR, b.group, 0) + b.data),
    ID: (frozenset({PayloadType.IDi, PayloadType.IDr}), lambda b: _type_and_reserved(b.id_type, b.data)),
    Cert: (frozenset({PayloadType.CERT}), lambda b: _one_octet(b.encoding, b.data)),
    CertReq: (frozenset({PayloadType.CERTREQ}), lambda b: _one_octet(b.encoding, b.data)),
    Auth: (frozenset({PayloadType.AUTH}), lambda b: _type_and_reserved(b.method, b.data)),
    Nonce: (frozenset({PayloadType.NONCE}), _encode_nonce),
    Notify: (frozenset({PayloadType.NOTIFY}), _encode_notify),
    Delete: (frozenset({PayloadType.DELETE}), _encode_delete),
    Vendor: (frozenset({PayloadType.VENDOR}), lambda b: b.data),
    TS: (frozenset({PayloadType.TSi, PayloadType.TSr}), _encode_ts),
    Encrypted: (frozenset({PayloadType.SK}), lambda b: b.data),
    EncryptedFragment: (frozenset({PayloadType.SKF}), lambda b: _pack(_U16_PAIR, b.number, b.total) + b.data),
    Unknown: (None, lambda b: b.data),
}


def _encode_body(p: Payload) -> bytes:
    types, encoder = _ENCODERS[type(p.body)]
    allowed = p.type == p.body.type if types is None else p.type in types
    if not allowed:
        raise ValueError(f"a {type(p.body).__name__} body cannot be sent as payload type {p.type}")
    return encoder(p.body)


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, the chain). An Encrypted payload must come last (§3.14)."""
    parts = []
    for i, p in enumerate(payloads):
        if isinstance(p.body, Encrypted | EncryptedFragment):
            if i != len(payloads) - 1:
                raise ValueError("the Encrypted payload must be the last one")
            nxt = p.body.first
        else:
            nxt = payloads[i + 1].type if i + 1 < len(payloads) else PayloadType.NONE
        body = _encode_body(p)
        parts.append(_pack(_GENERIC, nxt, _CRITICAL if p.critical else 0, _GENERIC.size + len(body)) + body)
    return (payloads[0].type if payloads else PayloadType.NONE), b"".join(parts)


def _encode_header(msg: Message, next_payload: int, length: int) -> bytes:
    if len(msg.ispi) != 8 or len(msg.rspi) != 8:
        raise ValueError("IKE SPIs are 8 octets")
    if msg.flags & ~_KNOWN_FLAGS:
        raise ValueError(f"reserved header flags set: {msg.flags:#x}")
    return _pack(_HEADER, msg.ispi, msg.rspi, next_payload, IKE_VERSION, msg.exchange, msg.flags, msg.msg_id, length)


def encode(msg: Message) -> bytes:
    """The whole message with its payloads in clear (IKE_SA_INIT, or one already holding an Encrypted body)."""
    first, chain = encode_payloads(msg.payloads)
    return _encode_header(msg, first, IKE_HEADER_LEN + len(chain)) + chain


def encode_encrypted(header: Message, inner: Sequence[Payload], seal: Callable[[bytes, bytes], bytes],
                     sealed_len: Callable[[int], int]) -> bytes:
    """The message with the header fields of `header` (its payloads are not used) and `inner` inside one SK.

    `sealed_len(n)` is the SK body length (IV, ciphertext with padding and pad length, ICV) for n octets of
    plaintext; `seal(aad, plaintext)` returns that body. Lengths go into the headers before sealing because
    both headers are part of the associated data (RFC 5282 §5.1, RFC 7296 §3.14).
    """
    if any(isinstance(p.body, Encrypted | EncryptedFragment) for p in inner):
        raise ValueError("an Encrypted payload cannot be nested")
    first, plaintext = encode_payloads(inner)
    body_len = sealed_len(len(plaintext))
    sk_len = _GENERIC.size + body_len
    aad = _encode_header(header, PayloadType.SK, IKE_HEADER_LEN + sk_len) + _pack(_GENERIC, first, 0, sk_len)
    body = seal(aad, plaintext)
    if len(body) != body_len:
        raise ValueError(f"seal returned {len(body)} octets, sealed_len promised {body_len}")
    return aad + body


def encode_fragment(header: Message, first: int, number: int, total: int, chunk: bytes,
                    seal: Callable[[bytes, bytes], bytes], sealed_len: Callable[[int], int]) -> bytes:
    """One IKE Fragment message (RFC 7383 §2.5): the header fields of `header`, then an SKF payload protecting
    `chunk`, a piece of the inner payload chain. `first` is the chain's first payload type in fragment 1 and
    must be zero in the others. The associated data runs from the IKE header through Total Fragments (RFC 7383
    §2.5: "the Fragment Number and the Total Fragments fields" are authenticated like the headers)."""
    if not 1 <= number <= total or (number > 1 and first):
        raise ValueError(f"fragment {number} of {total} with first payload {first}")
    body_len = sealed_len(len(chunk))
    skf_len = _GENERIC.size + _U16_PAIR.size + body_len
    aad = (_encode_header(header, PayloadType.SKF, IKE_HEADER_LEN + skf_len) + _pack(_GENERIC, first, 0, skf_len)
           + _pack(_U16_PAIR, number, total))
    body = seal(aad, chunk)
    if len(body) != body_len:
        raise ValueError(f"seal returned {len(body)} octets, sealed_len promised {body_len}")
    return aad + body
