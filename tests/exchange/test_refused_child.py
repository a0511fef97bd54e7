"""A child pair the data path refuses is deleted towards its own peer only (RFC 7296 §1.4.1; issue 4).

    peer 1  192.0.2.1  ──┐
                         ├── IKE ──>  gateway B: a %any responder (IkeService around its IkeManager) over a
    peer 2  192.0.2.3  ──┘            data path with room for one pair ([limits] sas_per_worker reached)

Both peers negotiate child `net` of the same connection: two instances, `b-from-a/net[192.0.2.1]` and
`b-from-a/net[192.0.2.3]`. Peer 1's pair fits; peer 2's is refused (`LimitReached`), so the service must send
peer 2 a Delete for exactly that pair, named by its SPI, and leave peer 1's pair, its IKE SA and peer 2's
IKE SA alone. Deleting by the child's name would take peer 1's pair down as well.

The service runs without its thread and sockets: `pump` carries datagrams between the managers in memory and
hands B's events to the service, as its thread would.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from tests.exchange.conftest import A_NET, B_NET, PSK, Link, child, conn_a, conn_b, psk_round, seeded_rng, up
from xdpsec.ike import events, ts
from xdpsec.ike.conf import AuthMethod, AuthRound
from xdpsec.ike.manager import IkeManager
from xdpsec.ikeservice import IkeService
from xdpsec.sa import LimitReached

PEER1 = ipaddress.ip_address("192.0.2.1")
PEER2 = ipaddress.ip_address("192.0.2.3")


class OnePairDataPath:
    """The Gateway's install/remove seam with room for `room` pairs; what is installed, by instance."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.pairs: dict[str, set[tuple[int, int]]] = {}

    def install(self, instance: str, out, inb, *, activate_out: bool = True) -> None:
        if sum(map(len, self.pairs.values())) >= self.room:
            raise LimitReached(f"room for {self.room} pair(s)")
        self.pairs.setdefault(instance, set()).add((out.spi, inb.spi))

    def remove(self, instance: str, out_spi: int, in_spi: int) -> None:
        self.pairs.get(instance, set()).discard((out_spi, in_spi))
        if not self.pairs.get(instance, True):
            del self.pairs[instance]


def pump(svc: IkeService, peers: dict, seen: dict) -> None:
    """Carry every datagram until none is in flight; B's events go to the service, the peers' into `seen`."""
    for _ in range(30):
        now = time.time()
        flight = [(peers[remote[0]], data, local, remote) for data, local, remote in svc.manager.datagrams_to_send()]
        for peer, data, local, remote in flight:
            peer.receive_datagram(data, remote, local, now)
        for addr, peer in peers.items():
            while (ev := peer.next_event()) is not None:
                seen[addr].append(ev)
            for data, local, remote in peer.datagrams_to_send():
                flight.append((None, data, local, remote))
                with svc.lock:
                    svc.manager.receive_datagram(data, remote, local, now)
        turn = []
        while (ev := svc.manager.next_event()) is not None:
            turn.append(ev)
        svc._apply(turn)  # what the service's thread does with each turn's events
        if not flight and not turn:
            return
    raise AssertionError("the exchanges did not settle")


@pytest.fixture
def responder():
    dp = OnePairDataPath(room=1)
    any_peer = conn_b(remote=AuthRound(AuthMethod.PSK, None, psk=PSK))
    svc = IkeService([any_peer], install=dp.install, remove=dp.remove, spi_in_use=lambda spi: False)
    svc.manager.strict = True  # our bugs must fail the test, not be counted
    yield svc, dp
    svc.stop()


def peer(addr, seed: int) -> IkeManager:
    cfg = conn_a(local_addrs=(addr,), local=psk_round(f"peer{seed}.example"))
    m = IkeManager([cfg], rng=seeded_rng(seed))
    m.strict = True
    return m


def test_the_refused_pair_of_peer_2_is_deleted_and_peer_1s_stays(responder):
    svc, dp = responder
    peers = {PEER1: peer(PEER1, 1), PEER2: peer(PEER2, 2)}
    seen: dict = {PEER1: [], PEER2: []}

    # peer 1: IKE_SA_INIT, IKE_AUTH { ..., SAi2, TSi, TSr } --> ; its pair fits
    peers[PEER1].initiate("a-to-b", "net", time.time())
    pump(svc, peers, seen)
    (p1_up,) = [e for e in seen[PEER1] if isinstance(e, events.ChildUp)]
    assert dp.pairs == {f"b-from-a/net[{PEER1}]": {(p1_up.inb.spi, p1_up.out.spi)}}

    # peer 2: the same, but the data path is full: B answers IKE_AUTH, then
    #   <-- INFORMATIONAL { D(ESP, SPI of peer 2's pair) }
    #       INFORMATIONAL { D(ESP, ...) } -->
    peers[PEER2].initiate("a-to-b", "net", time.time())
    pump(svc, peers, seen)
    (p2_up,) = [e for e in seen[PEER2] if isinstance(e, events.ChildUp)]
    assert [e for e in seen[PEER2] if isinstance(e, events.ChildDown)] == [
        events.ChildDown("a-to-b", "net", p2_up.out.spi, p2_up.inb.spi)]
    assert not [e for e in seen[PEER1] if isinstance(e, events.ChildDown)]  # peer 1 was told nothing
    assert dp.pairs == {f"b-from-a/net[{PEER1}]": {(p1_up.inb.spi, p1_up.out.spi)}}
    assert svc.counters()["sa_limit"] == 1

    # both IKE SAs live on; only peer 1's still has a child
    children = {sa["remote"]: [c["in_spi"] for c in sa["children"]] for sa in svc.ike_sas()
                if sa["state"] == "established"}
    assert children == {f"{PEER1}[500]": [f"{p1_up.out.spi:08x}"], f"{PEER2}[500]": []}


def test_a_pair_no_ike_sa_holds_is_not_deleted(responder):
    """A refusal reported after its IKE SA went away: nothing to delete, nothing sent."""
    svc, _dp = responder
    assert svc.manager.terminate_child_spi(0x1234, time.time()) is False
    assert svc.manager.datagrams_to_send() == []



# --- two peers, one set of selectors (RFC 7296 §2.9: TS_UNACCEPTABLE) -------------------------------------------
#
# Same picture, a data path with room, and the service's `ts_holders` hook answered from what it holds. Peer 2
# asking for traffic peer 1's instance holds would get policies that never win (peer 1's come first): B refuses
# that child with TS_UNACCEPTABLE; in IKE_AUTH peer 2's IKE SA still comes up, without it (§2.21.2).

PEER3 = ipaddress.ip_address("192.0.2.4")
LOW, HIGH = "198.51.100.0/26", "198.51.100.64/26"  # two halves of A_NET, the peers' side


class SelectorDataPath:
    """The Gateway's install/remove seam and its `ts_holders` query: installed pairs' selectors by instance."""

    def __init__(self) -> None:
        self.pairs: dict[str, dict[int, tuple]] = {}  # instance -> out SPI -> (local_ts, remote_ts)

    def install(self, instance: str, out, inb, *, activate_out: bool = True) -> None:
        self.pairs.setdefault(instance, {})[out.spi] = (out.local_ts, out.remote_ts)

    def remove(self, instance: str, out_spi: int, in_spi: int) -> None:
        self.pairs.get(instance, {}).pop(out_spi, None)
        if not self.pairs.get(instance, True):
            del self.pairs[instance]

    def ts_holders(self, local_ts, remote_ts) -> list[str]:
        return [inst for inst, sas in self.pairs.items()
                if any(ts.overlaps(lts, rts, local_ts, remote_ts) for lts, rts in sas.values())]


@pytest.fixture
def hub():
    dp = SelectorDataPath()
    any_peer = conn_b(remote=AuthRound(AuthMethod.PSK, None, psk=PSK))
    svc = IkeService([any_peer], install=dp.install, remove=dp.remove, spi_in_use=lambda spi: False,
                     ts_holders=dp.ts_holders)
    svc.manager.strict = True
    yield svc, dp
    svc.stop()


def asking(addr, seed: int, net=A_NET, identity: int | None = None) -> IkeManager:
    """A peer at `addr` whose child `net` asks for `net` <-> B_NET (identity peer<identity or seed>.example)."""
    cfg = conn_a(local_addrs=(addr,), local=psk_round(f"peer{identity or seed}.example"),
                 children=(child("net", net, B_NET),))
    m = IkeManager([cfg], rng=seeded_rng(seed))
    m.strict = True
    return m


def instance(addr) -> str:
    return f"b-from-a/net[{addr}]"


def ups(seen: list) -> list[events.ChildUp]:
    return [e for e in seen if isinstance(e, events.ChildUp)]


def start(svc, peers: dict, seen: dict, *addrs) -> None:
    for addr in addrs:
        peers[addr].initiate("a-to-b", "net", time.time())
    pump(svc, peers, seen)


def established(svc) -> dict[str, int]:
    """Children of each established IKE SA of B, by peer address."""
    return {sa["remote"].split("[")[0]: len(sa["children"]) for sa in svc.ike_sas() if sa["state"] == "established"}


def test_a_second_peer_asking_for_the_first_ones_selectors_gets_ts_unacceptable(hub, caplog):
    svc, dp = hub
    peers = {PEER1: asking(PEER1, 1), PEER2: asking(PEER2, 2)}
    seen: dict = {PEER1: [], PEER2: []}
    start(svc, peers, seen, PEER1)
    assert list(dp.pairs) == [instance(PEER1)]
    # peer 2: IKE_AUTH { IDi, AUTH, SAi2, TSi(198.51.100.0/25), TSr } -->
    #         <-- IKE_AUTH { IDr, AUTH, N(TS_UNACCEPTABLE) }
    with caplog.at_level("WARNING", logger="xdpsec.ike"):
        start(svc, peers, seen, PEER2)
    assert not ups(seen[PEER2])
    assert [f.reason for f in seen[PEER2] if isinstance(f, events.Failure)] == ["child net: TS_UNACCEPTABLE"]
    assert list(dp.pairs) == [instance(PEER1)]
    assert established(svc) == {str(PEER1): 1, str(PEER2): 0}  # peer 2's IKE SA is up, childless
    assert svc.counters()["ts_in_use"] == 1
    refusals = [r.getMessage() for r in caplog.records if "TS_UNACCEPTABLE" in r.getMessage()]
    assert len(refusals) == 1 and instance(PEER2) in refusals[0] and instance(PEER1) in refusals[0], refusals


def test_peers_asking_for_different_selectors_both_get_them(hub):
    svc, dp = hub
    peers = {PEER1: asking(PEER1, 1, LOW), PEER2: asking(PEER2, 2, HIGH)}
    seen: dict = {PEER1: [], PEER2: []}
    start(svc, peers, seen, PEER1, PEER2)
    assert [str(u.out.local_ts[0]) for a in (PEER1, PEER2) for u in ups(seen[a])] == [LOW, HIGH]
    assert sorted(dp.pairs) == [instance(PEER1), instance(PEER2)]
    assert svc.counters().get("ts_in_use", 0) == 0


def test_two_peers_in_one_turn_do_not_both_get_the_same_selectors(hub):
    """Both IKE_AUTHs arrive before the service installs either child: the first agreed counts too."""
    svc, dp = hub
    peers = {PEER1: asking(PEER1, 1), PEER2: asking(PEER2, 2)}
    seen: dict = {PEER1: [], PEER2: []}
    start(svc, peers, seen, PEER1, PEER2)  # one pump: the IKE_AUTH requests share a turn
    assert len(ups(seen[PEER1])) + len(ups(seen[PEER2])) == 1
    assert len(dp.pairs) == 1 and svc.counters()["ts_in_use"] == 1


def test_the_holder_may_rekey_and_add_children_for_the_same_traffic(hub):
    svc, dp = hub
    peers = {PEER1: asking(PEER1, 1), PEER2: asking(PEER2, 2)}
    seen: dict = {PEER1: [], PEER2: []}
    start(svc, peers, seen, PEER1, PEER2)
    held = next(a for a in (PEER1, PEER2) if ups(seen[a]))
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } -->  <-- { SA, Nr, TSi, TSr }: its own instance
    assert peers[held].rekey_child("a-to-b", "net", time.time()) == 1
    pump(svc, peers, seen)
    # CREATE_CHILD_SA { SA, Ni, TSi, TSr } -->  a second child of the same peer for the same traffic
    start(svc, peers, seen, held)
    assert len(ups(seen[held])) == 3
    assert list(dp.pairs) == [instance(held)] and len(dp.pairs[instance(held)]) == 2
    assert svc.counters()["ts_in_use"] == 1  # the other peer's refusal only


def test_once_the_holders_child_is_gone_another_peer_may_have_its_selectors(hub):
    svc, dp = hub
    peers = {PEER1: asking(PEER1, 1), PEER2: asking(PEER2, 2)}
    seen: dict = {PEER1: [], PEER2: []}
    start(svc, peers, seen, PEER1)
    start(svc, peers, seen, PEER2)
    assert not ups(seen[PEER2])
    peers[PEER1].terminate("a-to-b", time.time())  # INFORMATIONAL { D(IKE) } -->
    pump(svc, peers, seen)
    assert dp.pairs == {}
    start(svc, peers, seen, PEER2)  # CREATE_CHILD_SA on peer 2's childless IKE SA
    assert len(ups(seen[PEER2])) == 1 and list(dp.pairs) == [instance(PEER2)]


def test_a_peer_that_moved_and_says_initial_contact_gets_its_selectors_back(hub):
    """Peer 1 comes back from another address with INITIAL_CONTACT (§2.4): the core drops its old IKE SA before
    the new child is asked for, while the data path still holds the old instance until this turn's events."""
    svc, dp = hub
    peers = {PEER1: asking(PEER1, 1), PEER3: asking(PEER3, 3, identity=1)}
    seen: dict = {PEER1: [], PEER3: []}
    start(svc, peers, seen, PEER1)
    start(svc, peers, seen, PEER3)
    assert len(ups(seen[PEER3])) == 1
    assert list(dp.pairs) == [instance(PEER3)] and svc.counters().get("ts_in_use", 0) == 0


def test_the_core_asks_for_new_children_only_never_for_a_rekey():
    """A hook that refuses everything after the first child: the rekey of that child is not asked (§2.8 keeps
    its selectors), a second child is refused with TS_UNACCEPTABLE and counted."""
    asked = []
    hook = lambda *args: bool(asked.append(args)) or len(asked) > 1  # noqa: E731
    a = IkeManager([conn_a()], rng=seeded_rng(1))
    b = IkeManager([conn_b()], rng=seeded_rng(2), ts_in_use=hook)
    link = Link(a, b)
    up(link)
    assert [x[:3] for x in asked] == [("b-from-a", "net", (ipaddress.ip_address("192.0.2.1"), None))]
    assert a.rekey_child("a-to-b", "net", link.now) == 1
    link.settle()
    assert len(asked) == 1 and b.stats["child_rekey"] == 1
    a.initiate("a-to-b", "net", link.now)
    link.settle()
    assert len(asked) == 2 and b.stats["ts_in_use"] == 1
    assert link.of("a", events.Failure)[-1].reason == "child net: TS_UNACCEPTABLE"
