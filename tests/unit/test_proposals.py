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
    ("twofish-sha256", ["unknown algorithm 'twofish'", "valid names are", "aes128gcm16", "sha256"]),
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
