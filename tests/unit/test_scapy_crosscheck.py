"""xdpsec.esp.mode against scapy's SecurityAssociation (scapy.layers.ipsec), an independent implementation.

Both directions for every combination: xdpsec `protect` -> scapy `decrypt`, and scapy `encrypt` -> xdpsec
`unprotect`, each on random inner packets from a seeded RNG. IVs differ (scapy draws random IVs, xdpsec uses
the sequence number for AEAD), so decrypted packets are compared, never ciphertext.

scapy quirks met on the way (scapy 2.x, scapy/layers/ipsec.py):
* ESP-in-UDP over IPv6: `_encrypt_esp` sets the UDP checksum to 0 whatever the family (`nat_t_header.chksum = 0`),
  which RFC 8200 §8.1 forbids for IPv6; xdpsec computes it (checked below) and does not verify it inbound,
  which is also why scapy's packets are accepted.
* AH over IPv4: `zero_mutable_fields` zeroes `flags` but not the fragment offset (RFC 4302 §3.3.3.1.1.1 lists
  both). Only fragments differ, and AH fragments are dropped before the ICV, so the cross-check is unaffected.
* AH over IPv4 options: scapy decides mutability by the 5-bit option *number* (its IMMUTABLE_IPV4_OPTIONS holds
  2, 5, 6, 20, 21), xdpsec by the full type byte of appendix A (130, 133, 134, 148, 149). They agree on the
  real options used here; they would differ on an option with an unusual copy/class bit.
* AH over IPv6: scapy zeroes traffic class, flow label and hop limit, and the data of options with the 0x20
  bit, as RFC 4302 §3.3.3.1.2 says; it also rewrites a type 0 routing header as the receiver would see it,
  which xdpsec does not (type 0 is deprecated, RFC 5095), so no routing headers are generated.
* ESP-in-UDP transport over IPv6 with extension headers: `_decrypt_esp` drops every extension header
  (`ip_header.remove_payload()` on the base header) and `_encrypt_esp` leaves the last extension header's Next
  Header saying ESP in front of the UDP header. Extension headers are therefore only generated without UDP
  encapsulation (xdpsec's placement with them is covered by the plain ESP and AH cases).
* ESN: scapy takes the high 32 bits separately (`esn_en=True, esn=hi`) and the low bits as `seq_num`.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import zlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import HBHOptUnknown, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import AH as ScapyAH
from scapy.layers.ipsec import ESP as ScapyESP
from scapy.layers.ipsec import SecurityAssociation
from scapy.packet import Raw, raw

from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.sa import Direction, Encr, Integ, Mode, Protocol, SAParams, Transform, UdpEncap
from xdpsec.wire import ip

A4 = (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("198.51.100.1"))  # (us, peer) outer
A6 = (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8:1::1"))
INNER4 = ("203.0.113.", "198.51.100.")  # host prefixes (ours, theirs) for tunnelled IPv4
INNER6 = ("2001:db8:a::", "2001:db8:b::")

SCAPY_INTEG = {Integ.HMAC_SHA2_256_128: "SHA2-256-128", Integ.HMAC_SHA2_384_192: "SHA2-384-192",
               Integ.HMAC_SHA2_512_256: "SHA2-512-256"}
SCAPY_ENCR = {Encr.AES_GCM_16: "AES-GCM", Encr.CHACHA20_POLY1305: "CHACHA20-POLY1305", Encr.AES_CBC: "AES-CBC",
              Encr.NULL: "NULL"}

ESP_TRANSFORMS = [
    (Encr.AES_GCM_16, 128, None),
    (Encr.AES_GCM_16, 256, None),
    (Encr.CHACHA20_POLY1305, 256, None),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128),
    (Encr.AES_CBC, 128, Integ.HMAC_SHA2_384_192),
    (Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256),
    (Encr.NULL, 0, Integ.HMAC_SHA2_256_128),
    (Encr.NULL, 0, Integ.HMAC_SHA2_384_192),
    (Encr.NULL, 0, Integ.HMAC_SHA2_512_256),
]
# (mode, inner family, outer family); transport mode has one family.
LAYOUTS = [(Mode.TUNNEL, 4, 4), (Mode.TUNNEL, 6, 6), (Mode.TUNNEL, 4, 6), (Mode.TUNNEL, 6, 4),
           (Mode.TRANSPORT, 4, 4), (Mode.TRANSPORT, 6, 6)]
PACKETS = 4
ESN_HI = 1  # with ESN the packets are sent in the second 2^32 subspace, so the high bits are not zero


def _id(value: object) -> str:
    return getattr(value, "name", str(value))


def sa_pair(protocol: Protocol, mode: Mode, family: int, transform: Transform, rng: random.Random,
            encap: bool = False) -> tuple[SAParams, SAParams]:
    """(outbound, inbound) parameters of one SA as its two ends see it: the same keys, mirrored addresses."""
    us, peer = A4 if family == 4 else A6
    enc = rng.randbytes(transform.enc_key_len)
    integ = rng.randbytes(transform.integ_key_len)
    port = UdpEncap(4500, 4500) if encap else None
    common = dict(spi=rng.randrange(0x100, 1 << 32), protocol=protocol, mode=mode, transform=transform,
                  enc_key=enc, integ_key=integ, encap=port)
    return (SAParams(direction=Direction.OUT, local=us, remote=peer, **common),
            SAParams(direction=Direction.IN, local=peer, remote=us, **common))


def scapy_sa(params: SAParams, seq: int = 1) -> SecurityAssociation:
    """scapy's view of `params` (tunnel header src=local, dst=remote of the side that encrypts)."""
    t = params.transform
    outer = IP if params.family == 4 else IPv6
    kwargs: dict = dict(spi=params.spi, seq_num=seq % (1 << 32), esn_en=t.esn, esn=seq >> 32)
    if params.mode == Mode.TUNNEL:
        kwargs["tunnel_header"] = outer(src=str(params.local), dst=str(params.remote))
    if params.encap is not None:
        kwargs["nat_t_header"] = UDP(sport=params.encap.sport, dport=params.encap.dport)
    if t.integ is not None:
        kwargs.update(auth_algo=SCAPY_INTEG[t.integ], auth_key=params.integ_key)
    if params.protocol == Protocol.ESP:
        kwargs.update(crypt_algo=SCAPY_ENCR[t.encr], crypt_key=params.enc_key or None)
        return SecurityAssociation(ScapyESP, **kwargs)
    return SecurityAssociation(ScapyAH, **kwargs)


def random_inner(rng: random.Random, family: int, src: str, dst: str, *, options: bool = False,
                 ext_headers: bool = False):
    """A random TCP, UDP or ICMP packet as a scapy object, with IPv4 options / IPv6 extension headers."""
    data = Raw(rng.randbytes(rng.randrange(0, 300)))
    kind = rng.choice(("tcp", "udp", "icmp"))
    if family == 4:
        opts = []
        if options:
            opts = rng.choice(([IPOption_Router_Alert()], [IPOption_NOP(), IPOption_RR(routers=["192.0.2.9"])],
                               [IPOption_RR(routers=["192.0.2.7", "192.0.2.8"]), IPOption_Router_Alert()]))
        head = IP(src=src, dst=dst, ttl=rng.randrange(2, 255), tos=rng.randrange(256), id=rng.randrange(65536),
                  flags=rng.choice(("DF", 0)), options=opts)
        l4 = {"tcp": TCP(sport=rng.randrange(1, 65536), dport=443, flags="PA", seq=rng.randrange(1 << 32)),
              "udp": UDP(sport=rng.randrange(1, 65536), dport=53), "icmp": ICMP(type=8, id=rng.randrange(65536))}
        return IP(raw(head / l4[kind] / data))
    head = IPv6(src=src, dst=dst, hlim=rng.randrange(2, 255), tc=rng.randrange(256), fl=rng.randrange(1 << 20))
    if ext_headers:
        # Hop-by-hop with one option whose "may change en route" bit (0x20) is set and one without, then
        # destination options: AH covers the first's data zeroed, the second's as is.
        head = head / IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x3E, optdata=rng.randbytes(4)),
                                                  HBHOptUnknown(otype=0x1E, optdata=rng.randbytes(2))])
        head = head / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1F, optdata=rng.randbytes(4))])
    l4 = {"tcp": TCP(sport=rng.randrange(1, 65536), dport=443, flags="PA"),
          "udp": UDP(sport=rng.randrange(1, 65536), dport=53), "icmp": ICMPv6EchoRequest(id=rng.randrange(65536))}
    return IPv6(raw(head / l4[kind] / data))


def inner_packets(rng: random.Random, mode: Mode, family: int, params: SAParams, ah: bool):
    """Packets the SA described by `params` (as the sending side) carries."""
    ext_ok = mode == Mode.TRANSPORT and family == 6 and params.encap is None  # see the scapy quirks above
    for i in range(PACKETS):
        if mode == Mode.TRANSPORT:
            src, dst = str(params.local), str(params.remote)
        else:
            ours, theirs = INNER4 if family == 4 else INNER6
            src, dst = f"{ours}{rng.randrange(1, 250)}", f"{theirs}{rng.randrange(1, 250)}"
        yield random_inner(rng, family, src, dst, options=ah and family == 4 and i % 2 == 0,
                           ext_headers=ext_ok and i % 2 == 1)


def normalized(pkt) -> bytes:
    """Bytes of a scapy packet after a round trip through scapy's own parser."""
    return raw(pkt)


def header_prefix(wire: bytes, outer_cls, encap: bool) -> bytes:
    """The bytes in front of ESP (or of its UDP header) with the length and checksum fields blanked: where
    ESP went and what the headers before it say, which must not depend on the IVs the two sides chose."""
    esp_off = len(wire) - len(raw(outer_cls(wire)[ScapyESP])) - (8 if encap else 0)
    prefix = bytearray(wire[:esp_off])
    blank = (2, 3, 10, 11) if outer_cls is IP else (4, 5)
    for i in blank:
        prefix[i] = 0
    return bytes(prefix)


def crosscheck(protocol: Protocol, layout: tuple[Mode, int, int], transform: Transform, encap: bool,
               seed: int) -> None:
    mode, inner_family, outer_family = layout
    rng = random.Random(seed)
    out_params, in_params = sa_pair(protocol, mode, outer_family, transform, rng, encap)
    first = (ESN_HI << 32) + rng.randrange(1, 50) if transform.esn else rng.randrange(1, 1000)
    ah_mode = protocol == Protocol.AH

    # xdpsec protect -> scapy decrypt
    ours = OutboundSA(out_params, next_seq=first)
    theirs = scapy_sa(out_params, first)
    outer_cls = IP if outer_family == 4 else IPv6
    for n, inner in enumerate(inner_packets(rng, mode, inner_family, out_params, ah_mode)):
        wire = protect(ours, raw(inner))
        info = ip.parse(wire)
        assert info.src == out_params.local.packed and info.dst == out_params.remote.packed
        if encap and outer_family == 6:
            udp = wire[info.header_len:]
            pseudo = ip.pseudo_header(info.src, info.dst, 17, len(udp))
            assert ip.checksum(pseudo + udp) == 0  # the UDP checksum we put there verifies
        if mode == Mode.TUNNEL:
            assert info.tos == inner.tc if inner_family == 6 else info.tos == inner.tos  # DSCP+ECN copied
        decrypted = theirs.decrypt(outer_cls(wire), esn=(first + n) >> 32)
        assert normalized(decrypted) == raw(inner), f"packet {n}"
        seq_field = (outer_cls(wire)[ScapyAH] if ah_mode else outer_cls(wire)[ScapyESP]).seq
        assert seq_field == (first + n) % (1 << 32)
        if mode == Mode.TRANSPORT:
            expected = raw(scapy_sa(out_params, first + n).encrypt(inner))
            if ah_mode:
                assert wire == expected  # AH is deterministic: byte for byte what scapy builds
            else:
                assert header_prefix(wire, outer_cls, encap) == header_prefix(expected, outer_cls, encap)

    # scapy encrypt -> xdpsec unprotect
    ours_in = InboundSA(in_params)
    if transform.esn:
        ours_in.window.update(first - 1)  # the window has seen the numbers before `first`
    theirs = scapy_sa(out_params, first)
    for n, inner in enumerate(inner_packets(rng, mode, inner_family, out_params, ah_mode)):
        wire = raw(theirs.encrypt(inner, seq_num=(first + n) % (1 << 32), esn=(first + n) >> 32))
        assert unprotect(ours_in, wire) == raw(inner), f"packet {n}"
    assert ours_in.packets == PACKETS and ours_in.window.top == first + PACKETS - 1


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("encap", [False, True], ids=["esp", "udp"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"{x[0].name.lower()}-{x[1]}in{x[2]}")
@pytest.mark.parametrize("algo", ESP_TRANSFORMS, ids=lambda a: f"{a[0].name}{a[1] or ''}-{_id(a[2])}")
def test_esp_against_scapy(algo, layout, encap, esn):
    encr, bits, integ = algo
    transform = Transform(encr, bits, integ, esn=esn)
    crosscheck(Protocol.ESP, layout, transform, encap, seed=zlib.crc32(repr((algo, layout, encap, esn)).encode()))


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"{x[0].name.lower()}-{x[1]}in{x[2]}")
@pytest.mark.parametrize("integ", list(Integ), ids=_id)
def test_ah_against_scapy(integ, layout, esn):
    crosscheck(Protocol.AH, layout, Transform(None, 0, integ, esn=esn), False,
               seed=int(integ) * 100 + LAYOUTS.index(layout) * 2 + esn)


def test_ah_tampering_is_caught_by_scapy_too():
    """The oracle is not blind: a changed payload byte in our AH packet fails scapy's verification."""
    rng = random.Random(7)
    out_params, _ = sa_pair(Protocol.AH, Mode.TUNNEL, 4, Transform(None, 0, Integ.HMAC_SHA2_256_128), rng)
    wire = bytearray(protect(OutboundSA(out_params), raw(random_inner(rng, 4, "203.0.113.1", "198.51.100.2"))))
    wire[-1] ^= 1
    with pytest.raises(Exception, match="icv"):
        scapy_sa(out_params).decrypt(IP(bytes(wire)))


def test_outer_ipv4_header_fields():
    """The outer IPv4 header: TTL 64, DF copied from the inner header, a valid checksum, ESP inside."""
    rng = random.Random(3)
    out_params, _ = sa_pair(Protocol.ESP, Mode.TUNNEL, 4, Transform(Encr.AES_GCM_16, 128), rng)
    sa = OutboundSA(out_params)
    for df in (True, False):
        inner = random_inner(rng, 4, "203.0.113.1", "198.51.100.2")
        inner.flags = "DF" if df else 0
        wire = protect(sa, raw(IP(raw(inner))))
        info = ip.parse(wire)
        assert (info.ttl, info.df, info.proto) == (64, df, 50)
        assert ip.checksum(wire[:20]) == 0
        assert struct.unpack_from("!I", wire, 20)[0] == out_params.spi
