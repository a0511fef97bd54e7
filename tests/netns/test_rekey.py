"""Rekeying under load between two xdpsec gateways (issue 4, point 8): a steady stream of numbered UDP datagrams
in each direction while child SAs and the IKE SA are rekeyed several times, from both sides; every datagram is
counted at the receiver: none lost, none duplicated. Make-before-break (RFC 7296 §2.8) is what this proves."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from xdpsec.labconf import PairSpec

pytestmark = pytest.mark.netns

RATE = 400          # datagrams per second, each direction
SECONDS = 14        # the stream's length: room for the rekeys below, one every REKEY_EVERY seconds
REKEY_EVERY = 1.5
PORT = 5311

_SINK = """
import json, socket, struct, sys
addr, port, count, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
seen = {}
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((addr, port))
    print("ready", flush=True)
    s.settimeout(idle * 4)
    try:
        while len(seen) < count:
            n = struct.unpack("!I", s.recv(64)[:4])[0]
            seen[n] = seen.get(n, 0) + 1
            s.settimeout(idle)
    except TimeoutError:
        pass
print(json.dumps({"lost": sorted(set(range(count)) - set(seen)), "dup": sorted(k for k, v in seen.items() if v > 1)}))
"""

_SENDER = """
import socket, struct, sys, time
addr, port, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.connect((addr, port))
    for i in range(count):
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        s.send(struct.pack("!I", i) + bytes(60))
"""


def _wait_for_child(gws, node: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(gws.query(node, "sas")) != 2:
        if time.monotonic() > deadline:
            raise AssertionError(gws.log(node))
        time.sleep(0.2)


def _rekey(gws, node: str, *, ike: bool) -> None:
    from xdpsec.control import request, socket_path

    request(socket_path(gws.instances[node]), "rekey", {"conn": "lab", "child": None, "ike": ike}, timeout=10.0)


def test_no_packet_lost_or_duplicated_across_child_and_ike_rekeys(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1))
    _wait_for_child(gws, ga)
    _wait_for_child(gws, gb)
    a_addr, b_addr = lab.addr["hostA"]["v4"], lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", b_addr, count=3, timeout=8).received >= 2  # the tunnel carries traffic at all
    count = RATE * SECONDS
    procs = []
    try:
        for src, dst_node, dst in (("hostA", "hostB", b_addr), ("hostB", "hostA", a_addr)):
            sink = lab.popen(dst_node, sys.executable, "-c", _SINK, dst, str(PORT), str(count), "2.0",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert sink.stdout.readline().strip() == "ready"
            procs.append((sink, lab.popen(src, sys.executable, "-c", _SENDER, dst, str(PORT), str(count),
                                          str(RATE))))
        spis = {gws.sa(ga, "out")["spi"]}
        plan = [(ga, False), (gb, False), (ga, True), (gb, True), (ga, False), (gb, False), (gb, True)]
        time.sleep(REKEY_EVERY)
        for node, ike in plan:  # child and IKE SA rekeys from both sides, while the stream runs
            _rekey(gws, node, ike=ike)
            time.sleep(REKEY_EVERY)
            spis.add(gws.sa(ga, "out")["spi"])
        results = []
        for sink, sender in procs:
            sender.wait(timeout=SECONDS + 30)
            results.append(json.loads(sink.communicate(timeout=30)[0]))
    finally:
        for sink, sender in procs:
            for p in (sink, sender):
                if p.poll() is None:
                    p.kill()
    assert len(spis) >= 5, (spis, gws.log(ga))  # the child pair was replaced again and again
    ike_sas = gws.query(ga, "ike-sas")
    assert len(ike_sas) == 1 and len(ike_sas[0]["children"]) == 1, ike_sas
    report = {d: {k: _ranges(v) for k, v in r.items()} for d, r in zip(("A->B", "B->A"), results, strict=True)}
    assert all(not r["lost"] and not r["dup"] for r in results), (report, gws.log(ga)[-4000:], gws.log(gb)[-4000:])


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9] -> [(3, 5), (9, 9)]: where the gaps are, in datagram numbers (RATE per second)."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out
