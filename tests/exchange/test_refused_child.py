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

from tests.exchange.conftest import PSK, conn_a, conn_b, psk_round, seeded_rng
from xdpsec.ike import events
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
        handled = 0
        while (ev := svc.manager.next_event()) is not None:
            svc._event(ev)  # what the service's thread does with each event
            handled += 1
        if not flight and not handled:
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

