"""The IKEv2 key schedule (xdpsec/ike/keys.py) against NIST's IKEv2 KDF vectors (SP 800-135 §4.1.2).

The vectors are NIST CAVP "IKEv2" KDF samples (one per hash), as carried by NSS in
gtests/common/testvectors/ike-sha{256,384,512}-vectors.h (read at Floorp-Projects/Floorp
security/nss/gtests/common/testvectors/, commit 014c4897): g^ir, Ni, Nr, SPIi, SPIr -> SKEYSEED, the first
132 bytes of DKM = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), and SKEYSEED(Rekey) from SK_d and g^ir (new).
NSS carries no SHA-2 DKM(Child SA) values; child KEYMAT is checked against an independent construction of
prf+ with the standard library's HMAC (its prf+ being the one the DKM vectors check).
"""

from __future__ import annotations

import hmac

import pytest

from xdpsec.crypto.ikecipher import encr_key_len
from xdpsec.crypto.prf import Prf, PrfId
from xdpsec.ike.keys import (
    IkeKeys,
    child_keymat,
    derive_ike_keys,
    key_lengths,
    rekey_skeyseed,
    skeyseed,
    split_ike_keys,
)
from xdpsec.sa import Encr, Integ

h = bytes.fromhex

# (prf, g^ir, Ni, Nr, SPIi, SPIr, SKEYSEED, DKM[:132], g^ir (new), SKEYSEED(Rekey))
CAVP_SAMPLES = [
    (PrfId.HMAC_SHA2_256,
     "0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29",
     "3f302be1abcb28e1", "8c332ee006064c9b", "40dac39e1e1a8640", "8619a1cf9a6e4c07",
     "5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe",
     "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531"
     "188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6cdf6854379e31be72b"
     "8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4e1c19bdcd4db14b29d98db1a74a"
     "d405c588662c14a04d0d36aa4ab55e90f8986d12d4aad",
     "25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c",
     "2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398"),
    (PrfId.HMAC_SHA2_384,
     "d3288cd87565101e88fe3bad918f31939d8dd26ff1071f8b2d7f447524e58d7c",
     "fd1b572a8e735591", "6013b0ef88dacd3d", "2116ad07ce61f749", "24880e55f11a65b7",
     "69fe7a1ac94adaeb711295f5fe004b1a8d6a0b65d05692758ce8ad2f7a45f59d7d0b596f5"
     "1f7dfcf3330061888f6a94f",
     "4f904c2025c90c817ea5ff9b662a6fdb445a73b57cdf09eacd379b95e1f03cacb04cd6dee"
     "da4f952191dd9bc1f7a9502471a648d74dc06d38112de48a42501f6b1a3ad55c2099cd9a6"
     "48e5f17e5bf3e34bf9b5953decb768a34f875fe2b78dca0c2fcca81ec1a412006dfaed38f"
     "a06882e61f4c148105fb8e231fdb33c4d484c001721d4",
     "3358f620539473aee8d07e779764c4c6a9aabddc79a28e136b3bac021dbde44a",
     "e0548c1682e13bce454026b3b1bdf42985b24e4e7408095a7c529de38c3d1fcb04c9fe686"
     "8042a34c9614c6c99e3fcea"),
    (PrfId.HMAC_SHA2_512,
     "276255c3eaace5c6db32b609aa86c0ef07bba4bf2dc4c262995efd95ca607c3f",
     "97c41a9b0a03e74c", "a659fd06e1746600", "ff43c5c689b95481", "e2ba607f30079bb7",
     "d6e74966b75fd2afab48be319d63d97c8a5d2ffe2e320763a462c664b36c3a944067d867c"
     "3a55fd8a7e5cca64b22e24415987e15549f09a81b455adaa5303df8",
     "22259105314717dc73c210919ee9cb3ded774dc087e866aa3960404c0ed7b8e78e79b9938"
     "88388e2e5cb238d4bfcb4cdee9da074a26e329d6c2f2f660cc9c711c941a2fb3d85a2e5d0"
     "1e579c8f2c9d00fa6fabe76a137b00c7ff1b291899906588c26f073d819063238c4c844f0"
     "f8d221b65b76dbc9ed6f6368e5dba86b3e81b60eb44a1",
     "bb4015f7727b35532021336a9e4a6370ac8729b01fbb8f15d52236820fac4709",
     "ecdaf3ccb990abc898a453b03fd56f9975275f150e1e571b0560b3cb2ee67289e82b899cd"
     "c2129fd821fe8aebea796f190765c25798f5883f923526551f16a4b"),
]


@pytest.mark.parametrize("prf_id,gir,ni,nr,spi_i,spi_r,seed,dkm,gir_new,seed_rekey", CAVP_SAMPLES)
def test_cavp_ikev2_kdf(prf_id, gir, ni, nr, spi_i, spi_r, seed, dkm, gir_new, seed_rekey):
    prf = Prf(prf_id)
    assert skeyseed(prf, h(ni), h(nr), h(gir)) == h(seed)
    assert prf.plus(h(seed), h(ni + nr + spi_i + spi_r), 132) == h(dkm)
    sk_d = h(dkm)[: prf.key_len]
    assert rekey_skeyseed(prf, sk_d, h(gir_new), h(ni), h(nr)) == h(seed_rekey)


@pytest.mark.parametrize("prf_id,gir,ni,nr,spi_i,spi_r,seed,dkm,gir_new,seed_rekey", CAVP_SAMPLES)
@pytest.mark.parametrize("encr,bits,integ", [
    (Encr.AES_GCM_16, 256, None),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
    (Encr.CHACHA20_POLY1305, 0, None),
])
def test_sk_keys_are_the_dkm_in_rfc_order(prf_id, gir, ni, nr, spi_i, spi_r, seed, dkm, gir_new, seed_rekey,
                                          encr, bits, integ):
    # RFC 7296 §2.14: SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr, read off the CAVP DKM.
    keys = derive_ike_keys(prf_id, encr, bits, integ, h(ni), h(nr), h(gir), h(spi_i), h(spi_r))
    e_len, a_len, p_len = key_lengths(encr, bits, integ, prf_id)
    parts = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert [len(p) for p in parts] == [p_len, a_len, a_len, e_len, e_len, p_len, p_len]
    stream = b"".join(parts)
    assert stream[:132] == h(dkm)[: len(stream)]
    # SPIs as integers are the same 8 octets in network order.
    assert keys == derive_ike_keys(prf_id, encr, bits, integ, h(ni), h(nr), h(gir),
                                   int(spi_i, 16), int(spi_r, 16))
    assert keys == split_ike_keys(prf_id, encr, bits, integ, h(seed), h(ni), h(nr), h(spi_i), h(spi_r))


def test_child_keymat_is_prf_plus_of_sk_d():
    # Independent construction of prf+ with the standard library's HMAC (RFC 7296 §2.13).
    sk_d, ni, nr, gir = b"\x11" * 48, b"\x22" * 32, b"\x33" * 32, b"\x44" * 56
    seed = gir + ni + nr
    t1 = hmac.digest(sk_d, seed + b"\x01", "sha384")
    t2 = hmac.digest(sk_d, t1 + seed + b"\x02", "sha384")
    ei, ai, er, ar = child_keymat(PrfId.HMAC_SHA2_384, sk_d, ni, nr, 20, 0, 20, 24, gir)
    assert ei + ai + er + ar == (t1 + t2)[:64]


@pytest.mark.parametrize("encr,bits,integ,prf,expected", [
    (Encr.AES_GCM_16, 128, None, PrfId.HMAC_SHA2_256, (20, 0, 32)),       # RFC 5282 §7.1: key | 4-byte salt
    (Encr.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_384, (36, 0, 48)),
    (Encr.CHACHA20_POLY1305, 0, None, PrfId.HMAC_SHA2_512, (36, 0, 64)),  # RFC 7634 §4
    (Encr.CHACHA20_POLY1305, 256, None, PrfId.HMAC_SHA2_256, (36, 0, 32)),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256, (16, 32, 32)),  # RFC 4868 §2.1.1
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384, (32, 48, 48)),
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_256, (32, 64, 32)),
])
def test_key_lengths(encr, bits, integ, prf, expected):
    assert key_lengths(encr, bits, integ, prf) == expected
    assert encr_key_len(encr, bits) == expected[0]


@pytest.mark.parametrize("args", [
    (Encr.AES_GCM_16, 100, None, PrfId.HMAC_SHA2_256),   # no such AES key size
    (Encr.CHACHA20_POLY1305, 128, None, PrfId.HMAC_SHA2_256),
    (Encr.NULL, 0, Integ.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256),  # never for IKE
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128, 2),      # PRF_HMAC_SHA1: not implemented
])
def test_key_lengths_refuse_what_we_do_not_do(args):
    with pytest.raises(ValueError):
        key_lengths(*args)


def test_bad_spi_length_is_a_caller_bug():
    with pytest.raises(ValueError):
        derive_ike_keys(PrfId.HMAC_SHA2_256, Encr.AES_GCM_16, 128, None, b"n" * 16, b"m" * 16, b"g" * 32,
                        b"\x01" * 4, b"\x02" * 8)


def test_keys_never_in_repr():
    keys = derive_ike_keys(PrfId.HMAC_SHA2_256, Encr.AES_GCM_16, 256, None, b"n" * 16, b"m" * 16, b"g" * 32,
                           1, 2)
    assert repr(keys) == "IkeKeys()"
    assert str(keys) == "IkeKeys()"
    assert isinstance(keys, IkeKeys)
