"""An IKE_SA_INIT flood from many spoofed sources against an xdpsec responder, while a legitimate peer negotiates
(issue 4, point 4: COOKIE, RFC 7296 §2.6).

    hostA ── gwA (initiator) ══ wire (flood: raw frames on br0) ══ gwB (responder) ── hostB
                                 192.0.2.250 on br0 swallows what gwB
                                 answers to 203.0.113.0/24

The wire node sends IKE_SA_INIT requests (a real request built by xdpsec's own initiator, a fresh initiator SPI
and a source address and port of 203.0.113.0/24 each) to gwB, whose connection "rw" accepts any peer, so the
flood reaches the half-open table. The first ones fill it to the cookie threshold; from then on gwB answers
with N(COOKIE) alone, keeping no state. gwB routes 203.0.113.0/24 to an address of the wire node, which
drops it: the cookies really leave gwB, and nothing is sent outside the lab.

1. A burst of BURST requests as fast as one Python raw socket goes: the sender's rate, and what gwB answered.
2. A flood at FLOOD_RATE for FLOOD_SECONDS; once gwB is answering it with cookies, gwA initiates. gwA must get a
   cookie, retry with it and have the tunnel up within ESTABLISH_WITHIN seconds, before the flood ends; gwB's
   half-open table never grows past the threshold. What gwB's socket drops (its receive buffer overflowing) is
   printed too: it is why gwA may need retransmissions.

The measured figures are printed (`pytest -s`). The per-prefix rate limit in XDP (a separate piece) would drop
most of this flood before it reaches gwB's IKE socket; this test is about what gets through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.exchange.conftest import T0, conn_a
from tests.netns.test_metrics import LISTEN, scrape
from xdpsec.control import request, socket_path
from xdpsec.ike.manager import COOKIE_THRESHOLD, IkeManager
from xdpsec.labconf import PairSpec

pytestmark = pytest.mark.netns

BURST = 20_000            # requests in the full-speed burst
FLOOD_RATE = 10_000       # requests per second in the sustained flood (issue 4: at least 10,000)
FLOOD_SECONDS = 40.0
#: gwA's default schedule (4 s, then x1.8) resends a lost request after 4, 11.2, 24.2 and 47.6 s. gwB's socket
#: overflows under the flood (a quarter of it is dropped there on this 2-vCPU VM), and each of the three
#: requests of the handshake (IKE_SA_INIT twice, IKE_AUTH) may be lost: the bound allows three losses of one.
ESTABLISH_WITHIN = 30.0
DISTINCT = 20_000         # distinct frames; a longer flood cycles through them
SINK = "192.0.2.250"      # the wire node's address on br0, gwB's route for the spoofed sources
SPOOFED = "203.0.113.0/24"

#: Runs in the wire namespace. argv: Ethernet header (hex), destination IPv4 address, the IKE_SA_INIT request
#: (hex), distinct frames, rate per second (0: as fast as it goes), most frames, most seconds, seed. Builds the
#: frames first (a fresh SPIi, source address and port each, UDP checksum 0: none, RFC 768), prints "ready", then
#: sends them in turn, paced in 1 ms slots, until the count or the time is reached; prints what it did.
_FLOOD = """
import json, random, socket, struct, sys, time
eth, dst, ike = bytes.fromhex(sys.argv[1]), socket.inet_aton(sys.argv[2]), bytes.fromhex(sys.argv[3])
distinct, rate, most, seconds, seed = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), \\
    int(sys.argv[8])
rnd = random.Random(seed)

def checksum(hdr):
    s = sum(struct.unpack("!10H", hdr))
    s = (s >> 16) + (s & 0xFFFF)
    return (~(s + (s >> 16))) & 0xFFFF

frames = []
for i in range(distinct):
    src = bytes([203, 0, 113, rnd.randrange(1, 255)])
    udp_len = 8 + len(ike)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, i & 0xFFFF, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", rnd.randrange(1024, 65536), 500, udp_len, 0)
    frames.append(eth + ip + udp + rnd.randbytes(8) + ike[8:])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("br0", 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
print("ready", flush=True)
per_slot = max(1, round(rate / 1000)) if rate else 256
t0 = time.monotonic()
end, sent, slot = t0 + seconds, 0, t0
while sent < most and time.monotonic() < end:
    for _ in range(min(per_slot, most - sent)):
        try:
            s.send(frames[sent % distinct])
        except BlockingIOError:
            time.sleep(0.0005)
        sent += 1
    if rate:
        slot += 0.001
        pause = slot - time.monotonic()
        if pause > 0:
            time.sleep(pause)
t1 = time.monotonic()
print(json.dumps({"sent": sent, "seconds": t1 - t0, "t0": t0, "t1": t1}), flush=True)
"""


def init_request() -> bytes:
    """An IKE_SA_INIT request gwB's connections accept (aes128gcm16-prfsha256-x25519, the lab's IKE proposal)."""
    a = IkeManager([conn_a()])
    a.initiate("a-to-b", "net", T0)
    (data, _src, _dst), = a.datagrams_to_send()
    return data


class Flood:
    """The flood sender in the wire namespace; `result()` waits for its report."""

    def __init__(self, lab, *, rate: float, most: int, seconds: float, seed: int) -> None:
        mac = json.loads(lab.run("gwB", "ip", "-j", "link", "show", "wan0").stdout)[0]["address"]
        eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("02005e00fa01") + b"\x08\x00"
        self.seconds = seconds
        self.proc = lab.popen("wire", sys.executable, "-c", _FLOOD, eth.hex(), lab.addr["gwB"]["wan_v4"],
                              init_request().hex(), str(min(DISTINCT, most)), str(rate), str(most), str(seconds),
                              str(seed), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def result(self) -> dict:
        out, _ = self.proc.communicate(timeout=self.seconds + 30)
        return json.loads(out)


SPEC = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1, initiator_action="none")
METRICS = f'[metrics]\nlisten = "{LISTEN}"'
#: gwB's connection for the lab's peer identity from any address (the lab's fixed addresses, xdpsec/lab.py), as a
#: responder for dynamic-address peers has: it is what lets spoofed sources reach the half-open table.
ANY_PEER = "\n".join([
    "[connections.rw]", 'local_addrs = ["192.0.2.2"]', 'remote_addrs = ["%any"]',
    f'proposals = ["{SPEC.ike_proposal}"]', "dpd_delay = 0",
    "[connections.rw.local]", 'auth = "psk"', 'id = "192.0.2.2"',
    "[connections.rw.remote]", 'auth = "psk"', 'id = "192.0.2.1"',
    "[connections.rw.children.net]", 'local_ts = ["198.51.100.128/25"]', f'remote_ts = ["{SPOOFED}"]',
    f'esp_proposals = ["{SPEC.proposal}"]',
])


def ike_events(lab, node: str = "gwB") -> dict[str, float]:
    """The IKE core's counters by name (Prometheus xdpsec_ike_events_total{event})."""
    return {labels["event"]: v for labels, v in scrape(lab, node).samples.get("xdpsec_ike_events_total", [])}


def wait_until(what: str, predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)
    return value


def established(gws, node: str) -> list[dict]:
    return [s for s in gws.query(node, "ike-sas") if s["conn"] == "lab" and s["state"] == "established"]


def sink_spoofed_sources(lab) -> None:
    """gwB's answers to the spoofed sources go to the wire node, which forwards nothing (a blackhole route):
    sending them succeeds, as toward real peers, and they end in the lab."""
    lab.run("wire", "ip", "addr", "add", f"{SINK}/24", "dev", "br0")
    lab.run("wire", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.run("wire", "ip", "route", "add", "blackhole", SPOOFED)
    lab.run("gwB", "ip", "route", "add", SPOOFED, "via", SINK)


def socket_drops(lab, node: str = "gwB") -> int:
    """UDP datagrams the node's sockets dropped because their receive buffer was full (/proc/net/snmp)."""
    udp = [line.split() for line in lab.run(node, "cat", "/proc/net/snmp").stdout.splitlines()
           if line.startswith("Udp:")]
    return int(udp[1][udp[0].index("RcvbufErrors")])


def half_open(gws, node: str) -> int:
    return sum(1 for s in gws.query(node, "ike-sas") if s["state"] in ("created", "connecting"))


def test_legitimate_peer_establishes_under_an_ike_sa_init_flood(pair):
    lab, gws, _nodes = pair(SPEC, extra=(METRICS, ANY_PEER + "\n\n" + METRICS))
    sink_spoofed_sources(lab)

    # 1. As fast as it goes.
    before, drops = ike_events(lab), socket_drops(lab)
    burst = Flood(lab, rate=0, most=BURST, seconds=10.0, seed=1).result()
    time.sleep(1.0)  # let gwB drain its socket
    answered = ike_events(lab).get("cookie_sent", 0) - before.get("cookie_sent", 0)
    print(f"\nburst: {burst['sent']} requests in {burst['seconds']:.3f} s = {burst['sent'] / burst['seconds']:,.0f}/s;"
          f" gwB answered {answered:,.0f} with a cookie, its socket dropped {socket_drops(lab) - drops:,}")
    assert burst["sent"] == BURST and answered > 0
    assert half_open(gws, "gwB") <= COOKIE_THRESHOLD

    # 2. A sustained flood, and gwA initiating in the middle of it.
    before_b, before_a, drops = ike_events(lab), ike_events(lab, "gwA"), socket_drops(lab)
    flood = Flood(lab, rate=FLOOD_RATE, most=int(FLOOD_RATE * FLOOD_SECONDS), seconds=FLOOD_SECONDS, seed=2)
    wait_until("gwB answering the flood with cookies",
               lambda: ike_events(lab).get("cookie_sent", 0) - before_b.get("cookie_sent", 0) > 1000, timeout=10)
    started = time.monotonic()
    request(socket_path(gws.instances["gwA"]), "initiate", {"conn": "lab"}, timeout=10.0)
    wait_until("the tunnel up on both sides", lambda: established(gws, "gwA") and established(gws, "gwB")
               and len(gws.query("gwA", "sas")) == 2 and len(gws.query("gwB", "sas")) == 2,
               timeout=ESTABLISH_WITHIN, step=0.1)
    took = time.monotonic() - started
    peak = half_open(gws, "gwB")
    result = flood.result()
    after_b, after_a = ike_events(lab), ike_events(lab, "gwA")
    rate = result["sent"] / result["seconds"]
    cookies = after_b.get("cookie_sent", 0) - before_b.get("cookie_sent", 0)
    print(f"flood: {result['sent']} requests in {result['seconds']:.2f} s = {rate:,.0f}/s; gwB answered "
          f"{cookies:,.0f} with a cookie ({cookies / result['seconds']:,.0f}/s), cookie_ok "
          f"{after_b.get('cookie_ok', 0) - before_b.get('cookie_ok', 0):.0f}; the tunnel was up {took:.2f} s "
          f"after `initiate`; gwB's socket dropped {socket_drops(lab) - drops:,}; half-open SAs on gwB: {peak}")
    assert started >= result["t0"] and started + took <= result["t1"], "the flood was over before the tunnel was up"
    assert after_a.get("cookie_retry", 0) - before_a.get("cookie_retry", 0) >= 1  # gwA went through the cookie
    assert after_b.get("cookie_ok", 0) - before_b.get("cookie_ok", 0) >= 1
    assert peak <= COOKIE_THRESHOLD + 1  # the flood made no state beyond the threshold (+ gwA's own SA)
    assert not any(after_b.get(k, 0) for k in ("parser_bug", "internal_error"))
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=6).received >= 2
