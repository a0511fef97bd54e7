"""Attacks on IKE from the outside, in the lab: hostile IKE injected on the wire while an IKE-keyed tunnel carries
a steady stream (issue 7, point 2).

    hostA ── gwA (initiator) ══ wire (attacker: raw frames on br0) ══ gwB (responder) ── hostB

gwA negotiates the tunnel with gwB while the wire node records the exchange; the attacker then works from those
real frames, toward gwB's outer address:

* mutations of the captured IKE_SA_INIT and IKE_AUTH requests: truncations, header and payload lengths that
  lie, wrong SPIs, bogus exchange types, an SA payload announcing 255 transforms, a chain of 8,000 payloads,
  bit flips of the protected IKE_AUTH;
* an IKE_SA_INIT flood (the captured request, a fresh initiator SPI each, from spoofed 203.0.113.0/24 and
  198.51.100.0/24 sources and ports), as fast as a raw socket goes;
* half-open peers: valid IKE_SA_INIT requests that are never followed by IKE_AUTH;
* oversized junk: UDP 500 and 4500 datagrams of 64 KB fragmented by the sender, and frames larger than the MTU.

gwB also has a connection for the same peer identity from any address ("rw", remote_addrs %any, as a responder
for dynamic-address peers has): without it, a spoofed source matches no connection and is dropped as
`no_matching_conn` before any state is kept; with it, the flood reaches the half-open table. After every
attack both gateways run, `xdpsec status` shows the tunnel up, the established IKE SA is the same one, the stream
passed while the attack ran, and every injected datagram is counted under a named reason of the IKE core
(Prometheus `xdpsec_ike_events_total{event}`: the control socket's `stats` has no IKE counters). Nothing is sent
to an address outside the lab; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.all import IP, UDP, Ether, Raw, fragment, rdpcap

from tests.netns.conftest import TEST_PREFIX
from tests.netns.test_metrics import LISTEN, Scrape, scrape
from xdpsec.control import request, socket_path
from xdpsec.ike import wire
from xdpsec.ike.consts import ExchangeType, PayloadType
from xdpsec.lab import Lab
from xdpsec.labconf import Gateways, PairSpec, lab_psk, render_ike, site_sides

pytestmark = pytest.mark.netns

IKE_PORT, NATT_PORT = 500, 4500  # RFC 7296 §2, RFC 3948 §2.2
NON_ESP_MARKER = b"\0\0\0\0"
FLOOD = 20_000  # spoofed IKE_SA_INIT requests
FLOOD_SOURCES = ("203.0.113.", "198.51.100.")  # documentation ranges only (RFC 5737)
HALF_OPEN_PEERS = 8
HALF_OPEN_TIMEOUT = 30.0  # xdpsec.ike.sa.HALF_OPEN_TIMEOUT: kept as a number so a change shows up here

#: What the IKE core counts a dropped datagram as; any of these is a named reason.
DROP_EVENTS = ("malformed", "unknown_spi", "integrity_failed", "malformed_inner", "unexpected_exchange",
               "unexpected_response", "message_id_out_of_window", "message_id_reused", "half_open_limit",
               "no_matching_conn")
#: Never for network input: each would be a bug in xdpsec.
BUG_EVENTS = ("parser_bug", "internal_error")

#: Runs in the wire namespace: sends the frames given as hex lines on stdin through a raw socket on br0, each
#: after `gap` seconds; prints how many and how long it took.
_SEND = """
import json, socket, sys, time
gap = float(sys.argv[1])
frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("br0", 0))
t0 = time.monotonic()
for f in frames:
    s.send(f)
    if gap:
        time.sleep(gap)
print(json.dumps({"sent": len(frames), "seconds": time.monotonic() - t0}))
"""

#: Runs in the wire namespace: the IKE_SA_INIT flood. argv: Ethernet header (hex), destination IPv4 address,
#: the IKE_SA_INIT request (hex), count, seconds, seed, source prefixes. Up to 20,000 distinct frames, each the
#: request with a fresh initiator SPI from a source address and port drawn at random, are built before the clock
#: starts, then sent in turn as fast as one raw socket goes until `count` are sent or `seconds` have passed.
#: UDP checksum 0: none, allowed over IPv4 (RFC 768).
_FLOOD = """
import json, random, socket, struct, sys, time
eth, dst, ike = bytes.fromhex(sys.argv[1]), socket.inet_aton(sys.argv[2]), bytes.fromhex(sys.argv[3])
count, seconds, rnd = int(sys.argv[4]), float(sys.argv[5]), random.Random(int(sys.argv[6]))
prefixes = [bytes(int(x) for x in p.strip(".").split(".")) for p in sys.argv[7:]]

def checksum(hdr):
    s = sum(struct.unpack("!10H", hdr))
    s = (s >> 16) + (s & 0xFFFF)
    return (~(s + (s >> 16))) & 0xFFFF

frames = []
for i in range(min(count, 20000)):
    src = prefixes[i % len(prefixes)] + bytes([rnd.randrange(1, 255)])
    udp_len = 8 + len(ike)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, i & 0xFFFF, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", rnd.randrange(1024, 65536), 500, udp_len, 0)
    frames.append(eth + ip + udp + rnd.randbytes(8) + ike[8:])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("br0", 0))
t0 = time.monotonic()
deadline = t0 + seconds
sent = 0
while sent < count and (sent % 1000 or time.monotonic() < deadline):
    s.send(frames[sent % len(frames)])
    sent += 1
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))
"""


# --- the lab ---------------------------------------------------------------------------------------------------

def ike_pair(lab, directory: Path, *, initiator: str = "gwA", action: str = "none",
             responder_any: bool = True) -> tuple[Gateways, dict[str, Path]]:
    """gwA and gwB keyed with IKEv2 (PSK), one worker each, their metrics on LISTEN in their namespaces.

    `initiator` gets start_action `action` (none: the test calls `initiate`), the other one none. DPD is off, so
    no INFORMATIONAL moves the message IDs the mutations rely on. With `responder_any` the responder also
    accepts the same identity from any address (connection "rw"). Returns the gateways and their files."""
    a, b = site_sides(lab, workers=1)
    sides = {"gwA": a, "gwB": b}
    responder = "gwB" if initiator == "gwA" else "gwA"
    spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1, initiator_action=action)
    psk = lab_psk()
    configs = {}
    for node, side in sides.items():
        extra = [f'[metrics]\nlisten = "{LISTEN}"']
        if node == responder and responder_any:
            extra.insert(0, any_peer_conn(side, spec))
        side.extra = "\n\n".join(extra)
        text = render_ike(side, spec, psk=psk, initiator=node == initiator, state_dir=str(directory / "state"),
                          conn_keys="dpd_delay = 0")
        path = directory / f"{node}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        configs[node] = path
    gws = Gateways(lab)
    for node, side in sides.items():
        gws.start(node, configs[node], side.instance)
    gws.configs = configs
    gws.wait_ready()
    return gws, configs


def any_peer_conn(side, spec: PairSpec) -> str:
    """Connection "rw": the configured peer identity from any address, responder only (config.py: "%any")."""
    return "\n".join([
        "[connections.rw]",
        f'local_addrs = ["{side.local_addr}"]',
        'remote_addrs = ["%any"]',
        f'proposals = ["{spec.ike_proposal}"]',
        "dpd_delay = 0",
        "[connections.rw.local]", 'auth = "psk"', f'id = "{side.local_addr}"',
        "[connections.rw.remote]", 'auth = "psk"', f'id = "{side.remote_addr}"',
        "[connections.rw.children.net]",
        f'local_ts = ["{side.local_ts[0]}"]',
        'remote_ts = ["203.0.113.0/24"]',
        f'esp_proposals = ["{spec.proposal}"]',
    ])


def control(gws, node: str, cmd: str, **args):
    return request(socket_path(gws.instances[node]), cmd, args, timeout=10.0)


def wait_until(what, predicate, timeout: float = 20.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)
    return value


def established(gws, node: str, conn: str = "lab") -> list[dict]:
    return [s for s in gws.query(node, "ike-sas") if s["conn"] == conn and s["state"] == "established"]


@dataclass
class Exchange:
    """The first IKE exchanges of the tunnel as they crossed the wire (UDP payloads, gwA to gwB)."""

    eth: bytes            # the Ethernet header of gwA's frames to gwB
    init: bytes           # IKE_SA_INIT request
    auth: bytes           # IKE_AUTH request, protected (SK)
    auth_port: int        # gwB's port the IKE_AUTH went to (4500 after NAT detection, else 500)


def negotiate(lab, gws) -> Exchange:
    """gwA initiates while the wire records it; returns the requests once both sides hold the SAs."""
    ga, gb = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    cap = lab.capture("wire", "br0", filter=f"udp and src host {ga} and dst host {gb}")
    control(gws, "gwA", "initiate", conn="lab")
    wait_until("child SAs on both", lambda: len(gws.query("gwA", "sas")) == 2 and len(gws.query("gwB", "sas")) == 2)
    wait_until("IKE SA on gwB", lambda: established(gws, "gwB"))
    requests = {}
    for pkt in rdpcap(str(cap.stop())):
        payload = bytes(pkt[UDP].payload)
        if pkt[UDP].dport == NATT_PORT:
            payload = payload[len(NON_ESP_MARKER):]
        exchange = wire.decode_header(payload).exchange
        requests.setdefault(exchange, (bytes(pkt)[:14], payload, pkt[UDP].dport))
    eth, init, _ = requests[ExchangeType.IKE_SA_INIT]
    _, auth, auth_port = requests[ExchangeType.IKE_AUTH]
    return Exchange(eth, init, auth, auth_port)


def frame(lab, ex: Exchange, payload: bytes, *, dport: int = IKE_PORT, src: str | None = None,
          sport: int = IKE_PORT, marker: bool = True) -> list[bytes]:
    """One UDP datagram from gwA's address (or `src`) to gwB's, as Ethernet frames: fragmented (RFC 791) when it
    does not fit the lab's MTU, as a sender of 64 KB datagrams does. To port 4500 IKE goes behind the non-ESP
    marker (RFC 3948 §2.2), unless `marker` is False."""
    marker = NON_ESP_MARKER if dport == NATT_PORT and marker else b""
    pkt = IP(src=src or lab.addr["gwA"]["wan_v4"], dst=lab.addr["gwB"]["wan_v4"]) / UDP(sport=sport, dport=dport) \
        / Raw(marker + payload)
    eth = Ether(ex.eth)
    return [bytes(Ether(src=eth.src, dst=eth.dst) / f) for f in fragment(pkt, fragsize=1480)]


def send(lab, frames: list[bytes], gap: float = 0.0) -> dict:
    out = lab.run("wire", sys.executable, "-c", _SEND, str(gap), input="\n".join(f.hex() for f in frames),
                  timeout=120)
    result = json.loads(out.stdout)
    assert result["sent"] == len(frames)
    return result


def ike_events(lab, node: str = "gwB") -> dict[str, float]:
    s: Scrape = scrape(lab, node)
    return {labels["event"]: v for labels, v in s.samples.get("xdpsec_ike_events_total", [])}


def delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def counted_under(lab, before: dict, reasons: tuple[str, ...], n: int, what: str, timeout: float = 10.0) -> dict:
    """Wait until gwB's IKE core counted `n` more datagrams under `reasons`; returns what moved. Never a bug."""
    deadline = time.monotonic() + timeout
    while True:
        moved = delta(before, ike_events(lab))
        assert not any(moved.get(x) for x in BUG_EVENTS), (what, moved)
        if sum(moved.get(x, 0) for x in reasons) >= n:
            return moved
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {n} datagrams not counted under {reasons}: {moved}")
        time.sleep(0.3)


class Stream:
    """A bounded ping stream hostA -> hostB (through the tunnel) that runs while an attack does."""

    def __init__(self, lab, count: int = 60, interval: float = 0.05) -> None:
        self.count = count
        self.proc = lab.popen("hostA", "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
                              lab.addr["hostB"]["v4"], stdout=subprocess.PIPE, text=True)

    def received(self, timeout: float = 60.0) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        return int(out.split(" received")[0].rsplit(", ", 1)[-1])


def still_working(lab, gws, ike_before: list[dict]) -> None:
    """Both gateways up, `xdpsec status` says the tunnel is up, gwB's IKE SA is the one it had, traffic flows."""
    for node in ("gwA", "gwB"):
        assert gws.procs[node].poll() is None, gws.log(node)
        status = gws.query(node, "status")
        assert all(w["alive"] for w in status["workers"]), (node, status)
        lab_conn = next(c for c in status["connections"] if c["name"] == "lab")
        assert lab_conn["state"] == "up", (node, lab_conn)
    now = established(gws, "gwB")
    assert [(s["ispi"], s["rspi"]) for s in now] == [(s["ispi"], s["rspi"]) for s in ike_before], (now, ike_before)
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=6).received >= 2


# --- mutations of the captured exchange -------------------------------------------------------------------------

def with_header(msg: bytes, **fields) -> bytes:
    """`msg` with IKE header fields (RFC 7296 §3.1) replaced: ispi, rspi, exchange, msg_id, length."""
    ispi, rspi, nxt, version, exchange, flags, msg_id, length = struct.unpack_from("!8s8sBBBBII", msg)
    ispi, rspi = fields.get("ispi", ispi), fields.get("rspi", rspi)
    exchange, msg_id = fields.get("exchange", exchange), fields.get("msg_id", msg_id)
    length = fields.get("length", length)
    return struct.pack("!8s8sBBBBII", ispi, rspi, nxt, version, exchange, flags, msg_id, length) + msg[28:]


def fresh(msg: bytes) -> bytes:
    """An IKE_SA_INIT request as a new initiator would send it: a fresh initiator SPI."""
    return with_header(msg, ispi=secrets.token_bytes(8))


def first_payload_length(msg: bytes, length: int) -> bytes:
    """The first payload's generic header (§3.2) claims `length` octets."""
    return msg[:30] + struct.pack("!H", length) + msg[32:]


def transforms_count(init: bytes, count: int) -> bytes:
    """The first proposal of the SA payload (the first payload of our IKE_SA_INIT) announces `count` transforms
    (§3.3.1: one octet), while carrying the ones it had."""
    assert init[16] == PayloadType.SA
    return init[:28 + 4 + 7] + bytes([count]) + init[28 + 4 + 8:]


def notify_chain(n: int) -> bytes:
    """An IKE_SA_INIT request of `n` Notify payloads (§3.10, status type 40960, private use) whose last one still
    announces another: the parser walks the whole chain and finds the message ends early."""
    notify = struct.pack("!BBHBBH", PayloadType.NOTIFY, 0, 8, 0, 0, 40960)
    body = notify * n
    header = struct.pack("!8s8sBBBBII", secrets.token_bytes(8), bytes(8), PayloadType.NOTIFY, 0x20,
                         ExchangeType.IKE_SA_INIT, 0x08, 0, 28 + len(body))
    return header + body


def flipped(msg: bytes, rnd: random.Random, start: int) -> bytes:
    """`msg` with one random bit flipped at or after octet `start`."""
    i = rnd.randrange(start, len(msg))
    return msg[:i] + bytes([msg[i] ^ (1 << rnd.randrange(8))]) + msg[i + 1:]


def mutations(ex: Exchange) -> list[tuple[str, list[bytes], int, tuple[str, ...]]]:
    """(what, datagrams, gwB's port, the reasons they must be counted under). The IKE_AUTH copies carry message
    ID 2, the next one gwB expects on the established SA (DPD is off), so they pass the §2.3 window check and
    reach the check under test."""
    rnd = random.Random(7)
    init, auth = ex.init, with_header(ex.auth, msg_id=2)
    # INFORMATIONAL is what an established SA accepts (IKE_AUTH is not): the flips meet the integrity check.
    info = with_header(auth, exchange=ExchangeType.INFORMATIONAL)
    ispi, rspi = auth[:8], auth[8:16]
    n = len(auth)
    return [
        ("truncated", [fresh(init)[:k] for k in (0, 1, 27, 28, 60, len(init) - 1)] + [auth[:k] for k in (20, 28, n - 1)],
         ex.auth_port, ("malformed",)),
        ("header length lies", [with_header(fresh(init), length=v) for v in (0, 27, len(init) + 1, 2**32 - 1)]
         + [with_header(auth, length=v) for v in (n - 1, n + 16)], ex.auth_port, ("malformed",)),
        ("payload length lies", [first_payload_length(fresh(init), v) for v in (0, 3, 0xFFFF, len(init))],
         ex.auth_port, ("malformed",)),
        ("wrong SPIs", [with_header(auth, rspi=secrets.token_bytes(8)) for _ in range(10)]
         + [with_header(auth, ispi=secrets.token_bytes(8), rspi=rspi) for _ in range(10)]
         + [with_header(auth, ispi=rspi, rspi=ispi)], ex.auth_port, ("unknown_spi",)),
        ("bogus exchange types", [with_header(auth, exchange=e) for e in (0, 1, 33, 99, 255)]
         + [with_header(auth, exchange=ExchangeType.IKE_SA_INIT)], ex.auth_port, ("unexpected_exchange",)),
        ("255 transforms announced", [transforms_count(fresh(init), 255) for _ in range(5)], ex.auth_port,
         ("malformed",)),
        ("bit flips in the protected IKE_AUTH", [flipped(info, rnd, 28 + 4) for _ in range(200)], ex.auth_port,
         ("integrity_failed",)),
        ("bit flips anywhere in IKE_AUTH", [flipped(info, rnd, 0) for _ in range(200)], ex.auth_port, DROP_EVENTS),
    ]


@dataclass
class Tunnel:
    lab: object
    gws: Gateways
    ex: Exchange
    ike_before: list[dict]  # gwB's established IKE SA: every attack must leave this very one in place


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory):
    """One lab for the module (the tests run in file order; the last one tears the tunnel down on purpose)."""
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root")
    lab = Lab(prefix=TEST_PREFIX)
    try:
        lab.site_to_site()
        gws, _ = ike_pair(lab, tmp_path_factory.mktemp("ike-attacks"))
        try:
            ex = negotiate(lab, gws)
            yield Tunnel(lab, gws, ex, established(gws, "gwB"))
        finally:
            codes = gws.stop()
        assert codes == {"gwA": 0, "gwB": 0}, codes
    finally:
        lab.teardown()


def test_malformed_ike_is_counted_by_name_and_the_tunnel_survives(tunnel):
    lab, gws, ex = tunnel.lab, tunnel.gws, tunnel.ex
    for what, datagrams, port, reasons in mutations(ex):
        before = ike_events(lab)
        stream = Stream(lab, count=30)
        send(lab, [f for d in datagrams for f in frame(lab, ex, d, dport=port)], gap=0.001)
        assert stream.received() >= 27, what  # the stream passed while the attack ran
        counted = counted_under(lab, before, reasons, len(datagrams), what)
        assert sum(counted.get(x, 0) for x in reasons) == len(datagrams), (what, counted)
        still_working(lab, gws, tunnel.ike_before)

    # 8,000 payloads in one 64 KB datagram, fragmented: the whole chain is walked, then found to end early.
    before = ike_events(lab)
    stream = Stream(lab, count=30)
    chains = [notify_chain(8000) for _ in range(3)]
    for d in chains:
        send(lab, frame(lab, ex, d))
        time.sleep(0.2)  # a 64 KB datagram takes a third of a UDP socket's default receive buffer
    assert stream.received() >= 27
    counted = counted_under(lab, before, ("malformed",), len(chains), "payload chains")
    assert counted["malformed"] == len(chains), counted
    still_working(lab, gws, tunnel.ike_before)


def half_open(gws, conn: str = "rw") -> list[dict]:
    return [s for s in gws.query("gwB", "ike-sas") if s["conn"] == conn and not s["initiator"]
            and s["state"] in ("created", "connecting")]


def test_peers_that_never_finish_are_forgotten_after_the_half_open_timeout(tunnel):
    """RFC 7296 §2.6 leaves a responder's half-open state to local policy: xdpsec keeps it HALF_OPEN_TIMEOUT."""
    lab, gws, ex = tunnel.lab, tunnel.gws, tunnel.ex
    before = ike_events(lab)
    stream = Stream(lab, count=30)
    peers = [f"203.0.113.{10 + i}" for i in range(HALF_OPEN_PEERS)]
    sent_at = time.monotonic()
    send(lab, [f for src in peers for f in frame(lab, ex, fresh(ex.init), src=src, sport=20000 + len(src))])
    assert stream.received() >= 27
    rows = wait_until("half-open SAs", lambda: (r := half_open(gws)) and len(r) == len(peers) and r, timeout=10)
    assert sorted(r["remote"].split("[")[0] for r in rows) == sorted(peers), rows
    assert all(r["state"] == "connecting" for r in rows), rows  # IKE_SA_INIT answered: keys, nobody authenticated
    still_working(lab, gws, tunnel.ike_before)
    time.sleep(max(0.0, sent_at + HALF_OPEN_TIMEOUT + 2 - time.monotonic()))
    wait_until("half-open SAs forgotten", lambda: not half_open(gws), timeout=10)
    assert delta(before, ike_events(lab)).get("half_open_expired", 0) == len(peers)
    still_working(lab, gws, tunnel.ike_before)


def xdp(gws, node: str = "gwB") -> dict[str, int]:
    """A gateway's classifier statistics and drops in one dict ("drop:<reason>")."""
    stats = gws.query(node, "stats")["xdp"]
    return {**stats["stats"], **{f"drop:{k}": v for k, v in stats["drops"].items()}}


def test_oversized_and_fragmented_junk(tunnel):
    lab, gws, ex = tunnel.lab, tunnel.gws, tunnel.ex
    rnd = random.Random(11)
    junk = [rnd.randbytes(64_000) for _ in range(3)]
    ga, gb = lab.addr["gwA"]["wan_v4"], lab.addr["gwB"]["wan_v4"]
    eth = Ether(ex.eth)
    lying = [bytes(Ether(src=eth.src, dst=eth.dst) / IP(src=ga, dst=gb, len=65535) / UDP(sport=500, dport=500)
                   / Raw(rnd.randbytes(1400))) for _ in range(3)]
    big_udp = [bytes(Ether(src=eth.src, dst=eth.dst) / f)
               for j in junk for f in fragment(IP(src=ga, dst=gb) / UDP(sport=9, dport=9) / Raw(j), fragsize=1480)]
    # (what, datagrams as lists of frames, where they must be counted: "ike:<event>" or "xdp:<statistic>", how many)
    cases = [
        ("64 KB junk to UDP 500", [frame(lab, ex, j) for j in junk], "ike:malformed", 3),
        ("64 KB junk to UDP 4500 behind the non-ESP marker", [frame(lab, ex, j, dport=NATT_PORT) for j in junk],
         "ike:malformed", 3),
        # Without the marker it is ESP in UDP (RFC 3948 §2.2), and a fragment of it: dropped in XDP; the kernel
        # then discards the other fragments when reassembly times out.
        ("64 KB junk to UDP 4500 without the marker", [frame(lab, ex, b"\x01" + j, dport=NATT_PORT,
                                                            sport=NATT_PORT, marker=False) for j in junk],
         "xdp:drop:ipsec_fragment", 3),
        ("IPv4 total length 65535 in a 1.4 KB frame", [[f] for f in lying], "xdp:drop:malformed_ip", 3),
        # Not IKE, not ESP, for the gateway itself: the kernel's (port unreachable); XDP passes every fragment.
        ("64 KB junk to UDP 9", [big_udp], "xdp:pass", len(big_udp)),
    ]
    for what, datagrams, where, n in cases:
        before, xbefore = ike_events(lab), xdp(gws)
        stream = Stream(lab, count=30)
        for d in datagrams:
            send(lab, d)
            time.sleep(0.2)  # a 64 KB datagram takes a third of a UDP socket's default receive buffer
        assert stream.received() >= 27, what
        source, _, name = where.partition(":")
        if source == "ike":
            counted = counted_under(lab, before, (name,), n, what)
            assert counted[name] == n, (what, counted)
        else:
            moved = wait_until(what, lambda xb=xbefore, k=name, n=n: (m := delta(xb, xdp(gws))).get(k, 0) >= n and m,
                               timeout=10)
            assert not any(k.startswith("drop:") and k != name for k in moved), (what, moved)
            assert delta(before, ike_events(lab)) == {}, what
        still_working(lab, gws, tunnel.ike_before)


def udp_rcvbuf_errors(lab, node: str = "gwB") -> int:
    """The kernel's count of UDP datagrams dropped because a socket's receive buffer was full (/proc/net/snmp)."""
    lines = [line.split() for line in lab.run(node, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


def flood_cmd(lab, ex: Exchange, count: int, seconds: float) -> list[str]:
    return [sys.executable, "-c", _FLOOD, ex.eth.hex(), lab.addr["gwB"]["wan_v4"], ex.init.hex(), str(count),
            str(seconds), str(secrets.randbits(32)), *FLOOD_SOURCES]


def settled(lab, timeout: float = 30.0) -> dict:
    """gwB's IKE counters once they stop moving: the IKE thread has worked through what its socket held."""
    last, deadline = ike_events(lab), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = ike_events(lab)
        if now == last:
            break
        last = now
    return last


def test_ike_sa_init_flood_from_spoofed_sources(tunnel, record_property):
    """20,000 IKE_SA_INIT requests from spoofed sources, as fast as the wire node sends them: XDP drops all but
    what the two source prefixes' buckets allow (`ike_init_rate`, [limits] defaults); what it lets through
    reaches the IKE path (XDP `ike`) and is then either answered (a half-open SA up to the COOKIE threshold, a
    stateless COOKIE request past it, RFC 7296 §2.6) or dropped by the kernel because the IKE socket's buffer
    is full."""
    lab, gws, ex = tunnel.lab, tunnel.gws, tunnel.ex
    before, xbefore, rcvbuf = ike_events(lab), xdp(gws), udp_rcvbuf_errors(lab)
    stream = Stream(lab, count=100)
    result = json.loads(lab.run("wire", *flood_cmd(lab, ex, FLOOD, 60), timeout=120).stdout)
    rate = result["sent"] / result["seconds"]
    record_property("ike_sa_init_flood_per_second", round(rate))
    print(f"\nIKE_SA_INIT flood: {result['sent']} in {result['seconds']:.2f} s = {rate:.0f}/s")
    assert result["sent"] == FLOOD
    assert stream.received() >= 90, "the tunnel's stream did not pass during the flood"
    moved = delta(before, settled(lab))
    assert not any(moved.get(x) for x in BUG_EVENTS), moved
    xmoved = delta(xbefore, xdp(gws))
    passed, limited = xmoved.get("ike", 0), xmoved.get("drop:ike_init_rate", 0)
    print(f"XDP passed {passed} to the IKE socket and dropped {limited} (ike_init_rate)")
    assert passed + limited >= FLOOD * 0.99  # a veth may lose a few
    # two /24s at 100/s with bursts of 100 each, for the about one second the flood lasts
    assert limited >= FLOOD * 0.9, xmoved
    created = len(half_open(gws))
    answered = created + moved.get("cookie_sent", 0) + moved.get("half_open_limit", 0)
    dropped = udp_rcvbuf_errors(lab) - rcvbuf
    print(f"half-open SAs {created}, IKE events {moved}, dropped by the kernel (RcvbufErrors) {dropped}")
    assert 0 < created <= 1024  # [limits] half_open_ike_sas, default (the COOKIE threshold is lower)
    assert answered + dropped >= passed * 0.99, (created, moved, dropped)
    still_working(lab, gws, tunnel.ike_before)


class NotEstablished(Exception):
    """No new IKE SA came up during the flood (the failure the XDP rate limit exists to prevent)."""


def test_a_new_ike_sa_comes_up_during_an_ike_sa_init_flood(tunnel):
    """The last test of the module: it replaces the tunnel's IKE SA. gwA terminates its IKE SA (before the flood:
    under it, the Delete exchange itself is lost), then initiates a new one while 15 s of flood run; the new one
    must be established within the flood (gwA retransmits after 4 s and 7.2 s)."""
    lab, gws, ex = tunnel.lab, tunnel.gws, tunnel.ex
    old = {s["ispi"] for s in gws.query("gwA", "ike-sas")}
    control(gws, "gwA", "terminate", conn="lab")
    wait_until("gwA's IKE SA gone", lambda: not gws.query("gwA", "ike-sas"), timeout=10)
    flooder = lab.popen("wire", *flood_cmd(lab, ex, 1_000_000, 15), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        control(gws, "gwA", "initiate", conn="lab")
        try:
            wait_until("a new IKE SA during the flood", lambda: [s for s in established(gws, "gwA")
                                                                 if s["ispi"] not in old], timeout=12)
        except AssertionError as e:
            raise NotEstablished(str(e)) from None
    finally:
        flooder.communicate(timeout=60)
