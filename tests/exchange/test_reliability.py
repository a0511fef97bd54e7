"""Message IDs, the window of one, retransmission and liveness (RFC 7296 §2.1, §2.3, §2.4), and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.exchange.conftest import T0, Link, child_up, conn_a, conn_b, seeded_rng, up
from xdpsec.ike import events
from xdpsec.ike.conf import DpdAction
from xdpsec.ike.manager import IkeManager

#: 4 s, then x1.8 per retransmission (strongSwan's schedule, conf.py defaults): five resends, then one more wait.
SCHEDULE = [4.0 * 1.8 ** n for n in range(6)]


def init_to_auth(link: Link) -> None:
    """Run IKE_SA_INIT only: afterwards A's IKE_AUTH request is in flight."""
    link.a.initiate("a-to-b", "net", link.now)
    link.deliver(link.flight())   # IKE_SA_INIT request
    link.deliver(link.flight())   # IKE_SA_INIT response


def test_retransmitted_request_is_answered_from_cache(make_link):
    link = make_link()
    init_to_auth(link)
    # IKE_AUTH  HDR(msg 1), SK {IDi, AUTH, SAi2, TSi, TSr}  -->   (arrives twice)
    #           <--  HDR(msg 1), SK {IDr, AUTH, SAr2, TSi, TSr}   (sent twice, processed once)
    request = link.flight()
    link.deliver(request + request)
    responses = link.flight()
    assert len(responses) == 2 and responses[0].data == responses[1].data
    assert link.b.stats["response_resent"] == 1
    assert len(link.of("b", events.ChildUp)) == 1
    link.deliver(responses)
    assert link.a.stats["unexpected_response"] == 1  # the second copy answers nothing outstanding
    assert len(link.of("a", events.ChildUp)) == 1


def test_retransmitted_ike_sa_init_finds_the_half_open_sa(make_link):
    link = make_link()
    link.a.initiate("a-to-b", "net", link.now)
    # IKE_SA_INIT  HDR(A,0), SAi1, KEi, Ni  -->   (twice: the responder SPI is still zero, §2.6)
    request = link.flight()
    link.deliver(request + request)
    responses = link.flight()
    assert len(responses) == 2 and responses[0].data == responses[1].data
    assert len(link.b.ike_sas()) == 1 and link.b.stats["response_resent"] == 1
    link.deliver(responses)
    link.settle()
    assert child_up(link, "a").out.spi == child_up(link, "b").inb.spi


def test_lost_response_is_recovered_by_retransmission(make_link):
    link = make_link()
    init_to_auth(link)
    link.deliver(link.flight())   # IKE_AUTH request reaches B
    lost = link.flight()          # ... B's response is lost
    assert len(lost) == 1
    link.advance(SCHEDULE[0] - 0.1)
    assert link.flight() == []    # not yet
    link.advance(0.1)
    # IKE_AUTH  HDR(msg 1), SK {...}  -->  (retransmission, same bytes)
    #           <--  HDR(msg 1), SK {...}  (from B's cache)
    link.settle()
    assert link.a.stats["retransmit"] == 1 and link.b.stats["response_resent"] == 1
    assert child_up(link, "a").out.spi == child_up(link, "b").inb.spi


def test_peer_gone_fails_after_the_schedule(make_link):
    link = make_link()
    link.a.initiate("a-to-b", "net", link.now)
    sent = []
    total = sum(SCHEDULE)
    for wait in SCHEDULE:
        sent += link.flight()     # nothing ever reaches B
        link.advance(wait - 1e-3)
        assert not link.of("a", events.Failure)
        link.advance(1e-3)
    link.advance(1e-3)            # float rounding at T0's magnitude
    sent += link.flight()
    assert len(sent) == 6 and len({d.data for d in sent}) == 1  # the same request, 1 + 5 times
    assert link.now == pytest.approx(T0 + total, abs=0.01)
    assert link.of("a", events.Failure)[0].reason == "no response to IKE_SA_INIT after 5 retransmissions"
    assert link.a.ike_sas() == [] and link.a.get_timer() is None


def test_old_request_outside_the_window_is_dropped(make_link):
    link = make_link()
    init_to_auth(link)
    auth_request = link.flight()
    link.deliver(auth_request)
    link.settle()
    link.a.terminate_child("a-to-b", "net", link.now)
    link.settle()                 # INFORMATIONAL msg 2 done: B's cache now holds msg 2
    link.deliver(auth_request)    # msg 1 again
    assert link.b.stats["message_id_out_of_window"] == 1
    assert link.flight() == []


def test_tampered_message_fails_integrity_and_is_not_answered(make_link):
    link = make_link()
    init_to_auth(link)
    (req,) = link.flight()
    req.data = req.data[:-1] + bytes([req.data[-1] ^ 1])  # flip a bit of the ICV
    link.deliver([req])
    assert link.b.stats["integrity_failed"] == 1 and link.flight() == []


def test_half_open_limit(make_link):
    b = IkeManager([conn_b()], rng=seeded_rng(2), max_half_open=2)
    initiators = [IkeManager([conn_a()], rng=seeded_rng(10 + i)) for i in range(3)]
    for a in initiators:
        link = Link(a, b)
        a.initiate("a-to-b", "net", link.now)
        link.deliver(link.flight())
    assert b.stats["half_open_limit"] == 1 and len(b.ike_sas()) == 2
    link.advance(30.0)            # strongSwan's half-open timeout
    assert b.ike_sas() == [] and b.stats["half_open_expired"] == 2


def test_liveness_check_after_silence(make_link):
    link = make_link(conn_a(dpd_delay=30.0))
    up(link)
    link.advance(29.0)
    assert link.flight() == []
    link.advance(1.0)
    # INFORMATIONAL  HDR, SK {}  -->
    #                <--  HDR, SK {}
    link.settle()
    assert link.b.stats["liveness_answered"] == 1
    assert link.a.ike_sas()[0]["state"] == "established"


def test_dead_peer_restart(make_link):
    net = conn_a().children[0]
    from dataclasses import replace
    link = make_link(conn_a(dpd_delay=30.0, children=(replace(net, dpd_action=DpdAction.RESTART),)))
    up(link)
    link.advance(30.0)
    for wait in SCHEDULE:         # B vanished: every liveness check is lost
        link.flight()
        link.advance(wait)
    assert [type(e) for e in link.events["a"][-3:]] == [events.Failure, events.ChildDown, events.IkeDown]
    # DPD action restart: a new IKE_SA_INIT goes out at once
    (restart,) = link.flight()
    assert restart.data[18] == 34


# --- hostile input: nothing but counters -------------------------------------------------------------------

def _init_request() -> bytes:
    a = IkeManager([conn_a()], rng=seeded_rng(1))
    a.initiate("a-to-b", "net", T0)
    return a.datagrams_to_send()[0][0]


INIT = _init_request()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_ike_sa_init_never_raises(data):
    """Any corruption of a valid request is answered, dropped or counted; strict mode re-raises our bugs."""
    raw = bytearray(INIT)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    b = IkeManager([conn_b()], rng=seeded_rng(2))
    b.strict = True
    a_addr = (conn_a().local_addrs[0], 500)
    b.receive_datagram(bytes(raw[:cut] if data.draw(st.booleans()) else raw), (conn_b().local_addrs[0], 500),
                       a_addr, T0)
    assert b.datagrams_to_send() or sum(b.stats.values()) >= 1  # answered, or dropped and counted


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(blob):
    b = IkeManager([conn_b()], rng=seeded_rng(2))
    b.strict = True
    b.receive_datagram(blob, (conn_b().local_addrs[0], 500), (conn_a().local_addrs[0], 500), T0)
    assert b.datagrams_to_send() == [] and sum(b.stats.values()) == 1


def test_initial_contact_from_a_rebooted_peer_replaces_the_stale_sa(make_link):
    """§2.4: A reboots and negotiates afresh with N(INITIAL_CONTACT): B forgets the IKE SA and child it still
    holds for that identity at once (ChildDown for the old SPIs before ChildUp for the new), instead of keeping
    them until a liveness check fails."""
    link = make_link()
    up(link)
    old = child_up(link, "b")
    # IKE_SA_INIT / IKE_AUTH again from a fresh A:  HDR, SK {IDi, AUTH, N(INITIAL_CONTACT), SAi2, TSi, TSr} -->
    link.a = IkeManager([conn_a()], rng=seeded_rng(99))
    link.a.strict = True
    up(link)
    seen = [e for e in link.events["b"] if isinstance(e, (events.ChildUp, events.ChildDown))]
    assert [type(e).__name__ for e in seen] == ["ChildUp", "ChildDown", "ChildUp"]
    assert (seen[1].out_spi, seen[1].in_spi) == (old.out.spi, old.inb.spi)
    assert seen[2].out.spi != old.out.spi
    assert [sa["state"] for sa in link.b.ike_sas()] == ["established"]
    assert link.b.stats["initial_contact_replaced"] == 1
