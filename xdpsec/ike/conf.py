"""What the IKE core needs to know about a connection: the contract between the TOML loader and the core.

xdpsec/config.py builds these from the configuration; xdpsec/ike/ consumes them and nothing else of the config.
Key material is opaque bytes (PEM or DER, parsed only in xdpsec/crypto/auth.py) and never part of repr().
Names follow swanctl.conf: a connection has `local`/`remote` authentication rounds and `children`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from xdpsec.sa import IPAddress, Mode, Protocol, TrafficSelector, Transform


class StartAction(enum.Enum):
    NONE = "none"    # wait for the peer (or `xdpsec initiate`)
    START = "start"  # initiate when the gateway starts
    TRAP = "trap"    # initiate when the first packet matches the child's PROTECT policy


class DpdAction(enum.Enum):
    CLEAR = "clear"      # tear down and forget
    RESTART = "restart"  # tear down and initiate again
    TRAP = "trap"        # tear down and wait for traffic


class Fragmentation(enum.Enum):
    """swanctl.conf's `fragmentation` (RFC 7383). Fragments a peer sends are accepted whatever this says, as
    strongSwan does: it only decides what we announce (§2.3) and whether we send fragments."""

    YES = "yes"        # announce; fragment our oversized messages when the peer announced it too
    ACCEPT = "accept"  # announce, but never send fragments ourselves
    FORCE = "force"    # strongSwan: IKEv1 only (fragments even the first message); for IKEv2 the same as yes
    NO = "no"          # do not announce, so the peer never fragments towards us


class AuthMethod(enum.Enum):
    PSK = "psk"
    PUBKEY = "pubkey"  # certificates: RSA (PKCS#1 v1.5 / PSS), ECDSA, Ed25519, via RFC 7427 when the peer supports it


@dataclass(frozen=True)
class IkeProposal:
    """One IKE SA proposal, strongSwan syntax `aes256gcm16-prfsha384-x25519[-ke1_mlkem768]`. IDs are IKEv2 transform IDs."""

    encr: int                 # ENCR_* (RFC 7296 §3.3.2 / IANA)
    encr_key_bits: int        # 128 / 256 (0 for ciphers with a fixed key size, e.g. ChaCha20-Poly1305 -> 256)
    integ: int | None         # AUTH_* or None for AEAD
    prf: int                  # PRF_*
    ke: int                   # key exchange group (Transform Type 4)
    # RFC 9370 additional key exchanges: addke[i] is the method of ADDKE(i+1) (Transform Type 6 + i), 0 (NONE)
    # for a skipped type; no trailing zeros, so a classic proposal has (). Run over IKE_INTERMEDIATE.
    addke: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChildProposal:
    """One child SA proposal: the ESP/AH transform and, for PFS in CREATE_CHILD_SA, a key exchange group and
    RFC 9370 additional key exchanges (`addke` as in IkeProposal; run over IKE_FOLLOWUP_KE, §2.2.4)."""

    protocol: Protocol
    transform: Transform
    ke: int | None = None
    addke: tuple[int, ...] = ()


@dataclass(frozen=True)
class Identity:
    """An IKE identity (RFC 7296 §3.5): ID type (IKEv2 ID Type number) and its data as sent on the wire."""

    id_type: int
    data: bytes
    text: str = ""  # as configured, for humans and logs


@dataclass(frozen=True)
class AuthRound:
    """One side's authentication: how it proves itself (local) or must prove itself (remote)."""

    method: AuthMethod
    identity: Identity | None = None        # None on the remote side: accept any identity that authenticates
    psk: bytes = field(default=b"", repr=False)
    private_key: bytes = field(default=b"", repr=False)   # PEM or DER, local side with PUBKEY
    certs: tuple[bytes, ...] = ()            # DER: our end-entity certificate first, then intermediates
    cacerts: tuple[bytes, ...] = ()          # DER: trust anchors for the peer's chain (remote side)
    rsa_pss: bool = False                    # local RSA key signs with RSASSA-PSS (RFC 7427 appendix A), not v1.5


@dataclass(frozen=True)
class Lifetime:
    """When an SA is rekeyed (soft) and when it dies (hard): swanctl.conf's rekey_/life_/rand_ keys.

    Zero means "no limit of this kind". A rekey is scheduled at `rekey_time - uniform(0, rand_time)` so that
    two peers with the same configuration do not rekey at the same instant (RFC 7296 §2.8.1 collisions are
    resolved, but avoided is better). `life_time` is the hard limit: the SA is deleted then whatever happened.
    Bytes and packets count what the data path has carried on the child's SAs.
    """

    rekey_time: float = 0.0
    life_time: float = 0.0
    rand_time: float = 0.0
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0


#: strongSwan's defaults: children rekey after 1 h (life_time = 1.1 x rekey_time, rand_time = the difference);
#: IKE SAs after 4 h (over_time = 10 % of rekey_time).
CHILD_LIFETIME = Lifetime(rekey_time=3600.0, life_time=3960.0, rand_time=360.0)
IKE_LIFETIME = Lifetime(rekey_time=14400.0, life_time=15840.0, rand_time=1440.0)


@dataclass(frozen=True)
class ChildConfig:
    name: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    mode: Mode = Mode.TUNNEL
    proposals: tuple[ChildProposal, ...] = ()
    start_action: StartAction = StartAction.NONE
    dpd_action: DpdAction = DpdAction.CLEAR
    replay_window: int = 1024
    lifetime: Lifetime = CHILD_LIFETIME


@dataclass(frozen=True)
class IkeConnConfig:
    name: str
    local_addrs: tuple[IPAddress, ...]
    remote_addrs: tuple[IPAddress, ...]      # empty: accept any peer (responder only)
    proposals: tuple[IkeProposal, ...]
    local: AuthRound
    remote: AuthRound
    children: tuple[ChildConfig, ...]
    encap: bool = False                       # force UDP encapsulation (RFC 3948) as if behind a NAT
    local_port: int = 500
    remote_port: int = 500
    dpd_delay: float = 0.0                    # seconds of silence before a liveness check; 0 = off
    dpd_timeout: float = 0.0                  # unused in IKEv2 (retransmissions decide), kept for swanctl users
    retransmit_timeout: float = 4.0           # RFC 7296 §2.1 back-off: 4 s, then x1.8 per try (strongSwan's)
    retransmit_tries: int = 5
    keyingtries: int = 1
    lifetime: Lifetime = IKE_LIFETIME          # rekey_time/over_time/rand_time of the IKE SA (bytes unused)
    fragmentation: Fragmentation = Fragmentation.YES  # RFC 7383 IKE fragmentation (swanctl's key)
    fragment_size: int = 0                    # max IP datagram of a fragment; 0: 576 (IPv4), 1280 (IPv6)
