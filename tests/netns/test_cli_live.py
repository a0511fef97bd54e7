"""The `xdpsec` command against live gateways in the lab: every query parses, agrees with the traffic that was
sent, and `top` measures a flow while it runs. (tests/unit/test_cli.py covers layouts and errors against a fake
gateway; this is the same command against the real coordinator's answers.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xdpsec.labconf import PairSpec

pytestmark = pytest.mark.netns

BURST = 2000  # datagrams of the bounded burst; at 2000/s none is lost in the lab


def xdpsec(lab, gws, node: str, *argv: str) -> subprocess.CompletedProcess:
    return lab.run(node, sys.executable, "-m", "xdpsec", *argv, "-i", gws.instances[node], check=False, timeout=60)


def test_every_query_against_a_live_gateway(pair):
    lab, gws, (ga, _gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=2))
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=5).received >= 4
    for cmd in ("status", "sas", "ike-sas", "policies", "stats"):
        human = xdpsec(lab, gws, ga, cmd)
        assert (human.returncode, human.stderr) == (0, ""), (cmd, human.stderr)
        assert human.stdout.strip(), cmd
        assert xdpsec(lab, gws, ga, cmd, "--json").returncode == 0
    status = json.loads(xdpsec(lab, gws, ga, "status", "--json").stdout)
    assert status["instance"] == gws.instances[ga] and status["sas"] == 2
    assert [w["alive"] for w in status["workers"]] == [True, True]
    (conn,) = status["connections"]
    assert (conn["name"], conn["keying"], conn["state"]) == ("lab", "manual", "up")
    (child,) = conn["children"]
    sas = {sa["direction"]: sa for sa in json.loads(xdpsec(lab, gws, ga, "sas", "--json").stdout)}
    assert (child["out_spi"], child["in_spi"]) == (sas["out"]["spi"], sas["in"]["spi"])
    assert sas["out"]["packets"] >= 4 and sas["in"]["packets"] >= 4
    human = xdpsec(lab, gws, ga, "status").stdout
    assert f"lab         manual  up     {lab.addr['gwB']['wan_v4']}" in human


def test_top_sees_a_flow_while_it_runs(pair):
    lab, gws, (ga, _gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=1))
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=2).received >= 1
    pinger = lab.popen("hostA", "ping", "-n", "-q", "-i", "0.01", "-c", "400", dst, stdout=subprocess.DEVNULL)
    try:
        top = xdpsec(lab, gws, ga, "top", "--interval", "0.5", "--count", "3", "--json")
    finally:
        pinger.wait(timeout=30)
    assert top.returncode == 0, top.stderr
    frames = [json.loads(line) for line in top.stdout.splitlines()]
    assert len(frames) == 3
    busiest = max((sa for f in frames for sa in f["sas"] if sa["direction"] == "out"), key=lambda sa: sa["pps"])
    # ping -i 0.01 sends up to 100 per second; in the lab it is well above a third of that
    assert 30 <= busiest["pps"] <= 150, frames
    assert max(f["workers"][0]["rx_pps"] for f in frames) >= 30


def test_version_and_unknown_connection(pair):
    lab, gws, (ga, _gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=1))
    version = lab.run(ga, sys.executable, "-m", "xdpsec", "version", "--json")
    assert "xdpsec" in json.loads(version.stdout)
    out = xdpsec(lab, gws, ga, "initiate", "nope")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_stats_counts_the_loops_batches(pair):
    """After a bounded burst, each worker's loop counters (`stats --json`, "loop") add up with the counters its
    packet code keeps frame by frame, and `stats` shows a batch line per worker."""
    lab, gws, (ga, _gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=2))
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=2).received >= 1  # next hops resolved: nothing is held from here on
    before = json.loads(xdpsec(lab, gws, ga, "stats", "--json").stdout)["workers"]
    blast = lab.udp_blast("hostA", dst, size=200, count=BURST, rate=2000.0, sink="hostB")
    after = json.loads(xdpsec(lab, gws, ga, "stats", "--json").stdout)["workers"]
    assert blast.sent == BURST and blast.received >= BURST * 0.99, blast

    def delta(w0: dict, w1: dict, key: str) -> int:
        return w1[key] - w0[key]

    frames = kicked = 0
    for w0, w1 in zip(before, after, strict=True):
        loop = {k: w1["loop"][k] - w0["loop"][k] for k in w1["loop"]}
        drops = {r: w1["drops"].get(r, 0) - w0["drops"].get(r, 0) for r in w1["drops"]}
        # Every frame a busy round took in (from its sockets or another worker's handoff ring) was processed
        # here (rx), handed on to its SA's owner, or dropped before either.
        door = drops.get("bad_meta", 0) + drops.get("handoff_full", 0)
        assert loop["frames"] == delta(w0, w1, "rx") + delta(w0, w1, "handoff_out") + door, (w0, w1)
        assert loop["busy_rounds"] <= loop["frames"] and loop["busy_rounds"] <= loop["rounds"]
        assert loop["sleeps"] <= loop["rounds"] - loop["busy_rounds"]  # it sleeps only after an empty round
        # Kicked frames are the frames the core produced (tx), less those refused on the way to a tx ring.
        refused = sum(drops.get(r, 0) for r in ("tx_full", "no_frame", "too_big", "no_route"))
        assert delta(w0, w1, "tx") - refused <= loop["kick_frames"] <= delta(w0, w1, "tx")
        assert loop["kicks"] <= loop["rounds"] * len(w1["sockets"])  # a kick per port per round at most
        frames += loop["frames"]
        kicked += loop["kick_frames"]
    assert frames >= BURST and kicked >= BURST  # gwA received every datagram and sent it out as ESP

    human = xdpsec(lab, gws, ga, "stats").stdout
    (table,) = [part for part in human.split("\n\n") if "FRAMES/KICK" in part]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["0", "1"]
