"""IKEv2 authentication: AUTH payload data (RFC 7296 §2.15, RFC 7427), certificate chains and identities.

This is the only module that parses private keys, public keys and certificates; everything else handles them as
opaque bytes. Four jobs:

* **What is signed** (§2.15): `signed_octets()` builds RealMessage | NonceData(peer) | prf(SK_p, RestOfIDPayload).
  A PSK AUTH is prf(prf(secret, "Key Pad for IKEv2"), octets) (`psk_auth`, `psk_verify`).
* **Signatures.** `Signer` signs with our private key: RFC 7427 DIGITAL_SIGNATURE (14) when the peer announced
  SIGNATURE_HASH_ALGORITHMS, else the classic per-key methods. `verify_signature()` checks a peer's AUTH data.
  RFC 7427 AlgorithmIdentifiers are matched against a table of exact DER encodings (libreswan does the same):
  an identifier that is not in the table -- SHA-1, unusual PSS parameters, trailing garbage -- is refused, so
  there is no ASN.1 parser exposed to hostile data here.
* **Chains.** `TrustStore.validate()` leaves the acceptance decision to cryptography's RFC 5280 path builder
  (`x509.verification.PolicyBuilder(...).build_client_verifier()`): it is maintained, checks signatures, validity,
  basicConstraints, path lengths, name constraints and unknown critical extensions, which a hand-written walk
  would get subtly wrong. Its WebPKI extension profile (EKU serverAuth/clientAuth, SAN required) does not fit
  IPsec (RFC 4945 §5.1.3.12: no EKU is needed), so the policy is "permit all" plus what IKE wants: issuers must
  carry basicConstraints (and keyCertSign if they have a key usage), the end entity digitalSignature if it has a
  key usage. Its errors are strings, so when it refuses a chain we walk the chain ourselves to *name* the reason
  (`AuthFailure`): the walk explains, the library decides. Known limit: the library's algorithm allowlist refuses
  certificates *signed* with Ed25519/Ed448 (an EdDSA CA); EdDSA end-entity keys under an RSA/ECDSA CA are fine.
* **Identities.** `parse_identity()` turns strongSwan-style text into an ID payload (type, data);
  `identity_matches()` checks a peer's ID against the configuration and its certificate (RFC 4945 §3.1).

Signatures use only SHA-2 (RFC 8247 §3.3: SHA-1 MUST NOT be used for digital signatures). RSA_SIG (method 1)
has no hash negotiation and implementations sign it with SHA-1 (RFC 7427 §1), so it is refused both ways:
a peer with an RSA key must support RFC 7427.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from xdpsec.crypto.prf import Prf
from xdpsec.ike.consts import AuthMethodId, HashAlgorithm, IdType

if TYPE_CHECKING:
    from xdpsec.ike.conf import Identity

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15, no terminating NUL

MIN_RSA_BITS = 2048     # RFC 8247 §3.2: RSA keys shorter than 2048 bits are not to be used
MAX_PEER_CERTS = 16     # CERT payloads we are willing to consider for one chain (bounds the work per message)


class AuthFailure(enum.Enum):
    """Why authentication failed: AuthError.reason. The IKE task answers AUTHENTICATION_FAILED either way."""

    MALFORMED_CERT = "malformed certificate"
    TOO_MANY_CERTS = "too many certificates"
    EXPIRED = "certificate expired"
    NOT_YET_VALID = "certificate not yet valid"
    SELF_SIGNED = "self-signed end-entity certificate"
    UNKNOWN_ISSUER = "issuer neither trusted nor sent"
    BAD_CHAIN_SIGNATURE = "certificate not signed by its issuer"
    ISSUER_NOT_CA = "issuer is not a CA"
    KEY_USAGE = "key usage forbids signing"
    UNTRUSTED = "chain rejected"
    NO_COMMON_HASH = "no signature hash in common with the peer"
    NO_CLASSIC_METHOD = "key needs RFC 7427 signature authentication"


class AuthError(Exception):
    """Authentication cannot succeed: `reason` says why, the message has the details (names, algorithms)."""

    def __init__(self, reason: AuthFailure, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# --- §2.15: what is signed, and PSK authentication -------------------------------------------------------------

def _prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    return Prf(prf_id)(key, data)  # ValueError for a PRF we do not implement: a caller bug


def signed_octets(message: bytes, peer_nonce: bytes, prf_id: int, sk_p: bytes, id_body: bytes) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (§2.15).

    `message` is our whole IKE_SA_INIT message, `peer_nonce` the other side's Nonce data, `sk_p` our SK_pi/SK_pr
    (the signer's), `id_body` the ID payload without its generic header: ID type, 3 reserved bytes, ID data.
    """
    return bytes(message) + bytes(peer_nonce) + _prf(prf_id, sk_p, bytes(id_body))


def psk_auth(prf_id: int, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (§2.15)."""
    return _prf(prf_id, _prf(prf_id, psk, KEY_PAD), octets)


def psk_verify(prf_id: int, psk: bytes, octets: bytes, auth: bytes) -> bool:
    """Does the peer's AUTH data prove the shared secret? Constant-time comparison."""
    return hmac.compare_digest(psk_auth(prf_id, psk, octets), bytes(auth))


# --- signature schemes -----------------------------------------------------------------------------------------

class _Kind(enum.Enum):
    RSA = "RSA PKCS#1 v1.5"
    RSA_PSS = "RSASSA-PSS"
    ECDSA = "ECDSA"
    ED25519 = "Ed25519"
    ED448 = "Ed448"


@dataclass(frozen=True)
class _Scheme:
    kind: _Kind
    hash: HashAlgorithm


_HASHES: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_SHA2_STRONGEST_FIRST = (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256)
SUPPORTED_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY)

_H = HashAlgorithm
# The AlgorithmIdentifiers we send, exactly as RFC 7427 appendix A lists them (A.1 PKCS#1 v1.5 with NULL
# parameters, A.3 ECDSA without parameters, A.4.3-style RSASSA-PSS: MGF1 with the same hash, salt as long as the
# hash, the same bytes as the Mozilla root store policy §5.1.1); Ed25519/Ed448: RFC 8420 §2 (RFC 8410 §3 OIDs).
_SEND: dict[_Scheme, bytes] = {
    _Scheme(_Kind.RSA, _H.SHA2_256): bytes.fromhex("300d06092a864886f70d01010b0500"),
    _Scheme(_Kind.RSA, _H.SHA2_384): bytes.fromhex("300d06092a864886f70d01010c0500"),
    _Scheme(_Kind.RSA, _H.SHA2_512): bytes.fromhex("300d06092a864886f70d01010d0500"),
    _Scheme(_Kind.ECDSA, _H.SHA2_256): bytes.fromhex("300a06082a8648ce3d040302"),
    _Scheme(_Kind.ECDSA, _H.SHA2_384): bytes.fromhex("300a06082a8648ce3d040303"),
    _Scheme(_Kind.ECDSA, _H.SHA2_512): bytes.fromhex("300a06082a8648ce3d040304"),
    _Scheme(_Kind.RSA_PSS, _H.SHA2_256): bytes.fromhex(
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500"
        "a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120"),
    _Scheme(_Kind.RSA_PSS, _H.SHA2_384): bytes.fromhex(
        "304106092a864886f70d01010a3034a00f300d06096086480165030402020500"
        "a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130"),
    _Scheme(_Kind.RSA_PSS, _H.SHA2_512): bytes.fromhex(
        "304106092a864886f70d01010a3034a00f300d06096086480165030402030500"
        "a11c301a06092a864886f70d010108300d06096086480165030402030500a203020140"),
    _Scheme(_Kind.ED25519, _H.IDENTITY): bytes.fromhex("300506032b6570"),
    _Scheme(_Kind.ED448, _H.IDENTITY): bytes.fromhex("300506032b6571"),
}
# What we accept: the above, plus PKCS#1 v1.5 identifiers without the NULL parameters, which RFC 4055 §5 says
# implementations MUST accept.
_ACCEPT: dict[bytes, _Scheme] = {alg_id: scheme for scheme, alg_id in _SEND.items()}
_ACCEPT.update({
    bytes.fromhex("300b06092a864886f70d01010b"): _Scheme(_Kind.RSA, _H.SHA2_256),
    bytes.fromhex("300b06092a864886f70d01010c"): _Scheme(_Kind.RSA, _H.SHA2_384),
    bytes.fromhex("300b06092a864886f70d01010d"): _Scheme(_Kind.RSA, _H.SHA2_512),
})


@dataclass(frozen=True)
class _ClassicEcdsa:
    """RFC 4754 §4: each method fixes curve and hash; §7: the signature is r | s, each as long as the curve order."""

    curve: type[ec.EllipticCurve]
    hash: HashAlgorithm
    scalar_len: int


_CLASSIC_ECDSA: dict[AuthMethodId, _ClassicEcdsa] = {
    AuthMethodId.ECDSA_SHA256_P256: _ClassicEcdsa(ec.SECP256R1, _H.SHA2_256, 32),
    AuthMethodId.ECDSA_SHA384_P384: _ClassicEcdsa(ec.SECP384R1, _H.SHA2_384, 48),
    AuthMethodId.ECDSA_SHA512_P521: _ClassicEcdsa(ec.SECP521R1, _H.SHA2_512, 66),
}
_CLASSIC_BY_CURVE = {spec.curve.name: (method, spec) for method, spec in _CLASSIC_ECDSA.items()}

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


def _key_kind(key: _PrivateKey | _PublicKey) -> _Kind | None:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return _Kind.RSA
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _Kind.ECDSA
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return _Kind.ED25519
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return _Kind.ED448
    return None


def _spki(key: _PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pss(hash_alg: hashes.HashAlgorithm) -> padding.PSS:
    # RFC 7427 appendix A.4.3 parameters: MGF1 with the message hash, salt length = hash length.
    return padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)


def _raw_sign(key: _PrivateKey, scheme: _Scheme, octets: bytes) -> bytes:
    if scheme.kind in (_Kind.ED25519, _Kind.ED448):
        return key.sign(octets)
    hash_alg = _HASHES[scheme.hash]()
    if scheme.kind is _Kind.ECDSA:
        return key.sign(octets, ec.ECDSA(hash_alg))
    pad = _pss(hash_alg) if scheme.kind is _Kind.RSA_PSS else padding.PKCS1v15()
    return key.sign(octets, pad, hash_alg)


def _raw_verify(key: _PublicKey, scheme: _Scheme, signature: bytes, octets: bytes) -> None:
    """Raises InvalidSignature (or ValueError on nonsense) unless `signature` is valid."""
    if scheme.kind in (_Kind.ED25519, _Kind.ED448):
        key.verify(signature, octets)
        return
    hash_alg = _HASHES[scheme.hash]()
    if scheme.kind is _Kind.ECDSA:
        key.verify(signature, octets, ec.ECDSA(hash_alg))
        return
    pad = _pss(hash_alg) if scheme.kind is _Kind.RSA_PSS else padding.PKCS1v15()
    key.verify(signature, octets, pad, hash_alg)


def _key_fits(key: _PublicKey, kind: _Kind) -> bool:
    """May this public key verify a signature of this kind? (RSA keys serve PKCS#1 v1.5 and PSS.)"""
    key_kind = _key_kind(key)
    if key_kind is _Kind.RSA:
        return kind in (_Kind.RSA, _Kind.RSA_PSS) and key.key_size >= MIN_RSA_BITS
    return key_kind is kind


class Signer:
    """Our private key and certificate chain: produces AUTH payload data.

    `rsa_pss` selects RSASSA-PSS instead of PKCS#1 v1.5 for an RSA key (RFC 7427 lets the signer choose; the
    peer learns the scheme from the AlgorithmIdentifier). Configuration errors raise ValueError.
    """

    def __init__(self, private_key_pem_or_der: bytes, certs_der: Sequence[bytes] = (), rsa_pss: bool = False):
        self._key = _load_private_key(bytes(private_key_pem_or_der))
        kind = _key_kind(self._key)
        if kind is None:
            raise ValueError(f"unsupported private key type {type(self._key).__name__}")
        if kind is _Kind.RSA and self._key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {self._key.key_size} bits; at least {MIN_RSA_BITS} (RFC 8247 §3.2)")
        if rsa_pss and kind is not _Kind.RSA:
            raise ValueError("rsa_pss needs an RSA key")
        if kind is _Kind.ECDSA and self._key.curve.name not in _CLASSIC_BY_CURVE:
            raise ValueError(f"unsupported curve {self._key.curve.name}: use P-256, P-384 or P-521")
        self._kind = _Kind.RSA_PSS if rsa_pss else kind
        self.cert_der: bytes | None = bytes(certs_der[0]) if certs_der else None
        self.chain_der: tuple[bytes, ...] = tuple(bytes(c) for c in certs_der[1:])
        self.subject_der: bytes | None = None  # the certificate's subject DN, the ID to send for a DN identity
        if self.cert_der is not None:
            cert = x509.load_der_x509_certificate(self.cert_der)
            if _spki(cert.public_key()) != _spki(self._key.public_key()):
                raise ValueError(f"certificate {cert.subject.rfc4514_string()} is not for this private key")
            self.subject_der = cert.subject.public_bytes()

    def hash_algorithms(self) -> tuple[int, ...]:
        """SIGNATURE_HASH_ALGORITHMS to announce (RFC 7427 §4).

        The list tells the peer which hashes *we can verify*, so it does not depend on our own key: IDENTITY is
        announced even with an RSA key, so that a peer with an Ed25519 key can sign for us.
        """
        return tuple(int(h) for h in SUPPORTED_HASHES)

    def sign(self, octets: bytes, peer_hashes: Collection[int]) -> tuple[int, bytes]:
        """(AUTH method, AUTH data) over `octets`. Raises AuthError when no method both sides support exists."""
        if peer_hashes:
            return AuthMethodId.DIGITAL_SIGNATURE, self._sign_rfc7427(bytes(octets), frozenset(peer_hashes))
        return self._sign_classic(bytes(octets))

    def _sign_rfc7427(self, octets: bytes, peer_hashes: frozenset[int]) -> bytes:
        # RFC 7427 §3: 1-byte length of the ASN.1 AlgorithmIdentifier, the identifier, the signature.
        if self._kind in (_Kind.ED25519, _Kind.ED448):
            candidates = [_H.IDENTITY] if _H.IDENTITY in peer_hashes else []
        else:
            # §4: use a hash the peer announced; we pick the strongest both support.
            candidates = [h for h in _SHA2_STRONGEST_FIRST if h in peer_hashes]
        if not candidates:
            announced = ", ".join(str(h) for h in sorted(peer_hashes))
            raise AuthError(AuthFailure.NO_COMMON_HASH, f"{self._kind.value} key, peer announced [{announced}]")
        scheme = _Scheme(self._kind, candidates[0])
        alg_id = _SEND[scheme]
        return bytes([len(alg_id)]) + alg_id + _raw_sign(self._key, scheme, octets)

    def _sign_classic(self, octets: bytes) -> tuple[int, bytes]:
        if self._kind is not _Kind.ECDSA:
            # RSA_SIG would mean PKCS#1 v1.5 with SHA-1 (RFC 7427 §1), which RFC 8247 §3.3 forbids for
            # signatures; Ed25519/Ed448 exist only as RFC 7427 (RFC 8420). The peer must announce RFC 7427.
            raise AuthError(AuthFailure.NO_CLASSIC_METHOD,
                            f"{self._kind.value} key and the peer did not send SIGNATURE_HASH_ALGORITHMS")
        method, spec = _CLASSIC_BY_CURVE[self._key.curve.name]
        r, s = decode_dss_signature(_raw_sign(self._key, _Scheme(_Kind.ECDSA, spec.hash), octets))
        return method, r.to_bytes(spec.scalar_len, "big") + s.to_bytes(spec.scalar_len, "big")


def _load_private_key(blob: bytes) -> _PrivateKey:
    load = (serialization.load_pem_private_key if blob.lstrip().startswith(b"-----")
            else serialization.load_der_private_key)
    try:
        return load(blob, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"cannot load the private key (PEM or DER, unencrypted): {exc}") from None


def _load_cert(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(bytes(der))
    except ValueError:
        return None


def _load_public_key(blob: bytes) -> _PublicKey | None:
    """A certificate's key, or a bare SubjectPublicKeyInfo; None for anything else."""
    try:
        cert = _load_cert(blob)
        key = cert.public_key() if cert is not None else serialization.load_der_public_key(bytes(blob))
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if _key_kind(key) is not None else None


def verify_signature(public_key_or_cert_der: bytes, method: int, auth_data: bytes, octets: bytes) -> bool:
    """Is `auth_data` a valid AUTH of `method` over `octets` by this key? Never raises: hostile data is False."""
    key = _load_public_key(public_key_or_cert_der)
    if key is None:
        return False
    try:
        if method == AuthMethodId.DIGITAL_SIGNATURE:
            return _verify_rfc7427(key, bytes(auth_data), bytes(octets))
        if method in _CLASSIC_ECDSA:
            return _verify_classic_ecdsa(key, _CLASSIC_ECDSA[AuthMethodId(method)], bytes(auth_data), bytes(octets))
    except (InvalidSignature, ValueError, TypeError, OverflowError):
        return False
    # RSA_SIG (SHA-1, see the module docstring), SHARED_KEY_MIC (not a signature) and unknown methods.
    return False


def _verify_rfc7427(key: _PublicKey, data: bytes, octets: bytes) -> bool:
    # RFC 7427 §3: the length byte must leave room for the whole identifier; an unknown identifier is refused.
    if not data or len(data) < 1 + data[0]:
        return False
    scheme = _ACCEPT.get(data[1:1 + data[0]])
    if scheme is None or not _key_fits(key, scheme.kind):
        return False
    _raw_verify(key, scheme, data[1 + data[0]:], octets)
    return True


def _verify_classic_ecdsa(key: _PublicKey, spec: _ClassicEcdsa, data: bytes, octets: bytes) -> bool:
    # RFC 4754 §4: the method names the curve; a key on another curve cannot have made this signature.
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != spec.curve.name:
        return False
    if len(data) != 2 * spec.scalar_len:
        return False
    r = int.from_bytes(data[:spec.scalar_len], "big")
    s = int.from_bytes(data[spec.scalar_len:], "big")
    _raw_verify(key, _Scheme(_Kind.ECDSA, spec.hash), encode_dss_signature(r, s), octets)
    return True


# --- certificate chains ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerCertificate:
    """A validated peer certificate: what the IKE core needs afterwards (identity checks, logs)."""

    end_entity_der: bytes
    subject: str                   # RFC 4514, for logs
    subject_der: bytes
    chain_der: tuple[bytes, ...]   # end entity first, trust anchor last


def _require_key_cert_sign(_policy: object, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    # RFC 5280 §4.2.1.3: a CA key that signs certificates asserts keyCertSign when key usage is present.
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("CA key usage lacks keyCertSign")


def _require_digital_signature(_policy: object, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    # RFC 4945 §5.1.3.2: an IKE peer's key usage, when present, includes digitalSignature.
    if ku is not None and not ku.digital_signature:
        raise ValueError("key usage lacks digitalSignature")


_CA_POLICY = (verification.ExtensionPolicy.permit_all()
              .require_present(x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)
              .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _require_key_cert_sign))
_EE_POLICY = (verification.ExtensionPolicy.permit_all()
              .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _require_digital_signature))


class TrustStore:
    """The CA certificates a peer's chain must lead to (RFC 7296 §3.6, §3.7)."""

    def __init__(self, cacerts_der: Sequence[bytes]):
        if not cacerts_der:
            raise ValueError("a trust store needs at least one CA certificate")
        self._cas: list[x509.Certificate] = []
        for der in cacerts_der:
            cert = _load_cert(der)
            if cert is None:
                raise ValueError("a CA certificate is not valid DER")
            self._cas.append(cert)
        self._store = verification.Store(self._cas)

    def certreq_hashes(self) -> bytes:
        """CERTREQ Certification Authority data: SHA-1 of each CA's SubjectPublicKeyInfo (§3.7).

        SHA-1 is the protocol's fixed identifier here, not a signature, so RFC 8247 does not apply.
        """
        return b"".join(hashlib.sha1(_spki(ca.public_key()), usedforsecurity=False).digest() for ca in self._cas)

    def validate(self, end_entity_der: bytes, intermediates_der: Sequence[bytes], now: datetime) -> PeerCertificate:
        """Validate the peer's chain at `now` (naive means UTC); raises AuthError naming the first problem."""
        now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        if len(intermediates_der) >= MAX_PEER_CERTS:
            raise AuthError(AuthFailure.TOO_MANY_CERTS, f"{len(intermediates_der) + 1} certificates")
        leaf = _load_cert(end_entity_der)
        intermediates = [_load_cert(der) for der in intermediates_der]
        if leaf is None or None in intermediates:
            raise AuthError(AuthFailure.MALFORMED_CERT, "a CERT payload is not a DER X.509 certificate")
        self._check_leaf(leaf, now)
        verifier = (verification.PolicyBuilder().store(self._store).time(now)
                    .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY).build_client_verifier())
        try:
            verified = verifier.verify(leaf, intermediates)
        except verification.VerificationError as exc:
            raise self._diagnose(leaf, intermediates, now, str(exc)) from None
        return PeerCertificate(
            end_entity_der=leaf.public_bytes(serialization.Encoding.DER),
            subject=leaf.subject.rfc4514_string(),
            subject_der=leaf.subject.public_bytes(),
            chain_der=tuple(c.public_bytes(serialization.Encoding.DER) for c in verified.chain),
        )

    def _check_leaf(self, leaf: x509.Certificate, now: datetime) -> None:
        """Explicit checks on the end entity, before the library runs, for a precise reason."""
        _check_validity(leaf, now)
        try:
            ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        except ValueError as exc:
            raise AuthError(AuthFailure.MALFORMED_CERT, str(exc)) from None
        if ku is not None and not ku.digital_signature:
            raise AuthError(AuthFailure.KEY_USAGE, f"{leaf.subject.rfc4514_string()} lacks digitalSignature")
        if leaf.issuer == leaf.subject and leaf not in self._cas and _issued_by(leaf, leaf):
            raise AuthError(AuthFailure.SELF_SIGNED, f"{leaf.subject.rfc4514_string()} is not a trusted CA")

    def _diagnose(self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime,
                  library_reason: str) -> AuthError:
        """Walk up from the leaf by issuer name to say why the library refused the chain."""
        pool = intermediates + self._cas
        cert = leaf
        for _ in range(MAX_PEER_CERTS):
            if cert in self._cas:
                break
            named = [c for c in pool if c.subject == cert.issuer and c is not cert]
            if not named:
                return AuthError(AuthFailure.UNKNOWN_ISSUER, f"{cert.issuer.rfc4514_string()}, issuer of "
                                 f"{cert.subject.rfc4514_string()}, is neither a trusted CA nor sent by the peer")
            issuer = next((c for c in named if _issued_by(cert, c)), None)
            if issuer is None:
                return AuthError(AuthFailure.BAD_CHAIN_SIGNATURE, f"{cert.subject.rfc4514_string()} is not signed "
                                 f"by the key of {cert.issuer.rfc4514_string()}")
            if not _is_ca(issuer):
                return AuthError(AuthFailure.ISSUER_NOT_CA, f"{issuer.subject.rfc4514_string()} has no "
                                 "basicConstraints cA=TRUE")
            _check_validity(issuer, now)
            cert = issuer
        return AuthError(AuthFailure.UNTRUSTED, library_reason)


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise AuthError(AuthFailure.EXPIRED, f"{cert.subject.rfc4514_string()} expired {cert.not_valid_after_utc}")
    if now < cert.not_valid_before_utc:
        raise AuthError(AuthFailure.NOT_YET_VALID,
                        f"{cert.subject.rfc4514_string()} is valid from {cert.not_valid_before_utc}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


# --- identities ------------------------------------------------------------------------------------------------

# strongSwan and OpenSSL write these; cryptography's RFC 4514 parser knows only the RFC 4514 §3 short names.
_DN_ATTRIBUTE_NAMES = {"E": NameOID.EMAIL_ADDRESS, "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
                       "SN": NameOID.SURNAME, "SERIALNUMBER": NameOID.SERIAL_NUMBER, "GN": NameOID.GIVEN_NAME}


def parse_identity(text: str) -> tuple[int, bytes]:
    """strongSwan-style identity text -> (ID type, ID data). Raises ValueError on text that is none of them.

    "@#0a0b" KEY_ID, "@gw" FQDN taken literally, an IP address IPV4/IPV6_ADDR, anything with "=" a DN (RFC 4514,
    so the last RDN written is the first in the DER, as in LDAP), "user@host" RFC822_ADDR, else FQDN.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty identity")
    if text.startswith("@#"):
        try:
            return IdType.KEY_ID, bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError(f"{text!r}: @# needs hex digits") from None
    if text.startswith("@"):
        return IdType.FQDN, _ascii(text[1:], text)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return (IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR), addr.packed
    if "=" in text:
        return IdType.DER_ASN1_DN, _dn_from_text(text)
    return (IdType.RFC822_ADDR if "@" in text else IdType.FQDN), _ascii(text, text)


def _ascii(value: str, text: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{text!r}: use the ASCII (IDNA) form of names") from None


def _dn_from_text(text: str) -> bytes:
    # Users write "CN=gw, o=Example"; RFC 4514 allows no space around separators and cryptography's parser no
    # lower-case attribute names (which RFC 4512 §1.4 says are case-insensitive), so normalize those first.
    parts, current, escaped = [], "", False
    for ch in text:
        if escaped:
            current, escaped = current + ch, False
        elif ch == "\\":
            current, escaped = current + ch, True
        elif ch in ",+":
            parts.extend((_dn_component(current), ch))
            current = ""
        else:
            current += ch
    parts.append(_dn_component(current))
    try:
        return x509.Name.from_rfc4514_string("".join(parts), _DN_ATTRIBUTE_NAMES).public_bytes()
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a distinguished name (RFC 4514): {exc}") from None


def _dn_component(component: str) -> str:
    attribute, equals, value = component.partition("=")
    return attribute.strip().upper() + equals + value.strip()


def identity_matches(identity_type: int, identity_data: bytes, cert_der: bytes | None,
                     expected: Identity | None) -> bool:
    """Does the peer's ID payload satisfy the configuration and, if it authenticated with one, its certificate?

    `expected` None accepts any identity; with a certificate the ID must still be one the certificate names
    (RFC 4945 §3.1), or a peer could claim the identity of another holder of a certificate from the same CA.
    Never raises on hostile ID data.
    """
    data = bytes(identity_data)
    if expected is not None and not _same_identity(identity_type, data, expected.id_type, expected.data):
        return False
    if cert_der is None:
        return True
    cert = _load_cert(cert_der)
    return cert is not None and _cert_names(cert, identity_type, data)


def _same_identity(type_a: int, data_a: bytes, type_b: int, data_b: bytes) -> bool:
    if type_a != type_b:
        return False
    if type_a == IdType.DER_ASN1_DN:
        return _dn_equal(data_a, data_b)
    if type_a in (IdType.FQDN, IdType.RFC822_ADDR):
        return data_a.lower() == data_b.lower()  # DNS names are case-insensitive (RFC 4343)
    return data_a == data_b


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _cert_names(cert: x509.Certificate, id_type: int, data: bytes) -> bool:
    """Is the ID one the certificate vouches for? RFC 4945 §3.1: DN = subject, others = a subjectAltName."""
    if id_type == IdType.DER_ASN1_DN:
        # RFC 4945 §3.1.5: the ID is the subject. Compared by meaning, not bytes: strongSwan builds its ID from
        # the configured text with its own string types (PrintableString where a certificate may hold
        # UTF8String), as RFC 5280 §7.1 allows; byte equality refused it although the names are the same.
        return _dn_equal(data, cert.subject.public_bytes())
    if id_type == IdType.KEY_ID:
        try:
            return data == cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except (x509.ExtensionNotFound, ValueError):
            return False
    san = _san(cert)
    if san is None:
        return False
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        if len(data) != (4 if id_type == IdType.IPV4_ADDR else 16):
            return False
        return ipaddress.ip_address(data) in san.get_values_for_type(x509.IPAddress)
    if id_type in (IdType.FQDN, IdType.RFC822_ADDR):
        general_name = x509.DNSName if id_type == IdType.FQDN else x509.RFC822Name
        names = {n.lower().encode("utf-8", "replace") for n in san.get_values_for_type(general_name)}
        return data.lower() in names
    return False


# DER Name parsing, just enough to compare DNs written differently (string types, case, spaces).

_STRING_DECODERS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be",
                    0x1C: "utf-32-be"}  # UTF8, Printable, IA5, Teletex (approximated), BMP, Universal String


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`; ValueError if it overruns `end`."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag, length = buf[pos], buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 3 or pos + n > end:  # indefinite or absurd lengths are not DER
            raise ValueError("bad length")
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise ValueError("overrun")
    return tag, pos, pos + length


def _parse_dn(der: bytes) -> tuple[frozenset[tuple[bytes, str]], ...] | None:
    """Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY } -> RDNs of (OID bytes, normalized value)."""
    try:
        tag, pos, end = _tlv(der, 0, len(der))
        if tag != 0x30 or end != len(der):
            return None
        rdns = []
        while pos < end:
            tag, set_pos, set_end = _tlv(der, pos, end)
            if tag != 0x31:
                return None
            rdns.append(frozenset(_parse_rdn(der, set_pos, set_end)))
            pos = set_end
        return tuple(rdns)
    except (ValueError, UnicodeDecodeError):
        return None


def _parse_rdn(der: bytes, pos: int, end: int) -> list[tuple[bytes, str]]:
    attributes = []
    while pos < end:
        tag, seq_pos, seq_end = _tlv(der, pos, end)
        oid_tag, oid_pos, oid_end = _tlv(der, seq_pos, seq_end)
        value_tag, value_pos, value_end = _tlv(der, oid_end, seq_end)
        if tag != 0x30 or oid_tag != 0x06 or value_end != seq_end:
            raise ValueError("not an AttributeTypeAndValue")
        attributes.append((der[oid_pos:oid_end], _normalize(value_tag, der[value_pos:value_end])))
        pos = seq_end
    return attributes


def _normalize(tag: int, raw: bytes) -> str:
    # RFC 5280 §7.1: compare with case folded and insignificant spaces removed (a light RFC 4518 prep).
    encoding = _STRING_DECODERS.get(tag)
    if encoding is None:
        return f"#{tag:02x}{raw.hex()}"  # not a string type: compare the encoding exactly
    return " ".join(raw.decode(encoding).split()).casefold()


def _dn_equal(a: bytes, b: bytes) -> bool:
    """Same DN? Equal RDNs in the same order, or in reverse order: people write DNs both ways (RFC 4514 puts the
    most specific RDN first, strongSwan and OpenSSL's oneline format put it last)."""
    if a == b:
        return True
    rdns_a, rdns_b = _parse_dn(a), _parse_dn(b)
    if not rdns_a or not rdns_b:
        return False
    return rdns_a == rdns_b or rdns_a == rdns_b[::-1]
