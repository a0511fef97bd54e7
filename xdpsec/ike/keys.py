"""The IKEv2 key schedule: SKEYSEED, the seven SK_* keys of an IKE SA, and the KEYMAT of child SAs.

RFC 7296 in four formulas (the PRF is the negotiated one, see xdpsec/crypto/prf.py):

    SKEYSEED          = prf(Ni | Nr, g^ir)                                     §2.14
    SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr
                      = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)                   §2.14
    SKEYSEED (rekey)  = prf_old(SK_d (old), g^ir (new) | Ni | Nr)              §2.18
    KEYMAT            = prf+(SK_d, [g^ir (new) |] Ni | Nr)                     §2.17

RFC 9370 §2.2.4 appends the secrets SK(1)..SK(n) of the additional key exchanges (IKE_FOLLOWUP_KE) after the
nonces, g^ir being SK(0): SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) for an IKE SA rekey and
KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) for a child (`additional` below).

The lengths of the SK_* keys are fixed by the negotiated transforms (`key_lengths`): an AEAD SK_e carries the
salt after the key and SK_a is empty (RFC 5282 §7.1); SK_d, SK_pi and SK_pr are the PRF's preferred key
length. Getting an order or a length wrong does not fail here: it fails as AUTHENTICATION_FAILED at the peer,
which is why tests/unit/test_ike_keys.py checks all of it against NIST's IKEv2 KDF vectors.

Pure: no I/O, no state. Key material is never part of repr().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xdpsec.crypto.ikecipher import encr_key_len, integ_key_len
from xdpsec.crypto.prf import Prf

#: An IKE SPI is 8 octets (RFC 7296 §3.1).
SPI_LEN = 8


@dataclass(frozen=True)
class IkeKeys:
    """The seven keys of an IKE SA, in the order prf+ produces them (RFC 7296 §2.14)."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def key_lengths(encr: int, encr_key_bits: int, integ: int | None, prf: int) -> tuple[int, int, int]:
    """(len SK_e including any salt, len SK_a, len SK_d = len SK_p) for the negotiated IKE transforms."""
    return encr_key_len(encr, encr_key_bits), integ_key_len(integ), Prf(prf).key_len


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14)."""
    return prf(ni + nr, shared)


def rekey_skeyseed(prf: Prf, sk_d_old: bytes, shared: bytes, ni: bytes, nr: bytes,
                   additional: Sequence[bytes] = ()) -> bytes:
    """SKEYSEED of a rekeyed IKE SA = prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 §2.18), followed by
    SK(1) | ... | SK(n) of its additional key exchanges (RFC 9370 §2.2.4).

    `prf` is the old IKE SA's PRF; the new SA's keys then come from `split_ike_keys` with the new SA's PRF,
    nonces and SPIs. IKE_INTERMEDIATE's SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) (§2.2.2) is this formula
    with one secret and no `additional`.
    """
    return prf(sk_d_old, shared + ni + nr + b"".join(additional))


def split_ike_keys(prf_id: int, encr: int, encr_key_bits: int, integ: int | None, skeyseed_: bytes,
                   ni: bytes, nr: bytes, spi_i: bytes | int, spi_r: bytes | int) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    prf = Prf(prf_id)
    e_len, a_len, p_len = key_lengths(encr, encr_key_bits, integ, prf_id)
    sizes = (p_len, a_len, a_len, e_len, e_len, p_len, p_len)
    stream = prf.plus(skeyseed_, ni + nr + _spi(spi_i) + _spi(spi_r), sum(sizes))
    return IkeKeys(*_split(stream, sizes))


def derive_ike_keys(prf_id: int, encr: int, encr_key_bits: int, integ: int | None, ni: bytes, nr: bytes,
                    shared: bytes, spi_i: bytes | int, spi_r: bytes | int) -> IkeKeys:
    """The keys of a new IKE SA from IKE_SA_INIT (RFC 7296 §2.14)."""
    seed = skeyseed(Prf(prf_id), ni, nr, shared)
    return split_ike_keys(prf_id, encr, encr_key_bits, integ, seed, ni, nr, spi_i, spi_r)


def child_keymat(prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, enc_len_i: int, integ_len_i: int,
                 enc_len_r: int, integ_len_r: int,
                 shared: bytes | None = None,
                 additional: Sequence[bytes] = ()) -> tuple[bytes, bytes, bytes, bytes]:
    """(encryption key i->r, integrity key i->r, encryption key r->i, integrity key r->i) of a child SA.

    KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17), `shared` given with PFS, then the secrets of
    the additional key exchanges, `additional` (RFC 9370 §2.2.4: SK(0) | Ni | Nr | SK(1) | ... | SK(n)). Keys are taken
    in that order: first both keys of the SA carrying data from initiator to responder, then the other
    direction. An AEAD "encryption key" includes its salt; Ni and Nr are those of the CREATE_CHILD_SA exchange
    (or of IKE_SA_INIT for the first child).
    """
    sizes = (enc_len_i, integ_len_i, enc_len_r, integ_len_r)
    seed = (shared or b"") + ni + nr + b"".join(additional)
    enc_i, integ_i, enc_r, integ_r = _split(Prf(prf_id).plus(sk_d, seed, sum(sizes)), sizes)
    return enc_i, integ_i, enc_r, integ_r


def _spi(spi: bytes | int) -> bytes:
    if isinstance(spi, int):
        return spi.to_bytes(SPI_LEN, "big")
    if len(spi) != SPI_LEN:
        raise ValueError(f"an IKE SPI has {SPI_LEN} bytes, not {len(spi)}")
    return bytes(spi)


def _split(stream: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        out.append(stream[at : at + size])
        at += size
    return out
