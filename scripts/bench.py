#!/usr/bin/env python3
"""The xdpsec benchmark: plain forwarding, xdpsec <-> xdpsec and strongSwan <-> strongSwan, side by side.

    .venv/bin/python scripts/bench.py [--quick] [--repeats N] [--cases NAME ...] [--out docs/BENCHMARKS.md]

(as root: namespaces, XDP and AF_XDP need it). Each case (scripts/bench_cases.py) builds a fresh site-to-site
lab (hostA - gwA = wire = gwB - hostB, xdpsec/lab.py), starts its gateways, checks that traffic crosses them,
and measures hostA -> hostB (scripts/bench_traffic.py): TCP throughput (iperf3, 1 and 4 streams), the highest
UDP packet rate with less than 0.1 % loss at 64, 512 and 1400 bytes and IMIX, ping RTT (median, p99) and the
gateway processes' CPU time per packet. The bare AES-GCM call rate of `cryptography` is measured in the same run
as the ceiling. Rounds are interleaved (every case once, then again) so slow drifts of the shared VM hit every
case alike; the report (scripts/bench_report.py) takes medians over rounds, computes the ratios the project
targets, and writes docs/BENCHMARKS.md, PNG plots under docs/bench/ and the raw results as
docs/bench/<date>.json.

Nothing here is a pass/fail test: a case that cannot run is recorded with its reason and the run goes on.
Every subprocess has a timeout, and each case's lab (with its gateways and iperf3 processes) is torn down on
every path, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bench_report  # noqa: E402  (this directory is on the path: runs as a plain script)
import bench_traffic as traffic  # noqa: E402
from bench_cases import MANY_SA_BASE_PORT, Case, CaseFailed, bring_up, make_cases  # noqa: E402

from xdpsec.lab import Lab, LabError  # noqa: E402

#: Lab namespaces of the benchmark are named xsb<tag>-<pid>-<node>: apart from the tests' (xst...).
LAB_PREFIX = "xsb"
UDP_SIZES: tuple[int | str, ...] = (64, 512, 1400, "imix")
TCP_STREAMS = (1, 4)


@dataclass(frozen=True)
class Settings:
    repeats: int
    tcp_seconds: int  # iperf3 -t takes whole seconds (and 0 means forever)
    udp_seconds: int
    udp_probes: int  # iperf3 runs per UDP search, the unlimited first probe included
    ping_count: int
    ping_interval: float
    aes_seconds: float  # per size and call kind
    #: metrics measured in the many-SA cases: they exist for the worker-scaling ratio, and only UDP loads are
    #: spread over their SAs (scripts/bench_cases.py)
    many_sa_metrics: tuple[str, ...]
    #: bcc compiles the XDP program at every start, and 100 children take a while to install
    gateway_ready_timeout: float = 120.0


QUICK = Settings(repeats=1, tcp_seconds=1, udp_seconds=1, udp_probes=3, ping_count=40, ping_interval=0.01,
                 aes_seconds=0.15, many_sa_metrics=("udp_64",), gateway_ready_timeout=90.0)
FULL = Settings(repeats=3, tcp_seconds=2, udp_seconds=1, udp_probes=4, ping_count=100, ping_interval=0.01,
                aes_seconds=0.4, many_sa_metrics=tuple(f"udp_{size}" for size in UDP_SIZES))


@dataclass
class CaseRun:
    case: str
    round: int
    error: str | None = None
    metrics: dict = field(default_factory=dict)  # metric name -> result dict, or {"error": ...}
    seconds: float = 0.0


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
    import platform

    import cryptography

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
        "cryptography": cryptography.__version__,
        "xdpsec": xdpsec.__version__,
        # swanctl --version asks a running charon; the package says what is installed.
        "strongswan": _first_line(["dpkg-query", "-W", "-f", "${Version}", "strongswan-charon"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        "ping": _first_line(["ping", "-V"]),
    }


# --- one case -------------------------------------------------------------------------------------------------


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
    if "pps" in result:
        cpu = result.get("cpu_us_per_packet", {}).get("total")
        return (f"{result['pps'] / 1e3:.1f} kpps{' (generator-limited)' if result['generator_limited'] else ''}"
                + (f", {cpu:.1f} µs CPU/packet" if cpu is not None else ""))
    return f"median {result['median_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms"


def metric_plan(case: Case, s: Settings) -> list[str]:
    names = [f"tcp_{n}" for n in TCP_STREAMS] + [f"udp_{size}" for size in UDP_SIZES] + ["ping"]
    if case.sas > 1:
        names = [n for n in names if n in s.many_sa_metrics]
    return names


def measure(lab: Lab, case: Case, gateways: dict[str, int], s: Settings, run: CaseRun) -> None:
    search = traffic.Search(s.udp_seconds, s.udp_probes)
    for name in metric_plan(case, s):
        kind, _, arg = name.partition("_")
        if kind == "tcp":
            _metric(run, name, lambda n=int(arg): traffic.tcp(lab, n, s.tcp_seconds))
        elif kind == "udp":
            load = traffic.udp_load(int(arg) if arg.isdigit() else arg, case.flows, MANY_SA_BASE_PORT)
            # A rate this path carried for another size: where the search starts if its overload probe hangs.
            hint = max((m.get("pps", 0) for key, m in run.metrics.items() if key.startswith("udp_")), default=None)
            _metric(run, name, lambda load=load, hint=hint: traffic.udp_search(lab, load, search, gateways, hint))
        else:
            _metric(run, name, lambda: traffic.ping(lab, s.ping_count, s.ping_interval))


def run_case(case: Case, round_no: int, s: Settings) -> CaseRun:
    """Build the lab, bring the case up, measure; every failure ends up in the returned CaseRun."""
    run = CaseRun(case.name, round_no)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="xdpsec-bench-"))  # configurations hold keys: removed below
    print(f"  [{round_no}] {case.label}", flush=True)
    try:
        with Lab(queues=case.queues, prefix=LAB_PREFIX) as lab:
            lab.site_to_site()
            running = bring_up(lab, case, work, s.gateway_ready_timeout)
            try:
                idle = traffic.cpu_now(running.gateways)
                time.sleep(0.5)
                run.metrics["idle_cpu_percent"] = {n: 200 * v for n, v in
                                                   traffic.cpu_since(idle, running.gateways).items()}
                measure(lab, case, running.gateways, s, run)
            finally:
                # Gateways get SIGTERM and time to detach before the lab's teardown kills what is left.
                codes = running.stop()
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


def ceiling(s: Settings) -> dict:
    """The bare AES-GCM call rates, per size: the most any Python ESP data path could do on one core."""
    rates = {str(size): traffic.aes_gcm_rate(size, s.aes_seconds) for size in (64, 512, 1400)}
    print("  AES-GCM-128 ceiling: " + ", ".join(f"{size} B {r['encrypt_into'] / 1e3:.0f} k/s"
                                                 for size, r in rates.items()), flush=True)
    return rates


# --- main -----------------------------------------------------------------------------------------------------


def _interrupt(signum, _frame):
    # SIGTERM unwinds like Ctrl-C, through every `finally` and the labs' context managers.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cases = make_cases()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, short probes, fewer many-SA metrics (< 2 min)")
    ap.add_argument("--repeats", type=int, help="rounds (default 3, or 1 with --quick)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ap.add_argument("--cases", nargs="+", choices=[c.name for c in cases], help="only these cases")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (network namespaces, XDP and AF_XDP need it)", file=sys.stderr)
        return 2
    if missing := [t for t in ("iperf3", "swanctl") if not shutil.which(t)]:
        print(f"bench: missing {', '.join(missing)} (scripts/setup.sh installs them)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    s = QUICK if args.quick else FULL
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    chosen = [c for c in cases if not args.cases or c.name in args.cases]
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    info = machine()
    runs: list[CaseRun] = []
    aes: list[dict] = []
    try:
        for round_no in range(1, s.repeats + 1):
            aes.append(ceiling(s))
            runs += [run_case(case, round_no, s) for case in chosen]
    except KeyboardInterrupt:
        print("bench: interrupted; the labs are torn down, nothing is written", file=sys.stderr)
        return 130
    seconds = time.monotonic() - started
    info["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    result = {"started": started_at.isoformat(), "seconds": round(seconds, 1), "quick": args.quick,
              "settings": asdict(s), "machine": info, "cases": [asdict(c) for c in chosen],
              "aes_gcm": aes, "runs": [asdict(r) for r in runs]}
    out_dir = args.out.parent / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{started_at:%Y%m%d-%H%M%S}.json"
    result["summary"] = bench_report.summarize(result)
    raw.write_text(json.dumps(result, indent=1) + "\n")
    bench_report.write(result, raw, args.out)
    print(f"wrote {args.out}, {raw} and plots ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
