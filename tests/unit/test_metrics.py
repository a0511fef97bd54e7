"""xdpsec.metrics: a fake source with known numbers, scraped and read back with prometheus_client's own parser.

What is checked is the exposition a Prometheus server would read: every sample (name, labels, value) of a
scrape is compared with the expected table, no more and no less. A source that fails or returns nonsense
must never make a scrape raise; it only loses its part and counts a scrape error. The HTTP endpoint is
exercised in a network namespace of its own (`unshare --net`), so nothing outside the test is ever bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter, deque
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xdpsec import metrics
from xdpsec.metrics import IkeView, handshake_summary, registry_for

SAS = [
    {"index": 1, "name": "net-net/child", "direction": "out", "spi": "0x0000c1a0", "worker": 0,
     "packets": 1000, "bytes": 150000, "drops": {}},
    {"index": 2, "name": "net-net/child", "direction": "in", "spi": "0x0000b00f", "worker": 1,
     "packets": 990, "bytes": 148500, "drops": {"replay": 2, "auth_failed": 1}},
]
STATS = {
    "workers": [
        {"id": 0, "pid": 10, "alive": True, "restarts": 0, "rx": 1200, "tx": 1190, "handoff_in": 5,
         "handoff_out": 7, "drops": {"no_neighbor": 3}, "sockets": {"wan0/q0": {"rx_dropped": 0, "rx_ring_full": 4}},
         "loop": {"rounds": 500, "busy_rounds": 60, "frames": 1207, "kicks": 58, "kick_frames": 1190, "sleeps": 30}},
        {"id": 1, "pid": 11, "alive": False, "restarts": 2, "rx": 800, "tx": 790, "handoff_in": 7,
         "handoff_out": 5, "drops": {}, "sockets": {}, "loop": {}},
    ],
    "xdp": {"stats": {"rx": 2100, "pass": 60, "ike": 8, "protect": 1000}, "drops": {"no_sa": 9, "policy_discard": 1}},
}
IKE = IkeView(
    sas=[{"conn": "net-net", "state": "established", "children": [{"name": "child"}]},
         {"conn": "road", "state": "connecting", "children": []}],
    stats=Counter({"retransmit": 4, "child_rekey": 3, "ike_rekey": 1, "rekey_failed": 1, "ike_established": 5,
                   "unknown_spi": 6, "integrity_failed": 2}),
    handshakes=deque([0.2, 0.1, 0.4, 0.3], maxlen=1024),
    conns={"net-net": ["child", "spare"], "road": ["rw"]},
)

SA_OUT = {"conn": "net-net", "child": "child", "spi": "0x0000c1a0", "direction": "out", "worker": "0"}
SA_IN = {"conn": "net-net", "child": "child", "spi": "0x0000b00f", "direction": "in", "worker": "1"}

#: Every sample of a scrape of the source above: (name, labels, value).
EXPECTED = [
    ("xdpsec_sa_packets_total", SA_OUT, 1000), ("xdpsec_sa_packets_total", SA_IN, 990),
    ("xdpsec_sa_bytes_total", SA_OUT, 150000), ("xdpsec_sa_bytes_total", SA_IN, 148500),
    ("xdpsec_sa_drops_total", {**SA_IN, "reason": "auth_failed"}, 1),
    ("xdpsec_sa_drops_total", {**SA_IN, "reason": "replay"}, 2),
    ("xdpsec_worker_rx_packets_total", {"worker": "0"}, 1200), ("xdpsec_worker_rx_packets_total", {"worker": "1"}, 800),
    ("xdpsec_worker_tx_packets_total", {"worker": "0"}, 1190), ("xdpsec_worker_tx_packets_total", {"worker": "1"}, 790),
    ("xdpsec_worker_handoff_packets_total", {"worker": "0", "direction": "in"}, 5),
    ("xdpsec_worker_handoff_packets_total", {"worker": "0", "direction": "out"}, 7),
    ("xdpsec_worker_handoff_packets_total", {"worker": "1", "direction": "in"}, 7),
    ("xdpsec_worker_handoff_packets_total", {"worker": "1", "direction": "out"}, 5),
    ("xdpsec_worker_drops_total", {"worker": "0", "reason": "no_neighbor"}, 3),
    ("xdpsec_worker_restarts_total", {"worker": "0"}, 0), ("xdpsec_worker_restarts_total", {"worker": "1"}, 2),
    ("xdpsec_worker_up", {"worker": "0"}, 1), ("xdpsec_worker_up", {"worker": "1"}, 0),
    ("xdpsec_xsk_events_total", {"worker": "0", "socket": "wan0/q0", "event": "rx_dropped"}, 0),
    ("xdpsec_xsk_events_total", {"worker": "0", "socket": "wan0/q0", "event": "rx_ring_full"}, 4),
    # worker 1 is dead and answered no loop counters: no series, rather than counters that fall back to 0
    ("xdpsec_worker_rounds_total", {"worker": "0", "kind": "busy"}, 60),
    ("xdpsec_worker_rounds_total", {"worker": "0", "kind": "idle"}, 440),
    ("xdpsec_worker_round_frames_total", {"worker": "0"}, 1207),
    ("xdpsec_worker_tx_kicks_total", {"worker": "0"}, 58),
    ("xdpsec_worker_tx_kick_frames_total", {"worker": "0"}, 1190),
    ("xdpsec_worker_sleeps_total", {"worker": "0"}, 30),
    ("xdpsec_xdp_rx_packets_total", {}, 2100), ("xdpsec_xdp_pass_packets_total", {}, 60),
    ("xdpsec_xdp_ike_packets_total", {}, 8), ("xdpsec_xdp_protect_packets_total", {}, 1000),
    ("xdpsec_xdp_drops_total", {"reason": "no_sa"}, 9), ("xdpsec_xdp_drops_total", {"reason": "policy_discard"}, 1),
    ("xdpsec_ike_sas", {"state": "created"}, 0), ("xdpsec_ike_sas", {"state": "connecting"}, 1),
    ("xdpsec_ike_sas", {"state": "established"}, 1), ("xdpsec_ike_sas", {"state": "deleting"}, 0),
    ("xdpsec_ike_connection_up", {"conn": "net-net"}, 1), ("xdpsec_ike_connection_up", {"conn": "road"}, 0),
    ("xdpsec_ike_child_up", {"conn": "net-net", "child": "child"}, 1),
    ("xdpsec_ike_child_up", {"conn": "net-net", "child": "spare"}, 0),
    ("xdpsec_ike_child_up", {"conn": "road", "child": "rw"}, 0),
    ("xdpsec_ike_established_total", {}, 5),
    ("xdpsec_ike_rekeys_total", {"sa": "ike"}, 1), ("xdpsec_ike_rekeys_total", {"sa": "child"}, 3),
    ("xdpsec_ike_rekey_failures_total", {}, 1), ("xdpsec_ike_retransmits_total", {}, 4),
    ("xdpsec_ike_events_total", {"event": "integrity_failed"}, 2),
    ("xdpsec_ike_events_total", {"event": "unknown_spi"}, 6),
    ("xdpsec_ike_handshake_seconds", {"quantile": "0.5"}, 0.2),
    ("xdpsec_ike_handshake_seconds", {"quantile": "0.9"}, 0.4),
    ("xdpsec_ike_handshake_seconds", {"quantile": "0.99"}, 0.4),
    ("xdpsec_ike_handshake_seconds", {"quantile": "1.0"}, 0.4),
    ("xdpsec_scrape_errors_total", {"part": "sas"}, 0), ("xdpsec_scrape_errors_total", {"part": "stats"}, 0),
    ("xdpsec_scrape_errors_total", {"part": "ike"}, 0),
]


class FakeSource:
    def __init__(self, sas=SAS, stats=STATS, ike=IKE) -> None:
        self.parts = {"sas": sas, "stats": stats, "ike": ike}

    def _get(self, part):
        value = self.parts[part]
        if isinstance(value, Exception):
            raise value
        return value

    def sas(self):
        return self._get("sas")

    def stats(self):
        return self._get("stats")

    def ike(self):
        return self._get("ike")


def scrape(registry) -> dict:
    """The exposition text as Prometheus reads it: {(name, frozenset(labels)): value}, plus family types."""
    samples, types = {}, {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return {"samples": samples, "types": types}


def table(rows) -> dict:
    return {(name, frozenset(labels.items())): float(value) for name, labels, value in rows}


def test_every_sample_of_a_scrape():
    got = scrape(registry_for(FakeSource()))
    assert got["samples"] == table(EXPECTED)


def test_family_types_and_units():
    types = scrape(registry_for(FakeSource()))["types"]
    assert types["xdpsec_ike_handshake_seconds"] == "summary"
    gauges = {"xdpsec_worker_up", "xdpsec_ike_sas", "xdpsec_ike_connection_up", "xdpsec_ike_child_up"}
    assert {n for n, t in types.items() if t == "gauge"} == gauges
    counters = {n for n, t in types.items() if t == "counter"}
    assert counters == set(types) - gauges - {"xdpsec_ike_handshake_seconds"}
    assert all(n.startswith("xdpsec_") for n in types)


def _rounds(loop: dict) -> dict:
    (family,) = [f for f in metrics.worker_families([{"id": 3, "loop": loop}]) if f.name == "xdpsec_worker_rounds"]
    return {s.labels["kind"]: s.value for s in family.samples}


@given(busy=st.integers(0, 2**52), idle=st.integers(0, 2**52))
def test_busy_and_idle_rounds_add_up_to_the_rounds(busy, idle):
    """sum by (worker) of xdpsec_worker_rounds_total is every round the worker made (exact up to 2**53)."""
    got = _rounds({"rounds": busy + idle, "busy_rounds": busy})
    assert got == {"busy": busy, "idle": idle}


def test_idle_rounds_never_negative():
    """A snapshot with more busy rounds than rounds (never from a worker) must not make a counter negative."""
    assert _rounds({"rounds": 5, "busy_rounds": 9}) == {"busy": 9, "idle": 0}


def test_scrapes_read_the_source_afresh():
    sas = [dict(row) for row in SAS]
    registry = registry_for(FakeSource(sas=sas))
    key = ("xdpsec_sa_packets_total", frozenset(SA_OUT.items()))
    assert scrape(registry)["samples"][key] == 1000
    sas[0]["packets"] = 1500
    assert scrape(registry)["samples"][key] == 1500


@pytest.mark.parametrize("part,gone", [
    ("sas", "xdpsec_sa_"),
    ("stats", ("xdpsec_worker_", "xdpsec_xdp_", "xdpsec_xsk_")),
    ("ike", "xdpsec_ike_"),
])
def test_a_failing_part_is_left_out_and_counted(part, gone):
    source = FakeSource(**{part: RuntimeError("worker restarting")})
    registry = registry_for(source)
    for n in (1, 2):
        got = scrape(registry)["samples"]
        errors = {dict(labels)["part"]: v for (name, labels), v in got.items() if name == "xdpsec_scrape_errors_total"}
        assert errors == {p: (n if p == part else 0) for p in ("sas", "stats", "ike")}
        expected = {k: v for k, v in table(EXPECTED).items()
                    if not k[0].startswith(gone) and k[0] != "xdpsec_scrape_errors_total"}
        assert {k: v for k, v in got.items() if k[0] != "xdpsec_scrape_errors_total"} == expected
    source.parts[part] = {"sas": SAS, "stats": STATS, "ike": IKE}[part]  # it recovers: the part is back
    assert scrape(registry)["samples"] == {**table(EXPECTED), ("xdpsec_scrape_errors_total",
                                                               frozenset({"part": part}.items())): 2.0}


def test_no_ike_means_no_ike_families_and_no_error():
    got = scrape(registry_for(FakeSource(ike=None)))["samples"]
    assert not [k for k in got if k[0].startswith("xdpsec_ike_")]
    assert got[("xdpsec_scrape_errors_total", frozenset({"part": "ike"}.items()))] == 0


@pytest.mark.parametrize("sas,stats", [
    (None, None),
    ([None], {"workers": [None]}),
    ([{"name": 3, "packets": "many"}], {"workers": [{"id": 0, "rx": None, "drops": None}], "xdp": None}),
    ([{"packets": float("nan"), "bytes": -1, "drops": {"x": "y"}}], {"xdp": {"stats": {"no such stat": 1}}}),
    ("not rows", []),
])
def test_odd_snapshots_never_break_a_scrape(sas, stats):
    registry = registry_for(FakeSource(sas=sas, stats=stats, ike=IkeView([{"state": None}], {}, [], {})))
    got = scrape(registry)["samples"]
    assert ("xdpsec_scrape_errors_total", frozenset({"part": "ike"}.items())) in got


def test_rows_with_equal_labels_are_one_series():
    """Two samples of one series would make Prometheus reject the whole scrape: counters add up, gauges don't."""
    workers = [{**STATS["workers"][1], "id": 0}, STATS["workers"][0]]
    got = scrape(registry_for(FakeSource(sas=[SAS[0], SAS[0]], stats={"workers": workers}, ike=None)))["samples"]
    assert got[("xdpsec_sa_packets_total", frozenset(SA_OUT.items()))] == 2000
    assert got[("xdpsec_worker_rx_packets_total", frozenset({"worker": "0"}.items()))] == 2000
    assert got[("xdpsec_worker_up", frozenset({"worker": "0"}.items()))] == 1


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(sas=_json, stats=_json, ike_rows=_json, ike_stats=_json)
def test_any_snapshot_scrapes(sas, stats, ike_rows, ike_stats):
    """Whatever the parts return, a scrape returns a valid exposition (errors counted, never raised)."""
    registry = registry_for(FakeSource(sas=sas, stats=stats, ike=IkeView(ike_rows, ike_stats)))
    scrape(registry)


@pytest.mark.parametrize("durations", [
    [0.25], [3.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0], [0.5] * 6 + [0.7] * 7,  # odd n: rank q*n is not whole
    [i / 10 for i in range(1, 11)], [0.05 * (i % 17) for i in range(1024)],  # a full window
])
def test_handshake_quantiles_are_nearest_rank(durations):
    """Cross-checked with numpy's inverted-CDF percentile, which is the nearest-rank definition (Hyndman & Fan
    definition 1)."""
    np = pytest.importorskip("numpy")  # installed with the bench extra (matplotlib)
    got = {s.labels["quantile"]: s.value for s in handshake_summary(durations).samples}
    want = {repr(q): float(np.quantile(durations, q, method="inverted_cdf")) for q in metrics.QUANTILES}
    assert got == want


def test_no_handshakes_no_quantiles():
    assert handshake_summary([]).samples == []


# --- GatewaySource over a stand-in Gateway --------------------------------------------------------------------

def fake_gateway(*, handshakes: bool, errors: int = 0):
    manager = SimpleNamespace(stats=Counter({"retransmitted": 2}))
    if handshakes:
        manager.handshakes = deque([1.5], maxlen=1024)
    conns = {"net-net": SimpleNamespace(children=[SimpleNamespace(name="child")])}
    service = SimpleNamespace(manager=manager, conns=conns, lock=threading.Lock(), errors=errors)
    return SimpleNamespace(ike=service, _cmd_sas=lambda _a: SAS, _cmd_stats=lambda _a: STATS,
                           _cmd_ike_sas=lambda _a: IKE.sas)


def test_gateway_source_reads_the_gateway():
    src = metrics.GatewaySource(fake_gateway(handshakes=True, errors=3))
    assert src.sas() == SAS and src.stats() == STATS
    view = src.ike()
    assert view.sas == IKE.sas and view.handshakes == [1.5] and view.conns == {"net-net": ["child"]}
    assert view.stats == {"retransmitted": 2, "service_error": 3}


def test_gateway_source_before_handshakes_exist():
    view = metrics.GatewaySource(fake_gateway(handshakes=False)).ike()
    assert view.handshakes == [] and view.stats == {"retransmitted": 2}


def test_gateway_source_gives_up_on_a_held_lock(monkeypatch):
    gw = fake_gateway(handshakes=True)
    monkeypatch.setattr(metrics, "LOCK_TIMEOUT", 0.05)
    registry = registry_for(metrics.GatewaySource(gw))
    with gw.ike.lock:
        got = scrape(registry)["samples"]
    assert got[("xdpsec_scrape_errors_total", frozenset({"part": "ike"}.items()))] == 1
    assert ("xdpsec_sa_packets_total", frozenset(SA_OUT.items())) in got


def test_gateway_without_ike():
    gw = fake_gateway(handshakes=True)
    gw.ike = None
    assert metrics.GatewaySource(gw).ike() is None


# --- the HTTP endpoint, in a namespace of its own --------------------------------------------------------------

_SERVE = """
import json, socket, sys, urllib.request, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
sys.path.insert(0, sys.argv[1])
from test_metrics import FakeSource
from xdpsec import metrics
out = {}
for host in ("127.0.0.1", "::1"):
    ep = metrics.start((host, 0), FakeSource())
    h, port = ep.address
    url = f"http://[{h}]:{port}/metrics" if ":" in h else f"http://{h}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = r.read().decode()
    ep.stop()
    try:
        socket.create_connection((h, port), timeout=1).close()
        closed = False
    except OSError:
        closed = True
    out[host] = {"bound": h, "body": body, "closed": closed}
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_http_endpoint_binds_where_told_and_stops():
    here = os.path.dirname(__file__)
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", _SERVE, here], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(here)))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for host in ("127.0.0.1", "::1"):
        assert out[host]["bound"] == host  # exactly the address asked for, never 0.0.0.0
        assert out[host]["closed"], "the port still accepts connections after stop()"
        samples = {}
        for family in text_string_to_metric_families(out[host]["body"]):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        assert samples == table(EXPECTED)
