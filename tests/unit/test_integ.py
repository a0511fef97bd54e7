"""Truncated HMAC-SHA-2 ICVs (xdpsec/crypto/integ.py) against RFC 4868 and against the standard library."""

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpsec.crypto.integ import IntegAlgo
from xdpsec.sa import INTEG_SIZES, Integ

SHA256, SHA384, SHA512 = Integ.HMAC_SHA2_256_128, Integ.HMAC_SHA2_384_192, Integ.HMAC_SHA2_512_256

# RFC 4868 §2.7.2 "Test Vectors for Authentication" (AUTH256-n, AUTH384-n, AUTH512-n): keys of exactly the
# hash length, the full PRF output given there, and its leftmost half as the authenticator.
# (integ, case, key, data, full HMAC output)
RFC4868_AUTH = [
    (SHA256, "AUTH256-1", b"\x0b" * 32, b"Hi There",
     "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"),
    (SHA256, "AUTH256-2", b"Jefe" * 8, b"what do ya want for nothing?",
     "167f928588c5cc2eef8e3093caa0e87c9ff566a14794aa61648d81621a2a40c6"),
    (SHA256, "AUTH256-3", b"\xaa" * 32, b"\xdd" * 50,
     "cdcb1220d1ecccea91e53aba3092f962e549fe6ce9ed7fdc43191fbde45c30b0"),
    (SHA256, "AUTH256-4", bytes(range(1, 33)), b"\xcd" * 50,
     "372efcf9b40b35c2115b1346903d2ef42fced46f0846e7257bb156d3d7b30d3f"),
    (SHA384, "AUTH384-1", b"\x0b" * 48, b"Hi There",
     "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee9737a959796489bddbc"
     "4c5df61d5b3297b4fb68dab9f1b582c2"),
    (SHA384, "AUTH384-2", b"Jefe" * 12, b"what do ya want for nothing?",
     "2c7353974f1842fd66d53c452ca42122b28c0b594cfb184da86a368e9b8e16f5"
     "349524ca4e82400cbde0686d403371c9"),
    (SHA512, "AUTH512-1", b"\x0b" * 64, b"Hi There",
     "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"
     "ac2878ebd5803f6f0b61dbce5e251ff8789a4722c1be65aea45fd464e89f8f5b"),
    (SHA512, "AUTH512-2", b"Jefe" * 16, b"what do ya want for nothing?",
     "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"
     "6aa334ae9fb9afc2184932d8695e397bfa0ffb93466cfcceaae38c833b7dba38"),
]

_HASHLIB = {SHA256: hashlib.sha256, SHA384: hashlib.sha384, SHA512: hashlib.sha512}


@pytest.mark.parametrize(("integ", "case", "key", "data", "full"), RFC4868_AUTH, ids=[c[1] for c in RFC4868_AUTH])
def test_rfc4868_authenticator_vectors(integ, case, key, data, full):
    algo = IntegAlgo(integ, key)
    expected = bytes.fromhex(full)[: INTEG_SIZES[integ][1]]  # RFC 4868 §2.1: keep the leftmost half
    assert algo.icv_len == len(bytes.fromhex(full)) // 2
    assert algo.icv(data) == expected
    assert algo.verify(expected, data)


@pytest.mark.parametrize("integ", list(Integ))
def test_verify_rejects_any_single_bit_flip_and_wrong_lengths(integ):
    algo = IntegAlgo(integ, bytes(range(INTEG_SIZES[integ][0])))
    icv = algo.icv(b"payload")
    for bit in range(len(icv) * 8):
        flipped = bytearray(icv)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        assert not algo.verify(bytes(flipped), b"payload")
    assert not algo.verify(icv[:-1], b"payload")
    assert not algo.verify(icv + b"\x00", b"payload")
    assert not algo.verify(b"", b"payload")
    assert not algo.verify(icv, b"payloaD")


@pytest.mark.parametrize("integ", list(Integ))
def test_key_length_is_fixed(integ):
    key_len = INTEG_SIZES[integ][0]  # RFC 4868 §2.1.1
    for bad in (key_len - 1, key_len + 1, 0):
        with pytest.raises(ValueError):
            IntegAlgo(integ, bytes(bad))


@given(integ=st.sampled_from(list(Integ)), data=st.data(), message=st.binary(max_size=300))
def test_chunks_are_concatenated_and_match_the_standard_library(integ, data, message):
    key = data.draw(st.binary(min_size=INTEG_SIZES[integ][0], max_size=INTEG_SIZES[integ][0]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=4)))
    chunks = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    algo = IntegAlgo(integ, key)
    reference = hmac.new(key, message, _HASHLIB[integ]).digest()[: algo.icv_len]
    assert algo.icv(*chunks) == reference
    assert algo.icv(*map(memoryview, chunks)) == reference
    assert algo.verify(memoryview(reference), *chunks)
