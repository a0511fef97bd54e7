"""COOKIE (RFC 7296 §2.6): a responder under load keeps no state for an IKE_SA_INIT until the initiator has shown
that it receives what is sent to the address it claims.

When the manager's half-open IKE SAs reach its cookie threshold, an IKE_SA_INIT request without a valid cookie is
answered with

    HDR(SPIi, 0), N(COOKIE)

and nothing else: no SA, no key exchange, nothing remembered. The cookie is §2.6's suggestion,

    Cookie = <VersionIDofSecret> | HMAC-SHA-256(<secret>, Ni | IPi | SPIi)

four octets of version and 32 of MAC (§3.10.1 allows 1 to 64 octets). When the request comes back with it, the
MAC is computed again: a match proves the initiator got our answer at IPi, for this SPIi and this Ni only, so a
cookie fetched once cannot be spent on other SAs. The secret comes from the manager's rng and serves for
SECRET_LIFETIME seconds; a cookie stays valid SECRET_GRACE seconds after its secret was replaced (§2.6: "keep the
old value of <secret> around for a short time"), then fails, and the initiator is simply given a fresh one.

Pure: the time is passed in, the randomness injected.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from xdpsec.ike import wire
from xdpsec.ike.consts import IKE_MAJOR_VERSION, ExchangeType, HeaderFlag, NotifyType, PayloadType
from xdpsec.sa import IPAddress

VERSION_LEN = 4   # <VersionIDofSecret>: a counter, big-endian
MAC_LEN = hashlib.sha256().digest_size
COOKIE_LEN = VERSION_LEN + MAC_LEN
SECRET_LEN = 32
#: Seconds one secret makes cookies; §2.6 wants it changed "frequently, especially if under attack".
SECRET_LIFETIME = 60.0
#: Seconds a replaced secret still verifies cookies: several round trips, so an initiator whose cookie was made
#: just before a change is not sent round again; short, since §2.6 warns against accepting old cookies for long.
SECRET_GRACE = 20.0

_HEADER = struct.Struct("!8s8sBBBBII")  # §3.1
_GENERIC = struct.Struct("!BBH")        # §3.2: next payload, critical|reserved, payload length
_NOTIFY = struct.Struct("!BBH")         # §3.10: protocol ID, SPI size, notify type


class Verdict(enum.Enum):
    """What a request brought, named as the manager counts it."""

    VALID = "cookie_ok"         # the initiator proved its address: the request may create state
    BAD = "cookie_bad"          # not a cookie we made for this Ni, address and SPI, or its secret has expired
    MISSING = "cookie_missing"  # an initiator's first try


@dataclass(frozen=True)
class _Secret:
    version: int
    key: bytes = field(repr=False)
    born: float


class CookieJar:
    """The responder's secrets: makes and checks cookies. At most two secrets are kept, the current one and the
    one it replaced."""

    def __init__(self, rng: Callable[[int], bytes], *, lifetime: float = SECRET_LIFETIME,
                 grace: float = SECRET_GRACE):
        self._rng = rng
        self.lifetime = lifetime
        self.grace = grace
        self._secrets: list[_Secret] = []
        self._version = 0

    def _current(self, now: float) -> _Secret:
        """The secret that makes cookies now: a new one once the current one has served its lifetime."""
        if not self._secrets or now >= self._secrets[-1].born + self.lifetime:
            self._version = (self._version + 1) % 2 ** (8 * VERSION_LEN)
            self._secrets = [*self._secrets[-1:], _Secret(self._version, self._rng(SECRET_LEN), now)]
        return self._secrets[-1]

    @staticmethod
    def _mac(secret: _Secret, ni: bytes, ip: IPAddress, spi: bytes) -> bytes:
        return hmac.digest(secret.key, ni + ip.packed + spi, "sha256")

    def make(self, ni: bytes, ip: IPAddress, spi: bytes, now: float) -> bytes:
        secret = self._current(now)
        return secret.version.to_bytes(VERSION_LEN, "big") + self._mac(secret, ni, ip, spi)

    def verify(self, cookie: bytes, ni: bytes, ip: IPAddress, spi: bytes, now: float) -> bool:
        if len(cookie) != COOKIE_LEN:
            return False
        version = int.from_bytes(cookie[:VERSION_LEN], "big")
        secret = next((s for s in self._secrets if s.version == version), None)
        if secret is None or now >= secret.born + self.lifetime + self.grace:
            return False  # forged, or made with a secret we no longer hold or no longer trust
        return hmac.compare_digest(cookie[VERSION_LEN:], self._mac(secret, ni, ip, spi))

    def check(self, cookie: bytes | None, ni: bytes, ip: IPAddress, spi: bytes, now: float) -> Verdict:
        if cookie is None:
            return Verdict.MISSING
        return Verdict.VALID if self.verify(cookie, ni, ip, spi, now) else Verdict.BAD


def scan(data: bytes, first: int) -> tuple[bytes | None, bytes | None] | None:
    """(Ni, cookie) of an IKE_SA_INIT request whose header was checked, either None if absent; None if the payload
    chain lies about its lengths. Only the generic payload headers (§3.2) are walked: a flood answered with
    cookies must cost less than parsing every proposal. §2.6 puts N(COOKIE) first; we take it wherever it is,
    as the only harm of a misplaced one is a wasted MAC."""
    ni = cookie = None
    ptype, offset = first, wire.IKE_HEADER_LEN
    while ptype != PayloadType.NONE:
        if offset + _GENERIC.size > len(data):
            return None  # announces a payload the datagram does not hold
        nxt, _flags, length = _GENERIC.unpack_from(data, offset)
        if length < _GENERIC.size or offset + length > len(data):
            return None  # shorter than its own header, or running past the datagram
        body = data[offset + _GENERIC.size:offset + length]
        if ptype == PayloadType.NONCE and ni is None:
            ni = body
        elif ptype == PayloadType.NOTIFY and cookie is None and len(body) >= _NOTIFY.size:
            _protocol, spi_size, ntype = _NOTIFY.unpack_from(body)
            if ntype == NotifyType.COOKIE:
                cookie = body[_NOTIFY.size + spi_size:]
        ptype, offset = nxt, offset + length
    return (ni, cookie) if offset == len(data) else None  # octets after the last payload: the header lied


def challenge(spi: bytes, msg_id: int, cookie: bytes) -> bytes:
    """§2.6's stateless answer: HDR(SPIi, 0), N(COOKIE) (built here, not by wire.encode, for the same reason as
    `scan`). Smaller than the request, so it amplifies nothing toward a spoofed source."""
    notify = _GENERIC.pack(PayloadType.NONE, 0, _GENERIC.size + _NOTIFY.size + len(cookie)) \
        + _NOTIFY.pack(0, 0, NotifyType.COOKIE) + cookie
    header = _HEADER.pack(spi, bytes(8), PayloadType.NOTIFY, IKE_MAJOR_VERSION << 4, ExchangeType.IKE_SA_INIT,
                          HeaderFlag.RESPONSE, msg_id, wire.IKE_HEADER_LEN + len(notify))
    return header + notify
