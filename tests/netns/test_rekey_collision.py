"""Rekey collisions between two xdpsec gateways, made certain (issue 4, point 3): the same child SA rekeyed by
both at once (RFC 7296 §2.8.1), the IKE SA rekeyed by both at once (§2.8.2), and a child rekey crossing that
child's Delete (§2.25.1).

    hostA ── gwA (xdpsec) ── wa ┤wire├ wb ── gwB (xdpsec) ── hostB

Two requests cross only if each leaves before the other arrives. tests/netns/test_rekey.py sends both at the
same moment and hopes; here the wire holds them. An nftables bridge rule in the `wire` namespace drops every
IKE datagram in one direction, counting them: once the counters show that both gateways have sent their request,
both requests are outstanding, and neither side can have seen the other's. Then requests pass but responses
stay held: the retransmitted requests (§2.1: the same message again, after `retransmit_timeout`, set to 1 s
here) reach each side while its own request is still unanswered, so the exchanges cross by construction; once
both sides counted the other's request, responses pass too (retransmitted requests fetch them again, §2.1).
This kernel has no netem (CONFIG_NET_SCH_NETEM) and no nft queue (CONFIG_NFT_QUEUE), so a delay or a held
queue is not available; dropping and letting the retransmissions through is just as deterministic.

What the RFC decides is then checked from outside the gateways: a capture on the wire, decrypted with the keys
the gateways export for Wireshark (`[debug] key_export`) and `cryptography`'s AES-GCM (RFC 5282), gives the four
nonces; the exchange holding the lowest one made the redundant SA, which its initiator must delete, while the
other exchange's SA survives on both sides. The gateways' IKE counters say the same thing from inside:
`child_rekey_collision` / `ike_rekey_collision` on both (the collision was seen), `rekey_collision_lost` on
exactly the side that initiated the redundant exchange.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from tests.netns.test_rekey import CHILD, IKE, _child, _rekey, _wait
from xdpsec.ike import wire
from xdpsec.ike.consts import ExchangeType, NotifyType, ProtocolId
from xdpsec.labconf import Gateways, PairSpec, render_ike, site_sides

pytestmark = pytest.mark.netns

A, B = "gwA", "gwB"
PORT_OF = {A: "wa", B: "wb"}  # the wire's bridge port facing each gateway: where its datagrams come in
IKE_PORT = 500             # no NAT in this lab: IKE stays on port 500 (RFC 7296 §2.23)
IKE_FILTER = f"udp port {IKE_PORT}"
SALT = 4                    # RFC 5282 §7.1: AES-GCM's SK_e ends with a 4-octet salt
IV = 8                      # RFC 5282 §3.1
CHILD_LIFE = 6              # seconds: gwB's child lifetime in the rekey-crossing-a-Delete case
SETTLED = 15.0              # seconds a resolution may take (retransmissions at 1 s, 1.8 s after a release)


# --- holding the IKE datagrams on the wire -----------------------------------------------------------------


class Hold:
    """Drop the IKE datagrams the gateways send, in the `wire` namespace only (bridge family: the gateways'
    stacks see nothing, not even an error): requests until `pass_requests()`, responses until `release()`.

    Requests and responses are told apart by the Response flag of the IKE header (RFC 7296 §3.1: 0x20 in the
    flags octet, the 20th of the header, after the 8-octet UDP header: transport-header bits 216..223)."""

    KINDS = {"req": "0x0", "resp": "0x20"}

    def __init__(self, lab):
        self.lab, self.tables = lab, []

    def __enter__(self) -> Hold:
        for port in PORT_OF.values():
            for kind, flag in self.KINDS.items():
                table = self._table(port, kind)
                self.lab.run("wire", "nft", "-f", "-", input=(
                    f"table bridge {table} {{\n chain hold {{\n"
                    f"  type filter hook forward priority 0; policy accept;\n"
                    f'  iifname "{port}" meta l4proto udp udp dport {IKE_PORT} @th,216,8 & 0x20 == {flag} '
                    f"counter drop\n }}\n}}\n"))
                self.tables.append(table)
        return self

    @staticmethod
    def _table(port: str, kind: str) -> str:
        return f"xst_hold_{port}_{kind}"

    def held(self, node: str) -> int:
        """How many IKE requests from `node` were dropped so far."""
        out = self.lab.run("wire", "nft", "-j", "list", "table", "bridge", self._table(PORT_OF[node], "req")).stdout
        return sum(e["counter"]["packets"] for item in json.loads(out)["nftables"] if "rule" in item
                   for e in item["rule"]["expr"] if "counter" in e)

    def pass_requests(self) -> None:
        self._drop([t for t in self.tables if t.endswith("_req")])

    def release(self) -> None:
        self._drop(list(self.tables))

    def _drop(self, tables: list[str]) -> None:
        for table in tables:
            self.lab.run("wire", "nft", "delete", "table", "bridge", table)
            self.tables.remove(table)

    def __exit__(self, *_exc) -> None:
        self.release()


def _cross(hold: Hold, senders: tuple[str, ...], answered) -> None:
    """Make the held requests of `senders` cross: once the wire has dropped a request of each, both are
    outstanding and neither delivered; their retransmissions then pass while every response stays held, until
    `answered()` says each side has processed the other's request. Then everything passes."""
    for node in senders:
        _wait(lambda node=node: hold.held(node) >= 1, f"{node}'s request held", SETTLED)
    hold.pass_requests()
    _wait(answered, "each side processed the other's request", SETTLED)
    hold.release()


# --- the gateways ------------------------------------------------------------------------------------------


@dataclass
class Pair:
    lab: object
    gws: Gateways
    addr: dict[str, str]       # node -> its outer address
    keys: dict[str, Path]      # node -> its key export directory

    def stats(self, node: str) -> dict[str, int]:
        return self.gws.query(node, "stats")["ike"]

    def sas(self, node: str) -> dict[str, int]:
        """The node's installed child SAs: direction -> SPIs."""
        out: dict[str, set[int]] = {"in": set(), "out": set()}
        for row in self.gws.query(node, "sas"):
            out[row["direction"]].add(int(row["spi"], 16))
        return out

    def ike_sas(self, node: str) -> list[dict]:
        return [s for s in self.gws.query(node, "ike-sas") if s["state"] == "established"]


@pytest.fixture
def keyed_pair(make_lab, tmp_path):
    """keyed_pair(child_keys_b="") -> Pair: gwA (start_action start) and gwB keyed with IKEv2, retransmitting after
    1 s, DPD off (nothing but our requests crosses the hold), both exporting their keys."""
    started: list[Gateways] = []

    def up(child_keys_b: str = "") -> Pair:
        lab = make_lab(topology="site")
        a, b = site_sides(lab, workers=1)
        spec = PairSpec(mode="tunnel", proposal="aes128gcm16", keying="ike", workers=1,
                        ike_proposal="aes128gcm16-prfsha256-x25519")
        psk = os.urandom(18).hex()
        gws = Gateways(lab)
        started.append(gws)
        keys = {}
        for node, side, child_keys in ((A, a, ""), (B, b, child_keys_b)):
            keys[node] = tmp_path / f"keys-{node}"
            keys[node].mkdir(mode=0o700)
            side.extra = f'[debug]\nkey_export = "{keys[node]}"'
            text = render_ike(side, spec, psk=psk, initiator=node == A, state_dir=str(tmp_path / "state"),
                              gateway_keys='retransmit_timeout = "1s"', conn_keys="dpd_delay = 0",
                              child_keys=child_keys)
            path = tmp_path / f"{node}.toml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            gws.start(node, path, side.instance)
        gws.wait_ready()
        p = Pair(lab, gws, {A: a.local_addr, B: b.local_addr}, keys)
        _wait(lambda: all(_child(gws, n).get("state") == "installed" for n in (A, B)), "child installed", 20.0)
        assert lab.ping("hostA", lab.addr["hostB"]["v4"], count=3, timeout=8).received >= 2
        return p

    yield up
    for gws in started:
        codes = gws.stop()
        assert all(c == 0 for c in codes.values()), (codes, {n: gws.log(n) for n in codes})


# --- reading the capture -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    sender: str
    exchange: int
    msg_id: int
    response: bool
    payloads: tuple[wire.Payload, ...]

    def first(self, kind: type):
        return next((p.body for p in self.payloads if isinstance(p.body, kind)), None)


@dataclass(frozen=True)
class Rekey:
    """One CREATE_CHILD_SA exchange that created an SA, as it crossed the wire."""

    initiator: str
    ni: bytes
    nr: bytes
    spi_i: int   # the new SA's SPI chosen by the exchange's initiator (its inbound ESP SPI; or the IKE SPIi)
    spi_r: int   # ... and by its responder


def _exported_keys(pair: Pair) -> dict[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """(SPIi, SPIr) -> (SK_ei, SK_er) from Wireshark's ikev2_decryption_table (xdpsec/keyexport.py)."""
    out = {}
    for directory in pair.keys.values():
        for line in (directory / "ikev2_decryption_table").read_text().splitlines():
            if line and not line.startswith("#"):
                ispi, rspi, sk_ei, sk_er = line.split(",")[:4]
                out[bytes.fromhex(ispi), bytes.fromhex(rspi)] = bytes.fromhex(sk_ei), bytes.fromhex(sk_er)
    return out


def _decrypt(data: bytes, keys) -> tuple[wire.Header, tuple[wire.Payload, ...]] | None:
    """An SK-protected message in clear (RFC 5282 §3, §5.1), independently of xdpsec's crypto; None for
    IKE_SA_INIT or an IKE SA whose keys were not exported (a redundant one is never announced)."""
    h = wire.decode_header(data)
    if h.exchange == ExchangeType.IKE_SA_INIT or (h.ispi, h.rspi) not in keys:
        return None
    h, aad, first, body = wire.split_encrypted(data)
    sk_e = keys[h.ispi, h.rspi][0 if h.is_initiator else 1]
    plain = AESGCM(sk_e[:-SALT]).decrypt(sk_e[-SALT:] + body[:IV], body[IV:], aad)
    return h, wire.decode_payloads(first, plain[:-plain[-1] - 1])  # minus padding and Pad Length


def _messages(pair: Pair, pcap: Path) -> list[Msg]:
    """Each IKE message once (retransmissions are identical), in the order it first crossed."""
    keys, seen, out = _exported_keys(pair), set(), []
    node_of = {addr: node for node, addr in pair.addr.items()}
    for pkt in rdpcap(str(pcap)):
        clear = _decrypt(bytes(pkt[UDP].payload), keys)
        if clear is None:
            continue
        h, payloads = clear
        key = (pkt[IP].src, h.ispi, h.msg_id, h.is_response)
        if key not in seen:
            seen.add(key)
            out.append(Msg(node_of[pkt[IP].src], h.exchange, h.msg_id, h.is_response, payloads))
    return out


def _rekeys(msgs: list[Msg], protocol: ProtocolId) -> list[Rekey]:
    """The CREATE_CHILD_SA exchanges that were answered with an SA for `protocol`."""
    out = []
    for req in msgs:
        if req.exchange != ExchangeType.CREATE_CHILD_SA or req.response:
            continue
        resp = next(m for m in msgs if m.response and m.sender != req.sender and m.msg_id == req.msg_id
                    and m.exchange == req.exchange)
        sa_i, sa_r = req.first(wire.SA), resp.first(wire.SA)
        if sa_r is None or sa_i.proposals[0].protocol != protocol:
            continue
        out.append(Rekey(req.sender, req.first(wire.Nonce).data, resp.first(wire.Nonce).data,
                         int.from_bytes(sa_i.proposals[0].spi, "big"), int.from_bytes(sa_r.proposals[0].spi, "big")))
    return out


def _redundant(rekeys: list[Rekey]) -> tuple[Rekey, Rekey]:
    """§2.8.1/§2.8.2: (redundant, survivor): the exchange holding the lowest of the four nonces made the
    redundant SA. Nonces compare octet by octet, a prefix lower (bytes order)."""
    assert len(rekeys) == 2 and {r.initiator for r in rekeys} == {A, B}, rekeys
    lowest = min(n for r in rekeys for n in (r.ni, r.nr))
    redundant = next(r for r in rekeys if lowest in (r.ni, r.nr))
    return redundant, next(r for r in rekeys if r is not redundant)


def _deleted(msgs: list[Msg], sender: str) -> set[int]:
    """The ESP SPIs `sender` named in the Delete payloads of its INFORMATIONAL requests."""
    return {int.from_bytes(spi, "big") for m in msgs if m.sender == sender and not m.response
            and m.exchange == ExchangeType.INFORMATIONAL
            for p in m.payloads if isinstance(p.body, wire.Delete) and p.body.protocol == ProtocolId.ESP
            for spi in p.body.spis}


def _delta(before: dict, after: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def _other(node: str) -> str:
    return B if node == A else A


def _one_pair(pair: Pair) -> set[int]:
    """Wait until each side has one child pair, the mirror image of the other's; its SPIs."""
    def settled():
        a, b = pair.sas(A), pair.sas(B)
        return len(a["in"]) == len(a["out"]) == 1 and a["in"] == b["out"] and a["out"] == b["in"]
    _wait(settled, "one matching pair on both sides", SETTLED)
    a = pair.sas(A)
    return a["in"] | a["out"]


def _current_sa(info: dict) -> bool:
    return info["state"] == "established" and not info["rekeyed"]


def _current(pair: Pair, node: str) -> list[dict]:
    """The node's IKE SAs that are established and not replaced by a rekey."""
    return [s for s in pair.gws.query(node, "ike-sas") if _current_sa(s)]


def _spis(infos: list[dict]) -> list[tuple[str, str]]:
    return [(s["ispi"], s["rspi"]) for s in infos]


def _traffic_passes(pair: Pair) -> None:
    result = pair.lab.ping("hostA", pair.lab.addr["hostB"]["v4"], count=5, timeout=10)
    assert result.received >= 4, result


# --- the cases ---------------------------------------------------------------------------------------------


def test_simultaneous_child_rekey_keeps_the_pair_without_the_lowest_nonce(keyed_pair):
    p = keyed_pair()
    old = _one_pair(p)
    before = {n: p.stats(n) for n in (A, B)}
    capture = p.lab.capture("wire", PORT_OF[A], filter=IKE_FILTER)
    with Hold(p.lab) as hold:
        _rekey(p.gws, A, CHILD)
        _rekey(p.gws, B, CHILD)
        # Each answers the other's request while its own is outstanding: both see the collision (§2.8.1).
        _cross(hold, (A, B), lambda: all(_delta(before[n], p.stats(n), "child_rekey_collision") == 1
                                         for n in (A, B)))
    new = _one_pair(p)
    _traffic_passes(p)
    msgs = _messages(p, capture.stop())
    redundant, survivor = _redundant(_rekeys(msgs, ProtocolId.ESP))
    # The RFC's choice, from the wire: the survivor's pair is the one left on both sides...
    assert new == {survivor.spi_i, survivor.spi_r} and not new & old, (new, old, survivor)
    # ... the redundant pair is deleted by the initiator of its exchange, the old one by the other side.
    assert redundant.spi_i in _deleted(msgs, redundant.initiator), msgs
    assert _deleted(msgs, survivor.initiator) & old, msgs
    after = {n: p.stats(n) for n in (A, B)}
    assert _delta(before[redundant.initiator], after[redundant.initiator], "rekey_collision_lost") == 1
    assert _delta(before[survivor.initiator], after[survivor.initiator], "rekey_collision_lost") == 0
    for n in (A, B):
        assert _delta(before[n], after[n], "rekey_failed") == 0, after[n]
        assert len(p.ike_sas(n)) == 1 and _child(p.gws, n)["state"] == "installed"


def test_simultaneous_ike_rekey_keeps_the_sa_without_the_lowest_nonce(keyed_pair):
    p = keyed_pair()
    children = _one_pair(p)
    (old,) = p.ike_sas(A)
    before = {n: p.stats(n) for n in (A, B)}
    capture = p.lab.capture("wire", PORT_OF[A], filter=IKE_FILTER)
    with Hold(p.lab) as hold:
        _rekey(p.gws, A, IKE)
        _rekey(p.gws, B, IKE)
        _cross(hold, (A, B), lambda: all(_delta(before[n], p.stats(n), "ike_rekey_collision") == 1
                                         for n in (A, B)))
    spis = (old["ispi"], old["rspi"])
    _wait(lambda: all(len(_current(p, n)) == 1 and spis not in _spis(p.gws.query(n, "ike-sas")) for n in (A, B)),
          "one current IKE SA on each side, the old one deleted", SETTLED)
    msgs = _messages(p, capture.stop())
    redundant, survivor = _redundant(_rekeys(msgs, ProtocolId.IKE))
    want, unwanted = ((f"{r.spi_i:016x}", f"{r.spi_r:016x}") for r in (survivor, redundant))
    for n in (A, B):
        assert _spis(_current(p, n)) == [want] != [spis], (n, p.gws.query(n, "ike-sas"), survivor)
        # The redundant SA is gone, or, on the survivor's initiator only, waits for its Delete marked as
        # replaced and empty: when the survivor's Delete of the old SA overtakes the answer to the other
        # side's rekey (lost on the wire here), that side concedes without ever holding the redundant SA.
        extra = [s for s in p.gws.query(n, "ike-sas") if not _current_sa(s)]
        assert all(_spis([s]) == [unwanted] and not s["children"] and n == survivor.initiator
                   for s in extra), (n, extra, redundant)
    after = {n: p.stats(n) for n in (A, B)}
    assert _delta(before[redundant.initiator], after[redundant.initiator], "rekey_collision_lost") == 1
    assert _delta(before[survivor.initiator], after[survivor.initiator], "rekey_collision_lost") == 0
    for n in (A, B):
        assert _delta(before[n], after[n], "rekey_failed") == 0, after[n]
    assert _one_pair(p) == children  # the children moved to the survivor untouched (§2.8.2)
    _traffic_passes(p)
    _rekey(p.gws, A, CHILD)  # and the survivor works
    _wait(lambda: _one_pair(p) != children, "child rekeyed over the new IKE SA", SETTLED)


def test_child_rekey_crossing_its_delete_is_refused_and_the_delete_wins(keyed_pair):
    p = keyed_pair(child_keys_b=f'rekey_time = 0\nlife_time = "{CHILD_LIFE}s"')  # gwB deletes it, never rekeys it
    old = _one_pair(p)
    before = {n: p.stats(n) for n in (A, B)}
    capture = p.lab.capture("wire", PORT_OF[A], filter=IKE_FILTER)
    with Hold(p.lab) as hold:
        # gwB:  INFORMATIONAL {D(ESP, spi)}  (its child's hard lifetime)    held
        _wait(lambda: hold.held(B) >= 1, "gwB's Delete held", CHILD_LIFE + SETTLED)
        assert _delta(before[B], p.stats(B), "child_expired") == 1
        # gwA:  CREATE_CHILD_SA {N(REKEY_SA, spi'), SA, Ni, TSi, TSr}       held
        _rekey(p.gws, A, CHILD)
        # gwB gets the rekey of a child it is deleting: TEMPORARY_FAILURE (§2.25.1); gwA answers the Delete.
        _cross(hold, (B, A), lambda: (
            _delta(before[B], p.stats(B), "child_rekey_rejected_TEMPORARY_FAILURE") == 1
            and not any(p.sas(A).values())))
    _wait(lambda: all(not any(p.sas(n).values()) for n in (A, B)), "the child deleted on both sides", SETTLED)
    _wait(lambda: _delta(before[A], p.stats(A), "rekey_failed") == 1, "gwA's rekey failed", SETTLED)
    msgs = _messages(p, capture.stop())
    refused = [m for m in msgs if m.sender == B and m.response and m.exchange == ExchangeType.CREATE_CHILD_SA]
    assert [m.first(wire.Notify).type for m in refused] == [NotifyType.TEMPORARY_FAILURE], msgs
    assert _deleted(msgs, B) <= old and _deleted(msgs, B), msgs  # gwB deleted the old pair, its inbound SPI
    for n in (A, B):
        assert len(p.ike_sas(n)) == 1 and not p.ike_sas(n)[0]["children"], p.ike_sas(n)  # IKE SA stays
        assert _delta(before[n], p.stats(n), "child_rekey") == 0  # nothing came back to life
    assert not p.sas(A)["in"] and not p.sas(B)["in"]
