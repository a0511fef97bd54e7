"""The benchmark's measurements: iperf3 TCP and UDP, the UDP rate search, ping, gateway CPU time, the AES-GCM
ceiling.

All traffic runs from hostA to hostB of the lab, every process inside a lab namespace (`Lab.run`/`Lab.popen`,
which the lab kills at teardown), every generator bounded by its own ``-t`` and by a subprocess timeout.

UDP loads are lists of `Stream`s, one iperf3 client each, run at the same time: one stream for a single packet
size, three for IMIX. A stream with ``parallel`` > 1 sends from that many consecutive source ports (iperf3
``-P k --cport P``), which is how a load reaches the 100 port-selected SAs of the many-SA cases.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xdpsec.lab import Lab, LabError

IPERF_PORT = 5201
#: A probe counts as carried below this loss. RFC 2544 §26.1 asks for zero loss; a short test on a shared VM
#: never shows zero reliably, so the brief sets 0.1 %.
LOSS_LIMIT = 0.1  # percent
#: Socket buffers for iperf3 (-w): with the default ~200 kB the receiving iperf3 drops bursts itself and the
#: search would measure iperf3, not the path.
SOCKET_BUFFER = "4M"
#: After the overload probe delivered R, the next probe offers FIRST_GUESS x R: a path that drops under overload
#: carries somewhat less than R without loss (queues overflow in bursts before the mean rate is reached).
FIRST_GUESS = 0.8
#: Until some rate passes, the next UDP probe offers this fraction of the lowest failing one.
STEP_DOWN = 0.6
#: The simple IMIX 7:4:1 by packet count, with the payload sizes measured on their own. The classic frame sizes
#: (64/594/1518) would make the largest packet exceed the tunnel's MTU and measure fragmentation instead.
IMIX = ((64, 7), (512, 4), (1400, 1))
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stream:
    size: int  # UDP payload bytes
    share: float  # fraction of the load's packets
    parallel: int  # source ports (iperf3 -P)
    cport: int | None  # first source port, None: ephemeral


def udp_load(size: int | str, flows: int, base_port: int) -> list[Stream]:
    """One packet size (or "imix") spread over ``flows`` source ports from ``base_port`` (1: an ephemeral one)."""
    mix = IMIX if size == "imix" else ((int(size), 1),)
    total = sum(weight for _size, weight in mix)
    streams, port, left = [], base_port, flows
    for i, (n, weight) in enumerate(mix):
        # Ports are shared out in proportion to the packets; the last stream takes what is left.
        parallel = left if i == len(mix) - 1 else max(1, round(flows * weight / total))
        parallel = max(1, min(parallel, left - (len(mix) - 1 - i)))
        streams.append(Stream(n, weight / total, parallel, port if flows > 1 else None))
        port += parallel
        left -= parallel
    return streams


# --- gateway CPU time -----------------------------------------------------------------------------------------


def session_cpu(sid: int) -> float:
    """User + system CPU seconds of session ``sid`` (a gateway and its workers), reaped children included."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: fields are counted after the last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6, session
                # Fields 14-17: utime, stime, and the same for children already reaped (a restarted worker).
                total += sum(int(f) for f in fields[11:15])
    return total / CLK_TCK


def cpu_now(gateways: dict[str, int]) -> dict[str, float]:
    return {node: session_cpu(sid) for node, sid in gateways.items()}


def cpu_since(before: dict[str, float], gateways: dict[str, int]) -> dict[str, float]:
    return {node: session_cpu(sid) - before[node] for node, sid in gateways.items()}


# --- iperf3 ---------------------------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen, timeout: float = 3) -> None:
    """End a process started with lab.popen (its own session): wait a little, then kill its group."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class ProbeTimeout(LabError):
    """An iperf3 client hung. Under overload this happens: a UDP stream's set-up datagram (iperf3 3.12 sends
    one per stream and never resends it) can be lost behind another client's load, and the client waits."""


def _servers(lab: Lab, count: int) -> list[subprocess.Popen]:
    """``count`` one-shot iperf3 servers in hostB on IPERF_PORT, +1, ...; returns once all listen."""
    dst = lab.addr["hostB"]["v4"]
    ports = [IPERF_PORT + i for i in range(count)]
    procs = [lab.popen("hostB", "iperf3", "-s", "-1", "-B", dst, "-p", str(p),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    deadline = time.monotonic() + 5
    while True:
        listening = lab.run("hostB", "ss", "-Hltn", timeout=5).stdout
        if all(f":{p} " in listening for p in ports):
            return procs
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            for p in procs:
                _stop(p, 0)
            raise LabError("hostB: iperf3 server did not start listening")
        time.sleep(0.05)


def iperf_clients(lab: Lab, seconds: int, argsets: list[list[str]]) -> list[dict]:
    """Run one iperf3 client per argument list at the same time (each against its own one-shot server);
    returns their JSON ``end`` sections."""
    dst = lab.addr["hostB"]["v4"]
    servers = _servers(lab, len(argsets))
    clients = []
    try:
        for i, args in enumerate(argsets):
            clients.append(lab.popen("hostA", "iperf3", "-c", dst, "-p", str(IPERF_PORT + i), "-J",
                                     "-t", str(seconds), "--connect-timeout", "3000", "-w", SOCKET_BUFFER,
                                     *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return [_client_end(c, seconds) for c in clients]
    finally:
        for proc in clients + servers:
            _stop(proc)


def _client_end(client: subprocess.Popen, seconds: int) -> dict:
    try:
        # A saturated tunnel starves iperf3's TCP control connection too: its retransmissions back off for seconds
        # after the load stops, before the results can be exchanged.
        out, err = client.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        raise ProbeTimeout("hostA: iperf3 did not finish in time") from None
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        raise LabError(f"hostA: iperf3: {err.strip() or 'no JSON output'}") from None
    if "error" in result:
        raise LabError(f"hostA: iperf3: {result['error']}")
    return result["end"]


def tcp(lab: Lab, streams: int, seconds: int) -> dict:
    """TCP throughput hostA -> hostB with ``streams`` connections, receiver side."""
    (end,) = iperf_clients(lab, seconds, [["-P", str(streams)]])
    return {"mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": end["sum_sent"].get("retransmits")}


# --- the UDP rate search --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    seconds: int  # per probe
    probes: int  # iperf3 runs per search, the unlimited first probe included


def udp_probe(lab: Lab, load: list[Stream], pps: float | None, seconds: int, gateways: dict[str, int]) -> dict:
    """Offer ``pps`` packets/s in all (None: as fast as the clients can) of ``load`` for ``seconds``."""
    argsets = []
    for s in load:
        # iperf3 -b is per stream (each of the -P ports) and counts payload bits.
        rate = "0" if pps is None else str(max(1, round(pps * s.share / s.parallel * s.size * 8)))
        argsets.append(["-u", "-l", str(s.size), "-b", rate, "-P", str(s.parallel),
                        *(["--cport", str(s.cport)] if s.cport else [])])
    before = cpu_now(gateways)
    try:
        ends = iperf_clients(lab, seconds, argsets)
    except ProbeTimeout as exc:
        return {"offered_pps": pps, "sent_pps": pps, "received_pps": 0.0, "received": 0, "loss_percent": 100.0,
                "ok": False, "cpu_seconds": cpu_since(before, gateways), "error": str(exc)}
    cpu = cpu_since(before, gateways)
    sent = sum(e["sum_sent"]["packets"] for e in ends)
    duration = max(e["sum_sent"]["seconds"] for e in ends)
    # The receiver counts loss as gaps in sequence numbers: packets still queued when the test ends are not lost.
    lost = sum(e["sum_received"]["lost_packets"] for e in ends)
    expected = sum(e["sum_received"]["packets"] for e in ends)
    received = sum(e["sum_received"]["bytes"] // s.size for e, s in zip(ends, load, strict=True))
    loss = 100 * lost / expected if expected else 100.0
    return {"offered_pps": pps, "sent_pps": sent / duration,
            # Over the sender's time: the receiver's interval also holds the tail drained from queues after
            # the sender stopped, which would understate a rate that was in fact carried.
            "received_pps": received / duration, "received": received, "loss_percent": loss,
            "ok": bool(received) and loss < LOSS_LIMIT, "cpu_seconds": cpu}


def udp_search(lab: Lab, load: list[Stream], search: Search, gateways: dict[str, int],
               hint: float | None = None) -> dict:
    """The highest offered rate carried with less than LOSS_LIMIT loss, in ``search.probes`` probes.

    First offer as much as the generator can. If that passes, the path outran the generator: the result is
    flagged ``generator_limited``. Otherwise FIRST_GUESS x the rate R delivered under that
    overload is the first guess, and each further probe halves the interval between the best passing and the lowest failing rate (until a probe
    passes, it steps down from the lowest failing rate by STEP_DOWN). The failing bound starts at 2 R, or the
    generator's rate if lower: a path overloaded beyond twice its capacity may deliver less than it can carry,
    but rarely less than half, and a tight bracket makes the few probes count. A probe whose client hung
    (`ProbeTimeout`) counts as failing; if that was the overload probe, ``hint`` (a rate the same path carried
    for another load) stands in for R.
    """
    first = udp_probe(lab, load, None, search.seconds, gateways)
    probes = [first]
    if not first["ok"]:
        carried = first["received_pps"] or hint or 0.0
        if not carried:
            raise LabError(f"no rate to start the search from: {first.get('error', 'nothing arrived')}")
        guess = FIRST_GUESS * carried
        lo, hi = 0.0, min(first["sent_pps"] or 2 * carried, 2 * carried)
        for _ in range(search.probes - 1):
            guess = max(guess, 100.0)
            probe = udp_probe(lab, load, guess, search.seconds, gateways)
            probes.append(probe)
            if probe["ok"]:
                lo = guess
            else:
                hi = guess
            guess = (lo + hi) / 2 if lo else hi * STEP_DOWN
    passing = [p for p in probes if p["ok"]]
    best = max(passing, key=lambda p: p["received_pps"], default=None)
    result = {"pps": best["received_pps"] if best else 0.0, "generator_limited": first["ok"],
              "overload_pps": first["received_pps"], "probes": probes}
    if best and gateways:
        # Every datagram crossed gwA (protect) and gwB (unprotect): both gateways' CPU counts.
        per_node = {node: sec * 1e6 / best["received"] for node, sec in best["cpu_seconds"].items()}
        result["cpu_us_per_packet"] = {**per_node, "total": sum(per_node.values())}
    return result


# --- latency --------------------------------------------------------------------------------------------------


def ping(lab: Lab, count: int, interval: float) -> dict:
    """RTT hostA -> hostB on an idle path: median and 99th percentile (nearest rank)."""
    out = lab.run("hostA", "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                  lab.addr["hostB"]["v4"], check=False, timeout=count * interval + 15)
    rtts = sorted(float(line.split("time=")[1].split()[0]) for line in out.stdout.splitlines() if "time=" in line)
    if not rtts:
        raise LabError(f"hostA: ping: no replies: {out.stderr.strip() or out.stdout.strip()[-200:]}")
    return {"sent": count, "received": len(rtts), "median_ms": statistics.median(rtts),
            "p99_ms": rtts[math.ceil(0.99 * len(rtts)) - 1]}


# --- the cipher's ceiling -------------------------------------------------------------------------------------


def aes_gcm_rate(size: int, seconds: float) -> dict:
    """Calls/s of `cryptography`'s AES-GCM-128 on ``size`` bytes with an 8-byte AAD (ESP's SPI and sequence
    number, RFC 4106 §5): ``encrypt`` (a new bytes object per call) and ``encrypt_into`` a preallocated buffer
    (what an in-place data path can do)."""
    aead = AESGCM(secrets.token_bytes(16))
    nonce, aad, data = secrets.token_bytes(12), secrets.token_bytes(8), secrets.token_bytes(size)
    out = bytearray(size + 16)  # ciphertext and the 16-byte ICV
    rates = {}
    for name, call in (("encrypt", lambda: aead.encrypt(nonce, data, aad)),
                       ("encrypt_into", lambda: aead.encrypt_into(nonce, data, aad, out))):
        calls, start = 0, time.perf_counter()
        deadline = start + seconds
        while (now := time.perf_counter()) < deadline:
            for _ in range(1000):
                call()
            calls += 1000
        rates[name] = calls / (now - start)
    return rates
