#!/usr/bin/env python3
"""Scale run (issue 4 point 7, issue 7 point 4): N tunnels, an IKE SA and a child SA each, between two gateways.

The responder (gwB) picks a connection by the initiator's outer address (xdpsec/ike/manager.py _conn_for), so
gwA gets one outer address per tunnel, 2001:db8:f::1:<i> on its wan port (IPv6: no IPv4 documentation range
holds 1,000 hosts), and gwB one connection per remote address. Each child protects one inner host pair: hostA
gets 32 extra addresses in 198.51.100.0/25 and hostB 32 in 198.51.100.128/25, and tunnel i carries
(A[i % 32], B[i // 32]), so N <= 1024 and every child's two policies are /32 host pairs.

Phases, each timed: setup (up to 64 tunnels: start_action = start; more: `initiate` over the control socket,
at most BATCH in flight, because of the two limits at START_MAX and BATCH; tunnels per second counts from gwA's control
socket answering, after its classifier compiled, until all N child SA pairs are installed on both gateways), traffic (one UDP datagram per tunnel from hostA, hostB counts which arrived; the losses of the first round are
recorded, and a tunnel fails only if two more rounds lose its datagram too),
rekey (`rekey` of every connection's child, until every outbound SPI on gwA changed; then traffic again),
terminate (until no SA is left on either side). The coordinators' RSS and CPU time come from /proc (VmRSS,
utime + stime of the process, its threads included), each worker's RSS likewise; sampled after each phase.
Writes docs/bench/scale-<UTC timestamp>.json (or --out).

Run as root: python scripts/scale.py --tunnels 1000
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xdpsec.control import ControlError, request, socket_path  # noqa: E402
from xdpsec.lab import Lab  # noqa: E402
from xdpsec.labconf import Gateways  # noqa: E402

HOSTS_PER_SIDE = 32
MAX_TUNNELS = HOSTS_PER_SIDE * HOSTS_PER_SIDE
A_HOSTS = [f"198.51.100.{20 + i}" for i in range(HOSTS_PER_SIDE)]
B_HOSTS = [f"198.51.100.{140 + i}" for i in range(HOSTS_PER_SIDE)]
GW_B_OUTER = "2001:db8:f::2"
PORT = 9000
#: Up to START_MAX tunnels start by themselves (start_action = start, all at once); more are initiated over the
#: control socket with at most BATCH in flight: the responder asks for COOKIEs from 64 half-open IKE SAs on
#: (xdpsec/ike/manager.py COOKIE_THRESHOLD), and an unpaced start of 1,000 lost 546 IKE SAs there (see
#: docs/BENCHMARKS.md, Scale). The control socket answers "IKE command queue full" (retried) beyond 1024 queued.
START_MAX = 64
BATCH = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")


def outer_a(i: int) -> str:
    return str(ipaddress.IPv6Address("2001:db8:f::1:0") + i)


def inner_pair(i: int) -> tuple[str, str]:
    return A_HOSTS[i % HOSTS_PER_SIDE], B_HOSTS[i // HOSTS_PER_SIDE]


# --- configurations ----------------------------------------------------------------------------------------

def _conn(i: int, *, initiator: bool, ike: str, esp: str, start: bool) -> list[str]:
    a_in, b_in = inner_pair(i)
    local, remote = (outer_a(i), GW_B_OUTER) if initiator else (GW_B_OUTER, outer_a(i))
    lts, rts = (a_in, b_in) if initiator else (b_in, a_in)
    return [
        "", f"[connections.t{i}]", f'local_addrs = ["{local}"]', f'remote_addrs = ["{remote}"]',
        f'proposals = ["{ike}"]',
        f"[connections.t{i}.local]", 'auth = "psk"', f'id = "{local}"',
        f"[connections.t{i}.remote]", 'auth = "psk"', f'id = "{remote}"',
        f"[connections.t{i}.children.c]", f'local_ts = ["{lts}/32"]', f'remote_ts = ["{rts}/32"]',
        'mode = "tunnel"', f'esp_proposals = ["{esp}"]',
        f'start_action = "{"start" if initiator and start else "none"}"',
    ]


def render(instance: str, n: int, *, initiator: bool, state_dir: Path, psk: str,
           ike: str = "aes128gcm16-prfsha256-x25519", esp: str = "aes128gcm16", workers: int = 2) -> str:
    """One gateway's configuration: N connections t0..tN-1 with one child "c" each, PSK-authenticated."""
    lines = [f'instance = "{instance}"', "", "[gateway]", 'interfaces = ["lan0", "wan0"]', f"workers = {workers}",
             f'state_dir = "{state_dir}"', "", "[limits]", f"half_open_ike_sas = {max(1024, 2 * n)}"]
    for i in range(n):
        lines += _conn(i, initiator=initiator, ike=ike, esp=esp, start=n <= START_MAX)
    lines += ["", "[secrets]", "ike = ["]
    lines += [f'  {{ id = ["{outer_a(i)}", "{GW_B_OUTER}"], secret = "{psk}" }},' for i in range(n)]
    lines += ["]"]
    return "\n".join(lines) + "\n"


def write_configs(directory: Path, run_name: str, n: int) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    psk = secrets.token_urlsafe(24)
    paths = []
    for node, initiator in (("gwA", True), ("gwB", False)):
        path = directory / f"{node}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the PSK
        with os.fdopen(fd, "w") as f:
            f.write(render(f"{run_name}-{node}", n, initiator=initiator, state_dir=directory / "state", psk=psk))
        paths.append(path)
    return paths[0], paths[1]


# --- the lab -------------------------------------------------------------------------------------------------

def add_addresses(lab: Lab, n: int) -> None:
    """gwA's outer address per tunnel, the hosts' inner ones (ip -batch: one process, not 1,000)."""
    batch = "".join(f"address add {outer_a(i)}/64 dev wan0 nodad\n" for i in range(n))
    lab.run("gwA", "ip", "-batch", "-", input=batch, timeout=120)
    for node, dev, hosts in (("hostA", "a0", A_HOSTS), ("hostB", "b0", B_HOSTS)):
        lab.run(node, "ip", "-batch", "-", input="".join(f"address add {h}/25 dev {dev}\n" for h in hosts))


def proc_usage(pid: int) -> dict:
    """RSS (KiB) and CPU seconds (user + system, all threads) of one process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"rss_kib": rss, "cpu_s": (int(fields[11]) + int(fields[12])) / CLK_TCK}


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def usage(gws: Gateways) -> dict:
    """Coordinator and per-worker usage of both gateways now."""
    snap = {}
    for node, proc in gws.procs.items():
        if proc.poll() is not None:
            continue
        snap[node] = {"coordinator": proc_usage(proc.pid),
                      "workers": [proc_usage(w) for w in children(proc.pid)]}
    return snap


def child_sas(gws: Gateways, node: str) -> list[dict]:
    try:
        return request(socket_path(gws.instances[node]), "sas", timeout=60.0)
    except ControlError:
        return []


def wait_for(what: str, done, timeout: float, poll: float = 1.0) -> float:
    """Seconds until done() held; RuntimeError after timeout."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(poll)
    return time.monotonic() - start


def out_spis(gws: Gateways, node: str) -> dict[str, str]:
    """The newest outbound SPI of each connection's child on `node`."""
    spis: dict[str, str] = {}
    for row in sorted(child_sas(gws, node), key=lambda r: r["index"]):
        if row["direction"] == "out":
            spis[row["name"]] = row["spi"]
    return spis


_SINK = """
import json, socket, sys
n, idle, port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    s.settimeout(idle * 10)
    seen = set()
    try:
        while len(seen) < n:
            seen.add(int(s.recv(64)))
            s.settimeout(idle)
    except TimeoutError:
        pass
print(json.dumps(sorted(seen)))
"""

_SEND = """
import socket, sys
port = int(sys.argv[1])
for line in sys.stdin:
    i, src, dst = line.split()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.sendto(i.encode(), (dst, port))
"""


def traffic(lab: Lab, n: int) -> list[int]:
    """Send one datagram through each tunnel; the tunnel indices whose datagram did not arrive."""
    sink = lab.popen("hostB", sys.executable, "-c", _SINK, str(n), "3", str(PORT), stdout=-1, stderr=-1, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        lines = "".join(f"{i} {inner_pair(i)[0]} {inner_pair(i)[1]}\n" for i in range(n))
        lab.run("hostA", sys.executable, "-c", _SEND, str(PORT), input=lines, timeout=120)
        out, _err = sink.communicate(timeout=120)
    finally:
        if sink.poll() is None:
            sink.kill()
    seen = set(json.loads(out.strip().splitlines()[-1]))
    return [i for i in range(n) if i not in seen]


def control_each(gws: Gateways, cmd: str, n: int, *, timeout: float = 60.0, first: int = 0) -> int:
    """Send `cmd` for connections first..n-1 to gwA; returns how often the IKE command queue was full (retried)."""
    full = 0
    for i in range(first, n):
        args = {"conn": f"t{i}", "child": "c"} if cmd in ("rekey", "initiate") else {"conn": f"t{i}"}
        deadline = time.monotonic() + timeout
        while True:
            try:
                request(socket_path(gws.instances["gwA"]), cmd, args, timeout=30.0)
                break
            except ControlError:
                full += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return full


def sa_count(gws: Gateways, node: str) -> int:
    """How many SAs `node` holds (`status`: a count, cheaper for both sides than listing them)."""
    try:
        return request(socket_path(gws.instances[node]), "status", timeout=60.0)["sas"]
    except ControlError:
        return 0


def initiate_paced(gws: Gateways, n: int, timeout: float) -> int:
    """Initiate t0..tN-1 over the control socket with at most BATCH tunnels in flight: the next ones as soon as
    gwA's SA count shows earlier ones up (a sliding window, not batches that wait for their slowest)."""
    full, started = 0, 0
    deadline = time.monotonic() + timeout
    while started < n:
        room = BATCH - (started - sa_count(gws, "gwA") // 2)
        if room > 0:
            last = min(n, started + room)
            full += control_each(gws, "initiate", last, first=started, timeout=timeout)
            started = last
        elif time.monotonic() > deadline:
            raise RuntimeError(f"setup: {started} initiated, fewer than {started - BATCH} up after {timeout:.0f} s")
        else:
            time.sleep(0.05)
    return full


def run(n: int, *, timeout: float, log_level: str = "warning", prefix: str = "xs") -> dict:
    """The whole scale run in a fresh lab; the figures as a dict."""
    if not 1 <= n <= MAX_TUNNELS:
        raise ValueError(f"--tunnels: 1..{MAX_TUNNELS}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # two IKE sockets per outer address, inherited
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 4096)), hard))
    result: dict = {"tunnels": n, "method": __doc__.split("\n\n")[1:3]}
    with Lab(prefix=prefix, tag="sc" + secrets.token_hex(2)) as lab:
        lab.site_to_site()
        t0 = time.monotonic()
        add_addresses(lab, n)
        result["lab_addresses_s"] = round(time.monotonic() - t0, 2)
        cfg_a, cfg_b = write_configs(lab._tmpdir() / "scale", lab.run_name, n)
        gws = Gateways(lab)
        try:
            gws.start("gwB", cfg_b, f"{lab.run_name}-gwB", log_level=log_level)
            gws.wait_ready(timeout)
            result["usage_idle"] = usage(gws)
            t0 = time.monotonic()
            gws.start("gwA", cfg_a, f"{lab.run_name}-gwA", log_level=log_level)
            gws.wait_ready(timeout)  # compiling the classifier, forking workers: not part of the rate
            result["gw_start_s"] = round(time.monotonic() - t0, 2)
            t_ready = time.monotonic()
            result["initiated_by"] = "start_action" if n <= START_MAX else f"control, at most {BATCH} in flight"
            if n > START_MAX:
                result["initiate_queue_full"] = initiate_paced(gws, n, timeout)
            up = lambda: all(sa_count(gws, node) >= 2 * n for node in ("gwA", "gwB"))  # noqa: E731
            wait_for("setup", up, timeout, poll=0.2)
            setup = time.monotonic() - t_ready
            result["setup_s"] = round(result["gw_start_s"] + setup, 2)
            result["tunnels_per_s"] = round(n / setup, 1)
            result["usage_up"] = usage(gws)
            result["lost_first_datagram"] = lost = traffic(lab, n)
            result["stats_after_first_datagram"] = {node: gws.query(node, "stats") for node in gws.procs}
            for _round in range(2):  # the first may meet next hops being resolved (dropped, not queued)
                lost = sorted(set(lost) & set(traffic(lab, n))) if lost else lost
            result["lost_before_rekey"] = lost
            before = out_spis(gws, "gwA")
            t0 = time.monotonic()
            result["rekey_queue_full"] = control_each(gws, "rekey", n, timeout=timeout)
            changed = lambda: sum(before.get(k) != v for k, v in out_spis(gws, "gwA").items()) >= n  # noqa: E731
            result["rekey_s"] = round(wait_for("rekey", changed, timeout, poll=2.0), 2)
            result["usage_rekeyed"] = usage(gws)
            time.sleep(1.0)  # the old pairs' grace (coordinator RETIRE_GRACE)
            result["lost_after_rekey"] = traffic(lab, n)
            t0 = time.monotonic()
            result["terminate_queue_full"] = control_each(gws, "terminate", n, timeout=timeout)
            gone = lambda: not child_sas(gws, "gwA") and not child_sas(gws, "gwB")  # noqa: E731
            result["terminate_s"] = round(wait_for("terminate", gone, timeout, poll=2.0), 2)
            result["usage_down"] = usage(gws)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["log_tail"] = {node: gws.log(node)[-2000:] for node in gws.procs}
            result["usage_at_error"] = usage(gws)
        finally:
            gws.stop()
    return result


# --- the SPD's per-packet cost ----------------------------------------------------------------------------

def spd_cost(counts: tuple[int, ...] = (0, 16, 256, 1024, 2048, 4096), repeat: int = 20000,
             walks: int = 500) -> dict:
    """Nanoseconds per packet of the classifier (BPF_PROG_TEST_RUN) for a UDP packet that no policy matches, so
    the walk visits every row: the worst case of each SPD size. `walk`: the packet misses the flow cache
    (spd.h), walks, and files its result: the median of `walks` single runs, each after the cache was
    invalidated (a repeated run would hit). `cached`: the same packet again, its decision from the flow cache,
    as the median of `walks` single runs (the walk's method, overhead of a single run included) and as the
    kernel's average over `repeat` runs (`cached_avg`, the method of the figures before the cache). Runs in a network namespace of its own (the test run's ingress
    interface is its loopback)."""
    import ctypes
    import statistics

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from xdpsec import spd
    from xdpsec.abi import Action, PolicyDir
    from xdpsec.io import bpf

    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1024, dport=80) / bytes(18))
    data = ctypes.create_string_buffer(frame, len(frame))
    costs = {}
    with bpf.Classifier() as clf:
        clf.set_iface(1, 0)

        def test_run(times: int) -> int:
            attr = bpf._BpfAttrTestRun(prog_fd=clf._fn.fd, data_in=ctypes.addressof(data),
                                       data_size_in=len(frame), repeat=times)
            bpf._bpf(bpf._BPF_PROG_TEST_RUN, attr)
            assert attr.retval == bpf.XdpAction.PASS, attr.retval
            return attr.duration

        def walk() -> int:
            clf.invalidate_spd_cache()
            return test_run(1)

        for n in counts:
            rows = [spd.Policy(id=i + 1, name=f"p{i}", direction=PolicyDir(i % 2), action=Action.PROTECT,
                               priority=0, src=ipaddress.ip_network(f"203.0.113.{i % 256}/32"),
                               dst=ipaddress.ip_network(f"198.51.100.{i // 256}/32"), child="c")
                    for i in range(n)]
            clf.set_policies(rows, {"c": 1})
            walked = statistics.median(walk() for _ in range(walks))
            hits0 = clf.stats()["spd_cache_hit"]
            cached = statistics.median(test_run(1) for _ in range(walks))  # the last walk filed the flow
            cached_avg = test_run(repeat)
            assert clf.stats()["spd_cache_hit"] - hits0 == walks + repeat, "a cached run walked"
            costs[n] = {"walk": walked, "cached": cached, "cached_avg": cached_avg}
    return {"ns_per_packet_by_policies": costs, "repeat": repeat, "walks": walks, "method": spd_cost.__doc__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tunnels", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds each phase may take")
    ap.add_argument("--log-level", default="warning", help="the gateways' (debug shows why one failed to start)")
    ap.add_argument("--out", type=Path, help="JSON file (default docs/bench/scale-<timestamp>.json)")
    ap.add_argument("--spd-cost", action="store_true", help="only measure the SPD's per-packet cost and print it")
    args = ap.parse_args(argv)
    if args.spd_cost:
        print(json.dumps(spd_cost(), indent=2))
        return 0
    result = run(args.tunnels, timeout=args.timeout, log_level=args.log_level)
    # in a process of its own: spd_cost moves its caller into a new network namespace
    cost = subprocess.run([sys.executable, __file__, "--spd-cost"], capture_output=True, text=True, timeout=600)
    if cost.returncode == 0:
        result["spd_cost"] = json.loads(cost.stdout)
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.out or ROOT / "docs" / "bench" / f"scale-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=2))
    print(f"written to {out}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
