"""Rekeying under load between two xdpsec gateways (issue 4, point 8): a steady stream of numbered UDP datagrams
in each direction while child SAs and the IKE SA are rekeyed again and again, from both sides and once from
both at the same moment (a collision, RFC 7296 §2.8.1, if the requests cross); every datagram is counted at
its receiver: none lost, none duplicated.

    hostA ── gwA (xdpsec) ══ ESP ══ gwB (xdpsec) ── hostB
    sender A->B / sink B->A                   sink A->B / sender B->A

What this proves is make-before-break (§2.8) in the data path: the new inbound SA is installed before the peer
can send on it, a rekey responder keeps sending on the old pair until the old pair's Delete, and each old
inbound SA decrypts until that Delete. Before those rules every child rekey lost 20-30 datagrams (50-75 ms) in
each direction here."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from xdpsec.labconf import PairSpec

pytestmark = pytest.mark.netns

RATE = 400          # datagrams per second, each direction
REKEY_EVERY = 1.0   # seconds between two steps of the plan
REKEY_DONE = 5.0    # seconds a step may take to show (a collision's loser may first be refused, §2.25.1)
PORT = 5311
A, B, BOTH = "gwA", "gwB", "both"
CHILD, IKE = "child", "ike"
#: Who rekeys what, in order: 7 child rekeys (one a simultaneous one) and 4 IKE rekeys, from both sides.
PLAN = ((A, CHILD), (B, CHILD), (A, IKE), (B, CHILD), (BOTH, CHILD), (B, IKE), (A, CHILD), (A, IKE),
        (B, CHILD), (B, IKE), (A, CHILD))
SECONDS = int((len(PLAN) + 2) * REKEY_EVERY) + 4  # the stream outlasts the plan (and its slower steps)

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


def _child(gws, node: str) -> dict:
    """The child as `xdpsec status` shows it: the pair that carries its traffic."""
    (conn,) = gws.query(node, "status")["connections"]
    return conn["children"][0]


def _ike_spis(gws, node: str) -> set[str]:
    return {info["ispi"] for info in gws.query(node, "ike-sas") if info["state"] == "established"}


def _wait(pred, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.05)


def _rekey(gws, node: str, what: str) -> None:
    from xdpsec.control import request, socket_path

    request(socket_path(gws.instances[node]), "rekey", {"conn": "lab", "child": None, "ike": what == IKE},
            timeout=10.0)


def _step(gws, who: str, what: str) -> None:
    """Start one rekey (from both gateways at once for BOTH) and wait until gwA shows its result."""
    before_child = _child(gws, A)["out_spi"]
    before_ike = _ike_spis(gws, A)
    for node in (A, B) if who == BOTH else (who,):
        _rekey(gws, node, what)
    if what == CHILD:
        _wait(lambda: _child(gws, A).get("out_spi") not in (before_child, None), "child rekeyed", REKEY_DONE)
    else:
        _wait(lambda: (now := _ike_spis(gws, A)) and not now & before_ike, "IKE SA rekeyed", REKEY_DONE)


class Streams:
    """A numbered UDP stream each way between hostA and hostB for `seconds`, counted at the receivers.

    ``with Streams(lab, seconds) as streams: ...; report = streams.report()`` -> {"A->B": {"lost": [(first,
    last), ...], "dup": [...]}, "B->A": ...}: the datagram numbers missing or received twice, as ranges.
    tests/interop/test_rekey.py uses it too."""

    def __init__(self, lab, seconds: float, rate: int = RATE):
        self.lab, self.rate, self.count = lab, rate, int(rate * seconds)
        self.seconds = seconds
        self.procs: list[tuple[subprocess.Popen, subprocess.Popen]] = []

    def __enter__(self) -> Streams:
        lab = self.lab
        a_addr, b_addr = lab.addr["hostA"]["v4"], lab.addr["hostB"]["v4"]
        try:
            for src, dst_node, dst in (("hostA", "hostB", b_addr), ("hostB", "hostA", a_addr)):
                sink = lab.popen(dst_node, sys.executable, "-c", _SINK, dst, str(PORT), str(self.count), "2.0",
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.procs.append((sink, None))
                assert sink.stdout.readline().strip() == "ready"
                self.procs[-1] = (sink, lab.popen(src, sys.executable, "-c", _SENDER, dst, str(PORT),
                                                  str(self.count), str(self.rate)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def report(self) -> dict[str, dict[str, list[tuple[int, int]]]]:
        """Wait for both streams to end; what each receiver missed or got twice."""
        out = {}
        for direction, (sink, sender) in zip(("A->B", "B->A"), self.procs, strict=True):
            sender.wait(timeout=self.seconds + 30)
            result = json.loads(sink.communicate(timeout=30)[0])
            out[direction] = {k: _ranges(v) for k, v in result.items()}
        return out

    def __exit__(self, *_exc) -> None:
        for pair in self.procs:
            for p in pair:
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(5)


def clean(report: dict) -> bool:
    return all(not r["lost"] and not r["dup"] for r in report.values())


@pytest.mark.parametrize("workers", [1, 2])
def test_no_packet_lost_or_duplicated_across_child_and_ike_rekeys(pair, workers):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=workers))
    _wait(lambda: _child(gws, ga)["state"] == _child(gws, gb)["state"] == "installed", "installed", 20.0)
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=8).received >= 2  # traffic at all
    child_spis, ike_spis = {_child(gws, ga)["out_spi"]}, set(_ike_spis(gws, ga))
    with Streams(lab, SECONDS) as streams:
        time.sleep(REKEY_EVERY)
        for who, what in PLAN:  # child and IKE SA rekeys from both sides, while the stream runs
            _step(gws, who, what)
            child_spis.add(_child(gws, ga)["out_spi"])
            ike_spis |= _ike_spis(gws, ga)
            time.sleep(REKEY_EVERY)
        report = streams.report()
    assert clean(report), (report, gws.log(ga)[-4000:], gws.log(gb)[-4000:])
    # Each step replaced the SA at least once (the simultaneous one may run as a collision or as two rekeys
    # one after the other, if the requests did not cross).
    plan_child = sum(what == CHILD for _who, what in PLAN)
    assert len(child_spis) >= plan_child + 1 and len(ike_spis) >= len(PLAN) - plan_child + 1, (child_spis, ike_spis)
    ike_sas = gws.query(ga, "ike-sas")
    assert len(ike_sas) == 1 and len(ike_sas[0]["children"]) == 1, ike_sas
    for node in (ga, gb):  # every replaced SA is gone again: one pair left on each side
        _wait(lambda node=node: len(gws.query(node, "sas")) == 2, f"{node} down to one pair", 5.0)


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9] -> [(3, 5), (9, 9)]: where the gaps are, in datagram numbers (RATE per second)."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out
