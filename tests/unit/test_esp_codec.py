"""ESP cipher layer and codec (xdpsec/crypto/esp.py, xdpsec/esp/codec.py).

Published vectors reproduce packets byte for byte; scapy's independent ESP implementation decrypts what we
build and builds what we decrypt; hypothesis checks round trips and that hostile input only ever raises Drop.
"""

import hashlib
import hmac
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.abi import Drop, DropReason
from xdpsec.crypto.esp import EspCipher
from xdpsec.esp.codec import EspContext, esp_decap, esp_encap, esp_overhead
from xdpsec.esp.replay import ReplayWindow
from xdpsec.sa import Direction, Encr, Integ, Mode, Protocol, SAParams, Transform

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("192.0.2.2")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def make_ctx(transform: Transform, enc_key: bytes | None = None, integ_key: bytes | None = None,
             spi: int = 0x1234, tfc_pad: int = 0) -> EspContext:
    enc_key = bytes(range(transform.enc_key_len)) if enc_key is None else enc_key
    integ_key = bytes(range(100, 100 + transform.integ_key_len)) if integ_key is None else integ_key
    return EspContext(SAParams(spi=spi, protocol=Protocol.ESP, direction=Direction.IN, mode=Mode.TUNNEL,
                               transform=transform, local=A, remote=B, enc_key=enc_key, integ_key=integ_key,
                               tfc_pad=tfc_pad))


def split_plaintext(plaintext: bytes) -> tuple[bytes, int]:
    """(payload, next header) of an ESP plaintext whose trailer uses the default 1, 2, 3, ... padding."""
    pad_len, next_header = plaintext[-2], plaintext[-1]
    assert plaintext[-2 - pad_len:-2] == bytes(range(1, pad_len + 1))
    return plaintext[:-2 - pad_len], next_header


# --- draft-mcgrew-gcm-test-01 §2 (ESP packets for RFC 4106 AES-GCM-16) -------------------------------------
# Transcribed from the draft: key || salt, SPI, the sequence number (64 bits where the case uses ESN, with its
# 12-byte AAD), IV, the ESP plaintext (payload, padding, pad length, next header) and the packet's ESP part
# SPI..ICV. The IVs are arbitrary, hence esp_encap(iv=...).
GCM_CASES = [
    ("case 1: AES-128, ESN", 128, "4c80cdefbb5d10da906ac73c3613a634 2e443b68", 0x00004321,
     0x8765432100000000, True, "4956ed7e3b244cfe",
     """45000048699a000080114db7c0a80102 c0a801010a9bf15638d3010000010000 00000000045f736970045f7564700373
        69700963796265726369747902646b00 0021000101020201""",
     """00004321000000004956ed7e3b244cfe fecf537e729d5b07dc30df528dd22b76 8d1b98736696a6fd348509fa13ceac34
        cfa2436f14a3f3cf65925bf1f4a13c5d 15b21e1884f5ff6247aeabb786b93bce 61bc17d768fd9732459018148f6cbe72
        2fd04796562dfdb4"""),
    ("case 2: AES-128", 128, "feffe9928665731c6d6a8f9467308308 cafebabe", 0x0000a5f8, 0x0000000a, False,
     "facedbaddecaf888",
     """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100 00010000000000000373697009637962
        65726369747902646b00000100010001""",
     """0000a5f80000000afacedbaddecaf888 deb22cd9b07c72c16e3a65beeb8df304 a5a5897d33ae530f1ba76d5d114d2a5c
        3de81827c10e9a4f51330d0eec416642 cfbb85a5b47e48a4ec3b9ba95d918bd1 83b70d3aa8bc6ee4c309e9d85a41ad4a"""),
    ("case 3: AES-256", 256, "abbccddef00112233445566778899aab abbccddef00112233445566778899aab 11223344",
     0x4a2cbfe3, 2, False, "0102030405060708",
     """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000 7002400020bf0000020405b401010402
        01020201""",
     """4a2cbfe3000000020102030405060708 ff425c9b724599df7a3bcd510194e00d 6a78107f1b0b1cbf06efae9d65a5d763
        748a637985771d347f0545659f14e99d ef842d8eb335f4eecfdbf831824b4c49 15956c96"""),
    ("case 5: AES-128, ESN", 128, "3de09874b388e6491988d0c3607eae1f 57690e43", 0x42f67e3f,
     0x1010101010101010, True, "4e280000a2fca1a3",
     """4500003c99c300008001cb7c40679318 010101010800085c0200430061626364 65666768696a6b6c6d6e6f7071727374
        75767761626364656667686901020201""",
     """42f67e3f101010104e280000a2fca1a3 fba2caa4853cf9f0f22cb10d86dd83b0 fec75691cf1a04b00d1138ec9c357917
        65acbd8701ad79845bf9fe3fba487bc9 1755e6662b4c8d0d1f5e22739530320a e0d731cc978ecafaeae88f00e80d6e48"""),
    ("case 6: AES-256, ESN", 256,
     "abbccddef00112233445566778899aab abbccddef00112233445566778899aab 73616c74", 0x17405e67,
     0x156f3126dd0db99b, True, "616e640169766563",
     """45080028732c00004006e9f90a010612 0a01038f06b88023dd6bafbecb712602 50101f646d540001""",
     """17405e67dd0db99b616e640169766563 f2d69ecdbd5a0d5b8d5ef38bad4da58d 1f278fde98ef67549d524a3018d9a57f
        f4d3a31ce673119e451626c2415771e3 b7eebca614c89b35"""),
    ("case 8: AES-128, one pad byte, ESN", 128, "abbccddef00112233445566778899aab decaf888", 0x00000100,
     1, True, "cafedebaceface74",
     """4500004933ba00007f119106c3fb1d10 c2b1d326c02831ce0035dd7b800302d5 00004e20001e8c18d75b81dc91baa047
        6b91b924b280389d92c963bac046ec95 9b6266c04722b14923010101""",
     """0000010000000001cafedebaceface74 18a6fd42f72cbf4ab2a2ea901f73d814 e3e7f243d95412e1c349c1d2fbec168f
        9190feebaf2cb01984e65863965d7472 b79da345e0e780191f0d2f0e0f496c22 6f2127b27db35724e7845d68651f57e6
        5f354f75ff17015769623436"""),
    ("case 14: AES-128, empty payload, seq 0xffffffff", 128, "7d773d00c144c525ac619d18c84a3f47 d9664267",
     0x335467ae, 0xFFFFFFFF, False, "43457e9182443bc6", "01020201",
     """335467aeffffffff43457e9182443bc6 437f866bcb3f699fe9b0822bac961c45 04bef270"""),
    ("case 16: AES-256, seq 2^64-1, ESN", 256,
     "6c6567616c697a656d6172696a75616e 61616e64646f69746265666f72656961 7475726e", 0x796b6963,
     0xFFFFFFFFFFFFFFFF, True, "333021696765746d",
     """45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364 65666768696a6b6c6d6e6f7071727374
        01020201""",
     """796b6963ffffffff333021696765746d f97ab2aa356d8edce17644ac8c78e25d d24dedbb29ebf1b64a274b39b49c3a86
        4cd3d78ca4ae68a32b42458fb57dbe82 1dcc63b9d0937ba2945f669368661a32 9fb4c053"""),
]


@pytest.mark.parametrize("case", GCM_CASES, ids=[c[0] for c in GCM_CASES])
def test_draft_mcgrew_gcm_test_01(case):
    _name, bits, key, spi, seq, esn, iv, plaintext, packet = case
    ctx = make_ctx(Transform(Encr.AES_GCM_16, bits, esn=esn), enc_key=h(key), spi=spi)
    payload, next_header = split_plaintext(h(plaintext))
    assert esp_encap(ctx, seq, next_header, payload, iv=h(iv)) == h(packet)
    window = ReplayWindow(64, esn)
    window.update(seq - 1)  # so that ESN inference places the low 32 bits in the vector's subspace
    assert esp_decap(ctx, h(packet), window) == (seq, next_header, payload)
    assert window.top == seq


def test_draft_mcgrew_gcm_test_01_case_4_zero_spi():
    """Case 4 uses SPI 0, which no SA may have (RFC 4303 §2.1); test the cipher layer directly."""
    cipher = EspCipher(Transform(Encr.AES_GCM_16, 128), h("00000000000000000000000000000000 00000000"), b"")
    plaintext = h("""4500003c99c500008001cb7a40679318 010101010800075c0200440061626364
                     65666768696a6b6c6d6e6f7071727374 75767761626364656667686901020201""")
    sealed = h("""4688daf2f973a392732909c331d56d60 f694abaa414b5e7ff5fdcdfff5e9a284 456476492719ffb64de7d9dca1e1d894
                  bc3bd57873ed4d181d19d4d5c8c18af3 f821d496eeb096e98ad2b69e4799c71d""")
    header, iv = h("00000000 00000001"), bytes(8)
    assert cipher.seal(header, b"", iv, plaintext) == sealed
    assert cipher.open(header, b"", iv, sealed) == plaintext


def test_rfc7634_appendix_a_chacha20_poly1305():
    """RFC 7634 appendix A: an ESP packet (tunnel mode, ICMP echo inside) with ChaCha20-Poly1305."""
    ctx = make_ctx(Transform(Encr.CHACHA20_POLY1305, 256), spi=0x01020304,
                   enc_key=h("""80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
                                90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3"""))
    inner = h("""45 00 00 54 a6 f2 00 00 40 01 e7 78 c6 33 64 05 c0 00 02 05 08 00 5b 7a 3a 08 00 00 55 3b ec 10
                 00 07 36 27 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23
                 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33 34 35 36 37""")
    packet = h("""01 02 03 04 00 00 00 05 10 11 12 13 14 15 16 17
                  24 03 94 28 b9 7f 41 7e 3c 13 75 3a 4f 05 08 7b 67 c3 52 e6 a7 fa b1 b9 82 d4 66 ef 40 7a e5 c6
                  14 ee 80 99 d5 28 44 eb 61 aa 95 df ab 4c 02 f7 2a a7 1e 7c 4c 4f 64 c9 be fe 2f ac c6 38 e8 f3
                  cb ec 16 3f ac 46 9b 50 27 73 f6 fb 94 e6 64 da 91 65 b8 28 29 f6 41 e0
                  76 aa a8 26 6b 7f b0 f7 b1 1b 36 99 07 e1 ad 43""")
    assert esp_encap(ctx, 5, 4, inner, iv=h("1011121314151617")) == packet
    assert esp_decap(ctx, packet, ReplayWindow(32, False)) == (5, 4, inner)


# --- RFC 3602 §4 cases 5-8: AES-CBC-128 ESP packets (SPI..ciphertext; they carry no ICV) ---------------------
CBC_CASES = [
    ("case 5: transport, ICMP", "90d382b4 10eeba7a d938c46c ec1a82bf", 0x4321, 1, 1,
     "e96e8c08 ab465763 fd098d45 dd3ff893",
     """08000ebd a70a0000 8e9c083d b95b0700 08090a0b 0c0d0e0f 10111213 14151617
        18191a1b 1c1d1e1f 20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637""",
     """00004321 00000001 e96e8c08 ab465763 fd098d45 dd3ff893
        f663c25d 325c18c6 a9453e19 4e120849 a4870b66 cc6b9965 330013b4 898dc856
        a4699e52 3a55db08 0b59ec3a 8e4b7e52 775b07d1 db34ed9c 538ab50c 551b874a
        a269add0 47ad2d59 13ac19b7 cfbad4a6"""),
    ("case 6: transport, ICMP", "90d382b4 10eeba7a d938c46c ec1a82bf", 0x4321, 8, 1,
     "69d08df7 d203329d b093fc49 24e5bd80",
     "0800b5e8 a80a0500 a69c083d 0b660e00 77777777 77777777 77777777",
     """00004321 00000008 69d08df7 d203329d b093fc49 24e5bd80
        f5199588 1ec4e0c4 488987ce 742e8109 689bb379 d2d750c0 d915dca3 46a89f75"""),
    ("case 7: tunnel, IPv4", "01234567 89abcdef 01234567 89abcdef", 0x8765, 2, 4,
     "f4e76524 4f6407ad f13dc138 0f673f37",
     """45000054 09040000 4001f988 c0a87b03 c0a87bc8 08009f76 a90a0100 b49c083d
        02a20400 08090a0b 0c0d0e0f 10111213 14151617 18191a1b 1c1d1e1f 20212223
        24252627 28292a2b 2c2d2e2f 30313233 34353637""",
     """00008765 00000002 f4e76524 4f6407ad f13dc138 0f673f37
        773b5241 a4c44922 5e4f3ce5 ed611b0c 237ca96c f74a9301 3c1b0ea1 a0cf70f8
        e4ecaec7 8ac53aad 7a0f022b 859243c6 47752e94 a859352b 8a4d4d2d ecd136e5
        c177f132 ad3fbfb2 201ac990 4c74ee0a 109e0ca1 e4dfe9d5 a100b842 f1c22f0d"""),
    ("case 8: tunnel, IPv4", "01234567 89abcdef 01234567 89abcdef", 0x8765, 5, 4,
     "85d47224 b5f3dd5d 2101d4ea 8dffab22",
     """45000044 090c0000 4001f990 c0a87b03 c0a87bc8 0800d63c aa0a0200 c69c083d
        a3de0300 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff""",
     """00008765 00000005 85d47224 b5f3dd5d 2101d4ea 8dffab22
        15b92683 819596a8 047232cc 00f7048f e45318e1 1f8a0f62 ede3c3fc 61203bb5
        0f980a08 c9843fd3 a1b06d5c 07ff9639 b7eb7dfb 3512e5de 435e7207 ed971ef3
        d2726d9b 5ef6affc 6d17a0de cbb13892"""),
]


@pytest.mark.parametrize("case", CBC_CASES, ids=[c[0] for c in CBC_CASES])
def test_rfc3602_cbc_cases_with_hmac_appended(case):
    """The vectors have no integrity, which we refuse (RFC 8221); add HMAC-SHA-256-128 and check that what
    precedes the ICV is the RFC's packet and that the ICV is HMAC(SPI..ciphertext) computed independently."""
    _name, key, spi, seq, next_header, iv, payload, packet = case
    integ_key = bytes(range(32))
    ctx = make_ctx(Transform(Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128), enc_key=h(key),
                   integ_key=integ_key, spi=spi)
    sealed = esp_encap(ctx, seq, next_header, h(payload), iv=h(iv))
    assert sealed[:-16] == h(packet)
    assert sealed[-16:] == hmac.new(integ_key, h(packet), hashlib.sha256).digest()[:16]
    assert esp_decap(ctx, sealed, ReplayWindow(32, False)) == (seq, next_header, h(payload))


def test_cbc_with_esn_authenticates_the_high_bits_without_sending_them():
    """RFC 4303 §2.2.1/§3.3.2.2: the ICV covers SPI || seq_lo || IV || ciphertext || seq_hi."""
    integ_key = bytes(range(48))
    ctx = make_ctx(Transform(Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192, esn=True), integ_key=integ_key)
    seq = (7 << 32) | 3
    packet = esp_encap(ctx, seq, 4, b"inner packet")
    assert packet[4:8] == struct.pack("!I", 3)
    body, icv = packet[:-24], packet[-24:]
    assert icv == hmac.new(integ_key, body + struct.pack("!I", 7), hashlib.sha384).digest()[:24]
    window = ReplayWindow(64, True)
    window.update(seq - 10)
    assert esp_decap(ctx, packet, window) == (seq, 4, b"inner packet")
    wrong_guess = ReplayWindow(64, True)
    wrong_guess.update((8 << 32) | 1)  # infers high bits 8: the ICV must then fail
    with pytest.raises(Drop) as drop:
        esp_decap(ctx, packet, wrong_guess)
    assert drop.value.reason == DropReason.AUTH_FAILED


def test_cbc_packets_in_sequence_are_each_plain_cbc_under_their_own_iv():
    """The CBC contexts live as long as the SA (EspCipher chains packets on them); every packet must still
    decrypt with a fresh, independent AES-CBC under its own IV, and the peer must follow any order."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    transform = Transform(Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128)
    sender, receiver = make_ctx(transform, enc_key=key), make_ctx(transform, enc_key=key)
    packets = []
    for seq in range(1, 41):
        payload = bytes([seq]) * (seq * 7)
        packet = esp_encap(sender, seq, 4, payload)
        iv, ciphertext = packet[8:24], packet[24:-16]
        assert split_plaintext(Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor().update(ciphertext)) == (
            payload, 4)
        packets.append((seq, payload, packet))
    for seq, payload, packet in reversed(packets):
        assert esp_decap(receiver, packet, None) == (seq, 4, payload)


# --- IVs -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encr", [Encr.AES_GCM_16, Encr.CHACHA20_POLY1305])
def test_aead_iv_is_the_sequence_number(encr):
    """RFC 4106 §3.1 / RFC 7634 §2: unique per key; the 64-bit counter is, and never repeats."""
    ctx = make_ctx(Transform(encr, 256, esn=True))
    packet = esp_encap(ctx, (3 << 32) | 9, 4, b"x")
    assert packet[8:16] == ((3 << 32) | 9).to_bytes(8, "big")


def test_cbc_ivs_are_distinct_and_not_predictable_from_the_sequence_number():
    transform = Transform(Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128)
    one, two = make_ctx(transform), make_ctx(transform)  # same keys, same SPI
    ivs = {esp_encap(one, seq, 4, b"")[8:24] for seq in range(1, 2001)}
    assert len(ivs) == 2000
    # The IV key is drawn per SA: knowing one SA's IVs (and all its keys) says nothing about another's.
    assert esp_encap(one, 1, 4, b"")[8:24] != esp_encap(two, 1, 4, b"")[8:24]
    assert esp_encap(one, 1, 4, b"")[8:24] == esp_encap(one, 1, 4, b"")[8:24]
    assert all(len(esp_encap(one, s, 4, b"")) == 8 + 16 + 16 + 16 for s in (1, 2))


# --- round trips and hostile input ---------------------------------------------------------------------------

TRANSFORMS = [
    Transform(Encr.AES_GCM_16, 128),
    Transform(Encr.AES_GCM_16, 256, esn=True),
    Transform(Encr.CHACHA20_POLY1305, 256),
    Transform(Encr.CHACHA20_POLY1305, 256, esn=True),
    Transform(Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
    Transform(Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256, esn=True),
    Transform(Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192),
    Transform(Encr.NULL, 0, Integ.HMAC_SHA2_256_128),
    Transform(Encr.NULL, 0, Integ.HMAC_SHA2_512_256, esn=True),
]
CONTEXTS = [make_ctx(t) for t in TRANSFORMS]
ctx_st = st.sampled_from(CONTEXTS)
payload_st = st.binary(max_size=200)


def seq_st(ctx: EspContext) -> st.SearchStrategy[int]:
    return st.integers(1, (1 << 64) - 1 if ctx.esn else (1 << 32) - 1)


def window_for(ctx: EspContext, seq: int) -> ReplayWindow:
    window = ReplayWindow(64, ctx.esn)
    window.update(max(seq - 1, 0))
    return window


@given(ctx=ctx_st, data=st.data(), payload=payload_st, next_header=st.integers(0, 255))
def test_round_trip(ctx, data, payload, next_header):
    seq = data.draw(seq_st(ctx))
    packet = esp_encap(ctx, seq, next_header, payload)
    assert len(packet) == len(payload) + esp_overhead(ctx, len(payload))
    ciphertext_len = len(packet) - 8 - ctx.cipher.iv_len - ctx.cipher.icv_len
    assert ciphertext_len % ctx.cipher.block_size == 0
    assert ciphertext_len - len(payload) - 2 < ctx.cipher.block_size  # minimal padding, RFC 4303 §2.4
    window = window_for(ctx, seq)
    assert esp_decap(ctx, memoryview(packet), window) == (seq, next_header, payload)
    with pytest.raises(Drop) as drop:  # the same packet again is a replay
        esp_decap(ctx, packet, window)
    assert drop.value.reason == DropReason.REPLAY


def expect_drop(ctx, packet, window, reasons):
    with pytest.raises(Drop) as drop:
        esp_decap(ctx, packet, window)
    assert drop.value.reason in reasons
    return drop.value.reason


@settings(max_examples=30, deadline=None)
@given(ctx=ctx_st, data=st.data(), payload=st.binary(max_size=40), next_header=st.integers(0, 255))
def test_every_single_bit_flip_is_dropped(ctx, data, payload, next_header):
    seq = data.draw(seq_st(ctx))
    packet = esp_encap(ctx, seq, next_header, payload)
    for bit in range(len(packet) * 8):
        flipped = bytearray(packet)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        window = window_for(ctx, seq)
        # SPI bits name another SA; sequence bits may fall left of the window; anything else fails the ICV.
        reason = expect_drop(ctx, bytes(flipped), window, {DropReason.SA_MISMATCH, DropReason.REPLAY,
                                                           DropReason.AUTH_FAILED})
        assert (reason == DropReason.SA_MISMATCH) is (bit < 32)
        assert window.top == max(seq - 1, 0)  # a rejected packet never moves the window


@settings(deadline=None)
@given(ctx=ctx_st, payload=payload_st, cut=st.integers(1, 300))
def test_truncations_are_dropped(ctx, payload, cut):
    packet = esp_encap(ctx, 1, 4, payload)
    cut = min(cut, len(packet))
    expect_drop(ctx, packet[:-cut], ReplayWindow(32, ctx.esn), {DropReason.TRUNCATED, DropReason.AUTH_FAILED})


@given(ctx=ctx_st, junk=st.binary(max_size=300), keep_spi=st.booleans())
def test_random_bytes_only_ever_raise_drop(ctx, junk, keep_spi):
    if keep_spi:
        junk = struct.pack("!I", ctx.spi) + junk
    try:
        esp_decap(ctx, junk, ReplayWindow(32, ctx.esn))
    except Drop:
        pass
    else:
        pytest.fail("random bytes authenticated")


def test_short_and_misaligned_packets_are_truncated():
    ctx = make_ctx(TRANSFORMS[4])  # AES-CBC: 8 + 16 IV + 16 ICV, ciphertext in 16-byte blocks
    good = esp_encap(ctx, 1, 4, b"")
    assert len(good) == 8 + 16 + 16 + 16
    for bad in (good[:8], good[:-1], good[:24] + good[24 + 4:], good + b"\x00" * 4):
        expect_drop(ctx, bad, None, {DropReason.TRUNCATED})
    gcm = make_ctx(TRANSFORMS[0])  # 4-byte alignment applies to AEAD ciphertext too (RFC 4303 §2.4)
    packet = esp_encap(gcm, 1, 4, b"abcd")
    expect_drop(gcm, packet + b"\x00", None, {DropReason.TRUNCATED})


# --- decapsulation order, padding, dummy packets, TFC --------------------------------------------------------

NULL_SHA256 = Transform(Encr.NULL, 0, Integ.HMAC_SHA2_256_128)


def forge_null(ctx: EspContext, seq: int, plaintext: bytes, integ_key: bytes) -> bytes:
    """An ENCR_NULL packet with a valid ICV over any plaintext, well-formed or not."""
    body = struct.pack("!II", ctx.spi, seq) + plaintext
    return body + hmac.new(integ_key, body, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("plaintext", [
    b"data" + bytes([1, 3]) + bytes([2, 4]),  # second padding byte is 3, not 2
    b"dada" + bytes([2, 1]) + bytes([2, 4]),  # 2, 1 instead of 1, 2
    b"dada" + bytes([0, 0]) + bytes([2, 4]),  # zero padding
    bytes([1, 2]) + bytes([7, 4]),  # pad length beyond the plaintext
    bytes([1, 2, 0xFF, 4]),
])
def test_authenticated_packet_with_bad_padding(plaintext):
    integ_key = bytes(range(32))
    ctx = make_ctx(NULL_SHA256, integ_key=integ_key)
    window = ReplayWindow(32, False)
    expect_drop(ctx, forge_null(ctx, 1, plaintext, integ_key), window, {DropReason.BAD_PADDING})
    assert window.top == 0  # bad padding is dropped before the window moves
    good = forge_null(ctx, 1, b"dada" + bytes([1, 2]) + bytes([2, 4]), integ_key)  # control: well-formed
    assert esp_decap(ctx, good, window) == (1, 4, b"dada")


def test_replay_is_checked_before_the_icv_and_forgeries_do_not_move_the_window():
    ctx = make_ctx(TRANSFORMS[0])
    window = ReplayWindow(32, False)
    first = esp_encap(ctx, 1, 4, b"one")
    esp_decap(ctx, first, window)
    garbage_replay = first[:8] + bytes(len(first) - 8)
    expect_drop(ctx, garbage_replay, window, {DropReason.REPLAY})  # rejected without touching the cipher
    forged = bytearray(esp_encap(ctx, 2, 4, b"two"))
    forged[-1] ^= 1
    expect_drop(ctx, bytes(forged), window, {DropReason.AUTH_FAILED})
    assert esp_decap(ctx, esp_encap(ctx, 2, 4, b"two"), window) == (2, 4, b"two")


def test_spi_mismatch():
    ctx, other = make_ctx(TRANSFORMS[0], spi=0x1000), make_ctx(TRANSFORMS[0], spi=0x1001)
    expect_drop(other, esp_encap(ctx, 1, 4, b"x"), None, {DropReason.SA_MISMATCH})


def test_without_a_window_nothing_is_replay_checked():
    ctx = make_ctx(TRANSFORMS[2])
    packet = esp_encap(ctx, 9, 41, b"v6")
    assert esp_decap(ctx, packet, None) == esp_decap(ctx, packet, None) == (9, 41, b"v6")


def test_dummy_packet_is_returned_as_such():
    ctx = make_ctx(TRANSFORMS[0])
    assert esp_decap(ctx, esp_encap(ctx, 1, 59, b""), None) == (1, 59, b"")  # RFC 4303 §2.6


def test_tfc_padding_only_where_the_payload_states_its_length():
    ctx = make_ctx(TRANSFORMS[0], tfc_pad=100)
    with_tfc = esp_encap(ctx, 1, 4, b"ip")
    assert esp_decap(ctx, with_tfc, None) == (1, 4, b"ip" + bytes(100))  # the inner header's length trims it
    assert len(with_tfc) == 2 + esp_overhead(ctx, 2)
    transport_tcp = esp_encap(ctx, 2, 6, b"tcp")  # RFC 4303 §2.7: TCP has no length of its own
    assert esp_decap(ctx, transport_tcp, None) == (2, 6, b"tcp")


def test_sequence_number_limits():
    plain, esn = make_ctx(TRANSFORMS[0]), make_ctx(TRANSFORMS[1])
    with pytest.raises(Drop) as drop:
        esp_encap(plain, 1 << 32, 4, b"")  # RFC 4303 §3.3.3: never cycle
    assert drop.value.reason == DropReason.SEQ_EXHAUSTED
    with pytest.raises(Drop):
        esp_encap(esn, 1 << 64, 4, b"")
    with pytest.raises(ValueError):
        esp_encap(plain, 0, 4, b"")
    assert esp_encap(esn, 1 << 32, 4, b"")[4:8] == bytes(4)  # only the low 32 bits travel


@pytest.mark.parametrize(("transform", "enc_key_len"), [
    (Transform(Encr.AES_GCM_16, 128, Integ.HMAC_SHA2_256_128), 20),  # AEAD with a separate ICV
    (Transform(Encr.AES_CBC, 128), 16),  # CBC without integrity
    (Transform(Encr.NULL, 0), 0),  # NULL without integrity (RFC 8221 §5)
    (Transform(None, 0, Integ.HMAC_SHA2_256_128), 0),  # that is AH
    (Transform(Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128), 15),  # wrong key length
    (Transform(Encr.AES_CBC, 120, Integ.HMAC_SHA2_256_128), 15),  # no such AES
])
def test_invalid_transforms_are_refused(transform, enc_key_len):
    with pytest.raises(ValueError):
        EspCipher(transform, bytes(enc_key_len), bytes(transform.integ_key_len))


def test_ah_params_are_refused():
    params = SAParams(spi=0x1000, protocol=Protocol.AH, direction=Direction.IN, mode=Mode.TUNNEL,
                      transform=Transform(None, 0, Integ.HMAC_SHA2_256_128), local=A, remote=B,
                      integ_key=bytes(32))
    with pytest.raises(ValueError):
        EspContext(params)


# --- cross-check with scapy's independent ESP implementation -------------------------------------------------

SCAPY_NAMES = {Encr.AES_GCM_16: "AES-GCM", Encr.CHACHA20_POLY1305: "CHACHA20-POLY1305", Encr.AES_CBC: "AES-CBC",
               Encr.NULL: "NULL"}
SCAPY_INTEG = {None: "NULL", Integ.HMAC_SHA2_256_128: "SHA2-256-128", Integ.HMAC_SHA2_384_192: "SHA2-384-192",
               Integ.HMAC_SHA2_512_256: "SHA2-512-256"}


def scapy_sa(ctx: EspContext, transform: Transform, seq: int):
    from scapy.layers.inet import IP
    from scapy.layers.ipsec import ESP, SecurityAssociation

    return SecurityAssociation(
        ESP, spi=ctx.spi, seq_num=seq & 0xFFFFFFFF, crypt_algo=SCAPY_NAMES[transform.encr],
        crypt_key=bytes(range(transform.enc_key_len)) or None, auth_algo=SCAPY_INTEG[transform.integ],
        auth_key=bytes(range(100, 100 + transform.integ_key_len)) or None,
        tunnel_header=IP(src=str(A), dst=str(B)), esn_en=transform.esn, esn=seq >> 32)


@pytest.mark.parametrize("index", range(len(TRANSFORMS)), ids=[f"{t.encr.name}-{t.integ}" for t in TRANSFORMS])
def test_scapy_decrypts_ours_and_we_decrypt_scapys(index):
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.ipsec import ESP

    transform, ctx = TRANSFORMS[index], CONTEXTS[index]
    seq = (5 << 32) + 77 if transform.esn else 77
    inner = bytes(IP(src="198.51.100.1", dst="203.0.113.1") / ICMP() / (b"xdpsec" * 7))
    sa = scapy_sa(ctx, transform, seq)

    ours = IP(bytes(IP(src=str(A), dst=str(B), proto=50) / esp_encap(ctx, seq, 4, inner)))
    assert bytes(sa.decrypt(ours)) == inner

    theirs = sa.encrypt(IP(inner))
    assert esp_decap(ctx, bytes(theirs[ESP]), window_for(ctx, seq)) == (seq, 4, inner)
