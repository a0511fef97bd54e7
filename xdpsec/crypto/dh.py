"""Ephemeral key exchange for IKE_SA_INIT and CREATE_CHILD_SA (Transform Type 4): MODP, ECP, X25519, X448.

One `KeyExchange` is one ephemeral private key: `public()` is the KE payload's Key Exchange Data and
`shared(peer)` is g^ir, the input to SKEYSEED (RFC 7296 §2.14) or to child KEYMAT with PFS (§2.17). A new
object is made for every exchange, so a private key never serves two SAs (RFC 7296 §2.12 allows reuse; we
do not, which keeps forward secrecy per SA).

Encodings, all fixed-length so a short value is a peer error, not something to pad:

* MODP (RFC 3526): g^x mod p as a big-endian integer left-padded to the length of p (RFC 7296 §3.4); the
  shared secret likewise (§2.14: g^ir "represented as a string of octets in big endian order padded with
  zeros if necessary to make it the length of the modulus").
* ECP (RFC 5903 §7): x | y, each coordinate as long as the field, with no 0x04 prefix; the shared secret is
  the x coordinate only.
* X25519 / X448 (RFC 8031 §2): the 32- or 56-byte u coordinate of RFC 7748.

A peer value that is malformed or weak raises `KeyExchangeError` (the caller answers INVALID_SYNTAX or drops
the message): MODP values outside 1 < y < p-1 (RFC 7296 §5 and NIST SP 800-56A §5.6.2.3.1, which rules
out the small-subgroup values 1 and p-1), ECP points not on the curve (OpenSSL checks on load), and X25519 or
X448 values that yield the all-zero shared secret (RFC 8031 §2, RFC 7748 §6).

FFDH is deprecated in `cryptography` (it still works, through OpenSSL's constant-time code); the warning is
silenced here and only here. ML-KEM (RFC 9370 additional key exchanges) is not implemented yet.
"""

from __future__ import annotations

import contextlib
import enum
import warnings
from collections.abc import Iterator

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning


class Group(enum.IntEnum):
    """IKEv2 Transform Type 4 IDs we implement (IANA "Transform Type 4 - Key Exchange Method Transform IDs")."""

    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32


SUPPORTED_GROUPS: frozenset[int] = frozenset(Group)


class KeyExchangeError(Exception):
    """The peer's key exchange data is malformed or weak (a remote error: never our own misuse)."""


#: RFC 3526 §3-§5 primes, generator 2. Each is 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k);
#: tests/unit/test_ike_crypto.py recomputes them from that formula.
_MODP_PRIMES: dict[Group, int] = {
    Group.MODP_2048: int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16),
    Group.MODP_3072: int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF", 16),
    Group.MODP_4096: int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
        "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
        "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
        "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
        "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF", 16),
}
_MODP_GENERATOR = 2

_CURVES: dict[Group, type[ec.EllipticCurve]] = {
    Group.ECP_256: ec.SECP256R1,
    Group.ECP_384: ec.SECP384R1,
    Group.ECP_521: ec.SECP521R1,
}

_MONTGOMERY = {
    Group.CURVE25519: (x25519.X25519PrivateKey, x25519.X25519PublicKey, 32),
    Group.CURVE448: (x448.X448PrivateKey, x448.X448PublicKey, 56),
}


class KeyExchange:
    """One ephemeral key pair of one group. Build with `new_key_exchange(group)`."""

    __slots__ = ("group", "public_len", "_key")

    def __init__(self, group: Group, public_len: int, key):
        self.group = group
        self.public_len = public_len  # bytes of Key Exchange Data in the KE payload
        self._key = key

    def __repr__(self) -> str:
        return f"KeyExchange({self.group.name})"  # never the private key

    def public(self) -> bytes:
        raise NotImplementedError

    def shared(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's Key Exchange Data; `KeyExchangeError` if the value is malformed or weak."""
        if len(peer_public) != self.public_len:
            # RFC 7296 §3.4: the length is fixed by the group; anything else is INVALID_SYNTAX.
            raise KeyExchangeError(f"{self.group.name} key exchange data of {len(peer_public)} bytes, "
                                   f"expected {self.public_len}")
        return self._shared(bytes(peer_public))

    def _shared(self, peer_public: bytes) -> bytes:
        raise NotImplementedError

    @classmethod
    def _from_private(cls, group: int, private: bytes) -> KeyExchange:
        """For tests only: a key exchange with a given private value (big-endian for MODP/ECP, RFC 7748
        encoding for X25519/X448), so published vectors can be checked through `shared`."""
        group = _group(group)
        if group in _MODP_PRIMES:
            return _Modp.from_private_value(group, int.from_bytes(private, "big"))
        if group in _CURVES:
            return _Ecp(group, ec.derive_private_key(int.from_bytes(private, "big"), _CURVES[group]()))
        return _Montgomery(group, _MONTGOMERY[group][0].from_private_bytes(private))


class _Modp(KeyExchange):
    """Finite-field Diffie-Hellman over an RFC 3526 group."""

    __slots__ = ()

    def __init__(self, group: Group, key: dh.DHPrivateKey):
        super().__init__(group, _prime_len(group), key)

    @classmethod
    def generate(cls, group: Group) -> _Modp:
        with _ffdh_deprecation_silenced():
            return cls(group, _dh_parameters(group).generate_private_key())

    @classmethod
    def from_private_value(cls, group: Group, x: int) -> _Modp:
        with _ffdh_deprecation_silenced():
            numbers = _dh_parameter_numbers(group)
            public = dh.DHPublicNumbers(pow(_MODP_GENERATOR, x, numbers.p), numbers)
            return cls(group, dh.DHPrivateNumbers(x, public).private_key())

    def public(self) -> bytes:
        with _ffdh_deprecation_silenced():
            y = self._key.public_key().public_numbers().y
        return y.to_bytes(self.public_len, "big")

    def _shared(self, peer_public: bytes) -> bytes:
        y = int.from_bytes(peer_public, "big")
        p = _MODP_PRIMES[self.group]
        if not 1 < y < p - 1:
            raise KeyExchangeError(f"{self.group.name} public value outside 1 < y < p-1")
        try:
            with _ffdh_deprecation_silenced():
                peer = dh.DHPublicNumbers(y, _dh_parameter_numbers(self.group)).public_key()
                secret = self._key.exchange(peer)
        except ValueError as e:
            raise KeyExchangeError(f"{self.group.name}: {e}") from None
        return secret.rjust(self.public_len, b"\0")


class _Ecp(KeyExchange):
    """ECDH over a NIST prime curve with the RFC 5903 encoding."""

    __slots__ = ("_coord_len",)

    def __init__(self, group: Group, key: ec.EllipticCurvePrivateKey):
        self._coord_len = (key.curve.key_size + 7) // 8
        super().__init__(group, 2 * self._coord_len, key)

    def public(self) -> bytes:
        n = self._key.public_key().public_numbers()
        return n.x.to_bytes(self._coord_len, "big") + n.y.to_bytes(self._coord_len, "big")

    def _shared(self, peer_public: bytes) -> bytes:
        try:
            # The SEC 1 uncompressed form is the RFC 5903 value behind a 0x04 octet; loading it checks that
            # the point is on the curve and not the point at infinity.
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._key.curve, b"\x04" + peer_public)
            secret = self._key.exchange(ec.ECDH(), peer)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise KeyExchangeError(f"{self.group.name}: {e}") from None
        return secret.rjust(self._coord_len, b"\0")


class _Montgomery(KeyExchange):
    """X25519 / X448 (RFC 7748, RFC 8031)."""

    __slots__ = ()

    def __init__(self, group: Group, key):
        super().__init__(group, _MONTGOMERY[group][2], key)

    def public(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def _shared(self, peer_public: bytes) -> bytes:
        peer = _MONTGOMERY[self.group][1].from_public_bytes(peer_public)
        try:
            secret = self._key.exchange(peer)
        except ValueError:
            # OpenSSL refuses the all-zero result of a low-order point itself (RFC 7748 §6.1).
            raise KeyExchangeError(f"{self.group.name}: peer value gives the all-zero shared secret") from None
        if not any(secret):
            raise KeyExchangeError(f"{self.group.name}: peer value gives the all-zero shared secret")
        return secret


def new_key_exchange(group: int) -> KeyExchange:
    """A fresh ephemeral key pair for `group` (an IKEv2 Transform Type 4 ID)."""
    group = _group(group)
    if group in _MODP_PRIMES:
        return _Modp.generate(group)
    if group in _CURVES:
        return _Ecp(group, ec.generate_private_key(_CURVES[group]()))
    return _Montgomery(group, _MONTGOMERY[group][0].generate())


def _group(group: int) -> Group:
    try:
        return Group(group)
    except ValueError:
        raise ValueError(f"unsupported key exchange method {group}") from None


def _prime_len(group: Group) -> int:
    return (_MODP_PRIMES[group].bit_length() + 7) // 8


def _dh_parameter_numbers(group: Group) -> dh.DHParameterNumbers:
    return dh.DHParameterNumbers(_MODP_PRIMES[group], _MODP_GENERATOR)


def _dh_parameters(group: Group) -> dh.DHParameters:
    return _dh_parameter_numbers(group).parameters()


@contextlib.contextmanager
def _ffdh_deprecation_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield
