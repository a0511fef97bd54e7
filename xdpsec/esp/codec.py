"""ESP packets (RFC 4303 §2) from and to their payload: everything between the IP (or UDP) header and the end.

    0                   1                   2                   3
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |               Security Parameters Index (SPI)                 |
    |                      Sequence Number (low 32 bits)            |
    |                IV (0, 8 or 16 bytes, per transform)           |
    |   Payload Data | TFC padding | Padding (1, 2, 3, ...)         |   <- encrypted
    |                        | Pad Length    | Next Header          |   <-
    |        Integrity Check Value (16, 24 or 32 bytes)             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Pure functions over an `EspContext` (the per-SA constants); the sequence counter and the replay window belong
to the worker that owns the SA and are passed in. Network input can only raise `Drop`.
"""

from __future__ import annotations

import struct

from xdpsec.abi import Drop, DropReason
from xdpsec.crypto.esp import EspCipher
from xdpsec.esp.replay import ESN_SPACE, SEQ_SPACE, ReplayWindow
from xdpsec.sa import Protocol, SAParams

#: SPI and sequence number.
HEADER_LEN = 8
#: Pad Length and Next Header.
TRAILER_LEN = 2
#: RFC 4303 §2.4 default padding: bytes 1, 2, 3, ... (255 is the most Pad Length can say).
_PAD = bytes(range(1, 256))
#: Next headers whose payload states its own length, so the receiver can strip TFC padding (RFC 4303 §2.7):
#: IPv4 and IPv6 (tunnel mode) and the dummy packet (No Next Header, RFC 4303 §2.6).
TFC_NEXT_HEADERS = frozenset({4, 41, 59})
#: "No Next Header": a dummy packet for traffic flow confidentiality, discarded by the receiver (§2.6).
NEXT_HEADER_DUMMY = 59

_HDR = struct.Struct("!II")


class EspContext:
    """The constants of one ESP SA the codec needs: SPI, cipher state, ESN, TFC padding."""

    __slots__ = ("spi", "cipher", "esn", "tfc_pad", "min_len")

    def __init__(self, params: SAParams):
        if params.protocol != Protocol.ESP:
            raise ValueError(f"SA {params.spi:#x} is {params.protocol.name}, not ESP")
        self.spi = params.spi
        self.cipher = EspCipher(params.transform, params.enc_key, params.integ_key)
        self.esn = params.transform.esn
        self.tfc_pad = params.tfc_pad
        self.min_len = HEADER_LEN + self.cipher.iv_len + TRAILER_LEN + self.cipher.icv_len


def _padded_len(ctx: EspContext, body_len: int) -> int:
    """Length of payload + padding + trailer, aligned to the cipher's block (RFC 4303 §2.4)."""
    align = ctx.cipher.block_size
    return -(-(body_len + TRAILER_LEN) // align) * align


def esp_overhead(ctx: EspContext, payload_len: int) -> int:
    """Bytes ESP adds to a payload of `payload_len` bytes (header, IV, TFC padding, padding, trailer, ICV).

    TFC padding is counted whatever the payload, so for MTU decisions this is an upper bound.
    """
    body = payload_len + ctx.tfc_pad
    return HEADER_LEN + ctx.cipher.iv_len + _padded_len(ctx, body) - payload_len + ctx.cipher.icv_len


def esp_encap(ctx: EspContext, seq: int, next_header: int, payload: bytes | memoryview,
              *, iv: bytes | None = None) -> bytes:
    """The ESP packet (SPI..ICV) carrying `payload`, sent with the full sequence number `seq`.

    `iv` overrides the transform's IV choice; only test vectors, which fix the IV, should pass it.
    """
    if seq <= 0:
        raise ValueError("sequence numbers start at 1 (RFC 4303 §3.3.3)")
    if seq >= (ESN_SPACE if ctx.esn else SEQ_SPACE):
        raise Drop(DropReason.SEQ_EXHAUSTED)  # RFC 4303 §3.3.3: the counter must not cycle
    cipher = ctx.cipher
    if iv is None:
        iv = cipher.iv_for(seq)
    elif len(iv) != cipher.iv_len:
        raise ValueError(f"IV of {len(iv)} bytes, the transform sends {cipher.iv_len}")
    tfc = ctx.tfc_pad if next_header in TFC_NEXT_HEADERS else 0
    body_len = len(payload) + tfc
    pad_len = _padded_len(ctx, body_len) - body_len - TRAILER_LEN
    plaintext = b"".join((payload, bytes(tfc), _PAD[:pad_len], bytes((pad_len, next_header))))
    header = _HDR.pack(ctx.spi, seq % SEQ_SPACE)
    seq_hi = (seq // SEQ_SPACE).to_bytes(4, "big") if ctx.esn else b""
    return header + iv + cipher.seal(header, seq_hi, iv, plaintext)


def esp_decap(ctx: EspContext, data: bytes | memoryview,
              window: ReplayWindow | None) -> tuple[int, int, bytes]:
    """(full sequence number, next header, payload) of the ESP packet `data` (SPI..ICV), or `Drop`.

    The order is RFC 4303 §3.4: sanity, SA, replay pre-check, ICV, decryption, padding, window update.
    With `window` None nothing is checked for replay and, without the window's state, the ESN high bits are
    taken as 0; pass `ReplayWindow(0, esn)` to infer them without replay protection. The payload may end with
    TFC padding, which only its own length field (the inner IP header) can strip. Next header 59 is a dummy
    packet (RFC 4303 §2.6) that the caller discards.
    """
    data = memoryview(data)
    cipher = ctx.cipher
    iv_end = HEADER_LEN + cipher.iv_len
    if len(data) < ctx.min_len or (len(data) - iv_end - cipher.icv_len) % cipher.block_size:
        raise Drop(DropReason.TRUNCATED)  # shorter than its fixed fields, or ciphertext not block aligned
    spi, seq_low = _HDR.unpack_from(data)
    if spi != ctx.spi:
        raise Drop(DropReason.SA_MISMATCH)
    seq = window.check(seq_low) if window is not None else seq_low
    seq_hi = (seq // SEQ_SPACE).to_bytes(4, "big") if ctx.esn else b""
    plaintext = cipher.open(data[:HEADER_LEN], seq_hi, data[HEADER_LEN:iv_end], data[iv_end:])
    pad_len, next_header = plaintext[-2], plaintext[-1]
    payload_len = len(plaintext) - TRAILER_LEN - pad_len
    # RFC 4303 §2.4: with the default padding scheme the receiver checks the Padding bytes are 1, 2, 3, ...
    if payload_len < 0 or plaintext[payload_len:-TRAILER_LEN] != _PAD[:pad_len]:
        raise Drop(DropReason.BAD_PADDING)
    if window is not None:
        window.update(seq)
    return seq, next_header, plaintext[:payload_len]
