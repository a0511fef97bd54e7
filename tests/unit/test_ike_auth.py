"""IKEv2 authentication (xdpsec/crypto/auth.py): RFC 7296 §2.15 PSK, RFC 7427/4754 signatures, chains, identities.

Keys and certificates are generated here, at test time, with `cryptography`'s builders: a P-256 root CA, an
intermediate and end entities with RSA-2048, P-256, P-384, P-521, Ed25519 and Ed448 keys. The reference values
(RFC 7427 AlgorithmIdentifiers, the RFC 4754 §8.1 vector, the §2.15 PSK formula) are written out independently
of the module under test.
"""

import functools
import hashlib
import hmac
import ipaddress
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.crypto.auth import (
    KEY_PAD,
    AuthError,
    AuthFailure,
    AuthMethodId,
    IdType,
    Signer,
    TrustStore,
    identity_matches,
    parse_identity,
    psk_auth,
    psk_verify,
    signed_octets,
    verify_signature,
)
from xdpsec.ike.conf import Identity

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
OCTETS = b"IKE_SA_INIT message | Nr | prf(SK_pi, IDi')"
DIGITAL_SIGNATURE = 14


# --- a test PKI ------------------------------------------------------------------------------------------------

@functools.cache
def key(kind: str):
    """One private key per kind, generated once per test session (RSA generation is slow)."""
    return {
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
        "rsa1024": lambda: rsa.generate_private_key(65537, 1024),
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "ed448": ed448.Ed448PrivateKey.generate,
        "ca": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ca2": lambda: ec.generate_private_key(ec.SECP256R1()),
        "int": lambda: ec.generate_private_key(ec.SECP256R1()),
    }[kind]()


def name(text: str) -> x509.Name:
    return x509.Name.from_rfc4514_string(text)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem_key(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def spki(private_key) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def key_usage(**flags: bool) -> x509.KeyUsage:
    fields = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
              "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{f: flags.get(f, False) for f in fields})


def make_cert(subject: x509.Name, subject_key, issuer: x509.Name, issuer_key, *, ca: bool | None,
              not_before=NOW - DAY, not_after=NOW + 365 * DAY, san=(), ku=None, ski=False) -> bytes:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if ku is not None:
        builder = builder.add_extension(ku, critical=True)
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()),
                                        critical=False)
    eddsa = isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return der(builder.sign(issuer_key, None if eddsa else hashes.SHA256()))


CA_NAME, INT_NAME = name("CN=Test Root CA,O=xdpsec"), name("CN=Test Intermediate,O=xdpsec")
CA_KU = key_usage(key_cert_sign=True, crl_sign=True)


@functools.cache
def ca_cert() -> bytes:
    return make_cert(CA_NAME, key("ca"), CA_NAME, key("ca"), ca=True, ku=CA_KU)


@functools.cache
def int_cert() -> bytes:
    return make_cert(INT_NAME, key("int"), CA_NAME, key("ca"), ca=True, ku=CA_KU)


def ee_cert(kind: str = "p256", subject: str = "CN=gw.example.org,O=xdpsec", **kw) -> bytes:
    kw.setdefault("san", (x509.DNSName("gw.example.org"), x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.RFC822Name("gw@example.org")))
    return make_cert(name(subject), key(kind), INT_NAME, key("int"), ca=False, **kw)


# --- RFC 7296 §2.15: signed octets and PSK ---------------------------------------------------------------------

@pytest.mark.parametrize("prf_id, digest", [(5, hashlib.sha256), (6, hashlib.sha384), (7, hashlib.sha512)])
def test_psk_auth_is_the_section_2_15_formula(prf_id, digest):
    psk, sk_p = b"correct horse battery staple", bytes(range(32))
    id_body = bytes([IdType.FQDN, 0, 0, 0]) + b"gw.example.org"
    octets = signed_octets(b"<IKE_SA_INIT>", b"<Nr>", prf_id, sk_p, id_body)
    # §2.15: InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI, MACedIDForI = prf(SK_pi, IDi').
    assert octets == b"<IKE_SA_INIT><Nr>" + hmac.new(sk_p, id_body, digest).digest()
    # AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <InitiatorSignedOctets>)
    inner = hmac.new(psk, b"Key Pad for IKEv2", digest).digest()
    expected = hmac.new(inner, octets, digest).digest()
    assert KEY_PAD == b"Key Pad for IKEv2"
    assert psk_auth(prf_id, psk, octets) == expected
    assert psk_verify(prf_id, psk, octets, expected)
    assert not psk_verify(prf_id, psk + b"x", octets, expected)
    assert not psk_verify(prf_id, psk, octets + b"x", expected)
    assert not psk_verify(prf_id, psk, octets, expected[:-1])


def test_unknown_prf_is_a_caller_bug():
    with pytest.raises(ValueError):
        psk_auth(2, b"k", b"x")  # PRF_HMAC_SHA1: not offered by xdpsec (RFC 8247 demotes it)


# --- RFC 7427 AlgorithmIdentifiers -----------------------------------------------------------------------------

# RFC 7427 appendix A, transcribed: A.1.2-A.1.4 sha{256,384,512}WithRSAEncryption (parameters NULL),
# A.3.2-A.3.4 ecdsa-with-sha{256,384,512} (no parameters), A.4.3 RSASSA-PSS with SHA-256 (MGF1-SHA-256, salt 32).
# The PSS SHA-384/512 encodings follow the same pattern; they are the bytes the Mozilla root store policy §5.1.1
# prescribes. Ed25519 / Ed448: RFC 8420 §2 with the RFC 8410 §3 identifiers id-Ed25519 / id-Ed448.
RFC7427_ALG_IDS = {
    ("rsa", 2): "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00",
    ("rsa", 3): "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0c 05 00",
    ("rsa", 4): "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0d 05 00",
    ("p256", 2): "30 0a 06 08 2a 86 48 ce 3d 04 03 02",
    ("p256", 3): "30 0a 06 08 2a 86 48 ce 3d 04 03 03",
    ("p256", 4): "30 0a 06 08 2a 86 48 ce 3d 04 03 04",
    ("rsa-pss", 2): "30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 01"
                    " 05 00 a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02"
                    " 01 05 00 a2 03 02 01 20",
    ("rsa-pss", 3): "30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 02"
                    " 05 00 a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02"
                    " 02 05 00 a2 03 02 01 30",
    ("rsa-pss", 4): "30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 03"
                    " 05 00 a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02"
                    " 03 05 00 a2 03 02 01 40",
    ("ed25519", 5): "30 05 06 03 2b 65 70",
    ("ed448", 5): "30 05 06 03 2b 65 71",
}
SHA1_WITH_RSA = bytes.fromhex("300d06092a864886f70d0101050500")      # RFC 7427 A.1.1
ECDSA_WITH_SHA1 = bytes.fromhex("300906072a8648ce3d0401")            # RFC 7427 A.3.1
PSS_DEFAULT_PARAMS = bytes.fromhex("300d06092a864886f70d01010a3000")  # RFC 7427 A.4: SHA-1 defaults


def signer(kind: str, certs=()) -> Signer:
    base = "rsa" if kind == "rsa-pss" else kind
    return Signer(pem_key(key(base)), certs, rsa_pss=kind == "rsa-pss")


@pytest.mark.parametrize("kind, hash_id", sorted(RFC7427_ALG_IDS))
def test_signer_sends_the_rfc7427_algorithm_identifier(kind, hash_id):
    method, data = signer(kind).sign(OCTETS, {hash_id})
    alg_id = bytes.fromhex(RFC7427_ALG_IDS[kind, hash_id])
    assert method == DIGITAL_SIGNATURE
    assert data[0] == len(alg_id) and data[1:1 + len(alg_id)] == alg_id
    base = "rsa" if kind == "rsa-pss" else kind
    assert verify_signature(spki(key(base)), method, data, OCTETS)


def independent_verify(kind: str, hash_id: int, signature: bytes) -> None:
    """Check the signature bytes with cryptography directly (raises InvalidSignature)."""
    h = {2: hashes.SHA256(), 3: hashes.SHA384(), 4: hashes.SHA512()}.get(hash_id)
    pub = key("rsa" if kind == "rsa-pss" else kind).public_key()
    if kind == "rsa":
        pub.verify(signature, OCTETS, padding.PKCS1v15(), h)
    elif kind == "rsa-pss":
        pub.verify(signature, OCTETS, padding.PSS(padding.MGF1(h), h.digest_size), h)
    elif kind.startswith("p"):
        pub.verify(signature, OCTETS, ec.ECDSA(h))
    else:
        pub.verify(signature, OCTETS)


@pytest.mark.parametrize("kind", ["rsa", "rsa-pss", "p256", "p384", "p521", "ed25519", "ed448"])
@pytest.mark.parametrize("peer_hashes, chosen", [({2, 3, 4, 5}, 4), ({2, 3, 5}, 3), ({2, 5}, 2)])
def test_rfc7427_round_trip_picks_the_strongest_common_hash(kind, peer_hashes, chosen):
    expected_hash = 5 if kind.startswith("ed") else chosen
    method, data = signer(kind).sign(OCTETS, peer_hashes)
    alg_id = data[1:1 + data[0]]
    if (kind, expected_hash) in RFC7427_ALG_IDS:
        assert alg_id == bytes.fromhex(RFC7427_ALG_IDS[kind, expected_hash])
    independent_verify(kind, expected_hash, data[1 + data[0]:])
    base = "rsa" if kind == "rsa-pss" else kind
    assert verify_signature(spki(key(base)), method, data, OCTETS)
    assert not verify_signature(spki(key(base)), method, data, OCTETS + b"!")
    other = "p256" if base != "p256" else "p384"
    assert not verify_signature(spki(key(other)), method, data, OCTETS)


def test_verify_takes_a_certificate_as_well_as_a_public_key():
    cert = ee_cert("ed25519")
    method, data = Signer(pem_key(key("ed25519")), [cert, int_cert()]).sign(OCTETS, {5})
    assert verify_signature(cert, method, data, OCTETS)
    assert not verify_signature(ee_cert("p256"), method, data, OCTETS)


def test_pkcs1_identifier_without_null_parameters_is_accepted():
    # RFC 4055 §5: the parameters MUST be NULL but implementations MUST accept them absent.
    sig = key("rsa").sign(OCTETS, padding.PKCS1v15(), hashes.SHA256())
    alg_id = bytes.fromhex("300b06092a864886f70d01010b")
    assert verify_signature(spki(key("rsa")), DIGITAL_SIGNATURE, bytes([len(alg_id)]) + alg_id + sig, OCTETS)


@pytest.mark.parametrize("alg_id, make_sig", [
    (SHA1_WITH_RSA, lambda: key("rsa").sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())),
    (PSS_DEFAULT_PARAMS, lambda: key("rsa").sign(OCTETS, padding.PSS(padding.MGF1(hashes.SHA1()), 20),
                                                  hashes.SHA1())),
    (ECDSA_WITH_SHA1, lambda: key("p256").sign(OCTETS, ec.ECDSA(hashes.SHA1()))),
], ids=["sha1WithRSAEncryption", "rsassa-pss-sha1-defaults", "ecdsa-with-sha1"])
def test_sha1_signatures_are_refused(alg_id, make_sig):
    # RFC 8247 §3.3: SHA-1 MUST NOT be used for digital signatures; these are valid SHA-1 signatures.
    base = "p256" if alg_id == ECDSA_WITH_SHA1 else "rsa"
    data = bytes([len(alg_id)]) + alg_id + make_sig()
    assert not verify_signature(spki(key(base)), DIGITAL_SIGNATURE, data, OCTETS)


def test_rsa_sig_method_1_is_refused_both_ways():
    # RSA_SIG has no hash agility and means SHA-1 in practice (RFC 7427 §1): no classic RSA.
    with pytest.raises(AuthError) as err:
        signer("rsa").sign(OCTETS, ())
    assert err.value.reason is AuthFailure.NO_CLASSIC_METHOD
    sha1_sig = key("rsa").sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    assert not verify_signature(spki(key("rsa")), AuthMethodId.RSA_SIG, sha1_sig, OCTETS)


@pytest.mark.parametrize("kind, peer_hashes", [("ed25519", ()), ("ed25519", {2, 3, 4}), ("p256", {1}),
                                               ("rsa", {1, 5})])
def test_no_common_method_is_an_auth_error(kind, peer_hashes):
    with pytest.raises(AuthError) as err:
        signer(kind).sign(OCTETS, peer_hashes)
    assert err.value.reason in (AuthFailure.NO_CLASSIC_METHOD, AuthFailure.NO_COMMON_HASH)


def test_we_announce_sha2_and_identity_whatever_our_key():
    assert signer("rsa").hash_algorithms() == (2, 3, 4, 5)
    assert signer("ed25519").hash_algorithms() == (2, 3, 4, 5)


def test_short_rsa_keys_are_refused():
    with pytest.raises(ValueError, match="2048"):
        Signer(pem_key(key("rsa1024")))
    sig = key("rsa1024").sign(OCTETS, padding.PKCS1v15(), hashes.SHA256())
    alg_id = bytes.fromhex(RFC7427_ALG_IDS["rsa", 2])
    assert not verify_signature(spki(key("rsa1024")), DIGITAL_SIGNATURE, bytes([len(alg_id)]) + alg_id + sig,
                                OCTETS)


def test_signer_loads_der_and_checks_the_certificate_belongs_to_the_key():
    der_key = key("p384").private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    cert = ee_cert("p384")
    s = Signer(der_key, [cert, int_cert()])
    assert s.cert_der == cert and s.chain_der == (int_cert(),)
    assert s.subject_der == name("CN=gw.example.org,O=xdpsec").public_bytes()
    with pytest.raises(ValueError, match="not for this private key"):
        Signer(der_key, [ee_cert("p256")])
    with pytest.raises(ValueError, match="private key"):
        Signer(b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")


# --- RFC 4754: classic ECDSA methods ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, method, half", [("p256", 9, 32), ("p384", 10, 48), ("p521", 11, 66)])
def test_classic_ecdsa_is_raw_r_s(kind, method, half):
    got_method, data = signer(kind).sign(OCTETS, ())
    assert got_method == method and len(data) == 2 * half  # RFC 4754 §7: r | s, fixed width
    h = {9: hashes.SHA256(), 10: hashes.SHA384(), 11: hashes.SHA512()}[method]
    r, s = int.from_bytes(data[:half], "big"), int.from_bytes(data[half:], "big")
    key(kind).public_key().verify(encode_dss_signature(r, s), OCTETS, ec.ECDSA(h))
    assert verify_signature(spki(key(kind)), method, data, OCTETS)
    assert not verify_signature(spki(key(kind)), method, data[:-1], OCTETS)
    wrong_method = 10 if method == 9 else 9  # the method fixes the curve (RFC 4754 §4)
    assert not verify_signature(spki(key(kind)), wrong_method, data, OCTETS)


# RFC 4754 §8.1 (ECDSA-256): private key w, public key gw = (gwx, gwy), message "abc", signature (r, s).
RFC4754_W = 0xDC51D3866A15BACDE33D96F992FCA99DA7E6EF0934E7097559C27F1614C88A7F
RFC4754_GWX = 0x2442A5CC0ECD015FA3CA31DC8E2BBC70BF42D60CBCA20085E0822CB04235E970
RFC4754_GWY = 0x6FC98BD7E50211A4A27102FA3549DF79EBCB4BF246B80945CDDFE7D509BBFD7D
RFC4754_R = 0xCB28E0999B9C7715FD0A80D8E47A77079716CBBF917DD72E97566EA1C066957C
RFC4754_S = 0x86FA3BB4E26CAD5BF90B7F81899256CE7594BB1EA0C89212748BFF3B3D5B0315


def test_rfc4754_section_8_1_vector():
    public = ec.EllipticCurvePublicNumbers(RFC4754_GWX, RFC4754_GWY, ec.SECP256R1()).public_key()
    assert ec.derive_private_key(RFC4754_W, ec.SECP256R1()).public_key() == public  # transcription check
    spki_der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    sig = RFC4754_R.to_bytes(32, "big") + RFC4754_S.to_bytes(32, "big")
    assert verify_signature(spki_der, AuthMethodId.ECDSA_SHA256_P256, sig, b"abc")
    assert not verify_signature(spki_der, AuthMethodId.ECDSA_SHA256_P256, sig, b"abd")
    assert not verify_signature(spki_der, AuthMethodId.ECDSA_SHA256_P256, sig[:-1] + b"\x14", b"abc")


# --- hostile AUTH data -----------------------------------------------------------------------------------------

KEY_BLOBS = [spki(key(k)) for k in ("rsa", "p256", "p384", "p521", "ed25519", "ed448")] + [b"", b"\x30\x00"]
ALG_ID_PREFIXES = [b""] + [bytes([len(a)]) + a for a in map(bytes.fromhex, RFC7427_ALG_IDS.values())]


@settings(max_examples=300, deadline=None)
@given(blob=st.sampled_from(KEY_BLOBS) | st.binary(max_size=80),
       method=st.sampled_from([1, 2, 9, 10, 11, 14]) | st.integers(0, 255),
       prefix=st.sampled_from(ALG_ID_PREFIXES), data=st.binary(max_size=600), octets=st.binary(max_size=64))
def test_verify_signature_never_raises(blob, method, prefix, data, octets):
    assert verify_signature(blob, method, prefix + data, octets) is False


# --- chains ----------------------------------------------------------------------------------------------------

@pytest.fixture
def store() -> TrustStore:
    return TrustStore([ca_cert()])


def test_good_chain(store):
    leaf = ee_cert("rsa")
    info = store.validate(leaf, [int_cert()], NOW)
    assert info.chain_der == (leaf, int_cert(), ca_cert())
    assert info.subject_der == name("CN=gw.example.org,O=xdpsec").public_bytes()
    assert "CN=gw.example.org" in info.subject
    # A naive time is UTC, and an irrelevant extra certificate does not hurt.
    store.validate(leaf, [ee_cert("p384"), int_cert()], NOW.replace(tzinfo=None))


def rejected(store: TrustStore, leaf: bytes, intermediates, now=NOW) -> AuthError:
    with pytest.raises(AuthError) as err:
        store.validate(leaf, intermediates, now)
    return err.value


def test_chain_failures_name_their_reason(store):
    def intermediate(**kw) -> bytes:
        kw.setdefault("ca", True)
        return make_cert(INT_NAME, key("int"), CA_NAME, key("ca"), **kw)

    evil_ca = name("CN=Evil CA")
    same_name_other_key = make_cert(INT_NAME, key("int"), CA_NAME, key("ca2"), ca=True)
    self_signed = make_cert(name("CN=gw.example.org"), key("p256"), name("CN=gw.example.org"), key("p256"),
                            ca=False)
    cases = [
        ("expired", ee_cert(not_after=NOW - DAY, not_before=NOW - 9 * DAY), [int_cert()], AuthFailure.EXPIRED),
        ("not yet valid", ee_cert(not_before=NOW + DAY), [int_cert()], AuthFailure.NOT_YET_VALID),
        ("expired intermediate", ee_cert(), [intermediate(not_before=NOW - 9 * DAY, not_after=NOW - DAY)],
         AuthFailure.EXPIRED),
        ("wrong CA", make_cert(name("CN=gw"), key("p256"), evil_ca, key("ca2"), ca=False), [],
         AuthFailure.UNKNOWN_ISSUER),
        ("missing intermediate", ee_cert(), [], AuthFailure.UNKNOWN_ISSUER),
        ("impostor CA of the same name", ee_cert(), [same_name_other_key], AuthFailure.BAD_CHAIN_SIGNATURE),
        ("CA without basicConstraints", ee_cert(), [intermediate(ca=None)], AuthFailure.ISSUER_NOT_CA),
        ("CA with cA=FALSE", ee_cert(), [intermediate(ca=False)], AuthFailure.ISSUER_NOT_CA),
        ("self-signed end entity", self_signed, [], AuthFailure.SELF_SIGNED),
        ("end entity may not sign", ee_cert(ku=key_usage(key_encipherment=True)), [int_cert()],
         AuthFailure.KEY_USAGE),
        ("issuer may not sign certificates", ee_cert(), [intermediate(ku=key_usage(digital_signature=True))],
         AuthFailure.UNTRUSTED),
        ("garbage", b"\x30\x03\x02\x01\x00", [int_cert()], AuthFailure.MALFORMED_CERT),
        ("garbage intermediate", ee_cert(), [b"junk"], AuthFailure.MALFORMED_CERT),
        ("too many", ee_cert(), [int_cert()] * 16, AuthFailure.TOO_MANY_CERTS),
    ]
    for label, leaf, intermediates, reason in cases:
        assert rejected(store, leaf, intermediates).reason is reason, label


def test_expired_message_names_the_certificate(store):
    err = rejected(store, ee_cert(), [int_cert()], now=NOW + 400 * DAY)
    assert err.reason is AuthFailure.EXPIRED and "gw.example.org" in str(err)
    assert "Test Intermediate" in str(rejected(store, ee_cert(), []))


def test_a_configured_self_signed_peer_certificate_is_trusted():
    pinned = make_cert(name("CN=peer"), key("p256"), name("CN=peer"), key("p256"), ca=True)
    assert TrustStore([pinned]).validate(pinned, [], NOW).chain_der == (pinned,)


@pytest.mark.parametrize("kind", ["ed25519", "ed448", "p521", "rsa"])
def test_end_entity_key_types(store, kind):
    assert store.validate(ee_cert(kind), [int_cert()], NOW).chain_der[-1] == ca_cert()


def test_eddsa_signed_chains_are_a_known_limit():
    # cryptography's verifier allows only RSA/ECDSA signatures on certificates (WebPKI algorithm allowlist).
    ed_ca = make_cert(CA_NAME, key("ed25519"), CA_NAME, key("ed25519"), ca=True)
    leaf = make_cert(name("CN=gw"), key("p256"), CA_NAME, key("ed25519"), ca=False)
    assert rejected(TrustStore([ed_ca]), leaf, []).reason is AuthFailure.UNTRUSTED


def test_certreq_hashes_are_sha1_of_the_ca_spki():
    two = TrustStore([ca_cert(), int_cert()])
    expected = hashlib.sha1(spki(key("ca"))).digest() + hashlib.sha1(spki(key("int"))).digest()
    assert two.certreq_hashes() == expected and len(expected) == 40


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_certreq_hash_matches_openssl():
    # Independent extraction of SubjectPublicKeyInfo from the certificate by the openssl CLI.
    pem = x509.load_der_x509_certificate(ca_cert()).public_bytes(serialization.Encoding.PEM)
    pub_pem = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=pem, capture_output=True,
                             check=True, timeout=10).stdout
    pub_der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub_pem,
                             capture_output=True, check=True, timeout=10).stdout
    assert TrustStore([ca_cert()]).certreq_hashes() == hashlib.sha1(pub_der).digest()


def test_trust_store_needs_valid_cas():
    with pytest.raises(ValueError):
        TrustStore([])
    with pytest.raises(ValueError):
        TrustStore([b"not a certificate"])


# --- identities ------------------------------------------------------------------------------------------------

def dn(text: str) -> bytes:
    return name(text).public_bytes()


@pytest.mark.parametrize("text, id_type, data", [
    ("192.0.2.1", 1, bytes([192, 0, 2, 1])),
    ("2001:db8::1", 5, bytes.fromhex("20010db8000000000000000000000001")),
    ("gw.example.org", 2, b"gw.example.org"),
    ("user@example.org", 3, b"user@example.org"),
    ("@gw", 2, b"gw"),
    ("@192.0.2.1", 2, b"192.0.2.1"),
    ("@#0a0b", 11, b"\x0a\x0b"),
    ("CN=gw, O=Example", 9, dn("CN=gw,O=Example")),
    ("CN=gw,O=Example", 9, dn("CN=gw,O=Example")),
    ("CN=a\\, b, O=Example", 9, dn("CN=a\\, b,O=Example")),
    ("E=gw@example.org, CN=gw", 9, x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "gw@example.org")]).public_bytes()),
])
def test_parse_identity(text, id_type, data):
    assert parse_identity(text) == (id_type, data)


def test_rfc4514_dn_text_puts_the_last_rdn_first_in_der():
    # RFC 4514 §2.1: the string starts with the last element of the RDNSequence.
    der = parse_identity("CN=gw, O=Example, C=CH")[1]
    assert der == x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "gw")]).public_bytes()


@pytest.mark.parametrize("text", ["", "  ", "@#zz", "XX=gw", "gw\u00e9.example.org"])
def test_parse_identity_refuses(text):
    with pytest.raises(ValueError):
        parse_identity(text)


def ident(text: str) -> Identity:
    id_type, data = parse_identity(text)
    return Identity(id_type, data, text)


IP = ipaddress.ip_address
SUBJECT = "CN=gw.example.org,O=xdpsec"


@functools.cache
def id_cert() -> bytes:
    san = (x509.DNSName("gw.example.org"), x509.IPAddress(IP("192.0.2.1")), x509.IPAddress(IP("2001:db8::1")),
           x509.RFC822Name("gw@example.org"))
    return ee_cert(subject=SUBJECT, san=san, ski=True)


def ski() -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(key("p256").public_key()).digest


@pytest.mark.parametrize("peer, expected, with_cert, ok", [
    # FQDN: equal to the configuration (case-insensitively) and in the certificate's dNSNames.
    (ident("gw.example.org"), ident("gw.example.org"), True, True),
    (ident("GW.Example.ORG"), ident("gw.example.org"), True, True),
    (ident("other.example.org"), ident("other.example.org"), True, False),    # SAN mismatch
    (ident("other.example.org"), None, True, False),                          # any, but not confirmed by cert
    (ident("other.example.org"), None, False, True),                          # PSK: anything goes
    (ident("gw.example.org"), ident("other.example.org"), False, False),
    # Addresses: iPAddress entries.
    (ident("192.0.2.1"), ident("192.0.2.1"), True, True),
    (ident("192.0.2.2"), None, True, False),
    (ident("2001:db8::1"), ident("2001:db8::1"), True, True),
    (ident("2001:db8::1"), ident("192.0.2.1"), True, False),                  # type differs
    (ident("gw.example.org"), ident("192.0.2.1"), True, False),
    # RFC822: rfc822Name entries.
    (ident("gw@example.org"), ident("gw@example.org"), True, True),
    (ident("ceo@example.org"), None, True, False),
    # DN: the ID is the subject byte for byte; the configuration matches in any spelling.
    (Identity(9, dn(SUBJECT)), ident("CN=gw.example.org, O=xdpsec"), True, True),
    (Identity(9, dn(SUBJECT)), ident("cn=GW.example.org,   o=XDPSEC"), True, True),
    (Identity(9, dn(SUBJECT)), ident("O=xdpsec, CN=gw.example.org"), True, True),  # strongSwan order
    (Identity(9, dn(SUBJECT)), ident("CN=gw.example.org, O=other"), True, False),
    (Identity(9, dn("CN=gw.example.org,O=other")), None, True, False),       # not the cert's subject
    (Identity(9, dn(SUBJECT)), None, True, True),
    # KEY_ID: confirmed by the subjectKeyIdentifier.
    (Identity(11, ski()), None, True, True),
    (Identity(11, b"\x01\x02"), Identity(11, b"\x01\x02"), True, False),
    (Identity(11, b"\x01\x02"), Identity(11, b"\x01\x02"), False, True),
])
def test_identity_matches(peer, expected, with_cert, ok):
    cert = id_cert() if with_cert else None
    assert identity_matches(peer.id_type, peer.data, cert, expected) is ok


def test_dn_equal_across_string_types():
    # The same DN with PrintableString instead of UTF8String values: a different DER, the same name.
    printable = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.org", x509.name._ASN1Type.PrintableString),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xdpsec", x509.name._ASN1Type.PrintableString),
    ][::-1]).public_bytes()
    assert printable != dn(SUBJECT)
    assert identity_matches(9, printable, None, ident("CN=gw.example.org, O=xdpsec"))
    assert not identity_matches(9, printable, None, ident("CN=gw.example.org, O=xdpsec, C=CH"))


@settings(max_examples=300, deadline=None)
@given(id_type=st.sampled_from([1, 2, 3, 5, 9, 11]) | st.integers(0, 255), data=st.binary(max_size=64),
       expected=st.sampled_from([None, ident("CN=gw, O=x"), ident("gw.example.org"), ident("192.0.2.1")]),
       with_cert=st.booleans())
def test_identity_matches_never_raises(id_type, data, expected, with_cert):
    assert identity_matches(id_type, data, id_cert() if with_cert else None, expected) in (True, False)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_hostile_dn_never_matches_by_accident(data):
    # A random DER-ish blob equals the configured DN only if it parses to the same RDNs.
    assert identity_matches(9, data, None, ident("CN=gw, O=x")) is (data == dn("CN=gw,O=x") or
                                                                   data == dn("O=x,CN=gw"))


def test_dn_identity_named_by_certificate_whatever_the_string_type():
    """strongSwan sends IDi built from the configured text ("CN=gwB") with PrintableString; our certificate holds
    UTF8String. Same name, different bytes: the certificate still names the identity (RFC 5280 §7.1), as
    strongSwan itself decides. Byte equality refused strongSwan initiators with certificates."""
    from cryptography.x509.name import _ASN1Type

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gwB")])  # UTF8String by default
    k = key("p256")
    cert = make_cert(subject, k, subject, k, ca=None)
    printable = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gwB", _ASN1Type.PrintableString)])
    assert printable.public_bytes() != subject.public_bytes()
    expected = Identity(IdType.DER_ASN1_DN, subject.public_bytes(), "CN=gwB")
    assert identity_matches(IdType.DER_ASN1_DN, printable.public_bytes(), cert, expected)
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gwC", _ASN1Type.PrintableString)])
    assert not identity_matches(IdType.DER_ASN1_DN, other.public_bytes(), cert, None)
