"""Two IKE managers joined in memory, with fake time, and the configurations they run.

    gateway A (initiator)                                     gateway B (responder)
    192.0.2.1  [198.51.100.0/25]  <== IKE over the Link ==>  192.0.2.2  [198.51.100.128/25]

`Link` carries each side's `datagrams_to_send()` to the other. Tests take the datagrams in flight with
`flight()` and may drop, duplicate or reorder them before `deliver()`; `settle()` runs until nothing is in
flight. With `nat=True` A sits behind a NAT: A's packets leave from 203.0.113.1 with a rewritten port, and B's
answers to that mapping are translated back, as a NAPT would do.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import random
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xdpsec.ike import events
from xdpsec.ike.conf import (
    AuthMethod,
    AuthRound,
    ChildConfig,
    ChildProposal,
    Identity,
    IkeConnConfig,
    IkeProposal,
)
from xdpsec.ike.consts import EncrId, IdType, KeId, PrfId
from xdpsec.ike.manager import IkeManager
from xdpsec.sa import Encr, Integ, Protocol, TrafficSelector, Transform

A_ADDR = ipaddress.ip_address("192.0.2.1")
B_ADDR = ipaddress.ip_address("192.0.2.2")
NAT_PUBLIC = ipaddress.ip_address("203.0.113.1")
A_NET = ipaddress.ip_network("198.51.100.0/25")
B_NET = ipaddress.ip_network("198.51.100.128/25")
PSK = b"correct horse battery staple"
T0 = 1_767_225_600.0  # 2026-01-01, inside the test certificates' validity

GCM = IkeProposal(EncrId.AES_GCM_16, 128, None, PrfId.HMAC_SHA2_256, KeId.CURVE25519)
ESP_GCM = ChildProposal(Protocol.ESP, Transform(Encr.AES_GCM_16, 128))
ESP_CBC = ChildProposal(Protocol.ESP, Transform(Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128))


def psk_round(text: str) -> AuthRound:
    return AuthRound(AuthMethod.PSK, Identity(IdType.FQDN, text.encode(), text), psk=PSK)


def child(name: str, local, remote, **kw) -> ChildConfig:
    return ChildConfig(name, (TrafficSelector(ipaddress.ip_network(local)),),
                       (TrafficSelector(ipaddress.ip_network(remote)),),
                       proposals=kw.pop("proposals", (ESP_GCM,)), **kw)


def conn_a(**kw) -> IkeConnConfig:
    base = IkeConnConfig("a-to-b", (A_ADDR,), (B_ADDR,), (GCM,), psk_round("a.example"), psk_round("b.example"),
                         (child("net", A_NET, B_NET),))
    return replace(base, **kw)


def conn_b(**kw) -> IkeConnConfig:
    base = IkeConnConfig("b-from-a", (B_ADDR,), (), (GCM,), psk_round("b.example"), psk_round("a.example"),
                         (child("net", B_NET, A_NET),))
    return replace(base, **kw)


@dataclass
class Datagram:
    sender: str  # "a" or "b"
    data: bytes
    src: tuple
    dst: tuple


class Link:
    def __init__(self, a: IkeManager, b: IkeManager, *, nat: bool = False, now: float = T0):
        self.a, self.b = a, b
        a.strict = b.strict = True  # our bugs must fail the test, not be counted
        self.now = now
        self.nat = nat
        self._nat_ports: dict[tuple, int] = {}
        self._ports = itertools.count(40000)
        self.events: dict[str, list] = {"a": [], "b": []}
        self.delivered = 0

    def side(self, name: str) -> IkeManager:
        return self.a if name == "a" else self.b

    # NAPT in front of A: (A's address, port) <-> (NAT_PUBLIC, mapped port)
    def _translate_out(self, src: tuple) -> tuple:
        if src not in self._nat_ports:
            self._nat_ports[src] = next(self._ports)
        return (NAT_PUBLIC, self._nat_ports[src])

    def _translate_in(self, dst: tuple) -> tuple:
        inside = {v: k for k, v in self._nat_ports.items()}
        return inside[dst[1]]

    def flight(self) -> list[Datagram]:
        out = [Datagram("a", d, s, t) for d, s, t in self.a.datagrams_to_send()]
        out += [Datagram("b", d, s, t) for d, s, t in self.b.datagrams_to_send()]
        return out

    def deliver(self, datagrams: list[Datagram]) -> None:
        for dg in datagrams:
            src, dst = dg.src, dg.dst
            if dg.sender == "a":
                if self.nat:
                    src = self._translate_out(src)
                self.b.receive_datagram(dg.data, dst, src, self.now)
            else:
                if self.nat:
                    dst = self._translate_in(dst)
                self.a.receive_datagram(dg.data, dst, src, self.now)
            self.delivered += 1
        self._drain()

    def _drain(self) -> None:
        for name in ("a", "b"):
            while (ev := self.side(name).next_event()) is not None:
                self.events[name].append(ev)

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            flight = self.flight()
            if not flight:
                return
            self.deliver(flight)
        raise AssertionError("the exchange did not settle")

    def advance(self, seconds: float) -> None:
        """Let time pass, firing each manager's timer whenever it falls due."""
        end = self.now + seconds
        while True:
            due = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self._drain()
        self.now = end

    def of(self, name: str, kind: type) -> list:
        return [e for e in self.events[name] if isinstance(e, kind)]


def seeded_rng(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


@pytest.fixture
def make_link():
    def make(a_conn=None, b_conn=None, *, nat: bool = False, **kw) -> Link:
        a = IkeManager([a_conn or conn_a()], rng=seeded_rng(1), **kw)
        b = IkeManager([b_conn or conn_b()], rng=seeded_rng(2), **kw)
        return Link(a, b, nat=nat)
    return make


def up(link: Link, child_name: str | None = "net") -> None:
    link.a.initiate("a-to-b", child_name, link.now)
    link.settle()


def child_up(link: Link, side: str) -> events.ChildUp:
    ups = link.of(side, events.ChildUp)
    assert len(ups) == 1, link.events[side]
    return ups[0]


# --- certificates ------------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_der: bytes
    a_key: bytes
    a_cert: bytes
    b_key: bytes
    b_cert: bytes
    rogue_ca_der: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="session")
def pki() -> Pki:
    der = serialization.Encoding.DER
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("xdpsec test CA", ca_key, "xdpsec test CA", ca_key, True)
    rogue = _cert("rogue CA", rogue_key, "rogue CA", rogue_key, True)
    a_key, b_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a = _cert("gw-a", a_key, "xdpsec test CA", ca_key, False)
    b = _cert("gw-b", b_key, "xdpsec test CA", ca_key, False)
    return Pki(ca.public_bytes(der), _pem(a_key), a.public_bytes(der), _pem(b_key), b.public_bytes(der),
               rogue.public_bytes(der))
