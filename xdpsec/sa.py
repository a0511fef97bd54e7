"""Security associations and traffic selectors: the vocabulary the SAD, the SPD, the codecs and IKE share.

An SA is unidirectional (RFC 4301 §4.1). `SAParams` is everything needed to process its packets and nothing
that changes per packet: the immutable SAD entry the coordinator hands to the worker that owns the SA. The
per-packet state (outbound sequence counter, inbound replay window) lives with that one worker only.

Algorithm numbers are the IKEv2 transform IDs (RFC 7296 §3.3.2, IANA "IKEv2 Transform Type 1/3"), so the same
values serve manual keying, IKE negotiation and the key export. Key material is never part of repr().
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Protocol(enum.IntEnum):
    """IPsec protocol of an SA, by its IP protocol number."""

    ESP = 50
    AH = 51


class Mode(enum.Enum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class Direction(enum.Enum):
    IN = "in"
    OUT = "out"


class Encr(enum.IntEnum):
    """ESP encryption transforms we implement (IKEv2 transform type 1 IDs)."""

    NULL = 11  # RFC 2410; only with integrity (RFC 8221 §5: ENCR_NULL MUST NOT be used without it)
    AES_CBC = 12  # RFC 3602
    AES_GCM_16 = 20  # RFC 4106, 16-byte ICV
    CHACHA20_POLY1305 = 28  # RFC 7634


class Integ(enum.IntEnum):
    """Integrity transforms we implement (IKEv2 transform type 3 IDs), for ESP and AH."""

    HMAC_SHA2_256_128 = 12  # RFC 4868
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


AEAD = frozenset({Encr.AES_GCM_16, Encr.CHACHA20_POLY1305})

#: Salt bytes that follow the cipher key in AEAD key material (RFC 4106 §8.1, RFC 7634 §2).
AEAD_SALT_LEN = 4

#: (key length in bytes, ICV length in bytes) of each integrity transform (RFC 4868 §2.3 and §2.6).
INTEG_SIZES = {
    Integ.HMAC_SHA2_256_128: (32, 16),
    Integ.HMAC_SHA2_384_192: (48, 24),
    Integ.HMAC_SHA2_512_256: (64, 32),
}


@dataclass(frozen=True)
class Transform:
    """The algorithms of one SA, as negotiated or configured.

    `encr` is None for AH. `encr_key_bits` is the cipher key size without the AEAD salt (0 for NULL,
    256 for ChaCha20-Poly1305). `integ` is None for AEAD ciphers, which carry their own ICV.
    """

    encr: Encr | None
    encr_key_bits: int = 0
    integ: Integ | None = None
    esn: bool = False  # extended sequence numbers, RFC 4303 §2.2.1 and appendix A

    @property
    def is_aead(self) -> bool:
        return self.encr in AEAD

    @property
    def enc_key_len(self) -> int:
        """Bytes of encryption key material, including the AEAD salt."""
        if self.encr is None or self.encr == Encr.NULL:
            return 0
        return self.encr_key_bits // 8 + (AEAD_SALT_LEN if self.is_aead else 0)

    @property
    def integ_key_len(self) -> int:
        return INTEG_SIZES[self.integ][0] if self.integ is not None else 0


@dataclass(frozen=True)
class PortRange:
    lo: int = 0
    hi: int = 65535

    def __contains__(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    @property
    def is_any(self) -> bool:
        return self.lo == 0 and self.hi == 65535


ANY_PORT = PortRange()


@dataclass(frozen=True)
class TrafficSelector:
    """One side of a flow: a prefix, an IP protocol (0 = any) and a port range.

    For ICMP and ICMPv6 the "port" is the message type, as in XFRM and strongSwan's `[icmp/8]`.
    """

    net: IPNetwork
    proto: int = 0
    ports: PortRange = ANY_PORT

    def matches(self, addr: IPAddress, proto: int, port: int) -> bool:
        """Does (addr, proto, port) fall inside this selector? `port` is ignored unless ports are restricted."""
        if addr.version != self.net.version or addr not in self.net:
            return False
        if self.proto and proto != self.proto:
            return False
        return self.ports.is_any or port in self.ports

    def __str__(self) -> str:
        if self.proto == 0 and self.ports.is_any:
            return str(self.net)
        port = "" if self.ports.is_any else (
            f"/{self.ports.lo}" if self.ports.lo == self.ports.hi else f"/{self.ports.lo}-{self.ports.hi}")
        return f"{self.net}[{self.proto}{port}]"


@dataclass(frozen=True)
class UdpEncap:
    """RFC 3948 UDP encapsulation ports (normally 4500 on both ends, or the NAT's mapping)."""

    sport: int = 4500
    dport: int = 4500


@dataclass(frozen=True)
class SAParams:
    """An SAD entry (RFC 4301 §4.4.2) minus per-packet state.

    `local`/`remote` are the outer addresses (tunnel endpoints, or the hosts themselves in transport mode).
    For an inbound SA `local_ts`/`remote_ts` are the selectors the decapsulated packet must match with its
    destination in `local_ts` and its source in `remote_ts` (RFC 4301 §5.2); for an outbound SA they describe
    what the SA carries (source in `local_ts`).
    """

    spi: int
    protocol: Protocol
    direction: Direction
    mode: Mode
    transform: Transform
    local: IPAddress
    remote: IPAddress
    enc_key: bytes = field(default=b"", repr=False)
    integ_key: bytes = field(default=b"", repr=False)
    encap: UdpEncap | None = None
    replay_window: int = 1024  # packets; 0 disables anti-replay (RFC 4303 §3.4.3 allows it, we warn)
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    name: str = ""  # "connection/child", for humans
    tfc_pad: int = 0  # bytes of TFC padding to add (RFC 4303 §2.7); 0 = none

    def __post_init__(self) -> None:
        if not 256 <= self.spi <= 0xFFFFFFFF:  # RFC 4303 §2.1: 1..255 are reserved by IANA, 0 is local use
            raise ValueError(f"SPI {self.spi:#x} outside 0x100..0xffffffff")
        if self.protocol == Protocol.AH and self.transform.encr is not None:
            raise ValueError("AH has no encryption transform")
        if self.protocol == Protocol.AH and self.encap is not None:
            raise ValueError("AH cannot be UDP-encapsulated (RFC 3948 covers ESP only)")
        if len(self.enc_key) != self.transform.enc_key_len:
            raise ValueError(f"encryption key is {len(self.enc_key)} bytes, the transform needs "
                             f"{self.transform.enc_key_len}")
        if len(self.integ_key) != self.transform.integ_key_len:
            raise ValueError(f"integrity key is {len(self.integ_key)} bytes, the transform needs "
                             f"{self.transform.integ_key_len}")
        if self.local.version != self.remote.version:
            raise ValueError("outer addresses of one SA must be of one family")

    @property
    def family(self) -> int:
        """4 or 6: the outer IP version."""
        return self.local.version


@dataclass(frozen=True, slots=True)
class Flow:
    """The selector fields of one packet (RFC 4301 §4.4.1.1) as the SPD and the inbound check see them.

    Ports are 0 when the protocol has none or the packet is a non-first fragment; for ICMP/ICMPv6 `sport` is
    the message type and `dport` the code.
    """

    src: IPAddress
    dst: IPAddress
    proto: int
    sport: int = 0
    dport: int = 0


class LimitReached(Exception):
    """The SAD refuses another SA: a configured bound ([limits] sas_per_worker) is reached. Raised by the
    coordinator's install, caught by the IKE shell, which then deletes the child it could not install."""
