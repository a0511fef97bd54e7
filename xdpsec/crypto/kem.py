"""Additional key exchanges (RFC 9370): ML-KEM-768/1024 and, for completeness, the classic groups of dh.py.

An additional key exchange runs in an IKE_INTERMEDIATE exchange (RFC 9242), one per ADDKE transform. Its two
roles are not symmetric for a KEM (draft-ietf-ipsecme-ikev2-mlkem §2, "ML-KEM in IKEv2"): the initiator sends
its ML-KEM encapsulation key in KEi(n), the responder encapsulates to it and returns the ciphertext in KEr(n);
both end with the same 32-octet shared secret SK(n), which RFC 9370 §2.2.2 mixes into the keys. So:

    initiator:  kex = initiate(method); KEi = kex.public(); ...; SK(n) = kex.shared(KEr)
    responder:  KEr, SK(n) = respond(method, KEi)

For a Diffie-Hellman group both roles are the usual ephemeral exchange of dh.py.

Every length is fixed by the method (FIPS 203 table 3): a KE payload of any other size is the peer's error and
raises `KeyExchangeError`, which the IKE tasks answer with INVALID_SYNTAX, never an exception of the library. The
encapsulation key also gets FIPS 203 §7.2's modulus check (done by OpenSSL when loading it); a ciphertext that
does not decapsulate gives the implicit-rejection secret (FIPS 203 §6.3), so a tampered KEr(n) shows up as an
AUTHENTICATION_FAILED in IKE_AUTH, as it must.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.asymmetric import mlkem

from xdpsec.crypto.dh import SUPPORTED_GROUPS, KeyExchange, KeyExchangeError, new_key_exchange


class Kem(enum.IntEnum):
    """IKEv2 Transform Type 4 IDs of ML-KEM (IANA "Transform Type 4 - Key Exchange Method Transform IDs",
    assigned by draft-ietf-ipsecme-ikev2-mlkem: 35 ML-KEM-512, 36 ML-KEM-768, 37 ML-KEM-1024)."""

    ML_KEM_768 = 36
    ML_KEM_1024 = 37


#: (encapsulation key octets, ciphertext octets), FIPS 203 table 3.
KEM_SIZES: dict[Kem, tuple[int, int]] = {Kem.ML_KEM_768: (1184, 1088), Kem.ML_KEM_1024: (1568, 1568)}
#: FIPS 203 §7: the shared secret of every parameter set.
SHARED_LEN = 32

_CLASSES = {
    Kem.ML_KEM_768: (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    Kem.ML_KEM_1024: (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}

#: Everything an ADDKE transform may name here: ML-KEM and the classic groups.
SUPPORTED_ADDITIONAL: frozenset[int] = frozenset(Kem) | SUPPORTED_GROUPS


class KemInitiator:
    """The initiator's half of one ML-KEM exchange: a fresh decapsulation key, used once."""

    __slots__ = ("group", "public_len", "_key")

    def __init__(self, method: Kem, key):
        self.group = method  # named like KeyExchange.group: the KE payload's Key Exchange Method
        self.public_len = KEM_SIZES[method][0]
        self._key = key

    @classmethod
    def from_seed(cls, method: Kem, seed: bytes) -> KemInitiator:
        """The key FIPS 203 ML-KEM.KeyGen_internal(d, z) (§6.1, Algorithm 16) derives from the 64-octet seed d | z.

        For known-answer tests only (tests/unit/test_kem_kat.py): IKE never calls it, `initiate` draws a fresh
        random key per exchange. `ValueError` if the seed is not 64 octets."""
        return cls(method, _CLASSES[method][0].from_seed_bytes(bytes(seed)))

    def __repr__(self) -> str:
        return f"KemInitiator({self.group.name})"  # never the seed

    def public(self) -> bytes:
        """The encapsulation key: KEi(n)'s Key Exchange Data."""
        return self._key.public_key().public_bytes_raw()

    def shared(self, ciphertext: bytes) -> bytes:
        """SK(n) from the responder's ciphertext (KEr(n)); `KeyExchangeError` if its length is wrong."""
        _check_len(self.group, "ciphertext", ciphertext, KEM_SIZES[self.group][1])
        try:
            return self._key.decapsulate(bytes(ciphertext))
        except ValueError as e:  # only a wrong length reaches here, and that was checked: belt and braces
            raise KeyExchangeError(f"{self.group.name}: {e}") from None


def initiate(method: int) -> KemInitiator | KeyExchange:
    """The initiator's side of an additional key exchange: `.public()` for KEi(n), `.shared(KEr(n))`."""
    kem = _kem(method)
    if kem is None:
        return new_key_exchange(method)
    return KemInitiator(kem, _CLASSES[kem][0].generate())


def respond(method: int, peer_public: bytes) -> tuple[bytes, bytes]:
    """The responder's side: (KEr(n) data, SK(n)) for the initiator's KEi(n) data. `KeyExchangeError` on a bad
    value: wrong length, an encapsulation key failing the modulus check, or a weak DH value."""
    kem = _kem(method)
    if kem is None:
        kex = new_key_exchange(method)
        return kex.public(), kex.shared(peer_public)
    _check_len(kem, "encapsulation key", peer_public, KEM_SIZES[kem][0])
    try:
        ek = _CLASSES[kem][1].from_public_bytes(bytes(peer_public))
    except ValueError as e:  # FIPS 203 §7.2 input check: a coefficient not reduced modulo q
        raise KeyExchangeError(f"{kem.name} encapsulation key: {e}") from None
    shared, ciphertext = ek.encapsulate()
    return ciphertext, shared


def _kem(method: int) -> Kem | None:
    if method in Kem.__members__.values():
        return Kem(method)
    if method not in SUPPORTED_GROUPS:
        raise ValueError(f"unsupported additional key exchange method {method}")
    return None


def _check_len(kem: Kem, what: str, data: bytes, want: int) -> None:
    if len(data) != want:
        # RFC 7296 §3.4 / draft-ietf-ipsecme-ikev2-mlkem §2: the length is fixed by the method.
        raise KeyExchangeError(f"{kem.name} {what} of {len(data)} octets, expected {want}")
