"""Lifetimes (soft: rekey, hard: delete) by time, bytes and packets, and rekeys that go wrong: the old SA keeps
working until its hard lifetime, and the failure is counted and reported."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.exchange.conftest import ESP_GCM, T0, conn_a, conn_b, up
from tests.exchange.test_rekey import assert_pair, ike_sa, link_of, only_child, run, with_child
from xdpsec.ike import events
from xdpsec.ike.conf import Lifetime
from xdpsec.ike.consts import KeId
from xdpsec.ike.lifetime import SEQ_LIFE, SEQ_REKEY, Verdict, deadlines, usage_verdict
from xdpsec.sa import Transform

SOFT = Lifetime(rekey_time=100.0, life_time=130.0, rand_time=20.0)


def test_deadlines_jitter_within_rand_time():
    rng_values = iter([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00"])
    got = [deadlines(SOFT, 1000.0, lambda n: next(rng_values)) for _ in range(3)]
    assert got[0] == (1100.0, 1130.0)                      # no jitter
    assert 1080.0 < got[1][0] < 1080.001                   # almost the full rand_time
    assert got[2][0] == 1090.0
    assert deadlines(Lifetime(), 0.0, bytes) == (None, None)
    assert deadlines(Lifetime(rekey_time=50.0, life_time=40.0), 0.0, bytes) == (None, 40.0)  # rekey after the end


def test_usage_verdicts_and_the_sequence_number_ceiling():
    lt = Lifetime(rekey_bytes=1000, life_bytes=2000, rekey_packets=10, life_packets=20)
    table = [((0, 0), Verdict.KEEP), ((1000, 0), Verdict.REKEY), ((0, 10), Verdict.REKEY),
             ((2000, 0), Verdict.EXPIRE), ((0, 20), Verdict.EXPIRE)]
    for (octets, packets), verdict in table:
        assert usage_verdict(lt, False, octets, packets) == verdict
    # RFC 4303 §3.3.3: without ESN the counter must not cycle, whatever the configuration says.
    assert usage_verdict(Lifetime(), False, 0, SEQ_REKEY) == Verdict.REKEY
    assert usage_verdict(Lifetime(), False, 0, SEQ_LIFE) == Verdict.EXPIRE
    assert usage_verdict(Lifetime(rekey_packets=2**40), False, 0, SEQ_REKEY) == Verdict.REKEY
    assert usage_verdict(Lifetime(), True, 0, 2**40) == Verdict.KEEP


def test_soft_lifetime_rekeys_between_rekey_time_minus_rand_time_and_rekey_time():
    link = link_of(with_child(conn_a(), lifetime=SOFT), with_child(conn_b(), lifetime=SOFT))
    up(link)
    run(link, 79.5)
    assert link.a.stats["child_rekey"] == 0
    run(link, 21)
    assert link.a.stats["child_rekey"] == link.b.stats["child_rekey"] == 1
    assert len(link.of("a", events.ChildDown)) == 1
    assert_pair(link)
    child = only_child(link, "a")
    born = child.expire_at - SOFT.life_time          # the new pair's deadlines count from its own birth...
    assert T0 + 80 <= born <= T0 + 100               # ... which was a jittered rekey of the first pair
    assert 80 <= child.rekey_at - born <= 100


def test_responder_honours_its_own_lifetime():
    link = link_of(with_child(conn_a(), lifetime=Lifetime()), with_child(conn_b(), lifetime=SOFT))
    up(link)
    run(link, 101)
    assert link.b.stats["child_rekey"] == 1 and only_child(link, "a").inb.spi == only_child(link, "b").out.spi
    assert isinstance(link.of("a", events.ChildDown)[0], events.ChildDown)


def test_hard_lifetime_deletes_the_child():
    hard = Lifetime(life_time=50.0)
    link = link_of(with_child(conn_a(), lifetime=hard), with_child(conn_b(), lifetime=Lifetime()))
    up(link)
    run(link, 49.5)
    assert only_child(link, "a")
    run(link, 1)
    # INFORMATIONAL  HDR, SK {D(ESP, spi)}  -->  <--  HDR, SK {D(ESP, spi')}
    for s in "ab":
        assert ike_sa(link, s).children == [] and len(link.of(s, events.ChildDown)) == 1
    assert link.a.stats["child_expired"] == 1


def test_ike_lifetime_rekeys_the_ike_sa_then_its_hard_end_deletes_it():
    a = replace(conn_a(), lifetime=Lifetime(rekey_time=200.0, life_time=260.0))
    link = link_of(a, conn_b())
    up(link)
    first = ike_sa(link, "a")
    run(link, 201)
    assert link.a.stats["ike_rekey"] == link.b.stats["ike_rekey"] == 1 and ike_sa(link, "a") is not first
    assert_pair(link)
    b_only = link_of(replace(conn_a(), lifetime=Lifetime(life_time=30.0)), conn_b())
    up(b_only)
    run(b_only, 31)
    assert b_only.a.ike_sas() == [] and b_only.b.ike_sas() == [] and b_only.a.stats["ike_expired"] == 1


@pytest.mark.parametrize(("esn", "rekeys"), [(False, 1), (True, 0)])
def test_packet_count_near_the_sequence_space_end_rekeys_without_esn_only(esn, rekeys):
    counts: dict[int, tuple[int, int]] = {}
    proposals = (replace(ESP_GCM, transform=Transform(ESP_GCM.transform.encr, 128, esn=esn)),)
    link = link_of(with_child(conn_a(), proposals=proposals, lifetime=Lifetime()),
                   with_child(conn_b(), proposals=proposals, lifetime=Lifetime()),
                   usage=lambda spi: counts.get(spi))
    up(link)
    counts[only_child(link, "a").inb.spi] = (0, SEQ_REKEY)
    run(link, 6)
    assert link.a.stats["child_rekey"] == rekeys
    if rekeys:
        assert counts.get(only_child(link, "a").inb.spi) is None  # the new pair starts from zero


def test_reconfigure_reports_and_acts():
    from xdpsec.ike.conf import StartAction

    link = link_of()
    up(link)
    started = replace(conn_a(name="new-conn"), children=(replace(conn_a().children[0],
                                                                 start_action=StartAction.START),))
    diff = link.a.reconfigure([conn_a(), started], link.now)
    assert diff == {"added": ["new-conn"], "removed": [], "changed": [], "unchanged": ["a-to-b"]}
    assert len(link.a.ike_sas()) == 2  # the added one is initiating, the unchanged one untouched
    diff = link.a.reconfigure([replace(conn_a(), dpd_delay=30.0)], link.now)
    assert diff == {"added": [], "removed": ["new-conn"], "changed": ["a-to-b"], "unchanged": []}
    link.settle()
    assert [s["state"] for s in link.a.ike_sas()] == []  # changed without start_action=start: deleted only


def test_byte_hard_limit_deletes():
    counts: dict[int, tuple[int, int]] = {}
    link = link_of(with_child(conn_a(), lifetime=Lifetime(life_bytes=10**6)), conn_b(),
                   usage=lambda spi: counts.get(spi))
    up(link)
    counts[only_child(link, "a").inb.spi] = (10**6, 900)
    run(link, 6)
    assert ike_sa(link, "a").children == [] and link.a.stats["child_expired"] == 1


# --- bad input -----------------------------------------------------------------------------------------------


def test_error_answer_keeps_the_old_pair_and_retries():
    pfs = (replace(ESP_GCM, ke=KeId.CURVE25519),)
    link = link_of(with_child(conn_a(), proposals=pfs), conn_b())  # B accepts no PFS: the rekey is refused
    up(link)
    old = only_child(link, "a")
    link.a.rekey_child("a-to-b", "net", link.now)
    # CREATE_CHILD_SA  {N(REKEY_SA), SA(with KE), Ni, KEi, TSi, TSr}  -->  <--  {N(NO_PROPOSAL_CHOSEN)}
    link.settle()
    assert link.a.stats["rekey_failed"] == 1
    assert link.of("a", events.Failure)[0].reason == "child net: rekey failed: NO_PROPOSAL_CHOSEN"
    assert only_child(link, "a") is old and not link.of("a", events.ChildDown)
    assert_pair(link)
    run(link, 16)  # tried again after REKEY_RETRY (x1 to x1.5)
    assert link.a.stats["rekey_failed"] == 2 and only_child(link, "a") is old


def test_garbage_then_silence_keeps_the_children_until_their_hard_lifetime():
    lt = Lifetime(life_time=1000.0)
    link = link_of(with_child(conn_a(), lifetime=lt), with_child(conn_b(), lifetime=Lifetime()))
    up(link)
    link.a.rekey_child("a-to-b", "net", link.now)
    link.deliver(link.flight())
    response = link.flight()
    assert len(response) == 1
    response[0].data = response[0].data[:28] + bytes(len(response[0].data) - 28)  # garbage inside SK
    link.deliver(response)
    assert link.a.stats["integrity_failed"] + link.a.stats["malformed"] == 1
    for _ in range(400):  # B answers nothing any more
        link.advance(0.5)
        link.flight()
    assert link.a.stats["rekey_failed"] == 1
    assert "no response to rekey CREATE_CHILD_SA" in link.of("a", events.Failure)[-1].reason
    assert link.a.ike_sas() == [] and not link.of("a", events.ChildDown)  # the old pair still works
    link.advance(1000)
    assert len(link.of("a", events.ChildDown)) == 1 and link.a.stats["orphan_expired"] == 1
