"""Write the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/) from real traffic made in memory.

    .venv/bin/python tests/fuzz/make_corpus.py

Data path: sample inner packets (ICMP, UDP, TCP, a fragment, IPv6; built with scapy, an independent
implementation) are protected by the real `OutboundSA` of each scenario of fuzz_targets.py, with its fixed
keys, and stored as the Ethernet frames gwB receives; the same inner packets are stored as INNER seeds, and
their sealed ESP bodies (payload, RFC 4303 §2.4 padding, pad length, next header) as PLAINTEXT seeds.
IKE: a complete deterministic exchange (IKE_SA_INIT, IKE_AUTH, then an INFORMATIONAL Delete) between two
in-memory managers, each datagram stored for the stage that receives it. Config: the example configurations
under config/. File names are the SHA-1 of the contents, as libFuzzer names what it adds.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from scapy.all import ICMP, IP, TCP, UDP, IPv6, Raw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_targets as ft  # noqa: E402  (the targets live next to this script, not in a package)

from xdpsec.abi import Drop  # noqa: E402
from xdpsec.esp.mode import OutboundSA, protect  # noqa: E402
from xdpsec.sa import Protocol  # noqa: E402

CORPUS = HERE / "corpus"
REPO = HERE.parent.parent


def _inner_packets() -> list[bytes]:
    src, dst = "198.51.100.10", "198.51.100.130"
    return [bytes(p) for p in (
        IP(src=src, dst=dst, ttl=64) / ICMP(id=1, seq=1) / Raw(b"xdpsec-plaintext" * 4),
        IP(src=src, dst=dst) / UDP(sport=5000, dport=5201) / Raw(bytes(32)),
        IP(src=src, dst=dst) / TCP(sport=40000, dport=80, flags="S"),
        IP(src=src, dst=dst, flags="MF", frag=0) / Raw(bytes(64)),
        IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4000, dport=4001) / Raw(b"transport"),
        IPv6(src="2001:db8:a::10", dst="2001:db8:b::10") / UDP(sport=1, dport=2) / Raw(b"v6"),
    )]


def _padded(inner: bytes, next_header: int, block: int) -> bytes:
    """An ESP body as RFC 4303 §2.4 lays it out: payload, padding 1, 2, 3..., pad length, next header."""
    pad = -(len(inner) + 2) % block
    return inner + bytes(range(1, pad + 1)) + bytes((pad, next_header))


def datapath_seeds(scenarios: tuple[str, ...]) -> list[bytes]:
    seeds = []
    n = len(scenarios)
    for i, name in enumerate(scenarios):
        out_p, _in_p = ft._PAIRS[name]
        for inner in _inner_packets():
            out = OutboundSA(out_p)
            try:
                outer = protect(out, inner)
            except Drop:
                continue
            seeds.append(bytes([i + n * ft.Shape.FRAME]) + ft.MAC_B + ft.MAC_A + ft.ETH_IPV4 + outer)
            seeds.append(bytes([i + n * ft.Shape.INNER]) + inner)
            if out_p.protocol == Protocol.ESP:
                block = out._esp.cipher.block_size
                nh = 4 if inner[0] >> 4 == 4 else 41
                seeds.append(bytes([i + n * ft.Shape.PLAINTEXT]) + _padded(inner, nh, block))
    return seeds


def ike_seeds() -> tuple[list[bytes], list[bytes]]:
    """(seeds of `ike`: stage byte + datagram, seeds of `ike_wire`: first payload type + message)."""
    run = ft.IkeRun()
    run.initiate()
    while run.deliver_one():
        pass
    run._call("a", lambda: run.a.terminate_child("a-to-b", "net", ft.T0))
    while run.deliver_one():
        pass
    stages = {  # the n-th datagram of the exchange -> the stage that receives it
        0: ft.IkeStage.RESPONDER_FRESH,       # IKE_SA_INIT request
        1: ft.IkeStage.INITIATOR_AFTER_INIT,  # IKE_SA_INIT response
        2: ft.IkeStage.RESPONDER_AFTER_INIT,  # IKE_AUTH request
        3: ft.IkeStage.INITIATOR_AFTER_AUTH,  # IKE_AUTH response
        4: ft.IkeStage.RESPONDER_ESTABLISHED,  # INFORMATIONAL Delete request
    }
    ike, wire_seeds = [], []
    for n, (_side, data) in enumerate(run.sent):
        if n in stages:
            ike.append(bytes([stages[n]]) + data)
        first_payload = data[16]
        wire_seeds.append(bytes([first_payload]) + data)
    return ike, wire_seeds


def write(target: str, seeds: list[bytes]) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main() -> None:
    write("esp", datapath_seeds(ft.ESP_SCENARIOS))
    write("udp_encap", datapath_seeds(ft.UDP_SCENARIOS))
    write("ah", datapath_seeds(ft.AH_SCENARIOS))
    ike, wire_seeds = ike_seeds()
    write("ike", ike)
    write("ike_wire", wire_seeds)
    write("config", [p.read_bytes() for p in sorted((REPO / "config").glob("*.toml"))])


if __name__ == "__main__":
    main()
