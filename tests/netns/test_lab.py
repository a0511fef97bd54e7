"""The lab itself, without any IPsec: plain forwarding works, and nothing outlives a lab.

Every later end-to-end test and benchmark assumes these: if hostA cannot reach hostB through the gateways
here, a failure there says nothing about xdpsec.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.utils import rdpcap

from xdpsec.lab import GRACE, NETNS_DIR, Lab, LabError, cleanup_stale, lab_namespaces

pytestmark = pytest.mark.netns

LAB_IFNAMES = {"a0", "lan0", "wan0", "b0", "c0", "d0", "wa", "wb", "wc", "wd", "br0"}


def _exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _links(lab: Lab, node: str) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "-d", "link", "show").stdout)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_site_to_site_ping(lab, family):
    result = lab.ping("hostA", lab.addr["hostB"][family])
    assert result.ok, result
    assert len(result.rtts) == result.sent == 3


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_host_to_host_ping(lab, family):
    assert lab.ping("hostC", lab.addr["hostD"][family]).ok


def test_no_route_between_topologies(lab):
    # hostC is outside both sites: hostA's default route ends at gwA, which has no route there.
    assert lab.ping("hostA", lab.addr["hostC"]["v4"], count=1, timeout=1).received == 0


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_tcp_transfer_20mb(lab, family):
    result = lab.tcp_transfer("hostA", "hostB", lab.addr["hostB"][family], size=20 * 2**20)
    assert result.bytes == result.bytes_sent == 20 * 2**20
    assert result.sha256_received == result.sha256_sent
    assert result.ok


def test_udp_blast_counts_what_arrives(lab):
    result = lab.udp_blast("hostA", lab.addr["hostB"]["v4"], size=200, count=500, rate=20000, sink="hostB")
    assert result.sent == 500
    assert result.received == 500


def test_capture_on_wan_shows_cleartext_icmp(lab):
    cap = lab.capture("gwA", "wan0", filter="icmp")
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3).ok
    packets = [p for p in rdpcap(str(cap.stop())) if IP in p and ICMP in p]
    a, b = lab.addr["hostA"]["v4"], lab.addr["hostB"]["v4"]
    requests = [p for p in packets if (p[IP].src, p[IP].dst, p[ICMP].type) == (a, b, 8)]
    replies = [p for p in packets if (p[IP].src, p[IP].dst, p[ICMP].type) == (b, a, 0)]
    assert len(requests) == len(replies) == 3
    assert requests[0][IP].ttl == 63  # forwarded once, by gwA


def test_capture_with_count_finishes_by_itself(lab):
    cap = lab.capture("hostB", "b0", filter="icmp6 and ip6[40] == 128", count=2)
    lab.ping("hostA", lab.addr["hostB"]["v6"], count=2)
    assert len(rdpcap(str(cap.wait(timeout=5)))) == 2


def test_veths_live_only_in_lab_namespaces(make_lab):
    lab = make_lab(queues=3, mtu=1400)
    root = {link["ifname"] for link in json.loads(subprocess.check_output(["ip", "-j", "link", "show"]))}
    assert not root & LAB_IFNAMES
    for node in lab.nodes:
        veths = [ln for ln in _links(lab, node) if ln.get("linkinfo", {}).get("info_kind") == "veth"]
        assert veths, node
        for link in veths:
            assert (link["num_rx_queues"], link["num_tx_queues"], link["mtu"]) == (3, 3, 1400)
            assert "link_netnsid" in link, f"{node}/{link['ifname']}: peer not in another lab namespace"


def test_gateway_sysctls(lab):
    for gw in ("gwA", "gwB"):
        values = lab.run(gw, "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                         "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.wan0.rp_filter").stdout.split()
        assert values == ["1", "1", "0", "0"]
    assert lab.run("hostA", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_teardown_after_exception_leaves_nothing():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(prefix="xst") as lab:
            lab.site_to_site()
            names = [lab.ns(n) for n in lab.nodes]
            sleeper = lab.popen("gwA", "sleep", "60")
            assert all(map(_exists, names))
            raise RuntimeError("boom")
    assert not any(map(_exists, names))
    assert sleeper.poll() is not None
    assert lab.nodes == []


def test_teardown_escalates_to_sigkill(lab):
    stubborn = lab.popen("hostA", sys.executable, "-c",
                         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
                         "time.sleep(60)", stdout=subprocess.PIPE)
    assert stubborn.stdout.readline() == b"1\n"  # SIGTERM is ignored from here on
    start = time.monotonic()
    lab.teardown()
    assert stubborn.returncode == -signal.SIGKILL
    assert GRACE <= time.monotonic() - start < GRACE + 5


def test_commands_see_bpf_pins(lab):
    # `ip netns exec` would mount a fresh sysfs over /sys, hiding /sys/fs/bpf (see the module docstring).
    fstype = ["stat", "-f", "-c", "%T", "/sys/fs/bpf"]
    if subprocess.run(fstype, capture_output=True, text=True).stdout.strip() != "bpf_fs":
        pytest.skip("no bpffs mounted at /sys/fs/bpf")
    assert lab.run("gwA", *fstype).stdout.strip() == "bpf_fs"


def test_failed_build_tears_down():
    # An MTU below the minimum (68): `ip link add` fails after the namespaces exist.
    lab = Lab(prefix="xst", mtu=10)
    with pytest.raises(LabError, match="mtu"):
        lab.site_to_site()
    assert lab.nodes == []
    assert lab.run_name not in lab_namespaces("xst")


def test_two_labs_coexist(make_lab):
    first, second = make_lab(topology="host"), make_lab(topology="host")
    assert first.ns("hostC") != second.ns("hostC")
    assert first.ping("hostC", "203.0.113.2", count=1).ok
    assert second.ping("hostC", "203.0.113.2", count=1).ok


def test_unknown_node(lab):
    with pytest.raises(KeyError, match="gwC"):
        lab.ns("gwC")


_DEAD_RUN = """
import os, signal
from xdpsec.lab import Lab
lab = Lab(prefix="xststale").host_to_host()
print(" ".join(lab.ns(n) for n in lab.nodes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no teardown, no atexit: what a crashed test run leaves
"""


def test_cleanup_stale_removes_dead_runs_only(make_lab):
    out = subprocess.run([sys.executable, "-c", _DEAD_RUN], capture_output=True, text=True, timeout=30)
    dead = out.stdout.split()
    assert len(dead) == 3 and all(map(_exists, dead)), out.stderr  # hostC, wire2, hostD
    live = Lab(prefix="xststale").host_to_host()
    try:
        assert sorted(cleanup_stale("xststale")) == sorted(dead)
        assert not any(map(_exists, dead))
        assert all(_exists(live.ns(n)) for n in live.nodes)
        assert cleanup_stale("xststale") == []
    finally:
        live.teardown()


def test_cli_up_show_down():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cli = [sys.executable, "-m", "xdpsec.lab"]
    tag = f"cli{os.getpid()}"
    try:
        subprocess.run([*cli, "up", "--topology", "host", "--prefix", "xst", "--tag", tag], env=env, check=True,
                       capture_output=True, timeout=30)
        shown = subprocess.run([*cli, "show", "--prefix", "xst"], env=env, check=True, capture_output=True,
                               text=True, timeout=30).stdout
        assert f"nsenter --net=/run/netns/xst{tag}-0-hostC bash" in shown
        assert "203.0.113.1/24" in shown
    finally:
        subprocess.run([*cli, "down", "--prefix", "xst", "--tag", tag], env=env, check=True, capture_output=True,
                       timeout=30)
    assert f"xst{tag}-0" not in lab_namespaces("xst")


def test_plaintext_marker_in_a_ping_is_detected_on_the_wire(lab):
    """The leak detector the IPsec tests rely on must fire when a marked ping crosses in clear."""
    from xdpsec.labconf import MARKER, wire_report

    cap = lab.capture("wire", "br0", filter="icmp")
    lab.run("hostA", "ping", "-c", "2", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), lab.addr["hostB"]["v4"])
    seen = wire_report(cap.stop(), lab.addr["hostA"]["v4"], lab.addr["hostB"]["v4"])
    assert seen["marker"] >= 2 and seen["other"] >= 2 and seen["esp"] == 0, seen
