#!/usr/bin/env python3
"""Microbenchmark of the xdpsec packet core, without I/O: where a worker's time per packet goes.

Why: the side-by-side benchmark (scripts/bench.py) measures the whole path through namespaces, where the
traffic generator, the kernel and both gateways share two vCPUs; it says how fast, not why. This script
runs only what a worker runs per packet, on frames laid out in a UMEM-like buffer exactly as AF_XDP hands
them over (2048-byte frames, the packet at offset 256, the classifier's 24-byte `struct xs_meta` before it),
and compares it with the bare `cryptography` AES-GCM call that is the floor of the work.

    .venv/bin/python scripts/profile_dataplane.py            # table of µs/packet and packets/s
    .venv/bin/python scripts/profile_dataplane.py --profile  # plus a cProfile of each path (top functions)
    .venv/bin/python scripts/profile_dataplane.py --json out.json

Paths measured, for 64, 512 and 1400-byte inner IPv4 UDP packets through an AES-GCM-128 tunnel-mode SA:

* `aesgcm encrypt` / `aesgcm decrypt`: one `AESGCM.encrypt`/`decrypt` of the ESP plaintext (the ceiling);
* `aesgcm encrypt_into`: the same call writing in place into the buffer;
* `stages`: the pieces the copy path is made of (IP parse, checksum, esp_encap, the whole `protect`);
* `protect (copy)` / `unprotect (copy)`: `PacketCore.process` on a frame copied out of the buffer, returning
  new bytes (what the worker did before the in-place path);
* `protect (in place)` / `unprotect (in place)`: `PacketCore.process_frame` on the frame in the buffer
  (the worker's path now), including re-laying the frame each round (a ~0.1 µs slice copy, the stand-in for
  the kernel's copy into the UMEM).

Every figure is the best of `--repeat` runs of `--count` packets (the minimum is the least disturbed by the
shared VM). The unprotect paths consume pre-built ESP frames with consecutive sequence numbers, so the replay
window accepts each one exactly once, as on the wire.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from xdpsec.abi import XS_META_MAGIC, Kind, XsMeta  # noqa: E402
from xdpsec.dataplane.core import PacketCore, Port, Route  # noqa: E402
from xdpsec.esp.codec import esp_encap  # noqa: E402
from xdpsec.esp.mode import protect  # noqa: E402
from xdpsec.sa import Direction, Encr, Mode, Protocol, SAParams, TrafficSelector, Transform  # noqa: E402
from xdpsec.wire import ip  # noqa: E402

SIZES = (64, 512, 1400)
FRAME = 2048
HEADROOM = 256  # XDP_PACKET_HEADROOM: where the kernel puts received data inside a UMEM frame
ETH_HLEN = 14
GW_A, GW_B = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
HOST_A, HOST_B = ipaddress.ip_address("198.51.100.10"), ipaddress.ip_address("198.51.100.130")
NET_A, NET_B = ipaddress.ip_network("198.51.100.0/25"), ipaddress.ip_network("198.51.100.128/25")
MAC = {name: bytes([2, 0, 0, 0, 0, i]) for i, name in enumerate(("hostA", "a_lan", "a_wan", "b_wan", "b_lan",
                                                                   "hostB"), 1)}
GCM128 = Transform(Encr.AES_GCM_16, 128)


def _sa(direction: Direction, local, remote, key: bytes, local_ts, remote_ts) -> SAParams:
    return SAParams(spi=0x1001, protocol=Protocol.ESP, direction=direction, mode=Mode.TUNNEL, transform=GCM128,
                    local=local, remote=remote, enc_key=key, replay_window=1024,
                    local_ts=(TrafficSelector(local_ts),), remote_ts=(TrafficSelector(remote_ts),))


def gateways(key: bytes) -> tuple[PacketCore, PacketCore]:
    """gwA (protects hostA -> hostB) and gwB (unprotects it), routes resolved, as in tests/unit/test_core.py."""
    a = PacketCore(0, {0: Port(0, "lan0", MAC["a_lan"], 1500), 1: Port(1, "wan0", MAC["a_wan"], 1500, (GW_A,))})
    b = PacketCore(0, {0: Port(0, "lan0", MAC["b_lan"], 1500), 1: Port(1, "wan0", MAC["b_wan"], 1500, (GW_B,))})
    a.add_outbound(1, _sa(Direction.OUT, GW_A, GW_B, key, NET_A, NET_B))
    b.add_inbound(2, _sa(Direction.IN, GW_B, GW_A, key, NET_B, NET_A))
    a.set_route(GW_B.packed, Route.make(1, MAC["a_wan"], MAC["b_wan"], 1500))
    b.set_route(HOST_B.packed, Route.make(0, MAC["b_lan"], MAC["hostB"], 1500))
    return a, b


def inner_frame(size: int) -> bytes:
    """An Ethernet frame carrying a `size`-byte IPv4/UDP packet hostA -> hostB."""
    payload = bytes(size - 28)
    udp = (40000).to_bytes(2, "big") + (5201).to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") + \
        b"\0\0" + payload
    pkt = ip.build_ipv4(HOST_A, HOST_B, 17, udp, ttl=64)
    return MAC["a_lan"] + MAC["hostA"] + b"\x08\x00" + pkt


def meta(kind: int, sa_index: int) -> bytes:
    return bytes(XsMeta(magic=XS_META_MAGIC, sa_index=sa_index, owner=0, l3_off=ETH_HLEN, l4_off=ETH_HLEN + 20,
                        kind=kind, ip_version=4))


class Umem:
    """A bytearray cut into frames, each frame's packet at HEADROOM with the metadata before it."""

    def __init__(self, nframes: int) -> None:
        self.buf = bytearray(nframes * FRAME)
        self.view = memoryview(self.buf)

    def lay(self, index: int, frame: bytes, meta_bytes: bytes) -> int:
        addr = index * FRAME + HEADROOM
        self.buf[addr - len(meta_bytes):addr] = meta_bytes
        self.buf[addr:addr + len(frame)] = frame
        return addr


def best(fn, count: int, repeat: int) -> float:
    """Seconds per call of fn(i) for i in range(count), the best of `repeat` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(count)
        times.append((time.perf_counter() - t0) / count)
    return min(times)


def measure(size: int, count: int, repeat: int, profile: bool) -> dict[str, float]:
    key = os.urandom(20)
    frame = inner_frame(size)
    plain_len = size + 2 + (-(size + 2)) % 4
    plaintext, aad = bytes(plain_len), bytes(8)
    gcm = AESGCM(key[:16])
    nonce = key[16:] + bytes(8)
    scratch = bytearray(FRAME)
    sv = memoryview(scratch)
    results: dict[str, float] = {}

    def loop(body):
        def run(n):
            for i in range(n):
                body(i)
        return run

    results["aesgcm encrypt"] = best(loop(lambda i: gcm.encrypt(nonce, plaintext, aad)), count, repeat)
    sealed = gcm.encrypt(nonce, plaintext, aad)
    results["aesgcm decrypt"] = best(loop(lambda i: gcm.decrypt(nonce, sealed, aad)), count, repeat)
    src, dst = sv[0:plain_len], sv[0:plain_len + 16]
    results["aesgcm encrypt_into"] = best(loop(lambda i: gcm.encrypt_into(nonce, src, aad, dst)), count, repeat)

    # Stages of the copy path, one at a time.
    a, b = gateways(key)
    pkt = frame[ETH_HLEN:]
    results["stage ip.parse"] = best(loop(lambda i: ip.parse(pkt)), count, repeat)
    results["stage ip.checksum(20 B)"] = best(loop(lambda i: ip.checksum(pkt[:20])), count, repeat)
    sa = a.out[1]
    results["stage esp_encap"] = best(loop(lambda i: esp_encap(sa._esp, i + 1, 4, pkt)), count, repeat)
    sa.seq = 0
    results["stage mode.protect"] = best(loop(lambda i: protect(sa, pkt)), count, repeat)

    # The copy path: PacketCore.process on bytes.
    a, b = gateways(key)
    results["protect (copy)"] = best(loop(lambda i: a.process(0, frame, Kind.PROTECT, 1, ETH_HLEN)), count, repeat)
    a, b = gateways(key)
    esp_frames = [a.process(0, frame, Kind.PROTECT, 1, ETH_HLEN)[0][1] for _ in range(count * repeat)]
    it = iter(esp_frames)
    results["unprotect (copy)"] = best(loop(lambda i: b.process(1, next(it), Kind.ESP, 2, ETH_HLEN)), count, repeat)
    assert not b.drops, b.drops

    if hasattr(PacketCore, "process_frame"):
        results.update(measure_in_place(key, frame, count, repeat))

    if profile:
        a, b = gateways(key)
        print(f"\n=== cProfile, protect (copy), {size} B ===")
        _profile(lambda: [a.process(0, frame, Kind.PROTECT, 1, ETH_HLEN) for _ in range(count)])
        a, b = gateways(key)
        frames = [a.process(0, frame, Kind.PROTECT, 1, ETH_HLEN)[0][1] for _ in range(count)]
        print(f"\n=== cProfile, unprotect (copy), {size} B ===")
        _profile(lambda: [b.process(1, f, Kind.ESP, 2, ETH_HLEN) for f in frames])
        if hasattr(PacketCore, "process_frame"):
            profile_in_place(key, frame, count)
    return results


def _in_place_setup(key: bytes, frame: bytes, n: int):
    a, b = gateways(key)
    umem = Umem(2)
    pmeta = meta(Kind.PROTECT, 1)
    out: list = []
    # ESP frames for gwB, made by gwA's in-place path itself.
    esp = []
    for _ in range(n):
        addr = umem.lay(0, frame, pmeta)
        tx = a.process_frame(0, umem.view, addr, len(frame), Kind.PROTECT, 1, ETH_HLEN, out)
        esp.append(bytes(umem.view[tx[1]:tx[1] + tx[2]]))
    a, _ = gateways(key)
    return a, b, umem, pmeta, out, esp


def measure_in_place(key: bytes, frame: bytes, count: int, repeat: int) -> dict[str, float]:
    a, b, umem, pmeta, out, esp = _in_place_setup(key, frame, count * repeat)
    view, flen = umem.view, len(frame)

    def protect_run(n):
        for _ in range(n):
            addr = umem.lay(0, frame, pmeta)
            a.process_frame(0, view, addr, flen, Kind.PROTECT, 1, ETH_HLEN, out)

    emeta = meta(Kind.ESP, 2)
    it = iter(esp)

    def unprotect_run(n):
        for _ in range(n):
            f = next(it)
            addr = umem.lay(1, f, emeta)
            b.process_frame(1, view, addr, len(f), Kind.ESP, 2, ETH_HLEN, out)

    def lay_run(n):
        for _ in range(n):
            umem.lay(0, frame, pmeta)

    res = {"protect (in place)": best(protect_run, count, repeat),
           "unprotect (in place)": best(unprotect_run, count, repeat),
           "re-lay frame (harness)": best(lay_run, count, repeat)}
    assert not out and not a.drops and not b.drops, (out, a.drops, b.drops)
    return res


def profile_in_place(key: bytes, frame: bytes, count: int) -> None:
    a, b, umem, pmeta, out, esp = _in_place_setup(key, frame, count)
    view, flen = umem.view, len(frame)
    emeta = meta(Kind.ESP, 2)
    print("\n=== cProfile, protect (in place) ===")
    _profile(lambda: [a.process_frame(0, view, umem.lay(0, frame, pmeta), flen, Kind.PROTECT, 1, ETH_HLEN, out)
                      for _ in range(count)])
    print("\n=== cProfile, unprotect (in place) ===")
    _profile(lambda: [b.process_frame(1, view, umem.lay(1, f, emeta), len(f), Kind.ESP, 2, ETH_HLEN, out)
                      for f in esp])


def _profile(fn) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="packets per run (default 20000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure, the best is kept (default 5)")
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--profile", action="store_true", help="print a cProfile of each path")
    ap.add_argument("--json", type=Path, help="write the figures (seconds per packet) here")
    args = ap.parse_args(argv)
    table = {size: measure(size, args.count, args.repeat, args.profile) for size in args.sizes}
    names = list(next(iter(table.values())))
    print(f"\n{'µs per packet':<26}" + "".join(f"{s:>10} B" for s in args.sizes))
    for name in names:
        print(f"{name:<26}" + "".join(f"{table[s][name] * 1e6:>12.2f}" for s in args.sizes))
    print(f"\n{'packets/s, and vs encrypt':<26}" + "".join(f"{s:>10} B" for s in args.sizes))
    for name in names:
        if name.startswith(("protect", "unprotect")):
            cells = "".join(f"{1 / table[s][name]:>9.0f} {table[s]['aesgcm encrypt'] / table[s][name]:>4.0%}"
                            for s in args.sizes)
            print(f"{name:<26}{cells}")
    if args.json:
        args.json.write_text(json.dumps({str(s): v for s, v in table.items()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
