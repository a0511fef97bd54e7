"""IKEv2 cryptography: PRFs and prf+ (crypto/prf.py), key exchange (crypto/dh.py), SK payloads (crypto/ikecipher.py).

Published vectors carry their citation; the rest cross-checks against independent constructions (the standard
library's HMAC, `cryptography`'s AESGCM and AES-CBC used directly) and hypothesis properties for network input.
"""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.crypto import dh as dh_module
from xdpsec.crypto.dh import SUPPORTED_GROUPS, Group, KeyExchange, KeyExchangeError, new_key_exchange
from xdpsec.crypto.ikecipher import IkeCipher, IntegrityError, encr_key_len, integ_key_len
from xdpsec.crypto.prf import PRF_PLUS_MAX_BLOCKS, Prf, PrfId
from xdpsec.sa import Encr, Integ

h = bytes.fromhex

# --------------------------------------------------------------------------------------------------- PRFs

# RFC 4868 §2.7.1 PRF test cases 1-6 (transcribed from GaloisInc/cryptol-specs
# Primitive/Symmetric/MAC/HMAC/Tests/HMAC_SHA2_{256,384,512}.cry, which quotes the RFC).
PRF_INPUTS = [
    (b"\x0b" * 20, b"Hi There"),
    (b"Jefe", b"what do ya want for nothing?"),
    (b"\xaa" * 20, b"\xdd" * 50),
    (h("0102030405060708090a0b0c0d0e0f10111213141516171819"), b"\xcd" * 50),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. "
                    b"The key needs to be hashed before being used by the HMAC algorithm."),
]
PRF_OUTPUTS = {
    PrfId.HMAC_SHA2_256: [
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ],
    PrfId.HMAC_SHA2_384: [
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
        "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
        "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e",
    ],
    PrfId.HMAC_SHA2_512: [
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
        "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
        "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    ],
}


@pytest.mark.parametrize("prf_id", list(PrfId))
@pytest.mark.parametrize("case", range(6), ids=[f"PRF-{i + 1}" for i in range(6)])
def test_rfc4868_prf_vectors(prf_id, case):
    key, data = PRF_INPUTS[case]
    assert Prf(prf_id)(key, data) == h(PRF_OUTPUTS[prf_id][case])


@pytest.mark.parametrize("prf_id,name,size", [(PrfId.HMAC_SHA2_256, "sha256", 32),
                                              (PrfId.HMAC_SHA2_384, "sha384", 48),
                                              (PrfId.HMAC_SHA2_512, "sha512", 64)])
def test_prf_plus_matches_rfc7296_construction(prf_id, name, size):
    # RFC 7296 §2.13 written out with the standard library's HMAC: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n).
    prf, key, seed = Prf(prf_id), b"K" * 7, b"seed" * 9
    assert (prf.key_len, prf.out_len) == (size, size)  # RFC 4868 §2.1.2
    blocks, t = [], b""
    for n in range(1, 5):
        t = hmac.digest(key, t + seed + bytes((n,)), name)
        blocks.append(t)
    stream = b"".join(blocks)
    for length in (0, 1, size - 1, size, size + 1, 3 * size + 5, 4 * size):
        assert prf.plus(key, seed, length) == stream[:length]


def test_prf_plus_stops_at_255_blocks():
    prf = Prf(PrfId.HMAC_SHA2_256)
    assert len(prf.plus(b"k", b"s", PRF_PLUS_MAX_BLOCKS * 32)) == 255 * 32
    with pytest.raises(ValueError):
        prf.plus(b"k", b"s", PRF_PLUS_MAX_BLOCKS * 32 + 1)


@pytest.mark.parametrize("prf_id", [1, 2, 4, 8])  # HMAC-MD5, HMAC-SHA1, AES128-XCBC, AES128-CMAC: not ours
def test_unsupported_prf_refused(prf_id):
    with pytest.raises(ValueError):
        Prf(prf_id)


# ------------------------------------------------------------------------------------------- key exchange


def _exchange_both_ways(group, priv_i, pub_i, priv_r, pub_r, shared):
    ke_i = KeyExchange._from_private(group, h(priv_i))
    ke_r = KeyExchange._from_private(group, h(priv_r))
    assert ke_i.public() == h(pub_i)
    assert ke_r.public() == h(pub_r)
    assert ke_i.shared(h(pub_r)) == h(shared)
    assert ke_r.shared(h(pub_i)) == h(shared)


# RFC 7748 §5.2: scalar, u coordinate, output (the second u has its top bit set, which X25519 must ignore).
@pytest.mark.parametrize("group,scalar,u,out", [
    (Group.CURVE25519, "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    (Group.CURVE25519, "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
    (Group.CURVE448, "3d262fddf9ec8e88495266fea19a34d28882acef045104d0d1aae121700a779c984c24f8cdd78fbff44943eba368f54b"
                     "29259a4f1c600ad3",
     "06fce640fa3487bfda5f6cf2d5263f8aad88334cbd07437f020f08f9814dc031ddbdc38c19c6da2583fa5429db94ada18aa7a7fb4ef8a086",
     "ce3e4ff95a60dc6697da1db1d85e6afbdf79b50a2412d7546d5f239fe14fbaadeb445fc66a01b0779d98223961111e21766282f73dd96b6f"),
    (Group.CURVE448, "203d494428b8399352665ddca42f9de8fef600908e0d461cb021f8c538345dd77c3e4806e25f46d3315c44e0a5b43712"
                     "82dd2c8d5be3095f",
     "0fbcc2f993cd56d3305b0b7d9e55d4c1a8fb5dbb52f8e9a1e9b6201b165d015894e56c4d3570bee52fe205e28a78b91cdfbde71ce8d157db",
     "884a02576239ff7a2f2f63b2db6a9ff37047ac13568e1e30fe63c4a7ad1b3ee3a5700df34321d62077e63633c575c1c954514e99da7c179d"),
])
def test_rfc7748_scalar_multiplication(group, scalar, u, out):
    assert KeyExchange._from_private(group, h(scalar)).shared(h(u)) == h(out)


def test_rfc7748_x25519_diffie_hellman():
    # RFC 7748 §6.1
    _exchange_both_ways(
        Group.CURVE25519,
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_rfc7748_x448_diffie_hellman():
    # RFC 7748 §6.2
    _exchange_both_ways(
        Group.CURVE448,
        "9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28dd9c9baf574a9419744897391006382a6f127ab1d9ac2d8c0a598726b",
        "9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c22c5d9bbc836647241d953d40c5b12da88120d53177f80e532c41fa0",
        "1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d6927c120bb5ee8972b0d3e21374c9c921b09d1b0366f10b65173992d",
        "3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b43027d8b972fc3e34fb4232a13ca706dcb57aec3dae07bdc1c67bf33609",
        "07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282bb60c0b56fd2464c335543936521c24403085d59a449a5037514a879d")


# RFC 5903 §8.1-8.3: i, gix | giy, r, grx | gry, girx (the shared secret is the x coordinate, §7).
RFC5903 = [
    (Group.ECP_256,
     "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
     "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
     "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
     "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
     "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
     "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
     "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE"),
    (Group.ECP_384,
     "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194",
     "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA"
     "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
     "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
     "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571"
     "DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
     "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746"),
    (Group.ECP_521,
     "0037ADE9319A89F4DABDB3EF411AACCCA5123C61ACAB57B5393DCE47608172A095AA85A30FE1C2952C6771D937BA9777F5957B2639BAB0"
     "72462F68C27A57382D4A52",
     "0015417E84DBF28C0AD3C278713349DC7DF153C897A1891BD98BAB4357C9ECBEE1E3BF42E00B8E380AEAE57C2D107564941885942AF5A7"
     "F4601723C4195D176CED3E"
     "017CAE20B6641D2EEB695786D8C946146239D099E18E1D5A514C739D7CB4A10AD8A788015AC405D7799DC75E7B7D5B6CF2261A6A7F1507"
     "438BF01BEB6CA3926F9582",
     "0145BA99A847AF43793FDD0E872E7CDFA16BE30FDC780F97BCCC3F078380201E9C677D600B343757A3BDBF2A3163E4C2F869CCA7458AA4"
     "A4EFFC311F5CB151685EB9",
     "00D0B3975AC4B799F5BEA16D5E13E9AF971D5E9B984C9F39728B5E5739735A219B97C356436ADC6E95BB0352F6BE64A6C2912D4EF2D043"
     "3CED2B6171640012D9460F"
     "015C68226383956E3BD066E797B623C27CE0EAC2F551A10C2C724D9852077B87220B6536C5C408A1D2AEBB8E86D678AE49CB57091F4732"
     "296579AB44FCD17F0FC56A",
     "01144C7D79AE6956BC8EDB8E7C787C4521CB086FA64407F97894E5E6B2D79B04D1427E73CA4BAA240A34786859810C06B3C715A3A8CC31"
     "51F2BEE417996D19F3DDEA"),
]


@pytest.mark.parametrize("group,i,gi,r,gr,gir", RFC5903, ids=lambda v: v.name if isinstance(v, Group) else "")
def test_rfc5903_ecp_vectors(group, i, gi, r, gr, gir):
    _exchange_both_ways(group, i, gi, r, gr, gir)


def _pi_times_2_to_the(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula in integers (64 guard bits)."""
    one = 1 << (bits + 64)

    def atan_inv(x: int) -> int:
        total, term, n, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n, sign = n + 2, -sign
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> 64


def _probably_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize("group,bits,k", [(Group.MODP_2048, 2048, 124476), (Group.MODP_3072, 3072, 1690314),
                                          (Group.MODP_4096, 4096, 240904)])
def test_rfc3526_primes(group, bits, k):
    # RFC 3526 §3-§5 define each prime as 2^n - 2^(n-64) - 1 + 2^64 * { [2^(n-130) pi] + k }: recompute it
    # and compare with what the module embeds, through a public value (g^1 = 2) and the group's p-1 check.
    p = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_times_2_to_the(bits - 130) + k)
    assert dh_module._MODP_PRIMES[group] == p
    assert p.bit_length() == bits and p.bit_length() // 8 == new_key_exchange(group).public_len
    # A safe prime: p and (p-1)/2 prime, so the only small subgroups are {1} and {1, p-1}.
    assert _probably_prime(p) and _probably_prime((p - 1) // 2)
    assert KeyExchange._from_private(group, b"\x01").public() == (2).to_bytes(bits // 8, "big")


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS))
def test_round_trip_every_group(group):
    a, b = new_key_exchange(group), new_key_exchange(group)
    assert len(a.public()) == a.public_len
    shared = a.shared(b.public())
    assert shared == b.shared(a.public())
    assert a.public() != b.public()
    assert repr(a) == f"KeyExchange({Group(group).name})"


@pytest.mark.parametrize("group", [Group.MODP_2048, Group.MODP_3072, Group.MODP_4096])
def test_modp_shared_secret_is_padded_to_the_prime(group):
    # A private value of 1 against a peer public value of 2 gives g^ir = 2: 255+ leading zero octets.
    ke = KeyExchange._from_private(group, b"\x01")
    size = ke.public_len
    assert ke.shared((2).to_bytes(size, "big")) == (2).to_bytes(size, "big")
    assert dh_module._MODP_PRIMES[group].bit_length() == 8 * size


@pytest.mark.parametrize("group", [Group.MODP_2048, Group.MODP_3072, Group.MODP_4096])
def test_modp_weak_values_refused(group):
    # RFC 7296 §5 / NIST SP 800-56A §5.6.2.3.1: 1 < y < p-1.
    p = dh_module._MODP_PRIMES[group]
    ke = new_key_exchange(group)
    for y in (0, 1, p - 1, p, p + 1, 2 ** (8 * ke.public_len) - 1):
        with pytest.raises(KeyExchangeError):
            ke.shared(y.to_bytes(ke.public_len, "big"))


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS))
def test_wrong_length_refused(group):
    ke = new_key_exchange(group)
    for size in (0, ke.public_len - 1, ke.public_len + 1):
        with pytest.raises(KeyExchangeError):
            ke.shared(b"\x05" * size)


@pytest.mark.parametrize("group", [Group.ECP_256, Group.ECP_384, Group.ECP_521])
def test_ecp_point_off_the_curve_refused(group):
    ke = new_key_exchange(group)
    good = new_key_exchange(group).public()
    bad = good[:-1] + bytes((good[-1] ^ 1,))  # y changed: (x, y') is not on the curve
    with pytest.raises(KeyExchangeError):
        ke.shared(bad)
    with pytest.raises(KeyExchangeError):
        ke.shared(bytes(ke.public_len))  # (0, 0) is not on any of these curves


X25519_P = 2**255 - 19


@pytest.mark.parametrize("group,u", [
    (Group.CURVE25519, bytes(32)),
    (Group.CURVE25519, (1).to_bytes(32, "little")),
    (Group.CURVE25519, (X25519_P - 1).to_bytes(32, "little")),   # order 2
    (Group.CURVE25519, X25519_P.to_bytes(32, "little")),         # non-canonical 0
    (Group.CURVE448, bytes(56)),
    (Group.CURVE448, (1).to_bytes(56, "little")),
])
def test_low_order_points_refused(group, u):
    # RFC 8031 §2 / RFC 7748 §6: an all-zero shared secret means the peer sent a low-order point.
    with pytest.raises(KeyExchangeError):
        new_key_exchange(group).shared(u)


def test_unsupported_group_is_a_caller_bug():
    for group in (1, 2, 5, 17, 18, 35):
        with pytest.raises(ValueError):
            new_key_exchange(group)


_KE_CACHE: dict[int, KeyExchange] = {}  # one private key per group: generating MODP keys is the slow part


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_peer_values_only_raise_key_exchange_error(group, data):
    ke = _KE_CACHE.setdefault(group, new_key_exchange(group))
    size = data.draw(st.sampled_from([ke.public_len, ke.public_len, 0, ke.public_len - 1]))
    value = data.draw(st.binary(min_size=size, max_size=size))
    try:
        shared = ke.shared(value)
    except KeyExchangeError:
        return
    assert len(shared) in (ke.public_len, ke.public_len // 2)



# --------------------------------------------------------------------------------------------- SK payload

TRANSFORMS = [
    (Encr.AES_GCM_16, 128, None),
    (Encr.AES_GCM_16, 256, None),
    (Encr.CHACHA20_POLY1305, 256, None),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_384_192),
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_512_256),
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256),
]
IDS = [f"{e.name}-{b}-{i.name if i else 'aead'}" for e, b, i in TRANSFORMS]
# An IKE header (28 octets) and an SK generic payload header (4 octets); contents do not matter to the cipher.
AAD = bytes(range(28)) + b"\x21\x00\x00\x50"


def _pair(encr, bits, integ, seed=1):
    sk_e = bytes((seed + i) % 256 for i in range(encr_key_len(encr, bits)))
    sk_a = bytes((seed * 7 + i) % 256 for i in range(integ_key_len(integ)))
    return IkeCipher(encr, bits, integ, sk_e, sk_a), IkeCipher(encr, bits, integ, sk_e, sk_a), sk_e, sk_a


@pytest.mark.parametrize("encr,bits,integ", TRANSFORMS, ids=IDS)
def test_round_trip(encr, bits, integ):
    sender, receiver, _, _ = _pair(encr, bits, integ)
    for size in (0, 1, 15, 16, 17, 31, 32, 100, 1500):
        plaintext = bytes((size + i) % 251 for i in range(size))
        body = sender.seal(AAD, plaintext)
        assert len(body) == sender.sealed_len(size)
        padded_len = len(body) - sender.iv_len - sender.icv_len
        assert padded_len % sender.block_size == 0 and padded_len > size
        assert receiver.open(AAD, body) == plaintext


@pytest.mark.parametrize("encr,bits,integ", TRANSFORMS, ids=IDS)
def test_every_bit_flip_rejected(encr, bits, integ):
    sender, receiver, _, _ = _pair(encr, bits, integ)
    body = sender.seal(AAD, b"IDi AUTH SA TSi TSr")
    for i in range(len(body) * 8):
        flipped = bytearray(body)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            receiver.open(AAD, bytes(flipped))
    for i in range(len(AAD) * 8):  # the IKE header and SK payload header are authenticated too
        aad = bytearray(AAD)
        aad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            receiver.open(bytes(aad), body)
    for cut in range(len(body)):
        with pytest.raises(IntegrityError):
            receiver.open(AAD, body[:cut])


@pytest.mark.parametrize("encr,bits,integ", TRANSFORMS, ids=IDS)
def test_other_key_rejected(encr, bits, integ):
    sender, _, _, _ = _pair(encr, bits, integ, seed=1)
    _, stranger, _, _ = _pair(encr, bits, integ, seed=2)
    with pytest.raises(IntegrityError):
        stranger.open(AAD, sender.seal(AAD, b"hello"))


@pytest.mark.parametrize("bits", [128, 256])
def test_aes_gcm_matches_rfc5282_construction(bits):
    # RFC 5282 §3.1 and §5.1: nonce = salt (last 4 octets of SK_e) | 8-octet IV, AAD = IKE header .. SK header,
    # plaintext = payloads | padding | pad length; checked with cryptography's AESGCM used directly.
    sender, _, sk_e, _ = _pair(Encr.AES_GCM_16, bits, None)
    plaintext = b"\x29\x00\x00\x08\x00\x00\x40\x00"
    body = sender.seal(AAD, plaintext)
    iv, sealed = body[:8], body[8:]
    padded = AESGCM(sk_e[:-4]).decrypt(sk_e[-4:] + iv, sealed, AAD)
    assert padded[: len(plaintext)] == plaintext and padded[-1] == len(padded) - len(plaintext) - 1
    # And the other way round: what AESGCM seals with a foreign IV and odd padding, we open.
    foreign = plaintext + b"\xee" * 3 + b"\x03"
    iv = b"\x99" * 8
    assert sender.open(AAD, iv + AESGCM(sk_e[:-4]).encrypt(sk_e[-4:] + iv, foreign, AAD)) == plaintext


def test_aead_ivs_never_repeat():
    sender, _, _, _ = _pair(Encr.AES_GCM_16, 256, None)
    ivs = {sender.seal(AAD, b"x")[:8] for _ in range(1000)}
    assert len(ivs) == 1000


@pytest.mark.parametrize("integ,name", [(Integ.HMAC_SHA2_256_128, "sha256"), (Integ.HMAC_SHA2_384_192, "sha384"),
                                        (Integ.HMAC_SHA2_512_256, "sha512")])
def test_cbc_hmac_matches_rfc7296_construction(integ, name):
    # RFC 7296 §3.14: ICV = truncated HMAC (RFC 4868 §2.1) over the message from the IKE header through the
    # pad length; ciphertext = AES-CBC(IV, payloads | padding | pad length) with a random IV.
    sender, _, sk_e, sk_a = _pair(Encr.AES_CBC, 256, integ)
    plaintext = b"payloads" * 5
    body = sender.seal(AAD, plaintext)
    icv_len = len(sk_a) // 2
    iv, ciphertext, icv = body[:16], body[16:-icv_len], body[-icv_len:]
    assert icv == hmac.digest(sk_a, AAD + iv + ciphertext, name)[:icv_len]
    decryptor = Cipher(algorithms.AES(sk_e), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    assert padded[: len(plaintext)] == plaintext and padded[-1] == len(padded) - len(plaintext) - 1
    assert sender.seal(AAD, plaintext)[:16] != iv  # a fresh IV per message


def test_authentic_but_impossible_pad_length_rejected():
    _, receiver, sk_e, _ = _pair(Encr.AES_GCM_16, 128, None)
    iv = b"\x00" * 8
    for padded in (b"\x01", b"ab\x03", b"\xff" * 16):
        sealed = AESGCM(sk_e[:-4]).encrypt(sk_e[-4:] + iv, padded, AAD)
        with pytest.raises(IntegrityError):
            receiver.open(AAD, iv + sealed)


@pytest.mark.parametrize("args", [
    (Encr.NULL, 0, Integ.HMAC_SHA2_256_128, b"", b"\x00" * 32),          # IKE SAs are always encrypted
    (Encr.AES_GCM_16, 128, Integ.HMAC_SHA2_256_128, b"\x00" * 20, b""),  # AEAD takes no integrity transform
    (Encr.AES_GCM_16, 128, None, b"\x00" * 16, b""),                     # salt missing
    (Encr.AES_CBC, 128, None, b"\x00" * 16, b""),                        # CBC without integrity
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128, b"\x00" * 16, b"\x00" * 16),  # short HMAC key
    (3, 192, Integ.HMAC_SHA2_256_128, b"\x00" * 24, b"\x00" * 32),       # 3DES: not implemented
])
def test_misuse_is_a_value_error(args):
    with pytest.raises(ValueError):
        IkeCipher(*args)


def test_repr_holds_no_key():
    cipher, _, sk_e, sk_a = _pair(Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256)
    text = repr(cipher)
    assert sk_e.hex() not in text and sk_a.hex() not in text and "AES_CBC" in text


@pytest.mark.parametrize("encr,bits,integ", TRANSFORMS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(aad=st.binary(max_size=40), body=st.binary(max_size=200))
def test_random_bodies_only_raise_integrity_error(encr, bits, integ, aad, body):
    _, receiver, _, _ = _pair(encr, bits, integ)
    with pytest.raises(IntegrityError):
        receiver.open(aad, body)
