"""The Prometheus endpoint of running gateways in the namespace lab (issue 5, point 4): scraped while traffic
flows, its numbers move as they should.

Each gateway serves /metrics on 127.0.0.1:9469 inside its own namespace (`[metrics] listen`), and the test
scrapes it from inside that namespace, the way a Prometheus next to the gateway would; nothing listens or is
reached outside the lab. The exposition is read with prometheus_client's parser. Traffic is bounded: a fixed
number of UDP datagrams at a fixed rate, a few pings, two injected frames.

    hostA ── gwA ══ ESP ══ gwB ── hostB        scrape: nsenter gwA -> http://127.0.0.1:9469/metrics
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.all import ESP, IP, rdpcap

from xdpsec.labconf import PairSpec

pytestmark = pytest.mark.netns

LISTEN = "127.0.0.1:9469"
METRICS = f'[metrics]\nlisten = "{LISTEN}"\n'
N = 2000  # datagrams
SIZE = 1000  # payload octets
RATE = 2000.0  # per second: well below what the gateways carry, so none is lost on the way

_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
"""

_INJECT = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for h in sys.argv[2:]:
    s.send(bytes.fromhex(h))
"""


class Scrape:
    """One scrape: samples by name, each a list of (labels, value); and which families were declared."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[str, list[tuple[dict, float]]] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples.setdefault(s.name, []).append((s.labels, s.value))

    def get(self, name: str, **labels) -> float:
        """The sum of `name` over the samples whose labels include `labels` (0 when there is none)."""
        return sum(v for lab, v in self.samples.get(name, []) if labels.items() <= lab.items())

    def only(self, name: str, **labels) -> dict:
        """The labels of the one sample of `name` that matches `labels`."""
        found = [lab for lab, _v in self.samples.get(name, []) if labels.items() <= lab.items()]
        assert len(found) == 1, (name, labels, found)
        return found[0]


def scrape(lab, node: str, timeout: float = 15.0) -> Scrape:
    """Scrape a gateway's endpoint from inside its namespace, retrying while it starts."""
    deadline = time.monotonic() + timeout
    while True:
        out = lab.run(node, sys.executable, "-c", _SCRAPE, f"http://{LISTEN}/metrics", check=False, timeout=15)
        if out.returncode == 0:
            return Scrape(out.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(f"{node}: no metrics on {LISTEN}: {out.stderr.strip()[-500:]}")
        time.sleep(0.3)


def wait_for(lab, node: str, name: str, value: float, timeout: float = 20.0, **labels) -> Scrape:
    deadline = time.monotonic() + timeout
    while (got := scrape(lab, node)).get(name, **labels) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{node}: {name}{labels} is {got.get(name, **labels)}, not {value}")
        time.sleep(0.3)
    return got


def test_counters_follow_traffic(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=2), extra=(METRICS, METRICS))
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=2).received >= 1  # next hops resolved: nothing is held from here on
    a0, b0 = scrape(lab, ga), scrape(lab, gb)
    out_sa = a0.only("xdpsec_sa_packets_total", direction="out")
    in_sa = b0.only("xdpsec_sa_packets_total", direction="in")
    assert (out_sa["conn"], out_sa["child"]) == ("lab", "net") and out_sa["spi"] == in_sa["spi"]
    for family in ("xdpsec_sa_drops", "xdpsec_worker_drops", "xdpsec_xdp_drops"):
        assert a0.types[family] == "counter", family

    # Scrape while the datagrams flow: every scrape answers in full, and no counter ever goes back.
    blast = {}
    sender = threading.Thread(target=lambda: blast.update(r=lab.udp_blast("hostA", dst, size=SIZE, count=N,
                                                                          rate=RATE, sink="hostB")))
    sender.start()
    seen = [a0]
    while sender.is_alive():
        seen.append(scrape(lab, ga))
        time.sleep(0.2)
    sender.join()
    seen.append(scrape(lab, ga))
    b1 = scrape(lab, gb)
    result = blast["r"]
    assert result.sent == N and result.received >= N * 0.99, result
    assert len(seen) >= 4, "the blast ended before the endpoint could be scraped during it"
    for before, after in zip(seen, seen[1:], strict=False):
        assert after.get("xdpsec_scrape_errors_total") == 0
        for name in ("xdpsec_sa_packets_total", "xdpsec_sa_bytes_total", "xdpsec_worker_rx_packets_total",
                     "xdpsec_xdp_rx_packets_total"):
            assert after.get(name) >= before.get(name), name

    a1 = seen[-1]
    sa = {k: out_sa[k] for k in ("spi", "direction")}
    packets = a1.get("xdpsec_sa_packets_total", **sa) - a0.get("xdpsec_sa_packets_total", **sa)
    octets = a1.get("xdpsec_sa_bytes_total", **sa) - a0.get("xdpsec_sa_bytes_total", **sa)
    assert packets >= N
    # The SA counts the ESP packets it sends: outer IPv4 header, ESP header and IV, the inner IPv4/UDP datagram,
    # padding and ICV (RFC 4303 §2), each within the 1500-octet MTU of the lab.
    assert packets * (20 + 8 + 8 + 20 + 8 + SIZE + 2 + 16) <= octets <= packets * 1500, (packets, octets)
    sb = {k: in_sa[k] for k in ("spi", "direction")}
    assert b1.get("xdpsec_sa_packets_total", **sb) - b0.get("xdpsec_sa_packets_total", **sb) >= result.received
    assert b1.get("xdpsec_sa_bytes_total", **sb) - b0.get("xdpsec_sa_bytes_total", **sb) >= result.received * SIZE
    assert a1.get("xdpsec_worker_rx_packets_total") - a0.get("xdpsec_worker_rx_packets_total") >= N
    assert a1.get("xdpsec_xdp_protect_packets_total") - a0.get("xdpsec_xdp_protect_packets_total") >= N
    assert a1.get("xdpsec_xdp_rx_packets_total") - a0.get("xdpsec_xdp_rx_packets_total") >= N
    # The endpoint and `xdpsec sas` read the same counters.
    assert gws.sa(ga, "out")["packets"] >= a1.get("xdpsec_sa_packets_total", **sa) >= packets

    # Drops move too: a replayed ESP packet, sent twice, is two replay drops of gwB's inbound SA.
    cap = lab.capture("wire", "br0", filter="esp", count=4)
    assert lab.ping("hostA", dst, count=2).received >= 1
    frames = [bytes(p) for p in rdpcap(str(cap.wait(10))) if p.haslayer(ESP) and p[IP].dst == lab.addr["gwB"]["wan_v4"]]
    assert frames, "no ESP toward gwB captured"
    replays = b1.get("xdpsec_sa_drops_total", reason="replay", **sb)
    lab.run("gwA", sys.executable, "-c", _INJECT, "wan0", frames[0].hex(), frames[0].hex())
    wait_for(lab, gb, "xdpsec_sa_drops_total", replays + 2, timeout=10, reason="replay", **sb)


def test_ike_state_and_connections_down(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1),
                              extra=(METRICS, METRICS))
    for node in (ga, gb):
        got = wait_for(lab, node, "xdpsec_ike_child_up", 1, conn="lab", child="net")
        assert got.get("xdpsec_ike_connection_up", conn="lab") == 1
        assert got.get("xdpsec_ike_sas", state="established") == 1
        assert got.types["xdpsec_ike_handshake_seconds"] == "summary"
    before = scrape(lab, ga)
    sa = before.only("xdpsec_sa_packets_total", direction="out")
    assert (sa["conn"], sa["child"]) == ("lab", "net")
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=5, timeout=8).received >= 4
    after = scrape(lab, ga)
    assert after.get("xdpsec_sa_packets_total", spi=sa["spi"]) - before.get("xdpsec_sa_packets_total",
                                                                             spi=sa["spi"]) >= 5

    # The responder terminates: the initiator's configured connection is down, and the endpoint says so.
    from xdpsec.control import request, socket_path
    request(socket_path(gws.instances[gb]), "terminate", {"conn": "lab"})
    for node in (ga, gb):
        got = wait_for(lab, node, "xdpsec_ike_connection_up", 0, conn="lab")
        assert got.get("xdpsec_ike_child_up", conn="lab", child="net") == 0
        assert got.get("xdpsec_ike_sas", state="established") == 0
        assert got.get("xdpsec_scrape_errors_total") == 0
