"""NAT traversal (RFC 7296 §2.23, RFC 3948): detection, floating to port 4500, ESP-in-UDP children."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP

from tests.exchange.conftest import A_ADDR, B_ADDR, NAT_PUBLIC, child_up, conn_a, up
from tests.exchange.test_ike_auth import assert_carries, assert_mirror
from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.ike.tasks.ike_init import nat_hash
from xdpsec.sa import UdpEncap


def test_nat_hash_is_sha1_of_spis_address_port():
    # §2.23: SHA-1(SPIi | SPIr | IP | port), computed independently here with hashlib's SHA-1 of the concatenation.
    import hashlib
    want = hashlib.sha1(bytes.fromhex("0102030405060708" "0000000000000000" "c0000201" "01f4")).digest()
    assert nat_hash(0x0102030405060708, 0, A_ADDR, 500) == want


def test_behind_a_nat(make_link):
    link = make_link(nat=True)
    # IKE_SA_INIT  HDR, SAi1, KEi, Ni, N(NAT_DETECTION_SOURCE_IP(192.0.2.1:500)), N(NAT_DETECTION_DESTINATION_IP) -->
    #              (the NAT rewrites the source to 203.0.113.1:40000; B's hash differs: A is behind a NAT)
    #              <--  HDR, SAr1, KEr, Nr, N(NAT_DETECTION_*)
    # IKE_AUTH     from port 4500 on both ends (§2.23), B follows A's new mapping
    up(link)
    a_sa, b_sa = link.a.ike_sas()[0], link.b.ike_sas()[0]
    assert a_sa["nat"] == {"local": True, "remote": False}
    assert b_sa["nat"] == {"local": False, "remote": True}
    assert a_sa["local"] == "192.0.2.1[4500]" and a_sa["remote"] == "192.0.2.2[4500]"
    assert b_sa["remote"] == "203.0.113.1[40001]"   # the NAT's second mapping: A's port 4500
    a, b = child_up(link, "a"), child_up(link, "b")
    assert_mirror(a, b)
    assert a.out.encap == UdpEncap(4500, 4500) and b.out.encap == UdpEncap(4500, 40001)
    assert b.out.remote == NAT_PUBLIC
    # A -> B: ESP in UDP, through the NAT (source rewritten), into B's inbound SA.
    inner = bytes(IP(src="198.51.100.1", dst="198.51.100.129") / UDP(sport=7, dport=7) / b"x")
    outer = IP(protect(OutboundSA(a.out), inner))
    assert outer[UDP].dport == 4500
    outer.src, outer[UDP].sport = str(NAT_PUBLIC), 40001
    del outer.chksum, outer[UDP].chksum
    assert unprotect(InboundSA(b.inb), bytes(outer)) == inner
    # B -> A: to the mapping, translated back by the NAT.
    inner = bytes(IP(src="198.51.100.129", dst="198.51.100.1") / UDP(sport=7, dport=7) / b"y")
    outer = IP(protect(OutboundSA(b.out), inner))
    assert (outer.dst, outer[UDP].dport) == (str(NAT_PUBLIC), 40001)
    outer.dst, outer[UDP].dport = str(A_ADDR), 4500
    del outer.chksum, outer[UDP].chksum
    assert unprotect(InboundSA(a.inb), bytes(outer)) == inner


def test_forced_encapsulation_without_a_nat(make_link):
    link = make_link(conn_a(encap=True))
    # A fakes its NAT_DETECTION_SOURCE_IP (as strongSwan does with encap=yes), so B sees a NAT too.
    up(link)
    assert link.a.ike_sas()[0]["nat"]["local"] and link.b.ike_sas()[0]["nat"]["remote"]
    a, b = child_up(link, "a"), child_up(link, "b")
    assert a.out.encap == b.out.encap == UdpEncap(4500, 4500)
    assert (a.out.remote, b.out.remote) == (B_ADDR, A_ADDR)
    assert_carries(a.out, b.inb, "198.51.100.1", "198.51.100.129")
    assert_carries(b.out, a.inb, "198.51.100.129", "198.51.100.1")


def test_peer_claiming_a_nat_makes_us_float(make_link):
    """The strongSwan peer in the interop tests fakes a NAT: as responder we must float with it."""
    link = make_link(conn_a(encap=True))
    up(link)
    dgrams_port = link.b.ike_sas()[0]["local"]
    assert dgrams_port == "192.0.2.2[4500]"
    assert child_up(link, "b").inb.encap is not None


def test_no_nat_stays_on_500(make_link):
    link = make_link()
    up(link)
    assert link.a.ike_sas()[0]["local"].endswith("[500]") and child_up(link, "a").out.encap is None


def test_nat_keepalives_from_the_translated_side_only(make_link):
    """RFC 3948 §2.3: the side behind the NAT sends a one-octet 0xFF on its 4500 flow when it has sent nothing
    for 20 s, so that the NAT keeps the mapping the ESP-in-UDP traffic shares; the other side sends none."""
    from xdpsec.ike.sa import NAT_KEEPALIVE, NAT_KEEPALIVE_INTERVAL

    link = make_link(nat=True)
    up(link)
    link.advance(NAT_KEEPALIVE_INTERVAL - 0.5)
    assert [dg for dg in link.flight() if dg.data == NAT_KEEPALIVE] == []
    link.advance(1.0)
    keepalives = [dg for dg in link.flight() if dg.data == NAT_KEEPALIVE]
    assert [(dg.sender, dg.src[1], dg.dst[1]) for dg in keepalives] == [("a", 4500, 4500)]
    link.advance(NAT_KEEPALIVE_INTERVAL)
    assert [dg.sender for dg in link.flight() if dg.data == NAT_KEEPALIVE] == ["a"]  # and again, 20 s later


def test_child_sas_follow_a_new_nat_mapping(make_link):
    """§2.23: the NAT in front of A forgets its mapping and gives A's next message a new port. B follows for IKE
    and re-reports the child with the new port, same SPIs and keys, so its ESP-in-UDP goes where A now is."""
    import itertools

    from tests.exchange.conftest import conn_a
    from xdpsec.ike.events import ChildUp

    link = make_link(conn_a(dpd_delay=30.0), nat=True)
    up(link)
    first = child_up(link, "b")
    assert first.out.encap == UdpEncap(4500, 40001)
    link._nat_ports.clear()  # the NAT rebooted (or timed out): new mappings from here on
    link._ports = itertools.count(50000)
    # A's liveness check after 30 s of silence (an INFORMATIONAL request) now comes from a new port.
    link.advance(30.0)
    link.settle()
    ups = [e for e in link.events["b"] if isinstance(e, ChildUp)]
    assert len(ups) == 2, ups
    moved = ups[-1]
    assert moved.out.encap == UdpEncap(4500, 50000) and moved.out.remote == NAT_PUBLIC
    assert (moved.out.spi, moved.out.enc_key, moved.inb.spi) == (first.out.spi, first.out.enc_key, first.inb.spi)
    assert link.b.ike_sas()[0]["remote"] == "203.0.113.1[50000]"
    # A is not behind a new address as far as it knows: nothing changes on its side.
    assert len([e for e in link.events["a"] if isinstance(e, ChildUp)]) == 1
