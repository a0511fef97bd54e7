"""COOKIE (RFC 7296 §2.6): a responder with too many half-open IKE SAs answers IKE_SA_INIT statelessly until the
initiator echoes a cookie bound to its Ni, address and SPI; the initiator retries with it, and IKE_AUTH signs
the request that was actually answered (§2.15).

Spoofed requests are A's real IKE_SA_INIT with a fresh initiator SPI, from documentation addresses (RFC 5737)
that B's connection (remote_addrs empty: any peer) accepts.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.exchange.conftest import B_ADDR, GCM, T0, Link, child_up, conn_a, conn_b, seeded_rng, up
from tests.exchange.test_ike_auth import assert_mirror
from xdpsec.ike import cookie as cookie_mod
from xdpsec.ike import events, wire
from xdpsec.ike.consts import ExchangeType, HeaderFlag, KeId, NotifyType, PayloadType
from xdpsec.ike.cookie import COOKIE_LEN, SECRET_GRACE, SECRET_LIFETIME, CookieJar
from xdpsec.ike.manager import IkeManager
from xdpsec.ike.sa import HALF_OPEN_TIMEOUT
from xdpsec.ike.tasks import ike_init

B_IKE = (B_ADDR, 500)
SPOOFED = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(1, 255)]


def responder(threshold: int, **kw) -> IkeManager:
    b = IkeManager([conn_b()], rng=seeded_rng(2), cookie_threshold=threshold, **kw)
    b.strict = True
    return b


def link_to(b: IkeManager) -> Link:
    return Link(IkeManager([conn_a()], rng=seeded_rng(1)), b)


def init_request(seed: int = 99) -> bytes:
    """A real IKE_SA_INIT request (HDR, SAi1, KEi, Ni, N(NAT_DETECTION_*)) from a throwaway initiator."""
    a = IkeManager([conn_a()], rng=seeded_rng(seed))
    a.initiate("a-to-b", "net", T0)
    (data, _src, _dst), = a.datagrams_to_send()
    return data


def spoof(b: IkeManager, template: bytes, rnd: random.Random, count: int, now: float = T0) -> list:
    """`count` copies of `template`, each with a fresh SPIi from a spoofed address and port; B's answers."""
    for i in range(count):
        src = (SPOOFED[i % len(SPOOFED)], rnd.randrange(1024, 65536))
        b.receive_datagram(rnd.randbytes(8) + template[8:], B_IKE, src, now)
    return b.datagrams_to_send()


def is_challenge(data: bytes) -> bytes | None:
    """The cookie if `data` is HDR(SPIi, 0), N(COOKIE) and nothing else."""
    msg = wire.decode(data)
    if (msg.exchange, msg.rspi, msg.is_response, len(msg.payloads)) != (ExchangeType.IKE_SA_INIT, bytes(8), True, 1):
        return None
    body = msg.payloads[0].body
    return body.data if isinstance(body, wire.Notify) and body.type == NotifyType.COOKIE else None


def with_cookie(request: bytes, cookie: bytes) -> bytes:
    """§2.6: the retry is the same request with N(COOKIE) as its first payload."""
    msg = wire.decode(request)
    notify = wire.Payload(PayloadType.NOTIFY, wire.Notify(NotifyType.COOKIE, data=cookie))
    return wire.encode(replace(msg, payloads=(notify, *msg.payloads)))


@pytest.fixture
def dh_calls(monkeypatch) -> list[int]:
    """Every key exchange IKE_SA_INIT creates (the work a flood must not cause); a test clears it once its
    initiators have made theirs."""
    calls: list[int] = []
    real = ike_init.new_key_exchange

    def counting(group):
        calls.append(group)
        return real(group)

    monkeypatch.setattr(ike_init, "new_key_exchange", counting)
    return calls


# --- the responder ----------------------------------------------------------------------------------------------

def test_threshold_turns_cookies_on_and_off():
    b = responder(threshold=2)
    template, rnd = init_request(), random.Random(1)
    # Below the threshold each request gets a full answer (HDR, SAr1, KEr, Nr, ...) and a half-open SA.
    answers = spoof(b, template, rnd, 2)
    assert [is_challenge(d) for d, _l, _r in answers] == [None, None] and b.half_open == 2
    # At the threshold:  HDR(SPIi, 0), SAi1, KEi, Ni  -->
    #                                 <--  HDR(SPIi, 0), N(COOKIE)
    (answer, local, remote), = spoof(b, template, rnd, 1)
    assert len(is_challenge(answer)) == COOKIE_LEN and local == B_IKE and remote[0] == SPOOFED[0]
    assert b.half_open == 2 and b.stats["cookie_sent"] == 1
    # The half-open SAs expire (HALF_OPEN_TIMEOUT): under the threshold again, no cookie is asked for.
    b.handle_timer(T0 + HALF_OPEN_TIMEOUT)
    assert b.half_open == 0
    (answer, _l, _r), = spoof(b, template, rnd, 1, now=T0 + HALF_OPEN_TIMEOUT)
    assert is_challenge(answer) is None and b.half_open == 1 and b.stats["cookie_sent"] == 1


def test_a_flood_above_the_threshold_creates_no_state(dh_calls):
    b = responder(threshold=8)
    template = init_request()
    dh_calls.clear()
    answers = spoof(b, template, random.Random(2), 2000)
    # 8 requests made half-open SAs (and key exchanges); the other 1992 only got a cookie.
    assert b.half_open == 8 and len(b.ike_sas()) == 8 and len(dh_calls) == 8
    cookies = [is_challenge(d) for d, _l, _r in answers]
    assert sum(c is not None for c in cookies) == 1992 == b.stats["cookie_sent"]
    assert len(set(cookies) - {None}) == 1992  # bound to each SPIi and address: all different
    # Each answer goes back to where its request claimed to come from, and is smaller than it: no amplification.
    assert all(len(d) < len(template) for d, _l, _r in answers if is_challenge(d))
    assert b.stats["half_open_limit"] == 0 and b.stats["cookie_ok"] == b.stats["cookie_bad"] == 0


def test_legitimate_initiator_completes_with_a_cookie_and_auth_signs_the_retry():
    b = responder(threshold=4)
    spoof(b, init_request(), random.Random(3), 20)  # 4 half-open, 16 challenged
    link = link_to(b)
    link.a.initiate("a-to-b", "net", link.now)
    # IKE_SA_INIT  HDR(A, 0), SAi1, KEi, Ni  -->
    (first,) = link.flight()
    link.deliver([first])
    #              <--  HDR(A, 0), N(COOKIE)
    (answer,) = link.flight()
    cookie = is_challenge(answer.data)
    assert cookie is not None and b.half_open == 4
    link.deliver([answer])
    # IKE_SA_INIT  HDR(A, 0), N(COOKIE), SAi1, KEi, Ni  -->   (§2.6: "all other payloads unchanged")
    (retry,) = link.flight()
    assert wire.decode(retry.data).payloads == (
        wire.Payload(PayloadType.NOTIFY, wire.Notify(NotifyType.COOKIE, data=cookie)),
        *wire.decode(first.data).payloads)
    link.deliver([retry])
    #              <--  HDR(A, B), SAr1, KEr, Nr, [CERTREQ]
    # IKE_AUTH     HDR, SK {IDi, AUTH, SAi2, TSi, TSr}  -->   AUTH signs the retry, the request B answered (§2.15);
    #              <--  HDR, SK {IDr, AUTH, SAr2, TSi, TSr}   signing the first one would fail authentication here
    link.settle()
    assert_mirror(child_up(link, "a"), child_up(link, "b"))
    assert b.stats["cookie_ok"] == 1 and link.a.stats["cookie_retry"] == 1


def test_cookie_survives_invalid_ke_because_ni_is_kept():
    """§2.6.1: COOKIE, then INVALID_KE_PAYLOAD. A keeps Ni and the cookie, so the cookie still verifies and one
    extra round trip suffices instead of two."""
    ecp = replace(GCM, ke=KeId.ECP256)
    link = Link(IkeManager([conn_a(proposals=(GCM, ecp))], rng=seeded_rng(1)),
                IkeManager([conn_b(proposals=(ecp,))], rng=seeded_rng(2), cookie_threshold=0))
    # HDR(A,0), SAi1, KEi, Ni  -->                      <--  HDR(A,0), N(COOKIE)
    # HDR(A,0), N(COOKIE), SAi1, KEi, Ni  -->           <--  HDR(A,0), N(INVALID_KE_PAYLOAD)
    # HDR(A,0), N(COOKIE), SAi1, KEi', Ni  -->          <--  HDR(A,B), SAr1, KEr, Nr
    up(link)
    assert_mirror(child_up(link, "a"), child_up(link, "b"))
    assert link.b.stats["cookie_sent"] == 1 and link.b.stats["cookie_ok"] == 2
    assert link.a.stats["invalid_ke_retry"] == 1


def _legit(b: IkeManager, request: bytes, src, now: float = T0) -> bytes:
    """B's cookie for `request` from `src`."""
    b.receive_datagram(request, B_IKE, src, now)
    (answer, _l, _r), = b.datagrams_to_send()
    return is_challenge(answer)


def _mutations(cookie: bytes, request: bytes, src):
    """(what, datagram, source, time offset): each must be refused."""
    other = (ipaddress.ip_address("198.51.100.77"), src[1])
    flipped = cookie[:-1] + bytes([cookie[-1] ^ 1])
    msg = wire.decode(request)
    nonce = next(i for i, p in enumerate(msg.payloads) if p.type == PayloadType.NONCE)
    other_ni = replace(msg, payloads=(*msg.payloads[:nonce], wire.Payload(PayloadType.NONCE, wire.Nonce(bytes(32))),
                                      *msg.payloads[nonce + 1:]))
    return [
        ("forged", with_cookie(request, random.Random(4).randbytes(COOKIE_LEN)), src, 0.0),
        ("one bit flipped", with_cookie(request, flipped), src, 0.0),
        ("unknown secret version", with_cookie(request, bytes([cookie[0] ^ 0x80]) + cookie[1:]), src, 0.0),
        ("truncated", with_cookie(request, cookie[:-1]), src, 0.0),
        ("from another address", with_cookie(request, cookie), other, 0.0),
        ("for another SPIi", with_cookie(bytes(8) + request[8:], cookie), src, 0.0),
        ("for another Ni", with_cookie(wire.encode(other_ni), cookie), src, 0.0),
        ("expired", with_cookie(request, cookie), src, SECRET_LIFETIME + SECRET_GRACE),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_cookies_are_refused_with_a_fresh_one(case, dh_calls):
    b = responder(threshold=0)  # always under load
    request, src = init_request(), (SPOOFED[5], 500)
    cookie = _legit(b, request, src)
    dh_calls.clear()
    what, datagram, source, later = _mutations(cookie, request, src)[case]
    b.receive_datagram(datagram, B_IKE, source, T0 + later)
    (answer, _l, remote), = b.datagrams_to_send()
    fresh = is_challenge(answer)
    assert fresh is not None and remote == source, what
    assert b.stats["cookie_bad"] == 1 and b.stats["cookie_ok"] == 0 and b.half_open == 0 and not dh_calls, what
    # The genuine cookie, in time and from the right address, is taken.
    b.receive_datagram(with_cookie(request, cookie), B_IKE, src, T0 + 1)
    assert b.stats["cookie_ok"] == 1 and b.half_open == 1


def test_secret_rotation_keeps_cookies_for_their_grace_period():
    b = responder(threshold=0)
    request, src = init_request(), (SPOOFED[9], 500)
    cookie = _legit(b, request, src)
    # A new secret: the next cookie made after SECRET_LIFETIME uses it (another version).
    later = T0 + SECRET_LIFETIME + 1
    newer = _legit(b, init_request(seed=7), src, now=later)
    assert newer[:4] != cookie[:4]
    # The old cookie still verifies within the grace period...
    b.receive_datagram(with_cookie(request, cookie), B_IKE, src, T0 + SECRET_LIFETIME + SECRET_GRACE - 1)
    assert b.stats["cookie_ok"] == 1 and b.half_open == 1


def test_initiator_follows_at_most_a_few_fresh_cookies():
    """A responder (or someone spoofing it) that answers every try with another cookie: A gives up."""
    link = link_to(responder(threshold=0))
    link.a.initiate("a-to-b", "net", link.now)
    rnd = random.Random(5)
    for _ in range(ike_init.COOKIE_TRIES + 1):
        (request,) = link.flight()
        forged = wire.Message(request.data[:8], bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0,
                              (wire.Payload(PayloadType.NOTIFY, wire.Notify(NotifyType.COOKIE,
                                                                            data=rnd.randbytes(20))),))
        link.a.receive_datagram(wire.encode(forged), request.src, request.dst, link.now)
        link._drain()
    assert link.a.stats["cookie_retry"] == ike_init.COOKIE_TRIES
    assert link.of("a", events.Failure) and link.flight() == [] and link.a.ike_sas() == []



def test_a_late_cookie_answer_to_an_earlier_try_is_ignored():
    """§2.6 with retransmissions: A's first IKE_SA_INIT was sent twice; B answered both with the same cookie.
    The second answer arrives after A retried with that cookie: it must not end the IKE SA, and A's retry
    still completes."""
    b = responder(threshold=4)
    spoof(b, init_request(), random.Random(3), 20)  # 4 half-open: B asks for cookies
    link = link_to(b)
    link.a.initiate("a-to-b", "net", link.now)
    #   HDR(SPIi, 0), SAi1, KEi, Ni  -->   (sent twice: a retransmission)
    (first,) = link.flight()
    link.deliver([first])
    #                               <--  HDR(SPIi, 0), N(COOKIE)        (the answer to the first copy)
    (answer,) = link.flight()
    assert is_challenge(answer.data)
    link.deliver([answer])
    #   HDR(SPIi, 0), N(COOKIE), SAi1, KEi, Ni  -->                    (held back for a moment)
    (retry,) = link.flight()
    #                               <--  HDR(SPIi, 0), N(COOKIE)        (the answer to the retransmission, late)
    link.deliver([answer])
    assert link.a.stats["stale_cookie"] == 1 and link.a.ike_sas() and not link.of("a", events.Failure)
    assert link.flight() == []  # nothing resent: the retry is still outstanding
    link.deliver([retry])
    link.settle()
    assert_mirror(child_up(link, "a"), child_up(link, "b"))

def test_init_request_with_a_nonzero_message_id_keeps_no_state():
    """§2.2: IKE_SA_INIT is message 0. An SA made for another ID would never be answered nor expire."""
    b = responder(threshold=64)
    request = init_request()
    b.receive_datagram(request[:20] + (5).to_bytes(4, "big") + request[24:], B_IKE, (SPOOFED[0], 500), T0)
    assert b.half_open == 0 and b.datagrams_to_send() == [] and b.stats["message_id_out_of_window"] == 1


# --- the cookie itself ------------------------------------------------------------------------------------------

def test_jar_rotation_table():
    jar = CookieJar(seeded_rng(6))
    ni, ip, spi = bytes(range(32)), ipaddress.ip_address("2001:db8::1"), bytes(range(8))
    c0 = jar.make(ni, ip, spi, T0)
    table = [  # (time, cookie made then, is c0 valid then)
        (T0 + SECRET_LIFETIME - 1, True, True),      # same secret
        (T0 + SECRET_LIFETIME, True, True),          # rotated now: c0's secret is the previous one
        (T0 + SECRET_LIFETIME + SECRET_GRACE - 1, False, True),
        (T0 + SECRET_LIFETIME + SECRET_GRACE, False, False),  # its grace is over
    ]
    for now, make, valid in table:
        if make:
            jar.make(ni, ip, spi, now)
        assert jar.verify(c0, ni, ip, spi, now) is valid, now
    # Two rotations later the first secret is gone altogether, whatever the clock says.
    jar.make(ni, ip, spi, T0 + 2 * SECRET_LIFETIME + 1)
    assert not jar.verify(c0, ni, ip, spi, T0)


@given(st.binary(min_size=16, max_size=256), st.binary(min_size=8, max_size=8), st.integers(0, 8 * COOKIE_LEN - 1))
def test_any_bit_flip_is_refused(ni, spi, bit):
    jar = CookieJar(seeded_rng(7))
    ip = ipaddress.ip_address("192.0.2.9")
    cookie = bytearray(jar.make(ni, ip, spi, T0))
    assert jar.verify(bytes(cookie), ni, ip, spi, T0)
    cookie[bit // 8] ^= 1 << (bit % 8)
    assert not jar.verify(bytes(cookie), ni, ip, spi, T0)


def test_cookie_is_hmac_sha256_of_ni_ip_spi():
    """§2.6's recipe, checked against an independent HMAC (RFC 2104 via `cryptography`)."""
    from cryptography.hazmat.primitives import hashes, hmac

    key = seeded_rng(8)(cookie_mod.SECRET_LEN)
    jar = CookieJar(seeded_rng(8))
    ni, ip, spi = b"\x01" * 32, ipaddress.ip_address("198.51.100.3"), b"\x02" * 8
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(ni + ip.packed + spi)
    assert jar.make(ni, ip, spi, T0) == (1).to_bytes(4, "big") + h.finalize()


# --- the stateless path's own encoding and payload walk ---------------------------------------------------------

def test_challenge_is_what_the_wire_module_encodes():
    spi, cookie = bytes(range(8)), bytes(range(36))
    notify = wire.Payload(PayloadType.NOTIFY, wire.Notify(NotifyType.COOKIE, data=cookie))
    assert cookie_mod.challenge(spi, 0, cookie) == wire.encode(
        wire.Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, (notify,)))


def _first_length(data: bytes, delta: int) -> bytes:
    """The first payload's generic header (§3.2) claims `delta` octets more than it has."""
    length = int.from_bytes(data[30:32], "big") + delta
    return data[:30] + length.to_bytes(2, "big") + data[32:]


@pytest.mark.parametrize("what, mutate", [
    ("truncated", lambda d: d[:-1]),
    ("first payload longer than it is", lambda d: _first_length(d, 1)),
    ("first payload shorter than its header", lambda d: d[:30] + (3).to_bytes(2, "big") + d[32:]),
    ("an octet after the last payload", lambda d: d + b"\0"),
    ("a chain announcing a payload that is not there", lambda d: d[:16] + bytes([PayloadType.NONCE]) + d[17:28]),
])
def test_scan_refuses_a_chain_that_lies(what, mutate):
    request = with_cookie(init_request(), bytes(36))
    assert cookie_mod.scan(request, request[16]) is not None
    data = mutate(request)
    assert cookie_mod.scan(data, data[16]) is None, what


@given(st.integers(28, 400), st.binary(max_size=64))
def test_scan_agrees_with_the_full_decoder(cut, junk):
    """Whatever follows a header, the walk never raises; when the full decoder accepts the message, both find the
    same Ni and cookie."""
    request = with_cookie(init_request(), bytes(range(36)))
    data = (request[:cut] + junk)[:len(request)]
    found = cookie_mod.scan(data, data[16])
    try:
        msg = wire.decode(data[:24] + len(data).to_bytes(4, "big") + data[28:])
    except wire.IkeError:
        return
    ni = next((p.body.data for p in msg.payloads if p.type == PayloadType.NONCE), None)
    cookie = next((p.body.data for p in msg.payloads
                   if p.type == PayloadType.NOTIFY and p.body.type == NotifyType.COOKIE), None)
    assert found == (ni, cookie)



def test_ike_sas_per_peer_are_bounded():
    """[limits] ike_sas_per_peer: a responder keeps at most that many IKE SAs for one peer address; the next
    IKE_SA_INIT from that address is dropped and counted, while another address still gets in."""
    b = IkeManager([conn_b()], rng=seeded_rng(2), max_per_peer=3)
    template = init_request()
    rnd = random.Random(5)
    peer, other = (SPOOFED[0], 500), (SPOOFED[1], 500)
    for _ in range(5):
        b.receive_datagram(rnd.randbytes(8) + template[8:], B_IKE, peer, T0)
    assert (b.half_open, b.stats["per_peer_limit"]) == (3, 2)
    b.receive_datagram(rnd.randbytes(8) + template[8:], B_IKE, other, T0)
    assert (b.half_open, b.stats["per_peer_limit"]) == (4, 2)
