"""xdpsec/crypto/kem.py: ML-KEM-768/1024 as RFC 9370 additional key exchanges.

Properties here: the sizes of FIPS 203 table 3, both roles agreeing on the secret, implicit rejection
(FIPS 203 §6.3), the encapsulation key check (§7.2), and that every malformed length is a KeyExchangeError,
never another exception. Known answers (NIST ACVP key generation, Wycheproof decapsulation from seeds) are in
tests/unit/test_kem_kat.py.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.crypto.dh import KeyExchangeError
from xdpsec.crypto.kem import KEM_SIZES, SHARED_LEN, SUPPORTED_ADDITIONAL, Kem, initiate, respond

# FIPS 203 table 3: (encapsulation key, ciphertext) octets; IANA Transform Type 4 IDs 36 and 37.
TABLE_3 = [(Kem.ML_KEM_768, 36, 1184, 1088), (Kem.ML_KEM_1024, 37, 1568, 1568)]
_PRIVATE = {Kem.ML_KEM_768: mlkem.MLKEM768PrivateKey, Kem.ML_KEM_1024: mlkem.MLKEM1024PrivateKey}


@pytest.mark.parametrize("kem, iana, ek_len, ct_len", TABLE_3)
def test_sizes_and_ids(kem, iana, ek_len, ct_len):
    assert int(kem) == iana and KEM_SIZES[kem] == (ek_len, ct_len)
    kex = initiate(kem)
    ek = kex.public()
    ct, secret = respond(kem, ek)
    assert (len(ek), len(ct), len(secret)) == (ek_len, ct_len, SHARED_LEN)


@pytest.mark.parametrize("kem", list(Kem))
def test_both_roles_agree_and_an_independent_decapsulation_agrees(kem):
    kex = initiate(kem)
    ct, secret = respond(kem, kex.public())
    assert kex.shared(ct) == secret
    # The same decapsulation key rebuilt from its 64-octet seed (FIPS 203 d|z) through the library directly.
    again = _PRIVATE[kem].from_seed_bytes(kex._key.private_bytes_raw())
    assert again.decapsulate(ct) == secret
    assert respond(kem, kex.public())[1] != secret  # encapsulation is randomised: a fresh secret each time


@pytest.mark.parametrize("kem", list(Kem))
def test_a_tampered_ciphertext_gives_the_implicit_rejection_secret(kem):
    """FIPS 203 §6.3: decapsulating a wrong ciphertext does not fail, it returns J(z | c) - a different secret,
    the same each time - so a tampered KEr(n) surfaces as AUTHENTICATION_FAILED in IKE_AUTH."""
    kex = initiate(kem)
    ct, secret = respond(kem, kex.public())
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    rejected = kex.shared(bad)
    assert rejected != secret and len(rejected) == SHARED_LEN and kex.shared(bad) == rejected


@pytest.mark.parametrize("kem", list(Kem))
def test_an_encapsulation_key_failing_the_modulus_check_is_refused(kem):
    """FIPS 203 §7.2: every 12-bit coefficient must be below q = 3329; 0xFFF is not."""
    ek = bytearray(initiate(kem).public())
    ek[0], ek[1] = 0xFF, ek[1] | 0x0F
    with pytest.raises(KeyExchangeError, match="encapsulation key"):
        respond(kem, bytes(ek))


@settings(max_examples=60, deadline=None)
@given(kem=st.sampled_from(list(Kem)), delta=st.integers(-40, 40).filter(bool), role=st.sampled_from("ir"))
def test_any_wrong_length_is_a_key_exchange_error(kem, delta, role):
    ek_len, ct_len = KEM_SIZES[kem]
    with pytest.raises(KeyExchangeError, match="octets, expected"):
        if role == "r":
            respond(kem, bytes(max(0, ek_len + delta)))
        else:
            initiate(kem).shared(bytes(max(0, ct_len + delta)))


def test_classic_groups_serve_as_additional_exchanges_too():
    kex = initiate(31)  # X25519 (RFC 9370 allows any Transform Type 4 method in ADDKE)
    theirs, secret = respond(31, kex.public())
    assert kex.shared(theirs) == secret
    assert {31, 36, 37} <= SUPPORTED_ADDITIONAL
    with pytest.raises(ValueError, match="unsupported"):
        initiate(35)  # ML-KEM-512: not offered


def test_repr_hides_the_key():
    assert repr(initiate(Kem.ML_KEM_768)) == "KemInitiator(ML_KEM_768)"
