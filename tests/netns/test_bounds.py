"""Configured bounds reached in the lab (issue 7 point 4): each is logged, counted and survived.

    hostA ── gwA (xdpsec, small [limits]) ══ ESP ══ gwB (xdpsec, defaults) ── hostB

gwA runs two workers with ``[limits] sas_per_worker = 2``, ``pending_acquires = 1``, ``control_clients = 2``
and five IKE children, each protecting hostA's network to one UDP port of hostB's (disjoint selectors, so the
responder's first-match choice of a child, RFC 7296 §2.9, names the same child on both sides):

* three children with start_action = start: a child puts one SA on each of the two workers, so two fit and
  the third is refused by the SAD (`LimitReached`), logged, counted and deleted towards the peer by its SPI:
  gwB then holds exactly the two that fit;
* two trap children, both sent traffic: the first acquire initiates, the second finds one negotiation pending
  and is ignored (`pending_acquires`), logged and counted; the one initiated is refused like the third child;
* two idle control clients connected: a third is told "too many control clients" and disconnected.

Survived means: gwA keeps running, the two children that fit pass traffic after all of it, the control socket
answers once the idle clients are gone, and both gateways stop cleanly.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from xdpsec.control import RemoteError, request, socket_path
from xdpsec.labconf import Gateways, PairSpec, site_sides, write_pair

pytestmark = pytest.mark.netns

BASE_PORT = 5400
STARTED = ("net", "s2", "s3")  # start_action = start; net is the child render_ike writes, the others extra
TRAPPED = ("t4", "t5")  # start_action = trap
LIMITS = "[limits]\nsas_per_worker = 2\npending_acquires = 1\ncontrol_clients = 2\n"
SETTLE = 20.0  # seconds the IKE exchanges and acquires may take on a busy 2-vCPU VM


def _port(child: str) -> int:
    return BASE_PORT + (STARTED + TRAPPED).index(child)


def _extra_child(name: str, local_ts: str, remote_ts: str, start_action: str) -> str:
    return "\n".join([f"[connections.lab.children.{name}]", f'local_ts = ["{local_ts}"]',
                      f'remote_ts = ["{remote_ts}"]', 'mode = "tunnel"', 'esp_proposals = ["aes128gcm16"]',
                      f'start_action = "{start_action}"', ""])


@pytest.fixture
def bounded(make_lab, tmp_path):
    """The lab and its two gateways as the module docstring draws them: (lab, gateways)."""
    lab = make_lab(topology="site")
    a, b = site_sides(lab, workers=2)
    net_a, net_b = lab.addr["gwA"]["lan_net_v4"], lab.addr["gwB"]["lan_net_v4"]
    a.local_ts, a.remote_ts = [net_a], [f"{net_b}[udp/{_port('net')}]"]
    b.local_ts, b.remote_ts = [f"{net_b}[udp/{_port('net')}]"], [net_a]
    others = [(c, "start") for c in STARTED[1:]] + [(c, "trap") for c in TRAPPED]
    a.extra = "\n".join([*(_extra_child(c, net_a, f"{net_b}[udp/{_port(c)}]", act) for c, act in others), LIMITS])
    b.extra = "\n".join(_extra_child(c, f"{net_b}[udp/{_port(c)}]", net_a, "none") for c, _act in others)
    pa, pb = write_pair(tmp_path, a, b, PairSpec(mode="tunnel", keying="ike", workers=2))
    gws = Gateways(lab)
    try:
        gws.start("gwA", pa, a.instance)
        gws.start("gwB", pb, b.instance)
        gws.wait_ready()
        yield lab, gws
    finally:
        codes = gws.stop()
    assert all(c == 0 for c in codes.values()), (codes, gws.log("gwA"), gws.log("gwB"))


def _installed(gws, node: str = "gwA") -> set[str]:
    """Names of a gateway's children that have an SA pair, as `xdpsec status` shows them."""
    (conn,) = gws.query(node, "status")["connections"]
    return {c["name"] for c in conn["children"] if c.get("state") == "installed"}


def _limits(gws) -> dict[str, int]:
    return gws.query("gwA", "stats")["limits"]


def _full_log(gws) -> str:
    return gws.logs["gwA"].read_text()


def _wait(pred, what: str, gws, timeout: float = SETTLE) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s\n{gws.log('gwA')}")
        time.sleep(0.2)


def _passes(lab, child: str) -> int:
    """Datagrams of 20 hostA -> hostB on the child's port that arrived."""
    return lab.udp_blast("hostA", lab.addr["hostB"]["v4"], size=32, count=20, rate=200, port=_port(child),
                         sink="hostB", idle=1.0).received


#: Five rounds of one datagram to each port given, back to back: the acquires of both children arrive together.
_BOTH_PORTS = """
import socket, sys, time
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(5):
        for port in sys.argv[2:]:
            s.sendto(bytes(32), (sys.argv[1], int(port)))
        time.sleep(0.2)
"""


def _connect_idle(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def test_each_bound_is_logged_counted_and_survived(bounded):
    lab, gws = bounded
    alive = gws.procs["gwA"]

    # sas_per_worker: two of the three started children fit, the third is refused and deleted.
    _wait(lambda: len(_installed(gws)) == 2 and _limits(gws).get("sas_per_worker", 0) >= 1,
          "two children installed and one refused", gws)
    fitted = _installed(gws)
    assert fitted < set(STARTED), fitted
    assert "child SA not installed" in _full_log(gws) and "sas_per_worker" in _full_log(gws), gws.log("gwA")
    assert gws.query("gwA", "stats")["ike"].get("sa_limit", 0) >= 1
    # gwA's Delete named the refused pair (RFC 7296 §1.4.1): gwB removed exactly it and keeps the others.
    _wait(lambda: _installed(gws, "gwB") == fitted, "gwB holding exactly gwA's children", gws)

    # pending_acquires: traffic for both trap children at once; one acquire initiates, the other finds that
    # negotiation pending.
    refused_before = _limits(gws)["sas_per_worker"]
    deadline = time.monotonic() + SETTLE
    while _limits(gws).get("pending_acquires", 0) < 1 or _limits(gws)["sas_per_worker"] <= refused_before:
        assert time.monotonic() < deadline, (_limits(gws), gws.log("gwA"))
        lab.run("hostA", sys.executable, "-c", _BOTH_PORTS, lab.addr["hostB"]["v4"],
                *(str(_port(c)) for c in TRAPPED), timeout=10)
    assert "acquire ignored" in _full_log(gws) and "pending_acquires" in _full_log(gws), gws.log("gwA")
    assert _installed(gws) == fitted  # the initiated trap child did not fit either

    # control_clients: two idle clients hold the socket; a third is turned away, and the socket recovers.
    path = socket_path(gws.instances["gwA"])
    idle = [_connect_idle(path) for _ in range(2)]
    try:
        # The server's accept loop registers both idle clients in its own time (a busy VM may take a while);
        # until then a third is still served. Bounded: 10 s.
        deadline = time.monotonic() + 10.0
        with pytest.raises(RemoteError, match="too many control clients"):
            while time.monotonic() < deadline:
                request(path, "status", timeout=5.0)
                time.sleep(0.2)
    finally:
        for s in idle:
            s.close()
    _wait(lambda: _answers(path), "the control socket answering again", gws, timeout=5.0)
    assert "control: refused a client" in _full_log(gws), gws.log("gwA")

    # survived: gwA runs and the children that fit still carry traffic.
    assert alive.poll() is None, gws.log("gwA")
    for child in fitted:
        assert _passes(lab, child) >= 18, (child, gws.log("gwA"))
    assert _limits(gws)["control_clients"] >= 1, _limits(gws)


def _answers(path) -> bool:
    try:
        request(path, "status", timeout=2.0)
    except RemoteError:
        return False
    return True
