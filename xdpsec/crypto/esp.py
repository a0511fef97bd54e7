"""The cryptographic transforms of ESP: what turns a padded ESP plaintext into ciphertext and ICV, and back.

One `EspCipher` is built per SA and kept for its life, because building the `cryptography` objects costs
microseconds per packet otherwise. It knows nothing of the ESP layout beyond what each RFC feeds into the
algorithm; the codec (xdpsec/esp/codec.py) hands it the 8-byte wire header (SPI || low 32 bits of the sequence
number), the ESN high bits (empty without ESN), the IV and the plaintext.

Two families:

* combined mode (AEAD): AES-GCM-16 (RFC 4106) and ChaCha20-Poly1305 (RFC 7634). Key material is the cipher
  key followed by a 4-byte salt; nonce = salt || 8-byte IV; AAD = SPI || seq (RFC 4106 §5), or with ESN
  SPI || seq_hi || seq_lo. The IV is the 64-bit sequence number, which is never reused under one key
  (xdpsec skips sequence numbers across restarts, it never repeats them), as RFC 4106 §3.1 requires.
* encrypt-then-MAC: AES-CBC (RFC 3602) or ENCR_NULL (RFC 2410), then HMAC-SHA-2 (RFC 4868) over
  SPI || seq || IV || ciphertext, followed by the ESN high bits when ESN is on (RFC 4303 §2.2.1,
  §3.3.2.2: the high bits are authenticated but not sent).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from xdpsec.abi import Drop, DropReason
from xdpsec.crypto.integ import IntegAlgo
from xdpsec.sa import AEAD_SALT_LEN, Encr, Transform

#: Bytes of the explicit IV carried in each packet (RFC 4106 §3.1, RFC 7634 §2, RFC 3602 §3, RFC 2410 §3).
IV_LEN = {Encr.AES_GCM_16: 8, Encr.CHACHA20_POLY1305: 8, Encr.AES_CBC: 16, Encr.NULL: 0}
#: ICV bytes of the AEAD transforms (the "-16" of AES-GCM-16; Poly1305's tag).
AEAD_ICV_LEN = 16
#: The ciphertext must end on a 4-byte boundary whatever the cipher (RFC 4303 §2.4); CBC needs whole blocks.
ESP_ALIGN = 4
AES_BLOCK = 16
#: AES key sizes RFC 3602 §2.2 and RFC 4106 §8.1 allow (192-bit keys are legal but nobody negotiates them).
AES_KEY_BITS = frozenset({128, 192, 256})


class EspCipher:
    """Per-SA cipher state: `seal` (encrypt and compute the ICV) and `open` (verify, then decrypt)."""

    __slots__ = ("encr", "iv_len", "icv_len", "block_size", "_aead", "_salt", "_cbc", "_iv_ecb", "_integ")

    def __init__(self, transform: Transform, enc_key: bytes, integ_key: bytes):
        encr = transform.encr
        if encr is None:
            raise ValueError("ESP needs an encryption transform (ENCR_NULL for integrity only)")
        if len(enc_key) != transform.enc_key_len:
            raise ValueError(f"{encr.name} needs {transform.enc_key_len} bytes of key material, got {len(enc_key)}")
        self.encr = encr
        self.iv_len = IV_LEN[encr]
        self.block_size = AES_BLOCK if encr == Encr.AES_CBC else ESP_ALIGN
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._cbc: _CbcChain | None = None
        self._iv_ecb = None
        self._integ: IntegAlgo | None = None
        if transform.is_aead:
            # RFC 4106 §8.1 / RFC 7634 §2: AEAD carries its own ICV; a separate integrity transform is an error.
            if transform.integ is not None:
                raise ValueError(f"{encr.name} is an AEAD transform and takes no integrity algorithm")
            self._init_aead(transform, bytes(enc_key))
            self.icv_len = AEAD_ICV_LEN
        else:
            # RFC 8221 §5: AUTH_NONE is for combined-mode ciphers only; CBC and NULL need an ICV.
            if transform.integ is None:
                raise ValueError(f"{encr.name} needs an integrity algorithm")
            if encr == Encr.AES_CBC:
                self._init_cbc(transform, bytes(enc_key))
            self._integ = IntegAlgo(transform.integ, integ_key)
            self.icv_len = self._integ.icv_len

    def _init_aead(self, transform: Transform, key_material: bytes) -> None:
        key, self._salt = key_material[:-AEAD_SALT_LEN], key_material[-AEAD_SALT_LEN:]
        if self.encr == Encr.AES_GCM_16:
            if transform.encr_key_bits not in AES_KEY_BITS:
                raise ValueError(f"AES-GCM key of {transform.encr_key_bits} bits")
            self._aead = AESGCM(key)
        else:
            self._aead = ChaCha20Poly1305(key)  # raises ValueError unless the key is 32 bytes

    def _init_cbc(self, transform: Transform, key: bytes) -> None:
        if transform.encr_key_bits not in AES_KEY_BITS:
            raise ValueError(f"AES-CBC key of {transform.encr_key_bits} bits")
        self._cbc = _CbcChain(algorithms.AES(key))
        # RFC 3602 §3 wants an unpredictable IV. NIST SP 800-38A appendix C gives two ways: random IVs, or the
        # forward cipher applied to a nonce. We take the second with the sequence number as the nonce (unique
        # per SA, never reused) under a second AES key drawn at random when the SA is set up and never sent:
        # the IV is unpredictable to anyone without that key, and costs one block encryption instead of a
        # getrandom() system call per packet. (Appendix C allows the data key itself; a separate key keeps IV
        # generation apart from encryption at no cost.) ECB of one block is stateless, so one long-lived
        # encryptor serves every packet.
        iv_key = os.urandom(len(key))
        self._iv_ecb = Cipher(algorithms.AES(iv_key), modes.ECB()).encryptor()

    @property
    def in_place(self) -> bool:
        """Whether `seal_in_place`/`open_in_place` work: combined-mode (AEAD) transforms only."""
        return self._aead is not None

    def seal_in_place(self, aad: bytes | memoryview, iv: bytes, buf: memoryview, start: int, length: int) -> None:
        """AEAD only: encrypt the padded plaintext `buf[start:start + length]` where it lies and write the ICV
        right after it. `aad` is what `seal` authenticates (`aad_for`).

        `encrypt_into` (cryptography >= 48) needs an output of exactly length + 16 bytes and accepts the same
        memory as input and output: GCM and ChaCha20 are stream modes, each output byte depends only on the
        input byte at the same position and bytes before it, so overwriting as it goes is safe.
        """
        self._aead.encrypt_into(self._salt + iv, buf[start:start + length], aad,
                                buf[start:start + length + AEAD_ICV_LEN])

    def open_in_place(self, aad: bytes | memoryview, iv: bytes, buf: memoryview, start: int, length: int) -> None:
        """AEAD only: verify and decrypt `buf[start:start + length]` (ciphertext || ICV) where it lies; the
        plaintext is the first length - 16 bytes. `Drop(AUTH_FAILED)` if the ICV does not verify: the bytes are
        then garbage and the caller drops the frame (nothing unverified is ever passed on)."""
        try:
            self._aead.decrypt_into(self._salt + iv, buf[start:start + length], aad,
                                    buf[start:start + length - AEAD_ICV_LEN])
        except InvalidTag:
            raise Drop(DropReason.AUTH_FAILED) from None

    def iv_for(self, seq: int) -> bytes:
        """The IV to send with sequence number `seq` (the full 64-bit counter)."""
        if self._aead is not None:
            return seq.to_bytes(8, "big")
        if self._iv_ecb is not None:
            return self._iv_ecb.update(seq.to_bytes(AES_BLOCK, "big"))
        return b""

    def seal(self, header: bytes, seq_hi: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """Ciphertext || ICV of `plaintext` (already padded to `block_size`).

        `header` is the 8 bytes SPI || seq_lo as sent; `seq_hi` the 4 ESN high bytes, or b"" without ESN.
        """
        if self._aead is not None:
            return self._aead.encrypt(self._salt + iv, plaintext, _aad(header, seq_hi))
        ciphertext = self._cbc.encrypt(iv, plaintext) if self._cbc is not None else plaintext
        return ciphertext + self._integ.icv(header, iv, ciphertext, seq_hi)

    def open(self, header: bytes | memoryview, seq_hi: bytes, iv: bytes | memoryview,
             sealed: bytes | memoryview) -> bytes:
        """Verify the ICV at the end of `sealed`, then decrypt; `Drop(AUTH_FAILED)` if it does not verify.

        The caller has checked that `sealed` holds at least the ICV and that the ciphertext is block aligned.
        """
        if self._aead is not None:
            try:
                return self._aead.decrypt(self._salt + bytes(iv), sealed, _aad(header, seq_hi))
            except InvalidTag:
                raise Drop(DropReason.AUTH_FAILED) from None
        split = len(sealed) - self.icv_len
        ciphertext, icv = sealed[:split], sealed[split:]
        # RFC 4303 §3.4.4: the ICV is checked before anything is decrypted.
        if not self._integ.verify(icv, header, iv, ciphertext, seq_hi):
            raise Drop(DropReason.AUTH_FAILED)
        if self._cbc is None:
            return bytes(ciphertext)
        return self._cbc.decrypt(iv, ciphertext)


class _CbcChain:
    """AES-CBC with a fresh IV per packet on one long-lived OpenSSL context per direction.

    Building a `Cipher` for each packet's IV costs far more than encrypting a 1500-byte packet. A CBC
    context instead carries on from the last ciphertext block `last` it produced or consumed, and CBC is
    C1 = E(P1 ^ IV): feeding P1 ^ IV ^ last as the first block makes the context compute exactly that, and
    the rest of the packet chains from C1 as usual. Decryption likewise yields D(C1) ^ last, corrected to
    D(C1) ^ IV. Inputs are whole blocks (the codec enforces it), so OpenSSL buffers nothing between packets.
    """

    __slots__ = ("_enc", "_dec", "_enc_last", "_dec_last")

    def __init__(self, aes: algorithms.AES):
        zero = bytes(AES_BLOCK)
        self._enc, self._enc_last = Cipher(aes, modes.CBC(zero)).encryptor(), zero
        self._dec, self._dec_last = Cipher(aes, modes.CBC(zero)).decryptor(), zero

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        first = _xor_block(plaintext[:AES_BLOCK], iv, self._enc_last)
        ciphertext = self._enc.update(first + plaintext[AES_BLOCK:])
        self._enc_last = ciphertext[-AES_BLOCK:]
        return ciphertext

    def decrypt(self, iv: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
        out = self._dec.update(ciphertext)
        last, self._dec_last = self._dec_last, bytes(ciphertext[-AES_BLOCK:])
        return _xor_block(out[:AES_BLOCK], iv, last) + out[AES_BLOCK:]


def _xor_block(a: bytes | memoryview, b: bytes | memoryview, c: bytes) -> bytes:
    return (int.from_bytes(a) ^ int.from_bytes(b) ^ int.from_bytes(c)).to_bytes(AES_BLOCK)


def aad_for(header: bytes | memoryview, seq_hi: bytes) -> bytes | memoryview:
    """The AAD of an AEAD transform for the 8-byte ESP header `header` (see `_aad`); the header itself,
    uncopied, without ESN."""
    return header if not seq_hi else _aad(header, seq_hi)


def _aad(header: bytes | memoryview, seq_hi: bytes) -> bytes:
    """RFC 4106 §5 / RFC 7634 §3: SPI || seq_lo, or SPI || seq_hi || seq_lo with ESN."""
    if not seq_hi:
        return bytes(header)
    return bytes(header[:4]) + seq_hi + bytes(header[4:8])
