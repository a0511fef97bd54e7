"""The classifier attached to a veth, steering a real frame into a real AF_XDP socket.

      module's private netns (conftest.private_netns)
   ┌─────────────────────────────────────────────────────────┐
   │  AF_PACKET ─► xst-b-<pid>-b ══ veth ══ xst-b-<pid>-a ◄─ XDP classifier (native)
   │                                           └─ rx queue 0 ─► AF_XDP socket (slot 1)
   └─────────────────────────────────────────────────────────┘

One ESP frame for a known SPI is sent from the peer end; it must arrive on the socket's rx ring with the
classifier's struct xs_meta in the 24 bytes before it (copy mode copies the metadata too). Bounded: one frame,
at most one second of polling.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether

from xdpsec.abi import XS_META_MAGIC, Kind, XsMeta
from xdpsec.io.bpf import XdpAction

pytestmark = pytest.mark.bpf

TAG = f"xst-b-{os.getpid()}"
SLOT = 1
SPI = 0x2222
POLL_SECONDS = 1.0


@pytest.fixture
def veth(clf):
    a, b = f"{TAG}-a", f"{TAG}-b"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for name in (a, b):
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield a, b, socket.if_nametoindex(a)
    finally:
        subprocess.run(["ip", "link", "del", a], check=False)


@pytest.fixture
def xsk_on_veth(clf, veth):
    from xdpsec.io.xsk import Umem, XskSocket

    a, b, ifindex = veth
    umem = Umem(nframes=64)
    xsk = XskSocket(umem, ifindex, 0, ring_size=64)
    clf.set_iface(ifindex, SLOT)
    clf.set_xsk(SLOT, 0, xsk.fd)
    clf.attach(a, mode="native")
    try:
        yield xsk, umem, b, ifindex
    finally:
        clf.detach(a)
        clf.del_iface(ifindex)
        xsk.close()
        umem.close()


def esp_frame() -> bytes:
    return bytes(Ether(src="02:00:00:00:00:0b", dst="02:00:00:00:00:0a")
                 / IP(src="198.51.100.7", dst="203.0.113.1") / ESP(spi=SPI, seq=1, data=b"\x5a" * 32))


def test_test_run_on_veth_queue_redirects(clf, run, xsk_on_veth):
    _xsk, _umem, _peer, ifindex = xsk_on_veth
    clf.set_sa_in(SPI, 50, sa_index=6, owner=1, encap=False)
    out = run(esp_frame(), ifindex=ifindex, rx_queue=0)
    assert (out.verdict, out.drop) == (XdpAction.REDIRECT, None)
    assert (out.meta.kind, out.meta.ifslot, out.meta.sa_index) == (Kind.ESP, SLOT, 6)


def test_frame_from_peer_lands_on_socket_with_meta(clf, xsk_on_veth):
    xsk, umem, peer, _ifindex = xsk_on_veth
    clf.set_sa_in(SPI, 50, sa_index=6, owner=1, encap=False)
    xsk.fill()
    frame = esp_frame()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
        tx.bind((peer, 0))
        tx.send(frame)

    received = []
    deadline = time.monotonic() + POLL_SECONDS
    while not received and time.monotonic() < deadline:
        received = xsk.recv(8)
        time.sleep(0.01)
    assert len(received) == 1, f"nothing on the AF_XDP socket; classifier stats {clf.stats()}"
    addr, length = received[0]
    assert bytes(umem.buf[addr:addr + length]) == frame
    meta = XsMeta.from_buffer_copy(umem.metadata(addr, len(bytes(XsMeta()))))
    assert (meta.magic, meta.kind, meta.sa_index, meta.owner, meta.ifslot) == (XS_META_MAGIC, Kind.ESP, 6, 1, SLOT)
    assert (meta.l3_off, meta.l4_off) == (14, 34)
    umem.free(addr)
