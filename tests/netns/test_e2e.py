"""End to end: xdpsec gateways in the namespace lab carrying real traffic (issue 2's acceptance tests).

Every test builds its own lab (tests/netns/conftest.py), writes manually keyed configurations for a pair of
gateways (xdpsec/labconf.py), runs `xdpsec run` in the gateways' namespaces and checks what hosts see, what
the wire between the gateways carries, and what the gateways count. Traffic is bounded in count and time.
"""

from __future__ import annotations

import re
import sys
import time

import pytest
from scapy.all import ESP, IP, Ether, rdpcap

from xdpsec.labconf import MARKER, PairSpec
from xdpsec.labconf import wire_report as wire
from xdpsec.sa import Protocol

pytestmark = pytest.mark.netns

def send_marker_ping(lab, src: str, dst: str) -> None:
    lab.run(src, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-p", MARKER.hex(), dst, check=False)


@pytest.mark.parametrize("proposal", ["aes128gcm16", "aes128-sha256"])
def test_tunnel_carries_ipv4_and_ipv6(pair, proposal):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal=proposal))
    wan_a, wan_b = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    cap = lab.capture("wire", "br0")
    for fam in ("v4", "v6"):
        ping = lab.ping("hostA", lab.addr["hostB"][fam], count=5, timeout=8)
        assert ping.received >= 4, (fam, ping, gws.log("gwA"))
    send_marker_ping(lab, "hostA", lab.addr["hostB"]["v4"])
    xfer = lab.tcp_transfer("hostA", "hostB", lab.addr["hostB"]["v4"], size=20 * 2**20, timeout=120)
    assert xfer.ok, xfer
    xfer6 = lab.tcp_transfer("hostA", "hostB", lab.addr["hostB"]["v6"], size=20 * 2**20, timeout=120)
    assert xfer6.ok, xfer6
    seen = wire(cap.stop(), wan_a, wan_b)
    # What the capture proves is the kind of traffic, not its amount: tcpdump may miss packets at full rate,
    # so the count only has to show the transfers crossed; the SA counters below account for every packet.
    assert seen["esp"] > 5000 and seen["other"] == 0 and seen["marker"] == 0, seen
    out = gws.sa(ga, "out")
    inb = gws.sa(gb, "in")
    assert out["transform"] == proposal and out["packets"] >= 20 * 2**20 // 1500
    assert inb["packets"] >= out["packets"] * 0.99  # what gwA sent, gwB received (a few may be in flight)
    assert not inb["drops"], inb["drops"]


def test_transport_mode_between_hosts(pair):
    lab, gws, (c, d) = pair(PairSpec(mode="transport", proposal="aes256gcm16", workers=1), topology="host")
    cap = lab.capture("wire2", "br0")
    ping = lab.ping("hostC", lab.addr["hostD"]["v4"], count=5, timeout=8)
    assert ping.received >= 4, (ping, gws.log(c))
    send_marker_ping(lab, "hostC", lab.addr["hostD"]["v4"])
    xfer = lab.tcp_transfer("hostC", "hostD", lab.addr["hostD"]["v4"], size=20 * 2**20, timeout=120)
    assert xfer.ok, xfer
    seen = wire(cap.stop(), lab.addr["hostC"]["v4"], lab.addr["hostD"]["v4"])
    assert seen["esp"] > 1000 and seen["other"] == 0 and seen["marker"] == 0, seen
    assert gws.sa(c, "out")["mode"] == "transport"


@pytest.mark.parametrize("topology,mode", [("site", "tunnel"), ("host", "transport")])
def test_ah(pair, topology, mode):
    lab, gws, (a, b) = pair(PairSpec(mode=mode, proposal="sha256", protocol=Protocol.AH, workers=1),
                            topology=topology)
    if topology == "site":
        src, dst, node, iface = "hostA", lab.addr["hostB"]["v4"], "wire", "br0"
        outer = (lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"])
    else:
        src, dst, node, iface = "hostC", lab.addr["hostD"]["v4"], "wire2", "br0"
        outer = (lab.addr["hostC"]["v4"], dst)
    cap = lab.capture(node, iface)
    ping = lab.ping(src, dst, count=5, timeout=8)
    assert ping.received >= 4, (ping, gws.log(a))
    xfer = lab.tcp_transfer(src, b if topology == "host" else "hostB", dst, size=5 * 2**20, timeout=120)
    assert xfer.ok, xfer
    seen = wire(cap.stop(), *outer)
    # AH authenticates but does not encrypt: the payload is visible, and that is the point of AH.
    assert seen["ah"] > 1000 and seen["esp"] == 0 and seen["other"] == 0, seen
    assert gws.sa(b, "in")["protocol"] == "ah"


SHUNTS_A = """
[connections.shunts.children.clear]
local_ts = ["198.51.100.0/25[udp]"]
remote_ts = ["198.51.100.128/25[udp/5555]"]
mode = "pass"

[connections.shunts.children.blocked]
local_ts = ["198.51.100.0/25[tcp]"]
remote_ts = ["198.51.100.128/25[tcp/6666]"]
mode = "drop"
"""
SHUNTS_B = """
[connections.shunts.children.clear]
local_ts = ["198.51.100.128/25[udp/5555]"]
remote_ts = ["198.51.100.0/25[udp]"]
mode = "pass"
"""

_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


def test_discard_and_bypass_policies(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=1),
                              extra=(SHUNTS_A, SHUNTS_B))
    cap = lab.capture("wire", "br0")
    # BYPASS: UDP to port 5555 crosses in clear, marker and all, and arrives.
    sink = lab.popen("hostB", sys.executable, "-c", "import socket,sys\ns=socket.socket(socket.AF_INET,"
                     "socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',5555))\ns.settimeout(10)\nprint(len(s.recv(2048)),"
                     " flush=True)", stdout=__import__("subprocess").PIPE, text=True)
    time.sleep(0.3)
    lab.run("hostA", sys.executable, "-c", "import socket,sys\nsocket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
            f".sendto({MARKER!r}, (sys.argv[1], 5555))", lab.addr["hostB"]["v4"])
    assert sink.communicate(timeout=15)[0].strip() == str(len(MARKER))
    # DISCARD: TCP to port 6666 never gets through (and is counted), while the tunnel keeps working.
    before = gws.query(ga, "stats")["xdp"]["drops"].get("policy_discard", 0)
    got = lab.run("hostA", sys.executable, "-c", _CONNECT, lab.addr["hostB"]["v4"], "6666").stdout.strip()
    assert got in ("TimeoutError", "timeout"), got
    assert gws.query(ga, "stats")["xdp"]["drops"].get("policy_discard", 0) > before
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3).received >= 2
    seen = wire(cap.stop(), lab.addr["hostA"]["v4"], lab.addr["hostB"]["v4"])
    assert seen["marker"] >= 1  # the bypassed datagram, in clear on the wire between the gateways


_INJECT = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for h in sys.argv[2:]:
    s.send(bytes.fromhex(h))
"""


def test_replayed_and_tampered_esp_are_dropped_and_counted(pair):
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=1))
    dst = lab.addr["hostB"]["v4"]
    cap = lab.capture("wire", "br0", filter="esp", count=6)
    assert lab.ping("hostA", dst, count=3).received >= 2
    frames = [bytes(p) for p in rdpcap(str(cap.wait(10))) if p.haslayer(ESP)
              and p[IP].dst == lab.addr["gwB"]["wan_v4"]]
    assert frames, "no ESP captured toward gwB"
    replayed = frames[0]
    # A forgery must carry a sequence number the window has not seen, or the replay check (which RFC 4303
    # §3.4.3 puts first) rejects it before the ICV is even looked at: move it ahead, and flip a ciphertext bit.
    tampered = bytearray(frames[-1])
    seq_off = len(Ether()) + 20 + 4
    seq = int.from_bytes(tampered[seq_off:seq_off + 4], "big")
    tampered[seq_off:seq_off + 4] = (seq + 1000).to_bytes(4, "big")
    tampered[seq_off + 4 + 8 + 4] ^= 0x01  # a ciphertext bit after the sequence number and the 8-byte IV
    before = gws.sa(gb, "in")["drops"]
    lab.run("gwA", sys.executable, "-c", _INJECT, "wan0", replayed.hex(), replayed.hex(), bytes(tampered).hex())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        drops = gws.sa(gb, "in")["drops"]
        if drops.get("replay", 0) >= before.get("replay", 0) + 2 and drops.get("auth_failed", 0) >= 1:
            break
        time.sleep(0.2)
    assert drops.get("replay", 0) >= before.get("replay", 0) + 2, drops
    assert drops.get("auth_failed", 0) >= before.get("auth_failed", 0) + 1, drops
    ping = lab.ping("hostA", dst, count=3)
    assert ping.received >= 2, ping  # the tunnel keeps working


def test_path_mtu_after_esp_overhead(pair):
    """DF too big after ESP → ICMP with the MTU that fits (RFC 1191 / RFC 8201); no DF → fragmented, delivered."""
    lab, gws, (ga, gb) = pair(PairSpec(mode="tunnel", proposal="aes128gcm16", workers=1))
    b4, b6 = lab.addr["hostB"]["v4"], lab.addr["hostB"]["v6"]
    assert lab.ping("hostA", b4, count=2).received >= 1  # next hops resolved
    out = lab.run("hostA", "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1472", b4, check=False).stdout
    mtu4 = int(re.search(r"mtu ?= ?(\d+)", out)[1])
    assert 1300 <= mtu4 < 1500, out
    fits = lab.run("hostA", "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", str(mtu4 - 28), b4, check=False)
    assert " 0% packet loss" in fits.stdout, fits.stdout
    assert gws.query(ga, "stats")["workers"][0]["drops"].get("too_big", 0) >= 1
    # Without DF the gateway fragments the inner packet before encryption and hostB reassembles it.
    big = lab.run("hostA", "ping", "-n", "-c", "2", "-W", "1", "-M", "dont", "-s", "1472", b4, check=False)
    assert " 0% packet loss" in big.stdout, big.stdout
    out6 = lab.run("hostA", "ping", "-6", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1452", b6,
                   check=False).stdout
    mtu6 = int(re.search(r"mtu ?= ?(\d+)", out6)[1])
    assert 1280 <= mtu6 < 1500, out6
    fits6 = lab.run("hostA", "ping", "-6", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", str(mtu6 - 48), b6,
                    check=False)
    assert " 0% packet loss" in fits6.stdout, fits6.stdout
