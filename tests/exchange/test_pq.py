"""Hybrid post-quantum IKE SAs between two xdpsec cores: RFC 9370 additional key exchanges over RFC 9242's
IKE_INTERMEDIATE, ML-KEM on top of x25519 or ECP.

    IKE_SA_INIT       HDR, SAi1(..., ADDKE1), KEi, Ni, N(INTERMEDIATE_EXCHANGE_SUPPORTED)  -->
                                        <--  HDR, SAr1(..., ADDKE1), KEr, Nr, N(INTERMEDIATE_EXCHANGE_SUPPORTED)
    IKE_INTERMEDIATE  HDR, SK {KEi(1) = ML-KEM encapsulation key}  -->
                                        <--  HDR, SK {KEr(1) = ML-KEM ciphertext}
    IKE_AUTH          HDR, SK {IDi, AUTH (signs IntAuth too), SAi2, TSi, TSr}  -->  (keys updated after KE 1)
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.exchange.conftest import GCM, Link, conn_a, conn_b, up
from xdpsec.crypto.kem import KEM_SIZES, Kem
from xdpsec.ike import events, wire
from xdpsec.ike.conf import Fragmentation
from xdpsec.ike.consts import ExchangeType, KeId, NotifyType, PayloadType, TransformType
from xdpsec.ike.sa import State
from xdpsec.ike.tasks.ike_intermediate import int_auth
from xdpsec.proposals import parse_ike

X25519_MLKEM768 = parse_ike("aes128gcm16-prfsha256-x25519-ke1_mlkem768")[0]
ECP256_MLKEM1024 = parse_ike("aes256gcm16-prfsha384-ecp256-ke1_mlkem1024")[0]
TWO_ROUNDS = parse_ike("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024")[0]


def _link(make_link, a_props, b_props) -> Link:
    return make_link(conn_a(proposals=tuple(a_props)), conn_b(proposals=tuple(b_props)))


def _sas(link: Link):
    (a,) = link.a._sas.values()
    (b,) = link.b._sas.values()
    return a, b


def _exchanges(link: Link) -> list[int]:
    """Exchange types of every request A sends, in order, while the link settles (once per Message ID: an
    IKE_INTERMEDIATE request with an ML-KEM key may go as RFC 7383 fragments)."""
    seen: dict[int, int] = {}
    for _ in range(30):
        flight = link.flight()
        if not flight:
            return list(seen.values())
        for d in flight:
            h = wire.decode_header(d.data)
            if d.sender == "a" and not h.is_response:
                seen.setdefault(h.msg_id, h.exchange)
        link.deliver(flight)
    raise AssertionError("did not settle")


@pytest.mark.parametrize("proposal, kem", [(X25519_MLKEM768, Kem.ML_KEM_768), (ECP256_MLKEM1024, Kem.ML_KEM_1024)])
def test_hybrid_ike_sa_is_negotiated_and_used(make_link, proposal, kem):
    link = _link(make_link, [proposal], [proposal])
    link.a.initiate("a-to-b", "net", link.now)
    assert _exchanges(link) == [ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE, ExchangeType.IKE_AUTH]
    a, b = _sas(link)
    assert a.state == b.state == State.ESTABLISHED
    assert a.crypto.proposal.addke == b.crypto.proposal.addke == (kem,)
    assert a.crypto.keys == b.crypto.keys
    assert a.intermediate.done == b.intermediate.done == 1
    assert int_auth(a) == int_auth(b) and len(int_auth(a)) == 2 * a.crypto.keys.sk_pi.__len__() + 4
    ups = [link.of(s, events.ChildUp)[0] for s in "ab"]
    assert ups[0].out.enc_key == ups[1].inb.enc_key  # the child keys derive from the updated SK_d
    assert a.info()["algorithms"]["addke"] == [kem]


def test_the_ml_kem_secret_changes_every_key(make_link, monkeypatch):
    """Same seeds, same X25519 keys: with the additional exchange the IKE SA keys differ from a classic run, and
    they change again when only the ML-KEM shared secret is altered (on both sides alike)."""
    from xdpsec.crypto import dh
    fixed = dh.KeyExchange._from_private
    keys = {}
    monkeypatch.setattr(dh, "new_key_exchange", lambda g: fixed(g, bytes(range(1, 33))))
    import xdpsec.ike.tasks.ike_init as ike_init
    monkeypatch.setattr(ike_init, "new_key_exchange", lambda g: fixed(g, bytes(range(1, 33))))
    classic = replace(X25519_MLKEM768, addke=())
    for name, props in (("classic", [classic]), ("hybrid", [X25519_MLKEM768])):
        link = _link(make_link, props, props)
        up(link)
        a, b = _sas(link)
        assert a.crypto.keys == b.crypto.keys
        keys[name] = a.crypto.keys
    import xdpsec.ike.tasks.ike_intermediate as mod
    real = mod.next_crypto
    monkeypatch.setattr(mod, "next_crypto", lambda ike, shared: real(ike, bytes(32)))
    link = _link(make_link, [X25519_MLKEM768], [X25519_MLKEM768])
    up(link)
    keys["zero secret"] = _sas(link)[0].crypto.keys
    for field in ("sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"):  # AES-GCM: SK_a are empty (RFC 5282 §7.1)
        values = [getattr(k, field) for k in keys.values()]
        assert len(set(values)) == len(values), field


def test_two_additional_exchanges_run_in_order(make_link):
    link = _link(make_link, [TWO_ROUNDS], [TWO_ROUNDS])
    link.a.initiate("a-to-b", "net", link.now)
    assert _exchanges(link) == [ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE,
                                ExchangeType.IKE_INTERMEDIATE, ExchangeType.IKE_AUTH]
    a, b = _sas(link)
    assert a.state == b.state == State.ESTABLISHED and a.crypto.keys == b.crypto.keys
    assert int_auth(a).endswith((3).to_bytes(4, "big"))  # IKE_AUTH's Message ID after two intermediates


def test_a_classic_peer_gets_the_classic_proposal(make_link):
    """[hybrid, classic] against a responder that knows only the classic one: IKE_SA_INIT picks it, no
    IKE_INTERMEDIATE, and the responder never saw INTERMEDIATE_EXCHANGE_SUPPORTED answered."""
    classic = replace(X25519_MLKEM768, addke=())
    link = _link(make_link, [X25519_MLKEM768, classic], [classic])
    link.a.initiate("a-to-b", "net", link.now)
    assert _exchanges(link) == [ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH]
    a, b = _sas(link)
    assert a.state == b.state == State.ESTABLISHED
    assert a.crypto.proposal == b.crypto.proposal == classic and a.intermediate is None


def test_a_responder_preferring_classic_over_optional_pq(make_link):
    """`ke1_mlkem768-ke1_none` offers ADDKE1 {ML-KEM-768, NONE} in one proposal per choice; a responder
    configured classic first picks NONE, i.e. the classic proposal."""
    both = parse_ike("aes128gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none")
    link = _link(make_link, both, [both[1], both[0]])
    up(link)
    a, b = _sas(link)
    assert a.crypto.proposal.addke == () and a.state == State.ESTABLISHED


def test_responder_without_intermediate_support_is_refused_by_the_initiator(make_link, monkeypatch):
    """A responder choosing ADDKE without N(INTERMEDIATE_EXCHANGE_SUPPORTED) (RFC 9242 §3) cannot run it."""
    import xdpsec.ike.tasks.ike_init as ike_init
    real = ike_init.IkeInit._build_response

    def no_notify(self, out):
        real(self, out)
        out[:] = [p for p in out if not (p.type == PayloadType.NOTIFY
                                         and p.body.type == NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED)]
    monkeypatch.setattr(ike_init.IkeInit, "_build_response", no_notify)
    link = _link(make_link, [X25519_MLKEM768], [X25519_MLKEM768])
    up(link)
    assert any("IKE_INTERMEDIATE" in f.reason for f in link.of("a", events.Failure))
    assert not link.of("a", events.ChildUp)


def _tamper_ke(link: Link, mutate) -> None:
    """Deliver until the IKE_INTERMEDIATE request, re-encrypted with its KE data changed by `mutate` (the link
    runs without RFC 7383 fragmentation, so that the request is one datagram)."""
    link.a.initiate("a-to-b", "net", link.now)
    link.deliver(link.flight())  # IKE_SA_INIT request
    link.deliver(link.flight())  # its response; A now sends IKE_INTERMEDIATE
    (req,) = link.flight()
    a, b = _sas(link)
    header, aad, first, body = wire.split_encrypted(req.data)
    inner = wire.decode_payloads(first, b.crypto.inbound.open(aad, body))
    payloads = [p if p.type != PayloadType.KE else wire.Payload(PayloadType.KE, mutate(p.body)) for p in inner]
    req.data = a.encode(ExchangeType.IKE_INTERMEDIATE, header.msg_id, response=False, payloads=payloads)
    link.deliver([req])


@pytest.mark.parametrize("mutate", [
    lambda ke: wire.KE(ke.group, ke.data[:-1]),                      # one octet short
    lambda ke: wire.KE(ke.group, ke.data + b"\0"),                   # one octet long
    lambda ke: wire.KE(KeId.ML_KEM_1024, ke.data),                   # another method than negotiated
    lambda ke: wire.KE(ke.group, b"\xff" * KEM_SIZES[Kem.ML_KEM_768][0]),  # fails FIPS 203's modulus check
], ids=["short", "long", "method", "modulus"])
def test_a_bad_ke_payload_is_invalid_syntax(make_link, mutate):
    link = make_link(conn_a(proposals=(X25519_MLKEM768,), fragmentation=Fragmentation.NO),
                     conn_b(proposals=(X25519_MLKEM768,), fragmentation=Fragmentation.NO))
    _tamper_ke(link, mutate)
    (resp,) = link.flight()
    (a,) = link.a._sas.values()
    header, aad, first, body = wire.split_encrypted(resp.data)
    inner = wire.decode_payloads(first, a.crypto.inbound.open(aad, body))
    assert [p.body.type for p in inner] == [NotifyType.INVALID_SYNTAX]
    assert not link.b._sas or all(sa.state == State.DEAD for sa in link.b._sas.values())
    link.deliver([resp])
    assert not link.of("a", events.ChildUp) and link.of("a", events.Failure)


def test_ike_auth_before_the_additional_exchange_is_refused(make_link, monkeypatch):
    """An initiator skipping IKE_INTERMEDIATE would get an SA with classic keys only: the responder refuses."""
    from xdpsec.ike.tasks.ike_intermediate import IkeIntermediate
    monkeypatch.setattr(IkeIntermediate, "obsolete", lambda self: True)
    link = _link(make_link, [X25519_MLKEM768], [X25519_MLKEM768])
    up(link)
    assert not link.of("b", events.ChildUp) and not link.of("a", events.ChildUp)
    assert link.b.stats["error_sent_INVALID_SYNTAX"] == 1


def test_intauth_binds_the_intermediate_messages(make_link, monkeypatch):
    """Both sides computing IntAuth over different bytes (here: the responder's view of A's request changed)
    fails IKE_AUTH: the IKE_INTERMEDIATE exchange is authenticated."""
    import xdpsec.ike.tasks.ike_intermediate as mod
    real = mod.received_octets
    monkeypatch.setattr(mod, "received_octets",
                        lambda inbound: real(inbound) + (b"x" if inbound.msg.is_initiator else b""))
    link = _link(make_link, [X25519_MLKEM768], [X25519_MLKEM768])
    up(link)
    assert link.b.stats["auth_failed"] == 1
    assert not link.of("b", events.ChildUp)


def test_the_offer_carries_addke_transforms_types_6_to_12():
    """RFC 9370 §2.2.1: ADDKE(n) is Transform Type 5 + n with a Transform Type 4 ID; it survives the wire."""
    from xdpsec.ike.tasks.proposal import ike_offer
    offer = ike_offer([TWO_ROUNDS, GCM])
    chain = wire.encode_payloads([wire.Payload(PayloadType.SA, offer)])[1]
    (decoded,) = wire.decode_payloads(PayloadType.SA, chain)
    first, second = decoded.body.proposals
    assert [(t.type, t.id) for t in first.transforms if t.type >= TransformType.ADDKE1] == [
        (TransformType.ADDKE1, KeId.ML_KEM_768), (TransformType.ADDKE2, KeId.ML_KEM_1024)]
    assert all(t.type < TransformType.ADDKE1 for t in second.transforms)
