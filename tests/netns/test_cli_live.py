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
