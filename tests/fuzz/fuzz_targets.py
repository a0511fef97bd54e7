"""Fuzz targets: every parser that network input or an operator's file reaches, with the one invariant they share.

Each target is a function `(data: bytes) -> None` that feeds `data` to the code under test and lets through only
the errors the design names (docs/DESIGN.md "Errors"): `xdpsec.abi.Drop` on the data path, `IkeError` from the
IKE wire parser, `ConfigError` from the configuration loader. Anything else escapes and is a finding. The same
functions run under atheris (coverage-guided, tests/fuzz/run.py and scripts/fuzz) and under pytest, which replays
the seed corpus and every regression file (tests/fuzz/test_fuzz.py).

Integrity checks stop blind mutation at the ICV, so the data-path targets are structure-aware: the first byte
picks a scenario, and some scenarios *seal* the fuzzer's bytes under the SA's real key first, so that padding,
next header, the inner packet, selectors and forwarding are reached with attacker-chosen plaintext — what a
peer holding the keys (a compromised peer, threat model in docs/SECURITY.md) can send.

The IKE targets rebuild their state for every input so that one input never depends on the previous one
(libFuzzer requires it, and a crash must replay alone). Key exchange and randomness are made deterministic
(`deterministic_ike`): a captured IKE_AUTH of the seed corpus then authenticates in every run, and mutating it
reaches the code behind the integrity check only where the fuzzer leaves the checksum intact — mostly the
header and the unprotected paths — which is as deep as an outside attacker gets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from xdpsec import config as configmod
from xdpsec.abi import Drop, Kind
from xdpsec.crypto import dh
from xdpsec.dataplane.core import PacketCore, Port, Route
from xdpsec.esp.mode import InboundSA, OutboundSA, protect, unprotect
from xdpsec.ike import wire
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
from xdpsec.sa import (
    Direction,
    Encr,
    Integ,
    Mode,
    Protocol,
    SAParams,
    TrafficSelector,
    Transform,
    UdpEncap,
)
from xdpsec.wire.ip import checksum

# --- the data path --------------------------------------------------------------------------------------------

GW_A, GW_B = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
NET_A, NET_B = ipaddress.ip_network("198.51.100.0/25"), ipaddress.ip_network("198.51.100.128/25")
MAC_A, MAC_B, MAC_HOST = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b"), bytes.fromhex("020000000002")
ETH_IPV4 = bytes.fromhex("0800")
ETH_HLEN = 14
SA_INDEX = 7
#: Fixed keys: the corpus is made with them and must decrypt under them in every run. Not secrets.
_KEY_GCM = bytes(range(20))
_KEY_CBC, _KEY_HMAC = bytes(range(32, 64)), bytes(range(64, 96))
_KEY_AH = bytes(range(96, 128))


def _sa_pair(name: str) -> tuple[SAParams, SAParams]:
    """(outbound at A, inbound at B) of one of the data-path scenarios."""
    base: dict = dict(local=GW_A, remote=GW_B, local_ts=(TrafficSelector(NET_A),),
                      remote_ts=(TrafficSelector(NET_B),), replay_window=64)
    if name == "esp_gcm_tunnel":
        kw = dict(spi=0x1001, protocol=Protocol.ESP, mode=Mode.TUNNEL, transform=Transform(Encr.AES_GCM_16, 128),
                  enc_key=_KEY_GCM)
    elif name == "esp_cbc_transport":
        kw = dict(spi=0x1002, protocol=Protocol.ESP, mode=Mode.TRANSPORT,
                  transform=Transform(Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128), enc_key=_KEY_CBC,
                  integ_key=_KEY_HMAC, local_ts=(TrafficSelector(ipaddress.ip_network(f"{GW_A}/32")),),
                  remote_ts=(TrafficSelector(ipaddress.ip_network(f"{GW_B}/32")),))
    elif name == "esp_gcm_udp":
        kw = dict(spi=0x1003, protocol=Protocol.ESP, mode=Mode.TUNNEL, transform=Transform(Encr.AES_GCM_16, 128),
                  enc_key=_KEY_GCM, encap=UdpEncap())
    elif name == "ah_tunnel":
        kw = dict(spi=0x1004, protocol=Protocol.AH, mode=Mode.TUNNEL,
                  transform=Transform(None, 0, Integ.HMAC_SHA2_256_128), integ_key=_KEY_AH)
    else:
        raise KeyError(name)
    out = SAParams(direction=Direction.OUT, **{**base, **kw})
    inb = SAParams(direction=Direction.IN, **{**base, **kw, "local": GW_B, "remote": GW_A,
                                             "local_ts": kw.get("remote_ts", base["remote_ts"]),
                                             "remote_ts": kw.get("local_ts", base["local_ts"])})
    return out, inb


#: Scenarios by protocol: the first input byte chooses among them.
ESP_SCENARIOS = ("esp_gcm_tunnel", "esp_cbc_transport")
UDP_SCENARIOS = ("esp_gcm_udp",)
AH_SCENARIOS = ("ah_tunnel",)
_PAIRS = {name: _sa_pair(name) for name in (*ESP_SCENARIOS, *UDP_SCENARIOS, *AH_SCENARIOS)}


class Shape:
    """What the bytes after the scenario byte are."""

    FRAME = 0      # a whole Ethernet frame as received on the outside port
    INNER = 1      # an inner IP packet: protected by the peer's SA, then received (round trip)
    PLAINTEXT = 2  # ESP only: the decrypted body (payload, padding, pad length, next header), sealed validly
    COUNT = 3


def _core(inb: SAParams) -> PacketCore:
    """gwB's packet core holding the inbound SA, with both next hops known so that forwarding is exercised."""
    core = PacketCore(0, {0: Port(0, "lan0", MAC_B, 1500, ()), 1: Port(1, "wan0", MAC_B, 1500, (GW_B,))})
    core.add_inbound(SA_INDEX, inb)
    core.set_route(ipaddress.ip_address("198.51.100.130").packed, Route.make(0, MAC_B, MAC_HOST, 1500))
    return core


def _outer(out: OutboundSA, esp: bytes) -> bytes:
    """The outer IPv4 (+UDP) packet carrying the ESP bytes `esp` from A to B."""
    params = out.params
    proto, body = 50, esp
    if params.encap is not None:
        proto, body = 17, struct.pack("!HHHH", params.encap.sport, params.encap.dport, 8 + len(esp), 0) + esp
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, proto, 0,
                                   params.local.packed, params.remote.packed))
    header[10:12] = struct.pack("!H", checksum(header))
    return bytes(header) + body


def _seal(out: OutboundSA, plaintext: bytes) -> bytes:
    """An ESP packet whose decrypted body is exactly `plaintext`, with a valid ICV (needs block alignment)."""
    esp = out._esp
    cipher = esp.cipher
    seq = out.next_seq()
    block = cipher.block_size
    plaintext = plaintext[: len(plaintext) - len(plaintext) % block] if block > 1 else plaintext
    header = struct.pack("!II", esp.spi, seq)
    iv = cipher.iv_for(seq)
    return header + iv + cipher.seal(header, b"", iv, plaintext)


def _datapath(scenarios: tuple[str, ...], data: bytes) -> None:
    if len(data) < 2:
        return
    name = scenarios[data[0] % len(scenarios)]
    shape = (data[0] // len(scenarios)) % Shape.COUNT
    body = data[1:]
    out_p, in_p = _PAIRS[name]
    core = _core(in_p)
    kind = Kind.AH if in_p.protocol == Protocol.AH else Kind.ESP_UDP if in_p.encap else Kind.ESP
    if shape == Shape.FRAME:
        frames = [body]
    else:
        out = OutboundSA(out_p)
        if shape == Shape.INNER:
            try:
                outer = protect(out, body)
            except Drop:
                return  # not something the peer could have sent
        elif in_p.protocol == Protocol.ESP:
            outer = _outer(out, _seal(out, body))
        else:
            return
        frames = [MAC_B + MAC_A + ETH_IPV4 + outer] * 2  # the second one is a replay
    for frame in frames:
        # PacketCore.process catches Drop and counts it; anything else that escapes it is the bug we look for.
        core.process(1, frame, kind, SA_INDEX, ETH_HLEN)
    # The same bytes through the bare mode functions, which must themselves raise nothing but Drop.
    try:
        unprotect(InboundSA(in_p), frames[0][ETH_HLEN:])
    except Drop:
        pass


def esp(data: bytes) -> None:
    """ESP decapsulation of a whole frame (tunnel GCM, transport CBC+HMAC) through the worker's packet core."""
    _datapath(ESP_SCENARIOS, data)


def udp_encap(data: bytes) -> None:
    """ESP in UDP (RFC 3948) through the worker's packet core."""
    _datapath(UDP_SCENARIOS, data)


def ah(data: bytes) -> None:
    """AH (RFC 4302) through the worker's packet core."""
    _datapath(AH_SCENARIOS, data)


# --- IKE ------------------------------------------------------------------------------------------------------

IKE_A, IKE_B = (GW_A, 500), (GW_B, 500)
PSK = b"fuzzing is not a secret"
_IKE_GCM = IkeProposal(EncrId.AES_GCM_16, 128, None, PrfId.HMAC_SHA2_256, KeId.CURVE25519)
_ESP_GCM = ChildProposal(Protocol.ESP, Transform(Encr.AES_GCM_16, 128))
#: X25519 private values (RFC 7748 encoding) of the initiator and responder: fixed, so the exchange is the same
#: in every run and the corpus's encrypted messages stay valid.
_KE_PRIVATE = {"a": bytes(range(1, 33)), "b": bytes(range(33, 65))}


def _round(text: str) -> AuthRound:
    return AuthRound(AuthMethod.PSK, Identity(IdType.FQDN, text.encode(), text), psk=PSK)


def _child(local, remote) -> ChildConfig:
    return ChildConfig("net", (TrafficSelector(local),), (TrafficSelector(remote),), proposals=(_ESP_GCM,))


def _conns() -> tuple[IkeConnConfig, IkeConnConfig]:
    a = IkeConnConfig("a-to-b", (GW_A,), (GW_B,), (_IKE_GCM,), _round("a.example"), _round("b.example"),
                      (_child(NET_A, NET_B),))
    b = IkeConnConfig("b-from-a", (GW_B,), (), (_IKE_GCM,), _round("b.example"), _round("a.example"),
                      (_child(NET_B, NET_A),))
    return a, b


@contextlib.contextmanager
def deterministic_ike(side: str) -> Iterator[None]:
    """While active, key exchanges made by `side`'s manager use its fixed private value."""
    from xdpsec.ike.tasks import child_create, ike_init

    def fixed(group: int) -> dh.KeyExchange:
        return dh.KeyExchange._from_private(group, _KE_PRIVATE[side])

    saved = ike_init.new_key_exchange, child_create.new_key_exchange
    ike_init.new_key_exchange = child_create.new_key_exchange = fixed
    try:
        yield
    finally:
        ike_init.new_key_exchange, child_create.new_key_exchange = saved


def _manager(side: str) -> IkeManager:
    a, b = _conns()
    rng = random.Random(1 if side == "a" else 2)
    mgr = IkeManager([a if side == "a" else b], rng=rng.randbytes)
    mgr.strict = True  # re-raise what receive_datagram would count as parser_bug / internal_error
    return mgr


T0 = 1_767_225_600.0


class IkeRun:
    """Two managers and the datagrams they exchanged, replayed to a chosen point: the IKE stages."""

    def __init__(self) -> None:
        self.a, self.b = _manager("a"), _manager("b")
        self.sent: list[tuple[str, bytes]] = []  # (sender, datagram) in order

    def _call(self, side: str, fn: Callable[[], None]) -> None:
        with deterministic_ike(side):
            fn()

    def deliver_one(self) -> bool:
        """Move every datagram in flight once; False when nothing was in flight."""
        moved = False
        for side, mgr, peer, peer_name in (("a", self.a, self.b, "b"), ("b", self.b, self.a, "a")):
            for data, _src, _dst in mgr.datagrams_to_send():
                self.sent.append((side, data))
                local, remote = (IKE_B, IKE_A) if peer_name == "b" else (IKE_A, IKE_B)
                self._call(peer_name, lambda p=peer, d=data, lo=local, re=remote: p.receive_datagram(d, lo, re, T0))
                moved = True
        return moved

    def initiate(self) -> None:
        self._call("a", lambda: self.a.initiate("a-to-b", "net", T0))


class IkeStage:
    """Where the fuzzed datagram arrives (the first input byte picks it)."""

    RESPONDER_FRESH = 0        # a responder that has seen nothing: IKE_SA_INIT requests, junk
    RESPONDER_AFTER_INIT = 1   # the responder has answered IKE_SA_INIT and waits for IKE_AUTH
    INITIATOR_AFTER_INIT = 2   # the initiator has sent IKE_SA_INIT and waits for the response
    INITIATOR_AFTER_AUTH = 3   # the initiator has sent IKE_AUTH and waits for the response
    RESPONDER_ESTABLISHED = 4  # both up: INFORMATIONAL, CREATE_CHILD_SA, retransmissions
    COUNT = 5


def ike_stage(stage: int) -> tuple[IkeManager, str]:
    """A fresh pair brought to `stage`; returns the manager that receives the fuzzed datagram and its side."""
    run = IkeRun()
    if stage == IkeStage.RESPONDER_FRESH:
        return run.b, "b"
    run.initiate()
    if stage == IkeStage.INITIATOR_AFTER_INIT:
        run.a.datagrams_to_send()  # lost on the way: the answer is the fuzzer's
        return run.a, "a"
    # IKE_SA_INIT request -> responder; its answer -> initiator, who then sends IKE_AUTH.
    first, = run.a.datagrams_to_send()
    run._call("b", lambda: run.b.receive_datagram(first[0], IKE_B, IKE_A, T0))
    if stage == IkeStage.RESPONDER_AFTER_INIT:
        return run.b, "b"
    answer, = run.b.datagrams_to_send()
    run._call("a", lambda: run.a.receive_datagram(answer[0], IKE_A, IKE_B, T0))
    if stage == IkeStage.INITIATOR_AFTER_AUTH:
        run.a.datagrams_to_send()
        return run.a, "a"
    while run.deliver_one():
        pass
    return run.b, "b"


def ike(data: bytes) -> None:
    """IkeManager.receive_datagram at each stage of a handshake: nothing may escape it (strict mode re-raises
    what the gateway would otherwise count as parser_bug / internal_error)."""
    if not data:
        return
    stage = data[0] % IkeStage.COUNT
    mgr, side = ike_stage(stage)
    local, remote = (IKE_B, IKE_A) if side == "b" else (IKE_A, IKE_B)
    with deterministic_ike(side):
        mgr.receive_datagram(data[1:], local, remote, T0)
        mgr.handle_timer(T0 + 1000)  # whatever the input left behind must also survive its timers
    mgr.datagrams_to_send()


def ike_wire(data: bytes) -> None:
    """The IKE parser alone: a whole message, the payload chain (first payload type from the first byte),
    and the Encrypted payload splitter. Only IkeError may come out."""
    if not data:
        return
    for parse in (lambda: wire.decode(data[1:]), lambda: wire.decode_payloads(data[0], data[1:]),
                  lambda: wire.split_encrypted(data[1:])):
        try:
            parse()
        except wire.IkeError:
            pass


# --- the configuration ----------------------------------------------------------------------------------------

def config(data: bytes) -> None:
    """The configuration loader on arbitrary bytes: only ConfigError may come out. The loader reads a file (and
    reports undecodable bytes itself), so the bytes go into an anonymous memory file that leaves nothing behind."""
    fd = os.memfd_create("xdpsec-fuzz.toml")
    try:
        os.write(fd, data)
        configmod.load(Path(f"/proc/self/fd/{fd}"))
    except configmod.ConfigError:
        pass
    finally:
        os.close(fd)


#: name -> target, in the order scripts/fuzz runs them.
TARGETS: dict[str, Callable[[bytes], None]] = {
    "esp": esp, "udp_encap": udp_encap, "ah": ah, "ike": ike, "ike_wire": ike_wire, "config": config,
}
