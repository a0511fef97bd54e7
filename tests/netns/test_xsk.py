"""AF_XDP sockets (xdpsec.io.xsk) on veth, copy mode, between namespaces this test creates.

        gen                        gw (this process's sockets)                       cap
   ga 192.0.2.1/24  ====  gwa 192.0.2.2/24  [XDP: IPv4 UDP -> XSKMAP[rx queue]]
                          gwb 198.51.100.1/24                        ====  cb 198.51.100.2/24 (AF_PACKET)

Both veth pairs have 2 rx/tx queues. On veth the receiving queue is the sender's tx queue, picked by flow hash,
so the test binds a socket to each queue of gwa and sends from several source ports; it records which queue
each frame came from. All of gw's sockets share one UMEM: gwa q0 registers it, the others bind with
XDP_SHARED_UMEM and their own fill/completion rings, so a frame received on gwa can leave on gwb in place.

Sockets are created inside a namespace by switching this thread's network namespace with setns() and back;
a socket keeps the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from xdpsec.io.xsk import XDP_PACKET_HEADROOM, Umem, XskSocket

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SO_NO_CHECK = 11  # send UDP with checksum 0 (RFC 768): veth leaves offloaded checksums unfinished in XDP frames
MAGIC = b"XSTXSK"
META_MAGIC = 0x58530000  # xsk_redirect.c writes META_MAGIC | rx queue as XDP metadata
PORT = 9
TIMEOUT = 5.0
PROG = Path(__file__).with_name("xsk_redirect.c")
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(name: str):
    """Run the body in network namespace `name` (this thread only), then come back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/run/netns/{name}")
        yield
    finally:
        try:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
        finally:
            os.close(home)


class Lab:
    """The three namespaces and two veth pairs of the module docstring."""

    def __init__(self) -> None:
        tag = f"xst-xsk-{os.getpid()}-"
        self.gen, self.gw, self.cap = tag + "gen", tag + "gw", tag + "cap"
        self.bpf = None

    def ip(self, ns: str, *args: str) -> str:
        return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout

    def mac(self, ns: str, dev: str) -> bytes:
        out = self.ip(ns, "-br", "link", "show", dev).split()
        return bytes.fromhex(out[2].replace(":", ""))

    def ifindex(self, ns: str, dev: str) -> int:
        return int(self.ip(ns, "-o", "link", "show", dev).split(":", 1)[0])

    def up(self) -> None:
        for ns in (self.gen, self.gw, self.cap):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.ip(ns, "link", "set", "lo", "up")
        queues = ("numtxqueues", "2", "numrxqueues", "2")
        self.ip(self.gen, "link", "add", "ga", *queues, "type", "veth", "peer", "name", "gwa", *queues,
                "netns", self.gw)
        self.ip(self.cap, "link", "add", "cb", *queues, "type", "veth", "peer", "name", "gwb", *queues,
                "netns", self.gw)
        for ns, dev, addr in ((self.gen, "ga", "192.0.2.1/24"), (self.gw, "gwa", "192.0.2.2/24"),
                              (self.gw, "gwb", "198.51.100.1/24"), (self.cap, "cb", "198.51.100.2/24")):
            self.ip(ns, "addr", "add", addr, "dev", dev)
            self.ip(ns, "link", "set", dev, "up")
        self.ip(self.gen, "neigh", "replace", "192.0.2.2", "lladdr", self.mac(self.gw, "gwa").hex(":"),
                "dev", "ga")
        self.gwa, self.gwb = self.ifindex(self.gw, "gwa"), self.ifindex(self.gw, "gwb")
        self.mac_ga, self.mac_gwa = self.mac(self.gen, "ga"), self.mac(self.gw, "gwa")
        self.mac_gwb, self.mac_cb = self.mac(self.gw, "gwb"), self.mac(self.cap, "cb")
        from bcc import BPF  # only here: collecting the tests must not need bcc

        with inside(self.gw):
            self.bpf = BPF(src_file=str(PROG).encode())
            self.bpf.attach_xdp(b"gwa", self.bpf.load_func(b"xsk_redirect", BPF.XDP), 0)
        self.xsks = self.bpf[b"xsks"]

    def down(self) -> None:
        if self.bpf is not None:
            with inside(self.gw):
                self.bpf.remove_xdp(b"gwa", 0)
            self.bpf.cleanup()
        for ns in (self.gen, self.gw, self.cap):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_umem_free_list_is_lifo_and_masks_to_the_frame_base():
    umem = Umem(nframes=4, frame_size=2048)
    try:
        assert [umem.alloc() for _ in range(4)] == [0, 2048, 4096, 6144]
        assert umem.alloc() is None and umem.free_count() == 0
        umem.free(2048 + XDP_PACKET_HEADROOM + 42)  # an rx descriptor's address
        umem.free(6144)
        assert umem.alloc() == 6144 and umem.alloc() == 2048
        umem.buf[4096:4100] = b"meta"
        assert umem.metadata(4100, 4) == b"meta"
    finally:
        umem.close()


@pytest.mark.parametrize(("nframes", "frame_size"), [(4, 1024), (4, 3000), (4, 8192), (0, 2048)])
def test_umem_refuses_bad_geometry(nframes, frame_size):
    with pytest.raises(ValueError):
        Umem(nframes, frame_size)


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, XDP and AF_XDP (CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip`")
    pytest.importorskip("bcc", reason="needs bcc (python3-bpfcc) to load the XDP test program")
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture
def gw(lab):
    """One UMEM; sockets on gwa q0 and q1 (in the XSKMAP) and on gwb q0, all sharing it."""
    umem = Umem(nframes=2048)
    socks: list[XskSocket] = []
    try:
        with inside(lab.gw):
            for q in (0, 1):
                socks.append(XskSocket(umem, lab.gwa, q, ring_size=256))
            socks.append(XskSocket(umem, lab.gwb, 0, ring_size=256))
        rx0, rx1, txb = socks
        for q, s in ((0, rx0), (1, rx1)):
            s.fill()
            lab.xsks[ctypes.c_int(q)] = ctypes.c_int(s.fd)
        yield umem, rx0, rx1, txb
    finally:
        for q in (0, 1):
            with contextlib.suppress(KeyError):
                del lab.xsks[ctypes.c_int(q)]
        for s in socks:
            s.close()
        umem.close()


@pytest.fixture
def udp_senders(lab):
    """Factory of UDP sockets in gen (checksum 0), all closed at teardown."""
    made: list[socket.socket] = []

    def make(n: int) -> list[socket.socket]:
        with inside(lab.gen):
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                made.append(s)
                s.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
                s.bind(("192.0.2.1", 0))
                s.settimeout(TIMEOUT)
        return made[-n:]

    yield make
    for s in made:
        s.close()


def send_numbered(senders: list[socket.socket], count: int) -> dict[bytes, int]:
    """Send `count` datagrams round-robin over `senders`; payload -> sender port."""
    sent = {}
    for i in range(count):
        s = senders[i % len(senders)]
        payload = MAGIC + i.to_bytes(4, "big") + bytes(i % 64)
        s.sendto(payload, ("192.0.2.2", PORT))
        sent[payload] = s.getsockname()[1]
    return sent


def receive(socks: list[XskSocket], count: int) -> list[tuple[XskSocket, int, int]]:
    """Poll `socks` until `count` frames arrived or TIMEOUT; refill as we go."""
    got: list[tuple[XskSocket, int, int]] = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < count and time.monotonic() < deadline:
        for s in socks:
            got += [(s, addr, length) for addr, length in s.recv(64)]
            s.fill()
    return got


def parse(umem: Umem, addr: int, length: int):
    from scapy.layers.inet import IP  # noqa: F401  (binds IPv4 under Ether)
    from scapy.layers.l2 import Ether  # an independent parser

    return Ether(bytes(umem.buf[addr:addr + length]))


@pytest.mark.netns
def test_receive_from_both_queues(lab, gw, udp_senders):
    umem, rx0, rx1, _ = gw
    senders = udp_senders(8)
    sent = send_numbered(senders, 200)
    got = receive([rx0, rx1], len(sent))
    per_queue = {0: 0, 1: 0}
    payloads = {}
    for s, addr, length in got:
        per_queue[s.queue] += 1
        assert (addr - XDP_PACKET_HEADROOM) % umem.frame_size == 0, "data starts after the kernel headroom"
        assert umem.metadata(addr, 4) == struct.pack("=I", META_MAGIC | s.queue), "XDP metadata lost"
        pkt = parse(umem, addr, length)
        assert (pkt.src, pkt.dst) == (lab.mac_ga.hex(":"), lab.mac_gwa.hex(":"))
        assert (pkt["IP"].src, pkt["IP"].dst, pkt["UDP"].dport) == ("192.0.2.1", "192.0.2.2", PORT)
        payloads[bytes(pkt["UDP"].payload)] = pkt["UDP"].sport
        umem.free(addr)
    print(f"frames per gwa rx queue: {per_queue}")
    assert payloads == sent  # every datagram once, intact, from the port that sent it
    assert len(got) == len(sent)
    for s in (rx0, rx1):
        stats = s.stats()
        assert stats["rx_dropped"] == stats["rx_invalid_descs"] == stats["rx_ring_full"] == 0, stats


@pytest.mark.netns
def test_reflect_back_on_the_receiving_socket(lab, gw, udp_senders):
    umem, rx0, rx1, _ = gw
    senders = udp_senders(4)
    free_before = umem.free_count()
    sent = send_numbered(senders, 100)
    got = receive([rx0, rx1], len(sent))
    assert len(got) == len(sent)
    for s, addr, length in got:
        swap_in_place(umem.buf, addr)
        assert s.send([(addr, length)]) == 1
    echoed = {}
    for sender in senders:
        for _ in range(len(sent) // len(senders)):
            data, (src, sport) = sender.recvfrom(2048)
            echoed[data] = sender.getsockname()[1]
            assert (src, sport) == ("192.0.2.2", PORT)
    assert echoed == sent
    reap([rx0, rx1], umem, free_before)


@pytest.mark.netns
def test_receive_on_one_interface_transmit_on_another(lab, gw, udp_senders):
    """The design's central move: rx on gwa's socket, rewrite in place, tx on gwb's socket of the same UMEM."""
    umem, rx0, rx1, txb = gw
    with inside(lab.cap):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        cap.bind(("cb", 0))
        cap.settimeout(TIMEOUT)
    senders = udp_senders(4)
    free_before = umem.free_count()
    sent = send_numbered(senders, 100)
    got = receive([rx0, rx1], len(sent))
    assert len(got) == len(sent)
    expected = set()
    for _s, addr, length in got:
        umem.buf[addr:addr + 12] = lab.mac_cb + lab.mac_gwb  # new Ethernet destination and source
        expected.add(bytes(umem.buf[addr:addr + length]))
    descs = [(addr, length) for _s, addr, length in got]
    queued = 0
    deadline = time.monotonic() + TIMEOUT
    while queued < len(descs) and time.monotonic() < deadline:
        queued += txb.send(descs[queued:])
        txb.complete()
    assert queued == len(descs)
    captured = set()
    try:
        while len(captured) < len(expected):
            frame = cap.recv(4096)
            if MAGIC in frame:
                captured.add(frame)
    except TimeoutError:
        pass
    finally:
        cap.close()
    assert captured == expected  # arrived in the third namespace, byte for byte
    reap([txb], umem, free_before)
    assert txb.stats()["tx_invalid_descs"] == 0


@pytest.mark.netns
def test_transmit_a_frame_built_in_the_headroom(lab, gw, udp_senders):
    """A frame written at the very start of a fresh frame (inside the kernel's rx headroom) is sendable."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    umem, rx0, _, _ = gw
    (receiver,) = udp_senders(1)
    frame = bytes(Ether(src=lab.mac_gwa, dst=lab.mac_ga) / IP(src="192.0.2.2", dst="192.0.2.1")
                  / UDP(sport=PORT, dport=receiver.getsockname()[1]) / (MAGIC + b"built"))
    free_before = umem.free_count()
    addr = umem.alloc()
    umem.buf[addr:addr + len(frame)] = frame
    assert rx0.send([(addr, len(frame))]) == 1
    assert receiver.recvfrom(2048) == (MAGIC + b"built", ("192.0.2.2", PORT))
    reap([rx0], umem, free_before)


@pytest.mark.netns
def test_descriptor_crossing_a_frame_is_invalid_and_returned(gw):
    """Counted in tx_invalid_descs, not sent, and (kernel 6.18) its address still comes back as a completion."""
    umem, _, _, txb = gw
    free_before = umem.free_count()
    addr = umem.alloc()
    before = txb.stats()["tx_invalid_descs"]
    assert txb.send([(addr + umem.frame_size - 10, 60)]) == 1
    reap([txb], umem, free_before)
    assert txb.stats()["tx_invalid_descs"] == before + 1


def swap_in_place(buf: memoryview, addr: int) -> None:
    """Mirror an Ethernet/IPv4/UDP frame: swapping fields leaves both checksums valid (one's complement sums)."""
    eth, ip, udp = addr, addr + 14, addr + 34
    buf[eth:eth + 12] = bytes(buf[eth + 6:eth + 12]) + bytes(buf[eth:eth + 6])
    buf[ip + 12:ip + 20] = bytes(buf[ip + 16:ip + 20]) + bytes(buf[ip + 12:ip + 16])
    buf[udp:udp + 4] = bytes(buf[udp + 2:udp + 4]) + bytes(buf[udp:udp + 2])


def reap(socks: list[XskSocket], umem: Umem, want_free: int) -> None:
    """Collect completions until every transmitted frame is back on the free list."""
    deadline = time.monotonic() + TIMEOUT
    while umem.free_count() < want_free and time.monotonic() < deadline:
        for s in socks:
            s.send([])
            s.complete()
    assert umem.free_count() == want_free
