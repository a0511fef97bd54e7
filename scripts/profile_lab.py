#!/usr/bin/env python3
"""Where a loaded xdpsec worker's CPU goes, in the benchmark's lab (issue 6).

    .venv/bin/python scripts/profile_lab.py [--seconds 14] [--udp-pps N] [--loads udp64 tcp1] [--out FILE]

(as root). scripts/profile_dataplane.py times the packet core alone; scripts/bench.py measures the whole path.
This script explains the gap between the two: it builds the benchmark's lab and case ``xdpsec-1w-1sa``
(scripts/bench_cases.py: hostA - gwA = wire = gwB - hostB, 1 worker and 1 rx queue per gateway, one
AES-GCM-128 tunnel-mode SA pair), drives one sustained load at a time through it (a) UDP 64 B offered just
above what the tunnel carries, (b) one iperf3 TCP stream), and while the load runs, looks at gwA's and gwB's
worker processes in three consecutive windows, each with its own tools so that no tool's overhead spoils
another's figures:

1. *clean*: only /proc/<pid>/stat (utime, stime) and the gateways' counters (SA packets through the control
   socket, worker and AF_XDP socket statistics) before and after: user and kernel µs per packet;
2. *perf*: ``perf record -a -g`` (cpu-clock, every CPU) for the kernel's share by code path, and who uses the
   two CPUs at all; ``perf stat`` of the workers' syscalls (tracepoints) for transmit kicks and poll() sleeps
   per packet: the tx batch size (the worker kicks each port once per round that queued frames);
3. *py-spy*: ``py-spy record --native`` of both workers: Python functions by self time, the AEAD call
   (cryptography's Rust extension, OpenSSL linked into it) and the syscalls as seen from user space.

Each window also records the packet rate, so a tool that slowed the tunnel shows as a lower rate. Results
are printed as tables and written to docs/bench/profile-lab-<UTC>.json (or --out). A tool that is missing or
refuses to run is recorded with its reason and the run goes on. Every subprocess has a timeout and the lab
(gateways, iperf3) is torn down on every path.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bench_traffic as traffic  # noqa: E402  (this directory is on the path: runs as a plain script)
from bench import machine  # noqa: E402
from bench_cases import bring_up, make_cases  # noqa: E402

from xdpsec.lab import Lab  # noqa: E402

LAB_PREFIX = "xsp"
CASE = "xdpsec-1w-1sa"
PY_SPY = REPO / ".venv" / "bin" / "py-spy"
PERF = shutil.which("perf") or "/usr/bin/perf"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = 1.5  # s of load before the first window: TCP's slow start, the rings filling
PERF_HZ = 999
PY_SPY_HZ = 500
#: The UDP load offers this multiple of what an unlimited sender got through: "just above" the tunnel's rate.
UDP_OVER = 1.3
CALIBRATE_SECONDS = 3
#: Syscalls a worker makes in its loop: sendto is the tx kick (socket.send), poll the sleep, write the
#: handoff eventfd (unused with one worker), getsockopt the statistics a query reads.
SYSCALLS = ("sendto", "poll", "write", "read", "getsockopt", "recvfrom")

# --- py-spy frames --------------------------------------------------------------------------------------------

#: Native code of `cryptography`: the Rust extension, with OpenSSL's libcrypto statically linked into it.
CRYPTO_LIBS = ("_rust.abi3.so", "libcrypto", "libssl")
PY_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^()]+\.py):\d+\)$")
NATIVE_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<lib>[^()]+)\)$")


def classify_stack(frames: list[str]) -> tuple[str, str]:
    """(category, innermost Python function) of one py-spy --native stack, outermost frame first.

    Categories: ``aead`` (any frame in cryptography's native code), ``syscall:<name>`` (libc leaf below the
    innermost Python frame: the thread is in the kernel), ``python`` (the interpreter running Python code)."""
    py_fn, below = "?", []
    for frame in frames:
        m = PY_FRAME.match(frame)
        if m:
            path = m["file"].split("site-packages/")[-1].split("/work/main/")[-1]
            py_fn, below = f"{m['fn']} ({path})", []
        else:
            below.append(frame)
    if any(lib in f for f in frames for lib in CRYPTO_LIBS):
        return "aead", py_fn
    leaf = NATIVE_FRAME.match(below[-1]) if below else None
    if leaf and "libc.so" in leaf["lib"] and not leaf["fn"].startswith("0x"):
        return f"syscall:{leaf['fn'].lstrip('_')}", py_fn
    return "python", py_fn


def summarize_pyspy(raw: str, top: int = 15) -> dict:
    """py-spy's raw (folded) output -> shares of the samples not in poll() by category, and the top Python
    functions by self time (a function's own samples: its bytecode and the C it calls, except the AEAD and
    syscalls)."""
    cats: collections.Counter[str] = collections.Counter()
    funcs: collections.Counter[str] = collections.Counter()
    aead_callers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        cat, fn = classify_stack(stack.split(";"))
        total += n
        cats[cat] += n
        if cat == "python":
            funcs[fn] += n
        elif cat == "aead":
            aead_callers[fn] += n
    # py-spy counts a thread asleep in poll() as busy (it pauses the process to sample, and a paused thread
    # looks runnable): poll() samples are reported apart and left out of every other share.
    asleep = cats.pop("syscall:poll", 0)
    busy = total - asleep
    share = (lambda n: round(n / busy, 4)) if busy else (lambda n: 0.0)
    return {"samples": total, "poll_samples": asleep, "categories": {c: share(n) for c, n in cats.most_common()},
            "top_python_self": [[f, share(n)] for f, n in funcs.most_common(top)],
            "aead_by_caller": [[f, share(n)] for f, n in aead_callers.most_common(5)]}


# --- perf frames ----------------------------------------------------------------------------------------------

#: Kernel code paths, checked from the sampled instruction outwards: the first marker found names the sample.
#: The tx kick (sendto) on a veth builds an skb from the UMEM frame, hands it to veth_xmit, and the receiving
#: veth's NAPI poll then runs in the same context (softirq on bottom-half enable): the next hop's XDP program,
#: its AF_XDP receive copy, or its kernel stack (routing, TCP/UDP, the socket of iperf3 in hostB).
KERNEL_PATHS = (
    ("XDP program (bpf_prog)", ("bpf_prog_",)),
    ("AF_XDP rx: copy into UMEM", ("xsk_rcv", "__xsk_rcv", "xsk_generic_rcv", "__xsk_map_redirect",
                                   "xsk_copy_xdp", "xsk_rcv_check", "__xsk_rcv_memcpy")),
    ("XDP redirect/run (kernel side)", ("xdp_do_redirect", "bpf_prog_run_xdp", "xdp_do_flush", "do_xdp_generic",
                                        "veth_xdp_rcv_skb", "veth_xdp_rcv", "xdp_master_redirect")),
    ("AF_XDP tx: skb build + copy", ("xsk_build_skb", "xsk_generic_xmit", "__xsk_generic_xmit", "xsk_sendmsg",
                                     "__xsk_sendmsg", "xsk_destruct_skb", "xsk_cq_", "xskq_")),
    ("veth xmit/poll", ("veth_xmit", "veth_poll", "veth_forward_skb", "__dev_direct_xmit")),
    ("kernel net stack (next hop)", ("__netif_receive_skb", "netif_receive_skb", "ip_rcv", "ip_forward",
                                     "ip_output", "ip_finish_output", "tcp_", "udp_", "__dev_queue_xmit",
                                     "napi_gro", "gro_")),
    ("poll()", ("do_sys_poll", "do_poll", "__x64_sys_poll", "sock_poll", "xsk_poll")),
    ("scheduler", ("schedule", "finish_task_switch", "pick_next_task", "try_to_wake_up")),
    ("syscall entry/exit", ("entry_SYSCALL", "syscall_exit", "do_syscall_64", "syscall_return")),
    ("page faults", ("exc_page_fault", "handle_mm_fault", "do_user_addr_fault")),
)
#: User-space code by the object it lives in: perf needs no unwinding for this, so it is the unbiased split of a
#: worker's user time between the interpreter and the cipher (py-spy pauses the process and counts runnable
#: time too).
USER_OBJECTS = (("cryptography/OpenSSL (_rust.abi3.so)", ("_rust.abi3.so", "libcrypto", "libssl")),
                ("python interpreter", ("python3", "libpython")), ("libc", ("libc.so",)))
SYSCALL_SYM = re.compile(r"^__(?:x64|se|do)_sys_(\w+)")


def kernel_path(syms: list[str]) -> str:
    """The KERNEL_PATHS name of a kernel call chain (innermost symbol first), or ``other``."""
    for sym in syms:
        for name, markers in KERNEL_PATHS:
            if any(sym.startswith(m) for m in markers):
                return name
    return "other kernel"


def kernel_context(syms: list[str]) -> str:
    """Which syscall (or softirq/irq without one) the kernel sample ran under."""
    for sym in reversed(syms):
        m = SYSCALL_SYM.match(sym)
        if m:
            return f"sys_{m[1]}"
    if any(s in ("net_rx_action", "__do_softirq", "handle_softirqs") for s in syms):
        return "softirq (no syscall)"
    return "irq/fault/other"


def user_object(dso: str) -> str:
    for name, markers in USER_OBJECTS:
        if any(m in dso for m in markers):
            return name
    return f"other ({Path(dso).name})"


def parse_perf_script(text: str) -> list[tuple[str, int, int, list[tuple[str, str]]]]:
    """``perf script -F comm,pid,tid,cpu,ip,sym,dso`` -> [(comm, pid, cpu, [(sym, dso), ...innermost first])]."""
    samples, cur = [], None
    for line in text.splitlines():
        if not line.strip():
            cur = None
            continue
        if not line[0].isspace():
            m = re.match(r"^(.*?)\s+(-?\d+)/(-?\d+)\s+\[(\d+)\]", line)
            if m:
                cur = (m[1].strip(), int(m[2]), int(m[4]), [])
                samples.append(cur)
            continue
        if cur is not None:
            parts = line.strip().split(" ", 1)
            rest = parts[1] if len(parts) > 1 else ""
            sym, _, dso = rest.rpartition(" (")
            cur[3].append((sym.split("+0x")[0], dso.rstrip(")")))
    return samples


def summarize_perf(samples, names: dict[int, str], workers: dict[str, int], top: int = 12) -> dict:
    """System-wide CPU by process (``names`` labels known pids), and each worker's samples split user/kernel,
    by kernel path, by the syscall they ran under, and by CPU."""
    by_proc: collections.Counter[str] = collections.Counter()
    node_of = {pid: node for node, pid in workers.items()}
    per: dict[str, dict] = {node: {"n": 0, "kernel": 0, "paths": collections.Counter(), "cpus": collections.Counter(),
                                   "contexts": collections.Counter(), "leaves": collections.Counter(),
                                   "user": collections.Counter()}
                            for node in workers}
    for comm, pid, cpu, chain in samples:
        by_proc[names.get(pid) or ("idle" if pid == 0 else f"{comm} (other)")] += 1
        if pid not in node_of:
            continue
        w = per[node_of[pid]]
        w["n"] += 1
        w["cpus"][cpu] += 1
        kernel = [sym for sym, dso in chain if "kernel" in dso]
        if chain and "kernel" in chain[0][1]:
            w["kernel"] += 1
            w["paths"][kernel_path(kernel)] += 1
            w["contexts"][kernel_context(kernel)] += 1
            w["leaves"][kernel[0]] += 1
        elif chain:
            w["user"][user_object(chain[0][1])] += 1
    total = sum(by_proc.values()) or 1
    out = {"samples": total,
           "cpu_share_by_process": {p: round(n / total, 4) for p, n in by_proc.most_common(12)}}
    for node, w in per.items():
        k, n = w["kernel"] or 1, w["n"] or 1
        out[node] = {"samples": w["n"], "kernel_share": round(w["kernel"] / n, 4),
                     "user_objects": {o: round(m / n, 4) for o, m in w["user"].most_common()},
                     "by_cpu": {str(c): round(m / n, 4) for c, m in sorted(w["cpus"].items())},
                     "kernel_paths": {p: round(m / k, 4) for p, m in w["paths"].most_common()},
                     "kernel_contexts": {c: round(m / k, 4) for c, m in w["contexts"].most_common()},
                     "kernel_top_symbols": [[s, round(m / k, 4)] for s, m in w["leaves"].most_common(top)]}
    return out


# --- counters -------------------------------------------------------------------------------------------------


def proc_times(pid: int) -> dict[str, float]:
    """CPU seconds of one process so far: user and system (/proc/<pid>/stat fields 14, 15, clock ticks), and
    from the scheduler (/proc/<pid>/schedstat, ns) the time on a CPU and the time runnable but waiting for one."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    run_ns, wait_ns, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    return {"user": int(fields[11]) / CLK_TCK, "sys": int(fields[12]) / CLK_TCK,
            "run": int(run_ns) / 1e9, "wait": int(wait_ns) / 1e9}


def snapshot(gws, workers: dict[str, int], coords: dict[str, int]) -> dict:
    """Everything the windows difference: CPU times, SA packets, worker and AF_XDP socket statistics."""
    snap = {"t": time.monotonic(), "nodes": {}}
    for node, pid in workers.items():
        stats = gws.query(node, "stats")
        worker = stats["workers"][0]
        snap["nodes"][node] = {
            "worker": proc_times(pid), "coordinator": proc_times(coords[node]),
            "sa_packets": sum(sa["packets"] for sa in gws.query(node, "sas")),
            "rx": worker["rx"], "tx": worker["tx"], "drops": dict(worker["drops"]),
            "sockets": {name: dict(s) for name, s in worker["sockets"].items()},
            "xdp_drops": dict(stats["xdp"]["drops"])}
    return snap


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _per_packet(seconds: float, packets: int) -> float | None:
    return round(seconds * 1e6 / packets, 2) if packets else None


def window_figures(before: dict, after: dict) -> dict:
    """Per gateway: packets (both SAs), rate, user and kernel µs per packet, the worker's share of the window
    on a CPU and waiting for one, the coordinator's CPU, counter deltas."""
    seconds = after["t"] - before["t"]
    out = {"seconds": round(seconds, 2)}
    for node, a in after["nodes"].items():
        b = before["nodes"][node]
        packets = a["sa_packets"] - b["sa_packets"]
        w = {k: a["worker"][k] - b["worker"][k] for k in a["worker"]}
        out[node] = {"packets": packets, "kpps": round(packets / seconds / 1e3, 2),
                     "worker_user_s": round(w["user"], 2), "worker_sys_s": round(w["sys"], 2),
                     "worker_on_cpu": round(w["run"] / seconds, 3),
                     "worker_runqueue_wait": round(w["wait"] / seconds, 3),
                     "user_us_per_packet": _per_packet(w["user"], packets),
                     "kernel_us_per_packet": _per_packet(w["sys"], packets),
                     "run_us_per_packet": _per_packet(w["run"], packets),
                     "coordinator_cpu_s": round(a["coordinator"]["run"] - b["coordinator"]["run"], 3),
                     "worker_rx": a["rx"] - b["rx"], "worker_tx": a["tx"] - b["tx"],
                     "worker_drops": _delta(a["drops"], b["drops"]),
                     "xdp_drops": _delta(a["xdp_drops"], b["xdp_drops"]),
                     "sockets": {s: d for s, v in a["sockets"].items() if (d := _delta(v, b["sockets"].get(s, {})))}}
    return out


# --- the tools ------------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a tool (killing it after ``timeout``); its stderr (or merged output)."""
    try:
        return proc.communicate(timeout=timeout)[1] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1] or ""


def perf_record(workers: dict[str, int], seconds: float, work: Path) -> dict:
    """perf record -a -g for ``seconds``, and a perf stat of each worker's syscalls over the same time.

    Returns the raw results; `perf_summary` turns them into shares once the load is over (perf script takes
    seconds of CPU that must not fall inside a window)."""
    data = work / "perf.data"
    events = ",".join(["duration_time", *(f"syscalls:sys_enter_{s}" for s in SYSCALLS)])
    stats = {node: subprocess.Popen([PERF, "stat", "-x", ";", "-e", events, "-p", str(pid), "--", "sleep",
                                     str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for node, pid in workers.items()}
    rec = subprocess.Popen([PERF, "record", "-a", "-g", "-F", str(PERF_HZ), "-o", str(data), "--", "sleep",
                            str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = _finish(rec, seconds + 30)
    syscalls = {node: _perf_stat_counts(_finish(proc, 30)) for node, proc in stats.items()}
    if rec.returncode:
        return {"error": f"perf record: exit {rec.returncode}: {err.strip()[-300:]}"}
    return {"data": data, "syscalls": syscalls}


def perf_summary(raw: dict, names: dict[int, str], workers: dict[str, int]) -> dict:
    if "error" in raw:
        return raw
    script = _run([PERF, "script", "-i", str(raw["data"]), "-F", "comm,pid,tid,cpu,ip,sym,dso"], timeout=300)
    result = summarize_perf(parse_perf_script(script.stdout), names, workers)
    result["syscalls"] = raw["syscalls"]
    return result


def _perf_stat_counts(csv: str) -> dict[str, float]:
    """perf stat -x ';' lines -> {syscall: count, "seconds": duration}."""
    counts: dict[str, float] = {}
    for line in csv.splitlines():
        parts = line.split(";")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        if parts[2] == "duration_time":
            counts["seconds"] = int(parts[0]) / 1e9
        elif parts[2].startswith("syscalls:sys_enter_"):
            counts[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
    return counts


def pyspy_record(workers: dict[str, int], seconds: float, work: Path) -> dict:
    """py-spy --native on every worker at once for ``seconds``; the raw folded stacks per worker."""
    procs = {}
    for node, pid in workers.items():
        out = work / f"pyspy-{node}.txt"
        procs[node] = (out, subprocess.Popen(
            [str(PY_SPY), "record", "--native", "--rate", str(PY_SPY_HZ), "-d", str(round(seconds)), "-p", str(pid),
             "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    result = {}
    for node, (out, proc) in procs.items():
        log = _finish(proc, seconds + 30)
        if proc.returncode or not out.exists():
            result[node] = {"error": f"py-spy exit {proc.returncode}: {log.strip()[-300:]}"}
        else:
            result[node] = summarize_pyspy(out.read_text())
            m = re.search(r"Errors: (\d+)", log)
            result[node]["errors"] = int(m[1]) if m else None
    return result


def tool_check() -> dict[str, str]:
    """Which profilers run on this kernel: '' if usable, else why not."""
    why = {}
    try:
        out = _run([PERF, "record", "-a", "-g", "-o", "/dev/null", "--", "true"], timeout=20)
        why["perf"] = "" if out.returncode == 0 else out.stderr.strip()[-200:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        why["perf"] = str(exc)
    why["py-spy"] = "" if PY_SPY.exists() else f"{PY_SPY} missing"
    return why


# --- loads ----------------------------------------------------------------------------------------------------


def udp_args(pps: float) -> list[str]:
    return ["-u", "-l", "64", "-b", str(max(1, round(pps * 64 * 8)))]


def calibrate_udp(lab: Lab) -> float:
    """Packets/s the tunnel delivered from an unlimited 64-byte UDP sender."""
    probe = traffic.udp_probe(lab, traffic.udp_load(64, 1, 0), None, CALIBRATE_SECONDS, {})
    return probe["received_pps"]


def profile_load(lab: Lab, gws, workers, coords, iperf_args: list[str], seconds: int, tools: dict,
                 work: Path) -> dict:
    """Run one iperf3 client for ``seconds`` and the three windows meanwhile; returns everything measured."""
    result: dict = {}
    done: dict = {}

    def client():
        try:
            done["end"] = traffic.iperf_clients(lab, seconds, [iperf_args])[0]
        except Exception as exc:  # noqa: BLE001 - reported with the load's results
            done["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    # Three windows plus ~0.5 s of tool start-up each must end before the client does.
    window = (seconds - WARMUP - 2.0) / 3
    time.sleep(WARMUP)
    before = snapshot(gws, workers, coords)
    time.sleep(window)
    after = snapshot(gws, workers, coords)
    result["clean"] = window_figures(before, after)
    raw_perf = None
    if not tools["perf"]:
        before = snapshot(gws, workers, coords)
        raw_perf = perf_record(workers, window, work)
        after = snapshot(gws, workers, coords)
        result["perf_window"] = window_figures(before, after)
    if not tools["py-spy"]:
        before = snapshot(gws, workers, coords)
        result["pyspy"] = pyspy_record(workers, window, work)
        after = snapshot(gws, workers, coords)
        result["pyspy_window"] = window_figures(before, after)
    thread.join(seconds + 40)
    result["iperf"] = _iperf_result(done)
    if raw_perf is not None:
        result["perf"] = perf_summary(raw_perf, process_names(workers, coords), workers)
    return result


def _iperf_result(done: dict) -> dict:
    end = done.get("end")
    if end is None:
        return {"error": done.get("error", "iperf3 did not finish")}
    rx = end["sum_received"]
    if "packets" in rx:  # UDP
        return {"mbit_s": round(rx["bits_per_second"] / 1e6, 1), "packets": rx["packets"],
                "lost_percent": round(rx["lost_percent"], 2)}
    return {"mbit_s": round(rx["bits_per_second"] / 1e6, 1), "retransmits": end["sum_sent"].get("retransmits")}


def process_names(workers: dict[str, int], coords: dict[str, int]) -> dict[int, str]:
    """Labels for perf's per-process table: the gateways' processes, this script, the rest by command line."""
    names = {pid: f"{node} worker" for node, pid in workers.items()}
    names.update({pid: f"{node} coordinator" for node, pid in coords.items()})
    names[os.getpid()] = "profile_lab.py (this script)"
    return names


def batches(r: dict) -> dict:
    """Frames per transmit kick (sendto) and per poll() sleep: the batch sizes under this load.

    The worker kicks every port it queued frames for once per round, and only sleeps in poll() after
    BUSY_POLL_NS without frames, so frames per sendto is the tx batch per port and round."""
    out = {}
    for node in ("gwA", "gwB"):
        sc = r.get("perf", {}).get("syscalls", {}).get(node) or {}
        win = r.get("perf_window", {}).get(node)
        if not win or not sc.get("seconds"):
            continue
        frames_per_s = win["worker_tx"] / r["perf_window"]["seconds"]
        out[node] = {"frames_per_s": round(frames_per_s),
                     "sendto_per_s": round(sc.get("sendto", 0) / sc["seconds"]),
                     "poll_per_s": round(sc.get("poll", 0) / sc["seconds"]),
                     "frames_per_sendto": round(frames_per_s * sc["seconds"] / sc["sendto"], 2)
                     if sc.get("sendto") else None,
                     "frames_per_poll": round(frames_per_s * sc["seconds"] / sc["poll"], 2)
                     if sc.get("poll") else None}
    return out


# --- report ---------------------------------------------------------------------------------------------------


def print_load(name: str, r: dict) -> None:
    print(f"\n== {name}: iperf3 {r['iperf']}")
    print(f"{'window':<14}{'node':<5}{'kpps':>7}{'on CPU':>8}{'rq wait':>8}{'user µs/p':>10}{'kern µs/p':>10}"
          f"{'run µs/p':>9}")
    for win in ("clean", "perf_window", "pyspy_window"):
        for node in ("gwA", "gwB"):
            f = r.get(win, {}).get(node)
            if f is None:
                continue
            print(f"{win:<14}{node:<5}{f['kpps']:7.2f}{f['worker_on_cpu']:8.2f}{f['worker_runqueue_wait']:8.2f}"
                  f"{f['user_us_per_packet'] or 0:10.1f}{f['kernel_us_per_packet'] or 0:10.1f}"
                  f"{f['run_us_per_packet'] or 0:9.1f}")
    perf = r.get("perf", {})
    if "cpu_share_by_process" in perf:
        print("both vCPUs by process:", ", ".join(f"{p} {s:.0%}" for p, s in perf["cpu_share_by_process"].items()))
        for node in ("gwA", "gwB"):
            p = perf[node]
            print(f"{node}: kernel {p['kernel_share']:.0%} of samples, by CPU {p['by_cpu']}; kernel paths: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in list(p["kernel_paths"].items())[:7]))
            print(f"{node}: user by object (share of all its samples): "
                  + ", ".join(f"{k} {v:.0%}" for k, v in p["user_objects"].items()))
            print(f"{node}: kernel under: " + ", ".join(f"{k} {v:.0%}" for k, v in list(p["kernel_contexts"].items())[:4]))
    elif perf:
        print("perf:", perf.get("error"))
    print("batches:", r.get("batches"))
    for node, s in r.get("pyspy", {}).items():
        if "error" in s:
            print(f"{node} py-spy: {s['error']}")
            continue
        print(f"{node} py-spy {s['samples']} samples, {s['poll_samples']} in poll() left out: " + ", ".join(f"{c} {v:.0%}" for c, v in s["categories"].items()))
        for fn, share in s["top_python_self"][:10]:
            print(f"    {share:6.1%}  {fn}")


# --- main -----------------------------------------------------------------------------------------------------


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args) -> dict:
    case = next(c for c in make_cases() if c.name == CASE)
    tools = tool_check()
    result = {"started": dt.datetime.now(dt.UTC).isoformat(), "case": CASE, "machine": machine(),
              "tools_unusable": {t: why for t, why in tools.items() if why}, "seconds_per_load": args.seconds,
              "perf_hz": PERF_HZ, "pyspy_hz": PY_SPY_HZ, "loads": {}}
    work = Path(tempfile.mkdtemp(prefix="xdpsec-profile-"))
    try:
        with Lab(queues=case.queues, prefix=LAB_PREFIX) as lab:
            lab.site_to_site()
            running = bring_up(lab, case, work, 120.0)
            try:
                gws = running.xdpsec
                coords = dict(running.gateways)
                workers = {node: gws.query(node, "stats")["workers"][0]["pid"] for node in coords}
                result["worker_cpus"] = {node: sorted(os.sched_getaffinity(pid)) for node, pid in workers.items()}
                for load in args.loads:
                    if load == "udp64":
                        carried = calibrate_udp(lab)
                        pps = args.udp_pps or UDP_OVER * carried
                        print(f"udp64: unlimited sender delivered {carried / 1e3:.1f} kpps; offering "
                              f"{pps / 1e3:.1f} kpps", flush=True)
                        r = profile_load(lab, gws, workers, coords, udp_args(pps), args.seconds, tools, work)
                        r["calibration_delivered_pps"], r["offered_pps"] = round(carried), round(pps)
                    else:
                        r = profile_load(lab, gws, workers, coords, ["-P", "1"], args.seconds, tools, work)
                    r["batches"] = batches(r)
                    result["loads"][load] = r
                    print_load(load, r)
            finally:
                running.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=14, help="length of each load (three windows + warm-up)")
    ap.add_argument("--udp-pps", type=float, help="offered 64 B rate (default: 1.1 x an unlimited probe's)")
    ap.add_argument("--loads", nargs="+", choices=("udp64", "tcp1"), default=["udp64", "tcp1"])
    ap.add_argument("--out", type=Path, help="JSON file (default docs/bench/profile-lab-<UTC>.json)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("profile_lab: run as root (namespaces, XDP, AF_XDP, perf)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    started = dt.datetime.now(dt.UTC)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("profile_lab: interrupted; the lab is torn down, nothing is written", file=sys.stderr)
        return 130
    out = args.out or REPO / "docs" / "bench" / f"profile-lab-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
