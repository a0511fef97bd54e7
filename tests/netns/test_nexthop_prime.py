"""The first datagram after a tunnel comes up arrives: next hops are resolved when the SA is installed, not when
the first packet needs them (issue 4; docs/BENCHMARKS.md's scale run lost 744 of 1000 first datagrams).

    hostA ── gwA (xdpsec) ══ ESP ══ gwB (xdpsec) ── hostB        (site lab, tunnel mode)
    hostC (xdpsec) ════════ ESP ════════ hostD (xdpsec)          (host lab, transport mode)

Each case is a fresh pair of gateways, so nothing is resolved yet anywhere: no neighbour entry in the kernels,
no route in the coordinators or workers. The tunnel comes up by IKE, then hostA (hostC) sends exactly one UDP
datagram, with no ping before it to resolve anything. It must arrive. Three next hops are on its way:

* the outer next hop of the sender's gateway (the peer, or the router toward it): primed at install;
* the inner next hop of the receiving gateway (the decrypted packet to hostB): primed from the child's local
  selectors when they name single hosts (`host_ts`); for a subnet nobody can know which host comes first, so
  the packet is held (xdpsec/dataplane/core.py) and released when the resolution completes.

`wait_for_sas` waits until both gateways show both SAs; the datagram goes out right after.
"""

from __future__ import annotations

import time

import pytest

from xdpsec.dataplane.core import HOLD_PER_DST
from xdpsec.labconf import Gateways, PairSpec, host_sides, site_sides, write_pair

pytestmark = pytest.mark.netns

SETTLE = 30.0  # seconds IKE may take on a busy 2-vCPU VM
PORT = 5207
BURST = 2 * HOLD_PER_DST  # datagrams back to back: twice what a worker holds for one unresolved next hop


def _wait_for_sas(gws, node: str, count: int) -> None:
    deadline = time.monotonic() + SETTLE
    while len(gws.query(node, "sas")) != count:
        assert time.monotonic() < deadline, gws.log(node)
        time.sleep(0.1)


def _host(addr: str) -> str:
    return f"{addr}/{128 if ':' in addr else 32}"


@pytest.fixture
def gateways(make_lab, tmp_path):
    """start(topology, family, host_ts) -> (lab, gateways, sender, receiver, destination address)."""
    started: list[Gateways] = []

    def start(topology: str, family: str, host_ts: bool):
        lab = make_lab(topology=topology)
        if topology == "site":
            a, b = site_sides(lab, inner=(family,), workers=2)
            nodes, ends = ("gwA", "gwB"), ("hostA", "hostB")
            if host_ts:  # one host each side: the receiving gateway can resolve it before any packet
                ha, hb = _host(lab.addr["hostA"][family]), _host(lab.addr["hostB"][family])
                a.local_ts, a.remote_ts, b.local_ts, b.remote_ts = [ha], [hb], [hb], [ha]
            spec = PairSpec(mode="tunnel", keying="ike", workers=2)
        else:
            a, b = host_sides(lab, family=family)
            nodes = ends = ("hostC", "hostD")
            spec = PairSpec(mode="transport", keying="ike", workers=1)
        pa, pb = write_pair(tmp_path, a, b, spec)
        gws = Gateways(lab)
        started.append(gws)
        gws.start(nodes[0], pa, a.instance)
        gws.start(nodes[1], pb, b.instance)
        gws.wait_ready()
        for node in nodes:
            _wait_for_sas(gws, node, 2)
        return lab, gws, nodes, ends, lab.addr[ends[1]][family]

    yield start
    for gws in started:
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, {n: gws.log(n) for n in codes})


@pytest.mark.parametrize(("topology", "family"), [("site", "v4"), ("site", "v6"), ("host", "v4")])
def test_a_burst_right_after_the_tunnel_comes_up_arrives_whole(gateways, topology, family):
    """Single-host selectors: every next hop on the way is resolved at install, so a burst larger than a
    worker's hold queue (HOLD_PER_DST) meets no unresolved next hop and arrives whole."""
    lab, gws, nodes, (src, dst_node), dst = gateways(topology, family, host_ts=True)
    got = lab.udp_blast(src, dst, size=64, count=BURST, port=PORT, sink=dst_node, idle=2.0)
    assert got.sent == BURST and got.received == BURST, (got, _drops(gws, nodes), gws.log(nodes[1]))


def test_first_datagram_to_an_unprimed_subnet_host_is_held_and_released(gateways):
    """Subnet selectors: the receiving gateway cannot know which host comes first. The datagram waits in the
    worker's hold queue for the resolution and then goes on: it arrives."""
    lab, gws, nodes, (src, dst_node), dst = gateways("site", "v4", host_ts=False)
    got = lab.udp_blast(src, dst, size=64, count=1, port=PORT, sink=dst_node, idle=2.0)
    assert got.sent == 1 and got.received == 1, (got, _drops(gws, nodes), gws.log(nodes[1]))


def _drops(gws, nodes) -> dict:
    return {n: [w["drops"] for w in gws.query(n, "stats")["workers"]] for n in nodes}
