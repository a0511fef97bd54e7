"""IKE fragmentation (RFC 7383) as pure functions: the fragment message format, splitting, reassembly and its
limits, with both cipher families (AEAD and CBC + HMAC, whose padding shapes the fragment size).

The format checks follow RFC 7383 §2.5, which draws the Encrypted Fragment payload as:

                         1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    | Next Payload  |C|  RESERVED   |         Payload Length        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        Fragment Number        |        Total Fragments        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                     Initialization Vector                     |
    ~                      Encrypted content                        ~
    |                    Integrity Checksum Data                    |

with Next Payload the first inner payload's type in fragment 1 and zero in the others, Fragment Number from 1
to Total Fragments, Total Fragments not zero, and every fragment carrying the IKE header of the original
message (same SPIs, exchange, flags and Message ID) with Next Payload 53. scapy's IKEv2_Encrypted_Fragment
parses the same bytes independently.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
import scapy.contrib.ikev2 as sc
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpsec.crypto.ikecipher import IkeCipher
from xdpsec.ike import fragment, wire
from xdpsec.ike.consts import ExchangeType, HeaderFlag, PayloadType
from xdpsec.ike.fragment import Discard, Discarded, Reassembly
from xdpsec.sa import Encr, Integ

V4 = ipaddress.ip_address("192.0.2.2")
V6 = ipaddress.ip_address("2001:db8::2")
HEADER = wire.Message(b"I" * 8, b"R" * 8, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)


def gcm() -> tuple[IkeCipher, IkeCipher]:
    """Sender and receiver of one direction: same keys, each with its own state."""
    key = bytes(range(20))
    return IkeCipher(Encr.AES_GCM_16, 128, None, key, b""), IkeCipher(Encr.AES_GCM_16, 128, None, key, b"")


def cbc() -> tuple[IkeCipher, IkeCipher]:
    ke, ka = bytes(range(32)), bytes(range(32, 64))
    return (IkeCipher(Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128, ke, ka),
            IkeCipher(Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128, ke, ka))


CIPHERS = {"aes-gcm-16": gcm, "aes-cbc-hmac-sha256": cbc}


def inner(size: int) -> list[wire.Payload]:
    """An IKE_AUTH-like chain of about `size` octets: an ID, then a CERT padded to the size."""
    return [wire.Payload(PayloadType.IDi, wire.ID(9, b"CN=gw-a")),
            wire.Payload(PayloadType.CERT, wire.Cert(4, bytes(i % 251 for i in range(max(1, size - 20)))))]


def plaintext_of(payloads: list[wire.Payload]) -> tuple[int, bytes]:
    return wire.encode_payloads(payloads)


def receive(r: Reassembly, data: bytes, cipher: IkeCipher, now: float = 0.0):
    return r.receive(wire.decode(data), data, cipher, now)


# --- sizes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,remote,natt,budget", [
    (0, V4, False, 576 - 20 - 8),        # RFC 7383 §2.5.1: IPv4's minimum, less the IP and UDP headers
    (0, V4, True, 576 - 20 - 8 - 4),     # on port 4500 the non-ESP marker (RFC 3948 §2.2) takes four more
    (0, V6, False, 1280 - 40 - 8),       # IPv6's minimum MTU (RFC 8200 §5)
    (1500, V4, False, 1500 - 28),
    (1280, V6, True, 1280 - 52),
])
def test_message_budget(size, remote, natt, budget):
    assert fragment.message_budget(size, remote, natt) == budget


@pytest.mark.parametrize("make", CIPHERS.values(), ids=CIPHERS.keys())
@given(budget=st.integers(100, 2000))
def test_chunk_len_is_the_longest_that_fits(make, budget):
    tx, _ = make()
    n = fragment.chunk_len(tx, budget)
    overhead = wire.IKE_HEADER_LEN + fragment.SKF_HEADER_LEN
    assert overhead + tx.sealed_len(n) <= budget < overhead + tx.sealed_len(n + 1)


def test_chunk_len_refuses_a_budget_without_room():
    tx, _ = gcm()
    with pytest.raises(ValueError):
        fragment.chunk_len(tx, wire.IKE_HEADER_LEN + fragment.SKF_HEADER_LEN + tx.sealed_len(0) - 1)


def test_a_message_that_fits_is_not_fragmented():
    tx, _ = gcm()
    payloads = inner(200)
    first, plain = plaintext_of(payloads)
    whole = wire.IKE_HEADER_LEN + 4 + tx.sealed_len(len(plain))
    assert fragment.split(HEADER, payloads, tx, whole) is None
    assert len(fragment.split(HEADER, payloads, tx, whole - 1)) == 2


# --- the format (RFC 7383 §2.5) -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", CIPHERS.values(), ids=CIPHERS.keys())
def test_fragments_follow_rfc7383_layout(make):
    tx, rx = make()
    payloads = inner(2000)
    first, plain = plaintext_of(payloads)
    budget = fragment.message_budget(0, V4, natt=True)
    frags = fragment.split(HEADER, payloads, tx, budget)
    assert len(frags) == -(-len(plain) // fragment.chunk_len(tx, budget)) >= 4
    chunks = []
    for number, data in enumerate(frags, 1):
        assert len(data) <= budget
        ispi, rspi, nxt, version, exch, flags, msg_id, length = struct.unpack_from("!8s8sBBBBII", data)
        assert (ispi, rspi, version, exch, flags, msg_id) == (b"I" * 8, b"R" * 8, 0x20, 35, 0x08, 1)
        assert nxt == PayloadType.SKF == 53 and length == len(data)
        skf_next, crit, skf_len, frag_number, total = struct.unpack_from("!BBHHH", data, 28)
        assert skf_next == (first if number == 1 else 0)  # §2.5: the first inner type only in fragment 1
        assert crit == 0 and skf_len == len(data) - 28
        assert (frag_number, total) == (number, len(frags))
        # the body is IV | ciphertext | ICV under the keys of the direction, with the headers as associated data
        chunks.append(rx.open(data[:36], data[36:]))
        pkt = sc.IKEv2(data)  # an independent parser reads the same fields
        skf = pkt[sc.IKEv2_Encrypted_Fragment]
        assert (pkt.next_payload, skf.next_payload, skf.frag_number, skf.frag_total, skf.length) == (
            53, skf_next, number, len(frags), skf_len)
        assert bytes(skf.load) == data[36:]
    assert b"".join(chunks) == plain


def test_wire_decodes_and_encodes_skf():
    tx, _ = gcm()
    data = fragment.split(HEADER, inner(1500), tx, 548)[1]
    msg = wire.decode(data)
    body = msg.payloads[-1].body
    assert isinstance(body, wire.EncryptedFragment) and (body.first, body.number) == (0, 2)
    assert wire.encode(wire.Message(msg.ispi, msg.rspi, msg.exchange, msg.flags, msg.msg_id, msg.payloads)) == data


@pytest.mark.parametrize("mangle,why", [
    (lambda d: d[:28] + struct.pack("!BBH", 0, 0, 7) + d[32:35], "SKF body shorter than its two numbers"),
    (lambda d: d[:28] + struct.pack("!BBH", 46, 0, 8) + d[32:36] + d[36:], "the chain goes on after SKF"),
])
def test_wire_rejects_skf_that_lies_about_itself(mangle, why):
    tx, _ = gcm()
    data = fragment.split(HEADER, inner(1500), tx, 548)[1]
    bad = bytearray(mangle(data))
    bad[24:28] = len(bad).to_bytes(4, "big")
    with pytest.raises(wire.IkeError):
        wire.decode(bytes(bad))


@pytest.mark.parametrize("number,total,first", [(0, 3, 0), (4, 3, 0), (2, 3, 35), (1, 0, 35)])
def test_encode_fragment_refuses_impossible_numbering(number, total, first):
    tx, _ = gcm()
    with pytest.raises(ValueError):
        wire.encode_fragment(HEADER, first, number, total, b"x", tx.seal, tx.sealed_len)


# --- reassembly -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", CIPHERS.values(), ids=CIPHERS.keys())
@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(600, 5000))
def test_any_order_with_duplicates_reassembles_the_original(make, data, size):
    tx, rx = make()
    payloads = inner(size)
    first, plain = plaintext_of(payloads)
    frags = fragment.split(HEADER, payloads, tx, 548)
    arrivals = data.draw(st.permutations(frags + data.draw(st.lists(st.sampled_from(frags), max_size=8))))
    r = Reassembly()
    done, seen = [], set()
    for datagram in arrivals:
        if datagram in seen:  # ignored, and counted as such, without being decrypted again
            with pytest.raises(Discarded) as e:
                receive(r, datagram, rx)
            assert e.value.reason == Discard.DUPLICATE
            continue
        result = receive(r, datagram, rx)
        seen.add(datagram)
        if result is not None:
            done.append(result)
            break  # the SA stops feeding fragments of a message once it is whole
    assert done == [(first, plain)]
    assert wire.decode_payloads(*done[0]) == tuple(payloads)
    assert r.pending == 0


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_tampered_fragment_is_never_kept(data):
    tx, rx = gcm()
    frags = fragment.split(HEADER, inner(1500), tx, 548)
    victim = data.draw(st.integers(0, len(frags) - 1))
    bad = bytearray(frags[victim])
    pos = data.draw(st.integers(0, len(bad) - 1))
    bad[pos] ^= data.draw(st.integers(1, 255))
    r = Reassembly()
    try:
        msg = wire.decode(bytes(bad))
    except wire.IkeError:
        return  # a damaged header or length: the manager counts it as malformed
    if fragment.is_fragment(msg):
        with pytest.raises(Discarded) as e:
            r.receive(msg, bytes(bad), rx, 0.0)
        assert e.value.reason in (Discard.INTEGRITY, Discard.BAD, Discard.LIMIT)
    assert r.pending == 0
    # the genuine fragments still make the message
    results = [receive(r, f, rx) for f in frags]
    assert results[-1] is not None and results[:-1] == [None] * (len(frags) - 1)


def test_out_of_range_numbers_and_limits_are_discarded_before_decrypting():
    tx, rx = gcm()
    chunk = b"c" * 100

    def frag(number, total, msg_id=1):
        return wire.encode_fragment(wire.Message(b"I" * 8, b"R" * 8, 35, 8, msg_id), 35 if number == 1 else 0,
                                    number, total, chunk, tx.seal, tx.sealed_len)

    def forged(number, total):  # a valid frame whose numbers were never sealed: only numbering can stop it
        good = bytearray(frag(1, 2))
        good[32:36] = struct.pack("!HH", number, total)
        return bytes(good)

    r = Reassembly()
    for bad, reason in [(forged(0, 2), Discard.BAD), (forged(3, 2), Discard.BAD), (forged(1, 0), Discard.BAD),
                        (forged(1, fragment.MAX_FRAGMENTS + 1), Discard.LIMIT), (forged(2, 2), Discard.INTEGRITY)]:
        with pytest.raises(Discarded) as e:
            receive(r, bad, rx)
        assert e.value.reason == reason
        assert r.pending == 0


def test_total_size_limit():
    tx, rx = gcm()
    big = b"x" * (fragment.MAX_MESSAGE // 2)
    header = wire.Message(b"I" * 8, b"R" * 8, 35, 8, 1)
    frags = [wire.encode_fragment(header, 35 if n == 1 else 0, n, 3, big, tx.seal, tx.sealed_len) for n in (1, 2, 3)]
    r = Reassembly()
    assert receive(r, frags[0], rx) is None
    with pytest.raises(Discarded) as e:
        receive(r, frags[1], rx)
    assert e.value.reason == Discard.LIMIT and r.pending == 1


def test_more_fragments_restart_fewer_are_stale_forged_ones_change_nothing():
    """RFC 7383 §2.6: a greater Total Fragments starts the reassembly over (the sender shrank its fragments,
    §2.5.2); a smaller one is from before and is discarded; neither is believed before it authenticates."""
    tx, rx = gcm()
    payloads = inner(3000)
    large, small = fragment.split(HEADER, payloads, tx, 1200), fragment.split(HEADER, payloads, tx, 548)
    assert len(small) > len(large) >= 3
    r = Reassembly()
    receive(r, large[0], rx)
    forged = bytearray(small[0])
    forged[-1] ^= 1
    with pytest.raises(Discarded):
        receive(r, forged, rx)
    assert r.pending == 1  # the forgery with more fragments did not wipe what we hold
    receive(r, small[1], rx)
    assert r.pending == 1  # started over with the smaller fragments
    with pytest.raises(Discarded) as e:
        receive(r, large[1], rx)
    assert e.value.reason == Discard.BAD
    results = [receive(r, f, rx) for f in small if f != small[1]]
    assert results[-1] == plaintext_of(payloads)


def test_a_new_message_id_or_a_stale_partial_starts_over():
    tx, rx = gcm()
    payloads = inner(1500)
    one = fragment.split(HEADER, payloads, tx, 548)
    two = fragment.split(wire.Message(b"I" * 8, b"R" * 8, 35, 8, 2), payloads, tx, 548)
    r = Reassembly()
    receive(r, one[0], rx, now=0.0)
    receive(r, two[1], rx, now=1.0)
    assert r.pending == 1  # message 1 is over: the SA's window has moved on
    receive(r, two[0], rx, now=2.0 + fragment.REASSEMBLY_TIMEOUT)
    assert r.pending == 1  # the partial message 2 was too old: only this fragment is held


def test_only_an_authentic_first_fragment_asks_for_the_response_again():
    """RFC 7383 §2.6.1: a retransmitted request's fragments trigger one response retransmission, on fragment 1."""
    tx, rx = gcm()
    frags = fragment.split(HEADER, inner(1500), tx, 548)
    assert fragment.asks_for_response(wire.decode(frags[0]), frags[0], rx)
    assert not fragment.asks_for_response(wire.decode(frags[1]), frags[1], rx)
    bad = bytearray(frags[0])
    bad[-1] ^= 0x80
    with pytest.raises(Discarded):
        fragment.asks_for_response(wire.decode(bytes(bad)), bytes(bad), rx)
