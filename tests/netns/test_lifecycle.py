"""Gateway lifecycle in the lab: clean shutdown leaves nothing behind; a killed worker is replaced and no ESP
sequence number (hence no AES-GCM nonce) is ever used twice under one key."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from scapy.all import ESP, IP, rdpcap

from xdpsec.control import socket_path
from xdpsec.labconf import Gateways, PairSpec, site_sides, write_pair

pytestmark = pytest.mark.netns


def start_site(make_lab, tmp_path, **spec):
    lab = make_lab(topology="site")
    a, b = site_sides(lab, workers=spec.get("workers", 2))
    pa, pb = write_pair(tmp_path, a, b, PairSpec(mode="tunnel", **spec))
    gws = Gateways(lab)
    gws.start("gwA", pa, a.instance)
    gws.start("gwB", pb, b.instance)
    gws.wait_ready()
    return lab, gws


def xdp_attached(lab, node: str, iface: str) -> bool:
    return "prog/xdp" in lab.run(node, "ip", "-d", "link", "show", iface).stdout


def test_sigterm_detaches_and_removes_everything(make_lab, tmp_path):
    lab, gws = start_site(make_lab, tmp_path, workers=2)
    inst = gws.instances["gwA"]
    pins = Path("/sys/fs/bpf/xdpsec") / inst
    assert xdp_attached(lab, "gwA", "lan0") and xdp_attached(lab, "gwA", "wan0")
    assert socket_path(inst).exists() and pins.exists()
    assert "xdps0" in lab.run("gwA", "ip", "link").stdout
    pids = [w["pid"] for w in gws.query("gwA", "stats")["workers"]]
    assert len(pids) == 2
    assert gws.stop("gwA") == {"gwA": 0}
    assert not xdp_attached(lab, "gwA", "lan0") and not xdp_attached(lab, "gwA", "wan0")
    assert not socket_path(inst).exists()
    assert not pins.exists()
    assert "xdps0" not in lab.run("gwA", "ip", "link").stdout
    assert "lookup 220" not in lab.run("gwA", "ip", "rule").stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its coordinator"


def test_killed_worker_is_restarted_and_never_reuses_a_sequence_number(make_lab, tmp_path):
    lab, gws = start_site(make_lab, tmp_path, workers=2, proposal="aes128gcm16")
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=3).received >= 2
    cap = lab.capture("wire", "br0", filter="esp")
    pinger = lab.popen("hostA", "ping", "-n", "-i", "0.02", "-c", "300", "-W", "1", dst,
                       stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    out_sa = next(r for r in gws.query("gwA", "sas") if r["direction"] == "out")
    victim = next(w for w in gws.query("gwA", "stats")["workers"] if w["id"] == out_sa["worker"])
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        w = next(w for w in gws.query("gwA", "stats")["workers"] if w["id"] == victim["id"])
        if w["restarts"] == 1 and w["alive"] and w["pid"] != victim["pid"]:
            break
        time.sleep(0.2)
    assert w["restarts"] == 1 and w["alive"], w
    out, _ = pinger.communicate(timeout=60)
    time.sleep(0.5)
    received = int(out.split(" received")[0].rsplit(", ", 1)[-1])
    assert received >= 200, out  # the restart costs a moment, not the tunnel
    assert lab.ping("hostA", dst, count=3).received >= 2

    seqs: dict[int, list[int]] = collections.defaultdict(list)
    for pkt in rdpcap(str(cap.stop())):
        if pkt.haslayer(ESP) and pkt[IP].src == lab.addr["gwA"]["wan_v4"]:
            seqs[pkt[ESP].spi].append(pkt[ESP].seq)
    (spi, numbers), = seqs.items()
    dupes = [s for s, n in collections.Counter(numbers).items() if n > 1]
    assert not dupes, f"SPI {spi:#x} reused sequence numbers {dupes[:10]}"
    # The replacement resumed after the reserved block instead of at 1.
    assert max(numbers) > 1 << 16, max(numbers)
