"""Two packet cores back to back, in memory: the forwarding half of the data path without BPF or AF_XDP.

gwA's core protects a frame from hostA, gwB's core unprotects it and forwards it to hostB, exactly as the
workers do between AF_XDP rings. Checks what a router must get right: TTL, next hops (held until resolved),
path MTU (ICMP errors, red-side fragmentation), replay and tampering as counted drops.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, UDP, Ether, ICMPv6PacketTooBig, IPv6, Raw, defragment

from xdpsec.abi import DropReason, Kind
from xdpsec.dataplane import core as coremod
from xdpsec.dataplane.core import HOLD_PER_DST, PacketCore, Port, Route
from xdpsec.sa import Direction, Encr, Mode, Protocol, SAParams, TrafficSelector, Transform, UdpEncap

A_LAN, A_WAN, B_WAN, B_LAN = (bytes.fromhex(m) for m in ("02000000000a", "02000000000b", "02000000000c",
                                                         "02000000000d"))
HOST_A, HOST_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
GW_A, GW_B = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
NET_A, NET_B = ipaddress.ip_network("198.51.100.0/25"), ipaddress.ip_network("198.51.100.128/25")
NET_A6, NET_B6 = ipaddress.ip_network("2001:db8:a::/64"), ipaddress.ip_network("2001:db8:b::/64")
GCM128 = Transform(Encr.AES_GCM_16, 128)


def sa(direction: Direction, local, remote, local_ts, remote_ts, key: bytes, spi: int) -> SAParams:
    return SAParams(spi=spi, protocol=Protocol.ESP, direction=direction, mode=Mode.TUNNEL, transform=GCM128,
                    local=local, remote=remote, enc_key=key, local_ts=tuple(map(TrafficSelector, local_ts)),
                    remote_ts=tuple(map(TrafficSelector, remote_ts)), replay_window=64)


@pytest.fixture
def gateways():
    k_ab, k_ba = os.urandom(20), os.urandom(20)
    a = PacketCore(0, {0: Port(0, "lan0", A_LAN, 1500, (ipaddress.ip_address("198.51.100.1"),
                                                      ipaddress.ip_address("2001:db8:a::1"))),
                       1: Port(1, "wan0", A_WAN, 1500, (GW_A,))})
    b = PacketCore(0, {0: Port(0, "lan0", B_LAN, 1500, ()), 1: Port(1, "wan0", B_WAN, 1500, (GW_B,))})
    a.add_outbound(1, sa(Direction.OUT, GW_A, GW_B, [NET_A, NET_A6], [NET_B, NET_B6], k_ab, 0x1001))
    a.add_inbound(2, sa(Direction.IN, GW_A, GW_B, [NET_A, NET_A6], [NET_B, NET_B6], k_ba, 0x2001))
    b.add_outbound(1, sa(Direction.OUT, GW_B, GW_A, [NET_B, NET_B6], [NET_A, NET_A6], k_ba, 0x2001))
    b.add_inbound(2, sa(Direction.IN, GW_B, GW_A, [NET_B, NET_B6], [NET_A, NET_A6], k_ab, 0x1001))
    a.set_route(GW_B.packed, Route.make(1, A_WAN, B_WAN, 1500))
    b.set_route(GW_A.packed, Route.make(1, B_WAN, A_WAN, 1500))
    return a, b


def from_host_a(pkt) -> bytes:
    return bytes(Ether(src=HOST_A, dst=A_LAN) / pkt)


def through(a: PacketCore, b: PacketCore, frame: bytes) -> list[tuple[int, bytes]]:
    """hostA's frame through gwA (protect) and gwB (unprotect): what gwB sends toward hostB."""
    out = a.process(0, frame, Kind.PROTECT, 1, 14)
    assert [slot for slot, _ in out] == [1] * len(out)
    result = []
    for _slot, esp_frame in out:
        result += b.process(1, esp_frame, Kind.ESP, 2, 14)
    return result


def test_first_packet_waits_for_its_next_hop_then_leaves(gateways):
    a, b = gateways
    frame = from_host_a(IP(src="198.51.100.10", dst="198.51.100.130", ttl=64) / ICMP() / Raw(b"x" * 56))
    assert through(a, b, frame) == []  # hostB's MAC not known yet: held, and asked for
    assert b.take_requests() == [ipaddress.ip_address("198.51.100.130").packed]
    b.set_route(ipaddress.ip_address("198.51.100.130").packed, Route.make(0, B_LAN, HOST_B, 1500))
    (slot, out), = b.take_ready()
    assert slot == 0
    eth = Ether(out)
    assert eth.dst == "02:00:00:00:00:02" and eth.src == "02:00:00:00:00:0d"
    assert eth[IP].ttl == 62  # one hop at each gateway
    assert bytes(eth[ICMP]) == bytes(Ether(frame)[ICMP])
    assert not b.drops


def test_a_burst_to_an_unresolved_host_is_held_up_to_its_bound_then_leaves_in_order(gateways):
    a, b = gateways
    dst = ipaddress.ip_address("198.51.100.130")
    frames = [from_host_a(IP(src="198.51.100.10", dst=str(dst)) / UDP(sport=1, dport=2) / Raw(b"%04d" % i))
              for i in range(HOLD_PER_DST + 3)]
    for frame in frames:
        assert through(a, b, frame) == []
    assert b.drops[DropReason.NO_NEIGHBOR] == 3  # beyond HOLD_PER_DST
    b.set_route(dst.packed, Route.make(0, B_LAN, HOST_B, 1500))
    released = b.take_ready()
    assert [bytes(Ether(out)[Raw]) for _slot, out in released] == [b"%04d" % i for i in range(HOLD_PER_DST)]
    assert b._held_bytes == 0


def test_held_packets_are_bounded_in_bytes_across_next_hops(gateways, monkeypatch):
    a, b = gateways
    monkeypatch.setattr(coremod, "HOLD_BYTES", 3100)  # three inner packets of 1020 bytes
    big = Raw(b"x" * 1000)
    for i in range(4):  # four hosts, one ~1 kB packet each: the fourth does not fit
        assert through(a, b, from_host_a(IP(src="198.51.100.10", dst=f"198.51.100.{130 + i}") / big)) == []
    assert b.drops[DropReason.NO_NEIGHBOR] == 1
    b.unresolved(ipaddress.ip_address("198.51.100.130").packed)  # dropped, and its bytes freed
    assert through(a, b, from_host_a(IP(src="198.51.100.10", dst="198.51.100.140") / big)) == []
    assert b.drops[DropReason.NO_NEIGHBOR] == 2  # the unresolved host's packet
    assert b._held_bytes == 3 * 1020


@pytest.mark.parametrize("inner", [
    IP(src="198.51.100.10", dst="198.51.100.130") / UDP(sport=1, dport=2) / Raw(b"v4"),
    IPv6(src="2001:db8:a::10", dst="2001:db8:b::10") / UDP(sport=1, dport=2) / Raw(b"v6"),
])
def test_tunnel_round_trip_ipv4_and_ipv6(gateways, inner):
    a, b = gateways
    dst = ipaddress.ip_address(inner.dst).packed
    b.set_route(dst, Route.make(0, B_LAN, HOST_B, 1500))
    (slot, out), = through(a, b, from_host_a(inner))
    got = Ether(out).payload
    assert bytes(got[UDP]) == bytes(inner[UDP])
    assert a.sa_stats[1].packets == 1 and b.sa_stats[2].packets == 1


def test_replay_and_tamper_are_counted_drops(gateways):
    a, b = gateways
    b.set_route(ipaddress.ip_address("198.51.100.130").packed, Route.make(0, B_LAN, HOST_B, 1500))
    (_, esp_frame), = a.process(0, from_host_a(IP(src="198.51.100.10", dst="198.51.100.130") / ICMP()),
                                Kind.PROTECT, 1, 14)
    assert len(b.process(1, esp_frame, Kind.ESP, 2, 14)) == 1
    assert b.process(1, esp_frame, Kind.ESP, 2, 14) == []
    (_, esp2), = a.process(0, from_host_a(IP(src="198.51.100.10", dst="198.51.100.130") / ICMP()),
                           Kind.PROTECT, 1, 14)
    bad = bytearray(esp2)
    bad[-20] ^= 1
    assert b.process(1, bytes(bad), Kind.ESP, 2, 14) == []
    assert b.drops[DropReason.REPLAY] == 1 and b.drops[DropReason.AUTH_FAILED] == 1
    assert b.sa_stats[2].drops[DropReason.REPLAY] == 1


def test_inner_source_outside_the_selectors_is_dropped(gateways):
    a, b = gateways
    # gwA's policy would never send this, but a peer holding the key could: RFC 4301 §5.2 says drop it.
    frame = from_host_a(IP(src="203.0.113.9", dst="198.51.100.130") / ICMP())
    (_, esp_frame), = a.process(0, frame, Kind.PROTECT, 1, 14)
    assert b.process(1, esp_frame, Kind.ESP, 2, 14) == []
    assert b.drops[DropReason.SELECTOR_MISMATCH] == 1


def test_df_packet_too_big_gets_icmp_with_a_usable_mtu(gateways):
    a, _b = gateways
    frame = from_host_a(IP(src="198.51.100.10", dst="198.51.100.130", flags="DF") / UDP() / Raw(b"x" * 1472))
    out = a.process(0, frame, Kind.PROTECT, 1, 14)
    assert a.drops[DropReason.TOO_BIG] == 1
    (slot, err), = out
    assert slot == 0  # back out of the port it came in on, to the sender's MAC
    eth = Ether(err)
    assert eth.dst == "02:00:00:00:00:01" and eth[IP].dst == "198.51.100.10" and eth[IP].src == "198.51.100.1"
    icmp = eth[ICMP]
    assert (icmp.type, icmp.code) == (3, 4)
    # A packet of the advertised size must then fit after encapsulation.
    fitting = from_host_a(IP(src="198.51.100.10", dst="198.51.100.130", flags="DF") / UDP()
                          / Raw(b"x" * (icmp.nexthopmtu - 28)))
    (slot2, esp), = a.process(0, fitting, Kind.PROTECT, 1, 14)
    assert slot2 == 1 and len(esp) - 14 <= 1500


def test_ipv6_too_big_gets_packet_too_big(gateways):
    a, _b = gateways
    frame = from_host_a(IPv6(src="2001:db8:a::10", dst="2001:db8:b::10") / UDP() / Raw(b"x" * 1452))
    (slot, err), = a.process(0, frame, Kind.PROTECT, 1, 14)
    ptb = Ether(err)[ICMPv6PacketTooBig]
    assert 1280 <= ptb.mtu < 1500 and Ether(err)[IPv6].dst == "2001:db8:a::10"


def test_non_df_packet_is_fragmented_before_encryption(gateways):
    a, b = gateways
    b.set_route(ipaddress.ip_address("198.51.100.130").packed, Route.make(0, B_LAN, HOST_B, 1500))
    inner = IP(src="198.51.100.10", dst="198.51.100.130", id=77) / UDP(sport=5, dport=6) / Raw(os.urandom(1472))
    out = a.process(0, from_host_a(inner), Kind.PROTECT, 1, 14)
    assert len(out) >= 2 and all(len(f) - 14 <= 1500 for _, f in out)
    delivered = [Ether(f)[IP] for _, esp in out for _, f in b.process(1, esp, Kind.ESP, 2, 14)]
    whole = defragment(delivered)
    assert len(whole) == 1 and bytes(whole[0][UDP]) == bytes(inner[UDP])


def test_ttl_expiring_at_the_gateway_is_answered(gateways):
    a, _b = gateways
    frame = from_host_a(IP(src="198.51.100.10", dst="198.51.100.130", ttl=1) / ICMP())
    (slot, err), = a.process(0, frame, Kind.PROTECT, 1, 14)
    assert a.drops[DropReason.TTL_EXCEEDED] == 1
    assert Ether(err)[ICMP].type == 11 and slot == 0


def test_garbage_never_raises(gateways):
    a, b = gateways
    rnd = os.urandom
    for n in range(300):
        junk = rnd(n % 120)
        for core, kind in ((a, Kind.PROTECT), (b, Kind.ESP), (b, Kind.AH), (a, 99)):
            assert isinstance(core.process(0, junk, kind, 1 + (n % 3), n % 20), list)
    assert sum(a.drops.values()) + sum(b.drops.values()) == 1200


def test_update_keeps_sequence_numbers_and_replay_window(gateways):
    """A peer that moved (NAT remapping) gets its SAs updated in place: numbers continue, old ones stay refused."""
    import dataclasses

    from scapy.all import ESP

    a, b = gateways
    b.set_route(ipaddress.ip_address("198.51.100.130").packed, Route.make(0, B_LAN, HOST_B, 1500))
    frame = from_host_a(IP(src="198.51.100.10", dst="198.51.100.130") / ICMP())
    sent = [a.process(0, frame, Kind.PROTECT, 1, 14)[0][1] for _ in range(3)]
    for esp in sent:
        assert len(b.process(1, esp, Kind.ESP, 2, 14)) == 1
    moved = ipaddress.ip_address("192.0.2.99")
    a.set_route(moved.packed, Route.make(1, A_WAN, B_WAN, 1500))
    a.update(1, dataclasses.replace(a.out[1].params, remote=moved))
    b.update(2, dataclasses.replace(b.inb[2].params, remote=moved))
    (_, after), = a.process(0, frame, Kind.PROTECT, 1, 14)
    assert Ether(after)[IP].dst == "192.0.2.99" and Ether(after)[ESP].seq == 4  # 1-3 are never used again
    assert b.process(1, sent[1], Kind.ESP, 2, 14) == [] and b.drops[DropReason.REPLAY] == 1


# --- the in-place path (xdpsec/dataplane/inplace.py) against the general path ---------------------------------
# The general path (`process`, on bytes) is the reference: for every packet the in-place path takes, what it
# sends must be byte for byte what the general path sends, with the same counters; for every packet it declines
# it must have changed nothing. Two identical gateway pairs (same keys, same state) run side by side.

FRAME = 2048
HEADROOM = 256
CHACHA = Transform(Encr.CHACHA20_POLY1305, 256)
GW_A6, GW_B6 = ipaddress.ip_address("2001:db8:ff::1"), ipaddress.ip_address("2001:db8:ff::2")


def in_place(core: PacketCore, slot: int, frame: bytes, kind: int, sa_index: int):
    """Run `frame` through process_frame as the worker does, from a UMEM-like buffer; (sent frames, took it)."""
    umem = bytearray(2 * FRAME)
    addr = FRAME + HEADROOM
    umem[addr:addr + len(frame)] = frame
    copies: list = []
    tx = core.process_frame(slot, memoryview(umem), addr, len(frame), kind, sa_index, 14, copies)
    if tx is None:
        return copies, False
    eslot, start, n = tx
    assert FRAME <= start and start + n <= 2 * FRAME  # inside the frame it came in
    return [(eslot, bytes(umem[start:start + n]))] + copies, True


def pair(outer: int, encap: bool, esn: bool, transform: Transform, key_ab: bytes, key_ba: bytes):
    """gwA and gwB as in `gateways`, with a choice of outer family, ESP-in-UDP, ESN and cipher."""
    gw_a, gw_b = (GW_A, GW_B) if outer == 4 else (GW_A6, GW_B6)
    t = Transform(transform.encr, transform.encr_key_bits, esn=esn)

    def sa_(direction, local, remote, lts, rts, key, spi):
        return SAParams(spi=spi, protocol=Protocol.ESP, direction=direction, mode=Mode.TUNNEL, transform=t,
                        local=local, remote=remote, enc_key=key, local_ts=tuple(map(TrafficSelector, lts)),
                        remote_ts=tuple(map(TrafficSelector, rts)), replay_window=64,
                        encap=UdpEncap() if encap else None)

    a = PacketCore(0, {0: Port(0, "lan0", A_LAN, 1500, (ipaddress.ip_address("198.51.100.1"),)),
                       1: Port(1, "wan0", A_WAN, 1500, (gw_a,))})
    b = PacketCore(0, {0: Port(0, "lan0", B_LAN, 1500, ()), 1: Port(1, "wan0", B_WAN, 1500, (gw_b,))})
    a.add_outbound(1, sa_(Direction.OUT, gw_a, gw_b, [NET_A, NET_A6], [NET_B, NET_B6], key_ab, 0x1001))
    b.add_inbound(2, sa_(Direction.IN, gw_b, gw_a, [NET_B, NET_B6], [NET_A, NET_A6], key_ab, 0x1001))
    a.set_route(gw_b.packed, Route.make(1, A_WAN, B_WAN, 1500))
    for dst in ("198.51.100.130", "2001:db8:b::10"):
        b.set_route(ipaddress.ip_address(dst).packed, Route.make(0, B_LAN, HOST_B, 1500))
    return a, b


def state(core: PacketCore) -> tuple:
    return (core.rx, core.tx, dict(core.drops), core.dummies,
            {i: (s.packets, s.bytes, dict(s.drops or {})) for i, s in core.sa_stats.items()},
            {i: (sa.seq, sa.packets, sa.bytes) for i, sa in core.out.items()},
            {i: (sa.window.top, sa.window._bits, sa.packets, sa.bytes) for i, sa in core.inb.items()})


@settings(max_examples=150, deadline=None)
@given(outer=st.sampled_from([4, 6]), encap=st.booleans(), esn=st.booleans(),
       transform=st.sampled_from([GCM128, CHACHA]), inner6=st.booleans(), tos=st.integers(0, 255),
       df=st.booleans(), size=st.integers(0, 1400), ttl=st.integers(1, 255))
def test_in_place_sends_exactly_what_the_general_path_sends(outer, encap, esn, transform, inner6, tos, df, size,
                                                            ttl):
    keys = os.urandom(transform.enc_key_len), os.urandom(transform.enc_key_len)
    ref_a, ref_b = pair(outer, encap, esn, transform, *keys)
    fast_a, fast_b = pair(outer, encap, esn, transform, *keys)
    payload = Raw(os.urandom(size))
    if inner6:
        inner = IPv6(src="2001:db8:a::10", dst="2001:db8:b::10", tc=tos, hlim=ttl) / UDP() / payload
    else:
        inner = IP(src="198.51.100.10", dst="198.51.100.130", tos=tos, ttl=ttl, flags="DF" if df else 0) \
            / UDP() / payload
    frame = from_host_a(inner)
    want = ref_a.process(0, frame, Kind.PROTECT, 1, 14)
    got, took = in_place(fast_a, 0, frame, Kind.PROTECT, 1)
    assert got == want and state(fast_a) == state(ref_a)
    # Fits, TTL left, route known, and not IPv6 ESP-in-UDP (needs a UDP checksum): the fast path's own.
    # RFC 4303 §2: outer IP, UDP (RFC 3948), SPI + sequence, 8-byte IV, payload + trailer to 4 bytes, 16-byte ICV.
    outer_len = (20 if outer == 4 else 40) + (8 if encap else 0) + 16 + -(-(len(inner) + 2) // 4) * 4 + 16
    fits = outer_len <= 1500
    assert took == (fits and ttl > 1 and not (outer == 6 and encap))
    kind = Kind.ESP_UDP if encap else Kind.ESP
    for slot, esp in want:
        if slot != 1:
            continue  # an ICMP error back to hostA
        want_in = ref_b.process(1, esp, kind, 2, 14)
        got_in, _took = in_place(fast_b, 1, esp, kind, 2)
        assert got_in == want_in and state(fast_b) == state(ref_b)


def test_in_place_replay_tamper_and_selectors_are_counted_drops(gateways):
    a, b = gateways
    b.set_route(ipaddress.ip_address("198.51.100.130").packed, Route.make(0, B_LAN, HOST_B, 1500))
    frame = from_host_a(IP(src="198.51.100.10", dst="198.51.100.130") / ICMP())
    (_, first), = in_place(a, 0, frame, Kind.PROTECT, 1)[0]
    (_, second), = in_place(a, 0, frame, Kind.PROTECT, 1)[0]
    (slot, plain), = in_place(b, 1, first, Kind.ESP, 2)[0]
    assert slot == 0 and Ether(plain)[IP].ttl == 62 and bytes(Ether(plain)[ICMP]) == bytes(Ether(frame)[ICMP])
    assert in_place(b, 1, first, Kind.ESP, 2) == ([], False)  # replayed
    assert in_place(b, 1, first, Kind.ESP, 2) == ([], False)
    tampered = bytearray(second)
    tampered[-20] ^= 1
    assert in_place(b, 1, bytes(tampered), Kind.ESP, 2)[0] == []
    # gwA's policy would never send this, but a peer holding the key could (RFC 4301 §5.2).
    (_, stray), = in_place(a, 0, from_host_a(IP(src="203.0.113.9", dst="198.51.100.130") / ICMP()),
                           Kind.PROTECT, 1)[0]
    assert in_place(b, 1, stray, Kind.ESP, 2)[0] == []
    assert b.drops == {DropReason.REPLAY: 2, DropReason.AUTH_FAILED: 1, DropReason.SELECTOR_MISMATCH: 1}
    assert b.sa_stats[2].drops == b.drops and b.sa_stats[2].packets == 1
