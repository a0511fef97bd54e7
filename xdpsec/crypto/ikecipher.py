"""Protection of the IKEv2 Encrypted payload (SK, RFC 7296 §3.14): what the IKE SA's keys are used for.

One `IkeCipher` holds the keys of one direction (SK_ei/SK_ai or SK_er/SK_ar) and turns the inner payload chain
into the SK payload body IV | ciphertext | ICV, and back. The caller builds the IKE header and the SK generic
payload header (whose lengths depend on `sealed_len`) and passes them as `aad`.

The plaintext is padded as §3.14 says: payloads | padding | pad length (one octet), a multiple of the cipher's
block size; the padding bytes are ours to choose (zeros) and the receiver accepts any.

Two families, the transform IDs being those of xdpsec.sa (IKEv2 Transform Type 1 and 3):

* AEAD: AES-GCM with a 16-octet ICV (RFC 5282) and ChaCha20-Poly1305 (RFC 7634). SK_e is the key followed by a
  4-octet salt and SK_a is empty (RFC 5282 §7.1, RFC 7634 §4). Nonce = salt | 8-octet IV, AAD = the IKE header
  through the SK payload header (RFC 5282 §5.1). No block alignment is needed (RFC 5282 §3). The IV is a counter
  per `IkeCipher`, which is per key, so it never repeats under a key (RFC 5282 §3.1 / RFC 4106 §3.1).
* AES-CBC (RFC 3602) + HMAC-SHA-2 truncated (RFC 4868): a fresh unpredictable IV per message (§3.14), the ICV
  over aad | IV | ciphertext (§3.14: "the entire message starting with the Fixed IKE header through the Pad
  Length"), checked in constant time before anything is decrypted.

Any failure to open (bad length, bad ICV, impossible pad length) is one `IntegrityError`: the message is
dropped without telling an attacker which check failed (RFC 7296 §2.21.1).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from xdpsec.crypto.integ import IntegAlgo
from xdpsec.sa import AEAD_SALT_LEN, INTEG_SIZES, Encr, Integ

#: Explicit IV in each SK payload (RFC 5282 §3.1, RFC 7634 §4: 8 octets; CBC: one block, RFC 3602 §2.1).
AEAD_IV_LEN = 8
AEAD_ICV_LEN = 16
AES_BLOCK = 16
AES_KEY_BITS = frozenset({128, 192, 256})
CHACHA_KEY_BITS = 256
#: The IV counter is 64 bits; running out would mean 2^64 messages under one key.
_IV_LIMIT = 1 << 64


class IntegrityError(Exception):
    """An SK payload failed to open: wrong length, ICV mismatch or impossible padding."""


def encr_key_len(encr: int, encr_key_bits: int) -> int:
    """Bytes of SK_e for an IKE SA: the cipher key, plus the salt for AEAD ciphers."""
    encr = _encr(encr)
    if encr == Encr.CHACHA20_POLY1305:
        if encr_key_bits not in (0, CHACHA_KEY_BITS):
            raise ValueError(f"ChaCha20-Poly1305 has a 256-bit key, not {encr_key_bits}")
        return CHACHA_KEY_BITS // 8 + AEAD_SALT_LEN
    if encr_key_bits not in AES_KEY_BITS:
        raise ValueError(f"{encr.name} key of {encr_key_bits} bits")
    return encr_key_bits // 8 + (AEAD_SALT_LEN if encr == Encr.AES_GCM_16 else 0)


def integ_key_len(integ: int | None) -> int:
    """Bytes of SK_a: the HMAC key (RFC 4868 §2.1.1), none for AEAD."""
    return 0 if integ is None else INTEG_SIZES[Integ(integ)][0]


class IkeCipher:
    """Seal and open SK payload bodies of one direction of an IKE SA. Key material never appears in repr()."""

    __slots__ = ("encr", "iv_len", "icv_len", "block_size", "_aead", "_salt", "_next_iv", "_aes_key",
                 "_integ")

    def __init__(self, encr: int, encr_key_bits: int, integ: int | None, sk_e: bytes, sk_a: bytes):
        self.encr = _encr(encr)
        if len(sk_e) != encr_key_len(self.encr, encr_key_bits):
            raise ValueError(f"{self.encr.name}: SK_e of {len(sk_e)} bytes")
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._integ: IntegAlgo | None = None
        if self.encr in (Encr.AES_GCM_16, Encr.CHACHA20_POLY1305):
            # RFC 5282 §8 / RFC 7634 §4: combined-mode ciphers take no integrity transform.
            if integ is not None or sk_a:
                raise ValueError(f"{self.encr.name} is an AEAD transform and takes no integrity algorithm")
            key, self._salt = bytes(sk_e[:-AEAD_SALT_LEN]), bytes(sk_e[-AEAD_SALT_LEN:])
            self._aead = AESGCM(key) if self.encr == Encr.AES_GCM_16 else ChaCha20Poly1305(key)
            self._next_iv = 0
            self.iv_len, self.icv_len, self.block_size = AEAD_IV_LEN, AEAD_ICV_LEN, 1
        else:
            if integ is None:
                raise ValueError("AES-CBC needs an integrity algorithm")
            self._aes_key = bytes(sk_e)
            self._integ = IntegAlgo(Integ(integ), sk_a)
            self.iv_len, self.icv_len, self.block_size = AES_BLOCK, self._integ.icv_len, AES_BLOCK

    def __repr__(self) -> str:
        return f"IkeCipher({self.encr.name}, icv={self.icv_len})"

    def sealed_len(self, plaintext_len: int) -> int:
        """Length of the SK payload body for `plaintext_len` bytes of inner payloads."""
        return self.iv_len + self._padded_len(plaintext_len) + self.icv_len

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        """IV | ciphertext | ICV of the inner payload chain `plaintext`; `aad` is the IKE header and the SK
        payload header, with lengths already covering `sealed_len(len(plaintext))` bytes of body."""
        pad = self._padded_len(len(plaintext)) - len(plaintext) - 1
        padded = bytes(plaintext) + bytes(pad) + bytes((pad,))
        if self._aead is not None:
            iv = self._take_iv()
            return iv + self._aead.encrypt(self._salt + iv, padded, bytes(aad))
        iv = os.urandom(AES_BLOCK)
        encryptor = Cipher(algorithms.AES(self._aes_key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        return iv + ciphertext + self._integ.icv(aad, iv, ciphertext)

    def open(self, aad: bytes, body: bytes) -> bytes:
        """The inner payload chain of the SK payload body `body` (IV | ciphertext | ICV), padding removed."""
        body = memoryview(bytes(body))
        ciphertext_len = len(body) - self.iv_len - self.icv_len
        # At least the pad length octet, and whole blocks for CBC: anything else was not made by a peer
        # holding the key (or was cut short on the way).
        if ciphertext_len < 1 or ciphertext_len % self.block_size:
            raise IntegrityError(f"SK payload body of {len(body)} bytes")
        iv = body[: self.iv_len]
        ciphertext = body[self.iv_len : self.iv_len + ciphertext_len]
        if self._aead is not None:
            try:
                padded = self._aead.decrypt(self._salt + iv, bytes(body[self.iv_len :]), bytes(aad))
            except InvalidTag:
                raise IntegrityError("ICV mismatch") from None
        else:
            if not self._integ.verify(body[self.iv_len + ciphertext_len :], aad, iv, ciphertext):
                raise IntegrityError("ICV mismatch")
            decryptor = Cipher(algorithms.AES(self._aes_key), modes.CBC(bytes(iv))).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
        pad = padded[-1]
        if pad >= len(padded):
            # Authentic but impossible: the peer's padding claims more than the plaintext holds.
            raise IntegrityError(f"pad length {pad} in {len(padded)} bytes of plaintext")
        return padded[: len(padded) - 1 - pad]

    def _padded_len(self, plaintext_len: int) -> int:
        # Smallest multiple of the block size that holds the payloads and the pad length octet.
        return -(-(plaintext_len + 1) // self.block_size) * self.block_size

    def _take_iv(self) -> bytes:
        if self._next_iv >= _IV_LIMIT:
            raise RuntimeError("AEAD IV space exhausted: rekey the IKE SA")
        iv = self._next_iv.to_bytes(AEAD_IV_LEN, "big")
        self._next_iv += 1
        return iv


def _encr(encr: int) -> Encr:
    try:
        encr = Encr(encr)
    except ValueError:
        raise ValueError(f"unsupported IKE encryption transform {encr}") from None
    if encr == Encr.NULL:
        # IANA's Transform Type 1 registry: ENCR_NULL is "not allowed" for IKEv2; an IKE SA is always encrypted.
        raise ValueError("ENCR_NULL cannot protect an IKE SA")
    return encr
