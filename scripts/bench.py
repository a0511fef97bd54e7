"""The xdpsec benchmark: plain forwarding and xdpsec tunnels measured side by side in the namespace lab.

    sudo .venv/bin/python scripts/bench.py [--quick] [--repeats N] [--out docs/BENCHMARKS.md]

Each case builds a fresh site-to-site lab (hostA - gwA = gwB - hostB, xdpsec/lab.py) and measures traffic from
hostA to hostB through the two gateway namespaces:

* ``plain``: the gateways only forward (kernel IP forwarding, no IPsec): the baseline;
* ``xdpsec-1w`` / ``xdpsec-2w``: xdpsec on gwA and gwB, ESP tunnel mode, AES-GCM-128 (RFC 4106), manually keyed
  SAs (RFC 4301 §4.5, xdpsec/labconf.py), 1 or 2 workers per gateway with as many queues per veth.

Metrics: TCP throughput with iperf3 (1 and 4 streams); the highest UDP packet rate with less than 0.1 % loss at
64- and 1400-byte payloads (a short search, `udp_search`); ping RTT median and p99; for xdpsec, the gateway
processes' CPU time per packet (/proc/<pid>/stat, coordinator and workers). The rounds are interleaved (plain,
1w, 2w, plain, ...) so slow drifts of this shared VM hit every case alike; the document reports medians over
the repeats and the ratio xdpsec / plain, and the raw results go to docs/bench/<date>.json.

Nothing here is a pass/fail test: a case that cannot run (a gateway that does not start, a tunnel that passes no
traffic) is reported as failed with its reason and the run goes on. Every subprocess has a timeout, and the lab
(with the gateways and iperf3 servers in it) is torn down on every path.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdpsec.lab import Lab, LabError  # noqa: E402  (after the path fix-up: runs as a plain script)
from xdpsec.labconf import Gateways, PairSpec, site_sides, write_pair  # noqa: E402

IPERF_PORT = 5201
#: UDP loss below which an offered rate counts as carried (the usual RFC 2544 §26.1 uses zero loss; a short
#: test on a shared VM never sees zero reliably, so the brief sets 0.1 %).
LOSS_LIMIT = 0.1  # percent
#: Socket buffers for iperf3 (-w): with the default ~200 kB the receiving iperf3 drops bursts itself (measured:
#: 30 % "loss" at 35 kpps of plain forwarding) and the search would measure iperf3, not the path.
SOCKET_BUFFER = "4M"
#: Until some rate passes, the next UDP probe offers this fraction of the lowest failing one.
STEP_DOWN = 0.7
UDP_SIZES = (64, 1400)
TCP_STREAMS = (1, 4)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    workers: int  # 0: no gateways, plain forwarding
    queues: int


CASES = (
    Case("plain", "plain forwarding", 0, 2),
    Case("xdpsec-1w", "xdpsec, 1 worker", 1, 1),
    Case("xdpsec-2w", "xdpsec, 2 workers", 2, 2),
)


@dataclass(frozen=True)
class Settings:
    repeats: int
    tcp_seconds: int
    udp_seconds: int
    udp_probes: int  # iperf3 runs per UDP search, the unlimited first probe included
    ping_count: int = 100
    ping_interval: float = 0.01
    gateway_ready_timeout: float = 60.0


QUICK = Settings(repeats=1, tcp_seconds=2, udp_seconds=1, udp_probes=3, gateway_ready_timeout=40.0)
FULL = Settings(repeats=3, tcp_seconds=5, udp_seconds=2, udp_probes=6)


class CaseFailed(RuntimeError):
    """The case cannot be measured (gateways down, no traffic through the tunnel); the message says why."""


# --- the machine ----------------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def _field(path: str, key: str, sep: str = ":") -> str:
    """The value of the first ``key<sep>value`` line of a /proc or /etc file."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(sep)
            if name.strip() == key:
                return value.strip().strip('"')
    return "unknown"


def machine() -> dict:
    """What the numbers were measured on, read at run time."""
    try:
        import cryptography
        crypto_version = cryptography.__version__
    except ImportError:
        crypto_version = "not installed"
    import xdpsec
    mem_kb = _field("/proc/meminfo", "MemTotal").split()[0]
    return {
        "kernel": platform.release(),
        "cpu": _field("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / 2**20, 1) if mem_kb.isdigit() else None,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "os": _field("/etc/os-release", "PRETTY_NAME", "="),
        "python": platform.python_version(),
        "cryptography": crypto_version,
        "xdpsec": xdpsec.__version__,
        "iperf3": _first_line(["iperf3", "--version"]),
        "ping": _first_line(["ping", "-V"]),
    }


# --- measurements ---------------------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen, timeout: float = 3) -> None:
    """End a process started with lab.popen (its own session): wait a little, then kill its group."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def iperf(lab: Lab, seconds: int, *args: str) -> dict:
    """One iperf3 test hostA -> hostB: a one-shot server in hostB, the client's JSON ``end`` section back."""
    dst = lab.addr["hostB"]["v4"]
    server = lab.popen("hostB", "iperf3", "-s", "-1", "-B", dst, "-p", str(IPERF_PORT),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while f":{IPERF_PORT}" not in lab.run("hostB", "ss", "-Hltn", f"sport = :{IPERF_PORT}", timeout=5).stdout:
            if server.poll() is not None or time.monotonic() > deadline:
                raise LabError("hostB: iperf3 server did not start listening")
            time.sleep(0.05)
        out = lab.run("hostA", "iperf3", "-c", dst, "-p", str(IPERF_PORT), "-J", "-t", str(seconds),
                      "--connect-timeout", "3000", "-w", SOCKET_BUFFER, *args, check=False, timeout=seconds + 20)
        try:
            result = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise LabError(f"hostA: iperf3: {out.stderr.strip() or 'no JSON output'}") from None
        if "error" in result:
            raise LabError(f"hostA: iperf3: {result['error']}")
        return result["end"]
    finally:
        _stop(server)


def tcp(lab: Lab, streams: int, s: Settings) -> dict:
    end = iperf(lab, s.tcp_seconds, "-P", str(streams))
    return {"mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": end["sum_sent"].get("retransmits")}


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


def idle_cpu(gateways: dict[str, int], seconds: float = 1.0) -> dict:
    """Each gateway's CPU use with no traffic, in % of one core: the floor under the per-packet figures."""
    before = {node: session_cpu(pid) for node, pid in gateways.items()}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {node: 100 * (session_cpu(pid) - before[node]) / elapsed for node, pid in gateways.items()}


def udp_probe(lab: Lab, size: int, pps: float | None, s: Settings, gateways: dict[str, int]) -> dict:
    """Offer ``pps`` datagrams/s of ``size`` payload bytes (None: as fast as iperf3 can) for a few seconds."""
    rate = "0" if pps is None else str(round(pps * size * 8))  # iperf3 -b counts payload bits
    before = {node: session_cpu(pid) for node, pid in gateways.items()}
    end = iperf(lab, s.udp_seconds, "-u", "-l", str(size), "-b", rate)
    cpu = {node: session_cpu(pid) - before[node] for node, pid in gateways.items()}
    sent, got = end["sum_sent"], end["sum_received"]
    received = got["bytes"] // size  # iperf3's "packets" on the receiving side is the highest sequence seen
    probe = {"offered_pps": pps, "sent_pps": sent["packets"] / sent["seconds"],
             # Over the sender's time: the receiver's interval also holds the tail drained from queues after
             # the sender stopped, which would understate a rate that was in fact carried.
             "received_pps": received / sent["seconds"], "received": received,
             "loss_percent": got["lost_percent"], "cpu_seconds": cpu}
    probe["ok"] = probe["loss_percent"] < LOSS_LIMIT
    return probe


def udp_search(lab: Lab, size: int, s: Settings, gateways: dict[str, int]) -> dict:
    """The highest offered rate carried with less than LOSS_LIMIT loss, in ``s.udp_probes`` iperf3 runs.

    Rule: first offer as much as iperf3 can send. If that passes, the path outran the generator and the result
    is flagged ``generator_limited``. Otherwise the rate R the path delivered under that overload is the first
    guess, and each further probe halves the interval between the best passing and the lowest failing rate
    (until a probe passes, it steps down from the lowest failing rate by STEP_DOWN). The failing bound starts
    at 2 R, or the generator's rate if lower: a path overloaded by more than twice its capacity may deliver
    less than it can carry, but rarely less than half, and a tighter bracket makes the few probes count.
    """
    probes = [udp_probe(lab, size, None, s, gateways)]
    first = probes[0]
    if first["ok"]:
        return _search_result(probes, generator_limited=True)
    guess = first["received_pps"]
    lo, hi = 0.0, min(first["sent_pps"], 2 * guess)
    for _ in range(s.udp_probes - 1):
        guess = max(guess, 100.0)
        probe = udp_probe(lab, size, guess, s, gateways)
        probes.append(probe)
        if probe["ok"]:
            lo = guess
        else:
            hi = guess
        guess = (lo + hi) / 2 if lo else hi * STEP_DOWN
    return _search_result(probes, generator_limited=False)


def _search_result(probes: list[dict], *, generator_limited: bool) -> dict:
    passing = [p for p in probes if p["ok"]]
    best = max(passing, key=lambda p: p["received_pps"], default=None)
    result = {"pps": best["received_pps"] if best else 0.0, "generator_limited": generator_limited,
              "probes": probes}
    if best and best["received"]:
        # CPU per packet at the best carried rate: every datagram crossed gwA (protect) and gwB (unprotect).
        result["cpu_us_per_packet"] = {node: sec * 1e6 / best["received"] for node, sec in best["cpu_seconds"].items()}
    return result


def ping(lab: Lab, s: Settings) -> dict:
    out = lab.run("hostA", "ping", "-n", "-c", str(s.ping_count), "-i", str(s.ping_interval), "-W", "1",
                  lab.addr["hostB"]["v4"], check=False, timeout=s.ping_count * s.ping_interval + 15)
    rtts = sorted(float(line.split("time=")[1].split()[0]) for line in out.stdout.splitlines() if "time=" in line)
    if not rtts:
        raise LabError(f"hostA: ping: no replies: {out.stderr.strip() or out.stdout.strip()[-200:]}")
    p99 = rtts[math.ceil(0.99 * len(rtts)) - 1]  # nearest rank
    return {"sent": s.ping_count, "received": len(rtts), "median_ms": statistics.median(rtts), "p99_ms": p99}


# --- one case ---------------------------------------------------------------------------------------------------


@dataclass
class CaseRun:
    case: str
    round: int
    error: str | None = None
    metrics: dict = field(default_factory=dict)  # metric name -> result dict, or {"error": ...}
    seconds: float = 0.0


def _metric(run: CaseRun, name: str, fn) -> None:
    """Run one measurement; a failure is recorded for that metric and the case goes on."""
    try:
        run.metrics[name] = fn()
    except (LabError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        run.metrics[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"    {name}: {_brief(run.metrics[name])}", flush=True)


def _brief(result: dict) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    if "mbit_s" in result:
        return f"{result['mbit_s']:.0f} Mbit/s"
    if "gwA" in result:
        return ", ".join(f"{node} {pct:.0f} % of a core" for node, pct in result.items())
    if "pps" in result:
        return f"{result['pps'] / 1e3:.1f} kpps{' (generator-limited)' if result['generator_limited'] else ''}"
    return f"median {result['median_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms"


def _out_packets(gws: Gateways, node: str) -> int:
    return sum(sa["packets"] for sa in gws.query(node, "sas") if sa["direction"] == "out")


def start_gateways(gws: Gateways, case: Case, work: Path, s: Settings) -> dict[str, int]:
    """xdpsec on gwA and gwB, then proof that pings cross the tunnel (gwA's outbound SA counts them).

    Returns the gateways' pids, which are also their session ids (lab.popen starts a session per process).
    """
    lab = gws.lab
    side_a, side_b = site_sides(lab, inner=("v4",), workers=case.workers)
    pa, pb = write_pair(work / case.name, side_a, side_b,
                        PairSpec(mode="tunnel", proposal="aes128gcm16", workers=case.workers))
    gws.start("gwA", pa, side_a.instance)
    gws.start("gwB", pb, side_b.instance)
    try:
        gws.wait_ready(s.gateway_ready_timeout)
    except RuntimeError as exc:
        raise CaseFailed(_log_tail(str(exc))) from None
    # The first packets may wait for neighbour and route resolution: a few tries before calling it broken.
    for _ in range(5):
        warm = lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=3)
        if warm.received:
            break
    else:
        raise CaseFailed(f"no traffic through the tunnel: ping hostA -> hostB: 0/{warm.sent} replies")
    try:
        protected = _out_packets(gws, "gwA")
    except Exception as exc:  # noqa: BLE001 - any control failure means the tunnel cannot be verified
        raise CaseFailed(f"gwA control socket: {type(exc).__name__}: {exc}") from None
    if not protected:
        raise CaseFailed("pings pass but gwA's outbound SA counted 0 packets: traffic bypassed xdpsec")
    return {node: proc.pid for node, proc in gws.procs.items()}


def _log_tail(text: str) -> str:
    """"gwA: xdpsec exited with 1:\n<log>" -> its first line and the log's last line (the exception)."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(kept[:1] + kept[1:][-1:])


def run_case(case: Case, round_no: int, s: Settings) -> CaseRun:
    """Build the lab, start the case's gateways, measure; every failure ends up in the returned CaseRun."""
    run = CaseRun(case.name, round_no)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="xdpsec-bench-"))  # configs hold keys: removed below
    print(f"  [{round_no}] {case.label}", flush=True)
    try:
        with Lab(queues=case.queues) as lab:
            lab.site_to_site()
            gws = Gateways(lab)
            try:
                measure(lab, gws, case, work, s, run)
            finally:
                # Gateways get SIGTERM and time to detach XDP before the lab's teardown kills what is left.
                if gws.procs:
                    codes = gws.stop(timeout=10)
                    if any(codes.values()):
                        run.metrics["gateway_exit_codes"] = codes
    except (CaseFailed, LabError, OSError, subprocess.SubprocessError) as exc:
        run.error = str(exc) if isinstance(exc, CaseFailed) else f"{type(exc).__name__}: {exc}"
        print(f"    failed: {run.error}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a bug in one case must not lose the others' results
        run.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        run.seconds = round(time.monotonic() - started, 1)
    return run


def measure(lab: Lab, gws: Gateways, case: Case, work: Path, s: Settings, run: CaseRun) -> None:
    gateways: dict[str, int] = {}
    if case.workers:
        gateways = start_gateways(gws, case, work, s)
        _metric(run, "idle_cpu", lambda: idle_cpu(gateways))
    elif not lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=3).received:
        raise CaseFailed("no traffic hostA -> hostB through plain forwarding")
    for streams in TCP_STREAMS:
        _metric(run, f"tcp_{streams}", lambda n=streams: tcp(lab, n, s))
    for size in UDP_SIZES:
        _metric(run, f"udp_{size}", lambda n=size: udp_search(lab, n, s, gateways))
    _metric(run, "ping", lambda: ping(lab, s))
    if gateways:
        with contextlib.suppress(Exception):  # counters are a bonus in the raw JSON, not a result
            run.metrics["gateway_stats"] = {node: gws.query(node, "stats") for node in gateways}


# --- the report -------------------------------------------------------------------------------------------------

#: (key in the summary, row label, unit, how to read it from one run's metrics)
ROWS = (
    ("tcp_1", "TCP, 1 stream", "Mbit/s", lambda m: m["tcp_1"]["mbit_s"]),
    ("tcp_4", "TCP, 4 streams", "Mbit/s", lambda m: m["tcp_4"]["mbit_s"]),
    ("udp_64", "UDP 64 B, < 0.1 % loss", "kpps", lambda m: m["udp_64"]["pps"] / 1e3),
    ("udp_1400", "UDP 1400 B, < 0.1 % loss", "kpps", lambda m: m["udp_1400"]["pps"] / 1e3),
    ("udp_1400_mbit", "UDP 1400 B, < 0.1 % loss", "Mbit/s payload", lambda m: m["udp_1400"]["pps"] * 1400 * 8 / 1e6),
    ("ping_median", "ping RTT, median", "ms", lambda m: m["ping"]["median_ms"]),
    ("ping_p99", "ping RTT, p99", "ms", lambda m: m["ping"]["p99_ms"]),
    ("cpu_64_gwA", "gwA CPU per packet, 64 B (protect)", "µs", lambda m: m["udp_64"]["cpu_us_per_packet"]["gwA"]),
    ("cpu_64_gwB", "gwB CPU per packet, 64 B (unprotect)", "µs", lambda m: m["udp_64"]["cpu_us_per_packet"]["gwB"]),
    ("cpu_1400_gwA", "gwA CPU per packet, 1400 B (protect)", "µs",
     lambda m: m["udp_1400"]["cpu_us_per_packet"]["gwA"]),
    ("cpu_1400_gwB", "gwB CPU per packet, 1400 B (unprotect)", "µs",
     lambda m: m["udp_1400"]["cpu_us_per_packet"]["gwB"]),
    ("idle_gwA", "gwA CPU with no traffic", "% of a core", lambda m: m["idle_cpu"]["gwA"]),
    ("idle_gwB", "gwB CPU with no traffic", "% of a core", lambda m: m["idle_cpu"]["gwB"]),
)


def summarize(runs: list[CaseRun]) -> dict[str, dict[str, dict]]:
    """case -> row key -> {"median": float | None, "n": runs measured, "values": [...]}."""
    summary: dict[str, dict[str, dict]] = {}
    for case in CASES:
        mine = [r for r in runs if r.case == case.name and r.error is None]
        rows = {}
        for key, _label, _unit, read in ROWS:
            values = []
            for r in mine:
                with contextlib.suppress(KeyError, TypeError):
                    values.append(read(r.metrics))
            rows[key] = {"median": statistics.median(values) if values else None, "n": len(values),
                         "values": values}
        summary[case.name] = rows
    return summary


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    digits = 3 if abs(x) < 1 else 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0
    return f"{x:.{digits}f}"


def _case_errors(runs: list[CaseRun], case: Case) -> list[str]:
    return sorted({r.error for r in runs if r.case == case.name and r.error})


def _generator_note(runs: list[CaseRun], case: Case, size: int) -> bool:
    return any(r.metrics.get(f"udp_{size}", {}).get("generator_limited") for r in runs if r.case == case.name)


def table(runs: list[CaseRun], summary: dict) -> str:
    head = ["metric", "unit"]
    for case in CASES:
        head.append(case.label)
        if case.workers:
            head.append("ratio")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    plain = summary["plain"]
    for key, label, unit, _read in ROWS:
        cells = [label, unit]
        for case in CASES:
            value = summary[case.name][key]["median"]
            cell = _num(value)
            if value is not None and key.startswith("udp_") and any(
                    _generator_note(runs, case, n) for n in UDP_SIZES if key.startswith(f"udp_{n}")):
                cell += " ‡"
            cells.append(cell)
            if case.workers:
                base = plain[key]["median"]
                cells.append(f"{value / base:.2f}" if value is not None and base else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(info: dict, s: Settings, quick: bool, runs: list[CaseRun], summary: dict, raw: Path, out: Path,
           started: str, seconds: float) -> str:
    failures = []
    for case in CASES:
        for err in _case_errors(runs, case):
            failures.append(f"* **{case.label}**: failed: {err}")
        for r in (r for r in runs if r.case == case.name and not r.error):
            for name, m in r.metrics.items():
                if isinstance(m, dict) and "error" in m:
                    failures.append(f"* {case.label}, round {r.round}, `{name}`: failed: {m['error']}")
    probes = s.udp_probes
    raw_link = os.path.relpath(raw.resolve(), out.resolve().parent)
    text = f"""# Benchmarks

Measured by `scripts/bench.py{' --quick' if quick else ''}` on {started} (UTC), {seconds:.0f} s in all.
Raw results: [`{raw_link}`]({raw_link}).

**Read these numbers as orders of magnitude.** They come from one shared, noisy virtual machine with 2 vCPUs,
on which the traffic generator, the receiver, both gateways (kernel forwarding or xdpsec's workers) and,
during the run, possibly other jobs all compete for the same two cores. Rerun the script to compare changes;
compare cases of the same run, not numbers from different days.

## Machine

| | |
|---|---|
| kernel | {info['kernel']} |
| OS | {info['os']} |
| CPU | {info['cpu']}, {info['cores']} vCPUs |
| memory | {info['memory_gib']} GiB |
| load average at start | {' '.join(info['loadavg_at_start'])} |
| Python | {info['python']} |
| cryptography | {info['cryptography']} |
| xdpsec | {info['xdpsec']} |
| tools | {info['iperf3']}; {info['ping']} |

## Method

* **Topology**: the site-to-site namespace lab of `xdpsec/lab.py`: hostA — gwA — gwB — hostB, every link a veth
  pair between network namespaces, MTU 1500. Traffic goes from hostA (198.51.100.10) to hostB (198.51.100.130),
  IPv4. Every case builds a fresh lab and tears it down afterwards.
* **Cases**:
  * *plain forwarding*: the gateways are plain kernel routers (no IPsec); 2 queues per veth.
  * *xdpsec, N workers*: `python -m xdpsec run` on gwA and gwB, ESP tunnel mode, AES-GCM-128 with a 16-byte ICV
    (`aes128gcm16`, RFC 4106), manually keyed SAs with fresh random keys (`xdpsec/labconf.py`), N workers per
    gateway and N queues per veth. Before measuring, the script checks that pings cross and that gwA's outbound SA
    counted them (traffic that bypassed xdpsec would fail the case).
* **Order and repeats**: {s.repeats} {'round' if s.repeats == 1 else 'rounds'}; each round runs plain, 1 worker, 2 workers in turn (interleaved so that
  the VM's slow drifts hit all cases alike). The table shows the median over rounds.
* **TCP**: `iperf3 -c hostB -t {s.tcp_seconds} -w {SOCKET_BUFFER} -P 1` and `-P 4` (one-shot server `iperf3 -s -1` in hostB);
  receiver-side throughput.
* **UDP**: `iperf3 -u -l 64|1400 -b RATE -t {s.udp_seconds} -w {SOCKET_BUFFER}`. The reported rate is the highest
  *received* packet rate among probes with less than {LOSS_LIMIT} % loss, found in {probes} probes per size: first
  as fast as iperf3 can send (`-b 0`); if that passes, the path outran the generator and the cell is marked ‡.
  Otherwise the rate R delivered under that overload is the next probe, and each further probe bisects between the
  best passing and the lowest failing rate, the latter starting at 2 R (or the rate iperf3 managed, if lower);
  before any probe passes, the next one offers {STEP_DOWN} × the lowest failing rate. Rates are packets received
  over the sender's duration. A single iperf3 UDP sender is itself the ceiling here: one core,
  roughly 35–140 kpps depending on the VM's load, and it shares the two vCPUs with everything else. The 4 MiB
  socket buffers keep the receiving iperf3 from dropping bursts itself.
* **Latency**: `ping -c {s.ping_count} -i {s.ping_interval}` hostA → hostB on an otherwise idle path; median and
  p99 (nearest rank) of the RTTs.
* **CPU per packet** (xdpsec only): user + system CPU time of each gateway's processes (coordinator and workers,
  the process session started for the gateway, from `/proc/<pid>/stat`) across the UDP probe that gave the
  reported rate, divided by the datagrams hostB received. It leaves out kernel work done in softirq context on
  behalf of the gateway (the XDP program, the AF_XDP copies), and it includes the workers' polling while idle
  and the probe's few tenths of a second of iperf3 start-up: the *no traffic* rows (CPU over 1 s right after the
  gateways came up) show that floor.
  Plain forwarding has no gateway processes: its cost is all in the kernel, so the row is empty.
* **Ratio** = xdpsec / plain forwarding of the medians (for RTT and CPU, higher is worse).
* Nothing is asserted on these numbers: the script measures and reports, and a case or metric that fails is
  listed below with its reason.

## Results (medians)

{table(runs, summary)}

‡ generator-limited in at least one round: the path carried everything one iperf3 sender could offer, so the true
limit is higher; a ratio against such a cell overstates xdpsec's share (its plain baseline is a lower bound).

## Failures

{chr(10).join(failures) if failures else 'None: every case and metric was measured.'}
"""
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, short tests (under 2 minutes)")
    ap.add_argument("--repeats", type=int, help="rounds (default 3, or 1 with --quick)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ap.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], help="only these cases")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (network namespaces, XDP and AF_XDP need it)", file=sys.stderr)
        return 2
    if not shutil.which("iperf3"):
        print("bench: iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 2
    s = QUICK if args.quick else FULL
    if args.repeats:
        s = Settings(**{**asdict(s), "repeats": args.repeats})
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    info = machine()
    runs = []
    for round_no in range(1, s.repeats + 1):
        for case in cases:
            runs.append(run_case(case, round_no, s))
    seconds = time.monotonic() - started
    summary = summarize(runs)
    out_dir = args.out.parent / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{started_at:%Y%m%d-%H%M%S}.json"
    raw.write_text(json.dumps({"started": started_at.isoformat(), "seconds": round(seconds, 1), "quick": args.quick,
                               "settings": asdict(s), "machine": info, "summary": summary,
                               "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    args.out.write_text(render(info, s, args.quick, runs, summary, raw, args.out, f"{started_at:%Y-%m-%d %H:%M}", seconds))
    print(f"wrote {args.out} and {raw} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
