"""Rekeying child SAs and the IKE SA (RFC 7296 §1.3.2, §1.3.3, §2.8, §2.18) from either side, make-before-break,
and the collisions of §2.8.1, §2.8.2 and §2.25, in memory with fake time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.exchange.conftest import ESP_GCM, Link, conn_a, conn_b, seeded_rng, up
from tests.exchange.test_ike_auth import assert_carries, assert_mirror
from xdpsec.ike import events
from xdpsec.ike.conf import Lifetime
from xdpsec.ike.consts import KeId
from xdpsec.ike.manager import IkeManager
from xdpsec.ike.tasks.child_rekey import ChildRekey, lowest_nonce_is_ours
from xdpsec.ike.tasks.ike_rekey import IkeRekey

CONN = {"a": "a-to-b", "b": "b-from-a"}
NO_LIFETIME = Lifetime()


def with_child(conn, **kw):
    return replace(conn, children=(replace(conn.children[0], **kw),))


def link_of(a_conn=None, b_conn=None, *, seeds=(1, 2), **kw) -> Link:
    a = IkeManager([a_conn or conn_a()], rng=seeded_rng(seeds[0]), **kw)
    b = IkeManager([b_conn or conn_b()], rng=seeded_rng(seeds[1]), **kw)
    return Link(a, b)


def run(link: Link, seconds: float, step: float = 0.5) -> None:
    """Let time pass with the network delivering as it goes (Link.advance alone holds datagrams back)."""
    for _ in range(int(seconds / step)):
        link.advance(step)
        link.settle()


def ike_sa(link: Link, side: str):
    sas = [s for s in link.side(side)._sas.values() if s.usable]
    assert len(sas) == 1, link.side(side).ike_sas()
    return sas[0]


def only_child(link: Link, side: str):
    children = ike_sa(link, side).children
    assert len(children) == 1, children
    return children[0]


def assert_pair(link: Link) -> None:
    """One child each side, the two halves of the same pair, and it carries traffic."""
    a, b = only_child(link, "a"), only_child(link, "b")
    assert a.out.spi == b.inb.spi and b.out.spi == a.inb.spi
    assert_carries(a.out, b.inb, "198.51.100.1", "198.51.100.129")
    assert_carries(b.out, a.inb, "198.51.100.129", "198.51.100.1")


# --- child SA rekey ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pfs", [None, KeId.CURVE25519])
@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_child_rekey_make_before_break(rekeyer, pfs):
    proposals = (replace(ESP_GCM, ke=pfs),)
    link = link_of(with_child(conn_a(), proposals=proposals), with_child(conn_b(), proposals=proposals))
    up(link)
    old = {s: link.of(s, events.ChildUp)[0] for s in "ab"}
    assert link.side(rekeyer).rekey_child(CONN[rekeyer], "net", link.now) == 1
    other = "b" if rekeyer == "a" else "a"
    # CREATE_CHILD_SA  HDR, SK {N(REKEY_SA, old inbound SPI), SA, Ni, [KEi], TSi, TSr}  -->
    link.deliver(link.flight())
    # The responder has the new pair installed and still the old one: both inbound SAs work (§2.8). It keeps
    # sending on the old pair: the initiator has no inbound SA for the new one until it reads the response.
    responder_up = link.events[other][-1]
    assert type(responder_up) is events.ChildUp and responder_up.activate_out is False
    assert len(ike_sa(link, other).children) == 2
    #                  <--  HDR, SK {SA, Nr, [KEr], TSi, TSr}
    link.deliver(link.flight())
    # The initiator reports the new pair first, then deletes the old one:
    # INFORMATIONAL    HDR, SK {D(ESP, old inbound SPI)}  -->
    #                  <--  HDR, SK {D(ESP, the peer's old inbound SPI)}
    link.settle()
    # The initiator sends on the new pair at once; the responder switches on the old pair's ChildDown.
    assert link.of(rekeyer, events.ChildUp)[1].activate_out is True
    for s in "ab":
        ups, downs = link.of(s, events.ChildUp), link.of(s, events.ChildDown)
        assert ups[0].activate_out is True  # a first child (IKE_AUTH) has nothing to wait for
        assert len(ups) == 2 and [type(e) for e in link.events[s]][-2:] == [events.ChildUp, events.ChildDown]
        assert downs == [events.ChildDown(CONN[s], "net", old[s].out.spi, old[s].inb.spi)]
        new = ups[1]
        assert {new.out.spi, new.inb.spi}.isdisjoint({old[s].out.spi, old[s].inb.spi})
        assert new.out.enc_key != old[s].out.enc_key
        assert link.side(s).stats["child_rekey"] == 1 and link.side(s).stats["rekey_failed"] == 0
    assert_mirror(link.of("a", events.ChildUp)[1], link.of("b", events.ChildUp)[1])
    assert_pair(link)


def test_child_rekey_pfs_is_a_fresh_key_exchange():
    """With a group in the child proposal the request carries KEi (§1.3.3); without, none."""
    for pfs, with_ke in ((KeId.CURVE25519, True), (None, False)):
        proposals = (replace(ESP_GCM, ke=pfs),)
        link = link_of(with_child(conn_a(), proposals=proposals), with_child(conn_b(), proposals=proposals))
        up(link)
        link.a.rekey_child("a-to-b", "net", link.now)
        task = ike_sa(link, "a").outstanding_tasks()[0]
        assert isinstance(task, ChildRekey) and (task.kex is not None) == with_ke
        link.settle()
        assert_pair(link)


# --- IKE SA rekey --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_ike_rekey_moves_children_and_deletes_the_old_sa(rekeyer):
    link = link_of()
    up(link)
    old_a, old_b = ike_sa(link, "a"), ike_sa(link, "b")
    child_a = only_child(link, "a")
    link.side(rekeyer).rekey_ike(CONN[rekeyer], link.now)
    # CREATE_CHILD_SA  HDR(old), SK {SA(IKE, new SPIi), Ni, KEi}  -->
    #                  <--  HDR(old), SK {SA(IKE, new SPIr), Nr, KEr}
    # INFORMATIONAL    HDR(old), SK {D(IKE)}  -->
    #                  <--  HDR(old), SK {}
    link.settle()
    new_a, new_b = ike_sa(link, "a"), ike_sa(link, "b")
    assert (new_a.ispi, new_a.rspi) == (new_b.ispi, new_b.rspi)
    assert {new_a.ispi, new_a.rspi}.isdisjoint({old_a.ispi, old_a.rspi})
    assert new_a.crypto.keys.sk_d != old_a.crypto.keys.sk_d
    assert new_a.initiator == (rekeyer == "a")  # §2.18: the rekey's initiator is the new SA's initiator
    assert only_child(link, "a") is child_a     # the child moved, untouched
    for s in "ab":
        assert [type(e) for e in link.events[s]][-1] is events.IkeUp  # no IkeDown, no ChildDown
        assert not link.of(s, events.ChildDown) and not link.of(s, events.IkeDown)
        assert len(link.side(s).ike_sas()) == 1 and link.side(s).stats["ike_rekey"] == 1
    assert old_a.state.value == old_b.state.value == "dead"
    # The new IKE SA works: a child rekey over it, from the other side.
    other = "b" if rekeyer == "a" else "a"
    link.side(other).rekey_child(CONN[other], "net", link.now)
    link.settle()
    assert_pair(link)
    assert link.a.stats["child_rekey"] == link.b.stats["child_rekey"] == 1


# --- collisions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6), (7, 8)])
def test_simultaneous_child_rekey_keeps_the_pair_without_the_lowest_nonce(seeds):
    link = link_of(seeds=seeds)
    up(link)
    old = only_child(link, "a")
    link.a.rekey_child("a-to-b", "net", link.now)
    link.b.rekey_child("b-from-a", "net", link.now)
    ta, tb = ike_sa(link, "a").outstanding_tasks()[0], ike_sa(link, "b").outstanding_tasks()[0]
    # A: CREATE_CHILD_SA {N(REKEY_SA), SA, Ni(A), ...}  -->  <--  B: CREATE_CHILD_SA {N(REKEY_SA), SA, Ni(B), ...}
    # each answers the other:    {SA, Nr(B), ...}  <--    -->  {SA, Nr(A), ...}
    # §2.8.1: the exchange holding the lowest of the four nonces made the redundant pair; its initiator deletes
    # that pair, the other side deletes the old one.
    link.settle()
    a_lost = lowest_nonce_is_ours((ta.nonce, ta.peer_nonce), (tb.nonce, tb.peer_nonce))
    winner, loser = (tb, ta) if a_lost else (ta, tb)
    assert loser.new not in ike_sa(link, loser.ike is ike_sa(link, "a") and "a" or "b").children
    assert_pair(link)
    survivor_side = "b" if a_lost else "a"
    assert only_child(link, survivor_side) is winner.new
    for s in "ab":
        assert old.inb.spi not in {c.inb.spi for c in ike_sa(link, s).children}
        downs = link.of(s, events.ChildDown)
        assert old.inb.spi in {d.in_spi for d in downs} or old.out.spi in {d.in_spi for d in downs}
        assert link.side(s).stats["rekey_failed"] == 0
    assert link.side("a" if a_lost else "b").stats["rekey_collision_lost"] == 1


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6), (7, 8)])
def test_simultaneous_ike_rekey(seeds):
    link = link_of(seeds=seeds)
    up(link)
    child_a = only_child(link, "a")
    link.a.rekey_ike("a-to-b", link.now)
    link.b.rekey_ike("b-from-a", link.now)
    ta, tb = ike_sa(link, "a").outstanding_tasks()[0], ike_sa(link, "b").outstanding_tasks()[0]
    assert isinstance(ta, IkeRekey) and isinstance(tb, IkeRekey)
    # Both CREATE_CHILD_SA {SA(IKE), Ni, KEi} cross; both are answered; two new IKE SAs exist for a moment.
    # §2.8.2: the one made by the exchange with the lowest nonce is deleted by its initiator, the old SA by the
    # other side; the children end up on the survivor.
    link.settle()
    a_lost = lowest_nonce_is_ours((ta.nonce, ta.peer_nonce), (tb.nonce, tb.peer_nonce))
    survivor = (tb if a_lost else ta).new
    new_a, new_b = ike_sa(link, "a"), ike_sa(link, "b")
    assert (new_a.ispi, new_a.rspi) == (new_b.ispi, new_b.rspi) == (survivor.ispi, survivor.rspi)
    assert only_child(link, "a") is child_a
    for s in "ab":
        assert len(link.side(s).ike_sas()) == 1, link.side(s).ike_sas()
        assert not link.of(s, events.ChildDown) and not link.of(s, events.IkeDown)
    link.a.rekey_child("a-to-b", "net", link.now)  # the survivor works
    link.settle()
    assert_pair(link)


def test_rekey_crossing_a_delete_is_not_retried():
    link = link_of()
    up(link)
    link.a.rekey_child("a-to-b", "net", link.now)
    link.b.terminate_child("b-from-a", "net", link.now)
    # A: CREATE_CHILD_SA {N(REKEY_SA, spi), ...}  -->  <--  B: INFORMATIONAL {D(ESP, spi')}
    # B is closing that child: <-- {N(TEMPORARY_FAILURE)}   (§2.25.1)     A answers the Delete: {D(ESP, spi)} -->
    link.settle()
    for s in "ab":
        assert ike_sa(link, s).children == [] and len(link.of(s, events.ChildDown)) == 1
    assert link.b.stats["child_rekey_rejected_TEMPORARY_FAILURE"] == 1
    assert link.a.stats["rekey_failed"] == 1
    assert "rekey failed: TEMPORARY_FAILURE" in link.of("a", events.Failure)[0].reason
    link.advance(3600)  # nothing comes back to life
    assert ike_sa(link, "a").children == [] and len(link.of("a", events.ChildUp)) == 1


def test_child_sa_not_found_recreates_the_child():
    link = link_of()
    up(link)
    ike_sa(link, "b").children.clear()  # B lost the child (out of sync) without telling A
    link.a.rekey_child("a-to-b", "net", link.now)
    # CREATE_CHILD_SA  {N(REKEY_SA, spi), SA, Ni, TSi, TSr}  -->
    #                  <--  {N(CHILD_SA_NOT_FOUND, spi)}
    # §2.25: A drops its half silently and creates the child from scratch:
    # CREATE_CHILD_SA  {SA, Ni, TSi, TSr}  -->  <--  {SA, Nr, TSi, TSr}
    link.settle()
    assert link.b.stats["child_rekey_rejected_CHILD_SA_NOT_FOUND"] == 1
    assert len(link.of("a", events.ChildDown)) == 1 and len(link.of("a", events.ChildUp)) == 2
    assert_pair(link)


def test_temporary_failure_while_the_ike_sa_is_rekeyed_then_both_retry():
    a_cfg = replace(conn_a(), lifetime=Lifetime(rekey_time=1e6, life_time=2e6))  # lets failures retry
    link = link_of(a_cfg, with_child(conn_b(), lifetime=Lifetime(rekey_time=1e6, life_time=2e6)))
    up(link)
    link.a.rekey_ike("a-to-b", link.now)
    link.b.rekey_child("b-from-a", "net", link.now)
    # A: CREATE_CHILD_SA {SA(IKE), Ni, KEi}  -->  <--  B: CREATE_CHILD_SA {N(REKEY_SA), SA, Ni, TSi, TSr}
    # §2.25.2, both ways:  {N(TEMPORARY_FAILURE)}  <--  -->  {N(TEMPORARY_FAILURE)}
    link.settle()
    assert link.a.stats["child_rekey_rejected_TEMPORARY_FAILURE"] == 1
    assert link.b.stats["error_sent_TEMPORARY_FAILURE"] == 1
    assert link.a.stats["rekey_failed"] == link.b.stats["rekey_failed"] == 1
    run(link, 20)  # jittered retries (sa.retry_at) do not meet again
    assert link.a.stats["ike_rekey"] == link.b.stats["ike_rekey"] == 1
    assert link.a.stats["child_rekey"] == link.b.stats["child_rekey"] == 1
    assert_pair(link)


def test_lowest_nonce_is_an_octet_comparison():
    """§2.8.1: octet by octet, and a nonce that is a prefix of another is the lower one."""
    assert lowest_nonce_is_ours((b"\x01\xff", b"\x09"), (b"\x02", b"\x03"))
    assert not lowest_nonce_is_ours((b"\x02", b"\x03"), (b"\x01\xff", b"\x09"))
    assert lowest_nonce_is_ours((b"\x05\x00", b"\x05"), (b"\x05\x00\x00", b"\x06"))


# --- what the data path makes of the events ------------------------------------------------------------------


class DataPath:
    """One side's data path as the coordinator drives it (xdpsec.coordinator.ChildPairs) from that side's
    events: which SA it sends on, which inbound SPIs it decrypts."""

    def __init__(self, link: Link, side: str):
        self.pairs = pytest.importorskip("xdpsec.coordinator").ChildPairs()
        self.link, self.side, self.seen = link, side, 0

    def follow(self) -> None:
        from xdpsec.coordinator import ChildPair

        evs = self.link.events[self.side]
        for ev in evs[self.seen:]:
            if isinstance(ev, events.ChildUp) and self.pairs.find(ev.child, ev.out.spi, ev.inb.spi) is None:
                pair = ChildPair(ev.out.spi, ev.inb.spi, ev.out.spi, ev.inb.spi)
                self.pairs.add(ev.child, pair, activate=ev.activate_out)
            elif isinstance(ev, events.ChildDown) and (pair := self.pairs.find(ev.child, ev.out_spi, ev.in_spi)):
                self.pairs.remove(ev.child, pair)
        self.seen = len(evs)

    @property
    def sending(self) -> int | None:
        pair = self.pairs.active("net")
        return pair.out_spi if pair else None

    @property
    def decrypting(self) -> set[int]:
        return {p.in_spi for p in self.pairs.of("net")}


def step_through(link: Link, paths: dict[str, DataPath]) -> None:
    """Deliver one datagram at a time (the shell acts on a datagram's events before it sends anything) and
    check after each that neither side stops sending or sends on an SA the other cannot decrypt."""
    for _ in range(40):
        flight = link.flight()
        if not flight:
            return
        for dg in flight:
            link.deliver([dg])
            for p in paths.values():
                p.follow()
            for s, other in (("a", "b"), ("b", "a")):
                sending = paths[s].sending
                assert sending is not None, f"{s} stopped sending mid-rekey"
                assert sending in paths[other].decrypting, (
                    f"{s} sends on {sending:#x}, which {other} cannot decrypt ({paths[other].decrypting})")
    raise AssertionError("the exchanges did not settle")


def assert_paths_mirror(paths: dict[str, DataPath]) -> None:
    a, b = paths["a"], paths["b"]
    assert len(a.pairs.of("net")) == len(b.pairs.of("net")) == 1
    assert a.sending in b.decrypting and b.sending in a.decrypting


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6), (7, 8)])
@pytest.mark.parametrize("who", ["a", "b", "both"])
def test_data_path_never_sends_what_the_peer_cannot_decrypt(who, seeds):
    """Make-before-break end to end (§2.8, §2.8.1): the initiator of a rekey sends on the new pair once it has
    the response, the responder once the old pair's Delete arrives, and the old inbound SA decrypts until its
    own ChildDown; a collision's redundant pair is installed by its responder and removed on its Delete."""
    link = link_of(seeds=seeds)
    up(link)
    paths = {s: DataPath(link, s) for s in "ab"}
    for p in paths.values():
        p.follow()
    assert_paths_mirror(paths)
    for _ in range(3):  # each round replaces the pair on both sides
        before = paths["a"].sending
        for s in ("a", "b") if who == "both" else (who,):
            link.side(s).rekey_child(CONN[s], "net", link.now)
        step_through(link, paths)
        assert_paths_mirror(paths)
        assert paths["a"].sending != before
    assert link.a.stats["rekey_failed"] == link.b.stats["rekey_failed"] == 0


def test_data_path_across_an_ike_rekey_then_a_rekey_crossing_a_delete():
    link = link_of()
    up(link)
    paths = {s: DataPath(link, s) for s in "ab"}
    for p in paths.values():
        p.follow()
    child = paths["a"].sending
    link.b.rekey_ike("b-from-a", link.now)
    step_through(link, paths)
    assert paths["a"].sending == child  # the child moved to the new IKE SA untouched (§2.18)
    link.a.rekey_child("a-to-b", "net", link.now)
    link.b.terminate_child("b-from-a", "net", link.now)
    link.settle()  # §2.25.1: the rekey is refused, the child ends, and no SA of it is left anywhere
    for p in paths.values():
        p.follow()
    assert paths["a"].sending is paths["b"].sending is None
    assert not paths["a"].pairs.of("net") and not paths["b"].pairs.of("net")


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 6), (7, 8)])
def test_ike_rekey_collision_whose_answer_to_the_loser_is_lost(seeds):
    """§2.8.2 with one datagram lost: the answer to the exchange that makes the redundant IKE SA. That SA exists
    at the winner only (it answered); the loser must still learn of it and close it, well before REKEYED_GRACE,
    and the winner must not pull the old SA from under the loser's unanswered request meanwhile."""
    link = link_of(seeds=seeds)
    up(link)
    child_a = only_child(link, "a")
    link.a.rekey_ike("a-to-b", link.now)
    link.b.rekey_ike("b-from-a", link.now)
    ta, tb = ike_sa(link, "a").outstanding_tasks()[0], ike_sa(link, "b").outstanding_tasks()[0]
    # Both CREATE_CHILD_SA {SA(IKE), Ni, KEi} cross and are processed: each side has answered the other.
    link.deliver(link.flight())
    a_lost = lowest_nonce_is_ours((ta.nonce, tb.collision.nonce), (tb.nonce, ta.collision.nonce))
    winner, loser = ("b", "a") if a_lost else ("a", "b")
    # The winner's answer to the loser's request {SA(IKE), Nr, KEr} is lost; the loser's answer arrives.
    responses = link.flight()
    assert sorted(d.sender for d in responses) == ["a", "b"]
    link.deliver([d for d in responses if d.sender == loser])
    run(link, 20)  # the loser's retransmission is answered from the winner's cache (§2.1)
    survivor = (tb if a_lost else ta).new
    for s in "ab":
        sas = link.side(s).ike_sas()
        assert len(sas) == 1, (s, sas)
        assert (sas[0]["ispi"], sas[0]["rspi"]) == (f"{survivor.ispi:016x}", f"{survivor.rspi:016x}")
        assert not link.of(s, events.ChildDown) and not link.of(s, events.IkeDown)
        assert not link.of(s, events.Failure), link.of(s, events.Failure)
        assert link.side(s).stats["rekeyed_ike_expired"] == 0
    assert link.side(loser).stats["rekey_collision_lost"] == 1
    assert link.side(winner).stats["ike_rekey_collision"] == 1
    assert only_child(link, "a") is child_a
    link.a.rekey_child("a-to-b", "net", link.now)  # the survivor works
    link.settle()
    assert_pair(link)
