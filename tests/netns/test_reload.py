"""Hot reload in the lab: a changed configuration is applied while traffic flows, and the tunnel the change
does not concern loses nothing (issue 5, point 3).

    hostA ── lan0 [gwA] wan0 ── br0 ── wan0 [gwB] lan0 ── hostB
              child net: all of A's and B's networks          (the steady numbered UDP stream, port 9000)
              child two: udp to port 7002   -> removed by the reload
              child three: udp to port 7003 -> added by the reload
              child clear: udp to port 7004, a pass shunt -> added by the reload (a new BYPASS policy)

gwA reloads through `xdpsec reload`, gwB on SIGHUP, both in the middle of the stream. Every datagram of the
stream must arrive, child net's SAs keep their index and sequence numbers, child three then carries traffic
and child two's SAs are gone on both gateways. Traffic is bounded: a fixed number of datagrams, timeouts.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time

import pytest

from xdpsec.labconf import PairSpec
from xdpsec.proposals import parse_esp

pytestmark = pytest.mark.netns

PROPOSAL = "aes128gcm16"
STREAM_PORT = 9000
STREAM_COUNT = 3000
STREAM_GAP = 0.001  # seconds between datagrams: about three seconds of traffic

_RECEIVE = """
import socket, sys
port, count, idle = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", port))
s.settimeout(idle)
print("ready", flush=True)
got = set()
while len(got) < count:
    try:
        got.add(int(s.recv(64)))
    except TimeoutError:
        break
print(len(got), sorted(set(range(count)) - got)[:20], flush=True)
"""

_SEND = """
import socket, sys, time
dst, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic()
for i in range(count):
    wait = t0 + i * gap - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    s.sendto(b"%d" % i, (dst, port))
"""


# The lab's inner networks (xdpsec/lab.py), fixed, as tests/netns/test_e2e.py uses them.
NET_A, NET_B = "198.51.100.0/25", "198.51.100.128/25"


def _manual_child(name: str, local: str, remote: str, *, out_spi: int, in_spi: int, out_key: str,
                  in_key: str) -> str:
    return (f'[connections.lab.children.{name}]\nlocal_ts = ["{local}"]\nremote_ts = ["{remote}"]\n'
            f'mode = "tunnel"\nesp_proposals = ["{PROPOSAL}"]\n\n[connections.lab.children.{name}.manual]\n'
            f'in_spi = {in_spi:#x}\nout_spi = {out_spi:#x}\nin_enc_key = "{in_key}"\nout_enc_key = "{out_key}"\n')


def _child_pair(name: str, port: int) -> tuple[str, str]:
    """Mirror-image tables of one more manually keyed child for gwA and gwB: UDP to `port` on B's side."""
    ab, ba = 0x30000 + secrets.randbelow(0xFFFF), 0x40000 + secrets.randbelow(0xFFFF)
    klen = parse_esp(PROPOSAL).enc_key_len
    k_ab, k_ba = secrets.token_hex(klen), secrets.token_hex(klen)
    a = _manual_child(name, f"{NET_A}[udp]", f"{NET_B}[udp/{port}]", out_spi=ab, in_spi=ba, out_key=k_ab,
                      in_key=k_ba)
    b = _manual_child(name, f"{NET_B}[udp/{port}]", f"{NET_A}[udp]", out_spi=ba, in_spi=ab, out_key=k_ba,
                      in_key=k_ab)
    return a, b


def _shunt_pair(port: int) -> tuple[str, str]:
    table = '[connections.shunts.children.clear]\nlocal_ts = ["{}"]\nremote_ts = ["{}"]\nmode = "pass"\n'
    return table.format(f"{NET_A}[udp]", f"{NET_B}[udp/{port}]"), table.format(f"{NET_B}[udp/{port}]", f"{NET_A}[udp]")


def _receiver(lab, port: int, count: int, idle: float) -> subprocess.Popen:
    sink = lab.popen("hostB", sys.executable, "-c", _RECEIVE, str(port), str(count), str(idle),
                     stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    return sink


def _received(sink: subprocess.Popen) -> tuple[int, list[int]]:
    got, missing = sink.communicate(timeout=60)[0].strip().split(" ", 1)
    return int(got), json.loads(missing)


def _sas(gws, node: str) -> dict[tuple[str, str], dict]:
    return {(sa["name"], sa["direction"]): sa for sa in gws.query(node, "sas")}


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_reload_adds_and_removes_children_without_losing_a_packet(pair):
    two_a, two_b = _child_pair("two", 7002)
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal=PROPOSAL, workers=2), extra=(two_a, two_b))
    dst = lab.addr["hostB"]["v4"]
    assert lab.ping("hostA", dst, count=3).received >= 2, gws.log(ga)  # next hops resolved before the stream
    assert _received(_send(lab, 7002, 20)) == (20, [])  # child two works before the reload
    before = _sas(gws, ga)
    assert before[("lab/two", "out")]["packets"] >= 20

    three_a, three_b = _child_pair("three", 7003)
    clear_a, clear_b = _shunt_pair(7004)
    sink = _receiver(lab, STREAM_PORT, STREAM_COUNT, 5.0)
    stream = lab.popen("hostA", sys.executable, "-c", _SEND, dst, str(STREAM_PORT), str(STREAM_COUNT),
                       str(STREAM_GAP))
    time.sleep(0.5)  # the stream is flowing
    for node, old, new in ((ga, two_a, three_a + "\n" + clear_a), (gb, two_b, three_b + "\n" + clear_b)):
        path = gws.configs[node]
        path.write_text(path.read_text().replace(old, new))
    reload = lab.run(ga, sys.executable, "-m", "xdpsec", "reload", "-i", gws.instances[ga], "--json", check=False)
    gws.procs[gb].send_signal(signal.SIGHUP)
    assert reload.returncode == 0, (reload.stdout, reload.stderr, gws.log(ga))
    assert stream.poll() is None, "the stream ended before the reload: the test proves nothing, make it longer"
    result = json.loads(reload.stdout)
    assert result["applied"] and result["manual"]["added"] == ["lab/three"], result
    assert result["manual"]["removed"] == ["lab/two"] and result["manual"]["unchanged"] == ["lab/net"], result
    assert result["policies_changed"] and not result["restart_needed"], result
    assert _wait(lambda: ("lab/three", "in") in _sas(gws, gb)), gws.log(gb)
    assert stream.poll() is None, "gwB reloaded after the stream ended: make it longer"
    assert stream.wait(timeout=60) == 0
    got, missing = _received(sink)
    assert (got, missing) == (STREAM_COUNT, []), (gws.log(ga), gws.log(gb))

    # Child net was not touched: same SAs, and its sequence numbers went on from where they were.
    after = _sas(gws, ga)
    for direction in ("out", "in"):
        assert after[("lab/net", direction)]["index"] == before[("lab/net", direction)]["index"]
        assert after[("lab/net", direction)]["spi"] == before[("lab/net", direction)]["spi"]
    assert after[("lab/net", "out")]["seq"] >= before[("lab/net", "out")]["seq"] + STREAM_COUNT
    # Child two is gone on both sides, child three carries traffic, the new pass policy is in the SPD.
    for node in (ga, gb):
        assert not {name for name, _d in _sas(gws, node)} & {"lab/two"}, node
        assert "shunts/clear" in {p["name"] for p in gws.query(node, "policies")}
    assert _received(_send(lab, 7003, 20)) == (20, [])
    assert _sas(gws, ga)[("lab/three", "out")]["packets"] >= 20
    assert _sas(gws, gb)[("lab/three", "in")]["packets"] >= 20
    assert gws.query(gb, "status")["reloads"] == 1


def test_reload_of_a_broken_file_changes_nothing_and_exits_2(pair):
    lab, gws, (ga, _gb) = pair(PairSpec(mode="tunnel", proposal=PROPOSAL, workers=1))
    before = _sas(gws, ga)
    path = gws.configs[ga]
    path.write_text(path.read_text() + "\n[gateway.bogus]\n")
    out = lab.run(ga, sys.executable, "-m", "xdpsec", "reload", "-i", gws.instances[ga], check=False)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "keeps running the previous configuration" in out.stderr and "Traceback" not in out.stderr
    assert _sas(gws, ga) == before
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3).received >= 2


def _send(lab, port: int, count: int) -> subprocess.Popen:
    """`count` datagrams hostA -> hostB:port, 10 ms apart; returns the receiver to read with _received."""
    sink = _receiver(lab, port, count, 3.0)
    lab.run("hostA", sys.executable, "-c", _SEND, lab.addr["hostB"]["v4"], str(port), str(count), "0.01")
    return sink
