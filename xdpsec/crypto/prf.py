"""The IKEv2 pseudorandom functions and prf+, the expander every IKE and child SA key comes from.

IKEv2 negotiates a PRF (Transform Type 2) and uses it twice: keyed with Ni | Nr (or the old SK_d) to extract
SKEYSEED from the key exchange, then through prf+ (RFC 7296 §2.13) to stretch a key into as many bytes as the
SA needs. We implement the HMAC-SHA-2 PRFs of RFC 4868 §2.1.2, which RFC 8247 §2.4 makes the ones to use.

HMAC accepts keys of any length, which IKE relies on: Ni | Nr is 16 to 512 bytes. The "preferred key size"
of RFC 4868 §2.1.2 (key length = output length) is `key_len`, the length of SK_d, SK_pi and SK_pr (§2.14).
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import hashes, hmac


class PrfId(enum.IntEnum):
    """IKEv2 Transform Type 2 IDs we implement (IANA "Transform Type 2 - Pseudorandom Function Transform IDs")."""

    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


_HASHES: dict[PrfId, type[hashes.HashAlgorithm]] = {
    PrfId.HMAC_SHA2_256: hashes.SHA256,
    PrfId.HMAC_SHA2_384: hashes.SHA384,
    PrfId.HMAC_SHA2_512: hashes.SHA512,
}

#: prf+ appends a one-octet counter, so it can produce at most 255 blocks (RFC 7296 §2.13).
PRF_PLUS_MAX_BLOCKS = 255


class Prf:
    """One negotiated PRF: `prf(key, data)` and `prf.plus(key, seed, length)`. Holds no key material."""

    __slots__ = ("prf_id", "key_len", "out_len", "_hash")

    def __init__(self, prf_id: int):
        try:
            self.prf_id = PrfId(prf_id)
        except ValueError:
            raise ValueError(f"unsupported PRF transform {prf_id}") from None
        self._hash = _HASHES[self.prf_id]
        self.out_len = self._hash.digest_size
        self.key_len = self.out_len  # RFC 4868 §2.1.2

    def __repr__(self) -> str:
        return f"Prf({self.prf_id.name})"

    def __call__(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self._hash())
        h.update(data)
        return h.finalize()

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 §2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), truncated to `length`."""
        blocks = -(-length // self.out_len)
        if length < 0 or blocks > PRF_PLUS_MAX_BLOCKS:
            raise ValueError(f"prf+ cannot produce {length} bytes with {self.prf_id.name}")
        out = bytearray()
        t = b""
        for counter in range(1, blocks + 1):
            t = self(key, t + seed + bytes((counter,)))
            out += t
        return bytes(out[:length])
