"""Prometheus metrics: the gateway's own counters, served over HTTP for scraping (issue 5).

Nothing is counted a second time here. The workers count packets, bytes and drops per SA and per worker, the
XDP classifier counts per CPU, the IKE core keeps a Counter, and `xdpsec sas`/`stats` already show all of it.
`Collector` reads them afresh on every scrape through a `Source` (`GatewaySource` adapts the running Gateway)
and turns them into metric families, so a number on /metrics is never older than the scrape itself. It lives
in a CollectorRegistry of its own: the process-wide default registry (and its process/GC collectors) is left
alone, and the endpoint serves xdpsec_* series only.

A scrape can arrive while the gateway changes (an SA replaced, a worker restarting, IKE mid-exchange). Each
part of the source (SAs, worker and XDP stats, IKE) is read on its own; a part that fails is left out of that
scrape and counted in xdpsec_scrape_errors_total{part}, and the other parts are still served.

Series follow the objects they count: an SA's counters live as long as the SA, so a rekeyed child shows up as
new series (new `spi` label) while the old ones end, which is how Prometheus expects replaced targets to look.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from xdpsec.abi import Stat

log = logging.getLogger("xdpsec.metrics")

SA_LABELS = ("conn", "child", "spi", "direction", "worker")
#: Quantiles of the handshake summary, over the handshakes the IKE core remembers (nearest rank).
QUANTILES = (0.5, 0.9, 0.99, 1.0)
#: IKE core counters that get a metric of their own; every other one goes to xdpsec_ike_events_total{event}.
#: "retransmitted" is the core's older name of "retransmit".
IKE_REKEYS = {"ike_rekey": "ike", "child_rekey": "child"}
IKE_RETRANSMITS = ("retransmit", "retransmitted")
IKE_OWN_METRIC = {*IKE_REKEYS, *IKE_RETRANSMITS, "rekey_failed", "ike_established"}
LOCK_TIMEOUT = 1.0  # seconds a scrape waits for the IKE thread before giving up on the IKE part


@dataclass
class IkeView:
    """What the IKE part of a scrape needs: `ike_sas` rows as `xdpsec sas --ike --json` shows them, the core's
    counters, recent handshake durations (seconds) and the configured connections with their children."""

    sas: list[dict]
    stats: Mapping[str, int]
    handshakes: Sequence[float] = ()
    conns: Mapping[str, Sequence[str]] = field(default_factory=dict)


class Source(Protocol):
    def sas(self) -> list[dict]:
        """Rows of `xdpsec sas --json` (name "conn/child", spi, direction, worker, packets, bytes, drops)."""

    def stats(self) -> dict:
        """`xdpsec stats --json`: {"workers": [...], "xdp": {"stats": {...}, "drops": {...}}}."""

    def ike(self) -> IkeView | None:
        """The IKE part, or None when the gateway has no IKE connection."""


# --- the collector ---------------------------------------------------------------------------------------------

class Collector:
    """A prometheus_client custom collector over a Source; `collect()` is one scrape."""

    PARTS = ("sas", "stats", "ike")

    def __init__(self, source: Source) -> None:
        self.source = source
        self.errors: Counter[str] = Counter()
        self._failing: set[str] = set()
        self._lock = threading.Lock()  # scrapes may run concurrently (one thread per HTTP request)

    def collect(self) -> Iterator[Metric]:
        for part in self.PARTS:
            yield from self._families(part)
        errors = CounterMetricFamily("xdpsec_scrape_errors", "Parts of the gateway a scrape could not read "
                                     "(left out of that scrape)", labels=["part"])
        with self._lock:
            for part in self.PARTS:
                errors.add_metric([part], self.errors[part])
        yield errors

    def _families(self, part: str) -> list[Metric]:
        """One part of the source read and turned into families, or nothing if that failed (counted, and logged
        when it starts and stops failing). Anything may go wrong in a gateway that is changing under us, a
        snapshot of the wrong shape included, hence the broad except around reading and building alike."""
        try:
            if part == "sas":
                families = sa_families(self.source.sas())
            elif part == "stats":
                stats = self.source.stats()
                families = worker_families(stats.get("workers", [])) + xdp_families(stats.get("xdp", {}))
            else:
                ike = self.source.ike()
                families = [] if ike is None else ike_families(ike)
        except Exception as exc:
            with self._lock:
                self.errors[part] += 1
                first = part not in self._failing
                self._failing.add(part)
            if first:
                log.warning("metrics: reading %s failed (left out of scrapes until it works): %s", part, exc)
            return []
        families = [_merged(f) for f in families]
        with self._lock:
            recovered = part in self._failing
            self._failing.discard(part)
        if recovered:
            log.info("metrics: reading %s works again", part)
        return families


def _merged(family: Metric) -> Metric:
    """The family with samples of equal labels merged (counters summed, gauges the highest). Rows the gateway
    should never produce (two SAs with the same conn, child, SPI, direction and worker) must not become two
    samples of one series: Prometheus would reject the whole scrape."""
    merged: dict[tuple, Sample] = {}
    for sample in family.samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if key in merged:
            old = merged[key].value
            value = max(old, sample.value) if family.type == "gauge" else old + sample.value
            sample = sample._replace(value=value)
        merged[key] = sample
    family.samples = list(merged.values())
    return family


def _num(value) -> float:
    """A counter value from a snapshot; missing or odd values count as 0 rather than breaking the scrape."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


# --- families --------------------------------------------------------------------------------------------------

def sa_families(rows: Iterable[dict]) -> list[Metric]:
    packets = CounterMetricFamily("xdpsec_sa_packets", "Packets processed by an SA (protected outbound, "
                                  "accepted inbound)", labels=SA_LABELS)
    octets = CounterMetricFamily("xdpsec_sa_bytes", "Bytes processed by an SA", labels=SA_LABELS)
    drops = CounterMetricFamily("xdpsec_sa_drops", "Packets an SA dropped, by reason",
                                labels=(*SA_LABELS, "reason"))
    for row in rows:
        conn, _, child = str(row.get("name", "")).partition("/")
        labels = [conn, child, str(row.get("spi", "")), str(row.get("direction", "")), str(row.get("worker", ""))]
        packets.add_metric(labels, _num(row.get("packets")))
        octets.add_metric(labels, _num(row.get("bytes")))
        for reason, n in sorted((row.get("drops") or {}).items()):
            drops.add_metric([*labels, reason], _num(n))
    return [packets, octets, drops]


def worker_families(workers: Iterable[dict]) -> list[Metric]:
    rx = CounterMetricFamily("xdpsec_worker_rx_packets", "Frames a worker received from its AF_XDP sockets",
                             labels=["worker"])
    tx = CounterMetricFamily("xdpsec_worker_tx_packets", "Frames a worker transmitted", labels=["worker"])
    handoff = CounterMetricFamily("xdpsec_worker_handoff_packets", "Frames handed to (out) or from (in) another "
                                  "worker that owns their SA", labels=["worker", "direction"])
    drops = CounterMetricFamily("xdpsec_worker_drops", "Packets a worker dropped, by reason",
                                labels=["worker", "reason"])
    restarts = CounterMetricFamily("xdpsec_worker_restarts", "Times a worker died and was restarted",
                                   labels=["worker"])
    up = GaugeMetricFamily("xdpsec_worker_up", "1 if the worker process is alive", labels=["worker"])
    xsk = CounterMetricFamily("xdpsec_xsk_events", "The kernel's XDP_STATISTICS of each AF_XDP socket "
                              "(rx_dropped, rx_ring_full, ...)", labels=["worker", "socket", "event"])
    # The loop's batching (xdpsec.worker.LoopStats): rate(frames) / rate(rounds{kind="busy"}) is the mean rx
    # batch, rate(kick_frames) / rate(kicks) the mean tx batch.
    rounds = CounterMetricFamily("xdpsec_worker_rounds", "Passes of a worker's loop: busy ones took in frames, "
                                 "idle ones found every ring empty", labels=["worker", "kind"])
    frames = CounterMetricFamily("xdpsec_worker_round_frames", "Frames a worker's busy rounds took in (its "
                                 "sockets and the handoff rings)", labels=["worker"])
    kicks = CounterMetricFamily("xdpsec_worker_tx_kicks", "Transmit kicks (a sendto() per port with frames, "
                                "per round)", labels=["worker"])
    kick_frames = CounterMetricFamily("xdpsec_worker_tx_kick_frames", "Frames put on tx rings by those kicks",
                                      labels=["worker"])
    sleeps = CounterMetricFamily("xdpsec_worker_sleeps", "Times a worker went to sleep in poll() after finding "
                                 "nothing to do", labels=["worker"])
    for w in workers:
        wid = str(w["id"])
        rx.add_metric([wid], _num(w.get("rx")))
        tx.add_metric([wid], _num(w.get("tx")))
        handoff.add_metric([wid, "in"], _num(w.get("handoff_in")))
        handoff.add_metric([wid, "out"], _num(w.get("handoff_out")))
        for reason, n in sorted((w.get("drops") or {}).items()):
            drops.add_metric([wid, reason], _num(n))
        restarts.add_metric([wid], _num(w.get("restarts")))
        up.add_metric([wid], 1.0 if w.get("alive") else 0.0)
        for sock, counters in sorted((w.get("sockets") or {}).items()):
            for event, n in sorted(counters.items()):
                xsk.add_metric([wid, sock, event], _num(n))
        loop = w.get("loop")
        if loop:  # none from a worker that did not answer: no series rather than a counter that drops to 0
            busy = _num(loop.get("busy_rounds"))
            rounds.add_metric([wid, "busy"], busy)
            rounds.add_metric([wid, "idle"], max(0.0, _num(loop.get("rounds")) - busy))
            frames.add_metric([wid], _num(loop.get("frames")))
            kicks.add_metric([wid], _num(loop.get("kicks")))
            kick_frames.add_metric([wid], _num(loop.get("kick_frames")))
            sleeps.add_metric([wid], _num(loop.get("sleeps")))
    return [rx, tx, handoff, drops, restarts, up, xsk, rounds, frames, kicks, kick_frames, sleeps]


def xdp_families(xdp: Mapping) -> list[Metric]:
    """One counter per classifier statistic (their sum means nothing: `rx` is every frame, `ike` is also `pass`),
    documented by the comment of its enum member in the ABI header; drops by reason."""
    families: list[Metric] = []
    for name, n in sorted((xdp.get("stats") or {}).items()):
        doc = _stat_doc(name)
        family = CounterMetricFamily(f"xdpsec_xdp_{name}_packets", f"XDP classifier: {doc}")
        family.add_metric([], _num(n))
        families.append(family)
    drops = CounterMetricFamily("xdpsec_xdp_drops", "Packets the XDP classifier dropped, by reason",
                                labels=["reason"])
    for reason, n in sorted((xdp.get("drops") or {}).items()):
        drops.add_metric([reason], _num(n))
    families.append(drops)
    return families


def _stat_doc(name: str) -> str:
    try:
        return Stat.describe[Stat[name.upper()].value] or name
    except KeyError:
        return name


def ike_families(ike: IkeView) -> list[Metric]:
    from xdpsec.ike.sa import State  # the IKE core is only loaded where IKE is configured (as in coordinator)

    states = GaugeMetricFamily("xdpsec_ike_sas", "IKE SAs by state", labels=["state"])
    by_state = Counter(str(row.get("state")) for row in ike.sas)
    for state in sorted({s.value for s in State if s != State.DEAD} | set(by_state)):
        states.add_metric([state], by_state[state])

    established = [row for row in ike.sas if row.get("state") == State.ESTABLISHED.value]
    conn_up = GaugeMetricFamily("xdpsec_ike_connection_up", "1 if a configured IKE connection has an "
                                "established IKE SA, 0 if it is down", labels=["conn"])
    child_up = GaugeMetricFamily("xdpsec_ike_child_up", "1 if a configured child has a child SA on an "
                                 "established IKE SA, 0 if it is down", labels=["conn", "child"])
    for conn, children in sorted(ike.conns.items()):
        rows = [row for row in established if row.get("conn") == conn]
        conn_up.add_metric([conn], 1.0 if rows else 0.0)
        live = {c.get("name") for row in rows for c in row.get("children") or ()}
        for child in children:
            child_up.add_metric([conn, child], 1.0 if child in live else 0.0)

    stats = ike.stats
    est = CounterMetricFamily("xdpsec_ike_established", "IKE SAs established (initiated or answered)")
    est.add_metric([], _num(stats.get("ike_established", 0)))
    rekeys = CounterMetricFamily("xdpsec_ike_rekeys", "Rekeys completed, of IKE SAs and of child SAs",
                                 labels=["sa"])
    for key, kind in IKE_REKEYS.items():
        rekeys.add_metric([kind], _num(stats.get(key, 0)))
    failed = CounterMetricFamily("xdpsec_ike_rekey_failures", "Rekeys that failed")
    failed.add_metric([], _num(stats.get("rekey_failed", 0)))
    retrans = CounterMetricFamily("xdpsec_ike_retransmits", "IKE requests retransmitted (RFC 7296 §2.1)")
    retrans.add_metric([], sum(_num(stats.get(k, 0)) for k in IKE_RETRANSMITS))
    events = CounterMetricFamily("xdpsec_ike_events", "Other events counted by the IKE core: messages dropped "
                                 "and why (malformed, integrity_failed, unknown_spi, ...), limits hit",
                                 labels=["event"])
    for event, n in sorted(stats.items()):
        if event not in IKE_OWN_METRIC:
            events.add_metric([event], _num(n))
    return [states, conn_up, child_up, est, rekeys, failed, retrans, events, handshake_summary(ike.handshakes)]


def handshake_summary(durations: Sequence[float]) -> Metric:
    """Quantiles of the recent handshake durations. The core keeps a bounded window of them, not a running
    total, so this has no _count/_sum (OpenMetrics makes both optional for a summary): a window's count would go
    down once it is full, which a counter must never do. xdpsec_ike_established_total is the running count."""
    summary = Metric("xdpsec_ike_handshake_seconds", "IKE_SA_INIT to IKE_AUTH done, over the recent handshakes "
                     "the IKE core remembers", "summary")
    ordered = sorted(_num(d) for d in durations)
    if ordered:
        for q in QUANTILES:
            rank = max(1, math.ceil(q * len(ordered)))  # nearest rank
            summary.add_sample("xdpsec_ike_handshake_seconds", {"quantile": repr(q)}, ordered[rank - 1])
    return summary


# --- the gateway as a source -----------------------------------------------------------------------------------

class GatewaySource:
    """Reads a running xdpsec.coordinator.Gateway through the handlers its control socket serves, so /metrics
    and `xdpsec sas`/`stats` always agree."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway

    def sas(self) -> list[dict]:
        return self.gateway._cmd_sas({})

    def stats(self) -> dict:
        return self.gateway._cmd_stats({})

    def ike(self) -> IkeView | None:
        service = self.gateway.ike
        if service is None:
            return None
        rows = self.gateway._cmd_ike_sas({})
        manager = service.manager
        lock = getattr(service, "lock", None)
        if lock is not None and not lock.acquire(timeout=LOCK_TIMEOUT):
            raise TimeoutError("the IKE thread held its lock too long")
        try:  # the IKE thread changes these as it goes: copy them under its lock
            stats = dict(manager.stats)
            handshakes = list(getattr(manager, "handshakes", ()))
            conns = {name: [c.name for c in conn.children] for name, conn in dict(service.conns).items()}
        finally:
            if lock is not None:
                lock.release()
        errors = getattr(service, "errors", 0)
        if errors:
            stats["service_error"] = errors  # exceptions the IKE thread caught around the core
        return IkeView(rows, stats, handshakes, conns)


# --- the HTTP endpoint -----------------------------------------------------------------------------------------

class Endpoint:
    """A running /metrics server; `stop()` closes its socket and ends its thread."""

    def __init__(self, server, thread: threading.Thread, registry: CollectorRegistry) -> None:
        self._server = server
        self._thread = thread
        self.registry = registry

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return host, port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def registry_for(source: Source) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)  # no scrape at registration: the gateway may be starting
    registry.register(Collector(source))
    return registry


def start(listen: tuple[str, int], source: Source) -> Endpoint:
    """Serve /metrics on exactly `listen` (host without brackets, port; 0 picks a free port). There is no
    default address: exposing counters beyond the host is the operator's explicit choice."""
    host, port = listen
    registry = registry_for(source)
    server, thread = start_http_server(port, addr=host, registry=registry)
    endpoint = Endpoint(server, thread, registry)
    log.info("metrics: serving Prometheus metrics on %s", _url(*endpoint.address))
    return endpoint


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
