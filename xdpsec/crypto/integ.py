"""HMAC-SHA-2 integrity check values with truncation (RFC 4868), for ESP and AH.

RFC 4868 §2.1 computes the full HMAC (RFC 2104) and keeps its leftmost half as the ICV: 16 bytes for
HMAC-SHA-256-128, 24 for -384-192, 32 for -512-256; the key is as long as the hash output (§2.1.1).
The callers (the ESP codec, AH) hand over the authenticated data as several chunks (header, IV, ciphertext,
the ESN high bits) so nothing has to be concatenated first.
"""

from __future__ import annotations

import hmac as _stdlib_hmac

from cryptography.hazmat.primitives import hashes, hmac

from xdpsec.sa import INTEG_SIZES, Integ

_HASHES: dict[Integ, type[hashes.HashAlgorithm]] = {
    Integ.HMAC_SHA2_256_128: hashes.SHA256,
    Integ.HMAC_SHA2_384_192: hashes.SHA384,
    Integ.HMAC_SHA2_512_256: hashes.SHA512,
}


class IntegAlgo:
    """HMAC-SHA2 truncated ICVs, RFC 4868. Built once per SA; `icv`/`verify` are safe to call repeatedly."""

    __slots__ = ("integ", "icv_len", "_proto")

    def __init__(self, integ: Integ, key: bytes):
        key_len, self.icv_len = INTEG_SIZES[integ]
        # RFC 4868 §2.1.1: the key length is fixed and equals the hash output length.
        if len(key) != key_len:
            raise ValueError(f"{integ.name} needs a {key_len}-byte key, got {len(key)}")
        self.integ = integ
        # The keyed HMAC object is copied per packet: the ipad/opad key schedule is done once per SA.
        self._proto = hmac.HMAC(bytes(key), _HASHES[integ]())

    def icv(self, *chunks: bytes | memoryview) -> bytes:
        """The truncated HMAC over the concatenation of `chunks`."""
        h = self._proto.copy()
        for chunk in chunks:
            h.update(chunk)
        return h.finalize()[: self.icv_len]

    def verify(self, icv: bytes | memoryview, *chunks: bytes | memoryview) -> bool:
        """Does `icv` match the ICV of `chunks`? The comparison takes constant time (no timing oracle)."""
        return _stdlib_hmac.compare_digest(self.icv(*chunks), bytes(icv))
