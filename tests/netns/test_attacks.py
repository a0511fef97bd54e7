"""Attacks from the outside in the lab: hostile ESP injected on the wire while a tunnel carries a steady stream.

    hostA ── gwA ══ wire (attacker: scapy on br0) ══ gwB ── hostB

The attacker sits on the wire node, the one place every outside packet crosses, and sends Ethernet frames
straight to gwB's outside port: replays of captured ESP, ESP for unknown SPIs at a high rate, ESP with a
forged sequence number (the ICV no longer verifies), truncated ESP and fragmented ESP. After each kind, gwB's
processes are alive, hostA's stream still reaches hostB, and every injected packet is counted under its named
drop reason (XDP: unknown_spi, ipsec_fragment, truncated; workers: replay, auth_failed). Counts are bounded.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from scapy.all import ESP, IP, rdpcap

from xdpsec.labconf import Gateways, PairSpec, site_sides, write_pair

pytestmark = pytest.mark.netns

#: Runs in the wire namespace: sends the frames of a pcap-less list given as hex lines on stdin.
_INJECT = """
import sys
from scapy.all import Ether, sendp
frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
sendp([Ether(f) for f in frames], iface="br0", verbose=False)
print(len(frames))
"""


def drops(gws: Gateways, node: str) -> dict[str, int]:
    """XDP and worker drop counters of a gateway, summed by name."""
    stats = gws.query(node, "stats")
    total = dict(stats["xdp"]["drops"])
    for w in stats["workers"]:
        for name, n in w["drops"].items():
            total[name] = total.get(name, 0) + n
    return total


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def inject(lab, frames: list[bytes]) -> None:
    out = lab.run("wire", sys.executable, "-c", _INJECT, input="\n".join(f.hex() for f in frames), timeout=120)
    assert int(out.stdout) == len(frames)


@pytest.fixture
def tunnel(make_lab, tmp_path):
    lab = make_lab(topology="site")
    a, b = site_sides(lab, workers=2)
    pa, pb = write_pair(tmp_path, a, b, PairSpec(mode="tunnel", proposal="aes128gcm16", replay_window=64))
    gws = Gateways(lab)
    gws.start("gwA", pa, a.instance)
    gws.start("gwB", pb, b.instance)
    gws.wait_ready()
    assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3).received >= 2
    yield lab, gws
    codes = gws.stop()
    assert codes == {"gwA": 0, "gwB": 0}, codes


def captured_esp(lab, count: int) -> list[bytes]:
    """`count` real ESP frames from gwA to gwB, taken off the wire while hostA pings hostB."""
    cap = lab.capture("wire", "br0", filter=f"esp and src host {lab.addr['gwA']['wan_v4']}", count=count)
    lab.run("hostA", "ping", "-n", "-c", str(count), "-i", "0.02", "-W", "1", lab.addr["hostB"]["v4"], check=False)
    return [bytes(p) for p in rdpcap(str(cap.wait(20)))]


def still_working(lab, gws) -> None:
    for node in ("gwA", "gwB"):
        assert gws.procs[node].poll() is None, gws.log(node)
        assert all(w["alive"] for w in gws.query(node, "stats")["workers"]), node
    ping = lab.ping("hostA", lab.addr["hostB"]["v4"], count=5, timeout=8)
    assert ping.received >= 4, (ping, gws.log("gwB"))


def with_esp(frame: bytes, *, spi: int | None = None, seq: int | None = None, cut: int | None = None,
             fragment: bool = False) -> bytes:
    """A copy of a captured ESP frame with its SPI or sequence number forged, cut short, or marked a fragment."""
    from scapy.all import Ether
    pkt = Ether(frame)
    esp = bytes(pkt[ESP])
    if spi is not None:
        esp = spi.to_bytes(4, "big") + esp[4:]
    if seq is not None:
        esp = esp[:4] + seq.to_bytes(4, "big") + esp[8:]
    if cut is not None:
        esp = esp[:cut]
    ip = pkt[IP]
    new = IP(src=ip.src, dst=ip.dst, proto=50, ttl=64, flags="MF" if fragment else "DF") / esp
    return bytes(Ether(src=pkt.src, dst=pkt.dst) / IP(bytes(new)))


def test_hostile_esp_is_dropped_by_name_and_the_tunnel_survives(tunnel):
    lab, gws = tunnel
    real = captured_esp(lab, 20)
    assert len(real) == 20

    cases = [
        # (what, frames, the drop reasons they must be counted under)
        ("replayed", real * 5, ("replay",)),
        ("unknown SPI", [with_esp(real[0], spi=0x7F000000 + i) for i in range(5000)], ("unknown_spi",)),
        ("forged sequence number", [with_esp(f, seq=0x100000 + i) for i, f in enumerate(real)], ("auth_failed",)),
        # shorter than SPI + sequence number: the classifier's malformed_l4; longer: the worker's truncated
        ("truncated", [with_esp(real[0], cut=n) for n in (0, 4, 8, 12, 20)] * 4, ("malformed_l4", "truncated")),
        ("fragmented", [with_esp(f, fragment=True) for f in real], ("ipsec_fragment",)),
    ]
    for what, frames, reasons in cases:
        before = drops(gws, "gwB")
        stream = lab.popen("hostA", "ping", "-n", "-q", "-c", "40", "-i", "0.05", "-W", "1",
                           lab.addr["hostB"]["v4"], stdout=subprocess.PIPE, text=True)
        inject(lab, frames)
        out, _ = stream.communicate(timeout=30)
        time.sleep(0.3)
        counted = delta(before, drops(gws, "gwB"))
        received = int(out.split(" received")[0].rsplit(", ", 1)[-1])
        assert received >= 36, (what, out)  # the steady stream passed while under attack
        named = sum(counted.get(r, 0) for r in reasons)
        assert named >= len(frames) * 0.99, (what, reasons, counted)  # a veth may lose a few
        still_working(lab, gws)
