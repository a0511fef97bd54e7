"""IKEv2 message fragmentation (RFC 7383): protected messages too big for the path, sent in protected pieces.

Certificates make IKE_AUTH messages bigger than a 576-octet path carries (and ML-KEM keys do the same to
IKE_INTERMEDIATE). IP fragmentation is no answer: firewalls and NATs drop IP fragments, and a forged fragment
spoils the whole datagram before anyone can check it. RFC 7383 fragments at the IKE level instead, after
IKE_SA_INIT, when keys exist: the inner payload chain of an SK payload is cut into chunks, and each chunk
travels in its own IKE message as an Encrypted Fragment payload (SKF, §2.5), protected on its own:

    HDR(SKF) | Next Payload (fragment 1: the first inner payload's type, else 0) | C | RESERVED | Length
             | Fragment Number | Total Fragments | IV | encrypted chunk, padding, pad length | ICV

`split` builds those messages when a message does not fit `message_budget` octets of UDP payload. A receiver
(`Reassembly`, one per direction of an IKE SA) checks the cheap fields first, then the fragment's ICV, and only
an authentic fragment is kept (§2.6): a forged one can neither take a slot nor restart the reassembly. Once
every number from 1 to Total Fragments is in, the chunks are joined in order and processed as if the message
had come whole. Bounded: at most MAX_FRAGMENTS fragments and MAX_MESSAGE octets held per direction, and a
partial message older than REASSEMBLY_TIMEOUT is forgotten when the next fragment arrives (the SA holds one
per direction; it goes with the SA).

Nothing here does I/O or reads the clock: the IKE SA passes `now` in.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from xdpsec.crypto.ikecipher import IntegrityError
from xdpsec.ike import wire
from xdpsec.ike.consts import PayloadType

IPV4_HEADER, IPV6_HEADER, UDP_HEADER = 20, 40, 8
NON_ESP_MARKER = 4  # RFC 3948 §2.2: four zero octets in front of IKE on port 4500
#: RFC 7383 §2.5.1: without path MTU discovery, IP datagrams no bigger than the minimum every path must carry:
#: 576 octets for IPv4 (RFC 791), 1280 for IPv6 (RFC 8200 §5). strongSwan's charon.fragment_size = 0 means the same.
DEFAULT_FRAGMENT_SIZE = {4: 576, 6: 1280}
#: SKF's fixed part in front of the IV: generic payload header, Fragment Number, Total Fragments (RFC 7383 §2.5).
SKF_HEADER_LEN = 8
#: Our bounds on one message being reassembled (RFC 7383 §2.6 leaves them to the implementation). A 576-octet
#: path carries about 450 octets of payload per fragment, so 128 fragments hold the 32 KiB we accept: certificate
#: chains and ML-KEM-1024 keys (1568 octets) take a fraction of that; strongSwan accepts 10,000 (charon.max_packet).
MAX_FRAGMENTS = 128
MAX_MESSAGE = 32 * 1024
#: A partial message this old is discarded when another fragment arrives: the sender's retransmissions (§2.6.1:
#: all fragments each time) would have completed it by now.
REASSEMBLY_TIMEOUT = 30.0


class Discard(enum.StrEnum):
    """Why a received fragment was not kept: the IKE SA counts these names."""

    BAD = "fragment_bad"              # numbering impossible (§2.5) or stale (§2.6)
    LIMIT = "fragment_limit"          # more fragments or octets than MAX_FRAGMENTS / MAX_MESSAGE
    DUPLICATE = "fragment_duplicate"  # already held (retransmissions bring every fragment again)
    INTEGRITY = "integrity_failed"    # the fragment's ICV does not verify (§2.6): the same counter as SK's


class Discarded(Exception):
    def __init__(self, reason: Discard):
        super().__init__(reason.value)
        self.reason = reason


class Cipher(Protocol):
    """What one direction's IkeCipher offers (xdpsec/crypto/ikecipher.py)."""

    def seal(self, aad: bytes, plaintext: bytes) -> bytes: ...

    def sealed_len(self, plaintext_len: int) -> int: ...

    def open(self, aad: bytes, body: bytes) -> bytes: ...


# --- sending --------------------------------------------------------------------------------------------------


def message_budget(fragment_size: int, remote: ipaddress.IPv4Address | ipaddress.IPv6Address, natt: bool) -> int:
    """Octets of IKE message that fit one IP datagram of `fragment_size` octets (0: the family's minimum MTU)
    to `remote`, after the IP and UDP headers and, on port 4500, the non-ESP marker."""
    size = fragment_size or DEFAULT_FRAGMENT_SIZE[remote.version]
    ip_header = IPV4_HEADER if remote.version == 4 else IPV6_HEADER
    return size - ip_header - UDP_HEADER - (NON_ESP_MARKER if natt else 0)


def chunk_len(cipher: Cipher, budget: int) -> int:
    """The longest piece of plaintext whose fragment message fits `budget` octets."""
    room = budget - wire.IKE_HEADER_LEN - SKF_HEADER_LEN
    # sealed_len(n) <= n + sealed_len(0): padding never adds a whole block on top of the pad length octet.
    n = room - cipher.sealed_len(0)
    if n < 1:
        raise ValueError(f"{budget} octets leave no room for a fragment's content")
    while cipher.sealed_len(n + 1) <= room:
        n += 1
    return n


def split(header: wire.Message, inner: list[wire.Payload], cipher: Cipher, budget: int) -> list[bytes] | None:
    """The IKE Fragment messages carrying `inner` with the header fields of `header`, or None when the message
    fits `budget` octets whole (RFC 7383 §2.5: fragment only what does not fit)."""
    first, plaintext = wire.encode_payloads(inner)
    if wire.IKE_HEADER_LEN + 4 + cipher.sealed_len(len(plaintext)) <= budget:
        return None
    n = chunk_len(cipher, budget)
    chunks = [plaintext[i:i + n] for i in range(0, len(plaintext), n)]
    if len(chunks) > 0xFFFF:
        raise ValueError(f"{len(plaintext)} octets need {len(chunks)} fragments, Total Fragments holds 65535")
    return [wire.encode_fragment(header, first if number == 1 else PayloadType.NONE, number, len(chunks), chunk,
                                 cipher.seal, cipher.sealed_len)
            for number, chunk in enumerate(chunks, 1)]


# --- receiving ------------------------------------------------------------------------------------------------


def is_fragment(msg: wire.Message) -> bool:
    return bool(msg.payloads) and isinstance(msg.payloads[-1].body, wire.EncryptedFragment)


def _skf(msg: wire.Message) -> wire.EncryptedFragment:
    body = msg.payloads[-1].body
    assert isinstance(body, wire.EncryptedFragment)
    return body


def _open(frag: wire.EncryptedFragment, data: bytes, cipher: Cipher) -> bytes:
    """The fragment's chunk; the associated data is the datagram up to the IV (RFC 7383 §2.5)."""
    try:
        return cipher.open(data[:len(data) - len(frag.data)], frag.data)
    except IntegrityError:
        raise Discarded(Discard.INTEGRITY) from None


def asks_for_response(msg: wire.Message, data: bytes, cipher: Cipher) -> bool:
    """A fragment of a request we have answered already. RFC 7383 §2.6.1: only fragment 1 triggers a
    retransmission of the response (all fragments of a retransmitted request arrive, one answer is enough);
    we also want it to authenticate, so that a forged fragment cannot make us send. Raises Discarded."""
    frag = _skf(msg)
    if frag.number != 1:
        return False
    _open(frag, data, cipher)
    return True


@dataclass
class _Partial:
    msg_id: int
    total: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    first: int = PayloadType.NONE
    held: int = 0  # octets of SKF bodies taken in, checked against MAX_MESSAGE before decrypting


class Reassembly:
    """The fragments of the one message (request or response) an IKE SA waits for in one direction.

    The SA has already checked the Message ID (the window of one, RFC 7296 §2.3): a fragment with another
    Message ID than the partial one held means that one is over."""

    def __init__(self) -> None:
        self._partial: _Partial | None = None

    @property
    def pending(self) -> int:
        """Fragments held (for tests and introspection)."""
        return len(self._partial.chunks) if self._partial else 0

    def receive(self, msg: wire.Message, data: bytes, cipher: Cipher, now: float) -> tuple[int, bytes] | None:
        """(type of the first inner payload, the inner payload chain) when `msg` completes its message, None
        while fragments are missing. Raises Discarded for a fragment that is not kept."""
        frag = _skf(msg)
        if not 1 <= frag.number <= frag.total:
            raise Discarded(Discard.BAD)  # §2.5: numbered from 1, at most Total Fragments, which is not zero
        if frag.total > MAX_FRAGMENTS:
            raise Discarded(Discard.LIMIT)
        partial = self._partial
        if partial is not None and (partial.msg_id != msg.msg_id or now - partial.started > REASSEMBLY_TIMEOUT):
            partial = self._partial = None
        held = 0
        if partial is not None:
            if frag.total < partial.total:
                # §2.6: fewer fragments than those held: from an earlier try, before the sender shrank them (§2.5.2)
                raise Discarded(Discard.BAD)
            if frag.total == partial.total:
                if frag.number in partial.chunks:
                    raise Discarded(Discard.DUPLICATE)
                held = partial.held
        if held + len(frag.data) > MAX_MESSAGE:
            raise Discarded(Discard.LIMIT)
        chunk = _open(frag, data, cipher)  # §2.6: nothing unauthenticated is kept or acted on
        if partial is None or frag.total > partial.total:
            # §2.6: more fragments than those held: the sender retransmits in smaller pieces; start over.
            partial = self._partial = _Partial(msg.msg_id, frag.total, now)
        partial.chunks[frag.number] = chunk
        partial.held += len(frag.data)
        if frag.number == 1:
            partial.first = frag.first  # §2.5: only fragment 1 names the first inner payload
        if len(partial.chunks) < partial.total:
            return None
        self._partial = None
        return partial.first, b"".join(partial.chunks[n] for n in range(1, partial.total + 1))
