"""strongSwan proposal strings: what we accept, how it prints, and what we refuse (RFC 8221)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpsec.proposals import ProposalError, advice, format_transform, parse_ah, parse_esp
from xdpsec.sa import Encr, Integ, Transform

GCM, CBC, CHACHA, NULL = Encr.AES_GCM_16, Encr.AES_CBC, Encr.CHACHA20_POLY1305, Encr.NULL
S256, S384, S512 = Integ.HMAC_SHA2_256_128, Integ.HMAC_SHA2_384_192, Integ.HMAC_SHA2_512_256

# (proposal, transform, canonical name)
ESP_VALID = [
    ("aes128gcm16", Transform(GCM, 128), "aes128gcm16"),
    ("aes256gcm16", Transform(GCM, 256), "aes256gcm16"),
    ("aes128gcm128", Transform(GCM, 128), "aes128gcm16"),  # strongSwan alias: ICV in bits
    ("AES256GCM16-ESN", Transform(GCM, 256, esn=True), "aes256gcm16-esn"),
    ("chacha20poly1305", Transform(CHACHA, 256), "chacha20poly1305"),
    ("aes128-sha256", Transform(CBC, 128, S256), "aes128-sha256"),
    ("aes256-sha384", Transform(CBC, 256, S384), "aes256-sha384"),
    ("aes256-sha512", Transform(CBC, 256, S512), "aes256-sha512"),
    ("aes128-sha2_256-esn", Transform(CBC, 128, S256, esn=True), "aes128-sha256-esn"),
    ("aes128-sha256-noesn", Transform(CBC, 128, S256), "aes128-sha256"),
    ("null-sha256", Transform(NULL, 0, S256), "null-sha256"),
]


@pytest.mark.parametrize("text,transform,name", ESP_VALID)
def test_esp_valid(text, transform, name):
    assert parse_esp(text) == transform
    assert format_transform(transform) == name
    assert parse_esp(name) == transform


@pytest.mark.parametrize("text,transform,name", [
    ("sha256", Transform(None, integ=S256), "sha256"),
    ("sha2_384", Transform(None, integ=S384), "sha384"),
    ("sha512-esn", Transform(None, integ=S512, esn=True), "sha512-esn"),
])
def test_ah_valid(text, transform, name):
    assert parse_ah(text) == transform
    assert format_transform(transform) == name


def test_key_lengths_follow_the_rfcs():
    assert parse_esp("aes128gcm16").enc_key_len == 16 + 4  # RFC 4106 §8.1: key + 4-byte salt
    assert parse_esp("chacha20poly1305").enc_key_len == 32 + 4  # RFC 7634 §2
    assert parse_esp("aes256-sha384").integ_key_len == 48  # RFC 4868 §2.1.1
    assert parse_esp("null-sha256").enc_key_len == 0


ESP_REFUSED = [
    ("des-sha256", ["des", "DES is 'MUST NOT'", "RFC 8221 §5"]),
    ("3des-sha256", ["3des", "'SHOULD NOT'", "RFC 8221 §5", "RFC 8247"]),
    ("aes128-md5", ["md5", "'MUST NOT'", "RFC 8221 §6"]),
    ("aes128-sha1", ["sha1", "RFC 8221 §6", "use sha256"]),
    ("aes128-sha1_160", ["sha1_160", "RFC 8221 §6"]),
    ("aes128gcm8", ["8-byte ICV", "not implemented", "RFC 8221 §5", "aes128gcm16"]),
    ("aes256gcm12", ["12-byte ICV", "aes256gcm16"]),
    ("aes128gcm64", ["8-byte ICV"]),
    ("aes128ccm16", ["AES-CCM is not implemented"]),
    ("blowfish-sha256", ["Blowfish", "RFC 8221"]),
    ("twofish-sha256", ["unknown algorithm 'twofish'; valid names are encryption: aes128, ", "aes128gcm16",
                        "; integrity: sha256, ", "; ESN: esn, noesn"]),
    ("aes128gcm-sha256", ["unknown algorithm 'aes128gcm'; did you mean 'aes128gcm16'? valid names are"]),
    ("aes128-hmac_sha256", ["did you mean 'sha256'?"]),
    ("aes128gcm16-sha256", ["AEAD", "remove 'sha256'"]),
    ("aes128", ["needs an integrity algorithm", "aes128-sha256"]),
    ("null", ["needs an integrity algorithm"]),
    ("sha256", ["no encryption algorithm", "null-sha256"]),
    ("aes128-aes256-sha256", ["2 encryption algorithms", "exactly one"]),
    ("aes128-sha256-esn-noesn", ["2 ESN algorithms"]),
    ("aes128--sha256", ["empty algorithm"]),
    ("", ["empty"]),
]


@pytest.mark.parametrize("text,fragments", ESP_REFUSED)
def test_esp_refused(text, fragments):
    with pytest.raises(ProposalError) as e:
        parse_esp(text)
    for fragment in fragments:
        assert fragment in str(e.value)


@pytest.mark.parametrize("text,fragments", [
    ("md5", ["'MUST NOT'", "RFC 8221 §6"]),
    ("sha1", ["RFC 8221 §6"]),
    ("aes128gcm16", ["AH does not encrypt", "esp_proposals"]),
    ("esn", ["no integrity algorithm"]),
    ("sha256-sha384", ["2 integrity algorithms"]),
    ("whirlpool", ["unknown algorithm 'whirlpool'", "sha256, sha2_256"]),
])
def test_ah_refused(text, fragments):
    with pytest.raises(ProposalError) as e:
        parse_ah(text)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_null_encryption_is_allowed_with_a_warning():
    assert any("no confidentiality" in note for note in advice(parse_esp("null-sha512")))
    assert advice(parse_esp("aes128gcm16")) == []


_ESP_TRANSFORMS = st.one_of(
    st.builds(Transform, st.sampled_from([GCM]), st.sampled_from([128, 192, 256]), st.none(), st.booleans()),
    st.builds(Transform, st.just(CHACHA), st.just(256), st.none(), st.booleans()),
    st.builds(Transform, st.just(CBC), st.sampled_from([128, 192, 256]), st.sampled_from(list(Integ)),
              st.booleans()),
    st.builds(Transform, st.just(NULL), st.just(0), st.sampled_from(list(Integ)), st.booleans()),
)


@given(_ESP_TRANSFORMS)
def test_every_esp_transform_round_trips_through_its_name(t):
    assert parse_esp(format_transform(t)) == t


@given(st.sampled_from(list(Integ)), st.booleans())
def test_every_ah_transform_round_trips_through_its_name(integ, esn):
    t = Transform(None, integ=integ, esn=esn)
    assert parse_ah(format_transform(t)) == t


# --- IKE SA proposals (RFC 8247) --------------------------------------------------------------------------------

from xdpsec.ike.conf import ChildProposal, IkeProposal  # noqa: E402
from xdpsec.ike.consts import EncrId, IntegId, KeId, PrfId  # noqa: E402
from xdpsec.proposals import (  # noqa: E402
    MAX_PROPOSALS,
    format_child,
    format_ike,
    parse_child,
    parse_ike,
)
from xdpsec.sa import Protocol  # noqa: E402

P256, P384, P512 = PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512
A256 = IntegId.HMAC_SHA2_256_128

# (proposal, IkeProposal alternatives in order, canonical names)
IKE_VALID = [
    ("aes256gcm16-prfsha384-x25519", [IkeProposal(EncrId.AES_GCM_16, 256, None, P384, KeId.CURVE25519)],
     ["aes256gcm16-prfsha384-x25519"]),
    # strongSwan: without a PRF token the PRF follows the integrity algorithm
    ("aes128-sha256-modp3072", [IkeProposal(EncrId.AES_CBC, 128, A256, P256, KeId.MODP3072)],
     ["aes128-sha256-modp3072"]),
    ("chacha20poly1305-prfsha256-ecp256", [IkeProposal(EncrId.CHACHA20_POLY1305, 256, None, P256, KeId.ECP256)],
     ["chacha20poly1305-prfsha256-ecp256"]),
    ("aes256-sha512-prfsha384-curve448", [IkeProposal(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256, P384,
                                                      KeId.CURVE448)], ["aes256-sha512-prfsha384-x448"]),
    ("AES192GCM128-PRFSHA512-ECP521", [IkeProposal(EncrId.AES_GCM_16, 192, None, P512, KeId.ECP521)],
     ["aes192gcm16-prfsha512-ecp521"]),
    ("aes128-sha2_256-sha256-modp2048", [IkeProposal(EncrId.AES_CBC, 128, A256, P256, KeId.MODP2048)],
     ["aes128-sha256-modp2048"]),  # one algorithm under two names is not two alternatives
    ("aes128gcm16-aes256gcm16-prfsha256-x25519-modp4096", [
        IkeProposal(EncrId.AES_GCM_16, 128, None, P256, KeId.CURVE25519),
        IkeProposal(EncrId.AES_GCM_16, 128, None, P256, KeId.MODP4096),
        IkeProposal(EncrId.AES_GCM_16, 256, None, P256, KeId.CURVE25519),
        IkeProposal(EncrId.AES_GCM_16, 256, None, P256, KeId.MODP4096),
    ], ["aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-modp4096", "aes256gcm16-prfsha256-x25519",
        "aes256gcm16-prfsha256-modp4096"]),
]


@pytest.mark.parametrize("text,expected,names", IKE_VALID)
def test_ike_valid(text, expected, names):
    assert parse_ike(text) == expected
    assert [format_ike(p) for p in expected] == names


def test_ike_alternatives_expand_like_strongswan():
    got = parse_ike("aes128-aes256-sha256-sha384-modp3072-x25519")
    # 2 ciphers x 2 integrity x 2 PRFs (one per integrity algorithm) x 2 groups, first choices first
    assert len(got) == 16 and len(set(got)) == 16
    assert got[0] == IkeProposal(EncrId.AES_CBC, 128, A256, P256, KeId.MODP3072)
    assert got[-1] == IkeProposal(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192, P384, KeId.CURVE25519)
    assert {p.prf for p in got} == {P256, P384}


IKE_REFUSED = [
    ("aes128-sha256-modp1024", ["modp1024", "'SHOULD NOT'", "RFC 8247 §2.4"]),
    ("aes128-sha256-modp768", ["modp768", "'MUST NOT'", "RFC 8247 §2.4"]),
    ("aes128-sha256-modp1536", ["'SHOULD NOT'", "RFC 8247 §2.4"]),
    ("aes128-sha256-modp2048s256", ["group 24", "'SHOULD NOT'"]),
    ("des-sha256-modp2048", ["ENCR_DES is 'MUST NOT'", "RFC 8247 §2.1"]),
    ("3des-sha256-modp2048", ["ENCR_3DES", "'MAY'", "RFC 8247 §2.1", "64-bit block"]),
    ("aes128-md5-modp2048", ["AUTH_HMAC_MD5_96 is 'MUST NOT'", "RFC 8247 §2.3"]),
    ("aes128-sha256-prfmd5-modp2048", ["PRF_HMAC_MD5 is 'MUST NOT'", "RFC 8247 §2.2"]),
    ("aes128-sha1-modp2048", ["AUTH_HMAC_SHA1_96 is 'MUST-'", "RFC 8247 §2.3", "use sha256"]),
    ("aes128-sha256-prfsha1-modp2048", ["PRF_HMAC_SHA1 is 'MUST-'", "RFC 8247 §2.2", "use prfsha256"]),
    ("aes128gcm8-prfsha256-x25519", ["8-octet ICV", "RFC 8247 §2.1", "aes128gcm16"]),
    ("aes256gcm12-prfsha256-x25519", ["12-octet ICV", "aes256gcm16"]),
    ("null-sha256-x25519", ["ENCR_NULL is not allowed for IKEv2"]),
    ("aes128-sha256-x25519-ke8_mlkem768", ["ke8_mlkem768", "ke1_ to ke7_"]),
    ("aes128-sha256-mlkem768", ["ML-KEM-768", "x25519-ke1_mlkem768"]),
    ("aes128gcm16-x25519", ["AEAD cipher", "name one", "aes128gcm16-prfsha256-x25519"]),
    ("aes128gcm16-sha256-prfsha256-x25519", ["AEAD", "remove 'sha256'"]),
    ("aes128gcm16-aes128-sha256-x25519", ["mixes AEAD ciphers", "write two proposals"]),
    ("aes128-x25519", ["needs an integrity algorithm", "aes128-sha256-x25519"]),
    ("aes128-sha256", ["no key exchange method", "aes128-sha256-x25519"]),
    ("sha256-prfsha256-x25519", ["no encryption algorithm"]),
    ("aes128-sha256-x25519-esn", ["extended sequence numbers belong to ESP/AH"]),
    ("aes128-sha256-ecp192", ["unknown algorithm 'ecp192'", "x25519"]),
]


@pytest.mark.parametrize("text,fragments", IKE_REFUSED)
def test_ike_refused(text, fragments):
    with pytest.raises(ProposalError) as e:
        parse_ike(text)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_the_largest_expansion_is_counted_against_what_one_sa_payload_carries():
    text = "aes128-aes192-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512-" \
           "modp2048-modp3072-modp4096-ecp256-ecp384-ecp521-x25519-x448-curve25519"
    got = parse_ike(text)
    assert len(got) == len(set(got)) == 3 * 3 * 3 * 8  # curve25519 is x25519: 8 groups
    # The config refuses more than the wire codec will send in one SA payload.
    from xdpsec.ike import wire
    assert MAX_PROPOSALS == wire.MAX_PROPOSALS < len(got)


CHILD_VALID = [
    ("aes128gcm16-x25519", Protocol.ESP, [ChildProposal(Protocol.ESP, Transform(GCM, 128), KeId.CURVE25519)]),
    ("aes128-sha256-modp3072", Protocol.ESP, [ChildProposal(Protocol.ESP, Transform(CBC, 128, S256),
                                                            KeId.MODP3072)]),
    ("aes256gcm16-esn", Protocol.ESP, [ChildProposal(Protocol.ESP, Transform(GCM, 256, esn=True))]),
    ("aes128gcm16-esn-noesn", Protocol.ESP, [ChildProposal(Protocol.ESP, Transform(GCM, 128, esn=True)),
                                             ChildProposal(Protocol.ESP, Transform(GCM, 128))]),
    ("aes128gcm16-chacha20poly1305-ecp256", Protocol.ESP, [
        ChildProposal(Protocol.ESP, Transform(GCM, 128), KeId.ECP256),
        ChildProposal(Protocol.ESP, Transform(CHACHA, 256), KeId.ECP256)]),
    ("sha384-x448", Protocol.AH, [ChildProposal(Protocol.AH, Transform(None, integ=S384), KeId.CURVE448)]),
    # RFC 9370 hybrid PFS, run over IKE_FOLLOWUP_KE (§2.2.4); ke1_none offers the classic one as well
    ("aes128gcm16-x25519-ke1_mlkem768", Protocol.ESP, [
        ChildProposal(Protocol.ESP, Transform(GCM, 128), KeId.CURVE25519, (KeId.ML_KEM_768,))]),
    ("aes128gcm16-x25519-ke1_mlkem1024-ke1_none-ke2_mlkem768", Protocol.ESP, [
        ChildProposal(Protocol.ESP, Transform(GCM, 128), KeId.CURVE25519, (KeId.ML_KEM_1024, KeId.ML_KEM_768)),
        ChildProposal(Protocol.ESP, Transform(GCM, 128), KeId.CURVE25519, (KeId.NONE, KeId.ML_KEM_768))]),
]


@pytest.mark.parametrize("text,protocol,expected", CHILD_VALID)
def test_child_valid(text, protocol, expected):
    assert parse_child(text, protocol) == expected
    for p in expected:
        assert parse_child(format_child(p), protocol) == [p]


@pytest.mark.parametrize("text,protocol,fragments", [
    ("aes128gcm16-modp1024", Protocol.ESP, ["modp1024", "'SHOULD NOT'", "RFC 8247 §2.4"]),
    ("aes128-sha1-x25519", Protocol.ESP, ["sha1", "RFC 8221 §6"]),
    ("aes128gcm16-prfsha256", Protocol.ESP, ["'prfsha256' is a PRF", "only IKE proposals"]),
    ("aes128gcm16-ke1_mlkem768", Protocol.ESP, ["no key exchange method", "x25519-ke1_mlkem768"]),
    ("aes128gcm16-x25519-ke1_mlkem512", Protocol.ESP, ["mlkem512"]),
    ("aes128gcm16-x25519", Protocol.AH, ["AH does not encrypt"]),
])
def test_child_refused(text, protocol, fragments):
    with pytest.raises(ProposalError) as e:
        parse_child(text, protocol)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_manual_keying_refuses_pfs_groups():
    with pytest.raises(ProposalError, match="key exchange method: PFS needs IKE"):
        parse_esp("aes128gcm16-x25519")


_IKE_PROPOSALS = st.one_of(
    st.builds(IkeProposal, st.just(EncrId.AES_GCM_16), st.sampled_from([128, 192, 256]), st.none(),
              st.sampled_from([P256, P384, P512]), st.sampled_from(
                  [KeId.MODP2048, KeId.MODP3072, KeId.MODP4096, KeId.ECP256, KeId.ECP384, KeId.ECP521,
                   KeId.CURVE25519, KeId.CURVE448])),
    st.builds(IkeProposal, st.just(EncrId.AES_CBC), st.sampled_from([128, 192, 256]),
              st.sampled_from([IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192, IntegId.HMAC_SHA2_512_256]),
              st.sampled_from([P256, P384, P512]), st.sampled_from([KeId.MODP3072, KeId.CURVE25519])),
)


@given(_IKE_PROPOSALS)
def test_every_ike_proposal_round_trips_through_its_name(p):
    assert parse_ike(format_ike(p)) == [p]


def test_an_unknown_name_lists_every_valid_one_by_type():
    """The message is the reference: each accepted token appears under its transform type, nothing else does."""
    from xdpsec.proposals import _ADDKE, _ENCR, _ESN, _IKE_ENCR, _INTEG, _KE, _PRF
    with pytest.raises(ProposalError) as e:
        parse_ike("rot13-prfsha256-x25519")
    listed = dict(part.split(": ", 1) for part in str(e.value).split("valid names are ")[1].split("; "))
    assert {kind: value.split(", ") for kind, value in listed.items()} == {
        "encryption": list(_IKE_ENCR), "integrity": list(_INTEG), "PRF": list(_PRF), "key exchange": list(_KE),
        **{f"additional key exchange {n}": list(t) for n, t in enumerate(_ADDKE, 1)}}
    with pytest.raises(ProposalError) as e:
        parse_esp("rot13-sha256")
    listed = dict(part.split(": ", 1) for part in str(e.value).split("valid names are ")[1].split("; "))
    assert {kind: value.split(", ") for kind, value in listed.items()} == {
        "encryption": list(_ENCR), "integrity": list(_INTEG), "ESN": list(_ESN)}
