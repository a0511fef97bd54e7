"""Faults in the lab: the coordinator killed outright, an interface bounced, and what the running processes
are allowed to do.

    hostA ── gwA ══ wire (capture) ══ gwB ── hostB      (manually keyed tunnel, xdpsec/lab.py)

* SIGKILL of gwA's coordinator: its workers stop (their command pipe closes) and the XDP classifier, still
  attached, drops what it would have protected (`no_socket`): the data path fails closed. The capture on the
  wire proves nothing was sent in clear. A new coordinator of the same configuration removes what the dead
  one left (xdpsec/io/adopt.py: attached programs, pins, workers) and traffic resumes at once (manual keys;
  its sequence numbers continue after the reserved block, so gwB's replay window accepts them).
* gwA's outside interface down and up: traffic resumes after up.
* A worker's effective capabilities once running (xdpsec/io/caps.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdpsec.io import caps
from xdpsec.labconf import MARKER, Gateways, PairSpec, site_sides, wire_report, write_pair

pytestmark = pytest.mark.netns

PIN_ROOT = Path("/sys/fs/bpf/xdpsec")


def start_site(make_lab, tmp_path, **spec):
    lab = make_lab(topology="site")
    a, b = site_sides(lab, workers=spec.get("workers", 2))
    pa, pb = write_pair(tmp_path, a, b, PairSpec(mode="tunnel", **spec))
    gws = Gateways(lab)
    gws.start("gwA", pa, a.instance)
    gws.start("gwB", pb, b.instance)
    gws.wait_ready()
    gws.configs = {"gwA": pa, "gwB": pb}
    return lab, gws


def xdp_attached(lab, node: str, iface: str) -> bool:
    return "prog/xdp" in lab.run(node, "ip", "-d", "link", "show", iface).stdout


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def marker_pings(lab, count: int) -> subprocess.Popen:
    """hostA pings hostB with the plaintext MARKER as payload pattern: bounded in count and time."""
    return lab.popen("hostA", "ping", "-n", "-i", "0.05", "-c", str(count), "-W", "1", "-p", MARKER.hex(),
                     lab.addr["hostB"]["v4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_coordinator_sigkill_fails_closed_and_a_restart_leaves_nothing_stale(make_lab, tmp_path):
    lab, gws = start_site(make_lab, tmp_path, workers=2)
    inst, dst = gws.instances["gwA"], lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=3).received >= 2
    workers = [w["pid"] for w in gws.query("gwA", "stats")["workers"]]
    coordinator = gws.procs["gwA"]
    assert Path(f"/proc/{coordinator.pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"xdpsec"]

    cap = lab.capture("wire", "br0")
    pinger = marker_pings(lab, 100)  # 5 s of traffic across the kill
    time.sleep(1)
    os.kill(coordinator.pid, signal.SIGKILL)
    coordinator.wait(10)
    # Either the workers go on forwarding on the SAs they hold, or they stop and the still-attached XDP
    # program drops as no_socket: both are allowed, sending in clear is not.
    assert xdp_attached(lab, "gwA", "lan0") and (PIN_ROOT / inst).exists()  # what a SIGKILL leaves behind
    pinger.wait(30)
    seen = wire_report(cap.stop(), lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    assert seen["marker"] == 0 and seen["other"] == 0 and seen["esp"] > 0, seen  # never open

    # The same configuration started again: Gateway.start runs adopt.clean_stale first.
    gws.start("gwA", gws.configs["gwA"], inst)
    gws.wait_ready()
    assert "cleaned up after an earlier run" in gws.log("gwA")
    assert not any(alive(p) for p in workers), "the killed coordinator's workers outlived the restart"
    assert lab.ping("hostA", dst, count=5, timeout=8).received >= 4, gws.log("gwA")
    out_sa = gws.sa("gwA", "out")
    # After a clean stop of the new gateway nothing may remain, including what the killed one had pinned.
    assert gws.stop("gwA") == {"gwA": 0}
    assert not xdp_attached(lab, "gwA", "lan0") and not xdp_attached(lab, "gwA", "wan0")
    assert not (PIN_ROOT / inst).exists(), sorted(p.name for p in (PIN_ROOT / inst).iterdir())
    assert out_sa["packets"] > 0 and not gws.sa("gwB", "in")["drops"].get("replay"), gws.sa("gwB", "in")


_CLEAN = """
import json, sys
from pathlib import Path
from xdpsec.io.adopt import clean_stale
print(json.dumps(clean_stale(sys.argv[1], Path(sys.argv[2]))))
"""


def test_clean_stale_removes_programs_pins_and_workers_of_a_killed_gateway(make_lab, tmp_path):
    lab, gws = start_site(make_lab, tmp_path, workers=2)
    inst = gws.instances["gwA"]
    workers = [w["pid"] for w in gws.query("gwA", "stats")["workers"]]
    for pid in workers:  # wedge the workers, so they cannot notice the coordinator's death themselves
        os.kill(pid, signal.SIGSTOP)
    os.kill(gws.procs["gwA"].pid, signal.SIGKILL)
    gws.procs["gwA"].wait(10)
    assert all(Path(f"/proc/{p}").exists() for p in workers)
    out = lab.run("gwA", sys.executable, "-c", _CLEAN, inst, str(tmp_path / "state"), timeout=60)
    done = out.stdout
    assert wait_until(lambda: not any(alive(p) for p in workers), 5), done
    assert not xdp_attached(lab, "gwA", "lan0") and not xdp_attached(lab, "gwA", "wan0"), done
    assert not (PIN_ROOT / inst).exists(), done
    for pid in workers:
        assert f"stopped leftover process {pid}" in done
    # Nothing left: a second pass finds nothing to do.
    again = lab.run("gwA", sys.executable, "-c", _CLEAN, inst, str(tmp_path / "state"), timeout=60)
    assert again.stdout.strip() == "[]"
    gws.procs.pop("gwA")


def test_outside_interface_down_and_up(make_lab, tmp_path):
    lab, gws = start_site(make_lab, tmp_path, workers=2)
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=3).received >= 2
    lab.run("gwA", "ip", "link", "set", "wan0", "down")
    assert lab.ping("hostA", dst, count=3, timeout=3).received == 0
    lab.run("gwA", "ip", "link", "set", "wan0", "up")
    # Routes through wan0 went with the link: the lab's route to gwB's site must come back too, as an
    # operator's network configuration would restore it.
    lab.run("gwA", "ip", "route", "replace", lab.addr["gwB"]["lan_net_v4"], "via", lab.addr["gwB"]["wan_v4"])
    assert wait_until(lambda: lab.ping("hostA", dst, count=2, timeout=3).received >= 1, 15), gws.log("gwA")
    assert lab.ping("hostA", dst, count=5, timeout=8).received >= 4
    assert all(w["alive"] for w in gws.query("gwA", "stats")["workers"])


def test_running_workers_hold_no_capabilities_and_the_coordinator_only_its_own(make_lab, tmp_path):
    lab, gws = start_site(make_lab, tmp_path, workers=2)
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3).received >= 2
    workers = gws.query("gwA", "stats")["workers"]
    held = {w["id"]: caps.effective(w["pid"]) for w in workers}
    assert held == {w["id"]: caps.mask(caps.WORKER) for w in workers}
    # Capabilities are per thread: every thread of the coordinator (main, pump, resolver, IKE, control...)
    # must be down to COORDINATOR, and the test itself (root, everything) must differ from that.
    threads = caps.effective_by_thread(gws.procs["gwA"].pid)
    assert len(threads) >= 3, threads  # main, pump and resolver at least
    assert caps.effective() & ~caps.mask(caps.COORDINATOR), "the test runs without extra capabilities: proves nothing"
    extra = {tid: hex(eff) for tid, eff in threads.items() if eff & ~caps.mask(caps.COORDINATOR)}
    assert not extra, extra
    assert {eff for eff in threads.values()} == {caps.mask(caps.COORDINATOR)}
